//! Coordinator and agent processes: spawned from the real binaries with their output in a
//! log file, killed (SIGKILL) on drop, with the log tail printed when a test panics.

use std::collections::BTreeMap;
use std::fs::File;
use std::net::TcpStream;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

pub use warden_proto::auth::AdminClient;
use warden_proto::auth::Bearer;
use warden_proto::v1::admin_service_client::AdminServiceClient;

use crate::binaries::binaries;
use crate::{free_port, tail};

/// A child process whose stdout and stderr go to a log file, killed on drop.
struct LoggedChild {
    name: String,
    log: PathBuf,
    child: Option<Child>,
}

impl LoggedChild {
    fn new(name: &str, log: PathBuf) -> Self {
        Self {
            name: name.to_owned(),
            log,
            child: None,
        }
    }

    fn spawn(&mut self, mut cmd: Command) {
        assert!(self.child.is_none(), "{} is already running", self.name);
        let log = File::options()
            .create(true)
            .append(true)
            .open(&self.log)
            .unwrap_or_else(|e| panic!("open {}: {e}", self.log.display()));
        let log2 = log.try_clone().expect("clone log handle");
        // Variables a developer may have set for their own fleet must not leak into tests.
        for (key, _) in std::env::vars_os() {
            if key.to_string_lossy().starts_with("WARDEN_") {
                cmd.env_remove(key);
            }
        }
        cmd.env("NO_COLOR", "1")
            .stdin(Stdio::null())
            .stdout(log)
            .stderr(log2);
        let child = cmd
            .spawn()
            .unwrap_or_else(|e| panic!("spawn {} ({cmd:?}): {e}", self.name));
        self.child = Some(child);
    }

    /// Kills the process with SIGKILL and reaps it.
    fn kill9(&mut self) {
        if let Some(mut child) = self.child.take() {
            let _ = child.kill();
            let _ = child.wait();
        }
    }

    /// Returns the exit status if the process has exited.
    fn exited(&mut self) -> Option<std::process::ExitStatus> {
        self.child
            .as_mut()
            .and_then(|c| c.try_wait().ok().flatten())
    }

    fn pid(&self) -> Option<u32> {
        self.child.as_ref().map(Child::id)
    }

    fn log_tail(&self, lines: usize) -> String {
        format!(
            "--- {} log {} (tail) ---\n{}",
            self.name,
            self.log.display(),
            tail(&self.log, lines)
        )
    }
}

impl Drop for LoggedChild {
    fn drop(&mut self) {
        self.kill9();
        if std::thread::panicking() {
            eprintln!("{}", self.log_tail(60));
        }
    }
}

/// A `warden-coordinator` process on fixed ports (gRPC, and HTTP for `/metrics` and
/// `/healthz`) with a SQLite store in its own directory. It serves TLS from a CA that
/// `ca init` made in `DIR/tls` (plaintext only when started with `--insecure-dev`), and an
/// admin token made on the host (`token create`) is ready for the CLI.
pub struct Coordinator {
    proc: LoggedChild,
    dir: PathBuf,
    port: u16,
    http_port: u16,
    extra_args: Vec<String>,
    env: BTreeMap<String, String>,
    admin_token: String,
}

/// Runs `warden-coordinator ARGS` to completion and returns its stdout, panicking with its
/// output when it fails.
pub fn coordinator_command(dir: &Path, args: &[&str]) -> String {
    let out = Command::new(&binaries().coordinator)
        .args(args)
        .current_dir(dir)
        .env_remove("WARDEN_TLS_DIR")
        .stdin(Stdio::null())
        .output()
        .unwrap_or_else(|e| panic!("run warden-coordinator {args:?}: {e}"));
    let stdout = String::from_utf8_lossy(&out.stdout).into_owned();
    assert!(
        out.status.success(),
        "warden-coordinator {args:?} failed ({}):\n{stdout}\n{}",
        out.status,
        String::from_utf8_lossy(&out.stderr)
    );
    stdout
}

/// The `secret` of a token document printed with `--json`.
pub fn token_secret(json: &str) -> String {
    let document: serde_json::Value =
        serde_json::from_str(json.trim()).unwrap_or_else(|e| panic!("token JSON ({e}): {json}"));
    document["secret"]
        .as_str()
        .unwrap_or_else(|| panic!("no secret in {document:#}"))
        .to_owned()
}

impl Coordinator {
    /// Starts a coordinator with its store and log in `dir`.
    pub fn start(dir: &Path) -> Self {
        Self::start_with(dir, &[], &BTreeMap::new())
    }

    /// Starts a coordinator with extra command-line flags and environment variables.
    pub fn start_with(dir: &Path, extra_args: &[&str], env: &BTreeMap<String, String>) -> Self {
        std::fs::create_dir_all(dir).expect("coordinator dir");
        let insecure = extra_args.contains(&"--insecure-dev");
        if !insecure {
            let tls_dir = dir.join("tls").display().to_string();
            coordinator_command(
                dir,
                &[
                    "ca",
                    "init",
                    "--tls-dir",
                    &tls_dir,
                    "--hostname",
                    "127.0.0.1",
                    "--json",
                ],
            );
        }
        let store = format!("sqlite://{}", dir.join("warden.db").display());
        let admin_token = token_secret(&coordinator_command(
            dir,
            &[
                "--store",
                &store,
                "token",
                "create",
                "--role",
                "admin",
                "--name",
                "test-admin",
                "--json",
            ],
        ));
        let mut c = Self {
            proc: LoggedChild::new("coordinator", dir.join("coordinator.log")),
            dir: dir.to_path_buf(),
            port: free_port(),
            http_port: free_port(),
            extra_args: extra_args.iter().map(|s| s.to_string()).collect(),
            env: env.clone(),
            admin_token,
        };
        c.spawn_and_wait();
        c
    }

    /// Whether it serves TLS (it does unless started with `--insecure-dev`).
    pub fn tls(&self) -> bool {
        !self.extra_args.iter().any(|a| a == "--insecure-dev")
    }

    /// The CA certificate agents and the CLI check it by; `None` with `--insecure-dev`.
    pub fn ca_cert(&self) -> Option<PathBuf> {
        self.tls().then(|| self.dir.join("tls").join("ca.pem"))
    }

    /// The secret of an admin token made on the host before it started.
    pub fn admin_token(&self) -> &str {
        &self.admin_token
    }

    /// An AdminService client over the coordinator's TLS, calling with `token`: the API as
    /// a program other than the CLI uses it.
    pub async fn admin_client(&self, token: &str) -> AdminClient {
        let mut endpoint = tonic::transport::Endpoint::from_shared(self.url()).expect("endpoint");
        if let Some(ca) = self.ca_cert() {
            let pem = std::fs::read(&ca).expect("read ca.pem");
            endpoint = endpoint
                .tls_config(
                    tonic::transport::ClientTlsConfig::new()
                        .ca_certificate(tonic::transport::Certificate::from_pem(pem)),
                )
                .expect("tls config");
        }
        let channel = endpoint
            .connect()
            .await
            .expect("connect to the coordinator");
        AdminServiceClient::with_interceptor(channel, Bearer::new(token).expect("token metadata"))
    }

    fn spawn_and_wait(&mut self) {
        let mut cmd = Command::new(&binaries().coordinator);
        cmd.arg("--listen")
            .arg(format!("127.0.0.1:{}", self.port))
            .arg("--store")
            .arg(self.store_url())
            // Every coordinator serves HTTP, on a port of its own: the default port would be
            // shared by every test running at the same time.
            .arg("--http-listen")
            .arg(format!("127.0.0.1:{}", self.http_port))
            .args(["--heartbeat-interval", "500ms", "--lease", "3s"])
            .arg("--tls-dir")
            .arg(self.dir.join("tls"))
            .args(&self.extra_args)
            .env("RUST_LOG", "info")
            .envs(&self.env)
            .current_dir(&self.dir);
        self.proc.spawn(cmd);
        let deadline = Instant::now() + Duration::from_secs(60);
        loop {
            if TcpStream::connect(("127.0.0.1", self.port)).is_ok() {
                return;
            }
            if let Some(status) = self.proc.exited() {
                panic!(
                    "coordinator exited with {status} before listening on port {}\n{}",
                    self.port,
                    self.proc.log_tail(40)
                );
            }
            if Instant::now() > deadline {
                panic!(
                    "coordinator did not listen on port {} within 60s\n{}",
                    self.port,
                    self.proc.log_tail(40)
                );
            }
            std::thread::sleep(Duration::from_millis(50));
        }
    }

    /// Returns the `--store` URL.
    pub fn store_url(&self) -> String {
        format!("sqlite://{}", self.store_path().display())
    }

    /// Returns the path of the SQLite store file.
    pub fn store_path(&self) -> PathBuf {
        self.dir.join("warden.db")
    }

    pub fn dir(&self) -> &Path {
        &self.dir
    }

    pub fn log_path(&self) -> &Path {
        &self.proc.log
    }

    pub fn log_tail(&self, lines: usize) -> String {
        self.proc.log_tail(lines)
    }

    /// Returns the URL agents and the CLI use.
    pub fn url(&self) -> String {
        let scheme = if self.tls() { "https" } else { "http" };
        format!("{scheme}://127.0.0.1:{}", self.port)
    }

    pub fn port(&self) -> u16 {
        self.port
    }

    /// Returns `http://127.0.0.1:PORT` of the HTTP port (`/metrics`, `/healthz`).
    pub fn http_url(&self) -> String {
        format!("http://127.0.0.1:{}", self.http_port)
    }

    pub fn http_port(&self) -> u16 {
        self.http_port
    }

    pub fn pid(&self) -> Option<u32> {
        self.proc.pid()
    }

    /// Kills the coordinator with SIGKILL (no graceful shutdown).
    pub fn kill9(&mut self) {
        self.proc.kill9();
    }

    /// Starts the coordinator again on the same port with the same store.
    pub fn restart(&mut self) {
        self.proc.kill9();
        self.spawn_and_wait();
    }

    /// Returns whether the process is running.
    pub fn is_running(&mut self) -> bool {
        self.proc.child.is_some() && self.proc.exited().is_none()
    }
}

/// One `[[databases]]` entry of an agent config.
#[derive(Debug, Clone)]
pub struct AgentDatabase {
    pub name: String,
    pub url: String,
    pub labels: BTreeMap<String, String>,
}

/// The TOML configuration of an agent.
#[derive(Debug, Clone)]
pub struct AgentConfig {
    pub name: String,
    pub coordinator: String,
    /// Plaintext, for a coordinator started with `--insecure-dev`.
    pub insecure_dev: bool,
    /// Where its key and certificate are; default `tls` in the agent's directory.
    pub tls_dir: Option<PathBuf>,
    pub repository_dir: PathBuf,
    /// A repository URL other than `file://repository_dir`, e.g. `s3://bucket/prefix`.
    pub repository_url: Option<String>,
    pub labels: BTreeMap<String, String>,
    pub staging_dir: Option<PathBuf>,
    pub databases: Vec<AgentDatabase>,
    /// TOML tables appended as they are, e.g. `[s3]` or `[encryption]`.
    pub sections: String,
}

impl AgentConfig {
    /// Renders the config as TOML (see the README's agent section).
    pub fn to_toml(&self) -> String {
        let mut out = String::new();
        out.push_str(&format!("name = {}\n", toml_str(&self.name)));
        out.push_str(&format!("coordinator = {}\n", toml_str(&self.coordinator)));
        if self.insecure_dev {
            out.push_str("insecure_dev = true\n");
        }
        if let Some(dir) = &self.tls_dir {
            out.push_str(&format!(
                "tls_dir = {}\n",
                toml_str(&dir.display().to_string())
            ));
        }
        let repository = self
            .repository_url
            .clone()
            .unwrap_or_else(|| format!("file://{}", self.repository_dir.display()));
        out.push_str(&format!("repository = {}\n", toml_str(&repository)));
        out.push_str(&format!("labels = {}\n", toml_table(&self.labels)));
        if let Some(staging) = &self.staging_dir {
            out.push_str(&format!(
                "staging_dir = {}\n",
                toml_str(&staging.display().to_string())
            ));
        }
        for db in &self.databases {
            out.push_str("\n[[databases]]\n");
            out.push_str(&format!("name = {}\n", toml_str(&db.name)));
            out.push_str(&format!("url = {}\n", toml_str(&db.url)));
            out.push_str(&format!("labels = {}\n", toml_table(&db.labels)));
        }
        if !self.sections.is_empty() {
            out.push('\n');
            out.push_str(&self.sections);
        }
        out
    }
}

/// Writes `config` into `dir/agent.toml` (mode 0600) and returns its path.
pub fn write_agent_config(dir: &Path, config: &AgentConfig) -> PathBuf {
    std::fs::create_dir_all(dir).expect("agent dir");
    let config_path = dir.join("agent.toml");
    write_private(&config_path, &config.to_toml());
    config_path
}

/// Runs `warden-agent --config CONFIG enroll --token TOKEN --ca-cert CA` in the config's
/// directory and returns how it ended.
pub fn enroll(config_path: &Path, token: &str, ca_cert: &Path) -> std::process::Output {
    Command::new(&binaries().agent)
        .arg("--config")
        .arg(config_path)
        .args(["enroll", "--token", token, "--ca-cert"])
        .arg(ca_cert)
        .current_dir(config_path.parent().expect("config dir"))
        .env_remove("WARDEN_AGENT_ENROLL_TOKEN")
        .stdin(Stdio::null())
        .output()
        .expect("run warden-agent enroll")
}

/// Writes a file only its owner can read (config files hold credentials; Warden refuses
/// them otherwise).
pub fn write_private(path: &Path, contents: &str) {
    use std::io::Write;
    use std::os::unix::fs::OpenOptionsExt;
    let mut file = std::fs::OpenOptions::new()
        .write(true)
        .create(true)
        .truncate(true)
        .mode(0o600)
        .open(path)
        .unwrap_or_else(|e| panic!("create {}: {e}", path.display()));
    file.write_all(contents.as_bytes())
        .unwrap_or_else(|e| panic!("write {}: {e}", path.display()));
    // An existing file keeps its mode through `open`.
    std::fs::set_permissions(path, std::os::unix::fs::PermissionsExt::from_mode(0o600))
        .unwrap_or_else(|e| panic!("chmod {}: {e}", path.display()));
}

/// Quotes a TOML basic string.
pub fn toml_str(value: &str) -> String {
    let mut out = String::from("\"");
    for c in value.chars() {
        match c {
            '"' => out.push_str("\\\""),
            '\\' => out.push_str("\\\\"),
            '\n' => out.push_str("\\n"),
            '\t' => out.push_str("\\t"),
            '\r' => out.push_str("\\r"),
            c if c.is_control() => out.push_str(&format!("\\u{:04X}", c as u32)),
            c => out.push(c),
        }
    }
    out.push('"');
    out
}

fn toml_table(map: &BTreeMap<String, String>) -> String {
    let items: Vec<String> = map
        .iter()
        .map(|(k, v)| format!("{} = {}", toml_str(k), toml_str(v)))
        .collect();
    if items.is_empty() {
        "{}".to_owned()
    } else {
        format!("{{ {} }}", items.join(", "))
    }
}

/// A `warden-agent` process with its config file and log in its own directory.
pub struct Agent {
    proc: LoggedChild,
    config: AgentConfig,
    config_path: PathBuf,
    dir: PathBuf,
    env: BTreeMap<String, String>,
}

impl Agent {
    /// Writes the config into `dir/agent.toml` (mode 0600: it holds passwords), enrolls the
    /// agent with `enrollment` (a token and the coordinator's CA certificate) unless it is
    /// plaintext or enrolled already, and starts it.
    pub fn start_new(
        dir: &Path,
        config: AgentConfig,
        env: &BTreeMap<String, String>,
        enrollment: Option<(&str, &Path)>,
    ) -> Self {
        let config_path = write_agent_config(dir, &config);
        if let Some((token, ca_cert)) = enrollment {
            let out = enroll(&config_path, token, ca_cert);
            assert!(
                out.status.success(),
                "warden-agent enroll of {} failed:\n{}\n{}",
                config.name,
                String::from_utf8_lossy(&out.stdout),
                String::from_utf8_lossy(&out.stderr)
            );
        }
        let mut agent = Self {
            proc: LoggedChild::new(&format!("agent {}", config.name), dir.join("agent.log")),
            config,
            config_path,
            dir: dir.to_path_buf(),
            env: env.clone(),
        };
        agent.start();
        agent
    }

    /// Starts the agent (again, after [`Agent::kill9`]).
    pub fn start(&mut self) {
        let mut cmd = Command::new(&binaries().agent);
        cmd.arg("--config")
            .arg(&self.config_path)
            .env("RUST_LOG", "info")
            .envs(&self.env)
            .current_dir(&self.dir);
        self.proc.spawn(cmd);
    }

    /// Changes the agent's configuration and restarts it with the new one (after SIGKILL).
    pub fn reconfigure(&mut self, change: impl FnOnce(&mut AgentConfig)) {
        change(&mut self.config);
        self.proc.kill9();
        write_agent_config(&self.dir, &self.config);
        self.start();
    }

    /// Kills the agent with SIGKILL (it gets no chance to clean up).
    pub fn kill9(&mut self) {
        self.proc.kill9();
    }

    /// Returns whether the agent process has exited (or was never started).
    pub fn has_exited(&mut self) -> bool {
        self.proc.child.is_none() || self.proc.exited().is_some()
    }

    pub fn name(&self) -> &str {
        &self.config.name
    }

    pub fn config(&self) -> &AgentConfig {
        &self.config
    }

    pub fn config_path(&self) -> &Path {
        &self.config_path
    }

    pub fn log_path(&self) -> &Path {
        &self.proc.log
    }

    pub fn log_tail(&self, lines: usize) -> String {
        self.proc.log_tail(lines)
    }

    pub fn pid(&self) -> Option<u32> {
        self.proc.pid()
    }

    /// Returns the repository directory this agent writes artifacts into.
    pub fn repository_dir(&self) -> &Path {
        &self.config.repository_dir
    }
}
