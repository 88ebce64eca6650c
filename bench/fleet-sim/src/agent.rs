//! One simulated agent: its own HTTP/2 connection and `AgentService.Connect` stream to the
//! coordinator, opened, kept and reopened the way a real agent's session does it
//! (`agent/src/session.rs`): `Hello` first, `Welcome` back, heartbeats at the interval the
//! `Welcome` names, health reports when it asks for them, and `Started` then the result for
//! every order. Orders are answered at once with a result the coordinator accepts (a backup
//! reports an artifact and its manifest), and the moment each order arrives is recorded in
//! the [`Fleet`], which the benchmark reads its dispatch latencies from.

use std::collections::HashMap;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::{Arc, Mutex, OnceLock};
use std::time::Duration;

use backon::BackoffBuilder;
use tokio::sync::{Semaphore, mpsc};
use tokio::time::Instant;
use tokio_stream::wrappers::UnboundedReceiverStream;
use tokio_util::sync::CancellationToken;
use tonic::Streaming;
use warden_agent::AgentError;
use warden_agent::error::error_chain;
use warden_agent::orders::{failed_result, order_kind};
use warden_agent::repository::Repository;
use warden_agent::session::endpoint;
use warden_proto::v1;
use warden_proto::v1::agent_message::Msg as AgentMsg;
use warden_proto::v1::agent_service_client::AgentServiceClient;
use warden_proto::v1::coordinator_message::Msg as CoordinatorMsg;
use warden_proto::v1::order_result::Outcome;
use warden_proto::v1::order_spec::Params;
use warden_shared::manifest::{ArtifactFile, DUMP_FILE, MANIFEST_FORMAT};
use warden_shared::{ArtifactManifest, OrderKind, now_unix_ms};

const WELCOME_TIMEOUT: Duration = Duration::from_secs(10);
/// Heartbeat interval if the coordinator's `Welcome` does not name one (as a real agent).
const DEFAULT_HEARTBEAT: Duration = Duration::from_secs(2);

/// The repository simulated agents report: nothing is ever written there.
const REPOSITORY: &str = "file:///var/lib/warden-fleet-sim/repository";
/// sha256 of no bytes: a simulated dump is empty.
const EMPTY_SHA256: &str = "e3b0c44298fc1c149afbf4c8996fb92427ae41e4649b934ca495991b7852b855";
const SERVER_VERSION: &str = "16.4 (warden-fleet-sim)";
const SERVER_VERSION_NUM: u32 = 160_004;

/// What the whole simulated fleet shares: session counts, problems, and when each order
/// arrived.
#[derive(Default)]
pub struct Fleet {
    /// Agents whose stream is open and welcomed now.
    connected: AtomicUsize,
    /// Streams that ended while the benchmark ran (each one a reconnect).
    sessions_lost: AtomicUsize,
    /// Attempts to open a session that failed (connect, Hello or Welcome).
    open_failures: AtomicUsize,
    /// The last problem seen, for the report.
    last_problem: Mutex<Option<String>>,
    /// The session settings of the first `Welcome`.
    welcome: OnceLock<v1::Welcome>,
    /// Order id -> when it first arrived and how often.
    deliveries: Mutex<HashMap<String, Delivery>>,
}

/// When an order first reached its agent, and how many times it did.
#[derive(Debug, Clone, Copy)]
pub struct Delivery {
    pub first: Instant,
    pub count: u32,
}

/// Counts of the fleet's sessions, for the report.
#[derive(Debug, Clone, serde::Serialize)]
pub struct SessionCounts {
    pub connected: usize,
    pub sessions_lost: usize,
    pub open_failures: usize,
    pub last_problem: Option<String>,
}

impl Fleet {
    /// Returns how many agents have a welcomed stream now.
    pub fn connected(&self) -> usize {
        self.connected.load(Ordering::Relaxed)
    }

    /// Returns the session settings the coordinator gave, once an agent was welcomed.
    pub fn welcome(&self) -> Option<v1::Welcome> {
        self.welcome.get().copied()
    }

    pub fn sessions(&self) -> SessionCounts {
        SessionCounts {
            connected: self.connected(),
            sessions_lost: self.sessions_lost.load(Ordering::Relaxed),
            open_failures: self.open_failures.load(Ordering::Relaxed),
            last_problem: lock(&self.last_problem).clone(),
        }
    }

    /// Returns when each of `order_ids` arrived, `None` for one that has not.
    pub fn deliveries_of(&self, order_ids: &[String]) -> Vec<Option<Delivery>> {
        let deliveries = lock(&self.deliveries);
        order_ids
            .iter()
            .map(|id| deliveries.get(id).copied())
            .collect()
    }

    /// Returns how many distinct orders have arrived in all.
    pub fn orders_received(&self) -> usize {
        lock(&self.deliveries).len()
    }

    fn record_delivery(&self, order_id: &str, at: Instant) {
        lock(&self.deliveries)
            .entry(order_id.to_owned())
            .and_modify(|d| d.count += 1)
            .or_insert(Delivery {
                first: at,
                count: 1,
            });
    }

    fn note_problem(&self, counter: &AtomicUsize, problem: String) {
        counter.fetch_add(1, Ordering::Relaxed);
        *lock(&self.last_problem) = Some(problem);
    }
}

/// Every critical section is one map or field update: a panic cannot leave it half done.
fn lock<T>(mutex: &Mutex<T>) -> std::sync::MutexGuard<'_, T> {
    mutex
        .lock()
        .unwrap_or_else(std::sync::PoisonError::into_inner)
}

/// One simulated agent's identity and inventory.
#[derive(Debug, Clone)]
pub struct SimAgent {
    pub name: String,
    pub databases: Vec<String>,
}

impl SimAgent {
    /// The `Hello` a real agent with this name and these databases sends.
    fn hello(&self) -> v1::Hello {
        v1::Hello {
            agent: self.name.clone(),
            version: env!("CARGO_PKG_VERSION").to_owned(),
            labels: HashMap::from([("sim".to_owned(), "fleet".to_owned())]),
            databases: self
                .databases
                .iter()
                .map(|name| v1::DatabaseInfo {
                    name: name.clone(),
                    ..v1::DatabaseInfo::default()
                })
                .collect(),
            running_order_ids: Vec::new(),
            unacknowledged_results: Vec::new(),
            repository: REPOSITORY.to_owned(),
        }
    }
}

/// Runs one agent until `stop`: opens its session (holding one of `connects` while it
/// connects, so the fleet dials in at a bounded rate, as a real fleet spread over time
/// does), serves it, and reopens it with the real agent's backoff whenever it ends.
pub async fn run(
    agent: SimAgent,
    url: String,
    fleet: Arc<Fleet>,
    connects: Arc<Semaphore>,
    stop: CancellationToken,
) {
    let mut backoff = warden_shared::retry::reconnect_backoff().build();
    loop {
        let opened = tokio::select! {
            opened = async {
                let _permit = connects.acquire().await;
                open(&agent, &url).await
            } => opened,
            () = stop.cancelled() => return,
        };
        match opened {
            Ok((outbound, inbound, welcome)) => {
                backoff = warden_shared::retry::reconnect_backoff().build();
                let _ = fleet.welcome.set(welcome);
                fleet.connected.fetch_add(1, Ordering::Relaxed);
                let why = serve(&agent, &fleet, outbound, inbound, welcome, &stop).await;
                fleet.connected.fetch_sub(1, Ordering::Relaxed);
                if stop.is_cancelled() {
                    return;
                }
                fleet.note_problem(&fleet.sessions_lost, format!("{}: {why}", agent.name));
            }
            Err(why) => fleet.note_problem(&fleet.open_failures, format!("{}: {why}", agent.name)),
        }
        let delay = backoff.next().unwrap_or(Duration::from_secs(5));
        tokio::select! {
            () = tokio::time::sleep(delay) => {}
            () = stop.cancelled() => return,
        }
    }
}

type Outbound = mpsc::UnboundedSender<v1::AgentMessage>;

/// Connects on a connection of its own, says `Hello` and waits for `Welcome`.
async fn open(
    agent: &SimAgent,
    url: &str,
) -> Result<(Outbound, Streaming<v1::CoordinatorMessage>, v1::Welcome), String> {
    let channel = endpoint(url)
        .map_err(|e| format!("invalid coordinator URL {url:?}: {e}"))?
        .connect()
        .await
        .map_err(|e| format!("cannot connect to {url}: {}", error_chain(&e)))?;
    let (outbound, requests) = mpsc::unbounded_channel();
    send(&outbound, AgentMsg::Hello(agent.hello()));
    let handshake = async {
        let mut inbound = AgentServiceClient::new(channel)
            .connect(UnboundedReceiverStream::new(requests))
            .await
            .map_err(|status| format!("Connect refused: {}", status.message()))?
            .into_inner();
        match inbound.message().await {
            Ok(Some(v1::CoordinatorMessage {
                msg: Some(CoordinatorMsg::Welcome(welcome)),
            })) => Ok((inbound, welcome)),
            Ok(other) => Err(format!("expected Welcome first, got {other:?}")),
            Err(status) => Err(format!(
                "stream failed before Welcome: {}",
                status.message()
            )),
        }
    };
    let (inbound, welcome) = tokio::time::timeout(WELCOME_TIMEOUT, handshake)
        .await
        .map_err(|_| format!("no Welcome within {WELCOME_TIMEOUT:?}"))??;
    Ok((outbound, inbound, welcome))
}

/// Serves one stream until it ends or `stop`; returns why it ended.
async fn serve(
    agent: &SimAgent,
    fleet: &Fleet,
    outbound: Outbound,
    mut inbound: Streaming<v1::CoordinatorMessage>,
    welcome: v1::Welcome,
    stop: &CancellationToken,
) -> String {
    let every = match welcome.heartbeat_interval_ms {
        0 => DEFAULT_HEARTBEAT,
        ms => Duration::from_millis(ms),
    };
    let mut heartbeat = tokio::time::interval_at(Instant::now() + every, every);
    heartbeat.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
    // A real agent reports health right away, then every health interval (0: never).
    let mut health = (welcome.health_interval_ms > 0).then(|| {
        let mut ticks = tokio::time::interval(Duration::from_millis(welcome.health_interval_ms));
        ticks.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
        ticks
    });
    loop {
        tokio::select! {
            received = inbound.message() => match received {
                Ok(Some(message)) => on_message(agent, fleet, message, &outbound),
                Ok(None) => return "the coordinator closed the stream".to_owned(),
                Err(status) => return format!("stream error: {}", status.message()),
            },
            _ = heartbeat.tick() => {
                send(&outbound, AgentMsg::Heartbeat(v1::Heartbeat { sent_unix_ms: now_unix_ms() }));
            }
            () = next_tick(health.as_mut()) => send(&outbound, AgentMsg::Health(health_reports(agent))),
            () = stop.cancelled() => return "the benchmark is over".to_owned(),
        }
    }
}

/// Waits for the next tick, or forever without an interval.
async fn next_tick(interval: Option<&mut tokio::time::Interval>) {
    match interval {
        Some(interval) => {
            interval.tick().await;
        }
        None => std::future::pending().await,
    }
}

/// Records an order's arrival first, then answers it at once: `Started`, then its result.
fn on_message(
    agent: &SimAgent,
    fleet: &Fleet,
    message: v1::CoordinatorMessage,
    outbound: &Outbound,
) {
    let Some(CoordinatorMsg::Order(assignment)) = message.msg else {
        // Acks need no answer, cancels come too late for orders that finish at once, and a
        // second Welcome is not sent on one stream.
        return;
    };
    fleet.record_delivery(&assignment.order_id, Instant::now());
    send(
        outbound,
        AgentMsg::Started(v1::OrderStarted {
            order_id: assignment.order_id.clone(),
        }),
    );
    send(outbound, AgentMsg::Result(answer(agent, &assignment)));
}

/// The result a real agent reports for the order when all went well; orders the simulator
/// cannot pretend to run (restores, drills, migrations, prunes) fail with a reason.
fn answer(agent: &SimAgent, assignment: &v1::OrderAssignment) -> v1::OrderResult {
    let params = assignment.spec.as_ref().and_then(|s| s.params.as_ref());
    let outcome = match params {
        Some(Params::Backup(backup)) => {
            backup_outcome(agent, assignment, backup).map(Outcome::Backup)
        }
        Some(Params::Health(_)) => Ok(Outcome::Health(healthy_report())),
        _ => Err(format!(
            "the fleet simulator answers backups and health checks only, not {}",
            order_kind(assignment.spec.as_ref())
                .map_or("an order without a spec", OrderKind::as_str)
        )),
    };
    match outcome {
        Ok(outcome) => v1::OrderResult {
            order_id: assignment.order_id.clone(),
            success: true,
            outcome: Some(outcome),
            ..v1::OrderResult::default()
        },
        Err(why) => failed_result(&assignment.order_id, &AgentError::InvalidOrder(why)),
    }
}

/// A committed artifact as a real backup reports it: its path in the repository and its
/// manifest (an empty dump of a database without tables), verified when asked to be.
fn backup_outcome(
    agent: &SimAgent,
    assignment: &v1::OrderAssignment,
    params: &v1::BackupParams,
) -> Result<v1::BackupOutcome, String> {
    let artifact_id = uuid::Uuid::now_v7().to_string();
    let now = now_unix_ms();
    let manifest = ArtifactManifest {
        format: MANIFEST_FORMAT,
        artifact_id: artifact_id.clone(),
        agent: agent.name.clone(),
        database: assignment.database.clone(),
        order_id: assignment.order_id.clone(),
        trigger: params.trigger.clone(),
        server_version: SERVER_VERSION.to_owned(),
        server_version_num: SERVER_VERSION_NUM,
        pg_dump_version: format!("pg_dump (PostgreSQL) {SERVER_VERSION}"),
        dump: ArtifactFile {
            name: DUMP_FILE.to_owned(),
            size_bytes: 0,
            raw_bytes: 0,
            sha256: EMPTY_SHA256.to_owned(),
        },
        globals: None,
        globals_error: Some("simulated agent: no globals dumped".to_owned()),
        tables: Vec::new(),
        started_unix_ms: now,
        finished_unix_ms: now,
        timings_ms: Default::default(),
        encryption: None,
    };
    let manifest_json =
        serde_json::to_string(&manifest).map_err(|e| format!("cannot write the manifest: {e}"))?;
    Ok(v1::BackupOutcome {
        artifact_path: Repository::artifact_path(&agent.name, &artifact_id),
        artifact_id,
        manifest_json,
        verified: params.verify,
    })
}

/// A healthy primary that answered at once.
fn healthy_report() -> v1::HealthReport {
    v1::HealthReport {
        connected: true,
        latency_ms: 1,
        server_version: SERVER_VERSION.to_owned(),
        database_size_bytes: 8 << 20,
        connections_used: 1,
        connections_max: 100,
        replication_role: "primary".to_owned(),
        ..v1::HealthReport::default()
    }
}

fn health_reports(agent: &SimAgent) -> v1::HealthReports {
    v1::HealthReports {
        collected_unix_ms: now_unix_ms(),
        repository: None,
        databases: agent
            .databases
            .iter()
            .map(|database| v1::DatabaseHealth {
                database: database.clone(),
                report: Some(healthy_report()),
                error: String::new(),
            })
            .collect(),
    }
}

/// Queues a message on the stream; a closed stream is noticed when it ends.
fn send(outbound: &Outbound, msg: AgentMsg) {
    let _ = outbound.send(v1::AgentMessage { msg: Some(msg) });
}

#[cfg(test)]
mod tests {
    use super::*;

    fn agent() -> SimAgent {
        SimAgent {
            name: "sim-00001".to_owned(),
            databases: vec!["db0".to_owned(), "db1".to_owned()],
        }
    }

    fn assignment(params: Params) -> v1::OrderAssignment {
        v1::OrderAssignment {
            order_id: "0193a5b2-7c1e-7000-8000-000000000001".to_owned(),
            database: "db1".to_owned(),
            attempt: 1,
            spec: Some(v1::OrderSpec {
                params: Some(params),
            }),
            not_after_unix_ms: 0,
        }
    }

    #[test]
    fn a_backup_reports_an_artifact_whose_manifest_names_it() {
        let result = answer(
            &agent(),
            &assignment(Params::Backup(v1::BackupParams {
                trigger: "manual".to_owned(),
                verify: true,
            })),
        );
        assert!(result.success, "{}", result.error);
        let Some(Outcome::Backup(backup)) = result.outcome else {
            panic!("a backup outcome: {result:?}");
        };
        let manifest: ArtifactManifest =
            serde_json::from_str(&backup.manifest_json).expect("the manifest parses");
        assert_eq!(manifest.artifact_id, backup.artifact_id);
        assert!(uuid::Uuid::parse_str(&backup.artifact_id).is_ok());
        assert_eq!(
            backup.artifact_path,
            format!("sim-00001/{}", backup.artifact_id)
        );
        assert_eq!(
            (manifest.agent.as_str(), manifest.database.as_str()),
            ("sim-00001", "db1")
        );
        assert_eq!(manifest.order_id, result.order_id);
        assert!(backup.verified, "a backup asked to verify says it did");
    }

    #[test]
    fn orders_it_cannot_pretend_to_run_fail_with_their_kind() {
        let result = answer(
            &agent(),
            &assignment(Params::Prune(v1::PruneParams::default())),
        );
        assert!(!result.success);
        assert!(result.error.contains("not prune"), "{}", result.error);
        let health = answer(&agent(), &assignment(Params::Health(v1::HealthParams {})));
        assert!(matches!(health.outcome, Some(Outcome::Health(ref r)) if r.connected));
    }

    #[test]
    fn an_order_delivered_twice_is_counted_twice_from_its_first_arrival() {
        let fleet = Fleet::default();
        let first = Instant::now();
        fleet.record_delivery("o1", first);
        fleet.record_delivery("o1", first + Duration::from_millis(5));
        let got = fleet.deliveries_of(&["o1".to_owned(), "o2".to_owned()]);
        let delivered = got[0].expect("o1 arrived");
        assert_eq!((delivered.first, delivered.count), (first, 2));
        assert!(got[1].is_none());
        assert_eq!(fleet.orders_received(), 1);
    }
}
