import { setTimeout as delay } from "node:timers/promises";
import { Code, ConnectError } from "@connectrpc/connect";
import { type Volume, VolumeState, VolumeStateSchema } from "@stowage/proto";
import type { Context } from "./context.js";
import { CliError } from "./errors.js";
import { enumName, formatDuration } from "./output.js";

export interface WaitRequest {
  /** The volume as the create/delete call returned it. */
  volume: Volume;
  /** The state that means success. */
  want: VolumeState.AVAILABLE | VolumeState.DELETED;
  /** The verb of the progress line: "creating", "deleting". */
  verb: string;
  timeoutMs: number;
}

const FINAL: Record<WaitRequest["want"], readonly VolumeState[]> = {
  [VolumeState.AVAILABLE]: [VolumeState.AVAILABLE, VolumeState.ERROR, VolumeState.DELETED],
  [VolumeState.DELETED]: [VolumeState.DELETED, VolumeState.ERROR],
};

const stateName = (s: VolumeState) => enumName(VolumeStateSchema, s);

class WaitTimedOut extends Error {}

/** Waits `ms`; an abort rejects with the signal's own reason (a timeout says where the volume got to). */
function sleep(ms: number, signal: AbortSignal): Promise<void> {
  return delay(ms, undefined, { signal }).catch(() => {
    throw signal.reason;
  });
}

/**
 * Waits until a volume reaches a final state, watching the WatchVolumes stream and falling back to polling
 * GetVolume when the stream fails or ends early. Prints one progress line to stderr:
 * `creating vm1-disk0 on node1/default … available (1.2s)`. Returns the final volume when it reached `want`;
 * throws a CliError when it ended in another final state (exit 1) or the wait timed out (exit 8).
 */
export async function waitForVolume(ctx: Context, req: WaitRequest): Promise<Volume> {
  const started = performance.now();
  const final = FINAL[req.want];
  const label = req.volume.name || req.volume.id;
  const where = req.volume.poolId ? ` on ${req.volume.poolId}` : "";
  ctx.note(`${req.verb} ${label}${where} … `);

  const deadline = new AbortController();
  const timer = setTimeout(() => deadline.abort(new WaitTimedOut()), req.timeoutMs);
  const seen = { volume: req.volume };
  try {
    if (!final.includes(seen.volume.state)) await watch({ ctx, req, seen, final, signal: deadline.signal });
  } catch (err) {
    const last = seen.volume;
    if (deadline.signal.aborted) {
      ctx.note(`still ${stateName(last.state)} after ${formatDuration(req.timeoutMs)}\n`);
      throw new CliError(
        Code.DeadlineExceeded,
        `timed out after ${formatDuration(req.timeoutMs)} waiting for volume ${label} to become ${stateName(req.want)} (it is ${stateName(last.state)}): check it with \`stowctl volume get ${label}\`${last.operationId ? ` and \`stowctl operation get ${last.operationId}\`` : ""}, or wait longer with --wait-timeout`,
      );
    }
    ctx.note("failed\n");
    throw err;
  } finally {
    clearTimeout(timer);
  }

  const last = seen.volume;
  ctx.note(`${stateName(last.state)} (${formatDuration(performance.now() - started)})\n`);
  if (last.state !== req.want) {
    const why = last.error?.message
      ? `: ${last.error.code ? `${last.error.code}: ` : ""}${last.error.message}`
      : "";
    throw new CliError(
      Code.Unknown,
      `volume ${label} is ${stateName(last.state)}${why}; see \`stowctl volume get ${label}\`${last.operationId ? ` and \`stowctl operation get ${last.operationId}\`` : ""}`,
    );
  }
  return last;
}

/** One wait in progress: what it waits for, and the latest state seen (so a timeout can say where it got to). */
interface Waiting {
  ctx: Context;
  req: WaitRequest;
  seen: { volume: Volume };
  final: readonly VolumeState[];
  signal: AbortSignal;
}

async function watch(w: Waiting): Promise<void> {
  const { ctx, seen, final, signal } = w;
  const id = seen.volume.id;
  try {
    const stream = ctx.clients.volumes.watchVolumes({ volume: id }, { signal });
    for await (const event of stream) {
      const v = event.volume;
      if (!v || v.id !== id) continue;
      seen.volume = v;
      if (final.includes(v.state)) return;
    }
  } catch (err) {
    if (signal.aborted) throw err;
    // The stream failed (an older controller, a proxy that cuts streams): poll instead.
  }
  await poll(w);
}

async function poll(w: Waiting): Promise<void> {
  const { ctx, req, seen, final, signal } = w;
  const id = seen.volume.id;
  for (;;) {
    try {
      const res = await ctx.clients.volumes.getVolume({ volume: id }, ctx.call({ signal }));
      if (res.volume) seen.volume = res.volume;
    } catch (err) {
      if (signal.aborted) throw err;
      // A volume that is gone is deleted, when that is what we wait for.
      if (req.want === VolumeState.DELETED && err instanceof ConnectError && err.code === Code.NotFound) {
        seen.volume = { ...seen.volume, state: VolumeState.DELETED };
        return;
      }
      throw err;
    }
    if (final.includes(seen.volume.state)) return;
    await sleep(ctx.pollIntervalMs, signal);
  }
}
