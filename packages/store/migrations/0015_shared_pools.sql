-- Shared pools (docs/architecture.md, "Shared pools"): storage that several hosts reach (netfs: one NFS export)
-- is one pool, with one ledger row, however many hosts report it.
--   * pools.share is the storage's identity as the agents report it (netfs: nfs://server/path); '' for a pool
--     of one host. At most one pool per kind and share: the first host to report it owns the row.
--   * pool_attachments lists the other hosts that report the same share, with the name each gives it in its
--     own config; `present` is false once a host no longer reports it (detached, kept like an absent pool).
ALTER TABLE pools ADD COLUMN share text NOT NULL DEFAULT '';
CREATE UNIQUE INDEX pools_share ON pools (kind, share) WHERE share <> '';

CREATE TABLE pool_attachments (
  pool_id     text NOT NULL REFERENCES pools (id),
  host_id     text NOT NULL REFERENCES hosts (id),
  name        text NOT NULL,                 -- the pool's name in this host's agent config
  present     boolean NOT NULL DEFAULT true, -- false when the host no longer reports the share
  healthy     boolean NOT NULL DEFAULT true, -- the host's own health check of the share
  health_message text NOT NULL DEFAULT '',
  attached_at timestamptz NOT NULL DEFAULT now(),
  updated_at  timestamptz NOT NULL DEFAULT now(),
  PRIMARY KEY (pool_id, host_id)
);
-- A host's name for a pool is its own: one attachment per host and name (a host's re-read lists its attachments).
CREATE UNIQUE INDEX pool_attachments_host_name ON pool_attachments (host_id, name);

-- Placement reads the attached hosts of a shared pool: an attachment's change is its pool's change.
CREATE FUNCTION pool_attachment_changed() RETURNS trigger LANGUAGE plpgsql AS $$
DECLARE
  subject text := CASE WHEN TG_OP = 'DELETE' THEN OLD.pool_id ELSE NEW.pool_id END;
BEGIN
  INSERT INTO placement_changes (kind, id, seq) VALUES ('pool', subject, nextval('placement_change_seq'))
    ON CONFLICT (kind, id) DO UPDATE SET seq = excluded.seq;
  PERFORM pg_notify('stowage_placement', 'pool:' || subject);
  RETURN NULL;
END $$;

CREATE TRIGGER pool_attachments_placement_changed AFTER INSERT OR DELETE ON pool_attachments
  FOR EACH ROW EXECUTE FUNCTION pool_attachment_changed();
CREATE TRIGGER pool_attachments_placement_updated AFTER UPDATE ON pool_attachments
  FOR EACH ROW WHEN (OLD.present IS DISTINCT FROM NEW.present OR OLD.healthy IS DISTINCT FROM NEW.healthy
    OR OLD.name IS DISTINCT FROM NEW.name)
  EXECUTE FUNCTION pool_attachment_changed();
