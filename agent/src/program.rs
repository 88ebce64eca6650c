//! Running the programs a migration may start: the migration commands and the hooks of
//! `[databases.migrate]`.
//!
//! A program runs with a cleared environment (only [`INHERITED_ENV`] of the agent's, plus
//! what the caller gives it), in its own process group, for at most its timeout: a timeout or
//! a cancel kills the group, so a `sh -c` or `npm run` wrapper cannot leave its children
//! running. Its stdout and stderr are read line by line, as they come, into one tail of
//! [`OUTPUT_TAIL_BYTES`], with the secrets the caller names replaced by `***`.

use std::collections::VecDeque;
use std::path::Path;
use std::process::{ExitStatus, Stdio};
use std::sync::{Arc, Mutex, PoisonError};
use std::time::Duration;

use tokio::io::{AsyncBufReadExt, AsyncRead, BufReader};
use tokio::process::Command;
use tokio_util::sync::CancellationToken;

use crate::pg::REDACTED;

/// How much of a program's output is kept (its end).
pub const OUTPUT_TAIL_BYTES: usize = 4096;
/// How many lines of a failed program's output go into its error.
const ERROR_TAIL_LINES: usize = 10;
/// How long the output of an exited program is still read: a program it left running in the
/// background may hold the pipes open.
const OUTPUT_DRAIN: Duration = Duration::from_secs(2);
/// Environment variables of the agent that programs inherit; everything else is cleared, so
/// the agent's own settings never reach them.
pub const INHERITED_ENV: [&str; 9] = [
    "PATH", "HOME", "USER", "LOGNAME", "LANG", "LC_ALL", "LC_CTYPE", "TZ", "TMPDIR",
];

/// A command or hook, ready to run.
pub struct Program<'a> {
    /// The program and its arguments.
    pub argv: &'a [String],
    /// Where it runs; default the agent's working directory.
    pub workdir: Option<&'a Path>,
    /// Its environment besides [`INHERITED_ENV`].
    pub env: Vec<(String, String)>,
    /// How long it may run before it is killed.
    pub timeout: Duration,
    /// What to hide in its output.
    pub redactor: Redactor,
}

/// How a command or hook ended: the tail of its output (stdout and stderr as they came),
/// and why it failed, worded to follow its name ("exited with status 1: ...").
pub struct ProgramRun {
    /// The last [`OUTPUT_TAIL_BYTES`] of its output, redacted.
    pub output: String,
    pub result: Result<(), String>,
    /// It was killed because the order was cancelled.
    pub cancelled: bool,
    /// It was started: `false` when it could not be (an empty command line, a missing
    /// workdir or program), so it cannot have changed anything.
    pub started: bool,
}

impl Program<'_> {
    /// Runs the program until it exits, its timeout passes or `cancel` fires; a timeout or a
    /// cancel kills it and every process it started.
    pub async fn run(self, cancel: &CancellationToken) -> ProgramRun {
        let failed = |why: String| ProgramRun {
            output: String::new(),
            result: Err(why),
            cancelled: false,
            started: false,
        };
        let Some((program, args)) = self.argv.split_first() else {
            return failed("has an empty command line".to_owned());
        };
        if let Some(dir) = self.workdir
            && !dir.is_dir()
        {
            return failed(format!(
                "cannot start: its workdir {} is not a directory; fix [databases.migrate] workdir",
                dir.display()
            ));
        }
        let mut command = Command::new(program);
        command
            .args(args)
            .env_clear()
            .envs(
                INHERITED_ENV
                    .iter()
                    .filter_map(|key| Some((*key, std::env::var_os(key)?))),
            )
            .envs(self.env.iter().map(|(k, v)| (k, v)))
            .stdin(Stdio::null())
            .stdout(Stdio::piped())
            .stderr(Stdio::piped())
            // Its own process group: a timeout or cancel kills what it started too.
            .process_group(0)
            .kill_on_drop(true);
        if let Some(dir) = self.workdir {
            command.current_dir(dir);
        }
        let mut child = match command.spawn() {
            Ok(child) => child,
            Err(error) => return failed(format!("cannot start {program:?}: {error}")),
        };
        let mut group =
            ProcessGroup(child.id().and_then(|id| {
                rustix::process::Pid::from_raw(i32::try_from(id).unwrap_or_default())
            }));
        let tail = Arc::new(Mutex::new(OutputTail::default()));
        let readers: Vec<_> = [
            child
                .stdout
                .take()
                .map(|s| Box::new(s) as Box<dyn AsyncRead + Send + Unpin>),
            child
                .stderr
                .take()
                .map(|s| Box::new(s) as Box<dyn AsyncRead + Send + Unpin>),
        ]
        .into_iter()
        .flatten()
        .map(|stream| {
            tokio::spawn(read_output(
                program.clone(),
                stream,
                tail.clone(),
                self.redactor.clone(),
            ))
        })
        .collect();

        let ended = tokio::select! {
            status = child.wait() => Ended::Exited(status),
            _ = tokio::time::sleep(self.timeout) => Ended::TimedOut,
            _ = cancel.cancelled() => Ended::Cancelled,
        };
        if matches!(ended, Ended::Exited(_)) {
            // Reaped: its process group id may belong to someone else soon.
            group.0 = None;
        } else {
            drop(group);
            let _ = child.kill().await;
        }
        let aborts: Vec<_> = readers.iter().map(|r| r.abort_handle()).collect();
        let drained = tokio::time::timeout(OUTPUT_DRAIN, futures::future::join_all(readers));
        if drained.await.is_err() {
            tracing::debug!(program = %program, "stopped reading the output of a program that left others running");
            aborts.iter().for_each(tokio::task::AbortHandle::abort);
        }
        let tail = std::mem::take(&mut *tail.lock().unwrap_or_else(PoisonError::into_inner));
        let last_lines = tail.last_lines(ERROR_TAIL_LINES);
        let cancelled = matches!(ended, Ended::Cancelled);
        let result = match ended {
            Ended::Exited(Ok(status)) if status.success() => Ok(()),
            Ended::Exited(Ok(status)) => Err(format!(
                "exited with {}: {last_lines}",
                exit_description(status)
            )),
            Ended::Exited(Err(error)) => Err(format!("could not be waited for: {error}")),
            Ended::TimedOut => Err(format!(
                "did not finish within {} and was killed; raise [databases.migrate] timeout if \
                 it needs longer; its output ended with: {last_lines}",
                humantime::format_duration(self.timeout)
            )),
            Ended::Cancelled => Err(format!(
                "was killed: the order was cancelled; its output ended with: {last_lines}"
            )),
        };
        ProgramRun {
            output: tail.text(),
            result,
            cancelled,
            started: true,
        }
    }
}

/// How a program run ended.
enum Ended {
    Exited(std::io::Result<ExitStatus>),
    TimedOut,
    Cancelled,
}

/// `status 3`, or `signal 9` for a program a signal ended.
fn exit_description(status: ExitStatus) -> String {
    use std::os::unix::process::ExitStatusExt;
    match (status.code(), status.signal()) {
        (Some(code), _) => format!("status {code}"),
        (None, Some(signal)) => format!("signal {signal}"),
        (None, None) => status.to_string(),
    }
}

/// Kills a process group when dropped, unless its id was taken out.
struct ProcessGroup(Option<rustix::process::Pid>);

impl Drop for ProcessGroup {
    fn drop(&mut self) {
        if let Some(pid) = self.0.take() {
            let _ = rustix::process::kill_process_group(pid, rustix::process::Signal::KILL);
        }
    }
}

/// Reads one output stream of a program line by line into the shared tail, redacted, and
/// relays it to the log at debug level.
async fn read_output(
    program: String,
    stream: Box<dyn AsyncRead + Send + Unpin>,
    tail: Arc<Mutex<OutputTail>>,
    redactor: Redactor,
) {
    let mut reader = BufReader::new(stream);
    let mut line = Vec::new();
    // Bytes, not text: a tool may print in the server's encoding.
    while matches!(reader.read_until(b'\n', &mut line).await, Ok(n) if n > 0) {
        let text = redactor.redact(String::from_utf8_lossy(&line).trim_end());
        line.clear();
        tracing::debug!(program = %program, line = %text, "migration program output");
        tail.lock()
            .unwrap_or_else(PoisonError::into_inner)
            .push(text);
    }
}

/// Replaces secrets (the database password, the configured environment's values) in
/// output that is kept or logged.
#[derive(Clone)]
pub struct Redactor(Arc<Vec<String>>);

impl Redactor {
    /// Hides every non-empty one of `secrets`.
    pub fn new(mut secrets: Vec<String>) -> Self {
        secrets.retain(|s| !s.is_empty());
        // Longer first, so a secret that contains another is replaced whole.
        secrets.sort_by_key(|s| std::cmp::Reverse(s.len()));
        Self(Arc::new(secrets))
    }

    /// Returns `text` with every secret replaced by `***`.
    pub fn redact(&self, text: &str) -> String {
        self.0.iter().fold(text.to_owned(), |text, secret| {
            text.replace(secret, REDACTED)
        })
    }
}

/// The last [`OUTPUT_TAIL_BYTES`] of a program's output, by line.
#[derive(Debug, Default)]
struct OutputTail {
    lines: VecDeque<String>,
    bytes: usize,
}

impl OutputTail {
    fn push(&mut self, mut line: String) {
        if line.len() > OUTPUT_TAIL_BYTES {
            let mut cut = line.len() - OUTPUT_TAIL_BYTES;
            while !line.is_char_boundary(cut) {
                cut += 1;
            }
            line.drain(..cut);
        }
        self.bytes += line.len() + 1;
        self.lines.push_back(line);
        while self.bytes > OUTPUT_TAIL_BYTES + 1 {
            match self.lines.pop_front() {
                Some(dropped) => self.bytes -= dropped.len() + 1,
                None => break,
            }
        }
    }

    fn text(&self) -> String {
        Vec::from(self.lines.clone()).join("\n")
    }

    /// The last `n` lines, or says there was no output.
    fn last_lines(&self, n: usize) -> String {
        if self.lines.is_empty() {
            return "no output".to_owned();
        }
        let skip = self.lines.len().saturating_sub(n);
        self.lines
            .iter()
            .skip(skip)
            .cloned()
            .collect::<Vec<_>>()
            .join("\n")
    }
}

#[cfg(test)]
mod tests {
    use std::time::Instant;

    use super::*;

    #[test]
    fn the_output_tail_keeps_the_last_bytes_by_line() {
        let mut tail = OutputTail::default();
        assert_eq!(tail.last_lines(3), "no output");
        for i in 0..1000 {
            tail.push(format!("line {i}"));
        }
        let text = tail.text();
        assert!(text.len() <= OUTPUT_TAIL_BYTES, "{}", text.len());
        assert!(text.ends_with("line 999"), "{text}");
        assert!(text.starts_with("line "), "whole lines only: {text}");
        assert_eq!(tail.last_lines(2), "line 998\nline 999");
        tail.push("é".repeat(OUTPUT_TAIL_BYTES));
        assert!(tail.text().len() <= OUTPUT_TAIL_BYTES);
        assert!(tail.text().starts_with('é'));
    }

    #[test]
    fn secrets_are_redacted_longest_first() {
        let redactor = Redactor::new(vec![
            "hunter2".to_owned(),
            "hunter2-and-more".to_owned(),
            String::new(),
        ]);
        assert_eq!(
            redactor.redact("token hunter2-and-more, password hunter2"),
            "token ***, password ***"
        );
    }

    #[tokio::test]
    async fn a_program_gets_its_environment_and_a_clear_error() {
        let dir = tempfile::tempdir().expect("tempdir");
        let argv: Vec<String> = [
            "/bin/sh",
            "-c",
            "echo \"db=$PGDATABASE token=$API_TOKEN cwd=$(pwd)\"; echo oops >&2; \
             test -z \"$CARGO_MANIFEST_DIR\" || echo leaked; exit 3",
        ]
        .iter()
        .map(|s| (*s).to_owned())
        .collect();
        let program = Program {
            argv: &argv,
            workdir: Some(dir.path()),
            env: vec![
                ("PGDATABASE".to_owned(), "app".to_owned()),
                ("API_TOKEN".to_owned(), "t0ps3cret".to_owned()),
            ],
            timeout: Duration::from_secs(30),
            redactor: Redactor::new(vec!["t0ps3cret".to_owned()]),
        };
        let run = program.run(&CancellationToken::new()).await;
        let why = run.result.expect_err("exit 3");
        assert!(why.starts_with("exited with status 3: "), "{why}");
        assert!(why.contains("oops"), "{why}");
        assert!(run.output.contains("db=app token=***"), "{}", run.output);
        assert!(
            run.output.contains(&format!(
                "cwd={}",
                dir.path().canonicalize().expect("dir").display()
            )),
            "{}",
            run.output
        );
        assert!(!run.output.contains("leaked"), "{}", run.output);
        assert!(!run.cancelled && run.started);
    }

    #[tokio::test]
    async fn a_program_past_its_timeout_is_killed_with_its_children() {
        let dir = tempfile::tempdir().expect("tempdir");
        let marker = dir.path().join("survived");
        let script = format!(
            "(sleep 1; touch {}) & echo started; sleep 60",
            marker.display()
        );
        let argv = vec!["/bin/sh".to_owned(), "-c".to_owned(), script];
        let program = Program {
            argv: &argv,
            workdir: None,
            env: vec![("PATH".to_owned(), "/usr/bin:/bin".to_owned())],
            timeout: Duration::from_millis(300),
            redactor: Redactor::new(Vec::new()),
        };
        let started = Instant::now();
        let run = program.run(&CancellationToken::new()).await;
        assert!(started.elapsed() < Duration::from_secs(10));
        let why = run.result.expect_err("timed out");
        assert!(
            why.starts_with(
                "did not finish within 300ms and was killed; raise [databases.migrate] timeout"
            ),
            "{why}"
        );
        assert!(why.ends_with("its output ended with: started"), "{why}");
        tokio::time::sleep(Duration::from_secs(2)).await;
        assert!(!marker.exists(), "the background child was killed too");
    }

    #[tokio::test]
    async fn a_missing_program_or_workdir_says_so() {
        let argv = vec!["/nonexistent/migrate".to_owned()];
        for (workdir, expected) in [
            (None, "cannot start \"/nonexistent/migrate\": "),
            (
                Some(Path::new("/nonexistent/dir")),
                "cannot start: its workdir /nonexistent/dir is not a directory",
            ),
        ] {
            let run = Program {
                argv: &argv,
                workdir,
                env: Vec::new(),
                timeout: Duration::from_secs(5),
                redactor: Redactor::new(Vec::new()),
            }
            .run(&CancellationToken::new())
            .await;
            let why = run.result.expect_err("missing");
            assert!(why.starts_with(expected), "{why}");
            assert!(!run.started, "{why}");
        }
    }
}
