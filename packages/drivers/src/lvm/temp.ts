import { failedPrecondition } from "@stowage/core";
import type { VolumeArtifact } from "../driver.js";
import { type LvmLogicalVolume, lvcreateSnapshotArgv } from "../lvm.js";
import { LVM_TAG, type LvmPool, lvName, lvOldName, lvTempName } from "./layout.js";
import { byName, hasTag, type LvmRecords } from "./records.js";
import type { LvmTools } from "./tools.js";

// Work in progress: a volume is made under its temp name and renamed into place; a thin revert swaps LVs.

export interface LvmTemp {
  /** Removes our stale temp LV for `id` (a crashed attempt); refuses to touch someone else's. */
  clearTemp(lvs: LvmLogicalVolume[], id: string): Promise<void>;
  /** Removes our temp LV for `id` after a failed attempt, if it can; otherwise the next attempt does. */
  discardTemp(id: string): Promise<void>;
  /** Runs `make` (which builds the temp LV), then publishes it; a failure removes what `make` left. */
  build(id: string, make: () => Promise<void>): Promise<VolumeArtifact>;
  /** A writable, active thin snapshot of `origin` under `id`'s temp name, tagged `tags`. */
  thinCopy(origin: string, id: string, tags: string[]): Promise<void>;
  /** The artifact of an adopted LV, activated first if it is not (after a reboot without autoactivation). */
  usable(id: string, lv: LvmLogicalVolume): Promise<VolumeArtifact>;
  /**
   * A thin revert swaps LVs by two renames (the volume's LV to its old name, the reverted copy to the volume's
   * name). After a crash between them the volume's name is free, and this puts things right: the reverted
   * copy is complete by then, so it takes the name (the revert's retry then finds it done); without it, the old
   * LV goes back. A leftover old LV beside the volume is removed. Returns the LVs as they are afterwards.
   */
  settle(lvs: LvmLogicalVolume[], id: string): Promise<LvmLogicalVolume[]>;
}

export function createLvmTemp(pool: LvmPool, tools: LvmTools, records: LvmRecords): LvmTemp {
  const { vg, cfg, where } = pool;
  const { rename, remove } = tools;

  async function clearTemp(lvs: LvmLogicalVolume[], id: string): Promise<void> {
    const tmp = byName(lvs, lvTempName(id));
    if (!tmp) return;
    if (!hasTag(tmp, LVM_TAG.volume, id)) {
      throw failedPrecondition(
        `${where}: LV ${vg}/${tmp.name} is in the way and has no Stowage tag ${LVM_TAG.volume}=${id}; remove or rename it`,
      );
    }
    await remove(tmp.name);
  }

  async function discardTemp(id: string): Promise<void> {
    try {
      const tmp = byName(await records.scan(), lvTempName(id));
      if (tmp && hasTag(tmp, LVM_TAG.volume, id)) await remove(tmp.name);
    } catch {
      // The next attempt removes it.
    }
  }

  async function build(id: string, make: () => Promise<void>): Promise<VolumeArtifact> {
    try {
      await make();
      // Temp LV → final name: an LV under the final name is complete by construction.
      await rename(lvTempName(id), lvName(id));
    } catch (e) {
      await discardTemp(id);
      throw e;
    }
    return records.current(id);
  }

  async function thinCopy(origin: string, id: string, tags: string[]): Promise<void> {
    const tmp = lvTempName(id);
    await tools.lvm(
      "lvcreate",
      lvcreateSnapshotArgv({ ...cfg, vg, origin, name: tmp, tags, type: "thin", skipActivation: false }),
    );
    const made = byName(await records.scan(), tmp);
    if (made?.active === false) await tools.activate(tmp);
  }

  async function usable(id: string, lv: LvmLogicalVolume): Promise<VolumeArtifact> {
    if (lv.active !== false) return records.artifactOf(id, lv);
    await tools.activate(lv.name);
    return records.current(id);
  }

  async function settle(lvs: LvmLogicalVolume[], id: string): Promise<LvmLogicalVolume[]> {
    const old = byName(lvs, lvOldName(id));
    if (!old || !hasTag(old, LVM_TAG.volume, id)) return lvs;
    if (!byName(lvs, lvName(id))) {
      const tmp = byName(lvs, lvTempName(id));
      if (tmp && hasTag(tmp, LVM_TAG.volume, id)) await rename(tmp.name, lvName(id));
      else {
        await rename(old.name, lvName(id));
        return records.scan();
      }
    }
    await remove(old.name);
    return records.scan();
  }

  return { clearTemp, discardTemp, build, thinCopy, usable, settle };
}
