//! Migrations against a real PostgreSQL cluster. SQL files: a failing file rolls back alone
//! and is named, status compares without writing, a changed applied file refuses the whole
//! order, no-transaction files run statement by statement, a cancel rolls the current file
//! back, and the lock keeps two migrations apart. Commands: only configured ones run, with
//! the database in the environment, the guard refuses before anything runs, and the hooks
//! run around them. Refusals (denied statements in pending files, an order delivered again)
//! come before the hooks. Post-checks: a failure restores the pre-migration backup exactly,
//! or says how to; a corrupt backup is flagged; an order that applied nothing restores
//! nothing.

mod support;

use std::collections::BTreeMap;
use std::path::Path;
use std::time::{Duration, Instant};

use sqlx::{Connection, PgConnection};
use tokio_util::sync::CancellationToken;
use warden_agent::config::MigrateConfig;
use warden_agent::migrate::{self, phase};
use warden_agent::orders::run_order;
use warden_proto::v1;
use warden_proto::v1::order_result::Outcome;
use warden_proto::v1::order_spec::Params;
use warden_shared::MigrationFile;
use warden_shared::migration::NO_TRANSACTION_MARKER;
use warden_tests::{DbSnapshot, assert_same_data};

use support::{Artifact, Setup, quiet};

/// A migration file as the CLI would send it.
fn file(name: &str, sql: &str) -> v1::MigrationFile {
    let file = MigrationFile::from_file(name, sql.to_owned()).expect("a valid file name");
    v1::MigrationFile::from(&file)
}

fn sql_params(files: Vec<v1::MigrationFile>) -> v1::MigrateParams {
    v1::MigrateParams {
        source: Some(v1::migrate_params::Source::Sql(v1::SqlMigrations { files })),
        ..v1::MigrateParams::default()
    }
}

fn command_params(name: &str) -> v1::MigrateParams {
    v1::MigrateParams {
        source: Some(v1::migrate_params::Source::Command(name.to_owned())),
        ..v1::MigrateParams::default()
    }
}

fn pointer(artifact: &Artifact) -> v1::ArtifactPointer {
    v1::ArtifactPointer {
        artifact_id: artifact.id.clone(),
        artifact_path: artifact.path.clone(),
        sha256: artifact.sha256.clone(),
    }
}

async fn migrate(setup: &Setup, order_id: &str, params: v1::MigrateParams) -> v1::OrderResult {
    migrate_with(setup, order_id, params, &CancellationToken::new()).await
}

async fn migrate_with(
    setup: &Setup,
    order_id: &str,
    params: v1::MigrateParams,
    cancel: &CancellationToken,
) -> v1::OrderResult {
    run_order(
        &setup.ctx,
        Some(&setup.target()),
        order_id,
        Some(v1::OrderSpec {
            params: Some(Params::Migrate(params)),
        }),
        &quiet(),
        cancel,
    )
    .await
}

/// The outcome of a migration order, which failed ones carry too.
fn outcome(result: &v1::OrderResult) -> &v1::MigrateOutcome {
    match &result.outcome {
        Some(Outcome::Migrate(outcome)) => outcome,
        other => panic!(
            "expected a migrate outcome, got {other:?} ({})",
            result.error
        ),
    }
}

fn versions(applied: &[v1::AppliedMigration]) -> Vec<&str> {
    applied.iter().map(|a| a.version.as_str()).collect()
}

fn pending(outcome: &v1::MigrateOutcome) -> Vec<&str> {
    outcome.pending.iter().map(|p| p.version.as_str()).collect()
}

fn phases(outcome: &v1::MigrateOutcome) -> Vec<&str> {
    outcome.phases.iter().map(|p| p.phase.as_str()).collect()
}

/// `version:transactional` of every tracking row, by version.
fn tracked(setup: &Setup) -> String {
    setup.cluster.query_value(
        "app",
        "SELECT coalesce(string_agg(version || ':' || transactional, ',' ORDER BY version), '') \
         FROM warden.schema_migrations",
    )
}

fn table_exists(setup: &Setup, table: &str) -> bool {
    setup
        .cluster
        .query_value("app", &format!("SELECT to_regclass('{table}') IS NOT NULL"))
        == "t"
}

#[tokio::test]
async fn a_failing_file_rolls_back_alone_and_is_named() {
    let setup = Setup::new("migrate-third-fails");
    let mut params = sql_params(vec![
        file("0001_create_a.sql", "CREATE TABLE a (id int);"),
        file(
            "0002_fill_a.sql",
            "INSERT INTO a VALUES (1), (2);\nCREATE TABLE b (id int);",
        ),
        file(
            "0003_broken.sql",
            "CREATE TABLE c (id int);\nINSERT INTO c SELECT id FROM no_such_table;",
        ),
    ]);
    params.pre_migration = Some(v1::ArtifactPointer {
        artifact_id: "a-1".to_owned(),
        artifact_path: "db1/a-1".to_owned(),
        sha256: "ab".repeat(32),
    });

    let result = migrate(&setup, "o-mig", params).await;
    assert!(!result.success && !result.cancelled, "{}", result.error);
    let error = &result.error;
    assert!(
        error.starts_with(
            "0003_broken.sql failed and was rolled back: relation \"no_such_table\" does not \
             exist (at line 2, column 30)"
        ),
        "{error}"
    );
    assert!(error.contains("[SQLSTATE 42P01]"), "{error}");
    let restore = "warden restore a-1 --replace --target db1/app --reason \"undo migration \
                   (order o-mig)\"";
    assert!(
        error.contains(
            "applied before it by this order: 0001_create_a.sql, 0002_fill_a.sql; to undo the \
             migration, restore the pre-migration backup: "
        ) && error.ends_with(restore),
        "{error}"
    );
    let outcome = outcome(&result);
    assert_eq!(versions(&outcome.applied), ["0001", "0002"]);
    assert!(outcome.applied.iter().all(|a| a.applied_unix_ms > 0));
    assert_eq!(pending(outcome), ["0003"]);
    assert_eq!(outcome.failed_version, "0003");
    assert_eq!(outcome.restore_command, restore);
    assert_eq!(outcome.pre_migration_artifact_id, "a-1");
    assert_eq!(phases(outcome), [phase::APPLY], "no checks after a failure");

    assert_eq!(tracked(&setup), "0001:true,0002:true");
    assert_eq!(
        setup.cluster.query_value("app", "SELECT count(*) FROM a"),
        "2"
    );
    assert!(table_exists(&setup, "b"));
    assert!(
        !table_exists(&setup, "c"),
        "the failed file was rolled back"
    );
}

#[tokio::test]
async fn status_compares_without_writing_and_a_changed_file_refuses_the_order() {
    let setup = Setup::new("migrate-status");
    let a = file("0001_a.sql", "CREATE TABLE a (id int);");
    let b = file("0002_b.sql", "CREATE TABLE b (id int);");
    let c = file("0003_c.sql", "CREATE TABLE c (id int);");

    // Before anything was applied: everything is pending, and nothing is created.
    let mut status = sql_params(vec![a.clone(), b.clone()]);
    status.status_only = true;
    let result = migrate(&setup, "o-status-0", status).await;
    assert!(result.success, "{}", result.error);
    assert_eq!(pending(outcome(&result)), ["0001", "0002"]);
    assert!(outcome(&result).phases.is_empty());
    assert!(!table_exists(&setup, "warden.schema_migrations"));

    let result = migrate(&setup, "o-apply", sql_params(vec![a.clone(), b.clone()])).await;
    assert!(result.success, "{}", result.error);
    let applied = outcome(&result);
    assert_eq!(versions(&applied.applied), ["0001", "0002"]);
    assert!(applied.pending.is_empty());
    assert_eq!(applied.checks.len(), 1);
    assert_eq!(applied.checks[0].name, migrate::HEALTH_CHECK);
    assert!(applied.checks[0].passed, "{}", applied.checks[0].error);
    assert_eq!(phases(applied), [phase::APPLY, phase::CHECKS]);

    // Someone edited 0002 after it was applied, and a row of an older file set is in the
    // table. "2" is version 0002.
    setup.cluster.psql(
        "app",
        "INSERT INTO warden.schema_migrations \
         (version, name, sha256, duration_ms, order_id, transactional) \
         VALUES ('0000', 'old', 'ff', 1, 'o-old', true)",
    );
    let edited = file("2_b.sql", "CREATE TABLE b (id int, note text);");
    let mut status = sql_params(vec![a.clone(), edited.clone(), c.clone()]);
    status.status_only = true;
    let result = migrate(&setup, "o-status-1", status.clone()).await;
    assert!(result.success, "a status is a report: {}", result.error);
    let report = outcome(&result);
    assert_eq!(versions(&report.already_applied), ["0001"]);
    assert_eq!(pending(report), ["0003"]);
    assert_eq!(
        report.changed,
        [v1::ChangedMigration {
            version: "2".to_owned(),
            name: "b".to_owned(),
            recorded_sha256: b.sha256.clone(),
            file_sha256: edited.sha256.clone(),
        }]
    );
    assert_eq!(versions(&report.unknown), ["0000"]);
    assert!(report.applied.is_empty());

    // The unchanged file under another spelling of its version is applied already.
    let mut same = status.clone();
    same.source = Some(v1::migrate_params::Source::Sql(v1::SqlMigrations {
        files: vec![file("2_b.sql", "CREATE TABLE b (id int);")],
    }));
    let result = migrate(&setup, "o-status-2", same).await;
    assert_eq!(versions(&outcome(&result).already_applied), ["0002"]);

    let result = migrate(&setup, "o-changed", sql_params(vec![a, edited.clone(), c])).await;
    assert!(!result.success);
    assert!(
        result.error.starts_with(
            "refusing to migrate db1/app: 1 applied migration changed since it was applied: \
             2_b.sql was applied with sha256"
        ),
        "{}",
        result.error
    );
    for expected in [
        b.sha256.as_str(),
        edited.sha256.as_str(),
        "nothing was applied",
        "add a new migration for the change",
    ] {
        assert!(
            result.error.contains(expected),
            "{expected:?} in {}",
            result.error
        );
    }
    let refused = outcome(&result);
    assert_eq!(refused.changed.len(), 1);
    assert_eq!(pending(refused), ["0003"]);
    assert!(refused.applied.is_empty() && refused.phases.is_empty());
    assert!(
        !table_exists(&setup, "c"),
        "the pending file was not applied"
    );
    assert_eq!(tracked(&setup), "0000:true,0001:true,0002:true");
}

#[tokio::test]
async fn no_transaction_files_run_statement_by_statement() {
    let setup = Setup::new("migrate-no-transaction");
    let marker = format!("-- {NO_TRANSACTION_MARKER}\n");
    let result = migrate(
        &setup,
        "o-concurrently",
        sql_params(vec![
            file(
                "0001_index.sql",
                &format!(
                    "{marker}CREATE INDEX CONCURRENTLY orders_total ON orders (total);\n\
                     CREATE INDEX CONCURRENTLY invoices_id ON billing.invoices (id);"
                ),
            ),
            file("0002_after.sql", "CREATE TABLE after_index (id int);"),
        ]),
    )
    .await;
    assert!(result.success, "{}", result.error);
    assert_eq!(versions(&outcome(&result).applied), ["0001", "0002"]);
    assert_eq!(tracked(&setup), "0001:false,0002:true");
    assert_eq!(
        setup.cluster.query_value(
            "app",
            "SELECT indisvalid FROM pg_index WHERE indexrelid = 'orders_total'::regclass"
        ),
        "t"
    );

    // A failure part-way leaves the earlier statements applied and says so.
    let result = migrate(
        &setup,
        "o-partial",
        sql_params(vec![file(
            "0003_partial.sql",
            &format!(
                "{marker}CREATE TABLE first_part (id int);\nCREATE TABLE first_part (id int);"
            ),
        )]),
    )
    .await;
    assert!(!result.success);
    assert!(
        result.error.starts_with(
            "0003_partial.sql failed at statement 2 of 2 (CREATE TABLE first_part (id int)): \
             relation \"first_part\" already exists"
        ),
        "{}",
        result.error
    );
    assert!(
        result.error.contains(
            "so its statements before statement 2 stayed applied and the file is not recorded \
             as applied"
        ) && result.error.contains("no pre-migration backup was taken"),
        "{}",
        result.error
    );
    assert_eq!(outcome(&result).failed_version, "0003");
    assert!(table_exists(&setup, "first_part"));
    assert_eq!(tracked(&setup), "0001:false,0002:true");
}

#[tokio::test]
async fn a_cancel_rolls_the_current_file_back_and_the_lock_keeps_migrations_apart() {
    let setup = Setup::new("migrate-cancel-lock");
    let cancel = CancellationToken::new();
    tokio::spawn({
        let cancel = cancel.clone();
        async move {
            tokio::time::sleep(Duration::from_millis(1500)).await;
            cancel.cancel();
        }
    });
    let started = Instant::now();
    let result = migrate_with(
        &setup,
        "o-cancel",
        sql_params(vec![
            file("0001_quick.sql", "CREATE TABLE quick (id int);"),
            file(
                "0002_slow.sql",
                "CREATE TABLE slow (id int);\nSELECT pg_sleep(60);",
            ),
            file("0003_never.sql", "CREATE TABLE never (id int);"),
        ]),
        &cancel,
    )
    .await;
    assert!(
        started.elapsed() < Duration::from_secs(30),
        "the sleep was cut short"
    );
    assert!(result.cancelled && !result.success, "{}", result.error);
    assert!(
        result.error.starts_with(
            "cancelled while applying 0002_slow.sql; it was rolled back; applied before it by \
             this order: 0001_quick.sql"
        ),
        "{}",
        result.error
    );
    let cancelled = outcome(&result);
    assert_eq!(versions(&cancelled.applied), ["0001"]);
    assert_eq!(pending(cancelled), ["0002", "0003"]);
    assert!(!table_exists(&setup, "slow"));
    assert_eq!(tracked(&setup), "0001:true");

    // Another session holding the lock: the migration does not wait for it.
    let mut other = PgConnection::connect(&setup.cluster.url("app"))
        .await
        .expect("connect");
    sqlx::query("SELECT pg_advisory_lock($1)")
        .bind(migrate::LOCK_KEY)
        .execute(&mut other)
        .await
        .expect("lock");
    let files = vec![file("0002_slow.sql", "CREATE TABLE slow (id int);")];
    let result = migrate(&setup, "o-locked", sql_params(files.clone())).await;
    assert!(!result.success);
    assert!(
        result
            .error
            .starts_with("another migration holds the lock of db1/app (session pid "),
        "{}",
        result.error
    );
    assert!(
        result.error.ends_with("nothing was changed"),
        "{}",
        result.error
    );
    other.close().await.expect("close");

    // The cancelled session is gone: its lock went with it, and so did this one's.
    let result = migrate(&setup, "o-again", sql_params(files)).await;
    assert!(result.success, "{}", result.error);
    assert!(table_exists(&setup, "slow"));
}

/// Allowed commands and hooks of `app`; the hooks append to `log`.
fn command_config(log: &Path) -> MigrateConfig {
    let psql = warden_tests::pg::pg_bindir().join("psql");
    let psql = psql.to_string_lossy().into_owned();
    let psql_c = |sql: &str| {
        vec![
            psql.clone(),
            "-X".to_owned(),
            "-v".to_owned(),
            "ON_ERROR_STOP=1".to_owned(),
            "-c".to_owned(),
            sql.to_owned(),
        ]
    };
    let sh = |script: &str| vec!["/bin/sh".to_owned(), "-c".to_owned(), script.to_owned()];
    MigrateConfig {
        commands: BTreeMap::from([
            (
                "create".to_owned(),
                psql_c("CREATE TABLE from_cmd (id int)"),
            ),
            ("broken".to_owned(), psql_c("SELECT * FROM nope")),
            (
                "fresh".to_owned(),
                sh("touch ran; echo php artisan migrate:fresh"),
            ),
            (
                "env".to_owned(),
                sh(
                    "echo host=$PGHOST port=$PGPORT db=$PGDATABASE user=$PGUSER \
                    url=$DATABASE_URL token=$API_TOKEN; \
                    echo password=$PGPASSWORD \
                    encoded=$(echo \"$DATABASE_URL\" | sed 's|^[^:]*://[^:]*:\\([^@]*\\)@.*|\\1|') \
                    key=${DATABASE_URL##*sslpassword=}",
                ),
            ),
            (
                "missing".to_owned(),
                vec!["/nonexistent/migrate".to_owned()],
            ),
        ]),
        pre_hook: Some(sh(&format!(
            "echo pre:$WARDEN_DATABASE:$WARDEN_ORDER_ID >> {}",
            log.display()
        ))),
        post_hook: Some(sh(&format!(
            "echo post:$WARDEN_MIGRATION_STATUS >> {}",
            log.display()
        ))),
        workdir: log.parent().map(Path::to_path_buf),
        env: BTreeMap::from([("API_TOKEN".to_owned(), "t0ps3cret".to_owned())]),
        ..MigrateConfig::default()
    }
}

fn read_log(log: &Path) -> String {
    std::fs::read_to_string(log).unwrap_or_default()
}

#[tokio::test]
async fn commands_run_by_name_with_the_database_in_their_environment_between_the_hooks() {
    let mut setup = Setup::new("migrate-command");
    let dir = tempfile::tempdir().expect("tempdir");
    let log = dir.path().join("hooks.log");
    setup.ctx.config.databases[0].migrate = Some(command_config(&log));

    let result = migrate(&setup, "o-create", command_params("create")).await;
    assert!(result.success, "{}", result.error);
    assert!(table_exists(&setup, "from_cmd"));
    let ran = outcome(&result);
    assert_eq!(ran.command_output, "CREATE TABLE");
    assert_eq!(
        phases(ran),
        [
            phase::PRE_HOOK,
            phase::APPLY,
            phase::CHECKS,
            phase::POST_HOOK
        ]
    );
    assert_eq!(read_log(&log), "pre:db1/app:o-create\npost:succeeded\n");

    // The output hides the password (as is and percent-encoded), the key passphrase, the
    // whole DATABASE_URL and the configured environment's values.
    let plain_url = setup.ctx.config.databases[0].url.clone();
    setup.ctx.config.databases[0].url = format!(
        "{}?sslpassword=k3y%2Fphrase",
        setup.cluster.url_with_password("app", "pa ss/w0rd")
    );
    let result = migrate(&setup, "o-env", command_params("env")).await;
    assert!(result.success, "{}", result.error);
    assert_eq!(
        outcome(&result).command_output,
        format!(
            "host=127.0.0.1 port={port} db=app user=postgres url=*** token=***\n\
             password=*** encoded=*** key=***",
            port = setup.cluster.port()
        )
    );
    setup.ctx.config.databases[0].url = plain_url;

    // A failing command fails the order with its error output; the post-hook still runs.
    std::fs::remove_file(&log).expect("rm log");
    let mut params = command_params("broken");
    params.pre_migration = Some(v1::ArtifactPointer {
        artifact_id: "a-2".to_owned(),
        ..v1::ArtifactPointer::default()
    });
    let result = migrate(&setup, "o-broken", params).await;
    assert!(!result.success);
    assert!(
        result.error.starts_with(
            "migration command broken exited with status 1: ERROR:  relation \"nope\" does not \
             exist"
        ),
        "{}",
        result.error
    );
    assert!(
        result.error.contains(
            "the command may have changed the database; to undo the migration, restore the \
             pre-migration backup: warden restore a-2 --replace --target db1/app"
        ),
        "{}",
        result.error
    );
    let failed = outcome(&result);
    assert!(
        failed.command_output.contains("\"nope\""),
        "{}",
        failed.command_output
    );
    assert!(failed.restore_command.starts_with("warden restore a-2 "));
    assert_eq!(read_log(&log), "pre:db1/app:o-broken\npost:failed\n");

    // A command that cannot start changed nothing: no way back is offered.
    std::fs::remove_file(&log).expect("rm log");
    let mut params = command_params("missing");
    params.pre_migration = Some(v1::ArtifactPointer {
        artifact_id: "a-2".to_owned(),
        ..v1::ArtifactPointer::default()
    });
    let result = migrate(&setup, "o-missing", params).await;
    assert!(!result.success);
    assert!(
        result
            .error
            .starts_with("migration command missing cannot start \"/nonexistent/migrate\": ")
            && result.error.ends_with("; nothing was run"),
        "{}",
        result.error
    );
    assert!(outcome(&result).restore_command.is_empty());
    assert_eq!(read_log(&log), "pre:db1/app:o-missing\npost:failed\n");

    // An unknown name and a deny-listed command are refused before any hook or command runs.
    std::fs::remove_file(&log).expect("rm log");
    let result = migrate(&setup, "o-unknown", command_params("drop_all")).await;
    assert!(!result.success);
    assert_eq!(
        result.error,
        "agent db1 allows migration commands broken, create, env, fresh, missing for app; add \
         drop_all under [databases.migrate.commands] in its configuration to allow it"
    );
    let mut guarded = command_params("fresh");
    guarded.deny_commands = vec!["migrate:fresh".to_owned(), "db:drop".to_owned()];
    let result = migrate(&setup, "o-fresh", guarded).await;
    assert!(!result.success);
    assert!(
        result.error.starts_with(
            "migration command fresh was refused by the destructive guard: \"/bin/sh -c touch \
             ran; echo php artisan migrate:fresh\" matches deny pattern \"migrate:fresh\"; \
             nothing was run"
        ) && result.error.ends_with("--emergency --reason TEXT"),
        "{}",
        result.error
    );
    assert!(!dir.path().join("ran").exists(), "the command did not run");
    assert_eq!(read_log(&log), "", "no hook ran");

    // Without a guard (glass broken) it runs, in the workdir.
    let result = migrate(&setup, "o-fresh-glass", command_params("fresh")).await;
    assert!(result.success, "{}", result.error);
    assert!(dir.path().join("ran").exists());
}

#[tokio::test]
async fn hooks_wrap_sql_migrations_and_their_failures_fail_the_order() {
    let mut setup = Setup::new("migrate-hooks");
    let dir = tempfile::tempdir().expect("tempdir");
    let log = dir.path().join("hooks.log");
    let sh = |script: &str| {
        Some(vec![
            "/bin/sh".to_owned(),
            "-c".to_owned(),
            script.to_owned(),
        ])
    };
    setup.ctx.config.databases[0].migrate = Some(MigrateConfig {
        pre_hook: sh(&format!("echo pre >> {}; exit 4", log.display())),
        post_hook: sh(&format!(
            "echo post:$WARDEN_MIGRATION_STATUS >> {}",
            log.display()
        )),
        ..MigrateConfig::default()
    });
    let files = vec![file("0001_a.sql", "CREATE TABLE a (id int);")];

    let result = migrate(&setup, "o-pre-fails", sql_params(files.clone())).await;
    assert!(!result.success);
    assert_eq!(
        result.error,
        "the pre_hook exited with status 4: no output; nothing was applied"
    );
    assert!(!table_exists(&setup, "a"));
    assert_eq!(read_log(&log), "pre\npost:failed\n");
    assert_eq!(
        phases(outcome(&result)),
        [phase::PRE_HOOK, phase::POST_HOOK]
    );

    // A failing post-hook fails a migration that itself succeeded.
    std::fs::remove_file(&log).expect("rm log");
    setup.ctx.config.databases[0].migrate = Some(MigrateConfig {
        pre_hook: sh(&format!("echo pre >> {}", log.display())),
        post_hook: sh(&format!(
            "echo post:$WARDEN_MIGRATION_STATUS >> {}; echo cache flush failed >&2; exit 2",
            log.display()
        )),
        ..MigrateConfig::default()
    });
    let result = migrate(&setup, "o-post-fails", sql_params(files)).await;
    assert!(!result.success);
    assert_eq!(
        result.error,
        "the migration itself succeeded, but the post_hook exited with status 2: cache flush \
         failed"
    );
    assert!(table_exists(&setup, "a"));
    assert_eq!(versions(&outcome(&result).applied), ["0001"]);
    assert_eq!(read_log(&log), "pre\npost:succeeded\n");
}

#[tokio::test]
async fn a_failed_post_check_restores_the_pre_migration_backup_exactly() {
    let setup = Setup::new("migrate-check-restore");
    let artifact = setup.backup().await;
    let before = DbSnapshot::take(&setup.cluster, "app");
    let files = vec![file(
        "0001_prune.sql",
        "CREATE TABLE audit (id int);\nDELETE FROM orders WHERE id > 1;",
    )];
    let check = v1::DrillCheck {
        name: "three orders".to_owned(),
        sql: "SELECT count(*) = 3 FROM orders".to_owned(),
    };

    // stop: the migration stays, and the error says how to undo it.
    let mut params = sql_params(files.clone());
    params.checks = vec![check.clone()];
    params.on_check_failure = "stop".to_owned();
    params.pre_migration = Some(pointer(&artifact));
    let result = migrate(&setup, "o-stop", params).await;
    assert!(!result.success);
    let restore = format!(
        "warden restore {} --replace --target db1/app --reason \"undo migration (order \
         o-stop)\"",
        artifact.id
    );
    assert_eq!(
        result.error,
        format!(
            "post-check \"three orders\" failed: returned false; the migration stays applied \
             (on_check_failure = stop); to undo the migration, restore the pre-migration \
             backup: {restore}"
        )
    );
    let stopped = outcome(&result);
    assert_eq!(stopped.restore_command, restore);
    assert!(!stopped.restored);
    let checks: Vec<(&str, bool)> = stopped
        .checks
        .iter()
        .map(|c| (c.name.as_str(), c.passed))
        .collect();
    assert_eq!(checks, [("health", true), ("three orders", false)]);
    assert_eq!(
        setup
            .cluster
            .query_value("app", "SELECT count(*) FROM orders"),
        "1"
    );

    // restore: the backup goes back over the database.
    setup.cluster.psql(
        "app",
        "DROP TABLE audit; DROP SCHEMA warden CASCADE; \
         INSERT INTO orders VALUES (2, 20), (3, 30);",
    );
    assert_same_data(&before, &DbSnapshot::take(&setup.cluster, "app"));
    let mut params = sql_params(files);
    params.checks = vec![check];
    params.on_check_failure = "restore".to_owned();
    params.pre_migration = Some(pointer(&artifact));
    let result = migrate(&setup, "o-restore", params.clone()).await;
    assert!(!result.success);
    assert_eq!(
        result.error,
        format!(
            "post-check \"three orders\" failed: returned false; restored pre-migration backup \
             {} over db1/app (2 tables, 5 rows verified)",
            artifact.id
        )
    );
    let restored = outcome(&result);
    assert!(restored.restored);
    assert!(restored.restore_command.is_empty());
    assert_eq!(restored.pre_migration_artifact_id, artifact.id);
    assert_eq!(versions(&restored.applied), ["0001"]);
    assert_eq!(
        phases(restored),
        [phase::APPLY, phase::CHECKS, phase::RESTORE]
    );
    assert_same_data(&before, &DbSnapshot::take(&setup.cluster, "app"));
    assert!(!table_exists(&setup, "audit"));
    assert!(!table_exists(&setup, "warden.schema_migrations"));

    // A corrupt pre-migration backup: nothing is restored, the result flags the artifact,
    // and its restore command is no way back.
    let dump = setup
        .ctx
        .repository
        .local_root()
        .expect("a file repository")
        .join(&artifact.path)
        .join(warden_shared::manifest::DUMP_FILE);
    let mut bytes = std::fs::read(&dump).expect("read dump");
    let last = bytes.len() - 1;
    bytes[last] ^= 0xff;
    std::fs::write(&dump, bytes).expect("corrupt dump");
    let result = migrate(&setup, "o-corrupt", params).await;
    assert!(!result.success && !result.cancelled);
    assert!(result.artifact_corrupt, "{}", result.error);
    assert!(
        result.error.starts_with(&format!(
            "post-check \"three orders\" failed: returned false; restoring pre-migration backup \
             {id} over db1/app failed: the pre-migration backup is unusable: artifact {id} is \
             corrupt: ",
            id = artifact.id
        )) && result.error.ends_with(
            "db1/app stays as the migration left it: fix forward or restore an older backup"
        ),
        "{}",
        result.error
    );
    assert!(!result.error.contains("warden restore"), "{}", result.error);
    let corrupt = outcome(&result);
    assert!(!corrupt.restored && corrupt.restore_command.is_empty());
    assert_eq!(
        phases(corrupt),
        [phase::APPLY, phase::CHECKS, phase::RESTORE]
    );
    assert_eq!(
        setup
            .cluster
            .query_value("app", "SELECT count(*) FROM orders"),
        "1"
    );
}

#[tokio::test]
async fn refusals_come_before_the_hooks_and_an_order_changes_nothing_twice() {
    let mut setup = Setup::new("migrate-refusals");
    let dir = tempfile::tempdir().expect("tempdir");
    let log = dir.path().join("hooks.log");
    let sh = |script: String| Some(vec!["/bin/sh".to_owned(), "-c".to_owned(), script]);
    setup.ctx.config.databases[0].migrate = Some(MigrateConfig {
        pre_hook: sh(format!("echo pre >> {}", log.display())),
        post_hook: sh(format!(
            "echo post:$WARDEN_MIGRATION_STATUS >> {}",
            log.display()
        )),
        ..MigrateConfig::default()
    });
    let deny_sql: Vec<String> = warden_shared::migration::DEFAULT_DENY_SQL
        .iter()
        .map(|s| (*s).to_owned())
        .collect();
    let init = file(
        "0001_init.sql",
        "DROP SCHEMA IF EXISTS legacy CASCADE;\nCREATE TABLE a (id int);",
    );
    let fake_backup = v1::ArtifactPointer {
        artifact_id: "a-9".to_owned(),
        artifact_path: "db1/a-9".to_owned(),
        sha256: "ab".repeat(32),
    };

    // An old file the guard would deny, applied with glass broken (no patterns sent).
    let result = migrate(&setup, "o-init", sql_params(vec![init.clone()])).await;
    assert!(result.success, "{}", result.error);
    std::fs::remove_file(&log).expect("rm log");

    // A pending file with a denied statement refuses the order before the hooks; the applied
    // one with its DROP SCHEMA ... CASCADE is not checked again.
    let truncate = file("0002_x.sql", "TRUNCATE orders;");
    let mut params = sql_params(vec![init.clone(), truncate]);
    params.deny_sql = deny_sql.clone();
    params.pre_migration = Some(fake_backup.clone());
    let result = migrate(&setup, "o-truncate", params).await;
    assert!(!result.success);
    assert_eq!(
        result.error,
        "refused by the destructive guard: 0002_x.sql: \"TRUNCATE orders\" matches deny pattern \
         \"TRUNCATE\"; nothing was applied. If it must run on db1/app, break glass: migrate again \
         with --emergency --reason TEXT"
    );
    let refused = outcome(&result);
    assert_eq!(pending(refused), ["0002"]);
    assert!(refused.applied.is_empty() && refused.phases.is_empty());
    assert!(refused.restore_command.is_empty());
    assert_eq!(read_log(&log), "", "no hook ran");
    assert_eq!(
        setup
            .cluster
            .query_value("app", "SELECT count(*) FROM orders"),
        "3"
    );

    let next = file("0002_b.sql", "CREATE TABLE b (id int);");
    let mut params = sql_params(vec![init.clone(), next.clone()]);
    params.deny_sql = deny_sql.clone();
    let result = migrate(&setup, "o-next", params.clone()).await;
    assert!(result.success, "{}", result.error);
    assert_eq!(versions(&outcome(&result).applied), ["0002"]);
    assert_eq!(read_log(&log), "pre\npost:succeeded\n");
    std::fs::remove_file(&log).expect("rm log");

    // The same order delivered again (say the agent restarted before it reported): the
    // tracking table says it ran, so it is refused, even with a new file to apply.
    params.source = Some(v1::migrate_params::Source::Sql(v1::SqlMigrations {
        files: vec![
            init.clone(),
            next.clone(),
            file("0003_c.sql", "CREATE TABLE c (id int);"),
        ],
    }));
    let result = migrate(&setup, "o-next", params).await;
    assert!(!result.success);
    assert!(
        result.error.starts_with(
            "order o-next already applied migrations to db1/app (0002_b.sql); it is not run \
             twice, so nothing was applied now"
        ),
        "{}",
        result.error
    );
    assert!(outcome(&result).restore_command.is_empty());
    assert!(!table_exists(&setup, "c"));
    assert_eq!(read_log(&log), "", "no hook ran");

    // Everything applied before, and a check fails: this order changed nothing, so nothing
    // is restored and no way back is offered.
    let mut params = sql_params(vec![init, next]);
    params.checks = vec![v1::DrillCheck {
        name: "no b".to_owned(),
        sql: "SELECT to_regclass('b') IS NULL".to_owned(),
    }];
    params.on_check_failure = "restore".to_owned();
    params.pre_migration = Some(fake_backup);
    let result = migrate(&setup, "o-nothing", params).await;
    assert!(!result.success && !result.artifact_corrupt);
    assert_eq!(
        result.error,
        "post-check \"no b\" failed: returned false; this migration applied nothing (every \
         file was applied before), so nothing was restored and db1/app was left as it was: the \
         checks fail without it; fix the database or the checks"
    );
    let nothing = outcome(&result);
    assert!(nothing.applied.is_empty() && !nothing.restored);
    assert!(nothing.restore_command.is_empty());
    assert_eq!(
        phases(nothing),
        [
            phase::PRE_HOOK,
            phase::APPLY,
            phase::CHECKS,
            phase::POST_HOOK
        ]
    );
    assert_eq!(read_log(&log), "pre\npost:failed\n");
    assert!(table_exists(&setup, "b"));
}
