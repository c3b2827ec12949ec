import type { ServiceImpl } from "@connectrpc/connect";
import { VolumeEventType, type VolumeService } from "@stowage/proto";
import {
  listVolumes,
  type OperationRow,
  pageSize,
  type VolumeRow,
  volumesChangedSince,
} from "@stowage/store";
import { actorOf } from "../auth.js";
import type { ControllerContext } from "../context.js";
import { operationToWire, placementToWire, volumeStates, volumeToWire } from "../convert.js";
import { cloneVolume, resizeVolume } from "../lifecycle-service.js";
import {
  type CreateVolumeOutcome,
  createVolume,
  createVolumeGroup,
  deleteVolume,
  resolveVolume,
} from "../volume-service.js";
import { after, nextPageToken } from "./paging.js";
import { watchChanges } from "./watch.js";

/** A volume and the operation changing it, as the mutating calls answer. */
function volumeReply(out: { volume: VolumeRow; operation?: OperationRow }) {
  return {
    volume: volumeToWire(out.volume),
    operation: out.operation ? operationToWire(out.operation) : undefined,
  };
}

function createReply(out: CreateVolumeOutcome) {
  return {
    volume: out.volume ? volumeToWire(out.volume) : undefined,
    operation: out.operation ? operationToWire(out.operation) : undefined,
    placement: placementToWire(out.placement),
  };
}

export function volumeRoutes(ctx: ControllerContext): ServiceImpl<typeof VolumeService> {
  return {
    createVolume: async (req, hc) => createReply(await createVolume(ctx, req, actorOf(hc))),
    createVolumeGroup: async (req, hc) => ({
      volumes: (await createVolumeGroup(ctx, req, actorOf(hc))).map(createReply),
    }),
    async getVolume(req) {
      return { volume: volumeToWire(await resolveVolume(ctx.sql, req.volume)) };
    },
    async listVolumes(req) {
      const limit = pageSize(req.pageSize);
      const state = req.state ? volumeStates.domain(req.state) : undefined;
      const rows = await listVolumes(ctx.sql, {
        ...(req.poolId ? { poolId: req.poolId } : {}),
        ...(req.hostId ? { hostId: req.hostId } : {}),
        ...(state ? { state } : {}),
        namePrefix: req.namePrefix,
        labels: req.labels,
        showDeleted: req.showDeleted,
        after: after(req.pageToken),
        limit,
      });
      return { volumes: rows.map(volumeToWire), nextPageToken: nextPageToken(rows, limit, (v) => v.id) };
    },
    deleteVolume: async (req, hc) => volumeReply(await deleteVolume(ctx, req, actorOf(hc))),
    resizeVolume: async (req, hc) => volumeReply(await resizeVolume(ctx, req, actorOf(hc))),
    cloneVolume: async (req, hc) => volumeReply(await cloneVolume(ctx, req, actorOf(hc))),
    watchVolumes(req, hc) {
      const filter: { id?: string; poolId?: string } = {};
      if (req.poolId) filter.poolId = req.poolId;
      return watchChanges(ctx, hc, {
        async start() {
          if (req.volume) {
            const v = await resolveVolume(ctx.sql, req.volume);
            filter.id = v.id;
            return [v];
          }
          return listVolumes(ctx.sql, { ...(filter.poolId ? { poolId: filter.poolId } : {}), limit: 10_000 });
        },
        changedSince: (since) => volumesChangedSince(ctx.sql, since, filter),
        toMessage: (v, first) => ({
          type: first ? VolumeEventType.SNAPSHOT : VolumeEventType.CHANGED,
          volume: volumeToWire(v),
        }),
      });
    },
  };
}
