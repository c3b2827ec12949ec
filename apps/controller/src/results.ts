import { fromBinary } from "@bufbuild/protobuf";
import {
  type Bus,
  type Consumer,
  consumeBatches,
  ensureResultConsumer,
  type JsMsg,
  type PoisonPolicy,
  parkMessage,
  RESULT_STREAM,
  tokenToHost,
} from "@stowage/bus";
import {
  type OperationKind,
  SNAPSHOT_STATE_MACHINE,
  type SnapshotState,
  VOLUME_STATE_MACHINE,
  type VolumeState,
  validateName,
} from "@stowage/core";
import { type OperationResult, OperationResultSchema } from "@stowage/proto";
import {
  confirmCreated,
  confirmReservation,
  confirmSnapshotReservation,
  type ErrorRecord,
  finishOperation,
  getExport,
  getOperationsForUpdate,
  getSnapshotById,
  getVolumeById,
  type OperationRow,
  releaseCapacity,
  releaseSnapshotCapacity,
  resizeHolding,
  settleCloneBases,
  type Tx,
  transitionSnapshot,
  transitionVolume,
  updateExport,
  updateSnapshot,
  type VolumeRow,
  type VolumeUpdate,
} from "@stowage/store";
import { errorRecordFromWire as errorFromWire } from "@stowage/wire";
import type { ControllerContext } from "./context.js";
import { applyLateResult, type LateOutcome } from "./late-results.js";

/**
 * Applies operation results in one transaction, then counts, logs and notifies watchers once. Results may arrive
 * twice or late, also within one batch: an operation that is already finished is left as it is, so applying a
 * result is idempotent.
 */
export async function applyResults(
  ctx: ControllerContext,
  results: readonly OperationResult[],
): Promise<void> {
  if (results.length === 0) return;
  const applied = await ctx.sql.begin(async (tx) => {
    // One read locks the batch's operations; each result then sees what the ones before it in the batch did.
    const locked = await getOperationsForUpdate(
      tx,
      results.map((r) => r.operationId),
    );
    const ops = new Map(locked.map((op) => [op.id, op]));
    const finished: { op: OperationRow; r: OperationResult }[] = [];
    const late: LateOutcome[] = [];
    // A host reports on its own operations only: a result naming another host's operation changes nothing.
    const forged: { r: OperationResult; op: OperationRow }[] = [];
    const genuine = results.filter((r) => {
      const op = ops.get(r.operationId);
      if (!op || op.hostId === r.hostId) return true;
      forged.push({ r, op });
      return false;
    });
    // The batch's successful creates and clones, the bulk of it, in one statement; the rest one by one.
    const { created, rest } = splitCreated(genuine, ops);
    const confirmed = new Set(
      await confirmCreated(
        tx,
        created.map((r) => ({
          operationId: r.operationId,
          allocatedBytes: r.artifact?.allocatedBytes ?? 0n,
          hostPath: r.artifact?.path ?? "",
        })),
      ),
    );
    for (const r of created) {
      const op = ops.get(r.operationId)!;
      if (!confirmed.has(op.id)) continue;
      finished.push({ op, r });
      ops.set(op.id, { ...op, state: "succeeded" });
    }
    for (const r of rest) {
      const op = await applyInTransaction(ctx, tx, r, ops, late);
      if (op) finished.push({ op, r });
    }
    return { finished, late, forged };
  });
  for (const { r, op } of applied.forged) {
    ctx.metrics.busForged.inc({ kind: "result" });
    ctx.log.warn(
      { operationId: op.id, host: r.hostId, operationHost: op.hostId },
      "forged result dropped: a host reported on another host's operation",
    );
  }
  for (const outcome of applied.late) ctx.metrics.lateResults.inc({ outcome });
  for (const { op, r } of applied.finished) {
    ctx.metrics.operations.inc({ kind: op.kind, result: r.success ? "succeeded" : "failed" });
    ctx.metrics.operationDuration.observe({ kind: op.kind }, (Date.now() - op.createdAt.getTime()) / 1000);
    ctx.log.info(
      {
        operationId: r.operationId,
        kind: op.kind,
        success: r.success,
        adopted: r.adopted,
        error: r.error?.message,
      },
      "operation finished",
    );
  }
  if (applied.finished.length > 0 || applied.late.some((o) => o !== "none")) ctx.notifyChange();
}

/**
 * The results that `confirmCreated` applies together: successes of open creates and clones, the first result of
 * each operation, when nothing else in the batch touches the same volume (then the batch goes one by one, in
 * order). The others keep their order.
 */
function splitCreated(
  results: readonly OperationResult[],
  ops: ReadonlyMap<string, OperationRow>,
): { created: OperationResult[]; rest: OperationResult[] } {
  const created: OperationResult[] = [];
  const rest: OperationResult[] = [];
  const seen = new Set<string>();
  for (const r of results) {
    const op = ops.get(r.operationId);
    const fast =
      r.success &&
      op !== undefined &&
      (op.kind === "create_volume" || op.kind === "clone_volume") &&
      (op.state === "pending" || op.state === "sent") &&
      !seen.has(op.id);
    if (op) seen.add(op.id);
    (fast ? created : rest).push(r);
  }
  const createdOps = new Set(created.map((r) => r.operationId));
  const createdVolumes = new Set(created.map((r) => ops.get(r.operationId)!.volumeId));
  // A duplicate of a confirmed create finds its operation finished; another operation on the same volume would
  // have to be applied after it, in order.
  const overlap = rest.some((r) => {
    const op = ops.get(r.operationId);
    return op !== undefined && !createdOps.has(op.id) && createdVolumes.has(op.volumeId);
  });
  return overlap ? { created: [], rest: [...results] } : { created, rest };
}

/** Applies one operation result (a batch of one). */
export function applyResult(ctx: ControllerContext, r: OperationResult): Promise<void> {
  return applyResults(ctx, [r]);
}

/**
 * One result's effect, in the batch's transaction, on the batch's operations (`ops`, kept current); answers the
 * operation when this result finished it. A result for a finished operation is a late one (late-results.ts):
 * its outcome is added to `late`.
 */
async function applyInTransaction(
  ctx: ControllerContext,
  tx: Tx,
  r: OperationResult,
  ops: Map<string, OperationRow>,
  late: LateOutcome[],
): Promise<OperationRow | undefined> {
  const op = ops.get(r.operationId);
  if (!op) {
    ctx.log.warn({ operationId: r.operationId, host: r.hostId }, "result for an unknown operation ignored");
    return undefined;
  }
  if (op.state === "succeeded" || op.state === "failed") {
    if (op.state === "failed" && r.success) late.push(await applyLateResult(ctx, tx, op, r));
    return undefined;
  }
  const error = r.success ? null : errorFromWire(r.error, "the agent reported a failure without details");
  const done = await finishOperation(tx, op.id, r.success, error);
  if (done) ops.set(op.id, done);
  await applyToSubject(ctx, tx, op, r, error);
  return op;
}

/** The state a volume is in while an operation of this kind changes it in place. */
const BUSY: Partial<Record<OperationKind, VolumeState>> = {
  resize_volume: "resizing",
  revert_snapshot: "reverting",
};

/** Moves the operation's volume or snapshot to where the result leaves it. */
async function applyToSubject(
  ctx: ControllerContext,
  tx: Tx,
  op: OperationRow,
  r: OperationResult,
  error: ErrorRecord | null,
): Promise<void> {
  const volume = op.volumeId ? await getVolumeById(tx, op.volumeId, true) : undefined;
  if (!volume) return;
  const settle = (to: VolumeState, patch: VolumeUpdate) => settleVolume(ctx, tx, op, volume, to, patch);
  switch (op.kind) {
    case "create_volume":
    case "clone_volume":
      if (r.success) {
        await confirmReservation(tx, volume.id);
        if (volume.state === "creating") {
          await settle("available", {
            error: null,
            allocatedBytes: r.artifact?.allocatedBytes ?? 0n,
            hostPath: r.artifact?.path ?? "",
          });
        }
      } else if (volume.state === "creating") {
        await releaseCapacity(tx, volume.id);
        await settle("error", { error });
      }
      // The base image a linked clone stands on: held once one of the snapshot's clones is made, given back
      // when none is made or being made (the clone's own bytes are its reservation above).
      if (op.kind === "clone_volume" && volume.sourceSnapshotId)
        await settleCloneBases(tx, [volume.sourceSnapshotId]);
      return;
    case "delete_volume":
      if (r.success) {
        await releaseCapacity(tx, volume.id);
        await settle("deleted", { error: null, allocatedBytes: 0n });
      } else {
        await settle("error", { error });
      }
      return;
    case "resize_volume":
    case "revert_snapshot": {
      if (volume.state !== BUSY[op.kind] || volume.operationId !== op.id) return;
      if (r.success) {
        await settle("available", {
          error: null,
          ...(r.artifact
            ? { sizeBytes: r.artifact.sizeBytes, allocatedBytes: r.artifact.allocatedBytes }
            : {}),
        });
      } else {
        // The volume is as it was: give the ledger back its old size, and keep the error for `volume get`.
        await resizeHolding(tx, { volumeId: volume.id, bytes: volume.sizeBytes, force: true });
        await settle("available", { error });
      }
      if (op.kind === "revert_snapshot" && op.snapshotId && !r.success)
        await updateSnapshot(tx, op.snapshotId, { error });
      return;
    }
    case "create_snapshot":
    case "delete_snapshot": {
      const snapshot = op.snapshotId ? await getSnapshotById(tx, op.snapshotId) : undefined;
      if (!snapshot) return;
      // The ledger follows what the agent did, whatever the snapshot's row may still become: a made snapshot
      // holds its bytes (also one being deleted meanwhile, until that delete's result), a failed create gives
      // them back, a deleted snapshot gives back its own and its clone base's. A failed delete keeps them (the
      // snapshot is still there). Each step is idempotent.
      if (op.kind === "create_snapshot") {
        if (r.success) await confirmSnapshotReservation(tx, snapshot.id, "snapshot");
        else await releaseSnapshotCapacity(tx, snapshot.id, "snapshot");
      } else if (r.success) {
        await releaseSnapshotCapacity(tx, snapshot.id);
      }
      const to: SnapshotState = !r.success
        ? "error"
        : op.kind === "create_snapshot"
          ? "available"
          : "deleted";
      if (!SNAPSHOT_STATE_MACHINE.canTransition(snapshot.state, to)) {
        ctx.log.warn(
          { operationId: op.id, snapshotId: snapshot.id, state: snapshot.state, to },
          "result left the snapshot as it is: the transition is not allowed",
        );
        return;
      }
      await transitionSnapshot(tx, snapshot, to, { error });
      return;
    }
    case "create_export":
    case "delete_export":
      await settleExport(ctx, tx, op, r, error);
      return;
    default:
      ctx.log.warn(
        { kind: op.kind, operationId: op.id },
        "result of an operation kind this controller does not apply yet",
      );
  }
}

/**
 * An export's result: a create (or an update, which is a create with the new allowed set) makes it active with
 * the URI the agent reports, a delete makes it deleted. A result of an operation the export has moved on from
 * (an update sent after it, a delete) changes nothing but the log. A failed create leaves the export in error
 * (a failed update of an active one keeps it active, with the error); a failed delete leaves it in error, and
 * DeleteExport sends the delete again.
 */
async function settleExport(
  ctx: ControllerContext,
  tx: Tx,
  op: OperationRow,
  r: OperationResult,
  error: ErrorRecord | null,
): Promise<void> {
  const e = op.exportId ? await getExport(tx, op.exportId, true) : undefined;
  if (!e) return;
  if (e.operationId !== op.id) {
    ctx.log.info({ operationId: op.id, export: e.id }, "result of an export operation since superseded");
    return;
  }
  if (op.kind === "delete_export") {
    await updateExport(tx, e.id, r.success ? { state: "deleted", error: null } : { state: "error", error });
    return;
  }
  if (r.success) {
    await updateExport(
      tx,
      e.id,
      { state: "active", error: null, ...(r.export?.uri ? { uri: r.export.uri } : {}) },
      ["creating", "active", "error"],
    );
  } else {
    await updateExport(tx, e.id, { state: e.state === "active" ? "active" : "error", error }, [
      "creating",
      "active",
      "error",
    ]);
  }
}

/**
 * Moves the volume through the state machine. A result is never refused (it would be redelivered forever): one
 * whose transition is not allowed any more (the volume moved on) is logged and leaves the volume as it is.
 */
async function settleVolume(
  ctx: ControllerContext,
  tx: Tx,
  op: OperationRow,
  volume: VolumeRow,
  to: VolumeState,
  patch: VolumeUpdate,
): Promise<void> {
  if (!VOLUME_STATE_MACHINE.canTransition(volume.state, to)) {
    ctx.log.warn(
      { operationId: op.id, volumeId: volume.id, state: volume.state, to },
      "result left the volume as it is: the transition is not allowed",
    );
    return;
  }
  await transitionVolume(tx, volume, to, patch);
}

/**
 * Reads results from JetStream until `signal` aborts, applying what has arrived (up to 64) in one transaction; the
 * results are acked only after it commits. A batch that fails is applied again one result at a time, so a result
 * that cannot be applied is retried on its own (nak'ed with a delay) and the others go through.
 */
export async function runResultConsumer(
  ctx: ControllerContext,
  bus: Bus,
  signal: AbortSignal,
): Promise<void> {
  const durable = await ensureResultConsumer(bus.jsm);
  await consumeResults(ctx, await bus.js.consumers.get(RESULT_STREAM, durable), signal);
}

/** The result consumer on a given durable consumer (tests give one with a short ack wait). */
export async function consumeResults(
  ctx: ControllerContext,
  consumer: Consumer,
  signal: AbortSignal,
  opts: { maxDeliveries?: number } = {},
): Promise<void> {
  const poison = resultPoisonPolicy(ctx, opts.maxDeliveries);
  await consumeBatches(
    consumer,
    {
      batch: (msgs) => applyResults(ctx, decodeResults(ctx, msgs, poison)),
      one: (msg) => applyResults(ctx, decodeResults(ctx, [msg], poison)),
    },
    {
      signal,
      maxBatch: RESULT_BATCH,
      poison,
      onError: (err, msgs) =>
        ctx.log.warn(
          { err, results: msgs.length },
          msgs.length > 1
            ? "result batch failed; applying its results one by one"
            : "result handling failed; will retry",
        ),
    },
  );
}

/**
 * A result that does not decode is parked at once; one whose application failed on each of its first
 * `maxDeliveries` deliveries (default 5) is parked then, instead of being retried for ever: terminated, copied to
 * the dead-letter stream, counted in stowage_bus_poison_messages_total{consumer="results"} and logged.
 */
function resultPoisonPolicy(ctx: ControllerContext, maxDeliveries?: number): PoisonPolicy {
  return {
    consumer: "results",
    ...(maxDeliveries === undefined ? {} : { maxDeliveries }),
    ...(ctx.bus ? { js: ctx.bus.js } : {}),
    onParked: ({ msg, reason, error }) => {
      ctx.metrics.busPoison.inc({ consumer: "results", reason });
      ctx.log.error(
        { subject: msg.subject, seq: msg.seq, reason, error, deliveries: msg.info.deliveryCount },
        "poison result parked in the dead-letter stream",
      );
    },
  };
}

/** The most results applied in one transaction. */
export const RESULT_BATCH = 64;

function isName(hostId: string): boolean {
  try {
    validateName("host name", hostId);
    return true;
  } catch {
    return false;
  }
}

/** Forged results already counted: a batch that failed is decoded again one by one. */
const forgedMessages = new WeakSet<JsMsg>();

/**
 * Decodes result messages. One that does not decode, or names no valid host, is parked, and left out (its ack is
 * then a no-op). One that names another host than the subject it came on (a host publishes on its own subject only) is forged: left out,
 * so it is acked with the batch and never applied, counted and logged (without its payload).
 */
function decodeResults(ctx: ControllerContext, msgs: JsMsg[], poison: PoisonPolicy): OperationResult[] {
  const results: OperationResult[] = [];
  for (const msg of msgs) {
    let r: OperationResult;
    try {
      r = fromBinary(OperationResultSchema, msg.data);
    } catch (err) {
      void parkMessage(msg, poison, "undecodable", err);
      continue;
    }
    const subjectHost = tokenToHost(msg.subject.slice(msg.subject.lastIndexOf(".") + 1));
    if (r.hostId !== subjectHost && !isName(r.hostId)) {
      void parkMessage(
        msg,
        poison,
        "invalid",
        new Error(`result for no valid host (${JSON.stringify(r.hostId.slice(0, 80))})`),
      );
      continue;
    }
    if (r.hostId !== subjectHost) {
      if (!forgedMessages.has(msg)) {
        forgedMessages.add(msg);
        ctx.metrics.busForged.inc({ kind: "result" });
        ctx.log.warn(
          { subject: msg.subject, seq: msg.seq, claimedHost: r.hostId.slice(0, 80) },
          "forged result dropped: it names another host than its subject's",
        );
      }
      continue;
    }
    results.push(r);
  }
  return results;
}
