-- Hosts: one per agent. The id is the host's name.
CREATE TABLE hosts (
  id                text PRIMARY KEY,
  state             text NOT NULL DEFAULT 'up' CHECK (state IN ('up', 'down')),
  zone              text NOT NULL DEFAULT '',
  labels            jsonb NOT NULL DEFAULT '{}',
  numa_nodes        jsonb NOT NULL DEFAULT '[]',
  cpu_count         integer NOT NULL DEFAULT 0,
  memory_bytes      int8 NOT NULL DEFAULT 0,
  agent_version     text NOT NULL DEFAULT '',
  initiator_name    text NOT NULL DEFAULT '',
  metrics_address   text NOT NULL DEFAULT '',
  schedulable       boolean NOT NULL DEFAULT true,
  cordon_reason     text NOT NULL DEFAULT '',
  boot_id           text NOT NULL DEFAULT '',
  registered_at     timestamptz NOT NULL DEFAULT now(),
  last_heartbeat_at timestamptz NOT NULL DEFAULT now(),
  inventory_at      timestamptz,
  updated_at        timestamptz NOT NULL DEFAULT now()
);

-- Pools, with the capacity ledger: allocated_bytes (confirmed volumes) and reserved_bytes (volumes being created)
-- are changed only by conditional UPDATEs in the same transaction as the volume row.
CREATE TABLE pools (
  id                   text PRIMARY KEY,            -- '<host>/<name>'
  host_id              text NOT NULL REFERENCES hosts (id),
  name                 text NOT NULL,
  kind                 text NOT NULL,
  numa_node            integer,
  healthy              boolean NOT NULL DEFAULT true,
  health_message       text NOT NULL DEFAULT '',
  total_bytes          int8 NOT NULL DEFAULT 0 CHECK (total_bytes >= 0),
  used_bytes           int8 NOT NULL DEFAULT 0 CHECK (used_bytes >= 0),
  free_bytes           int8 NOT NULL DEFAULT 0 CHECK (free_bytes >= 0),
  reported_provisioned_bytes int8 NOT NULL DEFAULT 0,
  data_percent         double precision,
  metadata_percent     double precision,
  overcommit_ratio     double precision NOT NULL DEFAULT 1 CHECK (overcommit_ratio > 0),
  max_used_percent     double precision NOT NULL DEFAULT 90,
  labels               jsonb NOT NULL DEFAULT '{}',
  formats              jsonb NOT NULL DEFAULT '[]',
  shared               boolean NOT NULL DEFAULT false,
  draining             boolean NOT NULL DEFAULT false,
  present              boolean NOT NULL DEFAULT true, -- false when the agent no longer reports the pool
  allocated_bytes      int8 NOT NULL DEFAULT 0 CHECK (allocated_bytes >= 0),
  reserved_bytes       int8 NOT NULL DEFAULT 0 CHECK (reserved_bytes >= 0),
  volume_count         integer NOT NULL DEFAULT 0 CHECK (volume_count >= 0),
  updated_at           timestamptz NOT NULL DEFAULT now(),
  UNIQUE (host_id, name)
);

CREATE TABLE volumes (
  id                  text PRIMARY KEY,
  name                text NOT NULL,
  size_bytes          int8 NOT NULL CHECK (size_bytes > 0),
  format              text NOT NULL,
  pool_id             text NOT NULL REFERENCES pools (id),
  host_id             text NOT NULL REFERENCES hosts (id),
  state               text NOT NULL CHECK (state IN ('creating', 'available', 'resizing', 'deleting', 'deleted', 'error')),
  numa_node           integer,
  cpu_set             text NOT NULL DEFAULT '',
  labels              jsonb NOT NULL DEFAULT '{}',
  qcow2               jsonb NOT NULL DEFAULT '{}',
  error               jsonb,
  request_id          text,
  operation_id        text,
  allocated_bytes     int8 NOT NULL DEFAULT 0,
  host_path           text NOT NULL DEFAULT '',
  anti_affinity_group text NOT NULL DEFAULT '',
  source_volume_id    text NOT NULL DEFAULT '',
  source_snapshot_id  text NOT NULL DEFAULT '',
  created_at          timestamptz NOT NULL DEFAULT now(),
  updated_at          timestamptz NOT NULL DEFAULT now(),
  deleted_at          timestamptz
);
-- A name belongs to one volume that is not deleted.
CREATE UNIQUE INDEX volumes_live_name ON volumes (name) WHERE state <> 'deleted';
CREATE UNIQUE INDEX volumes_request_id ON volumes (request_id) WHERE request_id IS NOT NULL;
CREATE INDEX volumes_pool ON volumes (pool_id) WHERE state <> 'deleted';
CREATE INDEX volumes_updated ON volumes (updated_at);

-- The ledger's detail: one reservation per volume. state: reserved -> allocated -> released.
CREATE TABLE reservations (
  volume_id   text PRIMARY KEY REFERENCES volumes (id),
  pool_id     text NOT NULL REFERENCES pools (id),
  bytes       int8 NOT NULL CHECK (bytes > 0),
  state       text NOT NULL CHECK (state IN ('reserved', 'allocated', 'released')),
  expires_at  timestamptz NOT NULL,
  created_at  timestamptz NOT NULL DEFAULT now(),
  updated_at  timestamptz NOT NULL DEFAULT now()
);
CREATE INDEX reservations_open ON reservations (expires_at) WHERE state = 'reserved';

-- Operations double as the transactional outbox: state 'pending' rows are published by the relay.
CREATE TABLE operations (
  id            text PRIMARY KEY,
  kind          text NOT NULL,
  state         text NOT NULL CHECK (state IN ('pending', 'sent', 'succeeded', 'failed')),
  host_id       text NOT NULL REFERENCES hosts (id),
  pool_id       text NOT NULL,
  volume_id     text NOT NULL DEFAULT '',
  snapshot_id   text NOT NULL DEFAULT '',
  command       bytea NOT NULL,                -- the AgentCommand, protobuf binary
  attempts      integer NOT NULL DEFAULT 0,
  error         jsonb,
  requested_by  text NOT NULL DEFAULT '',
  created_at    timestamptz NOT NULL DEFAULT now(),
  updated_at    timestamptz NOT NULL DEFAULT now(),
  sent_at       timestamptz,
  finished_at   timestamptz
);
CREATE INDEX operations_outbox ON operations (created_at) WHERE state IN ('pending', 'sent');
CREATE INDEX operations_volume ON operations (volume_id);

-- Every mutating call: who, what, when, the request, the outcome.
CREATE TABLE audit_log (
  id          bigserial PRIMARY KEY,
  at          timestamptz NOT NULL DEFAULT now(),
  actor       text NOT NULL,
  action      text NOT NULL,
  target      text NOT NULL DEFAULT '',
  request     jsonb NOT NULL DEFAULT '{}',
  outcome     text NOT NULL,
  error       text NOT NULL DEFAULT ''
);

-- What the reconciler found when it compared a host's inventory with the database.
CREATE TABLE findings (
  host_id     text NOT NULL,
  kind        text NOT NULL CHECK (kind IN ('orphan', 'missing', 'foreign')),
  subject     text NOT NULL,                   -- volume id, or the foreign artefact's name
  pool_id     text NOT NULL DEFAULT '',
  detail      text NOT NULL DEFAULT '',
  first_seen  timestamptz NOT NULL DEFAULT now(),
  last_seen   timestamptz NOT NULL DEFAULT now(),
  PRIMARY KEY (host_id, kind, subject)
);
