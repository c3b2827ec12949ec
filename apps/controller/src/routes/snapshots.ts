import type { ServiceImpl } from "@connectrpc/connect";
import type { SnapshotService } from "@stowage/proto";
import type { OperationRow, SnapshotRow } from "@stowage/store";
import { actorOf } from "../auth.js";
import type { ControllerContext } from "../context.js";
import { snapshotToWire } from "../convert.js";
import {
  createSnapshot,
  deleteSnapshot,
  listSnapshotsPage,
  resolveSnapshot,
  revertSnapshot,
} from "../lifecycle-service.js";
import { resolveVolume } from "../volume-service.js";
import { paged } from "./paging.js";
import { operationReply } from "./replies.js";

const snapshotReply = (out: { snapshot: SnapshotRow; operation?: OperationRow }) => ({
  snapshot: snapshotToWire(out.snapshot),
  operation: operationReply(out.operation),
});

export function snapshotRoutes(ctx: ControllerContext): ServiceImpl<typeof SnapshotService> {
  return {
    createSnapshot: async (req, hc) => snapshotReply(await createSnapshot(ctx, req, actorOf(hc))),
    async getSnapshot(req) {
      const v = await resolveVolume(ctx.sql, req.volume);
      return { snapshot: snapshotToWire(await resolveSnapshot(ctx.sql, v, req.snapshot)) };
    },
    async listSnapshots(req) {
      const p = await paged(
        req,
        (page) => listSnapshotsPage(ctx, req.volume, page),
        (s) => s.snapshot.id,
        (s) => snapshotToWire(s.snapshot, s.cloneCount),
      );
      return { snapshots: p.rows, nextPageToken: p.nextPageToken };
    },
    deleteSnapshot: async (req, hc) => snapshotReply(await deleteSnapshot(ctx, req, actorOf(hc))),
    revertSnapshot: async (req, hc) => snapshotReply(await revertSnapshot(ctx, req, actorOf(hc))),
  };
}
