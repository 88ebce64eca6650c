//! The coordinator's TLS: its files (`ca init` writes them), the rustls server
//! configuration, the accept loop, and the check of an agent's client certificate.
//!
//! The TLS layer asks every client for a certificate and checks that a client which sends
//! one holds its key, but lets a connection without one through: operators authenticate with
//! bearer tokens and enrolling agents have no certificate yet. Whether a certificate was
//! issued by this coordinator's CA and is in force is checked per call by
//! [`AgentAuthority::verify`], which can then say why one is refused (expired, another CA)
//! to the agent and to the audit log, instead of a bare handshake failure nobody sees.

use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::time::Duration;

use rustls::client::danger::HandshakeSignatureValid;
use rustls::pki_types::pem::PemObject;
use rustls::pki_types::{CertificateDer, PrivateKeyDer, UnixTime};
use rustls::server::WebPkiClientVerifier;
use rustls::server::danger::{ClientCertVerified, ClientCertVerifier};
use rustls::{CertificateError, DigitallySignedStruct, DistinguishedName, SignatureScheme};
use tokio::net::{TcpListener, TcpStream};
use tokio::sync::mpsc;
use tokio_rustls::TlsAcceptor;
use tokio_rustls::server::TlsStream;
use tokio_stream::wrappers::ReceiverStream;
use tracing::{debug, warn};
use warden_shared::pki::{self, CertInfo, CertificateAuthority, PkiError};

/// A client that has not finished its TLS handshake by then is dropped.
const HANDSHAKE_TIMEOUT: Duration = Duration::from_secs(10);
/// At most this many handshakes at once; more connections wait to be accepted, so a flood
/// of half-open clients costs bounded memory and leaves room for agents as it drains.
const MAX_HANDSHAKES: usize = 256;

/// The coordinator's TLS files, all in one directory.
#[derive(Debug, Clone)]
pub struct TlsFiles {
    dir: PathBuf,
}

impl TlsFiles {
    pub fn new(dir: &Path) -> Self {
        Self {
            dir: dir.to_path_buf(),
        }
    }

    pub fn dir(&self) -> &Path {
        &self.dir
    }

    /// The CA certificate: agents and the CLI trust the coordinator by it.
    pub fn ca_cert(&self) -> PathBuf {
        self.dir.join("ca.pem")
    }

    /// The CA key: signs agents' certificates. Mode 0600.
    pub fn ca_key(&self) -> PathBuf {
        self.dir.join("ca-key.pem")
    }

    pub fn server_cert(&self) -> PathBuf {
        self.dir.join("server.pem")
    }

    /// Mode 0600.
    pub fn server_key(&self) -> PathBuf {
        self.dir.join("server-key.pem")
    }
}

#[derive(Debug, thiserror::Error)]
pub enum TlsError {
    #[error(
        "no TLS files in {dir}: run `warden-coordinator ca init --tls-dir {dir}` first, or \
         start with --insecure-dev for a plaintext development coordinator"
    )]
    NotInitialized { dir: String },
    #[error(
        "{dir} already holds a CA: remove its ca.pem and ca-key.pem first to import another \
         (every agent must then enroll again)"
    )]
    CaExists { dir: String },
    #[error(transparent)]
    Pki(#[from] PkiError),
    #[error("cannot read {path}: {source}")]
    Read {
        path: String,
        source: std::io::Error,
    },
    #[error("{path} holds no usable {what}: {detail}")]
    Pem {
        path: String,
        what: &'static str,
        detail: String,
    },
    #[error("TLS configuration: {0}")]
    Rustls(#[from] rustls::Error),
    #[error("client certificate verifier: {0}")]
    Verifier(#[from] rustls::server::VerifierBuilderError),
}

/// What the coordinator serves TLS with and checks agents against.
pub struct ServerTls {
    pub acceptor: TlsAcceptor,
    pub agents: AgentAuthority,
}

impl ServerTls {
    /// Loads the files `ca init` wrote; the keys must not be readable by group or others.
    pub fn load(files: &TlsFiles, agent_cert_ttl: Duration) -> Result<Self, TlsError> {
        if !files.ca_cert().exists() || !files.server_cert().exists() {
            return Err(TlsError::NotInitialized {
                dir: files.dir().display().to_string(),
            });
        }
        let ca_pem = read(&files.ca_cert())?;
        let ca = CertificateAuthority::load(&ca_pem, &pki::read_private(&files.ca_key())?)?;
        let server_cert = read(&files.server_cert())?;
        let server_key = pki::read_private(&files.server_key())?;

        let provider = Arc::new(rustls::crypto::ring::default_provider());
        let mut roots = rustls::RootCertStore::empty();
        roots.add(
            CertificateDer::from_pem_slice(ca_pem.as_bytes())
                .map_err(|e| pem_error(&files.ca_cert(), "certificate", e))?,
        )?;
        let verifier = WebPkiClientVerifier::builder_with_provider(roots.into(), provider.clone())
            .allow_unauthenticated()
            .build()?;
        let chain = CertificateDer::pem_slice_iter(server_cert.as_bytes())
            .collect::<Result<Vec<_>, _>>()
            .map_err(|e| pem_error(&files.server_cert(), "certificate", e))?;
        let key = PrivateKeyDer::from_pem_slice(server_key.as_bytes())
            .map_err(|e| pem_error(&files.server_key(), "private key", e))?;
        let mut config = rustls::ServerConfig::builder_with_provider(provider)
            .with_safe_default_protocol_versions()?
            .with_client_cert_verifier(Arc::new(DeferredClientVerifier {
                inner: verifier.clone(),
            }))
            .with_single_cert(chain, key)?;
        config.alpn_protocols = vec![b"h2".to_vec()];
        Ok(Self {
            acceptor: TlsAcceptor::from(Arc::new(config)),
            agents: AgentAuthority {
                ca,
                verifier,
                cert_ttl: agent_cert_ttl,
            },
        })
    }
}

fn read(path: &Path) -> Result<String, TlsError> {
    std::fs::read_to_string(path).map_err(|source| TlsError::Read {
        path: path.display().to_string(),
        source,
    })
}

fn pem_error(path: &Path, what: &'static str, error: impl std::fmt::Display) -> TlsError {
    TlsError::Pem {
        path: path.display().to_string(),
        what,
        detail: error.to_string(),
    }
}

/// Checks that a client holds the key of the certificate it sends, and leaves the
/// certificate itself to [`AgentAuthority::verify`] (see the module doc).
#[derive(Debug)]
struct DeferredClientVerifier {
    inner: Arc<dyn ClientCertVerifier>,
}

impl ClientCertVerifier for DeferredClientVerifier {
    fn client_auth_mandatory(&self) -> bool {
        false
    }

    fn root_hint_subjects(&self) -> &[DistinguishedName] {
        self.inner.root_hint_subjects()
    }

    fn verify_client_cert(
        &self,
        _end_entity: &CertificateDer<'_>,
        _intermediates: &[CertificateDer<'_>],
        _now: UnixTime,
    ) -> Result<ClientCertVerified, rustls::Error> {
        Ok(ClientCertVerified::assertion())
    }

    fn verify_tls12_signature(
        &self,
        message: &[u8],
        cert: &CertificateDer<'_>,
        dss: &DigitallySignedStruct,
    ) -> Result<HandshakeSignatureValid, rustls::Error> {
        self.inner.verify_tls12_signature(message, cert, dss)
    }

    fn verify_tls13_signature(
        &self,
        message: &[u8],
        cert: &CertificateDer<'_>,
        dss: &DigitallySignedStruct,
    ) -> Result<HandshakeSignatureValid, rustls::Error> {
        self.inner.verify_tls13_signature(message, cert, dss)
    }

    fn supported_verify_schemes(&self) -> Vec<SignatureScheme> {
        self.inner.supported_verify_schemes()
    }
}

/// The coordinator's CA as agents meet it: checks their certificates and signs new ones.
pub struct AgentAuthority {
    ca: CertificateAuthority,
    verifier: Arc<dyn ClientCertVerifier>,
    cert_ttl: Duration,
}

impl AgentAuthority {
    /// Checks a peer's certificate chain against the CA, now: returns what it says, or why
    /// it is refused (for the agent and the audit log).
    pub fn verify(&self, certs: Option<&[CertificateDer<'static>]>) -> Result<CertInfo, String> {
        let Some((end_entity, intermediates)) = certs.and_then(|c| c.split_first()) else {
            return Err(
                "no client certificate: enroll the agent first (`warden-agent enroll \
                        --token TOKEN`; an admin makes one with `warden token create --agent NAME`)"
                    .to_owned(),
            );
        };
        let info = CertInfo::from_der(end_entity).map_err(|e| e.to_string())?;
        let claimed = info.common_name.as_deref().unwrap_or("(no name)");
        match self
            .verifier
            .verify_client_cert(end_entity, intermediates, UnixTime::now())
        {
            Ok(_) => Ok(info),
            Err(rustls::Error::InvalidCertificate(
                CertificateError::Expired | CertificateError::ExpiredContext { .. },
            )) => Err(format!(
                "the certificate of {claimed} (serial {}) expired at {}: agents renew theirs \
                 before they expire; enroll it again (`warden-agent enroll`)",
                info.serial,
                info.not_after
                    .to_rfc3339_opts(chrono::SecondsFormat::Secs, true)
            )),
            Err(rustls::Error::InvalidCertificate(CertificateError::UnknownIssuer)) => {
                Err(format!(
                    "the certificate of {claimed} (serial {}) was not issued by this coordinator's \
                 CA: enroll the agent with this coordinator (`warden-agent enroll`)",
                    info.serial
                ))
            }
            Err(error) => Err(format!(
                "the certificate of {claimed} (serial {}) is refused: {error}",
                info.serial
            )),
        }
    }

    /// Signs a client certificate for `agent`'s CSR.
    pub fn sign(&self, csr_pem: &str, agent: &str) -> Result<pki::IssuedCert, PkiError> {
        self.ca.sign_agent_csr(csr_pem, agent, self.cert_ttl)
    }

    pub fn ca_pem(&self) -> &str {
        self.ca.cert_pem()
    }
}

/// TLS connections accepted on `listener`, each handshake in a task of its own so a slow
/// client holds up nobody; ends when the server drops the stream.
pub fn incoming(
    listener: TcpListener,
    acceptor: TlsAcceptor,
) -> ReceiverStream<Result<TlsStream<TcpStream>, std::io::Error>> {
    let (tx, rx) = mpsc::channel(64);
    let handshakes = Arc::new(tokio::sync::Semaphore::new(MAX_HANDSHAKES));
    tokio::spawn(async move {
        loop {
            let permit = tokio::select! {
                permit = handshakes.clone().acquire_owned() => match permit {
                    Ok(permit) => permit,
                    Err(_) => return,
                },
                () = tx.closed() => return,
            };
            let accepted = tokio::select! {
                accepted = listener.accept() => accepted,
                () = tx.closed() => return,
            };
            let (tcp, peer) = match accepted {
                Ok(accepted) => accepted,
                Err(error) => {
                    // Out of file descriptors, most likely: wait rather than spin.
                    warn!(%error, "cannot accept a connection");
                    tokio::time::sleep(Duration::from_millis(100)).await;
                    continue;
                }
            };
            let _ = tcp.set_nodelay(true);
            let acceptor = acceptor.clone();
            let tx = tx.clone();
            tokio::spawn(async move {
                let _permit = permit;
                match tokio::time::timeout(HANDSHAKE_TIMEOUT, acceptor.accept(tcp)).await {
                    Ok(Ok(stream)) => {
                        let _ = tx.send(Ok(stream)).await;
                    }
                    Ok(Err(error)) => debug!(%peer, %error, "TLS handshake failed"),
                    Err(_) => debug!(%peer, "TLS handshake timed out"),
                }
            });
        }
    });
    ReceiverStream::new(rx)
}
