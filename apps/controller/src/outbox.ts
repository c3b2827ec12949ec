import { create, type MessageInitShape, toBinary } from "@bufbuild/protobuf";
import { timestampFromMs } from "@bufbuild/protobuf/wkt";
import {
  alreadyExists,
  type OperationKind as DomainOperationKind,
  newId,
  type VolumeState,
} from "@stowage/core";
import { AgentCommandSchema } from "@stowage/proto";
import {
  getOperationByRequestId,
  insertOperation,
  type OperationRow,
  poolNameOnHost,
  type Queryable,
  transitionVolume,
  type VolumeRow,
  writeAudit,
} from "@stowage/store";
import { operationKinds } from "@stowage/wire";
import { callerOf } from "./audit.js";
import { commandDeadlineMs, DEFAULT_OPERATION_TTL_MS } from "./deadline.js";

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
    /** The export a create_export or delete_export changes. */
    exportId?: string;
    actor: string;
    /** When the caller needed the id first (to write it on the volume row). */
    operationId?: string;
    /** The caller's request id, which `startedBefore` finds again on a retry. */
    requestId?: string | null;
  },
): Promise<OperationRow> {
  const operationId = o.operationId ?? newId("op");
  const collected = writtenIn.get(tx);
  const poolName = await poolNameFor(tx, o.volume);
  const row = await insertOperation(tx, {
    id: operationId,
    kind: o.kind,
    hostId: o.volume.hostId,
    poolId: o.volume.poolId,
    volumeId: o.volume.id,
    ...(o.snapshotId ? { snapshotId: o.snapshotId } : {}),
    ...(o.exportId ? { exportId: o.exportId } : {}),
    command: agentCommand(operationId, o.kind, { ...o.volume, poolName }, o.payload, collected?.deadlineMs),
    requestedBy: o.actor,
    requestId: o.requestId ?? null,
  });
  collected?.ops.push(row);
  return row;
}

/**
 * The operations each open `mutate` transaction has written, so it can publish them once it commits, and the
 * deadline its controller gives their commands.
 */
const writtenIn = new WeakMap<object, { ops: OperationRow[]; deadlineMs: number }>();

/**
 * The name the volume's host knows its pool by. A pool's id is `<host>/<name>` of the host that made it, which
 * is the answer for every volume of a host's own pool; a shared pool (netfs) reached through another host, or
 * handed over to one, is named by that host's attachment (one query, only then).
 */
async function poolNameFor(tx: Queryable, v: Pick<VolumeRow, "hostId" | "poolId">): Promise<string> {
  if (v.poolId.startsWith(`${v.hostId}/`)) return v.poolId.slice(v.hostId.length + 1);
  return (await poolNameOnHost(tx, v.poolId, v.hostId)) ?? v.poolId.slice(v.poolId.indexOf("/") + 1);
}

/**
 * Starts collecting the operations written in this transaction (`enqueueOperation`), whose commands get
 * `deadlineMs` to start (deadline.ts); answers the list.
 */
export function collectOperations(tx: object, deadlineMs?: number): OperationRow[] {
  const ops: OperationRow[] = [];
  writtenIn.set(tx, { ops, deadlineMs: deadlineMs ?? commandDeadlineMs(DEFAULT_OPERATION_TTL_MS) });
  return ops;
}

/**
 * The command an agent runs for an operation, protobuf binary, as the outbox row keeps it: issued now, not to be
 * started after `deadlineMs` from now (deadline.ts; re-sends publish the same bytes, so the deadline stays).
 */
export function agentCommand(
  operationId: string,
  kind: DomainOperationKind,
  volume: Pick<VolumeRow, "hostId" | "poolId"> & { poolName?: string },
  payload: MessageInitShape<typeof AgentCommandSchema>["payload"],
  deadlineMs = commandDeadlineMs(DEFAULT_OPERATION_TTL_MS),
): Uint8Array {
  const now = Date.now();
  const command = create(AgentCommandSchema, {
    operationId,
    kind: operationKinds.wire(kind),
    hostId: volume.hostId,
    poolName: volume.poolName ?? volume.poolId.slice(volume.hostId.length + 1),
    attempt: 1,
    issuedAt: timestampFromMs(now),
    deadline: timestampFromMs(now + deadlineMs),
    payload,
  });
  return toBinary(AgentCommandSchema, command);
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
    ...callerOf(o.actor),
    action: o.audit.action,
    target: o.audit.target ?? o.volume.id,
    request: o.audit.request,
    outcome: "ok",
  });
  return { volume, operation };
}

/**
 * The operation that an earlier call with this request id started, when it was the same call on the same volume:
 * a retry returns it (whatever happened since) instead of starting another, so a revert or resize retried after
 * a lost answer runs once. The id used for another call or volume is ALREADY_EXISTS.
 */
export async function startedBefore(
  tx: Queryable,
  requestId: string | null,
  kind: DomainOperationKind,
  v: VolumeRow,
): Promise<OperationRow | undefined> {
  if (!requestId) return undefined;
  const op = await getOperationByRequestId(tx, requestId);
  if (!op) return undefined;
  if (op.kind !== kind || op.volumeId !== v.id)
    throw alreadyExists(
      `request id ${requestId} was already used for ${op.kind.replaceAll("_", " ")} of volume ${op.volumeId}: use a new request id for a new call`,
      { field: "request_id" },
    );
  return op;
}
