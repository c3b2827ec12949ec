import { create, type MessageInitShape } from "@bufbuild/protobuf";
import { timestampNow } from "@bufbuild/protobuf/wkt";
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
 * Runs one command against the pool's driver. Drivers are idempotent, so a redelivered command converges; any
 * failure becomes a result with a structured error rather than an exception (the message is then acked).
 */
export async function executeCommand(
  drivers: ReadonlyMap<string, PoolDriver>,
  hostId: string,
  cmd: AgentCommand,
): Promise<OperationResult> {
  const t0 = Date.now();
  const finish = (outcome: Outcome) =>
    create(OperationResultSchema, {
      operationId: cmd.operationId,
      hostId,
      kind: cmd.kind,
      ...outcome,
      finishedAt: timestampNow(),
      durationMs: BigInt(Date.now() - t0),
    });
  try {
    const driver = drivers.get(cmd.poolName);
    if (!driver) {
      throw new StowageError("not_found", `pool ${cmd.poolName} is not configured on host ${hostId}`);
    }
    return finish(await runOperation(driver, operationFromCommand(cmd)));
  } catch (err) {
    return finish({ success: false, error: stowageErrorToWire(err) });
  }
}
