//! The command line: global options and one subcommand per operator task.
//!
//! Names (`AGENT/DBNAME`, agent names, new database names) are validated here with the same
//! rules the coordinator applies, so a typo is reported before anything is sent.

use std::path::PathBuf;

use clap::builder::{PossibleValuesParser, TypedValueParser};
use clap::{ArgGroup, Args, Parser, Subcommand, ValueEnum};
use warden_shared::{
    DatabaseId, OnCheckFailure, Selector, validate_agent_name, validate_database_name,
};

/// Where the coordinator listens unless `--coordinator` or `WARDEN_COORDINATOR` say otherwise.
pub const DEFAULT_COORDINATOR: &str = "https://127.0.0.1:7717";

/// Operate a Warden fleet: backups, restores, drills, migrations, health checks, policy and the
/// audit log.
#[derive(Debug, Parser)]
#[command(name = "warden", version, about, propagate_version = true)]
pub struct Cli {
    /// Address of the coordinator's gRPC endpoint.
    #[arg(
        long,
        global = true,
        env = "WARDEN_COORDINATOR",
        default_value = DEFAULT_COORDINATOR,
        value_name = "URL"
    )]
    pub coordinator: String,

    /// The CA certificate the coordinator's is checked against (the coordinator's
    /// `tls/ca.pem`); needed for an https:// coordinator.
    #[arg(long, global = true, env = "WARDEN_CA_CERT", value_name = "FILE")]
    pub ca_cert: Option<PathBuf>,

    /// A file (mode 0600) holding the operator token; `WARDEN_TOKEN` gives the token itself.
    #[arg(long, global = true, env = "WARDEN_TOKEN_FILE", value_name = "FILE")]
    pub token_file: Option<PathBuf>,

    /// Print one JSON document instead of a table.
    #[arg(long, global = true)]
    pub json: bool,

    #[command(subcommand)]
    pub command: Command,
}

#[derive(Debug, Subcommand)]
pub enum TokenCommand {
    /// Creates a token and prints its secret, this once: an operator token (`--role`,
    /// `--name`) or a one-time enrollment token for an agent (`--agent`).
    #[command(group(ArgGroup::new("kind").required(true).args(["role", "agent"])))]
    Create {
        /// viewer (reads everything but secrets), operator (backups, health checks, drills,
        /// restores under a new name, cancel) or admin (everything).
        #[arg(long, value_parser = PossibleValuesParser::new(["viewer", "operator", "admin"]), requires = "name")]
        role: Option<String>,
        /// Who holds the operator token: the audit log's name for its calls.
        #[arg(long, value_name = "NAME", conflicts_with = "agent")]
        name: Option<String>,
        /// The agent a one-time enrollment token (`warden-agent enroll --token`) is for.
        #[arg(long, value_name = "AGENT", value_parser = parse_agent_name)]
        agent: Option<String>,
        /// How long it works, e.g. 1h, 30d (default: 30 days for operators, 1 hour for
        /// enrollment).
        #[arg(long, value_name = "DURATION", value_parser = humantime::parse_duration)]
        ttl: Option<std::time::Duration>,
    },
    /// Revokes a token: it stops working at once.
    Revoke {
        /// The token's id (`warden tokens`), not its secret.
        id: String,
    },
}

#[derive(Debug, Subcommand)]
pub enum AgentCommand {
    /// Revokes every certificate of an agent and ends its session; it can connect again
    /// only after enrolling with a new token.
    Revoke {
        #[arg(value_name = "AGENT", value_parser = parse_agent_name)]
        name: String,
        /// Why; recorded in the audit log.
        #[arg(long, value_name = "TEXT")]
        reason: Option<String>,
    },
}

#[derive(Debug, Subcommand)]
pub enum Command {
    /// Lists agents with labels, version, online state and when they were last seen.
    Agents,
    /// Lists the databases in the fleet with their newest backup.
    Databases {
        /// Only this agent's databases.
        #[arg(long, value_name = "AGENT", value_parser = parse_agent_name)]
        agent: Option<String>,
    },
    /// Takes a backup of a database.
    Backup {
        /// The database, as AGENT/DBNAME.
        #[arg(value_name = "DB", value_parser = parse_database_id)]
        database: DatabaseId,
        /// Why the backup is taken; recorded in the audit log.
        #[arg(long, value_name = "TEXT")]
        reason: Option<String>,
        /// Shows progress and waits until the backup has ended.
        #[arg(long)]
        wait: bool,
    },
    /// Restores an artifact into a new database, or replaces the target database.
    Restore(RestoreArgs),
    /// Collects a health report of a database.
    Health {
        /// The database, as AGENT/DBNAME.
        #[arg(value_name = "DB", value_parser = parse_database_id)]
        database: DatabaseId,
        /// Waits until the report is in.
        #[arg(long)]
        wait: bool,
    },
    /// Drills a restore: restores an artifact into a scratch database on the database's
    /// server, verifies it (row counts, then the policy's checks), times every phase and drops
    /// the scratch database again. The database itself is never touched.
    Drill {
        /// The database, as AGENT/DBNAME.
        #[arg(value_name = "DB", value_parser = parse_database_id)]
        database: DatabaseId,
        /// The artifact to drill (default: the database's newest complete one).
        #[arg(long, value_name = "ID")]
        artifact: Option<String>,
        /// Why the drill is run; recorded in the audit log.
        #[arg(long, value_name = "TEXT")]
        reason: Option<String>,
        /// Runs the drill on another agent's server: AGENT (its database of the same name,
        /// else its first one) or AGENT/DBNAME. It must see the artifact's repository; the
        /// database's own agent may be down.
        #[arg(long, value_name = "AGENT")]
        on: Option<String>,
        /// Shows progress and waits until the drill has ended; exits 1 when it failed.
        #[arg(long)]
        wait: bool,
    },
    /// Migrates a database: versioned SQL files from a directory (or a migration command its
    /// agent allows), applied in a maintenance window after a pre-migration backup; with
    /// --selector rolls the migration out over many databases in waves. `migrate status`
    /// compares the files with what a database recorded.
    Migrate(MigrateArgs),
    /// Shows a rollout: its waves, and where every database stands.
    Rollout {
        /// The rollout id.
        id: String,
        /// Shows wave progress and waits until the rollout has ended; exits 1 unless it
        /// succeeded.
        #[arg(long)]
        wait: bool,
    },
    /// Lists rollouts, one row each.
    Rollouts,
    /// Shows each database's recovery time and point against its targets, worst first; exits
    /// 2 when any database breaches its target.
    Rto,
    /// Shows the fleet at a glance: agents online, then each database's health, newest backup
    /// and RTO status, worst first.
    Status,
    /// Lists recent orders, newest first.
    Orders {
        /// Only orders against this database (AGENT/DBNAME).
        #[arg(long, value_name = "DB", value_parser = parse_database_id)]
        database: Option<DatabaseId>,
        /// At most this many orders (the coordinator's default when absent).
        #[arg(long, value_name = "N")]
        limit: Option<u32>,
    },
    /// Shows one order.
    Order {
        /// The order id.
        id: String,
        /// Follows the order until it has ended.
        #[arg(long)]
        watch: bool,
    },
    /// Cancels a queued or running order.
    Cancel {
        /// The order id.
        id: String,
        /// Why the order is cancelled; recorded in the audit log.
        #[arg(long, value_name = "TEXT")]
        reason: Option<String>,
    },
    /// Lists complete artifacts (backups).
    Artifacts {
        /// Only artifacts of this database (AGENT/DBNAME).
        #[arg(value_name = "DB", value_parser = parse_database_id)]
        database: Option<DatabaseId>,
        /// Includes expired, deleted and corrupt artifacts.
        #[arg(long)]
        all: bool,
    },
    /// Shows the audit log, or verifies its hash chain with `audit verify`.
    Audit(AuditArgs),
    /// Lists maintenance windows and freezes, or says when a database may be touched with
    /// `windows next DB`.
    Windows(WindowsArgs),
    /// Adds or removes one maintenance window or freeze.
    #[command(subcommand)]
    Window(WindowCommand),
    /// Applies a fleet policy document (windows, schedules, retention, limits).
    Apply {
        /// The policy document, e.g. fleet.toml (`-` reads standard input).
        #[arg(short = 'f', long = "file", value_name = "PATH")]
        file: PathBuf,
        /// Shows what would change without applying anything.
        #[arg(long)]
        dry_run: bool,
    },
    /// Prints the fleet policy in force as a TOML document that `apply` takes back.
    Export,
    /// Creates or revokes an operator or enrollment token (admin).
    #[command(subcommand)]
    Token(TokenCommand),
    /// Lists operator and enrollment tokens, never their secrets (admin).
    Tokens,
    /// Revokes an agent (admin).
    #[command(subcommand)]
    Agent(AgentCommand),
    /// Removes the artifacts that retention no longer keeps.
    Prune {
        /// Shows what would be pruned without removing anything.
        #[arg(long)]
        dry_run: bool,
        /// Only artifacts of this database (AGENT/DBNAME).
        #[arg(long, value_name = "DB", value_parser = parse_database_id)]
        database: Option<DatabaseId>,
        /// Lists the artifacts that are kept too, with the rule that keeps each.
        #[arg(long)]
        all: bool,
    },
}

#[derive(Debug, Args)]
#[command(group(ArgGroup::new("mode").required(true).args(["new_name", "replace"])))]
pub struct RestoreArgs {
    /// The artifact id (see `warden artifacts`).
    #[arg(value_name = "ARTIFACT")]
    pub artifact: String,
    /// Restores into a new database with this name on the target's server.
    #[arg(long, value_name = "NAME", value_parser = parse_database_name)]
    pub new_name: Option<String>,
    /// Replaces the target database itself with the artifact's contents.
    #[arg(long)]
    pub replace: bool,
    /// The database whose server receives the restore (default: the artifact's database).
    #[arg(long, value_name = "AGENT/DB", value_parser = parse_database_id)]
    pub target: Option<DatabaseId>,
    /// Replaces without asking for confirmation.
    #[arg(long)]
    pub yes: bool,
    /// Why the restore is done; recorded in the audit log.
    #[arg(long, value_name = "TEXT")]
    pub reason: Option<String>,
    /// Shows progress and waits until the restore has ended, including while it is held
    /// for a maintenance window.
    #[arg(long)]
    pub wait: bool,
    /// Break glass (with --replace): starts now whatever the maintenance windows and freezes
    /// say; needs --reason.
    #[arg(long)]
    pub emergency: bool,
    /// With --emergency only: does not take a safety backup of the target first.
    #[arg(long)]
    pub skip_safety_backup: bool,
    /// With --replace: refuses instead of waiting in `held` when no maintenance window is open.
    #[arg(long)]
    pub no_wait: bool,
}

/// The default waves of a rollout: one database first, then a quarter, then the rest.
pub const DEFAULT_WAVES: &str = "1,25%,100%";

#[derive(Debug, Args)]
#[command(
    args_conflicts_with_subcommands = true,
    subcommand_negates_reqs = true,
    group(ArgGroup::new("target").required(true).args(["database", "selector"])),
    group(ArgGroup::new("source").required(true).args(["dir", "command"])),
)]
pub struct MigrateArgs {
    #[command(subcommand)]
    pub subcommand: Option<MigrateCommand>,
    /// The database, as AGENT/DBNAME.
    #[arg(value_name = "DB", value_parser = parse_database_id)]
    pub database: Option<DatabaseId>,
    /// Rolls the migration out over every database these labels select (key=value terms,
    /// `*` for the whole fleet), in waves.
    #[arg(long, value_name = "SEL", value_parser = parse_selector)]
    pub selector: Option<String>,
    /// The migrations: every NNNN_name.sql file directly in this directory, applied in
    /// version order; other files are ignored.
    #[arg(long, value_name = "DIR")]
    pub dir: Option<PathBuf>,
    /// Runs this migration command instead, by the name the database's agent allows it under.
    #[arg(long, value_name = "NAME")]
    pub command: Option<String>,
    /// With --selector: cumulative wave sizes, counts or percentages of the databases
    /// [default: 1,25%,100%].
    // Not `requires = "selector"`: clap drops a requirement that conflicts with an arg given,
    // and --selector conflicts with DB through the group.
    #[arg(long, value_name = "WAVES", conflicts_with = "database")]
    pub waves: Option<String>,
    /// Why the migration is run; recorded in the audit log.
    #[arg(long, value_name = "TEXT")]
    pub reason: Option<String>,
    /// Break glass: starts now whatever the maintenance windows and freezes say, and passes
    /// the destructive guard; needs --reason.
    #[arg(long)]
    pub emergency: bool,
    /// With --emergency only: takes no pre-migration backup.
    #[arg(long)]
    pub skip_safety_backup: bool,
    /// Refuses instead of waiting in `held` when no maintenance window is open.
    #[arg(long)]
    pub no_wait: bool,
    /// What a failed post-migration check does: stop (and print the restore command) or
    /// restore the pre-migration backup (default: the fleet policy's).
    #[arg(long, value_name = "ACTION", value_parser = on_check_failure_parser())]
    pub on_check_failure: Option<OnCheckFailure>,
    /// Shows progress and waits until the migration (or every wave) has ended, including
    /// while it is held for a maintenance window; exits 1 unless it succeeded.
    #[arg(long)]
    pub wait: bool,
}

#[derive(Debug, Subcommand)]
pub enum MigrateCommand {
    /// Compares the migration files with what the database recorded: applied, pending,
    /// changed and unknown. Changes nothing; exits 2 when an applied file has changed since.
    Status {
        /// The database, as AGENT/DBNAME.
        #[arg(value_name = "DB", value_parser = parse_database_id)]
        database: DatabaseId,
        /// The migrations: every NNNN_name.sql file directly in this directory.
        #[arg(long, value_name = "DIR")]
        dir: PathBuf,
    },
}

#[derive(Debug, Args)]
#[command(args_conflicts_with_subcommands = true)]
pub struct AuditArgs {
    #[command(subcommand)]
    pub command: Option<AuditCommand>,
    /// Only events after this sequence number.
    #[arg(long, value_name = "SEQ")]
    pub after: Option<u64>,
    /// At most this many events (the coordinator's default when absent).
    #[arg(long, value_name = "N")]
    pub limit: Option<u32>,
}

#[derive(Debug, Subcommand)]
pub enum AuditCommand {
    /// Checks the whole hash chain and names the first broken event.
    Verify,
}

#[derive(Debug, Args)]
pub struct WindowsArgs {
    #[command(subcommand)]
    pub command: Option<WindowsCommand>,
}

#[derive(Debug, Subcommand)]
pub enum WindowsCommand {
    /// Says when destructive work may next start on a database, and which window allows it.
    Next {
        /// The database, as AGENT/DBNAME.
        #[arg(value_name = "DB", value_parser = parse_database_id)]
        database: DatabaseId,
    },
}

#[derive(Debug, Subcommand)]
pub enum WindowCommand {
    /// Adds a maintenance window or freeze to the fleet policy.
    Add(WindowAddArgs),
    /// Removes a window or freeze from the fleet policy.
    #[command(visible_alias = "remove")]
    Rm {
        /// The window's name.
        name: String,
    },
}

/// Whether a window allows destructive work or forbids it.
#[derive(Debug, Clone, Copy, PartialEq, Eq, ValueEnum)]
pub enum WindowKindArg {
    /// Destructive work may start while it is open.
    Maintenance,
    /// Nothing destructive starts while it is in force; beats maintenance windows.
    Freeze,
}

impl WindowKindArg {
    /// The name the coordinator takes.
    pub fn as_str(self) -> &'static str {
        match self {
            WindowKindArg::Maintenance => "maintenance",
            WindowKindArg::Freeze => "freeze",
        }
    }
}

#[derive(Debug, Args)]
#[command(group(ArgGroup::new("recurrence").required(true).args(["weekly", "cron", "start"])))]
pub struct WindowAddArgs {
    /// The window's name, unique in the policy.
    pub name: String,
    /// Maintenance window or freeze.
    #[arg(long, value_enum, default_value_t = WindowKindArg::Maintenance)]
    pub kind: WindowKindArg,
    /// The IANA time zone the times are local to, e.g. Europe/Berlin or UTC.
    #[arg(long, value_name = "TZ")]
    pub timezone: String,
    /// The databases it covers, as key=value label terms (default: the whole fleet).
    #[arg(long, value_name = "SEL", value_parser = parse_selector)]
    pub selector: Option<String>,
    /// Every week: `sun 02:00-04:00`, `mon-fri 22:00-02:00`, `sat,sun 01:00-05:00`.
    #[arg(long, value_name = "SPEC")]
    pub weekly: Option<String>,
    /// Opens at every occurrence of this cron expression (with --duration).
    #[arg(long, value_name = "EXPR", requires = "duration")]
    pub cron: Option<String>,
    /// How long each cron opening lasts, e.g. 2h or 90m.
    // `requires` alone would not do: clap lets a required arg go missing when it conflicts
    // with one given, and --cron conflicts with --weekly through the group.
    #[arg(long, value_name = "DUR", requires = "cron", conflicts_with_all = ["weekly", "start"])]
    pub duration: Option<String>,
    /// Once, from this local time (with --end), e.g. 2026-12-24T00:00.
    #[arg(long, value_name = "LOCAL", requires = "end")]
    pub start: Option<String>,
    /// Once, until this local time (with --start).
    #[arg(long, value_name = "LOCAL", requires = "start", conflicts_with_all = ["weekly", "cron"])]
    pub end: Option<String>,
    /// Replaces a window of the same name instead of refusing.
    #[arg(long)]
    pub replace: bool,
}

fn parse_database_id(text: &str) -> Result<DatabaseId, String> {
    DatabaseId::parse(text).map_err(|err| err.to_string())
}

fn parse_agent_name(text: &str) -> Result<String, String> {
    validate_agent_name(text)
        .map(|()| text.to_owned())
        .map_err(|err| err.to_string())
}

/// Checks a selector locally and keeps the operator's text; `*` stands for the whole fleet.
fn parse_selector(text: &str) -> Result<String, String> {
    if text.trim() == "*" {
        return Ok(String::new());
    }
    text.parse::<Selector>()
        .map(|_| text.to_owned())
        .map_err(|err| err.to_string())
}

/// Takes `stop` or `restore`, listing both in `--help` and in the error for anything else.
fn on_check_failure_parser() -> impl TypedValueParser<Value = OnCheckFailure> {
    PossibleValuesParser::new([OnCheckFailure::Stop, OnCheckFailure::Restore].map(|v| v.as_str()))
        .try_map(|text| text.parse::<OnCheckFailure>())
}

fn parse_database_name(text: &str) -> Result<String, String> {
    validate_database_name(text)
        .map(|()| text.to_owned())
        .map_err(|err| err.to_string())
}

#[cfg(test)]
mod tests {
    use clap::CommandFactory;
    use clap::error::ErrorKind;

    use super::*;

    fn parse(args: &[&str]) -> Result<Cli, clap::Error> {
        Cli::try_parse_from(std::iter::once("warden").chain(args.iter().copied()))
    }

    #[test]
    fn definition_is_consistent() {
        Cli::command().debug_assert();
    }

    #[test]
    fn restore_needs_exactly_one_mode() {
        let missing = parse(&["restore", "a1"]).expect_err("a mode is required");
        assert_eq!(missing.kind(), ErrorKind::MissingRequiredArgument);
        let both = parse(&["restore", "a1", "--new-name", "x", "--replace"])
            .expect_err("the modes exclude each other");
        assert_eq!(both.kind(), ErrorKind::ArgumentConflict);
        let ok = parse(&["restore", "a1", "--replace", "--yes", "--target", "db1/app"])
            .expect("valid restore");
        let Command::Restore(args) = ok.command else {
            panic!("expected restore, got {:?}", ok.command)
        };
        assert!(args.replace && args.yes);
        assert_eq!(
            args.target,
            Some(DatabaseId::parse("db1/app").expect("valid id"))
        );
    }

    #[test]
    fn database_ids_are_validated_before_sending() {
        assert!(parse(&["backup", "nodatabase"]).is_err());
        assert!(parse(&["backup", "db1/a/b"]).is_err());
        assert!(parse(&["restore", "a1", "--new-name", "bad/name"]).is_err());
        assert!(parse(&["databases", "--agent", "not an agent"]).is_err());
        assert!(parse(&["backup", "db1/my db", "--wait"]).is_ok());
    }

    #[test]
    fn audit_takes_listing_flags_or_verify() {
        let list = parse(&["audit", "--after", "7", "--limit", "3"]).expect("audit listing");
        let Command::Audit(args) = list.command else {
            panic!("expected audit")
        };
        assert_eq!((args.after, args.limit), (Some(7), Some(3)));
        assert!(args.command.is_none());
        let verify = parse(&["audit", "verify", "--json"]).expect("audit verify");
        assert!(verify.json);
        let Command::Audit(args) = verify.command else {
            panic!("expected audit")
        };
        assert!(matches!(args.command, Some(AuditCommand::Verify)));
    }

    #[test]
    fn restore_takes_emergency_flags() {
        let cli = parse(&[
            "restore",
            "a1",
            "--replace",
            "--emergency",
            "--skip-safety-backup",
            "--no-wait",
            "--reason",
            "prod is corrupt",
        ])
        .expect("emergency restore");
        let Command::Restore(args) = cli.command else {
            panic!("expected restore")
        };
        assert!(args.emergency && args.skip_safety_backup && args.no_wait);
    }

    #[test]
    fn windows_lists_or_answers_next() {
        let list = parse(&["windows", "--json"]).expect("windows listing");
        let Command::Windows(args) = list.command else {
            panic!("expected windows")
        };
        assert!(args.command.is_none());
        let next = parse(&["windows", "next", "pg1/shop"]).expect("windows next");
        let Command::Windows(args) = next.command else {
            panic!("expected windows")
        };
        let Some(WindowsCommand::Next { database }) = args.command else {
            panic!("expected next")
        };
        assert_eq!(database.to_string(), "pg1/shop");
        assert!(parse(&["windows", "next", "nodatabase"]).is_err());
        assert!(parse(&["windows", "next"]).is_err());
    }

    #[test]
    fn window_add_needs_exactly_one_recurrence() {
        let weekly = parse(&[
            "window",
            "add",
            "prod-sunday",
            "--timezone",
            "Europe/Berlin",
            "--selector",
            "env=prod",
            "--weekly",
            "sun 02:00-04:00",
        ])
        .expect("weekly window");
        let Command::Window(WindowCommand::Add(args)) = weekly.command else {
            panic!("expected window add")
        };
        assert_eq!(args.kind, WindowKindArg::Maintenance);
        assert_eq!(args.selector.as_deref(), Some("env=prod"));
        assert!(!args.replace);

        let base = ["window", "add", "w", "--timezone", "UTC"];
        let with = |extra: &[&str]| {
            let mut all = base.to_vec();
            all.extend_from_slice(extra);
            parse(&all)
        };
        assert!(with(&["--cron", "0 3 * * *", "--duration", "2h"]).is_ok());
        assert!(with(&["--start", "2026-12-24T00:00", "--end", "2026-12-27T00:00"]).is_ok());
        assert!(with(&["--kind", "freeze", "--weekly", "fri 18:00-23:59"]).is_ok());
        for bad in [
            &[][..],
            &["--cron", "0 3 * * *"][..],
            &["--duration", "2h", "--weekly", "sun 02:00-04:00"][..],
            &["--start", "2026-12-24T00:00"][..],
            &[
                "--end",
                "2026-12-24T00:00",
                "--cron",
                "0 3 * * *",
                "--duration",
                "1h",
            ][..],
            &[
                "--weekly",
                "sun 02:00-04:00",
                "--cron",
                "0 3 * * *",
                "--duration",
                "1h",
            ][..],
            &["--weekly", "sun 02:00-04:00", "--kind", "sometimes"][..],
            &["--weekly", "sun 02:00-04:00", "--selector", "env"][..],
        ] {
            assert!(with(bad).is_err(), "{bad:?} should be refused");
        }
        assert!(parse(&["window", "add", "w", "--weekly", "sun 02:00-04:00"]).is_err());
        let all = with(&["--weekly", "sun 02:00-04:00", "--selector", "*"]).expect("star");
        let Command::Window(WindowCommand::Add(args)) = all.command else {
            panic!("expected window add")
        };
        assert_eq!(args.selector.as_deref(), Some(""));
        let rm = parse(&["window", "remove", "w"]).expect("rm alias");
        assert!(matches!(rm.command, Command::Window(WindowCommand::Rm { name }) if name == "w"));
    }

    #[test]
    fn apply_export_and_prune() {
        let apply = parse(&["apply", "-f", "fleet.toml", "--dry-run"]).expect("apply");
        let Command::Apply { file, dry_run } = apply.command else {
            panic!("expected apply")
        };
        assert_eq!(file, PathBuf::from("fleet.toml"));
        assert!(dry_run);
        assert!(parse(&["apply"]).is_err());
        assert!(matches!(
            parse(&["export", "--json"]).expect("export").command,
            Command::Export
        ));
        let prune =
            parse(&["prune", "--dry-run", "--database", "pg1/shop", "--all"]).expect("prune");
        let Command::Prune {
            dry_run,
            database,
            all,
        } = prune.command
        else {
            panic!("expected prune")
        };
        assert!(dry_run && all);
        assert_eq!(database.map(|d| d.to_string()).as_deref(), Some("pg1/shop"));
    }

    #[test]
    fn drill_takes_an_artifact_a_reason_a_server_and_wait() {
        let cli = parse(&[
            "drill",
            "pg1/shop",
            "--artifact",
            "a-1",
            "--reason",
            "quarterly",
            "--on",
            "pg2",
            "--wait",
        ])
        .expect("drill");
        let Command::Drill {
            database,
            artifact,
            reason,
            on,
            wait,
        } = cli.command
        else {
            panic!("expected drill, got {:?}", cli.command)
        };
        assert_eq!(database.to_string(), "pg1/shop");
        assert_eq!(artifact.as_deref(), Some("a-1"));
        assert_eq!(reason.as_deref(), Some("quarterly"));
        assert_eq!(on.as_deref(), Some("pg2"));
        assert!(wait);
        let plain = parse(&["drill", "pg1/shop"]).expect("drill without flags");
        assert!(matches!(
            plain.command,
            Command::Drill {
                artifact: None,
                reason: None,
                on: None,
                wait: false,
                ..
            }
        ));
        assert!(parse(&["drill", "shop"]).is_err());
        assert!(parse(&["drill"]).is_err());
    }

    #[test]
    fn rto_and_status_take_no_arguments() {
        assert!(matches!(
            parse(&["rto", "--json"]).expect("rto").command,
            Command::Rto
        ));
        assert!(matches!(
            parse(&["status"]).expect("status").command,
            Command::Status
        ));
        assert!(parse(&["rto", "pg1/shop"]).is_err());
    }

    fn migrate_args(args: &[&str]) -> Result<MigrateArgs, clap::Error> {
        let cli = parse(&[&["migrate"], args].concat())?;
        match cli.command {
            Command::Migrate(args) => Ok(args),
            other => panic!("expected migrate, got {other:?}"),
        }
    }

    #[test]
    fn migrate_takes_a_database_and_a_source() {
        let args = migrate_args(&[
            "db1/app",
            "--dir",
            "migrations",
            "--reason",
            "release 42",
            "--on-check-failure",
            "restore",
            "--wait",
        ])
        .expect("migrate one database");
        assert!(args.subcommand.is_none());
        assert_eq!(
            args.database.map(|d| d.to_string()).as_deref(),
            Some("db1/app")
        );
        assert_eq!(args.dir, Some(PathBuf::from("migrations")));
        assert_eq!(args.on_check_failure, Some(OnCheckFailure::Restore));
        assert!(args.wait && args.selector.is_none() && args.waves.is_none());

        let command = migrate_args(&[
            "db1/app",
            "--command",
            "artisan",
            "--emergency",
            "--skip-safety-backup",
            "--no-wait",
            "--reason",
            "hotfix",
        ])
        .expect("command mode");
        assert_eq!(command.command.as_deref(), Some("artisan"));
        assert!(command.emergency && command.skip_safety_backup && command.no_wait);
        assert_eq!(command.on_check_failure, None);

        for (bad, kind) in [
            (&["db1/app"][..], ErrorKind::MissingRequiredArgument),
            (&["--dir", "d"][..], ErrorKind::MissingRequiredArgument),
            (
                &["db1/app", "--dir", "d", "--command", "c"][..],
                ErrorKind::ArgumentConflict,
            ),
            (
                &["db1/app", "--selector", "env=prod", "--dir", "d"][..],
                ErrorKind::ArgumentConflict,
            ),
            (
                &["db1/app", "--dir", "d", "--waves", "1,100%"][..],
                ErrorKind::ArgumentConflict,
            ),
            (
                &["db1/app", "--dir", "d", "--on-check-failure", "ignore"][..],
                ErrorKind::InvalidValue,
            ),
            (&["app", "--dir", "d"][..], ErrorKind::ValueValidation),
        ] {
            let err = migrate_args(bad).expect_err("refused");
            assert_eq!(err.kind(), kind, "{bad:?}: {err}");
        }
    }

    #[test]
    fn migrate_rolls_out_over_a_selector() {
        let args = migrate_args(&["--selector", "env=prod", "--dir", "m"]).expect("rollout");
        assert!(args.database.is_none());
        assert_eq!(args.selector.as_deref(), Some("env=prod"));
        assert_eq!(args.waves, None);
        let waves = migrate_args(&["--selector", "*", "--command", "c", "--waves", "2,100%"])
            .expect("rollout with waves");
        assert_eq!(waves.selector.as_deref(), Some(""));
        assert_eq!(waves.waves.as_deref(), Some("2,100%"));
        assert!(migrate_args(&["--selector", "env", "--dir", "m"]).is_err());
    }

    #[test]
    fn migrate_status_is_a_subcommand() {
        let args =
            migrate_args(&["status", "db1/app", "--dir", "migrations", "--json"]).expect("status");
        let Some(MigrateCommand::Status { database, dir }) = args.subcommand else {
            panic!("expected status")
        };
        assert_eq!(database.to_string(), "db1/app");
        assert_eq!(dir, PathBuf::from("migrations"));
        assert!(args.database.is_none() && args.dir.is_none());
        for bad in [
            &["status", "db1/app"][..],
            &["status", "--dir", "d"][..],
            &["status", "db1/app", "--dir", "d", "--wait"][..],
            &["status", "db1/app", "--dir", "d", "--command", "c"][..],
            &["db1/app", "--dir", "d", "status"][..],
        ] {
            assert!(migrate_args(bad).is_err(), "{bad:?} should be refused");
        }
    }

    #[test]
    fn rollout_and_rollouts() {
        let cli = parse(&["rollout", "r-1", "--wait"]).expect("rollout");
        assert!(matches!(cli.command, Command::Rollout { id, wait: true } if id == "r-1"));
        assert!(matches!(
            parse(&["rollouts", "--json"]).expect("rollouts").command,
            Command::Rollouts
        ));
        assert!(parse(&["rollout"]).is_err());
    }

    #[test]
    fn global_flags_go_anywhere() {
        let cli = parse(&["agents", "--json", "--coordinator", "http://10.0.0.1:7717"])
            .expect("global flags after the subcommand");
        assert!(cli.json);
        assert_eq!(cli.coordinator, "http://10.0.0.1:7717");
    }
}
