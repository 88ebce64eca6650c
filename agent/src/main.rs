//! `warden-agent --config agent.toml`: loads the configuration, cleans up what a previous run
//! left unfinished, and serves the coordinator until SIGINT or SIGTERM, renewing its
//! certificate as it goes. `warden-agent enroll --token T` gets the first certificate;
//! `warden-agent key generate FILE` writes an encryption key.

use std::path::PathBuf;
use std::process::ExitCode;
use std::sync::Arc;

use anyhow::Context;
use clap::Parser;
use tokio_util::sync::CancellationToken;
use warden_agent::repository::Repository;
use warden_agent::{AgentConfig, AgentContext, copy, drill, identity, sealing, session};

/// Warden agent: backs up, restores and checks the PostgreSQL databases it is configured for.
#[derive(Debug, Parser)]
#[command(version, about)]
struct Args {
    #[command(subcommand)]
    command: Option<Command>,
    /// Configuration file (TOML, mode 0600); `WARDEN_AGENT_*` environment variables
    /// override it.
    #[arg(long, global = true)]
    config: Option<PathBuf>,
    /// Prints the effective configuration, passwords replaced by ***, and exits.
    #[arg(long)]
    dump_config: bool,
    /// Logs one JSON object per line.
    #[arg(long)]
    log_json: bool,
    /// Also exports spans over OTLP/gRPC to this collector, e.g. http://127.0.0.1:4317.
    #[arg(long, env = "WARDEN_AGENT_OTLP_ENDPOINT")]
    otlp_endpoint: Option<String>,
}

#[derive(Debug, clap::Subcommand)]
enum Command {
    /// Enrolls the agent with the coordinator: makes a key (it stays in `tls_dir`) and gets
    /// it a certificate against a one-time token from `warden token create --agent NAME`.
    Enroll {
        /// The enrollment token.
        #[arg(long, env = "WARDEN_AGENT_ENROLL_TOKEN", hide_env_values = true)]
        token: String,
        /// The coordinator's CA certificate (its tls/ca.pem); default: `tls_dir`/ca.pem.
        #[arg(long)]
        ca_cert: Option<PathBuf>,
    },
    /// Encryption keys of backups.
    #[command(subcommand)]
    Key(KeyCommand),
}

#[derive(Debug, clap::Subcommand)]
enum KeyCommand {
    /// Writes a new age X25519 identity to FILE (mode 0600, never over an existing file) and
    /// prints its key id, the public key that manifests record. List the file first in
    /// `[encryption] key_files` to seal new backups with it; keep the old files listed while
    /// their backups are kept.
    Generate { file: PathBuf },
}

#[tokio::main]
async fn main() -> ExitCode {
    let args = Args::parse();
    // Held to the end: dropping it flushes the spans not yet exported.
    let _telemetry = match warden_shared::telemetry::init(
        "warden-agent",
        args.log_json,
        args.otlp_endpoint.as_deref(),
    ) {
        Ok(telemetry) => telemetry,
        Err(error) => {
            eprintln!("error: {error}");
            return ExitCode::FAILURE;
        }
    };
    match run(args).await {
        Ok(()) => ExitCode::SUCCESS,
        Err(error) => {
            tracing::error!(error = format!("{error:#}"), "agent failed");
            ExitCode::FAILURE
        }
    }
}

async fn run(args: Args) -> anyhow::Result<()> {
    if let Some(Command::Key(KeyCommand::Generate { file })) = &args.command {
        let id = sealing::generate(file)?;
        println!("{id}");
        eprintln!(
            "wrote {}: keep a copy off this host (backups sealed with it cannot be restored \
             without it), and list it first in [encryption] key_files",
            file.display()
        );
        return Ok(());
    }
    let config = AgentConfig::load(args.config.as_deref())?;
    if let Some(Command::Enroll { token, ca_cert }) = args.command {
        let info = identity::enroll(&config, &token, ca_cert.as_deref()).await?;
        println!(
            "agent {} enrolled: certificate serial {} valid until {}, in {}",
            config.name,
            info.serial,
            info.not_after
                .to_rfc3339_opts(chrono::SecondsFormat::Secs, true),
            config.tls_dir.display()
        );
        return Ok(());
    }
    let ctx = AgentContext::new(config)?;
    if args.dump_config {
        print!("{}", ctx.config.to_redacted_toml(&ctx.repository)?);
        return Ok(());
    }

    // Leftovers of a crash go before the first order can arrive.
    ctx.repository.check_root().await?;
    let removed = match ctx.repository.cleanup_incomplete(&ctx.config.name).await {
        Ok(removed) => removed,
        // A bucket that cannot be reached now does not keep the agent from serving: the
        // repository check in its health reports says why, and the next start cleans up.
        Err(error) if matches!(ctx.repository, Repository::Object(_)) => {
            tracing::error!(repository = %ctx.repository.url(), %error, "cannot clean up unfinished artifacts");
            Vec::new()
        }
        Err(error) => return Err(error).context("cannot clean up unfinished artifacts"),
    };
    let staged =
        copy::clear_staging(&ctx.staging_dir).context("cannot clear the staging directory")?;
    // Servers that are down are skipped (and logged): their leftovers go at the next start.
    let scratch = drill::drop_leftover_scratch_databases(&ctx).await;
    if matches!(ctx.repository, Repository::Object(_)) && ctx.keys.sealing().is_none() {
        tracing::warn!(
            repository = %ctx.repository.url(),
            "backups go to a bucket unencrypted: set [encryption] key_files to seal them"
        );
    }
    tracing::info!(
        agent = %ctx.config.name,
        version = env!("CARGO_PKG_VERSION"),
        repository = %ctx.repository.url(),
        sealing_key = ctx.keys.sealing().map_or("none", |k| k.id()),
        databases = ctx.config.databases.len(),
        removed_unfinished_artifacts = removed.len(),
        removed_staged_dumps = staged.len(),
        dropped_drill_databases = scratch.len(),
        "agent starting"
    );

    let shutdown = CancellationToken::new();
    tokio::spawn({
        let shutdown = shutdown.clone();
        async move {
            warden_shared::shutdown::signal().await;
            shutdown.cancel();
        }
    });
    let ctx = Arc::new(ctx);
    let renewal = tokio::spawn(identity::renew_forever(
        Arc::new(ctx.config.clone()),
        shutdown.clone(),
    ));
    session::run(ctx, shutdown).await;
    renewal.abort();
    tracing::info!("agent stopped");
    Ok(())
}
