import { Columns } from "./columns.js";
import { FILTER_TABLE } from "./filters.js";
import { type CompiledRequest, compileRequest } from "./request.js";
import { SCORERS, scorer } from "./scorers.js";

/** The outcome of the fast path: the best pool (-1: none), its score, and how many pools were feasible. */
export interface Selection {
  best: number;
  score: number;
  feasible: number;
}

/**
 * The best few pools of a selection, best first: `pools[k]` and `scores[k]` for k < `found`. Made once by the
 * caller and reused, so that the select loop keeps them without allocating.
 */
export class TopPools {
  readonly pools: Int32Array;
  readonly scores: Float64Array;
  found = 0;
  constructor(k: number) {
    this.pools = new Int32Array(Math.max(1, k));
    this.scores = new Float64Array(Math.max(1, k));
  }
}

type SelectLoop = (
  c: Columns,
  r: CompiledRequest,
  weights: Float64Array,
  only: readonly number[] | undefined,
  counts: Int32Array,
  codes: Uint8Array | undefined,
  top: TopPools,
) => Selection;

/**
 * The select loop (Nomad's select.go, LINSTOR's Selector), generated once from the filter and scorer tables:
 *
 *   for each pool: if (filter1.refuses) { count refusal 1; next } ... if (filterN.refuses) { ... }
 *                  score = w1 x scorer1 + ... + wM x scorerM; keep the best k (ties: the smallest pool id)
 *
 * Each filter and scorer is called from a call site of its own, which only ever sees that one function, so
 * V8 inlines them all and the loop runs as the hand-written if-chain would: no call, no allocation per pool.
 * (A loop over the table would have one call site that sees every filter, which V8 does not inline; the
 * chain as a function of its own, called from the loop, measured about a third slower here.) The generated
 * text holds only indexes; the rules live in the tables. With `record`, the loop also writes each pool's
 * refusal code (0: feasible) for the explanations. The best k are kept by insertion into `top` (k is small, and
 * most pools do not beat the k-th, one comparison against two locals).
 */
function generateSelectLoop(record: boolean): SelectLoop {
  const mark = (code: number) => (record ? `codes[i] = ${code}; ` : "");
  const filters = FILTER_TABLE.map(
    (_, k) => `if (f${k}(c, r, i)) { ${mark(k + 1)}counts[${k + 1}]++; continue; }`,
  );
  const score = SCORERS.map((_, k) => `w${k} * s${k}(c, r, i)`).join(" + ") || "0";
  const source = `
    const [${FILTER_TABLE.map((_, k) => `f${k}`).join(", ")}] = refuses;
    const [${SCORERS.map((_, k) => `s${k}`).join(", ")}] = scores;
    return function selectLoop(c, r, weights, only, counts, codes, top) {
      ${SCORERS.map((_, k) => `const w${k} = weights[${k}];`).join(" ")}
      const rank = c.rank;
      const m = only === undefined ? c.n : only.length;
      const topPools = top.pools;
      const topScores = top.scores;
      const K = topPools.length;
      let found = 0;
      let worstScore = -Infinity;
      let worstRank = 0;
      let feasible = 0;
      for (let k = 0; k < m; k++) {
        const i = only === undefined ? k : only[k];
        ${filters.join("\n        ")}
        ${mark(0)}feasible++;
        const score = ${score};
        if (found < K || score > worstScore || (score === worstScore && rank[i] < worstRank)) {
          let j = found < K ? found++ : K - 1;
          while (j > 0) {
            const s = topScores[j - 1];
            const p = topPools[j - 1];
            if (score > s || (score === s && rank[i] < rank[p])) {
              topScores[j] = s;
              topPools[j] = p;
              j--;
            } else break;
          }
          topScores[j] = score;
          topPools[j] = i;
          if (found === K) {
            worstScore = topScores[K - 1];
            worstRank = rank[topPools[K - 1]];
          }
        }
      }
      top.found = found;
      return { best: found > 0 ? topPools[0] : -1, score: found > 0 ? topScores[0] : -Infinity, feasible };
    };`;
  return new Function("refuses", "scores", source)(
    FILTER_TABLE.map((f) => f.refuses),
    SCORERS.map((name) => scorer(name).score),
  );
}

/**
 * Runs a loop once over no pools, so that the code after it has run before V8 optimizes the loop while it is
 * still running (on-stack replacement): otherwise that optimized code lacks feedback for the return and is
 * thrown away at the end of every long scan.
 */
function warmedUp(loop: SelectLoop): SelectLoop {
  const none = new Columns({ pools: [], numa: new Map(), groups: new Map() });
  const r = compileRequest(none, { name: "", sizeBytes: 0n, format: "raw", constraints: {} });
  loop(
    none,
    r,
    new Float64Array(SCORERS.length),
    undefined,
    new Int32Array(FILTER_TABLE.length + 1),
    new Uint8Array(0),
    new TopPools(1),
  );
  return loop;
}

const selectLoop = warmedUp(generateSelectLoop(false));
const recordingLoop = warmedUp(generateSelectLoop(true));

/** The filters that can pin a request to a few pools, with their refusal codes, in table order. */
const PINS = FILTER_TABLE.flatMap((f, k) => (f.admits ? [{ code: k + 1, admits: f.admits }] : []));

/**
 * The fast path: judges every pool (only the pools the request pins itself to, when it does) and keeps the
 * best (and the best few in `top`). `counts` gets the refusals per code (see filters.ts); the pools a pin
 * leaves out count for its filter.
 */
export function select(
  c: Columns,
  r: CompiledRequest,
  weights: Float64Array,
  counts: Int32Array,
  top: TopPools,
): Selection {
  counts.fill(0);
  for (const pin of PINS) {
    const only = pin.admits(c, r);
    if (only === undefined) continue;
    const s = selectLoop(c, r, weights, only, counts, undefined, top);
    counts[pin.code]! += c.n - only.length;
    return s;
  }
  return selectLoop(c, r, weights, undefined, counts, undefined, top);
}

/**
 * Judges every pool, pinned or not, writing each one's refusal code (0: feasible) into `codes` and the
 * refusals per code into `counts`: what the explanations are made of.
 */
export function judgeEvery(
  c: Columns,
  r: CompiledRequest,
  weights: Float64Array,
  counts: Int32Array,
  codes: Uint8Array,
): void {
  counts.fill(0);
  recordingLoop(c, r, weights, undefined, counts, codes, new TopPools(1));
}
