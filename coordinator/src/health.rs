//! Database health: classifies the newest health report an agent sent for a database as
//! healthy, degraded, down or unknown, with the reasons. Pure: the report, the agent's state
//! and the time come in as arguments.
//!
//! The rules, first match wins:
//! 1. The agent is offline: down ("agent offline"). Warden cannot reach the database, and a
//!    dead agent must alert like a dead database.
//! 2. No report and no error ever arrived: unknown ("no health report yet").
//! 3. The newest report is older than `stale_after_intervals` health intervals: unknown
//!    ("last report 12m ago, expected every 1m"); what it said no longer holds. A health
//!    interval of zero (agents send no reports) disables this rule.
//! 4. The agent could not reach the database (an error), or the report says it is not
//!    connected: down, with the error.
//! 5. Each threshold the report exceeds adds a reason and makes it degraded: connections in
//!    use, the oldest open transaction, transaction ID age (wraparound), replication lag, free
//!    space in the agent's repository.
//! 6. Otherwise healthy, without reasons.
//!
//! A threshold exactly met is not exceeded.

use std::time::Duration;

use warden_proto::v1::HealthReport;

use crate::rto::human_duration;

/// The health of one database. Ordered worst first (`Down` is the least), so sorting
/// ascending puts the worst first.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub enum HealthState {
    /// Warden cannot reach the database, or the agent cannot connect to it.
    Down,
    /// Reachable, but a threshold is exceeded.
    Degraded,
    /// No recent report says either way.
    Unknown,
    Healthy,
}

impl HealthState {
    /// The name used in the API: `down`, `degraded`, `unknown` or `healthy`.
    pub fn as_str(self) -> &'static str {
        match self {
            Self::Down => "down",
            Self::Degraded => "degraded",
            Self::Unknown => "unknown",
            Self::Healthy => "healthy",
        }
    }

    /// The sort key of the state, worst first: like syslog levels, 0 is the most severe
    /// (`Down`) and `Healthy` is the highest.
    pub fn severity(self) -> u8 {
        self as u8
    }
}

impl std::fmt::Display for HealthState {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(self.as_str())
    }
}

/// Where a report turns from healthy to degraded.
#[derive(Debug, Clone, PartialEq)]
pub struct HealthThresholds {
    /// Connections in use over the server's maximum.
    pub connections_ratio: f64,
    /// The oldest open transaction: long ones hold back vacuum and bloat tables.
    pub oldest_transaction: Duration,
    /// `age(datfrozenxid)`: PostgreSQL stops accepting writes near 2^31.
    pub wraparound_age: u64,
    pub replication_lag: Duration,
    /// Free space in the agent's repository under this share of its size.
    pub repository_free_ratio: f64,
    /// A report older than this many health intervals is stale.
    pub stale_after_intervals: u32,
}

impl Default for HealthThresholds {
    fn default() -> Self {
        Self {
            connections_ratio: 0.9,
            oldest_transaction: Duration::from_secs(3600),
            wraparound_age: 1_000_000_000,
            replication_lag: Duration::from_secs(300),
            repository_free_ratio: 0.1,
            stale_after_intervals: 3,
        }
    }
}

/// Classifies a database's newest health report by the rules in the module documentation.
/// `report` and `error` are what the agent sent last (no report when it could not reach the
/// database), at `reported_unix_ms`; `health_interval` is how often agents send reports.
/// Returns the state and its reasons (none when healthy).
pub fn classify(
    report: Option<&HealthReport>,
    error: &str,
    reported_unix_ms: i64,
    agent_online: bool,
    health_interval: Duration,
    now_unix_ms: i64,
    t: &HealthThresholds,
) -> (HealthState, Vec<String>) {
    if !agent_online {
        return (HealthState::Down, vec!["agent offline".to_owned()]);
    }
    let error = error.trim();
    if report.is_none() && error.is_empty() {
        return (
            HealthState::Unknown,
            vec!["no health report yet".to_owned()],
        );
    }
    let age_ms = u64::try_from(i128::from(now_unix_ms) - i128::from(reported_unix_ms)).unwrap_or(0);
    let stale_after = health_interval.saturating_mul(t.stale_after_intervals);
    if !health_interval.is_zero() && u128::from(age_ms) > stale_after.as_millis() {
        return (
            HealthState::Unknown,
            vec![format!(
                "last report {} ago, expected every {}",
                human_duration(Duration::from_millis(age_ms)),
                human_duration(health_interval)
            )],
        );
    }
    if !error.is_empty() {
        return (HealthState::Down, vec![error.to_owned()]);
    }
    let Some(report) = report else {
        // Unreachable: no report and no error returned above.
        return (
            HealthState::Unknown,
            vec!["no health report yet".to_owned()],
        );
    };
    if !report.connected {
        return (
            HealthState::Down,
            vec!["the agent cannot connect to the database".to_owned()],
        );
    }

    let mut reasons = Vec::new();
    if report.connections_max > 0 {
        let ratio = f64::from(report.connections_used) / f64::from(report.connections_max);
        if ratio > t.connections_ratio {
            reasons.push(format!(
                "{} of {} connections in use ({}), over {}",
                report.connections_used,
                report.connections_max,
                percent(ratio),
                percent(t.connections_ratio)
            ));
        }
    }
    let oldest = Duration::from_secs(report.oldest_transaction_seconds);
    if oldest > t.oldest_transaction {
        reasons.push(format!(
            "a transaction has been open for {}, over {}",
            human_duration(oldest),
            human_duration(t.oldest_transaction)
        ));
    }
    if report.wraparound_age > t.wraparound_age {
        reasons.push(format!(
            "transaction ID age {} is over {}: vacuum (freeze) the database before wraparound",
            report.wraparound_age, t.wraparound_age
        ));
    }
    let lag = Duration::from_millis(report.replication_lag_ms);
    if lag > t.replication_lag {
        reasons.push(format!(
            "replication lag {}, over {}",
            human_duration(lag),
            human_duration(t.replication_lag)
        ));
    }
    if report.repository_total_bytes > 0 {
        // A ratio needs no exact bytes: f64 precision is ample.
        let ratio = report.repository_free_bytes as f64 / report.repository_total_bytes as f64;
        if ratio < t.repository_free_ratio {
            reasons.push(format!(
                "repository has {} free ({} of {}), under {}",
                percent(ratio),
                human_bytes(report.repository_free_bytes),
                human_bytes(report.repository_total_bytes),
                percent(t.repository_free_ratio)
            ));
        }
    }
    if reasons.is_empty() {
        (HealthState::Healthy, reasons)
    } else {
        (HealthState::Degraded, reasons)
    }
}

/// `0.953` as `95%`, `0.0004` as `0.04%`: whole percents, with two decimals below 1%, and
/// never a share that is not zero printed as 0.
fn percent(ratio: f64) -> String {
    let percent = ratio * 100.0;
    if percent == 0.0 || percent >= 1.0 {
        format!("{percent:.0}%")
    } else if percent >= 0.01 {
        format!("{percent:.2}%")
    } else {
        "under 0.01%".to_owned()
    }
}

/// Bytes for people, in binary units: `512 B`, `1.5 GiB`.
fn human_bytes(bytes: u64) -> String {
    const UNITS: [&str; 6] = ["KiB", "MiB", "GiB", "TiB", "PiB", "EiB"];
    if bytes < 1024 {
        return format!("{bytes} B");
    }
    let mut value = bytes as f64;
    let mut unit = "B";
    for next in UNITS {
        if value < 1024.0 {
            break;
        }
        value /= 1024.0;
        unit = next;
    }
    format!("{value:.1} {unit}")
}

#[cfg(test)]
mod tests {
    use super::*;

    const NOW: i64 = 1_777_896_000_000;
    const INTERVAL: Duration = Duration::from_secs(60);

    /// A report with every value comfortably inside the default thresholds.
    fn good() -> HealthReport {
        HealthReport {
            connected: true,
            latency_ms: 2,
            server_version: "16.4".to_owned(),
            database_size_bytes: 10 << 20,
            table_count: 12,
            connections_used: 10,
            connections_max: 100,
            in_recovery: false,
            uptime_seconds: 86_400,
            replication_role: "primary".to_owned(),
            replication_lag_ms: 0,
            oldest_transaction_seconds: 3,
            wraparound_age: 200_000_000,
            repository_free_bytes: 50 << 30,
            repository_total_bytes: 100 << 30,
        }
    }

    /// Classifies a report received 10 seconds ago from an online agent.
    fn classify_report(report: &HealthReport) -> (HealthState, Vec<String>) {
        classify(
            Some(report),
            "",
            NOW - 10_000,
            true,
            INTERVAL,
            NOW,
            &HealthThresholds::default(),
        )
    }

    #[test]
    fn a_good_report_is_healthy() {
        assert_eq!(classify_report(&good()), (HealthState::Healthy, vec![]));
        // A standby in recovery with no lag is healthy too.
        let standby = HealthReport {
            in_recovery: true,
            replication_role: "standby".to_owned(),
            ..good()
        };
        assert_eq!(classify_report(&standby).0, HealthState::Healthy);
    }

    #[test]
    fn an_offline_agent_is_down_whatever_it_said_last() {
        let report = good();
        for (report, error) in [(Some(&report), ""), (None, ""), (None, "timeout")] {
            let classified = classify(
                report,
                error,
                NOW - 10_000,
                false,
                INTERVAL,
                NOW,
                &HealthThresholds::default(),
            );
            assert_eq!(
                classified,
                (HealthState::Down, vec!["agent offline".to_owned()])
            );
        }
    }

    #[test]
    fn no_report_yet_is_unknown() {
        let classified = classify(
            None,
            "",
            0,
            true,
            INTERVAL,
            NOW,
            &HealthThresholds::default(),
        );
        assert_eq!(
            classified,
            (
                HealthState::Unknown,
                vec!["no health report yet".to_owned()]
            )
        );
    }

    #[test]
    fn an_error_is_down_with_the_error() {
        let error = "connection to server at \"db1\" failed: Connection refused\n";
        let classified = classify(
            None,
            error,
            NOW - 10_000,
            true,
            INTERVAL,
            NOW,
            &HealthThresholds::default(),
        );
        let expected = (
            HealthState::Down,
            vec!["connection to server at \"db1\" failed: Connection refused".to_owned()],
        );
        assert_eq!(classified, expected);
        // An error wins over a report that came with it.
        let report = good();
        let classified = classify(
            Some(&report),
            error,
            NOW - 10_000,
            true,
            INTERVAL,
            NOW,
            &HealthThresholds::default(),
        );
        assert_eq!(classified, expected);
    }

    #[test]
    fn a_report_that_is_not_connected_is_down() {
        let report = HealthReport {
            connected: false,
            ..good()
        };
        assert_eq!(
            classify_report(&report),
            (
                HealthState::Down,
                vec!["the agent cannot connect to the database".to_owned()]
            )
        );
    }

    #[test]
    fn a_stale_report_is_unknown() {
        let report = good();
        let at_age = |age_ms: i64, interval: Duration, error: &str| {
            classify(
                Some(&report),
                error,
                NOW - age_ms,
                true,
                interval,
                NOW,
                &HealthThresholds::default(),
            )
        };
        // Exactly three intervals old is still fresh.
        assert_eq!(at_age(180_000, INTERVAL, "").0, HealthState::Healthy);
        assert_eq!(
            at_age(180_001, INTERVAL, ""),
            (
                HealthState::Unknown,
                vec!["last report 3m ago, expected every 1m".to_owned()]
            )
        );
        assert_eq!(
            at_age(12 * 60_000, INTERVAL, "refused"),
            (
                HealthState::Unknown,
                vec!["last report 12m ago, expected every 1m".to_owned()]
            )
        );
        // Without a health interval, nothing goes stale.
        assert_eq!(
            at_age(40 * 86_400_000, Duration::ZERO, "").0,
            HealthState::Healthy
        );
        // A report from the future (clock skew) is fresh.
        assert_eq!(at_age(-3_600_000, INTERVAL, "").0, HealthState::Healthy);
        // Extremes neither panic nor wrap.
        let classified = classify(
            Some(&report),
            "",
            i64::MIN,
            true,
            Duration::MAX,
            i64::MAX,
            &HealthThresholds::default(),
        );
        assert_eq!(classified.0, HealthState::Healthy);
        let classified = classify(
            Some(&report),
            "",
            i64::MIN,
            true,
            INTERVAL,
            i64::MAX,
            &HealthThresholds::default(),
        );
        assert_eq!(classified.0, HealthState::Unknown);
    }

    #[test]
    fn each_exceeded_threshold_is_a_reason() {
        #[rustfmt::skip]
        let cases: Vec<(HealthReport, &str)> = vec![
            (HealthReport { connections_used: 95, ..good() },
             "95 of 100 connections in use (95%), over 90%"),
            (HealthReport { oldest_transaction_seconds: 2 * 3600 + 180, ..good() },
             "a transaction has been open for 2h 3m, over 1h"),
            (HealthReport { wraparound_age: 1_200_000_000, ..good() },
             "transaction ID age 1200000000 is over 1000000000: vacuum (freeze) the database before wraparound"),
            (HealthReport { replication_lag_ms: 6 * 60_000, ..good() },
             "replication lag 6m, over 5m"),
            (HealthReport { repository_free_bytes: 2 << 30, repository_total_bytes: 40 << 30, ..good() },
             "repository has 5% free (2.0 GiB of 40.0 GiB), under 10%"),
        ];
        for (report, reason) in cases {
            assert_eq!(
                classify_report(&report),
                (HealthState::Degraded, vec![reason.to_owned()])
            );
        }
    }

    #[test]
    fn thresholds_exactly_met_are_not_exceeded() {
        let report = HealthReport {
            connections_used: 90,
            connections_max: 100,
            oldest_transaction_seconds: 3600,
            wraparound_age: 1_000_000_000,
            replication_lag_ms: 300_000,
            repository_free_bytes: 10,
            repository_total_bytes: 100,
            ..good()
        };
        assert_eq!(classify_report(&report), (HealthState::Healthy, vec![]));
    }

    #[test]
    fn unknown_totals_are_not_judged() {
        // No connection limit or repository size reported: nothing to compare with.
        let report = HealthReport {
            connections_used: 500,
            connections_max: 0,
            repository_free_bytes: 0,
            repository_total_bytes: 0,
            ..good()
        };
        assert_eq!(classify_report(&report), (HealthState::Healthy, vec![]));
    }

    #[test]
    fn every_exceeded_threshold_is_listed_in_a_fixed_order() {
        let report = HealthReport {
            connections_used: 100,
            oldest_transaction_seconds: 7200,
            wraparound_age: 1_500_000_000,
            replication_lag_ms: 3_600_000,
            repository_free_bytes: 1 << 20,
            repository_total_bytes: 1 << 40,
            ..good()
        };
        let (state, reasons) = classify_report(&report);
        assert_eq!(state, HealthState::Degraded);
        assert_eq!(
            reasons,
            [
                "100 of 100 connections in use (100%), over 90%",
                "a transaction has been open for 2h, over 1h",
                "transaction ID age 1500000000 is over 1000000000: vacuum (freeze) the database before wraparound",
                "replication lag 1h, over 5m",
                "repository has under 0.01% free (1.0 MiB of 1.0 TiB), under 10%",
            ]
        );
    }

    #[test]
    fn custom_thresholds_apply() {
        let strict = HealthThresholds {
            connections_ratio: 0.05,
            replication_lag: Duration::ZERO,
            ..HealthThresholds::default()
        };
        let report = HealthReport {
            replication_lag_ms: 1,
            ..good()
        };
        let (state, reasons) = classify(Some(&report), "", NOW, true, INTERVAL, NOW, &strict);
        assert_eq!(state, HealthState::Degraded);
        assert_eq!(
            reasons,
            [
                "10 of 100 connections in use (10%), over 5%",
                "replication lag 1ms, over 0ms",
            ]
        );
    }

    #[test]
    fn states_order_and_print_worst_first() {
        let mut all = [
            HealthState::Healthy,
            HealthState::Unknown,
            HealthState::Down,
            HealthState::Degraded,
        ];
        all.sort();
        assert_eq!(
            all,
            [
                HealthState::Down,
                HealthState::Degraded,
                HealthState::Unknown,
                HealthState::Healthy
            ]
        );
        let names: Vec<&str> = all.iter().map(|s| s.as_str()).collect();
        assert_eq!(names, ["down", "degraded", "unknown", "healthy"]);
        let severities: Vec<u8> = all.iter().map(|s| s.severity()).collect();
        assert_eq!(severities, [0, 1, 2, 3]);
        assert_eq!(HealthState::Degraded.to_string(), "degraded");
    }

    #[test]
    fn sizes_and_shares_print_for_people() {
        assert_eq!(human_bytes(0), "0 B");
        assert_eq!(human_bytes(1023), "1023 B");
        assert_eq!(human_bytes(1536), "1.5 KiB");
        assert_eq!(human_bytes(2 << 30), "2.0 GiB");
        assert_eq!(human_bytes(u64::MAX), "16.0 EiB");
        assert_eq!(percent(0.0), "0%");
        assert_eq!(percent(0.953), "95%");
        assert_eq!(percent(0.0004), "0.04%");
        assert_eq!(percent(1.0), "100%");
        assert_eq!(percent(0.000_000_1), "under 0.01%");
    }
}
