//! The agent's configuration (`warden-agent --config agent.toml`): defaults < TOML file <
//! `WARDEN_AGENT_*` environment variables, then [`AgentConfig::validate`].
//!
//! Database URLs carry credentials. They are only ever shown through [`DatabaseConfig`]'s
//! `Debug` and [`AgentConfig::to_redacted_toml`], both of which replace the password by `***`.

use std::collections::{BTreeMap, HashSet};
use std::fmt;
use std::path::{Path, PathBuf};
use std::time::Duration;

use serde::{Deserialize, Serialize};
use warden_shared::{validate_agent_name, validate_database_name};

use crate::error::{AgentError, AgentResult};
use crate::pg::PgUrl;
use crate::repository::Repository;

/// Prefix of the environment variables that override the file (`WARDEN_AGENT_NAME`, ...).
pub const ENV_PREFIX: &str = "WARDEN_AGENT_";

/// Default of [`AgentConfig::drill_check_timeout`].
pub const DEFAULT_DRILL_CHECK_TIMEOUT: Duration = Duration::from_secs(60);
/// The longest `statement_timeout` PostgreSQL accepts: `i32::MAX` milliseconds.
const MAX_STATEMENT_TIMEOUT: Duration = Duration::from_millis(i32::MAX as u64);

/// The agent's configuration, as in the README's agent section.
#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct AgentConfig {
    /// Unique in the fleet: letters, digits, `.`, `_`, `-`.
    pub name: String,
    /// URL of the coordinator's gRPC endpoint.
    pub coordinator: String,
    /// Where artifacts are written: `file:///absolute/path`.
    pub repository: String,
    #[serde(default)]
    pub labels: BTreeMap<String, String>,
    /// Where pg_dump, pg_restore and pg_dumpall are looked for first.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub pg_bindir: Option<PathBuf>,
    /// Where restores stage decompressed dumps; default `<repository>/.staging/<name>`.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub staging_dir: Option<PathBuf>,
    /// Parallel jobs of pg_restore.
    pub restore_jobs: u32,
    /// Database used to create, rename and drop databases.
    pub maintenance_db: String,
    /// The longest one SQL check of a drill may run in the drill's scratch database
    /// (its `statement_timeout`), e.g. `"60s"`, `"5m"` or `"1m 30s"`;
    /// default 60s. A check that takes longer fails, saying so; raise this for checks that
    /// scan large tables.
    #[serde(with = "humantime_serde")]
    pub drill_check_timeout: Duration,
    #[serde(default)]
    pub databases: Vec<DatabaseConfig>,
}

impl Default for AgentConfig {
    fn default() -> Self {
        Self {
            name: String::new(),
            coordinator: "http://127.0.0.1:7717".to_owned(),
            repository: String::new(),
            labels: BTreeMap::new(),
            pg_bindir: None,
            staging_dir: None,
            restore_jobs: 2,
            maintenance_db: "postgres".to_owned(),
            drill_check_timeout: DEFAULT_DRILL_CHECK_TIMEOUT,
            databases: Vec::new(),
        }
    }
}

/// One `[[databases]]` entry.
#[derive(Clone, Serialize, Deserialize)]
pub struct DatabaseConfig {
    /// The fleet name (`AGENT/NAME`); the name on the server is in the URL.
    pub name: String,
    /// Connection URL with credentials; never sent or logged.
    pub url: String,
    #[serde(default)]
    pub labels: BTreeMap<String, String>,
}

impl DatabaseConfig {
    /// Parses the URL (checked by [`AgentConfig::validate`]).
    pub fn pg_url(&self) -> AgentResult<PgUrl> {
        PgUrl::parse(&self.url).map_err(|why| {
            AgentError::Config(format!("database {:?}: url is invalid: {why}", self.name))
        })
    }

    /// Returns the URL with its password replaced by `***`; unparseable URLs are hidden whole.
    fn redacted_url(&self) -> String {
        self.pg_url()
            .map(|u| u.redacted())
            .unwrap_or_else(|_| crate::pg::REDACTED.to_owned())
    }
}

impl fmt::Debug for DatabaseConfig {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("DatabaseConfig")
            .field("name", &self.name)
            .field("url", &self.redacted_url())
            .field("labels", &self.labels)
            .finish()
    }
}

impl AgentConfig {
    /// Loads the configuration from defaults, `file` and the environment, and validates it.
    pub fn load(file: Option<&Path>) -> AgentResult<Self> {
        // The agent's only flags (--config, --dump-config, --log-json) are not config keys.
        let no_flags: BTreeMap<String, String> = BTreeMap::new();
        let config: Self = warden_shared::config::load(file, ENV_PREFIX, &no_flags)?;
        config.validate()?;
        Ok(config)
    }

    /// Checks every value the agent relies on; the error names the offending key and value
    /// (never a database URL).
    pub fn validate(&self) -> AgentResult<()> {
        if self.name.is_empty() {
            return Err(AgentError::Config(
                "name is not set; give the agent a name unique in the fleet, e.g. name = \"db1\""
                    .to_owned(),
            ));
        }
        validate_agent_name(&self.name)?;
        let coordinator = url::Url::parse(&self.coordinator).map_err(|e| {
            AgentError::Config(format!(
                "coordinator {:?} is not a URL: {e}",
                self.coordinator
            ))
        })?;
        // The agent is built without TLS for gRPC, so https:// could never connect.
        if coordinator.scheme() != "http" {
            return Err(AgentError::Config(format!(
                "coordinator {:?} must be an http:// URL (this build has no TLS for gRPC)",
                self.coordinator
            )));
        }
        if self.repository.is_empty() {
            return Err(AgentError::Config(
                "repository is not set; e.g. repository = \"file:///var/lib/warden/repo\""
                    .to_owned(),
            ));
        }
        Repository::from_url(&self.repository)?;
        if self.restore_jobs == 0 {
            return Err(AgentError::Config(
                "restore_jobs must be at least 1".to_owned(),
            ));
        }
        validate_database_name(&self.maintenance_db)?;
        // Below one millisecond, `statement_timeout` would be 0, which means no limit at all.
        if self.drill_check_timeout < Duration::from_millis(1)
            || self.drill_check_timeout > MAX_STATEMENT_TIMEOUT
        {
            return Err(AgentError::Config(format!(
                "drill_check_timeout \"{}\" must be between 1ms and {}",
                humantime::format_duration(self.drill_check_timeout),
                humantime::format_duration(MAX_STATEMENT_TIMEOUT)
            )));
        }
        let mut names = HashSet::new();
        for db in &self.databases {
            validate_database_name(&db.name)?;
            if !names.insert(db.name.as_str()) {
                return Err(AgentError::Config(format!(
                    "database {:?} is configured twice; database names must be unique per agent",
                    db.name
                )));
            }
            db.pg_url()?;
        }
        Ok(())
    }

    /// Returns the configured database of this name.
    pub fn database(&self, name: &str) -> Option<&DatabaseConfig> {
        self.databases.iter().find(|db| db.name == name)
    }

    /// Returns the staging directory, defaulting to `<repository>/.staging/<name>`.
    pub fn staging_dir(&self, repository: &Repository) -> PathBuf {
        self.staging_dir
            .clone()
            .unwrap_or_else(|| repository.root().join(".staging").join(&self.name))
    }

    /// Renders the effective configuration as TOML with every password replaced by `***`.
    pub fn to_redacted_toml(&self, repository: &Repository) -> AgentResult<String> {
        let mut shown = self.clone();
        shown.staging_dir = Some(self.staging_dir(repository));
        for db in &mut shown.databases {
            db.url = db.redacted_url();
        }
        toml::to_string(&shown)
            .map_err(|e| AgentError::Config(format!("cannot render the configuration: {e}")))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn valid() -> AgentConfig {
        AgentConfig {
            name: "db1".to_owned(),
            repository: "file:///var/lib/warden/repo".to_owned(),
            databases: vec![DatabaseConfig {
                name: "app".to_owned(),
                url: "postgres://warden:s3cret@10.0.0.5:5432/app".to_owned(),
                labels: BTreeMap::from([("tier".to_owned(), "critical".to_owned())]),
            }],
            ..AgentConfig::default()
        }
    }

    fn error_of(change: impl FnOnce(&mut AgentConfig)) -> String {
        let mut config = valid();
        change(&mut config);
        config.validate().expect_err("invalid").to_string()
    }

    #[test]
    fn valid_config_passes() {
        valid().validate().expect("valid");
    }

    #[test]
    fn validation_names_the_problem() {
        assert!(error_of(|c| c.name.clear()).contains("name is not set"));
        assert!(error_of(|c| c.name = "db 1".to_owned()).contains("invalid agent name \"db 1\""));
        assert!(error_of(|c| c.coordinator = "::".to_owned()).contains("coordinator \"::\""));
        assert!(error_of(|c| c.coordinator = "ftp://x".to_owned()).contains("http://"));
        assert!(error_of(|c| c.coordinator = "https://x".to_owned()).contains("no TLS"));
        assert!(error_of(|c| c.repository = "s3://bucket".to_owned()).contains("\"s3://bucket\""));
        assert!(error_of(|c| c.restore_jobs = 0).contains("restore_jobs"));
        for timeout in [
            Duration::ZERO,
            Duration::from_micros(999),
            Duration::from_secs(1 << 31),
        ] {
            let error = error_of(|c| c.drill_check_timeout = timeout);
            assert!(error.contains("drill_check_timeout"), "{error}");
        }
        assert!(
            error_of(|c| c.databases[0].name = "a/b".to_owned()).contains("invalid database name")
        );
        let dup = error_of(|c| c.databases.push(c.databases[0].clone()));
        assert!(dup.contains("\"app\" is configured twice"), "{dup}");
        let bad_url = error_of(|c| c.databases[0].url = "mysql://warden:s3cret@h/app".to_owned());
        assert!(bad_url.contains("database \"app\""), "{bad_url}");
        assert!(!bad_url.contains("s3cret"), "{bad_url}");
    }

    #[test]
    fn debug_and_dump_hide_passwords() {
        let config = valid();
        let debug = format!("{config:?}");
        assert!(!debug.contains("s3cret"), "{debug}");
        assert!(debug.contains("warden:***@10.0.0.5"), "{debug}");

        let repository = Repository::from_url(&config.repository).expect("repo");
        let dumped = config.to_redacted_toml(&repository).expect("toml");
        assert!(!dumped.contains("s3cret"), "{dumped}");
        assert!(
            dumped.contains("postgres://warden:***@10.0.0.5:5432/app"),
            "{dumped}"
        );
        assert!(
            dumped.contains("/var/lib/warden/repo/.staging/db1"),
            "{dumped}"
        );
        // The dump is itself a loadable config (apart from the password).
        let back: AgentConfig = toml::from_str(&dumped).expect("parses");
        assert_eq!(back.databases[0].name, "app");
        assert_eq!(back.restore_jobs, 2);
        assert!(dumped.contains("drill_check_timeout = \"1m\""), "{dumped}");
        assert_eq!(back.drill_check_timeout, DEFAULT_DRILL_CHECK_TIMEOUT);
    }

    #[test]
    fn loads_readme_example_with_defaults() {
        let dir = tempfile::tempdir().expect("tempdir");
        let path = dir.path().join("agent.toml");
        std::fs::write(
            &path,
            r#"
name = "db1"
coordinator = "http://127.0.0.1:7717"
repository = "file:///var/lib/warden/repo"
labels = { env = "prod", region = "eu" }

[[databases]]
name = "app"
url = "postgres://warden:secret@10.0.0.5:5432/app"
labels = { tier = "critical" }
"#,
        )
        .expect("write");
        let config = AgentConfig::load(Some(&path)).expect("loads");
        assert_eq!(config.name, "db1");
        assert_eq!(config.labels["region"], "eu");
        assert_eq!(config.restore_jobs, 2);
        assert_eq!(config.maintenance_db, "postgres");
        assert_eq!(config.pg_bindir, None);
        assert_eq!(config.drill_check_timeout, DEFAULT_DRILL_CHECK_TIMEOUT);
        assert_eq!(config.databases[0].labels["tier"], "critical");
        assert!(AgentConfig::load(Some(&dir.path().join("missing.toml"))).is_err());
    }
}
