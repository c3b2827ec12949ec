-- Findings become something an operator acts on (`stowctl finding list|quarantine|adopt`):
--   * what the agent reported of an orphan's artefact, so adopting it registers a volume of that size and format;
--   * a quarantine (who, when, why) that later inventories keep, even once the artefact is no longer seen;
--   * a sequence number, the order `ListFindings` pages by.
ALTER TABLE findings
  ADD COLUMN size_bytes        int8 NOT NULL DEFAULT 0 CHECK (size_bytes >= 0),
  ADD COLUMN format            text NOT NULL DEFAULT '',
  ADD COLUMN allocated_bytes   int8 NOT NULL DEFAULT 0 CHECK (allocated_bytes >= 0),
  ADD COLUMN path              text NOT NULL DEFAULT '',
  ADD COLUMN operation_id      text NOT NULL DEFAULT '',
  ADD COLUMN quarantined_at    timestamptz,
  ADD COLUMN quarantined_by    text NOT NULL DEFAULT '',
  ADD COLUMN quarantine_reason text NOT NULL DEFAULT '',
  ADD COLUMN seq               bigserial,
  -- Only orphans are quarantined: a missing volume has no artefact, a foreign one is never touched anyway.
  ADD CONSTRAINT findings_quarantine_orphans CHECK (quarantined_at IS NULL OR kind = 'orphan');
CREATE UNIQUE INDEX findings_seq ON findings (seq);
