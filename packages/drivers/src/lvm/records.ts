import { alreadyExists, failedPrecondition, notFound } from "@stowage/core";
import type { SnapshotInfo, VolumeArtifact } from "../driver.js";
import type { DriverBackend } from "../guard.js";
import {
  type LvmLogicalVolume,
  lvsArgv,
  parseLvs,
  parseVgs,
  tagValue,
  usedFromPercent,
  vgsArgv,
} from "../lvm.js";
import { LVM_TAG, type LvmPool, lvName, PREFIX } from "./layout.js";
import type { LvmTools } from "./tools.js";

// Reading the pool: `lvs` and `vgs`, and what the Stowage tags on each LV say it is.

/** An owned volume: its LV, and the scan it was found in. */
export interface LvmVolume {
  id: string;
  lvs: LvmLogicalVolume[];
  lv: LvmLogicalVolume;
}

/** What lies under a volume's names before a create or delete: the scan, and our LV under its name if any. */
export interface LvmNames {
  lvs: LvmLogicalVolume[];
  lv: LvmLogicalVolume | undefined;
}

export type LvmBackend = DriverBackend<LvmVolume, LvmNames>;

export const byName = (lvs: LvmLogicalVolume[], name: string) => lvs.find((lv) => lv.name === name);
export const hasTag = (lv: LvmLogicalVolume, key: string, value: string) => tagValue(lv.tags, key) === value;

export interface LvmRecords {
  scan(): Promise<LvmLogicalVolume[]>;
  vgInfo(): ReturnType<typeof readVg>;
  extentBytes(): Promise<bigint>;
  /** LVs this pool holds volumes in: thin LVs of our thin pool, or (thick) LVs that are neither thin nor pools. */
  inScope(lv: LvmLogicalVolume): boolean;
  ownsVolume(lv: LvmLogicalVolume, id: string): boolean;
  /** The volume's LV: undefined when missing; throws when an LV squats its name without our tag. */
  volumeLv(lvs: LvmLogicalVolume[], id: string, purpose: string): LvmLogicalVolume | undefined;
  snapshotLv(lvs: LvmLogicalVolume[], volumeId: string, snapshotId: string): LvmLogicalVolume | undefined;
  snapshotsOf(lvs: LvmLogicalVolume[], volumeId: string): LvmLogicalVolume[];
  artifactOf(id: string, lv: LvmLogicalVolume): VolumeArtifact;
  snapshotInfoOf(volumeId: string, lv: LvmLogicalVolume): SnapshotInfo;
  /** The volume as LVM reports it now. */
  current(id: string): Promise<VolumeArtifact>;
}

async function readVg(pool: LvmPool, tools: LvmTools) {
  const argv = vgsArgv(pool.vg, pool.cfg);
  const { stdout } = await tools.lvm("vgs", argv);
  const found = parseVgs(stdout, argv).find((v) => v.name === pool.vg);
  if (!found) throw failedPrecondition(`${pool.where}: vgs did not report the volume group`);
  return found;
}

export function createLvmRecords(pool: LvmPool, tools: LvmTools): LvmRecords {
  const { vg, thinPool, poolName, where } = pool;
  let extentSize: bigint | undefined;

  async function scan(): Promise<LvmLogicalVolume[]> {
    const argv = lvsArgv(vg, pool.cfg);
    const { stdout } = await tools.lvm("lvs", argv);
    return parseLvs(stdout, argv);
  }

  async function vgInfo() {
    const found = await readVg(pool, tools);
    extentSize = found.extentSizeBytes;
    return found;
  }

  function inScope(lv: LvmLogicalVolume): boolean {
    if (thinPool) return lv.segtype === "thin" && lv.poolLv === thinPool;
    return lv.segtype !== "thin" && lv.segtype !== "thin-pool" && lv.path !== "";
  }

  const ownsVolume = (lv: LvmLogicalVolume, id: string) => inScope(lv) && hasTag(lv, LVM_TAG.volume, id);

  function volumeLv(lvs: LvmLogicalVolume[], id: string, purpose: string): LvmLogicalVolume | undefined {
    const lv = byName(lvs, lvName(id));
    if (!lv) return undefined;
    if (!ownsVolume(lv, id)) {
      const message = `${where}: LV ${vg}/${lv.name} exists without the Stowage tag ${LVM_TAG.volume}=${id}; refusing to ${purpose} an LV that is not ours (rename it, or import it)`;
      const details = { volumeId: id, poolName, lv: `${vg}/${lv.name}` };
      // Making it would collide (already_exists); acting on it would touch someone else's data.
      throw purpose === "take over" ? alreadyExists(message, details) : failedPrecondition(message, details);
    }
    return lv;
  }

  function snapshotLv(
    lvs: LvmLogicalVolume[],
    volumeId: string,
    snapshotId: string,
  ): LvmLogicalVolume | undefined {
    const lv = byName(lvs, lvName(snapshotId));
    if (!lv) return undefined;
    if (!hasTag(lv, LVM_TAG.snapshot, snapshotId)) {
      throw failedPrecondition(
        `${where}: LV ${vg}/${lv.name} exists without the Stowage tag ${LVM_TAG.snapshot}=${snapshotId}; it is not our snapshot`,
        { snapshotId, poolName },
      );
    }
    const of = tagValue(lv.tags, LVM_TAG.snapshotOf);
    if (of !== volumeId) {
      throw failedPrecondition(`${where}: snapshot ${snapshotId} belongs to volume ${of}, not ${volumeId}`, {
        snapshotId,
        volumeId,
      });
    }
    return lv;
  }

  const snapshotsOf = (lvs: LvmLogicalVolume[], volumeId: string) =>
    lvs.filter(
      (lv) =>
        lv.name.startsWith(`${PREFIX}snap-`) &&
        tagValue(lv.tags, LVM_TAG.snapshotOf) === volumeId &&
        lv.name === lvName(tagValue(lv.tags, LVM_TAG.snapshot) ?? ""),
    );

  function artifactOf(id: string, lv: LvmLogicalVolume): VolumeArtifact {
    return {
      volumeId: id,
      poolName,
      sizeBytes: lv.sizeBytes,
      format: "raw",
      // A thin LV holds what its data% says; a thick one holds every extent it has.
      allocatedBytes: thinPool ? usedFromPercent(lv.sizeBytes, lv.dataPercent) : lv.sizeBytes,
      path: lv.path || `/dev/${vg}/${lv.name}`,
      operationId: tagValue(lv.tags, LVM_TAG.operation) ?? "",
    };
  }

  function snapshotInfoOf(volumeId: string, lv: LvmLogicalVolume): SnapshotInfo {
    const ms = Number(tagValue(lv.tags, LVM_TAG.time));
    return {
      snapshotId: tagValue(lv.tags, LVM_TAG.snapshot) ?? "",
      volumeId,
      // A classic snapshot's LV is its COW store; its virtual size is the origin's.
      sizeBytes: lv.originSizeBytes ?? lv.sizeBytes,
      createdAt: Number.isFinite(ms) && ms > 0 ? new Date(ms).toISOString() : (lv.createdAt ?? ""),
      operationId: tagValue(lv.tags, LVM_TAG.operation) ?? "",
    };
  }

  return {
    scan,
    vgInfo,
    extentBytes: async () => extentSize ?? (await vgInfo()).extentSizeBytes,
    inScope,
    ownsVolume,
    volumeLv,
    snapshotLv,
    snapshotsOf,
    artifactOf,
    snapshotInfoOf,
    async current(id) {
      const lv = volumeLv(await scan(), id, "use");
      if (!lv) throw notFound(`volume ${id} disappeared from ${where}`, { volumeId: id, poolName });
      return artifactOf(id, lv);
    },
  };
}
