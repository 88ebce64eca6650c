//! The coordinator's durable state: agents, their database inventory, orders, the artifact
//! catalog and the audit chain, in SQLite (one file, WAL, `synchronous=FULL`).
//!
//! Writes go through a single connection, so store transactions are serialized in-process:
//! the audit chain is appended inside the transaction of the change it records, and two
//! writers can never chain onto the same previous event. Reads use a separate pool and see
//! committed data only.

pub mod metrics;
mod records;
mod recovery;
mod rollouts;
mod security;

use std::str::FromStr;
use std::time::Duration;

use sqlx::pool::PoolConnection;
use sqlx::query_builder::Separated;
use sqlx::sqlite::{SqliteConnectOptions, SqliteJournalMode, SqlitePoolOptions, SqliteSynchronous};
use sqlx::{QueryBuilder, Sqlite, SqliteConnection, SqlitePool, Transaction};

pub use records::{
    AgentRecord, ArtifactRecord, DatabaseRecord, DrillRecord, InventoryDatabase, MigrateCommand,
    OrderRecord, RolloutRecord, RolloutState, RolloutTargetRecord, TargetState,
};

pub use security::{CertificateRecord, TokenRecord};

use crate::audit::{AuditEvent, GENESIS_HASH, NewAuditEvent};

/// A write transaction on the store. Audit events appended to it are chained and written
/// when it commits: one read of the chain's head and one insert however many there are, so
/// a transaction that records a thousand changes costs two statements for their events, not
/// two thousand. Nothing reads the chain inside a write transaction, so deferring the insert
/// changes no answer; the events are stamped when appended and chained in that order.
pub struct WriteTx {
    tx: Transaction<'static, Sqlite>,
    audit: Vec<(NewAuditEvent, i64)>,
}

impl std::ops::Deref for WriteTx {
    type Target = SqliteConnection;

    fn deref(&self) -> &SqliteConnection {
        &self.tx
    }
}

impl std::ops::DerefMut for WriteTx {
    fn deref_mut(&mut self) -> &mut SqliteConnection {
        &mut self.tx
    }
}

impl WriteTx {
    /// Writes the audit events appended so far, then commits.
    pub async fn commit(mut self) -> StoreResult<()> {
        let events = std::mem::take(&mut self.audit);
        Store::write_audit(&mut self.tx, events).await?;
        Ok(self.tx.commit().await?)
    }
}

#[derive(Debug, thiserror::Error)]
pub enum StoreError {
    #[error("store url {url:?} is not supported: use sqlite://PATH")]
    UnsupportedUrl { url: String },
    #[error("store error: {0}")]
    Database(#[from] sqlx::Error),
    #[error("store migration failed: {0}")]
    Migrate(#[from] sqlx::migrate::MigrateError),
    #[error("stored {what} is unreadable: {why}")]
    Corrupt { what: &'static str, why: String },
}

pub type StoreResult<T> = Result<T, StoreError>;

#[derive(Clone)]
pub struct Store {
    writer: SqlitePool,
    reader: SqlitePool,
}

impl Store {
    /// Opens (creating if needed) the store at `url` and applies pending migrations.
    pub async fn open(url: &str) -> StoreResult<Self> {
        if !url.starts_with("sqlite:") {
            return Err(StoreError::UnsupportedUrl {
                url: url.to_owned(),
            });
        }
        let options = SqliteConnectOptions::from_str(url)?
            .create_if_missing(true)
            .journal_mode(SqliteJournalMode::Wal)
            .synchronous(SqliteSynchronous::Full)
            .foreign_keys(true)
            .busy_timeout(Duration::from_secs(10));
        let writer = SqlitePoolOptions::new()
            .max_connections(1)
            .connect_with(options.clone())
            .await?;
        sqlx::migrate!("./migrations").run(&writer).await?;
        let reader = SqlitePoolOptions::new()
            .max_connections(4)
            .connect_with(options.read_only(true))
            .await?;
        Ok(Self { writer, reader })
    }

    /// A read-only connection: sees committed data and never waits for writers.
    pub async fn read(&self) -> StoreResult<PoolConnection<Sqlite>> {
        Ok(self.reader.acquire().await?)
    }

    /// Starts a write transaction; waits while another one is open.
    pub async fn begin(&self) -> StoreResult<WriteTx> {
        Ok(WriteTx {
            tx: self.writer.begin().await?,
            audit: Vec::new(),
        })
    }

    // ---- audit ----

    /// Appends `event` to the audit chain inside `tx`: it is stamped now and stored when `tx`
    /// commits, after the events appended before it.
    pub fn append_audit(tx: &mut WriteTx, event: NewAuditEvent) {
        tx.audit.push((event, warden_shared::now_unix_ms()));
    }

    /// Chains `events` after the newest stored event and inserts them in one statement.
    async fn write_audit(
        conn: &mut SqliteConnection,
        events: Vec<(NewAuditEvent, i64)>,
    ) -> StoreResult<()> {
        if events.is_empty() {
            return Ok(());
        }
        let last: Option<(i64, String)> =
            sqlx::query_as("SELECT seq, hash FROM audit_events ORDER BY seq DESC LIMIT 1")
                .fetch_optional(&mut *conn)
                .await?;
        let (mut prev_seq, mut prev_hash) = last.unwrap_or((0, GENESIS_HASH.to_owned()));
        let mut stored = Vec::with_capacity(events.len());
        for (event, at_unix_ms) in events {
            let event = AuditEvent::chain(event, prev_seq, &prev_hash, at_unix_ms);
            prev_seq = event.seq;
            prev_hash.clone_from(&event.hash);
            stored.push(event);
        }
        execute_rows(
            conn,
            "INSERT INTO audit_events (seq, at_unix_ms, actor, action, target, params_json, outcome, prev_hash, hash) ",
            "",
            9,
            &stored,
            |mut row, event| {
                row.push_bind(event.seq)
                    .push_bind(event.at_unix_ms)
                    .push_bind(event.actor.clone())
                    .push_bind(event.action.clone())
                    .push_bind(event.target.clone())
                    .push_bind(event.params_json.clone())
                    .push_bind(event.outcome.clone())
                    .push_bind(event.prev_hash.clone())
                    .push_bind(event.hash.clone());
            },
        )
        .await
    }

    /// Appends one event in its own transaction (for events that change nothing else, such as
    /// a refused operator call).
    pub async fn audit(&self, event: NewAuditEvent) -> StoreResult<()> {
        let mut tx = self.begin().await?;
        Self::append_audit(&mut tx, event);
        tx.commit().await
    }

    /// Returns up to `limit` events with seq greater than `after_seq`, oldest first.
    pub async fn list_audit(&self, after_seq: i64, limit: i64) -> StoreResult<Vec<AuditEvent>> {
        Ok(
            sqlx::query_as("SELECT * FROM audit_events WHERE seq > ? ORDER BY seq LIMIT ?")
                .bind(after_seq)
                .bind(limit)
                .fetch_all(&self.reader)
                .await?,
        )
    }

    // ---- agents and databases ----

    /// Records an agent that said Hello: its identity, a new session generation, online.
    /// Returns the new generation.
    pub async fn upsert_agent(tx: &mut SqliteConnection, agent: &AgentRecord) -> StoreResult<i64> {
        let (generation,): (i64,) = sqlx::query_as(
            "INSERT INTO agents (name, version, labels_json, repository, online, last_seen_unix_ms, generation)
             VALUES (?, ?, ?, ?, 1, ?, 1)
             ON CONFLICT (name) DO UPDATE SET
               version = excluded.version, labels_json = excluded.labels_json,
               repository = excluded.repository, online = 1,
               last_seen_unix_ms = excluded.last_seen_unix_ms,
               generation = agents.generation + 1
             RETURNING generation",
        )
        .bind(&agent.name)
        .bind(&agent.version)
        .bind(&agent.labels_json)
        .bind(&agent.repository)
        .bind(agent.last_seen_unix_ms)
        .fetch_one(&mut *tx)
        .await?;
        Ok(generation)
    }

    /// Marks an agent offline as of `last_seen_unix_ms`, unless a newer session (another
    /// `generation`) has replaced the one that ended. Returns whether it did.
    pub async fn set_agent_offline(
        tx: &mut SqliteConnection,
        name: &str,
        generation: i64,
        last_seen_unix_ms: i64,
    ) -> StoreResult<bool> {
        let done = sqlx::query(
            "UPDATE agents SET online = 0, last_seen_unix_ms = ? WHERE name = ? AND generation = ?",
        )
        .bind(last_seen_unix_ms)
        .bind(name)
        .bind(generation)
        .execute(&mut *tx)
        .await?;
        Ok(done.rows_affected() > 0)
    }

    /// Marks every agent offline as of now: at start no agent has a stream to this process
    /// yet. Counting their silence from now gives them a lease to reconnect before the
    /// orders they hold are declared lost.
    pub async fn mark_all_agents_offline(
        tx: &mut SqliteConnection,
        now_unix_ms: i64,
    ) -> StoreResult<u64> {
        let done =
            sqlx::query("UPDATE agents SET online = 0, last_seen_unix_ms = ? WHERE online = 1")
                .bind(now_unix_ms)
                .execute(&mut *tx)
                .await?;
        Ok(done.rows_affected())
    }

    /// Replaces an agent's database inventory; databases it no longer reports stay in the
    /// catalog (their artifacts do too) but are no longer present, and allow no commands.
    pub async fn replace_inventory(
        tx: &mut SqliteConnection,
        agent: &str,
        databases: &[InventoryDatabase],
    ) -> StoreResult<()> {
        sqlx::query(
            "UPDATE databases SET present = 0, migrate_commands_json = '[]' WHERE agent = ?",
        )
        .bind(agent)
        .execute(&mut *tx)
        .await?;
        for database in databases {
            let commands = serde_json::to_string(&database.migrate_commands)
                .unwrap_or_else(|_| "[]".to_owned());
            sqlx::query(
                "INSERT INTO databases (agent, name, labels_json, present, migrate_commands_json)
                 VALUES (?, ?, ?, 1, ?)
                 ON CONFLICT (agent, name) DO UPDATE SET labels_json = excluded.labels_json,
                    present = 1, migrate_commands_json = excluded.migrate_commands_json",
            )
            .bind(agent)
            .bind(&database.name)
            .bind(&database.labels_json)
            .bind(commands)
            .execute(&mut *tx)
            .await?;
        }
        Ok(())
    }

    /// The migration commands an agent allows for one of its databases.
    pub async fn migrate_commands(
        conn: &mut SqliteConnection,
        agent: &str,
        database: &str,
    ) -> StoreResult<Vec<MigrateCommand>> {
        let row: Option<(String,)> = sqlx::query_as(
            "SELECT migrate_commands_json FROM databases WHERE agent = ? AND name = ?",
        )
        .bind(agent)
        .bind(database)
        .fetch_optional(&mut *conn)
        .await?;
        let Some((json,)) = row else {
            return Ok(Vec::new());
        };
        serde_json::from_str(&json).map_err(|e| StoreError::Corrupt {
            what: "migration commands",
            why: format!("database {agent}/{database}: {e}"),
        })
    }

    pub async fn list_agents(&self) -> StoreResult<Vec<AgentRecord>> {
        Ok(sqlx::query_as(
            "SELECT a.*, (SELECT count(*) FROM databases d WHERE d.agent = a.name AND d.present = 1) AS database_count
             FROM agents a ORDER BY a.name",
        )
        .fetch_all(&self.reader)
        .await?)
    }

    pub async fn get_agent(&self, name: &str) -> StoreResult<Option<AgentRecord>> {
        Ok(sqlx::query_as(
            "SELECT a.*, (SELECT count(*) FROM databases d WHERE d.agent = a.name AND d.present = 1) AS database_count
             FROM agents a WHERE a.name = ?",
        )
        .bind(name)
        .fetch_optional(&self.reader)
        .await?)
    }

    /// Lists present databases (of one agent when given) with their newest complete artifact.
    pub async fn list_databases(&self, agent: Option<&str>) -> StoreResult<Vec<DatabaseRecord>> {
        Ok(sqlx::query_as(
            "SELECT d.agent, d.name, d.labels_json, a.online AS agent_online,
                    (SELECT x.id FROM artifacts x WHERE x.agent = d.agent AND x.database = d.name
                       AND x.state = 'complete' ORDER BY x.created_unix_ms DESC LIMIT 1) AS last_artifact_id,
                    (SELECT max(x.created_unix_ms) FROM artifacts x WHERE x.agent = d.agent
                       AND x.database = d.name AND x.state = 'complete') AS last_backup_unix_ms
             FROM databases d JOIN agents a ON a.name = d.agent
             WHERE d.present = 1 AND (? IS NULL OR d.agent = ?)
             ORDER BY d.agent, d.name",
        )
        .bind(agent)
        .bind(agent)
        .fetch_all(&self.reader)
        .await?)
    }

    /// Returns whether the agent currently reports this database.
    pub async fn database_present(&self, agent: &str, database: &str) -> StoreResult<bool> {
        let row: Option<(i64,)> =
            sqlx::query_as("SELECT 1 FROM databases WHERE agent = ? AND name = ? AND present = 1")
                .bind(agent)
                .bind(database)
                .fetch_optional(&self.reader)
                .await?;
        Ok(row.is_some())
    }

    // ---- orders ----

    /// Inserts new orders, many to a statement.
    pub async fn insert_orders(
        tx: &mut SqliteConnection,
        orders: &[&OrderRecord],
    ) -> StoreResult<()> {
        execute_rows(
            tx,
            "INSERT INTO orders (id, kind, agent, database, requested_by, reason, created_unix_ms,
                                 emergency, skip_safety_backup, not_before_unix_ms,
                                 state, attempts, updated_unix_ms, started_unix_ms,
                                 finished_unix_ms, phase, progress_bytes, progress_rate, error,
                                 result, safety_order_id, held_until_unix_ms, deadline_unix_ms,
                                 spec_json) ",
            "",
            24,
            orders,
            |mut row, order| {
                row.push_bind(order.id.clone())
                    .push_bind(order.kind.as_str())
                    .push_bind(order.agent.clone())
                    .push_bind(order.database.clone())
                    .push_bind(order.requested_by.clone())
                    .push_bind(order.reason.clone())
                    .push_bind(order.created_unix_ms)
                    .push_bind(order.emergency)
                    .push_bind(order.skip_safety_backup)
                    .push_bind(order.not_before_unix_ms);
                push_changing_fields(&mut row, order);
            },
        )
        .await
    }

    /// Writes back every mutable field of an order (its spec too: a migration learns its
    /// pre-migration backup just before it is dispatched).
    pub async fn save_order(tx: &mut SqliteConnection, order: &OrderRecord) -> StoreResult<()> {
        Self::save_orders(tx, &[order]).await
    }

    /// [`Store::save_order`] of many orders, many to a statement.
    pub async fn save_orders(
        tx: &mut SqliteConnection,
        orders: &[&OrderRecord],
    ) -> StoreResult<()> {
        execute_rows(
            tx,
            "UPDATE orders SET state = v.column2, attempts = v.column3, updated_unix_ms = v.column4,
                    started_unix_ms = v.column5, finished_unix_ms = v.column6, phase = v.column7,
                    progress_bytes = v.column8, progress_rate = v.column9, error = v.column10,
                    result = v.column11, safety_order_id = v.column12,
                    held_until_unix_ms = v.column13, deadline_unix_ms = v.column14,
                    spec_json = v.column15
             FROM (",
            ") AS v WHERE orders.id = v.column1",
            15,
            orders,
            |mut row, order| {
                row.push_bind(order.id.clone());
                push_changing_fields(&mut row, order);
            },
        )
        .await
    }

    /// Reads an order inside a write transaction (to change it).
    pub async fn order_for_update(
        tx: &mut SqliteConnection,
        id: &str,
    ) -> StoreResult<Option<OrderRecord>> {
        Ok(sqlx::query_as("SELECT * FROM orders WHERE id = ?")
            .bind(id)
            .fetch_optional(&mut *tx)
            .await?)
    }

    pub async fn get_order(&self, id: &str) -> StoreResult<Option<OrderRecord>> {
        Ok(sqlx::query_as("SELECT * FROM orders WHERE id = ?")
            .bind(id)
            .fetch_optional(&self.reader)
            .await?)
    }

    /// Lists orders, newest first, of one database when given.
    pub async fn list_orders(
        &self,
        database: Option<(&str, &str)>,
        limit: i64,
    ) -> StoreResult<Vec<OrderRecord>> {
        let (agent, name) = database.unzip();
        Ok(sqlx::query_as(
            "SELECT * FROM orders WHERE (? IS NULL OR (agent = ? AND database = ?))
             ORDER BY created_unix_ms DESC, id DESC LIMIT ?",
        )
        .bind(agent)
        .bind(agent)
        .bind(name)
        .bind(limit)
        .fetch_all(&self.reader)
        .await?)
    }

    /// Orders of one agent in any of `states`, oldest first.
    pub async fn orders_of_agent(
        tx: &mut SqliteConnection,
        agent: &str,
        states: &[warden_shared::OrderState],
    ) -> StoreResult<Vec<OrderRecord>> {
        let states: Vec<&str> = states.iter().map(|s| s.as_str()).collect();
        Ok(sqlx::query_as(
            "SELECT * FROM orders WHERE agent = ? AND state IN (SELECT value FROM json_each(?))
             ORDER BY created_unix_ms, id",
        )
        .bind(agent)
        .bind(serde_json::to_string(&states).unwrap_or_default())
        .fetch_all(&mut *tx)
        .await?)
    }

    /// Orders of the whole fleet in any of `states`, oldest first.
    pub async fn orders_in_states(
        tx: &mut SqliteConnection,
        states: &[warden_shared::OrderState],
    ) -> StoreResult<Vec<OrderRecord>> {
        let states: Vec<&str> = states.iter().map(|s| s.as_str()).collect();
        Ok(sqlx::query_as(
            "SELECT * FROM orders WHERE state IN (SELECT value FROM json_each(?))
             ORDER BY created_unix_ms, id",
        )
        .bind(serde_json::to_string(&states).unwrap_or_default())
        .fetch_all(&mut *tx)
        .await?)
    }

    /// Orders dispatched or running on any of `agents`, oldest first.
    pub async fn running_orders_of_agents(
        tx: &mut SqliteConnection,
        agents: &[&str],
    ) -> StoreResult<Vec<OrderRecord>> {
        Ok(sqlx::query_as(
            "SELECT * FROM orders WHERE state IN ('dispatched', 'running')
               AND agent IN (SELECT value FROM json_each(?))
             ORDER BY created_unix_ms, id",
        )
        .bind(serde_json::to_string(agents).unwrap_or_default())
        .fetch_all(&mut *tx)
        .await?)
    }

    /// How many backups are dispatched or running in the fleet.
    pub async fn running_backups(tx: &mut SqliteConnection) -> StoreResult<i64> {
        let (count,): (i64,) = sqlx::query_as(
            "SELECT count(*) FROM orders WHERE state IN ('dispatched', 'running') AND kind = 'backup'",
        )
        .fetch_one(&mut *tx)
        .await?;
        Ok(count)
    }

    /// Orders waiting to be dispatched, oldest first: queued, held, and lost ones that may be
    /// retried (idempotent kinds with attempts left); but none of `except`.
    pub async fn pending_orders_except(
        tx: &mut SqliteConnection,
        max_attempts: i64,
        except: &[&str],
    ) -> StoreResult<Vec<OrderRecord>> {
        let retried: Vec<&str> = warden_shared::OrderKind::ALL
            .into_iter()
            .filter(|kind| kind.is_idempotent())
            .map(|kind| kind.as_str())
            .collect();
        Ok(sqlx::query_as(
            "SELECT * FROM orders WHERE (state IN ('queued', 'held')
                OR (state = 'lost' AND kind IN (SELECT value FROM json_each(?)) AND attempts < ?))
               AND id NOT IN (SELECT value FROM json_each(?))
             ORDER BY created_unix_ms, id",
        )
        .bind(serde_json::to_string(&retried).unwrap_or_default())
        .bind(max_attempts)
        .bind(serde_json::to_string(except).unwrap_or_default())
        .fetch_all(&mut *tx)
        .await?)
    }

    /// Orders held by agents that have been offline since before `cutoff_unix_ms`.
    pub async fn orders_of_agents_offline_since(
        tx: &mut SqliteConnection,
        cutoff_unix_ms: i64,
    ) -> StoreResult<Vec<OrderRecord>> {
        Ok(sqlx::query_as(
            "SELECT o.* FROM orders o JOIN agents a ON a.name = o.agent
             WHERE o.state IN ('dispatched', 'running') AND a.online = 0 AND a.last_seen_unix_ms < ?
             ORDER BY o.created_unix_ms",
        )
        .bind(cutoff_unix_ms)
        .fetch_all(&mut *tx)
        .await?)
    }

    /// Orders still `dispatched` (not started) since before `cutoff_unix_ms`.
    pub async fn orders_dispatched_before(
        tx: &mut SqliteConnection,
        cutoff_unix_ms: i64,
    ) -> StoreResult<Vec<OrderRecord>> {
        Ok(sqlx::query_as(
            "SELECT * FROM orders WHERE state = 'dispatched' AND updated_unix_ms < ? ORDER BY created_unix_ms",
        )
        .bind(cutoff_unix_ms)
        .fetch_all(&mut *tx)
        .await?)
    }

    /// The newest `limit` migrations of one database that ended with a result from its agent,
    /// newest first.
    pub async fn finished_migrations(
        conn: &mut SqliteConnection,
        agent: &str,
        database: &str,
        limit: i64,
    ) -> StoreResult<Vec<OrderRecord>> {
        Ok(sqlx::query_as(
            "SELECT * FROM orders WHERE agent = ? AND database = ? AND kind = 'migrate'
               AND result IS NOT NULL AND state IN ('succeeded', 'failed', 'cancelled')
             ORDER BY finished_unix_ms DESC, id DESC LIMIT ?",
        )
        .bind(agent)
        .bind(database)
        .bind(limit)
        .fetch_all(&mut *conn)
        .await?)
    }

    /// Restores and migrations of one database other than `except` that an agent holds now,
    /// or that an agent had and that ended at or after `since_unix_ms`: those that may have
    /// changed the database since then. Oldest first; the caller tells destructive ones.
    pub async fn database_changes_since(
        tx: &mut SqliteConnection,
        agent: &str,
        database: &str,
        except: &str,
        since_unix_ms: i64,
    ) -> StoreResult<Vec<OrderRecord>> {
        Ok(sqlx::query_as(
            "SELECT * FROM orders WHERE agent = ? AND database = ? AND id != ?
               AND kind IN ('restore', 'migrate')
               AND (state IN ('dispatched', 'running')
                    OR (attempts > 0 AND state IN ('succeeded', 'failed', 'cancelled', 'lost')
                        AND finished_unix_ms >= ?))
             ORDER BY created_unix_ms, id",
        )
        .bind(agent)
        .bind(database)
        .bind(except)
        .bind(since_unix_ms)
        .fetch_all(&mut *tx)
        .await?)
    }

    /// Records the progress `agent` reports of its order `id`, without an audit event:
    /// progress is not a state change. Another agent's orders are not its to report on.
    pub async fn set_progress(
        &self,
        agent: &str,
        id: &str,
        phase: &str,
        bytes: i64,
        rate: f64,
    ) -> StoreResult<()> {
        sqlx::query(
            "UPDATE orders SET phase = ?, progress_bytes = ?, progress_rate = ?, updated_unix_ms = ?
             WHERE id = ? AND agent = ? AND state IN ('dispatched', 'running')",
        )
        .bind(phase)
        .bind(bytes)
        .bind(rate)
        .bind(warden_shared::now_unix_ms())
        .bind(id)
        .bind(agent)
        .execute(&self.writer)
        .await?;
        Ok(())
    }

    // ---- artifacts ----

    pub async fn insert_artifact(
        tx: &mut SqliteConnection,
        artifact: &ArtifactRecord,
    ) -> StoreResult<()> {
        sqlx::query(
            "INSERT INTO artifacts (id, agent, database, order_id, trigger, state, repository, path, sha256,
                                    size_bytes, raw_bytes, server_version, pg_dump_version, created_unix_ms,
                                    verified, manifest_json)
             VALUES (?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?)",
        )
        .bind(&artifact.id)
        .bind(&artifact.agent)
        .bind(&artifact.database)
        .bind(&artifact.order_id)
        .bind(&artifact.trigger)
        .bind(&artifact.state)
        .bind(&artifact.repository)
        .bind(&artifact.path)
        .bind(&artifact.sha256)
        .bind(artifact.size_bytes)
        .bind(artifact.raw_bytes)
        .bind(&artifact.server_version)
        .bind(&artifact.pg_dump_version)
        .bind(artifact.created_unix_ms)
        .bind(artifact.verified)
        .bind(&artifact.manifest_json)
        .execute(&mut *tx)
        .await?;
        Ok(())
    }

    pub async fn get_artifact(&self, id: &str) -> StoreResult<Option<ArtifactRecord>> {
        Ok(sqlx::query_as("SELECT * FROM artifacts WHERE id = ?")
            .bind(id)
            .fetch_optional(&self.reader)
            .await?)
    }

    /// Lists artifacts, newest first; only complete ones unless `include_all`.
    pub async fn list_artifacts(
        &self,
        database: Option<(&str, &str)>,
        include_all: bool,
    ) -> StoreResult<Vec<ArtifactRecord>> {
        let (agent, name) = database.unzip();
        Ok(sqlx::query_as(
            "SELECT * FROM artifacts WHERE (? IS NULL OR (agent = ? AND database = ?))
               AND (? OR state = 'complete')
             ORDER BY created_unix_ms DESC, id DESC",
        )
        .bind(agent)
        .bind(agent)
        .bind(name)
        .bind(include_all)
        .fetch_all(&self.reader)
        .await?)
    }

    /// Complete artifacts of every database, oldest first, for retention.
    pub async fn complete_artifacts(tx: &mut SqliteConnection) -> StoreResult<Vec<ArtifactRecord>> {
        Ok(sqlx::query_as(
            "SELECT * FROM artifacts WHERE state = 'complete' ORDER BY agent, database, created_unix_ms",
        )
        .fetch_all(&mut *tx)
        .await?)
    }

    /// Expired artifacts whose files no prune order is removing (none yet, or it failed).
    pub async fn expired_artifacts_to_remove(
        tx: &mut SqliteConnection,
    ) -> StoreResult<Vec<ArtifactRecord>> {
        Ok(sqlx::query_as(
            "SELECT a.* FROM artifacts a LEFT JOIN orders o ON o.id = a.prune_order_id
             WHERE a.state = 'expired'
               AND (o.id IS NULL OR o.state IN ('failed', 'cancelled', 'lost', 'expired'))
             ORDER BY a.agent, a.database, a.created_unix_ms",
        )
        .fetch_all(&mut *tx)
        .await?)
    }

    /// The artifact a backup order produced, if it produced one.
    pub async fn artifact_of_order(
        conn: &mut SqliteConnection,
        order_id: &str,
    ) -> StoreResult<Option<ArtifactRecord>> {
        Ok(sqlx::query_as(
            "SELECT * FROM artifacts WHERE order_id = ? ORDER BY created_unix_ms DESC LIMIT 1",
        )
        .bind(order_id)
        .fetch_optional(&mut *conn)
        .await?)
    }

    pub async fn artifact_state(
        tx: &mut SqliteConnection,
        id: &str,
    ) -> StoreResult<Option<String>> {
        let row: Option<(String,)> = sqlx::query_as("SELECT state FROM artifacts WHERE id = ?")
            .bind(id)
            .fetch_optional(&mut *tx)
            .await?;
        Ok(row.map(|r| r.0))
    }

    pub async fn expire_artifact(
        tx: &mut SqliteConnection,
        id: &str,
        at_unix_ms: i64,
        reason: &str,
    ) -> StoreResult<()> {
        sqlx::query(
            "UPDATE artifacts SET state = 'expired', expired_unix_ms = ?, expire_reason = ?
             WHERE id = ? AND state = 'complete'",
        )
        .bind(at_unix_ms)
        .bind(reason)
        .bind(id)
        .execute(&mut *tx)
        .await?;
        Ok(())
    }

    pub async fn set_prune_order(
        tx: &mut SqliteConnection,
        artifact_id: &str,
        order_id: &str,
    ) -> StoreResult<()> {
        sqlx::query("UPDATE artifacts SET prune_order_id = ? WHERE id = ?")
            .bind(order_id)
            .bind(artifact_id)
            .execute(&mut *tx)
            .await?;
        Ok(())
    }

    /// Marks an expired artifact's files removed. Returns whether it was expired.
    pub async fn mark_artifact_deleted(tx: &mut SqliteConnection, id: &str) -> StoreResult<bool> {
        let done = sqlx::query(
            "UPDATE artifacts SET state = 'deleted' WHERE id = ? AND state = 'expired'",
        )
        .bind(id)
        .execute(&mut *tx)
        .await?;
        Ok(done.rows_affected() == 1)
    }

    // ---- policy ----

    /// The policy in force: its version and document, if one was ever applied.
    pub async fn current_policy(&self) -> StoreResult<Option<(i64, String)>> {
        Ok(sqlx::query_as(
            "SELECT version, toml FROM policy_versions ORDER BY version DESC LIMIT 1",
        )
        .fetch_optional(&self.reader)
        .await?)
    }

    /// Stores a new policy version; returns its number.
    pub async fn insert_policy(
        tx: &mut SqliteConnection,
        actor: &str,
        toml: &str,
    ) -> StoreResult<i64> {
        let (version,): (i64,) = sqlx::query_as(
            "INSERT INTO policy_versions (version, at_unix_ms, actor, toml)
             VALUES ((SELECT COALESCE(MAX(version), 0) + 1 FROM policy_versions), ?, ?, ?)
             RETURNING version",
        )
        .bind(warden_shared::now_unix_ms())
        .bind(actor)
        .bind(toml)
        .fetch_one(&mut *tx)
        .await?;
        Ok(version)
    }

    /// The last slot each schedule fired.
    pub async fn schedule_slots(
        tx: &mut SqliteConnection,
    ) -> StoreResult<std::collections::HashMap<String, i64>> {
        let rows: Vec<(String, i64)> =
            sqlx::query_as("SELECT schedule, last_slot_unix_ms FROM schedule_state")
                .fetch_all(&mut *tx)
                .await?;
        Ok(rows.into_iter().collect())
    }

    pub async fn set_schedule_slot(
        tx: &mut SqliteConnection,
        schedule: &str,
        slot_unix_ms: i64,
    ) -> StoreResult<()> {
        sqlx::query(
            "INSERT INTO schedule_state (schedule, last_slot_unix_ms) VALUES (?, ?)
             ON CONFLICT (schedule) DO UPDATE SET last_slot_unix_ms = excluded.last_slot_unix_ms",
        )
        .bind(schedule)
        .bind(slot_unix_ms)
        .execute(&mut *tx)
        .await?;
        Ok(())
    }

    pub async fn remove_schedule_state(
        tx: &mut SqliteConnection,
        schedule: &str,
    ) -> StoreResult<()> {
        sqlx::query("DELETE FROM schedule_state WHERE schedule = ?")
            .bind(schedule)
            .execute(&mut *tx)
            .await?;
        Ok(())
    }

    /// Every database the fleet has known: agent, name, agent labels, own labels, present.
    pub async fn database_labels(
        tx: &mut SqliteConnection,
    ) -> StoreResult<Vec<(String, String, String, String, bool)>> {
        Ok(sqlx::query_as(
            "SELECT d.agent, d.name, a.labels_json, d.labels_json, d.present FROM databases d
             JOIN agents a ON a.name = d.agent ORDER BY d.agent, d.name",
        )
        .fetch_all(&mut *tx)
        .await?)
    }

    /// [`Store::database_labels`] of the given `(agent, database)` pairs only.
    pub async fn database_labels_of(
        tx: &mut SqliteConnection,
        databases: &[(String, String)],
    ) -> StoreResult<Vec<(String, String, String, String, bool)>> {
        Ok(sqlx::query_as(
            "SELECT d.agent, d.name, a.labels_json, d.labels_json, d.present FROM databases d
             JOIN agents a ON a.name = d.agent
             WHERE (d.agent, d.name) IN
               (SELECT json_extract(value, '$[0]'), json_extract(value, '$[1]') FROM json_each(?))",
        )
        .bind(serde_json::to_string(databases).unwrap_or_default())
        .fetch_all(&mut *tx)
        .await?)
    }
}

/// The most values bound to one statement: SQLite refuses more than 32,766.
const MAX_BINDS: usize = 32_000;

/// Runs `head VALUES (...), (...) tail` with a row of `columns` values bound by `push` for
/// each of `rows`, as few statements as the bind limit allows. The statements are not
/// cached: their length varies with the number of rows.
async fn execute_rows<T>(
    conn: &mut SqliteConnection,
    head: &str,
    tail: &str,
    columns: usize,
    rows: &[T],
    mut push: impl FnMut(Separated<'_, Sqlite, &'static str>, &T),
) -> StoreResult<()> {
    for chunk in rows.chunks((MAX_BINDS / columns).max(1)) {
        let mut query = QueryBuilder::<Sqlite>::new(head);
        query.push_values(chunk, &mut push);
        query.push(tail);
        query.build().persistent(false).execute(&mut *conn).await?;
    }
    Ok(())
}

/// Binds the fields of an order that change after it is created, in the order
/// [`Store::save_orders`] names them (its `v.column2` to `v.column15`).
fn push_changing_fields(row: &mut Separated<'_, Sqlite, &'static str>, order: &OrderRecord) {
    row.push_bind(order.state.as_str())
        .push_bind(order.attempts)
        .push_bind(order.updated_unix_ms)
        .push_bind(order.started_unix_ms)
        .push_bind(order.finished_unix_ms)
        .push_bind(order.phase.clone())
        .push_bind(order.progress_bytes)
        .push_bind(order.progress_rate)
        .push_bind(order.error.clone())
        .push_bind(order.result.clone())
        .push_bind(order.safety_order_id.clone())
        .push_bind(order.held_until_unix_ms)
        .push_bind(order.deadline_unix_ms)
        .push_bind(order.spec_json.clone());
}

/// A store in a temporary directory, for tests.
#[cfg(test)]
pub(crate) async fn temp_store() -> (tempfile::TempDir, Store) {
    let dir = tempfile::tempdir().expect("tempdir");
    let url = format!("sqlite://{}/warden.db", dir.path().display());
    let store = Store::open(&url).await.expect("store");
    (dir, store)
}

#[cfg(test)]
mod tests {
    use serde_json::json;

    use super::*;
    use crate::audit::{Actor, verify_chain};

    fn event(n: u32) -> NewAuditEvent {
        NewAuditEvent::new(
            &Actor::Operator("ops".to_owned()),
            &format!("test.event{n}"),
            "a1/app",
            json!({ "n": n, "password": "hunter2" }),
        )
    }

    #[tokio::test]
    async fn events_of_a_transaction_are_chained_as_if_appended_one_by_one() {
        let (_dir, store) = temp_store().await;
        store.audit(event(0)).await.expect("one event");
        let mut tx = store.begin().await.expect("tx");
        for n in 1..=4 {
            Store::append_audit(&mut tx, event(n));
        }
        tx.commit().await.expect("commit");
        // A transaction that never commits leaves no event behind.
        let mut dropped = store.begin().await.expect("tx");
        Store::append_audit(&mut dropped, event(99));
        drop(dropped);
        store.audit(event(5)).await.expect("one more");

        let stored = store.list_audit(0, 100).await.expect("list");
        let actions: Vec<&str> = stored.iter().map(|e| e.action.as_str()).collect();
        assert_eq!(
            actions,
            (0..=5)
                .map(|n| format!("test.event{n}"))
                .collect::<Vec<_>>()
        );
        assert!(stored.iter().all(|e| !e.params_json.contains("hunter2")));
        // Each event is exactly what appending it alone after the previous one would store.
        let mut prev = (0, GENESIS_HASH.to_owned());
        for (n, stored) in (0..).zip(&stored) {
            let alone = AuditEvent::chain(event(n), prev.0, &prev.1, stored.at_unix_ms);
            assert_eq!(&alone, stored);
            prev = (alone.seq, alone.hash);
        }
        let report = verify_chain(stored);
        assert_eq!((report.events_checked, report.broken), (6, None));
    }
}
