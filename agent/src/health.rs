//! The health executor: a quick look at one database from the agent's side of the network.
//!
//! A database the agent cannot reach is a failed order carrying the connection error (with
//! any password redacted), not a report with `connected = false`: the coordinator then shows
//! why, and the report fields are never half-filled.

use std::time::Instant;

use sqlx::Connection;
use tokio_util::sync::CancellationToken;
use warden_proto::v1;

use crate::error::AgentResult;
use crate::orders::{cancellable, elapsed_ms};
use crate::pg::{self, PgDatabase};

/// Collects a health report of `db`.
pub async fn run(db: &PgDatabase, cancel: &CancellationToken) -> AgentResult<v1::HealthReport> {
    cancellable(cancel, collect(db)).await
}

async fn collect(db: &PgDatabase) -> AgentResult<v1::HealthReport> {
    // Latency as an application sees it: a new connection plus one round trip.
    let started = Instant::now();
    let mut conn = db.connect().await?;
    sqlx::query("SELECT 1")
        .execute(&mut conn)
        .await
        .map_err(db.sql_error("cannot query"))?;
    let latency_ms = elapsed_ms(started);

    let server = pg::server_version(db, &mut conn).await?;
    let (size, tables, used, max, in_recovery): (i64, i64, i64, i32, bool) = sqlx::query_as(
        "SELECT pg_database_size(current_database()), \
                (SELECT count(*) FROM pg_class c JOIN pg_namespace n ON n.oid = c.relnamespace \
                 WHERE c.relkind IN ('r', 'p') \
                   AND n.nspname NOT IN ('pg_catalog', 'information_schema') \
                   AND n.nspname NOT LIKE 'pg\\_toast%' AND n.nspname NOT LIKE 'pg\\_temp\\_%'), \
                (SELECT count(*) FROM pg_stat_activity), \
                current_setting('max_connections')::int4, \
                pg_is_in_recovery()",
    )
    .fetch_one(&mut conn)
    .await
    .map_err(db.sql_error("cannot read the statistics of"))?;
    let _ = conn.close().await;
    Ok(v1::HealthReport {
        connected: true,
        latency_ms,
        server_version: server.text,
        database_size_bytes: u64::try_from(size).unwrap_or_default(),
        table_count: u32::try_from(tables).unwrap_or(u32::MAX),
        connections_used: u32::try_from(used).unwrap_or(u32::MAX),
        connections_max: u32::try_from(max).unwrap_or_default(),
        in_recovery,
    })
}
