import { constants } from "node:fs";
import {
  access,
  chmod,
  lstat,
  mkdir,
  open,
  readdir,
  readFile,
  rename,
  stat,
  statfs,
  unlink,
} from "node:fs/promises";
import { isAbsolute, join, resolve } from "node:path";
import { setTimeout as sleep } from "node:timers/promises";
import {
  alreadyExists,
  FORMATS_BY_KIND,
  failedPrecondition,
  formatSize,
  invalidArgument,
  notFound,
  type Qcow2Options,
  StowageError,
  type VolumeFormat,
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
  type WipeMode,
} from "./driver.js";
import { createKeyedLock } from "./keyed-lock.js";
import {
  type BackingFile,
  parseQemuImgInfo,
  parseQemuImgInfoChain,
  parseQemuImgMap,
  type QemuImgInfo,
  qemuImgConvertArgv,
  qemuImgCreateArgv,
  qemuImgCreateOverlayArgv,
  qemuImgFlattenArgv,
  qemuImgInfoArgv,
  qemuImgInfoChainArgv,
  qemuImgMapArgv,
  qemuImgResizeArgv,
  qemuImgSnapshotArgv,
} from "./qemu-img.js";
import type { ToolRunner } from "./runner.js";

/**
 * `dir` pools: qcow2/raw files in one directory, `<root>/<volumeId>.<qcow2|raw>`, each owned through a sidecar
 * record `<root>/.stowage/<volumeId>.json`. The sidecar is written before the image (it is the intent) and
 * removed after it, so at every instant a file under a final name either has its record or is not ours.
 *
 * Snapshots, clones and flatten follow Proxmox's dir storage:
 * - A snapshot is a qcow2 internal snapshot whose tag is the snapshot id, recorded in the volume's sidecar
 *   (the record is written first, as the intent). Raw files have nowhere to keep one: refused.
 * - A clone of a snapshot is a qcow2 overlay on a read-only base image, `.stowage/base-<snapshotId>.qcow2`,
 *   exported from the snapshot once (`qemu-img convert -l`) and shared by every clone of that snapshot. A live
 *   image cannot be a backing file (the VM keeps writing it), so a clone of a volume's current data, a clone
 *   into raw, and a clone asked for with `flatten` are full copies (`qemu-img convert`).
 * - A base exported from a snapshot of an overlay only holds what differs from the overlay's own base
 *   (`convert -B`), so clones of clones share their data; `maxChainDepth` bounds the chains this builds.
 * - A snapshot whose base image still has clones (or bases of their snapshots) on it cannot be deleted, nor
 *   can its volume: failed_precondition names them (as RBD refuses to remove a snapshot with children).
 *   The base lives as long as its snapshot, so later clones of the same snapshot reuse it.
 */

export interface DirDriverOptions {
  poolName: string;
  /** Absolute path of the pool directory. It must exist; the driver never creates it. */
  root: string;
  runner: ToolRunner;
  /** Applied under each request's own qcow2 options (the request wins). Not applied to raw volumes. */
  qcow2Defaults?: Qcow2Options;
  /**
   * The longest backing chain a linked clone may get, counted in backing files below it (a clone of a plain
   * volume's snapshot: 1; a clone of a snapshot of that clone: 2). A clone that would go deeper is made as a
   * full copy instead: every link costs a lookup on each cluster read that misses. 0: every clone is a full
   * copy. Default 8.
   */
  maxChainDepth?: number;
  /**
   * Default throttle for `wipe: "zero"`, in bytes per second, so wiping a large volume does not starve the
   * VMs on the same disks; a delete's own `wipeBytesPerSecond` wins. 0 or absent: unthrottled.
   */
  wipeBytesPerSecond?: number;
  /**
   * Timeout for `qemu-img create`. Default: the runner's default, or 30 minutes with falloc/full preallocation,
   * which writes the whole image.
   */
  createTimeoutMs?: number;
  /** Timeout for commands that copy a volume's data (clone by copy, base export, flatten). Default 6 hours. */
  copyTimeoutMs?: number;
  /** Clock for `createdAt` (tests). */
  now?: () => Date;
}

/** Directory for ownership records and temp images, inside the pool so renames never cross filesystems. */
export const DIR_META = ".stowage";
export const DEFAULT_MAX_CHAIN_DEPTH = 8;
const PREALLOCATED_CREATE_TIMEOUT_MS = 30 * 60_000;
const DEFAULT_COPY_TIMEOUT_MS = 6 * 60 * 60_000;
const LIST_CONCURRENCY = 8;
const WIPE_CHUNK_BYTES = 1024 * 1024;
const FORMATS: readonly VolumeFormat[] = ["qcow2", "raw"];
const OWNED_FILE = /^(vol-[0-9a-f]{32})\.(qcow2|raw)$/;
const BASE_RECORD = /^base-(snap-[0-9a-f]{32})\.json$/;
const RAW_SNAPSHOTS = "raw volumes in dir pools cannot be snapshotted; use qcow2";

const decimal = z.string().regex(/^\d+$/);

const snapshotRecordSchema = z.object({
  snapshotId: z.string(),
  operationId: z.string(),
  /** The volume's virtual size when the snapshot was taken. */
  sizeBytes: decimal,
  createdAt: z.string(),
});

const sidecarSchema = z.object({
  volumeId: z.string(),
  operationId: z.string(),
  format: z.enum(["qcow2", "raw"]),
  /** Size asked for at creation, in bytes, as a decimal string (JSON has no 64-bit integers). */
  sizeBytes: decimal,
  createdAt: z.string(),
  /** Internal snapshots of the image that Stowage made; absent when there are none. */
  snapshots: z.array(snapshotRecordSchema).optional(),
  /** Set for volumes made by cloneVolume: where the data came from. */
  clone: z.object({ sourceVolumeId: z.string(), sourceSnapshotId: z.string().optional() }).optional(),
});

/** Ownership of a base image, `.stowage/base-<snapshotId>.json`: written before the image, removed after. */
const baseRecordSchema = z.object({
  snapshotId: z.string(),
  sourceVolumeId: z.string(),
  operationId: z.string(),
  createdAt: z.string(),
});

interface SnapshotRecord {
  snapshotId: string;
  operationId: string;
  sizeBytes: bigint;
  createdAt: string;
}

interface Sidecar {
  volumeId: string;
  operationId: string;
  format: VolumeFormat;
  sizeBytes: bigint;
  createdAt: string;
  snapshots: SnapshotRecord[];
  clone?: { sourceVolumeId: string; sourceSnapshotId?: string };
}

type BaseRecord = z.output<typeof baseRecordSchema>;

type Kind = "missing" | "file" | "other";

export function createDirDriver(opts: DirDriverOptions): PoolDriver {
  const poolName = validateName("pool name", opts.poolName);
  if (!isAbsolute(opts.root)) {
    throw invalidArgument(`dir pool ${poolName}: root ${JSON.stringify(opts.root)} must be an absolute path`);
  }
  const maxChainDepth = opts.maxChainDepth ?? DEFAULT_MAX_CHAIN_DEPTH;
  if (!Number.isInteger(maxChainDepth) || maxChainDepth < 0) {
    throw invalidArgument(`dir pool ${poolName}: maxChainDepth ${maxChainDepth} must be a whole number ≥ 0`);
  }
  const root = resolve(opts.root);
  const metaDir = join(root, DIR_META);
  const runner = opts.runner;
  const now = opts.now ?? (() => new Date());
  const copyTimeoutMs = opts.copyTimeoutMs ?? DEFAULT_COPY_TIMEOUT_MS;
  const lock = createKeyedLock();

  const volumePath = (id: string, format: VolumeFormat) => join(root, `${id}.${format}`);
  const tempPath = (id: string, format: VolumeFormat) => join(metaDir, `tmp-${id}.${format}`);
  // A deleted image is first renamed here, so it leaves its final name at once, and wiped afterwards.
  const trashPath = (id: string, format: VolumeFormat) => join(metaDir, `trash-${id}.${format}`);
  const sidecarPath = (id: string) => join(metaDir, `${id}.json`);
  const basePath = (snapshotId: string) => join(metaDir, `base-${snapshotId}.qcow2`);
  const baseTempPath = (snapshotId: string) => join(metaDir, `tmp-base-${snapshotId}.qcow2`);
  const baseRecordPath = (snapshotId: string) => join(metaDir, `base-${snapshotId}.json`);
  /** qcow2 options for images the driver makes by copying: the pool's, less preallocation (a copy is dense). */
  const copyOptions = (format: VolumeFormat): Qcow2Options => {
    if (format !== "qcow2") return {};
    const { preallocation: _, ...rest } = opts.qcow2Defaults ?? {};
    return rest;
  };

  /** Two volumes locked in id order, so two operations on the same pair can never wait on each other. */
  function lockBoth<T>(a: string, b: string, fn: () => Promise<T>): Promise<T> {
    const [first, second] = a < b ? [a, b] : [b, a];
    return lock.run(first, () => lock.run(second, fn));
  }

  async function kindOf(path: string): Promise<Kind> {
    try {
      // lstat: a symlink under a volume's name is not a volume we made.
      return (await lstat(path)).isFile() ? "file" : "other";
    } catch (e) {
      if (isNoEnt(e)) return "missing";
      throw e;
    }
  }

  async function assertRootUsable(): Promise<void> {
    let st: Awaited<ReturnType<typeof stat>>;
    try {
      st = await stat(root);
    } catch (e) {
      if (isNoEnt(e)) throw failedPrecondition(`dir pool ${poolName}: root ${root} does not exist`);
      throw e;
    }
    if (!st.isDirectory()) throw failedPrecondition(`dir pool ${poolName}: root ${root} is not a directory`);
  }

  async function readRecord<S extends z.ZodType>(path: string, schema: S): Promise<z.output<S> | undefined> {
    let text: string;
    try {
      text = await readFile(path, "utf8");
    } catch (e) {
      if (isNoEnt(e)) return undefined;
      throw e;
    }
    try {
      return schema.parse(JSON.parse(text));
    } catch (e) {
      throw failedPrecondition(
        `dir pool ${poolName}: ownership record ${path} is unreadable (${(e as Error).message.split("\n")[0]}); inspect or remove it by hand`,
      );
    }
  }

  async function writeRecord(path: string, value: unknown): Promise<void> {
    const partial = `${path}.partial`;
    const body = `${JSON.stringify(value, null, 2)}\n`;
    // Write, flush, rename: a crash leaves either the old record or the new one, never half of one.
    const fh = await open(partial, "w", 0o600);
    try {
      await fh.writeFile(body, "utf8");
      await fh.sync();
    } finally {
      await fh.close();
    }
    await rename(partial, path);
    await fsyncDir(metaDir);
  }

  async function readSidecar(id: string): Promise<Sidecar | undefined> {
    const path = sidecarPath(id);
    const parsed = await readRecord(path, sidecarSchema);
    if (!parsed) return undefined;
    if (parsed.volumeId !== id) {
      throw failedPrecondition(
        `dir pool ${poolName}: ownership record ${path} names ${parsed.volumeId}, not ${id}; inspect it by hand`,
      );
    }
    const { snapshots, clone, ...rest } = parsed;
    return {
      ...rest,
      sizeBytes: BigInt(parsed.sizeBytes),
      snapshots: (snapshots ?? []).map((s) => ({ ...s, sizeBytes: BigInt(s.sizeBytes) })),
      ...(clone ? { clone } : {}),
    };
  }

  async function writeSidecar(rec: Sidecar): Promise<void> {
    const { snapshots, clone, ...rest } = rec;
    await writeRecord(sidecarPath(rec.volumeId), {
      ...rest,
      sizeBytes: rec.sizeBytes.toString(),
      // Plain volumes keep the short record they always had.
      ...(snapshots.length > 0
        ? { snapshots: snapshots.map((s) => ({ ...s, sizeBytes: s.sizeBytes.toString() })) }
        : {}),
      ...(clone ? { clone } : {}),
    });
  }

  async function imageInfo(path: string, format: VolumeFormat): Promise<QemuImgInfo> {
    const argv = qemuImgInfoArgv(path, format);
    const { stdout } = await runner.run("qemu-img", argv);
    return parseQemuImgInfo(stdout, argv);
  }

  /** How many backing files lie below the image (0 for a flat image). */
  async function backingDepth(path: string, format: VolumeFormat): Promise<number> {
    if (format === "raw") return 0;
    const argv = qemuImgInfoChainArgv(path, format);
    const { stdout } = await runner.run("qemu-img", argv);
    return parseQemuImgInfoChain(stdout, argv).length - 1;
  }

  function toArtifact(id: string, rec: Sidecar, info: QemuImgInfo): VolumeArtifact {
    return {
      volumeId: id,
      poolName,
      sizeBytes: info.virtualSize,
      format: rec.format,
      allocatedBytes: info.actualSize ?? 0n,
      path: volumePath(id, rec.format),
      operationId: rec.operationId,
    };
  }

  async function inspect(id: string, rec: Sidecar): Promise<VolumeArtifact> {
    return toArtifact(id, rec, await imageInfo(volumePath(id, rec.format), rec.format));
  }

  /** The owned, completed volume for `id`, or undefined (no record, or the image was never finished). */
  async function findOwned(id: string): Promise<Sidecar | undefined> {
    const rec = await readSidecar(id);
    if (!rec) return undefined;
    return (await kindOf(volumePath(id, rec.format))) === "file" ? rec : undefined;
  }

  async function requireOwned(id: string): Promise<Sidecar> {
    const rec = await findOwned(id);
    if (!rec) throw notFound(`volume ${id} does not exist in pool ${poolName}`, { volumeId: id, poolName });
    return rec;
  }

  function describe(format: VolumeFormat, size: bigint) {
    return `${format} ${formatSize(size)}`;
  }

  /** Refuses files under the volume's names that its record does not account for (never taken over). */
  async function assertNoForeignImage(
    id: string,
    rec: Sidecar | undefined,
    format: VolumeFormat,
  ): Promise<void> {
    for (const f of FORMATS) {
      const p = volumePath(id, f);
      const kind = await kindOf(p);
      if (kind === "missing") continue;
      if (!rec || f !== format || kind !== "file") {
        throw alreadyExists(
          `${p} already exists in pool ${poolName} without a matching Stowage ownership record; refusing to take it over (move it away, or import it)`,
          { volumeId: id, poolName, path: p },
        );
      }
    }
  }

  function assertDirFormat(format: VolumeFormat): void {
    if (!FORMATS_BY_KIND.dir.includes(format)) {
      throw invalidArgument(`format ${JSON.stringify(format)} is not valid for dir pools: use qcow2 or raw`, {
        field: "format",
      });
    }
  }

  /**
   * Runs `make(tmp)` to build the image in its temp file, then moves it under its final name. The record is
   * written first (the intent); a failure removes both, a crash is finished by the retry.
   */
  async function materialise(record: Sidecar, make: (tmp: string) => Promise<void>): Promise<VolumeArtifact> {
    const id = record.volumeId;
    const tmpPath = tempPath(id, record.format);
    await mkdir(metaDir, { recursive: true, mode: 0o700 });
    // A crashed attempt may have left a half-written temp image; qemu-img must start from nothing.
    await removeIfExists(tmpPath);
    await writeSidecar(record);
    try {
      await make(tmpPath);
      await fsyncFile(tmpPath);
      // The image appears under its final name complete, or not at all.
      await rename(tmpPath, volumePath(id, record.format));
    } catch (e) {
      await removeIfExists(tmpPath).catch(() => undefined);
      await removeIfExists(sidecarPath(id)).catch(() => undefined);
      throw e;
    }
    await fsyncDir(root);
    return inspect(id, record);
  }

  async function createVolume(spec: CreateVolumeSpec): Promise<CreateResult> {
    const id = spec.volumeId;
    assertVolumeId(id);
    assertOperationId(spec.operationId);
    assertDirFormat(spec.format);
    validateVolumeSize(spec.sizeBytes);
    const options: Qcow2Options =
      spec.format === "qcow2" ? { ...opts.qcow2Defaults, ...spec.qcow2 } : { ...spec.qcow2 };
    // Built (and so validated) before anything on disk is touched: bad options change nothing.
    const argv = qemuImgCreateArgv(tempPath(id, spec.format), spec.format, spec.sizeBytes, options);
    const timeoutMs =
      opts.createTimeoutMs ??
      (options.preallocation === "falloc" || options.preallocation === "full"
        ? PREALLOCATED_CREATE_TIMEOUT_MS
        : undefined);

    return lock.run(id, async () => {
      await assertRootUsable();
      const rec = await readSidecar(id);
      if (rec) {
        const differs =
          rec.clone !== undefined ||
          rec.format !== spec.format ||
          (rec.sizeBytes !== spec.sizeBytes && rec.operationId !== spec.operationId);
        if (differs) {
          throw alreadyExists(
            `volume ${id} already exists in pool ${poolName} as ${describe(rec.format, rec.sizeBytes)}${rec.clone ? ` cloned from ${rec.clone.sourceVolumeId}` : ""} (operation ${rec.operationId}); this request asks for ${describe(spec.format, spec.sizeBytes)}`,
            { volumeId: id, poolName },
          );
        }
      }
      await assertNoForeignImage(id, rec, spec.format);
      if (rec && (await kindOf(volumePath(id, spec.format))) === "file") {
        // Done before: a redelivery, or a crash after the rename but before the result went out.
        await removeIfExists(tempPath(id, spec.format));
        return { artifact: await inspect(id, rec), adopted: true };
      }
      const record: Sidecar = {
        volumeId: id,
        operationId: spec.operationId,
        format: spec.format,
        sizeBytes: spec.sizeBytes,
        createdAt: now().toISOString(),
        snapshots: [],
      };
      const artifact = await materialise(record, async () => {
        await runner.run("qemu-img", argv, timeoutMs === undefined ? {} : { timeoutMs });
      });
      return { artifact, adopted: false };
    });
  }

  async function deleteVolume(volumeId: string, dopts: DeleteOptions = {}): Promise<{ existed: boolean }> {
    assertVolumeId(volumeId);
    if (dopts.operationId !== undefined) assertOperationId(dopts.operationId);
    const wipe = dopts.wipe ?? "none";
    if (!(["none", "zero", "discard"] as const).includes(wipe)) {
      throw invalidArgument(`wipe mode ${JSON.stringify(wipe)} is not valid: use none, zero or discard`, {
        field: "wipe",
      });
    }
    const rate = dopts.wipeBytesPerSecond ?? opts.wipeBytesPerSecond ?? 0;
    if (!Number.isFinite(rate) || rate < 0) {
      throw invalidArgument(`wipe rate ${rate} is not valid: bytes per second, 0 for unthrottled`, {
        field: "wipeBytesPerSecond",
      });
    }
    const id = volumeId;
    return lock.run(id, async () => {
      await assertRootUsable();
      const rec = await readSidecar(id);
      let existed = false;
      if (rec) {
        const p = volumePath(id, rec.format);
        const kind = await kindOf(p);
        if (kind === "other") {
          throw failedPrecondition(`${p} is not a regular file; refusing to delete it`, { path: p });
        }
        // Bases exported from this volume's snapshots outlive it only while nothing stands on them.
        const bases = await basesOf(id);
        for (const b of bases) {
          const dependents = await baseDependents(b.snapshotId);
          if (dependents.length > 0) {
            throw failedPrecondition(
              `volume ${id} has snapshot ${b.snapshotId} that ${dependents.join(", ")} depend on; flatten or delete them first`,
              { volumeId: id, snapshotId: b.snapshotId, dependents },
            );
          }
        }
        const trash = trashPath(id, rec.format);
        if (kind === "file") {
          await rename(p, trash);
          await fsyncDir(root);
        }
        // Also finishes the wipe of an earlier attempt that crashed after the rename.
        if ((await kindOf(trash)) === "file") {
          await wipeFile(trash, wipe, rate);
          await unlink(trash);
          existed = true;
        }
        for (const b of bases) await removeBase(b.snapshotId);
      } else {
        for (const f of FORMATS) {
          const p = volumePath(id, f);
          if ((await kindOf(p)) !== "missing") {
            throw failedPrecondition(
              `${p} has no Stowage ownership record; refusing to delete a file that is not ours`,
              { path: p },
            );
          }
        }
      }
      for (const f of FORMATS) await removeIfExists(tempPath(id, f));
      // The record goes last: a crash before this line leaves a record without an image, which a retry
      // (of the delete or the create) handles, never an image without a record.
      if (rec) {
        await removeIfExists(sidecarPath(id));
        await fsyncDir(metaDir).catch(() => undefined);
      }
      return { existed };
    });
  }

  /**
   * Destroys a file's data before it is unlinked.
   * - zero: writes zeros over every range the filesystem holds data for (`qemu-img map` of the file as raw);
   *   holes hold nothing, and writing zeros into them would allocate the whole virtual size of a sparse image.
   * - discard: truncates the file to nothing. That releases every block at once (and so discards them on
   *   filesystems mounted with `discard`), exactly what a punch-hole over the whole file would do, without a
   *   tool or a filesystem that supports punching; unlike a bare unlink it also frees blocks that another
   *   open handle or hard link would keep alive.
   * Neither reaches past the filesystem: on copy-on-write filesystems and SSDs old copies may survive.
   */
  async function wipeFile(path: string, mode: WipeMode, bytesPerSecond: number): Promise<void> {
    if (mode === "none") return;
    if (mode === "discard") {
      const fh = await open(path, "r+");
      try {
        await fh.truncate(0);
        await fh.sync();
      } finally {
        await fh.close();
      }
      return;
    }
    const argv = qemuImgMapArgv(path, "raw");
    const { stdout } = await runner.run("qemu-img", argv);
    const extents = parseQemuImgMap(stdout, argv).filter((e) => e.data);
    const zeros = Buffer.alloc(WIPE_CHUNK_BYTES);
    const started = performance.now();
    let written = 0;
    const fh = await open(path, "r+");
    try {
      for (const e of extents) {
        let pos = Number(e.start);
        const end = Number(e.start + e.length);
        while (pos < end) {
          const n = Math.min(WIPE_CHUNK_BYTES, end - pos);
          await fh.write(zeros, 0, n, pos);
          pos += n;
          written += n;
          if (bytesPerSecond > 0) {
            const due = (written / bytesPerSecond) * 1000 - (performance.now() - started);
            if (due > 0) await sleep(due);
          }
        }
      }
      await fh.sync();
    } finally {
      await fh.close();
    }
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
      const rec = await requireOwned(id);
      const current = await inspect(id, rec);
      // Already there: a redelivered resize converges.
      if (current.sizeBytes === newSizeBytes) return current;
      const shrink = newSizeBytes < current.sizeBytes;
      if (shrink && !ropts.allowShrink) {
        throw failedPrecondition(
          `shrinking volume ${id} from ${formatSize(current.sizeBytes)} to ${formatSize(newSizeBytes)} would discard the data past the new end; allow shrinking explicitly to do it`,
          { volumeId: id, currentBytes: current.sizeBytes.toString() },
        );
      }
      await runner.run("qemu-img", qemuImgResizeArgv(current.path, rec.format, newSizeBytes, { shrink }));
      return inspect(id, rec);
    });
  }

  async function info(volumeId: string): Promise<VolumeArtifact | undefined> {
    assertVolumeId(volumeId);
    const rec = await findOwned(volumeId);
    return rec ? inspect(volumeId, rec) : undefined;
  }

  /** Owned, completed volumes (record and image), from a directory listing; and the names that are not ours. */
  async function scanOwned(): Promise<{ owned: { id: string; rec: Sidecar }[]; foreign: string[] }> {
    const entries = await readdir(root, { withFileTypes: true });
    const foreign: string[] = [];
    const owned: { id: string; rec: Sidecar }[] = [];
    for (const e of entries) {
      if (e.isDirectory()) continue; // .stowage (records, bases, temp files), lost+found, ...: not volumes
      const m = OWNED_FILE.exec(e.name);
      let rec: Sidecar | undefined;
      if (m && e.isFile()) {
        // An unreadable record makes the file unaccounted for: report it rather than fail the inventory.
        rec = await readSidecar(m[1]!).catch(() => undefined);
      }
      if (m && rec && rec.format === m[2]) owned.push({ id: m[1]!, rec });
      else foreign.push(e.name);
    }
    return { owned, foreign };
  }

  async function list(): Promise<{ volumes: VolumeArtifact[]; foreign: string[] }> {
    await assertRootUsable();
    const { owned, foreign } = await scanOwned();
    const volumes = await mapLimit(owned, LIST_CONCURRENCY, async ({ id, rec }) => {
      try {
        return await inspect(id, rec);
      } catch (e) {
        // Deleted between readdir and info: it is simply gone.
        if ((await kindOf(volumePath(id, rec.format))) === "missing") return undefined;
        throw e;
      }
    });
    return {
      volumes: volumes.filter((v): v is VolumeArtifact => v !== undefined).sort(byId),
      foreign: foreign.sort(),
    };
  }

  async function capacity(): Promise<PoolCapacityReport> {
    await assertRootUsable();
    // Base images are not volumes, but they live on the same filesystem: statfs counts their bytes as used.
    const s = await statfs(root, { bigint: true });
    const totalBytes = s.blocks * s.bsize;
    // bavail, not bfree: blocks reserved for root are not ours to promise.
    const freeBytes = s.bavail * s.bsize;
    const usedBytes = totalBytes - s.bfree * s.bsize;
    const { volumes } = await list();
    const provisionedBytes = volumes.reduce((sum, v) => sum + v.sizeBytes, 0n);
    return { totalBytes, usedBytes, freeBytes, provisionedBytes };
  }

  async function check(): Promise<{ healthy: boolean; message: string }> {
    const where = `dir pool ${poolName} at ${root}`;
    try {
      await assertRootUsable();
      await access(root, constants.W_OK | constants.X_OK);
    } catch (e) {
      const msg = e instanceof StowageError ? e.message : `${where} is not writable: ${(e as Error).message}`;
      return { healthy: false, message: msg };
    }
    if ((await kindOf(metaDir)) !== "missing") {
      try {
        if (!(await stat(metaDir)).isDirectory()) throw new Error("not a directory");
        await access(metaDir, constants.W_OK | constants.X_OK);
      } catch (e) {
        return { healthy: false, message: `${where}: ${metaDir} is not usable: ${(e as Error).message}` };
      }
    }
    try {
      const { stdout } = await runner.run("qemu-img", ["--version"], { timeoutMs: 10_000 });
      return { healthy: true, message: `${where} is usable (${stdout.split("\n")[0]?.trim()})` };
    } catch (e) {
      return { healthy: false, message: `${where}: ${(e as Error).message}` };
    }
  }

  // ---- snapshots ----

  function toSnapshotInfo(volumeId: string, s: SnapshotRecord): SnapshotInfo {
    return {
      snapshotId: s.snapshotId,
      volumeId,
      sizeBytes: s.sizeBytes,
      createdAt: s.createdAt,
      operationId: s.operationId,
    };
  }

  function assertSnapshottable(id: string, rec: Sidecar): void {
    if (rec.format === "raw") {
      throw failedPrecondition(`volume ${id}: ${RAW_SNAPSHOTS}`, { volumeId: id, format: rec.format });
    }
  }

  async function createSnapshot(
    volumeId: string,
    snapshotId: string,
    sopts: { operationId: string },
  ): Promise<{ snapshot: SnapshotInfo; adopted: boolean }> {
    assertVolumeId(volumeId);
    assertSnapshotId(snapshotId);
    assertOperationId(sopts.operationId);
    const id = volumeId;
    return lock.run(id, async () => {
      const rec = await requireOwned(id);
      assertSnapshottable(id, rec);
      const path = volumePath(id, rec.format);
      const image = await imageInfo(path, rec.format);
      const tag = image.snapshots.find((s) => s.name === snapshotId);
      const known = rec.snapshots.find((s) => s.snapshotId === snapshotId);
      if (tag) {
        // Made before: a redelivery, or a crash after the snapshot but before the result went out.
        if (known) return { snapshot: toSnapshotInfo(id, known), adopted: true };
        // A tag named with one of our ids but no record: only our crashed attempt can have made it.
        const adoptedRec: SnapshotRecord = {
          snapshotId,
          operationId: sopts.operationId,
          sizeBytes: image.virtualSize,
          createdAt: tag.date.toISOString(),
        };
        await writeSidecar({ ...rec, snapshots: [...rec.snapshots, adoptedRec] });
        return { snapshot: toSnapshotInfo(id, adoptedRec), adopted: true };
      }
      const entry: SnapshotRecord = {
        snapshotId,
        operationId: sopts.operationId,
        sizeBytes: image.virtualSize,
        createdAt: now().toISOString(),
      };
      // The record first, as the intent (a crash leaves a record without a tag, which list ignores).
      const others = rec.snapshots.filter((s) => s.snapshotId !== snapshotId);
      await writeSidecar({ ...rec, snapshots: [...others, entry] });
      try {
        await runner.run("qemu-img", qemuImgSnapshotArgv(path, "create", snapshotId));
      } catch (e) {
        await writeSidecar({ ...rec, snapshots: others }).catch(() => undefined);
        throw e;
      }
      return { snapshot: toSnapshotInfo(id, entry), adopted: false };
    });
  }

  async function listSnapshots(volumeId: string): Promise<SnapshotInfo[]> {
    assertVolumeId(volumeId);
    const rec = await requireOwned(volumeId);
    if (rec.format === "raw") return [];
    const tags = new Set(
      (await imageInfo(volumePath(volumeId, rec.format), rec.format)).snapshots.map((s) => s.name),
    );
    return rec.snapshots
      .filter((s) => tags.has(s.snapshotId))
      .sort((a, b) => a.createdAt.localeCompare(b.createdAt) || a.snapshotId.localeCompare(b.snapshotId))
      .map((s) => toSnapshotInfo(volumeId, s));
  }

  async function deleteSnapshot(
    volumeId: string,
    snapshotId: string,
    sopts: { operationId: string },
  ): Promise<{ existed: boolean }> {
    assertVolumeId(volumeId);
    assertSnapshotId(snapshotId);
    assertOperationId(sopts.operationId);
    const id = volumeId;
    return lock.run(id, async () => {
      await assertRootUsable();
      const dependents = await baseDependents(snapshotId);
      if (dependents.length > 0) {
        throw failedPrecondition(
          `snapshot ${snapshotId} of volume ${id} has clones that depend on it (${dependents.join(", ")}); flatten or delete them first`,
          { volumeId: id, snapshotId, dependents },
        );
      }
      const rec = await findOwned(id);
      let existed = false;
      if (rec && rec.format === "qcow2") {
        const path = volumePath(id, rec.format);
        const image = await imageInfo(path, rec.format);
        if (image.snapshots.some((s) => s.name === snapshotId)) {
          await runner.run("qemu-img", qemuImgSnapshotArgv(path, "delete", snapshotId));
          existed = true;
        }
      }
      // The base goes with its snapshot (it is only ever exported from a snapshot of this volume).
      const base = await readRecord(baseRecordPath(snapshotId), baseRecordSchema);
      if (base?.sourceVolumeId === id) await removeBase(snapshotId);
      if (rec?.snapshots.some((s) => s.snapshotId === snapshotId)) {
        await writeSidecar({ ...rec, snapshots: rec.snapshots.filter((s) => s.snapshotId !== snapshotId) });
      }
      return { existed };
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
    const id = volumeId;
    return lock.run(id, async () => {
      const rec = await requireOwned(id);
      assertSnapshottable(id, rec);
      const path = volumePath(id, rec.format);
      const image = await imageInfo(path, rec.format);
      if (!image.snapshots.some((s) => s.name === snapshotId)) {
        throw notFound(`snapshot ${snapshotId} of volume ${id} does not exist in pool ${poolName}`, {
          volumeId: id,
          snapshotId,
        });
      }
      // Applying the same snapshot again yields the same image: a redelivered revert converges.
      await runner.run("qemu-img", qemuImgSnapshotArgv(path, "apply", snapshotId));
      return inspect(id, rec);
    });
  }

  // ---- base images ----

  /** Base images exported from snapshots of `volumeId`. */
  async function basesOf(volumeId: string): Promise<BaseRecord[]> {
    let names: string[];
    try {
      names = await readdir(metaDir);
    } catch (e) {
      if (isNoEnt(e)) return [];
      throw e;
    }
    const out: BaseRecord[] = [];
    for (const n of names) {
      const m = BASE_RECORD.exec(n);
      if (!m) continue;
      const rec = await readRecord(join(metaDir, n), baseRecordSchema);
      if (rec?.sourceVolumeId === volumeId) out.push(rec);
    }
    return out;
  }

  /**
   * What reads through the base image of `snapshotId`: clone volumes, and bases exported from snapshots of
   * those clones. Asked of the images themselves (their backing file), not of records, so a flattened clone
   * no longer counts even if a crash kept its record unchanged.
   */
  async function baseDependents(snapshotId: string): Promise<string[]> {
    const base = basePath(snapshotId);
    if ((await kindOf(base)) === "missing") return [];
    const candidates: { name: string; path: string }[] = [];
    const { owned } = await scanOwned();
    for (const { id, rec } of owned) {
      if (rec.format === "qcow2") candidates.push({ name: `clone ${id}`, path: volumePath(id, rec.format) });
    }
    for (const n of await readdir(metaDir)) {
      const m = /^base-(snap-[0-9a-f]{32})\.qcow2$/.exec(n);
      if (m && m[1] !== snapshotId) {
        candidates.push({ name: `the base image of snapshot ${m[1]}`, path: join(metaDir, n) });
      }
    }
    const hits = await mapLimit(candidates, LIST_CONCURRENCY, async (c) => {
      try {
        const i = await imageInfo(c.path, "qcow2");
        const backing = i.fullBackingFilename ?? i.backingFilename;
        return backing !== undefined && resolve(root, backing) === base ? c.name : undefined;
      } catch (e) {
        if ((await kindOf(c.path)) === "missing") return undefined;
        throw e;
      }
    });
    return hits.filter((h): h is string => h !== undefined).sort();
  }

  async function removeBase(snapshotId: string): Promise<void> {
    await removeIfExists(baseTempPath(snapshotId));
    await removeIfExists(basePath(snapshotId));
    // The record last, like volumes: never a base image without its record.
    await removeIfExists(baseRecordPath(snapshotId));
    await fsyncDir(metaDir).catch(() => undefined);
  }

  /**
   * The read-only base image holding `snapshotId`'s data, exported on first use. When the source is itself an
   * overlay, the base only holds what differs from the source's backing file and stands on it, so the chain
   * is one image deeper than the source's.
   */
  async function ensureBase(
    sourceId: string,
    srcPath: string,
    srcInfo: QemuImgInfo,
    snapshotId: string,
    operationId: string,
  ): Promise<string> {
    const path = basePath(snapshotId);
    const recordPath = baseRecordPath(snapshotId);
    const existing = await readRecord(recordPath, baseRecordSchema);
    if (existing && (await kindOf(path)) === "file") return path;
    const backing = backingOf(srcInfo);
    await mkdir(metaDir, { recursive: true, mode: 0o700 });
    const tmp = baseTempPath(snapshotId);
    await removeIfExists(tmp);
    const rec: BaseRecord = existing ?? {
      snapshotId,
      sourceVolumeId: sourceId,
      operationId,
      createdAt: now().toISOString(),
    };
    if (!existing) await writeRecord(recordPath, rec);
    try {
      await runner.run(
        "qemu-img",
        qemuImgConvertArgv(srcPath, tmp, {
          sourceFormat: "qcow2",
          targetFormat: "qcow2",
          snapshotTag: snapshotId,
          ...(backing ? { backing } : {}),
          qcow2: copyOptions("qcow2"),
        }),
        { timeoutMs: copyTimeoutMs },
      );
      await fsyncFile(tmp);
      // Read-only: every clone of the snapshot reads it, none may write it.
      await chmod(tmp, 0o444);
      await rename(tmp, path);
      await fsyncDir(metaDir);
    } catch (e) {
      await removeIfExists(tmp).catch(() => undefined);
      if (!existing) await removeIfExists(recordPath).catch(() => undefined);
      throw e;
    }
    return path;
  }

  function backingOf(i: QemuImgInfo): BackingFile | undefined {
    const name = i.fullBackingFilename ?? i.backingFilename;
    if (name === undefined) return undefined;
    const format = i.backingFormat ?? "qcow2";
    if (format !== "qcow2" && format !== "raw") {
      throw failedPrecondition(
        `${i.filename} has a backing file of format ${format}, which dir pools never make`,
      );
    }
    return { path: resolve(root, name), format };
  }

  // ---- clones ----

  async function cloneVolume(spec: CloneSpec): Promise<CreateResult> {
    const id = spec.volumeId;
    const sourceId = spec.sourceVolumeId;
    const snapshotId = spec.sourceSnapshotId;
    assertVolumeId(id);
    assertVolumeId(sourceId);
    if (snapshotId !== undefined) assertSnapshotId(snapshotId);
    assertOperationId(spec.operationId);
    assertDirFormat(spec.format);
    if (spec.sizeBytes !== undefined) validateVolumeSize(spec.sizeBytes);
    if (id === sourceId) {
      throw invalidArgument(`a clone needs a volume id of its own, not its source's (${id})`, {
        field: "volumeId",
      });
    }

    return lockBoth(id, sourceId, async () => {
      await assertRootUsable();
      const rec = await readSidecar(id);
      if (rec) {
        const same =
          rec.clone?.sourceVolumeId === sourceId &&
          rec.clone.sourceSnapshotId === snapshotId &&
          rec.format === spec.format;
        if (!same) {
          const what = rec.clone
            ? `a clone of ${rec.clone.sourceVolumeId}${rec.clone.sourceSnapshotId ? `@${rec.clone.sourceSnapshotId}` : ""}`
            : "a volume";
          throw alreadyExists(
            `volume ${id} already exists in pool ${poolName} as ${what} (${rec.format}, operation ${rec.operationId}); this request clones ${sourceId}${snapshotId ? `@${snapshotId}` : ""}`,
            { volumeId: id, poolName },
          );
        }
      }
      await assertNoForeignImage(id, rec, spec.format);
      if (rec && (await kindOf(volumePath(id, spec.format))) === "file") {
        await removeIfExists(tempPath(id, spec.format));
        return { artifact: await inspect(id, rec), adopted: true };
      }

      const src = await findOwned(sourceId);
      if (!src) {
        throw notFound(`source volume ${sourceId} does not exist in pool ${poolName}`, {
          volumeId: sourceId,
          poolName,
        });
      }
      const srcPath = volumePath(sourceId, src.format);
      const srcInfo = await imageInfo(srcPath, src.format);
      let sourceSize = srcInfo.virtualSize;
      if (snapshotId !== undefined) {
        if (!srcInfo.snapshots.some((s) => s.name === snapshotId)) {
          throw notFound(`snapshot ${snapshotId} of volume ${sourceId} does not exist in pool ${poolName}`, {
            volumeId: sourceId,
            snapshotId,
          });
        }
        // The snapshot's own size: the volume may have been resized since.
        sourceSize = src.snapshots.find((s) => s.snapshotId === snapshotId)?.sizeBytes ?? sourceSize;
      }
      const size = spec.sizeBytes ?? sourceSize;
      if (size < sourceSize) {
        throw invalidArgument(
          `a clone of ${sourceId} cannot be smaller than its source (${formatSize(sourceSize)}, asked ${formatSize(size)}); clone, then shrink it explicitly`,
          { field: "sizeBytes" },
        );
      }

      // Linked when it can be: a qcow2 overlay on the snapshot's base, unless that chain would get too deep.
      let linked = snapshotId !== undefined && spec.format === "qcow2" && spec.flatten !== true;
      if (linked && snapshotId !== undefined) {
        const base = basePath(snapshotId);
        const below =
          (await kindOf(base)) === "file"
            ? (await backingDepth(base, "qcow2")) + 1
            : (await backingDepth(srcPath, src.format)) + 1;
        linked = below <= maxChainDepth;
      }

      const record: Sidecar = {
        volumeId: id,
        operationId: spec.operationId,
        format: spec.format,
        sizeBytes: size,
        createdAt: now().toISOString(),
        snapshots: [],
        clone: {
          sourceVolumeId: sourceId,
          ...(snapshotId !== undefined ? { sourceSnapshotId: snapshotId } : {}),
        },
      };
      const artifact = await materialise(record, async (tmp) => {
        if (linked && snapshotId !== undefined) {
          const base = await ensureBase(sourceId, srcPath, srcInfo, snapshotId, spec.operationId);
          await runner.run(
            "qemu-img",
            qemuImgCreateOverlayArgv(tmp, { path: base, format: "qcow2" }, size, copyOptions("qcow2")),
          );
          return;
        }
        await runner.run(
          "qemu-img",
          qemuImgConvertArgv(srcPath, tmp, {
            sourceFormat: src.format,
            targetFormat: spec.format,
            ...(snapshotId !== undefined ? { snapshotTag: snapshotId } : {}),
            qcow2: copyOptions(spec.format),
          }),
          { timeoutMs: copyTimeoutMs },
        );
        // A copy has the size of what it read (for a snapshot: the image's size now, not the snapshot's).
        const copied = (await imageInfo(tmp, spec.format)).virtualSize;
        if (copied !== size) {
          await runner.run("qemu-img", qemuImgResizeArgv(tmp, spec.format, size, { shrink: copied > size }));
        }
      });
      return { artifact, adopted: false };
    });
  }

  /**
   * Copies what the volume reads from its backing chain into it and drops the backing file: `qemu-img rebase
   * -b ""` in safe mode, in place. That is crash-safe as it is: qemu fills the overlay's unallocated clusters
   * with the very data they already read through, and only then rewrites the header, so the guest sees the
   * same bytes at every instant. It also takes qemu's image lock, so it fails rather than flatten an image a
   * running VM has open (a copy-and-rename would silently replace the file under the VM).
   */
  async function flattenVolume(volumeId: string, fopts: { operationId: string }): Promise<VolumeArtifact> {
    assertVolumeId(volumeId);
    assertOperationId(fopts.operationId);
    const id = volumeId;
    return lock.run(id, async () => {
      const rec = await requireOwned(id);
      const path = volumePath(id, rec.format);
      const image = await imageInfo(path, rec.format);
      // Already flat (a raw file always is): a redelivered flatten converges.
      if (rec.format === "raw" || backingOf(image) === undefined) return toArtifact(id, rec, image);
      if (image.snapshots.length > 0) {
        // rebase rewrites the active layer only: the snapshots' unallocated clusters would read zeros.
        throw failedPrecondition(
          `volume ${id} has internal snapshots (${image.snapshots.map((s) => s.name).join(", ")}) that read through its backing file; flattening would change their data, so delete them first`,
          { volumeId: id },
        );
      }
      await runner.run("qemu-img", qemuImgFlattenArgv(path), { timeoutMs: copyTimeoutMs });
      await fsyncFile(path);
      return inspect(id, rec);
    });
  }

  return {
    kind: "dir",
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

function isNoEnt(e: unknown): boolean {
  return (e as NodeJS.ErrnoException | undefined)?.code === "ENOENT";
}

async function removeIfExists(path: string): Promise<void> {
  try {
    await unlink(path);
  } catch (e) {
    if (!isNoEnt(e)) throw e;
  }
}

async function fsyncFile(path: string): Promise<void> {
  const fh = await open(path, "r");
  try {
    await fh.sync();
  } finally {
    await fh.close();
  }
}

/** Makes a rename or unlink in `dir` durable (the entry, not just the data). */
async function fsyncDir(dir: string): Promise<void> {
  const fh = await open(dir, "r");
  try {
    await fh.sync();
  } finally {
    await fh.close();
  }
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
