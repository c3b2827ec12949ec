import type { ExportKind } from "@stowage/core";
import type { Queryable } from "./db.js";
import type { ErrorRecord } from "./rows.js";

export const EXPORT_STATES = ["creating", "active", "deleting", "deleted", "error"] as const;
export type ExportState = (typeof EXPORT_STATES)[number];

/** One export (migration 0014). Sealed secrets stay in the store: `exportSecrets` reads them on purpose. */
export interface ExportRow {
  id: string;
  volumeId: string;
  hostId: string;
  kind: ExportKind;
  state: ExportState;
  uri: string;
  chapUser: string;
  error: ErrorRecord | null;
  requestId: string | null;
  operationId: string | null;
  createdAt: Date;
  updatedAt: Date;
  deletedAt: Date | null;
  /** The allowed hosts, in name order. */
  allowedHostIds: string[];
}

/** Every column but the sealed secrets, with the allowed hosts gathered. */
const COLUMNS = (sql: Queryable) => sql`
  e.id, e.volume_id, e.host_id, e.kind, e.state, e.uri, e.chap_user, e.error, e.request_id, e.operation_id,
  e.created_at, e.updated_at, e.deleted_at,
  coalesce((select array_agg(c.host_id order by c.host_id) from export_clients c where c.export_id = e.id),
    '{}'::text[]) as allowed_host_ids`;

export interface NewExport {
  id: string;
  volumeId: string;
  hostId: string;
  kind: ExportKind;
  chapUser: string;
  /** Sealed (the controller's secret box), or "". */
  chapSecret: string;
  requestId: string | null;
  operationId: string;
  /** Each allowed host, with its sealed cephx key for RBD ("" otherwise). */
  clients: { hostId: string; cephxKey: string }[];
}

export async function insertExport(sql: Queryable, e: NewExport): Promise<ExportRow> {
  await sql`
    insert into exports (id, volume_id, host_id, kind, state, chap_user, chap_secret, request_id, operation_id)
    values (${e.id}, ${e.volumeId}, ${e.hostId}, ${e.kind}, 'creating', ${e.chapUser}, ${e.chapSecret},
      ${e.requestId}, ${e.operationId})`;
  await addExportClients(sql, e.id, e.clients);
  return (await getExport(sql, e.id))!;
}

export async function addExportClients(
  sql: Queryable,
  exportId: string,
  clients: readonly { hostId: string; cephxKey: string }[],
): Promise<void> {
  for (const c of clients)
    await sql`insert into export_clients (export_id, host_id, cephx_key)
      values (${exportId}, ${c.hostId}, ${c.cephxKey}) on conflict do nothing`;
}

export async function removeExportClients(
  sql: Queryable,
  exportId: string,
  hostIds: readonly string[],
): Promise<void> {
  if (hostIds.length === 0) return;
  await sql`delete from export_clients where export_id = ${exportId} and host_id in ${sql(hostIds as string[])}`;
}

export async function getExport(
  sql: Queryable,
  id: string,
  forUpdate = false,
): Promise<ExportRow | undefined> {
  if (forUpdate) await sql`select id from exports where id = ${id} for update`;
  const [row] = await sql<ExportRow[]>`select ${COLUMNS(sql)} from exports e where e.id = ${id}`;
  return row;
}

export async function getExportByRequestId(
  sql: Queryable,
  requestId: string,
): Promise<ExportRow | undefined> {
  const [row] = await sql<
    ExportRow[]
  >`select ${COLUMNS(sql)} from exports e where e.request_id = ${requestId}`;
  return row;
}

/** The live export of this kind of a volume, if any (there is at most one). */
export async function liveExportOf(
  sql: Queryable,
  volumeId: string,
  kind: ExportKind,
): Promise<ExportRow | undefined> {
  const [row] = await sql<ExportRow[]>`select ${COLUMNS(sql)} from exports e
    where e.volume_id = ${volumeId} and e.kind = ${kind} and e.state <> 'deleted'`;
  return row;
}

/** The live exports of a volume, oldest first. */
export async function liveExportsOfVolume(sql: Queryable, volumeId: string): Promise<ExportRow[]> {
  return sql<ExportRow[]>`select ${COLUMNS(sql)} from exports e
    where e.volume_id = ${volumeId} and e.state <> 'deleted' order by e.id`;
}

/** One page of exports in id order, live ones unless `deleted`, filtered by volume and serving host. */
export async function listExports(
  sql: Queryable,
  f: { volumeId?: string; hostId?: string; after?: string; limit: number; deleted?: boolean },
): Promise<ExportRow[]> {
  return sql<ExportRow[]>`select ${COLUMNS(sql)} from exports e
    where e.id > ${f.after ?? ""}
      ${f.deleted ? sql`` : sql`and e.state <> 'deleted'`}
      ${f.volumeId ? sql`and e.volume_id = ${f.volumeId}` : sql``}
      ${f.hostId ? sql`and e.host_id = ${f.hostId}` : sql``}
    order by e.id limit ${f.limit}`;
}

/** The sealed secrets of an export: its CHAP secret and each allowed host's cephx key. */
export async function exportSecrets(
  sql: Queryable,
  id: string,
): Promise<{ chapSecret: string; cephxKeys: Map<string, string> } | undefined> {
  const [e] = await sql<{ chapSecret: string }[]>`select chap_secret from exports where id = ${id}`;
  if (!e) return undefined;
  const clients = await sql<
    { hostId: string; cephxKey: string }[]
  >`select host_id, cephx_key from export_clients where export_id = ${id}`;
  return { chapSecret: e.chapSecret, cephxKeys: new Map(clients.map((c) => [c.hostId, c.cephxKey])) };
}

export interface ExportUpdate {
  state?: ExportState;
  uri?: string;
  error?: ErrorRecord | null;
  operationId?: string;
}

/** Changes an export; `from` (when given) must be its state now, or nothing changes and undefined is answered. */
export async function updateExport(
  sql: Queryable,
  id: string,
  u: ExportUpdate,
  from?: readonly ExportState[],
): Promise<ExportRow | undefined> {
  const rows = await sql<{ id: string }[]>`
    update exports set
      state = coalesce(${u.state ?? null}, state),
      uri = coalesce(${u.uri ?? null}, uri),
      error = case when ${u.error !== undefined} then ${u.error ? sql.json(u.error as never) : null}::jsonb else error end,
      operation_id = coalesce(${u.operationId ?? null}, operation_id),
      deleted_at = case when ${u.state === "deleted"} then now() else deleted_at end,
      updated_at = clock_timestamp()
    where id = ${id} ${from ? sql`and state in ${sql(from as ExportState[])}` : sql``}
    returning id`;
  return rows.length > 0 ? getExport(sql, id) : undefined;
}

/** Live exports by kind and state, for the `stowage_exports` gauge. */
export async function exportCounts(
  sql: Queryable,
): Promise<{ kind: ExportKind; state: ExportState; count: number }[]> {
  return sql<{ kind: ExportKind; state: ExportState; count: number }[]>`
    select kind, state, count(*)::int as count from exports where state <> 'deleted' group by kind, state`;
}

/** Whether a host may use an export: it is in the allowed set of a live one. */
export async function exportAllows(sql: Queryable, exportId: string, hostId: string): Promise<boolean> {
  const rows = await sql`select 1 from export_clients c join exports e on e.id = c.export_id
    where c.export_id = ${exportId} and c.host_id = ${hostId} and e.state in ('creating', 'active')`;
  return rows.length > 0;
}

/** The live exports of a volume that allow a host, newest first. */
export async function exportsAllowing(
  sql: Queryable,
  volumeId: string,
  hostId: string,
): Promise<ExportRow[]> {
  return sql<ExportRow[]>`select ${COLUMNS(sql)} from exports e
    where e.volume_id = ${volumeId} and e.state = 'active'
      and exists (select 1 from export_clients c where c.export_id = e.id and c.host_id = ${hostId})
    order by e.id desc`;
}
