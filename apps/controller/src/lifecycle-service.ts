import {
  alreadyExists,
  failedPrecondition,
  formatSize,
  invalidArgument,
  isId,
  newId,
  notFound,
  resourceExhausted,
  validateLabels,
  validateName,
  validateVolumeSize,
} from "@stowage/core";
import type {
  CloneVolumeRequest,
  CreateSnapshotRequest,
  DeleteSnapshotRequest,
  ResizeVolumeRequest,
  RevertSnapshotRequest,
} from "@stowage/proto";
import {
  cloneCountsBySnapshot,
  cloneNeedsBase,
  clonesOfSnapshot,
  getOperation,
  getPool,
  getSnapshot,
  getVolumeById,
  getVolumeByName,
  getVolumeByRequestId,
  insertSnapshot,
  insertVolume,
  listSnapshots,
  type OperationRow,
  type Queryable,
  reserveCapacity,
  reserveSnapshotCapacity,
  resizeHolding,
  type SnapshotRow,
  settleCloneBases,
  snapshotHoldingBytes,
  transitionSnapshot,
  type VolumeRow,
  writeAudit,
} from "@stowage/store";
import { formats } from "@stowage/wire";
import { callerOf } from "./audit.js";
import { requireVolumeCapability } from "./capabilities.js";
import type { ControllerContext } from "./context.js";
import { enqueueOperation, startedBefore, startVolumeOperation } from "./outbox.js";
import { mutate } from "./transaction.js";
import { validateRequestId } from "./validate.js";
import { resolveVolume } from "./volume-service.js";

async function lockVolume(tx: Queryable, ref: string): Promise<VolumeRow> {
  const v = await resolveVolume(tx, ref);
  return (await getVolumeById(tx, v.id, true)) ?? v;
}

function requireAvailable(v: VolumeRow, what: string): void {
  if (v.state !== "available")
    throw failedPrecondition(`volume ${v.name} is ${v.state}: ${what} needs it available`);
}

/** The snapshot an earlier operation was about, as it is now. */
async function snapshotOf(tx: Queryable, v: VolumeRow, op: OperationRow): Promise<SnapshotRow> {
  const s = await getSnapshot(tx, v.id, { id: op.snapshotId });
  if (!s) throw notFound(`snapshot ${op.snapshotId} of volume ${v.name} not found`);
  return s;
}

/**
 * ResizeVolume: growing reserves the extra bytes in the ledger first (and is refused with RESOURCE_EXHAUSTED when
 * they do not fit); shrinking loses data and needs allow_shrink. The same size again returns the volume as is.
 */
export async function resizeVolume(
  ctx: ControllerContext,
  req: ResizeVolumeRequest,
  actor: string,
): Promise<{ volume: VolumeRow; operation?: OperationRow }> {
  const newSize = validateVolumeSize(req.newSizeBytes, "new_size_bytes");
  const requestId = validateRequestId(req.requestId);
  return mutate(ctx, async (tx) => {
    const v = await lockVolume(tx, req.volume);
    const before = await startedBefore(tx, requestId, "resize_volume", v);
    if (before) return { volume: v, operation: before };
    if (v.state === "resizing" && v.sizeBytes === newSize) {
      const operation = v.operationId ? await getOperation(tx, v.operationId) : undefined;
      return { volume: v, ...(operation ? { operation } : {}) };
    }
    requireAvailable(v, "a resize");
    if (newSize === v.sizeBytes) return { volume: v };
    if (newSize < v.sizeBytes) await requireVolumeCapability(ctx, tx, v, "shrink");
    if (newSize < v.sizeBytes && !req.allowShrink) {
      throw failedPrecondition(
        `shrinking ${v.name} from ${formatSize(v.sizeBytes)} to ${formatSize(newSize)} throws away the data past the new end: pass allow_shrink (stowctl: --allow-shrink) if you mean it`,
      );
    }
    if (!(await resizeHolding(tx, { volumeId: v.id, bytes: newSize }))) {
      throw resourceExhausted(
        `pool ${v.poolId} cannot take ${formatSize(newSize - v.sizeBytes)} more for ${v.name}`,
      );
    }
    // The volume row keeps its size until the agent confirms; the ledger already holds the new one.
    return startVolumeOperation(tx, {
      kind: "resize_volume",
      volume: v,
      payload: {
        case: "resizeVolume",
        value: { volumeId: v.id, newSizeBytes: newSize, allowShrink: req.allowShrink },
      },
      actor,
      requestId,
      state: "resizing",
      audit: { action: "ResizeVolume", request: { newSize, allowShrink: req.allowShrink } },
    });
  });
}

export async function resolveSnapshot(sql: Queryable, volume: VolumeRow, ref: string): Promise<SnapshotRow> {
  if (ref === "") throw invalidArgument("snapshot is required: give its id or name", { field: "snapshot" });
  const s = isId(ref, "snap")
    ? await getSnapshot(sql, volume.id, { id: ref })
    : await getSnapshot(sql, volume.id, { name: validateName("snapshot", ref) });
  if (!s)
    throw notFound(
      `snapshot ${ref} of volume ${volume.name} not found: list them with \`stowctl snapshot list ${volume.name}\``,
    );
  return s;
}

/** One page of a volume's snapshots, each with the number of live volumes cloned from it. */
export async function listSnapshotsPage(
  ctx: ControllerContext,
  volumeRef: string,
  page: { after: string; limit: number },
): Promise<{ snapshot: SnapshotRow; cloneCount: number }[]> {
  const v = await resolveVolume(ctx.sql, volumeRef);
  const rows = await listSnapshots(ctx.sql, v.id, page);
  const clones = await cloneCountsBySnapshot(ctx.sql, v.id);
  return rows.map((snapshot) => ({ snapshot, cloneCount: clones.get(snapshot.id) ?? 0 }));
}

/** CreateSnapshot: idempotent by (volume, name); refused where the volume's pool kind and format has none. */
export async function createSnapshot(
  ctx: ControllerContext,
  req: CreateSnapshotRequest,
  actor: string,
): Promise<{ snapshot: SnapshotRow; operation?: OperationRow }> {
  const name = validateName("snapshot name", req.name);
  const requestId = validateRequestId(req.requestId);
  return mutate(ctx, async (tx) => {
    const v = await lockVolume(tx, req.volume);
    const before = await startedBefore(tx, requestId, "create_snapshot", v);
    if (before) return { snapshot: await snapshotOf(tx, v, before), operation: before };
    await requireVolumeCapability(ctx, tx, v, "snapshots");
    const existing = await getSnapshot(tx, v.id, { name });
    if (existing) {
      const operation = existing.operationId ? await getOperation(tx, existing.operationId) : undefined;
      return { snapshot: existing, ...(operation ? { operation } : {}) };
    }
    requireAvailable(v, "a snapshot");
    const snapshotId = newId("snap");
    const operationId = newId("op");
    // What the snapshot holds by its pool's kind, reserved first: when it does not fit nothing is written.
    const pool = await getPool(tx, v.poolId);
    if (!pool) throw notFound(`pool ${v.poolId} not found`);
    const bytes = snapshotHoldingBytes(pool.kind, v.sizeBytes);
    if (
      !(await reserveSnapshotCapacity(tx, {
        poolId: v.poolId,
        snapshotId,
        holds: "snapshot",
        bytes,
        operationId,
        ttlMs: ctx.config.reservationTtlMs,
      }))
    ) {
      throw resourceExhausted(
        bytes > 0n
          ? `pool ${v.poolId} cannot take a snapshot of ${v.name}: a ${pool.kind} snapshot holds ${formatSize(bytes)}`
          : `pool ${v.poolId} cannot take a snapshot of ${v.name}: the pool is past its limits`,
      );
    }
    const operation = await enqueueOperation(tx, {
      kind: "create_snapshot",
      volume: v,
      snapshotId,
      operationId,
      payload: { case: "createSnapshot", value: { volumeId: v.id, snapshotId } },
      actor,
      requestId,
    });
    const snapshot = await insertSnapshot(tx, {
      id: snapshotId,
      name,
      volumeId: v.id,
      sizeBytes: v.sizeBytes,
      operationId: operation.id,
    });
    await writeAudit(tx, {
      ...callerOf(actor),
      action: "CreateSnapshot",
      target: snapshotId,
      request: { volume: v.id, name },
      outcome: "ok",
    });
    return { snapshot, operation };
  });
}

/** DeleteSnapshot: refused while clones depend on it; repeating it returns the deletion in flight. */
export async function deleteSnapshot(
  ctx: ControllerContext,
  req: DeleteSnapshotRequest,
  actor: string,
): Promise<{ snapshot: SnapshotRow; operation?: OperationRow }> {
  const requestId = validateRequestId(req.requestId);
  return mutate(ctx, async (tx) => {
    const v = await lockVolume(tx, req.volume);
    const before = await startedBefore(tx, requestId, "delete_snapshot", v);
    if (before) return { snapshot: await snapshotOf(tx, v, before), operation: before };
    const s = await resolveSnapshot(tx, v, req.snapshot);
    if (s.state === "deleting" || s.state === "deleted") {
      const operation = s.operationId ? await getOperation(tx, s.operationId) : undefined;
      return { snapshot: s, ...(operation ? { operation } : {}) };
    }
    const clones = await clonesOfSnapshot(tx, s.id);
    if (clones.length) {
      throw failedPrecondition(
        `snapshot ${s.name} has clones (${clones.map((c) => c.name).join(", ")}): delete or flatten them first`,
      );
    }
    const operation = await enqueueOperation(tx, {
      kind: "delete_snapshot",
      volume: v,
      snapshotId: s.id,
      payload: { case: "deleteSnapshot", value: { volumeId: v.id, snapshotId: s.id } },
      actor,
      requestId,
    });
    const snapshot = await transitionSnapshot(tx, s, "deleting", { operationId: operation.id });
    await writeAudit(tx, {
      ...callerOf(actor),
      action: "DeleteSnapshot",
      target: s.id,
      request: { volume: v.id },
      outcome: "ok",
    });
    return { snapshot, operation };
  });
}

/** RevertSnapshot: rolls the volume back; the volume is `reverting` until the agent confirms. */
export async function revertSnapshot(
  ctx: ControllerContext,
  req: RevertSnapshotRequest,
  actor: string,
): Promise<{ snapshot: SnapshotRow; operation?: OperationRow }> {
  const requestId = validateRequestId(req.requestId);
  return mutate(ctx, async (tx) => {
    const v = await lockVolume(tx, req.volume);
    const before = await startedBefore(tx, requestId, "revert_snapshot", v);
    if (before) return { snapshot: await snapshotOf(tx, v, before), operation: before };
    await requireVolumeCapability(ctx, tx, v, "revert");
    const s = await resolveSnapshot(tx, v, req.snapshot);
    if (s.state !== "available")
      throw failedPrecondition(
        `snapshot ${s.name} is ${s.state}: only an available snapshot can be reverted to`,
      );
    if (v.state === "reverting" && v.operationId) {
      const inFlight = await getOperation(tx, v.operationId);
      if (inFlight?.kind === "revert_snapshot" && inFlight.snapshotId === s.id)
        return { snapshot: s, operation: inFlight };
    }
    requireAvailable(v, "a revert");
    if (s.sizeBytes !== v.sizeBytes && !(await resizeHolding(tx, { volumeId: v.id, bytes: s.sizeBytes }))) {
      throw resourceExhausted(`pool ${v.poolId} cannot take the snapshot's size back`);
    }
    const { operation } = await startVolumeOperation(tx, {
      kind: "revert_snapshot",
      volume: v,
      snapshotId: s.id,
      payload: { case: "revertSnapshot", value: { volumeId: v.id, snapshotId: s.id } },
      actor,
      requestId,
      state: "reverting",
      audit: { action: "RevertSnapshot", target: s.id, request: { volume: v.id } },
    });
    return { snapshot: s, operation };
  });
}

/**
 * CloneVolume: a new volume from a source volume's data or one of its snapshots, in the source's pool (clones
 * share blocks with their source: qcow2 backing files, LVM thin snapshots, RBD clones). Idempotent by name and
 * request id.
 */
export async function cloneVolume(
  ctx: ControllerContext,
  req: CloneVolumeRequest,
  actor: string,
): Promise<{ volume: VolumeRow; operation?: OperationRow }> {
  const name = validateName("volume name", req.name);
  const labels = validateLabels(req.labels);
  const requestId = validateRequestId(req.requestId);
  return mutate(ctx, async (tx) => {
    const already =
      (requestId ? await getVolumeByRequestId(tx, requestId) : undefined) ??
      (await getVolumeByName(tx, name));
    if (already) {
      if (already.name !== name || !already.sourceVolumeId)
        throw alreadyExists(`volume ${already.name} already exists: choose another name`);
      const operation = already.operationId ? await getOperation(tx, already.operationId) : undefined;
      return { volume: already, ...(operation ? { operation } : {}) };
    }
    const source = await lockVolume(tx, req.sourceVolume);
    await requireVolumeCapability(ctx, tx, source, "clones");
    if (req.flatten) await requireVolumeCapability(ctx, tx, source, "flatten");
    requireAvailable(source, "a clone");
    const snapshot = req.sourceSnapshot ? await resolveSnapshot(tx, source, req.sourceSnapshot) : undefined;
    if (snapshot && snapshot.state !== "available")
      throw failedPrecondition(`snapshot ${snapshot.name} is ${snapshot.state}`);
    const base = snapshot?.sizeBytes ?? source.sizeBytes;
    const size = req.sizeBytes === 0n ? base : validateVolumeSize(req.sizeBytes, "size_bytes");
    if (size < base)
      throw invalidArgument(`a clone cannot be smaller than its source (${formatSize(base)})`, {
        field: "size_bytes",
      });
    const volumeId = newId("vol");
    const operationId = newId("op");
    // A linked clone stands on a base image exported from the snapshot once: the first clone reserves it.
    const pool = await getPool(tx, source.poolId);
    if (!pool) throw notFound(`pool ${source.poolId} not found`);
    if (snapshot && cloneNeedsBase(pool.kind, source.format, req.flatten)) {
      await settleCloneBases(tx, [snapshot.id]);
      const baseFits = await reserveSnapshotCapacity(tx, {
        poolId: source.poolId,
        snapshotId: snapshot.id,
        holds: "base",
        bytes: snapshot.sizeBytes,
        operationId,
        ttlMs: ctx.config.reservationTtlMs,
      });
      if (!baseFits) {
        throw resourceExhausted(
          `pool ${source.poolId} cannot take the ${formatSize(snapshot.sizeBytes)} base image that clones of snapshot ${snapshot.name} stand on`,
        );
      }
    }
    const volume = await insertVolume(tx, {
      id: volumeId,
      name,
      sizeBytes: size,
      format: source.format,
      poolId: source.poolId,
      hostId: source.hostId,
      numaNode: source.numaNode,
      cpuSet: source.cpuSet,
      labels,
      qcow2: source.qcow2,
      requestId,
      operationId,
      antiAffinityGroup: "",
      sourceVolumeId: source.id,
      sourceSnapshotId: snapshot?.id ?? "",
    });
    if (
      !(await reserveCapacity(tx, {
        poolId: source.poolId,
        volumeId,
        bytes: size,
        ttlMs: ctx.config.reservationTtlMs,
      }))
    ) {
      throw resourceExhausted(
        `pool ${source.poolId} cannot take a ${formatSize(size)} clone of ${source.name}`,
      );
    }
    const operation = await enqueueOperation(tx, {
      kind: "clone_volume",
      volume,
      operationId,
      payload: {
        case: "cloneVolume",
        value: {
          volumeId,
          sourceVolumeId: source.id,
          sourceSnapshotId: snapshot?.id ?? "",
          sizeBytes: size,
          format: formats.wire(source.format),
          flatten: req.flatten,
        },
      },
      actor,
    });
    await writeAudit(tx, {
      ...callerOf(actor),
      action: "CloneVolume",
      target: volumeId,
      request: { name, source: source.id, snapshot: snapshot?.id, size, flatten: req.flatten },
      outcome: "ok",
    });
    return { volume, operation };
  });
}
