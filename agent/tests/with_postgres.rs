//! The agent against real PostgreSQL clusters. Drills and restores: a good artifact passes
//! and leaves nothing behind, a damaged or incomplete one fails as corrupt before the server
//! changes, failing checks fail the drill by name, and leftovers of a crash go at startup.
//! Health: every report field is filled, and a stopped cluster reports its error.

mod support;

use std::time::{Duration, Instant};

use sqlx::{Connection, PgConnection};
use tokio_util::sync::CancellationToken;
use warden_agent::copy::phase;
use warden_agent::orders::run_order;
use warden_agent::progress::ProgressReporter;
use warden_agent::{drill, health};
use warden_proto::v1;
use warden_proto::v1::order_result::Outcome;
use warden_proto::v1::order_spec::Params;
use warden_shared::manifest::DUMP_FILE;
use warden_tests::{PgCluster, TestDir, wait_for};

use support::{AGENT, Artifact, Setup, Standby, context, quiet};

fn drill_spec(artifact: &Artifact, checks: &[(&str, &str)]) -> v1::OrderSpec {
    v1::OrderSpec {
        params: Some(Params::Drill(v1::DrillParams {
            artifact_id: artifact.id.clone(),
            artifact_path: artifact.path.clone(),
            sha256: artifact.sha256.clone(),
            checks: checks
                .iter()
                .map(|(name, sql)| v1::DrillCheck {
                    name: (*name).to_owned(),
                    sql: (*sql).to_owned(),
                })
                .collect(),
            source_database: String::new(),
        })),
    }
}

fn restore_spec(artifact: &Artifact, new_name: &str) -> v1::OrderSpec {
    v1::OrderSpec {
        params: Some(Params::Restore(v1::RestoreParams {
            artifact_id: artifact.id.clone(),
            artifact_path: artifact.path.clone(),
            sha256: artifact.sha256.clone(),
            new_name: new_name.to_owned(),
            replace: new_name.is_empty(),
        })),
    }
}

async fn run(setup: &Setup, order_id: &str, spec: v1::OrderSpec) -> v1::OrderResult {
    run_order(
        &setup.ctx,
        Some(&setup.target()),
        order_id,
        Some(spec),
        &quiet(),
        &CancellationToken::new(),
    )
    .await
}

fn phase_names(phases: &[v1::PhaseTiming]) -> Vec<&str> {
    phases.iter().map(|p| p.phase.as_str()).collect()
}

/// Flips one byte in the middle of the artifact's dump.
fn damage_dump(setup: &Setup, artifact: &Artifact) {
    let dump = setup
        .ctx
        .repository
        .local_root()
        .expect("a file repository")
        .join(&artifact.path)
        .join(DUMP_FILE);
    let mut bytes = std::fs::read(&dump).expect("read dump");
    let middle = bytes.len() / 2;
    bytes[middle] ^= 0x40;
    std::fs::write(&dump, bytes).expect("write dump");
}

#[tokio::test]
async fn a_drill_of_a_good_artifact_passes_and_leaves_no_scratch_database() {
    let setup = Setup::new("drill-good");
    let artifact = setup.backup().await;
    let scratch = drill::scratch_database_name(AGENT, &artifact.id);
    // A leftover of an earlier drill of the same artifact is this agent's: it goes first.
    setup.cluster.create_database(&scratch);

    let result = run(
        &setup,
        "o-drill",
        drill_spec(
            &artifact,
            &[
                ("three orders", "SELECT count(*) = 3 FROM orders"),
                ("invoices", "SELECT bool_and(id > 0) FROM billing.invoices"),
            ],
        ),
    )
    .await;
    assert!(result.success, "{}", result.error);
    assert!(!result.artifact_corrupt);
    let Some(Outcome::Drill(outcome)) = result.outcome else {
        panic!("expected a drill outcome, got {:?}", result.outcome);
    };
    assert_eq!(outcome.scratch_database, scratch);
    assert_eq!(
        phase_names(&outcome.phases),
        [
            phase::FETCH,
            phase::VERIFY_CHECKSUM,
            phase::DECOMPRESS,
            phase::PG_RESTORE,
            phase::VERIFY_ROWS,
            phase::CHECKS,
            phase::CLEANUP
        ]
    );
    let before_cleanup: u64 = outcome.phases[..6].iter().map(|p| p.millis).sum();
    assert_eq!(outcome.restore_millis, before_cleanup);
    assert!(outcome.raw_bytes > 0);
    assert_eq!((outcome.tables_verified, outcome.rows_verified), (2, 5));
    let checks: Vec<(&str, bool)> = outcome
        .checks
        .iter()
        .map(|c| (c.name.as_str(), c.passed))
        .collect();
    assert_eq!(checks, [("three orders", true), ("invoices", true)]);

    assert!(
        setup.databases_starting_with("warden_drill_").is_empty(),
        "the scratch database is dropped"
    );
    assert!(
        setup.staged_files().is_empty(),
        "{:?}",
        setup.staged_files()
    );
    assert_eq!(
        setup
            .cluster
            .query_value("app", "SELECT count(*) FROM orders"),
        "3"
    );
}

#[tokio::test]
async fn a_drill_of_a_damaged_dump_fails_as_corrupt_before_the_server_changes() {
    let setup = Setup::new("drill-corrupt");
    let artifact = setup.backup().await;
    damage_dump(&setup, &artifact);
    let before = setup.cluster.databases();

    let result = run(&setup, "o-drill", drill_spec(&artifact, &[])).await;
    assert!(!result.success);
    assert!(result.artifact_corrupt, "{}", result.error);
    assert!(
        result
            .error
            .contains(&format!("artifact {} is corrupt", artifact.id))
            && result.error.contains("sha256 of dump.zst is"),
        "{}",
        result.error
    );
    assert_eq!(setup.cluster.databases(), before, "no database was created");
    assert!(setup.staged_files().is_empty(), "nothing was decompressed");
}

#[tokio::test]
async fn failing_checks_fail_the_drill_and_say_which_and_why() {
    let setup = Setup::new("drill-checks");
    let artifact = setup.backup().await;

    let result = run(
        &setup,
        "o-drill",
        drill_spec(
            &artifact,
            &[
                ("fine", "SELECT true"),
                ("balance", "SELECT sum(total) = 0 FROM orders"),
                ("ledger", "SELECT count(*) > 0 FROM ledger"),
                ("shape", "SELECT 1"),
                ("unknown", "SELECT NULL::boolean"),
                ("writes", "CREATE TABLE scribble (id int)"),
                ("two", "SELECT true; SELECT true"),
            ],
        ),
    )
    .await;
    assert!(!result.success);
    assert!(!result.artifact_corrupt, "the artifact restored fine");
    let error = &result.error;
    assert!(error.starts_with("drill checks failed: "), "{error}");
    for expected in [
        "check \"balance\": returned false",
        "check \"ledger\": SQL error: relation \"ledger\" does not exist;",
        "check \"shape\": returned a value of type INT4",
        "check \"unknown\": returned NULL, not true",
        "check \"writes\": SQL error: cannot execute CREATE TABLE in a read-only transaction;",
        "check \"two\": SQL error: cannot insert multiple commands into a prepared statement",
    ] {
        assert!(error.contains(expected), "{expected:?} missing in: {error}");
    }
    assert!(!error.contains("\"fine\""), "{error}");
    let Some(Outcome::Drill(outcome)) = &result.outcome else {
        panic!("a drill whose checks failed reports its outcome");
    };
    let passed: Vec<bool> = outcome.checks.iter().map(|c| c.passed).collect();
    assert_eq!(passed, [true, false, false, false, false, false, false]);
    assert!(outcome.checks[0].error.is_empty());
    assert_eq!(phase_names(&outcome.phases).last(), Some(&phase::CLEANUP));
    assert!(setup.databases_starting_with("warden_drill_").is_empty());
}

#[tokio::test]
async fn a_slow_check_is_cancelled_after_the_check_timeout_and_fails_by_name() {
    let mut setup = Setup::new("drill-check-timeout");
    setup.ctx.config.drill_check_timeout = Duration::from_secs(1);
    let artifact = setup.backup().await;

    let started = Instant::now();
    let result = run(
        &setup,
        "o-drill",
        drill_spec(
            &artifact,
            &[
                ("slow", "SELECT pg_sleep(60) IS NOT NULL"),
                ("after", "SELECT count(*) = 3 FROM orders"),
            ],
        ),
    )
    .await;
    assert!(
        started.elapsed() < Duration::from_secs(50),
        "the slow check was not cut short"
    );
    assert!(!result.success);
    assert!(!result.artifact_corrupt);
    assert!(
        result.error.contains(
            "check \"slow\": did not finish within 1s and was cancelled; make the check \
             faster or raise drill_check_timeout"
        ),
        "{}",
        result.error
    );
    let Some(Outcome::Drill(outcome)) = &result.outcome else {
        panic!("a drill whose checks failed reports its outcome");
    };
    let passed: Vec<bool> = outcome.checks.iter().map(|c| c.passed).collect();
    assert_eq!(passed, [false, true], "the next check runs as usual");
    assert!(setup.databases_starting_with("warden_drill_").is_empty());
}

#[tokio::test]
async fn a_cancelled_drill_drops_its_scratch_database() {
    let setup = Setup::new("drill-cancel");
    let artifact = setup.backup().await;
    let cancel = CancellationToken::new();
    // Cancels the moment pg_restore starts: the scratch database exists by then.
    let progress = ProgressReporter::new({
        let cancel = cancel.clone();
        move |update| {
            if update.phase == phase::PG_RESTORE {
                cancel.cancel();
            }
        }
    });

    let result = run_order(
        &setup.ctx,
        Some(&setup.target()),
        "o-drill",
        Some(drill_spec(&artifact, &[("fine", "SELECT true")])),
        &progress,
        &cancel,
    )
    .await;
    assert!(cancel.is_cancelled(), "pg_restore was reached");
    assert!(result.cancelled && !result.success, "{}", result.error);
    assert!(!result.artifact_corrupt);
    assert!(setup.databases_starting_with("warden_drill_").is_empty());
    assert!(
        setup.staged_files().is_empty(),
        "{:?}",
        setup.staged_files()
    );
}

#[tokio::test]
async fn restores_time_each_phase_and_a_missing_dump_is_corrupt() {
    let setup = Setup::new("restore-phases");
    let artifact = setup.backup().await;

    let result = run(&setup, "o-new", restore_spec(&artifact, "app copy")).await;
    assert!(result.success, "{}", result.error);
    let Some(Outcome::Restore(outcome)) = result.outcome else {
        panic!("expected a restore outcome, got {:?}", result.outcome);
    };
    assert_eq!(
        phase_names(&outcome.phases),
        [
            phase::FETCH,
            phase::VERIFY_CHECKSUM,
            phase::DECOMPRESS,
            phase::PG_RESTORE,
            phase::VERIFY_ROWS
        ]
    );
    assert_eq!(
        setup
            .cluster
            .query_value("app copy", "SELECT count(*) FROM billing.invoices"),
        "2"
    );

    // Replace: the data goes back to the backup's, by way of the side database.
    setup.cluster.psql("app", "DELETE FROM orders WHERE id > 1");
    let result = run(&setup, "o-replace", restore_spec(&artifact, "")).await;
    assert!(result.success, "{}", result.error);
    let Some(Outcome::Restore(outcome)) = result.outcome else {
        panic!("expected a restore outcome, got {:?}", result.outcome);
    };
    assert_eq!(phase_names(&outcome.phases).last(), Some(&phase::SWAP));
    assert_eq!(
        setup
            .cluster
            .query_value("app", "SELECT count(*) FROM orders"),
        "3"
    );
    assert!(setup.databases_starting_with("warden_").is_empty());

    let dump = setup
        .ctx
        .repository
        .local_root()
        .expect("a file repository")
        .join(&artifact.path)
        .join(DUMP_FILE);
    std::fs::remove_file(&dump).expect("remove dump");
    let result = run(&setup, "o-missing", restore_spec(&artifact, "never")).await;
    assert!(!result.success);
    assert!(result.artifact_corrupt, "{}", result.error);
    assert!(
        result.error.contains("dump.zst is missing"),
        "{}",
        result.error
    );
    assert!(!setup.cluster.database_exists("never"));
}

/// One table holding nearly all the data, or one job: the dump streams from the repository
/// into pg_restore, with no `decompress` phase and nothing staged.
#[tokio::test]
async fn restores_that_parallel_jobs_cannot_speed_up_stream_the_dump() {
    let mut setup = Setup::new("restore-streams");
    setup.cluster.psql_script(
        "app",
        "INSERT INTO orders SELECT i, i * 10 FROM generate_series(4, 5000) i;
         CREATE INDEX orders_total ON orders (total);
         CREATE VIEW big_orders AS SELECT id FROM orders WHERE total > 100;",
    );
    let artifact = setup.backup().await;
    let streamed = [
        phase::FETCH,
        phase::VERIFY_CHECKSUM,
        phase::PG_RESTORE,
        phase::VERIFY_ROWS,
    ];

    // `orders` holds over 90% of the data: two jobs could not restore it sooner.
    assert_eq!(setup.ctx.config.restore_jobs, 2);
    let result = run(&setup, "o-new", restore_spec(&artifact, "app copy")).await;
    assert!(result.success, "{}", result.error);
    let Some(Outcome::Restore(outcome)) = result.outcome else {
        panic!("expected a restore outcome, got {:?}", result.outcome);
    };
    assert_eq!(phase_names(&outcome.phases), streamed);
    assert_eq!((outcome.tables_verified, outcome.rows_verified), (2, 5002));
    assert_eq!(
        setup
            .cluster
            .query_value("app copy", "SELECT sum(total) FROM orders"),
        setup
            .cluster
            .query_value("app", "SELECT sum(total) FROM orders"),
    );
    assert!(
        setup.staged_files().is_empty(),
        "{:?}",
        setup.staged_files()
    );
    // The post-data part (indexes, constraints) came from the staged table of contents.
    assert_eq!(
        setup.cluster.query_value(
            "app copy",
            "SELECT string_agg(indexname, ',' ORDER BY indexname) FROM pg_indexes \
             WHERE tablename = 'orders'"
        ),
        "orders_pkey,orders_total"
    );
    assert_eq!(
        setup
            .cluster
            .query_value("app copy", "SELECT count(*) FROM big_orders"),
        "4990"
    );

    // One job streams whatever the shares, a replace and a drill too.
    setup.ctx.config.restore_jobs = 1;
    setup
        .cluster
        .psql("app", "DELETE FROM orders WHERE id > 100");
    let result = run(&setup, "o-replace", restore_spec(&artifact, "")).await;
    assert!(result.success, "{}", result.error);
    let Some(Outcome::Restore(outcome)) = result.outcome else {
        panic!("expected a restore outcome, got {:?}", result.outcome);
    };
    assert_eq!(phase_names(&outcome.phases)[..4], streamed);
    assert_eq!(phase_names(&outcome.phases).last(), Some(&phase::SWAP));
    assert_eq!(
        setup
            .cluster
            .query_value("app", "SELECT count(*) FROM orders"),
        "5000"
    );
    let result = run(
        &setup,
        "o-drill",
        drill_spec(
            &artifact,
            &[("all orders", "SELECT count(*) = 5000 FROM orders")],
        ),
    )
    .await;
    assert!(result.success, "{}", result.error);
    assert!(setup.databases_starting_with("warden_").is_empty());

    // A pg_restore that fails early is the error, at once: the artifact is not blamed, and
    // the database it wrote to is dropped.
    let fake = tempfile::tempdir().expect("tempdir");
    let real = warden_tests::pg::pg_bindir();
    for tool in ["pg_dump", "pg_dumpall"] {
        std::os::unix::fs::symlink(real.join(tool), fake.path().join(tool)).expect("symlink");
    }
    let pg_restore = fake.path().join("pg_restore");
    let script =
        "#!/bin/sh\nhead -c 100 >/dev/null\necho 'pg_restore: error: the fake fails' >&2\nexit 1\n";
    std::fs::write(&pg_restore, script).expect("write");
    let executable = std::os::unix::fs::PermissionsExt::from_mode(0o755);
    std::fs::set_permissions(&pg_restore, executable).expect("chmod");
    setup.ctx.config.pg_bindir = Some(fake.path().to_path_buf());
    let result = run(&setup, "o-failing", restore_spec(&artifact, "never")).await;
    assert!(
        !result.success && !result.artifact_corrupt,
        "{}",
        result.error
    );
    assert!(result.error.contains("the fake fails"), "{}", result.error);
    assert!(!setup.cluster.database_exists("never"));
    setup.ctx.config.pg_bindir = None;

    // A damaged dump is refused before pg_restore starts, as when staging.
    damage_dump(&setup, &artifact);
    let result = run(&setup, "o-damaged", restore_spec(&artifact, "never")).await;
    assert!(
        !result.success && result.artifact_corrupt,
        "{}",
        result.error
    );
    assert!(!setup.cluster.database_exists("never"));
    assert!(
        setup.staged_files().is_empty(),
        "{:?}",
        setup.staged_files()
    );
}

#[tokio::test]
async fn leftover_scratch_databases_of_this_agent_are_dropped_at_startup() {
    let dir = TestDir::new("drill-startup");
    let cluster = PgCluster::start_new(dir.path(), "pg");
    cluster.create_database("app");
    cluster.create_database("other");
    let mut ours = vec![
        drill::scratch_database_name(AGENT, "0191f3a2-7c4b-7d2e-9a1b-000000000001"),
        drill::scratch_database_name(AGENT, "0191f3a2-7c4b-7d2e-9a1b-000000000002"),
    ];
    // Another agent sharing the server: its drill may be running right now.
    let theirs = drill::scratch_database_name("db2", "0191f3a2-7c4b-7d2e-9a1b-000000000001");
    for name in ours.iter().chain([&theirs]) {
        cluster.create_database(name);
    }
    cluster.create_database("warden_drill_notes");

    // Two databases on the one server, and one on a server that is down.
    let ctx = context(
        dir.path(),
        vec![
            ("app".to_owned(), cluster.url("app")),
            ("other".to_owned(), cluster.url("other")),
            (
                "gone".to_owned(),
                "postgres://postgres@127.0.0.1:1/gone".to_owned(),
            ),
        ],
    );
    let mut dropped = drill::drop_leftover_scratch_databases(&ctx).await;
    dropped.sort();
    ours.sort();
    assert_eq!(dropped, ours);
    for name in &ours {
        assert!(!cluster.database_exists(name), "{name}");
    }
    for name in [theirs.as_str(), "warden_drill_notes", "app", "other"] {
        assert!(cluster.database_exists(name), "{name} is not ours to drop");
    }
}

#[tokio::test]
async fn health_reports_fill_every_field_and_a_stopped_cluster_reports_its_error() {
    let dir = TestDir::new("health");
    let mut cluster = PgCluster::start_new(dir.path(), "pg");
    cluster.create_database("app");
    let password = "s3cret-pw";
    let ctx = context(
        dir.path(),
        vec![("app".to_owned(), cluster.url_with_password("app", password))],
    );

    // A transaction left open ages while the report is collected.
    let mut idle = PgConnection::connect(&cluster.url("app"))
        .await
        .expect("connect");
    let mut open = idle.begin().await.expect("begin");
    sqlx::query("SELECT txid_current()")
        .execute(&mut *open)
        .await
        .expect("query");
    tokio::time::sleep(Duration::from_millis(1100)).await;

    let reports = health::collect_all(&ctx, Duration::from_secs(10)).await;
    assert!(reports.collected_unix_ms > 0);
    assert_eq!(reports.databases.len(), 1);
    let app = &reports.databases[0];
    assert_eq!(app.database, "app");
    assert!(app.error.is_empty(), "{}", app.error);
    let report = app.report.as_ref().expect("a report");
    assert!(report.connected);
    assert_eq!(report.replication_role, "primary");
    assert!(!report.in_recovery);
    assert_eq!(report.replication_lag_ms, 0, "no standbys");
    assert!(report.uptime_seconds < 600, "a fresh cluster: {report:?}");
    assert!(report.oldest_transaction_seconds >= 1, "{report:?}");
    assert!(report.wraparound_age > 0, "{report:?}");
    assert!(report.repository_total_bytes > 0, "{report:?}");
    assert!(report.repository_free_bytes <= report.repository_total_bytes);

    // The health order reports the same fields.
    let db = ctx.target("app").expect("configured").db;
    let order = health::run(&ctx, &db, &CancellationToken::new())
        .await
        .expect("health order");
    assert!(order.repository_total_bytes > 0 && order.oldest_transaction_seconds >= 1);
    open.rollback().await.expect("rollback");
    idle.close().await.expect("close");

    cluster.stop();
    let reports = health::collect_all(&ctx, Duration::from_secs(10)).await;
    let app = &reports.databases[0];
    assert!(app.report.is_none());
    assert!(
        app.error.contains("cannot connect to db1/app"),
        "{}",
        app.error
    );
    assert!(!app.error.contains(password), "{}", app.error);
}

#[tokio::test]
async fn only_client_sessions_count_for_the_oldest_transaction() {
    let dir = TestDir::new("health-autovacuum");
    let cluster = PgCluster::start_new(dir.path(), "pg");
    cluster.create_database("app");
    cluster.psql("postgres", "ALTER SYSTEM SET autovacuum_naptime = 1");
    cluster.psql("postgres", "SELECT pg_reload_conf()");
    // Autovacuum crawls through this table, a page per 100 ms, in one long transaction.
    cluster.psql_script(
        "app",
        "CREATE TABLE crawl (id int) WITH (autovacuum_vacuum_cost_delay = 100, \
           autovacuum_vacuum_cost_limit = 1, autovacuum_vacuum_threshold = 0, \
           autovacuum_vacuum_scale_factor = 0);
         INSERT INTO crawl SELECT generate_series(1, 200000);
         DELETE FROM crawl;",
    );
    let vacuum_age = "SELECT coalesce(extract(epoch FROM max(now() - xact_start)), 0)::int \
                      FROM pg_stat_activity WHERE backend_type = 'autovacuum worker'";
    let age = || {
        cluster
            .query_value("app", vacuum_age)
            .parse::<u64>()
            .expect("seconds")
    };
    wait_for(
        "an autovacuum transaction older than 2s",
        Duration::from_secs(60),
        Duration::from_millis(100),
        || (age() >= 2).then_some(()),
    );

    let ctx = context(dir.path(), vec![("app".to_owned(), cluster.url("app"))]);
    let reports = health::collect_all(&ctx, Duration::from_secs(10)).await;
    let report = reports.databases[0].report.as_ref().expect("a report");
    assert_eq!(
        report.oldest_transaction_seconds, 0,
        "autovacuum is not a client: {report:?}"
    );
    assert!(age() >= 2, "autovacuum was still running");
}

#[tokio::test]
async fn a_standby_lags_only_while_it_has_wal_left_to_replay() {
    let dir = TestDir::new("health-standby");
    let primary = PgCluster::start_new(dir.path(), "pg");
    primary.create_database("app");
    let standby = Standby::start(dir.path(), "standby", &primary);
    // A commit for the standby to replay: its replay timestamp then ages while the primary
    // stays idle.
    primary.psql("app", "CREATE TABLE t (id int)");
    let mut conn = PgConnection::connect(&standby.url("app"))
        .await
        .expect("connect to the standby");
    let caught_up = "SELECT pg_last_xact_replay_timestamp() IS NOT NULL \
                       AND pg_last_wal_receive_lsn() = pg_last_wal_replay_lsn() \
                       AND to_regclass('t') IS NOT NULL";
    let deadline = Instant::now() + Duration::from_secs(60);
    while !sqlx::query_scalar::<_, bool>(caught_up)
        .fetch_one(&mut conn)
        .await
        .expect("query the standby")
    {
        assert!(Instant::now() < deadline, "the standby never caught up");
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    tokio::time::sleep(Duration::from_millis(1500)).await;
    let since_replay: f64 = sqlx::query_scalar(
        "SELECT extract(epoch FROM now() - pg_last_xact_replay_timestamp())::float8",
    )
    .fetch_one(&mut conn)
    .await
    .expect("query the standby");
    assert!(since_replay >= 1.0, "{since_replay}");

    let ctx = context(dir.path(), vec![("app".to_owned(), standby.url("app"))]);
    let lag = || async {
        let reports = health::collect_all(&ctx, Duration::from_secs(10)).await;
        let app = &reports.databases[0];
        let report = app
            .report
            .as_ref()
            .unwrap_or_else(|| panic!("{}", app.error));
        assert!(report.in_recovery);
        assert_eq!(report.replication_role, "standby");
        report.replication_lag_ms
    };
    // WAL without commits (a checkpoint, a snapshot of running transactions) may be in
    // flight for a moment: the standby is caught up at one of a few looks.
    let mut lags = Vec::new();
    for _ in 0..5 {
        lags.push(lag().await);
        if lags.last() == Some(&0) {
            break;
        }
        tokio::time::sleep(Duration::from_millis(200)).await;
    }
    assert_eq!(lags.last(), Some(&0), "an idle primary: {lags:?}");

    // With replay paused, WAL received but not replayed is lag: since the last replayed
    // commit.
    sqlx::query("SELECT pg_wal_replay_pause()")
        .execute(&mut conn)
        .await
        .expect("pause replay");
    primary.psql("app", "INSERT INTO t VALUES (1)");
    let behind = "SELECT pg_last_wal_receive_lsn() > pg_last_wal_replay_lsn()";
    while !sqlx::query_scalar::<_, bool>(behind)
        .fetch_one(&mut conn)
        .await
        .expect("query the standby")
    {
        assert!(
            Instant::now() < deadline,
            "the standby never received the insert"
        );
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    let lagging = lag().await;
    assert!(lagging >= 1000, "{lagging} ms");
    let _ = conn.close().await;
}
