//! `AdminService`: the operator API. Mutating calls are audited by the fleet in the same
//! transaction as their effect; refused ones are audited here with the reason.

use std::collections::HashMap;
use std::sync::Arc;
use std::time::Duration;

use prost::Message as _;
use serde_json::json;
use tonic::{Request, Response, Status};
use warden_proto::v1::admin_service_server::AdminService;
use warden_proto::v1::{self as pb};

use crate::audit::{Actor, AuditEvent};
use crate::error::CoordinatorError;
use crate::fleet::{
    Applied, Fleet, MigrationRequest, RestoreRequest, RolloutView, TargetView, kind_name,
};
use crate::policy::{ChangeOp, Opening};
use crate::rto::Assessment;
use crate::security::Security;
use crate::security::tokens::{Role, TokenGrant, create_token, revoke_token};
use crate::store::{AgentRecord, ArtifactRecord, DatabaseRecord, OrderRecord, TokenRecord};

/// Metadata key naming the person and host behind a call (`user@host`); the bearer token
/// authenticates, this only adds where from to the audit log.
pub const ACTOR_HEADER: &str = "x-warden-actor";

const DEFAULT_LIST_LIMIT: u32 = 100;
const MAX_LIST_LIMIT: u32 = 10_000;

pub struct AdminApi {
    fleet: Arc<Fleet>,
    security: Arc<Security>,
}

impl AdminApi {
    pub fn new(fleet: Arc<Fleet>, security: Arc<Security>) -> Self {
        Self { fleet, security }
    }

    /// The role cancelling an order needs: the role that could have submitted it. An
    /// operator cancels backups, drills and restores into new databases; destructive orders
    /// (a replace, an applying migration) and broken glass are an admin's to stop too.
    async fn cancel_role(&self, order_id: &str) -> Role {
        match self.fleet.get_order(order_id).await {
            Ok(order)
                if order.emergency || order.spec().map_or(true, |spec| spec.is_destructive()) =>
            {
                Role::Admin
            }
            // Unknown orders are refused by the fleet, with the reason.
            _ => Role::Operator,
        }
    }

    /// Authenticates the caller's token and checks that its role allows `action` (`needs`).
    /// A refusal is audited with the caller, the action, its target and the reason.
    async fn authorize<T>(
        &self,
        request: &Request<T>,
        needs: Role,
        action: &str,
        target: &str,
    ) -> Result<Actor, Status> {
        let client = claimed_client(request);
        let peer = request
            .remote_addr()
            .map_or_else(String::new, |a| a.to_string());
        let (actor, error) = match self
            .security
            .tokens
            .authenticate(self.fleet.store(), bearer(request))
            .await
        {
            Ok(caller) => {
                let actor = Actor::Operator(match &client {
                    Some(client) => format!("{} ({client})", caller.name),
                    None => caller.name.clone(),
                });
                if caller.role >= needs {
                    return Ok(actor);
                }
                let why = format!(
                    "{action} needs the {needs} role; the token of {} has the {} role",
                    caller.name, caller.role
                );
                (actor, CoordinatorError::PermissionDenied(why))
            }
            Err(why) => (
                Actor::Operator(format!(
                    "anonymous ({})",
                    client.as_deref().unwrap_or("unknown")
                )),
                CoordinatorError::Unauthenticated(why),
            ),
        };
        let params = json!({ "peer": peer, "needs": needs.as_str() });
        self.fleet
            .audit_refusal(&actor, action, target, params, &error)
            .await;
        Err(error.into())
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

/// What the CLI says of the person behind a call (`user@host`), restricted to a printable,
/// bounded form. The token says who is calling; this says from where, for the audit log.
fn claimed_client<T>(request: &Request<T>) -> Option<String> {
    let claim: String = request
        .metadata()
        .get(ACTOR_HEADER)
        .and_then(|v| v.to_str().ok())?
        .chars()
        .filter(|c| c.is_ascii_graphic())
        .take(128)
        .collect();
    (!claim.is_empty()).then_some(claim)
}

/// The bearer secret of a request's `authorization` metadata.
fn bearer<T>(request: &Request<T>) -> Option<&str> {
    let value = request.metadata().get("authorization")?.to_str().ok()?;
    let secret = value.strip_prefix("Bearer ").unwrap_or(value).trim();
    (!secret.is_empty()).then_some(secret)
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
        request: Request<pb::ListAgentsRequest>,
    ) -> Result<Response<pb::ListAgentsResponse>, Status> {
        self.authorize(&request, Role::Viewer, "agents.list", "")
            .await?;
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
        self.authorize(
            &request,
            Role::Viewer,
            "databases.list",
            &request.get_ref().agent,
        )
        .await?;
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
        let needs = Role::Operator;
        let actor = self
            .authorize(
                &request,
                needs,
                "backup.submit",
                &request.get_ref().database,
            )
            .await?;
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
        let needs = restore_role(request.get_ref());
        let actor = self
            .authorize(&request, needs, "restore.submit", &request.get_ref().target)
            .await?;
        let request = request.into_inner();
        let restore = RestoreRequest {
            artifact_id: request.artifact_id.clone(),
            new_name: (!request.new_name.is_empty()).then(|| request.new_name.clone()),
            replace: request.replace,
            target: (!request.target.is_empty()).then(|| request.target.clone()),
            reason: request.reason.clone(),
            emergency: request.emergency,
            skip_safety_backup: request.skip_safety_backup,
            no_wait: request.no_wait,
        };
        let result = self.fleet.submit_restore(&actor, &restore).await;
        let params = json!({
            "artifact_id": request.artifact_id,
            "new_name": request.new_name,
            "replace": request.replace,
            "reason": request.reason,
            "emergency": request.emergency,
            "skip_safety_backup": request.skip_safety_backup,
            "no_wait": request.no_wait,
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
        let needs = Role::Operator;
        let actor = self
            .authorize(
                &request,
                needs,
                "health.submit",
                &request.get_ref().database,
            )
            .await?;
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
        self.authorize(&request, Role::Viewer, "order.get", &request.get_ref().id)
            .await?;
        let order = self.fleet.get_order(&request.into_inner().id).await?;
        Ok(Response::new(order_to_proto(order)))
    }

    async fn list_orders(
        &self,
        request: Request<pb::ListOrdersRequest>,
    ) -> Result<Response<pb::ListOrdersResponse>, Status> {
        self.authorize(
            &request,
            Role::Viewer,
            "orders.list",
            &request.get_ref().database,
        )
        .await?;
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
        let needs = self.cancel_role(&request.get_ref().id).await;
        let actor = self
            .authorize(&request, needs, "order.cancel", &request.get_ref().id)
            .await?;
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
        self.authorize(
            &request,
            Role::Viewer,
            "artifacts.list",
            &request.get_ref().database,
        )
        .await?;
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
        self.authorize(
            &request,
            Role::Viewer,
            "artifact.get",
            &request.get_ref().id,
        )
        .await?;
        let artifact = self.fleet.get_artifact(&request.into_inner().id).await?;
        Ok(Response::new(artifact_to_proto(artifact)))
    }

    async fn list_audit(
        &self,
        request: Request<pb::ListAuditRequest>,
    ) -> Result<Response<pb::ListAuditResponse>, Status> {
        self.authorize(&request, Role::Viewer, "audit.list", "")
            .await?;
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
        request: Request<pb::VerifyAuditRequest>,
    ) -> Result<Response<pb::VerifyAuditResponse>, Status> {
        self.authorize(&request, Role::Viewer, "audit.verify", "")
            .await?;
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

    async fn apply_policy(
        &self,
        request: Request<pb::ApplyPolicyRequest>,
    ) -> Result<Response<pb::ApplyPolicyResponse>, Status> {
        let needs = if request.get_ref().dry_run {
            Role::Viewer
        } else {
            Role::Admin
        };
        let actor = self
            .authorize(&request, needs, "policy.apply", "policy")
            .await?;
        let request = request.into_inner();
        let result = self
            .fleet
            .apply_policy(&actor, &request.toml, request.dry_run)
            .await;
        let params = json!({ "dry_run": request.dry_run, "bytes": request.toml.len() });
        let applied = self
            .audited(&actor, "policy.apply", "policy", params, result)
            .await?;
        Ok(Response::new(applied_to_proto(applied)))
    }

    async fn export_policy(
        &self,
        request: Request<pb::ExportPolicyRequest>,
    ) -> Result<Response<pb::ExportPolicyResponse>, Status> {
        self.authorize(&request, Role::Viewer, "policy.export", "policy")
            .await?;
        let (version, toml) = self.fleet.export_policy();
        Ok(Response::new(pb::ExportPolicyResponse {
            toml,
            version: unsigned(version),
        }))
    }

    async fn list_windows(
        &self,
        request: Request<pb::ListWindowsRequest>,
    ) -> Result<Response<pb::ListWindowsResponse>, Status> {
        self.authorize(&request, Role::Viewer, "windows.list", "")
            .await?;
        let windows = self
            .fleet
            .list_windows(chrono::Utc::now())
            .into_iter()
            .map(|status| pb::WindowInfo {
                name: status.window.name.clone(),
                kind: kind_name(status.window.kind).to_owned(),
                selector: status.window.selector.to_string(),
                timezone: status.window.timezone.name().to_owned(),
                recurrence: status.window.recurrence.describe(),
                open_until_unix_ms: status.open.map_or(0, |o| o.end.timestamp_millis()),
                next_start_unix_ms: status
                    .next
                    .as_ref()
                    .map_or(0, |n| n.start.timestamp_millis()),
                next_end_unix_ms: status.next.map_or(0, |n| n.end.timestamp_millis()),
            })
            .collect();
        Ok(Response::new(pb::ListWindowsResponse { windows }))
    }

    async fn add_window(
        &self,
        request: Request<pb::AddWindowRequest>,
    ) -> Result<Response<pb::ApplyPolicyResponse>, Status> {
        let needs = Role::Admin;
        let actor = self
            .authorize(&request, needs, "window.add", &request.get_ref().name)
            .await?;
        let request = request.into_inner();
        let mut fields = toml::Table::new();
        for (key, value) in [
            ("name", &request.name),
            ("selector", &request.selector),
            ("kind", &request.kind),
            ("timezone", &request.timezone),
            ("weekly", &request.weekly),
            ("cron", &request.cron),
            ("duration", &request.duration),
            ("start", &request.start),
            ("end", &request.end),
        ] {
            if !value.is_empty() {
                fields.insert(key.to_owned(), toml::Value::String(value.clone()));
            }
        }
        let params = serde_json::to_value(&fields).unwrap_or_default();
        let result = self.fleet.add_window(&actor, fields, request.replace).await;
        let applied = self
            .audited(&actor, "window.add", &request.name, params, result)
            .await?;
        Ok(Response::new(applied_to_proto(applied)))
    }

    async fn remove_window(
        &self,
        request: Request<pb::RemoveWindowRequest>,
    ) -> Result<Response<pb::ApplyPolicyResponse>, Status> {
        let needs = Role::Admin;
        let actor = self
            .authorize(&request, needs, "window.remove", &request.get_ref().name)
            .await?;
        let name = request.into_inner().name;
        let result = self.fleet.remove_window(&actor, &name).await;
        let applied = self
            .audited(&actor, "window.remove", &name, json!({}), result)
            .await?;
        Ok(Response::new(applied_to_proto(applied)))
    }

    async fn next_window(
        &self,
        request: Request<pb::NextWindowRequest>,
    ) -> Result<Response<pb::NextWindowResponse>, Status> {
        self.authorize(
            &request,
            Role::Viewer,
            "window.next",
            &request.get_ref().database,
        )
        .await?;
        let database = request.into_inner().database;
        let (id, labels, verdict) = self
            .fleet
            .next_window(&database, chrono::Utc::now())
            .await?;
        let millis = |o: &Option<Opening>, end: bool| {
            o.as_ref()
                .map_or(0, |o| if end { o.end } else { o.start }.timestamp_millis())
        };
        let name = |o: &Option<Opening>| o.as_ref().map(|o| o.window.clone()).unwrap_or_default();
        Ok(Response::new(pb::NextWindowResponse {
            database: id.to_string(),
            allowed_now: verdict.open.is_some(),
            open_window: name(&verdict.open),
            open_until_unix_ms: millis(&verdict.open, true),
            freeze_window: name(&verdict.freeze),
            freeze_until_unix_ms: millis(&verdict.freeze, true),
            next_window: name(&verdict.next),
            next_start_unix_ms: millis(&verdict.next, false),
            next_end_unix_ms: millis(&verdict.next, true),
            labels: labels.into_iter().collect(),
        }))
    }

    async fn submit_drill(
        &self,
        request: Request<pb::SubmitDrillRequest>,
    ) -> Result<Response<pb::Order>, Status> {
        let needs = Role::Operator;
        let actor = self
            .authorize(&request, needs, "drill.submit", &request.get_ref().database)
            .await?;
        let request = request.into_inner();
        let artifact_id = (!request.artifact_id.is_empty()).then_some(request.artifact_id.as_str());
        let on = (!request.on.is_empty()).then_some(request.on.as_str());
        let result = self
            .fleet
            .submit_drill(&actor, &request.database, artifact_id, on, &request.reason)
            .await;
        let params = json!({ "artifact_id": request.artifact_id, "on": request.on, "reason": request.reason });
        let order = self
            .audited(&actor, "drill.submit", &request.database, params, result)
            .await?;
        Ok(Response::new(order_to_proto(order)))
    }

    async fn rto_report(
        &self,
        request: Request<pb::RtoReportRequest>,
    ) -> Result<Response<pb::RtoReportResponse>, Status> {
        self.authorize(&request, Role::Viewer, "rto.report", "")
            .await?;
        let now = warden_shared::now_unix_ms();
        let rows = self.fleet.rto_report(now).await?;
        Ok(Response::new(pb::RtoReportResponse {
            rows: rows.into_iter().map(rto_row_to_proto).collect(),
            generated_unix_ms: now,
        }))
    }

    async fn fleet_status(
        &self,
        request: Request<pb::FleetStatusRequest>,
    ) -> Result<Response<pb::FleetStatusResponse>, Status> {
        self.authorize(&request, Role::Viewer, "fleet.status", "")
            .await?;
        let now = warden_shared::now_unix_ms();
        let status = self.fleet.fleet_status().await?;
        Ok(Response::new(pb::FleetStatusResponse {
            agents_online: status.agents_online,
            agents_total: status.agents_total,
            databases: status
                .databases
                .into_iter()
                .map(|db| pb::DatabaseStatus {
                    rto_status: db.rto_status().as_str().to_owned(),
                    newest_backup_unix_ms: db
                        .recovery
                        .as_ref()
                        .and_then(|a| a.newest_backup.as_ref())
                        .map_or(0, |b| b.created_unix_ms),
                    database: db.database,
                    agent_online: db.agent_online,
                    health: db.health.as_str().to_owned(),
                    health_reasons: db.health_reasons,
                    health_unix_ms: db.entry.as_ref().map_or(0, |e| e.reported_unix_ms),
                    report: db.entry.and_then(|e| e.report),
                })
                .collect(),
            generated_unix_ms: now,
            repositories: status.repositories,
        }))
    }

    async fn submit_migrate(
        &self,
        request: Request<pb::SubmitMigrateRequest>,
    ) -> Result<Response<pb::Order>, Status> {
        let needs = if request.get_ref().status_only {
            Role::Operator
        } else {
            Role::Admin
        };
        let actor = self
            .authorize(
                &request,
                needs,
                "migrate.submit",
                &request.get_ref().database,
            )
            .await?;
        let request = request.into_inner();
        let migration = migration_request(request.migration.as_ref());
        let result = self
            .fleet
            .submit_migrate(&actor, &request.database, &migration, request.status_only)
            .await;
        let mut params = migration.audit_params();
        params["status_only"] = json!(request.status_only);
        let order = self
            .audited(&actor, "migrate.submit", &request.database, params, result)
            .await?;
        Ok(Response::new(order_to_proto(order)))
    }

    async fn submit_rollout(
        &self,
        request: Request<pb::SubmitRolloutRequest>,
    ) -> Result<Response<pb::Rollout>, Status> {
        let needs = Role::Admin;
        let actor = self
            .authorize(
                &request,
                needs,
                "rollout.submit",
                &request.get_ref().selector,
            )
            .await?;
        let request = request.into_inner();
        let migration = migration_request(request.migration.as_ref());
        let result = self
            .fleet
            .submit_rollout(&actor, &request.selector, &migration, &request.waves)
            .await;
        let mut params = migration.audit_params();
        params["selector"] = json!(request.selector);
        params["waves"] = json!(request.waves);
        let rollout = self
            .audited(&actor, "rollout.submit", &request.selector, params, result)
            .await?;
        Ok(Response::new(rollout_to_proto(rollout)))
    }

    async fn get_rollout(
        &self,
        request: Request<pb::GetRolloutRequest>,
    ) -> Result<Response<pb::Rollout>, Status> {
        self.authorize(&request, Role::Viewer, "rollout.get", &request.get_ref().id)
            .await?;
        let rollout = self.fleet.get_rollout(&request.into_inner().id).await?;
        Ok(Response::new(rollout_to_proto(rollout)))
    }

    async fn list_rollouts(
        &self,
        request: Request<pb::ListRolloutsRequest>,
    ) -> Result<Response<pb::ListRolloutsResponse>, Status> {
        self.authorize(&request, Role::Viewer, "rollouts.list", "")
            .await?;
        let rollouts = self.fleet.list_rollouts().await?;
        Ok(Response::new(pb::ListRolloutsResponse {
            rollouts: rollouts.into_iter().map(rollout_to_proto).collect(),
        }))
    }

    async fn prune(
        &self,
        request: Request<pb::PruneRequest>,
    ) -> Result<Response<pb::PruneResponse>, Status> {
        let needs = if request.get_ref().dry_run {
            Role::Viewer
        } else {
            Role::Admin
        };
        let actor = self
            .authorize(&request, needs, "prune", &request.get_ref().database)
            .await?;
        let request = request.into_inner();
        let only = if request.database.is_empty() {
            None
        } else {
            Some(self.fleet.known_database(&request.database).await?)
        };
        let result = self.fleet.prune(&actor, only, request.dry_run).await;
        let params = json!({ "dry_run": request.dry_run });
        let outcome = self
            .audited(&actor, "prune", &request.database, params, result)
            .await?;
        Ok(Response::new(pb::PruneResponse {
            decisions: outcome
                .rows
                .into_iter()
                .map(|row| pb::PruneDecision {
                    artifact_id: row.artifact_id,
                    database: row.database,
                    created_unix_ms: row.created_unix_ms,
                    size_bytes: unsigned(row.size_bytes),
                    prune: row.prune,
                    why: row.why,
                })
                .collect(),
            order_ids: outcome.order_ids,
        }))
    }

    async fn create_token(
        &self,
        request: Request<pb::CreateTokenRequest>,
    ) -> Result<Response<pb::CreateTokenResponse>, Status> {
        let request_ref = request.get_ref();
        let target = if request_ref.agent.is_empty() {
            request_ref.name.clone()
        } else {
            request_ref.agent.clone()
        };
        let actor = self
            .authorize(&request, Role::Admin, "token.create", &target)
            .await?;
        let request = request.into_inner();
        let ttl = u64::try_from(request.ttl_ms)
            .ok()
            .filter(|ms| *ms > 0)
            .map(Duration::from_millis);
        let grant = match (request.agent.is_empty(), request.role.parse::<Role>()) {
            (false, _) if !request.role.is_empty() || !request.name.is_empty() => {
                Err(CoordinatorError::InvalidArgument(
                    "an enrollment token (--agent) has no role or name".to_owned(),
                ))
            }
            (false, _) => Ok(TokenGrant::Enrollment {
                agent: request.agent.clone(),
            }),
            (true, Ok(role)) => Ok(TokenGrant::Operator {
                name: request.name.clone(),
                role,
            }),
            (true, Err(error)) => Err(error),
        };
        let result = match grant {
            Ok(grant) => create_token(self.fleet.store(), &actor, &grant, ttl).await,
            Err(error) => Err(error),
        };
        let params =
            json!({ "role": request.role, "agent": request.agent, "ttl_ms": request.ttl_ms });
        let (token, secret) = self
            .audited(&actor, "token.create", &target, params, result)
            .await?;
        Ok(Response::new(pb::CreateTokenResponse {
            token: Some(token_to_proto(token)),
            secret,
        }))
    }

    async fn list_tokens(
        &self,
        request: Request<pb::ListTokensRequest>,
    ) -> Result<Response<pb::ListTokensResponse>, Status> {
        self.authorize(&request, Role::Admin, "tokens.list", "")
            .await?;
        let tokens = self
            .fleet
            .store()
            .list_tokens()
            .await
            .map_err(CoordinatorError::from)?;
        Ok(Response::new(pb::ListTokensResponse {
            tokens: tokens.into_iter().map(token_to_proto).collect(),
        }))
    }

    async fn revoke_token(
        &self,
        request: Request<pb::RevokeTokenRequest>,
    ) -> Result<Response<pb::Token>, Status> {
        let actor = self
            .authorize(&request, Role::Admin, "token.revoke", &request.get_ref().id)
            .await?;
        let id = request.into_inner().id;
        let result = revoke_token(self.fleet.store(), &self.security.tokens, &actor, &id).await;
        let token = self
            .audited(&actor, "token.revoke", &id, json!({}), result)
            .await?;
        Ok(Response::new(token_to_proto(token)))
    }

    async fn revoke_agent(
        &self,
        request: Request<pb::RevokeAgentRequest>,
    ) -> Result<Response<pb::RevokeAgentResponse>, Status> {
        let actor = self
            .authorize(
                &request,
                Role::Admin,
                "agent.revoke",
                &request.get_ref().agent,
            )
            .await?;
        let request = request.into_inner();
        let result = self
            .fleet
            .revoke_agent(&actor, &request.agent, &request.reason)
            .await;
        let params = json!({ "reason": request.reason });
        let revoked = self
            .audited(&actor, "agent.revoke", &request.agent, params, result)
            .await?;
        Ok(Response::new(pb::RevokeAgentResponse {
            agent: request.agent,
            certificates_revoked: u32::try_from(revoked).unwrap_or(u32::MAX),
        }))
    }
}

fn token_to_proto(token: TokenRecord) -> pb::Token {
    pb::Token {
        id: token.id,
        kind: token.kind,
        name: token.name,
        role: token.role,
        created_by: token.created_by,
        created_unix_ms: token.created_unix_ms,
        expires_unix_ms: token.expires_unix_ms,
        used_unix_ms: token.used_unix_ms,
        revoked_unix_ms: token.revoked_unix_ms,
    }
}

/// The role a restore needs: a new database is an operator's, replacing one (and breaking
/// glass) an admin's.
fn restore_role(request: &pb::SubmitRestoreRequest) -> Role {
    if request.replace || request.emergency || request.skip_safety_backup {
        Role::Admin
    } else {
        Role::Operator
    }
}

/// The fleet's view of a migration request; a request without one asks for nothing, which
/// the fleet refuses with what to give.
fn migration_request(migration: Option<&pb::MigrationRequest>) -> MigrationRequest {
    let Some(migration) = migration else {
        return MigrationRequest::default();
    };
    MigrationRequest {
        source: migration
            .source
            .as_ref()
            .map(warden_shared::MigrationSource::from),
        reason: migration.reason.clone(),
        emergency: migration.emergency,
        skip_safety_backup: migration.skip_safety_backup,
        no_wait: migration.no_wait,
        on_check_failure: migration.on_check_failure.clone(),
    }
}

fn rollout_to_proto(view: RolloutView) -> pb::Rollout {
    let rollout = view.rollout;
    let migrations: Vec<serde_json::Value> =
        serde_json::from_str(&rollout.migrations_json).unwrap_or_default();
    let text = |value: &serde_json::Value, key: &str| {
        value
            .get(key)
            .and_then(serde_json::Value::as_str)
            .unwrap_or_default()
            .to_owned()
    };
    pb::Rollout {
        id: rollout.id,
        state: rollout.state.as_str().to_owned(),
        selector: rollout.selector,
        waves: rollout.waves,
        requested_by: rollout.requested_by,
        reason: rollout.reason,
        created_unix_ms: rollout.created_unix_ms,
        finished_unix_ms: rollout.finished_unix_ms,
        current_wave: u32::try_from(rollout.current_wave).unwrap_or(0),
        wave_count: u32::try_from(rollout.wave_count).unwrap_or(0),
        error: rollout.error,
        migrations: migrations
            .iter()
            .map(|m| pb::MigrationRef {
                version: text(m, "version"),
                name: text(m, "name"),
            })
            .collect(),
        command: rollout.command,
        targets: view.targets.into_iter().map(target_to_proto).collect(),
    }
}

fn target_to_proto(view: TargetView) -> pb::RolloutTarget {
    let state = view.state();
    let order = view.order;
    let pre_migration = order.as_ref().and_then(|o| match o.spec() {
        Ok(warden_shared::OrderSpec::Migrate {
            pre_migration: Some(artifact),
            ..
        }) => Some(artifact.artifact_id),
        _ => None,
    });
    let outcome = order
        .as_ref()
        .and_then(|o| o.result.as_deref())
        .and_then(|bytes| pb::OrderResult::decode(bytes).ok())
        .and_then(|result| match result.outcome {
            Some(pb::order_result::Outcome::Migrate(outcome)) => Some(outcome),
            _ => None,
        });
    pb::RolloutTarget {
        database: view.target.target(),
        wave: u32::try_from(view.target.wave).unwrap_or(0),
        state,
        pre_migration_artifact_id: pre_migration
            .or_else(|| {
                outcome
                    .as_ref()
                    .map(|o| o.pre_migration_artifact_id.clone())
            })
            .unwrap_or_default(),
        applied: outcome
            .map(|o| o.applied.into_iter().map(|a| a.version).collect())
            .unwrap_or_default(),
        order_id: view.target.order_id,
        error: order.map(|o| o.error).unwrap_or_default(),
    }
}

fn applied_to_proto(applied: Applied) -> pb::ApplyPolicyResponse {
    pb::ApplyPolicyResponse {
        changes: applied
            .changes
            .into_iter()
            .map(|change| pb::PolicyChange {
                op: match change.op {
                    ChangeOp::Added => "added",
                    ChangeOp::Changed => "changed",
                    ChangeOp::Removed => "removed",
                }
                .to_owned(),
                what: change.what,
                name: change.name,
                detail: change.detail,
            })
            .collect(),
        version: unsigned(applied.version),
        applied: applied.applied,
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

/// An order as operators see it (every admin call that returns orders goes through here):
/// a migration's files by version, name and checksum, without their SQL, which only the
/// agent's assignment carries. A listing of large migrations stays small that way too.
fn order_to_proto(order: OrderRecord) -> pb::Order {
    let spec = order
        .spec()
        .ok()
        .map(|spec| pb::OrderSpec::from(&without_sql(spec)));
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
        emergency: order.emergency,
        safety_backup_order_id: order.safety_order_id,
        held_until_unix_ms: order.held_until_unix_ms,
        deadline_unix_ms: order.deadline_unix_ms,
    }
}

/// `spec` with the SQL of its migration files left out.
fn without_sql(mut spec: warden_shared::OrderSpec) -> warden_shared::OrderSpec {
    if let warden_shared::OrderSpec::Migrate {
        source: warden_shared::MigrationSource::Sql { files },
        ..
    } = &mut spec
    {
        for file in files {
            file.sql.clear();
        }
    }
    spec
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
        drilled_unix_ms: artifact.drilled_unix_ms,
        corrupt_reason: artifact.corrupt_reason,
    }
}

fn rto_row_to_proto(row: Assessment) -> pb::RtoRow {
    let drill = row.last_drill.as_ref();
    pb::RtoRow {
        database: row.database,
        tier: row.tier,
        rto_ms: duration_ms(row.rto),
        rpo_ms: duration_ms(row.rpo),
        last_drill_unix_ms: drill.map_or(0, |d| d.finished_unix_ms),
        last_drill_ms: drill.map_or(0, |d| d.restore_ms),
        last_drill_passed: drill.is_some_and(|d| d.passed),
        last_drill_artifact_id: drill.map(|d| d.artifact_id.clone()).unwrap_or_default(),
        predicted_restore_ms: row.predicted_restore_ms.unwrap_or(0),
        newest_backup_unix_ms: row.newest_backup.as_ref().map_or(0, |b| b.created_unix_ms),
        newest_backup_age_ms: row.backup_age_ms.unwrap_or(0),
        status: row.status.as_str().to_owned(),
        reasons: row.reasons,
    }
}

fn duration_ms(duration: std::time::Duration) -> u64 {
    u64::try_from(duration.as_millis()).unwrap_or(u64::MAX)
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
