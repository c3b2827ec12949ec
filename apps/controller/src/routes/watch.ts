import type { HandlerContext } from "@connectrpc/connect";
import { type Changes, currentSnapshot, type Queryable } from "@stowage/store";
import type { ControllerContext } from "../context.js";
import { toConnectError } from "../errors.js";

/**
 * Streams rows as they change, read from the database so any controller replica sees every change
 * (docs/architecture.md, "Watches"). `start` yields what the watcher sees first, read in one snapshot with the
 * watch's starting point; each later read asks for the rows written by transactions the previous read's
 * snapshot did not see, so a change is delivered once, when it commits, however long its transaction ran. It
 * keeps nothing per row. A watch the caller cancelled ends quietly.
 */
export async function* watchChanges<R, O>(
  ctx: ControllerContext,
  hc: HandlerContext,
  w: {
    start: (sql: Queryable) => Promise<R[]>;
    changedAfter: (snapshot: string) => Promise<Changes<R>>;
    toMessage: (row: R, first: boolean) => O;
  },
): AsyncGenerator<O> {
  try {
    const { initial, snapshot } = await ctx.sql.begin(
      "isolation level repeatable read read only",
      async (tx) => {
        const snapshot = await currentSnapshot(tx);
        return { initial: await w.start(tx), snapshot };
      },
    );
    yield* poll(ctx, hc.signal, initial as R[], snapshot, w.changedAfter, w.toMessage);
  } catch (err) {
    if (hc.signal.aborted) return;
    throw toConnectError(err, ctx.log);
  }
}

async function* poll<R, O>(
  ctx: ControllerContext,
  signal: AbortSignal,
  initial: R[],
  from: string,
  changedAfter: (snapshot: string) => Promise<Changes<R>>,
  toMessage: (row: R, first: boolean) => O,
): AsyncGenerator<O> {
  for (const r of initial) yield toMessage(r, true);
  let snapshot = from;
  while (!signal.aborted) {
    await ctx.waitForChange(500, signal);
    if (signal.aborted) break;
    const read = await changedAfter(snapshot);
    snapshot = read.snapshot;
    for (const r of read.rows) yield toMessage(r, false);
  }
}
