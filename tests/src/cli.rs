//! The `warden` CLI run as a subprocess with `--json`, the way scripts use it.

use std::fmt;
use std::path::PathBuf;
use std::process::{Command, Stdio};
use std::time::{Duration, Instant};

use serde_json::Value;

use crate::binaries::binaries;
use crate::process::Coordinator;

/// What one CLI invocation did.
#[derive(Debug, Clone)]
pub struct CliOutput {
    pub args: Vec<String>,
    /// Exit code (-1 when killed by a signal).
    pub code: i32,
    pub stdout: String,
    pub stderr: String,
    /// stdout parsed as JSON, when it is a JSON document.
    pub json: Option<Value>,
}

impl CliOutput {
    /// Returns the JSON document, panicking with the whole output when there is none.
    pub fn json(&self) -> &Value {
        self.json
            .as_ref()
            .unwrap_or_else(|| panic!("expected JSON on stdout of {self}"))
    }

    /// Panics unless the exit code is `code`.
    pub fn expect_code(&self, code: i32) -> &Self {
        assert_eq!(self.code, code, "unexpected exit code of {self}");
        self
    }
}

impl fmt::Display for CliOutput {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(
            f,
            "`warden {}` (exit {})\n--- stdout ---\n{}\n--- stderr ---\n{}",
            self.args.join(" "),
            self.code,
            self.stdout,
            self.stderr
        )
    }
}

/// The CLI pointed at one coordinator, with a token (`WARDEN_TOKEN`) and the CA the
/// coordinator's certificate is checked against.
#[derive(Debug, Clone)]
pub struct Cli {
    coordinator: String,
    ca_cert: Option<PathBuf>,
    token: String,
    bin: PathBuf,
}

/// Order states after which nothing more happens (a `lost` order may still be retried).
pub const SETTLED_STATES: [&str; 4] = ["succeeded", "failed", "cancelled", "expired"];

impl Cli {
    /// The CLI of `coordinator` with its admin token.
    pub fn new(coordinator: &Coordinator) -> Self {
        Self {
            coordinator: coordinator.url(),
            ca_cert: coordinator.ca_cert(),
            token: coordinator.admin_token().to_owned(),
            bin: binaries().cli.clone(),
        }
    }

    /// The same CLI with another token (another operator, another role).
    pub fn with_token(&self, token: &str) -> Self {
        Self {
            token: token.to_owned(),
            ..self.clone()
        }
    }

    /// Creates an operator token with `role` for `name` and returns its secret.
    pub fn operator_token(&self, role: &str, name: &str) -> String {
        let created = self.json(&["token", "create", "--role", role, "--name", name]);
        created["secret"].as_str().expect("secret").to_owned()
    }

    /// Creates a one-time enrollment token for `agent` and returns its secret.
    pub fn enrollment_token(&self, agent: &str) -> String {
        let created = self.json(&["token", "create", "--agent", agent]);
        created["secret"].as_str().expect("secret").to_owned()
    }

    /// The CLI command with the coordinator, its CA and the token set, stdin closed (no
    /// TTY): add arguments and run it.
    pub fn command(&self) -> Command {
        let mut cmd = Command::new(&self.bin);
        cmd.arg("--coordinator").arg(&self.coordinator);
        if let Some(ca_cert) = &self.ca_cert {
            cmd.arg("--ca-cert").arg(ca_cert);
        }
        cmd.env("NO_COLOR", "1")
            .env("WARDEN_TOKEN", &self.token)
            .env_remove("WARDEN_COORDINATOR")
            .env_remove("WARDEN_CA_CERT")
            .env_remove("WARDEN_TOKEN_FILE")
            .stdin(Stdio::null());
        cmd
    }

    /// Runs `warden --json ARGS…`.
    pub fn run(&self, args: &[&str]) -> CliOutput {
        let mut cmd = self.command();
        cmd.arg("--json").args(args);
        let out = cmd
            .output()
            .unwrap_or_else(|e| panic!("run {}: {e}", self.bin.display()));
        let stdout = String::from_utf8_lossy(&out.stdout).into_owned();
        let json = serde_json::from_str(stdout.trim()).ok();
        CliOutput {
            args: args.iter().map(|s| s.to_string()).collect(),
            code: out.status.code().unwrap_or(-1),
            stdout,
            stderr: String::from_utf8_lossy(&out.stderr).into_owned(),
            json,
        }
    }

    /// Runs a command that must succeed and returns its JSON document.
    pub fn json(&self, args: &[&str]) -> Value {
        let out = self.run(args);
        assert_eq!(out.code, 0, "command failed: {out}");
        out.json().clone()
    }

    /// Returns `warden agents`.
    pub fn agents(&self) -> Vec<Value> {
        as_array(self.json(&["agents"]))
    }

    /// Returns whether agent `name` is listed with the given online state.
    pub fn agent_online(&self, name: &str) -> Option<bool> {
        let out = self.run(&["agents"]);
        if out.code != 0 {
            return None;
        }
        out.json
            .as_ref()?
            .as_array()?
            .iter()
            .find(|a| a["name"] == name)
            .and_then(|a| a["online"].as_bool())
    }

    /// Returns `warden orders --limit 1000`.
    pub fn orders(&self) -> Vec<Value> {
        as_array(self.json(&["orders", "--limit", "1000"]))
    }

    /// Returns `warden order ID`.
    pub fn order(&self, id: &str) -> Value {
        self.json(&["order", id])
    }

    /// Returns `warden artifacts [DB] [--all]`.
    pub fn artifacts(&self, db: Option<&str>, all: bool) -> Vec<Value> {
        let mut args = vec!["artifacts"];
        if let Some(db) = db {
            args.push(db);
        }
        if all {
            args.push("--all");
        }
        as_array(self.json(&args))
    }

    /// Returns the whole audit log.
    pub fn audit(&self) -> Vec<Value> {
        as_array(self.json(&["audit", "--limit", "100000"]))
    }

    /// Runs `warden backup DB --wait` and returns the order, asserting it succeeded with an
    /// artifact id.
    pub fn backup_ok(&self, db: &str) -> Value {
        let out = self.run(&["backup", db, "--wait"]);
        assert_eq!(out.code, 0, "backup of {db} failed: {out}");
        let order = out.json().clone();
        assert_eq!(order["state"], "succeeded", "backup order: {order:#}");
        assert_eq!(order["kind"], "backup", "backup order: {order:#}");
        assert!(
            order["artifact_id"].as_str().is_some_and(|s| !s.is_empty()),
            "succeeded backup without artifact_id: {order:#}"
        );
        order
    }

    /// Polls `warden order ID` until its state is one of `states`; panics on timeout, or
    /// early when the order settled in another state.
    pub fn wait_order(&self, id: &str, states: &[&str], timeout: Duration) -> Value {
        let deadline = Instant::now() + timeout;
        let mut last: Option<Value> = None;
        loop {
            let out = self.run(&["order", id]);
            if out.code == 0
                && let Some(order) = out.json.clone()
            {
                let state = order["state"].as_str().unwrap_or_default().to_owned();
                if states.contains(&state.as_str()) {
                    return order;
                }
                if SETTLED_STATES.contains(&state.as_str()) {
                    panic!("order {id} settled as {state}, expected one of {states:?}: {order:#}");
                }
                last = Some(order);
            }
            if Instant::now() >= deadline {
                panic!(
                    "order {id} did not reach {states:?} within {timeout:?}; last seen: {}",
                    last.map(|o| format!("{o:#}"))
                        .unwrap_or_else(|| format!("(no answer) {out}"))
                );
            }
            std::thread::sleep(Duration::from_millis(200));
        }
    }
}

fn as_array(v: Value) -> Vec<Value> {
    match v {
        Value::Array(items) => items,
        other => panic!("expected a JSON array, got {other:#}"),
    }
}
