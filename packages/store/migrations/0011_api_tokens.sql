-- API tokens managed with `stowctl token`: only a SHA-256 hash of each secret is kept.
create table api_tokens (
  id text primary key,
  name text not null,
  role text not null check (role in ('viewer', 'operator', 'admin')),
  secret_sha256 bytea not null unique,
  created_by text not null,
  created_at timestamptz not null default now(),
  expires_at timestamptz,
  revoked_at timestamptz,
  last_used_at timestamptz
);
-- A name is unique among tokens not revoked (a revoked name can be used again).
create unique index api_tokens_live_name on api_tokens (name) where revoked_at is null;
