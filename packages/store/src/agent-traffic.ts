import type { Queryable } from "./db.js";

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
