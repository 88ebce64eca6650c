//! One function per subcommand: build the request, call the coordinator, print the answer.

use std::io::{BufRead, IsTerminal, Read, Write};
use std::path::Path;

use warden_proto::v1;
use warden_shared::DatabaseId;

use crate::args::{
    AgentCommand, AuditArgs, AuditCommand, Cli, Command, RestoreArgs, TokenCommand, WindowAddArgs,
    WindowCommand, WindowsCommand,
};
use crate::client::Coordinator;
use crate::error::{CliError, Outcome};
use crate::follow::{Followable, Followed, follow, order_hint};
use crate::format;
use crate::json::order_state_name;
use crate::migrate::MigrationPlan;
use crate::render::{
    RTO_BREACH, held_note, print_created_token, print_export, print_list, print_next_window,
    print_one, print_order, print_policy_result, print_prune, print_revoked_agent, print_rollout,
    print_rto, print_status, print_verify,
};

/// Runs the command line and returns how it ended.
pub async fn run(cli: Cli) -> Result<Outcome, CliError> {
    let json = cli.json;
    // Before connecting: refuse what no answer of the coordinator could fix, and read the
    // local input, so a typo costs no round trip.
    let mut policy_document = None;
    let mut migration = None;
    match &cli.command {
        Command::Restore(args) => {
            check_restore_flags(args)?;
            check_confirmation_possible(args, std::io::stdin().is_terminal())?;
        }
        Command::Apply { file, .. } => policy_document = Some(read_policy_document(file)?),
        Command::Migrate(args) => migration = Some(MigrationPlan::new(args)?),
        _ => {}
    }
    let coordinator = Coordinator::connect(
        &cli.coordinator,
        cli.ca_cert.as_deref(),
        cli.token_file.as_deref(),
    )
    .await?;
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
            return show(c, order, wait, json, print_order).await;
        }
        Command::Restore(args) => return restore(c, args, json).await,
        Command::Health { database, wait } => {
            let request = v1::SubmitHealthRequest {
                database: database.to_string(),
            };
            let order = c.answer(c.admin().submit_health(request).await)?;
            return show(c, order, wait, json, print_order).await;
        }
        Command::Drill {
            database,
            artifact,
            reason,
            on,
            wait,
        } => {
            let request = v1::SubmitDrillRequest {
                database: database.to_string(),
                artifact_id: artifact.unwrap_or_default(),
                reason: reason.unwrap_or_default(),
                on: on.unwrap_or_default(),
            };
            let order = c.answer(c.admin().submit_drill(request).await)?;
            return show(c, order, wait, json, print_order).await;
        }
        Command::Migrate(args) => {
            // Read and checked before connecting, above.
            let plan = match migration {
                Some(plan) => plan,
                None => MigrationPlan::new(&args)?,
            };
            return plan.run(c, json).await;
        }
        Command::Rollout { id, wait } => {
            let rollout = c.answer(c.admin().get_rollout(v1::GetRolloutRequest { id }).await)?;
            return show(c, rollout, wait, json, print_rollout).await;
        }
        Command::Rollouts => {
            let rollouts = c.answer(c.admin().list_rollouts(v1::ListRolloutsRequest {}).await)?;
            print_list(&rollouts.rollouts, json)?;
        }
        Command::Rto => {
            let report = c.answer(c.admin().rto_report(v1::RtoReportRequest {}).await)?;
            print_rto(&report, json)?;
            return Ok(rto_outcome(&report));
        }
        Command::Status => {
            let status = c.answer(c.admin().fleet_status(v1::FleetStatusRequest {}).await)?;
            print_status(&status, json)?;
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
            return show(c, order, watch, json, print_order).await;
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
        Command::Windows(args) => match args.command {
            None => {
                let windows = c.answer(c.admin().list_windows(v1::ListWindowsRequest {}).await)?;
                print_list(&windows.windows, json)?;
            }
            Some(WindowsCommand::Next { database }) => {
                let request = v1::NextWindowRequest {
                    database: database.to_string(),
                };
                let next = c.answer(c.admin().next_window(request).await)?;
                print_next_window(&next, json)?;
            }
        },
        Command::Window(WindowCommand::Add(args)) => {
            let response = c.answer(c.admin().add_window(add_window_request(args)).await)?;
            print_policy_result(&response, false, json)?;
        }
        Command::Window(WindowCommand::Rm { name }) => {
            let request = v1::RemoveWindowRequest { name };
            let response = c.answer(c.admin().remove_window(request).await)?;
            print_policy_result(&response, false, json)?;
        }
        Command::Apply { dry_run, .. } => {
            let request = v1::ApplyPolicyRequest {
                toml: policy_document.unwrap_or_default(),
                dry_run,
            };
            let response = c.answer(c.admin().apply_policy(request).await)?;
            print_policy_result(&response, dry_run, json)?;
        }
        Command::Export => {
            let export = c.answer(c.admin().export_policy(v1::ExportPolicyRequest {}).await)?;
            print_export(&export, json)?;
        }
        Command::Prune {
            dry_run,
            database,
            all,
        } => {
            let request = v1::PruneRequest {
                dry_run,
                database: database.map(|d| d.to_string()).unwrap_or_default(),
            };
            let response = c.answer(c.admin().prune(request).await)?;
            print_prune(&response, dry_run, all, json)?;
        }
        Command::Token(TokenCommand::Create {
            role,
            name,
            agent,
            ttl,
        }) => {
            let request = v1::CreateTokenRequest {
                role: role.unwrap_or_default(),
                name: name.unwrap_or_default(),
                agent: agent.unwrap_or_default(),
                ttl_ms: ttl.map_or(0, |t| i64::try_from(t.as_millis()).unwrap_or(i64::MAX)),
            };
            let created = c.answer(c.admin().create_token(request).await)?;
            print_created_token(&created, json)?;
        }
        Command::Token(TokenCommand::Revoke { id }) => {
            let token = c.answer(c.admin().revoke_token(v1::RevokeTokenRequest { id }).await)?;
            print_one(&token, json)?;
        }
        Command::Tokens => {
            let tokens = c.answer(c.admin().list_tokens(v1::ListTokensRequest {}).await)?;
            print_list(&tokens.tokens, json)?;
        }
        Command::Agent(AgentCommand::Revoke { name, reason }) => {
            let request = v1::RevokeAgentRequest {
                agent: name,
                reason: reason.unwrap_or_default(),
            };
            let revoked = c.answer(c.admin().revoke_agent(request).await)?;
            print_revoked_agent(&revoked, json)?;
        }
    }
    Ok(Outcome::Success)
}

/// Returns how `warden rto` ends: a breach anywhere fails it, for cron and CI; a database at
/// risk or of unknown status does not.
fn rto_outcome(report: &v1::RtoReportResponse) -> Outcome {
    if report.rows.iter().any(|row| row.status == RTO_BREACH) {
        Outcome::TargetBreached
    } else {
        Outcome::Success
    }
}

/// Reads the policy document `warden apply` sends; `-` is standard input.
fn read_policy_document(path: &Path) -> Result<String, CliError> {
    let read = if path.as_os_str() == "-" {
        let mut text = String::new();
        std::io::stdin().read_to_string(&mut text).map(|_| text)
    } else {
        std::fs::read_to_string(path)
    };
    read.map_err(|err| {
        CliError::Input(format!(
            "cannot read the policy document {}: {err}: check the path (`warden export` prints the policy in force)",
            path.display()
        ))
    })
}

/// Builds the request of `window add`; clap already made sure exactly one recurrence is given.
fn add_window_request(args: WindowAddArgs) -> v1::AddWindowRequest {
    v1::AddWindowRequest {
        name: args.name,
        selector: args.selector.unwrap_or_default(),
        kind: args.kind.as_str().to_owned(),
        timezone: args.timezone,
        weekly: args.weekly.unwrap_or_default(),
        cron: args.cron.unwrap_or_default(),
        duration: args.duration.unwrap_or_default(),
        start: args.start.unwrap_or_default(),
        end: args.end.unwrap_or_default(),
        replace: args.replace,
    }
}

/// Prints an order or rollout with `print`, first following it to its end when asked to; the
/// outcome of a followed one is how it ended.
pub async fn show<T: Followable>(
    coordinator: &Coordinator,
    item: T,
    follow_to_end: bool,
    json: bool,
    print: fn(&T, bool) -> Result<(), CliError>,
) -> Result<Outcome, CliError> {
    if !follow_to_end {
        print(&item, json)?;
        return Ok(Outcome::Success);
    }
    match wait_for_end(coordinator, item, json, print).await? {
        Some(item) => {
            print(&item, json)?;
            Ok(item.outcome())
        }
        None => Ok(Outcome::Interrupted),
    }
}

/// Follows an order or rollout to its end and returns it. When the operator stops waiting,
/// prints it as it stands with `print`, says how to follow it again, and returns nothing.
pub async fn wait_for_end<T: Followable>(
    coordinator: &Coordinator,
    item: T,
    json: bool,
    print: fn(&T, bool) -> Result<(), CliError>,
) -> Result<Option<T>, CliError> {
    let show_progress = !json && std::io::stderr().is_terminal();
    match follow(coordinator, item, show_progress).await? {
        Followed::Ended(item) => Ok(Some(item)),
        Followed::Interrupted(item) => {
            print(&item, json)?;
            eprintln!("stopped waiting: {}", item.left_running());
            Ok(None)
        }
    }
}

/// Tells the operator about an order the CLI does not wait for: why it is held and that it
/// starts by itself, or (with `always`) its state; and how to follow or stop it.
pub fn announce_unfollowed(order: &v1::Order, always: bool) {
    let hint = order_hint(&order.id);
    match held_note(order, None) {
        Some(note) => eprintln!(
            "order {} is held: {note}; it starts by itself when it may: {hint}",
            order.id
        ),
        None if always => eprintln!("order {} is {}: {hint}", order.id, order_state_name(order)),
        None => {}
    }
}

/// Breaking glass: starting destructive work now, whatever the windows say.
pub struct BreakGlass<'a> {
    pub emergency: bool,
    pub skip_safety_backup: bool,
    pub reason: Option<&'a str>,
    /// What is started: "restore", "migration".
    pub work: &'a str,
    /// The backup taken first: "a safety backup of the target".
    pub backup: &'a str,
}

impl BreakGlass<'_> {
    /// Refuses --skip-safety-backup without --emergency, and --emergency without a reason.
    pub fn check(&self) -> Result<(), CliError> {
        let BreakGlass { work, backup, .. } = self;
        if self.skip_safety_backup && !self.emergency {
            return Err(CliError::Input(format!(
                "--skip-safety-backup only goes with --emergency: a {work} that waits for its maintenance window always takes {backup} first; drop --skip-safety-backup, or add --emergency --reason TEXT"
            )));
        }
        if self.emergency && self.reason.is_none_or(|r| r.trim().is_empty()) {
            return Err(CliError::Input(format!(
                "--emergency needs --reason TEXT: say why the {work} cannot wait for a maintenance window; the reason goes into the audit log"
            )));
        }
        Ok(())
    }
}

/// Refuses restore flags that do not go together, before anything is sent.
fn check_restore_flags(args: &RestoreArgs) -> Result<(), CliError> {
    if !args.replace {
        let replace_only = [
            ("--emergency", args.emergency),
            ("--skip-safety-backup", args.skip_safety_backup),
            ("--no-wait", args.no_wait),
        ];
        if let Some((flag, _)) = replace_only.into_iter().find(|(_, given)| *given) {
            return Err(CliError::Input(format!(
                "{flag} only goes with --replace: a restore under a new name replaces nothing, so it waits for no window and takes no safety backup; drop {flag}"
            )));
        }
    }
    BreakGlass {
        emergency: args.emergency,
        skip_safety_backup: args.skip_safety_backup,
        reason: args.reason.as_deref(),
        work: "restore",
        backup: "a safety backup of the target",
    }
    .check()
}

/// What an emergency replace does beyond a plain one, said before the confirmation prompt.
fn emergency_warning(args: &RestoreArgs, target: &DatabaseId) -> Option<String> {
    if !args.emergency {
        return None;
    }
    let safety = if args.skip_safety_backup {
        format!("WITHOUT a safety backup of {target}")
    } else {
        format!("after a safety backup of {target}")
    };
    Some(format!(
        "EMERGENCY: this starts now, whatever maintenance windows and freezes say, {safety}."
    ))
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
        let mut prompt = std::io::stderr();
        if let Some(warning) = emergency_warning(&args, &target) {
            writeln!(prompt, "{warning}")?;
        }
        confirm_replace(&artifact, &target, &mut stdin.lock(), &mut prompt)?;
    }
    let request = v1::SubmitRestoreRequest {
        artifact_id: args.artifact,
        new_name: args.new_name.unwrap_or_default(),
        replace: args.replace,
        target: args.target.map(|t| t.to_string()).unwrap_or_default(),
        reason: args.reason.unwrap_or_default(),
        emergency: args.emergency,
        skip_safety_backup: args.skip_safety_backup,
        no_wait: args.no_wait,
    };
    let order = c.answer(c.admin().submit_restore(request).await)?;
    if !args.wait {
        announce_unfollowed(&order, false);
    }
    show(c, order, args.wait, json, print_order).await
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
            emergency: false,
            skip_safety_backup: false,
            no_wait: false,
        }
    }

    #[test]
    fn emergency_needs_a_reason() {
        let mut args = restore_args(true, true);
        args.emergency = true;
        for reason in [None, Some(""), Some("  \t")] {
            args.reason = reason.map(str::to_owned);
            let err = check_restore_flags(&args).expect_err("no reason");
            assert!(
                err.to_string()
                    .starts_with("--emergency needs --reason TEXT"),
                "{err}"
            );
            assert_eq!(err.exit_code(), 2);
        }
        args.reason = Some("prod is corrupt".into());
        assert!(check_restore_flags(&args).is_ok());
        args.skip_safety_backup = true;
        assert!(check_restore_flags(&args).is_ok());
    }

    #[test]
    fn skipping_the_safety_backup_needs_an_emergency() {
        let mut args = restore_args(true, true);
        args.skip_safety_backup = true;
        args.reason = Some("why not".into());
        let err = check_restore_flags(&args).expect_err("not an emergency");
        assert!(
            err.to_string()
                .starts_with("--skip-safety-backup only goes with --emergency"),
            "{err}"
        );
    }

    #[test]
    fn window_flags_only_go_with_replace() {
        for flag in ["--emergency", "--skip-safety-backup", "--no-wait"] {
            let mut args = restore_args(false, false);
            args.reason = Some("test".into());
            match flag {
                "--emergency" => args.emergency = true,
                "--skip-safety-backup" => args.skip_safety_backup = true,
                _ => args.no_wait = true,
            }
            let err = check_restore_flags(&args).expect_err("new name");
            assert!(
                err.to_string()
                    .starts_with(&format!("{flag} only goes with --replace")),
                "{err}"
            );
        }
        let mut args = restore_args(true, true);
        args.no_wait = true;
        assert!(check_restore_flags(&args).is_ok());
    }

    #[test]
    fn emergency_warning_says_what_is_skipped() {
        let target = DatabaseId::parse("pg1/shop").expect("valid id");
        let mut args = restore_args(true, true);
        assert_eq!(emergency_warning(&args, &target), None);
        args.emergency = true;
        let warning = emergency_warning(&args, &target).expect("a warning");
        assert!(
            warning.contains("after a safety backup of pg1/shop"),
            "{warning}"
        );
        args.skip_safety_backup = true;
        let warning = emergency_warning(&args, &target).expect("a warning");
        assert!(
            warning.contains("WITHOUT a safety backup of pg1/shop"),
            "{warning}"
        );
    }

    #[test]
    fn only_a_breach_fails_the_rto_report() {
        let row = |status: &str| v1::RtoRow {
            status: status.into(),
            ..Default::default()
        };
        let mut report = v1::RtoReportResponse::default();
        assert_eq!(rto_outcome(&report), Outcome::Success);
        report.rows = vec![row("at_risk"), row("unknown"), row("ok")];
        assert_eq!(rto_outcome(&report), Outcome::Success);
        report.rows.push(row("breach"));
        assert_eq!(rto_outcome(&report), Outcome::TargetBreached);
        assert_eq!(rto_outcome(&report).exit_code(), 2);
    }

    #[test]
    fn unreadable_policy_documents_are_named() {
        let err = read_policy_document(Path::new("/nonexistent/fleet.toml")).expect_err("absent");
        assert!(
            err.to_string()
                .starts_with("cannot read the policy document /nonexistent/fleet.toml: "),
            "{err}"
        );
        assert_eq!(err.exit_code(), 2);
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
