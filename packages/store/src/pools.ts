import type { Queryable } from "./db.js";
import type { PoolRow } from "./rows.js";

/** What an agent reports of one pool: the pool row's reported fields (thin pools: `maxUsedPercent` is the physical floor). */
export type PoolReportRecord = Pick<
  PoolRow,
  | "name"
  | "kind"
  | "numaNode"
  | "healthy"
  | "healthMessage"
  | "totalBytes"
  | "usedBytes"
  | "freeBytes"
  | "dataPercent"
  | "metadataPercent"
  | "overcommitRatio"
  | "maxUsedPercent"
  | "reservedPercent"
  | "maxVolumes"
  | "labels"
  | "formats"
  | "shared"
> & { provisionedBytes: bigint };

export const poolId = (hostId: string, name: string) => `${hostId}/${name}`;

/**
 * Applies what an agent reports of its pools. The ledger columns (allocated, reserved, volume_count) are never
 * touched here; pools the agent no longer reports are kept (volumes may live in them) but marked absent.
 */
export async function applyPoolReports(
  sql: Queryable,
  hostId: string,
  reports: PoolReportRecord[],
): Promise<void> {
  for (const r of reports) {
    await sql`
      insert into pools (id, host_id, name, kind, numa_node, healthy, health_message, total_bytes, used_bytes, free_bytes,
        reported_provisioned_bytes, data_percent, metadata_percent, overcommit_ratio, max_used_percent, reserved_percent,
        max_volumes, labels, formats, shared, present)
      values (${poolId(hostId, r.name)}, ${hostId}, ${r.name}, ${r.kind}, ${r.numaNode}, ${r.healthy}, ${r.healthMessage},
        ${r.totalBytes}, ${r.usedBytes}, ${r.freeBytes}, ${r.provisionedBytes}, ${r.dataPercent}, ${r.metadataPercent},
        ${r.overcommitRatio}, ${r.maxUsedPercent}, ${r.reservedPercent}, ${r.maxVolumes}, ${sql.json(r.labels)},
        ${sql.json(r.formats)}, ${r.shared}, true)
      on conflict (id) do update set kind = excluded.kind, numa_node = excluded.numa_node, healthy = excluded.healthy,
        health_message = excluded.health_message, total_bytes = excluded.total_bytes, used_bytes = excluded.used_bytes,
        free_bytes = excluded.free_bytes, reported_provisioned_bytes = excluded.reported_provisioned_bytes,
        data_percent = excluded.data_percent, metadata_percent = excluded.metadata_percent,
        overcommit_ratio = excluded.overcommit_ratio, max_used_percent = excluded.max_used_percent,
        reserved_percent = excluded.reserved_percent, max_volumes = excluded.max_volumes,
        labels = excluded.labels, formats = excluded.formats,
        shared = excluded.shared, present = true, updated_at = now()`;
  }
  const names = reports.map((r) => r.name);
  await sql`update pools set present = false, healthy = false, health_message = 'not reported by the agent', updated_at = now()
    where host_id = ${hostId} and present and not (name = any(${names}))`;
}

export async function getPool(sql: Queryable, id: string): Promise<PoolRow | undefined> {
  const [row] = await sql<PoolRow[]>`select * from pools where id = ${id}`;
  return row;
}

export async function listPools(
  sql: Queryable,
  f: { hostId?: string; kind?: string; after?: string; limit: number },
): Promise<PoolRow[]> {
  return sql<PoolRow[]>`
    select * from pools
    where present
      and (${f.hostId ?? ""} = '' or host_id = ${f.hostId ?? ""})
      and (${f.kind ?? ""} = '' or kind = ${f.kind ?? ""})
      and id > ${f.after ?? ""}
    order by id limit ${f.limit}`;
}

/** A pool with its host's state and its operations in flight, as the scheduler's view reads it. */
export interface SchedulingRow {
  pool: PoolRow;
  hostState: string;
  hostSchedulable: boolean;
  zone: string;
  load: number;
}

/**
 * Pools with their host's state and their operations in flight, for the scheduler's in-memory view: every
 * present pool in id order, or (a live view's re-read) only the pools named or on the hosts named, present or
 * not, so that a pool gone absent is seen to go.
 */
export async function loadSchedulingView(
  sql: Queryable,
  only?: { poolIds?: readonly string[]; hostIds?: readonly string[] },
): Promise<SchedulingRow[]> {
  // Two conditions, not one `or`: each uses its index (the primary key, and (host_id, name)).
  const poolIds = [...(only?.poolIds ?? [])];
  const hostIds = [...(only?.hostIds ?? [])];
  const where = !only
    ? sql`p.present`
    : hostIds.length === 0
      ? sql`p.id = any(${poolIds})`
      : poolIds.length === 0
        ? sql`p.host_id = any(${hostIds})`
        : sql`p.id in (select id from pools where id = any(${poolIds})
            union select id from pools where host_id = any(${hostIds}))`;
  const load = only
    ? sql`(select count(*) from operations o where o.pool_id = p.id and o.state in ('pending', 'sent'))::int`
    : sql`coalesce(o.n, 0)::int`;
  const loads = only
    ? sql``
    : sql`left join (select pool_id, count(*) as n from operations where state in ('pending', 'sent')
        group by pool_id) o on o.pool_id = p.id`;
  const rows = await sql<
    (PoolRow & { hostState: string; hostSchedulable: boolean; hostZone: string; load: number })[]
  >`
    select p.*, h.state as host_state, h.schedulable as host_schedulable, h.zone as host_zone, ${load} as load
    from pools p join hosts h on h.id = p.host_id ${loads}
    where ${where} order by p.id`;
  return rows.map(({ hostState, hostSchedulable, hostZone, load, ...pool }) => ({
    pool: pool as PoolRow,
    hostState,
    hostSchedulable,
    zone: hostZone,
    load,
  }));
}

export async function setPoolDraining(
  sql: Queryable,
  id: string,
  draining: boolean,
): Promise<PoolRow | undefined> {
  const [row] = await sql<
    PoolRow[]
  >`update pools set draining = ${draining}, updated_at = now() where id = ${id} returning *`;
  return row;
}
