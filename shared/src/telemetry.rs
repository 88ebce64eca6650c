//! Logging and tracing setup: plain or JSON lines on stderr, filtered by `RUST_LOG` (default
//! `info`), and optionally the same spans exported over OTLP/gRPC to a collector.

use std::time::Duration;

use opentelemetry::trace::TracerProvider as _;
use opentelemetry_otlp::WithExportConfig;
use opentelemetry_sdk::Resource;
use opentelemetry_sdk::trace::SdkTracerProvider;
use tracing_subscriber::EnvFilter;
use tracing_subscriber::layer::SubscriberExt;
use tracing_subscriber::util::SubscriberInitExt;

/// How long one OTLP export may take, and how long [`Telemetry`] waits for the last spans
/// to leave when it is dropped.
const OTLP_TIMEOUT: Duration = Duration::from_secs(10);

#[derive(Debug, thiserror::Error)]
pub enum TelemetryError {
    #[error(
        "otlp endpoint {0:?} is not supported: use http://HOST:PORT of an OTLP/gRPC collector \
         (spans are sent without TLS)"
    )]
    UnsupportedEndpoint(String),
    #[error("cannot export spans to otlp endpoint {endpoint}: {source}")]
    Exporter {
        endpoint: String,
        source: opentelemetry_otlp::ExporterBuildError,
    },
}

/// Keeps the OTLP exporter of [`init`] running; dropping it flushes the spans not yet sent.
/// Hold it until the process ends.
#[must_use = "dropping Telemetry stops the OTLP export"]
pub struct Telemetry {
    tracer_provider: Option<SdkTracerProvider>,
}

impl Drop for Telemetry {
    fn drop(&mut self) {
        if let Some(provider) = self.tracer_provider.take()
            && let Err(error) = provider.shutdown_with_timeout(OTLP_TIMEOUT)
        {
            tracing::warn!(%error, "could not flush spans to the OTLP endpoint");
        }
    }
}

/// Installs the global tracing subscriber. `json` selects one JSON object per line. With an
/// `otlp_endpoint` (`http://HOST:4317`), spans are also exported over OTLP/gRPC with
/// `service.name` = `service_name`. Must be called inside a Tokio runtime.
///
/// A second call in the same process (as in tests running several components in one process)
/// keeps the first subscriber and exports nothing.
pub fn init(
    service_name: &'static str,
    json: bool,
    otlp_endpoint: Option<&str>,
) -> Result<Telemetry, TelemetryError> {
    let filter = EnvFilter::try_from_default_env().unwrap_or_else(|_| EnvFilter::new("info"));
    let tracer_provider = otlp_endpoint
        .map(|endpoint| otlp_tracer_provider(service_name, endpoint))
        .transpose()?;
    let otel_layer = tracer_provider
        .as_ref()
        .map(|provider| tracing_opentelemetry::layer().with_tracer(provider.tracer(service_name)));
    let plain = (!json).then(|| tracing_subscriber::fmt::layer().with_writer(std::io::stderr));
    let json = json.then(|| {
        tracing_subscriber::fmt::layer()
            .json()
            .with_writer(std::io::stderr)
    });
    let installed = tracing_subscriber::registry()
        .with(filter)
        .with(plain)
        .with(json)
        .with(otel_layer)
        .try_init()
        .is_ok();
    Ok(Telemetry {
        // Spans only reach the exporter through the subscriber that was installed.
        tracer_provider: tracer_provider.filter(|_| installed),
    })
}

fn otlp_tracer_provider(
    service_name: &'static str,
    endpoint: &str,
) -> Result<SdkTracerProvider, TelemetryError> {
    // Built without TLS, an https:// endpoint could never be reached.
    if !endpoint.starts_with("http://") {
        return Err(TelemetryError::UnsupportedEndpoint(endpoint.to_owned()));
    }
    let exporter = opentelemetry_otlp::SpanExporter::builder()
        .with_tonic()
        .with_endpoint(endpoint)
        .with_timeout(OTLP_TIMEOUT)
        .build()
        .map_err(|source| TelemetryError::Exporter {
            endpoint: endpoint.to_owned(),
            source,
        })?;
    Ok(SdkTracerProvider::builder()
        .with_resource(Resource::builder().with_service_name(service_name).build())
        .with_batch_exporter(exporter)
        .build())
}

#[cfg(test)]
mod tests {
    use opentelemetry_proto::tonic::collector::trace::v1::trace_service_server::{
        TraceService, TraceServiceServer,
    };
    use opentelemetry_proto::tonic::collector::trace::v1::{
        ExportTraceServiceRequest, ExportTraceServiceResponse,
    };
    use opentelemetry_proto::tonic::common::v1::any_value::Value;
    use tokio::sync::mpsc;

    use super::*;

    /// An OTLP collector that hands every export request to the test.
    struct Collector(mpsc::UnboundedSender<ExportTraceServiceRequest>);

    #[tonic::async_trait]
    impl TraceService for Collector {
        async fn export(
            &self,
            request: tonic::Request<ExportTraceServiceRequest>,
        ) -> Result<tonic::Response<ExportTraceServiceResponse>, tonic::Status> {
            let _ = self.0.send(request.into_inner());
            Ok(tonic::Response::new(ExportTraceServiceResponse {
                partial_success: None,
            }))
        }
    }

    #[tokio::test(flavor = "multi_thread")]
    async fn spans_reach_an_otlp_collector_with_the_service_name() {
        let listener = tokio::net::TcpListener::bind("127.0.0.1:0")
            .await
            .expect("bind");
        let addr = listener.local_addr().expect("addr");
        let (exports, mut exported) = mpsc::unbounded_channel();
        tokio::spawn(
            tonic::transport::Server::builder()
                .add_service(TraceServiceServer::new(Collector(exports)))
                .serve_with_incoming(tokio_stream::wrappers::TcpListenerStream::new(listener)),
        );

        let provider =
            otlp_tracer_provider("warden-test", &format!("http://{addr}/")).expect("exporter");
        let subscriber = tracing_subscriber::registry()
            .with(tracing_opentelemetry::layer().with_tracer(provider.tracer("warden-test")));
        tracing::subscriber::with_default(subscriber, || {
            let _span = tracing::info_span!("drill", database = "a1/app").entered();
        });
        // Dropping flushes, blocking until the collector answered.
        let telemetry = Telemetry {
            tracer_provider: Some(provider),
        };
        tokio::task::spawn_blocking(move || drop(telemetry))
            .await
            .expect("flushed");

        let request = tokio::time::timeout(Duration::from_secs(10), exported.recv())
            .await
            .expect("an export in time")
            .expect("an export");
        let resource_spans = &request.resource_spans[0];
        let service_name = resource_spans
            .resource
            .as_ref()
            .expect("resource")
            .attributes
            .iter()
            .find(|attribute| attribute.key == "service.name")
            .and_then(|attribute| attribute.value.as_ref()?.value.clone());
        assert_eq!(
            service_name,
            Some(Value::StringValue("warden-test".to_owned()))
        );
        let span = &resource_spans.scope_spans[0].spans[0];
        assert_eq!(span.name, "drill");
        assert!(
            span.attributes
                .iter()
                .any(|attribute| attribute.key == "database"),
            "{span:?}"
        );
    }

    #[tokio::test]
    async fn endpoints_that_cannot_work_are_refused_with_their_value() {
        for endpoint in ["https://collector:4317", "http://not a uri"] {
            let error = otlp_tracer_provider("warden-test", endpoint)
                .expect_err("refused")
                .to_string();
            assert!(error.contains(endpoint), "{error}");
        }
    }
}
