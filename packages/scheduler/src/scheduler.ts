import { Columns } from "./columns.js";
import { decision, explain } from "./explain.js";
import { FILTER_TABLE, refusalsByName } from "./filters.js";
import { placeGroup } from "./group.js";
import { compileRequest } from "./request.js";
import { SCORERS, type ScorerName, scorer, weightsOf } from "./scorers.js";
import { select, TopPools } from "./select.js";
import type {
  CandidateVerdict,
  ClusterView,
  GroupPlacementDecision,
  PlacementDecision,
  PlacementRequest,
} from "./types.js";

export { Columns } from "./columns.js";
export { FILTERS } from "./filters.js";
export { DEFAULT_WEIGHTS, SCORERS, type ScorerName } from "./scorers.js";

/**
 * The placement engine: filter, score, select (Nomad's `scheduler/feasible/`, LINSTOR's autoplacer), one
 * concern per file:
 *
 *   columns.ts   the cluster view as typed-array columns        capacity.ts  the one capacity rule
 *   request.ts   the request compiled to indexes and masks      filters.ts   the table of filters
 *   scorers.ts   the scorers by name, with their weights        select.ts    the select loop (fast path)
 *   explain.ts   the explained path and the decision's text     group.ts     all-or-nothing group placement
 *
 * `explain: false` keeps only the best pool; `explain: true` records every pool's verdict (the first filter
 * that refused it, or its scores). Both read the same tables, so an explanation is the decision's own. The
 * scheduler's view may be stale; the ledger's conditional UPDATE in PostgreSQL has the last word.
 */

export interface SchedulerOptions {
  weights?: Partial<Record<ScorerName, number>>;
}

export interface PlaceOptions {
  /** Record every candidate's verdict (dry runs, explanations); off on the hot path. */
  explain?: boolean;
}

/** Without an explanation, a decision names the best this many pools, with their scores. */
export const TOP_CANDIDATES = 3;

export class Scheduler {
  readonly n: number;
  private readonly columns: Columns;
  private readonly weights: Record<ScorerName, number>;
  /** The weights in the scorers' order, for the select loop. */
  private readonly weightList: Float64Array;
  /** Refusals per code (filters.ts) and the best few pools, reused by every decision. */
  private readonly counts = new Int32Array(FILTER_TABLE.length + 1);
  private readonly top = new TopPools(TOP_CANDIDATES);

  /** Over a view (built into columns here), or over live columns that the caller keeps up to date. */
  constructor(view: ClusterView | Columns, opts: SchedulerOptions = {}) {
    this.columns = view instanceof Columns ? view : new Columns(view);
    this.n = this.columns.n;
    this.weights = weightsOf(opts.weights);
    this.weightList = Float64Array.from(SCORERS, (name) => this.weights[name]);
  }

  /** Places one volume. Deterministic: the same view and request give the same answer. */
  place(req: PlacementRequest, opts: PlaceOptions = {}): PlacementDecision {
    const c = this.columns;
    const r = compileRequest(c, req);
    if (opts.explain) {
      const e = explain(c, r, this.weights, this.weightList, this.counts);
      return decision(c, r, e, refusalsByName(this.counts), e.candidates);
    }
    const s = select(c, r, this.weightList, this.counts, this.top);
    return decision(c, r, s, refusalsByName(this.counts), topCandidates(c, r, this.top, this.weights));
  }

  /** Records a placement in the in-memory view, as the ledger will (so a run of placements sees its own effect). */
  reserve(poolId: string, bytes: bigint | number, group?: { name: string }): void {
    const i = this.columns.poolIndex.get(poolId);
    if (i !== undefined) this.columns.reserve(i, Number(bytes), group?.name);
  }

  /**
   * Places the disks of one VM all or nothing: the largest first, each seeing the ones before it. Nothing is
   * kept in the view; the caller reserves the result in the ledger in one transaction.
   */
  placeGroup(reqs: readonly PlacementRequest[], opts: PlaceOptions = {}): GroupPlacementDecision {
    return placeGroup(this.columns, reqs, (req) => this.place(req, opts));
  }
}

/** The verdicts of the best few pools of a fast selection, best first, each with its scores. */
function topCandidates(
  c: Columns,
  r: ReturnType<typeof compileRequest>,
  top: TopPools,
  weights: Readonly<Record<ScorerName, number>>,
): CandidateVerdict[] {
  const out: CandidateVerdict[] = [];
  for (let k = 0; k < top.found; k++) {
    const i = top.pools[k]!;
    out.push({
      poolId: c.ids[i]!,
      hostId: c.reachHostId(i, r.host),
      feasible: true,
      refusedBy: "",
      reason: "",
      score: top.scores[k]!,
      scores: SCORERS.map((name) => ({
        scorer: name,
        value: scorer(name).score(c, r, i),
        weight: weights[name],
      })),
    });
  }
  return out;
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
