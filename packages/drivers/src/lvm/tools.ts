import { StowageError } from "@stowage/core";
import { lvchangeActivateArgv, lvchangeTagsArgv, lvremoveArgv, lvrenameArgv } from "../lvm.js";
import { ToolError } from "../runner.js";
import { type LvmPool, MiB } from "./layout.js";

/** Wipes and copies get a timeout from their size: this slow a device still finishes in time. */
const SLOWEST_BYTES_PER_SECOND = 10n * MiB;
const MIN_LONG_TIMEOUT_MS = 120_000;

/** The LVM commands a pool runs (and qemu-img, blkdiscard on its LVs), with LVM's errors mapped. */
export interface LvmTools {
  lvm(tool: string, argv: string[], timeoutMs?: number): ReturnType<LvmPool["runner"]["run"]>;
  remove(name: string): Promise<unknown>;
  rename(from: string, to: string): Promise<unknown>;
  retag(name: string, change: { add?: string[]; del?: string[] }): Promise<unknown>;
  activate(name: string): Promise<unknown>;
  /** A timeout for work proportional to `bytes`. */
  longTimeout(bytes: bigint): number;
}

export function createLvmTools(pool: LvmPool): LvmTools {
  const { vg, cfg, where, poolName } = pool;

  /** LVM's "not enough space" becomes resource_exhausted, with the tool error as its cause. */
  function mapLvmError(e: unknown): unknown {
    if (!(e instanceof ToolError) || e.timedOut) return e;
    if (/insufficient free space|Insufficient suitable allocatable extents|not enough free/i.test(e.stderr)) {
      return new StowageError(
        "resource_exhausted",
        `${where} has not enough free space: ${e.stderr.trim().split("\n").at(-1)}`,
        { poolName, tool: e.tool, argv: e.argv },
        { cause: e },
      );
    }
    return e;
  }

  async function lvm(tool: string, argv: string[], timeoutMs?: number) {
    try {
      return await pool.runner.run(tool, argv, timeoutMs === undefined ? {} : { timeoutMs });
    } catch (e) {
      throw mapLvmError(e);
    }
  }

  return {
    lvm,
    remove: (name) => lvm("lvremove", lvremoveArgv(vg, name, cfg)),
    rename: (from, to) => lvm("lvrename", lvrenameArgv(vg, from, to, cfg)),
    retag: (name, change) => lvm("lvchange", lvchangeTagsArgv(vg, name, change, cfg)),
    activate: (name) => lvm("lvchange", lvchangeActivateArgv(vg, name, true, cfg)),
    longTimeout(bytes) {
      const ms = Number((bytes * 1000n) / SLOWEST_BYTES_PER_SECOND);
      return Math.max(MIN_LONG_TIMEOUT_MS, ms);
    },
  };
}
