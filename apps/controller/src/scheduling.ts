import { notFound } from "@stowage/core";
import {
  type ClusterView,
  type GroupPlacementDecision,
  type PlacementDecision,
  type PlacementRequest,
  type PoolCandidate,
  placeVolume,
  Scheduler,
} from "@stowage/scheduler";
import { getHost, getPool, loadClusterViewRows, type Queryable } from "@stowage/store";
import type { ControllerContext } from "./context.js";

/** Builds the scheduler's in-memory view from the database (pools, ledger numbers, hosts, NUMA, groups). */
export async function loadClusterView(sql: Queryable): Promise<ClusterView> {
  const { pools: rows, numa, groups } = await loadClusterViewRows(sql);
  const pools: PoolCandidate[] = rows.map(({ pool, hostState, hostSchedulable, zone, load }) => ({
    id: pool.id,
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
  }));
  return { pools, numa, groups };
}

/** Checks that hosts and pools named in constraints exist, so a typo gets NOT_FOUND rather than "no capacity". */
export async function checkConstraintTargets(sql: Queryable, req: PlacementRequest): Promise<void> {
  const c = req.constraints;
  if (c.poolId && !(await getPool(sql, c.poolId))) {
    throw notFound(`pool ${c.poolId} not found: list pools with \`stowctl pool list\``, { field: "pool" });
  }
  if (c.hostId && !(await getHost(sql, c.hostId))) {
    throw notFound(`host ${c.hostId} not found: list hosts with \`stowctl host list\``, { field: "host" });
  }
  if (c.numa?.hostId && !(await getHost(sql, c.numa.hostId))) {
    throw notFound(`host ${c.numa.hostId} (the VM's host) not found`, { field: "numa.host" });
  }
}

/** Counts a placement: its time since `startedAt`, its result (once per volume) and the filters that refused pools. */
function recordPlacement(
  ctx: ControllerContext,
  startedAt: number,
  feasible: boolean,
  decisions: readonly PlacementDecision[],
): void {
  ctx.metrics.schedulerDuration.observe((performance.now() - startedAt) / 1000);
  ctx.metrics.schedulerDecisions.inc({ result: feasible ? "placed" : "refused" }, decisions.length);
  for (const d of decisions)
    for (const c of d.candidates) if (!c.feasible) ctx.metrics.schedulerRefusals.inc({ filter: c.refusedBy });
}

/** Places a volume against a fresh view, recording metrics. */
export async function decide(ctx: ControllerContext, req: PlacementRequest): Promise<PlacementDecision> {
  const view = await loadClusterView(ctx.sql);
  const t0 = performance.now();
  const decision = placeVolume(view, req, { weights: ctx.config.schedulerWeights });
  recordPlacement(ctx, t0, decision.feasible, [decision]);
  return decision;
}

/** Places the disks of one VM all or nothing, against a fresh view, with explanations. */
export async function decideGroup(
  ctx: ControllerContext,
  reqs: PlacementRequest[],
): Promise<GroupPlacementDecision> {
  const view = await loadClusterView(ctx.sql);
  const t0 = performance.now();
  const group = new Scheduler(view, { weights: ctx.config.schedulerWeights }).placeGroup(reqs, {
    explain: true,
  });
  recordPlacement(ctx, t0, group.feasible, group.decisions);
  return group;
}
