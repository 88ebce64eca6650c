//! Database credentials stay in the agent's config: after backups, a restore, a health check
//! and a failing backup (whose error is the likeliest place to echo a connection URL), the
//! password appears in no CLI output, audit event, log, store file or manifest, nor in the
//! agent's `--dump-config`; and the globals dump carries no role password hashes. Token
//! secrets are not in the coordinator's files either: it keeps their hashes only.

use warden_tests::binaries::binaries;
use warden_tests::repo::{GLOBALS_FILE, MANIFEST_FILE, files_below};
use warden_tests::{CliOutput, Fleet, free_port};

const PASSWORD: &str = "Pw-7f3a9c1e5b-SECRET";

fn assert_no_password_in(what: &str, bytes: &[u8]) {
    assert_no_secret_in("the database password", PASSWORD, what, bytes);
}

fn assert_no_secret_in(secret_name: &str, secret: &str, what: &str, bytes: &[u8]) {
    let needle = secret.as_bytes();
    if let Some(at) = bytes.windows(needle.len()).position(|w| w == needle) {
        let start = at.saturating_sub(120);
        let end = (at + needle.len() + 120).min(bytes.len());
        panic!(
            "{secret_name} appears in {what}: …{}…",
            String::from_utf8_lossy(&bytes[start..end])
        );
    }
}

fn assert_output_clean(out: &CliOutput) {
    assert_no_password_in(
        &format!("stdout of `warden {}`", out.args.join(" ")),
        out.stdout.as_bytes(),
    );
    assert_no_password_in(
        &format!("stderr of `warden {}`", out.args.join(" ")),
        out.stderr.as_bytes(),
    );
}

#[test]
fn database_password_never_leaves_the_agent_config() {
    let closed_port = free_port();
    let verbose = "debug,h2=info,hyper=info,hyper_util=info,tower=info,tonic=info";
    let mut fleet = Fleet::builder("credentials")
        .database("app")
        .url_password(PASSWORD)
        .agent_database(
            1,
            "unreachable",
            &format!("postgres://postgres:{PASSWORD}@127.0.0.1:{closed_port}/unreachable"),
        )
        .env("RUST_LOG", verbose)
        .build();
    let config = std::fs::read_to_string(fleet.agent(1).config_path()).unwrap();
    assert!(
        config.contains(PASSWORD),
        "the password is in the agent config"
    );
    let dumped = std::process::Command::new(&binaries().agent)
        .arg("--config")
        .arg(fleet.agent(1).config_path())
        .arg("--dump-config")
        .output()
        .expect("run warden-agent --dump-config");
    assert!(dumped.status.success(), "--dump-config: {dumped:?}");
    let dumped_text = String::from_utf8_lossy(&dumped.stdout);
    assert!(
        dumped_text.contains("***") && dumped_text.contains("[[databases]]"),
        "--dump-config shows the databases with masked passwords: {dumped_text}"
    );
    assert_no_password_in("warden-agent --dump-config (stdout)", &dumped.stdout);
    assert_no_password_in("warden-agent --dump-config (stderr)", &dumped.stderr);

    let cluster = fleet.cluster(1);
    cluster.psql(
        "app",
        "CREATE TABLE t (id int PRIMARY KEY, v text); INSERT INTO t SELECT g, md5(g::text) FROM generate_series(1, 500) g",
    );
    // A role with a password: the globals dump must keep the role but not its hash.
    cluster.psql(
        "postgres",
        "CREATE ROLE app_owner LOGIN PASSWORD 'RolePw-0b1d-SECRET'",
    );
    let role_hash = cluster.query_value(
        "postgres",
        "SELECT rolpassword FROM pg_authid WHERE rolname = 'app_owner'",
    );
    assert!(role_hash.starts_with("SCRAM-SHA-256$"), "{role_hash}");

    let mut outputs = Vec::new();
    let backup = fleet.cli().run(&["backup", "a1/app", "--wait"]);
    assert_eq!(backup.code, 0, "{backup}");
    let artifact = backup.json()["artifact_id"].as_str().unwrap().to_owned();
    let order_id = backup.json()["id"].as_str().unwrap().to_owned();
    outputs.push(backup);

    let health = fleet.cli().run(&["health", "a1/app", "--wait"]);
    assert_eq!(health.code, 0, "{health}");
    outputs.push(health);

    let restore = fleet
        .cli()
        .run(&["restore", &artifact, "--new-name", "copy", "--wait"]);
    assert_eq!(restore.code, 0, "{restore}");
    outputs.push(restore);
    assert_eq!(cluster.query_value("copy", "SELECT count(*) FROM t"), "500");

    // A backup that cannot connect fails, and its error must not echo the URL.
    let failing = fleet.cli().run(&["backup", "a1/unreachable", "--wait"]);
    assert_eq!(
        failing.code, 1,
        "a backup of an unreachable database fails: {failing}"
    );
    assert_eq!(failing.json()["state"], "failed", "{failing}");
    assert!(
        failing.json()["error"]
            .as_str()
            .is_some_and(|e| !e.is_empty()),
        "a failed order says why: {failing}"
    );
    let failing_id = failing.json()["id"].as_str().unwrap().to_owned();
    outputs.push(failing);

    let globals_path = fleet.artifact_dir("a1", &artifact).join(GLOBALS_FILE);
    let globals = zstd::decode_all(std::fs::File::open(&globals_path).expect("globals file"))
        .expect("decompress globals");
    let globals = String::from_utf8_lossy(&globals);
    assert!(
        globals.contains("app_owner"),
        "the globals dump has the roles: {globals}"
    );
    assert!(
        !globals.contains(&role_hash) && !globals.contains("SCRAM-SHA-256$"),
        "the globals dump carries a role password hash: {globals}"
    );

    for args in [
        vec!["agents"],
        vec!["databases"],
        vec!["orders", "--limit", "1000"],
        vec!["order", &order_id],
        vec!["order", &failing_id],
        vec!["artifacts", "--all"],
        vec!["audit", "--limit", "100000"],
        vec!["audit", "verify"],
    ] {
        let out = fleet.cli().run(&args);
        assert_eq!(out.code, 0, "{out}");
        outputs.push(out);
    }
    for out in &outputs {
        assert_output_clean(out);
    }

    // Logs, the store (including its WAL) and the repository's manifests. The store keeps
    // only hashes of tokens: neither the admin token nor the agent's enrollment token (used
    // up by now) is in any of its files.
    let admin_token = fleet.coordinator.admin_token().to_owned();
    let enrollment_token = fleet.cli().enrollment_token("a2");
    let coordinator_dir = fleet.coordinator.dir().to_path_buf();
    let agent_log = fleet.agent(1).log_path().to_path_buf();
    drop(fleet.agents.drain(..));
    fleet.coordinator.kill9();
    for file in files_below(&coordinator_dir) {
        let bytes = std::fs::read(&file).unwrap();
        let what = file.display().to_string();
        assert_no_password_in(&what, &bytes);
        assert_no_secret_in("the admin token", &admin_token, &what, &bytes);
        assert_no_secret_in("an enrollment token", &enrollment_token, &what, &bytes);
    }
    let agent_log_bytes = std::fs::read(&agent_log).unwrap();
    assert!(
        !agent_log_bytes.is_empty(),
        "the agent logged nothing at debug level"
    );
    assert_no_password_in("the agent log", &agent_log_bytes);
    for file in files_below(fleet.repo()) {
        if file.file_name().is_some_and(|n| n == MANIFEST_FILE) {
            assert_no_password_in(&file.display().to_string(), &std::fs::read(&file).unwrap());
        }
    }
}
