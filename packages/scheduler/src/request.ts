import { type Columns, FORMAT_BIT, KIND_BIT } from "./columns.js";
import type { PlacementRequest } from "./types.js";

/** A constraint the request does not set. */
export const NONE = -1;
/** A host, zone or pool the request names but the view does not hold: no pool matches it. */
export const UNKNOWN = -2;

/**
 * A placement request compiled against the columns: names become host, zone and pool indexes, kinds and
 * formats bit masks, labels and anti-affinity one byte per pool. The filters and scorers read only these
 * numbers and arrays; the strings are kept for the reasons.
 */
export interface CompiledRequest {
  req: PlacementRequest;
  size: number;
  formatBit: number;
  /** The allowed kinds (0: any). */
  kindMask: number;
  /** Pool, host and zone the request names (NONE, or UNKNOWN when the view does not hold it). */
  pool: number;
  host: number;
  zone: number;
  /** The requested labels, sorted, and the pools that carry all of them (undefined: no labels asked for). */
  labels: [string, string][];
  labelMask: Uint8Array | undefined;
  /** The VM's host (NONE without a NUMA constraint) and node (-1: any). */
  numaHost: number;
  numaNode: number;
  numaRequired: boolean;
  group: string;
  zoneScope: boolean;
  /**
   * 1 for each host (or zone) that already holds a member of the anti-affinity group, indexed by `antiOf[i]`
   * (the pool's host, or its zone); undefined when the group has no members.
   */
  antiMask: Uint8Array | undefined;
  antiOf: Int32Array;
  binpack: boolean;
  /** 1 / the largest volume count in the view now (0 when every pool is empty). */
  invMaxCount: number;
}

export function compileRequest(c: Columns, req: PlacementRequest): CompiledRequest {
  const k = req.constraints;
  const group = k.antiAffinityGroup ?? "";
  const zoneScope = k.antiAffinityScope === "zone";
  let kindMask = 0;
  for (const kind of k.poolKinds ?? []) kindMask |= KIND_BIT[kind];
  const labels = k.poolLabels ? Object.entries(k.poolLabels) : [];
  return {
    req,
    size: Number(req.sizeBytes),
    formatBit: FORMAT_BIT[req.format],
    kindMask,
    pool: lookup(c.poolIndex, k.poolId),
    host: lookup(c.hostIndex, k.hostId),
    zone: lookup(c.zoneIndex, k.zone),
    labels,
    labelMask: labels.length ? labelMask(c, labels) : undefined,
    numaHost: lookup(c.hostIndex, k.numa?.hostId),
    numaNode: k.numa?.node ?? -1,
    numaRequired: Boolean(k.numa?.required && k.numa.node !== undefined),
    group,
    zoneScope,
    antiMask: group ? antiAffinityMask(c, group, zoneScope) : undefined,
    antiOf: zoneScope ? c.zone : c.host,
    binpack: k.strategy === "binpack",
    invMaxCount: c.maxCount === 0 ? 0 : 1 / c.maxCount,
  };
}

function lookup(index: ReadonlyMap<string, number>, name: string | undefined): number {
  return name ? (index.get(name) ?? UNKNOWN) : NONE;
}

/** The pools carrying every label of the set, cached per set (requests repeat a few label sets). */
function labelMask(c: Columns, labels: [string, string][]): Uint8Array {
  const key = JSON.stringify(labels.sort());
  let mask = c.labelMasks.get(key);
  if (!mask) {
    mask = new Uint8Array(c.n);
    for (let i = 0; i < c.n; i++) {
      const l = c.pools[i]!.labels;
      mask[i] = labels.every(([k, v]) => l[k] === v) ? 1 : 0;
    }
    c.labelMasks.set(key, mask);
  }
  return mask;
}

/** The hosts (or zones) that already hold a member of the group; undefined when it has none. */
function antiAffinityMask(c: Columns, group: string, zoneScope: boolean): Uint8Array | undefined {
  const members = c.groups.get(group);
  if (!members?.length) return undefined;
  const mask = new Uint8Array(zoneScope ? c.zoneCount : c.hostCount);
  for (const m of members) {
    const k = zoneScope ? m.zone : m.host;
    if (k >= 0) mask[k] = 1;
  }
  return mask;
}
