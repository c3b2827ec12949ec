import { room } from "./capacity.js";
import type { Columns } from "./columns.js";
import type { CompiledRequest } from "./request.js";

/**
 * The scorers (Nomad's rank iterators, LINSTOR's strategies): each rates a feasible pool from 0 (worst) to 1
 * (best), normalised by the view's largest value where it needs one; a pool's score is the sum of the ratings,
 * each times its scorer's weight. Like the filters, `score` runs inlined in the select loop: numbers only.
 */
export interface Scorer {
  /** What it prefers, in a few words. */
  prefers: string;
  /** Its weight unless the options say otherwise. */
  weight: number;
  score(c: Columns, r: CompiledRequest, i: number): number;
}

const SCORER_TABLE = {
  "free-space": {
    prefers: "the most room left after the volume (binpack: the least)",
    weight: 1,
    score: (c, r, i) => {
      let left = (room(c.headroom[i]!, c.reserved[i]!) - r.size) * c.invLimit[i]!;
      left = left < 0 ? 0 : left > 1 ? 1 : left;
      return r.binpack ? 1 - left : left;
    },
  },
  "numa-locality": {
    prefers: "the VM's NUMA node on the VM's host (its host alone: half)",
    weight: 2,
    score: (c, r, i) =>
      c.host[i] === r.numaHost ? (r.numaNode < 0 || c.numaNode[i] === r.numaNode ? 1 : 0.5) : 0,
  },
  "fewest-volumes": {
    prefers: "pools holding fewer volumes",
    weight: 0.25,
    score: (c, r, i) => 1 - c.count[i]! * r.invMaxCount,
  },
  "pool-load": {
    prefers: "pools with less work in flight",
    weight: 0.25,
    score: (c, _r, i) => 1 - c.load[i]! * c.invMaxLoad,
  },
} satisfies Record<string, Scorer>;

export type ScorerName = keyof typeof SCORER_TABLE;

/** The scorers by name, in the order their ratings are summed. */
export const SCORERS = Object.keys(SCORER_TABLE) as readonly ScorerName[];

export const scorer = (name: ScorerName): Scorer => SCORER_TABLE[name];

export const DEFAULT_WEIGHTS: Readonly<Record<ScorerName, number>> = Object.fromEntries(
  SCORERS.map((name) => [name, SCORER_TABLE[name].weight]),
) as Record<ScorerName, number>;

/** The weights of the options over the defaults, by name. */
export function weightsOf(weights: Partial<Record<ScorerName, number>> = {}): Record<ScorerName, number> {
  return { ...DEFAULT_WEIGHTS, ...weights };
}
