//! `warden`: the operator CLI of a Warden fleet.
//!
//! It talks to the coordinator's AdminService only; agents and databases are never contacted
//! directly. Exit codes: 0 success, 1 the work ran and failed, 2 the request was refused, the
//! coordinator could not be reached, `rto` found a breached target or `migrate status` a
//! changed migration file (see `error`).

mod args;
mod client;
mod commands;
mod error;
mod follow;
mod format;
mod json;
mod migrate;
mod render;

use std::process::ExitCode;

use clap::Parser;

use crate::error::EXIT_REFUSED;

fn main() -> ExitCode {
    let cli = args::Cli::parse();
    // One request at a time: a single-threaded runtime is all the CLI needs.
    let runtime = match tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
    {
        Ok(runtime) => runtime,
        Err(err) => {
            eprintln!("error: cannot start the async runtime: {err}");
            return ExitCode::from(EXIT_REFUSED);
        }
    };
    match runtime.block_on(commands::run(cli)) {
        Ok(outcome) => ExitCode::from(outcome.exit_code()),
        Err(err) => {
            eprintln!("error: {err}");
            ExitCode::from(err.exit_code())
        }
    }
}
