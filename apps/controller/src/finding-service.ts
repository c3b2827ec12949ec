import {
  alreadyExists,
  type FindingKind,
  failedPrecondition,
  formatSize,
  invalidArgument,
  isId,
  notFound,
  resourceExhausted,
  VOLUME_FORMATS,
  type VolumeFormat,
  validateLabels,
  validateName,
} from "@stowage/core";
import type { AdoptFindingRequest, ListFindingsRequest, QuarantineFindingRequest } from "@stowage/proto";
import {
  allocateExisting,
  dropOrphanFinding,
  type FindingRow,
  getHost,
  getPool,
  getVolumeById,
  getVolumeByName,
  insertVolume,
  listFindings,
  orphanFindings,
  type PoolRow,
  type Queryable,
  reallocateReleased,
  transitionVolume,
  type VolumeRow,
  writeAudit,
  quarantineFinding as writeQuarantine,
} from "@stowage/store";
import { findingKinds } from "@stowage/wire";
import { callerOf } from "./audit.js";
import type { ControllerContext } from "./context.js";
import { mutate, mutateAudited } from "./transaction.js";
import { validatePoolRef } from "./validate.js";

const LIST_HINT = "list them with `stowctl finding list --kind orphan`";
const MAX_REASON = 500;

export interface FindingFilter {
  hostId?: string;
  poolId?: string;
  kind?: FindingKind;
}

/** ListFindings' filters, refused when malformed. */
export function findingFilterFromWire(
  req: Pick<ListFindingsRequest, "hostId" | "poolId" | "kind">,
): FindingFilter {
  const kind = findingKinds.optional(req.kind, "kind");
  return {
    ...(req.hostId ? { hostId: validateName("host", req.hostId) } : {}),
    ...(req.poolId ? { poolId: validatePoolRef(req.poolId, "pool_id") } : {}),
    ...(kind ? { kind } : {}),
  };
}

export async function listFindingsPage(
  ctx: ControllerContext,
  f: FindingFilter & { after: string; limit: number },
): Promise<FindingRow[]> {
  if (f.after !== "" && !/^\d{1,19}$/.test(f.after))
    throw invalidArgument("page_token is not valid: pass the next_page_token of the previous response", {
      field: "page_token",
    });
  return listFindings(ctx.sql, f);
}

/** The orphan a request names: its volume id, and its host unless only one host reports it. */
function orphanRef(req: { volumeId: string; hostId: string }): { volumeId: string; hostId: string } {
  if (req.volumeId === "")
    throw invalidArgument(`volume_id is required: the orphan's volume id (${LIST_HINT})`, {
      field: "volume_id",
    });
  if (!isId(req.volumeId, "vol"))
    throw invalidArgument(
      `volume_id ${JSON.stringify(req.volumeId.slice(0, 80))} is not a volume id (vol- and 32 hex digits): only orphans, artefacts named after a volume id, can be quarantined or adopted`,
      { field: "volume_id" },
    );
  return { volumeId: req.volumeId, hostId: req.hostId ? validateName("host", req.hostId) : "" };
}

/** Locks the one orphan finding a reference names; NOT_FOUND when none, INVALID_ARGUMENT when several hosts report it. */
async function lockOrphan(
  tx: Queryable,
  ref: { volumeId: string; hostId: string },
): Promise<FindingRow | undefined> {
  const rows = await orphanFindings(tx, ref.volumeId, ref.hostId, true);
  if (rows.length > 1)
    throw invalidArgument(
      `${ref.volumeId} is an orphan on hosts ${rows.map((r) => r.hostId).join(", ")}: name one with host_id (stowctl: --host)`,
      { field: "host_id" },
    );
  return rows[0];
}

function noOrphan(ref: { volumeId: string; hostId: string }): Error {
  const where = ref.hostId ? ` on host ${ref.hostId}` : "";
  return notFound(`no orphan ${ref.volumeId}${where}: ${LIST_HINT}`);
}

/**
 * QuarantineFinding: marks an orphan so that nothing deletes it or schedules on it. It is kept across
 * inventories (even once its artefact is no longer seen) and audited. Nothing on the host is touched.
 * Idempotent: quarantining again keeps the first quarantine's author, time and reason.
 */
export async function quarantineFinding(
  ctx: ControllerContext,
  req: Pick<QuarantineFindingRequest, "volumeId" | "hostId" | "reason">,
  actor: string,
): Promise<FindingRow> {
  const ref = orphanRef(req);
  if (req.reason.length > MAX_REASON)
    throw invalidArgument(`reason is ${req.reason.length} characters long: at most ${MAX_REASON} are kept`, {
      field: "reason",
    });
  const request = { hostId: ref.hostId, reason: req.reason };
  const out = await mutateAudited(ctx, { actor, action: "QuarantineFinding", request }, async (tx) => {
    const found = await lockOrphan(tx, ref);
    if (!found) throw noOrphan(ref);
    const row = await writeQuarantine(tx, {
      hostId: found.hostId,
      volumeId: ref.volumeId,
      by: actor,
      reason: req.reason,
    });
    if (!row) throw noOrphan(ref);
    return { id: ref.volumeId, row };
  });
  return out.row;
}

/** What an adopted volume is made of: the artefact's size and format, as its agent reported them. */
function adoptable(
  ctx: ControllerContext,
  f: FindingRow,
  pool: PoolRow | undefined,
): { format: VolumeFormat; pool: PoolRow } {
  if (!pool?.present)
    throw failedPrecondition(
      `orphan ${f.subject} is in pool ${f.poolId}, which its host no longer reports: it cannot be adopted there`,
    );
  const format = VOLUME_FORMATS.find((x) => x === f.format);
  if (f.sizeBytes <= 0n || !format)
    throw failedPrecondition(
      `the agent on ${f.hostId} has not reported the size and format of ${f.subject}: wait for its next full inventory and try again`,
    );
  if (!ctx.capabilities[pool.kind]?.[format])
    throw failedPrecondition(
      `${format} volumes cannot live on ${pool.kind} pools: ${f.subject} is not adopted`,
    );
  return { format, pool };
}

/** The CPU list of the pool's NUMA node on its host, for <iothreadpin> (as the scheduler gives a new volume). */
async function cpuSetOf(tx: Queryable, pool: PoolRow): Promise<string> {
  if (pool.numaNode === null) return "";
  const host = await getHost(tx, pool.hostId);
  return host?.numaNodes.find((n) => n.id === pool.numaNode)?.cpuList ?? "";
}

/**
 * AdoptFinding: registers an orphan (an artefact of ours whose volume id has no live row) as an available volume
 * of the size and format its agent reported, holding its bytes in the ledger as allocated, all in one audited
 * transaction. RESOURCE_EXHAUSTED, with nothing changed, when the pool cannot hold it. Idempotent: adopting a
 * volume id that is already a live volume on that host returns that volume.
 */
export async function adoptFinding(
  ctx: ControllerContext,
  req: Pick<AdoptFindingRequest, "volumeId" | "hostId" | "name" | "labels">,
  actor: string,
): Promise<VolumeRow> {
  const ref = orphanRef(req);
  const name = req.name ? validateName("volume name", req.name) : ref.volumeId;
  const labels = validateLabels(req.labels);
  return mutate(ctx, async (tx) => {
    // The finding first: a concurrent adoption of the same orphan waits here, then sees the volume it made.
    const found = await lockOrphan(tx, ref);
    const existing = await getVolumeById(tx, ref.volumeId, true);
    if (existing?.state === "error" && found && found.hostId === existing.hostId)
      return adoptErrorVolume(tx, existing, found, actor);
    if (existing) return converged(tx, existing, ref, req.name);
    if (!found) throw noOrphan(ref);
    const { format, pool } = adoptable(ctx, found, await getPool(tx, found.poolId));
    const taken = await getVolumeByName(tx, name);
    if (taken)
      throw alreadyExists(`volume ${name} already exists: adopt ${ref.volumeId} under another name (--name)`);
    const created = await insertVolume(tx, {
      id: ref.volumeId,
      name,
      sizeBytes: found.sizeBytes,
      format,
      poolId: pool.id,
      hostId: pool.hostId,
      numaNode: pool.numaNode,
      cpuSet: await cpuSetOf(tx, pool),
      labels,
      qcow2: {},
      requestId: null,
      operationId: "",
      antiAffinityGroup: "",
    });
    if (!(await allocateExisting(tx, { poolId: pool.id, volumeId: ref.volumeId, bytes: found.sizeBytes })))
      throw resourceExhausted(
        `pool ${pool.id} cannot hold ${ref.volumeId}'s ${formatSize(found.sizeBytes)} (it holds ${formatSize(pool.allocatedBytes + pool.reservedBytes)} of ${formatSize(pool.totalBytes)} at overcommit ${pool.overcommitRatio}${pool.maxVolumes ? `, ${pool.volumeCount} of ${pool.maxVolumes} volumes` : ""}): free space there, or quarantine the orphan instead`,
      );
    const volume = await transitionVolume(tx, created, "available", {
      allocatedBytes: found.allocatedBytes,
      hostPath: found.path,
    });
    await dropOrphanFinding(tx, found.hostId, ref.volumeId);
    await writeAudit(tx, {
      ...callerOf(actor),
      action: "AdoptFinding",
      target: ref.volumeId,
      request: {
        hostId: found.hostId,
        poolId: pool.id,
        name,
        labels,
        sizeBytes: found.sizeBytes,
        format,
        quarantinedBy: found.quarantinedBy,
      },
      outcome: "ok",
    });
    return volume;
  });
}

/**
 * Adopting the orphan of a volume in `error` whose space the ledger released (its create finished on the host
 * after it had failed): the volume itself is held again, through the ledger's conditional UPDATE, and becomes
 * available. RESOURCE_EXHAUSTED when the pool cannot hold it; FAILED_PRECONDITION when it still holds its bytes.
 */
async function adoptErrorVolume(
  tx: Queryable,
  v: VolumeRow,
  found: FindingRow,
  actor: string,
): Promise<VolumeRow> {
  if (!(await reallocateReleased(tx, v.id))) {
    const pool = await getPool(tx, v.poolId);
    if (
      !pool ||
      (await tx`select 1 from reservations where volume_id = ${v.id} and state = 'released'`).length === 0
    )
      throw failedPrecondition(
        `${v.id} is volume ${v.name}, in error, and still counted in the ledger: delete it (stowctl volume delete ${v.name}) rather than adopt it`,
      );
    throw resourceExhausted(
      `pool ${pool.id} cannot hold ${v.name}'s ${formatSize(v.sizeBytes)} (it holds ${formatSize(pool.allocatedBytes + pool.reservedBytes)} of ${formatSize(pool.totalBytes)} at overcommit ${pool.overcommitRatio}): free space there, or quarantine the orphan instead`,
    );
  }
  const volume = await transitionVolume(tx, v, "available", {
    error: null,
    allocatedBytes: found.allocatedBytes,
    hostPath: found.path,
  });
  await dropOrphanFinding(tx, found.hostId, v.id);
  await writeAudit(tx, {
    ...callerOf(actor),
    action: "AdoptFinding",
    target: v.id,
    request: { hostId: found.hostId, poolId: v.poolId, name: v.name, sizeBytes: v.sizeBytes, wasError: true },
    outcome: "ok",
  });
  return volume;
}

/** A second adoption of the same orphan: the volume it made, if that is what was asked for. */
async function converged(
  tx: Queryable,
  v: VolumeRow,
  ref: { volumeId: string; hostId: string },
  requestedName: string,
): Promise<VolumeRow> {
  if (v.state === "deleted")
    throw failedPrecondition(
      `${v.id} was volume ${v.name}, deleted${v.deletedAt ? ` at ${v.deletedAt.toISOString()}` : ""}: a deleted volume is not brought back; the artefact stays where it is (quarantine it to keep it marked)`,
    );
  if (ref.hostId && v.hostId !== ref.hostId)
    throw failedPrecondition(`${v.id} is already volume ${v.name} on host ${v.hostId}, not on ${ref.hostId}`);
  if (requestedName && requestedName !== v.name)
    throw alreadyExists(`${v.id} is already volume ${v.name}: adopt it under that name, or without --name`);
  // A finding an inventory wrote back while the adoption committed is stale.
  await dropOrphanFinding(tx, v.hostId, v.id);
  return v;
}
