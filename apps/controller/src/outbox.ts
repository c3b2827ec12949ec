import { create, type MessageInitShape, toBinary } from "@bufbuild/protobuf";
import { timestampNow } from "@bufbuild/protobuf/wkt";
import { type OperationKind as DomainOperationKind, newId, type VolumeState } from "@stowage/core";
import { AgentCommandSchema } from "@stowage/proto";
import {
  insertOperation,
  type OperationRow,
  type Queryable,
  transitionVolume,
  type VolumeRow,
  writeAudit,
} from "@stowage/store";
import { operationKinds } from "@stowage/wire";

/**
 * Writes one operation for a volume's host to the outbox, in the caller's transaction: the command the agent
 * will run (protobuf, with the operation id that makes it idempotent) and the operation row the relay publishes.
 */
export async function enqueueOperation(
  tx: Queryable,
  o: {
    kind: DomainOperationKind;
    volume: Pick<VolumeRow, "id" | "hostId" | "poolId">;
    payload: MessageInitShape<typeof AgentCommandSchema>["payload"];
    snapshotId?: string;
    actor: string;
    /** When the caller needed the id first (to write it on the volume row). */
    operationId?: string;
  },
): Promise<OperationRow> {
  const operationId = o.operationId ?? newId("op");
  const command = create(AgentCommandSchema, {
    operationId,
    kind: operationKinds.wire(o.kind),
    hostId: o.volume.hostId,
    poolName: o.volume.poolId.slice(o.volume.hostId.length + 1),
    attempt: 1,
    issuedAt: timestampNow(),
    payload: o.payload,
  });
  return insertOperation(tx, {
    id: operationId,
    kind: o.kind,
    hostId: o.volume.hostId,
    poolId: o.volume.poolId,
    volumeId: o.volume.id,
    ...(o.snapshotId ? { snapshotId: o.snapshotId } : {}),
    command: toBinary(AgentCommandSchema, command),
    requestedBy: o.actor,
  });
}

/**
 * Starts an operation on a volume, in the caller's transaction: the operation in the outbox, the volume in the
 * state it holds while the agent works (through the state machine), and the audit row of the request.
 */
export async function startVolumeOperation(
  tx: Queryable,
  o: Parameters<typeof enqueueOperation>[1] & {
    volume: VolumeRow;
    state: VolumeState;
    audit: { action: string; target?: string; request: Record<string, unknown> };
  },
): Promise<{ volume: VolumeRow; operation: OperationRow }> {
  const operation = await enqueueOperation(tx, o);
  const volume = await transitionVolume(tx, o.volume, o.state, { operationId: operation.id });
  await writeAudit(tx, {
    actor: o.actor,
    action: o.audit.action,
    target: o.audit.target ?? o.volume.id,
    request: o.audit.request,
    outcome: "ok",
  });
  return { volume, operation };
}
