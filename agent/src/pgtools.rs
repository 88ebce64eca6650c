//! PostgreSQL client binaries: finding a `pg_dump`/`pg_restore`/`pg_dumpall` new enough for
//! a server, and running them.
//!
//! A dump taken by a client older than the server may silently miss objects, and pg_restore
//! cannot read archives of a newer pg_dump, so the agent refuses rather than guess. Every
//! tool runs with a cleared environment; the password travels in `PGPASSWORD` and never on
//! a command line, where any local user could read it from /proc.

use std::collections::{HashMap, VecDeque};
use std::ffi::OsString;
use std::fmt;
use std::fs::File;
use std::io::Read;
use std::os::fd::OwnedFd;
use std::os::unix::fs::MetadataExt;
use std::path::{Path, PathBuf};
use std::process::{ExitStatus, Stdio};
use std::sync::{Mutex, PoisonError};
use std::time::SystemTime;

use tokio::io::{AsyncBufReadExt, AsyncReadExt, BufReader};
use tokio::process::{Child, ChildStderr, ChildStdin, ChildStdout, Command};
use tokio::task::JoinHandle;

use crate::error::{AgentError, AgentResult};
use crate::pg::PgUrl;

/// How many stderr lines of a failed tool end up in its error.
const STDERR_TAIL_LINES: usize = 20;

/// Where Debian and Ubuntu install one client per major version.
const DEBIAN_VERSIONED_ROOT: &str = "/usr/lib/postgresql";

/// A PostgreSQL version as a number in `server_version_num` form (15.18 → 150018,
/// 9.6.24 → 90624).
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord)]
pub struct PgVersion(pub u32);

impl PgVersion {
    /// Parses the first version number in a text such as `pg_dump (PostgreSQL) 15.18 (Debian
    /// 15.18-0+deb12u1)` or `16beta1`.
    pub fn parse(text: &str) -> Option<Self> {
        let start = text.find(|c: char| c.is_ascii_digit())?;
        let numbers: Vec<u32> = text[start..]
            .split(|c: char| !c.is_ascii_digit() && c != '.')
            .next()?
            .split('.')
            .map_while(|part| part.parse().ok())
            .collect();
        match numbers.as_slice() {
            // Before 10 the major version had two parts.
            [major @ ..=9, minor, patch, ..] => Some(Self(major * 10000 + minor * 100 + patch)),
            [major @ ..=9, minor] => Some(Self(major * 10000 + minor * 100)),
            [major, minor, ..] if *major >= 10 => Some(Self(major * 10000 + minor)),
            [major] => Some(Self(major * 10000)),
            _ => None,
        }
    }

    /// Returns the major version in the same numbering, for comparisons (15.18 → 150000,
    /// 9.6.24 → 90600).
    pub fn major(self) -> u32 {
        if self.0 >= 100_000 {
            self.0 / 10000 * 10000
        } else {
            self.0 / 100 * 100
        }
    }

    /// Returns the major version as packages name it ("15", "9.6").
    pub fn major_label(self) -> String {
        if self.0 >= 100_000 {
            (self.0 / 10000).to_string()
        } else {
            format!("{}.{}", self.0 / 10000, self.0 / 100 % 100)
        }
    }
}

impl fmt::Display for PgVersion {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        if self.0 >= 100_000 {
            write!(f, "{}.{}", self.0 / 10000, self.0 % 10000)
        } else {
            write!(
                f,
                "{}.{}.{}",
                self.0 / 10000,
                self.0 / 100 % 100,
                self.0 % 100
            )
        }
    }
}

/// What the chosen tools must be able to handle, and how to name it in an error.
#[derive(Debug, Clone)]
pub struct ToolRequirement {
    pub version: PgVersion,
    /// e.g. "server 15.18 of db1/app".
    pub what: String,
}

/// A directory holding pg_dump, pg_restore and pg_dumpall of one version.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct PgTools {
    pub dir: PathBuf,
    pub version: PgVersion,
    /// First line of `pg_dump --version`.
    pub version_line: String,
}

impl PgTools {
    /// Returns the path of one of the tools.
    pub fn path(&self, tool: &str) -> PathBuf {
        self.dir.join(tool)
    }

    /// Finds the client binaries on this host and picks those for `need`. `probes` keeps
    /// what the binaries said about themselves while they stay the same files.
    pub async fn find(
        pg_bindir: Option<&Path>,
        need: &ToolRequirement,
        probes: &ProbeCache,
    ) -> AgentResult<Self> {
        let mut found = Vec::new();
        for dir in candidate_dirs(pg_bindir, probes).await {
            let pg_dump = dir.join("pg_dump");
            match probes.capture(&pg_dump, "--version").await {
                Ok(output) => {
                    let line = output.lines().next().unwrap_or_default().trim().to_owned();
                    match PgVersion::parse(&line) {
                        Some(version) => found.push(PgTools {
                            dir,
                            version,
                            version_line: line,
                        }),
                        None => {
                            tracing::warn!(path = %pg_dump.display(), output = %line, "cannot parse pg_dump version")
                        }
                    }
                }
                Err(error) => {
                    tracing::warn!(path = %pg_dump.display(), %error, "pg_dump --version failed")
                }
            }
        }
        select_tools(&found, need).cloned()
    }
}

/// Picks the tools for `need` among `found` (in search order): the first with the same
/// major version, else the first newer one. Errors name both versions and the fix.
pub fn select_tools<'a>(found: &'a [PgTools], need: &ToolRequirement) -> AgentResult<&'a PgTools> {
    let major = need.version.major();
    if let Some(tools) = found
        .iter()
        .find(|t| t.version.major() == major)
        .or_else(|| found.iter().find(|t| t.version.major() > major))
    {
        return Ok(tools);
    }
    let hint = format!(
        "install postgresql-client-{} or set pg_bindir",
        need.version.major_label()
    );
    Err(AgentError::Tool(
        match found.iter().max_by_key(|t| t.version) {
            Some(newest) => format!(
                "pg_dump {} at {} is older than {}; {hint}",
                newest.version,
                newest.path("pg_dump").display(),
                need.what
            ),
            None => format!(
                "no pg_dump, pg_restore and pg_dumpall found in pg_bindir, PATH, `pg_config --bindir` \
             or {DEBIAN_VERSIONED_ROOT}/*/bin (needed for {}); {hint}",
                need.what
            ),
        },
    ))
}

/// Lists the directories holding all three tools, in search order, without duplicates.
async fn candidate_dirs(pg_bindir: Option<&Path>, probes: &ProbeCache) -> Vec<PathBuf> {
    let mut dirs: Vec<PathBuf> = pg_bindir.map(Path::to_path_buf).into_iter().collect();
    let path_dirs: Vec<PathBuf> = std::env::var_os("PATH")
        .map(|p| std::env::split_paths(&p).collect())
        .unwrap_or_default();
    dirs.extend(path_dirs.iter().cloned());
    if let Some(pg_config) = path_dirs
        .iter()
        .map(|d| d.join("pg_config"))
        .find(|p| p.is_file())
    {
        match probes.capture(&pg_config, "--bindir").await {
            Ok(out) => dirs.push(PathBuf::from(out.trim())),
            Err(error) => tracing::debug!(%error, "pg_config --bindir failed"),
        }
    }
    dirs.extend(debian_versioned_dirs(Path::new(DEBIAN_VERSIONED_ROOT)));

    let mut seen = Vec::new();
    dirs.into_iter()
        .filter(|dir| {
            ["pg_dump", "pg_restore", "pg_dumpall"]
                .iter()
                .all(|t| dir.join(t).is_file())
        })
        .filter(|dir| {
            let key = dir.canonicalize().unwrap_or_else(|_| dir.clone());
            let new = !seen.contains(&key);
            seen.push(key);
            new
        })
        .collect()
}

/// Returns `<root>/<major>/bin`, newest major first.
fn debian_versioned_dirs(root: &Path) -> Vec<PathBuf> {
    let mut versions: Vec<(PgVersion, PathBuf)> = std::fs::read_dir(root)
        .into_iter()
        .flatten()
        .flatten()
        .filter_map(|entry| {
            let name = entry.file_name().to_string_lossy().into_owned();
            let version = PgVersion::parse(&name)?;
            Some((version, entry.path().join("bin")))
        })
        .collect();
    versions.sort_by_key(|(version, _)| std::cmp::Reverse(*version));
    versions.into_iter().map(|(_, dir)| dir).collect()
}

/// A running client tool: stderr is relayed to the log at debug level while its last lines
/// are kept for the error if the tool fails. Dropping it kills the process.
pub struct Subprocess {
    tool: String,
    child: Child,
    stderr: JoinHandle<VecDeque<String>>,
}

impl Subprocess {
    /// Starts `program` with `args` and an environment holding only what libpq needs:
    /// `HOME` (for ~/.pgpass and client certificates), `TZ`, and `PGPASSWORD` from `url`.
    pub fn spawn(
        program: &Path,
        args: &[OsString],
        url: Option<&PgUrl>,
        stdout: Stdio,
    ) -> AgentResult<Self> {
        Self::start(program, args, url, Stdio::null(), stdout)
    }

    /// [`Subprocess::spawn`] with a pipe to the tool's stdin and its stdout discarded; the
    /// pipe is returned as a blocking file descriptor, for a blocking thread to write.
    pub fn spawn_fed(
        program: &Path,
        args: &[OsString],
        url: Option<&PgUrl>,
    ) -> AgentResult<(Self, OwnedFd)> {
        let mut process = Self::start(program, args, url, Stdio::piped(), Stdio::null())?;
        let stdin = process
            .child
            .stdin
            .take()
            .map(ChildStdin::into_owned_fd)
            .transpose()
            .map_err(AgentError::io(format!(
                "cannot take the stdin of {}",
                program.display()
            )))?
            .ok_or_else(|| AgentError::Io {
                context: format!("{} has no stdin", program.display()),
                source: std::io::ErrorKind::BrokenPipe.into(),
            })?;
        Ok((process, stdin))
    }

    fn start(
        program: &Path,
        args: &[OsString],
        url: Option<&PgUrl>,
        stdin: Stdio,
        stdout: Stdio,
    ) -> AgentResult<Self> {
        let tool = program
            .file_name()
            .map(|n| n.to_string_lossy().into_owned())
            .unwrap_or_else(|| program.display().to_string());
        let mut command = Command::new(program);
        command
            .args(args)
            .env_clear()
            .stdin(stdin)
            .stdout(stdout)
            .stderr(Stdio::piped())
            .kill_on_drop(true);
        for key in ["HOME", "TZ"] {
            if let Some(value) = std::env::var_os(key) {
                command.env(key, value);
            }
        }
        if let Some(password) = url.and_then(PgUrl::password) {
            command.env("PGPASSWORD", password);
        }
        let mut child = command.spawn().map_err(AgentError::io(format!(
            "cannot start {}",
            program.display()
        )))?;
        let redactor = url.cloned();
        let stderr = child
            .stderr
            .take()
            .map(|s| tokio::spawn(relay_stderr(tool.clone(), s, redactor)));
        Ok(Self {
            tool,
            child,
            stderr: stderr.unwrap_or_else(|| tokio::spawn(async { VecDeque::new() })),
        })
    }

    /// Takes the tool's stdout, if it was piped.
    pub fn take_stdout(&mut self) -> Option<ChildStdout> {
        self.child.stdout.take()
    }

    /// Waits for the tool to exit; a non-zero exit is an error carrying the stderr tail.
    pub async fn wait(mut self) -> AgentResult<()> {
        let status = self
            .child
            .wait()
            .await
            .map_err(AgentError::io(format!("cannot wait for {}", self.tool)))?;
        let tail = (&mut self.stderr).await.unwrap_or_default();
        check_status(&self.tool, status, tail)
    }
}

fn check_status(tool: &str, status: ExitStatus, tail: VecDeque<String>) -> AgentResult<()> {
    if status.success() {
        return Ok(());
    }
    let stderr_tail = if tail.is_empty() {
        "no output on stderr".to_owned()
    } else {
        Vec::from(tail).join("\n")
    };
    Err(AgentError::Subprocess {
        tool: tool.to_owned(),
        status: status.to_string(),
        stderr_tail,
    })
}

/// Relays a tool's stderr to the log and keeps its last lines, with the password (if the
/// tool ever echoed it) replaced: those lines end up in order errors and the audit log.
async fn relay_stderr(tool: String, stderr: ChildStderr, url: Option<PgUrl>) -> VecDeque<String> {
    let mut reader = BufReader::new(stderr);
    let mut tail = VecDeque::with_capacity(STDERR_TAIL_LINES);
    let mut line = Vec::new();
    // Lines are read as bytes: a tool may print text in the server's encoding.
    while matches!(reader.read_until(b'\n', &mut line).await, Ok(n) if n > 0) {
        let raw = String::from_utf8_lossy(&line);
        let text = match &url {
            Some(url) => url.redact(raw.trim_end()),
            None => raw.trim_end().to_owned(),
        };
        line.clear();
        if text.is_empty() {
            continue;
        }
        tracing::debug!(tool = %tool, line = %text, "tool stderr");
        if tail.len() == STDERR_TAIL_LINES {
            tail.pop_front();
        }
        tail.push_back(text);
    }
    tail
}

/// The answers of tools to questions about themselves (`pg_dump --version`, `pg_config
/// --bindir`), kept while the file answering stays the same (device, inode, size and
/// modification time): a package upgrade replaces the file and the question is asked again.
/// Asking costs a process per candidate directory on every order otherwise, 4 ms for a
/// binary on the benchmark machine. Scripts are asked every time (see [`FileStamp::of`]).
#[derive(Debug, Default)]
pub struct ProbeCache {
    answers: Mutex<HashMap<Probe, (FileStamp, String)>>,
}

/// A tool and the question it was asked.
type Probe = (PathBuf, &'static str);

/// What tells one version of a file from another.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
struct FileStamp {
    dev: u64,
    ino: u64,
    len: u64,
    modified: Option<SystemTime>,
}

impl FileStamp {
    /// Returns the stamp of the file at `path`, or `None` for a script (`#!`): Debian's
    /// `pg_wrapper` answers for whichever client version is installed, and stays the same
    /// file when those change.
    fn of(path: &Path) -> Option<Self> {
        let mut head = [0u8; 2];
        let is_script = File::open(path)
            .and_then(|mut file| file.read_exact(&mut head))
            .is_ok_and(|()| &head == b"#!");
        if is_script {
            return None;
        }
        let meta = std::fs::metadata(path).ok()?;
        Some(Self {
            dev: meta.dev(),
            ino: meta.ino(),
            len: meta.len(),
            modified: meta.modified().ok(),
        })
    }
}

impl ProbeCache {
    /// Returns what `program question` prints on stdout, asking only if `program` changed
    /// since it was last asked. Failures are not kept.
    pub async fn capture(&self, program: &Path, question: &'static str) -> AgentResult<String> {
        let key = (program.to_path_buf(), question);
        let stamp = FileStamp::of(program);
        if let Some(stamp) = stamp {
            let answers = self.answers.lock().unwrap_or_else(PoisonError::into_inner);
            if let Some((seen, answer)) = answers.get(&key)
                && *seen == stamp
            {
                return Ok(answer.clone());
            }
        }
        let answer = run_capture(program, &[question]).await?;
        if let Some(stamp) = stamp {
            self.answers
                .lock()
                .unwrap_or_else(PoisonError::into_inner)
                .insert(key, (stamp, answer.clone()));
        }
        Ok(answer)
    }
}

/// Runs a tool that answers a question on stdout (`--version`, `--bindir`).
async fn run_capture(program: &Path, args: &[&str]) -> AgentResult<String> {
    let args: Vec<OsString> = args.iter().map(OsString::from).collect();
    let mut process = Subprocess::spawn(program, &args, None, Stdio::piped())?;
    let mut output = String::new();
    if let Some(mut stdout) = process.take_stdout() {
        stdout
            .read_to_string(&mut output)
            .await
            .map_err(AgentError::io(format!(
                "cannot read the output of {}",
                program.display()
            )))?;
    }
    process.wait().await?;
    Ok(output)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn tools(dir: &str, version: &str) -> PgTools {
        PgTools {
            dir: PathBuf::from(dir),
            version: PgVersion::parse(version).expect("version"),
            version_line: format!("pg_dump (PostgreSQL) {version}"),
        }
    }

    fn need(version: &str) -> ToolRequirement {
        ToolRequirement {
            version: PgVersion::parse(version).expect("version"),
            what: format!("server {version} of db1/app"),
        }
    }

    #[test]
    fn versions_parse() {
        let v = PgVersion::parse("pg_dump (PostgreSQL) 15.18 (Debian 15.18-0+deb12u1)");
        assert_eq!(v, Some(PgVersion(150018)));
        assert_eq!(PgVersion::parse("9.6.24"), Some(PgVersion(90624)));
        assert_eq!(PgVersion::parse("16beta1"), Some(PgVersion(160000)));
        assert_eq!(PgVersion::parse("17"), Some(PgVersion(170000)));
        assert_eq!(PgVersion::parse("no digits"), None);
        assert_eq!(PgVersion(150018).to_string(), "15.18");
        assert_eq!(PgVersion(90624).to_string(), "9.6.24");
        assert_eq!(PgVersion(90624).major_label(), "9.6");
        assert_eq!(PgVersion(90624).major(), 90600);
        assert_eq!(PgVersion(150018).major(), 150000);
        assert!(PgVersion(90624).major() < PgVersion(100001).major());
    }

    #[test]
    fn exact_major_wins_over_search_order() {
        let found = [
            tools("/opt/pg16/bin", "16.4"),
            tools("/usr/lib/postgresql/15/bin", "15.2"),
        ];
        let chosen = select_tools(&found, &need("15.18")).expect("found");
        assert_eq!(chosen.dir, PathBuf::from("/usr/lib/postgresql/15/bin"));
    }

    #[test]
    fn newer_major_is_accepted_in_search_order() {
        let found = [
            tools("/usr/bin", "14.5"),
            tools("/opt/pg17/bin", "17.0"),
            tools("/opt/pg16/bin", "16.4"),
        ];
        let chosen = select_tools(&found, &need("15.18")).expect("found");
        assert_eq!(chosen.dir, PathBuf::from("/opt/pg17/bin"));
    }

    #[test]
    fn older_tools_are_refused_naming_both_versions() {
        let found = [tools("/usr/bin", "14.5"), tools("/opt/pg13/bin", "13.1")];
        let err = select_tools(&found, &need("15.18"))
            .expect_err("too old")
            .to_string();
        assert_eq!(
            err,
            "pg_dump 14.5 at /usr/bin/pg_dump is older than server 15.18 of db1/app; \
             install postgresql-client-15 or set pg_bindir"
        );
        let err = select_tools(&[], &need("15.18"))
            .expect_err("none")
            .to_string();
        assert!(err.starts_with("no pg_dump"), "{err}");
        assert!(err.contains("postgresql-client-15"), "{err}");
    }

    #[test]
    fn debian_dirs_newest_first() {
        let root = tempfile::tempdir().expect("tempdir");
        for v in ["9.6", "15", "13", "notaversion"] {
            std::fs::create_dir_all(root.path().join(v).join("bin")).expect("mkdir");
        }
        let dirs = debian_versioned_dirs(root.path());
        let names: Vec<String> = dirs
            .iter()
            .map(|d| {
                d.parent()
                    .expect("parent")
                    .file_name()
                    .expect("name")
                    .to_string_lossy()
                    .into_owned()
            })
            .collect();
        assert_eq!(names, ["15", "13", "9.6"]);
    }

    #[tokio::test]
    async fn probes_are_asked_once_until_the_file_changes_and_scripts_every_time() {
        use std::os::unix::fs::PermissionsExt;
        // `date +%N` answers differently every time it runs: an answer seen twice was kept.
        let dir = tempfile::tempdir().expect("tempdir");
        let tool = dir.path().join("tool");
        let date = ["/bin/date", "/usr/bin/date"]
            .into_iter()
            .find(|p| Path::new(p).is_file())
            .expect("date");
        let install = |from: &str| {
            // A new file, as a package upgrade writes it.
            let _ = std::fs::remove_file(&tool);
            std::fs::copy(from, &tool).expect("copy");
        };
        let probes = ProbeCache::default();
        install(date);
        let first = probes.capture(&tool, "+%N").await.expect("runs");
        assert_eq!(probes.capture(&tool, "+%N").await.expect("runs"), first);
        std::thread::sleep(std::time::Duration::from_millis(10));
        install(date);
        assert_ne!(probes.capture(&tool, "+%N").await.expect("runs"), first);

        std::fs::write(&tool, format!("#!/bin/sh\nexec {date} \"$1\"\n")).expect("write");
        std::fs::set_permissions(&tool, std::fs::Permissions::from_mode(0o755)).expect("chmod");
        let first = probes.capture(&tool, "+%N").await.expect("runs");
        assert_ne!(probes.capture(&tool, "+%N").await.expect("runs"), first);
        // A tool that is gone fails, and failures are not kept.
        std::fs::remove_file(&tool).expect("remove");
        assert!(probes.capture(&tool, "+%N").await.is_err());
    }

    #[tokio::test]
    async fn failed_tool_reports_its_stderr_tail() {
        let args: Vec<OsString> = [
            "-c",
            "for i in $(seq 1 30); do echo line$i >&2; done; exit 3",
        ]
        .iter()
        .map(OsString::from)
        .collect();
        let process =
            Subprocess::spawn(Path::new("/bin/sh"), &args, None, Stdio::null()).expect("spawn");
        match process.wait().await {
            Err(AgentError::Subprocess {
                tool,
                status,
                stderr_tail,
            }) => {
                assert_eq!(tool, "sh");
                assert!(status.contains('3'), "{status}");
                let lines: Vec<&str> = stderr_tail.lines().collect();
                assert_eq!(lines.len(), STDERR_TAIL_LINES);
                assert_eq!(lines.first(), Some(&"line11"));
                assert_eq!(lines.last(), Some(&"line30"));
            }
            other => panic!("expected a subprocess error, got {other:?}"),
        }
    }

    #[tokio::test]
    async fn a_password_echoed_on_stderr_never_reaches_the_error() {
        let url = PgUrl::parse("postgres://u:hunter2@h/db").expect("url");
        let args: Vec<OsString> = ["-c", "echo \"bad password $PGPASSWORD\" >&2; exit 1"]
            .iter()
            .map(OsString::from)
            .collect();
        let process = Subprocess::spawn(Path::new("/bin/sh"), &args, Some(&url), Stdio::null())
            .expect("spawn");
        let error = process.wait().await.expect_err("fails").to_string();
        assert!(!error.contains("hunter2"), "{error}");
        assert!(error.contains("bad password ***"), "{error}");
    }

    #[tokio::test]
    async fn environment_is_cleared_and_password_passed_in_pgpassword() {
        let url = PgUrl::parse("postgres://u:se%20cret@h/db").expect("url");
        let mut process =
            Subprocess::spawn(Path::new("/usr/bin/env"), &[], Some(&url), Stdio::piped())
                .expect("spawn");
        let mut out = String::new();
        process
            .take_stdout()
            .expect("stdout")
            .read_to_string(&mut out)
            .await
            .expect("read");
        process.wait().await.expect("env runs");
        assert!(out.lines().any(|l| l == "PGPASSWORD=se cret"), "{out}");
        assert!(!out.lines().any(|l| l.starts_with("PATH=")), "{out}");
    }
}
