//! `warden-fleet-floor`: the transport floor of the coordinator-scale benchmark
//! (`bench/coordinator.sh`, see BENCHMARKS.md).
//!
//! It speaks the coordinator's side of the protocol that `warden-fleet-sim` uses, over the
//! same gRPC stack with the same server settings, and does nothing else: an agent's `Hello`
//! gets its `Welcome`; `SubmitBackup` puts the order on its agent's stream at once and
//! answers; a result is acknowledged at once; `ListAgents`, `GetOrder` and `ListAudit`
//! answer from memory. No store, no audit chain, no policy, no dispatcher. Run in place of
//! the coordinator, the simulator then measures what the same traffic costs the transport
//! alone on this machine: the coordinator's figures are read against it.

use std::collections::HashMap;
use std::convert::Infallible;
use std::net::SocketAddr;
use std::pin::Pin;
use std::sync::{Arc, Mutex, MutexGuard};
use std::task::{Context, Poll};
use std::time::Duration;

use anyhow::Context as _;
use clap::Parser;
use tokio::sync::mpsc;
use tokio_stream::StreamExt as _;
use tokio_stream::wrappers::ReceiverStream;
use tonic::codegen::{Body, BoxFuture, Service, StdError, http};
use tonic::server::{Grpc, NamedService};
use tonic::transport::server::TcpIncoming;
use tonic::{Request, Response, Status, Streaming};
use tonic_prost::ProstCodec;
use warden_proto::v1::agent_service_server::{AgentService, AgentServiceServer};
use warden_proto::v1::{
    self, AgentMessage, CoordinatorMessage, agent_message, coordinator_message, order_spec,
};
use warden_shared::now_unix_ms;

#[derive(Debug, Parser)]
#[command(
    name = "warden-fleet-floor",
    version,
    about = "Answers warden-fleet-sim as a coordinator with nothing behind its gRPC stack would"
)]
struct Args {
    /// Where to listen for gRPC (plaintext, as the benchmark's coordinator runs).
    #[arg(long)]
    listen: SocketAddr,
}

/// What the coordinator tells agents in the benchmark: its default heartbeat and lease, and
/// health reports once an hour (`--health-interval 1h`).
const WELCOME: v1::Welcome = v1::Welcome {
    heartbeat_interval_ms: 2_000,
    lease_ms: 10_000,
    health_interval_ms: 3_600_000,
};
/// As the coordinator's outbox.
const OUTBOX_CAPACITY: usize = 256;

type Outbox = mpsc::Sender<Result<CoordinatorMessage, Status>>;

/// The fleet as far as the floor knows it: sessions, and orders with when each went out.
#[derive(Default)]
struct Floor {
    sessions: Mutex<HashMap<String, Outbox>>,
    orders: Mutex<HashMap<String, v1::OrderState>>,
    /// (order id, when it was put on its agent's stream), in that order: `ListAudit` shows
    /// them as `order.dispatched` events, as the coordinator's audit log does.
    dispatched: Mutex<Vec<(String, i64)>>,
}

fn lock<T>(mutex: &Mutex<T>) -> MutexGuard<'_, T> {
    mutex
        .lock()
        .unwrap_or_else(std::sync::PoisonError::into_inner)
}

impl Floor {
    fn submit(&self, database: &str) -> Result<v1::Order, Status> {
        let (agent, name) = database
            .split_once('/')
            .ok_or_else(|| Status::invalid_argument(format!("{database:?} is not AGENT/DB")))?;
        let outbox = lock(&self.sessions)
            .get(agent)
            .cloned()
            .ok_or_else(|| Status::failed_precondition(format!("agent {agent} is offline")))?;
        let id = uuid::Uuid::now_v7().to_string();
        let spec = v1::OrderSpec {
            params: Some(order_spec::Params::Backup(v1::BackupParams {
                trigger: "manual".to_owned(),
                verify: false,
            })),
        };
        let assignment = CoordinatorMessage {
            msg: Some(coordinator_message::Msg::Order(v1::OrderAssignment {
                order_id: id.clone(),
                database: name.to_owned(),
                attempt: 1,
                spec: Some(spec.clone()),
                not_after_unix_ms: 0,
            })),
        };
        let created = now_unix_ms();
        // Recorded before it is sent: the agent's result may come back before this returns.
        lock(&self.orders).insert(id.clone(), v1::OrderState::Dispatched);
        if outbox.try_send(Ok(assignment)).is_err() {
            lock(&self.orders).remove(&id);
            return Err(Status::unavailable(format!(
                "agent {agent}'s stream is full or closed"
            )));
        }
        lock(&self.dispatched).push((id.clone(), created));
        Ok(v1::Order {
            id,
            kind: v1::OrderKind::Backup as i32,
            database: database.to_owned(),
            state: v1::OrderState::Dispatched as i32,
            spec: Some(spec),
            attempts: 1,
            created_unix_ms: created,
            updated_unix_ms: created,
            ..v1::Order::default()
        })
    }

    fn list_agents(&self) -> v1::ListAgentsResponse {
        let now = now_unix_ms();
        let agents = lock(&self.sessions)
            .keys()
            .map(|name| v1::Agent {
                name: name.clone(),
                online: true,
                last_seen_unix_ms: now,
                ..v1::Agent::default()
            })
            .collect();
        v1::ListAgentsResponse { agents }
    }

    fn get_order(&self, id: &str) -> Result<v1::Order, Status> {
        let state = lock(&self.orders)
            .get(id)
            .copied()
            .ok_or_else(|| Status::not_found(format!("unknown order {id}")))?;
        Ok(v1::Order {
            id: id.to_owned(),
            state: state as i32,
            ..v1::Order::default()
        })
    }

    fn list_audit(&self, after_seq: u64, limit: u32) -> v1::ListAuditResponse {
        let dispatched = lock(&self.dispatched);
        let events = dispatched
            .iter()
            .enumerate()
            .skip(usize::try_from(after_seq).unwrap_or(usize::MAX))
            .take(limit as usize)
            .map(|(index, (id, at))| v1::AuditEvent {
                seq: index as u64 + 1,
                at_unix_ms: *at,
                action: "order.dispatched".to_owned(),
                params_json: serde_json::json!({ "order_id": id }).to_string(),
                ..v1::AuditEvent::default()
            })
            .collect();
        v1::ListAuditResponse { events }
    }

    fn on_message(&self, outbox: &Outbox, message: AgentMessage) {
        if let Some(agent_message::Msg::Result(result)) = message.msg {
            let state = if result.success {
                v1::OrderState::Succeeded
            } else {
                v1::OrderState::Failed
            };
            lock(&self.orders).insert(result.order_id.clone(), state);
            let ack = CoordinatorMessage {
                msg: Some(coordinator_message::Msg::Ack(v1::ResultAck {
                    order_id: result.order_id,
                })),
            };
            let _ = outbox.try_send(Ok(ack));
        }
    }
}

#[derive(Clone)]
struct Agents(Arc<Floor>);

type CoordinatorStream =
    Pin<Box<dyn tokio_stream::Stream<Item = Result<CoordinatorMessage, Status>> + Send>>;

#[tonic::async_trait]
impl AgentService for Agents {
    type ConnectStream = CoordinatorStream;

    async fn connect(
        &self,
        request: Request<Streaming<AgentMessage>>,
    ) -> Result<Response<Self::ConnectStream>, Status> {
        let mut inbound = request.into_inner();
        let Some(agent_message::Msg::Hello(hello)) = inbound.message().await?.and_then(|m| m.msg)
        else {
            return Err(Status::invalid_argument("the first message must be Hello"));
        };
        let (outbox, outbox_rx) = mpsc::channel(OUTBOX_CAPACITY);
        let welcome = CoordinatorMessage {
            msg: Some(coordinator_message::Msg::Welcome(WELCOME)),
        };
        outbox
            .try_send(Ok(welcome))
            .map_err(|_| Status::internal("a new outbox is full"))?;
        lock(&self.0.sessions).insert(hello.agent.clone(), outbox.clone());
        let floor = self.0.clone();
        tokio::spawn(async move {
            while let Some(Ok(message)) = inbound.next().await {
                floor.on_message(&outbox, message);
            }
            let mut sessions = lock(&floor.sessions);
            if sessions
                .get(&hello.agent)
                .is_some_and(|o| o.same_channel(&outbox))
            {
                sessions.remove(&hello.agent);
            }
        });
        Ok(Response::new(Box::pin(ReceiverStream::new(outbox_rx))))
    }

    async fn enroll(
        &self,
        _request: Request<v1::EnrollRequest>,
    ) -> Result<Response<v1::CertificateResponse>, Status> {
        Err(Status::unimplemented(
            "the floor takes plaintext agents only",
        ))
    }

    async fn renew(
        &self,
        _request: Request<v1::RenewRequest>,
    ) -> Result<Response<v1::CertificateResponse>, Status> {
        Err(Status::unimplemented(
            "the floor takes plaintext agents only",
        ))
    }
}

/// The admin calls the simulator makes, routed by path as the generated server does;
/// every other method is unimplemented.
#[derive(Clone)]
struct Admin(Arc<Floor>);

impl NamedService for Admin {
    const NAME: &'static str = "warden.v1.AdminService";
}

/// A unary handler from a function, for [`Grpc::unary`].
struct Unary<F>(F);

impl<F, M1, M2> Service<Request<M1>> for Unary<F>
where
    F: FnMut(Request<M1>) -> Result<M2, Status>,
    M2: Send + 'static,
{
    type Response = Response<M2>;
    type Error = Status;
    type Future = std::future::Ready<Result<Response<M2>, Status>>;

    fn poll_ready(&mut self, _cx: &mut Context<'_>) -> Poll<Result<(), Status>> {
        Poll::Ready(Ok(()))
    }

    fn call(&mut self, request: Request<M1>) -> Self::Future {
        std::future::ready((self.0)(request).map(Response::new))
    }
}

/// Serves one unary method of `request` with `handler`.
fn unary<B, M1, M2, F>(
    request: http::Request<B>,
    handler: F,
) -> BoxFuture<http::Response<tonic::body::Body>, Infallible>
where
    B: Body + Send + 'static,
    B::Error: Into<StdError> + Send + 'static,
    M1: prost::Message + Default + Send + 'static,
    M2: prost::Message + Send + 'static,
    F: FnMut(Request<M1>) -> Result<M2, Status> + Send + 'static,
{
    Box::pin(async move {
        let mut grpc = Grpc::new(ProstCodec::<M2, M1>::default());
        Ok(grpc.unary(Unary(handler), request).await)
    })
}

impl<B> Service<http::Request<B>> for Admin
where
    B: Body + Send + 'static,
    B::Error: Into<StdError> + Send + 'static,
{
    type Response = http::Response<tonic::body::Body>;
    type Error = Infallible;
    type Future = BoxFuture<Self::Response, Self::Error>;

    fn poll_ready(&mut self, _cx: &mut Context<'_>) -> Poll<Result<(), Infallible>> {
        Poll::Ready(Ok(()))
    }

    fn call(&mut self, request: http::Request<B>) -> Self::Future {
        let floor = self.0.clone();
        match request.uri().path() {
            "/warden.v1.AdminService/SubmitBackup" => {
                unary(request, move |r: Request<v1::SubmitBackupRequest>| {
                    floor.submit(&r.get_ref().database)
                })
            }
            "/warden.v1.AdminService/ListAgents" => {
                unary(request, move |_: Request<v1::ListAgentsRequest>| {
                    Ok(floor.list_agents())
                })
            }
            "/warden.v1.AdminService/GetOrder" => {
                unary(request, move |r: Request<v1::GetOrderRequest>| {
                    floor.get_order(&r.get_ref().id)
                })
            }
            "/warden.v1.AdminService/ListAudit" => {
                unary(request, move |r: Request<v1::ListAuditRequest>| {
                    Ok(floor.list_audit(r.get_ref().after_seq, r.get_ref().limit))
                })
            }
            other => {
                let status = Status::unimplemented(format!("the floor does not serve {other}"));
                Box::pin(std::future::ready(Ok(status.into_http())))
            }
        }
    }
}

#[tokio::main]
async fn main() -> anyhow::Result<()> {
    let args = Args::parse();
    let listener = tokio::net::TcpListener::bind(args.listen)
        .await
        .with_context(|| format!("cannot listen on {}", args.listen))?;
    let floor = Arc::new(Floor::default());
    eprintln!("[fleet-floor] listening on {}", args.listen);
    // The coordinator's server settings (coordinator/src/server.rs).
    tonic::transport::Server::builder()
        .http2_keepalive_interval(Some(Duration::from_secs(30)))
        .http2_keepalive_timeout(Some(Duration::from_secs(10)))
        .add_service(AgentServiceServer::new(Agents(floor.clone())))
        .add_service(Admin(floor))
        .serve_with_incoming_shutdown(
            TcpIncoming::from(listener).with_nodelay(Some(true)),
            shutdown(),
        )
        .await
        .context("the gRPC server failed")
}

/// Resolves on SIGTERM or SIGINT (or at once, if neither can be caught).
async fn shutdown() {
    let Ok(mut term) = tokio::signal::unix::signal(tokio::signal::unix::SignalKind::terminate())
    else {
        return;
    };
    tokio::select! {
        _ = term.recv() => {}
        _ = tokio::signal::ctrl_c() => {}
    }
}
