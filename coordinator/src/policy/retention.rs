//! Retention: which complete backups of a database may be pruned.
//!
//! Every rule only ever keeps: a backup goes when no rule of any policy that applies keeps
//! it, and the newest backup of a database stays whatever the rules say, so retention can
//! never leave a database without a backup.

use std::collections::BTreeSet;

use chrono::{DateTime, Datelike, TimeDelta, Utc};
use chrono_tz::Tz;
use warden_shared::Selector;

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Retention {
    /// Keep backups younger than this many days; 0 keeps none for their age.
    pub keep_days: u32,
    /// Keep the newest N backups; 0 keeps none for their rank.
    pub keep_last: u32,
    /// Grandfather-father-son: the newest backup of each of the last N days, ISO weeks and
    /// months that have one, in `timezone`.
    pub daily: u32,
    pub weekly: u32,
    pub monthly: u32,
    pub timezone: Tz,
}

impl Default for Retention {
    fn default() -> Self {
        Self {
            keep_days: 30,
            keep_last: 0,
            daily: 0,
            weekly: 0,
            monthly: 0,
            timezone: Tz::UTC,
        }
    }
}

/// Retention for the databases a selector picks.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct RetentionRule {
    pub name: String,
    pub selector: Selector,
    pub retention: Retention,
}

/// One complete backup of a database.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Candidate {
    pub id: String,
    pub created: DateTime<Utc>,
}

/// What the policies say of one backup.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct PruneDecision {
    pub id: String,
    pub prune: bool,
    /// Why it is kept (`keep_days`, `keep_last`, `daily`, ..., `newest`) or why it goes.
    pub why: String,
}

/// The `why` of every backup when no policy covers the database.
const NO_POLICY: &str = "no retention policy applies";

/// Decides, for the complete backups of one database, which to prune. A backup is kept if
/// any of the policies keeps it; with no policy everything is kept; the newest is always kept.
/// Returns one decision per backup, in the order of `backups`.
pub fn plan(
    policies: &[&Retention],
    backups: &[Candidate],
    now: DateTime<Utc>,
) -> Vec<PruneDecision> {
    if policies.is_empty() {
        return backups
            .iter()
            .map(|backup| PruneDecision {
                id: backup.id.clone(),
                prune: false,
                why: NO_POLICY.to_owned(),
            })
            .collect();
    }

    // Newest first. Equal times are ordered by id (UUIDv7 ids sort by creation), so the
    // plan never depends on the order the catalog returned the backups in.
    let mut newest_first: Vec<usize> = (0..backups.len()).collect();
    newest_first.sort_by(|&a, &b| {
        (backups[b].created, &backups[b].id).cmp(&(backups[a].created, &backups[a].id))
    });

    let mut reasons: Vec<Vec<String>> = vec![Vec::new(); backups.len()];
    let mut keep = |index: usize, reason: String| {
        if !reasons[index].contains(&reason) {
            reasons[index].push(reason);
        }
    };
    for policy in policies {
        for (index, reason) in kept_by(policy, backups, &newest_first, now) {
            keep(index, reason);
        }
    }
    if let Some(&newest) = newest_first.first() {
        keep(newest, "newest".to_owned());
    }

    let mut pruned_because: Vec<String> = Vec::new();
    for policy in policies {
        let because = not_kept_because(policy);
        if !pruned_because.contains(&because) {
            pruned_because.push(because);
        }
    }
    let pruned_because = pruned_because.join("; ");
    backups
        .iter()
        .zip(reasons)
        .map(|(backup, reasons)| PruneDecision {
            id: backup.id.clone(),
            prune: reasons.is_empty(),
            why: if reasons.is_empty() {
                pruned_because.clone()
            } else {
                reasons.join(", ")
            },
        })
        .collect()
}

/// The backups one policy keeps, each with the rule that keeps it.
fn kept_by(
    policy: &Retention,
    backups: &[Candidate],
    newest_first: &[usize],
    now: DateTime<Utc>,
) -> Vec<(usize, String)> {
    let mut kept = Vec::new();
    if policy.keep_days > 0 {
        // A cutoff before the start of time keeps everything.
        let cutoff = now.checked_sub_signed(TimeDelta::days(i64::from(policy.keep_days)));
        let reason = format!("keep_days={}", policy.keep_days);
        for (index, backup) in backups.iter().enumerate() {
            if cutoff.is_none_or(|cutoff| backup.created > cutoff) {
                kept.push((index, reason.clone()));
            }
        }
    }
    let reason = format!("keep_last={}", policy.keep_last);
    for &index in newest_first.iter().take(policy.keep_last as usize) {
        kept.push((index, reason.clone()));
    }

    for (period, count) in [
        (Period::Day, policy.daily),
        (Period::Week, policy.weekly),
        (Period::Month, policy.monthly),
    ] {
        let period_of = |index: usize| period.of(backups[index].created, policy.timezone);
        for index in newest_per_period(newest_first, count, period_of) {
            kept.push((index, period.rule().to_owned()));
        }
    }
    kept
}

/// The calendar periods of grandfather-father-son retention.
#[derive(Debug, Clone, Copy)]
enum Period {
    Day,
    /// An ISO week, Monday to Sunday.
    Week,
    Month,
}

impl Period {
    /// The rule's name in `fleet.toml`, also the reason given for what it keeps.
    fn rule(self) -> &'static str {
        match self {
            Self::Day => "daily",
            Self::Week => "weekly",
            Self::Month => "monthly",
        }
    }

    /// Which period `time` falls in on the wall clock of `tz`, as (year, number in the year).
    fn of(self, time: DateTime<Utc>, tz: Tz) -> (i32, u32) {
        let local = time.with_timezone(&tz);
        match self {
            Self::Day => (local.year(), local.ordinal()),
            Self::Week => {
                let week = local.iso_week();
                (week.year(), week.week())
            }
            Self::Month => (local.year(), local.month()),
        }
    }
}

/// The newest backup of each of the `count` most recent periods that have a backup.
fn newest_per_period(
    newest_first: &[usize],
    count: u32,
    period_of: impl Fn(usize) -> (i32, u32),
) -> Vec<usize> {
    let mut seen = BTreeSet::new();
    let mut kept = Vec::new();
    if count == 0 {
        return kept;
    }
    for &index in newest_first {
        // A set rather than "differs from the previous one": where a zone turns its clock
        // back over midnight, local dates are not monotonic in UTC.
        if seen.insert(period_of(index)) {
            if seen.len() > count as usize {
                break;
            }
            kept.push(index);
        }
    }
    kept
}

/// Why one policy lets a backup go, e.g. `older than 30 days and not kept by keep_last=3`.
fn not_kept_because(policy: &Retention) -> String {
    let counted: Vec<String> = [
        ("keep_last", policy.keep_last),
        ("daily", policy.daily),
        ("weekly", policy.weekly),
        ("monthly", policy.monthly),
    ]
    .into_iter()
    .filter(|(_, count)| *count > 0)
    .map(|(rule, count)| format!("{rule}={count}"))
    .collect();
    match (policy.keep_days, counted.is_empty()) {
        (0, true) => "the retention policy keeps only the newest backup".to_owned(),
        (0, false) => format!("not kept by {}", counted.join(", ")),
        (days, true) => format!("older than {days} days"),
        (days, false) => format!(
            "older than {days} days and not kept by {}",
            counted.join(", ")
        ),
    }
}

#[cfg(test)]
mod tests {
    use chrono::{NaiveDate, TimeZone};

    use super::*;

    fn at(text: &str) -> DateTime<Utc> {
        DateTime::parse_from_rfc3339(text)
            .unwrap()
            .with_timezone(&Utc)
    }

    fn policy(keep_days: u32, keep_last: u32) -> Retention {
        Retention {
            keep_days,
            keep_last,
            ..Retention::default()
        }
    }

    /// One backup `days_ago` days before `now`, named after its age.
    fn aged(now: DateTime<Utc>, days_ago: &[i64]) -> Vec<Candidate> {
        days_ago
            .iter()
            .map(|days| Candidate {
                id: format!("d{days}"),
                created: now - TimeDelta::days(*days),
            })
            .collect()
    }

    fn kept_ids(decisions: &[PruneDecision]) -> Vec<&str> {
        decisions
            .iter()
            .filter(|d| !d.prune)
            .map(|d| d.id.as_str())
            .collect()
    }

    fn why<'a>(decisions: &'a [PruneDecision], id: &str) -> &'a str {
        &decisions.iter().find(|d| d.id == id).unwrap().why
    }

    #[test]
    fn no_policy_keeps_everything() {
        let now = at("2026-05-04T12:00:00Z");
        let decisions = plan(&[], &aged(now, &[1, 100, 1000]), now);
        assert_eq!(decisions.len(), 3);
        for decision in &decisions {
            assert!(!decision.prune);
            assert_eq!(decision.why, "no retention policy applies");
        }
    }

    #[test]
    fn empty_backups_give_an_empty_plan() {
        let now = at("2026-05-04T12:00:00Z");
        assert!(plan(&[&policy(30, 3)], &[], now).is_empty());
        assert!(plan(&[], &[], now).is_empty());
    }

    #[test]
    fn age_only() {
        let now = at("2026-05-04T12:00:00Z");
        let backups = aged(now, &[0, 5, 29, 30, 31, 90]);
        let decisions = plan(&[&policy(30, 0)], &backups, now);
        // Exactly 30 days old is not younger than 30 days.
        assert_eq!(kept_ids(&decisions), ["d0", "d5", "d29"]);
        assert_eq!(why(&decisions, "d0"), "keep_days=30, newest");
        assert_eq!(why(&decisions, "d29"), "keep_days=30");
        assert_eq!(why(&decisions, "d30"), "older than 30 days");
        assert!(decisions.iter().find(|d| d.id == "d90").unwrap().prune);
    }

    #[test]
    fn count_only() {
        let now = at("2026-05-04T12:00:00Z");
        let backups = aged(now, &[3, 1, 2, 400]);
        let decisions = plan(&[&policy(0, 2)], &backups, now);
        assert_eq!(kept_ids(&decisions), ["d1", "d2"]);
        assert_eq!(why(&decisions, "d1"), "keep_last=2, newest");
        assert_eq!(why(&decisions, "d2"), "keep_last=2");
        assert_eq!(why(&decisions, "d3"), "not kept by keep_last=2");
    }

    #[test]
    fn union_of_two_policies() {
        let now = at("2026-05-04T12:00:00Z");
        let backups = aged(now, &[1, 8, 40, 41, 42, 43, 44, 45]);
        let short = policy(10, 0);
        let deep = policy(0, 4);
        let decisions = plan(&[&short, &deep], &backups, now);
        assert_eq!(kept_ids(&decisions), ["d1", "d8", "d40", "d41"]);
        assert_eq!(why(&decisions, "d1"), "keep_days=10, keep_last=4, newest");
        assert_eq!(why(&decisions, "d40"), "keep_last=4");
        assert_eq!(
            why(&decisions, "d42"),
            "older than 10 days; not kept by keep_last=4"
        );
        // Each policy alone keeps less.
        assert_eq!(kept_ids(&plan(&[&short], &backups, now)), ["d1", "d8"]);
        assert_eq!(
            kept_ids(&plan(&[&deep], &backups, now)),
            ["d1", "d8", "d40", "d41"]
        );
        let shallow = policy(0, 1);
        assert_eq!(
            kept_ids(&plan(&[&short, &shallow], &backups, now)),
            ["d1", "d8"]
        );
    }

    #[test]
    fn pruned_reason_combines_age_and_counts() {
        let now = at("2026-05-04T12:00:00Z");
        let backups = aged(now, &[1, 2, 3, 4, 50]);
        let decisions = plan(&[&policy(30, 3)], &backups, now);
        assert_eq!(
            why(&decisions, "d50"),
            "older than 30 days and not kept by keep_last=3"
        );
    }

    #[test]
    fn gfs_over_a_year_of_daily_backups() {
        // One backup a day at 03:00Z through 2025; 2025-12-31 is a Wednesday.
        let first = NaiveDate::from_ymd_opt(2025, 1, 1).unwrap();
        let backups: Vec<Candidate> = first
            .iter_days()
            .take_while(|day| day.year() == 2025)
            .map(|day| Candidate {
                id: format!("b-{day}"),
                created: Utc.from_utc_datetime(&day.and_hms_opt(3, 0, 0).unwrap()),
            })
            .collect();
        assert_eq!(backups.len(), 365);
        let gfs = Retention {
            keep_days: 0,
            keep_last: 0,
            daily: 7,
            weekly: 4,
            monthly: 6,
            timezone: Tz::UTC,
        };
        let decisions = plan(&[&gfs], &backups, at("2025-12-31T12:00:00Z"));
        let kept = kept_ids(&decisions);
        let expected = [
            // monthly: the last day of July..November (December's is the newest)
            "b-2025-07-31",
            "b-2025-08-31",
            "b-2025-09-30",
            "b-2025-10-31",
            "b-2025-11-30",
            // weekly: the Sundays closing the two weeks before the last two ISO weeks
            "b-2025-12-14",
            "b-2025-12-21",
            // daily: the last seven days
            "b-2025-12-25",
            "b-2025-12-26",
            "b-2025-12-27",
            "b-2025-12-28",
            "b-2025-12-29",
            "b-2025-12-30",
            "b-2025-12-31",
        ];
        assert_eq!(kept, expected);
        assert_eq!(why(&decisions, "b-2025-12-14"), "weekly");
        assert_eq!(why(&decisions, "b-2025-07-31"), "monthly");
        assert_eq!(why(&decisions, "b-2025-12-28"), "daily, weekly");
        assert_eq!(why(&decisions, "b-2025-12-27"), "daily");
        assert_eq!(
            why(&decisions, "b-2025-12-31"),
            "daily, weekly, monthly, newest"
        );
        assert_eq!(
            why(&decisions, "b-2025-12-24"),
            "not kept by daily=7, weekly=4, monthly=6"
        );
        assert!(
            decisions
                .iter()
                .find(|d| d.id == "b-2025-06-30")
                .unwrap()
                .prune
        );
        assert!(
            decisions
                .iter()
                .find(|d| d.id == "b-2025-12-13")
                .unwrap()
                .prune
        );
    }

    #[test]
    fn gfs_counts_periods_that_have_a_backup() {
        // Backups on three days spread over months: daily=2 keeps the newest of the two most
        // recent days that have one, however long ago.
        let backups = vec![
            Candidate {
                id: "jan-a".to_owned(),
                created: at("2026-01-10T01:00:00Z"),
            },
            Candidate {
                id: "jan-b".to_owned(),
                created: at("2026-01-10T05:00:00Z"),
            },
            Candidate {
                id: "mar".to_owned(),
                created: at("2026-03-02T01:00:00Z"),
            },
            Candidate {
                id: "dec".to_owned(),
                created: at("2025-12-01T01:00:00Z"),
            },
        ];
        let daily = Retention {
            keep_days: 0,
            daily: 2,
            ..Retention::default()
        };
        let decisions = plan(&[&daily], &backups, at("2026-06-01T00:00:00Z"));
        assert_eq!(kept_ids(&decisions), ["jan-b", "mar"]);
    }

    #[test]
    fn gfs_day_boundaries_follow_the_policy_timezone() {
        // 22:30Z and 23:30Z on 2026-07-01 are 00:30 and 01:30 on 2026-07-02 in Berlin.
        let backups = vec![
            Candidate {
                id: "a".to_owned(),
                created: at("2026-07-01T21:30:00Z"),
            },
            Candidate {
                id: "b".to_owned(),
                created: at("2026-07-01T22:30:00Z"),
            },
            Candidate {
                id: "c".to_owned(),
                created: at("2026-07-01T23:30:00Z"),
            },
        ];
        let now = at("2026-07-02T12:00:00Z");
        let daily_utc = Retention {
            keep_days: 0,
            daily: 2,
            ..Retention::default()
        };
        let daily_berlin = Retention {
            timezone: chrono_tz::Europe::Berlin,
            ..daily_utc
        };
        // In UTC all three share one day: only the newest stays.
        assert_eq!(kept_ids(&plan(&[&daily_utc], &backups, now)), ["c"]);
        // In Berlin "a" is the newest of 2026-07-01 and "c" of 2026-07-02.
        assert_eq!(kept_ids(&plan(&[&daily_berlin], &backups, now)), ["a", "c"]);
    }

    #[test]
    fn newest_is_always_kept() {
        let now = at("2026-05-04T12:00:00Z");
        let backups = aged(now, &[1000, 1200]);
        let decisions = plan(&[&policy(0, 0)], &backups, now);
        assert_eq!(kept_ids(&decisions), ["d1000"]);
        assert_eq!(why(&decisions, "d1000"), "newest");
        assert_eq!(
            why(&decisions, "d1200"),
            "the retention policy keeps only the newest backup"
        );
        let decisions = plan(&[&policy(30, 0)], &backups, now);
        assert_eq!(kept_ids(&decisions), ["d1000"]);
        assert_eq!(why(&decisions, "d1000"), "newest");
    }

    #[test]
    fn unordered_input_keeps_its_order_in_the_plan() {
        let now = at("2026-05-04T12:00:00Z");
        let backups = aged(now, &[7, 1, 9, 3, 5, 2]);
        let decisions = plan(&[&policy(0, 3)], &backups, now);
        let ids: Vec<&str> = decisions.iter().map(|d| d.id.as_str()).collect();
        assert_eq!(ids, ["d7", "d1", "d9", "d3", "d5", "d2"]);
        assert_eq!(kept_ids(&decisions), ["d1", "d3", "d2"]);
        let mut reversed = backups.clone();
        reversed.reverse();
        assert_eq!(
            kept_ids(&plan(&[&policy(0, 3)], &reversed, now)),
            ["d2", "d3", "d1"]
        );
    }

    #[test]
    fn equal_times_break_ties_by_id() {
        let now = at("2026-05-04T12:00:00Z");
        let created = at("2026-05-01T00:00:00Z");
        let backups: Vec<Candidate> = ["b", "c", "a"]
            .iter()
            .map(|id| Candidate {
                id: (*id).to_owned(),
                created,
            })
            .collect();
        let decisions = plan(&[&policy(0, 0)], &backups, now);
        assert_eq!(kept_ids(&decisions), ["c"]);
    }
}
