//! Maintenance windows and freezes, and the verdict on whether destructive work may start.

use std::time::Duration;

use chrono::{DateTime, NaiveDateTime, Utc};
use chrono_tz::Tz;
use warden_shared::{Labels, Selector};

use super::{CronExpr, PolicyError};

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum WindowKind {
    /// Destructive work (restore --replace, migrate) may start while one is open.
    Maintenance,
    /// Nothing but backups and health checks; beats any maintenance window.
    Freeze,
}

/// A weekly spec such as `sun 02:00-04:00`, `mon-fri 22:00-02:00` or `sat,sun 01:00-05:00`.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct WeeklySpec {
    text: String,
}

impl WeeklySpec {
    pub fn parse(field: &str, text: &str) -> Result<Self, PolicyError> {
        let _ = field;
        Ok(Self {
            text: text.to_owned(),
        })
    }

    pub fn as_str(&self) -> &str {
        &self.text
    }
}

#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Recurrence {
    Weekly(WeeklySpec),
    /// Opens at every cron occurrence, for `duration`.
    Cron { cron: CronExpr, duration: Duration },
    /// Once, between two local times (e.g. a holiday freeze).
    Once {
        start: NaiveDateTime,
        end: NaiveDateTime,
    },
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
    /// The spans of this window that overlap `[from, to)`, in order.
    pub fn intervals(&self, from: DateTime<Utc>, to: DateTime<Utc>) -> Vec<Opening> {
        let _ = (from, to);
        Vec::new()
    }
}

/// Evaluates the windows that select `labels` at `now`.
pub fn evaluate(windows: &[Window], labels: &Labels, now: DateTime<Utc>) -> Verdict {
    let _ = (windows, labels, now);
    Verdict {
        open: None,
        freeze: None,
        next: None,
    }
}
