import {
  alreadyExists,
  failedPrecondition,
  formatSize,
  invalidArgument,
  notFound,
  StowageError,
  type VolumeFormat,
  validateName,
  validateVolumeSize,
} from "@stowage/core";
import {
  assertOperationId,
  assertSnapshotId,
  assertVolumeId,
  type CloneSpec,
  type CreateResult,
  type CreateVolumeSpec,
  type DeleteOptions,
  type PoolCapacityReport,
  type PoolDriver,
  type SnapshotInfo,
  type VolumeArtifact,
  type WipeMode,
} from "./driver.js";
import { createKeyedLock } from "./keyed-lock.js";
import {
  assertLvmName,
  type LvmCommandOptions,
  type LvmLogicalVolume,
  lvchangeActivateArgv,
  lvchangeTagsArgv,
  lvconvertMergeArgv,
  lvcreateArgv,
  lvcreateSnapshotArgv,
  lvremoveArgv,
  lvrenameArgv,
  lvresizeArgv,
  lvsArgv,
  parseLvs,
  parseVgs,
  tagValue,
  usedFromPercent,
  vgsArgv,
} from "./lvm.js";
import { ToolError, type ToolRunner } from "./runner.js";

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
 * Choices (the conformance capabilities say the same):
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

/** The udev-less settings (BACKENDS.md §2): without them lvcreate fails with "device not cleared". */
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

const PREFIX = "stowage-";
const TEMP_PREFIX = "stowage-tmp-";
const OLD_PREFIX = "stowage-old-";
const MiB = 1024n * 1024n;
/** Wipes and copies get a timeout from their size: this slow a device still finishes in time. */
const SLOWEST_BYTES_PER_SECOND = 10n * MiB;
const MIN_LONG_TIMEOUT_MS = 120_000;
const MAX_WIPE_CHUNK = 1024n * MiB;
/** A thin pool with data or metadata this full is reported unhealthy. */
const THIN_POOL_FULL_PERCENT = 95;

export const lvName = (id: string) => `${PREFIX}${id}`;
export const lvTempName = (id: string) => `${TEMP_PREFIX}${id}`;
/** A thin volume's previous LV during a revert, between the two renames of the swap. */
export const lvOldName = (id: string) => `${OLD_PREFIX}${id}`;

export function createLvmDriver(opts: LvmDriverOptions): PoolDriver {
  const poolName = validateName("pool name", opts.poolName);
  const vg = assertLvmName("volume group", opts.vg);
  const thinPool = opts.thinPool === undefined ? undefined : assertLvmName("thin pool", opts.thinPool);
  const kind = thinPool ? ("lvmthin" as const) : ("lvm" as const);
  const runner = opts.runner;
  const cfg: LvmCommandOptions = opts.lvmConfig ? { config: opts.lvmConfig } : {};
  const now = opts.now ?? (() => new Date());
  const lock = createKeyedLock();
  const where = thinPool
    ? `${kind} pool ${poolName} (${vg}/${thinPool})`
    : `${kind} pool ${poolName} (VG ${vg})`;
  let extentSize: bigint | undefined;

  // ---- reading the pool ---------------------------------------------------------------------------------

  async function scan(): Promise<LvmLogicalVolume[]> {
    const argv = lvsArgv(vg, cfg);
    const { stdout } = await lvm("lvs", argv);
    return parseLvs(stdout, argv);
  }

  async function vgInfo() {
    const argv = vgsArgv(vg, cfg);
    const { stdout } = await lvm("vgs", argv);
    const found = parseVgs(stdout, argv).find((v) => v.name === vg);
    if (!found) throw failedPrecondition(`${where}: vgs did not report the volume group`);
    extentSize = found.extentSizeBytes;
    return found;
  }

  async function extentBytes(): Promise<bigint> {
    return extentSize ?? (await vgInfo()).extentSizeBytes;
  }

  /** LVs this pool holds volumes in: thin LVs of our thin pool, or (thick) LVs that are neither thin nor pools. */
  function inScope(lv: LvmLogicalVolume): boolean {
    if (thinPool) return lv.segtype === "thin" && lv.poolLv === thinPool;
    return lv.segtype !== "thin" && lv.segtype !== "thin-pool" && lv.path !== "";
  }

  const byName = (lvs: LvmLogicalVolume[], name: string) => lvs.find((lv) => lv.name === name);
  const hasTag = (lv: LvmLogicalVolume, key: string, value: string) => tagValue(lv.tags, key) === value;
  const ownsVolume = (lv: LvmLogicalVolume, id: string) => inScope(lv) && hasTag(lv, LVM_TAG.volume, id);

  /** The volume's LV: undefined when missing; throws when an LV squats its name without our tag. */
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

  /** `repair`: first finish a thin revert that crashed half-way (mutating entry points only, under the lock). */
  async function requireVolume(
    id: string,
    repair = false,
  ): Promise<{ lvs: LvmLogicalVolume[]; lv: LvmLogicalVolume }> {
    const lvs = repair ? await settle(await scan(), id) : await scan();
    const lv = volumeLv(lvs, id, "use");
    if (!lv) throw notFound(`volume ${id} does not exist in ${where}`, { volumeId: id, poolName });
    return { lvs, lv };
  }

  async function infoNow(id: string): Promise<VolumeArtifact> {
    return artifactOf(id, (await requireVolume(id)).lv);
  }

  // ---- LVM commands -------------------------------------------------------------------------------------

  async function lvm(tool: string, argv: string[], timeoutMs?: number) {
    try {
      return await runner.run(tool, argv, timeoutMs === undefined ? {} : { timeoutMs });
    } catch (e) {
      throw mapLvmError(e);
    }
  }

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

  const remove = (name: string) => lvm("lvremove", lvremoveArgv(vg, name, cfg));
  const rename = (from: string, to: string) => lvm("lvrename", lvrenameArgv(vg, from, to, cfg));
  const retag = (name: string, change: { add?: string[]; del?: string[] }) =>
    lvm("lvchange", lvchangeTagsArgv(vg, name, change, cfg));

  /** Removes our stale temp LV for `id` (a crashed attempt); refuses to touch someone else's. */
  async function clearTemp(lvs: LvmLogicalVolume[], id: string, tagKey: string): Promise<void> {
    const tmp = byName(lvs, lvTempName(id));
    if (!tmp) return;
    if (!hasTag(tmp, tagKey, id)) {
      throw failedPrecondition(
        `${where}: LV ${vg}/${tmp.name} is in the way and has no Stowage tag ${tagKey}=${id}; remove or rename it`,
      );
    }
    await remove(tmp.name);
  }

  /** The artifact of an adopted LV, activated first if it is not (after a reboot without autoactivation). */
  async function usable(id: string, lv: LvmLogicalVolume): Promise<VolumeArtifact> {
    if (lv.active !== false) return artifactOf(id, lv);
    await lvm("lvchange", lvchangeActivateArgv(vg, lv.name, true, cfg));
    return infoNow(id);
  }

  /** Temp LV → final name; an LV under the final name is complete by construction. */
  async function publish(id: string): Promise<void> {
    await rename(lvTempName(id), lvName(id));
  }

  async function bestEffortRemoveTemp(id: string): Promise<void> {
    try {
      const lvs = await scan();
      const tmp = byName(lvs, lvTempName(id));
      if (tmp && hasTag(tmp, LVM_TAG.volume, id)) await remove(tmp.name);
    } catch {
      // The next attempt removes it.
    }
  }

  /**
   * A thin revert swaps LVs by two renames (the volume's LV to its old name, the reverted copy to the volume's
   * name). After a crash between them the volume's name is free, and this puts things right: the reverted
   * copy is complete by then, so it takes the name (the revert's retry then finds it done); without it, the old
   * LV goes back. A leftover old LV beside the volume is removed. Returns the LVs as they are afterwards.
   */
  async function settle(lvs: LvmLogicalVolume[], id: string): Promise<LvmLogicalVolume[]> {
    const old = byName(lvs, lvOldName(id));
    if (!old || !hasTag(old, LVM_TAG.volume, id)) return lvs;
    if (!byName(lvs, lvName(id))) {
      const tmp = byName(lvs, lvTempName(id));
      if (tmp && hasTag(tmp, LVM_TAG.volume, id)) await rename(tmp.name, lvName(id));
      else {
        await rename(old.name, lvName(id));
        return scan();
      }
    }
    await remove(old.name);
    return scan();
  }

  function longTimeout(bytes: bigint): number {
    const ms = Number((bytes * 1000n) / SLOWEST_BYTES_PER_SECOND);
    return Math.max(MIN_LONG_TIMEOUT_MS, ms);
  }

  function roundToExtent(size: bigint, extent: bigint): bigint {
    return ((size + extent - 1n) / extent) * extent;
  }

  function assertRaw(format: VolumeFormat): void {
    if (format !== "raw") {
      throw invalidArgument(`format ${JSON.stringify(format)} is not valid for ${kind} pools: use raw`, {
        field: "format",
      });
    }
  }

  // ---- volumes ------------------------------------------------------------------------------------------

  async function createVolume(spec: CreateVolumeSpec): Promise<CreateResult> {
    const id = spec.volumeId;
    assertVolumeId(id);
    assertOperationId(spec.operationId);
    assertRaw(spec.format);
    validateVolumeSize(spec.sizeBytes);
    return lock.run(id, async () => {
      const lvs = await settle(await scan(), id);
      const existing = volumeLv(lvs, id, "take over");
      if (existing) {
        const same =
          tagValue(existing.tags, LVM_TAG.operation) === spec.operationId ||
          existing.sizeBytes === roundToExtent(spec.sizeBytes, await extentBytes());
        if (!same) {
          throw alreadyExists(
            `volume ${id} already exists in ${where} with ${formatSize(existing.sizeBytes)} (operation ${tagValue(existing.tags, LVM_TAG.operation)}); this request asks for ${formatSize(spec.sizeBytes)}`,
            { volumeId: id, poolName },
          );
        }
        // Done before: a redelivery, or a crash after the rename but before the result went out.
        await clearTemp(lvs, id, LVM_TAG.volume);
        return { artifact: await usable(id, existing), adopted: true };
      }
      await clearTemp(lvs, id, LVM_TAG.volume);
      const argv = lvcreateArgv({
        ...cfg,
        vg,
        name: lvTempName(id),
        sizeBytes: spec.sizeBytes,
        tags: [`${LVM_TAG.volume}=${id}`, `${LVM_TAG.operation}=${spec.operationId}`],
        ...(thinPool ? { thinPool } : {}),
      });
      try {
        await lvm("lvcreate", argv);
        await publish(id);
      } catch (e) {
        await bestEffortRemoveTemp(id);
        throw e;
      }
      return { artifact: await infoNow(id), adopted: false };
    });
  }

  async function deleteVolume(volumeId: string, dopts: DeleteOptions = {}): Promise<{ existed: boolean }> {
    assertVolumeId(volumeId);
    const id = volumeId;
    if (dopts.operationId !== undefined) assertOperationId(dopts.operationId);
    const wipe: WipeMode = dopts.wipe ?? "none";
    if (!["none", "zero", "discard"].includes(wipe)) {
      throw invalidArgument(`wipe mode ${JSON.stringify(wipe)} is not one of none, zero, discard`, {
        field: "wipe",
      });
    }
    const rate = dopts.wipeBytesPerSecond ?? 0;
    if (!Number.isFinite(rate) || rate < 0) {
      throw invalidArgument(`wipe throttle ${rate} must be a positive number of bytes per second`, {
        field: "wipeBytesPerSecond",
      });
    }
    return lock.run(id, async () => {
      const lvs = await settle(await scan(), id);
      const lv = volumeLv(lvs, id, "delete");
      for (const snap of snapshotsOf(lvs, id)) await remove(snap.name);
      if (lv) {
        if (wipe !== "none") await wipeLv(lv, wipe, rate);
        await remove(lv.name);
      }
      await clearTemp(lvs, id, LVM_TAG.volume);
      return { existed: lv !== undefined };
    });
  }

  async function wipeLv(
    lv: LvmLogicalVolume,
    mode: "zero" | "discard",
    bytesPerSecond: number,
  ): Promise<void> {
    if (lv.active === false) await lvm("lvchange", lvchangeActivateArgv(vg, lv.name, true, cfg));
    const device = lv.path || `/dev/${vg}/${lv.name}`;
    // Thin: unmapping is the wipe (see the top of the file). Thick: zero-fill or discard, as asked.
    const zeroFlag = mode === "zero" && !thinPool ? ["-z"] : [];
    const run = (extra: string[], bytes: bigint) =>
      lvm("blkdiscard", ["-f", ...zeroFlag, ...extra, device], longTimeout(bytes)).catch((e: unknown) => {
        if (e instanceof ToolError && /not supported/i.test(e.stderr)) {
          throw failedPrecondition(
            `${where}: the device under ${vg}/${lv.name} does not support ${zeroFlag.length ? "zeroing" : "discard"} (${e.stderr.trim()}); delete with another wipe mode`,
            { volumeId: tagValue(lv.tags, LVM_TAG.volume), wipe: mode },
          );
        }
        throw e;
      });
    if (bytesPerSecond <= 0) {
      await run([], lv.sizeBytes);
      return;
    }
    // One-second chunks, each started no earlier than the throttle allows.
    let chunk = (BigInt(Math.floor(bytesPerSecond)) / MiB) * MiB;
    if (chunk < MiB) chunk = MiB;
    if (chunk > MAX_WIPE_CHUNK) chunk = MAX_WIPE_CHUNK;
    const started = performance.now();
    for (let offset = 0n; offset < lv.sizeBytes; offset += chunk) {
      const due = (Number(offset) / bytesPerSecond) * 1000 - (performance.now() - started);
      if (due > 0) await sleep(due);
      const length = lv.sizeBytes - offset < chunk ? lv.sizeBytes - offset : chunk;
      await run(["-o", String(offset), "-l", String(length)], length);
    }
  }

  async function resizeVolume(
    volumeId: string,
    newSizeBytes: bigint,
    ropts: { allowShrink: boolean; operationId: string },
  ): Promise<VolumeArtifact> {
    assertVolumeId(volumeId);
    const id = volumeId;
    validateVolumeSize(newSizeBytes, "new size");
    assertOperationId(ropts.operationId);
    return lock.run(id, async () => {
      const { lvs, lv } = await requireVolume(id, true);
      const target = roundToExtent(newSizeBytes, await extentBytes());
      // Already there: a redelivered resize converges.
      if (target === lv.sizeBytes) return artifactOf(id, lv);
      const shrink = target < lv.sizeBytes;
      if (shrink && !ropts.allowShrink) {
        throw failedPrecondition(
          `shrinking volume ${id} from ${formatSize(lv.sizeBytes)} to ${formatSize(newSizeBytes)} would discard the data past the new end; allow shrinking explicitly to do it`,
          { volumeId: id, currentBytes: lv.sizeBytes.toString() },
        );
      }
      if (!thinPool && snapshotsOf(lvs, id).length > 0) {
        throw failedPrecondition(
          `volume ${id} in ${where} has snapshots, and LVM cannot resize the origin of classic snapshots; delete its snapshots first`,
          { volumeId: id },
        );
      }
      const { tool, argv } = lvresizeArgv(vg, lv.name, target, shrink, cfg);
      await lvm(tool, argv);
      return infoNow(id);
    });
  }

  async function info(volumeId: string): Promise<VolumeArtifact | undefined> {
    assertVolumeId(volumeId);
    const lv = byName(await scan(), lvName(volumeId));
    return lv && ownsVolume(lv, volumeId) ? artifactOf(volumeId, lv) : undefined;
  }

  async function list(): Promise<{ volumes: VolumeArtifact[]; foreign: string[] }> {
    const lvs = await scan();
    const volumes: VolumeArtifact[] = [];
    const foreign: string[] = [];
    for (const lv of lvs) {
      if (!inScope(lv)) continue;
      const vol = tagValue(lv.tags, LVM_TAG.volume);
      const snap = tagValue(lv.tags, LVM_TAG.snapshot);
      if (vol !== undefined && lv.name === lvName(vol)) volumes.push(artifactOf(vol, lv));
      // Work in progress (a create, clone or revert), or a leftover the next attempt on the volume removes.
      else if (vol !== undefined && (lv.name === lvTempName(vol) || lv.name === lvOldName(vol))) continue;
      else if (snap !== undefined && lv.name === lvName(snap))
        continue; // listed by listSnapshots
      else foreign.push(lv.name);
    }
    volumes.sort((a, b) => (a.volumeId < b.volumeId ? -1 : a.volumeId > b.volumeId ? 1 : 0));
    return { volumes, foreign: foreign.sort() };
  }

  async function capacity(): Promise<PoolCapacityReport> {
    const lvs = await scan();
    const provisionedBytes = lvs
      .filter((lv) => {
        const vol = tagValue(lv.tags, LVM_TAG.volume);
        return inScope(lv) && vol !== undefined && lv.name === lvName(vol);
      })
      .reduce((sum, lv) => sum + lv.sizeBytes, 0n);
    if (thinPool) {
      const pool = requireThinPool(lvs);
      const totalBytes = pool.sizeBytes;
      const usedBytes = usedFromPercent(totalBytes, pool.dataPercent);
      const report: PoolCapacityReport = {
        totalBytes,
        usedBytes,
        freeBytes: totalBytes - usedBytes,
        provisionedBytes,
      };
      if (pool.dataPercent !== undefined) report.dataPercent = pool.dataPercent;
      if (pool.metadataPercent !== undefined) report.metadataPercent = pool.metadataPercent;
      return report;
    }
    const v = await vgInfo();
    return {
      totalBytes: v.sizeBytes,
      usedBytes: v.sizeBytes - v.freeBytes,
      freeBytes: v.freeBytes,
      provisionedBytes,
    };
  }

  function requireThinPool(lvs: LvmLogicalVolume[]): LvmLogicalVolume {
    const pool = byName(lvs, thinPool ?? "");
    if (pool?.segtype !== "thin-pool") {
      throw failedPrecondition(
        `${where}: ${vg}/${thinPool} is not a thin pool${pool ? ` (${pool.segtype})` : ""}`,
      );
    }
    return pool;
  }

  async function check(): Promise<{ healthy: boolean; message: string }> {
    try {
      const v = await vgInfo();
      if (thinPool) {
        const pool = requireThinPool(await scan());
        // lv_attr[7] is `z` when the pool zeroes newly provisioned blocks (see the wipe note at the top).
        const zeroing =
          pool.attr[7] === "z" ? "" : "; the pool does not zero new blocks, so a new LV may read old data";
        const usage =
          pool.dataPercent === undefined
            ? "inactive"
            : `data ${pool.dataPercent}%, metadata ${pool.metadataPercent ?? "?"}%`;
        // A full pool fails writes in every thin LV at once, and full metadata can damage the pool: say so early.
        const full = Math.max(pool.dataPercent ?? 0, pool.metadataPercent ?? 0) >= THIN_POOL_FULL_PERCENT;
        return {
          healthy: !full,
          message: `${where} ${full ? `is nearly full (${THIN_POOL_FULL_PERCENT}% or more)` : "is usable"}: ${formatSize(pool.sizeBytes)} thin pool, ${usage}${zeroing}`,
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

  // ---- snapshots ----------------------------------------------------------------------------------------

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
    await lvm(
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

  async function createSnapshot(
    volumeId: string,
    snapshotId: string,
    sopts: { operationId: string },
  ): Promise<{ snapshot: SnapshotInfo; adopted: boolean }> {
    assertVolumeId(volumeId);
    assertSnapshotId(snapshotId);
    assertOperationId(sopts.operationId);
    return lock.run(volumeId, async () => {
      const { lvs } = await requireVolume(volumeId, true);
      const existing = snapshotLv(lvs, volumeId, snapshotId);
      if (existing) return { snapshot: snapshotInfoOf(volumeId, existing), adopted: true };
      await makeSnapshot(volumeId, snapshotId, sopts.operationId, now().getTime());
      const made = snapshotLv(await scan(), volumeId, snapshotId);
      if (!made)
        throw new StowageError("internal", `${where}: snapshot ${snapshotId} vanished after lvcreate`);
      return { snapshot: snapshotInfoOf(volumeId, made), adopted: false };
    });
  }

  async function listSnapshots(volumeId: string): Promise<SnapshotInfo[]> {
    assertVolumeId(volumeId);
    const { lvs } = await requireVolume(volumeId);
    return snapshotsOf(lvs, volumeId)
      .map((lv) => snapshotInfoOf(volumeId, lv))
      .sort((a, b) => (a.snapshotId < b.snapshotId ? -1 : a.snapshotId > b.snapshotId ? 1 : 0));
  }

  async function deleteSnapshot(
    volumeId: string,
    snapshotId: string,
    sopts: { operationId: string },
  ): Promise<{ existed: boolean }> {
    assertVolumeId(volumeId);
    assertSnapshotId(snapshotId);
    assertOperationId(sopts.operationId);
    return lock.run(volumeId, async () => {
      const lv = snapshotLv(await settle(await scan(), volumeId), volumeId, snapshotId);
      if (!lv) return { existed: false };
      // Clones never depend on a snapshot here (thin snapshots are independent, thick clones are copies).
      await remove(lv.name);
      return { existed: true };
    });
  }

  async function revertSnapshot(
    volumeId: string,
    snapshotId: string,
    sopts: { operationId: string },
  ): Promise<VolumeArtifact> {
    assertVolumeId(volumeId);
    assertSnapshotId(snapshotId);
    assertOperationId(sopts.operationId);
    return lock.run(volumeId, async () => {
      const { lvs, lv } = await requireVolume(volumeId, true);
      const snap = snapshotLv(lvs, volumeId, snapshotId);
      const pending = !thinPool && tagValue(lv.tags, LVM_TAG.revertSnapshot) === snapshotId;
      if (hasTag(lv, LVM_TAG.reverted, sopts.operationId) && snap && !pending) {
        // This revert is done: reverting again would throw away what was written since.
        return artifactOf(volumeId, lv);
      }
      if (!snap && !pending) {
        throw notFound(`snapshot ${snapshotId} of volume ${volumeId} does not exist in ${where}`, {
          volumeId,
          snapshotId,
        });
      }
      if (snap && lv.open) {
        throw failedPrecondition(
          `volume ${volumeId} is open (in use by a VM?); it cannot be reverted under its user. Stop it, then revert`,
          { volumeId },
        );
      }
      if (thinPool && snap) return revertThin(lvs, lv, snap, sopts.operationId);
      return revertByMerge(lv, snap, snapshotId, sopts.operationId);
    });
  }

  /**
   * Thin: the snapshot stays as it is; a writable thin snapshot of it (tagged as the volume, and with the
   * finished revert's operation) is swapped in under the volume's name, and the old LV goes. No merge: after
   * a merge, the volume's other snapshots are no longer snapshots of anything LVM can merge again (they were
   * taken of a device the merge deleted). A crash between the two renames is put right by `settle`.
   */
  async function revertThin(
    lvs: LvmLogicalVolume[],
    lv: LvmLogicalVolume,
    snap: LvmLogicalVolume,
    operationId: string,
  ): Promise<VolumeArtifact> {
    const id = tagValue(lv.tags, LVM_TAG.volume) ?? "";
    await clearTemp(lvs, id, LVM_TAG.volume);
    const tmp = lvTempName(id);
    const tags = [
      `${LVM_TAG.volume}=${id}`,
      `${LVM_TAG.operation}=${tagValue(lv.tags, LVM_TAG.operation) ?? operationId}`,
      `${LVM_TAG.reverted}=${operationId}`,
    ];
    try {
      await lvm(
        "lvcreate",
        lvcreateSnapshotArgv({
          ...cfg,
          vg,
          origin: snap.name,
          name: tmp,
          tags,
          type: "thin",
          skipActivation: false,
        }),
      );
      const made = byName(await scan(), tmp);
      if (made?.active === false) await lvm("lvchange", lvchangeActivateArgv(vg, tmp, true, cfg));
    } catch (e) {
      await bestEffortRemoveTemp(id);
      throw e;
    }
    await rename(lv.name, lvOldName(id));
    await rename(tmp, lv.name);
    await remove(lvOldName(id));
    return infoNow(id);
  }

  /**
   * Thick (classic COW snapshots): merge, then re-create. Before merging, the volume gets tags naming the
   * snapshot and what re-creating it needs (its operation and time); they go once the snapshot is back. A
   * retry after a crash in between finds the snapshot gone and the tags there, and only re-creates it.
   */
  async function revertByMerge(
    lv: LvmLogicalVolume,
    snap: LvmLogicalVolume | undefined,
    snapshotId: string,
    operationId: string,
  ): Promise<VolumeArtifact> {
    const volumeId = tagValue(lv.tags, LVM_TAG.volume) ?? "";
    let snapOp: string;
    let snapTime: string;
    if (snap) {
      snapOp = tagValue(snap.tags, LVM_TAG.operation) ?? operationId;
      snapTime = tagValue(snap.tags, LVM_TAG.time) ?? String(now().getTime());
      await retag(lv.name, {
        del: staleRevertTags(lv),
        add: [
          `${LVM_TAG.revertSnapshot}=${snapshotId}`,
          `${LVM_TAG.revertSnapshotOp}=${snapOp}`,
          `${LVM_TAG.revertSnapshotTime}=${snapTime}`,
        ],
      });
      await lvm("lvconvert", lvconvertMergeArgv(vg, snap.name, cfg), longTimeout(lv.sizeBytes));
      if (byName(await scan(), snap.name)) {
        throw new StowageError(
          "internal",
          `${where}: the merge of snapshot ${snapshotId} into volume ${volumeId} was deferred by LVM (is the volume in use?); retry the revert once it is closed`,
        );
      }
    } else {
      snapOp = tagValue(lv.tags, LVM_TAG.revertSnapshotOp) ?? operationId;
      snapTime = tagValue(lv.tags, LVM_TAG.revertSnapshotTime) ?? String(now().getTime());
    }
    const current = volumeLv(await scan(), volumeId, "use");
    if (!current) throw new StowageError("internal", `${where}: volume ${volumeId} vanished during a revert`);
    if (current.active === false) await lvm("lvchange", lvchangeActivateArgv(vg, current.name, true, cfg));
    await makeSnapshot(volumeId, snapshotId, snapOp, Number(snapTime));
    await retag(current.name, { del: staleRevertTags(current), add: [`${LVM_TAG.reverted}=${operationId}`] });
    return infoNow(volumeId);
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

  // ---- clones -------------------------------------------------------------------------------------------

  async function cloneVolume(spec: CloneSpec): Promise<CreateResult> {
    const id = spec.volumeId;
    assertVolumeId(id);
    assertOperationId(spec.operationId);
    assertVolumeId(spec.sourceVolumeId);
    if (spec.sourceSnapshotId !== undefined) assertSnapshotId(spec.sourceSnapshotId);
    assertRaw(spec.format);
    if (spec.sizeBytes !== undefined) validateVolumeSize(spec.sizeBytes);
    if (id === spec.sourceVolumeId) {
      throw invalidArgument(`a clone needs a new volume id, not its source's (${id})`, { field: "volumeId" });
    }
    return lock.run(id, async () => {
      const lvs = await settle(await scan(), id);
      const existing = volumeLv(lvs, id, "take over");
      if (existing) {
        if (tagValue(existing.tags, LVM_TAG.operation) !== spec.operationId) {
          throw alreadyExists(
            `volume ${id} already exists in ${where} (operation ${tagValue(existing.tags, LVM_TAG.operation)}); it is not the clone of operation ${spec.operationId}`,
            { volumeId: id, poolName },
          );
        }
        await clearTemp(lvs, id, LVM_TAG.volume);
        return { artifact: await usable(id, existing), adopted: true };
      }
      const source = volumeLv(lvs, spec.sourceVolumeId, "clone");
      if (!source) {
        throw notFound(`source volume ${spec.sourceVolumeId} does not exist in ${where}`, {
          volumeId: spec.sourceVolumeId,
        });
      }
      let from = source;
      let sourceSize = source.sizeBytes;
      if (!thinPool && source.active === false) {
        // A thick copy reads the source's device (and a classic snapshot's, which is active with its origin).
        await lvm("lvchange", lvchangeActivateArgv(vg, source.name, true, cfg));
      }
      if (spec.sourceSnapshotId !== undefined) {
        const snap = snapshotLv(lvs, spec.sourceVolumeId, spec.sourceSnapshotId);
        if (!snap) {
          throw notFound(
            `snapshot ${spec.sourceSnapshotId} of volume ${spec.sourceVolumeId} does not exist in ${where}`,
            { volumeId: spec.sourceVolumeId, snapshotId: spec.sourceSnapshotId },
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
      await clearTemp(lvs, id, LVM_TAG.volume);
      const tags = [`${LVM_TAG.volume}=${id}`, `${LVM_TAG.operation}=${spec.operationId}`];
      const tmp = lvTempName(id);
      try {
        if (thinPool) {
          // A writable thin snapshot that activates like any volume (-kn); it shares blocks, not a dependency.
          await lvm(
            "lvcreate",
            lvcreateSnapshotArgv({
              ...cfg,
              vg,
              origin: from.name,
              name: tmp,
              tags,
              type: "thin",
              skipActivation: false,
            }),
          );
          const made = byName(await scan(), tmp);
          if (made?.active === false) await lvm("lvchange", lvchangeActivateArgv(vg, tmp, true, cfg));
          if (target > sourceSize) {
            const { tool, argv } = lvresizeArgv(vg, tmp, target, false, cfg);
            await lvm(tool, argv);
          }
        } else {
          await lvm("lvcreate", lvcreateArgv({ ...cfg, vg, name: tmp, sizeBytes: target, tags }));
          const dest = `/dev/${vg}/${tmp}`;
          const src = from.path || `/dev/${vg}/${from.name}`;
          // -n: the LV exists; qemu-img writes every block of the source, zeros included.
          await lvm(
            "qemu-img",
            ["convert", "-n", "-f", "raw", "-O", "raw", "--", src, dest],
            longTimeout(sourceSize),
          );
          const made = byName(await scan(), tmp);
          const madeSize = made?.sizeBytes ?? target;
          if (madeSize > sourceSize) {
            // A new thick LV holds whatever its extents held before: the grown tail must read as zeros.
            await lvm(
              "blkdiscard",
              ["-f", "-z", "-o", String(sourceSize), "-l", String(madeSize - sourceSize), dest],
              longTimeout(madeSize - sourceSize),
            );
          }
        }
        await publish(id);
      } catch (e) {
        await bestEffortRemoveTemp(id);
        throw e;
      }
      return { artifact: await infoNow(id), adopted: false };
    });
  }

  async function flattenVolume(volumeId: string, fopts: { operationId: string }): Promise<VolumeArtifact> {
    assertVolumeId(volumeId);
    assertOperationId(fopts.operationId);
    // Nothing to do, by construction: thin clones share blocks but depend on nothing, thick clones are copies.
    return lock.run(volumeId, async () => artifactOf(volumeId, (await requireVolume(volumeId, true)).lv));
  }

  return {
    kind,
    poolName,
    check,
    capacity,
    createVolume,
    deleteVolume,
    resizeVolume,
    info,
    list,
    createSnapshot,
    listSnapshots,
    deleteSnapshot,
    revertSnapshot,
    cloneVolume,
    flattenVolume,
  };
}

function sleep(ms: number): Promise<void> {
  return new Promise((r) => setTimeout(r, ms));
}
