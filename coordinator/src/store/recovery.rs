//! Restore drills and what they prove about artifacts.

use sqlx::SqliteConnection;

use super::{ArtifactRecord, DrillRecord, Store, StoreResult};

/// How many drills per database the RTO report looks at.
pub const RECENT_DRILLS: i64 = 10;

impl Store {
    pub async fn insert_drill(tx: &mut SqliteConnection, drill: &DrillRecord) -> StoreResult<()> {
        sqlx::query(
            "INSERT OR REPLACE INTO drills (order_id, agent, database, artifact_id, finished_unix_ms,
                                            passed, restore_ms, raw_bytes, error, phases_json)
             VALUES (?, ?, ?, ?, ?, ?, ?, ?, ?, ?)",
        )
        .bind(&drill.order_id)
        .bind(&drill.agent)
        .bind(&drill.database)
        .bind(&drill.artifact_id)
        .bind(drill.finished_unix_ms)
        .bind(drill.passed)
        .bind(drill.restore_ms)
        .bind(drill.raw_bytes)
        .bind(&drill.error)
        .bind(&drill.phases_json)
        .execute(&mut *tx)
        .await?;
        Ok(())
    }

    /// Records that a drill restored the artifact: it is verified.
    pub async fn mark_artifact_drilled(
        tx: &mut SqliteConnection,
        id: &str,
        at_unix_ms: i64,
    ) -> StoreResult<()> {
        sqlx::query(
            "UPDATE artifacts SET verified = 1, drilled_unix_ms = ? WHERE id = ? AND state = 'complete'",
        )
            .bind(at_unix_ms)
            .bind(id)
            .execute(&mut *tx)
            .await?;
        Ok(())
    }

    /// Moves a complete artifact to `corrupt`; returns whether it was complete.
    pub async fn mark_artifact_corrupt(
        tx: &mut SqliteConnection,
        id: &str,
        reason: &str,
    ) -> StoreResult<bool> {
        let done = sqlx::query(
            "UPDATE artifacts SET state = 'corrupt', verified = 0, corrupt_reason = ?
             WHERE id = ? AND state = 'complete'",
        )
        .bind(reason)
        .bind(id)
        .execute(&mut *tx)
        .await?;
        Ok(done.rows_affected() > 0)
    }

    /// The newest [`RECENT_DRILLS`] drills of every database, newest first.
    pub async fn recent_drills(&self) -> StoreResult<Vec<DrillRecord>> {
        Ok(sqlx::query_as(
            "SELECT order_id, agent, database, artifact_id, finished_unix_ms, passed, restore_ms,
                    raw_bytes, error, phases_json
             FROM (SELECT *, ROW_NUMBER() OVER (PARTITION BY agent, database
                                                ORDER BY finished_unix_ms DESC) AS n
                   FROM drills)
             WHERE n <= ?
             ORDER BY finished_unix_ms DESC",
        )
        .bind(RECENT_DRILLS)
        .fetch_all(&self.reader)
        .await?)
    }

    /// The newest complete artifact of one database.
    pub async fn newest_complete_artifact(
        conn: &mut SqliteConnection,
        agent: &str,
        database: &str,
    ) -> StoreResult<Option<ArtifactRecord>> {
        Ok(sqlx::query_as(
            "SELECT * FROM artifacts WHERE agent = ? AND database = ? AND state = 'complete'
             ORDER BY created_unix_ms DESC, id DESC LIMIT 1",
        )
        .bind(agent)
        .bind(database)
        .fetch_optional(&mut *conn)
        .await?)
    }

    /// The newest complete artifact of every database that has one.
    pub async fn newest_complete_artifacts(&self) -> StoreResult<Vec<ArtifactRecord>> {
        Ok(sqlx::query_as(
            "SELECT * FROM artifacts a
             WHERE a.state = 'complete'
               AND a.id = (SELECT b.id FROM artifacts b
                           WHERE b.agent = a.agent AND b.database = a.database
                             AND b.state = 'complete'
                           ORDER BY b.created_unix_ms DESC, b.id DESC LIMIT 1)",
        )
        .fetch_all(&self.reader)
        .await?)
    }
}
