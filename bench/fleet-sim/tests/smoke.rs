//! The coordinator-scale benchmark (`bench/coordinator.sh`, see BENCHMARKS.md) still works:
//! a tiny `--smoke` run against the binaries just built starts a real coordinator, connects
//! 50 simulated agents, submits 100 backups at once and writes its report. Checked: every
//! agent registered, every order was accepted, reached its agent exactly once and succeeded,
//! no session was lost, the latency splits into its three legs, and the report has a verdict
//! for every target. The same holds for the round against the transport floor
//! (`warden-fleet-floor`), and the report sets the coordinator's latency against the floor's.
//! How fast anything was is not checked here.

use std::path::PathBuf;
use std::time::Duration;

use serde_json::Value;
use warden_tests::TestDir;
use warden_tests::binaries::{binaries, profile_dir};
use warden_tests::script::run_bench_smoke;

/// The smoke run takes about ten seconds; this only stops a hung one.
const SMOKE_TIMEOUT: Duration = Duration::from_secs(120);
const AGENTS: u64 = 50;
const ORDERS: u64 = 100;

#[test]
fn coordinator_bench_smoke_run_registers_every_agent_and_delivers_every_order_once() {
    // The coordinator and the CLI come from the harness's build; the simulator was built
    // with this test, into the same directory.
    binaries();
    for bin in [
        env!("CARGO_BIN_EXE_warden-fleet-sim"),
        env!("CARGO_BIN_EXE_warden-fleet-floor"),
    ] {
        assert_eq!(
            PathBuf::from(bin).parent(),
            Some(profile_dir().as_path()),
            "{bin} is not beside the other binaries"
        );
    }
    let dir = TestDir::new("coordinator-bench-smoke");
    // The bench's work directory (the coordinator's store) goes inside the test's.
    let (report, text) = run_bench_smoke(
        "coordinator.sh",
        "coordinator.md",
        "warden-coordinator-bench.",
        dir.path(),
        SMOKE_TIMEOUT,
    );
    let figures_path = report.with_extension("json");
    let figures: Value = serde_json::from_str(
        &std::fs::read_to_string(&figures_path)
            .unwrap_or_else(|e| panic!("read {}: {e}", figures_path.display())),
    )
    .expect("the raw figures are JSON");
    let at = |pointer: &str| -> &Value {
        figures
            .pointer(pointer)
            .unwrap_or_else(|| panic!("{pointer} missing from {figures:#}"))
    };
    assert_eq!(at("/agents"), AGENTS);
    assert_eq!(at("/registration/registered"), AGENTS, "{figures:#}");
    assert!(at("/registration/seconds").is_f64(), "{figures:#}");
    assert_eq!(at("/idle/connected"), AGENTS, "{figures:#}");
    for (pointer, expected) in [
        ("/dispatch/orders", ORDERS),
        ("/dispatch/accepted", ORDERS),
        ("/dispatch/received", ORDERS),
        ("/dispatch/succeeded", ORDERS),
        ("/dispatch/rejected", 0),
        ("/dispatch/received_more_than_once", 0),
        ("/dispatch/missing", 0),
        ("/dispatch/unexpected", 0),
        ("/sessions/sessions_lost", 0),
        ("/sessions/open_failures", 0),
    ] {
        assert_eq!(at(pointer), expected, "{pointer} in {figures:#}");
    }
    let p50 = at("/dispatch/latency_ms/p50").as_f64().expect("p50");
    let p99 = at("/dispatch/latency_ms/p99").as_f64().expect("p99");
    assert!(0.0 < p50 && p50 <= p99, "{figures:#}");
    // Every order's latency splits into three legs on the shared clock: each leg has its
    // percentiles, and no leg is negative beyond the coordinator's whole-millisecond stamps.
    for leg in ["to_coordinator", "in_coordinator", "to_agent"] {
        let p50 = at(&format!("/dispatch/breakdown_ms/{leg}/p50"))
            .as_f64()
            .unwrap_or_else(|| panic!("{leg} p50 in {figures:#}"));
        let max = at(&format!("/dispatch/breakdown_ms/{leg}/max"))
            .as_f64()
            .unwrap_or_else(|| panic!("{leg} max in {figures:#}"));
        assert!(-1.0 <= p50 && p50 <= max, "{leg} in {figures:#}");
    }
    assert!(
        at("/memory/after_dispatch/peak_rss_kib").as_u64() > Some(0),
        "{figures:#}"
    );

    // One round (--smoke): the coordinator's run above, then the floor's, which carried the
    // same orders to the same agents.
    assert_eq!(
        at("/rounds").as_array().map(Vec::len),
        Some(1),
        "{figures:#}"
    );
    for (pointer, expected) in [
        ("/rounds/0/floor/registration/registered", AGENTS),
        ("/rounds/0/floor/dispatch/accepted", ORDERS),
        ("/rounds/0/floor/dispatch/received", ORDERS),
        ("/rounds/0/floor/dispatch/succeeded", ORDERS),
        ("/rounds/0/floor/dispatch/received_more_than_once", 0),
        ("/rounds/0/floor/dispatch/missing", 0),
        ("/rounds/0/coordinator/dispatch/received", ORDERS),
    ] {
        assert_eq!(at(pointer), expected, "{pointer} in {figures:#}");
    }
    // Each side's CPU during the burst, for both servers.
    for pointer in [
        "/dispatch/burst/coordinator_cpu_cores",
        "/dispatch/burst/simulator_cpu_cores",
        "/rounds/0/floor/dispatch/burst/coordinator_cpu_cores",
        "/rounds/0/floor/dispatch/burst/simulator_cpu_cores",
    ] {
        assert!(at(pointer).is_f64(), "{pointer} in {figures:#}");
    }
    assert!(
        text.contains("CPU from the first submission until every order arrived"),
        "no burst CPU line in:\n{text}"
    );
    let floor_p99 = at("/rounds/0/floor/dispatch/latency_ms/p99")
        .as_f64()
        .expect("floor p99");
    let ratio = format!("{:.2}×", p99 / floor_p99);
    assert!(
        text.lines()
            .any(|l| l.starts_with("| median |") && l.contains(&ratio)),
        "no median row with the p99 ratio {ratio} in:\n{text}"
    );

    let verdicts = text
        .lines()
        .filter(|l| l.contains("| PASS |") || l.contains("| MISS |"))
        .count();
    // Registration time, idle CPU, peak RSS and dispatch latency.
    assert_eq!(verdicts, 4, "targets in:\n{text}");
}
