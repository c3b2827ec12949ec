import { alreadyExists, failedPrecondition, formatSize, invalidArgument, StowageError } from "@stowage/core";
import { mapLimit } from "../async.js";
import {
  byVolumeId,
  type CreateResult,
  type CreateVolumeSpec,
  type PoolCapacityReport,
  type VolumeArtifact,
} from "../driver.js";
import {
  cephDfArgv,
  cephOsdDumpArgv,
  cephOsdMetadataArgv,
  isRbdNotFound,
  parseCephDf,
  parseCephOsdDump,
  parseCephOsdMetadata,
  parseRbdDu,
  parseRbdLs,
  parseRbdLsLong,
  type RbdParent,
  rbdCreateArgv,
  rbdDuPoolArgv,
  rbdLsArgv,
  rbdLsLongArgv,
  rbdRenameArgv,
  rbdResizeArgv,
  rbdSpec,
  rbdVersionArgv,
} from "../rbd.js";
import type { Owned, RbdImages } from "./images.js";
import { finalImage, OWNED_IMAGE, RBD_META, type RbdPool, TEMP_IMAGE, tempImage } from "./layout.js";

const CHECK_TIMEOUT_MS = 20_000;
const LIST_CONCURRENCY = 4;

export function createRbdVolumes(pool: RbdPool, images: RbdImages) {
  const { conn, spec, rbd, where, poolName, cephPool, namespace, runner } = pool;

  function validateCreate(req: CreateVolumeSpec): void {
    if (req.qcow2 && Object.keys(req.qcow2).length > 0) {
      throw invalidArgument("qcow2 options do not apply to rbd volumes (they are raw images)", {
        field: "qcow2",
      });
    }
  }

  /** What lies under the volume's final name: ours, nothing, or (thrown) someone else's image. */
  function inspectNames(id: string, purpose: "make" | "delete"): Promise<Owned | undefined> {
    if (purpose === "make") return images.findOwned(id, images.notOurs);
    return images.findOwned(id, (img) =>
      failedPrecondition(
        `image ${rbdSpec(spec(img))} has no Stowage ownership metadata for ${id}; refusing to delete an image that is not ours`,
        { image: img, poolName },
      ),
    );
  }

  async function create(req: CreateVolumeSpec, owned: Owned | undefined): Promise<CreateResult> {
    const id = req.volumeId;
    if (owned) {
      const current = await images.inspect(id, owned.meta);
      // The same operation again (a redelivery, perhaps after a resize), or the same thing asked again.
      if (owned.meta[RBD_META.operationId] === req.operationId || current.sizeBytes === req.sizeBytes) {
        await images.removeImage(tempImage(id));
        return { artifact: current, adopted: true };
      }
      throw alreadyExists(
        `volume ${id} already exists in ${where} as raw ${formatSize(current.sizeBytes)} (operation ${current.operationId}); this request asks for raw ${formatSize(req.sizeBytes)}`,
        { volumeId: id, poolName },
      );
    }
    const tmp = tempImage(id);
    // A crashed attempt may have left its temp image, marked or not: it is debris, never a volume.
    await images.removeImage(tmp);
    await rbd(rbdCreateArgv(conn, spec(tmp), req.sizeBytes));
    return { artifact: await publish(id, req.operationId), adopted: false };
  }

  /**
   * Marks the temp image as the volume's and renames it into place: the image appears under its final name
   * complete and marked, or not at all. `prepare` runs first (a clone's own changes); a failure removes it.
   */
  async function publish(
    id: string,
    operationId: string,
    prepare: () => Promise<void> = async () => undefined,
    onFailure: () => Promise<void> = async () => undefined,
  ): Promise<VolumeArtifact> {
    const tmp = tempImage(id);
    try {
      await images.setMeta(tmp, RBD_META.volumeId, id);
      await images.setMeta(tmp, RBD_META.operationId, operationId);
      await prepare();
      await rbd(rbdRenameArgv(conn, spec(tmp), spec(finalImage(id))));
    } catch (e) {
      await images.removeImage(tmp).catch(() => undefined);
      await onFailure().catch(() => undefined);
      throw e;
    }
    return images.inspect(id, { [RBD_META.operationId]: operationId });
  }

  async function deleteVolume(id: string, owned: Owned | undefined) {
    const image = finalImage(id);
    let existed = false;
    let parent: RbdParent | undefined;
    if (owned) {
      const info = await images.imageInfo(image);
      parent = info?.parent;
      const snaps = await images.snapshotsOf(image);
      for (const s of snaps.filter((x) => x.protected)) {
        const children = await images.childrenOf(image, s.name);
        if (children.length > 0) {
          throw failedPrecondition(
            `volume ${id} cannot be deleted: clones depend on its snapshot ${s.name}: ${images.describeChildren(children)}; delete or flatten them first`,
            { volumeId: id, snapshot: s.name },
          );
        }
      }
      // The marker stays until the image goes: a crash midway leaves a marked image that a retry finishes.
      existed = await images.removeImage(image);
    }
    await images.removeImage(tempImage(id));
    // The clone's hidden snapshot on its source goes last; when the image is gone already (a retry), the
    // pool listing finds it.
    if (owned && !parent) return { existed };
    await images.dropCloneSnapshot(id, parent);
    return { existed };
  }

  async function resize(owned: Owned, sizeBytes: bigint, shrink: boolean): Promise<VolumeArtifact> {
    await rbd(rbdResizeArgv(conn, spec(finalImage(owned.id)), sizeBytes, { allowShrink: shrink }), pool.long);
    return images.inspect(owned.id, owned.meta);
  }

  async function info(owned: Owned): Promise<VolumeArtifact | undefined> {
    try {
      return await images.inspect(owned.id, owned.meta);
    } catch (e) {
      // Deleted between the metadata and the info.
      if (e instanceof StowageError && e.code === "not_found") return undefined;
      if (isRbdNotFound(e)) return undefined;
      throw e;
    }
  }

  /**
   * Images named like our volumes whose metadata, at the last full scan, did not name them (copied by hand):
   * capacity() leaves them out without reading any image's metadata.
   */
  let strays = new Set<string>();

  /**
   * The inventory: `rbd ls -l` and `rbd du` for the whole pool, then each candidate image's metadata. The
   * metadata read stays per image: the ownership marker lives in each image's own metadata and `rbd` has no
   * call that lists it for many images at once. capacity() does not scan.
   */
  async function scan(): Promise<{ volumes: VolumeArtifact[]; foreign: string[] }> {
    const lsArgv = rbdLsLongArgv(conn, cephPool, namespace);
    const { images: listed } = parseRbdLsLong((await rbd(lsArgv)).stdout, lsArgv);
    const duArgv = rbdDuPoolArgv(conn, cephPool, namespace);
    const du = parseRbdDu((await rbd(duArgv)).stdout, duArgv);
    const foreign: string[] = [];
    const candidates: { id: string; sizeBytes: bigint; image: string }[] = [];
    for (const e of listed) {
      // Temp images are unfinished operations of ours: neither volumes nor foreign.
      if (TEMP_IMAGE.test(e.image)) continue;
      const m = OWNED_IMAGE.exec(e.image);
      if (m) candidates.push({ id: m[1]!, sizeBytes: e.sizeBytes, image: e.image });
      else foreign.push(e.image);
    }
    const found = await mapLimit(candidates, LIST_CONCURRENCY, async (c) => {
      const meta = await images.readMeta(c.image);
      // Deleted since the listing: simply gone.
      if (meta === undefined) return undefined;
      if (meta[RBD_META.volumeId] !== c.id) {
        foreign.push(c.image);
        return undefined;
      }
      return images.artifact(c.id, c.sizeBytes, du.usedByImage.get(c.image) ?? 0n, meta);
    });
    strays = new Set(foreign.filter((name) => OWNED_IMAGE.test(name)));
    return {
      volumes: found.filter((v): v is VolumeArtifact => v !== undefined).sort(byVolumeId),
      foreign: foreign.sort(),
    };
  }

  const list = () => scan();

  /**
   * A constant number of tool runs, whatever the number of images: `rbd ls -l` (the provisioned bytes) and
   * `ceph df`; without a ceph-mgr, also `rbd du` and the OSD map and metadata to estimate from. Provisioned
   * bytes count the images under our volumes' names, less the strays the last list() found: an image copied
   * by hand under one of our names between two lists counts until the next one (more provisioned, never less).
   */
  async function capacity(): Promise<PoolCapacityReport> {
    const lsArgv = rbdLsLongArgv(conn, cephPool, namespace);
    const { images: listed } = parseRbdLsLong((await rbd(lsArgv)).stdout, lsArgv);
    const provisionedBytes = listed
      .filter((e) => OWNED_IMAGE.test(e.image) && !strays.has(e.image))
      .reduce((s, e) => s + e.sizeBytes, 0n);
    const dfArgv = cephDfArgv(conn);
    const df = parseCephDf((await runner.run("ceph", dfArgv)).stdout, dfArgv);
    const stats = df.pools.get(cephPool);
    if (df.hasStats && stats) {
      // MAX AVAIL already accounts for replication, the full ratio and the pool quota.
      return {
        totalBytes: stats.storedBytes + stats.maxAvailBytes,
        usedBytes: stats.storedBytes,
        freeBytes: stats.maxAvailBytes,
        provisionedBytes,
      };
    }
    const duArgv = rbdDuPoolArgv(conn, cephPool, namespace);
    const usedBytes = parseRbdDu((await rbd(duArgv)).stdout, duArgv).totalUsedBytes;
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

  return {
    validateCreate,
    inspectNames,
    create,
    publish,
    delete: deleteVolume,
    resize,
    info,
    list,
    capacity,
    check,
  };
}

export type RbdVolumes = ReturnType<typeof createRbdVolumes>;
