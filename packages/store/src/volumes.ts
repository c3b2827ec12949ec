import { VOLUME_STATE_MACHINE, type VolumeState } from "@stowage/core";
import type { Queryable } from "./db.js";
import type { ErrorRecord, VolumeRow } from "./rows.js";
import { inState, type StateChange, setState, transitionRow } from "./transition.js";
import { type Changes, changes } from "./watch.js";

export interface NewVolume {
  id: string;
  name: string;
  sizeBytes: bigint;
  format: string;
  poolId: string;
  hostId: string;
  numaNode: number | null;
  cpuSet: string;
  labels: Record<string, string>;
  qcow2: Record<string, unknown>;
  requestId: string | null;
  operationId: string;
  antiAffinityGroup: string;
  sourceVolumeId?: string;
  sourceSnapshotId?: string;
}

export async function insertVolume(sql: Queryable, v: NewVolume): Promise<VolumeRow> {
  const [row] = await sql<VolumeRow[]>`
    insert into volumes (id, name, size_bytes, format, pool_id, host_id, state, numa_node, cpu_set, labels, qcow2,
      request_id, operation_id, anti_affinity_group, source_volume_id, source_snapshot_id)
    values (${v.id}, ${v.name}, ${v.sizeBytes}, ${v.format}, ${v.poolId}, ${v.hostId}, 'creating', ${v.numaNode},
      ${v.cpuSet}, ${sql.json(v.labels)}, ${sql.json(v.qcow2 as never)}, ${v.requestId}, ${v.operationId}, ${v.antiAffinityGroup},
      ${v.sourceVolumeId ?? ""}, ${v.sourceSnapshotId ?? ""})
    returning *`;
  return row!;
}

export async function getVolumeById(
  sql: Queryable,
  id: string,
  forUpdate = false,
): Promise<VolumeRow | undefined> {
  const [row] = forUpdate
    ? await sql<VolumeRow[]>`select * from volumes where id = ${id} for update`
    : await sql<VolumeRow[]>`select * from volumes where id = ${id}`;
  return row;
}

/** The live (not deleted) volume with this name. */
export async function getVolumeByName(sql: Queryable, name: string): Promise<VolumeRow | undefined> {
  const [row] = await sql<VolumeRow[]>`select * from volumes where name = ${name} and state <> 'deleted'`;
  return row;
}

/**
 * The volume a create with this name and request id repeats, in one query: the one made with the request id if
 * any, else the live volume of that name.
 */
export async function getVolumeByRequestOrName(
  sql: Queryable,
  name: string,
  requestId: string | null,
): Promise<VolumeRow | undefined> {
  const [row] = await sql<VolumeRow[]>`
    select * from volumes where request_id = ${requestId} or (name = ${name} and state <> 'deleted')
    order by request_id is not distinct from ${requestId} desc limit 1`;
  return row;
}

export async function getVolumeByRequestId(
  sql: Queryable,
  requestId: string,
): Promise<VolumeRow | undefined> {
  const [row] = await sql<VolumeRow[]>`select * from volumes where request_id = ${requestId}`;
  return row;
}

export interface VolumeFilter {
  poolId?: string;
  hostId?: string;
  state?: string;
  namePrefix?: string;
  labels?: Record<string, string>;
  showDeleted?: boolean;
  after?: string;
  limit: number;
}

export async function listVolumes(sql: Queryable, f: VolumeFilter): Promise<VolumeRow[]> {
  const prefix = (f.namePrefix ?? "").replace(/[\\%_]/g, (c) => `\\${c}`);
  return sql<VolumeRow[]>`
    select * from volumes
    where (${f.poolId ?? ""} = '' or pool_id = ${f.poolId ?? ""})
      and (${f.hostId ?? ""} = '' or host_id = ${f.hostId ?? ""})
      and (${f.state ?? ""} = '' or state = ${f.state ?? ""})
      and (${f.showDeleted ?? false} or ${f.state ?? ""} = 'deleted' or state <> 'deleted')
      and name like ${`${prefix}%`}
      and labels @> ${sql.json(f.labels ?? {})}
      and id > ${f.after ?? ""}
    order by id limit ${f.limit}`;
}

/** Volumes changed after `since`, for watches (they poll, so any controller replica sees every change). */
/**
 * The volumes written by transactions that `after` (a snapshot from `currentSnapshot` or an earlier call) did not
 * see, with the snapshot of this read, to pass next time (migration 0007). Every change is in exactly one answer.
 */
export async function volumesChangedAfter(
  sql: Queryable,
  after: string,
  f: { id?: string; poolId?: string },
): Promise<Changes<VolumeRow>> {
  return changes(
    await sql<(VolumeRow & { watchSnapshot: string })[]>`
      select s.snap::text as watch_snapshot, t.* from (select pg_current_snapshot() as snap) s
      left join lateral (
        select * from volumes
        where change_xid >= pg_snapshot_xmin(${after}::pg_snapshot)
          and not pg_visible_in_snapshot(change_xid, ${after}::pg_snapshot)
          and (${f.id ?? ""} = '' or id = ${f.id ?? ""})
          and (${f.poolId ?? ""} = '' or pool_id = ${f.poolId ?? ""})
        order by change_xid, id
      ) t on true`,
  );
}

/** What may change on a volume besides its state (which only `transitionVolume` changes). */
export interface VolumeUpdate {
  error?: ErrorRecord | null;
  operationId?: string;
  allocatedBytes?: bigint;
  hostPath?: string;
  sizeBytes?: bigint;
}

export async function updateVolume(sql: Queryable, id: string, u: VolumeUpdate): Promise<VolumeRow> {
  const [row] = await writeVolume(sql, id, u);
  return row!;
}

/**
 * Moves a volume to `to` through the state machine (packages/core), with the other changes in `patch`. An
 * illegal transition is FAILED_PRECONDITION; so is a volume that changed state since `volume` was read.
 */
export async function transitionVolume(
  sql: Queryable,
  volume: Pick<VolumeRow, "id" | "name" | "state">,
  to: VolumeState,
  patch: VolumeUpdate = {},
): Promise<VolumeRow> {
  return transitionRow(VOLUME_STATE_MACHINE, `volume ${volume.name}`, volume, to, (change) =>
    writeVolume(sql, volume.id, patch, change),
  );
}

async function writeVolume(
  sql: Queryable,
  id: string,
  u: VolumeUpdate,
  change?: StateChange<VolumeState>,
): Promise<VolumeRow[]> {
  return sql<VolumeRow[]>`
    update volumes set ${setState(sql, change)}
      error = case when ${u.error !== undefined} then ${u.error === undefined || u.error === null ? null : sql.json(u.error as never)}::jsonb else error end,
      operation_id = coalesce(${u.operationId ?? null}, operation_id),
      allocated_bytes = coalesce(${u.allocatedBytes ?? null}::int8, allocated_bytes),
      host_path = coalesce(${u.hostPath ?? null}, host_path),
      size_bytes = coalesce(${u.sizeBytes ?? null}::int8, size_bytes),
      updated_at = clock_timestamp()
    where id = ${id} ${inState(sql, change)}
    returning *`;
}

/** A volume as the inventory diff judges it: its state, pool, and whether the ledger holds its bytes. */
export interface InventoryVolume {
  id: string;
  state: VolumeState;
  poolId: string;
  /** Its reservation is reserved or allocated (false: released, or none). */
  holds: boolean;
  deletedAt: Date | null;
}

/** The host's volumes that are not deleted, for the inventory diff (agents.ts `diffInventory`). */
export async function inventoryVolumesOnHost(sql: Queryable, hostId: string): Promise<InventoryVolume[]> {
  return sql<InventoryVolume[]>`
    select v.id, v.state, v.pool_id, v.deleted_at, coalesce(r.state in ('reserved', 'allocated'), false) as holds
    from volumes v left join reservations r on r.volume_id = v.id
    where v.host_id = ${hostId} and v.state <> 'deleted'`;
}

/** These volumes (deleted ones too), for judging the artefacts an inventory delta names. */
export async function inventoryVolumesById(
  sql: Queryable,
  ids: readonly string[],
): Promise<InventoryVolume[]> {
  if (ids.length === 0) return [];
  return sql<InventoryVolume[]>`
    select v.id, v.state, v.pool_id, v.deleted_at, coalesce(r.state in ('reserved', 'allocated'), false) as holds
    from volumes v left join reservations r on r.volume_id = v.id
    where v.id = any(${ids as string[]})`;
}

export async function liveVolumesOnHost(sql: Queryable, hostId: string): Promise<VolumeRow[]> {
  return sql<VolumeRow[]>`select * from volumes where host_id = ${hostId} and state <> 'deleted'`;
}

/** How many live volumes were cloned from each snapshot of a volume (snapshot id to count). */
export async function cloneCountsBySnapshot(sql: Queryable, volumeId: string): Promise<Map<string, number>> {
  const rows = await sql<{ sourceSnapshotId: string; n: number }[]>`
    select source_snapshot_id, count(*)::int as n from volumes
    where source_volume_id = ${volumeId} and source_snapshot_id <> '' and state <> 'deleted'
    group by source_snapshot_id`;
  return new Map(rows.map((r) => [r.sourceSnapshotId, r.n]));
}
