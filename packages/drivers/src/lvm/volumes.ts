import { alreadyExists, failedPrecondition, formatSize } from "@stowage/core";
import {
  byVolumeId,
  type CreateResult,
  type CreateVolumeSpec,
  type PoolCapacityReport,
  type VolumeArtifact,
} from "../driver.js";
import type { Wipe } from "../guard.js";
import { type LvmLogicalVolume, lvcreateArgv, lvresizeArgv, tagValue, usedFromPercent } from "../lvm.js";
import { LVM_TAG, type LvmPool, lvName, lvOldName, lvTempName } from "./layout.js";
import { byName, type LvmNames, type LvmRecords, type LvmVolume } from "./records.js";
import type { LvmTemp } from "./temp.js";
import type { LvmTools } from "./tools.js";
import { wipeLv } from "./wipe.js";

/** A thin pool with data or metadata this full is reported unhealthy. */
const THIN_POOL_FULL_PERCENT = 95;

export function createLvmVolumes(pool: LvmPool, tools: LvmTools, records: LvmRecords, temp: LvmTemp) {
  const { vg, thinPool, where, poolName, cfg } = pool;

  async function roundSize(size: bigint): Promise<bigint> {
    const extent = await records.extentBytes();
    return ((size + extent - 1n) / extent) * extent;
  }

  async function create(spec: CreateVolumeSpec, { lvs, lv: existing }: LvmNames): Promise<CreateResult> {
    const id = spec.volumeId;
    if (existing) {
      const same =
        tagValue(existing.tags, LVM_TAG.operation) === spec.operationId ||
        existing.sizeBytes === (await roundSize(spec.sizeBytes));
      if (!same) {
        throw alreadyExists(
          `volume ${id} already exists in ${where} with ${formatSize(existing.sizeBytes)} (operation ${tagValue(existing.tags, LVM_TAG.operation)}); this request asks for ${formatSize(spec.sizeBytes)}`,
          { volumeId: id, poolName },
        );
      }
      // Done before: a redelivery, or a crash after the rename but before the result went out.
      await temp.clearTemp(lvs, id);
      return { artifact: await temp.usable(id, existing), adopted: true };
    }
    await temp.clearTemp(lvs, id);
    const argv = lvcreateArgv({
      ...cfg,
      vg,
      name: lvTempName(id),
      sizeBytes: spec.sizeBytes,
      tags: [`${LVM_TAG.volume}=${id}`, `${LVM_TAG.operation}=${spec.operationId}`],
      ...(thinPool ? { thinPool } : {}),
    });
    const artifact = await temp.build(id, async () => {
      await tools.lvm("lvcreate", argv);
    });
    return { artifact, adopted: false };
  }

  async function deleteVolume(id: string, { lvs, lv }: LvmNames, wipe: Wipe) {
    for (const snap of records.snapshotsOf(lvs, id)) await tools.remove(snap.name);
    if (lv) {
      if (wipe.mode !== "none") await wipeLv(pool, tools, lv, wipe.mode, wipe.bytesPerSecond ?? 0);
      await tools.remove(lv.name);
    }
    await temp.clearTemp(lvs, id);
    return { existed: lv !== undefined };
  }

  async function resize({ id, lvs, lv }: LvmVolume, target: bigint, shrink: boolean) {
    if (!thinPool && records.snapshotsOf(lvs, id).length > 0) {
      throw failedPrecondition(
        `volume ${id} in ${where} has snapshots, and LVM cannot resize the origin of classic snapshots; delete its snapshots first`,
        { volumeId: id },
      );
    }
    const { tool, argv } = lvresizeArgv(vg, lv.name, target, shrink, cfg);
    await tools.lvm(tool, argv);
    return records.current(id);
  }

  async function list(): Promise<{ volumes: VolumeArtifact[]; foreign: string[] }> {
    const lvs = await records.scan();
    const volumes: VolumeArtifact[] = [];
    const foreign: string[] = [];
    for (const lv of lvs) {
      if (!records.inScope(lv)) continue;
      const vol = tagValue(lv.tags, LVM_TAG.volume);
      const snap = tagValue(lv.tags, LVM_TAG.snapshot);
      if (vol !== undefined && lv.name === lvName(vol)) volumes.push(records.artifactOf(vol, lv));
      // Work in progress (a create, clone or revert), or a leftover the next attempt on the volume removes.
      else if (vol !== undefined && (lv.name === lvTempName(vol) || lv.name === lvOldName(vol))) continue;
      else if (snap !== undefined && lv.name === lvName(snap))
        continue; // listed by listSnapshots
      else foreign.push(lv.name);
    }
    return { volumes: volumes.sort(byVolumeId), foreign: foreign.sort() };
  }

  function requireThinPool(lvs: LvmLogicalVolume[]): LvmLogicalVolume {
    const found = byName(lvs, thinPool ?? "");
    if (found?.segtype !== "thin-pool") {
      throw failedPrecondition(
        `${where}: ${vg}/${thinPool} is not a thin pool${found ? ` (${found.segtype})` : ""}`,
      );
    }
    return found;
  }

  async function capacity(): Promise<PoolCapacityReport> {
    const lvs = await records.scan();
    const provisionedBytes = lvs
      .filter((lv) => {
        const vol = tagValue(lv.tags, LVM_TAG.volume);
        return records.inScope(lv) && vol !== undefined && lv.name === lvName(vol);
      })
      .reduce((sum, lv) => sum + lv.sizeBytes, 0n);
    if (thinPool) {
      const thin = requireThinPool(lvs);
      const totalBytes = thin.sizeBytes;
      const usedBytes = usedFromPercent(totalBytes, thin.dataPercent);
      const report: PoolCapacityReport = {
        totalBytes,
        usedBytes,
        freeBytes: totalBytes - usedBytes,
        provisionedBytes,
      };
      if (thin.dataPercent !== undefined) report.dataPercent = thin.dataPercent;
      if (thin.metadataPercent !== undefined) report.metadataPercent = thin.metadataPercent;
      return report;
    }
    const v = await records.vgInfo();
    return {
      totalBytes: v.sizeBytes,
      usedBytes: v.sizeBytes - v.freeBytes,
      freeBytes: v.freeBytes,
      provisionedBytes,
    };
  }

  async function check(): Promise<{ healthy: boolean; message: string }> {
    try {
      const v = await records.vgInfo();
      if (thinPool) {
        const thin = requireThinPool(await records.scan());
        // lv_attr[7] is `z` when the pool zeroes newly provisioned blocks (see the wipe note in layout.ts).
        const zeroing =
          thin.attr[7] === "z" ? "" : "; the pool does not zero new blocks, so a new LV may read old data";
        const usage =
          thin.dataPercent === undefined
            ? "inactive"
            : `data ${thin.dataPercent}%, metadata ${thin.metadataPercent ?? "?"}%`;
        // A full pool fails writes in every thin LV at once, and full metadata can damage the pool: say so early.
        const full = Math.max(thin.dataPercent ?? 0, thin.metadataPercent ?? 0) >= THIN_POOL_FULL_PERCENT;
        return {
          healthy: !full,
          message: `${where} ${full ? `is nearly full (${THIN_POOL_FULL_PERCENT}% or more)` : "is usable"}: ${formatSize(thin.sizeBytes)} thin pool, ${usage}${zeroing}`,
        };
      }
      return {
        healthy: true,
        message: `${where} is usable: ${formatSize(v.sizeBytes)}, ${formatSize(v.freeBytes)} free`,
      };
    } catch (e) {
      return { healthy: false, message: `${where}: ${(e as Error).message}` };
    }
  }

  return { roundSize, create, delete: deleteVolume, resize, list, capacity, check };
}
