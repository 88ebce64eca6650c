//! The `--json` documents have the shapes the README promises (field names, types, RFC 3339
//! UTC times, lowercase enums, null for absent values), and the list options filter.

use serde_json::Value;
use warden_tests::Fleet;

/// Asserts `doc` is an object with exactly `keys`.
fn assert_keys(what: &str, doc: &Value, keys: &[&str]) {
    let obj = doc
        .as_object()
        .unwrap_or_else(|| panic!("{what} is not an object: {doc:#}"));
    let mut have: Vec<&str> = obj.keys().map(String::as_str).collect();
    have.sort();
    let mut want = keys.to_vec();
    want.sort();
    assert_eq!(have, want, "{what} fields: {doc:#}");
}

/// Asserts an RFC 3339 time in UTC, like `2024-05-01T12:00:00.123Z`.
fn assert_time(what: &str, v: &Value) {
    let s = v
        .as_str()
        .unwrap_or_else(|| panic!("{what} is not a time string: {v}"));
    let b = s.as_bytes();
    let shaped = s.len() >= 20
        && b[4] == b'-'
        && b[7] == b'-'
        && b[10] == b'T'
        && b[13] == b':'
        && b[16] == b':'
        && (s.ends_with('Z') || s.ends_with("+00:00"));
    assert!(shaped, "{what} is not an RFC 3339 UTC time: {s:?}");
}

const ORDER_KEYS: [&str; 26] = [
    "id",
    "kind",
    "database",
    "state",
    "requested_by",
    "reason",
    "attempts",
    "created_at",
    "updated_at",
    "started_at",
    "finished_at",
    "phase",
    "progress_bytes",
    "progress_bytes_per_sec",
    "error",
    "artifact_id",
    "restore",
    "health",
    "prune",
    "emergency",
    "safety_backup_order_id",
    "held_until",
    "deadline",
    "artifact_corrupt",
    "drill",
    "migration",
];

fn check_finished_order(order: &Value, kind: &str) {
    assert_keys("order", order, &ORDER_KEYS);
    assert_eq!(order["kind"], kind, "{order:#}");
    assert_eq!(order["state"], "succeeded", "{order:#}");
    assert_eq!(order["database"], "a1/app", "{order:#}");
    assert!(
        order["attempts"].as_u64().is_some_and(|a| a >= 1),
        "{order:#}"
    );
    for t in ["created_at", "updated_at", "started_at", "finished_at"] {
        assert_time(&format!("order.{t}"), &order[t]);
    }
    assert!(
        order["error"].is_null(),
        "a succeeded order has no error: {order:#}"
    );
    assert!(order["requested_by"].is_string(), "{order:#}");
    assert_eq!(order["emergency"], false, "{order:#}");
    assert!(order["held_until"].is_null(), "{order:#}");
    if kind == "migrate" {
        // Destructive: it had a window to start in and took a safety backup first.
        assert_time("order.deadline", &order["deadline"]);
        assert!(order["safety_backup_order_id"].is_string(), "{order:#}");
    } else {
        for absent in ["deadline", "safety_backup_order_id"] {
            assert!(order[absent].is_null(), "{absent}: {order:#}");
        }
    }
}

#[test]
fn json_documents_have_the_documented_shapes() {
    let fleet = Fleet::builder("json").database("app").build();
    fleet.cluster(1).psql(
        "app",
        "CREATE TABLE t1 (id int PRIMARY KEY); CREATE TABLE t2 (v text); \
         INSERT INTO t1 SELECT generate_series(1, 10); INSERT INTO t2 VALUES ('x')",
    );
    let cli = fleet.cli();

    // agent
    let agents = cli.agents();
    assert_eq!(agents.len(), 1, "{agents:#?}");
    let agent = &agents[0];
    assert_keys(
        "agent",
        agent,
        &[
            "name",
            "version",
            "labels",
            "online",
            "last_seen",
            "database_count",
            "repository",
        ],
    );
    assert_eq!(agent["name"], "a1");
    assert_eq!(agent["online"], true);
    assert_eq!(agent["database_count"], 1);
    assert_eq!(agent["labels"]["env"], "test", "{agent:#}");
    assert_time("agent.last_seen", &agent["last_seen"]);
    assert!(
        agent["repository"]
            .as_str()
            .is_some_and(|r| r.starts_with("file://")),
        "{agent:#}"
    );

    // database, before any backup
    let dbs = cli.json(&["databases"]);
    let db = &dbs[0];
    assert_keys(
        "database",
        db,
        &[
            "id",
            "agent",
            "name",
            "labels",
            "agent_online",
            "last_artifact_id",
            "last_backup_at",
        ],
    );
    assert_eq!(db["id"], "a1/app");
    assert_eq!(db["agent"], "a1");
    assert_eq!(db["name"], "app");
    assert_eq!(db["labels"]["tier"], "test", "{db:#}");
    assert_eq!(db["agent_online"], true);
    assert!(db["last_artifact_id"].is_null(), "no backup yet: {db:#}");
    assert!(db["last_backup_at"].is_null(), "no backup yet: {db:#}");

    // backup order with a reason
    let out = cli.run(&["backup", "a1/app", "--reason", "shape check", "--wait"]);
    assert_eq!(out.code, 0, "{out}");
    let backup = out.json().clone();
    check_finished_order(&backup, "backup");
    assert_eq!(backup["reason"], "shape check");
    assert!(
        backup["restore"].is_null() && backup["health"].is_null(),
        "{backup:#}"
    );
    let artifact_id = backup["artifact_id"]
        .as_str()
        .expect("artifact_id")
        .to_owned();

    // health order
    let out = cli.run(&["health", "a1/app", "--wait"]);
    assert_eq!(out.code, 0, "{out}");
    let health_order = out.json().clone();
    check_finished_order(&health_order, "health");
    assert!(
        health_order["reason"].is_null(),
        "no reason given: {health_order:#}"
    );
    let health = &health_order["health"];
    assert_keys(
        "health",
        health,
        &[
            "connected",
            "latency_ms",
            "server_version",
            "database_size_bytes",
            "table_count",
            "connections_used",
            "connections_max",
            "in_recovery",
            "uptime_seconds",
            "replication_role",
            "replication_lag_ms",
            "oldest_transaction_seconds",
            "wraparound_age",
            "repository_free_bytes",
            "repository_total_bytes",
        ],
    );
    assert_eq!(health["connected"], true);
    assert_eq!(health["table_count"], 2, "{health:#}");
    // The test clusters run with max_connections=60.
    assert_eq!(health["connections_max"], 60, "{health:#}");
    assert!(
        health["connections_used"].as_u64().is_some_and(|n| n >= 1),
        "{health:#}"
    );
    assert_eq!(health["in_recovery"], false);
    assert!(
        health["server_version"]
            .as_str()
            .is_some_and(|v| v.starts_with(char::is_numeric)),
        "{health:#}"
    );
    assert!(
        health["database_size_bytes"]
            .as_u64()
            .is_some_and(|n| n > 1_000_000),
        "{health:#}"
    );

    // restore order
    let out = cli.run(&["restore", &artifact_id, "--new-name", "copy", "--wait"]);
    assert_eq!(out.code, 0, "{out}");
    let restore_order = out.json().clone();
    check_finished_order(&restore_order, "restore");
    let restore = &restore_order["restore"];
    assert_keys(
        "restore",
        restore,
        &["database", "tables_verified", "rows_verified", "phases"],
    );
    assert_eq!(restore["tables_verified"], 2, "{restore:#}");
    assert_eq!(restore["rows_verified"], 11, "{restore:#}");
    let phases = restore["phases"].as_array().expect("phases");
    assert!(!phases.is_empty(), "{restore:#}");
    for p in phases {
        assert_keys("restore phase", p, &["phase", "millis"]);
        assert!(p["phase"].is_string() && p["millis"].is_u64(), "{p:#}");
    }

    // artifact
    let artifacts = cli.artifacts(Some("a1/app"), false);
    assert_eq!(artifacts.len(), 1, "{artifacts:#?}");
    let a = &artifacts[0];
    assert_keys(
        "artifact",
        a,
        &[
            "id",
            "database",
            "state",
            "trigger",
            "order_id",
            "created_at",
            "size_bytes",
            "raw_bytes",
            "sha256",
            "server_version",
            "pg_dump_version",
            "path",
            "verified",
            "drilled_at",
            "corrupt_reason",
            "manifest",
        ],
    );
    assert_eq!(a["id"], artifact_id.as_str());
    assert_eq!(a["database"], "a1/app");
    assert_eq!(a["state"], "complete");
    assert_eq!(a["trigger"], "manual");
    assert_eq!(a["order_id"], backup["id"]);
    assert_time("artifact.created_at", &a["created_at"]);
    assert!(a["sha256"].as_str().is_some_and(|s| s.len() == 64), "{a:#}");
    assert!(a["verified"].is_boolean(), "{a:#}");
    assert!(a["size_bytes"].as_u64().unwrap() > 0 && a["raw_bytes"].as_u64().unwrap() > 0);
    assert_eq!(
        a["manifest"]["artifact_id"],
        artifact_id.as_str(),
        "manifest is parsed: {a:#}"
    );
    assert_eq!(a["manifest"]["dump"]["sha256"], a["sha256"], "{a:#}");

    // database, after the backup
    let db = &cli.json(&["databases", "--agent", "a1"])[0];
    assert_eq!(db["last_artifact_id"], artifact_id.as_str(), "{db:#}");
    assert_time("database.last_backup_at", &db["last_backup_at"]);

    // orders: newest first, filtered, limited
    let orders = cli.orders();
    let ids: Vec<&Value> = orders.iter().map(|o| &o["id"]).collect();
    assert_eq!(
        ids,
        vec![&restore_order["id"], &health_order["id"], &backup["id"]],
        "orders newest first"
    );
    for o in &orders {
        assert_keys("order in list", o, &ORDER_KEYS);
    }
    let one = cli.json(&["orders", "--database", "a1/app", "--limit", "1"]);
    assert_eq!(one.as_array().map(Vec::len), Some(1), "{one:#}");
    assert_eq!(one[0]["id"], restore_order["id"]);

    // audit events
    let events = cli.audit();
    assert!(events.len() >= 3, "{events:#?}");
    let mut prev_hash: Option<Value> = None;
    let mut prev_seq = 0;
    for e in &events {
        assert_keys(
            "audit event",
            e,
            &[
                "seq",
                "at",
                "actor",
                "action",
                "target",
                "params",
                "outcome",
                "prev_hash",
                "hash",
            ],
        );
        assert_time("audit.at", &e["at"]);
        let seq = e["seq"].as_u64().expect("seq");
        assert!(seq > prev_seq, "events in seq order: {events:#?}");
        prev_seq = seq;
        if let Some(prev) = &prev_hash {
            assert_eq!(
                &e["prev_hash"], prev,
                "the chain links each event to the one before"
            );
        }
        prev_hash = Some(e["hash"].clone());
    }
    assert!(
        events
            .iter()
            .any(|e| e["params"].to_string().contains("shape check")),
        "the backup's reason is in the audit log: {events:#?}"
    );
    let first_seq = events[0]["seq"].as_u64().unwrap();
    let after = cli.json(&["audit", "--after", &first_seq.to_string(), "--limit", "2"]);
    let after = after.as_array().expect("array");
    assert_eq!(after.len(), 2, "{after:#?}");
    assert_eq!(after[0], events[1]);
    assert_eq!(after[1], events[2]);

    // audit verify
    let verify = cli.json(&["audit", "verify"]);
    assert_keys(
        "audit verify",
        &verify,
        &["ok", "events_checked", "first_broken_seq", "problem"],
    );
    assert_eq!(verify["ok"], true);
    assert!(verify["events_checked"].as_u64().unwrap() >= events.len() as u64);
    assert!(
        verify["first_broken_seq"].is_null(),
        "absent values are null: {verify:#}"
    );
    assert!(
        verify["problem"].is_null(),
        "absent values are null: {verify:#}"
    );
}

/// Asserts every element of the list `doc[key]` has exactly `keys`; returns the list.
fn assert_list_of<'a>(what: &str, doc: &'a Value, key: &str, keys: &[&str]) -> &'a [Value] {
    let list = doc[key]
        .as_array()
        .unwrap_or_else(|| panic!("{what}.{key} is not a list: {doc:#}"));
    for item in list {
        assert_keys(&format!("{what}.{key}[]"), item, keys);
    }
    list
}

const APPLIED_KEYS: [&str; 5] = ["version", "name", "sha256", "applied_at", "duration_ms"];

#[test]
fn migration_documents_have_the_documented_shapes() {
    let fleet = Fleet::builder("json-migrate").database("app").build();
    fleet.open_maintenance_around_the_clock();
    let cli = fleet.cli();
    let dir = fleet.dir().join("migrations");
    std::fs::create_dir_all(&dir).expect("mkdir");
    std::fs::write(dir.join("0001_t.sql"), "CREATE TABLE t (id int);\n").expect("write");
    std::fs::write(dir.join("0002_u.sql"), "CREATE TABLE u (id int);\n").expect("write");
    let dir = dir.display().to_string();

    // migrate status
    let status = cli.json(&["migrate", "status", "a1/app", "--dir", &dir]);
    assert_keys(
        "migrate status",
        &status,
        &[
            "database", "order_id", "applied", "pending", "changed", "unknown",
        ],
    );
    assert_eq!(status["database"], "a1/app");
    let pending = assert_list_of("migrate status", &status, "pending", &["version", "name"]);
    assert_eq!(pending.len(), 2, "{status:#}");
    assert_eq!(pending[0]["version"], "0001");
    assert_eq!(pending[0]["name"], "t");

    // migrate order
    let out = cli.run(&[
        "migrate", "a1/app", "--dir", &dir, "--wait", "--reason", "shape",
    ]);
    assert_eq!(out.code, 0, "{out}");
    let order = out.json().clone();
    check_finished_order(&order, "migrate");
    let migration = &order["migration"];
    assert_keys(
        "migration",
        migration,
        &[
            "pre_migration_artifact_id",
            "applied",
            "already_applied",
            "pending",
            "changed",
            "unknown",
            "failed_version",
            "checks",
            "restored",
            "restore_command",
            "command_output",
            "phases",
        ],
    );
    let applied = assert_list_of("migration", migration, "applied", &APPLIED_KEYS);
    assert_eq!(applied.len(), 2, "{migration:#}");
    assert_time("migration.applied[].applied_at", &applied[0]["applied_at"]);
    assert!(applied[0]["duration_ms"].is_u64(), "{migration:#}");
    assert!(applied[0]["sha256"].as_str().is_some_and(|s| s.len() == 64));
    let checks = assert_list_of(
        "migration",
        migration,
        "checks",
        &["name", "passed", "error"],
    );
    assert_eq!(checks[0]["name"], "health", "{migration:#}");
    assert!(checks[0]["error"].is_null(), "{migration:#}");
    assert_list_of("migration", migration, "phases", &["phase", "millis"]);
    assert!(
        migration["pre_migration_artifact_id"].is_string(),
        "{migration:#}"
    );
    for absent in ["failed_version", "restore_command", "command_output"] {
        assert!(migration[absent].is_null(), "{absent}: {migration:#}");
    }
    assert_eq!(migration["restored"], false, "{migration:#}");

    // status after: applied elements
    let status = cli.json(&["migrate", "status", "a1/app", "--dir", &dir]);
    assert_eq!(
        assert_list_of("migrate status", &status, "applied", &APPLIED_KEYS).len(),
        2
    );

    // rollout
    let out = cli.run(&[
        "migrate",
        "--selector",
        "database=app",
        "--dir",
        &dir,
        "--waves",
        "100%",
        "--wait",
    ]);
    assert_eq!(out.code, 0, "{out}");
    let rollout = out.json().clone();
    assert_keys(
        "rollout",
        &rollout,
        &[
            "id",
            "state",
            "selector",
            "waves",
            "current_wave",
            "wave_count",
            "requested_by",
            "reason",
            "created_at",
            "finished_at",
            "error",
            "migrations",
            "command",
            "targets",
        ],
    );
    assert_eq!(rollout["state"], "succeeded", "{rollout:#}");
    assert_time("rollout.created_at", &rollout["created_at"]);
    assert_time("rollout.finished_at", &rollout["finished_at"]);
    assert!(
        rollout["reason"].is_null() && rollout["command"].is_null(),
        "{rollout:#}"
    );
    assert_list_of("rollout", &rollout, "migrations", &["version", "name"]);
    let targets = assert_list_of(
        "rollout",
        &rollout,
        "targets",
        &[
            "database",
            "wave",
            "state",
            "order_id",
            "pre_migration_artifact_id",
            "applied",
            "error",
        ],
    );
    assert_eq!(targets.len(), 1, "{rollout:#}");
    assert_eq!(targets[0]["state"], "succeeded", "{rollout:#}");
    assert_eq!(
        targets[0]["applied"],
        serde_json::json!([]),
        "all applied before: {rollout:#}"
    );
    let listed = cli.json(&["rollouts"]);
    assert_eq!(listed.as_array().map(Vec::len), Some(1), "{listed:#}");
    assert_eq!(listed[0]["id"], rollout["id"]);
}
