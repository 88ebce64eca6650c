//! The backup executor: a consistent pg_dump of one database into a new artifact.
//!
//! The manifest's row counts are the rows in the dump itself, counted as it streams by (or,
//! where those cannot stand for a table's `count(*)`, counted in the dump's exported
//! snapshot, whose tables stay locked until then), so a restore can be checked table by
//! table against exactly what was dumped. The artifact becomes visible only when its
//! manifest is committed; on any failure or cancellation the whole directory goes.
//! With `verify` (safety backups), the committed dump is read back and must match the
//! manifest's sha256 before the backup counts as done.

use std::collections::{BTreeMap, HashMap, HashSet};
use std::ffi::OsString;
use std::path::Path;
use std::process::Stdio;
use std::sync::Arc;
use std::sync::atomic::AtomicU64;
use std::time::Instant;

use sqlx::Connection;
use sqlx::postgres::PgConnection;
use tokio::process::ChildStdout;
use tokio_util::sync::CancellationToken;
use uuid::Uuid;
use warden_proto::v1;
use warden_shared::manifest::{
    ArtifactFile, DUMP_FILE, GLOBALS_FILE, MANIFEST_FORMAT, SEALED_SUFFIX, TableRowCount,
};
use warden_shared::{ArtifactManifest, now_unix_ms};

use crate::codec::{self, Destination, Stored, StoredFile};
use crate::error::{AgentError, AgentResult};
use crate::orders::{AgentContext, OrderTarget, cancellable, elapsed_ms};
use crate::pg::{self, PgDatabase, PgUrl, ServerVersion};
use crate::pgarchive::ArchiveScanner;
use crate::pgtools::{PgTools, PgVersion, Subprocess, ToolRequirement};
use crate::progress::ProgressReporter;
use crate::repository::{ArtifactWriter, Repository};
use crate::sealing::Key;

/// Takes a backup of the target database and returns the committed artifact.
pub async fn run(
    ctx: &AgentContext,
    target: &OrderTarget,
    order_id: &str,
    params: &v1::BackupParams,
    progress: &ProgressReporter,
    cancel: &CancellationToken,
) -> AgentResult<v1::BackupOutcome> {
    let db = &target.db;
    // UUIDv7 sorts by creation time, so artifact directories list in backup order.
    let artifact_id = Uuid::now_v7().to_string();
    let artifact_path = Repository::artifact_path(&ctx.config.name, &artifact_id);
    let writer = ctx.repository.create_artifact(&artifact_path).await?;
    tracing::info!(%order_id, database = %db.label, %artifact_id, "backup started");

    let artifact = Artifact {
        id: artifact_id,
        path: artifact_path,
        writer,
        seal: ctx.keys.sealing().cloned(),
    };
    let dumped = cancellable(
        cancel,
        dump_data(ctx, target, order_id, progress, &artifact),
    )
    .await;
    let committed = match dumped {
        // Committing takes milliseconds and must not stop halfway: a cancel now is too late.
        Ok(dumped) => commit(ctx, target, order_id, params, &artifact, dumped).await,
        Err(error) => Err(error),
    };
    let mut finished = match committed {
        Ok(outcome) if params.verify => {
            cancellable(cancel, verify_committed(ctx, &artifact.path, progress))
                .await
                .map(|()| v1::BackupOutcome {
                    verified: true,
                    ..outcome
                })
        }
        other => other,
    };
    if let Err(error) = &mut finished {
        discard(&ctx.repository, order_id, &artifact, error).await;
    }
    if let Ok(outcome) = &finished
        && outcome.verified
    {
        tracing::info!(%order_id, artifact_id = %outcome.artifact_id, "backup verified");
    }
    finished
}

/// Removes the artifact of a failed backup and records in a verification `error` whether
/// that worked. An artifact without its manifest is garbage, and one that failed
/// verification or whose order was cancelled will never be in the catalog: nothing may stay
/// behind, and once the manifest is committed it has to go as a whole.
async fn discard(
    repository: &Repository,
    order_id: &str,
    artifact: &Artifact,
    error: &mut AgentError,
) {
    artifact.writer.settle().await;
    let removed = repository
        .remove_artifact(&artifact.id, &artifact.path)
        .await;
    if let Err(e) = &removed {
        tracing::warn!(%order_id, location = %artifact.writer.location(), error = %e, "cannot remove the failed artifact");
    }
    if let AgentError::BackupVerification { removed: r, .. } = error {
        *r = removed.is_ok();
    }
}

/// Reads the committed dump of the artifact at `artifact_path` back and checks its sha256
/// against the committed manifest (and, sealed, that a key of this agent opens it),
/// reporting the bytes read as phase "verifying".
pub async fn verify_committed(
    ctx: &AgentContext,
    artifact_path: &str,
    progress: &ProgressReporter,
) -> AgentResult<()> {
    let manifest = ctx.repository.read_manifest(artifact_path).await?;
    let key = match &manifest.encryption {
        Some(encryption) => Some(ctx.keys.opening(&manifest.artifact_id, encryption)?.clone()),
        None => None,
    };
    let name = &manifest.dump.name;
    let source = ctx.repository.open_file(artifact_path, name).await?;
    let stored = Stored {
        source,
        key,
        location: format!("{artifact_path}/{name}"),
    };
    let hashed = progress
        .track("verifying", |counter| codec::sha256_of(stored, counter))
        .await?;
    let failed = |detail: String| AgentError::BackupVerification {
        detail,
        removed: false,
    };
    if hashed.sha256 != manifest.dump.sha256 {
        return Err(failed(format!(
            "{name} sha256 is {} but the manifest records {}",
            hashed.sha256, manifest.dump.sha256
        )));
    }
    hashed
        .opens
        .map_err(|why| failed(format!("{name} does not open with its key: {why}")))
}

/// The artifact being written: its id, path relative to the repository, where its files go
/// and the key that seals them.
struct Artifact {
    id: String,
    path: String,
    writer: ArtifactWriter,
    seal: Option<Key>,
}

impl Artifact {
    /// Name of data file `name` as stored: with `.age` when sealed.
    fn stored_name(&self, name: &str) -> String {
        match self.seal {
            Some(_) => format!("{name}{SEALED_SUFFIX}"),
            None => name.to_owned(),
        }
    }
}

/// What the cancellable part of a backup produced; the data files are not committed yet.
struct Dumped {
    started_unix_ms: i64,
    timings: BTreeMap<String, u64>,
    server: ServerVersion,
    pg_dump_version: String,
    tables: Vec<TableRowCount>,
    dump: StoredFile,
    globals: Option<StoredFile>,
    globals_error: Option<String>,
}

/// Dumps the database and the globals into the data files of `artifact`, and counts the rows.
/// `timings` gets `snapshot` (finding the tools, opening it, listing and locking the
/// tables), `dump` (pg_dump, zstd and sha256, with the globals alongside), `globals` (that
/// alone) and `count_rows` (the tables counted with SQL, see [`row_counts`]).
async fn dump_data(
    ctx: &AgentContext,
    target: &OrderTarget,
    order_id: &str,
    progress: &ProgressReporter,
    artifact: &Artifact,
) -> AgentResult<Dumped> {
    let db = &target.db;
    let started_unix_ms = now_unix_ms();
    let mut timings = BTreeMap::new();

    let phase = Instant::now();
    let mut conn = db.connect().await?;
    let server = pg::server_version(db, &mut conn).await?;
    let need = ToolRequirement {
        version: PgVersion(server.num),
        what: format!("server {} of {}", PgVersion(server.num), db.label),
    };
    let tools = PgTools::find(ctx.config.pg_bindir.as_deref(), &need, &ctx.probes).await?;
    // The transaction holds the snapshot pg_dump attaches to; it stays open until pg_dump
    // is done, and is read-only so it can never change the database. It sits idle for the
    // whole dump, so the server's idle-in-transaction timeout must not end it (pg_dump turns
    // the same timeout off for its own session).
    sqlx::query("SET idle_in_transaction_session_timeout = 0")
        .execute(&mut conn)
        .await
        .map_err(db.sql_error("cannot configure the snapshot session of"))?;
    let mut snapshot_tx = conn
        .begin_with("BEGIN ISOLATION LEVEL REPEATABLE READ, READ ONLY")
        .await
        .map_err(db.sql_error("cannot open a snapshot of"))?;
    let snapshot: String = sqlx::query_scalar("SELECT pg_export_snapshot()")
        .fetch_one(&mut *snapshot_tx)
        .await
        .map_err(db.sql_error("cannot export a snapshot of"))?;
    let listed = pg::list_tables(db, &mut snapshot_tx).await?;
    let parents = inheritance_parents(db, &mut snapshot_tx).await?;
    // Held until the rows that the dump cannot count have been counted, after pg_dump ended.
    pg::lock_tables(db, &mut snapshot_tx, &listed).await?;
    record(&mut timings, "snapshot", phase);

    let phase = Instant::now();
    let dump_args = vec![
        OsString::from("--format=custom"),
        // zstd compresses better and in parallel; pg_dump's own compression would be wasted.
        OsString::from("--compress=0"),
        OsString::from(format!("--snapshot={snapshot}")),
        OsString::from("--no-password"),
        dbname_arg(&db.url),
    ];
    let dump_name = artifact.stored_name(DUMP_FILE);
    let dump_sink = artifact.writer.create_file(&dump_name).await?;
    let pg_dump = tools.path("pg_dump");
    let dump_target = Destination {
        sink: dump_sink,
        seal: artifact.seal.clone(),
        location: format!("{}/{dump_name}", artifact.path),
    };
    let dumping = progress.track("dump", |counter| {
        archive_to(&pg_dump, &dump_args, &db.url, dump_target, counter)
    });
    // The globals are a few kilobytes, dumped beside the database rather than after it; their
    // progress would only interrupt the dump's.
    let globals_args = vec![
        OsString::from("--globals-only"),
        OsString::from("--no-role-passwords"),
        OsString::from("--no-password"),
        dbname_arg(&db.url),
    ];
    let globals_name = artifact.stored_name(GLOBALS_FILE);
    let globals_sink = artifact.writer.create_file(&globals_name).await?;
    let globals_target = Destination {
        sink: globals_sink,
        seal: artifact.seal.clone(),
        location: format!("{}/{globals_name}", artifact.path),
    };
    let pg_dumpall = tools.path("pg_dumpall");
    let globals = async {
        let started = Instant::now();
        let dumped = tool_to(
            &pg_dumpall,
            &globals_args,
            &db.url,
            globals_target,
            Arc::default(),
        )
        .await;
        let globals = match dumped {
            Ok(stored) => (Some(stored), None),
            // Managed servers often refuse the catalogs pg_dumpall reads; the dump itself is
            // still a complete backup of the database, so record why and go on without them.
            Err(error @ AgentError::Subprocess { .. }) => {
                tracing::warn!(%order_id, database = %db.label, %error, "globals not dumped");
                artifact.writer.discard_file(&globals_name).await?;
                (None, Some(error.to_string()))
            }
            Err(error) => return Err(error),
        };
        Ok((globals, elapsed_ms(started)))
    };
    let ((dump, archive), ((globals, globals_error), globals_ms)) =
        tokio::try_join!(dumping, globals)?;
    timings.insert("globals".to_owned(), globals_ms);
    record(&mut timings, "dump", phase);

    let phase = Instant::now();
    let tables = row_counts(db, &mut snapshot_tx, listed, &parents, &archive).await?;
    record(&mut timings, "count_rows", phase);
    // Ending the transaction releases the snapshot, now that nothing needs it any more. The
    // dump is complete either way, so a failure here is only worth a warning.
    if let Err(error) = snapshot_tx.rollback().await {
        tracing::warn!(database = %db.label, %error, "could not end the snapshot transaction");
    }
    Ok(Dumped {
        started_unix_ms,
        timings,
        server,
        pg_dump_version: tools.version_line,
        tables,
        dump,
        globals,
        globals_error,
    })
}

/// Returns the row count of every table in `listed`, the tables whose rows a restore is
/// checked against.
///
/// Most come from the dump itself: the rows of the table's data in `archive`, counted as it
/// went by, which are exactly the rows dumped. Scanning every table again with `count(*)`
/// took about a fifth of the time of a backup of 1 GB of pgbench data. The others are counted in
/// the dump's snapshot, as the restore will count them: a table with inheritance children
/// (its dumped data holds only its own rows, `count(*)` counts the children's too), a table
/// the archive has no data for or names in a way that does not match, and every table when
/// the archive could not be read.
async fn row_counts(
    db: &PgDatabase,
    snapshot: &mut PgConnection,
    listed: Vec<(String, String)>,
    parents: &HashSet<(String, String)>,
    archive: &ArchiveScanner,
) -> AgentResult<Vec<TableRowCount>> {
    let dumped: HashMap<(String, String), (u64, u64)> = match archive.table_rows() {
        Ok(tables) => tables
            .into_iter()
            .map(|t| ((t.schema, t.table), (t.rows, t.bytes)))
            .collect(),
        Err(why) => {
            tracing::warn!(database = %db.label, %why, "cannot count rows in the dump; counting them with SQL");
            HashMap::new()
        }
    };
    let mut counts = Vec::with_capacity(listed.len());
    for (schema, table) in listed {
        let key = (schema, table);
        let in_dump = dumped.get(&key).copied();
        let rows = match in_dump {
            Some((rows, _)) if !parents.contains(&key) => rows,
            _ => pg::count_rows(db, snapshot, &key.0, &key.1).await?,
        };
        let (schema, table) = key;
        counts.push(TableRowCount {
            schema,
            table,
            rows,
            data_bytes: in_dump.map(|(_, bytes)| bytes),
        });
    }
    Ok(counts)
}

/// Lists the tables that have inheritance children (partitioned tables too, though
/// [`pg::list_tables`] leaves those out).
async fn inheritance_parents(
    db: &PgDatabase,
    conn: &mut PgConnection,
) -> AgentResult<HashSet<(String, String)>> {
    let parents: Vec<(String, String)> = sqlx::query_as(
        "SELECT DISTINCT n.nspname::text, c.relname::text \
         FROM pg_inherits i \
         JOIN pg_class c ON c.oid = i.inhparent \
         JOIN pg_namespace n ON n.oid = c.relnamespace",
    )
    .fetch_all(conn)
    .await
    .map_err(db.sql_error("cannot list the inheritance parents of"))?;
    Ok(parents.into_iter().collect())
}

/// Moves the data files into place, then writes the manifest: the commit point.
async fn commit(
    ctx: &AgentContext,
    target: &OrderTarget,
    order_id: &str,
    params: &v1::BackupParams,
    artifact: &Artifact,
    dumped: Dumped,
) -> AgentResult<v1::BackupOutcome> {
    let Dumped {
        started_unix_ms,
        mut timings,
        server,
        pg_dump_version,
        tables,
        dump,
        globals,
        globals_error,
    } = dumped;
    let phase = Instant::now();
    let dump_name = artifact.stored_name(DUMP_FILE);
    let globals_name = artifact.stored_name(GLOBALS_FILE);
    let mut files = vec![(dump_name.clone(), dump.size_bytes)];
    if let Some(globals) = &globals {
        files.push((globals_name.clone(), globals.size_bytes));
    }
    artifact.writer.commit_files(files).await?;
    record(&mut timings, "commit", phase);

    let manifest = ArtifactManifest {
        format: MANIFEST_FORMAT,
        artifact_id: artifact.id.clone(),
        agent: ctx.config.name.clone(),
        database: target.id.database.clone(),
        order_id: order_id.to_owned(),
        trigger: params.trigger.clone(),
        server_version: server.text,
        server_version_num: server.num,
        pg_dump_version,
        dump: artifact_file(&dump_name, dump),
        globals: globals.map(|g| artifact_file(&globals_name, g)),
        globals_error,
        tables,
        started_unix_ms,
        finished_unix_ms: now_unix_ms(),
        timings_ms: timings,
        encryption: artifact.seal.as_ref().map(Key::encryption),
    };
    let manifest_json = serde_json::to_string_pretty(&manifest).map_err(|e| AgentError::Io {
        context: "cannot serialize the manifest".to_owned(),
        source: e.into(),
    })?;
    artifact
        .writer
        .write_manifest(manifest_json.clone().into_bytes())
        .await?;
    tracing::info!(
        %order_id,
        database = %target.db.label,
        artifact_id = %artifact.id,
        size_bytes = manifest.dump.size_bytes,
        raw_bytes = manifest.dump.raw_bytes,
        key_id = artifact.seal.as_ref().map_or("", |k| k.id()),
        tables = manifest.tables.len(),
        rows = manifest.total_rows(),
        "backup committed"
    );
    Ok(v1::BackupOutcome {
        artifact_id: artifact.id.clone(),
        artifact_path: artifact.path.clone(),
        manifest_json,
        verified: false,
    })
}

/// Runs pg_dump (its custom format on stdout) and stores the archive compressed in
/// `dest`, read on the way by an [`ArchiveScanner`] that counts the rows of each table's
/// data.
async fn archive_to(
    program: &Path,
    args: &[OsString],
    url: &PgUrl,
    dest: Destination,
    raw_counter: Arc<AtomicU64>,
) -> AgentResult<(StoredFile, ArchiveScanner)> {
    let (process, stdout) = start_tool(program, args, url)?;
    // As in `tool_to`: on a write error `process` is dropped here, which kills pg_dump.
    let stored = codec::compress_archive_to(stdout, dest, raw_counter).await?;
    process.wait().await?;
    Ok(stored)
}

/// Starts a tool that writes its data to stdout, on a widened pipe.
fn start_tool(
    program: &Path,
    args: &[OsString],
    url: &PgUrl,
) -> AgentResult<(Subprocess, ChildStdout)> {
    let mut process = Subprocess::spawn(program, args, Some(url), Stdio::piped())?;
    let stdout = process.take_stdout().ok_or_else(|| AgentError::Io {
        context: format!("{} has no stdout", program.display()),
        source: std::io::ErrorKind::BrokenPipe.into(),
    })?;
    codec::widen_pipe(&stdout);
    Ok((process, stdout))
}

/// Runs a tool whose stdout is the data and stores it compressed in `dest`.
async fn tool_to(
    program: &Path,
    args: &[OsString],
    url: &PgUrl,
    dest: Destination,
    raw_counter: Arc<AtomicU64>,
) -> AgentResult<StoredFile> {
    let (process, stdout) = start_tool(program, args, url)?;
    // On a write error `process` is dropped here, which kills the tool: it would otherwise
    // block forever on a full pipe.
    let stored = codec::compress_to(stdout, dest, raw_counter).await?;
    // The exit status decides: a tool that failed midway leaves a short but valid stream.
    process.wait().await?;
    Ok(stored)
}

/// Returns `--dbname=<url without password>`; the password goes in `PGPASSWORD`.
pub fn dbname_arg(url: &PgUrl) -> OsString {
    OsString::from(format!("--dbname={}", url.without_password()))
}

fn artifact_file(name: &str, stored: StoredFile) -> ArtifactFile {
    ArtifactFile {
        name: name.to_owned(),
        size_bytes: stored.size_bytes,
        raw_bytes: stored.raw_bytes,
        sha256: stored.sha256,
    }
}

fn record(timings: &mut BTreeMap<String, u64>, phase: &str, started: Instant) {
    timings.insert(phase.to_owned(), elapsed_ms(started));
}

#[cfg(test)]
mod tests {
    use std::fs;

    use super::*;
    use crate::orders::tests::context;

    /// Writes a committed artifact the way a backup does, with a real zstd dump, sealed
    /// when the context has a key.
    async fn committed_artifact(ctx: &AgentContext, id: &str) -> Artifact {
        let path = Repository::artifact_path("db1", id);
        let artifact = Artifact {
            id: id.to_owned(),
            writer: ctx.repository.create_artifact(&path).await.expect("create"),
            path,
            seal: ctx.keys.sealing().cloned(),
        };
        let data: Vec<u8> = (0..200_000u32)
            .flat_map(|i| (i % 977).to_le_bytes())
            .collect();
        let name = artifact.stored_name(DUMP_FILE);
        let dest = Destination {
            sink: artifact.writer.create_file(&name).await.expect("sink"),
            seal: artifact.seal.clone(),
            location: name.clone(),
        };
        let dump = codec::compress_to(&data[..], dest, Arc::default())
            .await
            .expect("compress");
        artifact
            .writer
            .commit_files(vec![(name.clone(), dump.size_bytes)])
            .await
            .expect("commit");
        let manifest = ArtifactManifest {
            format: MANIFEST_FORMAT,
            artifact_id: id.to_owned(),
            agent: "db1".to_owned(),
            database: "app".to_owned(),
            order_id: "o1".to_owned(),
            trigger: "safety".to_owned(),
            server_version: "17.2".to_owned(),
            server_version_num: 170_002,
            pg_dump_version: "pg_dump (PostgreSQL) 17.2".to_owned(),
            dump: artifact_file(&name, dump),
            globals: None,
            globals_error: None,
            tables: Vec::new(),
            started_unix_ms: 0,
            finished_unix_ms: 0,
            timings_ms: BTreeMap::new(),
            encryption: artifact.seal.as_ref().map(Key::encryption),
        };
        let json = serde_json::to_vec(&manifest).expect("json");
        artifact
            .writer
            .write_manifest(json)
            .await
            .expect("manifest");
        artifact
    }

    fn dir_of(ctx: &AgentContext, artifact: &Artifact) -> std::path::PathBuf {
        ctx.repository
            .local_root()
            .expect("a file repository")
            .join(&artifact.path)
    }

    fn recording_progress() -> (ProgressReporter, Arc<std::sync::Mutex<Vec<&'static str>>>) {
        let phases = Arc::new(std::sync::Mutex::new(Vec::new()));
        let reporter = ProgressReporter::new({
            let phases = phases.clone();
            move |u| phases.lock().expect("lock").push(u.phase)
        });
        (reporter, phases)
    }

    #[tokio::test]
    async fn verification_passes_on_an_intact_dump() {
        let tmp = tempfile::tempdir().expect("tempdir");
        let ctx = context(tmp.path());
        let artifact = committed_artifact(&ctx, "a1").await;
        let (progress, phases) = recording_progress();

        verify_committed(&ctx, &artifact.path, &progress)
            .await
            .expect("intact dump verifies");
        let phases = phases.lock().expect("lock");
        assert!(!phases.is_empty() && phases.iter().all(|p| *p == "verifying"));
    }

    #[tokio::test]
    async fn verification_detects_a_damaged_dump_and_the_artifact_is_removed() {
        let tmp = tempfile::tempdir().expect("tempdir");
        let ctx = context(tmp.path());
        let artifact = committed_artifact(&ctx, "a1").await;
        let dump = dir_of(&ctx, &artifact).join(DUMP_FILE);
        let mut bytes = fs::read(&dump).expect("read");
        let middle = bytes.len() / 2;
        bytes[middle] ^= 0x01;
        fs::write(&dump, &bytes).expect("write");
        let recorded = ctx
            .repository
            .read_manifest(&artifact.path)
            .await
            .expect("manifest")
            .dump
            .sha256;
        let actual = hex::encode(<sha2::Sha256 as sha2::Digest>::digest(&bytes));

        let (progress, _) = recording_progress();
        let mut error = verify_committed(&ctx, &artifact.path, &progress)
            .await
            .expect_err("damaged dump");
        discard(&ctx.repository, "o1", &artifact, &mut error).await;
        assert_eq!(
            error.to_string(),
            format!(
                "backup verification failed: dump.zst sha256 is {actual} but the manifest \
                 records {recorded}; the artifact was removed"
            )
        );
        assert!(!dir_of(&ctx, &artifact).exists());
        assert_eq!(
            fs::read_dir(tmp.path().join("db1")).expect("list").count(),
            0,
            "nothing is left behind"
        );
    }

    #[tokio::test]
    async fn verification_fails_when_the_dump_is_missing() {
        let tmp = tempfile::tempdir().expect("tempdir");
        let ctx = context(tmp.path());
        let artifact = committed_artifact(&ctx, "a1").await;
        fs::remove_file(dir_of(&ctx, &artifact).join(DUMP_FILE)).expect("remove");
        let (progress, _) = recording_progress();
        let error = verify_committed(&ctx, &artifact.path, &progress)
            .await
            .expect_err("missing dump")
            .to_string();
        assert!(error.contains("dump.zst is missing"), "{error}");
    }
}
