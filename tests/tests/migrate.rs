//! Safe migrations end to end (real PostgreSQL, agents, coordinator and CLI): a good migration
//! of Chinook waits for its maintenance window, takes a verified pre-migration backup, applies
//! every file, is recorded and leaves nothing pending; a migration failing in its third file
//! leaves the first two applied and the third rolled back; a failed post-check with
//! auto-restore brings back the exact pre-migration data; a changed applied file is refused,
//! and so is a deny-listed statement in production unless glass is broken; and a rollout over
//! four databases whose second wave fails stops there, leaving the rest untouched.

use std::path::{Path, PathBuf};
use std::time::Duration;

use serde_json::Value;
use warden_tests::fixtures::{chinook_sql, load_chinook, load_rich_fixture, say_skipped};
use warden_tests::{CliOutput, DbSnapshot, Fleet, PgCluster, assert_same_data, heavy_test_lock};

/// How long a migration may take to leave `held` once its window opened.
const START_TIMEOUT: Duration = Duration::from_secs(60);

// ---- helpers --------------------------------------------------------------------------------

/// Writes migration files into a new directory `name` of the fleet's test directory.
fn migrations(fleet: &Fleet, name: &str, files: &[(&str, &str)]) -> PathBuf {
    let dir = fleet.dir().join(name);
    std::fs::create_dir_all(&dir).unwrap_or_else(|e| panic!("mkdir {}: {e}", dir.display()));
    for (file, sql) in files {
        write(&dir.join(file), sql);
    }
    dir
}

fn write(path: &Path, text: &str) {
    std::fs::write(path, text).unwrap_or_else(|e| panic!("write {}: {e}", path.display()));
}

fn path_str(dir: &Path) -> String {
    dir.display().to_string()
}

/// `warden migrate DB --dir DIR --wait ARGS…`.
fn migrate(fleet: &Fleet, database: &str, dir: &Path, args: &[&str]) -> CliOutput {
    let dir = path_str(dir);
    let mut all = vec!["migrate", database, "--dir", &dir, "--wait"];
    all.extend_from_slice(args);
    fleet.cli().run(&all)
}

/// A migration that must succeed. Returns the order.
fn migrate_ok(fleet: &Fleet, database: &str, dir: &Path) -> Value {
    let out = migrate(fleet, database, dir, &["--reason", "ship it"]);
    assert_eq!(
        out.code,
        0,
        "migration of {database} failed: {out}\n{}",
        fleet.logs()
    );
    let order = out.json().clone();
    assert_eq!(order["kind"], "migrate", "{order:#}");
    assert_eq!(order["state"], "succeeded", "{order:#}");
    order
}

/// A migration that must fail (exit 1, order failed). Returns the order.
fn migrate_fails(fleet: &Fleet, database: &str, dir: &Path) -> Value {
    let out = migrate(fleet, database, dir, &["--reason", "ship it"]);
    assert_eq!(
        out.code,
        1,
        "a failing migration must exit 1: {out}\n{}",
        fleet.logs()
    );
    let order = out.json().clone();
    assert_eq!(order["kind"], "migrate", "{order:#}");
    assert_eq!(order["state"], "failed", "{order:#}");
    order
}

/// `warden migrate status DB --dir DIR`, which must exit `code`. Returns its JSON.
fn status(fleet: &Fleet, database: &str, dir: &Path, code: i32) -> Value {
    let dir = path_str(dir);
    let out = fleet
        .cli()
        .run(&["migrate", "status", database, "--dir", &dir]);
    assert_eq!(out.code, code, "migrate status: {out}\n{}", fleet.logs());
    out.json().clone()
}

/// The versions of a list of migrations in JSON (`[{version, name, …}]`).
fn versions(list: &Value) -> Vec<String> {
    list.as_array()
        .unwrap_or_else(|| panic!("expected a list of migrations: {list:#}"))
        .iter()
        .map(|m| m["version"].as_str().unwrap_or_default().to_owned())
        .collect()
}

/// (version, sha256) rows of the tracking table of `db`, in version order.
fn recorded(cluster: &PgCluster, db: &str) -> Vec<(String, String)> {
    value(
        cluster,
        db,
        "SELECT version || '|' || sha256 FROM warden.schema_migrations ORDER BY version::bigint",
    )
    .lines()
    .filter_map(|l| l.split_once('|'))
    .map(|(v, s)| (v.to_owned(), s.to_owned()))
    .collect()
}

fn sha256_hex(text: &str) -> String {
    use sha2::Digest as _;
    hex::encode(sha2::Sha256::digest(text.as_bytes()))
}

/// The one value `sql` returns in `db`.
fn value(cluster: &PgCluster, db: &str, sql: &str) -> String {
    cluster.psql(db, sql).trim().to_owned()
}

fn table_exists(cluster: &PgCluster, db: &str, table: &str) -> bool {
    value(
        cluster,
        db,
        &format!("SELECT to_regclass('{table}') IS NOT NULL"),
    ) == "t"
}

/// `warden apply -f` of `text`, which must succeed.
fn apply(fleet: &Fleet, text: &str) {
    let path = fleet.dir().join("fleet.toml");
    write(&path, text);
    let applied = fleet.cli().json(&["apply", "-f", &path_str(&path)]);
    assert_eq!(applied["applied"], true, "apply of\n{text}\n{applied:#}");
}

/// The artifact `id` as `warden artifacts --all` lists it.
fn artifact(fleet: &Fleet, id: &str) -> Value {
    let all = fleet.cli().artifacts(None, true);
    all.iter()
        .find(|a| a["id"] == id)
        .cloned()
        .unwrap_or_else(|| panic!("artifact {id} is not listed: {all:#?}"))
}

/// Migrate orders of `database`, oldest first.
fn migrate_orders(fleet: &Fleet, database: &str) -> Vec<Value> {
    let mut orders: Vec<Value> = fleet
        .cli()
        .orders()
        .into_iter()
        .filter(|o| o["kind"] == "migrate" && o["database"] == database)
        .collect();
    orders.sort_by_key(|o| o["id"].as_str().unwrap_or_default().to_owned());
    orders
}

/// The pre-migration artifact of a migrate order, checked: a complete, read-back verified
/// backup of the same database taken for this migration.
fn pre_migration_artifact(fleet: &Fleet, order: &Value) -> Value {
    let id = order["migration"]["pre_migration_artifact_id"]
        .as_str()
        .unwrap_or_else(|| panic!("no pre-migration artifact: {order:#}"));
    let artifact = artifact(fleet, id);
    assert_eq!(artifact["trigger"], "pre-migration", "{artifact:#}");
    assert_eq!(
        artifact["verified"], true,
        "checksum read back: {artifact:#}"
    );
    assert_eq!(artifact["database"], order["database"], "{artifact:#}");
    artifact
}

// ---- the tests the issue lists ----------------------------------------------------------------

/// The good migration of Chinook (the rich fixture without the shared datasets): four files,
/// one of them without a transaction (CREATE INDEX CONCURRENTLY).
fn chinook_migrations(chinook: bool) -> Vec<(&'static str, &'static str)> {
    if chinook {
        vec![
            (
                "0001_create_track_rating.sql",
                "CREATE TABLE track_rating (\n    track_id int NOT NULL REFERENCES track (track_id),\n    stars smallint NOT NULL CHECK (stars BETWEEN 1 AND 5),\n    rated_at timestamptz NOT NULL DEFAULT now()\n);\n",
            ),
            (
                "0002_add_artist_country.sql",
                "-- Backfilled for the artists we know.\nALTER TABLE artist ADD COLUMN country text;\nUPDATE artist SET country = 'GB' WHERE name IN ('Led Zeppelin', 'Queen', 'Iron Maiden');\n",
            ),
            (
                "0003_album_summary_view.sql",
                "CREATE VIEW album_summary AS\n    SELECT a.album_id, a.title, count(t.track_id) AS tracks, sum(t.milliseconds) AS total_ms\n    FROM album a LEFT JOIN track t ON t.album_id = a.album_id\n    GROUP BY a.album_id, a.title;\n",
            ),
            (
                "0004_track_composer_index.sql",
                "-- warden:no-transaction\nCREATE INDEX CONCURRENTLY track_composer_idx ON track (composer);\n",
            ),
        ]
    } else {
        vec![
            (
                "0001_create_product_rating.sql",
                "CREATE TABLE product_rating (\n    sku text NOT NULL REFERENCES products (sku),\n    stars smallint NOT NULL CHECK (stars BETWEEN 1 AND 5)\n);\n",
            ),
            (
                "0002_add_customer_country.sql",
                "ALTER TABLE customers ADD COLUMN country text;\nUPDATE customers SET country = 'GB' WHERE id % 3 = 0;\n",
            ),
            (
                "0003_product_summary_view.sql",
                "CREATE VIEW product_summary AS SELECT sku, title, price FROM products WHERE price > 10;\n",
            ),
            (
                "0004_customer_name_index.sql",
                "-- warden:no-transaction\nCREATE INDEX CONCURRENTLY customers_lower_name_idx ON customers (lower(name));\n",
            ),
        ]
    }
}

#[test]
fn good_migration_on_chinook_waits_for_its_window_applies_and_leaves_nothing_pending() {
    let chinook = chinook_sql().is_some();
    let _heavy = chinook.then(heavy_test_lock);
    let builder = Fleet::builder("migrate-chinook");
    let (fleet, db) = if chinook {
        let fleet = builder
            .database("chinook")
            .cluster_setup(|cluster| assert!(load_chinook(cluster), "chinook vanished"))
            .build();
        (fleet, "chinook")
    } else {
        say_skipped(
            "../shared/datasets not present: the good migration runs on the generated rich fixture instead of Chinook",
        );
        let fleet = builder.database("app").build();
        load_rich_fixture(fleet.cluster(1), "app");
        (fleet, "app")
    };
    let cluster = fleet.cluster(1);
    let database = format!("a1/{db}");
    let files = chinook_migrations(chinook);
    let dir = migrations(&fleet, "good", &files);

    // Before anything ran, everything is pending and the database has no tracking table.
    let before = status(&fleet, &database, &dir, 0);
    assert_eq!(before["database"], database.as_str(), "{before:#}");
    assert_eq!(
        versions(&before["pending"]),
        ["0001", "0002", "0003", "0004"]
    );
    assert_eq!(versions(&before["applied"]), Vec::<String>::new());
    assert!(!table_exists(cluster, db, "warden.schema_migrations"));

    // No window is open: --no-wait refuses and queues nothing; without it the order waits.
    let path = path_str(&dir);
    let orders_before = fleet.cli().orders().len();
    let refused = fleet
        .cli()
        .run(&["migrate", &database, "--dir", &path, "--no-wait"]);
    assert_eq!(refused.code, 2, "{refused}");
    assert!(
        refused.stderr.contains("outside maintenance windows"),
        "the refusal says why: {refused}"
    );
    assert_eq!(
        fleet.cli().orders().len(),
        orders_before,
        "--no-wait queued nothing"
    );
    let held = fleet.cli().json(&[
        "migrate",
        &database,
        "--dir",
        &path,
        "--reason",
        "release 42",
    ]);
    let order_id = held["id"].as_str().expect("order id").to_owned();
    let held = fleet.cli().wait_order(&order_id, &["held"], START_TIMEOUT);
    assert!(
        held["phase"]
            .as_str()
            .unwrap_or_default()
            .contains("outside maintenance windows"),
        "held for the window: {held:#}"
    );
    assert!(
        !table_exists(cluster, db, "warden.schema_migrations"),
        "nothing ran yet"
    );

    // The window opens: the pre-migration backup is taken, then the files are applied.
    fleet.open_maintenance_around_the_clock();
    let order = fleet
        .cli()
        .wait_order(&order_id, &["succeeded"], START_TIMEOUT * 3);
    let migration = &order["migration"];
    assert_eq!(
        versions(&migration["applied"]),
        ["0001", "0002", "0003", "0004"],
        "{order:#}"
    );
    assert_eq!(
        versions(&migration["pending"]),
        Vec::<String>::new(),
        "{order:#}"
    );
    let artifact = pre_migration_artifact(&fleet, &order);
    assert_eq!(
        order["safety_backup_order_id"], artifact["order_id"],
        "the migration's safety backup is its pre-migration artifact: {order:#}"
    );

    // Recorded with the files' checksums, and the schema changed as the files say.
    let expected: Vec<(String, String)> = files
        .iter()
        .map(|(name, sql)| (name[..4].to_owned(), sha256_hex(sql)))
        .collect();
    assert_eq!(recorded(cluster, db), expected);
    let (table, view, index) = if chinook {
        ("track_rating", "album_summary", "track_composer_idx")
    } else {
        (
            "product_rating",
            "product_summary",
            "customers_lower_name_idx",
        )
    };
    for relation in [table, view, index] {
        assert!(
            table_exists(cluster, db, relation),
            "{relation} exists after the migration"
        );
    }
    assert_eq!(
        value(
            cluster,
            db,
            &format!("SELECT indisvalid FROM pg_index WHERE indexrelid = '{index}'::regclass")
        ),
        "t",
        "the concurrently built index is valid"
    );

    // Nothing pending, nothing changed.
    let after = status(&fleet, &database, &dir, 0);
    assert_eq!(
        versions(&after["pending"]),
        Vec::<String>::new(),
        "{after:#}"
    );
    assert_eq!(
        versions(&after["changed"]),
        Vec::<String>::new(),
        "{after:#}"
    );
    assert_eq!(
        versions(&after["applied"]),
        ["0001", "0002", "0003", "0004"],
        "{after:#}"
    );

    // Running it again applies nothing and says all four were applied before.
    let again = migrate_ok(&fleet, &database, &dir);
    assert_eq!(
        versions(&again["migration"]["applied"]),
        Vec::<String>::new(),
        "{again:#}"
    );
    assert_eq!(
        versions(&again["migration"]["already_applied"]).len(),
        4,
        "{again:#}"
    );
    assert_eq!(recorded(cluster, db), expected);

    // The audit log ties the versions to the backup and the operator.
    let audit = fleet.cli().audit();
    let done = audit
        .iter()
        .find(|e| e["action"] == "order.succeeded" && e["params"]["order_id"] == order_id.as_str())
        .unwrap_or_else(|| panic!("no order.succeeded event for {order_id}: {audit:#?}"));
    assert_eq!(
        done["params"]["pre_migration_artifact_id"], artifact["id"],
        "{done:#}"
    );
    let applied = done["params"]["applied"].to_string();
    for (name, _) in &files {
        assert!(applied.contains(&name[..4]), "{name} in {done:#}");
    }
    let submitted = audit
        .iter()
        .find(|e| e["action"] == "order.submitted" && e["params"]["order_id"] == order_id.as_str())
        .unwrap_or_else(|| panic!("no order.submitted event for {order_id}"));
    assert_eq!(submitted["params"]["reason"], "release 42", "{submitted:#}");
    assert!(
        !submitted.to_string().contains("CREATE"),
        "the audit log records checksums, not SQL: {submitted:#}"
    );
}

#[test]
fn a_migration_failing_in_its_third_file_keeps_the_first_two_and_rolls_back_the_third() {
    let fleet = Fleet::builder("migrate-third-fails")
        .database("app")
        .build();
    let cluster = fleet.cluster(1);
    load_rich_fixture(cluster, "app");
    fleet.open_maintenance_around_the_clock();
    let dir = migrations(
        &fleet,
        "third-fails",
        &[
            (
                "0001_create_shipments.sql",
                "CREATE TABLE shipments (id serial PRIMARY KEY, order_id bigint REFERENCES orders (id));\n",
            ),
            (
                "0002_add_products_weight.sql",
                "ALTER TABLE products ADD COLUMN weight_grams int;\nUPDATE products SET weight_grams = 100;\n",
            ),
            (
                "0003_broken.sql",
                "CREATE TABLE half_done (id int);\nALTER TABLE products ADD COLUMN colour text;\nINSERT INTO no_such_table VALUES (1);\n",
            ),
            (
                "0004_never_reached.sql",
                "CREATE TABLE never_reached (id int);\n",
            ),
        ],
    );
    let order = migrate_fails(&fleet, "a1/app", &dir);
    let error = order["error"].as_str().unwrap_or_default();
    assert!(
        error.contains("0003_broken.sql"),
        "the error names the file: {order:#}"
    );
    assert!(
        error.contains("no_such_table"),
        "the error has the SQL error: {order:#}"
    );
    let migration = &order["migration"];
    assert_eq!(
        versions(&migration["applied"]),
        ["0001", "0002"],
        "{order:#}"
    );
    assert_eq!(migration["failed_version"], "0003", "{order:#}");
    assert_eq!(
        versions(&migration["pending"]),
        ["0003", "0004"],
        "{order:#}"
    );
    let artifact = pre_migration_artifact(&fleet, &order);
    let restore = migration["restore_command"].as_str().unwrap_or_default();
    assert!(
        restore.starts_with("warden restore ")
            && restore.contains(artifact["id"].as_str().unwrap_or("?"))
            && restore.contains("--replace"),
        "the way back is spelled out: {order:#}"
    );

    // The first two are applied and recorded; nothing of the third is left.
    assert_eq!(
        recorded(cluster, "app")
            .into_iter()
            .map(|(v, _)| v)
            .collect::<Vec<_>>(),
        ["0001", "0002"]
    );
    assert!(table_exists(cluster, "app", "shipments"));
    assert_eq!(
        value(
            cluster,
            "app",
            "SELECT count(*) FROM products WHERE weight_grams = 100"
        ),
        "500"
    );
    assert!(
        !table_exists(cluster, "app", "half_done"),
        "the third file rolled back"
    );
    assert_eq!(
        value(
            cluster,
            "app",
            "SELECT count(*) FROM information_schema.columns WHERE table_name = 'products' AND column_name = 'colour'"
        ),
        "0",
        "the third file rolled back"
    );
    assert!(!table_exists(cluster, "app", "never_reached"));
    let now = status(&fleet, "a1/app", &dir, 0);
    assert_eq!(versions(&now["pending"]), ["0003", "0004"], "{now:#}");
}

#[test]
fn a_failed_post_check_with_auto_restore_brings_back_the_exact_pre_migration_data() {
    let fleet = Fleet::builder("migrate-auto-restore")
        .database("app")
        .build();
    let cluster = fleet.cluster(1);
    load_rich_fixture(cluster, "app");
    apply(
        &fleet,
        r#"
[[window]]
name = "around-the-clock"
kind = "maintenance"
timezone = "UTC"
weekly = "daily 00:00-24:00"

[migrate]
on_check_failure = "restore"

[[checks]]
name = "prices_are_sane"
selector = "database=app"
sql = "SELECT coalesce(max(price), 0) < 100000 FROM products"
"#,
    );
    let before = DbSnapshot::take(cluster, "app");
    // The migration itself succeeds; what it does to prices fails the check.
    let dir = migrations(
        &fleet,
        "bad-data",
        &[
            (
                "0001_add_price_cents.sql",
                "ALTER TABLE products ADD COLUMN cents bigint;\n",
            ),
            (
                "0002_prices_in_cents.sql",
                "UPDATE products SET price = price * 100, cents = (price * 100)::bigint;\n",
            ),
        ],
    );
    let order = migrate_fails(&fleet, "a1/app", &dir);
    let migration = &order["migration"];
    assert_eq!(
        versions(&migration["applied"]),
        ["0001", "0002"],
        "{order:#}"
    );
    assert_eq!(migration["restored"], true, "{order:#}");
    let checks = migration["checks"].as_array().cloned().unwrap_or_default();
    let failed: Vec<&Value> = checks.iter().filter(|c| c["passed"] == false).collect();
    assert_eq!(failed.len(), 1, "one check failed: {order:#}");
    assert_eq!(failed[0]["name"], "prices_are_sane", "{order:#}");
    let error = order["error"].as_str().unwrap_or_default();
    assert!(error.contains("prices_are_sane"), "{order:#}");
    let artifact = pre_migration_artifact(&fleet, &order);
    assert!(
        error.contains(artifact["id"].as_str().unwrap_or("?")),
        "the error names the restored backup: {order:#}"
    );

    // Exactly the data of before the migration, tracking table included (it did not exist).
    let after = DbSnapshot::take(cluster, "app");
    assert_same_data(&before, &after);
    assert!(!table_exists(cluster, "app", "warden.schema_migrations"));
    let now = status(&fleet, "a1/app", &dir, 0);
    assert_eq!(versions(&now["pending"]), ["0001", "0002"], "{now:#}");
}

#[test]
fn a_changed_applied_file_and_a_deny_listed_statement_in_prod_are_refused() {
    let fleet = Fleet::builder("migrate-refusals")
        .agent_label("env", "prod")
        .database("app")
        .build();
    let cluster = fleet.cluster(1);
    load_rich_fixture(cluster, "app");
    fleet.open_maintenance_around_the_clock();
    let first = "CREATE TABLE coupons (code text PRIMARY KEY);\n";
    let dir = migrations(&fleet, "edited", &[("0001_coupons.sql", first)]);
    migrate_ok(&fleet, "a1/app", &dir);

    // Someone edits the applied file and adds the next one.
    write(
        &dir.join("0001_coupons.sql"),
        "CREATE TABLE coupons (code text PRIMARY KEY, pct int);\n",
    );
    write(
        &dir.join("0002_coupon_uses.sql"),
        "CREATE TABLE coupon_uses (code text REFERENCES coupons (code));\n",
    );
    let now = status(&fleet, "a1/app", &dir, 2);
    let changed = now["changed"].as_array().cloned().unwrap_or_default();
    assert_eq!(changed.len(), 1, "{now:#}");
    assert_eq!(changed[0]["version"], "0001", "{now:#}");
    assert_eq!(
        changed[0]["recorded_sha256"],
        sha256_hex(first).as_str(),
        "{now:#}"
    );
    let order = migrate_fails(&fleet, "a1/app", &dir);
    let error = order["error"].as_str().unwrap_or_default();
    assert!(error.contains("0001_coupons.sql"), "{order:#}");
    assert!(
        !table_exists(cluster, "app", "coupon_uses"),
        "nothing after the change was applied"
    );
    assert_eq!(recorded(cluster, "app").len(), 1);

    // In prod, a deny-listed statement is refused before anything is queued...
    let orders_before = fleet.cli().orders().len();
    let wipe = migrations(
        &fleet,
        "wipe",
        &[
            ("0001_coupons.sql", first),
            (
                "0002_clear_orders.sql",
                "-- start over\nTRUNCATE orders CASCADE;\n",
            ),
        ],
    );
    let path = path_str(&wipe);
    let refused = fleet.cli().run(&[
        "migrate", "a1/app", "--dir", &path, "--wait", "--reason", "clean up",
    ]);
    assert_eq!(refused.code, 2, "{refused}");
    for needle in ["0002_clear_orders.sql", "TRUNCATE", "--emergency"] {
        assert!(
            refused.stderr.contains(needle),
            "the refusal mentions {needle}: {refused}"
        );
    }
    assert_eq!(
        fleet.cli().orders().len(),
        orders_before,
        "nothing was queued"
    );
    assert_ne!(value(cluster, "app", "SELECT count(*) FROM orders"), "0");
    let audit = fleet.cli().audit();
    assert!(
        audit.iter().any(|e| e["outcome"]
            .as_str()
            .unwrap_or_default()
            .contains("TRUNCATE")),
        "the refusal is audited"
    );

    // ...and runs when an admin breaks glass, with the reason audited.
    let out = fleet.cli().run(&[
        "migrate",
        "a1/app",
        "--dir",
        &path,
        "--wait",
        "--emergency",
        "--reason",
        "GDPR erasure, ticket 7",
    ]);
    assert_eq!(out.code, 0, "{out}\n{}", fleet.logs());
    assert_eq!(value(cluster, "app", "SELECT count(*) FROM orders"), "0");
    let audit = fleet.cli().audit();
    assert!(
        audit.iter().any(|e| e["action"] == "order.emergency"
            && e["params"]["reason"] == "GDPR erasure, ticket 7"),
        "break glass is audited"
    );

    // The deny-listed file is applied now; it does not block the next migration of the
    // directory, which needs no glass.
    write(
        &wipe.join("0003_coupon_codes_upper.sql"),
        "UPDATE coupons SET code = upper(code);\n",
    );
    let order = migrate_ok(&fleet, "a1/app", &wipe);
    assert_eq!(
        versions(&order["migration"]["applied"]),
        ["0003"],
        "{order:#}"
    );
    assert_eq!(order["emergency"], false, "{order:#}");
}

#[test]
fn a_rollout_whose_second_wave_fails_halts_there_and_leaves_the_rest_untouched() {
    let names = ["r1", "r2", "r3", "r4"];
    let mut builder = Fleet::builder("migrate-rollout");
    for name in names {
        builder = builder.database(name);
    }
    let fleet = builder.build();
    let cluster = fleet.cluster(1);
    for name in names {
        cluster.psql_script(name, "CREATE TABLE items (id int PRIMARY KEY, label text);\nINSERT INTO items SELECT g, 'item ' || g FROM generate_series(1, 100) g;\n");
    }
    // r2 already has what the migration creates, so its migration fails.
    cluster.psql_script("r2", "CREATE TABLE item_tags (id int);\n");
    fleet.open_maintenance_around_the_clock();
    let dir = migrations(
        &fleet,
        "rollout",
        &[
            (
                "0001_item_price.sql",
                "ALTER TABLE items ADD COLUMN price numeric(10, 2);\n",
            ),
            (
                "0002_item_tags.sql",
                "CREATE TABLE item_tags (item_id int REFERENCES items (id), tag text);\n",
            ),
        ],
    );
    let path = path_str(&dir);
    let out = fleet.cli().run(&[
        "migrate",
        "--selector",
        "tier=test",
        "--dir",
        &path,
        "--waves",
        "1,50%,100%",
        "--wait",
        "--reason",
        "pricing",
    ]);
    assert_eq!(
        out.code,
        1,
        "a halted rollout exits 1: {out}\n{}",
        fleet.logs()
    );
    let rollout = out.json().clone();
    let id = rollout["id"].as_str().expect("rollout id").to_owned();
    // The CLI's view is the one `warden rollout ID` gives.
    let rollout = fleet.cli().json(&["rollout", &id]);
    assert_eq!(rollout["state"], "halted", "{rollout:#}");
    assert_eq!(rollout["wave_count"], 3, "{rollout:#}");
    assert_eq!(rollout["current_wave"], 2, "{rollout:#}");
    assert!(
        rollout["error"]
            .as_str()
            .unwrap_or_default()
            .contains("a1/r2"),
        "{rollout:#}"
    );
    let targets = rollout["targets"].as_array().cloned().unwrap_or_default();
    let target = |db: &str| -> Value {
        targets
            .iter()
            .find(|t| t["database"] == db)
            .cloned()
            .unwrap_or_else(|| panic!("{db} not in {rollout:#}"))
    };
    let (t1, t2, t3, t4) = (
        target("a1/r1"),
        target("a1/r2"),
        target("a1/r3"),
        target("a1/r4"),
    );
    assert_eq!(
        (t1["wave"].clone(), t2["wave"].clone()),
        (1.into(), 2.into()),
        "{rollout:#}"
    );
    assert_eq!(
        (t3["wave"].clone(), t4["wave"].clone()),
        (3.into(), 3.into()),
        "{rollout:#}"
    );
    assert_eq!(t1["state"], "succeeded", "{rollout:#}");
    assert_eq!(
        t1["applied"],
        serde_json::json!(["0001", "0002"]),
        "{rollout:#}"
    );
    assert!(t1["pre_migration_artifact_id"].is_string(), "{rollout:#}");
    assert_eq!(t2["state"], "failed", "{rollout:#}");
    assert!(t2["pre_migration_artifact_id"].is_string(), "{rollout:#}");
    for t in [&t3, &t4] {
        assert_eq!(t["state"], "skipped", "{rollout:#}");
        assert_eq!(t["order_id"], Value::Null, "{rollout:#}");
    }

    // r1 migrated; r2 rolled back its failing file; r3 and r4 untouched: no order, no
    // backup, no tracking table.
    assert!(table_exists(cluster, "r1", "item_tags"));
    assert_eq!(recorded(cluster, "r1").len(), 2);
    assert_eq!(
        recorded(cluster, "r2")
            .into_iter()
            .map(|(v, _)| v)
            .collect::<Vec<_>>(),
        ["0001"]
    );
    for db in ["r3", "r4"] {
        assert!(
            !table_exists(cluster, db, "warden.schema_migrations"),
            "{db} untouched"
        );
        assert!(
            migrate_orders(&fleet, &format!("a1/{db}")).is_empty(),
            "{db} got no order"
        );
        assert!(
            fleet
                .cli()
                .artifacts(Some(&format!("a1/{db}")), true)
                .is_empty(),
            "{db} got no backup"
        );
    }
    // The rollout's story is in the audit log.
    let audit = fleet.cli().audit();
    for action in ["rollout.started", "rollout.wave_started", "rollout.halted"] {
        assert!(
            audit.iter().any(|e| e["action"] == action
                && (e["target"].as_str().unwrap_or_default().contains(&id)
                    || e["params"].to_string().contains(&id))),
            "{action} audited for {id}"
        );
    }
    let listed = fleet.cli().json(&["rollouts"]);
    assert!(
        listed
            .as_array()
            .is_some_and(|l| l.iter().any(|r| r["id"] == id.as_str())),
        "{listed:#}"
    );
}
