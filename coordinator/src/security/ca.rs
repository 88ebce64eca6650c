//! `warden-coordinator ca init`: creates the built-in CA (or takes the operator's own) and
//! issues the coordinator's server certificate. Run again, it keeps the CA and issues a new
//! server certificate (new host names, or one nearing expiry).

use std::path::PathBuf;
use std::time::Duration;

use sha2::{Digest, Sha256};
use warden_shared::pki::{self, CertInfo, CertificateAuthority};

use super::tls::{TlsError, TlsFiles};

/// How long the built-in CA is valid: agents' certificates cannot outlive it.
pub const CA_TTL: Duration = Duration::from_secs(10 * 365 * 24 * 3600);
/// How long a server certificate is valid; `ca init` again issues a new one.
pub const SERVER_CERT_TTL: Duration = Duration::from_secs(365 * 24 * 3600);

/// What `ca init` is asked to do.
#[derive(Debug, Clone)]
pub struct CaInit {
    pub files: TlsFiles,
    /// Names and addresses agents and operators reach the coordinator by; empty: this
    /// host's name, `localhost`, `127.0.0.1` and `::1`.
    pub hostnames: Vec<String>,
    /// The operator's own CA (certificate and key files) instead of a new one.
    pub import: Option<(PathBuf, PathBuf)>,
}

/// What `ca init` did.
#[derive(Debug, Clone, serde::Serialize)]
pub struct CaInitReport {
    pub tls_dir: String,
    /// `created`, `imported` or `kept`.
    pub ca: &'static str,
    pub ca_cert: String,
    /// sha256 of the CA certificate (DER), to check a copy of `ca.pem` against.
    pub ca_sha256: String,
    pub server_cert: String,
    pub hostnames: Vec<String>,
    pub server_not_after: String,
}

pub fn init(request: &CaInit) -> Result<CaInitReport, TlsError> {
    let files = &request.files;
    let exists = files.ca_cert().exists();
    let (ca, how) = match (&request.import, exists) {
        (Some(_), true) => {
            return Err(TlsError::CaExists {
                dir: files.dir().display().to_string(),
            });
        }
        (Some((cert, key)), false) => {
            let cert_pem = std::fs::read_to_string(cert).map_err(|source| TlsError::Read {
                path: cert.display().to_string(),
                source,
            })?;
            let key_pem = pki::read_private(key)?;
            let ca = CertificateAuthority::load(&cert_pem, &key_pem)?;
            pki::write_private(&files.ca_key(), key_pem.as_bytes())?;
            pki::write_public(&files.ca_cert(), ca.cert_pem().as_bytes())?;
            (ca, "imported")
        }
        (None, true) => {
            let cert_pem =
                std::fs::read_to_string(files.ca_cert()).map_err(|source| TlsError::Read {
                    path: files.ca_cert().display().to_string(),
                    source,
                })?;
            let key_pem = pki::read_private(&files.ca_key())?;
            (CertificateAuthority::load(&cert_pem, &key_pem)?, "kept")
        }
        (None, false) => {
            // Unique: two CAs with one name would make webpki pick the wrong issuer and report
            // a bad signature instead of an unknown CA.
            let id = uuid::Uuid::now_v7().simple().to_string();
            let name = format!(
                "Warden CA {} {}",
                host_name().unwrap_or_default(),
                &id[id.len() - 8..]
            );
            let (ca, keyed) = CertificateAuthority::generate(&name, CA_TTL)?;
            // The key first: a ca.pem without its key would look initialized.
            pki::write_private(&files.ca_key(), keyed.key_pem.as_bytes())?;
            pki::write_public(&files.ca_cert(), keyed.cert_pem.as_bytes())?;
            (ca, "created")
        }
    };
    let hostnames = if request.hostnames.is_empty() {
        default_hostnames()
    } else {
        request.hostnames.clone()
    };
    let server = ca.issue_server(&hostnames, SERVER_CERT_TTL)?;
    pki::write_private(&files.server_key(), server.key_pem.as_bytes())?;
    pki::write_public(&files.server_cert(), server.cert_pem.as_bytes())?;
    let info = CertInfo::from_pem(&server.cert_pem)?;
    let ca_der = rustls::pki_types::pem::PemObject::from_pem_slice(ca.cert_pem().as_bytes())
        .map(|der: rustls::pki_types::CertificateDer<'static>| hex::encode(Sha256::digest(&der)))
        .map_err(|e| TlsError::Pem {
            path: files.ca_cert().display().to_string(),
            what: "certificate",
            detail: e.to_string(),
        })?;
    Ok(CaInitReport {
        tls_dir: files.dir().display().to_string(),
        ca: how,
        ca_cert: files.ca_cert().display().to_string(),
        ca_sha256: ca_der,
        server_cert: files.server_cert().display().to_string(),
        hostnames,
        server_not_after: info
            .not_after
            .to_rfc3339_opts(chrono::SecondsFormat::Secs, true),
    })
}

fn host_name() -> Option<String> {
    std::fs::read_to_string("/proc/sys/kernel/hostname")
        .ok()
        .map(|h| h.trim().to_owned())
        .filter(|h| !h.is_empty())
}

fn default_hostnames() -> Vec<String> {
    let mut names = vec![
        "localhost".to_owned(),
        "127.0.0.1".to_owned(),
        "::1".to_owned(),
    ];
    if let Some(host) = host_name().filter(|h| h != "localhost") {
        names.insert(0, host);
    }
    names
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn init_creates_then_keeps_the_ca_and_refuses_to_import_over_it() {
        let dir = tempfile::tempdir().unwrap();
        let files = TlsFiles::new(&dir.path().join("tls"));
        let request = CaInit {
            files: files.clone(),
            hostnames: vec!["coord.example".to_owned(), "10.0.0.7".to_owned()],
            import: None,
        };
        let first = init(&request).unwrap();
        assert_eq!(first.ca, "created");
        let ca_pem = std::fs::read_to_string(files.ca_cert()).unwrap();
        pki::check_private(&files.ca_key()).unwrap();
        pki::check_private(&files.server_key()).unwrap();

        let again = init(&request).unwrap();
        assert_eq!(again.ca, "kept");
        assert_eq!(again.ca_sha256, first.ca_sha256);
        assert_eq!(std::fs::read_to_string(files.ca_cert()).unwrap(), ca_pem);

        let import = CaInit {
            import: Some((files.ca_cert(), files.ca_key())),
            ..request
        };
        let error = init(&import).unwrap_err().to_string();
        assert!(error.contains("already holds a CA"), "{error}");

        let other = TlsFiles::new(&dir.path().join("other"));
        let imported = init(&CaInit {
            files: other.clone(),
            ..import
        })
        .unwrap();
        assert_eq!(imported.ca, "imported");
        assert_eq!(imported.ca_sha256, first.ca_sha256);
    }
}
