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
use warden_shared::{OrderKind, OrderState};

use crate::format::datetime;

/// Formats wire milliseconds as RFC 3339 in UTC; 0 means absent.
pub fn rfc3339(unix_ms: i64) -> Option<String> {
    datetime(unix_ms).map(|t| t.to_rfc3339_opts(SecondsFormat::Millis, true))
}

fn non_empty(text: &str) -> Option<String> {
    (!text.is_empty()).then(|| text.to_owned())
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
    /// The artifact a backup produced.
    pub artifact_id: Option<String>,
    pub restore: Option<RestoreJson>,
    pub health: Option<HealthJson>,
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
}

impl From<&v1::RestoreOutcome> for RestoreJson {
    fn from(restore: &v1::RestoreOutcome) -> Self {
        Self {
            database: restore.database.clone(),
            tables_verified: restore.tables_verified,
            rows_verified: restore.rows_verified,
            phases: restore
                .phases
                .iter()
                .map(|p| PhaseJson {
                    phase: p.phase.clone(),
                    millis: p.millis,
                })
                .collect(),
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
        }
    }
}

/// Returns what the order's agent reported back, once there is a result.
pub fn order_outcome(order: &v1::Order) -> Option<&ResultOutcome> {
    order.result.as_ref().and_then(|r| r.outcome.as_ref())
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
            artifact_id: match outcome {
                Some(ResultOutcome::Backup(backup)) => non_empty(&backup.artifact_id),
                _ => None,
            },
            restore: match outcome {
                Some(ResultOutcome::Restore(restore)) => Some(restore.into()),
                _ => None,
            },
            health: match outcome {
                Some(ResultOutcome::Health(health)) => Some(health.into()),
                _ => None,
            },
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
    pub verified: bool,
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

#[cfg(test)]
mod tests {
    use serde_json::json;

    use super::*;

    const CREATED_MS: i64 = 1_795_728_605_250;
    const CREATED: &str = "2026-11-26T21:30:05.250Z";

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
                outcome: Some(outcome),
            }),
            error: String::new(),
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
                "progress_bytes_per_sec": 0.0, "error": null, "artifact_id": null,
                "restore": null, "health": null
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
            })),
        );
        assert_eq!(
            serde_json::to_value(OrderJson::from(&health).health).expect("serializes"),
            json!({
                "connected": true, "latency_ms": 2, "server_version": "15.18",
                "database_size_bytes": 8_000_000, "table_count": 3, "connections_used": 5,
                "connections_max": 100, "in_recovery": false
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
        };
        let value = serde_json::to_value(ArtifactJson::from(&artifact)).expect("serializes");
        assert_eq!(value["manifest"]["tables"][0]["rows"], json!(3));
        assert_eq!(value["created_at"], json!(CREATED));
        assert_eq!(value["order_id"], json!("o-1"));
        let keys: Vec<&str> = value
            .as_object()
            .expect("an object")
            .keys()
            .map(String::as_str)
            .collect();
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
            "manifest",
        ];
        expected.sort_unstable();
        assert_eq!(keys, expected);
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
