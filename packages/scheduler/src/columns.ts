import type { PoolKind, VolumeFormat } from "@stowage/core";
import { headroom, overPhysicalFloor, provisionLimit } from "./capacity.js";
import type { ClusterView, PoolCandidate } from "./types.js";

/**
 * The cluster view held column-wise: one typed array per property the select loop reads, indexed by pool. At
 * 10,000 hosts a decision judges 40,000 pools, so the loop reads numbers from a few arrays and allocates
 * nothing. Byte counts are doubles (exact up to 8 PiB per pool). Hosts and zones are small integers, so the
 * loop compares numbers, not strings.
 *
 * `reserved`, `count`, `maxCount` and `groups` move as placements are recorded (`reserve`). A live view (the
 * controller's) also moves any pool in place with `update`, from a fresh reading of it: the same columns as a
 * rebuild from scratch would hold (a property test in select.test.ts holds it to that), at the cost of one
 * pool, except when the pool held the largest volume count or load and gave it up (one pass to find the next).
 */

export const KIND_BIT: Record<PoolKind, number> = { dir: 1, lvm: 2, lvmthin: 4, netfs: 8, rbd: 16 };
export const FORMAT_BIT: Record<VolumeFormat, number> = { raw: 1, qcow2: 2 };

/** Bits of the `state` column. */
export const HEALTHY = 1;
export const DRAINING = 2;
export const HOST_UP = 4;
export const SCHEDULABLE = 8;
export const OVER_FLOOR = 16;
/** A shared pool with attached hosts (`Columns.attachedOf`): reached through its owner or one of them. */
export const ATTACHED = 32;
/** The bits a host must give a pool for a placement through it: healthy there, host up and schedulable. */
const REACHABLE = HEALTHY | HOST_UP | SCHEDULABLE;

/** An attached host of a shared pool: its index, id, and its HEALTHY, HOST_UP and SCHEDULABLE bits. */
export interface AttachedEntry {
  host: number;
  hostId: string;
  bits: number;
}

/** Where the live volumes of one anti-affinity group are: host and zone indexes (-1: not in the view). */
export type GroupMembers = { host: number; zone: number }[];

/** The state that placements move, saved and restored around a group placement. */
export interface Reservations {
  reserved: Float64Array;
  count: Int32Array;
  maxCount: number;
  countHistogram: Map<number, number>;
  groups: Map<string, GroupMembers>;
}

export class Columns {
  readonly n: number;
  /** Each pool as last read (`update` replaces its entry). */
  readonly pools: PoolCandidate[];
  readonly numa: ClusterView["numa"];
  readonly ids: string[];
  readonly poolIndex = new Map<string, number>();
  /** Ties go to the smallest pool id: each pool's place in id order. */
  readonly rank: Int32Array;
  /** Host and zone of each pool, as indexes (`hostIndex`, `zoneIndex` map names to them). */
  readonly host: Int32Array;
  readonly zone: Int32Array;
  readonly hostCount: number;
  readonly zoneCount: number;
  readonly hostIndex = new Map<string, number>();
  readonly zoneIndex = new Map<string, number>();
  /** The attached hosts of each shared pool that has some (the ATTACHED bit), by pool index. */
  readonly attachedOf = new Map<number, AttachedEntry[]>();
  /** The pools of each host and of each zone, by host or zone index (a host's include the shared pools it is attached to). */
  readonly poolsOfHost: number[][] = [];
  readonly poolsOfZone: number[][] = [];
  readonly kindBit: Uint8Array;
  readonly formatMask: Uint8Array;
  readonly state: Uint8Array;
  readonly numaNode: Int32Array;
  /** Bytes the pool could take with nothing reserved (capacity.ts). */
  readonly headroom: Float64Array;
  /** 1 / the provisioning limit (0 when the limit is 0): scoring multiplies instead of dividing. */
  readonly invLimit: Float64Array;
  readonly maxVolumes: Int32Array;
  readonly load: Float64Array;
  /** 1 / the largest load (0 when nothing is in flight). */
  invMaxLoad: number;
  private maxLoad: number;
  /** How many pools hold each volume count and each load: the next largest is found without a pass. */
  private countHistogram = new Map<number, number>();
  private readonly loadHistogram = new Map<number, number>();
  /** Pools whose labels match a label set, by the set (JSON of its sorted pairs). */
  readonly labelMasks = new Map<string, Uint8Array>();
  reserved: Float64Array;
  count: Int32Array;
  maxCount: number;
  groups: Map<string, GroupMembers>;

  constructor(view: ClusterView) {
    const pools = view.pools;
    const n = pools.length;
    this.n = n;
    this.pools = [...pools];
    this.numa = view.numa;
    this.ids = new Array(n);
    this.rank = new Int32Array(n);
    this.host = new Int32Array(n);
    this.zone = new Int32Array(n);
    this.kindBit = new Uint8Array(n);
    this.formatMask = new Uint8Array(n);
    this.state = new Uint8Array(n);
    this.numaNode = new Int32Array(n);
    this.headroom = new Float64Array(n);
    this.invLimit = new Float64Array(n);
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
      this.poolIndex.set(p.id, i);
      if (i > 0 && this.ids[i - 1]! >= p.id) sorted = false;
      this.host[i] = intern(p.hostId, this.hostIndex, this.poolsOfHost);
      this.zone[i] = intern(p.zone, this.zoneIndex, this.poolsOfZone);
      this.poolsOfHost[this.host[i]!]!.push(i);
      this.poolsOfZone[this.zone[i]!]!.push(i);
      for (const a of p.attached ?? []) {
        const k = intern(a.hostId, this.hostIndex, this.poolsOfHost);
        if (k !== this.host[i]) this.poolsOfHost[k]!.push(i);
      }
      this.fill(i, p);
      bump(this.countHistogram, this.count[i]!, 1);
      bump(this.loadHistogram, this.load[i]!, 1);
      if (p.volumeCount > maxCount) maxCount = p.volumeCount;
      if ((p.load ?? 0) > maxLoad) maxLoad = p.load ?? 0;
    }
    this.groups = new Map(
      [...view.groups].map(([name, members]) => [
        name,
        members.map((m) => ({
          host: this.hostIndex.get(m.hostId) ?? -1,
          zone: this.zoneIndex.get(m.zone) ?? -1,
        })),
      ]),
    );
    this.hostCount = this.poolsOfHost.length;
    this.zoneCount = this.poolsOfZone.length;
    this.maxCount = maxCount;
    this.maxLoad = maxLoad;
    this.invMaxLoad = maxLoad === 0 ? 0 : 1 / maxLoad;
    // The controller loads pools in id order already; rank them by id only when they are not.
    if (sorted) for (let i = 0; i < n; i++) this.rank[i] = i;
    else {
      const order = [...this.ids.keys()].sort((a, b) => (this.ids[a]! < this.ids[b]! ? -1 : 1));
      for (let r = 0; r < n; r++) this.rank[order[r]!] = r;
    }
  }

  /** Writes pool i's columns that follow from its reading alone (not its host, zone or id). */
  private fill(i: number, p: PoolCandidate): void {
    this.kindBit[i] = KIND_BIT[p.kind];
    let formats = 0;
    for (const f of p.formats) formats |= FORMAT_BIT[f];
    this.formatMask[i] = formats;
    this.state[i] =
      (p.healthy ? HEALTHY : 0) |
      (p.draining ? DRAINING : 0) |
      (p.hostUp ? HOST_UP : 0) |
      (p.hostSchedulable ? SCHEDULABLE : 0) |
      (overPhysicalFloor(p) ? OVER_FLOOR : 0) |
      (p.attached?.length ? ATTACHED : 0);
    if (p.attached?.length)
      this.attachedOf.set(
        i,
        p.attached.map((a) => ({
          host: this.hostIndex.get(a.hostId)!,
          hostId: a.hostId,
          bits: (a.healthy ? HEALTHY : 0) | (a.hostUp ? HOST_UP : 0) | (a.hostSchedulable ? SCHEDULABLE : 0),
        })),
      );
    else this.attachedOf.delete(i);
    this.numaNode[i] = p.numaNode ?? -1;
    this.headroom[i] = headroom(p);
    const limit = provisionLimit(p);
    this.invLimit[i] = limit > 0 ? 1 / limit : 0;
    this.reserved[i] = Number(p.reservedBytes);
    this.count[i] = p.volumeCount;
    this.maxVolumes[i] = p.maxVolumes ?? 0;
    this.load[i] = p.load ?? 0;
  }

  /**
   * Moves pool i to a fresh reading of it, in place. The pool keeps its id, host and zone (false, and nothing
   * changed, when the reading says otherwise: the caller rebuilds the columns then).
   */
  update(i: number, p: PoolCandidate): boolean {
    const before = this.pools[i]!;
    if (p.id !== before.id || p.hostId !== before.hostId || p.zone !== before.zone) return false;
    if (attachedKey(p) !== attachedKey(before)) return false;
    const oldCount = this.count[i]!;
    const oldLoad = this.load[i]!;
    this.pools[i] = p;
    this.fill(i, p);
    if (p.labels !== before.labels)
      for (const [key, mask] of this.labelMasks) {
        const labels = JSON.parse(key) as [string, string][];
        mask[i] = labels.every(([k, v]) => p.labels[k] === v) ? 1 : 0;
      }
    this.maxCount = moved(this.countHistogram, this.maxCount, oldCount, this.count[i]!);
    this.maxLoad = moved(this.loadHistogram, this.maxLoad, oldLoad, this.load[i]!);
    this.invMaxLoad = this.maxLoad === 0 ? 0 : 1 / this.maxLoad;
    return true;
  }

  /** Whether host index `host` is attached to shared pool i (not its owner). */
  attachedTo(i: number, host: number): boolean {
    if ((this.state[i]! & ATTACHED) === 0) return false;
    for (const a of this.attachedOf.get(i)!) if (a.host === host) return true;
    return false;
  }

  /**
   * Which of pool i's hosts a placement goes through, for a request pinned to host index `pinned` (negative:
   * not pinned): -1 for the owner, else the index of the attached host in `attachedOf`. Pinned to an attached
   * host: that one. Not pinned: the owner when it is reachable (REACHABLE bits), else the first attached host
   * that is, else the owner (whose state refuses it).
   */
  via(i: number, pinned: number): number {
    const list = this.attachedOf.get(i);
    if (!list) return -1;
    if (pinned >= 0 && pinned !== this.host[i]) {
      for (let k = 0; k < list.length; k++) if (list[k]!.host === pinned) return k;
      return -1;
    }
    if ((this.state[i]! & REACHABLE) === REACHABLE) return -1;
    for (let k = 0; k < list.length; k++) if ((list[k]!.bits & REACHABLE) === REACHABLE) return k;
    return -1;
  }

  /**
   * Pool i's state bits as seen through the host a placement would use (`via`): the pool's own (draining,
   * physical floor) with that host's health, up and schedulable bits. One bit test for a pool of one host.
   */
  reachState(i: number, pinned: number): number {
    const s = this.state[i]!;
    if ((s & ATTACHED) === 0) return s;
    const k = this.via(i, pinned);
    return k < 0 ? s : (s & ~REACHABLE) | this.attachedOf.get(i)![k]!.bits;
  }

  /** The id of the host a placement in pool i goes through (`via`). */
  reachHostId(i: number, pinned: number): string {
    const k = this.via(i, pinned);
    return k < 0 ? this.pools[i]!.hostId : this.attachedOf.get(i)![k]!.hostId;
  }

  /** Sets where the live volumes of one anti-affinity group are (a live view loads only the request's groups). */
  setGroup(name: string, members: readonly { hostId: string; zone: string }[]): void {
    this.groups.set(
      name,
      members.map((m) => ({
        host: this.hostIndex.get(m.hostId) ?? -1,
        zone: this.zoneIndex.get(m.zone) ?? -1,
      })),
    );
  }

  /** Records a placement of `bytes` on pool i, as the ledger will (so a run of placements sees its own effect). */
  reserve(i: number, bytes: number, group: string | undefined): void {
    this.reserved[i]! += bytes;
    this.count[i]! += 1;
    this.maxCount = moved(this.countHistogram, this.maxCount, this.count[i]! - 1, this.count[i]!);
    if (group) {
      const members = this.groups.get(group) ?? [];
      members.push({ host: this.host[i]!, zone: this.zone[i]! });
      this.groups.set(group, members);
    }
  }

  save(): Reservations {
    return {
      reserved: this.reserved.slice(),
      count: this.count.slice(),
      maxCount: this.maxCount,
      countHistogram: new Map(this.countHistogram),
      groups: new Map([...this.groups].map(([k, v]) => [k, [...v]])),
    };
  }

  restore(saved: Reservations): void {
    this.reserved = saved.reserved;
    this.count = saved.count;
    this.maxCount = saved.maxCount;
    this.countHistogram = saved.countHistogram;
    this.groups = saved.groups;
  }
}

function bump(histogram: Map<number, number>, value: number, by: number): void {
  const n = (histogram.get(value) ?? 0) + by;
  if (n === 0) histogram.delete(value);
  else histogram.set(value, n);
}

/**
 * One pool's value moved from `from` to `to`: the histogram follows, and the largest value (at least 0) is
 * returned. When the largest is given up, the next one is found among the histogram's values (few: counts and
 * loads repeat), not by a pass over the pools.
 */
function moved(histogram: Map<number, number>, max: number, from: number, to: number): number {
  if (from === to) return max;
  bump(histogram, from, -1);
  bump(histogram, to, 1);
  if (to > max) return to;
  if (from !== max || histogram.has(max)) return max;
  let next = 0;
  for (const v of histogram.keys()) if (v > next) next = v;
  return next;
}

/** The attached hosts of a pool, as a key: a change of them moves the pool in `poolsOfHost` (a rebuild). */
function attachedKey(p: PoolCandidate): string {
  return p.attached?.length ? p.attached.map((a) => a.hostId).join(" ") : "";
}

/** The index of `name`, adding it (with an empty pool list) the first time it is seen. */
function intern(name: string, index: Map<string, number>, pools: number[][]): number {
  let k = index.get(name);
  if (k === undefined) {
    k = pools.length;
    index.set(name, k);
    pools.push([]);
  }
  return k;
}
