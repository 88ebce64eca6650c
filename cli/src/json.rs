//! The `--json` documents: stable shapes for scripts, built from the wire messages.
//!
//! The wire uses 0 and "" for "absent"; scripts get `null` instead, times as RFC 3339 in UTC
//! and enums as lowercase strings, as the README's "JSON shapes" section promises.

use std::collections::{BTreeMap, HashMap};

use chrono::SecondsFormat;
use serde::Serialize;
use serde_json::Value;
use warden_proto::v1;
use warden_proto::v1::order_result::Outcome as ResultOutcome;
use warden_proto::v1::order_spec::Params;
use warden_shared::{OrderKind, OrderState};

use crate::format::datetime;

/// Formats wire milliseconds as RFC 3339 in UTC; 0 means absent.
pub fn rfc3339(unix_ms: i64) -> Option<String> {
    datetime(unix_ms).map(|t| t.to_rfc3339_opts(SecondsFormat::Millis, true))
}

fn non_empty(text: &str) -> Option<String> {
    (!text.is_empty()).then(|| text.to_owned())
}

/// The wire's 0 for "unknown" or "none" as `null`.
fn non_zero(value: u64) -> Option<u64> {
    (value != 0).then_some(value)
}

fn sorted(labels: &HashMap<String, String>) -> BTreeMap<String, String> {
    labels.iter().map(|(k, v)| (k.clone(), v.clone())).collect()
}

/// Parses a JSON document embedded in a message; empty is `null`, and a document that does not
/// parse is kept as a string so nothing the coordinator said is lost.
fn embedded_json(text: &str) -> Value {
    if text.trim().is_empty() {
        return Value::Null;
    }
    serde_json::from_str(text).unwrap_or_else(|_| Value::String(text.to_owned()))
}

/// Returns the order's kind, or nothing when the coordinator sent one this CLI does not know.
pub fn order_kind(order: &v1::Order) -> Option<OrderKind> {
    v1::OrderKind::try_from(order.kind)
        .ok()
        .and_then(|kind| OrderKind::try_from(kind).ok())
}

/// Returns the order's state, or nothing when the coordinator sent one this CLI does not know.
pub fn order_state(order: &v1::Order) -> Option<OrderState> {
    v1::OrderState::try_from(order.state)
        .ok()
        .and_then(|state| OrderState::try_from(state).ok())
}

/// The lowercase name of the order's kind ("unspecified" for an unknown one).
pub fn order_kind_name(order: &v1::Order) -> &'static str {
    order_kind(order).map_or("unspecified", OrderKind::as_str)
}

/// The lowercase name of the order's state ("unspecified" for an unknown one).
pub fn order_state_name(order: &v1::Order) -> &'static str {
    order_state(order).map_or("unspecified", OrderState::as_str)
}

#[derive(Debug, Clone, PartialEq, Serialize)]
pub struct AgentJson {
    pub name: String,
    pub version: String,
    pub labels: BTreeMap<String, String>,
    pub online: bool,
    pub last_seen: Option<String>,
    pub database_count: u32,
    pub repository: String,
}

impl From<&v1::Agent> for AgentJson {
    fn from(agent: &v1::Agent) -> Self {
        Self {
            name: agent.name.clone(),
            version: agent.version.clone(),
            labels: sorted(&agent.labels),
            online: agent.online,
            last_seen: rfc3339(agent.last_seen_unix_ms),
            database_count: agent.database_count,
            repository: agent.repository.clone(),
        }
    }
}

#[derive(Debug, Clone, PartialEq, Serialize)]
pub struct DatabaseJson {
    pub id: String,
    pub agent: String,
    pub name: String,
    pub labels: BTreeMap<String, String>,
    pub agent_online: bool,
    pub last_artifact_id: Option<String>,
    pub last_backup_at: Option<String>,
}

impl From<&v1::Database> for DatabaseJson {
    fn from(database: &v1::Database) -> Self {
        Self {
            id: database.id.clone(),
            agent: database.agent.clone(),
            name: database.name.clone(),
            labels: sorted(&database.labels),
            agent_online: database.agent_online,
            last_artifact_id: non_empty(&database.last_artifact_id),
            last_backup_at: rfc3339(database.last_backup_unix_ms),
        }
    }
}

#[derive(Debug, Clone, PartialEq, Serialize)]
pub struct OrderJson {
    pub id: String,
    pub kind: &'static str,
    pub database: String,
    pub state: &'static str,
    pub requested_by: String,
    pub reason: Option<String>,
    pub attempts: u32,
    pub created_at: Option<String>,
    pub updated_at: Option<String>,
    pub started_at: Option<String>,
    pub finished_at: Option<String>,
    pub phase: Option<String>,
    pub progress_bytes: u64,
    pub progress_bytes_per_sec: f64,
    pub error: Option<String>,
    /// Started without waiting for a maintenance window.
    pub emergency: bool,
    /// The safety backup a destructive order took (or waits for) first.
    pub safety_backup_order_id: Option<String>,
    /// While held: when the order may start (null when it waits for another order to end).
    pub held_until: Option<String>,
    /// A destructive order that has not started by then expires.
    pub deadline: Option<String>,
    /// The artifact a backup produced.
    pub artifact_id: Option<String>,
    /// The failure proved the artifact unusable (checksum, decompression, missing files or
    /// row counts), not the server or the agent.
    pub artifact_corrupt: bool,
    pub restore: Option<RestoreJson>,
    pub health: Option<HealthJson>,
    pub prune: Option<PruneOutcomeJson>,
    pub drill: Option<DrillJson>,
    pub migration: Option<MigrationJson>,
}

#[derive(Debug, Clone, PartialEq, Serialize)]
pub struct PruneOutcomeJson {
    pub removed_artifact_ids: Vec<String>,
}

#[derive(Debug, Clone, PartialEq, Serialize)]
pub struct RestoreJson {
    pub database: String,
    pub tables_verified: u32,
    pub rows_verified: u64,
    pub phases: Vec<PhaseJson>,
}

#[derive(Debug, Clone, PartialEq, Serialize)]
pub struct PhaseJson {
    pub phase: String,
    pub millis: u64,
}

fn phases(timings: &[v1::PhaseTiming]) -> Vec<PhaseJson> {
    timings
        .iter()
        .map(|p| PhaseJson {
            phase: p.phase.clone(),
            millis: p.millis,
        })
        .collect()
}

/// What a drill found: its result, the scratch copy it verified, and how long each phase took.
#[derive(Debug, Clone, PartialEq, Serialize)]
pub struct DrillJson {
    /// The artifact drilled.
    pub artifact_id: Option<String>,
    /// The database drilled: the order's own, or, for a drill run on another agent's server
    /// (`--on`), the one whose backup it restored.
    pub drilled_database: String,
    /// Restored, verified and every check passed.
    pub passed: bool,
    /// The scratch database the drill restored into (dropped again).
    pub scratch_database: String,
    pub tables_verified: u32,
    pub rows_verified: u64,
    /// Time to a usable copy, every phase but cleanup: the measured RTO.
    pub restore_millis: u64,
    /// Uncompressed dump bytes restored.
    pub raw_bytes: u64,
    pub phases: Vec<PhaseJson>,
    pub checks: Vec<CheckJson>,
}

#[derive(Debug, Clone, PartialEq, Serialize)]
pub struct CheckJson {
    pub name: String,
    pub passed: bool,
    /// Why it did not pass.
    pub error: Option<String>,
}

#[derive(Debug, Clone, PartialEq, Serialize)]
pub struct HealthJson {
    pub connected: bool,
    pub latency_ms: u64,
    pub server_version: String,
    pub database_size_bytes: u64,
    pub table_count: u32,
    pub connections_used: u32,
    pub connections_max: u32,
    pub in_recovery: bool,
    pub uptime_seconds: u64,
    /// `primary` or `standby`.
    pub replication_role: Option<String>,
    /// A standby's time since its last replayed transaction; a primary's largest standby lag.
    pub replication_lag_ms: u64,
    /// Age of the oldest open transaction (0 when none).
    pub oldest_transaction_seconds: u64,
    /// `age(datfrozenxid)` of the database.
    pub wraparound_age: u64,
    /// The file system of the agent's repository (null when it is not a local path).
    pub repository_free_bytes: Option<u64>,
    pub repository_total_bytes: Option<u64>,
}

impl From<&v1::RestoreOutcome> for RestoreJson {
    fn from(restore: &v1::RestoreOutcome) -> Self {
        Self {
            database: restore.database.clone(),
            tables_verified: restore.tables_verified,
            rows_verified: restore.rows_verified,
            phases: phases(&restore.phases),
        }
    }
}

impl DrillJson {
    fn new(order: &v1::Order, drill: &v1::DrillOutcome) -> Self {
        Self {
            artifact_id: source_artifact_id(order).map(str::to_owned),
            drilled_database: match order.spec.as_ref().and_then(|s| s.params.as_ref()) {
                Some(Params::Drill(params)) if !params.source_database.is_empty() => {
                    params.source_database.clone()
                }
                _ => order.database.clone(),
            },
            passed: result_succeeded(order),
            scratch_database: drill.scratch_database.clone(),
            tables_verified: drill.tables_verified,
            rows_verified: drill.rows_verified,
            restore_millis: drill.restore_millis,
            raw_bytes: drill.raw_bytes,
            phases: phases(&drill.phases),
            checks: checks(&drill.checks),
        }
    }
}

fn checks(results: &[v1::CheckResult]) -> Vec<CheckJson> {
    results
        .iter()
        .map(|check| CheckJson {
            name: check.name.clone(),
            passed: check.passed,
            error: non_empty(&check.error),
        })
        .collect()
}

/// A migration file by version and name.
#[derive(Debug, Clone, PartialEq, Serialize)]
pub struct MigrationRefJson {
    pub version: String,
    pub name: String,
}

impl From<&v1::MigrationRef> for MigrationRefJson {
    fn from(migration: &v1::MigrationRef) -> Self {
        Self {
            version: migration.version.clone(),
            name: migration.name.clone(),
        }
    }
}

/// A migration the database recorded as applied.
#[derive(Debug, Clone, PartialEq, Serialize)]
pub struct AppliedMigrationJson {
    pub version: String,
    pub name: String,
    /// sha256 of the file as applied.
    pub sha256: String,
    pub applied_at: Option<String>,
    pub duration_ms: u64,
}

impl From<&v1::AppliedMigration> for AppliedMigrationJson {
    fn from(migration: &v1::AppliedMigration) -> Self {
        Self {
            version: migration.version.clone(),
            name: migration.name.clone(),
            sha256: migration.sha256.clone(),
            applied_at: rfc3339(migration.applied_unix_ms),
            duration_ms: migration.duration_ms,
        }
    }
}

/// An applied migration whose file has changed since.
#[derive(Debug, Clone, PartialEq, Serialize)]
pub struct ChangedMigrationJson {
    pub version: String,
    pub name: String,
    pub recorded_sha256: String,
    pub file_sha256: String,
}

impl From<&v1::ChangedMigration> for ChangedMigrationJson {
    fn from(migration: &v1::ChangedMigration) -> Self {
        Self {
            version: migration.version.clone(),
            name: migration.name.clone(),
            recorded_sha256: migration.recorded_sha256.clone(),
            file_sha256: migration.file_sha256.clone(),
        }
    }
}

/// A version as a number, which orders migrations (`0002` before `10`); odd ones last.
pub fn version_number(version: &str) -> u64 {
    version.parse().unwrap_or(u64::MAX)
}

fn all<'a, W: 'a, J: From<&'a W>>(items: &'a [W]) -> Vec<J> {
    items.iter().map(J::from).collect()
}

/// What a migration did, also when it failed.
#[derive(Debug, Clone, PartialEq, Serialize)]
pub struct MigrationJson {
    /// The backup taken before anything changed (null when glass was broken without one).
    pub pre_migration_artifact_id: Option<String>,
    /// Applied by this order, in order.
    pub applied: Vec<AppliedMigrationJson>,
    /// Recorded before this order, with the checksum the file still has.
    pub already_applied: Vec<AppliedMigrationJson>,
    /// Not applied: not reached when the order failed.
    pub pending: Vec<MigrationRefJson>,
    /// Applied with a different checksum than the file has now.
    pub changed: Vec<ChangedMigrationJson>,
    /// Recorded in the database but not among the files sent.
    pub unknown: Vec<AppliedMigrationJson>,
    /// The version whose SQL failed.
    pub failed_version: Option<String>,
    pub checks: Vec<CheckJson>,
    /// The pre-migration backup was restored over the database after a failed check.
    pub restored: bool,
    /// The command that brings back the pre-migration state, when the order failed after
    /// changing the database and did not restore.
    pub restore_command: Option<String>,
    /// Command mode: the tail of the command's output.
    pub command_output: Option<String>,
    pub phases: Vec<PhaseJson>,
}

impl From<&v1::MigrateOutcome> for MigrationJson {
    fn from(migration: &v1::MigrateOutcome) -> Self {
        Self {
            pre_migration_artifact_id: non_empty(&migration.pre_migration_artifact_id),
            applied: all(&migration.applied),
            already_applied: all(&migration.already_applied),
            pending: all(&migration.pending),
            changed: all(&migration.changed),
            unknown: all(&migration.unknown),
            failed_version: non_empty(&migration.failed_version),
            checks: checks(&migration.checks),
            restored: migration.restored,
            restore_command: non_empty(&migration.restore_command),
            command_output: non_empty(&migration.command_output),
            phases: phases(&migration.phases),
        }
    }
}

/// `warden migrate status`: the files against what the database recorded.
#[derive(Debug, Clone, PartialEq, Serialize)]
pub struct MigrationStatusJson {
    pub database: String,
    /// The status order that compared them.
    pub order_id: String,
    pub applied: Vec<AppliedMigrationJson>,
    pub pending: Vec<MigrationRefJson>,
    pub changed: Vec<ChangedMigrationJson>,
    pub unknown: Vec<AppliedMigrationJson>,
}

impl MigrationStatusJson {
    pub fn new(order: &v1::Order, status: &v1::MigrateOutcome) -> Self {
        Self {
            database: order.database.clone(),
            order_id: order.id.clone(),
            // A status order applies nothing, so whatever it reports as applied, in either
            // list, was there before; in version order.
            applied: {
                let mut applied: Vec<AppliedMigrationJson> = status
                    .applied
                    .iter()
                    .chain(&status.already_applied)
                    .map(From::from)
                    .collect();
                applied.sort_by_key(|m| version_number(&m.version));
                applied
            },
            pending: all(&status.pending),
            changed: all(&status.changed),
            unknown: all(&status.unknown),
        }
    }
}

impl From<&v1::HealthReport> for HealthJson {
    fn from(health: &v1::HealthReport) -> Self {
        Self {
            connected: health.connected,
            latency_ms: health.latency_ms,
            server_version: health.server_version.clone(),
            database_size_bytes: health.database_size_bytes,
            table_count: health.table_count,
            connections_used: health.connections_used,
            connections_max: health.connections_max,
            in_recovery: health.in_recovery,
            uptime_seconds: health.uptime_seconds,
            replication_role: non_empty(&health.replication_role),
            replication_lag_ms: health.replication_lag_ms,
            oldest_transaction_seconds: health.oldest_transaction_seconds,
            wraparound_age: health.wraparound_age,
            repository_free_bytes: non_zero(health.repository_total_bytes)
                .map(|_| health.repository_free_bytes),
            repository_total_bytes: non_zero(health.repository_total_bytes),
        }
    }
}

/// Returns what the order's agent reported back, once there is a result.
pub fn order_outcome(order: &v1::Order) -> Option<&ResultOutcome> {
    order.result.as_ref().and_then(|r| r.outcome.as_ref())
}

/// Returns the artifact a restore or drill reads.
pub fn source_artifact_id(order: &v1::Order) -> Option<&str> {
    let id = match order.spec.as_ref()?.params.as_ref()? {
        Params::Restore(restore) => &restore.artifact_id,
        Params::Drill(drill) => &drill.artifact_id,
        _ => return None,
    };
    (!id.is_empty()).then_some(id.as_str())
}

/// Returns whether the order's agent reported success: for a drill, that it passed.
pub fn result_succeeded(order: &v1::Order) -> bool {
    order.result.as_ref().is_some_and(|r| r.success)
}

/// Returns whether the order's failure proved the artifact it read unusable.
pub fn artifact_corrupt(order: &v1::Order) -> bool {
    order.result.as_ref().is_some_and(|r| r.artifact_corrupt)
}

impl From<&v1::Order> for OrderJson {
    fn from(order: &v1::Order) -> Self {
        let outcome = order_outcome(order);
        Self {
            id: order.id.clone(),
            kind: order_kind_name(order),
            database: order.database.clone(),
            state: order_state_name(order),
            requested_by: order.requested_by.clone(),
            reason: non_empty(&order.reason),
            attempts: order.attempts,
            created_at: rfc3339(order.created_unix_ms),
            updated_at: rfc3339(order.updated_unix_ms),
            started_at: rfc3339(order.started_unix_ms),
            finished_at: rfc3339(order.finished_unix_ms),
            phase: non_empty(&order.phase),
            progress_bytes: order.progress_bytes,
            progress_bytes_per_sec: order.progress_bytes_per_sec,
            error: non_empty(&order.error),
            emergency: order.emergency,
            safety_backup_order_id: non_empty(&order.safety_backup_order_id),
            held_until: rfc3339(order.held_until_unix_ms),
            deadline: rfc3339(order.deadline_unix_ms),
            artifact_id: match outcome {
                Some(ResultOutcome::Backup(backup)) => non_empty(&backup.artifact_id),
                _ => None,
            },
            artifact_corrupt: artifact_corrupt(order),
            restore: match outcome {
                Some(ResultOutcome::Restore(restore)) => Some(restore.into()),
                _ => None,
            },
            health: match outcome {
                Some(ResultOutcome::Health(health)) => Some(health.into()),
                _ => None,
            },
            prune: match outcome {
                Some(ResultOutcome::Prune(prune)) => Some(PruneOutcomeJson {
                    removed_artifact_ids: prune.removed_artifact_ids.clone(),
                }),
                _ => None,
            },
            drill: match outcome {
                Some(ResultOutcome::Drill(drill)) => Some(DrillJson::new(order, drill)),
                _ => None,
            },
            migration: migrate_outcome(order).map(MigrationJson::from),
        }
    }
}

/// Returns what a migrate order reported, once there is a result.
pub fn migrate_outcome(order: &v1::Order) -> Option<&v1::MigrateOutcome> {
    match order_outcome(order)? {
        ResultOutcome::Migrate(migration) => Some(migration),
        _ => None,
    }
}

/// Returns a migrate order's parameters.
pub fn migrate_params(order: &v1::Order) -> Option<&v1::MigrateParams> {
    match order.spec.as_ref()?.params.as_ref()? {
        Params::Migrate(params) => Some(params),
        _ => None,
    }
}

/// A fleet rollout of one migration, wave by wave.
#[derive(Debug, Clone, PartialEq, Serialize)]
pub struct RolloutJson {
    pub id: String,
    /// `running`, `succeeded`, `halted` or `cancelled`.
    pub state: String,
    /// Label terms; empty selects the whole fleet.
    pub selector: String,
    /// Cumulative wave sizes, e.g. `1,25%,100%`.
    pub waves: String,
    /// The wave running now, from 1 (0 before the first starts).
    pub current_wave: u32,
    pub wave_count: u32,
    pub requested_by: String,
    pub reason: Option<String>,
    pub created_at: Option<String>,
    pub finished_at: Option<String>,
    /// Why it halted.
    pub error: Option<String>,
    /// The files applied (empty in command mode).
    pub migrations: Vec<MigrationRefJson>,
    /// The migration command (null in SQL mode).
    pub command: Option<String>,
    pub targets: Vec<RolloutTargetJson>,
}

#[derive(Debug, Clone, PartialEq, Serialize)]
pub struct RolloutTargetJson {
    pub database: String,
    pub wave: u32,
    /// `waiting`, `skipped` or the state of its order.
    pub state: String,
    pub order_id: Option<String>,
    pub pre_migration_artifact_id: Option<String>,
    /// Versions this database applied.
    pub applied: Vec<String>,
    pub error: Option<String>,
}

impl From<&v1::Rollout> for RolloutJson {
    fn from(rollout: &v1::Rollout) -> Self {
        Self {
            id: rollout.id.clone(),
            state: rollout.state.clone(),
            selector: rollout.selector.clone(),
            waves: rollout.waves.clone(),
            current_wave: rollout.current_wave,
            wave_count: rollout.wave_count,
            requested_by: rollout.requested_by.clone(),
            reason: non_empty(&rollout.reason),
            created_at: rfc3339(rollout.created_unix_ms),
            finished_at: rfc3339(rollout.finished_unix_ms),
            error: non_empty(&rollout.error),
            migrations: all(&rollout.migrations),
            command: non_empty(&rollout.command),
            targets: all(&rollout.targets),
        }
    }
}

impl From<&v1::RolloutTarget> for RolloutTargetJson {
    fn from(target: &v1::RolloutTarget) -> Self {
        Self {
            database: target.database.clone(),
            wave: target.wave,
            state: target.state.clone(),
            order_id: non_empty(&target.order_id),
            pre_migration_artifact_id: non_empty(&target.pre_migration_artifact_id),
            applied: target.applied.clone(),
            error: non_empty(&target.error),
        }
    }
}

#[derive(Debug, Clone, PartialEq, Serialize)]
pub struct ArtifactJson {
    pub id: String,
    pub database: String,
    pub state: String,
    pub trigger: String,
    pub order_id: Option<String>,
    pub created_at: Option<String>,
    pub size_bytes: u64,
    pub raw_bytes: u64,
    pub sha256: String,
    pub server_version: String,
    pub pg_dump_version: String,
    pub path: String,
    /// Read back after commit, or restored by a passing drill.
    pub verified: bool,
    /// When a drill last restored it successfully.
    pub drilled_at: Option<String>,
    /// Why it is corrupt (state `corrupt`): the drill or restore that proved it unusable.
    pub corrupt_reason: Option<String>,
    /// The parsed manifest document.
    pub manifest: Value,
}

impl From<&v1::Artifact> for ArtifactJson {
    fn from(artifact: &v1::Artifact) -> Self {
        Self {
            id: artifact.id.clone(),
            database: artifact.database.clone(),
            state: artifact.state.clone(),
            trigger: artifact.trigger.clone(),
            order_id: non_empty(&artifact.order_id),
            created_at: rfc3339(artifact.created_unix_ms),
            size_bytes: artifact.size_bytes,
            raw_bytes: artifact.raw_bytes,
            sha256: artifact.sha256.clone(),
            server_version: artifact.server_version.clone(),
            pg_dump_version: artifact.pg_dump_version.clone(),
            path: artifact.path.clone(),
            verified: artifact.verified,
            drilled_at: rfc3339(artifact.drilled_unix_ms),
            corrupt_reason: non_empty(&artifact.corrupt_reason),
            manifest: embedded_json(&artifact.manifest_json),
        }
    }
}

#[derive(Debug, Clone, PartialEq, Serialize)]
pub struct AuditEventJson {
    pub seq: u64,
    pub at: Option<String>,
    pub actor: String,
    pub action: String,
    pub target: String,
    /// The parsed parameters document.
    pub params: Value,
    pub outcome: String,
    pub prev_hash: String,
    pub hash: String,
}

impl From<&v1::AuditEvent> for AuditEventJson {
    fn from(event: &v1::AuditEvent) -> Self {
        Self {
            seq: event.seq,
            at: rfc3339(event.at_unix_ms),
            actor: event.actor.clone(),
            action: event.action.clone(),
            target: event.target.clone(),
            params: embedded_json(&event.params_json),
            outcome: event.outcome.clone(),
            prev_hash: event.prev_hash.clone(),
            hash: event.hash.clone(),
        }
    }
}

#[derive(Debug, Clone, PartialEq, Serialize)]
pub struct AuditVerifyJson {
    pub ok: bool,
    pub events_checked: u64,
    pub first_broken_seq: Option<u64>,
    pub problem: Option<String>,
}

impl From<&v1::VerifyAuditResponse> for AuditVerifyJson {
    fn from(verify: &v1::VerifyAuditResponse) -> Self {
        // Only a broken chain has a first broken event; the wire says 0 when it is intact.
        Self {
            ok: verify.ok,
            events_checked: verify.events_checked,
            first_broken_seq: (!verify.ok).then_some(verify.first_broken_seq),
            problem: if verify.ok {
                None
            } else {
                non_empty(&verify.problem)
            },
        }
    }
}

#[derive(Debug, Clone, PartialEq, Serialize)]
pub struct WindowJson {
    pub name: String,
    /// `maintenance` or `freeze`.
    pub kind: String,
    /// Label terms; empty matches the whole fleet.
    pub selector: String,
    pub timezone: String,
    pub recurrence: String,
    /// When the span open now closes (null when closed).
    pub open_until: Option<String>,
    /// The next span that starts after now (null when none within a year).
    pub next_start: Option<String>,
    pub next_end: Option<String>,
}

impl From<&v1::WindowInfo> for WindowJson {
    fn from(window: &v1::WindowInfo) -> Self {
        Self {
            name: window.name.clone(),
            kind: window.kind.clone(),
            selector: window.selector.clone(),
            timezone: window.timezone.clone(),
            recurrence: window.recurrence.clone(),
            open_until: rfc3339(window.open_until_unix_ms),
            next_start: rfc3339(window.next_start_unix_ms),
            next_end: rfc3339(window.next_end_unix_ms),
        }
    }
}

#[derive(Debug, Clone, PartialEq, Serialize)]
pub struct NextWindowJson {
    pub database: String,
    pub labels: BTreeMap<String, String>,
    /// Destructive work may start now.
    pub allowed_now: bool,
    /// The maintenance window open now, and until when.
    pub open_window: Option<String>,
    pub open_until: Option<String>,
    /// The freeze in force now, and until when.
    pub freeze_window: Option<String>,
    pub freeze_until: Option<String>,
    /// The next slot in which destructive work may start (the current one when allowed now).
    pub next_window: Option<String>,
    pub next_start: Option<String>,
    pub next_end: Option<String>,
}

impl From<&v1::NextWindowResponse> for NextWindowJson {
    fn from(next: &v1::NextWindowResponse) -> Self {
        Self {
            database: next.database.clone(),
            labels: sorted(&next.labels),
            allowed_now: next.allowed_now,
            open_window: non_empty(&next.open_window),
            open_until: rfc3339(next.open_until_unix_ms),
            freeze_window: non_empty(&next.freeze_window),
            freeze_until: rfc3339(next.freeze_until_unix_ms),
            next_window: non_empty(&next.next_window),
            next_start: rfc3339(next.next_start_unix_ms),
            next_end: rfc3339(next.next_end_unix_ms),
        }
    }
}

/// What `apply`, `window add` and `window rm` changed (or would change).
#[derive(Debug, Clone, PartialEq, Serialize)]
pub struct PolicyResultJson {
    pub applied: bool,
    /// The policy version in force after the call.
    pub version: u64,
    pub dry_run: bool,
    pub changes: Vec<PolicyChangeJson>,
}

#[derive(Debug, Clone, PartialEq, Serialize)]
pub struct PolicyChangeJson {
    /// `added`, `changed` or `removed`.
    pub op: String,
    /// `limits`, `window`, `schedule` or `retention`.
    pub what: String,
    pub name: Option<String>,
    /// What differs, e.g. `cron: 0 3 * * * -> 0 4 * * *`.
    pub detail: Option<String>,
}

impl PolicyResultJson {
    pub fn new(response: &v1::ApplyPolicyResponse, dry_run: bool) -> Self {
        Self {
            applied: response.applied,
            version: response.version,
            dry_run,
            changes: response
                .changes
                .iter()
                .map(|change| PolicyChangeJson {
                    op: change.op.clone(),
                    what: change.what.clone(),
                    name: non_empty(&change.name),
                    detail: non_empty(&change.detail),
                })
                .collect(),
        }
    }
}

#[derive(Debug, Clone, PartialEq, Serialize)]
pub struct ExportJson {
    pub version: u64,
    pub toml: String,
}

impl From<&v1::ExportPolicyResponse> for ExportJson {
    fn from(export: &v1::ExportPolicyResponse) -> Self {
        Self {
            version: export.version,
            toml: export.toml.clone(),
        }
    }
}

#[derive(Debug, Clone, PartialEq, Serialize)]
pub struct PruneJson {
    pub dry_run: bool,
    /// Every artifact considered, pruned or kept.
    pub decisions: Vec<PruneDecisionJson>,
    /// The prune orders queued to remove the files (empty for a dry run).
    pub order_ids: Vec<String>,
}

#[derive(Debug, Clone, PartialEq, Serialize)]
pub struct PruneDecisionJson {
    pub artifact_id: String,
    pub database: String,
    pub created: Option<String>,
    pub size_bytes: u64,
    pub prune: bool,
    /// The rule that keeps the artifact, or why none does.
    pub why: String,
}

impl PruneJson {
    pub fn new(response: &v1::PruneResponse, dry_run: bool) -> Self {
        Self {
            dry_run,
            decisions: response
                .decisions
                .iter()
                .map(|decision| PruneDecisionJson {
                    artifact_id: decision.artifact_id.clone(),
                    database: decision.database.clone(),
                    created: rfc3339(decision.created_unix_ms),
                    size_bytes: decision.size_bytes,
                    prune: decision.prune,
                    why: decision.why.clone(),
                })
                .collect(),
            order_ids: response.order_ids.clone(),
        }
    }
}

/// `warden rto`: every database against its recovery targets, worst first.
#[derive(Debug, Clone, PartialEq, Serialize)]
pub struct RtoReportJson {
    pub generated_at: Option<String>,
    pub databases: Vec<RtoRowJson>,
}

#[derive(Debug, Clone, PartialEq, Serialize)]
pub struct RtoRowJson {
    pub database: String,
    pub tier: Option<String>,
    /// `ok`, `at_risk`, `breach` or `unknown`.
    pub status: String,
    /// Why the status is what it is.
    pub reasons: Vec<String>,
    /// The targets (null when none applies).
    pub rto_ms: Option<u64>,
    pub rpo_ms: Option<u64>,
    /// The newest drill (all null when the database was never drilled).
    pub last_drill_at: Option<String>,
    pub last_drill_ms: Option<u64>,
    pub last_drill_passed: Option<bool>,
    pub last_drill_artifact_id: Option<String>,
    /// The newest backup's size over the drill throughput (null when unknown).
    pub predicted_restore_ms: Option<u64>,
    /// The newest complete backup (null when there is none).
    pub newest_backup_at: Option<String>,
    pub newest_backup_age_ms: Option<u64>,
}

impl From<&v1::RtoReportResponse> for RtoReportJson {
    fn from(report: &v1::RtoReportResponse) -> Self {
        Self {
            generated_at: rfc3339(report.generated_unix_ms),
            databases: report.rows.iter().map(RtoRowJson::from).collect(),
        }
    }
}

impl From<&v1::RtoRow> for RtoRowJson {
    fn from(row: &v1::RtoRow) -> Self {
        let drilled = row.last_drill_unix_ms != 0;
        let backed_up = row.newest_backup_unix_ms != 0;
        Self {
            database: row.database.clone(),
            tier: non_empty(&row.tier),
            status: row.status.clone(),
            reasons: row.reasons.clone(),
            rto_ms: non_zero(row.rto_ms),
            rpo_ms: non_zero(row.rpo_ms),
            last_drill_at: rfc3339(row.last_drill_unix_ms),
            last_drill_ms: drilled.then_some(row.last_drill_ms),
            last_drill_passed: drilled.then_some(row.last_drill_passed),
            last_drill_artifact_id: non_empty(&row.last_drill_artifact_id),
            predicted_restore_ms: non_zero(row.predicted_restore_ms),
            newest_backup_at: rfc3339(row.newest_backup_unix_ms),
            newest_backup_age_ms: backed_up.then_some(row.newest_backup_age_ms),
        }
    }
}

/// `warden status`: the fleet at a glance, databases worst first.
#[derive(Debug, Clone, PartialEq, Serialize)]
pub struct FleetStatusJson {
    pub generated_at: Option<String>,
    pub agents_online: u32,
    pub agents_total: u32,
    pub databases: Vec<DatabaseStatusJson>,
    /// Each agent's newest probe of its repository, failing ones first.
    pub repositories: Vec<AgentRepositoryJson>,
}

#[derive(Debug, Clone, PartialEq, Serialize)]
pub struct AgentRepositoryJson {
    pub agent: String,
    pub repository: String,
    pub agent_online: bool,
    /// Whether the agent could write, read back and delete a probe object.
    pub ok: bool,
    /// The storage's own error when it could not.
    pub error: Option<String>,
    pub probe_ms: u64,
    pub checked_at: Option<String>,
}

impl From<&v1::AgentRepository> for AgentRepositoryJson {
    fn from(repository: &v1::AgentRepository) -> Self {
        let health = repository.health.clone().unwrap_or_default();
        Self {
            agent: repository.agent.clone(),
            repository: repository.repository.clone(),
            agent_online: repository.agent_online,
            ok: health.ok,
            error: (!health.error.is_empty()).then_some(health.error),
            probe_ms: health.probe_ms,
            checked_at: rfc3339(health.checked_unix_ms),
        }
    }
}

#[derive(Debug, Clone, PartialEq, Serialize)]
pub struct DatabaseStatusJson {
    pub database: String,
    pub agent_online: bool,
    /// `healthy`, `degraded`, `down` or `unknown`.
    pub health: String,
    pub health_reasons: Vec<String>,
    /// When the newest health report was taken, and the report (null when there is none).
    pub health_at: Option<String>,
    pub report: Option<HealthJson>,
    pub newest_backup_at: Option<String>,
    /// `ok`, `at_risk`, `breach` or `unknown`, as `warden rto` reports it.
    pub rto_status: String,
}

impl From<&v1::FleetStatusResponse> for FleetStatusJson {
    fn from(status: &v1::FleetStatusResponse) -> Self {
        Self {
            generated_at: rfc3339(status.generated_unix_ms),
            agents_online: status.agents_online,
            agents_total: status.agents_total,
            databases: status
                .databases
                .iter()
                .map(DatabaseStatusJson::from)
                .collect(),
            repositories: status
                .repositories
                .iter()
                .map(AgentRepositoryJson::from)
                .collect(),
        }
    }
}

impl From<&v1::DatabaseStatus> for DatabaseStatusJson {
    fn from(database: &v1::DatabaseStatus) -> Self {
        Self {
            database: database.database.clone(),
            agent_online: database.agent_online,
            health: database.health.clone(),
            health_reasons: database.health_reasons.clone(),
            health_at: rfc3339(database.health_unix_ms),
            report: database.report.as_ref().map(HealthJson::from),
            newest_backup_at: rfc3339(database.newest_backup_unix_ms),
            rto_status: database.rto_status.clone(),
        }
    }
}

#[cfg(test)]
mod tests {
    use serde_json::json;

    use super::*;

    const CREATED_MS: i64 = 1_795_728_605_250;
    const CREATED: &str = "2026-11-26T21:30:05.250Z";

    /// The keys of a JSON object, sorted.
    fn keys(value: &Value) -> Vec<&str> {
        value
            .as_object()
            .expect("an object")
            .keys()
            .map(String::as_str)
            .collect()
    }

    fn order(state: v1::OrderState, outcome: Option<ResultOutcome>) -> v1::Order {
        v1::Order {
            id: "o-1".into(),
            kind: v1::OrderKind::Backup.into(),
            database: "pg1/shop".into(),
            state: state.into(),
            spec: None,
            requested_by: "alice@ops".into(),
            reason: String::new(),
            attempts: 1,
            created_unix_ms: CREATED_MS,
            updated_unix_ms: CREATED_MS + 1000,
            started_unix_ms: 0,
            finished_unix_ms: 0,
            phase: String::new(),
            progress_bytes: 0,
            progress_bytes_per_sec: 0.0,
            result: outcome.map(|outcome| v1::OrderResult {
                order_id: "o-1".into(),
                success: true,
                error: String::new(),
                cancelled: false,
                artifact_corrupt: false,
                outcome: Some(outcome),
            }),
            error: String::new(),
            emergency: false,
            safety_backup_order_id: String::new(),
            held_until_unix_ms: 0,
            deadline_unix_ms: 0,
        }
    }

    #[test]
    fn agent_shape() {
        let agent = v1::Agent {
            name: "pg1".into(),
            version: "0.1.0".into(),
            labels: HashMap::from([("env".into(), "demo".into())]),
            online: true,
            last_seen_unix_ms: CREATED_MS,
            database_count: 1,
            repository: "file:///repo".into(),
        };
        assert_eq!(
            serde_json::to_value(AgentJson::from(&agent)).expect("serializes"),
            json!({
                "name": "pg1", "version": "0.1.0", "labels": {"env": "demo"}, "online": true,
                "last_seen": CREATED, "database_count": 1, "repository": "file:///repo"
            })
        );
    }

    #[test]
    fn database_without_backup_has_nulls() {
        let database = v1::Database {
            id: "pg1/shop".into(),
            agent: "pg1".into(),
            name: "shop".into(),
            labels: HashMap::new(),
            agent_online: false,
            last_artifact_id: String::new(),
            last_backup_unix_ms: 0,
        };
        assert_eq!(
            serde_json::to_value(DatabaseJson::from(&database)).expect("serializes"),
            json!({
                "id": "pg1/shop", "agent": "pg1", "name": "shop", "labels": {},
                "agent_online": false, "last_artifact_id": null, "last_backup_at": null
            })
        );
    }

    #[test]
    fn queued_order_shape() {
        let value = serde_json::to_value(OrderJson::from(&order(v1::OrderState::Queued, None)))
            .expect("serializes");
        assert_eq!(
            value,
            json!({
                "id": "o-1", "kind": "backup", "database": "pg1/shop", "state": "queued",
                "requested_by": "alice@ops", "reason": null, "attempts": 1,
                "created_at": CREATED, "updated_at": "2026-11-26T21:30:06.250Z",
                "started_at": null, "finished_at": null, "phase": null, "progress_bytes": 0,
                "progress_bytes_per_sec": 0.0, "error": null, "emergency": false,
                "safety_backup_order_id": null, "held_until": null, "deadline": null,
                "artifact_id": null, "artifact_corrupt": false, "restore": null,
                "health": null, "prune": null, "drill": null, "migration": null
            })
        );
    }

    #[test]
    fn held_emergency_order_shape() {
        let mut held = order(v1::OrderState::Held, None);
        held.kind = v1::OrderKind::Restore.into();
        held.phase = "waiting for maintenance window prod-sunday".into();
        held.emergency = true;
        held.safety_backup_order_id = "o-safety".into();
        held.held_until_unix_ms = CREATED_MS + 3_600_000;
        held.deadline_unix_ms = CREATED_MS + 7_200_000;
        let value = serde_json::to_value(OrderJson::from(&held)).expect("serializes");
        assert_eq!(value["state"], "held");
        assert_eq!(value["kind"], "restore");
        assert_eq!(value["phase"], "waiting for maintenance window prod-sunday");
        assert_eq!(value["emergency"], true);
        assert_eq!(value["safety_backup_order_id"], "o-safety");
        assert_eq!(value["held_until"], "2026-11-26T22:30:05.250Z");
        assert_eq!(value["deadline"], "2026-11-26T23:30:05.250Z");
    }

    #[test]
    fn prune_orders_and_expired_state_have_names() {
        let mut expired = order(v1::OrderState::Expired, None);
        expired.kind = v1::OrderKind::Prune.into();
        let json = OrderJson::from(&expired);
        assert_eq!((json.kind, json.state), ("prune", "expired"));
        let pruned = order(
            v1::OrderState::Succeeded,
            Some(ResultOutcome::Prune(v1::PruneOutcome {
                removed_artifact_ids: vec!["a-1".into(), "a-2".into()],
            })),
        );
        assert_eq!(
            serde_json::to_value(OrderJson::from(&pruned).prune).expect("serializes"),
            json!({"removed_artifact_ids": ["a-1", "a-2"]})
        );
    }

    #[test]
    fn window_shapes() {
        let window = v1::WindowInfo {
            name: "prod-sunday".into(),
            kind: "maintenance".into(),
            selector: "env=prod".into(),
            timezone: "Europe/Berlin".into(),
            recurrence: "weekly sun 02:00-04:00".into(),
            open_until_unix_ms: 0,
            next_start_unix_ms: CREATED_MS,
            next_end_unix_ms: CREATED_MS + 7_200_000,
        };
        assert_eq!(
            serde_json::to_value(WindowJson::from(&window)).expect("serializes"),
            json!({
                "name": "prod-sunday", "kind": "maintenance", "selector": "env=prod",
                "timezone": "Europe/Berlin", "recurrence": "weekly sun 02:00-04:00",
                "open_until": null, "next_start": CREATED, "next_end": "2026-11-26T23:30:05.250Z"
            })
        );
        let next = v1::NextWindowResponse {
            database: "pg1/shop".into(),
            allowed_now: false,
            freeze_window: "xmas".into(),
            freeze_until_unix_ms: CREATED_MS,
            labels: HashMap::from([("env".into(), "prod".into())]),
            ..Default::default()
        };
        assert_eq!(
            serde_json::to_value(NextWindowJson::from(&next)).expect("serializes"),
            json!({
                "database": "pg1/shop", "labels": {"env": "prod"}, "allowed_now": false,
                "open_window": null, "open_until": null, "freeze_window": "xmas",
                "freeze_until": CREATED, "next_window": null, "next_start": null,
                "next_end": null
            })
        );
    }

    #[test]
    fn policy_and_prune_shapes() {
        let response = v1::ApplyPolicyResponse {
            changes: vec![
                v1::PolicyChange {
                    op: "changed".into(),
                    what: "limits".into(),
                    name: String::new(),
                    detail: "max_concurrent: 2 -> 3".into(),
                },
                v1::PolicyChange {
                    op: "added".into(),
                    what: "window".into(),
                    name: "prod-sunday".into(),
                    detail: String::new(),
                },
            ],
            version: 4,
            applied: false,
        };
        assert_eq!(
            serde_json::to_value(PolicyResultJson::new(&response, true)).expect("serializes"),
            json!({
                "applied": false, "version": 4, "dry_run": true, "changes": [
                    {"op": "changed", "what": "limits", "name": null,
                     "detail": "max_concurrent: 2 -> 3"},
                    {"op": "added", "what": "window", "name": "prod-sunday", "detail": null}
                ]
            })
        );
        let prune = v1::PruneResponse {
            decisions: vec![v1::PruneDecision {
                artifact_id: "a-1".into(),
                database: "pg1/shop".into(),
                created_unix_ms: CREATED_MS,
                size_bytes: 2048,
                prune: true,
                why: "older than every rule keeps".into(),
            }],
            order_ids: vec!["o-9".into()],
        };
        assert_eq!(
            serde_json::to_value(PruneJson::new(&prune, false)).expect("serializes"),
            json!({
                "dry_run": false, "order_ids": ["o-9"], "decisions": [
                    {"artifact_id": "a-1", "database": "pg1/shop", "created": CREATED,
                     "size_bytes": 2048, "prune": true, "why": "older than every rule keeps"}
                ]
            })
        );
    }

    #[test]
    fn order_results_fill_their_own_field() {
        let backup = order(
            v1::OrderState::Succeeded,
            Some(ResultOutcome::Backup(v1::BackupOutcome {
                artifact_id: "a-1".into(),
                artifact_path: "pg1/shop/a-1".into(),
                manifest_json: "{}".into(),
                verified: false,
            })),
        );
        let json = OrderJson::from(&backup);
        assert_eq!(json.state, "succeeded");
        assert_eq!(json.artifact_id.as_deref(), Some("a-1"));
        assert!(json.restore.is_none() && json.health.is_none());

        let restore = order(
            v1::OrderState::Succeeded,
            Some(ResultOutcome::Restore(v1::RestoreOutcome {
                database: "pg1/shop_restored".into(),
                tables_verified: 3,
                rows_verified: 900,
                phases: vec![v1::PhaseTiming {
                    phase: "restore".into(),
                    millis: 1200,
                }],
            })),
        );
        assert_eq!(
            serde_json::to_value(OrderJson::from(&restore).restore).expect("serializes"),
            json!({
                "database": "pg1/shop_restored", "tables_verified": 3, "rows_verified": 900,
                "phases": [{"phase": "restore", "millis": 1200}]
            })
        );

        let health = order(
            v1::OrderState::Succeeded,
            Some(ResultOutcome::Health(v1::HealthReport {
                connected: true,
                latency_ms: 2,
                server_version: "15.18".into(),
                database_size_bytes: 8_000_000,
                table_count: 3,
                connections_used: 5,
                connections_max: 100,
                in_recovery: false,
                uptime_seconds: 86_400,
                replication_role: "primary".into(),
                replication_lag_ms: 0,
                oldest_transaction_seconds: 12,
                wraparound_age: 150_000_000,
                repository_free_bytes: 0,
                repository_total_bytes: 0,
            })),
        );
        assert_eq!(
            serde_json::to_value(OrderJson::from(&health).health).expect("serializes"),
            json!({
                "connected": true, "latency_ms": 2, "server_version": "15.18",
                "database_size_bytes": 8_000_000, "table_count": 3, "connections_used": 5,
                "connections_max": 100, "in_recovery": false, "uptime_seconds": 86_400,
                "replication_role": "primary", "replication_lag_ms": 0,
                "oldest_transaction_seconds": 12, "wraparound_age": 150_000_000,
                "repository_free_bytes": null, "repository_total_bytes": null
            })
        );
    }

    fn drill_order(success: bool, corrupt: bool) -> v1::Order {
        let mut drill = order(
            if success {
                v1::OrderState::Succeeded
            } else {
                v1::OrderState::Failed
            },
            Some(ResultOutcome::Drill(v1::DrillOutcome {
                scratch_database: "pg1/warden_drill_1".into(),
                tables_verified: 3,
                rows_verified: 950,
                phases: vec![
                    v1::PhaseTiming {
                        phase: "pg_restore".into(),
                        millis: 1200,
                    },
                    v1::PhaseTiming {
                        phase: "cleanup".into(),
                        millis: 30,
                    },
                ],
                checks: vec![v1::CheckResult {
                    name: "has_orders".into(),
                    passed: success,
                    error: if success { "" } else { "returned false" }.into(),
                }],
                restore_millis: 1500,
                raw_bytes: 204_800,
            })),
        );
        drill.kind = v1::OrderKind::Drill.into();
        drill.spec = Some(v1::OrderSpec {
            params: Some(Params::Drill(v1::DrillParams {
                artifact_id: "a-1".into(),
                ..Default::default()
            })),
        });
        if let Some(result) = drill.result.as_mut() {
            result.success = success;
            result.artifact_corrupt = corrupt;
        }
        drill
    }

    #[test]
    fn drill_outcome_shape() {
        let json = OrderJson::from(&drill_order(true, false));
        assert_eq!(json.kind, "drill");
        assert!(!json.artifact_corrupt);
        assert_eq!(
            serde_json::to_value(json.drill).expect("serializes"),
            json!({
                "artifact_id": "a-1", "drilled_database": "pg1/shop", "passed": true,
                "scratch_database": "pg1/warden_drill_1",
                "tables_verified": 3, "rows_verified": 950, "restore_millis": 1500,
                "raw_bytes": 204_800,
                "phases": [{"phase": "pg_restore", "millis": 1200},
                           {"phase": "cleanup", "millis": 30}],
                "checks": [{"name": "has_orders", "passed": true, "error": null}]
            })
        );
        let failed = OrderJson::from(&drill_order(false, true));
        assert!(failed.artifact_corrupt);
        let drill = failed.drill.expect("a drill outcome");
        assert!(!drill.passed);
        assert_eq!(drill.checks[0].error.as_deref(), Some("returned false"));
    }

    fn applied(version: &str, name: &str) -> v1::AppliedMigration {
        v1::AppliedMigration {
            version: version.into(),
            name: name.into(),
            sha256: "ab".repeat(32),
            applied_unix_ms: CREATED_MS,
            duration_ms: 120,
        }
    }

    #[test]
    fn migration_outcome_shape() {
        let mut migrate = order(
            v1::OrderState::Failed,
            Some(ResultOutcome::Migrate(v1::MigrateOutcome {
                applied: vec![applied("0002", "add_email")],
                already_applied: vec![applied("0001", "create_users")],
                pending: vec![v1::MigrationRef {
                    version: "0003".into(),
                    name: "backfill".into(),
                }],
                changed: vec![v1::ChangedMigration {
                    version: "0000".into(),
                    name: "init".into(),
                    recorded_sha256: "aa".into(),
                    file_sha256: "bb".into(),
                }],
                unknown: vec![],
                failed_version: "0003".into(),
                checks: vec![v1::CheckResult {
                    name: "c".into(),
                    passed: false,
                    error: "returned false".into(),
                }],
                pre_migration_artifact_id: "a-pre".into(),
                restored: false,
                phases: vec![v1::PhaseTiming {
                    phase: "apply".into(),
                    millis: 300,
                }],
                command_output: String::new(),
                restore_command: "warden restore a-pre --replace".into(),
            })),
        );
        migrate.kind = v1::OrderKind::Migrate.into();
        let json = serde_json::to_value(OrderJson::from(&migrate)).expect("serializes");
        assert_eq!(json["kind"], "migrate");
        let entry = json!({"version": "0002", "name": "add_email", "sha256": "ab".repeat(32),
                           "applied_at": CREATED, "duration_ms": 120});
        assert_eq!(
            json["migration"],
            json!({
                "pre_migration_artifact_id": "a-pre",
                "applied": [entry],
                "already_applied": [{"version": "0001", "name": "create_users",
                                     "sha256": "ab".repeat(32), "applied_at": CREATED,
                                     "duration_ms": 120}],
                "pending": [{"version": "0003", "name": "backfill"}],
                "changed": [{"version": "0000", "name": "init", "recorded_sha256": "aa",
                             "file_sha256": "bb"}],
                "unknown": [],
                "failed_version": "0003",
                "checks": [{"name": "c", "passed": false, "error": "returned false"}],
                "restored": false,
                "restore_command": "warden restore a-pre --replace",
                "command_output": null,
                "phases": [{"phase": "apply", "millis": 300}]
            })
        );
        let empty = serde_json::to_value(MigrationJson::from(&v1::MigrateOutcome::default()))
            .expect("serializes");
        for key in [
            "pre_migration_artifact_id",
            "failed_version",
            "restore_command",
            "command_output",
        ] {
            assert_eq!(empty[key], Value::Null, "{key}");
        }
    }

    #[test]
    fn migration_status_lists_everything_recorded_as_applied_in_version_order() {
        let status = v1::MigrateOutcome {
            applied: vec![applied("10", "late")],
            already_applied: vec![applied("0002", "b"), applied("0001", "a")],
            ..Default::default()
        };
        let mut o = order(v1::OrderState::Succeeded, None);
        o.id = "o-status".into();
        let json = MigrationStatusJson::new(&o, &status);
        let versions: Vec<&str> = json.applied.iter().map(|m| m.version.as_str()).collect();
        assert_eq!(versions, ["0001", "0002", "10"]);
        let value = serde_json::to_value(&json).expect("serializes");
        assert_eq!(
            keys(&value),
            [
                "applied", "changed", "database", "order_id", "pending", "unknown"
            ]
        );
        assert_eq!(value["order_id"], "o-status");
        assert_eq!(value["database"], "pg1/shop");
    }

    #[test]
    fn rollout_shape() {
        let rollout = v1::Rollout {
            id: "r-1".into(),
            state: "running".into(),
            selector: String::new(),
            waves: "1,100%".into(),
            requested_by: "alice@ops".into(),
            reason: String::new(),
            created_unix_ms: CREATED_MS,
            finished_unix_ms: 0,
            current_wave: 0,
            wave_count: 2,
            error: String::new(),
            migrations: vec![],
            command: "artisan".into(),
            targets: vec![v1::RolloutTarget {
                database: "pg1/shop".into(),
                wave: 1,
                state: "waiting".into(),
                ..Default::default()
            }],
        };
        assert_eq!(
            serde_json::to_value(RolloutJson::from(&rollout)).expect("serializes"),
            json!({
                "id": "r-1", "state": "running", "selector": "", "waves": "1,100%",
                "current_wave": 0, "wave_count": 2, "requested_by": "alice@ops",
                "reason": null, "created_at": CREATED, "finished_at": null, "error": null,
                "migrations": [], "command": "artisan",
                "targets": [{"database": "pg1/shop", "wave": 1, "state": "waiting",
                             "order_id": null, "pre_migration_artifact_id": null,
                             "applied": [], "error": null}]
            })
        );
    }

    #[test]
    fn rto_report_shape() {
        let report = v1::RtoReportResponse {
            rows: vec![
                v1::RtoRow {
                    database: "pg1/shop".into(),
                    tier: "critical".into(),
                    rto_ms: 1_800_000,
                    rpo_ms: 86_400_000,
                    last_drill_unix_ms: CREATED_MS,
                    last_drill_ms: 0,
                    last_drill_passed: false,
                    last_drill_artifact_id: "a-1".into(),
                    predicted_restore_ms: 0,
                    newest_backup_unix_ms: CREATED_MS,
                    newest_backup_age_ms: 0,
                    status: "breach".into(),
                    reasons: vec!["last drill failed".into(), "no prediction".into()],
                },
                v1::RtoRow {
                    database: "pg2/new".into(),
                    status: "unknown".into(),
                    ..Default::default()
                },
            ],
            generated_unix_ms: CREATED_MS,
        };
        assert_eq!(
            serde_json::to_value(RtoReportJson::from(&report)).expect("serializes"),
            json!({
                "generated_at": CREATED,
                "databases": [
                    {"database": "pg1/shop", "tier": "critical", "status": "breach",
                     "reasons": ["last drill failed", "no prediction"],
                     "rto_ms": 1_800_000, "rpo_ms": 86_400_000,
                     "last_drill_at": CREATED, "last_drill_ms": 0, "last_drill_passed": false,
                     "last_drill_artifact_id": "a-1", "predicted_restore_ms": null,
                     "newest_backup_at": CREATED, "newest_backup_age_ms": 0},
                    {"database": "pg2/new", "tier": null, "status": "unknown", "reasons": [],
                     "rto_ms": null, "rpo_ms": null, "last_drill_at": null,
                     "last_drill_ms": null, "last_drill_passed": null,
                     "last_drill_artifact_id": null, "predicted_restore_ms": null,
                     "newest_backup_at": null, "newest_backup_age_ms": null}
                ]
            })
        );
    }

    #[test]
    fn fleet_status_shape() {
        let status = v1::FleetStatusResponse {
            agents_online: 1,
            agents_total: 2,
            databases: vec![v1::DatabaseStatus {
                database: "pg2/inventory".into(),
                agent_online: false,
                health: "down".into(),
                health_reasons: vec!["agent pg2 is offline".into()],
                report: None,
                health_unix_ms: 0,
                newest_backup_unix_ms: CREATED_MS,
                rto_status: "at_risk".into(),
            }],
            generated_unix_ms: CREATED_MS,
            repositories: vec![v1::AgentRepository {
                agent: "pg1".into(),
                repository: "s3://backups/warden".into(),
                agent_online: true,
                health: Some(v1::RepositoryHealth {
                    ok: false,
                    error: "InvalidAccessKeyId".into(),
                    probe_ms: 0,
                    checked_unix_ms: CREATED_MS,
                }),
            }],
        };
        assert_eq!(
            serde_json::to_value(FleetStatusJson::from(&status)).expect("serializes"),
            json!({
                "generated_at": CREATED, "agents_online": 1, "agents_total": 2,
                "databases": [
                    {"database": "pg2/inventory", "agent_online": false, "health": "down",
                     "health_reasons": ["agent pg2 is offline"], "health_at": null,
                     "report": null, "newest_backup_at": CREATED, "rto_status": "at_risk"}
                ],
                "repositories": [
                    {"agent": "pg1", "repository": "s3://backups/warden", "agent_online": true,
                     "ok": false, "error": "InvalidAccessKeyId", "probe_ms": 0,
                     "checked_at": CREATED}
                ]
            })
        );
    }

    #[test]
    fn failed_order_carries_its_error() {
        let mut failed = order(v1::OrderState::Failed, None);
        failed.error = "pg_dump exited with 1: permission denied".into();
        let json = OrderJson::from(&failed);
        assert_eq!(json.state, "failed");
        assert_eq!(
            json.error.as_deref(),
            Some("pg_dump exited with 1: permission denied")
        );
    }

    #[test]
    fn unknown_enum_values_do_not_break_output() {
        let mut strange = order(v1::OrderState::Queued, None);
        strange.state = 99;
        strange.kind = 0;
        let json = OrderJson::from(&strange);
        assert_eq!((json.kind, json.state), ("unspecified", "unspecified"));
    }

    #[test]
    fn artifact_manifest_is_parsed() {
        let artifact = v1::Artifact {
            id: "a-1".into(),
            database: "pg1/shop".into(),
            state: "complete".into(),
            trigger: "manual".into(),
            order_id: "o-1".into(),
            created_unix_ms: CREATED_MS,
            size_bytes: 2048,
            raw_bytes: 8192,
            sha256: "ab".repeat(32),
            server_version: "15.18".into(),
            pg_dump_version: "pg_dump (PostgreSQL) 15.18".into(),
            path: "pg1/shop/a-1".into(),
            verified: true,
            manifest_json: r#"{"format":1,"tables":[{"schema":"public","table":"t","rows":3}]}"#
                .into(),
            drilled_unix_ms: 0,
            corrupt_reason: String::new(),
        };
        let value = serde_json::to_value(ArtifactJson::from(&artifact)).expect("serializes");
        assert_eq!(value["manifest"]["tables"][0]["rows"], json!(3));
        assert_eq!(value["created_at"], json!(CREATED));
        assert_eq!(value["order_id"], json!("o-1"));
        assert_eq!(value["drilled_at"], Value::Null);
        assert_eq!(value["corrupt_reason"], Value::Null);
        let mut expected = vec![
            "id",
            "database",
            "state",
            "trigger",
            "order_id",
            "created_at",
            "size_bytes",
            "raw_bytes",
            "sha256",
            "server_version",
            "pg_dump_version",
            "path",
            "verified",
            "drilled_at",
            "corrupt_reason",
            "manifest",
        ];
        expected.sort_unstable();
        assert_eq!(keys(&value), expected);
    }

    #[test]
    fn embedded_documents() {
        assert_eq!(embedded_json(""), Value::Null);
        assert_eq!(embedded_json(r#"{"a":1}"#), json!({"a": 1}));
        assert_eq!(embedded_json("not json"), json!("not json"));
    }

    #[test]
    fn audit_event_params_are_parsed() {
        let event = v1::AuditEvent {
            seq: 7,
            at_unix_ms: CREATED_MS,
            actor: "alice@ops".into(),
            action: "backup.submit".into(),
            target: "pg1/shop".into(),
            params_json: r#"{"reason":"before migration"}"#.into(),
            outcome: "accepted".into(),
            prev_hash: "00".into(),
            hash: "11".into(),
        };
        assert_eq!(
            serde_json::to_value(AuditEventJson::from(&event)).expect("serializes"),
            json!({
                "seq": 7, "at": CREATED, "actor": "alice@ops", "action": "backup.submit",
                "target": "pg1/shop", "params": {"reason": "before migration"},
                "outcome": "accepted", "prev_hash": "00", "hash": "11"
            })
        );
    }

    #[test]
    fn audit_verify_nulls_when_intact() {
        let intact = v1::VerifyAuditResponse {
            ok: true,
            events_checked: 12,
            first_broken_seq: 0,
            problem: String::new(),
        };
        assert_eq!(
            serde_json::to_value(AuditVerifyJson::from(&intact)).expect("serializes"),
            json!({"ok": true, "events_checked": 12, "first_broken_seq": null, "problem": null})
        );
        let broken = v1::VerifyAuditResponse {
            ok: false,
            events_checked: 5,
            first_broken_seq: 4,
            problem: "hash mismatch".into(),
        };
        assert_eq!(
            serde_json::to_value(AuditVerifyJson::from(&broken)).expect("serializes"),
            json!({"ok": false, "events_checked": 5, "first_broken_seq": 4,
                   "problem": "hash mismatch"})
        );
    }
}

/// A token as scripts see it: never its secret, which only `token create` prints, once.
#[derive(Debug, Clone, PartialEq, Serialize)]
pub struct TokenJson {
    pub id: String,
    pub kind: String,
    pub name: String,
    pub role: Option<String>,
    pub created_by: String,
    pub created: Option<String>,
    pub expires: Option<String>,
    pub used: Option<String>,
    pub revoked: Option<String>,
}

impl From<&v1::Token> for TokenJson {
    fn from(token: &v1::Token) -> Self {
        Self {
            id: token.id.clone(),
            kind: token.kind.clone(),
            name: token.name.clone(),
            role: non_empty(&token.role),
            created_by: token.created_by.clone(),
            created: rfc3339(token.created_unix_ms),
            expires: rfc3339(token.expires_unix_ms),
            used: rfc3339(token.used_unix_ms),
            revoked: rfc3339(token.revoked_unix_ms),
        }
    }
}

/// `warden token create --json`: the token and its secret, shown this once.
#[derive(Debug, Clone, PartialEq, Serialize)]
pub struct CreatedTokenJson {
    pub token: Option<TokenJson>,
    pub secret: String,
}

/// `warden agent revoke --json`.
#[derive(Debug, Clone, PartialEq, Serialize)]
pub struct RevokedAgentJson {
    pub agent: String,
    pub certificates_revoked: u32,
}
