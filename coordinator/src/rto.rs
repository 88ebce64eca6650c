//! Recovery assurance: how each database stands against its tier's recovery time objective
//! (RTO, how long a restore may take) and recovery point objective (RPO, how old the newest
//! backup may be). Pure: the facts and the time come in as arguments.
//!
//! Every finding carries a status; a database's status is the worst of its findings, and its
//! reasons list them all, worst first (none when it is `ok`). Statuses, worst first:
//! `breach` (a target is missed, measured), `at_risk` (a target is close, estimated to be
//! missed, or the evidence is stale or failing), `unknown` (no evidence), `ok`.
//!
//! RPO, from the newest complete backup's age (a backup dated in the future, from clock skew,
//! is 0 old):
//! - no complete backup: breach;
//! - older than the RPO: breach ("newest backup is 26h old, RPO 24h"); exactly the RPO is not;
//! - older than 80% of the RPO: at risk.
//!
//! RTO, from restore drills (a drill is a timed restore into a scratch database):
//! - the newest passing drill took longer than the RTO: breach ("last drill took 12m 3s,
//!   RTO 10m"); longer than 80% of it: at risk;
//! - the newest drill failed: at risk ("last drill failed: ERROR");
//! - the newest passing drill finished more than 30 days ago: at risk, the measurement is
//!   stale;
//! - no drill of the database ever passed: unknown ("never drilled: run `warden drill DB`").
//!   This holds even when a prediction exists: `ok` needs a restore of this database that
//!   was seen to work, not one inferred from its neighbours.
//! - predicted restore time of the newest backup longer than the RTO, or than 80% of it: at
//!   risk. The prediction is the newest backup's uncompressed size over the restore
//!   throughput of up to the 5 newest passing drills of the database (bytes summed over
//!   milliseconds summed, so a tiny drill's noisy rate weighs little); a database without
//!   passing drills borrows the throughput of the other databases on its agent. A prediction
//!   over the RTO is at risk, not a breach: it is an estimate (restore time is not linear in
//!   size, and the borrowed throughput may not fit), and a breach is kept for what was
//!   measured, so that it always means "this was seen to fail". The remedy is a drill, which
//!   turns the estimate into a measurement. The prediction adds a finding only where the
//!   measurement says nothing: not when the newest passing drill restored the newest backup
//!   itself, nor when its restore time already raised a finding.

use std::cmp::Reverse;
use std::time::Duration;

/// A finding over this share of a target, in percent, puts the database at risk.
pub const AT_RISK_PERCENT: u64 = 80;
/// The passing drills whose throughput predicts the restore time, newest first.
pub const THROUGHPUT_DRILLS: usize = 5;
/// A passing drill older than this no longer vouches for the RTO.
pub const DRILL_MAX_AGE: Duration = Duration::from_secs(30 * 24 * 3600);

/// The newest complete backup of a database.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct BackupFact {
    pub artifact_id: String,
    pub created_unix_ms: i64,
    /// Uncompressed dump size: what a restore has to load.
    pub raw_bytes: u64,
}

/// One finished restore drill.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct DrillFact {
    pub order_id: String,
    pub artifact_id: String,
    pub finished_unix_ms: i64,
    pub passed: bool,
    /// Time to a usable copy: the measured RTO.
    pub restore_ms: u64,
    /// Uncompressed bytes restored.
    pub raw_bytes: u64,
    /// Why it failed; empty when it passed.
    pub error: String,
}

/// What is known of one database's recoverability.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct RecoveryInput {
    /// `AGENT/DBNAME`.
    pub database: String,
    pub tier: String,
    pub rto: Duration,
    pub rpo: Duration,
    pub newest_backup: Option<BackupFact>,
    /// This database's drills, in any order (newest first is cheapest).
    pub drills: Vec<DrillFact>,
    /// Drills of the other databases on the same agent, in any order: their passing ones
    /// predict this database's restore time when it has no passing drill of its own.
    pub agent_drills: Vec<DrillFact>,
}

/// Where a database stands against its targets. Ordered worst first (`Breach` is the least),
/// so sorting ascending puts the worst first.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub enum RtoStatus {
    /// A target is missed, measured.
    Breach,
    /// A target is close or estimated to be missed, or the evidence is stale or failing.
    AtRisk,
    /// There is no evidence either way (never drilled).
    Unknown,
    /// Every target is met with margin, measured recently.
    Ok,
}

impl RtoStatus {
    /// The name used in reports and the API: `breach`, `at_risk`, `unknown` or `ok`.
    pub fn as_str(self) -> &'static str {
        match self {
            Self::Breach => "breach",
            Self::AtRisk => "at_risk",
            Self::Unknown => "unknown",
            Self::Ok => "ok",
        }
    }

    /// The sort key of the status, worst first: like syslog levels, 0 is the most severe
    /// (`Breach`) and `Ok` is the highest.
    pub fn severity(self) -> u8 {
        self as u8
    }
}

impl std::fmt::Display for RtoStatus {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(self.as_str())
    }
}

/// One database's standing against its tier's targets.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Assessment {
    /// `AGENT/DBNAME`.
    pub database: String,
    pub tier: String,
    pub rto: Duration,
    pub rpo: Duration,
    /// The newest drill, passed or failed.
    pub last_drill: Option<DrillFact>,
    /// The newest passing drill: the measured restore time.
    pub last_passed_drill: Option<DrillFact>,
    /// The newest backup's size over the drill throughput; `None` without a backup of known
    /// size or without a passing drill to measure throughput.
    pub predicted_restore_ms: Option<u64>,
    /// The prediction borrows the throughput of other databases on the agent.
    pub predicted_from_agent: bool,
    pub newest_backup: Option<BackupFact>,
    /// Age of the newest backup at assessment time (0 when dated in the future).
    pub backup_age_ms: Option<u64>,
    /// The worst status among the findings; `Ok` when there are none.
    pub status: RtoStatus,
    /// Every finding, worst first.
    pub reasons: Vec<String>,
}

impl Assessment {
    /// How far the database has gone into its targets, in thousandths: the larger of backup
    /// age over RPO and restore time (measured, or predicted, whichever is longer) over RTO.
    /// Over 1000 is past a target; `u64::MAX` when there is no backup at all.
    pub fn overdue_permille(&self) -> u64 {
        let Some(age) = self.backup_age_ms else {
            return u64::MAX;
        };
        let restore = self
            .last_passed_drill
            .as_ref()
            .map(|d| d.restore_ms)
            .into_iter()
            .chain(self.predicted_restore_ms)
            .max();
        let rpo_share = permille(age, millis(self.rpo));
        let rto_share = restore.map_or(0, |restore| permille(restore, millis(self.rto)));
        rpo_share.max(rto_share)
    }
}

/// Assesses one database at `now_unix_ms` by the rules in the module documentation.
pub fn assess(input: RecoveryInput, now_unix_ms: i64) -> Assessment {
    let RecoveryInput {
        database,
        tier,
        rto,
        rpo,
        newest_backup,
        mut drills,
        mut agent_drills,
    } = input;
    // Stable: drills finished in the same millisecond keep the caller's order.
    drills.sort_by_key(|d| Reverse(d.finished_unix_ms));
    agent_drills.sort_by_key(|d| Reverse(d.finished_unix_ms));
    let (rto_ms, rpo_ms) = (millis(rto), millis(rpo));
    let mut findings: Vec<(RtoStatus, String)> = Vec::new();

    // RPO: the newest backup's age.
    let backup_age_ms = newest_backup
        .as_ref()
        .map(|backup| age_ms(now_unix_ms, backup.created_unix_ms));
    match backup_age_ms {
        None => findings.push((
            RtoStatus::Breach,
            format!("no complete backup: run `warden backup {database}`"),
        )),
        Some(age) if age > rpo_ms => findings.push((
            RtoStatus::Breach,
            format!(
                "newest backup is {} old, RPO {}",
                human_ms(age),
                human_duration(rpo)
            ),
        )),
        Some(age) if over_share(age, rpo_ms) => findings.push((
            RtoStatus::AtRisk,
            format!(
                "newest backup is {} old, over {AT_RISK_PERCENT}% of RPO {}",
                human_ms(age),
                human_duration(rpo)
            ),
        )),
        Some(_) => {}
    }

    // RTO, measured: the drills of this database.
    let last_drill = drills.first().cloned();
    let last_passed_drill = drills.iter().find(|d| d.passed).cloned();
    if let Some(drill) = last_drill.as_ref().filter(|d| !d.passed) {
        let reason = if drill.error.trim().is_empty() {
            "last drill failed".to_owned()
        } else {
            format!("last drill failed: {}", drill.error.trim())
        };
        findings.push((RtoStatus::AtRisk, reason));
    }
    // Whether the measured restore time raised a finding; the prediction then adds none.
    let mut measured_finding = false;
    match &last_passed_drill {
        None if last_drill.is_none() => findings.push((
            RtoStatus::Unknown,
            format!("never drilled: run `warden drill {database}`"),
        )),
        None => findings.push((
            RtoStatus::Unknown,
            format!(
                "no drill has passed yet: run `warden drill {database}` once the failure is fixed"
            ),
        )),
        Some(passed) => {
            let label = if last_drill.as_ref() == Some(passed) {
                "last drill"
            } else {
                "last passing drill"
            };
            let took = human_ms(passed.restore_ms);
            let measured = if passed.restore_ms > rto_ms {
                Some((
                    RtoStatus::Breach,
                    format!("{label} took {took}, RTO {}", human_duration(rto)),
                ))
            } else if over_share(passed.restore_ms, rto_ms) {
                Some((
                    RtoStatus::AtRisk,
                    format!(
                        "{label} took {took}, over {AT_RISK_PERCENT}% of RTO {}",
                        human_duration(rto)
                    ),
                ))
            } else {
                None
            };
            measured_finding = measured.is_some();
            findings.extend(measured);
            let drill_age = age_ms(now_unix_ms, passed.finished_unix_ms);
            if drill_age > millis(DRILL_MAX_AGE) {
                findings.push((
                    RtoStatus::AtRisk,
                    format!(
                        "{label} was {} ago; drill at least every {}: run `warden drill {database}`",
                        human_ms(drill_age),
                        human_duration(DRILL_MAX_AGE)
                    ),
                ));
            }
        }
    }

    // RTO, predicted: the newest backup's size over the measured throughput.
    let own = Throughput::of(&drills);
    let (throughput, predicted_from_agent) = match own {
        Some(own) => (Some(own), false),
        None => (Throughput::of(&agent_drills), true),
    };
    let predicted_restore_ms = match (&newest_backup, &throughput) {
        (Some(backup), Some(throughput)) if backup.raw_bytes > 0 => {
            Some(throughput.restore_ms(backup.raw_bytes))
        }
        _ => None,
    };
    let predicted_from_agent = predicted_restore_ms.is_some() && predicted_from_agent;
    let measured_newest = matches!(
        (&last_passed_drill, &newest_backup),
        (Some(drill), Some(backup)) if drill.artifact_id == backup.artifact_id
    );
    if let (Some(predicted), Some(throughput), false) = (
        predicted_restore_ms,
        &throughput,
        measured_newest || measured_finding,
    ) {
        let basis = if predicted_from_agent {
            format!(
                "estimated from {} drill{} of other databases on the agent",
                throughput.drills,
                plural(throughput.drills)
            )
        } else {
            format!(
                "estimated from {} drill{}",
                throughput.drills,
                plural(throughput.drills)
            )
        };
        let over = if predicted > rto_ms {
            Some(format!("RTO {}", human_duration(rto)))
        } else if over_share(predicted, rto_ms) {
            Some(format!(
                "over {AT_RISK_PERCENT}% of RTO {}",
                human_duration(rto)
            ))
        } else {
            None
        };
        if let Some(over) = over {
            findings.push((
                RtoStatus::AtRisk,
                format!(
                    "restoring the newest backup would take about {}, {over} ({basis})",
                    human_ms(predicted)
                ),
            ));
        }
    }

    // Worst first; the order of the rules above among equals.
    findings.sort_by_key(|(status, _)| *status);
    let status = findings
        .first()
        .map_or(RtoStatus::Ok, |(status, _)| *status);
    Assessment {
        database,
        tier,
        rto,
        rpo,
        last_drill,
        last_passed_drill,
        predicted_restore_ms,
        predicted_from_agent,
        newest_backup,
        backup_age_ms,
        status,
        reasons: findings.into_iter().map(|(_, reason)| reason).collect(),
    }
}

/// Sorts assessments worst first: by status, then the most overdue (see
/// [`Assessment::overdue_permille`]), then by database name.
pub fn sort_worst_first(rows: &mut [Assessment]) {
    rows.sort_by(|a, b| {
        (a.status, Reverse(a.overdue_permille()), &a.database).cmp(&(
            b.status,
            Reverse(b.overdue_permille()),
            &b.database,
        ))
    });
}

/// Restore throughput over some passing drills: bytes and milliseconds, summed.
struct Throughput {
    bytes: u128,
    millis: u128,
    drills: usize,
}

impl Throughput {
    /// The throughput of the newest passing drills among `drills` (sorted newest first) that
    /// measured anything; `None` when there is none.
    fn of(drills: &[DrillFact]) -> Option<Self> {
        let measured: Vec<&DrillFact> = drills
            .iter()
            .filter(|d| d.passed && d.raw_bytes > 0 && d.restore_ms > 0)
            .take(THROUGHPUT_DRILLS)
            .collect();
        (!measured.is_empty()).then(|| Self {
            bytes: measured.iter().map(|d| u128::from(d.raw_bytes)).sum(),
            millis: measured.iter().map(|d| u128::from(d.restore_ms)).sum(),
            drills: measured.len(),
        })
    }

    /// The time to restore `raw_bytes`, rounded up.
    fn restore_ms(&self, raw_bytes: u64) -> u64 {
        u128::from(raw_bytes)
            .checked_mul(self.millis)
            .and_then(|product| u64::try_from(product.div_ceil(self.bytes)).ok())
            .unwrap_or(u64::MAX)
    }
}

fn plural(n: usize) -> &'static str {
    if n == 1 { "" } else { "s" }
}

/// A duration in whole milliseconds, saturating.
fn millis(duration: Duration) -> u64 {
    u64::try_from(duration.as_millis()).unwrap_or(u64::MAX)
}

/// How long ago `then` was at `now`; 0 when `then` is in the future.
fn age_ms(now_unix_ms: i64, then_unix_ms: i64) -> u64 {
    u64::try_from(i128::from(now_unix_ms) - i128::from(then_unix_ms)).unwrap_or(0)
}

/// Whether `value` is over [`AT_RISK_PERCENT`] of `target`.
fn over_share(value: u64, target: u64) -> bool {
    u128::from(value) * 100 > u128::from(target) * u128::from(AT_RISK_PERCENT)
}

/// `value / target` in thousandths, saturating; a zero target is infinitely overdue unless
/// the value is zero too.
fn permille(value: u64, target: u64) -> u64 {
    if target == 0 {
        return if value == 0 { 0 } else { u64::MAX };
    }
    u64::try_from(u128::from(value) * 1000 / u128::from(target)).unwrap_or(u64::MAX)
}

/// Prints a duration for people, to two units: `400ms`, `12s`, `12m 3s`, `26h 30m`, `45d 3h`.
/// Below 48 hours it counts hours, as targets are written (`RPO 24h`), then days.
/// Truncates: `59.9s` is `59s`.
pub fn human_duration(duration: Duration) -> String {
    human_ms(millis(duration))
}

fn human_ms(ms: u64) -> String {
    if ms < 1000 {
        return format!("{ms}ms");
    }
    let secs = ms / 1000;
    let units: [(u64, &str); 2] = if secs >= 48 * 3600 {
        [(secs / 86_400, "d"), (secs % 86_400 / 3600, "h")]
    } else if secs >= 3600 {
        [(secs / 3600, "h"), (secs % 3600 / 60, "m")]
    } else if secs >= 60 {
        [(secs / 60, "m"), (secs % 60, "s")]
    } else {
        [(secs, "s"), (0, "")]
    };
    let [(major, major_unit), (minor, minor_unit)] = units;
    if minor == 0 {
        format!("{major}{major_unit}")
    } else {
        format!("{major}{major_unit} {minor}{minor_unit}")
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    const SEC: i64 = 1000;
    const MIN: i64 = 60 * SEC;
    const HOUR: i64 = 60 * MIN;
    const DAY: i64 = 24 * HOUR;
    /// The fake clock: 2026-05-04T12:00:00Z.
    const NOW: i64 = 1_777_896_000_000;

    fn backup(id: &str, age_ms: i64, raw_bytes: u64) -> BackupFact {
        BackupFact {
            artifact_id: id.to_owned(),
            created_unix_ms: NOW - age_ms,
            raw_bytes,
        }
    }

    fn passed(artifact: &str, age_ms: i64, restore_ms: i64, raw_bytes: u64) -> DrillFact {
        DrillFact {
            order_id: format!("drill-{artifact}-{age_ms}"),
            artifact_id: artifact.to_owned(),
            finished_unix_ms: NOW - age_ms,
            passed: true,
            restore_ms: u64::try_from(restore_ms).unwrap(),
            raw_bytes,
            error: String::new(),
        }
    }

    fn failed(artifact: &str, age_ms: i64, error: &str) -> DrillFact {
        DrillFact {
            passed: false,
            restore_ms: 0,
            raw_bytes: 0,
            error: error.to_owned(),
            ..passed(artifact, age_ms, 0, 0)
        }
    }

    /// A database with a 10m RTO and a 24h RPO, a fresh backup, and a fresh fast drill of
    /// it: everything fine, for the tests to spoil one fact at a time.
    fn healthy() -> RecoveryInput {
        RecoveryInput {
            database: "a1/app".to_owned(),
            tier: "standard".to_owned(),
            rto: Duration::from_secs(600),
            rpo: Duration::from_secs(24 * 3600),
            newest_backup: Some(backup("b1", HOUR, 1_000_000)),
            drills: vec![passed("b1", 30 * MIN, MIN, 1_000_000)],
            agent_drills: vec![],
        }
    }

    fn assess_now(input: RecoveryInput) -> Assessment {
        assess(input, NOW)
    }

    #[track_caller]
    fn assert_status(a: &Assessment, status: RtoStatus, reasons: &[&str]) {
        assert_eq!(a.status, status, "{a:#?}");
        assert_eq!(a.reasons, reasons, "{a:#?}");
    }

    #[test]
    fn a_fresh_backup_and_a_fast_drill_are_ok() {
        let a = assess_now(healthy());
        assert_status(&a, RtoStatus::Ok, &[]);
        assert_eq!(a.database, "a1/app");
        assert_eq!(a.tier, "standard");
        assert_eq!(a.backup_age_ms, Some(3_600_000));
        assert_eq!(
            a.last_drill.as_ref().map(|d| d.artifact_id.as_str()),
            Some("b1")
        );
        assert_eq!(a.last_passed_drill, a.last_drill);
        assert_eq!(a.predicted_restore_ms, Some(60_000));
        assert!(!a.predicted_from_agent);
    }

    #[test]
    fn no_backup_is_an_rpo_breach() {
        let a = assess_now(RecoveryInput {
            newest_backup: None,
            ..healthy()
        });
        assert_status(
            &a,
            RtoStatus::Breach,
            &["no complete backup: run `warden backup a1/app`"],
        );
        assert_eq!(a.backup_age_ms, None);
        assert_eq!(a.predicted_restore_ms, None);
    }

    #[test]
    fn a_backup_older_than_the_rpo_is_a_breach() {
        let a = assess_now(RecoveryInput {
            newest_backup: Some(backup("b1", 26 * HOUR, 1_000_000)),
            ..healthy()
        });
        assert_status(
            &a,
            RtoStatus::Breach,
            &["newest backup is 26h old, RPO 24h"],
        );
        // One millisecond past the RPO is already a breach.
        let a = assess_now(RecoveryInput {
            newest_backup: Some(backup("b1", 24 * HOUR + 1, 1_000_000)),
            ..healthy()
        });
        assert_eq!(a.status, RtoStatus::Breach, "{a:#?}");
    }

    #[test]
    fn a_backup_exactly_rpo_old_is_at_risk_not_a_breach() {
        let a = assess_now(RecoveryInput {
            newest_backup: Some(backup("b1", 24 * HOUR, 1_000_000)),
            ..healthy()
        });
        assert_status(
            &a,
            RtoStatus::AtRisk,
            &["newest backup is 24h old, over 80% of RPO 24h"],
        );
    }

    #[test]
    fn a_backup_past_80_percent_of_the_rpo_is_at_risk() {
        let rpo_80 = 24 * HOUR * 8 / 10;
        let at = |age_ms: i64| {
            assess_now(RecoveryInput {
                newest_backup: Some(backup("b1", age_ms, 1_000_000)),
                ..healthy()
            })
        };
        assert_status(&at(rpo_80), RtoStatus::Ok, &[]);
        assert_status(
            &at(rpo_80 + 1),
            RtoStatus::AtRisk,
            &["newest backup is 19h 12m old, over 80% of RPO 24h"],
        );
        assert_status(
            &at(20 * HOUR),
            RtoStatus::AtRisk,
            &["newest backup is 20h old, over 80% of RPO 24h"],
        );
    }

    #[test]
    fn a_backup_from_the_future_is_zero_old() {
        for skew in [5 * MIN, 400 * DAY] {
            let a = assess_now(RecoveryInput {
                newest_backup: Some(backup("b1", -skew, 1_000_000)),
                ..healthy()
            });
            assert_status(&a, RtoStatus::Ok, &[]);
            assert_eq!(a.backup_age_ms, Some(0));
        }
        // Extreme timestamps neither panic nor wrap.
        let mut input = healthy();
        input.newest_backup.as_mut().unwrap().created_unix_ms = i64::MAX;
        input.drills[0].finished_unix_ms = i64::MAX;
        assert_eq!(assess(input, i64::MIN).backup_age_ms, Some(0));
        let mut input = healthy();
        input.newest_backup.as_mut().unwrap().created_unix_ms = i64::MIN;
        let a = assess(input, i64::MAX);
        assert_eq!(a.backup_age_ms, Some(u64::MAX));
        assert_eq!(a.status, RtoStatus::Breach);
    }

    #[test]
    fn a_drill_slower_than_the_rto_is_a_breach() {
        let a = assess_now(RecoveryInput {
            drills: vec![passed("b1", HOUR, 12 * MIN + 3 * SEC, 1_000_000)],
            ..healthy()
        });
        assert_status(&a, RtoStatus::Breach, &["last drill took 12m 3s, RTO 10m"]);
    }

    #[test]
    fn a_drill_exactly_at_the_rto_is_at_risk_not_a_breach() {
        let drill_took = |restore_ms: i64| {
            assess_now(RecoveryInput {
                drills: vec![passed("b1", HOUR, restore_ms, 1_000_000)],
                ..healthy()
            })
        };
        assert_status(
            &drill_took(10 * MIN),
            RtoStatus::AtRisk,
            &["last drill took 10m, over 80% of RTO 10m"],
        );
        assert_status(
            &drill_took(8 * MIN + 1),
            RtoStatus::AtRisk,
            &["last drill took 8m, over 80% of RTO 10m"],
        );
        assert_status(&drill_took(8 * MIN), RtoStatus::Ok, &[]);
    }

    #[test]
    fn a_failed_newest_drill_is_at_risk_and_the_passing_one_still_counts() {
        // The passing drill took 11m; the prediction from its throughput (11m as well) would
        // only repeat that, so it adds no reason.
        let a = assess_now(RecoveryInput {
            drills: vec![
                failed("b1", HOUR, "  row counts differ: orders 10 != 12\n"),
                passed("b0", 2 * DAY, 11 * MIN, 1_000_000),
            ],
            ..healthy()
        });
        assert_status(
            &a,
            RtoStatus::Breach,
            &[
                "last passing drill took 11m, RTO 10m",
                "last drill failed: row counts differ: orders 10 != 12",
            ],
        );
        assert_eq!(a.last_drill.as_ref().map(|d| d.passed), Some(false));
        assert_eq!(
            a.last_passed_drill.as_ref().map(|d| d.artifact_id.as_str()),
            Some("b0")
        );
        // Without an error text.
        let a = assess_now(RecoveryInput {
            drills: vec![
                failed("b1", HOUR, ""),
                passed("b0", 2 * DAY, MIN, 1_000_000),
            ],
            ..healthy()
        });
        assert_status(&a, RtoStatus::AtRisk, &["last drill failed"]);
    }

    #[test]
    fn never_drilled_is_unknown() {
        let a = assess_now(RecoveryInput {
            drills: vec![],
            ..healthy()
        });
        assert_status(
            &a,
            RtoStatus::Unknown,
            &["never drilled: run `warden drill a1/app`"],
        );
        assert_eq!(a.last_drill, None);
        assert_eq!(a.predicted_restore_ms, None);
        // Anything worse wins over unknown.
        let a = assess_now(RecoveryInput {
            drills: vec![],
            newest_backup: None,
            ..healthy()
        });
        assert_status(
            &a,
            RtoStatus::Breach,
            &[
                "no complete backup: run `warden backup a1/app`",
                "never drilled: run `warden drill a1/app`",
            ],
        );
    }

    #[test]
    fn only_failed_drills_are_at_risk() {
        let a = assess_now(RecoveryInput {
            drills: vec![failed("b1", HOUR, "checksum mismatch")],
            ..healthy()
        });
        assert_status(
            &a,
            RtoStatus::AtRisk,
            &[
                "last drill failed: checksum mismatch",
                "no drill has passed yet: run `warden drill a1/app` once the failure is fixed",
            ],
        );
    }

    #[test]
    fn never_drilled_borrows_the_agents_throughput_but_stays_unknown() {
        // Neighbours restore 1 MB/s; this database's newest backup holds 120 MB.
        let input = RecoveryInput {
            drills: vec![],
            newest_backup: Some(backup("b1", HOUR, 120_000_000)),
            agent_drills: vec![
                passed("x1", DAY, 100 * SEC, 100_000_000),
                failed("x2", HOUR, "boom"),
            ],
            ..healthy()
        };
        let a = assess_now(input.clone());
        assert_eq!(a.predicted_restore_ms, Some(120_000));
        assert!(a.predicted_from_agent);
        assert_status(
            &a,
            RtoStatus::Unknown,
            &["never drilled: run `warden drill a1/app`"],
        );
        // A predicted restore over the RTO raises it to at risk.
        let a = assess_now(RecoveryInput {
            newest_backup: Some(backup("b1", HOUR, 660_000_000)),
            ..input
        });
        assert_eq!(a.predicted_restore_ms, Some(660_000));
        assert_status(
            &a,
            RtoStatus::AtRisk,
            &[
                "restoring the newest backup would take about 11m, RTO 10m (estimated from 1 drill of other databases on the agent)",
                "never drilled: run `warden drill a1/app`",
            ],
        );
    }

    #[test]
    fn the_prediction_weighs_up_to_five_newest_passing_drills() {
        // Five passing drills at 2 MB/s in all (one tiny and slow one weighs little), one
        // older at 1 kB/s that is not counted, and failed ones that are never counted.
        let drills = vec![
            passed("b6", DAY, 10 * SEC, 10),
            failed("b5", 2 * DAY, "x"),
            passed("b5", 3 * DAY, 100 * SEC, 199_999_990),
            passed("b4", 4 * DAY, 100 * SEC, 200_000_000),
            passed("b3", 5 * DAY, 100 * SEC, 200_000_000),
            passed("b2", 6 * DAY, 90 * SEC, 200_000_000),
            passed("b1", 7 * DAY, 1_000 * SEC, 1_000_000),
        ];
        let a = assess_now(RecoveryInput {
            // Out of order on purpose: the assessment sorts.
            drills: drills.into_iter().rev().collect(),
            newest_backup: Some(backup("b7", HOUR, 800_000_000)),
            ..healthy()
        });
        // 800 MB * 400 s / 800 MB = 400 s.
        assert_eq!(a.predicted_restore_ms, Some(400_000));
        assert!(!a.predicted_from_agent);
        assert_eq!(
            a.last_drill.as_ref().map(|d| d.artifact_id.as_str()),
            Some("b6")
        );
        assert_status(&a, RtoStatus::Ok, &[]);
        // A database's own drills win over its agent's.
        let a = assess_now(RecoveryInput {
            agent_drills: vec![passed("x", HOUR, SEC, 1_000_000_000)],
            ..healthy()
        });
        assert_eq!(a.predicted_restore_ms, Some(60_000));
        assert!(!a.predicted_from_agent);
    }

    #[test]
    fn a_predicted_restore_near_or_over_the_rto_is_at_risk() {
        // The drill restored 100 MB in 1m (of an older backup); the newest holds more.
        let with_newest = |raw_bytes: u64| {
            assess_now(RecoveryInput {
                newest_backup: Some(backup("b2", HOUR, raw_bytes)),
                drills: vec![passed("b1", DAY, MIN, 100_000_000)],
                ..healthy()
            })
        };
        assert_status(&with_newest(800_000_000), RtoStatus::Ok, &[]);
        assert_status(
            &with_newest(900_000_000),
            RtoStatus::AtRisk,
            &[
                "restoring the newest backup would take about 9m, over 80% of RTO 10m (estimated from 1 drill)",
            ],
        );
        let a = with_newest(1_500_000_000);
        assert_eq!(a.predicted_restore_ms, Some(900_000));
        assert_status(
            &a,
            RtoStatus::AtRisk,
            &["restoring the newest backup would take about 15m, RTO 10m (estimated from 1 drill)"],
        );
        // A backup of unknown size predicts nothing.
        assert_eq!(with_newest(0).predicted_restore_ms, None);
    }

    #[test]
    fn a_drill_of_the_newest_backup_supersedes_the_prediction() {
        // Measured at 9m on the newest backup: one finding, not a second predicted one.
        let a = assess_now(RecoveryInput {
            drills: vec![
                passed("b1", HOUR, 9 * MIN, 1_000_000),
                passed("b0", DAY, SEC, 1_000_000),
            ],
            ..healthy()
        });
        assert_status(
            &a,
            RtoStatus::AtRisk,
            &["last drill took 9m, over 80% of RTO 10m"],
        );
        assert!(a.predicted_restore_ms.is_some());
    }

    #[test]
    fn a_drill_older_than_30_days_is_at_risk() {
        let drilled = |age_ms: i64| {
            assess_now(RecoveryInput {
                drills: vec![passed("b0", age_ms, MIN, 1_000_000)],
                ..healthy()
            })
        };
        assert_status(&drilled(30 * DAY), RtoStatus::Ok, &[]);
        assert_status(
            &drilled(45 * DAY + 3 * HOUR),
            RtoStatus::AtRisk,
            &["last drill was 45d 3h ago; drill at least every 30d: run `warden drill a1/app`"],
        );
        // A drill from the future is fresh.
        assert_status(&drilled(-DAY), RtoStatus::Ok, &[]);
    }

    #[test]
    fn the_status_is_the_worst_finding_and_reasons_come_worst_first() {
        let a = assess_now(RecoveryInput {
            newest_backup: Some(backup("b2", 22 * HOUR, 1_000_000)),
            drills: vec![
                failed("b2", HOUR, "disk full"),
                passed("b1", 40 * DAY, 15 * MIN, 1_000_000),
            ],
            ..healthy()
        });
        assert_status(
            &a,
            RtoStatus::Breach,
            &[
                "last passing drill took 15m, RTO 10m",
                "newest backup is 22h old, over 80% of RPO 24h",
                "last drill failed: disk full",
                "last passing drill was 40d ago; drill at least every 30d: run `warden drill a1/app`",
            ],
        );
    }

    #[test]
    fn zero_targets_do_not_panic() {
        let a = assess_now(RecoveryInput {
            rto: Duration::ZERO,
            rpo: Duration::ZERO,
            ..healthy()
        });
        assert_eq!(a.status, RtoStatus::Breach);
        assert_eq!(a.overdue_permille(), u64::MAX);
        // Huge sizes and times saturate instead of overflowing.
        let a = assess_now(RecoveryInput {
            newest_backup: Some(backup("b2", HOUR, u64::MAX)),
            drills: vec![DrillFact {
                restore_ms: u64::MAX,
                ..passed("b1", HOUR, 0, 1)
            }],
            ..healthy()
        });
        assert_eq!(a.predicted_restore_ms, Some(u64::MAX));
        assert_eq!(a.status, RtoStatus::Breach);
        let slow = DrillFact {
            restore_ms: u64::MAX,
            ..passed("b1", HOUR, 0, 1)
        };
        let a = assess_now(RecoveryInput {
            newest_backup: Some(backup("b2", HOUR, u64::MAX)),
            drills: vec![slow; 5],
            ..healthy()
        });
        assert_eq!(a.predicted_restore_ms, Some(u64::MAX));
    }

    #[test]
    fn statuses_order_and_print_worst_first() {
        let mut all = [
            RtoStatus::Ok,
            RtoStatus::Unknown,
            RtoStatus::Breach,
            RtoStatus::AtRisk,
        ];
        all.sort();
        assert_eq!(
            all,
            [
                RtoStatus::Breach,
                RtoStatus::AtRisk,
                RtoStatus::Unknown,
                RtoStatus::Ok
            ]
        );
        let names: Vec<&str> = all.iter().map(|s| s.as_str()).collect();
        assert_eq!(names, ["breach", "at_risk", "unknown", "ok"]);
        let severities: Vec<u8> = all.iter().map(|s| s.severity()).collect();
        assert_eq!(severities, [0, 1, 2, 3]);
        assert_eq!(RtoStatus::AtRisk.to_string(), "at_risk");
    }

    #[test]
    fn overdue_is_the_larger_share_of_either_target() {
        let a = assess_now(RecoveryInput {
            newest_backup: Some(backup("b1", 12 * HOUR, 1_000_000)),
            drills: vec![passed("b1", HOUR, 3 * MIN, 1_000_000)],
            ..healthy()
        });
        assert_eq!(a.overdue_permille(), 500);
        let a = assess_now(RecoveryInput {
            newest_backup: Some(backup("b1", 6 * HOUR, 1_000_000)),
            drills: vec![passed("b1", HOUR, 7 * MIN, 1_000_000)],
            ..healthy()
        });
        assert_eq!(a.overdue_permille(), 700);
        let a = assess_now(RecoveryInput {
            newest_backup: None,
            ..healthy()
        });
        assert_eq!(a.overdue_permille(), u64::MAX);
    }

    #[test]
    fn sorting_puts_the_worst_and_most_overdue_first() {
        let row = |database: &str, backup_age_ms: Option<i64>, drill_ms: Option<i64>| {
            assess_now(RecoveryInput {
                database: database.to_owned(),
                newest_backup: backup_age_ms.map(|age| backup("b1", age, 1_000_000)),
                drills: drill_ms
                    .map(|ms| passed("b1", HOUR, ms, 1_000_000))
                    .into_iter()
                    .collect(),
                ..healthy()
            })
        };
        let mut rows = vec![
            row("ok-b", Some(HOUR), Some(MIN)),
            row("ok-a", Some(HOUR), Some(MIN)),
            row("unknown", Some(HOUR), None),
            row("risk-slight", Some(20 * HOUR), Some(MIN)),
            row("breach-rpo-slight", Some(25 * HOUR), Some(MIN)),
            row("risk-close", Some(23 * HOUR), Some(MIN)),
            row("breach-no-backup", None, Some(MIN)),
            row("breach-rto-far", Some(HOUR), Some(40 * MIN)),
            row("ok-older", Some(10 * HOUR), Some(MIN)),
        ];
        sort_worst_first(&mut rows);
        let order: Vec<(&str, &str)> = rows
            .iter()
            .map(|r| (r.database.as_str(), r.status.as_str()))
            .collect();
        assert_eq!(
            order,
            [
                ("breach-no-backup", "breach"),
                ("breach-rto-far", "breach"),
                ("breach-rpo-slight", "breach"),
                ("risk-close", "at_risk"),
                ("risk-slight", "at_risk"),
                ("unknown", "unknown"),
                ("ok-older", "ok"),
                ("ok-a", "ok"),
                ("ok-b", "ok"),
            ]
        );
    }

    #[test]
    fn durations_print_for_people() {
        for (ms, text) in [
            (0, "0ms"),
            (400, "400ms"),
            (999, "999ms"),
            (1_000, "1s"),
            (59_999, "59s"),
            (60_000, "1m"),
            (723_400, "12m 3s"),
            (3_600_000, "1h"),
            (3_660_000, "1h 1m"),
            (3_605_000, "1h"),
            (86_400_000, "24h"),
            (93_600_000, "26h"),
            (172_799_000, "47h 59m"),
            (172_800_000, "2d"),
            (3_898_800_000, "45d 3h"),
        ] {
            assert_eq!(human_ms(ms), text, "{ms}");
        }
        assert_eq!(human_duration(Duration::from_secs(1800)), "30m");
        assert_eq!(human_duration(Duration::MAX), human_ms(u64::MAX));
    }
}
