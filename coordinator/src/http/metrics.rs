//! What `/metrics` shows: one [`MetricsSnapshot`] of the fleet per scrape, written as
//! Prometheus series.
//!
//! States are exposed one-hot (`warden_rto_status{database,status}` is 1 for the current
//! status and 0 for the others), so an alert is `warden_rto_status{status="breach"} == 1`
//! and a database that leaves a state leaves no stale series behind.

use super::exposition::{Encoder, Histogram, MetricType};

/// Upper bounds (seconds) of the `warden_order_duration_seconds` buckets: from a small
/// database's dump to a large restore, with the runbook's 5, 15 and 30 minute targets among
/// them so the share of orders within a target is exact.
pub const ORDER_DURATION_BUCKETS: &[f64] = &[
    1.0, 5.0, 15.0, 30.0, 60.0, 120.0, 300.0, 600.0, 900.0, 1800.0, 3600.0, 7200.0, 14400.0,
];

/// The statuses of the RTO report, exposed one-hot.
pub const RTO_STATUSES: &[&str] = &["ok", "at_risk", "breach", "unknown"];

/// The health states of a database, exposed one-hot.
pub const HEALTH_STATES: &[&str] = &["healthy", "degraded", "down", "unknown"];

/// The fleet at one instant, as `/metrics` exposes it.
#[derive(Debug, Clone, Default, PartialEq)]
pub struct MetricsSnapshot {
    pub agents_total: u64,
    pub agents_online: u64,
    /// Orders by kind and state (`warden_orders`).
    pub orders: Vec<OrderCount>,
    /// Run times of succeeded orders by kind (`warden_order_duration_seconds`).
    pub order_durations: Vec<(String, Histogram)>,
    /// Compressed bytes of every complete artifact (`warden_backup_bytes`).
    pub backup_bytes: u64,
    /// Compressed size of each database's newest complete artifact, by `AGENT/DB`
    /// (`warden_newest_backup_bytes`).
    pub newest_backup_bytes: Vec<(String, u64)>,
    /// Recovery assurance per database.
    pub databases: Vec<DatabaseMetrics>,
}

/// How many orders of one kind are in one state.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct OrderCount {
    pub kind: String,
    pub state: String,
    pub count: u64,
}

/// Recovery assurance of one database.
#[derive(Debug, Clone, PartialEq)]
pub struct DatabaseMetrics {
    /// `AGENT/DB`.
    pub database: String,
    /// Age of the newest complete backup; `None` (no series) when there is none.
    pub newest_backup_age_seconds: Option<f64>,
    pub rpo_target_seconds: Option<f64>,
    pub rto_target_seconds: Option<f64>,
    /// One of [`RTO_STATUSES`].
    pub rto_status: String,
    /// One of [`HEALTH_STATES`].
    pub health: String,
}

/// Writes `snapshot` in the Prometheus text format.
pub fn encode(snapshot: &MetricsSnapshot) -> String {
    let mut out = Encoder::new();

    out.family(
        "warden_agents",
        MetricType::Gauge,
        "Agents known to the coordinator, by whether they hold a stream to it.",
    );
    let offline = snapshot.agents_total.saturating_sub(snapshot.agents_online);
    out.sample(
        "warden_agents",
        &[("state", "online")],
        snapshot.agents_online,
    );
    out.sample("warden_agents", &[("state", "offline")], offline);

    out.family(
        "warden_orders",
        MetricType::Gauge,
        "Orders in the store, by kind and state.",
    );
    for order in &snapshot.orders {
        let labels = [
            ("kind", order.kind.as_str()),
            ("state", order.state.as_str()),
        ];
        out.sample("warden_orders", &labels, order.count);
    }

    out.family(
        "warden_order_duration_seconds",
        MetricType::Histogram,
        "Time from start to end of succeeded orders, by kind.",
    );
    for (kind, histogram) in &snapshot.order_durations {
        out.histogram(
            "warden_order_duration_seconds",
            &[("kind", kind)],
            histogram,
        );
    }

    out.family(
        "warden_backup_bytes",
        MetricType::Gauge,
        "Compressed bytes of all complete backup artifacts.",
    );
    out.sample("warden_backup_bytes", &[], snapshot.backup_bytes);

    out.family(
        "warden_newest_backup_bytes",
        MetricType::Gauge,
        "Compressed bytes of the newest complete backup of each database.",
    );
    for (database, bytes) in &snapshot.newest_backup_bytes {
        out.sample(
            "warden_newest_backup_bytes",
            &[("database", database)],
            *bytes,
        );
    }

    per_database(
        &mut out,
        &snapshot.databases,
        "warden_newest_backup_age_seconds",
        "Age of the newest complete backup of each database.",
        |db| db.newest_backup_age_seconds,
    );
    per_database(
        &mut out,
        &snapshot.databases,
        "warden_rpo_target_seconds",
        "RPO target of each database: the oldest its newest backup may be.",
        |db| db.rpo_target_seconds,
    );
    per_database(
        &mut out,
        &snapshot.databases,
        "warden_rto_target_seconds",
        "RTO target of each database: the longest a full restore may take.",
        |db| db.rto_target_seconds,
    );

    out.family(
        "warden_rto_status",
        MetricType::Gauge,
        "RTO compliance of each database: 1 for its current status, 0 for the others.",
    );
    for db in &snapshot.databases {
        one_hot(
            &mut out,
            "warden_rto_status",
            db,
            "status",
            RTO_STATUSES,
            &db.rto_status,
        );
    }

    out.family(
        "warden_database_health",
        MetricType::Gauge,
        "Health of each database: 1 for its current state, 0 for the others.",
    );
    for db in &snapshot.databases {
        one_hot(
            &mut out,
            "warden_database_health",
            db,
            "state",
            HEALTH_STATES,
            &db.health,
        );
    }

    out.finish()
}

/// A gauge family with a series per database that has a value.
fn per_database(
    out: &mut Encoder,
    databases: &[DatabaseMetrics],
    name: &str,
    help: &str,
    value: impl Fn(&DatabaseMetrics) -> Option<f64>,
) {
    out.family(name, MetricType::Gauge, help);
    for db in databases {
        if let Some(value) = value(db) {
            out.sample(name, &[("database", &db.database)], value);
        }
    }
}

/// One series per known value, 1 for `current` and 0 for the rest. A `current` outside
/// `known` gets its own series, so nothing is hidden.
fn one_hot(
    out: &mut Encoder,
    name: &str,
    db: &DatabaseMetrics,
    label: &str,
    known: &[&str],
    current: &str,
) {
    let extra = (!known.contains(&current)).then_some(current);
    for value in known.iter().copied().chain(extra) {
        let labels = [("database", db.database.as_str()), (label, value)];
        out.sample(name, &labels, u64::from(value == current));
    }
}

#[cfg(test)]
mod tests {
    use std::collections::BTreeMap;

    use openmetrics_parser::prometheus::parse_prometheus;
    use openmetrics_parser::{MetricsExposition, PrometheusType, PrometheusValue, Sample};

    use super::*;

    fn snapshot() -> MetricsSnapshot {
        MetricsSnapshot {
            agents_total: 3,
            agents_online: 2,
            orders: vec![
                OrderCount {
                    kind: "backup".to_owned(),
                    state: "succeeded".to_owned(),
                    count: 7,
                },
                OrderCount {
                    kind: "restore".to_owned(),
                    state: "failed".to_owned(),
                    count: 1,
                },
            ],
            order_durations: vec![(
                "backup".to_owned(),
                Histogram {
                    buckets: vec![(1.0, 2), (5.0, 5), (15.0, 7)],
                    sum: 30.5,
                    count: 7,
                },
            )],
            backup_bytes: 123_456_789_012,
            newest_backup_bytes: vec![("a1/app".to_owned(), 4096)],
            databases: vec![
                DatabaseMetrics {
                    database: "a1/app".to_owned(),
                    newest_backup_age_seconds: Some(90.5),
                    rpo_target_seconds: Some(86400.0),
                    rto_target_seconds: Some(1800.0),
                    rto_status: "breach".to_owned(),
                    health: "healthy".to_owned(),
                },
                DatabaseMetrics {
                    // A name no PostgreSQL would refuse, and the format must escape.
                    database: "a2/we\"ird\\db\nname".to_owned(),
                    newest_backup_age_seconds: None,
                    rpo_target_seconds: None,
                    rto_target_seconds: None,
                    rto_status: "unknown".to_owned(),
                    health: "down".to_owned(),
                },
            ],
        }
    }

    type Exposition = MetricsExposition<PrometheusType, PrometheusValue>;

    fn parse(text: &str) -> Exposition {
        parse_prometheus(text).unwrap_or_else(|error| panic!("{error}\n{text}"))
    }

    /// The samples of `name` whose labels include `labels`.
    fn samples<'a>(
        exposition: &'a Exposition,
        name: &str,
        labels: &[(&str, &str)],
    ) -> Vec<&'a Sample<PrometheusValue>> {
        exposition.families[name]
            .iter_samples()
            .filter(|sample| {
                let set = sample.get_labelset().expect("labels");
                labels
                    .iter()
                    .all(|(label, value)| set.get_label_value(label) == Some(*value))
            })
            .collect()
    }

    /// The value of the one gauge sample of `name` whose labels include `labels`.
    fn value(exposition: &Exposition, name: &str, labels: &[(&str, &str)]) -> f64 {
        let found = samples(exposition, name, labels);
        assert_eq!(found.len(), 1, "{name} {labels:?}: {found:?}");
        match &found[0].value {
            PrometheusValue::Gauge(value) => value.as_f64(),
            other => panic!("{name} is not a gauge: {other:?}"),
        }
    }

    #[test]
    fn a_parser_reads_back_every_series() {
        let text = encode(&snapshot());
        let scrape = parse(&text);
        assert_eq!(value(&scrape, "warden_agents", &[("state", "online")]), 2.0);
        assert_eq!(
            value(&scrape, "warden_agents", &[("state", "offline")]),
            1.0
        );
        let backups = [("kind", "backup"), ("state", "succeeded")];
        assert_eq!(value(&scrape, "warden_orders", &backups), 7.0);
        let failed_restores = [("kind", "restore"), ("state", "failed")];
        assert_eq!(value(&scrape, "warden_orders", &failed_restores), 1.0);
        assert_eq!(
            value(&scrape, "warden_backup_bytes", &[]),
            123_456_789_012.0
        );
        let app = [("database", "a1/app")];
        assert_eq!(value(&scrape, "warden_newest_backup_bytes", &app), 4096.0);
        assert_eq!(
            value(&scrape, "warden_newest_backup_age_seconds", &app),
            90.5
        );
        assert_eq!(value(&scrape, "warden_rpo_target_seconds", &app), 86400.0);
        assert_eq!(value(&scrape, "warden_rto_target_seconds", &app), 1800.0);
        let orders = &scrape.families["warden_orders"];
        assert_eq!(orders.family_type, PrometheusType::Gauge);
        assert_eq!(orders.help, "Orders in the store, by kind and state.");
    }

    #[test]
    fn states_are_one_hot_and_weird_database_names_survive_escaping() {
        let scrape = parse(&encode(&snapshot()));
        let statuses = |database: &str| -> BTreeMap<String, f64> {
            RTO_STATUSES
                .iter()
                .map(|status| {
                    let labels = [("database", database), ("status", status)];
                    (
                        status.to_string(),
                        value(&scrape, "warden_rto_status", &labels),
                    )
                })
                .collect()
        };
        let app = statuses("a1/app");
        assert_eq!(app.values().sum::<f64>(), 1.0);
        assert_eq!(app["breach"], 1.0);

        let weird = "a2/we\"ird\\db\nname";
        assert_eq!(statuses(weird)["unknown"], 1.0);
        let health = |state| {
            value(
                &scrape,
                "warden_database_health",
                &[("database", weird), ("state", state)],
            )
        };
        assert_eq!(health("down"), 1.0);
        assert_eq!(health("healthy"), 0.0);
        // Never backed up: no age series rather than a made-up age.
        let ages = samples(
            &scrape,
            "warden_newest_backup_age_seconds",
            &[("database", weird)],
        );
        assert!(ages.is_empty(), "{ages:?}");
    }

    #[test]
    fn a_state_outside_the_known_ones_gets_its_own_series() {
        let mut snapshot = snapshot();
        snapshot.databases[0].health = "rebooting".to_owned();
        let scrape = parse(&encode(&snapshot));
        let labels = [("database", "a1/app"), ("state", "rebooting")];
        assert_eq!(value(&scrape, "warden_database_health", &labels), 1.0);
        let healthy = [("database", "a1/app"), ("state", "healthy")];
        assert_eq!(value(&scrape, "warden_database_health", &healthy), 0.0);
    }

    #[test]
    fn histogram_buckets_are_cumulative_up_to_inf() {
        let scrape = parse(&encode(&snapshot()));
        let family = &scrape.families["warden_order_duration_seconds"];
        assert_eq!(family.family_type, PrometheusType::Histogram);
        let found = samples(
            &scrape,
            "warden_order_duration_seconds",
            &[("kind", "backup")],
        );
        let PrometheusValue::Histogram(histogram) = &found[0].value else {
            panic!("not a histogram: {found:?}")
        };
        let buckets: Vec<(f64, f64)> = histogram
            .buckets
            .iter()
            .map(|bucket| (bucket.upper_bound, bucket.count.as_f64()))
            .collect();
        assert_eq!(
            buckets,
            [(1.0, 2.0), (5.0, 5.0), (15.0, 7.0), (f64::INFINITY, 7.0)]
        );
        assert_eq!(histogram.count, Some(7));
        assert_eq!(histogram.sum.map(|sum| sum.as_f64()), Some(30.5));
    }

    #[test]
    fn the_parser_refuses_buckets_that_are_not_cumulative() {
        // The check above relies on the parser noticing; make sure it does.
        let mut snapshot = snapshot();
        snapshot.order_durations[0].1.buckets = vec![(1.0, 5), (5.0, 2)];
        let error = parse_prometheus(&encode(&snapshot)).expect_err("refused");
        assert!(error.to_string().contains("cumulative"), "{error}");
    }
}
