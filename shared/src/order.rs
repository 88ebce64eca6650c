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
    /// Applies migrations (or only reports their status) after a pre-migration backup.
    Migrate,
}

impl OrderKind {
    pub const ALL: [OrderKind; 6] = [
        OrderKind::Backup,
        OrderKind::Restore,
        OrderKind::Health,
        OrderKind::Prune,
        OrderKind::Drill,
        OrderKind::Migrate,
    ];

    pub fn as_str(self) -> &'static str {
        match self {
            OrderKind::Backup => "backup",
            OrderKind::Restore => "restore",
            OrderKind::Health => "health",
            OrderKind::Prune => "prune",
            OrderKind::Drill => "drill",
            OrderKind::Migrate => "migrate",
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
            // A queued order fails when what it needs went bad before a pass could start it
            // (its artifact was condemned, its stored spec cannot be read).
            (Queued, Held | Dispatched | Cancelled | Expired | Failed) => true,
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
    Migrate {
        source: MigrationSource,
        /// Only compare the files with what the database recorded (`warden migrate status`):
        /// no window, no backup, nothing changed.
        #[serde(default)]
        status_only: bool,
        /// SQL checks from the fleet policy that must return true after the migration.
        #[serde(default)]
        checks: Vec<DrillCheck>,
        #[serde(default)]
        on_check_failure: OnCheckFailure,
        /// SQL deny patterns the agent checks the pending files against before applying any
        /// (the destructive guard; empty when the database is not guarded or glass was
        /// broken). Files applied before are not checked again.
        #[serde(default)]
        deny_sql: Vec<String>,
        /// Command-line fragments the agent refuses to run (the destructive guard; empty when
        /// the database is not guarded or glass was broken).
        #[serde(default)]
        deny_commands: Vec<String>,
        /// The pre-migration backup; set by the coordinator when its safety backup succeeded,
        /// just before the order is dispatched.
        #[serde(default, skip_serializing_if = "Option::is_none")]
        pre_migration: Option<ArtifactPointer>,
        /// The fleet rollout this order is part of.
        #[serde(default, skip_serializing_if = "Option::is_none")]
        rollout_id: Option<String>,
    },
}

/// Where a migration comes from.
#[derive(Debug, Clone, PartialEq, Eq, serde::Serialize, serde::Deserialize)]
#[serde(tag = "mode", rename_all = "lowercase")]
pub enum MigrationSource {
    /// Versioned SQL files, applied in version order, recorded in the tracking table.
    Sql {
        files: Vec<crate::migration::MigrationFile>,
    },
    /// A migration command the agent's configuration allows for the database, by name.
    Command { name: String },
}

/// What a migration does when its post-checks fail.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, serde::Serialize, serde::Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum OnCheckFailure {
    /// Stop, and say how to restore the pre-migration backup.
    #[default]
    Stop,
    /// Restore the pre-migration backup over the database.
    Restore,
}

impl OnCheckFailure {
    pub fn as_str(self) -> &'static str {
        match self {
            OnCheckFailure::Stop => "stop",
            OnCheckFailure::Restore => "restore",
        }
    }
}

impl FromStr for OnCheckFailure {
    type Err = String;

    fn from_str(s: &str) -> Result<Self, Self::Err> {
        match s {
            "stop" => Ok(OnCheckFailure::Stop),
            "restore" => Ok(OnCheckFailure::Restore),
            other => Err(format!(
                "unknown on_check_failure {other:?}: expected \"stop\" or \"restore\""
            )),
        }
    }
}

/// An artifact an order reads, as the catalog recorded it.
#[derive(Debug, Clone, PartialEq, Eq, serde::Serialize, serde::Deserialize)]
pub struct ArtifactPointer {
    pub artifact_id: String,
    /// Directory of the artifact relative to the repository root.
    pub artifact_path: String,
    /// sha256 of the compressed dump.
    pub sha256: String,
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
            OrderSpec::Migrate { .. } => OrderKind::Migrate,
        }
    }

    /// Whether the order changes a database in place, so it needs a maintenance window and a
    /// safety backup first: a restore over a database, or a migration that applies.
    pub fn is_destructive(&self) -> bool {
        matches!(
            self,
            OrderSpec::Restore { new_name: None, .. }
                | OrderSpec::Migrate {
                    status_only: false,
                    ..
                }
        )
    }

    /// The spec as the audit log records it: migration files by version, name and checksum,
    /// without their SQL.
    pub fn audit_view(&self) -> serde_json::Value {
        let mut value = serde_json::to_value(self).unwrap_or_default();
        if let OrderSpec::Migrate {
            source: MigrationSource::Sql { files },
            ..
        } = self
        {
            value["source"]["files"] = files
                .iter()
                .map(|f| serde_json::json!({ "version": f.version, "name": f.name, "sha256": f.sha256 }))
                .collect();
        }
        value
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
        assert!(OrderState::Queued.can_become(OrderState::Failed));
        assert!(!OrderState::Queued.can_become(OrderState::Running));
    }

    #[test]
    fn only_restore_and_migrate_are_not_idempotent() {
        assert!(OrderKind::Backup.is_idempotent());
        assert!(OrderKind::Drill.is_idempotent());
        assert!(OrderKind::Health.is_idempotent());
        assert!(OrderKind::Prune.is_idempotent());
        assert!(!OrderKind::Restore.is_idempotent());
        assert!(!OrderKind::Migrate.is_idempotent());
    }

    #[test]
    fn the_audit_view_of_a_migration_has_no_sql() {
        let file = crate::MigrationFile::from_file(
            "0001_a.sql",
            "CREATE TABLE secretive (id int);".to_owned(),
        )
        .expect("valid");
        let spec = OrderSpec::Migrate {
            source: MigrationSource::Sql {
                files: vec![file.clone()],
            },
            status_only: false,
            checks: Vec::new(),
            on_check_failure: OnCheckFailure::Restore,
            deny_sql: Vec::new(),
            deny_commands: Vec::new(),
            pre_migration: None,
            rollout_id: None,
        };
        assert!(spec.is_destructive());
        let view = spec.audit_view().to_string();
        assert!(
            view.contains(&file.sha256) && !view.contains("secretive"),
            "{view}"
        );
        let text = serde_json::to_string(&spec).expect("serializes");
        assert_eq!(
            serde_json::from_str::<OrderSpec>(&text).expect("parses"),
            spec
        );
    }
}
