import { randomBytes } from "node:crypto";
import { create, type MessageInitShape } from "@bufbuild/protobuf";
import { timestampFromDate } from "@bufbuild/protobuf/wkt";
import {
  alreadyExists,
  cephxUserFor,
  type ExportKind,
  failedPrecondition,
  invalidArgument,
  isId,
  newCephxKey,
  newId,
  notFound,
  requireExport,
  StowageError,
  validateName,
} from "@stowage/core";
import {
  type CreateExportRequest,
  type DeleteExportRequest,
  type Export,
  type ExportClientSchema,
  ExportSchema,
  ExportState,
  type UpdateExportRequest,
} from "@stowage/proto";
import {
  addExportClients,
  type ExportRow,
  type ExportState as ExportStateName,
  exportSecrets,
  getExport,
  getExportByRequestId,
  getHost,
  getOperation,
  getOperationByRequestId,
  getPool,
  getVolumeById,
  type HostRow,
  insertExport,
  liveExportOf,
  type OperationRow,
  type Queryable,
  removeExportClients,
  type Tx,
  updateExport,
  type VolumeRow,
  writeAudit,
} from "@stowage/store";
import { exportKinds } from "@stowage/wire";
import { callerOf } from "./audit.js";
import type { ControllerContext } from "./context.js";
import { errorToWire } from "./convert.js";
import { enqueueOperation } from "./outbox.js";
import { secretBox } from "./secret-box.js";
import { mutate } from "./transaction.js";
import { validateRequestId } from "./validate.js";
import { resolveVolume } from "./volume-service.js";

/** At most this many hosts on one export's ACL. */
export const MAX_EXPORT_CLIENTS = 32;

/** What the export calls answer: the export, and the operation that carries it out (when one was started). */
export interface ExportOutcome {
  export: ExportRow;
  operation?: OperationRow;
}

/** The kinds this controller builds exports of; the others are refused before anything is written. */
const BUILT: ReadonlySet<ExportKind> = new Set(["iscsi", "rbd"]);

const STATE_TO_WIRE: Record<ExportStateName, ExportState> = {
  creating: ExportState.CREATING,
  active: ExportState.ACTIVE,
  deleting: ExportState.DELETING,
  deleted: ExportState.DELETED,
  error: ExportState.ERROR,
};

export function exportToWire(e: ExportRow): Export {
  return create(ExportSchema, {
    id: e.id,
    volumeId: e.volumeId,
    kind: exportKinds.wire(e.kind),
    state: STATE_TO_WIRE[e.state],
    hostId: e.hostId,
    uri: e.uri,
    allowedHostIds: e.allowedHostIds,
    chapUser: e.chapUser,
    createdAt: timestampFromDate(e.createdAt),
    error: errorToWire(e.error),
  });
}

/** The allowed hosts of a request: names, each once, in name order; at least one unless `allowEmpty`. */
function allowedHostIds(ids: readonly string[], field: string, allowEmpty = false): string[] {
  const out = [...new Set(ids.map((id) => validateName(field, id)))].sort();
  if (out.length === 0 && !allowEmpty)
    throw invalidArgument(`${field} is empty: name the hosts that may use the export`, { field });
  if (out.length > MAX_EXPORT_CLIENTS)
    throw invalidArgument(`${field} names ${out.length} hosts: at most ${MAX_EXPORT_CLIENTS}`, { field });
  return out;
}

/** Each allowed host exists, is not the serving host, and has what the kind binds (iSCSI: initiator and address). */
async function clientHosts(
  sql: Queryable,
  kind: ExportKind,
  servingHost: string,
  ids: readonly string[],
): Promise<HostRow[]> {
  const hosts: HostRow[] = [];
  for (const id of ids) {
    const h = await getHost(sql, id);
    if (!h)
      throw notFound(`host ${id} not found: list hosts with \`stowctl host list\``, {
        field: "allowed_host_ids",
      });
    // A host reaches its own dir and LVM volumes locally; an RBD image needs a grant wherever it is used.
    if (id === servingHost && kind !== "rbd")
      throw invalidArgument(
        `host ${id} serves this volume: it reaches the volume locally (stowctl volume xml VOL --host ${id}), without an export`,
        { field: "allowed_host_ids" },
      );
    if (kind === "iscsi" && !h.initiatorName)
      throw failedPrecondition(
        `host ${id} has reported no iSCSI initiator name: set initiatorName in its agent's config`,
        { field: "allowed_host_ids" },
      );
    if (kind === "iscsi" && (h.addresses ?? []).length === 0)
      throw failedPrecondition(
        `host ${id} has reported no addresses for the target's ACL: is its agent up to date?`,
        { field: "allowed_host_ids" },
      );
    hosts.push(h);
  }
  return hosts;
}

/** The ACL entries the serving agent binds, without secrets (those are filled in when the command is sent). */
function clientsOf(hosts: readonly HostRow[]): MessageInitShape<typeof ExportClientSchema>[] {
  return hosts.map((h) => ({ hostId: h.id, initiatorName: h.initiatorName, addresses: h.addresses ?? [] }));
}

/** A CHAP account: a user name from the export id, and 96 random bits as 16 characters (what initiators take). */
function newChap(exportId: string): { user: string; secret: string } {
  return { user: `stowage-${exportId.slice(4, 16)}`, secret: randomBytes(12).toString("base64url") };
}

async function lockVolumeFor(tx: Tx, ref: string): Promise<VolumeRow> {
  const v = await resolveVolume(tx, ref);
  return (await getVolumeById(tx, v.id, true)) ?? v;
}

/** The volume must exist on its host and not be changing into or out of existence. */
function requireExportable(v: VolumeRow): void {
  if (v.state === "available" || v.state === "resizing" || v.state === "reverting") return;
  throw failedPrecondition(
    v.state === "creating"
      ? `volume ${v.name} is still being created: export it once it is available`
      : `volume ${v.name} is ${v.state}: only a volume that exists can be exported`,
  );
}

/** Writes the create_export command for the export's allowed set as it is now, and points the export at it. */
async function enqueueApply(
  tx: Tx,
  e: ExportRow,
  v: VolumeRow,
  hosts: readonly HostRow[],
  actor: string,
  opId = newId("op"),
): Promise<OperationRow> {
  return enqueueOperation(tx, {
    kind: "create_export",
    volume: v,
    exportId: e.id,
    operationId: opId,
    actor,
    payload: {
      case: "createExport",
      value: {
        exportId: e.id,
        volumeId: v.id,
        kind: exportKinds.wire(e.kind),
        allowed: clientsOf(hosts),
        chapUser: e.chapUser,
      },
    },
  });
}

/**
 * CreateExport: one export of a kind per volume. The same call again (or with the same request id) answers the
 * export it made; another allowed set for an existing export is refused with a pointer to UpdateExport. The
 * export, its allowed hosts (with sealed secrets), the create_export operation and the audit row commit together.
 */
export async function createExport(
  ctx: ControllerContext,
  req: CreateExportRequest,
  actor: string,
): Promise<ExportOutcome> {
  if (!req.volume) throw invalidArgument("volume is empty: give a volume id or name", { field: "volume" });
  const kind = exportKinds.domain(req.kind);
  if (!kind) throw invalidArgument("kind is required: iscsi or rbd", { field: "kind" });
  if (!BUILT.has(kind))
    throw failedPrecondition(`${kind} exports are not built: use iscsi (dir, lvm, lvmthin) or rbd`, {
      field: "kind",
    });
  if (kind === "rbd" && req.chap)
    throw invalidArgument("chap is for iSCSI exports: an RBD grant authenticates with the host's cephx key", {
      field: "chap",
    });
  const hostIds = allowedHostIds(req.allowedHostIds, "allowed_host_ids");
  const requestId = validateRequestId(req.requestId);
  const box = await secretBox(ctx.config);
  return mutate(ctx, async (tx) => {
    const v = await lockVolumeFor(tx, req.volume);
    if (requestId) {
      const before = await getExportByRequestId(tx, requestId);
      if (before && (before.volumeId !== v.id || before.kind !== kind))
        throw alreadyExists(
          `request id ${requestId} was already used for the ${before.kind} export ${before.id} of volume ${before.volumeId}: use a new request id for a new call`,
          { field: "request_id" },
        );
      if (before) return outcomeOf(tx, before);
    }
    const hosts = await clientHosts(tx, kind, v.hostId, hostIds);
    const existing = await liveExportOf(tx, v.id, kind);
    if (existing) {
      const same =
        existing.allowedHostIds.join(",") === hostIds.join(",") && (existing.chapUser !== "") === req.chap;
      if (same && existing.state !== "error") return outcomeOf(tx, existing);
      // The same call for an export the agent failed to make: try again (the agent converges either way).
      if (same && existing.operationId) {
        const lastOp = await getOperation(tx, existing.operationId);
        if (lastOp?.kind === "create_export") {
          const retry = await enqueueApply(tx, existing, v, hosts, actor);
          const again = await updateExport(tx, existing.id, {
            state: "creating",
            error: null,
            operationId: retry.id,
          });
          await writeAudit(tx, {
            ...callerOf(actor),
            action: "CreateExport",
            target: existing.id,
            request: { volume: v.id, kind, allowedHostIds: hostIds, chap: req.chap, retry: true },
            outcome: "ok",
          });
          return { export: again!, operation: retry };
        }
      }
      throw alreadyExists(
        `volume ${v.name} already has ${kind} export ${existing.id} (${existing.state}, allowing ${existing.allowedHostIds.join(", ") || "nobody"}): change its hosts with \`stowctl export update ${existing.id} --allow H --disallow H\`, or unexport it first`,
        { field: "volume" },
      );
    }
    requireExportable(v);
    const pool = await getPool(tx, v.poolId);
    if (!pool) throw failedPrecondition(`the pool ${v.poolId} of volume ${v.name} is gone`);
    requireExport(pool.kind, v.format, kind, ctx.capabilities);
    const cephxKeys = kind === "rbd" ? hostIds.map(() => newCephxKey()) : [];
    const id = newId("exp");
    const opId = newId("op");
    const chap = req.chap ? newChap(id) : undefined;
    const e = await insertExport(tx, {
      id,
      volumeId: v.id,
      hostId: v.hostId,
      kind,
      chapUser: chap?.user ?? "",
      chapSecret: chap ? box.seal(chap.secret, id) : "",
      requestId,
      operationId: opId,
      clients: hosts.map((h, i) => ({
        hostId: h.id,
        cephxKey: kind === "rbd" ? box.seal(cephxKeys[i]!, id) : "",
      })),
    });
    const operation = await enqueueApply(tx, e, v, hosts, actor, opId);
    await writeAudit(tx, {
      ...callerOf(actor),
      action: "CreateExport",
      target: id,
      request: { volume: v.id, kind, allowedHostIds: hostIds, chap: req.chap },
      outcome: "ok",
    });
    return { export: e, operation };
  });
}

async function outcomeOf(sql: Queryable, e: ExportRow): Promise<ExportOutcome> {
  const operation = e.operationId ? await getOperation(sql, e.operationId) : undefined;
  return { export: e, ...(operation ? { operation } : {}) };
}

export async function resolveExport(sql: Queryable, id: string, forUpdate = false): Promise<ExportRow> {
  if (!id) throw invalidArgument("export_id is empty", { field: "export_id" });
  if (!isId(id, "exp"))
    throw invalidArgument(
      `export id ${JSON.stringify(id.slice(0, 80))} is not valid: expected exp- and 32 hex digits`,
      {
        field: "export_id",
      },
    );
  const e = await getExport(sql, id, forUpdate);
  if (!e)
    throw notFound(`export ${id} not found: list exports with \`stowctl export list\``, {
      field: "export_id",
    });
  return e;
}

/**
 * UpdateExport: adds and removes allowed hosts on a live export; the serving agent converges its ACL (a
 * create_export with the new set). Adding a host that is there and removing one that is not change nothing; a
 * call that changes nothing starts no operation.
 */
export async function updateExportHosts(
  ctx: ControllerContext,
  req: UpdateExportRequest,
  actor: string,
): Promise<ExportOutcome> {
  const add = allowedHostIds(req.addAllowedHostIds, "add_allowed_host_ids", true);
  const remove = allowedHostIds(req.removeAllowedHostIds, "remove_allowed_host_ids", true);
  const both = add.filter((h) => remove.includes(h));
  if (both.length > 0)
    throw invalidArgument(`host ${both[0]} is both added and removed`, { field: "add_allowed_host_ids" });
  const requestId = validateRequestId(req.requestId);
  const box = await secretBox(ctx.config);
  return mutate(ctx, async (tx) => {
    const e = await resolveExport(tx, req.exportId, true);
    if (requestId) {
      const op = await getOperationByRequestId(tx, requestId);
      if (op) return outcomeOf(tx, e);
    }
    if (e.state === "deleting" || e.state === "deleted")
      throw failedPrecondition(`export ${e.id} is ${e.state}: make a new one with \`stowctl volume export\``);
    const adding = add.filter((h) => !e.allowedHostIds.includes(h));
    const removing = remove.filter((h) => e.allowedHostIds.includes(h));
    if (adding.length === 0 && removing.length === 0) return outcomeOf(tx, e);
    const next = [...e.allowedHostIds.filter((h) => !removing.includes(h)), ...adding].sort();
    if (next.length > MAX_EXPORT_CLIENTS)
      throw invalidArgument(`the export would allow ${next.length} hosts: at most ${MAX_EXPORT_CLIENTS}`);
    const v = await getVolumeById(tx, e.volumeId, true);
    if (!v) throw failedPrecondition(`the volume ${e.volumeId} of export ${e.id} is gone`);
    requireExportable(v);
    const newHosts = await clientHosts(tx, e.kind, e.hostId, adding);
    const keys = e.kind === "rbd" ? adding.map(() => newCephxKey()) : [];
    await removeExportClients(tx, e.id, removing);
    await addExportClients(
      tx,
      e.id,
      newHosts.map((h, i) => ({ hostId: h.id, cephxKey: e.kind === "rbd" ? box.seal(keys[i]!, e.id) : "" })),
    );
    const hosts = await clientHosts(tx, e.kind, e.hostId, next);
    const operation = await enqueueApply(tx, e, v, hosts, actor);
    const updated = await updateExport(tx, e.id, { operationId: operation.id });
    await writeAudit(tx, {
      ...callerOf(actor),
      action: "UpdateExport",
      target: e.id,
      request: { add: adding, remove: removing },
      outcome: "ok",
    });
    return { export: updated!, operation };
  });
}

/**
 * DeleteExport (unexport): the export becomes `deleting` and a delete_export goes to the serving agent, which
 * removes the target (or the grants) and forgets it. Repeating it answers the export as it is.
 */
export async function deleteExport(
  ctx: ControllerContext,
  req: DeleteExportRequest,
  actor: string,
): Promise<ExportOutcome> {
  validateRequestId(req.requestId);
  return mutate(ctx, async (tx) => {
    const e = await resolveExport(tx, req.exportId, true);
    if (e.state === "deleting" || e.state === "deleted") return outcomeOf(tx, e);
    const v = await getVolumeById(tx, e.volumeId, true);
    if (!v) throw failedPrecondition(`the volume ${e.volumeId} of export ${e.id} is gone`);
    const operation = await enqueueOperation(tx, {
      kind: "delete_export",
      volume: v,
      exportId: e.id,
      actor,
      payload: {
        case: "deleteExport",
        value: { exportId: e.id, volumeId: v.id, kind: exportKinds.wire(e.kind) },
      },
    });
    const updated = await updateExport(tx, e.id, { state: "deleting", operationId: operation.id });
    await writeAudit(tx, {
      ...callerOf(actor),
      action: "DeleteExport",
      target: e.id,
      request: { exportId: e.id },
      outcome: "ok",
    });
    return { export: updated!, operation };
  });
}

/**
 * GetExportCredentials: what host `hostId` (the verified certificate's, never a field of the request) needs to
 * use an export it is allowed: the CHAP account, or its own cephx key. Every answer and refusal is audited,
 * without the secret.
 */
export async function exportCredentials(
  ctx: ControllerContext,
  exportId: string,
  hostId: string,
): Promise<{ chapUser: string; chapSecret: string; cephxUser: string; cephxKey: string }> {
  const e = await resolveExport(ctx.sql, exportId);
  const audit = (outcome: "ok" | "denied", error?: string) =>
    writeAudit(ctx.sql, {
      actor: `host:${hostId}`,
      role: "agent",
      source: "",
      action: "GetExportCredentials",
      target: e.id,
      request: { exportId: e.id },
      outcome,
      ...(error ? { error } : {}),
    });
  if (!e.allowedHostIds.includes(hostId) || (e.state !== "active" && e.state !== "creating")) {
    const why = `host ${hostId} is not allowed to use export ${e.id}`;
    await audit("denied", `permission_denied: ${why}`);
    throw new StowageError("permission_denied", why);
  }
  const secrets = await exportSecrets(ctx.sql, e.id);
  const box = await secretBox(ctx.config);
  const cephx = secrets?.cephxKeys.get(hostId) ?? "";
  const out = {
    chapUser: e.chapUser,
    chapSecret: secrets?.chapSecret ? box.open(secrets.chapSecret, e.id) : "",
    cephxUser: e.kind === "rbd" ? cephxUserFor(e.id, hostId) : "",
    cephxKey: cephx ? box.open(cephx, e.id) : "",
  };
  await audit("ok");
  return out;
}
