//! Direct access to the coordinator's SQLite store, the way an attacker with file access
//! would edit it: for tests that tamper with the audit chain.

use std::path::Path;
use std::time::Duration;

use sqlx::sqlite::SqliteConnectOptions;
use sqlx::{Connection, Row, SqliteConnection};

fn with_connection<T>(
    path: &Path,
    f: impl AsyncFnOnce(&mut SqliteConnection) -> Result<T, sqlx::Error>,
) -> T {
    let rt = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
        .expect("tokio runtime");
    rt.block_on(async {
        let opts = SqliteConnectOptions::new()
            .filename(path)
            .create_if_missing(false)
            .busy_timeout(Duration::from_secs(30));
        let mut conn = SqliteConnection::connect_with(&opts)
            .await
            .unwrap_or_else(|e| panic!("open sqlite store {}: {e}", path.display()));
        let out = f(&mut conn)
            .await
            .unwrap_or_else(|e| panic!("sqlite store {}: {e}", path.display()));
        let _ = conn.close().await;
        out
    })
}

/// Runs one statement and returns the number of rows it changed.
pub fn execute(path: &Path, sql: &str) -> u64 {
    let sql = sql.to_owned();
    with_connection(path, async move |conn| {
        Ok(sqlx::query(sqlx::AssertSqlSafe(sql))
            .execute(&mut *conn)
            .await?
            .rows_affected())
    })
}

/// Returns the first column of every row as text (NULL as `None`).
pub fn query_texts(path: &Path, sql: &str) -> Vec<Option<String>> {
    let sql = sql.to_owned();
    with_connection(path, async move |conn| {
        let rows = sqlx::query(sqlx::AssertSqlSafe(sql))
            .fetch_all(&mut *conn)
            .await?;
        rows.iter()
            .map(|r| r.try_get::<Option<String>, _>(0))
            .collect::<Result<Vec<_>, _>>()
    })
}

/// Returns the first column of every row as an integer.
pub fn query_ints(path: &Path, sql: &str) -> Vec<i64> {
    let sql = sql.to_owned();
    with_connection(path, async move |conn| {
        let rows = sqlx::query(sqlx::AssertSqlSafe(sql))
            .fetch_all(&mut *conn)
            .await?;
        rows.iter().map(|r| r.try_get::<i64, _>(0)).collect()
    })
}

/// Quotes an SQLite string literal.
pub fn sql_literal(value: &str) -> String {
    format!("'{}'", value.replace('\'', "''"))
}
