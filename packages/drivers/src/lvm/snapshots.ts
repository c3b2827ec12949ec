import { failedPrecondition, notFound, StowageError } from "@stowage/core";
import { bySnapshotId, type SnapshotInfo, type VolumeArtifact } from "../driver.js";
import { type LvmLogicalVolume, lvconvertMergeArgv, lvcreateSnapshotArgv, tagValue } from "../lvm.js";
import { LVM_TAG, type LvmPool, lvName, lvOldName, lvTempName } from "./layout.js";
import { byName, hasTag, type LvmRecords, type LvmVolume } from "./records.js";
import type { LvmTemp } from "./temp.js";
import type { LvmTools } from "./tools.js";

// Snapshots: thin snapshots (lvmthin) or classic COW snapshots of 100%ORIGIN (lvm); see layout.ts.

export function createLvmSnapshots(pool: LvmPool, tools: LvmTools, records: LvmRecords, temp: LvmTemp) {
  const { vg, thinPool, where, cfg } = pool;

  function snapshotTags(snapshotId: string, volumeId: string, operationId: string, timeMs: number): string[] {
    return [
      `${LVM_TAG.snapshot}=${snapshotId}`,
      `${LVM_TAG.snapshotOf}=${volumeId}`,
      `${LVM_TAG.operation}=${operationId}`,
      `${LVM_TAG.time}=${timeMs}`,
    ];
  }

  async function makeSnapshot(volumeId: string, snapshotId: string, operationId: string, timeMs: number) {
    // One lvcreate, one metadata commit, tags included: a snapshot LV under its name is always complete.
    await tools.lvm(
      "lvcreate",
      lvcreateSnapshotArgv({
        ...cfg,
        vg,
        origin: lvName(volumeId),
        name: lvName(snapshotId),
        tags: snapshotTags(snapshotId, volumeId, operationId, timeMs),
        type: thinPool ? "thin" : "cow",
      }),
    );
  }

  async function create({ id, lvs }: LvmVolume, snapshotId: string, operationId: string) {
    const existing = records.snapshotLv(lvs, id, snapshotId);
    if (existing) return { snapshot: records.snapshotInfoOf(id, existing), adopted: true };
    await makeSnapshot(id, snapshotId, operationId, pool.now().getTime());
    const made = records.snapshotLv(await records.scan(), id, snapshotId);
    if (!made) throw new StowageError("internal", `${where}: snapshot ${snapshotId} vanished after lvcreate`);
    return { snapshot: records.snapshotInfoOf(id, made), adopted: false };
  }

  async function list({ id, lvs }: LvmVolume): Promise<SnapshotInfo[]> {
    return records
      .snapshotsOf(lvs, id)
      .map((lv) => records.snapshotInfoOf(id, lv))
      .sort(bySnapshotId);
  }

  async function deleteSnapshot({ id, lvs }: LvmVolume, snapshotId: string) {
    const lv = records.snapshotLv(lvs, id, snapshotId);
    if (!lv) return { existed: false };
    // Clones never depend on a snapshot here (thin snapshots are independent, thick clones are copies).
    await tools.remove(lv.name);
    return { existed: true };
  }

  async function revert({ id, lvs, lv }: LvmVolume, snapshotId: string, operationId: string) {
    const snap = records.snapshotLv(lvs, id, snapshotId);
    const pending = !thinPool && tagValue(lv.tags, LVM_TAG.revertSnapshot) === snapshotId;
    if (hasTag(lv, LVM_TAG.reverted, operationId) && snap && !pending) {
      // This revert is done: reverting again would throw away what was written since.
      return records.artifactOf(id, lv);
    }
    if (!snap && !pending) {
      throw notFound(`snapshot ${snapshotId} of volume ${id} does not exist in ${where}`, {
        volumeId: id,
        snapshotId,
      });
    }
    if (snap && lv.open) {
      throw failedPrecondition(
        `volume ${id} is open (in use by a VM?); it cannot be reverted under its user. Stop it, then revert`,
        { volumeId: id },
      );
    }
    if (thinPool && snap) return revertThin(lvs, id, lv, snap, operationId);
    return revertByMerge(id, lv, snap, snapshotId, operationId);
  }

  /**
   * Thin: the snapshot stays as it is; a writable thin snapshot of it (tagged as the volume, and with the
   * finished revert's operation) is swapped in under the volume's name, and the old LV goes. No merge: after
   * a merge, the volume's other snapshots are no longer snapshots of anything LVM can merge again (they were
   * taken of a device the merge deleted). A crash between the two renames is put right by `settle`.
   */
  async function revertThin(
    lvs: LvmLogicalVolume[],
    id: string,
    lv: LvmLogicalVolume,
    snap: LvmLogicalVolume,
    operationId: string,
  ): Promise<VolumeArtifact> {
    await temp.clearTemp(lvs, id);
    const tags = [
      `${LVM_TAG.volume}=${id}`,
      `${LVM_TAG.operation}=${tagValue(lv.tags, LVM_TAG.operation) ?? operationId}`,
      `${LVM_TAG.reverted}=${operationId}`,
    ];
    try {
      await temp.thinCopy(snap.name, id, tags);
    } catch (e) {
      await temp.discardTemp(id);
      throw e;
    }
    await tools.rename(lv.name, lvOldName(id));
    await tools.rename(lvTempName(id), lv.name);
    await tools.remove(lvOldName(id));
    return records.current(id);
  }

  /**
   * Thick (classic COW snapshots): merge, then re-create. Before merging, the volume gets tags naming the
   * snapshot and what re-creating it needs (its operation and time); they go once the snapshot is back. A
   * retry after a crash in between finds the snapshot gone and the tags there, and only re-creates it.
   */
  async function revertByMerge(
    volumeId: string,
    lv: LvmLogicalVolume,
    snap: LvmLogicalVolume | undefined,
    snapshotId: string,
    operationId: string,
  ): Promise<VolumeArtifact> {
    let snapOp: string;
    let snapTime: string;
    if (snap) {
      snapOp = tagValue(snap.tags, LVM_TAG.operation) ?? operationId;
      snapTime = tagValue(snap.tags, LVM_TAG.time) ?? String(pool.now().getTime());
      await tools.retag(lv.name, {
        del: staleRevertTags(lv),
        add: [
          `${LVM_TAG.revertSnapshot}=${snapshotId}`,
          `${LVM_TAG.revertSnapshotOp}=${snapOp}`,
          `${LVM_TAG.revertSnapshotTime}=${snapTime}`,
        ],
      });
      await tools.lvm("lvconvert", lvconvertMergeArgv(vg, snap.name, cfg), tools.longTimeout(lv.sizeBytes));
      if (byName(await records.scan(), snap.name)) {
        throw new StowageError(
          "internal",
          `${where}: the merge of snapshot ${snapshotId} into volume ${volumeId} was deferred by LVM (is the volume in use?); retry the revert once it is closed`,
        );
      }
    } else {
      snapOp = tagValue(lv.tags, LVM_TAG.revertSnapshotOp) ?? operationId;
      snapTime = tagValue(lv.tags, LVM_TAG.revertSnapshotTime) ?? String(pool.now().getTime());
    }
    const current = records.volumeLv(await records.scan(), volumeId, "use");
    if (!current) throw new StowageError("internal", `${where}: volume ${volumeId} vanished during a revert`);
    if (current.active === false) await tools.activate(current.name);
    await makeSnapshot(volumeId, snapshotId, snapOp, Number(snapTime));
    await tools.retag(current.name, {
      del: staleRevertTags(current),
      add: [`${LVM_TAG.reverted}=${operationId}`],
    });
    return records.current(volumeId);
  }

  /** Every revert bookkeeping tag on the volume (a volume holds at most one of each). */
  function staleRevertTags(lv: LvmLogicalVolume): string[] {
    const keys: string[] = [
      LVM_TAG.reverted,
      LVM_TAG.revertSnapshot,
      LVM_TAG.revertSnapshotOp,
      LVM_TAG.revertSnapshotTime,
    ];
    return lv.tags.filter((t) => keys.some((k) => t.startsWith(`${k}=`)));
  }

  return { createSnapshot: create, listSnapshots: list, deleteSnapshot, revertSnapshot: revert };
}
