//! Order kinds and the order state machine.
//!
//! `queued → held → dispatched → running → succeeded | failed | cancelled`, and `lost` when
//! the agent vanished past its lease. A lost order of an idempotent kind may be dispatched
//! again; a lost destructive order stays lost.

use std::fmt;
use std::str::FromStr;

#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum OrderKind {
    Backup,
    Restore,
    Health,
    /// Removes expired artifacts from an agent's repository.
    Prune,
    /// Restores an artifact into a scratch database, verifies and times it, drops it.
    Drill,
}

impl OrderKind {
    pub const ALL: [OrderKind; 5] = [
        OrderKind::Backup,
        OrderKind::Restore,
        OrderKind::Health,
        OrderKind::Prune,
        OrderKind::Drill,
    ];

    pub fn as_str(self) -> &'static str {
        match self {
            OrderKind::Backup => "backup",
            OrderKind::Restore => "restore",
            OrderKind::Health => "health",
            OrderKind::Prune => "prune",
            OrderKind::Drill => "drill",
        }
    }

    /// Returns whether running the order twice is harmless, so a lost one may be retried.
    pub fn is_idempotent(self) -> bool {
        matches!(
            self,
            OrderKind::Backup | OrderKind::Health | OrderKind::Prune | OrderKind::Drill
        )
    }
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum OrderState {
    Queued,
    Held,
    Dispatched,
    Running,
    Succeeded,
    Failed,
    Cancelled,
    Lost,
    /// Held for a maintenance window that closed before the order could start.
    Expired,
}

impl OrderState {
    pub const ALL: [OrderState; 9] = [
        OrderState::Queued,
        OrderState::Held,
        OrderState::Dispatched,
        OrderState::Running,
        OrderState::Succeeded,
        OrderState::Failed,
        OrderState::Cancelled,
        OrderState::Lost,
        OrderState::Expired,
    ];

    pub fn as_str(self) -> &'static str {
        match self {
            OrderState::Queued => "queued",
            OrderState::Held => "held",
            OrderState::Dispatched => "dispatched",
            OrderState::Running => "running",
            OrderState::Succeeded => "succeeded",
            OrderState::Failed => "failed",
            OrderState::Cancelled => "cancelled",
            OrderState::Lost => "lost",
            OrderState::Expired => "expired",
        }
    }

    /// Returns whether nothing more happens to an order in this state (a lost order of an
    /// idempotent kind is the exception: the dispatcher may pick it up again).
    pub fn is_final(self) -> bool {
        matches!(
            self,
            OrderState::Succeeded
                | OrderState::Failed
                | OrderState::Cancelled
                | OrderState::Lost
                | OrderState::Expired
        )
    }

    /// Returns whether an agent holds the order (it was sent and not yet finished).
    pub fn is_with_agent(self) -> bool {
        matches!(self, OrderState::Dispatched | OrderState::Running)
    }

    /// Returns whether the state machine allows moving from `self` to `next`.
    pub fn can_become(self, next: OrderState) -> bool {
        use OrderState::*;
        match (self, next) {
            (Queued, Held | Dispatched | Cancelled | Expired) => true,
            // A held destructive order fails when the safety backup it waits for failed.
            (Held, Queued | Dispatched | Cancelled | Expired | Failed) => true,
            (Dispatched, Running | Succeeded | Failed | Cancelled | Lost) => true,
            (Running, Succeeded | Failed | Cancelled | Lost) => true,
            // A lost order whose agent comes back still running it or with a result, or a
            // retried lost order.
            (Lost, Running | Succeeded | Failed | Dispatched) => true,
            // A lost order the dispatcher would retry can be called off.
            (Lost, Cancelled) => true,
            _ => false,
        }
    }
}

/// What an order does, with its parameters. Stored as JSON in the coordinator's store and
/// recorded in the audit log, so it never holds credentials.
#[derive(Debug, Clone, PartialEq, Eq, serde::Serialize, serde::Deserialize)]
#[serde(tag = "kind", rename_all = "lowercase")]
pub enum OrderSpec {
    Backup {
        /// Why the backup is taken: "manual", "schedule:NAME", "safety", ...
        trigger: String,
        /// Read the dump back after commit and check its sha256 (safety backups).
        #[serde(default)]
        verify: bool,
    },
    Restore {
        artifact_id: String,
        /// Directory of the artifact relative to the repository root.
        artifact_path: String,
        /// sha256 of the compressed dump as the catalog recorded it.
        sha256: String,
        /// Restore into a new database of this name; `None` replaces the target database.
        new_name: Option<String>,
    },
    Health,
    Prune {
        artifacts: Vec<PruneTarget>,
    },
    Drill {
        artifact_id: String,
        /// Directory of the artifact relative to the repository root.
        artifact_path: String,
        /// sha256 of the compressed dump as the catalog recorded it.
        sha256: String,
        /// SQL checks from the fleet policy that must return true in the restored copy.
        #[serde(default)]
        checks: Vec<DrillCheck>,
        /// `AGENT/DBNAME` drilled, when the drill runs on another agent's server (`--on`):
        /// the order's own database then only names the server that hosts the scratch copy.
        #[serde(default, skip_serializing_if = "Option::is_none")]
        source: Option<String>,
    },
}

/// A named SQL query that must return `true` in a drill's restored copy.
#[derive(Debug, Clone, PartialEq, Eq, serde::Serialize, serde::Deserialize)]
pub struct DrillCheck {
    pub name: String,
    pub sql: String,
}

/// An artifact a prune order removes.
#[derive(Debug, Clone, PartialEq, Eq, serde::Serialize, serde::Deserialize)]
pub struct PruneTarget {
    pub artifact_id: String,
    /// Directory of the artifact relative to the repository root.
    pub artifact_path: String,
}

impl OrderSpec {
    pub fn kind(&self) -> OrderKind {
        match self {
            OrderSpec::Backup { .. } => OrderKind::Backup,
            OrderSpec::Restore { .. } => OrderKind::Restore,
            OrderSpec::Health => OrderKind::Health,
            OrderSpec::Prune { .. } => OrderKind::Prune,
            OrderSpec::Drill { .. } => OrderKind::Drill,
        }
    }
}

macro_rules! string_enum {
    ($ty:ty, $what:literal) => {
        impl fmt::Display for $ty {
            fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
                f.write_str(self.as_str())
            }
        }

        impl FromStr for $ty {
            type Err = String;

            fn from_str(s: &str) -> Result<Self, Self::Err> {
                Self::ALL
                    .into_iter()
                    .find(|v| v.as_str() == s)
                    .ok_or_else(|| format!(concat!("unknown ", $what, " {:?}"), s))
            }
        }

        impl TryFrom<String> for $ty {
            type Error = String;

            fn try_from(s: String) -> Result<Self, Self::Error> {
                s.parse()
            }
        }
    };
}

string_enum!(OrderKind, "order kind");
string_enum!(OrderState, "order state");

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn strings_round_trip() {
        for state in OrderState::ALL {
            assert_eq!(state.as_str().parse::<OrderState>(), Ok(state));
        }
        for kind in OrderKind::ALL {
            assert_eq!(kind.as_str().parse::<OrderKind>(), Ok(kind));
        }
        assert!("done".parse::<OrderState>().is_err());
    }

    #[test]
    fn final_states_do_not_move_except_lost() {
        for from in [
            OrderState::Succeeded,
            OrderState::Failed,
            OrderState::Cancelled,
            OrderState::Expired,
        ] {
            for to in OrderState::ALL {
                assert!(!from.can_become(to), "{from} -> {to}");
            }
        }
        assert!(OrderState::Lost.can_become(OrderState::Dispatched));
        assert!(OrderState::Lost.can_become(OrderState::Cancelled));
        assert!(OrderState::Queued.can_become(OrderState::Dispatched));
        assert!(!OrderState::Queued.can_become(OrderState::Running));
    }

    #[test]
    fn only_restore_is_not_idempotent() {
        assert!(OrderKind::Backup.is_idempotent());
        assert!(OrderKind::Drill.is_idempotent());
        assert!(OrderKind::Health.is_idempotent());
        assert!(OrderKind::Prune.is_idempotent());
        assert!(!OrderKind::Restore.is_idempotent());
    }
}
