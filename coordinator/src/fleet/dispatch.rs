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
//!    migration's is its pre-migration backup, which the migration then carries);
//! 4. its agent is offline;
//! 5. another backup, restore or migration holds its database (for a drill: another drill
//!    of it);
//! 6. its agent runs `limits.per_agent` orders already;
//! 7. it is a backup and the fleet runs `limits.fleet_backups` backups already.

use std::collections::{HashMap, HashSet};

use chrono::{DateTime, Utc};
use serde_json::json;
use warden_shared::{ArtifactPointer, Labels, OrderKind, OrderSpec, OrderState};

use super::policy::{database_labels, window_refusal};
use super::{
    Fleet, assignment, change_state, format_unix_ms, insert_order, is_exclusive, transition,
};
use crate::audit::Actor;
use crate::error::{CoordinatorError, CoordinatorResult};
use crate::policy::{self, Limits};
use crate::store::{OrderRecord, Store, StoreError, WriteTx};

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
    /// Runs dispatch passes until one creates no new order (a pass may create safety backups,
    /// which the next pass dispatches).
    pub async fn dispatch(&self) -> CoordinatorResult<()> {
        let _pass = self.dispatch_lock.lock().await;
        for _ in 0..3 {
            if !self.dispatch_pass(Utc::now()).await? {
                break;
            }
        }
        Ok(())
    }

    /// One pass; returns whether it created orders.
    async fn dispatch_pass(&self, now: DateTime<Utc>) -> CoordinatorResult<bool> {
        let policy = self.policy();
        let limits = policy.policy.limits;
        let mut tx = self.store.begin().await?;
        let mut running = Running::default();
        for order in
            Store::orders_in_states(&mut tx, &[OrderState::Dispatched, OrderState::Running]).await?
        {
            running.add(&order);
        }
        let mut pending =
            Store::pending_orders(&mut tx, i64::from(self.settings.max_attempts)).await?;
        if pending.is_empty() {
            return Ok(false);
        }
        // Safety backups first: a destructive order waits on them inside its window, so they
        // must not queue behind the fleet's scheduled backups (the sort is stable: oldest
        // first otherwise).
        pending.sort_by_key(|o| !is_safety_backup(o));
        let labels = database_labels(&mut tx).await?;
        let mut created = false;
        let mut assignments = Vec::new();
        let mut failed = Vec::new();
        // Orders this pass changed out of turn (a dropped safety backup): their copy in
        // `pending` is stale.
        let mut changed: HashSet<String> = HashSet::new();
        for mut order in pending {
            if changed.contains(&order.id) {
                continue;
            }
            let db_labels = labels
                .get(&(order.agent.clone(), order.database.clone()))
                .cloned()
                .unwrap_or_default();
            let decision = self
                .decide(
                    &mut tx,
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
            match decision {
                Decision::Skip => {}
                Decision::Dispatch => {
                    running.add(&order);
                    order.attempts += 1;
                    order.error.clear();
                    order.phase.clear();
                    order.held_until_unix_ms = 0;
                    let mut params = json!({ "attempt": order.attempts });
                    if let Ok(OrderSpec::Migrate {
                        pre_migration: Some(artifact),
                        ..
                    }) = order.spec()
                    {
                        params["pre_migration_artifact_id"] = json!(artifact.artifact_id);
                    }
                    transition(
                        &mut tx,
                        &mut order,
                        OrderState::Dispatched,
                        &Actor::System,
                        params,
                    )
                    .await?;
                    assignments.push((order.agent.clone(), assignment(&order)?));
                }
                Decision::Hold {
                    reason,
                    until_unix_ms,
                } => hold(&mut tx, &mut order, reason, until_unix_ms).await?,
                Decision::Expire(why) => {
                    order.error = why;
                    order.finished_unix_ms = now.timestamp_millis();
                    // A rollout it halts cancels its other orders that have not started.
                    changed.extend(
                        transition(
                            &mut tx,
                            &mut order,
                            OrderState::Expired,
                            &Actor::System,
                            json!({}),
                        )
                        .await?,
                    );
                    changed.extend(drop_safety_backup(&mut tx, &order).await?);
                }
                Decision::Fail(why) => {
                    order.error = why;
                    order.finished_unix_ms = now.timestamp_millis();
                    changed.extend(
                        transition(
                            &mut tx,
                            &mut order,
                            OrderState::Failed,
                            &Actor::System,
                            json!({}),
                        )
                        .await?,
                    );
                    changed.extend(drop_safety_backup(&mut tx, &order).await?);
                    failed.push(order);
                }
            }
        }
        tx.commit().await?;
        for order in &failed {
            self.alert_if_failed(order);
        }
        for (agent, message) in assignments {
            // If the session vanished meanwhile, the reaper or the next Hello reconciles.
            self.registry.send(&agent, message);
        }
        Ok(created)
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
        if destructive && !order.skip_safety_backup {
            if let Some(decision) = self.safety_backup(tx, order, &spec, created).await? {
                return Ok(decision);
            }
            if let Some(decision) = carry_pre_migration(tx, order, &mut spec).await? {
                return Ok(decision);
            }
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
    /// `pre-migration`, a restore's `safety`). Returns a decision when the order cannot go on
    /// yet (or never will), `None` once the backup succeeded.
    async fn safety_backup(
        &self,
        tx: &mut WriteTx,
        order: &mut OrderRecord,
        spec: &OrderSpec,
        created: &mut bool,
    ) -> CoordinatorResult<Option<Decision>> {
        if order.safety_order_id.is_empty() {
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
            return Ok(Some(waiting_for_safety(&backup.id)));
        }
        let Some(backup) = Store::order_for_update(tx, &order.safety_order_id).await? else {
            return Ok(Some(Decision::Fail(format!(
                "its safety backup {} is missing from the store",
                order.safety_order_id
            ))));
        };
        let retried_lost = backup.state == OrderState::Lost
            && backup.attempts < i64::from(self.settings.max_attempts);
        Ok(match backup.state {
            OrderState::Succeeded => None,
            OrderState::Failed | OrderState::Cancelled | OrderState::Expired | OrderState::Lost
                if !retried_lost =>
            {
                Some(Decision::Fail(format!(
                    "its safety backup {} ended {}: {}; nothing was changed. Retry, or go without one with --emergency --reason \"...\" --skip-safety-backup",
                    backup.id, backup.state, backup.error
                )))
            }
            _ => Some(waiting_for_safety(&backup.id)),
        })
    }
}

/// Ties a migration to the artifact its pre-migration backup produced, once that backup
/// succeeded: the order's spec carries it from now on (saved with the order's next change),
/// so the agent can restore it and the audit log names it. Returns a decision when the
/// artifact cannot be used.
async fn carry_pre_migration(
    tx: &mut WriteTx,
    order: &mut OrderRecord,
    spec: &mut OrderSpec,
) -> CoordinatorResult<Option<Decision>> {
    let OrderSpec::Migrate {
        pre_migration: pre_migration @ None,
        ..
    } = spec
    else {
        return Ok(None);
    };
    let artifact = Store::artifact_of_order(tx, &order.safety_order_id).await?;
    match artifact {
        Some(artifact) if artifact.state == "complete" => {
            *pre_migration = Some(ArtifactPointer {
                artifact_id: artifact.id,
                artifact_path: artifact.path,
                sha256: artifact.sha256,
            });
            order.spec_json = serde_json::to_string(spec).map_err(|e| {
                CoordinatorError::Store(StoreError::Corrupt {
                    what: "order spec",
                    why: format!("order {}: {e}", order.id),
                })
            })?;
            Ok(None)
        }
        other => Ok(Some(Decision::Fail(format!(
            "its pre-migration backup {} left no complete artifact ({}); nothing was changed. Submit the migration again",
            order.safety_order_id,
            other.map_or_else(
                || "none in the catalog".to_owned(),
                |a| format!("artifact {} is {}", a.id, a.state)
            )
        )))),
    }
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

fn waiting_for_safety(backup_id: &str) -> Decision {
    Decision::Hold {
        reason: format!("waiting for its safety backup {backup_id}"),
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
