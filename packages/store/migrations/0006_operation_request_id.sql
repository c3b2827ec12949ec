-- The caller's request id of the call that started an operation (resize, delete, revert, the snapshot calls),
-- so a retried call returns the operation it started instead of starting another one. Creates keep theirs on
-- the volume (volumes.request_id).
ALTER TABLE operations ADD COLUMN request_id text;
CREATE UNIQUE INDEX operations_request_id ON operations (request_id) WHERE request_id IS NOT NULL;
