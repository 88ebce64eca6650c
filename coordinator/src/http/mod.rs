//! The coordinator's HTTP port (`http_listen`): `GET /metrics` in the Prometheus text format
//! and `GET /healthz` for load balancers and process supervisors.

pub mod exposition;
pub mod metrics;

use std::future::Future;
use std::sync::Arc;

use axum::Router;
use axum::extract::State;
use axum::http::{StatusCode, header};
use axum::response::{IntoResponse, Response};
use axum::routing::get;
use futures::future::BoxFuture;
use tokio::net::TcpListener;
use tracing::warn;

pub use exposition::Histogram;
pub use metrics::{DatabaseMetrics, MetricsSnapshot, OrderCount};

use crate::error::CoordinatorResult;

/// Takes a fresh [`MetricsSnapshot`] of the fleet; called once per scrape.
pub type MetricsSource =
    Arc<dyn Fn() -> BoxFuture<'static, CoordinatorResult<MetricsSnapshot>> + Send + Sync>;

/// The routes of the HTTP port.
pub fn router(metrics: MetricsSource) -> Router {
    Router::new()
        .route("/metrics", get(scrape))
        .route("/healthz", get(|| async { "ok" }))
        .with_state(metrics)
}

/// Serves [`router`] on `listener` until `shutdown` resolves, then lets the requests in
/// flight finish.
pub async fn serve(
    listener: TcpListener,
    metrics: MetricsSource,
    shutdown: impl Future<Output = ()> + Send + 'static,
) -> std::io::Result<()> {
    axum::serve(listener, router(metrics))
        .with_graceful_shutdown(shutdown)
        .await
}

async fn scrape(State(metrics): State<MetricsSource>) -> Response {
    match metrics().await {
        Ok(snapshot) => (
            [(header::CONTENT_TYPE, exposition::CONTENT_TYPE)],
            metrics::encode(&snapshot),
        )
            .into_response(),
        Err(error) => {
            warn!(%error, "metrics scrape failed");
            (
                StatusCode::INTERNAL_SERVER_ERROR,
                format!("cannot collect metrics: {error}\n"),
            )
                .into_response()
        }
    }
}

#[cfg(test)]
mod tests {
    use std::net::SocketAddr;

    use tokio::io::{AsyncReadExt, AsyncWriteExt};

    use super::*;
    use crate::error::CoordinatorError;

    async fn start(metrics: MetricsSource) -> SocketAddr {
        let listener = TcpListener::bind("127.0.0.1:0").await.expect("bind");
        let addr = listener.local_addr().expect("addr");
        tokio::spawn(serve(listener, metrics, std::future::pending()));
        addr
    }

    fn source(result: fn() -> CoordinatorResult<MetricsSnapshot>) -> MetricsSource {
        Arc::new(move || Box::pin(async move { result() }))
    }

    /// One HTTP/1.1 GET over a fresh connection: the status line, the header lines (names
    /// lowercased) and the body.
    async fn get(addr: SocketAddr, path: &str) -> (String, Vec<String>, String) {
        let mut stream = tokio::net::TcpStream::connect(addr).await.expect("connect");
        let request = format!("GET {path} HTTP/1.1\r\nHost: {addr}\r\nConnection: close\r\n\r\n");
        stream.write_all(request.as_bytes()).await.expect("send");
        let mut response = String::new();
        stream.read_to_string(&mut response).await.expect("read");
        let (head, body) = response.split_once("\r\n\r\n").expect("a head and a body");
        let mut lines = head.lines();
        let status = lines.next().expect("status line").to_owned();
        let headers = lines.map(str::to_lowercase).collect();
        (status, headers, body.to_owned())
    }

    #[tokio::test]
    async fn metrics_are_served_over_tcp_in_the_text_format() {
        let addr = start(source(|| {
            Ok(MetricsSnapshot {
                agents_total: 2,
                agents_online: 1,
                ..MetricsSnapshot::default()
            })
        }))
        .await;
        let (status, headers, body) = get(addr, "/metrics").await;
        assert_eq!(status, "HTTP/1.1 200 OK");
        assert!(
            headers.contains(&"content-type: text/plain; version=0.0.4; charset=utf-8".to_owned()),
            "{headers:?}"
        );
        assert!(
            body.contains("warden_agents{state=\"online\"} 1\n"),
            "{body}"
        );
        assert!(
            body.contains("# TYPE warden_order_duration_seconds histogram\n"),
            "{body}"
        );
    }

    #[tokio::test]
    async fn a_failed_scrape_is_a_500_that_says_why() {
        let addr = start(source(|| {
            Err(CoordinatorError::FailedPrecondition(
                "the store is closed".to_owned(),
            ))
        }))
        .await;
        let (status, _, body) = get(addr, "/metrics").await;
        assert_eq!(status, "HTTP/1.1 500 Internal Server Error");
        assert!(body.contains("the store is closed"), "{body}");
    }

    #[tokio::test]
    async fn healthz_says_ok() {
        let addr = start(source(|| Ok(MetricsSnapshot::default()))).await;
        let (status, _, body) = get(addr, "/healthz").await;
        assert_eq!(status, "HTTP/1.1 200 OK");
        assert_eq!(body, "ok");
    }
}
