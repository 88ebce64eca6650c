//! The fleet: what the coordinator decides. Agents say Hello and report on their orders;
//! operators submit and cancel orders; the reaper turns silence into offline agents and lost
//! orders. Every state change is written with its audit event in one store transaction, and
//! messages to agents are sent only after that transaction committed.

mod dispatch;
mod dispatcher;
mod migrate;
mod monitor;
mod policy;
mod recovery;
mod rollout;

use std::collections::{BTreeMap, HashMap, HashSet};
use std::sync::{Arc, RwLock};
use std::time::Duration;

use prost::Message as _;
use serde_json::json;
use tokio::sync::mpsc;
use tokio_util::sync::CancellationToken;
use tracing::{debug, info, warn};
use uuid::Uuid;
use warden_proto::v1::{
    self, CoordinatorMessage, agent_message, coordinator_message, order_result,
};
use warden_shared::{ArtifactManifest, DatabaseId, OrderKind, OrderSpec, OrderState};

use crate::audit::{Actor, ChainReport, NewAuditEvent, verify_chain};
use crate::error::{CoordinatorError, CoordinatorResult};
use crate::notify::Notifier;
use crate::registry::Registry;
use crate::security::AgentIdentity;
use crate::store::{
    AgentRecord, ArtifactRecord, InventoryDatabase, MigrateCommand, OrderRecord, Store, WriteTx,
};
use dispatcher::{Dispatcher, Report};

/// Session settings the coordinator hands to agents, and its retry limit.
#[derive(Debug, Clone, Copy)]
pub struct FleetSettings {
    pub heartbeat_interval: Duration,
    pub lease: Duration,
    pub max_attempts: u32,
    pub policy_tick: Duration,
    pub prune_interval: Duration,
    /// How often agents report the health of their databases.
    pub health_interval: Duration,
}

pub use migrate::MigrationRequest;
pub use monitor::{DatabaseStatus, FleetStatus, HealthEntry};
pub use policy::{Applied, PolicyState, PruneOutcome, PruneRow, WindowStatus, kind_name};
pub use rollout::{RolloutView, TargetView};

/// What an operator asks a restore to do.
#[derive(Debug, Clone)]
pub struct RestoreRequest {
    pub artifact_id: String,
    pub new_name: Option<String>,
    pub replace: bool,
    pub target: Option<String>,
    pub reason: String,
    /// Break glass: start now whatever the windows say.
    pub emergency: bool,
    pub skip_safety_backup: bool,
    /// Refuse instead of waiting for a maintenance window.
    pub no_wait: bool,
}

/// How an operator asked destructive work to start.
#[derive(Debug, Clone, Copy)]
struct BreakGlass {
    /// Start now whatever the windows say.
    emergency: bool,
    /// With `emergency` only: no safety backup first.
    skip_safety_backup: bool,
    /// Refuse instead of waiting for a maintenance window.
    no_wait: bool,
}

impl BreakGlass {
    fn new(emergency: bool, skip_safety_backup: bool, no_wait: bool) -> Self {
        Self {
            emergency,
            skip_safety_backup,
            no_wait,
        }
    }

    /// Refuses breaking glass without a reason, and skipping the safety backup without
    /// breaking glass.
    fn check(self, reason: &str) -> CoordinatorResult<()> {
        if self.emergency && reason.trim().is_empty() {
            return Err(CoordinatorError::InvalidArgument(
                "--emergency needs --reason \"...\": break-glass work is audited with its reason"
                    .to_owned(),
            ));
        }
        if self.skip_safety_backup && !self.emergency {
            return Err(CoordinatorError::InvalidArgument(
                "--skip-safety-backup is only allowed with --emergency --reason \"...\"".to_owned(),
            ));
        }
        Ok(())
    }
}

pub struct Fleet {
    store: Store,
    registry: Registry,
    settings: FleetSettings,
    /// The policy in force; replaced whole when a new version is applied.
    policy: RwLock<Arc<PolicyState>>,
    /// One dispatch pass at a time, so limits are counted against a settled state.
    dispatch_lock: tokio::sync::Mutex<()>,
    /// Records submitted orders and agents' reports and runs dispatch passes, on a thread
    /// of its own.
    dispatcher: Dispatcher,
    /// Cancelled when the coordinator shuts down: session tasks stop reading their streams.
    closing: CancellationToken,
    /// Health reports and the alert state between monitoring passes.
    monitor: std::sync::Mutex<monitor::MonitorState>,
    /// Delivers alerts to the webhooks in the background.
    notifier: Notifier,
}

impl Fleet {
    /// Creates the fleet and starts its dispatcher thread, which ends when the fleet is
    /// dropped.
    pub fn new(
        store: Store,
        settings: FleetSettings,
        notifier: Notifier,
    ) -> std::io::Result<Arc<Self>> {
        let mut started = Ok(());
        let fleet = Arc::new_cyclic(|fleet| {
            let dispatcher = Dispatcher::start(fleet.clone()).unwrap_or_else(|error| {
                started = Err(error);
                Dispatcher::stopped()
            });
            Self {
                dispatcher,
                store,
                registry: Registry::default(),
                settings,
                policy: RwLock::new(Arc::new(PolicyState::default())),
                dispatch_lock: tokio::sync::Mutex::new(()),
                closing: CancellationToken::new(),
                monitor: std::sync::Mutex::default(),
                notifier,
            }
        });
        started.map(|()| fleet)
    }

    pub fn store(&self) -> &Store {
        &self.store
    }

    pub fn settings(&self) -> FleetSettings {
        self.settings
    }

    pub fn is_online(&self, agent: &str) -> bool {
        self.registry.is_online(agent)
    }

    // ---- agent sessions ----

    /// Records the coordinator's start: agents marked online by a previous process are
    /// offline until they reconnect, and get one lease to do so.
    pub async fn started(&self) -> CoordinatorResult<()> {
        self.load_policy().await?;
        let mut tx = self.store.begin().await?;
        let now = warden_shared::now_unix_ms();
        let agents = Store::mark_all_agents_offline(&mut tx, now).await?;
        Store::append_audit(
            &mut tx,
            NewAuditEvent::new(
                &Actor::System,
                "coordinator.started",
                "",
                json!({ "agents_marked_offline": agents, "version": env!("CARGO_PKG_VERSION") }),
            ),
        );
        tx.commit().await?;
        Ok(())
    }

    /// Ends every agent stream, so a graceful shutdown does not wait for agents that would
    /// otherwise keep their streams open forever. They reconnect to the next coordinator.
    pub fn close_sessions(&self) {
        self.closing.cancel();
        self.registry.clear();
    }

    /// Resolves when the coordinator is shutting down.
    pub fn closing(&self) -> tokio_util::sync::WaitForCancellationFuture<'_> {
        self.closing.cancelled()
    }

    /// Registers an agent that said Hello on a new stream: records it and its inventory,
    /// applies results it finished while disconnected, marks lost what it no longer holds,
    /// then queues the Welcome and any orders waiting for it. Returns the session generation.
    pub async fn agent_hello(
        &self,
        hello: v1::Hello,
        outbox: mpsc::Sender<CoordinatorMessage>,
        certificate: Option<&AgentIdentity>,
    ) -> CoordinatorResult<i64> {
        warden_shared::validate_agent_name(&hello.agent)?;
        let mut inventory = Vec::with_capacity(hello.databases.len());
        for database in &hello.databases {
            warden_shared::validate_database_name(&database.name)?;
            inventory.push(InventoryDatabase {
                name: database.name.clone(),
                labels_json: labels_json(&database.labels),
                migrate_commands: database
                    .migrate_commands
                    .iter()
                    .map(|c| MigrateCommand {
                        name: c.name.clone(),
                        argv: c.argv.clone(),
                    })
                    .collect(),
            });
        }
        let agent = AgentRecord {
            name: hello.agent.clone(),
            version: hello.version.clone(),
            labels_json: labels_json(&hello.labels),
            repository: hello.repository.clone(),
            online: true,
            last_seen_unix_ms: warden_shared::now_unix_ms(),
            generation: 0,
            database_count: 0,
        };
        let actor = Actor::Agent(hello.agent.clone());

        let mut tx = self.store.begin().await?;
        if let Some(certificate) = certificate {
            // Serialized with `revoke_agent`: a certificate revoked since it was checked
            // (the stream may have waited before its Hello) registers nothing.
            crate::security::check_unrevoked(&mut tx, certificate).await?;
        }
        let generation = Store::upsert_agent(&mut tx, &agent).await?;
        Store::replace_inventory(&mut tx, &agent.name, &inventory).await?;
        Store::append_audit(
            &mut tx,
            NewAuditEvent::new(
                &actor,
                "agent.connected",
                &agent.name,
                json!({
                    "version": agent.version,
                    "generation": generation,
                    "databases": inventory.iter().map(|d| &d.name).collect::<Vec<_>>(),
                    "migrate_commands": command_names(&inventory),
                    "running": hello.running_order_ids,
                }),
            ),
        );
        let mut acks = Vec::new();
        let mut finished = Vec::new();
        for result in &hello.unacknowledged_results {
            finished.extend(
                self.apply_result(&mut tx, &agent.name, result, agent.last_seen_unix_ms)
                    .await?,
            );
            acks.push(result.order_id.clone());
        }
        let running: HashSet<&str> = hello.running_order_ids.iter().map(String::as_str).collect();
        let held = Store::orders_of_agent(
            &mut tx,
            &agent.name,
            &[
                OrderState::Dispatched,
                OrderState::Running,
                OrderState::Lost,
            ],
        )
        .await?;
        for mut order in held {
            let still_running = running.contains(order.id.as_str());
            if order.state == OrderState::Lost {
                // Declared lost while the agent was away, yet it kept working on it.
                if still_running {
                    order.error.clear();
                    order.finished_unix_ms = 0;
                    let params = json!({ "why": "the agent came back still running it" });
                    transition(&mut tx, &mut order, OrderState::Running, &actor, params).await?;
                }
            } else if !still_running {
                let why = format!(
                    "agent {} came back without this order: it restarted while the order ran",
                    agent.name
                );
                mark_lost(&mut tx, order, &why).await?;
            }
        }
        tx.commit().await?;
        for order in &finished {
            self.alert_if_failed(order);
        }

        let welcome = coordinator_message::Msg::Welcome(v1::Welcome {
            heartbeat_interval_ms: millis(self.settings.heartbeat_interval),
            lease_ms: millis(self.settings.lease),
            health_interval_ms: millis(self.settings.health_interval),
        });
        // The channel is fresh, so the Welcome and acks fit in it.
        let _ = outbox.try_send(CoordinatorMessage { msg: Some(welcome) });
        for order_id in acks {
            let _ = outbox.try_send(ack(order_id));
        }
        let databases = inventory.iter().map(|d| d.name.clone()).collect();
        self.registry
            .register(&agent.name, generation, outbox, databases);
        if let Some(certificate) = certificate {
            // A revocation that committed after our transaction looked for this session
            // before it was registered; look again now that it is.
            let revoked = self
                .store
                .certificate(&certificate.serial)
                .await?
                .is_none_or(|c| c.revoked_unix_ms != 0);
            if revoked {
                self.agent_gone(&agent.name, generation, "revoked").await?;
                return Err(CoordinatorError::PermissionDenied(format!(
                    "agent {} was revoked while it connected",
                    agent.name
                )));
            }
        }
        info!(agent = %agent.name, generation, databases = inventory.len(), "agent connected");
        // Orders waiting for this agent can start now; the session need not wait for them.
        self.dispatcher.nudge()?;
        Ok(generation)
    }

    /// Handles one message of a live session.
    pub async fn agent_message(
        &self,
        agent: &str,
        generation: i64,
        message: v1::AgentMessage,
    ) -> CoordinatorResult<()> {
        if !self.registry.touch(agent, generation) {
            // A message from a replaced session: the newer stream is authoritative.
            return Ok(());
        }
        match message.msg {
            None | Some(agent_message::Msg::Heartbeat(_)) => {}
            Some(agent_message::Msg::Health(reports)) => {
                self.record_health(agent, reports).await?;
            }
            Some(agent_message::Msg::Hello(_)) => {
                return Err(CoordinatorError::InvalidArgument(
                    "Hello is only valid as the first message of a stream".to_owned(),
                ));
            }
            Some(agent_message::Msg::Started(started)) => {
                self.dispatcher
                    .report(agent, generation, Report::Started(started))?;
            }
            Some(agent_message::Msg::Progress(progress)) => {
                self.store
                    .set_progress(
                        agent,
                        &progress.order_id,
                        &progress.phase,
                        i64::try_from(progress.bytes).unwrap_or(i64::MAX),
                        progress.bytes_per_sec,
                    )
                    .await?;
            }
            Some(agent_message::Msg::Result(result)) => {
                self.dispatcher
                    .report(agent, generation, Report::Result(Box::new(result)))?;
            }
        }
        Ok(())
    }

    /// Handles the end of a stream: the agent is offline unless a newer stream replaced it.
    /// The orders it holds stay with it for one lease, in case it comes back.
    pub async fn agent_gone(
        &self,
        agent: &str,
        generation: i64,
        why: &str,
    ) -> CoordinatorResult<()> {
        if !self.registry.remove(agent, generation) {
            return Ok(());
        }
        self.mark_offline(agent, generation, why).await
    }

    /// Revokes every certificate of `agent` and ends its session: it can connect again only
    /// after enrolling with a new token. Returns how many certificates were revoked.
    pub async fn revoke_agent(
        &self,
        actor: &Actor,
        agent: &str,
        reason: &str,
    ) -> CoordinatorResult<u64> {
        warden_shared::validate_agent_name(agent)?;
        let now = warden_shared::now_unix_ms();
        let mut tx = self.store.begin().await?;
        let revoked = Store::revoke_certificates(&mut tx, agent, now).await?;
        // Tokens made to enroll it (maybe leaked with the host) die with it.
        let tokens = Store::revoke_enrollment_tokens(&mut tx, agent, now).await?;
        if revoked == 0 && tokens == 0 && self.store.get_agent(agent).await?.is_none() {
            return Err(CoordinatorError::NotFound(format!(
                "no agent {agent:?}: `warden agents` lists them"
            )));
        }
        Store::append_audit(
            &mut tx,
            NewAuditEvent::new(
                actor,
                "agent.revoke",
                agent,
                json!({
                    "reason": reason,
                    "certificates_revoked": revoked,
                    "enrollment_tokens_revoked": tokens,
                }),
            ),
        );
        tx.commit().await?;
        if let Some(generation) = self.registry.generation(agent) {
            self.agent_gone(agent, generation, "revoked").await?;
        }
        Ok(revoked)
    }

    async fn mark_offline(&self, agent: &str, generation: i64, why: &str) -> CoordinatorResult<()> {
        let mut tx = self.store.begin().await?;
        if !Store::set_agent_offline(&mut tx, agent, generation, warden_shared::now_unix_ms())
            .await?
        {
            // A newer session said Hello in the meantime; it is the one that counts.
            return Ok(());
        }
        Store::append_audit(
            &mut tx,
            NewAuditEvent::new(
                &Actor::System,
                "agent.disconnected",
                agent,
                json!({ "why": why }),
            ),
        );
        tx.commit().await?;
        warn!(agent, why, "agent offline");
        Ok(())
    }

    /// Turns silence into state: sessions without a heartbeat for a lease are closed, and
    /// orders of agents offline for longer than a lease are lost.
    pub async fn reap(&self) -> CoordinatorResult<()> {
        for (agent, generation) in self.registry.expired(self.settings.lease) {
            if self.registry.remove(&agent, generation) {
                let why = format!(
                    "no heartbeat for {}",
                    humantime::format_duration(self.settings.lease)
                );
                self.mark_offline(&agent, generation, &why).await?;
            }
        }
        let cutoff = warden_shared::now_unix_ms() - millis_i64(self.settings.lease);
        let mut tx = self.store.begin().await?;
        for order in Store::orders_of_agents_offline_since(&mut tx, cutoff).await? {
            let why = format!(
                "agent {} has been offline for more than the lease ({})",
                order.agent,
                humantime::format_duration(self.settings.lease)
            );
            mark_lost(&mut tx, order, &why).await?;
        }
        tx.commit().await?;
        self.redeliver_unstarted(cutoff).await
    }

    /// Sends again the orders that online agents have not acknowledged starting within a
    /// lease: the first send can be lost when a session is replaced at that moment or its
    /// outbox is full. Agents run an order id once (and ignore ids they finished), so a
    /// second delivery is harmless.
    async fn redeliver_unstarted(&self, cutoff_unix_ms: i64) -> CoordinatorResult<()> {
        let mut tx = self.store.begin().await?;
        let unstarted = Store::orders_dispatched_before(&mut tx, cutoff_unix_ms).await?;
        tx.commit().await?;
        for order in unstarted {
            if !self.registry.is_online(&order.agent) {
                continue;
            }
            // A Started or a result may have been recorded since the list was read: send only
            // what is still dispatched, as it is now.
            let Some(current) = self.store.get_order(&order.id).await? else {
                continue;
            };
            if current.state != OrderState::Dispatched
                || current.agent != order.agent
                || current.attempts != order.attempts
            {
                continue;
            }
            warn!(order_id = %current.id, agent = %current.agent, "order not started within a lease; sending it again");
            self.registry.send(&current.agent, assignment(&current)?);
        }
        Ok(())
    }

    /// Records an agent's final word on an order; once the transaction commits, the agent
    /// may forget it. Returns the order it finished, or `None` for a duplicate of a result
    /// already recorded (or of an order this agent does not hold), which changes nothing.
    /// `received_unix_ms` is when the coordinator received it: the order's finish.
    async fn apply_result(
        &self,
        tx: &mut WriteTx,
        agent: &str,
        result: &v1::OrderResult,
        received_unix_ms: i64,
    ) -> CoordinatorResult<Option<OrderRecord>> {
        let Some(mut order) = owned_order(tx, agent, &result.order_id).await? else {
            warn!(agent, order_id = %result.order_id, "result for an order this agent does not hold");
            return Ok(None);
        };
        if matches!(
            order.state,
            OrderState::Succeeded | OrderState::Failed | OrderState::Cancelled
        ) {
            return Ok(None);
        }
        let next = if result.success {
            OrderState::Succeeded
        } else if result.cancelled && order.state.can_become(OrderState::Cancelled) {
            OrderState::Cancelled
        } else {
            OrderState::Failed
        };
        let actor = Actor::Agent(agent.to_owned());
        let mut params = json!({});
        // Recorded whether or not the prune failed on other artifacts.
        if let Some(order_result::Outcome::Prune(pruned)) = &result.outcome {
            let removed = policy::record_removed_artifacts(tx, &order, pruned).await?;
            params = json!({ "removed_artifacts": removed });
        }
        if matches!(order.kind, OrderKind::Drill | OrderKind::Restore) {
            params = recovery::record_recovery_result(tx, &order, result).await?;
        }
        if order.kind == OrderKind::Migrate {
            // An auto-restore that proved the pre-migration backup unusable marks it corrupt.
            let recovery = recovery::record_recovery_result(tx, &order, result).await?;
            params = migrate::result_params(&order, result);
            if recovery.get("artifact_corrupt").is_some() {
                params["artifact_corrupt"] = json!(true);
            }
        }
        if let (true, Some(order_result::Outcome::Backup(backup))) =
            (result.success, &result.outcome)
        {
            match self.catalog_artifact(tx, &order, backup).await {
                Ok(artifact) => {
                    // The last progress report was of the small globals file; the order's
                    // final progress is the size of the whole dump.
                    order.progress_bytes = artifact.raw_bytes;
                    params = json!({ "artifact_id": artifact.id });
                }
                Err(why) => {
                    // A result we cannot catalog is a failed backup, never a complete artifact.
                    warn!(order_id = %order.id, %why, "backup result rejected");
                    order.error = why;
                    order.result = Some(result.encode_to_vec());
                    order.finished_unix_ms = received_unix_ms;
                    transition(tx, &mut order, OrderState::Failed, &actor, json!({})).await?;
                    return Ok(Some(order));
                }
            }
        }
        order.error = result.error.clone();
        order.result = Some(result.encode_to_vec());
        order.finished_unix_ms = received_unix_ms;
        // A finished order has no current phase; its state says how it ended.
        order.phase.clear();
        transition(tx, &mut order, next, &actor, params).await?;
        Ok(Some(order))
    }

    /// Adds the artifact a backup produced to the catalog, as `complete`.
    async fn catalog_artifact(
        &self,
        tx: &mut WriteTx,
        order: &OrderRecord,
        backup: &v1::BackupOutcome,
    ) -> Result<ArtifactRecord, String> {
        let manifest: ArtifactManifest = serde_json::from_str(&backup.manifest_json)
            .map_err(|e| format!("the agent's manifest is not valid: {e}"))?;
        if manifest.artifact_id != backup.artifact_id
            || Uuid::parse_str(&manifest.artifact_id).is_err()
        {
            return Err(format!(
                "the manifest names artifact {:?} but the agent reported {:?}",
                manifest.artifact_id, backup.artifact_id
            ));
        }
        let repository: Option<(String,)> =
            sqlx::query_as("SELECT repository FROM agents WHERE name = ?")
                .bind(&order.agent)
                .fetch_optional(&mut **tx)
                .await
                .map_err(|e| e.to_string())?;
        let (trigger, verify) = match order.spec() {
            Ok(OrderSpec::Backup { trigger, verify }) => (trigger, verify),
            _ => (manifest.trigger.clone(), false),
        };
        if verify && !backup.verified {
            return Err(
                "the backup was to be read back and checked, and the agent did not report it verified; is the agent older than the coordinator?"
                    .to_owned(),
            );
        }
        let artifact = ArtifactRecord {
            id: manifest.artifact_id.clone(),
            agent: order.agent.clone(),
            database: order.database.clone(),
            order_id: order.id.clone(),
            trigger,
            state: "complete".to_owned(),
            repository: repository.map(|r| r.0).unwrap_or_default(),
            path: backup.artifact_path.clone(),
            sha256: manifest.dump.sha256.clone(),
            size_bytes: i64::try_from(manifest.dump.size_bytes).unwrap_or(i64::MAX),
            raw_bytes: i64::try_from(manifest.dump.raw_bytes).unwrap_or(i64::MAX),
            server_version: manifest.server_version.clone(),
            pg_dump_version: manifest.pg_dump_version.clone(),
            created_unix_ms: manifest.finished_unix_ms,
            verified: backup.verified,
            manifest_json: backup.manifest_json.clone(),
            expired_unix_ms: 0,
            expire_reason: String::new(),
            prune_order_id: String::new(),
            drilled_unix_ms: 0,
            corrupt_reason: String::new(),
        };
        Store::insert_artifact(tx, &artifact)
            .await
            .map_err(|e| e.to_string())?;
        Store::append_audit(
            tx,
            NewAuditEvent::new(
                &Actor::Agent(order.agent.clone()),
                "artifact.created",
                order.target(),
                json!({
                    "artifact_id": artifact.id,
                    "order_id": order.id,
                    "sha256": artifact.sha256,
                    "size_bytes": artifact.size_bytes,
                    "tables": manifest.tables.len(),
                    "rows": manifest.total_rows(),
                    "verified": artifact.verified,
                }),
            ),
        );
        Ok(artifact)
    }

    // ---- operator requests ----

    /// Queues a backup of `database` and dispatches it.
    pub async fn submit_backup(
        &self,
        actor: &Actor,
        database: &str,
        reason: &str,
    ) -> CoordinatorResult<OrderRecord> {
        let target = self.online_database(database).await?;
        let spec = OrderSpec::Backup {
            trigger: "manual".to_owned(),
            verify: false,
        };
        let order = OrderRecord::new(
            &target.agent,
            &target.database,
            &spec,
            &actor.to_string(),
            reason,
        );
        self.submit(actor, order).await
    }

    /// Queues a health check of `database` and dispatches it.
    pub async fn submit_health(
        &self,
        actor: &Actor,
        database: &str,
    ) -> CoordinatorResult<OrderRecord> {
        let target = self.online_database(database).await?;
        let order = OrderRecord::new(
            &target.agent,
            &target.database,
            &OrderSpec::Health,
            &actor.to_string(),
            "",
        );
        self.submit(actor, order).await
    }

    /// Queues a restore of an artifact into a new database or over the target database.
    pub async fn submit_restore(
        &self,
        actor: &Actor,
        request: &RestoreRequest,
    ) -> CoordinatorResult<OrderRecord> {
        let glass = BreakGlass::new(
            request.emergency,
            request.skip_safety_backup,
            request.no_wait,
        );
        glass.check(&request.reason)?;
        if (request.emergency || request.no_wait) && !request.replace {
            return Err(CoordinatorError::InvalidArgument(
                "--emergency and --no-wait apply to destructive restores (--replace) only; a restore into a new database needs no window".to_owned(),
            ));
        }
        let new_name = match (&request.new_name, request.replace) {
            (Some(name), false) => {
                warden_shared::validate_database_name(name)?;
                Some(name.clone())
            }
            (None, true) => None,
            _ => {
                return Err(CoordinatorError::InvalidArgument(
                    "give exactly one of --new-name NAME or --replace".to_owned(),
                ));
            }
        };
        let artifact = self.complete_artifact(&request.artifact_id).await?;
        let target_text = request
            .target
            .clone()
            .unwrap_or_else(|| format!("{}/{}", artifact.agent, artifact.database));
        let target = self.online_database(&target_text).await?;
        let target_agent = self.store.get_agent(&target.agent).await?;
        let target_repository = target_agent.map(|a| a.repository).unwrap_or_default();
        if target_repository != artifact.repository {
            return Err(CoordinatorError::FailedPrecondition(format!(
                "artifact {} is in repository {} but agent {} uses {}; restore it with an agent that sees that repository",
                artifact.id, artifact.repository, target.agent, target_repository
            )));
        }
        let spec = OrderSpec::Restore {
            artifact_id: artifact.id.clone(),
            artifact_path: artifact.path.clone(),
            sha256: artifact.sha256.clone(),
            new_name,
        };
        self.submit_destructive(actor, &target, &spec, &request.reason, glass)
            .await
    }

    /// Queues a destructive order, refused at once when it may not wait for a window and
    /// none is open (unless it breaks glass).
    async fn submit_destructive(
        &self,
        actor: &Actor,
        target: &DatabaseId,
        spec: &OrderSpec,
        reason: &str,
        glass: BreakGlass,
    ) -> CoordinatorResult<OrderRecord> {
        if glass.no_wait && !glass.emergency {
            self.refuse_outside_window(target).await?;
        }
        let mut order = OrderRecord::new(
            &target.agent,
            &target.database,
            spec,
            &actor.to_string(),
            reason,
        );
        order.emergency = glass.emergency;
        order.skip_safety_backup = glass.skip_safety_backup;
        self.submit(actor, order).await
    }

    /// Cancels an order: at once if no agent holds it, otherwise by asking its agent, which
    /// reports it cancelled once it has stopped and cleaned up.
    pub async fn cancel(
        &self,
        actor: &Actor,
        order_id: &str,
        reason: &str,
    ) -> CoordinatorResult<OrderRecord> {
        parse_uuid(order_id, "order")?;
        let mut tx = self.store.begin().await?;
        let mut order = Store::order_for_update(&mut tx, order_id)
            .await?
            .ok_or_else(|| unknown_order(order_id))?;
        let retried = order.state == OrderState::Lost
            && order.kind.is_idempotent()
            && order.attempts < i64::from(self.settings.max_attempts);
        match order.state {
            state if matches!(state, OrderState::Queued | OrderState::Held) || retried => {
                order.finished_unix_ms = warden_shared::now_unix_ms();
                order.error = format!("cancelled by {actor}: {reason}");
                transition(
                    &mut tx,
                    &mut order,
                    OrderState::Cancelled,
                    actor,
                    json!({ "reason": reason }),
                )
                .await?;
                dispatch::drop_safety_backup(&mut tx, &order).await?;
                tx.commit().await?;
            }
            OrderState::Dispatched | OrderState::Running => {
                if !self.registry.is_online(&order.agent) {
                    return Err(CoordinatorError::FailedPrecondition(format!(
                        "order {order_id} is held by agent {}, which is offline; it will be marked lost after the lease",
                        order.agent
                    )));
                }
                Store::append_audit(
                    &mut tx,
                    NewAuditEvent::new(
                        actor,
                        "order.cancel_requested",
                        order.target(),
                        json!({ "order_id": order.id, "reason": reason }),
                    ),
                );
                tx.commit().await?;
                let cancel = coordinator_message::Msg::Cancel(v1::CancelOrder {
                    order_id: order.id.clone(),
                });
                self.registry
                    .send(&order.agent, CoordinatorMessage { msg: Some(cancel) });
            }
            state => {
                return Err(CoordinatorError::FailedPrecondition(format!(
                    "order {order_id} is already {state}; only queued, held, dispatched or running orders, and lost ones that would be retried, can be cancelled"
                )));
            }
        }
        Ok(order)
    }

    /// Records that an operator call was refused, so denied attempts are audited too.
    pub async fn audit_refusal(
        &self,
        actor: &Actor,
        action: &str,
        target: &str,
        params: serde_json::Value,
        error: &CoordinatorError,
    ) {
        // Refused callers choose the target (a name, an id): keep what they can write short.
        let target: String = target.chars().take(MAX_REFUSED_TARGET).collect();
        let event = NewAuditEvent::new(actor, action, &target, params)
            .with_outcome(format!("refused: {error}"));
        if let Err(store_error) = self.store.audit(event).await {
            warn!(%store_error, action, "could not audit a refused call");
        }
    }

    /// Checks the whole audit chain.
    pub async fn verify_audit(&self) -> CoordinatorResult<ChainReport> {
        const PAGE: i64 = 10_000;
        let mut events = Vec::new();
        let mut after = 0;
        loop {
            let page = self.store.list_audit(after, PAGE).await?;
            let Some(last) = page.last() else { break };
            after = last.seq;
            events.extend(page);
        }
        Ok(verify_chain(events))
    }

    pub async fn get_order(&self, id: &str) -> CoordinatorResult<OrderRecord> {
        parse_uuid(id, "order")?;
        self.store
            .get_order(id)
            .await?
            .ok_or_else(|| unknown_order(id))
    }

    pub async fn get_artifact(&self, id: &str) -> CoordinatorResult<ArtifactRecord> {
        parse_uuid(id, "artifact")?;
        self.store.get_artifact(id).await?.ok_or_else(|| {
            CoordinatorError::NotFound(format!(
                "unknown artifact {id}; `warden artifacts` lists the known ones"
            ))
        })
    }

    /// Resolves `AGENT/DBNAME` to a database the catalog knows.
    pub async fn known_database(&self, text: &str) -> CoordinatorResult<DatabaseId> {
        let id = DatabaseId::parse(text)?;
        if self.store.get_agent(&id.agent).await?.is_none() {
            return Err(CoordinatorError::NotFound(format!(
                "unknown database {id}: no agent named {} has ever connected; `warden agents` lists them",
                id.agent
            )));
        }
        if !self.store.database_present(&id.agent, &id.database).await? {
            return Err(CoordinatorError::NotFound(format!(
                "unknown database {id}: agent {} does not report a database named {:?}; `warden databases` lists them",
                id.agent, id.database
            )));
        }
        Ok(id)
    }

    async fn online_database(&self, text: &str) -> CoordinatorResult<DatabaseId> {
        // The live session answers for the databases its agent reported, as the store
        // would, without a read: thousands of submissions at once need none.
        let id = DatabaseId::parse(text)?;
        if self.registry.reports_database(&id.agent, &id.database) {
            return Ok(id);
        }
        let id = self.known_database(text).await?;
        if !self.registry.is_online(&id.agent) {
            let last_seen = self
                .store
                .get_agent(&id.agent)
                .await?
                .map(|a| format_unix_ms(a.last_seen_unix_ms))
                .unwrap_or_default();
            return Err(CoordinatorError::FailedPrecondition(format!(
                "agent {} is offline (last seen {last_seen}); start it or check its logs. Nothing was queued",
                id.agent
            )));
        }
        Ok(id)
    }

    async fn complete_artifact(&self, id: &str) -> CoordinatorResult<ArtifactRecord> {
        let artifact = self.get_artifact(id).await?;
        if artifact.state != "complete" {
            return Err(CoordinatorError::FailedPrecondition(format!(
                "artifact {id} is {}; only complete artifacts can be restored",
                artifact.state
            )));
        }
        Ok(artifact)
    }

    async fn submit(&self, actor: &Actor, order: OrderRecord) -> CoordinatorResult<OrderRecord> {
        let dispatched = self.dispatcher.submit(actor, &order).await?;
        debug!(order_id = %order.id, kind = %order.kind, database = %order.target(), "order submitted");
        match dispatched {
            Some(order) => Ok(order),
            None => Ok(self.store.get_order(&order.id).await?.unwrap_or(order)),
        }
    }
}

/// Records a new order with its audit event (see [`insert_orders`]).
async fn insert_order(
    tx: &mut WriteTx,
    actor: &Actor,
    order: &OrderRecord,
) -> CoordinatorResult<()> {
    insert_orders(tx, &[(actor, order)]).await
}

/// Records new orders, in one statement, each with its audit event; break-glass orders get a
/// second event that stands out in the log, with the reason. The event holds the spec's
/// audit view: a migration's files by version and checksum, not their SQL.
async fn insert_orders(
    tx: &mut WriteTx,
    orders: &[(&Actor, &OrderRecord)],
) -> CoordinatorResult<()> {
    let mut events = Vec::with_capacity(orders.len());
    for (actor, order) in orders {
        let spec = order.spec()?.audit_view();
        events.push(NewAuditEvent::new(
            actor,
            "order.submitted",
            order.target(),
            json!({
                "order_id": order.id,
                "spec": spec,
                "reason": order.reason,
                "emergency": order.emergency,
                "skip_safety_backup": order.skip_safety_backup,
            }),
        ));
        if order.emergency {
            events.push(NewAuditEvent::new(
                actor,
                "order.emergency",
                order.target(),
                json!({
                    "order_id": order.id,
                    "reason": order.reason,
                    "skip_safety_backup": order.skip_safety_backup,
                }),
            ));
        }
    }
    let records: Vec<&OrderRecord> = orders.iter().map(|(_, order)| *order).collect();
    Store::insert_orders(tx, &records).await?;
    for event in events {
        Store::append_audit(tx, event);
    }
    Ok(())
}

/// Moves an order to `next` and audits it, refusing transitions the state machine forbids.
/// When a migration of a rollout ends, the rollout moves on in the same transaction: its
/// next wave is ordered, or it halts. Returns the ids of other orders that changed state in
/// turn (a halted rollout cancels its orders that have not started), whose copies the caller
/// may hold stale.
async fn transition(
    tx: &mut WriteTx,
    order: &mut OrderRecord,
    next: OrderState,
    actor: &Actor,
    params: serde_json::Value,
) -> CoordinatorResult<Vec<String>> {
    if !change_state(tx, order, next, actor, params).await? {
        return Ok(Vec::new());
    }
    if next.is_final() && order.kind == OrderKind::Migrate {
        return rollout::order_ended(tx, order).await;
    }
    Ok(Vec::new())
}

/// [`transition`] without its consequences: moves the order, audits it, and returns whether
/// the state machine allowed it.
async fn change_state(
    tx: &mut WriteTx,
    order: &mut OrderRecord,
    next: OrderState,
    actor: &Actor,
    params: serde_json::Value,
) -> CoordinatorResult<bool> {
    if !move_state(tx, order, next, actor, params) {
        return Ok(false);
    }
    Store::save_order(tx, order).await?;
    Ok(true)
}

/// [`change_state`] without saving the order: the caller saves it before anything in `tx`
/// reads it (a dispatch pass saves the orders it dispatched together).
fn move_state(
    tx: &mut WriteTx,
    order: &mut OrderRecord,
    next: OrderState,
    actor: &Actor,
    mut params: serde_json::Value,
) -> bool {
    if !order.state.can_become(next) {
        warn!(order_id = %order.id, from = %order.state, to = %next, "refused order transition");
        return false;
    }
    let from = order.state;
    order.state = next;
    order.updated_unix_ms = warden_shared::now_unix_ms();
    if let Some(map) = params.as_object_mut() {
        map.insert("order_id".to_owned(), json!(order.id));
        map.insert("kind".to_owned(), json!(order.kind.as_str()));
        map.insert("from".to_owned(), json!(from.as_str()));
        if !order.error.is_empty() {
            map.insert("error".to_owned(), json!(order.error));
        }
    }
    Store::append_audit(
        tx,
        NewAuditEvent::new(actor, &format!("order.{next}"), order.target(), params),
    );
    // The audit log records every change; the log has them for debugging.
    debug!(order_id = %order.id, from = %from, to = %next, "order state changed");
    true
}

async fn mark_lost(
    tx: &mut WriteTx,
    mut order: OrderRecord,
    why: &str,
) -> CoordinatorResult<Vec<String>> {
    order.error = why.to_owned();
    order.finished_unix_ms = warden_shared::now_unix_ms();
    let retry = order.kind.is_idempotent();
    transition(
        tx,
        &mut order,
        OrderState::Lost,
        &Actor::System,
        json!({ "will_retry": retry }),
    )
    .await
}

/// Loads an order if it belongs to `agent` (an agent cannot report on another's orders).
async fn owned_order(
    tx: &mut WriteTx,
    agent: &str,
    order_id: &str,
) -> CoordinatorResult<Option<OrderRecord>> {
    Ok(Store::order_for_update(tx, order_id)
        .await?
        .filter(|order| order.agent == agent))
}

/// Returns whether the order must run alone on its database among backups, restores and
/// migrations. A migration that only reads its status is not exclusive; nor is a migration
/// whose spec no longer reads, which fails before it could run.
fn is_exclusive(order: &OrderRecord) -> bool {
    match order.kind {
        OrderKind::Backup | OrderKind::Restore => true,
        OrderKind::Migrate => !matches!(
            order.spec(),
            Ok(OrderSpec::Migrate {
                status_only: true,
                ..
            }) | Err(_)
        ),
        OrderKind::Health | OrderKind::Prune | OrderKind::Drill => false,
    }
}

fn assignment(order: &OrderRecord) -> CoordinatorResult<CoordinatorMessage> {
    let spec = order.spec()?;
    Ok(CoordinatorMessage {
        msg: Some(coordinator_message::Msg::Order(v1::OrderAssignment {
            order_id: order.id.clone(),
            database: order.database.clone(),
            attempt: u32::try_from(order.attempts).unwrap_or(u32::MAX),
            spec: Some(v1::OrderSpec::from(&spec)),
            not_after_unix_ms: order.deadline_unix_ms,
        })),
    })
}

fn ack(order_id: String) -> CoordinatorMessage {
    CoordinatorMessage {
        msg: Some(coordinator_message::Msg::Ack(v1::ResultAck { order_id })),
    }
}

fn parse_uuid(id: &str, what: &str) -> CoordinatorResult<()> {
    Uuid::parse_str(id).map(drop).map_err(|_| {
        CoordinatorError::InvalidArgument(format!(
            "malformed {what} id {id:?}: expected a UUID such as 0193a5b2-7c1e-7000-8000-000000000000"
        ))
    })
}

fn unknown_order(id: &str) -> CoordinatorError {
    CoordinatorError::NotFound(format!(
        "unknown order {id}; `warden orders` lists recent ones"
    ))
}

/// The migration commands each database allows, by name (their command lines stay out of
/// the audit log).
fn command_names(inventory: &[InventoryDatabase]) -> BTreeMap<&str, Vec<&str>> {
    inventory
        .iter()
        .filter(|d| !d.migrate_commands.is_empty())
        .map(|d| {
            let names = d.migrate_commands.iter().map(|c| c.name.as_str()).collect();
            (d.name.as_str(), names)
        })
        .collect()
}

fn labels_json(labels: &HashMap<String, String>) -> String {
    let sorted: BTreeMap<&String, &String> = labels.iter().collect();
    serde_json::to_string(&sorted).unwrap_or_else(|_| "{}".to_owned())
}

/// How much of a refused call's target the audit log keeps.
const MAX_REFUSED_TARGET: usize = 128;

fn millis(duration: Duration) -> u64 {
    u64::try_from(duration.as_millis()).unwrap_or(u64::MAX)
}

pub(crate) fn millis_i64(duration: Duration) -> i64 {
    i64::try_from(duration.as_millis()).unwrap_or(i64::MAX)
}

pub(crate) fn format_unix_ms(unix_ms: i64) -> String {
    chrono::DateTime::from_timestamp_millis(unix_ms)
        .map(|t| t.to_rfc3339_opts(chrono::SecondsFormat::Secs, true))
        .unwrap_or_else(|| "never".to_owned())
}
