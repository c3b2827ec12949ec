import {
  Columns,
  type GroupPlacementDecision,
  type NumaNodeInfo,
  type PlacementDecision,
  type PlacementRequest,
  type PoolCandidate,
  Scheduler,
  type ScorerName,
} from "@stowage/scheduler";
import {
  antiAffinityGroupMembers,
  type Database,
  type GroupMember,
  hostNumaNodes,
  lastPlacementChange,
  loadSchedulingView,
  PLACEMENT_CHANNEL,
  placementChangesSince,
  type SchedulingRow,
} from "@stowage/store";
import type { Logger } from "@stowage/telemetry";

/** How long PostgreSQL's change notifications are gathered before the pools they name are re-read. */
export const NOTIFY_COALESCE_MS = 25;

/**
 * The scheduler's columns kept alive between decisions (docs/architecture.md, "Placement from memory"). A
 * decision reads memory only (plus the members of its own anti-affinity group); the columns move in place:
 *
 * - by this controller's own placements: a hold is taken in memory at decision time, before any await, so the
 *   next decision sees it; it stays while the transaction runs and is dropped if the transaction fails. Holds
 *   are an overlay on the database numbers (`base`), so a re-read of a pool does not erase one still in
 *   flight; a committed hold stays until a re-read that started after its commit (and so includes it);
 * - by every other writer, through migration 0005's trigger on pools and hosts: on PostgreSQL by LISTEN/NOTIFY
 *   (delivered at commit; a full reload on every (re)listen, since notifications sent while not listening are
 *   lost); on PGlite by polling `placement_changes` for `seq > last` (one connection, transactions serialised:
 *   no change commits behind one already seen). Only the pools named are re-read, coalesced; a new or gone
 *   pool, or a host's new zone, rebuilds the columns (rare);
 * - and by a full reload every `reloadMs` as a backstop (what no trigger sees: the load of operations that
 *   touch no pool row).
 *
 * The view may still be stale: the ledger's conditional UPDATE has the last word, and after a conflict the
 * caller re-reads the pool involved (`reread`) before placing again.
 */
export interface LiveViewOptions {
  weights?: Partial<Record<ScorerName, number>>;
  /** PGlite: how often the change table is polled. */
  pollMs?: number;
  /** The backstop: a full reload this often. */
  reloadMs?: number;
  log?: Logger;
}

/** A placement held in memory while its transaction runs (and, committed, until a re-read includes it). */
export interface Hold {
  readonly poolId: string;
  readonly bytes: bigint;
  readonly group: string;
  readonly hostId: string;
  readonly zone: string;
  /** The view's clock at commit; 0 while in flight. */
  committedAt: number;
}

export class LiveView {
  private columns: Columns | undefined;
  private scheduler: Scheduler | undefined;
  /** Each present pool as the database last said, by id. */
  private base = new Map<string, PoolCandidate>();
  private readonly holds = new Map<string, Set<Hold>>();
  private readonly numa = new Map<string, NumaNodeInfo[]>();
  /** Orders commits against re-reads: a re-read includes the commits made before it started. */
  private clock = 0;
  private lastSeq = 0n;
  private readonly dirtyPools = new Set<string>();
  private readonly dirtyHosts = new Set<string>();
  private draining: Promise<void> | undefined;
  private loading: Promise<void> | undefined;
  private stale = true;
  private started: Promise<void> | undefined;
  private stopped = false;
  private readonly timers: NodeJS.Timeout[] = [];
  private unlisten: (() => Promise<void>) | undefined;
  /** Full loads and pool re-reads done, for tests and metrics. */
  readonly stats = { loads: 0, rereads: 0, poolsReread: 0 };
  private drainTimer: NodeJS.Timeout | undefined;

  constructor(
    private readonly db: Pick<Database, "sql" | "kind">,
    private readonly opts: LiveViewOptions = {},
  ) {}

  /** Starts following the change feed and loads the view (once; later calls wait for the first). */
  start(): Promise<void> {
    this.started ??= this.follow();
    return this.started;
  }

  private async follow(): Promise<void> {
    const sql = this.db.sql;
    if (this.db.kind === "postgres") {
      const meta = await sql.listen(
        PLACEMENT_CHANNEL,
        (payload) => this.noteChange(payload),
        // Every (re)listen: what was notified while not listening is lost, so reload.
        () => this.reloadSoon(),
      );
      this.unlisten = meta.unlisten;
    } else {
      const poll = setInterval(() => void this.poll(), this.opts.pollMs ?? 100);
      poll.unref();
      this.timers.push(poll);
    }
    const backstop = setInterval(() => this.reloadSoon(), this.opts.reloadMs ?? 60_000);
    backstop.unref();
    this.timers.push(backstop);
    await this.load();
  }

  async stop(): Promise<void> {
    this.stopped = true;
    for (const t of this.timers) clearInterval(t);
    if (this.drainTimer) clearTimeout(this.drainTimer);
    await this.unlisten?.().catch(() => {});
    await Promise.allSettled([this.started, this.loading, this.draining]);
  }

  /**
   * The view, loaded: at once when it is (a pending backstop reload runs behind, not in the way); the first
   * call loads it.
   */
  async ready(): Promise<void> {
    await this.start();
    if (!this.columns) await this.load();
  }

  get size(): number {
    return this.columns?.n ?? 0;
  }

  /**
   * The pool's name in this host's config, which the host's commands name: the owner's row name, or an
   * attached host's own name for a shared pool; undefined when the view does not know the host reaches it.
   */
  poolNameOn(poolId: string, hostId: string): string | undefined {
    const p = this.base.get(poolId) as LiveCandidate | undefined;
    if (!p) return undefined;
    if (p.hostId === hostId) return p.name;
    return p.attached?.find((a) => a.hostId === hostId)?.name;
  }

  /** Whether the view holds the pool or the host (so a constraint naming it needs no query). */
  knowsPool(id: string): boolean {
    return this.columns?.poolIndex.has(id) ?? false;
  }
  knowsHost(id: string): boolean {
    return this.columns?.hostIndex.has(id) ?? false;
  }

  /** The members of the groups the requests name: the ledger's (one query per group) and this view's holds. */
  async groupMembers(reqs: readonly PlacementRequest[]): Promise<Map<string, GroupMember[]>> {
    const groups = new Map<string, GroupMember[]>();
    for (const r of reqs) {
      const g = r.constraints.antiAffinityGroup;
      if (!g || groups.has(g)) continue;
      groups.set(g, (await antiAffinityGroupMembers(this.db.sql, g)).get(g) ?? []);
    }
    return groups;
  }

  /**
   * Places one volume on the view as it is now, synchronously (call `ready` and `groupMembers` first), and
   * holds it when `hold` (and feasible) so the next decision sees it. Explained or not, as asked.
   */
  place(
    req: PlacementRequest,
    groups: ReadonlyMap<string, readonly GroupMember[]>,
    opts: { explain?: boolean; hold?: boolean } = {},
  ): { decision: PlacementDecision; hold?: Hold } {
    const s = this.withGroups(groups);
    const decision = s.place(req, { explain: opts.explain });
    if (!opts.hold || !decision.feasible) return { decision };
    return { decision, hold: this.hold(decision.poolId, req.sizeBytes, req.constraints.antiAffinityGroup) };
  }

  /** Places the disks of one VM all or nothing, holding every disk when `hold` (and feasible). */
  placeGroup(
    reqs: readonly PlacementRequest[],
    groups: ReadonlyMap<string, readonly GroupMember[]>,
    opts: { explain?: boolean; hold?: boolean } = {},
  ): { group: GroupPlacementDecision; holds: Hold[] } {
    const s = this.withGroups(groups);
    const group = s.placeGroup(reqs, { explain: opts.explain });
    if (!opts.hold || !group.feasible) return { group, holds: [] };
    const holds = group.decisions.map((d, k) =>
      this.hold(d.poolId, reqs[k]!.sizeBytes, reqs[k]!.constraints.antiAffinityGroup),
    );
    return { group, holds };
  }

  private withGroups(groups: ReadonlyMap<string, readonly GroupMember[]>): Scheduler {
    const c = this.columns;
    if (!c || !this.scheduler) throw new Error("the live view is not loaded: await ready() first");
    c.groups = new Map();
    for (const [name, members] of groups) {
      const held: GroupMember[] = [];
      for (const set of this.holds.values())
        for (const h of set) if (h.group === name) held.push({ hostId: h.hostId, zone: h.zone });
      c.setGroup(name, [...members, ...held]);
    }
    return this.scheduler;
  }

  /** Holds `bytes` on the pool in memory, as the ledger will once the transaction commits. */
  hold(poolId: string, bytes: bigint, group = ""): Hold {
    const p = this.base.get(poolId);
    const h: Hold = { poolId, bytes, group, hostId: p?.hostId ?? "", zone: p?.zone ?? "", committedAt: 0 };
    const set = this.holds.get(poolId) ?? new Set<Hold>();
    this.holds.set(poolId, set);
    set.add(h);
    this.refreshPool(poolId);
    return h;
  }

  /** The hold's transaction committed: the hold stays until a re-read that includes the commit. */
  commit(h: Hold): void {
    h.committedAt = ++this.clock;
    this.dirtyPools.add(h.poolId);
    void this.drain();
  }

  /** The hold's transaction failed: the hold goes at once (and the pool is re-read, in case). */
  release(h: Hold): void {
    this.holds.get(h.poolId)?.delete(h);
    this.refreshPool(h.poolId);
    this.dirtyPools.add(h.poolId);
    void this.drain();
  }

  /**
   * This controller changed these hosts and their pools itself (a registration): re-read them now rather than
   * after the change feed, so its next placement sees them; resolves once applied.
   */
  refresh(hostIds: readonly string[]): Promise<void> {
    for (const id of hostIds) this.dirtyHosts.add(id);
    return this.drain();
  }

  /** Re-reads these pools from the database now (after a ledger conflict), resolving once applied. */
  reread(poolIds: readonly string[]): Promise<void> {
    for (const id of poolIds) this.dirtyPools.add(id);
    return this.drain();
  }

  /** Applies every change the feed has announced so far (PGlite: polls first). For tests and the bench. */
  async sync(): Promise<void> {
    if (this.db.kind === "pglite") await this.poll();
    await this.drain();
  }

  /** In-flight and committed-but-unread holds (tests). */
  heldBytes(poolId: string): bigint {
    let sum = 0n;
    for (const h of this.holds.get(poolId) ?? []) sum += h.bytes;
    return sum;
  }

  /** The view's reading of one pool, holds included (tests, the bench). */
  poolView(poolId: string): PoolCandidate | undefined {
    const i = this.columns?.poolIndex.get(poolId);
    return i === undefined ? undefined : this.columns!.pools[i];
  }

  private noteChange(payload: string): void {
    const colon = payload.indexOf(":");
    const kind = payload.slice(0, colon);
    const id = payload.slice(colon + 1);
    if (kind === "pool") this.dirtyPools.add(id);
    else if (kind === "host") this.dirtyHosts.add(id);
    this.drainSoon();
  }

  /**
   * Notifications come one per changed row and per transaction: a burst of creates sends several per create
   * (the reservation, the confirmation, the agent's delta). They are gathered for NOTIFY_COALESCE_MS and re-read
   * together; this controller's own placements are in the view at once through their holds, so only other
   * writers' changes wait that long.
   */
  private drainSoon(): void {
    if (this.drainTimer) return;
    this.drainTimer = setTimeout(() => {
      this.drainTimer = undefined;
      void this.drain();
    }, NOTIFY_COALESCE_MS);
    this.drainTimer.unref();
  }

  private async poll(): Promise<void> {
    if (this.stopped) return;
    try {
      for (;;) {
        const changes = await placementChangesSince(this.db.sql, this.lastSeq);
        for (const c of changes) {
          if (c.seq > this.lastSeq) this.lastSeq = c.seq;
          (c.kind === "pool" ? this.dirtyPools : this.dirtyHosts).add(c.id);
        }
        if (changes.length < 10_000) break;
      }
      await this.drain();
    } catch (err) {
      if (!this.stopped) this.opts.log?.warn({ err }, "placement change poll failed");
    }
  }

  /** Re-reads the dirty pools and hosts until none is left; concurrent callers share one run. */
  private drain(): Promise<void> {
    this.draining ??= (async () => {
      // Not synchronously: `finally` must run after the assignment above, or it would never be cleared.
      await null;
      try {
        while (!this.stopped && (this.dirtyPools.size > 0 || this.dirtyHosts.size > 0)) {
          const pools = [...this.dirtyPools];
          const hosts = [...this.dirtyHosts];
          this.dirtyPools.clear();
          this.dirtyHosts.clear();
          await this.applyReread(pools, hosts);
        }
      } catch (err) {
        if (!this.stopped) this.opts.log?.warn({ err }, "placement view re-read failed: reloading");
        this.reloadSoon();
      } finally {
        this.draining = undefined;
      }
    })();
    return this.draining;
  }

  private async applyReread(poolIds: string[], hostIds: string[]): Promise<void> {
    const started = ++this.clock;
    const rows = await loadSchedulingView(this.db.sql, { poolIds, hostIds });
    const numa = hostIds.length > 0 ? await hostNumaNodes(this.db.sql, hostIds) : undefined;
    this.stats.rereads++;
    this.stats.poolsReread += rows.length;
    const c = this.columns;
    if (!c) return; // the load under way reads everything
    let rebuild = false;
    const seen = new Set<string>();
    for (const row of rows) {
      const id = row.pool.id;
      seen.add(id);
      this.dropCommitted(id, started);
      if (!row.pool.present) {
        if (this.base.delete(id)) rebuild = true;
        continue;
      }
      if (!this.base.has(id)) rebuild = true;
      this.base.set(id, candidateOf(row));
    }
    for (const id of poolIds) if (!seen.has(id) && this.base.delete(id)) rebuild = true;
    for (const id of hostIds) {
      const nodes = numa?.get(id);
      if (nodes) this.numa.set(id, nodes);
      else this.numa.delete(id);
    }
    if (rebuild) return this.build();
    for (const id of seen) if (this.base.has(id) && !this.refreshPool(id)) return this.build();
  }

  /** Committed holds the re-read that started at `started` includes: the database numbers have them now. */
  private dropCommitted(poolId: string, started: number): void {
    const set = this.holds.get(poolId);
    if (!set) return;
    for (const h of set) if (h.committedAt > 0 && h.committedAt < started) set.delete(h);
    if (set.size === 0) this.holds.delete(poolId);
  }

  /** Moves the pool's columns to its base reading plus its holds; false when the columns must be rebuilt. */
  private refreshPool(poolId: string): boolean {
    const c = this.columns;
    const p = this.base.get(poolId);
    const i = c?.poolIndex.get(poolId);
    if (!c || !p || i === undefined) return true;
    return c.update(i, this.withHolds(p));
  }

  private withHolds(p: PoolCandidate): PoolCandidate {
    const set = this.holds.get(p.id);
    if (!set || set.size === 0) return p;
    let bytes = 0n;
    for (const h of set) bytes += h.bytes;
    return {
      ...p,
      reservedBytes: p.reservedBytes + bytes,
      volumeCount: p.volumeCount + set.size,
      load: (p.load ?? 0) + set.size,
    };
  }

  private build(): void {
    const pools = [...this.base.values()].map((p) => this.withHolds(p));
    this.columns = new Columns({ pools, numa: this.numa, groups: new Map() });
    this.scheduler = new Scheduler(this.columns, { weights: this.opts.weights });
  }

  private reloadSoon(): void {
    this.stale = true;
    if (!this.stopped) void this.load().catch(() => {});
  }

  /** A full load (the first, a rebuild, the backstop); concurrent callers share one. */
  private load(): Promise<void> {
    this.loading ??= (async () => {
      await null; // as in drain
      try {
        while (this.stale && !this.stopped) {
          this.stale = false;
          const started = ++this.clock;
          const seq = this.db.kind === "pglite" ? await lastPlacementChange(this.db.sql) : 0n;
          const rows = await loadSchedulingView(this.db.sql);
          const numa = await hostNumaNodes(this.db.sql);
          this.base = new Map(rows.map((r) => [r.pool.id, candidateOf(r)]));
          this.numa.clear();
          for (const [id, nodes] of numa) this.numa.set(id, nodes);
          for (const id of [...this.holds.keys()]) this.dropCommitted(id, started);
          if (seq > this.lastSeq) this.lastSeq = seq;
          this.build();
          this.stats.loads++;
        }
      } catch (err) {
        this.stale = true;
        if (!this.stopped) this.opts.log?.warn({ err }, "placement view load failed");
        throw err;
      } finally {
        this.loading = undefined;
      }
    })();
    return this.loading;
  }
}

/** A pool as the live view keeps it: the scheduler's candidate and the pool's name on its owner. */
export type LiveCandidate = PoolCandidate & { name: string };

/**
 * A pool as the scheduler sees it, from its row, its host's state and its operations in flight; a shared pool
 * with its attached hosts (each with its state and its name for the pool).
 */
export function candidateOf({
  pool,
  hostState,
  hostSchedulable,
  zone,
  load,
  attached,
}: SchedulingRow): LiveCandidate {
  return {
    id: pool.id,
    name: pool.name,
    hostId: pool.hostId,
    kind: pool.kind,
    zone,
    numaNode: pool.numaNode,
    labels: pool.labels,
    formats: pool.formats,
    healthy: pool.healthy,
    draining: pool.draining,
    hostUp: hostState === "up",
    hostSchedulable,
    totalBytes: pool.totalBytes,
    usedBytes: pool.usedBytes,
    freeBytes: pool.freeBytes,
    allocatedBytes: pool.allocatedBytes,
    reservedBytes: pool.reservedBytes,
    overcommitRatio: pool.overcommitRatio,
    maxUsedPercent: pool.maxUsedPercent,
    reservedPercent: pool.reservedPercent,
    volumeCount: pool.volumeCount,
    maxVolumes: pool.maxVolumes,
    load,
    ...(attached.length > 0
      ? {
          attached: attached.map((a) => ({
            hostId: a.hostId,
            name: a.name,
            hostUp: a.up,
            hostSchedulable: a.schedulable,
            healthy: a.healthy,
          })),
        }
      : {}),
  };
}
