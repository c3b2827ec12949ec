import type { Queryable } from "./db.js";
import { loadSchedulingView } from "./pools.js";

/** Where the live volumes of an anti-affinity group are. */
export interface GroupMember {
  hostId: string;
  zone: string;
}

/** NUMA nodes of every host (or of the hosts named), by host id: the node ids with their CPU lists. */
export async function hostNumaNodes(
  sql: Queryable,
  hostIds?: readonly string[],
): Promise<Map<string, { id: number; cpuList: string }[]>> {
  const hosts = await sql<{ id: string; numaNodes: { id: number; cpuList: string }[] }[]>`
    select id, numa_nodes from hosts ${hostIds ? sql`where id = any(${[...hostIds]})` : sql``}`;
  return new Map(hosts.map((h) => [h.id, h.numaNodes.map((n) => ({ id: n.id, cpuList: n.cpuList }))]));
}

/** The hosts and zones of the volumes (not deleted) of every anti-affinity group (or of the one named), by group. */
export async function antiAffinityGroupMembers(
  sql: Queryable,
  group?: string,
): Promise<Map<string, GroupMember[]>> {
  const rows = await sql<({ antiAffinityGroup: string } & GroupMember)[]>`
    select v.anti_affinity_group, v.host_id, h.zone from volumes v join hosts h on h.id = v.host_id
    where v.anti_affinity_group <> '' and v.state <> 'deleted'
      ${group === undefined ? sql`` : sql`and v.anti_affinity_group = ${group}`}`;
  const groups = new Map<string, GroupMember[]>();
  for (const g of rows) {
    const list = groups.get(g.antiAffinityGroup) ?? [];
    list.push({ hostId: g.hostId, zone: g.zone });
    groups.set(g.antiAffinityGroup, list);
  }
  return groups;
}

/**
 * What the scheduler's in-memory view is built from: the present pools with their hosts' state and load, the
 * hosts' NUMA nodes and the anti-affinity groups' members.
 */
export async function loadClusterViewRows(sql: Queryable) {
  return {
    pools: await loadSchedulingView(sql),
    numa: await hostNumaNodes(sql),
    groups: await antiAffinityGroupMembers(sql),
  };
}

/** A pool or host whose placement-relevant columns changed (migration 0005's trigger), with its sequence number. */
export interface PlacementChange {
  kind: "pool" | "host";
  id: string;
  seq: bigint;
}

/** The channel migration 0005's trigger notifies, with `pool:<id>` or `host:<id>`. */
export const PLACEMENT_CHANNEL = "stowage_placement";

/** The changes after `seq`, oldest first (at most `limit`: a caller with more to read polls again). */
export async function placementChangesSince(
  sql: Queryable,
  seq: bigint,
  limit = 10_000,
): Promise<PlacementChange[]> {
  return sql<PlacementChange[]>`
    select kind, id, seq from placement_changes where seq > ${seq} order by seq limit ${limit}`;
}

/** The sequence number of the latest change (0 when none): where a full load starts following the feed. */
export async function lastPlacementChange(sql: Queryable): Promise<bigint> {
  const [row] = await sql<
    { seq: bigint }[]
  >`select coalesce(max(seq), 0)::int8 as seq from placement_changes`;
  return row!.seq;
}
