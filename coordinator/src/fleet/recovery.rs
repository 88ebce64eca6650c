//! Recovery assurance, the fleet side: restore drills and what they prove about artifacts.
//!
//! A drill order restores an artifact into a scratch database on its database's server. A
//! passing drill records its timings (the RTO measurements) and marks the artifact verified;
//! a drill or restore whose failure proves the artifact unusable marks it `corrupt`, so it is
//! never offered for a restore again and no longer counts as a recovery point.

use serde_json::json;
use tracing::warn;
use warden_proto::v1::{self, order_result};
use warden_shared::{DatabaseId, Labels, OrderKind, OrderSpec, validate_agent_name};

use super::Fleet;
use super::policy::database_labels;
use crate::audit::{Actor, NewAuditEvent};
use crate::error::{CoordinatorError, CoordinatorResult};
use crate::store::{ArtifactRecord, DrillRecord, OrderRecord, Store, WriteTx};

impl Fleet {
    /// Queues a drill of `database`: of the artifact given, or of its newest complete one,
    /// on its own server or, with `on` (`AGENT` or `AGENT/DBNAME`), on another agent's.
    pub async fn submit_drill(
        &self,
        actor: &Actor,
        database: &str,
        artifact_id: Option<&str>,
        on: Option<&str>,
        reason: &str,
    ) -> CoordinatorResult<OrderRecord> {
        // Drilling elsewhere works while the database's own agent is down: that is when it
        // matters most.
        let source = match on {
            None => self.online_database(database).await?,
            Some(_) => self.known_database(database).await?,
        };
        let artifact = match artifact_id {
            Some(id) => {
                let artifact = self.complete_artifact(id).await?;
                if (artifact.agent.as_str(), artifact.database.as_str())
                    != (source.agent.as_str(), source.database.as_str())
                {
                    return Err(CoordinatorError::InvalidArgument(format!(
                        "artifact {id} is a backup of {}/{}, not of {source}; drill that database instead",
                        artifact.agent, artifact.database
                    )));
                }
                artifact
            }
            None => {
                let mut conn = self.store.read().await?;
                Store::newest_complete_artifact(&mut conn, &source.agent, &source.database)
                    .await?
                    .ok_or_else(|| {
                        CoordinatorError::FailedPrecondition(format!(
                            "{source} has no complete backup to drill; take one with `warden backup {source}`"
                        ))
                    })?
            }
        };
        let runner = match on {
            None => source.clone(),
            Some(on) => self.drill_server(on, &source, &artifact).await?,
        };
        let labels = {
            let mut conn = self.store.read().await?;
            database_labels(&mut conn)
                .await?
                .remove(&(source.agent.clone(), source.database.clone()))
                .unwrap_or_default()
        };
        let mut spec = self.drill_spec(&artifact, &labels);
        if runner != source
            && let OrderSpec::Drill { source: from, .. } = &mut spec
        {
            *from = Some(source.to_string());
        }
        let order = OrderRecord::new(
            &runner.agent,
            &runner.database,
            &spec,
            &actor.to_string(),
            reason,
        );
        self.submit(actor, order).await
    }

    /// The database whose server hosts a drill run `on` another agent (`AGENT`: its database
    /// named like the source, else its first one; or `AGENT/DBNAME`). That agent must be
    /// online and see the artifact's repository.
    async fn drill_server(
        &self,
        on: &str,
        source: &DatabaseId,
        artifact: &ArtifactRecord,
    ) -> CoordinatorResult<DatabaseId> {
        let server = if on.contains('/') {
            self.online_database(on).await?
        } else {
            validate_agent_name(on)?;
            let databases = self.store.list_databases(Some(on)).await?;
            let Some(first) = databases.first() else {
                return Err(CoordinatorError::NotFound(format!(
                    "agent {on} serves no database, so it has no server to drill on; `warden databases` lists them"
                )));
            };
            let chosen = databases
                .iter()
                .find(|d| d.name == source.database)
                .unwrap_or(first);
            self.online_database(&format!("{on}/{}", chosen.name))
                .await?
        };
        let repository = self
            .store
            .get_agent(&server.agent)
            .await?
            .map(|a| a.repository)
            .unwrap_or_default();
        if repository != artifact.repository {
            return Err(CoordinatorError::FailedPrecondition(format!(
                "artifact {} is in repository {} but agent {} uses {repository}; drill on an agent that sees that repository",
                artifact.id, artifact.repository, server.agent
            )));
        }
        Ok(server)
    }

    /// A drill of `artifact` with the checks the policy gives a database with `labels`.
    pub(super) fn drill_spec(&self, artifact: &ArtifactRecord, labels: &Labels) -> OrderSpec {
        OrderSpec::Drill {
            artifact_id: artifact.id.clone(),
            artifact_path: artifact.path.clone(),
            sha256: artifact.sha256.clone(),
            checks: self.policy().policy.checks_for(labels),
            source: None,
        }
    }
}

/// Records what a finished drill, restore or migration says about the artifact it read, inside
/// the transaction that records the result: a drill's timings, a passing drill's
/// verification, and an artifact proven corrupt. Returns audit parameters for the order's own event.
pub(super) async fn record_recovery_result(
    tx: &mut WriteTx,
    order: &OrderRecord,
    result: &v1::OrderResult,
) -> CoordinatorResult<serde_json::Value> {
    let (artifact_id, source) = match order.spec() {
        Ok(OrderSpec::Drill {
            artifact_id,
            source,
            ..
        }) => (artifact_id, source),
        Ok(OrderSpec::Restore { artifact_id, .. }) => (artifact_id, None),
        // A migration reads its pre-migration backup only to restore it after a failed check.
        Ok(OrderSpec::Migrate {
            pre_migration: Some(pre_migration),
            ..
        }) => (pre_migration.artifact_id, None),
        _ => return Ok(json!({})),
    };
    // A drill on another agent's server measures the database it drilled.
    let drilled = match source.as_deref().map(DatabaseId::parse) {
        Some(Ok(id)) => id,
        _ => DatabaseId::new(&order.agent, &order.database)?,
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
            agent: drilled.agent.clone(),
            database: drilled.database.clone(),
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
            );
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
            );
        }
        params["artifact_corrupt"] = json!(true);
    }
    Ok(params)
}

fn audit_artifact(tx: &mut WriteTx, order: &OrderRecord, action: &str, params: serde_json::Value) {
    Store::append_audit(
        tx,
        NewAuditEvent::new(
            &Actor::Agent(order.agent.clone()),
            action,
            order.target(),
            params,
        ),
    );
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
