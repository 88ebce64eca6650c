//! Safe migrations: which databases the destructive guard protects, what it refuses there,
//! and what a migration does when its post-checks fail.
//!
//! The guard refuses, in the databases its selector picks, SQL statements and migration
//! commands that match a deny pattern: the built-in ones of `warden_shared::migration`
//! plus the policy's own. Breaking glass (`--emergency --reason`) passes it. Post-migration
//! checks are the policy's `[[checks]]`, the same ones drills run.

use std::sync::LazyLock;

use warden_shared::{Guard, Labels, OnCheckFailure, Selector};

/// The guard's selector when a document does not give one.
pub const DEFAULT_GUARD: &str = "env=prod";

/// The `[migrate]` table of the policy.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct MigratePolicy {
    /// The databases the destructive guard protects; `None` (`guard = ""`): none.
    pub guard: Option<Selector>,
    /// SQL deny patterns added to the built-in ones.
    pub deny_sql: Vec<String>,
    /// Command-line fragments added to the built-in ones.
    pub deny_commands: Vec<String>,
    /// What a migration does when a post-check fails, unless its request says otherwise.
    pub on_check_failure: OnCheckFailure,
}

impl Default for MigratePolicy {
    fn default() -> Self {
        static GUARD: LazyLock<Selector> = LazyLock::new(|| {
            DEFAULT_GUARD
                .parse()
                .expect("the built-in guard selector is valid")
        });
        Self {
            guard: Some(GUARD.clone()),
            deny_sql: Vec::new(),
            deny_commands: Vec::new(),
            on_check_failure: OnCheckFailure::Stop,
        }
    }
}

impl MigratePolicy {
    /// Whether the destructive guard protects a database with `labels`.
    pub fn guards(&self, labels: &Labels) -> bool {
        self.guard.as_ref().is_some_and(|s| s.matches(labels))
    }

    /// The guard: the built-in deny lists plus the policy's.
    pub fn guard(&self) -> Guard {
        Guard::with_defaults(&self.deny_sql, &self.deny_commands)
    }

    /// The guard's selector as the document writes it (`""` for none).
    pub fn guard_text(&self) -> String {
        self.guard
            .as_ref()
            .map(ToString::to_string)
            .unwrap_or_default()
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use warden_shared::labels::labels;

    #[test]
    fn the_default_guard_protects_prod_only() {
        let policy = MigratePolicy::default();
        assert!(policy.guards(&labels(&[("env", "prod"), ("team", "x")])));
        assert!(!policy.guards(&labels(&[("env", "staging")])));
        assert!(!policy.guards(&labels(&[])));
        let none = MigratePolicy {
            guard: None,
            ..MigratePolicy::default()
        };
        assert!(!none.guards(&labels(&[("env", "prod")])));
        assert_eq!(none.guard_text(), "");
        assert_eq!(policy.guard_text(), "env=prod");
    }

    #[test]
    fn the_guard_adds_the_policy_patterns_to_the_built_in_ones() {
        let policy = MigratePolicy {
            deny_sql: vec!["DELETE FROM ...".to_owned()],
            deny_commands: vec!["flyway clean".to_owned()],
            ..MigratePolicy::default()
        };
        let guard = policy.guard();
        assert!(guard.check_sql("TRUNCATE t").is_some());
        assert!(guard.check_sql("DELETE FROM t WHERE true").is_some());
        assert!(
            guard
                .check_command(&["flyway".to_owned(), "clean".to_owned()])
                .is_some()
        );
        assert!(
            guard
                .check_command(&["rails".to_owned(), "db:drop".to_owned()])
                .is_some()
        );
    }
}
