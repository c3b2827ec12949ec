import {
  alreadyExists,
  failedPrecondition,
  formatSize,
  invalidArgument,
  newId,
  notFound,
  type Qcow2Options,
  resourceExhausted,
  type StowageError,
  type VolumeFormat,
  validateLabels,
  validateName,
  validateVolumeSize,
} from "@stowage/core";
import type { CreateVolumeGroupRequest, CreateVolumeRequest, DeleteVolumeRequest } from "@stowage/proto";
import { type PlacementDecision, type PlacementRequest, refusedOnlyForCapacity } from "@stowage/scheduler";
import {
  getOperation,
  getVolumeById,
  getVolumeByName,
  getVolumeByRequestOrName,
  insertPlacedVolume,
  liveExportsOfVolume,
  liveSnapshotCount,
  type OperationRow,
  poolId,
  type Queryable,
  type VolumeRow,
  writeAudit,
} from "@stowage/store";
import { faultPoint } from "@stowage/telemetry";
import { formats, qcow2FromWire, qcow2ToWire, wipeModes } from "@stowage/wire";
import { callerOf, markAudited } from "./audit.js";
import { requireVolumeCapability } from "./capabilities.js";
import type { ControllerContext } from "./context.js";
import { commandDeadlineMs } from "./deadline.js";
import { agentCommand, startedBefore, startVolumeOperation } from "./outbox.js";
import { checkConstraintTargets, decide, decideGroup, liveView } from "./scheduling.js";
import { mutate, mutateOneStatement } from "./transaction.js";
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

/** A CreateVolumeRequest, validated. */
interface VolumeSpec {
  name: string;
  sizeBytes: bigint;
  format: VolumeFormat;
  qcow2: Qcow2Options;
  labels: Record<string, string>;
  requestId: string | null;
  constraints: PlacementRequest["constraints"];
  placement: PlacementRequest;
}

function validateCreate(req: CreateVolumeRequest, requestId = validateRequestId(req.requestId)): VolumeSpec {
  const name = validateName("volume name", req.name);
  const sizeBytes = validateVolumeSize(req.sizeBytes, "size_bytes");
  const constraints = constraintsFromWire(req.constraints);
  const format: VolumeFormat = formats.optional(req.format, "format") ?? defaultFormat(constraints.poolKinds);
  const qcow2 = validateQcow2(format, qcow2FromWire(req.qcow2));
  const labels = validateLabels(req.labels);
  return {
    name,
    sizeBytes,
    format,
    qcow2,
    labels,
    requestId,
    constraints,
    placement: { name, sizeBytes, format, constraints },
  };
}

/**
 * Writes one placed volume in one statement (store `insertPlacedVolume`): the ledger's conditional UPDATE, the
 * volume row, its reservation, the outbox operation and the audit entry. Throws ReservationConflict when the
 * ledger refuses (nothing was written); the caller places again.
 */
async function writeCreate(
  ctx: ControllerContext,
  tx: Queryable,
  spec: VolumeSpec,
  decision: PlacementDecision,
  actor: string,
) {
  const volumeId = newId("vol");
  const operationId = newId("op");
  // The command names the pool as the volume's host knows it: a shared pool may be another host's row.
  const name = liveView(ctx).poolNameOn(decision.poolId, decision.hostId);
  const target =
    name === undefined ? decision : { hostId: decision.hostId, poolId: poolId(decision.hostId, name) };
  const written = await insertPlacedVolume(tx, {
    volume: {
      id: volumeId,
      name: spec.name,
      sizeBytes: spec.sizeBytes,
      format: spec.format,
      poolId: decision.poolId,
      hostId: decision.hostId,
      numaNode: decision.numaNode,
      cpuSet: decision.cpuSet,
      labels: spec.labels,
      qcow2: spec.qcow2 as Record<string, unknown>,
      requestId: spec.requestId,
      operationId,
      antiAffinityGroup: spec.constraints.antiAffinityGroup ?? "",
    },
    reservation: { ttlMs: ctx.config.reservationTtlMs },
    operation: {
      id: operationId,
      kind: "create_volume",
      command: agentCommand(
        operationId,
        "create_volume",
        target,
        {
          case: "createVolume",
          value: {
            volumeId,
            sizeBytes: spec.sizeBytes,
            format: formats.wire(spec.format),
            qcow2: spec.format === "qcow2" ? qcow2ToWire(spec.qcow2) : undefined,
          },
        },
        commandDeadlineMs(ctx.config.reservationTtlMs),
      ),
      requestedBy: actor,
    },
    audit: {
      ...callerOf(actor),
      action: "CreateVolume",
      target: volumeId,
      request: {
        name: spec.name,
        sizeBytes: spec.sizeBytes,
        format: spec.format,
        pool: decision.poolId,
        requestId: spec.requestId,
      },
      outcome: "ok",
    },
  });
  if (!written) throw new ReservationConflict();
  return written;
}

function refusal(summary: string, capacity: boolean): StowageError {
  return capacity ? resourceExhausted(summary) : failedPrecondition(summary);
}

/**
 * CreateVolume: validate, make idempotent by name and request id, place, and write the reservation, the volume
 * row, the outbox row and the audit entry in one transaction. The placement is held in the live view while the
 * transaction runs, so concurrent creates see each other (live-view.ts). A reservation the ledger refuses
 * (another controller took the space) means re-reading that pool and placing again.
 */
export async function createVolume(
  ctx: ControllerContext,
  req: CreateVolumeRequest,
  actor: string,
): Promise<CreateVolumeOutcome> {
  const spec = validateCreate(req);
  const existing = await findExisting(ctx.sql, spec.name, spec.requestId);
  if (existing) return sameOrConflict(ctx, existing, spec);

  await checkConstraintTargets(ctx.sql, spec.placement, liveView(ctx));
  for (let attempt = 1; attempt <= MAX_PLACEMENT_ATTEMPTS; attempt++) {
    const { decision, hold } = await decide(ctx, spec.placement, {
      explain: Boolean(req.dryRun),
      hold: !req.dryRun,
    });
    if (!decision.feasible) {
      const err = refusal(decision.summary, refusedOnlyForCapacity(decision));
      await audit(ctx, actor, "CreateVolume", spec.name, req, err);
      throw err;
    }
    if (req.dryRun || !hold) return { placement: decision };
    try {
      // One statement: killed before it, nothing is written (the matrix's "before commit" for a create).
      faultPoint("before-commit", "create_volume");
      const out = await mutateOneStatement(
        ctx,
        (sql) => writeCreate(ctx, sql, spec, decision, actor),
        (o) => [o.operation],
      );
      liveView(ctx).commit(hold);
      ctx.log.info(
        {
          volumeId: out.volume.id,
          operationId: out.operation.id,
          pool: decision.poolId,
          size: spec.sizeBytes.toString(),
        },
        "volume placed",
      );
      return { ...out, placement: decision };
    } catch (err) {
      liveView(ctx).release(hold);
      if (err instanceof ReservationConflict) {
        ctx.metrics.reservationConflicts.inc();
        ctx.metrics.schedulerDecisions.inc({ result: "conflict" });
        await liveView(ctx).reread([decision.poolId]);
        continue;
      }
      if (isUniqueViolation(err)) {
        // The same name or request id was created concurrently: answer as a retry would.
        const again = await findExisting(ctx.sql, spec.name, spec.requestId);
        if (again) return sameOrConflict(ctx, again, spec);
      }
      throw err;
    }
  }
  throw resourceExhausted(
    `could not reserve ${formatSize(spec.sizeBytes)} after ${MAX_PLACEMENT_ATTEMPTS} attempts: pools are filling up concurrently`,
  );
}

/**
 * CreateVolumeGroup: the disks of one VM, placed and reserved all or nothing in one transaction. With a request
 * id, each disk gets `<request id>:<index>`, so a retried group returns the first one's volumes.
 */
export async function createVolumeGroup(
  ctx: ControllerContext,
  req: CreateVolumeGroupRequest,
  actor: string,
): Promise<CreateVolumeOutcome[]> {
  if (req.volumes.length === 0) throw invalidArgument("volumes is empty: a group needs at least one volume");
  if (req.volumes.length > 64) throw invalidArgument("a group holds at most 64 volumes");
  const groupId = validateRequestId(req.requestId);
  if (groupId && groupId.length > 120)
    throw invalidArgument("request_id of a group is at most 120 characters");
  const specs = req.volumes.map((v, i) =>
    validateCreate(v, groupId ? `${groupId}:${i}` : validateRequestId(v.requestId)),
  );
  const names = new Set(specs.map((s) => s.name));
  if (names.size !== specs.length) throw invalidArgument("the volumes of a group need distinct names");

  const existing = await Promise.all(specs.map((s) => findExisting(ctx.sql, s.name, s.requestId)));
  if (existing.every(Boolean)) return Promise.all(existing.map((v, i) => sameOrConflict(ctx, v!, specs[i]!)));
  const clash = existing.find(Boolean);
  if (clash)
    throw alreadyExists(
      `volume ${clash.name} already exists: a group is created all or nothing; choose other names`,
    );
  for (const s of specs) await checkConstraintTargets(ctx.sql, s.placement, liveView(ctx));

  for (let attempt = 1; attempt <= MAX_PLACEMENT_ATTEMPTS; attempt++) {
    const { group, holds } = await decideGroup(
      ctx,
      specs.map((s) => s.placement),
      { explain: Boolean(req.dryRun), hold: !req.dryRun },
    );
    if (!group.feasible) {
      const capacity = group.decisions.some((d) => !d.feasible && refusedOnlyForCapacity(d));
      const err = refusal(group.summary, capacity);
      await audit(ctx, actor, "CreateVolumeGroup", specs.map((s) => s.name).join(","), req, err);
      throw err;
    }
    if (req.dryRun) return group.decisions.map((placement) => ({ placement }));
    try {
      const out = await mutate(
        ctx,
        async (tx) => {
          const made = [];
          for (const [i, spec] of specs.entries()) {
            const d = group.decisions[i]!;
            made.push({ ...(await writeCreate(ctx, tx, spec, d, actor)), placement: d });
          }
          return made;
        },
        (made) => made.map((o) => o.operation),
      );
      for (const h of holds) liveView(ctx).commit(h);
      ctx.log.info(
        { volumes: out.map((o) => o.volume.id), pools: out.map((o) => o.placement.poolId) },
        "volume group placed",
      );
      return out;
    } catch (err) {
      for (const h of holds) liveView(ctx).release(h);
      if (err instanceof ReservationConflict) {
        ctx.metrics.reservationConflicts.inc();
        ctx.metrics.schedulerDecisions.inc({ result: "conflict" });
        await liveView(ctx).reread([...new Set(group.decisions.map((d) => d.poolId))]);
        continue;
      }
      if (isUniqueViolation(err))
        throw alreadyExists(
          "a volume of the group was created concurrently: retry with the same request id to get the group",
        );
      throw err;
    }
  }
  throw resourceExhausted(
    `could not reserve the group after ${MAX_PLACEMENT_ATTEMPTS} attempts: pools are filling up concurrently`,
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
  return getVolumeByRequestOrName(sql, name, requestId);
}

async function sameOrConflict(
  ctx: ControllerContext,
  v: VolumeRow,
  want: Pick<VolumeSpec, "name" | "sizeBytes" | "format" | "requestId">,
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
  const requestId = validateRequestId(req.requestId);
  const wipe = wipeModes.optional(req.wipe, "wipe") ?? "none";
  return mutate(ctx, async (tx) => {
    const found = ref.id ? await getVolumeById(tx, ref.id, true) : await getVolumeByName(tx, ref.name!);
    if (!found)
      throw notFound(`volume ${req.volume} not found: list volumes with \`stowctl volume list\``, {
        field: "volume",
      });
    const v = ref.id ? found : ((await getVolumeById(tx, found.id, true)) ?? found);
    const before = await startedBefore(tx, requestId, "delete_volume", v);
    if (before) return { volume: v, operation: before };
    if (v.state === "deleted" || v.state === "deleting") {
      const operation = v.operationId ? await getOperation(tx, v.operationId) : undefined;
      return { volume: v, ...(operation ? { operation } : {}) };
    }
    if (v.state === "resizing" || v.state === "reverting")
      throw failedPrecondition(`volume ${v.name} is ${v.state}: wait for it to finish, then delete it`);
    await requireVolumeCapability(ctx, tx, v, { wipe });
    const exports = await liveExportsOfVolume(tx, v.id);
    if (exports.length > 0) {
      throw failedPrecondition(
        `volume ${v.name} is exported (${exports.map((e) => `${e.kind} ${e.id}`).join(", ")}): unexport it first (stowctl volume unexport ${v.name})`,
      );
    }
    const snapshots = await liveSnapshotCount(tx, v.id);
    if (snapshots > 0) {
      throw failedPrecondition(
        `volume ${v.name} has ${snapshots} snapshot${snapshots === 1 ? "" : "s"}: delete them first (stowctl snapshot list ${v.name})`,
      );
    }
    return startVolumeOperation(tx, {
      kind: "delete_volume",
      volume: v,
      payload: { case: "deleteVolume", value: { volumeId: v.id, wipe: wipeModes.wire(wipe) } },
      actor,
      requestId,
      state: "deleting",
      audit: { action: "DeleteVolume", request: { volume: req.volume, wipe: req.wipe } },
    });
  });
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
      ...callerOf(actor),
      action,
      target,
      request,
      outcome: "error",
      error: `${err.code}: ${err.message}`,
    });
    // Written outside the transaction, so it stays: the audit interceptor writes no second row.
    markAudited();
  } catch (e) {
    ctx.log.warn({ err: e }, "audit write failed");
  }
}
