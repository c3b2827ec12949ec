import type { Queryable } from "./db.js";
import type { HostRow } from "./rows.js";

/** What a registering agent says of its host: the host row's own fields. */
export type HostRegistration = Pick<
  HostRow,
  | "id"
  | "zone"
  | "labels"
  | "numaNodes"
  | "cpuCount"
  | "memoryBytes"
  | "agentVersion"
  | "initiatorName"
  | "metricsAddress"
> &
  Partial<Pick<HostRow, "addresses">>;

/**
 * Registers a host or refreshes what it says of itself; a registering host is up. Its addresses are written only
 * when given (migration 0014 added them: the migration tests register hosts on the schema before it).
 */
export async function upsertHost(sql: Queryable, h: HostRegistration): Promise<HostRow> {
  const addresses = h.addresses;
  const [row] = await sql<HostRow[]>`
    insert into hosts (id, zone, labels, numa_nodes, cpu_count, memory_bytes, agent_version, initiator_name,
      ${addresses ? sql`addresses,` : sql``} metrics_address, state, last_heartbeat_at)
    values (${h.id}, ${h.zone}, ${sql.json(h.labels)}, ${sql.json(h.numaNodes as never)}, ${h.cpuCount}, ${h.memoryBytes},
            ${h.agentVersion}, ${h.initiatorName}, ${addresses ? sql`${sql.json(addresses)},` : sql``} ${h.metricsAddress}, 'up', now())
    on conflict (id) do update set zone = excluded.zone, labels = excluded.labels, numa_nodes = excluded.numa_nodes,
      cpu_count = excluded.cpu_count, memory_bytes = excluded.memory_bytes, agent_version = excluded.agent_version,
      initiator_name = excluded.initiator_name, ${addresses ? sql`addresses = excluded.addresses,` : sql``}
      metrics_address = excluded.metrics_address, state = 'up',
      last_heartbeat_at = now(), updated_at = now()
    returning *`;
  return row!;
}

/** Records a heartbeat; returns whether the host was down before (it came back). */
export async function recordHeartbeat(
  sql: Queryable,
  hostId: string,
  bootId: string,
): Promise<{ known: boolean; cameBack: boolean }> {
  const rows = await sql<{ wasDown: boolean }[]>`
    update hosts h set last_heartbeat_at = now(), state = 'up', boot_id = ${bootId},
      updated_at = case when h.state = 'down' then now() else h.updated_at end
    from (select id, state = 'down' as was_down from hosts where id = ${hostId} for update) old
    where h.id = old.id
    returning old.was_down`;
  return { known: rows.length > 0, cameBack: rows[0]?.wasDown ?? false };
}

/** Marks hosts down whose last heartbeat is older than the grace period; returns their ids. */
export async function markStaleHostsDown(sql: Queryable, graceMs: number): Promise<string[]> {
  const rows = await sql<{ id: string }[]>`
    update hosts set state = 'down', updated_at = now()
    where state = 'up' and last_heartbeat_at < now() - make_interval(secs => ${graceMs / 1000})
    returning id`;
  return rows.map((r) => r.id);
}

export async function getHost(sql: Queryable, id: string): Promise<HostRow | undefined> {
  const [row] = await sql<HostRow[]>`select * from hosts where id = ${id}`;
  return row;
}

export async function listHosts(
  sql: Queryable,
  f: { state?: string; zone?: string; after?: string; limit: number },
): Promise<HostRow[]> {
  return sql<HostRow[]>`
    select * from hosts
    where (${f.state ?? ""} = '' or state = ${f.state ?? ""})
      and (${f.zone ?? ""} = '' or zone = ${f.zone ?? ""})
      and id > ${f.after ?? ""}
    order by id limit ${f.limit}`;
}

export async function setHostSchedulable(
  sql: Queryable,
  id: string,
  schedulable: boolean,
  reason: string,
): Promise<HostRow | undefined> {
  const [row] = await sql<HostRow[]>`
    update hosts set schedulable = ${schedulable}, cordon_reason = ${schedulable ? "" : reason}, updated_at = now()
    where id = ${id} returning *`;
  return row;
}

/**
 * The present pools and live volumes of each of these hosts (a page of ListHosts, or one host); a host's pools
 * include the shared pools it is attached to.
 */
export async function countsByHost(
  sql: Queryable,
  ids: readonly string[],
): Promise<Map<string, { pools: number; volumes: number }>> {
  if (ids.length === 0) return new Map();
  const rows = await sql<{ hostId: string; pools: number; volumes: number }[]>`
    select h.id as host_id,
      (select count(*)::int from pools p where p.host_id = h.id and p.present)
        + (select count(*)::int from pool_attachments a where a.host_id = h.id and a.present) as pools,
      (select count(*)::int from volumes v where v.host_id = h.id and v.state <> 'deleted') as volumes
    from hosts h where h.id = any(${[...new Set(ids)]})`;
  return new Map(rows.map((r) => [r.hostId, { pools: r.pools, volumes: r.volumes }]));
}

/** The zone of each of these hosts (host id to zone), for a page of pools. */
export async function zonesOfHosts(sql: Queryable, ids: readonly string[]): Promise<Map<string, string>> {
  if (ids.length === 0) return new Map();
  const rows = await sql<{ id: string; zone: string }[]>`
    select id, zone from hosts where id = any(${[...new Set(ids)]})`;
  return new Map(rows.map((r) => [r.id, r.zone]));
}
