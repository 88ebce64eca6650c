-- Safe migrations: the migration commands agents allow, and fleet rollouts.

-- Migration commands the agent's configuration allows for the database, as it reported them
-- in its last Hello: [{"name": "...", "argv": ["...", ...]}, ...].
ALTER TABLE databases ADD COLUMN migrate_commands_json TEXT NOT NULL DEFAULT '[]';

-- One migration rolled out to the databases a selector picks, wave after wave: a wave starts
-- once every database of the previous one succeeded; any failure halts the rollout.
CREATE TABLE rollouts (
    id                  TEXT PRIMARY KEY NOT NULL,
    -- running | succeeded | halted | cancelled
    state               TEXT NOT NULL,
    selector            TEXT NOT NULL,
    -- The wave sizes as given, cumulative: "1,25%,100%".
    waves               TEXT NOT NULL,
    requested_by        TEXT NOT NULL,
    reason              TEXT NOT NULL,
    -- Break glass for every order of the rollout (windows and the destructive guard).
    emergency           INTEGER NOT NULL DEFAULT 0,
    skip_safety_backup  INTEGER NOT NULL DEFAULT 0,
    created_unix_ms     INTEGER NOT NULL,
    updated_unix_ms     INTEGER NOT NULL,
    finished_unix_ms    INTEGER NOT NULL DEFAULT 0,
    -- The wave running now, from 1.
    current_wave        INTEGER NOT NULL DEFAULT 0,
    wave_count          INTEGER NOT NULL,
    -- Why it halted: "AGENT/DBNAME: what went wrong".
    error               TEXT NOT NULL DEFAULT '',
    -- The migration files without their SQL: [{"version", "name", "sha256"}, ...].
    migrations_json     TEXT NOT NULL DEFAULT '[]',
    -- Command mode: the command's name.
    command             TEXT NOT NULL DEFAULT ''
);
CREATE INDEX rollouts_by_created ON rollouts (created_unix_ms);

-- The databases of a rollout, in rollout order, each in its wave.
CREATE TABLE rollout_targets (
    rollout_id  TEXT NOT NULL REFERENCES rollouts(id),
    agent       TEXT NOT NULL,
    database    TEXT NOT NULL,
    position    INTEGER NOT NULL,
    wave        INTEGER NOT NULL,
    -- The order this database gets: an OrderSpec::Migrate with the rollout's id and the
    -- database's checks and guard.
    spec_json   TEXT NOT NULL,
    -- Set once its wave started.
    order_id    TEXT NOT NULL DEFAULT '',
    -- waiting (its wave has not started) | ordered | skipped (the rollout halted first)
    state       TEXT NOT NULL DEFAULT 'waiting',
    PRIMARY KEY (rollout_id, agent, database)
);
CREATE INDEX rollout_targets_by_position ON rollout_targets (rollout_id, position);

-- The pre-migration backup of a migration is found by the order that took it.
CREATE INDEX artifacts_by_order ON artifacts (order_id);
