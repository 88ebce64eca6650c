//! Who may talk to the coordinator: agents by client certificate from its built-in CA
//! (enrolled with one-time tokens, renewed before expiry, revocable), operators by bearer
//! tokens bound to a role. Every refusal is audited by the caller of these checks.

pub mod ca;
pub mod tls;
pub mod tokens;

use std::net::SocketAddr;

use serde_json::json;
use tonic::Request;
use warden_proto::v1 as pb;
use warden_shared::pki::CertInfo;

use crate::audit::{Actor, NewAuditEvent};
use crate::error::{CoordinatorError, CoordinatorResult};
use crate::store::{CertificateRecord, Store};
use tls::AgentAuthority;
use tokens::{KIND_ENROLLMENT, TokenCache};

/// The coordinator's credentials checks.
pub struct Security {
    pub tokens: TokenCache,
    /// The CA agents are checked against; `None` with `--insecure-dev` (no TLS).
    agents: Option<AgentAuthority>,
}

/// An agent a certificate speaks for.
#[derive(Debug, Clone)]
pub struct AgentIdentity {
    pub name: String,
    pub serial: String,
    /// When the certificate expires: a session does not outlive it.
    pub not_after: chrono::DateTime<chrono::Utc>,
}

impl Security {
    pub fn new(agents: Option<AgentAuthority>) -> Self {
        Self {
            tokens: TokenCache::default(),
            agents,
        }
    }

    /// Whether agents must present certificates (false only with `--insecure-dev`).
    pub fn agents_need_certificates(&self) -> bool {
        self.agents.is_some()
    }

    /// The agent a request's client certificate speaks for: issued by this coordinator's
    /// CA, in force, and not revoked. `Ok(None)` with `--insecure-dev`.
    pub async fn agent_of<T>(
        &self,
        store: &Store,
        request: &Request<T>,
    ) -> CoordinatorResult<Option<AgentIdentity>> {
        let Some(authority) = &self.agents else {
            return Ok(None);
        };
        let certs = request.peer_certs();
        let info = authority
            .verify(certs.as_deref().map(Vec::as_slice))
            .map_err(CoordinatorError::Unauthenticated)?;
        let identity = identity(&info)?;
        let record = store.certificate(&info.serial).await?;
        standing(&identity, record.as_ref())?;
        Ok(Some(identity))
    }

    /// Enrolls an agent: uses up its token and signs its CSR, in one audited transaction.
    pub async fn enroll(
        &self,
        store: &Store,
        request: &pb::EnrollRequest,
        peer: Option<SocketAddr>,
    ) -> CoordinatorResult<pb::CertificateResponse> {
        let authority = self.authority()?;
        warden_shared::validate_agent_name(&request.agent)?;
        let now = warden_shared::now_unix_ms();
        // Read first: a caller without a usable token never takes the store's write lock.
        let token = store
            .token_by_secret(&tokens::secret_hash(&request.token))
            .await?
            .filter(|t| t.kind == KIND_ENROLLMENT)
            .ok_or_else(|| {
                CoordinatorError::Unauthenticated(
                    "unknown enrollment token: an admin makes one with `warden token create \
                     --agent NAME`"
                        .to_owned(),
                )
            })?;
        if let Some(why) = tokens::unusable(&token, now) {
            return Err(CoordinatorError::Unauthenticated(why));
        }
        if token.name != request.agent {
            return Err(CoordinatorError::PermissionDenied(format!(
                "enrollment token {} is for agent {}, not {}",
                token.id, token.name, request.agent
            )));
        }
        let issued = authority
            .sign(&request.csr_pem, &request.agent)
            .map_err(|e| CoordinatorError::InvalidArgument(e.to_string()))?;
        let mut tx = store.begin().await?;
        // Used up here, in the transaction that records the certificate: of two enrollments
        // with one token, the second finds it used (or revoked meanwhile).
        let current = Store::token_for_update(&mut tx, &token.id).await?;
        if let Some(why) = current.as_ref().and_then(|t| tokens::unusable(t, now)) {
            return Err(CoordinatorError::Unauthenticated(why));
        }
        if !Store::use_token(&mut tx, &token.id, now).await? {
            return Err(CoordinatorError::Unauthenticated(format!(
                "enrollment token {} was already used",
                token.id
            )));
        }
        let response = issue(&mut tx, authority, &request.agent, issued, now).await?;
        Store::append_audit(
            &mut tx,
            NewAuditEvent::new(
                &Actor::Agent(request.agent.clone()),
                "agent.enroll",
                &request.agent,
                json!({
                    // Not `token_id`: keys naming a token are redacted in the audit log.
                    "enrollment_id": token.id,
                    "peer": peer.map(|p| p.to_string()),
                    "not_after_unix_ms": response.not_after_unix_ms,
                }),
            ),
        );
        tx.commit().await?;
        Ok(response)
    }

    /// Signs a new certificate for an agent that presents its current one.
    pub async fn renew(
        &self,
        store: &Store,
        agent: &AgentIdentity,
        csr_pem: &str,
    ) -> CoordinatorResult<pb::CertificateResponse> {
        let authority = self.authority()?;
        let issued = authority
            .sign(csr_pem, &agent.name)
            .map_err(|e| CoordinatorError::InvalidArgument(e.to_string()))?;
        let now = warden_shared::now_unix_ms();
        let mut tx = store.begin().await?;
        // Again in the transaction: a revocation that committed since the call was checked
        // must not be outlived by a fresh certificate.
        check_unrevoked(&mut tx, agent).await?;
        // Only the newest certificate renews. An older one asking means two holders of the
        // agent's keys (a copy renewing on its own): refuse, and let the audit log show it.
        let newest = Store::newest_certificate(&mut tx, &agent.name).await?;
        if newest.as_deref() != Some(agent.serial.as_str()) {
            return Err(CoordinatorError::PermissionDenied(format!(
                "certificate serial {} of agent {} was renewed already (newest: {}): a second \
                 copy of its key may exist; revoke the agent (`warden agent revoke {}`) and \
                 enroll it again",
                agent.serial,
                agent.name,
                newest.as_deref().unwrap_or("none"),
                agent.name
            )));
        }
        let response = issue(&mut tx, authority, &agent.name, issued, now).await?;
        Store::append_audit(
            &mut tx,
            NewAuditEvent::new(
                &Actor::Agent(agent.name.clone()),
                "agent.renew",
                &agent.name,
                json!({
                    "previous_serial": agent.serial,
                    "not_after_unix_ms": response.not_after_unix_ms,
                }),
            ),
        );
        tx.commit().await?;
        Ok(response)
    }

    fn authority(&self) -> CoordinatorResult<&AgentAuthority> {
        self.agents.as_ref().ok_or_else(insecure_dev)
    }
}

/// Checks, in a write transaction, that the agent's certificate is still in force: no
/// revocation that committed since the call was authenticated slips through.
pub async fn check_unrevoked(
    tx: &mut sqlx::SqliteConnection,
    agent: &AgentIdentity,
) -> CoordinatorResult<()> {
    let record = Store::certificate_in(tx, &agent.serial).await?;
    standing(agent, record.as_ref())
}

/// Whether the certificate the store recorded lets `identity` in: issued here for this very
/// agent, and not revoked.
fn standing(identity: &AgentIdentity, record: Option<&CertificateRecord>) -> CoordinatorResult<()> {
    match record {
        Some(record) if record.revoked_unix_ms != 0 => {
            Err(CoordinatorError::PermissionDenied(format!(
                "agent {} is revoked (certificate serial {} revoked at {}): an admin can enroll \
                 it again with a new token",
                identity.name,
                identity.serial,
                crate::fleet::format_unix_ms(record.revoked_unix_ms)
            )))
        }
        Some(record) if record.agent == identity.name => Ok(()),
        Some(record) => Err(CoordinatorError::Unauthenticated(format!(
            "certificate serial {} names agent {} but was issued to {}: the CA key may be \
             misused; revoke both agents and rotate the CA",
            identity.serial, identity.name, record.agent
        ))),
        None => Err(CoordinatorError::Unauthenticated(format!(
            "certificate serial {} of {} is not one this coordinator issued",
            identity.serial, identity.name
        ))),
    }
}

/// The refusal of certificate calls to a coordinator without TLS.
pub fn insecure_dev() -> CoordinatorError {
    CoordinatorError::FailedPrecondition(
        "the coordinator runs with --insecure-dev: it issues no certificates".to_owned(),
    )
}

/// Records a signed certificate and answers with it.
async fn issue(
    tx: &mut sqlx::SqliteConnection,
    authority: &AgentAuthority,
    agent: &str,
    issued: warden_shared::pki::IssuedCert,
    now: i64,
) -> CoordinatorResult<pb::CertificateResponse> {
    let not_after_unix_ms = issued.info.not_after.timestamp_millis();
    Store::insert_certificate(
        tx,
        &CertificateRecord {
            serial: issued.info.serial.clone(),
            agent: agent.to_owned(),
            issued_unix_ms: now,
            not_after_unix_ms,
            revoked_unix_ms: 0,
        },
    )
    .await?;
    Ok(pb::CertificateResponse {
        certificate_pem: issued.cert_pem,
        ca_pem: authority.ca_pem().to_owned(),
        not_after_unix_ms,
    })
}

fn identity(info: &CertInfo) -> CoordinatorResult<AgentIdentity> {
    let name = info.common_name.clone().ok_or_else(|| {
        CoordinatorError::Unauthenticated(format!(
            "certificate serial {} names no agent",
            info.serial
        ))
    })?;
    Ok(AgentIdentity {
        name,
        serial: info.serial.clone(),
        not_after: info.not_after,
    })
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::security::ca::{CaInit, init};
    use crate::security::tls::{ServerTls, TlsFiles};
    use crate::security::tokens::{TokenGrant, create_token};
    use crate::store::temp_store;
    use warden_shared::pki;

    async fn security(dir: &std::path::Path) -> Security {
        let files = TlsFiles::new(&dir.join("tls"));
        init(&CaInit {
            files: files.clone(),
            hostnames: vec!["127.0.0.1".to_owned()],
            import: None,
        })
        .expect("ca init");
        let tls = ServerTls::load(&files, std::time::Duration::from_secs(3600)).expect("load");
        Security::new(Some(tls.agents))
    }

    fn identity_of(response: &pb::CertificateResponse) -> AgentIdentity {
        identity(&CertInfo::from_pem(&response.certificate_pem).expect("cert")).expect("name")
    }

    #[tokio::test]
    async fn only_the_newest_unrevoked_certificate_renews_and_a_token_enrolls_once() {
        let (dir, store) = temp_store().await;
        let security = security(dir.path()).await;
        let admin = Actor::Operator("root".to_owned());
        let grant = TokenGrant::Enrollment {
            agent: "db1".to_owned(),
        };
        let (_, token) = create_token(&store, &admin, &grant, None)
            .await
            .expect("token");
        let enroll = |token: &str| pb::EnrollRequest {
            token: token.to_owned(),
            agent: "db1".to_owned(),
            csr_pem: pki::agent_key_and_csr("db1").expect("csr").csr_pem,
        };
        let first = security
            .enroll(&store, &enroll(&token), None)
            .await
            .expect("enroll");
        let error = security
            .enroll(&store, &enroll(&token), None)
            .await
            .expect_err("a token works once");
        assert!(error.to_string().contains("already used"), "{error}");

        let csr = || pki::agent_key_and_csr("db1").expect("csr").csr_pem;
        let original = identity_of(&first);
        let second = security
            .renew(&store, &original, &csr())
            .await
            .expect("renew");
        let error = security
            .renew(&store, &original, &csr())
            .await
            .expect_err("the replaced certificate renews no more");
        assert!(error.to_string().contains("renewed already"), "{error}");
        let renewed = identity_of(&second);
        assert_ne!(renewed.serial, original.serial);
        let third = security
            .renew(&store, &renewed, &csr())
            .await
            .expect("the newest renews");

        let mut tx = store.begin().await.expect("tx");
        Store::revoke_certificates(&mut tx, "db1", warden_shared::now_unix_ms())
            .await
            .expect("revoke");
        tx.commit().await.expect("commit");
        let error = security
            .renew(&store, &identity_of(&third), &csr())
            .await
            .expect_err("a revoked certificate renews no more");
        assert!(error.to_string().contains("is revoked"), "{error}");
        let events = store.list_audit(0, 100).await.expect("audit");
        let renewals = events.iter().filter(|e| e.action == "agent.renew").count();
        assert_eq!(renewals, 2, "{events:?}");
    }
}
