-- The change sequence that watches (WatchVolumes, WatchOperations) read: every insert or update of a volume or an
-- operation stamps the row with the id of the transaction that wrote it. A watch keeps the snapshot of its
-- previous read and asks for the rows whose writer that snapshot did not see (`pg_visible_in_snapshot`), at or
-- after its xmin: a transaction that commits late is seen when it commits, however old its timestamps, and a
-- change already delivered is not delivered again (docs/architecture.md, "Watches"). xid8 does not wrap around.
-- Rows written before this migration keep NULL: every snapshot sees them, so no watch asks for them.
ALTER TABLE volumes ADD COLUMN change_xid xid8;
ALTER TABLE operations ADD COLUMN change_xid xid8;

CREATE FUNCTION stamp_change_xid() RETURNS trigger LANGUAGE plpgsql AS $$
BEGIN
  NEW.change_xid := pg_current_xact_id();
  RETURN NEW;
END $$;

CREATE TRIGGER volumes_change_xid BEFORE INSERT OR UPDATE ON volumes
  FOR EACH ROW EXECUTE FUNCTION stamp_change_xid();
CREATE TRIGGER operations_change_xid BEFORE INSERT OR UPDATE ON operations
  FOR EACH ROW EXECUTE FUNCTION stamp_change_xid();

CREATE INDEX volumes_change_xid ON volumes (change_xid);
CREATE INDEX operations_change_xid ON operations (change_xid);
