//! `AgentService`: one bidirectional stream per agent (`Connect`), and the agent's
//! certificate: `Enroll` with a one-time token, `Renew` with the certificate in force.
//! Refusals are audited with the agent's claimed name, the peer and the reason.

use std::pin::Pin;
use std::sync::Arc;
use std::time::Duration;

use futures::Stream;
use serde_json::json;
use tokio::sync::mpsc;
use tokio_stream::StreamExt;
use tokio_stream::wrappers::ReceiverStream;
use tonic::{Request, Response, Status, Streaming};
use tracing::warn;
use warden_proto::v1::agent_service_server::AgentService;
use warden_proto::v1::{self as pb, AgentMessage, CoordinatorMessage, agent_message};

use crate::audit::Actor;
use crate::error::CoordinatorError;
use crate::fleet::Fleet;
use crate::security::{AgentIdentity, Security};

/// How long a new stream may take to say Hello.
const HELLO_TIMEOUT: Duration = Duration::from_secs(10);

/// Resolves at `at`, or never.
async fn until(at: Option<chrono::DateTime<chrono::Utc>>) {
    match at {
        Some(at) => {
            tokio::time::sleep((at - chrono::Utc::now()).to_std().unwrap_or_default()).await
        }
        None => std::future::pending().await,
    }
}

/// Messages queued to one agent before the stream applies backpressure.
const OUTBOX_CAPACITY: usize = 256;

pub struct AgentApi {
    fleet: Arc<Fleet>,
    security: Arc<Security>,
}

impl AgentApi {
    pub fn new(fleet: Arc<Fleet>, security: Arc<Security>) -> Self {
        Self { fleet, security }
    }

    /// Audits a refused agent call (by `actor`, about agent `target`) and returns its status.
    async fn refuse<T>(
        &self,
        request: &Request<T>,
        action: &str,
        actor: Actor,
        target: &str,
        error: CoordinatorError,
    ) -> Status {
        let peer = request.remote_addr().map(|a| a.to_string());
        self.fleet
            .audit_refusal(&actor, action, target, json!({ "peer": peer }), &error)
            .await;
        warn!(%actor, target, %error, action, "agent refused");
        error.into()
    }

    /// The agent the request's certificate speaks for (`None` with `--insecure-dev`), or
    /// the audited refusal.
    async fn certified<T>(
        &self,
        request: &Request<T>,
        action: &str,
    ) -> Result<Option<AgentIdentity>, Status> {
        match self.security.agent_of(self.fleet.store(), request).await {
            Ok(identity) => Ok(identity),
            Err(error) => {
                let claimed = request
                    .peer_certs()
                    .and_then(|certs| {
                        let first = certs.first()?;
                        warden_shared::pki::CertInfo::from_der(first)
                            .ok()?
                            .common_name
                    })
                    .unwrap_or_else(|| "unknown".to_owned());
                let claimed: String = claimed.chars().take(64).collect();
                // A revoked certificate did verify: its name is the caller's. Otherwise the
                // name is only a claim.
                let actor = match error {
                    CoordinatorError::PermissionDenied(_) => Actor::Agent(claimed.clone()),
                    _ => Actor::UnverifiedAgent(claimed.clone()),
                };
                Err(self.refuse(request, action, actor, &claimed, error).await)
            }
        }
    }
}

type CoordinatorStream = Pin<Box<dyn Stream<Item = Result<CoordinatorMessage, Status>> + Send>>;

#[tonic::async_trait]
impl AgentService for AgentApi {
    type ConnectStream = CoordinatorStream;

    async fn connect(
        &self,
        request: Request<Streaming<AgentMessage>>,
    ) -> Result<Response<Self::ConnectStream>, Status> {
        let certified = self.certified(&request, "agent.connect").await?;
        let meta =
            Request::from_parts(request.metadata().clone(), request.extensions().clone(), ());
        let mut inbound = request.into_inner();
        let first = tokio::time::timeout(HELLO_TIMEOUT, inbound.message())
            .await
            .map_err(|_| {
                Status::deadline_exceeded(format!(
                    "no Hello within {}s of connecting",
                    HELLO_TIMEOUT.as_secs()
                ))
            })??;
        let hello = match first {
            Some(AgentMessage {
                msg: Some(agent_message::Msg::Hello(hello)),
            }) => hello,
            _ => return Err(Status::invalid_argument("the first message must be Hello")),
        };
        if let Some(identity) = &certified
            && identity.name != hello.agent
        {
            let error = CoordinatorError::PermissionDenied(format!(
                "the certificate of agent {} (serial {}) cannot speak for agent {}",
                identity.name, identity.serial, hello.agent
            ));
            let actor = Actor::Agent(identity.name.clone());
            let target: String = hello.agent.chars().take(64).collect();
            return Err(self
                .refuse(&meta, "agent.connect", actor, &target, error)
                .await);
        }
        let agent = hello.agent.clone();
        let (outbox, outbox_rx) = mpsc::channel(OUTBOX_CAPACITY);
        let generation = match self
            .fleet
            .agent_hello(hello, outbox, certified.as_ref())
            .await
        {
            Ok(generation) => generation,
            Err(error @ CoordinatorError::PermissionDenied(_)) => {
                let actor = Actor::Agent(agent.clone());
                return Err(self
                    .refuse(&meta, "agent.connect", actor, &agent, error)
                    .await);
            }
            Err(error) => return Err(error.into()),
        };
        // A session does not outlive its certificate: the agent reconnects with its renewed
        // one, and a certificate that was not renewed is refused then.
        let expires = certified.map(|c| c.not_after);

        let fleet = self.fleet.clone();
        tokio::spawn(async move {
            let why = loop {
                let next = tokio::select! {
                    next = inbound.next() => next,
                    () = fleet.closing() => break "coordinator shutting down".to_owned(),
                    () = until(expires) => break "its certificate expired".to_owned(),
                };
                match next {
                    Some(Ok(message)) => {
                        if let Err(error) = fleet.agent_message(&agent, generation, message).await {
                            warn!(%agent, %error, "agent message not handled");
                        }
                    }
                    Some(Err(status)) => break format!("stream error: {}", status.message()),
                    None => break "stream closed".to_owned(),
                }
            };
            if let Err(error) = fleet.agent_gone(&agent, generation, &why).await {
                warn!(%agent, %error, "could not record agent disconnect");
            }
        });
        let outbound = ReceiverStream::new(outbox_rx).map(Ok);
        Ok(Response::new(Box::pin(outbound)))
    }

    async fn enroll(
        &self,
        request: Request<pb::EnrollRequest>,
    ) -> Result<Response<pb::CertificateResponse>, Status> {
        let result = self
            .security
            .enroll(self.fleet.store(), request.get_ref(), request.remote_addr())
            .await;
        match result {
            Ok(response) => Ok(Response::new(response)),
            Err(error) => {
                let agent: String = request.get_ref().agent.chars().take(64).collect();
                let actor = Actor::UnverifiedAgent(agent.clone());
                Err(self
                    .refuse(&request, "agent.enroll", actor, &agent, error)
                    .await)
            }
        }
    }

    async fn renew(
        &self,
        request: Request<pb::RenewRequest>,
    ) -> Result<Response<pb::CertificateResponse>, Status> {
        let Some(identity) = self.certified(&request, "agent.renew").await? else {
            return Err(crate::security::insecure_dev().into());
        };
        match self
            .security
            .renew(self.fleet.store(), &identity, &request.get_ref().csr_pem)
            .await
        {
            Ok(response) => Ok(Response::new(response)),
            Err(error) => {
                let actor = Actor::Agent(identity.name.clone());
                Err(self
                    .refuse(&request, "agent.renew", actor, &identity.name, error)
                    .await)
            }
        }
    }
}
