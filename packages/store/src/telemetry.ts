import type { Queryable } from "./db.js";
import type { PoolRow } from "./rows.js";

/*
 * What the controller's /metrics reads at scrape time (docs/operating.md lists the metrics). Each function is one
 * query; the caller decides what a failed read means (the gauge is left out of that scrape).
 */

/** Every host with its state and the seconds since its last heartbeat, by id. */
export async function hostHeartbeatAges(
  sql: Queryable,
): Promise<{ id: string; state: string; age: number }[]> {
  return sql<{ id: string; state: string; age: number }[]>`
    select id, state, extract(epoch from now() - last_heartbeat_at)::float8 as age from hosts order by id`;
}

/** The states of an operation that has not finished: in the outbox (pending), or published with no result (sent). */
export const UNFINISHED_OPERATION_STATES = ["pending", "sent"] as const;

export interface UnfinishedOperations {
  hostId: string;
  state: (typeof UNFINISHED_OPERATION_STATES)[number];
  /** How many operations of the host are in that state (0 included). */
  n: number;
  /** Seconds since the oldest of them was created; 0 when there is none. */
  oldest: number;
}

/** Unfinished operations of every host, by state, every host and state included. */
export async function operationsUnfinishedByHost(sql: Queryable): Promise<UnfinishedOperations[]> {
  return sql<UnfinishedOperations[]>`
    select h.id as host_id, s.state, count(o.id)::int as n,
      coalesce(extract(epoch from now() - min(o.created_at)), 0)::float8 as oldest
    from hosts h cross join unnest(${[...UNFINISHED_OPERATION_STATES]}::text[]) s(state)
    left join operations o on o.host_id = h.id and o.state = s.state
    group by h.id, s.state`;
}

/** The reconciler's findings of every host, counted by kind, every host and each of `kinds` included. */
export async function findingCountsByHost(
  sql: Queryable,
  kinds: readonly string[],
): Promise<{ hostId: string; kind: string; n: number }[]> {
  return sql<{ hostId: string; kind: string; n: number }[]>`
    select h.id as host_id, k.kind, count(f.subject)::int as n
    from hosts h cross join unnest(${[...kinds]}::text[]) k(kind)
    left join findings f on f.host_id = h.id and f.kind = k.kind
    group by h.id, k.kind`;
}

/** Rows of `table` counted by the value of `column`; values no row has are absent. */
async function countsBy(sql: Queryable, table: string, column: string): Promise<Map<string, number>> {
  const rows = await sql<{ value: string; n: number }[]>`
    select ${sql(column)} as value, count(*)::int as n from ${sql(table)} group by ${sql(column)}`;
  return new Map(rows.map((r) => [r.value, r.n]));
}

/** Volumes by state (deleted ones included, until they are purged). */
export function volumeCountsByState(sql: Queryable): Promise<Map<string, number>> {
  return countsBy(sql, "volumes", "state");
}

export function snapshotCountsByState(sql: Queryable): Promise<Map<string, number>> {
  return countsBy(sql, "snapshots", "state");
}

/** Migration plans by phase; none while the database has no table migration_plans (it comes with migrations). */
export async function migrationPlanCountsByPhase(sql: Queryable): Promise<Map<string, number>> {
  const [t] = await sql<{ exists: boolean }[]>`select to_regclass('migration_plans') is not null as exists`;
  if (!t?.exists) return new Map();
  return countsBy(sql, "migration_plans", "phase");
}

/** A present pool's capacity, use and ledger numbers, as the capacity gauges export them. */
export type PoolCapacity = Pick<
  PoolRow,
  | "id"
  | "hostId"
  | "kind"
  | "healthy"
  | "totalBytes"
  | "usedBytes"
  | "freeBytes"
  | "reportedProvisionedBytes"
  | "allocatedBytes"
  | "reservedBytes"
  | "dataPercent"
  | "metadataPercent"
  | "overcommitRatio"
  | "volumeCount"
  | "updatedAt"
>;

/** Every present pool's numbers, by id; `updatedAt` changes with every inventory applied (one sample a report). */
export async function poolCapacities(sql: Queryable): Promise<PoolCapacity[]> {
  return sql<PoolCapacity[]>`
    select id, host_id, kind, healthy, total_bytes, used_bytes, free_bytes, reported_provisioned_bytes,
      allocated_bytes, reserved_bytes, data_percent, metadata_percent, overcommit_ratio, volume_count, updated_at
    from pools where present order by id`;
}
