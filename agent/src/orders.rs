//! Running one order: resolves its database, dispatches to the backup, restore, drill,
//! migrate, health or prune executor, and turns the outcome into the agent's final word, an
//! [`v1::OrderResult`].

use std::future::Future;
use std::path::PathBuf;
use std::time::Instant;

use tokio_util::sync::CancellationToken;
use warden_proto::v1;
use warden_proto::v1::order_result::Outcome;
use warden_proto::v1::order_spec::Params;
use warden_shared::{DatabaseId, OrderKind};

use crate::config::AgentConfig;
use crate::drill::RunningDrills;
use crate::error::{AgentError, AgentResult};
use crate::pg::PgDatabase;
use crate::pgtools::ProbeCache;
use crate::progress::ProgressReporter;
use crate::repository::Repository;
use crate::sealing::Keys;
use crate::{backup, drill, health, migrate, prune, restore};

/// What every executor needs: the configuration, where artifacts and staged files go, the
/// keys that seal and open them, the drills running in this process, and the checks of the
/// repository.
#[derive(Debug)]
pub struct AgentContext {
    pub config: AgentConfig,
    pub repository: Repository,
    pub keys: Keys,
    pub staging_dir: PathBuf,
    pub drills: RunningDrills,
    pub repository_gauge: health::RepositoryGauge,
    /// What the PostgreSQL client binaries said about themselves.
    pub probes: ProbeCache,
}

impl AgentContext {
    /// Builds the context from a validated configuration.
    pub fn new(config: AgentConfig) -> AgentResult<Self> {
        let repository = Repository::open(&config.repository, &config.s3)?;
        let keys = Keys::load(&config.encryption.key_files)?;
        let staging_dir = config.staging_dir(&repository);
        Ok(Self {
            config,
            repository,
            keys,
            staging_dir,
            drills: RunningDrills::default(),
            repository_gauge: health::RepositoryGauge::default(),
            probes: ProbeCache::default(),
        })
    }

    /// Resolves what an order runs against: the configured database it names, or `None` for
    /// an order that only touches the repository (prune), which must work even for a
    /// database this agent no longer serves.
    pub fn order_target(
        &self,
        name: &str,
        spec: Option<&v1::OrderSpec>,
    ) -> AgentResult<Option<OrderTarget>> {
        if order_kind(spec) == Some(OrderKind::Prune) {
            self.local_database_name(name)?;
            return Ok(None);
        }
        self.target(name).map(Some)
    }

    /// Resolves the database an order names: `DBNAME`, or `AGENT/DBNAME` with this agent's
    /// name.
    pub fn target(&self, name: &str) -> AgentResult<OrderTarget> {
        let db_name = self.local_database_name(name)?;
        let entry = self.config.database(&db_name).ok_or_else(|| {
            let known: Vec<&str> = self
                .config
                .databases
                .iter()
                .map(|d| d.name.as_str())
                .collect();
            AgentError::InvalidOrder(format!(
                "unknown database {db_name:?}: agent {} serves {}",
                self.config.name,
                if known.is_empty() {
                    "no databases".to_owned()
                } else {
                    format!("{known:?}")
                }
            ))
        })?;
        let id = DatabaseId::new(&self.config.name, &entry.name)?;
        let db = PgDatabase::new(id.to_string(), entry.pg_url()?);
        Ok(OrderTarget { id, db })
    }

    /// Returns the database name in `DBNAME` or `AGENT/DBNAME`, refusing an id of another
    /// agent (a misrouted order).
    fn local_database_name(&self, name: &str) -> AgentResult<String> {
        match DatabaseId::parse(name) {
            Ok(id) if id.agent == self.config.name => Ok(id.database),
            Ok(id) => Err(AgentError::InvalidOrder(format!(
                "order for {id} was sent to agent {}",
                self.config.name
            ))),
            Err(_) => Ok(name.to_owned()),
        }
    }
}

/// The configured database an order runs against.
#[derive(Debug, Clone)]
pub struct OrderTarget {
    /// `AGENT/DBNAME` in the fleet.
    pub id: DatabaseId,
    /// How to reach it; its label is the fleet id.
    pub db: PgDatabase,
}

/// Returns the kind of order `spec` describes, if it describes one.
pub fn order_kind(spec: Option<&v1::OrderSpec>) -> Option<OrderKind> {
    Some(match spec?.params.as_ref()? {
        Params::Backup(_) => OrderKind::Backup,
        Params::Restore(_) => OrderKind::Restore,
        Params::Health(_) => OrderKind::Health,
        Params::Prune(_) => OrderKind::Prune,
        Params::Drill(_) => OrderKind::Drill,
        Params::Migrate(_) => OrderKind::Migrate,
    })
}

/// Runs one order to its end and returns the result to report; a malformed order becomes a
/// failed result. `target` is `None` only for orders that need no database (see
/// [`AgentContext::order_target`]).
pub async fn run_order(
    ctx: &AgentContext,
    target: Option<&OrderTarget>,
    order_id: &str,
    spec: Option<v1::OrderSpec>,
    progress: &ProgressReporter,
    cancel: &CancellationToken,
) -> v1::OrderResult {
    let outcome = execute(ctx, target, order_id, spec, progress, cancel).await;
    match outcome {
        Ok(outcome) => v1::OrderResult {
            order_id: order_id.to_owned(),
            success: true,
            error: String::new(),
            cancelled: false,
            artifact_corrupt: false,
            outcome: Some(outcome),
        },
        Err(error) => failed_result(order_id, &error),
    }
}

/// Returns the result of an order that failed (or was cancelled) with `error`.
pub fn failed_result(order_id: &str, error: &AgentError) -> v1::OrderResult {
    v1::OrderResult {
        order_id: order_id.to_owned(),
        success: false,
        error: error.to_string(),
        cancelled: error.is_cancelled(),
        artifact_corrupt: error.proves_artifact_corrupt(),
        outcome: match error {
            // A prune that failed part-way still removed some artifacts: the coordinator
            // records those as deleted.
            AgentError::PruneIncomplete { removed, .. } => Some(Outcome::Prune(v1::PruneOutcome {
                removed_artifact_ids: removed.clone(),
            })),
            // A drill whose checks failed, or whose scratch database stayed behind, still
            // measured the restore, and says which checks failed and why.
            AgentError::DrillChecksFailed { outcome }
            | AgentError::DrillCleanup { outcome, .. } => Some(Outcome::Drill((**outcome).clone())),
            // A migration that stopped still says what it applied, what it did not reach,
            // its checks, whether it restored, and how to undo it.
            AgentError::Migration { outcome, .. } => Some(Outcome::Migrate((**outcome).clone())),
            _ => None,
        },
    }
}

async fn execute(
    ctx: &AgentContext,
    target: Option<&OrderTarget>,
    order_id: &str,
    spec: Option<v1::OrderSpec>,
    progress: &ProgressReporter,
    cancel: &CancellationToken,
) -> AgentResult<Outcome> {
    let params = spec.and_then(|s| s.params).ok_or_else(|| {
        AgentError::InvalidOrder(format!(
            "order {order_id} has no parameters; is the coordinator newer than this agent?"
        ))
    })?;
    let database = || {
        target.ok_or_else(|| {
            AgentError::InvalidOrder(format!(
                "order {order_id} needs a database, but none was resolved for it"
            ))
        })
    };
    match params {
        Params::Backup(params) => {
            backup::run(ctx, database()?, order_id, &params, progress, cancel)
                .await
                .map(Outcome::Backup)
        }
        Params::Restore(params) => {
            restore::run(ctx, database()?, order_id, &params, progress, cancel)
                .await
                .map(Outcome::Restore)
        }
        Params::Drill(params) => drill::run(ctx, database()?, order_id, &params, progress, cancel)
            .await
            .map(Outcome::Drill),
        Params::Migrate(params) => {
            migrate::run(ctx, database()?, order_id, &params, progress, cancel)
                .await
                .map(Outcome::Migrate)
        }
        Params::Health(_) => health::run(ctx, &database()?.db, cancel)
            .await
            .map(Outcome::Health),
        Params::Prune(params) => prune::run(&ctx.repository, order_id, &params, cancel)
            .await
            .map(Outcome::Prune),
    }
}

/// Runs `work` unless `cancel` fires first; the dropped future kills any tool it started.
pub async fn cancellable<T>(
    cancel: &CancellationToken,
    work: impl Future<Output = AgentResult<T>>,
) -> AgentResult<T> {
    tokio::select! {
        result = work => result,
        _ = cancel.cancelled() => Err(AgentError::Cancelled),
    }
}

/// Runs blocking file system work off the async threads.
pub async fn blocking<T: Send + 'static>(
    work: impl FnOnce() -> AgentResult<T> + Send + 'static,
) -> AgentResult<T> {
    tokio::task::spawn_blocking(work)
        .await
        .map_err(|e| AgentError::Io {
            context: "file system task failed".to_owned(),
            source: std::io::Error::other(e.to_string()),
        })?
}

/// Returns the milliseconds since `started`, for phase timings.
pub fn elapsed_ms(started: Instant) -> u64 {
    u64::try_from(started.elapsed().as_millis()).unwrap_or(u64::MAX)
}

#[cfg(test)]
pub(crate) mod tests {
    use std::path::Path;

    use url::Url;

    use super::*;
    use crate::config::DatabaseConfig;

    /// An agent `db1` serving `app`, with its repository at `repository`.
    pub(crate) fn context(repository: &Path) -> AgentContext {
        AgentContext::new(AgentConfig {
            name: "db1".to_owned(),
            repository: Url::from_file_path(repository)
                .expect("absolute path")
                .to_string(),
            databases: vec![DatabaseConfig {
                name: "app".to_owned(),
                url: "postgres://warden@127.0.0.1:1/app".to_owned(),
                labels: Default::default(),
                migrate: None,
            }],
            ..AgentConfig::default()
        })
        .expect("context")
    }

    fn prune_spec(id: &str, path: &str) -> v1::OrderSpec {
        v1::OrderSpec {
            params: Some(Params::Prune(v1::PruneParams {
                artifacts: vec![v1::PruneArtifact {
                    artifact_id: id.to_owned(),
                    artifact_path: path.to_owned(),
                }],
            })),
        }
    }

    #[test]
    fn prune_needs_no_configured_database_but_other_orders_do() {
        let ctx = context(Path::new("/repo"));
        let prune = prune_spec("a1", "db1/a1");
        let backup = v1::OrderSpec {
            params: Some(Params::Backup(v1::BackupParams::default())),
        };
        for database in ["db1/gone", "gone", "db1/app"] {
            let target = ctx.order_target(database, Some(&prune)).expect(database);
            assert!(target.is_none(), "{database}");
        }
        let error = ctx
            .order_target("db2/app", Some(&prune))
            .expect_err("misrouted")
            .to_string();
        assert!(error.contains("was sent to agent db1"), "{error}");
        let error = ctx
            .order_target("db1/gone", Some(&backup))
            .expect_err("unknown database")
            .to_string();
        assert!(error.contains("unknown database \"gone\""), "{error}");
        let target = ctx.order_target("db1/app", Some(&backup)).expect("known");
        assert_eq!(target.expect("a database").id.to_string(), "db1/app");
    }

    #[tokio::test]
    async fn a_prune_order_runs_without_a_database() {
        let tmp = tempfile::tempdir().expect("tempdir");
        let ctx = context(tmp.path());
        let writer = ctx
            .repository
            .create_artifact("db1/a1")
            .await
            .expect("create");
        writer
            .write_manifest(b"{}".to_vec())
            .await
            .expect("manifest");
        let dir = tmp.path().join("db1/a1");
        let progress = ProgressReporter::new(|_| {});
        let cancel = CancellationToken::new();

        let result = run_order(
            &ctx,
            None,
            "o1",
            Some(prune_spec("a1", "db1/a1")),
            &progress,
            &cancel,
        )
        .await;
        assert!(result.success, "{}", result.error);
        assert_eq!(
            result.outcome,
            Some(Outcome::Prune(v1::PruneOutcome {
                removed_artifact_ids: vec!["a1".to_owned()],
            }))
        );
        assert!(!dir.exists());

        let backup = v1::OrderSpec {
            params: Some(Params::Backup(v1::BackupParams::default())),
        };
        let result = run_order(&ctx, None, "o2", Some(backup), &progress, &cancel).await;
        assert!(!result.success);
        assert!(
            result.error.contains("needs a database"),
            "{}",
            result.error
        );
    }

    #[test]
    fn failures_that_prove_the_artifact_unusable_are_flagged() {
        let corrupt = [
            AgentError::CorruptArtifact {
                artifact_id: "a1".to_owned(),
                detail: "sha256 of dump.zst is 00, catalog says ff".to_owned(),
            },
            AgentError::ArtifactMissing {
                artifact_path: "db1/a1".to_owned(),
                location: "/repo/db1/a1/dump.zst".to_owned(),
            },
            AgentError::RowCountMismatch("\"public\".\"t\" has 1 rows, the artifact 2".to_owned()),
        ];
        for error in &corrupt {
            let result = failed_result("o1", error);
            assert!(result.artifact_corrupt, "{error}");
            assert!(!result.success && !result.cancelled);
            assert_eq!(result.error, error.to_string());
        }
        let not_corrupt = [
            AgentError::Cancelled,
            AgentError::Postgres {
                context: "cannot connect to db1/app".to_owned(),
                message: "connection refused".to_owned(),
            },
            AgentError::Subprocess {
                tool: "pg_restore".to_owned(),
                status: "exit status: 1".to_owned(),
                stderr_tail: "role \"app\" does not exist".to_owned(),
            },
            AgentError::Io {
                context: "cannot read /repo/db1/a1/manifest.json (is the repository shared?)"
                    .to_owned(),
                source: std::io::ErrorKind::NotFound.into(),
            },
            AgentError::DrillCleanup {
                outcome: Box::new(v1::DrillOutcome {
                    scratch_database: "warden_drill_x_1".to_owned(),
                    ..v1::DrillOutcome::default()
                }),
                reason: "server closed the connection".to_owned(),
            },
        ];
        for error in &not_corrupt {
            assert!(!failed_result("o1", error).artifact_corrupt, "{error}");
        }
        assert!(failed_result("o1", &AgentError::Cancelled).cancelled);
    }

    #[test]
    fn a_drill_with_failed_checks_reports_its_outcome_and_names_the_checks() {
        let outcome = v1::DrillOutcome {
            scratch_database: "warden_drill_x_1".to_owned(),
            checks: vec![
                v1::CheckResult {
                    name: "orders".to_owned(),
                    passed: true,
                    error: String::new(),
                },
                v1::CheckResult {
                    name: "balance".to_owned(),
                    passed: false,
                    error: "returned false".to_owned(),
                },
                v1::CheckResult {
                    name: "ledger".to_owned(),
                    passed: false,
                    error: "SQL error: relation \"ledger\" does not exist".to_owned(),
                },
            ],
            ..v1::DrillOutcome::default()
        };
        let error = AgentError::DrillChecksFailed {
            outcome: Box::new(outcome.clone()),
        };
        let result = failed_result("o1", &error);
        assert_eq!(
            result.error,
            "drill checks failed: check \"balance\": returned false; check \"ledger\": SQL \
             error: relation \"ledger\" does not exist"
        );
        assert!(!result.success && !result.artifact_corrupt);
        assert_eq!(result.outcome, Some(Outcome::Drill(outcome)));
    }

    #[test]
    fn a_drill_whose_scratch_database_stayed_fails_but_reports_its_outcome() {
        let passed = v1::DrillOutcome {
            scratch_database: "warden_drill_x_1".to_owned(),
            restore_millis: 1234,
            phases: vec![v1::PhaseTiming {
                phase: "pg_restore".to_owned(),
                millis: 1234,
            }],
            checks: vec![v1::CheckResult {
                name: "orders".to_owned(),
                passed: true,
                error: String::new(),
            }],
            ..v1::DrillOutcome::default()
        };
        let error = AgentError::DrillCleanup {
            outcome: Box::new(passed.clone()),
            reason: "server closed the connection".to_owned(),
        };
        let result = failed_result("o1", &error);
        assert!(!result.success && !result.artifact_corrupt && !result.cancelled);
        assert_eq!(
            result.error,
            "the drill passed, but its scratch database \"warden_drill_x_1\" could not be \
             dropped: server closed the connection; the agent drops it when it restarts, or drop \
             it by hand"
        );
        assert_eq!(result.outcome, Some(Outcome::Drill(passed.clone())));

        let mut failed = passed;
        failed.checks[0].passed = false;
        failed.checks[0].error = "returned false".to_owned();
        let error = AgentError::DrillCleanup {
            outcome: Box::new(failed.clone()),
            reason: "server closed the connection".to_owned(),
        };
        let result = failed_result("o1", &error);
        assert!(
            result.error.starts_with(
                "drill checks failed: check \"orders\": returned false, but its scratch \
                 database \"warden_drill_x_1\" could not be dropped"
            ),
            "{}",
            result.error
        );
        assert_eq!(result.outcome, Some(Outcome::Drill(failed)));
    }

    #[test]
    fn a_failed_migration_reports_its_outcome_and_whether_it_was_cancelled() {
        let outcome = v1::MigrateOutcome {
            applied: vec![v1::AppliedMigration {
                version: "0001".to_owned(),
                name: "a".to_owned(),
                ..v1::AppliedMigration::default()
            }],
            failed_version: "0002".to_owned(),
            restore_command: "warden restore a1 --replace --target db1/app".to_owned(),
            ..v1::MigrateOutcome::default()
        };
        for cancelled in [false, true] {
            let error = AgentError::Migration {
                outcome: Box::new(outcome.clone()),
                reason: "0002_b.sql failed and was rolled back: syntax error".to_owned(),
                cancelled,
                artifact_corrupt: false,
            };
            let result = failed_result("o1", &error);
            assert!(!result.success && !result.artifact_corrupt);
            assert_eq!(result.cancelled, cancelled);
            assert_eq!(
                result.error,
                "0002_b.sql failed and was rolled back: syntax error"
            );
            assert_eq!(result.outcome, Some(Outcome::Migrate(outcome.clone())));
        }
        // A restore after a failed check that found the pre-migration backup corrupt flags it.
        let error = AgentError::Migration {
            outcome: Box::new(outcome.clone()),
            reason: "post-check \"health\" failed: ...; the pre-migration backup a1 is unusable"
                .to_owned(),
            cancelled: false,
            artifact_corrupt: true,
        };
        let result = failed_result("o1", &error);
        assert!(!result.success && result.artifact_corrupt && !result.cancelled);
        assert_eq!(result.outcome, Some(Outcome::Migrate(outcome)));
    }

    #[test]
    fn order_kinds_come_from_the_parameters() {
        let drill = v1::OrderSpec {
            params: Some(Params::Drill(v1::DrillParams::default())),
        };
        assert_eq!(order_kind(Some(&drill)), Some(OrderKind::Drill));
        let migrate = v1::OrderSpec {
            params: Some(Params::Migrate(v1::MigrateParams::default())),
        };
        assert_eq!(order_kind(Some(&migrate)), Some(OrderKind::Migrate));
        assert_eq!(order_kind(Some(&v1::OrderSpec::default())), None);
        assert_eq!(order_kind(None), None);
    }
}
