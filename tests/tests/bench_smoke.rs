//! The data-path benchmark (`bench/datapath.sh`, see BENCHMARKS.md) still works: a tiny
//! `--smoke` run against the binaries just built sets up its own cluster, coordinator and
//! agent, measures every method once, and writes a report with a row for every method of
//! both datasets and a verdict for every target. How fast anything was is not checked here.

use std::process::{Command, Stdio};
use std::time::Duration;

use warden_tests::binaries::binaries;
use warden_tests::fixtures::say_skipped;
use warden_tests::script::run_bench_smoke;
use warden_tests::{TestDir, heavy_test_lock};

/// The smoke run takes seconds; this only stops a hung one.
const SMOKE_TIMEOUT: Duration = Duration::from_secs(300);

const DATASETS: [&str; 2] = ["pgb", "md5"];
const BACKUP_METHODS: [&str; 4] = [
    "(a) `warden backup --wait`",
    "(b) `pg_dump -Fc` (gzip)",
    "(c) `pg_dump -Fc -Z0 \\| zstd -T0`",
    "(d) `pg_dump -Fc -Z0 > /dev/null`",
];
const RESTORE_METHODS: [&str; 3] = [
    "(a) `warden restore --new-name --wait`",
    "(b) `pg_restore -j 2` of a -Z0 file",
    "(c) `zstd -dc \\| pg_restore`",
];

fn zstd_installed() -> bool {
    Command::new("zstd")
        .arg("--version")
        .stdout(Stdio::null())
        .stderr(Stdio::null())
        .status()
        .is_ok_and(|s| s.success())
}

#[test]
fn datapath_bench_smoke_run_reports_every_method_and_target() {
    if !zstd_installed() {
        say_skipped(
            "the zstd command-line tool is not installed (Debian/Ubuntu: apt-get install zstd); \
             bench/datapath.sh compares Warden with it",
        );
        return;
    }
    binaries();
    let _heavy = heavy_test_lock();
    let dir = TestDir::new("bench-smoke");
    // The bench's work directory (cluster, repository) goes inside the test's.
    let (_, text) = run_bench_smoke(
        "datapath.sh",
        "datapath.md",
        "warden-bench.",
        dir.path(),
        SMOKE_TIMEOUT,
    );
    let rows_of = |ds: &str, method: &str| {
        let prefix = format!("| {ds} | {method} |");
        text.lines().filter(|l| l.starts_with(&prefix)).count()
    };
    for ds in DATASETS {
        // One row in its table, and for Warden one more in the stages table.
        for method in BACKUP_METHODS.iter().chain(&RESTORE_METHODS) {
            assert_eq!(rows_of(ds, method), 1, "row {ds} {method} in:\n{text}");
        }
        let stage_rows = text
            .lines()
            .filter(|l| l.starts_with(&format!("| {ds} | ")) && !l.contains('`'))
            .count();
        // Datasets table, backup stages, restore stages.
        assert_eq!(stage_rows, 3, "dataset and stage rows of {ds} in:\n{text}");
    }
    let verdicts: Vec<&str> = text
        .lines()
        .filter(|l| l.ends_with("| PASS |") || l.ends_with("| MISS |"))
        .collect();
    // (a) ≤ 0.5 × (b) time and size on md5, (a) ≤ 1.10 × (c) and the restore target on both.
    assert_eq!(verdicts.len(), 6, "targets in:\n{text}");
}
