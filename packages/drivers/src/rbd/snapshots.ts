import { alreadyExists, failedPrecondition, isId, notFound, StowageError } from "@stowage/core";
import { bySnapshotId, type SnapshotInfo, type VolumeArtifact } from "../driver.js";
import {
  parseRbdStatus,
  type RbdSnapshot,
  rbdSnapCreateArgv,
  rbdSnapRemoveArgv,
  rbdSnapRollbackArgv,
  rbdStatusArgv,
} from "../rbd.js";
import type { Owned, RbdImages, SnapshotRecord } from "./images.js";
import { finalImage, RBD_META, type RbdPool } from "./layout.js";

// RBD snapshots named by their snapshot id, each with a record in the image metadata written before it.

export function createRbdSnapshots(pool: RbdPool, images: RbdImages) {
  const { conn, spec, rbd, where } = pool;

  const snapshotInfo = (volumeId: string, s: RbdSnapshot, rec: SnapshotRecord): SnapshotInfo => ({
    snapshotId: s.name,
    volumeId,
    sizeBytes: s.sizeBytes,
    createdAt: rec.createdAt,
    operationId: rec.operationId,
  });

  async function create(owned: Owned, snapshotId: string, operationId: string) {
    const volumeId = owned.id;
    const image = finalImage(volumeId);
    const existing = (await images.snapshotsOf(image)).find((s) => s.name === snapshotId);
    const prior = images.snapshotRecord(owned.meta, snapshotId);
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
    const rec: SnapshotRecord = { operationId, createdAt: pool.now().toISOString() };
    await images.setMeta(image, `${RBD_META.snapshotPrefix}${snapshotId}`, JSON.stringify(rec));
    await rbd(rbdSnapCreateArgv(conn, spec(image, snapshotId)));
    const made = (await images.snapshotsOf(image)).find((s) => s.name === snapshotId);
    if (!made)
      throw new StowageError("internal", `rbd snap create ${snapshotId} left no snapshot on ${image}`);
    return { snapshot: snapshotInfo(volumeId, made, rec), adopted: false };
  }

  async function list(owned: Owned): Promise<SnapshotInfo[]> {
    const out: SnapshotInfo[] = [];
    for (const s of await images.snapshotsOf(finalImage(owned.id))) {
      // Hidden clone snapshots and snapshots someone else took are not the volume's snapshots.
      if (!isId(s.name, "snap")) continue;
      const rec = images.snapshotRecord(owned.meta, s.name);
      if (rec) out.push(snapshotInfo(owned.id, s, rec));
    }
    return out.sort(bySnapshotId);
  }

  async function deleteSnapshot(owned: Owned, snapshotId: string): Promise<{ existed: boolean }> {
    const volumeId = owned.id;
    const image = finalImage(volumeId);
    const key = `${RBD_META.snapshotPrefix}${snapshotId}`;
    const snap = (await images.snapshotsOf(image)).find((s) => s.name === snapshotId);
    if (!snap) {
      // A record without a snapshot: an interrupted create or delete.
      if (owned.meta[key] !== undefined) await images.removeMeta(image, key);
      return { existed: false };
    }
    if (!images.snapshotRecord(owned.meta, snapshotId)) {
      throw failedPrecondition(
        `snapshot ${snapshotId} of volume ${volumeId} has no Stowage record; refusing to delete it`,
        { volumeId, snapshotId },
      );
    }
    if (snap.protected) {
      const children = await images.childrenOf(image, snapshotId);
      if (children.length > 0) {
        throw failedPrecondition(
          `snapshot ${snapshotId} of volume ${volumeId} cannot be deleted: clones depend on it: ${images.describeChildren(children)}; delete or flatten them first`,
          { volumeId, snapshotId },
        );
      }
      await images.unprotect(image, snapshotId);
    }
    await images.unlessMissing(() => rbd(rbdSnapRemoveArgv(conn, spec(image, snapshotId)), pool.long));
    await images.removeMeta(image, key);
    return { existed: true };
  }

  async function revert(owned: Owned, snapshotId: string): Promise<VolumeArtifact> {
    const volumeId = owned.id;
    const image = finalImage(volumeId);
    const snap = (await images.snapshotsOf(image)).find((s) => s.name === snapshotId);
    if (!snap || !images.snapshotRecord(owned.meta, snapshotId)) {
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
    await rbd(rbdSnapRollbackArgv(conn, spec(image, snapshotId)), pool.long);
    return images.inspect(volumeId, owned.meta);
  }

  return { createSnapshot: create, listSnapshots: list, deleteSnapshot, revertSnapshot: revert };
}
