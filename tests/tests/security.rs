//! Security end to end, with real processes over real TLS: agents are refused without a
//! certificate, with an expired one, with one from another CA, with one for another agent,
//! and once revoked; enrollment tokens work once, before expiry, for their agent; live
//! agents renew their certificates; each operator role can do exactly its list; and every
//! refusal is in the audit log with the caller and the reason.

use std::collections::BTreeMap;
use std::path::{Path, PathBuf};
use std::time::Duration;

use serde_json::Value;
use tokio_stream::StreamExt;
use warden_proto::v1::agent_service_client::AgentServiceClient;
use warden_proto::v1::{self as pb, agent_message};
use warden_shared::pki::{self, CertificateAuthority};
use warden_tests::process::{enroll, write_agent_config};
use warden_tests::repo::files_below;
use warden_tests::{Agent, AgentConfig, Cli, Fleet};

const WAIT: Duration = Duration::from_secs(30);

/// The audit events of `action` that were refused, oldest first.
fn refusals(cli: &Cli, action: &str) -> Vec<Value> {
    cli.audit()
        .into_iter()
        .filter(|e| {
            e["action"] == action
                && e["outcome"]
                    .as_str()
                    .is_some_and(|o| o.starts_with("refused: "))
        })
        .collect()
}

/// Waits until a refused `action` is audited with `reason` in its outcome; returns it.
fn wait_refusal(fleet: &Fleet, action: &str, reason: &str) -> Value {
    let mut found = None;
    fleet.wait_until(
        &format!("a refused {action} saying {reason:?}"),
        WAIT,
        || {
            found = refusals(fleet.cli(), action)
                .into_iter()
                .find(|e| e["outcome"].as_str().is_some_and(|o| o.contains(reason)));
            found.is_some()
        },
    );
    found.expect("found")
}

/// An agent configuration for the fleet's coordinator with no databases.
fn agent_config(fleet: &Fleet, name: &str, tls_dir: Option<PathBuf>) -> AgentConfig {
    AgentConfig {
        name: name.to_owned(),
        coordinator: fleet.coordinator.url(),
        insecure_dev: false,
        tls_dir,
        repository_dir: fleet.repo().to_path_buf(),
        repository_url: None,
        sections: String::new(),
        labels: BTreeMap::new(),
        staging_dir: None,
        databases: Vec::new(),
    }
}

fn ca_cert(fleet: &Fleet) -> PathBuf {
    fleet
        .coordinator
        .ca_cert()
        .expect("the coordinator serves TLS")
}

/// Enrolls `config` in `dir` with a fresh token and asserts it worked.
fn enroll_ok(fleet: &Fleet, dir: &Path, config: &AgentConfig) {
    let path = write_agent_config(dir, config);
    let token = fleet.cli().enrollment_token(&config.name);
    let out = enroll(&path, &token, &ca_cert(fleet));
    assert!(out.status.success(), "enroll {}: {out:?}", config.name);
}

/// Connects to the AgentService over TLS without a client certificate and says Hello.
fn connect_without_certificate(fleet: &Fleet, agent: &str) -> tonic::Status {
    let runtime = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
        .expect("runtime");
    runtime.block_on(async {
        let pem = std::fs::read(ca_cert(fleet)).expect("ca.pem");
        let channel = tonic::transport::Endpoint::from_shared(fleet.coordinator.url())
            .expect("endpoint")
            .tls_config(
                tonic::transport::ClientTlsConfig::new()
                    .ca_certificate(tonic::transport::Certificate::from_pem(pem)),
            )
            .expect("tls")
            .connect()
            .await
            .expect("TLS without a client certificate connects");
        let hello = pb::AgentMessage {
            msg: Some(agent_message::Msg::Hello(pb::Hello {
                agent: agent.to_owned(),
                ..Default::default()
            })),
        };
        let result = AgentServiceClient::new(channel)
            .connect(tokio_stream::iter([hello]))
            .await;
        match result {
            Err(status) => status,
            Ok(response) => {
                let mut inbound = response.into_inner();
                match inbound.next().await {
                    Some(Err(status)) => status,
                    other => panic!("an agent without a certificate was served: {other:?}"),
                }
            }
        }
    })
}

#[test]
fn agents_without_a_valid_certificate_for_their_name_are_refused_and_audited() {
    let mut fleet = Fleet::builder("security-refusals").build();
    let dir = fleet.dir().to_path_buf();

    // No certificate at all: the TLS handshake lets it through, the call does not.
    let status = connect_without_certificate(&fleet, "a1");
    assert_eq!(status.code(), tonic::Code::Unauthenticated, "{status:?}");
    assert!(
        status.message().contains("no client certificate"),
        "{status:?}"
    );
    let event = wait_refusal(&fleet, "agent.connect", "no client certificate");
    assert_eq!(event["actor"], "unverified-agent:unknown", "{event:#}");
    assert!(
        event["params"]["peer"]
            .as_str()
            .is_some_and(|p| p.starts_with("127.0.0.1:"))
    );

    // A certificate from another CA, for a name this coordinator never heard of.
    let (other_ca, _) = CertificateAuthority::generate("Another CA", WAIT * 100).expect("CA");
    let forged_dir = dir.join("forged");
    let keyed = pki::agent_key_and_csr("a9").expect("csr");
    let forged = other_ca
        .sign_agent_csr(&keyed.csr_pem, "a9", WAIT * 100)
        .expect("sign");
    std::fs::create_dir_all(forged_dir.join("tls")).expect("dir");
    pki::write_private(
        &forged_dir.join("tls/agent-key.pem"),
        keyed.key_pem.as_bytes(),
    )
    .expect("key");
    std::fs::write(forged_dir.join("tls/agent.pem"), &forged.cert_pem).expect("cert");
    std::fs::copy(ca_cert(&fleet), forged_dir.join("tls/ca.pem")).expect("ca");
    let forged_agent = Agent::start_new(
        &forged_dir,
        agent_config(&fleet, "a9", None),
        &BTreeMap::new(),
        None,
    );
    let event = wait_refusal(
        &fleet,
        "agent.connect",
        "was not issued by this coordinator's CA",
    );
    // Its name is only a claim: the audit log says so.
    assert_eq!(event["actor"], "unverified-agent:a9", "{event:#}");
    drop(forged_agent);

    // A valid certificate of agent a8 cannot speak for a7.
    let a8_tls = dir.join("a8").join("tls");
    enroll_ok(&fleet, &dir.join("a8"), &agent_config(&fleet, "a8", None));
    let impostor = Agent::start_new(
        &dir.join("a7"),
        agent_config(&fleet, "a7", Some(a8_tls)),
        &BTreeMap::new(),
        None,
    );
    let event = wait_refusal(&fleet, "agent.connect", "cannot speak for agent a7");
    assert_eq!(event["actor"], "agent:a8", "{event:#}");
    assert_eq!(event["target"], "a7", "{event:#}");
    drop(impostor);

    // None of them got in; the enrolled agent is untouched.
    let names: Vec<String> = fleet
        .cli()
        .agents()
        .iter()
        .map(|a| a["name"].as_str().unwrap_or_default().to_owned())
        .collect();
    assert_eq!(names, ["a1"], "only the enrolled agent registered");
    fleet.wait_agent_online("a1", true);

    // A revoked agent loses its session and cannot come back until it enrolls again.
    let revoked = fleet
        .cli()
        .json(&["agent", "revoke", "a1", "--reason", "host lost"]);
    assert_eq!(revoked["certificates_revoked"], 1, "{revoked:#}");
    fleet.wait_agent_online("a1", false);
    let event = wait_refusal(&fleet, "agent.connect", "agent a1 is revoked");
    assert_eq!(event["actor"], "agent:a1", "{event:#}");
    let agent_dir = fleet
        .agent(1)
        .config_path()
        .parent()
        .expect("dir")
        .to_path_buf();
    let token = fleet.cli().enrollment_token("a1");
    let out = enroll(&agent_dir.join("agent.toml"), &token, &ca_cert(&fleet));
    assert!(out.status.success(), "enroll again: {out:?}");
    // The running agent presents the new certificate at its next reconnect.
    fleet.wait_agent_online("a1", true);
}

#[test]
fn enrollment_tokens_work_once_before_they_expire_and_for_their_agent_only() {
    let fleet = Fleet::builder("security-enroll").build();
    let dir = fleet.dir().to_path_buf();
    let ca = ca_cert(&fleet);
    let enroll_as = |name: &str, token: &str| {
        let path = write_agent_config(&dir.join(name), &agent_config(&fleet, name, None));
        let out = enroll(&path, token, &ca);
        let stderr = String::from_utf8_lossy(&out.stderr).into_owned();
        (out.status.success(), stderr)
    };

    let expiring = fleet
        .cli()
        .json(&["token", "create", "--agent", "b1", "--ttl", "1s"]);
    std::thread::sleep(Duration::from_millis(1500));
    let (ok, stderr) = enroll_as("b1", expiring["secret"].as_str().expect("secret"));
    assert!(!ok && stderr.contains("expired"), "{stderr}");

    let token = fleet.cli().enrollment_token("b2");
    let (ok, stderr) = enroll_as("b3", &token);
    assert!(
        !ok && stderr.contains("is for agent b2, not b3"),
        "{stderr}"
    );
    let (ok, stderr) = enroll_as("b2", &token);
    assert!(ok, "the token's own agent enrolls: {stderr}");
    // The key was made on the agent's side and stayed there: no coordinator file has it.
    let key = std::fs::read_to_string(dir.join("b2/tls/agent-key.pem")).expect("b2's key");
    let key_body: String = key.lines().filter(|l| !l.starts_with("-----")).collect();
    assert!(key_body.len() > 40, "{key}");
    for file in files_below(fleet.coordinator.dir()) {
        let text: String = String::from_utf8_lossy(&std::fs::read(&file).expect("read"))
            .lines()
            .collect();
        assert!(
            !text.contains(&key_body),
            "the agent's key is in {}",
            file.display()
        );
    }
    let (ok, stderr) = enroll_as("b2", &token);
    assert!(!ok && stderr.contains("already used"), "{stderr}");
    let (ok, stderr) = enroll_as("b4", "wdn_en_0000");
    assert!(
        !ok && stderr.contains("unknown enrollment token"),
        "{stderr}"
    );

    let refused: Vec<String> = refusals(fleet.cli(), "agent.enroll")
        .iter()
        .map(|e| format!("{} {}", e["actor"], e["outcome"]))
        .collect();
    assert_eq!(refused.len(), 4, "{refused:#?}");
    for (agent, reason) in [
        ("b1", "expired"),
        ("b3", "is for agent b2"),
        ("b2", "already used"),
        ("b4", "unknown enrollment token"),
    ] {
        assert!(
            refused
                .iter()
                .any(|r| r.contains(&format!("unverified-agent:{agent}")) && r.contains(reason)),
            "no refusal of {agent} ({reason}) in {refused:#?}"
        );
    }
    let enrolled: Vec<Value> = fleet
        .cli()
        .audit()
        .into_iter()
        .filter(|e| e["action"] == "agent.enroll" && e["outcome"] == "ok")
        .collect();
    // a1 (by the harness) and b2.
    assert_eq!(enrolled.len(), 2, "{enrolled:#?}");
    // The tokens list shows what happened to each, never a secret.
    let tokens = fleet.cli().json(&["tokens"]);
    let text = tokens.to_string();
    assert!(!text.contains(&token), "{text}");
    let b2 = tokens
        .as_array()
        .expect("array")
        .iter()
        .find(|t| t["name"] == "b2")
        .expect("b2's token");
    assert!(b2["used"].is_string(), "{b2:#}");
}

#[test]
fn an_expired_certificate_is_refused_and_live_agents_renew_theirs_in_time() {
    // Certificates live 12 s here: agents renew when 4 s are left.
    let mut fleet = Fleet::builder("security-expiry")
        .coordinator_args(&["--agent-cert-ttl", "12s"])
        .build();
    let dir = fleet.dir().to_path_buf();
    let c1 = agent_config(&fleet, "c1", None);
    enroll_ok(&fleet, &dir.join("c1"), &c1);
    let enrolled_at = std::time::Instant::now();

    // a1 runs all along and renews; c1 sits until its certificate has expired.
    std::thread::sleep(Duration::from_secs(13).saturating_sub(enrolled_at.elapsed()));
    let late = Agent::start_new(&dir.join("c1"), c1, &BTreeMap::new(), None);
    let event = wait_refusal(&fleet, "agent.connect", "expired");
    assert_eq!(event["actor"], "unverified-agent:c1", "{event:#}");
    // Its renewal is refused too: an expired certificate cannot buy a new one.
    wait_refusal(&fleet, "agent.renew", "expired");
    drop(late);

    let renewals: Vec<Value> = fleet
        .cli()
        .audit()
        .into_iter()
        .filter(|e| e["action"] == "agent.renew" && e["outcome"] == "ok")
        .collect();
    assert!(
        renewals.iter().any(|e| e["actor"] == "agent:a1"),
        "a1 renewed its certificate: {renewals:#?}\n{}",
        fleet.logs()
    );
    // Its first session did not outlive the certificate it was opened with; it came back
    // with the renewed one.
    let ended: Vec<Value> = fleet
        .cli()
        .audit()
        .into_iter()
        .filter(|e| e["action"] == "agent.disconnected" && e["target"] == "a1")
        .collect();
    assert!(
        ended
            .iter()
            .any(|e| e["params"]["why"] == "its certificate expired"),
        "{ended:#?}"
    );
    fleet.wait_agent_online("a1", true);
    // Restarted long after its first certificate expired, a1 connects with the renewed one.
    fleet.agent(1).kill9();
    fleet.wait_agent_online("a1", false);
    fleet.agent(1).start();
    fleet.wait_agent_online("a1", true);
}

#[test]
fn each_role_does_exactly_its_list_and_every_refusal_is_audited() {
    let fleet = Fleet::builder("security-roles").database("app").build();
    fleet.cluster(1).psql(
        "app",
        "CREATE TABLE t (v int); INSERT INTO t VALUES (1), (2)",
    );
    let admin = fleet.cli();
    let artifact = admin.backup_ok("a1/app")["artifact_id"]
        .as_str()
        .expect("artifact")
        .to_owned();
    let migrations = fleet.dir().join("migrations");
    std::fs::create_dir_all(&migrations).expect("dir");
    std::fs::write(
        migrations.join("0001_add.sql"),
        "ALTER TABLE t ADD COLUMN w int;",
    )
    .expect("migration");
    let policy = fleet.dir().join("policy.toml");
    std::fs::write(&policy, "[limits]\nper_agent = 3\n").expect("policy");
    let migrations = migrations.display().to_string();
    let policy = policy.display().to_string();

    let roles = ["viewer", "operator", "admin"];
    let clis: Vec<(&str, Cli)> = roles
        .iter()
        .map(|role| {
            let name = format!("{role}-1");
            (*role, admin.with_token(&admin.operator_token(role, &name)))
        })
        .collect();
    // Each call and the least role that may make it.
    let calls: Vec<(Vec<&str>, &str)> = vec![
        (vec!["agents"], "viewer"),
        (vec!["databases"], "viewer"),
        (vec!["orders"], "viewer"),
        (vec!["artifacts"], "viewer"),
        (vec!["audit", "verify"], "viewer"),
        (vec!["export"], "viewer"),
        (vec!["windows"], "viewer"),
        (vec!["status"], "viewer"),
        (vec!["prune", "--dry-run"], "viewer"),
        (vec!["apply", "-f", &policy, "--dry-run"], "viewer"),
        (vec!["backup", "a1/app", "--wait"], "operator"),
        (vec!["health", "a1/app", "--wait"], "operator"),
        (vec!["drill", "a1/app", "--wait"], "operator"),
        (
            vec!["restore", &artifact, "--new-name", "copy", "--wait"],
            "operator",
        ),
        (
            vec!["migrate", "status", "a1/app", "--dir", &migrations],
            "operator",
        ),
        (
            vec!["restore", &artifact, "--replace", "--yes", "--no-wait"],
            "admin",
        ),
        (
            vec!["migrate", "a1/app", "--dir", &migrations, "--no-wait"],
            "admin",
        ),
        (
            vec![
                "window",
                "add",
                "w",
                "--timezone",
                "UTC",
                "--weekly",
                "sun 02:00-04:00",
            ],
            "admin",
        ),
        (vec!["window", "rm", "w"], "admin"),
        (vec!["apply", "-f", &policy], "admin"),
        (vec!["prune"], "admin"),
        (vec!["tokens"], "admin"),
        (vec!["token", "create", "--agent", "z9"], "admin"),
        (vec!["agent", "revoke", "z9"], "admin"),
    ];
    let rank = |role: &str| roles.iter().position(|r| *r == role).expect("role");
    let mut expected_refusals = 0;
    for (role, cli) in &clis {
        for (args, least) in &calls {
            // The restore into `copy` may run once; later ones pick a fresh name.
            let args: Vec<String> = args
                .iter()
                .map(|a| {
                    if *a == "copy" {
                        format!("copy_{role}")
                    } else {
                        (*a).to_owned()
                    }
                })
                .collect();
            let args: Vec<&str> = args.iter().map(String::as_str).collect();
            let out = cli.run(&args);
            let refused_for_role = out.stderr.contains(&format!("needs the {least} role"));
            if rank(role) >= rank(least) {
                assert!(!refused_for_role, "{role} may run {args:?}: {out}");
                // Allowed calls did their work; the few that the fleet refuses for other
                // reasons (no window: --no-wait) say so.
                assert!(
                    out.code == 0 || out.stderr.contains("--no-wait"),
                    "{role}: {out}"
                );
            } else {
                assert_eq!(out.code, 2, "{role} may not run {args:?}: {out}");
                assert!(refused_for_role, "{role}: {out}");
                expected_refusals += 1;
            }
        }
    }
    // Stopping destructive work is an admin's too: an operator cannot cancel a replace.
    let replace = admin.json(&["restore", &artifact, "--replace", "--yes"]);
    let replace_id = replace["id"].as_str().expect("id").to_owned();
    assert_eq!(replace["state"], "held", "{replace:#}");
    let out = clis[1].1.run(&["cancel", &replace_id]);
    assert!(
        out.code == 2 && out.stderr.contains("needs the admin role"),
        "{out}"
    );
    expected_refusals += 1;
    assert_eq!(admin.json(&["cancel", &replace_id])["state"], "cancelled");
    // Every refusal is audited with the caller, the action and the reason.
    let refused: Vec<Value> = admin
        .audit()
        .into_iter()
        .filter(|e| {
            e["outcome"]
                .as_str()
                .is_some_and(|o| o.contains("role; the token of"))
        })
        .collect();
    assert_eq!(refused.len(), expected_refusals, "{refused:#?}");
    let viewer_restore = refused
        .iter()
        .find(|e| {
            e["action"] == "restore.submit"
                && e["actor"]
                    .as_str()
                    .is_some_and(|a| a.starts_with("operator:viewer-1 ("))
        })
        .unwrap_or_else(|| panic!("a viewer's restore is audited: {refused:#?}"));
    assert!(
        viewer_restore["outcome"]
            .as_str()
            .is_some_and(|o| o.contains("needs the operator role")),
        "{viewer_restore:#}"
    );

    // Calls without a valid token: none, an unknown one, a revoked one, an expired one.
    let viewer_tokens = admin.json(&["tokens"]);
    let viewer_id = viewer_tokens
        .as_array()
        .expect("tokens")
        .iter()
        .find(|t| t["name"] == "viewer-1")
        .and_then(|t| t["id"].as_str())
        .expect("viewer token")
        .to_owned();
    admin.json(&["token", "revoke", &viewer_id]);
    let expiring = admin.json(&[
        "token", "create", "--role", "admin", "--name", "brief", "--ttl", "1s",
    ]);
    std::thread::sleep(Duration::from_millis(1500));
    for (cli, reason) in [
        (admin.with_token(""), "no token"),
        (admin.with_token("wdn_op_0123"), "unknown token"),
        (clis[0].1.clone(), "was revoked"),
        (
            admin.with_token(expiring["secret"].as_str().expect("secret")),
            "expired",
        ),
    ] {
        let out = cli.run(&["backup", "a1/app"]);
        assert_eq!(out.code, 2, "{out}");
        assert!(out.stderr.contains(reason), "{reason}: {out}");
        let event = wait_refusal(&fleet, "backup.submit", reason);
        assert!(
            event["actor"]
                .as_str()
                .is_some_and(|a| a.starts_with("operator:anonymous")),
            "{event:#}"
        );
    }
}

#[test]
fn tls_is_the_default_and_plaintext_is_refused_both_ways() {
    // Without `ca init` (and without --insecure-dev) the coordinator does not start, and
    // says what to run; it has not touched the store.
    let dir = warden_tests::TestDir::new("security-default");
    let out = std::process::Command::new(&warden_tests::binaries::binaries().coordinator)
        .args([
            "--listen",
            "127.0.0.1:0",
            "--http-listen",
            "127.0.0.1:0",
            "--store",
        ])
        .arg(format!("sqlite://{}/warden.db", dir.path().display()))
        .current_dir(dir.path())
        .env_remove("WARDEN_TLS_DIR")
        .env_remove("WARDEN_INSECURE_DEV")
        .output()
        .expect("run warden-coordinator");
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert!(!out.status.success(), "started without TLS files: {stderr}");
    assert!(
        stderr.contains("ca init") && stderr.contains("--insecure-dev"),
        "{stderr}"
    );
    assert!(
        !dir.path().join("warden.db").exists(),
        "the store was created"
    );

    // A plaintext client gets nowhere with the TLS port.
    let fleet = Fleet::builder("security-plaintext").build();
    let plain = format!("http://127.0.0.1:{}", fleet.coordinator.port());
    let out = std::process::Command::new(&warden_tests::binaries::binaries().cli)
        .args(["--coordinator", &plain, "agents"])
        .env("WARDEN_TOKEN", fleet.coordinator.admin_token())
        .env_remove("WARDEN_CA_CERT")
        .env_remove("WARDEN_TOKEN_FILE")
        .output()
        .expect("run warden");
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert_eq!(out.status.code(), Some(2), "{stderr}");
    assert!(stderr.contains("cannot reach the coordinator"), "{stderr}");
}
