//! The drill executor: proves an artifact restorable by restoring it into a scratch database
//! on the server of the order's database (see [`crate::copy`]), verifying its row counts,
//! running the policy's SQL checks in it, and dropping it again, timing every phase.
//!
//! The source database is never touched: everything happens in the scratch database,
//! `warden_drill_<h>_<t>` with `<h>` from the agent's name and `<t>` from the artifact id.
//! The scratch database is dropped whatever happened, cancellation included; one that a
//! crash left behind is dropped the next time the agent starts
//! ([`drop_leftover_scratch_databases`]). Only names with this agent's `<h>` are ever
//! dropped, because agents may share a server.

use std::collections::HashSet;
use std::sync::{Mutex, PoisonError};
use std::time::{Duration, Instant};

use futures::future::join_all;
use sha2::{Digest, Sha256};
use sqlx::postgres::{PgConnection, PgRow};
use sqlx::{AssertSqlSafe, Column, Connection, Row, TypeInfo};
use tokio_util::sync::CancellationToken;
use warden_proto::v1;

use crate::copy::{self, ArtifactRef, CopyPlan, InTheWay, phase};
use crate::error::{AgentError, AgentResult};
use crate::orders::{AgentContext, OrderTarget, cancellable};
use crate::pg::{self, PgDatabase};
use crate::progress::ProgressReporter;

/// How long the startup cleanup waits for one server.
const STARTUP_CLEANUP_TIMEOUT: Duration = Duration::from_secs(10);

/// Runs a drill of the artifact of `params` on the server of `target`.
pub async fn run(
    ctx: &AgentContext,
    target: &OrderTarget,
    order_id: &str,
    params: &v1::DrillParams,
    progress: &ProgressReporter,
    cancel: &CancellationToken,
) -> AgentResult<v1::DrillOutcome> {
    let scratch = scratch_database_name(&ctx.config.name, &params.artifact_id);
    // Two drills of one artifact would share the scratch name, and each would drop the
    // other's copy as a leftover.
    let _claim = ctx.drills.claim(&scratch).ok_or_else(|| {
        AgentError::InvalidOrder(format!(
            "a drill of artifact {} is already running on agent {} (scratch database {scratch:?}); \
             try again when it has finished",
            params.artifact_id, ctx.config.name
        ))
    })?;
    let plan = CopyPlan::new(ctx, target, scratch.clone(), InTheWay::DropLeftover);
    tracing::info!(
        %order_id,
        database = %target.db.label,
        artifact_id = %params.artifact_id,
        %scratch,
        checks = params.checks.len(),
        "drill started"
    );
    let staged = copy::staging_file(&ctx.staging_dir, order_id);
    let mut created = None;
    let mut phases = Vec::new();

    let drilled = cancellable(cancel, async {
        let restored = copy::restore_copy(
            ctx,
            &plan,
            &ArtifactRef::from(params),
            &staged,
            progress,
            &mut created,
            &mut phases,
        )
        .await?;
        let started = Instant::now();
        let checks = run_checks(
            &plan.copy_db(),
            &params.checks,
            ctx.config.drill_check_timeout,
        )
        .await?;
        copy::record(&mut phases, phase::CHECKS, started);
        Ok((restored, checks))
    })
    .await;
    copy::remove_staged(&staged).await;

    // Cleanup runs whatever happened, and after a cancel: the copy must not stay behind.
    let started = Instant::now();
    let cleaned = match &created {
        Some(name) => copy::drop_database(&plan, name).await,
        None => Ok(()),
    };
    copy::record(&mut phases, phase::CLEANUP, started);

    let (restored, checks) = match drilled {
        Ok(drilled) => drilled,
        Err(error) => {
            if let Err(cleanup) = cleaned {
                tracing::error!(database = %target.db.label, %scratch, error = %cleanup, "cannot drop the scratch database of a failed drill; the agent drops it when it restarts");
            }
            return Err(error);
        }
    };
    let outcome = v1::DrillOutcome {
        scratch_database: scratch,
        tables_verified: restored.tables_verified,
        rows_verified: restored.rows_verified,
        restore_millis: restore_millis(&phases),
        raw_bytes: restored.raw_bytes,
        phases,
        checks,
    };
    tracing::info!(
        %order_id,
        database = %target.db.label,
        restore_millis = outcome.restore_millis,
        rows_verified = outcome.rows_verified,
        checks_passed = outcome.checks.iter().filter(|c| c.passed).count(),
        checks_failed = outcome.checks.iter().filter(|c| !c.passed).count(),
        "drill finished"
    );
    conclude(outcome, cleaned)
}

/// Judges a drill that restored its copy and ran its checks: it passed if every check passed
/// and its scratch database is gone. A failed drill keeps its outcome (timings and checks) in
/// the error, for the coordinator.
fn conclude(outcome: v1::DrillOutcome, cleaned: AgentResult<()>) -> AgentResult<v1::DrillOutcome> {
    match cleaned {
        Err(error) => Err(AgentError::DrillCleanup {
            outcome: Box::new(outcome),
            reason: error.to_string(),
        }),
        Ok(()) if outcome.checks.iter().all(|check| check.passed) => Ok(outcome),
        Ok(()) => Err(AgentError::DrillChecksFailed {
            outcome: Box::new(outcome),
        }),
    }
}

/// Prefix of every drill's scratch database, whichever agent's.
pub const DRILL_PREFIX: &str = "warden_drill_";

/// Returns the prefix of the scratch databases of agent `agent`: [`DRILL_PREFIX`] and the
/// first 8 hex digits of the sha256 of its name (agent names may be longer than a database
/// name allows, and hold characters that would need quoting).
pub fn scratch_prefix(agent: &str) -> String {
    let hash = hex::encode(Sha256::digest(agent.as_bytes()));
    format!("{DRILL_PREFIX}{}_", &hash[..8])
}

/// Returns the scratch database of a drill of `artifact_id` by agent `agent`.
pub fn scratch_database_name(agent: &str, artifact_id: &str) -> String {
    format!(
        "{}{}",
        scratch_prefix(agent),
        copy::short_artifact_id(artifact_id)
    )
}

/// Returns the time to a usable copy: every phase but cleanup. This is the measured RTO.
fn restore_millis(phases: &[v1::PhaseTiming]) -> u64 {
    phases
        .iter()
        .filter(|p| p.phase != phase::CLEANUP)
        .map(|p| p.millis)
        .sum()
}

/// The scratch databases of the drills running in this agent process.
#[derive(Debug, Default)]
pub struct RunningDrills(Mutex<HashSet<String>>);

impl RunningDrills {
    /// Claims scratch database `name` until the claim is dropped; `None` while another drill
    /// holds it.
    fn claim(&self, name: &str) -> Option<ScratchClaim<'_>> {
        let mut names = self.0.lock().unwrap_or_else(PoisonError::into_inner);
        names.insert(name.to_owned()).then(|| ScratchClaim {
            drills: self,
            name: name.to_owned(),
        })
    }
}

/// A scratch database name in use by one drill.
struct ScratchClaim<'a> {
    drills: &'a RunningDrills,
    name: String,
}

impl Drop for ScratchClaim<'_> {
    fn drop(&mut self) {
        let mut names = self.drills.0.lock().unwrap_or_else(PoisonError::into_inner);
        names.remove(&self.name);
    }
}

/// Runs every check in `copy` (a drill's restored copy, or a database just migrated), each
/// in its own read-only transaction and for at most `timeout`, and returns their results.
/// Only failing to reach the database at all is an error; a check that fails is a result.
pub(crate) async fn run_checks(
    copy: &PgDatabase,
    checks: &[v1::DrillCheck],
    timeout: Duration,
) -> AgentResult<Vec<v1::CheckResult>> {
    if checks.is_empty() {
        return Ok(Vec::new());
    }
    let mut conn = copy.connect().await?;
    let mut results = Vec::with_capacity(checks.len());
    for check in checks {
        let verdict = run_check(copy, &mut conn, &check.sql, timeout).await;
        if let Err(why) = &verdict {
            tracing::warn!(database = %copy.label, check = %check.name, %why, "check did not pass");
        }
        results.push(v1::CheckResult {
            name: check.name.clone(),
            passed: verdict.is_ok(),
            error: verdict.err().unwrap_or_default(),
        });
    }
    let _ = conn.close().await;
    Ok(results)
}

/// Runs one check, cancelled by the server after `timeout`; `Err` says why it did not pass,
/// with any password redacted.
async fn run_check(
    copy: &PgDatabase,
    conn: &mut PgConnection,
    sql: &str,
    timeout: Duration,
) -> Result<(), String> {
    // The server's own message says it best; sqlx adds where in the server's sources it
    // was raised.
    let sql_error = |e: sqlx::Error| {
        let text = match e.as_database_error() {
            Some(error) => error.message().to_owned(),
            None => e.to_string(),
        };
        format!("SQL error: {}", copy.url.redact(&text))
    };
    // Read-only: a check looks at the copy, and must not change anything on the server. As a
    // prepared statement it is also exactly one statement.
    let mut tx = conn
        .begin_with("BEGIN READ ONLY")
        .await
        .map_err(sql_error)?;
    // SET LOCAL: the limit ends with the transaction. A slow check must not hold the drill,
    // and its scratch database, for ever.
    let limited = sqlx::query("SELECT set_config('statement_timeout', $1, true)")
        .bind(format!("{}ms", timeout.as_millis()))
        .execute(&mut *tx)
        .await;
    let rows = match limited {
        Ok(_) => {
            sqlx::query(AssertSqlSafe(sql.to_owned()))
                .fetch_all(&mut *tx)
                .await
        }
        Err(error) => Err(error),
    };
    let _ = tx.rollback().await;
    let rows = rows.map_err(|e| {
        if is_statement_timeout(&e) {
            format!(
                "did not finish within {} and was cancelled; make the check faster or raise \
                 drill_check_timeout in the agent's configuration",
                humantime::format_duration(timeout)
            )
        } else {
            sql_error(e)
        }
    })?;
    let answer: Vec<Vec<CheckValue>> = rows.iter().map(check_values).collect();
    verdict(&answer)
}

/// Returns whether `error` is the server cancelling a statement for `statement_timeout`
/// (SQLSTATE 57014 is also a cancel by request, which says so in its message).
fn is_statement_timeout(error: &sqlx::Error) -> bool {
    error.as_database_error().is_some_and(|e| {
        e.code().as_deref() == Some("57014") && e.message().contains("statement timeout")
    })
}

/// One value in the answer of a check.
#[derive(Debug, Clone, PartialEq, Eq)]
enum CheckValue {
    Bool(Option<bool>),
    /// A value of another type, by the server's type name.
    Other(String),
}

fn check_values(row: &PgRow) -> Vec<CheckValue> {
    row.columns()
        .iter()
        .map(|column| {
            let type_name = column.type_info().name();
            if type_name == "BOOL"
                && let Ok(value) = row.try_get::<Option<bool>, _>(column.ordinal())
            {
                CheckValue::Bool(value)
            } else {
                CheckValue::Other(type_name.to_owned())
            }
        })
        .collect()
}

/// Judges a check's answer: it passes on exactly one row holding exactly one `true`.
fn verdict(rows: &[Vec<CheckValue>]) -> Result<(), String> {
    const SHAPE: &str = "a check must return one row with one boolean";
    let row = match rows {
        [row] => row,
        [] => return Err(format!("returned no rows; {SHAPE}")),
        _ => return Err(format!("returned {} rows; {SHAPE}", rows.len())),
    };
    match row.as_slice() {
        [CheckValue::Bool(Some(true))] => Ok(()),
        [CheckValue::Bool(Some(false))] => Err("returned false".to_owned()),
        [CheckValue::Bool(None)] => Err("returned NULL, not true".to_owned()),
        [CheckValue::Other(type_name)] => {
            Err(format!("returned a value of type {type_name}; {SHAPE}"))
        }
        columns => Err(format!("returned {} columns; {SHAPE}", columns.len())),
    }
}

/// Drops every scratch database this agent's drills left behind (a crash or kill during a
/// drill) on the servers of the configured databases, and returns their names. Each server
/// is cleaned once, all at the same time, each within [`STARTUP_CLEANUP_TIMEOUT`]; a server
/// that cannot be reached is logged and skipped, never fatal. Runs before the agent takes
/// orders, so no drill of this process can be running.
pub async fn drop_leftover_scratch_databases(ctx: &AgentContext) -> Vec<String> {
    let prefix = scratch_prefix(&ctx.config.name);
    let mut servers = Vec::new();
    let mut seen = HashSet::new();
    for entry in &ctx.config.databases {
        match ctx.target(&entry.name) {
            Ok(target) => {
                let maintenance = target.db.sibling(&ctx.config.maintenance_db);
                // Databases on one server, reached alike, share their maintenance URL.
                if seen.insert(maintenance.url.without_password().to_owned()) {
                    servers.push(maintenance);
                }
            }
            Err(error) => {
                tracing::warn!(database = %entry.name, %error, "cannot look for leftover drill databases")
            }
        }
    }
    let cleaned = join_all(servers.iter().map(|maintenance| async {
        let dropped =
            tokio::time::timeout(STARTUP_CLEANUP_TIMEOUT, drop_scratch_on(maintenance, &prefix))
                .await
                .unwrap_or_else(|_| {
                    Err(AgentError::Postgres {
                        context: format!("cannot look for leftover drill databases via {}", maintenance.label),
                        message: format!(
                            "no answer within {}s",
                            STARTUP_CLEANUP_TIMEOUT.as_secs()
                        ),
                    })
                });
        dropped.unwrap_or_else(|error| {
            tracing::warn!(server = %maintenance.label, %error, "cannot drop leftover drill databases; trying again at the next start");
            Vec::new()
        })
    }))
    .await;
    cleaned.into_iter().flatten().collect()
}

/// Drops the databases whose name starts with `prefix` on the server of `maintenance`.
async fn drop_scratch_on(maintenance: &PgDatabase, prefix: &str) -> AgentResult<Vec<String>> {
    let mut conn = maintenance.connect().await?;
    let names: Vec<String> = sqlx::query_scalar("SELECT datname::text FROM pg_database")
        .fetch_all(&mut conn)
        .await
        .map_err(maintenance.sql_error("cannot list the databases of"))?;
    let mut dropped = Vec::new();
    for name in names.into_iter().filter(|n| n.starts_with(prefix)) {
        pg::drop_database(maintenance, &mut conn, &name).await?;
        tracing::info!(server = %maintenance.label, database = %name, "dropped a leftover drill database");
        dropped.push(name);
    }
    let _ = conn.close().await;
    Ok(dropped)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn scratch_names_carry_the_agent_hash_and_the_artifact_tail() {
        let name = scratch_database_name("db1", "0191f3a2-7c4b-7d2e-9a1b-4c5d6e7f8a9b");
        let hash = hex::encode(Sha256::digest(b"db1"));
        assert_eq!(name, format!("warden_drill_{}_4c5d6e7f8a9b", &hash[..8]));
        assert!(name.starts_with(&scratch_prefix("db1")));
        assert!(!name.starts_with(&scratch_prefix("db2")));
        // The longest agent name and any artifact id still give a name PostgreSQL keeps.
        let longest = scratch_database_name(&"a".repeat(63), &"f".repeat(200));
        assert!(longest.len() < 63, "{longest}");
        warden_shared::validate_database_name(&longest).expect("a valid database name");
    }

    #[test]
    fn restore_time_is_every_phase_but_cleanup() {
        let phases: Vec<v1::PhaseTiming> = [
            (phase::FETCH, 1),
            (phase::VERIFY_CHECKSUM, 20),
            (phase::DECOMPRESS, 300),
            (phase::PG_RESTORE, 4000),
            (phase::VERIFY_ROWS, 50000),
            (phase::CHECKS, 600000),
            (phase::CLEANUP, 7000000),
        ]
        .into_iter()
        .map(|(phase, millis)| v1::PhaseTiming {
            phase: phase.to_owned(),
            millis,
        })
        .collect();
        assert_eq!(restore_millis(&phases), 654321);
    }

    #[test]
    fn a_drill_passes_only_with_every_check_passed_and_its_scratch_database_gone() {
        let check = |passed: bool| v1::CheckResult {
            name: "c".to_owned(),
            passed,
            error: if passed { "" } else { "returned false" }.to_owned(),
        };
        let outcome = |passed: bool| v1::DrillOutcome {
            scratch_database: "warden_drill_x_1".to_owned(),
            restore_millis: 42,
            phases: vec![v1::PhaseTiming {
                phase: phase::CLEANUP.to_owned(),
                millis: 7,
            }],
            checks: vec![check(true), check(passed)],
            ..v1::DrillOutcome::default()
        };
        let stuck = || {
            Err(AgentError::Postgres {
                context: "cannot drop database \"warden_drill_x_1\"".to_owned(),
                message: "server closed the connection".to_owned(),
            })
        };

        assert_eq!(
            conclude(outcome(true), Ok(())).expect("passed"),
            outcome(true)
        );
        match conclude(outcome(false), Ok(())) {
            Err(AgentError::DrillChecksFailed { outcome: kept }) => {
                assert_eq!(*kept, outcome(false))
            }
            other => panic!("expected DrillChecksFailed, got {other:?}"),
        }
        for passed in [true, false] {
            match conclude(outcome(passed), stuck()) {
                Err(AgentError::DrillCleanup {
                    outcome: kept,
                    reason,
                }) => {
                    assert_eq!(*kept, outcome(passed), "the timings and checks are kept");
                    assert!(reason.contains("server closed the connection"), "{reason}");
                }
                other => panic!("expected DrillCleanup, got {other:?}"),
            }
        }
    }

    #[test]
    fn a_check_passes_only_on_one_true() {
        use CheckValue::{Bool, Other};
        assert_eq!(verdict(&[vec![Bool(Some(true))]]), Ok(()));
        for (answer, why) in [
            (vec![vec![Bool(Some(false))]], "returned false"),
            (vec![vec![Bool(None)]], "returned NULL, not true"),
            (
                vec![],
                "returned no rows; a check must return one row with one boolean",
            ),
            (
                vec![vec![Bool(Some(true))], vec![Bool(Some(true))]],
                "returned 2 rows; a check must return one row with one boolean",
            ),
            (
                vec![vec![Bool(Some(true)), Bool(Some(true))]],
                "returned 2 columns; a check must return one row with one boolean",
            ),
            (
                vec![vec![]],
                "returned 0 columns; a check must return one row with one boolean",
            ),
            (
                vec![vec![Other("INT4".to_owned())]],
                "returned a value of type INT4; a check must return one row with one boolean",
            ),
        ] {
            assert_eq!(verdict(&answer), Err(why.to_owned()), "{answer:?}");
        }
    }

    #[test]
    fn a_scratch_database_is_claimed_by_one_drill_at_a_time() {
        let drills = RunningDrills::default();
        let first = drills.claim("warden_drill_x_1").expect("free");
        assert!(drills.claim("warden_drill_x_1").is_none());
        let other = drills.claim("warden_drill_x_2").expect("another artifact");
        drop(first);
        assert!(drills.claim("warden_drill_x_1").is_some());
        drop(other);
    }
}
