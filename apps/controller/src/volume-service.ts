import { create, toBinary } from "@bufbuild/protobuf";
import { timestampNow } from "@bufbuild/protobuf/wkt";
import {
  alreadyExists,
  failedPrecondition,
  formatSize,
  newId,
  notFound,
  resourceExhausted,
  type StowageError,
  type VolumeFormat,
  validateLabels,
  validateName,
  validateVolumeSize,
} from "@stowage/core";
import {
  AgentCommandSchema,
  type CreateVolumeRequest,
  type DeleteVolumeRequest,
  OperationKind,
  WipeMode,
} from "@stowage/proto";
import { type PlacementDecision, type PlacementRequest, refusedOnlyForCapacity } from "@stowage/scheduler";
import {
  getOperation,
  getVolumeById,
  getVolumeByName,
  getVolumeByRequestId,
  insertOperation,
  insertVolume,
  type OperationRow,
  type Queryable,
  reserveCapacity,
  updateVolume,
  type VolumeRow,
  writeAudit,
} from "@stowage/store";
import type { ControllerContext } from "./context.js";
import { formats, qcow2FromWire, qcow2ToWire } from "./convert.js";
import { checkConstraintTargets, decide, isThinKind } from "./scheduling.js";
import {
  constraintsFromWire,
  defaultFormat,
  validateQcow2,
  validateRequestId,
  validateVolumeRef,
} from "./validate.js";

export interface CreateVolumeOutcome {
  volume?: VolumeRow;
  operation?: OperationRow;
  placement: PlacementDecision;
}

const MAX_PLACEMENT_ATTEMPTS = 8;

/**
 * CreateVolume: validate, make idempotent by name and request id, place, and write the reservation, the volume
 * row, the outbox row and the audit entry in one transaction. A reservation the ledger refuses (another controller
 * took the space) means placing again against fresh numbers.
 */
export async function createVolume(
  ctx: ControllerContext,
  req: CreateVolumeRequest,
  actor: string,
): Promise<CreateVolumeOutcome> {
  const name = validateName("volume name", req.name);
  const sizeBytes = validateVolumeSize(req.sizeBytes, "size_bytes");
  const constraints = constraintsFromWire(req.constraints);
  const format: VolumeFormat = formats.domain(req.format) ?? defaultFormat(constraints.poolKinds);
  const qcow2 = validateQcow2(format, qcow2FromWire(req.qcow2));
  const labels = validateLabels(req.labels);
  const requestId = validateRequestId(req.requestId);
  const placementRequest: PlacementRequest = { name, sizeBytes, format, constraints };

  const existing = await findExisting(ctx.sql, name, requestId);
  if (existing) return sameOrConflict(ctx, existing, { name, sizeBytes, format, requestId });

  await checkConstraintTargets(ctx.sql, placementRequest);
  for (let attempt = 1; attempt <= MAX_PLACEMENT_ATTEMPTS; attempt++) {
    const decision = await decide(ctx, placementRequest);
    if (!decision.feasible) {
      const err = refusedOnlyForCapacity(decision)
        ? resourceExhausted(decision.summary)
        : failedPrecondition(decision.summary);
      await audit(ctx, actor, "CreateVolume", name, req, err);
      throw Object.assign(err, { placement: decision });
    }
    if (req.dryRun) return { placement: decision };

    const pool = decision.candidates[0]!;
    const volumeId = newId("vol");
    const operationId = newId("op");
    const poolName = decision.poolId.slice(decision.hostId.length + 1);
    const command = create(AgentCommandSchema, {
      operationId,
      kind: OperationKind.CREATE_VOLUME,
      hostId: decision.hostId,
      poolName,
      attempt: 1,
      issuedAt: timestampNow(),
      payload: {
        case: "createVolume",
        value: {
          volumeId,
          sizeBytes,
          format: formats.wire(format),
          qcow2: format === "qcow2" ? qcow2ToWire(qcow2) : undefined,
        },
      },
    });
    const thin = isThinKind(
      (await ctx.sql<{ kind: "dir" }[]>`select kind from pools where id = ${pool.poolId}`)[0]?.kind ?? "dir",
    );
    try {
      const out = await ctx.sql.begin(async (tx) => {
        const volume = await insertVolume(tx, {
          id: volumeId,
          name,
          sizeBytes,
          format,
          poolId: decision.poolId,
          hostId: decision.hostId,
          numaNode: decision.numaNode,
          cpuSet: decision.cpuSet,
          labels,
          qcow2: qcow2 as Record<string, unknown>,
          requestId,
          operationId,
          antiAffinityGroup: constraints.antiAffinityGroup ?? "",
        });
        const ok = await reserveCapacity(tx, {
          poolId: decision.poolId,
          volumeId,
          bytes: sizeBytes,
          ttlMs: ctx.config.reservationTtlMs,
          thin,
        });
        if (!ok) throw new ReservationConflict();
        const operation = await insertOperation(tx, {
          id: operationId,
          kind: "create_volume",
          hostId: decision.hostId,
          poolId: decision.poolId,
          volumeId,
          command: toBinary(AgentCommandSchema, command),
          requestedBy: actor,
        });
        await writeAudit(tx, {
          actor,
          action: "CreateVolume",
          target: volumeId,
          request: { name, sizeBytes, format, pool: decision.poolId, requestId },
          outcome: "ok",
        });
        return { volume, operation };
      });
      ctx.kickRelay();
      ctx.notifyChange();
      ctx.log.info(
        { volumeId, operationId, pool: decision.poolId, size: sizeBytes.toString() },
        "volume placed",
      );
      return { ...out, placement: decision };
    } catch (err) {
      if (err instanceof ReservationConflict) {
        ctx.metrics.reservationConflicts.inc();
        ctx.metrics.schedulerDecisions.inc({ result: "conflict" });
        continue;
      }
      if (isUniqueViolation(err)) {
        // The same name or request id was created concurrently: answer as a retry would.
        const again = await findExisting(ctx.sql, name, requestId);
        if (again) return sameOrConflict(ctx, again, { name, sizeBytes, format, requestId });
      }
      throw err;
    }
  }
  throw resourceExhausted(
    `could not reserve ${formatSize(sizeBytes)} after ${MAX_PLACEMENT_ATTEMPTS} attempts: pools are filling up concurrently`,
  );
}

class ReservationConflict extends Error {}

function isUniqueViolation(err: unknown): boolean {
  return typeof err === "object" && err !== null && (err as { code?: string }).code === "23505";
}

async function findExisting(
  sql: Queryable,
  name: string,
  requestId: string | null,
): Promise<VolumeRow | undefined> {
  if (requestId) {
    const byRequest = await getVolumeByRequestId(sql, requestId);
    if (byRequest) return byRequest;
  }
  return getVolumeByName(sql, name);
}

async function sameOrConflict(
  ctx: ControllerContext,
  v: VolumeRow,
  want: { name: string; sizeBytes: bigint; format: VolumeFormat; requestId: string | null },
): Promise<CreateVolumeOutcome> {
  if (want.requestId && v.requestId === want.requestId && v.name !== want.name) {
    throw alreadyExists(`request id ${want.requestId} was already used to create volume ${v.name}`);
  }
  if (
    v.name === want.name &&
    v.state !== "deleted" &&
    (v.sizeBytes !== want.sizeBytes || v.format !== want.format)
  ) {
    throw alreadyExists(
      `volume ${v.name} already exists with a different size or format (${formatSize(v.sizeBytes)} ${v.format}): choose another name, or delete it first`,
    );
  }
  const operation = v.operationId ? await getOperation(ctx.sql, v.operationId) : undefined;
  return {
    volume: v,
    ...(operation ? { operation } : {}),
    placement: {
      feasible: true,
      poolId: v.poolId,
      hostId: v.hostId,
      numaNode: v.numaNode,
      cpuSet: v.cpuSet,
      candidates: [],
      summary: `volume ${v.name} already exists on ${v.poolId}`,
    },
  };
}

export async function resolveVolume(sql: Queryable, ref: string): Promise<VolumeRow> {
  const r = validateVolumeRef(ref);
  const v = r.id ? await getVolumeById(sql, r.id) : await getVolumeByName(sql, r.name!);
  if (!v)
    throw notFound(`volume ${ref} not found: list volumes with \`stowctl volume list\``, { field: "volume" });
  return v;
}

/**
 * DeleteVolume: the volume becomes `deleting` and a delete operation goes to the outbox, in one transaction.
 * Repeating it returns the operation in flight, or the deleted volume.
 */
export async function deleteVolume(
  ctx: ControllerContext,
  req: DeleteVolumeRequest,
  actor: string,
): Promise<{ volume: VolumeRow; operation?: OperationRow }> {
  const ref = validateVolumeRef(req.volume);
  validateRequestId(req.requestId);
  const out = await ctx.sql.begin(async (tx) => {
    const found = ref.id ? await getVolumeById(tx, ref.id, true) : await getVolumeByName(tx, ref.name!);
    if (!found)
      throw notFound(`volume ${req.volume} not found: list volumes with \`stowctl volume list\``, {
        field: "volume",
      });
    const v = ref.id ? found : ((await getVolumeById(tx, found.id, true)) ?? found);
    if (v.state === "deleted" || v.state === "deleting") {
      const operation = v.operationId ? await getOperation(tx, v.operationId) : undefined;
      return { volume: v, ...(operation ? { operation } : {}) };
    }
    if (v.state === "resizing")
      throw failedPrecondition(`volume ${v.name} is resizing: wait for it to finish, then delete it`);
    const operationId = newId("op");
    const poolName = v.poolId.slice(v.hostId.length + 1);
    const command = create(AgentCommandSchema, {
      operationId,
      kind: OperationKind.DELETE_VOLUME,
      hostId: v.hostId,
      poolName,
      attempt: 1,
      issuedAt: timestampNow(),
      payload: {
        case: "deleteVolume",
        value: { volumeId: v.id, wipe: req.wipe === WipeMode.UNSPECIFIED ? WipeMode.NONE : req.wipe },
      },
    });
    const operation = await insertOperation(tx, {
      id: operationId,
      kind: "delete_volume",
      hostId: v.hostId,
      poolId: v.poolId,
      volumeId: v.id,
      command: toBinary(AgentCommandSchema, command),
      requestedBy: actor,
    });
    const volume = await updateVolume(tx, v.id, { state: "deleting", operationId });
    await writeAudit(tx, {
      actor,
      action: "DeleteVolume",
      target: v.id,
      request: { volume: req.volume, wipe: req.wipe },
      outcome: "ok",
    });
    return { volume, operation };
  });
  ctx.kickRelay();
  ctx.notifyChange();
  return out;
}

async function audit(
  ctx: ControllerContext,
  actor: string,
  action: string,
  target: string,
  request: unknown,
  err: StowageError,
) {
  try {
    await writeAudit(ctx.sql, {
      actor,
      action,
      target,
      request,
      outcome: "error",
      error: `${err.code}: ${err.message}`,
    });
  } catch (e) {
    ctx.log.warn({ err: e }, "audit write failed");
  }
}
