import { OPERATION_STATE_MACHINE, type OperationKind } from "@stowage/core";
import type { Queryable } from "./db.js";
import type { ErrorRecord, OperationRow } from "./rows.js";
import { type Changes, changes } from "./watch.js";

export interface NewOperation {
  id: string;
  kind: OperationKind;
  hostId: string;
  poolId: string;
  volumeId: string;
  snapshotId?: string;
  /** The export a create_export or delete_export changes. */
  exportId?: string;
  command: Uint8Array;
  requestedBy: string;
  /** The caller's request id: a second operation with the same one is refused by a unique index. */
  requestId?: string | null;
}

/** Writes an operation in state `pending`: the outbox row that the relay will publish. */
export async function insertOperation(sql: Queryable, op: NewOperation): Promise<OperationRow> {
  const [row] = await sql<OperationRow[]>`
    insert into operations (id, kind, state, host_id, pool_id, volume_id, snapshot_id, export_id, command, requested_by, request_id)
    values (${op.id}, ${op.kind}, 'pending', ${op.hostId}, ${op.poolId}, ${op.volumeId}, ${op.snapshotId ?? ""},
      ${op.exportId ?? ""}, ${Buffer.from(op.command)}, ${op.requestedBy}, ${op.requestId ?? null})
    returning *`;
  return row!;
}

/** The operation a call with this request id started, if any. */
export async function getOperationByRequestId(
  sql: Queryable,
  requestId: string,
): Promise<OperationRow | undefined> {
  const [row] = await sql<OperationRow[]>`select * from operations where request_id = ${requestId}`;
  return row;
}

export async function getOperation(
  sql: Queryable,
  id: string,
  forUpdate = false,
): Promise<OperationRow | undefined> {
  const [row] = forUpdate
    ? await sql<OperationRow[]>`select * from operations where id = ${id} for update`
    : await sql<OperationRow[]>`select * from operations where id = ${id}`;
  return row;
}

/**
 * The operations with these ids, locked for update in id order (so two transactions locking overlapping sets wait
 * for each other rather than deadlock). Ids that name no operation are left out.
 */
export async function getOperationsForUpdate(
  sql: Queryable,
  ids: readonly string[],
): Promise<OperationRow[]> {
  if (ids.length === 0) return [];
  return sql<
    OperationRow[]
  >`select * from operations where id = any(${ids as string[]}) order by id for update`;
}

/** How the relay re-sends: with backoff, a bounded number of times, never past a command's deadline. */
export interface ResendPolicy {
  /** A sent operation's n-th publication (attempts = n) is followed by another after resendAfterMs x 2^(n-1). */
  resendAfterMs: number;
  /** No publication after this many (0: no bound); the operation then waits for a result or its deadline. */
  maxAttempts?: number;
  /** Operations written longer ago than this are not published any more (their commands' deadline; 0: none). */
  deadlineMs?: number;
}

/**
 * Operations the relay should publish: pending ones, and sent ones with no result after their back-off (the message
 * or its result may have been lost with a broker): `resendAfterMs x 2^(attempts-1)`, up to `maxAttempts`
 * publications, none once the command's deadline has passed (the agent would refuse it; the reconciler fails the
 * operation at its time to live). Only for hosts that are up. `skip` leaves out operations the relay already
 * tried in this round (a failed publish is retried in the next round, not over and over in this one).
 */
export async function operationsToPublish(
  sql: Queryable,
  policy: ResendPolicy | number,
  limit = 100,
  skip: readonly string[] = [],
  /** Pending operations younger than this are left to the controller that wrote them (its fast path). */
  graceMs = 0,
): Promise<OperationRow[]> {
  const p = typeof policy === "number" ? { resendAfterMs: policy } : policy;
  const maxAttempts = p.maxAttempts ?? 0;
  const deadlineMs = p.deadlineMs ?? 0;
  // The exponent is capped so the interval stays a number (2^30 x 1 s is decades).
  return sql<OperationRow[]>`
    select o.* from operations o join hosts h on h.id = o.host_id
    where ((o.state = 'pending' and o.created_at <= now() - make_interval(secs => ${graceMs / 1000}))
        or (o.state = 'sent'
          and o.sent_at < now() - make_interval(secs => ${p.resendAfterMs / 1000}::float8 * power(2::float8, least(greatest(o.attempts - 1, 0), 30)))
          and (${maxAttempts}::int = 0 or o.attempts < ${maxAttempts}::int)))
      and (${deadlineMs}::float8 = 0 or o.created_at > now() - make_interval(secs => ${deadlineMs / 1000}::float8))
      and h.state = 'up'
      and o.id <> all(${skip as string[]})
    order by o.created_at limit ${limit}`;
}

/**
 * Operations still waiting for a result (pending or sent) written more than `ttlMs` ago: past their deadline, so
 * no agent starts them any more; the reconciler fails them. Oldest first.
 */
export async function overdueOperations(sql: Queryable, ttlMs: number, limit = 100): Promise<OperationRow[]> {
  return sql<OperationRow[]>`
    select * from operations where state in ('pending', 'sent')
      and created_at < now() - make_interval(secs => ${ttlMs / 1000}::float8)
    order by created_at limit ${limit}`;
}

export async function markOperationSent(sql: Queryable, id: string): Promise<void> {
  await markOperationsSent(sql, [id]);
}

/** Marks the operations sent in one statement (those already past `sent`, e.g. finished, are left as they are). */
export async function markOperationsSent(sql: Queryable, ids: readonly string[]): Promise<number> {
  if (ids.length === 0) return 0;
  // Rows locked in id order, as the result consumer locks its batch (getOperationsForUpdate): a mark and a
  // batch of results for the same operations, which the fast path makes common, would otherwise deadlock.
  const rows = await sql`update operations set state = 'sent', attempts = attempts + 1, sent_at = now(),
      updated_at = clock_timestamp()
    where id in (select id from operations where id = any(${ids as string[]})
      and state = any(${OPERATION_STATE_MACHINE.sourcesOf("sent")}) order by id for update)`;
  return rows.count;
}

export async function finishOperation(
  sql: Queryable,
  id: string,
  ok: boolean,
  error: ErrorRecord | null,
): Promise<OperationRow | undefined> {
  const [row] = await sql<OperationRow[]>`
    update operations set state = ${ok ? "succeeded" : "failed"}, error = ${error ? sql.json(error as never) : null},
      finished_at = now(), updated_at = clock_timestamp()
    where id = ${id} and state = any(${OPERATION_STATE_MACHINE.sourcesOf(ok ? "succeeded" : "failed")}) returning *`;
  return row;
}

export async function listOperations(
  sql: Queryable,
  f: { volumeId?: string; hostId?: string; state?: string; after?: string; limit: number },
): Promise<OperationRow[]> {
  return sql<OperationRow[]>`
    select * from operations
    where (${f.volumeId ?? ""} = '' or volume_id = ${f.volumeId ?? ""})
      and (${f.hostId ?? ""} = '' or host_id = ${f.hostId ?? ""})
      and (${f.state ?? ""} = '' or state = ${f.state ?? ""})
      and id > ${f.after ?? ""}
    order by id limit ${f.limit}`;
}

/** The operations written by transactions that `after` did not see (as `volumesChangedAfter`). */
export async function operationsChangedAfter(
  sql: Queryable,
  after: string,
  f: { id?: string; volumeId?: string },
): Promise<Changes<OperationRow>> {
  return changes(
    await sql<(OperationRow & { watchSnapshot: string })[]>`
      select s.snap::text as watch_snapshot, t.* from (select pg_current_snapshot() as snap) s
      left join lateral (
        select * from operations
        where change_xid >= pg_snapshot_xmin(${after}::pg_snapshot)
          and not pg_visible_in_snapshot(change_xid, ${after}::pg_snapshot)
          and (${f.id ?? ""} = '' or id = ${f.id ?? ""})
          and (${f.volumeId ?? ""} = '' or volume_id = ${f.volumeId ?? ""})
        order by change_xid, id
      ) t on true`,
  );
}

export async function countOperationsByState(
  sql: Queryable,
): Promise<{ hostId: string; state: string; n: number }[]> {
  return sql<{ hostId: string; state: string; n: number }[]>`
    select host_id, state, count(*)::int as n from operations where state in ('pending', 'sent') group by host_id, state`;
}
