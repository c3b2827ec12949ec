import { formatSize, type PoolKind, THIN_KINDS, type VolumeFormat } from "@stowage/core";
import type {
  CandidateVerdict,
  ClusterView,
  GroupPlacementDecision,
  PlacementDecision,
  PlacementRequest,
  PoolCandidate,
} from "./types.js";

/**
 * The placement engine: filter, score, select (Nomad's feasibility and rank iterators, LINSTOR's autoplacer).
 *
 * Pools are held column-wise in typed arrays and every pool is judged by one inlined loop: at 10,000 hosts a
 * decision scans 40,000 pools, so the loop does arithmetic, not allocation. The same loop runs in two modes:
 * `explain: false` keeps only the best candidate; `explain: true` records each pool's verdict (the first filter
 * that refused it, or its weighted scores). Both modes share every rule, so an explanation is always the
 * decision's own.
 *
 * Byte counts are doubles here (exact up to 8 PiB per pool). The scheduler's view may be stale; the ledger's
 * conditional UPDATE in PostgreSQL has the last word.
 */

/** Refusal codes, in the order the filters run. */
enum R {
  None = 0,
  Kind,
  Format,
  Pool,
  Host,
  Zone,
  Label,
  HostDown,
  Cordoned,
  Unhealthy,
  Draining,
  NumaHost,
  NumaNode,
  AntiHost,
  AntiZone,
  MaxVolumes,
  PhysicalFloor,
  Capacity,
}

/** Each refusal code belongs to one named filter (the names appear in explanations and metrics). */
const FILTER_OF: Record<number, string> = {
  [R.Kind]: "pool-kind",
  [R.Format]: "pool-kind",
  [R.Pool]: "selector",
  [R.Host]: "selector",
  [R.Zone]: "selector",
  [R.Label]: "selector",
  [R.HostDown]: "host-up",
  [R.Cordoned]: "host-up",
  [R.Unhealthy]: "pool-healthy",
  [R.Draining]: "pool-healthy",
  [R.NumaHost]: "numa",
  [R.NumaNode]: "numa",
  [R.AntiHost]: "anti-affinity",
  [R.AntiZone]: "anti-affinity",
  [R.MaxVolumes]: "max-volumes",
  [R.PhysicalFloor]: "capacity",
  [R.Capacity]: "capacity",
};

/** The filters, in the order they run, with what each checks. */
export const FILTERS: readonly { name: string; checks: string }[] = [
  { name: "pool-kind", checks: "the pool's kind is allowed and holds the volume's format" },
  { name: "selector", checks: "the requested pool, host, zone and pool labels" },
  { name: "host-up", checks: "the host heartbeats and is not cordoned" },
  { name: "pool-healthy", checks: "the pool passes its health check and is not draining" },
  { name: "numa", checks: "a required NUMA node on the VM's host" },
  { name: "anti-affinity", checks: "volumes of one group on distinct hosts (or zones)" },
  { name: "max-volumes", checks: "the pool's volume limit" },
  {
    name: "capacity",
    checks:
      "thick: free physical bytes; thin: provisioned + reserved + request <= size x ratio, physical use under the floor; both net of the reserved percentage",
  },
];

export const SCORERS = ["free-space", "numa-locality", "fewest-volumes", "pool-load"] as const;
export type ScorerName = (typeof SCORERS)[number];

export const DEFAULT_WEIGHTS: Readonly<Record<ScorerName, number>> = {
  "free-space": 1,
  "numa-locality": 2,
  "fewest-volumes": 0.25,
  "pool-load": 0.25,
};

export interface SchedulerOptions {
  weights?: Partial<Record<ScorerName, number>>;
}

export interface PlaceOptions {
  /** Record every candidate's verdict (dry runs, explanations); off on the hot path. */
  explain?: boolean;
}

const KIND_BIT: Record<PoolKind, number> = { dir: 1, lvm: 2, lvmthin: 4, netfs: 8, rbd: 16 };
const FORMAT_BIT: Record<VolumeFormat, number> = { raw: 1, qcow2: 2 };
const F_HEALTHY = 1;
const F_DRAINING = 2;
const F_HOST_UP = 4;
const F_SCHEDULABLE = 8;
const F_THIN = 16;

interface CompiledRequest {
  req: PlacementRequest;
  size: number;
  formatBit: number;
  kindMask: number;
  poolId: string;
  hostId: string;
  zone: string;
  labels: [string, string][];
  numaHost: string;
  numaNode: number;
  numaRequired: boolean;
  group: string;
  zoneScope: boolean;
  /** Pools excluded by the anti-affinity group (1 = a member already sits on the pool's host or zone). */
  antiMask: Uint8Array | undefined;
  /** Pools whose labels match every requested label (cached per label set). */
  labelMask: Uint8Array | undefined;
  /** Fast mode: only these pools can pass (the request names a host, a pool, or requires a NUMA node). */
  only: Int32Array | undefined;
  binpack: boolean;
}

export class Scheduler {
  readonly n: number;
  private readonly pools: readonly PoolCandidate[];
  private readonly ids: string[];
  private readonly hosts: string[];
  private readonly zones: string[];
  private readonly kinds: PoolKind[];
  private readonly rank: Int32Array;
  private readonly kindBit: Uint8Array;
  private readonly formatMask: Uint8Array;
  private readonly flags: Uint8Array;
  private readonly numaNode: Int32Array;
  private readonly limit: Float64Array;
  /** 1 / limit (0 when the limit is 0): scoring multiplies instead of dividing. */
  private readonly invLimit: Float64Array;
  private readonly reserveAbs: Float64Array;
  private readonly total: Float64Array;
  private readonly used: Float64Array;
  private readonly free: Float64Array;
  private readonly maxUsedPct: Float64Array;
  private readonly allocated: Float64Array;
  private reserved: Float64Array;
  private count: Int32Array;
  private readonly maxVolumes: Int32Array;
  private readonly load: Float64Array;
  private maxCount: number;
  private readonly maxLoad: number;
  private readonly index = new Map<string, number>();
  private readonly byHost = new Map<string, number[]>();
  private readonly byZone = new Map<string, number[]>();
  private readonly labelCache = new Map<string, Uint8Array>();
  private readonly refusalCount = new Int32Array(R.Capacity + 1);
  private readonly numa: ClusterView["numa"];
  private groups: Map<string, { hostId: string; zone: string }[]>;
  private readonly weights: Record<ScorerName, number>;

  constructor(view: ClusterView, opts: SchedulerOptions = {}) {
    const pools = view.pools;
    const n = pools.length;
    this.n = n;
    this.pools = pools;
    this.numa = view.numa;
    this.groups = new Map([...view.groups].map(([k, v]) => [k, [...v]]));
    this.weights = { ...DEFAULT_WEIGHTS, ...opts.weights };
    this.ids = new Array(n);
    this.hosts = new Array(n);
    this.zones = new Array(n);
    this.kinds = new Array(n);
    this.rank = new Int32Array(n);
    this.kindBit = new Uint8Array(n);
    this.formatMask = new Uint8Array(n);
    this.flags = new Uint8Array(n);
    this.numaNode = new Int32Array(n);
    this.limit = new Float64Array(n);
    this.invLimit = new Float64Array(n);
    this.reserveAbs = new Float64Array(n);
    this.total = new Float64Array(n);
    this.used = new Float64Array(n);
    this.free = new Float64Array(n);
    this.maxUsedPct = new Float64Array(n);
    this.allocated = new Float64Array(n);
    this.reserved = new Float64Array(n);
    this.count = new Int32Array(n);
    this.maxVolumes = new Int32Array(n);
    this.load = new Float64Array(n);
    let maxCount = 0;
    let maxLoad = 0;
    let sorted = true;
    for (let i = 0; i < n; i++) {
      const p = pools[i]!;
      this.ids[i] = p.id;
      this.index.set(p.id, i);
      if (i > 0 && this.ids[i - 1]! >= p.id) sorted = false;
      this.hosts[i] = p.hostId;
      this.zones[i] = p.zone;
      const hostPools = this.byHost.get(p.hostId);
      if (hostPools) hostPools.push(i);
      else this.byHost.set(p.hostId, [i]);
      const zonePools = this.byZone.get(p.zone);
      if (zonePools) zonePools.push(i);
      else this.byZone.set(p.zone, [i]);
      this.kinds[i] = p.kind;
      this.kindBit[i] = KIND_BIT[p.kind];
      let fm = 0;
      for (const f of p.formats) fm |= FORMAT_BIT[f];
      this.formatMask[i] = fm;
      this.flags[i] =
        (p.healthy ? F_HEALTHY : 0) |
        (p.draining ? F_DRAINING : 0) |
        (p.hostUp ? F_HOST_UP : 0) |
        (p.hostSchedulable ? F_SCHEDULABLE : 0) |
        (THIN_KINDS.has(p.kind) ? F_THIN : 0);
      this.numaNode[i] = p.numaNode ?? -1;
      const total = Number(p.totalBytes);
      this.total[i] = total;
      this.limit[i] = Math.floor(total * p.overcommitRatio);
      this.invLimit[i] = this.limit[i]! > 0 ? 1 / this.limit[i]! : 0;
      this.reserveAbs[i] = (total * (p.reservedPercent ?? 0)) / 100;
      this.used[i] = Number(p.usedBytes);
      this.free[i] = Number(p.freeBytes);
      this.maxUsedPct[i] = p.maxUsedPercent;
      this.allocated[i] = Number(p.allocatedBytes);
      this.reserved[i] = Number(p.reservedBytes);
      this.count[i] = p.volumeCount;
      this.maxVolumes[i] = p.maxVolumes ?? 0;
      this.load[i] = p.load ?? 0;
      if (p.volumeCount > maxCount) maxCount = p.volumeCount;
      if ((p.load ?? 0) > maxLoad) maxLoad = p.load ?? 0;
    }
    this.maxCount = maxCount;
    this.maxLoad = maxLoad;
    // Ties go to the smallest pool id: rank pools by id once (the controller loads them in id order already).
    if (sorted) for (let i = 0; i < n; i++) this.rank[i] = i;
    else {
      const order = [...this.ids.keys()].sort((a, b) => (this.ids[a]! < this.ids[b]! ? -1 : 1));
      for (let r = 0; r < n; r++) this.rank[order[r]!] = r;
    }
  }

  private compile(req: PlacementRequest): CompiledRequest {
    const c = req.constraints;
    const group = c.antiAffinityGroup ?? "";
    const zoneScope = c.antiAffinityScope === "zone";
    let kindMask = 0;
    for (const k of c.poolKinds ?? []) kindMask |= KIND_BIT[k];
    let antiMask: Uint8Array | undefined;
    const members = group ? this.groups.get(group) : undefined;
    if (members?.length) {
      antiMask = new Uint8Array(this.n);
      for (const m of members)
        for (const i of (zoneScope ? this.byZone.get(m.zone) : this.byHost.get(m.hostId)) ?? [])
          antiMask[i] = 1;
    }
    const labels = Object.entries(c.poolLabels ?? {});
    const numaRequired = Boolean(c.numa?.required && c.numa.node !== undefined);
    // A request pinned to one host (by pool, host or a required NUMA node) can only land on that host's pools.
    let only: Int32Array | undefined;
    if (c.poolId) only = Int32Array.from(this.index.has(c.poolId) ? [this.index.get(c.poolId)!] : []);
    else if (c.hostId) only = Int32Array.from(this.byHost.get(c.hostId) ?? []);
    else if (numaRequired) only = Int32Array.from(this.byHost.get(c.numa!.hostId) ?? []);
    return {
      req,
      size: Number(req.sizeBytes),
      formatBit: FORMAT_BIT[req.format],
      kindMask,
      poolId: c.poolId ?? "",
      hostId: c.hostId ?? "",
      zone: c.zone ?? "",
      labels,
      numaHost: c.numa?.hostId ?? "",
      numaNode: c.numa?.node ?? -1,
      numaRequired,
      group,
      zoneScope,
      antiMask,
      labelMask: labels.length ? this.labelMask(labels) : undefined,
      only,
      binpack: c.strategy === "binpack",
    };
  }

  private labelMask(labels: [string, string][]): Uint8Array {
    const key = JSON.stringify(labels.sort());
    let mask = this.labelCache.get(key);
    if (!mask) {
      mask = new Uint8Array(this.n);
      for (let i = 0; i < this.n; i++) {
        const l = this.pools[i]!.labels;
        mask[i] = labels.every(([k, v]) => l[k] === v) ? 1 : 0;
      }
      this.labelCache.set(key, mask);
    }
    return mask;
  }

  /**
   * Judges every pool (or only `r.only`) in one loop: the first refusing filter, or the weighted score. With
   * `explain`, each pool's refusal code, headroom and score parts are recorded for the explanation.
   */
  private scan(r: CompiledRequest, explain: boolean): { best: number; bestScore: number; feasible: number } {
    const {
      formatMask,
      kindBit,
      flags,
      numaNode,
      limit,
      invLimit,
      reserveAbs,
      total,
      used,
      free,
      maxUsedPct,
      allocated,
      reserved,
      count,
      maxVolumes,
      load,
      rank,
      ids,
      hosts,
      zones,
    } = this;
    const w = this.weights;
    const wFree = w["free-space"];
    const wNuma = w["numa-locality"];
    const wFew = w["fewest-volumes"];
    const wLoad = w["pool-load"];
    const invMaxCount = this.maxCount === 0 ? 0 : 1 / this.maxCount;
    const invMaxLoad = this.maxLoad === 0 ? 0 : 1 / this.maxLoad;
    const {
      formatBit,
      kindMask,
      poolId,
      hostId,
      zone,
      labelMask,
      numaRequired,
      numaHost,
      antiMask,
      zoneScope,
      size,
      binpack,
    } = r;
    const wantNode = r.numaNode;
    const counts = this.refusalCount;
    const ex = explain ? this.explainBuffers() : undefined;
    const only = explain ? undefined : r.only;
    const m = only ? only.length : this.n;
    let best = -1;
    let bestScore = Number.NEGATIVE_INFINITY;
    let feasible = 0;
    for (let k = 0; k < m; k++) {
      const i = only ? only[k]! : k;
      let code: R = R.None;
      let room = 0;
      const f = flags[i]!;
      if (!(formatMask[i]! & formatBit)) code = R.Format;
      else if (kindMask && !(kindMask & kindBit[i]!)) code = R.Kind;
      else if (poolId && ids[i] !== poolId) code = R.Pool;
      else if (hostId && hosts[i] !== hostId) code = R.Host;
      else if (zone && zones[i] !== zone) code = R.Zone;
      else if (labelMask && !labelMask[i]) code = R.Label;
      else if (!(f & F_HOST_UP)) code = R.HostDown;
      else if (!(f & F_SCHEDULABLE)) code = R.Cordoned;
      else if (!(f & F_HEALTHY)) code = R.Unhealthy;
      else if (f & F_DRAINING) code = R.Draining;
      else if (numaRequired && hosts[i] !== numaHost) code = R.NumaHost;
      else if (numaRequired && numaNode[i] !== wantNode) code = R.NumaNode;
      else if (antiMask?.[i]) code = zoneScope ? R.AntiZone : R.AntiHost;
      else if (maxVolumes[i]! > 0 && count[i]! >= maxVolumes[i]!) code = R.MaxVolumes;
      else {
        const res = reserved[i]!;
        room = limit[i]! - reserveAbs[i]! - allocated[i]! - res;
        if (f & F_THIN) {
          if (used[i]! * 100 > total[i]! * maxUsedPct[i]!) code = R.PhysicalFloor;
        } else {
          const physical = free[i]! - reserveAbs[i]! - res;
          if (physical < room) room = physical;
        }
        if (code === R.None && room < size) code = R.Capacity;
      }
      if (ex) {
        ex.code[i] = code;
        ex.room[i] = room;
      }
      if (code !== R.None) {
        counts[code]!++;
        continue;
      }
      feasible++;
      let freeFrac = (room - size) * invLimit[i]!;
      freeFrac = freeFrac < 0 ? 0 : freeFrac > 1 ? 1 : freeFrac;
      const sFree = binpack ? 1 - freeFrac : freeFrac;
      const sNuma =
        numaHost && hosts[i] === numaHost ? (wantNode < 0 || numaNode[i] === wantNode ? 1 : 0.5) : 0;
      const sFew = 1 - count[i]! * invMaxCount;
      const sLoad = 1 - load[i]! * invMaxLoad;
      const score = wFree * sFree + wNuma * sNuma + wFew * sFew + wLoad * sLoad;
      if (ex) {
        ex.parts[4 * i] = sFree;
        ex.parts[4 * i + 1] = sNuma;
        ex.parts[4 * i + 2] = sFew;
        ex.parts[4 * i + 3] = sLoad;
        ex.score[i] = score;
      }
      if (score > bestScore || (score === bestScore && rank[i]! < rank[best]!)) {
        best = i;
        bestScore = score;
      }
    }
    if (only) counts[poolId ? R.Pool : hostId ? R.Host : R.NumaHost]! += this.n - only.length;
    return { best, bestScore, feasible };
  }

  private buffers:
    | { code: Uint8Array; room: Float64Array; score: Float64Array; parts: Float64Array }
    | undefined;
  private explainBuffers() {
    if (!this.buffers) {
      this.buffers = {
        code: new Uint8Array(this.n),
        room: new Float64Array(this.n),
        score: new Float64Array(this.n),
        parts: new Float64Array(4 * this.n),
      };
    }
    return this.buffers;
  }

  /** Places one volume. Deterministic: the same view and request give the same answer. */
  place(req: PlacementRequest, opts: PlaceOptions = {}): PlacementDecision {
    const r = this.compile(req);
    const counts = this.refusalCount;
    counts.fill(0);
    const explain = opts.explain ?? false;
    const { best, bestScore, feasible: feasibleCount } = this.scan(r, explain);
    const refusals = new Map<string, number>();
    for (let code = 1; code < counts.length; code++) {
      if (counts[code]) refusals.set(FILTER_OF[code]!, (refusals.get(FILTER_OF[code]!) ?? 0) + counts[code]!);
    }
    let candidates: CandidateVerdict[] = [];
    if (explain) {
      const ex = this.buffers!;
      const w = this.weights;
      const feasible: CandidateVerdict[] = [];
      const refused: CandidateVerdict[] = [];
      for (let i = 0; i < this.n; i++) {
        const code = ex.code[i]! as R;
        if (code !== R.None) {
          refused.push({
            poolId: this.ids[i]!,
            hostId: this.hosts[i]!,
            feasible: false,
            refusedBy: FILTER_OF[code]!,
            reason: this.reason(code, i, r, ex.room[i]!),
            score: 0,
            scores: [],
          });
          continue;
        }
        const scores = SCORERS.map((name, k) => ({
          scorer: name,
          value: ex.parts[4 * i + k]!,
          weight: w[name],
        }));
        feasible.push({
          poolId: this.ids[i]!,
          hostId: this.hosts[i]!,
          feasible: true,
          refusedBy: "",
          reason: "",
          score: ex.score[i]!,
          scores,
        });
      }
      const rankOf = (id: string) => this.rank[this.index.get(id)!]!;
      feasible.sort((a, b) => b.score - a.score || rankOf(a.poolId) - rankOf(b.poolId));
      refused.sort((a, b) => rankOf(a.poolId) - rankOf(b.poolId));
      candidates = [...feasible, ...refused];
    }
    if (best < 0) {
      return {
        feasible: false,
        poolId: "",
        hostId: "",
        numaNode: null,
        cpuSet: "",
        candidates,
        summary: this.refusalSummary(req, refusals),
        refusals,
      };
    }
    const node = this.numaNode[best]!;
    const hostId = this.hosts[best]!;
    const cpuSet = node < 0 ? "" : (this.numa.get(hostId)?.find((x) => x.id === node)?.cpuList ?? "");
    return {
      feasible: true,
      poolId: this.ids[best]!,
      hostId,
      numaNode: node < 0 ? null : node,
      cpuSet,
      candidates,
      summary: `placed ${formatSize(req.sizeBytes)} ${req.format} on ${this.ids[best]}${node < 0 ? "" : ` (NUMA node ${node})`}: best of ${feasibleCount} feasible of ${this.n} pools, score ${bestScore.toFixed(3)}`,
      refusals,
    };
  }

  /** Records a placement in the in-memory view, as the ledger will (so a run of placements sees its own effect). */
  reserve(poolId: string, bytes: bigint | number, group?: { name: string }): void {
    const i = this.index.get(poolId);
    if (i === undefined) return;
    this.reserved[i]! += Number(bytes);
    this.count[i]! += 1;
    if (this.count[i]! > this.maxCount) this.maxCount = this.count[i]!;
    if (group?.name) {
      const list = this.groups.get(group.name) ?? [];
      list.push({ hostId: this.hosts[i]!, zone: this.zones[i]! });
      this.groups.set(group.name, list);
    }
  }

  /**
   * Places the disks of one VM all or nothing: the largest first, each seeing the ones before it. Nothing is
   * kept in the view; the caller reserves the result in the ledger in one transaction.
   */
  placeGroup(reqs: readonly PlacementRequest[], opts: PlaceOptions = {}): GroupPlacementDecision {
    const saved = {
      reserved: this.reserved.slice(),
      count: this.count.slice(),
      maxCount: this.maxCount,
      groups: new Map([...this.groups].map(([k, v]) => [k, [...v]])),
    };
    try {
      const order = [...reqs.keys()].sort((a, b) => {
        const d = Number(reqs[b]!.sizeBytes - reqs[a]!.sizeBytes);
        return d !== 0 ? d : a - b;
      });
      const decisions: PlacementDecision[] = new Array(reqs.length);
      for (const k of order) {
        const req = reqs[k]!;
        const d = this.place(req, opts);
        decisions[k] = d;
        if (!d.feasible) {
          for (const j of reqs.keys()) {
            decisions[j] ??= {
              feasible: false,
              poolId: "",
              hostId: "",
              numaNode: null,
              cpuSet: "",
              candidates: [],
              summary: "not placed: another disk of the group does not fit",
            };
          }
          return {
            feasible: false,
            decisions,
            summary: `the group cannot be placed: ${req.name}: ${d.summary}`,
          };
        }
        this.reserve(
          d.poolId,
          req.sizeBytes,
          req.constraints.antiAffinityGroup ? { name: req.constraints.antiAffinityGroup } : undefined,
        );
      }
      const pools = new Set(decisions.map((d) => d.poolId));
      return {
        feasible: true,
        decisions,
        summary: `placed ${reqs.length} volumes on ${[...pools].join(", ")}`,
      };
    } finally {
      this.reserved = saved.reserved;
      this.count = saved.count;
      this.maxCount = saved.maxCount;
      this.groups = saved.groups;
    }
  }

  private reason(code: R, i: number, r: CompiledRequest, room: number): string {
    const c = r.req.constraints;
    switch (code) {
      case R.Format:
        return `kind ${this.kinds[i]} does not hold ${r.req.format} volumes`;
      case R.Kind:
        return `kind ${this.kinds[i]} is not one of ${(c.poolKinds ?? []).join(", ")}`;
      case R.Pool:
        return `not the requested pool ${r.poolId}`;
      case R.Host:
        return `not on the requested host ${r.hostId}`;
      case R.Zone:
        return `in zone ${this.zones[i] || "(none)"}, not ${r.zone}`;
      case R.Label: {
        const labels = this.pools[i]!.labels;
        const miss = r.labels.find(([k, v]) => labels[k] !== v)!;
        return `label ${miss[0]}=${miss[1]} does not match`;
      }
      case R.HostDown:
        return `host ${this.hosts[i]} is down`;
      case R.Cordoned:
        return `host ${this.hosts[i]} is cordoned`;
      case R.Unhealthy:
        return "pool is unhealthy";
      case R.Draining:
        return "pool is draining";
      case R.NumaHost:
        return `not on the VM's host ${r.numaHost}`;
      case R.NumaNode:
        return `on NUMA node ${this.numaNode[i]! < 0 ? "none" : this.numaNode[i]}, the VM requires node ${r.numaNode}`;
      case R.AntiHost:
        return `group ${r.group} already has a volume on host ${this.hosts[i]}`;
      case R.AntiZone:
        return `group ${r.group} already has a volume in zone ${this.zones[i] || "(none)"}`;
      case R.MaxVolumes:
        return `pool holds ${this.count[i]} volumes, its limit is ${this.maxVolumes[i]}`;
      case R.PhysicalFloor:
        return `physical use ${Math.round((this.used[i]! / this.total[i]!) * 1000) / 10}% is over the pool's ${this.maxUsedPct[i]}% floor`;
      case R.Capacity: {
        const left = Math.max(0, Math.floor(room));
        const limit = this.limit[i]! - this.reserveAbs[i]!;
        return `needs ${formatSize(r.req.sizeBytes)}, ${formatSize(BigInt(left))} left (${formatSize(BigInt(this.allocated[i]!))} allocated + ${formatSize(BigInt(this.reserved[i]!))} reserved of ${formatSize(BigInt(Math.max(0, Math.floor(limit))))})`;
      }
      default:
        return "";
    }
  }

  private refusalSummary(req: PlacementRequest, refusals: Map<string, number>): string {
    if (this.n === 0) return "no pools are known: is any agent registered?";
    const parts = [...refusals.entries()]
      .sort((a, b) => b[1] - a[1] || (a[0] < b[0] ? -1 : 1))
      .map(([f, k]) => `${k} by ${f}`);
    return `no pool can take ${formatSize(req.sizeBytes)} ${req.format}: ${this.n} refused (${parts.join(", ")})`;
  }
}

/** One placement with a full explanation (dry runs, `stowctl placement explain`). */
export function placeVolume(
  view: ClusterView,
  req: PlacementRequest,
  opts: SchedulerOptions & PlaceOptions = {},
): PlacementDecision {
  return new Scheduler(view, opts).place(req, { explain: opts.explain ?? true });
}

/**
 * True when capacity (not a selector or a kind) is what stopped a placement: the answer is then
 * RESOURCE_EXHAUSTED rather than FAILED_PRECONDITION.
 */
export function refusedOnlyForCapacity(decision: PlacementDecision): boolean {
  const counts = decision.refusals;
  if (!counts) return false;
  return (counts.get("capacity") ?? 0) + (counts.get("max-volumes") ?? 0) > 0;
}
