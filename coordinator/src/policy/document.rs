//! `fleet.toml`: the declarative policy document that `warden apply` takes and
//! `warden export` prints.

use super::{Limits, PolicyError, RetentionRule, Schedule, Window};

/// The whole policy of the fleet.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct FleetPolicy {
    pub limits: Limits,
    pub windows: Vec<Window>,
    pub schedules: Vec<Schedule>,
    pub retention: Vec<RetentionRule>,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum ChangeOp {
    Added,
    Changed,
    Removed,
}

/// One difference between two policies, for `warden apply` to print.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Change {
    pub op: ChangeOp,
    /// `window`, `schedule`, `retention` or `limits`.
    pub what: String,
    pub name: String,
    /// What differs, e.g. `timezone: UTC -> Europe/Berlin`.
    pub detail: String,
}

impl FleetPolicy {
    /// Parses and validates a document; the first problem found is the error.
    pub fn parse(text: &str) -> Result<Self, PolicyError> {
        let _ = text;
        Ok(Self::default())
    }

    /// Prints the policy as a document that `parse` reads back to an equal policy.
    pub fn to_toml(&self) -> String {
        String::new()
    }

    /// What applying `next` over `self` changes.
    pub fn diff(&self, next: &FleetPolicy) -> Vec<Change> {
        let _ = next;
        Vec::new()
    }
}
