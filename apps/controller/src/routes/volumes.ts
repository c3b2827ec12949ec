import type { ServiceImpl } from "@connectrpc/connect";
import { VolumeEventType, type VolumeService } from "@stowage/proto";
import { listVolumes, type OperationRow, type VolumeRow, volumesChangedAfter } from "@stowage/store";
import { volumeStates } from "@stowage/wire";
import { actorOf } from "../auth.js";
import type { ControllerContext } from "../context.js";
import { placementToWire, volumeToWire } from "../convert.js";
import { cloneVolume, resizeVolume } from "../lifecycle-service.js";
import {
  type CreateVolumeOutcome,
  createVolume,
  createVolumeGroup,
  deleteVolume,
  resolveVolume,
} from "../volume-service.js";
import { paged } from "./paging.js";
import { operationReply } from "./replies.js";
import { watchChanges } from "./watch.js";

/** A volume and the operation changing it, as the mutating calls answer. */
const volumeReply = (out: { volume: VolumeRow; operation?: OperationRow }) => ({
  volume: volumeToWire(out.volume),
  operation: operationReply(out.operation),
});

const createReply = (out: CreateVolumeOutcome) => ({
  volume: out.volume ? volumeToWire(out.volume) : undefined,
  operation: operationReply(out.operation),
  placement: placementToWire(out.placement),
});

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
      const state = volumeStates.optional(req.state, "state");
      const filter = {
        ...(req.poolId ? { poolId: req.poolId } : {}),
        ...(req.hostId ? { hostId: req.hostId } : {}),
        ...(state ? { state } : {}),
        namePrefix: req.namePrefix,
        labels: req.labels,
        showDeleted: req.showDeleted,
      };
      const p = await paged(
        req,
        (page) => listVolumes(ctx.sql, { ...filter, ...page }),
        (v) => v.id,
        volumeToWire,
      );
      return { volumes: p.rows, nextPageToken: p.nextPageToken };
    },
    deleteVolume: async (req, hc) => volumeReply(await deleteVolume(ctx, req, actorOf(hc))),
    resizeVolume: async (req, hc) => volumeReply(await resizeVolume(ctx, req, actorOf(hc))),
    cloneVolume: async (req, hc) => volumeReply(await cloneVolume(ctx, req, actorOf(hc))),
    watchVolumes(req, hc) {
      const filter: { id?: string; poolId?: string } = {};
      if (req.poolId) filter.poolId = req.poolId;
      return watchChanges(ctx, hc, {
        async start(sql) {
          if (req.volume) {
            const v = await resolveVolume(sql, req.volume);
            filter.id = v.id;
            return [v];
          }
          return listVolumes(sql, { ...(filter.poolId ? { poolId: filter.poolId } : {}), limit: 10_000 });
        },
        changedAfter: (snapshot) => volumesChangedAfter(ctx.sql, snapshot, filter),
        toMessage: (v, first) => ({
          type: first ? VolumeEventType.SNAPSHOT : VolumeEventType.CHANGED,
          volume: volumeToWire(v),
        }),
      });
    },
  };
}
