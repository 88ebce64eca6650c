//! Running one order: resolves its database, dispatches to the backup, restore or health
//! executor, and turns the outcome into the agent's final word, an [`v1::OrderResult`].

use std::future::Future;
use std::path::PathBuf;
use std::time::Instant;

use tokio_util::sync::CancellationToken;
use warden_proto::v1;
use warden_proto::v1::order_result::Outcome;
use warden_proto::v1::order_spec::Params;
use warden_shared::DatabaseId;

use crate::config::AgentConfig;
use crate::error::{AgentError, AgentResult};
use crate::pg::PgDatabase;
use crate::progress::ProgressReporter;
use crate::repository::Repository;
use crate::{backup, health, restore};

/// What every executor needs: the configuration and where artifacts and staged files go.
#[derive(Debug)]
pub struct AgentContext {
    pub config: AgentConfig,
    pub repository: Repository,
    pub staging_dir: PathBuf,
}

impl AgentContext {
    /// Builds the context from a validated configuration.
    pub fn new(config: AgentConfig) -> AgentResult<Self> {
        let repository = Repository::from_url(&config.repository)?;
        let staging_dir = config.staging_dir(&repository);
        Ok(Self {
            config,
            repository,
            staging_dir,
        })
    }

    /// Resolves the database an order names: `DBNAME`, or `AGENT/DBNAME` with this agent's
    /// name.
    pub fn target(&self, name: &str) -> AgentResult<OrderTarget> {
        let db_name = match DatabaseId::parse(name) {
            Ok(id) if id.agent == self.config.name => id.database,
            Ok(id) => {
                return Err(AgentError::InvalidOrder(format!(
                    "order for {id} was sent to agent {}",
                    self.config.name
                )));
            }
            Err(_) => name.to_owned(),
        };
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
}

/// The configured database an order runs against.
#[derive(Debug, Clone)]
pub struct OrderTarget {
    /// `AGENT/DBNAME` in the fleet.
    pub id: DatabaseId,
    /// How to reach it; its label is the fleet id.
    pub db: PgDatabase,
}

/// Runs one order to its end and returns the result to report; a malformed order becomes a
/// failed result.
pub async fn run_order(
    ctx: &AgentContext,
    target: &OrderTarget,
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
        cancelled: matches!(error, AgentError::Cancelled),
        outcome: None,
    }
}

async fn execute(
    ctx: &AgentContext,
    target: &OrderTarget,
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
    match params {
        Params::Backup(params) => backup::run(ctx, target, order_id, &params, progress, cancel)
            .await
            .map(Outcome::Backup),
        Params::Restore(params) => restore::run(ctx, target, order_id, &params, progress, cancel)
            .await
            .map(Outcome::Restore),
        Params::Health(_) => health::run(&target.db, cancel).await.map(Outcome::Health),
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
