//! Runs a benchmark script (`bench/*.sh`) in its `--smoke` mode, as its smoke test does:
//! against the binaries of this build, its work directory inside the test's, its output in
//! files there, with a deadline after which it gets SIGTERM (so it stops what it started)
//! and then SIGKILL.

use std::fs::File;
use std::path::{Path, PathBuf};
use std::process::{Command, Stdio};
use std::time::{Duration, Instant};

use crate::binaries::profile_dir;
use crate::tail;

/// How long a script gets to stop what it started after SIGTERM.
const STOP_GRACE: Duration = Duration::from_secs(30);

/// Runs `bench/<script> --smoke` with its report at `dir/<report>` and its work directory
/// in `dir` (TMPDIR), and returns the report's path and text. Panics, with the tail of the
/// script's standard error, when it fails or runs longer than `timeout`, when it did not
/// print its report, or when it left a work directory (named `<work_prefix>...`) behind.
pub fn run_bench_smoke(
    script: &str,
    report: &str,
    work_prefix: &str,
    dir: &Path,
    timeout: Duration,
) -> (PathBuf, String) {
    let path = PathBuf::from(env!("CARGO_MANIFEST_DIR"))
        .join("../bench")
        .join(script);
    let report = dir.join(report);
    let (stdout, stderr) = (dir.join("stdout"), dir.join("stderr"));
    let mut child = Command::new("bash")
        .arg(&path)
        .arg("--smoke")
        .arg("--bin-dir")
        .arg(profile_dir())
        .arg("--out")
        .arg(&report)
        .env("TMPDIR", dir)
        .stdin(Stdio::null())
        .stdout(File::create(&stdout).expect("create stdout file"))
        .stderr(File::create(&stderr).expect("create stderr file"))
        .spawn()
        .unwrap_or_else(|e| panic!("run bench/{script}: {e}"));
    let started = Instant::now();
    let status = loop {
        if let Some(status) = child.try_wait().expect("wait for the bench") {
            break status;
        }
        if started.elapsed() > timeout {
            let _ = Command::new("kill")
                .arg("-TERM")
                .arg(child.id().to_string())
                .status();
            let stopping = Instant::now();
            while child.try_wait().ok().flatten().is_none() && stopping.elapsed() < STOP_GRACE {
                std::thread::sleep(Duration::from_millis(200));
            }
            let _ = child.kill();
            let _ = child.wait();
            panic!(
                "bench/{script} --smoke did not finish within {timeout:?}:\n{}",
                tail(&stderr, 40)
            );
        }
        std::thread::sleep(Duration::from_millis(200));
    };
    assert!(
        status.success(),
        "bench/{script} --smoke failed ({status}):\n{}",
        tail(&stderr, 60)
    );
    let text = std::fs::read_to_string(&report)
        .unwrap_or_else(|e| panic!("read the report {}: {e}", report.display()));
    assert_eq!(
        std::fs::read_to_string(&stdout)
            .expect("read stdout")
            .trim(),
        text.trim(),
        "the report is printed too"
    );
    let left: Vec<_> = std::fs::read_dir(dir)
        .expect("list test dir")
        .flatten()
        .map(|e| e.file_name().to_string_lossy().into_owned())
        .filter(|name| name.starts_with(work_prefix))
        .collect();
    assert!(left.is_empty(), "work directories left behind: {left:?}");
    (report, text)
}
