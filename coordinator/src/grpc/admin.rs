//! `AdminService`: the operator API. Mutating calls are audited by the fleet in the same
//! transaction as their effect; refused ones are audited here with the reason.

use std::collections::HashMap;
use std::sync::Arc;

use prost::Message as _;
use serde_json::json;
use tonic::{Request, Response, Status};
use warden_proto::v1::admin_service_server::AdminService;
use warden_proto::v1::{self as pb};

use crate::audit::{Actor, AuditEvent};
use crate::error::CoordinatorError;
use crate::fleet::{Fleet, RestoreRequest};
use crate::store::{AgentRecord, ArtifactRecord, DatabaseRecord, OrderRecord};

/// Metadata key naming the operator; bearer-token authentication replaces it later.
pub const ACTOR_HEADER: &str = "x-warden-actor";

const DEFAULT_LIST_LIMIT: u32 = 100;
const MAX_LIST_LIMIT: u32 = 10_000;

pub struct AdminApi {
    fleet: Arc<Fleet>,
}

impl AdminApi {
    pub fn new(fleet: Arc<Fleet>) -> Self {
        Self { fleet }
    }

    /// Runs a mutating call; a refusal is audited before it is returned.
    async fn audited<T>(
        &self,
        actor: &Actor,
        action: &str,
        target: &str,
        params: serde_json::Value,
        result: Result<T, CoordinatorError>,
    ) -> Result<T, Status> {
        match result {
            Ok(value) => Ok(value),
            Err(error) => {
                self.fleet
                    .audit_refusal(actor, action, target, params, &error)
                    .await;
                Err(error.into())
            }
        }
    }
}

/// The operator named by the request, restricted to a printable, bounded form.
fn actor_of<T>(request: &Request<T>) -> Actor {
    let name: String = request
        .metadata()
        .get(ACTOR_HEADER)
        .and_then(|v| v.to_str().ok())
        .unwrap_or("anonymous")
        .chars()
        .filter(|c| c.is_ascii_graphic())
        .take(128)
        .collect();
    Actor::Operator(if name.is_empty() {
        "anonymous".to_owned()
    } else {
        name
    })
}

fn clamp_limit(limit: u32) -> i64 {
    i64::from(if limit == 0 {
        DEFAULT_LIST_LIMIT
    } else {
        limit.min(MAX_LIST_LIMIT)
    })
}

#[tonic::async_trait]
impl AdminService for AdminApi {
    async fn list_agents(
        &self,
        _request: Request<pb::ListAgentsRequest>,
    ) -> Result<Response<pb::ListAgentsResponse>, Status> {
        let agents = self
            .fleet
            .store()
            .list_agents()
            .await
            .map_err(CoordinatorError::from)?;
        let agents = agents
            .into_iter()
            .map(|a| {
                let online = self.fleet.is_online(&a.name);
                agent_to_proto(a, online)
            })
            .collect();
        Ok(Response::new(pb::ListAgentsResponse { agents }))
    }

    async fn list_databases(
        &self,
        request: Request<pb::ListDatabasesRequest>,
    ) -> Result<Response<pb::ListDatabasesResponse>, Status> {
        let agent = request.into_inner().agent;
        let filter = (!agent.is_empty()).then_some(agent.as_str());
        let databases = self
            .fleet
            .store()
            .list_databases(filter)
            .await
            .map_err(CoordinatorError::from)?;
        let databases = databases
            .into_iter()
            .map(|d| {
                let online = self.fleet.is_online(&d.agent);
                database_to_proto(d, online)
            })
            .collect();
        Ok(Response::new(pb::ListDatabasesResponse { databases }))
    }

    async fn submit_backup(
        &self,
        request: Request<pb::SubmitBackupRequest>,
    ) -> Result<Response<pb::Order>, Status> {
        let actor = actor_of(&request);
        let request = request.into_inner();
        let result = self
            .fleet
            .submit_backup(&actor, &request.database, &request.reason)
            .await;
        let params = json!({ "reason": request.reason });
        let order = self
            .audited(&actor, "backup.submit", &request.database, params, result)
            .await?;
        Ok(Response::new(order_to_proto(order)))
    }

    async fn submit_restore(
        &self,
        request: Request<pb::SubmitRestoreRequest>,
    ) -> Result<Response<pb::Order>, Status> {
        let actor = actor_of(&request);
        let request = request.into_inner();
        let restore = RestoreRequest {
            artifact_id: request.artifact_id.clone(),
            new_name: (!request.new_name.is_empty()).then(|| request.new_name.clone()),
            replace: request.replace,
            target: (!request.target.is_empty()).then(|| request.target.clone()),
            reason: request.reason.clone(),
        };
        let result = self.fleet.submit_restore(&actor, &restore).await;
        let params = json!({
            "artifact_id": request.artifact_id,
            "new_name": request.new_name,
            "replace": request.replace,
            "reason": request.reason,
        });
        let order = self
            .audited(&actor, "restore.submit", &request.target, params, result)
            .await?;
        Ok(Response::new(order_to_proto(order)))
    }

    async fn submit_health(
        &self,
        request: Request<pb::SubmitHealthRequest>,
    ) -> Result<Response<pb::Order>, Status> {
        let actor = actor_of(&request);
        let request = request.into_inner();
        let result = self.fleet.submit_health(&actor, &request.database).await;
        let order = self
            .audited(
                &actor,
                "health.submit",
                &request.database,
                json!({}),
                result,
            )
            .await?;
        Ok(Response::new(order_to_proto(order)))
    }

    async fn get_order(
        &self,
        request: Request<pb::GetOrderRequest>,
    ) -> Result<Response<pb::Order>, Status> {
        let order = self.fleet.get_order(&request.into_inner().id).await?;
        Ok(Response::new(order_to_proto(order)))
    }

    async fn list_orders(
        &self,
        request: Request<pb::ListOrdersRequest>,
    ) -> Result<Response<pb::ListOrdersResponse>, Status> {
        let request = request.into_inner();
        let database = if request.database.is_empty() {
            None
        } else {
            Some(
                warden_shared::DatabaseId::parse(&request.database)
                    .map_err(CoordinatorError::from)?,
            )
        };
        let orders = self
            .fleet
            .store()
            .list_orders(
                database
                    .as_ref()
                    .map(|d| (d.agent.as_str(), d.database.as_str())),
                clamp_limit(request.limit),
            )
            .await
            .map_err(CoordinatorError::from)?;
        Ok(Response::new(pb::ListOrdersResponse {
            orders: orders.into_iter().map(order_to_proto).collect(),
        }))
    }

    async fn cancel_order(
        &self,
        request: Request<pb::CancelOrderRequest>,
    ) -> Result<Response<pb::Order>, Status> {
        let actor = actor_of(&request);
        let request = request.into_inner();
        let result = self
            .fleet
            .cancel(&actor, &request.id, &request.reason)
            .await;
        let params = json!({ "order_id": request.id, "reason": request.reason });
        let order = self
            .audited(&actor, "order.cancel", &request.id, params, result)
            .await?;
        Ok(Response::new(order_to_proto(order)))
    }

    async fn list_artifacts(
        &self,
        request: Request<pb::ListArtifactsRequest>,
    ) -> Result<Response<pb::ListArtifactsResponse>, Status> {
        let request = request.into_inner();
        let database = if request.database.is_empty() {
            None
        } else {
            Some(self.fleet.known_database(&request.database).await?)
        };
        let artifacts = self
            .fleet
            .store()
            .list_artifacts(
                database
                    .as_ref()
                    .map(|d| (d.agent.as_str(), d.database.as_str())),
                request.include_expired,
            )
            .await
            .map_err(CoordinatorError::from)?;
        Ok(Response::new(pb::ListArtifactsResponse {
            artifacts: artifacts.into_iter().map(artifact_to_proto).collect(),
        }))
    }

    async fn get_artifact(
        &self,
        request: Request<pb::GetArtifactRequest>,
    ) -> Result<Response<pb::Artifact>, Status> {
        let artifact = self.fleet.get_artifact(&request.into_inner().id).await?;
        Ok(Response::new(artifact_to_proto(artifact)))
    }

    async fn list_audit(
        &self,
        request: Request<pb::ListAuditRequest>,
    ) -> Result<Response<pb::ListAuditResponse>, Status> {
        let request = request.into_inner();
        let after = i64::try_from(request.after_seq).unwrap_or(i64::MAX);
        let events = self
            .fleet
            .store()
            .list_audit(after, clamp_limit(request.limit))
            .await
            .map_err(CoordinatorError::from)?;
        Ok(Response::new(pb::ListAuditResponse {
            events: events.into_iter().map(audit_to_proto).collect(),
        }))
    }

    async fn verify_audit(
        &self,
        _request: Request<pb::VerifyAuditRequest>,
    ) -> Result<Response<pb::VerifyAuditResponse>, Status> {
        let report = self.fleet.verify_audit().await?;
        let (first_broken_seq, problem) = report
            .broken
            .map(|(seq, problem)| (u64::try_from(seq).unwrap_or(0), problem))
            .unwrap_or_default();
        Ok(Response::new(pb::VerifyAuditResponse {
            ok: first_broken_seq == 0,
            events_checked: report.events_checked,
            first_broken_seq,
            problem,
        }))
    }
}

fn labels_of(json: &str) -> HashMap<String, String> {
    serde_json::from_str(json).unwrap_or_default()
}

fn unsigned(value: i64) -> u64 {
    u64::try_from(value).unwrap_or(0)
}

fn agent_to_proto(agent: AgentRecord, online: bool) -> pb::Agent {
    pb::Agent {
        labels: labels_of(&agent.labels_json),
        name: agent.name,
        version: agent.version,
        online,
        last_seen_unix_ms: agent.last_seen_unix_ms,
        database_count: u32::try_from(agent.database_count).unwrap_or(0),
        repository: agent.repository,
    }
}

fn database_to_proto(database: DatabaseRecord, agent_online: bool) -> pb::Database {
    pb::Database {
        id: format!("{}/{}", database.agent, database.name),
        labels: labels_of(&database.labels_json),
        agent: database.agent,
        name: database.name,
        agent_online,
        last_artifact_id: database.last_artifact_id.unwrap_or_default(),
        last_backup_unix_ms: database.last_backup_unix_ms.unwrap_or(0),
    }
}

fn order_to_proto(order: OrderRecord) -> pb::Order {
    let spec = order.spec().ok().map(|spec| pb::OrderSpec::from(&spec));
    let result = order
        .result
        .as_deref()
        .and_then(|bytes| pb::OrderResult::decode(bytes).ok());
    pb::Order {
        database: order.target(),
        id: order.id,
        kind: pb::OrderKind::from(order.kind).into(),
        state: pb::OrderState::from(order.state).into(),
        spec,
        requested_by: order.requested_by,
        reason: order.reason,
        attempts: u32::try_from(order.attempts).unwrap_or(0),
        created_unix_ms: order.created_unix_ms,
        updated_unix_ms: order.updated_unix_ms,
        started_unix_ms: order.started_unix_ms,
        finished_unix_ms: order.finished_unix_ms,
        phase: order.phase,
        progress_bytes: unsigned(order.progress_bytes),
        progress_bytes_per_sec: order.progress_rate,
        result,
        error: order.error,
    }
}

fn artifact_to_proto(artifact: ArtifactRecord) -> pb::Artifact {
    pb::Artifact {
        database: format!("{}/{}", artifact.agent, artifact.database),
        id: artifact.id,
        state: artifact.state,
        trigger: artifact.trigger,
        order_id: artifact.order_id,
        created_unix_ms: artifact.created_unix_ms,
        size_bytes: unsigned(artifact.size_bytes),
        raw_bytes: unsigned(artifact.raw_bytes),
        sha256: artifact.sha256,
        server_version: artifact.server_version,
        pg_dump_version: artifact.pg_dump_version,
        path: artifact.path,
        verified: artifact.verified,
        manifest_json: artifact.manifest_json,
    }
}

fn audit_to_proto(event: AuditEvent) -> pb::AuditEvent {
    pb::AuditEvent {
        seq: unsigned(event.seq),
        at_unix_ms: event.at_unix_ms,
        actor: event.actor,
        action: event.action,
        target: event.target,
        params_json: event.params_json,
        outcome: event.outcome,
        prev_hash: event.prev_hash,
        hash: event.hash,
    }
}
