//! Health of the configured databases, seen from the agent's side of the network: the
//! report of a health order, and the periodic reports of every database that the session
//! sends while it is up.
//!
//! A database the agent cannot reach is a failed order carrying the connection error (with
//! any password redacted), not a report with `connected = false`: the coordinator then shows
//! why, and the report fields are never half-filled. Periodic reports say the same with
//! `report: None` and the error.

use std::path::Path;
use std::sync::{Arc, Mutex, PoisonError};
use std::time::{Duration, Instant};

use futures::future::join_all;
use sqlx::Connection;
use tokio_util::sync::CancellationToken;
use warden_proto::v1;
use warden_shared::now_unix_ms;

use crate::error::{AgentError, AgentResult};
use crate::orders::{AgentContext, cancellable, elapsed_ms};
use crate::pg::{self, PgDatabase};
use crate::repository::Repository;

/// The longest a health order waits for the repository to answer.
const ORDER_REPOSITORY_TIMEOUT: Duration = Duration::from_secs(10);

/// Collects a health report of `db`, a database of `ctx`.
pub async fn run(
    ctx: &AgentContext,
    db: &PgDatabase,
    cancel: &CancellationToken,
) -> AgentResult<v1::HealthReport> {
    cancellable(cancel, async {
        let check = ctx
            .repository_gauge
            .check(&ctx.repository, &ctx.config.name, ORDER_REPOSITORY_TIMEOUT)
            .await;
        collect(db, check.space).await
    })
    .await
}

/// Collects the health of every configured database at once, each within `timeout`, so a
/// server that hangs delays nobody else.
pub async fn collect_all(ctx: &AgentContext, timeout: Duration) -> v1::HealthReports {
    let collected_unix_ms = now_unix_ms();
    let check = ctx
        .repository_gauge
        .check(&ctx.repository, &ctx.config.name, timeout);
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
    let (check, databases) = tokio::join!(check, databases);
    if let Err(error) = &check.probe {
        tracing::warn!(repository = %ctx.repository.url(), %error, "the repository check failed");
    }
    let space = check.space;
    v1::HealthReports {
        collected_unix_ms,
        repository: Some(check.report(now_unix_ms())),
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
                (CASE WHEN NOT pg_is_in_recovery() \
                      THEN (SELECT extract(epoch FROM max(replay_lag)) * 1000 \
                            FROM pg_stat_replication) \
                      WHEN pg_last_wal_receive_lsn() = pg_last_wal_replay_lsn() THEN 0 \
                      ELSE extract(epoch FROM now() - pg_last_xact_replay_timestamp()) * 1000 \
                 END)::int8 AS replication_lag_ms, \
                (SELECT extract(epoch FROM now() - min(xact_start)) FROM pg_stat_activity \
                 WHERE xact_start IS NOT NULL AND state <> 'idle' \
                   AND backend_type = 'client backend' \
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
///
/// A standby's lag is 0 while it has replayed all the WAL it received: measured from the
/// last replayed commit alone, it would grow while the primary is idle. Only client
/// sessions count for the oldest transaction: autovacuum workers and WAL senders hold long
/// transactions that nobody can (or needs to) end.
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

/// What the agent found its repository to be: the space of its file system (zero for a
/// bucket, or when it could not be read) and whether a probe could be written, read back
/// and deleted, with how long that took or the storage's own error.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct RepositoryCheck {
    pub space: RepositorySpace,
    pub probe: Result<Duration, String>,
}

impl RepositoryCheck {
    /// The check as reported to the coordinator.
    pub fn report(&self, checked_unix_ms: i64) -> v1::RepositoryHealth {
        v1::RepositoryHealth {
            ok: self.probe.is_ok(),
            error: self.probe.as_ref().err().cloned().unwrap_or_default(),
            probe_ms: self
                .probe
                .as_ref()
                .map_or(0, |d| u64::try_from(d.as_millis()).unwrap_or(u64::MAX)),
            checked_unix_ms,
        }
    }
}

/// Checks the repository ([`RepositoryCheck`]), with at most one check in flight.
///
/// A check runs on a blocking thread (statvfs and file I/O on a `file://` repository),
/// which cannot be stopped: on a hung network mount it stays blocked however long its
/// caller waits. Were every health report to start its own, one thread would pile up per
/// interval until the blocking pool was exhausted, stalling backups and restores. So a
/// report that finds a check in flight does not start another; it takes the last result
/// while the one in flight is still young, and reports the repository as not answering
/// once it has taken longer than the report may wait.
#[derive(Debug, Default)]
pub struct RepositoryGauge {
    gauge: Gauge<RepositoryCheck>,
}

impl RepositoryGauge {
    /// Checks `repository` as agent `agent`, waiting at most `timeout`.
    pub async fn check(
        &self,
        repository: &Repository,
        agent: &str,
        timeout: Duration,
    ) -> RepositoryCheck {
        let (repository, agent) = (repository.clone(), agent.to_owned());
        let runtime = tokio::runtime::Handle::current();
        let url = repository.url().to_owned();
        let checked = self
            .gauge
            .measure_with(&url, timeout, move || {
                let space = match repository.local_root() {
                    Some(root) => file_system_space(root).unwrap_or_else(|error| {
                        tracing::warn!(repository = %repository.url(), %error, "cannot measure the repository's file system");
                        RepositorySpace::default()
                    }),
                    None => RepositorySpace::default(),
                };
                let probe = runtime
                    .block_on(repository.probe(&agent))
                    .map_err(|error| error.to_string());
                RepositoryCheck { space, probe }
            })
            .await;
        checked.unwrap_or_else(|why| RepositoryCheck {
            space: RepositorySpace::default(),
            probe: Err(why),
        })
    }
}

/// Runs a measurement on a blocking thread with at most one in flight (see
/// [`RepositoryGauge`]).
#[derive(Debug)]
struct Gauge<T> {
    state: Arc<Mutex<GaugeState<T>>>,
}

impl<T> Default for Gauge<T> {
    fn default() -> Self {
        Self {
            state: Arc::new(Mutex::new(GaugeState {
                in_flight_since: None,
                last: None,
            })),
        }
    }
}

#[derive(Debug)]
struct GaugeState<T> {
    /// When the measurement in flight started; `None` when there is none.
    in_flight_since: Option<Instant>,
    /// The result of the last finished measurement.
    last: Option<T>,
}

impl<T: Clone + Send + 'static> Gauge<T> {
    /// Runs `measurement`, waiting at most `timeout`; says why there is no value when it
    /// did not answer in time, or when one in flight is overdue.
    async fn measure_with(
        &self,
        url: &str,
        timeout: Duration,
        measurement: impl FnOnce() -> T + Send + 'static,
    ) -> Result<T, String> {
        {
            let mut state = self.lock();
            if let Some(since) = state.in_flight_since {
                let waited = since.elapsed();
                if waited < timeout
                    && let Some(last) = &state.last
                {
                    return Ok(last.clone());
                }
                if waited >= timeout {
                    tracing::warn!(
                        repository = %url,
                        waited_s = waited.as_secs(),
                        "the repository has not answered yet; not checking it again until it does"
                    );
                    return Err(format!(
                        "the repository has not answered for {} s",
                        waited.as_secs()
                    ));
                }
                return Err("the repository's first check is still running".to_owned());
            }
            state.in_flight_since = Some(Instant::now());
        }
        // Clears the flag however the measurement ends, a panic included.
        let in_flight = InFlight(self.state.clone());
        let measured = tokio::task::spawn_blocking(move || {
            let measured = measurement();
            in_flight.finish(measured.clone());
            measured
        });
        match tokio::time::timeout(timeout, measured).await {
            Ok(Ok(value)) => Ok(value),
            Ok(Err(error)) => Err(format!("the repository check failed: {error}")),
            Err(_) => {
                tracing::warn!(
                    repository = %url,
                    timeout_s = timeout.as_secs_f64(),
                    "the repository did not answer"
                );
                Err(format!(
                    "the repository did not answer within {} s",
                    timeout.as_secs_f64()
                ))
            }
        }
    }

    fn lock(&self) -> std::sync::MutexGuard<'_, GaugeState<T>> {
        self.state.lock().unwrap_or_else(PoisonError::into_inner)
    }
}

/// The measurement in flight of a [`Gauge`]; ends it when dropped.
struct InFlight<T>(Arc<Mutex<GaugeState<T>>>);

impl<T> InFlight<T> {
    /// Records the measured value; the flag is cleared as this is dropped.
    fn finish(self, value: T) {
        self.0.lock().unwrap_or_else(PoisonError::into_inner).last = Some(value);
    }
}

impl<T> Drop for InFlight<T> {
    fn drop(&mut self) {
        self.0
            .lock()
            .unwrap_or_else(PoisonError::into_inner)
            .in_flight_since = None;
    }
}

fn file_system_space(root: &Path) -> AgentResult<RepositorySpace> {
    let stats = rustix::fs::statvfs(root).map_err(|errno| {
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

    const WAIT: Duration = Duration::from_secs(10);

    #[tokio::test]
    async fn the_repository_is_measured_and_probed() {
        let tmp = tempfile::tempdir().expect("tempdir");
        let url = url::Url::from_file_path(tmp.path()).expect("absolute path");
        let repository = Repository::open(url.as_str(), &Default::default()).expect("file url");
        let gauge = RepositoryGauge::default();
        let check = gauge.check(&repository, "db1", WAIT).await;
        assert!(check.space.total_bytes > 0, "{check:?}");
        assert!(
            check.space.free_bytes <= check.space.total_bytes,
            "{check:?}"
        );
        assert!(check.probe.is_ok(), "{check:?}");
        assert_eq!(
            std::fs::read_dir(tmp.path().join(".probe/db1"))
                .expect("probe dir")
                .count(),
            0,
            "the probe file is gone"
        );
        let report = check.report(7);
        assert!(report.ok && report.error.is_empty() && report.checked_unix_ms == 7);

        let gone = Repository::open("file:///nonexistent/warden/repo", &Default::default())
            .expect("file url");
        let check = RepositoryGauge::default().check(&gone, "db1", WAIT).await;
        assert_eq!(check.space, RepositorySpace::default());
        assert!(!check.report(7).ok);
        let error = check.probe.expect_err("no such directory");
        assert!(
            error.contains("/nonexistent/warden/repo does not exist"),
            "{error}"
        );
    }

    #[tokio::test]
    async fn a_hanging_measurement_is_never_started_twice() {
        let gauge = Gauge::<RepositorySpace>::default();
        let space = |free_bytes| RepositorySpace {
            free_bytes,
            total_bytes: 100,
        };
        let started = Arc::new(std::sync::atomic::AtomicUsize::new(0));
        let counted = |answer: Option<RepositorySpace>| {
            let started = started.clone();
            move || {
                started.fetch_add(1, std::sync::atomic::Ordering::SeqCst);
                answer.expect("only counted, never run")
            }
        };
        assert_eq!(
            gauge
                .measure_with("r", WAIT, counted(Some(space(40))))
                .await,
            Ok(space(40))
        );

        // A repository that does not answer until the test lets it.
        let (answer, hanging) = std::sync::mpsc::channel::<()>();
        let hung = {
            let started = started.clone();
            move || {
                started.fetch_add(1, std::sync::atomic::Ordering::SeqCst);
                let _ = hanging.recv();
                space(30)
            }
        };
        let short = Duration::from_millis(50);
        let late = gauge.measure_with("r", short, hung).await;
        assert!(
            late.as_ref()
                .is_err_and(|e| e.contains("did not answer within")),
            "{late:?}"
        );
        // Reports keep coming, but no second thread is started while the first hangs: a
        // young measurement gives the last value, an overdue one says it is overdue.
        for _ in 0..20 {
            assert_eq!(
                gauge.measure_with("r", WAIT, counted(None)).await,
                Ok(space(40)),
                "the last measured value while the one in flight is young"
            );
            let overdue = gauge.measure_with("r", short, counted(None)).await;
            assert!(
                overdue
                    .as_ref()
                    .is_err_and(|e| e.contains("has not answered for")),
                "{overdue:?}"
            );
        }
        assert_eq!(started.load(std::sync::atomic::Ordering::SeqCst), 2);

        // Once it answers, its value is kept and the next report measures again.
        answer.send(()).expect("the measurement waits");
        let deadline = Instant::now() + WAIT;
        while gauge.lock().in_flight_since.is_some() {
            assert!(Instant::now() < deadline, "the measurement never ended");
            tokio::time::sleep(Duration::from_millis(5)).await;
        }
        assert_eq!(gauge.lock().last, Some(space(30)));
        assert_eq!(
            gauge
                .measure_with("r", WAIT, counted(Some(space(20))))
                .await,
            Ok(space(20))
        );
        assert_eq!(started.load(std::sync::atomic::Ordering::SeqCst), 3);
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
