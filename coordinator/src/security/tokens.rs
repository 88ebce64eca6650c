//! Operator and enrollment tokens: created with a random secret shown once, stored as its
//! sha256, expiring and revocable. Operator tokens carry a role; enrollment tokens name the
//! one agent they may enroll, once.

use std::collections::HashMap;
use std::fmt;
use std::str::FromStr;
use std::sync::RwLock;
use std::time::Duration;

use rand::RngCore;
use serde_json::json;
use sha2::{Digest, Sha256};

use crate::audit::{Actor, NewAuditEvent};
use crate::error::{CoordinatorError, CoordinatorResult};
use crate::store::{Store, TokenRecord};

/// Operator tokens work this long unless `--ttl` says otherwise.
pub const DEFAULT_OPERATOR_TTL: Duration = Duration::from_secs(30 * 24 * 3600);
/// Enrollment tokens work this long unless `--ttl` says otherwise.
pub const DEFAULT_ENROLLMENT_TTL: Duration = Duration::from_secs(3600);
/// The longest a token may live: long-lived credentials are how fleets get breached.
pub const MAX_TTL: Duration = Duration::from_secs(366 * 24 * 3600);
/// The longest an enrollment token may live: it is for provisioning a host, not keeping.
pub const MAX_ENROLLMENT_TTL: Duration = Duration::from_secs(7 * 24 * 3600);

/// Secrets start with their kind, so a leaked one is recognizable (secret scanners) and an
/// enrollment token pasted as `--token` of the CLI gets a precise error.
const OPERATOR_PREFIX: &str = "wdn_op_";
const ENROLLMENT_PREFIX: &str = "wdn_en_";

pub const KIND_OPERATOR: &str = "operator";
pub const KIND_ENROLLMENT: &str = "enrollment";

/// What an operator token allows, each role including the ones below it.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord)]
pub enum Role {
    /// Reads everything but secrets.
    Viewer,
    /// Backups, health checks, drills, restores under a new name, cancel.
    Operator,
    /// Restore --replace, migrations, policy and windows, prune, break glass, tokens, agent
    /// revocation.
    Admin,
}

impl Role {
    pub fn as_str(self) -> &'static str {
        match self {
            Role::Viewer => "viewer",
            Role::Operator => "operator",
            Role::Admin => "admin",
        }
    }
}

impl fmt::Display for Role {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.as_str())
    }
}

impl FromStr for Role {
    type Err = CoordinatorError;

    fn from_str(s: &str) -> Result<Self, Self::Err> {
        match s {
            "viewer" => Ok(Role::Viewer),
            "operator" => Ok(Role::Operator),
            "admin" => Ok(Role::Admin),
            other => Err(CoordinatorError::InvalidArgument(format!(
                "unknown role {other:?}: use viewer, operator or admin"
            ))),
        }
    }
}

/// What a new token is for.
#[derive(Debug, Clone)]
pub enum TokenGrant {
    /// An operator token for `name` with `role`.
    Operator { name: String, role: Role },
    /// A one-time enrollment token for the agent `agent`.
    Enrollment { agent: String },
}

/// An authenticated operator.
#[derive(Debug, Clone)]
pub struct Caller {
    pub token_id: String,
    pub name: String,
    pub role: Role,
}

/// Returns the sha256 (hex) a secret is stored and looked up as.
pub fn secret_hash(secret: &str) -> String {
    hex::encode(Sha256::digest(secret.as_bytes()))
}

fn new_secret(prefix: &str) -> String {
    let mut bytes = [0u8; 32];
    rand::rng().fill_bytes(&mut bytes);
    format!("{prefix}{}", hex::encode(bytes))
}

/// Checks a token's name: what the audit log will call its holder.
fn validate_holder(name: &str) -> CoordinatorResult<()> {
    let ok = !name.is_empty()
        && name.len() <= 64
        && name
            .chars()
            .all(|c| c.is_ascii_alphanumeric() || "._-@".contains(c));
    if ok {
        Ok(())
    } else {
        Err(CoordinatorError::InvalidArgument(format!(
            "invalid token name {name:?}: use 1 to 64 letters, digits, '.', '_', '-' or '@' \
             (it names the holder in the audit log)"
        )))
    }
}

/// Creates a token, audited in the same transaction; returns it and its secret, which
/// nothing keeps.
pub async fn create_token(
    store: &Store,
    actor: &Actor,
    grant: &TokenGrant,
    ttl: Option<Duration>,
) -> CoordinatorResult<(TokenRecord, String)> {
    let (kind, name, role, prefix, default_ttl, max_ttl) = match grant {
        TokenGrant::Operator { name, role } => {
            validate_holder(name)?;
            (
                KIND_OPERATOR,
                name.clone(),
                role.as_str(),
                OPERATOR_PREFIX,
                DEFAULT_OPERATOR_TTL,
                MAX_TTL,
            )
        }
        TokenGrant::Enrollment { agent } => {
            warden_shared::validate_agent_name(agent)?;
            (
                KIND_ENROLLMENT,
                agent.clone(),
                "",
                ENROLLMENT_PREFIX,
                DEFAULT_ENROLLMENT_TTL,
                MAX_ENROLLMENT_TTL,
            )
        }
    };
    let ttl = ttl.unwrap_or(default_ttl);
    if ttl.is_zero() || ttl > max_ttl {
        return Err(CoordinatorError::InvalidArgument(format!(
            "invalid ttl {}: an {kind} token lives between 1ms and {}",
            humantime::format_duration(ttl),
            humantime::format_duration(max_ttl)
        )));
    }
    let now = warden_shared::now_unix_ms();
    let secret = new_secret(prefix);
    let token = TokenRecord {
        id: uuid::Uuid::now_v7().to_string(),
        kind: kind.to_owned(),
        name,
        role: role.to_owned(),
        secret_sha256: secret_hash(&secret),
        created_by: actor.to_string(),
        created_unix_ms: now,
        expires_unix_ms: now.saturating_add(crate::fleet::millis_i64(ttl)),
        used_unix_ms: 0,
        revoked_unix_ms: 0,
    };
    let mut tx = store.begin().await?;
    Store::insert_token(&mut tx, &token).await?;
    Store::append_audit(
        &mut tx,
        NewAuditEvent::new(
            actor,
            "token.create",
            &token.name,
            json!({
                "id": token.id,
                "kind": token.kind,
                "role": token.role,
                "expires_unix_ms": token.expires_unix_ms,
            }),
        ),
    );
    tx.commit().await?;
    Ok((token, secret))
}

/// Why a token does not work now, or `None` when it does.
pub fn unusable(token: &TokenRecord, now_unix_ms: i64) -> Option<String> {
    if token.revoked_unix_ms != 0 {
        Some(format!("token {} was revoked", token.id))
    } else if token.expires_unix_ms <= now_unix_ms {
        Some(format!(
            "token {} expired at {}",
            token.id,
            crate::fleet::format_unix_ms(token.expires_unix_ms)
        ))
    } else if token.kind == KIND_ENROLLMENT && token.used_unix_ms != 0 {
        Some(format!(
            "enrollment token {} was already used at {}: ask an admin for a new one \
             (`warden token create --agent {}`)",
            token.id,
            crate::fleet::format_unix_ms(token.used_unix_ms),
            token.name
        ))
    } else {
        None
    }
}

/// Operator tokens by secret hash, in memory: every admin call is authenticated without a
/// store read. Misses are read from the store (a token created by `warden-coordinator token
/// create` on the host while the coordinator runs); revocations through the API update it.
#[derive(Default)]
pub struct TokenCache {
    by_hash: RwLock<HashMap<String, TokenRecord>>,
}

impl TokenCache {
    /// Authenticates a bearer secret, or says why it does not work (for the caller and the
    /// audit log; the secret itself is never in it).
    pub async fn authenticate(
        &self,
        store: &Store,
        secret: Option<&str>,
    ) -> Result<Caller, String> {
        let Some(secret) = secret else {
            return Err(
                "no token: set WARDEN_TOKEN or pass --token-file (an admin creates one \
                        with `warden token create --role ROLE --name NAME`)"
                    .to_owned(),
            );
        };
        if secret.starts_with(ENROLLMENT_PREFIX) {
            return Err("an enrollment token cannot call the admin API: it is for \
                        `warden-agent enroll`"
                .to_owned());
        }
        let hash = secret_hash(secret);
        let cached = self.read().get(&hash).cloned();
        let token = match cached {
            Some(token) => token,
            None => match store.token_by_secret(&hash).await {
                Ok(Some(token)) if token.kind == KIND_OPERATOR => {
                    self.write().entry(hash).or_insert(token).clone()
                }
                Ok(_) => return Err("unknown token".to_owned()),
                Err(error) => {
                    tracing::error!(%error, "cannot read tokens");
                    return Err("cannot check the token now: the store failed".to_owned());
                }
            },
        };
        if let Some(why) = unusable(&token, warden_shared::now_unix_ms()) {
            return Err(why);
        }
        Ok(Caller {
            role: token
                .role
                .parse()
                .map_err(|_| format!("token {} has an unknown role {:?}", token.id, token.role))?,
            token_id: token.id,
            name: token.name,
        })
    }

    /// Keeps a revoked token as revoked: a lookup that read it from the store before the
    /// revocation committed cannot put it back as valid (lookups never overwrite).
    fn remember_revoked(&self, token: &TokenRecord) {
        self.write()
            .insert(token.secret_sha256.clone(), token.clone());
    }

    fn read(&self) -> std::sync::RwLockReadGuard<'_, HashMap<String, TokenRecord>> {
        self.by_hash.read().unwrap_or_else(|p| p.into_inner())
    }

    fn write(&self) -> std::sync::RwLockWriteGuard<'_, HashMap<String, TokenRecord>> {
        self.by_hash.write().unwrap_or_else(|p| p.into_inner())
    }
}

/// Revokes a token, audited; revoking it again changes nothing.
pub async fn revoke_token(
    store: &Store,
    cache: &TokenCache,
    actor: &Actor,
    id: &str,
) -> CoordinatorResult<TokenRecord> {
    let mut tx = store.begin().await?;
    let Some(mut token) = Store::token_for_update(&mut tx, id).await? else {
        return Err(CoordinatorError::NotFound(format!(
            "no token {id:?}: `warden tokens` lists them"
        )));
    };
    if token.revoked_unix_ms == 0 {
        token.revoked_unix_ms = warden_shared::now_unix_ms();
        Store::save_token_revoked(&mut tx, &token).await?;
        Store::append_audit(
            &mut tx,
            NewAuditEvent::new(
                actor,
                "token.revoke",
                &token.name,
                json!({ "id": token.id, "kind": token.kind, "role": token.role }),
            ),
        );
    }
    tx.commit().await?;
    cache.remember_revoked(&token);
    Ok(token)
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::store::temp_store;

    fn admin() -> Actor {
        Actor::Operator("root".to_owned())
    }

    #[tokio::test]
    async fn a_token_authenticates_until_it_is_revoked_and_only_its_hash_is_stored() {
        let (_dir, store) = temp_store().await;
        let cache = TokenCache::default();
        let grant = TokenGrant::Operator {
            name: "alice".to_owned(),
            role: Role::Operator,
        };
        let (token, secret) = create_token(&store, &admin(), &grant, None).await.unwrap();
        assert!(secret.starts_with(OPERATOR_PREFIX));
        assert_ne!(token.secret_sha256, secret);
        let stored = store.list_tokens().await.unwrap();
        assert_eq!(stored, vec![token.clone()]);
        assert!(!format!("{stored:?}").contains(&secret));
        let audit = store.list_audit(0, 10).await.unwrap();
        assert!(!format!("{audit:?}").contains(&secret), "{audit:?}");

        let caller = cache.authenticate(&store, Some(&secret)).await.unwrap();
        assert_eq!(
            (caller.name.as_str(), caller.role),
            ("alice", Role::Operator)
        );
        assert_eq!(
            cache
                .authenticate(&store, Some("wdn_op_00"))
                .await
                .unwrap_err(),
            "unknown token"
        );
        assert!(
            cache
                .authenticate(&store, None)
                .await
                .unwrap_err()
                .contains("--token")
        );

        revoke_token(&store, &cache, &admin(), &token.id)
            .await
            .unwrap();
        let why = cache.authenticate(&store, Some(&secret)).await.unwrap_err();
        assert!(why.contains("revoked"), "{why}");
    }

    #[tokio::test]
    async fn an_expired_token_and_an_enrollment_token_do_not_authenticate() {
        let (_dir, store) = temp_store().await;
        let cache = TokenCache::default();
        let grant = TokenGrant::Operator {
            name: "bob".to_owned(),
            role: Role::Admin,
        };
        let (_, secret) = create_token(&store, &admin(), &grant, Some(Duration::from_millis(1)))
            .await
            .unwrap();
        tokio::time::sleep(Duration::from_millis(5)).await;
        let why = cache.authenticate(&store, Some(&secret)).await.unwrap_err();
        assert!(why.contains("expired"), "{why}");

        let enroll = TokenGrant::Enrollment {
            agent: "a1".to_owned(),
        };
        let (_, secret) = create_token(&store, &admin(), &enroll, None).await.unwrap();
        let why = cache.authenticate(&store, Some(&secret)).await.unwrap_err();
        assert!(why.contains("enroll"), "{why}");
    }

    #[tokio::test]
    async fn bad_names_roles_and_ttls_are_refused() {
        let (_dir, store) = temp_store().await;
        for name in ["", "al ice", "a'b", "x/y"] {
            let grant = TokenGrant::Operator {
                name: name.to_owned(),
                role: Role::Viewer,
            };
            let error = create_token(&store, &admin(), &grant, None)
                .await
                .unwrap_err();
            assert!(error.to_string().contains("invalid token name"), "{error}");
        }
        let grant = TokenGrant::Enrollment {
            agent: "a/1".to_owned(),
        };
        assert!(create_token(&store, &admin(), &grant, None).await.is_err());
        let grant = TokenGrant::Operator {
            name: "carol".to_owned(),
            role: Role::Viewer,
        };
        let error = create_token(&store, &admin(), &grant, Some(MAX_TTL * 2))
            .await
            .unwrap_err();
        assert!(error.to_string().contains("invalid ttl"), "{error}");
        assert!("root".parse::<Role>().is_err());
        assert!(store.list_tokens().await.unwrap().is_empty());
    }
}
