//! The coordinator over real gRPC on loopback, with a scripted agent: dispatch, results,
//! reconciliation after an agent restart, fencing, refusals and the audit chain.

use std::time::Duration;

use tokio::sync::mpsc;
use tokio_stream::StreamExt;
use tokio_stream::wrappers::ReceiverStream;
use tonic::Streaming;
use tonic::transport::{Channel, Endpoint};
use warden_coordinator::CoordinatorConfig;
use warden_proto::v1::admin_service_client::AdminServiceClient;
use warden_proto::v1::agent_service_client::AgentServiceClient;
use warden_proto::v1::{self as pb, agent_message, coordinator_message};

const WAIT: Duration = Duration::from_secs(10);

struct Harness {
    dir: tempfile::TempDir,
    channel: Channel,
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
        let listener = tokio::net::TcpListener::bind("127.0.0.1:0")
            .await
            .expect("bind");
        let addr = listener.local_addr().expect("addr");
        let config = CoordinatorConfig {
            listen: addr,
            store: format!("sqlite://{}/warden.db", dir.path().display()),
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
            stop: Some(stop),
            server,
        }
    }

    fn admin(&self) -> AdminServiceClient<Channel> {
        AdminServiceClient::new(self.channel.clone())
    }

    async fn agent(
        &self,
        name: &str,
        running: Vec<String>,
        results: Vec<pb::OrderResult>,
    ) -> ScriptedAgent {
        let (tx, rx) = mpsc::channel(64);
        let hello = pb::Hello {
            agent: name.to_owned(),
            version: "test".to_owned(),
            labels: [("env".to_owned(), "test".to_owned())].into(),
            databases: vec![pb::DatabaseInfo {
                name: "app".to_owned(),
                labels: Default::default(),
            }],
            running_order_ids: running,
            unacknowledged_results: results,
            repository: "file:///repo".to_owned(),
        };
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

async fn wait_state(
    admin: &mut AdminServiceClient<Channel>,
    id: &str,
    state: pb::OrderState,
) -> pb::Order {
    let deadline = tokio::time::Instant::now() + WAIT;
    loop {
        let order = admin
            .get_order(pb::GetOrderRequest { id: id.to_owned() })
            .await
            .expect("get order")
            .into_inner();
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

async fn assert_chain_intact(admin: &mut AdminServiceClient<Channel>) {
    let verify = admin
        .verify_audit(pb::VerifyAuditRequest {})
        .await
        .expect("verify")
        .into_inner();
    assert!(verify.ok, "{verify:?}");
}

async fn submit_backup(admin: &mut AdminServiceClient<Channel>) -> pb::Order {
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
        let running = admin
            .get_order(pb::GetOrderRequest {
                id: order.id.clone(),
            })
            .await
            .expect("order")
            .into_inner();
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
    agent
        .send(agent_message::Msg::Result(backup_result(
            &order.id,
            &artifact_id,
        )))
        .await;
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
    agent
        .send(agent_message::Msg::Result(backup_result(
            &order.id,
            &artifact_id,
        )))
        .await;
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
    agent
        .send(agent_message::Msg::Result(backup_result(
            &first.id,
            &artifact_id,
        )))
        .await;
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

    let orders = admin
        .list_orders(pb::ListOrdersRequest::default())
        .await
        .expect("orders")
        .into_inner()
        .orders;
    assert!(
        orders.is_empty(),
        "refused calls created orders: {orders:?}"
    );
    let events = admin
        .list_audit(pb::ListAuditRequest {
            after_seq: 0,
            limit: 100,
        })
        .await
        .expect("audit")
        .into_inner()
        .events;
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
    let still = admin
        .get_order(pb::GetOrderRequest {
            id: order.id.clone(),
        })
        .await
        .expect("order")
        .into_inner();
    assert_eq!(still.state(), pb::OrderState::Running, "{still:?}");
    let artifact_id = uuid::Uuid::now_v7().to_string();
    agent
        .send(agent_message::Msg::Result(backup_result(
            &order.id,
            &artifact_id,
        )))
        .await;
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
    agent
        .send(agent_message::Msg::Result(backup_result(
            &first.id,
            &artifact_id,
        )))
        .await;
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
async fn backed_up(admin: &mut AdminServiceClient<Channel>, agent: &mut ScriptedAgent) -> String {
    let order = submit_backup(admin).await;
    assert_eq!(agent.next_order().await.order_id, order.id);
    let artifact_id = uuid::Uuid::now_v7().to_string();
    agent
        .send(agent_message::Msg::Result(backup_result(
            &order.id,
            &artifact_id,
        )))
        .await;
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
        .send(agent_message::Msg::Result(verified_backup_result(
            &safety.order_id,
            &uuid::Uuid::now_v7().to_string(),
            false,
        )))
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
        .send(agent_message::Msg::Result(verified_backup_result(
            &safety.order_id,
            &uuid::Uuid::now_v7().to_string(),
            true,
        )))
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
        .send(agent_message::Msg::Result(backup_result(
            &backup.id,
            &uuid::Uuid::now_v7().to_string(),
        )))
        .await;
    assert_eq!(agent.next_order().await.order_id, health.id);
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
    let params: serde_json::Value = serde_json::from_str(&fired[0].params_json).expect("json");
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

async fn apply(admin: &mut AdminServiceClient<Channel>, toml: String) {
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
        .send(agent_message::Msg::Result(backup_result(
            &busy.id,
            &uuid::Uuid::now_v7().to_string(),
        )))
        .await;
    wait_state(&mut admin, &busy.id, pb::OrderState::Succeeded).await;
    let next = tokio::time::timeout(Duration::from_millis(1500), agent.next_order()).await;
    assert!(next.is_err(), "nothing should be dispatched: {next:?}");
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
        .send(agent_message::Msg::Result(verified_backup_result(
            &safety.order_id,
            &uuid::Uuid::now_v7().to_string(),
            true,
        )))
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

async fn audit_events(
    admin: &mut AdminServiceClient<Channel>,
    action: &str,
) -> Vec<pb::AuditEvent> {
    admin
        .list_audit(pb::ListAuditRequest {
            after_seq: 0,
            limit: 10_000,
        })
        .await
        .expect("audit")
        .into_inner()
        .events
        .into_iter()
        .filter(|e| e.action == action)
        .collect()
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
            let params: serde_json::Value = serde_json::from_str(&e.params_json).expect("json");
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
    let next = tokio::time::timeout(Duration::from_millis(500), agent.next_order()).await;
    assert!(next.is_err(), "no second backup was dispatched: {next:?}");

    // Once it ended, the next slot backs the database up again.
    agent
        .send(agent_message::Msg::Result(backup_result(
            &first.order_id,
            &uuid::Uuid::now_v7().to_string(),
        )))
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

async fn artifact(admin: &mut AdminServiceClient<Channel>, id: &str) -> pb::Artifact {
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
    agent.send(agent_message::Msg::Result(passed.clone())).await;
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
    agent.send(agent_message::Msg::Result(passed)).await;
    assert_eq!(audit_events(&mut admin, "artifact.verified").await.len(), 1);

    // The held drill goes out now; its failure proves the artifact corrupt.
    assert_eq!(agent.next_order().await.order_id, second.id);
    agent
        .send(agent_message::Msg::Result(pb::OrderResult {
            order_id: second.id.clone(),
            success: false,
            error: "sha256 of dump.zst is 00, catalog says ff".to_owned(),
            artifact_corrupt: true,
            ..Default::default()
        }))
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
    let order = admin
        .get_order(pb::GetOrderRequest {
            id: assignment.order_id.clone(),
        })
        .await
        .expect("order")
        .into_inner();
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
