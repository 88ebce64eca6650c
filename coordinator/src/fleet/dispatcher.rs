//! The dispatcher: the one place where submitted orders and agents' reports on them
//! (`Started`, results) are recorded and dispatch passes run, on a thread of its own.
//!
//! Every store write goes through one connection, and sqlx runs each statement on that
//! connection's worker thread: a statement costs a round trip from the task that issued it
//! and back. On the coordinator's runtime, with thousands of agent sessions awake, that
//! task waits behind all of them before it can issue its next statement: measured with
//! 10,000 agents, about 400 µs a statement instead of 25 µs, and 5,000 orders submitted at
//! once took seconds to reach their agents. Here a thread with a runtime of its own issues
//! those statements, so each round trip costs what the store takes, and rounds make few of
//! them: a round's orders are inserted in one statement and their audit events in another.
//!
//! Each round takes every request waiting (up to [`MAX_BATCH`]). Submitted orders are
//! recorded in one transaction (group commit), then one dispatch pass serves them and every
//! request for a pass that came before it started. Reports are recorded in one transaction
//! too, before the pass, so a slot they free is used at once; but while orders keep coming
//! they wait, up to [`REPORT_MAX_WAIT`]: starting work goes before recording how it went.
//! Agent sessions never wait for their reports to be recorded (they go on reading
//! heartbeats); an agent keeps a result until the coordinator acknowledges it, which it does
//! once the result is durable. A transaction of many that fails is split in halves and
//! tried again, so a bad request fails alone, with its own error.
//!
//! A round that panics fails its own requests and the dispatcher goes on with the next.

use std::collections::{HashMap, VecDeque};
use std::panic::AssertUnwindSafe;
use std::sync::Weak;
use std::time::{Duration, Instant};

use chrono::Utc;
use futures::FutureExt as _;
use serde_json::json;
use tokio::sync::{mpsc, oneshot};
use tracing::{debug, error, warn};
use warden_proto::v1;
use warden_shared::OrderState;

use super::{Fleet, ack, insert_orders, owned_order, transition};
use crate::audit::Actor;
use crate::error::{CoordinatorError, CoordinatorResult};
use crate::store::{OrderRecord, StoreError, WriteTx};

/// The most requests taken into one round, so one transaction never holds the store's
/// writer for long.
const MAX_BATCH: usize = 1024;
/// The longest a report waits to be recorded while orders keep coming.
const REPORT_MAX_WAIT: Duration = Duration::from_secs(1);
/// The most reports recorded in one round: a result costs far more to record than an order,
/// and orders submitted meanwhile wait for the round.
const MAX_REPORTS: usize = 256;

/// What an agent reports on an order it holds.
pub(super) enum Report {
    Started(v1::OrderStarted),
    /// Boxed: a result (with a manifest, a migration's outcome) is far larger than a start.
    Result(Box<v1::OrderResult>),
}

type Done = oneshot::Sender<CoordinatorResult<()>>;
/// Answers a submission: the order as the pass that ran with it left it, if known.
type Submitted = oneshot::Sender<CoordinatorResult<Option<OrderRecord>>>;

enum Request {
    /// Record this order with its audit event, then dispatch; answered after the pass.
    Submit {
        actor: Actor,
        /// Boxed: an order record is far larger than the other requests.
        order: Box<OrderRecord>,
        done: Submitted,
    },
    /// Run a dispatch pass that starts after this request; answered after it, if asked.
    Dispatch { done: Option<Done> },
    /// Record an agent's report; nobody waits for it.
    Report(Reported),
}

/// A report waiting to be recorded, with the session that sent it and when it arrived.
struct Reported {
    agent: String,
    generation: i64,
    report: Report,
    received: Instant,
    received_unix_ms: i64,
}

/// The queue of requests to the dispatcher thread, which runs while the queue is open.
pub(super) struct Dispatcher {
    requests: mpsc::UnboundedSender<Request>,
}

impl Dispatcher {
    /// Starts the dispatcher thread for `fleet`. It ends when the fleet is dropped.
    pub(super) fn start(fleet: Weak<Fleet>) -> std::io::Result<Self> {
        let (requests, waiting) = mpsc::unbounded_channel();
        let runtime = tokio::runtime::Builder::new_current_thread()
            .enable_all()
            .build()?;
        std::thread::Builder::new()
            .name("warden-dispatch".to_owned())
            .spawn(move || runtime.block_on(serve(fleet, waiting)))?;
        Ok(Self { requests })
    }

    /// A queue nobody serves, for a fleet whose thread could not start (the fleet is never
    /// used then: [`Fleet::new`] fails).
    pub(super) fn stopped() -> Self {
        Self {
            requests: mpsc::unbounded_channel().0,
        }
    }

    /// Records `order` and dispatches it (or holds it, with the reason); returns once the
    /// order is durable and a pass has looked at it, with the order as that pass left it
    /// when it knows (`None`: read it from the store). A pass that fails leaves it queued
    /// for the next one (the policy tick runs one every tick), and is logged.
    pub(super) async fn submit(
        &self,
        actor: &Actor,
        order: &OrderRecord,
    ) -> CoordinatorResult<Option<OrderRecord>> {
        let (done, answer) = oneshot::channel();
        self.send(Request::Submit {
            actor: actor.clone(),
            order: Box::new(order.clone()),
            done,
        })?;
        answer.await.map_err(|_| failed_round())?
    }

    /// Returns once a dispatch pass that started after this call has run (or failed, which
    /// the dispatcher logs: the orders wait for the next pass).
    pub(super) async fn dispatch(&self) -> CoordinatorResult<()> {
        let (done, answer) = oneshot::channel();
        self.send(Request::Dispatch { done: Some(done) })?;
        answer.await.map_err(|_| failed_round())?
    }

    /// Asks for a dispatch pass without waiting for it.
    pub(super) fn nudge(&self) -> CoordinatorResult<()> {
        self.send(Request::Dispatch { done: None })
    }

    /// Queues what `agent` reports, stamped now, to be recorded without making the caller
    /// wait; a result is acknowledged to the agent once it is durable.
    pub(super) fn report(
        &self,
        agent: &str,
        generation: i64,
        report: Report,
    ) -> CoordinatorResult<()> {
        self.send(Request::Report(Reported {
            agent: agent.to_owned(),
            generation,
            report,
            received: Instant::now(),
            received_unix_ms: warden_shared::now_unix_ms(),
        }))
    }

    fn send(&self, request: Request) -> CoordinatorResult<()> {
        self.requests.send(request).map_err(|_| stopped())
    }
}

/// The dispatcher stops only with the fleet: the store is closing.
fn stopped() -> CoordinatorError {
    CoordinatorError::Store(StoreError::Database(sqlx::Error::PoolClosed))
}

/// The round that held a request ended without answering it: it panicked.
fn failed_round() -> CoordinatorError {
    CoordinatorError::Internal(
        "the dispatcher failed while handling this request (a bug: the coordinator log has the panic); check the order's state before trying again".to_owned(),
    )
}

/// The requests of one round, sorted by kind.
#[derive(Default)]
struct Round {
    submitted: Vec<(Actor, Box<OrderRecord>, Submitted)>,
    passes: Vec<Option<Done>>,
}

async fn serve(fleet: Weak<Fleet>, mut waiting: mpsc::UnboundedReceiver<Request>) {
    let mut batch = Vec::with_capacity(MAX_BATCH);
    let mut reports: VecDeque<Reported> = VecDeque::new();
    loop {
        if reports.is_empty() {
            if waiting.recv_many(&mut batch, MAX_BATCH).await == 0 {
                return;
            }
        } else {
            while batch.len() < MAX_BATCH {
                match waiting.try_recv() {
                    Ok(request) => batch.push(request),
                    Err(_) => break,
                }
            }
        }
        let Some(fleet) = fleet.upgrade() else {
            for request in batch.drain(..) {
                match request {
                    Request::Submit { done, .. } => drop(done.send(Err(stopped()))),
                    Request::Dispatch { done: Some(done) } => drop(done.send(Err(stopped()))),
                    Request::Dispatch { done: None } | Request::Report(_) => {}
                }
            }
            return;
        };
        let mut round = Round::default();
        for request in batch.drain(..) {
            match request {
                Request::Submit { actor, order, done } => {
                    round.submitted.push((actor, order, done));
                }
                Request::Dispatch { done } => round.passes.push(done),
                Request::Report(reported) => reports.push_back(reported),
            }
        }
        let due = round.submitted.is_empty()
            || reports
                .front()
                .is_some_and(|r| r.received.elapsed() >= REPORT_MAX_WAIT);
        let take = if due {
            reports.len().min(MAX_REPORTS)
        } else {
            0
        };
        let reported: Vec<Reported> = reports.drain(..take).collect();
        let work = AssertUnwindSafe(fleet.run_round(round, reported)).catch_unwind();
        if work.await.is_err() {
            error!(
                "a dispatcher round panicked: its requests failed and its reports were not recorded (their agents send them again when they reconnect); the dispatcher goes on"
            );
        }
    }
}

/// One write the dispatcher records.
enum Write<'a> {
    Order(&'a Actor, &'a OrderRecord),
    Report(&'a Reported),
}

impl Fleet {
    /// Records the round's reports and orders, runs a pass, and answers every request.
    async fn run_round(&self, round: Round, reported: Vec<Reported>) {
        let started = Instant::now();
        let reports = reported.len();
        let mut ended = false;
        if !reported.is_empty() {
            ended = self.record_reports(reported).await;
        }
        let reports_took = started.elapsed();
        let writes: Vec<Write<'_>> = round
            .submitted
            .iter()
            .map(|(actor, order, _)| Write::Order(actor, order))
            .collect();
        let (recorded, passed, mut copies) = self.record_orders(&writes).await;
        let orders_took = started.elapsed();
        // A pass that ran with the orders started after every request of the round and after
        // its reports: more are needed only for the safety backups it created.
        let pass = match passed {
            Some(false) => Ok(()),
            Some(true) => self.dispatch_passes(2).await,
            None if ended || !writes.is_empty() || !round.passes.is_empty() => {
                self.dispatch_passes(3).await
            }
            None => Ok(()),
        };
        if let Err(error) = &pass {
            warn!(%error, "dispatch pass failed; the orders it did not look at wait for the policy tick's pass");
        }
        debug!(
            reports,
            orders = writes.len(),
            passes = round.passes.len(),
            reports_ms = reports_took.as_secs_f64() * 1e3,
            orders_and_pass_ms = (orders_took - reports_took).as_secs_f64() * 1e3,
            more_passes_ms = (started.elapsed() - orders_took).as_secs_f64() * 1e3,
            "dispatcher round"
        );
        for ((_, order, done), result) in round.submitted.into_iter().zip(recorded) {
            let _ = done.send(result.map(|_| copies.remove(&order.id)));
        }
        // The work that asked for the pass is committed either way: a failed pass is logged
        // above, and its orders wait for the next pass.
        for done in round.passes.into_iter().flatten() {
            let _ = done.send(Ok(()));
        }
    }

    /// Records reports and acknowledges the results; returns whether one ended an order (a
    /// database or a concurrency slot may be free now for a held order).
    async fn record_reports(&self, reports: Vec<Reported>) -> bool {
        let writes: Vec<Write<'_>> = reports.iter().map(Write::Report).collect();
        let recorded = self.write_batch(&writes).await;
        let mut ended = false;
        for (reported, result) in reports.iter().zip(recorded) {
            match result {
                Ok(order) => {
                    if let Report::Result(result) = &reported.report {
                        self.registry
                            .send(&reported.agent, ack(result.order_id.clone()));
                    }
                    if let Some(order) = order {
                        self.alert_if_failed(&order);
                        ended = true;
                    }
                }
                Err(error) => {
                    warn!(agent = %reported.agent, %error, "could not record an agent's report; a result is recorded when the agent sends it again");
                }
            }
        }
        ended
    }

    /// Records the round's orders and runs a pass over them in the same transaction, so one
    /// commit makes them durable and dispatched. If that fails, they are recorded on their
    /// own (see [`Fleet::write_batch`]) and no pass has run. Returns a result per order,
    /// whether the pass (if it ran) created orders, and its copies of the orders by id.
    async fn record_orders(
        &self,
        writes: &[Write<'_>],
    ) -> (
        Vec<CoordinatorResult<Option<OrderRecord>>>,
        Option<bool>,
        HashMap<String, OrderRecord>,
    ) {
        if writes.is_empty() {
            return (Vec::new(), None, HashMap::new());
        }
        let together = {
            let _pass = self.dispatch_lock.lock().await;
            self.record_and_pass(writes).await
        };
        match together {
            Ok((created, copies)) => {
                // Passes after one that created safety backups may change the new orders
                // again (a hold's reason): then they are read back once those ran.
                let copies = if created {
                    HashMap::new()
                } else {
                    copies.into_iter().map(|o| (o.id.clone(), o)).collect()
                };
                (
                    writes.iter().map(|_| Ok(None)).collect(),
                    Some(created),
                    copies,
                )
            }
            Err(error) => {
                warn!(%error, orders = writes.len(), "recording orders with a dispatch pass failed; recording them on their own");
                (self.write_batch(writes).await, None, HashMap::new())
            }
        }
    }

    async fn record_and_pass(
        &self,
        writes: &[Write<'_>],
    ) -> CoordinatorResult<(bool, Vec<OrderRecord>)> {
        let mut tx = self.store.begin().await?;
        self.write_in(&mut tx, writes).await?;
        let fresh: Vec<&OrderRecord> = writes
            .iter()
            .filter_map(|write| match write {
                Write::Order(_, order) => Some(*order),
                Write::Report(_) => None,
            })
            .collect();
        let pass = self.pass_in(&mut tx, Utc::now(), &fresh).await?;
        tx.commit().await?;
        Ok(self.deliver(pass))
    }

    /// Runs up to `most` dispatch passes, until one creates no new order (a pass may create
    /// safety backups, which the next pass dispatches).
    async fn dispatch_passes(&self, most: usize) -> CoordinatorResult<()> {
        let _pass = self.dispatch_lock.lock().await;
        for _ in 0..most {
            if !self.dispatch_pass(Utc::now()).await? {
                break;
            }
        }
        Ok(())
    }

    /// Makes every write in one transaction. If that fails, splits them in halves and tries
    /// again, down to single writes, so a write that cannot be made fails alone, with its
    /// own error, and the others cost a few more transactions, not one each. Returns a
    /// result per write, in order: the order a result ended, if any.
    async fn write_batch(
        &self,
        writes: &[Write<'_>],
    ) -> Vec<CoordinatorResult<Option<OrderRecord>>> {
        let mut results = Vec::with_capacity(writes.len());
        let mut parts = VecDeque::from([writes]);
        while let Some(part) = parts.pop_front() {
            if part.is_empty() {
                continue;
            }
            match self.write_together(part).await {
                Ok(ended) => results.extend(ended.into_iter().map(Ok)),
                Err(error) if part.len() == 1 => results.push(Err(error)),
                Err(error) => {
                    warn!(%error, writes = part.len(), "recording requests together failed; splitting them");
                    let (first, second) = part.split_at(part.len() / 2);
                    parts.push_front(second);
                    parts.push_front(first);
                }
            }
        }
        results
    }

    async fn write_together(
        &self,
        writes: &[Write<'_>],
    ) -> CoordinatorResult<Vec<Option<OrderRecord>>> {
        let mut tx = self.store.begin().await?;
        let ended = self.write_in(&mut tx, writes).await?;
        tx.commit().await?;
        Ok(ended)
    }

    /// Makes `writes` inside `tx`: the orders in one statement, then the reports in turn.
    async fn write_in(
        &self,
        tx: &mut WriteTx,
        writes: &[Write<'_>],
    ) -> CoordinatorResult<Vec<Option<OrderRecord>>> {
        let orders: Vec<(&Actor, &OrderRecord)> = writes
            .iter()
            .filter_map(|write| match write {
                Write::Order(actor, order) => Some((*actor, *order)),
                Write::Report(_) => None,
            })
            .collect();
        insert_orders(tx, &orders).await?;
        let mut ended = Vec::with_capacity(writes.len());
        for write in writes {
            ended.push(match write {
                Write::Order(..) => None,
                Write::Report(reported) => self.record_report(tx, reported).await?,
            });
        }
        Ok(ended)
    }

    /// Records one report inside `tx`; returns the order a result ended, if any.
    async fn record_report(
        &self,
        tx: &mut WriteTx,
        reported: &Reported,
    ) -> CoordinatorResult<Option<OrderRecord>> {
        let agent = reported.agent.as_str();
        match &reported.report {
            Report::Started(started) => {
                if !self.registry.is_live(agent, reported.generation) {
                    // A session that ended since: its agent's Hello said what runs now, and
                    // the order may have been sent again, to a session that has not started
                    // it.
                    return Ok(None);
                }
                let order = owned_order(tx, agent, &started.order_id).await?;
                if let Some(mut order) = order.filter(|o| o.state == OrderState::Dispatched) {
                    order.started_unix_ms = reported.received_unix_ms;
                    let actor = Actor::Agent(agent.to_owned());
                    transition(tx, &mut order, OrderState::Running, &actor, json!({})).await?;
                }
                Ok(None)
            }
            Report::Result(result) => {
                self.apply_result(tx, agent, result, reported.received_unix_ms)
                    .await
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use std::sync::Arc;
    use std::time::Duration;

    use warden_shared::{OrderSpec, OrderState};

    use super::*;
    use crate::fleet::FleetSettings;
    use crate::notify::Notifier;
    use crate::store::temp_store;

    fn backup(database: &str) -> OrderRecord {
        let spec = OrderSpec::Backup {
            trigger: "manual".to_owned(),
            verify: false,
        };
        OrderRecord::new("a1", database, &spec, "operator:ops", "test")
    }

    fn fleet(store: &crate::store::Store) -> Arc<Fleet> {
        let settings = FleetSettings {
            heartbeat_interval: Duration::from_secs(1),
            lease: Duration::from_secs(10),
            max_attempts: 3,
            policy_tick: Duration::from_secs(1),
            prune_interval: Duration::from_secs(3600),
            health_interval: Duration::from_secs(3600),
        };
        Fleet::new(store.clone(), settings, Notifier::disabled()).expect("fleet")
    }

    /// A queued order the pass cannot start (its stored spec no longer parses, say after a
    /// downgrade) fails with the reason, instead of waiting queued forever.
    #[tokio::test]
    async fn a_queued_order_that_cannot_start_fails_with_the_reason() {
        let (_dir, store) = temp_store().await;
        let fleet = fleet(&store);
        let mut broken = backup("db0");
        broken.spec_json = "{\"kind\": \"backup\", \"trigger\": 7}".to_owned();
        let mut tx = store.begin().await.expect("tx");
        crate::store::Store::insert_orders(&mut tx, &[&broken])
            .await
            .expect("insert");
        tx.commit().await.expect("commit");

        fleet.dispatch().await.expect("a pass");
        let failed = store
            .get_order(&broken.id)
            .await
            .expect("read")
            .expect("kept");
        assert_eq!(failed.state, OrderState::Failed, "{failed:?}");
        assert!(failed.error.contains("cannot be read"), "{failed:?}");
        assert!(failed.finished_unix_ms > 0, "{failed:?}");
    }

    /// Submissions that arrive together share a transaction; one that cannot be recorded
    /// (its id is taken) fails alone, with its own error, and the others are recorded once.
    #[tokio::test]
    async fn a_submission_that_cannot_be_recorded_fails_alone() {
        let (_dir, store) = temp_store().await;
        let fleet = fleet(&store);
        let actor = Actor::Operator("ops".to_owned());
        let taken = backup("db0");
        let answered = fleet
            .dispatcher
            .submit(&actor, &taken)
            .await
            .expect("first order")
            .expect("the pass that ran with it knows it");
        let stored = store.get_order(&taken.id).await.expect("read");
        assert_eq!(
            Some(&answered),
            stored.as_ref(),
            "the answer is what is stored"
        );
        assert_eq!(answered.state, OrderState::Held, "{answered:?}");
        assert!(answered.phase.contains("offline"), "{answered:?}");

        let mut orders: Vec<OrderRecord> = (1..=8).map(|i| backup(&format!("db{i}"))).collect();
        let mut duplicate = backup("db9");
        duplicate.id.clone_from(&taken.id);
        orders.insert(5, duplicate);
        let results = futures::future::join_all(
            orders
                .iter()
                .map(|order| fleet.dispatcher.submit(&actor, order)),
        )
        .await;
        for (order, result) in orders.iter().zip(&results) {
            if order.id == taken.id {
                let error = result.as_ref().expect_err("a taken id is refused");
                assert!(error.to_string().contains("UNIQUE"), "{error}");
            } else {
                let answered = result.as_ref().expect("the others are recorded");
                let stored = store.get_order(&order.id).await.expect("read");
                // The agent is offline, so the pass holds them with the reason.
                assert_eq!(stored.as_ref().map(|o| o.state), Some(OrderState::Held));
                if let Some(answered) = answered {
                    assert_eq!(
                        Some(answered),
                        stored.as_ref(),
                        "the answer is what is stored"
                    );
                }
            }
        }
        let first = store
            .get_order(&taken.id)
            .await
            .expect("read")
            .expect("kept");
        assert_eq!(
            first.database, "db0",
            "the taken id still names the first order"
        );
        let events = store.list_audit(0, 1000).await.expect("audit");
        let submitted = events
            .iter()
            .filter(|e| e.action == "order.submitted")
            .count();
        assert_eq!(
            submitted, 9,
            "one event per recorded order, none for the refused one"
        );
        let report = crate::audit::verify_chain(events);
        assert_eq!(report.broken, None);
    }
}
