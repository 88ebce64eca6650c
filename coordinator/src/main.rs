//! `warden-coordinator`: the Warden coordinator process.

use std::net::SocketAddr;
use std::path::PathBuf;
use std::time::Duration;

use anyhow::Context;
use clap::Parser;
use serde::Serialize;
use url::Url;
use warden_coordinator::CoordinatorConfig;
use warden_coordinator::audit::Actor;
use warden_coordinator::security::ca::{self, CaInit};
use warden_coordinator::security::tls::TlsFiles;
use warden_coordinator::security::tokens::{TokenGrant, create_token};
use warden_coordinator::store::Store;

#[derive(Debug, Parser, Serialize)]
#[command(name = "warden-coordinator", version, about = "The Warden coordinator")]
struct Args {
    #[command(subcommand)]
    #[serde(skip)]
    command: Option<Command>,
    /// TOML config file.
    #[arg(long)]
    #[serde(skip)]
    config: Option<PathBuf>,
    /// Print the effective configuration and exit.
    #[arg(long)]
    #[serde(skip)]
    dump_config: bool,
    /// gRPC listen address.
    #[arg(long)]
    #[serde(skip_serializing_if = "Option::is_none")]
    listen: Option<SocketAddr>,
    /// HTTP listen address of /metrics and /healthz (port 0: any free port, logged).
    #[arg(long)]
    #[serde(skip_serializing_if = "Option::is_none")]
    http_listen: Option<SocketAddr>,
    /// State store, sqlite://PATH.
    #[arg(long)]
    #[serde(skip_serializing_if = "Option::is_none")]
    store: Option<String>,
    /// How often agents send heartbeats, e.g. 2s.
    #[arg(long, value_parser = humantime::parse_duration)]
    #[serde(skip_serializing_if = "Option::is_none", with = "humantime_serde")]
    heartbeat_interval: Option<Duration>,
    /// An agent silent this long is offline and its orders are lost, e.g. 10s.
    #[arg(long, value_parser = humantime::parse_duration)]
    #[serde(skip_serializing_if = "Option::is_none", with = "humantime_serde")]
    lease: Option<Duration>,
    /// How many times a lost backup or health check is dispatched in all.
    #[arg(long)]
    #[serde(skip_serializing_if = "Option::is_none")]
    max_attempts: Option<u32>,
    /// How often held orders, windows and schedules are looked at again, e.g. 1s.
    #[arg(long, value_parser = humantime::parse_duration)]
    #[serde(skip_serializing_if = "Option::is_none", with = "humantime_serde")]
    policy_tick: Option<Duration>,
    /// How often retention runs on its own, e.g. 5m.
    #[arg(long, value_parser = humantime::parse_duration)]
    #[serde(skip_serializing_if = "Option::is_none", with = "humantime_serde")]
    prune_interval: Option<Duration>,
    /// How often agents report the health of their databases, e.g. 30s.
    #[arg(long, value_parser = humantime::parse_duration)]
    #[serde(skip_serializing_if = "Option::is_none", with = "humantime_serde")]
    health_interval: Option<Duration>,
    /// Log JSON lines.
    #[arg(long)]
    #[serde(skip_serializing_if = "std::ops::Not::not")]
    log_json: bool,
    /// Export spans over OTLP/gRPC to this collector, e.g. http://127.0.0.1:4317.
    #[arg(long)]
    #[serde(skip_serializing_if = "Option::is_none")]
    otlp_endpoint: Option<Url>,
    /// Directory of the CA and server certificate that `ca init` writes.
    #[arg(long, global = true)]
    #[serde(skip_serializing_if = "Option::is_none")]
    tls_dir: Option<PathBuf>,
    /// How long agent certificates are valid, e.g. 30d.
    #[arg(long, value_parser = humantime::parse_duration)]
    #[serde(skip_serializing_if = "Option::is_none", with = "humantime_serde")]
    agent_cert_ttl: Option<Duration>,
    /// Plaintext gRPC and no agent certificates: a development fleet on one machine only.
    #[arg(long)]
    #[serde(skip_serializing_if = "std::ops::Not::not")]
    insecure_dev: bool,
}

#[derive(Debug, clap::Subcommand)]
enum Command {
    /// The built-in certificate authority.
    Ca {
        #[command(subcommand)]
        command: CaCommand,
    },
    /// Operator tokens made on the coordinator's host: the first admin token.
    Token {
        #[command(subcommand)]
        command: TokenCommand,
    },
}

#[derive(Debug, clap::Subcommand)]
enum CaCommand {
    /// Creates the CA (or imports yours) and issues the coordinator's server certificate;
    /// run again, it keeps the CA and issues a new server certificate.
    Init {
        /// A name or address agents and operators reach the coordinator by (repeat it);
        /// default: this host's name, localhost, 127.0.0.1 and ::1.
        #[arg(long = "hostname")]
        hostnames: Vec<String>,
        /// Your own CA's certificate, instead of a new CA.
        #[arg(long, requires = "ca_key")]
        ca_cert: Option<PathBuf>,
        /// Your own CA's private key (mode 0600).
        #[arg(long, requires = "ca_cert")]
        ca_key: Option<PathBuf>,
        /// Print one JSON document.
        #[arg(long)]
        json: bool,
    },
}

#[derive(Debug, clap::Subcommand)]
enum TokenCommand {
    /// Creates an operator token directly in the store (whoever runs this can read the
    /// store anyway); the secret is printed once.
    Create {
        /// viewer, operator or admin.
        #[arg(long)]
        role: String,
        /// Who holds it: the audit log's actor for its calls.
        #[arg(long)]
        name: String,
        /// How long it works, e.g. 24h (default 30 days).
        #[arg(long, value_parser = humantime::parse_duration)]
        ttl: Option<Duration>,
        /// Print one JSON document.
        #[arg(long)]
        json: bool,
    },
}

#[tokio::main]
async fn main() -> anyhow::Result<()> {
    let args = Args::parse();
    let config: CoordinatorConfig =
        warden_shared::config::load(args.config.as_deref(), "WARDEN_", &args)?;
    config.validate()?;
    match args.command {
        Some(Command::Ca { command }) => return ca(&config, command),
        Some(Command::Token { command }) => return token(&config, command).await,
        None => {}
    }
    if args.dump_config {
        print!(
            "{}",
            config.to_redacted_toml().context("printing the config")?
        );
        return Ok(());
    }
    // Held to the end: dropping it flushes the spans not yet exported.
    let _telemetry = warden_shared::telemetry::init(
        "warden-coordinator",
        config.log_json,
        config.otlp_endpoint.as_ref().map(Url::as_str),
    )?;
    warden_coordinator::server::run(config, warden_shared::shutdown::signal()).await?;
    Ok(())
}

fn ca(config: &CoordinatorConfig, command: CaCommand) -> anyhow::Result<()> {
    let CaCommand::Init {
        hostnames,
        ca_cert,
        ca_key,
        json,
    } = command;
    let report = ca::init(&CaInit {
        files: TlsFiles::new(&config.tls_dir),
        hostnames,
        import: ca_cert.zip(ca_key),
    })?;
    if json {
        println!("{}", serde_json::to_string_pretty(&report)?);
    } else {
        println!("CA {} in {}", report.ca, report.tls_dir);
        println!(
            "  ca certificate   {} (sha256 {})",
            report.ca_cert, report.ca_sha256
        );
        println!(
            "  server cert      {} for {}, until {}",
            report.server_cert,
            report.hostnames.join(", "),
            report.server_not_after
        );
        println!(
            "Give agents and operators {} (it is public); the keys stay here.",
            report.ca_cert
        );
    }
    Ok(())
}

async fn token(config: &CoordinatorConfig, command: TokenCommand) -> anyhow::Result<()> {
    let TokenCommand::Create {
        role,
        name,
        ttl,
        json,
    } = command;
    let grant = TokenGrant::Operator {
        name,
        role: role.parse()?,
    };
    let store = Store::open(&config.store).await?;
    let actor = Actor::Host(std::env::var("USER").unwrap_or_else(|_| "unknown".to_owned()));
    let (token, secret) = create_token(&store, &actor, &grant, ttl).await?;
    if json {
        let document = serde_json::json!({
            "id": token.id,
            "name": token.name,
            "role": token.role,
            "expires_unix_ms": token.expires_unix_ms,
            "secret": secret,
        });
        println!("{}", serde_json::to_string_pretty(&document)?);
    } else {
        println!(
            "token {} for {} ({}), expires {}",
            token.id,
            token.name,
            token.role,
            chrono::DateTime::from_timestamp_millis(token.expires_unix_ms)
                .map(|t| t.to_rfc3339_opts(chrono::SecondsFormat::Secs, true))
                .unwrap_or_default()
        );
        println!("secret (shown once; give it to the CLI as WARDEN_TOKEN):\n{secret}");
    }
    Ok(())
}
