import { failedPrecondition, notFound } from "@stowage/core";
import type { SnapshotInfo, VolumeArtifact } from "../driver.js";
import { qemuImgSnapshotArgv } from "../qemu-img.js";
import type { DirBases } from "./bases.js";
import type { DirImages } from "./images.js";
import type { DirInventory } from "./inventory.js";
import type { DirPool } from "./layout.js";
import { currentSize, type DirRecords, type OwnedVolume, type SnapshotRecord, withSize } from "./records.js";

// qcow2 internal snapshots, tagged with the snapshot id and recorded in the volume's sidecar.

export function createDirSnapshots(
  pool: DirPool,
  records: DirRecords,
  images: DirImages,
  bases: DirBases,
  inventory: DirInventory,
) {
  const { poolName, runner } = pool;

  function toSnapshotInfo(volumeId: string, s: SnapshotRecord): SnapshotInfo {
    return {
      snapshotId: s.snapshotId,
      volumeId,
      sizeBytes: s.sizeBytes,
      createdAt: s.createdAt,
      operationId: s.operationId,
    };
  }

  function assertSnapshottable({ id, rec }: OwnedVolume): void {
    if (rec.format === "raw") {
      throw failedPrecondition(
        `volume ${id}: raw volumes in ${pool.label} pools cannot be snapshotted; use qcow2`,
        { volumeId: id, format: rec.format },
      );
    }
  }

  async function create(volume: OwnedVolume, snapshotId: string, operationId: string) {
    const { id, rec } = volume;
    assertSnapshottable(volume);
    const path = pool.volumePath(id, rec.format);
    const image = await images.imageInfo(path, rec.format);
    const tag = image.snapshots.find((s) => s.name === snapshotId);
    const known = rec.snapshots.find((s) => s.snapshotId === snapshotId);
    if (tag) {
      // Made before: a redelivery, or a crash after the snapshot but before the result went out.
      if (known) return { snapshot: toSnapshotInfo(id, known), adopted: true };
      // A tag named with one of our ids but no record: only our crashed attempt can have made it.
      const adoptedRec: SnapshotRecord = {
        snapshotId,
        operationId,
        sizeBytes: image.virtualSize,
        createdAt: tag.date.toISOString(),
      };
      await records.writeSidecar({ ...rec, snapshots: [...rec.snapshots, adoptedRec] });
      return { snapshot: toSnapshotInfo(id, adoptedRec), adopted: true };
    }
    const entry: SnapshotRecord = {
      snapshotId,
      operationId,
      sizeBytes: image.virtualSize,
      createdAt: pool.now().toISOString(),
    };
    // The record first, as the intent (a crash leaves a record without a tag, which list ignores).
    const others = rec.snapshots.filter((s) => s.snapshotId !== snapshotId);
    await records.writeSidecar({ ...rec, snapshots: [...others, entry] });
    try {
      await runner.run("qemu-img", qemuImgSnapshotArgv(path, "create", snapshotId));
    } catch (e) {
      await records.writeSidecar({ ...rec, snapshots: others }).catch(() => undefined);
      throw e;
    }
    return { snapshot: toSnapshotInfo(id, entry), adopted: false };
  }

  async function list({ id, rec }: OwnedVolume): Promise<SnapshotInfo[]> {
    if (rec.format === "raw") return [];
    const tags = new Set(
      (await images.imageInfo(pool.volumePath(id, rec.format), rec.format)).snapshots.map((s) => s.name),
    );
    return rec.snapshots
      .filter((s) => tags.has(s.snapshotId))
      .sort((a, b) => a.createdAt.localeCompare(b.createdAt) || a.snapshotId.localeCompare(b.snapshotId))
      .map((s) => toSnapshotInfo(id, s));
  }

  async function deleteSnapshot({ id, rec }: OwnedVolume, snapshotId: string) {
    await pool.assertRootUsable();
    const dependents = await bases.dependents(snapshotId);
    if (dependents.length > 0) {
      throw failedPrecondition(
        `snapshot ${snapshotId} of volume ${id} has clones that depend on it (${dependents.join(", ")}); flatten or delete them first`,
        { volumeId: id, snapshotId, dependents },
      );
    }
    let existed = false;
    if (rec.format === "qcow2") {
      const path = pool.volumePath(id, rec.format);
      const image = await images.imageInfo(path, rec.format);
      if (image.snapshots.some((s) => s.name === snapshotId)) {
        await runner.run("qemu-img", qemuImgSnapshotArgv(path, "delete", snapshotId));
        existed = true;
      }
    }
    // The base goes with its snapshot (it is only ever exported from a snapshot of this volume).
    const base = await records.readBaseRecord(snapshotId);
    if (base?.sourceVolumeId === id) await bases.remove(snapshotId);
    if (rec.snapshots.some((s) => s.snapshotId === snapshotId)) {
      await records.writeSidecar({
        ...rec,
        snapshots: rec.snapshots.filter((s) => s.snapshotId !== snapshotId),
      });
    }
    return { existed };
  }

  async function revert(volume: OwnedVolume, snapshotId: string): Promise<VolumeArtifact> {
    const { id, rec } = volume;
    assertSnapshottable(volume);
    const path = pool.volumePath(id, rec.format);
    const image = await images.imageInfo(path, rec.format);
    if (!image.snapshots.some((s) => s.name === snapshotId)) {
      throw notFound(`snapshot ${snapshotId} of volume ${id} does not exist in pool ${poolName}`, {
        volumeId: id,
        snapshotId,
      });
    }
    // Applying the same snapshot again yields the same image: a redelivered revert converges.
    await runner.run("qemu-img", qemuImgSnapshotArgv(path, "apply", snapshotId));
    const artifact = await images.inspect(volume);
    // The snapshot brings back its own size: the record follows, so list() and capacity() report it.
    if (artifact.sizeBytes !== currentSize(rec)) {
      const reverted = withSize(rec, artifact.sizeBytes);
      await records.writeSidecar(reverted);
      inventory.put(reverted);
    }
    return artifact;
  }

  return { createSnapshot: create, listSnapshots: list, deleteSnapshot, revertSnapshot: revert };
}
