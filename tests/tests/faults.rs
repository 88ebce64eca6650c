//! Crashes and interruptions: an agent killed with SIGKILL in the middle of a backup leaves
//! no complete artifact and its partial files are cleaned up when it comes back; killed in
//! the middle of a replace-restore, the target keeps its data and the order is not retried;
//! a coordinator killed with SIGKILL comes back with everything it knew (and with the result
//! of a backup that finished while it was down); cancelled and failed backups leave no
//! orphaned data.

use std::os::unix::fs::MetadataExt;
use std::path::{Path, PathBuf};
use std::time::Duration;

use warden_tests::checks::sorted_ids;
use warden_tests::fixtures::large_table;
use warden_tests::repo::{MANIFEST_FILE, artifact_dirs, bytes_below, files_below, partial_dirs};
use warden_tests::{Fleet, ORDER_TIMEOUT, heavy_test_lock, wait_for};

/// Rows of the large table: about 650 MB of dump text (800 MB on disk), which takes a few
/// seconds to dump and compress on two cores (measured: 3M rows take about 2.3s with
/// `pg_dump | zstd -T2`).
const LARGE_ROWS: u64 = 5_000_000;

/// Waits until a backup of agent a1 is being written (an artifact directory without a
/// manifest that already holds data) and returns those directories. Polls the file system
/// often, so whatever the caller does next lands early in the backup.
fn wait_for_partial_backup(repo: &Path) -> Vec<PathBuf> {
    wait_for(
        "a partial backup in the repository",
        ORDER_TIMEOUT,
        Duration::from_millis(10),
        || {
            assert!(
                artifact_dirs(repo, "a1")
                    .iter()
                    .all(|d| !d.join(MANIFEST_FILE).exists()),
                "the backup completed before it could be interrupted; make LARGE_ROWS larger"
            );
            let dirs: Vec<PathBuf> = partial_dirs(repo, "a1")
                .into_iter()
                .filter(|d| bytes_below(d) > 0)
                .collect();
            (!dirs.is_empty()).then_some(dirs)
        },
    )
}

#[test]
fn agent_killed_during_backup_leaves_no_artifact_and_is_cleaned_up() {
    let _heavy = heavy_test_lock();
    let mut fleet = Fleet::builder("kill-agent").database("app").build();
    large_table(fleet.cluster(1), "app", LARGE_ROWS);
    fleet.cluster(1).psql(
        "app",
        "CREATE TABLE small (v int); INSERT INTO small VALUES (1)",
    );

    let submitted = fleet.cli().json(&["backup", "a1/app"]);
    let order_id = submitted["id"].as_str().expect("order id").to_owned();
    assert_eq!(submitted["kind"], "backup", "{submitted:#}");

    let repo = fleet.repo().to_path_buf();
    let partial = wait_for_partial_backup(&repo);
    fleet.agent(1).kill9();

    // Right after the kill the partial files are still there, and nothing is committed.
    let inodes: Vec<(PathBuf, u64)> = partial
        .iter()
        .map(|d| (d.clone(), std::fs::metadata(d).expect("partial dir").ino()))
        .collect();
    for (dir, _) in &inodes {
        assert!(
            !files_below(dir).is_empty(),
            "no partial files in {}",
            dir.display()
        );
        assert!(
            !dir.join(MANIFEST_FILE).exists(),
            "{} has a manifest",
            dir.display()
        );
    }

    // The coordinator notices within the lease (3s) and gives up on the order.
    let order = fleet.wait_order(&order_id, &["failed", "lost"], Duration::from_secs(60));
    assert!(
        order["artifact_id"].is_null() || order["artifact_id"] == "",
        "{order:#}"
    );
    assert!(
        fleet.cli().artifacts(Some("a1/app"), false).is_empty(),
        "a killed backup produced a complete artifact"
    );
    assert!(
        fleet
            .cli()
            .artifacts(None, true)
            .iter()
            .all(|a| a["order_id"] != order_id.as_str() || a["state"] != "complete"),
        "a killed backup produced a complete artifact"
    );
    fleet.wait_agent_online("a1", false);

    // The agent comes back and removes what the killed run left behind. (The coordinator may
    // retry the lost backup meanwhile; that run writes a directory of its own.)
    fleet.agent(1).start();
    fleet.wait_agent_online("a1", true);
    fleet.wait_until(
        "the partial backup directory to be removed",
        Duration::from_secs(60),
        || {
            inodes
                .iter()
                .all(|(dir, ino)| match std::fs::metadata(dir) {
                    Err(_) => true,
                    Ok(m) => m.ino() != *ino,
                })
        },
    );

    let new_backup = fleet.cli().backup_ok("a1/app");
    let artifact_id = new_backup["artifact_id"].as_str().unwrap();
    assert!(
        fleet
            .artifact_dir("a1", artifact_id)
            .join(MANIFEST_FILE)
            .is_file(),
        "new backup has no manifest"
    );
    assert!(
        fleet
            .cli()
            .artifacts(Some("a1/app"), false)
            .iter()
            .any(|a| a["id"] == artifact_id),
        "new artifact not listed"
    );

    // Eventually no unfinished directory remains: a retry of the lost order, if any, ends
    // with a manifest as well.
    fleet.wait_until(
        "every artifact directory to have a manifest",
        ORDER_TIMEOUT,
        || partial_dirs(&repo, "a1").is_empty(),
    );
    let original = fleet.cli().order(&order_id);
    if original["state"] == "succeeded" {
        let retried = original["artifact_id"].as_str().expect("retried artifact");
        assert!(
            fleet
                .artifact_dir("a1", retried)
                .join(MANIFEST_FILE)
                .is_file(),
            "{original:#}"
        );
    }
}

#[test]
fn coordinator_killed_and_restarted_keeps_its_state() {
    let mut fleet = Fleet::builder("restart-coordinator")
        .agents(2)
        .database("app")
        .build();
    for n in 1..=2 {
        fleet
            .cluster(n)
            .psql("app", "CREATE TABLE t (id int PRIMARY KEY, v text); INSERT INTO t SELECT g, 'v' || g FROM generate_series(1, 100) g");
    }
    let backup = fleet.cli().backup_ok("a1/app");
    let health = fleet.cli().run(&["health", "a2/app", "--wait"]);
    assert_eq!(health.code, 0, "health check failed: {health}");
    assert_eq!(health.json()["health"]["connected"], true, "{health}");

    let orders_before = fleet.cli().orders();
    let artifacts_before = fleet.cli().artifacts(None, true);
    let audit_before = fleet.cli().audit();
    assert!(orders_before.len() >= 2, "{orders_before:#?}");
    assert!(!artifacts_before.is_empty());
    assert!(
        !audit_before.is_empty(),
        "backups and health checks are audited"
    );

    fleet.coordinator.kill9();
    let down = fleet.cli().run(&["agents"]);
    assert_eq!(
        down.code, 2,
        "an unreachable coordinator is exit code 2: {down}"
    );
    fleet.coordinator.restart();

    fleet.wait_agent_online("a1", true);
    fleet.wait_agent_online("a2", true);

    // Everything that was there is still there, unchanged.
    let orders_after = fleet.cli().orders();
    for before in &orders_before {
        let after = orders_after
            .iter()
            .find(|o| o["id"] == before["id"])
            .unwrap_or_else(|| panic!("order lost in the restart: {before:#}"));
        for field in ["kind", "database", "state", "artifact_id", "created_at"] {
            assert_eq!(
                after[field], before[field],
                "order {field} changed: {before:#} → {after:#}"
            );
        }
    }
    let artifacts_after = fleet.cli().artifacts(None, true);
    assert_eq!(sorted_ids(&artifacts_after), sorted_ids(&artifacts_before));
    for before in &artifacts_before {
        let after = artifacts_after
            .iter()
            .find(|a| a["id"] == before["id"])
            .unwrap();
        assert_eq!(after["sha256"], before["sha256"]);
        assert_eq!(after["state"], before["state"]);
    }
    let audit_after = fleet.cli().audit();
    assert!(audit_after.len() >= audit_before.len());
    for before in &audit_before {
        let after = audit_after
            .iter()
            .find(|e| e["seq"] == before["seq"])
            .unwrap_or_else(|| panic!("audit event lost in the restart: {before:#}"));
        assert_eq!(after, before, "audit event changed in the restart");
    }
    let verify = fleet.cli().run(&["audit", "verify"]);
    assert_eq!(verify.code, 0, "audit verify after restart: {verify}");
    assert_eq!(verify.json()["ok"], true, "{verify}");
    assert!(
        verify.json()["events_checked"].as_u64().unwrap_or(0) >= audit_before.len() as u64,
        "{verify}"
    );

    // The reconnected agents take orders again.
    let again = fleet.cli().backup_ok("a2/app");
    assert_ne!(again["artifact_id"], backup["artifact_id"]);
    fleet.cli().backup_ok("a1/app");
}

#[test]
fn cancelled_backup_leaves_no_artifact_and_no_partial_files() {
    let _heavy = heavy_test_lock();
    let fleet = Fleet::builder("cancel").database("app").build();
    large_table(fleet.cluster(1), "app", LARGE_ROWS);

    let submitted = fleet.cli().json(&["backup", "a1/app"]);
    let order_id = submitted["id"].as_str().expect("order id").to_owned();
    let repo = fleet.repo().to_path_buf();
    wait_for_partial_backup(&repo);

    let cancel = fleet
        .cli()
        .run(&["cancel", &order_id, "--reason", "cancelled by the test"]);
    assert_eq!(cancel.code, 0, "cancel of a running backup: {cancel}");
    assert_eq!(cancel.json()["id"], order_id.as_str(), "{cancel}");
    let order = fleet.wait_order(&order_id, &["cancelled"], Duration::from_secs(60));
    assert!(order["artifact_id"].is_null(), "{order:#}");

    // Nothing committed, and the partial files are removed (invariant: no orphaned data).
    assert!(fleet.cli().artifacts(Some("a1/app"), false).is_empty());
    fleet.wait_until(
        "the cancelled backup's files to be removed",
        Duration::from_secs(60),
        || artifact_dirs(&repo, "a1").is_empty(),
    );
    let audit = fleet.cli().audit();
    assert!(
        audit
            .iter()
            .any(|e| e["params"].to_string().contains("cancelled by the test")),
        "the cancel and its reason are audited: {audit:#?}"
    );

    // The agent is not stuck; a finished order cannot be cancelled.
    let next = fleet.cli().backup_ok("a1/app");
    let next_id = next["id"].as_str().unwrap();
    let late = fleet.cli().run(&["cancel", next_id]);
    assert_eq!(
        late.code, 2,
        "cancelling a finished order is refused: {late}"
    );
    assert_eq!(fleet.cli().order(next_id)["state"], "succeeded");
}

#[test]
fn coordinator_killed_during_backup_gets_the_result_afterwards() {
    let _heavy = heavy_test_lock();
    let mut fleet = Fleet::builder("kill-coordinator-mid-backup")
        .database("app")
        .build();
    large_table(fleet.cluster(1), "app", LARGE_ROWS);

    let submitted = fleet.cli().json(&["backup", "a1/app"]);
    let order_id = submitted["id"].as_str().expect("order id").to_owned();
    let repo = fleet.repo().to_path_buf();
    wait_for_partial_backup(&repo);
    fleet.coordinator.kill9();

    // The agent carries on without its coordinator and commits the backup.
    let committed: PathBuf = wait_for(
        "the backup to be committed while the coordinator is down",
        ORDER_TIMEOUT,
        Duration::from_millis(100),
        || {
            artifact_dirs(&repo, "a1")
                .into_iter()
                .find(|d| d.join(MANIFEST_FILE).exists())
        },
    );
    let committed_id = committed.file_name().unwrap().to_str().unwrap().to_owned();

    // Back up (lease long past): the agent reports the result it holds, and the order
    // succeeds with exactly that artifact instead of being run again.
    fleet.coordinator.restart();
    fleet.wait_agent_online("a1", true);
    let order = fleet.wait_order(&order_id, &["succeeded"], ORDER_TIMEOUT);
    assert_eq!(order["artifact_id"], committed_id.as_str(), "{order:#}");
    let artifacts = fleet.cli().artifacts(Some("a1/app"), false);
    assert_eq!(
        artifacts.len(),
        1,
        "one backup, one artifact: {artifacts:#?}"
    );
    assert_eq!(artifacts[0]["id"], committed_id.as_str());
    assert_eq!(
        artifact_dirs(&repo, "a1"),
        vec![committed.clone()],
        "the order ran more than once"
    );
    let verify = fleet.cli().run(&["audit", "verify"]);
    assert_eq!(verify.code, 0, "{verify}");
}

#[test]
fn failed_backups_leave_no_orphaned_data() {
    let _heavy = heavy_test_lock();
    let mut fleet = Fleet::builder("backup-fails").database("app").build();
    large_table(fleet.cluster(1), "app", LARGE_ROWS);
    let repo = fleet.repo().to_path_buf();

    // The server ends the dump's session in the middle of the dump.
    let submitted = fleet.cli().json(&["backup", "a1/app"]);
    let order_id = submitted["id"].as_str().expect("order id").to_owned();
    wait_for_partial_backup(&repo);
    let terminated = fleet.cluster(1).query_value(
        "postgres",
        "SELECT count(pg_terminate_backend(pid)) FROM pg_stat_activity \
         WHERE datname = 'app' AND pid <> pg_backend_pid()",
    );
    assert_ne!(
        terminated, "0",
        "no session of the dump was found to terminate"
    );
    let order = fleet.wait_order(&order_id, &["failed"], ORDER_TIMEOUT);
    assert!(
        order["error"].as_str().is_some_and(|e| !e.is_empty()),
        "a failed order says why: {order:#}"
    );
    assert!(fleet.cli().artifacts(Some("a1/app"), false).is_empty());
    fleet.wait_until(
        "the failed backup's files to be removed",
        Duration::from_secs(30),
        || artifact_dirs(&repo, "a1").is_empty(),
    );

    // The server is down altogether.
    fleet.clusters[0].stop();
    let out = fleet.cli().run(&["backup", "a1/app", "--wait"]);
    assert_eq!(out.code, 1, "a backup of a stopped server fails: {out}");
    assert_eq!(out.json()["state"], "failed", "{out}");
    assert!(
        out.json()["error"].as_str().is_some_and(|e| !e.is_empty()),
        "{out}"
    );
    fleet.wait_until(
        "no files of the failed backup",
        Duration::from_secs(30),
        || artifact_dirs(&repo, "a1").is_empty(),
    );

    // Back up, a backup works again.
    fleet.clusters[0].start();
    fleet.cli().backup_ok("a1/app");
}

#[test]
fn agent_killed_during_replace_restore_keeps_the_database_and_is_not_retried() {
    let _heavy = heavy_test_lock();
    let mut fleet = Fleet::builder("kill-agent-restore").database("app").build();
    fleet.open_maintenance_around_the_clock();
    large_table(fleet.cluster(1), "app", LARGE_ROWS);
    fleet.cluster(1).psql(
        "app",
        "CREATE TABLE marker (v text); INSERT INTO marker VALUES ('backed up')",
    );
    let artifact = fleet.cli().backup_ok("a1/app")["artifact_id"]
        .as_str()
        .unwrap()
        .to_owned();
    fleet
        .cluster(1)
        .psql("app", "UPDATE marker SET v = 'changed after the backup'");

    let submitted = fleet
        .cli()
        .json(&["restore", &artifact, "--replace", "--yes"]);
    let order_id = submitted["id"].as_str().unwrap().to_owned();
    // Kill the agent while pg_restore loads the data (before any swap): the server shows the
    // restore's COPY into a database other than `app`.
    let cluster = fleet.cluster(1);
    wait_for(
        "pg_restore to be loading data",
        ORDER_TIMEOUT,
        Duration::from_millis(20),
        || {
            let copying = cluster.query_value(
                "postgres",
                "SELECT count(*) FROM pg_stat_activity \
                 WHERE datname <> 'app' AND query ILIKE 'COPY %big_table%'",
            );
            (copying != "0").then_some(())
        },
    );
    fleet.agent(1).kill9();

    fleet.wait_order(&order_id, &["lost", "failed"], Duration::from_secs(60));
    fleet.agent(1).start();
    fleet.wait_agent_online("a1", true);
    // An order submitted after the agent is back has run to its end; a retry of the lost
    // restore would have been dispatched at the reconnect, before it.
    let health = fleet.cli().run(&["health", "a1/app", "--wait"]);
    assert_eq!(health.code, 0, "{health}");
    let order = fleet.cli().order(&order_id);
    assert!(
        order["state"] == "lost" || order["state"] == "failed",
        "a destructive order must not be retried automatically: {order:#}"
    );
    assert_eq!(order["attempts"], 1, "{order:#}");
    assert_eq!(
        fleet.cluster(1).query_value("app", "SELECT v FROM marker"),
        "changed after the backup",
        "the interrupted restore touched the target database"
    );
    assert_eq!(
        fleet
            .cluster(1)
            .query_value("app", "SELECT count(*) FROM big_table"),
        LARGE_ROWS.to_string()
    );
}
