//! One function per subcommand: build the request, call the coordinator, print the answer.

use std::io::{BufRead, IsTerminal, Write};

use warden_proto::v1;
use warden_shared::DatabaseId;

use crate::args::{AuditArgs, AuditCommand, Cli, Command, RestoreArgs};
use crate::client::Coordinator;
use crate::error::{CliError, Outcome};
use crate::follow::{Followed, follow};
use crate::format;
use crate::json::order_state;
use crate::render::{print_list, print_one, print_verify};

/// Runs the command line and returns how it ended.
pub async fn run(cli: Cli) -> Result<Outcome, CliError> {
    let json = cli.json;
    if let Command::Restore(args) = &cli.command {
        // Refuse before connecting: nothing the coordinator says can make this answerable.
        check_confirmation_possible(args, std::io::stdin().is_terminal())?;
    }
    let coordinator = Coordinator::connect(&cli.coordinator).await?;
    let c = &coordinator;
    match cli.command {
        Command::Agents => {
            let agents = c.answer(c.admin().list_agents(v1::ListAgentsRequest {}).await)?;
            print_list(&agents.agents, json)?;
        }
        Command::Databases { agent } => {
            let request = v1::ListDatabasesRequest {
                agent: agent.unwrap_or_default(),
            };
            let databases = c.answer(c.admin().list_databases(request).await)?;
            print_list(&databases.databases, json)?;
        }
        Command::Backup {
            database,
            reason,
            wait,
        } => {
            let request = v1::SubmitBackupRequest {
                database: database.to_string(),
                reason: reason.unwrap_or_default(),
            };
            let order = c.answer(c.admin().submit_backup(request).await)?;
            return show_order(c, order, wait, json).await;
        }
        Command::Restore(args) => return restore(c, args, json).await,
        Command::Health { database, wait } => {
            let request = v1::SubmitHealthRequest {
                database: database.to_string(),
            };
            let order = c.answer(c.admin().submit_health(request).await)?;
            return show_order(c, order, wait, json).await;
        }
        Command::Orders { database, limit } => {
            let request = v1::ListOrdersRequest {
                database: database.map(|d| d.to_string()).unwrap_or_default(),
                limit: limit.unwrap_or(0),
            };
            let orders = c.answer(c.admin().list_orders(request).await)?;
            print_list(&orders.orders, json)?;
        }
        Command::Order { id, watch } => {
            let order = c.answer(c.admin().get_order(v1::GetOrderRequest { id }).await)?;
            return show_order(c, order, watch, json).await;
        }
        Command::Cancel { id, reason } => {
            let request = v1::CancelOrderRequest {
                id,
                reason: reason.unwrap_or_default(),
            };
            let order = c.answer(c.admin().cancel_order(request).await)?;
            print_one(&order, json)?;
        }
        Command::Artifacts { database, all } => {
            let request = v1::ListArtifactsRequest {
                database: database.map(|d| d.to_string()).unwrap_or_default(),
                include_expired: all,
            };
            let artifacts = c.answer(c.admin().list_artifacts(request).await)?;
            print_list(&artifacts.artifacts, json)?;
        }
        Command::Audit(args) => return audit(c, args, json).await,
    }
    Ok(Outcome::Success)
}

/// Prints an order, first following it to its end when asked to; the outcome of a followed
/// order is its final state.
async fn show_order(
    coordinator: &Coordinator,
    order: v1::Order,
    follow_to_end: bool,
    json: bool,
) -> Result<Outcome, CliError> {
    if !follow_to_end {
        print_one(&order, json)?;
        return Ok(Outcome::Success);
    }
    let show_progress = !json && std::io::stderr().is_terminal();
    match follow(coordinator, order, show_progress).await? {
        Followed::Ended(order) => {
            print_one(&order, json)?;
            Ok(Outcome::of_final_state(order_state(&order)))
        }
        Followed::Interrupted(order) => {
            print_one(&order, json)?;
            eprintln!(
                "stopped waiting: order {id} keeps running; follow it with `warden order {id} --watch` or stop it with `warden cancel {id}`",
                id = order.id
            );
            Ok(Outcome::Interrupted)
        }
    }
}

/// Refuses a replacing restore that could neither be confirmed at a prompt nor was confirmed
/// with `--yes`.
fn check_confirmation_possible(
    args: &RestoreArgs,
    stdin_is_terminal: bool,
) -> Result<(), CliError> {
    if args.replace && !args.yes && !stdin_is_terminal {
        return Err(CliError::Input(
            "refusing to replace without confirmation: pass --yes".to_owned(),
        ));
    }
    Ok(())
}

async fn restore(
    coordinator: &Coordinator,
    args: RestoreArgs,
    json: bool,
) -> Result<Outcome, CliError> {
    let c = coordinator;
    if args.replace && !args.yes {
        let request = v1::GetArtifactRequest {
            id: args.artifact.clone(),
        };
        let artifact = c.answer(c.admin().get_artifact(request).await)?;
        let target = match &args.target {
            Some(target) => target.clone(),
            None => DatabaseId::parse(&artifact.database).map_err(|err| {
                CliError::Input(format!(
                    "artifact {} names its database oddly ({err}): pass --target AGENT/DB",
                    artifact.id
                ))
            })?,
        };
        let stdin = std::io::stdin();
        confirm_replace(
            &artifact,
            &target,
            &mut stdin.lock(),
            &mut std::io::stderr(),
        )?;
    }
    let request = v1::SubmitRestoreRequest {
        artifact_id: args.artifact,
        new_name: args.new_name.unwrap_or_default(),
        replace: args.replace,
        target: args.target.map(|t| t.to_string()).unwrap_or_default(),
        reason: args.reason.unwrap_or_default(),
    };
    let order = c.answer(c.admin().submit_restore(request).await)?;
    show_order(c, order, args.wait, json).await
}

/// Asks the operator to type the name of the database about to be replaced.
fn confirm_replace(
    artifact: &v1::Artifact,
    target: &DatabaseId,
    input: &mut impl BufRead,
    prompt: &mut impl Write,
) -> Result<(), CliError> {
    write!(
        prompt,
        "This replaces {target} with artifact {} taken at {}. Type the database name to confirm: ",
        artifact.id,
        format::time(artifact.created_unix_ms)
    )?;
    prompt.flush()?;
    let mut answer = String::new();
    input.read_line(&mut answer)?;
    // Only the line ending goes: database names may have meaningful spaces.
    let answer = answer.trim_end_matches(['\n', '\r']);
    if answer == target.database || answer == target.to_string() {
        Ok(())
    } else {
        Err(CliError::Input(format!(
            "confirmation {answer:?} does not match the database name {:?}: nothing was restored; run the command again, or pass --yes",
            target.database
        )))
    }
}

async fn audit(
    coordinator: &Coordinator,
    args: AuditArgs,
    json: bool,
) -> Result<Outcome, CliError> {
    let c = coordinator;
    match args.command {
        Some(AuditCommand::Verify) => {
            let verify = c.answer(c.admin().verify_audit(v1::VerifyAuditRequest {}).await)?;
            print_verify(&verify, json)?;
            Ok(if verify.ok {
                Outcome::Success
            } else {
                Outcome::WorkFailed
            })
        }
        None => {
            let request = v1::ListAuditRequest {
                after_seq: args.after.unwrap_or(0),
                limit: args.limit.unwrap_or(0),
            };
            let events = c.answer(c.admin().list_audit(request).await)?;
            print_list(&events.events, json)?;
            Ok(Outcome::Success)
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn restore_args(replace: bool, yes: bool) -> RestoreArgs {
        RestoreArgs {
            artifact: "a-1".into(),
            new_name: (!replace).then(|| "copy".to_owned()),
            replace,
            target: None,
            yes,
            reason: None,
            wait: false,
        }
    }

    #[test]
    fn replacing_needs_a_terminal_or_yes() {
        let refused = check_confirmation_possible(&restore_args(true, false), false)
            .expect_err("no way to confirm");
        assert_eq!(
            refused.to_string(),
            "refusing to replace without confirmation: pass --yes"
        );
        assert_eq!(refused.exit_code(), 2);
        assert!(check_confirmation_possible(&restore_args(true, true), false).is_ok());
        assert!(check_confirmation_possible(&restore_args(true, false), true).is_ok());
        assert!(check_confirmation_possible(&restore_args(false, false), false).is_ok());
    }

    fn artifact() -> v1::Artifact {
        v1::Artifact {
            id: "a-1".into(),
            database: "pg1/shop".into(),
            created_unix_ms: 1_795_728_605_250,
            ..Default::default()
        }
    }

    #[test]
    fn confirmation_accepts_the_database_name() {
        let target = DatabaseId::parse("pg1/shop").expect("valid id");
        for typed in ["shop\n", "pg1/shop\r\n"] {
            let mut prompt = Vec::new();
            confirm_replace(&artifact(), &target, &mut typed.as_bytes(), &mut prompt)
                .expect("confirmed");
            assert_eq!(
                String::from_utf8(prompt).expect("utf-8"),
                "This replaces pg1/shop with artifact a-1 taken at 2026-11-26 21:30:05Z. Type the database name to confirm: "
            );
        }
    }

    #[test]
    fn confirmation_refuses_anything_else() {
        let target = DatabaseId::parse("pg1/shop").expect("valid id");
        for typed in ["shop2\n", "\n", "", " shop\n"] {
            let err = confirm_replace(&artifact(), &target, &mut typed.as_bytes(), &mut Vec::new())
                .expect_err("not confirmed");
            assert!(err.to_string().contains("nothing was restored"), "{err}");
            assert_eq!(err.exit_code(), 2);
        }
    }
}
