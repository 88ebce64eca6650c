//! Restoring an artifact into a new database on a server: the part the restore and drill
//! executors share.
//!
//! A copy goes through fixed phases, each timed (they are the RTO measurements): `fetch`
//! reads the manifest and finds the key of a sealed dump, `verify_checksum` reads the whole
//! dump from the repository, hashes it and compares it with the catalog (and checks that the
//! key opens it), `decompress` stages the plain dump, `pg_restore` creates the database
//! and restores into it, `verify_rows` compares every table's row count with the manifest.
//! Nothing on the server changes before the checksum matched: the first statement that
//! changes anything runs in `pg_restore`.
//!
//! A parallel pg_restore (`restore_jobs` > 1) needs a file it can seek in, so the dump is
//! staged first, and the decompression is time the restore waits. When parallel jobs cannot
//! load the data sooner, because `restore_jobs` is 1 or one table holds nearly all of it (a
//! parallel restore cannot end before its largest table), the dump streams instead (see
//! [`streams`]): decompressed on the way into one pg_restore for the schema and the data,
//! hashed once more as it goes, with no `decompress` phase. Only the archive's table of
//! contents is staged, from which `pg_restore --section=post-data -j N` then builds the
//! indexes and constraints in parallel. A streamed restore writes into its new database
//! before the second hash ends; if the dump changed since it was verified, the copy fails
//! and its database is dropped like any failed copy's.

use std::ffi::OsString;
use std::fs;
use std::future::Future;
use std::path::{Path, PathBuf};
use std::process::Stdio;
use std::sync::Arc;
use std::sync::atomic::AtomicU64;
use std::time::Instant;

use sqlx::Connection;
use warden_proto::v1;
use warden_shared::ArtifactManifest;
use warden_shared::manifest::TableRowCount;

use crate::backup::dbname_arg;
use crate::codec::{self, Stored};
use crate::error::{AgentError, AgentResult};
use crate::orders::{AgentContext, OrderTarget, blocking, elapsed_ms};
use crate::pg::{self, PgDatabase};
use crate::pgtools::{PgTools, PgVersion, Subprocess, ToolRequirement};
use crate::progress::ProgressReporter;
use crate::sealing::Key;

/// Names of the phases of restores and drills, in timings and progress reports.
pub mod phase {
    pub const FETCH: &str = "fetch";
    pub const VERIFY_CHECKSUM: &str = "verify_checksum";
    pub const DECOMPRESS: &str = "decompress";
    pub const PG_RESTORE: &str = "pg_restore";
    pub const VERIFY_ROWS: &str = "verify_rows";
    /// Restore `replace` only: the verified copy takes the target's name.
    pub const SWAP: &str = "swap";
    /// Drills only: the policy's SQL checks in the copy.
    pub const CHECKS: &str = "checks";
    /// Drills only: dropping the scratch database.
    pub const CLEANUP: &str = "cleanup";
}

/// Share of the dump's table data that one table must hold for a restore to stream rather
/// than stage for a parallel pg_restore. Decompressing takes about an eighth of the time
/// restoring the same bytes takes; with two jobs, staging is slower once the largest table
/// holds more than about seven eighths of the data, and more jobs only lower the share.
const STREAM_SHARE: f64 = 0.9;

/// Extension of staged (decompressed) dumps in the staging directory.
const STAGED_EXTENSION: &str = "dump";

/// How many hex digits of an artifact id go into the names of databases derived from it.
const SHORT_ID_DIGITS: usize = 12;

/// The artifact an order restores, as the catalog records it.
#[derive(Debug, Clone, Copy)]
pub struct ArtifactRef<'a> {
    pub id: &'a str,
    /// Directory of the artifact relative to the repository root.
    pub path: &'a str,
    /// sha256 of the stored dump.
    pub sha256: &'a str,
}

impl<'a> From<&'a v1::RestoreParams> for ArtifactRef<'a> {
    fn from(params: &'a v1::RestoreParams) -> Self {
        Self {
            id: &params.artifact_id,
            path: &params.artifact_path,
            sha256: &params.sha256,
        }
    }
}

impl<'a> From<&'a v1::DrillParams> for ArtifactRef<'a> {
    fn from(params: &'a v1::DrillParams) -> Self {
        Self {
            id: &params.artifact_id,
            path: &params.artifact_path,
            sha256: &params.sha256,
        }
    }
}

impl ArtifactRef<'_> {
    fn corrupt(&self, detail: String) -> AgentError {
        AgentError::CorruptArtifact {
            artifact_id: self.id.to_owned(),
            detail,
        }
    }
}

/// Where a copy goes, fixed before anything runs.
#[derive(Debug, Clone)]
pub struct CopyPlan {
    /// The order's database: its server receives the copy, its label names it in messages.
    pub target: PgDatabase,
    /// The maintenance database on the same server, for CREATE/ALTER/DROP DATABASE.
    pub maintenance: PgDatabase,
    /// The database pg_restore writes into.
    pub into: String,
    /// What to do about databases already on the server under names the copy needs.
    pub in_the_way: InTheWay,
}

/// What a copy does about existing databases under the names it needs.
#[derive(Debug, Clone)]
pub enum InTheWay {
    /// Refuses if any of these databases exists, saying what to do (the hint).
    Refuse(Vec<(String, &'static str)>),
    /// `into` can only be a leftover of this agent's own earlier run: it is dropped.
    DropLeftover,
}

impl CopyPlan {
    /// Plans a copy into database `into` on the server of `target`.
    pub fn new(
        ctx: &AgentContext,
        target: &OrderTarget,
        into: String,
        in_the_way: InTheWay,
    ) -> Self {
        Self {
            target: target.db.clone(),
            maintenance: target.db.sibling(&ctx.config.maintenance_db),
            into,
            in_the_way,
        }
    }

    /// Returns the database the copy is restored into.
    pub fn copy_db(&self) -> PgDatabase {
        self.target.sibling(&self.into)
    }
}

/// What a finished copy holds.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct RestoredCopy {
    pub tables_verified: u32,
    pub rows_verified: u64,
    /// Bytes of the decompressed dump.
    pub raw_bytes: u64,
}

/// Restores `artifact` into `plan.into` through the phases in the module doc, each recorded
/// in `phases` when it finishes, using `staged` for the decompressed dump (or, streaming,
/// its table of contents). `created` names
/// the database once this copy may have created it (or dropped a leftover of that name), so
/// the caller can drop it after a failure or cancellation; the caller also removes
/// `staged` ([`remove_staged`]) whatever happened.
pub async fn restore_copy(
    ctx: &AgentContext,
    plan: &CopyPlan,
    artifact: &ArtifactRef<'_>,
    staged: &Path,
    progress: &ProgressReporter,
    created: &mut Option<String>,
    phases: &mut Vec<v1::PhaseTiming>,
) -> AgentResult<RestoredCopy> {
    let (manifest, dump) = timed(phases, phase::FETCH, fetch(ctx, artifact)).await?;
    timed(
        phases,
        phase::VERIFY_CHECKSUM,
        verify_checksum(artifact, &dump, progress),
    )
    .await?;
    let staging_dir = ctx.staging_dir.clone();
    blocking(move || {
        fs::create_dir_all(&staging_dir).map_err(AgentError::io(format!(
            "cannot create {}",
            staging_dir.display()
        )))
    })
    .await?;
    let jobs = ctx.config.restore_jobs;
    let raw_bytes = if streams(&manifest.tables, jobs) && stage_toc(artifact, &dump, staged).await {
        let archive = Archive::Streamed {
            artifact,
            dump: &dump,
            toc: staged,
            jobs,
        };
        timed(
            phases,
            phase::PG_RESTORE,
            create_and_restore(ctx, plan, &manifest, archive, progress, created),
        )
        .await?;
        manifest.dump.raw_bytes
    } else {
        let raw_bytes = timed(
            phases,
            phase::DECOMPRESS,
            decompress(artifact, &dump, staged, progress),
        )
        .await?;
        let archive = Archive::Staged { path: staged, jobs };
        timed(
            phases,
            phase::PG_RESTORE,
            create_and_restore(ctx, plan, &manifest, archive, progress, created),
        )
        .await?;
        raw_bytes
    };
    let (tables_verified, rows_verified) = timed(
        phases,
        phase::VERIFY_ROWS,
        verify_rows(&plan.copy_db(), &manifest),
    )
    .await?;
    Ok(RestoredCopy {
        tables_verified,
        rows_verified,
        raw_bytes,
    })
}

/// Whether a restore with `jobs` parallel jobs of a dump of `tables` (the manifest's) streams
/// the dump into one pg_restore rather than staging it (see the module doc): with one job,
/// or when one table holds at least [`STREAM_SHARE`] of the table data. A manifest without
/// the tables' data sizes (written before they were recorded) stages.
pub fn streams(tables: &[TableRowCount], jobs: u32) -> bool {
    if jobs <= 1 {
        return true;
    }
    let sizes: Option<Vec<u64>> = tables.iter().map(|t| t.data_bytes).collect();
    let Some(sizes) = sizes else {
        return false;
    };
    let total: u64 = sizes.iter().sum();
    let largest = sizes.iter().copied().max().unwrap_or(0);
    total > 0 && largest as f64 >= STREAM_SHARE * total as f64
}

/// Stages the dump's header and table of contents alone in `staged`, for the post-data
/// part of a streamed restore. Returns whether it could; if not (an archive the agent cannot
/// read), the restore stages the whole dump instead, as it always could.
async fn stage_toc(artifact: &ArtifactRef<'_>, dump: &Dump<'_>, staged: &Path) -> bool {
    let extracted = match dump.open().await {
        Ok(stored) => codec::extract_toc(stored, staged).await,
        Err(error) => Err(error),
    };
    match extracted {
        Ok(()) => true,
        Err(error) => {
            tracing::warn!(artifact_id = artifact.id, %error, "cannot stage the table of contents alone; staging the whole dump");
            let _ = fs::remove_file(staged);
            false
        }
    }
}

/// Where pg_restore reads the dump from.
enum Archive<'a> {
    /// The decompressed dump in the staging directory, restored with `jobs` parallel jobs.
    Staged { path: &'a Path, jobs: u32 },
    /// The compressed dump in the repository, decompressed into one pg_restore's stdin for
    /// the schema and the data; then the indexes, constraints and the rest of the post-data
    /// entries from `toc`, the staged table of contents, with `jobs` parallel jobs.
    Streamed {
        artifact: &'a ArtifactRef<'a>,
        dump: &'a Dump<'a>,
        toc: &'a Path,
        jobs: u32,
    },
}

/// Runs one phase and records its duration if it succeeds.
async fn timed<T>(
    phases: &mut Vec<v1::PhaseTiming>,
    phase: &str,
    work: impl Future<Output = AgentResult<T>>,
) -> AgentResult<T> {
    let started = Instant::now();
    let output = work.await?;
    record(phases, phase, started);
    Ok(output)
}

/// Records that `phase` ran from `started` until now.
pub fn record(phases: &mut Vec<v1::PhaseTiming>, phase: &str, started: Instant) {
    phases.push(v1::PhaseTiming {
        phase: phase.to_owned(),
        millis: elapsed_ms(started),
    });
}

/// The dump of an artifact in the repository, opened afresh by each phase that reads it.
struct Dump<'a> {
    ctx: &'a AgentContext,
    artifact_path: String,
    name: String,
    key: Option<Key>,
}

impl Dump<'_> {
    /// Starts reading the dump from its first byte.
    async fn open(&self) -> AgentResult<Stored> {
        let source = self
            .ctx
            .repository
            .open_file(&self.artifact_path, &self.name)
            .await?;
        Ok(Stored {
            source,
            key: self.key.clone(),
            location: format!("{}/{}", self.artifact_path, self.name),
        })
    }
}

/// Reads the manifest, checks it against the catalog, and returns it with the dump: where
/// it is and, sealed, the key that opens it. An artifact sealed with a key this agent does
/// not hold is refused here, naming the key, before anything else happens.
async fn fetch<'a>(
    ctx: &'a AgentContext,
    artifact: &ArtifactRef<'_>,
) -> AgentResult<(ArtifactManifest, Dump<'a>)> {
    let manifest = ctx.repository.read_manifest(artifact.path).await?;
    if manifest.artifact_id != artifact.id {
        return Err(artifact.corrupt(format!(
            "its manifest names artifact {}",
            manifest.artifact_id
        )));
    }
    if manifest.dump.sha256 != artifact.sha256 {
        return Err(artifact.corrupt(format!(
            "manifest.json says the sha256 of {} is {}, catalog says {}",
            manifest.dump.name, manifest.dump.sha256, artifact.sha256
        )));
    }
    let key = match &manifest.encryption {
        Some(encryption) => Some(ctx.keys.opening(artifact.id, encryption)?.clone()),
        None => None,
    };
    let dump = Dump {
        ctx,
        artifact_path: artifact.path.to_owned(),
        name: manifest.dump.name.clone(),
        key,
    };
    Ok((manifest, dump))
}

/// Reads the whole stored dump, hashes it and compares it with the catalog, before any of
/// it is decompressed or reaches a server; a sealed dump must also open with its key.
async fn verify_checksum(
    artifact: &ArtifactRef<'_>,
    dump: &Dump<'_>,
    progress: &ProgressReporter,
) -> AgentResult<()> {
    let stored = dump.open().await?;
    let hashed = progress
        .track(phase::VERIFY_CHECKSUM, |counter| {
            codec::sha256_of(stored, counter)
        })
        .await?;
    if hashed.sha256 != artifact.sha256 {
        return Err(artifact.corrupt(format!(
            "sha256 of {} is {}, catalog says {}",
            dump.name, hashed.sha256, artifact.sha256
        )));
    }
    hashed
        .opens
        .map_err(|why| artifact.corrupt(format!("{} does not open with its key: {why}", dump.name)))
}

/// Decompresses the verified dump into `staged` and returns its size. The bytes are hashed
/// again on the way: the file must not have changed since it was verified.
async fn decompress(
    artifact: &ArtifactRef<'_>,
    dump: &Dump<'_>,
    staged: &Path,
    progress: &ProgressReporter,
) -> AgentResult<u64> {
    let stored = dump.open().await?;
    let read = progress
        .track(phase::DECOMPRESS, |counter| {
            codec::decompress_to_file(stored, staged, counter)
        })
        .await?;
    check_read(artifact, &dump.name, &read)?;
    match &read.offsets_filled {
        Some(Ok(filled)) => {
            tracing::debug!(artifact_id = artifact.id, filled, "data offsets filled in")
        }
        // pg_restore reads the archive as pg_dump wrote it, only more slowly in parallel.
        Some(Err(why)) => {
            tracing::warn!(artifact_id = artifact.id, %why, "staged dump keeps its archive without data offsets")
        }
        None => {}
    }
    read.decoded
        .map_err(|e| undecodable(artifact, &dump.name, &e))
}

/// Refuses a dump whose bytes changed since [`verify_checksum`] hashed them.
fn check_read(
    artifact: &ArtifactRef<'_>,
    name: &str,
    read: &codec::Decompressed,
) -> AgentResult<()> {
    if read.sha256 == artifact.sha256 {
        return Ok(());
    }
    Err(artifact.corrupt(format!(
        "{name} changed while it was read: its sha256 is now {}, catalog says {}",
        read.sha256, artifact.sha256
    )))
}

fn undecodable(artifact: &ArtifactRef<'_>, name: &str, error: &std::io::Error) -> AgentError {
    artifact.corrupt(format!("{name} cannot be decompressed: {error}"))
}

/// Streams the verified dump into `pipe` (a pg_restore's stdin), hashing it again.
async fn stream_dump(
    dump: &Dump<'_>,
    pipe: std::os::fd::OwnedFd,
    counter: Arc<AtomicU64>,
) -> AgentResult<(codec::Decompressed, Option<std::io::Error>)> {
    let stored = dump.open().await?;
    codec::decompress_to_pipe(stored, pipe, counter).await
}

/// Clears the way per `plan.in_the_way`, creates `plan.into` and runs pg_restore into it.
async fn create_and_restore(
    ctx: &AgentContext,
    plan: &CopyPlan,
    manifest: &ArtifactManifest,
    archive: Archive<'_>,
    progress: &ProgressReporter,
    created: &mut Option<String>,
) -> AgentResult<()> {
    let m = &plan.maintenance;
    let mut maintenance = m.connect().await?;
    let server = pg::server_version(m, &mut maintenance).await?;
    let tools = PgTools::find(
        ctx.config.pg_bindir.as_deref(),
        &requirement(&plan.target, &server, manifest),
        &ctx.probes,
    )
    .await?;
    match &plan.in_the_way {
        InTheWay::Refuse(names) => {
            for (name, hint) in names {
                if pg::database_exists(m, &mut maintenance, name).await? {
                    return Err(AgentError::DatabaseExists {
                        name: name.clone(),
                        database: plan.target.label.clone(),
                        hint,
                    });
                }
            }
        }
        InTheWay::DropLeftover => {
            if pg::database_exists(m, &mut maintenance, &plan.into).await? {
                *created = Some(plan.into.clone());
                pg::drop_database(m, &mut maintenance, &plan.into).await?;
                tracing::info!(database = %plan.target.label, dropped = %plan.into, "dropped a leftover of an earlier run");
            }
        }
    }
    // Marked before CREATE: if this is cancelled mid-statement, the database may exist.
    *created = Some(plan.into.clone());
    if let Err(error) = pg::create_database(m, &mut maintenance, &plan.into).await {
        *created = None;
        return Err(error);
    }
    let _ = maintenance.close().await;
    let into = plan.copy_db();
    let mut args = vec![
        OsString::from("--exit-on-error"),
        OsString::from("--no-password"),
        dbname_arg(&into.url),
    ];
    let pg_restore = tools.path("pg_restore");
    match archive {
        Archive::Staged { path, jobs } => {
            args.push(OsString::from(format!("--jobs={jobs}")));
            args.push(path.as_os_str().to_owned());
            progress
                .track(phase::PG_RESTORE, |_| async {
                    Subprocess::spawn(&pg_restore, &args, Some(&into.url), Stdio::null())?
                        .wait()
                        .await
                })
                .await
        }
        Archive::Streamed {
            artifact,
            dump,
            toc,
            jobs,
        } => {
            progress
                .track(phase::PG_RESTORE, |counter| async {
                    let mut data_args = args.clone();
                    data_args.extend(["--section=pre-data", "--section=data"].map(OsString::from));
                    let (process, stdin) =
                        Subprocess::spawn_fed(&pg_restore, &data_args, Some(&into.url))?;
                    let decompressing = stream_dump(dump, stdin, counter);
                    let waiting = process.wait();
                    tokio::pin!(decompressing, waiting);
                    let (read, restored) = tokio::select! {
                        read = &mut decompressing => (read, waiting.await),
                        restored = &mut waiting => match restored {
                            // Dropping the decompression stops it: pg_restore's error is the
                            // answer, and the rest of the dump need not be read for it.
                            Err(error) => return Err(error),
                            Ok(()) => (decompressing.await, Ok(())),
                        },
                    };
                    let (read, write_error) = read?;
                    streamed_outcome(artifact, &dump.name, read, write_error, restored)?;
                    let mut post_args = args.clone();
                    post_args.push(OsString::from("--section=post-data"));
                    post_args.push(OsString::from(format!("--jobs={jobs}")));
                    post_args.push(toc.as_os_str().to_owned());
                    Subprocess::spawn(&pg_restore, &post_args, Some(&into.url), Stdio::null())?
                        .wait()
                        .await
                })
                .await
        }
    }
}

/// Judges a streamed restore by what was read and what pg_restore made of it. A dump that
/// changed since it was verified, or does not decompress, condemns the copy whatever
/// pg_restore said (the caller drops the database); otherwise pg_restore's exit decides,
/// and its error explains a failed write into its stdin. pg_restore that succeeded without
/// reading the last bytes restored everything the archive lists: the hash still covered them.
fn streamed_outcome(
    artifact: &ArtifactRef<'_>,
    name: &str,
    read: codec::Decompressed,
    write_error: Option<std::io::Error>,
    restored: AgentResult<()>,
) -> AgentResult<()> {
    check_read(artifact, name, &read)?;
    if let (Err(error), None) = (&read.decoded, &write_error) {
        return Err(undecodable(artifact, name, error));
    }
    restored?;
    if let Some(error) = write_error {
        tracing::debug!(artifact_id = artifact.id, %error, "pg_restore ended before the end of the stream");
    }
    Ok(())
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
    // A swap renames this database and a drill drops it, which needs every session gone.
    let _ = conn.close().await;
    if !mismatches.is_empty() {
        return Err(AgentError::RowCountMismatch(mismatches.join("; ")));
    }
    let tables = u32::try_from(manifest.tables.len()).unwrap_or(u32::MAX);
    Ok((tables, manifest.total_rows()))
}

/// Drops database `name` on the server of `plan`, over a fresh connection (the copy's own
/// may be what failed).
pub async fn drop_database(plan: &CopyPlan, name: &str) -> AgentResult<()> {
    let m = &plan.maintenance;
    let mut conn = m.connect().await?;
    pg::drop_database(m, &mut conn, name).await?;
    let _ = conn.close().await;
    Ok(())
}

/// Returns the last hex digits of an artifact id, lowercase: the random tail of a UUIDv7
/// (its head is a timestamp, shared by artifacts taken close together), so the names of
/// databases derived from it tell artifacts apart and a leftover is recognisable.
pub fn short_artifact_id(artifact_id: &str) -> String {
    let hex: Vec<char> = artifact_id
        .chars()
        .filter(char::is_ascii_hexdigit)
        .map(|c| c.to_ascii_lowercase())
        .collect();
    hex[hex.len().saturating_sub(SHORT_ID_DIGITS)..]
        .iter()
        .collect()
}

/// Returns where an order's decompressed dump is staged.
pub fn staging_file(staging_dir: &Path, order_id: &str) -> PathBuf {
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

/// Removes a staged dump once pg_restore no longer needs it: it can be large.
pub async fn remove_staged(staged: &Path) {
    if let Err(e) = tokio::fs::remove_file(staged).await
        && e.kind() != std::io::ErrorKind::NotFound
    {
        tracing::warn!(path = %staged.display(), error = %e, "cannot remove staged dump");
    }
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

    fn table(data_bytes: Option<u64>) -> TableRowCount {
        TableRowCount {
            schema: "public".to_owned(),
            table: "t".to_owned(),
            rows: 1,
            data_bytes,
        }
    }

    #[test]
    fn restores_stream_when_parallel_jobs_cannot_help() {
        let dominated = [table(Some(95)), table(Some(5))];
        let spread = [table(Some(60)), table(Some(40))];
        assert!(streams(&dominated, 2));
        assert!(streams(&dominated, 8));
        assert!(!streams(&spread, 2));
        // One job never stages; without the sizes (an older manifest) or data, staging is
        // what always worked.
        assert!(streams(&spread, 1));
        assert!(!streams(&[table(Some(95)), table(None)], 2));
        assert!(!streams(&[table(Some(0))], 2));
        assert!(!streams(&[], 2));
        assert!(streams(&[table(Some(90)), table(Some(10))], 2));
        assert!(!streams(&[table(Some(89)), table(Some(11))], 2));
    }

    fn read(sha256: &str, decoded: std::io::Result<u64>) -> codec::Decompressed {
        codec::Decompressed {
            sha256: sha256.to_owned(),
            decoded,
            offsets_filled: None,
        }
    }

    #[test]
    fn a_streamed_restore_is_judged_by_the_bytes_first_then_by_pg_restore() {
        let artifact = ArtifactRef {
            id: "a-1",
            path: "agent/a-1",
            sha256: "good",
        };
        let broken_pipe = || Some(std::io::Error::from(std::io::ErrorKind::BrokenPipe));
        let failed = || {
            Err(AgentError::Io {
                context: "pg_restore failed".to_owned(),
                source: std::io::ErrorKind::Other.into(),
            })
        };
        let damaged = || Err(std::io::Error::other("frame damaged"));
        assert!(
            streamed_outcome(&artifact, "dump.zst", read("good", Ok(10)), None, Ok(())).is_ok()
        );
        // pg_restore that ended without the last bytes, which the hash still covered.
        assert!(
            streamed_outcome(
                &artifact,
                "dump.zst",
                read("good", damaged()),
                broken_pipe(),
                Ok(())
            )
            .is_ok()
        );
        // Changed bytes condemn the artifact even when pg_restore was content, or failed.
        for restored in [Ok(()), failed()] {
            let error =
                streamed_outcome(&artifact, "dump.zst", read("bad", Ok(10)), None, restored)
                    .expect_err("changed");
            assert!(
                matches!(error, AgentError::CorruptArtifact { .. }),
                "{error}"
            );
        }
        let error = streamed_outcome(
            &artifact,
            "dump.zst",
            read("good", damaged()),
            None,
            failed(),
        )
        .expect_err("damaged");
        assert!(
            error.to_string().contains("cannot be decompressed"),
            "{error}"
        );
        // Otherwise pg_restore's failure is the cause of a broken pipe.
        let error = streamed_outcome(
            &artifact,
            "dump.zst",
            read("good", damaged()),
            broken_pipe(),
            failed(),
        )
        .expect_err("pg_restore failed");
        assert!(error.to_string().contains("pg_restore failed"), "{error}");
    }

    #[test]
    fn short_ids_are_the_random_tail_of_the_artifact_id() {
        assert_eq!(
            short_artifact_id("0191F3A2-7C4B-7D2E-9A1B-4C5D6E7F8A9B"),
            "4c5d6e7f8a9b"
        );
        assert_eq!(short_artifact_id("a-1"), "a1");
        assert_eq!(short_artifact_id("xyz"), "");
    }
}
