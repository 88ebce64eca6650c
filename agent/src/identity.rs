//! The agent's certificate: enrolled with a one-time token (the key is made here and never
//! leaves this host), presented on every connection to the coordinator (mTLS), and renewed
//! when a third of its lifetime is left.
//!
//! A renewal writes the new key, then the new certificate, as `.next` files, then renames
//! the key and then the certificate into place, all under one lock.
//! [`TlsFiles::finish_renewal`] settles what a crash left: a lone `agent-key.pem.next` was
//! never paired with a certificate and goes; both `.next` files, or a lone
//! `agent.pem.next` (its key already moved), complete the renewal. So the key and the
//! certificate in use always belong together.

use std::path::{Path, PathBuf};
use std::time::Duration;

use tokio_util::sync::CancellationToken;
use tonic::transport::{Certificate, ClientTlsConfig, Endpoint, Identity};
use warden_proto::v1;
use warden_proto::v1::agent_service_client::AgentServiceClient;
use warden_shared::pki::{self, CertInfo};

use crate::config::AgentConfig;
use crate::error::{AgentError, AgentResult, error_chain};

/// The longest the renewal task sleeps before looking at the certificate again.
const RENEW_CHECK: Duration = Duration::from_secs(3600);
/// How soon a failed renewal is tried again.
const RENEW_RETRY: Duration = Duration::from_secs(60);

/// The agent's TLS files, in `tls_dir`.
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

    /// The coordinator's CA certificate.
    pub fn ca(&self) -> PathBuf {
        self.dir.join("ca.pem")
    }

    pub fn cert(&self) -> PathBuf {
        self.dir.join("agent.pem")
    }

    /// Mode 0600.
    pub fn key(&self) -> PathBuf {
        self.dir.join("agent-key.pem")
    }

    fn next(path: &Path) -> PathBuf {
        let mut name = path.as_os_str().to_owned();
        name.push(".next");
        PathBuf::from(name)
    }

    /// Settles what an interrupted renewal left (see the module doc).
    pub fn finish_renewal(&self) -> AgentResult<()> {
        let _files = lock();
        self.settle()
    }

    fn settle(&self) -> AgentResult<()> {
        let key_next = Self::next(&self.key());
        let cert_next = Self::next(&self.cert());
        if !cert_next.exists() {
            if key_next.exists() {
                std::fs::remove_file(&key_next).map_err(|source| AgentError::Io {
                    context: format!("cannot remove the unpaired key {}", key_next.display()),
                    source,
                })?;
            }
            return Ok(());
        }
        for (next, path) in [(key_next, self.key()), (cert_next, self.cert())] {
            if next.exists() {
                std::fs::rename(&next, &path).map_err(|source| AgentError::Io {
                    context: format!(
                        "cannot finish a certificate renewal: rename {}",
                        next.display()
                    ),
                    source,
                })?;
            }
        }
        Ok(())
    }

    /// Stores a key and its certificate: key then certificate as `.next`, then renamed
    /// key first, under the lock.
    fn store(&self, key_pem: &str, cert_pem: &str, ca_pem: &str) -> AgentResult<()> {
        let _files = lock();
        pki::write_private(&Self::next(&self.key()), key_pem.as_bytes()).map_err(tls_error)?;
        pki::write_public(&Self::next(&self.cert()), cert_pem.as_bytes()).map_err(tls_error)?;
        pki::write_public(&self.ca(), ca_pem.as_bytes()).map_err(tls_error)?;
        self.settle()
    }

    /// The certificate in force, if the agent has one.
    pub fn current(&self) -> AgentResult<Option<CertInfo>> {
        self.finish_renewal()?;
        match std::fs::read_to_string(self.cert()) {
            Ok(pem) => Ok(Some(CertInfo::from_pem(&pem).map_err(tls_error)?)),
            Err(error) if error.kind() == std::io::ErrorKind::NotFound => Ok(None),
            Err(source) => Err(AgentError::Io {
                context: format!("cannot read {}", self.cert().display()),
                source,
            }),
        }
    }
}

/// One writer or reader of the TLS files at a time in this process: the renewal task
/// and the session reconnecting.
fn lock() -> std::sync::MutexGuard<'static, ()> {
    static FILES: std::sync::Mutex<()> = std::sync::Mutex::new(());
    FILES
        .lock()
        .unwrap_or_else(std::sync::PoisonError::into_inner)
}

fn tls_error(error: pki::PkiError) -> AgentError {
    AgentError::Tls(error.to_string())
}

fn read_public(path: &Path) -> AgentResult<String> {
    std::fs::read_to_string(path).map_err(|source| AgentError::Io {
        context: format!("cannot read {}", path.display()),
        source,
    })
}

/// The coordinator's endpoint as this agent reaches it: with its certificate over TLS, or
/// plaintext with `insecure_dev`.
pub fn coordinator_endpoint(config: &AgentConfig) -> AgentResult<Endpoint> {
    let endpoint = plain_endpoint(config)?;
    if config.insecure_dev {
        return Ok(endpoint);
    }
    let files = TlsFiles::new(&config.tls_dir);
    if files.current()?.is_none() {
        return Err(AgentError::Tls(format!(
            "agent {} has no certificate in {}: enroll it first with `warden-agent enroll \
             --config FILE --token TOKEN` (an admin makes the token with `warden token create \
             --agent {}`)",
            config.name,
            config.tls_dir.display(),
            config.name
        )));
    }
    let identity = {
        // Key and certificate read as one pair, never across a renewal's renames.
        let _files = lock();
        Identity::from_pem(
            read_public(&files.cert())?,
            pki::read_private(&files.key()).map_err(tls_error)?,
        )
    };
    let tls = ClientTlsConfig::new()
        .ca_certificate(Certificate::from_pem(read_public(&files.ca())?))
        .identity(identity);
    with_tls(config, endpoint, tls)
}

fn plain_endpoint(config: &AgentConfig) -> AgentResult<Endpoint> {
    crate::session::endpoint(&config.coordinator).map_err(|source| connect_error(config, &source))
}

fn with_tls(
    config: &AgentConfig,
    endpoint: Endpoint,
    tls: ClientTlsConfig,
) -> AgentResult<Endpoint> {
    endpoint
        .tls_config(tls)
        .map_err(|source| connect_error(config, &source))
}

fn connect_error(config: &AgentConfig, source: &tonic::transport::Error) -> AgentError {
    AgentError::Connect {
        url: config.coordinator.clone(),
        reason: error_chain(source),
    }
}

async fn client(
    config: &AgentConfig,
    endpoint: Endpoint,
) -> AgentResult<AgentServiceClient<tonic::transport::Channel>> {
    let channel = endpoint
        .connect()
        .await
        .map_err(|source| connect_error(config, &source))?;
    Ok(AgentServiceClient::new(channel))
}

/// Enrolls the agent: a new key and CSR, the token, and the certificate the coordinator
/// signs. `ca_cert` is the coordinator's CA certificate (default: the one in `tls_dir`).
pub async fn enroll(
    config: &AgentConfig,
    token: &str,
    ca_cert: Option<&Path>,
) -> AgentResult<CertInfo> {
    if config.insecure_dev {
        return Err(AgentError::Config(
            "insecure_dev = true: a plaintext agent has no certificate to enroll".to_owned(),
        ));
    }
    let files = TlsFiles::new(&config.tls_dir);
    let ca_path = ca_cert.map_or_else(|| files.ca(), Path::to_path_buf);
    if !ca_path.exists() {
        return Err(AgentError::Tls(format!(
            "no CA certificate at {}: pass --ca-cert with the coordinator's tls/ca.pem",
            ca_path.display()
        )));
    }
    let tls = ClientTlsConfig::new().ca_certificate(Certificate::from_pem(read_public(&ca_path)?));
    let endpoint = with_tls(config, plain_endpoint(config)?, tls)?;
    let keyed = pki::agent_key_and_csr(&config.name).map_err(tls_error)?;
    let request = v1::EnrollRequest {
        token: token.trim().to_owned(),
        agent: config.name.clone(),
        csr_pem: keyed.csr_pem.clone(),
    };
    let response = client(config, endpoint)
        .await?
        .enroll(request)
        .await
        .map_err(|status| AgentError::Tls(format!("enrollment refused: {}", status.message())))?
        .into_inner();
    files.store(&keyed.key_pem, &response.certificate_pem, &response.ca_pem)?;
    CertInfo::from_pem(&response.certificate_pem).map_err(tls_error)
}

/// Renews the agent's certificate with the one in force; returns the new one.
pub async fn renew(config: &AgentConfig) -> AgentResult<CertInfo> {
    let endpoint = coordinator_endpoint(config)?;
    let keyed = pki::agent_key_and_csr(&config.name).map_err(tls_error)?;
    let response = client(config, endpoint)
        .await?
        .renew(v1::RenewRequest {
            csr_pem: keyed.csr_pem.clone(),
        })
        .await
        .map_err(|status| AgentError::Tls(format!("renewal refused: {}", status.message())))?
        .into_inner();
    TlsFiles::new(&config.tls_dir).store(
        &keyed.key_pem,
        &response.certificate_pem,
        &response.ca_pem,
    )?;
    CertInfo::from_pem(&response.certificate_pem).map_err(tls_error)
}

/// Renews the certificate whenever a third of its lifetime is left, until `shutdown`.
/// The next connection to the coordinator presents the new one.
pub async fn renew_forever(config: std::sync::Arc<AgentConfig>, shutdown: CancellationToken) {
    if config.insecure_dev {
        return;
    }
    let files = TlsFiles::new(&config.tls_dir);
    loop {
        let wait = match files.current() {
            Ok(Some(info)) => {
                let now = chrono::Utc::now();
                if info.renew_due(now) {
                    match renew(&config).await {
                        Ok(renewed) => {
                            tracing::info!(
                                serial = %renewed.serial,
                                not_after = %renewed.not_after,
                                "certificate renewed"
                            );
                            Duration::ZERO
                        }
                        Err(error) if info.not_after <= chrono::Utc::now() => {
                            // Only a new enrollment helps now; look again rarely.
                            tracing::error!(
                                %error,
                                not_after = %info.not_after,
                                "the certificate expired and cannot be renewed: enroll the \
                                 agent again (`warden-agent enroll`)"
                            );
                            RENEW_CHECK
                        }
                        Err(error) => {
                            tracing::warn!(
                                %error,
                                not_after = %info.not_after,
                                "cannot renew the certificate; trying again"
                            );
                            RENEW_RETRY.min(until(info.not_after).max(Duration::from_secs(1)))
                        }
                    }
                } else {
                    until(info.renew_at()).min(RENEW_CHECK)
                }
            }
            Ok(None) => RENEW_CHECK,
            Err(error) => {
                tracing::warn!(%error, "cannot read the agent certificate");
                RENEW_RETRY
            }
        };
        tokio::select! {
            () = tokio::time::sleep(wait) => {}
            () = shutdown.cancelled() => return,
        }
    }
}

/// How long from now until `at` (zero if past).
fn until(at: chrono::DateTime<chrono::Utc>) -> Duration {
    (at - chrono::Utc::now()).to_std().unwrap_or_default()
}

#[cfg(test)]
mod tests {
    use super::*;

    fn files() -> (tempfile::TempDir, TlsFiles) {
        let dir = tempfile::tempdir().expect("tempdir");
        let files = TlsFiles::new(dir.path());
        (dir, files)
    }

    fn read(path: &Path) -> String {
        std::fs::read_to_string(path).expect("read")
    }

    #[test]
    fn a_stored_pair_replaces_the_old_one_and_leaves_no_next_files() {
        let (_dir, files) = files();
        files.store("key-1", "cert-1", "ca").expect("store");
        files.store("key-2", "cert-2", "ca").expect("store");
        assert_eq!(
            (read(&files.key()), read(&files.cert())),
            ("key-2".into(), "cert-2".into())
        );
        assert!(!TlsFiles::next(&files.key()).exists());
        assert!(!TlsFiles::next(&files.cert()).exists());
        pki::check_private(&files.key()).expect("the key is private");
    }

    #[test]
    fn an_interrupted_renewal_settles_on_a_matching_pair() {
        let (_dir, files) = files();
        files.store("key-1", "cert-1", "ca").expect("store");
        let key_next = TlsFiles::next(&files.key());
        let cert_next = TlsFiles::next(&files.cert());

        // Stopped after writing the new key only: it was never paired, the old pair stays.
        pki::write_private(&key_next, b"key-2").expect("write");
        files.finish_renewal().expect("settle");
        assert_eq!(
            (read(&files.key()), read(&files.cert())),
            ("key-1".into(), "cert-1".into())
        );
        assert!(!key_next.exists());

        // Stopped after both were written: the new pair goes in.
        pki::write_private(&key_next, b"key-3").expect("write");
        pki::write_public(&cert_next, b"cert-3").expect("write");
        files.finish_renewal().expect("settle");
        assert_eq!(
            (read(&files.key()), read(&files.cert())),
            ("key-3".into(), "cert-3".into())
        );

        // Stopped between the renames (the key moved): the certificate follows it.
        pki::write_private(&files.key(), b"key-4").expect("write");
        pki::write_public(&cert_next, b"cert-4").expect("write");
        files.finish_renewal().expect("settle");
        assert_eq!(
            (read(&files.key()), read(&files.cert())),
            ("key-4".into(), "cert-4".into())
        );
        assert!(!cert_next.exists());
    }
}
