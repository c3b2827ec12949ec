import type { Queryable } from "./db.js";

export type FindingKind = "orphan" | "missing" | "foreign";

export interface Finding {
  hostId: string;
  kind: FindingKind;
  subject: string;
  poolId: string;
  detail: string;
}

/** Replaces a host's findings with the ones of its latest inventory (those no longer seen are dropped). */
export async function replaceFindings(sql: Queryable, hostId: string, findings: Finding[]): Promise<void> {
  const keys = findings.map((f) => `${f.kind}:${f.subject}`);
  await sql`delete from findings where host_id = ${hostId} and not ((kind || ':' || subject) = any(${keys}))`;
  for (const f of findings) {
    await sql`insert into findings (host_id, kind, subject, pool_id, detail) values (${hostId}, ${f.kind}, ${f.subject}, ${f.poolId}, ${f.detail})
      on conflict (host_id, kind, subject) do update set last_seen = now(), detail = excluded.detail`;
  }
}

export async function listFindings(
  sql: Queryable,
  hostId?: string,
): Promise<(Finding & { firstSeen: Date; lastSeen: Date })[]> {
  return sql<(Finding & { firstSeen: Date; lastSeen: Date })[]>`
    select * from findings where (${hostId ?? ""} = '' or host_id = ${hostId ?? ""}) order by host_id, kind, subject`;
}
