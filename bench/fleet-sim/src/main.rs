//! `warden-fleet-sim`: the agent simulator of the coordinator-scale benchmark
//! (`bench/coordinator.sh`, see BENCHMARKS.md).
//!
//! It runs a whole fleet of simulated agents in one process, each on its own gRPC connection
//! to a real coordinator, and measures what one coordinator carrying that fleet costs:
//!
//! 1. registration: every agent connects and says `Hello` (at most `--connect-concurrency`
//!    dialling at once); timed until the coordinator's own view (`ListAgents`) shows them
//!    all online;
//! 2. idle: after `--settle`, the coordinator's CPU over `--idle` while agents only
//!    heartbeat;
//! 3. dispatch: `--orders` backups of distinct databases submitted at once through the
//!    admin API (`SubmitBackup`, as `warden backup` does), each timed from just before its
//!    call to the moment its agent received the order; then how long until they all
//!    succeeded;
//!
//! and the coordinator's resident memory (now and its peak) after each phase. The figures
//! are written as one JSON document (`--out`, default stdout); progress goes to stderr.

mod agent;
mod procfs;

use std::collections::HashMap;
use std::path::PathBuf;
use std::sync::Arc;
use std::time::Duration;

use anyhow::{Context, bail};
use clap::Parser;
use serde::Serialize;
use tokio::sync::Semaphore;
use tokio::task::JoinSet;
use tokio::time::Instant;
use tokio_util::sync::CancellationToken;
use tonic::transport::Endpoint;
use warden_proto::auth::{AdminClient as Admin, Bearer};
use warden_proto::v1;
use warden_proto::v1::admin_service_client::AdminServiceClient;

use warden_agent::error::error_chain;

use crate::agent::{Fleet, SessionCounts, SimAgent};
use crate::procfs::{CpuSample, Memory};

#[derive(Debug, Parser)]
#[command(
    name = "warden-fleet-sim",
    version,
    about = "Simulates a fleet of Warden agents against a real coordinator and measures it"
)]
struct Args {
    /// The coordinator's gRPC URL.
    #[arg(long)]
    coordinator: String,
    /// The coordinator's process id, whose CPU time and memory are read from /proc.
    #[arg(long)]
    coordinator_pid: u32,
    /// Simulated agents, each on its own connection.
    #[arg(long, default_value_t = 10_000)]
    agents: usize,
    /// Databases each agent reports.
    #[arg(long, default_value_t = 5)]
    dbs_per_agent: usize,
    /// Backups submitted at once, each of a different database.
    #[arg(long, default_value_t = 5_000)]
    orders: usize,
    /// How long idle CPU is measured, e.g. 30s.
    #[arg(long, default_value = "30s", value_parser = humantime::parse_duration)]
    idle: Duration,
    /// How long to wait after registration before measuring idle CPU, e.g. 5s.
    #[arg(long, default_value = "5s", value_parser = humantime::parse_duration)]
    settle: Duration,
    /// Agents dialling in at the same time.
    #[arg(long, default_value_t = 256)]
    connect_concurrency: usize,
    /// Longest wait for every agent to be shown online.
    #[arg(long, default_value = "180s", value_parser = humantime::parse_duration)]
    register_timeout: Duration,
    /// Longest wait for every order to arrive, and then to succeed.
    #[arg(long, default_value = "120s", value_parser = humantime::parse_duration)]
    order_timeout: Duration,
    /// Agents are named PREFIX-00000, PREFIX-00001, ...
    #[arg(long, default_value = "sim")]
    prefix: String,
    /// Where the JSON results go (default: stdout).
    #[arg(long)]
    out: Option<PathBuf>,
}

/// How often the coordinator's view is polled while waiting.
const POLL_EVERY: Duration = Duration::from_millis(500);
/// Submissions sharing one admin connection: under the HTTP/2 stream limit of a server
/// (hyper's default is 200), so no call waits for a stream before it is even sent.
const CALLS_PER_ADMIN_CONNECTION: usize = 100;
/// Order lookups in flight at once while waiting for the orders to succeed.
const LOOKUPS_IN_FLIGHT: usize = 64;

#[derive(Debug, Serialize)]
struct Results {
    agents: usize,
    dbs_per_agent: usize,
    databases: usize,
    /// Session settings the coordinator gave (`Welcome`).
    heartbeat_interval_ms: u64,
    lease_ms: u64,
    health_interval_ms: u64,
    connect_concurrency: usize,
    registration: Registration,
    idle: Idle,
    dispatch: Dispatch,
    memory: MemoryPhases,
    sessions: SessionCounts,
}

#[derive(Debug, Serialize)]
struct Registration {
    /// Agents the coordinator showed online when the wait ended.
    registered: usize,
    /// From the first dial to `ListAgents` showing every agent online; `None` when that
    /// never happened within `--register-timeout`.
    seconds: Option<f64>,
    /// From the first dial to the last agent's `Welcome`, as the simulator saw it.
    last_welcome_seconds: Option<f64>,
    /// The coordinator's CPU meanwhile, in cores.
    coordinator_cpu_cores: f64,
}

#[derive(Debug, Serialize)]
struct Idle {
    seconds: f64,
    coordinator_cpu_cores: f64,
    /// The simulator's own CPU meanwhile: it shares the machine with the coordinator.
    simulator_cpu_cores: f64,
    /// Agents still connected at the end of the idle period.
    connected: usize,
}

#[derive(Debug, Serialize)]
struct Dispatch {
    orders: usize,
    /// Submissions the coordinator accepted.
    accepted: usize,
    rejected: usize,
    first_rejection: Option<String>,
    /// Accepted orders that reached their agent.
    received: usize,
    /// Accepted orders that reached their agent more than once.
    received_more_than_once: usize,
    /// Accepted orders that never reached their agent within `--order-timeout`.
    missing: usize,
    /// Orders agents received that were not among the accepted submissions.
    unexpected: usize,
    /// Submitted (just before the call) to received by the agent, in milliseconds.
    latency_ms: Option<Latency>,
    /// The same, in three legs.
    breakdown_ms: Breakdown,
    /// From the first submission to the last answer of the admin API.
    submit_seconds: f64,
    /// From the first submission to the last order's arrival.
    all_received_seconds: Option<f64>,
    /// Accepted orders the coordinator recorded as succeeded (the agents' results taken).
    succeeded: usize,
    /// From the first submission until every accepted order succeeded.
    all_succeeded_seconds: Option<f64>,
    /// From the first submission until every order succeeded and its audit was read.
    coordinator_cpu_cores: f64,
    /// The burst, from the first submission until every order arrived (or the wait for
    /// them ended), on each side of the machine.
    burst: Burst,
}

/// CPU during the burst, in cores: the server under test and the simulator share the machine.
#[derive(Debug, Serialize)]
struct Burst {
    seconds: f64,
    coordinator_cpu_cores: f64,
    simulator_cpu_cores: f64,
}

/// Where the dispatch latency goes, on the one wall clock the coordinator and the simulator
/// share (milliseconds; the coordinator stamps whole milliseconds).
#[derive(Debug, Serialize)]
struct Breakdown {
    /// From the call to the coordinator creating the order: the simulator's and the
    /// coordinator's gRPC stacks, and waiting for a runtime thread.
    to_coordinator: Option<Latency>,
    /// From that to the dispatch pass deciding it (its audit event `order.dispatched`):
    /// waiting for and running the dispatcher's rounds.
    in_coordinator: Option<Latency>,
    /// From that to the agent receiving it: the commit, the session's outbox, both gRPC
    /// stacks.
    to_agent: Option<Latency>,
}

impl Breakdown {
    fn of(
        clock: &WallClock,
        accepted: &[(Instant, String, i64)],
        deliveries: &[Option<agent::Delivery>],
        decided: &HashMap<String, i64>,
    ) -> Self {
        let (mut to_coordinator, mut in_coordinator, mut to_agent) =
            (Vec::new(), Vec::new(), Vec::new());
        for ((sent, id, created), delivery) in accepted.iter().zip(deliveries) {
            let (Some(delivery), Some(&decided)) = (delivery, decided.get(id)) else {
                continue;
            };
            let (created, decided) = (*created as f64, decided as f64);
            to_coordinator.push(created - clock.unix_ms(*sent));
            in_coordinator.push(decided - created);
            to_agent.push(clock.unix_ms(delivery.first) - decided);
        }
        Self {
            to_coordinator: latency(&mut to_coordinator),
            in_coordinator: latency(&mut in_coordinator),
            to_agent: latency(&mut to_agent),
        }
    }
}

/// Converts [`Instant`]s to Unix milliseconds.
struct WallClock {
    at: Instant,
    unix_ms: f64,
}

impl WallClock {
    fn now() -> Self {
        let unix = std::time::SystemTime::now()
            .duration_since(std::time::UNIX_EPOCH)
            .unwrap_or_default();
        Self {
            at: Instant::now(),
            unix_ms: unix.as_secs_f64() * 1000.0,
        }
    }

    fn unix_ms(&self, instant: Instant) -> f64 {
        if instant >= self.at {
            self.unix_ms + instant.duration_since(self.at).as_secs_f64() * 1000.0
        } else {
            self.unix_ms - self.at.duration_since(instant).as_secs_f64() * 1000.0
        }
    }
}

/// When each order was dispatched, from the audit log: order id to `at_unix_ms` of its
/// first `order.dispatched` event.
async fn decided_at(client: &mut Admin) -> anyhow::Result<HashMap<String, i64>> {
    const PAGE: u32 = 10_000;
    let mut decided = HashMap::new();
    let mut after_seq = 0;
    loop {
        let events = client
            .list_audit(v1::ListAuditRequest {
                after_seq,
                limit: PAGE,
            })
            .await
            .context("reading the audit log")?
            .into_inner()
            .events;
        let Some(last) = events.last() else {
            return Ok(decided);
        };
        after_seq = last.seq;
        for event in events.iter().filter(|e| e.action == "order.dispatched") {
            let params: serde_json::Value =
                serde_json::from_str(&event.params_json).unwrap_or_default();
            if let Some(id) = params["order_id"].as_str() {
                decided.entry(id.to_owned()).or_insert(event.at_unix_ms);
            }
        }
    }
}

#[derive(Debug, Serialize)]
struct Latency {
    p50: f64,
    p90: f64,
    p99: f64,
    max: f64,
}

#[derive(Debug, Serialize)]
struct MemoryPhases {
    after_registration: Memory,
    after_idle: Memory,
    after_dispatch: Memory,
}

fn say(text: impl AsRef<str>) {
    eprintln!("[fleet-sim] {}", text.as_ref());
}

#[tokio::main]
async fn main() -> anyhow::Result<()> {
    let args = Args::parse();
    let databases = args.agents * args.dbs_per_agent;
    if args.agents == 0 || args.dbs_per_agent == 0 {
        bail!("--agents and --dbs-per-agent must be at least 1");
    }
    if args.orders > databases {
        bail!(
            "--orders {} is more than the {databases} databases of the fleet ({} agents x {}): every order backs up a database of its own",
            args.orders,
            args.agents,
            args.dbs_per_agent
        );
    }
    let pid = args.coordinator_pid.to_string();
    Memory::take(&pid).with_context(|| {
        format!("cannot measure the coordinator: is --coordinator-pid {pid} its running process?")
    })?;
    let admin = admin_client(&args.coordinator).await?;

    let fleet = Arc::new(Fleet::default());
    let stop = CancellationToken::new();
    let agents = sim_agents(&args);
    let registration = register(&args, &admin, &fleet, &stop, &agents, &pid).await?;
    let after_registration = Memory::take(&pid)?;

    tokio::time::sleep(args.settle).await;
    let idle = measure_idle(&args, &fleet, &pid).await?;
    let after_idle = Memory::take(&pid)?;

    let dispatch = dispatch(&args, &fleet, &agents, &pid).await?;
    let after_dispatch = Memory::take(&pid)?;

    let welcome = fleet.welcome().unwrap_or_default();
    let results = Results {
        agents: args.agents,
        dbs_per_agent: args.dbs_per_agent,
        databases,
        heartbeat_interval_ms: welcome.heartbeat_interval_ms,
        lease_ms: welcome.lease_ms,
        health_interval_ms: welcome.health_interval_ms,
        connect_concurrency: args.connect_concurrency,
        registration,
        idle,
        dispatch,
        memory: MemoryPhases {
            after_registration,
            after_idle,
            after_dispatch,
        },
        sessions: fleet.sessions(),
    };
    stop.cancel();
    let json = serde_json::to_string_pretty(&results)?;
    match &args.out {
        Some(path) => std::fs::write(path, json + "\n")
            .with_context(|| format!("cannot write {}", path.display()))?,
        None => println!("{json}"),
    }
    Ok(())
}

async fn admin_client(url: &str) -> anyhow::Result<Admin> {
    // The operator token of `WARDEN_TOKEN` goes on every call.
    let token = match std::env::var("WARDEN_TOKEN") {
        Ok(secret) => Bearer::new(&secret).context("WARDEN_TOKEN is not a token")?,
        Err(_) => Bearer::none(),
    };
    let channel = Endpoint::from_shared(url.to_owned())
        .with_context(|| format!("invalid coordinator URL {url:?}"))?
        .connect()
        .await
        .map_err(|e| {
            anyhow::anyhow!(
                "cannot connect to the coordinator at {url}: {}",
                error_chain(&e)
            )
        })?;
    Ok(AdminServiceClient::with_interceptor(channel, token))
}

fn sim_agents(args: &Args) -> Vec<SimAgent> {
    (0..args.agents)
        .map(|i| SimAgent {
            name: agent_name(&args.prefix, i),
            databases: (0..args.dbs_per_agent).map(|j| format!("db{j}")).collect(),
        })
        .collect()
}

fn agent_name(prefix: &str, index: usize) -> String {
    format!("{prefix}-{index:05}")
}

/// Starts every agent and waits until the coordinator shows them all online.
async fn register(
    args: &Args,
    admin: &Admin,
    fleet: &Arc<Fleet>,
    stop: &CancellationToken,
    agents: &[SimAgent],
    pid: &str,
) -> anyhow::Result<Registration> {
    say(format!(
        "connecting {} agents with {} databases each, {} dialling at once",
        args.agents, args.dbs_per_agent, args.connect_concurrency
    ));
    let connects = Arc::new(Semaphore::new(args.connect_concurrency.max(1)));
    let cpu_before = CpuSample::take(pid)?;
    let started = Instant::now();
    for sim in agents {
        tokio::spawn(agent::run(
            sim.clone(),
            args.coordinator.clone(),
            fleet.clone(),
            connects.clone(),
            stop.clone(),
        ));
    }
    let deadline = started + args.register_timeout;
    let mut last_welcome = None;
    let (registered, seconds) = loop {
        if last_welcome.is_none() && fleet.connected() == args.agents {
            last_welcome = Some(started.elapsed().as_secs_f64());
        }
        let registered = online_agents(admin, &args.prefix).await?;
        if registered == args.agents {
            break (registered, Some(started.elapsed().as_secs_f64()));
        }
        if Instant::now() >= deadline {
            let sessions = fleet.sessions();
            say(format!(
                "only {registered} of {} agents online after {:?} ({} welcomed; last problem: {})",
                args.agents,
                args.register_timeout,
                sessions.connected,
                sessions.last_problem.as_deref().unwrap_or("none")
            ));
            break (registered, None);
        }
        tokio::time::sleep(POLL_EVERY).await;
    };
    let coordinator_cpu_cores = CpuSample::take(pid)?.cores_since(&cpu_before);
    if let Some(seconds) = seconds {
        say(format!(
            "{registered} agents online after {seconds:.1} s (coordinator CPU {coordinator_cpu_cores:.2} cores)"
        ));
    }
    Ok(Registration {
        registered,
        seconds,
        last_welcome_seconds: last_welcome,
        coordinator_cpu_cores,
    })
}

/// Counts the simulated agents the coordinator shows online.
async fn online_agents(admin: &Admin, prefix: &str) -> anyhow::Result<usize> {
    let agents = admin
        .clone()
        .list_agents(v1::ListAgentsRequest {})
        .await
        .map_err(|status| anyhow::anyhow!("ListAgents failed: {}", status.message()))?
        .into_inner()
        .agents;
    let own = format!("{prefix}-");
    Ok(agents
        .iter()
        .filter(|a| a.online && a.name.starts_with(&own))
        .count())
}

async fn measure_idle(args: &Args, fleet: &Fleet, pid: &str) -> anyhow::Result<Idle> {
    say(format!("measuring idle CPU for {:?}", args.idle));
    let coordinator = CpuSample::take(pid)?;
    let simulator = CpuSample::take("self")?;
    tokio::time::sleep(args.idle).await;
    let idle = Idle {
        seconds: args.idle.as_secs_f64(),
        coordinator_cpu_cores: CpuSample::take(pid)?.cores_since(&coordinator),
        simulator_cpu_cores: CpuSample::take("self")?.cores_since(&simulator),
        connected: fleet.connected(),
    };
    say(format!(
        "idle: coordinator {:.3} cores, simulator {:.3} cores",
        idle.coordinator_cpu_cores, idle.simulator_cpu_cores
    ));
    Ok(idle)
}

/// The database order `index` backs up: one per agent first, then the next database of
/// each, so no two orders share a database.
fn order_target(agents: &[SimAgent], index: usize) -> String {
    let agent = &agents[index % agents.len()];
    format!("{}/{}", agent.name, agent.databases[index / agents.len()])
}

/// One submission: when it was sent, and the order (its id and when the coordinator created
/// it) or why it was refused.
struct Submitted {
    at: Instant,
    order: Result<(String, i64), String>,
}

/// Submits every backup at once and measures how long each took to reach its agent.
async fn dispatch(
    args: &Args,
    fleet: &Fleet,
    agents: &[SimAgent],
    pid: &str,
) -> anyhow::Result<Dispatch> {
    let connections = args.orders.div_ceil(CALLS_PER_ADMIN_CONNECTION).max(1);
    let mut clients = Vec::with_capacity(connections);
    for _ in 0..connections {
        clients.push(admin_client(&args.coordinator).await?);
    }
    say(format!(
        "submitting {} backups at once over {connections} admin connections",
        args.orders
    ));
    let cpu_before = CpuSample::take(pid)?;
    let own_cpu_before = CpuSample::take("self")?;
    let clock = WallClock::now();
    let started = Instant::now();
    let mut calls = JoinSet::new();
    for index in 0..args.orders {
        let mut client = clients[index % connections].clone();
        let request = v1::SubmitBackupRequest {
            database: order_target(agents, index),
            reason: "fleet-sim dispatch latency".to_owned(),
        };
        calls.spawn(async move {
            let at = Instant::now();
            let order = client
                .submit_backup(request)
                .await
                .map(|response| {
                    let order = response.into_inner();
                    (order.id, order.created_unix_ms)
                })
                .map_err(|status| status.message().to_owned());
            Submitted { at, order }
        });
    }
    let mut submitted = Vec::with_capacity(args.orders);
    while let Some(call) = calls.join_next().await {
        submitted.push(call.context("a submission task panicked")?);
    }
    let submit_seconds = started.elapsed().as_secs_f64();
    let first_rejection = submitted.iter().find_map(|s| s.order.clone().err());
    let accepted: Vec<(Instant, String, i64)> = submitted
        .into_iter()
        .filter_map(|s| {
            let (id, created_unix_ms) = s.order.ok()?;
            Some((s.at, id, created_unix_ms))
        })
        .collect();
    let ids: Vec<String> = accepted.iter().map(|(_, id, _)| id.clone()).collect();
    say(format!(
        "{} of {} accepted in {submit_seconds:.2} s",
        ids.len(),
        args.orders
    ));

    let deadline = Instant::now() + args.order_timeout;
    let deliveries = loop {
        let deliveries = fleet.deliveries_of(&ids);
        if deliveries.iter().all(Option::is_some) || Instant::now() >= deadline {
            break deliveries;
        }
        tokio::time::sleep(Duration::from_millis(20)).await;
    };
    let burst = Burst {
        seconds: started.elapsed().as_secs_f64(),
        coordinator_cpu_cores: CpuSample::take(pid)?.cores_since(&cpu_before),
        simulator_cpu_cores: CpuSample::take("self")?.cores_since(&own_cpu_before),
    };
    let mut latencies = Vec::with_capacity(ids.len());
    let mut last_arrival = None;
    for ((at, _, _), delivery) in accepted.iter().zip(&deliveries) {
        if let Some(delivery) = delivery {
            latencies.push(delivery.first.duration_since(*at).as_secs_f64() * 1000.0);
            last_arrival = last_arrival.max(Some(delivery.first));
        }
    }
    let received = latencies.len();
    let latency_ms = latency(&mut latencies);
    if let Some(latency) = &latency_ms {
        say(format!(
            "{received} received: p50 {:.1} ms, p99 {:.1} ms, max {:.1} ms",
            latency.p50, latency.p99, latency.max
        ));
    }
    let (succeeded, all_succeeded_seconds) =
        wait_for_success(&clients, &ids, started, args.order_timeout).await;
    let decided = decided_at(&mut clients[0]).await?;
    let breakdown = Breakdown::of(&clock, &accepted, &deliveries, &decided);
    let coordinator_cpu_cores = CpuSample::take(pid)?.cores_since(&cpu_before);
    Ok(Dispatch {
        orders: args.orders,
        accepted: ids.len(),
        rejected: args.orders - ids.len(),
        first_rejection,
        received,
        received_more_than_once: deliveries.iter().flatten().filter(|d| d.count > 1).count(),
        missing: ids.len() - received,
        unexpected: fleet.orders_received().saturating_sub(received),
        latency_ms,
        breakdown_ms: breakdown,
        submit_seconds,
        all_received_seconds: (received == ids.len())
            .then(|| last_arrival.map(|last| last.duration_since(started).as_secs_f64()))
            .flatten(),
        succeeded,
        all_succeeded_seconds,
        coordinator_cpu_cores,
        burst,
    })
}

/// Polls the orders until all succeeded, or `timeout`; returns how many did, and when the
/// last did (counted from `started`) if all did.
async fn wait_for_success(
    clients: &[Admin],
    ids: &[String],
    started: Instant,
    timeout: Duration,
) -> (usize, Option<f64>) {
    let deadline = Instant::now() + timeout;
    let mut pending: Vec<String> = ids.to_vec();
    loop {
        let mut lookups = JoinSet::new();
        let in_flight = Arc::new(Semaphore::new(LOOKUPS_IN_FLIGHT));
        for (index, id) in pending.iter().enumerate() {
            let (mut client, id, in_flight) = (
                clients[index % clients.len()].clone(),
                id.clone(),
                in_flight.clone(),
            );
            lookups.spawn(async move {
                let _permit = in_flight.acquire_owned().await;
                let state = client
                    .get_order(v1::GetOrderRequest { id: id.clone() })
                    .await
                    .map(|o| o.into_inner().state)
                    .ok();
                (id, state)
            });
        }
        let mut still = Vec::new();
        while let Some(Ok((id, state))) = lookups.join_next().await {
            if state != Some(v1::OrderState::Succeeded as i32) {
                still.push(id);
            }
        }
        pending = still;
        if pending.is_empty() {
            return (ids.len(), Some(started.elapsed().as_secs_f64()));
        }
        if Instant::now() >= deadline {
            return (ids.len() - pending.len(), None);
        }
        tokio::time::sleep(POLL_EVERY).await;
    }
}

/// Sorts `samples` and returns their percentiles (nearest rank), `None` when empty.
fn latency(samples: &mut [f64]) -> Option<Latency> {
    samples.sort_by(f64::total_cmp);
    let max = *samples.last()?;
    let rank = |p: f64| {
        let index = ((p / 100.0) * samples.len() as f64).ceil() as usize;
        samples[index.clamp(1, samples.len()) - 1]
    };
    Some(Latency {
        p50: rank(50.0),
        p90: rank(90.0),
        p99: rank(99.0),
        max,
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn percentiles_are_nearest_rank() {
        let mut samples: Vec<f64> = (1..=200).rev().map(f64::from).collect();
        let got = latency(&mut samples).expect("samples");
        assert_eq!(
            (got.p50, got.p90, got.p99, got.max),
            (100.0, 180.0, 198.0, 200.0)
        );
        let one = latency(&mut [7.0]).expect("one sample");
        assert_eq!((one.p50, one.p99, one.max), (7.0, 7.0, 7.0));
        assert!(latency(&mut []).is_none());
    }

    #[test]
    fn orders_go_to_distinct_databases_one_per_agent_first() {
        let args = Args::parse_from([
            "warden-fleet-sim",
            "--coordinator",
            "http://127.0.0.1:1",
            "--coordinator-pid",
            "1",
            "--agents",
            "3",
            "--dbs-per-agent",
            "2",
        ]);
        let agents = sim_agents(&args);
        let targets: Vec<String> = (0..6).map(|i| order_target(&agents, i)).collect();
        assert_eq!(
            targets,
            [
                "sim-00000/db0",
                "sim-00001/db0",
                "sim-00002/db0",
                "sim-00000/db1",
                "sim-00001/db1",
                "sim-00002/db1"
            ]
        );
    }
}
