-- Join tokens (`stowctl token create --host NAME`) live beside API tokens: a join token names one host, is used
-- once (used_at) and always expires. Only the SHA-256 of its secret is kept, as for API tokens.
alter table api_tokens add column kind text not null default 'api' check (kind in ('api', 'join'));
alter table api_tokens add column host_id text;
alter table api_tokens add column used_at timestamptz;
alter table api_tokens add constraint api_tokens_join_has_host check (kind <> 'join' or (host_id is not null and expires_at is not null));

-- Every certificate the controller's CA issued to a host, and the NATS user key minted with it. A revoked host's
-- certificates are refused by the gRPC listener, and its NATS user keys are in the account JWT's revocations.
create table host_certificates (
  serial text primary key,
  host_id text not null,
  fingerprint_sha256 text not null,
  not_before timestamptz not null,
  not_after timestamptz not null,
  nats_public_key text not null default '',
  issued_at timestamptz not null default now(),
  -- "join:<token id>" or "renew:<serial of the certificate it renewed>".
  issued_by text not null,
  revoked_at timestamptz
);
create index host_certificates_host on host_certificates (host_id);
create index host_certificates_revoked_keys on host_certificates (revoked_at) where revoked_at is not null and nats_public_key <> '';
