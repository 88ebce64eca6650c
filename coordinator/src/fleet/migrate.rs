//! Safe migrations, the fleet side: a migration of one database is checked here (its files,
//! the command its agent allows, the destructive guard) and queued as a migrate order. The
//! dispatcher then treats it as destructive work: it waits for a maintenance window, takes a
//! verified pre-migration backup and carries that artifact to the agent.

use std::collections::HashSet;

use prost::Message as _;
use serde_json::json;
use warden_proto::v1::{self, order_result};
use warden_shared::{DatabaseId, Guard, Labels, MigrationSource, OnCheckFailure, OrderSpec};

use super::{BreakGlass, Fleet};
use crate::audit::Actor;
use crate::error::{CoordinatorError, CoordinatorResult};
use crate::policy::FleetPolicy;
use crate::store::{MigrateCommand, OrderRecord, Store};

/// What an operator asks a migration (of one database, or of each in a rollout) to do.
#[derive(Debug, Clone, Default)]
pub struct MigrationRequest {
    /// SQL files or a command's name; `None` when the request gave neither.
    pub source: Option<MigrationSource>,
    pub reason: String,
    /// Break glass: start whatever the windows say, and pass the destructive guard.
    pub emergency: bool,
    /// With `emergency` only: no pre-migration backup.
    pub skip_safety_backup: bool,
    /// Refuse instead of waiting for a maintenance window.
    pub no_wait: bool,
    /// `stop` or `restore`; empty: the policy's `[migrate] on_check_failure`.
    pub on_check_failure: String,
}

impl MigrationRequest {
    /// The request as the audit log records it: files by version, name and checksum, never
    /// their SQL.
    pub fn audit_params(&self) -> serde_json::Value {
        let mut params = json!({
            "reason": self.reason,
            "emergency": self.emergency,
            "skip_safety_backup": self.skip_safety_backup,
            "no_wait": self.no_wait,
            "on_check_failure": self.on_check_failure,
        });
        match &self.source {
            Some(MigrationSource::Sql { files }) => {
                params["migrations"] = files
                    .iter()
                    .map(|f| json!({ "version": f.version, "name": f.name, "sha256": f.sha256 }))
                    .collect();
            }
            Some(MigrationSource::Command { name }) => params["command"] = json!(name),
            None => {}
        }
        params
    }

    /// How the request asks its work to start.
    fn glass(&self) -> BreakGlass {
        BreakGlass::new(self.emergency, self.skip_safety_backup, self.no_wait)
    }
}

/// A request whose own fields are valid: its source (SQL files sorted by version) and the
/// failure mode it asks for, if any.
pub(super) struct CheckedRequest {
    pub source: MigrationSource,
    pub on_check_failure: Option<OnCheckFailure>,
}

/// Checks what a request says on its own, before any database is looked at.
pub(super) fn check_request(
    request: &MigrationRequest,
    status_only: bool,
) -> CoordinatorResult<CheckedRequest> {
    let invalid = |message: String| Err(CoordinatorError::InvalidArgument(message));
    if status_only && (request.emergency || request.no_wait || request.skip_safety_backup) {
        return invalid(
            "a status check only reads what the database recorded: it needs no window and no backup, so --emergency, --no-wait and --skip-safety-backup do not apply".to_owned(),
        );
    }
    request.glass().check(&request.reason)?;
    let on_check_failure =
        match request.on_check_failure.trim() {
            "" => None,
            text => Some(text.parse::<OnCheckFailure>().map_err(|e| {
                CoordinatorError::InvalidArgument(format!("{e}; nothing was queued"))
            })?),
        };
    let source = match &request.source {
        None => {
            return invalid(
                "give the migration: SQL files (NNNN_name.sql) or the name of a command the database's agent allows; nothing was queued".to_owned(),
            );
        }
        Some(MigrationSource::Sql { files }) => {
            let files = warden_shared::migration::validate_set(files.clone()).map_err(|e| {
                CoordinatorError::InvalidArgument(format!("{e}; nothing was queued"))
            })?;
            MigrationSource::Sql { files }
        }
        Some(MigrationSource::Command { name }) => {
            if status_only {
                return invalid(
                    "a status check compares SQL migration files with what the database recorded; a migration command has no status Warden can read. Give the files instead".to_owned(),
                );
            }
            if name.trim().is_empty() {
                return invalid(
                    "the migration command's name is empty; give one the database's agent allows (`warden databases` shows them)".to_owned(),
                );
            }
            MigrationSource::Command { name: name.clone() }
        }
    };
    Ok(CheckedRequest {
        source,
        on_check_failure,
    })
}

/// Migration files known to be applied to a database, as (version number, sha256 in lower
/// case): what the newest finished SQL migration of it reported.
pub(super) type KnownApplied = HashSet<(u64, String)>;

/// What a migration's result says is applied to its database once it ended: the files it
/// applied (unless it restored the pre-migration backup, which undid them) and those it found
/// recorded already.
pub(super) fn known_applied(result: &v1::OrderResult) -> KnownApplied {
    let Some(order_result::Outcome::Migrate(outcome)) = &result.outcome else {
        return KnownApplied::new();
    };
    let applied: &[v1::AppliedMigration] = if outcome.restored {
        &[]
    } else {
        &outcome.applied
    };
    applied
        .iter()
        .chain(&outcome.already_applied)
        .chain(&outcome.unknown)
        .filter_map(|a| {
            let number = a.version.parse::<u64>().ok()?;
            Some((number, a.sha256.to_ascii_lowercase()))
        })
        .collect()
}

/// Whether `file` is among the files known to be applied, with the same checksum.
fn is_known_applied(known: &KnownApplied, file: &warden_shared::MigrationFile) -> bool {
    known.contains(&(file.number(), file.sha256.to_ascii_lowercase()))
}

/// Checks a migration against one database: its command must be one the database's agent
/// allows, and where the destructive guard protects the database (and glass is not broken)
/// nothing in it may match a deny pattern. SQL files `known` to be applied already are not
/// checked: a deny-listed statement in an old file (an init file that drops a schema, say)
/// does not block every later migration. The agent checks every file it finds pending
/// against the guard again before applying any, so knowledge that went stale is safe.
/// Returns the guard the agent must enforce (empty when none protects the database), or
/// what is wrong.
#[allow(clippy::too_many_arguments)]
pub(super) fn admit(
    policy: &FleetPolicy,
    target: &DatabaseId,
    labels: &Labels,
    commands: &[MigrateCommand],
    source: &MigrationSource,
    known: &KnownApplied,
    emergency: bool,
    status_only: bool,
) -> Result<Guard, String> {
    let command = match source {
        MigrationSource::Command { name } => Some(allowed_command(target, commands, name)?),
        MigrationSource::Sql { .. } => None,
    };
    let guarded = policy.migrate.guards(labels) && !emergency;
    if !guarded {
        return Ok(Guard::default());
    }
    let guard = policy.migrate.guard();
    let refusal = |what: String, violation: warden_shared::migration::Violation| {
        format!(
            "{what} {:?}, which matches deny pattern {:?} of the destructive guard that protects this database ([migrate] guard = {:?}); break glass with --emergency --reason \"...\" to run it anyway",
            violation.what,
            violation.pattern,
            policy.migrate.guard_text()
        )
    };
    if !status_only {
        match (source, command) {
            (MigrationSource::Sql { files }, _) => {
                for file in files.iter().filter(|f| !is_known_applied(known, f)) {
                    if let Some(violation) = guard.check_sql(&file.sql) {
                        return Err(refusal(
                            format!("{} has the statement", file.file_name()),
                            violation,
                        ));
                    }
                }
            }
            (MigrationSource::Command { name }, Some(command)) => {
                if let Some(violation) = guard.check_command(&command.argv) {
                    return Err(refusal(format!("command {name:?} runs"), violation));
                }
            }
            (MigrationSource::Command { .. }, None) => {}
        }
    }
    Ok(guard)
}

/// The command named `name` among those the database's agent allows.
fn allowed_command<'a>(
    target: &DatabaseId,
    commands: &'a [MigrateCommand],
    name: &str,
) -> Result<&'a MigrateCommand, String> {
    if let Some(command) = commands.iter().find(|c| c.name == name) {
        return Ok(command);
    }
    if commands.is_empty() {
        return Err(format!(
            "agent {} allows no migration commands for database {}; configure them under [databases.migrate.commands] in the agent's config, or give SQL files",
            target.agent, target.database
        ));
    }
    let names: Vec<&str> = commands.iter().map(|c| c.name.as_str()).collect();
    Err(format!(
        "agent {} does not allow a migration command named {name:?} for database {}; it allows: {}. Add it under [databases.migrate.commands] in the agent's config",
        target.agent,
        target.database,
        names.join(", ")
    ))
}

/// The migrate order for one database, with the policy's post-checks for it.
pub(super) fn migrate_spec(
    policy: &FleetPolicy,
    labels: &Labels,
    request: &CheckedRequest,
    status_only: bool,
    guard: Guard,
    rollout_id: Option<String>,
) -> OrderSpec {
    OrderSpec::Migrate {
        source: request.source.clone(),
        status_only,
        checks: policy.checks_for(labels),
        on_check_failure: request
            .on_check_failure
            .unwrap_or(policy.migrate.on_check_failure),
        deny_sql: guard.sql,
        deny_commands: guard.commands,
        pre_migration: None,
        rollout_id,
    }
}

impl Fleet {
    /// Queues a migration of `database` (or with `status_only`, a comparison of the files with
    /// what it recorded, which runs at once: no window, no backup).
    pub async fn submit_migrate(
        &self,
        actor: &Actor,
        database: &str,
        request: &MigrationRequest,
        status_only: bool,
    ) -> CoordinatorResult<OrderRecord> {
        let checked = check_request(request, status_only)?;
        let target = self.online_database(database).await?;
        let labels = self.labels_of(&target).await?;
        let (commands, known) = {
            let mut conn = self.store.read().await?;
            (
                Store::migrate_commands(&mut conn, &target.agent, &target.database).await?,
                known_applied_to(&mut conn, &target).await?,
            )
        };
        let policy = self.policy();
        let guard = admit(
            &policy.policy,
            &target,
            &labels,
            &commands,
            &checked.source,
            &known,
            request.emergency,
            status_only,
        )
        .map_err(|problem| {
            CoordinatorError::FailedPrecondition(format!("{target}: {problem}. Nothing was queued"))
        })?;
        let spec = migrate_spec(&policy.policy, &labels, &checked, status_only, guard, None);
        self.submit_destructive(actor, &target, &spec, &request.reason, request.glass())
            .await
    }
}

/// How many of a database's newest finished migrations [`known_applied_to`] looks through
/// for one of SQL files (migrations by command say nothing about the files).
const KNOWN_APPLIED_LOOKBACK: i64 = 20;

/// The files known to be applied to `target`: those the newest finished SQL migration of it
/// (a status check too) reported applied or recorded. Empty when none reported anything.
pub(super) async fn known_applied_to(
    conn: &mut sqlx::SqliteConnection,
    target: &DatabaseId,
) -> CoordinatorResult<KnownApplied> {
    let finished = Store::finished_migrations(
        conn,
        &target.agent,
        &target.database,
        KNOWN_APPLIED_LOOKBACK,
    )
    .await?;
    for order in finished {
        let Ok(OrderSpec::Migrate {
            source: MigrationSource::Sql { .. },
            ..
        }) = order.spec()
        else {
            continue;
        };
        let Some(result) = order
            .result
            .as_deref()
            .and_then(|bytes| v1::OrderResult::decode(bytes).ok())
        else {
            continue;
        };
        return Ok(known_applied(&result));
    }
    Ok(KnownApplied::new())
}

/// Audit parameters of a migration's result, which tie what it applied to the backup taken
/// before and to the rollout it belongs to.
pub(super) fn result_params(order: &OrderRecord, result: &v1::OrderResult) -> serde_json::Value {
    let spec = order.spec().ok();
    let (spec_artifact, rollout_id, command, status_only) = match &spec {
        Some(OrderSpec::Migrate {
            pre_migration,
            rollout_id,
            source,
            status_only,
            ..
        }) => (
            pre_migration.as_ref().map(|p| p.artifact_id.clone()),
            rollout_id.clone(),
            match source {
                MigrationSource::Command { name } => Some(name.clone()),
                MigrationSource::Sql { .. } => None,
            },
            *status_only,
        ),
        _ => (None, None, None, false),
    };
    let outcome = match &result.outcome {
        Some(order_result::Outcome::Migrate(outcome)) => Some(outcome),
        _ => None,
    };
    let applied: Vec<String> = outcome
        .map(|o| {
            o.applied
                .iter()
                .map(|a| format!("{}_{}", a.version, a.name))
                .collect()
        })
        .unwrap_or_default();
    let artifact = outcome
        .map(|o| o.pre_migration_artifact_id.clone())
        .filter(|id| !id.is_empty())
        .or(spec_artifact);
    let failed_version = outcome
        .map(|o| o.failed_version.clone())
        .filter(|v| !v.is_empty());
    let checks_failed: Vec<&str> = outcome
        .map(|o| {
            o.checks
                .iter()
                .filter(|c| !c.passed)
                .map(|c| c.name.as_str())
                .collect()
        })
        .unwrap_or_default();
    let mut params = json!({
        "applied": applied,
        "pre_migration_artifact_id": artifact,
        "restored": outcome.is_some_and(|o| o.restored),
        "rollout_id": rollout_id,
        "failed_version": failed_version,
        "checks_failed": checks_failed,
    });
    if let Some(command) = command {
        params["command"] = json!(command);
    }
    if status_only {
        params["status_only"] = json!(true);
        params["pending"] = outcome
            .map(|o| {
                o.pending
                    .iter()
                    .map(|p| format!("{}_{}", p.version, p.name))
                    .collect()
            })
            .unwrap_or_default();
    }
    params
}

#[cfg(test)]
mod tests {
    use warden_shared::MigrationFile;

    use super::*;
    use warden_shared::labels::labels;

    /// What a test asks [`admit`] to let through.
    #[derive(Clone, Copy)]
    enum Ask {
        Migrate,
        BreakGlass,
        StatusOnly,
    }

    /// Database a1/shop as [`admit`] sees it: the policy, its labels, the commands its agent
    /// allows and the files known to be applied to it.
    #[derive(Clone)]
    struct Shop {
        policy: FleetPolicy,
        labels: Labels,
        commands: Vec<MigrateCommand>,
        known: KnownApplied,
    }

    impl Shop {
        /// Labelled `env=<env>`, allowing no commands, nothing known applied.
        fn new(policy: FleetPolicy, env: &str) -> Self {
            Self {
                policy,
                labels: labels(&[("env", env)]),
                commands: Vec::new(),
                known: KnownApplied::new(),
            }
        }

        fn admit(&self, source: &MigrationSource, ask: Ask) -> Result<Guard, String> {
            let target = DatabaseId::new("a1", "shop").expect("valid");
            admit(
                &self.policy,
                &target,
                &self.labels,
                &self.commands,
                source,
                &self.known,
                matches!(ask, Ask::BreakGlass),
                matches!(ask, Ask::StatusOnly),
            )
        }
    }

    fn file(name: &str, sql: &str) -> MigrationFile {
        MigrationFile::from_file(name, sql.to_owned()).expect("valid name")
    }

    fn sql(files: Vec<MigrationFile>) -> MigrationRequest {
        MigrationRequest {
            source: Some(MigrationSource::Sql { files }),
            ..MigrationRequest::default()
        }
    }

    fn invalid(request: &MigrationRequest, status_only: bool) -> String {
        match check_request(request, status_only) {
            Err(CoordinatorError::InvalidArgument(message)) => message,
            Err(other) => panic!("expected InvalidArgument, got {other:?}"),
            Ok(_) => panic!("accepted {request:?}"),
        }
    }

    #[test]
    fn requests_are_checked_on_their_own_first() {
        let good = sql(vec![
            file("2_b.sql", "SELECT 2;"),
            file("1_a.sql", "SELECT 1;"),
        ]);
        let checked = check_request(&good, false).expect("valid");
        let MigrationSource::Sql { files } = &checked.source else {
            panic!("{:?}", checked.source)
        };
        assert_eq!(files[0].version, "1", "sorted by version");
        assert_eq!(checked.on_check_failure, None);

        let emergency = MigrationRequest {
            emergency: true,
            ..good.clone()
        };
        assert!(invalid(&emergency, false).contains("--reason"));
        let skip = MigrationRequest {
            skip_safety_backup: true,
            ..good.clone()
        };
        assert!(invalid(&skip, false).contains("only allowed with --emergency"));
        let no_wait = MigrationRequest {
            no_wait: true,
            ..good.clone()
        };
        assert!(invalid(&no_wait, true).contains("status check"));
        let mode = MigrationRequest {
            on_check_failure: "rollback".to_owned(),
            ..good.clone()
        };
        assert!(invalid(&mode, false).contains("\"stop\" or \"restore\""));
        let restore = MigrationRequest {
            on_check_failure: "restore".to_owned(),
            ..good
        };
        assert_eq!(
            check_request(&restore, false)
                .expect("valid")
                .on_check_failure,
            Some(OnCheckFailure::Restore)
        );
        let tampered = {
            let mut f = file("1_a.sql", "SELECT 1;");
            f.sql.push_str("DROP TABLE x;");
            sql(vec![f])
        };
        let message = invalid(&tampered, false);
        assert!(
            message.contains("1_a.sql") && message.contains("nothing was queued"),
            "{message}"
        );
        assert!(invalid(&MigrationRequest::default(), false).contains("give the migration"));
        let command = MigrationRequest {
            source: Some(MigrationSource::Command {
                name: "migrate".to_owned(),
            }),
            ..MigrationRequest::default()
        };
        assert!(check_request(&command, false).is_ok());
        assert!(invalid(&command, true).contains("no status"));
    }

    #[test]
    fn the_guard_refuses_destructive_sql_in_guarded_databases_only() {
        let drop = MigrationSource::Sql {
            files: vec![
                file("1_ok.sql", "CREATE TABLE t (id int);"),
                file(
                    "2_bad.sql",
                    "-- TRUNCATE in a comment\nDROP SCHEMA app CASCADE;",
                ),
            ],
        };
        let prod = Shop::new(FleetPolicy::default(), "prod");
        let problem = prod.admit(&drop, Ask::Migrate).expect_err("guarded");
        assert!(
            problem.contains("2_bad.sql")
                && problem.contains("DROP SCHEMA app CASCADE")
                && problem.contains("DROP SCHEMA ... CASCADE")
                && problem.contains("--emergency --reason"),
            "{problem}"
        );
        // Glass broken: it passes, and the agent gets no deny list.
        assert_eq!(prod.admit(&drop, Ask::BreakGlass), Ok(Guard::default()));
        // A status check changes nothing, so it passes; the agent still gets the deny list.
        let deny = prod.admit(&drop, Ask::StatusOnly).expect("status");
        assert!(
            deny.commands.iter().any(|d| d == "migrate:fresh"),
            "{deny:?}"
        );
        assert!(
            deny.sql.iter().any(|d| d == "DROP SCHEMA ... CASCADE"),
            "{deny:?}"
        );
        // Not guarded: no deny list.
        let staging = Shop::new(FleetPolicy::default(), "staging");
        assert_eq!(staging.admit(&drop, Ask::Migrate), Ok(Guard::default()));
    }

    #[test]
    fn files_known_to_be_applied_are_not_checked_again_but_the_agent_gets_the_guard() {
        let policy = FleetPolicy {
            migrate: crate::policy::MigratePolicy {
                deny_sql: vec!["DELETE FROM ...".to_owned()],
                ..crate::policy::MigratePolicy::default()
            },
            ..FleetPolicy::default()
        };
        let init = file(
            "0001_init.sql",
            "DROP SCHEMA app CASCADE; CREATE SCHEMA app;",
        );
        let next = file("0002_add.sql", "CREATE TABLE app.t (id int);");
        let source = MigrationSource::Sql {
            files: vec![init.clone(), next.clone()],
        };
        // The old init file was applied with this very content: only 0002 is checked, and
        // the agent gets the whole SQL deny list (built-in and the policy's) and commands.
        let prod = Shop {
            known: [(1, init.sha256.clone())].into(),
            ..Shop::new(policy, "prod")
        };
        let guard = prod
            .admit(&source, Ask::Migrate)
            .expect("only pending files are checked");
        assert!(
            guard.sql.iter().any(|p| p == "DROP SCHEMA ... CASCADE")
                && guard.sql.iter().any(|p| p == "DELETE FROM ..."),
            "{guard:?}"
        );
        assert!(guard.commands.iter().any(|c| c == "db:wipe"), "{guard:?}");
        // Another file under the same version, or the right file under another version, is
        // not known applied: it is checked.
        let edited = file("0001_init.sql", "DROP SCHEMA app CASCADE;");
        let changed = MigrationSource::Sql {
            files: vec![edited, next.clone()],
        };
        let problem = prod
            .admit(&changed, Ask::Migrate)
            .expect_err("changed file is checked");
        assert!(problem.contains("0001_init.sql"), "{problem}");
        let other_version = Shop {
            known: [(7, init.sha256.clone())].into(),
            ..prod.clone()
        };
        assert!(other_version.admit(&source, Ask::Migrate).is_err());
        // A pending file with a policy pattern is refused.
        let delete = MigrationSource::Sql {
            files: vec![file("0003_purge.sql", "DELETE FROM app.t;")],
        };
        let problem = prod
            .admit(&delete, Ask::Migrate)
            .expect_err("policy pattern");
        assert!(problem.contains("\"DELETE FROM ...\""), "{problem}");
    }

    #[test]
    fn a_results_applied_files_are_known_unless_it_restored_them() {
        let row = |version: &str, sha256: &str| v1::AppliedMigration {
            version: version.to_owned(),
            name: "x".to_owned(),
            sha256: sha256.to_owned(),
            ..Default::default()
        };
        let result = |restored: bool| v1::OrderResult {
            outcome: Some(order_result::Outcome::Migrate(v1::MigrateOutcome {
                applied: vec![row("0003", "CC")],
                already_applied: vec![row("0001", "aa"), row("junk", "zz")],
                unknown: vec![row("2", "bb")],
                restored,
                ..Default::default()
            })),
            ..Default::default()
        };
        let known = known_applied(&result(false));
        let expected: KnownApplied = [
            (1, "aa".to_owned()),
            (2, "bb".to_owned()),
            (3, "cc".to_owned()),
        ]
        .into();
        assert_eq!(known, expected);
        // Restoring the pre-migration backup undid what the order applied.
        let known = known_applied(&result(true));
        assert_eq!(known, [(1, "aa".to_owned()), (2, "bb".to_owned())].into());
        assert!(known_applied(&v1::OrderResult::default()).is_empty());
    }

    #[test]
    fn commands_must_be_allowed_and_pass_the_guard() {
        let command = |name: &str, argv: &str| MigrateCommand {
            name: name.to_owned(),
            argv: argv.split(' ').map(str::to_owned).collect(),
        };
        let by_name = |name: &str| MigrationSource::Command {
            name: name.to_owned(),
        };
        let none = Shop::new(FleetPolicy::default(), "prod")
            .admit(&by_name("up"), Ask::Migrate)
            .expect_err("no commands");
        assert!(
            none.contains("allows no migration commands")
                && none.contains("[databases.migrate.commands]"),
            "{none}"
        );
        let prod = Shop {
            commands: vec![
                command("up", "php artisan migrate --force"),
                command("fresh", "php artisan migrate:fresh --force"),
            ],
            ..Shop::new(FleetPolicy::default(), "prod")
        };
        let unknown = prod
            .admit(&by_name("down"), Ask::Migrate)
            .expect_err("unknown command");
        assert!(unknown.contains("it allows: up, fresh"), "{unknown}");
        let deny = prod.admit(&by_name("up"), Ask::Migrate).expect("allowed");
        assert!(
            deny.commands.iter().any(|d| d == "migrate:fresh"),
            "{deny:?}"
        );
        let fresh = prod
            .admit(&by_name("fresh"), Ask::Migrate)
            .expect_err("guarded");
        assert!(
            fresh.contains("php artisan migrate:fresh --force")
                && fresh.contains("\"migrate:fresh\""),
            "{fresh}"
        );
        assert!(prod.admit(&by_name("fresh"), Ask::BreakGlass).is_ok());
    }
}
