//! What the PostgreSQL-backed agent tests share: a real cluster (from the `warden-tests`
//! harness), an agent context serving its databases, and backups taken the way the agent
//! takes them.

// Each test binary uses its own part of it.
#![allow(dead_code)]

use std::path::Path;

use tokio_util::sync::CancellationToken;
use url::Url;
use warden_agent::config::{AgentConfig, DatabaseConfig};
use warden_agent::orders::OrderTarget;
use warden_agent::progress::ProgressReporter;
use warden_agent::{AgentContext, backup};
use warden_proto::v1;
use warden_shared::ArtifactManifest;
use warden_tests::{PgCluster, TestDir};

/// The agent name of every test context.
pub const AGENT: &str = "db1";

/// A cluster with a database `app` holding two tables (3 and 2 rows), and an agent context
/// serving it as `db1/app`, with its repository in the test directory.
pub struct Setup {
    pub ctx: AgentContext,
    pub cluster: PgCluster,
    /// Holds the cluster and the repository; dropped last.
    _dir: TestDir,
}

impl Setup {
    pub fn new(name: &str) -> Self {
        let dir = TestDir::new(name);
        let cluster = PgCluster::start_new(dir.path(), "pg");
        cluster.create_database("app");
        cluster.psql_script(
            "app",
            "CREATE TABLE orders (id int PRIMARY KEY, total numeric NOT NULL);
             INSERT INTO orders VALUES (1, 10), (2, 20), (3, 30);
             CREATE SCHEMA billing;
             CREATE TABLE billing.invoices (id int PRIMARY KEY);
             INSERT INTO billing.invoices VALUES (1), (2);",
        );
        let databases = vec![("app".to_owned(), cluster.url("app"))];
        let ctx = context(dir.path(), databases);
        Self {
            ctx,
            cluster,
            _dir: dir,
        }
    }

    pub fn target(&self) -> OrderTarget {
        self.ctx.target("app").expect("app is configured")
    }

    /// Takes a backup of `app` and returns the catalog's view of it.
    pub async fn backup(&self) -> Artifact {
        let outcome = backup::run(
            &self.ctx,
            &self.target(),
            "o-backup",
            &v1::BackupParams {
                trigger: "manual".to_owned(),
                verify: false,
            },
            &quiet(),
            &CancellationToken::new(),
        )
        .await
        .expect("backup");
        let manifest: ArtifactManifest =
            serde_json::from_str(&outcome.manifest_json).expect("manifest json");
        Artifact {
            id: outcome.artifact_id,
            path: outcome.artifact_path,
            sha256: manifest.dump.sha256,
        }
    }

    /// Returns the databases on the cluster whose name starts with `prefix`.
    pub fn databases_starting_with(&self, prefix: &str) -> Vec<String> {
        self.cluster
            .databases()
            .into_iter()
            .filter(|name| name.starts_with(prefix))
            .collect()
    }

    /// Returns the files left in the staging directory.
    pub fn staged_files(&self) -> Vec<String> {
        std::fs::read_dir(&self.ctx.staging_dir)
            .map(|entries| {
                entries
                    .flatten()
                    .map(|e| e.file_name().to_string_lossy().into_owned())
                    .collect()
            })
            .unwrap_or_default()
    }
}

/// An artifact as the catalog records it.
pub struct Artifact {
    pub id: String,
    pub path: String,
    pub sha256: String,
}

/// Returns an agent context named [`AGENT`] with a repository under `dir` and `databases`
/// (name, url).
pub fn context(dir: &Path, databases: Vec<(String, String)>) -> AgentContext {
    let repository = dir.join("repo");
    std::fs::create_dir_all(&repository).expect("repository dir");
    AgentContext::new(AgentConfig {
        name: AGENT.to_owned(),
        repository: Url::from_file_path(&repository)
            .expect("absolute path")
            .to_string(),
        databases: databases
            .into_iter()
            .map(|(name, url)| DatabaseConfig {
                name,
                url,
                labels: Default::default(),
                migrate: None,
            })
            .collect(),
        ..AgentConfig::default()
    })
    .expect("context")
}

/// A progress reporter that drops every sample.
pub fn quiet() -> ProgressReporter {
    ProgressReporter::new(|_| {})
}

/// A streaming standby of a [`PgCluster`], cloned with `pg_basebackup -R`; stopped when
/// dropped.
pub struct Standby {
    base: std::path::PathBuf,
    port: u16,
}

impl Standby {
    /// Clones `primary` into `parent/<name>` and starts the copy as a hot standby that
    /// streams from it.
    pub fn start(parent: &Path, name: &str, primary: &PgCluster) -> Self {
        let base = parent.join(name);
        std::fs::create_dir_all(&base).expect("standby dir");
        if warden_tests::is_root() {
            warden_tests::pg::run_ok(
                std::process::Command::new("chown")
                    .arg("-R")
                    .arg("postgres:")
                    .arg(&base),
            );
        }
        let data = base.join("data");
        warden_tests::pg::run_ok(
            as_cluster_owner("pg_basebackup")
                .arg("--dbname")
                .arg(format!(
                    "host=127.0.0.1 port={} user=postgres",
                    primary.port()
                ))
                .arg("--pgdata")
                .arg(&data)
                .args(["--write-recovery-conf", "--wal-method=stream"])
                .args(["--checkpoint=fast", "--no-sync"])
                .current_dir(&base),
        );
        let port = warden_tests::free_port();
        warden_tests::pg::run_ok(
            as_cluster_owner("pg_ctl")
                .arg("-D")
                .arg(&data)
                .args(["-w", "-t", "120", "-l"])
                .arg(base.join("log"))
                .arg("-o")
                .arg(format!(
                    "-p {port} -k {} -c listen_addresses=127.0.0.1 -c hot_standby=on",
                    base.display()
                ))
                .arg("start")
                .current_dir(&base),
        );
        Self { base, port }
    }

    /// Returns a `postgres://` URL for database `db` on the standby.
    pub fn url(&self, db: &str) -> String {
        format!("postgres://postgres@127.0.0.1:{}/{db}", self.port)
    }
}

impl Drop for Standby {
    fn drop(&mut self) {
        let _ = as_cluster_owner("pg_ctl")
            .arg("-D")
            .arg(self.base.join("data"))
            .args(["-w", "-m", "immediate", "stop"])
            .current_dir(&self.base)
            .stdout(std::process::Stdio::null())
            .stderr(std::process::Stdio::null())
            .status();
    }
}

/// Builds a command running PostgreSQL's `tool` as the cluster owner.
fn as_cluster_owner(tool: &str) -> std::process::Command {
    warden_tests::pg::as_cluster_owner(&warden_tests::pg::pg_bindir().join(tool))
}
