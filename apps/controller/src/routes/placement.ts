import type { ServiceImpl } from "@connectrpc/connect";
import { invalidArgument } from "@stowage/core";
import type { PlacementService } from "@stowage/proto";
import type { ControllerContext } from "../context.js";
import { placementToWire } from "../convert.js";
import { checkConstraintTargets, decide, decideGroup, liveView } from "../scheduling.js";
import { placementRequestFromWire } from "../validate.js";

/** PlacementService: dry-run placement, explained candidate by candidate. */
export function placementRoutes(ctx: ControllerContext): ServiceImpl<typeof PlacementService> {
  return {
    async explainPlacement(req) {
      const r = placementRequestFromWire(req.volume);
      await checkConstraintTargets(ctx.sql, r, liveView(ctx));
      const { decision: d } = await decide(ctx, r, { explain: true });
      return { feasible: d.feasible, placement: placementToWire(d) };
    },
    async explainGroupPlacement(req) {
      if (req.volumes.length === 0)
        throw invalidArgument("volumes is empty: a group needs at least one volume");
      const reqs = req.volumes.map((v) => placementRequestFromWire(v));
      for (const r of reqs) await checkConstraintTargets(ctx.sql, r, liveView(ctx));
      const { group: g } = await decideGroup(ctx, reqs, { explain: true });
      return { feasible: g.feasible, placements: g.decisions.map(placementToWire), summary: g.summary };
    },
  };
}
