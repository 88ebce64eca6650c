//! Fleet policy end to end (real PostgreSQL, agents, CLI and gRPC): maintenance windows hold
//! destructive restores until they open, and a verified safety backup runs first; break-glass
//! restores start at once and are audited with their reason; freezes beat maintenance windows
//! but not backups; a held restore expires when its window closes; schedules take backups on
//! their own and retention expires and removes old artifacts (never a database's last one);
//! concurrency limits hold under twenty simultaneous backups; and the policy document
//! round-trips through `apply` and `export`.

use std::collections::{BTreeMap, BTreeSet, HashMap};
use std::path::PathBuf;
use std::time::{Duration, Instant};

use chrono::{DateTime, Datelike, TimeDelta, Timelike, Utc};
use serde_json::Value;
use warden_tests::checks::FleetState;
use warden_tests::compare::count_rows;
use warden_tests::fixtures::{large_table, load_rich_fixture};
use warden_tests::{DbSnapshot, Fleet, ORDER_TIMEOUT, assert_same_data, heavy_test_lock, store};

/// States after which the orders these tests follow never change again.
const FINAL_STATES: [&str; 5] = ["succeeded", "failed", "cancelled", "expired", "lost"];

/// Polls `warden order ID` until it is in state `want`; panics with the process logs when it
/// ends in another state or `timeout` passes.
fn wait_state(fleet: &Fleet, id: &str, want: &str, timeout: Duration) -> Value {
    let deadline = Instant::now() + timeout;
    loop {
        let out = fleet.cli().run(&["order", id]);
        let order = out.json.clone().filter(|_| out.code == 0);
        if let Some(order) = &order {
            let state = order["state"].as_str().unwrap_or_default();
            if state == want {
                return order.clone();
            }
            if FINAL_STATES.contains(&state) {
                panic!(
                    "order {id} ended {state}, expected {want}: {order:#}\n{}",
                    fleet.logs()
                );
            }
        }
        if Instant::now() >= deadline {
            let last = order.map_or_else(|| out.to_string(), |o| format!("{o:#}"));
            panic!(
                "order {id} not {want} within {timeout:?}; last seen: {last}\n{}",
                fleet.logs()
            );
        }
        std::thread::sleep(Duration::from_millis(200));
    }
}

/// Parses an RFC 3339 time of a JSON document.
fn time(value: &Value) -> DateTime<Utc> {
    let text = value
        .as_str()
        .unwrap_or_else(|| panic!("expected an RFC 3339 time, got {value}"));
    DateTime::parse_from_rfc3339(text)
        .unwrap_or_else(|e| panic!("{text:?} is not RFC 3339: {e}"))
        .with_timezone(&Utc)
}

/// Returns the instant `seconds` from now, on a whole second.
fn whole_seconds_from_now(seconds: i64) -> DateTime<Utc> {
    let t = Utc::now() + TimeDelta::seconds(seconds);
    t.with_nanosecond(0).expect("zero nanoseconds is valid")
}

/// A 6-field cron expression (seconds first) that fires once a year, at `t` (UTC). Every
/// field comes from `t` itself, so minute, hour, day and month boundaries need no care.
fn cron_once_at(t: DateTime<Utc>) -> String {
    format!(
        "{} {} {} {} {} *",
        t.second(),
        t.minute(),
        t.hour(),
        t.day(),
        t.month()
    )
}

/// `t` as a local date and time in UTC, the way `--start`/`--end` and `start`/`end` read it.
fn local(t: DateTime<Utc>) -> String {
    t.format("%Y-%m-%dT%H:%M:%S").to_string()
}

/// Returns the time left until `t` plus `slack`.
fn until(t: DateTime<Utc>, slack: Duration) -> Duration {
    (t - Utc::now()).to_std().unwrap_or_default() + slack
}

/// The first audit event `action` about order `order_id`.
fn order_event<'a>(audit: &'a [Value], action: &str, order_id: &str) -> Option<&'a Value> {
    audit
        .iter()
        .find(|e| e["action"] == action && e["params"]["order_id"] == order_id)
}

/// Like [`order_event`], panicking when there is none.
fn expect_order_event<'a>(audit: &'a [Value], action: &str, order_id: &str) -> &'a Value {
    order_event(audit, action, order_id).unwrap_or_else(|| {
        panic!(
            "no audit event {action} for order {order_id}; events of it: {:#?}",
            audit
                .iter()
                .filter(|e| e["params"]["order_id"] == order_id)
                .map(|e| &e["action"])
                .collect::<Vec<_>>()
        )
    })
}

/// The audit events `action` (in log order).
fn events<'a>(audit: &'a [Value], action: &str) -> Vec<&'a Value> {
    audit.iter().filter(|e| e["action"] == action).collect()
}

fn seq(event: &Value) -> u64 {
    event["seq"].as_u64().expect("audit seq")
}

/// Writes a policy document into the fleet's directory and returns its path.
fn policy_file(fleet: &Fleet, name: &str, text: &str) -> String {
    let path: PathBuf = fleet.dir().join(name);
    std::fs::write(&path, text).unwrap_or_else(|e| panic!("write {}: {e}", path.display()));
    path.display().to_string()
}

/// `warden apply -f` of `text`, which must succeed; returns its JSON answer.
fn apply(fleet: &Fleet, text: &str) -> Value {
    let path = policy_file(fleet, "fleet.toml", text);
    let applied = fleet.cli().json(&["apply", "-f", &path]);
    assert_eq!(applied["applied"], true, "{applied:#}");
    applied
}

/// Returns artifact `id` as `warden artifacts --all` lists it.
fn artifact(fleet: &Fleet, id: &str) -> Value {
    fleet
        .cli()
        .artifacts(None, true)
        .into_iter()
        .find(|a| a["id"] == id)
        .unwrap_or_else(|| panic!("artifact {id} is not listed by `warden artifacts --all`"))
}

/// The rows the manifest of `artifact` records for table `public.<table>`.
fn manifest_rows(artifact: &Value, table: &str) -> u64 {
    artifact["manifest"]["tables"]
        .as_array()
        .expect("manifest tables")
        .iter()
        .find(|t| t["schema"] == "public" && t["table"] == table)
        .and_then(|t| t["rows"].as_u64())
        .unwrap_or_else(|| panic!("public.{table} not in the manifest: {artifact:#}"))
}

/// The directory of an artifact in the shared repository.
fn artifact_path(fleet: &Fleet, artifact: &Value) -> PathBuf {
    fleet
        .repo()
        .join(artifact["path"].as_str().expect("artifact path"))
}

/// Checks that `restore` (a finished replace) took a safety backup of its target first: the
/// coordinator's own backup order with trigger `safety`, read back and verified, which had
/// succeeded before the restore was dispatched. Returns the safety backup's artifact.
fn assert_safety_backup_first(fleet: &Fleet, restore: &Value) -> Value {
    let restore_id = restore["id"].as_str().expect("order id");
    let safety_id = restore["safety_backup_order_id"]
        .as_str()
        .unwrap_or_else(|| panic!("the restore names no safety backup: {restore:#}"));
    let safety = fleet.cli().order(safety_id);
    assert_eq!(safety["kind"], "backup", "{safety:#}");
    assert_eq!(safety["state"], "succeeded", "{safety:#}");
    assert_eq!(safety["database"], restore["database"], "{safety:#}");
    assert_eq!(safety["requested_by"], "system:coordinator", "{safety:#}");
    assert!(
        time(&safety["finished_at"]) <= time(&restore["started_at"]),
        "the safety backup finished after the restore started:\nsafety {safety:#}\nrestore {restore:#}"
    );

    let audit = fleet.cli().audit();
    let submitted = expect_order_event(&audit, "order.submitted", safety_id);
    assert_eq!(
        submitted["params"]["spec"],
        serde_json::json!({"kind": "backup", "trigger": "safety", "verify": true}),
        "{submitted:#}"
    );
    let succeeded = expect_order_event(&audit, "order.succeeded", safety_id);
    let dispatched = expect_order_event(&audit, "order.dispatched", restore_id);
    assert!(
        seq(succeeded) < seq(dispatched),
        "the restore was dispatched (seq {}) before its safety backup succeeded (seq {})",
        seq(dispatched),
        seq(succeeded)
    );

    let artifact_id = safety["artifact_id"].as_str().expect("safety artifact id");
    let artifact = artifact(fleet, artifact_id);
    assert_eq!(artifact["trigger"], "safety", "{artifact:#}");
    assert_eq!(artifact["verified"], true, "{artifact:#}");
    assert_eq!(artifact["state"], "complete", "{artifact:#}");
    assert_eq!(artifact["order_id"], safety_id, "{artifact:#}");
    artifact
}

/// Returns the `id` of a JSON order or artifact.
fn id_of(value: &Value) -> String {
    value["id"]
        .as_str()
        .unwrap_or_else(|| panic!("no id in {value:#}"))
        .to_owned()
}

#[test]
fn restore_replace_outside_window_is_held_then_runs_when_window_opens() {
    let fleet = Fleet::builder("policy-held").database("app").build();
    let cluster = fleet.cluster(1);
    load_rich_fixture(cluster, "app");
    let at_backup = DbSnapshot::take(cluster, "app");
    let backup = fleet.cli().backup_ok("a1/app");
    let artifact_id = backup["artifact_id"].as_str().unwrap().to_owned();
    cluster.psql("app", "DELETE FROM orders WHERE id % 2 = 0");
    assert_eq!(count_rows(cluster, "app", "public", "orders"), 3000);

    // A maintenance window that opens once, 20 seconds from now, for ten minutes.
    let opens = whole_seconds_from_now(20);
    let closes = opens + TimeDelta::minutes(10);
    let cron = cron_once_at(opens);
    let added = fleet.cli().json(&[
        "window",
        "add",
        "soon",
        "--timezone",
        "UTC",
        "--cron",
        &cron,
        "--duration",
        "10m",
    ]);
    assert_eq!(added["applied"], true, "{added:#}");

    // --no-wait refuses instead of holding, and queues nothing.
    let before = FleetState::read(fleet.cli());
    let refused = fleet
        .cli()
        .run(&["restore", &artifact_id, "--replace", "--yes", "--no-wait"]);
    assert_eq!(refused.code, 2, "--no-wait outside a window: {refused}");
    assert!(
        refused.stderr.contains("window soon") && refused.stderr.contains("nothing was queued"),
        "the refusal should name the next window and say nothing was queued: {refused}"
    );
    assert_eq!(
        FleetState::read(fleet.cli()),
        before,
        "a refused --no-wait restore changed orders or artifacts"
    );

    let out = fleet.cli().run(&[
        "restore",
        &artifact_id,
        "--replace",
        "--yes",
        "--reason",
        "roll back the bad import",
    ]);
    assert_eq!(out.code, 0, "held restore: {out}");
    assert!(
        Utc::now() < opens,
        "this machine was too slow: the window opened before the restore was submitted"
    );
    let held = out.json().clone();
    let restore_id = id_of(&held);
    assert_eq!(held["kind"], "restore", "{held:#}");
    assert_eq!(held["state"], "held", "{held:#}");
    let phase = held["phase"].as_str().unwrap_or_default();
    assert!(
        phase.contains("outside maintenance windows")
            && phase.contains("next opening")
            && phase.contains("window soon"),
        "phase should say why it waits and for which window: {held:#}"
    );
    assert_eq!(time(&held["held_until"]), opens, "{held:#}");
    assert!(held["started_at"].is_null(), "{held:#}");
    assert!(held["safety_backup_order_id"].is_null(), "{held:#}");

    let next = fleet.cli().json(&["windows", "next", "a1/app"]);
    assert_eq!(next["database"], "a1/app", "{next:#}");
    assert_eq!(next["allowed_now"], false, "{next:#}");
    assert!(next["open_window"].is_null(), "{next:#}");
    assert_eq!(next["next_window"], "soon", "{next:#}");
    assert_eq!(time(&next["next_start"]), opens, "{next:#}");
    assert_eq!(time(&next["next_end"]), closes, "{next:#}");
    let windows = fleet.cli().json(&["windows"]);
    let soon = windows
        .as_array()
        .expect("window list")
        .iter()
        .find(|w| w["name"] == "soon")
        .unwrap_or_else(|| panic!("window soon not listed: {windows:#}"));
    assert_eq!(soon["kind"], "maintenance", "{soon:#}");
    assert!(soon["open_until"].is_null(), "{soon:#}");
    assert_eq!(time(&soon["next_start"]), opens, "{soon:#}");
    // Still held, and the database untouched.
    assert_eq!(fleet.cli().order(&restore_id)["state"], "held");
    assert_eq!(count_rows(cluster, "app", "public", "orders"), 3000);

    let restore = wait_state(
        &fleet,
        &restore_id,
        "succeeded",
        until(opens, ORDER_TIMEOUT),
    );
    let audit = fleet.cli().audit();
    let dispatched = expect_order_event(&audit, "order.dispatched", &restore_id);
    assert!(
        time(&dispatched["at"]) >= opens,
        "the restore was dispatched before its window opened at {opens}: {dispatched:#}"
    );
    let held_event = expect_order_event(&audit, "order.held", &restore_id);
    assert!(
        held_event["params"]["why"]
            .as_str()
            .is_some_and(|w| w.contains("outside maintenance windows")),
        "{held_event:#}"
    );
    assert_eq!(time(&restore["deadline"]), closes, "{restore:#}");

    let safety = assert_safety_backup_first(&fleet, &restore);
    let safety_order = fleet.cli().order(safety["order_id"].as_str().unwrap());
    assert!(
        time(&safety_order["created_at"]) >= opens,
        "the safety backup was taken before the window opened: {safety_order:#}"
    );
    // The safety backup holds the database as the restore found it.
    assert_eq!(manifest_rows(&safety, "orders"), 3000, "{safety:#}");
    assert_eq!(
        manifest_rows(&artifact(&fleet, &artifact_id), "orders"),
        6000
    );
    // The deleted rows are back, and everything else is as it was at the backup.
    assert_same_data(&at_backup, &DbSnapshot::take(cluster, "app"));

    let next = fleet.cli().json(&["windows", "next", "a1/app"]);
    assert_eq!(next["allowed_now"], true, "{next:#}");
    assert_eq!(next["open_window"], "soon", "{next:#}");
    assert_eq!(time(&next["open_until"]), closes, "{next:#}");
}

#[test]
fn emergency_restore_starts_at_once_and_audits_the_reason() {
    let fleet = Fleet::builder("policy-emergency").database("app").build();
    let cluster = fleet.cluster(1);
    load_rich_fixture(cluster, "app");
    let at_backup = DbSnapshot::take(cluster, "app");
    let backup = fleet.cli().backup_ok("a1/app");
    let artifact_id = backup["artifact_id"].as_str().unwrap().to_owned();
    cluster.psql("app", "DELETE FROM customers WHERE id % 3 = 0");

    // No window is defined, so no destructive work may start on its own.
    let next = fleet.cli().json(&["windows", "next", "a1/app"]);
    assert_eq!(next["allowed_now"], false, "{next:#}");
    assert!(next["next_window"].is_null(), "{next:#}");

    // Break glass needs a reason: refused, nothing queued, nothing audited as submitted.
    let before = FleetState::read(fleet.cli());
    let submitted_before = events(&fleet.cli().audit(), "order.submitted").len();
    for reason in [None, Some("   ")] {
        let mut args = vec!["restore", &artifact_id, "--replace", "--yes", "--emergency"];
        if let Some(reason) = reason {
            args.extend(["--reason", reason]);
        }
        let refused = fleet.cli().run(&args);
        assert_eq!(refused.code, 2, "emergency without a reason: {refused}");
        assert!(refused.stderr.contains("--reason"), "{refused}");
    }
    assert_eq!(FleetState::read(fleet.cli()), before);
    assert_eq!(
        events(&fleet.cli().audit(), "order.submitted").len(),
        submitted_before
    );

    // A plain replace waits for a window that never comes.
    let plain = fleet
        .cli()
        .json(&["restore", &artifact_id, "--replace", "--yes"]);
    assert_eq!(plain["state"], "held", "{plain:#}");
    assert!(
        plain["phase"]
            .as_str()
            .is_some_and(|p| p.contains("no maintenance window opens")),
        "{plain:#}"
    );
    let cancelled = fleet.cli().json(&["cancel", &id_of(&plain)]);
    assert_eq!(cancelled["state"], "cancelled", "{cancelled:#}");

    let reason = "incident 42: customers deleted by a bad deploy";
    let started = Instant::now();
    let submitted = fleet.cli().json(&[
        "restore",
        &artifact_id,
        "--replace",
        "--yes",
        "--emergency",
        "--reason",
        reason,
    ]);
    let restore_id = id_of(&submitted);
    assert_eq!(submitted["emergency"], true, "{submitted:#}");
    assert_eq!(submitted["reason"], reason, "{submitted:#}");
    if submitted["state"] == "held" {
        // Only its safety backup may hold it, never a window.
        assert!(
            submitted["phase"]
                .as_str()
                .is_some_and(|p| p.contains("safety backup")),
            "{submitted:#}"
        );
    }
    let restore = wait_state(&fleet, &restore_id, "succeeded", Duration::from_secs(90));
    assert!(
        started.elapsed() < Duration::from_secs(90),
        "the emergency restore took {:?}",
        started.elapsed()
    );
    assert_eq!(restore["emergency"], true, "{restore:#}");
    assert_safety_backup_first(&fleet, &restore);
    assert_same_data(&at_backup, &DbSnapshot::take(cluster, "app"));

    let audit = fleet.cli().audit();
    let emergency = expect_order_event(&audit, "order.emergency", &restore_id);
    assert_eq!(emergency["params"]["reason"], reason, "{emergency:#}");
    assert_eq!(emergency["params"]["skip_safety_backup"], false);
    assert_eq!(emergency["target"], "a1/app", "{emergency:#}");
    let submitted_event = expect_order_event(&audit, "order.submitted", &restore_id);
    assert_eq!(
        submitted_event["params"]["emergency"], true,
        "{submitted_event:#}"
    );
    assert_eq!(submitted_event["params"]["reason"], reason);
    assert_eq!(
        events(&audit, "order.emergency").len(),
        1,
        "only the break-glass order is audited as an emergency"
    );

    // --skip-safety-backup goes without one, and says so in the audit log.
    cluster.psql("app", "DELETE FROM orders WHERE id <= 100");
    let backups_before = fleet
        .cli()
        .orders()
        .iter()
        .filter(|o| o["kind"] == "backup")
        .count();
    let reason = "incident 43: disk almost full, no room for a safety backup";
    let submitted = fleet.cli().json(&[
        "restore",
        &artifact_id,
        "--replace",
        "--yes",
        "--emergency",
        "--skip-safety-backup",
        "--reason",
        reason,
    ]);
    let restore_id = id_of(&submitted);
    let restore = wait_state(&fleet, &restore_id, "succeeded", Duration::from_secs(90));
    assert!(restore["safety_backup_order_id"].is_null(), "{restore:#}");
    assert_eq!(
        fleet
            .cli()
            .orders()
            .iter()
            .filter(|o| o["kind"] == "backup")
            .count(),
        backups_before,
        "a backup was taken although --skip-safety-backup was given"
    );
    let audit = fleet.cli().audit();
    let emergency = expect_order_event(&audit, "order.emergency", &restore_id);
    assert_eq!(emergency["params"]["reason"], reason, "{emergency:#}");
    assert_eq!(emergency["params"]["skip_safety_backup"], true);
    assert_same_data(&at_backup, &DbSnapshot::take(cluster, "app"));
}

#[test]
fn freeze_blocks_restore_inside_a_maintenance_window_but_not_backups() {
    let fleet = Fleet::builder("policy-freeze").database("app").build();
    let cluster = fleet.cluster(1);
    load_rich_fixture(cluster, "app");
    let at_backup = DbSnapshot::take(cluster, "app");
    let backup = fleet.cli().backup_ok("a1/app");
    let artifact_id = backup["artifact_id"].as_str().unwrap().to_owned();
    cluster.psql(
        "app",
        "DELETE FROM measurements WHERE taken_on >= '2024-01-01'",
    );

    // Maintenance all day every day, and a freeze from an hour ago to two hours from now.
    let now = whole_seconds_from_now(0);
    let freeze_end = now + TimeDelta::hours(2);
    apply(
        &fleet,
        &format!(
            r#"
[[window]]
name = "always"
kind = "maintenance"
timezone = "UTC"
weekly = "daily 00:00-24:00"

[[window]]
name = "change-freeze"
kind = "freeze"
timezone = "UTC"
start = "{}"
end = "{}"
"#,
            local(now - TimeDelta::hours(1)),
            local(freeze_end)
        ),
    );

    let next = fleet.cli().json(&["windows", "next", "a1/app"]);
    assert_eq!(next["allowed_now"], false, "{next:#}");
    assert_eq!(next["freeze_window"], "change-freeze", "{next:#}");
    assert_eq!(time(&next["freeze_until"]), freeze_end, "{next:#}");
    assert_eq!(next["next_window"], "always", "{next:#}");
    assert_eq!(time(&next["next_start"]), freeze_end, "{next:#}");

    let refused = fleet
        .cli()
        .run(&["restore", &artifact_id, "--replace", "--yes", "--no-wait"]);
    assert_eq!(refused.code, 2, "--no-wait during a freeze: {refused}");
    assert!(refused.stderr.contains("change-freeze"), "{refused}");

    let held = fleet
        .cli()
        .json(&["restore", &artifact_id, "--replace", "--yes"]);
    let restore_id = id_of(&held);
    assert_eq!(held["state"], "held", "{held:#}");
    assert!(
        held["phase"]
            .as_str()
            .is_some_and(|p| p.contains("frozen by window change-freeze")),
        "phase should name the freeze: {held:#}"
    );
    assert_eq!(time(&held["held_until"]), freeze_end, "{held:#}");

    // Backups are not destructive: one runs during the freeze, of the very same database.
    let during = fleet.cli().backup_ok("a1/app");
    let during = artifact(&fleet, during["artifact_id"].as_str().unwrap());
    assert_eq!(manifest_rows(&during, "measurements_2024"), 0, "{during:#}");
    let still = fleet.cli().order(&restore_id);
    assert_eq!(still["state"], "held", "{still:#}");
    assert!(
        still["phase"]
            .as_str()
            .is_some_and(|p| p.contains("frozen by window change-freeze")),
        "{still:#}"
    );
    assert!(still["safety_backup_order_id"].is_null(), "{still:#}");
    assert_eq!(count_rows(cluster, "app", "public", "measurements_2024"), 0);

    // Lifting the freeze lets the held restore go, safety backup first.
    let removed = fleet.cli().json(&["window", "rm", "change-freeze"]);
    assert_eq!(removed["applied"], true, "{removed:#}");
    let changes = removed["changes"].as_array().expect("changes");
    assert_eq!(changes.len(), 1, "{removed:#}");
    assert_eq!(changes[0]["op"], "removed", "{removed:#}");
    assert_eq!(changes[0]["what"], "window", "{removed:#}");
    assert_eq!(changes[0]["name"], "change-freeze", "{removed:#}");

    let restore = wait_state(&fleet, &restore_id, "succeeded", ORDER_TIMEOUT);
    let safety = assert_safety_backup_first(&fleet, &restore);
    assert_eq!(manifest_rows(&safety, "measurements_2024"), 0, "{safety:#}");
    assert_same_data(&at_backup, &DbSnapshot::take(cluster, "app"));
    let audit = fleet.cli().audit();
    let held_event = expect_order_event(&audit, "order.held", &restore_id);
    assert!(
        held_event["params"]["why"]
            .as_str()
            .is_some_and(|w| w.contains("frozen by window change-freeze")),
        "{held_event:#}"
    );
}

#[test]
fn held_restore_expires_when_its_window_closes() {
    let mut fleet = Fleet::builder("policy-expire").database("app").build();
    fleet.cluster(1).psql_script(
        "app",
        "CREATE TABLE notes (id int PRIMARY KEY, body text);\n\
         INSERT INTO notes SELECT g, 'note ' || g FROM generate_series(1, 100) AS g;\n",
    );
    let backup = fleet.cli().backup_ok("a1/app");
    let artifact_id = backup["artifact_id"].as_str().unwrap().to_owned();
    fleet
        .cluster(1)
        .psql("app", "DELETE FROM notes WHERE id > 40");

    let held = fleet
        .cli()
        .json(&["restore", &artifact_id, "--replace", "--yes"]);
    let restore_id = id_of(&held);
    assert_eq!(held["state"], "held", "{held:#}");
    assert!(held["deadline"].is_null(), "{held:#}");

    // The agent goes away; a short window opens and closes while it is gone, so the restore
    // cannot start in it.
    fleet.agent(1).kill9();
    fleet.wait_agent_online("a1", false);
    let opens = whole_seconds_from_now(3);
    let closes = opens + TimeDelta::seconds(8);
    let added = fleet.cli().json(&[
        "window",
        "add",
        "brief",
        "--timezone",
        "UTC",
        "--start",
        &local(opens),
        "--end",
        &local(closes),
    ]);
    assert_eq!(added["applied"], true, "{added:#}");

    // Once the window is open the order has until it closes to start.
    fleet.wait_until(
        "the held restore to get its window's deadline",
        until(closes, Duration::from_secs(5)),
        || !fleet.cli().order(&restore_id)["deadline"].is_null(),
    );
    let order = fleet.cli().order(&restore_id);
    assert_eq!(time(&order["deadline"]), closes, "{order:#}");
    assert_eq!(order["state"], "held", "{order:#}");

    let expired = wait_state(
        &fleet,
        &restore_id,
        "expired",
        until(closes, Duration::from_secs(30)),
    );
    assert!(expired["started_at"].is_null(), "{expired:#}");
    assert!(time(&expired["finished_at"]) >= closes, "{expired:#}");
    assert!(
        expired["error"]
            .as_str()
            .is_some_and(|e| e.contains("maintenance window closed")),
        "the error should say the window closed: {expired:#}"
    );
    let audit = fleet.cli().audit();
    let event = expect_order_event(&audit, "order.expired", &restore_id);
    assert_eq!(event["params"]["from"], "held", "{event:#}");
    assert_eq!(event["target"], "a1/app", "{event:#}");
    assert!(time(&event["at"]) >= closes, "{event:#}");

    // When the agent is back the expired restore is not started late.
    fleet.agent(1).start();
    fleet.wait_agent_online("a1", true);
    if let Some(safety_id) = expired["safety_backup_order_id"].as_str() {
        wait_state(&fleet, safety_id, "succeeded", ORDER_TIMEOUT);
    }
    fleet.cli().backup_ok("a1/app");
    let after = fleet.cli().order(&restore_id);
    assert_eq!(after["state"], "expired", "{after:#}");
    assert!(after["started_at"].is_null(), "{after:#}");
    assert_eq!(count_rows(fleet.cluster(1), "app", "public", "notes"), 40);
    assert!(
        order_event(&fleet.cli().audit(), "order.dispatched", &restore_id).is_none(),
        "the expired restore was dispatched"
    );
}

#[test]
fn schedule_every_minute_backs_up_on_its_own_and_retention_prunes() {
    let fleet = Fleet::builder("policy-schedule")
        .database("app")
        .coordinator_args(&["--prune-interval", "2s"])
        .build();
    fleet.cluster(1).psql_script(
        "app",
        "CREATE TABLE notes (id int PRIMARY KEY, body text);\n\
         INSERT INTO notes SELECT g, 'note ' || g FROM generate_series(1, 1000) AS g;\n",
    );
    let manual: Vec<String> = (0..3)
        .map(|_| {
            let order = fleet.cli().backup_ok("a1/app");
            order["artifact_id"].as_str().unwrap().to_owned()
        })
        .collect();

    let applied_at = Utc::now();
    let applied = apply(
        &fleet,
        r#"
[[schedule]]
name = "every-minute"
selector = ""
cron = "* * * * *"
timezone = "UTC"
jitter = "0s"

[schedule.retention]
keep_days = 0
keep_last = 2
"#,
    );
    assert!(
        applied["changes"]
            .as_array()
            .expect("changes")
            .iter()
            .any(|c| c["op"] == "added" && c["what"] == "schedule" && c["name"] == "every-minute"),
        "{applied:#}"
    );

    // Retention runs on its own within its 2s interval: of the three manual backups only the
    // newest two are kept.
    fleet.wait_until(
        "retention to delete the oldest manual backup",
        Duration::from_secs(60),
        || artifact(&fleet, &manual[0])["state"] == "deleted",
    );

    // Two scheduled runs, at most about two minutes apart from the apply.
    let scheduled = |fleet: &Fleet| -> Vec<Value> {
        let mut orders: Vec<Value> = fleet
            .cli()
            .orders()
            .into_iter()
            .filter(|o| o["requested_by"] == "system:scheduler")
            .collect();
        orders.sort_by_key(|o| o["created_at"].as_str().unwrap_or_default().to_owned());
        orders
    };
    fleet.wait_until(
        "two scheduled backups to succeed",
        Duration::from_secs(200),
        || {
            scheduled(&fleet)
                .iter()
                .filter(|o| o["state"] == "succeeded")
                .count()
                >= 2
        },
    );
    // Retention settles on the newest two backups of all.
    let newest_two_kept = |fleet: &Fleet| {
        let mut all = fleet.cli().artifacts(Some("a1/app"), true);
        all.sort_by_key(|a| a["created_at"].as_str().unwrap_or_default().to_owned());
        let (older, newest) = all.split_at(all.len().saturating_sub(2));
        newest.iter().all(|a| a["state"] == "complete")
            && older.iter().all(|a| a["state"] == "deleted")
    };
    fleet.wait_until(
        "retention to keep exactly the newest two backups",
        Duration::from_secs(60),
        || newest_two_kept(&fleet),
    );

    let orders = scheduled(&fleet);
    assert!(orders.len() >= 2, "{orders:#?}");
    for order in &orders {
        assert_eq!(order["kind"], "backup", "{order:#}");
        assert_eq!(order["database"], "a1/app", "{order:#}");
        assert!(
            time(&order["created_at"]) > applied_at,
            "a schedule fired for a slot before it existed: {order:#}"
        );
    }
    let audit = fleet.cli().audit();
    let fired = events(&audit, "schedule.fired");
    assert!(fired.len() >= 2, "schedule.fired events: {fired:#?}");
    let mut slots = BTreeSet::new();
    for event in &fired {
        assert_eq!(event["target"], "every-minute", "{event:#}");
        assert_eq!(event["actor"], "system:scheduler", "{event:#}");
        let slot = time(&event["params"]["slot"]);
        assert!(
            slot > applied_at,
            "a schedule fired for a slot before it existed: {event:#}"
        );
        assert_eq!(
            (slot.second(), slot.nanosecond()),
            (0, 0),
            "slots are whole minutes: {event:#}"
        );
        assert!(slots.insert(slot), "a slot fired twice: {fired:#?}");
        let fired_orders = event["params"]["orders"].as_array().expect("orders");
        assert_eq!(fired_orders.len(), 1, "one backup per database: {event:#}");
        assert_eq!(fired_orders[0]["database"], "a1/app", "{event:#}");
        let order_id = fired_orders[0]["order_id"].as_str().expect("order id");
        assert!(
            orders.iter().any(|o| o["id"] == order_id),
            "fired order {order_id} is not a scheduler order"
        );
    }
    for order in orders.iter().filter(|o| o["state"] == "succeeded") {
        let artifact = artifact(&fleet, order["artifact_id"].as_str().unwrap());
        assert_eq!(artifact["trigger"], "schedule:every-minute", "{artifact:#}");
    }

    // The manual backups expired (by retention) and were removed (by the agent).
    for id in &manual {
        let artifact = artifact(&fleet, id);
        assert_eq!(artifact["state"], "deleted", "{artifact:#}");
        assert!(
            !artifact_path(&fleet, &artifact).exists(),
            "directory of deleted artifact {id} is still in the repository"
        );
        let expired = audit
            .iter()
            .find(|e| e["action"] == "artifact.expired" && e["params"]["artifact_id"] == *id)
            .unwrap_or_else(|| panic!("no artifact.expired event for {id}"));
        assert_eq!(expired["actor"], "system:retention", "{expired:#}");
        assert!(
            audit
                .iter()
                .any(|e| e["action"] == "artifact.deleted" && e["params"]["artifact_id"] == *id),
            "no artifact.deleted event for {id}"
        );
    }
    let prunes: Vec<Value> = fleet
        .cli()
        .orders()
        .into_iter()
        .filter(|o| o["kind"] == "prune")
        .collect();
    assert!(!prunes.is_empty(), "no prune orders");
    for prune in &prunes {
        assert_eq!(prune["requested_by"], "system:retention", "{prune:#}");
        assert_eq!(prune["state"], "succeeded", "{prune:#}");
    }

    // What is left: the newest two, on disk, each kept by keep_last (the newest also as such).
    let mut kept = fleet.cli().artifacts(Some("a1/app"), false);
    kept.sort_by_key(|a| a["created_at"].as_str().unwrap_or_default().to_owned());
    assert_eq!(kept.len(), 2, "{kept:#?}");
    for artifact in &kept {
        assert!(artifact_path(&fleet, artifact).is_dir(), "{artifact:#}");
        assert!(
            artifact["trigger"]
                .as_str()
                .is_some_and(|t| t.starts_with("schedule:")),
            "{artifact:#}"
        );
    }
    let dry = fleet.cli().json(&["prune", "--dry-run"]);
    let decisions = dry["decisions"].as_array().expect("decisions");
    assert_eq!(decisions.len(), 2, "{dry:#}");
    for decision in decisions {
        assert_eq!(decision["prune"], false, "{dry:#}");
        assert!(
            decision["why"]
                .as_str()
                .is_some_and(|w| w.contains("keep_last=2")),
            "{dry:#}"
        );
    }
}

#[test]
fn retention_prunes_backups_older_than_keep_days_but_never_the_last() {
    // Retention runs on its own only every 5 minutes here, so the dry run is not raced.
    let fleet = Fleet::builder("policy-retention")
        .database("app")
        .database("lonely")
        .build();
    for db in ["app", "lonely"] {
        fleet
            .cluster(1)
            .psql(db, "CREATE TABLE t (v int); INSERT INTO t VALUES (1), (2)");
    }
    let app: Vec<String> = (0..4)
        .map(|_| {
            fleet.cli().backup_ok("a1/app")["artifact_id"]
                .as_str()
                .unwrap()
                .to_owned()
        })
        .collect();
    let lonely = fleet.cli().backup_ok("a1/lonely")["artifact_id"]
        .as_str()
        .unwrap()
        .to_owned();

    // Backdate in the catalog: the two oldest backups of app are 40 days old, the only backup
    // of lonely 100 days.
    let now_ms = Utc::now().timestamp_millis();
    let day_ms = 24 * 3600 * 1000;
    let store_path = fleet.coordinator.store_path();
    for (id, days) in [(&app[0], 41), (&app[1], 40), (&lonely, 100)] {
        let changed = store::execute(
            &store_path,
            &format!(
                "UPDATE artifacts SET created_unix_ms = {} WHERE id = {}",
                now_ms - days * day_ms,
                store::sql_literal(id)
            ),
        );
        assert_eq!(changed, 1, "backdating artifact {id}");
    }

    apply(
        &fleet,
        r#"
[[retention]]
name = "month"
selector = ""
keep_days = 30
keep_last = 0
"#,
    );

    let decision_map = |response: &Value| -> BTreeMap<String, (bool, String)> {
        response["decisions"]
            .as_array()
            .expect("decisions")
            .iter()
            .map(|d| {
                (
                    d["artifact_id"].as_str().unwrap().to_owned(),
                    (
                        d["prune"].as_bool().unwrap(),
                        d["why"].as_str().unwrap_or_default().to_owned(),
                    ),
                )
            })
            .collect()
    };
    let check_decisions = |response: &Value| {
        let decisions = decision_map(response);
        assert_eq!(decisions.len(), 5, "{response:#}");
        for id in &app[..2] {
            assert!(decisions[id].0, "{id} is older than 30 days: {response:#}");
        }
        for id in &app[2..] {
            assert!(!decisions[id].0, "{id} is recent: {response:#}");
            assert!(decisions[id].1.contains("keep_days=30"), "{response:#}");
        }
        assert!(
            !decisions[&lonely].0,
            "the only backup of a1/lonely must be kept: {response:#}"
        );
        assert!(decisions[&lonely].1.contains("newest"), "{response:#}");
    };

    let before = FleetState::read(fleet.cli());
    let dry = fleet.cli().json(&["prune", "--dry-run"]);
    assert_eq!(dry["dry_run"], true, "{dry:#}");
    assert_eq!(dry["order_ids"], serde_json::json!([]), "{dry:#}");
    check_decisions(&dry);
    let old = dry["decisions"]
        .as_array()
        .unwrap()
        .iter()
        .find(|d| d["artifact_id"] == app[1].as_str())
        .unwrap();
    let age = Utc::now() - time(&old["created"]);
    assert!(
        (age.num_days() - 40).abs() <= 1,
        "the dry run reads the catalog's creation time: {old:#}"
    );
    // The dry run changed nothing.
    assert_eq!(FleetState::read(fleet.cli()), before);
    assert!(
        fleet
            .cli()
            .artifacts(None, true)
            .iter()
            .all(|a| a["state"] == "complete")
    );
    assert!(events(&fleet.cli().audit(), "artifact.expired").is_empty());

    let pruned = fleet.cli().json(&["prune"]);
    assert_eq!(pruned["dry_run"], false, "{pruned:#}");
    check_decisions(&pruned);
    let order_ids = pruned["order_ids"].as_array().expect("order ids");
    assert_eq!(order_ids.len(), 1, "one prune order for a1/app: {pruned:#}");
    let prune_id = order_ids[0].as_str().unwrap();
    let prune = wait_state(&fleet, prune_id, "succeeded", ORDER_TIMEOUT);
    assert_eq!(prune["kind"], "prune", "{prune:#}");
    assert_eq!(prune["database"], "a1/app", "{prune:#}");
    let removed: BTreeSet<&str> = prune["prune"]["removed_artifact_ids"]
        .as_array()
        .expect("removed ids")
        .iter()
        .map(|v| v.as_str().unwrap())
        .collect();
    assert_eq!(
        removed,
        BTreeSet::from([app[0].as_str(), app[1].as_str()]),
        "{prune:#}"
    );

    let audit = fleet.cli().audit();
    for id in &app[..2] {
        let artifact = artifact(&fleet, id);
        assert_eq!(artifact["state"], "deleted", "{artifact:#}");
        assert!(!artifact_path(&fleet, &artifact).exists(), "{artifact:#}");
        for action in ["artifact.expired", "artifact.deleted"] {
            assert!(
                audit
                    .iter()
                    .any(|e| e["action"] == action && e["params"]["artifact_id"] == *id),
                "no {action} event for {id}"
            );
        }
    }
    for id in app[2..].iter().chain([&lonely]) {
        let artifact = artifact(&fleet, id);
        assert_eq!(artifact["state"], "complete", "{artifact:#}");
        assert!(artifact_path(&fleet, &artifact).is_dir(), "{artifact:#}");
    }
    assert_eq!(events(&audit, "artifact.expired").len(), 2);

    // Nothing more to do.
    let again = fleet.cli().json(&["prune"]);
    assert!(
        again["decisions"]
            .as_array()
            .unwrap()
            .iter()
            .all(|d| d["prune"] == false),
        "{again:#}"
    );
    assert_eq!(again["order_ids"], serde_json::json!([]), "{again:#}");
}

/// What the dispatcher counts against the limits: orders sent to an agent and not ended.
const IN_FLIGHT: [&str; 2] = ["dispatched", "running"];

/// The most orders in flight at once, from the audit log's total order of state changes.
#[derive(Debug, Default)]
struct Peaks {
    per_agent: BTreeMap<String, u32>,
    per_database: BTreeMap<String, u32>,
    fleet_backups: u32,
}

impl Peaks {
    fn from_audit(audit: &[Value]) -> Self {
        let mut peaks = Peaks::default();
        let mut in_flight: HashMap<String, (String, String, bool)> = HashMap::new();
        let mut agents: HashMap<String, u32> = HashMap::new();
        let mut databases: HashMap<String, u32> = HashMap::new();
        let mut backups = 0u32;
        for event in audit {
            let action = event["action"].as_str().unwrap_or_default();
            let Some(state) = action.strip_prefix("order.") else {
                continue;
            };
            let Some(order_id) = event["params"]["order_id"].as_str() else {
                continue;
            };
            let target = event["target"].as_str().unwrap_or_default().to_owned();
            let agent = target.split('/').next().unwrap_or_default().to_owned();
            let is_backup = event["params"]["kind"] == "backup";
            let enters = IN_FLIGHT.contains(&state);
            if enters && !in_flight.contains_key(order_id) {
                in_flight.insert(
                    order_id.to_owned(),
                    (agent.clone(), target.clone(), is_backup),
                );
                let a = agents.entry(agent.clone()).or_default();
                *a += 1;
                let d = databases.entry(target.clone()).or_default();
                *d += 1;
                if is_backup {
                    backups += 1;
                }
                let peak = peaks.per_agent.entry(agent).or_default();
                *peak = (*peak).max(*a);
                let peak = peaks.per_database.entry(target).or_default();
                *peak = (*peak).max(*d);
                peaks.fleet_backups = peaks.fleet_backups.max(backups);
            } else if !enters && let Some((agent, target, is_backup)) = in_flight.remove(order_id) {
                *agents.get_mut(&agent).expect("counted agent") -= 1;
                *databases.get_mut(&target).expect("counted database") -= 1;
                if is_backup {
                    backups -= 1;
                }
            }
        }
        peaks
    }
}

#[test]
fn concurrency_limits_hold_under_twenty_backups_on_two_agents() {
    let _heavy = heavy_test_lock();
    let fleet = Fleet::builder("policy-limits")
        .agents(2)
        .database("d1")
        .database("d2")
        .database("d3")
        .build();
    // Enough rows that each backup takes a moment, so that backups overlap.
    for n in 1..=2 {
        for db in ["d1", "d2", "d3"] {
            large_table(fleet.cluster(n), db, 300_000);
        }
    }
    apply(&fleet, "[limits]\nper_agent = 2\nfleet_backups = 3\n");

    // Twenty backups at once, spread over six databases on two agents.
    let targets: Vec<String> = (0..20)
        .map(|i| format!("a{}/d{}", i % 2 + 1, (i / 2) % 3 + 1))
        .collect();
    let store_path = fleet.coordinator.store_path();
    let mut held_phases: BTreeSet<String> = BTreeSet::new();
    let mut polls = 0u32;
    let submitted: Vec<Value> = std::thread::scope(|scope| {
        let submitters: Vec<_> = targets
            .iter()
            .map(|target| {
                let cli = fleet.cli().clone();
                scope.spawn(move || cli.run(&["backup", target]))
            })
            .collect();
        // Watch the store while the orders come in and run, until all twenty have ended.
        let deadline = Instant::now() + ORDER_TIMEOUT * 2;
        loop {
            let rows = store::query_texts(
                &store_path,
                "SELECT agent || '|' || database || '|' || kind || '|' || state || '|' || phase \
                 FROM orders",
            );
            polls += 1;
            let mut per_agent: HashMap<String, u32> = HashMap::new();
            let mut per_database: HashMap<String, u32> = HashMap::new();
            let mut backups = 0;
            let mut ended = 0;
            for row in rows.iter().flatten() {
                let fields: Vec<&str> = row.splitn(5, '|').collect();
                let [agent, database, kind, state, phase] = fields[..] else {
                    panic!("unexpected row {row:?}");
                };
                assert!(
                    !["failed", "cancelled", "lost", "expired"].contains(&state),
                    "an order ended {state}: {row}\n{}",
                    fleet.logs()
                );
                if state == "succeeded" {
                    ended += 1;
                }
                if state == "held" {
                    held_phases.insert(phase.to_owned());
                }
                if IN_FLIGHT.contains(&state) {
                    *per_agent.entry(agent.to_owned()).or_default() += 1;
                    *per_database
                        .entry(format!("{agent}/{database}"))
                        .or_default() += 1;
                    if kind == "backup" {
                        backups += 1;
                    }
                }
            }
            for (agent, n) in &per_agent {
                assert!(*n <= 2, "agent {agent} has {n} orders in flight: {rows:#?}");
            }
            for (database, n) in &per_database {
                assert!(*n <= 1, "{database} has {n} backups in flight: {rows:#?}");
            }
            assert!(backups <= 3, "{backups} backups in flight: {rows:#?}");
            if ended == targets.len() && submitters.iter().all(|s| s.is_finished()) {
                break;
            }
            assert!(
                Instant::now() < deadline,
                "the twenty backups did not all succeed in time: {rows:#?}\n{}",
                fleet.logs()
            );
            std::thread::sleep(Duration::from_millis(20));
        }
        submitters
            .into_iter()
            .map(|s| {
                let out = s.join().expect("submitter thread");
                assert_eq!(out.code, 0, "submitting a backup: {out}");
                out.json().clone()
            })
            .collect()
    });
    assert!(polls > 10, "only {polls} polls of the store");

    // Every submission was accepted and ended with its own artifact.
    let ids: BTreeSet<String> = submitted.iter().map(id_of).collect();
    assert_eq!(ids.len(), 20);
    let orders: Vec<Value> = fleet
        .cli()
        .orders()
        .into_iter()
        .filter(|o| ids.contains(o["id"].as_str().unwrap_or_default()))
        .collect();
    assert_eq!(orders.len(), 20);
    let artifacts: BTreeSet<&str> = orders
        .iter()
        .map(|o| {
            assert_eq!(o["state"], "succeeded", "{o:#}");
            o["artifact_id"].as_str().expect("artifact id")
        })
        .collect();
    assert_eq!(artifacts.len(), 20);

    // The audit log orders every state change: replaying it gives the exact peaks, which are
    // the limits (reached, never passed).
    let audit = fleet.cli().audit();
    let peaks = Peaks::from_audit(&audit);
    assert_eq!(
        peaks.per_agent,
        BTreeMap::from([("a1".to_owned(), 2), ("a2".to_owned(), 2)]),
        "orders in flight per agent at most: {peaks:?}"
    );
    assert_eq!(
        peaks.fleet_backups, 3,
        "backups in flight at most: {peaks:?}"
    );
    assert!(
        peaks.per_database.values().all(|n| *n == 1),
        "backups of one database in flight at most: {peaks:?}"
    );

    // Orders over a limit waited in `held`, saying which limit.
    let held_whys: BTreeSet<String> = events(&audit, "order.held")
        .iter()
        .filter_map(|e| e["params"]["why"].as_str().map(str::to_owned))
        .chain(held_phases)
        .collect();
    for limit in ["(limits.per_agent = 2)", "(limits.fleet_backups = 3)"] {
        assert!(
            held_whys.iter().any(|why| why.contains(limit)),
            "no held order said {limit}; reasons seen: {held_whys:#?}"
        );
    }
}

/// A full policy document, written the way `warden export` prints it.
const POLICY: &str = r#"# Warden fleet policy

[limits]
per_agent = 3
fleet_backups = 5

[[window]]
name = "prod-sunday"
selector = "env=prod"
kind = "maintenance"
timezone = "Europe/Berlin"
weekly = "sun 02:00-04:00"

[[window]]
name = "nightly"
selector = "tier=test"
kind = "maintenance"
timezone = "America/New_York"
cron = "0 1 * * *"
duration = "2h"

[[window]]
name = "year-end"
selector = ""
kind = "freeze"
timezone = "UTC"
start = "2030-12-20T00:00"
end = "2031-01-02T00:00"

[[schedule]]
name = "nightly-backup"
selector = "env=prod"
cron = "0 3 * * *"
timezone = "UTC"
jitter = "5m"

[schedule.retention]
keep_days = 30
keep_last = 5
daily = 7

[[retention]]
name = "default"
selector = ""
keep_days = 14
keep_last = 3
"#;

/// The meaningful lines of a TOML document: trimmed, without blank lines and comments.
fn meaningful_lines(text: &str) -> Vec<&str> {
    text.lines()
        .map(str::trim)
        .filter(|l| !l.is_empty() && !l.starts_with('#'))
        .collect()
}

/// The (op, what, name) of each change an apply reports.
fn change_keys(result: &Value) -> BTreeSet<(String, String, String)> {
    result["changes"]
        .as_array()
        .unwrap_or_else(|| panic!("no changes in {result:#}"))
        .iter()
        .map(|c| {
            (
                c["op"].as_str().unwrap_or_default().to_owned(),
                c["what"].as_str().unwrap_or_default().to_owned(),
                c["name"].as_str().unwrap_or_default().to_owned(),
            )
        })
        .collect()
}

#[test]
fn apply_dry_run_and_export_round_trip() {
    let fleet = Fleet::builder("policy-apply").database("app").build();
    let cli = fleet.cli();
    let initial = cli.json(&["export"]);
    assert_eq!(initial["version"], 0, "{initial:#}");
    let path = policy_file(&fleet, "fleet.toml", POLICY);

    let expected: BTreeSet<(String, String, String)> = [
        ("changed", "limits", "limits"),
        ("added", "window", "prod-sunday"),
        ("added", "window", "nightly"),
        ("added", "window", "year-end"),
        ("added", "schedule", "nightly-backup"),
        ("added", "retention", "default"),
    ]
    .into_iter()
    .map(|(op, what, name)| (op.to_owned(), what.to_owned(), name.to_owned()))
    .collect();

    // A dry run shows what would change and applies nothing.
    let dry = cli.json(&["apply", "-f", &path, "--dry-run"]);
    assert_eq!(dry["dry_run"], true, "{dry:#}");
    assert_eq!(dry["applied"], false, "{dry:#}");
    assert_eq!(dry["version"], 0, "{dry:#}");
    assert_eq!(change_keys(&dry), expected, "{dry:#}");
    let limits = dry["changes"]
        .as_array()
        .unwrap()
        .iter()
        .find(|c| c["what"] == "limits")
        .unwrap();
    let detail = limits["detail"].as_str().unwrap_or_default();
    assert!(
        detail.contains("per_agent: 2 -> 3") && detail.contains("fleet_backups: 4 -> 5"),
        "{dry:#}"
    );
    assert_eq!(
        cli.json(&["export"]),
        initial,
        "a dry run changed the policy"
    );
    assert!(cli.json(&["windows"]).as_array().unwrap().is_empty());

    // Applied, it is exported as the same document.
    let applied = cli.json(&["apply", "-f", &path]);
    assert_eq!(applied["applied"], true, "{applied:#}");
    assert_eq!(applied["dry_run"], false, "{applied:#}");
    assert_eq!(applied["version"], 1, "{applied:#}");
    assert_eq!(change_keys(&applied), expected, "{applied:#}");
    let exported = cli.json(&["export"]);
    assert_eq!(exported["version"], 1, "{exported:#}");
    let toml = exported["toml"].as_str().expect("exported toml");
    assert_eq!(
        meaningful_lines(toml),
        meaningful_lines(POLICY),
        "export differs from what was applied:\n{toml}"
    );
    // Without --json the CLI prints the document itself.
    let plain_export = {
        let out = cli
            .command()
            .arg("export")
            .output()
            .expect("run warden export");
        assert!(out.status.success(), "{out:?}");
        String::from_utf8(out.stdout).expect("utf-8 export")
    };
    assert_eq!(plain_export.trim_end(), toml.trim_end());
    let windows = cli.json(&["windows"]);
    let names: Vec<&str> = windows
        .as_array()
        .unwrap()
        .iter()
        .map(|w| w["name"].as_str().unwrap())
        .collect();
    assert_eq!(names, ["prod-sunday", "nightly", "year-end"], "{windows:#}");

    // Applying the same document, or its export, changes nothing.
    for (name, text) in [("again.toml", POLICY), ("exported.toml", toml)] {
        let path = policy_file(&fleet, name, text);
        let again = cli.json(&["apply", "-f", &path]);
        assert_eq!(again["applied"], false, "{name}: {again:#}");
        assert_eq!(again["version"], 1, "{name}: {again:#}");
        assert_eq!(again["changes"], serde_json::json!([]), "{name}: {again:#}");
    }
    let applied_events = events(&cli.audit(), "policy.applied").len();
    assert_eq!(applied_events, 1, "one version, one policy.applied event");

    // A dry run of a change shows the difference of that field.
    let path = policy_file(
        &fleet,
        "changed.toml",
        &POLICY.replace("keep_days = 14", "keep_days = 21"),
    );
    let dry = cli.json(&["apply", "-f", &path, "--dry-run"]);
    assert_eq!(dry["applied"], false, "{dry:#}");
    let changes = dry["changes"].as_array().unwrap();
    assert_eq!(changes.len(), 1, "{dry:#}");
    assert_eq!(changes[0]["op"], "changed", "{dry:#}");
    assert_eq!(changes[0]["what"], "retention", "{dry:#}");
    assert_eq!(changes[0]["name"], "default", "{dry:#}");
    assert!(
        changes[0]["detail"]
            .as_str()
            .is_some_and(|d| d.contains("keep_days: 14 -> 21")),
        "{dry:#}"
    );
    assert_eq!(cli.json(&["export"]), exported);

    // Invalid documents are refused whole, naming the field and the value.
    let invalid = [
        (
            "cron",
            POLICY.replace("cron = \"0 3 * * *\"", "cron = \"61 3 * * *\""),
            "schedule \"nightly-backup\".cron",
            "61 3 * * *",
        ),
        (
            "timezone",
            POLICY.replace("\"Europe/Berlin\"", "\"Mars/Olympus_Mons\""),
            "window \"prod-sunday\".timezone",
            "Mars/Olympus_Mons",
        ),
        (
            "selector",
            // Every other entry changes too, so a partial apply would show.
            POLICY.replace("per_agent = 3", "per_agent = 7").replace(
                "selector = \"\"\nkeep_days",
                "selector = \"env prod\"\nkeep_days",
            ),
            "retention \"default\".selector",
            "env prod",
        ),
    ];
    for (what, text, field, value) in invalid {
        assert_ne!(text, POLICY, "the {what} case did not change the document");
        let path = policy_file(&fleet, &format!("bad-{what}.toml"), &text);
        for dry_run in [false, true] {
            let mut args = vec!["apply", "-f", path.as_str()];
            if dry_run {
                args.push("--dry-run");
            }
            let refused = cli.run(&args);
            assert_eq!(refused.code, 2, "invalid {what}: {refused}");
            assert!(
                refused.stderr.contains(field) && refused.stderr.contains(value),
                "the error should name {field} and {value:?}: {refused}"
            );
        }
        assert_eq!(
            cli.json(&["export"]),
            exported,
            "an invalid {what} changed the policy"
        );
    }
    // The same checks apply to `window add`.
    let refused = cli.run(&[
        "window",
        "add",
        "martian",
        "--timezone",
        "Mars/Olympus_Mons",
        "--cron",
        "0 2 * * *",
        "--duration",
        "1h",
    ]);
    assert_eq!(refused.code, 2, "{refused}");
    assert!(
        refused.stderr.contains("timezone") && refused.stderr.contains("Mars/Olympus_Mons"),
        "{refused}"
    );
    assert_eq!(cli.json(&["export"]), exported);
    assert_eq!(events(&cli.audit(), "policy.applied").len(), 1);
}
