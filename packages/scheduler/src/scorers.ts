import { headroom, provisionLimit } from "./capacity.js";
import type { PlacementRequest, PoolCandidate } from "./types.js";

/** A scorer rates a feasible pool from 0 (worst) to 1 (best). */
export interface Scorer {
  name: string;
  score(pool: PoolCandidate, req: PlacementRequest, ctx: ScoreContext): number;
}

export interface ScoreContext {
  maxVolumeCount: number;
}

function freeFractionAfter(pool: PoolCandidate, bytes: bigint): number {
  const limit = provisionLimit(pool);
  if (limit <= 0n) return 0;
  const after = headroom(pool) - bytes;
  return Math.max(0, Math.min(1, Number((after * 10000n) / limit) / 10000));
}

/** Spread: the most free space after placement wins. Bin-pack: the fullest that still fits wins. */
export const freeSpaceScorer: Scorer = {
  name: "free-space",
  score(pool, req) {
    const free = freeFractionAfter(pool, req.sizeBytes);
    return req.constraints.strategy === "binpack" ? 1 - free : free;
  },
};

/** NUMA locality to the VM: 1 on its node, 0.5 on its host (another node or none), 0 elsewhere. */
export const numaLocalityScorer: Scorer = {
  name: "numa-locality",
  score(pool, req) {
    const numa = req.constraints.numa;
    if (!numa) return 0;
    if (pool.hostId !== numa.hostId) return 0;
    if (numa.node === undefined) return 1;
    return pool.numaNode === numa.node ? 1 : 0.5;
  },
};

export const fewestVolumesScorer: Scorer = {
  name: "fewest-volumes",
  score(pool, _req, ctx) {
    return ctx.maxVolumeCount === 0 ? 1 : 1 - pool.volumeCount / ctx.maxVolumeCount;
  },
};

export const DEFAULT_WEIGHTS: Readonly<Record<string, number>> = {
  "free-space": 1,
  "numa-locality": 2,
  "fewest-volumes": 0.25,
};

export const DEFAULT_SCORERS: readonly Scorer[] = [freeSpaceScorer, numaLocalityScorer, fewestVolumesScorer];
