-- Warden coordinator state. Everything here is durable: a restart loses nothing.

CREATE TABLE agents (
    name              TEXT PRIMARY KEY NOT NULL,
    version           TEXT NOT NULL,
    labels_json       TEXT NOT NULL,
    repository        TEXT NOT NULL,
    online            INTEGER NOT NULL DEFAULT 0,
    last_seen_unix_ms INTEGER NOT NULL,
    -- Incremented on every Hello; fences messages of an older session.
    generation        INTEGER NOT NULL DEFAULT 0
);

CREATE TABLE databases (
    agent       TEXT NOT NULL REFERENCES agents(name),
    name        TEXT NOT NULL,
    labels_json TEXT NOT NULL,
    -- 0 once the agent stopped reporting it; its history stays.
    present     INTEGER NOT NULL DEFAULT 1,
    PRIMARY KEY (agent, name)
);

CREATE TABLE orders (
    id                TEXT PRIMARY KEY NOT NULL,
    kind              TEXT NOT NULL,
    agent             TEXT NOT NULL,
    database          TEXT NOT NULL,
    spec_json         TEXT NOT NULL,
    state             TEXT NOT NULL,
    requested_by      TEXT NOT NULL,
    reason            TEXT NOT NULL,
    attempts          INTEGER NOT NULL DEFAULT 0,
    created_unix_ms   INTEGER NOT NULL,
    updated_unix_ms   INTEGER NOT NULL,
    started_unix_ms   INTEGER NOT NULL DEFAULT 0,
    finished_unix_ms  INTEGER NOT NULL DEFAULT 0,
    phase             TEXT NOT NULL DEFAULT '',
    progress_bytes    INTEGER NOT NULL DEFAULT 0,
    progress_rate     REAL NOT NULL DEFAULT 0,
    error             TEXT NOT NULL DEFAULT '',
    -- The agent's OrderResult, protobuf-encoded, as it reported it.
    result            BLOB
);
CREATE INDEX orders_by_agent_state ON orders (agent, state);
CREATE INDEX orders_by_database ON orders (agent, database, created_unix_ms);

CREATE TABLE artifacts (
    id               TEXT PRIMARY KEY NOT NULL,
    agent            TEXT NOT NULL,
    database         TEXT NOT NULL,
    order_id         TEXT NOT NULL,
    trigger          TEXT NOT NULL,
    state            TEXT NOT NULL,
    repository       TEXT NOT NULL,
    path             TEXT NOT NULL,
    sha256           TEXT NOT NULL,
    size_bytes       INTEGER NOT NULL,
    raw_bytes        INTEGER NOT NULL,
    server_version   TEXT NOT NULL,
    pg_dump_version  TEXT NOT NULL,
    created_unix_ms  INTEGER NOT NULL,
    verified         INTEGER NOT NULL DEFAULT 0,
    manifest_json    TEXT NOT NULL
);
CREATE INDEX artifacts_by_database ON artifacts (agent, database, created_unix_ms);

-- The tamper-evident audit log: each row's hash covers its fields and the previous hash.
CREATE TABLE audit_events (
    seq         INTEGER PRIMARY KEY NOT NULL,
    at_unix_ms  INTEGER NOT NULL,
    actor       TEXT NOT NULL,
    action      TEXT NOT NULL,
    target      TEXT NOT NULL,
    params_json TEXT NOT NULL,
    outcome     TEXT NOT NULL,
    prev_hash   TEXT NOT NULL,
    hash        TEXT NOT NULL
);
