//! Warden's built-in certificate authority, for mutual TLS between agents and the coordinator.
//!
//! `ca init` on the coordinator creates a CA ([`CertificateAuthority::generate`]) and a server
//! certificate for the coordinator ([`CertificateAuthority::issue_server`]). An agent makes its
//! own key pair and a certificate signing request ([`agent_key_and_csr`]), so its private key
//! never leaves its host; the coordinator checks the agent's one-time enrollment token and signs
//! the request ([`CertificateAuthority::sign_agent_csr`]) into a client certificate whose Common
//! Name is the agent's name — the identity the coordinator trusts from then on. Certificates
//! expire, and agents renew them once [`CertInfo::renew_due`] says so.
//!
//! Keys are ECDSA P-256. Secret files are written with mode 0600 ([`write_private`]) and refused
//! when group or others can access them ([`check_private`]).

use std::ffi::OsString;
use std::fmt;
use std::fs::{self, DirBuilder, File, OpenOptions, Permissions};
use std::io::{self, Read, Write};
use std::net::IpAddr;
use std::os::unix::fs::{DirBuilderExt, OpenOptionsExt, PermissionsExt};
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::Duration;

use chrono::{DateTime, TimeDelta, Utc};
use rcgen::string::Ia5String;
use rcgen::{
    BasicConstraints, CertificateParams, DnType, ExtendedKeyUsagePurpose, IsCa, Issuer, KeyPair,
    KeyUsagePurpose, PKCS_ECDSA_P256_SHA256, SanType, SerialNumber, SubjectPublicKeyInfo,
};
use rustls::pki_types::pem::PemObject;
use rustls::pki_types::{CertificateDer, CertificateSigningRequestDer, DnsName};
use x509_parser::certification_request::X509CertificationRequest;
use x509_parser::prelude::FromDer;
use x509_parser::time::ASN1Time;

use crate::names::{NameError, validate_agent_name};

/// How far back a leaf certificate's validity starts, so that a peer whose clock is a little
/// behind does not see a freshly issued certificate as not yet valid.
const CLOCK_SKEW: TimeDelta = TimeDelta::minutes(5);

/// How far back the CA certificate's validity starts (same reason, more margin).
const CA_BACKDATE: TimeDelta = TimeDelta::hours(1);

/// Length of the random serial numbers, in bytes (RFC 5280 allows up to 20).
const SERIAL_BYTES: usize = 16;

/// What went wrong in the certificate authority or with a key or certificate file.
#[derive(Debug, thiserror::Error)]
pub enum PkiError {
    /// The text given holds no PEM section of the expected kind.
    #[error("the input does not hold a PEM {expected} ({reason}): pass the PEM text itself")]
    NotPem {
        /// What was looked for, e.g. "certificate (BEGIN CERTIFICATE)".
        expected: &'static str,
        /// Why nothing was found.
        reason: String,
    },
    /// The certificate signing request is not a well-formed PKCS#10 request.
    #[error(
        "the certificate signing request could not be parsed ({0}): send the request the agent generated, unaltered"
    )]
    CsrParse(String),
    /// The request's signature does not match its contents and public key.
    #[error(
        "the certificate signing request's signature does not verify: it was altered after it was signed, or signed with another key than the one it carries"
    )]
    CsrSignature,
    /// The request carries a kind of public key Warden cannot put in a certificate.
    #[error(
        "the certificate signing request's public key is not supported ({0}): generate an ECDSA P-256 key"
    )]
    UnsupportedKey(String),
    /// A certificate could not be parsed.
    #[error("the certificate could not be parsed: {0}")]
    CertParse(String),
    /// A private key could not be parsed.
    #[error(
        "the private key could not be parsed ({0}): expected an unencrypted PKCS#8 key (BEGIN PRIVATE KEY); convert others with `openssl pkcs8 -topk8 -nocrypt`"
    )]
    KeyParse(String),
    /// The CA key given is not the key of the CA certificate given.
    #[error(
        "the CA key does not match the CA certificate: pass the key that was created with this certificate"
    )]
    KeyMismatch,
    /// The certificate given as a CA cannot sign certificates.
    #[error("the certificate is not a usable CA: {0}")]
    NotACa(&'static str),
    /// The agent name cannot be a certificate identity.
    #[error(transparent)]
    AgentName(#[from] NameError),
    /// A server certificate was asked for without any name.
    #[error("a server certificate needs at least one hostname or IP address")]
    NoHostnames,
    /// A server name is neither an IP address nor a valid DNS name.
    #[error("{0:?} is neither an IP address nor a valid DNS name")]
    InvalidHostname(String),
    /// The requested lifetime does not fit in a certificate.
    #[error("a certificate lifetime of {0:?} is too long")]
    InvalidTtl(Duration),
    /// rcgen refused to build a key or certificate.
    #[error("could not build the key or certificate: {0}")]
    Build(#[source] rcgen::Error),
    /// The operating system's random number generator failed.
    #[error("the system random number generator failed")]
    Random,
    /// A file that should exist does not.
    #[error("{} does not exist: check the path, or create the file first", .path.display())]
    MissingFile {
        /// The missing file.
        path: PathBuf,
    },
    /// A file holding secrets can be accessed by group or others.
    #[error(
        "{} holds secrets but group or others can access it (mode {mode:04o}): run chmod 600 {}",
        .path.display(),
        .path.display()
    )]
    InsecurePermissions {
        /// The file.
        path: PathBuf,
        /// Its permission bits.
        mode: u32,
    },
    /// Reading or writing a file failed.
    #[error("could not {action} {}: {source}", .path.display())]
    Io {
        /// What was being done, e.g. "write".
        action: &'static str,
        /// The file or directory.
        path: PathBuf,
        /// The operating system's error.
        source: io::Error,
    },
}

/// A PEM certificate and its PEM private key (key is secret: Debug must not print it).
#[derive(Clone, PartialEq, Eq)]
pub struct KeyedCert {
    /// The certificate, PEM (`BEGIN CERTIFICATE`).
    pub cert_pem: String,
    /// The private key, PKCS#8 PEM (`BEGIN PRIVATE KEY`). Secret.
    pub key_pem: String,
}

impl fmt::Debug for KeyedCert {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("KeyedCert")
            .field("cert_pem", &self.cert_pem)
            .field("key_pem", &"[secret]")
            .finish()
    }
}

/// A certificate signing request and the private key it was made with (key is secret: Debug
/// does not print it). The agent keeps the key and sends only the request.
#[derive(Clone, PartialEq, Eq)]
pub struct KeyedCsr {
    /// The request, PEM (`BEGIN CERTIFICATE REQUEST`).
    pub csr_pem: String,
    /// The private key, PKCS#8 PEM (`BEGIN PRIVATE KEY`). Secret.
    pub key_pem: String,
}

impl fmt::Debug for KeyedCsr {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("KeyedCsr")
            .field("csr_pem", &self.csr_pem)
            .field("key_pem", &"[secret]")
            .finish()
    }
}

/// A certificate the CA signed for an agent, with what Warden records of it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct IssuedCert {
    /// The certificate, PEM.
    pub cert_pem: String,
    /// Its name, serial and validity.
    pub info: CertInfo,
}

/// A certificate authority able to sign server and agent certificates. Debug does not print
/// its key.
#[derive(Debug)]
pub struct CertificateAuthority {
    cert_pem: String,
    not_after: DateTime<Utc>,
    issuer: Issuer<'static, KeyPair>,
}

impl CertificateAuthority {
    /// New self-signed CA (ECDSA P-256), CN = `common_name`, valid from now-1h to now+`ttl`,
    /// key usages keyCertSign, cRLSign and digitalSignature, basic constraints CA with path
    /// length 0 (it signs only end-entity certificates). Returns the CA and its certificate
    /// and key, for the caller to store.
    pub fn generate(common_name: &str, ttl: Duration) -> Result<(Self, KeyedCert), PkiError> {
        let now = Utc::now();
        let mut params = CertificateParams::default();
        params
            .distinguished_name
            .push(DnType::CommonName, common_name);
        params.is_ca = IsCa::Ca(BasicConstraints::Constrained(0));
        params.key_usages = vec![
            KeyUsagePurpose::KeyCertSign,
            KeyUsagePurpose::CrlSign,
            KeyUsagePurpose::DigitalSignature,
        ];
        params.serial_number = Some(random_serial()?);
        set_validity(&mut params, now - CA_BACKDATE, after(now, ttl)?)?;
        let key = new_key()?;
        let cert = params.self_signed(&key).map_err(PkiError::Build)?;
        let keyed = KeyedCert {
            cert_pem: cert.pem(),
            key_pem: key.serialize_pem(),
        };
        let ca = Self::from_parts(keyed.cert_pem.clone(), cert.der(), key)?;
        Ok((ca, keyed))
    }

    /// Loads a CA from its PEM certificate and PEM (PKCS#8) key; an operator's own CA works
    /// too. Fails if the key does not match the certificate's public key or the certificate
    /// is not a CA allowed to sign certificates.
    pub fn load(cert_pem: &str, key_pem: &str) -> Result<Self, PkiError> {
        let der = cert_der_from_pem(cert_pem)?;
        let (_, cert) = x509_parser::parse_x509_certificate(&der)
            .map_err(|e| PkiError::CertParse(e.to_string()))?;
        let constraints = cert
            .basic_constraints()
            .map_err(|e| PkiError::CertParse(e.to_string()))?;
        if !constraints.is_some_and(|bc| bc.value.ca) {
            return Err(PkiError::NotACa(
                "its basic constraints do not mark it as a certificate authority",
            ));
        }
        let key_usage = cert
            .key_usage()
            .map_err(|e| PkiError::CertParse(e.to_string()))?;
        if key_usage.is_some_and(|ku| !ku.value.key_cert_sign()) {
            return Err(PkiError::NotACa(
                "its key usage does not allow signing certificates (keyCertSign)",
            ));
        }
        let key = KeyPair::from_pem(key_pem).map_err(|e| PkiError::KeyParse(e.to_string()))?;
        if key.public_key_raw() != cert.public_key().subject_public_key.data.as_ref() {
            return Err(PkiError::KeyMismatch);
        }
        Self::from_parts(cert_pem.to_owned(), &der, key)
    }

    fn from_parts(
        cert_pem: String,
        der: &CertificateDer<'_>,
        key: KeyPair,
    ) -> Result<Self, PkiError> {
        let not_after = CertInfo::from_der(der)?.not_after;
        let issuer = Issuer::from_ca_cert_der(der, key).map_err(PkiError::Build)?;
        Ok(Self {
            cert_pem,
            not_after,
            issuer,
        })
    }

    /// The CA certificate, PEM: the trust root agents and the coordinator verify peers with.
    pub fn cert_pem(&self) -> &str {
        &self.cert_pem
    }

    /// A server certificate for the coordinator: SANs from `hostnames` (each an IP address →
    /// IP SAN, else DNS SAN, `*.` wildcards allowed), EKU serverAuth, CN = first hostname,
    /// fresh P-256 key. Validity as for agent certificates.
    pub fn issue_server(&self, hostnames: &[String], ttl: Duration) -> Result<KeyedCert, PkiError> {
        let first = hostnames.first().ok_or(PkiError::NoHostnames)?;
        let mut params = self.leaf_params(ttl)?;
        params.subject_alt_names = hostnames
            .iter()
            .map(|name| subject_alt_name(name))
            .collect::<Result<_, _>>()?;
        params
            .distinguished_name
            .push(DnType::CommonName, first.as_str());
        params.extended_key_usages = vec![ExtendedKeyUsagePurpose::ServerAuth];
        let key = new_key()?;
        let cert = params
            .signed_by(&key, &self.issuer)
            .map_err(PkiError::Build)?;
        Ok(KeyedCert {
            cert_pem: cert.pem(),
            key_pem: key.serialize_pem(),
        })
    }

    /// Verifies the CSR's signature and signs a client certificate for `agent`: CN = `agent`
    /// whatever the CSR asked for (names, SANs and extensions requested in the CSR are ignored,
    /// only its public key is used), EKU clientAuth, key usage digitalSignature, random 16-byte
    /// positive serial, valid from now-5min (clock skew; a tenth of `ttl` if less) to now+`ttl` (but never past the CA's
    /// own expiry), authority key identifier set. `agent` must be a valid agent name.
    pub fn sign_agent_csr(
        &self,
        csr_pem: &str,
        agent: &str,
        ttl: Duration,
    ) -> Result<IssuedCert, PkiError> {
        validate_agent_name(agent)?;
        let public_key = verified_csr_key(csr_pem)?;
        let mut params = self.leaf_params(ttl)?;
        params.distinguished_name.push(DnType::CommonName, agent);
        params.extended_key_usages = vec![ExtendedKeyUsagePurpose::ClientAuth];
        let cert = params
            .signed_by(&public_key, &self.issuer)
            .map_err(PkiError::Build)?;
        let info = CertInfo::from_der(cert.der())?;
        Ok(IssuedCert {
            cert_pem: cert.pem(),
            info,
        })
    }

    /// Parameters common to the end-entity certificates this CA signs.
    fn leaf_params(&self, ttl: Duration) -> Result<CertificateParams, PkiError> {
        let now = Utc::now();
        let mut params = CertificateParams::default();
        params.is_ca = IsCa::ExplicitNoCa;
        params.key_usages = vec![KeyUsagePurpose::DigitalSignature];
        params.use_authority_key_identifier_extension = true;
        params.serial_number = Some(random_serial()?);
        // Backdated for clocks a little behind, but by a tenth of the lifetime at most: a
        // short-lived certificate backdated by minutes would be due for renewal at once.
        let backdate = TimeDelta::from_std(ttl / 10).map_or(CLOCK_SKEW, |t| t.min(CLOCK_SKEW));
        set_validity(
            &mut params,
            now - backdate,
            after(now, ttl)?.min(self.not_after),
        )?;
        Ok(params)
    }
}

/// What Warden needs to know of a certificate.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct CertInfo {
    /// The subject's Common Name (an agent's name), if it has one.
    pub common_name: Option<String>,
    /// The serial number as lowercase hex of its big-endian bytes, leading zero bytes removed
    /// (always an even number of digits, no separators), e.g. `"5f0a…"`.
    pub serial: String,
    /// Start of validity.
    pub not_before: DateTime<Utc>,
    /// End of validity.
    pub not_after: DateTime<Utc>,
}

impl CertInfo {
    /// Reads a DER certificate.
    pub fn from_der(der: &[u8]) -> Result<Self, PkiError> {
        let (_, cert) = x509_parser::parse_x509_certificate(der)
            .map_err(|e| PkiError::CertParse(e.to_string()))?;
        let common_name = cert
            .subject()
            .iter_common_name()
            .next()
            .and_then(|cn| cn.as_str().ok())
            .map(str::to_owned);
        let raw = cert.raw_serial();
        let start = raw
            .iter()
            .position(|b| *b != 0)
            .unwrap_or(raw.len().saturating_sub(1));
        let validity = cert.validity();
        Ok(Self {
            common_name,
            serial: hex::encode(&raw[start..]),
            not_before: from_asn1_time(&validity.not_before)?,
            not_after: from_asn1_time(&validity.not_after)?,
        })
    }

    /// Reads the first certificate of a PEM text.
    pub fn from_pem(pem: &str) -> Result<Self, PkiError> {
        Self::from_der(&cert_der_from_pem(pem)?)
    }

    /// When renewal becomes due: once less than one third of the lifetime
    /// (`not_after - not_before`) remains.
    pub fn renew_at(&self) -> DateTime<Utc> {
        self.not_after - (self.not_after - self.not_before) / 3
    }

    /// True when the certificate should be renewed at `now`: less than one third of its
    /// lifetime remains, or it has expired.
    pub fn renew_due(&self, now: DateTime<Utc>) -> bool {
        now >= self.not_after || now >= self.renew_at()
    }
}

/// A fresh P-256 key pair and a CSR for `agent` (CN = `agent`), both PEM. The agent calls
/// this; the key stays on its host.
pub fn agent_key_and_csr(agent: &str) -> Result<KeyedCsr, PkiError> {
    validate_agent_name(agent)?;
    let key = new_key()?;
    let mut params = CertificateParams::default();
    params.distinguished_name.push(DnType::CommonName, agent);
    let csr = params.serialize_request(&key).map_err(PkiError::Build)?;
    Ok(KeyedCsr {
        csr_pem: csr.pem().map_err(PkiError::Build)?,
        key_pem: key.serialize_pem(),
    })
}

/// Writes a secret file (a private key) with mode 0600, atomically: a temporary file in the
/// same directory, mode 0600 from its creation, is written, synced and renamed over `path`.
/// Creates the parent directory (mode 0700) if it is missing.
pub fn write_private(path: &Path, contents: &[u8]) -> Result<(), PkiError> {
    write_atomically(path, contents, 0o600)
}

/// Writes a public file (a certificate) atomically with mode 0644, the same way as
/// [`write_private`].
pub fn write_public(path: &Path, contents: &[u8]) -> Result<(), PkiError> {
    write_atomically(path, contents, 0o644)
}

/// Refuses a file holding keys or passwords that group or others can access
/// (`mode & 0o077 != 0`), naming the path, its mode in octal and the fix (`chmod 600 PATH`).
/// A missing file is an error naming it.
pub fn check_private(path: &Path) -> Result<(), PkiError> {
    let metadata = fs::metadata(path).map_err(|e| open_error(path, e))?;
    check_mode(path, &metadata)
}

/// Reads a secret file after the [`check_private`] check (made on the opened file, so the file
/// checked is the file read).
pub fn read_private(path: &Path) -> Result<String, PkiError> {
    let mut file = File::open(path).map_err(|e| open_error(path, e))?;
    let metadata = file.metadata().map_err(|e| io_error("read", path, e))?;
    check_mode(path, &metadata)?;
    let mut contents = String::new();
    file.read_to_string(&mut contents)
        .map_err(|e| io_error("read", path, e))?;
    Ok(contents)
}

fn check_mode(path: &Path, metadata: &fs::Metadata) -> Result<(), PkiError> {
    let mode = metadata.permissions().mode() & 0o7777;
    if mode & 0o077 != 0 {
        return Err(PkiError::InsecurePermissions {
            path: path.to_owned(),
            mode,
        });
    }
    Ok(())
}

fn open_error(path: &Path, error: io::Error) -> PkiError {
    if error.kind() == io::ErrorKind::NotFound {
        PkiError::MissingFile {
            path: path.to_owned(),
        }
    } else {
        io_error("read", path, error)
    }
}

fn io_error(action: &'static str, path: &Path, source: io::Error) -> PkiError {
    PkiError::Io {
        action,
        path: path.to_owned(),
        source,
    }
}

fn write_atomically(path: &Path, contents: &[u8], mode: u32) -> Result<(), PkiError> {
    let file_name = path.file_name().ok_or_else(|| {
        io_error(
            "write",
            path,
            io::Error::new(io::ErrorKind::InvalidInput, "the path does not name a file"),
        )
    })?;
    let dir = match path.parent() {
        Some(parent) if !parent.as_os_str().is_empty() => parent,
        _ => Path::new("."),
    };
    if !dir.exists() {
        DirBuilder::new()
            .recursive(true)
            .mode(0o700)
            .create(dir)
            .map_err(|e| io_error("create directory", dir, e))?;
    }
    let (tmp_path, mut file) = create_temp(dir, file_name, mode)?;
    let written = file
        .set_permissions(Permissions::from_mode(mode))
        .and_then(|()| file.write_all(contents))
        .and_then(|()| file.sync_all())
        .and_then(|()| fs::rename(&tmp_path, path));
    if let Err(e) = written {
        // Best effort: the write already failed, and that is the error to report.
        let _ = fs::remove_file(&tmp_path);
        return Err(io_error("write", path, e));
    }
    // Sync the directory so that the rename survives a crash.
    File::open(dir)
        .and_then(|d| d.sync_all())
        .map_err(|e| io_error("sync directory", dir, e))
}

/// Creates a new, empty temporary file next to the target, with `mode` from its creation.
fn create_temp(
    dir: &Path,
    file_name: &std::ffi::OsStr,
    mode: u32,
) -> Result<(PathBuf, File), PkiError> {
    static COUNTER: AtomicU64 = AtomicU64::new(0);
    let mut attempts = 0;
    loop {
        let mut name = OsString::from(".");
        name.push(file_name);
        name.push(format!(
            ".{}.{}.tmp",
            std::process::id(),
            COUNTER.fetch_add(1, Ordering::Relaxed)
        ));
        let tmp_path = dir.join(name);
        match OpenOptions::new()
            .write(true)
            .create_new(true)
            .mode(mode)
            .open(&tmp_path)
        {
            Ok(file) => return Ok((tmp_path, file)),
            // A leftover of a crashed process with a recycled pid: try the next name.
            Err(e) if e.kind() == io::ErrorKind::AlreadyExists && attempts < 100 => {
                attempts += 1;
            }
            Err(e) => return Err(io_error("create", &tmp_path, e)),
        }
    }
}

/// Parses and verifies a PEM CSR and returns its public key, the only part of it used.
fn verified_csr_key(csr_pem: &str) -> Result<SubjectPublicKeyInfo, PkiError> {
    let der = CertificateSigningRequestDer::from_pem_slice(csr_pem.as_bytes()).map_err(|e| {
        PkiError::NotPem {
            expected: "certificate signing request (BEGIN CERTIFICATE REQUEST)",
            reason: e.to_string(),
        }
    })?;
    let (rest, csr) = X509CertificationRequest::from_der(der.as_ref())
        .map_err(|e| PkiError::CsrParse(e.to_string()))?;
    if !rest.is_empty() {
        return Err(PkiError::CsrParse(
            "trailing bytes after the request".to_owned(),
        ));
    }
    csr.verify_signature().map_err(|_| PkiError::CsrSignature)?;
    SubjectPublicKeyInfo::from_der(csr.certification_request_info.subject_pki.raw)
        .map_err(|e| PkiError::UnsupportedKey(e.to_string()))
}

fn cert_der_from_pem(pem: &str) -> Result<CertificateDer<'static>, PkiError> {
    CertificateDer::from_pem_slice(pem.as_bytes()).map_err(|e| PkiError::NotPem {
        expected: "certificate (BEGIN CERTIFICATE)",
        reason: e.to_string(),
    })
}

fn subject_alt_name(name: &str) -> Result<SanType, PkiError> {
    if let Ok(ip) = name.parse::<IpAddr>() {
        return Ok(SanType::IpAddress(ip));
    }
    let base = name.strip_prefix("*.").unwrap_or(name);
    if DnsName::try_from(base).is_err() {
        return Err(PkiError::InvalidHostname(name.to_owned()));
    }
    let ia5 = Ia5String::try_from(name).map_err(|_| PkiError::InvalidHostname(name.to_owned()))?;
    Ok(SanType::DnsName(ia5))
}

fn new_key() -> Result<KeyPair, PkiError> {
    KeyPair::generate_for(&PKCS_ECDSA_P256_SHA256).map_err(PkiError::Build)
}

/// A random positive serial of exactly [`SERIAL_BYTES`] bytes.
fn random_serial() -> Result<SerialNumber, PkiError> {
    let mut bytes = [0u8; SERIAL_BYTES];
    rustls::crypto::ring::default_provider()
        .secure_random
        .fill(&mut bytes)
        .map_err(|_| PkiError::Random)?;
    // Clear the sign bit so the DER integer is positive without a padding byte, and set the
    // next one so the serial keeps its full length (and hex form).
    bytes[0] = (bytes[0] & 0x7f) | 0x40;
    Ok(SerialNumber::from_slice(&bytes))
}

fn after(now: DateTime<Utc>, ttl: Duration) -> Result<DateTime<Utc>, PkiError> {
    TimeDelta::from_std(ttl)
        .ok()
        .and_then(|delta| now.checked_add_signed(delta))
        .ok_or(PkiError::InvalidTtl(ttl))
}

/// Sets a certificate's validity (seconds precision, as certificates have). The conversion goes
/// through x509-parser's `ASN1Time` because rcgen takes the `time` crate's type.
fn set_validity(
    params: &mut CertificateParams,
    not_before: DateTime<Utc>,
    not_after: DateTime<Utc>,
) -> Result<(), PkiError> {
    let convert = |at: DateTime<Utc>| {
        ASN1Time::from_timestamp(at.timestamp())
            .map_err(|e| PkiError::CertParse(format!("time {at} cannot be encoded: {e}")))
    };
    params.not_before = convert(not_before)?.to_datetime();
    params.not_after = convert(not_after)?.to_datetime();
    Ok(())
}

fn from_asn1_time(at: &ASN1Time) -> Result<DateTime<Utc>, PkiError> {
    DateTime::from_timestamp(at.timestamp(), 0)
        .ok_or_else(|| PkiError::CertParse(format!("validity time {at} is out of range")))
}

#[cfg(test)]
mod tests {
    use std::sync::Arc;

    use rustls::client::WebPkiServerVerifier;
    use rustls::client::danger::ServerCertVerifier;
    use rustls::pki_types::{ServerName, UnixTime};
    use rustls::server::WebPkiClientVerifier;
    use rustls::{CertificateError, RootCertStore};
    use x509_parser::extensions::GeneralName;

    use super::*;

    const DAY: Duration = Duration::from_secs(86_400);
    const YEAR: Duration = Duration::from_secs(365 * 86_400);

    fn new_ca() -> (CertificateAuthority, KeyedCert) {
        CertificateAuthority::generate("Warden test CA", 10 * YEAR).unwrap()
    }

    fn cert_der(pem: &str) -> CertificateDer<'static> {
        CertificateDer::from_pem_slice(pem.as_bytes()).unwrap()
    }

    fn unix(at: DateTime<Utc>) -> UnixTime {
        UnixTime::since_unix_epoch(Duration::from_secs(at.timestamp().try_into().unwrap()))
    }

    fn roots(ca: &CertificateAuthority) -> Arc<RootCertStore> {
        let mut roots = RootCertStore::empty();
        roots.add(cert_der(ca.cert_pem())).unwrap();
        Arc::new(roots)
    }

    fn provider() -> Arc<rustls::crypto::CryptoProvider> {
        Arc::new(rustls::crypto::ring::default_provider())
    }

    fn agent_cert(ca: &CertificateAuthority, agent: &str, ttl: Duration) -> IssuedCert {
        let csr = agent_key_and_csr(agent).unwrap();
        ca.sign_agent_csr(&csr.csr_pem, agent, ttl).unwrap()
    }

    /// Standard base64 with padding, to re-wrap tampered DER in PEM.
    fn pem_encode(label: &str, der: &[u8]) -> String {
        const ALPHABET: &[u8; 64] =
            b"ABCDEFGHIJKLMNOPQRSTUVWXYZabcdefghijklmnopqrstuvwxyz0123456789+/";
        let mut b64 = String::new();
        for chunk in der.chunks(3) {
            let n = chunk
                .iter()
                .enumerate()
                .fold(0u32, |n, (i, b)| n | u32::from(*b) << (16 - 8 * i));
            for i in 0..4 {
                if i <= chunk.len() {
                    b64.push(ALPHABET[(n >> (18 - 6 * i) & 63) as usize] as char);
                } else {
                    b64.push('=');
                }
            }
        }
        let mut out = format!("-----BEGIN {label}-----\n");
        for line in b64.as_bytes().chunks(64) {
            out.push_str(std::str::from_utf8(line).unwrap());
            out.push('\n');
        }
        out.push_str(&format!("-----END {label}-----\n"));
        out
    }

    fn assert_close(actual: DateTime<Utc>, expected: DateTime<Utc>) {
        let off = (actual - expected).num_seconds().abs();
        assert!(off <= 5, "{actual} is not close to {expected}");
    }

    #[test]
    fn pem_encode_round_trips() {
        let (ca, _) = new_ca();
        let original = cert_der(ca.cert_pem());
        assert_eq!(cert_der(&pem_encode("CERTIFICATE", &original)), original);
    }

    #[test]
    fn ca_generate_then_load_round_trips() {
        let before = Utc::now();
        let (ca, keyed) = CertificateAuthority::generate("Warden test CA", 10 * YEAR).unwrap();
        assert_eq!(ca.cert_pem(), keyed.cert_pem);
        let info = CertInfo::from_pem(&keyed.cert_pem).unwrap();
        assert_eq!(info.common_name.as_deref(), Some("Warden test CA"));
        assert_close(info.not_before, before - TimeDelta::hours(1));
        assert_close(
            info.not_after,
            before + TimeDelta::from_std(10 * YEAR).unwrap(),
        );

        let der = cert_der(&keyed.cert_pem);
        let (_, cert) = x509_parser::parse_x509_certificate(&der).unwrap();
        let bc = cert.basic_constraints().unwrap().unwrap().value;
        assert!(bc.ca);
        assert_eq!(bc.path_len_constraint, Some(0));
        let ku = cert.key_usage().unwrap().unwrap().value;
        assert!(ku.key_cert_sign() && ku.crl_sign() && ku.digital_signature());

        let loaded = CertificateAuthority::load(&keyed.cert_pem, &keyed.key_pem).unwrap();
        assert_eq!(loaded.cert_pem(), ca.cert_pem());
        // What the loaded CA signs verifies under the original CA's certificate.
        let issued = agent_cert(&loaded, "db1", DAY);
        let verifier = WebPkiClientVerifier::builder_with_provider(roots(&ca), provider())
            .build()
            .unwrap();
        verifier
            .verify_client_cert(&cert_der(&issued.cert_pem), &[], UnixTime::now())
            .unwrap();
    }

    #[test]
    fn load_refuses_a_key_of_another_ca() {
        let (_, ours) = new_ca();
        let (_, theirs) = new_ca();
        let err = CertificateAuthority::load(&ours.cert_pem, &theirs.key_pem).unwrap_err();
        assert!(matches!(err, PkiError::KeyMismatch), "{err:?}");
        assert!(
            err.to_string()
                .contains("the CA key does not match the CA certificate"),
            "{err}"
        );
    }

    #[test]
    fn load_refuses_what_is_not_a_ca() {
        let (ca, _) = new_ca();
        let server = ca.issue_server(&["localhost".to_owned()], DAY).unwrap();
        let err = CertificateAuthority::load(&server.cert_pem, &server.key_pem).unwrap_err();
        assert!(matches!(err, PkiError::NotACa(_)), "{err:?}");

        let err = CertificateAuthority::load("not a certificate", &server.key_pem).unwrap_err();
        assert!(matches!(err, PkiError::NotPem { .. }), "{err:?}");
        assert!(
            err.to_string().contains("does not hold a PEM certificate"),
            "{err}"
        );

        let (_, keyed) = new_ca();
        let err = CertificateAuthority::load(&keyed.cert_pem, "garbage").unwrap_err();
        assert!(matches!(err, PkiError::KeyParse(_)), "{err:?}");
    }

    #[test]
    fn agent_cert_is_named_after_the_agent_whatever_the_csr_asked() {
        let (ca, _) = new_ca();
        let csr = agent_key_and_csr("evil").unwrap();
        let start = Utc::now();
        let issued = ca.sign_agent_csr(&csr.csr_pem, "db1", 30 * DAY).unwrap();

        let der = cert_der(&issued.cert_pem);
        let (_, cert) = x509_parser::parse_x509_certificate(&der).unwrap();
        let cns: Vec<_> = cert
            .subject()
            .iter_common_name()
            .map(|cn| cn.as_str().unwrap())
            .collect();
        assert_eq!(cns, ["db1"]);
        let eku = cert.extended_key_usage().unwrap().unwrap().value;
        assert!(eku.client_auth);
        assert!(!eku.server_auth && !eku.any);
        assert!(cert.key_usage().unwrap().unwrap().value.digital_signature());
        assert!(!cert.is_ca());
        // The certificate carries the agent's key, and names the CA's key as its authority.
        let agent_key = KeyPair::from_pem(&csr.key_pem).unwrap();
        assert_eq!(
            cert.public_key().subject_public_key.data.as_ref(),
            agent_key.public_key_raw()
        );
        let ca_der = CertificateDer::from_pem_slice(ca.cert_pem().as_bytes()).unwrap();
        let (_, ca_cert) = x509_parser::parse_x509_certificate(&ca_der).unwrap();
        let ski = ca_cert
            .iter_extensions()
            .find_map(|ext| match ext.parsed_extension() {
                x509_parser::extensions::ParsedExtension::SubjectKeyIdentifier(id) => {
                    Some(id.0.to_vec())
                }
                _ => None,
            })
            .unwrap();
        let aki = cert
            .iter_extensions()
            .find_map(|ext| match ext.parsed_extension() {
                x509_parser::extensions::ParsedExtension::AuthorityKeyIdentifier(aki) => {
                    aki.key_identifier.as_ref().map(|id| id.0.to_vec())
                }
                _ => None,
            })
            .unwrap();
        assert_eq!(aki, ski);

        assert_eq!(issued.info, CertInfo::from_pem(&issued.cert_pem).unwrap());
        assert_eq!(issued.info.common_name.as_deref(), Some("db1"));
        assert_eq!(issued.info.serial.len(), 2 * SERIAL_BYTES);
        assert_eq!(issued.info.serial, hex::encode(cert.raw_serial()));
        assert_close(issued.info.not_before, start - TimeDelta::minutes(5));
        assert_close(issued.info.not_after, start + TimeDelta::days(30));

        let again = ca.sign_agent_csr(&csr.csr_pem, "db1", 30 * DAY).unwrap();
        assert_ne!(again.info.serial, issued.info.serial);
    }

    #[test]
    fn agent_cert_does_not_outlive_the_ca() {
        let (ca, keyed) = CertificateAuthority::generate("short CA", 2 * DAY).unwrap();
        let issued = agent_cert(&ca, "db1", 30 * DAY);
        let ca_info = CertInfo::from_pem(&keyed.cert_pem).unwrap();
        assert_eq!(issued.info.not_after, ca_info.not_after);
    }

    #[test]
    fn extensions_requested_in_the_csr_are_ignored() {
        let (ca, _) = new_ca();
        let key = KeyPair::generate_for(&PKCS_ECDSA_P256_SHA256).unwrap();
        let mut params = CertificateParams::new(vec!["coordinator.example".to_owned()]).unwrap();
        params.distinguished_name.push(DnType::CommonName, "evil");
        params.extended_key_usages = vec![ExtendedKeyUsagePurpose::ServerAuth];
        params.is_ca = IsCa::Ca(BasicConstraints::Unconstrained);
        params.key_usages = vec![KeyUsagePurpose::KeyCertSign];
        let csr_pem = params.serialize_request(&key).unwrap().pem().unwrap();

        let issued = ca.sign_agent_csr(&csr_pem, "db1", DAY).unwrap();
        let der = cert_der(&issued.cert_pem);
        let (_, cert) = x509_parser::parse_x509_certificate(&der).unwrap();
        assert!(cert.subject_alternative_name().unwrap().is_none());
        assert!(!cert.is_ca());
        let ku = cert.key_usage().unwrap().unwrap().value;
        assert!(!ku.key_cert_sign());
        let eku = cert.extended_key_usage().unwrap().unwrap().value;
        assert!(eku.client_auth && !eku.server_auth);
        assert_eq!(issued.info.common_name.as_deref(), Some("db1"));
    }

    #[test]
    fn tampered_csr_is_refused() {
        let (ca, _) = new_ca();
        let csr = agent_key_and_csr("evil").unwrap();
        let original = CertificateSigningRequestDer::from_pem_slice(csr.csr_pem.as_bytes())
            .unwrap()
            .as_ref()
            .to_vec();
        // Re-wrapping the untouched DER is accepted, so the refusals below are the tampering's.
        let rewrapped = pem_encode("CERTIFICATE REQUEST", &original);
        ca.sign_agent_csr(&rewrapped, "db1", DAY).unwrap();

        // "evil" → "fvil": still well formed, but no longer what was signed.
        let mut renamed = original.clone();
        let at = renamed.windows(4).position(|w| w == b"evil").unwrap();
        renamed[at] ^= 0x03;
        let err = ca
            .sign_agent_csr(&pem_encode("CERTIFICATE REQUEST", &renamed), "db1", DAY)
            .unwrap_err();
        assert!(matches!(err, PkiError::CsrSignature), "{err:?}");
        assert!(
            err.to_string().contains("signature does not verify"),
            "{err}"
        );

        // A flipped bit in the last byte of the signature.
        let mut resigned = original.clone();
        let last = resigned.len() - 1;
        resigned[last] ^= 0x01;
        let err = ca
            .sign_agent_csr(&pem_encode("CERTIFICATE REQUEST", &resigned), "db1", DAY)
            .unwrap_err();
        assert!(matches!(err, PkiError::CsrSignature), "{err:?}");

        // A broken outer length.
        let mut broken = original.clone();
        broken[1] ^= 0x7f;
        let err = ca
            .sign_agent_csr(&pem_encode("CERTIFICATE REQUEST", &broken), "db1", DAY)
            .unwrap_err();
        assert!(matches!(err, PkiError::CsrParse(_)), "{err:?}");

        let err = ca.sign_agent_csr("hello", "db1", DAY).unwrap_err();
        assert!(matches!(err, PkiError::NotPem { .. }), "{err:?}");
    }

    #[test]
    fn invalid_agent_names_are_refused() {
        let (ca, _) = new_ca();
        let csr = agent_key_and_csr("db1").unwrap();
        let err = ca.sign_agent_csr(&csr.csr_pem, "../db1", DAY).unwrap_err();
        assert!(matches!(err, PkiError::AgentName(_)), "{err:?}");
        assert!(matches!(
            agent_key_and_csr("").unwrap_err(),
            PkiError::AgentName(_)
        ));
    }

    #[test]
    fn rustls_accepts_our_agent_certs_only_while_valid() {
        let (ca, _) = new_ca();
        let verifier = WebPkiClientVerifier::builder_with_provider(roots(&ca), provider())
            .build()
            .unwrap();
        let issued = agent_cert(&ca, "db1", DAY);
        let ours = cert_der(&issued.cert_pem);
        verifier
            .verify_client_cert(&ours, &[], UnixTime::now())
            .unwrap();

        let (other, _) = CertificateAuthority::generate("Another CA", YEAR).unwrap();
        let foreign = cert_der(&agent_cert(&other, "db1", DAY).cert_pem);
        let err = verifier
            .verify_client_cert(&foreign, &[], UnixTime::now())
            .unwrap_err();
        assert!(
            matches!(
                err,
                rustls::Error::InvalidCertificate(CertificateError::UnknownIssuer)
            ),
            "{err:?}"
        );
        // Another CA with the same name is matched by name, then fails on the signature.
        let (namesake, _) = new_ca();
        let forged = cert_der(&agent_cert(&namesake, "db1", DAY).cert_pem);
        let err = verifier
            .verify_client_cert(&forged, &[], UnixTime::now())
            .unwrap_err();
        assert!(
            matches!(
                err,
                rustls::Error::InvalidCertificate(CertificateError::BadSignature)
            ),
            "{err:?}"
        );

        let later = unix(issued.info.not_after + TimeDelta::seconds(1));
        let err = verifier.verify_client_cert(&ours, &[], later).unwrap_err();
        assert!(
            matches!(
                err,
                rustls::Error::InvalidCertificate(
                    CertificateError::Expired | CertificateError::ExpiredContext { .. }
                )
            ),
            "{err:?}"
        );
    }

    #[test]
    fn rustls_accepts_the_server_cert_for_its_names() {
        let (ca, _) = new_ca();
        let hostnames = ["localhost".to_owned(), "127.0.0.1".to_owned()];
        let server = ca.issue_server(&hostnames, DAY).unwrap();
        let info = CertInfo::from_pem(&server.cert_pem).unwrap();
        assert_eq!(info.common_name.as_deref(), Some("localhost"));
        // The key belongs to the certificate.
        let key = KeyPair::from_pem(&server.key_pem).unwrap();
        let der = cert_der(&server.cert_pem);
        let (_, cert) = x509_parser::parse_x509_certificate(&der).unwrap();
        assert_eq!(
            cert.public_key().subject_public_key.data.as_ref(),
            key.public_key_raw()
        );
        let sans = &cert
            .subject_alternative_name()
            .unwrap()
            .unwrap()
            .value
            .general_names;
        assert!(sans.contains(&GeneralName::DNSName("localhost")));
        assert!(sans.contains(&GeneralName::IPAddress(&[127, 0, 0, 1])));

        let verifier = WebPkiServerVerifier::builder_with_provider(roots(&ca), provider())
            .build()
            .unwrap();
        for name in ["localhost", "127.0.0.1"] {
            let server_name = ServerName::try_from(name).unwrap();
            verifier
                .verify_server_cert(&der, &[], &server_name, &[], UnixTime::now())
                .unwrap();
        }
        let err = verifier
            .verify_server_cert(
                &der,
                &[],
                &ServerName::try_from("other.example").unwrap(),
                &[],
                UnixTime::now(),
            )
            .unwrap_err();
        assert!(
            matches!(
                err,
                rustls::Error::InvalidCertificate(
                    CertificateError::NotValidForName
                        | CertificateError::NotValidForNameContext { .. }
                )
            ),
            "{err:?}"
        );
        // An agent certificate is no server certificate.
        let agent = cert_der(&agent_cert(&ca, "localhost", DAY).cert_pem);
        assert!(
            verifier
                .verify_server_cert(
                    &agent,
                    &[],
                    &ServerName::try_from("localhost").unwrap(),
                    &[],
                    UnixTime::now()
                )
                .is_err()
        );
    }

    #[test]
    fn server_names_are_checked() {
        let (ca, _) = new_ca();
        assert!(matches!(
            ca.issue_server(&[], DAY).unwrap_err(),
            PkiError::NoHostnames
        ));
        let err = ca.issue_server(&["bad name".to_owned()], DAY).unwrap_err();
        assert!(matches!(err, PkiError::InvalidHostname(_)), "{err:?}");
        let wildcard = ca
            .issue_server(&["*.warden.internal".to_owned(), "::1".to_owned()], DAY)
            .unwrap();
        CertInfo::from_pem(&wildcard.cert_pem).unwrap();
    }

    #[test]
    fn renewal_is_due_in_the_last_third() {
        let start = DateTime::from_timestamp(1_700_000_000, 0).unwrap();
        let info = CertInfo {
            common_name: Some("db1".to_owned()),
            serial: "01".to_owned(),
            not_before: start,
            not_after: start + TimeDelta::days(30),
        };
        assert_eq!(info.renew_at(), start + TimeDelta::days(20));
        assert!(!info.renew_due(start));
        assert!(!info.renew_due(start + TimeDelta::days(19)));
        assert!(!info.renew_due(start + TimeDelta::days(20) - TimeDelta::seconds(1)));
        assert!(info.renew_due(start + TimeDelta::days(21)));
        assert!(info.renew_due(start + TimeDelta::days(31)));
    }

    #[test]
    fn fresh_certificates_are_not_due() {
        let (ca, _) = new_ca();
        let issued = agent_cert(&ca, "db1", 30 * DAY);
        assert!(!issued.info.renew_due(Utc::now()));
        assert!(issued.info.renew_due(Utc::now() + TimeDelta::days(25)));
    }

    #[test]
    fn secrets_are_not_printed() {
        let (_, keyed) = new_ca();
        let csr = agent_key_and_csr("db1").unwrap();
        assert!(keyed.key_pem.contains("PRIVATE KEY"));
        for printed in [format!("{keyed:?}"), format!("{csr:?}")] {
            assert!(!printed.contains("PRIVATE KEY"), "{printed}");
        }
        let ca = CertificateAuthority::load(&keyed.cert_pem, &keyed.key_pem).unwrap();
        let printed = format!("{ca:?}");
        let key = KeyPair::from_pem(&keyed.key_pem).unwrap();
        assert!(!printed.contains("PRIVATE KEY"));
        assert!(!printed.contains(&format!("{:?}", key.serialized_der())));
    }

    fn mode_of(path: &Path) -> u32 {
        fs::metadata(path).unwrap().permissions().mode() & 0o7777
    }

    #[test]
    fn write_private_is_0600_and_replaces_atomically() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("tls").join("agent.key");
        write_private(&path, b"secret one").unwrap();
        assert_eq!(mode_of(&path), 0o600);
        assert_eq!(mode_of(path.parent().unwrap()) & 0o077, 0);
        assert_eq!(read_private(&path).unwrap(), "secret one");

        // Over a file that was too open: the result is 0600 again.
        fs::set_permissions(&path, Permissions::from_mode(0o644)).unwrap();
        write_private(&path, b"secret two").unwrap();
        assert_eq!(mode_of(&path), 0o600);
        assert_eq!(read_private(&path).unwrap(), "secret two");
        // No temporary file is left behind.
        let names: Vec<_> = fs::read_dir(path.parent().unwrap())
            .unwrap()
            .map(|e| e.unwrap().file_name())
            .collect();
        assert_eq!(names, [OsString::from("agent.key")]);
    }

    #[test]
    fn write_public_is_0644() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("ca.pem");
        write_public(&path, b"cert").unwrap();
        assert_eq!(mode_of(&path), 0o644);
        assert_eq!(fs::read(&path).unwrap(), b"cert");
    }

    #[test]
    fn check_private_refuses_files_others_can_read() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("coordinator.key");
        fs::write(&path, "secret").unwrap();
        for mode in [0o644, 0o640, 0o604] {
            fs::set_permissions(&path, Permissions::from_mode(mode)).unwrap();
            let err = check_private(&path).unwrap_err();
            let message = err.to_string();
            assert!(message.contains("chmod 600"), "{message}");
            assert!(message.contains(&path.display().to_string()), "{message}");
            assert!(message.contains(&format!("{mode:04o}")), "{message}");
            assert!(matches!(
                read_private(&path).unwrap_err(),
                PkiError::InsecurePermissions { .. }
            ));
        }
        for mode in [0o600, 0o400] {
            fs::set_permissions(&path, Permissions::from_mode(mode)).unwrap();
            check_private(&path).unwrap();
            assert_eq!(read_private(&path).unwrap(), "secret");
        }

        let missing = dir.path().join("missing.key");
        let err = check_private(&missing).unwrap_err();
        assert!(matches!(err, PkiError::MissingFile { .. }), "{err:?}");
        assert!(err.to_string().contains("missing.key"), "{err}");
        assert!(matches!(
            read_private(&missing).unwrap_err(),
            PkiError::MissingFile { .. }
        ));
    }
}
