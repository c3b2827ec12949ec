import {
  alreadyExists,
  failedPrecondition,
  formatSize,
  type Qcow2Options,
  StowageError,
  type VolumeFormat,
} from "@stowage/core";
import type { CreateResult, CreateVolumeSpec, PoolCapacityReport, VolumeArtifact } from "../driver.js";
import type { Wipe } from "../guard.js";
import { qemuImgCreateArgv, qemuImgResizeArgv } from "../qemu-img.js";
import type { DirBases } from "./bases.js";
import type { DirImages } from "./images.js";
import type { DirInventory } from "./inventory.js";
import { type DirPool, FORMATS } from "./layout.js";
import { type DirRecords, type OwnedVolume, type Sidecar, withSize } from "./records.js";
import { wipeFile } from "./wipe.js";

const PREALLOCATED_CREATE_TIMEOUT_MS = 30 * 60_000;

export type DirVolumes = ReturnType<typeof createDirVolumes>;

export function createDirVolumes(
  pool: DirPool,
  records: DirRecords,
  images: DirImages,
  bases: DirBases,
  inventory: DirInventory,
) {
  const { poolName, root, metaDir, runner, options, fs, label } = pool;

  /**
   * Runs `make(tmp)` to build the image in its temp file, then moves it under its final name, and answers the
   * artifact from what it knows (the record's size and format, the image's blocks) rather than `qemu-img info`:
   * `make` must leave the image at exactly `currentSize(record)`. The record is written first (the intent); a
   * failure removes both, a crash is finished by the retry.
   *
   * What each fsync guards (docs/architecture.md, invariant 2: never an image without its record):
   * - the record's own (in writeSidecar: its data, then `.stowage/` for its rename): the record is durable
   *   before the image can appear under its final name, so a crash never leaves an owned-looking image that
   *   no record accounts for. It runs while `make` builds the image: both only touch temp names until then.
   * - the temp image's: its data is durable before the rename, so the final name never holds a torn image.
   * - the pool root's, after the rename: the volume exists for good before the result is reported.
   */
  async function materialise(record: Sidecar, make: (tmp: string) => Promise<void>): Promise<VolumeArtifact> {
    const id = record.volumeId;
    const tmpPath = pool.tempPath(id, record.format);
    const finalPath = pool.volumePath(id, record.format);
    await ensureMetaDir();
    // A crashed attempt may have left a half-written temp image; qemu-img must start from nothing.
    await fs.removeIfExists(tmpPath);
    let allocatedBytes: bigint;
    try {
      const [wrote, made] = await Promise.allSettled([records.writeSidecar(record), make(tmpPath)]);
      if (wrote.status === "rejected") throw wrote.reason;
      if (made.status === "rejected") throw made.reason;
      allocatedBytes = await fs.fsyncFile(tmpPath);
      // The image appears under its final name complete, or not at all.
      await fs.rename(tmpPath, finalPath);
    } catch (e) {
      await fs.removeIfExists(tmpPath).catch(() => undefined);
      await fs.removeIfExists(pool.sidecarPath(id)).catch(() => undefined);
      throw e;
    }
    await fs.fsync(root);
    inventory.put(record);
    return images.fromRecord(id, record, allocatedBytes);
  }

  /** `.stowage/`, its name made durable when this call made it (the record in it must outlive a crash). */
  async function ensureMetaDir(): Promise<void> {
    if (await fs.mkdir(metaDir, 0o700)) await fs.fsync(root);
  }

  /** Refuses files under the volume's names that its record does not account for (never taken over). */
  async function assertNoForeignImage(id: string, rec: Sidecar | undefined, format: VolumeFormat) {
    for (const f of FORMATS) {
      const p = pool.volumePath(id, f);
      const kind = await fs.kindOf(p);
      if (kind === "missing") continue;
      if (!rec || f !== format || kind !== "file") {
        throw alreadyExists(
          `${pool.artifactPath(p)} already exists in pool ${poolName} without a matching Stowage ownership record; refusing to take it over (move it away, or import it)`,
          { volumeId: id, poolName, path: pool.artifactPath(p) },
        );
      }
    }
  }

  /** The finished image of `rec` under its final name, adopted (a stale temp file of it removed). */
  async function adopt(id: string, rec: Sidecar | undefined, format: VolumeFormat) {
    await assertNoForeignImage(id, rec, format);
    if (!rec || (await fs.kindOf(pool.volumePath(id, format))) !== "file") return undefined;
    // Done before: a redelivery, or a crash after the rename but before the result went out.
    await fs.removeIfExists(pool.tempPath(id, format));
    const artifact = await images.inspect({ id, rec });
    inventory.put(rec);
    return { artifact, adopted: true };
  }

  const describe = (format: VolumeFormat, size: bigint) => `${format} ${formatSize(size)}`;

  async function create(spec: CreateVolumeSpec, rec: Sidecar | undefined): Promise<CreateResult> {
    const id = spec.volumeId;
    const argv = createArgv(spec);
    const timeoutMs =
      options.createTimeoutMs ?? (argv.preallocated ? PREALLOCATED_CREATE_TIMEOUT_MS : undefined);
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
    const adopted = await adopt(id, rec, spec.format);
    if (adopted) return adopted;
    const record: Sidecar = {
      volumeId: id,
      operationId: spec.operationId,
      format: spec.format,
      sizeBytes: spec.sizeBytes,
      createdAt: pool.now().toISOString(),
      snapshots: [],
    };
    const artifact = await materialise(record, async () => {
      await runner.run("qemu-img", argv.argv, timeoutMs === undefined ? {} : { timeoutMs });
    });
    return { artifact, adopted: false };
  }

  /** The create command; building it validates the qcow2 options, so bad options change nothing. */
  function createArgv(spec: CreateVolumeSpec): { argv: string[]; preallocated: boolean } {
    const qcow2: Qcow2Options =
      spec.format === "qcow2" ? { ...options.qcow2Defaults, ...spec.qcow2 } : { ...spec.qcow2 };
    return {
      argv: qemuImgCreateArgv(pool.tempPath(spec.volumeId, spec.format), spec.format, spec.sizeBytes, qcow2),
      preallocated: qcow2.preallocation === "falloc" || qcow2.preallocation === "full",
    };
  }

  async function deleteVolume(id: string, rec: Sidecar | undefined, wipe: Wipe) {
    const rate = wipe.bytesPerSecond ?? options.wipeBytesPerSecond ?? 0;
    let existed = false;
    if (rec) {
      const p = pool.volumePath(id, rec.format);
      const kind = await fs.kindOf(p);
      if (kind === "other") {
        throw failedPrecondition(`${pool.artifactPath(p)} is not a regular file; refusing to delete it`, {
          path: pool.artifactPath(p),
        });
      }
      // Bases exported from this volume's snapshots outlive it only while nothing stands on them.
      const owned = await records.basesOf(id);
      for (const b of owned) {
        const dependents = await bases.dependents(b.snapshotId);
        if (dependents.length > 0) {
          throw failedPrecondition(
            `volume ${id} has snapshot ${b.snapshotId} that ${dependents.join(", ")} depend on; flatten or delete them first`,
            { volumeId: id, snapshotId: b.snapshotId, dependents },
          );
        }
      }
      const trash = pool.trashPath(id, rec.format);
      if (kind === "file") {
        await fs.rename(p, trash);
        await fs.fsync(root);
      }
      // Also finishes the wipe of an earlier attempt that crashed after the rename.
      if ((await fs.kindOf(trash)) === "file") {
        await wipeFile(runner, fs, trash, wipe.mode, rate);
        await fs.remove(trash);
        existed = true;
      }
      for (const b of owned) await bases.remove(b.snapshotId);
    } else {
      for (const f of FORMATS) {
        const p = pool.volumePath(id, f);
        if ((await fs.kindOf(p)) !== "missing") {
          throw failedPrecondition(
            `${pool.artifactPath(p)} has no Stowage ownership record; refusing to delete a file that is not ours`,
            { path: pool.artifactPath(p) },
          );
        }
      }
    }
    for (const f of FORMATS) await fs.removeIfExists(pool.tempPath(id, f));
    // The record goes last: a crash before this line leaves a record without an image, which a retry
    // (of the delete or the create) handles, never an image without a record.
    if (rec) {
      await fs.removeIfExists(pool.sidecarPath(id));
      await fs.fsync(metaDir).catch(() => undefined);
    }
    inventory.remove(id);
    return { existed };
  }

  /**
   * `qemu-img resize`, with the new size recorded first (the intent, as for a create): a crash in between
   * leaves a record that says more than the image, which the retried resize (the guard reads the image's
   * real size first) puts right. The artifact is built from the new size: qemu-img resizes an image to exactly
   * the size asked (sizes are whole sectors), so no `qemu-img info` afterwards. No fsync of the image: a resize
   * never had one (qemu-img flushes its own metadata writes).
   */
  async function resize(volume: OwnedVolume, sizeBytes: bigint, shrink: boolean) {
    const { id, rec } = volume;
    const path = pool.volumePath(id, rec.format);
    const resized = withSize(rec, sizeBytes);
    await records.writeSidecar(resized);
    try {
      await runner.run("qemu-img", qemuImgResizeArgv(path, rec.format, sizeBytes, { shrink }));
    } catch (e) {
      await records.writeSidecar(rec).catch(() => undefined);
      throw e;
    }
    inventory.put(resized);
    return images.fromRecord(id, resized, await fs.allocated(path));
  }

  /**
   * Every owned volume, from the directory, the records and one lstat per image: no `qemu-img` run, so its
   * cost is a few syscalls per volume. Sizes are the recorded ones (see inventory.ts for what that misses).
   */
  const list = () => inventory.scan();

  /** statfs, and the provisioned bytes kept in memory: no process, and no work per volume. */
  async function capacity(): Promise<PoolCapacityReport> {
    await pool.assertRootUsable();
    // Base images are not volumes, but they live on the same filesystem: statfs counts their bytes as used.
    const { totalBytes, usedBytes, freeBytes } = await fs.statfs(root);
    const provisionedBytes = await inventory.provisionedBytes();
    return { totalBytes, usedBytes, freeBytes, provisionedBytes };
  }

  /** The first line of `qemu-img --version`, asked once: the binary does not change under a running agent. */
  let qemuImgVersion: string | undefined;

  async function check(): Promise<{ healthy: boolean; message: string }> {
    const where = `${label} pool ${poolName} at ${pool.artifactPath(root)}`;
    try {
      await pool.assertRootUsable();
      await fs.assertWritableDir(root);
    } catch (e) {
      const msg = e instanceof StowageError ? e.message : `${where} is not writable: ${(e as Error).message}`;
      return { healthy: false, message: msg };
    }
    if ((await fs.kindOf(metaDir)) !== "missing") {
      try {
        if (!(await fs.isDirectory(metaDir))) throw new Error("not a directory");
        await fs.assertWritableDir(metaDir);
      } catch (e) {
        return {
          healthy: false,
          message: `${where}: ${pool.artifactPath(metaDir)} is not usable: ${(e as Error).message}`,
        };
      }
    }
    try {
      if (qemuImgVersion === undefined) {
        const { stdout } = await runner.run("qemu-img", ["--version"], { timeoutMs: 10_000 });
        qemuImgVersion = stdout.split("\n")[0]?.trim() ?? "";
      }
      return { healthy: true, message: `${where} is usable (${qemuImgVersion})` };
    } catch (e) {
      return { healthy: false, message: `${where}: ${(e as Error).message}` };
    }
  }

  return {
    materialise,
    assertNoForeignImage,
    adopt,
    create,
    delete: deleteVolume,
    resize,
    list,
    capacity,
    check,
    /** Builds the create command without running it: bad qcow2 options are refused before the lock. */
    validateCreate: (spec: CreateVolumeSpec) => void createArgv(spec),
  };
}
