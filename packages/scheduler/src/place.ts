import { formatSize } from "@stowage/core";
import { DEFAULT_FILTERS, type Filter } from "./filters.js";
import { DEFAULT_SCORERS, DEFAULT_WEIGHTS, type Scorer } from "./scorers.js";
import type { CandidateVerdict, ClusterView, PlacementDecision, PlacementRequest } from "./types.js";

export interface SchedulerOptions {
  filters?: readonly Filter[];
  scorers?: readonly Scorer[];
  weights?: Readonly<Record<string, number>>;
}

/**
 * Places one volume: filter every pool (recording the first filter that refuses it), score the feasible ones
 * (weighted sum of normalised scores), select the best; ties go to the smallest pool id, so the same input
 * always gives the same answer.
 */
export function placeVolume(
  view: ClusterView,
  req: PlacementRequest,
  opts: SchedulerOptions = {},
): PlacementDecision {
  const filters = opts.filters ?? DEFAULT_FILTERS;
  const scorers = opts.scorers ?? DEFAULT_SCORERS;
  const weights = opts.weights ?? DEFAULT_WEIGHTS;
  let maxVolumeCount = 0;
  for (const p of view.pools) if (p.volumeCount > maxVolumeCount) maxVolumeCount = p.volumeCount;

  const feasible: CandidateVerdict[] = [];
  const refused: CandidateVerdict[] = [];
  for (const pool of view.pools) {
    let refusedBy = "";
    let reason: string | null = null;
    for (const f of filters) {
      reason = f.refuse(pool, req, view);
      if (reason !== null) {
        refusedBy = f.name;
        break;
      }
    }
    if (reason !== null) {
      refused.push({
        poolId: pool.id,
        hostId: pool.hostId,
        feasible: false,
        refusedBy,
        reason,
        score: 0,
        scores: [],
      });
      continue;
    }
    const scores = scorers.map((s) => ({
      scorer: s.name,
      value: s.score(pool, req, { maxVolumeCount }),
      weight: weights[s.name] ?? 1,
    }));
    const score = scores.reduce((sum, s) => sum + s.value * s.weight, 0);
    feasible.push({
      poolId: pool.id,
      hostId: pool.hostId,
      feasible: true,
      refusedBy: "",
      reason: "",
      score,
      scores,
    });
  }
  feasible.sort((a, b) => b.score - a.score || (a.poolId < b.poolId ? -1 : a.poolId > b.poolId ? 1 : 0));
  refused.sort((a, b) => (a.poolId < b.poolId ? -1 : 1));
  const candidates = [...feasible, ...refused];
  const best = feasible[0];
  if (!best) {
    return {
      feasible: false,
      poolId: "",
      hostId: "",
      numaNode: null,
      cpuSet: "",
      candidates,
      summary: refusalSummary(req, refused),
    };
  }
  const pool = view.pools.find((p) => p.id === best.poolId)!;
  const cpuSet =
    pool.numaNode === null
      ? ""
      : (view.numa.get(pool.hostId)?.find((n) => n.id === pool.numaNode)?.cpuList ?? "");
  return {
    feasible: true,
    poolId: pool.id,
    hostId: pool.hostId,
    numaNode: pool.numaNode,
    cpuSet,
    candidates,
    summary: `placed ${formatSize(req.sizeBytes)} ${req.format} on ${pool.id}${pool.numaNode === null ? "" : ` (NUMA node ${pool.numaNode})`}: best of ${feasible.length} feasible of ${view.pools.length} pools, score ${best.score.toFixed(3)}`,
  };
}

function refusalSummary(req: PlacementRequest, refused: CandidateVerdict[]): string {
  if (refused.length === 0) return "no pools are known: is any agent registered?";
  const counts = new Map<string, number>();
  for (const r of refused) counts.set(r.refusedBy, (counts.get(r.refusedBy) ?? 0) + 1);
  const parts = [...counts.entries()].sort((a, b) => b[1] - a[1]).map(([f, n]) => `${n} by ${f}`);
  return `no pool can take ${formatSize(req.sizeBytes)} ${req.format}: ${refused.length} refused (${parts.join(", ")})`;
}

/** True when the only thing stopping a placement is capacity (RESOURCE_EXHAUSTED rather than FAILED_PRECONDITION). */
export function refusedOnlyForCapacity(decision: PlacementDecision): boolean {
  const relevant = decision.candidates.filter(
    (c) => c.refusedBy !== "selector" && c.refusedBy !== "pool-kind",
  );
  return relevant.length > 0 && relevant.some((c) => c.refusedBy === "capacity");
}
