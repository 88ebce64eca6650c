//! The dispatcher: one pass over every order waiting in the fleet, oldest first, deciding
//! for each whether it starts now or waits in `held`, and why.
//!
//! An order waits while any of these holds, checked in this order:
//! 1. a scheduled run's jitter has not passed;
//! 2. it is destructive (restore --replace, a migration that applies) and no maintenance
//!    window is open for its database, or a freeze covers it (unless it is an emergency); any
//!    other order but a backup, a health check or a migration's status waits out a freeze.
//!    Once a window opened for a destructive order it has until that window closes to start;
//!    after that it expires, never late;
//! 3. it is destructive and its safety backup has not succeeded yet (it is taken first; a
//!    migration's is its pre-migration backup, which the migration then carries). A safety
//!    backup must show the database as the order will change it: one is not taken while
//!    another destructive order of the database runs, and one that started before another
//!    destructive order of the database ran (or runs now) is discarded and taken again, as is
//!    a pre-migration backup whose artifact is no longer complete;
//! 4. its agent is offline;
//! 5. another backup, restore or migration holds its database (for a drill: another drill
//!    of it);
//! 6. its agent runs `limits.per_agent` orders already;
//! 7. it is a backup and the fleet runs `limits.fleet_backups` backups already.

use std::collections::{HashMap, HashSet};

use chrono::{DateTime, Utc};
use serde_json::json;
use warden_proto::v1::CoordinatorMessage;
use warden_shared::{ArtifactPointer, Labels, OrderKind, OrderSpec, OrderState};

use super::policy::{labels_of_databases, window_refusal};
use super::{
    Fleet, assignment, change_state, format_unix_ms, insert_order, is_exclusive, move_state,
    transition,
};
use crate::audit::{Actor, NewAuditEvent};
use crate::error::{CoordinatorError, CoordinatorResult};
use crate::policy::{self, Limits};
use crate::store::{OrderRecord, RolloutState, Store, StoreError, WriteTx};

/// Saves the orders a pass dispatched so far, in one statement.
async fn save_dispatched(
    tx: &mut WriteTx,
    unsaved: &mut Vec<OrderRecord>,
) -> CoordinatorResult<()> {
    let orders: Vec<&OrderRecord> = unsaved.iter().collect();
    Store::save_orders(tx, &orders).await?;
    unsaved.clear();
    Ok(())
}

/// What a pass decided for one order.
enum Decision {
    Dispatch,
    Hold {
        reason: String,
        until_unix_ms: i64,
    },
    Expire(String),
    Fail(String),
    /// Left as it is (an offline agent's order keeps its state and reason).
    Skip,
}

/// An order a pass dispatched, to send once the pass committed.
struct Outgoing {
    order_id: String,
    agent: String,
    /// The rollout it belongs to, if any.
    rollout_id: Option<String>,
    message: CoordinatorMessage,
}

/// What a pass decided that takes effect once its transaction commits.
#[derive(Default)]
pub(super) struct Pass {
    /// Whether it created orders (safety backups), which the next pass dispatches.
    created: bool,
    assignments: Vec<Outgoing>,
    /// Orders it failed, to alert on.
    failed: Vec<OrderRecord>,
    /// The pass's copy of each fresh order it changed, as it stored them (an order missing
    /// here, say one whose transition was refused, is read from the store); empty when the
    /// pass changed some order twice (a halted rollout).
    pub(super) fresh: Vec<OrderRecord>,
}

/// Counts of what runs now, updated as the pass dispatches.
#[derive(Default)]
struct Running {
    per_agent: HashMap<String, u32>,
    backups: u32,
    /// (agent, database) -> the backup, restore or migration that holds it.
    exclusive: HashMap<(String, String), String>,
    /// (agent, database) -> the drill running for it: one at a time, or two drills of the
    /// same artifact would restore into the same scratch database.
    drills: HashMap<(String, String), String>,
}

impl Running {
    /// What runs now that limits the `waiting` orders: the orders of their agents, and the
    /// fleet's backups. A pass reads no more than that: a fleet runs far more orders than
    /// one pass has waiting.
    async fn of_agents_waiting(
        tx: &mut WriteTx,
        waiting: &[OrderRecord],
    ) -> CoordinatorResult<Self> {
        let agents: HashSet<&str> = waiting.iter().map(|o| o.agent.as_str()).collect();
        let agents: Vec<&str> = agents.into_iter().collect();
        let mut running = Self::default();
        for order in Store::running_orders_of_agents(tx, &agents).await? {
            running.add(&order);
        }
        running.backups = u32::try_from(Store::running_backups(tx).await?).unwrap_or(u32::MAX);
        Ok(running)
    }

    fn add(&mut self, order: &OrderRecord) {
        *self.per_agent.entry(order.agent.clone()).or_default() += 1;
        if order.kind == OrderKind::Backup {
            self.backups += 1;
        }
        let key = (order.agent.clone(), order.database.clone());
        if is_exclusive(order) {
            self.exclusive.insert(key, order.id.clone());
        } else if order.kind == OrderKind::Drill {
            self.drills.insert(key, order.id.clone());
        }
    }
}

impl Fleet {
    /// Returns once the dispatcher ran a pass that started after this call (see
    /// [`super::dispatcher`]): every order the caller queued or freed a slot for before the
    /// call has been looked at. A failing pass is logged there and its orders wait for the
    /// policy tick's pass; the caller's committed work stands, so that is no error here. Only
    /// a dispatcher that stopped (the store is closing) or a round that panicked is.
    pub async fn dispatch(&self) -> CoordinatorResult<()> {
        self.dispatcher.dispatch().await
    }

    /// One pass in a transaction of its own; returns whether it created orders.
    pub(super) async fn dispatch_pass(&self, now: DateTime<Utc>) -> CoordinatorResult<bool> {
        let mut tx = self.store.begin().await?;
        let pass = self.pass_in(&mut tx, now, &[]).await?;
        tx.commit().await?;
        Ok(self.deliver(pass).0)
    }

    /// Sends what a pass dispatched, once its transaction committed, and alerts on the
    /// orders it failed; returns whether it created orders.
    pub(super) fn deliver(&self, pass: Pass) -> (bool, Vec<OrderRecord>) {
        for order in &pass.failed {
            self.alert_if_failed(order);
        }
        for outgoing in pass.assignments {
            // If the session vanished meanwhile, the reaper or the next Hello reconciles.
            self.registry.send(&outgoing.agent, outgoing.message);
        }
        (pass.created, pass.fresh)
    }

    /// One pass inside `tx`; what it decided takes effect once `tx` commits and the pass is
    /// delivered. `fresh` are orders inserted in `tx` just before: the pass takes them as
    /// they are instead of reading them back, and returns its copy of each (see
    /// [`Pass::fresh`]).
    pub(super) async fn pass_in(
        &self,
        tx: &mut WriteTx,
        now: DateTime<Utc>,
        fresh: &[&OrderRecord],
    ) -> CoordinatorResult<Pass> {
        let policy = self.policy();
        let limits = policy.policy.limits;
        let fresh_ids: HashSet<&str> = fresh.iter().map(|o| o.id.as_str()).collect();
        let mut pending = Store::pending_orders_except(
            tx,
            i64::from(self.settings.max_attempts),
            &fresh_ids.iter().copied().collect::<Vec<_>>(),
        )
        .await?;
        pending.extend(
            fresh
                .iter()
                .filter(|o| matches!(o.state, OrderState::Queued | OrderState::Held))
                .map(|o| (*o).clone()),
        );
        if pending.is_empty() {
            return Ok(Pass::default());
        }
        // Oldest first, as the store orders them.
        pending.sort_by(|a, b| (a.created_unix_ms, &a.id).cmp(&(b.created_unix_ms, &b.id)));
        let mut running = Running::of_agents_waiting(tx, &pending).await?;
        // Safety backups first: a destructive order waits on them inside its window, so they
        // must not queue behind the fleet's scheduled backups (the sort is stable: oldest
        // first otherwise).
        pending.sort_by_key(|o| !is_safety_backup(o));
        // Labels choose the windows that apply, so a policy without windows needs none; else
        // those of the waiting orders' databases only: a fleet has far more databases than
        // orders waiting, and a pass runs after every submission and result.
        let labels = if policy.policy.windows.is_empty() {
            HashMap::new()
        } else {
            let targets: Vec<(String, String)> = pending
                .iter()
                .map(|o| (o.agent.clone(), o.database.clone()))
                .collect();
            labels_of_databases(tx, &targets).await?
        };
        let mut created = false;
        let mut assignments = Vec::new();
        let mut failed = Vec::new();
        // Orders this pass changed out of turn (a dropped safety backup): their copy in
        // `pending` is stale.
        let mut changed: HashSet<String> = HashSet::new();
        // Orders dispatched, saved together before anything in the pass reads orders.
        let mut unsaved: Vec<OrderRecord> = Vec::new();
        let mut fresh_copies = Vec::with_capacity(fresh.len());
        for mut order in pending {
            if changed.contains(&order.id) {
                continue;
            }
            let is_fresh = fresh_ids.contains(order.id.as_str());
            if !matches!(order.kind, OrderKind::Backup | OrderKind::Health) {
                // Deciding a destructive order, a drill or a prune may read other orders.
                save_dispatched(tx, &mut unsaved).await?;
            }
            let db_labels = labels
                .get(&(order.agent.clone(), order.database.clone()))
                .cloned()
                .unwrap_or_default();
            let decision = self
                .decide(
                    tx,
                    &mut order,
                    &db_labels,
                    &running,
                    limits,
                    now,
                    &mut created,
                )
                .await;
            let decision = match decision {
                // One order whose spec no longer parses (say, after a downgrade) fails alone
                // instead of stopping dispatch for the fleet.
                Err(CoordinatorError::Store(StoreError::Corrupt { why, .. })) => {
                    Decision::Fail(format!("its stored spec cannot be read: {why}"))
                }
                other => other?,
            };
            if matches!(decision, Decision::Expire(_) | Decision::Fail(_)) {
                // Ending an order may move its rollout on, which reads its orders.
                save_dispatched(tx, &mut unsaved).await?;
            }
            match decision {
                Decision::Skip => {
                    if is_fresh {
                        fresh_copies.push(order);
                    }
                }
                Decision::Dispatch => {
                    running.add(&order);
                    order.attempts += 1;
                    order.error.clear();
                    order.phase.clear();
                    order.held_until_unix_ms = 0;
                    let mut params = json!({ "attempt": order.attempts });
                    let mut rollout_id = None;
                    if let Ok(OrderSpec::Migrate {
                        pre_migration,
                        rollout_id: rollout,
                        ..
                    }) = order.spec()
                    {
                        if let Some(artifact) = pre_migration {
                            params["pre_migration_artifact_id"] = json!(artifact.artifact_id);
                        }
                        rollout_id = rollout;
                    }
                    // Dispatching ends nothing: no rollout moves on, so the save can wait.
                    if move_state(
                        tx,
                        &mut order,
                        OrderState::Dispatched,
                        &Actor::System,
                        params,
                    ) {
                        assignments.push(Outgoing {
                            order_id: order.id.clone(),
                            agent: order.agent.clone(),
                            rollout_id,
                            message: assignment(&order)?,
                        });
                    }
                    if order.state == OrderState::Dispatched {
                        if is_fresh {
                            fresh_copies.push(order.clone());
                        }
                        unsaved.push(order);
                    }
                }
                Decision::Hold {
                    reason,
                    until_unix_ms,
                } => {
                    hold(tx, &mut order, reason, until_unix_ms).await?;
                    if is_fresh {
                        fresh_copies.push(order);
                    }
                }
                Decision::Expire(why) => {
                    order.error = why;
                    order.finished_unix_ms = now.timestamp_millis();
                    // A rollout it halts cancels its other orders that have not started.
                    changed.extend(
                        transition(
                            tx,
                            &mut order,
                            OrderState::Expired,
                            &Actor::System,
                            json!({}),
                        )
                        .await?,
                    );
                    changed.extend(drop_safety_backup(tx, &order).await?);
                    // A refused transition changed only this copy.
                    if is_fresh && order.state == OrderState::Expired {
                        fresh_copies.push(order);
                    }
                }
                Decision::Fail(why) => {
                    order.error = why;
                    order.finished_unix_ms = now.timestamp_millis();
                    changed.extend(
                        transition(
                            tx,
                            &mut order,
                            OrderState::Failed,
                            &Actor::System,
                            json!({}),
                        )
                        .await?,
                    );
                    changed.extend(drop_safety_backup(tx, &order).await?);
                    if is_fresh && order.state == OrderState::Failed {
                        fresh_copies.push(order.clone());
                    }
                    failed.push(order);
                }
            }
        }
        save_dispatched(tx, &mut unsaved).await?;
        // An order that expired or failed late in the pass may have halted its rollout after
        // the pass dispatched other orders of it: those never leave.
        let dispatched = assignments.len();
        let assignments = withdraw_halted(tx, assignments, now.timestamp_millis()).await?;
        if assignments.len() < dispatched || !changed.is_empty() {
            // Orders changed after the pass decided them: the copies may be stale.
            fresh_copies.clear();
        }
        Ok(Pass {
            created,
            assignments,
            failed,
            fresh: fresh_copies,
        })
    }

    #[allow(clippy::too_many_arguments)]
    async fn decide(
        &self,
        tx: &mut WriteTx,
        order: &mut OrderRecord,
        labels: &Labels,
        running: &Running,
        limits: Limits,
        now: DateTime<Utc>,
        created: &mut bool,
    ) -> CoordinatorResult<Decision> {
        let now_ms = now.timestamp_millis();
        if order.deadline_unix_ms > 0 && now_ms >= order.deadline_unix_ms {
            return Ok(Decision::Expire(format!(
                "its maintenance window closed at {} before it could start; it was not started late. Submit it again for the next window",
                format_unix_ms(order.deadline_unix_ms)
            )));
        }
        if order.not_before_unix_ms > now_ms {
            return Ok(Decision::Hold {
                reason: format!(
                    "scheduled run waits for its jitter until {}",
                    format_unix_ms(order.not_before_unix_ms)
                ),
                until_unix_ms: order.not_before_unix_ms,
            });
        }
        let mut spec = order.spec()?;
        let destructive = spec.is_destructive();
        if !order.emergency && !runs_any_time(&spec) {
            let verdict = policy::window::evaluate(&self.policy().policy.windows, labels, now);
            if destructive {
                match verdict.open {
                    Some(open) => {
                        if order.deadline_unix_ms == 0 {
                            order.deadline_unix_ms = open.end.timestamp_millis();
                            Store::save_order(tx, order).await?;
                        }
                    }
                    None => return Ok(outside_window(&verdict)),
                }
            } else if let Some(freeze) = &verdict.freeze {
                // A freeze lets only backups, health checks and migration status through: no
                // restore into a new database and no removal of backups either.
                return Ok(Decision::Hold {
                    reason: format!(
                        "frozen by window {} until {}",
                        freeze.window,
                        freeze.end.to_rfc3339()
                    ),
                    until_unix_ms: freeze.end.timestamp_millis(),
                });
            }
        }
        if let OrderSpec::Restore { artifact_id, .. } | OrderSpec::Drill { artifact_id, .. } = &spec
            && let Some(state) = Store::artifact_state(tx, artifact_id).await?
            && state != "complete"
        {
            return Ok(Decision::Fail(format!(
                "artifact {artifact_id} is {state} now (it changed after the {} was submitted); nothing was changed",
                order.kind
            )));
        }
        // A migration carries its pre-migration backup from the pass that bound it; if that
        // artifact is no longer complete (expired by retention, condemned by a drill), the
        // agent could not restore it: a new backup is taken, as if none had been. That is as
        // safe as failing (nothing ran yet) and needs no operator.
        let mut note = None;
        if let OrderSpec::Migrate {
            pre_migration: Some(pointer),
            ..
        } = &spec
        {
            let state = Store::artifact_state(tx, &pointer.artifact_id).await?;
            if state.as_deref() != Some("complete") {
                let state = state.unwrap_or_else(|| "missing from the catalog".to_owned());
                if order.skip_safety_backup {
                    return Ok(Decision::Fail(format!(
                        "its pre-migration backup, artifact {}, is {state} now, and it may not take another (--skip-safety-backup); nothing was changed. Submit the migration again",
                        pointer.artifact_id
                    )));
                }
                let why = format!(
                    "its pre-migration backup, artifact {}, is {state} now; taking a new one",
                    pointer.artifact_id
                );
                discard_safety_backup(tx, order, &mut spec, &why).await?;
                note = Some(why);
            }
        }
        // Nothing is started for an offline agent, not even a safety backup: the order may
        // still expire or be cancelled before the agent is back.
        if !self.registry.is_online(&order.agent) {
            return Ok(if order.state == OrderState::Lost {
                Decision::Skip
            } else {
                Decision::Hold {
                    reason: format!("agent {} is offline", order.agent),
                    until_unix_ms: 0,
                }
            });
        }
        if destructive
            && !order.skip_safety_backup
            && let Some(decision) = self
                .safety_backup(tx, order, &mut spec, created, note)
                .await?
        {
            return Ok(decision);
        }
        if is_exclusive(order)
            && let Some(holder) = running
                .exclusive
                .get(&(order.agent.clone(), order.database.clone()))
        {
            return Ok(Decision::Hold {
                reason: format!("waiting for order {holder} on this database"),
                until_unix_ms: 0,
            });
        }
        if order.kind == OrderKind::Drill
            && let Some(holder) = running
                .drills
                .get(&(order.agent.clone(), order.database.clone()))
        {
            return Ok(Decision::Hold {
                reason: format!("waiting for drill {holder} of this database"),
                until_unix_ms: 0,
            });
        }
        let on_agent = running.per_agent.get(&order.agent).copied().unwrap_or(0);
        if on_agent >= limits.per_agent {
            return Ok(Decision::Hold {
                reason: format!(
                    "agent {} already runs {on_agent} orders (limits.per_agent = {})",
                    order.agent, limits.per_agent
                ),
                until_unix_ms: 0,
            });
        }
        if order.kind == OrderKind::Backup && running.backups >= limits.fleet_backups {
            return Ok(Decision::Hold {
                reason: format!(
                    "the fleet already runs {} backups (limits.fleet_backups = {})",
                    running.backups, limits.fleet_backups
                ),
                until_unix_ms: 0,
            });
        }
        Ok(Decision::Dispatch)
    }

    /// Takes the safety backup a destructive order needs first (a migration's is triggered
    /// `pre-migration`, a restore's `safety`), and ties a migration to the artifact it
    /// produced. Returns a decision when the order cannot go on yet (or never will), `None`
    /// once the backup succeeded and still shows the database as the order will change it.
    /// `note` says why a previous backup was discarded, for the hold reason.
    async fn safety_backup(
        &self,
        tx: &mut WriteTx,
        order: &mut OrderRecord,
        spec: &mut OrderSpec,
        created: &mut bool,
        mut note: Option<String>,
    ) -> CoordinatorResult<Option<Decision>> {
        if !order.safety_order_id.is_empty() {
            let Some(backup) = Store::order_for_update(tx, &order.safety_order_id).await? else {
                return Ok(Some(Decision::Fail(format!(
                    "its safety backup {} is missing from the store",
                    order.safety_order_id
                ))));
            };
            let retried_lost = backup.state == OrderState::Lost
                && backup.attempts < i64::from(self.settings.max_attempts);
            match backup.state {
                OrderState::Succeeded => {
                    let stale = match changed_after(tx, order, &backup).await? {
                        Some(later) => format!(
                            "its safety backup {} predates order {later}, which changed this database or may have; taking a new one",
                            backup.id
                        ),
                        None => match carry_pre_migration(tx, order, spec).await? {
                            Carry::Ready => return Ok(None),
                            Carry::Fail(why) => return Ok(Some(Decision::Fail(why))),
                            Carry::Retake(why) => why,
                        },
                    };
                    discard_safety_backup(tx, order, spec, &stale).await?;
                    note = Some(stale);
                }
                OrderState::Failed
                | OrderState::Cancelled
                | OrderState::Expired
                | OrderState::Lost
                    if !retried_lost =>
                {
                    return Ok(Some(Decision::Fail(format!(
                        "its safety backup {} ended {}: {}; nothing was changed. Retry, or go without one with --emergency --reason \"...\" --skip-safety-backup",
                        backup.id, backup.state, backup.error
                    ))));
                }
                _ => return Ok(Some(waiting_for_safety(&backup.id, note))),
            }
        }
        // A backup taken now would predate the destructive order that holds the database.
        if let Some(holder) = changed_after_or_running(tx, order, i64::MAX).await? {
            let wait = format!(
                "waiting for order {holder} on this database before taking its safety backup"
            );
            return Ok(Some(Decision::Hold {
                reason: note.map_or(wait.clone(), |note| format!("{note}; {wait}")),
                until_unix_ms: 0,
            }));
        }
        let trigger = match spec {
            OrderSpec::Migrate { .. } => "pre-migration",
            _ => "safety",
        };
        let backup = OrderRecord::new(
            &order.agent,
            &order.database,
            &OrderSpec::Backup {
                trigger: trigger.to_owned(),
                verify: true,
            },
            &Actor::System.to_string(),
            &format!("{SAFETY_REASON}{}", order.id),
        );
        insert_order(tx, &Actor::System, &backup).await?;
        order.safety_order_id = backup.id.clone();
        Store::save_order(tx, order).await?;
        *created = true;
        Ok(Some(waiting_for_safety(&backup.id, note)))
    }
}

/// The destructive order (restore --replace, or a migration that applies) of `order`'s
/// database that changed it, or may have, after its safety backup `backup` started: one that
/// an agent holds now, or that an agent had and that ended since.
async fn changed_after(
    tx: &mut WriteTx,
    order: &OrderRecord,
    backup: &OrderRecord,
) -> CoordinatorResult<Option<String>> {
    // Without a start recorded, the backup's creation is the earliest it could have started.
    let started = if backup.started_unix_ms > 0 {
        backup.started_unix_ms
    } else {
        backup.created_unix_ms
    };
    changed_after_or_running(tx, order, started).await
}

/// The destructive order of `order`'s database (other than it) that an agent holds now, or
/// that an agent had and that ended at or after `since_unix_ms` (`i64::MAX`: held now only).
async fn changed_after_or_running(
    tx: &mut WriteTx,
    order: &OrderRecord,
    since_unix_ms: i64,
) -> CoordinatorResult<Option<String>> {
    let orders =
        Store::database_changes_since(tx, &order.agent, &order.database, &order.id, since_unix_ms)
            .await?;
    // A spec that no longer reads counts as destructive: the doubt goes to a new backup.
    Ok(orders
        .into_iter()
        .find(|o| o.spec().map_or(true, |spec| spec.is_destructive()))
        .map(|o| o.id))
}

/// Whether a destructive order may go on with its succeeded safety backup.
enum Carry {
    /// Yes (a migration carries the backup's artifact from now on).
    Ready,
    /// No: take a new backup, for this reason.
    Retake(String),
    /// No: the order fails, for this reason.
    Fail(String),
}

/// Ties a migration to the artifact its pre-migration backup produced, once that backup
/// succeeded: the order's spec carries it from now on (saved with the order's next change),
/// so the agent can restore it and the audit log names it. An artifact no longer complete
/// is taken again; a backup that left none fails the migration.
async fn carry_pre_migration(
    tx: &mut WriteTx,
    order: &mut OrderRecord,
    spec: &mut OrderSpec,
) -> CoordinatorResult<Carry> {
    let OrderSpec::Migrate {
        pre_migration: pre_migration @ None,
        ..
    } = spec
    else {
        return Ok(Carry::Ready);
    };
    let artifact = Store::artifact_of_order(tx, &order.safety_order_id).await?;
    match artifact {
        Some(artifact) if artifact.state == "complete" => {
            *pre_migration = Some(ArtifactPointer {
                artifact_id: artifact.id,
                artifact_path: artifact.path,
                sha256: artifact.sha256,
            });
            set_spec(order, spec)?;
            Ok(Carry::Ready)
        }
        Some(artifact) => Ok(Carry::Retake(format!(
            "its pre-migration backup {} produced artifact {}, which is {} now; taking a new one",
            order.safety_order_id, artifact.id, artifact.state
        ))),
        None => Ok(Carry::Fail(format!(
            "its pre-migration backup {} left no complete artifact (none in the catalog); nothing was changed. Submit the migration again",
            order.safety_order_id
        ))),
    }
}

/// Forgets the safety backup of a destructive order (and the artifact a migration carried
/// from it), audited with why; the dispatcher takes a new one.
async fn discard_safety_backup(
    tx: &mut WriteTx,
    order: &mut OrderRecord,
    spec: &mut OrderSpec,
    why: &str,
) -> CoordinatorResult<()> {
    let backup_id = std::mem::take(&mut order.safety_order_id);
    let mut artifact_id = None;
    if let OrderSpec::Migrate { pre_migration, .. } = spec {
        artifact_id = pre_migration.take().map(|p| p.artifact_id);
        set_spec(order, spec)?;
    }
    order.updated_unix_ms = warden_shared::now_unix_ms();
    Store::save_order(tx, order).await?;
    Store::append_audit(
        tx,
        NewAuditEvent::new(
            &Actor::System,
            "order.safety_backup_discarded",
            order.target(),
            json!({
                "order_id": order.id,
                "kind": order.kind.as_str(),
                "safety_order_id": backup_id,
                "pre_migration_artifact_id": artifact_id,
                "why": why,
            }),
        ),
    );
    Ok(())
}

/// Stores `spec` as the order's spec (written with the order's next save).
fn set_spec(order: &mut OrderRecord, spec: &OrderSpec) -> CoordinatorResult<()> {
    order.spec_json = serde_json::to_string(spec).map_err(|e| {
        CoordinatorError::Store(StoreError::Corrupt {
            what: "order spec",
            why: format!("order {}: {e}", order.id),
        })
    })?;
    Ok(())
}

/// Takes out of `assignments` the orders of rollouts that halted in this pass (after the
/// pass dispatched them, when an order of the same rollout expired or failed later in it),
/// and cancels them in the pass's transaction: they were never sent, and a halted rollout
/// starts nothing more.
async fn withdraw_halted(
    tx: &mut WriteTx,
    assignments: Vec<Outgoing>,
    now_unix_ms: i64,
) -> CoordinatorResult<Vec<Outgoing>> {
    let mut halted: HashMap<String, Option<String>> = HashMap::new();
    let mut kept = Vec::with_capacity(assignments.len());
    for outgoing in assignments {
        let Some(rollout_id) = outgoing.rollout_id.clone() else {
            kept.push(outgoing);
            continue;
        };
        if !halted.contains_key(&rollout_id) {
            let error = Store::rollout(tx, &rollout_id)
                .await?
                .filter(|r| r.state == RolloutState::Halted)
                .map(|r| r.error);
            halted.insert(rollout_id.clone(), error);
        }
        let Some(Some(error)) = halted.get(&rollout_id) else {
            kept.push(outgoing);
            continue;
        };
        let Some(mut order) = Store::order_for_update(tx, &outgoing.order_id).await? else {
            continue;
        };
        order.error = format!("rollout {rollout_id} halted before this order was sent: {error}");
        order.finished_unix_ms = now_unix_ms;
        let params = json!({
            "rollout_id": rollout_id,
            "why": "the rollout halted in the dispatch pass that dispatched this order, before it was sent",
        });
        // The rollout is halted already: ending this order has no further consequence.
        change_state(
            tx,
            &mut order,
            OrderState::Cancelled,
            &Actor::System,
            params,
        )
        .await?;
    }
    Ok(kept)
}

/// Whether windows and freezes never hold the order: backups, health checks and migrations
/// that only read their status.
fn runs_any_time(spec: &OrderSpec) -> bool {
    matches!(
        spec,
        OrderSpec::Backup { .. }
            | OrderSpec::Health
            | OrderSpec::Migrate {
                status_only: true,
                ..
            }
    )
}

/// The hold of an order waiting for its safety backup; `note` says why an earlier one was
/// discarded.
fn waiting_for_safety(backup_id: &str, note: Option<String>) -> Decision {
    let wait = format!("waiting for its safety backup {backup_id}");
    Decision::Hold {
        reason: note.map_or(wait.clone(), |note| format!("{note}; {wait}")),
        until_unix_ms: 0,
    }
}

/// The hold (or expiry) of a destructive order while no window lets it start.
fn outside_window(verdict: &policy::Verdict) -> Decision {
    Decision::Hold {
        reason: window_refusal(verdict),
        until_unix_ms: verdict
            .next
            .as_ref()
            .map(|n| n.start.timestamp_millis())
            .unwrap_or(0),
    }
}

/// Cancels the safety backup of a destructive order that ended without running, if that
/// backup has not started (or was lost and would be retried): it was taken for a restore or
/// migration that will not happen. Returns the id of the backup it cancelled.
pub(super) async fn drop_safety_backup(
    tx: &mut WriteTx,
    order: &OrderRecord,
) -> CoordinatorResult<Option<String>> {
    if order.safety_order_id.is_empty() {
        return Ok(None);
    }
    let Some(mut backup) = Store::order_for_update(tx, &order.safety_order_id).await? else {
        return Ok(None);
    };
    if !matches!(
        backup.state,
        OrderState::Queued | OrderState::Held | OrderState::Lost
    ) {
        return Ok(None);
    }
    backup.error = format!("order {} it was taken for ended {}", order.id, order.state);
    backup.finished_unix_ms = warden_shared::now_unix_ms();
    let params = json!({ "for_order": order.id });
    // A backup ending has no consequences for rollouts: only its state changes.
    change_state(
        tx,
        &mut backup,
        OrderState::Cancelled,
        &Actor::System,
        params,
    )
    .await?;
    Ok(Some(backup.id))
}

fn is_safety_backup(order: &OrderRecord) -> bool {
    order.kind == OrderKind::Backup && order.reason.starts_with(SAFETY_REASON)
}

/// How a safety backup's reason starts; the order it protects follows.
const SAFETY_REASON: &str = "safety backup before order ";

/// Puts an order in `held` (audited when it enters) or updates why it waits.
async fn hold(
    tx: &mut WriteTx,
    order: &mut OrderRecord,
    reason: String,
    until_unix_ms: i64,
) -> CoordinatorResult<()> {
    if order.state == OrderState::Held || order.state == OrderState::Lost {
        if order.phase != reason || order.held_until_unix_ms != until_unix_ms {
            order.phase = reason;
            order.held_until_unix_ms = until_unix_ms;
            if order.state == OrderState::Held {
                Store::save_order(tx, order).await?;
            }
        }
        return Ok(());
    }
    order.phase = reason.clone();
    order.held_until_unix_ms = until_unix_ms;
    let mut params = json!({ "why": reason });
    if until_unix_ms > 0 {
        params["until"] = json!(format_unix_ms(until_unix_ms));
    }
    transition(tx, order, OrderState::Held, &Actor::System, params).await?;
    Ok(())
}
