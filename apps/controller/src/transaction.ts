import { type AuditEntry, type Tx, writeAudit } from "@stowage/store";
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

/** A mutating transaction that changes one row and audits it (the row's id is the target) in the same transaction. */
export async function mutateAudited<T extends { id: string }>(
  ctx: ControllerContext,
  audit: Pick<AuditEntry, "actor" | "action" | "request">,
  change: (tx: Tx) => Promise<T>,
): Promise<T> {
  return mutate(ctx, async (tx) => {
    const row = await change(tx);
    await writeAudit(tx, { ...audit, target: row.id, outcome: "ok" });
    return row;
  });
}
