import { alreadyExists, formatSize, invalidArgument, notFound } from "@stowage/core";
import { lvcreateArgv, lvresizeArgv, tagValue } from "../lvm.js";
import { LVM_TAG, type LvmPool, lvTempName } from "./layout.js";
import { byName, type LvmBackend, type LvmRecords, type LvmVolume } from "./records.js";
import type { LvmTemp } from "./temp.js";
import type { LvmTools } from "./tools.js";

/**
 * Clones. lvmthin: a writable thin snapshot of the source (or of its snapshot); it shares blocks, not a
 * dependency, so there is nothing to flatten. lvm: a new LV and a copy of the data.
 */
export function createLvmClones(pool: LvmPool, tools: LvmTools, records: LvmRecords, temp: LvmTemp) {
  const { vg, thinPool, where, poolName, cfg } = pool;

  const clone: LvmBackend["clone"] = async (spec, { lvs, lv: existing }, withSource) => {
    const id = spec.volumeId;
    if (existing) {
      if (tagValue(existing.tags, LVM_TAG.operation) !== spec.operationId) {
        throw alreadyExists(
          `volume ${id} already exists in ${where} (operation ${tagValue(existing.tags, LVM_TAG.operation)}); it is not the clone of operation ${spec.operationId}`,
          { volumeId: id, poolName },
        );
      }
      await temp.clearTemp(lvs, id);
      return { artifact: await temp.usable(id, existing), adopted: true };
    }
    return withSource(async (source) => {
      let from = source.lv;
      let sourceSize = source.lv.sizeBytes;
      if (!thinPool && source.lv.active === false) {
        // A thick copy reads the source's device (and a classic snapshot's, which is active with its origin).
        await tools.activate(source.lv.name);
      }
      if (spec.sourceSnapshotId !== undefined) {
        const snap = records.snapshotLv(source.lvs, source.id, spec.sourceSnapshotId);
        if (!snap) {
          throw notFound(
            `snapshot ${spec.sourceSnapshotId} of volume ${source.id} does not exist in ${where}`,
            { volumeId: source.id, snapshotId: spec.sourceSnapshotId },
          );
        }
        from = snap;
        sourceSize = snap.originSizeBytes ?? snap.sizeBytes;
      }
      const target = spec.sizeBytes ?? sourceSize;
      if (target < sourceSize) {
        throw invalidArgument(
          `a clone of ${formatSize(target)} cannot hold its source of ${formatSize(sourceSize)}; ask for at least the source's size`,
          { field: "sizeBytes" },
        );
      }
      await temp.clearTemp(source.lvs, id);
      const tags = [`${LVM_TAG.volume}=${id}`, `${LVM_TAG.operation}=${spec.operationId}`];
      const tmp = lvTempName(id);
      const artifact = await temp.build(id, async () => {
        if (thinPool) {
          // A writable thin snapshot that activates like any volume (-kn); it shares blocks, not a dependency.
          await temp.thinCopy(from.name, id, tags);
          if (target > sourceSize) {
            const { tool, argv } = lvresizeArgv(vg, tmp, target, false, cfg);
            await tools.lvm(tool, argv);
          }
          return;
        }
        await tools.lvm("lvcreate", lvcreateArgv({ ...cfg, vg, name: tmp, sizeBytes: target, tags }));
        const dest = `/dev/${vg}/${tmp}`;
        const src = from.path || `/dev/${vg}/${from.name}`;
        // -n: the LV exists; qemu-img writes every block of the source, zeros included.
        await tools.lvm(
          "qemu-img",
          ["convert", "-n", "-f", "raw", "-O", "raw", "--", src, dest],
          tools.longTimeout(sourceSize),
        );
        const made = byName(await records.scan(), tmp);
        const madeSize = made?.sizeBytes ?? target;
        if (madeSize > sourceSize) {
          // A new thick LV holds whatever its extents held before: the grown tail must read as zeros.
          await tools.lvm(
            "blkdiscard",
            ["-f", "-z", "-o", String(sourceSize), "-l", String(madeSize - sourceSize), dest],
            tools.longTimeout(madeSize - sourceSize),
          );
        }
      });
      return { artifact, adopted: false };
    });
  };

  return {
    clone,
    /** Nothing to do, by construction: thin clones share blocks but depend on nothing, thick clones are copies. */
    flatten: async ({ id, lv }: LvmVolume) => records.artifactOf(id, lv),
  };
}
