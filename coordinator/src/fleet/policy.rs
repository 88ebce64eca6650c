//! Policy at work: the versioned policy document, windows as operators see them, the
//! scheduler that fires backups, and retention that expires and removes artifacts.

use std::collections::{BTreeMap, HashMap, HashSet};
use std::sync::Arc;

use chrono::{DateTime, TimeDelta, Utc};
use serde_json::json;
use sha2::{Digest, Sha256};
use sqlx::SqliteConnection;
use tracing::{info, warn};
use warden_proto::v1;
use warden_shared::{DatabaseId, Labels, OrderSpec, OrderState, PruneTarget};

use super::{Fleet, format_unix_ms, insert_order, insert_orders};
use crate::audit::{Actor, NewAuditEvent};
use crate::error::{CoordinatorError, CoordinatorResult};
use crate::policy::{
    Change, ChangeOp, FleetPolicy, Opening, PolicyError, ScheduleAction, Verdict, Window,
    WindowKind, retention,
};
use crate::store::{ArtifactRecord, OrderRecord, Store, WriteTx};

/// The policy in force and its version (0: none was ever applied).
#[derive(Debug, Default)]
pub struct PolicyState {
    pub version: i64,
    pub policy: FleetPolicy,
}

/// A window as `warden windows` shows it.
#[derive(Debug, Clone)]
pub struct WindowStatus {
    pub window: Window,
    /// The span open now.
    pub open: Option<Opening>,
    /// The next span that starts after now.
    pub next: Option<Opening>,
}

/// What retention says of one artifact.
#[derive(Debug, Clone)]
pub struct PruneRow {
    pub artifact_id: String,
    pub database: String,
    pub created_unix_ms: i64,
    pub size_bytes: i64,
    pub prune: bool,
    pub why: String,
}

#[derive(Debug, Clone, Default)]
pub struct PruneOutcome {
    pub rows: Vec<PruneRow>,
    /// Orders queued to remove expired artifacts' files.
    pub order_ids: Vec<String>,
}

/// The result of applying a policy document.
#[derive(Debug, Clone)]
pub struct Applied {
    pub changes: Vec<Change>,
    pub version: i64,
    pub applied: bool,
}

/// Spans are searched this far ahead for the next opening.
const HORIZON_DAYS: i64 = 400;

impl Fleet {
    pub fn policy(&self) -> Arc<PolicyState> {
        self.policy
            .read()
            .unwrap_or_else(std::sync::PoisonError::into_inner)
            .clone()
    }

    /// Loads the newest stored policy. One that no longer validates stops the start: running
    /// without its windows would let destructive work through.
    pub(super) async fn load_policy(&self) -> CoordinatorResult<()> {
        let Some((version, text)) = self.store.current_policy().await? else {
            return Ok(());
        };
        let policy = FleetPolicy::parse(&text).map_err(|e| {
            CoordinatorError::FailedPrecondition(format!(
                "stored policy version {version} does not validate ({e}); fix it with `warden apply`"
            ))
        })?;
        self.set_policy(PolicyState { version, policy });
        Ok(())
    }

    fn set_policy(&self, state: PolicyState) {
        *self
            .policy
            .write()
            .unwrap_or_else(std::sync::PoisonError::into_inner) = Arc::new(state);
    }

    /// Validates a whole policy document and, unless `dry_run`, makes it the policy in force.
    pub async fn apply_policy(
        &self,
        actor: &Actor,
        text: &str,
        dry_run: bool,
    ) -> CoordinatorResult<Applied> {
        let next = FleetPolicy::parse(text).map_err(invalid_policy)?;
        self.install_policy(actor, dry_run, "policy.applied", |_| Ok(next))
            .await
    }

    /// The policy in force as a document, and its version.
    pub fn export_policy(&self) -> (i64, String) {
        let state = self.policy();
        (state.version, state.policy.to_toml())
    }

    /// Adds (or with `replace`, replaces) one window, given as the fields of a `[[window]]`
    /// table of the policy document.
    pub async fn add_window(
        &self,
        actor: &Actor,
        fields: toml::Table,
        replace: bool,
    ) -> CoordinatorResult<Applied> {
        let name = fields
            .get("name")
            .and_then(toml::Value::as_str)
            .unwrap_or_default()
            .to_owned();
        self.install_policy(actor, false, "window.added", |current| {
            if !replace && current.windows.iter().any(|w| w.name == name) {
                return Err(CoordinatorError::FailedPrecondition(format!(
                    "window {name:?} exists; pass --replace to replace it, or `warden window rm {name}` first"
                )));
            }
            let mut document: toml::Table = toml::from_str(&current.to_toml()).map_err(|e| {
                CoordinatorError::FailedPrecondition(format!(
                    "the policy in force does not print: {e}"
                ))
            })?;
            let windows = document
                .entry("window")
                .or_insert_with(|| toml::Value::Array(Vec::new()));
            if let toml::Value::Array(windows) = windows {
                windows.retain(|w| {
                    w.get("name").and_then(toml::Value::as_str) != Some(name.as_str())
                });
                windows.push(toml::Value::Table(fields));
            }
            let text = toml::to_string(&document).map_err(|e| {
                CoordinatorError::InvalidArgument(format!("the window does not print as TOML: {e}"))
            })?;
            FleetPolicy::parse(&text).map_err(invalid_policy)
        })
        .await
    }

    pub async fn remove_window(&self, actor: &Actor, name: &str) -> CoordinatorResult<Applied> {
        self.install_policy(actor, false, "window.removed", |current| {
            let mut next = current.clone();
            next.windows.retain(|w| w.name != name);
            if next.windows.len() == current.windows.len() {
                return Err(CoordinatorError::NotFound(format!(
                    "no window named {name:?}; `warden windows` lists them"
                )));
            }
            Ok(next)
        })
        .await
    }

    /// Builds the next policy from the one in force and, unless `dry_run`, stores it as a new
    /// version (with its audit event) and puts it in force. Building happens under the lock,
    /// so two operators editing windows at once cannot undo each other's edit.
    async fn install_policy(
        &self,
        actor: &Actor,
        dry_run: bool,
        action: &str,
        build: impl FnOnce(&FleetPolicy) -> CoordinatorResult<FleetPolicy>,
    ) -> CoordinatorResult<Applied> {
        // Installs are serialized with dispatch passes so no pass mixes two policies.
        let _pass = self.dispatch_lock.lock().await;
        let current = self.policy();
        let next = build(&current.policy)?;
        let changes = current.policy.diff(&next);
        if dry_run || changes.is_empty() {
            return Ok(Applied {
                changes,
                version: current.version,
                applied: false,
            });
        }
        let text = next.to_toml();
        let mut tx = self.store.begin().await?;
        let version = Store::insert_policy(&mut tx, &actor.to_string(), &text).await?;
        let now = Utc::now().timestamp_millis();
        for change in changes.iter().filter(|c| c.what == "schedule") {
            match change.op {
                // A new schedule counts from now: it does not fire for slots before it existed.
                ChangeOp::Added => Store::set_schedule_slot(&mut tx, &change.name, now).await?,
                ChangeOp::Removed => Store::remove_schedule_state(&mut tx, &change.name).await?,
                ChangeOp::Changed => {}
            }
        }
        Store::append_audit(
            &mut tx,
            NewAuditEvent::new(
                actor,
                action,
                "policy",
                json!({
                    "version": version,
                    "sha256": hex::encode(Sha256::digest(text.as_bytes())),
                    "changes": changes.iter().map(describe_change).collect::<Vec<_>>(),
                }),
            ),
        );
        tx.commit().await?;
        info!(version, changes = changes.len(), "policy applied");
        self.set_policy(PolicyState {
            version,
            policy: next,
        });
        Ok(Applied {
            changes,
            version,
            applied: true,
        })
    }

    /// Every window with the span open now and the next one.
    pub fn list_windows(&self, now: DateTime<Utc>) -> Vec<WindowStatus> {
        self.policy()
            .policy
            .windows
            .iter()
            .map(|window| {
                let open = window
                    .intervals(now, now + TimeDelta::milliseconds(1))
                    .into_iter()
                    .find(|s| s.start <= now && now < s.end);
                let next = next_span(window, now);
                WindowStatus {
                    window: window.clone(),
                    open,
                    next,
                }
            })
            .collect()
    }

    /// When destructive work may start on `database`, and which window allows it.
    pub async fn next_window(
        &self,
        database: &str,
        now: DateTime<Utc>,
    ) -> CoordinatorResult<(DatabaseId, Labels, Verdict)> {
        let id = self.known_database(database).await?;
        let labels = self.labels_of(&id).await?;
        let verdict = crate::policy::window::evaluate(&self.policy().policy.windows, &labels, now);
        Ok((id, labels, verdict))
    }

    /// Refuses a destructive order (`--no-wait`) when no window lets it start now.
    pub(super) async fn refuse_outside_window(&self, target: &DatabaseId) -> CoordinatorResult<()> {
        let labels = self.labels_of(target).await?;
        match self.closed_now(&labels) {
            None => Ok(()),
            Some(why) => Err(CoordinatorError::FailedPrecondition(format!(
                "{target}: {why}; nothing was queued (--no-wait). Use --emergency --reason \"...\" to break glass"
            ))),
        }
    }

    /// Why destructive work cannot start now on a database with `labels`; `None` when a
    /// maintenance window lets it.
    pub(super) fn closed_now(&self, labels: &Labels) -> Option<String> {
        let verdict =
            crate::policy::window::evaluate(&self.policy().policy.windows, labels, Utc::now());
        verdict.open.is_none().then(|| window_refusal(&verdict))
    }

    pub(super) async fn labels_of(&self, id: &DatabaseId) -> CoordinatorResult<Labels> {
        let mut tx = self.store.begin().await?;
        let labels = database_labels(&mut tx).await?;
        tx.commit().await?;
        Ok(labels
            .get(&(id.agent.clone(), id.database.clone()))
            .cloned()
            .unwrap_or_default())
    }

    /// Fires every schedule with a slot due at `now`: one backup order per selected database,
    /// delayed by its jitter. A slot missed while the coordinator was down fires once; a
    /// database whose previous scheduled backup has not ended is skipped (audited).
    pub async fn fire_schedules(&self, now: DateTime<Utc>) -> CoordinatorResult<()> {
        let state = self.policy();
        if state.policy.schedules.is_empty() {
            return Ok(());
        }
        let mut tx = self.store.begin().await?;
        let slots = Store::schedule_slots(&mut tx).await?;
        let mut fired = false;
        let mut busy: Option<HashSet<(&str, String, String)>> = None;
        let mut databases = None;
        for schedule in &state.policy.schedules {
            let Some(since) = slots
                .get(&schedule.name)
                .and_then(|ms| DateTime::from_timestamp_millis(*ms))
            else {
                // Not seen before (e.g. applied by an older version): count from now.
                Store::set_schedule_slot(&mut tx, &schedule.name, now.timestamp_millis()).await?;
                continue;
            };
            let Some(slot) = schedule.due(since, now) else {
                continue;
            };
            if databases.is_none() {
                databases = Some(database_labels(&mut tx).await?);
            }
            if busy.is_none() {
                busy = Some(scheduled_orders_in_flight(&mut tx).await?);
            }
            let (Some(databases), Some(busy)) = (&databases, &mut busy) else {
                continue;
            };
            let mut orders = Vec::new();
            let mut created = Vec::new();
            let mut skipped = Vec::new();
            for ((agent, database), labels) in databases {
                if !labels_present(labels) || !schedule.selector.matches(labels) {
                    continue;
                }
                let target = format!("{agent}/{database}");
                let action = schedule.action.as_str();
                if !busy.insert((action, agent.clone(), database.clone())) {
                    skipped.push(json!({
                        "database": target,
                        "why": format!("its previous scheduled {action} has not ended"),
                    }));
                    continue;
                }
                let spec = match schedule.action {
                    ScheduleAction::Backup => OrderSpec::Backup {
                        trigger: format!("schedule:{}", schedule.name),
                        verify: false,
                    },
                    ScheduleAction::Drill => {
                        match Store::newest_complete_artifact(&mut tx, agent, database).await? {
                            Some(artifact) => self.drill_spec(&artifact, labels),
                            None => {
                                skipped.push(json!({
                                    "database": target,
                                    "why": "it has no complete backup to drill",
                                }));
                                continue;
                            }
                        }
                    }
                };
                let mut order = OrderRecord::new(
                    agent,
                    database,
                    &spec,
                    &Actor::Scheduler.to_string(),
                    &format!("schedule {} slot {}", schedule.name, slot.to_rfc3339()),
                );
                let jitter = schedule.jitter_for(&target, slot);
                order.not_before_unix_ms =
                    (slot + TimeDelta::from_std(jitter).unwrap_or_default()).timestamp_millis();
                orders.push(json!({ "database": target, "order_id": order.id }));
                created.push(order);
            }
            let created: Vec<(&Actor, &OrderRecord)> = created
                .iter()
                .map(|order| (&Actor::Scheduler, order))
                .collect();
            insert_orders(&mut tx, &created).await?;
            Store::set_schedule_slot(&mut tx, &schedule.name, slot.timestamp_millis()).await?;
            Store::append_audit(
                &mut tx,
                NewAuditEvent::new(
                    &Actor::Scheduler,
                    "schedule.fired",
                    &schedule.name,
                    json!({ "slot": slot.to_rfc3339(), "orders": orders, "skipped": skipped }),
                ),
            );
            info!(schedule = %schedule.name, slot = %slot, orders = orders.len(), skipped = skipped.len(), "schedule fired");
            fired = true;
        }
        tx.commit().await?;
        if fired {
            self.dispatch().await?;
        }
        Ok(())
    }

    /// Applies retention: decides for every complete artifact whether policy keeps it, and
    /// unless `dry_run` expires the others (audited) and queues prune orders that remove their
    /// files. The newest complete backup of a database, and artifacts a pending restore
    /// reads, are always kept.
    pub async fn prune(
        &self,
        actor: &Actor,
        only: Option<DatabaseId>,
        dry_run: bool,
    ) -> CoordinatorResult<PruneOutcome> {
        let state = self.policy();
        let now = Utc::now();
        let mut tx = self.store.begin().await?;
        let labels = database_labels(&mut tx).await?;
        let pinned = artifacts_of_pending_restores(&mut tx).await?;
        let mut by_database: BTreeMap<(String, String), Vec<ArtifactRecord>> = BTreeMap::new();
        for artifact in Store::complete_artifacts(&mut tx).await? {
            by_database
                .entry((artifact.agent.clone(), artifact.database.clone()))
                .or_default()
                .push(artifact);
        }
        let mut outcome = PruneOutcome::default();
        for (key, artifacts) in by_database {
            let target = format!("{}/{}", key.0, key.1);
            if only
                .as_ref()
                .is_some_and(|id| (id.agent.as_str(), id.database.as_str()) != (&key.0, &key.1))
            {
                continue;
            }
            let db_labels = labels.get(&key).cloned().unwrap_or_default();
            let policies = retention_for(&state.policy, &db_labels);
            let candidates: Vec<retention::Candidate> = artifacts
                .iter()
                .map(|a| retention::Candidate {
                    id: a.id.clone(),
                    created: DateTime::from_timestamp_millis(a.created_unix_ms).unwrap_or(now),
                })
                .collect();
            let decisions = retention::plan(&policies, &candidates, now);
            for (artifact, decision) in artifacts.iter().zip(decisions) {
                let (prune, why) = if decision.prune && pinned.contains(&artifact.id) {
                    (
                        false,
                        "a pending restore, drill or migration reads it".to_owned(),
                    )
                } else {
                    (decision.prune, decision.why)
                };
                if prune && !dry_run {
                    Store::expire_artifact(&mut tx, &artifact.id, now.timestamp_millis(), &why)
                        .await?;
                    Store::append_audit(
                        &mut tx,
                        NewAuditEvent::new(
                            actor,
                            "artifact.expired",
                            &target,
                            json!({
                                "artifact_id": artifact.id,
                                "created": format_unix_ms(artifact.created_unix_ms),
                                "why": why,
                            }),
                        ),
                    );
                }
                outcome.rows.push(PruneRow {
                    artifact_id: artifact.id.clone(),
                    database: target.clone(),
                    created_unix_ms: artifact.created_unix_ms,
                    size_bytes: artifact.size_bytes,
                    prune,
                    why,
                });
            }
        }
        if !dry_run {
            outcome.order_ids = queue_file_removal(&mut tx, actor).await?;
        }
        tx.commit().await?;
        if !outcome.order_ids.is_empty() {
            self.dispatch().await?;
        }
        Ok(outcome)
    }
}

/// Queues one prune order per database for expired artifacts whose files no order removes.
async fn queue_file_removal(tx: &mut WriteTx, actor: &Actor) -> CoordinatorResult<Vec<String>> {
    let mut groups: BTreeMap<(String, String), Vec<ArtifactRecord>> = BTreeMap::new();
    for artifact in Store::expired_artifacts_to_remove(tx).await? {
        groups
            .entry((artifact.agent.clone(), artifact.database.clone()))
            .or_default()
            .push(artifact);
    }
    let mut order_ids = Vec::new();
    for ((agent, database), artifacts) in groups {
        let spec = OrderSpec::Prune {
            artifacts: artifacts
                .iter()
                .map(|a| PruneTarget {
                    artifact_id: a.id.clone(),
                    artifact_path: a.path.clone(),
                })
                .collect(),
        };
        let order = OrderRecord::new(
            &agent,
            &database,
            &spec,
            &actor.to_string(),
            "remove the files of expired artifacts",
        );
        insert_order(tx, actor, &order).await?;
        for artifact in &artifacts {
            Store::set_prune_order(tx, &artifact.id, &order.id).await?;
        }
        order_ids.push(order.id);
    }
    Ok(order_ids)
}

/// Marks the artifacts a prune order removed as deleted, audited. Returns their ids.
pub(super) async fn record_removed_artifacts(
    tx: &mut WriteTx,
    order: &OrderRecord,
    pruned: &v1::PruneOutcome,
) -> CoordinatorResult<Vec<String>> {
    let mut removed = Vec::new();
    let Ok(OrderSpec::Prune { artifacts }) = order.spec() else {
        warn!(order_id = %order.id, "a prune outcome for an order that is not a prune");
        return Ok(removed);
    };
    let ordered: HashSet<&str> = artifacts.iter().map(|a| a.artifact_id.as_str()).collect();
    for id in &pruned.removed_artifact_ids {
        if ordered.contains(id.as_str()) && Store::mark_artifact_deleted(tx, id).await? {
            Store::append_audit(
                tx,
                NewAuditEvent::new(
                    &Actor::Agent(order.agent.clone()),
                    "artifact.deleted",
                    order.target(),
                    json!({ "artifact_id": id, "order_id": order.id }),
                ),
            );
            removed.push(id.clone());
        }
    }
    Ok(removed)
}

/// Labels of every database the fleet has known: its agent's labels, overridden by its own,
/// plus `agent` and `database` unless set. Databases no longer reported carry `present=false`
/// under the reserved key `warden.present`, so schedules skip them.
pub(super) async fn database_labels(
    conn: &mut SqliteConnection,
) -> CoordinatorResult<HashMap<(String, String), Labels>> {
    Ok(labels_by_database(Store::database_labels(conn).await?))
}

/// [`database_labels`] of the given `(agent, database)` pairs only (those the fleet knows).
pub(super) async fn labels_of_databases(
    conn: &mut SqliteConnection,
    databases: &[(String, String)],
) -> CoordinatorResult<HashMap<(String, String), Labels>> {
    Ok(labels_by_database(
        Store::database_labels_of(conn, databases).await?,
    ))
}

fn labels_by_database(
    rows: Vec<(String, String, String, String, bool)>,
) -> HashMap<(String, String), Labels> {
    let mut out = HashMap::new();
    for (agent, database, agent_labels, own_labels, present) in rows {
        let mut labels: Labels = serde_json::from_str(&agent_labels).unwrap_or_default();
        let own: Labels = serde_json::from_str(&own_labels).unwrap_or_default();
        labels.extend(own);
        labels
            .entry("agent".to_owned())
            .or_insert_with(|| agent.clone());
        labels
            .entry("database".to_owned())
            .or_insert_with(|| database.clone());
        if !present {
            labels.insert(ABSENT_KEY.to_owned(), "true".to_owned());
        }
        out.insert((agent, database), labels);
    }
    out
}

pub(super) const ABSENT_KEY: &str = "warden.absent";

pub(super) fn labels_present(labels: &Labels) -> bool {
    !labels.contains_key(ABSENT_KEY)
}

/// Why destructive work cannot start now, and when it can.
pub(super) fn window_refusal(verdict: &Verdict) -> String {
    let next = match &verdict.next {
        Some(next) => format!(
            "next opening {} (window {})",
            next.start.to_rfc3339(),
            next.window
        ),
        None => {
            "no maintenance window opens within a year; add one with `warden window add`".to_owned()
        }
    };
    match &verdict.freeze {
        Some(freeze) => format!(
            "frozen by window {} until {}; {next}",
            freeze.window,
            freeze.end.to_rfc3339()
        ),
        None => format!("outside maintenance windows; {next}"),
    }
}

/// The retention policies that apply to a database: rules and schedules that select it.
fn retention_for<'a>(policy: &'a FleetPolicy, labels: &Labels) -> Vec<&'a retention::Retention> {
    let rules = policy
        .retention
        .iter()
        .filter(|r| r.selector.matches(labels))
        .map(|r| &r.retention);
    let schedules = policy
        .schedules
        .iter()
        .filter(|s| s.selector.matches(labels))
        .filter_map(|s| s.retention.as_ref());
    rules.chain(schedules).collect()
}

/// The next span of a window that starts after `now`, searched in growing steps.
fn next_span(window: &Window, now: DateTime<Utc>) -> Option<Opening> {
    [2, 31, HORIZON_DAYS].into_iter().find_map(|days| {
        window
            .intervals(now, now + TimeDelta::days(days))
            .into_iter()
            .find(|s| s.start > now)
    })
}

/// Orders not ended yet (and not lost), with their specs.
async fn unfinished_orders(tx: &mut WriteTx) -> CoordinatorResult<Vec<(OrderRecord, OrderSpec)>> {
    let orders = Store::orders_in_states(
        tx,
        &[
            OrderState::Queued,
            OrderState::Held,
            OrderState::Dispatched,
            OrderState::Running,
        ],
    )
    .await?;
    Ok(orders
        .into_iter()
        .filter_map(|o| o.spec().ok().map(|spec| (o, spec)))
        .collect())
}

/// (agent, database) of scheduled backups that have not ended.
/// (action, agent, database) of every scheduled backup or drill not ended yet.
async fn scheduled_orders_in_flight(
    tx: &mut WriteTx,
) -> CoordinatorResult<HashSet<(&'static str, String, String)>> {
    let scheduler = Actor::Scheduler.to_string();
    Ok(unfinished_orders(tx)
        .await?
        .into_iter()
        .filter(|(order, _)| order.requested_by == scheduler)
        .filter_map(|(order, spec)| {
            let action = match spec {
                OrderSpec::Backup { .. } => ScheduleAction::Backup,
                OrderSpec::Drill { .. } => ScheduleAction::Drill,
                _ => return None,
            };
            Some((action.as_str(), order.agent, order.database))
        })
        .collect())
}

/// Artifacts that restores or drills not yet ended will read, and the pre-migration backups
/// of migrations not yet ended (restored when their post-checks fail).
async fn artifacts_of_pending_restores(tx: &mut WriteTx) -> CoordinatorResult<HashSet<String>> {
    Ok(unfinished_orders(tx)
        .await?
        .into_iter()
        .filter_map(|(_, spec)| match spec {
            OrderSpec::Restore { artifact_id, .. } | OrderSpec::Drill { artifact_id, .. } => {
                Some(artifact_id)
            }
            OrderSpec::Migrate {
                pre_migration: Some(artifact),
                ..
            } => Some(artifact.artifact_id),
            _ => None,
        })
        .collect())
}

fn invalid_policy(error: PolicyError) -> CoordinatorError {
    CoordinatorError::InvalidArgument(format!("{error}; nothing was applied"))
}

fn describe_change(change: &Change) -> String {
    let op = match change.op {
        ChangeOp::Added => "+",
        ChangeOp::Changed => "~",
        ChangeOp::Removed => "-",
    };
    if change.detail.is_empty() {
        format!("{op} {} {}", change.what, change.name)
    } else {
        format!("{op} {} {}: {}", change.what, change.name, change.detail)
    }
}

/// `maintenance` or `freeze`.
pub fn kind_name(kind: WindowKind) -> &'static str {
    match kind {
        WindowKind::Maintenance => "maintenance",
        WindowKind::Freeze => "freeze",
    }
}
