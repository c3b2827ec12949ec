import { fromBinary } from "@bufbuild/protobuf";
import { type Bus, consumeLoop, ensureResultConsumer, RESULT_STREAM } from "@stowage/bus";
import { type OperationResult, OperationResultSchema } from "@stowage/proto";
import {
  confirmReservation,
  finishOperation,
  getOperation,
  getSnapshotById,
  getVolumeById,
  releaseCapacity,
  resizeHolding,
  updateSnapshot,
  updateVolume,
} from "@stowage/store";
import type { ControllerContext } from "./context.js";
import { errorFromWire } from "./convert.js";

/**
 * Applies one operation result. Results may arrive twice or late: an operation that is already finished is left
 * as it is, so applying a result is idempotent.
 */
export async function applyResult(ctx: ControllerContext, r: OperationResult): Promise<void> {
  const applied = await ctx.sql.begin(async (tx) => {
    const op = await getOperation(tx, r.operationId, true);
    if (!op) {
      ctx.log.warn({ operationId: r.operationId, host: r.hostId }, "result for an unknown operation ignored");
      return undefined;
    }
    if (op.state === "succeeded" || op.state === "failed") return undefined;
    const error = r.success ? null : errorFromWire(r.error, "the agent reported a failure without details");
    await finishOperation(tx, op.id, r.success, error);
    const volume = op.volumeId ? await getVolumeById(tx, op.volumeId, true) : undefined;
    if (!volume) return op;
    switch (op.kind) {
      case "create_volume":
      case "clone_volume":
        if (r.success) {
          await confirmReservation(tx, volume.id);
          if (volume.state === "creating") {
            await updateVolume(tx, volume.id, {
              state: "available",
              error: null,
              allocatedBytes: r.artifact?.allocatedBytes ?? 0n,
              hostPath: r.artifact?.path ?? "",
            });
          }
        } else if (volume.state === "creating") {
          await releaseCapacity(tx, volume.id);
          await updateVolume(tx, volume.id, { state: "error", error });
        }
        break;
      case "delete_volume":
        if (r.success) {
          await releaseCapacity(tx, volume.id);
          await updateVolume(tx, volume.id, { state: "deleted", error: null, allocatedBytes: 0n });
        } else {
          await updateVolume(tx, volume.id, { state: "error", error });
        }
        break;
      case "resize_volume":
      case "revert_snapshot": {
        if (volume.state !== "resizing" || volume.operationId !== op.id) break;
        if (r.success) {
          await updateVolume(tx, volume.id, {
            state: "available",
            error: null,
            ...(r.artifact
              ? { sizeBytes: r.artifact.sizeBytes, allocatedBytes: r.artifact.allocatedBytes }
              : {}),
          });
        } else {
          // The volume is as it was: give the ledger back its old size, and keep the error for `volume get`.
          await resizeHolding(tx, { volumeId: volume.id, bytes: volume.sizeBytes, force: true });
          await updateVolume(tx, volume.id, { state: "available", error });
        }
        if (op.kind === "revert_snapshot" && op.snapshotId && !r.success)
          await updateSnapshot(tx, op.snapshotId, { error });
        break;
      }
      case "create_snapshot":
      case "delete_snapshot": {
        const snapshot = op.snapshotId ? await getSnapshotById(tx, op.snapshotId) : undefined;
        if (!snapshot) break;
        const done = op.kind === "create_snapshot" ? "available" : "deleted";
        if (r.success) await updateSnapshot(tx, snapshot.id, { state: done, error: null });
        else await updateSnapshot(tx, snapshot.id, { state: "error", error });
        break;
      }
      default:
        ctx.log.warn(
          { kind: op.kind, operationId: op.id },
          "result of an operation kind this controller does not apply yet",
        );
    }
    return op;
  });
  if (applied) {
    ctx.metrics.operations.inc({ kind: applied.kind, result: r.success ? "succeeded" : "failed" });
    ctx.metrics.operationDuration.observe(
      { kind: applied.kind },
      (Date.now() - applied.createdAt.getTime()) / 1000,
    );
    ctx.log.info(
      {
        operationId: r.operationId,
        kind: applied.kind,
        success: r.success,
        adopted: r.adopted,
        error: r.error?.message,
      },
      "operation finished",
    );
    ctx.notifyChange();
  }
}

/** Reads results from JetStream until `signal` aborts; a result is acked only after its transaction commits. */
export async function runResultConsumer(
  ctx: ControllerContext,
  bus: Bus,
  signal: AbortSignal,
): Promise<void> {
  const durable = await ensureResultConsumer(bus.jsm);
  const consumer = await bus.js.consumers.get(RESULT_STREAM, durable);
  await consumeLoop(
    consumer,
    async (msg) => {
      let result: OperationResult;
      try {
        result = fromBinary(OperationResultSchema, msg.data);
      } catch (err) {
        ctx.log.error({ err, subject: msg.subject }, "undecodable result dropped");
        return;
      }
      await applyResult(ctx, result);
    },
    { signal, onError: (err) => ctx.log.warn({ err }, "result handling failed; will retry") },
  );
}
