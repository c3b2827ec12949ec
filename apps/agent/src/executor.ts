import { create, type MessageInitShape } from "@bufbuild/protobuf";
import { timestampDate, timestampNow } from "@bufbuild/protobuf/wkt";
import { type AgentOperation, StowageError } from "@stowage/core";
import type { PoolDriver } from "@stowage/drivers";
import { type AgentCommand, type OperationResult, OperationResultSchema } from "@stowage/proto";
import { artifactToWire, operationFromCommand, stowageErrorToWire } from "@stowage/wire";

type Outcome = MessageInitShape<typeof OperationResultSchema>;

/** One operation against its pool's driver, as the fields of a successful result. */
async function runOperation(driver: PoolDriver, op: AgentOperation): Promise<Outcome> {
  switch (op.kind) {
    case "create_volume": {
      const r = await driver.createVolume(op.spec);
      return { success: true, artifact: artifactToWire(r.artifact), adopted: r.adopted };
    }
    case "clone_volume": {
      const r = await driver.cloneVolume(op.spec);
      return { success: true, artifact: artifactToWire(r.artifact), adopted: r.adopted };
    }
    case "delete_volume": {
      const { volumeId, operationId, wipe } = op.spec;
      const r = await driver.deleteVolume(volumeId, { operationId, wipe });
      return { success: true, adopted: !r.existed };
    }
    case "resize_volume": {
      const { volumeId, operationId, newSizeBytes, allowShrink } = op.spec;
      const a = await driver.resizeVolume(volumeId, newSizeBytes, { allowShrink, operationId });
      return { success: true, artifact: artifactToWire(a) };
    }
    case "create_snapshot": {
      const { volumeId, snapshotId, operationId } = op.spec;
      const r = await driver.createSnapshot(volumeId, snapshotId, { operationId });
      return { success: true, adopted: r.adopted };
    }
    case "delete_snapshot": {
      const { volumeId, snapshotId, operationId } = op.spec;
      const r = await driver.deleteSnapshot(volumeId, snapshotId, { operationId });
      return { success: true, adopted: !r.existed };
    }
    case "revert_snapshot": {
      const { volumeId, snapshotId, operationId } = op.spec;
      const a = await driver.revertSnapshot(volumeId, snapshotId, { operationId });
      return { success: true, artifact: artifactToWire(a) };
    }
  }
}

/**
 * Why a command must not be started at `now`: its deadline has passed (the controller gives up on the operation
 * shortly after it and releases what it holds, so what it would make would be counted nowhere). Undefined when it
 * may run; a command without a deadline always may.
 */
export function deadlineRefusal(cmd: AgentCommand, now: number): StowageError | undefined {
  if (!cmd.deadline) return undefined;
  const deadline = timestampDate(cmd.deadline);
  if (now <= deadline.getTime()) return undefined;
  const late = Math.round((now - deadline.getTime()) / 1000);
  return new StowageError(
    "deadline_exceeded",
    `operation ${cmd.operationId} reached host ${cmd.hostId} after its deadline (${deadline.toISOString()}, ${late}s ago): not started, nothing was changed; the controller fails it and releases what it holds`,
  );
}

/**
 * Runs one command against the pool's driver, unless its deadline has passed (then a failed result with the
 * code `deadline_exceeded`, the tool never run). Drivers are idempotent, so a redelivered command converges; any
 * failure becomes a result with a structured error rather than an exception (the message is then acked).
 */
export async function executeCommand(
  drivers: ReadonlyMap<string, PoolDriver>,
  hostId: string,
  cmd: AgentCommand,
  now: () => number = Date.now,
  exports?: { handle(cmd: AgentCommand): Promise<Outcome> },
): Promise<OperationResult> {
  const t0 = now();
  const finish = (outcome: Outcome) =>
    create(OperationResultSchema, {
      operationId: cmd.operationId,
      hostId,
      kind: cmd.kind,
      ...outcome,
      finishedAt: timestampNow(),
      durationMs: BigInt(Math.max(0, now() - t0)),
    });
  const refusal = deadlineRefusal(cmd, t0);
  if (refusal) return finish({ success: false, error: stowageErrorToWire(refusal) });
  try {
    if (cmd.payload.case === "createExport" || cmd.payload.case === "deleteExport") {
      if (!exports)
        throw new StowageError(
          "failed_precondition",
          `host ${hostId} serves no exports: set iscsiPortal in its agent config for iSCSI, or give it an rbd pool for RBD grants (docs/operating.md)`,
        );
      return finish(await exports.handle(cmd));
    }
    const driver = drivers.get(cmd.poolName);
    if (!driver) {
      throw new StowageError("not_found", `pool ${cmd.poolName} is not configured on host ${hostId}`);
    }
    return finish(await runOperation(driver, operationFromCommand(cmd)));
  } catch (err) {
    return finish({ success: false, error: stowageErrorToWire(err) });
  }
}
