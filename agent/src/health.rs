//! Health of the configured databases, seen from the agent's side of the network: the
//! report of a health order, and the periodic reports of every database that the session
//! sends while it is up.
//!
//! A database the agent cannot reach is a failed order carrying the connection error (with
//! any password redacted), not a report with `connected = false`: the coordinator then shows
//! why, and the report fields are never half-filled. Periodic reports say the same with
//! `report: None` and the error.

use std::path::PathBuf;
use std::time::{Duration, Instant};

use futures::future::join_all;
use sqlx::Connection;
use tokio_util::sync::CancellationToken;
use warden_proto::v1;
use warden_shared::now_unix_ms;

use crate::error::{AgentError, AgentResult};
use crate::orders::{AgentContext, blocking, cancellable, elapsed_ms};
use crate::pg::{self, PgDatabase};
use crate::repository::Repository;

/// Collects a health report of `db`.
pub async fn run(
    db: &PgDatabase,
    repository: &Repository,
    cancel: &CancellationToken,
) -> AgentResult<v1::HealthReport> {
    cancellable(cancel, async {
        let space = repository_space(repository).await;
        collect(db, space).await
    })
    .await
}

/// Collects the health of every configured database at once, each within `timeout`, so a
/// server that hangs delays nobody else.
pub async fn collect_all(ctx: &AgentContext, timeout: Duration) -> v1::HealthReports {
    let collected_unix_ms = now_unix_ms();
    let space = async {
        tokio::time::timeout(timeout, repository_space(&ctx.repository))
            .await
            .unwrap_or_else(|_| {
                tracing::warn!(
                    repository = %ctx.repository.url(),
                    timeout_s = timeout.as_secs_f64(),
                    "the repository's file system did not answer"
                );
                RepositorySpace::default()
            })
    };
    let databases = join_all(ctx.config.databases.iter().map(|entry| async {
        let db = ctx.target(&entry.name)?.db;
        tokio::time::timeout(timeout, collect_connected(&db))
            .await
            .unwrap_or_else(|_| {
                Err(AgentError::Postgres {
                    context: format!("cannot collect the health of {}", db.label),
                    message: format!("no answer within {} ms", timeout.as_millis()),
                })
            })
    }));
    let (space, databases) = tokio::join!(space, databases);
    v1::HealthReports {
        collected_unix_ms,
        databases: ctx
            .config
            .databases
            .iter()
            .zip(databases)
            .map(|(entry, collected)| match collected {
                Ok(report) => v1::DatabaseHealth {
                    database: entry.name.clone(),
                    report: Some(with_space(report, space)),
                    error: String::new(),
                },
                Err(error) => v1::DatabaseHealth {
                    database: entry.name.clone(),
                    report: None,
                    error: error.to_string(),
                },
            })
            .collect(),
    }
}

/// Collects a report of `db` for the repository's file system as measured in `space`.
async fn collect(db: &PgDatabase, space: RepositorySpace) -> AgentResult<v1::HealthReport> {
    collect_connected(db)
        .await
        .map(|report| with_space(report, space))
}

fn with_space(report: v1::HealthReport, space: RepositorySpace) -> v1::HealthReport {
    v1::HealthReport {
        repository_free_bytes: space.free_bytes,
        repository_total_bytes: space.total_bytes,
        ..report
    }
}

/// The server's side of a report: everything but the repository's file system.
async fn collect_connected(db: &PgDatabase) -> AgentResult<v1::HealthReport> {
    // Latency as an application sees it: a new connection plus one round trip.
    let started = Instant::now();
    let mut conn = db.connect().await?;
    sqlx::query("SELECT 1")
        .execute(&mut conn)
        .await
        .map_err(db.sql_error("cannot query"))?;
    let latency_ms = elapsed_ms(started);

    let server = pg::server_version(db, &mut conn).await?;
    let stats: ServerStats = sqlx::query_as(
        "SELECT pg_database_size(current_database()) AS size, \
                (SELECT count(*) FROM pg_class c JOIN pg_namespace n ON n.oid = c.relnamespace \
                 WHERE c.relkind IN ('r', 'p') \
                   AND n.nspname NOT IN ('pg_catalog', 'information_schema') \
                   AND n.nspname NOT LIKE 'pg\\_toast%' AND n.nspname NOT LIKE 'pg\\_temp\\_%') \
                  AS tables, \
                (SELECT count(*) FROM pg_stat_activity) AS used, \
                current_setting('max_connections')::int4 AS max, \
                pg_is_in_recovery() AS in_recovery, \
                extract(epoch FROM now() - pg_postmaster_start_time())::int8 AS uptime_seconds, \
                (CASE WHEN pg_is_in_recovery() \
                      THEN extract(epoch FROM now() - pg_last_xact_replay_timestamp()) * 1000 \
                      ELSE (SELECT extract(epoch FROM max(replay_lag)) * 1000 \
                            FROM pg_stat_replication) \
                 END)::int8 AS replication_lag_ms, \
                (SELECT extract(epoch FROM now() - min(xact_start)) FROM pg_stat_activity \
                 WHERE xact_start IS NOT NULL AND state <> 'idle' \
                   AND pid <> pg_backend_pid())::int8 AS oldest_transaction_seconds, \
                (SELECT age(datfrozenxid) FROM pg_database \
                 WHERE datname = current_database())::int8 AS wraparound_age",
    )
    .fetch_one(&mut conn)
    .await
    .map_err(db.sql_error("cannot read the statistics of"))?;
    let _ = conn.close().await;
    Ok(stats.report(latency_ms, server.text))
}

/// What the statistics query returns, in its column order. Durations are `NULL` when there
/// is nothing to measure (no standby, no open transaction, nothing replayed yet).
#[derive(sqlx::FromRow)]
struct ServerStats {
    size: i64,
    tables: i64,
    used: i64,
    max: i32,
    in_recovery: bool,
    uptime_seconds: i64,
    replication_lag_ms: Option<i64>,
    oldest_transaction_seconds: Option<i64>,
    wraparound_age: Option<i64>,
}

impl ServerStats {
    fn report(self, latency_ms: u64, server_version: String) -> v1::HealthReport {
        // Clock steps can make a duration negative; it then reads as 0.
        let count = |n: Option<i64>| n.and_then(|n| u64::try_from(n).ok()).unwrap_or_default();
        v1::HealthReport {
            connected: true,
            latency_ms,
            server_version,
            database_size_bytes: count(Some(self.size)),
            table_count: u32::try_from(self.tables).unwrap_or(u32::MAX),
            connections_used: u32::try_from(self.used).unwrap_or(u32::MAX),
            connections_max: u32::try_from(self.max).unwrap_or_default(),
            in_recovery: self.in_recovery,
            uptime_seconds: count(Some(self.uptime_seconds)),
            replication_role: if self.in_recovery {
                "standby"
            } else {
                "primary"
            }
            .to_owned(),
            replication_lag_ms: count(self.replication_lag_ms),
            oldest_transaction_seconds: count(self.oldest_transaction_seconds),
            wraparound_age: count(self.wraparound_age),
            // Filled in by the caller, which measures the file system once for all databases.
            repository_free_bytes: 0,
            repository_total_bytes: 0,
        }
    }
}

/// Free and total bytes of the file system holding the repository.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct RepositorySpace {
    /// Bytes available to the agent (not counting blocks reserved for root).
    pub free_bytes: u64,
    pub total_bytes: u64,
}

/// Measures the file system of the repository's root, on a blocking thread (a network
/// mount can take its time). A failure is logged and reads as zero.
pub async fn repository_space(repository: &Repository) -> RepositorySpace {
    let root = repository.root().to_path_buf();
    let measured = blocking(move || file_system_space(root)).await;
    measured.unwrap_or_else(|error| {
        tracing::warn!(repository = %repository.url(), %error, "cannot measure the repository's file system");
        RepositorySpace::default()
    })
}

fn file_system_space(root: PathBuf) -> AgentResult<RepositorySpace> {
    let stats = rustix::fs::statvfs(&root).map_err(|errno| {
        AgentError::io(format!("cannot read the file system of {}", root.display()))(errno.into())
    })?;
    Ok(RepositorySpace {
        free_bytes: stats.f_bavail.saturating_mul(stats.f_frsize),
        total_bytes: stats.f_blocks.saturating_mul(stats.f_frsize),
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[tokio::test]
    async fn the_repository_file_system_is_measured() {
        let tmp = tempfile::tempdir().expect("tempdir");
        let url = url::Url::from_file_path(tmp.path()).expect("absolute path");
        let repository = Repository::from_url(url.as_str()).expect("file url");
        let space = repository_space(&repository).await;
        assert!(space.total_bytes > 0, "{space:?}");
        assert!(space.free_bytes <= space.total_bytes, "{space:?}");

        let gone = Repository::from_url("file:///nonexistent/warden/repo").expect("file url");
        assert_eq!(repository_space(&gone).await, RepositorySpace::default());
    }

    #[test]
    fn statistics_become_a_report() {
        let stats = ServerStats {
            size: 8_000_000,
            tables: 3,
            used: 7,
            max: 100,
            in_recovery: true,
            uptime_seconds: 3600,
            replication_lag_ms: Some(-5),
            oldest_transaction_seconds: None,
            wraparound_age: Some(1234),
        };
        let report = stats.report(2, "17.2".to_owned());
        assert_eq!(report.replication_role, "standby");
        assert_eq!(report.replication_lag_ms, 0, "a negative lag reads as 0");
        assert_eq!(report.oldest_transaction_seconds, 0);
        assert_eq!(report.uptime_seconds, 3600);
        assert_eq!(report.wraparound_age, 1234);
        assert_eq!(report.database_size_bytes, 8_000_000);
        assert!(report.connected);
    }
}
