import { OPERATION_STATE_MACHINE, THIN_KINDS } from "@stowage/core";
import type { Queryable } from "./db.js";
import type { ReservationRow } from "./rows.js";

/**
 * The capacity ledger. A pool's `allocated_bytes` (volumes, snapshots and clone bases that exist) and
 * `reserved_bytes` (those being made) change only here, each by one conditional UPDATE, so concurrent controllers
 * can never oversubscribe a pool (snapshots: see "Snapshot capacity" below and in docs/architecture.md):
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
 * Holds a volume's bytes again as an allocation after its reservation was released (a create whose success
 * arrived after the controller had failed it and released its space: the artefact exists). One conditional
 * UPDATE with the rule of `allocateExisting` (the logical part and the volume limit; the artefact's space is
 * already in the agent's physical numbers). Returns false, changing nothing, when it does not fit or when the
 * volume has no released reservation (it holds its bytes already, or never did).
 */
export async function reallocateReleased(sql: Queryable, volumeId: string): Promise<boolean> {
  const [res] = await sql<
    ReservationRow[]
  >`select * from reservations where volume_id = ${volumeId} and state = 'released' for update`;
  if (!res) return false;
  const rows = await sql`
    update pools set allocated_bytes = allocated_bytes + ${res.bytes}, volume_count = volume_count + 1, updated_at = now()
    where id = ${res.poolId} and ${fitsLogically(sql, res.bytes)} and (max_volumes = 0 or volume_count < max_volumes)
    returning id`;
  if (rows.length === 0) return false;
  await sql`update reservations set state = 'allocated', updated_at = now() where volume_id = ${volumeId}`;
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

/**
 * Checks that every pool's ledger columns equal the sum of its reservations: the volumes' and the snapshots' (and
 * clone bases'), which hold bytes but never count as volumes (an invariant; used by tests).
 */
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
    with h as (
      select pool_id, bytes, state, 1 as volume from reservations
      union all
      select pool_id, bytes, state, 0 as volume from snapshot_reservations
    )
    select p.id as pool_id, p.reserved_bytes, p.allocated_bytes, p.volume_count,
      coalesce(sum(h.bytes) filter (where h.state = 'reserved'), 0)::int8 as r,
      coalesce(sum(h.bytes) filter (where h.state = 'allocated'), 0)::int8 as a,
      coalesce(sum(h.volume) filter (where h.state in ('reserved', 'allocated')), 0)::int as n
    from pools p left join h on h.pool_id = p.id group by p.id`;
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

/**
 * Snapshot capacity (docs/architecture.md, "Snapshot capacity"). What a snapshot holds, and the base image a dir
 * pool exports a snapshot to for its linked clones, is held like a volume: reserved with the call that makes it
 * (one conditional UPDATE of the pool, the same rule as a volume's), an allocation once the result confirms it,
 * released when it is deleted or was never made. The rows are in `snapshot_reservations`, one per
 * (snapshot, what it holds); they never count towards a pool's volume_count.
 */
export type SnapshotHolds = "snapshot" | "base";

export interface SnapshotReservationRow {
  snapshotId: string;
  holds: SnapshotHolds;
  poolId: string;
  bytes: bigint;
  state: "reserved" | "allocated" | "released";
  operationId: string;
  expiresAt: Date;
}

/** Kinds whose snapshots are exported to a base image for linked clones (qcow2 files). */
const BASE_KINDS: ReadonlySet<string> = new Set(["dir", "netfs"]);

/**
 * The bytes a snapshot of a volume of `volumeSize` holds in a pool of this kind: thick LVM's COW store is
 * 100%ORIGIN (and LVM cannot resize the origin of a classic snapshot), a qcow2 internal snapshot's worst case is
 * every cluster rewritten after it (the volume's size at the time); thin kinds (lvmthin, rbd) hold nothing up
 * front, their pools are governed by the overcommit ratio and the physical floor.
 */
export function snapshotHoldingBytes(kind: string, volumeSize: bigint): bigint {
  return THIN_KINDS.has(kind as never) ? 0n : volumeSize;
}

/**
 * Whether a clone of a snapshot in this pool may stand on a base image exported from it (then the base holds
 * the snapshot's size, once, however many clones it has): a qcow2 linked clone in a dir or netfs pool.
 */
export function cloneNeedsBase(kind: string, format: string, flatten: boolean): boolean {
  return BASE_KINDS.has(kind) && format === "qcow2" && !flatten;
}

export async function getSnapshotReservation(
  sql: Queryable,
  snapshotId: string,
  holds: SnapshotHolds,
  forUpdate = false,
): Promise<SnapshotReservationRow | undefined> {
  const lock = forUpdate ? sql`for update` : sql``;
  const [row] = await sql<SnapshotReservationRow[]>`
    select * from snapshot_reservations where snapshot_id = ${snapshotId} and holds = ${holds} ${lock}`;
  return row;
}

/**
 * Reserves what a snapshot (or its clone base) will hold, if it fits the pool's capacity rule (the same as a
 * volume's, thin pools with 0 bytes: only their logical and physical limits), in the caller's transaction.
 * The snapshot row may be written after it, in the same transaction. Answers false, changing nothing, when it
 * does not fit; true without a change when the snapshot already holds it (reserved or allocated). A released
 * holding is taken again (a base whose first clone failed).
 */
export async function reserveSnapshotCapacity(
  sql: Queryable,
  r: {
    poolId: string;
    snapshotId: string;
    holds: SnapshotHolds;
    bytes: bigint;
    operationId: string;
    ttlMs: number;
  },
): Promise<boolean> {
  const held = await getSnapshotReservation(sql, r.snapshotId, r.holds, true);
  if (held && held.state !== "released") return true;
  const rows = await sql`
    update pools set reserved_bytes = reserved_bytes + ${r.bytes}, updated_at = now()
    where id = ${r.poolId} and ${capacityRule(sql, r.bytes)}
    returning id`;
  if (rows.length === 0) return false;
  await sql`insert into snapshot_reservations (snapshot_id, holds, pool_id, bytes, state, operation_id, expires_at)
    values (${r.snapshotId}, ${r.holds}, ${r.poolId}, ${r.bytes}, 'reserved', ${r.operationId},
      now() + make_interval(secs => ${r.ttlMs / 1000}))
    on conflict (snapshot_id, holds) do update set pool_id = excluded.pool_id, bytes = excluded.bytes,
      state = 'reserved', operation_id = excluded.operation_id, expires_at = excluded.expires_at, updated_at = now()`;
  return true;
}

/** Turns a snapshot's reservation into an allocation (the snapshot exists). Idempotent. */
export async function confirmSnapshotReservation(
  sql: Queryable,
  snapshotId: string,
  holds: SnapshotHolds = "snapshot",
): Promise<boolean> {
  const [res] = await sql<SnapshotReservationRow[]>`
    update snapshot_reservations set state = 'allocated', updated_at = now()
    where snapshot_id = ${snapshotId} and holds = ${holds} and state = 'reserved' returning *`;
  if (!res) return false;
  await sql`update pools set reserved_bytes = reserved_bytes - ${res.bytes}, allocated_bytes = allocated_bytes + ${res.bytes},
    updated_at = now() where id = ${res.poolId}`;
  return true;
}

/**
 * Releases what a snapshot holds, reserved or allocated: one holding, or (without `holds`) the snapshot's and
 * its base's, as a deleted snapshot takes its base with it. Idempotent; answers how many it released.
 */
export async function releaseSnapshotCapacity(
  sql: Queryable,
  snapshotId: string,
  holds?: SnapshotHolds,
): Promise<number> {
  const which = holds ? sql`and holds = ${holds}` : sql``;
  const open = await sql<SnapshotReservationRow[]>`
    select * from snapshot_reservations where snapshot_id = ${snapshotId} ${which} and state <> 'released'
    order by holds for update`;
  for (const res of open) {
    await sql`update snapshot_reservations set state = 'released', updated_at = now()
      where snapshot_id = ${snapshotId} and holds = ${res.holds}`;
    const column = res.state === "reserved" ? sql`reserved_bytes` : sql`allocated_bytes`;
    await sql`update pools set ${column} = ${column} - ${res.bytes}, updated_at = now() where id = ${res.poolId}`;
  }
  return open.length;
}

/** Snapshot reservations (not bases: they follow their clones) never confirmed within their time to live. */
export async function expiredSnapshotReservations(
  sql: Queryable,
  limit = 100,
): Promise<SnapshotReservationRow[]> {
  return sql<SnapshotReservationRow[]>`select * from snapshot_reservations
    where state = 'reserved' and holds = 'snapshot' and expires_at < now() order by expires_at limit ${limit}`;
}

/**
 * Settles reserved clone bases from the clones of their snapshot in the same pool, set-based: a base becomes an
 * allocation once one of them was made (a volume past `creating` and not failed), and is released when none is
 * made or being made (every clone failed, or was never made). A base that is allocated stays until its snapshot
 * is deleted, as the driver keeps it until then. Without ids, every reserved base. Idempotent; answers how many
 * it moved.
 */
export async function settleCloneBases(sql: Queryable, snapshotIds?: readonly string[]): Promise<number> {
  const which = snapshotIds ? sql`and s.snapshot_id = any(${[...snapshotIds]}::text[])` : sql``;
  const rows = await sql<{ poolId: string; bytes: bigint; made: boolean }[]>`
    with b as (
      select s.snapshot_id, s.pool_id,
        exists (select 1 from volumes c where c.source_snapshot_id = s.snapshot_id and c.pool_id = s.pool_id
          and c.state not in ('creating', 'error', 'deleted')) as made,
        exists (select 1 from volumes c where c.source_snapshot_id = s.snapshot_id and c.pool_id = s.pool_id
          and c.state = 'creating') as making
      from snapshot_reservations s where s.holds = 'base' and s.state = 'reserved' ${which}
    )
    update snapshot_reservations s set state = case when b.made then 'allocated' else 'released' end,
      updated_at = now()
    from b where s.snapshot_id = b.snapshot_id and s.holds = 'base' and s.state = 'reserved'
      and (b.made or not b.making)
    returning s.pool_id, s.bytes, b.made`;
  for (const r of rows) {
    const moved = r.made ? sql`, allocated_bytes = allocated_bytes + ${r.bytes}` : sql``;
    await sql`update pools set reserved_bytes = reserved_bytes - ${r.bytes} ${moved}, updated_at = now()
      where id = ${r.poolId}`;
  }
  return rows.length;
}
