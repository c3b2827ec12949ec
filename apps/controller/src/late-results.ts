import { formatSize } from "@stowage/core";
import type { OperationResult } from "@stowage/proto";
import {
  dropOrphanFinding,
  type ErrorRecord,
  type Finding,
  getVolumeById,
  type OperationRow,
  reallocateReleased,
  releaseCapacity,
  resizeHolding,
  type Tx,
  transitionVolume,
  updateSnapshot,
  updateVolume,
  upsertFindings,
  type VolumeRow,
  writeAudit,
} from "@stowage/store";
import { formats } from "@stowage/wire";
import type { ControllerContext } from "./context.js";

/**
 * What a late result did to the books: `adopted` (the database now shows what the host did), `finding` (an orphan
 * finding reports it), `noted` (kept on the volume's error), or `none` (nothing changed on the host, or the
 * database already agrees).
 */
export type LateOutcome = "adopted" | "finding" | "noted" | "none";

/**
 * A result for an operation that is already finished. A duplicate of the result that finished it, or a failure
 * (nothing changed on the host), changes nothing. A success after the operation failed (the controller gave up at
 * its time to live, or an earlier attempt reported a failure) means the host did change something that the
 * database does not show; it is never dropped silently (docs/architecture.md, "Late results"):
 *
 * - create, clone: the volume, in `error` with its reservation released, is held again through the ledger's
 *   conditional UPDATE and becomes `available`; when the pool cannot hold it any more, or the volume was deleted
 *   meanwhile, the artefact is recorded as an orphan finding (`stowctl finding list`).
 * - delete: the artefact is gone; a volume left in `error` by that delete releases what it holds and becomes
 *   `deleted`.
 * - resize: a volume still `available` after that resize takes its new size, if the ledger can hold the growth;
 *   otherwise the volume keeps an error saying so.
 * - revert: a volume still `available` after that revert clears the revert's error (its contents are the
 *   snapshot's).
 * - snapshots: left as they are and logged; the snapshot stays `error` and a delete of it converges on the host.
 */
export async function applyLateResult(
  ctx: ControllerContext,
  tx: Tx,
  op: OperationRow,
  r: OperationResult,
): Promise<LateOutcome> {
  if (op.state !== "failed" || !r.success) return "none";
  const log = ctx.log.child({ operationId: op.id, kind: op.kind, volumeId: op.volumeId, host: op.hostId });
  const volume = op.volumeId ? await getVolumeById(tx, op.volumeId, true) : undefined;
  if (!volume) {
    log.warn("late success of a failed operation whose volume is unknown: left to the next full inventory");
    return "none";
  }
  switch (op.kind) {
    case "create_volume":
    case "clone_volume":
      return lateCreated(ctx, tx, op, r, volume);
    case "delete_volume":
      return lateDeleted(ctx, tx, op, volume);
    case "resize_volume":
      return lateResized(ctx, tx, op, r, volume);
    case "revert_snapshot":
      if (volume.state !== "available" || volume.operationId !== op.id) {
        log.warn({ state: volume.state }, "late revert result: the volume has moved on; left as it is");
        return "none";
      }
      await updateVolume(tx, volume.id, {
        error: null,
        ...(r.artifact ? { allocatedBytes: r.artifact.allocatedBytes } : {}),
      });
      if (op.snapshotId) await updateSnapshot(tx, op.snapshotId, { error: null });
      log.warn("late revert result: the volume was reverted after its operation had failed");
      return "adopted";
    default:
      log.warn(
        "late success of a failed snapshot operation: the snapshot is left as it is (deleting it converges on the host)",
      );
      return "none";
  }
}

async function lateCreated(
  ctx: ControllerContext,
  tx: Tx,
  op: OperationRow,
  r: OperationResult,
  volume: VolumeRow,
): Promise<LateOutcome> {
  const log = ctx.log.child({ operationId: op.id, volumeId: volume.id, host: op.hostId });
  const artefact = {
    sizeBytes: r.artifact?.sizeBytes || volume.sizeBytes,
    format: formats.domain(r.artifact?.format ?? 0) ?? volume.format,
    allocatedBytes: r.artifact?.allocatedBytes ?? 0n,
    path: r.artifact?.path ?? "",
    operationId: op.id,
  };
  const orphan = (detail: string): Finding => ({
    hostId: op.hostId,
    kind: "orphan",
    subject: volume.id,
    poolId: volume.poolId,
    detail,
    artefact,
  });
  if (volume.state === "deleted") {
    await upsertFindings(tx, op.hostId, [
      orphan(
        `volume ${volume.name} was deleted, and its create finished on the host after it had failed: ${artefact.path} exists and is counted nowhere`,
      ),
    ]);
    log.warn("late create of a deleted volume: recorded as an orphan finding");
    return "finding";
  }
  if (volume.state !== "error") {
    // Deleting: that delete removes the artefact. Available: it is held already.
    log.info({ state: volume.state }, "late create result: the volume has moved on; left as it is");
    return "none";
  }
  if (await reallocateReleased(tx, volume.id)) {
    await transitionVolume(tx, volume, "available", {
      error: null,
      allocatedBytes: artefact.allocatedBytes,
      hostPath: artefact.path,
    });
    await dropOrphanFinding(tx, op.hostId, volume.id);
    await writeAudit(tx, {
      actor: "controller",
      action: "AdoptLateCreate",
      target: volume.id,
      request: {
        operationId: op.id,
        poolId: volume.poolId,
        sizeBytes: volume.sizeBytes,
        path: artefact.path,
      },
      outcome: "ok",
    });
    log.warn(
      "late create adopted: the host made the volume after its operation had failed; it is held again and available",
    );
    return "adopted";
  }
  const error: ErrorRecord = {
    code: "orphaned",
    message: `the host made this volume after its operation had failed, and pool ${volume.poolId} cannot hold its ${formatSize(volume.sizeBytes)} any more: the artefact ${artefact.path} is an orphan finding (stowctl finding list --kind orphan); delete this volume to remove it, or adopt it once there is room`,
  };
  await updateVolume(tx, volume.id, { error });
  await upsertFindings(tx, op.hostId, [orphan(error.message)]);
  log.warn("late create: the pool cannot hold it any more; recorded as an orphan finding");
  return "finding";
}

async function lateDeleted(
  ctx: ControllerContext,
  tx: Tx,
  op: OperationRow,
  volume: VolumeRow,
): Promise<LateOutcome> {
  const log = ctx.log.child({ operationId: op.id, volumeId: volume.id, host: op.hostId });
  if (volume.state !== "error" || volume.operationId !== op.id) {
    // Deleted already, or another operation (a second delete) is under way and converges on its own.
    log.info({ state: volume.state }, "late delete result: the volume has moved on; left as it is");
    return "none";
  }
  await releaseCapacity(tx, volume.id);
  const deleting = await transitionVolume(tx, volume, "deleting");
  await transitionVolume(tx, deleting, "deleted", { error: null, allocatedBytes: 0n });
  log.warn("late delete applied: the host deleted the volume after its operation had failed");
  return "adopted";
}

async function lateResized(
  ctx: ControllerContext,
  tx: Tx,
  op: OperationRow,
  r: OperationResult,
  volume: VolumeRow,
): Promise<LateOutcome> {
  const log = ctx.log.child({ operationId: op.id, volumeId: volume.id, host: op.hostId });
  if (!r.artifact || volume.state !== "available" || volume.operationId !== op.id) {
    log.warn({ state: volume.state }, "late resize result: the volume has moved on; left as it is");
    return "none";
  }
  const size = r.artifact.sizeBytes;
  if (await resizeHolding(tx, { volumeId: volume.id, bytes: size })) {
    await updateVolume(tx, volume.id, {
      error: null,
      sizeBytes: size,
      allocatedBytes: r.artifact.allocatedBytes,
    });
    log.warn({ size: size.toString() }, "late resize adopted: the ledger holds the new size");
    return "adopted";
  }
  await updateVolume(tx, volume.id, {
    error: {
      code: "resized_unheld",
      message: `the host resized this volume to ${formatSize(size)} after its operation had failed, and pool ${volume.poolId} cannot hold the growth: the ledger still counts ${formatSize(volume.sizeBytes)}; resize it again once there is room`,
    },
  });
  log.warn(
    { size: size.toString() },
    "late resize: the pool cannot hold the growth; kept on the volume's error",
  );
  return "noted";
}
