import { SNAPSHOT_STATE_MACHINE, type SnapshotState } from "@stowage/core";
import type { Queryable } from "./db.js";
import type { ErrorRecord } from "./rows.js";
import { inState, type StateChange, setState, transitionRow } from "./transition.js";

export type { SnapshotState } from "@stowage/core";

export interface SnapshotRow {
  id: string;
  name: string;
  volumeId: string;
  state: SnapshotState;
  sizeBytes: bigint;
  operationId: string | null;
  error: ErrorRecord | null;
  createdAt: Date;
  updatedAt: Date;
  deletedAt: Date | null;
}

export async function insertSnapshot(
  sql: Queryable,
  s: { id: string; name: string; volumeId: string; sizeBytes: bigint; operationId: string },
): Promise<SnapshotRow> {
  const [row] = await sql<SnapshotRow[]>`
    insert into snapshots (id, name, volume_id, state, size_bytes, operation_id)
    values (${s.id}, ${s.name}, ${s.volumeId}, 'creating', ${s.sizeBytes}, ${s.operationId}) returning *`;
  return row!;
}

export async function getSnapshot(
  sql: Queryable,
  volumeId: string,
  ref: { id?: string; name?: string },
  forUpdate = false,
): Promise<SnapshotRow | undefined> {
  const lock = forUpdate ? sql`for update` : sql``;
  const [row] = ref.id
    ? await sql<
        SnapshotRow[]
      >`select * from snapshots where volume_id = ${volumeId} and id = ${ref.id} ${lock}`
    : await sql<
        SnapshotRow[]
      >`select * from snapshots where volume_id = ${volumeId} and name = ${ref.name ?? ""} and state <> 'deleted' ${lock}`;
  return row;
}

export async function getSnapshotById(sql: Queryable, id: string): Promise<SnapshotRow | undefined> {
  const [row] = await sql<SnapshotRow[]>`select * from snapshots where id = ${id}`;
  return row;
}

export async function listSnapshots(
  sql: Queryable,
  volumeId: string,
  f: { after?: string; limit: number },
): Promise<SnapshotRow[]> {
  return sql<
    SnapshotRow[]
  >`select * from snapshots where volume_id = ${volumeId} and state <> 'deleted' and id > ${f.after ?? ""}
    order by id limit ${f.limit}`;
}

/** What may change on a snapshot besides its state (which only `transitionSnapshot` changes). */
export interface SnapshotUpdate {
  error?: ErrorRecord | null;
  operationId?: string;
}

export async function updateSnapshot(sql: Queryable, id: string, u: SnapshotUpdate): Promise<SnapshotRow> {
  const [row] = await writeSnapshot(sql, id, u);
  return row!;
}

/**
 * Moves a snapshot to `to` through the state machine (packages/core). An illegal transition is
 * FAILED_PRECONDITION; so is a snapshot that changed state since `snapshot` was read.
 */
export async function transitionSnapshot(
  sql: Queryable,
  snapshot: Pick<SnapshotRow, "id" | "name" | "state">,
  to: SnapshotState,
  patch: SnapshotUpdate = {},
): Promise<SnapshotRow> {
  return transitionRow(SNAPSHOT_STATE_MACHINE, `snapshot ${snapshot.name}`, snapshot, to, (change) =>
    writeSnapshot(sql, snapshot.id, patch, change),
  );
}

async function writeSnapshot(
  sql: Queryable,
  id: string,
  u: SnapshotUpdate,
  change?: StateChange<SnapshotState>,
): Promise<SnapshotRow[]> {
  return sql<SnapshotRow[]>`
    update snapshots set ${setState(sql, change)}
      error = case when ${u.error !== undefined} then ${u.error ? sql.json(u.error as never) : null}::jsonb else error end,
      operation_id = coalesce(${u.operationId ?? null}, operation_id),
      updated_at = clock_timestamp()
    where id = ${id} ${inState(sql, change)}
    returning *`;
}

/** Live volumes cloned from a snapshot: while there are any, the snapshot cannot be deleted. */
export async function clonesOfSnapshot(
  sql: Queryable,
  snapshotId: string,
): Promise<{ id: string; name: string }[]> {
  return sql<
    { id: string; name: string }[]
  >`select id, name from volumes where source_snapshot_id = ${snapshotId} and state <> 'deleted'`;
}

export async function liveSnapshotCount(sql: Queryable, volumeId: string): Promise<number> {
  const [row] = await sql<
    { n: number }[]
  >`select count(*)::int as n from snapshots where volume_id = ${volumeId} and state <> 'deleted'`;
  return row?.n ?? 0;
}
