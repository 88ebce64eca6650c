//! Maintenance windows and freezes, and the verdict on whether destructive work may start.
//!
//! A window is a set of spans of time, each half-open (`[start, end)`) and computed in UTC
//! from wall-clock times in the window's own time zone. Three recurrences exist: weekly specs
//! (`sun 02:00-04:00`), a cron expression with a duration, and a single pair of local times.
//!
//! # Local times and daylight saving
//!
//! Weekly and once windows name wall-clock times, and two kinds of wall-clock time do not map
//! to exactly one instant:
//!
//! - A time inside a gap (the clock springs forward, e.g. 02:30 in `America/New_York` on
//!   2026-03-08) does not exist. It resolves to the first instant after the gap (03:00 EDT),
//!   as if the window had waited for the clock to reach it.
//! - A time inside an overlap (the clock falls back, e.g. 01:30 in `America/New_York` on
//!   2026-11-01) happens twice. It resolves to its earliest occurrence (01:30 EDT).
//!
//! Starts and ends follow the same rule, so `daily 01:00-05:00` lasts 3 hours on a
//! spring-forward night and 5 hours on a fall-back night, and a span that lies wholly inside a
//! gap resolves to an empty span and is skipped.
//!
//! Cron windows take their occurrences from `croner`, which applies the same rule to
//! fixed-time expressions (`0 2 * * *` runs once, at the first instant after a gap, or at the
//! earlier of two repeated instants). Interval expressions (`*/5 * * * *`) skip wall-clock
//! times in a gap and fire on both instants of a repeated time, as cron daemons do.
//!
//! # Verdict
//!
//! Destructive work may start at an instant when some maintenance span of a window that
//! selects the database contains it and no freeze span does: freeze always beats maintenance.
//! The allowed *slots* are the union of maintenance spans (overlapping or touching spans
//! merged) minus the union of freeze spans. A slot is named after the maintenance window whose
//! span covers the slot's start; when several do, the one whose span started first (and on a
//! tie, the one listed first). Without freezes that is the window whose span starts the merged
//! slot; after a freeze ends it is the window still open at that moment. [`evaluate`] looks
//! [`HORIZON_DAYS`] ahead, in growing chunks so that frequent cron windows stay cheap.

use std::time::Duration;

use chrono::{
    DateTime, Datelike, Days, LocalResult, NaiveDateTime, NaiveTime, Offset, TimeDelta, TimeZone,
    Timelike, Utc,
};
use chrono_tz::Tz;
use warden_shared::{Labels, Selector};

use super::{CronExpr, PolicyError, format_local_time};

/// How far ahead [`evaluate`] searches for the next allowed slot, and how far back it looks for
/// the start of a slot that is open now.
pub const HORIZON_DAYS: i64 = 400;

/// The chunks, in days, in which [`evaluate`] widens its search up to [`HORIZON_DAYS`]. Most
/// verdicts are settled by the first chunk, so a `*/5` cron window costs hundreds of
/// occurrences, not the hundred thousand it has over the whole horizon.
const SEARCH_CHUNK_DAYS: [i64; 4] = [2, 14, 60, HORIZON_DAYS];

const MINUTES_PER_DAY: u32 = 24 * 60;

const WEEKLY_EXAMPLE: &str = r#"expected e.g. "sun 02:00-04:00" or "mon-fri 22:00-02:00""#;

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum WindowKind {
    /// Destructive work (restore --replace, migrate) may start while one is open.
    Maintenance,
    /// Nothing but backups and health checks; beats any maintenance window.
    Freeze,
}

/// A weekly spec such as `sun 02:00-04:00`, `mon-fri 22:00-02:00` or `sat,sun 01:00-05:00`.
///
/// Several specs are separated by `;`. Days are `mon`..`sun` (or full names), a range that may
/// wrap (`fri-mon`), a comma list, or `daily` / `*`. An end at or before the start crosses
/// midnight into the next day, and a start equal to the end spans 24 hours.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct WeeklySpec {
    text: String,
    spans: Vec<WeeklySpan>,
}

/// One `DAYS HH:MM-HH:MM` part of a weekly spec.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
struct WeeklySpan {
    /// Bit `n` is set when the span starts on the weekday `n` days after Monday.
    days: u8,
    /// Local start, in minutes after midnight (`0..1440`).
    start_minute: u32,
    /// Length in wall-clock minutes (`1..=1440`); the clock may make it shorter or longer.
    length_minutes: u32,
}

impl WeeklySpec {
    /// Parses a weekly spec; `field` names where it sits, for the error.
    pub fn parse(field: &str, text: &str) -> Result<Self, PolicyError> {
        let error =
            |problem: String| PolicyError::new(field, text, format!("{problem}; {WEEKLY_EXAMPLE}"));
        let trimmed = text.trim();
        let mut spans = Vec::new();
        for part in trimmed.split(';').map(str::trim) {
            // A trailing `;` is harmless, so empty parts are skipped rather than refused.
            if !part.is_empty() {
                spans.push(parse_weekly_span(part).map_err(error)?);
            }
        }
        if spans.is_empty() {
            return Err(error("the weekly spec is empty".to_owned()));
        }
        Ok(Self {
            text: trimmed.to_owned(),
            spans,
        })
    }

    /// Returns the spec as it was written (trimmed), so that an export reads like the input.
    pub fn as_str(&self) -> &str {
        &self.text
    }
}

/// Parses one `DAYS HH:MM-HH:MM` part. The time range starts at the first word that starts
/// with a digit, so `sat, sun 01:00 - 05:00` reads as well as `sat,sun 01:00-05:00`.
fn parse_weekly_span(part: &str) -> Result<WeeklySpan, String> {
    let words: Vec<&str> = part.split_whitespace().collect();
    let split = words
        .iter()
        .position(|word| word.starts_with(|c: char| c.is_ascii_digit()))
        .ok_or_else(|| format!("{part:?} has no time range HH:MM-HH:MM"))?;
    if split == 0 {
        return Err(format!(
            "{part:?} names no days; start with a day such as sun, a range such as mon-fri, or daily"
        ));
    }
    let days = parse_days(&words[..split].concat())?;
    let range = words[split..].concat();
    let (start, end) = range
        .split_once('-')
        .ok_or_else(|| format!("{range:?} is not a time range HH:MM-HH:MM"))?;
    let start_minute = parse_clock(start, false)?;
    let end_minute = parse_clock(end, true)?;
    let length_minutes = if end_minute > start_minute {
        end_minute - start_minute
    } else {
        // Ends on the next day; equal times make a whole day.
        end_minute + MINUTES_PER_DAY - start_minute
    };
    Ok(WeeklySpan {
        days,
        start_minute,
        length_minutes,
    })
}

/// Parses `mon`, `mon-fri`, `fri-mon`, `sat,sun`, `daily` or `*` into a weekday bit set.
fn parse_days(text: &str) -> Result<u8, String> {
    let mut days = 0u8;
    for item in text.split(',') {
        let item = item.to_ascii_lowercase();
        if item == "daily" || item == "*" {
            days = 0x7f;
        } else if let Some((first, last)) = item.split_once('-') {
            let (first, last) = (parse_day(first)?, parse_day(last)?);
            // A range may wrap past Sunday: `fri-mon` is Friday to Monday.
            let mut day = first;
            loop {
                days |= 1 << day;
                if day == last {
                    break;
                }
                day = (day + 1) % 7;
            }
        } else {
            days |= 1 << parse_day(&item)?;
        }
    }
    Ok(days)
}

/// Parses a lowercase day name into days after Monday.
fn parse_day(name: &str) -> Result<u8, String> {
    Ok(match name {
        "mon" | "monday" => 0,
        "tue" | "tues" | "tuesday" => 1,
        "wed" | "wednesday" => 2,
        "thu" | "thur" | "thurs" | "thursday" => 3,
        "fri" | "friday" => 4,
        "sat" | "saturday" => 5,
        "sun" | "sunday" => 6,
        _ => {
            return Err(format!(
                "{name:?} is not a day; use mon..sun, a range such as mon-fri, a list such as sat,sun, or daily"
            ));
        }
    })
}

/// Parses a 24-hour `HH:MM` into minutes after midnight; `24:00` only as an end.
fn parse_clock(text: &str, is_end: bool) -> Result<u32, String> {
    let bad = || format!("{text:?} is not a 24-hour time HH:MM");
    let (hours, minutes) = text.split_once(':').ok_or_else(bad)?;
    let well_formed = |part: &str, max_len| {
        !part.is_empty() && part.len() <= max_len && part.chars().all(|c| c.is_ascii_digit())
    };
    if !well_formed(hours, 2) || !well_formed(minutes, 2) || minutes.len() != 2 {
        return Err(bad());
    }
    let (hours, minutes): (u32, u32) = (
        hours.parse().map_err(|_| bad())?,
        minutes.parse().map_err(|_| bad())?,
    );
    match (hours, minutes) {
        (24, 0) if is_end => Ok(MINUTES_PER_DAY),
        (24, 0) => Err(format!(
            "{text:?} can only end a range; start at 00:00 instead"
        )),
        (0..=23, 0..=59) => Ok(hours * 60 + minutes),
        _ => Err(format!(
            "{text:?} is out of range; hours are 00-23 and minutes 00-59"
        )),
    }
}

#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Recurrence {
    Weekly(WeeklySpec),
    /// Opens at every cron occurrence, for `duration`.
    Cron {
        cron: CronExpr,
        duration: Duration,
    },
    /// Once, between two local times (e.g. a holiday freeze).
    Once {
        start: NaiveDateTime,
        end: NaiveDateTime,
    },
}

impl Recurrence {
    /// Returns a short text for listings, e.g. `weekly sun 02:00-04:00`,
    /// `cron "0 2 * * *" for 2h` or `once 2026-12-20T00:00 to 2027-01-02T00:00`.
    pub fn describe(&self) -> String {
        match self {
            Recurrence::Weekly(spec) => format!("weekly {}", spec.as_str()),
            Recurrence::Cron { cron, duration } => format!(
                "cron {:?} for {}",
                cron.as_str(),
                humantime::format_duration(*duration)
            ),
            Recurrence::Once { start, end } => {
                format!(
                    "once {} to {}",
                    format_local_time(start),
                    format_local_time(end)
                )
            }
        }
    }
}

#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Window {
    pub name: String,
    pub selector: Selector,
    pub kind: WindowKind,
    pub recurrence: Recurrence,
    pub timezone: Tz,
}

/// One span of time, `[start, end)`, and the window it belongs to.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Opening {
    pub window: String,
    pub start: DateTime<Utc>,
    pub end: DateTime<Utc>,
}

/// Whether destructive work may start on a database now, and if not, why and when.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Verdict {
    /// The maintenance window open now and not frozen, until when destructive work may start.
    pub open: Option<Opening>,
    /// The freeze covering the database now, if any.
    pub freeze: Option<Opening>,
    /// The next time destructive work may start (now, if `open` is set), within the horizon.
    pub next: Option<Opening>,
}

impl Window {
    /// Returns the spans of this window that overlap `[from, to)`, ordered by start. Spans may
    /// start before `from` and end after `to`; overlapping spans of one window are not merged.
    pub fn intervals(&self, from: DateTime<Utc>, to: DateTime<Utc>) -> Vec<Opening> {
        if from >= to {
            return Vec::new();
        }
        let mut spans = match &self.recurrence {
            Recurrence::Weekly(spec) => self.weekly_spans(spec, from, to),
            Recurrence::Cron { cron, duration } => self.cron_spans(cron, *duration, from, to),
            Recurrence::Once { start, end } => {
                vec![(
                    resolve_local(self.timezone, *start),
                    resolve_local(self.timezone, *end),
                )]
            }
        };
        spans.retain(|(start, end)| start < end && *start < to && *end > from);
        spans.sort();
        spans
            .into_iter()
            .map(|(start, end)| Opening {
                window: self.name.clone(),
                start,
                end,
            })
            .collect()
    }

    /// Returns the weekly spans that start on local dates around `[from, to)`, unfiltered.
    fn weekly_spans(
        &self,
        spec: &WeeklySpec,
        from: DateTime<Utc>,
        to: DateTime<Utc>,
    ) -> Vec<(DateTime<Utc>, DateTime<Utc>)> {
        let local_from = from.with_timezone(&self.timezone).date_naive();
        let local_to = to.with_timezone(&self.timezone).date_naive();
        // A span lasts at most a day, so starting a week early is generous; it also covers
        // spans that began before `from` and are still open.
        let mut date = local_from
            .checked_sub_days(Days::new(8))
            .unwrap_or(local_from);
        let last = local_to.checked_add_days(Days::new(1)).unwrap_or(local_to);
        let mut spans = Vec::new();
        while date <= last {
            let weekday = date.weekday().num_days_from_monday();
            for span in spec
                .spans
                .iter()
                .filter(|span| span.days & (1 << weekday) != 0)
            {
                let start =
                    date.and_time(NaiveTime::MIN) + TimeDelta::minutes(span.start_minute.into());
                let end = start + TimeDelta::minutes(span.length_minutes.into());
                spans.push((
                    resolve_local(self.timezone, start),
                    resolve_local(self.timezone, end),
                ));
            }
            match date.succ_opt() {
                Some(next) => date = next,
                None => break,
            }
        }
        spans
    }

    /// Returns one span of `duration` per cron occurrence in `[from - duration, to)`.
    fn cron_spans(
        &self,
        cron: &CronExpr,
        duration: Duration,
        from: DateTime<Utc>,
        to: DateTime<Utc>,
    ) -> Vec<(DateTime<Utc>, DateTime<Utc>)> {
        let Ok(duration) = TimeDelta::from_std(duration) else {
            return Vec::new();
        };
        if duration <= TimeDelta::zero() {
            return Vec::new();
        }
        let first = from.checked_sub_signed(duration).unwrap_or(from);
        let mut cursor = first.with_timezone(&self.timezone);
        let mut inclusive = true;
        let mut spans = Vec::new();
        // Occurrences are searched in the window's zone, so croner sees wall-clock times and
        // applies its daylight-saving rules. An expression that never matches again ends the
        // search with an error, which here just means no more spans.
        while let Ok(occurrence) = cron.cron().find_next_occurrence(&cursor, inclusive) {
            let start = occurrence.with_timezone(&Utc);
            if start >= to {
                break;
            }
            let end = start
                .checked_add_signed(duration)
                .unwrap_or(DateTime::<Utc>::MAX_UTC);
            spans.push((start, end));
            cursor = occurrence;
            inclusive = false;
        }
        spans
    }
}

/// Resolves a wall-clock time in `zone` to an instant: a time in a gap becomes the first
/// instant after the gap, an ambiguous time its earliest occurrence (see the module docs).
fn resolve_local(zone: Tz, local: NaiveDateTime) -> DateTime<Utc> {
    match zone.from_local_datetime(&local) {
        LocalResult::Single(instant) => instant.with_timezone(&Utc),
        LocalResult::Ambiguous(first, second) => first.min(second).with_timezone(&Utc),
        LocalResult::None => first_instant_after_gap(zone, local),
    }
}

/// Finds the transition that skipped `local`: the first valid whole minute after it, then
/// back second by second to where the offset changed (offsets of old zones have seconds).
fn first_instant_after_gap(zone: Tz, local: NaiveDateTime) -> DateTime<Utc> {
    let mut probe = local
        .with_second(0)
        .and_then(|t| t.with_nanosecond(0))
        .unwrap_or(local);
    // The longest gap on record skipped a whole day (Pacific/Apia, 2011).
    for _ in 0..2 * MINUTES_PER_DAY {
        probe += TimeDelta::minutes(1);
        let Some(after) = zone.from_local_datetime(&probe).earliest() else {
            continue;
        };
        let offset = after.offset().fix();
        let mut transition = after.with_timezone(&Utc);
        for _ in 0..60 {
            let earlier = transition - TimeDelta::seconds(1);
            if zone.offset_from_utc_datetime(&earlier.naive_utc()).fix() != offset {
                break;
            }
            transition = earlier;
        }
        return transition;
    }
    // No real zone has a gap this long; read the time as UTC rather than fail.
    local.and_utc()
}

/// Evaluates the windows that select `labels` at `now`.
///
/// Windows whose selector does not match `labels` are ignored. `open` is the allowed slot that
/// contains `now`; `freeze` the freeze span containing `now` (the one ending last if several);
/// `next` the first allowed slot that ends after `now`, within [`HORIZON_DAYS`].
pub fn evaluate(windows: &[Window], labels: &Labels, now: DateTime<Utc>) -> Verdict {
    let windows: Vec<&Window> = windows
        .iter()
        .filter(|window| window.selector.matches(labels))
        .collect();
    let freeze = current_freeze(&windows, now);
    let next = next_slot(&windows, now);
    let open = next.clone().filter(|slot| slot.start <= now);
    Verdict { open, freeze, next }
}

/// Returns the freeze span containing `now` that ends last (the first listed on a tie).
fn current_freeze(windows: &[&Window], now: DateTime<Utc>) -> Option<Opening> {
    let mut covering: Option<Opening> = None;
    for window in windows.iter().filter(|w| w.kind == WindowKind::Freeze) {
        for span in window.intervals(now, just_after(now)) {
            if covering.as_ref().is_none_or(|best| span.end > best.end) {
                covering = Some(span);
            }
        }
    }
    covering
}

/// The maintenance spans over a search range and the allowed slots they leave.
struct Slots {
    /// Maintenance spans with their window's position in the list, ordered by start.
    maintenance: Vec<(DateTime<Utc>, DateTime<Utc>, usize)>,
    /// Allowed slots: maintenance union minus freeze union, ordered, disjoint.
    allowed: Vec<(DateTime<Utc>, DateTime<Utc>)>,
}

impl Slots {
    /// Computes the slots from the spans overlapping `[from, to)`. A slot's start is exact when
    /// it is after `from`, and its end when it is before `to`: a span outside the range could
    /// have touched it there.
    fn compute(windows: &[&Window], from: DateTime<Utc>, to: DateTime<Utc>) -> Self {
        let mut maintenance = Vec::new();
        let mut freezes = Vec::new();
        for (index, window) in windows.iter().enumerate() {
            for span in window.intervals(from, to) {
                match window.kind {
                    WindowKind::Maintenance => maintenance.push((span.start, span.end, index)),
                    WindowKind::Freeze => freezes.push((span.start, span.end)),
                }
            }
        }
        maintenance.sort();
        freezes.sort();
        let frozen = union(freezes);
        let mut allowed = Vec::new();
        let mut first_freeze = 0;
        for (start, end) in union(
            maintenance
                .iter()
                .map(|&(start, end, _)| (start, end))
                .collect(),
        ) {
            while first_freeze < frozen.len() && frozen[first_freeze].1 <= start {
                first_freeze += 1;
            }
            let mut cursor = start;
            for &(freeze_start, freeze_end) in
                frozen[first_freeze..].iter().take_while(|f| f.0 < end)
            {
                if freeze_start > cursor {
                    allowed.push((cursor, freeze_start));
                }
                cursor = cursor.max(freeze_end);
            }
            if cursor < end {
                allowed.push((cursor, end));
            }
        }
        Self {
            maintenance,
            allowed,
        }
    }

    /// Returns the first allowed slot that ends after `now`.
    fn first_ending_after(&self, now: DateTime<Utc>) -> Option<(DateTime<Utc>, DateTime<Utc>)> {
        self.allowed.iter().copied().find(|&(_, end)| end > now)
    }

    /// Names the slot starting at `start` after the maintenance window covering that instant,
    /// preferring the span that started first, then the window listed first.
    fn name_at(&self, windows: &[&Window], start: DateTime<Utc>) -> String {
        self.maintenance
            .iter()
            .filter(|&&(span_start, span_end, _)| span_start <= start && start < span_end)
            .min_by_key(|&&(span_start, _, index)| (span_start, index))
            .map(|&(_, _, index)| windows[index].name.clone())
            .unwrap_or_default()
    }
}

/// Merges sorted spans that overlap or touch.
fn union(sorted: Vec<(DateTime<Utc>, DateTime<Utc>)>) -> Vec<(DateTime<Utc>, DateTime<Utc>)> {
    let mut merged: Vec<(DateTime<Utc>, DateTime<Utc>)> = Vec::with_capacity(sorted.len());
    for (start, end) in sorted {
        match merged.last_mut() {
            Some(last) if start <= last.1 => last.1 = last.1.max(end),
            _ => merged.push((start, end)),
        }
    }
    merged
}

/// Returns the first allowed slot ending after `now`, with its true start and end as far as
/// the horizon allows.
fn next_slot(windows: &[&Window], now: DateTime<Utc>) -> Option<Opening> {
    // Forwards: widen until a slot is found whose end lies inside the range searched.
    let mut found = None;
    for days in SEARCH_CHUNK_DAYS {
        let to = now
            .checked_add_signed(TimeDelta::days(days))
            .unwrap_or(DateTime::<Utc>::MAX_UTC);
        let slots = Slots::compute(windows, now, to);
        if let Some((start, end)) = slots.first_ending_after(now) {
            found = Some((start, end, slots));
            if end < to {
                break;
            }
        }
    }
    let (mut start, end, mut slots) = found?;
    if start <= now {
        // Open now: the slot may have started well before `now`, after spans or a freeze
        // that the forward search did not see. Widen backwards until its start is inside.
        for days in SEARCH_CHUNK_DAYS {
            let from = now
                .checked_sub_signed(TimeDelta::days(days))
                .unwrap_or(DateTime::<Utc>::MIN_UTC);
            let back = Slots::compute(windows, from, just_after(now));
            let Some((back_start, _)) = back.first_ending_after(now) else {
                break;
            };
            start = back_start;
            slots = back;
            if start > from {
                break;
            }
        }
    }
    Some(Opening {
        window: slots.name_at(windows, start),
        start,
        end,
    })
}

/// The smallest instant after `now`, so that `[now, just_after(now))` holds only `now`.
fn just_after(now: DateTime<Utc>) -> DateTime<Utc> {
    now + TimeDelta::nanoseconds(1)
}

#[cfg(test)]
mod tests {
    use std::collections::BTreeMap;

    use chrono::NaiveDate;

    use super::*;

    fn at(text: &str) -> DateTime<Utc> {
        DateTime::parse_from_rfc3339(text)
            .unwrap_or_else(|e| panic!("bad instant {text:?}: {e}"))
            .with_timezone(&Utc)
    }

    fn local(text: &str) -> NaiveDateTime {
        NaiveDateTime::parse_from_str(text, "%Y-%m-%dT%H:%M")
            .unwrap_or_else(|e| panic!("bad local time {text:?}: {e}"))
    }

    fn zone(name: &str) -> Tz {
        name.parse().unwrap()
    }

    fn window(name: &str, kind: WindowKind, recurrence: Recurrence, timezone: &str) -> Window {
        Window {
            name: name.to_owned(),
            selector: Selector::everything(),
            kind,
            recurrence,
            timezone: zone(timezone),
        }
    }

    fn weekly(name: &str, spec: &str, timezone: &str) -> Window {
        let spec = WeeklySpec::parse("test", spec).unwrap();
        window(
            name,
            WindowKind::Maintenance,
            Recurrence::Weekly(spec),
            timezone,
        )
    }

    fn cron(name: &str, expression: &str, duration: &str, timezone: &str) -> Window {
        let recurrence = Recurrence::Cron {
            cron: CronExpr::parse("test", expression).unwrap(),
            duration: humantime::parse_duration(duration).unwrap(),
        };
        window(name, WindowKind::Maintenance, recurrence, timezone)
    }

    fn once(name: &str, kind: WindowKind, start: &str, end: &str, timezone: &str) -> Window {
        let recurrence = Recurrence::Once {
            start: local(start),
            end: local(end),
        };
        window(name, kind, recurrence, timezone)
    }

    fn opening(window: &str, start: &str, end: &str) -> Opening {
        Opening {
            window: window.to_owned(),
            start: at(start),
            end: at(end),
        }
    }

    fn no_labels() -> Labels {
        BTreeMap::new()
    }

    fn spans(window: &Window, from: &str, to: &str) -> Vec<(DateTime<Utc>, DateTime<Utc>)> {
        window
            .intervals(at(from), at(to))
            .into_iter()
            .map(|opening| {
                assert_eq!(opening.window, window.name);
                (opening.start, opening.end)
            })
            .collect()
    }

    #[test]
    fn weekly_specs_parse_in_every_form() {
        let cases: &[(&str, &[WeeklySpan])] = &[
            (
                "sun 02:00-04:00",
                &[WeeklySpan {
                    days: 1 << 6,
                    start_minute: 120,
                    length_minutes: 120,
                }],
            ),
            (
                "MON-fri 22:00-02:00",
                &[WeeklySpan {
                    days: 0b001_1111,
                    start_minute: 1320,
                    length_minutes: 240,
                }],
            ),
            (
                "fri-mon 01:00-02:30",
                &[WeeklySpan {
                    days: 0b111_0001,
                    start_minute: 60,
                    length_minutes: 90,
                }],
            ),
            (
                "sat, Sunday 1:00 - 5:00",
                &[WeeklySpan {
                    days: 0b110_0000,
                    start_minute: 60,
                    length_minutes: 240,
                }],
            ),
            (
                "daily 22:00-24:00",
                &[WeeklySpan {
                    days: 0x7f,
                    start_minute: 1320,
                    length_minutes: 120,
                }],
            ),
            (
                "* 00:00-00:00",
                &[WeeklySpan {
                    days: 0x7f,
                    start_minute: 0,
                    length_minutes: 1440,
                }],
            ),
            (
                "wed 03:00-03:00",
                &[WeeklySpan {
                    days: 1 << 2,
                    start_minute: 180,
                    length_minutes: 1440,
                }],
            ),
            (
                " sat 22:00-02:00; sun 02:00-04:00; ",
                &[
                    WeeklySpan {
                        days: 1 << 5,
                        start_minute: 1320,
                        length_minutes: 240,
                    },
                    WeeklySpan {
                        days: 1 << 6,
                        start_minute: 120,
                        length_minutes: 120,
                    },
                ],
            ),
        ];
        for (text, expected) in cases {
            let spec = WeeklySpec::parse("window \"w\".weekly", text)
                .unwrap_or_else(|e| panic!("{text:?} should parse: {e}"));
            assert_eq!(spec.spans, *expected, "{text:?}");
            assert_eq!(spec.as_str(), text.trim(), "{text:?}");
        }
    }

    #[test]
    fn bad_weekly_specs_name_the_field_value_and_problem() {
        let cases = [
            ("", "empty"),
            ("  ;  ", "empty"),
            ("sun", "no time range"),
            ("02:00-04:00", "names no days"),
            ("sunday-ish 02:00-04:00", "\"ish\" is not a day"),
            ("mon-xyz 02:00-04:00", "\"xyz\" is not a day"),
            ("sat,,sun 02:00-04:00", "\"\" is not a day"),
            ("sun 02:00", "not a time range"),
            ("sun 2-4", "\"2\" is not a 24-hour time"),
            ("sun 02:00-04:0", "\"04:0\" is not a 24-hour time"),
            ("sun 25:00-04:00", "\"25:00\" is out of range"),
            ("sun 02:60-04:00", "\"02:60\" is out of range"),
            ("sun 24:00-02:00", "can only end a range"),
            ("sun 02:00-04:00; mon", "no time range"),
        ];
        for (text, problem) in cases {
            let error = WeeklySpec::parse("window \"nightly\".weekly", text)
                .expect_err(&format!("{text:?} should not parse"));
            assert_eq!(error.field, "window \"nightly\".weekly");
            assert_eq!(error.value, text);
            assert!(
                error.problem.contains(problem),
                "{text:?}: {}",
                error.problem
            );
            assert!(
                error
                    .problem
                    .contains(r#"expected e.g. "sun 02:00-04:00" or "mon-fri 22:00-02:00""#),
                "{text:?}: {}",
                error.problem
            );
        }
    }

    #[test]
    fn recurrences_describe_themselves() {
        let weekly = Recurrence::Weekly(WeeklySpec::parse("w", " sun 02:00-04:00 ").unwrap());
        assert_eq!(weekly.describe(), "weekly sun 02:00-04:00");
        let cron = cron("c", "0 2 * * *", "2h", "UTC").recurrence;
        assert_eq!(cron.describe(), r#"cron "0 2 * * *" for 2h"#);
        let cron = self::cron("c", "*/5 * * * *", "90m", "UTC").recurrence;
        assert_eq!(cron.describe(), r#"cron "*/5 * * * *" for 1h 30m"#);
        let once = Recurrence::Once {
            start: local("2026-12-20T00:00"),
            end: local("2027-01-02T00:00"),
        };
        assert_eq!(once.describe(), "once 2026-12-20T00:00 to 2027-01-02T00:00");
    }

    #[test]
    fn weekly_window_crosses_midnight() {
        let window = weekly("late", "sat 23:00-01:00", "UTC");
        // 2026-06-13 is a Saturday.
        assert_eq!(
            spans(&window, "2026-06-10T00:00:00Z", "2026-06-20T00:00:00Z"),
            vec![(at("2026-06-13T23:00:00Z"), at("2026-06-14T01:00:00Z"))]
        );
        let open = |now: &str| evaluate(std::slice::from_ref(&window), &no_labels(), at(now)).open;
        let slot = Some(opening(
            "late",
            "2026-06-13T23:00:00Z",
            "2026-06-14T01:00:00Z",
        ));
        assert_eq!(open("2026-06-14T00:30:00Z"), slot);
        assert_eq!(open("2026-06-13T23:00:00Z"), slot);
        assert_eq!(open("2026-06-14T01:00:00Z"), None, "the end is exclusive");
        assert_eq!(open("2026-06-13T22:59:59Z"), None);
    }

    #[test]
    fn weekly_window_crosses_the_week_end() {
        let window = weekly("sunday-night", "sun 23:00-01:00", "Europe/Berlin");
        // Monday 2026-06-15 00:30 CEST; the span opened on Sunday at 23:00 CEST.
        let verdict = evaluate(
            std::slice::from_ref(&window),
            &no_labels(),
            at("2026-06-14T22:30:00Z"),
        );
        let slot = opening(
            "sunday-night",
            "2026-06-14T21:00:00Z",
            "2026-06-14T23:00:00Z",
        );
        assert_eq!(verdict.open, Some(slot.clone()));
        assert_eq!(verdict.next, Some(slot));
        // A query starting on Monday still sees the span that began on Sunday.
        assert_eq!(
            spans(&window, "2026-06-14T22:00:00Z", "2026-06-15T00:00:00Z"),
            vec![(at("2026-06-14T21:00:00Z"), at("2026-06-14T23:00:00Z"))]
        );
    }

    #[test]
    fn spring_forward_start_in_the_gap_waits_for_the_clock() {
        // New York: on 2026-03-08 the clock jumps from 02:00 EST to 03:00 EDT.
        let new_york = weekly("ny", "sun 02:30-04:00", "America/New_York");
        assert_eq!(
            spans(&new_york, "2026-03-01T00:00:00Z", "2026-03-16T00:00:00Z"),
            vec![
                (at("2026-03-01T07:30:00Z"), at("2026-03-01T09:00:00Z")),
                (at("2026-03-08T07:00:00Z"), at("2026-03-08T08:00:00Z")),
                (at("2026-03-15T06:30:00Z"), at("2026-03-15T08:00:00Z")),
            ]
        );
        // Berlin: on 2026-03-29 the clock jumps from 02:00 CET to 03:00 CEST.
        let berlin = weekly("berlin", "sun 02:15-03:30", "Europe/Berlin");
        assert_eq!(
            spans(&berlin, "2026-03-28T00:00:00Z", "2026-03-30T00:00:00Z"),
            vec![(at("2026-03-29T01:00:00Z"), at("2026-03-29T01:30:00Z"))]
        );
        let verdict = evaluate(
            std::slice::from_ref(&berlin),
            &no_labels(),
            at("2026-03-29T00:30:00Z"),
        );
        assert_eq!(verdict.open, None);
        assert_eq!(
            verdict.next,
            Some(opening(
                "berlin",
                "2026-03-29T01:00:00Z",
                "2026-03-29T01:30:00Z"
            ))
        );
    }

    #[test]
    fn a_span_wholly_inside_the_gap_is_skipped() {
        let window = weekly("ghost", "sun 02:10-02:50", "America/New_York");
        assert_eq!(
            spans(&window, "2026-03-01T00:00:00Z", "2026-03-16T00:00:00Z"),
            vec![
                (at("2026-03-01T07:10:00Z"), at("2026-03-01T07:50:00Z")),
                (at("2026-03-15T06:10:00Z"), at("2026-03-15T06:50:00Z")),
            ]
        );
        let verdict = evaluate(
            std::slice::from_ref(&window),
            &no_labels(),
            at("2026-03-02T00:00:00Z"),
        );
        assert_eq!(
            verdict.next,
            Some(opening(
                "ghost",
                "2026-03-15T06:10:00Z",
                "2026-03-15T06:50:00Z"
            ))
        );
    }

    #[test]
    fn fall_back_ambiguous_start_takes_the_earliest_instant() {
        // New York: on 2026-11-01 01:00-02:00 happens twice, first in EDT (-4), then EST (-5).
        let new_york = weekly("ny", "sun 01:30-03:00", "America/New_York");
        assert_eq!(
            spans(&new_york, "2026-10-31T00:00:00Z", "2026-11-02T00:00:00Z"),
            vec![(at("2026-11-01T05:30:00Z"), at("2026-11-01T08:00:00Z"))]
        );
        // Berlin: on 2026-10-25 02:00-03:00 happens twice, first in CEST (+2), then CET (+1).
        let berlin = weekly("berlin", "sun 02:30-04:00", "Europe/Berlin");
        assert_eq!(
            spans(&berlin, "2026-10-24T00:00:00Z", "2026-10-26T00:00:00Z"),
            vec![(at("2026-10-25T00:30:00Z"), at("2026-10-25T03:00:00Z"))]
        );
        // An ambiguous end resolves the same way: 01:45 EDT, not 01:45 EST.
        let end_in_overlap = weekly("ny-end", "sun 00:30-01:45", "America/New_York");
        assert_eq!(
            spans(
                &end_in_overlap,
                "2026-10-31T00:00:00Z",
                "2026-11-02T00:00:00Z"
            ),
            vec![(at("2026-11-01T04:30:00Z"), at("2026-11-01T05:45:00Z"))]
        );
    }

    #[test]
    fn daily_window_length_follows_the_clock_on_transition_days() {
        let window = weekly("nightly", "daily 01:00-05:00", "America/New_York");
        let lengths = |from: &str, to: &str| -> Vec<(DateTime<Utc>, i64)> {
            spans(&window, from, to)
                .into_iter()
                .map(|(start, end)| (start, (end - start).num_hours()))
                .collect()
        };
        assert_eq!(
            lengths("2026-03-07T00:00:00Z", "2026-03-09T12:00:00Z"),
            vec![
                (at("2026-03-07T06:00:00Z"), 4),
                (at("2026-03-08T06:00:00Z"), 3),
                (at("2026-03-09T05:00:00Z"), 4),
            ]
        );
        assert_eq!(
            lengths("2026-10-31T00:00:00Z", "2026-11-02T12:00:00Z"),
            vec![
                (at("2026-10-31T05:00:00Z"), 4),
                (at("2026-11-01T05:00:00Z"), 5),
                (at("2026-11-02T06:00:00Z"), 4),
            ]
        );
    }

    #[test]
    fn overlapping_maintenance_windows_merge_into_one_slot() {
        let windows = [
            weekly("early", "daily 01:00-03:00", "UTC"),
            weekly("late", "daily 02:00-05:00", "UTC"),
            weekly("touching", "daily 05:00-06:00", "UTC"),
        ];
        let slot = opening("early", "2026-06-10T01:00:00Z", "2026-06-10T06:00:00Z");
        let before = evaluate(&windows, &no_labels(), at("2026-06-10T00:00:00Z"));
        assert_eq!(before.open, None);
        assert_eq!(before.next, Some(slot.clone()));
        let inside = evaluate(&windows, &no_labels(), at("2026-06-10T04:00:00Z"));
        assert_eq!(inside.open, Some(slot.clone()));
        assert_eq!(inside.next, Some(slot));
        assert_eq!(inside.freeze, None);
    }

    #[test]
    fn freeze_beats_maintenance() {
        let windows = [
            weekly("nightly", "daily 22:00-02:00", "UTC"),
            once(
                "incident",
                WindowKind::Freeze,
                "2026-06-10T23:00",
                "2026-06-11T01:00",
                "UTC",
            ),
        ];
        let freeze = opening("incident", "2026-06-10T23:00:00Z", "2026-06-11T01:00:00Z");
        let frozen = evaluate(&windows, &no_labels(), at("2026-06-10T23:30:00Z"));
        assert_eq!(frozen.open, None);
        assert_eq!(frozen.freeze, Some(freeze));
        assert_eq!(
            frozen.next,
            Some(opening(
                "nightly",
                "2026-06-11T01:00:00Z",
                "2026-06-11T02:00:00Z"
            ))
        );
        // Before the freeze the slot is cut short where the freeze starts.
        let before = evaluate(&windows, &no_labels(), at("2026-06-10T22:30:00Z"));
        assert_eq!(
            before.open,
            Some(opening(
                "nightly",
                "2026-06-10T22:00:00Z",
                "2026-06-10T23:00:00Z"
            ))
        );
        assert_eq!(before.freeze, None);
        // After it, the slot starts where the freeze ended, not where the window opened.
        let after = evaluate(&windows, &no_labels(), at("2026-06-11T01:30:00Z"));
        assert_eq!(
            after.open,
            Some(opening(
                "nightly",
                "2026-06-11T01:00:00Z",
                "2026-06-11T02:00:00Z"
            ))
        );
    }

    #[test]
    fn a_slot_after_a_freeze_is_named_after_the_window_still_open() {
        let windows = [
            weekly("early", "daily 01:00-03:00", "UTC"),
            weekly("late", "daily 02:00-05:00", "UTC"),
            weekly("hands-off", "daily 01:30-04:00", "UTC"),
        ];
        let windows = [
            windows[0].clone(),
            windows[1].clone(),
            Window {
                kind: WindowKind::Freeze,
                ..windows[2].clone()
            },
        ];
        let verdict = evaluate(&windows, &no_labels(), at("2026-06-10T04:30:00Z"));
        assert_eq!(
            verdict.open,
            Some(opening(
                "late",
                "2026-06-10T04:00:00Z",
                "2026-06-10T05:00:00Z"
            ))
        );
        let verdict = evaluate(&windows, &no_labels(), at("2026-06-10T01:45:00Z"));
        assert_eq!(verdict.open, None);
        assert_eq!(
            verdict.freeze,
            Some(opening(
                "hands-off",
                "2026-06-10T01:30:00Z",
                "2026-06-10T04:00:00Z"
            ))
        );
        assert_eq!(
            verdict.next,
            Some(opening(
                "late",
                "2026-06-10T04:00:00Z",
                "2026-06-10T05:00:00Z"
            ))
        );
    }

    #[test]
    fn holiday_freeze_skips_the_weekly_window_until_it_ends() {
        let windows = [
            weekly("sunday", "sun 02:00-04:00", "Europe/Berlin"),
            once(
                "holidays",
                WindowKind::Freeze,
                "2026-12-20T00:00",
                "2027-01-02T00:00",
                "Europe/Berlin",
            ),
        ];
        let freeze = opening("holidays", "2026-12-19T23:00:00Z", "2027-01-01T23:00:00Z");
        let sunday_after = opening("sunday", "2027-01-03T01:00:00Z", "2027-01-03T03:00:00Z");

        let saturday = evaluate(&windows, &no_labels(), at("2026-12-19T12:00:00Z"));
        assert_eq!(saturday.open, None);
        assert_eq!(saturday.freeze, None);
        assert_eq!(saturday.next, Some(sunday_after.clone()));

        // Inside what would be the Sunday window, on the first day of the freeze.
        let sunday = evaluate(&windows, &no_labels(), at("2026-12-20T01:30:00Z"));
        assert_eq!(sunday.open, None);
        assert_eq!(sunday.freeze, Some(freeze));
        assert_eq!(sunday.next, Some(sunday_after));
    }

    #[test]
    fn the_freeze_ending_last_is_reported() {
        let windows = [
            once(
                "short",
                WindowKind::Freeze,
                "2026-06-10T00:00",
                "2026-06-10T06:00",
                "UTC",
            ),
            once(
                "long",
                WindowKind::Freeze,
                "2026-06-09T00:00",
                "2026-06-12T00:00",
                "UTC",
            ),
            once(
                "later",
                WindowKind::Freeze,
                "2026-06-10T05:00",
                "2026-06-20T00:00",
                "UTC",
            ),
        ];
        let verdict = evaluate(&windows, &no_labels(), at("2026-06-10T03:00:00Z"));
        assert_eq!(
            verdict.freeze,
            Some(opening(
                "long",
                "2026-06-09T00:00:00Z",
                "2026-06-12T00:00:00Z"
            ))
        );
        assert_eq!(verdict.open, None);
        assert_eq!(verdict.next, None, "there is no maintenance window at all");
    }

    #[test]
    fn windows_apply_only_to_the_databases_they_select() {
        let mut prod = weekly("prod-nightly", "daily 01:00-03:00", "UTC");
        prod.selector = "env=prod".parse().unwrap();
        let mut dev_freeze = once(
            "dev-freeze",
            WindowKind::Freeze,
            "2026-06-01T00:00",
            "2026-07-01T00:00",
            "UTC",
        );
        dev_freeze.selector = "env=dev".parse().unwrap();
        let windows = [prod, dev_freeze];
        let labels = |env: &str| Labels::from([("env".to_owned(), env.to_owned())]);
        let now = at("2026-06-10T02:00:00Z");

        let for_prod = evaluate(&windows, &labels("prod"), now);
        assert_eq!(
            for_prod.open,
            Some(opening(
                "prod-nightly",
                "2026-06-10T01:00:00Z",
                "2026-06-10T03:00:00Z"
            ))
        );
        assert_eq!(for_prod.freeze, None);

        let for_dev = evaluate(&windows, &labels("dev"), now);
        assert_eq!(for_dev.open, None);
        assert_eq!(for_dev.next, None);
        assert_eq!(
            for_dev.freeze,
            Some(opening(
                "dev-freeze",
                "2026-06-01T00:00:00Z",
                "2026-07-01T00:00:00Z"
            ))
        );
    }

    #[test]
    fn cron_window_opens_for_its_duration() {
        let windows = [cron("cron-nightly", "0 2 * * *", "2h", "Europe/Berlin")];
        // 02:00 CEST is 00:00 UTC.
        let inside = evaluate(&windows, &no_labels(), at("2026-06-10T01:00:00Z"));
        let tonight = opening(
            "cron-nightly",
            "2026-06-10T00:00:00Z",
            "2026-06-10T02:00:00Z",
        );
        assert_eq!(inside.open, Some(tonight.clone()));
        assert_eq!(inside.next, Some(tonight));

        let closed = evaluate(&windows, &no_labels(), at("2026-06-10T02:00:00Z"));
        assert_eq!(closed.open, None);
        assert_eq!(
            closed.next,
            Some(opening(
                "cron-nightly",
                "2026-06-11T00:00:00Z",
                "2026-06-11T02:00:00Z"
            ))
        );

        // Winter time: 02:00 CET is 01:00 UTC.
        let winter = evaluate(&windows, &no_labels(), at("2026-12-01T12:00:00Z"));
        assert_eq!(
            winter.next,
            Some(opening(
                "cron-nightly",
                "2026-12-02T01:00:00Z",
                "2026-12-02T03:00:00Z"
            ))
        );
    }

    #[test]
    fn cron_window_across_daylight_saving_changes() {
        let window = cron("cron-nightly", "0 2 * * *", "2h", "Europe/Berlin");
        // 02:00 does not exist on 2026-03-29: the run moves to 03:00 CEST (01:00 UTC).
        assert_eq!(
            spans(&window, "2026-03-28T12:00:00Z", "2026-03-29T12:00:00Z"),
            vec![(at("2026-03-29T01:00:00Z"), at("2026-03-29T03:00:00Z"))]
        );
        // 02:00 happens twice on 2026-10-25: the run takes the first, 02:00 CEST (00:00 UTC).
        assert_eq!(
            spans(&window, "2026-10-24T12:00:00Z", "2026-10-25T12:00:00Z"),
            vec![(at("2026-10-25T00:00:00Z"), at("2026-10-25T02:00:00Z"))]
        );
    }

    #[test]
    fn cron_intervals_include_spans_that_began_before_the_range() {
        let window = cron("quarter-hours", "*/15 * * * *", "10m", "UTC");
        assert_eq!(
            spans(&window, "2026-06-10T00:05:00Z", "2026-06-10T00:31:00Z"),
            vec![
                (at("2026-06-10T00:00:00Z"), at("2026-06-10T00:10:00Z")),
                (at("2026-06-10T00:15:00Z"), at("2026-06-10T00:25:00Z")),
                (at("2026-06-10T00:30:00Z"), at("2026-06-10T00:40:00Z")),
            ]
        );
        // A span that ended exactly at `from` does not overlap it.
        assert_eq!(
            spans(&window, "2026-06-10T00:10:00Z", "2026-06-10T00:15:00Z"),
            vec![]
        );
    }

    #[test]
    fn frequent_cron_window_that_is_always_open_stays_cheap() {
        // Spans overlap, so the slot runs on to the end of the horizon in both directions.
        let windows = [cron("always", "*/5 * * * *", "10m", "UTC")];
        let now = at("2026-06-10T12:02:00Z");
        let verdict = evaluate(&windows, &no_labels(), now);
        let open = verdict.open.expect("always open");
        assert_eq!(open.window, "always");
        assert!(
            open.start <= now - TimeDelta::days(HORIZON_DAYS),
            "{open:?}"
        );
        assert!(open.end >= now + TimeDelta::days(HORIZON_DAYS), "{open:?}");
    }

    #[test]
    fn a_slot_that_opened_before_a_past_freeze_starts_after_it() {
        let windows = [
            weekly("morning", "daily 00:00-06:00", "UTC"),
            once(
                "deploy",
                WindowKind::Freeze,
                "2026-06-10T01:00",
                "2026-06-10T02:00",
                "UTC",
            ),
        ];
        let verdict = evaluate(&windows, &no_labels(), at("2026-06-10T03:00:00Z"));
        assert_eq!(
            verdict.open,
            Some(opening(
                "morning",
                "2026-06-10T02:00:00Z",
                "2026-06-10T06:00:00Z"
            ))
        );
    }

    #[test]
    fn once_window_resolves_its_local_times() {
        let window = once(
            "move",
            WindowKind::Maintenance,
            "2026-11-01T01:30",
            "2026-11-01T03:00",
            "America/New_York",
        );
        assert_eq!(
            spans(&window, "2026-10-01T00:00:00Z", "2026-12-01T00:00:00Z"),
            vec![(at("2026-11-01T05:30:00Z"), at("2026-11-01T08:00:00Z"))]
        );
        assert_eq!(
            spans(&window, "2026-11-01T08:00:00Z", "2026-12-01T00:00:00Z"),
            vec![]
        );
        let backwards = once(
            "typo",
            WindowKind::Maintenance,
            "2026-11-02T00:00",
            "2026-11-01T00:00",
            "UTC",
        );
        assert_eq!(
            spans(&backwards, "2026-10-01T00:00:00Z", "2026-12-01T00:00:00Z"),
            vec![]
        );
    }

    #[test]
    fn gap_resolution_is_exact_for_odd_offsets() {
        // Lord Howe Island springs forward by 30 minutes: 02:00 to 02:30 local (+10:30 to +11).
        let start = NaiveDate::from_ymd_opt(2026, 10, 4)
            .unwrap()
            .and_hms_opt(2, 10, 0)
            .unwrap();
        assert_eq!(
            resolve_local(zone("Australia/Lord_Howe"), start),
            at("2026-10-03T15:30:00Z")
        );
    }

    #[test]
    fn no_windows_no_verdict() {
        let verdict = evaluate(&[], &no_labels(), at("2026-06-10T00:00:00Z"));
        assert_eq!(
            verdict,
            Verdict {
                open: None,
                freeze: None,
                next: None,
            }
        );
    }
}
