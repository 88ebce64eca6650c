//! Schedules: when the coordinator fires backups and restore drills.
//!
//! A schedule's cron expression is read on the wall clock of its time zone, so `0 3 * * *` in
//! `Europe/Berlin` fires at 03:00 Berlin time in summer and in winter. The scheduler keeps,
//! per schedule, the last slot it fired and asks [`Schedule::due`] on every tick.

use std::time::Duration;

use chrono::{DateTime, Utc};
use chrono_tz::Tz;
use sha2::{Digest, Sha256};
use warden_shared::Selector;

use super::{CronExpr, Retention};

/// What a schedule runs on each selected database when a slot fires.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum ScheduleAction {
    /// Takes a backup.
    Backup,
    /// Restores the newest complete backup into a scratch database, verifies and times it
    /// (a restore drill). Takes no backup, so such a schedule has no retention.
    Drill,
}

impl ScheduleAction {
    /// The name used in `fleet.toml`.
    pub fn as_str(self) -> &'static str {
        match self {
            Self::Backup => "backup",
            Self::Drill => "drill",
        }
    }

    /// Reads the name used in `fleet.toml`.
    pub fn parse(text: &str) -> Option<Self> {
        [Self::Backup, Self::Drill]
            .into_iter()
            .find(|action| action.as_str() == text)
    }
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
    /// Retention for the databases this schedule selects, if it has its own. Always `None`
    /// for a drill schedule.
    pub retention: Option<Retention>,
}

impl Schedule {
    /// The slot to fire at `now`: the newest cron occurrence in `(since, now]`, where `since`
    /// is the last slot fired (or when the schedule was created). Slots missed while the
    /// coordinator was down collapse into this one. `None` when no slot has come.
    pub fn due(&self, since: DateTime<Utc>, now: DateTime<Utc>) -> Option<DateTime<Utc>> {
        if now <= since {
            return None;
        }
        // One backward search from `now` finds the newest slot directly; croner steps by
        // calendar fields, so a long outage costs no more than a short one.
        let slot = self
            .cron
            .cron()
            .find_previous_occurrence(&now.with_timezone(&self.timezone), true)
            .ok()?
            .with_timezone(&Utc);
        (since < slot && slot <= now).then_some(slot)
    }

    /// The first occurrence strictly after `after`.
    pub fn next_after(&self, after: DateTime<Utc>) -> Option<DateTime<Utc>> {
        let next = self
            .cron
            .cron()
            .find_next_occurrence(&after.with_timezone(&self.timezone), false)
            .ok()?
            .with_timezone(&Utc);
        // croner drops sub-second precision; never hand back an instant at or before `after`.
        (next > after).then_some(next)
    }

    /// How long `database`'s run of `slot` waits: stable for the same inputs, below `jitter`.
    pub fn jitter_for(&self, database: &str, slot: DateTime<Utc>) -> Duration {
        let jitter_nanos = self.jitter.as_nanos();
        if jitter_nanos == 0 {
            return Duration::ZERO;
        }
        let mut hasher = Sha256::new();
        // Length prefixes keep ("ab", "c") and ("a", "bc") apart.
        for part in [self.name.as_bytes(), database.as_bytes()] {
            hasher.update((part.len() as u64).to_be_bytes());
            hasher.update(part);
        }
        hasher.update(slot.timestamp_millis().to_be_bytes());
        let digest = hasher.finalize();
        let mut head = [0u8; 8];
        head.copy_from_slice(&digest[..8]);
        // A 64-bit fraction of the jitter, in integers: (h / 2^64) * jitter < jitter always,
        // where floating point could round up to the full jitter.
        let offset = (u128::from(u64::from_be_bytes(head)) * jitter_nanos) >> 64;
        let secs = (offset / 1_000_000_000) as u64;
        let nanos = (offset % 1_000_000_000) as u32;
        Duration::new(secs, nanos)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn schedule(cron: &str, timezone: Tz, jitter: Duration) -> Schedule {
        Schedule {
            name: "nightly".to_owned(),
            selector: Selector::everything(),
            cron: CronExpr::parse("cron", cron).unwrap(),
            timezone,
            jitter,
            action: ScheduleAction::Backup,
            retention: None,
        }
    }

    fn at(text: &str) -> DateTime<Utc> {
        DateTime::parse_from_rfc3339(text)
            .unwrap()
            .with_timezone(&Utc)
    }

    #[test]
    fn every_minute_fires_on_the_minute() {
        let s = schedule("* * * * *", Tz::UTC, Duration::ZERO);
        let since = at("2026-05-04T10:00:00Z");
        assert_eq!(s.due(since, at("2026-05-04T10:00:30Z")), None);
        assert_eq!(
            s.due(since, at("2026-05-04T10:01:00Z")),
            Some(at("2026-05-04T10:01:00Z"))
        );
        assert_eq!(
            s.due(since, at("2026-05-04T10:05:42.250Z")),
            Some(at("2026-05-04T10:05:00Z"))
        );
        assert_eq!(
            s.next_after(at("2026-05-04T10:05:00Z")),
            Some(at("2026-05-04T10:06:00Z"))
        );
        assert_eq!(
            s.next_after(at("2026-05-04T10:05:00.500Z")),
            Some(at("2026-05-04T10:06:00Z"))
        );
    }

    #[test]
    fn due_at_exactly_the_slot_instant() {
        let s = schedule("0 3 * * *", Tz::UTC, Duration::ZERO);
        let slot = at("2026-05-04T03:00:00Z");
        assert_eq!(s.due(at("2026-05-03T03:00:00Z"), slot), Some(slot));
        assert_eq!(
            s.due(at("2026-05-03T03:00:00Z"), at("2026-05-04T02:59:59Z")),
            None
        );
        // `since` is exclusive: a slot already fired is not due again.
        assert_eq!(s.due(slot, slot), None);
    }

    #[test]
    fn daily_berlin_follows_the_wall_clock_across_dst() {
        let s = schedule("0 3 * * *", chrono_tz::Europe::Berlin, Duration::ZERO);
        // Summer (CEST, UTC+2): 03:00 local is 01:00Z.
        assert_eq!(
            s.due(at("2026-06-30T01:00:00Z"), at("2026-07-01T01:00:00Z")),
            Some(at("2026-07-01T01:00:00Z"))
        );
        assert_eq!(
            s.due(at("2026-06-30T01:00:00Z"), at("2026-07-01T00:59:59Z")),
            None
        );
        // Winter (CET, UTC+1): 03:00 local is 02:00Z.
        assert_eq!(
            s.due(at("2026-01-14T02:00:00Z"), at("2026-01-15T01:30:00Z")),
            None
        );
        assert_eq!(
            s.due(at("2026-01-14T02:00:00Z"), at("2026-01-15T02:00:00Z")),
            Some(at("2026-01-15T02:00:00Z"))
        );
        // Spring forward on 2026-03-29 at 02:00 CET: the day before fires at 02:00Z, the day
        // itself at 01:00Z.
        assert_eq!(
            s.next_after(at("2026-03-27T02:00:00Z")),
            Some(at("2026-03-28T02:00:00Z"))
        );
        assert_eq!(
            s.next_after(at("2026-03-28T02:00:00Z")),
            Some(at("2026-03-29T01:00:00Z"))
        );
        // Fall back on 2026-10-25 at 03:00 CEST: 03:00 local comes once, in CET.
        assert_eq!(
            s.next_after(at("2026-10-24T01:00:00Z")),
            Some(at("2026-10-25T02:00:00Z"))
        );
        assert_eq!(
            s.due(at("2026-10-24T01:00:00Z"), at("2026-10-25T12:00:00Z")),
            Some(at("2026-10-25T02:00:00Z"))
        );
    }

    #[test]
    fn slots_in_dst_transitions_fire_once() {
        let s = schedule("30 2 * * *", chrono_tz::Europe::Berlin, Duration::ZERO);
        // 02:30 does not exist on 2026-03-29: the slot is the first instant after the gap,
        // 03:00 CEST.
        let gap_slot = at("2026-03-29T01:00:00Z");
        assert_eq!(s.next_after(at("2026-03-28T01:30:00Z")), Some(gap_slot));
        assert_eq!(
            s.due(at("2026-03-28T01:30:00Z"), at("2026-03-29T06:00:00Z")),
            Some(gap_slot)
        );
        assert_eq!(s.due(gap_slot, at("2026-03-29T06:00:00Z")), None);
        // 02:30 comes twice on 2026-10-25 (CEST, then CET): only the first counts.
        let first = at("2026-10-25T00:30:00Z");
        assert_eq!(s.next_after(at("2026-10-24T00:30:00Z")), Some(first));
        assert_eq!(s.due(first, at("2026-10-25T01:45:00Z")), None);
        assert_eq!(s.next_after(first), Some(at("2026-10-26T01:30:00Z")));
    }

    #[test]
    fn missed_slots_collapse_into_the_newest() {
        let s = schedule("0 3 * * *", chrono_tz::Europe::Berlin, Duration::ZERO);
        let last_fired = at("2026-07-01T01:00:00Z");
        let now = at("2026-07-04T12:00:00Z");
        let slot = s.due(last_fired, now);
        assert_eq!(slot, Some(at("2026-07-04T01:00:00Z")));
        // Once fired, nothing is due until the next slot.
        let fired = slot.unwrap();
        assert_eq!(s.due(fired, now), None);
        assert_eq!(s.due(fired, at("2026-07-05T00:59:59Z")), None);
        assert_eq!(
            s.due(fired, at("2026-07-05T01:00:00Z")),
            Some(at("2026-07-05T01:00:00Z"))
        );
    }

    #[test]
    fn years_of_missed_minutes_cost_one_search() {
        let s = schedule("* * * * *", Tz::UTC, Duration::ZERO);
        let started = std::time::Instant::now();
        assert_eq!(
            s.due(at("2021-01-01T00:00:00Z"), at("2026-05-04T10:05:42Z")),
            Some(at("2026-05-04T10:05:00Z"))
        );
        assert!(started.elapsed() < std::time::Duration::from_secs(1));
    }

    #[test]
    fn a_cron_that_never_matches_is_never_due() {
        let s = schedule("0 0 30 2 *", Tz::UTC, Duration::ZERO);
        assert_eq!(
            s.due(at("2026-01-01T00:00:00Z"), at("2026-05-04T00:00:00Z")),
            None
        );
        assert_eq!(s.next_after(at("2026-01-01T00:00:00Z")), None);
    }

    #[test]
    fn jitter_is_stable_and_below_the_bound() {
        let jitter = Duration::from_secs(300);
        let s = schedule("0 3 * * *", Tz::UTC, jitter);
        let slot = at("2026-05-04T03:00:00Z");
        let mut distinct = std::collections::BTreeSet::new();
        for i in 0..200 {
            let database = format!("agent-{i}/db");
            let delay = s.jitter_for(&database, slot);
            assert_eq!(
                delay,
                s.jitter_for(&database, slot),
                "stable for {database}"
            );
            assert!(delay < jitter, "{delay:?} for {database}");
            distinct.insert(delay);
        }
        // Spread out, not a constant.
        assert!(
            distinct.len() > 150,
            "only {} distinct delays",
            distinct.len()
        );
        // The slot and the schedule name take part.
        let other_slot = at("2026-05-05T03:00:00Z");
        assert!((0..20).any(|i| {
            let database = format!("db-{i}");
            s.jitter_for(&database, slot) != s.jitter_for(&database, other_slot)
        }));
        let mut renamed = s.clone();
        renamed.name = "hourly".to_owned();
        assert!((0..20).any(|i| {
            let database = format!("db-{i}");
            s.jitter_for(&database, slot) != renamed.jitter_for(&database, slot)
        }));
    }

    #[test]
    fn actions_read_back_their_names() {
        for action in [ScheduleAction::Backup, ScheduleAction::Drill] {
            assert_eq!(ScheduleAction::parse(action.as_str()), Some(action));
        }
        assert_eq!(ScheduleAction::parse("drill"), Some(ScheduleAction::Drill));
        assert_eq!(ScheduleAction::parse("Drill"), None);
        assert_eq!(ScheduleAction::parse("restore"), None);
    }

    #[test]
    fn zero_jitter_is_no_delay() {
        let s = schedule("0 3 * * *", Tz::UTC, Duration::ZERO);
        assert_eq!(
            s.jitter_for("db", at("2026-05-04T03:00:00Z")),
            Duration::ZERO
        );
        // A one-nanosecond jitter can only ever give zero.
        let tiny = schedule("0 3 * * *", Tz::UTC, Duration::from_nanos(1));
        assert_eq!(
            tiny.jitter_for("db", at("2026-05-04T03:00:00Z")),
            Duration::ZERO
        );
    }
}
