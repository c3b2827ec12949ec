import { type AuditEntry, type OperationRow, type Sql, type Tx, writeAudit } from "@stowage/store";
import { faultPoint } from "@stowage/telemetry";
import { callerOf } from "./audit.js";
import type { ControllerContext } from "./context.js";
import { commandDeadlineMs } from "./deadline.js";
import { collectOperations } from "./outbox.js";

/**
 * Runs one mutating transaction (the change, its outbox rows and its audit entry commit together or not at
 * all), then publishes the operations it wrote (`enqueueOperation`, and those `operations` names) at once
 * through the relay's fast path, and wakes the watchers.
 */
export async function mutate<T>(
  ctx: ControllerContext,
  fn: (tx: Tx) => Promise<T>,
  /** The operations it wrote, when the caller knows them: published at once instead of by a relay round. */
  operations?: (out: T) => readonly OperationRow[],
): Promise<T> {
  let written: OperationRow[] = [];
  const out = (await ctx.sql.begin(async (tx) => {
    written = collectOperations(tx, commandDeadlineMs(ctx.config.reservationTtlMs));
    const r = await fn(tx);
    for (const op of written) faultPoint("before-commit", op.kind);
    return r;
  })) as T;
  const ops = [...written, ...(operations?.(out) ?? [])];
  for (const op of ops) faultPoint("after-commit", op.kind);
  if (ops.length > 0) ctx.dispatch(ops);
  ctx.notifyChange();
  return out;
}

/**
 * A mutation that is one statement (atomic on its own, so no transaction round trips) and writes the given
 * operations to the outbox: they are published at once (the relay is the fallback), and the watchers woken.
 */
export async function mutateOneStatement<T>(
  ctx: ControllerContext,
  fn: (sql: Sql) => Promise<T>,
  operations: (out: T) => readonly OperationRow[],
): Promise<T> {
  const out = await fn(ctx.sql);
  const ops = operations(out);
  for (const op of ops) faultPoint("after-commit", op.kind);
  ctx.dispatch(ops);
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
    await writeAudit(tx, { ...audit, ...callerOf(audit.actor), target: row.id, outcome: "ok" });
    return row;
  });
}
