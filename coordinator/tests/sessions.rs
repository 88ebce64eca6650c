//! The coordinator over real gRPC on loopback, with a scripted agent: dispatch, results,
//! reconciliation after an agent restart, fencing, refusals and the audit chain.

use std::collections::HashMap;
use std::time::Duration;

use tokio::sync::mpsc;
use tokio_stream::StreamExt;
use tokio_stream::wrappers::ReceiverStream;
use tonic::Streaming;
use tonic::transport::{Channel, Endpoint};
use warden_coordinator::CoordinatorConfig;
use warden_coordinator::audit::Actor;
use warden_coordinator::security::tokens::{Role, TokenGrant, create_token};
use warden_coordinator::store::Store;
use warden_proto::auth::{AdminClient, Bearer};
use warden_proto::v1::admin_service_client::AdminServiceClient;
use warden_proto::v1::agent_service_client::AgentServiceClient;
use warden_proto::v1::{self as pb, agent_message, coordinator_message};

const WAIT: Duration = Duration::from_secs(10);

/// The admin API as an admin calls it.
type Admin = AdminClient;

struct Harness {
    dir: tempfile::TempDir,
    channel: Channel,
    token: Bearer,
    stop: Option<tokio::sync::oneshot::Sender<()>>,
    server: tokio::task::JoinHandle<Result<(), warden_coordinator::server::ServerError>>,
}

impl Harness {
    async fn start() -> Self {
        Self::start_in(tempfile::tempdir().expect("tempdir")).await
    }

    /// Stops the coordinator gracefully (it must not hang on open agent streams) and starts
    /// a new one on the same store.
    async fn restart(self) -> Self {
        self.restart_after(chrono::Utc::now()).await
    }

    /// Stops the coordinator, and starts it again on the same store at `at`.
    async fn restart_after(mut self, at: chrono::DateTime<chrono::Utc>) -> Self {
        let _ = self.stop.take().expect("running").send(());
        tokio::time::timeout(WAIT, self.server)
            .await
            .expect("graceful shutdown in time")
            .expect("server task")
            .expect("server result");
        let wait = (at - chrono::Utc::now()).to_std().unwrap_or_default();
        tokio::time::sleep(wait).await;
        Self::start_in(self.dir).await
    }

    async fn start_in(dir: tempfile::TempDir) -> Self {
        let store_url = format!("sqlite://{}/warden.db", dir.path().display());
        // An admin token made in the store before the coordinator opens it, as
        // `warden-coordinator token create` does on a host.
        let store = Store::open(&store_url).await.expect("store");
        let grant = TokenGrant::Operator {
            name: "ops".to_owned(),
            role: Role::Admin,
        };
        let (_, secret) = create_token(&store, &Actor::Host("test".to_owned()), &grant, None)
            .await
            .expect("admin token");
        drop(store);
        let token = Bearer::new(&secret).expect("token metadata");
        let listener = tokio::net::TcpListener::bind("127.0.0.1:0")
            .await
            .expect("bind");
        let addr = listener.local_addr().expect("addr");
        let config = CoordinatorConfig {
            listen: addr,
            store: store_url,
            // The scripted agents speak plaintext gRPC and have no certificates.
            insecure_dev: true,
            heartbeat_interval: Duration::from_millis(200),
            lease: Duration::from_millis(800),
            ..CoordinatorConfig::default()
        };
        let http = tokio::net::TcpListener::bind("127.0.0.1:0")
            .await
            .expect("bind http");
        let (stop, stopped) = tokio::sync::oneshot::channel::<()>();
        let server = tokio::spawn(warden_coordinator::server::serve(
            config,
            listener,
            http,
            async {
                let _ = stopped.await;
            },
        ));
        let channel = Endpoint::from_shared(format!("http://{addr}"))
            .expect("endpoint")
            .connect()
            .await
            .expect("connect");
        Self {
            dir,
            channel,
            token,
            stop: Some(stop),
            server,
        }
    }

    fn admin(&self) -> Admin {
        AdminServiceClient::with_interceptor(self.channel.clone(), self.token.clone())
    }

    async fn agent(
        &self,
        name: &str,
        running: Vec<String>,
        results: Vec<pb::OrderResult>,
    ) -> ScriptedAgent {
        self.connect(pb::Hello {
            running_order_ids: running,
            unacknowledged_results: results,
            ..hello(name, &[("env", "test")], vec![database("app", vec![])])
        })
        .await
    }

    /// Connects agents like [`Harness::agent`], one for each of `names`.
    async fn agents(&self, names: &[&str]) -> Vec<ScriptedAgent> {
        let mut agents = Vec::with_capacity(names.len());
        for name in names {
            agents.push(self.agent(name, vec![], vec![]).await);
        }
        agents
    }

    /// Connects an agent that says `hello`, and reads its Welcome.
    async fn connect(&self, hello: pb::Hello) -> ScriptedAgent {
        let (tx, rx) = mpsc::channel(64);
        tx.send(msg(agent_message::Msg::Hello(hello)))
            .await
            .expect("hello");
        let inbound = AgentServiceClient::new(self.channel.clone())
            .connect(ReceiverStream::new(rx))
            .await
            .expect("connect")
            .into_inner();
        let mut agent = ScriptedAgent { tx, inbound };
        match agent.next().await {
            coordinator_message::Msg::Welcome(welcome) => {
                assert_eq!(welcome.heartbeat_interval_ms, 200)
            }
            other => panic!("expected Welcome, got {other:?}"),
        }
        agent
    }
}

struct ScriptedAgent {
    tx: mpsc::Sender<pb::AgentMessage>,
    inbound: Streaming<pb::CoordinatorMessage>,
}

impl ScriptedAgent {
    async fn next(&mut self) -> coordinator_message::Msg {
        tokio::time::timeout(WAIT, self.inbound.next())
            .await
            .expect("a coordinator message in time")
            .expect("stream open")
            .expect("message")
            .msg
            .expect("message body")
    }

    async fn next_order(&mut self) -> pb::OrderAssignment {
        loop {
            match self.next().await {
                coordinator_message::Msg::Order(order) => return order,
                coordinator_message::Msg::Ack(_) => continue,
                other => panic!("expected an order, got {other:?}"),
            }
        }
    }

    async fn send(&self, message: agent_message::Msg) {
        self.tx.send(msg(message)).await.expect("send");
    }

    /// Reports an order's result.
    async fn report(&self, result: pb::OrderResult) {
        self.send(agent_message::Msg::Result(result)).await;
    }

    /// Asserts that no order arrives within `wait`; `what` says what one would mean.
    async fn assert_no_order(&mut self, wait: Duration, what: &str) {
        let order = tokio::time::timeout(wait, self.next_order()).await;
        assert!(order.is_err(), "{what}: {order:?}");
    }

    /// Sends heartbeats in the background, for tests that wait longer than a lease.
    fn keep_alive(&self) -> tokio::task::JoinHandle<()> {
        let tx = self.tx.clone();
        tokio::spawn(async move {
            let beat = agent_message::Msg::Heartbeat(pb::Heartbeat { sent_unix_ms: 0 });
            while tx.send(msg(beat.clone())).await.is_ok() {
                tokio::time::sleep(Duration::from_millis(100)).await;
            }
        })
    }
}

/// The Hello of an agent with `labels` and `databases`, running nothing.
fn hello(name: &str, labels: &[(&str, &str)], databases: Vec<pb::DatabaseInfo>) -> pb::Hello {
    pb::Hello {
        agent: name.to_owned(),
        version: "test".to_owned(),
        labels: labels
            .iter()
            .map(|(k, v)| ((*k).to_owned(), (*v).to_owned()))
            .collect(),
        databases,
        running_order_ids: Vec::new(),
        unacknowledged_results: Vec::new(),
        repository: "file:///repo".to_owned(),
    }
}

/// A database without labels of its own, allowing these migration commands.
fn database(name: &str, commands: Vec<(&str, &str)>) -> pb::DatabaseInfo {
    pb::DatabaseInfo {
        name: name.to_owned(),
        labels: Default::default(),
        migrate_commands: commands
            .into_iter()
            .map(|(name, line)| pb::MigrateCommand {
                name: name.to_owned(),
                argv: line.split(' ').map(str::to_owned).collect(),
            })
            .collect(),
    }
}

fn msg(message: agent_message::Msg) -> pb::AgentMessage {
    pb::AgentMessage { msg: Some(message) }
}

fn backup_result(order_id: &str, artifact_id: &str) -> pb::OrderResult {
    let manifest = serde_json::json!({
        "format": 1, "artifact_id": artifact_id, "agent": "a1", "database": "app",
        "order_id": order_id, "trigger": "manual", "server_version": "15.18",
        "server_version_num": 150018, "pg_dump_version": "pg_dump (PostgreSQL) 15.18",
        "dump": {"name": "dump.zst", "size_bytes": 10, "raw_bytes": 40, "sha256": "ab".repeat(32)},
        "globals": null, "globals_error": "not superuser",
        "tables": [{"schema": "public", "table": "t", "rows": 3}],
        "started_unix_ms": 1, "finished_unix_ms": 2, "timings_ms": {"dump": 1}
    });
    pb::OrderResult {
        order_id: order_id.to_owned(),
        success: true,
        error: String::new(),
        cancelled: false,
        artifact_corrupt: false,
        outcome: Some(pb::order_result::Outcome::Backup(pb::BackupOutcome {
            artifact_id: artifact_id.to_owned(),
            artifact_path: format!("a1/{artifact_id}"),
            manifest_json: manifest.to_string(),
            verified: false,
        })),
    }
}

async fn get_order(admin: &mut Admin, id: &str) -> pb::Order {
    admin
        .get_order(pb::GetOrderRequest { id: id.to_owned() })
        .await
        .expect("get order")
        .into_inner()
}

async fn orders(admin: &mut Admin) -> Vec<pb::Order> {
    admin
        .list_orders(pb::ListOrdersRequest::default())
        .await
        .expect("orders")
        .into_inner()
        .orders
}

async fn wait_state(admin: &mut Admin, id: &str, state: pb::OrderState) -> pb::Order {
    let deadline = tokio::time::Instant::now() + WAIT;
    loop {
        let order = get_order(admin, id).await;
        if order.state() == state {
            return order;
        }
        assert!(
            tokio::time::Instant::now() < deadline,
            "order {id} stuck in {:?}, wanted {state:?}",
            order.state()
        );
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
}

async fn assert_chain_intact(admin: &mut Admin) {
    let verify = admin
        .verify_audit(pb::VerifyAuditRequest {})
        .await
        .expect("verify")
        .into_inner();
    assert!(verify.ok, "{verify:?}");
}

async fn submit_backup(admin: &mut Admin) -> pb::Order {
    admin
        .submit_backup(pb::SubmitBackupRequest {
            database: "a1/app".to_owned(),
            reason: "test".to_owned(),
        })
        .await
        .expect("submit backup")
        .into_inner()
}

#[tokio::test]
async fn backup_result_catalogs_a_complete_artifact() {
    let harness = Harness::start().await;
    let mut agent = harness.agent("a1", vec![], vec![]).await;
    let mut admin = harness.admin();

    let order = submit_backup(&mut admin).await;
    let assignment = agent.next_order().await;
    assert_eq!(assignment.order_id, order.id);
    assert_eq!(assignment.attempt, 1);

    agent
        .send(agent_message::Msg::Started(pb::OrderStarted {
            order_id: order.id.clone(),
        }))
        .await;
    wait_state(&mut admin, &order.id, pb::OrderState::Running).await;
    agent
        .send(agent_message::Msg::Progress(pb::OrderProgress {
            order_id: order.id.clone(),
            phase: "dump".to_owned(),
            bytes: 4096,
            bytes_per_sec: 1024.0,
        }))
        .await;
    let deadline = tokio::time::Instant::now() + WAIT;
    loop {
        let running = get_order(&mut admin, &order.id).await;
        if running.progress_bytes == 4096 {
            assert_eq!(
                (running.phase.as_str(), running.progress_bytes_per_sec),
                ("dump", 1024.0)
            );
            break;
        }
        assert!(
            tokio::time::Instant::now() < deadline,
            "progress never recorded: {running:?}"
        );
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    let artifact_id = uuid::Uuid::now_v7().to_string();
    agent.report(backup_result(&order.id, &artifact_id)).await;
    match agent.next().await {
        coordinator_message::Msg::Ack(ack) => assert_eq!(ack.order_id, order.id),
        other => panic!("expected an ack, got {other:?}"),
    }
    let done = wait_state(&mut admin, &order.id, pb::OrderState::Succeeded).await;
    // The final progress is the whole dump as the manifest says, whatever was reported last.
    assert_eq!(done.progress_bytes, 40);
    assert_eq!(done.phase, "");

    let artifacts = admin
        .list_artifacts(pb::ListArtifactsRequest {
            database: "a1/app".to_owned(),
            include_expired: false,
        })
        .await
        .expect("artifacts")
        .into_inner()
        .artifacts;
    assert_eq!(artifacts.len(), 1);
    assert_eq!(artifacts[0].id, artifact_id);
    assert_eq!(artifacts[0].state, "complete");
    assert_eq!(artifacts[0].sha256, "ab".repeat(32));

    // A duplicate result (re-sent after a reconnect) is acknowledged, not applied twice.
    agent.report(backup_result(&order.id, &artifact_id)).await;
    assert!(matches!(
        agent.next().await,
        coordinator_message::Msg::Ack(_)
    ));
    assert_chain_intact(&mut admin).await;
}

#[tokio::test]
async fn an_agent_that_restarts_without_its_order_gets_the_backup_again_but_not_a_restore() {
    let harness = Harness::start().await;
    let mut admin = harness.admin();
    let mut agent = harness.agent("a1", vec![], vec![]).await;

    // Catalog an artifact so a restore can be submitted.
    let first = submit_backup(&mut admin).await;
    agent.next_order().await;
    let artifact_id = uuid::Uuid::now_v7().to_string();
    agent.report(backup_result(&first.id, &artifact_id)).await;
    wait_state(&mut admin, &first.id, pb::OrderState::Succeeded).await;
    let restore = admin
        .submit_restore(pb::SubmitRestoreRequest {
            artifact_id: artifact_id.clone(),
            new_name: "copy".to_owned(),
            ..Default::default()
        })
        .await
        .expect("restore")
        .into_inner();
    assert_eq!(agent.next_order().await.order_id, restore.id);
    let backup = submit_backup(&mut admin).await;
    wait_state(&mut admin, &backup.id, pb::OrderState::Held).await;
    drop(agent);

    // The agent comes back holding nothing: the restore is lost and not retried, and the
    // backup held behind it goes out.
    let mut agent = harness.agent("a1", vec![], vec![]).await;
    let next = agent.next_order().await;
    assert_eq!(
        (next.order_id.as_str(), next.attempt),
        (backup.id.as_str(), 1)
    );
    let lost = wait_state(&mut admin, &restore.id, pb::OrderState::Lost).await;
    assert!(lost.error.contains("restarted"), "{}", lost.error);
    drop(agent);

    // Again, with the backup in flight: it is lost too, and retried as attempt 2.
    let mut agent = harness.agent("a1", vec![], vec![]).await;
    let retried = agent.next_order().await;
    assert_eq!(
        (retried.order_id.as_str(), retried.attempt),
        (backup.id.as_str(), 2)
    );
    // Nothing else arrives: the restore is not dispatched again.
    let extra = tokio::time::timeout(Duration::from_millis(500), agent.inbound.next()).await;
    assert!(extra.is_err(), "unexpected message {extra:?}");
}

#[tokio::test]
async fn results_finished_while_disconnected_are_applied_on_hello() {
    let harness = Harness::start().await;
    let mut admin = harness.admin();
    let mut agent = harness.agent("a1", vec![], vec![]).await;
    let order = submit_backup(&mut admin).await;
    agent.next_order().await;
    drop(agent);

    let artifact_id = uuid::Uuid::now_v7().to_string();
    let mut agent = harness
        .agent("a1", vec![], vec![backup_result(&order.id, &artifact_id)])
        .await;
    match agent.next().await {
        coordinator_message::Msg::Ack(ack) => assert_eq!(ack.order_id, order.id),
        other => panic!("expected an ack, got {other:?}"),
    }
    wait_state(&mut admin, &order.id, pb::OrderState::Succeeded).await;
}

#[tokio::test]
async fn a_silent_agent_goes_offline_and_its_orders_are_lost_after_the_lease() {
    let harness = Harness::start().await;
    let mut admin = harness.admin();
    let mut agent = harness.agent("a1", vec![], vec![]).await;
    let order = submit_backup(&mut admin).await;
    agent.next_order().await;
    // No heartbeats: the lease (800 ms) runs out, the stream is closed, the order is lost.
    let lost = wait_state(&mut admin, &order.id, pb::OrderState::Lost).await;
    assert!(lost.error.contains("offline"), "{}", lost.error);
    let agents = admin
        .list_agents(pb::ListAgentsRequest {})
        .await
        .expect("agents")
        .into_inner()
        .agents;
    assert!(!agents[0].online);
    let refused = admin
        .submit_backup(pb::SubmitBackupRequest {
            database: "a1/app".to_owned(),
            reason: String::new(),
        })
        .await
        .expect_err("offline agent");
    assert_eq!(refused.code(), tonic::Code::FailedPrecondition);
    assert!(
        refused.message().contains("agent a1 is offline"),
        "{}",
        refused.message()
    );
}

#[tokio::test]
async fn bad_requests_are_refused_clearly_and_audited() {
    let harness = Harness::start().await;
    let mut admin = harness.admin();
    let _agent = harness.agent("a1", vec![], vec![]).await;

    for (database, code, needle) in [
        (
            "a1/nosuch",
            tonic::Code::NotFound,
            "does not report a database named \"nosuch\"",
        ),
        ("ghost/app", tonic::Code::NotFound, "no agent named ghost"),
        (
            "nodbname",
            tonic::Code::InvalidArgument,
            "expected AGENT/DBNAME",
        ),
    ] {
        let status = admin
            .submit_backup(pb::SubmitBackupRequest {
                database: database.to_owned(),
                reason: String::new(),
            })
            .await
            .expect_err(database);
        assert_eq!(status.code(), code, "{database}: {status:?}");
        assert!(
            status.message().contains(needle),
            "{database}: {}",
            status.message()
        );
    }
    let status = admin
        .submit_restore(pb::SubmitRestoreRequest {
            artifact_id: uuid::Uuid::now_v7().to_string(),
            new_name: "x".to_owned(),
            ..Default::default()
        })
        .await
        .expect_err("unknown artifact");
    assert_eq!(status.code(), tonic::Code::NotFound);
    let status = admin
        .submit_restore(pb::SubmitRestoreRequest {
            artifact_id: "not-a-uuid".to_owned(),
            replace: true,
            ..Default::default()
        })
        .await
        .expect_err("malformed artifact");
    assert_eq!(status.code(), tonic::Code::InvalidArgument);

    let orders = orders(&mut admin).await;
    assert!(
        orders.is_empty(),
        "refused calls created orders: {orders:?}"
    );
    let events = all_audit_events(&mut admin).await;
    let refused = events
        .iter()
        .filter(|e| e.outcome.starts_with("refused:"))
        .count();
    assert_eq!(refused, 5, "{events:#?}");
}

#[tokio::test]
async fn a_coordinator_restart_keeps_running_orders_running() {
    let harness = Harness::start().await;
    let mut admin = harness.admin();
    let mut agent = harness.agent("a1", vec![], vec![]).await;
    let order = submit_backup(&mut admin).await;
    agent.next_order().await;
    agent
        .send(agent_message::Msg::Started(pb::OrderStarted {
            order_id: order.id.clone(),
        }))
        .await;
    wait_state(&mut admin, &order.id, pb::OrderState::Running).await;

    let harness = harness.restart().await;
    let mut admin = harness.admin();
    // The agent kept working while the coordinator was away, and says so in its Hello.
    let agent = harness.agent("a1", vec![order.id.clone()], vec![]).await;
    let beat = agent_message::Msg::Heartbeat(pb::Heartbeat { sent_unix_ms: 0 });
    // Two leases pass with heartbeats: the order must stay running, not become lost.
    for _ in 0..8 {
        agent.send(beat.clone()).await;
        tokio::time::sleep(Duration::from_millis(200)).await;
    }
    let still = get_order(&mut admin, &order.id).await;
    assert_eq!(still.state(), pb::OrderState::Running, "{still:?}");
    let artifact_id = uuid::Uuid::now_v7().to_string();
    agent.report(backup_result(&order.id, &artifact_id)).await;
    wait_state(&mut admin, &order.id, pb::OrderState::Succeeded).await;
    assert_chain_intact(&mut admin).await;
}

#[tokio::test]
async fn one_backup_or_restore_per_database_at_a_time_others_wait_held() {
    let harness = Harness::start().await;
    let mut admin = harness.admin();
    let mut agent = harness.agent("a1", vec![], vec![]).await;
    let first = submit_backup(&mut admin).await;
    assert_eq!(agent.next_order().await.order_id, first.id);
    let second = submit_backup(&mut admin).await;
    let held = wait_state(&mut admin, &second.id, pb::OrderState::Held).await;
    assert!(held.phase.contains(&first.id), "{held:?}");
    // A health check reads only: it is not held behind the backup.
    let health = admin
        .submit_health(pb::SubmitHealthRequest {
            database: "a1/app".to_owned(),
        })
        .await
        .expect("health")
        .into_inner();
    assert_eq!(agent.next_order().await.order_id, health.id);

    let artifact_id = uuid::Uuid::now_v7().to_string();
    agent.report(backup_result(&first.id, &artifact_id)).await;
    // The held backup goes out once the first one is done.
    assert_eq!(agent.next_order().await.order_id, second.id);
    wait_state(&mut admin, &second.id, pb::OrderState::Dispatched).await;
}

#[tokio::test]
async fn grpc_health_and_reflection_are_served() {
    use tonic_health::pb::health_check_response::ServingStatus;
    use tonic_health::pb::{HealthCheckRequest, health_client::HealthClient};
    use tonic_reflection::pb::v1::ServerReflectionRequest;
    use tonic_reflection::pb::v1::server_reflection_client::ServerReflectionClient;
    use tonic_reflection::pb::v1::server_reflection_request::MessageRequest;
    use tonic_reflection::pb::v1::server_reflection_response::MessageResponse;

    let harness = Harness::start().await;
    let status = HealthClient::new(harness.channel.clone())
        .check(HealthCheckRequest {
            service: "warden.v1.AdminService".to_owned(),
        })
        .await
        .expect("health check")
        .into_inner()
        .status();
    assert_eq!(status, ServingStatus::Serving);

    let request = ServerReflectionRequest {
        host: String::new(),
        message_request: Some(MessageRequest::ListServices(String::new())),
    };
    let mut responses = ServerReflectionClient::new(harness.channel.clone())
        .server_reflection_info(tokio_stream::iter([request]))
        .await
        .expect("reflection")
        .into_inner();
    let response = responses.next().await.expect("a response").expect("ok");
    let Some(MessageResponse::ListServicesResponse(list)) = response.message_response else {
        panic!("expected a service list, got {response:?}");
    };
    let names: Vec<String> = list.service.into_iter().map(|s| s.name).collect();
    for expected in [
        "warden.v1.AgentService",
        "warden.v1.AdminService",
        "grpc.health.v1.Health",
    ] {
        assert!(
            names.iter().any(|n| n == expected),
            "{expected} missing from {names:?}"
        );
    }
}

fn verified_backup_result(order_id: &str, artifact_id: &str, verified: bool) -> pb::OrderResult {
    let mut result = backup_result(order_id, artifact_id);
    if let Some(pb::order_result::Outcome::Backup(backup)) = &mut result.outcome {
        backup.verified = verified;
    }
    result
}

/// Takes a backup through the scripted agent and returns its artifact id.
async fn backed_up(admin: &mut Admin, agent: &mut ScriptedAgent) -> String {
    let order = submit_backup(admin).await;
    assert_eq!(agent.next_order().await.order_id, order.id);
    let artifact_id = uuid::Uuid::now_v7().to_string();
    agent.report(backup_result(&order.id, &artifact_id)).await;
    wait_state(admin, &order.id, pb::OrderState::Succeeded).await;
    artifact_id
}

fn replace(artifact_id: &str, emergency: bool, reason: &str) -> pb::SubmitRestoreRequest {
    pb::SubmitRestoreRequest {
        artifact_id: artifact_id.to_owned(),
        replace: true,
        reason: reason.to_owned(),
        emergency,
        ..Default::default()
    }
}

#[tokio::test]
async fn a_replace_waits_for_a_window_and_breaking_glass_takes_a_verified_safety_backup_first() {
    let harness = Harness::start().await;
    let mut admin = harness.admin();
    let mut agent = harness.agent("a1", vec![], vec![]).await;
    let artifact_id = backed_up(&mut admin, &mut agent).await;

    // No window selects the database: a replace waits, and says why.
    let waiting = admin
        .submit_restore(replace(&artifact_id, false, ""))
        .await
        .expect("restore")
        .into_inner();
    let held = wait_state(&mut admin, &waiting.id, pb::OrderState::Held).await;
    assert!(
        held.phase.contains("outside maintenance windows"),
        "{held:?}"
    );
    let refused = admin
        .submit_restore(pb::SubmitRestoreRequest {
            no_wait: true,
            ..replace(&artifact_id, false, "")
        })
        .await
        .expect_err("no window open");
    assert_eq!(refused.code(), tonic::Code::FailedPrecondition);
    assert!(refused.message().contains("--no-wait"), "{refused:?}");
    let no_reason = admin
        .submit_restore(replace(&artifact_id, true, "  "))
        .await
        .expect_err("emergency needs a reason");
    assert_eq!(no_reason.code(), tonic::Code::InvalidArgument);

    // Break glass: the safety backup goes first, and must come back verified.
    let urgent = admin
        .submit_restore(replace(&artifact_id, true, "incident 42"))
        .await
        .expect("emergency restore")
        .into_inner();
    let safety = agent.next_order().await;
    match safety.spec.and_then(|s| s.params) {
        Some(pb::order_spec::Params::Backup(params)) => {
            assert!(params.verify, "{params:?}");
            assert_eq!(params.trigger, "safety");
        }
        other => panic!("expected the safety backup first, got {other:?}"),
    }
    agent
        .report(verified_backup_result(
            &safety.order_id,
            &uuid::Uuid::now_v7().to_string(),
            false,
        ))
        .await;
    wait_state(&mut admin, &safety.order_id, pb::OrderState::Failed).await;
    let failed = wait_state(&mut admin, &urgent.id, pb::OrderState::Failed).await;
    assert!(failed.error.contains("safety backup"), "{failed:?}");
    assert_eq!(failed.safety_backup_order_id, safety.order_id);

    let urgent = admin
        .submit_restore(replace(&artifact_id, true, "incident 43"))
        .await
        .expect("emergency restore")
        .into_inner();
    let safety = agent.next_order().await;
    agent
        .report(verified_backup_result(
            &safety.order_id,
            &uuid::Uuid::now_v7().to_string(),
            true,
        ))
        .await;
    let restore = agent.next_order().await;
    assert_eq!(restore.order_id, urgent.id);
    let started = wait_state(&mut admin, &urgent.id, pb::OrderState::Dispatched).await;
    assert!(started.emergency);
    // The order without a window is still waiting.
    wait_state(&mut admin, &waiting.id, pb::OrderState::Held).await;

    let audit = audit_events(&mut admin, "order.emergency").await;
    assert!(
        audit
            .iter()
            .any(|e| e.params_json.contains("incident 43") && e.params_json.contains(&urgent.id)),
        "no emergency event with the reason"
    );
    assert_chain_intact(&mut admin).await;
}

#[tokio::test]
async fn orders_over_the_per_agent_limit_wait_held_with_the_reason() {
    let harness = Harness::start().await;
    let mut admin = harness.admin();
    let mut agent = harness.agent("a1", vec![], vec![]).await;
    let artifact_id = backed_up(&mut admin, &mut agent).await;
    let applied = admin
        .apply_policy(pb::ApplyPolicyRequest {
            toml: "[limits]\nper_agent = 1\n".to_owned(),
            dry_run: false,
        })
        .await
        .expect("apply")
        .into_inner();
    assert!(applied.applied, "{applied:?}");

    let backup = submit_backup(&mut admin).await;
    assert_eq!(agent.next_order().await.order_id, backup.id);
    let health = admin
        .submit_health(pb::SubmitHealthRequest {
            database: "a1/app".to_owned(),
        })
        .await
        .expect("health")
        .into_inner();
    let held = wait_state(&mut admin, &health.id, pb::OrderState::Held).await;
    assert!(held.phase.contains("limits.per_agent = 1"), "{held:?}");

    // A restore cancelled while its safety backup waits for a slot takes that backup along.
    let urgent = admin
        .submit_restore(replace(&artifact_id, true, "incident 44"))
        .await
        .expect("emergency restore")
        .into_inner();
    let waiting = wait_state(&mut admin, &urgent.id, pb::OrderState::Held).await;
    assert!(waiting.phase.contains("safety backup"), "{waiting:?}");
    let safety = wait_state(
        &mut admin,
        &waiting.safety_backup_order_id,
        pb::OrderState::Held,
    )
    .await;
    admin
        .cancel_order(pb::CancelOrderRequest {
            id: urgent.id.clone(),
            reason: "not needed".to_owned(),
        })
        .await
        .expect("cancel");
    let dropped = wait_state(&mut admin, &safety.id, pb::OrderState::Cancelled).await;
    assert!(dropped.error.contains(&urgent.id), "{dropped:?}");

    agent
        .report(backup_result(&backup.id, &uuid::Uuid::now_v7().to_string()))
        .await;
    assert_eq!(agent.next_order().await.order_id, health.id);
    assert_chain_intact(&mut admin).await;
}

/// Orders submitted at the same moment are recorded together and dispatched by shared
/// passes, and their agent's reports are recorded together: none may be missed, sent twice
/// or left unrecorded, and the audit chain stays whole.
#[tokio::test]
async fn backups_submitted_at_once_are_each_dispatched_once_and_their_results_recorded() {
    const DATABASES: usize = 40;
    let harness = Harness::start().await;
    let mut admin = harness.admin();
    let (names, mut agent) = agent_with_databases(&harness, DATABASES).await;
    apply(
        &mut admin,
        format!("[limits]\nper_agent = {DATABASES}\nfleet_backups = {DATABASES}\n"),
    )
    .await;

    let orders = submit_backups_at_once(&harness, "a1", &names).await;
    for order in &orders {
        assert_eq!(order.state(), pb::OrderState::Dispatched, "{order:?}");
    }
    let mut submitted: Vec<String> = orders.into_iter().map(|o| o.id).collect();
    let mut received = Vec::with_capacity(DATABASES);
    for _ in 0..DATABASES {
        received.push(agent.next_order().await.order_id);
    }
    submitted.sort();
    received.sort();
    assert_eq!(received, submitted, "every order arrives once");
    agent
        .assert_no_order(Duration::from_millis(300), "an order sent twice")
        .await;

    for id in &received {
        agent
            .send(agent_message::Msg::Started(pb::OrderStarted {
                order_id: id.clone(),
            }))
            .await;
        agent
            .report(backup_result(id, &uuid::Uuid::now_v7().to_string()))
            .await;
    }
    let mut acked = Vec::with_capacity(DATABASES);
    while acked.len() < DATABASES {
        match agent.next().await {
            coordinator_message::Msg::Ack(ack) => acked.push(ack.order_id),
            other => panic!("expected acknowledgements, got {other:?}"),
        }
    }
    acked.sort();
    assert_eq!(acked, submitted, "every result is acknowledged once");
    for id in &submitted {
        let order = get_order(&mut admin, id).await;
        assert_eq!(order.state(), pb::OrderState::Succeeded, "{order:?}");
        assert!(order.started_unix_ms > 0, "{order:?}");
    }
    assert_chain_intact(&mut admin).await;
}

/// Agent `a1` with databases `db0`, `db1`, ... (`count` of them); returns their names.
async fn agent_with_databases(harness: &Harness, count: usize) -> (Vec<String>, ScriptedAgent) {
    let names: Vec<String> = (0..count).map(|i| format!("db{i}")).collect();
    let agent = harness
        .connect(hello(
            "a1",
            &[],
            names.iter().map(|name| database(name, vec![])).collect(),
        ))
        .await;
    (names, agent)
}

/// Backups of `databases` of `agent`, submitted at the same moment on connections of their
/// own.
async fn submit_backups_at_once(
    harness: &Harness,
    agent: &str,
    databases: &[String],
) -> Vec<pb::Order> {
    let submissions = databases.iter().map(|name| {
        let mut admin = harness.admin();
        let database = format!("{agent}/{name}");
        async move {
            admin
                .submit_backup(pb::SubmitBackupRequest {
                    database,
                    reason: "at once".to_owned(),
                })
                .await
                .expect("submit backup")
                .into_inner()
        }
    });
    futures::future::join_all(submissions).await
}

/// Limits hold for orders dispatched by the same pass, and reports that come twice or out of
/// order change nothing twice: a result before its `Started`, a `Started` after its result,
/// the same result again (acknowledged again, so the agent can forget it).
#[tokio::test]
async fn orders_submitted_together_respect_limits_and_repeated_reports_change_nothing() {
    const DATABASES: usize = 12;
    let harness = Harness::start().await;
    let mut admin = harness.admin();
    let (names, mut agent) = agent_with_databases(&harness, DATABASES).await;
    apply(&mut admin, "[limits]\nper_agent = 3\n".to_owned()).await;

    let orders = submit_backups_at_once(&harness, "a1", &names).await;
    let dispatched: Vec<&pb::Order> = orders
        .iter()
        .filter(|o| o.state() == pb::OrderState::Dispatched)
        .collect();
    assert_eq!(dispatched.len(), 3, "{orders:?}");
    for order in orders
        .iter()
        .filter(|o| o.state() != pb::OrderState::Dispatched)
    {
        assert_eq!(order.state(), pb::OrderState::Held, "{order:?}");
        assert!(order.phase.contains("limits.per_agent = 3"), "{order:?}");
    }
    let mut running = Vec::new();
    for _ in 0..3 {
        running.push(agent.next_order().await.order_id);
    }
    agent
        .assert_no_order(Duration::from_millis(300), "an order over the limit")
        .await;

    let first = running[0].clone();
    let result = backup_result(&first, &uuid::Uuid::now_v7().to_string());
    agent.report(result.clone()).await;
    agent
        .send(agent_message::Msg::Started(pb::OrderStarted {
            order_id: first.clone(),
        }))
        .await;
    agent.report(result).await;
    let mut acks = 0;
    let mut next = None;
    while acks < 2 || next.is_none() {
        match agent.next().await {
            coordinator_message::Msg::Ack(ack) => {
                assert_eq!(ack.order_id, first);
                acks += 1;
            }
            coordinator_message::Msg::Order(order) => {
                assert!(next.is_none(), "one slot freed, one order: {order:?}");
                next = Some(order.order_id);
            }
            other => panic!("expected acks and one order, got {other:?}"),
        }
    }
    agent
        .assert_no_order(
            Duration::from_millis(300),
            "a second order for one freed slot",
        )
        .await;
    let done = get_order(&mut admin, &first).await;
    assert_eq!(done.state(), pb::OrderState::Succeeded, "{done:?}");
    let artifacts = audit_events(&mut admin, "artifact.created").await;
    assert_eq!(artifacts.len(), 1, "one artifact for a result sent twice");
    let successes: Vec<pb::AuditEvent> = audit_events(&mut admin, "order.succeeded")
        .await
        .into_iter()
        .filter(|e| e.params_json.contains(&first))
        .collect();
    assert_eq!(successes.len(), 1, "{successes:?}");
    assert_chain_intact(&mut admin).await;
}

#[tokio::test]
async fn slots_missed_while_the_coordinator_was_down_fire_once_on_start() {
    use chrono::{Datelike, Timelike};
    let harness = Harness::start().await;
    let mut admin = harness.admin();
    let _agent = harness.agent("a1", vec![], vec![]).await;

    // A schedule firing every second for four seconds, all of them while the coordinator
    // is down; the seconds stay within one minute so one cron expression says it.
    let mut first = chrono::Utc::now() + chrono::TimeDelta::seconds(2);
    if first.second() > 54 {
        first += chrono::TimeDelta::seconds(i64::from(60 - first.second()));
    }
    let first = first.with_nanosecond(0).expect("whole second");
    let last = first + chrono::TimeDelta::seconds(3);
    let cron = format!(
        "{}-{} {} {} {} {} *",
        first.second(),
        last.second(),
        first.minute(),
        first.hour(),
        first.day(),
        first.month()
    );
    let policy = format!(
        "[[schedule]]\nname = \"burst\"\nselector = \"\"\ncron = \"{cron}\"\ntimezone = \"UTC\"\n"
    );
    let applied = admin
        .apply_policy(pb::ApplyPolicyRequest {
            toml: policy,
            dry_run: false,
        })
        .await
        .expect("apply")
        .into_inner();
    assert!(applied.applied, "{applied:?}");

    let harness = harness
        .restart_after(last + chrono::TimeDelta::milliseconds(1500))
        .await;
    let mut admin = harness.admin();
    let deadline = tokio::time::Instant::now() + WAIT;
    let fired = loop {
        let fired = audit_events(&mut admin, "schedule.fired").await;
        if !fired.is_empty() || tokio::time::Instant::now() > deadline {
            break fired;
        }
        tokio::time::sleep(Duration::from_millis(100)).await;
    };
    // Give further (wrong) firings a few policy ticks to show up.
    tokio::time::sleep(Duration::from_secs(3)).await;
    let all_fired = audit_events(&mut admin, "schedule.fired").await.len();
    assert_eq!(fired.len(), 1, "{fired:#?}");
    assert_eq!(all_fired, 1, "four missed slots fire once");
    let params = audit_params(&fired[0]);
    assert_eq!(
        params["slot"].as_str(),
        Some(last.to_rfc3339().as_str()),
        "the newest missed slot fires: {params}"
    );
    assert_eq!(
        params["orders"].as_array().map(Vec::len),
        Some(1),
        "{params}"
    );
    assert_chain_intact(&mut admin).await;
}

/// A one-off window in UTC from `start` to `end`, as a policy document with `limits`.
fn once_window(
    kind: &str,
    start: chrono::DateTime<chrono::Utc>,
    end: chrono::DateTime<chrono::Utc>,
    limits: &str,
) -> String {
    let local = |t: chrono::DateTime<chrono::Utc>| t.format("%Y-%m-%dT%H:%M:%S").to_string();
    format!(
        "{limits}\n[[window]]\nname = \"w\"\nkind = \"{kind}\"\ntimezone = \"UTC\"\nstart = \"{}\"\nend = \"{}\"\n",
        local(start),
        local(end)
    )
}

async fn apply(admin: &mut Admin, toml: String) {
    let applied = admin
        .apply_policy(pb::ApplyPolicyRequest {
            toml,
            dry_run: false,
        })
        .await
        .expect("apply")
        .into_inner();
    assert!(applied.applied, "{applied:?}");
}

#[tokio::test]
async fn a_restore_whose_window_closes_expires_and_its_waiting_safety_backup_is_cancelled() {
    use chrono::Timelike;
    let harness = Harness::start().await;
    let mut admin = harness.admin();
    let mut agent = harness.agent("a1", vec![], vec![]).await;
    let artifact_id = backed_up(&mut admin, &mut agent).await;
    let now = chrono::Utc::now().with_nanosecond(0).expect("whole second");
    let closes = now + chrono::TimeDelta::seconds(4);
    apply(
        &mut admin,
        once_window(
            "maintenance",
            now - chrono::TimeDelta::hours(1),
            closes,
            "[limits]\nper_agent = 1\n",
        ),
    )
    .await;

    let _beats = agent.keep_alive();
    // The agent is busy, so the safety backup waits for a slot, and the window closes.
    let busy = submit_backup(&mut admin).await;
    assert_eq!(agent.next_order().await.order_id, busy.id);
    agent
        .send(agent_message::Msg::Started(pb::OrderStarted {
            order_id: busy.id.clone(),
        }))
        .await;
    let restore = admin
        .submit_restore(replace(&artifact_id, false, ""))
        .await
        .expect("restore")
        .into_inner();
    let waiting = wait_state(&mut admin, &restore.id, pb::OrderState::Held).await;
    assert_eq!(waiting.deadline_unix_ms, closes.timestamp_millis());
    let expired = wait_state(&mut admin, &restore.id, pb::OrderState::Expired).await;
    assert!(expired.error.contains("window closed"), "{expired:?}");
    let safety = wait_state(
        &mut admin,
        &expired.safety_backup_order_id,
        pb::OrderState::Cancelled,
    )
    .await;
    assert!(safety.error.contains(&restore.id), "{safety:?}");
    // The slot frees up and nothing else goes out: the cancelled backup is not dispatched.
    agent
        .report(backup_result(&busy.id, &uuid::Uuid::now_v7().to_string()))
        .await;
    wait_state(&mut admin, &busy.id, pb::OrderState::Succeeded).await;
    agent
        .assert_no_order(Duration::from_millis(1500), "nothing should be dispatched")
        .await;
    assert_chain_intact(&mut admin).await;
}

#[tokio::test]
async fn a_dispatched_restore_carries_its_window_close_and_a_freeze_holds_new_name_restores() {
    use chrono::Timelike;
    let harness = Harness::start().await;
    let mut admin = harness.admin();
    let mut agent = harness.agent("a1", vec![], vec![]).await;
    let artifact_id = backed_up(&mut admin, &mut agent).await;
    let now = chrono::Utc::now().with_nanosecond(0).expect("whole second");
    let closes = now + chrono::TimeDelta::hours(1);
    apply(
        &mut admin,
        once_window("maintenance", now - chrono::TimeDelta::hours(1), closes, ""),
    )
    .await;
    let restore = admin
        .submit_restore(replace(&artifact_id, false, ""))
        .await
        .expect("restore")
        .into_inner();
    let safety = agent.next_order().await;
    assert_eq!(safety.not_after_unix_ms, 0, "a backup may run any time");
    agent
        .report(verified_backup_result(
            &safety.order_id,
            &uuid::Uuid::now_v7().to_string(),
            true,
        ))
        .await;
    let assignment = agent.next_order().await;
    assert_eq!(assignment.order_id, restore.id);
    assert_eq!(assignment.not_after_unix_ms, closes.timestamp_millis());

    // A freeze lets only backups and health checks through.
    apply(
        &mut admin,
        once_window("freeze", now - chrono::TimeDelta::hours(1), closes, ""),
    )
    .await;
    let copy = admin
        .submit_restore(pb::SubmitRestoreRequest {
            artifact_id: artifact_id.clone(),
            new_name: "copy".to_owned(),
            ..Default::default()
        })
        .await
        .expect("restore as new")
        .into_inner();
    let held = wait_state(&mut admin, &copy.id, pb::OrderState::Held).await;
    assert!(held.phase.contains("frozen by window w"), "{held:?}");
    assert_eq!(held.held_until_unix_ms, closes.timestamp_millis());
}

async fn all_audit_events(admin: &mut Admin) -> Vec<pb::AuditEvent> {
    admin
        .list_audit(pb::ListAuditRequest {
            after_seq: 0,
            limit: 10_000,
        })
        .await
        .expect("audit")
        .into_inner()
        .events
}

async fn audit_events(admin: &mut Admin, action: &str) -> Vec<pb::AuditEvent> {
    all_audit_events(admin)
        .await
        .into_iter()
        .filter(|e| e.action == action)
        .collect()
}

fn audit_params(event: &pb::AuditEvent) -> serde_json::Value {
    serde_json::from_str(&event.params_json).expect("json")
}

/// The parameters of the `action` event about order `order_id`.
async fn order_audit_params(admin: &mut Admin, action: &str, order_id: &str) -> serde_json::Value {
    let events = audit_events(admin, action).await;
    let event = events
        .iter()
        .find(|e| e.params_json.contains(order_id))
        .unwrap_or_else(|| panic!("no {action} event for order {order_id}: {events:#?}"));
    audit_params(event)
}

#[tokio::test]
async fn a_database_never_has_two_scheduled_backups_at_once() {
    let harness = Harness::start().await;
    let mut admin = harness.admin();
    let mut agent = harness.agent("a1", vec![], vec![]).await;
    let _beats = agent.keep_alive();
    apply(
        &mut admin,
        "[[schedule]]\nname = \"every-second\"\nselector = \"\"\ncron = \"* * * * * *\"\ntimezone = \"UTC\"\n"
            .to_owned(),
    )
    .await;
    // The first scheduled backup runs and does not end while slots keep coming.
    let first = agent.next_order().await;
    agent
        .send(agent_message::Msg::Started(pb::OrderStarted {
            order_id: first.order_id.clone(),
        }))
        .await;
    let deadline = tokio::time::Instant::now() + WAIT;
    let fired = loop {
        let fired = audit_events(&mut admin, "schedule.fired").await;
        if fired.len() >= 4 || tokio::time::Instant::now() > deadline {
            break fired;
        }
        tokio::time::sleep(Duration::from_millis(200)).await;
    };
    assert!(
        fired.len() >= 4,
        "the schedule fires every second: {fired:#?}"
    );
    let orders: usize = fired
        .iter()
        .map(|e| {
            let params = audit_params(e);
            let skipped = params["skipped"].as_array().cloned().unwrap_or_default();
            let orders = params["orders"].as_array().map_or(0, Vec::len);
            if orders == 0 {
                assert_eq!(skipped.len(), 1, "{params}");
                assert_eq!(skipped[0]["database"], "a1/app", "{params}");
            }
            orders
        })
        .sum();
    assert_eq!(
        orders, 1,
        "one scheduled backup while the first runs: {fired:#?}"
    );
    agent
        .assert_no_order(
            Duration::from_millis(500),
            "no second backup was dispatched",
        )
        .await;

    // Once it ended, the next slot backs the database up again.
    agent
        .report(backup_result(
            &first.order_id,
            &uuid::Uuid::now_v7().to_string(),
        ))
        .await;
    let second = agent.next_order().await;
    assert_ne!(second.order_id, first.order_id);
    match second.spec.and_then(|s| s.params) {
        Some(pb::order_spec::Params::Backup(params)) => {
            assert_eq!(params.trigger, "schedule:every-second")
        }
        other => panic!("expected the next scheduled backup, got {other:?}"),
    }
}

fn drill_request(artifact_id: &str) -> pb::SubmitDrillRequest {
    pb::SubmitDrillRequest {
        database: "a1/app".to_owned(),
        artifact_id: artifact_id.to_owned(),
        reason: String::new(),
        on: String::new(),
    }
}

async fn artifact(admin: &mut Admin, id: &str) -> pb::Artifact {
    admin
        .get_artifact(pb::GetArtifactRequest { id: id.to_owned() })
        .await
        .expect("artifact")
        .into_inner()
}

#[tokio::test]
async fn drills_run_one_at_a_time_and_their_results_verify_or_condemn_the_artifact() {
    let harness = Harness::start().await;
    let mut admin = harness.admin();
    let mut agent = harness.agent("a1", vec![], vec![]).await;
    let artifact_id = backed_up(&mut admin, &mut agent).await;

    // A second drill of the database waits for the first: both would restore the same
    // artifact into the same scratch database.
    let first = admin
        .submit_drill(drill_request(""))
        .await
        .expect("drill")
        .into_inner();
    let assignment = agent.next_order().await;
    assert_eq!(assignment.order_id, first.id);
    let Some(pb::order_spec::Params::Drill(params)) = assignment.spec.and_then(|s| s.params) else {
        panic!("a drill order carries drill parameters");
    };
    assert_eq!(
        params.artifact_id, artifact_id,
        "the newest complete artifact"
    );
    let second = admin
        .submit_drill(drill_request(&artifact_id))
        .await
        .expect("drill")
        .into_inner();
    let held = wait_state(&mut admin, &second.id, pb::OrderState::Held).await;
    assert!(held.phase.contains(&first.id), "{held:?}");

    let passed = pb::OrderResult {
        order_id: first.id.clone(),
        success: true,
        outcome: Some(pb::order_result::Outcome::Drill(pb::DrillOutcome {
            scratch_database: "warden_drill_x".to_owned(),
            restore_millis: 1500,
            raw_bytes: 3000,
            ..Default::default()
        })),
        ..Default::default()
    };
    agent.report(passed.clone()).await;
    wait_state(&mut admin, &first.id, pb::OrderState::Succeeded).await;
    let verified = artifact(&mut admin, &artifact_id).await;
    assert!(
        verified.verified && verified.drilled_unix_ms > 0,
        "{verified:?}"
    );
    let report = admin
        .rto_report(pb::RtoReportRequest {})
        .await
        .expect("report")
        .into_inner();
    let row = report
        .rows
        .iter()
        .find(|r| r.database == "a1/app")
        .expect("a1/app is in the report");
    assert_eq!(row.last_drill_ms, 1500, "{row:?}");
    assert!(row.last_drill_passed, "{row:?}");
    // A duplicate of the result changes nothing.
    agent.report(passed).await;
    assert_eq!(audit_events(&mut admin, "artifact.verified").await.len(), 1);

    // The held drill goes out now; its failure proves the artifact corrupt.
    assert_eq!(agent.next_order().await.order_id, second.id);
    agent
        .report(pb::OrderResult {
            order_id: second.id.clone(),
            success: false,
            error: "sha256 of dump.zst is 00, catalog says ff".to_owned(),
            artifact_corrupt: true,
            ..Default::default()
        })
        .await;
    wait_state(&mut admin, &second.id, pb::OrderState::Failed).await;
    let corrupt = artifact(&mut admin, &artifact_id).await;
    assert_eq!(corrupt.state, "corrupt", "{corrupt:?}");
    assert!(!corrupt.verified, "a corrupt artifact is not verified");
    assert!(corrupt.corrupt_reason.contains("sha256"), "{corrupt:?}");
    assert_eq!(audit_events(&mut admin, "artifact.corrupt").await.len(), 1);

    // A corrupt artifact is neither drilled nor restored again, and no longer counts as a
    // recovery point.
    let refused = admin
        .submit_drill(drill_request(&artifact_id))
        .await
        .expect_err("corrupt artifact");
    assert!(refused.message().contains("corrupt"), "{refused:?}");
    let refused = admin
        .submit_drill(drill_request(""))
        .await
        .expect_err("no complete backup left");
    assert!(
        refused.message().contains("no complete backup"),
        "{refused:?}"
    );
    let report = admin
        .rto_report(pb::RtoReportRequest {})
        .await
        .expect("report")
        .into_inner();
    let row = report
        .rows
        .iter()
        .find(|r| r.database == "a1/app")
        .expect("a1/app is in the report");
    assert_eq!(row.status, "breach", "{row:?}");
    assert_eq!(row.newest_backup_unix_ms, 0, "{row:?}");
    assert_chain_intact(&mut admin).await;
}

#[tokio::test]
async fn a_drill_schedule_drills_the_newest_backup_with_the_policy_checks() {
    let harness = Harness::start().await;
    let mut admin = harness.admin();
    let mut agent = harness.agent("a1", vec![], vec![]).await;
    let _beats = agent.keep_alive();
    let artifact_id = backed_up(&mut admin, &mut agent).await;
    apply(
        &mut admin,
        r#"
[[schedule]]
name = "drill-every-second"
selector = ""
cron = "* * * * * *"
timezone = "UTC"
action = "drill"

[[checks]]
name = "has-rows"
selector = "database=app"
sql = "SELECT count(*) > 0 FROM t"
"#
        .to_owned(),
    )
    .await;
    let assignment = agent.next_order().await;
    let Some(pb::order_spec::Params::Drill(params)) = assignment.spec.and_then(|s| s.params) else {
        panic!("the schedule sends a drill");
    };
    assert_eq!(
        params.artifact_id, artifact_id,
        "the newest complete backup"
    );
    assert_eq!(params.checks.len(), 1, "{params:?}");
    assert_eq!(params.checks[0].name, "has-rows");
    let order = get_order(&mut admin, &assignment.order_id).await;
    assert_eq!(order.kind, pb::OrderKind::Drill as i32);
    assert_eq!(order.requested_by, "system:scheduler");
    let fired = audit_events(&mut admin, "schedule.fired").await;
    assert!(
        fired
            .iter()
            .any(|e| e.params_json.contains(&assignment.order_id)),
        "{fired:?}"
    );
}

// ---- safe migrations ----

fn migration_file(file_name: &str, sql: &str) -> pb::MigrationFile {
    let file = warden_shared::MigrationFile::from_file(file_name, sql.to_owned()).expect("valid");
    pb::MigrationFile::from(&file)
}

fn sql_migration(files: Vec<pb::MigrationFile>) -> pb::MigrationRequest {
    pb::MigrationRequest {
        source: Some(pb::migration_request::Source::Sql(pb::SqlMigrations {
            files,
        })),
        ..Default::default()
    }
}

/// A migration by the command its agent allows under `name`.
fn command_migration(name: &str) -> pb::MigrationRequest {
    pb::MigrationRequest {
        source: Some(pb::migration_request::Source::Command(name.to_owned())),
        ..Default::default()
    }
}

/// `migration` breaking glass for `reason`, without a pre-migration backup if asked.
fn emergency(
    reason: &str,
    skip_safety_backup: bool,
    migration: pb::MigrationRequest,
) -> pb::MigrationRequest {
    pb::MigrationRequest {
        emergency: true,
        skip_safety_backup,
        reason: reason.to_owned(),
        ..migration
    }
}

fn migrate(database: &str, migration: pb::MigrationRequest) -> pb::SubmitMigrateRequest {
    pb::SubmitMigrateRequest {
        database: database.to_owned(),
        migration: Some(migration),
        status_only: false,
    }
}

/// A comparison of `migration`'s files with what `database` recorded.
fn status_check(database: &str, migration: pb::MigrationRequest) -> pb::SubmitMigrateRequest {
    pb::SubmitMigrateRequest {
        status_only: true,
        ..migrate(database, migration)
    }
}

fn rollout_request(
    selector: &str,
    waves: &str,
    migration: pb::MigrationRequest,
) -> pb::SubmitRolloutRequest {
    pb::SubmitRolloutRequest {
        selector: selector.to_owned(),
        migration: Some(migration),
        waves: waves.to_owned(),
    }
}

/// Submits a migration that must be queued; `what` names it when it is not.
async fn submit_migrate(
    admin: &mut Admin,
    request: pb::SubmitMigrateRequest,
    what: &str,
) -> pb::Order {
    admin
        .submit_migrate(request)
        .await
        .expect(what)
        .into_inner()
}

/// Submits a migration that must be refused; `why` says why it should be.
async fn refused_migrate(
    admin: &mut Admin,
    request: pb::SubmitMigrateRequest,
    why: &str,
) -> tonic::Status {
    admin.submit_migrate(request).await.expect_err(why)
}

/// Submits a rollout that must start; `what` names it when it does not.
async fn submit_rollout(
    admin: &mut Admin,
    request: pb::SubmitRolloutRequest,
    what: &str,
) -> pb::Rollout {
    admin
        .submit_rollout(request)
        .await
        .expect(what)
        .into_inner()
}

/// Submits a rollout that must be refused; `why` says why it should be.
async fn refused_rollout(
    admin: &mut Admin,
    request: pb::SubmitRolloutRequest,
    why: &str,
) -> tonic::Status {
    admin.submit_rollout(request).await.expect_err(why)
}

/// Asserts that a refusal has `code` and says each of `words`.
fn assert_refused(status: &tonic::Status, code: tonic::Code, words: &[&str]) {
    assert_eq!(status.code(), code, "{status:?}");
    for words in words {
        assert!(
            status.message().contains(words),
            "{words}: {}",
            status.message()
        );
    }
}

/// What an agent reports for a migration that applied `outcome`.
fn migrate_outcome(order_id: &str, outcome: pb::MigrateOutcome) -> pb::OrderResult {
    pb::OrderResult {
        order_id: order_id.to_owned(),
        success: true,
        outcome: Some(pb::order_result::Outcome::Migrate(outcome)),
        ..Default::default()
    }
}

/// What an agent reports for a migration: `applied` versions on success, a failure of
/// `failed_version` otherwise.
fn migrate_result(
    order_id: &str,
    applied: &[&str],
    failed_version: Option<&str>,
    pre_migration: &str,
) -> pb::OrderResult {
    pb::OrderResult {
        success: failed_version.is_none(),
        error: failed_version
            .map(|v| format!("migration {v} failed: relation \"nope\" does not exist"))
            .unwrap_or_default(),
        ..migrate_outcome(
            order_id,
            pb::MigrateOutcome {
                applied: applied
                    .iter()
                    .map(|v| pb::AppliedMigration {
                        version: (*v).to_owned(),
                        name: "step".to_owned(),
                        ..Default::default()
                    })
                    .collect(),
                failed_version: failed_version.unwrap_or_default().to_owned(),
                pre_migration_artifact_id: pre_migration.to_owned(),
                ..Default::default()
            },
        )
    }
}

/// A migration's success: it applied `applied` and found `already` recorded, by checksum.
fn sql_result(
    order_id: &str,
    applied: &[&pb::MigrationFile],
    already: &[&pb::MigrationFile],
) -> pb::OrderResult {
    let rows = |files: &[&pb::MigrationFile]| {
        files
            .iter()
            .map(|f| pb::AppliedMigration {
                version: f.version.clone(),
                name: f.name.clone(),
                sha256: f.sha256.clone(),
                ..Default::default()
            })
            .collect()
    };
    migrate_outcome(
        order_id,
        pb::MigrateOutcome {
            applied: rows(applied),
            already_applied: rows(already),
            ..Default::default()
        },
    )
}

/// Answers a pre-migration backup with a verified artifact; returns the artifact's id.
async fn take_pre_migration_backup(agent: &mut ScriptedAgent, database: &str) -> String {
    let backup = agent.next_order().await;
    assert_eq!(backup.database, database);
    match backup.spec.and_then(|s| s.params) {
        Some(pb::order_spec::Params::Backup(params)) => {
            assert_eq!(params.trigger, "pre-migration");
            assert!(params.verify, "{params:?}");
        }
        other => panic!("expected the pre-migration backup first, got {other:?}"),
    }
    let artifact_id = uuid::Uuid::now_v7().to_string();
    agent
        .report(verified_backup_result(&backup.order_id, &artifact_id, true))
        .await;
    artifact_id
}

/// Answers a pre-migration backup, and takes the migration that comes after it: returns the
/// backup's artifact id and the migration's assignment.
async fn migration_after_backup(
    agent: &mut ScriptedAgent,
    database: &str,
) -> (String, pb::OrderAssignment) {
    let artifact_id = take_pre_migration_backup(agent, database).await;
    (artifact_id, agent.next_order().await)
}

/// The migration parameters of an order's spec.
fn migrate_params_in(spec: Option<pb::OrderSpec>) -> pb::MigrateParams {
    match spec.and_then(|s| s.params) {
        Some(pb::order_spec::Params::Migrate(params)) => params,
        other => panic!("expected a migration, got {other:?}"),
    }
}

fn migrate_params(assignment: &pb::OrderAssignment) -> pb::MigrateParams {
    migrate_params_in(assignment.spec.clone())
}

/// The artifact id of the pre-migration backup a migration carries.
fn carried_backup(assignment: &pb::OrderAssignment) -> Option<String> {
    migrate_params(assignment)
        .pre_migration
        .map(|p| p.artifact_id)
}

/// The migration files of an order as an operator sees it.
fn order_files(order: &pb::Order) -> Vec<pb::MigrationFile> {
    match migrate_params_in(order.spec.clone()).source {
        Some(pb::migrate_params::Source::Sql(sql)) => sql.files,
        other => panic!("expected SQL migration files, got {other:?}"),
    }
}

async fn rollout(admin: &mut Admin, id: &str) -> pb::Rollout {
    admin
        .get_rollout(pb::GetRolloutRequest { id: id.to_owned() })
        .await
        .expect("get rollout")
        .into_inner()
}

async fn order_count(admin: &mut Admin) -> usize {
    orders(admin).await.len()
}

/// Waits until order `id` is held with a phase that says `why`.
async fn wait_held_for(admin: &mut Admin, id: &str, why: &str) -> pb::Order {
    let deadline = tokio::time::Instant::now() + WAIT;
    loop {
        let held = wait_state(admin, id, pb::OrderState::Held).await;
        if held.phase.contains(why) {
            return held;
        }
        assert!(tokio::time::Instant::now() < deadline, "{held:?}");
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
}

/// Opens a maintenance window from an hour ago to an hour from now, with `limits`.
async fn open_window(admin: &mut Admin, limits: &str) {
    let now = chrono::Utc::now();
    apply(
        admin,
        once_window(
            "maintenance",
            now - chrono::TimeDelta::hours(1),
            now + chrono::TimeDelta::hours(1),
            limits,
        ),
    )
    .await;
}

#[tokio::test]
async fn a_migration_waits_for_a_window_and_carries_its_verified_pre_migration_backup() {
    use chrono::Timelike;
    let harness = Harness::start().await;
    let mut admin = harness.admin();
    let mut agent = harness.agent("a1", vec![], vec![]).await;
    let _beats = agent.keep_alive();
    let files = vec![
        migration_file("0002_index.sql", "CREATE INDEX secret_idx ON t (id);"),
        migration_file("0001_create.sql", "CREATE TABLE t (id int);"),
    ];

    // A status check runs at once: no window, no backup, not exclusive.
    let status = submit_migrate(
        &mut admin,
        status_check("a1/app", sql_migration(files.clone())),
        "status",
    )
    .await;
    let assignment = agent.next_order().await;
    assert_eq!(assignment.order_id, status.id);
    let params = migrate_params(&assignment);
    assert!(
        params.status_only && params.pre_migration.is_none(),
        "{params:?}"
    );
    agent
        .report(migrate_result(&status.id, &[], None, ""))
        .await;
    wait_state(&mut admin, &status.id, pb::OrderState::Succeeded).await;

    // Outside any window the migration waits, and says why.
    let order = submit_migrate(
        &mut admin,
        migrate("a1/app", sql_migration(files)),
        "migrate",
    )
    .await;
    let held = wait_state(&mut admin, &order.id, pb::OrderState::Held).await;
    assert!(
        held.phase.contains("outside maintenance windows"),
        "{held:?}"
    );

    // A window opens: the pre-migration backup goes first, then the migration with it.
    let now = chrono::Utc::now().with_nanosecond(0).expect("whole second");
    let closes = now + chrono::TimeDelta::hours(1);
    apply(
        &mut admin,
        once_window("maintenance", now - chrono::TimeDelta::hours(1), closes, ""),
    )
    .await;
    let (artifact_id, assignment) = migration_after_backup(&mut agent, "app").await;
    assert_eq!(assignment.order_id, order.id);
    assert_eq!(assignment.not_after_unix_ms, closes.timestamp_millis());
    assert_eq!(carried_backup(&assignment), Some(artifact_id.clone()));
    let params = migrate_params(&assignment);
    assert_eq!(params.on_check_failure, "stop");
    // Not guarded (env=test): the agent gets no deny list.
    assert!(params.deny_commands.is_empty(), "{params:?}");
    let Some(pb::migrate_params::Source::Sql(sql)) = &params.source else {
        panic!("{params:?}");
    };
    let versions: Vec<&str> = sql.files.iter().map(|f| f.version.as_str()).collect();
    assert_eq!(versions, ["0001", "0002"], "files go out in version order");
    let dispatched = wait_state(&mut admin, &order.id, pb::OrderState::Dispatched).await;
    let artifact = artifact(&mut admin, &artifact_id).await;
    assert_eq!(artifact.trigger, "pre-migration");
    assert_eq!(artifact.order_id, dispatched.safety_backup_order_id);

    agent
        .report(migrate_result(
            &order.id,
            &["0001", "0002"],
            None,
            &artifact_id,
        ))
        .await;
    wait_state(&mut admin, &order.id, pb::OrderState::Succeeded).await;

    // The audit log ties the migration to its backup, and never holds the SQL.
    let sent = audit_events(&mut admin, "order.dispatched").await;
    assert!(
        sent.iter().any(|e| e.params_json.contains(&order.id)
            && e.params_json
                .contains(&format!("\"pre_migration_artifact_id\":\"{artifact_id}\""))),
        "{sent:#?}"
    );
    let params = order_audit_params(&mut admin, "order.succeeded", &order.id).await;
    assert_eq!(
        params["applied"],
        serde_json::json!(["0001_step", "0002_step"])
    );
    assert_eq!(
        params["pre_migration_artifact_id"],
        serde_json::json!(artifact_id)
    );
    assert!(
        all_audit_events(&mut admin)
            .await
            .iter()
            .all(|e| !e.params_json.contains("secret_idx")),
        "SQL text in the audit log"
    );
    assert_chain_intact(&mut admin).await;
}

#[tokio::test]
async fn the_guard_refuses_destructive_migrations_in_prod_unless_glass_is_broken() {
    let harness = Harness::start().await;
    let mut admin = harness.admin();
    let mut agent = harness
        .connect(hello(
            "p1",
            &[("env", "prod")],
            vec![database(
                "shop",
                vec![
                    ("up", "php artisan migrate --force"),
                    ("fresh", "php artisan migrate:fresh --force"),
                ],
            )],
        ))
        .await;
    let destructive = sql_migration(vec![
        migration_file("0001_ok.sql", "CREATE TABLE t (id int);"),
        migration_file("0002_wipe.sql", "TRUNCATE orders;"),
    ]);
    let refused = refused_migrate(
        &mut admin,
        migrate("p1/shop", destructive.clone()),
        "guarded",
    )
    .await;
    assert_refused(
        &refused,
        tonic::Code::FailedPrecondition,
        &[
            "0002_wipe.sql",
            "\"TRUNCATE orders\"",
            "\"TRUNCATE\"",
            "--emergency --reason",
        ],
    );
    let refused = refused_migrate(
        &mut admin,
        migrate("p1/shop", command_migration("fresh")),
        "guarded command",
    )
    .await;
    assert_refused(
        &refused,
        tonic::Code::FailedPrecondition,
        &["\"migrate:fresh\""],
    );
    let refused = refused_migrate(
        &mut admin,
        migrate("p1/shop", command_migration("down")),
        "unknown command",
    )
    .await;
    assert_refused(
        &refused,
        tonic::Code::FailedPrecondition,
        &["it allows: up, fresh"],
    );
    let refused = refused_migrate(
        &mut admin,
        migrate(
            "p1/shop",
            sql_migration(vec![migration_file(
                "0001_x.sql",
                "BEGIN; SELECT 1; COMMIT;",
            )]),
        ),
        "invalid file",
    )
    .await;
    assert_refused(
        &refused,
        tonic::Code::InvalidArgument,
        &["nothing was queued"],
    );
    let refusals = audit_events(&mut admin, "migrate.submit").await;
    assert_eq!(refusals.len(), 4, "{refusals:#?}");
    assert!(refusals.iter().all(|e| e.outcome.starts_with("refused: ")));

    // Breaking glass passes the guard (and the window), after the pre-migration backup.
    let urgent = submit_migrate(
        &mut admin,
        migrate("p1/shop", emergency("incident 7", false, destructive)),
        "emergency",
    )
    .await;
    assert!(urgent.emergency);
    let (artifact_id, assignment) = migration_after_backup(&mut agent, "shop").await;
    assert_eq!(assignment.order_id, urgent.id);
    assert!(migrate_params(&assignment).deny_commands.is_empty());
    agent
        .report(migrate_result(
            &urgent.id,
            &["0001", "0002"],
            None,
            &artifact_id,
        ))
        .await;
    wait_state(&mut admin, &urgent.id, pb::OrderState::Succeeded).await;

    let refused = refused_migrate(
        &mut admin,
        migrate(
            "p1/shop",
            pb::MigrationRequest {
                no_wait: true,
                ..command_migration("up")
            },
        ),
        "no window open",
    )
    .await;
    assert_refused(&refused, tonic::Code::FailedPrecondition, &["--no-wait"]);
    // An allowed command in a window: the agent gets the guard's deny list to check again.
    open_window(&mut admin, "").await;
    let up = submit_migrate(
        &mut admin,
        migrate("p1/shop", command_migration("up")),
        "command",
    )
    .await;
    let (_, assignment) = migration_after_backup(&mut agent, "shop").await;
    assert_eq!(assignment.order_id, up.id);
    let params = migrate_params(&assignment);
    assert_eq!(
        params.source,
        Some(pb::migrate_params::Source::Command("up".to_owned()))
    );
    assert!(
        params.deny_commands.iter().any(|d| d == "migrate:fresh"),
        "{params:?}"
    );
    assert_chain_intact(&mut admin).await;
}

#[tokio::test]
async fn a_rollout_goes_wave_by_wave_and_a_failure_halts_it_before_later_waves() {
    let harness = Harness::start().await;
    let mut admin = harness.admin();
    let mut agents = harness.agents(&["a1", "a2", "a3"]).await;
    let _beats: Vec<_> = agents.iter().map(ScriptedAgent::keep_alive).collect();
    let files = vec![migration_file(
        "0001_create.sql",
        "CREATE TABLE t (id int);",
    )];

    // Refused whole, with every problem, when any database cannot take it.
    let refused = refused_rollout(
        &mut admin,
        rollout_request("env=test", "1,2,100%", command_migration("up")),
        "no agent allows the command",
    )
    .await;
    assert_refused(
        &refused,
        tonic::Code::FailedPrecondition,
        &["a1/app", "a2/app", "a3/app"],
    );
    let refused = refused_rollout(
        &mut admin,
        rollout_request("env=test", "1,50%", sql_migration(files.clone())),
        "waves do not end at 100%",
    )
    .await;
    assert_refused(&refused, tonic::Code::InvalidArgument, &[]);
    let unknown = refused_rollout(
        &mut admin,
        rollout_request("env=nowhere", "", sql_migration(files.clone())),
        "selects nothing",
    )
    .await;
    assert_refused(&unknown, tonic::Code::NotFound, &[]);
    let missing = admin
        .get_rollout(pb::GetRolloutRequest {
            id: uuid::Uuid::now_v7().to_string(),
        })
        .await
        .expect_err("unknown rollout");
    assert_refused(&missing, tonic::Code::NotFound, &["`warden rollouts`"]);
    assert!(
        orders(&mut admin).await.is_empty(),
        "a refused rollout created orders"
    );

    open_window(&mut admin, "").await;
    let started = submit_rollout(
        &mut admin,
        rollout_request(
            "env=test",
            "1,2,100%",
            pb::MigrationRequest {
                reason: "ship v2".to_owned(),
                ..sql_migration(files)
            },
        ),
        "rollout",
    )
    .await;
    assert_eq!(
        (
            started.state.as_str(),
            started.current_wave,
            started.wave_count
        ),
        ("running", 1, 3)
    );
    let waves: Vec<(&str, u32, &str)> = started
        .targets
        .iter()
        .map(|t| (t.database.as_str(), t.wave, t.state.as_str()))
        .collect();
    assert_eq!(
        waves[1..],
        [("a2/app", 2, "waiting"), ("a3/app", 3, "waiting")]
    );
    assert_eq!(started.migrations[0].version, "0001");

    // Wave 1: a1 only; a2 hears nothing until it succeeded.
    let (artifact_1, first) = migration_after_backup(&mut agents[0], "app").await;
    assert_eq!(migrate_params(&first).rollout_id, started.id);
    agents[1]
        .assert_no_order(Duration::from_millis(500), "wave 2 started early")
        .await;
    agents[0]
        .report(migrate_result(
            &first.order_id,
            &["0001"],
            None,
            &artifact_1,
        ))
        .await;

    // Wave 2: a2 fails; the rollout halts and a3 is never ordered.
    let (artifact_2, second) = migration_after_backup(&mut agents[1], "app").await;
    agents[1]
        .report(migrate_result(
            &second.order_id,
            &[],
            Some("0001"),
            &artifact_2,
        ))
        .await;
    wait_state(&mut admin, &second.order_id, pb::OrderState::Failed).await;
    let halted = rollout(&mut admin, &started.id).await;
    assert_eq!(halted.state, "halted", "{halted:?}");
    assert!(
        halted.error.starts_with("a2/app: migration 0001 failed"),
        "{halted:?}"
    );
    assert!(halted.finished_unix_ms > 0);
    let targets: Vec<(&str, &str)> = halted
        .targets
        .iter()
        .map(|t| (t.database.as_str(), t.state.as_str()))
        .collect();
    assert_eq!(
        targets,
        [
            ("a1/app", "succeeded"),
            ("a2/app", "failed"),
            ("a3/app", "skipped")
        ]
    );
    assert_eq!(halted.targets[0].applied, ["0001"]);
    assert_eq!(halted.targets[0].pre_migration_artifact_id, artifact_1);
    assert_eq!(halted.targets[1].pre_migration_artifact_id, artifact_2);
    assert!(halted.targets[2].order_id.is_empty());
    agents[2]
        .assert_no_order(
            Duration::from_millis(1500),
            "a halted rollout ordered wave 3",
        )
        .await;

    let listed = admin
        .list_rollouts(pb::ListRolloutsRequest {})
        .await
        .expect("list")
        .into_inner()
        .rollouts;
    assert_eq!(listed.len(), 1);
    assert_eq!(listed[0].id, started.id);
    for (action, count) in [
        ("rollout.started", 1),
        ("rollout.wave_started", 2),
        ("rollout.halted", 1),
        ("rollout.succeeded", 0),
    ] {
        assert_eq!(
            audit_events(&mut admin, action).await.len(),
            count,
            "{action}"
        );
    }
    assert_chain_intact(&mut admin).await;
}

#[tokio::test]
async fn a_rollout_succeeds_when_its_last_wave_does_and_a_cancel_halts_another() {
    let harness = Harness::start().await;
    let mut admin = harness.admin();
    let mut agents = harness.agents(&["a1", "a2"]).await;
    let _beats: Vec<_> = agents.iter().map(ScriptedAgent::keep_alive).collect();
    let request = |reason: &str| {
        rollout_request(
            "env=test",
            "50%,100%",
            emergency(
                reason,
                true,
                sql_migration(vec![migration_file("0001_a.sql", "SELECT 1;")]),
            ),
        )
    };
    let started = submit_rollout(&mut admin, request("hotfix"), "rollout").await;
    for agent in &mut agents {
        let order = agent.next_order().await;
        assert!(migrate_params(&order).pre_migration.is_none());
        agent
            .report(migrate_result(&order.order_id, &["0001"], None, ""))
            .await;
    }
    let deadline = tokio::time::Instant::now() + WAIT;
    while rollout(&mut admin, &started.id).await.state != "succeeded" {
        assert!(
            tokio::time::Instant::now() < deadline,
            "rollout did not succeed"
        );
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    assert_eq!(audit_events(&mut admin, "rollout.succeeded").await.len(), 1);

    // Cancelling an order of a running rollout halts it, with who cancelled and why.
    let second = submit_rollout(&mut admin, request("hotfix 2"), "rollout").await;
    let order = agents[0].next_order().await;
    agents[0]
        .report(pb::OrderResult {
            order_id: order.order_id.clone(),
            cancelled: true,
            error: "cancelled by operator".to_owned(),
            ..Default::default()
        })
        .await;
    wait_state(&mut admin, &order.order_id, pb::OrderState::Cancelled).await;
    let halted = rollout(&mut admin, &second.id).await;
    assert_eq!(halted.state, "halted");
    assert!(halted.error.starts_with("a1/app: "), "{halted:?}");
    assert_eq!(halted.targets[1].state, "skipped");
    assert_chain_intact(&mut admin).await;
}

#[tokio::test]
async fn the_guard_checks_only_files_not_known_applied_and_the_agent_gets_the_sql_deny_list() {
    let harness = Harness::start().await;
    let mut admin = harness.admin();
    let prod = |name: &str| hello(name, &[("env", "prod")], vec![database("shop", vec![])]);
    let mut p1 = harness.connect(prod("p1")).await;
    let mut p2 = harness.connect(prod("p2")).await;
    let _beats = (p1.keep_alive(), p2.keep_alive());
    open_window(&mut admin, "").await;
    let init = migration_file(
        "0001_init.sql",
        "DROP SCHEMA IF EXISTS app CASCADE; CREATE SCHEMA app;",
    );
    let add = migration_file("0002_add.sql", "CREATE TABLE app.t (id int);");

    // The init file went in by breaking glass: the agent got no deny list.
    let first = submit_migrate(
        &mut admin,
        migrate(
            "p1/shop",
            emergency("bootstrap", true, sql_migration(vec![init.clone()])),
        ),
        "emergency",
    )
    .await;
    let assignment = p1.next_order().await;
    assert_eq!(assignment.order_id, first.id);
    let params = migrate_params(&assignment);
    assert!(
        params.deny_sql.is_empty() && params.deny_commands.is_empty(),
        "{params:?}"
    );
    p1.report(sql_result(&first.id, &[&init], &[])).await;
    wait_state(&mut admin, &first.id, pb::OrderState::Succeeded).await;

    // The next migration sends the init file again: known applied on p1, so not checked.
    let second = submit_migrate(
        &mut admin,
        migrate("p1/shop", sql_migration(vec![init.clone(), add.clone()])),
        "the init file is known applied",
    )
    .await;
    let (_, assignment) = migration_after_backup(&mut p1, "shop").await;
    assert_eq!(assignment.order_id, second.id);
    let params = migrate_params(&assignment);
    // The agent checks what is really pending against the whole guard.
    for pattern in ["DROP SCHEMA ... CASCADE", "TRUNCATE", "DROP DATABASE"] {
        assert!(
            params.deny_sql.iter().any(|p| p == pattern),
            "{pattern}: {params:?}"
        );
    }
    assert!(
        params.deny_commands.iter().any(|c| c == "migrate:fresh"),
        "{params:?}"
    );
    p1.report(sql_result(&second.id, &[&add], &[&init])).await;
    wait_state(&mut admin, &second.id, pb::OrderState::Succeeded).await;

    // Elsewhere, or edited, the same file is checked, refused, and nothing is queued.
    let before = order_count(&mut admin).await;
    let refused = refused_migrate(
        &mut admin,
        migrate("p2/shop", sql_migration(vec![init.clone(), add.clone()])),
        "p2 never applied it",
    )
    .await;
    assert_refused(
        &refused,
        tonic::Code::FailedPrecondition,
        &["0001_init.sql"],
    );
    let edited = migration_file("0001_init.sql", "DROP SCHEMA app CASCADE;");
    let refused = refused_migrate(
        &mut admin,
        migrate("p1/shop", sql_migration(vec![edited, add.clone()])),
        "another file under the same version",
    )
    .await;
    assert_refused(
        &refused,
        tonic::Code::FailedPrecondition,
        &["0001_init.sql"],
    );
    let both = rollout_request(
        "env=prod",
        "",
        sql_migration(vec![init.clone(), add.clone()]),
    );
    let refused = refused_rollout(&mut admin, both.clone(), "p2 cannot take it").await;
    assert_refused(
        &refused,
        tonic::Code::FailedPrecondition,
        &["1 of the 2 databases", "p2/shop: 0001_init.sql"],
    );
    assert!(
        !refused.message().contains("p1/shop"),
        "{}",
        refused.message()
    );
    assert_eq!(
        order_count(&mut admin).await,
        before,
        "a refusal queued orders"
    );

    // A status check's report counts too: it found the init file recorded on p2.
    let status = submit_migrate(
        &mut admin,
        status_check("p2/shop", sql_migration(vec![init.clone()])),
        "status",
    )
    .await;
    assert_eq!(p2.next_order().await.order_id, status.id);
    p2.report(sql_result(&status.id, &[], &[&init])).await;
    wait_state(&mut admin, &status.id, pb::OrderState::Succeeded).await;

    // Now the rollout passes on both, and each agent gets the guard with its order.
    let started = submit_rollout(&mut admin, both, "both know the init file applied").await;
    for agent in [&mut p1, &mut p2] {
        let (_, assignment) = migration_after_backup(agent, "shop").await;
        let params = migrate_params(&assignment);
        assert_eq!(params.rollout_id, started.id);
        assert!(
            params
                .deny_sql
                .iter()
                .any(|p| p == "DROP SCHEMA ... CASCADE"),
            "{params:?}"
        );
    }
    assert_chain_intact(&mut admin).await;
}

#[tokio::test]
async fn operators_never_see_migration_sql_and_two_mib_of_it_reach_the_agent() {
    let harness = Harness::start().await;
    let mut admin = harness.admin();
    let mut agent = harness.agent("a1", vec![], vec![]).await;
    // As much SQL as one order may carry, in one file.
    let head = "CREATE TABLE big (id int);\n-- ";
    let size = warden_shared::migration::MAX_MIGRATION_BYTES;
    let sql = format!("{head}{}", "x".repeat(size - head.len()));
    let file = migration_file("0001_big.sql", &sql);
    let order = submit_migrate(
        &mut admin,
        status_check("a1/app", sql_migration(vec![file.clone()])),
        "2 MiB of SQL is accepted",
    )
    .await;
    let stripped = |order: &pb::Order| {
        let files = order_files(order);
        assert_eq!(files.len(), 1);
        assert_eq!(
            (
                files[0].version.as_str(),
                files[0].name.as_str(),
                files[0].sha256.as_str()
            ),
            ("0001", "big", file.sha256.as_str())
        );
        assert!(files[0].sql.is_empty(), "SQL shown to an operator");
    };
    stripped(&order);

    // The agent's assignment carries it whole.
    let assignment = agent.next_order().await;
    assert_eq!(assignment.order_id, order.id);
    match migrate_params(&assignment).source {
        Some(pb::migrate_params::Source::Sql(sql)) => {
            assert_eq!(sql.files[0].sql.len(), size);
            assert_eq!(sql.files[0].sha256, file.sha256);
        }
        other => panic!("{other:?}"),
    }
    stripped(&get_order(&mut admin, &order.id).await);
    let listed = orders(&mut admin).await;
    stripped(listed.iter().find(|o| o.id == order.id).expect("listed"));
    agent.report(sql_result(&order.id, &[], &[])).await;
    wait_state(&mut admin, &order.id, pb::OrderState::Succeeded).await;
}

#[tokio::test]
async fn a_safety_backup_taken_before_another_migration_of_the_database_ran_is_taken_again() {
    let harness = Harness::start().await;
    let mut admin = harness.admin();
    let mut agent = harness.agent("a1", vec![], vec![]).await;
    let _beats = agent.keep_alive();
    open_window(&mut admin, "").await;
    let a = migration_file("0001_a.sql", "CREATE TABLE a (id int);");
    let b = migration_file("0002_b.sql", "CREATE TABLE b (id int);");
    let m1 = submit_migrate(
        &mut admin,
        migrate("a1/app", sql_migration(vec![a.clone()])),
        "m1",
    )
    .await;
    let m2 = submit_migrate(
        &mut admin,
        migrate("a1/app", sql_migration(vec![a.clone(), b])),
        "m2",
    )
    .await;
    // Both backups run before either migration: m2's shows the database before m1.
    let artifact_1 = take_pre_migration_backup(&mut agent, "app").await;
    let artifact_2 = take_pre_migration_backup(&mut agent, "app").await;
    let first = agent.next_order().await;
    assert_eq!(first.order_id, m1.id);
    assert_eq!(carried_backup(&first), Some(artifact_1));
    // So m2 drops its backup, and takes none while m1 runs.
    let waiting = wait_held_for(&mut admin, &m2.id, &format!("waiting for order {}", m1.id)).await;
    assert!(waiting.safety_backup_order_id.is_empty(), "{waiting:?}");
    let discarded = audit_events(&mut admin, "order.safety_backup_discarded").await;
    assert_eq!(discarded.len(), 1, "{discarded:#?}");
    let params = audit_params(&discarded[0]);
    assert_eq!(params["order_id"], serde_json::json!(m2.id));
    assert!(
        params["why"]
            .as_str()
            .is_some_and(|why| why.contains(&format!("predates order {}", m1.id))),
        "{params}"
    );
    agent
        .assert_no_order(
            Duration::from_millis(500),
            "a backup was taken while m1 runs",
        )
        .await;

    // Once m1 ended, m2 takes a new backup and carries it, never the stale one.
    agent.report(sql_result(&m1.id, &[&a], &[])).await;
    let (artifact_3, second) = migration_after_backup(&mut agent, "app").await;
    assert_eq!(second.order_id, m2.id);
    let carried = carried_backup(&second);
    assert_eq!(carried, Some(artifact_3));
    assert_ne!(carried, Some(artifact_2));
    assert_chain_intact(&mut admin).await;
}

#[tokio::test]
async fn a_pre_migration_artifact_no_longer_complete_at_dispatch_is_taken_again() {
    let harness = Harness::start().await;
    let mut admin = harness.admin();
    let mut agent = harness
        .connect(hello(
            "a1",
            &[("env", "test")],
            vec![database("app", vec![]), database("other", vec![])],
        ))
        .await;
    let _beats = agent.keep_alive();
    open_window(&mut admin, "").await;
    let order = submit_migrate(
        &mut admin,
        migrate(
            "a1/app",
            sql_migration(vec![migration_file(
                "0001_a.sql",
                "CREATE TABLE a (id int);",
            )]),
        ),
        "migrate",
    )
    .await;
    let safety = agent.next_order().await;
    let busy = admin
        .submit_backup(pb::SubmitBackupRequest {
            database: "a1/other".to_owned(),
            reason: "busy".to_owned(),
        })
        .await
        .expect("backup")
        .into_inner();
    assert_eq!(agent.next_order().await.order_id, busy.id);
    // One order per agent from now: the migration binds its backup, then waits for a slot.
    open_window(&mut admin, "[limits]\nper_agent = 1\n").await;
    let artifact_id = uuid::Uuid::now_v7().to_string();
    agent
        .report(verified_backup_result(&safety.order_id, &artifact_id, true))
        .await;
    let held = wait_held_for(&mut admin, &order.id, "limits.per_agent").await;
    let bound = migrate_params_in(held.spec).pre_migration;
    assert_eq!(bound.map(|p| p.artifact_id), Some(artifact_id.clone()));

    // Retention expires that artifact meanwhile.
    let store = warden_coordinator::store::Store::open(&format!(
        "sqlite://{}/warden.db",
        harness.dir.path().display()
    ))
    .await
    .expect("store");
    let mut tx = store.begin().await.expect("begin");
    warden_coordinator::store::Store::expire_artifact(&mut tx, &artifact_id, 1, "test")
        .await
        .expect("expire");
    tx.commit().await.expect("commit");

    // The slot frees up: the migration takes a new backup and carries that one.
    agent
        .report(backup_result(&busy.id, &uuid::Uuid::now_v7().to_string()))
        .await;
    let (fresh, assignment) = migration_after_backup(&mut agent, "app").await;
    assert_eq!(assignment.order_id, order.id);
    assert_eq!(carried_backup(&assignment), Some(fresh));
    let discarded = audit_events(&mut admin, "order.safety_backup_discarded").await;
    assert_eq!(discarded.len(), 1, "{discarded:#?}");
    assert!(
        discarded[0]
            .params_json
            .contains(&format!("artifact {artifact_id}, is expired now")),
        "{discarded:#?}"
    );
    assert_chain_intact(&mut admin).await;
}

#[tokio::test]
async fn orders_of_a_rollout_halted_later_in_the_same_dispatch_pass_are_cancelled_not_sent() {
    let harness = Harness::start().await;
    let mut admin = harness.admin();
    let databases = || vec![database("app", vec![]), database("shop", vec![])];
    let mut agent = harness
        .connect(hello("a1", &[("env", "test")], databases()))
        .await;
    open_window(&mut admin, "").await;
    let started = submit_rollout(
        &mut admin,
        rollout_request(
            "env=test",
            "",
            sql_migration(vec![migration_file(
                "0001_a.sql",
                "CREATE TABLE a (id int);",
            )]),
        ),
        "rollout",
    )
    .await;
    let mut backups = HashMap::new();
    for _ in 0..2 {
        let backup = agent.next_order().await;
        backups.insert(backup.database.clone(), backup.order_id);
    }
    // The agent comes back with both results at once, so one dispatch pass sees the
    // migration of app ready (its backup succeeded) and then the one of shop failing (its
    // backup failed), which halts the rollout.
    let failed = pb::OrderResult {
        order_id: backups["shop"].clone(),
        error: "disk full".to_owned(),
        ..Default::default()
    };
    let mut agent = {
        drop(agent);
        harness
            .connect(pb::Hello {
                unacknowledged_results: vec![
                    verified_backup_result(
                        &backups["app"],
                        &uuid::Uuid::now_v7().to_string(),
                        true,
                    ),
                    failed,
                ],
                ..hello("a1", &[("env", "test")], databases())
            })
            .await
    };
    let _beats = agent.keep_alive();
    agent
        .assert_no_order(
            Duration::from_millis(1500),
            "an order of a halted rollout was sent",
        )
        .await;
    let halted = rollout(&mut admin, &started.id).await;
    assert_eq!(halted.state, "halted", "{halted:?}");
    let states: Vec<(&str, &str)> = halted
        .targets
        .iter()
        .map(|t| (t.database.as_str(), t.state.as_str()))
        .collect();
    assert_eq!(states, [("a1/app", "cancelled"), ("a1/shop", "failed")]);
    assert!(
        halted.targets[0]
            .error
            .contains("halted before this order was sent"),
        "{halted:?}"
    );
    assert_chain_intact(&mut admin).await;
}

#[tokio::test]
async fn an_auto_restore_that_finds_the_pre_migration_backup_corrupt_marks_it_corrupt() {
    let harness = Harness::start().await;
    let mut admin = harness.admin();
    let mut agent = harness.agent("a1", vec![], vec![]).await;
    let _beats = agent.keep_alive();
    open_window(&mut admin, "").await;
    let file = migration_file("0001_a.sql", "CREATE TABLE a (id int);");
    let order = submit_migrate(
        &mut admin,
        migrate("a1/app", sql_migration(vec![file])),
        "migrate",
    )
    .await;
    let (artifact_id, assignment) = migration_after_backup(&mut agent, "app").await;
    assert_eq!(assignment.order_id, order.id);
    let mut result = migrate_result(&order.id, &["0001"], None, &artifact_id);
    result.success = false;
    result.artifact_corrupt = true;
    result.error = format!(
        "post-check \"health\" failed; restoring pre-migration backup {artifact_id} failed: the pre-migration backup is unusable: sha256 mismatch"
    );
    agent.report(result).await;
    let failed = wait_state(&mut admin, &order.id, pb::OrderState::Failed).await;
    assert!(failed.error.contains("unusable"), "{failed:?}");

    let condemned = artifact(&mut admin, &artifact_id).await;
    assert_eq!(condemned.state, "corrupt", "{condemned:?}");
    assert!(
        condemned.corrupt_reason.contains("sha256 mismatch"),
        "{condemned:?}"
    );
    let events = audit_events(&mut admin, "artifact.corrupt").await;
    assert_eq!(events.len(), 1, "{events:#?}");
    let params = order_audit_params(&mut admin, "order.failed", &order.id).await;
    assert_eq!(params["artifact_corrupt"], true, "{params}");
    assert_eq!(
        params["pre_migration_artifact_id"],
        serde_json::json!(artifact_id)
    );
    assert_chain_intact(&mut admin).await;
}
