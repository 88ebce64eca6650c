//! Runs the coordinator: store, fleet, gRPC services (agents, admin, health, reflection)
//! and the reaper, until shutdown.

use std::future::Future;
use std::sync::Arc;

use tokio::net::TcpListener;
use tokio_stream::wrappers::TcpListenerStream;
use tracing::{info, warn};
use warden_proto::v1::admin_service_server::AdminServiceServer;
use warden_proto::v1::agent_service_server::AgentServiceServer;

use crate::config::CoordinatorConfig;
use crate::fleet::{Fleet, FleetSettings};
use crate::grpc::admin::AdminApi;
use crate::grpc::agent::AgentApi;
use crate::store::{Store, StoreError};

#[derive(Debug, thiserror::Error)]
pub enum ServerError {
    #[error(transparent)]
    Store(#[from] StoreError),
    #[error(transparent)]
    Coordinator(#[from] crate::error::CoordinatorError),
    #[error("cannot listen on {addr}: {source}")]
    Listen {
        addr: std::net::SocketAddr,
        source: std::io::Error,
    },
    #[error("gRPC server failed: {0}")]
    Transport(#[from] tonic::transport::Error),
    #[error("reflection service: {0}")]
    Reflection(#[from] tonic_reflection::server::Error),
}

/// Binds `config.listen` and serves until `shutdown` resolves.
pub async fn run(
    config: CoordinatorConfig,
    shutdown: impl Future<Output = ()> + Send + 'static,
) -> Result<(), ServerError> {
    let listener =
        TcpListener::bind(config.listen)
            .await
            .map_err(|source| ServerError::Listen {
                addr: config.listen,
                source,
            })?;
    serve(config, listener, shutdown).await
}

/// Serves on an already bound listener until `shutdown` resolves.
pub async fn serve(
    config: CoordinatorConfig,
    listener: TcpListener,
    shutdown: impl Future<Output = ()> + Send + 'static,
) -> Result<(), ServerError> {
    let store = Store::open(&config.store).await?;
    let fleet = Arc::new(Fleet::new(
        store,
        FleetSettings {
            heartbeat_interval: config.heartbeat_interval,
            lease: config.lease,
            max_attempts: config.max_attempts,
            policy_tick: config.policy_tick,
            prune_interval: config.prune_interval,
            health_interval: config.health_interval,
        },
    ));
    fleet.started().await?;

    let reaper = tokio::spawn(reap_forever(fleet.clone()));
    let policy = tokio::spawn(enforce_policy_forever(fleet.clone()));

    let (health, health_service) = tonic_health::server::health_reporter();
    health.set_serving::<AgentServiceServer<AgentApi>>().await;
    health.set_serving::<AdminServiceServer<AdminApi>>().await;
    let reflection = tonic_reflection::server::Builder::configure()
        .register_encoded_file_descriptor_set(warden_proto::FILE_DESCRIPTOR_SET)
        .register_encoded_file_descriptor_set(tonic_health::pb::FILE_DESCRIPTOR_SET)
        .build_v1()?;

    let closer = fleet.clone();
    let local = listener.local_addr().ok();
    info!(addr = ?local, store = %config.store, "coordinator listening");
    let result = tonic::transport::Server::builder()
        .add_service(health_service)
        .add_service(reflection)
        .add_service(AgentServiceServer::new(AgentApi::new(fleet.clone())))
        .add_service(AdminServiceServer::new(AdminApi::new(fleet.clone())))
        .serve_with_incoming_shutdown(TcpListenerStream::new(listener), async move {
            shutdown.await;
            info!("shutting down: closing agent streams");
            closer.close_sessions();
        })
        .await;
    reaper.abort();
    policy.abort();
    info!("coordinator stopped");
    Ok(result?)
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
