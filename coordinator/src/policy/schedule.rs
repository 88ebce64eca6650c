//! Backup schedules: when the coordinator fires them.

use std::time::Duration;

use chrono::{DateTime, Utc};
use chrono_tz::Tz;
use warden_shared::Selector;

use super::{CronExpr, Retention};

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum ScheduleAction {
    Backup,
}

#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Schedule {
    pub name: String,
    pub selector: Selector,
    pub cron: CronExpr,
    pub timezone: Tz,
    /// Each database's run is delayed by a stable pseudo-random part of this.
    pub jitter: Duration,
    pub action: ScheduleAction,
    /// Retention for the databases this schedule selects, if it has its own.
    pub retention: Option<Retention>,
}

impl Schedule {
    /// The slot to fire at `now`: the newest cron occurrence in `(since, now]`, where `since`
    /// is the last slot fired (or when the schedule was created). Slots missed while the
    /// coordinator was down collapse into this one. `None` when no slot has come.
    pub fn due(&self, since: DateTime<Utc>, now: DateTime<Utc>) -> Option<DateTime<Utc>> {
        let _ = (since, now);
        None
    }

    /// The first occurrence strictly after `after`.
    pub fn next_after(&self, after: DateTime<Utc>) -> Option<DateTime<Utc>> {
        let _ = after;
        None
    }

    /// How long `database`'s run of `slot` waits: stable for the same inputs, below `jitter`.
    pub fn jitter_for(&self, database: &str, slot: DateTime<Utc>) -> Duration {
        let _ = (database, slot);
        Duration::ZERO
    }
}
