import type { Queryable } from "./db.js";
import { type PoolReportRecord, poolId } from "./pools.js";

/** Records that an inventory of the host arrived; false when the host never registered (the inventory is dropped). */
export async function markInventoryReceived(sql: Queryable, hostId: string): Promise<boolean> {
  const rows = await sql`update hosts set inventory_at = now() where id = ${hostId} returning id`;
  return rows.length > 0;
}

/**
 * Ids of the host's volumes in flux, which an inventory cannot judge: being created or deleted, or deleted in the
 * last minute (their artefact may still be reported).
 */
export async function volumesInFluxOnHost(sql: Queryable, hostId: string): Promise<Set<string>> {
  const rows = await sql<{ id: string }[]>`
    select id from volumes where host_id = ${hostId}
      and (state in ('creating', 'deleting') or (state = 'deleted' and deleted_at > now() - interval '1 minute'))`;
  return new Set(rows.map((r) => r.id));
}

/**
 * Applies an inventory delta's pool reports: each named pool that exists is updated; nothing else is touched
 * (unlike `applyPoolReports`, pools left out are not marked absent: a delta names only the pools an operation
 * changed). A pool the host has not reported in a full inventory or registration yet is skipped. Returns how
 * many pools were updated.
 */
export async function applyPoolDeltas(
  sql: Queryable,
  hostId: string,
  reports: PoolReportRecord[],
): Promise<number> {
  let updated = 0;
  for (const r of reports) {
    const rows = await sql`
      update pools set healthy = ${r.healthy}, health_message = ${r.healthMessage}, total_bytes = ${r.totalBytes},
        used_bytes = ${r.usedBytes}, free_bytes = ${r.freeBytes}, reported_provisioned_bytes = ${r.provisionedBytes},
        data_percent = ${r.dataPercent}, metadata_percent = ${r.metadataPercent}, present = true, updated_at = now()
      where id = ${poolId(hostId, r.name)} returning id`;
    updated += rows.length;
  }
  return updated;
}

/**
 * Drops the host's orphan and missing findings about these volumes: a delta says how each stands now, and the
 * next full inventory judges them again. Quarantined findings stay.
 */
export async function dropVolumeFindings(sql: Queryable, hostId: string, volumeIds: string[]): Promise<void> {
  if (volumeIds.length === 0) return;
  await sql`delete from findings where host_id = ${hostId} and kind in ('orphan', 'missing')
    and subject = any(${volumeIds}) and quarantined_at is null`;
}
