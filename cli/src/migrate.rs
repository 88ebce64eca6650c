//! `warden migrate`: reading a directory of migration files, and the three ways to send them
//! (one database, `migrate status`, a rollout over a selector).
//!
//! Everything local is read and checked before the coordinator is contacted, so a bad file
//! name or a typo in a flag costs no round trip. The coordinator validates the files again:
//! it is the authority, and this reads them with the same rules (`warden_shared::migration`).

use std::path::Path;

use warden_proto::v1;
use warden_proto::v1::migration_request::Source;
use warden_shared::migration::{MAX_MIGRATION_BYTES, parse_file_name, validate_set};
use warden_shared::{DatabaseId, MigrationFile};

use crate::args::{DEFAULT_WAVES, MigrateArgs, MigrateCommand};
use crate::client::Coordinator;
use crate::commands::{BreakGlass, announce_unfollowed, show, wait_for_end};
use crate::error::{CliError, Outcome};
use crate::json::{migrate_outcome, order_state};
use crate::render::{print_migration_status, print_order, print_rollout};

/// What `warden migrate` was asked to do, with its files read and its flags checked.
#[derive(Debug)]
pub enum MigrationPlan {
    /// `migrate status DB --dir DIR`: compare, change nothing.
    Status {
        database: DatabaseId,
        files: Vec<MigrationFile>,
    },
    /// `migrate DB ...`: one migrate order.
    One {
        database: DatabaseId,
        migration: v1::MigrationRequest,
        wait: bool,
    },
    /// `migrate --selector SEL ...`: a rollout in waves.
    Rollout {
        selector: String,
        waves: String,
        migration: v1::MigrationRequest,
        wait: bool,
    },
}

impl MigrationPlan {
    /// Checks the flags and reads the migration files, before anything is sent.
    pub fn new(args: &MigrateArgs) -> Result<Self, CliError> {
        if let Some(MigrateCommand::Status { database, dir }) = &args.subcommand {
            return Ok(MigrationPlan::Status {
                database: database.clone(),
                files: read_migration_dir(dir)?,
            });
        }
        check_migrate_flags(args)?;
        let source = match (&args.dir, &args.command) {
            (Some(dir), None) => Source::Sql(v1::SqlMigrations {
                files: read_migration_dir(dir)?
                    .iter()
                    .map(v1::MigrationFile::from)
                    .collect(),
            }),
            (None, Some(command)) => Source::Command(command.trim().to_owned()),
            _ => {
                return Err(CliError::Input(
                    "say what to migrate with: --dir DIR (SQL files) or --command NAME (a command the agent allows), one of them".to_owned(),
                ));
            }
        };
        let migration = v1::MigrationRequest {
            source: Some(source),
            reason: args.reason.clone().unwrap_or_default(),
            emergency: args.emergency,
            skip_safety_backup: args.skip_safety_backup,
            no_wait: args.no_wait,
            on_check_failure: args
                .on_check_failure
                .map(|action| action.as_str().to_owned())
                .unwrap_or_default(),
        };
        match (&args.database, &args.selector) {
            (Some(database), None) => Ok(MigrationPlan::One {
                database: database.clone(),
                migration,
                wait: args.wait,
            }),
            (None, Some(selector)) => Ok(MigrationPlan::Rollout {
                selector: selector.clone(),
                waves: args
                    .waves
                    .clone()
                    .unwrap_or_else(|| DEFAULT_WAVES.to_owned()),
                migration,
                wait: args.wait,
            }),
            _ => Err(CliError::Input(
                "say what to migrate: one database (AGENT/DBNAME) or --selector SEL for a rollout, one of them".to_owned(),
            )),
        }
    }

    /// Sends the plan and prints what came of it.
    pub async fn run(self, coordinator: &Coordinator, json: bool) -> Result<Outcome, CliError> {
        let c = coordinator;
        match self {
            MigrationPlan::Status { database, files } => status(c, &database, &files, json).await,
            MigrationPlan::One {
                database,
                migration,
                wait,
            } => {
                let request = v1::SubmitMigrateRequest {
                    database: database.to_string(),
                    migration: Some(migration),
                    status_only: false,
                };
                let order = c.answer(c.admin().submit_migrate(request).await)?;
                if !wait {
                    announce_unfollowed(&order, true);
                }
                show(c, order, wait, json, print_order).await
            }
            MigrationPlan::Rollout {
                selector,
                waves,
                migration,
                wait,
            } => {
                let request = v1::SubmitRolloutRequest {
                    selector,
                    migration: Some(migration),
                    waves,
                };
                let rollout = c.answer(c.admin().submit_rollout(request).await)?;
                if !wait {
                    eprintln!(
                        "rollout {id} is {state}: follow it with `warden rollout {id} --wait`",
                        id = rollout.id,
                        state = rollout.state
                    );
                }
                show(c, rollout, wait, json, print_rollout).await
            }
        }
    }
}

/// `migrate status`: a status-only order, followed to its end, printed as the files against
/// what the database recorded.
async fn status(
    coordinator: &Coordinator,
    database: &DatabaseId,
    files: &[MigrationFile],
    json: bool,
) -> Result<Outcome, CliError> {
    let c = coordinator;
    let request = v1::SubmitMigrateRequest {
        database: database.to_string(),
        migration: Some(v1::MigrationRequest {
            source: Some(Source::Sql(v1::SqlMigrations {
                files: files.iter().map(v1::MigrationFile::from).collect(),
            })),
            ..Default::default()
        }),
        status_only: true,
    };
    let order = c.answer(c.admin().submit_migrate(request).await)?;
    let Some(order) = wait_for_end(c, order, json, print_order).await? else {
        return Ok(Outcome::Interrupted);
    };
    // A status that did not succeed compared nothing (the database unreachable, say), even
    // when its result carries an empty report: the order says why.
    let report = migrate_outcome(&order)
        .filter(|_| order_state(&order) == Some(warden_shared::OrderState::Succeeded));
    let Some(report) = report else {
        print_order(&order, json)?;
        return Ok(Outcome::WorkFailed);
    };
    print_migration_status(&order, report, json)?;
    Ok(status_outcome(&order, report))
}

/// How `migrate status` ends: an applied file that changed since fails it (exit 2, for CI
/// gates); otherwise the order's own end.
fn status_outcome(order: &v1::Order, report: &v1::MigrateOutcome) -> Outcome {
    if report.changed.is_empty() {
        Outcome::of_final_state(order_state(order))
    } else {
        Outcome::FilesChanged
    }
}

/// Refuses migrate flags that do not go together, before anything is sent.
fn check_migrate_flags(args: &MigrateArgs) -> Result<(), CliError> {
    BreakGlass {
        emergency: args.emergency,
        skip_safety_backup: args.skip_safety_backup,
        reason: args.reason.as_deref(),
        work: "migration",
        backup: "a pre-migration backup of the database",
    }
    .check()?;
    if args.command.as_deref().is_some_and(|c| c.trim().is_empty()) {
        return Err(CliError::Input(
            "--command needs the name of a migration command the database's agent allows (its configuration lists them)".to_owned(),
        ));
    }
    Ok(())
}

/// Reads the migrations of `dir`: every regular file (or link to one) directly in it whose
/// name ends in `.sql`, each named like `0001_create_users.sql` and UTF-8 text. Other files
/// and subdirectories are ignored. Returns them checked and in version order.
pub fn read_migration_dir(dir: &Path) -> Result<Vec<MigrationFile>, CliError> {
    let shown = dir.display();
    let unreadable = |what: &dyn std::fmt::Display, err: std::io::Error| {
        CliError::Input(format!(
            "cannot read {what}: {err}: check --dir (a directory of NNNN_name.sql files)"
        ))
    };
    let mut found = Vec::new();
    let entries = std::fs::read_dir(dir)
        .map_err(|err| unreadable(&format!("the migrations directory {shown}"), err))?;
    for entry in entries {
        let entry = entry.map_err(|err| unreadable(&format!("the directory {shown}"), err))?;
        if !entry.file_name().as_encoded_bytes().ends_with(b".sql") {
            continue;
        }
        let path = entry.path();
        let metadata = std::fs::metadata(&path).map_err(|err| unreadable(&path.display(), err))?;
        if metadata.is_file() {
            found.push((entry.file_name(), metadata.len()));
        }
    }
    if found.is_empty() {
        return Err(CliError::Input(format!(
            "no migration files in {shown}: name them like 0001_create_users.sql (files not ending in .sql are ignored)"
        )));
    }
    // In name order, so the first problem reported is the same on every run.
    found.sort();
    let mut names = Vec::with_capacity(found.len());
    let mut total: u64 = 0;
    for (name, len) in &found {
        let name = name.to_str().ok_or_else(|| {
            CliError::Input(format!(
                "{shown}: the file name {} is not UTF-8: rename it like 0001_create_users.sql",
                name.display()
            ))
        })?;
        parse_file_name(name).map_err(|err| CliError::Input(format!("{shown}: {err}")))?;
        total = total.saturating_add(*len);
        names.push(name);
    }
    // Before reading anything: a stray dump among the files should not be read whole.
    if total > MAX_MIGRATION_BYTES as u64 {
        return Err(CliError::Input(format!(
            "{shown}: the migrations hold {total} bytes, more than the {MAX_MIGRATION_BYTES} one order may carry; apply them in several steps"
        )));
    }
    let mut files = Vec::with_capacity(names.len());
    for name in names {
        let path = dir.join(name);
        let bytes = std::fs::read(&path).map_err(|err| unreadable(&path.display(), err))?;
        let sql = String::from_utf8(bytes).map_err(|err| {
            CliError::Input(format!(
                "{}: not UTF-8 text (invalid bytes at offset {}): save it as UTF-8",
                path.display(),
                err.utf8_error().valid_up_to()
            ))
        })?;
        if sql.starts_with('\u{feff}') {
            return Err(CliError::Input(format!(
                "{}: starts with a byte order mark, which PostgreSQL does not accept: save it as UTF-8 without BOM",
                path.display()
            )));
        }
        let file = MigrationFile::from_file(name, sql)
            .map_err(|err| CliError::Input(format!("{shown}: {err}")))?;
        files.push(file);
    }
    validate_set(files).map_err(|err| CliError::Input(format!("{shown}: {err}")))
}

#[cfg(test)]
mod tests {
    use std::path::PathBuf;

    use super::*;

    /// A fresh directory of its own under the system's temporary directory, removed again
    /// when dropped.
    struct Scratch(PathBuf);

    impl Scratch {
        fn new(name: &str) -> Self {
            let dir = std::env::temp_dir()
                .join(format!("warden-cli-migrate-{name}-{}", std::process::id()));
            let _ = std::fs::remove_dir_all(&dir);
            std::fs::create_dir_all(&dir).expect("create scratch directory");
            Self(dir)
        }
    }

    impl std::ops::Deref for Scratch {
        type Target = Path;

        fn deref(&self) -> &Path {
            &self.0
        }
    }

    impl Drop for Scratch {
        fn drop(&mut self) {
            let _ = std::fs::remove_dir_all(&self.0);
        }
    }

    fn write(dir: &Path, name: &str, contents: &[u8]) {
        std::fs::write(dir.join(name), contents).expect("write file");
    }

    fn error(dir: &Path) -> String {
        let err = read_migration_dir(dir).expect_err("refused");
        assert_eq!(err.exit_code(), 2);
        err.to_string()
    }

    #[test]
    fn reads_sql_files_in_version_order_and_ignores_the_rest() {
        let dir = Scratch::new("order");
        write(&dir, "10_later.sql", b"CREATE TABLE later (id int);");
        write(&dir, "0002_users.sql", b"CREATE TABLE users (id int);");
        write(&dir, "README.md", b"not a migration");
        write(&dir, "0003_notes.sql.bak", b"ignored");
        std::fs::create_dir_all(dir.join("0004_dir.sql")).expect("subdirectory");
        write(&dir.join("0004_dir.sql"), "0005_nested.sql", b"SELECT 1;");
        let files = read_migration_dir(&dir).expect("valid");
        let names: Vec<String> = files.iter().map(MigrationFile::file_name).collect();
        assert_eq!(names, ["0002_users.sql", "10_later.sql"]);
        assert_eq!(
            files[0].sha256,
            warden_shared::migration::sha256_hex(b"CREATE TABLE users (id int);")
        );
    }

    #[test]
    fn refuses_bad_names_duplicates_and_empty_directories() {
        let dir = Scratch::new("bad");
        assert!(
            error(&dir).starts_with(&format!("no migration files in {}", dir.display())),
            "{}",
            error(&dir)
        );
        write(&dir, "0001_a.sql", b"SELECT 1;");
        write(&dir, "create_b.sql", b"SELECT 1;");
        let text = error(&dir);
        assert!(
            text.contains("\"create_b.sql\" is not a migration file name"),
            "{text}"
        );
        std::fs::remove_file(dir.join("create_b.sql")).expect("remove");
        write(&dir, "1_b.sql", b"SELECT 2;");
        let text = error(&dir);
        assert!(
            text.contains("0001_a.sql and 1_b.sql have the same version"),
            "{text}"
        );
    }

    #[test]
    fn refuses_text_that_is_not_utf8() {
        let dir = Scratch::new("utf8");
        write(&dir, "0001_a.sql", b"SELECT '\xff';");
        let text = error(&dir);
        assert!(
            text.ends_with(
                "0001_a.sql: not UTF-8 text (invalid bytes at offset 8): save it as UTF-8"
            ),
            "{text}"
        );
        write(&dir, "0001_a.sql", "\u{feff}SELECT 1;".as_bytes());
        assert!(error(&dir).contains("byte order mark"));
    }

    #[test]
    fn refuses_more_than_one_order_carries_before_reading() {
        let dir = Scratch::new("size");
        let big = vec![b' '; MAX_MIGRATION_BYTES / 2 + 1];
        write(&dir, "0001_a.sql", &big);
        write(&dir, "0002_b.sql", &big);
        assert!(error(&dir).contains("apply them in several steps"));
    }

    #[test]
    fn an_unreadable_directory_is_named() {
        let missing = std::env::temp_dir().join("warden-cli-no-such-migrations");
        let text = error(&missing);
        assert!(
            text.starts_with(&format!(
                "cannot read the migrations directory {}: ",
                missing.display()
            )),
            "{text}"
        );
    }

    #[test]
    fn a_changed_file_fails_the_status() {
        let order = v1::Order {
            state: v1::OrderState::Succeeded.into(),
            ..Default::default()
        };
        let mut report = v1::MigrateOutcome::default();
        assert_eq!(status_outcome(&order, &report), Outcome::Success);
        report.changed.push(v1::ChangedMigration::default());
        assert_eq!(status_outcome(&order, &report).exit_code(), 2);
        report.changed.clear();
        let failed = v1::Order {
            state: v1::OrderState::Failed.into(),
            ..Default::default()
        };
        assert_eq!(status_outcome(&failed, &report), Outcome::WorkFailed);
    }
}
