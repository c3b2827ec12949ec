CREATE TABLE snapshots (
  id            text PRIMARY KEY,
  name          text NOT NULL,
  volume_id     text NOT NULL REFERENCES volumes (id),
  state         text NOT NULL CHECK (state IN ('creating', 'available', 'deleting', 'deleted', 'error')),
  size_bytes    int8 NOT NULL,
  operation_id  text,
  error         jsonb,
  created_at    timestamptz NOT NULL DEFAULT now(),
  updated_at    timestamptz NOT NULL DEFAULT now(),
  deleted_at    timestamptz
);
-- A snapshot name belongs to one live snapshot of its volume.
CREATE UNIQUE INDEX snapshots_live_name ON snapshots (volume_id, name) WHERE state <> 'deleted';
CREATE INDEX volumes_source_snapshot ON volumes (source_snapshot_id) WHERE source_snapshot_id <> '';
