import {
  expiredReservations,
  finishOperation,
  getVolumeById,
  markStaleHostsDown,
  releaseCapacity,
  transitionVolume,
} from "@stowage/store";
import type { ControllerContext } from "./context.js";

/**
 * Repairs what messages alone cannot: hosts that stopped heartbeating are marked down; reservations never
 * confirmed within their time to live are released and their volumes marked error.
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
}
