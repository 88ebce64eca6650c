//! End-to-end harness for Warden: real PostgreSQL clusters, real coordinator and agent
//! processes and the real `warden` CLI, each test in its own directory with its own ports.
//!
//! Every process a test starts is killed when its handle drops, and when a test panics the
//! tails of the process logs are printed, so a failure explains itself. Tests wait for states
//! by polling with a deadline ([`wait_for`]); nothing sleeps for a guess.

pub mod binaries;
pub mod checks;
pub mod cli;
pub mod compare;
pub mod fixtures;
pub mod fleet;
pub mod http;
pub mod pg;
pub mod process;
pub mod proxy;
pub mod repo;
pub mod s3;
pub mod script;
pub mod store;

use std::fs::File;
use std::net::TcpListener;
use std::path::{Path, PathBuf};
use std::time::{Duration, Instant};

pub use cli::{Cli, CliOutput};
pub use compare::{DbSnapshot, assert_same_data};
pub use fleet::{Fleet, FleetBuilder};
pub use pg::PgCluster;
pub use process::{Agent, AgentConfig, AgentDatabase, Coordinator};

/// How long an order may take before a test gives up on it.
pub const ORDER_TIMEOUT: Duration = Duration::from_secs(120);
/// How long agents may take to (re)connect and show up online, or offline.
pub const ONLINE_TIMEOUT: Duration = Duration::from_secs(60);

/// Polls `probe` every `every` until it returns `Some`, or panics after `timeout` naming
/// `what`.
pub fn wait_for<T>(
    what: &str,
    timeout: Duration,
    every: Duration,
    mut probe: impl FnMut() -> Option<T>,
) -> T {
    let deadline = Instant::now() + timeout;
    loop {
        if let Some(value) = probe() {
            return value;
        }
        if Instant::now() >= deadline {
            panic!("timed out after {timeout:?} waiting for {what}");
        }
        std::thread::sleep(every);
    }
}

/// Returns a TCP port on 127.0.0.1 that was free a moment ago, never the same one twice in
/// this process (two tests asking at the same time get different ports).
pub fn free_port() -> u16 {
    use std::collections::HashSet;
    use std::sync::Mutex;
    static HANDED_OUT: Mutex<Option<HashSet<u16>>> = Mutex::new(None);
    loop {
        let listener = TcpListener::bind("127.0.0.1:0").expect("bind 127.0.0.1:0");
        let port = listener.local_addr().expect("local addr").port();
        let mut handed = HANDED_OUT.lock().unwrap_or_else(|e| e.into_inner());
        if handed.get_or_insert_with(HashSet::new).insert(port) {
            return port;
        }
    }
}

/// A directory of its own for one test, readable by the `postgres` user (tests running as
/// root start clusters as `postgres`). Kept on disk when `WARDEN_KEEP_TEST_DIRS` is set.
pub struct TestDir {
    dir: Option<tempfile::TempDir>,
    path: PathBuf,
}

impl TestDir {
    /// Creates a fresh directory whose name starts with `name`.
    pub fn new(name: &str) -> Self {
        use std::os::unix::fs::PermissionsExt;
        let dir = tempfile::Builder::new()
            .prefix(&format!("warden-{name}-"))
            .tempdir()
            .expect("create test dir");
        std::fs::set_permissions(dir.path(), std::fs::Permissions::from_mode(0o755))
            .expect("chmod test dir");
        let path = dir.path().to_path_buf();
        Self {
            dir: Some(dir),
            path,
        }
    }

    pub fn path(&self) -> &Path {
        &self.path
    }

    /// Returns `path()/name`, creating it as a directory.
    pub fn subdir(&self, name: &str) -> PathBuf {
        let p = self.path.join(name);
        std::fs::create_dir_all(&p).unwrap_or_else(|e| panic!("create {}: {e}", p.display()));
        p
    }
}

impl Drop for TestDir {
    fn drop(&mut self) {
        if std::env::var_os("WARDEN_KEEP_TEST_DIRS").is_some()
            && let Some(dir) = self.dir.take()
        {
            eprintln!("test dir kept: {}", dir.keep().display());
        } else if std::thread::panicking() {
            eprintln!(
                "test dir {} removed; set WARDEN_KEEP_TEST_DIRS=1 to keep it",
                self.path.display()
            );
        }
    }
}

/// Returns whether this process runs as root (clusters are then run as `postgres`).
pub fn is_root() -> bool {
    // SAFETY: geteuid has no preconditions and cannot fail.
    #[allow(unsafe_code)]
    let euid = unsafe { libc::geteuid() };
    euid == 0
}

/// Holds a lock shared by every test process of this workspace, so that heavy tests (a large
/// table, the Chinook dataset) do not run at the same time on a small machine.
pub struct HeavyTestGuard {
    _file: File,
}

/// Takes the heavy-test lock, waiting for other heavy tests to finish.
pub fn heavy_test_lock() -> HeavyTestGuard {
    let path = binaries::target_dir().join("warden-tests-heavy.lock");
    let file = File::options()
        .create(true)
        .truncate(false)
        .write(true)
        .open(&path)
        .unwrap_or_else(|e| panic!("open {}: {e}", path.display()));
    file.lock()
        .unwrap_or_else(|e| panic!("lock {}: {e}", path.display()));
    HeavyTestGuard { _file: file }
}

/// Returns the last `lines` lines of a text file (lossy UTF-8), or a note why it cannot.
pub fn tail(path: &Path, lines: usize) -> String {
    match std::fs::read(path) {
        Ok(bytes) => {
            let text = String::from_utf8_lossy(&bytes);
            let all: Vec<&str> = text.lines().collect();
            let start = all.len().saturating_sub(lines);
            all[start..].join("\n")
        }
        Err(e) => format!("(cannot read {}: {e})", path.display()),
    }
}
