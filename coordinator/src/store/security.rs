//! Operator and enrollment tokens (hashed), and the agent certificates the CA issued.

use sqlx::SqliteConnection;

use super::{Store, StoreResult};

/// One row of `tokens`. The secret itself is never stored, only its sha256.
#[derive(Debug, Clone, PartialEq, sqlx::FromRow)]
pub struct TokenRecord {
    pub id: String,
    /// `operator` or `enrollment`.
    pub kind: String,
    /// Operator tokens: who holds it. Enrollment tokens: the agent it may enroll.
    pub name: String,
    /// `viewer`, `operator` or `admin`; empty for enrollment tokens.
    pub role: String,
    pub secret_sha256: String,
    pub created_by: String,
    pub created_unix_ms: i64,
    pub expires_unix_ms: i64,
    pub used_unix_ms: i64,
    pub revoked_unix_ms: i64,
}

/// One certificate the coordinator's CA signed for an agent.
#[derive(Debug, Clone, PartialEq, sqlx::FromRow)]
pub struct CertificateRecord {
    pub serial: String,
    pub agent: String,
    pub issued_unix_ms: i64,
    pub not_after_unix_ms: i64,
    pub revoked_unix_ms: i64,
}

/// The columns of [`TokenRecord`], for `concat!` (queries are static strings).
macro_rules! token_columns {
    () => {
        "id, kind, name, role, secret_sha256, created_by, created_unix_ms, expires_unix_ms,
         used_unix_ms, revoked_unix_ms"
    };
}

impl Store {
    pub async fn insert_token(tx: &mut SqliteConnection, token: &TokenRecord) -> StoreResult<()> {
        sqlx::query(concat!(
            "INSERT INTO tokens (",
            token_columns!(),
            ") VALUES (?, ?, ?, ?, ?, ?, ?, ?, ?, ?)"
        ))
        .bind(&token.id)
        .bind(&token.kind)
        .bind(&token.name)
        .bind(&token.role)
        .bind(&token.secret_sha256)
        .bind(&token.created_by)
        .bind(token.created_unix_ms)
        .bind(token.expires_unix_ms)
        .bind(token.used_unix_ms)
        .bind(token.revoked_unix_ms)
        .execute(&mut *tx)
        .await?;
        Ok(())
    }

    /// The token whose secret hashes to `secret_sha256`, whatever its state.
    pub async fn token_by_secret(&self, secret_sha256: &str) -> StoreResult<Option<TokenRecord>> {
        let mut conn = self.read().await?;
        Self::token_by_secret_in(&mut conn, secret_sha256).await
    }

    /// [`Store::token_by_secret`] inside a write transaction (enrollment uses it up there).
    pub async fn token_by_secret_in(
        conn: &mut SqliteConnection,
        secret_sha256: &str,
    ) -> StoreResult<Option<TokenRecord>> {
        Ok(sqlx::query_as(concat!(
            "SELECT ",
            token_columns!(),
            " FROM tokens WHERE secret_sha256 = ?"
        ))
        .bind(secret_sha256)
        .fetch_optional(&mut *conn)
        .await?)
    }

    /// Every token, newest first.
    pub async fn list_tokens(&self) -> StoreResult<Vec<TokenRecord>> {
        let mut conn = self.read().await?;
        Ok(sqlx::query_as(concat!(
            "SELECT ",
            token_columns!(),
            " FROM tokens ORDER BY created_unix_ms DESC, id DESC"
        ))
        .fetch_all(&mut *conn)
        .await?)
    }

    pub async fn token_for_update(
        tx: &mut SqliteConnection,
        id: &str,
    ) -> StoreResult<Option<TokenRecord>> {
        Ok(sqlx::query_as(concat!(
            "SELECT ",
            token_columns!(),
            " FROM tokens WHERE id = ?"
        ))
        .bind(id)
        .fetch_optional(&mut *tx)
        .await?)
    }

    /// Writes back when a token was revoked.
    pub async fn save_token_revoked(
        tx: &mut SqliteConnection,
        token: &TokenRecord,
    ) -> StoreResult<()> {
        sqlx::query("UPDATE tokens SET revoked_unix_ms = ? WHERE id = ?")
            .bind(token.revoked_unix_ms)
            .bind(&token.id)
            .execute(&mut *tx)
            .await?;
        Ok(())
    }

    /// Uses up an enrollment token; returns false when it was used already (whatever ran
    /// first wins, even if writers were ever concurrent).
    pub async fn use_token(
        tx: &mut SqliteConnection,
        id: &str,
        now_unix_ms: i64,
    ) -> StoreResult<bool> {
        Ok(
            sqlx::query("UPDATE tokens SET used_unix_ms = ? WHERE id = ? AND used_unix_ms = 0")
                .bind(now_unix_ms)
                .bind(id)
                .execute(&mut *tx)
                .await?
                .rows_affected()
                == 1,
        )
    }

    /// Revokes the enrollment tokens of `agent` not used yet; returns how many.
    pub async fn revoke_enrollment_tokens(
        tx: &mut SqliteConnection,
        agent: &str,
        now_unix_ms: i64,
    ) -> StoreResult<u64> {
        Ok(sqlx::query(
            "UPDATE tokens SET revoked_unix_ms = ?
             WHERE kind = 'enrollment' AND name = ? AND used_unix_ms = 0 AND revoked_unix_ms = 0",
        )
        .bind(now_unix_ms)
        .bind(agent)
        .execute(&mut *tx)
        .await?
        .rows_affected())
    }

    pub async fn insert_certificate(
        tx: &mut SqliteConnection,
        cert: &CertificateRecord,
    ) -> StoreResult<()> {
        sqlx::query(
            "INSERT INTO agent_certificates (serial, agent, issued_unix_ms, not_after_unix_ms,
                                             revoked_unix_ms)
             VALUES (?, ?, ?, ?, ?)",
        )
        .bind(&cert.serial)
        .bind(&cert.agent)
        .bind(cert.issued_unix_ms)
        .bind(cert.not_after_unix_ms)
        .bind(cert.revoked_unix_ms)
        .execute(&mut *tx)
        .await?;
        Ok(())
    }

    pub async fn certificate(&self, serial: &str) -> StoreResult<Option<CertificateRecord>> {
        let mut conn = self.read().await?;
        Self::certificate_in(&mut conn, serial).await
    }

    /// [`Store::certificate`] inside a write transaction, serialized with revocations.
    pub async fn certificate_in(
        conn: &mut SqliteConnection,
        serial: &str,
    ) -> StoreResult<Option<CertificateRecord>> {
        Ok(sqlx::query_as(
            "SELECT serial, agent, issued_unix_ms, not_after_unix_ms, revoked_unix_ms
             FROM agent_certificates WHERE serial = ?",
        )
        .bind(serial)
        .fetch_optional(&mut *conn)
        .await?)
    }

    /// The serial of the newest certificate issued to `agent`.
    pub async fn newest_certificate(
        conn: &mut SqliteConnection,
        agent: &str,
    ) -> StoreResult<Option<String>> {
        Ok(sqlx::query_scalar(
            "SELECT serial FROM agent_certificates WHERE agent = ?
             ORDER BY issued_unix_ms DESC, rowid DESC LIMIT 1",
        )
        .bind(agent)
        .fetch_optional(&mut *conn)
        .await?)
    }

    /// Revokes every certificate of `agent` not revoked yet; returns how many.
    pub async fn revoke_certificates(
        tx: &mut SqliteConnection,
        agent: &str,
        now_unix_ms: i64,
    ) -> StoreResult<u64> {
        Ok(sqlx::query(
            "UPDATE agent_certificates SET revoked_unix_ms = ?
             WHERE agent = ? AND revoked_unix_ms = 0",
        )
        .bind(now_unix_ms)
        .bind(agent)
        .execute(&mut *tx)
        .await?
        .rows_affected())
    }
}
