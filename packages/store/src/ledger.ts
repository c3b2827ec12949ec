import { OPERATION_STATE_MACHINE, THIN_KINDS } from "@stowage/core";
import type { Queryable } from "./db.js";
import type { ReservationRow } from "./rows.js";

/**
 * The capacity ledger. A pool's `allocated_bytes` (volumes that exist) and `reserved_bytes` (volumes being made)
 * change only here, each by one conditional UPDATE, so concurrent controllers can never oversubscribe a pool:
 *
 *   allocated + reserved + request <= total x overcommit_ratio - total x reserved_percent
 *   thick pools also:  reserved + request <= free physical bytes - total x reserved_percent
 *   thin pools also:   used physical bytes stay under max_used_percent of total
 *   and the pool holds fewer than max_volumes volumes (0: no limit)
 *
 * Whether a pool is thin follows from its kind (core's THIN_KINDS), as in the scheduler. The scheduler
 * (packages/scheduler/src/capacity.ts) applies the same rules to its in-memory view; this UPDATE decides.
 */
const THIN = [...THIN_KINDS];

/** The logical part of the rule: what the pool holds, plus `bytes`, within its size times its ratio. */
function fitsLogically(sql: Queryable, bytes: bigint) {
  return sql`
    allocated_bytes + reserved_bytes + ${bytes}
        <= floor(total_bytes::numeric * overcommit_ratio::numeric) - total_bytes::numeric * reserved_percent::numeric / 100`;
}

/** The capacity rule above, for `bytes` more in the pool row being updated (one rule for every change). */
export function capacityRule(sql: Queryable, bytes: bigint) {
  return sql`
    ${fitsLogically(sql, bytes)}
    and (kind = any(${THIN}) or reserved_bytes + ${bytes} <= free_bytes - total_bytes::numeric * reserved_percent::numeric / 100)
    and (kind <> all(${THIN}) or used_bytes::numeric * 100 <= total_bytes::numeric * max_used_percent::numeric)`;
}

export async function reserveCapacity(
  sql: Queryable,
  r: { poolId: string; volumeId: string; bytes: bigint; ttlMs: number },
): Promise<boolean> {
  const rows = await sql`
    update pools set reserved_bytes = reserved_bytes + ${r.bytes}, volume_count = volume_count + 1, updated_at = now()
    where id = ${r.poolId} and ${capacityRule(sql, r.bytes)} and (max_volumes = 0 or volume_count < max_volumes)
    returning id`;
  if (rows.length === 0) return false;
  await sql`insert into reservations (volume_id, pool_id, bytes, state, expires_at)
    values (${r.volumeId}, ${r.poolId}, ${r.bytes}, 'reserved', now() + make_interval(secs => ${r.ttlMs / 1000}))`;
  return true;
}

/**
 * Holds the bytes of an artefact that already exists (an adopted orphan) as an allocation, if they fit the
 * pool's logical rule (allocated + reserved + bytes within total x overcommit ratio, net of the reserved
 * percentage) and its volume limit. The physical checks are left out: the artefact's space is already in the
 * agent's used and free bytes, so counting it again would refuse an artefact that is there. Returns false when
 * it does not fit, changing nothing.
 */
export async function allocateExisting(
  sql: Queryable,
  r: { poolId: string; volumeId: string; bytes: bigint },
): Promise<boolean> {
  const rows = await sql`
    update pools set allocated_bytes = allocated_bytes + ${r.bytes}, volume_count = volume_count + 1, updated_at = now()
    where id = ${r.poolId} and ${fitsLogically(sql, r.bytes)} and (max_volumes = 0 or volume_count < max_volumes)
    returning id`;
  if (rows.length === 0) return false;
  await sql`insert into reservations (volume_id, pool_id, bytes, state, expires_at)
    values (${r.volumeId}, ${r.poolId}, ${r.bytes}, 'allocated', now())`;
  return true;
}

/**
 * Changes what a volume holds to `bytes` (a resize). Growing must fit like a new reservation; shrinking always
 * succeeds. Returns false when the growth does not fit. Idempotent: the same size twice changes nothing.
 */
export async function resizeHolding(
  sql: Queryable,
  r: {
    volumeId: string;
    bytes: bigint;
    /** Undo of a failed resize: the bytes were held before, so they are given back without the check. */
    force?: boolean;
  },
): Promise<boolean> {
  const [res] = await sql<
    ReservationRow[]
  >`select * from reservations where volume_id = ${r.volumeId} for update`;
  if (!res || res.state === "released") return false;
  const delta = r.bytes - res.bytes;
  if (delta === 0n) return true;
  const column = res.state === "reserved" ? sql`reserved_bytes` : sql`allocated_bytes`;
  const rows =
    delta > 0n && !r.force
      ? await sql`update pools set ${column} = ${column} + ${delta}, updated_at = now()
          where id = ${res.poolId} and ${capacityRule(sql, delta)} returning id`
      : await sql`update pools set ${column} = ${column} + ${delta}, updated_at = now() where id = ${res.poolId} returning id`;
  if (rows.length === 0) return false;
  await sql`update reservations set bytes = ${r.bytes}, updated_at = now() where volume_id = ${r.volumeId}`;
  return true;
}

/** Turns a volume's reservation into an allocation (the artefact exists). Idempotent. */
export async function confirmReservation(sql: Queryable, volumeId: string): Promise<boolean> {
  const [res] = await sql<ReservationRow[]>`
    update reservations set state = 'allocated', updated_at = now()
    where volume_id = ${volumeId} and state = 'reserved' returning *`;
  if (!res) return false;
  await sql`update pools set reserved_bytes = reserved_bytes - ${res.bytes}, allocated_bytes = allocated_bytes + ${res.bytes},
    updated_at = now() where id = ${res.poolId}`;
  return true;
}

/**
 * The successful results of creates and clones, set-based in one statement (what `finishOperation`,
 * `confirmReservation` and the volume's `creating -> available` do one by one): the operations that are still
 * open succeed, their reservations become allocations (each pool's ledger moved once by the sum), and their
 * volumes still `creating` become `available` with the artefact's allocation and path. Answers the ids of the
 * operations it finished; one already finished is left as it is (a duplicate result).
 */
export async function confirmCreated(
  sql: Queryable,
  done: readonly { operationId: string; allocatedBytes: bigint; hostPath: string }[],
): Promise<string[]> {
  if (done.length === 0) return [];
  const rows = await sql<{ id: string }[]>`
    with r as (
      select * from unnest(${done.map((d) => d.operationId)}::text[], ${done.map((d) => d.allocatedBytes.toString())}::int8[],
        ${done.map((d) => d.hostPath)}::text[]) as r(op_id, allocated, path)
    ), op as (
      update operations o set state = 'succeeded', error = null, finished_at = now(), updated_at = clock_timestamp()
      from r where o.id = r.op_id and o.kind in ('create_volume', 'clone_volume')
        and o.state = any(${OPERATION_STATE_MACHINE.sourcesOf("succeeded")})
      returning o.id, o.volume_id, r.allocated, r.path
    ), res as (
      update reservations s set state = 'allocated', updated_at = now()
      from op where s.volume_id = op.volume_id and s.state = 'reserved'
      returning s.pool_id, s.bytes
    ), pl as (
      update pools p set reserved_bytes = p.reserved_bytes - x.bytes, allocated_bytes = p.allocated_bytes + x.bytes,
        updated_at = now()
      from (select pool_id, sum(bytes)::int8 as bytes from res group by pool_id) x where p.id = x.pool_id
    ), vol as (
      update volumes v set state = 'available', error = null, allocated_bytes = op.allocated, host_path = op.path,
        updated_at = clock_timestamp()
      from op where v.id = op.volume_id and v.state = 'creating'
    )
    select id from op`;
  return rows.map((r) => r.id);
}

/** Releases whatever a volume holds, reserved or allocated. Idempotent. */
export async function releaseCapacity(sql: Queryable, volumeId: string): Promise<boolean> {
  const [before] = await sql<
    ReservationRow[]
  >`select * from reservations where volume_id = ${volumeId} for update`;
  if (!before || before.state === "released") return false;
  await sql`update reservations set state = 'released', updated_at = now() where volume_id = ${volumeId}`;
  const column = before.state === "reserved" ? sql`reserved_bytes` : sql`allocated_bytes`;
  await sql`update pools set ${column} = ${column} - ${before.bytes}, volume_count = volume_count - 1, updated_at = now()
    where id = ${before.poolId}`;
  return true;
}

/** Reservations never confirmed within their time to live, oldest first. */
export async function expiredReservations(sql: Queryable, limit = 100): Promise<ReservationRow[]> {
  return sql<ReservationRow[]>`select * from reservations where state = 'reserved' and expires_at < now()
    order by expires_at limit ${limit}`;
}

/** Checks that every pool's ledger columns equal the sum of its reservations (an invariant; used by tests). */
export async function ledgerDiscrepancies(
  sql: Queryable,
): Promise<{ poolId: string; column: string; ledger: bigint; actual: bigint }[]> {
  const rows = await sql<
    {
      poolId: string;
      reservedBytes: bigint;
      allocatedBytes: bigint;
      volumeCount: number;
      r: bigint;
      a: bigint;
      n: number;
    }[]
  >`
    select p.id as pool_id, p.reserved_bytes, p.allocated_bytes, p.volume_count,
      coalesce(sum(r.bytes) filter (where r.state = 'reserved'), 0)::int8 as r,
      coalesce(sum(r.bytes) filter (where r.state = 'allocated'), 0)::int8 as a,
      (count(*) filter (where r.state in ('reserved', 'allocated')))::int as n
    from pools p left join reservations r on r.pool_id = p.id group by p.id`;
  const out: { poolId: string; column: string; ledger: bigint; actual: bigint }[] = [];
  for (const x of rows) {
    if (x.reservedBytes !== x.r)
      out.push({ poolId: x.poolId, column: "reserved_bytes", ledger: x.reservedBytes, actual: x.r });
    if (x.allocatedBytes !== x.a)
      out.push({ poolId: x.poolId, column: "allocated_bytes", ledger: x.allocatedBytes, actual: x.a });
    if (x.volumeCount !== x.n)
      out.push({
        poolId: x.poolId,
        column: "volume_count",
        ledger: BigInt(x.volumeCount),
        actual: BigInt(x.n),
      });
  }
  return out;
}
