//! Aggregates of the store for `/metrics`: agents, orders by kind and state, run times of
//! succeeded orders, and the bytes of the backup catalog. Each is one aggregate query, so a
//! scrape costs the same however long the order history grows.

use std::str::FromStr;

use sqlx::Row;
use warden_shared::{OrderKind, OrderState};

use super::{Store, StoreError, StoreResult};

/// The kinds whose run time is measured: the ones an RTO depends on.
const TIMED_KINDS: [OrderKind; 3] = [OrderKind::Backup, OrderKind::Restore, OrderKind::Drill];

/// What the store knows for `/metrics`.
#[derive(Debug, Clone, PartialEq)]
pub struct StoreMetrics {
    pub agents_total: u64,
    pub agents_online: u64,
    /// Every kind and state, zero included: a series exists before its first order.
    pub orders: Vec<(OrderKind, OrderState, u64)>,
    /// Run times (start to end) of succeeded backups, restores and drills, one entry per kind.
    pub durations: Vec<(OrderKind, DurationBuckets)>,
    /// Compressed bytes of every complete artifact.
    pub complete_backup_bytes: u64,
    /// Compressed size of each database's newest complete artifact, by `AGENT/DB`.
    pub newest_backup_bytes: Vec<(String, u64)>,
}

/// Run times of one kind, bucketed by the bounds given to [`Store::metrics`].
#[derive(Debug, Clone, Default, PartialEq)]
pub struct DurationBuckets {
    /// Orders that took at most each bound, in the order of the bounds (so cumulative).
    pub at_most: Vec<u64>,
    pub sum_seconds: f64,
    pub count: u64,
}

impl Store {
    /// Reads the aggregates of [`StoreMetrics`]; run times are counted per upper bound of
    /// `duration_bounds` (seconds, ascending).
    pub async fn metrics(&self, duration_bounds: &[f64]) -> StoreResult<StoreMetrics> {
        let (agents_total, agents_online): (i64, i64) =
            sqlx::query_as("SELECT count(*), coalesce(sum(online), 0) FROM agents")
                .fetch_one(&self.reader)
                .await?;

        let counted: Vec<(String, String, i64)> =
            sqlx::query_as("SELECT kind, state, count(*) FROM orders GROUP BY kind, state")
                .fetch_all(&self.reader)
                .await?;
        let mut counts = Vec::with_capacity(counted.len());
        for (kind, state, count) in counted {
            counts.push((
                parse::<OrderKind>(&kind)?,
                parse::<OrderState>(&state)?,
                count,
            ));
        }
        let orders = OrderKind::ALL
            .iter()
            .flat_map(|&kind| OrderState::ALL.iter().map(move |&state| (kind, state)))
            .map(|(kind, state)| {
                let count = counts
                    .iter()
                    .find(|(k, s, _)| *k == kind && *s == state)
                    .map_or(0, |(_, _, count)| *count);
                (kind, state, non_negative(count))
            })
            .collect();

        let durations = self.durations(duration_bounds).await?;

        let (complete_backup_bytes,): (i64,) = sqlx::query_as(
            "SELECT coalesce(sum(size_bytes), 0) FROM artifacts WHERE state = 'complete'",
        )
        .fetch_one(&self.reader)
        .await?;
        let newest: Vec<(String, String, i64)> = sqlx::query_as(
            "SELECT agent, database, size_bytes FROM (
               SELECT agent, database, size_bytes,
                      row_number() OVER (PARTITION BY agent, database
                                         ORDER BY created_unix_ms DESC) AS n
               FROM artifacts WHERE state = 'complete')
             WHERE n = 1 ORDER BY agent, database",
        )
        .fetch_all(&self.reader)
        .await?;

        Ok(StoreMetrics {
            agents_total: non_negative(agents_total),
            agents_online: non_negative(agents_online),
            orders,
            durations,
            complete_backup_bytes: non_negative(complete_backup_bytes),
            newest_backup_bytes: newest
                .into_iter()
                .map(|(agent, database, bytes)| {
                    (format!("{agent}/{database}"), non_negative(bytes))
                })
                .collect(),
        })
    }

    /// Buckets the run times of succeeded timed orders in SQL: one row per kind, with a
    /// `sum(seconds <= bound)` column per bound.
    async fn durations(&self, bounds: &[f64]) -> StoreResult<Vec<(OrderKind, DurationBuckets)>> {
        let per_bound = ", sum(seconds <= ?)".repeat(bounds.len());
        let kinds = TIMED_KINDS
            .map(|kind| format!("'{}'", kind.as_str()))
            .join(", ");
        let sql = format!(
            "SELECT kind, count(*), coalesce(sum(seconds), 0.0){per_bound}
             FROM (SELECT kind, (finished_unix_ms - started_unix_ms) / 1000.0 AS seconds
                   FROM orders
                   WHERE state = 'succeeded' AND kind IN ({kinds})
                     AND started_unix_ms > 0 AND finished_unix_ms >= started_unix_ms)
             GROUP BY kind"
        );
        // Built from constants only: the kinds are enum names, the bounds are bound.
        let mut query = sqlx::query(sqlx::AssertSqlSafe(sql));
        for bound in bounds {
            query = query.bind(bound);
        }
        let rows = query.fetch_all(&self.reader).await?;

        let mut durations: Vec<(OrderKind, DurationBuckets)> = TIMED_KINDS
            .iter()
            .map(|&kind| {
                let empty = DurationBuckets {
                    at_most: vec![0; bounds.len()],
                    ..DurationBuckets::default()
                };
                (kind, empty)
            })
            .collect();
        for row in rows {
            let kind = parse::<OrderKind>(&row.try_get::<String, _>(0)?)?;
            let Some((_, buckets)) = durations.iter_mut().find(|(k, _)| *k == kind) else {
                continue;
            };
            buckets.count = non_negative(row.try_get(1)?);
            buckets.sum_seconds = row.try_get(2)?;
            for (index, at_most) in buckets.at_most.iter_mut().enumerate() {
                *at_most = non_negative(row.try_get(3 + index)?);
            }
        }
        Ok(durations)
    }
}

fn parse<T: FromStr>(text: &str) -> StoreResult<T>
where
    T::Err: std::fmt::Display,
{
    text.parse().map_err(|e: T::Err| StoreError::Corrupt {
        what: "order kind or state",
        why: e.to_string(),
    })
}

/// SQLite counts and sums are `i64`; none of these can be negative.
fn non_negative(value: i64) -> u64 {
    u64::try_from(value).unwrap_or(0)
}

#[cfg(test)]
mod tests {
    use warden_shared::OrderSpec;

    use super::*;
    use crate::store::{AgentRecord, OrderRecord};

    use crate::store::temp_store as store;

    async fn add_agent(store: &Store, name: &str, online: bool) {
        let agent = AgentRecord {
            name: name.to_owned(),
            version: "test".to_owned(),
            labels_json: "{}".to_owned(),
            repository: "file:///repo".to_owned(),
            online: true,
            last_seen_unix_ms: 0,
            generation: 0,
            database_count: 0,
        };
        let mut tx = store.begin().await.expect("tx");
        let generation = Store::upsert_agent(&mut tx, &agent).await.expect("agent");
        if !online {
            Store::set_agent_offline(&mut tx, name, generation, 0)
                .await
                .expect("offline");
        }
        tx.commit().await.expect("commit");
    }

    /// Stores an order of `spec`'s kind in `state` that ran for `seconds` (`None`: never
    /// started).
    async fn add_order(store: &Store, spec: &OrderSpec, state: OrderState, seconds: Option<f64>) {
        let mut order = OrderRecord::new("a1", "app", spec, "test", "");
        order.state = state;
        if let Some(seconds) = seconds {
            order.started_unix_ms = 1_000_000;
            order.finished_unix_ms = 1_000_000 + (seconds * 1000.0) as i64;
        }
        let mut tx = store.begin().await.expect("tx");
        Store::insert_orders(&mut tx, &[&order])
            .await
            .expect("order");
        tx.commit().await.expect("commit");
    }

    async fn add_artifact(store: &Store, database: &str, created: i64, size: i64, state: &str) {
        sqlx::query(
            "INSERT INTO artifacts (id, agent, database, order_id, trigger, state, repository,
                                    path, sha256, size_bytes, raw_bytes, server_version,
                                    pg_dump_version, created_unix_ms, manifest_json)
             VALUES (?, 'a1', ?, 'o', 'manual', ?, 'file:///repo', 'p', 's', ?, 0, '16', '16', ?,
                     '{}')",
        )
        .bind(uuid::Uuid::now_v7().to_string())
        .bind(database)
        .bind(state)
        .bind(size)
        .bind(created)
        .execute(&store.writer)
        .await
        .expect("artifact");
    }

    fn backup() -> OrderSpec {
        OrderSpec::Backup {
            trigger: "manual".to_owned(),
            verify: false,
        }
    }

    fn restore() -> OrderSpec {
        OrderSpec::Restore {
            artifact_id: "x".to_owned(),
            artifact_path: "p".to_owned(),
            sha256: "s".to_owned(),
            new_name: Some("copy".to_owned()),
        }
    }

    fn count(metrics: &StoreMetrics, kind: OrderKind, state: OrderState) -> u64 {
        let found = metrics
            .orders
            .iter()
            .find(|(k, s, _)| *k == kind && *s == state);
        found.expect("every kind and state").2
    }

    fn durations(metrics: &StoreMetrics, kind: OrderKind) -> &DurationBuckets {
        &metrics
            .durations
            .iter()
            .find(|(k, _)| *k == kind)
            .expect("timed kind")
            .1
    }

    #[tokio::test]
    async fn an_empty_store_has_every_series_at_zero() {
        let (_dir, store) = store().await;
        let metrics = store.metrics(&[1.0, 10.0]).await.expect("metrics");
        assert_eq!((metrics.agents_total, metrics.agents_online), (0, 0));
        assert_eq!(
            metrics.orders.len(),
            OrderKind::ALL.len() * OrderState::ALL.len()
        );
        assert!(metrics.orders.iter().all(|(_, _, count)| *count == 0));
        let kinds: Vec<OrderKind> = metrics.durations.iter().map(|(kind, _)| *kind).collect();
        assert_eq!(kinds, TIMED_KINDS);
        for (_, buckets) in &metrics.durations {
            let zero = DurationBuckets {
                at_most: vec![0, 0],
                sum_seconds: 0.0,
                count: 0,
            };
            assert_eq!(buckets, &zero);
        }
        assert_eq!(metrics.complete_backup_bytes, 0);
        assert!(metrics.newest_backup_bytes.is_empty());
    }

    #[tokio::test]
    async fn counts_run_times_and_bytes_come_from_the_store() {
        let (_dir, store) = store().await;
        add_agent(&store, "a1", true).await;
        add_agent(&store, "a2", false).await;
        for seconds in [0.5, 3.0, 20.0] {
            add_order(&store, &backup(), OrderState::Succeeded, Some(seconds)).await;
        }
        // Neither a failed backup, a health check, nor an unstarted order is timed.
        add_order(&store, &backup(), OrderState::Failed, Some(5.0)).await;
        add_order(&store, &OrderSpec::Health, OrderState::Succeeded, Some(2.0)).await;
        add_order(&store, &backup(), OrderState::Queued, None).await;
        add_order(&store, &restore(), OrderState::Succeeded, Some(100.0)).await;
        add_artifact(&store, "app", 1, 10, "complete").await;
        add_artifact(&store, "app", 2, 20, "complete").await;
        add_artifact(&store, "app", 3, 30, "expired").await;
        add_artifact(&store, "other", 5, 50, "complete").await;

        let metrics = store.metrics(&[1.0, 10.0]).await.expect("metrics");
        assert_eq!((metrics.agents_total, metrics.agents_online), (2, 1));
        assert_eq!(count(&metrics, OrderKind::Backup, OrderState::Succeeded), 3);
        assert_eq!(count(&metrics, OrderKind::Backup, OrderState::Failed), 1);
        assert_eq!(count(&metrics, OrderKind::Backup, OrderState::Queued), 1);
        assert_eq!(count(&metrics, OrderKind::Health, OrderState::Succeeded), 1);
        assert_eq!(count(&metrics, OrderKind::Drill, OrderState::Running), 0);

        let backups = durations(&metrics, OrderKind::Backup);
        assert_eq!(backups.at_most, [1, 2], "cumulative: <=1s, <=10s");
        assert_eq!(backups.count, 3);
        assert!((backups.sum_seconds - 23.5).abs() < 1e-9, "{backups:?}");
        let restores = durations(&metrics, OrderKind::Restore);
        assert_eq!(
            (restores.at_most.as_slice(), restores.count),
            ([0, 0].as_slice(), 1)
        );
        assert_eq!(durations(&metrics, OrderKind::Drill).count, 0);

        assert_eq!(metrics.complete_backup_bytes, 80);
        assert_eq!(
            metrics.newest_backup_bytes,
            [("a1/app".to_owned(), 20), ("a1/other".to_owned(), 50)]
        );
    }
}
