//! Backups restore to identical data: into a new database (the generated rich fixture and
//! Chinook), over the original (`--replace`, which needs `--yes` without a TTY), and a
//! corrupted artifact is refused before anything is touched.

use serde_json::Value;
use warden_tests::checks::{FleetState, all_text, check_artifact};
use warden_tests::fixtures::{chinook_sql, load_chinook, load_rich_fixture, say_skipped};
use warden_tests::repo::{DUMP_FILE, flip_middle_byte};
use warden_tests::{DbSnapshot, Fleet, ORDER_TIMEOUT, assert_same_data, heavy_test_lock};

/// Restores `artifact_id` as `new_name` with `--wait` and checks the order's outcome
/// against the manifest.
fn restore_new_name_ok(
    fleet: &Fleet,
    artifact_id: &str,
    new_name: &str,
    manifest: &Value,
) -> Value {
    let out = fleet
        .cli()
        .run(&["restore", artifact_id, "--new-name", new_name, "--wait"]);
    assert_eq!(out.code, 0, "restore failed: {out}");
    let order = out.json().clone();
    assert_eq!(order["kind"], "restore", "{order:#}");
    assert_eq!(order["state"], "succeeded", "{order:#}");
    let restore = &order["restore"];
    let restored_into = restore["database"].as_str().unwrap_or_default();
    assert!(
        restored_into == new_name || restored_into.ends_with(&format!("/{new_name}")),
        "restore.database should name {new_name:?}: {order:#}"
    );
    let tables = manifest["tables"].as_array().expect("manifest tables");
    let rows: u64 = tables
        .iter()
        .map(|t| t["rows"].as_u64().expect("rows"))
        .sum();
    assert_eq!(restore["tables_verified"], tables.len(), "{order:#}");
    assert_eq!(restore["rows_verified"], rows, "{order:#}");
    order
}

#[test]
fn rich_fixture_backup_restores_identically_into_new_database() {
    let fleet = Fleet::builder("rich-roundtrip").database("app").build();
    let cluster = fleet.cluster(1);
    load_rich_fixture(cluster, "app");
    let source = DbSnapshot::take(cluster, "app");

    let order = fleet.cli().backup_ok("a1/app");
    let artifact_id = order["artifact_id"].as_str().unwrap();
    let manifest = check_artifact(&fleet, "a1", "app", artifact_id, cluster);
    assert!(
        manifest["tables"]
            .as_array()
            .unwrap()
            .iter()
            .any(|t| t["table"] == "Odd \"Name\" ü" && t["rows"] == 200),
        "quoted table name in manifest: {manifest:#}"
    );

    // The fleet view knows about the new backup.
    let dbs = fleet.cli().json(&["databases"]);
    let app = dbs
        .as_array()
        .unwrap()
        .iter()
        .find(|d| d["id"] == "a1/app")
        .unwrap_or_else(|| panic!("a1/app not listed: {dbs:#}"));
    assert_eq!(app["last_artifact_id"], artifact_id, "{app:#}");

    restore_new_name_ok(&fleet, artifact_id, "copy", &manifest);
    assert_same_data(&source, &DbSnapshot::take(cluster, "copy"));
    // The source was only read.
    assert_same_data(&source, &DbSnapshot::take(cluster, "app"));
}

#[test]
fn chinook_backup_restores_identically_into_new_database() {
    if chinook_sql().is_none() {
        say_skipped("../shared/datasets not present; chinook round trip not run");
        return;
    }
    let _heavy = heavy_test_lock();
    let fleet = Fleet::builder("chinook")
        .database("chinook")
        .cluster_setup(|cluster| {
            assert!(load_chinook(cluster), "chinook dataset vanished");
        })
        .build();
    let cluster = fleet.cluster(1);
    let source = DbSnapshot::take(cluster, "chinook");
    assert!(
        source.total_rows() > 10_000,
        "chinook loaded: {} rows",
        source.total_rows()
    );

    let order = fleet.cli().backup_ok("a1/chinook");
    let artifact_id = order["artifact_id"].as_str().unwrap();
    let manifest = check_artifact(&fleet, "a1", "chinook", artifact_id, cluster);
    assert_eq!(
        manifest["tables"].as_array().unwrap().len(),
        11,
        "{manifest:#}"
    );

    restore_new_name_ok(&fleet, artifact_id, "chinook_restored", &manifest);
    assert_same_data(&source, &DbSnapshot::take(cluster, "chinook_restored"));
}

#[test]
fn replace_restore_brings_back_deleted_rows_and_needs_confirmation() {
    let fleet = Fleet::builder("replace").database("app").build();
    fleet.open_maintenance_around_the_clock();
    let cluster = fleet.cluster(1);
    load_rich_fixture(cluster, "app");
    // The replaced database keeps its owner (README).
    cluster.psql(
        "postgres",
        "CREATE ROLE app_owner; ALTER DATABASE app OWNER TO app_owner",
    );
    let at_backup = DbSnapshot::take(cluster, "app");
    let order = fleet.cli().backup_ok("a1/app");
    let artifact_id = order["artifact_id"].as_str().unwrap().to_owned();

    // Damage after the backup: deleted rows (cascading), a dropped table, new rows, a moved
    // sequence.
    cluster.psql_script(
        "app",
        "DELETE FROM customers WHERE id % 3 = 0;\n\
         DELETE FROM measurements WHERE taken_on >= '2024-01-01';\n\
         DROP TABLE \"Mixed Case\".\"Odd \"\"Name\"\" ü\";\n\
         INSERT INTO empty_table VALUES (1, 'not in the backup');\n\
         SELECT nextval('invoice_no');\n",
    );
    let damaged = DbSnapshot::take(cluster, "app");
    assert!(at_backup.first_difference(&damaged).is_some());
    let databases_before = cluster.databases();

    // Without --yes and without a TTY there is nobody to confirm: refused, nothing changes.
    let before = FleetState::read(fleet.cli());
    let refused = fleet
        .cli()
        .run(&["restore", &artifact_id, "--replace", "--wait"]);
    assert_eq!(
        refused.code, 2,
        "replace without --yes must be refused: {refused}"
    );
    assert!(
        refused.stderr.contains("--yes"),
        "the refusal should say to pass --yes: {refused}"
    );
    assert_eq!(
        FleetState::read(fleet.cli()),
        before,
        "a refused restore created an order"
    );
    assert_same_data(&damaged, &DbSnapshot::take(cluster, "app"));

    let out = fleet
        .cli()
        .run(&["restore", &artifact_id, "--replace", "--yes", "--wait"]);
    assert_eq!(out.code, 0, "replace restore failed: {out}");
    let order = out.json();
    assert_eq!(order["state"], "succeeded", "{order:#}");
    assert_eq!(order["kind"], "restore", "{order:#}");
    assert_same_data(&at_backup, &DbSnapshot::take(cluster, "app"));
    assert_eq!(
        cluster.query_value(
            "postgres",
            "SELECT pg_get_userbyid(datdba) FROM pg_database WHERE datname = 'app'"
        ),
        "app_owner",
        "owner of the replaced database"
    );
    // The replaced database is gone, not left behind under another name.
    assert_eq!(
        cluster.databases(),
        databases_before,
        "databases after a replace restore"
    );
}

#[test]
fn corrupted_artifact_is_refused_and_nothing_is_touched() {
    let fleet = Fleet::builder("corrupt").database("app").build();
    fleet.open_maintenance_around_the_clock();
    let cluster = fleet.cluster(1);
    load_rich_fixture(cluster, "app");
    let order = fleet.cli().backup_ok("a1/app");
    let artifact_id = order["artifact_id"].as_str().unwrap().to_owned();
    let dump = fleet.artifact_dir("a1", &artifact_id).join(DUMP_FILE);
    flip_middle_byte(&dump);

    // A later change, so that a restore of the backup would be visible.
    cluster.psql("app", "DELETE FROM orders WHERE id <= 100");
    let snapshot = DbSnapshot::take(cluster, "app");
    let databases = cluster.databases();

    for args in [
        vec![
            "restore",
            artifact_id.as_str(),
            "--new-name",
            "copy",
            "--wait",
        ],
        vec![
            "restore",
            artifact_id.as_str(),
            "--replace",
            "--yes",
            "--wait",
        ],
    ] {
        let out = fleet.cli().run(&args);
        assert!(
            out.code == 1 || out.code == 2,
            "a restore of a corrupted artifact must fail or be refused: {out}"
        );
        if out.code == 1 {
            let order = out.json();
            assert_eq!(order["state"], "failed", "{order:#}");
        } else {
            assert!(out.stderr.contains("error"), "errors go to stderr: {out}");
        }
        let text = all_text(&out);
        assert!(
            ["checksum", "corrupt", "sha256", "sha-256"]
                .iter()
                .any(|w| text.contains(w)),
            "the error should say the artifact is corrupt (checksum mismatch): {out}"
        );
        assert!(
            !cluster.database_exists("copy"),
            "a database was created: {out}"
        );
        assert_eq!(
            cluster.databases(),
            databases,
            "databases changed after {out}"
        );
        assert_same_data(&snapshot, &DbSnapshot::take(cluster, "app"));
    }
}

#[test]
fn artifact_restores_onto_another_agents_server() {
    let fleet = Fleet::builder("cross-agent")
        .agents(2)
        .database("app")
        .build();
    load_rich_fixture(fleet.cluster(1), "app");
    fleet.cluster(2).psql(
        "app",
        "CREATE TABLE unrelated (v int); INSERT INTO unrelated VALUES (7)",
    );
    let source = DbSnapshot::take(fleet.cluster(1), "app");
    let target_before = DbSnapshot::take(fleet.cluster(2), "app");

    let order = fleet.cli().backup_ok("a1/app");
    let artifact_id = order["artifact_id"].as_str().unwrap();
    let out = fleet.cli().run(&[
        "restore",
        artifact_id,
        "--target",
        "a2/app",
        "--new-name",
        "from_a1",
        "--wait",
    ]);
    assert_eq!(out.code, 0, "cross-agent restore failed: {out}");
    assert_eq!(
        out.json()["database"],
        "a2/app",
        "the order runs on the target: {out}"
    );
    assert!(
        !fleet.cluster(1).database_exists("from_a1"),
        "restored on the artifact's own server instead of the target's"
    );
    assert_same_data(&source, &DbSnapshot::take(fleet.cluster(2), "from_a1"));
    assert_same_data(&target_before, &DbSnapshot::take(fleet.cluster(2), "app"));
}

fn time_of(order: &Value, field: &str) -> chrono::DateTime<chrono::Utc> {
    let text = order[field]
        .as_str()
        .unwrap_or_else(|| panic!("order without {field}: {order:#}"));
    chrono::DateTime::parse_from_rfc3339(text)
        .unwrap_or_else(|e| panic!("{field} {text:?}: {e}"))
        .with_timezone(&chrono::Utc)
}

#[test]
fn replace_restores_of_one_database_run_one_at_a_time() {
    let fleet = Fleet::builder("serial-replace").database("app").build();
    fleet.open_maintenance_around_the_clock();
    let cluster = fleet.cluster(1);
    load_rich_fixture(cluster, "app");
    let state_a = DbSnapshot::take(cluster, "app");
    let artifact_a = fleet.cli().backup_ok("a1/app")["artifact_id"]
        .as_str()
        .unwrap()
        .to_owned();
    // Refresh the materialized view too: pg_restore recomputes it from the restored tables,
    // so a stale one in the source would differ from any restore of it.
    cluster.psql(
        "app",
        "DELETE FROM orders WHERE id % 2 = 0; REFRESH MATERIALIZED VIEW sales_by_customer",
    );
    let state_b = DbSnapshot::take(cluster, "app");
    let artifact_b = fleet.cli().backup_ok("a1/app")["artifact_id"]
        .as_str()
        .unwrap()
        .to_owned();
    let databases = cluster.databases();

    // Two destructive orders for one database, submitted back to back: the second must wait
    // for the first (at most one mutating order per database at a time).
    let first = fleet
        .cli()
        .json(&["restore", &artifact_a, "--replace", "--yes"]);
    let second = fleet
        .cli()
        .json(&["restore", &artifact_b, "--replace", "--yes"]);
    let first = fleet.wait_order(first["id"].as_str().unwrap(), &["succeeded"], ORDER_TIMEOUT);
    let second = fleet.wait_order(
        second["id"].as_str().unwrap(),
        &["succeeded"],
        ORDER_TIMEOUT,
    );

    let (earlier, later) = if time_of(&first, "started_at") <= time_of(&second, "started_at") {
        (&first, &second)
    } else {
        (&second, &first)
    };
    assert!(
        time_of(later, "started_at") >= time_of(earlier, "finished_at"),
        "two replace restores of a1/app ran at the same time:\n{earlier:#}\n{later:#}"
    );
    let expected = if later["id"] == second["id"] {
        &state_b
    } else {
        &state_a
    };
    assert_same_data(expected, &DbSnapshot::take(cluster, "app"));
    assert_eq!(cluster.databases(), databases, "databases left behind");
}

#[test]
fn restore_onto_a_server_without_the_owner_role_succeeds_or_leaves_nothing() {
    let fleet = Fleet::builder("missing-role")
        .agents(2)
        .database("app")
        .build();
    let source = fleet.cluster(1);
    source.psql("postgres", "CREATE ROLE app_owner LOGIN");
    source.psql(
        "app",
        "CREATE TABLE owned (id int PRIMARY KEY, v text); \
         INSERT INTO owned SELECT g, 'v' || g FROM generate_series(1, 100) g; \
         ALTER TABLE owned OWNER TO app_owner",
    );
    let snapshot = DbSnapshot::take(source, "app");
    let artifact = fleet.cli().backup_ok("a1/app")["artifact_id"]
        .as_str()
        .unwrap()
        .to_owned();
    let target = fleet.cluster(2);
    let databases = target.databases();

    // The target server has no role app_owner: the restore either copes (and the data is
    // all there) or fails saying so, and then the new database is dropped again.
    let out = fleet.cli().run(&[
        "restore",
        &artifact,
        "--target",
        "a2/app",
        "--new-name",
        "copy",
        "--wait",
    ]);
    match out.code {
        0 => assert_same_data(&snapshot, &DbSnapshot::take(target, "copy")),
        1 => {
            let error = out.json()["error"].as_str().unwrap_or_default().to_owned();
            assert!(
                error.contains("app_owner"),
                "the error should name the role: {out}"
            );
            assert_eq!(
                target.databases(),
                databases,
                "a failed restore left a database"
            );
        }
        _ => panic!("unexpected exit code: {out}"),
    }
}
