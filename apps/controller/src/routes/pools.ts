import type { ServiceImpl } from "@connectrpc/connect";
import type { PoolService } from "@stowage/proto";
import { pageSize } from "@stowage/store";
import { actorOf } from "../auth.js";
import type { ControllerContext } from "../context.js";
import { poolKinds, poolToWire } from "../convert.js";
import { describePool, listPoolsPage, setPoolDraining } from "../pool-service.js";
import { after, nextPageToken } from "./paging.js";

export function poolRoutes(ctx: ControllerContext): ServiceImpl<typeof PoolService> {
  return {
    async listPools(req) {
      const limit = pageSize(req.pageSize);
      const kind = req.kind ? poolKinds.domain(req.kind) : undefined;
      const rows = await listPoolsPage(ctx, {
        hostId: req.hostId,
        ...(kind ? { kind } : {}),
        after: after(req.pageToken),
        limit,
      });
      return {
        pools: rows.map((p) => poolToWire(p.pool, p.zone)),
        nextPageToken: nextPageToken(rows, limit, (p) => p.pool.id),
      };
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
