//! A whole fleet in one call: a coordinator, N PostgreSQL clusters and N agents (`a1`, `a2`,
//! …), agent `aN` serving the configured databases of cluster N, all writing to one shared
//! `file://` repository.

use std::collections::BTreeMap;
use std::path::{Path, PathBuf};
use std::time::Duration;

use serde_json::Value;

use crate::process::{Agent, AgentConfig, AgentDatabase, Coordinator};
use crate::{Cli, ONLINE_TIMEOUT, PgCluster, TestDir};

/// Builds a [`Fleet`].
pub struct FleetBuilder {
    name: String,
    agents: usize,
    databases: Vec<String>,
    password: Option<String>,
    coordinator_args: Vec<String>,
    env: BTreeMap<String, String>,
    extra_databases: Vec<(usize, AgentDatabase)>,
    cluster_setup: Option<Box<ClusterSetup>>,
    coordinator_config: Option<String>,
    repository: Option<PathBuf>,
    repository_url: Option<String>,
    agent_sections: String,
    agent_labels: BTreeMap<String, String>,
}

/// Runs on every cluster before the agents start (e.g. to load a dataset).
type ClusterSetup = dyn Fn(&PgCluster);

impl FleetBuilder {
    /// Number of agents (and clusters); default 1.
    pub fn agents(mut self, n: usize) -> Self {
        self.agents = n;
        self
    }

    /// Adds a database that is created on every cluster and configured in every agent.
    pub fn database(mut self, name: &str) -> Self {
        self.databases.push(name.to_owned());
        self
    }

    /// Adds a `[[databases]]` entry with a URL of its own to agent `aN` only (nothing is
    /// created for it).
    pub fn agent_database(mut self, n: usize, name: &str, url: &str) -> Self {
        self.extra_databases.push((
            n,
            AgentDatabase {
                name: name.to_owned(),
                url: url.to_owned(),
                labels: BTreeMap::new(),
            },
        ));
        self
    }

    /// Runs `setup` on every cluster before the configured databases are created (those
    /// that already exist then are left alone) and before the agents start.
    pub fn cluster_setup(mut self, setup: impl Fn(&PgCluster) + 'static) -> Self {
        self.cluster_setup = Some(Box::new(setup));
        self
    }

    /// Puts this password into every database URL of the agent configs.
    pub fn url_password(mut self, password: &str) -> Self {
        self.password = Some(password.to_owned());
        self
    }

    /// Adds command-line flags of the coordinator.
    pub fn coordinator_args(mut self, args: &[&str]) -> Self {
        self.coordinator_args
            .extend(args.iter().map(|s| s.to_string()));
        self
    }

    /// Writes `toml` into the coordinator's directory as `coordinator.toml` and starts the
    /// coordinator with `--config` pointing at it (e.g. `[[webhooks]]`).
    pub fn coordinator_config(mut self, toml: &str) -> Self {
        self.coordinator_config = Some(toml.to_owned());
        self
    }

    /// Puts the shared repository at `dir` (an existing directory) instead of the test
    /// directory, e.g. on a file system with more room: agents report the repository's free
    /// space with their health, and a nearly full disk makes every database `degraded`.
    pub fn repository(mut self, dir: &Path) -> Self {
        self.repository = Some(dir.to_path_buf());
        self
    }

    /// Makes every agent write to `url` (e.g. `s3://bucket/prefix`) instead of the shared
    /// directory.
    pub fn repository_url(mut self, url: &str) -> Self {
        self.repository_url = Some(url.to_owned());
        self
    }

    /// Appends TOML tables to every agent's configuration (e.g. `[s3]`, `[encryption]`).
    pub fn agent_sections(mut self, toml: &str) -> Self {
        self.agent_sections.push_str(toml);
        self
    }

    /// Sets a label of every agent, over the defaults (`env=test`, `index=N`): e.g.
    /// `env=prod` for the destructive guard.
    pub fn agent_label(mut self, key: &str, value: &str) -> Self {
        self.agent_labels.insert(key.to_owned(), value.to_owned());
        self
    }

    /// Sets an environment variable of the coordinator and agents (e.g. `RUST_LOG`).
    pub fn env(mut self, key: &str, value: &str) -> Self {
        self.env.insert(key.to_owned(), value.to_owned());
        self
    }

    /// Starts everything and waits until every agent is online.
    pub fn build(self) -> Fleet {
        let dir = TestDir::new(&self.name);
        let repo = match &self.repository {
            Some(repo) => repo.clone(),
            None => dir.subdir("repo"),
        };
        let mut clusters = Vec::new();
        for i in 1..=self.agents {
            let cluster = PgCluster::start_new(dir.path(), &format!("pg{i}"));
            if let Some(setup) = &self.cluster_setup {
                setup(&cluster);
            }
            for db in &self.databases {
                if !cluster.database_exists(db) {
                    cluster.create_database(db);
                }
            }
            clusters.push(cluster);
        }
        let coordinator_dir = dir.path().join("coordinator");
        let mut coordinator_args = self.coordinator_args.clone();
        if let Some(toml) = &self.coordinator_config {
            std::fs::create_dir_all(&coordinator_dir).expect("coordinator dir");
            let path = coordinator_dir.join("coordinator.toml");
            crate::process::write_private(&path, toml);
            coordinator_args.push("--config".to_owned());
            coordinator_args.push(path.display().to_string());
        }
        let args: Vec<&str> = coordinator_args.iter().map(String::as_str).collect();
        let coordinator = Coordinator::start_with(&coordinator_dir, &args, &self.env);
        let cli = Cli::new(&coordinator);
        let mut agents = Vec::new();
        for (i, cluster) in clusters.iter().enumerate() {
            let name = format!("a{}", i + 1);
            let agent_dir = dir.path().join("agents").join(&name);
            let mut databases: Vec<AgentDatabase> = self
                .databases
                .iter()
                .map(|db| AgentDatabase {
                    name: db.clone(),
                    url: match &self.password {
                        Some(pw) => cluster.url_with_password(db, pw),
                        None => cluster.url(db),
                    },
                    labels: BTreeMap::from([("tier".to_owned(), "test".to_owned())]),
                })
                .collect();
            databases.extend(
                self.extra_databases
                    .iter()
                    .filter(|(n, _)| *n == i + 1)
                    .map(|(_, db)| db.clone()),
            );
            let mut labels = BTreeMap::from([
                ("env".to_owned(), "test".to_owned()),
                ("index".to_owned(), (i + 1).to_string()),
            ]);
            labels.extend(self.agent_labels.clone());
            let config = AgentConfig {
                name: name.clone(),
                coordinator: coordinator.url(),
                insecure_dev: !coordinator.tls(),
                tls_dir: None,
                repository_dir: repo.clone(),
                repository_url: self.repository_url.clone(),
                labels,
                staging_dir: Some(agent_dir.join("staging")),
                databases,
                sections: self.agent_sections.clone(),
            };
            std::fs::create_dir_all(agent_dir.join("staging")).expect("staging dir");
            let ca_cert = coordinator.ca_cert();
            let token = ca_cert.as_ref().map(|_| cli.enrollment_token(&name));
            let enrollment = token.as_deref().zip(ca_cert.as_deref());
            agents.push(Agent::start_new(&agent_dir, config, &self.env, enrollment));
        }
        let fleet = Fleet {
            agents,
            coordinator,
            clusters,
            cli,
            repo,
            dir,
        };
        let names: Vec<String> = fleet.agents.iter().map(|a| a.name().to_owned()).collect();
        for name in &names {
            fleet.wait_agent_online(name, true);
        }
        fleet
    }
}

/// A running fleet. Dropping it kills the agents and the coordinator and stops the clusters.
pub struct Fleet {
    // Field order is drop order: agents before the coordinator and the clusters.
    pub agents: Vec<Agent>,
    pub coordinator: Coordinator,
    pub clusters: Vec<PgCluster>,
    cli: Cli,
    repo: PathBuf,
    dir: TestDir,
}

impl Fleet {
    /// Starts describing a fleet; `name` prefixes its test directory.
    pub fn builder(name: &str) -> FleetBuilder {
        FleetBuilder {
            name: name.to_owned(),
            agents: 1,
            databases: Vec::new(),
            password: None,
            coordinator_args: Vec::new(),
            env: BTreeMap::new(),
            extra_databases: Vec::new(),
            cluster_setup: None,
            coordinator_config: None,
            repository: None,
            repository_url: None,
            agent_sections: String::new(),
            agent_labels: BTreeMap::new(),
        }
    }

    pub fn cli(&self) -> &Cli {
        &self.cli
    }

    /// Opens a maintenance window over the whole fleet around the clock, for tests of
    /// destructive restores themselves rather than of the windows that gate them.
    pub fn open_maintenance_around_the_clock(&self) {
        self.cli
            .run(&[
                "window",
                "add",
                "around-the-clock",
                "--timezone",
                "UTC",
                "--weekly",
                "daily 00:00-24:00",
            ])
            .expect_code(0);
    }

    /// Returns the cluster of agent `aN` (`n` counts from 1).
    pub fn cluster(&self, n: usize) -> &PgCluster {
        &self.clusters[n - 1]
    }

    /// Returns agent `aN` (`n` counts from 1).
    pub fn agent(&mut self, n: usize) -> &mut Agent {
        &mut self.agents[n - 1]
    }

    /// Returns the shared repository directory.
    pub fn repo(&self) -> &Path {
        &self.repo
    }

    pub fn dir(&self) -> &Path {
        self.dir.path()
    }

    /// Returns `http://127.0.0.1:PORT`, the coordinator's HTTP port (`/metrics`, `/healthz`).
    pub fn http_url(&self) -> String {
        self.coordinator.http_url()
    }

    /// Returns where an artifact lives: `<repo>/<agent>/<artifact_id>`.
    pub fn artifact_dir(&self, agent: &str, artifact_id: &str) -> PathBuf {
        self.repo.join(agent).join(artifact_id)
    }

    /// Returns the log tails of every process, for panic messages.
    pub fn logs(&self) -> String {
        let mut out = self.coordinator.log_tail(60);
        for a in &self.agents {
            out.push('\n');
            out.push_str(&a.log_tail(60));
        }
        out
    }

    /// Waits until `warden agents` lists agent `name` with `online == want`.
    pub fn wait_agent_online(&self, name: &str, want: bool) {
        let deadline = std::time::Instant::now() + ONLINE_TIMEOUT;
        let mut last;
        loop {
            let out = self.cli.run(&["agents"]);
            if out.code == 0
                && let Some(Value::Array(agents)) = &out.json
                && agents
                    .iter()
                    .any(|a| a["name"] == name && a["online"] == want)
            {
                return;
            }
            last = out.to_string();
            if std::time::Instant::now() >= deadline {
                break;
            }
            std::thread::sleep(Duration::from_millis(200));
        }
        panic!(
            "agent {name} not {} within {ONLINE_TIMEOUT:?}; last `warden agents`: {last}\n{}",
            if want { "online" } else { "offline" },
            self.logs()
        );
    }

    /// Waits until the order reaches one of `states` (see [`Cli::wait_order`]); the process
    /// logs are printed when it panics.
    pub fn wait_order(&self, id: &str, states: &[&str], timeout: Duration) -> Value {
        self.cli.wait_order(id, states, timeout)
    }

    /// Polls until `probe` holds, panicking with the process logs after `timeout`.
    pub fn wait_until(&self, what: &str, timeout: Duration, mut probe: impl FnMut() -> bool) {
        let deadline = std::time::Instant::now() + timeout;
        while !probe() {
            if std::time::Instant::now() >= deadline {
                panic!(
                    "timed out after {timeout:?} waiting for {what}\n{}",
                    self.logs()
                );
            }
            std::thread::sleep(Duration::from_millis(100));
        }
    }
}
