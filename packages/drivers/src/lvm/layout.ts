import { validateName } from "@stowage/core";
import { assertLvmName, type LvmCommandOptions } from "../lvm.js";
import type { ToolRunner } from "../runner.js";

/**
 * `lvm` pools (thick linear LVs in a VG) and `lvmthin` pools (thin LVs in one thin pool of a VG).
 *
 * Names derive from ids only: a volume is the LV `stowage-<volumeId>` (`stowage-vol-<hex>`), a snapshot the LV
 * `stowage-<snapshotId>` (`stowage-snap-<hex>`), and work in progress is `stowage-tmp-<id>` (and, during a thin
 * revert, `stowage-old-<id>`). Ownership is in
 * LV tags, written by the same lvcreate that makes the LV (one metadata commit): `stowage.vol=<volumeId>` and
 * `stowage.op=<operationId>` on volumes; `stowage.snap=<snapshotId>`, `stowage.of=<volumeId>`,
 * `stowage.op=<operationId>` and `stowage.time=<epoch ms>` on snapshots. An LV under one of our names without
 * the matching tag is never adopted, changed or deleted; list() reports it as foreign.
 *
 * Crash safety: a volume (or clone) is made under its temp name, filled, then renamed into place, so an LV under
 * a final name is always complete; a stale temp LV of ours is removed by the next attempt. Reverts record
 * what they are doing in tags, so that a retry after a crash finishes the job (see revertThin, revertByMerge).
 *
 * Choices (core's capability table says the same):
 * - Snapshots. lvmthin: thin snapshots (`lvcreate -s`, `-ky`: never activated, they are kept, not opened).
 *   lvm: classic COW snapshots with an exception store of 100%ORIGIN, so a snapshot can never fill up and turn
 *   invalid; the price is the origin's size in free extents, and slower writes to the origin while it exists.
 *   A thick volume with snapshots cannot be resized (LVM refuses to resize an active origin).
 * - Revert. lvmthin: a writable thin snapshot of the snapshot is swapped in under the volume's name (the
 *   snapshot stays; no merge, which would leave the volume's other snapshots unmergeable). lvm: `lvconvert
 *   --merge`, which consumes the snapshot; the driver re-creates it at once (same id, operation and creation
 *   time) from the reverted volume, so the snapshot survives and repeating converges. Either way the volume
 *   takes the snapshot's size, and must not be open (a running VM): LVM would defer a merge, and a swap
 *   would leave its user on the old LV. A redelivered revert (same operation) changes nothing.
 * - Clones. lvmthin: a thin snapshot of the source (or of its snapshot) made writable and activatable (`-kn`),
 *   renamed into place: thin snapshots are independent LVs, so clones are already flat and flatten is a no-op.
 *   lvm: a new LV, the data copied with `qemu-img convert -n`, a larger tail zeroed with `blkdiscard -z`.
 * - Wipe on delete. lvm: zero = `blkdiscard -z` (BLKZEROOUT: the kernel writes zeros, offloaded where the
 *   device can), discard = `blkdiscard`. lvmthin: both are `blkdiscard`: unmapping the thin LV's blocks is
 *   what destroys its data (an unmapped block reads as zeros, and a pool that zeroes new blocks — LVM's
 *   default, the `z` in the pool's attributes — never hands old data to another LV), while writing zeros
 *   would allocate every block of the volume in the pool. A throttle splits the wipe into 1-second chunks.
 * - Deleting a volume deletes its snapshots with it (as deleting a qcow2 file drops its internal snapshots);
 *   left behind they would be leaks nobody lists. Clones are independent and stay.
 */

export interface LvmDriverOptions {
  poolName: string;
  /** The volume group. It must exist; the driver never creates or removes it. */
  vg: string;
  /** Set: an `lvmthin` pool of thin LVs in this thin pool (an LV of `vg`). Unset: an `lvm` pool. */
  thinPool?: string;
  /**
   * Every LVM command runs through it. Give it `LVM_SUPPRESS_FD_WARNINGS=1` in its env (see `lvmToolEnv`), and
   * `LVM_SYSTEM_DIR` when LVM must read a private lvm.conf: the runner owns the environment of its tools.
   */
  runner: ToolRunner;
  /**
   * Extra `--config` for every LVM command. Hosts without udevd need
   * `activation{udev_sync=0 udev_rules=0} devices{obtain_device_list_from_udev=0}` (LVM_NO_UDEV_CONFIG).
   */
  lvmConfig?: string;
  /** Clock for snapshot creation times (tests). */
  now?: () => Date;
}

/** The udev-less settings (docs/operating.md): without them lvcreate fails with "device not cleared". */
export const LVM_NO_UDEV_CONFIG =
  "activation{udev_sync=0 udev_rules=0} devices{obtain_device_list_from_udev=0}";

/** Environment for the runner of an LVM pool. */
export function lvmToolEnv(opts: { lvmSystemDir?: string } = {}): Record<string, string> {
  // Without it, every LVM command started from Node prints "File descriptor N leaked on lvcreate invocation".
  const env: Record<string, string> = { LVM_SUPPRESS_FD_WARNINGS: "1" };
  if (opts.lvmSystemDir) env.LVM_SYSTEM_DIR = opts.lvmSystemDir;
  return env;
}

export const LVM_TAG = {
  volume: "stowage.vol",
  operation: "stowage.op",
  snapshot: "stowage.snap",
  snapshotOf: "stowage.of",
  time: "stowage.time",
  /** On a volume: the last revert that completed (a redelivery of it must not merge again). */
  reverted: "stowage.reverted",
  /** On a volume, during a revert: the snapshot being merged, and what re-creating it needs. */
  revertSnapshot: "stowage.rsnap",
  revertSnapshotOp: "stowage.rsop",
  revertSnapshotTime: "stowage.rstime",
} as const;

export const PREFIX = "stowage-";
const TEMP_PREFIX = "stowage-tmp-";
const OLD_PREFIX = "stowage-old-";
export const MiB = 1024n * 1024n;

export const lvName = (id: string) => `${PREFIX}${id}`;
export const lvTempName = (id: string) => `${TEMP_PREFIX}${id}`;
/** A thin volume's previous LV during a revert, between the two renames of the swap. */
export const lvOldName = (id: string) => `${OLD_PREFIX}${id}`;

/** One LVM pool's settings. */
export interface LvmPool {
  kind: "lvm" | "lvmthin";
  poolName: string;
  vg: string;
  thinPool: string | undefined;
  runner: ToolRunner;
  /** `--config` for every LVM command. */
  cfg: LvmCommandOptions;
  now: () => Date;
  where: string;
}

export function createLvmPool(opts: LvmDriverOptions): LvmPool {
  const poolName = validateName("pool name", opts.poolName);
  const vg = assertLvmName("volume group", opts.vg);
  const thinPool = opts.thinPool === undefined ? undefined : assertLvmName("thin pool", opts.thinPool);
  const kind = thinPool ? ("lvmthin" as const) : ("lvm" as const);
  return {
    kind,
    poolName,
    vg,
    thinPool,
    runner: opts.runner,
    cfg: opts.lvmConfig ? { config: opts.lvmConfig } : {},
    now: opts.now ?? (() => new Date()),
    where: thinPool ? `${kind} pool ${poolName} (${vg}/${thinPool})` : `${kind} pool ${poolName} (VG ${vg})`,
  };
}
