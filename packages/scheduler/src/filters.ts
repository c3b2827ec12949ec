import { formatSize } from "@stowage/core";
import { quotedLimit, room } from "./capacity.js";
import { ATTACHED, type Columns, DRAINING, HEALTHY, HOST_UP, OVER_FLOOR, SCHEDULABLE } from "./columns.js";
import { type CompiledRequest, NONE, UNKNOWN } from "./request.js";

/**
 * The filters (Nomad's feasibility checkers, LINSTOR's StorPoolFilter), in the order they run: the first one
 * that refuses a pool is the one its explanation and the refusal counts name. One entry is one filter: the
 * select loop (select.ts), the explanations (explain.ts) and the refusal counts all read this table.
 *
 * `refuses` runs for every pool of every decision, inlined into the select loop: it reads columns and numbers
 * only (no strings, no allocation). `reason` runs only for explanations.
 */
export interface Filter {
  /** The check's own code, unique in the table. */
  code: string;
  /** The filter's name in explanations and metrics; related checks share one. */
  name: string;
  /** What it checks, in a few words. */
  checks: string;
  refuses(c: Columns, r: CompiledRequest, i: number): boolean;
  reason(c: Columns, r: CompiledRequest, i: number): string;
  /**
   * When the request pins itself to a few pools (a named pool or host), those pools: every other one is
   * refused by this filter, so the fast path judges only these. Undefined when the request does not pin.
   */
  admits?(c: Columns, r: CompiledRequest): readonly number[] | undefined;
}

/**
 * Pool i's state bits through the host a placement would use: its own for a pool of one host (an array read and
 * a bit test, inlined into the select loop), `Columns.reachState` only for a shared pool with attached hosts.
 */
const reach = (c: Columns, r: CompiledRequest, i: number): number => {
  const s = c.state[i]!;
  return (s & ATTACHED) === 0 ? s : c.reachState(i, r.host);
};

const poolsOfHost = (c: Columns, host: number): readonly number[] | undefined =>
  host === NONE ? undefined : host === UNKNOWN ? [] : c.poolsOfHost[host]!;

export const FILTER_TABLE: readonly Filter[] = [
  {
    code: "format",
    name: "pool-kind",
    checks: "the pool's kind holds the volume's format",
    refuses: (c, r, i) => (c.formatMask[i]! & r.formatBit) === 0,
    reason: (c, r, i) => `kind ${c.pools[i]!.kind} does not hold ${r.req.format} volumes`,
  },
  {
    code: "kind",
    name: "pool-kind",
    checks: "the pool's kind is allowed",
    refuses: (c, r, i) => r.kindMask !== 0 && (r.kindMask & c.kindBit[i]!) === 0,
    reason: (c, r, i) =>
      `kind ${c.pools[i]!.kind} is not one of ${(r.req.constraints.poolKinds ?? []).join(", ")}`,
  },
  {
    code: "pool",
    name: "selector",
    checks: "the requested pool",
    refuses: (_c, r, i) => r.pool !== NONE && i !== r.pool,
    reason: (_c, r) => `not the requested pool ${r.req.constraints.poolId}`,
    admits: (_c, r) => (r.pool === NONE ? undefined : r.pool === UNKNOWN ? [] : [r.pool]),
  },
  {
    code: "host",
    name: "selector",
    checks: "the requested host (a shared pool: its owner or a host attached to it)",
    refuses: (c, r, i) => r.host !== NONE && c.host[i] !== r.host && !c.attachedTo(i, r.host),
    reason: (_c, r) => `not on the requested host ${r.req.constraints.hostId}`,
    admits: (c, r) => poolsOfHost(c, r.host),
  },
  {
    code: "zone",
    name: "selector",
    checks: "the requested zone",
    refuses: (c, r, i) => r.zone !== NONE && c.zone[i] !== r.zone,
    reason: (c, r, i) => `in zone ${c.pools[i]!.zone || "(none)"}, not ${r.req.constraints.zone}`,
  },
  {
    code: "labels",
    name: "selector",
    checks: "the requested pool labels",
    refuses: (_c, r, i) => r.labelMask !== undefined && r.labelMask[i] === 0,
    reason: (c, r, i) => {
      const labels = c.pools[i]!.labels;
      const miss = r.labels.find(([k, v]) => labels[k] !== v)!;
      return `label ${miss[0]}=${miss[1]} does not match`;
    },
  },
  {
    code: "host-down",
    name: "host-up",
    checks: "the host heartbeats",
    refuses: (c, r, i) => (reach(c, r, i) & HOST_UP) === 0,
    reason: (c, r, i) => `host ${c.reachHostId(i, r.host)} is down`,
  },
  {
    code: "cordoned",
    name: "host-up",
    checks: "the host is not cordoned",
    refuses: (c, r, i) => (reach(c, r, i) & SCHEDULABLE) === 0,
    reason: (c, r, i) => `host ${c.reachHostId(i, r.host)} is cordoned`,
  },
  {
    code: "unhealthy",
    name: "pool-healthy",
    checks: "the pool passes its health check",
    refuses: (c, r, i) => (reach(c, r, i) & HEALTHY) === 0,
    reason: (c, r, i) =>
      (c.state[i]! & ATTACHED) === 0
        ? "pool is unhealthy"
        : `pool is unhealthy on host ${c.reachHostId(i, r.host)}`,
  },
  {
    code: "draining",
    name: "pool-healthy",
    checks: "the pool is not draining",
    refuses: (c, _r, i) => (c.state[i]! & DRAINING) !== 0,
    reason: () => "pool is draining",
  },
  {
    code: "numa-host",
    name: "numa",
    checks: "a required NUMA node: the VM's host",
    refuses: (c, r, i) => r.numaRequired && c.host[i] !== r.numaHost,
    reason: (_c, r) => `not on the VM's host ${r.req.constraints.numa?.hostId ?? ""}`,
    admits: (c, r) => (r.numaRequired ? (poolsOfHost(c, r.numaHost) ?? []) : undefined),
  },
  {
    code: "numa-node",
    name: "numa",
    checks: "a required NUMA node: the node",
    refuses: (c, r, i) => r.numaRequired && c.numaNode[i] !== r.numaNode,
    reason: (c, r, i) =>
      `on NUMA node ${c.numaNode[i]! < 0 ? "none" : c.numaNode[i]}, the VM requires node ${r.numaNode}`,
  },
  {
    code: "anti-affinity",
    name: "anti-affinity",
    checks: "volumes of one group on distinct hosts (or zones)",
    refuses: (_c, r, i) => r.antiMask !== undefined && r.antiMask[r.antiOf[i]!] === 1,
    reason: (c, r, i) =>
      r.zoneScope
        ? `group ${r.group} already has a volume in zone ${c.pools[i]!.zone || "(none)"}`
        : `group ${r.group} already has a volume on host ${c.pools[i]!.hostId}`,
  },
  {
    code: "max-volumes",
    name: "max-volumes",
    checks: "the pool's volume limit",
    refuses: (c, _r, i) => c.maxVolumes[i]! > 0 && c.count[i]! >= c.maxVolumes[i]!,
    reason: (c, _r, i) => `pool holds ${c.count[i]} volumes, its limit is ${c.maxVolumes[i]}`,
  },
  {
    code: "physical-floor",
    name: "capacity",
    checks: "thin: physical use under the pool's floor",
    refuses: (c, _r, i) => (c.state[i]! & OVER_FLOOR) !== 0,
    reason: (c, _r, i) => {
      const p = c.pools[i]!;
      const pct = Math.round((Number(p.usedBytes) / Number(p.totalBytes)) * 1000) / 10;
      return `physical use ${pct}% is over the pool's ${p.maxUsedPercent}% floor`;
    },
  },
  {
    code: "capacity",
    name: "capacity",
    checks:
      "thick: free physical bytes; thin: provisioned + reserved + request <= size x ratio; both net of the reserved percentage (capacity.ts)",
    refuses: (c, r, i) => room(c.headroom[i]!, c.reserved[i]!) < r.size,
    reason: (c, r, i) => {
      const p = c.pools[i]!;
      const left = Math.max(0, Math.floor(room(c.headroom[i]!, c.reserved[i]!)));
      const limit = Math.max(0, Math.floor(quotedLimit(p)));
      return `needs ${formatSize(r.req.sizeBytes)}, ${formatSize(BigInt(left))} left (${formatSize(p.allocatedBytes)} allocated + ${formatSize(BigInt(c.reserved[i]!))} reserved of ${formatSize(BigInt(limit))})`;
    },
  },
];

/** The filter of a refusal code: its place in the table, from 1 (0: the pool is feasible). */
export const filterOf = (code: number): Filter => FILTER_TABLE[code - 1]!;

/** Counts per refusal code (index 0 unused) as counts per filter name, for decisions and metrics. */
export function refusalsByName(counts: Int32Array): Map<string, number> {
  const refusals = new Map<string, number>();
  for (let code = 1; code < counts.length; code++) {
    const name = filterOf(code).name;
    if (counts[code]) refusals.set(name, (refusals.get(name) ?? 0) + counts[code]!);
  }
  return refusals;
}

/** The filters by name, in the order they run, with what each checks (docs, `stowctl`). */
export const FILTERS: readonly { name: string; checks: string }[] = [
  ...new Set(FILTER_TABLE.map((f) => f.name)),
].map((name) => ({
  name,
  checks: FILTER_TABLE.filter((f) => f.name === name)
    .map((f) => f.checks)
    .join("; "),
}));
