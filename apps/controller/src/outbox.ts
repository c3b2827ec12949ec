import { create, type MessageInitShape, toBinary } from "@bufbuild/protobuf";
import { timestampNow } from "@bufbuild/protobuf/wkt";
import { type OperationKind as DomainOperationKind, newId } from "@stowage/core";
import { AgentCommandSchema } from "@stowage/proto";
import { insertOperation, type OperationRow, type Queryable, type VolumeRow } from "@stowage/store";
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
