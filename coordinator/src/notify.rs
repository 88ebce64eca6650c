//! Alerts to webhooks: each alert is POSTed as one JSON object to every `[[webhooks]]`
//! endpoint that wants its event. The `text` field makes the body a valid Slack incoming
//! webhook message; other receivers read `event`, `subject` and `details`.
//!
//! Raising an alert never waits for the network: [`Notifier::notify`] puts it on a bounded
//! queue per endpoint and returns. A task per endpoint drains its queue, each delivery in a
//! task of its own (a few at a time), retried with exponential backoff while the failure can
//! pass (no connection, timeout, 5xx, 429). A slow endpoint fills only its own queue; what
//! does not fit is dropped with a warning rather than held in memory.

use std::fmt;
use std::sync::{Arc, Mutex};
use std::time::Duration;

use backon::{ExponentialBuilder, Retryable};
use serde::{Deserialize, Serialize};
use tokio::sync::{Semaphore, mpsc};
use tokio::task::{JoinHandle, JoinSet};
use tokio_util::sync::CancellationToken;
use tracing::{debug, warn};

use crate::config::WebhookConfig;

/// What an alert is about. The names are the `events` of a `[[webhooks]]` entry.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum AlertEvent {
    /// An order ended `failed`.
    OrderFailed,
    /// A database breaches its recovery targets: its newest backup is older than its RPO, or
    /// its restore takes (or would take) longer than its RTO.
    RecoveryBreach,
    /// A database that breached its recovery targets meets them again.
    RecoveryRestored,
    /// A database stopped answering its health checks.
    DatabaseDown,
    /// A database that was down answers again.
    DatabaseRecovered,
    /// An agent stayed silent past its lease.
    AgentDown,
    /// An agent that was down connected again.
    AgentRecovered,
}

impl AlertEvent {
    pub fn as_str(self) -> &'static str {
        match self {
            AlertEvent::OrderFailed => "order_failed",
            AlertEvent::RecoveryBreach => "recovery_breach",
            AlertEvent::RecoveryRestored => "recovery_restored",
            AlertEvent::DatabaseDown => "database_down",
            AlertEvent::DatabaseRecovered => "database_recovered",
            AlertEvent::AgentDown => "agent_down",
            AlertEvent::AgentRecovered => "agent_recovered",
        }
    }
}

impl fmt::Display for AlertEvent {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.as_str())
    }
}

/// One alert, serialized as the webhook's JSON body:
/// `{"event", "subject", "text", "details", "at_unix_ms"}`.
#[derive(Debug, Clone, PartialEq, Serialize)]
pub struct Alert {
    pub event: AlertEvent,
    /// What it is about: `AGENT/DB` for a database, the agent's name for an agent.
    pub subject: String,
    /// One line for people, e.g. "a1/app: newest backup is 26h old (RPO 24h)".
    pub text: String,
    /// Machine-readable particulars (order id, ages, targets, ...).
    pub details: serde_json::Value,
    pub at_unix_ms: i64,
}

impl Alert {
    /// An alert raised now.
    pub fn new(
        event: AlertEvent,
        subject: impl Into<String>,
        text: impl Into<String>,
        details: serde_json::Value,
    ) -> Self {
        Self {
            event,
            subject: subject.into(),
            text: text.into(),
            details,
            at_unix_ms: warden_shared::now_unix_ms(),
        }
    }
}

/// How alerts are queued and delivered.
#[derive(Debug, Clone, Copy)]
pub struct DeliverySettings {
    /// Alerts waiting per endpoint; more are dropped.
    pub queue_capacity: usize,
    /// Deliveries in flight per endpoint.
    pub concurrency: usize,
    /// Tries per delivery, the first included.
    pub attempts: usize,
    /// Backoff between tries: from `min_delay`, doubling, at most `max_delay`, with jitter.
    pub min_delay: Duration,
    pub max_delay: Duration,
    /// Time allowed for one request, connecting included.
    pub request_timeout: Duration,
}

impl Default for DeliverySettings {
    fn default() -> Self {
        Self {
            queue_capacity: 1024,
            concurrency: 4,
            attempts: 5,
            min_delay: Duration::from_millis(500),
            max_delay: Duration::from_secs(30),
            request_timeout: Duration::from_secs(10),
        }
    }
}

#[derive(Debug, thiserror::Error)]
pub enum NotifyError {
    #[error("cannot set up TLS for webhooks: {0}")]
    Tls(#[from] rustls::Error),
    #[error("cannot build the webhook HTTP client: {0}")]
    Client(#[from] reqwest::Error),
}

/// Sends alerts to the configured webhooks. Cheap to clone; every clone feeds the same
/// queues.
#[derive(Clone)]
pub struct Notifier {
    inner: Option<Arc<Inner>>,
}

struct Inner {
    endpoints: Vec<Endpoint>,
    stop: CancellationToken,
    workers: Mutex<Vec<JoinHandle<()>>>,
}

struct Endpoint {
    webhook: Arc<WebhookConfig>,
    queue: mpsc::Sender<Alert>,
}

impl Notifier {
    /// A notifier that drops every alert, for a coordinator without webhooks.
    pub fn disabled() -> Self {
        Self { inner: None }
    }

    /// Starts one delivery task per webhook (none, and a disabled notifier, without
    /// webhooks). Must be called inside a Tokio runtime.
    pub fn start(
        webhooks: &[WebhookConfig],
        settings: DeliverySettings,
    ) -> Result<Self, NotifyError> {
        if webhooks.is_empty() {
            return Ok(Self::disabled());
        }
        let client = http_client(settings.request_timeout)?;
        let stop = CancellationToken::new();
        let mut endpoints = Vec::with_capacity(webhooks.len());
        let mut workers = Vec::with_capacity(webhooks.len());
        for webhook in webhooks {
            let webhook = Arc::new(webhook.clone());
            let (queue, queued) = mpsc::channel(settings.queue_capacity);
            workers.push(tokio::spawn(deliver_queued(
                client.clone(),
                webhook.clone(),
                queued,
                settings,
                stop.clone(),
            )));
            endpoints.push(Endpoint { webhook, queue });
        }
        Ok(Self {
            inner: Some(Arc::new(Inner {
                endpoints,
                stop,
                workers: Mutex::new(workers),
            })),
        })
    }

    /// Queues `alert` for every webhook that wants its event, and returns at once: an
    /// endpoint whose queue is full loses the alert, with a warning.
    pub fn notify(&self, alert: Alert) {
        let Some(inner) = &self.inner else {
            return;
        };
        for endpoint in &inner.endpoints {
            if !endpoint.webhook.wants(alert.event) {
                continue;
            }
            let reason = match endpoint.queue.try_send(alert.clone()) {
                Ok(()) => continue,
                Err(mpsc::error::TrySendError::Full(_)) => "the webhook's queue is full",
                Err(mpsc::error::TrySendError::Closed(_)) => "the notifier stopped",
            };
            warn!(
                webhook = %endpoint.webhook.redacted_url(),
                event = %alert.event,
                subject = %alert.subject,
                reason,
                "alert dropped"
            );
        }
    }

    /// Stops taking alerts and gives the queued and running deliveries `grace` to end;
    /// what is left then is dropped. Later alerts are dropped with a warning.
    pub async fn shutdown(&self, grace: Duration) {
        let Some(inner) = &self.inner else {
            return;
        };
        inner.stop.cancel();
        let workers = std::mem::take(&mut *inner.workers.lock().expect("workers lock poisoned"));
        let aborts: Vec<_> = workers.iter().map(JoinHandle::abort_handle).collect();
        if tokio::time::timeout(grace, futures::future::join_all(workers))
            .await
            .is_err()
        {
            warn!(
                grace = %humantime::format_duration(grace),
                "alerts still being delivered at shutdown are dropped"
            );
            aborts.iter().for_each(tokio::task::AbortHandle::abort);
        }
    }
}

/// An HTTPS client on ring, the crypto provider sqlx already brings, with Mozilla's roots:
/// nothing is installed process-wide and no system certificate store is needed.
fn http_client(timeout: Duration) -> Result<reqwest::Client, NotifyError> {
    let provider = Arc::new(rustls::crypto::ring::default_provider());
    let roots = rustls::RootCertStore::from_iter(webpki_roots::TLS_SERVER_ROOTS.iter().cloned());
    let tls = rustls::ClientConfig::builder_with_provider(provider)
        .with_safe_default_protocol_versions()?
        .with_root_certificates(roots)
        .with_no_client_auth();
    Ok(reqwest::Client::builder()
        .tls_backend_preconfigured(tls)
        .timeout(timeout)
        // A redirect is a misconfigured URL: it is reported, not followed.
        .redirect(reqwest::redirect::Policy::none())
        .user_agent(concat!("warden-coordinator/", env!("CARGO_PKG_VERSION")))
        .build()?)
}

/// Drains one endpoint's queue until the notifier stops (then what was queued still goes)
/// or every [`Notifier`] is dropped.
async fn deliver_queued(
    client: reqwest::Client,
    webhook: Arc<WebhookConfig>,
    mut queued: mpsc::Receiver<Alert>,
    settings: DeliverySettings,
    stop: CancellationToken,
) {
    let slots = Arc::new(Semaphore::new(settings.concurrency));
    let mut deliveries = JoinSet::new();
    let mut stopping = false;
    loop {
        let alert = tokio::select! {
            alert = queued.recv() => alert,
            () = stop.cancelled(), if !stopping => {
                stopping = true;
                queued.close();
                continue;
            }
        };
        let Some(alert) = alert else { break };
        let slot = slots
            .clone()
            .acquire_owned()
            .await
            .expect("the semaphore is never closed");
        let (client, webhook) = (client.clone(), webhook.clone());
        deliveries.spawn(async move {
            deliver(&client, &webhook, &alert, &settings).await;
            drop(slot);
        });
        // Forget the finished ones, so the set stays as small as the deliveries in flight.
        while deliveries.try_join_next().is_some() {}
    }
    while deliveries.join_next().await.is_some() {}
}

/// Why one try failed.
#[derive(Debug, thiserror::Error)]
enum DeliveryError {
    #[error("{}", with_causes(.0))]
    Request(reqwest::Error),
    #[error("the endpoint answered {0}")]
    Status(reqwest::StatusCode),
}

impl DeliveryError {
    /// Returns whether trying again may succeed: the endpoint was not reached, was slow, or
    /// said so (5xx, 429). Any other answer (404, 400, 401, a redirect) will not change.
    fn is_transient(&self) -> bool {
        match self {
            DeliveryError::Request(error) => !error.is_builder(),
            DeliveryError::Status(status) => {
                status.is_server_error() || *status == reqwest::StatusCode::TOO_MANY_REQUESTS
            }
        }
    }
}

/// reqwest's message ("error sending request") keeps the cause (connection refused, timed
/// out, ...) in its sources: spell them all.
fn with_causes(error: &reqwest::Error) -> String {
    let mut text = error.to_string();
    let mut cause = std::error::Error::source(error);
    while let Some(error) = cause {
        text.push_str(": ");
        text.push_str(&error.to_string());
        cause = error.source();
    }
    text
}

async fn deliver(
    client: &reqwest::Client,
    webhook: &WebhookConfig,
    alert: &Alert,
    settings: &DeliverySettings,
) {
    let post = || async {
        let response = client
            .post(webhook.url.clone())
            .json(alert)
            .send()
            .await
            // reqwest's message would show the whole URL, which may be the secret.
            .map_err(|error| DeliveryError::Request(error.without_url()))?;
        let status = response.status();
        if status.is_success() {
            Ok(())
        } else {
            Err(DeliveryError::Status(status))
        }
    };
    let backoff = ExponentialBuilder::default()
        .with_min_delay(settings.min_delay)
        .with_max_delay(settings.max_delay)
        .with_max_times(settings.attempts.saturating_sub(1))
        .with_jitter();
    let result = post
        .retry(backoff)
        .when(DeliveryError::is_transient)
        .notify(|error, delay| {
            debug!(
                webhook = %webhook.redacted_url(),
                event = %alert.event,
                %error,
                retry_in = %humantime::format_duration(delay),
                "alert delivery failed; retrying"
            );
        })
        .await;
    match result {
        Ok(()) => debug!(
            webhook = %webhook.redacted_url(),
            event = %alert.event,
            subject = %alert.subject,
            "alert delivered"
        ),
        Err(error) => warn!(
            webhook = %webhook.redacted_url(),
            event = %alert.event,
            subject = %alert.subject,
            %error,
            "alert not delivered"
        ),
    }
}

#[cfg(test)]
mod tests {
    use std::sync::atomic::{AtomicUsize, Ordering};
    use std::time::Instant;

    use axum::extract::State;
    use axum::http::StatusCode;
    use axum::routing::post;

    use super::*;

    /// A webhook receiver on 127.0.0.1:0: answers each POST with the status `answer` picks
    /// for the request's index (0-based), and hands the body of each accepted one to the test.
    struct WebhookReceiver {
        url: url::Url,
        requests: Arc<AtomicUsize>,
        accepted: mpsc::UnboundedReceiver<serde_json::Value>,
    }

    #[derive(Clone)]
    struct ReceiverState {
        requests: Arc<AtomicUsize>,
        answer: fn(usize) -> StatusCode,
        accepted: mpsc::UnboundedSender<serde_json::Value>,
    }

    async fn receive(State(state): State<ReceiverState>, body: String) -> StatusCode {
        let index = state.requests.fetch_add(1, Ordering::SeqCst);
        let status = (state.answer)(index);
        if status.is_success() {
            let body = serde_json::from_str(&body).expect("a JSON body");
            let _ = state.accepted.send(body);
        }
        status
    }

    impl WebhookReceiver {
        async fn start(answer: fn(usize) -> StatusCode) -> Self {
            Self::start_on("127.0.0.1:0".parse().expect("addr"), answer).await
        }

        async fn start_on(addr: std::net::SocketAddr, answer: fn(usize) -> StatusCode) -> Self {
            let (accepted_tx, accepted) = mpsc::unbounded_channel();
            let requests = Arc::new(AtomicUsize::new(0));
            let app = axum::Router::new()
                .route("/hook/secret", post(receive))
                .with_state(ReceiverState {
                    requests: requests.clone(),
                    answer,
                    accepted: accepted_tx,
                });
            let listener = tokio::net::TcpListener::bind(addr).await.expect("bind");
            let addr = listener.local_addr().expect("addr");
            tokio::spawn(async move { axum::serve(listener, app).await });
            Self {
                url: format!("http://{addr}/hook/secret").parse().expect("url"),
                requests,
                accepted,
            }
        }

        fn webhook(&self, events: Vec<AlertEvent>) -> WebhookConfig {
            WebhookConfig {
                url: self.url.clone(),
                events,
            }
        }

        fn requests(&self) -> usize {
            self.requests.load(Ordering::SeqCst)
        }
    }

    fn fast() -> DeliverySettings {
        DeliverySettings {
            min_delay: Duration::from_millis(20),
            max_delay: Duration::from_millis(100),
            ..DeliverySettings::default()
        }
    }

    fn order_failed() -> Alert {
        Alert::new(
            AlertEvent::OrderFailed,
            "a1/app",
            "a1/app: backup failed: pg_dump exited with 1",
            serde_json::json!({ "order_id": "0190" }),
        )
    }

    async fn next(receiver: &mut WebhookReceiver) -> serde_json::Value {
        tokio::time::timeout(Duration::from_secs(10), receiver.accepted.recv())
            .await
            .expect("an alert in time")
            .expect("receiver running")
    }

    #[tokio::test]
    async fn an_alert_arrives_once_after_two_server_errors() {
        let mut receiver = WebhookReceiver::start(|index| {
            if index < 2 {
                StatusCode::INTERNAL_SERVER_ERROR
            } else {
                StatusCode::OK
            }
        })
        .await;
        let notifier = Notifier::start(&[receiver.webhook(Vec::new())], fast()).expect("start");
        let alert = order_failed();
        notifier.notify(alert.clone());

        let body = next(&mut receiver).await;
        assert_eq!(body["text"], alert.text);
        assert_eq!(body["event"], "order_failed");
        assert_eq!(body["subject"], "a1/app");
        assert_eq!(body["details"]["order_id"], "0190");
        assert_eq!(body["at_unix_ms"], alert.at_unix_ms);
        // Nothing more arrives once it was accepted.
        notifier.shutdown(Duration::from_secs(5)).await;
        assert_eq!(receiver.requests(), 3);
        assert!(receiver.accepted.try_recv().is_err());
    }

    #[tokio::test]
    async fn an_endpoint_that_refused_connections_gets_the_alert_once_it_listens() {
        let addr = {
            let listener = tokio::net::TcpListener::bind("127.0.0.1:0")
                .await
                .expect("bind");
            listener.local_addr().expect("addr")
        };
        let webhook = WebhookConfig {
            url: format!("http://{addr}/hook/secret").parse().expect("url"),
            events: Vec::new(),
        };
        let settings = DeliverySettings {
            attempts: 10,
            min_delay: Duration::from_millis(200),
            max_delay: Duration::from_millis(400),
            ..DeliverySettings::default()
        };
        let notifier = Notifier::start(&[webhook], settings).expect("start");
        notifier.notify(order_failed());
        // The first try finds nothing listening; the next ones, at least 200ms later, do.
        tokio::time::sleep(Duration::from_millis(50)).await;
        let mut receiver = WebhookReceiver::start_on(addr, |_| StatusCode::OK).await;
        assert_eq!(next(&mut receiver).await["event"], "order_failed");
    }

    #[test]
    fn only_server_errors_and_429_are_worth_retrying() {
        for (status, transient) in [
            (500, true),
            (503, true),
            (429, true),
            (404, false),
            (400, false),
            (401, false),
            (301, false),
        ] {
            let status = reqwest::StatusCode::from_u16(status).expect("status");
            assert_eq!(
                DeliveryError::Status(status).is_transient(),
                transient,
                "{status}"
            );
        }
    }

    #[tokio::test]
    async fn a_refused_connection_is_worth_retrying_and_says_why_without_the_url() {
        let addr = {
            let listener = tokio::net::TcpListener::bind("127.0.0.1:0")
                .await
                .expect("bind");
            listener.local_addr().expect("addr")
        };
        let client = http_client(Duration::from_secs(5)).expect("client");
        let error = client
            .post(format!("http://{addr}/hook/secret"))
            .send()
            .await
            .expect_err("refused");
        let error = DeliveryError::Request(error.without_url());
        assert!(error.is_transient());
        let text = error.to_string();
        assert!(text.contains("refused"), "{text}");
        assert!(!text.contains("secret"), "{text}");
    }

    #[tokio::test]
    async fn a_404_is_not_retried() {
        let receiver = WebhookReceiver::start(|_| StatusCode::NOT_FOUND).await;
        let notifier = Notifier::start(&[receiver.webhook(Vec::new())], fast()).expect("start");
        notifier.notify(order_failed());
        // Shutdown waits for the delivery to end: with retries it would take 4 more tries.
        notifier.shutdown(Duration::from_secs(5)).await;
        assert_eq!(receiver.requests(), 1);
    }

    #[tokio::test]
    async fn a_429_is_retried_up_to_the_attempt_limit() {
        let receiver = WebhookReceiver::start(|_| StatusCode::TOO_MANY_REQUESTS).await;
        let settings = DeliverySettings {
            attempts: 3,
            ..fast()
        };
        let notifier = Notifier::start(&[receiver.webhook(Vec::new())], settings).expect("start");
        notifier.notify(order_failed());
        notifier.shutdown(Duration::from_secs(5)).await;
        assert_eq!(receiver.requests(), 3);
    }

    #[tokio::test]
    async fn only_the_events_an_endpoint_asked_for_reach_it() {
        let mut receiver = WebhookReceiver::start(|_| StatusCode::OK).await;
        let notifier = Notifier::start(&[receiver.webhook(vec![AlertEvent::AgentDown])], fast())
            .expect("start");
        notifier.notify(order_failed());
        notifier.notify(Alert::new(
            AlertEvent::AgentDown,
            "a1",
            "agent a1 is offline",
            serde_json::Value::Null,
        ));
        assert_eq!(next(&mut receiver).await["event"], "agent_down");
        notifier.shutdown(Duration::from_secs(5)).await;
        assert_eq!(receiver.requests(), 1);
    }

    #[tokio::test]
    async fn notify_returns_at_once_while_the_endpoint_hangs() {
        // Accepts connections and never answers.
        let listener = tokio::net::TcpListener::bind("127.0.0.1:0")
            .await
            .expect("bind");
        let addr = listener.local_addr().expect("addr");
        let app = axum::Router::new().route("/hook", post(std::future::pending::<StatusCode>));
        tokio::spawn(async move { axum::serve(listener, app).await });
        let mut healthy = WebhookReceiver::start(|_| StatusCode::OK).await;
        let webhooks = [
            WebhookConfig {
                url: format!("http://{addr}/hook").parse().expect("url"),
                events: Vec::new(),
            },
            healthy.webhook(Vec::new()),
        ];
        let settings = DeliverySettings {
            queue_capacity: 8,
            concurrency: 2,
            ..fast()
        };
        let notifier = Notifier::start(&webhooks, settings).expect("start");

        let started = Instant::now();
        for _ in 0..1000 {
            notifier.notify(order_failed());
        }
        assert!(
            started.elapsed() < Duration::from_secs(1),
            "notify blocked: {:?}",
            started.elapsed()
        );
        // The hanging endpoint does not hold up the other one.
        next(&mut healthy).await;
        let started = Instant::now();
        notifier.shutdown(Duration::from_millis(200)).await;
        assert!(started.elapsed() < Duration::from_secs(2));
    }
}
