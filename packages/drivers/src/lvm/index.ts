import type { PoolDriver } from "../driver.js";
import { guardDriver } from "../guard.js";
import { createKeyedLock } from "../keyed-lock.js";
import { parsePvs, pvsArgv } from "../lvm.js";
import type { ToolRunner } from "../runner.js";
import { createLvmClones } from "./clones.js";
import { createLvmPool, type LvmDriverOptions, lvName } from "./layout.js";
import { byName, createLvmRecords } from "./records.js";
import { createLvmSnapshots } from "./snapshots.js";
import { createLvmTemp } from "./temp.js";
import { createLvmTools } from "./tools.js";
import { createLvmVolumes } from "./volumes.js";

export {
  LVM_NO_UDEV_CONFIG,
  LVM_TAG,
  type LvmDriverOptions,
  lvmToolEnv,
  lvName,
  lvOldName,
  lvTempName,
} from "./layout.js";

/** An `lvm` pool, or an `lvmthin` pool when `thinPool` is set (see layout.ts), behind the driver guard. */
export function createLvmDriver(opts: LvmDriverOptions): PoolDriver {
  const pool = createLvmPool(opts);
  const tools = createLvmTools(pool);
  const records = createLvmRecords(pool, tools);
  const temp = createLvmTemp(pool, tools, records);
  const volumes = createLvmVolumes(pool, tools, records, temp);
  const snapshots = createLvmSnapshots(pool, tools, records, temp);
  const clones = createLvmClones(pool, tools, records, temp);
  return guardDriver({
    kind: pool.kind,
    poolName: pool.poolName,
    where: pool.where,
    lock: createKeyedLock(),
    async findVolume(id, purpose) {
      if (purpose === "read") {
        const lvs = await records.scan();
        const lv = byName(lvs, lvName(id));
        return lv && records.ownsVolume(lv, id) ? { id, lvs, lv } : undefined;
      }
      // A change first finishes a thin revert that crashed half-way.
      const lvs = await temp.settle(await records.scan(), id);
      const lv = records.volumeLv(lvs, id, "use");
      return lv ? { id, lvs, lv } : undefined;
    },
    async inspectNames(id, purpose) {
      const lvs = await temp.settle(await records.scan(), id);
      return { lvs, lv: records.volumeLv(lvs, id, purpose === "make" ? "take over" : "delete") };
    },
    artifact: async ({ id, lv }) => records.artifactOf(id, lv),
    ...volumes,
    ...snapshots,
    ...clones,
  });
}

/**
 * The devices of a volume group's physical volumes (`/dev/sdb1`, `/dev/nvme0n1`), by one `pvs`: the agent reads
 * their NUMA node from sysfs when the pool config names none.
 */
export async function lvmPhysicalDevices(
  runner: ToolRunner,
  vg: string,
  lvmConfig?: string,
): Promise<string[]> {
  const argv = pvsArgv({ vg, ...(lvmConfig ? { config: lvmConfig } : {}) });
  const { stdout } = await runner.run("pvs", argv);
  return parsePvs(stdout, argv)
    .filter((p) => p.vg === vg)
    .map((p) => p.name);
}
