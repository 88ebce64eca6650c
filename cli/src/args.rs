//! The command line: global options and one subcommand per operator task.
//!
//! Names (`AGENT/DBNAME`, agent names, new database names) are validated here with the same
//! rules the coordinator applies, so a typo is reported before anything is sent.

use clap::{ArgGroup, Args, Parser, Subcommand};
use warden_shared::{DatabaseId, validate_agent_name, validate_database_name};

/// Where the coordinator listens unless `--coordinator` or `WARDEN_COORDINATOR` say otherwise.
pub const DEFAULT_COORDINATOR: &str = "http://127.0.0.1:7717";

/// Operate a Warden fleet: backups, restores, health checks and the audit log.
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

    /// Print one JSON document instead of a table.
    #[arg(long, global = true)]
    pub json: bool,

    #[command(subcommand)]
    pub command: Command,
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
        /// Includes expired and deleted artifacts.
        #[arg(long)]
        all: bool,
    },
    /// Shows the audit log, or verifies its hash chain with `audit verify`.
    Audit(AuditArgs),
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
    /// Shows progress and waits until the restore has ended.
    #[arg(long)]
    pub wait: bool,
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

fn parse_database_id(text: &str) -> Result<DatabaseId, String> {
    DatabaseId::parse(text).map_err(|err| err.to_string())
}

fn parse_agent_name(text: &str) -> Result<String, String> {
    validate_agent_name(text)
        .map(|()| text.to_owned())
        .map_err(|err| err.to_string())
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
    fn global_flags_go_anywhere() {
        let cli = parse(&["agents", "--json", "--coordinator", "http://10.0.0.1:7717"])
            .expect("global flags after the subcommand");
        assert!(cli.json);
        assert_eq!(cli.coordinator, "http://10.0.0.1:7717");
    }
}
