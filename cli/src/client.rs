//! The connection to the coordinator's AdminService: TLS checked against the coordinator's
//! CA, the operator's bearer token on every call, and `user@host` beside it, which the
//! coordinator writes into its audit log next to the token's holder.

use std::path::Path;
use std::time::Duration;

use tonic::metadata::{AsciiMetadataValue, MetadataValue};
use tonic::service::Interceptor;
use tonic::service::interceptor::InterceptedService;
use tonic::transport::{Certificate, Channel, ClientTlsConfig, Endpoint};
use tonic::{Request, Response, Status};
use warden_proto::v1::admin_service_client::AdminServiceClient;

use crate::error::{CliError, error_chain};

/// The metadata key the coordinator reads the operator's identity from.
pub const ACTOR_METADATA_KEY: &str = "x-warden-actor";

/// A coordinator that does not accept the connection by then is treated as down.
const CONNECT_TIMEOUT: Duration = Duration::from_secs(5);
/// Every admin call is a short catalog operation (work runs on agents), so a call this slow
/// means the coordinator is stuck.
const REQUEST_TIMEOUT: Duration = Duration::from_secs(30);

pub type AdminClient = AdminServiceClient<InterceptedService<Channel, ActorInterceptor>>;

/// Adds the operator's token and identity to every request.
#[derive(Clone)]
pub struct ActorInterceptor {
    actor: AsciiMetadataValue,
    authorization: Option<AsciiMetadataValue>,
}

impl Interceptor for ActorInterceptor {
    fn call(&mut self, mut request: Request<()>) -> Result<Request<()>, Status> {
        request
            .metadata_mut()
            .insert(ACTOR_METADATA_KEY, self.actor.clone());
        if let Some(authorization) = &self.authorization {
            request
                .metadata_mut()
                .insert("authorization", authorization.clone());
        }
        Ok(request)
    }
}

/// The operator's token: `WARDEN_TOKEN`, else the file `--token-file` names (which others
/// must not be able to read). None: calls go without, and the coordinator says what to do.
fn operator_token(token_file: Option<&Path>) -> Result<Option<AsciiMetadataValue>, CliError> {
    let secret = match std::env::var("WARDEN_TOKEN") {
        Ok(secret) if !secret.trim().is_empty() => secret,
        _ => match token_file {
            Some(path) => warden_shared::pki::read_private(path)
                .map_err(|e| CliError::Input(format!("token file: {e}")))?,
            None => return Ok(None),
        },
    };
    let value = format!("Bearer {}", secret.trim());
    AsciiMetadataValue::try_from(value.as_str())
        .map(Some)
        .map_err(|_| {
            CliError::Input(
                "the operator token holds characters a token never has: check WARDEN_TOKEN or \
                 the token file"
                    .to_owned(),
            )
        })
}

/// Whether `url` names this machine (a plaintext `--insecure-dev` coordinator may).
fn is_loopback(url: &str) -> bool {
    let host = url
        .split_once("://")
        .map_or(url, |(_, rest)| rest)
        .split(['/', '?'])
        .next()
        .unwrap_or_default();
    let host = host
        .strip_prefix('[')
        .and_then(|h| h.split_once(']'))
        .map_or_else(
            || host.rsplit_once(':').map_or(host, |(h, _)| h),
            |(h, _)| h,
        );
    host == "localhost"
        || host
            .parse::<std::net::IpAddr>()
            .is_ok_and(|ip| ip.is_loopback())
}

/// TLS for an `https://` coordinator, checked against the CA in `ca_cert`.
fn tls_config(url: &str, ca_cert: Option<&Path>) -> Result<Option<ClientTlsConfig>, CliError> {
    if !url.starts_with("https://") {
        return Ok(None);
    }
    let Some(path) = ca_cert else {
        return Err(CliError::Input(format!(
            "{url} serves TLS: pass --ca-cert (the coordinator's tls/ca.pem) or set \
             WARDEN_CA_CERT"
        )));
    };
    let pem = std::fs::read(path).map_err(|e| {
        CliError::Input(format!(
            "cannot read the CA certificate {}: {e}",
            path.display()
        ))
    })?;
    Ok(Some(
        ClientTlsConfig::new().ca_certificate(Certificate::from_pem(pem)),
    ))
}

/// A connected coordinator and the address it was reached at (errors name it).
#[derive(Debug, Clone)]
pub struct Coordinator {
    client: AdminClient,
    url: String,
}

impl Coordinator {
    /// Connects to the coordinator at `url` (TLS checked against `ca_cert` for https://),
    /// failing fast when nothing answers there.
    pub async fn connect(
        url: &str,
        ca_cert: Option<&Path>,
        token_file: Option<&Path>,
    ) -> Result<Self, CliError> {
        if !url.contains("://") {
            return Err(CliError::Input(format!(
                "invalid coordinator address {url:?}: it needs a scheme, for example https://{url}"
            )));
        }
        let endpoint = Endpoint::from_shared(url.to_owned())
            .map_err(|err| {
                CliError::Input(format!(
                    "invalid coordinator address {url:?}: {}: use a URL like https://127.0.0.1:7717",
                    error_chain(&err.to_string(), std::error::Error::source(&err))
                ))
            })?
            .connect_timeout(CONNECT_TIMEOUT)
            .timeout(REQUEST_TIMEOUT);
        let endpoint = match tls_config(url, ca_cert)? {
            Some(tls) => endpoint.tls_config(tls).map_err(|err| {
                CliError::Input(format!(
                    "TLS configuration for {url}: {}",
                    error_chain(&err.to_string(), std::error::Error::source(&err))
                ))
            })?,
            None => endpoint,
        };
        let authorization = operator_token(token_file)?;
        if authorization.is_some() && !url.starts_with("https://") && !is_loopback(url) {
            return Err(CliError::Input(format!(
                "{url} is plaintext and not on this machine: the token would cross the network \
                 in the clear; use the coordinator's https:// address"
            )));
        }
        let channel = endpoint
            .connect()
            .await
            .map_err(|err| CliError::Unreachable {
                url: url.to_owned(),
                detail: error_chain(&err.to_string(), std::error::Error::source(&err)),
            })?;
        let interceptor = ActorInterceptor {
            actor: actor_metadata(&current_actor()),
            authorization,
        };
        Ok(Self {
            client: AdminServiceClient::with_interceptor(channel, interceptor),
            url: url.to_owned(),
        })
    }

    /// Returns a handle for one call; handles are cheap clones sharing one connection.
    pub fn admin(&self) -> AdminClient {
        self.client.clone()
    }

    /// Unwraps the answer to a call, mapping a failed call to the error a person should see.
    pub fn answer<T>(&self, result: Result<Response<T>, Status>) -> Result<T, CliError> {
        result
            .map(Response::into_inner)
            .map_err(|status| CliError::from_status(status, &self.url))
    }
}

/// Returns `user@host` for the operator running this process.
fn current_actor() -> String {
    actor_name(
        std::env::var("USER").ok().as_deref(),
        whoami::hostname().ok().as_deref(),
    )
}

/// Builds `user@host`, standing in for what the environment does not tell.
pub fn actor_name(user: Option<&str>, host: Option<&str>) -> String {
    let user = user.map(str::trim).filter(|u| !u.is_empty());
    let host = host.map(str::trim).filter(|h| !h.is_empty());
    format!(
        "{}@{}",
        user.unwrap_or("unknown"),
        host.unwrap_or("localhost")
    )
}

/// Makes `actor` a valid metadata value: gRPC metadata is printable ASCII, so anything else
/// (a unicode user name) is replaced rather than dropping the whole identity.
pub fn actor_metadata(actor: &str) -> AsciiMetadataValue {
    let printable: String = actor
        .chars()
        .map(|c| if c.is_ascii_graphic() { c } else { '_' })
        .collect();
    MetadataValue::try_from(printable.as_str())
        .unwrap_or_else(|_| MetadataValue::from_static("unknown@localhost"))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn actor_names_fall_back_to_placeholders() {
        assert_eq!(actor_name(Some("alice"), Some("ops-1")), "alice@ops-1");
        assert_eq!(actor_name(None, Some("ops-1")), "unknown@ops-1");
        assert_eq!(actor_name(Some(" "), None), "unknown@localhost");
    }

    #[test]
    fn actor_metadata_is_printable_ascii() {
        assert_eq!(
            actor_metadata("alice@ops-1").to_str().ok(),
            Some("alice@ops-1")
        );
        assert_eq!(
            actor_metadata("jörg@db host").to_str().ok(),
            Some("j_rg@db_host")
        );
    }

    #[test]
    fn interceptor_sets_the_actor() {
        let mut interceptor = ActorInterceptor {
            actor: actor_metadata("alice@ops-1"),
            authorization: Some(MetadataValue::from_static("Bearer wdn_op_x")),
        };
        let request = interceptor.call(Request::new(())).expect("never refuses");
        assert_eq!(
            request
                .metadata()
                .get(ACTOR_METADATA_KEY)
                .and_then(|v| v.to_str().ok()),
            Some("alice@ops-1")
        );
        assert_eq!(
            request
                .metadata()
                .get("authorization")
                .and_then(|v| v.to_str().ok()),
            Some("Bearer wdn_op_x")
        );
    }

    #[tokio::test]
    async fn addresses_without_scheme_are_refused_before_connecting() {
        let err = Coordinator::connect("127.0.0.1:7717", None, None)
            .await
            .expect_err("no scheme");
        assert!(matches!(err, CliError::Input(_)));
        assert!(err.to_string().contains("https://127.0.0.1:7717"), "{err}");
    }

    #[tokio::test]
    async fn a_closed_port_is_unreachable() {
        // Bind and drop a listener to get a port that is very likely closed.
        let port = std::net::TcpListener::bind("127.0.0.1:0")
            .and_then(|l| l.local_addr())
            .expect("bind a free port")
            .port();
        let url = format!("http://127.0.0.1:{port}");
        let err = Coordinator::connect(&url, None, None)
            .await
            .expect_err("nothing listens");
        assert!(err.is_unreachable(), "{err}");
        assert!(err.to_string().contains(&url), "{err}");
    }

    #[test]
    fn only_loopback_addresses_count_as_this_machine() {
        for url in [
            "http://127.0.0.1:7717",
            "http://localhost:1",
            "http://[::1]:7717/x",
        ] {
            assert!(is_loopback(url), "{url}");
        }
        for url in [
            "http://10.0.0.7:7717",
            "http://coord.example",
            "http://[2001:db8::1]:1",
        ] {
            assert!(!is_loopback(url), "{url}");
        }
    }

    #[tokio::test]
    async fn an_https_coordinator_needs_its_ca_certificate() {
        let err = Coordinator::connect("https://127.0.0.1:1", None, None)
            .await
            .expect_err("no CA");
        assert!(err.to_string().contains("--ca-cert"), "{err}");
    }
}
