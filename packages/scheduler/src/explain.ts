import { formatSize } from "@stowage/core";
import type { Columns } from "./columns.js";
import { filterOf } from "./filters.js";
import type { CompiledRequest } from "./request.js";
import { SCORERS, type ScorerName, scorer } from "./scorers.js";
import { judgeEvery, type Selection } from "./select.js";
import type { CandidateVerdict, PlacementDecision, ScoreComponent } from "./types.js";

/**
 * The explained path (dry runs, `stowctl placement explain`, and the controller's decisions): every pool is
 * judged by the select loop, pinned or not, with its refusal code recorded; each refused pool gets its filter's
 * reason, each feasible one its rating by every scorer, by name; the best is the first after sorting. A
 * property test holds it to the fast path's choice.
 */
export interface Explanation extends Selection {
  /** Feasible candidates best first, then the refused ones, each group in pool id order among equals. */
  candidates: CandidateVerdict[];
}

export function explain(
  c: Columns,
  r: CompiledRequest,
  weights: Readonly<Record<ScorerName, number>>,
  weightList: Float64Array,
  counts: Int32Array,
): Explanation {
  const codes = new Uint8Array(c.n);
  judgeEvery(c, r, weightList, counts, codes);
  const feasible: CandidateVerdict[] = [];
  const refused: CandidateVerdict[] = [];
  for (let i = 0; i < c.n; i++) {
    // Each verdict is one literal (not a spread of a shared part): V8 keeps them all of one fast shape.
    const poolId = c.ids[i]!;
    const hostId = c.reachHostId(i, r.host);
    const code = codes[i]!;
    if (code !== 0) {
      const f = filterOf(code);
      refused.push({
        poolId,
        hostId,
        feasible: false,
        refusedBy: f.name,
        reason: f.reason(c, r, i),
        score: 0,
        scores: [],
      });
      continue;
    }
    const scores: ScoreComponent[] = new Array(SCORERS.length);
    let score = 0;
    for (let k = 0; k < SCORERS.length; k++) {
      const name = SCORERS[k]!;
      const value = scorer(name).score(c, r, i);
      scores[k] = { scorer: name, value, weight: weights[name] };
      score += weights[name] * value;
    }
    feasible.push({ poolId, hostId, feasible: true, refusedBy: "", reason: "", score, scores });
  }
  const rankOf = (v: CandidateVerdict) => c.rank[c.poolIndex.get(v.poolId)!]!;
  feasible.sort((a, b) => b.score - a.score || rankOf(a) - rankOf(b));
  refused.sort((a, b) => rankOf(a) - rankOf(b));
  const top = feasible[0];
  return {
    best: top ? c.poolIndex.get(top.poolId)! : -1,
    score: top ? top.score : Number.NEGATIVE_INFINITY,
    feasible: feasible.length,
    candidates: [...feasible, ...refused],
  };
}

/** The decision for a selection: the pool, its NUMA node and CPU set, and a summary of why. */
export function decision(
  c: Columns,
  r: CompiledRequest,
  s: Selection,
  refusals: Map<string, number>,
  candidates: CandidateVerdict[],
): PlacementDecision {
  const req = r.req;
  if (s.best < 0) {
    return {
      feasible: false,
      poolId: "",
      hostId: "",
      numaNode: null,
      cpuSet: "",
      candidates,
      summary: refusalSummary(c, r, refusals),
      refusals,
      poolsConsidered: c.n,
    };
  }
  const poolId = c.ids[s.best]!;
  // A shared pool is reached through its owner or an attached host; the pool's NUMA node is its owner's.
  const hostId = c.reachHostId(s.best, r.host);
  const node = hostId === c.pools[s.best]!.hostId ? c.numaNode[s.best]! : -1;
  const cpuSet = node < 0 ? "" : (c.numa.get(hostId)?.find((x) => x.id === node)?.cpuList ?? "");
  return {
    feasible: true,
    poolId,
    hostId,
    numaNode: node < 0 ? null : node,
    cpuSet,
    candidates,
    summary: `placed ${formatSize(req.sizeBytes)} ${req.format} on ${poolId}${node < 0 ? "" : ` (NUMA node ${node})`}: best of ${s.feasible} feasible of ${c.n} pools, score ${s.score.toFixed(3)}`,
    refusals,
    poolsConsidered: c.n,
  };
}

function refusalSummary(c: Columns, r: CompiledRequest, refusals: Map<string, number>): string {
  if (c.n === 0) return "no pools are known: is any agent registered?";
  const parts = [...refusals.entries()]
    .sort((a, b) => b[1] - a[1] || (a[0] < b[0] ? -1 : 1))
    .map(([f, k]) => `${k} by ${f}`);
  return `no pool can take ${formatSize(r.req.sizeBytes)} ${r.req.format}: ${c.n} refused (${parts.join(", ")})`;
}
