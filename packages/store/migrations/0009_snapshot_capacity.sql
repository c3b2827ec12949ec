-- Snapshots and clone bases hold capacity too (docs/architecture.md, "Snapshot capacity"). Volumes keep their
-- one reservation each in `reservations` (keyed by volume); what a snapshot holds is here, one row per
-- (snapshot, what): 'snapshot' is the snapshot's own space (a thick LVM COW store at 100%ORIGIN, a qcow2
-- internal snapshot's worst case), 'base' the read-only base image a dir pool exports a snapshot to for its
-- linked clones. The pool's allocated_bytes and reserved_bytes are the sums over both tables; snapshot
-- holdings do not count towards volume_count. Thin kinds hold 0 bytes (a row all the same: its state says what
-- the snapshot's result did, and a thin pool past its physical floor refuses the snapshot).
CREATE TABLE snapshot_reservations (
  -- Deferred: CreateSnapshot reserves before it writes the snapshot row, in the same transaction.
  snapshot_id   text NOT NULL REFERENCES snapshots (id) DEFERRABLE INITIALLY DEFERRED,
  holds         text NOT NULL CHECK (holds IN ('snapshot', 'base')),
  pool_id       text NOT NULL REFERENCES pools (id),
  bytes         int8 NOT NULL CHECK (bytes >= 0),
  state         text NOT NULL CHECK (state IN ('reserved', 'allocated', 'released')),
  -- The operation that took it: the create_snapshot, or the clone_volume that first needed the base.
  operation_id  text NOT NULL DEFAULT '',
  expires_at    timestamptz NOT NULL,
  created_at    timestamptz NOT NULL DEFAULT now(),
  updated_at    timestamptz NOT NULL DEFAULT now(),
  PRIMARY KEY (snapshot_id, holds)
);
CREATE INDEX snapshot_reservations_open ON snapshot_reservations (expires_at) WHERE state = 'reserved';
CREATE INDEX snapshot_reservations_pool ON snapshot_reservations (pool_id) WHERE state <> 'released';

-- Snapshots made before this migration: every live one holds by the rule of its pool's kind, as an allocation
-- (a failed one too, which may exist on its host: deleting it gives the bytes back), and so does the base of a
-- dir snapshot that has live clones. The pools' ledgers take the sums.
INSERT INTO snapshot_reservations (snapshot_id, holds, pool_id, bytes, state, operation_id, expires_at)
SELECT s.id, 'snapshot', v.pool_id,
       CASE WHEN p.kind IN ('lvmthin', 'rbd') THEN 0 ELSE s.size_bytes END,
       'allocated', coalesce(s.operation_id, ''), now()
FROM snapshots s JOIN volumes v ON v.id = s.volume_id JOIN pools p ON p.id = v.pool_id
WHERE s.state <> 'deleted';

INSERT INTO snapshot_reservations (snapshot_id, holds, pool_id, bytes, state, operation_id, expires_at)
SELECT s.id, 'base', v.pool_id, s.size_bytes, 'allocated', '', now()
FROM snapshots s JOIN volumes v ON v.id = s.volume_id JOIN pools p ON p.id = v.pool_id
WHERE s.state <> 'deleted' AND p.kind IN ('dir', 'netfs') AND v.format = 'qcow2'
  AND EXISTS (SELECT 1 FROM volumes c WHERE c.source_snapshot_id = s.id AND c.state <> 'deleted');

UPDATE pools p SET allocated_bytes = p.allocated_bytes + x.bytes, updated_at = now()
FROM (SELECT pool_id, sum(bytes)::int8 AS bytes FROM snapshot_reservations GROUP BY pool_id) x
WHERE p.id = x.pool_id AND x.bytes > 0;
