import {
  expiredReservations,
  expiredSnapshotReservations,
  finishOperation,
  getSnapshotById,
  getVolumeById,
  markStaleHostsDown,
  releaseCapacity,
  releaseSnapshotCapacity,
  settleCloneBases,
  transitionSnapshot,
  transitionVolume,
} from "@stowage/store";
import type { ControllerContext } from "./context.js";

/**
 * Repairs what messages alone cannot: hosts that stopped heartbeating are marked down; reservations never
 * confirmed within their time to live are released and their volumes (or snapshots) marked error; clone bases
 * are settled from their clones.
 */
export async function reconcileOnce(ctx: ControllerContext): Promise<void> {
  const down = await markStaleHostsDown(ctx.sql, ctx.config.hostDownAfterMs);
  for (const host of down) ctx.log.warn({ host }, "host is down: no heartbeat");
  if (down.length) ctx.notifyChange();

  for (const r of await expiredReservations(ctx.sql)) {
    await ctx.sql.begin(async (tx) => {
      const v = await getVolumeById(tx, r.volumeId, true);
      await releaseCapacity(tx, r.volumeId);
      if (v && v.state === "creating") {
        const error = {
          code: "expired",
          message: `the host did not create the volume within ${Math.round(ctx.config.reservationTtlMs / 1000)}s; its reservation was released`,
        };
        await transitionVolume(tx, v, "error", { error });
        if (v.operationId) await finishOperation(tx, v.operationId, false, error);
      }
    });
    ctx.log.warn({ volumeId: r.volumeId, pool: r.poolId }, "reservation expired");
    ctx.notifyChange();
  }

  // Snapshots the same way: a snapshot never made within the time to live gives its bytes back and fails.
  for (const r of await expiredSnapshotReservations(ctx.sql)) {
    await ctx.sql.begin(async (tx) => {
      if ((await releaseSnapshotCapacity(tx, r.snapshotId, "snapshot")) === 0) return;
      const s = await getSnapshotById(tx, r.snapshotId);
      const error = {
        code: "expired",
        message: `the host did not make the snapshot within ${Math.round(ctx.config.reservationTtlMs / 1000)}s; its reservation was released`,
      };
      if (s?.state === "creating") await transitionSnapshot(tx, s, "error", { error });
      if (r.operationId) await finishOperation(tx, r.operationId, false, error);
    });
    ctx.log.warn({ snapshotId: r.snapshotId, pool: r.poolId }, "snapshot reservation expired");
    ctx.notifyChange();
  }
  // Clone bases follow their clones (a clone confirmed in a batch of creates does not look at its base).
  if ((await ctx.sql.begin((tx) => settleCloneBases(tx))) > 0) ctx.notifyChange();
}
