//! Retention: which complete backups of a database may be pruned.

use chrono::{DateTime, Utc};
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

/// Decides, for the complete backups of one database, which to prune. A backup is kept if
/// any of the policies keeps it; with no policy everything is kept; the newest is always kept.
pub fn plan(
    policies: &[&Retention],
    backups: &[Candidate],
    now: DateTime<Utc>,
) -> Vec<PruneDecision> {
    let _ = (policies, now);
    backups
        .iter()
        .map(|b| PruneDecision {
            id: b.id.clone(),
            prune: false,
            why: String::new(),
        })
        .collect()
}
