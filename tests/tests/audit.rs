//! The audit log is a hash chain: editing one event in the SQLite store, or deleting one,
//! makes `warden audit verify` exit 1 and name the first broken event.

use warden_tests::store::{execute, query_ints, query_texts, sql_literal};
use warden_tests::{CliOutput, Fleet};

fn verify(fleet: &Fleet) -> CliOutput {
    fleet.cli().run(&["audit", "verify"])
}

fn assert_chain_ok(fleet: &Fleet) {
    let out = verify(fleet);
    assert_eq!(out.code, 0, "audit verify should pass: {out}");
    assert_eq!(out.json()["ok"], true, "{out}");
}

fn assert_broken_at(fleet: &Fleet, allowed_seqs: &[u64], what: &str) {
    let out = verify(fleet);
    assert_eq!(out.code, 1, "audit verify must fail after {what}: {out}");
    let report = out.json();
    assert_eq!(report["ok"], false, "{out}");
    let seq = report["first_broken_seq"].as_u64().unwrap_or(0);
    assert!(
        allowed_seqs.contains(&seq),
        "after {what}, first_broken_seq should be one of {allowed_seqs:?}: {out}"
    );
    assert!(
        report["problem"].as_str().is_some_and(|p| !p.is_empty()),
        "the report should say what is wrong: {out}"
    );
}

#[test]
fn edited_or_deleted_audit_events_break_the_chain() {
    let mut fleet = Fleet::builder("audit").database("app").build();
    fleet.cluster(1).psql(
        "app",
        "CREATE TABLE t (v int); INSERT INTO t VALUES (1), (2)",
    );
    // Audited actions: backups, a health check, a refused restore.
    fleet.cli().backup_ok("a1/app");
    let health = fleet.cli().run(&["health", "a1/app", "--wait"]);
    assert_eq!(health.code, 0, "{health}");
    fleet.cli().backup_ok("a1/app");
    fleet.cli().backup_ok("a1/app");

    let events = fleet.cli().audit();
    assert!(
        events.len() >= 4,
        "expected several audit events: {events:#?}"
    );
    assert_chain_ok(&fleet);

    let store = fleet.coordinator.store_path();
    let seqs = query_ints(&store, "SELECT seq FROM audit_events ORDER BY seq");
    assert!(
        seqs.len() >= events.len(),
        "the store has fewer events than `warden audit` lists: {seqs:?}"
    );
    let middle = seqs[seqs.len() / 2];
    let middle_u = middle as u64;

    // Edit the actor of one event in the store while the coordinator runs.
    let actor = query_texts(
        &store,
        &format!("SELECT actor FROM audit_events WHERE seq = {middle}"),
    )[0]
    .clone()
    .expect("actor");
    let changed = execute(
        &store,
        &format!("UPDATE audit_events SET actor = 'mallory' WHERE seq = {middle}"),
    );
    assert_eq!(changed, 1);
    assert_broken_at(&fleet, &[middle_u], "editing the actor");

    // Put it back: the chain is whole again (so the check is not always failing).
    execute(
        &store,
        &format!(
            "UPDATE audit_events SET actor = {} WHERE seq = {middle}",
            sql_literal(&actor)
        ),
    );
    assert_chain_ok(&fleet);

    // Edit the parameters of the same event.
    let params = query_texts(
        &store,
        &format!("SELECT params_json FROM audit_events WHERE seq = {middle}"),
    )[0]
    .clone()
    .unwrap_or_default();
    execute(
        &store,
        &format!(
            "UPDATE audit_events SET params_json = {} WHERE seq = {middle}",
            sql_literal(r#"{"reason":"nothing to see here"}"#)
        ),
    );
    assert_broken_at(&fleet, &[middle_u], "editing the parameters");
    execute(
        &store,
        &format!(
            "UPDATE audit_events SET params_json = {} WHERE seq = {middle}",
            sql_literal(&params)
        ),
    );
    assert_chain_ok(&fleet);

    // Delete one event while the coordinator is down, then start it again.
    fleet.coordinator.kill9();
    let deleted = execute(
        &store,
        &format!("DELETE FROM audit_events WHERE seq = {middle}"),
    );
    assert_eq!(deleted, 1);
    fleet.coordinator.restart();
    // The event after the gap no longer fits (or the gap itself is named).
    assert_broken_at(&fleet, &[middle_u, middle_u + 1], "deleting an event");
}
