//! Fleet policy: maintenance windows and freezes, backup and drill schedules, retention,
//! recovery tiers (RTO/RPO targets), drill checks, the migrations' destructive guard and
//! concurrency limits. Everything here is
//! pure: functions take the time as an argument, so they are tested with a fake clock, and the
//! dispatcher and scheduler call them with the real one.
//!
//! The policy is one declarative document (`fleet.toml`, see [`document`]); the coordinator
//! stores each applied version and evaluates the newest.

pub mod document;
pub mod migrate;
pub mod recovery;
pub mod retention;
pub mod schedule;
pub mod window;

use std::fmt;
use std::time::Duration;

use chrono::{NaiveDateTime, Timelike};
use chrono_tz::Tz;
use warden_shared::Selector;

pub use document::{Change, ChangeOp, FleetPolicy};
pub use migrate::MigratePolicy;
pub use recovery::{CheckRule, DEFAULT_TIER, Tier, builtin_tiers};
pub use retention::{Candidate, PruneDecision, Retention, RetentionRule};
pub use schedule::{Schedule, ScheduleAction};
pub use window::{Opening, Recurrence, Verdict, WeeklySpec, Window, WindowKind};

/// A policy value that does not validate: which field, what it held, and what is wrong.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub struct PolicyError {
    /// Where the value sits, e.g. `window "prod-nightly".timezone`.
    pub field: String,
    pub value: String,
    pub problem: String,
}

impl fmt::Display for PolicyError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{} = {:?}: {}", self.field, self.value, self.problem)
    }
}

impl PolicyError {
    pub fn new(
        field: impl Into<String>,
        value: impl Into<String>,
        problem: impl Into<String>,
    ) -> Self {
        Self {
            field: field.into(),
            value: value.into(),
            problem: problem.into(),
        }
    }
}

/// A cron expression (5 fields, or 6 with seconds first), kept with its text.
#[derive(Debug, Clone)]
pub struct CronExpr {
    text: String,
    /// Boxed: a parsed pattern is large, and recurrences hold one inline.
    cron: Box<croner::Cron>,
}

impl CronExpr {
    pub fn parse(field: &str, text: &str) -> Result<Self, PolicyError> {
        let cron = text.parse::<croner::Cron>().map_err(|e| {
            PolicyError::new(field, text, format!("not a valid cron expression: {e}"))
        })?;
        Ok(Self {
            text: text.trim().to_owned(),
            cron: Box::new(cron),
        })
    }

    pub fn as_str(&self) -> &str {
        &self.text
    }

    pub fn cron(&self) -> &croner::Cron {
        &self.cron
    }
}

impl PartialEq for CronExpr {
    fn eq(&self, other: &Self) -> bool {
        self.text == other.text
    }
}

impl Eq for CronExpr {}

/// Parses an IANA time zone name such as `Europe/Berlin`.
pub fn parse_timezone(field: &str, text: &str) -> Result<Tz, PolicyError> {
    text.parse::<Tz>().map_err(|_| {
        PolicyError::new(
            field,
            text,
            "unknown time zone; use an IANA name such as UTC, Europe/Berlin or America/New_York",
        )
    })
}

/// Parses a selector, naming the field on error.
pub fn parse_selector(field: &str, text: &str) -> Result<Selector, PolicyError> {
    text.parse::<Selector>()
        .map_err(|e| PolicyError::new(field, text, e.problem))
}

/// Parses a duration such as `2h`, `90m` or `1h 30m`.
pub fn parse_duration(field: &str, text: &str) -> Result<Duration, PolicyError> {
    humantime::parse_duration(text).map_err(|e| {
        PolicyError::new(
            field,
            text,
            format!("not a duration such as 2h or 90m: {e}"),
        )
    })
}

/// The longest name a window, schedule, retention rule, tier or check may have.
pub const MAX_NAME_LEN: usize = 63;

/// Checks the name of a window, schedule, retention rule, tier or check: 1 to 63 letters,
/// digits, `-`, `_` or `.`, so that it prints and quotes the same everywhere.
pub fn parse_name(field: &str, text: &str) -> Result<String, PolicyError> {
    const EXPECTED: &str = "use 1 to 63 letters, digits, '-', '_' or '.', e.g. prod-nightly";
    if text.is_empty() {
        return Err(PolicyError::new(
            field,
            text,
            format!("the name is empty; {EXPECTED}"),
        ));
    }
    if text.chars().count() > MAX_NAME_LEN {
        return Err(PolicyError::new(
            field,
            text,
            format!(
                "the name is {} characters long; {EXPECTED}",
                text.chars().count()
            ),
        ));
    }
    if let Some(bad) = text
        .chars()
        .find(|c| !(c.is_alphanumeric() || matches!(c, '-' | '_' | '.')))
    {
        return Err(PolicyError::new(
            field,
            text,
            format!("the name contains {bad:?}; {EXPECTED}"),
        ));
    }
    Ok(text.to_owned())
}

/// Parses a local date and time such as `2026-12-20T00:00`, `2026-12-20 00:00` or either with
/// seconds; it is read later on the wall clock of a time zone.
pub fn parse_local_time(field: &str, text: &str) -> Result<NaiveDateTime, PolicyError> {
    const FORMATS: [&str; 4] = [
        "%Y-%m-%dT%H:%M",
        "%Y-%m-%d %H:%M",
        "%Y-%m-%dT%H:%M:%S",
        "%Y-%m-%d %H:%M:%S",
    ];
    FORMATS
        .iter()
        .find_map(|format| NaiveDateTime::parse_from_str(text.trim(), format).ok())
        .ok_or_else(|| {
            PolicyError::new(
                field,
                text,
                "not a local date and time; write it like 2026-12-20T00:00 (no offset: it is read in the timezone)",
            )
        })
}

/// Prints a local date and time the way [`parse_local_time`] reads it, without seconds when
/// they are zero.
pub fn format_local_time(time: &NaiveDateTime) -> String {
    if time.second() == 0 && time.nanosecond() == 0 {
        time.format("%Y-%m-%dT%H:%M").to_string()
    } else {
        time.format("%Y-%m-%dT%H:%M:%S").to_string()
    }
}

/// Concurrency limits. Orders over a limit wait in `held` with the reason shown.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Limits {
    /// Orders of any kind running at once on one agent.
    pub per_agent: u32,
    /// Backups running at once across the whole fleet.
    pub fleet_backups: u32,
}

impl Default for Limits {
    fn default() -> Self {
        Self {
            per_agent: 2,
            fleet_backups: 4,
        }
    }
}
