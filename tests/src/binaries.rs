//! Finds the Warden binaries in the workspace target directory and builds them once per test
//! process, so a test never runs a stale binary.

use std::path::PathBuf;
use std::process::Command;
use std::sync::OnceLock;

/// The three binaries the end-to-end tests run.
#[derive(Debug, Clone)]
pub struct Binaries {
    pub coordinator: PathBuf,
    pub agent: PathBuf,
    pub cli: PathBuf,
}

/// Returns the profile directory the tests were built into (`target/debug`), derived from
/// the test executable's own path (`target/debug/deps/<test>-<hash>`), which honours
/// `CARGO_TARGET_DIR` and `--target-dir`.
pub fn profile_dir() -> PathBuf {
    let exe = std::env::current_exe().expect("current_exe");
    let deps = exe
        .parent()
        .expect("test executable has a parent directory");
    let profile = if deps.file_name().is_some_and(|n| n == "deps") {
        deps.parent().expect("deps has a parent")
    } else {
        deps
    };
    profile.to_path_buf()
}

/// Returns the target directory (the parent of the profile directory).
pub fn target_dir() -> PathBuf {
    let profile = profile_dir();
    profile.parent().map(|p| p.to_path_buf()).unwrap_or(profile)
}

/// Builds the binaries (once per process) and returns their paths.
pub fn binaries() -> &'static Binaries {
    static BINARIES: OnceLock<Binaries> = OnceLock::new();
    BINARIES.get_or_init(|| {
        let profile = profile_dir();
        if std::env::var_os("WARDEN_TESTS_NO_BUILD").is_none() {
            build(&profile);
        }
        let found = Binaries {
            coordinator: profile.join("warden-coordinator"),
            agent: profile.join("warden-agent"),
            cli: profile.join("warden"),
        };
        for bin in [&found.coordinator, &found.agent, &found.cli] {
            assert!(
                bin.is_file(),
                "binary {} not found after building; is the target directory right?",
                bin.display()
            );
        }
        found
    })
}

fn build(profile: &std::path::Path) {
    let cargo = std::env::var_os("CARGO").unwrap_or_else(|| "cargo".into());
    let manifest = PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("../Cargo.toml");
    let mut cmd = Command::new(&cargo);
    cmd.args(["build", "--bins", "--manifest-path"])
        .arg(&manifest)
        .args([
            "-p",
            "warden-coordinator",
            "-p",
            "warden-agent",
            "-p",
            "warden-cli",
        ])
        .arg("--target-dir")
        .arg(target_dir());
    match profile.file_name().and_then(|n| n.to_str()) {
        Some("debug") | None => {}
        Some("release") => {
            cmd.arg("--release");
        }
        Some(other) => {
            cmd.args(["--profile", other]);
        }
    }
    let out = cmd
        .output()
        .unwrap_or_else(|e| panic!("run {cargo:?} build: {e}"));
    assert!(
        out.status.success(),
        "building the warden binaries failed ({}):\n{}",
        out.status,
        String::from_utf8_lossy(&out.stderr)
    );
}
