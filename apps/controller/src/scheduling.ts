import { notFound } from "@stowage/core";
import type { GroupPlacementDecision, PlacementDecision, PlacementRequest } from "@stowage/scheduler";
import { getHost, getPool, type Queryable } from "@stowage/store";
import type { ControllerContext } from "./context.js";
import { type Hold, LiveView } from "./live-view.js";

/**
 * The controller's live placement view (live-view.ts): made with the context (controller.ts), or on first use
 * for a context made without one (the services' test fixture).
 */
export function liveView(ctx: ControllerContext): LiveView {
  ctx.placement ??= new LiveView(ctx.db, { weights: ctx.config.schedulerWeights, log: ctx.log });
  return ctx.placement;
}

/**
 * Checks that hosts and pools named in constraints exist, so a typo gets NOT_FOUND rather than "no capacity". One
 * the database has and the live view has not seen yet (another controller registered it a moment ago) is read
 * into the view first, so the placement judges it.
 */
export async function checkConstraintTargets(
  sql: Queryable,
  req: PlacementRequest,
  view?: LiveView,
): Promise<void> {
  const c = req.constraints;
  const unseen: string[] = [];
  const hostExists = async (id: string) => {
    if (view?.knowsHost(id)) return true;
    if (!(await getHost(sql, id))) return false;
    unseen.push(id);
    return true;
  };
  if (c.poolId && !view?.knowsPool(c.poolId)) {
    const pool = await getPool(sql, c.poolId);
    if (!pool) {
      throw notFound(`pool ${c.poolId} not found: list pools with \`stowctl pool list\``, { field: "pool" });
    }
    unseen.push(pool.hostId);
  }
  if (c.hostId && !(await hostExists(c.hostId))) {
    throw notFound(`host ${c.hostId} not found: list hosts with \`stowctl host list\``, { field: "host" });
  }
  if (c.numa?.hostId && !(await hostExists(c.numa.hostId))) {
    throw notFound(`host ${c.numa.hostId} (the VM's host) not found`, { field: "numa.host" });
  }
  if (view && unseen.length > 0) await view.refresh(unseen);
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
    for (const [filter, n] of d.refusals ?? []) ctx.metrics.schedulerRefusals.inc({ filter }, n);
}

export interface DecideOptions {
  /** Every pool's verdict (ExplainPlacement, dry runs); off for CreateVolume. */
  explain?: boolean;
  /** Hold the placement in the live view (the caller commits or releases it with its transaction). */
  hold?: boolean;
}

/**
 * Places a volume on the live view, recording metrics. The duration covers the whole decision: the view's
 * readiness, the request's anti-affinity group and the select.
 */
export async function decide(
  ctx: ControllerContext,
  req: PlacementRequest,
  opts: DecideOptions = {},
): Promise<{ decision: PlacementDecision; hold?: Hold }> {
  const t0 = performance.now();
  const view = liveView(ctx);
  await view.ready();
  const groups = await view.groupMembers([req]);
  const out = view.place(req, groups, opts);
  recordPlacement(ctx, t0, out.decision.feasible, [out.decision]);
  return out;
}

/** Places the disks of one VM all or nothing on the live view. */
export async function decideGroup(
  ctx: ControllerContext,
  reqs: PlacementRequest[],
  opts: DecideOptions = {},
): Promise<{ group: GroupPlacementDecision; holds: Hold[] }> {
  const t0 = performance.now();
  const view = liveView(ctx);
  await view.ready();
  const groups = await view.groupMembers(reqs);
  const out = view.placeGroup(reqs, groups, opts);
  recordPlacement(ctx, t0, out.group.feasible, out.group.decisions);
  return out;
}
