//! `AgentService.Connect`: one bidirectional stream per agent.

use std::pin::Pin;
use std::sync::Arc;

use futures::Stream;
use tokio::sync::mpsc;
use tokio_stream::StreamExt;
use tokio_stream::wrappers::ReceiverStream;
use tonic::{Request, Response, Status, Streaming};
use tracing::warn;
use warden_proto::v1::agent_service_server::AgentService;
use warden_proto::v1::{AgentMessage, CoordinatorMessage, agent_message};

use crate::fleet::Fleet;

/// Messages queued to one agent before the stream applies backpressure.
const OUTBOX_CAPACITY: usize = 256;

pub struct AgentApi {
    fleet: Arc<Fleet>,
}

impl AgentApi {
    pub fn new(fleet: Arc<Fleet>) -> Self {
        Self { fleet }
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
        let mut inbound = request.into_inner();
        let hello = match inbound.message().await? {
            Some(AgentMessage {
                msg: Some(agent_message::Msg::Hello(hello)),
            }) => hello,
            _ => return Err(Status::invalid_argument("the first message must be Hello")),
        };
        let agent = hello.agent.clone();
        let (outbox, outbox_rx) = mpsc::channel(OUTBOX_CAPACITY);
        let generation = self.fleet.agent_hello(hello, outbox).await?;

        let fleet = self.fleet.clone();
        tokio::spawn(async move {
            let why = loop {
                let next = tokio::select! {
                    next = inbound.next() => next,
                    () = fleet.closing() => break "coordinator shutting down".to_owned(),
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
}
