-- Exports (docs/architecture.md, "Exports"): a volume made reachable from other hosts. One row per export, one
-- row per allowed host; the hosts' unicast addresses, which iSCSI ACLs bind besides the initiator name.
alter table hosts add column addresses jsonb not null default '[]';

create table exports (
  id             text primary key,
  volume_id      text not null references volumes (id),
  -- The host that serves it (the volume's host).
  host_id        text not null references hosts (id),
  kind           text not null check (kind in ('iscsi', 'nfs', 'nbd', 'rbd')),
  state          text not null check (state in ('creating', 'active', 'deleting', 'deleted', 'error')),
  -- How clients reach it, as the serving agent reported it.
  uri            text not null default '',
  -- CHAP: the user name, and the secret sealed with the controller's secret key (never in clear).
  chap_user      text not null default '',
  chap_secret    text not null default '',
  error          jsonb,
  request_id     text unique,
  operation_id   text,
  created_at     timestamptz not null default now(),
  updated_at     timestamptz not null default now(),
  deleted_at     timestamptz
);
-- At most one live export of each kind per volume.
create unique index exports_live_per_volume on exports (volume_id, kind) where state <> 'deleted';
create index exports_host on exports (host_id) where state <> 'deleted';

create table export_clients (
  export_id  text not null references exports (id),
  host_id    text not null references hosts (id),
  -- RBD: this host's cephx key, sealed like the CHAP secret.
  cephx_key  text not null default '',
  added_at   timestamptz not null default now(),
  primary key (export_id, host_id)
);
create index export_clients_host on export_clients (host_id);

-- The export an operation changes (create_export, delete_export).
alter table operations add column export_id text not null default '';
