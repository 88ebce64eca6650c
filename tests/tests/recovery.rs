//! Recovery assurance end to end (real PostgreSQL, agents, coordinator and CLI): a restore
//! drill of Chinook passes, times every phase, marks its artifact verified, leaves no scratch
//! database and does not touch the source; drill checks must return true and a failing one is
//! named; a drill of a corrupted artifact fails and marks it corrupt; the RTO report finds
//! RPO and RTO breaches, worst first, and exits 2 on a breach; health reports turn a stopped
//! server `down` within two intervals and a webhook hears about it (and about the recovery);
//! and `/metrics` serves the fleet's series in the Prometheus text format.

use std::collections::{BTreeMap, BTreeSet};
use std::time::{Duration, Instant};

use serde_json::Value;
use warden_tests::fixtures::{chinook_sql, load_chinook, load_rich_fixture, say_skipped};
use warden_tests::http::{WebhookReceiver, http_get, http_get_when_up};
use warden_tests::process::toml_str;
use warden_tests::repo::{DUMP_FILE, flip_middle_byte};
use warden_tests::{CliOutput, DbSnapshot, Fleet, PgCluster, assert_same_data, heavy_test_lock};

/// The phases a drill times, in the order it runs them.
const DRILL_PHASES: [&str; 7] = [
    "fetch",
    "verify_checksum",
    "decompress",
    "pg_restore",
    "verify_rows",
    "checks",
    "cleanup",
];

/// The health interval of the health test: agents report every second.
const HEALTH_INTERVAL: Duration = Duration::from_secs(1);

/// How long the fleet may take to show a change of health that the issue does not time
/// (e.g. a restarted server becoming healthy again).
const HEALTH_TIMEOUT: Duration = Duration::from_secs(60);

/// How long a webhook may take to arrive after the status shows the change it announces.
const WEBHOOK_TIMEOUT: Duration = Duration::from_secs(20);

// ---- helpers --------------------------------------------------------------------------------

/// The scratch databases of drills (`warden_drill_%`) on `cluster`, sorted.
fn scratch_databases(cluster: &PgCluster) -> Vec<String> {
    cluster
        .psql(
            "postgres",
            "SELECT datname FROM pg_database WHERE datname LIKE 'warden\\_drill\\_%' \
             ORDER BY datname COLLATE \"C\"",
        )
        .lines()
        .map(str::to_owned)
        .collect()
}

/// Panics when a drill left a scratch database on `cluster`.
fn assert_no_scratch_database(fleet: &Fleet, cluster: &PgCluster, after: &str) {
    let left = scratch_databases(cluster);
    assert!(
        left.is_empty(),
        "scratch databases left behind after {after}: {left:?}\n{}",
        fleet.logs()
    );
}

/// `warden drill DB --wait ARGS…`: waits until the drill has ended.
fn drill(fleet: &Fleet, database: &str, args: &[&str]) -> CliOutput {
    let mut all = vec!["drill", database, "--wait"];
    all.extend_from_slice(args);
    fleet.cli().run(&all)
}

/// A drill that must pass: exit 0, a succeeded drill order whose outcome says it passed.
/// Returns the order.
fn drill_ok(fleet: &Fleet, database: &str, args: &[&str]) -> Value {
    let out = drill(fleet, database, args);
    assert_eq!(
        out.code,
        0,
        "drill of {database} failed: {out}\n{}",
        fleet.logs()
    );
    let order = out.json().clone();
    assert_eq!(order["kind"], "drill", "{order:#}");
    assert_eq!(order["state"], "succeeded", "{order:#}");
    assert_eq!(order["database"], database, "{order:#}");
    assert_eq!(order["drill"]["passed"], true, "{order:#}");
    assert_eq!(order["artifact_corrupt"], false, "{order:#}");
    order
}

/// A drill that must fail: exit 1 and a failed drill order. Returns the order.
fn drill_fails(fleet: &Fleet, database: &str, args: &[&str]) -> Value {
    let out = drill(fleet, database, args);
    assert_eq!(
        out.code,
        1,
        "a failing drill of {database} must exit 1: {out}\n{}",
        fleet.logs()
    );
    let order = out.json().clone();
    assert_eq!(order["kind"], "drill", "{order:#}");
    assert_eq!(order["state"], "failed", "{order:#}");
    order
}

/// Returns the `artifact_id` of a succeeded backup order.
fn artifact_id_of(backup: &Value) -> String {
    backup["artifact_id"]
        .as_str()
        .unwrap_or_else(|| panic!("backup without artifact_id: {backup:#}"))
        .to_owned()
}

/// Returns artifact `id` as `warden artifacts --all` lists it.
fn artifact(fleet: &Fleet, id: &str) -> Value {
    let all = fleet.cli().artifacts(None, true);
    all.iter()
        .find(|a| a["id"] == id)
        .cloned()
        .unwrap_or_else(|| {
            panic!("artifact {id} is not listed by `warden artifacts --all`: {all:#?}")
        })
}

/// `warden apply -f` of `text`, which must succeed.
fn apply(fleet: &Fleet, text: &str) {
    let path = fleet.dir().join("fleet.toml");
    std::fs::write(&path, text).unwrap_or_else(|e| panic!("write {}: {e}", path.display()));
    let applied = fleet
        .cli()
        .json(&["apply", "-f", &path.display().to_string()]);
    assert_eq!(applied["applied"], true, "apply of\n{text}\n{applied:#}");
}

/// The number of tables and rows the manifest of `artifact` records.
fn manifest_totals(artifact: &Value) -> (u64, u64) {
    let tables = artifact["manifest"]["tables"]
        .as_array()
        .unwrap_or_else(|| panic!("artifact without manifest tables: {artifact:#}"));
    let rows = tables
        .iter()
        .map(|t| t["rows"].as_u64().expect("manifest rows"))
        .sum();
    (tables.len() as u64, rows)
}

/// The audit events `action` whose parameters name `artifact_id`.
fn artifact_events(fleet: &Fleet, action: &str, artifact_id: &str) -> Vec<Value> {
    fleet
        .cli()
        .audit()
        .into_iter()
        .filter(|e| e["action"] == action && e["params"]["artifact_id"] == artifact_id)
        .collect()
}

/// Whether `name` is `warden_drill_<8 hex>_<12 hex>`.
fn is_scratch_name(name: &str) -> bool {
    let hex = |s: &str, n: usize| {
        s.len() == n
            && s.bytes()
                .all(|b| b.is_ascii_digit() || (b'a'..=b'f').contains(&b))
    };
    name.strip_prefix("warden_drill_")
        .and_then(|rest| rest.split_once('_'))
        .is_some_and(|(agent, artifact)| hex(agent, 8) && hex(artifact, 12))
}

/// Checks what a passing drill reports: every phase timed once, a restore time above zero
/// that is the sum of every phase but cleanup, the manifest's tables and rows verified, and
/// a scratch database named as documented.
fn assert_drill_outcome(order: &Value, artifact: &Value) {
    let drill = &order["drill"];
    assert_eq!(drill["artifact_id"], artifact["id"], "{order:#}");
    let phases: Vec<(&str, u64)> = drill["phases"]
        .as_array()
        .unwrap_or_else(|| panic!("drill without phases: {order:#}"))
        .iter()
        .map(|p| {
            (
                p["phase"].as_str().expect("phase name"),
                p["millis"].as_u64().expect("phase millis"),
            )
        })
        .collect();
    for name in DRILL_PHASES {
        let timed = phases.iter().filter(|(p, _)| *p == name).count();
        assert_eq!(
            timed, 1,
            "phase {name} should be timed exactly once; phases: {phases:?}"
        );
    }
    let restore_millis = drill["restore_millis"]
        .as_u64()
        .unwrap_or_else(|| panic!("drill without restore_millis: {order:#}"));
    assert!(restore_millis > 0, "the restore took no time? {order:#}");
    let but_cleanup: u64 = phases
        .iter()
        .filter(|(p, _)| *p != "cleanup")
        .map(|(_, ms)| ms)
        .sum();
    assert_eq!(
        restore_millis, but_cleanup,
        "restore_millis is every phase but cleanup: {phases:?}"
    );

    let (tables, rows) = manifest_totals(artifact);
    assert!(tables > 0 && rows > 0, "an empty artifact? {artifact:#}");
    assert_eq!(drill["tables_verified"], tables, "{order:#}");
    assert_eq!(drill["rows_verified"], rows, "{order:#}");

    let scratch = drill["scratch_database"]
        .as_str()
        .unwrap_or_else(|| panic!("drill without scratch_database: {order:#}"));
    let scratch = scratch.rsplit('/').next().unwrap_or(scratch);
    assert!(
        is_scratch_name(scratch),
        "scratch database {scratch:?} is not warden_drill_<8 hex>_<12 hex>"
    );
}

// ---- 1. drills ------------------------------------------------------------------------------

#[test]
fn drill_of_chinook_passes_times_every_phase_and_leaves_nothing_behind() {
    let chinook = chinook_sql().is_some();
    let _heavy = chinook.then(heavy_test_lock);
    let builder = Fleet::builder("drill-chinook");
    let (fleet, db) = if chinook {
        let fleet = builder
            .database("chinook")
            .cluster_setup(|cluster| {
                assert!(load_chinook(cluster), "chinook dataset vanished");
            })
            .build();
        (fleet, "chinook")
    } else {
        say_skipped(
            "../shared/datasets not present: the drill runs on the generated rich fixture instead of Chinook",
        );
        let fleet = builder.database("app").build();
        load_rich_fixture(fleet.cluster(1), "app");
        (fleet, "app")
    };
    let cluster = fleet.cluster(1);
    let database = format!("a1/{db}");
    let source = DbSnapshot::take(cluster, db);
    if chinook {
        assert!(
            source.total_rows() > 10_000,
            "chinook loaded: {} rows",
            source.total_rows()
        );
    }

    let artifact_id = artifact_id_of(&fleet.cli().backup_ok(&database));
    let before = artifact(&fleet, &artifact_id);
    assert_eq!(
        before["verified"], false,
        "a plain backup is not verified until a drill restores it: {before:#}"
    );
    assert_eq!(before["drilled_at"], Value::Null, "{before:#}");
    let databases_before = cluster.databases();

    // Without --artifact, the drill takes the newest complete backup.
    let order = drill_ok(&fleet, &database, &[]);
    let after = artifact(&fleet, &artifact_id);
    assert_drill_outcome(&order, &after);
    assert_eq!(
        order["drill"]["checks"],
        serde_json::json!([]),
        "no checks in the policy: {order:#}"
    );

    // The artifact is verified by the drill, and the audit log says so.
    assert_eq!(after["state"], "complete", "{after:#}");
    assert_eq!(
        after["verified"], true,
        "a passing drill verifies: {after:#}"
    );
    assert!(after["drilled_at"].is_string(), "drilled_at: {after:#}");
    assert_eq!(
        artifact_events(&fleet, "artifact.verified", &artifact_id).len(),
        1,
        "one artifact.verified event for {artifact_id}"
    );

    // Nothing stays behind, and the source was only read.
    assert_no_scratch_database(&fleet, cluster, "a passing drill");
    assert_eq!(
        cluster.databases(),
        databases_before,
        "the drill left the server's databases changed"
    );
    assert_same_data(&source, &DbSnapshot::take(cluster, db));
}

#[test]
fn drill_checks_must_return_true_and_a_failing_one_is_named() {
    let fleet = Fleet::builder("drill-checks").database("app").build();
    let cluster = fleet.cluster(1);
    load_rich_fixture(cluster, "app");
    let source = DbSnapshot::take(cluster, "app");
    let artifact_id = artifact_id_of(&fleet.cli().backup_ok("a1/app"));

    apply(
        &fleet,
        r#"
[[checks]]
name = "customers-all-there"
selector = "database=app"
sql = "select count(*) = 3000 from customers"
"#,
    );
    let passed = drill_ok(&fleet, "a1/app", &["--artifact", &artifact_id]);
    assert_drill_outcome(&passed, &artifact(&fleet, &artifact_id));
    assert_eq!(
        passed["drill"]["checks"],
        serde_json::json!([{"name": "customers-all-there", "passed": true, "error": null}]),
        "{passed:#}"
    );
    assert_no_scratch_database(&fleet, cluster, "a drill whose check passed");

    apply(
        &fleet,
        r#"
[[checks]]
name = "customers-all-there"
selector = "database=app"
sql = "select count(*) = 3000 from customers"

[[checks]]
name = "no-orders-at-all"
selector = ""
sql = "select count(*) = 0 from orders"
"#,
    );
    let failed = drill_fails(&fleet, "a1/app", &["--artifact", &artifact_id]);
    let error = failed["error"].as_str().unwrap_or_default();
    assert!(
        error.contains("no-orders-at-all"),
        "the error should name the failing check: {failed:#}"
    );
    assert!(
        !error.contains("customers-all-there"),
        "the error should name only the failing check: {failed:#}"
    );
    let checks = failed["drill"]["checks"]
        .as_array()
        .unwrap_or_else(|| panic!("a failed check still reports every check: {failed:#}"));
    let by_name: BTreeMap<&str, &Value> = checks
        .iter()
        .map(|c| (c["name"].as_str().expect("check name"), c))
        .collect();
    assert_eq!(by_name.len(), 2, "{failed:#}");
    assert_eq!(by_name["customers-all-there"]["passed"], true, "{failed:#}");
    assert_eq!(by_name["no-orders-at-all"]["passed"], false, "{failed:#}");
    assert!(
        by_name["no-orders-at-all"]["error"]
            .as_str()
            .is_some_and(|e| e.contains("false")),
        "the check's error should say it returned false: {failed:#}"
    );
    assert_eq!(failed["drill"]["passed"], false, "{failed:#}");
    assert_no_scratch_database(&fleet, cluster, "a drill whose check failed");

    // A failing check is not a corrupt artifact.
    assert_eq!(
        failed["artifact_corrupt"], false,
        "a failing check proves nothing about the artifact's bytes: {failed:#}"
    );
    let after = artifact(&fleet, &artifact_id);
    assert_eq!(after["state"], "complete", "{after:#}");
    assert_same_data(&source, &DbSnapshot::take(cluster, "app"));
}

#[test]
fn drill_of_corrupted_artifact_fails_and_marks_it_corrupt() {
    let fleet = Fleet::builder("drill-corrupt").database("app").build();
    let cluster = fleet.cluster(1);
    load_rich_fixture(cluster, "app");
    let source = DbSnapshot::take(cluster, "app");
    let artifact_id = artifact_id_of(&fleet.cli().backup_ok("a1/app"));
    let dump = fleet.artifact_dir("a1", &artifact_id).join(DUMP_FILE);
    flip_middle_byte(&dump);
    let databases_before = cluster.databases();

    let order = drill_fails(&fleet, "a1/app", &["--artifact", &artifact_id]);
    assert_eq!(
        order["artifact_corrupt"], true,
        "a checksum mismatch proves the artifact corrupt: {order:#}"
    );
    let error = order["error"].as_str().unwrap_or_default().to_lowercase();
    assert!(
        ["checksum", "corrupt", "sha256", "sha-256"]
            .iter()
            .any(|w| error.contains(w)),
        "the error should say the artifact is corrupt (checksum mismatch): {order:#}"
    );

    let marked = artifact(&fleet, &artifact_id);
    assert_eq!(marked["state"], "corrupt", "{marked:#}");
    assert_eq!(marked["verified"], false, "{marked:#}");
    assert!(
        marked["corrupt_reason"]
            .as_str()
            .is_some_and(|r| !r.trim().is_empty()),
        "a corrupt artifact says why: {marked:#}"
    );
    let events = artifact_events(&fleet, "artifact.corrupt", &artifact_id);
    assert_eq!(
        events.len(),
        1,
        "one artifact.corrupt audit event for {artifact_id}: {events:#?}"
    );
    assert_eq!(events[0]["target"], "a1/app", "{:#}", events[0]);
    assert_eq!(
        events[0]["params"]["order_id"], order["id"],
        "{:#}",
        events[0]
    );
    assert!(
        artifact_events(&fleet, "artifact.verified", &artifact_id).is_empty(),
        "a corrupt artifact was audited as verified"
    );
    let verify = fleet.cli().json(&["audit", "verify"]);
    assert_eq!(
        verify["ok"], true,
        "audit chain after the drill: {verify:#}"
    );

    assert_no_scratch_database(&fleet, cluster, "a drill of a corrupt artifact");
    assert_eq!(
        cluster.databases(),
        databases_before,
        "the failed drill left the server's databases changed"
    );
    assert_same_data(&source, &DbSnapshot::take(cluster, "app"));
}

// ---- 2. the RTO report ----------------------------------------------------------------------

/// The rows of `warden rto --json`, by database.
fn rto_rows(out: &CliOutput) -> BTreeMap<String, Value> {
    out.json()["databases"]
        .as_array()
        .unwrap_or_else(|| panic!("rto report without databases: {out}"))
        .iter()
        .map(|row| {
            (
                row["database"].as_str().expect("database").to_owned(),
                row.clone(),
            )
        })
        .collect()
}

/// The rank of an RTO status, worst first.
fn status_rank(status: &str) -> usize {
    ["breach", "at_risk", "unknown", "ok"]
        .iter()
        .position(|s| *s == status)
        .unwrap_or_else(|| panic!("unknown RTO status {status:?}"))
}

#[test]
fn rto_report_finds_rpo_and_rto_breaches_worst_first() {
    let fleet = Fleet::builder("rto-report")
        .database("fine")
        .database("stale")
        .database("slow")
        .build();
    let cluster = fleet.cluster(1);
    for db in ["fine", "stale", "slow"] {
        cluster.psql(
            db,
            "CREATE TABLE t (id int PRIMARY KEY, v text); \
             INSERT INTO t SELECT g, md5(g::text) FROM generate_series(1, 1000) g",
        );
    }
    const GENEROUS: &str = r#"
default_tier = "generous"

[[tiers]]
name = "generous"
rto = "30m"
rpo = "24h"
"#;
    apply(&fleet, GENEROUS);

    // (c) A fresh backup and a fast passing drill under generous targets: ok, and `rto`
    // exits 0 when every database is ok.
    let mut artifacts = BTreeMap::new();
    let mut drills = BTreeMap::new();
    for db in ["fine", "stale", "slow"] {
        let database = format!("a1/{db}");
        artifacts.insert(db, artifact_id_of(&fleet.cli().backup_ok(&database)));
        drills.insert(db, drill_ok(&fleet, &database, &[]));
    }
    let out = fleet.cli().run(&["rto"]);
    assert_eq!(out.code, 0, "no database breaches its targets: {out}");
    let rows = rto_rows(&out);
    assert_eq!(
        rows.keys().map(String::as_str).collect::<Vec<_>>(),
        ["a1/fine", "a1/slow", "a1/stale"],
        "{out}"
    );
    for (db, row) in &rows {
        let name = db.strip_prefix("a1/").unwrap();
        assert_eq!(row["status"], "ok", "{row:#}");
        assert_eq!(row["reasons"], serde_json::json!([]), "{row:#}");
        assert_eq!(row["tier"], "generous", "{row:#}");
        assert_eq!(row["rto_ms"], 30 * 60 * 1000, "{row:#}");
        assert_eq!(row["rpo_ms"], 24 * 3600 * 1000, "{row:#}");
        assert_eq!(row["last_drill_passed"], true, "{row:#}");
        assert_eq!(
            row["last_drill_artifact_id"],
            artifacts[name].as_str(),
            "{row:#}"
        );
        assert_eq!(
            row["last_drill_ms"], drills[name]["drill"]["restore_millis"],
            "the report's drill time is the drill's restore time: {row:#}"
        );
        assert!(row["newest_backup_at"].is_string(), "{row:#}");
    }

    // Tighten the targets of two databases: `stale` may lose 2s of data, `slow` must be
    // restored within 1ms.
    apply(
        &fleet,
        &format!(
            r#"{GENEROUS}
[[tiers]]
name = "tight-rpo"
selector = "database=stale"
rto = "30m"
rpo = "2s"

[[tiers]]
name = "tight-rto"
selector = "database=slow"
rto = "1ms"
rpo = "24h"
"#
        ),
    );

    // (a) Once the newest backup of `stale` is older than 2s, it breaches its RPO.
    let deadline = Instant::now() + Duration::from_secs(60);
    let out = loop {
        let out = fleet.cli().run(&["rto"]);
        if out.code == 2
            && out.json.is_some()
            && rto_rows(&out)
                .get("a1/stale")
                .is_some_and(|row| row["status"] == "breach")
        {
            break out;
        }
        assert!(
            Instant::now() < deadline,
            "a1/stale did not breach its 2s RPO within 60s; last report: {out}"
        );
        std::thread::sleep(Duration::from_millis(250));
    };
    let rows = rto_rows(&out);
    let stale = &rows["a1/stale"];
    assert_eq!(stale["tier"], "tight-rpo", "{stale:#}");
    assert_eq!(stale["rpo_ms"], 2000, "{stale:#}");
    assert!(
        stale["newest_backup_age_ms"]
            .as_u64()
            .is_some_and(|age| age > 2000),
        "{stale:#}"
    );
    let reasons = stale["reasons"].to_string().to_lowercase();
    assert!(
        reasons.contains("backup") && reasons.contains("rpo"),
        "the reason should name the old backup and the RPO: {stale:#}"
    );

    // (b) The drill of `slow` took longer than its 1ms RTO.
    let slow = &rows["a1/slow"];
    assert_eq!(slow["status"], "breach", "{slow:#}");
    assert_eq!(slow["tier"], "tight-rto", "{slow:#}");
    assert_eq!(slow["rto_ms"], 1, "{slow:#}");
    assert_eq!(slow["last_drill_passed"], true, "{slow:#}");
    assert!(
        slow["last_drill_ms"].as_u64().is_some_and(|ms| ms > 1),
        "{slow:#}"
    );
    let reasons = slow["reasons"].to_string().to_lowercase();
    assert!(
        reasons.contains("drill") && reasons.contains("rto"),
        "the reason should name the drill and the RTO: {slow:#}"
    );

    // (c) `fine` is still ok; worst first: both breaches before it.
    let fine = &rows["a1/fine"];
    assert_eq!(fine["status"], "ok", "{fine:#}");
    assert_eq!(fine["reasons"], serde_json::json!([]), "{fine:#}");
    let order: Vec<(String, String)> = out.json()["databases"]
        .as_array()
        .unwrap()
        .iter()
        .map(|r| {
            (
                r["database"].as_str().unwrap().to_owned(),
                r["status"].as_str().unwrap().to_owned(),
            )
        })
        .collect();
    assert!(
        order
            .windows(2)
            .all(|w| status_rank(&w[0].1) <= status_rank(&w[1].1)),
        "rows are not worst first: {order:?}"
    );
    assert_eq!(
        order.last().map(|(db, _)| db.as_str()),
        Some("a1/fine"),
        "the ok database comes last: {order:?}"
    );

    // The fleet status carries the same verdicts.
    let status = fleet.cli().json(&["status"]);
    let rto_of = |db: &str| {
        status["databases"]
            .as_array()
            .expect("status databases")
            .iter()
            .find(|d| d["database"] == db)
            .map(|d| d["rto_status"].clone())
            .unwrap_or_else(|| panic!("{db} not in `warden status`: {status:#}"))
    };
    assert_eq!(rto_of("a1/stale"), "breach", "{status:#}");
    assert_eq!(rto_of("a1/slow"), "breach", "{status:#}");
    assert_eq!(rto_of("a1/fine"), "ok", "{status:#}");
}

// ---- 3. health and alerts -------------------------------------------------------------------

/// The health of `database` in `warden status --json`, when the call succeeds and lists it.
fn health_of(fleet: &Fleet, database: &str) -> Option<(String, Value)> {
    let out = fleet.cli().run(&["status"]);
    if out.code != 0 {
        return None;
    }
    let entry = out.json.as_ref()?["databases"]
        .as_array()?
        .iter()
        .find(|d| d["database"] == database)?
        .clone();
    Some((entry["health"].as_str()?.to_owned(), entry))
}

/// Polls `warden status` until `database` has health `want`; returns when it was seen, and
/// the status entry. Panics after `timeout`.
fn wait_health(fleet: &Fleet, database: &str, want: &str, timeout: Duration) -> (Instant, Value) {
    let deadline = Instant::now() + timeout;
    let mut last = None;
    loop {
        if let Some((health, entry)) = health_of(fleet, database) {
            if health == want {
                return (Instant::now(), entry);
            }
            last = Some(entry);
        }
        if Instant::now() >= deadline {
            panic!(
                "{database} not {want} within {timeout:?}; last status entry: {}\n{}",
                last.map_or_else(|| "(none)".to_owned(), |e| format!("{e:#}")),
                fleet.logs()
            );
        }
        std::thread::sleep(Duration::from_millis(100));
    }
}

/// Waits for a webhook `event` whose text names `database`; returns its JSON document.
fn wait_hook(fleet: &Fleet, hooks: &WebhookReceiver, event: &str, database: &str) -> Value {
    let deadline = Instant::now() + WEBHOOK_TIMEOUT;
    loop {
        if let Some(hook) = hooks.events(event).into_iter().find(|h| {
            h.json["text"]
                .as_str()
                .is_some_and(|t| t.contains(database))
        }) {
            assert_eq!(hook.method, "POST", "webhooks are POSTed: {hook:#?}");
            assert!(
                hook.content_type
                    .as_deref()
                    .is_some_and(|t| t.starts_with("application/json")),
                "webhooks are JSON: {hook:#?}"
            );
            let alert = hook.json;
            assert_eq!(alert["subject"], database, "{alert:#}");
            assert!(
                alert["at_unix_ms"].as_i64().is_some_and(|t| t > 0),
                "{alert:#}"
            );
            assert!(alert["details"].is_object(), "{alert:#}");
            return alert;
        }
        if Instant::now() >= deadline {
            panic!(
                "no {event} webhook naming {database} within {WEBHOOK_TIMEOUT:?}; {}\n{}",
                hooks.describe(),
                fleet.logs()
            );
        }
        std::thread::sleep(Duration::from_millis(100));
    }
}

/// A repository directory on tmpfs (`/dev/shm`), when there is one. Agents report the free
/// space of the repository's file system with each database's health, and a disk more than
/// 90% full makes every database `degraded` instead of `healthy`; test machines' disks often
/// are that full.
fn roomy_repository() -> Option<tempfile::TempDir> {
    let shm = std::path::Path::new("/dev/shm");
    if !shm.is_dir() {
        return None;
    }
    tempfile::Builder::new()
        .prefix("warden-recovery-repo-")
        .tempdir_in(shm)
        .ok()
}

#[test]
fn health_turns_down_within_two_intervals_and_webhooks_hear_every_alert() {
    // The one timing the issue demands is tight: keep the heavy tests (Chinook, large
    // tables) from loading the machine meanwhile.
    let _heavy = heavy_test_lock();
    let hooks = WebhookReceiver::start();
    let interval = format!("{}ms", HEALTH_INTERVAL.as_millis());
    // Declared before the fleet, so that it outlives the agents.
    let roomy = roomy_repository();
    let mut builder = Fleet::builder("health-down");
    if let Some(repo) = &roomy {
        builder = builder.repository(repo.path());
    }
    let mut fleet = builder
        .database("app")
        .coordinator_args(&["--health-interval", &interval])
        .coordinator_config(&format!("[[webhooks]]\nurl = {}\n", toml_str(&hooks.url())))
        .build();
    let (_, healthy) = wait_health(&fleet, "a1/app", "healthy", HEALTH_TIMEOUT);
    assert_eq!(healthy["agent_online"], true, "{healthy:#}");
    assert_eq!(healthy["report"]["connected"], true, "{healthy:#}");

    // Stop the server: within two health intervals (and a little slack for a report in
    // flight and the CLI's own round trip) the database is down. The clock starts when the
    // shutdown starts, not when pg_ctl returns.
    let stopped = Instant::now();
    fleet.clusters[0].stop();
    let allowed = HEALTH_INTERVAL * 2 + Duration::from_millis(1500);
    let (seen, down) = wait_health(&fleet, "a1/app", "down", HEALTH_TIMEOUT);
    let took = seen - stopped;
    eprintln!("a1/app turned down {took:?} after its server stopped");
    assert!(
        took <= allowed,
        "a1/app turned down {took:?} after its server stopped; allowed {allowed:?} \
         (two health intervals of {HEALTH_INTERVAL:?} and slack)\n{down:#}"
    );
    assert!(
        down["health_reasons"]
            .as_array()
            .is_some_and(|r| !r.is_empty()),
        "a down database says why: {down:#}"
    );
    assert_eq!(
        down["agent_online"], true,
        "the agent is fine, only its database is down: {down:#}"
    );

    let alert = wait_hook(&fleet, &hooks, "database_down", "a1/app");
    assert!(
        alert["text"].as_str().is_some_and(|t| t.contains("a1/app")),
        "{alert:#}"
    );
    assert!(
        hooks.events("database_recovered").is_empty(),
        "recovered while still down? {}",
        hooks.describe()
    );

    // A backup of a database whose server is down fails, and the failure is announced.
    let backup = fleet.cli().run(&["backup", "a1/app", "--wait"]);
    assert_eq!(
        backup.code, 1,
        "a backup of a stopped server fails: {backup}"
    );
    let failed = wait_hook(&fleet, &hooks, "order_failed", "a1/app");
    assert_eq!(failed["details"]["kind"], "backup", "{failed:#}");

    // Start it again: healthy once more, and the webhook hears that too, after the alert.
    fleet.clusters[0].start();
    wait_health(&fleet, "a1/app", "healthy", HEALTH_TIMEOUT);
    let recovered = wait_hook(&fleet, &hooks, "database_recovered", "a1/app");
    assert!(
        recovered["at_unix_ms"].as_i64() >= alert["at_unix_ms"].as_i64(),
        "the recovery is announced after the outage:\n{alert:#}\n{recovered:#}"
    );

    // It never had a complete backup: the monitor announces the breach of its RPO.
    let breach = wait_hook(&fleet, &hooks, "recovery_breach", "a1/app");
    assert!(
        breach["text"]
            .as_str()
            .is_some_and(|t| t.contains("no complete backup")),
        "{breach:#}"
    );

    // An agent that dies is announced once, as itself.
    fleet.agent(1).kill9();
    let gone = wait_hook(&fleet, &hooks, "agent_down", "a1");
    assert!(
        gone["text"].as_str().is_some_and(|t| t.contains("offline")),
        "{gone:#}"
    );
    assert!(hooks.errors().is_empty(), "{}", hooks.describe());
}

// ---- 4. metrics -----------------------------------------------------------------------------

/// One sample of the text format: `name{labels} value`.
#[derive(Debug, Clone)]
struct Sample {
    name: String,
    labels: BTreeMap<String, String>,
    value: f64,
}

/// Parses the Prometheus text exposition format strictly: `# HELP` and `# TYPE` lines
/// (at most one each per metric, TYPE before its samples), sample lines with valid metric and
/// label names, quoted label values with only `\\`, `\"` and `\n` escapes, and float values.
/// Returns the samples and each metric's type. Panics naming the first bad line.
fn parse_exposition(text: &str) -> (Vec<Sample>, BTreeMap<String, String>) {
    fn valid_name(name: &str, colons: bool) -> bool {
        let mut chars = name.chars();
        chars
            .next()
            .is_some_and(|c| c.is_ascii_alphabetic() || c == '_' || (colons && c == ':'))
            && chars.all(|c| c.is_ascii_alphanumeric() || c == '_' || (colons && c == ':'))
    }
    fn parse_value(text: &str) -> Option<f64> {
        match text {
            "+Inf" | "Inf" => Some(f64::INFINITY),
            "-Inf" => Some(f64::NEG_INFINITY),
            "NaN" => Some(f64::NAN),
            other => other.parse().ok(),
        }
    }
    let mut samples = Vec::new();
    let mut types: BTreeMap<String, String> = BTreeMap::new();
    let mut helps = BTreeSet::new();
    let mut sampled: BTreeSet<String> = BTreeSet::new();
    assert!(
        text.ends_with('\n'),
        "the exposition must end with a newline"
    );
    for (n, line) in text.lines().enumerate() {
        let bad = |why: &str| -> ! { panic!("/metrics line {}: {why}: {line:?}", n + 1) };
        if line.trim().is_empty() {
            continue;
        }
        if let Some(rest) = line.strip_prefix("# HELP ") {
            let name = rest.split(' ').next().unwrap_or_default();
            if !valid_name(name, true) {
                bad("bad metric name in HELP");
            }
            if !helps.insert(name.to_owned()) {
                bad("second HELP for a metric");
            }
            continue;
        }
        if let Some(rest) = line.strip_prefix("# TYPE ") {
            let mut parts = rest.split(' ');
            let (Some(name), Some(kind), None) = (parts.next(), parts.next(), parts.next()) else {
                bad("TYPE needs a name and a type");
            };
            if !valid_name(name, true) {
                bad("bad metric name in TYPE");
            }
            if !["counter", "gauge", "histogram", "summary", "untyped"].contains(&kind) {
                bad("unknown metric type");
            }
            if sampled.contains(name) {
                bad("TYPE after samples of the metric");
            }
            if types.insert(name.to_owned(), kind.to_owned()).is_some() {
                bad("second TYPE for a metric");
            }
            continue;
        }
        if line.starts_with('#') {
            continue;
        }
        let name_end = line.find(['{', ' ']).unwrap_or_else(|| bad("no value"));
        let name = &line[..name_end];
        if !valid_name(name, true) {
            bad("bad metric name");
        }
        let mut labels = BTreeMap::new();
        let mut rest = &line[name_end..];
        if let Some(after) = rest.strip_prefix('{') {
            let mut chars = after.char_indices().peekable();
            let end = loop {
                // A label name, `=`, a quoted value, then `,` or `}`.
                while chars.peek().is_some_and(|(_, c)| *c == ' ') {
                    chars.next();
                }
                if let Some((i, '}')) = chars.peek().copied() {
                    break i;
                }
                let mut label = String::new();
                for (_, c) in chars.by_ref() {
                    if c == '=' {
                        break;
                    }
                    label.push(c);
                }
                if !valid_name(&label, false) {
                    bad("bad label name");
                }
                if chars.next().map(|(_, c)| c) != Some('"') {
                    bad("label value not quoted");
                }
                let mut value = String::new();
                let mut closed = false;
                while let Some((_, c)) = chars.next() {
                    match c {
                        '\\' => match chars.next().map(|(_, c)| c) {
                            Some('\\') => value.push('\\'),
                            Some('"') => value.push('"'),
                            Some('n') => value.push('\n'),
                            _ => bad("bad escape in a label value"),
                        },
                        '"' => {
                            closed = true;
                            break;
                        }
                        '\n' => bad("newline in a label value"),
                        c => value.push(c),
                    }
                }
                if !closed {
                    bad("unterminated label value");
                }
                if labels.insert(label, value).is_some() {
                    bad("a label twice");
                }
                match chars.next() {
                    Some((_, ',')) => continue,
                    Some((i, '}')) => break i,
                    _ => bad("expected , or } after a label (or an unterminated label set)"),
                }
            };
            rest = &after[end + 1..];
        }
        let mut fields = rest.split_whitespace();
        let value = fields
            .next()
            .and_then(parse_value)
            .unwrap_or_else(|| bad("bad sample value"));
        if let Some(timestamp) = fields.next()
            && timestamp.parse::<i64>().is_err()
        {
            bad("bad timestamp");
        }
        if fields.next().is_some() {
            bad("trailing fields");
        }
        if !rest.starts_with(' ') {
            bad("no space before the value");
        }
        let family = ["_bucket", "_sum", "_count"]
            .iter()
            .find_map(|suffix| {
                name.strip_suffix(suffix)
                    .filter(|base| types.get(*base).is_some_and(|t| t == "histogram"))
            })
            .unwrap_or(name);
        sampled.insert(family.to_owned());
        samples.push(Sample {
            name: name.to_owned(),
            labels,
            value,
        });
    }
    (samples, types)
}

/// The samples of metric `name` whose labels include every pair of `labels`.
fn series<'a>(samples: &'a [Sample], name: &str, labels: &[(&str, &str)]) -> Vec<&'a Sample> {
    samples
        .iter()
        .filter(|s| {
            s.name == name
                && labels
                    .iter()
                    .all(|(k, v)| s.labels.get(*k).map(String::as_str) == Some(*v))
        })
        .collect()
}

/// The one sample of `name` with `labels`; panics (listing what there is) unless exactly one.
fn one<'a>(samples: &'a [Sample], name: &str, labels: &[(&str, &str)], text: &str) -> &'a Sample {
    let found = series(samples, name, labels);
    assert_eq!(
        found.len(),
        1,
        "expected one sample {name} with {labels:?}, found {found:?}\n/metrics:\n{text}"
    );
    found[0]
}

/// Checks one histogram series (`name` with `labels`): cumulative buckets ending in `+Inf`,
/// whose count is `_count`, and a `_sum` above zero; at least `min_count` observations.
fn assert_histogram(
    samples: &[Sample],
    types: &BTreeMap<String, String>,
    name: &str,
    labels: &[(&str, &str)],
    min_count: f64,
    text: &str,
) {
    assert_eq!(
        types.get(name).map(String::as_str),
        Some("histogram"),
        "{name} should be a histogram\n/metrics:\n{text}"
    );
    let mut buckets: Vec<(f64, f64)> = series(samples, &format!("{name}_bucket"), labels)
        .iter()
        .map(|s| {
            let le = s.labels.get("le").expect("bucket without le");
            let le = if le == "+Inf" {
                f64::INFINITY
            } else {
                le.parse().expect("le is a number")
            };
            (le, s.value)
        })
        .collect();
    assert!(
        !buckets.is_empty(),
        "{name} {labels:?} has no buckets\n/metrics:\n{text}"
    );
    buckets.sort_by(|a, b| a.0.total_cmp(&b.0));
    assert!(
        buckets.windows(2).all(|w| w[0].1 <= w[1].1),
        "{name} {labels:?} buckets are not cumulative: {buckets:?}"
    );
    let (last_le, last_count) = *buckets.last().unwrap();
    assert!(
        last_le.is_infinite(),
        "{name} {labels:?} has no +Inf bucket: {buckets:?}"
    );
    let count = one(samples, &format!("{name}_count"), labels, text).value;
    let sum = one(samples, &format!("{name}_sum"), labels, text).value;
    assert_eq!(
        last_count, count,
        "{name} {labels:?}: +Inf bucket vs _count"
    );
    assert!(
        count >= min_count,
        "{name}_count {labels:?} is {count}, expected at least {min_count}\n/metrics:\n{text}"
    );
    assert!(
        sum > 0.0,
        "{name}_sum {labels:?} is {sum}, expected above zero"
    );
}

/// How long the HTTP port may take to answer after the coordinator listens on gRPC.
const HTTP_UP_TIMEOUT: Duration = Duration::from_secs(30);

#[test]
fn metrics_serve_the_fleet_in_prometheus_text_format() {
    let fleet = Fleet::builder("metrics").database("app").build();
    fleet.cluster(1).psql(
        "app",
        "CREATE TABLE t (id int PRIMARY KEY, v text); \
         INSERT INTO t SELECT g, md5(g::text) FROM generate_series(1, 1000) g",
    );
    let base = fleet.http_url();
    let healthz = http_get_when_up(&format!("{base}/healthz"), HTTP_UP_TIMEOUT);
    assert_eq!(healthz.status, 200, "/healthz: {healthz:?}");

    let backup = fleet.cli().backup_ok("a1/app");
    let artifact_id = artifact_id_of(&backup);
    drill_ok(&fleet, "a1/app", &[]);
    let size_bytes = artifact(&fleet, &artifact_id)["size_bytes"]
        .as_u64()
        .expect("artifact size_bytes");

    let response = http_get(&format!("{base}/metrics"), Duration::from_secs(30))
        .unwrap_or_else(|e| panic!("GET /metrics: {e}\n{}", fleet.logs()));
    assert_eq!(response.status, 200, "/metrics: {response:?}");
    assert!(
        response
            .header("content-type")
            .is_some_and(|t| t.starts_with("text/plain") && t.contains("version=0.0.4")),
        "/metrics content type: {response:?}"
    );
    let text = response.body;

    // A parser crate reads it (it refuses, among others, buckets that are not cumulative),
    // and so does the strict line-format check here.
    if let Err(e) = openmetrics_parser::prometheus::parse_prometheus(&text) {
        panic!("/metrics is not valid Prometheus text: {e}\n{text}");
    }
    let (samples, types) = parse_exposition(&text);
    let gauge = |name: &str, labels: &[(&str, &str)]| -> f64 {
        assert_eq!(
            types.get(name).map(String::as_str),
            Some("gauge"),
            "{name} should be a gauge\n/metrics:\n{text}"
        );
        one(&samples, name, labels, &text).value
    };

    assert_eq!(gauge("warden_agents", &[("state", "online")]), 1.0);
    assert_eq!(gauge("warden_agents", &[("state", "offline")]), 0.0);
    for kind in ["backup", "drill"] {
        assert_eq!(
            gauge("warden_orders", &[("kind", kind), ("state", "succeeded")]),
            1.0,
            "one succeeded {kind} order"
        );
        assert_histogram(
            &samples,
            &types,
            "warden_order_duration_seconds",
            &[("kind", kind)],
            1.0,
            &text,
        );
    }
    assert_eq!(
        gauge("warden_backup_bytes", &[]),
        size_bytes as f64,
        "the bytes of the one complete artifact"
    );
    let app = [("database", "a1/app")];
    assert_eq!(gauge("warden_newest_backup_bytes", &app), size_bytes as f64);
    let age = gauge("warden_newest_backup_age_seconds", &app);
    assert!(
        (0.0..600.0).contains(&age),
        "the newest backup of a1/app was just taken, yet is {age}s old"
    );
    // The built-in standard tier: RTO 30m, RPO 24h; a fresh backup and a passing drill.
    assert_eq!(gauge("warden_rpo_target_seconds", &app), 86_400.0);
    assert_eq!(gauge("warden_rto_target_seconds", &app), 1_800.0);
    let statuses: BTreeMap<&str, f64> = ["ok", "at_risk", "breach", "unknown"]
        .into_iter()
        .map(|status| {
            (
                status,
                gauge(
                    "warden_rto_status",
                    &[("database", "a1/app"), ("status", status)],
                ),
            )
        })
        .collect();
    assert_eq!(
        statuses.values().sum::<f64>(),
        1.0,
        "one RTO status at a time: {statuses:?}"
    );
    assert_eq!(
        statuses["ok"], 1.0,
        "a1/app meets its targets: {statuses:?}"
    );
}

#[test]
fn drill_on_another_agent_restores_there_while_the_source_agent_is_down() {
    let mut fleet = Fleet::builder("drill-on").agents(2).database("app").build();
    load_rich_fixture(fleet.cluster(1), "app");
    let source = DbSnapshot::take(fleet.cluster(1), "app");
    let artifact_id = artifact_id_of(&fleet.cli().backup_ok("a1/app"));
    let databases_on_2 = fleet.cluster(2).databases();

    // The database's own agent is gone: the drill runs on a2's server from the shared
    // repository, which is what proves the backup restorable elsewhere.
    fleet.agent(1).kill9();
    fleet.wait_agent_online("a1", false);
    let refused = fleet.cli().run(&["drill", "a1/app"]);
    assert_eq!(refused.code, 2, "a1 is offline: {refused}");
    let out = fleet
        .cli()
        .run(&["drill", "a1/app", "--on", "a2", "--wait"]);
    assert_eq!(out.code, 0, "drill --on a2: {out}\n{}", fleet.logs());
    let order = out.json().clone();
    assert_eq!(order["state"], "succeeded", "{order:#}");
    assert_eq!(
        order["database"], "a2/app",
        "the drill ran on a2's server: {order:#}"
    );
    assert_eq!(order["drill"]["passed"], true, "{order:#}");
    assert_eq!(order["drill"]["drilled_database"], "a1/app", "{order:#}");

    // It counts for a1/app: its artifact is verified and its RTO row has the drill.
    let after = artifact(&fleet, &artifact_id);
    assert_eq!(after["verified"], true, "{after:#}");
    let report = fleet.cli().run(&["rto"]);
    let rows = rto_rows(&report);
    let row = &rows["a1/app"];
    assert_eq!(row["last_drill_passed"], true, "{row:#}");
    assert_eq!(
        row["last_drill_ms"], order["drill"]["restore_millis"],
        "{row:#}"
    );

    // Nothing stays behind on either server, and a2's databases are as they were.
    assert_no_scratch_database(&fleet, fleet.cluster(1), "a drill on a2");
    assert_no_scratch_database(&fleet, fleet.cluster(2), "a drill on a2");
    assert_eq!(fleet.cluster(2).databases(), databases_on_2);
    assert_same_data(&source, &DbSnapshot::take(fleet.cluster(1), "app"));

    // A server that does not exist is refused with its name.
    let unknown = fleet.cli().run(&["drill", "a1/app", "--on", "a9"]);
    assert_eq!(unknown.code, 2, "{unknown}");
    assert!(unknown.stderr.contains("a9"), "{unknown}");
}
