-- Recovery assurance: restore drills and what they proved about artifacts.

-- One row per finished drill order: the RTO measurements.
CREATE TABLE drills (
    order_id          TEXT PRIMARY KEY NOT NULL,
    agent             TEXT NOT NULL,
    database          TEXT NOT NULL,
    artifact_id       TEXT NOT NULL,
    finished_unix_ms  INTEGER NOT NULL,
    passed            INTEGER NOT NULL,
    -- Time to a usable copy (every phase but dropping the scratch database).
    restore_ms        INTEGER NOT NULL,
    -- Uncompressed dump bytes restored, for throughput.
    raw_bytes         INTEGER NOT NULL,
    error             TEXT NOT NULL DEFAULT '',
    phases_json       TEXT NOT NULL DEFAULT '[]'
);
CREATE INDEX drills_by_database ON drills (agent, database, finished_unix_ms);

-- When a drill last restored the artifact successfully.
ALTER TABLE artifacts ADD COLUMN drilled_unix_ms INTEGER NOT NULL DEFAULT 0;
-- Why the artifact is `corrupt` (a drill or restore proved it unusable).
ALTER TABLE artifacts ADD COLUMN corrupt_reason TEXT NOT NULL DEFAULT '';
