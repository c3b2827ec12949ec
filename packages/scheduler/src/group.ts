import type { Columns } from "./columns.js";
import type { GroupPlacementDecision, PlacementDecision, PlacementRequest } from "./types.js";

/** The decision of a disk left unplaced because another disk of its group does not fit. */
const notPlaced = (): PlacementDecision => ({
  feasible: false,
  poolId: "",
  hostId: "",
  numaNode: null,
  cpuSet: "",
  candidates: [],
  summary: "not placed: another disk of the group does not fit",
});

/**
 * Places the disks of one VM all or nothing: the largest first, each seeing the ones placed before it (`place`
 * decides one disk against the columns as they are). Nothing is kept in the view; the caller reserves the
 * result in the ledger in one transaction.
 */
export function placeGroup(
  c: Columns,
  reqs: readonly PlacementRequest[],
  place: (req: PlacementRequest) => PlacementDecision,
): GroupPlacementDecision {
  const saved = c.save();
  try {
    const order = [...reqs.keys()].sort((a, b) => {
      const d = Number(reqs[b]!.sizeBytes - reqs[a]!.sizeBytes);
      return d !== 0 ? d : a - b;
    });
    const decisions: PlacementDecision[] = new Array(reqs.length);
    for (const k of order) {
      const req = reqs[k]!;
      const d = place(req);
      decisions[k] = d;
      if (!d.feasible) {
        for (const j of reqs.keys()) decisions[j] ??= notPlaced();
        return {
          feasible: false,
          decisions,
          summary: `the group cannot be placed: ${req.name}: ${d.summary}`,
        };
      }
      c.reserve(c.poolIndex.get(d.poolId)!, Number(req.sizeBytes), req.constraints.antiAffinityGroup);
    }
    const pools = new Set(decisions.map((d) => d.poolId));
    return {
      feasible: true,
      decisions,
      summary: `placed ${reqs.length} volumes on ${[...pools].join(", ")}`,
    };
  } finally {
    c.restore(saved);
  }
}
