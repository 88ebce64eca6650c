//! The agent's error type. Every message is meant for a person reading an order's error or
//! the agent log: it names the value that was wrong and, where there is one, what to do next.
//! No variant ever holds a database URL, so credentials cannot leak through an error.

use warden_proto::v1;
use warden_shared::NameError;
use warden_shared::config::ConfigError;

/// Result of agent operations.
pub type AgentResult<T> = Result<T, AgentError>;

/// Everything that can go wrong in the agent.
#[derive(Debug, thiserror::Error)]
pub enum AgentError {
    /// The configuration could not be loaded (missing file, TOML syntax, wrong types).
    #[error(transparent)]
    ConfigLoad(#[from] ConfigError),
    /// The configuration loaded but its values are not usable.
    #[error("invalid configuration: {0}")]
    Config(String),
    /// An agent or database name that PostgreSQL or Warden cannot use as given.
    #[error(transparent)]
    Name(#[from] NameError),
    /// A file system operation failed; `context` says which and on what path.
    #[error("{context}: {source}")]
    Io {
        context: String,
        #[source]
        source: std::io::Error,
    },
    /// A SQL statement or connection failed. `message` has any password already redacted.
    #[error("{context}: {message}")]
    Postgres { context: String, message: String },
    /// No usable PostgreSQL client binary was found.
    #[error("{0}")]
    Tool(String),
    /// A client binary exited unsuccessfully; `stderr_tail` holds its last stderr lines.
    #[error("{tool} failed ({status}): {stderr_tail}")]
    Subprocess {
        tool: String,
        status: String,
        stderr_tail: String,
    },
    /// An artifact's bytes do not match what the catalog recorded.
    #[error(
        "artifact {artifact_id} is corrupt: {detail}; refusing to restore, nothing was changed"
    )]
    CorruptArtifact { artifact_id: String, detail: String },
    /// A file of an artifact is not in the repository, although the repository holds the
    /// directory of the agent that took it: the artifact was removed or never completed.
    #[error(
        "{location} is missing: artifact {artifact_path} is incomplete or was removed from the \
         repository; it cannot be restored"
    )]
    ArtifactMissing {
        artifact_path: String,
        /// The file or object, as a path or an `s3://` URL.
        location: String,
    },
    /// An object store refused or failed a request; `message` is the store's own error.
    #[error("{context}: {message}")]
    Storage { context: String, message: String },
    /// An artifact is sealed with a key this agent does not hold.
    #[error("cannot restore artifact {artifact_id}: {detail}; nothing was changed")]
    MissingKey { artifact_id: String, detail: String },
    /// A backup read back after its commit did not match its manifest; `removed` says
    /// whether its directory could be removed afterwards.
    #[error(
        "backup verification failed: {detail}; {}",
        if *removed { "the artifact was removed" } else { "the artifact could not be removed, see the agent log" }
    )]
    BackupVerification { detail: String, removed: bool },
    /// Some artifacts of a prune order could not be removed; the others were.
    #[error(
        "cannot remove {} of {} artifacts: {}; removed: {}",
        failed.len(),
        failed.len() + removed.len(),
        failed.iter().map(|(id, why)| format!("{id} ({why})")).collect::<Vec<_>>().join(", "),
        if removed.is_empty() { "none".to_owned() } else { removed.join(", ") }
    )]
    PruneIncomplete {
        /// Artifact ids with why each could not be removed.
        failed: Vec<(String, String)>,
        /// Artifact ids whose directories are gone.
        removed: Vec<String>,
    },
    /// A restore would have overwritten a database that is not the target.
    #[error("database {name:?} already exists on the server of {database}; {hint}")]
    DatabaseExists {
        name: String,
        database: String,
        hint: &'static str,
    },
    /// The restored database holds different row counts than the artifact's snapshot.
    #[error("restored data does not match the artifact: {0}")]
    RowCountMismatch(String),
    /// A drill restored and verified its copy, but not every check passed; `outcome` holds
    /// the timings and every check's result.
    #[error("drill checks failed: {}", failed_checks(outcome))]
    DrillChecksFailed { outcome: Box<v1::DrillOutcome> },
    /// A drill restored and verified its copy and ran its checks, but its scratch database
    /// could not be dropped. The order fails (a leftover must not go unnoticed), yet
    /// `outcome` holds the timings and every check's result, as measured.
    #[error("{}", cleanup_failed(outcome, reason))]
    DrillCleanup {
        outcome: Box<v1::DrillOutcome>,
        reason: String,
    },
    /// A migration failed, was refused or was cancelled. `outcome` holds what it did before
    /// it stopped: the files applied and not reached, the checks, whether it restored the
    /// pre-migration backup, and the command that would; `reason` says what went wrong and
    /// what to do. `artifact_corrupt` when restoring the pre-migration backup after a failed
    /// check proved that artifact unusable (see [`AgentError::proves_artifact_corrupt`]).
    #[error("{reason}")]
    Migration {
        outcome: Box<v1::MigrateOutcome>,
        reason: String,
        cancelled: bool,
        artifact_corrupt: bool,
    },
    /// The coordinator sent something the agent cannot act on.
    #[error("{0}")]
    InvalidOrder(String),
    /// The order was cancelled (by the coordinator or because the agent is stopping).
    #[error("cancelled")]
    Cancelled,
    /// The coordinator could not be reached; `reason` is the transport's error chain.
    #[error("cannot connect to the coordinator at {url}: {reason}")]
    Connect { url: String, reason: String },
    /// The agent's certificate: missing, unreadable, refused at enrollment or renewal.
    #[error("{0}")]
    Tls(String),
    /// The coordinator refused this agent's credentials (certificate missing, expired,
    /// revoked, of another CA or another agent); retrying soon cannot help.
    #[error("the coordinator refused this agent: {0}")]
    Refused(String),
    /// The coordinator stream failed or broke the protocol.
    #[error("coordinator stream: {0}")]
    Stream(String),
}

impl AgentError {
    /// Returns whether this error proves the artifact an order read unusable (its bytes,
    /// its files or its data are not what the backup recorded), rather than a problem of the
    /// server, the agent or the order. For a migration, that artifact is its pre-migration
    /// backup, which only a restore after a failed check reads.
    pub fn proves_artifact_corrupt(&self) -> bool {
        matches!(
            self,
            AgentError::CorruptArtifact { .. }
                | AgentError::ArtifactMissing { .. }
                | AgentError::RowCountMismatch(_)
                | AgentError::Migration {
                    artifact_corrupt: true,
                    ..
                }
        )
    }

    /// Returns whether the order stopped because it was cancelled.
    pub fn is_cancelled(&self) -> bool {
        matches!(
            self,
            AgentError::Cancelled
                | AgentError::Migration {
                    cancelled: true,
                    ..
                }
        )
    }

    /// Returns a mapper from `io::Error` that adds `context` (what was done, on which path).
    pub fn io(context: impl Into<String>) -> impl FnOnce(std::io::Error) -> AgentError {
        let context = context.into();
        move |source| AgentError::Io { context, source }
    }
}

/// Renders an error with its sources ("transport error: tcp connect error: Connection
/// refused"): the outermost message alone often says nothing useful.
pub fn error_chain(error: &dyn std::error::Error) -> String {
    let mut text = error.to_string();
    let mut source = error.source();
    while let Some(cause) = source {
        text.push_str(": ");
        text.push_str(&cause.to_string());
        source = cause.source();
    }
    text
}

/// Says that the scratch database of a drill stayed behind, and how the drill went.
fn cleanup_failed(outcome: &v1::DrillOutcome, reason: &str) -> String {
    let drill = if outcome.checks.iter().all(|check| check.passed) {
        "the drill passed".to_owned()
    } else {
        format!("drill checks failed: {}", failed_checks(outcome))
    };
    format!(
        "{drill}, but its scratch database {:?} could not be dropped: {reason}; the agent drops \
         it when it restarts, or drop it by hand",
        outcome.scratch_database
    )
}

/// Lists the checks of a drill that did not pass, each with why.
fn failed_checks(outcome: &v1::DrillOutcome) -> String {
    outcome
        .checks
        .iter()
        .filter(|check| !check.passed)
        .map(|check| format!("check {:?}: {}", check.name, check.error))
        .collect::<Vec<_>>()
        .join("; ")
}

impl From<tonic::Status> for AgentError {
    fn from(status: tonic::Status) -> Self {
        match status.code() {
            tonic::Code::Unauthenticated | tonic::Code::PermissionDenied => {
                AgentError::Refused(status.message().to_owned())
            }
            _ => AgentError::Stream(format!("{} ({:?})", status.message(), status.code())),
        }
    }
}
