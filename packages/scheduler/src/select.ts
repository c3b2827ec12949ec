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

type SelectLoop = (
  c: Columns,
  r: CompiledRequest,
  weights: Float64Array,
  only: readonly number[] | undefined,
  counts: Int32Array,
  codes: Uint8Array | undefined,
) => Selection;

/**
 * The select loop (Nomad's select.go, LINSTOR's Selector), generated once from the filter and scorer tables:
 *
 *   for each pool: if (filter1.refuses) { count refusal 1; next } ... if (filterN.refuses) { ... }
 *                  score = w1 x scorer1 + ... + wM x scorerM; keep the best (ties: the smallest pool id)
 *
 * Each filter and scorer is called from a call site of its own, which only ever sees that one function, so
 * V8 inlines them all and the loop runs as the hand-written if-chain would: no call, no allocation per pool.
 * (A loop over the table would have one call site that sees every filter, which V8 does not inline; the
 * chain as a function of its own, called from the loop, measured about a third slower here.) The generated
 * text holds only indexes; the rules live in the tables. With `record`, the loop also writes each pool's
 * refusal code (0: feasible) for the explanations.
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
    return function selectLoop(c, r, weights, only, counts, codes) {
      ${SCORERS.map((_, k) => `const w${k} = weights[${k}];`).join(" ")}
      const rank = c.rank;
      const m = only === undefined ? c.n : only.length;
      let best = -1;
      let bestScore = -Infinity;
      let feasible = 0;
      for (let k = 0; k < m; k++) {
        const i = only === undefined ? k : only[k];
        ${filters.join("\n        ")}
        ${mark(0)}feasible++;
        const score = ${score};
        if (score > bestScore || (score === bestScore && rank[i] < rank[best])) {
          best = i;
          bestScore = score;
        }
      }
      return { best, score: bestScore, feasible };
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
  );
  return loop;
}

const selectLoop = warmedUp(generateSelectLoop(false));
const recordingLoop = warmedUp(generateSelectLoop(true));

/** The filters that can pin a request to a few pools, with their refusal codes, in table order. */
const PINS = FILTER_TABLE.flatMap((f, k) => (f.admits ? [{ code: k + 1, admits: f.admits }] : []));

/**
 * The fast path: judges every pool (only the pools the request pins itself to, when it does) and keeps the
 * best. `counts` gets the refusals per code (see filters.ts); the pools a pin leaves out count for its filter.
 */
export function select(c: Columns, r: CompiledRequest, weights: Float64Array, counts: Int32Array): Selection {
  counts.fill(0);
  for (const pin of PINS) {
    const only = pin.admits(c, r);
    if (only === undefined) continue;
    const s = selectLoop(c, r, weights, only, counts, undefined);
    counts[pin.code]! += c.n - only.length;
    return s;
  }
  return selectLoop(c, r, weights, undefined, counts, undefined);
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
  recordingLoop(c, r, weights, undefined, counts, codes);
}
