//! The migrate executor: applies versioned SQL files to the order's database, or runs a
//! migration command its configuration allows, then checks the database, and restores the
//! pre-migration backup when a check fails and the order says so.
//!
//! **SQL files.** The files are validated again (names, checksums, size, transaction
//! control) before anything runs. Applied files are recorded in
//! [`TRACKING_TABLE`](warden_shared::migration::TRACKING_TABLE), with the order that applied
//! them. Before anything is applied, the order is refused when the table records files of
//! this very order (it was delivered again, e.g. after the agent restarted between applying
//! and reporting: it never runs twice), when a file is recorded with another checksum than
//! it has now, or when a pending file has a statement the destructive guard denies
//! (`deny_sql`; files applied before are not checked again). Pending files run in version
//! order, each in one transaction with its tracking row (a failure rolls the file back), or,
//! with the no-transaction marker, statement by statement. A session-level advisory lock
//! ([`LOCK_KEY`]) held for the whole order keeps two migrations of one database from
//! interleaving. `status_only` only compares, and writes nothing.
//!
//! **Commands.** A command runs by name from `[databases.migrate.commands]`, with the
//! database in `PGHOST`, `PGPORT`, `PGDATABASE`, `PGUSER`, `PGPASSWORD` and `DATABASE_URL`;
//! the destructive guard refuses a deny-listed command line before anything runs. Its
//! output is kept with the database's credentials and the configured environment's values
//! redacted.
//!
//! **Around both.** The order goes through these steps; a refusal or failure in one of the
//! first ends it at once, and later ones do not run:
//!
//! 1. checks that need no database: the parameters, the files, the command (allowed, not
//!    denied);
//! 2. connect, take the migration lock; for SQL files, read the tracking table and refuse a
//!    repeated order, changed files and denied statements;
//! 3. `pre_hook`: the pre-hook's turn has come;
//! 4. apply the pending files, or run the command;
//! 5. the `health` check (a few attempts) and the policy's checks (see
//!    [`crate::drill::run_checks`]); when one fails and this order changed the database,
//!    the pre-migration backup is restored over it (`on_check_failure = restore`) or the
//!    error says how to; when it applied nothing (every file was applied before), nothing
//!    is restored;
//! 6. `post_hook`: it runs whenever the pre-hook's turn came (step 3 was reached, with or
//!    without a `pre_hook` configured), also after the pre-hook, applying, a check or the
//!    restore failed and after a cancel, with `WARDEN_MIGRATION_STATUS` saying how steps 3
//!    to 5 went; it does not run after a refusal in steps 1 and 2, nor for `status_only`.
//!
//! The restore hint (`restore_command`) is only given when the database may have changed:
//! once a file of this order was applied or a statement of a no-transaction file ran, or
//! once the command started. A failed order still reports its [`v1::MigrateOutcome`] (see
//! [`AgentError::Migration`]).

use std::collections::BTreeMap;
use std::str::FromStr;
use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::{Duration, Instant};

use sqlx::postgres::{PgConnection, PgDatabaseError, PgErrorPosition};
use sqlx::{AssertSqlSafe, Connection, Row};
use tokio_util::sync::CancellationToken;
use warden_proto::v1;
use warden_shared::migration::{NO_TRANSACTION_MARKER, TRACKING_TABLE, first_words, validate_set};
use warden_shared::{Guard, MigrationFile, OnCheckFailure};

use crate::config::MigrateConfig;
use crate::error::{AgentError, AgentResult};
use crate::orders::{AgentContext, OrderTarget, cancellable, elapsed_ms};
use crate::pg::PgDatabase;
use crate::program::{Program, ProgramRun, Redactor};
use crate::progress::ProgressReporter;
use crate::{drill, restore};

/// Names of the phases of a migration, in `MigrateOutcome.phases` (only those that ran).
pub mod phase {
    pub const PRE_HOOK: &str = "pre_hook";
    /// Applying the pending files, or running the migration command.
    pub const APPLY: &str = "apply";
    /// The `health` check and the policy's checks.
    pub const CHECKS: &str = "checks";
    /// Restoring the pre-migration backup after a failed check.
    pub const RESTORE: &str = "restore";
    pub const POST_HOOK: &str = "post_hook";
}

/// Name of the check that the migrated database still accepts connections and writes.
pub const HEALTH_CHECK: &str = "health";

/// Key of the session-level advisory lock a migration holds on its database
/// (`pg_try_advisory_lock(6287397008093824850)`: "WARDMIGR" in ASCII). Advisory locks are
/// per database, so migrations of different databases never wait for each other.
pub const LOCK_KEY: i64 = 0x5741_5244_4D49_4752;

/// Environment values at least this long are replaced in captured output: shorter ones
/// would blank out ordinary words and digits.
const MIN_REDACTED_ENV_VALUE: usize = 4;

/// How often the `health` check tries to connect and query before it fails.
const HEALTH_ATTEMPTS: u32 = 3;
/// How long the `health` check waits between its attempts.
const HEALTH_RETRY_DELAY: Duration = Duration::from_secs(1);
/// The longest one attempt of the `health` check may take.
const HEALTH_ATTEMPT_TIMEOUT: Duration = Duration::from_secs(10);

/// Runs the migration of `params` against `target`. A failure (refusal and cancellation
/// included) is an [`AgentError::Migration`] that carries the outcome so far.
pub async fn run(
    ctx: &AgentContext,
    target: &OrderTarget,
    order_id: &str,
    params: &v1::MigrateParams,
    progress: &ProgressReporter,
    cancel: &CancellationToken,
) -> AgentResult<v1::MigrateOutcome> {
    let config = ctx
        .config
        .database(&target.id.database)
        .and_then(|db| db.migrate.clone())
        .unwrap_or_default();
    let mut migration = Migration {
        ctx,
        target,
        order_id,
        params,
        config,
        on_check_failure: OnCheckFailure::Stop,
        outcome: v1::MigrateOutcome {
            pre_migration_artifact_id: params
                .pre_migration
                .as_ref()
                .map(|p| p.artifact_id.clone())
                .unwrap_or_default(),
            ..v1::MigrateOutcome::default()
        },
    };
    tracing::info!(
        %order_id,
        database = %target.db.label,
        status_only = params.status_only,
        command = match &params.source {
            Some(v1::migrate_params::Source::Command(name)) => name.as_str(),
            _ => "",
        },
        "migration started"
    );
    let result = migration.execute(progress, cancel).await;
    let outcome = migration.outcome;
    match result {
        Ok(()) => {
            tracing::info!(
                %order_id,
                database = %target.db.label,
                applied = outcome.applied.len(),
                already_applied = outcome.already_applied.len(),
                pending = outcome.pending.len(),
                changed = outcome.changed.len(),
                "migration finished"
            );
            Ok(outcome)
        }
        Err(failure) => {
            tracing::warn!(
                %order_id,
                database = %target.db.label,
                applied = outcome.applied.len(),
                failed_version = %outcome.failed_version,
                restored = outcome.restored,
                cancelled = failure.cancelled,
                artifact_corrupt = failure.artifact_corrupt,
                error = %failure.reason,
                "migration failed"
            );
            Err(AgentError::Migration {
                outcome: Box::new(outcome),
                reason: failure.reason,
                cancelled: failure.cancelled,
                artifact_corrupt: failure.artifact_corrupt,
            })
        }
    }
}

/// Why a migration stopped, for people; `cancelled` when a cancel stopped it;
/// `artifact_corrupt` when the restore after a failed check proved the pre-migration backup
/// unusable.
#[derive(Debug, Default)]
struct Failure {
    reason: String,
    cancelled: bool,
    artifact_corrupt: bool,
}

impl Failure {
    fn new(reason: String) -> Self {
        Self {
            reason,
            ..Self::default()
        }
    }

    fn cancelled(reason: String) -> Self {
        Self {
            reason,
            cancelled: true,
            ..Self::default()
        }
    }
}

impl From<AgentError> for Failure {
    fn from(error: AgentError) -> Self {
        Self {
            cancelled: error.is_cancelled(),
            reason: error.to_string(),
            ..Self::default()
        }
    }
}

/// What the order migrates with, checked against the agent's configuration.
enum Source {
    Sql(Vec<MigrationFile>),
    Command { name: String, argv: Vec<String> },
}

/// One migration order being executed, with its outcome so far.
struct Migration<'a> {
    ctx: &'a AgentContext,
    target: &'a OrderTarget,
    order_id: &'a str,
    params: &'a v1::MigrateParams,
    /// `[databases.migrate]` of the database; the defaults when it has none.
    config: MigrateConfig,
    /// Parsed from the parameters before anything runs.
    on_check_failure: OnCheckFailure,
    outcome: v1::MigrateOutcome,
}

impl Migration<'_> {
    async fn execute(
        &mut self,
        progress: &ProgressReporter,
        cancel: &CancellationToken,
    ) -> Result<(), Failure> {
        self.on_check_failure = self.on_check_failure()?;
        let source = self.source()?;
        let db = self.target.db.clone();
        if self.params.status_only {
            let Source::Sql(files) = &source else {
                return Err(Failure::new(
                    "migration status compares SQL files with the database; a migration command \
                     keeps its own records"
                        .to_owned(),
                ));
            };
            let mut conn = cancellable(cancel, db.connect()).await?;
            let recorded = cancellable(cancel, read_recorded(&db, &mut conn, false)).await;
            let _ = conn.close().await;
            classify(files, recorded?).report(&mut self.outcome);
            return Ok(());
        }
        let mut conn = cancellable(cancel, db.connect()).await?;
        let pid = cancellable(cancel, lock(&db, &mut conn)).await?;
        let pending = match &source {
            Source::Sql(files) => {
                let (recorded, by_this_order) = cancellable(cancel, async {
                    create_tracking_table(&db, &mut conn).await?;
                    let recorded = read_recorded(&db, &mut conn, true).await?;
                    let by_this_order = recorded_by_order(&db, &mut conn, self.order_id).await?;
                    Ok((recorded, by_this_order))
                })
                .await?;
                let plan = classify(files, recorded);
                plan.report(&mut self.outcome);
                // The refusals below come before the pre-hook: nothing ran, so there is
                // nothing to undo and no restore hint.
                if !by_this_order.is_empty() {
                    return Err(Failure::new(repeated_refusal(
                        self.order_id,
                        &db.label,
                        &by_this_order,
                    )));
                }
                if !plan.changed.is_empty() {
                    return Err(Failure::new(changed_refusal(&db.label, &plan.changed)));
                }
                if let Some(refusal) =
                    guard_refusal(&self.params.deny_sql, &plan.pending, &db.label)
                {
                    return Err(Failure::new(refusal));
                }
                plan.pending
            }
            Source::Command { .. } => Vec::new(),
        };
        // The pre-hook's turn has come: from here on, the post-hook runs whatever happens.
        let migrated = self
            .migrate(conn, pid, &source, pending, progress, cancel)
            .await;
        self.post_hook(migrated).await
    }

    /// Parses `on_check_failure`; empty means `stop`.
    fn on_check_failure(&self) -> Result<OnCheckFailure, Failure> {
        match self.params.on_check_failure.as_str() {
            "" => Ok(OnCheckFailure::Stop),
            text => OnCheckFailure::from_str(text).map_err(|why| {
                Failure::new(format!(
                    "refusing the migration of {}: {why}; nothing was changed",
                    self.target.db.label
                ))
            }),
        }
    }

    /// Checks what the order asks for before anything runs: the files again (the coordinator
    /// validated them, but the agent applies them), or the command against the
    /// configuration and the destructive guard.
    fn source(&self) -> Result<Source, Failure> {
        let label = &self.target.db.label;
        match &self.params.source {
            None => Err(Failure::new(format!(
                "migration order {} has no SQL files and no command; is the coordinator newer \
                 than this agent?",
                self.order_id
            ))),
            Some(v1::migrate_params::Source::Sql(sql)) => {
                let files = sql.files.iter().map(MigrationFile::from).collect();
                validate_set(files).map(Source::Sql).map_err(|error| {
                    Failure::new(format!(
                        "refusing the migration of {label}: {error}; nothing was changed"
                    ))
                })
            }
            Some(v1::migrate_params::Source::Command(name)) => {
                let commands = &self.config.commands;
                let Some(argv) = commands.get(name) else {
                    let allowed = if commands.is_empty() {
                        "no migration commands".to_owned()
                    } else {
                        let names: Vec<&str> = commands.keys().map(String::as_str).collect();
                        format!("migration commands {}", names.join(", "))
                    };
                    return Err(Failure::new(format!(
                        "agent {} allows {allowed} for {}; add {name} under \
                         [databases.migrate.commands] in its configuration to allow it",
                        self.ctx.config.name, self.target.id.database
                    )));
                };
                let guard = Guard {
                    sql: Vec::new(),
                    commands: self.params.deny_commands.clone(),
                };
                if let Some(violation) = guard.check_command(argv) {
                    return Err(Failure::new(format!(
                        "migration command {name} was refused by the destructive guard: \
                         {violation}; nothing was run. If it must run on {label}, break glass: \
                         migrate again with --emergency --reason TEXT"
                    )));
                }
                Ok(Source::Command {
                    name: name.clone(),
                    argv: argv.clone(),
                })
            }
        }
    }

    /// Runs the pre-hook, applies, then checks (see [`Migration::check`]). `conn` holds the
    /// migration lock (its session is `pid`).
    async fn migrate(
        &mut self,
        mut conn: PgConnection,
        pid: i32,
        source: &Source,
        pending: Vec<MigrationFile>,
        progress: &ProgressReporter,
        cancel: &CancellationToken,
    ) -> Result<(), Failure> {
        if let Some(argv) = self.config.pre_hook.clone() {
            let started = Instant::now();
            let run = self.run_program(&argv, None, cancel).await;
            self.record(phase::PRE_HOOK, started);
            if let Err(why) = run.result {
                return Err(Failure {
                    reason: format!("the pre_hook {why}; nothing was applied"),
                    cancelled: run.cancelled,
                    ..Failure::default()
                });
            }
        }

        let started = Instant::now();
        let applied = match source {
            Source::Sql(_) => {
                let this = &mut *self;
                let conn = &mut conn;
                progress
                    .track(phase::APPLY, move |counter| {
                        this.apply_files(conn, pid, pending, counter, cancel)
                    })
                    .await
            }
            Source::Command { name, argv } => self.run_command(name, argv, cancel).await,
        };
        self.record(phase::APPLY, started);
        // After a failure the connection may be in the middle of being ended; it is only
        // dropped. Dropping it releases the lock either way.
        applied?;
        // A command that ran may have changed anything; SQL files changed the database only
        // if this order applied one (all of them were applied before otherwise).
        let changed = match source {
            Source::Sql(_) => !self.outcome.applied.is_empty(),
            Source::Command { .. } => true,
        };
        self.check(conn, changed, progress, cancel).await
    }

    /// Runs the post-checks of an applied migration, and when one fails, restores the
    /// pre-migration backup or says how to. Without `changed` (this order applied nothing),
    /// a failed check restores nothing: nothing this migration did could be undone. `conn`,
    /// which holds the migration lock, is closed before any restore.
    async fn check(
        &mut self,
        conn: PgConnection,
        changed: bool,
        progress: &ProgressReporter,
        cancel: &CancellationToken,
    ) -> Result<(), Failure> {
        let started = Instant::now();
        let checks = cancellable(cancel, async { Ok(self.post_checks().await) }).await;
        self.record(phase::CHECKS, started);
        let _ = conn.close().await;
        let checks = checks.map_err(|_| {
            Failure::cancelled(if changed {
                format!(
                    "cancelled during the post-checks; the migration was applied; {}",
                    self.restore_hint()
                )
            } else {
                "cancelled during the post-checks; this migration applied nothing (every file \
                 was applied before)"
                    .to_owned()
            })
        })?;
        self.outcome.checks = checks;
        let failed: Vec<String> = self
            .outcome
            .checks
            .iter()
            .filter(|check| !check.passed)
            .map(|check| format!("post-check {:?} failed: {}", check.name, check.error))
            .collect();
        if failed.is_empty() {
            return Ok(());
        }
        let failed = failed.join("; ");
        let database = self.target.id.to_string();
        if !changed {
            return Err(Failure::new(format!(
                "{failed}; this migration applied nothing (every file was applied before), so \
                 nothing was restored and {database} was left as it was: the checks fail \
                 without it; fix the database or the checks"
            )));
        }
        let pre_migration = match (self.on_check_failure, self.params.pre_migration.clone()) {
            (OnCheckFailure::Restore, Some(pre_migration)) => pre_migration,
            (OnCheckFailure::Restore, None) => {
                return Err(Failure::new(format!(
                    "{failed}; no pre-migration backup was taken (glass was broken with \
                     --skip-safety-backup), so nothing was restored: {database} stays as the \
                     migration left it; fix forward or restore an older backup"
                )));
            }
            (OnCheckFailure::Stop, _) => {
                return Err(Failure::new(format!(
                    "{failed}; the migration stays applied (on_check_failure = stop); {}",
                    self.restore_hint()
                )));
            }
        };

        let started = Instant::now();
        let restore = v1::RestoreParams {
            artifact_id: pre_migration.artifact_id.clone(),
            artifact_path: pre_migration.artifact_path.clone(),
            sha256: pre_migration.sha256.clone(),
            new_name: String::new(),
            replace: true,
        };
        tracing::warn!(
            order_id = %self.order_id,
            database = %self.target.db.label,
            artifact_id = %pre_migration.artifact_id,
            "post-checks failed; restoring the pre-migration backup"
        );
        let restored = restore::run(
            self.ctx,
            self.target,
            self.order_id,
            &restore,
            progress,
            cancel,
        )
        .await;
        self.record(phase::RESTORE, started);
        match restored {
            Ok(restored) => {
                self.outcome.restored = true;
                Err(Failure::new(format!(
                    "{failed}; restored pre-migration backup {} over {database} ({} tables, {} \
                     rows verified)",
                    pre_migration.artifact_id, restored.tables_verified, restored.rows_verified
                )))
            }
            // The restore read the artifact and found it unusable: its command is no way
            // back, and the coordinator marks the artifact corrupt.
            Err(error) if error.proves_artifact_corrupt() => Err(Failure {
                reason: format!(
                    "{failed}; restoring pre-migration backup {} over {database} failed: the \
                     pre-migration backup is unusable: {error}; {database} stays as the \
                     migration left it: fix forward or restore an older backup",
                    pre_migration.artifact_id,
                ),
                cancelled: false,
                artifact_corrupt: true,
            }),
            Err(error) => Err(Failure {
                cancelled: error.is_cancelled(),
                reason: format!(
                    "{failed}; restoring pre-migration backup {} over {database} failed too: \
                     {error}; {database} stays as the migration left it; {}",
                    pre_migration.artifact_id,
                    self.restore_hint()
                ),
                artifact_corrupt: false,
            }),
        }
    }

    /// Applies `files` (pending, in version order) one by one, counting their SQL bytes into
    /// `counter`; stops at the first failure, with `failed_version` set.
    async fn apply_files(
        &mut self,
        conn: &mut PgConnection,
        pid: i32,
        files: Vec<MigrationFile>,
        counter: Arc<AtomicU64>,
        cancel: &CancellationToken,
    ) -> Result<(), Failure> {
        let db = self.target.db.clone();
        let applier = FileApplier {
            db: &db,
            pid,
            order_id: self.order_id,
            cancel,
        };
        for file in files {
            let file_name = file.file_name();
            if cancel.is_cancelled() {
                let reason = format!("cancelled before {file_name}; {}", self.applied_before());
                return Err(Failure::cancelled(
                    self.with_restore_hint(reason, !self.outcome.applied.is_empty()),
                ));
            }
            tracing::info!(
                order_id = %self.order_id,
                database = %db.label,
                file = %file_name,
                transactional = file.transactional(),
                "applying migration"
            );
            match applier.apply(conn, &file).await {
                Ok(applied) => {
                    counter.fetch_add(
                        u64::try_from(file.sql.len()).unwrap_or(u64::MAX),
                        Ordering::Relaxed,
                    );
                    self.outcome
                        .pending
                        .retain(|pending| pending.version != file.version);
                    self.outcome.applied.push(applied);
                }
                Err(error) => {
                    self.outcome.failed_version = file.version.clone();
                    return Err(self.file_failure(&file_name, error));
                }
            }
        }
        Ok(())
    }

    /// Says why a file failed, what it left behind, what this order applied before it, and
    /// how to undo the order when the database changed.
    fn file_failure(&mut self, file_name: &str, error: FileError) -> Failure {
        let applied_before = self.applied_before();
        let applied_any = !self.outcome.applied.is_empty();
        let (reason, changed, cancelled) = match error {
            FileError::Sql(why) => (
                format!("{file_name} failed and was rolled back: {why}; {applied_before}"),
                applied_any,
                false,
            ),
            FileError::Statement {
                number,
                of,
                text,
                why,
            } => (
                format!(
                    "{file_name} failed at statement {number} of {of} ({text}): {why}; the file \
                     runs without a transaction ({NO_TRANSACTION_MARKER}), so {} and the file is \
                     not recorded as applied; {applied_before}",
                    if number == 1 {
                        "none of its statements was applied".to_owned()
                    } else {
                        format!("its statements before statement {number} stayed applied")
                    }
                ),
                applied_any || number > 1,
                false,
            ),
            FileError::OpenTransaction => (
                format!(
                    "{file_name} left a transaction open (a BEGIN without COMMIT); it was rolled \
                     back and the file is not recorded as applied; end every transaction the \
                     file opens; {applied_before}"
                ),
                true,
                false,
            ),
            FileError::Record {
                why,
                transactional: true,
            } => (
                format!(
                    "{file_name} could not be recorded in {TRACKING_TABLE} and was rolled back: \
                     {why}; {applied_before}"
                ),
                applied_any,
                false,
            ),
            FileError::Record {
                why,
                transactional: false,
            } => (
                format!(
                    "{file_name} was applied but could not be recorded in {TRACKING_TABLE}: \
                     {why}; it would run again: record it by hand; {applied_before}"
                ),
                true,
                false,
            ),
            FileError::Cancelled { statement: None } => (
                format!(
                    "cancelled while applying {file_name}; it was rolled back; {applied_before}"
                ),
                applied_any,
                true,
            ),
            FileError::Cancelled {
                statement: Some((number, of)),
            } => (
                format!(
                    "cancelled at statement {number} of {of} of {file_name}; the file runs \
                     without a transaction, so its statements before statement {number} stayed \
                     applied and the file is not recorded as applied; {applied_before}"
                ),
                applied_any || number > 1,
                true,
            ),
        };
        Failure {
            reason: self.with_restore_hint(reason, changed),
            cancelled,
            ..Failure::default()
        }
    }

    /// Lists the files this order applied so far, for errors.
    fn applied_before(&self) -> String {
        if self.outcome.applied.is_empty() {
            "nothing was applied before it by this order".to_owned()
        } else {
            let names: Vec<String> = self
                .outcome
                .applied
                .iter()
                .map(|a| format!("{}_{}.sql", a.version, a.name))
                .collect();
            format!("applied before it by this order: {}", names.join(", "))
        }
    }

    /// Appends how to undo the order to `reason` when the database `changed`.
    fn with_restore_hint(&mut self, reason: String, changed: bool) -> String {
        if changed {
            format!("{reason}; {}", self.restore_hint())
        } else {
            reason
        }
    }

    /// Says how to bring back the state before the migration, and sets `restore_command`
    /// when there is a pre-migration backup to restore.
    fn restore_hint(&mut self) -> String {
        match &self.params.pre_migration {
            Some(pre_migration) => {
                let command = format!(
                    "warden restore {} --replace --target {} --reason \"undo migration (order {})\"",
                    pre_migration.artifact_id, self.target.id, self.order_id
                );
                self.outcome.restore_command = command.clone();
                format!("to undo the migration, restore the pre-migration backup: {command}")
            }
            None => "no pre-migration backup was taken (glass was broken with \
                     --skip-safety-backup): fix forward or restore an older backup"
                .to_owned(),
        }
    }

    /// Runs the allowed migration command; its output's tail goes into the outcome.
    async fn run_command(
        &mut self,
        name: &str,
        argv: &[String],
        cancel: &CancellationToken,
    ) -> Result<(), Failure> {
        tracing::info!(
            order_id = %self.order_id,
            database = %self.target.db.label,
            command = %name,
            "running migration command"
        );
        let run = self.run_program(argv, None, cancel).await;
        self.outcome.command_output = run.output;
        match run.result {
            Ok(()) => Ok(()),
            Err(why) if run.started => {
                let reason = self.with_restore_hint(
                    format!(
                        "migration command {name} {why}; the command may have changed the database"
                    ),
                    true,
                );
                Err(Failure {
                    reason,
                    cancelled: run.cancelled,
                    ..Failure::default()
                })
            }
            // It never ran, so the database is as it was.
            Err(why) => Err(Failure {
                reason: format!("migration command {name} {why}; nothing was run"),
                cancelled: run.cancelled,
                ..Failure::default()
            }),
        }
    }

    /// Runs the post-hook, when one is configured, after `migrated`, and folds its result
    /// in. It is called whenever the pre-hook's turn came (see the module documentation),
    /// whatever `migrated` is, with `WARDEN_MIGRATION_STATUS` = `succeeded`, `failed` or
    /// `cancelled`. It is not cancellable (it often undoes what the pre-hook did); its
    /// timeout bounds it.
    async fn post_hook(&mut self, migrated: Result<(), Failure>) -> Result<(), Failure> {
        let Some(argv) = self.config.post_hook.clone() else {
            return migrated;
        };
        let status = match &migrated {
            Ok(()) => "succeeded",
            Err(failure) if failure.cancelled => "cancelled",
            Err(_) => "failed",
        };
        let started = Instant::now();
        let run = self
            .run_program(&argv, Some(status), &CancellationToken::new())
            .await;
        self.record(phase::POST_HOOK, started);
        match (migrated, run.result) {
            (migrated, Ok(())) => migrated,
            (Ok(()), Err(why)) => Err(Failure::new(format!(
                "the migration itself succeeded, but the post_hook {why}"
            ))),
            (Err(failure), Err(why)) => Err(Failure {
                reason: format!("{}; the post_hook failed too: it {why}", failure.reason),
                ..failure
            }),
        }
    }

    /// The `health` check, then the policy's checks, each as a result.
    async fn post_checks(&self) -> Vec<v1::CheckResult> {
        let db = &self.target.db;
        let health = health_check(db).await;
        let mut results = vec![v1::CheckResult {
            name: HEALTH_CHECK.to_owned(),
            passed: health.is_ok(),
            error: health.err().unwrap_or_default(),
        }];
        if !self.params.checks.is_empty() {
            match drill::run_checks(db, &self.params.checks, self.ctx.config.drill_check_timeout)
                .await
            {
                Ok(checks) => results.extend(checks),
                Err(error) => {
                    results.extend(self.params.checks.iter().map(|check| v1::CheckResult {
                        name: check.name.clone(),
                        passed: false,
                        error: format!("not run: {error}"),
                    }))
                }
            }
        }
        results
    }

    /// Runs a command or hook with the database's environment; `status` is the migration's
    /// result, for the post-hook.
    async fn run_program(
        &self,
        argv: &[String],
        status: Option<&str>,
        cancel: &CancellationToken,
    ) -> ProgramRun {
        let mut env: Vec<(String, String)> = self.config.env.clone().into_iter().collect();
        let url = &self.target.db.url;
        env.extend(
            url.client_env()
                .into_iter()
                .map(|(key, value)| (key.to_owned(), value)),
        );
        env.push(("WARDEN_ORDER_ID".to_owned(), self.order_id.to_owned()));
        env.push(("WARDEN_DATABASE".to_owned(), self.target.id.to_string()));
        if let Some(status) = status {
            env.push(("WARDEN_MIGRATION_STATUS".to_owned(), status.to_owned()));
        }
        let mut secrets: Vec<String> = self
            .config
            .env
            .values()
            .filter(|value| value.chars().count() >= MIN_REDACTED_ENV_VALUE)
            .cloned()
            .collect();
        // The password as is and percent-encoded, the key passphrase, and the whole URL a
        // tool may echo (its credentials encoded in ways the parts do not cover).
        secrets.extend(url.secrets());
        secrets.extend(
            env.iter()
                .filter(|(key, _)| key == "DATABASE_URL")
                .map(|(_, value)| value.clone()),
        );
        let program = Program {
            argv,
            workdir: self.config.workdir.as_deref(),
            env,
            timeout: self.config.timeout,
            redactor: Redactor::new(secrets),
        };
        program.run(cancel).await
    }

    /// Records how long `phase` took.
    fn record(&mut self, phase: &str, started: Instant) {
        self.outcome.phases.push(v1::PhaseTiming {
            phase: phase.to_owned(),
            millis: elapsed_ms(started),
        });
    }
}

/// Why one migration file was not applied.
#[derive(Debug)]
enum FileError {
    /// A transactional file failed (its SQL, or its commit); it was rolled back.
    Sql(String),
    /// A statement of a no-transaction file failed (`text`: its first words).
    Statement {
        number: usize,
        of: usize,
        text: String,
        why: String,
    },
    /// A no-transaction file opened a transaction and did not end it.
    OpenTransaction,
    /// The tracking row could not be written (nor the session reset before it).
    Record { why: String, transactional: bool },
    /// Cancelled; for a no-transaction file, during statement `(number, of)`.
    Cancelled { statement: Option<(usize, usize)> },
}

/// What applying one file needs besides the file and the connection: the database, the
/// migration session's process id (to end it after a cancel), the order and its cancel.
struct FileApplier<'a> {
    db: &'a PgDatabase,
    pid: i32,
    order_id: &'a str,
    cancel: &'a CancellationToken,
}

impl FileApplier<'_> {
    /// Applies `file` on `conn`, the migration session, and records it.
    async fn apply(
        &self,
        conn: &mut PgConnection,
        file: &MigrationFile,
    ) -> Result<v1::AppliedMigration, FileError> {
        let started = Instant::now();
        if file.transactional() {
            self.in_transaction(conn, file, started).await
        } else {
            self.statement_by_statement(conn, file, started).await
        }
    }

    /// A transactional file: its whole SQL and its tracking row in one transaction.
    async fn in_transaction(
        &self,
        conn: &mut PgConnection,
        file: &MigrationFile,
        started: Instant,
    ) -> Result<v1::AppliedMigration, FileError> {
        let sql_error = |e: sqlx::Error| FileError::Sql(describe_sql_error(self.db, &e, None));
        let mut tx = conn.begin().await.map_err(sql_error)?;
        // The simple query protocol: the file's statements as one text, as psql sends it.
        let ran = tokio::select! {
            ran = sqlx::raw_sql(AssertSqlSafe(file.sql.clone())).execute(&mut *tx) => ran,
            _ = self.cancel.cancelled() => {
                drop(tx);
                end_session(self.db, self.pid).await;
                return Err(FileError::Cancelled { statement: None });
            }
        };
        if let Err(error) = ran {
            // If the rollback fails too, the connection is gone, and with it the transaction.
            let _ = tx.rollback().await;
            return Err(FileError::Sql(describe_sql_error(
                self.db,
                &error,
                Some(&file.sql),
            )));
        }
        let applied = self.record(&mut tx, file, started, true).await?;
        // Deferred constraints are checked now: a failure here is the file's.
        tx.commit().await.map_err(sql_error)?;
        Ok(applied)
    }

    /// A no-transaction file: statement by statement, then its tracking row.
    async fn statement_by_statement(
        &self,
        conn: &mut PgConnection,
        file: &MigrationFile,
        started: Instant,
    ) -> Result<v1::AppliedMigration, FileError> {
        let statements = file.statements();
        let of = statements.len();
        for (i, statement) in statements.iter().enumerate() {
            let number = i + 1;
            let ran = tokio::select! {
                ran = sqlx::raw_sql(AssertSqlSafe(statement.clone())).execute(&mut *conn) => ran,
                _ = self.cancel.cancelled() => {
                    end_session(self.db, self.pid).await;
                    return Err(FileError::Cancelled { statement: Some((number, of)) });
                }
            };
            if let Err(error) = ran {
                // A transaction the file opened is aborted now; end it.
                if statements[..i].iter().any(|s| opens_transaction(s)) {
                    let _ = sqlx::raw_sql("ROLLBACK").execute(&mut *conn).await;
                }
                return Err(FileError::Statement {
                    number,
                    of,
                    text: first_words(statement, 6),
                    why: describe_sql_error(self.db, &error, Some(statement)),
                });
            }
        }
        // Outside a transaction block, a simple query's transaction starts with its statement.
        let open: bool = sqlx::raw_sql("SELECT now() <> statement_timestamp()")
            .fetch_one(&mut *conn)
            .await
            .and_then(|row| row.try_get(0))
            .map_err(self.record_error(false))?;
        if open {
            let _ = sqlx::raw_sql("ROLLBACK").execute(&mut *conn).await;
            return Err(FileError::OpenTransaction);
        }
        self.record(conn, file, started, false).await
    }

    /// Resets the session the file may have changed, then writes its tracking row.
    async fn record(
        &self,
        conn: &mut PgConnection,
        file: &MigrationFile,
        started: Instant,
        transactional: bool,
    ) -> Result<v1::AppliedMigration, FileError> {
        reset_session(conn)
            .await
            .map_err(self.record_error(transactional))?;
        insert_tracking_row(conn, file, self.order_id, started, transactional)
            .await
            .map_err(self.record_error(transactional))
    }

    fn record_error(&self, transactional: bool) -> impl Fn(sqlx::Error) -> FileError + '_ {
        move |e| FileError::Record {
            why: describe_sql_error(self.db, &e, None),
            transactional,
        }
    }
}

/// Returns whether a statement starts a transaction block.
fn opens_transaction(statement: &str) -> bool {
    let first = statement
        .split_whitespace()
        .next()
        .unwrap_or_default()
        .trim_end_matches(';')
        .to_ascii_uppercase();
    first == "BEGIN" || first == "START"
}

/// Gives the next file the session as it was at connect time: a file's `SET ROLE`,
/// `SET search_path` and other settings end with it (and never decide who writes the
/// tracking row).
async fn reset_session(conn: &mut PgConnection) -> Result<(), sqlx::Error> {
    sqlx::raw_sql("RESET SESSION AUTHORIZATION; RESET ROLE; RESET ALL")
        .execute(conn)
        .await
        .map(|_| ())
}

/// Ends the migration's own session from another connection, so that a statement a cancel
/// interrupted stops on the server and its transaction rolls back (dropping the connection
/// alone leaves the server running it until it next talks to the client).
async fn end_session(db: &PgDatabase, pid: i32) {
    let ended = async {
        let mut conn = db.connect().await?;
        sqlx::query("SELECT pg_terminate_backend($1)")
            .bind(pid)
            .execute(&mut conn)
            .await
            .map_err(db.sql_error("cannot end the migration session on"))?;
        let _ = conn.close().await;
        Ok::<(), AgentError>(())
    };
    match tokio::time::timeout(Duration::from_secs(10), ended).await {
        Ok(Ok(())) => {}
        Ok(Err(error)) => {
            tracing::warn!(database = %db.label, pid, %error, "cannot end the cancelled migration session; the server ends it when it notices the closed connection")
        }
        Err(_) => {
            tracing::warn!(database = %db.label, pid, "no answer when ending the cancelled migration session")
        }
    }
}

/// Turns a failed statement into the server's own words: the message, where in `sql` it
/// failed (line and column, when the server says), the detail, the hint, the context, and
/// the SQLSTATE; any password is redacted.
fn describe_sql_error(db: &PgDatabase, error: &sqlx::Error, sql: Option<&str>) -> String {
    let Some(pg) = error
        .as_database_error()
        .and_then(|e| e.try_downcast_ref::<PgDatabaseError>())
    else {
        return db.url.redact(&error.to_string());
    };
    let mut text = pg.message().to_owned();
    if let (Some(PgErrorPosition::Original(position)), Some(sql)) = (pg.position(), sql) {
        let (line, column) = line_and_column(sql, position);
        text.push_str(&format!(" (at line {line}, column {column})"));
    }
    if let Some(detail) = pg.detail() {
        text.push_str(&format!("; detail: {detail}"));
    }
    if let Some(hint) = pg.hint() {
        text.push_str(&format!("; hint: {hint}"));
    }
    if let Some(context) = pg.r#where() {
        text.push_str(&format!("; context: {}", context.replace('\n', " / ")));
    }
    text.push_str(&format!(" [SQLSTATE {}]", pg.code()));
    db.url.redact(&text)
}

/// Turns the server's 1-based character position in `sql` into a 1-based line and column.
fn line_and_column(sql: &str, position: usize) -> (usize, usize) {
    let before: Vec<char> = sql.chars().take(position.saturating_sub(1)).collect();
    let line = before.iter().filter(|&&c| c == '\n').count() + 1;
    let column = before.iter().rev().take_while(|&&c| c != '\n').count() + 1;
    (line, column)
}

/// Takes the migration lock of the database on `conn`, without waiting, and returns the
/// session's process id (to end it after a cancel).
async fn lock(db: &PgDatabase, conn: &mut PgConnection) -> AgentResult<i32> {
    let (locked, pid): (bool, i32) =
        sqlx::query_as("SELECT pg_try_advisory_lock($1), pg_backend_pid()")
            .bind(LOCK_KEY)
            .fetch_one(&mut *conn)
            .await
            .map_err(db.sql_error("cannot take the migration lock of"))?;
    if locked {
        return Ok(pid);
    }
    let holder: Option<(i32, String)> = sqlx::query_as(
        "SELECT l.pid, coalesce(a.application_name, '') \
         FROM pg_locks l LEFT JOIN pg_stat_activity a ON a.pid = l.pid \
         WHERE l.locktype = 'advisory' AND l.granted AND l.objsubid = 1 \
           AND l.database = (SELECT oid FROM pg_database WHERE datname = current_database()) \
           AND l.classid::int8 = $1 AND l.objid::int8 = $2 \
         LIMIT 1",
    )
    .bind(LOCK_KEY >> 32)
    .bind(LOCK_KEY & 0xFFFF_FFFF)
    .fetch_optional(&mut *conn)
    .await
    .unwrap_or_default();
    let holder = match holder {
        Some((pid, application)) if !application.is_empty() => {
            format!(" (session pid {pid}, application {application:?})")
        }
        Some((pid, _)) => format!(" (session pid {pid})"),
        None => String::new(),
    };
    Err(AgentError::InvalidOrder(format!(
        "another migration holds the lock of {}{holder}: migrations of one database never run \
         at the same time; try again when it has finished; nothing was changed",
        db.label
    )))
}

/// Creates the tracking schema and table if they are missing.
async fn create_tracking_table(db: &PgDatabase, conn: &mut PgConnection) -> AgentResult<()> {
    let schema = TRACKING_TABLE.split('.').next().unwrap_or("warden");
    sqlx::raw_sql(AssertSqlSafe(format!(
        "CREATE SCHEMA IF NOT EXISTS {schema}; \
         CREATE TABLE IF NOT EXISTS {TRACKING_TABLE} ( \
           version text PRIMARY KEY, \
           name text NOT NULL, \
           sha256 text NOT NULL, \
           applied_at timestamptz NOT NULL DEFAULT now(), \
           duration_ms bigint NOT NULL, \
           order_id text NOT NULL, \
           transactional boolean NOT NULL)"
    )))
    .execute(conn)
    .await
    .map_err(db.sql_error(&format!("cannot create {TRACKING_TABLE} in")))?;
    Ok(())
}

/// Writes the tracking row of an applied file and returns it as the outcome reports it.
async fn insert_tracking_row(
    conn: &mut PgConnection,
    file: &MigrationFile,
    order_id: &str,
    started: Instant,
    transactional: bool,
) -> Result<v1::AppliedMigration, sqlx::Error> {
    let duration_ms = elapsed_ms(started);
    let applied_unix_ms: i64 = sqlx::query_scalar(AssertSqlSafe(format!(
        "INSERT INTO {TRACKING_TABLE} \
           (version, name, sha256, applied_at, duration_ms, order_id, transactional) \
         VALUES ($1, $2, $3, clock_timestamp(), $4, $5, $6) \
         RETURNING (extract(epoch FROM applied_at) * 1000)::int8"
    )))
    .bind(&file.version)
    .bind(&file.name)
    .bind(&file.sha256)
    .bind(i64::try_from(duration_ms).unwrap_or(i64::MAX))
    .bind(order_id)
    .bind(transactional)
    .fetch_one(conn)
    .await?;
    Ok(v1::AppliedMigration {
        version: file.version.clone(),
        name: file.name.clone(),
        sha256: file.sha256.clone(),
        applied_unix_ms,
        duration_ms,
    })
}

/// Reads what the tracking table records. Without `exists_for_sure`, a missing table means
/// nothing was applied.
async fn read_recorded(
    db: &PgDatabase,
    conn: &mut PgConnection,
    exists_for_sure: bool,
) -> AgentResult<Vec<v1::AppliedMigration>> {
    if !exists_for_sure {
        let exists: bool = sqlx::query_scalar("SELECT to_regclass($1) IS NOT NULL")
            .bind(TRACKING_TABLE)
            .fetch_one(&mut *conn)
            .await
            .map_err(db.sql_error(&format!("cannot look for {TRACKING_TABLE} in")))?;
        if !exists {
            return Ok(Vec::new());
        }
    }
    let rows: Vec<(String, String, String, i64, i64)> = sqlx::query_as(AssertSqlSafe(format!(
        "SELECT version, name, sha256, (extract(epoch FROM applied_at) * 1000)::int8, \
           duration_ms \
         FROM {TRACKING_TABLE} ORDER BY applied_at, version"
    )))
    .fetch_all(conn)
    .await
    .map_err(db.sql_error(&format!("cannot read {TRACKING_TABLE} of")))?;
    Ok(rows
        .into_iter()
        .map(
            |(version, name, sha256, applied_unix_ms, duration_ms)| v1::AppliedMigration {
                version,
                name,
                sha256,
                applied_unix_ms,
                duration_ms: u64::try_from(duration_ms).unwrap_or_default(),
            },
        )
        .collect())
}

/// Returns the files (`VERSION_NAME.sql`) the tracking table records as applied by order
/// `order_id`.
async fn recorded_by_order(
    db: &PgDatabase,
    conn: &mut PgConnection,
    order_id: &str,
) -> AgentResult<Vec<String>> {
    let files: Vec<String> = sqlx::query_scalar(AssertSqlSafe(format!(
        "SELECT version || '_' || name || '.sql' FROM {TRACKING_TABLE} \
         WHERE order_id = $1 ORDER BY applied_at, version"
    )))
    .bind(order_id)
    .fetch_all(conn)
    .await
    .map_err(db.sql_error(&format!("cannot read {TRACKING_TABLE} of")))?;
    Ok(files)
}

/// The files compared with what the database recorded.
#[derive(Debug, Default, PartialEq)]
struct Plan {
    /// Recorded with the file's checksum.
    already_applied: Vec<v1::AppliedMigration>,
    /// Not recorded, in version order.
    pending: Vec<MigrationFile>,
    /// Recorded with another checksum than the file has.
    changed: Vec<v1::ChangedMigration>,
    /// Recorded, but not among the files.
    unknown: Vec<v1::AppliedMigration>,
}

impl Plan {
    fn report(&self, outcome: &mut v1::MigrateOutcome) {
        outcome.already_applied = self.already_applied.clone();
        outcome.pending = self
            .pending
            .iter()
            .map(|file| v1::MigrationRef {
                version: file.version.clone(),
                name: file.name.clone(),
            })
            .collect();
        outcome.changed = self.changed.clone();
        outcome.unknown = self.unknown.clone();
    }
}

/// Compares `files` (in version order) with the `recorded` rows. Versions compare as
/// numbers: `0002` and `2` are one version. A row whose version is not a number, or a second
/// row of one version, is unknown.
fn classify(files: &[MigrationFile], recorded: Vec<v1::AppliedMigration>) -> Plan {
    let mut plan = Plan::default();
    let mut by_number: BTreeMap<u64, v1::AppliedMigration> = BTreeMap::new();
    for row in recorded {
        match row.version.parse::<u64>() {
            Ok(number) if !by_number.contains_key(&number) => {
                by_number.insert(number, row);
            }
            _ => plan.unknown.push(row),
        }
    }
    for file in files {
        match by_number.remove(&file.number()) {
            Some(row) if row.sha256.eq_ignore_ascii_case(&file.sha256) => {
                plan.already_applied.push(row)
            }
            Some(row) => plan.changed.push(v1::ChangedMigration {
                version: file.version.clone(),
                name: file.name.clone(),
                recorded_sha256: row.sha256,
                file_sha256: file.sha256.clone(),
            }),
            None => plan.pending.push(file.clone()),
        }
    }
    plan.unknown.extend(by_number.into_values());
    plan.unknown
        .sort_by_key(|row| row.version.parse::<u64>().unwrap_or(u64::MAX));
    plan
}

/// Refuses an order whose applied files changed, naming each with both checksums.
fn changed_refusal(database: &str, changed: &[v1::ChangedMigration]) -> String {
    let files: Vec<String> = changed
        .iter()
        .map(|c| {
            format!(
                "{}_{}.sql was applied with sha256 {}, the file now has {}",
                c.version, c.name, c.recorded_sha256, c.file_sha256
            )
        })
        .collect();
    format!(
        "refusing to migrate {database}: {} applied migration{} changed since {}: {}; nothing \
         was applied. Never edit an applied migration: put the file back as it was applied and \
         add a new migration for the change",
        changed.len(),
        if changed.len() == 1 { "" } else { "s" },
        if changed.len() == 1 {
            "it was applied"
        } else {
            "they were applied"
        },
        files.join("; ")
    )
}

/// Refuses an order that already applied `files` to the database: it was delivered again,
/// e.g. after the agent restarted between applying and reporting.
fn repeated_refusal(order_id: &str, database: &str, files: &[String]) -> String {
    format!(
        "order {order_id} already applied migrations to {database} ({}); it is not run twice, \
         so nothing was applied now; see what is applied with: warden migrate status {database} \
         --dir DIR",
        files.join(", ")
    )
}

/// Checks the `pending` files against the SQL deny patterns of the destructive guard
/// (empty: the database is not guarded, or glass was broken), and returns the refusal
/// naming every file with its first denied statement. Files applied before are not checked:
/// an old file with a denied statement must not block every later migration.
fn guard_refusal(deny_sql: &[String], pending: &[MigrationFile], database: &str) -> Option<String> {
    if deny_sql.is_empty() {
        return None;
    }
    let guard = Guard {
        sql: deny_sql.to_vec(),
        commands: Vec::new(),
    };
    let violations: Vec<String> = pending
        .iter()
        .filter_map(|file| {
            guard
                .check_sql(&file.sql)
                .map(|violation| format!("{}: {violation}", file.file_name()))
        })
        .collect();
    if violations.is_empty() {
        return None;
    }
    Some(format!(
        "refused by the destructive guard: {}; nothing was applied. If it must run on \
         {database}, break glass: migrate again with --emergency --reason TEXT",
        violations.join("; ")
    ))
}

/// Connects to the migrated database and checks that it answers and accepts writes, trying
/// [`HEALTH_ATTEMPTS`] times, [`HEALTH_RETRY_DELAY`] apart, before it fails: a server that
/// a migration command restarted, or a connection slot briefly taken, is no failed check.
async fn health_check(db: &PgDatabase) -> Result<(), String> {
    retried(HEALTH_ATTEMPTS, HEALTH_RETRY_DELAY, || async {
        tokio::time::timeout(HEALTH_ATTEMPT_TIMEOUT, health_probe(db))
            .await
            .unwrap_or_else(|_| {
                Err(format!(
                    "no answer within {}s",
                    HEALTH_ATTEMPT_TIMEOUT.as_secs()
                ))
            })
    })
    .await
}

/// Runs `attempt` until it succeeds, at most `attempts` times, `delay` apart; the error is
/// the last attempt's, saying how often it was tried.
async fn retried<F, Fut>(attempts: u32, delay: Duration, mut attempt: F) -> Result<(), String>
where
    F: FnMut() -> Fut,
    Fut: std::future::Future<Output = Result<(), String>>,
{
    let mut last = String::new();
    for number in 1..=attempts {
        match attempt().await {
            Ok(()) => return Ok(()),
            Err(why) => last = why,
        }
        if number < attempts {
            tokio::time::sleep(delay).await;
        }
    }
    if attempts > 1 {
        last.push_str(&format!(
            " (tried {attempts} times, {} apart)",
            humantime::format_duration(delay)
        ));
    }
    Err(last)
}

/// One try of [`health_check`].
async fn health_probe(db: &PgDatabase) -> Result<(), String> {
    let mut conn = db.connect().await.map_err(|e| e.to_string())?;
    let answer: Result<(i32, bool), _> = sqlx::query_as("SELECT 1, pg_is_in_recovery()")
        .fetch_one(&mut conn)
        .await;
    let _ = conn.close().await;
    match answer {
        Ok((1, false)) => Ok(()),
        Ok((_, true)) => Err(
            "the server is in recovery (a standby, or still starting up): it does not accept \
             writes"
                .to_owned(),
        ),
        Ok((other, false)) => Err(format!("SELECT 1 returned {other}")),
        Err(error) => Err(describe_sql_error(db, &error, None)),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn file(name: &str, sql: &str) -> MigrationFile {
        MigrationFile::from_file(name, sql.to_owned()).expect("valid")
    }

    fn row(version: &str, name: &str, sha256: &str) -> v1::AppliedMigration {
        v1::AppliedMigration {
            version: version.to_owned(),
            name: name.to_owned(),
            sha256: sha256.to_owned(),
            applied_unix_ms: 1,
            duration_ms: 2,
        }
    }

    #[test]
    fn files_are_applied_pending_changed_and_rows_unknown_by_version_number() {
        let a = file("0001_a.sql", "CREATE TABLE a (id int);");
        let b = file("0002_b.sql", "CREATE TABLE b (id int);");
        let c = file("0003_c.sql", "CREATE TABLE c (id int);");
        let recorded = vec![
            row("1", "a", &a.sha256.to_uppercase()),
            row("0002", "b", &"0".repeat(64)),
            row("0007", "gone", "ff"),
            row("01", "a_again", &a.sha256),
            row("x", "weird", "ee"),
        ];
        let plan = classify(&[a.clone(), b.clone(), c.clone()], recorded);
        assert_eq!(plan.already_applied.len(), 1);
        assert_eq!(plan.already_applied[0].version, "1");
        assert_eq!(plan.pending, [c]);
        assert_eq!(
            plan.changed,
            [v1::ChangedMigration {
                version: "0002".to_owned(),
                name: "b".to_owned(),
                recorded_sha256: "0".repeat(64),
                file_sha256: b.sha256.clone(),
            }]
        );
        let unknown: Vec<&str> = plan.unknown.iter().map(|r| r.version.as_str()).collect();
        assert_eq!(unknown, ["01", "0007", "x"]);

        let mut outcome = v1::MigrateOutcome::default();
        plan.report(&mut outcome);
        assert_eq!(outcome.pending[0].version, "0003");
        assert_eq!(outcome.changed.len(), 1);
        assert_eq!(outcome.unknown.len(), 3);
    }

    #[test]
    fn a_changed_file_is_refused_with_both_checksums() {
        let refusal = changed_refusal(
            "db1/app",
            &[v1::ChangedMigration {
                version: "0002".to_owned(),
                name: "b".to_owned(),
                recorded_sha256: "aa".to_owned(),
                file_sha256: "bb".to_owned(),
            }],
        );
        assert_eq!(
            refusal,
            "refusing to migrate db1/app: 1 applied migration changed since it was applied: \
             0002_b.sql was applied with sha256 aa, the file now has bb; nothing was applied. \
             Never edit an applied migration: put the file back as it was applied and add a new \
             migration for the change"
        );
    }

    #[test]
    fn the_guard_checks_pending_files_and_names_each_denied_one() {
        let deny: Vec<String> = warden_shared::migration::DEFAULT_DENY_SQL
            .iter()
            .map(|s| (*s).to_owned())
            .collect();
        let pending = [
            file(
                "0002_x.sql",
                "-- TRUNCATE in a comment is fine\nTRUNCATE orders;",
            ),
            file(
                "0003_ok.sql",
                "CREATE TABLE t (note text DEFAULT 'DROP DATABASE x');",
            ),
            file(
                "0004_y.sql",
                "CREATE TABLE u (id int);\nDROP SCHEMA old CASCADE;",
            ),
        ];
        assert_eq!(
            guard_refusal(&deny, &pending, "db1/app").as_deref(),
            Some(
                "refused by the destructive guard: 0002_x.sql: \"TRUNCATE orders\" matches deny \
                 pattern \"TRUNCATE\"; 0004_y.sql: \"DROP SCHEMA old CASCADE\" matches deny \
                 pattern \"DROP SCHEMA ... CASCADE\"; nothing was applied. If it must run on \
                 db1/app, break glass: migrate again with --emergency --reason TEXT"
            )
        );
        assert_eq!(guard_refusal(&deny, &pending[1..2], "db1/app"), None);
        // Not guarded, or glass broken: the coordinator sends no patterns.
        assert_eq!(guard_refusal(&[], &pending, "db1/app"), None);
        assert_eq!(guard_refusal(&deny, &[], "db1/app"), None);
    }

    #[test]
    fn a_repeated_order_is_refused_naming_what_it_applied() {
        assert_eq!(
            repeated_refusal(
                "o-1",
                "db1/app",
                &["0001_a.sql".to_owned(), "0002_b.sql".to_owned()]
            ),
            "order o-1 already applied migrations to db1/app (0001_a.sql, 0002_b.sql); it is not \
             run twice, so nothing was applied now; see what is applied with: warden migrate \
             status db1/app --dir DIR"
        );
    }

    #[tokio::test]
    async fn the_health_check_tries_again_before_it_fails() {
        let calls = std::cell::Cell::new(0);
        let flaky = || {
            calls.set(calls.get() + 1);
            let n = calls.get();
            async move {
                if n < 3 {
                    Err(format!("connection refused ({n})"))
                } else {
                    Ok(())
                }
            }
        };
        let delay = Duration::from_millis(1);
        assert_eq!(retried(3, delay, flaky).await, Ok(()));
        assert_eq!(calls.get(), 3);

        calls.set(0);
        let failing = || {
            calls.set(calls.get() + 1);
            let n = calls.get();
            async move { Err::<(), _>(format!("connection refused ({n})")) }
        };
        assert_eq!(
            retried(3, delay, failing).await,
            Err("connection refused (3) (tried 3 times, 1ms apart)".to_owned())
        );
        assert_eq!(calls.get(), 3);
        assert_eq!(
            retried(1, delay, || async { Err::<(), _>("down".to_owned()) }).await,
            Err("down".to_owned())
        );
    }

    #[test]
    fn positions_become_lines_and_columns() {
        let sql = "CREATE TABLE a (id int);\nCREATE TABLE b (id nope);";
        let position = sql.find("nope").expect("there") + 1;
        assert_eq!(line_and_column(sql, position), (2, 20));
        assert_eq!(line_and_column(sql, 1), (1, 1));
        assert_eq!(line_and_column("ü\nx", 3), (2, 1));
    }

    #[test]
    fn transaction_openers_are_recognised() {
        assert!(opens_transaction("begin"));
        assert!(opens_transaction(
            "START TRANSACTION ISOLATION LEVEL SERIALIZABLE"
        ));
        assert!(!opens_transaction("CREATE INDEX CONCURRENTLY i ON t (id)"));
        assert_eq!(
            first_words("CREATE INDEX CONCURRENTLY i ON t (id)", 3),
            "CREATE INDEX CONCURRENTLY ..."
        );
    }
}
