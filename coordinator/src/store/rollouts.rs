//! Fleet rollouts: a migration applied to a selection of databases, wave after wave.

use sqlx::SqliteConnection;

use super::{OrderRecord, RolloutRecord, RolloutTargetRecord, Store, StoreResult, TargetState};

impl Store {
    pub async fn insert_rollout(
        tx: &mut SqliteConnection,
        rollout: &RolloutRecord,
    ) -> StoreResult<()> {
        sqlx::query(
            "INSERT INTO rollouts (id, state, selector, waves, requested_by, reason, emergency,
                                   skip_safety_backup, created_unix_ms, updated_unix_ms,
                                   finished_unix_ms, current_wave, wave_count, error,
                                   migrations_json, command)
             VALUES (?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?)",
        )
        .bind(&rollout.id)
        .bind(rollout.state.as_str())
        .bind(&rollout.selector)
        .bind(&rollout.waves)
        .bind(&rollout.requested_by)
        .bind(&rollout.reason)
        .bind(rollout.emergency)
        .bind(rollout.skip_safety_backup)
        .bind(rollout.created_unix_ms)
        .bind(rollout.updated_unix_ms)
        .bind(rollout.finished_unix_ms)
        .bind(rollout.current_wave)
        .bind(rollout.wave_count)
        .bind(&rollout.error)
        .bind(&rollout.migrations_json)
        .bind(&rollout.command)
        .execute(&mut *tx)
        .await?;
        Ok(())
    }

    /// Writes back the mutable fields of a rollout.
    pub async fn save_rollout(
        tx: &mut SqliteConnection,
        rollout: &RolloutRecord,
    ) -> StoreResult<()> {
        sqlx::query(
            "UPDATE rollouts SET state = ?, updated_unix_ms = ?, finished_unix_ms = ?,
                    current_wave = ?, error = ?
             WHERE id = ?",
        )
        .bind(rollout.state.as_str())
        .bind(rollout.updated_unix_ms)
        .bind(rollout.finished_unix_ms)
        .bind(rollout.current_wave)
        .bind(&rollout.error)
        .bind(&rollout.id)
        .execute(&mut *tx)
        .await?;
        Ok(())
    }

    pub async fn insert_rollout_target(
        tx: &mut SqliteConnection,
        target: &RolloutTargetRecord,
    ) -> StoreResult<()> {
        sqlx::query(
            "INSERT INTO rollout_targets (rollout_id, agent, database, position, wave, spec_json,
                                          order_id, state)
             VALUES (?, ?, ?, ?, ?, ?, ?, ?)",
        )
        .bind(&target.rollout_id)
        .bind(&target.agent)
        .bind(&target.database)
        .bind(target.position)
        .bind(target.wave)
        .bind(&target.spec_json)
        .bind(&target.order_id)
        .bind(target.state.as_str())
        .execute(&mut *tx)
        .await?;
        Ok(())
    }

    /// Records a target's order and state.
    pub async fn set_rollout_target(
        tx: &mut SqliteConnection,
        target: &RolloutTargetRecord,
    ) -> StoreResult<()> {
        sqlx::query(
            "UPDATE rollout_targets SET order_id = ?, state = ?
             WHERE rollout_id = ? AND agent = ? AND database = ?",
        )
        .bind(&target.order_id)
        .bind(target.state.as_str())
        .bind(&target.rollout_id)
        .bind(&target.agent)
        .bind(&target.database)
        .execute(&mut *tx)
        .await?;
        Ok(())
    }

    /// Marks every target of a rollout still waiting for its wave as skipped. Returns them.
    pub async fn skip_waiting_targets(
        tx: &mut SqliteConnection,
        rollout_id: &str,
    ) -> StoreResult<Vec<String>> {
        let rows: Vec<(String, String)> = sqlx::query_as(
            "UPDATE rollout_targets SET state = ? WHERE rollout_id = ? AND state = ?
             RETURNING agent, database",
        )
        .bind(TargetState::Skipped.as_str())
        .bind(rollout_id)
        .bind(TargetState::Waiting.as_str())
        .fetch_all(&mut *tx)
        .await?;
        let mut skipped: Vec<String> = rows
            .into_iter()
            .map(|(agent, database)| format!("{agent}/{database}"))
            .collect();
        skipped.sort();
        Ok(skipped)
    }

    pub async fn rollout(
        conn: &mut SqliteConnection,
        id: &str,
    ) -> StoreResult<Option<RolloutRecord>> {
        Ok(sqlx::query_as("SELECT * FROM rollouts WHERE id = ?")
            .bind(id)
            .fetch_optional(&mut *conn)
            .await?)
    }

    /// The newest `limit` rollouts, newest first.
    pub async fn rollouts(
        conn: &mut SqliteConnection,
        limit: i64,
    ) -> StoreResult<Vec<RolloutRecord>> {
        Ok(
            sqlx::query_as("SELECT * FROM rollouts ORDER BY created_unix_ms DESC, id DESC LIMIT ?")
                .bind(limit)
                .fetch_all(&mut *conn)
                .await?,
        )
    }

    /// The targets of a rollout in rollout order.
    pub async fn rollout_targets(
        conn: &mut SqliteConnection,
        rollout_id: &str,
    ) -> StoreResult<Vec<RolloutTargetRecord>> {
        Ok(
            sqlx::query_as("SELECT * FROM rollout_targets WHERE rollout_id = ? ORDER BY position")
                .bind(rollout_id)
                .fetch_all(&mut *conn)
                .await?,
        )
    }

    /// The orders of the rollout's targets that have one.
    pub async fn rollout_orders(
        conn: &mut SqliteConnection,
        rollout_id: &str,
    ) -> StoreResult<Vec<OrderRecord>> {
        Ok(sqlx::query_as(
            "SELECT o.* FROM orders o JOIN rollout_targets t ON t.order_id = o.id
             WHERE t.rollout_id = ? ORDER BY t.position",
        )
        .bind(rollout_id)
        .fetch_all(&mut *conn)
        .await?)
    }
}
