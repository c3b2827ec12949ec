import { create } from "@bufbuild/protobuf";
import { OperationResultSchema } from "@stowage/proto";
import {
  expiredReservations,
  expiredSnapshotReservations,
  finishOperation,
  getSnapshotById,
  getVolumeById,
  markStaleHostsDown,
  overdueOperations,
  releaseCapacity,
  releaseSnapshotCapacity,
  settleCloneBases,
  transitionSnapshot,
  transitionVolume,
} from "@stowage/store";
import { operationKinds } from "@stowage/wire";
import type { ControllerContext } from "./context.js";
import { applyResults } from "./results.js";

/** How many overdue operations one reconciler round fails (one transaction). */
const OVERDUE_PAGE = 100;

/**
 * Repairs what messages alone cannot: hosts that stopped heartbeating are marked down; reservations never
 * confirmed within their time to live are released and their volumes (or snapshots) and operations marked failed
 * (code `expired`: the creates); every other operation without a result at its time to live
 * (STOWAGE_RESERVATION_TTL_MS; past its command's deadline, so no agent starts it any more) is failed with
 * `deadline_exceeded`, exactly as if the agent had reported that failure (what it holds is released, its volume or
 * snapshot moved as a failure moves it); clone bases are settled from their clones.
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
  // What is left without a result at its time to live (deletes, resizes, reverts, snapshot deletes, and anything
  // whose reservation did not fail it) fails at its deadline.
  await failOverdueOperations(ctx);

  // Clone bases follow their clones (a clone confirmed in a batch of creates does not look at its base).
  if ((await ctx.sql.begin((tx) => settleCloneBases(tx))) > 0) ctx.notifyChange();
}

/**
 * Fails the operations still pending or sent at their time to live: the host never took them (down, or its
 * consumer gone) or never answered. Applied as failed results of the agent's own kind, so each kind releases what
 * it holds and moves its volume or snapshot the way a failure does. A success that still comes later is a late
 * result (late-results.ts). Answers how many it failed.
 */
export async function failOverdueOperations(ctx: ControllerContext): Promise<number> {
  const ttl = ctx.config.reservationTtlMs;
  const overdue = await overdueOperations(ctx.sql, ttl, OVERDUE_PAGE);
  if (overdue.length === 0) return 0;
  await applyResults(
    ctx,
    overdue.map((op) =>
      create(OperationResultSchema, {
        operationId: op.id,
        hostId: op.hostId,
        kind: operationKinds.wire(op.kind),
        success: false,
        error: {
          code: "deadline_exceeded",
          message: `host ${op.hostId} did not answer operation ${op.id} (${op.kind.replaceAll("_", " ")}) within its time to live of ${Math.round(ttl / 1000)}s (${op.state === "pending" ? "never published: the host was down" : `published ${op.attempts} time${op.attempts === 1 ? "" : "s"}`}): failed, and what it held released; a result that still arrives is applied or reported as a finding`,
        },
      }),
    ),
  );
  for (const op of overdue)
    ctx.log.warn(
      { operationId: op.id, kind: op.kind, host: op.hostId, attempts: op.attempts },
      "operation failed at its deadline: no result",
    );
  return overdue.length;
}
