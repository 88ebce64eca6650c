//! Fleet rollouts: one migration applied to every database a selector picks, in waves.
//!
//! Waves are cumulative sizes, `1,25%,100%`: the first wave migrates the first database,
//! the second brings the total to a quarter of them (rounded up), the last to all. Databases
//! are taken in order of agent, then database name. A wave starts once every database of the previous one
//! succeeded; any order of the rollout that fails, expires, is cancelled or lost halts it:
//! its orders that have not started are cancelled, and later waves are never ordered. Orders
//! already running finish on their own.
//!
//! A rollout is checked whole before anything starts: every database's agent must be online,
//! allow the command, and pass the destructive guard (in the files not known to be applied
//! to it already: the agent checks whatever is really pending again); otherwise the rollout
//! is refused with every problem listed. Each order of a rollout is an ordinary migrate order (window,
//! pre-migration backup, post-checks) carrying the rollout's id, and its end moves the
//! rollout on inside the transaction that records it.

use std::collections::{BTreeMap, HashMap};
use std::fmt;

use serde_json::json;
use tracing::{info, warn};
use uuid::Uuid;
use warden_shared::{DatabaseId, Labels, MigrationSource, OrderSpec, OrderState, Selector};

use super::dispatch::drop_safety_backup;
use super::migrate::{
    KnownApplied, MigrationRequest, admit, check_request, known_applied_to, migrate_spec,
};
use super::policy::{database_labels, labels_present};
use super::{Fleet, change_state, insert_order, parse_uuid};
use crate::audit::{Actor, NewAuditEvent};
use crate::error::{CoordinatorError, CoordinatorResult};
use crate::store::{
    OrderRecord, RolloutRecord, RolloutState, RolloutTargetRecord, Store, StoreError, TargetState,
    WriteTx,
};

/// How many rollouts `list_rollouts` returns, newest first.
pub const LIST_LIMIT: i64 = 100;

/// A rollout with its databases, for the admin API.
#[derive(Debug, Clone)]
pub struct RolloutView {
    pub rollout: RolloutRecord,
    pub targets: Vec<TargetView>,
}

/// One database of a rollout and its order, once its wave started.
#[derive(Debug, Clone)]
pub struct TargetView {
    pub target: RolloutTargetRecord,
    pub order: Option<OrderRecord>,
}

impl TargetView {
    /// `waiting` (its wave has not started), `skipped` (the rollout halted first), or its
    /// order's state.
    pub fn state(&self) -> String {
        match (&self.order, self.target.state) {
            (Some(order), _) => order.state.to_string(),
            (None, state) => state.as_str().to_owned(),
        }
    }
}

/// One wave's cumulative size as written: a number of databases, or a percentage of them.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum WaveSize {
    Count(usize),
    Percent(usize),
}

impl fmt::Display for WaveSize {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            WaveSize::Count(n) => write!(f, "{n}"),
            WaveSize::Percent(p) => write!(f, "{p}%"),
        }
    }
}

const WAVES_EXAMPLE: &str = "write cumulative sizes such as \"1,25%,100%\"";

/// Parses `1,25%,100%`: positive counts or percentages from 1% to 100%, cumulative, so
/// they never shrink, ending at 100% (or a count, which must then cover every database).
/// An empty text is one wave of every database.
pub(crate) fn parse_waves(text: &str) -> Result<Vec<WaveSize>, String> {
    if text.trim().is_empty() {
        return Ok(vec![WaveSize::Percent(100)]);
    }
    let mut sizes: Vec<WaveSize> = Vec::new();
    for (index, item) in text.split(',').map(str::trim).enumerate() {
        let wave = index + 1;
        let bad = |why: &str| format!("bad waves {text:?}: wave {wave} {why}; {WAVES_EXAMPLE}");
        let size = if let Some(percent) = item.strip_suffix('%') {
            match percent.trim().parse::<usize>() {
                Ok(p) if (1..=100).contains(&p) => WaveSize::Percent(p),
                _ => {
                    return Err(bad(&format!(
                        "({item:?}) is not a percentage from 1% to 100%"
                    )));
                }
            }
        } else {
            match item.parse::<usize>() {
                Ok(n) if n >= 1 => WaveSize::Count(n),
                _ if item.is_empty() => return Err(bad("is empty")),
                _ => {
                    return Err(bad(&format!(
                        "({item:?}) is neither a positive number of databases nor a percentage"
                    )));
                }
            }
        };
        if let Some(previous) = sizes.last() {
            let shrinks = match (previous, size) {
                (WaveSize::Count(a), WaveSize::Count(b))
                | (WaveSize::Percent(a), WaveSize::Percent(b)) => b < *a,
                _ => false,
            };
            if shrinks {
                return Err(bad(&format!(
                    "({size}) is smaller than wave {index} ({previous}): sizes are cumulative, each counting every database migrated by the end of its wave"
                )));
            }
        }
        sizes.push(size);
    }
    if let Some(WaveSize::Percent(last)) = sizes.last()
        && *last < 100
    {
        return Err(format!(
            "bad waves {text:?}: the last wave must be 100%, so that the rollout covers every selected database; it is {last}%"
        ));
    }
    Ok(sizes)
}

/// The cumulative number of databases at the end of each wave, for `total` databases: a
/// percentage rounds up, a count covers at most all. A wave that adds no database is
/// dropped. Fails when sizes shrink or the last wave does not cover every database.
pub(crate) fn resolve_waves(sizes: &[WaveSize], total: usize) -> Result<Vec<usize>, String> {
    let waves_text = || {
        sizes
            .iter()
            .map(ToString::to_string)
            .collect::<Vec<_>>()
            .join(",")
    };
    let mut cumulative: Vec<usize> = Vec::new();
    let mut previous = 0;
    for (index, size) in sizes.iter().enumerate() {
        let count = match *size {
            WaveSize::Count(n) => n.min(total),
            WaveSize::Percent(p) => (p * total).div_ceil(100),
        };
        if count < previous {
            return Err(format!(
                "bad waves {:?}: wave {} ({size}) is {count} of the {total} selected databases, fewer than the {previous} of wave {index}; sizes are cumulative, so they never shrink",
                waves_text(),
                index + 1,
            ));
        }
        if count > previous {
            cumulative.push(count);
        }
        previous = count;
    }
    if previous < total {
        return Err(format!(
            "bad waves {:?}: the last wave covers {previous} of the {total} selected databases; it must be 100% so that the rollout covers them all",
            waves_text()
        ));
    }
    Ok(cumulative)
}

/// The wave (from 1) of each of `total` databases in rollout order.
pub(crate) fn assign_waves(cumulative: &[usize], total: usize) -> Vec<i64> {
    (0..total)
        .map(|index| {
            let wave = cumulative.partition_point(|&end| end <= index) + 1;
            i64::try_from(wave).unwrap_or(i64::MAX)
        })
        .collect()
}

/// A database a rollout selected, with what is needed to admit it.
struct Candidate {
    id: DatabaseId,
    labels: Labels,
    commands: Vec<crate::store::MigrateCommand>,
    /// The files known to be applied to it already, which the guard does not check again.
    known: KnownApplied,
}

impl Fleet {
    /// Starts a rollout of one migration over the databases `selector` picks, in `waves`.
    /// Nothing starts unless every database can take it.
    pub async fn submit_rollout(
        &self,
        actor: &Actor,
        selector: &str,
        request: &MigrationRequest,
        waves: &str,
    ) -> CoordinatorResult<RolloutView> {
        let checked = check_request(request, false)?;
        let selector: Selector = selector
            .parse()
            .map_err(|e: warden_shared::SelectorError| {
                CoordinatorError::InvalidArgument(format!("{e}; nothing was started"))
            })?;
        let sizes = parse_waves(waves).map_err(CoordinatorError::InvalidArgument)?;
        let candidates = self.select(&selector).await?;
        if candidates.is_empty() {
            return Err(CoordinatorError::NotFound(format!(
                "no database matches selector {:?}; `warden databases` lists them with their labels. Nothing was started",
                selector.to_string()
            )));
        }
        let total = candidates.len();
        let cumulative = resolve_waves(&sizes, total).map_err(CoordinatorError::InvalidArgument)?;
        let wave_of = assign_waves(&cumulative, total);

        let id = Uuid::now_v7().to_string();
        let policy = self.policy();
        let mut problems = Vec::new();
        let mut targets = Vec::with_capacity(total);
        for (position, (candidate, wave)) in candidates.iter().zip(&wave_of).enumerate() {
            let db = &candidate.id;
            if !self.registry.is_online(&db.agent) {
                problems.push(format!("{db}: agent {} is offline", db.agent));
                continue;
            }
            let guard = match admit(
                &policy.policy,
                db,
                &candidate.labels,
                &candidate.commands,
                &checked.source,
                &candidate.known,
                request.emergency,
                false,
            ) {
                Ok(guard) => guard,
                Err(problem) => {
                    problems.push(format!("{db}: {problem}"));
                    continue;
                }
            };
            if request.no_wait
                && !request.emergency
                && let Some(why) = self.closed_now(&candidate.labels)
            {
                problems.push(format!("{db}: {why} (--no-wait)"));
                continue;
            }
            let spec = migrate_spec(
                &policy.policy,
                &candidate.labels,
                &checked,
                false,
                guard,
                Some(id.clone()),
            );
            targets.push(RolloutTargetRecord {
                rollout_id: id.clone(),
                agent: db.agent.clone(),
                database: db.database.clone(),
                position: i64::try_from(position).unwrap_or(i64::MAX),
                wave: *wave,
                spec_json: serde_json::to_string(&spec).map_err(|e| {
                    CoordinatorError::InvalidArgument(format!("the migration does not encode: {e}"))
                })?,
                order_id: String::new(),
                state: TargetState::Waiting,
            });
        }
        if !problems.is_empty() {
            return Err(CoordinatorError::FailedPrecondition(format!(
                "the rollout was refused and nothing was started: {} of the {total} databases selected by {:?} cannot take it:\n  {}",
                problems.len(),
                selector.to_string(),
                problems.join("\n  ")
            )));
        }

        let now = warden_shared::now_unix_ms();
        let (migrations, command) = match &checked.source {
            MigrationSource::Sql { files } => (
                files
                    .iter()
                    .map(|f| json!({ "version": f.version, "name": f.name, "sha256": f.sha256 }))
                    .collect::<Vec<_>>(),
                String::new(),
            ),
            MigrationSource::Command { name } => (Vec::new(), name.clone()),
        };
        let waves_text = sizes
            .iter()
            .map(ToString::to_string)
            .collect::<Vec<_>>()
            .join(",");
        let mut rollout = RolloutRecord {
            id: id.clone(),
            state: RolloutState::Running,
            selector: selector.to_string(),
            waves: waves_text,
            requested_by: actor.to_string(),
            reason: request.reason.clone(),
            emergency: request.emergency,
            skip_safety_backup: request.skip_safety_backup,
            created_unix_ms: now,
            updated_unix_ms: now,
            finished_unix_ms: 0,
            current_wave: 0,
            wave_count: i64::try_from(cumulative.len()).unwrap_or(i64::MAX),
            error: String::new(),
            migrations_json: serde_json::Value::Array(migrations.clone()).to_string(),
            command: command.clone(),
        };
        let mut per_wave: BTreeMap<i64, Vec<String>> = BTreeMap::new();
        for target in &targets {
            per_wave
                .entry(target.wave)
                .or_default()
                .push(target.target());
        }

        let mut tx = self.store.begin().await?;
        Store::insert_rollout(&mut tx, &rollout).await?;
        for target in &targets {
            Store::insert_rollout_target(&mut tx, target).await?;
        }
        let mut params = json!({
            "rollout_id": id,
            "selector": rollout.selector,
            "waves": rollout.waves,
            "reason": rollout.reason,
            "emergency": rollout.emergency,
            "skip_safety_backup": rollout.skip_safety_backup,
            "targets": per_wave.values().collect::<Vec<_>>(),
        });
        if command.is_empty() {
            params["migrations"] = json!(migrations);
        } else {
            params["command"] = json!(command);
        }
        Store::append_audit(
            &mut tx,
            NewAuditEvent::new(actor, "rollout.started", &id, params),
        );
        start_wave(&mut tx, &mut rollout, 1, actor).await?;
        tx.commit().await?;
        info!(rollout_id = %id, databases = total, waves = rollout.wave_count, "rollout started");
        self.dispatch().await?;
        self.get_rollout(&id).await
    }

    /// Present databases whose labels `selector` matches, by agent then database name, with
    /// the migration commands their agents allow and the files known applied to each.
    async fn select(&self, selector: &Selector) -> CoordinatorResult<Vec<Candidate>> {
        let mut conn = self.store.read().await?;
        let mut selected: Vec<((String, String), Labels)> = database_labels(&mut conn)
            .await?
            .into_iter()
            .filter(|(_, labels)| labels_present(labels) && selector.matches(labels))
            .collect();
        selected.sort_by(|a, b| a.0.cmp(&b.0));
        let mut candidates = Vec::with_capacity(selected.len());
        for ((agent, database), labels) in selected {
            let commands = Store::migrate_commands(&mut conn, &agent, &database).await?;
            let id = DatabaseId::new(&agent, &database)?;
            let known = known_applied_to(&mut conn, &id).await?;
            candidates.push(Candidate {
                id,
                labels,
                commands,
                known,
            });
        }
        Ok(candidates)
    }

    pub async fn get_rollout(&self, id: &str) -> CoordinatorResult<RolloutView> {
        parse_uuid(id, "rollout")?;
        let mut conn = self.store.read().await?;
        let rollout = Store::rollout(&mut conn, id).await?.ok_or_else(|| {
            CoordinatorError::NotFound(format!(
                "unknown rollout {id}; `warden rollouts` lists them"
            ))
        })?;
        view(&mut conn, rollout).await
    }

    /// The newest rollouts, newest first.
    pub async fn list_rollouts(&self) -> CoordinatorResult<Vec<RolloutView>> {
        let mut conn = self.store.read().await?;
        let mut views = Vec::new();
        for rollout in Store::rollouts(&mut conn, LIST_LIMIT).await? {
            views.push(view(&mut conn, rollout).await?);
        }
        Ok(views)
    }
}

async fn view(
    conn: &mut sqlx::SqliteConnection,
    rollout: RolloutRecord,
) -> CoordinatorResult<RolloutView> {
    let mut orders: HashMap<String, OrderRecord> = Store::rollout_orders(conn, &rollout.id)
        .await?
        .into_iter()
        .map(|order| (order.id.clone(), order))
        .collect();
    let targets = Store::rollout_targets(conn, &rollout.id)
        .await?
        .into_iter()
        .map(|target| TargetView {
            order: orders.remove(&target.order_id),
            target,
        })
        .collect();
    Ok(RolloutView { rollout, targets })
}

/// Orders the databases of wave `wave` (audited), and makes it the rollout's current wave.
async fn start_wave(
    tx: &mut WriteTx,
    rollout: &mut RolloutRecord,
    wave: i64,
    actor: &Actor,
) -> CoordinatorResult<()> {
    let reason = if rollout.reason.trim().is_empty() {
        format!("rollout {}, wave {wave}", rollout.id)
    } else {
        format!("{} (rollout {}, wave {wave})", rollout.reason, rollout.id)
    };
    let mut orders = Vec::new();
    for mut target in Store::rollout_targets(tx, &rollout.id).await? {
        if target.wave != wave || target.state != TargetState::Waiting {
            continue;
        }
        let spec: OrderSpec =
            serde_json::from_str(&target.spec_json).map_err(|e| StoreError::Corrupt {
                what: "rollout target spec",
                why: format!("rollout {} target {}: {e}", rollout.id, target.target()),
            })?;
        let mut order = OrderRecord::new(
            &target.agent,
            &target.database,
            &spec,
            &rollout.requested_by,
            &reason,
        );
        order.emergency = rollout.emergency;
        order.skip_safety_backup = rollout.skip_safety_backup;
        insert_order(tx, actor, &order).await?;
        target.order_id = order.id.clone();
        target.state = TargetState::Ordered;
        Store::set_rollout_target(tx, &target).await?;
        orders.push(json!({ "database": target.target(), "order_id": order.id }));
    }
    rollout.current_wave = wave;
    rollout.updated_unix_ms = warden_shared::now_unix_ms();
    Store::save_rollout(tx, rollout).await?;
    Store::append_audit(
        tx,
        NewAuditEvent::new(
            actor,
            "rollout.wave_started",
            &rollout.id,
            json!({
                "rollout_id": rollout.id,
                "wave": wave,
                "wave_count": rollout.wave_count,
                "orders": orders,
            }),
        ),
    );
    info!(rollout_id = %rollout.id, wave, orders = orders.len(), "rollout wave started");
    Ok(())
}

/// Moves a rollout on when one of its migrations ended (inside the transaction that
/// recorded the end): a success that completes its wave starts the next wave or finishes the
/// rollout; anything else halts it. Returns the ids of orders it cancelled.
pub(super) async fn order_ended(
    tx: &mut WriteTx,
    order: &OrderRecord,
) -> CoordinatorResult<Vec<String>> {
    let Ok(OrderSpec::Migrate {
        rollout_id: Some(rollout_id),
        ..
    }) = order.spec()
    else {
        return Ok(Vec::new());
    };
    let Some(mut rollout) = Store::rollout(tx, &rollout_id).await? else {
        warn!(order_id = %order.id, %rollout_id, "a migration names a rollout the store does not know");
        return Ok(Vec::new());
    };
    if rollout.state != RolloutState::Running {
        return Ok(Vec::new());
    }
    if order.state != OrderState::Succeeded {
        return halt(tx, &mut rollout, order).await;
    }
    let states: HashMap<String, OrderState> = Store::rollout_orders(tx, &rollout.id)
        .await?
        .into_iter()
        .map(|o| (o.id, o.state))
        .collect();
    let wave_done = Store::rollout_targets(tx, &rollout.id)
        .await?
        .iter()
        .filter(|t| t.wave == rollout.current_wave)
        .all(|t| states.get(&t.order_id) == Some(&OrderState::Succeeded));
    if !wave_done {
        return Ok(Vec::new());
    }
    if rollout.current_wave < rollout.wave_count {
        let next = rollout.current_wave + 1;
        start_wave(tx, &mut rollout, next, &Actor::System).await?;
        return Ok(Vec::new());
    }
    let now = warden_shared::now_unix_ms();
    rollout.state = RolloutState::Succeeded;
    rollout.finished_unix_ms = now;
    rollout.updated_unix_ms = now;
    Store::save_rollout(tx, &rollout).await?;
    Store::append_audit(
        tx,
        NewAuditEvent::new(
            &Actor::System,
            "rollout.succeeded",
            &rollout.id,
            json!({
                "rollout_id": rollout.id,
                "waves": rollout.wave_count,
                "databases": states.len(),
            }),
        ),
    );
    info!(rollout_id = %rollout.id, "rollout succeeded");
    Ok(Vec::new())
}

/// Halts a rollout because `order` did not succeed: cancels its orders that have not
/// started (and their waiting safety backups), skips the databases of later waves, and
/// records why. Orders already with an agent run to their end.
async fn halt(
    tx: &mut WriteTx,
    rollout: &mut RolloutRecord,
    order: &OrderRecord,
) -> CoordinatorResult<Vec<String>> {
    let why = if order.error.is_empty() {
        format!("its order {} ended {}", order.id, order.state)
    } else {
        order.error.clone()
    };
    rollout.error = format!("{}: {why}", order.target());
    let mut changed = Vec::new();
    let mut cancelled = Vec::new();
    for mut other in Store::rollout_orders(tx, &rollout.id).await? {
        if !matches!(other.state, OrderState::Queued | OrderState::Held) {
            continue;
        }
        other.error = format!("rollout {} halted: {}", rollout.id, rollout.error);
        other.finished_unix_ms = warden_shared::now_unix_ms();
        let params = json!({ "rollout_id": rollout.id, "why": "the rollout halted" });
        // The rollout is halted already: ending these has no further consequence.
        change_state(
            tx,
            &mut other,
            OrderState::Cancelled,
            &Actor::System,
            params,
        )
        .await?;
        changed.extend(drop_safety_backup(tx, &other).await?);
        cancelled.push(other.id.clone());
        changed.push(other.id);
    }
    let skipped = Store::skip_waiting_targets(tx, &rollout.id).await?;
    let now = warden_shared::now_unix_ms();
    rollout.state = RolloutState::Halted;
    rollout.finished_unix_ms = now;
    rollout.updated_unix_ms = now;
    Store::save_rollout(tx, rollout).await?;
    Store::append_audit(
        tx,
        NewAuditEvent::new(
            &Actor::System,
            "rollout.halted",
            &rollout.id,
            json!({
                "rollout_id": rollout.id,
                "why": rollout.error,
                "database": order.target(),
                "order_id": order.id,
                "order_state": order.state.as_str(),
                "wave": rollout.current_wave,
                "cancelled_orders": cancelled,
                "skipped": skipped,
            }),
        ),
    );
    warn!(rollout_id = %rollout.id, error = %rollout.error, "rollout halted");
    Ok(changed)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn waves(text: &str, total: usize) -> Result<Vec<usize>, String> {
        resolve_waves(&parse_waves(text)?, total)
    }

    #[test]
    fn waves_parse_as_cumulative_counts_and_percentages() {
        assert_eq!(
            parse_waves("1, 25%,100%"),
            Ok(vec![
                WaveSize::Count(1),
                WaveSize::Percent(25),
                WaveSize::Percent(100)
            ])
        );
        assert_eq!(parse_waves(""), Ok(vec![WaveSize::Percent(100)]));
        assert_eq!(
            parse_waves("2,2,5"),
            Ok(vec![
                WaveSize::Count(2),
                WaveSize::Count(2),
                WaveSize::Count(5)
            ])
        );
        for (text, words) in [
            ("0,100%", "neither a positive number"),
            ("1,,100%", "wave 2 is empty"),
            ("1,x,100%", "neither a positive number"),
            ("-1,100%", "neither a positive number"),
            ("1,0%,100%", "from 1% to 100%"),
            ("1,101%", "from 1% to 100%"),
            ("1,50 %%", "from 1% to 100%"),
            ("5,2,100%", "wave 2 (2) is smaller than wave 1 (5)"),
            ("50%,10%,100%", "wave 2 (10%) is smaller than wave 1 (50%)"),
            ("1,50%", "the last wave must be 100%"),
        ] {
            let error = parse_waves(text).expect_err(text);
            assert!(error.contains(words), "{text}: {error}");
        }
    }

    #[test]
    fn waves_resolve_against_the_selection() {
        // Percentages round up; a count never exceeds the selection.
        assert_eq!(waves("1,25%,100%", 10), Ok(vec![1, 3, 10]));
        assert_eq!(waves("1,25%,100%", 40), Ok(vec![1, 10, 40]));
        // Waves that add no database are dropped.
        assert_eq!(waves("1,25%,100%", 1), Ok(vec![1]));
        assert_eq!(waves("1,25%,100%", 2), Ok(vec![1, 2]));
        assert_eq!(waves("1,10,100%", 3), Ok(vec![1, 3]));
        assert_eq!(waves("", 7), Ok(vec![7]));
        assert_eq!(waves("1%,100%", 3), Ok(vec![1, 3]));
        // A final count is fine when it covers the selection.
        assert_eq!(waves("1,3", 3), Ok(vec![1, 3]));
        let short = waves("1,2", 5).expect_err("does not cover all");
        assert!(
            short.contains("covers 2 of the 5") && short.contains("must be 100%"),
            "{short}"
        );
        // Mixed kinds may only be compared once the selection is known.
        let shrinks = waves("5,10%,100%", 20).expect_err("shrinks");
        assert!(shrinks.contains("fewer than the 5 of wave 1"), "{shrinks}");
    }

    #[test]
    fn databases_fill_the_waves_in_order() {
        assert_eq!(
            assign_waves(&[1, 3, 10], 10),
            [1, 2, 2, 3, 3, 3, 3, 3, 3, 3]
        );
        assert_eq!(assign_waves(&[4], 4), [1, 1, 1, 1]);
        assert_eq!(assign_waves(&[1, 2], 2), [1, 2]);
    }
}
