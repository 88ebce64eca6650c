//! A real PostgreSQL cluster in a test directory, on a free port, stopped when dropped.
//!
//! As root the cluster runs as the `postgres` user (PostgreSQL refuses to run as root);
//! otherwise as the current user. Connections go over TCP to 127.0.0.1 with trust
//! authentication as the `postgres` superuser.

use std::path::{Path, PathBuf};
use std::process::{Command, Output, Stdio};
use std::sync::OnceLock;

use crate::{free_port, is_root};

/// Returns the directory holding `initdb`, `pg_ctl`, `psql` and friends: `pg_config
/// --bindir`, then `/usr/lib/postgresql/*/bin` (newest first), then `PATH`.
pub fn pg_bindir() -> &'static Path {
    static BINDIR: OnceLock<PathBuf> = OnceLock::new();
    BINDIR.get_or_init(|| {
        let has_server = |dir: &Path| dir.join("initdb").is_file() && dir.join("pg_ctl").is_file();
        if let Ok(out) = Command::new("pg_config").arg("--bindir").output()
            && out.status.success()
        {
            let dir = PathBuf::from(String::from_utf8_lossy(&out.stdout).trim());
            if has_server(&dir) {
                return dir;
            }
        }
        let mut versions: Vec<(u32, PathBuf)> = std::fs::read_dir("/usr/lib/postgresql")
            .into_iter()
            .flatten()
            .flatten()
            .filter_map(|e| {
                let v = e.file_name().to_str()?.parse::<u32>().ok()?;
                Some((v, e.path().join("bin")))
            })
            .filter(|(_, dir)| has_server(dir))
            .collect();
        versions.sort();
        if let Some((_, dir)) = versions.pop() {
            return dir;
        }
        for dir in std::env::split_paths(&std::env::var_os("PATH").unwrap_or_default()) {
            if has_server(&dir) {
                return dir;
            }
        }
        panic!(
            "PostgreSQL server binaries (initdb, pg_ctl) not found via pg_config, \
             /usr/lib/postgresql/*/bin or PATH; install postgresql"
        )
    })
}

/// Quotes a value for a libpq conninfo string (`key='value'`).
pub fn conninfo_value(value: &str) -> String {
    format!("'{}'", value.replace('\\', "\\\\").replace('\'', "\\'"))
}

/// Quotes a PostgreSQL identifier.
pub fn quote_ident(name: &str) -> String {
    format!("\"{}\"", name.replace('"', "\"\""))
}

/// Quotes a PostgreSQL string literal.
pub fn quote_literal(value: &str) -> String {
    format!("'{}'", value.replace('\'', "''"))
}

/// Percent-encodes everything but RFC 3986 unreserved characters.
pub fn percent_encode(value: &str) -> String {
    let mut out = String::new();
    for b in value.bytes() {
        if b.is_ascii_alphanumeric() || matches!(b, b'-' | b'.' | b'_' | b'~') {
            out.push(b as char);
        } else {
            out.push_str(&format!("%{b:02X}"));
        }
    }
    out
}

/// A running PostgreSQL cluster owned by a test.
pub struct PgCluster {
    base: PathBuf,
    data: PathBuf,
    port: u16,
    running: bool,
}

impl PgCluster {
    /// Creates a cluster under `parent/<name>` (initdb) and starts it on a free port.
    pub fn start_new(parent: &Path, name: &str) -> Self {
        let base = parent.join(name);
        std::fs::create_dir_all(&base).unwrap_or_else(|e| panic!("mkdir {}: {e}", base.display()));
        if is_root() {
            run_ok(Command::new("chown").arg("-R").arg("postgres:").arg(&base));
        }
        let data = base.join("data");
        let mut initdb = as_cluster_owner(&pg_bindir().join("initdb"));
        initdb
            .arg("-D")
            .arg(&data)
            .args([
                "-U",
                "postgres",
                "-A",
                "trust",
                "-N",
                "--encoding=UTF8",
                "--locale=C",
            ])
            .current_dir(&base);
        run_ok(&mut initdb);
        let mut cluster = Self {
            base,
            data,
            port: 0,
            running: false,
        };
        // A port that was free when picked may be taken by the time the server binds it.
        let mut last_error = String::new();
        for _ in 0..5 {
            cluster.port = free_port();
            match cluster.try_start() {
                Ok(()) => return cluster,
                Err(e) => last_error = e,
            }
        }
        panic!(
            "could not start PostgreSQL in {}: {last_error}",
            cluster.data.display()
        );
    }

    fn try_start(&mut self) -> Result<(), String> {
        let opts = format!(
            "-p {} -k {} -c listen_addresses=127.0.0.1 -c fsync=off -c synchronous_commit=off \
             -c full_page_writes=off -c max_connections=60",
            self.port,
            self.base.display()
        );
        let mut cmd = as_cluster_owner(&pg_bindir().join("pg_ctl"));
        cmd.arg("-D")
            .arg(&self.data)
            .args(["-w", "-t", "120", "-l"])
            .arg(self.base.join("log"))
            .arg("-o")
            .arg(opts)
            .arg("start")
            .current_dir(&self.base)
            .stdin(Stdio::null());
        let out = cmd.output().map_err(|e| format!("run pg_ctl: {e}"))?;
        if out.status.success() {
            self.running = true;
            Ok(())
        } else {
            Err(format!(
                "pg_ctl start failed ({}): {}{}\nserver log:\n{}",
                out.status,
                String::from_utf8_lossy(&out.stdout),
                String::from_utf8_lossy(&out.stderr),
                crate::tail(&self.base.join("log"), 20)
            ))
        }
    }

    /// Starts the cluster again (after [`PgCluster::stop`]) on the same port.
    pub fn start(&mut self) {
        if let Err(e) = self.try_start() {
            panic!("{e}");
        }
    }

    /// Stops the cluster (fast shutdown: sessions are disconnected).
    pub fn stop(&mut self) {
        let mut cmd = as_cluster_owner(&pg_bindir().join("pg_ctl"));
        cmd.arg("-D")
            .arg(&self.data)
            .args(["-w", "-m", "fast", "stop"])
            .current_dir(&self.base);
        run_ok(&mut cmd);
        self.running = false;
    }

    pub fn port(&self) -> u16 {
        self.port
    }

    /// Returns the directory holding the data directory, the socket and the server log.
    pub fn base_dir(&self) -> &Path {
        &self.base
    }

    /// Returns a `postgres://` URL for database `db` (the name percent-encoded).
    pub fn url(&self, db: &str) -> String {
        format!(
            "postgres://postgres@127.0.0.1:{}/{}",
            self.port,
            percent_encode(db)
        )
    }

    /// Returns the URL for `db` with a password in it (ignored by trust authentication).
    pub fn url_with_password(&self, db: &str, password: &str) -> String {
        format!(
            "postgres://postgres:{}@127.0.0.1:{}/{}",
            percent_encode(password),
            self.port,
            percent_encode(db)
        )
    }

    /// Returns a libpq conninfo string for `db`.
    pub fn conninfo(&self, db: &str) -> String {
        format!(
            "host=127.0.0.1 port={} user=postgres dbname={} connect_timeout=30",
            self.port,
            conninfo_value(db)
        )
    }

    fn psql_cmd(&self, db: &str) -> Command {
        let mut cmd = Command::new(pg_bindir().join("psql"));
        cmd.args(["-X", "-q", "-A", "-t", "-v", "ON_ERROR_STOP=1", "--dbname"])
            .arg(self.conninfo(db))
            .env("PGCLIENTENCODING", "UTF8")
            .env_remove("PGPASSWORD")
            .env_remove("PGSERVICE")
            .stdin(Stdio::null());
        cmd
    }

    /// Runs `sql` in `db` and returns stdout (unaligned, tuples only); panics on error.
    pub fn psql(&self, db: &str, sql: &str) -> String {
        match self.try_psql(db, sql) {
            Ok(out) => out,
            Err(e) => panic!("psql in {db:?} failed: {e}\nsql: {}", truncate(sql, 2000)),
        }
    }

    /// Runs `sql` in `db`, returning stdout or the error text.
    pub fn try_psql(&self, db: &str, sql: &str) -> Result<String, String> {
        let mut cmd = self.psql_cmd(db);
        cmd.arg("-c").arg(sql);
        output_text(cmd.output())
    }

    /// Runs the SQL file `path` in `db` (a script may `\c` to other databases).
    pub fn psql_file(&self, db: &str, path: &Path) {
        let mut cmd = self.psql_cmd(db);
        cmd.arg("-f").arg(path);
        if let Err(e) = output_text(cmd.output()) {
            panic!("psql -f {} in {db:?} failed: {e}", path.display());
        }
    }

    /// Runs a multi-statement SQL script in `db` (written to a file and run with `-f`, so
    /// it executes in one session).
    pub fn psql_script(&self, db: &str, sql: &str) {
        let file = tempfile::NamedTempFile::new().expect("temp sql file");
        std::fs::write(file.path(), sql).expect("write sql file");
        self.psql_file(db, file.path());
    }

    /// Creates database `name` (quoted, so any name works).
    pub fn create_database(&self, name: &str) {
        self.psql(
            "postgres",
            &format!("CREATE DATABASE {}", quote_ident(name)),
        );
    }

    /// Returns whether database `name` exists.
    pub fn database_exists(&self, name: &str) -> bool {
        self.psql(
            "postgres",
            &format!(
                "SELECT count(*) FROM pg_database WHERE datname = {}",
                quote_literal(name)
            ),
        )
        .trim()
            == "1"
    }

    /// Returns the names of all databases, sorted.
    pub fn databases(&self) -> Vec<String> {
        let out = self.psql(
            "postgres",
            "SELECT datname FROM pg_database ORDER BY datname COLLATE \"C\"",
        );
        out.lines().map(str::to_owned).collect()
    }

    /// Returns one scalar value.
    pub fn query_value(&self, db: &str, sql: &str) -> String {
        self.psql(db, sql).trim_end_matches('\n').to_owned()
    }
}

impl Drop for PgCluster {
    fn drop(&mut self) {
        if self.running {
            if std::thread::panicking() {
                eprintln!(
                    "--- postgres log {} (tail) ---\n{}",
                    self.base.join("log").display(),
                    crate::tail(&self.base.join("log"), 30)
                );
            }
            let mut cmd = as_cluster_owner(&pg_bindir().join("pg_ctl"));
            cmd.arg("-D")
                .arg(&self.data)
                .args(["-w", "-m", "immediate", "stop"])
                .current_dir(&self.base)
                .stdout(Stdio::null())
                .stderr(Stdio::null());
            let _ = cmd.status();
        }
    }
}

/// Builds a command that runs `program` as the cluster owner (`postgres` when root).
pub fn as_cluster_owner(program: &Path) -> Command {
    if is_root() {
        let mut cmd = Command::new("runuser");
        cmd.args(["-u", "postgres", "--"]).arg(program);
        cmd
    } else {
        Command::new(program)
    }
}

/// Runs `cmd` and panics with its output unless it succeeded.
pub fn run_ok(cmd: &mut Command) {
    let out = cmd
        .stdin(Stdio::null())
        .output()
        .unwrap_or_else(|e| panic!("run {cmd:?}: {e}"));
    assert!(
        out.status.success(),
        "{cmd:?} failed ({}):\n{}{}",
        out.status,
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr)
    );
}

fn output_text(out: std::io::Result<Output>) -> Result<String, String> {
    let out = out.map_err(|e| format!("cannot run psql: {e}"))?;
    if out.status.success() {
        Ok(String::from_utf8_lossy(&out.stdout).into_owned())
    } else {
        Err(format!(
            "exit {}: {}",
            out.status,
            String::from_utf8_lossy(&out.stderr)
        ))
    }
}

fn truncate(s: &str, max: usize) -> &str {
    if s.len() <= max {
        return s;
    }
    let mut end = max;
    while !s.is_char_boundary(end) {
        end -= 1;
    }
    &s[..end]
}
