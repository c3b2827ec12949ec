import type { Queryable } from "./db.js";
import type { PoolRow } from "./rows.js";
import type { InventoryVolume } from "./volumes.js";

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
> & {
  provisionedBytes: bigint;
  /** A shared pool's identity (netfs: nfs://server/path): every host reporting it reaches one pool. */
  share?: string;
};

export const poolId = (hostId: string, name: string) => `${hostId}/${name}`;

/** Where a host's report of one pool landed: its own pool, or a shared pool another host owns (`attached`). */
export interface ReportedPool {
  poolId: string;
  attached: boolean;
}

/** The pool of this kind and share, if any: the first host to report a share owns it. */
async function poolOfShare(
  sql: Queryable,
  kind: string,
  share: string,
): Promise<{ id: string; hostId: string; present: boolean } | undefined> {
  const [row] = await sql<{ id: string; hostId: string; present: boolean }[]>`
    select id, host_id, present from pools where kind = ${kind} and share = ${share}`;
  return row;
}

/** The capacity a host reports of a shared pool: the same storage seen from every host, so the same numbers. */
async function updateSharedCapacity(sql: Queryable, id: string, r: PoolReportRecord): Promise<void> {
  await sql`update pools set total_bytes = ${r.totalBytes}, used_bytes = ${r.usedBytes}, free_bytes = ${r.freeBytes},
      reported_provisioned_bytes = ${r.provisionedBytes}, data_percent = ${r.dataPercent},
      metadata_percent = ${r.metadataPercent}, updated_at = now()
    where id = ${id}`;
}

/**
 * Writes a host's own pool row from its report: `insert` only when nothing holds the id or the share (nothing
 * written otherwise), or `upsert` the row. An id that a shared pool handed over to another host still holds is
 * that host's row, never written here. Returns the ids written (none or one).
 */
async function writeOwnPool(
  sql: Queryable,
  id: string,
  hostId: string,
  r: PoolReportRecord,
  share: string,
  mode: "insert" | "upsert",
): Promise<{ id: string }[]> {
  const onConflict =
    mode === "insert"
      ? sql`on conflict do nothing`
      : sql`on conflict (id) do update set kind = excluded.kind, numa_node = excluded.numa_node,
        healthy = excluded.healthy, health_message = excluded.health_message, total_bytes = excluded.total_bytes,
        used_bytes = excluded.used_bytes, free_bytes = excluded.free_bytes,
        reported_provisioned_bytes = excluded.reported_provisioned_bytes, data_percent = excluded.data_percent,
        metadata_percent = excluded.metadata_percent, overcommit_ratio = excluded.overcommit_ratio,
        max_used_percent = excluded.max_used_percent, reserved_percent = excluded.reserved_percent,
        max_volumes = excluded.max_volumes, labels = excluded.labels, formats = excluded.formats,
        shared = excluded.shared, share = excluded.share, present = true, updated_at = now()
      where pools.host_id = ${hostId}`;
  return sql<{ id: string }[]>`
    insert into pools (id, host_id, name, kind, numa_node, healthy, health_message, total_bytes, used_bytes, free_bytes,
      reported_provisioned_bytes, data_percent, metadata_percent, overcommit_ratio, max_used_percent, reserved_percent,
      max_volumes, labels, formats, shared, share, present)
    values (${id}, ${hostId}, ${r.name}, ${r.kind}, ${r.numaNode}, ${r.healthy}, ${r.healthMessage},
      ${r.totalBytes}, ${r.usedBytes}, ${r.freeBytes}, ${r.provisionedBytes}, ${r.dataPercent}, ${r.metadataPercent},
      ${r.overcommitRatio}, ${r.maxUsedPercent}, ${r.reservedPercent}, ${r.maxVolumes}, ${sql.json(r.labels)},
      ${sql.json(r.formats)}, ${r.shared || share !== ""}, ${share}, true)
    ${onConflict}
    returning id`;
}

/** Records (or refreshes) a host's attachment to a shared pool it does not own, under its own name for it. */
async function attach(sql: Queryable, id: string, hostId: string, r: PoolReportRecord): Promise<void> {
  // A host's name is one pool's: an older attachment under this name (a share the host no longer reports) goes.
  await sql`delete from pool_attachments where host_id = ${hostId} and name = ${r.name} and pool_id <> ${id}`;
  await sql`
    insert into pool_attachments (pool_id, host_id, name, present, healthy, health_message)
    values (${id}, ${hostId}, ${r.name}, true, ${r.healthy}, ${r.healthMessage})
    on conflict (pool_id, host_id) do update set name = excluded.name, present = true, healthy = excluded.healthy,
      health_message = excluded.health_message, updated_at = now()`;
  // A pool row of the host's own under this name (it reported the name before without the share) is not this one.
  await sql`update pools set present = false, healthy = false, health_message = 'now attached to shared pool ' || ${id},
      updated_at = now()
    where id = ${poolId(hostId, r.name)} and id <> ${id} and present`;
  await updateSharedCapacity(sql, id, r);
}

/**
 * Hands a shared pool to another host: `to` owns the row (under its own name for the pool, with its health) and
 * the former owner is kept as a detached attachment. The pool keeps its id (volumes and the ledger refer to it).
 * Refused (false) when `to` has a pool row of its own under that name.
 */
async function handOver(
  sql: Queryable,
  id: string,
  to: { hostId: string; name: string; healthy: boolean; healthMessage: string },
): Promise<boolean> {
  const [old] = await sql<{ hostId: string; name: string }[]>`
    select host_id, name from pools where id = ${id} for update`;
  if (!old || old.hostId === to.hostId) return false;
  const [clash] =
    await sql`select 1 from pools where host_id = ${to.hostId} and name = ${to.name} and id <> ${id}`;
  if (clash) return false;
  await sql`delete from pool_attachments where pool_id = ${id} and host_id = ${to.hostId}`;
  await sql`update pools set host_id = ${to.hostId}, name = ${to.name}, healthy = ${to.healthy},
      health_message = ${to.healthMessage}, present = true, updated_at = now()
    where id = ${id}`;
  await sql`delete from pool_attachments where host_id = ${old.hostId} and name = ${old.name} and pool_id <> ${id}`;
  await sql`
    insert into pool_attachments (pool_id, host_id, name, present, healthy, health_message)
    values (${id}, ${old.hostId}, ${old.name}, false, false, 'not reported by the agent')
    on conflict (pool_id, host_id) do update set name = excluded.name, present = false, healthy = false,
      health_message = excluded.health_message, updated_at = now()`;
  return true;
}

/**
 * The shared pools this host owns and no longer reports (`keep`: the ids it does) move to a host still attached
 * to them (present, the healthy ones first, then by host id), so that a share outlives the host that reported
 * it first. Those with nobody left attached stay the host's, to be marked absent. Returns the ids handed over.
 */
async function handOverAbandoned(sql: Queryable, hostId: string, keep: readonly string[]): Promise<string[]> {
  const candidates = await sql<
    { poolId: string; hostId: string; name: string; healthy: boolean; healthMessage: string }[]
  >`
    select p.id as pool_id, a.host_id, a.name, a.healthy, a.health_message
    from pools p join pool_attachments a on a.pool_id = p.id and a.present
    where p.host_id = ${hostId} and p.share <> '' and not (p.id = any(${[...keep]}))
    order by p.id, a.healthy desc, a.host_id`;
  const moved: string[] = [];
  for (const c of candidates) {
    if (moved.includes(c.poolId)) continue;
    if (await handOver(sql, c.poolId, c)) moved.push(c.poolId);
  }
  return moved;
}

/**
 * Applies what an agent reports of its pools (a registration or a full inventory: every pool it has). A pool
 * with a share another host already owns is not a pool of this host: the host is recorded as attached to it,
 * and its report updates that pool's capacity (the same storage, the same numbers), never a ledger column.
 * Otherwise the host's own row `<host>/<name>` is written, as always. The ledger columns (allocated, reserved,
 * volume_count) are never touched here. Pools the agent no longer reports are kept (volumes may live in them)
 * but marked absent, and attachments it no longer reports detached; a shared pool whose owner stops reporting
 * it moves to a host still attached (`handOverAbandoned`), and the host's settled volumes in the shared pools it
 * no longer reaches move to their owner (`rehomeVolumes`). Returns where each report landed, by name.
 */
export async function applyPoolReports(
  sql: Queryable,
  hostId: string,
  reports: PoolReportRecord[],
): Promise<Map<string, ReportedPool>> {
  const landed = new Map<string, ReportedPool>();
  for (const r of reports) {
    const share = r.share ?? "";
    const owner = share ? await poolOfShare(sql, r.kind, share) : undefined;
    if (owner && owner.hostId !== hostId) {
      // A share whose owner no longer reports it is taken over by the first host that still does.
      const took =
        !owner.present &&
        (await handOver(sql, owner.id, {
          hostId,
          name: r.name,
          healthy: r.healthy,
          healthMessage: r.healthMessage,
        }));
      if (!took) {
        await attach(sql, owner.id, hostId, r);
        landed.set(r.name, { poolId: owner.id, attached: true });
        continue;
      }
    }
    // The host's own pool: the share's row when the host owns it already (under the id it was made with).
    const id = owner ? owner.id : poolId(hostId, r.name);
    if (share && !owner) {
      // A new share: another host may be reporting it in a concurrent transaction. The insert waits for that one
      // and does nothing if it made the share's row; the host then attaches to it.
      if ((await writeOwnPool(sql, id, hostId, r, share, "insert")).length > 0) {
        landed.set(r.name, { poolId: id, attached: false });
        continue;
      }
      const made = await poolOfShare(sql, r.kind, share);
      if (made && made.hostId !== hostId) {
        await attach(sql, made.id, hostId, r);
        landed.set(r.name, { poolId: made.id, attached: true });
        continue;
      }
    }
    if ((await writeOwnPool(sql, id, hostId, r, share, "upsert")).length > 0)
      landed.set(r.name, { poolId: id, attached: false });
  }
  const own = [...landed.values()].filter((p) => !p.attached).map((p) => p.poolId);
  const attached = [...landed.values()].filter((p) => p.attached).map((p) => p.poolId);
  await handOverAbandoned(sql, hostId, own);
  await sql`update pools set present = false, healthy = false, health_message = 'not reported by the agent', updated_at = now()
    where host_id = ${hostId} and present and not (id = any(${own}))`;
  await sql`update pool_attachments set present = false, healthy = false, health_message = 'not reported by the agent',
      updated_at = now()
    where host_id = ${hostId} and present and not (pool_id = any(${attached}))`;
  await rehomeVolumes(sql, hostId);
  return landed;
}

/**
 * The settled volumes (available, or in error) this host carries in shared pools it no longer reaches (detached,
 * or handed over) move to the pool's owner, which reaches the same files: their later operations run there.
 * Volumes with an operation in flight stay, so its result still comes from the host that runs it. Returns the
 * ids moved.
 */
async function rehomeVolumes(sql: Queryable, hostId: string): Promise<string[]> {
  const rows = await sql<{ id: string }[]>`
    update volumes v set host_id = p.host_id, updated_at = now()
    from pools p
    where v.pool_id = p.id and v.host_id = ${hostId} and v.state in ('available', 'error')
      and p.share <> '' and p.present and p.host_id <> ${hostId}
      and not exists (select 1 from pool_attachments a where a.pool_id = p.id and a.host_id = ${hostId} and a.present)
    returning v.id`;
  return rows.map((r) => r.id);
}

/**
 * Applies an inventory delta's pool reports (the pools an operation touched; nothing else is marked absent): the
 * host's own pool by name, or, for a report with a share, the shared pool of that share whether the host owns it
 * or is attached to it (capacity and the attachment's health). A pool the host has not reported in a full
 * inventory or registration yet is skipped. Returns where each report landed, by name.
 */
export async function applyPoolReportDeltas(
  sql: Queryable,
  hostId: string,
  reports: PoolReportRecord[],
): Promise<Map<string, ReportedPool>> {
  const landed = new Map<string, ReportedPool>();
  for (const r of reports) {
    const share = r.share ?? "";
    const owner = share ? await poolOfShare(sql, r.kind, share) : undefined;
    if (owner && owner.hostId !== hostId) {
      const rows =
        await sql`update pool_attachments set healthy = ${r.healthy}, health_message = ${r.healthMessage},
          updated_at = now()
        where pool_id = ${owner.id} and host_id = ${hostId} and present returning pool_id`;
      if (rows.length === 0) continue;
      await updateSharedCapacity(sql, owner.id, r);
      landed.set(r.name, { poolId: owner.id, attached: true });
      continue;
    }
    const id = owner ? owner.id : poolId(hostId, r.name);
    const rows = await sql`
      update pools set healthy = ${r.healthy}, health_message = ${r.healthMessage}, total_bytes = ${r.totalBytes},
        used_bytes = ${r.usedBytes}, free_bytes = ${r.freeBytes}, reported_provisioned_bytes = ${r.provisionedBytes},
        data_percent = ${r.dataPercent}, metadata_percent = ${r.metadataPercent}, present = true, updated_at = now()
      where id = ${id} and host_id = ${hostId} and share = ${share} returning id`;
    if (rows.length > 0) landed.set(r.name, { poolId: id, attached: false });
  }
  return landed;
}

/** One host that reaches a pool: its owner or an attached host, with its name for the pool. */
export interface PoolHost {
  hostId: string;
  /** The pool's name in that host's agent config (what its commands name). */
  name: string;
  owner: boolean;
  /** False for a host that no longer reports the pool (detached; for the owner: the pool is absent). */
  present: boolean;
}

/**
 * Which hosts reach a pool: its owner first, then the attached hosts by id, each with its name for the pool and
 * whether it still reports it (the libvirt `<disk>` of a host, an export's allowed hosts). Empty for no pool.
 */
export async function poolHosts(sql: Queryable, id: string): Promise<PoolHost[]> {
  return sql<PoolHost[]>`
    select host_id, name, true as owner, present from pools where id = ${id}
    union all
    select a.host_id, a.name, false as owner, a.present from pool_attachments a where a.pool_id = ${id}
    order by owner desc, host_id`;
}

/**
 * The pool's name on this host, which the host's commands must name: the owner's row name, or the attached
 * host's own name for the shared pool. Undefined when the host does not reach the pool.
 */
export async function poolNameOnHost(
  sql: Queryable,
  id: string,
  hostId: string,
): Promise<string | undefined> {
  const [row] = await sql<{ name: string }[]>`
    select name from pools where id = ${id} and host_id = ${hostId}
    union all
    select name from pool_attachments where pool_id = ${id} and host_id = ${hostId}`;
  return row?.name;
}

/** The hosts attached to each of these pools (present attachments only, by host id), by pool id. */
export async function attachedHostsOf(
  sql: Queryable,
  ids: readonly string[],
): Promise<Map<string, string[]>> {
  const out = new Map<string, string[]>();
  if (ids.length === 0) return out;
  const rows = await sql<{ poolId: string; hostId: string }[]>`
    select pool_id, host_id from pool_attachments where pool_id = any(${[...new Set(ids)]}) and present
    order by pool_id, host_id`;
  for (const r of rows) out.set(r.poolId, [...(out.get(r.poolId) ?? []), r.hostId]);
  return out;
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
      and (${f.hostId ?? ""} = '' or host_id = ${f.hostId ?? ""}
        or id in (select pool_id from pool_attachments where host_id = ${f.hostId ?? ""} and present))
      and (${f.kind ?? ""} = '' or kind = ${f.kind ?? ""})
      and id > ${f.after ?? ""}
    order by id limit ${f.limit}`;
}

/** A host attached to a shared pool, as placement reads it: its name for the pool, its state and health. */
export interface AttachedHostRow {
  hostId: string;
  name: string;
  up: boolean;
  schedulable: boolean;
  healthy: boolean;
}

/** A pool with its host's state and its operations in flight, as the scheduler's view reads it. */
export interface SchedulingRow {
  pool: PoolRow;
  hostState: string;
  hostSchedulable: boolean;
  zone: string;
  load: number;
  /** A shared pool's present attachments, by host id (empty for every other pool). */
  attached: AttachedHostRow[];
}

/**
 * Pools with their host's state and their operations in flight, for the scheduler's in-memory view: every
 * present pool in id order, or (a live view's re-read) only the pools named or on the hosts named (owned, or
 * shared and attached), present or not, so that a pool gone absent is seen to go. A shared pool carries its
 * present attachments with their hosts' state (read only for pools with a share).
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
        ? sql`p.id in (select id from pools where host_id = any(${hostIds})
            union select pool_id from pool_attachments where host_id = any(${hostIds}))`
        : sql`p.id in (select id from pools where id = any(${poolIds})
            union select id from pools where host_id = any(${hostIds})
            union select pool_id from pool_attachments where host_id = any(${hostIds}))`;
  const load = only
    ? sql`(select count(*) from operations o where o.pool_id = p.id and o.state in ('pending', 'sent'))::int`
    : sql`coalesce(o.n, 0)::int`;
  const loads = only
    ? sql``
    : sql`left join (select pool_id, count(*) as n from operations where state in ('pending', 'sent')
        group by pool_id) o on o.pool_id = p.id`;
  const rows = await sql<
    (PoolRow & {
      hostState: string;
      hostSchedulable: boolean;
      hostZone: string;
      load: number;
      attachedHosts: AttachedHostRow[] | string | null;
    })[]
  >`
    select p.*, h.state as host_state, h.schedulable as host_schedulable, h.zone as host_zone, ${load} as load,
      case when p.share = '' then null else (
        select json_agg(json_build_object('hostId', a.host_id, 'name', a.name, 'up', ah.state = 'up',
          'schedulable', ah.schedulable, 'healthy', a.healthy) order by a.host_id)
        from pool_attachments a join hosts ah on ah.id = a.host_id
        where a.pool_id = p.id and a.present) end as attached_hosts
    from pools p join hosts h on h.id = p.host_id ${loads}
    where ${where} order by p.id`;
  return rows.map(({ hostState, hostSchedulable, hostZone, load, attachedHosts, ...pool }) => ({
    pool: pool as PoolRow,
    hostState,
    hostSchedulable,
    zone: hostZone,
    load,
    attached:
      attachedHosts === null
        ? []
        : typeof attachedHosts === "string"
          ? (JSON.parse(attachedHosts) as AttachedHostRow[])
          : attachedHosts,
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

/**
 * The volumes other hosts carved in the shared pools this host owns (not deleted, or deleted within the last
 * minute), and which of them are in flux: the owner's full inventory lists the whole share, so it judges these
 * too (an attached host's listing of the share is not judged: the owner's is).
 */
export async function sharedPoolVolumesOfOwner(
  sql: Queryable,
  hostId: string,
): Promise<{ volumes: InventoryVolume[]; inFlux: Set<string> }> {
  const rows = await sql<(InventoryVolume & { inFlux: boolean })[]>`
    select v.id, v.state, v.pool_id, v.deleted_at, coalesce(r.state in ('reserved', 'allocated'), false) as holds,
      (v.state in ('creating', 'deleting') or (v.state = 'deleted' and v.deleted_at > now() - interval '1 minute'))
        as in_flux
    from pools p join volumes v on v.pool_id = p.id left join reservations r on r.volume_id = v.id
    where p.host_id = ${hostId} and p.share <> '' and v.host_id <> ${hostId}
      and (v.state <> 'deleted' or v.deleted_at > now() - interval '1 minute')`;
  return {
    volumes: rows.filter((v) => v.state !== "deleted").map(({ inFlux: _, ...v }) => v),
    inFlux: new Set(rows.filter((v) => v.inFlux).map((v) => v.id)),
  };
}
