-- Fleet policy: windows, schedules, retention and limits.

-- Every applied version of the policy document; the newest is in force.
CREATE TABLE policy_versions (
    version     INTEGER PRIMARY KEY NOT NULL,
    at_unix_ms  INTEGER NOT NULL,
    actor       TEXT NOT NULL,
    toml        TEXT NOT NULL
);

-- The last slot each schedule fired, so a restart fires a missed run once, not per slot.
CREATE TABLE schedule_state (
    schedule            TEXT PRIMARY KEY NOT NULL,
    last_slot_unix_ms   INTEGER NOT NULL
);

-- Break glass: started without waiting for a maintenance window.
ALTER TABLE orders ADD COLUMN emergency INTEGER NOT NULL DEFAULT 0;
ALTER TABLE orders ADD COLUMN skip_safety_backup INTEGER NOT NULL DEFAULT 0;
-- The backup a destructive order takes of its target first.
ALTER TABLE orders ADD COLUMN safety_order_id TEXT NOT NULL DEFAULT '';
-- Scheduled jitter: not dispatched before this instant.
ALTER TABLE orders ADD COLUMN not_before_unix_ms INTEGER NOT NULL DEFAULT 0;
-- While held: when it is expected to be able to start (0 = when another order ends).
ALTER TABLE orders ADD COLUMN held_until_unix_ms INTEGER NOT NULL DEFAULT 0;
-- A destructive order not started by then expires: its maintenance window closed.
ALTER TABLE orders ADD COLUMN deadline_unix_ms INTEGER NOT NULL DEFAULT 0;
CREATE INDEX orders_by_state ON orders (state, created_unix_ms);

-- Retention: why and when an artifact expired, and the order removing its files.
ALTER TABLE artifacts ADD COLUMN expired_unix_ms INTEGER NOT NULL DEFAULT 0;
ALTER TABLE artifacts ADD COLUMN expire_reason TEXT NOT NULL DEFAULT '';
ALTER TABLE artifacts ADD COLUMN prune_order_id TEXT NOT NULL DEFAULT '';
CREATE INDEX artifacts_by_state ON artifacts (state);
