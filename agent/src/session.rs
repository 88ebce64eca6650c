//! The agent's side of `AgentService.Connect`: one long-lived stream to the coordinator,
//! reopened with backoff whenever it ends.
//!
//! Orders outlive streams. Running orders keep running while the agent reconnects, and a
//! finished order's result stays in the outbox until the coordinator acknowledges it, so a
//! result produced during an outage is delivered in the next `Hello`. Assignments are
//! idempotent by order id: a repeated one never runs twice. A running order is not started
//! again, an unacknowledged one gets its result sent again, and one whose result was
//! acknowledged is ignored: the agent remembers the ids of the last [`FINISHED_MEMORY`]
//! orders it finished (migrations also refuse to run twice by their tracking table, which
//! survives a restart of the agent).
//!
//! While a stream is up, a task of its own collects the health of every configured database
//! every `Welcome.health_interval_ms` and sends it up; it never holds up heartbeats or
//! orders, and stops with the stream.

use std::collections::{BTreeMap, HashMap, HashSet, VecDeque};
use std::sync::Arc;
use std::time::Duration;

use backon::BackoffBuilder;
use tokio::sync::mpsc;
use tokio::task::{JoinError, JoinSet};
use tokio::time::Instant;
use tokio_stream::wrappers::UnboundedReceiverStream;
use tokio_util::sync::{CancellationToken, DropGuard};
use tonic::Streaming;
use tonic::transport::Endpoint;
use tracing::Instrument;
use warden_proto::v1;
use warden_proto::v1::agent_message::Msg as AgentMsg;
use warden_proto::v1::agent_service_client::AgentServiceClient;
use warden_proto::v1::coordinator_message::Msg as CoordinatorMsg;
use warden_shared::now_unix_ms;

use crate::error::{AgentError, AgentResult, error_chain};
use crate::health;
use crate::orders::{AgentContext, failed_result, order_kind, run_order};
use crate::progress::{ProgressReporter, ProgressUpdate};

/// The connection to the coordinator at `url`, with the agent's timeouts and HTTP/2
/// keepalive (the coordinator-scale simulator connects the same way).
pub fn endpoint(url: &str) -> Result<Endpoint, tonic::transport::Error> {
    Ok(Endpoint::from_shared(url.to_owned())?
        .connect_timeout(CONNECT_TIMEOUT)
        .http2_keep_alive_interval(KEEPALIVE_INTERVAL)
        .keep_alive_timeout(KEEPALIVE_TIMEOUT)
        .keep_alive_while_idle(true))
}

/// How long an agent the coordinator refused waits before it asks again.
const REFUSED_RETRY: Duration = Duration::from_secs(30);
/// How long to wait for the coordinator's `Welcome` after connecting.
const WELCOME_TIMEOUT: Duration = Duration::from_secs(10);
/// How long cancelled orders get to clean up when the agent is asked to stop.
const SHUTDOWN_GRACE: Duration = Duration::from_secs(5);
/// TCP connect timeout to the coordinator.
const CONNECT_TIMEOUT: Duration = Duration::from_secs(5);
/// HTTP/2 pings detect a coordinator that vanished without closing the connection.
const KEEPALIVE_INTERVAL: Duration = Duration::from_secs(5);
const KEEPALIVE_TIMEOUT: Duration = Duration::from_secs(10);
/// Heartbeat interval if the coordinator's `Welcome` does not name one.
const DEFAULT_HEARTBEAT: Duration = Duration::from_secs(2);
/// How long a closing stream may take to flush the last messages.
const CLOSE_TIMEOUT: Duration = Duration::from_secs(1);
/// The longest a periodic health report waits for one database.
const HEALTH_TIMEOUT: Duration = Duration::from_secs(10);
/// How many finished orders the agent remembers, to ignore their assignments sent again.
pub const FINISHED_MEMORY: usize = 4096;

/// Serves the coordinator until `shutdown` fires and running orders have been cancelled
/// (or [`SHUTDOWN_GRACE`] passed).
pub async fn run(ctx: Arc<AgentContext>, shutdown: CancellationToken) {
    Session::new(ctx, shutdown).run().await;
}

type Outbound = mpsc::UnboundedSender<v1::AgentMessage>;

/// An order being executed.
struct RunningOrder {
    database: String,
    cancel: CancellationToken,
}

/// An open stream, after the coordinator's `Welcome`.
struct Stream {
    outbound: Outbound,
    inbound: Streaming<v1::CoordinatorMessage>,
    heartbeat: Duration,
    /// Stops the stream's health reports when dropped; `None` when they are off.
    health_reports: Option<DropGuard>,
}

struct Session {
    ctx: Arc<AgentContext>,
    shutdown: CancellationToken,
    /// When the agent must exit even if orders are still cleaning up; set on shutdown.
    stop_deadline: Option<Instant>,
    running: HashMap<String, RunningOrder>,
    tasks: JoinSet<v1::OrderResult>,
    task_orders: HashMap<tokio::task::Id, String>,
    /// Finished orders whose result the coordinator has not acknowledged yet.
    outbox: BTreeMap<String, v1::OrderResult>,
    /// The ids of the orders finished last (their results acknowledged or not).
    finished: FinishedOrders,
    progress_tx: mpsc::UnboundedSender<(String, ProgressUpdate)>,
    progress_rx: mpsc::UnboundedReceiver<(String, ProgressUpdate)>,
}

impl Session {
    fn new(ctx: Arc<AgentContext>, shutdown: CancellationToken) -> Self {
        let (progress_tx, progress_rx) = mpsc::unbounded_channel();
        Self {
            ctx,
            shutdown,
            stop_deadline: None,
            running: HashMap::new(),
            tasks: JoinSet::new(),
            task_orders: HashMap::new(),
            outbox: BTreeMap::new(),
            finished: FinishedOrders::new(FINISHED_MEMORY),
            progress_tx,
            progress_rx,
        }
    }

    async fn run(mut self) {
        let mut backoff = warden_shared::retry::reconnect_backoff().build();
        loop {
            if self.done() {
                break;
            }
            let opened = tokio::select! {
                opened = self.open() => Some(opened),
                _ = self.shutdown.cancelled() => None,
            };
            match opened {
                Some(Ok(stream)) => {
                    // A healthy session starts the backoff over.
                    backoff = warden_shared::retry::reconnect_backoff().build();
                    let why = self.serve(stream).await;
                    if self.done() {
                        break;
                    }
                    tracing::warn!(reason = %why, "coordinator session ended");
                }
                Some(Err(AgentError::Refused(why))) => {
                    // Only an operator can fix this (enroll, renew in time, un-revoke): ask
                    // again rarely, each refusal being audited.
                    tracing::error!(%why, "the coordinator refused this agent's certificate");
                    self.idle(REFUSED_RETRY).await;
                    continue;
                }
                Some(Err(error)) => tracing::warn!(%error, "cannot open a coordinator session"),
                None => self.note_shutdown(),
            }
            let delay = backoff.next().unwrap_or(Duration::from_secs(10));
            if !self.shutdown.is_cancelled() {
                tracing::info!(
                    retry_in_ms = delay.as_millis() as u64,
                    "reconnecting to the coordinator"
                );
            }
            self.idle(delay).await;
        }
        tracing::info!(
            abandoned_orders = self.running.len(),
            unacknowledged_results = self.outbox.len(),
            "session loop stopped"
        );
    }

    /// Returns whether the agent may exit: it is stopping and its orders are finished, or
    /// out of time.
    fn done(&self) -> bool {
        self.stop_deadline
            .is_some_and(|deadline| self.running.is_empty() || Instant::now() >= deadline)
    }

    /// Starts stopping: running orders hold child tokens of `shutdown`, so they are
    /// cancelled already; they now get [`SHUTDOWN_GRACE`] to clean up.
    fn note_shutdown(&mut self) {
        if self.stop_deadline.is_none() {
            tracing::info!(
                running_orders = self.running.len(),
                "stopping: cancelling running orders, taking no new ones"
            );
            self.stop_deadline = Some(Instant::now() + SHUTDOWN_GRACE);
        }
    }

    /// Connects, says `Hello` and waits for `Welcome`.
    async fn open(&self) -> AgentResult<Stream> {
        let url = self.ctx.config.coordinator.clone();
        // Built for every connection: a renewed certificate is presented from the next one.
        let channel = crate::identity::coordinator_endpoint(&self.ctx.config)?
            .connect()
            .await
            .map_err(|source| AgentError::Connect {
                url: url.clone(),
                reason: error_chain(&source),
            })?;
        let (outbound, requests) = mpsc::unbounded_channel();
        // The receiver is alive, so the Hello is queued as the stream's first message.
        let _ = outbound.send(message(AgentMsg::Hello(self.hello())));
        let handshake = async {
            let mut inbound = AgentServiceClient::new(channel)
                .connect(UnboundedReceiverStream::new(requests))
                .await?
                .into_inner();
            match inbound.message().await? {
                Some(v1::CoordinatorMessage {
                    msg: Some(CoordinatorMsg::Welcome(welcome)),
                }) => Ok((inbound, welcome)),
                other => Err(AgentError::Stream(format!(
                    "expected Welcome as the first message, got {other:?}"
                ))),
            }
        };
        let (inbound, welcome) = tokio::time::timeout(WELCOME_TIMEOUT, handshake)
            .await
            .map_err(|_| {
                AgentError::Stream(format!(
                    "no Welcome from {url} within {}s",
                    WELCOME_TIMEOUT.as_secs()
                ))
            })??;
        let heartbeat = match welcome.heartbeat_interval_ms {
            0 => DEFAULT_HEARTBEAT,
            ms => Duration::from_millis(ms),
        };
        tracing::info!(
            coordinator = %url,
            heartbeat_ms = heartbeat.as_millis() as u64,
            lease_ms = welcome.lease_ms,
            health_interval_ms = welcome.health_interval_ms,
            running_orders = self.running.len(),
            unacknowledged_results = self.outbox.len(),
            "connected to the coordinator"
        );
        let health_reports = (welcome.health_interval_ms > 0).then(|| {
            let stop = CancellationToken::new();
            tokio::spawn(report_health(
                self.ctx.clone(),
                Duration::from_millis(welcome.health_interval_ms),
                outbound.clone(),
                stop.clone(),
            ));
            stop.drop_guard()
        });
        Ok(Stream {
            outbound,
            inbound,
            heartbeat,
            health_reports,
        })
    }

    fn hello(&self) -> v1::Hello {
        let config = &self.ctx.config;
        v1::Hello {
            agent: config.name.clone(),
            version: env!("CARGO_PKG_VERSION").to_owned(),
            labels: config.labels.clone().into_iter().collect(),
            databases: config
                .databases
                .iter()
                .map(|db| v1::DatabaseInfo {
                    name: db.name.clone(),
                    labels: db.labels.clone().into_iter().collect(),
                    // Names and command lines only: the migration environment may hold
                    // secrets and stays on this host.
                    migrate_commands: db
                        .migrate
                        .iter()
                        .flat_map(|m| &m.commands)
                        .map(|(name, argv)| v1::MigrateCommand {
                            name: name.clone(),
                            argv: argv.clone(),
                        })
                        .collect(),
                })
                .collect(),
            running_order_ids: self.running.keys().cloned().collect(),
            unacknowledged_results: self.outbox.values().cloned().collect(),
            repository: self.ctx.repository.url().to_owned(),
        }
    }

    /// Serves one stream until it ends or the agent is done; returns why it ended.
    async fn serve(&mut self, mut stream: Stream) -> String {
        let mut heartbeat =
            tokio::time::interval_at(Instant::now() + stream.heartbeat, stream.heartbeat);
        heartbeat.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
        loop {
            if self.done() {
                close(stream).await;
                return "agent stopping".to_owned();
            }
            let deadline = self.stop_deadline;
            tokio::select! {
                received = stream.inbound.message() => match received {
                    Ok(Some(message)) => self.on_message(message, &stream.outbound),
                    Ok(None) => return "the coordinator closed the stream".to_owned(),
                    Err(status) => return AgentError::from(status).to_string(),
                },
                Some(finished) = self.tasks.join_next_with_id(), if !self.tasks.is_empty() => {
                    self.on_finished(finished, Some(&stream.outbound));
                }
                Some((order_id, update)) = self.progress_rx.recv() => {
                    send(&stream.outbound, AgentMsg::Progress(v1::OrderProgress {
                        order_id,
                        phase: update.phase.to_owned(),
                        bytes: update.bytes,
                        bytes_per_sec: update.bytes_per_sec,
                    }));
                }
                _ = heartbeat.tick() => {
                    send(&stream.outbound, AgentMsg::Heartbeat(v1::Heartbeat { sent_unix_ms: now_unix_ms() }));
                }
                _ = self.shutdown.cancelled(), if deadline.is_none() => self.note_shutdown(),
                _ = sleep_until(deadline) => {}
            }
            if stream.outbound.is_closed() {
                return "the stream to the coordinator closed".to_owned();
            }
        }
    }

    /// Waits `delay` between sessions while orders keep finishing into the outbox.
    async fn idle(&mut self, delay: Duration) {
        let wake = Instant::now() + delay;
        loop {
            if self.done() {
                return;
            }
            let deadline = self.stop_deadline;
            tokio::select! {
                _ = tokio::time::sleep_until(wake) => return,
                Some(finished) = self.tasks.join_next_with_id(), if !self.tasks.is_empty() => {
                    self.on_finished(finished, None);
                }
                // Progress cannot be delivered without a stream, and is stale by the next.
                Some(_) = self.progress_rx.recv() => {}
                _ = self.shutdown.cancelled(), if deadline.is_none() => self.note_shutdown(),
                _ = sleep_until(deadline) => {}
            }
        }
    }

    fn on_message(&mut self, message: v1::CoordinatorMessage, outbound: &Outbound) {
        match message.msg {
            Some(CoordinatorMsg::Order(assignment)) => self.on_assignment(assignment, outbound),
            Some(CoordinatorMsg::Cancel(cancel)) => {
                if let Some(order) = self.running.get(&cancel.order_id) {
                    tracing::info!(order_id = %cancel.order_id, database = %order.database, "cancelling order");
                    order.cancel.cancel();
                } else if let Some(result) = self.outbox.get(&cancel.order_id) {
                    // Finished before the cancel arrived: the result is the answer.
                    send(outbound, AgentMsg::Result(result.clone()));
                } else {
                    tracing::debug!(order_id = %cancel.order_id, "cancel for an order this agent does not hold");
                }
            }
            Some(CoordinatorMsg::Ack(ack)) => {
                if self.outbox.remove(&ack.order_id).is_some() {
                    tracing::debug!(order_id = %ack.order_id, "result acknowledged");
                }
            }
            Some(CoordinatorMsg::Welcome(_)) | None => {
                tracing::debug!("ignoring an unexpected coordinator message");
            }
        }
    }

    fn on_assignment(&mut self, assignment: v1::OrderAssignment, outbound: &Outbound) {
        let order_id = assignment.order_id;
        if self.running.contains_key(&order_id) {
            tracing::debug!(order_id = %order_id, "order already running");
            return;
        }
        if let Some(result) = self.outbox.get(&order_id) {
            tracing::debug!(order_id = %order_id, "order already finished; sending its result again");
            send(outbound, AgentMsg::Result(result.clone()));
            return;
        }
        if self.finished.contains(&order_id) {
            // Its result was acknowledged: the coordinator has it. Running it again could
            // apply a migration twice or restore over newer data.
            tracing::info!(order_id = %order_id, "ignoring an assignment of an order this agent already finished and reported");
            return;
        }
        if self.stop_deadline.is_some() {
            // Left unanswered: the coordinator reconciles it from the next Hello.
            tracing::info!(order_id = %order_id, "not taking the order: agent is stopping");
            return;
        }
        if assignment.not_after_unix_ms > 0 && now_unix_ms() > assignment.not_after_unix_ms {
            let error = AgentError::InvalidOrder(format!(
                "its maintenance window closed at {} before this agent got it; it was not started",
                chrono::DateTime::from_timestamp_millis(assignment.not_after_unix_ms)
                    .map(|t| t.to_rfc3339())
                    .unwrap_or_default()
            ));
            tracing::warn!(order_id = %order_id, %error, "order refused");
            let result = failed_result(&order_id, &error);
            self.finish(order_id, result.clone());
            send(outbound, AgentMsg::Result(result));
            return;
        }
        let target = match self
            .ctx
            .order_target(&assignment.database, assignment.spec.as_ref())
        {
            Ok(target) => target,
            Err(error) => {
                tracing::warn!(order_id = %order_id, database = %assignment.database, %error, "order refused");
                let result = failed_result(&order_id, &error);
                self.finish(order_id, result.clone());
                send(outbound, AgentMsg::Result(result));
                return;
            }
        };
        send(
            outbound,
            AgentMsg::Started(v1::OrderStarted {
                order_id: order_id.clone(),
            }),
        );
        let database = target
            .as_ref()
            .map_or_else(|| assignment.database.clone(), |t| t.id.to_string());
        tracing::info!(order_id = %order_id, database = %database, attempt = assignment.attempt, "order started");
        let span = tracing::info_span!(
            "order",
            order_id = %order_id,
            agent = %self.ctx.config.name,
            database = %database,
            kind = order_kind(assignment.spec.as_ref()).map_or("unknown", |kind| kind.as_str()),
        );

        let cancel = self.shutdown.child_token();
        let progress = {
            let (tx, order_id) = (self.progress_tx.clone(), order_id.clone());
            ProgressReporter::new(move |update| {
                let _ = tx.send((order_id.clone(), update));
            })
        };
        let (ctx, spec, id, token) = (
            self.ctx.clone(),
            assignment.spec,
            order_id.clone(),
            cancel.clone(),
        );
        let task = self.tasks.spawn(
            async move { run_order(&ctx, target.as_ref(), &id, spec, &progress, &token).await }
                .instrument(span),
        );
        self.task_orders.insert(task.id(), order_id.clone());
        self.running
            .insert(order_id, RunningOrder { database, cancel });
    }

    /// Moves a finished order's result into the outbox and sends it when connected.
    fn on_finished(
        &mut self,
        finished: Result<(tokio::task::Id, v1::OrderResult), JoinError>,
        outbound: Option<&Outbound>,
    ) {
        let (task_id, result) = match finished {
            Ok((task_id, result)) => (task_id, Some(result)),
            Err(error) => (error.id(), None),
        };
        let Some(order_id) = self.task_orders.remove(&task_id) else {
            return;
        };
        let result = result.unwrap_or_else(|| v1::OrderResult {
            order_id: order_id.clone(),
            error: "the agent's executor crashed; see the agent log".to_owned(),
            ..v1::OrderResult::default()
        });
        let database = self
            .running
            .remove(&order_id)
            .map(|o| o.database)
            .unwrap_or_default();
        if result.success {
            tracing::info!(order_id = %order_id, database = %database, "order succeeded");
        } else if result.cancelled {
            tracing::info!(order_id = %order_id, database = %database, "order cancelled");
        } else {
            tracing::warn!(order_id = %order_id, database = %database, error = %result.error, "order failed");
        }
        if let Some(outbound) = outbound {
            send(outbound, AgentMsg::Result(result.clone()));
        }
        self.finish(order_id, result);
    }

    /// Keeps a finished order's result until it is acknowledged, and its id after that.
    fn finish(&mut self, order_id: String, result: v1::OrderResult) {
        self.finished.insert(order_id.clone());
        self.outbox.insert(order_id, result);
    }
}

/// The ids of the last orders finished, at most `capacity`, the oldest forgotten first.
#[derive(Debug)]
struct FinishedOrders {
    capacity: usize,
    order: VecDeque<String>,
    ids: HashSet<String>,
}

impl FinishedOrders {
    fn new(capacity: usize) -> Self {
        Self {
            capacity,
            order: VecDeque::new(),
            ids: HashSet::new(),
        }
    }

    fn contains(&self, order_id: &str) -> bool {
        self.ids.contains(order_id)
    }

    fn insert(&mut self, order_id: String) {
        if self.capacity == 0 || !self.ids.insert(order_id.clone()) {
            return;
        }
        self.order.push_back(order_id);
        while self.order.len() > self.capacity {
            if let Some(oldest) = self.order.pop_front() {
                self.ids.remove(&oldest);
            }
        }
    }
}

fn message(msg: AgentMsg) -> v1::AgentMessage {
    v1::AgentMessage { msg: Some(msg) }
}

/// Queues a message on the stream. A closed stream is noticed by the serve loop.
fn send(outbound: &Outbound, msg: AgentMsg) {
    let _ = outbound.send(message(msg));
}

/// Sleeps until `deadline`, or forever without one.
async fn sleep_until(deadline: Option<Instant>) {
    match deadline {
        Some(deadline) => tokio::time::sleep_until(deadline).await,
        None => std::future::pending().await,
    }
}

/// Ends our half of the stream and gives the last queued messages (results of cancelled
/// orders) a moment to reach the coordinator before the process exits.
async fn close(stream: Stream) {
    let Stream {
        outbound,
        mut inbound,
        health_reports,
        ..
    } = stream;
    // The health task holds a sender too: our half only ends once it has stopped.
    drop(health_reports);
    drop(outbound);
    let drain = async { while let Ok(Some(_)) = inbound.message().await {} };
    let _ = tokio::time::timeout(CLOSE_TIMEOUT, drain).await;
}

/// Sends the health of every configured database every `every`, the first right away, until
/// `stop` fires or the stream closes. Each database gets at most `every` (and at most
/// [`HEALTH_TIMEOUT`]), so one hung server delays neither the others nor the next report.
async fn report_health(
    ctx: Arc<AgentContext>,
    every: Duration,
    outbound: Outbound,
    stop: CancellationToken,
) {
    let timeout = every.min(HEALTH_TIMEOUT);
    let mut ticks = tokio::time::interval(every);
    ticks.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
    loop {
        let reports = tokio::select! {
            _ = stop.cancelled() => return,
            _ = ticks.tick() => tokio::select! {
                _ = stop.cancelled() => return,
                reports = health::collect_all(&ctx, timeout) => reports,
            },
        };
        if outbound.send(message(AgentMsg::Health(reports))).is_err() {
            return;
        }
    }
}

#[cfg(test)]
mod tests {
    use std::path::Path;

    use url::Url;

    use super::*;
    use crate::config::{AgentConfig, DatabaseConfig};

    fn context(repository: &Path) -> Arc<AgentContext> {
        // Port 1 on loopback refuses connections: a server that is down.
        let database = |name: &str| DatabaseConfig {
            name: name.to_owned(),
            url: format!("postgres://warden:s3cret@127.0.0.1:1/{name}"),
            labels: Default::default(),
            migrate: None,
        };
        let config = AgentConfig {
            name: "db1".to_owned(),
            repository: Url::from_file_path(repository)
                .expect("absolute path")
                .to_string(),
            databases: vec![database("app"), database("billing")],
            ..AgentConfig::default()
        };
        Arc::new(AgentContext::new(config).expect("context"))
    }

    #[test]
    fn hello_lists_migration_commands_but_never_their_environment() {
        let tmp = tempfile::tempdir().expect("tempdir");
        let mut config = context(tmp.path()).config.clone();
        config.databases[0].migrate = Some(crate::config::MigrateConfig {
            commands: std::collections::BTreeMap::from([(
                "artisan".to_owned(),
                vec!["php".to_owned(), "artisan".to_owned(), "migrate".to_owned()],
            )]),
            env: std::collections::BTreeMap::from([("APP_KEY".to_owned(), "t0ps3cret".to_owned())]),
            ..Default::default()
        });
        let ctx = Arc::new(AgentContext::new(config).expect("context"));
        let hello = Session::new(ctx, CancellationToken::new()).hello();
        assert_eq!(
            hello.databases[0].migrate_commands,
            [v1::MigrateCommand {
                name: "artisan".to_owned(),
                argv: vec!["php".to_owned(), "artisan".to_owned(), "migrate".to_owned()],
            }]
        );
        assert!(hello.databases[1].migrate_commands.is_empty());
        assert!(!format!("{hello:?}").contains("t0ps3cret"));
    }

    #[test]
    fn finished_orders_are_remembered_up_to_the_capacity_oldest_forgotten_first() {
        let mut finished = FinishedOrders::new(3);
        for id in ["o1", "o2", "o3", "o2"] {
            finished.insert(id.to_owned());
        }
        assert!(["o1", "o2", "o3"].iter().all(|id| finished.contains(id)));
        finished.insert("o4".to_owned());
        assert!(!finished.contains("o1"), "the oldest is forgotten");
        assert!(["o2", "o3", "o4"].iter().all(|id| finished.contains(id)));
        assert_eq!((finished.order.len(), finished.ids.len()), (3, 3));
        let mut nothing = FinishedOrders::new(0);
        nothing.insert("o1".to_owned());
        assert!(!nothing.contains("o1"));
    }

    #[tokio::test]
    async fn an_order_delivered_again_after_its_result_was_acknowledged_is_not_run_again() {
        let tmp = tempfile::tempdir().expect("tempdir");
        let mut session = Session::new(context(tmp.path()), CancellationToken::new());
        let (outbound, mut sent) = mpsc::unbounded_channel();
        let assignment = v1::OrderAssignment {
            order_id: "o-prune".to_owned(),
            database: "db1/app".to_owned(),
            attempt: 1,
            spec: Some(v1::OrderSpec {
                params: Some(v1::order_spec::Params::Prune(v1::PruneParams::default())),
            }),
            not_after_unix_ms: 0,
        };
        let drain = |sent: &mut mpsc::UnboundedReceiver<v1::AgentMessage>| {
            let mut got = Vec::new();
            while let Ok(message) = sent.try_recv() {
                got.push(match message.msg {
                    Some(AgentMsg::Started(_)) => "started",
                    Some(AgentMsg::Result(_)) => "result",
                    _ => "other",
                });
            }
            got
        };

        session.on_assignment(assignment.clone(), &outbound);
        // Delivered again while it runs: not started twice.
        session.on_assignment(assignment.clone(), &outbound);
        assert_eq!(session.tasks.len(), 1);
        let finished =
            tokio::time::timeout(Duration::from_secs(10), session.tasks.join_next_with_id())
                .await
                .expect("the prune finishes")
                .expect("a task");
        session.on_finished(finished, Some(&outbound));
        assert_eq!(drain(&mut sent), ["started", "result"]);

        // Delivered again before the acknowledgement: its result is sent again.
        session.on_assignment(assignment.clone(), &outbound);
        assert_eq!(drain(&mut sent), ["result"]);

        // Delivered again after it: the coordinator has the result; nothing happens.
        session.on_message(
            v1::CoordinatorMessage {
                msg: Some(CoordinatorMsg::Ack(v1::ResultAck {
                    order_id: "o-prune".to_owned(),
                })),
            },
            &outbound,
        );
        assert!(session.outbox.is_empty());
        session.on_assignment(assignment, &outbound);
        assert!(session.tasks.is_empty() && session.running.is_empty());
        assert!(session.outbox.is_empty());
        assert_eq!(drain(&mut sent), Vec::<&str>::new());
    }

    #[tokio::test]
    async fn health_reports_start_at_once_repeat_and_stop_with_the_stream() {
        let tmp = tempfile::tempdir().expect("tempdir");
        let (outbound, mut sent) = mpsc::unbounded_channel();
        let stop = CancellationToken::new();
        let every = Duration::from_secs(1);
        let started = Instant::now();
        let task = tokio::spawn(report_health(
            context(tmp.path()),
            every,
            outbound,
            stop.clone(),
        ));

        for round in 0..2 {
            let message = tokio::time::timeout(Duration::from_secs(10), sent.recv())
                .await
                .expect("a report in time")
                .expect("the task is still sending");
            let Some(AgentMsg::Health(reports)) = message.msg else {
                panic!("expected health reports, got {message:?}");
            };
            let names: Vec<&str> = reports
                .databases
                .iter()
                .map(|d| d.database.as_str())
                .collect();
            assert_eq!(names, ["app", "billing"]);
            for database in &reports.databases {
                assert!(database.report.is_none());
                assert!(
                    database.error.contains("cannot connect to db1/"),
                    "{}",
                    database.error
                );
                assert!(!database.error.contains("s3cret"), "{}", database.error);
            }
            if round == 0 {
                assert!(
                    started.elapsed() < every,
                    "the first report comes right away"
                );
            }
        }
        stop.cancel();
        tokio::time::timeout(Duration::from_secs(5), task)
            .await
            .expect("the task stops")
            .expect("no panic");
        assert!(sent.recv().await.is_none(), "its sender is gone with it");
    }
}
