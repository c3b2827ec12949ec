import type { HandlerContext } from "@connectrpc/connect";
import type { ControllerContext } from "../context.js";
import { toConnectError } from "../errors.js";

/**
 * Streams rows changed since the watch began, polling the database so any controller replica sees every
 * change. `start` yields what the watcher sees first; a watch the caller cancelled ends quietly.
 */
export async function* watchChanges<R extends { id: string; updatedAt: Date }, O>(
  ctx: ControllerContext,
  hc: HandlerContext,
  w: {
    start: () => Promise<R[]>;
    changedSince: (since: Date) => Promise<R[]>;
    toMessage: (row: R, first: boolean) => O;
  },
): AsyncGenerator<O> {
  try {
    yield* poll(ctx, hc.signal, await w.start(), w.changedSince, w.toMessage);
  } catch (err) {
    if (hc.signal.aborted) return;
    throw toConnectError(err, ctx.log);
  }
}

async function* poll<R extends { id: string; updatedAt: Date }, O>(
  ctx: ControllerContext,
  signal: AbortSignal,
  initial: R[],
  changedSince: (since: Date) => Promise<R[]>,
  toMessage: (row: R, first: boolean) => O,
): AsyncGenerator<O> {
  const seen = new Map<string, number>();
  let since = new Date(Date.now() - 1000);
  for (const r of initial) {
    seen.set(r.id, r.updatedAt.getTime());
    yield toMessage(r, true);
  }
  while (!signal.aborted) {
    await ctx.waitForChange(500, signal);
    if (signal.aborted) break;
    const rows = await changedSince(new Date(since.getTime() - 2000));
    for (const r of rows) {
      const t = r.updatedAt.getTime();
      if ((seen.get(r.id) ?? -1) >= t) continue;
      seen.set(r.id, t);
      if (t > since.getTime()) since = r.updatedAt;
      yield toMessage(r, false);
    }
  }
}
