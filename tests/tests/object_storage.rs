//! Repositories in an S3 bucket (a real SeaweedFS server with credentials enforced), with
//! client-side encryption: a backup sealed on one agent restores on another agent's server;
//! nothing readable reaches the bucket; a damaged object, a missing key and a bad bucket
//! configuration are refused or shown, naming what is wrong; keys rotate; a killed upload
//! leaves nothing behind once the agent is back.

use std::path::Path;
use std::process::Command;

use serde_json::Value;
use warden_tests::binaries::binaries;
use warden_tests::fixtures::{large_table, load_rich_fixture};
use warden_tests::proxy::CuttingProxy;
use warden_tests::repo::files_below;
use warden_tests::s3::S3Server;
use warden_tests::{DbSnapshot, Fleet, ORDER_TIMEOUT, assert_same_data, heavy_test_lock};

/// A value no dump would hold by chance: readable in a plain compressed dump, it must not be
/// readable in the bucket.
const CANARY: &str = "Qz7!kW@vJ9#xPb$Yh2%NmR^tL5&cGd*Fs8(jUe)Ko3";

/// The `[s3]` section for `server`, with `secret` as the secret key.
fn s3_section(server: &S3Server, secret: &str) -> String {
    s3_section_at(server, &server.endpoint(), secret)
}

/// The `[s3]` section for `server` reached at `endpoint`, with `secret` as the secret key.
fn s3_section_at(server: &S3Server, endpoint: &str, secret: &str) -> String {
    format!(
        "[s3]\nendpoint = \"{endpoint}\"\nregion = \"{}\"\npath_style = true\n\
         access_key_id = \"{}\"\nsecret_access_key = \"{secret}\"\n",
        server.region(),
        server.access_key(),
    )
}

/// The `[encryption]` section listing `keys`, the first sealing.
fn encryption_section(keys: &[&Path]) -> String {
    let files: Vec<String> = keys
        .iter()
        .map(|k| format!("\"{}\"", k.display()))
        .collect();
    format!("[encryption]\nkey_files = [{}]\n", files.join(", "))
}

/// Runs `warden-agent key generate FILE` and returns the key id it printed.
fn generate_key(path: &Path) -> String {
    let out = Command::new(&binaries().agent)
        .args(["key", "generate"])
        .arg(path)
        .output()
        .expect("run warden-agent key generate");
    assert!(out.status.success(), "key generate: {out:?}");
    let id = String::from_utf8(out.stdout)
        .expect("utf-8")
        .trim()
        .to_owned();
    assert!(id.starts_with("age1"), "{id}");
    id
}

/// Every object key of the repository, under `warden/` in the test bucket.
fn objects(server: &S3Server) -> Vec<String> {
    server.list_objects(server.bucket())
}

fn manifest_of(server: &S3Server, agent: &str, artifact_id: &str) -> Value {
    let key = format!("warden/{agent}/{artifact_id}/manifest.json");
    serde_json::from_slice(&server.read_object(server.bucket(), &key)).expect("manifest JSON")
}

fn restore(fleet: &Fleet, artifact_id: &str, new_name: &str, target: &str) -> Value {
    let out = fleet.cli().run(&[
        "restore",
        artifact_id,
        "--new-name",
        new_name,
        "--target",
        target,
        "--wait",
    ]);
    out.json().clone()
}

/// A fleet of `agents` agents whose repository is the test bucket's `warden/` prefix,
/// sealing with `keys`.
fn fleet(name: &str, server: &S3Server, agents: usize, keys: &[&Path]) -> Fleet {
    let repository = format!("s3://{}/warden", server.bucket());
    let mut sections = s3_section(server, server.secret_key());
    if !keys.is_empty() {
        sections.push('\n');
        sections.push_str(&encryption_section(keys));
    }
    Fleet::builder(name)
        .agents(agents)
        .database("app")
        .repository_url(&repository)
        .agent_sections(&sections)
        // Repository checks ride on the health reports; retention runs every 2 s.
        .coordinator_args(&["--health-interval", "1s", "--prune-interval", "2s"])
        .build()
}

/// The status of agent `agent`'s repository in `warden status --json`, once reported.
fn repository_status(fleet: &Fleet, agent: &str) -> Option<Value> {
    let out = fleet.cli().run(&["status"]);
    out.json()["repositories"]
        .as_array()?
        .iter()
        .find(|r| r["agent"] == agent)
        .cloned()
}

#[test]
fn a_sealed_backup_in_a_bucket_restores_on_another_agent_and_keys_rotate() {
    let Some(server) = S3Server::start() else {
        return;
    };
    let _heavy = heavy_test_lock();
    let keys_dir = tempfile::tempdir().expect("tempdir");
    let (k1, k2) = (
        keys_dir.path().join("k1.key"),
        keys_dir.path().join("k2.key"),
    );
    let (k1_id, k2_id) = (generate_key(&k1), generate_key(&k2));
    let mut fleet = fleet("s3-sealed", &server, 2, &[&k1]);
    let source = fleet.cluster(1);
    load_rich_fixture(source, "app");
    source.psql_script(
        "app",
        &format!("CREATE TABLE secrets (v text); INSERT INTO secrets VALUES ('{CANARY}');"),
    );
    let snapshot = DbSnapshot::take(source, "app");

    // Both agents see the bucket.
    fleet.wait_until("both repositories reported ok", ORDER_TIMEOUT, || {
        ["a1", "a2"].iter().all(|agent| {
            repository_status(&fleet, agent)
                .is_some_and(|r| r["ok"] == true && r["agent_online"] == true)
        })
    });

    let order = fleet.cli().backup_ok("a1/app");
    let first = order["artifact_id"]
        .as_str()
        .expect("artifact id")
        .to_owned();
    let manifest = manifest_of(&server, "a1", &first);
    // The key stays on the agents: not in the manifest, the bucket or any coordinator file.
    let secret = std::fs::read_to_string(&k1).expect("key file");
    let secret = secret
        .lines()
        .find(|l| l.starts_with("AGE-SECRET-KEY-"))
        .expect("the identity line");
    for key in objects(&server) {
        let bytes = server.read_object(server.bucket(), &key);
        assert!(!contains(&bytes, secret.as_bytes()), "{key} holds the key");
    }
    for file in files_below(&fleet.dir().join("coordinator")) {
        let bytes = std::fs::read(&file).unwrap_or_default();
        assert!(
            !contains(&bytes, secret.as_bytes()),
            "{} holds the key",
            file.display()
        );
    }
    assert_eq!(
        manifest["encryption"]["key_id"],
        k1_id.as_str(),
        "{manifest:#}"
    );
    assert_eq!(
        manifest["encryption"]["scheme"], "age-x25519",
        "{manifest:#}"
    );
    assert_eq!(manifest["dump"]["name"], "dump.zst.age", "{manifest:#}");
    let listed = objects(&server);
    for file in ["dump.zst.age", "globals.sql.zst.age", "manifest.json"] {
        let key = format!("warden/a1/{first}/{file}");
        assert!(listed.contains(&key), "{key} not in {listed:?}");
    }
    assert!(
        !listed.iter().any(|k| k.ends_with(".upload")),
        "no upload marker stays: {listed:?}"
    );
    assert!(server.incomplete_uploads(server.bucket()).is_empty());
    let sealed = server.read_object(server.bucket(), &format!("warden/a1/{first}/dump.zst.age"));
    assert_eq!(
        sealed.len() as u64,
        manifest["dump"]["size_bytes"].as_u64().expect("size")
    );
    assert!(sealed.starts_with(b"age-encryption.org/v1\n"));

    // The canary survives compression as plaintext (the control), but no object holds it.
    let plain = Command::new("sh")
        .arg("-c")
        .arg(format!(
            "'{}' -Fc -Z0 --dbname='{}' | zstd -q -3",
            warden_tests::pg::pg_bindir().join("pg_dump").display(),
            source.url("app")
        ))
        .output()
        .expect("pg_dump | zstd");
    assert!(plain.status.success(), "{plain:?}");
    assert!(
        contains(&readable(&plain.stdout), CANARY.as_bytes()),
        "the control finds the canary: {}",
        String::from_utf8_lossy(&plain.stderr)
    );
    for key in &listed {
        let bytes = readable(&server.read_object(server.bucket(), key));
        assert!(
            !contains(&bytes, CANARY.as_bytes()),
            "{key} holds the canary"
        );
        assert!(
            !contains(&bytes, "数据库备份".as_bytes()),
            "{key} holds a row"
        );
    }

    // Agent a2 restores it onto its own server: identical data.
    let order = restore(&fleet, &first, "copy", "a2/app");
    assert_eq!(order["state"], "succeeded", "{order:#}\n{}", fleet.logs());
    assert_same_data(&snapshot, &DbSnapshot::take(fleet.cluster(2), "copy"));

    // Pointed at another store (same URL, another endpoint), a2 finds nothing: that is a
    // wrong repository, not a missing artifact, and the artifact stays complete.
    let elsewhere = S3Server::start().expect("a second server");
    let here = s3_section(&server, server.secret_key());
    let there = s3_section(&elsewhere, elsewhere.secret_key());
    fleet
        .agent(2)
        .reconfigure(|c| c.sections = c.sections.replace(&here, &there));
    fleet.wait_agent_online("a2", true);
    let order = restore(&fleet, &first, "elsewhere", "a2/app");
    assert_eq!(order["state"], "failed", "{order:#}");
    let error = order["error"].as_str().expect("error");
    assert!(error.contains("holds nothing of agent a1"), "{error}");
    assert_eq!(order["artifact_corrupt"], false, "{order:#}");
    let listed = fleet.cli().artifacts(Some("a1/app"), true);
    assert!(
        listed
            .iter()
            .any(|a| a["id"] == first.as_str() && a["state"] == "complete"),
        "{listed:#?}"
    );
    fleet
        .agent(2)
        .reconfigure(|c| c.sections = c.sections.replace(&there, &here));
    fleet.wait_agent_online("a2", true);
    drop(elsewhere);

    // Rotation: a1 seals with k2 from now on, and still opens what k1 sealed.
    let k1_only = encryption_section(&[&k1]);
    let rotated = encryption_section(&[&k2, &k1]);
    fleet
        .agent(1)
        .reconfigure(|c| c.sections = c.sections.replace(&k1_only, &rotated));
    fleet.wait_agent_online("a1", true);
    let second = fleet.cli().backup_ok("a1/app")["artifact_id"]
        .as_str()
        .expect("artifact id")
        .to_owned();
    assert_eq!(
        manifest_of(&server, "a1", &second)["encryption"]["key_id"],
        k2_id.as_str()
    );
    let order = restore(&fleet, &first, "old_key", "a1/app");
    assert_eq!(order["state"], "succeeded", "{order:#}\n{}", fleet.logs());
    assert_same_data(&snapshot, &DbSnapshot::take(fleet.cluster(1), "old_key"));

    // a2 holds k1 only: the k2 artifact is refused naming k2, and its server is untouched.
    let databases_before = fleet
        .cluster(2)
        .query_value("postgres", "SELECT count(*) FROM pg_database");
    let order = restore(&fleet, &second, "never", "a2/app");
    assert_eq!(order["state"], "failed", "{order:#}");
    let error = order["error"].as_str().expect("error");
    assert!(error.contains(&k2_id), "names the key it needs: {error}");
    assert!(error.contains("nothing was changed"), "{error}");
    assert!(!fleet.cluster(2).database_exists("never"));
    assert_eq!(
        fleet
            .cluster(2)
            .query_value("postgres", "SELECT count(*) FROM pg_database"),
        databases_before
    );

    // Retention deletes from the bucket too: keep only the newest backup.
    let policy = fleet.dir().join("fleet.toml");
    std::fs::write(
        &policy,
        "[[retention]]\nname = \"newest\"\nselector = \"\"\nkeep_days = 0\nkeep_last = 1\n",
    )
    .expect("policy");
    let applied = fleet
        .cli()
        .json(&["apply", "-f", policy.to_str().expect("utf-8")]);
    assert_eq!(applied["applied"], true, "{applied:#}");
    fleet.wait_until(
        "the expired artifact's objects gone from the bucket",
        ORDER_TIMEOUT,
        || !objects(&server).iter().any(|k| k.contains(&first)),
    );
    assert!(
        objects(&server).iter().any(|k| k.contains(&second)),
        "the newest is kept: {:?}",
        objects(&server)
    );

    // One flipped byte in the newest stored dump: refused before pg_restore touches
    // anything.
    let second_key = format!("warden/a1/{second}/dump.zst.age");
    let mut damaged = server.read_object(server.bucket(), &second_key);
    let middle = damaged.len() / 2;
    damaged[middle] ^= 0x01;
    server.write_object(server.bucket(), &second_key, &damaged);
    let order = restore(&fleet, &second, "damaged", "a1/app");
    assert_eq!(order["state"], "failed", "{order:#}");
    let error = order["error"].as_str().expect("error");
    assert!(
        error.contains("is corrupt") && error.contains("sha256"),
        "{error}"
    );
    assert!(!fleet.cluster(1).database_exists("damaged"));
}

#[test]
fn a_download_cut_off_midway_resumes_where_it_broke_off() {
    let Some(server) = S3Server::start() else {
        return;
    };
    let target = server
        .endpoint()
        .trim_start_matches("http://")
        .parse()
        .expect("IP:PORT");
    let proxy = CuttingProxy::start(target);
    let mut fleet = Fleet::builder("s3-resume")
        .database("app")
        .repository_url(&format!("s3://{}/warden", server.bucket()))
        .agent_sections(&s3_section_at(&server, &proxy.url(), server.secret_key()))
        .build();
    load_rich_fixture(fleet.cluster(1), "app");
    let snapshot = DbSnapshot::take(fleet.cluster(1), "app");
    let artifact = fleet.cli().backup_ok("a1/app")["artifact_id"]
        .as_str()
        .expect("artifact id")
        .to_owned();
    let size = manifest_of(&server, "a1", &artifact)["dump"]["size_bytes"]
        .as_u64()
        .expect("size");

    // The first read of the dump is cut off every 40 KB, more often than the S3 client
    // retries on its own (5 times): the agent resumes it from where it broke off.
    proxy.arm(40_000, 8);
    assert!(size > 9 * 40_000, "the dump is {size} bytes");
    let out = fleet
        .cli()
        .run(&["restore", &artifact, "--new-name", "resumed", "--wait"]);
    let order = out.json();
    assert_eq!(order["state"], "succeeded", "{order:#}\n{}", fleet.logs());
    assert_eq!(proxy.cuts(), 8, "the download was cut");
    assert_same_data(&snapshot, &DbSnapshot::take(fleet.cluster(1), "resumed"));
    let log = fleet.agent(1).log_tail(100);
    assert!(log.contains("download broke off; resuming"), "{log}");
}

/// What anyone holding `bytes` can read without a key: the bytes themselves and, when they
/// are zstd frames, what they decompress to.
fn readable(bytes: &[u8]) -> Vec<u8> {
    use std::io::Write;
    let mut zstd = Command::new("zstd")
        .args(["-dcq"])
        .stdin(std::process::Stdio::piped())
        .stdout(std::process::Stdio::piped())
        .stderr(std::process::Stdio::null())
        .spawn()
        .expect("zstd");
    let mut stdin = zstd.stdin.take().expect("stdin");
    let input = bytes.to_vec();
    let feeding = std::thread::spawn(move || {
        let _ = stdin.write_all(&input);
    });
    let out = zstd.wait_with_output().expect("zstd output");
    let _ = feeding.join();
    let mut all = bytes.to_vec();
    all.extend_from_slice(&out.stdout);
    all
}

/// Whether `needle` occurs in `haystack`.
fn contains(haystack: &[u8], needle: &[u8]) -> bool {
    haystack.windows(needle.len()).any(|w| w == needle)
}

#[test]
fn a_wrong_secret_key_shows_in_status_with_the_storage_error() {
    let Some(server) = S3Server::start() else {
        return;
    };
    // The credentials come from the standard AWS variables, the rest from [s3].
    let endpoint_only = format!(
        "[s3]\nendpoint = \"{}\"\nregion = \"{}\"\npath_style = true\n",
        server.endpoint(),
        server.region()
    );
    let mut fleet = Fleet::builder("s3-wrong-key")
        .database("app")
        .repository_url(&format!("s3://{}/warden", server.bucket()))
        .agent_sections(&endpoint_only)
        .env("AWS_ACCESS_KEY_ID", server.access_key())
        .env("AWS_SECRET_ACCESS_KEY", server.secret_key())
        .coordinator_args(&["--health-interval", "1s"])
        .build();
    fleet.wait_until("the repository reported ok", ORDER_TIMEOUT, || {
        repository_status(&fleet, "a1").is_some_and(|r| r["ok"] == true)
    });
    fleet.cli().backup_ok("a1/app");

    // A secret key in the file wins over the environment's: a wrong one.
    let wrong = s3_section(&server, "not-the-secret");
    fleet
        .agent(1)
        .reconfigure(|c| c.sections = c.sections.replace(&endpoint_only, &wrong));
    fleet.wait_agent_online("a1", true);
    let mut shown = None;
    fleet.wait_until(
        "a failing repository in `warden status`",
        ORDER_TIMEOUT,
        || {
            shown = repository_status(&fleet, "a1").filter(|r| r["ok"] == false);
            shown.is_some()
        },
    );
    let shown = shown.expect("shown");
    let error = shown["error"].as_str().expect("error");
    assert!(
        error.contains("SignatureDoesNotMatch"),
        "the storage's own error: {shown:#}"
    );
    assert!(!error.contains("not-the-secret"), "{error}");
    let status = fleet.cli().run(&["status"]);
    let database = &status.json()["databases"][0];
    assert_eq!(database["health"], "degraded", "{database:#}");
    assert!(
        database["health_reasons"]
            .as_array()
            .expect("reasons")
            .iter()
            .any(|r| r
                .as_str()
                .is_some_and(|r| r.contains("cannot use its repository"))),
        "{database:#}"
    );
    // A backup fails with the same error, and leaves nothing behind.
    let before = objects(&server);
    let out = fleet.cli().run(&["backup", "a1/app", "--wait"]);
    assert_ne!(out.code, 0, "{out}");
    assert!(out.to_string().contains("SignatureDoesNotMatch"), "{out}");
    assert_eq!(objects(&server), before);

    // A bucket that does not exist shows as such.
    let right = s3_section(&server, server.secret_key());
    fleet.agent(1).reconfigure(|c| {
        c.sections = c.sections.replace(&wrong, &right);
        c.repository_url = Some("s3://no-such-bucket/warden".to_owned());
    });
    fleet.wait_agent_online("a1", true);
    let mut shown = None;
    fleet.wait_until(
        "the missing bucket in `warden status`",
        ORDER_TIMEOUT,
        || {
            shown = repository_status(&fleet, "a1")
                .filter(|r| r["repository"] == "s3://no-such-bucket/warden" && r["ok"] == false);
            shown.is_some()
        },
    );
    let shown = shown.expect("shown");
    assert!(
        shown["error"]
            .as_str()
            .is_some_and(|e| e.contains("NoSuchBucket")),
        "{shown:#}"
    );
}

#[test]
fn killing_the_agent_mid_upload_leaves_no_manifest_and_no_unfinished_upload() {
    let Some(server) = S3Server::start() else {
        return;
    };
    let _heavy = heavy_test_lock();
    let mut fleet = fleet("s3-kill", &server, 1, &[]);
    // About 400 MB of dump: an upload of many parts, seconds long.
    large_table(fleet.cluster(1), "app", 3_000_000);
    let out = fleet.cli().run(&["backup", "a1/app"]);
    assert_eq!(out.code, 0, "{out}");
    let order_id = out.json()["id"].as_str().expect("order id").to_owned();
    let mut marker = None;
    fleet.wait_until("an upload under way", ORDER_TIMEOUT, || {
        marker = objects(&server)
            .into_iter()
            .find(|k| k.ends_with("/dump.zst.upload"));
        marker.is_some()
    });
    fleet.agent(1).kill9();
    // warden/a1/<artifact_id>/dump.zst.upload
    let marker = marker.expect("marker");
    let killed = marker.split('/').nth(2).expect("artifact id").to_owned();
    let listed = objects(&server);
    assert!(
        !listed.iter().any(|k| k.ends_with("manifest.json")),
        "no manifest before the dump completed: {listed:?}"
    );
    assert!(
        !server.incomplete_uploads(server.bucket()).is_empty(),
        "the kill left an unfinished upload (the control)"
    );

    // Back, the agent aborts the upload and removes what the artifact had before it takes
    // orders; the coordinator then runs the backup again, as a new artifact.
    fleet.agent(1).start();
    let order = fleet.wait_order(&order_id, &["succeeded", "failed"], ORDER_TIMEOUT);
    assert_eq!(order["state"], "succeeded", "{order:#}\n{}", fleet.logs());
    let retried = order["artifact_id"].as_str().expect("artifact id");
    assert_ne!(retried, killed);
    assert!(
        server.incomplete_uploads(server.bucket()).is_empty(),
        "no unfinished upload is left"
    );
    let listed = objects(&server);
    assert!(
        !listed.iter().any(|k| k.contains(&killed)),
        "nothing of the killed artifact is left: {listed:?}"
    );
    assert!(
        listed.contains(&format!("warden/a1/{retried}/manifest.json")),
        "{listed:?}"
    );
    assert!(fleet.agent(1).log_tail(200).contains(&format!(
        "removed unfinished artifact location=s3://warden-test/warden/a1/{killed}"
    )));
}

/// The most memory an agent may hold while it backs up into a bucket, whatever the size of
/// the database: the README's bound. The data path holds at most 24 MiB of upload parts, 5
/// MiB of chunks and zstd's buffers; the rest is the agent itself.
const AGENT_RSS_BOUND_BYTES: u64 = 256 << 20;

#[test]
fn a_2_gb_dump_streams_into_the_bucket_in_bounded_memory() {
    let Some(server) = S3Server::start() else {
        return;
    };
    let _heavy = heavy_test_lock();
    let keys_dir = tempfile::tempdir().expect("tempdir");
    let key = keys_dir.path().join("k.key");
    generate_key(&key);
    let mut fleet = fleet("s3-2gb", &server, 1, &[&key]);
    // 16 million rows of about 130 bytes of dump each: 2 GB.
    large_table(fleet.cluster(1), "app", 16_000_000);
    let order = fleet.cli().backup_ok("a1/app");
    let artifact_id = order["artifact_id"].as_str().expect("artifact id");
    let manifest = manifest_of(&server, "a1", artifact_id);
    let raw_bytes = manifest["dump"]["raw_bytes"].as_u64().expect("raw bytes");
    assert!(raw_bytes >= 2_000_000_000, "{manifest:#}");
    let pid = fleet.agent(1).pid().expect("the agent runs");
    let peak = peak_rss_bytes(pid);
    eprintln!(
        "agent peak RSS {} MiB for a {} MiB dump ({} MiB stored)",
        peak >> 20,
        raw_bytes >> 20,
        manifest["dump"]["size_bytes"].as_u64().unwrap_or_default() >> 20
    );
    assert!(
        peak < AGENT_RSS_BOUND_BYTES,
        "agent peak RSS {peak} bytes over the bound {AGENT_RSS_BOUND_BYTES}"
    );
}

/// The peak resident set of process `pid` (`VmHWM`), in bytes.
fn peak_rss_bytes(pid: u32) -> u64 {
    let status = std::fs::read_to_string(format!("/proc/{pid}/status")).expect("proc status");
    status
        .lines()
        .find_map(|l| l.strip_prefix("VmHWM:"))
        .and_then(|v| v.trim().strip_suffix("kB"))
        .and_then(|v| v.trim().parse::<u64>().ok())
        .map(|kb| kb * 1024)
        .expect("VmHWM in /proc/PID/status")
}
