-- A volume being rolled back to a snapshot has its own state (it was shown as resizing before).
ALTER TABLE volumes DROP CONSTRAINT volumes_state_check;
ALTER TABLE volumes ADD CONSTRAINT volumes_state_check
  CHECK (state IN ('creating', 'available', 'resizing', 'reverting', 'deleting', 'deleted', 'error'));
