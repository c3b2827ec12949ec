import type { Queryable } from "./db.js";

export interface AuditEntry {
  actor: string;
  action: string;
  target?: string;
  request?: unknown;
  outcome: "ok" | "error";
  error?: string;
}

/** Every mutating call is written here, in the same transaction as the change it describes. */
export async function writeAudit(sql: Queryable, e: AuditEntry): Promise<void> {
  const request = auditRequest(e.request);
  await sql`insert into audit_log (actor, action, target, request, outcome, error)
    values (${e.actor}, ${e.action}, ${e.target ?? ""}, ${sql.json(request as never)}, ${e.outcome}, ${e.error ?? ""})`;
}

/** The request as the audit row keeps it: JSON, with bigints as strings. */
export function auditRequest(request: unknown): Record<string, unknown> {
  return JSON.parse(JSON.stringify(request ?? {}, (_k, v) => (typeof v === "bigint" ? v.toString() : v)));
}

export async function recentAudit(sql: Queryable, limit = 100) {
  return sql<
    { id: bigint; at: Date; actor: string; action: string; target: string; outcome: string; error: string }[]
  >`
    select id, at, actor, action, target, outcome, error from audit_log order by id desc limit ${limit}`;
}
