//! `warden-coordinator`: the Warden coordinator process.

use std::net::SocketAddr;
use std::path::PathBuf;
use std::time::Duration;

use anyhow::Context;
use clap::Parser;
use serde::Serialize;
use url::Url;
use warden_coordinator::CoordinatorConfig;

#[derive(Debug, Parser, Serialize)]
#[command(name = "warden-coordinator", version, about = "The Warden coordinator")]
struct Args {
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
}

#[tokio::main]
async fn main() -> anyhow::Result<()> {
    let args = Args::parse();
    let config: CoordinatorConfig =
        warden_shared::config::load(args.config.as_deref(), "WARDEN_", &args)?;
    config.validate()?;
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
