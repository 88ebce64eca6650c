//! Runs the coordinator: store, fleet, gRPC services (agents, admin, health, reflection),
//! the HTTP port (metrics, health), webhooks and the reaper, until shutdown.

use std::future::Future;
use std::net::SocketAddr;
use std::sync::Arc;
use std::time::Duration;

use tokio::net::TcpListener;
use tokio_util::sync::CancellationToken;
use tonic::transport::server::TcpIncoming;
use tracing::{info, warn};
use warden_proto::v1::admin_service_server::AdminServiceServer;
use warden_proto::v1::agent_service_server::AgentServiceServer;

use crate::config::CoordinatorConfig;
use crate::fleet::{Fleet, FleetSettings};
use crate::grpc::admin::AdminApi;
use crate::grpc::agent::AgentApi;
use crate::http::metrics::ORDER_DURATION_BUCKETS;
use crate::http::{DatabaseMetrics, Histogram, MetricsSnapshot, MetricsSource, OrderCount};
use crate::notify::{DeliverySettings, Notifier, NotifyError};
use crate::security::Security;
use crate::security::tls::{self, ServerTls, TlsFiles};
use crate::store::{Store, StoreError};

/// How long alerts queued at shutdown may still take to go out.
const ALERT_GRACE: Duration = Duration::from_secs(5);

#[derive(Debug, thiserror::Error)]
pub enum ServerError {
    #[error(transparent)]
    Store(#[from] StoreError),
    #[error(transparent)]
    Coordinator(#[from] crate::error::CoordinatorError),
    #[error("cannot listen on {addr}: {source}")]
    Listen {
        addr: SocketAddr,
        source: std::io::Error,
    },
    #[error("gRPC server failed: {0}")]
    Transport(#[from] tonic::transport::Error),
    #[error("HTTP server failed: {0}")]
    Http(std::io::Error),
    #[error(transparent)]
    Notify(#[from] NotifyError),
    #[error("cannot start the dispatcher thread: {0}")]
    Dispatcher(std::io::Error),
    #[error("reflection service: {0}")]
    Reflection(#[from] tonic_reflection::server::Error),
    #[error(transparent)]
    Tls(#[from] crate::security::tls::TlsError),
}

/// Binds `config.listen` (gRPC) and `config.http_listen` (HTTP) and serves until `shutdown`
/// resolves.
pub async fn run(
    config: CoordinatorConfig,
    shutdown: impl Future<Output = ()> + Send + 'static,
) -> Result<(), ServerError> {
    let grpc = bind(config.listen).await?;
    let http = bind(config.http_listen).await?;
    serve(config, grpc, http, shutdown).await
}

async fn bind(addr: SocketAddr) -> Result<TcpListener, ServerError> {
    TcpListener::bind(addr)
        .await
        .map_err(|source| ServerError::Listen { addr, source })
}

/// The address a listener is bound to, as logged (the port matters when it was 0).
fn bound_addr(listener: &TcpListener) -> String {
    listener.local_addr().map_or_else(
        |error| format!("unknown ({error})"),
        |addr| addr.to_string(),
    )
}

/// Serves gRPC on `grpc` and the HTTP port on `http`, both already bound (tests bind
/// 127.0.0.1:0 and read the ports first), until `shutdown` resolves.
pub async fn serve(
    config: CoordinatorConfig,
    grpc: TcpListener,
    http: TcpListener,
    shutdown: impl Future<Output = ()> + Send + 'static,
) -> Result<(), ServerError> {
    // TLS first: a coordinator that cannot serve securely must not touch the store.
    let tls = if config.insecure_dev {
        warn!(
            "--insecure-dev: plaintext gRPC and agents without certificates; for a development \
             fleet on one machine only"
        );
        None
    } else {
        Some(ServerTls::load(
            &TlsFiles::new(&config.tls_dir),
            config.agent_cert_ttl,
        )?)
    };
    let store = Store::open(&config.store).await?;
    let notifier = Notifier::start(&config.webhooks, DeliverySettings::default())?;
    let fleet = Fleet::new(
        store.clone(),
        FleetSettings {
            heartbeat_interval: config.heartbeat_interval,
            lease: config.lease,
            max_attempts: config.max_attempts,
            policy_tick: config.policy_tick,
            prune_interval: config.prune_interval,
            health_interval: config.health_interval,
        },
        notifier.clone(),
    )
    .map_err(ServerError::Dispatcher)?;
    fleet.started().await?;

    let reaper = tokio::spawn(reap_forever(fleet.clone()));
    let policy = tokio::spawn(enforce_policy_forever(fleet.clone()));
    let monitor = tokio::spawn(monitor_forever(fleet.clone()));

    let (health, health_service) = tonic_health::server::health_reporter();
    health.set_serving::<AgentServiceServer<AgentApi>>().await;
    health.set_serving::<AdminServiceServer<AdminApi>>().await;
    let reflection = tonic_reflection::server::Builder::configure()
        .register_encoded_file_descriptor_set(warden_proto::FILE_DESCRIPTOR_SET)
        .register_encoded_file_descriptor_set(tonic_health::pb::FILE_DESCRIPTOR_SET)
        .build_v1()?;

    // Either server ending (shutdown, or the HTTP server failing) stops both.
    let stop = CancellationToken::new();
    tokio::spawn({
        let stop = stop.clone();
        async move {
            tokio::select! {
                () = shutdown => info!("shutting down"),
                () = stop.cancelled() => {}
            }
            stop.cancel();
        }
    });

    info!(
        grpc = %bound_addr(&grpc),
        http = %bound_addr(&http),
        store = %config.store,
        tls = !config.insecure_dev,
        webhooks = config.webhooks.len(),
        "coordinator listening"
    );
    let http_server = tokio::spawn({
        let stop = stop.clone();
        let fleet = fleet.clone();
        async move {
            let result =
                crate::http::serve(http, fleet_metrics(fleet), stop.clone().cancelled_owned())
                    .await;
            stop.cancel();
            result
        }
    });
    let closer = fleet.clone();
    let (acceptor, authority) = match tls {
        Some(tls) => (Some(tls.acceptor), Some(tls.agents)),
        None => (None, None),
    };
    let security = Arc::new(Security::new(authority));
    // Pings find peers that vanished (and idle connections nobody uses) without waiting
    // for TCP to give up.
    let router = tonic::transport::Server::builder()
        .http2_keepalive_interval(Some(Duration::from_secs(30)))
        .http2_keepalive_timeout(Some(Duration::from_secs(10)))
        .add_service(health_service)
        .add_service(reflection)
        .add_service(AgentServiceServer::new(AgentApi::new(
            fleet.clone(),
            security.clone(),
        )))
        .add_service(AdminServiceServer::new(AdminApi::new(
            fleet.clone(),
            security,
        )));
    let closed = {
        let stop = stop.clone();
        async move {
            stop.cancelled().await;
            info!("closing agent streams");
            closer.close_sessions();
        }
    };
    let grpc_result = match acceptor {
        Some(acceptor) => {
            router
                .serve_with_incoming_shutdown(tls::incoming(grpc, acceptor), closed)
                .await
        }
        // Without TLS too, each message goes out at once: Nagle's algorithm would hold an
        // order sent right after another until the agent acknowledged the first.
        None => {
            router
                .serve_with_incoming_shutdown(
                    TcpIncoming::from(grpc).with_nodelay(Some(true)),
                    closed,
                )
                .await
        }
    };
    // The gRPC server may have failed on its own: stop the HTTP server too.
    stop.cancel();
    let http_result = http_server.await;
    reaper.abort();
    policy.abort();
    monitor.abort();
    notifier.shutdown(ALERT_GRACE).await;
    info!("coordinator stopped");
    grpc_result?;
    match http_result {
        Ok(result) => result.map_err(ServerError::Http),
        // Only a panic ends the task otherwise: pass it on.
        Err(join) => std::panic::resume_unwind(join.into_panic()),
    }
}

/// The metrics of a scrape: agents, orders, run times and backup bytes from the store; each
/// database's backup age, recovery status and health from the fleet.
fn fleet_metrics(fleet: Arc<Fleet>) -> MetricsSource {
    Arc::new(move || {
        let fleet = fleet.clone();
        Box::pin(async move {
            let metrics = fleet.store().metrics(ORDER_DURATION_BUCKETS).await?;
            let status = fleet.fleet_status().await?;
            Ok(MetricsSnapshot {
                agents_total: metrics.agents_total,
                agents_online: metrics.agents_online,
                orders: metrics
                    .orders
                    .into_iter()
                    .map(|(kind, state, count)| OrderCount {
                        kind: kind.as_str().to_owned(),
                        state: state.as_str().to_owned(),
                        count,
                    })
                    .collect(),
                order_durations: metrics
                    .durations
                    .into_iter()
                    .map(|(kind, durations)| {
                        let histogram = Histogram {
                            buckets: ORDER_DURATION_BUCKETS
                                .iter()
                                .copied()
                                .zip(durations.at_most)
                                .collect(),
                            sum: durations.sum_seconds,
                            count: durations.count,
                        };
                        (kind.as_str().to_owned(), histogram)
                    })
                    .collect(),
                backup_bytes: metrics.complete_backup_bytes,
                newest_backup_bytes: metrics.newest_backup_bytes,
                databases: status
                    .databases
                    .iter()
                    .map(|db| {
                        let recovery = db.recovery.as_ref();
                        DatabaseMetrics {
                            database: db.database.clone(),
                            newest_backup_age_seconds: recovery
                                .and_then(|a| a.backup_age_ms)
                                .map(|ms| ms as f64 / 1000.0),
                            rpo_target_seconds: recovery.map(|a| a.rpo.as_secs_f64()),
                            rto_target_seconds: recovery.map(|a| a.rto.as_secs_f64()),
                            rto_status: db.rto_status().as_str().to_owned(),
                            health: db.health.as_str().to_owned(),
                        }
                    })
                    .collect(),
            })
        })
    })
}

async fn reap_forever(fleet: Arc<Fleet>) {
    // Check four times per lease, so silence is noticed at most a quarter lease late.
    let mut tick = tokio::time::interval(fleet.settings().lease / 4);
    tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
    loop {
        tick.tick().await;
        if let Err(error) = fleet.reap().await {
            warn!(%error, "reaper pass failed");
        }
    }
}

/// Alerts on databases, agents and recovery targets that changed, every health interval.
/// The first pass waits two leases, so agents reconnecting (with backoff) after a
/// coordinator restart are not announced as down.
async fn monitor_forever(fleet: Arc<Fleet>) {
    let settings = fleet.settings();
    let mut tick = tokio::time::interval_at(
        tokio::time::Instant::now() + settings.lease * 2,
        settings.health_interval,
    );
    tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
    loop {
        tick.tick().await;
        if let Err(error) = fleet.monitor().await {
            warn!(%error, "monitoring pass failed");
        }
    }
}

/// Fires schedules, re-evaluates held orders against windows and limits, and runs retention.
async fn enforce_policy_forever(fleet: Arc<Fleet>) {
    let settings = fleet.settings();
    let mut tick = tokio::time::interval(settings.policy_tick);
    tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
    let mut last_prune = tokio::time::Instant::now();
    loop {
        tick.tick().await;
        if let Err(error) = fleet.fire_schedules(chrono::Utc::now()).await {
            warn!(%error, "schedule pass failed");
        }
        if let Err(error) = fleet.dispatch().await {
            warn!(%error, "dispatch pass failed");
        }
        if last_prune.elapsed() >= settings.prune_interval {
            last_prune = tokio::time::Instant::now();
            if let Err(error) = fleet
                .prune(&crate::audit::Actor::Retention, None, false)
                .await
            {
                warn!(%error, "retention pass failed");
            }
        }
    }
}
