//! The agent's configuration (`warden-agent --config agent.toml`): defaults < TOML file <
//! `WARDEN_AGENT_*` environment variables, then [`AgentConfig::validate`].
//!
//! Database URLs carry credentials. They are only ever shown through [`DatabaseConfig`]'s
//! `Debug` and [`AgentConfig::to_redacted_toml`], both of which replace the password by `***`.
//! The same goes for the values of a database's migration environment
//! ([`MigrateConfig::env`]), which may hold secrets.

use std::collections::{BTreeMap, HashSet};
use std::fmt;
use std::path::{Path, PathBuf};
use std::time::Duration;

use serde::{Deserialize, Serialize};
use warden_shared::{validate_agent_name, validate_database_name};

use crate::error::{AgentError, AgentResult};
use crate::pg::PgUrl;
use crate::repository::{Repository, S3Settings};

/// Prefix of the environment variables that override the file (`WARDEN_AGENT_NAME`, ...).
pub const ENV_PREFIX: &str = "WARDEN_AGENT_";

/// Default of [`AgentConfig::drill_check_timeout`].
pub const DEFAULT_DRILL_CHECK_TIMEOUT: Duration = Duration::from_secs(60);
/// Default of [`MigrateConfig::timeout`].
pub const DEFAULT_MIGRATE_TIMEOUT: Duration = Duration::from_secs(30 * 60);
/// Environment variables the agent sets for migration commands and hooks itself, from the
/// database URL and the order; `[databases.migrate.env]` may not set them.
pub const RESERVED_MIGRATE_ENV: [&str; 15] = [
    "PGHOST",
    "PGPORT",
    "PGDATABASE",
    "PGUSER",
    "PGPASSWORD",
    "PGSSLMODE",
    "PGSSLROOTCERT",
    "PGSSLCERT",
    "PGSSLKEY",
    "PGCONNECT_TIMEOUT",
    "PGOPTIONS",
    "DATABASE_URL",
    "WARDEN_ORDER_ID",
    "WARDEN_DATABASE",
    "WARDEN_MIGRATION_STATUS",
];
/// A database password at least this long is refused in the command lines of
/// `[databases.migrate]`; a shorter one would match ordinary arguments.
const MIN_PASSWORD_IN_ARGV: usize = 4;
/// Where restores stage decompressed dumps when the repository is a bucket and
/// `staging_dir` is not set (`/var/tmp` survives reboots and is rarely a small tmpfs).
const OBJECT_STAGING_ROOT: &str = "/var/tmp/warden-staging";

/// The keys of client-side encryption: age identity files (`warden-agent key generate` or
/// `age-keygen` writes them), mode 0600. The first seals new backups; every one opens the
/// backups it sealed, so rotating is putting the new key first and keeping the old ones
/// while their backups are kept.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct EncryptionConfig {
    pub key_files: Vec<PathBuf>,
}

/// The longest `statement_timeout` PostgreSQL accepts: `i32::MAX` milliseconds.
const MAX_STATEMENT_TIMEOUT: Duration = Duration::from_millis(i32::MAX as u64);

/// The agent's configuration, as in the README's agent section.
#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct AgentConfig {
    /// Unique in the fleet: letters, digits, `.`, `_`, `-`.
    pub name: String,
    /// URL of the coordinator's gRPC endpoint: `https://` (mTLS), or `http://` with
    /// `insecure_dev`.
    pub coordinator: String,
    /// Where the agent keeps its certificate, its key (mode 0600) and the coordinator's CA
    /// certificate: `agent.pem`, `agent-key.pem`, `ca.pem` (`warden-agent enroll` writes
    /// them).
    pub tls_dir: PathBuf,
    /// Plaintext to a coordinator started with `--insecure-dev`: a development fleet on one
    /// machine only.
    pub insecure_dev: bool,
    /// Where artifacts are written: `file:///absolute/path` or `s3://bucket/prefix`.
    pub repository: String,
    /// Endpoint, region and credentials of an `s3://` repository, where the standard AWS
    /// environment variables do not say them.
    // Always serialized, even empty: the loader takes `WARDEN_AGENT_S3__*` variables only
    // for keys the defaults show.
    #[serde(default)]
    pub s3: S3Settings,
    /// Client-side encryption of new backups; the keys never leave this host.
    #[serde(default)]
    pub encryption: EncryptionConfig,
    #[serde(default)]
    pub labels: BTreeMap<String, String>,
    /// Where pg_dump, pg_restore and pg_dumpall are looked for first.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub pg_bindir: Option<PathBuf>,
    /// Where restores stage decompressed dumps; default `<repository>/.staging/<name>` for a
    /// `file://` repository, `/var/tmp/warden-staging/<name>` for a bucket.
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
            coordinator: "https://127.0.0.1:7717".to_owned(),
            tls_dir: PathBuf::from("tls"),
            insecure_dev: false,
            repository: String::new(),
            s3: S3Settings::default(),
            encryption: EncryptionConfig::default(),
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
    /// How migrations of this database may run beyond SQL files: allowed commands, hooks.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub migrate: Option<MigrateConfig>,
}

/// One `[databases.migrate]` table: the migration commands the coordinator may ask for by
/// name, the hooks around every migration of the database, and how they all run.
#[derive(Clone, Serialize, Deserialize)]
pub struct MigrateConfig {
    /// Allowed migration commands: name → argv (`warden migrate DB --command NAME`). The
    /// argv is sent to the coordinator (it lists them), so secrets belong in `env`.
    #[serde(default)]
    pub commands: BTreeMap<String, Vec<String>>,
    /// Runs before a migration applies anything, once the order passed every check that
    /// can refuse it (the files or command allowed and not denied by the destructive guard,
    /// the migration lock taken, no applied file changed, the order not run before); a
    /// failure fails the migration without applying anything. Not run for a status.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub pre_hook: Option<Vec<String>>,
    /// Runs last, after applying, the checks and any restore, whenever the pre-hook's turn
    /// came (whether or not a `pre_hook` is configured): also when the pre-hook, applying,
    /// a check or the restore failed, and after a cancel (it is not cancelled itself; its
    /// timeout bounds it). `WARDEN_MIGRATION_STATUS` says how the migration went
    /// (`succeeded`, `failed`, `cancelled`). It does not run when the order was refused
    /// before the pre-hook's turn, nor for a status. Its failure fails the order.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub post_hook: Option<Vec<String>>,
    /// Working directory of commands and hooks; default the agent's.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub workdir: Option<PathBuf>,
    /// The longest one command or hook may run before it is killed, e.g. `"30m"`; default
    /// 30m.
    #[serde(with = "humantime_serde", default = "default_migrate_timeout")]
    pub timeout: Duration,
    /// Extra environment variables of commands and hooks. They may hold secrets: they are
    /// never sent to the coordinator, and `Debug` and `--dump-config` show `***`.
    #[serde(default)]
    pub env: BTreeMap<String, String>,
}

fn default_migrate_timeout() -> Duration {
    DEFAULT_MIGRATE_TIMEOUT
}

impl Default for MigrateConfig {
    fn default() -> Self {
        Self {
            commands: BTreeMap::new(),
            pre_hook: None,
            post_hook: None,
            workdir: None,
            timeout: DEFAULT_MIGRATE_TIMEOUT,
            env: BTreeMap::new(),
        }
    }
}

impl MigrateConfig {
    /// Returns a copy with every `env` value replaced by `***`.
    fn redacted(&self) -> Self {
        let mut shown = self.clone();
        for value in shown.env.values_mut() {
            *value = crate::pg::REDACTED.to_owned();
        }
        shown
    }

    /// Checks names, argvs, the working directory, the timeout and the environment of the
    /// `[databases.migrate]` table of database `db`; errors name the key. No command line
    /// may contain the database's `password` (its forms, as is and percent-encoded).
    fn validate(&self, db: &str, password: &[String]) -> AgentResult<()> {
        let key = |rest: &str| format!("database {db:?}: [databases.migrate] {rest}");
        for (name, argv) in &self.commands {
            if name.is_empty()
                || name.len() > 64
                || !name
                    .chars()
                    .all(|c| c.is_ascii_alphanumeric() || matches!(c, '_' | '.' | '-'))
            {
                return Err(AgentError::Config(format!(
                    "{}: command name {name:?} must be 1 to 64 letters, digits, '_', '.' or '-'",
                    key("commands")
                )));
            }
            let key = key(&format!("commands.{name}"));
            validate_argv(&key, argv)?;
            refuse_password(&key, argv, password)?;
        }
        for (hook, argv) in [("pre_hook", &self.pre_hook), ("post_hook", &self.post_hook)] {
            if let Some(argv) = argv {
                validate_argv(&key(hook), argv)?;
                refuse_password(&key(hook), argv, password)?;
            }
        }
        if let Some(workdir) = &self.workdir
            && !workdir.is_absolute()
        {
            return Err(AgentError::Config(format!(
                "{}: {:?} must be an absolute path",
                key("workdir"),
                workdir.display().to_string()
            )));
        }
        if self.timeout < Duration::from_secs(1) {
            return Err(AgentError::Config(format!(
                "{}: \"{}\" must be at least 1s",
                key("timeout"),
                humantime::format_duration(self.timeout)
            )));
        }
        for (name, value) in &self.env {
            let valid = name
                .chars()
                .next()
                .is_some_and(|c| c.is_ascii_alphabetic() || c == '_')
                && name.chars().all(|c| c.is_ascii_alphanumeric() || c == '_');
            if !valid {
                return Err(AgentError::Config(format!(
                    "{}: {name:?} is not an environment variable name (letters, digits and '_', \
                     not starting with a digit)",
                    key("env")
                )));
            }
            if RESERVED_MIGRATE_ENV.contains(&name.as_str()) {
                return Err(AgentError::Config(format!(
                    "{}: {name} is set by the agent from the database url and the order; \
                     remove it (connection settings belong in the url)",
                    key("env")
                )));
            }
            // The value is never shown: it may be a secret.
            if value.contains('\0') {
                return Err(AgentError::Config(format!(
                    "{}: the value of {name} contains a NUL character",
                    key("env")
                )));
            }
        }
        Ok(())
    }
}

/// Checks that a command line has a program and no NUL characters.
fn validate_argv(key: &str, argv: &[String]) -> AgentResult<()> {
    match argv.first() {
        None => Err(AgentError::Config(format!(
            "{key}: the command is empty; give the program and its arguments, e.g. \
             [\"/usr/local/bin/migrate\", \"up\"]"
        ))),
        Some(program) if program.trim().is_empty() => Err(AgentError::Config(format!(
            "{key}: the program (first element) is blank"
        ))),
        Some(_) if argv.iter().any(|arg| arg.contains('\0')) => Err(AgentError::Config(format!(
            "{key}: an argument contains a NUL character"
        ))),
        Some(_) => Ok(()),
    }
}

/// Refuses a command line that contains the database password: command lines are sent to
/// the coordinator (the commands), logged and shown by `--dump-config`. The error never
/// shows the password.
fn refuse_password(key: &str, argv: &[String], password: &[String]) -> AgentResult<()> {
    if argv
        .iter()
        .any(|arg| password.iter().any(|form| arg.contains(form.as_str())))
    {
        return Err(AgentError::Config(format!(
            "{key}: the command line contains the database password; command lines are shown \
             to the coordinator: pass secrets in [databases.migrate.env] (the program gets the \
             database password as PGPASSWORD and in DATABASE_URL)"
        )));
    }
    Ok(())
}

impl fmt::Debug for MigrateConfig {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let env: BTreeMap<&str, &str> = self
            .env
            .keys()
            .map(|k| (k.as_str(), crate::pg::REDACTED))
            .collect();
        f.debug_struct("MigrateConfig")
            .field("commands", &self.commands)
            .field("pre_hook", &self.pre_hook)
            .field("post_hook", &self.post_hook)
            .field("workdir", &self.workdir)
            .field("timeout", &self.timeout)
            .field("env", &env)
            .finish()
    }
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
            .field("migrate", &self.migrate)
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
        match (coordinator.scheme(), self.insecure_dev) {
            ("https", false) | ("http", true) => {}
            ("http", false) => {
                return Err(AgentError::Config(format!(
                    "coordinator {:?} is plaintext: use https:// (the coordinator serves TLS), \
                     or set insecure_dev = true for a development fleet on one machine",
                    self.coordinator
                )));
            }
            ("https", true) => {
                return Err(AgentError::Config(format!(
                    "coordinator {:?} is https:// but insecure_dev = true asks for plaintext: \
                     remove insecure_dev",
                    self.coordinator
                )));
            }
            (scheme, _) => {
                return Err(AgentError::Config(format!(
                    "coordinator {:?}: scheme {scheme:?} is not supported: use https://",
                    self.coordinator
                )));
            }
        }
        if self.repository.is_empty() {
            return Err(AgentError::Config(
                "repository is not set; e.g. repository = \"file:///var/lib/warden/repo\""
                    .to_owned(),
            ));
        }
        Repository::open(&self.repository, &self.s3)?;
        crate::sealing::Keys::load(&self.encryption.key_files)?;
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
            let url = db.pg_url()?;
            if let Some(migrate) = &db.migrate {
                let password = url
                    .password()
                    .filter(|p| p.chars().count() >= MIN_PASSWORD_IN_ARGV)
                    .map(|_| url.password_forms())
                    .unwrap_or_default();
                migrate.validate(&db.name, &password)?;
            }
        }
        Ok(())
    }

    /// Returns the configured database of this name.
    pub fn database(&self, name: &str) -> Option<&DatabaseConfig> {
        self.databases.iter().find(|db| db.name == name)
    }

    /// Returns the staging directory, defaulting to `<repository>/.staging/<name>` for a
    /// `file://` repository and `/var/tmp/warden-staging/<name>` for a bucket.
    pub fn staging_dir(&self, repository: &Repository) -> PathBuf {
        self.staging_dir.clone().unwrap_or_else(|| {
            repository
                .local_root()
                .map_or_else(
                    || PathBuf::from(OBJECT_STAGING_ROOT),
                    |root| root.join(".staging"),
                )
                .join(&self.name)
        })
    }

    /// Renders the effective configuration as TOML with every password replaced by `***`.
    pub fn to_redacted_toml(&self, repository: &Repository) -> AgentResult<String> {
        let mut shown = self.clone();
        shown.staging_dir = Some(self.staging_dir(repository));
        shown.s3 = self.s3.redacted();
        for db in &mut shown.databases {
            db.url = db.redacted_url();
            db.migrate = db.migrate.as_ref().map(MigrateConfig::redacted);
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
                migrate: None,
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
        assert!(error_of(|c| c.coordinator = "ftp://x".to_owned()).contains("use https://"));
        assert!(
            error_of(|c| c.coordinator = "http://x".to_owned()).contains("insecure_dev = true")
        );
        let plaintext_https = |c: &mut AgentConfig| {
            c.coordinator = "https://x".to_owned();
            c.insecure_dev = true;
        };
        assert!(error_of(plaintext_https).contains("remove insecure_dev"));
        assert!(error_of(|c| c.repository = "s3:///prefix".to_owned()).contains("names no bucket"));
        assert!(error_of(|c| c.repository = "s3://b/p?x=1".to_owned()).contains("has a query"));
        assert!(error_of(|c| c.repository = "gs://bucket".to_owned()).contains("\"gs://bucket\""));
        assert!(
            error_of(|c| c.encryption.key_files = vec![PathBuf::from("/nonexistent/k")])
                .contains("cannot use encryption key file /nonexistent/k")
        );
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

        let repository = Repository::open(&config.repository, &config.s3).expect("repo");
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

        // A bucket's secret key and session token are hidden the same way; the staging
        // directory cannot be in the bucket.
        let mut config = valid();
        config.repository = "s3://backups/warden".to_owned();
        config.s3 = S3Settings {
            endpoint: Some("http://127.0.0.1:9000".to_owned()),
            access_key_id: Some("AKIDEXAMPLE".to_owned()),
            secret_access_key: Some("wJalrXUtnFEMI".to_owned()),
            session_token: Some("FwoGZXIvYXdzE".to_owned()),
            ..S3Settings::default()
        };
        let debug = format!("{config:?}");
        let repository = Repository::open(&config.repository, &config.s3).expect("repo");
        let dumped = config.to_redacted_toml(&repository).expect("toml");
        for shown in [&debug, &dumped] {
            assert!(!shown.contains("wJalrXUtnFEMI"), "{shown}");
            assert!(!shown.contains("FwoGZXIvYXdzE"), "{shown}");
            assert!(shown.contains("AKIDEXAMPLE"), "{shown}");
        }
        assert!(dumped.contains("/var/tmp/warden-staging/db1"), "{dumped}");
    }

    #[test]
    fn loads_readme_example_with_defaults() {
        let dir = tempfile::tempdir().expect("tempdir");
        let path = dir.path().join("agent.toml");
        std::fs::write(
            &path,
            r#"
name = "db1"
coordinator = "https://127.0.0.1:7717"
repository = "file:///var/lib/warden/repo"
labels = { env = "prod", region = "eu" }

[[databases]]
name = "app"
url = "postgres://warden:secret@10.0.0.5:5432/app"
labels = { tier = "critical" }
"#,
        )
        .expect("write");
        // The file holds a password: readable by others, it is refused.
        std::fs::set_permissions(&path, std::os::unix::fs::PermissionsExt::from_mode(0o644))
            .expect("chmod");
        let error = AgentConfig::load(Some(&path))
            .expect_err("mode 0644")
            .to_string();
        assert!(error.contains("chmod 600"), "{error}");
        std::fs::set_permissions(&path, std::os::unix::fs::PermissionsExt::from_mode(0o600))
            .expect("chmod");
        let config = AgentConfig::load(Some(&path)).expect("loads");
        assert_eq!(config.name, "db1");
        assert_eq!(config.tls_dir, PathBuf::from("tls"));
        assert_eq!(config.labels["region"], "eu");
        assert_eq!(config.restore_jobs, 2);
        assert_eq!(config.maintenance_db, "postgres");
        assert_eq!(config.pg_bindir, None);
        assert_eq!(config.drill_check_timeout, DEFAULT_DRILL_CHECK_TIMEOUT);
        assert_eq!(config.databases[0].labels["tier"], "critical");
        assert!(AgentConfig::load(Some(&dir.path().join("missing.toml"))).is_err());
    }

    /// A database with every `[databases.migrate]` key set.
    fn with_migrate() -> AgentConfig {
        let mut config = valid();
        config.databases[0].migrate = Some(MigrateConfig {
            commands: BTreeMap::from([(
                "artisan".to_owned(),
                vec!["php".to_owned(), "artisan".to_owned(), "migrate".to_owned()],
            )]),
            pre_hook: Some(vec!["/srv/app/bin/maintenance".to_owned(), "on".to_owned()]),
            post_hook: Some(vec![
                "/srv/app/bin/maintenance".to_owned(),
                "off".to_owned(),
            ]),
            workdir: Some(PathBuf::from("/srv/app")),
            timeout: Duration::from_secs(600),
            env: BTreeMap::from([("APP_KEY".to_owned(), "base64:t0ps3cret".to_owned())]),
        });
        config
    }

    fn migrate_error_of(change: impl FnOnce(&mut MigrateConfig)) -> String {
        let mut config = with_migrate();
        if let Some(migrate) = config.databases[0].migrate.as_mut() {
            change(migrate);
        }
        let error = config.validate().expect_err("invalid").to_string();
        assert!(
            error.contains("database \"app\": [databases.migrate] "),
            "{error}"
        );
        assert!(!error.contains("t0ps3cret"), "{error}");
        error
    }

    #[test]
    fn migrate_validation_names_the_key() {
        with_migrate().validate().expect("valid");
        let command = |name: &str, argv: &[&str]| {
            let argv: Vec<String> = argv.iter().map(|s| (*s).to_owned()).collect();
            let name = name.to_owned();
            move |m: &mut MigrateConfig| {
                m.commands.insert(name, argv);
            }
        };
        for bad in ["has space", "", "a/b", "ü"] {
            let error = migrate_error_of(command(bad, &["x"]));
            assert!(
                error.contains(&format!("commands: command name {bad:?} must be")),
                "{error}"
            );
        }
        assert!(migrate_error_of(command(&"a".repeat(65), &["x"])).contains("1 to 64"));
        let error = migrate_error_of(command("up", &[]));
        assert!(
            error.contains("[databases.migrate] commands.up: the command is empty"),
            "{error}"
        );
        let error = migrate_error_of(command("up", &[" ", "x"]));
        assert!(
            error.contains("commands.up: the program (first element) is blank"),
            "{error}"
        );
        let error = migrate_error_of(command("up", &["x", "a\0b"]));
        assert!(
            error.contains("commands.up: an argument contains a NUL"),
            "{error}"
        );
        let error = migrate_error_of(|m| m.pre_hook = Some(Vec::new()));
        assert!(error.contains("pre_hook: the command is empty"), "{error}");
        let error = migrate_error_of(|m| m.post_hook = Some(vec![String::new()]));
        assert!(error.contains("post_hook: the program"), "{error}");
        let error = migrate_error_of(|m| m.workdir = Some(PathBuf::from("srv/app")));
        assert!(
            error.contains("workdir: \"srv/app\" must be an absolute path"),
            "{error}"
        );
        let error = migrate_error_of(|m| m.timeout = Duration::from_millis(500));
        assert!(
            error.contains("timeout: \"500ms\" must be at least 1s"),
            "{error}"
        );
        for (name, expected) in [
            ("1ST", "env: \"1ST\" is not an environment variable name"),
            ("A-B", "env: \"A-B\" is not an environment variable name"),
            ("", "env: \"\" is not an environment variable name"),
            ("A=B", "env: \"A=B\" is not an environment variable name"),
            ("PGPASSWORD", "env: PGPASSWORD is set by the agent"),
            ("DATABASE_URL", "env: DATABASE_URL is set by the agent"),
            ("PGSSLMODE", "env: PGSSLMODE is set by the agent"),
            (
                "WARDEN_ORDER_ID",
                "env: WARDEN_ORDER_ID is set by the agent",
            ),
        ] {
            let error = migrate_error_of(|m| {
                m.env.insert(name.to_owned(), "v".to_owned());
            });
            assert!(error.contains(expected), "{error}");
        }
        let error = migrate_error_of(|m| {
            m.env.insert("APP_KEY".to_owned(), "t0ps3cret\0".to_owned());
        });
        assert!(
            error.contains("the value of APP_KEY contains a NUL"),
            "{error}"
        );
    }

    #[test]
    fn command_lines_must_not_contain_the_database_password() {
        let with_password = |url: &str, change: fn(&mut MigrateConfig)| {
            let mut config = with_migrate();
            config.databases[0].url = url.to_owned();
            if let Some(migrate) = config.databases[0].migrate.as_mut() {
                change(migrate);
            }
            config.validate().err().map(|e| e.to_string())
        };
        let url = "postgres://warden:s3cr%2Ft@10.0.0.5:5432/app";
        let in_command = |m: &mut MigrateConfig| {
            m.commands.insert(
                "up".to_owned(),
                vec!["migrate".to_owned(), "--password=s3cr/t".to_owned()],
            );
        };
        let error = with_password(url, in_command).expect("refused");
        assert_eq!(
            error,
            "invalid configuration: database \"app\": [databases.migrate] commands.up: the \
             command line contains the database password; command lines are shown to the \
             coordinator: pass secrets in [databases.migrate.env] (the program gets the \
             database password as PGPASSWORD and in DATABASE_URL)"
        );
        // Percent-encoded, as in a URL on the command line, and in the hooks.
        let encoded = |m: &mut MigrateConfig| {
            m.pre_hook = Some(vec![
                "psql".to_owned(),
                "postgres://warden:s3cr%2Ft@10.0.0.5/app".to_owned(),
            ]);
        };
        let error = with_password(url, encoded).expect("refused");
        assert!(
            error.contains("pre_hook: the command line contains"),
            "{error}"
        );
        assert!(!error.contains("s3cr"), "{error}");
        let post = |m: &mut MigrateConfig| {
            m.post_hook = Some(vec!["notify".to_owned(), "s3cr/t".to_owned()]);
        };
        let error = with_password(url, post).expect("refused");
        assert!(
            error.contains("post_hook: the command line contains"),
            "{error}"
        );
        // A password in ?password= counts too.
        let error = with_password(
            "postgres://warden@10.0.0.5/app?password=s3cr%2Ft",
            in_command,
        )
        .expect("refused");
        assert!(
            error.contains("commands.up: the command line contains"),
            "{error}"
        );
        // No password, or one too short to tell from an ordinary argument: accepted.
        assert_eq!(
            with_password("postgres://warden@10.0.0.5/app", in_command),
            None
        );
        let short = |m: &mut MigrateConfig| {
            m.commands
                .insert("up".to_owned(), vec!["migrate".to_owned(), "up".to_owned()]);
        };
        assert_eq!(
            with_password("postgres://warden:up@10.0.0.5/app", short),
            None
        );
    }

    #[test]
    fn debug_and_dump_hide_migration_environment_values() {
        let config = with_migrate();
        let debug = format!("{config:?}");
        assert!(!debug.contains("t0ps3cret"), "{debug}");
        assert!(debug.contains("\"APP_KEY\": \"***\""), "{debug}");
        assert!(debug.contains("artisan"), "{debug}");

        let repository = Repository::open(&config.repository, &config.s3).expect("repo");
        let dumped = config.to_redacted_toml(&repository).expect("toml");
        assert!(!dumped.contains("t0ps3cret"), "{dumped}");
        assert!(dumped.contains("APP_KEY = \"***\""), "{dumped}");
        assert!(dumped.contains("timeout = \"10m\""), "{dumped}");
        let back: AgentConfig = toml::from_str(&dumped).expect("parses");
        let migrate = back.databases[0].migrate.as_ref().expect("migrate");
        assert_eq!(migrate.commands["artisan"], ["php", "artisan", "migrate"]);
        assert_eq!(migrate.workdir, Some(PathBuf::from("/srv/app")));
        assert_eq!(migrate.timeout, Duration::from_secs(600));
        // The original keeps its secret: only the copy shown was redacted.
        assert_eq!(
            config.databases[0].migrate.as_ref().expect("migrate").env["APP_KEY"],
            "base64:t0ps3cret"
        );
        // Without a [databases.migrate] table, none is shown.
        let plain = valid().to_redacted_toml(&repository).expect("toml");
        assert!(!plain.contains("migrate"), "{plain}");
    }

    #[test]
    fn loads_a_migrate_table_with_defaults() {
        let dir = tempfile::tempdir().expect("tempdir");
        let path = dir.path().join("agent.toml");
        std::fs::write(
            &path,
            r#"
name = "db1"
repository = "file:///var/lib/warden/repo"

[[databases]]
name = "app"
url = "postgres://warden:secret@10.0.0.5:5432/app"

[databases.migrate]
workdir = "/srv/app"
pre_hook = ["/srv/app/bin/maintenance", "on"]
post_hook = ["/srv/app/bin/maintenance", "off"]

[databases.migrate.commands]
artisan = ["php", "artisan", "migrate", "--force"]
alembic = ["/srv/app/venv/bin/alembic", "upgrade", "head"]

[databases.migrate.env]
APP_ENV = "production"

[[databases]]
name = "billing"
url = "postgres://warden:secret@10.0.0.5:5432/billing"
"#,
        )
        .expect("write");
        std::fs::set_permissions(&path, std::os::unix::fs::PermissionsExt::from_mode(0o600))
            .expect("chmod");
        let config = AgentConfig::load(Some(&path)).expect("loads");
        let migrate = config.databases[0].migrate.as_ref().expect("migrate");
        assert_eq!(migrate.timeout, DEFAULT_MIGRATE_TIMEOUT);
        let names: Vec<&str> = migrate.commands.keys().map(String::as_str).collect();
        assert_eq!(names, ["alembic", "artisan"]);
        assert_eq!(migrate.env["APP_ENV"], "production");
        assert_eq!(
            migrate.pre_hook.as_deref(),
            Some(&["/srv/app/bin/maintenance".to_owned(), "on".to_owned()][..])
        );
        assert!(config.databases[1].migrate.is_none());
    }
}
