import {
  alreadyExists,
  FORMATS_BY_KIND,
  failedPrecondition,
  formatSize,
  invalidArgument,
  isId,
  notFound,
  StowageError,
  validateName,
  validateVolumeSize,
} from "@stowage/core";
import { z } from "zod";
import {
  assertOperationId,
  assertSnapshotId,
  assertVolumeId,
  type CloneSpec,
  type CreateResult,
  type CreateVolumeSpec,
  type DeleteOptions,
  type PoolCapacityReport,
  type PoolDriver,
  type SnapshotInfo,
  type VolumeArtifact,
} from "./driver.js";
import { createKeyedLock } from "./keyed-lock.js";
import {
  cephDfArgv,
  cephOsdDumpArgv,
  cephOsdMetadataArgv,
  isRbdNotFound,
  parseCephDf,
  parseCephOsdDump,
  parseCephOsdMetadata,
  parseRbdChildren,
  parseRbdDu,
  parseRbdImageMeta,
  parseRbdInfo,
  parseRbdLs,
  parseRbdLsLong,
  parseRbdSnapLs,
  parseRbdStatus,
  RBD_ERRNO,
  type RbdChild,
  type RbdConnection,
  type RbdImageInfo,
  type RbdImageSpec,
  type RbdParent,
  type RbdSnapshot,
  rbdChildrenArgv,
  rbdCloneArgv,
  rbdCreateArgv,
  rbdDuArgv,
  rbdDuPoolArgv,
  rbdErrno,
  rbdFlattenArgv,
  rbdImageMetaListArgv,
  rbdImageMetaRemoveArgv,
  rbdImageMetaSetArgv,
  rbdInfoArgv,
  rbdLsArgv,
  rbdLsLongArgv,
  rbdRemoveArgv,
  rbdRenameArgv,
  rbdResizeArgv,
  rbdSnapCreateArgv,
  rbdSnapListArgv,
  rbdSnapProtectArgv,
  rbdSnapPurgeArgv,
  rbdSnapRemoveArgv,
  rbdSnapRollbackArgv,
  rbdSnapUnprotectArgv,
  rbdSpec,
  rbdStatusArgv,
  rbdVersionArgv,
  validateCephName,
  validateRbdConnection,
} from "./rbd.js";
import type { RunOptions, ToolRunner } from "./runner.js";

/**
 * `rbd` pools: one RBD image per volume in a Ceph pool (optionally a RADOS namespace of it), driven through the
 * `rbd` CLI (`--format json`) like Proxmox's RBDPlugin, never through a shell.
 *
 * Names come from ids only: `stowage-<volumeId>` for a volume, `stowage-tmp-<volumeId>` while it is being made,
 * snapshots are named by their snapshot id, and `stowage-clone-<newVolumeId>` is the hidden snapshot a clone of
 * a volume's current data hangs from. Ownership lives in the image metadata (`stowage.volume-id`,
 * `stowage.operation-id`, and `stowage.snapshot.<snapshotId>` per snapshot), which `rbd rename` keeps.
 *
 * Crash safety: an image is made (or cloned) under its temp name, marked, then renamed into place. An image
 * under a final name is therefore always complete and marked; a temp image is debris of a crashed attempt and is
 * removed by the retry. A snapshot's record is written before the snapshot and removed after it.
 *
 * Wipe: `rbd rm` deletes every RADOS object of the image (and `snap purge` its snapshots), so the space is
 * released and a new image never reads old data: that is "discard". "zero" is refused: writing zeros would
 * first allocate every thin object, and BlueStore writes overwrites to fresh extents anyway, so the zeros would
 * never reach the old data on disk.
 *
 * Capacity: `ceph df` gives the pool's stored bytes and MAX AVAIL, but only with a ceph-mgr running; without
 * one every number is 0, and the driver estimates instead: the OSDs' device sizes × full_ratio ÷ replicas
 * (capped by the pool quota) for the total, `rbd du` of the pool (namespace) for the used bytes. Either way
 * the client needs read access to the mons (`mon 'allow r'`). Provisioned bytes count Stowage's volumes only.
 *
 * Cost: a delete of a volume that is already gone, and a flatten of a volume that is already flat, list the
 * pool (`rbd ls -l`) to find a hidden clone snapshot an interrupted attempt may have left on the source.
 */

export interface RbdDriverOptions {
  /** Stowage's name for the pool. */
  poolName: string;
  /** The Ceph pool holding the images. */
  cephPool: string;
  /** A RADOS namespace inside the pool; it must exist (`rbd namespace create`). */
  namespace?: string;
  /** Path of ceph.conf (default: librados' search, CEPH_CONF then /etc/ceph/ceph.conf). */
  cephConf?: string;
  /** Client id without `client.` (default: librados' default, admin). */
  cephUser?: string;
  /** Keyring with the client's key (default: the one ceph.conf names). */
  keyring?: string;
  runner: ToolRunner;
  /** Timeout for commands that touch every object (rm, flatten, rollback, shrink). Default 30 minutes. */
  longTimeoutMs?: number;
  /** Clock for snapshot `createdAt` (tests). */
  now?: () => Date;
}

export const RBD_META = {
  volumeId: "stowage.volume-id",
  operationId: "stowage.operation-id",
  /** + snapshot id; the value is a JSON `{ operationId, createdAt }`. */
  snapshotPrefix: "stowage.snapshot.",
} as const;

const IMAGE_PREFIX = "stowage-";
const TEMP_PREFIX = "stowage-tmp-";
const CLONE_SNAPSHOT_PREFIX = "stowage-clone-";
const OWNED_IMAGE = /^stowage-(vol-[0-9a-f]{32})$/;
const TEMP_IMAGE = /^stowage-tmp-(vol-[0-9a-f]{32})$/;
const DEFAULT_LONG_TIMEOUT_MS = 30 * 60_000;
const CHECK_TIMEOUT_MS = 20_000;
const LIST_CONCURRENCY = 4;

const snapshotRecordSchema = z.object({ operationId: z.string(), createdAt: z.string() });
type SnapshotRecord = z.output<typeof snapshotRecordSchema>;

/** An image under a volume's final name, with its metadata. */
interface Owned {
  id: string;
  meta: Record<string, string>;
}

export function createRbdDriver(opts: RbdDriverOptions): PoolDriver {
  const poolName = validateName("pool name", opts.poolName);
  const cephPool = validateCephName("ceph pool", opts.cephPool);
  const namespace = opts.namespace ? validateCephName("rbd namespace", opts.namespace) : undefined;
  const conn: RbdConnection = validateRbdConnection({
    ...(opts.cephConf !== undefined ? { cephConf: opts.cephConf } : {}),
    ...(opts.cephUser !== undefined ? { cephUser: opts.cephUser } : {}),
    ...(opts.keyring !== undefined ? { keyring: opts.keyring } : {}),
  });
  const runner = opts.runner;
  const long: RunOptions = { timeoutMs: opts.longTimeoutMs ?? DEFAULT_LONG_TIMEOUT_MS };
  const now = opts.now ?? (() => new Date());
  const lock = createKeyedLock();
  const where = `rbd pool ${poolName} (ceph pool ${cephPool}${namespace ? `, namespace ${namespace}` : ""})`;

  const finalImage = (id: string) => `${IMAGE_PREFIX}${id}`;
  const tempImage = (id: string) => `${TEMP_PREFIX}${id}`;
  const cloneSnapshot = (id: string) => `${CLONE_SNAPSHOT_PREFIX}${id}`;
  const spec = (image: string, snapshot?: string): RbdImageSpec => ({
    pool: cephPool,
    ...(namespace ? { namespace } : {}),
    image,
    ...(snapshot !== undefined ? { snapshot } : {}),
  });
  const qemuPath = (image: string) => `rbd:${rbdSpec(spec(image))}`;
  const rbd = (argv: string[], runOpts?: RunOptions) => runner.run("rbd", argv, runOpts);

  /** The result of `fn`, or undefined when the image (or snapshot) it reads does not exist. */
  async function unlessMissing<T>(fn: () => Promise<T>): Promise<T | undefined> {
    try {
      return await fn();
    } catch (e) {
      if (isRbdNotFound(e)) return undefined;
      throw e;
    }
  }

  async function readMeta(image: string): Promise<Record<string, string> | undefined> {
    const argv = rbdImageMetaListArgv(conn, spec(image));
    return unlessMissing(async () => parseRbdImageMeta((await rbd(argv)).stdout, argv));
  }

  async function imageInfo(image: string): Promise<RbdImageInfo | undefined> {
    const argv = rbdInfoArgv(conn, spec(image));
    return unlessMissing(async () => parseRbdInfo((await rbd(argv)).stdout, argv));
  }

  async function snapshotsOf(image: string): Promise<RbdSnapshot[]> {
    const argv = rbdSnapListArgv(conn, spec(image));
    return parseRbdSnapLs((await rbd(argv)).stdout, argv);
  }

  async function childrenOf(image: string, snapshot: string): Promise<RbdChild[]> {
    const argv = rbdChildrenArgv(conn, spec(image, snapshot));
    return (await unlessMissing(async () => parseRbdChildren((await rbd(argv)).stdout, argv))) ?? [];
  }

  async function setMeta(image: string, key: string, value: string): Promise<void> {
    await rbd(rbdImageMetaSetArgv(conn, spec(image), key, value));
  }

  async function removeMeta(image: string, key: string): Promise<void> {
    await unlessMissing(() => rbd(rbdImageMetaRemoveArgv(conn, spec(image), key)));
  }

  /** Removes an image and its snapshots; false when it was not there. Never called on a foreign image. */
  async function removeImage(image: string, purged = false): Promise<boolean> {
    try {
      await rbd(rbdRemoveArgv(conn, spec(image)), long);
      return true;
    } catch (e) {
      if (isRbdNotFound(e)) return false;
      if (rbdErrno(e) === RBD_ERRNO.ENOTEMPTY && !purged) {
        // `rbd rm` refuses an image with snapshots. Callers have checked that no clone depends on them.
        for (const s of await snapshotsOf(image)) {
          if (s.protected) await unprotect(image, s.name);
        }
        await rbd(rbdSnapPurgeArgv(conn, spec(image)), long);
        return removeImage(image, true);
      }
      if (rbdErrno(e) === RBD_ERRNO.EBUSY) {
        throw failedPrecondition(
          `image ${rbdSpec(spec(image))} is in use (it has watchers: a running VM or another client); detach it first`,
          { image },
        );
      }
      throw e;
    }
  }

  async function unprotect(image: string, snapshot: string): Promise<void> {
    try {
      await rbd(rbdSnapUnprotectArgv(conn, spec(image, snapshot)));
    } catch (e) {
      // EINVAL: it was not protected (a retry after the unprotect went through).
      if (isRbdNotFound(e) || rbdErrno(e) === RBD_ERRNO.EINVAL) return;
      throw e;
    }
  }

  async function protect(image: string, snapshot: string): Promise<void> {
    try {
      await rbd(rbdSnapProtectArgv(conn, spec(image, snapshot)));
    } catch (e) {
      // EBUSY: already protected.
      if (rbdErrno(e) === RBD_ERRNO.EBUSY) return;
      throw e;
    }
  }

  /** The volume's image if it exists and carries our marker for this id; foreign images throw `whenForeign`. */
  async function findOwned(
    id: string,
    whenForeign?: (image: string) => StowageError,
  ): Promise<Owned | undefined> {
    const image = finalImage(id);
    const meta = await readMeta(image);
    if (meta === undefined) return undefined;
    if (meta[RBD_META.volumeId] !== id) {
      if (whenForeign) throw whenForeign(image);
      return undefined;
    }
    return { id, meta };
  }

  /** One `rbd du` gives both sizes: the head row's provisioned size is the virtual size. */
  async function inspect(id: string, meta: Record<string, string>): Promise<VolumeArtifact> {
    const image = finalImage(id);
    const argv = rbdDuArgv(conn, spec(image));
    const du = await unlessMissing(async () => parseRbdDu((await rbd(argv)).stdout, argv));
    const head = du?.rows.find((r) => r.image === image && r.snapshot === undefined);
    if (!du || !head) throw notFound(`volume ${id} disappeared from ${where}`, { volumeId: id, poolName });
    return artifact(id, head.provisionedBytes, du.usedByImage.get(image) ?? 0n, meta);
  }

  function artifact(
    id: string,
    sizeBytes: bigint,
    allocatedBytes: bigint,
    meta: Record<string, string>,
  ): VolumeArtifact {
    return {
      volumeId: id,
      poolName,
      sizeBytes,
      format: "raw",
      allocatedBytes,
      path: qemuPath(finalImage(id)),
      operationId: meta[RBD_META.operationId] ?? "",
    };
  }

  const notOurs = (image: string) =>
    alreadyExists(
      `image ${rbdSpec(spec(image))} already exists in ${where} without Stowage ownership metadata (${RBD_META.volumeId}); refusing to take it over (rename it away, or import it)`,
      { image, poolName },
    );
  const volumeMissing = (id: string) =>
    notFound(`volume ${id} does not exist in ${where}`, { volumeId: id, poolName });

  /** Volume ids of the clones, or the raw image names of children that are not ours. */
  const describeChildren = (children: RbdChild[]) =>
    children
      .map((c) => {
        const m = OWNED_IMAGE.exec(c.image) ?? TEMP_IMAGE.exec(c.image);
        return m && c.pool === cephPool && c.namespace === (namespace ?? "") ? m[1]! : rbdSpec(c);
      })
      .sort()
      .join(", ");

  /** Removes a snapshot unless a clone still hangs from it. The caller holds the image's volume lock. */
  async function dropSnapshotIfUnused(image: string, snapName: string): Promise<void> {
    if ((await childrenOf(image, snapName)).length > 0) return;
    await unprotect(image, snapName);
    await unlessMissing(() => rbd(rbdSnapRemoveArgv(conn, spec(image, snapName)), long));
  }

  /**
   * Removes the hidden snapshot a clone of `cloneId` hung from, once nothing depends on it. `sourceImage` comes
   * from the clone's parent; without it (the clone is gone, or was flattened by an attempt that then crashed)
   * the pool listing says which image holds `stowage-clone-<cloneId>`.
   */
  async function dropCloneSnapshot(cloneId: string, parent?: RbdParent): Promise<void> {
    const snapName = cloneSnapshot(cloneId);
    let images: string[];
    if (parent) {
      const samePool = parent.pool === cephPool && parent.namespace === (namespace ?? "");
      if (!samePool || parent.snapshot !== snapName) return;
      images = [parent.image];
    } else {
      const argv = rbdLsLongArgv(conn, cephPool, namespace);
      images = parseRbdLsLong((await rbd(argv)).stdout, argv)
        .snapshots.filter((s) => s.snapshot === snapName)
        .map((s) => s.image);
    }
    for (const image of images) {
      const sourceId = OWNED_IMAGE.exec(image)?.[1];
      const drop = () => dropSnapshotIfUnused(image, snapName);
      await (sourceId ? lock.run(sourceId, drop) : drop());
    }
  }

  async function createVolume(req: CreateVolumeSpec): Promise<CreateResult> {
    const id = req.volumeId;
    assertVolumeId(id);
    assertOperationId(req.operationId);
    if (!FORMATS_BY_KIND.rbd.includes(req.format)) {
      throw invalidArgument(`format ${JSON.stringify(req.format)} is not valid for rbd pools: use raw`, {
        field: "format",
      });
    }
    if (req.qcow2 && Object.keys(req.qcow2).length > 0) {
      throw invalidArgument("qcow2 options do not apply to rbd volumes (they are raw images)", {
        field: "qcow2",
      });
    }
    validateVolumeSize(req.sizeBytes);

    return lock.run(id, async () => {
      const owned = await findOwned(id, notOurs);
      if (owned) {
        const current = await inspect(id, owned.meta);
        // The same operation again (a redelivery, perhaps after a resize), or the same thing asked again.
        if (owned.meta[RBD_META.operationId] === req.operationId || current.sizeBytes === req.sizeBytes) {
          await removeImage(tempImage(id));
          return { artifact: current, adopted: true };
        }
        throw alreadyExists(
          `volume ${id} already exists in ${where} as raw ${formatSize(current.sizeBytes)} (operation ${current.operationId}); this request asks for raw ${formatSize(req.sizeBytes)}`,
          { volumeId: id, poolName },
        );
      }

      const tmp = tempImage(id);
      // A crashed attempt may have left its temp image, marked or not: it is debris, never a volume.
      await removeImage(tmp);
      await rbd(rbdCreateArgv(conn, spec(tmp), req.sizeBytes));
      try {
        await setMeta(tmp, RBD_META.volumeId, id);
        await setMeta(tmp, RBD_META.operationId, req.operationId);
        // The image appears under its final name complete and marked, or not at all.
        await rbd(rbdRenameArgv(conn, spec(tmp), spec(finalImage(id))));
      } catch (e) {
        await removeImage(tmp).catch(() => undefined);
        throw e;
      }
      return { artifact: await inspect(id, { [RBD_META.operationId]: req.operationId }), adopted: false };
    });
  }

  async function deleteVolume(volumeId: string, dopts: DeleteOptions = {}): Promise<{ existed: boolean }> {
    assertVolumeId(volumeId);
    const id = volumeId;
    if (dopts.operationId !== undefined) assertOperationId(dopts.operationId);
    const wipe = dopts.wipe ?? "none";
    if (wipe === "zero") {
      throw invalidArgument(
        `${where} cannot wipe by writing zeros: RBD images are thin and BlueStore writes overwrites to new extents, so zeros would never reach the old data; use wipe "discard" (the image's objects are deleted)`,
        { field: "wipe" },
      );
    }
    if (wipe !== "none" && wipe !== "discard") {
      throw invalidArgument(`wipe mode ${JSON.stringify(wipe)} is not valid: use none or discard`, {
        field: "wipe",
      });
    }

    return lock.run(id, async () => {
      const image = finalImage(id);
      const owned = await findOwned(id, (img) =>
        failedPrecondition(
          `image ${rbdSpec(spec(img))} has no Stowage ownership metadata for ${id}; refusing to delete an image that is not ours`,
          { image: img, poolName },
        ),
      );
      let existed = false;
      let parent: RbdParent | undefined;
      if (owned) {
        const info = await imageInfo(image);
        parent = info?.parent;
        const snaps = await snapshotsOf(image);
        for (const s of snaps.filter((x) => x.protected)) {
          const children = await childrenOf(image, s.name);
          if (children.length > 0) {
            throw failedPrecondition(
              `volume ${id} cannot be deleted: clones depend on its snapshot ${s.name}: ${describeChildren(children)}; delete or flatten them first`,
              { volumeId: id, snapshot: s.name },
            );
          }
        }
        // The marker stays until the image goes: a crash midway leaves a marked image that a retry finishes.
        existed = await removeImage(image);
      }
      await removeImage(tempImage(id));
      // The clone's hidden snapshot on its source goes last; when the image is gone already (a retry), the
      // pool listing finds it.
      if (owned && !parent) return { existed };
      await dropCloneSnapshot(id, parent);
      return { existed };
    });
  }

  async function resizeVolume(
    volumeId: string,
    newSizeBytes: bigint,
    ropts: { allowShrink: boolean; operationId: string },
  ): Promise<VolumeArtifact> {
    assertVolumeId(volumeId);
    const id = volumeId;
    validateVolumeSize(newSizeBytes, "new size");
    assertOperationId(ropts.operationId);
    return lock.run(id, async () => {
      const owned = await findOwned(id);
      if (!owned) throw volumeMissing(id);
      const current = await inspect(id, owned.meta);
      // Already there: a redelivered resize converges.
      if (current.sizeBytes === newSizeBytes) return current;
      const shrink = newSizeBytes < current.sizeBytes;
      if (shrink && !ropts.allowShrink) {
        throw failedPrecondition(
          `shrinking volume ${id} from ${formatSize(current.sizeBytes)} to ${formatSize(newSizeBytes)} would discard the data past the new end; allow shrinking explicitly to do it`,
          { volumeId: id, currentBytes: current.sizeBytes.toString() },
        );
      }
      await rbd(rbdResizeArgv(conn, spec(finalImage(id)), newSizeBytes, { allowShrink: shrink }), long);
      return inspect(id, owned.meta);
    });
  }

  async function info(volumeId: string): Promise<VolumeArtifact | undefined> {
    assertVolumeId(volumeId);
    const owned = await findOwned(volumeId);
    if (!owned) return undefined;
    try {
      return await inspect(volumeId, owned.meta);
    } catch (e) {
      // Deleted between the metadata and the info.
      if (e instanceof StowageError && e.code === "not_found") return undefined;
      if (isRbdNotFound(e)) return undefined;
      throw e;
    }
  }

  async function list(): Promise<{ volumes: VolumeArtifact[]; foreign: string[] }> {
    const { volumes, foreign } = await scan();
    return { volumes, foreign };
  }

  /** The inventory, and the pool's `rbd du` it was sized with. */
  async function scan(): Promise<{ volumes: VolumeArtifact[]; foreign: string[]; usedBytes: bigint }> {
    const lsArgv = rbdLsLongArgv(conn, cephPool, namespace);
    const { images } = parseRbdLsLong((await rbd(lsArgv)).stdout, lsArgv);
    const duArgv = rbdDuPoolArgv(conn, cephPool, namespace);
    const du = parseRbdDu((await rbd(duArgv)).stdout, duArgv);
    const foreign: string[] = [];
    const candidates: { id: string; sizeBytes: bigint; image: string }[] = [];
    for (const e of images) {
      // Temp images are unfinished operations of ours: neither volumes nor foreign.
      if (TEMP_IMAGE.test(e.image)) continue;
      const m = OWNED_IMAGE.exec(e.image);
      if (m) candidates.push({ id: m[1]!, sizeBytes: e.sizeBytes, image: e.image });
      else foreign.push(e.image);
    }
    const found = await mapLimit(candidates, LIST_CONCURRENCY, async (c) => {
      const meta = await readMeta(c.image);
      // Deleted since the listing: simply gone.
      if (meta === undefined) return undefined;
      if (meta[RBD_META.volumeId] !== c.id) {
        foreign.push(c.image);
        return undefined;
      }
      return artifact(c.id, c.sizeBytes, du.usedByImage.get(c.image) ?? 0n, meta);
    });
    return {
      volumes: found.filter((v): v is VolumeArtifact => v !== undefined).sort(byId),
      foreign: foreign.sort(),
      usedBytes: du.totalUsedBytes,
    };
  }

  async function capacity(): Promise<PoolCapacityReport> {
    const { volumes, usedBytes } = await scan();
    const provisionedBytes = volumes.reduce((s, v) => s + v.sizeBytes, 0n);
    const dfArgv = cephDfArgv(conn);
    const df = parseCephDf((await runner.run("ceph", dfArgv)).stdout, dfArgv);
    const pool = df.pools.get(cephPool);
    if (df.hasStats && pool) {
      // MAX AVAIL already accounts for replication, the full ratio and the pool quota.
      return {
        totalBytes: pool.storedBytes + pool.maxAvailBytes,
        usedBytes: pool.storedBytes,
        freeBytes: pool.maxAvailBytes,
        provisionedBytes,
      };
    }
    // No ceph-mgr, no statistics: estimate from the OSD map, the OSDs' devices and what the images hold.
    const dumpArgv = cephOsdDumpArgv(conn);
    const dump = parseCephOsdDump((await runner.run("ceph", dumpArgv)).stdout, dumpArgv);
    const poolMap = dump.pools.get(cephPool);
    if (!poolMap) throw failedPrecondition(`${where}: ceph pool ${cephPool} does not exist`, { poolName });
    const metaArgv = cephOsdMetadataArgv(conn);
    const devices = parseCephOsdMetadata((await runner.run("ceph", metaArgv)).stdout, metaArgv);
    let rawBytes = 0n;
    for (const osd of dump.activeOsds) {
      const size = devices.get(osd);
      if (size === undefined) {
        throw failedPrecondition(
          `${where}: ceph df has no statistics (no ceph-mgr is running) and osd.${osd} reports no device size; start a ceph-mgr`,
          { poolName },
        );
      }
      rawBytes += size;
    }
    const ratioPpm = BigInt(Math.round(dump.fullRatio * 1_000_000));
    let totalBytes = (rawBytes * ratioPpm) / 1_000_000n / BigInt(poolMap.replicas);
    if (poolMap.quotaMaxBytes > 0n && poolMap.quotaMaxBytes < totalBytes) totalBytes = poolMap.quotaMaxBytes;
    const freeBytes = totalBytes > usedBytes ? totalBytes - usedBytes : 0n;
    return {
      totalBytes,
      usedBytes: usedBytes < totalBytes ? usedBytes : totalBytes,
      freeBytes,
      provisionedBytes,
    };
  }

  async function check(): Promise<{ healthy: boolean; message: string }> {
    let version = "";
    try {
      version = (await rbd(rbdVersionArgv(), { timeoutMs: CHECK_TIMEOUT_MS })).stdout.trim();
      const argv = rbdLsArgv(conn, cephPool, namespace);
      parseRbdLs((await rbd(argv, { timeoutMs: CHECK_TIMEOUT_MS })).stdout, argv);
    } catch (e) {
      return { healthy: false, message: `${where} is not usable: ${(e as Error).message}` };
    }
    return { healthy: true, message: `${where} is usable (${version})` };
  }

  // Snapshots

  function snapshotRecord(meta: Record<string, string>, snapshotId: string): SnapshotRecord | undefined {
    const raw = meta[`${RBD_META.snapshotPrefix}${snapshotId}`];
    if (raw === undefined) return undefined;
    try {
      const parsed = snapshotRecordSchema.safeParse(JSON.parse(raw));
      return parsed.success ? parsed.data : undefined;
    } catch {
      return undefined;
    }
  }

  const snapshotInfo = (volumeId: string, s: RbdSnapshot, rec: SnapshotRecord): SnapshotInfo => ({
    snapshotId: s.name,
    volumeId,
    sizeBytes: s.sizeBytes,
    createdAt: rec.createdAt,
    operationId: rec.operationId,
  });

  async function createSnapshot(
    volumeId: string,
    snapshotId: string,
    sopts: { operationId: string },
  ): Promise<{ snapshot: SnapshotInfo; adopted: boolean }> {
    assertVolumeId(volumeId);
    assertSnapshotId(snapshotId);
    assertOperationId(sopts.operationId);
    return lock.run(volumeId, async () => {
      const owned = await findOwned(volumeId);
      if (!owned) throw volumeMissing(volumeId);
      const image = finalImage(volumeId);
      const existing = (await snapshotsOf(image)).find((s) => s.name === snapshotId);
      const prior = snapshotRecord(owned.meta, snapshotId);
      if (existing) {
        if (!prior) {
          throw alreadyExists(
            `volume ${volumeId} already has a snapshot named ${snapshotId} without a Stowage record; refusing to take it over`,
            { volumeId, snapshotId },
          );
        }
        return { snapshot: snapshotInfo(volumeId, existing, prior), adopted: true };
      }
      // The record is the intent: written first, so a snapshot under our name always has one.
      const rec: SnapshotRecord = { operationId: sopts.operationId, createdAt: now().toISOString() };
      await setMeta(image, `${RBD_META.snapshotPrefix}${snapshotId}`, JSON.stringify(rec));
      await rbd(rbdSnapCreateArgv(conn, spec(image, snapshotId)));
      const made = (await snapshotsOf(image)).find((s) => s.name === snapshotId);
      if (!made)
        throw new StowageError("internal", `rbd snap create ${snapshotId} left no snapshot on ${image}`);
      return { snapshot: snapshotInfo(volumeId, made, rec), adopted: false };
    });
  }

  async function listSnapshots(volumeId: string): Promise<SnapshotInfo[]> {
    assertVolumeId(volumeId);
    const owned = await findOwned(volumeId);
    if (!owned) throw volumeMissing(volumeId);
    const out: SnapshotInfo[] = [];
    for (const s of await snapshotsOf(finalImage(volumeId))) {
      // Hidden clone snapshots and snapshots someone else took are not the volume's snapshots.
      if (!isId(s.name, "snap")) continue;
      const rec = snapshotRecord(owned.meta, s.name);
      if (rec) out.push(snapshotInfo(volumeId, s, rec));
    }
    return out.sort((a, b) => (a.snapshotId < b.snapshotId ? -1 : a.snapshotId > b.snapshotId ? 1 : 0));
  }

  async function deleteSnapshot(
    volumeId: string,
    snapshotId: string,
    sopts: { operationId: string },
  ): Promise<{ existed: boolean }> {
    assertVolumeId(volumeId);
    assertSnapshotId(snapshotId);
    assertOperationId(sopts.operationId);
    return lock.run(volumeId, async () => {
      const owned = await findOwned(volumeId);
      // The volume is gone, and its snapshots with it.
      if (!owned) return { existed: false };
      const image = finalImage(volumeId);
      const key = `${RBD_META.snapshotPrefix}${snapshotId}`;
      const snap = (await snapshotsOf(image)).find((s) => s.name === snapshotId);
      if (!snap) {
        // A record without a snapshot: an interrupted create or delete.
        if (owned.meta[key] !== undefined) await removeMeta(image, key);
        return { existed: false };
      }
      if (!snapshotRecord(owned.meta, snapshotId)) {
        throw failedPrecondition(
          `snapshot ${snapshotId} of volume ${volumeId} has no Stowage record; refusing to delete it`,
          { volumeId, snapshotId },
        );
      }
      if (snap.protected) {
        const children = await childrenOf(image, snapshotId);
        if (children.length > 0) {
          throw failedPrecondition(
            `snapshot ${snapshotId} of volume ${volumeId} cannot be deleted: clones depend on it: ${describeChildren(children)}; delete or flatten them first`,
            { volumeId, snapshotId },
          );
        }
        await unprotect(image, snapshotId);
      }
      await unlessMissing(() => rbd(rbdSnapRemoveArgv(conn, spec(image, snapshotId)), long));
      await removeMeta(image, key);
      return { existed: true };
    });
  }

  async function revertSnapshot(
    volumeId: string,
    snapshotId: string,
    sopts: { operationId: string },
  ): Promise<VolumeArtifact> {
    assertVolumeId(volumeId);
    assertSnapshotId(snapshotId);
    assertOperationId(sopts.operationId);
    return lock.run(volumeId, async () => {
      const owned = await findOwned(volumeId);
      if (!owned) throw volumeMissing(volumeId);
      const image = finalImage(volumeId);
      const snap = (await snapshotsOf(image)).find((s) => s.name === snapshotId);
      if (!snap || !snapshotRecord(owned.meta, snapshotId)) {
        throw notFound(`snapshot ${snapshotId} of volume ${volumeId} does not exist in ${where}`, {
          volumeId,
          snapshotId,
        });
      }
      // librbd would take the exclusive lock from a running VM and roll back under it.
      const statusArgv = rbdStatusArgv(conn, spec(image));
      const { watchers } = parseRbdStatus((await rbd(statusArgv)).stdout, statusArgv);
      if (watchers.length > 0) {
        throw failedPrecondition(
          `volume ${volumeId} is in use (${watchers.join(", ")}); stop the VM before reverting it to a snapshot`,
          { volumeId, snapshotId },
        );
      }
      await rbd(rbdSnapRollbackArgv(conn, spec(image, snapshotId)), long);
      return inspect(volumeId, owned.meta);
    });
  }

  // Clones

  async function cloneVolume(req: CloneSpec): Promise<CreateResult> {
    const id = req.volumeId;
    assertVolumeId(id);
    assertOperationId(req.operationId);
    assertVolumeId(req.sourceVolumeId);
    if (req.sourceSnapshotId !== undefined) assertSnapshotId(req.sourceSnapshotId);
    if (!FORMATS_BY_KIND.rbd.includes(req.format)) {
      throw invalidArgument(`format ${JSON.stringify(req.format)} is not valid for rbd pools: use raw`, {
        field: "format",
      });
    }
    if (req.sizeBytes !== undefined) validateVolumeSize(req.sizeBytes);
    if (id === req.sourceVolumeId) {
      throw invalidArgument(`a volume cannot be cloned onto itself (${id})`, { field: "volumeId" });
    }
    const sourceId = req.sourceVolumeId;

    return lock.run(id, async () => {
      const owned = await findOwned(id, notOurs);
      if (owned) {
        // Done before. A flatten asked for and not finished (a crash) is finished now.
        if (req.flatten) {
          const info = await imageInfo(finalImage(id));
          if (info?.parent) await flattenImage(id, finalImage(id), info.parent);
        }
        return { artifact: await inspect(id, owned.meta), adopted: true };
      }
      const tmp = tempImage(id);
      await removeImage(tmp);

      let hidden = false;
      let snapName = "";
      /** The clone's size as made: its snapshot's. */
      let cloneBytes = 0n;
      let sourceMeta: Record<string, string> = {};
      // The source is held while its snapshot is prepared and cloned, so it cannot be deleted in between.
      await lock.run(sourceId, async () => {
        const source = await findOwned(sourceId);
        if (!source) throw volumeMissing(sourceId);
        const sourceImage = finalImage(sourceId);
        const snaps = await snapshotsOf(sourceImage);
        let snap: RbdSnapshot | undefined;
        if (req.sourceSnapshotId !== undefined) {
          snapName = req.sourceSnapshotId;
          snap = snaps.find((s) => s.name === snapName);
          if (!snap || !snapshotRecord(source.meta, snapName)) {
            throw notFound(`snapshot ${snapName} of volume ${sourceId} does not exist in ${where}`, {
              volumeId: sourceId,
              snapshotId: snapName,
            });
          }
        } else {
          // RBD clones hang from a snapshot: the volume's current data gets a hidden one for this clone.
          hidden = true;
          snapName = cloneSnapshot(id);
          snap = snaps.find((s) => s.name === snapName);
          if (!snap) {
            const info = await imageInfo(sourceImage);
            if (!info) throw volumeMissing(sourceId);
            if (req.sizeBytes !== undefined && req.sizeBytes < info.sizeBytes) throw tooSmall(info.sizeBytes);
            await rbd(rbdSnapCreateArgv(conn, spec(sourceImage, snapName)));
            snap = (await snapshotsOf(sourceImage)).find((s) => s.name === snapName);
            if (!snap) throw new StowageError("internal", `rbd snap create ${snapName} left no snapshot`);
          }
        }
        if (req.sizeBytes !== undefined && req.sizeBytes < snap.sizeBytes) {
          // A hidden snapshot left by an earlier attempt, when the source was larger than now asked for.
          if (hidden) await dropSnapshotIfUnused(sourceImage, snapName);
          throw tooSmall(snap.sizeBytes);
        }
        cloneBytes = snap.sizeBytes;
        sourceMeta = source.meta;
        if (!snap.protected) await protect(sourceImage, snapName);
        await rbd(rbdCloneArgv(conn, spec(sourceImage, snapName), spec(tmp)));
      });

      const sourceParent: RbdParent = {
        pool: cephPool,
        namespace: namespace ?? "",
        image: finalImage(sourceId),
        snapshot: snapName,
      };
      try {
        // A clone inherits its parent's metadata: the marker is rewritten, the source's snapshot records dropped.
        await setMeta(tmp, RBD_META.volumeId, id);
        await setMeta(tmp, RBD_META.operationId, req.operationId);
        for (const key of Object.keys(sourceMeta)) {
          if (key.startsWith(RBD_META.snapshotPrefix)) await removeMeta(tmp, key);
        }
        if (req.sizeBytes !== undefined && req.sizeBytes > cloneBytes) {
          await rbd(rbdResizeArgv(conn, spec(tmp), req.sizeBytes, { allowShrink: false }));
        }
        if (req.flatten) await rbd(rbdFlattenArgv(conn, spec(tmp)), long);
        await rbd(rbdRenameArgv(conn, spec(tmp), spec(finalImage(id))));
      } catch (e) {
        await removeImage(tmp).catch(() => undefined);
        if (hidden) await dropCloneSnapshot(id, sourceParent).catch(() => undefined);
        throw e;
      }
      if (req.flatten && hidden) await dropCloneSnapshot(id, sourceParent);
      return { artifact: await inspect(id, { [RBD_META.operationId]: req.operationId }), adopted: false };
    });
  }

  const tooSmall = (sourceBytes: bigint) =>
    invalidArgument(
      `a clone cannot be smaller than its source (${formatSize(sourceBytes)}); ask for at least that size`,
      { field: "sizeBytes" },
    );

  async function flattenImage(id: string, image: string, parent: RbdParent): Promise<void> {
    await rbd(rbdFlattenArgv(conn, spec(image)), long);
    await dropCloneSnapshot(id, parent);
  }

  async function flattenVolume(volumeId: string, fopts: { operationId: string }): Promise<VolumeArtifact> {
    assertVolumeId(volumeId);
    assertOperationId(fopts.operationId);
    return lock.run(volumeId, async () => {
      const owned = await findOwned(volumeId);
      if (!owned) throw volumeMissing(volumeId);
      const image = finalImage(volumeId);
      const info = await imageInfo(image);
      if (!info) throw volumeMissing(volumeId);
      if (info.parent) await flattenImage(volumeId, image, info.parent);
      // Already flat: a hidden snapshot left by a flatten that crashed before its cleanup goes now.
      else await dropCloneSnapshot(volumeId);
      return inspect(volumeId, owned.meta);
    });
  }

  return {
    kind: "rbd",
    poolName,
    check,
    capacity,
    createVolume,
    deleteVolume,
    resizeVolume,
    info,
    list,
    createSnapshot,
    listSnapshots,
    deleteSnapshot,
    revertSnapshot,
    cloneVolume,
    flattenVolume,
  };
}

function byId(a: VolumeArtifact, b: VolumeArtifact): number {
  return a.volumeId < b.volumeId ? -1 : a.volumeId > b.volumeId ? 1 : 0;
}

async function mapLimit<T, R>(items: readonly T[], limit: number, fn: (t: T) => Promise<R>): Promise<R[]> {
  const out: R[] = new Array(items.length);
  let next = 0;
  const worker = async () => {
    while (next < items.length) {
      const i = next++;
      out[i] = await fn(items[i]!);
    }
  };
  await Promise.all(Array.from({ length: Math.min(limit, items.length) }, worker));
  return out;
}
