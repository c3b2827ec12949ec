import { mapLimit } from "../async.js";
import { type QemuImgInfo, qemuImgConvertArgv } from "../qemu-img.js";
import type { DirImages } from "./images.js";
import type { DirPool } from "./layout.js";
import type { BaseRecord, DirRecords } from "./records.js";

/**
 * Base images: the read-only export of one snapshot, `.stowage/base-<snapshotId>.qcow2`, that linked clones of
 * the snapshot stand on. Owned through `.stowage/base-<snapshotId>.json`, written before the image and removed
 * after it, like volumes.
 */
export interface DirBases {
  /**
   * What reads through the base image of `snapshotId`: clone volumes, and bases exported from snapshots of
   * those clones. Asked of the images themselves (their backing file), not of records, so a flattened clone
   * no longer counts even if a crash kept its record unchanged.
   */
  dependents(snapshotId: string): Promise<string[]>;
  remove(snapshotId: string): Promise<void>;
  /**
   * The read-only base image holding `snapshotId`'s data, exported on first use. When the source is itself an
   * overlay, the base only holds what differs from the source's backing file and stands on it, so the chain
   * is one image deeper than the source's.
   */
  ensure(
    sourceId: string,
    srcPath: string,
    srcInfo: QemuImgInfo,
    snapshotId: string,
    operationId: string,
  ): Promise<string>;
}

const LIST_CONCURRENCY = 8;
const BASE_IMAGE = /^base-(snap-[0-9a-f]{32})\.qcow2$/;

export function createDirBases(pool: DirPool, records: DirRecords, images: DirImages): DirBases {
  const { metaDir, runner, fs } = pool;

  async function dependents(snapshotId: string): Promise<string[]> {
    const base = pool.basePath(snapshotId);
    if ((await fs.kindOf(base)) === "missing") return [];
    const candidates: { name: string; path: string }[] = [];
    const { owned } = await records.scanOwned();
    for (const { id, rec } of owned) {
      if (rec.format === "qcow2")
        candidates.push({ name: `clone ${id}`, path: pool.volumePath(id, rec.format) });
    }
    for (const { name: n } of await fs.list(metaDir)) {
      const m = BASE_IMAGE.exec(n);
      if (m && m[1] !== snapshotId) {
        candidates.push({ name: `the base image of snapshot ${m[1]}`, path: pool.metaPath(n) });
      }
    }
    const hits = await mapLimit(candidates, LIST_CONCURRENCY, async (c) => {
      try {
        const i = await images.imageInfo(c.path, "qcow2");
        const backing = i.fullBackingFilename ?? i.backingFilename;
        return backing !== undefined && pool.resolveBacking(backing) === base ? c.name : undefined;
      } catch (e) {
        if ((await fs.kindOf(c.path)) === "missing") return undefined;
        throw e;
      }
    });
    return hits.filter((h): h is string => h !== undefined).sort();
  }

  async function remove(snapshotId: string): Promise<void> {
    await fs.removeIfExists(pool.baseTempPath(snapshotId));
    await fs.removeIfExists(pool.basePath(snapshotId));
    // The record last, like volumes: never a base image without its record.
    await fs.removeIfExists(pool.baseRecordPath(snapshotId));
    await fs.fsync(metaDir).catch(() => undefined);
  }

  async function ensure(
    sourceId: string,
    srcPath: string,
    srcInfo: QemuImgInfo,
    snapshotId: string,
    operationId: string,
  ): Promise<string> {
    const path = pool.basePath(snapshotId);
    const existing = await records.readBaseRecord(snapshotId);
    if (existing && (await fs.kindOf(path)) === "file") return path;
    const backing = images.backingOf(srcInfo);
    await fs.mkdir(metaDir, 0o700);
    const tmp = pool.baseTempPath(snapshotId);
    await fs.removeIfExists(tmp);
    const rec: BaseRecord = existing ?? {
      snapshotId,
      sourceVolumeId: sourceId,
      operationId,
      createdAt: pool.now().toISOString(),
    };
    if (!existing) await records.writeBaseRecord(rec);
    try {
      await runner.run(
        "qemu-img",
        qemuImgConvertArgv(srcPath, tmp, {
          sourceFormat: "qcow2",
          targetFormat: "qcow2",
          snapshotTag: snapshotId,
          ...(backing ? { backing } : {}),
          qcow2: pool.copyOptions("qcow2"),
        }),
        { timeoutMs: pool.copyTimeoutMs },
      );
      await fs.fsync(tmp);
      // Read-only: every clone of the snapshot reads it, none may write it.
      await fs.chmod(tmp, 0o444);
      await fs.rename(tmp, path);
      await fs.fsync(metaDir);
    } catch (e) {
      await fs.removeIfExists(tmp).catch(() => undefined);
      if (!existing) await fs.removeIfExists(pool.baseRecordPath(snapshotId)).catch(() => undefined);
      throw e;
    }
    return path;
  }

  return { dependents, remove, ensure };
}
