//! The dispatcher: the one place where submitted orders and agents' reports on them
//! (`Started`, results) are recorded and dispatch passes run, on a thread of its own.
//!
//! Every store write goes through one connection, and sqlx runs each statement on that
//! connection's worker thread: a statement costs a round trip from the task that issued it
//! and back. On the coordinator's runtime, with thousands of agent sessions awake, that
//! task waits behind all of them before it can issue its next statement: measured with
//! 10,000 agents, about 400 µs a statement instead of 25 µs, and 5,000 orders submitted at
//! once took seconds to reach their agents. Here a thread with a runtime of its own issues
//! those statements, so each round trip costs what the store takes.
//!
//! Each round takes every request waiting (up to [`MAX_BATCH`]). Submitted orders are
//! recorded in one transaction (group commit), then one dispatch pass serves them and every
//! request for a pass that came before it started. Reports are recorded in one transaction
//! too, but only once no request is waiting (or the backlog grew past [`MAX_BACKLOG`]):
//! starting work goes before recording how it went, or a burst of orders would wait behind
//! the reports of the orders dispatched just before it. Reports can wait: an agent keeps a
//! result until the coordinator acknowledges it. A transaction of many that fails is tried
//! again one request at a time, so a bad request fails alone, with its own error.

use std::collections::VecDeque;
use std::sync::Weak;

use chrono::Utc;
use serde_json::json;
use tokio::sync::{mpsc, oneshot};
use tracing::warn;
use warden_proto::v1;
use warden_shared::OrderState;

use super::{Fleet, ack, insert_order, owned_order, transition};
use crate::audit::Actor;
use crate::error::{CoordinatorError, CoordinatorResult};
use crate::store::{OrderRecord, StoreError, WriteTx};

/// The most requests taken into one round, so one transaction never holds the store's
/// writer for long.
const MAX_BATCH: usize = 1024;
/// Reports waiting past this many are recorded even while orders keep coming.
const MAX_BACKLOG: usize = 4 * MAX_BATCH;

/// What an agent reports on an order it holds.
pub(super) enum Report {
    Started(v1::OrderStarted),
    /// Boxed: a result (with a manifest, a migration's outcome) is far larger than a start.
    Result(Box<v1::OrderResult>),
}

type Done = oneshot::Sender<CoordinatorResult<()>>;

enum Request {
    /// Record this order with its audit event, then dispatch; answered after the pass.
    Submit {
        actor: Actor,
        /// Boxed: an order record is far larger than the other requests.
        order: Box<OrderRecord>,
        done: Done,
    },
    /// Run a dispatch pass that starts after this request; answered after it.
    Dispatch { done: oneshot::Sender<()> },
    /// Record an agent's report; answered once it is durable (and acknowledged).
    Report {
        agent: String,
        report: Report,
        done: Done,
    },
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

    /// Records `order` and dispatches it (or holds it, with the reason); returns once both
    /// are durable.
    pub(super) async fn submit(&self, actor: &Actor, order: &OrderRecord) -> CoordinatorResult<()> {
        let (done, answer) = oneshot::channel();
        self.send(Request::Submit {
            actor: actor.clone(),
            order: Box::new(order.clone()),
            done,
        })?;
        answer.await.map_err(|_| stopped())?
    }

    /// Returns once a dispatch pass that started after this call has run.
    pub(super) async fn dispatch(&self) -> CoordinatorResult<()> {
        let (done, answer) = oneshot::channel();
        self.send(Request::Dispatch { done })?;
        answer.await.map_err(|_| stopped())
    }

    /// Records what `agent` reports; returns once it is durable.
    pub(super) async fn report(&self, agent: &str, report: Report) -> CoordinatorResult<()> {
        let (done, answer) = oneshot::channel();
        self.send(Request::Report {
            agent: agent.to_owned(),
            report,
            done,
        })?;
        answer.await.map_err(|_| stopped())?
    }

    fn send(&self, request: Request) -> CoordinatorResult<()> {
        self.requests.send(request).map_err(|_| stopped())
    }
}

/// The dispatcher stops only with the fleet: the store is closing.
fn stopped() -> CoordinatorError {
    CoordinatorError::Store(StoreError::Database(sqlx::Error::PoolClosed))
}

/// A report waiting to be recorded.
struct Reported {
    agent: String,
    report: Report,
    done: Done,
}

async fn serve(fleet: Weak<Fleet>, mut waiting: mpsc::UnboundedReceiver<Request>) {
    let mut batch = Vec::with_capacity(MAX_BATCH);
    let mut backlog: VecDeque<Reported> = VecDeque::new();
    loop {
        if backlog.is_empty() {
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
            return;
        };
        let mut submitted = Vec::new();
        let mut passes = Vec::new();
        for request in batch.drain(..) {
            match request {
                Request::Submit { actor, order, done } => submitted.push((actor, order, done)),
                Request::Dispatch { done } => passes.push(done),
                Request::Report {
                    agent,
                    report,
                    done,
                } => backlog.push_back(Reported {
                    agent,
                    report,
                    done,
                }),
            }
        }
        if !submitted.is_empty() || !passes.is_empty() {
            fleet.record_and_dispatch(submitted, passes).await;
        }
        if !backlog.is_empty() && (waiting.is_empty() || backlog.len() > MAX_BACKLOG) {
            let take = backlog.len().min(MAX_BATCH);
            fleet.record_reports(backlog.drain(..take).collect()).await;
        }
    }
}

/// One write the dispatcher records.
enum Write<'a> {
    Order(&'a Actor, &'a OrderRecord),
    Report(&'a str, &'a Report),
}

impl Fleet {
    /// Records the submitted orders, runs a pass, and answers every request.
    async fn record_and_dispatch(
        &self,
        submitted: Vec<(Actor, Box<OrderRecord>, Done)>,
        passes: Vec<oneshot::Sender<()>>,
    ) {
        let writes: Vec<Write<'_>> = submitted
            .iter()
            .map(|(actor, order, _)| Write::Order(actor, order))
            .collect();
        let recorded = self.write_batch(&writes).await;
        self.dispatch_passes().await;
        for ((_, _, done), result) in submitted.into_iter().zip(recorded) {
            let _ = done.send(result.map(drop));
        }
        for done in passes {
            let _ = done.send(());
        }
    }

    /// Records reports, acknowledges the results, and runs a pass when one ended an order
    /// (a database or a concurrency slot may be free now for a held order).
    async fn record_reports(&self, reports: Vec<Reported>) {
        let writes: Vec<Write<'_>> = reports
            .iter()
            .map(|r| Write::Report(&r.agent, &r.report))
            .collect();
        let recorded = self.write_batch(&writes).await;
        let mut ended = false;
        for (reported, result) in reports.into_iter().zip(recorded) {
            if let (Report::Result(result), Ok(_)) = (&reported.report, &result) {
                self.registry
                    .send(&reported.agent, ack(result.order_id.clone()));
            }
            if let Ok(Some(order)) = &result {
                self.alert_if_failed(order);
                ended = true;
            }
            let _ = reported.done.send(result.map(drop));
        }
        if ended {
            self.dispatch_passes().await;
        }
    }

    /// Runs dispatch passes until one creates no new order (a pass may create safety
    /// backups, which the next pass dispatches). A pass that fails leaves its orders
    /// waiting: the policy tick runs the next one within a second.
    async fn dispatch_passes(&self) {
        let _pass = self.dispatch_lock.lock().await;
        for _ in 0..3 {
            match self.dispatch_pass(Utc::now()).await {
                Ok(true) => {}
                Ok(false) => break,
                Err(error) => {
                    warn!(%error, "dispatch pass failed; the next policy tick tries again");
                    break;
                }
            }
        }
    }

    /// Makes every write in one transaction; if that fails, each in a transaction of its
    /// own, so a write that cannot be made fails alone, with its own error. Returns a
    /// result per write: the order a result ended, if any.
    async fn write_batch(
        &self,
        writes: &[Write<'_>],
    ) -> Vec<CoordinatorResult<Option<OrderRecord>>> {
        if writes.len() > 1 {
            match self.write_together(writes).await {
                Ok(ended) => return ended.into_iter().map(Ok).collect(),
                Err(error) => {
                    warn!(%error, writes = writes.len(), "recording requests together failed; recording them one by one");
                }
            }
        }
        let mut results = Vec::with_capacity(writes.len());
        for write in writes.chunks(1) {
            results.push(
                self.write_together(write)
                    .await
                    .map(|mut ended| ended.remove(0)),
            );
        }
        results
    }

    async fn write_together(
        &self,
        writes: &[Write<'_>],
    ) -> CoordinatorResult<Vec<Option<OrderRecord>>> {
        let mut tx = self.store.begin().await?;
        let mut ended = Vec::with_capacity(writes.len());
        for write in writes {
            ended.push(match write {
                Write::Order(actor, order) => {
                    insert_order(&mut tx, actor, order).await?;
                    None
                }
                Write::Report(agent, report) => self.record_report(&mut tx, agent, report).await?,
            });
        }
        tx.commit().await?;
        Ok(ended)
    }

    /// Records one report inside `tx`; returns the order a result ended, if any.
    async fn record_report(
        &self,
        tx: &mut WriteTx,
        agent: &str,
        report: &Report,
    ) -> CoordinatorResult<Option<OrderRecord>> {
        match report {
            Report::Started(started) => {
                let order = owned_order(tx, agent, &started.order_id).await?;
                if let Some(mut order) = order.filter(|o| o.state == OrderState::Dispatched) {
                    order.started_unix_ms = warden_shared::now_unix_ms();
                    let actor = Actor::Agent(agent.to_owned());
                    transition(tx, &mut order, OrderState::Running, &actor, json!({})).await?;
                }
                Ok(None)
            }
            Report::Result(result) => self.apply_result(tx, agent, result).await,
        }
    }
}
