//! Recovery assurance, the fleet side: restore drills and what they prove about artifacts.
//!
//! A drill order restores an artifact into a scratch database on its database's server. A
//! passing drill records its timings (the RTO measurements) and marks the artifact verified;
//! a drill or restore whose failure proves the artifact unusable marks it `corrupt`, so it is
//! never offered for a restore again and no longer counts as a recovery point.

use serde_json::json;
use sqlx::SqliteConnection;
use tracing::warn;
use warden_proto::v1::{self, order_result};
use warden_shared::{Labels, OrderKind, OrderSpec};

use super::Fleet;
use super::policy::database_labels;
use crate::audit::{Actor, NewAuditEvent};
use crate::error::{CoordinatorError, CoordinatorResult};
use crate::store::{ArtifactRecord, DrillRecord, OrderRecord, Store, WriteTx};

impl Fleet {
    /// Queues a drill of `database`: of the artifact given, or of its newest complete one.
    pub async fn submit_drill(
        &self,
        actor: &Actor,
        database: &str,
        artifact_id: Option<&str>,
        reason: &str,
    ) -> CoordinatorResult<OrderRecord> {
        let target = self.online_database(database).await?;
        let artifact = match artifact_id {
            Some(id) => {
                let artifact = self.complete_artifact(id).await?;
                if (artifact.agent.as_str(), artifact.database.as_str())
                    != (target.agent.as_str(), target.database.as_str())
                {
                    return Err(CoordinatorError::InvalidArgument(format!(
                        "artifact {id} is a backup of {}/{}, not of {target}; drill that database instead",
                        artifact.agent, artifact.database
                    )));
                }
                artifact
            }
            None => {
                let mut conn = self.store.read().await?;
                Store::newest_complete_artifact(&mut conn, &target.agent, &target.database)
                    .await?
                    .ok_or_else(|| {
                        CoordinatorError::FailedPrecondition(format!(
                            "{target} has no complete backup to drill; take one with `warden backup {target}`"
                        ))
                    })?
            }
        };
        let labels = {
            let mut conn = self.store.read().await?;
            database_labels(&mut conn)
                .await?
                .remove(&(target.agent.clone(), target.database.clone()))
                .unwrap_or_default()
        };
        let order = OrderRecord::new(
            &target.agent,
            &target.database,
            &self.drill_spec(&artifact, &labels),
            &actor.to_string(),
            reason,
        );
        self.submit(actor, order).await
    }

    /// A drill of `artifact` with the checks the policy gives a database with `labels`.
    pub(super) fn drill_spec(&self, artifact: &ArtifactRecord, labels: &Labels) -> OrderSpec {
        OrderSpec::Drill {
            artifact_id: artifact.id.clone(),
            artifact_path: artifact.path.clone(),
            sha256: artifact.sha256.clone(),
            checks: self.policy().policy.checks_for(labels),
        }
    }
}

/// Records what a finished drill or restore says about its artifact, inside the transaction
/// that records the result: a drill's timings, a passing drill's verification, and an
/// artifact proven corrupt. Returns audit parameters for the order's own event.
pub(super) async fn record_recovery_result(
    tx: &mut WriteTx,
    order: &OrderRecord,
    result: &v1::OrderResult,
) -> CoordinatorResult<serde_json::Value> {
    let artifact_id = match order.spec() {
        Ok(OrderSpec::Drill { artifact_id, .. } | OrderSpec::Restore { artifact_id, .. }) => {
            artifact_id
        }
        _ => return Ok(json!({})),
    };
    let mut params = json!({ "artifact_id": artifact_id });
    let now = warden_shared::now_unix_ms();
    if order.kind == OrderKind::Drill && !result.cancelled {
        let outcome = match &result.outcome {
            Some(order_result::Outcome::Drill(outcome)) => Some(outcome),
            _ => None,
        };
        let passed = result.success && outcome.is_some();
        let drill = DrillRecord {
            order_id: order.id.clone(),
            agent: order.agent.clone(),
            database: order.database.clone(),
            artifact_id: artifact_id.clone(),
            finished_unix_ms: now,
            passed,
            restore_ms: outcome.map_or(0, |o| saturating_i64(o.restore_millis)),
            raw_bytes: outcome.map_or(0, |o| saturating_i64(o.raw_bytes)),
            error: result.error.clone(),
            phases_json: outcome.map_or_else(|| "[]".to_owned(), |o| phases_json(&o.phases)),
        };
        Store::insert_drill(tx, &drill).await?;
        params["passed"] = json!(passed);
        params["restore_ms"] = json!(drill.restore_ms);
        if passed {
            Store::mark_artifact_drilled(tx, &artifact_id, now).await?;
            audit_artifact(
                tx,
                order,
                "artifact.verified",
                json!({ "artifact_id": artifact_id, "order_id": order.id, "restore_ms": drill.restore_ms }),
            )
            .await?;
        }
    }
    if !result.success && result.artifact_corrupt {
        if Store::mark_artifact_corrupt(tx, &artifact_id, &result.error).await? {
            warn!(order_id = %order.id, %artifact_id, error = %result.error, "artifact is corrupt");
            audit_artifact(
                tx,
                order,
                "artifact.corrupt",
                json!({ "artifact_id": artifact_id, "order_id": order.id, "why": result.error }),
            )
            .await?;
        }
        params["artifact_corrupt"] = json!(true);
    }
    Ok(params)
}

async fn audit_artifact(
    tx: &mut SqliteConnection,
    order: &OrderRecord,
    action: &str,
    params: serde_json::Value,
) -> CoordinatorResult<()> {
    Store::append_audit(
        tx,
        NewAuditEvent::new(
            &Actor::Agent(order.agent.clone()),
            action,
            order.target(),
            params,
        ),
    )
    .await?;
    Ok(())
}

fn phases_json(phases: &[v1::PhaseTiming]) -> String {
    let phases: Vec<serde_json::Value> = phases
        .iter()
        .map(|p| json!({ "phase": p.phase, "millis": p.millis }))
        .collect();
    serde_json::Value::Array(phases).to_string()
}

fn saturating_i64(value: u64) -> i64 {
    i64::try_from(value).unwrap_or(i64::MAX)
}
