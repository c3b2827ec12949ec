import type { ServiceImpl } from "@connectrpc/connect";
import type { SnapshotService } from "@stowage/proto";
import { type OperationRow, pageSize, type SnapshotRow } from "@stowage/store";
import { actorOf } from "../auth.js";
import type { ControllerContext } from "../context.js";
import { operationToWire, snapshotToWire } from "../convert.js";
import {
  createSnapshot,
  deleteSnapshot,
  listSnapshotsPage,
  resolveSnapshot,
  revertSnapshot,
} from "../lifecycle-service.js";
import { resolveVolume } from "../volume-service.js";
import { after, nextPageToken } from "./paging.js";

function snapshotReply(out: { snapshot: SnapshotRow; operation?: OperationRow }) {
  return {
    snapshot: snapshotToWire(out.snapshot),
    operation: out.operation ? operationToWire(out.operation) : undefined,
  };
}

export function snapshotRoutes(ctx: ControllerContext): ServiceImpl<typeof SnapshotService> {
  return {
    createSnapshot: async (req, hc) => snapshotReply(await createSnapshot(ctx, req, actorOf(hc))),
    async getSnapshot(req) {
      const v = await resolveVolume(ctx.sql, req.volume);
      return { snapshot: snapshotToWire(await resolveSnapshot(ctx.sql, v, req.snapshot)) };
    },
    async listSnapshots(req) {
      const limit = pageSize(req.pageSize);
      const rows = await listSnapshotsPage(ctx, req.volume, { after: after(req.pageToken), limit });
      return {
        snapshots: rows.map((s) => snapshotToWire(s.snapshot, s.cloneCount)),
        nextPageToken: nextPageToken(rows, limit, (s) => s.snapshot.id),
      };
    },
    deleteSnapshot: async (req, hc) => snapshotReply(await deleteSnapshot(ctx, req, actorOf(hc))),
    revertSnapshot: async (req, hc) => snapshotReply(await revertSnapshot(ctx, req, actorOf(hc))),
  };
}
