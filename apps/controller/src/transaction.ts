import type { Tx } from "@stowage/store";
import type { ControllerContext } from "./context.js";

/**
 * Runs one mutating transaction (the change, its outbox rows and its audit entry commit together or not at
 * all), then wakes the relay (the outbox may have a new row) and the watchers.
 */
export async function mutate<T>(ctx: ControllerContext, fn: (tx: Tx) => Promise<T>): Promise<T> {
  const out = (await ctx.sql.begin(fn)) as T;
  ctx.kickRelay();
  ctx.notifyChange();
  return out;
}
