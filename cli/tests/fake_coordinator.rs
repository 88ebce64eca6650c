//! Runs the real `warden` binary against a scripted in-process AdminService on loopback.
//!
//! The fake answers like the coordinator would (orders that progress, refusals with
//! messages), so these tests pin what scripts rely on: exit codes, JSON shapes, the actor
//! metadata and the refusal to replace without confirmation.

use std::collections::HashMap;
use std::process::Stdio;
use std::sync::{Arc, Mutex};

use serde_json::Value;
use tokio::net::TcpListener;
use tokio_stream::wrappers::TcpListenerStream;
use tonic::{Request, Response, Status};
use warden_proto::v1;
use warden_proto::v1::admin_service_server::{AdminService, AdminServiceServer};
use warden_proto::v1::order_result::Outcome as ResultOutcome;

const CREATED_MS: i64 = 1_795_728_605_250;

#[derive(Default)]
struct Recorded {
    actors: Vec<String>,
    polls: HashMap<String, usize>,
    restores: Vec<v1::SubmitRestoreRequest>,
}

struct Fake {
    audit_broken: bool,
    recorded: Arc<Mutex<Recorded>>,
}

impl Fake {
    fn record<T>(&self, request: &Request<T>) {
        let actor = request
            .metadata()
            .get("x-warden-actor")
            .and_then(|v| v.to_str().ok())
            .unwrap_or("<none>")
            .to_owned();
        self.recorded.lock().expect("lock").actors.push(actor);
    }
}

fn order(id: &str, kind: v1::OrderKind, database: &str, state: v1::OrderState) -> v1::Order {
    v1::Order {
        id: id.into(),
        kind: kind.into(),
        database: database.into(),
        state: state.into(),
        requested_by: "tester@fake".into(),
        attempts: 1,
        created_unix_ms: CREATED_MS,
        updated_unix_ms: CREATED_MS,
        ..Default::default()
    }
}

fn finished(mut order: v1::Order, outcome: Option<ResultOutcome>, error: &str) -> v1::Order {
    order.started_unix_ms = CREATED_MS + 100;
    order.finished_unix_ms = CREATED_MS + 2100;
    order.error = error.into();
    order.result = Some(v1::OrderResult {
        order_id: order.id.clone(),
        success: error.is_empty(),
        error: error.into(),
        cancelled: false,
        outcome,
    });
    order
}

fn running(mut order: v1::Order, bytes: u64) -> v1::Order {
    order.state = v1::OrderState::Running.into();
    order.phase = "dump".into();
    order.progress_bytes = bytes;
    order.progress_bytes_per_sec = 1024.0 * 1024.0;
    order
}

/// The states an order goes through, one per poll; the last one stays.
fn script(id: &str) -> Option<Vec<v1::Order>> {
    use v1::OrderKind::{Backup, Restore};
    use v1::OrderState::{Failed, Queued, Succeeded};
    let backup = |state| order(id, Backup, "pg1/shop", state);
    match id {
        "o-ok" => Some(vec![
            backup(Queued),
            running(backup(Queued), 1024 * 1024),
            running(backup(Queued), 3 * 1024 * 1024),
            finished(
                backup(Succeeded),
                Some(ResultOutcome::Backup(v1::BackupOutcome {
                    artifact_id: "a-1".into(),
                    artifact_path: "pg1/shop/a-1".into(),
                    manifest_json: "{}".into(),
                })),
                "",
            ),
        ]),
        "o-fail" => Some(vec![
            backup(Queued),
            running(backup(Queued), 4096),
            finished(
                backup(Failed),
                None,
                "pg_dump exited with status 1: permission denied for table secrets",
            ),
        ]),
        "o-restore" => Some(vec![
            order(id, Restore, "pg1/shop", Queued),
            finished(
                order(id, Restore, "pg1/shop", Succeeded),
                Some(ResultOutcome::Restore(v1::RestoreOutcome {
                    database: "pg1/shop".into(),
                    tables_verified: 3,
                    rows_verified: 950,
                    phases: vec![v1::PhaseTiming {
                        phase: "restore".into(),
                        millis: 1500,
                    }],
                })),
                "",
            ),
        ]),
        _ => None,
    }
}

fn artifact() -> v1::Artifact {
    v1::Artifact {
        id: "a-1".into(),
        database: "pg1/shop".into(),
        state: "complete".into(),
        trigger: "manual".into(),
        order_id: "o-ok".into(),
        created_unix_ms: CREATED_MS,
        size_bytes: 40_960,
        raw_bytes: 204_800,
        sha256: "ab".repeat(32),
        server_version: "15.18".into(),
        pg_dump_version: "pg_dump (PostgreSQL) 15.18".into(),
        path: "pg1/shop/a-1".into(),
        verified: true,
        manifest_json: r#"{"format":1,"tables":[]}"#.into(),
    }
}

#[tonic::async_trait]
impl AdminService for Fake {
    async fn list_agents(
        &self,
        request: Request<v1::ListAgentsRequest>,
    ) -> Result<Response<v1::ListAgentsResponse>, Status> {
        self.record(&request);
        let agent = |name: &str, online| v1::Agent {
            name: name.into(),
            version: "0.1.0".into(),
            labels: HashMap::from([("env".into(), "demo".into())]),
            online,
            last_seen_unix_ms: CREATED_MS,
            database_count: 1,
            repository: "file:///repo".into(),
        };
        Ok(Response::new(v1::ListAgentsResponse {
            agents: vec![agent("pg1", true), agent("pg2", false)],
        }))
    }

    async fn list_databases(
        &self,
        request: Request<v1::ListDatabasesRequest>,
    ) -> Result<Response<v1::ListDatabasesResponse>, Status> {
        self.record(&request);
        Ok(Response::new(v1::ListDatabasesResponse {
            databases: vec![],
        }))
    }

    async fn submit_backup(
        &self,
        request: Request<v1::SubmitBackupRequest>,
    ) -> Result<Response<v1::Order>, Status> {
        self.record(&request);
        let id = match request.get_ref().database.as_str() {
            "pg1/shop" => "o-ok",
            "pg1/broken" => "o-fail",
            other => {
                return Err(Status::not_found(format!(
                    "unknown database {other}: see warden databases"
                )));
            }
        };
        let first = script(id).and_then(|s| s.into_iter().next());
        first
            .map(Response::new)
            .ok_or_else(|| Status::internal("no script"))
    }

    async fn submit_restore(
        &self,
        request: Request<v1::SubmitRestoreRequest>,
    ) -> Result<Response<v1::Order>, Status> {
        self.record(&request);
        self.recorded
            .lock()
            .expect("lock")
            .restores
            .push(request.into_inner());
        let first = script("o-restore").and_then(|s| s.into_iter().next());
        first
            .map(Response::new)
            .ok_or_else(|| Status::internal("no script"))
    }

    async fn submit_health(
        &self,
        request: Request<v1::SubmitHealthRequest>,
    ) -> Result<Response<v1::Order>, Status> {
        self.record(&request);
        Err(Status::failed_precondition(
            "agent pg2 is offline: start it, then retry",
        ))
    }

    async fn get_order(
        &self,
        request: Request<v1::GetOrderRequest>,
    ) -> Result<Response<v1::Order>, Status> {
        self.record(&request);
        let id = request.into_inner().id;
        let steps =
            script(&id).ok_or_else(|| Status::not_found(format!("no order with id {id}")))?;
        let mut recorded = self.recorded.lock().expect("lock");
        let polls = recorded.polls.entry(id).or_default();
        let step = steps[(*polls).min(steps.len() - 1)].clone();
        *polls += 1;
        Ok(Response::new(step))
    }

    async fn list_orders(
        &self,
        request: Request<v1::ListOrdersRequest>,
    ) -> Result<Response<v1::ListOrdersResponse>, Status> {
        self.record(&request);
        Ok(Response::new(v1::ListOrdersResponse { orders: vec![] }))
    }

    async fn cancel_order(
        &self,
        request: Request<v1::CancelOrderRequest>,
    ) -> Result<Response<v1::Order>, Status> {
        self.record(&request);
        Err(Status::failed_precondition(
            "order o-ok has already ended: nothing to cancel",
        ))
    }

    async fn list_artifacts(
        &self,
        request: Request<v1::ListArtifactsRequest>,
    ) -> Result<Response<v1::ListArtifactsResponse>, Status> {
        self.record(&request);
        Ok(Response::new(v1::ListArtifactsResponse {
            artifacts: vec![artifact()],
        }))
    }

    async fn get_artifact(
        &self,
        request: Request<v1::GetArtifactRequest>,
    ) -> Result<Response<v1::Artifact>, Status> {
        self.record(&request);
        match request.get_ref().id.as_str() {
            "a-1" => Ok(Response::new(artifact())),
            other => Err(Status::not_found(format!("no artifact with id {other}"))),
        }
    }

    async fn list_audit(
        &self,
        request: Request<v1::ListAuditRequest>,
    ) -> Result<Response<v1::ListAuditResponse>, Status> {
        self.record(&request);
        Ok(Response::new(v1::ListAuditResponse { events: vec![] }))
    }

    async fn verify_audit(
        &self,
        request: Request<v1::VerifyAuditRequest>,
    ) -> Result<Response<v1::VerifyAuditResponse>, Status> {
        self.record(&request);
        Ok(Response::new(if self.audit_broken {
            v1::VerifyAuditResponse {
                ok: false,
                events_checked: 4,
                first_broken_seq: 4,
                problem: "hash does not match the event's contents".into(),
            }
        } else {
            v1::VerifyAuditResponse {
                ok: true,
                events_checked: 12,
                first_broken_seq: 0,
                problem: String::new(),
            }
        }))
    }
}

struct Server {
    url: String,
    recorded: Arc<Mutex<Recorded>>,
}

async fn start(audit_broken: bool) -> Server {
    let listener = TcpListener::bind("127.0.0.1:0").await.expect("bind");
    let url = format!("http://{}", listener.local_addr().expect("local addr"));
    let recorded = Arc::new(Mutex::new(Recorded::default()));
    let fake = Fake {
        audit_broken,
        recorded: recorded.clone(),
    };
    tokio::spawn(
        tonic::transport::Server::builder()
            .add_service(AdminServiceServer::new(fake))
            .serve_with_incoming(TcpListenerStream::new(listener)),
    );
    Server { url, recorded }
}

struct Run {
    code: i32,
    stdout: String,
    stderr: String,
}

impl Run {
    fn json(&self) -> Value {
        serde_json::from_str(&self.stdout)
            .unwrap_or_else(|err| panic!("stdout is not JSON ({err}): {}", self.stdout))
    }
}

async fn warden(url: &str, args: &[&str]) -> Run {
    let output = tokio::process::Command::new(env!("CARGO_BIN_EXE_warden"))
        .args(args)
        .env("WARDEN_COORDINATOR", url)
        .env("USER", "tester")
        .stdin(Stdio::null())
        .output()
        .await
        .expect("run warden");
    Run {
        code: output.status.code().expect("exited"),
        stdout: String::from_utf8(output.stdout).expect("utf-8 stdout"),
        stderr: String::from_utf8(output.stderr).expect("utf-8 stderr"),
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn agents_as_json_with_the_actor_on_every_call() {
    let server = start(false).await;
    let run = warden(&server.url, &["agents", "--json"]).await;
    assert_eq!(run.code, 0, "{}", run.stderr);
    let agents = run.json();
    assert_eq!(agents.as_array().map(Vec::len), Some(2));
    assert_eq!(agents[0]["name"], "pg1");
    assert_eq!(agents[0]["labels"]["env"], "demo");
    assert_eq!(agents[1]["online"], false);
    assert_eq!(agents[0]["last_seen"], "2026-11-26T21:30:05.250Z");

    let actors = server.recorded.lock().expect("lock").actors.clone();
    assert_eq!(actors.len(), 1);
    assert!(actors[0].starts_with("tester@"), "{actors:?}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn tables_for_people() {
    let server = start(false).await;
    let run = warden(&server.url, &["artifacts"]).await;
    assert_eq!(run.code, 0, "{}", run.stderr);
    let mut lines = run.stdout.lines();
    assert!(
        lines.next().is_some_and(|l| l.starts_with("ID")),
        "{}",
        run.stdout
    );
    let row = lines.next().expect("one artifact row");
    for cell in [
        "a-1",
        "pg1/shop",
        "complete",
        "2026-11-26 21:30:05Z",
        "40.0 KiB",
    ] {
        assert!(row.contains(cell), "{cell} missing in {row}");
    }
    let empty = warden(&server.url, &["databases"]).await;
    assert_eq!(empty.stdout.trim(), "no databases");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn backup_wait_follows_to_success() {
    let server = start(false).await;
    let run = warden(&server.url, &["backup", "pg1/shop", "--wait", "--json"]).await;
    assert_eq!(run.code, 0, "{}", run.stderr);
    let order = run.json();
    assert_eq!(order["state"], "succeeded");
    assert_eq!(order["kind"], "backup");
    assert_eq!(order["artifact_id"], "a-1");
    assert_eq!(order["restore"], Value::Null);
    assert_eq!(order["finished_at"], "2026-11-26T21:30:07.350Z");
    let polls = server.recorded.lock().expect("lock").polls["o-ok"];
    assert!(polls >= 3, "polled {polls} times");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn backup_without_wait_prints_the_submitted_order() {
    let server = start(false).await;
    let run = warden(&server.url, &["backup", "pg1/broken", "--json"]).await;
    assert_eq!(run.code, 0, "{}", run.stderr);
    assert_eq!(run.json()["state"], "queued");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn failed_work_exits_one_with_its_error() {
    let server = start(false).await;
    let run = warden(&server.url, &["backup", "pg1/broken", "--wait"]).await;
    assert_eq!(run.code, 1, "{}", run.stderr);
    assert!(run.stdout.contains("failed"), "{}", run.stdout);
    assert!(
        run.stdout.contains("permission denied for table secrets"),
        "{}",
        run.stdout
    );
    let watched = warden(&server.url, &["order", "o-fail", "--watch", "--json"]).await;
    assert_eq!(watched.code, 1);
    assert_eq!(
        watched.json()["error"],
        "pg_dump exited with status 1: permission denied for table secrets"
    );
    // Without --watch the order is only shown: success, whatever its state.
    let shown = warden(&server.url, &["order", "o-fail"]).await;
    assert_eq!(shown.code, 0, "{}", shown.stderr);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn refusals_exit_two_with_the_coordinators_message() {
    let server = start(false).await;
    let unknown = warden(&server.url, &["backup", "pg9/x"]).await;
    assert_eq!(unknown.code, 2);
    assert_eq!(
        unknown.stderr.trim(),
        "error: unknown database pg9/x: see warden databases"
    );
    let offline = warden(&server.url, &["health", "pg2/inventory", "--wait"]).await;
    assert_eq!(offline.code, 2);
    assert!(
        offline.stderr.contains("agent pg2 is offline"),
        "{}",
        offline.stderr
    );
    let missing = warden(&server.url, &["order", "nope"]).await;
    assert_eq!(missing.code, 2);
    assert_eq!(missing.stderr.trim(), "error: no order with id nope");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn replacing_needs_confirmation() {
    let server = start(false).await;
    let refused = warden(&server.url, &["restore", "a-1", "--replace"]).await;
    assert_eq!(refused.code, 2);
    assert_eq!(
        refused.stderr.trim(),
        "error: refusing to replace without confirmation: pass --yes"
    );
    assert!(server.recorded.lock().expect("lock").restores.is_empty());

    let run = warden(
        &server.url,
        &["restore", "a-1", "--replace", "--yes", "--wait", "--json"],
    )
    .await;
    assert_eq!(run.code, 0, "{}", run.stderr);
    let order = run.json();
    assert_eq!(order["restore"]["rows_verified"], 950);
    assert_eq!(order["restore"]["phases"][0]["phase"], "restore");
    let restores = server.recorded.lock().expect("lock").restores.clone();
    assert_eq!(restores.len(), 1);
    assert!(restores[0].replace && restores[0].new_name.is_empty());
    assert_eq!(restores[0].artifact_id, "a-1");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn restore_as_a_new_database() {
    let server = start(false).await;
    let run = warden(
        &server.url,
        &[
            "restore",
            "a-1",
            "--new-name",
            "shop copy",
            "--target",
            "pg2/inventory",
        ],
    )
    .await;
    assert_eq!(run.code, 0, "{}", run.stderr);
    let restores = server.recorded.lock().expect("lock").restores.clone();
    assert_eq!(restores[0].new_name, "shop copy");
    assert_eq!(restores[0].target, "pg2/inventory");
    assert!(!restores[0].replace);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn audit_verify_reports_intact_and_broken_chains() {
    let intact = start(false).await;
    let run = warden(&intact.url, &["audit", "verify"]).await;
    assert_eq!(run.code, 0);
    assert_eq!(run.stdout.trim(), "audit log intact: 12 events checked");

    let broken = start(true).await;
    let run = warden(&broken.url, &["audit", "verify"]).await;
    assert_eq!(run.code, 1);
    assert_eq!(
        run.stdout.trim(),
        "audit log BROKEN at seq 4: hash does not match the event's contents"
    );
    let run = warden(&broken.url, &["audit", "verify", "--json"]).await;
    assert_eq!(run.code, 1);
    assert_eq!(
        run.json(),
        serde_json::json!({"ok": false, "events_checked": 4, "first_broken_seq": 4,
                           "problem": "hash does not match the event's contents"})
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_absent_coordinator_is_named() {
    let port = std::net::TcpListener::bind("127.0.0.1:0")
        .and_then(|l| l.local_addr())
        .expect("bind a free port")
        .port();
    let url = format!("http://127.0.0.1:{port}");
    let run = warden(&url, &["agents"]).await;
    assert_eq!(run.code, 2);
    assert!(
        run.stderr
            .starts_with(&format!("error: cannot reach the coordinator at {url}: ")),
        "{}",
        run.stderr
    );
    assert!(
        run.stderr
            .contains("set --coordinator or WARDEN_COORDINATOR")
    );
}
