import type { Queryable } from "./db.js";
import { loadSchedulingView } from "./pools.js";

/** Where the live volumes of an anti-affinity group are. */
export interface GroupMember {
  hostId: string;
  zone: string;
}

/** NUMA nodes of every host, by host id: the node ids with their CPU lists. */
export async function hostNumaNodes(sql: Queryable): Promise<Map<string, { id: number; cpuList: string }[]>> {
  const hosts = await sql<
    { id: string; numaNodes: { id: number; cpuList: string }[] }[]
  >`select id, numa_nodes from hosts`;
  return new Map(hosts.map((h) => [h.id, h.numaNodes.map((n) => ({ id: n.id, cpuList: n.cpuList }))]));
}

/** The hosts and zones of the volumes (not deleted) of every anti-affinity group, by group. */
export async function antiAffinityGroupMembers(sql: Queryable): Promise<Map<string, GroupMember[]>> {
  const rows = await sql<({ antiAffinityGroup: string } & GroupMember)[]>`
    select v.anti_affinity_group, v.host_id, h.zone from volumes v join hosts h on h.id = v.host_id
    where v.anti_affinity_group <> '' and v.state <> 'deleted'`;
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
