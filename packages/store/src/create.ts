import { type AuditEntry, auditValues } from "./audit.js";
import type { Queryable } from "./db.js";
import { capacityRule } from "./ledger.js";
import type { NewOperation } from "./operations.js";
import type { OperationRow, VolumeRow } from "./rows.js";
import type { NewVolume } from "./volumes.js";

/**
 * A placed create in one statement (one round trip, atomic on its own): the ledger's conditional UPDATE of the
 * pool (the same rule as `reserveCapacity`), and only when it passes, the volume row in `creating`, its
 * reservation, the outbox operation and the audit entry. Undefined when the ledger refuses (nothing written);
 * a name or request id taken meanwhile fails the statement with a unique violation (nothing written either).
 * The operation row is built from what was written: `now()` is the same for every part of one statement.
 */
export async function insertPlacedVolume(
  sql: Queryable,
  c: {
    volume: NewVolume;
    reservation: { ttlMs: number };
    operation: Omit<NewOperation, "volumeId" | "poolId" | "hostId">;
    audit: AuditEntry;
  },
): Promise<{ volume: VolumeRow; operation: OperationRow } | undefined> {
  const v = c.volume;
  const o = c.operation;
  const a = auditValues(c.audit);
  const [row] = await sql<VolumeRow[]>`
    with reserve as (
      update pools set reserved_bytes = reserved_bytes + ${v.sizeBytes}, volume_count = volume_count + 1, updated_at = now()
      where id = ${v.poolId} and ${capacityRule(sql, v.sizeBytes)} and (max_volumes = 0 or volume_count < max_volumes)
      returning id
    ), vol as (
      insert into volumes (id, name, size_bytes, format, pool_id, host_id, state, numa_node, cpu_set, labels, qcow2,
        request_id, operation_id, anti_affinity_group, source_volume_id, source_snapshot_id)
      select ${v.id}, ${v.name}, ${v.sizeBytes}, ${v.format}, ${v.poolId}, ${v.hostId}, 'creating', ${v.numaNode}::int,
        ${v.cpuSet}, ${sql.json(v.labels)}, ${sql.json(v.qcow2 as never)}, ${v.requestId}::text, ${v.operationId},
        ${v.antiAffinityGroup}, ${v.sourceVolumeId ?? ""}, ${v.sourceSnapshotId ?? ""}
      from reserve
      returning *
    ), res as (
      insert into reservations (volume_id, pool_id, bytes, state, expires_at)
      select ${v.id}, ${v.poolId}, ${v.sizeBytes}, 'reserved', now() + make_interval(secs => ${c.reservation.ttlMs / 1000})
      from reserve
    ), op as (
      insert into operations (id, kind, state, host_id, pool_id, volume_id, snapshot_id, command, requested_by, request_id)
      select ${o.id}, ${o.kind}, 'pending', ${v.hostId}, ${v.poolId}, ${v.id}, ${o.snapshotId ?? ""},
        ${Buffer.from(o.command)}, ${o.requestedBy}, ${o.requestId ?? null}::text
      from reserve
    ), aud as (
      insert into audit_log (actor, role, source, action, target, request, outcome, error)
      select ${a.actor}, ${a.role}, ${a.source}, ${a.action}, ${a.target}, ${sql.json(a.request as never)}, ${a.outcome}, ${a.error}
      from reserve
    )
    select * from vol`;
  if (!row) return undefined;
  return {
    volume: row,
    operation: {
      id: o.id,
      kind: o.kind,
      state: "pending",
      hostId: v.hostId,
      poolId: v.poolId,
      volumeId: v.id,
      snapshotId: o.snapshotId ?? "",
      exportId: "",
      command: o.command,
      attempts: 0,
      error: null,
      requestedBy: o.requestedBy,
      requestId: o.requestId ?? null,
      createdAt: row.createdAt,
      updatedAt: row.createdAt,
      sentAt: null,
      finishedAt: null,
    },
  };
}
