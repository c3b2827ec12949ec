-- The change feed of the controllers' live placement views (apps/controller/src/live-view.ts; docs/architecture.md,
-- "Placement from memory"). A trigger on pools and on the placement-relevant columns of hosts catches every
-- writer (inventory, the ledger, results, drain, cordon, host up/down, other controllers) in one place:
--   * placement_changes keeps one row per pool or host with the sequence number of its last change, polled by
--     `seq > last` where the database is embedded PGlite (one connection: transactions are serialised, so no
--     change commits behind one already seen);
--   * pg_notify('stowage_placement', 'pool:<id>' or 'host:<id>') for PostgreSQL, where transactions commit out
--     of sequence order: a notification is delivered at commit, and never for a transaction that rolled back.
CREATE SEQUENCE placement_change_seq;

CREATE TABLE placement_changes (
  kind  text NOT NULL CHECK (kind IN ('pool', 'host')),
  id    text NOT NULL,
  seq   int8 NOT NULL,
  PRIMARY KEY (kind, id)
);
CREATE INDEX placement_changes_seq ON placement_changes (seq);

CREATE FUNCTION placement_changed() RETURNS trigger LANGUAGE plpgsql AS $$
DECLARE
  subject text := CASE WHEN TG_OP = 'DELETE' THEN OLD.id ELSE NEW.id END;
BEGIN
  INSERT INTO placement_changes (kind, id, seq) VALUES (TG_ARGV[0], subject, nextval('placement_change_seq'))
    ON CONFLICT (kind, id) DO UPDATE SET seq = excluded.seq;
  PERFORM pg_notify('stowage_placement', TG_ARGV[0] || ':' || subject);
  RETURN NULL;
END $$;

CREATE TRIGGER pools_placement_changed AFTER INSERT OR UPDATE OR DELETE ON pools
  FOR EACH ROW EXECUTE FUNCTION placement_changed('pool');

-- Heartbeats touch hosts often; only what placement reads counts as a change.
CREATE TRIGGER hosts_placement_changed AFTER UPDATE ON hosts
  FOR EACH ROW WHEN (OLD.state IS DISTINCT FROM NEW.state OR OLD.schedulable IS DISTINCT FROM NEW.schedulable
    OR OLD.zone IS DISTINCT FROM NEW.zone OR OLD.numa_nodes IS DISTINCT FROM NEW.numa_nodes)
  EXECUTE FUNCTION placement_changed('host');
CREATE TRIGGER hosts_placement_added AFTER INSERT OR DELETE ON hosts
  FOR EACH ROW EXECUTE FUNCTION placement_changed('host');

-- A placement with anti-affinity loads the members of its own group only.
CREATE INDEX volumes_anti_affinity_group ON volumes (anti_affinity_group) WHERE anti_affinity_group <> '';

-- A re-read of a few pools counts their operations in flight (the pool-load scorer) without a scan.
CREATE INDEX operations_pool_in_flight ON operations (pool_id) WHERE state IN ('pending', 'sent');
