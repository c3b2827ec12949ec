import { capacityRefusal } from "./capacity.js";
import type { ClusterView, PlacementRequest, PoolCandidate } from "./types.js";

/** A filter refuses a pool with a reason, or accepts it with null. Cheap filters come first. */
export interface Filter {
  name: string;
  refuse(pool: PoolCandidate, req: PlacementRequest, view: ClusterView): string | null;
}

export const poolKindFilter: Filter = {
  name: "pool-kind",
  refuse(pool, req) {
    const kinds = req.constraints.poolKinds;
    if (kinds && kinds.length > 0 && !kinds.includes(pool.kind))
      return `kind ${pool.kind} is not one of ${kinds.join(", ")}`;
    if (!pool.formats.includes(req.format)) return `kind ${pool.kind} does not hold ${req.format} volumes`;
    return null;
  },
};

export const selectorFilter: Filter = {
  name: "selector",
  refuse(pool, req) {
    const c = req.constraints;
    if (c.poolId && pool.id !== c.poolId) return `not the requested pool ${c.poolId}`;
    if (c.hostId && pool.hostId !== c.hostId) return `not on the requested host ${c.hostId}`;
    if (c.zone && pool.zone !== c.zone) return `in zone ${pool.zone || "(none)"}, not ${c.zone}`;
    for (const [k, v] of Object.entries(c.poolLabels ?? {})) {
      if (pool.labels[k] !== v) return `label ${k}=${v} does not match`;
    }
    return null;
  },
};

export const hostUpFilter: Filter = {
  name: "host-up",
  refuse(pool) {
    if (!pool.hostUp) return `host ${pool.hostId} is down`;
    if (!pool.hostSchedulable) return `host ${pool.hostId} is cordoned`;
    return null;
  },
};

export const poolHealthFilter: Filter = {
  name: "pool-healthy",
  refuse(pool) {
    if (!pool.healthy) return "pool is unhealthy";
    if (pool.draining) return "pool is draining";
    return null;
  },
};

export const capacityFilter: Filter = {
  name: "capacity",
  refuse: (pool, req) => capacityRefusal(pool, req.sizeBytes),
};

export const numaFilter: Filter = {
  name: "numa",
  refuse(pool, req) {
    const numa = req.constraints.numa;
    if (!numa?.required || numa.node === undefined) return null;
    if (pool.hostId !== numa.hostId) return `not on the VM's host ${numa.hostId}`;
    if (pool.numaNode !== numa.node)
      return `on NUMA node ${pool.numaNode ?? "none"}, the VM requires node ${numa.node}`;
    return null;
  },
};

export const antiAffinityFilter: Filter = {
  name: "anti-affinity",
  refuse(pool, req, view) {
    const group = req.constraints.antiAffinityGroup;
    if (!group) return null;
    const members = view.groups.get(group) ?? [];
    if (req.constraints.antiAffinityScope === "zone") {
      if (members.some((m) => m.zone === pool.zone))
        return `group ${group} already has a volume in zone ${pool.zone || "(none)"}`;
    } else if (members.some((m) => m.hostId === pool.hostId)) {
      return `group ${group} already has a volume on host ${pool.hostId}`;
    }
    return null;
  },
};

export const DEFAULT_FILTERS: readonly Filter[] = [
  poolKindFilter,
  selectorFilter,
  hostUpFilter,
  poolHealthFilter,
  numaFilter,
  antiAffinityFilter,
  capacityFilter,
];
