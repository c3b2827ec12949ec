import { failedPrecondition, type WipeMode } from "@stowage/core";
import { sleep } from "../async.js";
import { type LvmLogicalVolume, tagValue } from "../lvm.js";
import { ToolError } from "../runner.js";
import { LVM_TAG, type LvmPool, MiB } from "./layout.js";
import type { LvmTools } from "./tools.js";

const MAX_WIPE_CHUNK = 1024n * MiB;

/**
 * Destroys an LV's data with blkdiscard before it is removed. Thin: unmapping is the wipe (see layout.ts).
 * Thick: zero-fill (`-z`) or discard, as asked. A throttle splits it into chunks of one second each.
 */
export async function wipeLv(
  pool: LvmPool,
  tools: LvmTools,
  lv: LvmLogicalVolume,
  mode: Exclude<WipeMode, "none">,
  bytesPerSecond: number,
): Promise<void> {
  const { vg, where } = pool;
  if (lv.active === false) await tools.activate(lv.name);
  const device = lv.path || `/dev/${vg}/${lv.name}`;
  const zeroFlag = mode === "zero" && !pool.thinPool ? ["-z"] : [];
  const run = (extra: string[], bytes: bigint) =>
    tools
      .lvm("blkdiscard", ["-f", ...zeroFlag, ...extra, device], tools.longTimeout(bytes))
      .catch((e: unknown) => {
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
