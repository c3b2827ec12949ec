import type { FindingKind } from "@stowage/core";
import type { Queryable } from "./db.js";

export type { FindingKind };

/** One disagreement between a host's inventory and the database, as the reconciler judges it. */
export interface Finding {
  hostId: string;
  kind: FindingKind;
  subject: string;
  poolId: string;
  detail: string;
  /** Orphans: the artefact as the agent reported it (what adopting it registers). */
  artefact?: FoundArtefact;
}

export interface FoundArtefact {
  sizeBytes: bigint;
  /** "raw" or "qcow2"; "" when the agent did not say. */
  format: string;
  allocatedBytes: bigint;
  path: string;
  operationId: string;
}

export interface FindingRow {
  hostId: string;
  kind: FindingKind;
  subject: string;
  poolId: string;
  detail: string;
  sizeBytes: bigint;
  format: string;
  allocatedBytes: bigint;
  path: string;
  operationId: string;
  firstSeen: Date;
  lastSeen: Date;
  quarantinedAt: Date | null;
  quarantinedBy: string;
  quarantineReason: string;
  /** The order findings are listed and paged in. */
  seq: bigint;
}

/**
 * Replaces a host's findings with the ones of its latest inventory: those no longer seen are dropped, except
 * quarantined ones, which stay (with their last sighting) until an operator adopts them.
 */
export async function replaceFindings(sql: Queryable, hostId: string, findings: Finding[]): Promise<void> {
  const keys = findings.map((f) => `${f.kind}:${f.subject}`);
  await sql`delete from findings where host_id = ${hostId} and quarantined_at is null
    and not ((kind || ':' || subject) = any(${keys}))`;
  await upsertFindings(sql, hostId, findings);
}

/**
 * Records findings of a host, leaving its others as they are (an inventory delta's touched volumes, a late
 * result): a finding already recorded keeps its first sighting, sequence number and quarantine.
 */
export async function upsertFindings(sql: Queryable, hostId: string, findings: Finding[]): Promise<void> {
  for (const f of findings) {
    const a = f.artefact;
    await sql`insert into findings (host_id, kind, subject, pool_id, detail, size_bytes, format, allocated_bytes, path, operation_id)
      values (${hostId}, ${f.kind}, ${f.subject}, ${f.poolId}, ${f.detail}, ${a?.sizeBytes ?? 0n}, ${a?.format ?? ""},
        ${a?.allocatedBytes ?? 0n}, ${a?.path ?? ""}, ${a?.operationId ?? ""})
      on conflict (host_id, kind, subject) do update set last_seen = now(), detail = excluded.detail,
        pool_id = excluded.pool_id, size_bytes = excluded.size_bytes, format = excluded.format,
        allocated_bytes = excluded.allocated_bytes, path = excluded.path, operation_id = excluded.operation_id`;
  }
}

export interface FindingFilter {
  hostId?: string;
  poolId?: string;
  kind?: FindingKind;
  /** The `seq` of the last finding of the previous page, as text ("" for the first page). */
  after?: string;
  limit?: number;
}

/** Findings in the order they were first recorded, narrowed by host, pool and kind. */
export async function listFindings(sql: Queryable, f: FindingFilter = {}): Promise<FindingRow[]> {
  const after = f.after ? BigInt(f.after) : 0n;
  return sql<FindingRow[]>`
    select * from findings
    where (${f.hostId ?? ""} = '' or host_id = ${f.hostId ?? ""})
      and (${f.poolId ?? ""} = '' or pool_id = ${f.poolId ?? ""})
      and (${f.kind ?? ""} = '' or kind = ${f.kind ?? ""})
      and seq > ${after}
    order by seq limit ${f.limit ?? 1000}`;
}

/** The orphan findings about this volume id, of one host or of every host that reports it. */
export async function orphanFindings(
  sql: Queryable,
  volumeId: string,
  hostId = "",
  forUpdate = false,
): Promise<FindingRow[]> {
  return forUpdate
    ? sql<FindingRow[]>`select * from findings where kind = 'orphan' and subject = ${volumeId}
        and (${hostId} = '' or host_id = ${hostId}) order by host_id for update`
    : sql<FindingRow[]>`select * from findings where kind = 'orphan' and subject = ${volumeId}
        and (${hostId} = '' or host_id = ${hostId}) order by host_id`;
}

/**
 * Quarantines an orphan: kept across inventories, never deleted. Idempotent: a finding already quarantined keeps
 * who quarantined it, when and why. Undefined when the host reports no such orphan.
 */
export async function quarantineFinding(
  sql: Queryable,
  q: { hostId: string; volumeId: string; by: string; reason: string },
): Promise<FindingRow | undefined> {
  const [row] = await sql<FindingRow[]>`
    update findings set
      quarantined_by = case when quarantined_at is null then ${q.by} else quarantined_by end,
      quarantine_reason = case when quarantined_at is null then ${q.reason} else quarantine_reason end,
      quarantined_at = coalesce(quarantined_at, now())
    where host_id = ${q.hostId} and kind = 'orphan' and subject = ${q.volumeId}
    returning *`;
  return row;
}

/** Forgets the orphan finding about a volume id on a host (it was adopted: the volume now exists). */
export async function dropOrphanFinding(sql: Queryable, hostId: string, volumeId: string): Promise<void> {
  await sql`delete from findings where host_id = ${hostId} and kind = 'orphan' and subject = ${volumeId}`;
}
