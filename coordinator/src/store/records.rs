//! Rows of the store, typed.

use warden_shared::{OrderKind, OrderSpec, OrderState};

use super::StoreError;

#[derive(Debug, Clone, sqlx::FromRow)]
pub struct AgentRecord {
    pub name: String,
    pub version: String,
    pub labels_json: String,
    pub repository: String,
    pub online: bool,
    pub last_seen_unix_ms: i64,
    pub generation: i64,
    #[sqlx(default)]
    pub database_count: i64,
}

#[derive(Debug, Clone, sqlx::FromRow)]
pub struct DatabaseRecord {
    pub agent: String,
    pub name: String,
    pub labels_json: String,
    pub agent_online: bool,
    pub last_artifact_id: Option<String>,
    pub last_backup_unix_ms: Option<i64>,
}

#[derive(Debug, Clone, PartialEq, sqlx::FromRow)]
pub struct OrderRecord {
    pub id: String,
    #[sqlx(try_from = "String")]
    pub kind: OrderKind,
    pub agent: String,
    pub database: String,
    pub spec_json: String,
    #[sqlx(try_from = "String")]
    pub state: OrderState,
    pub requested_by: String,
    pub reason: String,
    pub attempts: i64,
    pub created_unix_ms: i64,
    pub updated_unix_ms: i64,
    pub started_unix_ms: i64,
    pub finished_unix_ms: i64,
    pub phase: String,
    pub progress_bytes: i64,
    pub progress_rate: f64,
    pub error: String,
    /// The agent's `OrderResult`, protobuf-encoded.
    pub result: Option<Vec<u8>>,
    /// Break glass: started without waiting for a maintenance window.
    pub emergency: bool,
    pub skip_safety_backup: bool,
    /// The backup a destructive order takes of its target first.
    pub safety_order_id: String,
    /// Scheduled jitter: not dispatched before this instant.
    pub not_before_unix_ms: i64,
    /// While held: when it is expected to be able to start (0 = when another order ends).
    pub held_until_unix_ms: i64,
    /// A destructive order not started by then expires.
    pub deadline_unix_ms: i64,
}

impl OrderRecord {
    /// A new queued order.
    pub fn new(
        agent: &str,
        database: &str,
        spec: &OrderSpec,
        requested_by: &str,
        reason: &str,
    ) -> Self {
        let now = warden_shared::now_unix_ms();
        Self {
            id: uuid::Uuid::now_v7().to_string(),
            kind: spec.kind(),
            agent: agent.to_owned(),
            database: database.to_owned(),
            spec_json: serde_json::to_string(spec).unwrap_or_default(),
            state: OrderState::Queued,
            requested_by: requested_by.to_owned(),
            reason: reason.to_owned(),
            attempts: 0,
            created_unix_ms: now,
            updated_unix_ms: now,
            started_unix_ms: 0,
            finished_unix_ms: 0,
            phase: String::new(),
            progress_bytes: 0,
            progress_rate: 0.0,
            error: String::new(),
            result: None,
            emergency: false,
            skip_safety_backup: false,
            safety_order_id: String::new(),
            not_before_unix_ms: 0,
            held_until_unix_ms: 0,
            deadline_unix_ms: 0,
        }
    }

    pub fn spec(&self) -> Result<OrderSpec, StoreError> {
        serde_json::from_str(&self.spec_json).map_err(|e| StoreError::Corrupt {
            what: "order spec",
            why: format!("order {}: {e}", self.id),
        })
    }

    /// `AGENT/DBNAME` of the order's database.
    pub fn target(&self) -> String {
        format!("{}/{}", self.agent, self.database)
    }
}

#[derive(Debug, Clone, sqlx::FromRow)]
pub struct ArtifactRecord {
    pub id: String,
    pub agent: String,
    pub database: String,
    pub order_id: String,
    pub trigger: String,
    pub state: String,
    /// The repository URL the artifact was written to.
    pub repository: String,
    /// Directory relative to the repository root.
    pub path: String,
    pub sha256: String,
    pub size_bytes: i64,
    pub raw_bytes: i64,
    pub server_version: String,
    pub pg_dump_version: String,
    pub created_unix_ms: i64,
    pub verified: bool,
    pub manifest_json: String,
    #[sqlx(default)]
    pub expired_unix_ms: i64,
    #[sqlx(default)]
    pub expire_reason: String,
    #[sqlx(default)]
    pub prune_order_id: String,
    /// When a drill last restored it successfully (0 = never).
    #[sqlx(default)]
    pub drilled_unix_ms: i64,
    /// Why it is `corrupt`.
    #[sqlx(default)]
    pub corrupt_reason: String,
}

/// One finished restore drill.
#[derive(Debug, Clone, sqlx::FromRow)]
pub struct DrillRecord {
    pub order_id: String,
    pub agent: String,
    pub database: String,
    pub artifact_id: String,
    pub finished_unix_ms: i64,
    pub passed: bool,
    /// Time to a usable copy, every phase but cleanup.
    pub restore_ms: i64,
    pub raw_bytes: i64,
    pub error: String,
    pub phases_json: String,
}

/// A migration command an agent allows for one of its databases, as its Hello reported it.
#[derive(Debug, Clone, PartialEq, Eq, serde::Serialize, serde::Deserialize)]
pub struct MigrateCommand {
    pub name: String,
    pub argv: Vec<String>,
}

/// One database of an agent's inventory, as its Hello reported it.
#[derive(Debug, Clone)]
pub struct InventoryDatabase {
    pub name: String,
    pub labels_json: String,
    pub migrate_commands: Vec<MigrateCommand>,
}

/// Where a rollout stands.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum RolloutState {
    /// Its current wave's orders are under way.
    Running,
    /// Every database of every wave succeeded.
    Succeeded,
    /// An order of it did not succeed; later waves were never ordered.
    Halted,
    /// Called off as a whole. Reserved: no API calls a rollout off yet; cancelling one of its
    /// orders halts it.
    Cancelled,
}

impl RolloutState {
    pub const ALL: [RolloutState; 4] = [
        RolloutState::Running,
        RolloutState::Succeeded,
        RolloutState::Halted,
        RolloutState::Cancelled,
    ];

    pub fn as_str(self) -> &'static str {
        match self {
            RolloutState::Running => "running",
            RolloutState::Succeeded => "succeeded",
            RolloutState::Halted => "halted",
            RolloutState::Cancelled => "cancelled",
        }
    }
}

impl TryFrom<String> for RolloutState {
    type Error = String;

    fn try_from(text: String) -> Result<Self, Self::Error> {
        Self::ALL
            .into_iter()
            .find(|state| state.as_str() == text)
            .ok_or_else(|| format!("unknown rollout state {text:?}"))
    }
}

/// Where one database of a rollout stands, besides its order's own state.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum TargetState {
    /// Its wave has not started.
    Waiting,
    /// Its wave started: it has an order.
    Ordered,
    /// The rollout halted before its wave started.
    Skipped,
}

impl TargetState {
    pub const ALL: [TargetState; 3] = [
        TargetState::Waiting,
        TargetState::Ordered,
        TargetState::Skipped,
    ];

    pub fn as_str(self) -> &'static str {
        match self {
            TargetState::Waiting => "waiting",
            TargetState::Ordered => "ordered",
            TargetState::Skipped => "skipped",
        }
    }
}

impl TryFrom<String> for TargetState {
    type Error = String;

    fn try_from(text: String) -> Result<Self, Self::Error> {
        Self::ALL
            .into_iter()
            .find(|state| state.as_str() == text)
            .ok_or_else(|| format!("unknown rollout target state {text:?}"))
    }
}

/// One migration rolled out over a selection of databases, in waves.
#[derive(Debug, Clone, sqlx::FromRow)]
pub struct RolloutRecord {
    pub id: String,
    #[sqlx(try_from = "String")]
    pub state: RolloutState,
    pub selector: String,
    /// The cumulative wave sizes as given: `1,25%,100%`.
    pub waves: String,
    pub requested_by: String,
    pub reason: String,
    pub emergency: bool,
    pub skip_safety_backup: bool,
    pub created_unix_ms: i64,
    pub updated_unix_ms: i64,
    pub finished_unix_ms: i64,
    /// The wave running now, from 1.
    pub current_wave: i64,
    pub wave_count: i64,
    /// Why it halted: `AGENT/DBNAME: what went wrong`.
    pub error: String,
    /// The migration files without their SQL: `[{"version", "name", "sha256"}]`.
    pub migrations_json: String,
    /// Command mode: the command's name.
    pub command: String,
}

/// One database of a rollout.
#[derive(Debug, Clone, sqlx::FromRow)]
pub struct RolloutTargetRecord {
    pub rollout_id: String,
    pub agent: String,
    pub database: String,
    /// Its place in the rollout (targets are sorted by agent, then database name).
    pub position: i64,
    /// Its wave, from 1.
    pub wave: i64,
    /// The migrate order it gets when its wave starts.
    pub spec_json: String,
    /// Empty until its wave started.
    pub order_id: String,
    #[sqlx(try_from = "String")]
    pub state: TargetState,
}

impl RolloutTargetRecord {
    /// `AGENT/DBNAME` of the target.
    pub fn target(&self) -> String {
        format!("{}/{}", self.agent, self.database)
    }
}
