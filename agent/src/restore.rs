//! The restore executor: verifies an artifact, restores it into a new database, checks
//! every table's row count against the manifest, and for `replace` swaps it in by renames.
//!
//! Nothing on the server changes until the dump's sha256 matches the catalog. A restore into
//! a new name leaves nothing behind when it fails. A replace never exposes a half-restored
//! database: the data goes into a side database first, and the original is only renamed
//! away once the copy is complete and verified; any failure before that point undoes the
//! renames and drops the side database, so the original stays as it was.

use std::ffi::OsString;
use std::fs;
use std::path::{Path, PathBuf};
use std::process::Stdio;
use std::time::Instant;

use sqlx::Connection;
use sqlx::postgres::PgConnection;
use tokio_util::sync::CancellationToken;
use warden_proto::v1;
use warden_shared::manifest::DUMP_FILE;
use warden_shared::{ArtifactManifest, validate_database_name};

use crate::backup::dbname_arg;
use crate::codec;
use crate::error::{AgentError, AgentResult};
use crate::orders::{AgentContext, OrderTarget, blocking, cancellable, elapsed_ms};
use crate::pg::{self, PgDatabase};
use crate::pgtools::{PgTools, PgVersion, Subprocess, ToolRequirement};
use crate::progress::ProgressReporter;

/// Extension of staged (decompressed) dumps in the staging directory.
const STAGED_EXTENSION: &str = "dump";

/// Restores the artifact of `params` on the server of `target`.
pub async fn run(
    ctx: &AgentContext,
    target: &OrderTarget,
    order_id: &str,
    params: &v1::RestoreParams,
    progress: &ProgressReporter,
    cancel: &CancellationToken,
) -> AgentResult<v1::RestoreOutcome> {
    let plan = RestorePlan::new(ctx, target, params)?;
    tracing::info!(
        %order_id,
        database = %target.db.label,
        artifact_id = %params.artifact_id,
        into = %plan.restore_into,
        replace = plan.replace,
        "restore started"
    );
    let staged = staging_file(&ctx.staging_dir, order_id);
    let mut created = None;
    let mut phases = Vec::new();

    let restored = cancellable(
        cancel,
        restore_copy(
            ctx,
            &plan,
            params,
            &staged,
            progress,
            &mut created,
            &mut phases,
        ),
    )
    .await;
    // The staged dump is only needed by pg_restore; it can be large, so it goes right away.
    if let Err(e) = tokio::fs::remove_file(&staged).await
        && e.kind() != std::io::ErrorKind::NotFound
    {
        tracing::warn!(%order_id, path = %staged.display(), error = %e, "cannot remove staged dump");
    }
    // The swap is a handful of quick statements that must not stop halfway, so a cancel
    // arriving now is too late.
    let result = match restored {
        Ok(verified) if plan.replace => {
            let phase = Instant::now();
            let swapped = swap(&plan).await;
            if swapped.is_ok() {
                // The side database now carries the target's name.
                created = None;
            }
            record(&mut phases, "swap", phase);
            swapped.map(|()| verified)
        }
        other => other,
    };
    match result {
        Ok((tables_verified, rows_verified)) => {
            tracing::info!(%order_id, database = %target.db.label, tables_verified, rows_verified, "restore finished");
            Ok(v1::RestoreOutcome {
                database: plan.target_name.clone(),
                tables_verified,
                rows_verified,
                phases,
            })
        }
        Err(error) => {
            if let Some(name) = created {
                drop_leftover(&plan, &name).await;
            }
            Err(error)
        }
    }
}

/// Names and connections of one restore, fixed before anything runs.
struct RestorePlan {
    /// The order's database; its server receives the restore.
    target: PgDatabase,
    /// The maintenance database on the same server, for CREATE/ALTER/DROP DATABASE.
    maintenance: PgDatabase,
    /// Database pg_restore writes into: the new name, or the side database of a replace.
    restore_into: String,
    /// Database that holds the data at the end.
    target_name: String,
    /// Name the original gets while it is being replaced.
    old_name: String,
    replace: bool,
}

impl RestorePlan {
    fn new(
        ctx: &AgentContext,
        target: &OrderTarget,
        params: &v1::RestoreParams,
    ) -> AgentResult<Self> {
        let maintenance_db = &ctx.config.maintenance_db;
        let maintenance = target.db.sibling(maintenance_db);
        // Side and old names carry the artifact id's random tail (a UUIDv7's head is its
        // timestamp, shared by artifacts taken close together), so a leftover is recognisable.
        let hex: Vec<char> = params
            .artifact_id
            .chars()
            .filter(char::is_ascii_hexdigit)
            .map(|c| c.to_ascii_lowercase())
            .collect();
        let short_id: String = hex[hex.len().saturating_sub(12)..].iter().collect();
        match (params.new_name.is_empty(), params.replace) {
            (false, false) => {
                validate_database_name(&params.new_name)?;
                Ok(Self {
                    target: target.db.clone(),
                    maintenance,
                    restore_into: params.new_name.clone(),
                    target_name: params.new_name.clone(),
                    old_name: String::new(),
                    replace: false,
                })
            }
            (true, true) => {
                let name = target.db.name.clone();
                if name.is_empty() {
                    return Err(AgentError::InvalidOrder(format!(
                        "cannot replace {}: its url names no database",
                        target.db.label
                    )));
                }
                if &name == maintenance_db {
                    return Err(AgentError::InvalidOrder(format!(
                        "cannot replace {}: it is the maintenance database; set another maintenance_db",
                        target.db.label
                    )));
                }
                Ok(Self {
                    target: target.db.clone(),
                    maintenance,
                    restore_into: format!("warden_restore_{short_id}"),
                    target_name: name,
                    old_name: format!("warden_old_{short_id}"),
                    replace: true,
                })
            }
            _ => Err(AgentError::InvalidOrder(
                "a restore needs exactly one of new_name and replace".to_owned(),
            )),
        }
    }
}

/// Verifies the artifact, restores it into `plan.restore_into` and checks its row counts.
/// Returns the tables and rows verified. `created` names the database once this restore
/// may have created it, so the caller can drop it on failure.
async fn restore_copy(
    ctx: &AgentContext,
    plan: &RestorePlan,
    params: &v1::RestoreParams,
    staged: &Path,
    progress: &ProgressReporter,
    created: &mut Option<String>,
    phases: &mut Vec<v1::PhaseTiming>,
) -> AgentResult<(u32, u64)> {
    let phase = Instant::now();
    let manifest = fetch_and_verify(ctx, params, staged, progress).await?;
    record(phases, "fetch+verify", phase);

    let phase = Instant::now();
    let mut maintenance = plan.maintenance.connect().await?;
    let server = pg::server_version(&plan.maintenance, &mut maintenance).await?;
    let tools = PgTools::find(
        ctx.config.pg_bindir.as_deref(),
        &requirement(&plan.target, &server, &manifest),
    )
    .await?;
    if pg::database_exists(&plan.maintenance, &mut maintenance, &plan.restore_into).await? {
        return Err(AgentError::DatabaseExists {
            name: plan.restore_into.clone(),
            database: plan.target.label.clone(),
            hint: if plan.replace {
                "an interrupted restore left it behind; drop it and try again"
            } else {
                "choose another --new-name"
            },
        });
    }
    // The swap's undo reads the names on the server, which only works if the old name is
    // free before the swap starts.
    if plan.replace
        && pg::database_exists(&plan.maintenance, &mut maintenance, &plan.old_name).await?
    {
        return Err(AgentError::DatabaseExists {
            name: plan.old_name.clone(),
            database: plan.target.label.clone(),
            hint: "an interrupted replace left it behind; check whether it holds data you need, \
                   drop it and try again",
        });
    }
    // Marked before CREATE: if this is cancelled mid-statement, the database may exist.
    *created = Some(plan.restore_into.clone());
    if let Err(error) =
        pg::create_database(&plan.maintenance, &mut maintenance, &plan.restore_into).await
    {
        *created = None;
        return Err(error);
    }
    let _ = maintenance.close().await;
    let into = plan.target.sibling(&plan.restore_into);
    let args = vec![
        OsString::from("--exit-on-error"),
        OsString::from(format!("--jobs={}", ctx.config.restore_jobs)),
        OsString::from("--no-password"),
        dbname_arg(&into.url),
        staged.as_os_str().to_owned(),
    ];
    let pg_restore = tools.path("pg_restore");
    progress
        .track("restore", |_| async {
            Subprocess::spawn(&pg_restore, &args, Some(&into.url), Stdio::null())?
                .wait()
                .await
        })
        .await?;
    record(phases, "restore", phase);

    let phase = Instant::now();
    let verified = verify_rows(&into, &manifest).await?;
    record(phases, "verify_rows", phase);
    Ok(verified)
}

/// Checks the manifest against the catalog, then decompresses `dump.zst` into `staged`
/// while hashing it. Any mismatch fails before a database is touched.
async fn fetch_and_verify(
    ctx: &AgentContext,
    params: &v1::RestoreParams,
    staged: &Path,
    progress: &ProgressReporter,
) -> AgentResult<ArtifactManifest> {
    let corrupt = |detail: String| AgentError::CorruptArtifact {
        artifact_id: params.artifact_id.clone(),
        detail,
    };
    let repository = ctx.repository.clone();
    let artifact_path = params.artifact_path.clone();
    let manifest = blocking(move || repository.read_manifest(&artifact_path)).await?;
    if manifest.artifact_id != params.artifact_id {
        return Err(corrupt(format!(
            "its manifest names artifact {}",
            manifest.artifact_id
        )));
    }
    if manifest.dump.sha256 != params.sha256 {
        return Err(corrupt(format!(
            "manifest.json says the sha256 of {DUMP_FILE} is {}, catalog says {}",
            manifest.dump.sha256, params.sha256
        )));
    }
    let dump = ctx
        .repository
        .resolve(&params.artifact_path)?
        .join(DUMP_FILE);
    let staging_dir = ctx.staging_dir.clone();
    blocking(move || {
        fs::create_dir_all(&staging_dir).map_err(AgentError::io(format!(
            "cannot create {}",
            staging_dir.display()
        )))
    })
    .await?;
    let read = progress
        .track("fetch+verify", |counter| {
            codec::decompress_to_file(&dump, staged, counter)
        })
        .await?;
    let mismatch = if read.sha256 != params.sha256 {
        Some(corrupt(format!(
            "sha256 of {DUMP_FILE} is {}, catalog says {}",
            read.sha256, params.sha256
        )))
    } else {
        read.decoded
            .err()
            .map(|e| corrupt(format!("{DUMP_FILE} cannot be decompressed: {e}")))
    };
    if let Some(error) = mismatch {
        let _ = tokio::fs::remove_file(staged).await;
        return Err(error);
    }
    Ok(manifest)
}

/// pg_restore must be at least as new as the server it writes to, and as the pg_dump that
/// wrote the archive (older ones cannot read newer archive formats).
fn requirement(
    target: &PgDatabase,
    server: &pg::ServerVersion,
    manifest: &ArtifactManifest,
) -> ToolRequirement {
    let server_version = PgVersion(server.num);
    match PgVersion::parse(&manifest.pg_dump_version) {
        Some(archive) if archive.major() > server_version.major() => ToolRequirement {
            version: archive,
            what: format!(
                "pg_dump {archive} that wrote artifact {}",
                manifest.artifact_id
            ),
        },
        _ => ToolRequirement {
            version: server_version,
            what: format!("server {server_version} of {}", target.label),
        },
    }
}

/// Counts every manifest table in the restored database; all must match.
async fn verify_rows(into: &PgDatabase, manifest: &ArtifactManifest) -> AgentResult<(u32, u64)> {
    let mut conn = into.connect().await?;
    let mut mismatches = Vec::new();
    for table in &manifest.tables {
        let rows = pg::count_rows(into, &mut conn, &table.schema, &table.table).await?;
        if rows != table.rows {
            mismatches.push(format!(
                "{:?}.{:?} has {rows} rows, the artifact {}",
                table.schema, table.table, table.rows
            ));
        }
    }
    // The swap renames this database, which needs every session on it gone.
    let _ = conn.close().await;
    if !mismatches.is_empty() {
        return Err(AgentError::RowCountMismatch(mismatches.join("; ")));
    }
    let tables = u32::try_from(manifest.tables.len()).unwrap_or(u32::MAX);
    Ok((tables, manifest.total_rows()))
}

/// Puts the verified side database in place of the target: the target stops accepting
/// connections, its sessions end, it is renamed away, the side database takes its name and
/// owner, and the old one is dropped. Failing before the end undoes the renames.
async fn swap(plan: &RestorePlan) -> AgentResult<()> {
    let m = &plan.maintenance;
    let mut conn = m.connect().await?;
    let original = pg::database_settings(m, &mut conn, &plan.target_name).await?;
    let (target, side, old) = (&plan.target_name, &plan.restore_into, &plan.old_name);
    let swapped = async {
        pg::allow_connections(m, &mut conn, target, false).await?;
        pg::terminate_backends(m, &mut conn, target).await?;
        pg::rename_database(m, &mut conn, target, old).await?;
        pg::rename_database(m, &mut conn, side, target).await?;
        pg::set_owner(m, &mut conn, target, &original.owner).await?;
        pg::allow_connections(m, &mut conn, target, true).await
    }
    .await;
    if let Err(error) = swapped {
        undo_swap(plan, original.allow_connections).await;
        return Err(error);
    }
    // The new data is in place: the order succeeded even if the old copy cannot be dropped.
    if let Err(error) = pg::drop_database(m, &mut conn, old).await {
        tracing::warn!(database = %plan.target.label, old = %old, %error, "cannot drop the replaced database; drop it by hand");
    }
    let _ = conn.close().await;
    Ok(())
}

/// Restores the names the swap changed, judging from what exists on the server (a failed
/// statement may or may not have taken effect), and the target's connection setting.
async fn undo_swap(plan: &RestorePlan, allow_connections: bool) {
    let m = &plan.maintenance;
    let (target, side, old) = (&plan.target_name, &plan.restore_into, &plan.old_name);
    let undo = async {
        // A fresh connection: the swap's may be what failed.
        let mut conn: PgConnection = m.connect().await?;
        if pg::database_exists(m, &mut conn, old).await? {
            if pg::database_exists(m, &mut conn, target).await? {
                pg::rename_database(m, &mut conn, target, side).await?;
            }
            pg::rename_database(m, &mut conn, old, target).await?;
        }
        let now = pg::database_settings(m, &mut conn, target).await?;
        if now.allow_connections != allow_connections {
            pg::allow_connections(m, &mut conn, target, allow_connections).await?;
        }
        Ok::<(), AgentError>(())
    };
    match undo.await {
        Ok(()) => {
            tracing::info!(database = %plan.target.label, "replace undone, original database kept")
        }
        Err(error) => tracing::error!(
            database = %plan.target.label,
            old = %old,
            %error,
            "cannot undo the replace; the original may be named as in `old`"
        ),
    }
}

/// Drops a database this restore created, after a failure or cancellation.
async fn drop_leftover(plan: &RestorePlan, name: &str) {
    let m = &plan.maintenance;
    let dropped = async {
        let mut conn = m.connect().await?;
        pg::drop_database(m, &mut conn, name).await
    };
    match dropped.await {
        Ok(()) => {
            tracing::info!(database = %plan.target.label, dropped = %name, "dropped the unfinished restore")
        }
        Err(error) => tracing::error!(
            database = %plan.target.label,
            leftover = %name,
            %error,
            "cannot drop the unfinished restore; drop it by hand"
        ),
    }
}

/// Returns where an order's decompressed dump is staged.
fn staging_file(staging_dir: &Path, order_id: &str) -> PathBuf {
    // Order ids come from the coordinator; keep only characters safe in a file name.
    let safe: String = order_id
        .chars()
        .map(|c| {
            if c.is_ascii_alphanumeric() || c == '-' {
                c
            } else {
                '_'
            }
        })
        .collect();
    staging_dir.join(format!("{safe}.{STAGED_EXTENSION}"))
}

/// Creates the staging directory if needed and removes the dumps staged by restores that a
/// crash interrupted. Only staged dumps are touched, in case the directory is shared.
pub fn clear_staging(staging_dir: &Path) -> AgentResult<Vec<PathBuf>> {
    fs::create_dir_all(staging_dir).map_err(AgentError::io(format!(
        "cannot create {}",
        staging_dir.display()
    )))?;
    let list_error = || AgentError::io(format!("cannot list {}", staging_dir.display()));
    let mut removed = Vec::new();
    for entry in fs::read_dir(staging_dir).map_err(list_error())? {
        let path = entry.map_err(list_error())?.path();
        if path.is_file() && path.extension().is_some_and(|e| e == STAGED_EXTENSION) {
            fs::remove_file(&path)
                .map_err(AgentError::io(format!("cannot remove {}", path.display())))?;
            tracing::info!(path = %path.display(), "removed leftover staged dump");
            removed.push(path);
        }
    }
    Ok(removed)
}

fn record(phases: &mut Vec<v1::PhaseTiming>, phase: &str, started: Instant) {
    phases.push(v1::PhaseTiming {
        phase: phase.to_owned(),
        millis: elapsed_ms(started),
    });
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn staging_files_are_named_safely_and_cleared() {
        let tmp = tempfile::tempdir().expect("tempdir");
        let dir = tmp.path().join("staging");
        let staged = staging_file(&dir, "../0191-abc");
        assert_eq!(staged.parent(), Some(dir.as_path()));
        assert!(clear_staging(&dir).expect("creates").is_empty());
        fs::write(&staged, b"x").expect("write");
        fs::write(dir.join("keep.txt"), b"x").expect("write");
        assert_eq!(clear_staging(&dir).expect("clears"), vec![staged.clone()]);
        assert!(!staged.exists());
        assert!(dir.join("keep.txt").exists());
    }
}
