-- Per-pool placement policy, reported by the agent from its config.
ALTER TABLE pools ADD COLUMN reserved_percent double precision NOT NULL DEFAULT 0 CHECK (reserved_percent >= 0 AND reserved_percent < 100);
ALTER TABLE pools ADD COLUMN max_volumes integer NOT NULL DEFAULT 0 CHECK (max_volumes >= 0);
