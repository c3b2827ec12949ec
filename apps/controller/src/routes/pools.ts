import type { ServiceImpl } from "@connectrpc/connect";
import type { PoolService } from "@stowage/proto";
import { poolKinds } from "@stowage/wire";
import { actorOf } from "../auth.js";
import type { ControllerContext } from "../context.js";
import { poolToWire } from "../convert.js";
import { describePool, listPoolsPage, setPoolDraining } from "../pool-service.js";
import { paged } from "./paging.js";

export function poolRoutes(ctx: ControllerContext): ServiceImpl<typeof PoolService> {
  return {
    async listPools(req) {
      const kind = poolKinds.optional(req.kind, "kind");
      const filter = { hostId: req.hostId, ...(kind ? { kind } : {}) };
      const p = await paged(
        req,
        (page) => listPoolsPage(ctx, { ...filter, ...page }),
        (r) => r.pool.id,
        (r) => poolToWire(r.pool, r.zone),
      );
      return { pools: p.rows, nextPageToken: p.nextPageToken };
    },
    async getPool(req) {
      const p = await describePool(ctx, req.poolId);
      return { pool: poolToWire(p.pool, p.zone) };
    },
    async setPoolDraining(req, hc) {
      return { pool: poolToWire(await setPoolDraining(ctx, req, actorOf(hc))) };
    },
  };
}
