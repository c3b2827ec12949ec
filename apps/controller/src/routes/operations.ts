import type { ServiceImpl } from "@connectrpc/connect";
import { notFound } from "@stowage/core";
import type { OperationService } from "@stowage/proto";
import { getOperation, listOperations, operationsChangedAfter, type Queryable } from "@stowage/store";
import { operationStates } from "@stowage/wire";
import type { ControllerContext } from "../context.js";
import { operationToWire } from "../convert.js";
import { resolveVolume } from "../volume-service.js";
import { paged } from "./paging.js";
import { watchChanges } from "./watch.js";

export function operationRoutes(ctx: ControllerContext): ServiceImpl<typeof OperationService> {
  const describe = async (id: string, sql: Queryable = ctx.sql) => {
    const o = await getOperation(sql, id);
    if (!o) throw notFound(`operation ${id} not found`);
    return o;
  };
  return {
    async getOperation(req) {
      return { operation: operationToWire(await describe(req.operationId)) };
    },
    async listOperations(req) {
      const state = operationStates.optional(req.state, "state");
      const volumeId = req.volumeId ? (await resolveVolume(ctx.sql, req.volumeId)).id : "";
      const filter = { volumeId, hostId: req.hostId, ...(state ? { state } : {}) };
      const p = await paged(
        req,
        (page) => listOperations(ctx.sql, { ...filter, ...page }),
        (o) => o.id,
        operationToWire,
      );
      return { operations: p.rows, nextPageToken: p.nextPageToken };
    },
    watchOperations(req, hc) {
      const filter: { id?: string; volumeId?: string } = {};
      if (req.operationId) filter.id = req.operationId;
      return watchChanges(ctx, hc, {
        async start(sql) {
          if (req.volumeId) filter.volumeId = (await resolveVolume(sql, req.volumeId)).id;
          const initial = await listOperations(sql, {
            ...(filter.volumeId ? { volumeId: filter.volumeId } : {}),
            limit: 1000,
          });
          if (!filter.id) return initial;
          const first = initial.filter((o) => o.id === filter.id);
          return first.length ? first : [await describe(filter.id, sql)];
        },
        changedAfter: (snapshot) => operationsChangedAfter(ctx.sql, snapshot, filter),
        toMessage: (o) => ({ operation: operationToWire(o) }),
      });
    },
  };
}
