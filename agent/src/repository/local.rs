//! A `file://` repository: a directory on a file system shared by the agents that restore
//! each other's backups.
//!
//! Every file is written under `<name>.partial`, fsynced, renamed into place, and the
//! directory fsynced, so a crash never leaves a file that looks finished but is not.
//! Removal first renames the directory to `<artifact_id>.deleting`, so a crash midway never
//! leaves a directory that looks like a complete artifact with files missing.

use std::fs::{self, File};
use std::io::{self, BufWriter, Write};
use std::path::{Path, PathBuf};

use url::Url;
use warden_shared::manifest::MANIFEST_FILE;

use super::{DELETING_SUFFIX, Removal, Sink, Source, check_relative};
use crate::error::{AgentError, AgentResult};

/// Directory of the probe files, beside the agents' directories.
const PROBE_DIR: &str = ".probe";

/// A `file://` repository.
#[derive(Debug, Clone)]
pub struct LocalRepository {
    url: String,
    root: PathBuf,
}

impl LocalRepository {
    /// Parses the repository URL; only `file:///absolute/path` is supported.
    pub fn from_url(url: &str) -> AgentResult<Self> {
        let unsupported = || {
            AgentError::Config(format!(
                "repository {url:?} is not supported: use file:///absolute/path or s3://bucket/prefix"
            ))
        };
        let parsed = Url::parse(url).map_err(|_| unsupported())?;
        if parsed.scheme() != "file" || parsed.host_str().is_some_and(|h| !h.is_empty()) {
            return Err(unsupported());
        }
        let root = parsed.to_file_path().map_err(|()| unsupported())?;
        Ok(Self {
            url: url.to_owned(),
            root,
        })
    }

    /// Returns the URL as configured (it holds no credentials).
    pub fn url(&self) -> &str {
        &self.url
    }

    /// Returns the repository's root directory.
    pub fn root(&self) -> &Path {
        &self.root
    }

    /// Checks that the root exists: a missing root usually means an unmounted share, and
    /// writing backups to the local disk underneath would hide that.
    pub fn check_root(&self) -> AgentResult<()> {
        if self.root.is_dir() {
            Ok(())
        } else {
            Err(AgentError::Config(format!(
                "repository directory {} does not exist; create it or mount the share",
                self.root.display()
            )))
        }
    }

    /// Returns the artifact path relative to the root, `<agent>/<artifact_id>`.
    pub fn artifact_path(agent: &str, artifact_id: &str) -> String {
        format!("{agent}/{artifact_id}")
    }

    /// Creates the directory of a new artifact; fails if it exists.
    pub fn create_artifact_dir(&self, artifact_path: &str) -> AgentResult<PathBuf> {
        let dir = self.resolve(artifact_path)?;
        if let Some(parent) = dir.parent() {
            fs::create_dir_all(parent).map_err(AgentError::io(format!(
                "cannot create {}",
                parent.display()
            )))?;
        }
        fs::create_dir(&dir).map_err(AgentError::io(format!("cannot create {}", dir.display())))?;
        // The new entries must be durable too, or a committed artifact could vanish with its
        // directory after a power loss.
        let mut ancestor = dir.parent();
        while let Some(parent) = ancestor {
            fsync_dir(parent)?;
            if parent == self.root {
                break;
            }
            ancestor = parent.parent();
        }
        Ok(dir)
    }

    /// Returns the directory of an artifact from its relative path, refusing paths that
    /// would leave the repository (the path comes over the wire).
    pub fn resolve(&self, artifact_path: &str) -> AgentResult<PathBuf> {
        check_relative(artifact_path)?;
        Ok(self.root.join(artifact_path))
    }

    /// Removes an artifact's directory (whose path [`super::check_artifact_path`] checked)
    /// and returns whether there was one. Idempotent: a directory that is already gone is
    /// not an error, and the leftover of a removal that a crash interrupted is finished.
    ///
    /// The directory is renamed to `<artifact_id>.deleting` and the rename made durable
    /// before anything inside is deleted, so the artifact disappears as a whole.
    pub fn remove_artifact(&self, artifact_id: &str, artifact_path: &str) -> AgentResult<Removal> {
        let dir = self.resolve(artifact_path)?;
        let Some(parent) = dir.parent() else {
            // Unreachable: `check_artifact_path` only accepts two components under the root.
            return Err(AgentError::InvalidOrder(format!(
                "artifact path {artifact_path:?} has no parent directory"
            )));
        };
        let doomed = parent.join(format!("{artifact_id}{DELETING_SUFFIX}"));
        // A removal interrupted earlier: it goes first, or the rename below would fail on it.
        let mut changed = remove_dir_if_exists(&doomed)?;
        let removal = match fs::symlink_metadata(&dir) {
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => Removal::AlreadyGone,
            Err(e) => {
                return Err(AgentError::io(format!("cannot inspect {}", dir.display()))(
                    e,
                ));
            }
            Ok(meta) if !meta.is_dir() => {
                return Err(AgentError::InvalidOrder(format!(
                    "{} is not a directory, so not an artifact; refusing to remove it",
                    dir.display()
                )));
            }
            Ok(_) => match fs::rename(&dir, &doomed) {
                // Another removal of the same artifact got there first.
                Err(e) if e.kind() == std::io::ErrorKind::NotFound => Removal::AlreadyGone,
                Err(e) => {
                    return Err(AgentError::io(format!(
                        "cannot rename {} to {}",
                        dir.display(),
                        doomed.display()
                    ))(e));
                }
                Ok(()) => {
                    fsync_dir(parent)?;
                    remove_dir_if_exists(&doomed)?;
                    changed = true;
                    Removal::Removed
                }
            },
        };
        if changed {
            fsync_dir(parent)?;
        }
        Ok(removal)
    }

    /// Reads an artifact's manifest; returns its bytes and where they were.
    pub fn read_manifest_bytes(&self, artifact_path: &str) -> AgentResult<(Vec<u8>, String)> {
        let path = self.artifact_file(artifact_path, MANIFEST_FILE)?;
        let bytes =
            fs::read(&path).map_err(AgentError::io(format!("cannot read {}", path.display())))?;
        Ok((bytes, path.display().to_string()))
    }

    /// Opens file `name` of the artifact at `artifact_path`.
    pub fn open_file(&self, artifact_path: &str, name: &str) -> AgentResult<Source> {
        let path = self.artifact_file(artifact_path, name)?;
        let file =
            File::open(&path).map_err(AgentError::io(format!("cannot open {}", path.display())))?;
        Ok(Box::new(file))
    }

    /// Removes the probe files of `agent` that a kill left behind.
    fn remove_stale_probes(&self, agent: &str) -> AgentResult<()> {
        warden_shared::validate_agent_name(agent)?;
        remove_dir_if_exists(&self.root.join(PROBE_DIR).join(agent)).map(|_| ())
    }

    /// Writes, fsyncs, reads back and removes a probe file of `agent` under
    /// `.probe/<agent>/`.
    pub fn probe(&self, agent: &str) -> AgentResult<()> {
        self.check_root()?;
        warden_shared::validate_agent_name(agent)?;
        let dir = self.root.join(PROBE_DIR).join(agent);
        fs::create_dir_all(&dir)
            .map_err(AgentError::io(format!("cannot create {}", dir.display())))?;
        let name = uuid::Uuid::now_v7().to_string();
        let expected = format!("warden probe of agent {agent}");
        write_file_atomically(&dir, &name, expected.as_bytes())?;
        let path = dir.join(&name);
        let read =
            fs::read(&path).map_err(AgentError::io(format!("cannot read {}", path.display())));
        let removed = fs::remove_file(&path)
            .map_err(AgentError::io(format!("cannot remove {}", path.display())));
        if read? != expected.as_bytes() {
            return Err(AgentError::io(format!("cannot read {}", path.display()))(
                io::Error::other("it does not hold what was written"),
            ));
        }
        removed
    }

    /// Returns the path of file `name` of the artifact at `artifact_path`, which must exist.
    ///
    /// A missing file is [`AgentError::ArtifactMissing`] (the artifact is unusable) only when
    /// the directory of the agent that took it is there: without that directory, this
    /// repository is not the one the artifact was written to (not shared with that agent,
    /// or not mounted), which says nothing about the artifact.
    pub fn artifact_file(&self, artifact_path: &str, name: &str) -> AgentResult<PathBuf> {
        let dir = self.resolve(artifact_path)?;
        let path = dir.join(name);
        match fs::metadata(&path) {
            Ok(meta) if meta.is_file() => Ok(path),
            Ok(_) => Err(AgentError::ArtifactMissing {
                artifact_path: artifact_path.to_owned(),
                location: path.display().to_string(),
            }),
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => {
                if dir.parent().is_some_and(Path::is_dir) {
                    Err(AgentError::ArtifactMissing {
                        artifact_path: artifact_path.to_owned(),
                        location: path.display().to_string(),
                    })
                } else {
                    Err(AgentError::io(format!(
                        "cannot read {} (is the repository shared with the agent that took \
                         the backup, and mounted?)",
                        path.display()
                    ))(e))
                }
            }
            Err(e) => Err(AgentError::io(format!("cannot inspect {}", path.display()))(e)),
        }
    }

    /// Removes every directory of `agent` that has no manifest (backups interrupted by a
    /// crash or kill) or that was being removed (`*.deleting`, a prune interrupted by one),
    /// and returns what it removed. Runs before the agent takes orders.
    pub fn cleanup_incomplete(&self, agent: &str) -> AgentResult<Vec<PathBuf>> {
        self.remove_stale_probes(agent)?;
        let agent_dir = self.root.join(agent);
        let entries = match fs::read_dir(&agent_dir) {
            Ok(entries) => entries,
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => return Ok(Vec::new()),
            Err(e) => {
                return Err(AgentError::io(format!(
                    "cannot list {}",
                    agent_dir.display()
                ))(e));
            }
        };
        let mut removed = Vec::new();
        for entry in entries {
            let path = entry
                .map_err(AgentError::io(format!(
                    "cannot list {}",
                    agent_dir.display()
                )))?
                .path();
            let deleting = path
                .file_name()
                .and_then(|n| n.to_str())
                .is_some_and(|n| n.ends_with(DELETING_SUFFIX));
            if path.is_dir() && (deleting || !path.join(MANIFEST_FILE).exists()) {
                fs::remove_dir_all(&path)
                    .map_err(AgentError::io(format!("cannot remove {}", path.display())))?;
                tracing::info!(path = %path.display(), "removed unfinished artifact");
                removed.push(path);
            }
        }
        removed.sort();
        Ok(removed)
    }
}

/// A data file being written under its `.partial` name.
struct FileSink {
    file: BufWriter<File>,
    /// Released when the file is finished or abandoned.
    _guard: super::WriterGuard,
}

impl Write for FileSink {
    fn write(&mut self, buf: &[u8]) -> io::Result<usize> {
        self.file.write(buf)
    }

    fn flush(&mut self) -> io::Result<()> {
        self.file.flush()
    }
}

impl Sink for FileSink {
    fn finish(self: Box<Self>) -> io::Result<()> {
        self.file
            .into_inner()
            .map_err(|e| e.into_error())?
            .sync_all()
    }
}

/// Creates `<dir>/<name>.partial`, which must not exist, for [`commit_file`] to move into
/// place once its sink is finished.
pub fn create_file(
    dir: &Path,
    name: &str,
    guard: super::WriterGuard,
) -> AgentResult<Box<dyn Sink>> {
    let partial = partial_path(dir, name);
    let file = File::create_new(&partial).map_err(AgentError::io(format!(
        "cannot create {}",
        partial.display()
    )))?;
    Ok(Box::new(FileSink {
        file: BufWriter::with_capacity(crate::codec::CHUNK_BYTES, file),
        _guard: guard,
    }))
}

/// Returns the temporary name a file is written under before it is committed.
pub fn partial_path(dir: &Path, name: &str) -> PathBuf {
    dir.join(format!("{name}.partial"))
}

/// Moves the fsynced `<name>.partial` to `<name>` and fsyncs the directory, so the rename
/// itself survives a crash.
pub fn commit_file(dir: &Path, name: &str) -> AgentResult<()> {
    let target = dir.join(name);
    fs::rename(partial_path(dir, name), &target).map_err(AgentError::io(format!(
        "cannot rename into {}",
        target.display()
    )))?;
    fsync_dir(dir)
}

/// Writes `bytes` to `<dir>/<name>` via a fsynced `.partial` file and a rename.
pub fn write_file_atomically(dir: &Path, name: &str, bytes: &[u8]) -> AgentResult<()> {
    let partial = partial_path(dir, name);
    let write = || -> std::io::Result<()> {
        let mut file = File::create(&partial)?;
        file.write_all(bytes)?;
        file.sync_all()
    };
    write().map_err(AgentError::io(format!(
        "cannot write {}",
        partial.display()
    )))?;
    commit_file(dir, name)
}

/// Removes a directory tree; returns false if there was none.
fn remove_dir_if_exists(dir: &Path) -> AgentResult<bool> {
    match fs::remove_dir_all(dir) {
        Ok(()) => Ok(true),
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => Ok(false),
        Err(e) => Err(AgentError::io(format!("cannot remove {}", dir.display()))(
            e,
        )),
    }
}

fn fsync_dir(dir: &Path) -> AgentResult<()> {
    File::open(dir)
        .and_then(|d| d.sync_all())
        .map_err(AgentError::io(format!("cannot fsync {}", dir.display())))
}

#[cfg(test)]
mod tests {
    use super::*;

    fn repo(dir: &Path) -> LocalRepository {
        let url = Url::from_file_path(dir).expect("absolute path");
        LocalRepository::from_url(url.as_str()).expect("file url")
    }

    #[test]
    fn only_file_urls_with_absolute_paths() {
        let ok = LocalRepository::from_url("file:///var/lib/warden/repo").expect("valid");
        assert_eq!(ok.root(), Path::new("/var/lib/warden/repo"));
        let spaced = LocalRepository::from_url("file:///tmp/my%20repo").expect("valid");
        assert_eq!(spaced.root(), Path::new("/tmp/my repo"));
        for bad in [
            "s3://bucket/warden",
            "/var/lib/warden",
            "file://host/repo",
            "repo",
        ] {
            let err = LocalRepository::from_url(bad).expect_err(bad).to_string();
            assert!(err.contains(bad), "{err}");
            assert!(err.contains("file:///absolute/path"), "{err}");
        }
    }

    #[test]
    fn artifact_paths_stay_inside_the_repository() {
        let r = LocalRepository::from_url("file:///repo").expect("valid");
        assert_eq!(
            r.resolve("db1/0191").expect("ok"),
            Path::new("/repo/db1/0191")
        );
        for bad in ["", "/etc", "../x", "db1/../../etc", "./db1"] {
            assert!(r.resolve(bad).is_err(), "{bad}");
        }
    }

    #[test]
    fn cleanup_removes_only_directories_without_manifest() {
        let tmp = tempfile::tempdir().expect("tempdir");
        let r = repo(tmp.path());
        let done = r.create_artifact_dir("db1/done").expect("create");
        write_file_atomically(&done, "dump.zst", b"x").expect("dump");
        write_file_atomically(&done, MANIFEST_FILE, b"{}").expect("manifest");
        let unfinished = r.create_artifact_dir("db1/unfinished").expect("create");
        fs::write(partial_path(&unfinished, "dump.zst"), b"half").expect("partial");
        let other_agent = r.create_artifact_dir("db2/unfinished").expect("create");

        let removed = r.cleanup_incomplete("db1").expect("cleanup");
        assert_eq!(removed, vec![unfinished.clone()]);
        assert!(!unfinished.exists());
        assert!(done.join(MANIFEST_FILE).exists());
        assert!(done.join("dump.zst").exists());
        assert!(!partial_path(&done, MANIFEST_FILE).exists());
        assert!(
            other_agent.exists(),
            "other agents' directories are not ours to clean"
        );
        assert!(
            r.cleanup_incomplete("nobody")
                .expect("missing dir")
                .is_empty()
        );
    }

    /// Creates a committed artifact at `path` and returns its directory.
    fn committed(r: &LocalRepository, path: &str) -> PathBuf {
        let dir = r.create_artifact_dir(path).expect("create");
        write_file_atomically(&dir, "dump.zst", b"x").expect("dump");
        write_file_atomically(&dir, MANIFEST_FILE, b"{}").expect("manifest");
        dir
    }

    #[test]
    fn remove_artifact_removes_the_directory_and_is_idempotent() {
        let tmp = tempfile::tempdir().expect("tempdir");
        let r = repo(tmp.path());
        let doomed = committed(&r, "db1/a1");
        let kept = committed(&r, "db1/a2");

        assert_eq!(
            r.remove_artifact("a1", "db1/a1").expect("remove"),
            Removal::Removed
        );
        assert!(!doomed.exists());
        assert!(!tmp.path().join("db1/a1.deleting").exists());
        assert!(kept.join(MANIFEST_FILE).exists());
        assert_eq!(
            r.remove_artifact("a1", "db1/a1").expect("again"),
            Removal::AlreadyGone
        );
        assert_eq!(
            r.remove_artifact("a9", "nobody/a9")
                .expect("no agent directory"),
            Removal::AlreadyGone
        );
    }

    #[test]
    fn remove_artifact_finishes_a_removal_a_crash_interrupted() {
        let tmp = tempfile::tempdir().expect("tempdir");
        let r = repo(tmp.path());
        // Renamed away, but the crash came before the files were deleted.
        let dir = committed(&r, "db1/a1");
        let leftover = tmp.path().join("db1/a1.deleting");
        fs::rename(&dir, &leftover).expect("rename");

        assert_eq!(
            r.remove_artifact("a1", "db1/a1").expect("retry"),
            Removal::AlreadyGone
        );
        assert!(!leftover.exists());
    }

    #[tokio::test]
    async fn remove_artifact_refuses_paths_that_could_hit_something_else() {
        let tmp = tempfile::tempdir().expect("tempdir");
        let root = tmp.path().join("repo");
        fs::create_dir(&root).expect("root");
        let r = super::super::Repository::Local(repo(&root));
        let a1 = committed(&repo(&root), "db1/a1");
        let staging = root.join(".staging/db1");
        fs::create_dir_all(&staging).expect("staging");
        let outside = tmp.path().join("a1");
        fs::create_dir(&outside).expect("outside");
        let file = root.join("db1/a3");
        fs::write(&file, b"not a directory").expect("file");

        for (id, path, why) in [
            ("a1", "../a1", "not a relative path inside the repository"),
            (
                "a1",
                outside.to_str().expect("utf-8"),
                "not a relative path",
            ),
            ("a1", "db1/../../a1", "not a relative path"),
            ("a2", "db1/a1", "does not end with the artifact id"),
            ("db1", "db1", "is not of the form AGENT/ARTIFACT_ID"),
            ("a1", "x/db1/a1", "is not of the form AGENT/ARTIFACT_ID"),
            ("a1", "db1//a1", "not a relative path inside the repository"),
            ("db1", ".staging/db1", "does not start with an agent name"),
            (".x", "db1/.x", "does not name an artifact"),
            (
                "a1.deleting",
                "db1/a1.deleting",
                "does not name an artifact",
            ),
            ("a3", "db1/a3", "is not a directory"),
        ] {
            let error = r
                .remove_artifact(id, path)
                .await
                .expect_err(path)
                .to_string();
            assert!(error.contains(why), "{path}: {error}");
        }
        assert!(a1.join(MANIFEST_FILE).exists());
        assert!(staging.exists());
        assert!(outside.exists());
        assert!(file.exists());
    }

    #[test]
    fn cleanup_removes_directories_left_by_an_interrupted_removal() {
        let tmp = tempfile::tempdir().expect("tempdir");
        let r = repo(tmp.path());
        let done = committed(&r, "db1/a1");
        let leftover = committed(&r, "db1/a2.deleting");

        let removed = r.cleanup_incomplete("db1").expect("cleanup");
        assert_eq!(removed, vec![leftover.clone()]);
        assert!(!leftover.exists());
        assert!(done.join(MANIFEST_FILE).exists());
    }

    #[test]
    fn artifact_dir_is_created_once() {
        let tmp = tempfile::tempdir().expect("tempdir");
        let r = repo(tmp.path());
        r.create_artifact_dir("db1/a").expect("first");
        assert!(r.create_artifact_dir("db1/a").is_err());
    }

    #[tokio::test]
    async fn a_missing_file_of_an_artifact_is_told_apart_from_a_foreign_repository() {
        let tmp = tempfile::tempdir().expect("tempdir");
        let r = repo(tmp.path());
        let dir = committed(&r, "db1/a1");
        assert_eq!(
            r.artifact_file("db1/a1", "dump.zst").expect("present"),
            dir.join("dump.zst")
        );
        fs::remove_file(dir.join("dump.zst")).expect("remove");
        for (path, file) in [("db1/a1", "dump.zst"), ("db1/gone", MANIFEST_FILE)] {
            match r.artifact_file(path, file) {
                Err(error @ AgentError::ArtifactMissing { .. }) => {
                    assert!(error.to_string().contains("cannot be restored"), "{error}");
                }
                other => panic!("{path}/{file}: expected ArtifactMissing, got {other:?}"),
            }
        }
        // No directory of agent db2 here: this repository is not the one it writes to.
        match super::super::Repository::Local(r.clone())
            .read_manifest("db2/a1")
            .await
        {
            Err(error @ AgentError::Io { .. }) => {
                assert!(
                    error.to_string().contains("is the repository shared"),
                    "{error}"
                );
            }
            other => panic!("expected an I/O error, got {other:?}"),
        }
    }

    #[tokio::test]
    async fn a_manifest_with_fields_of_a_newer_agent_is_not_corrupt() {
        use warden_shared::ArtifactManifest;
        let tmp = tempfile::tempdir().expect("tempdir");
        let r = repo(tmp.path());
        let dir = r.create_artifact_dir("db1/a1").expect("create");
        let file = warden_shared::manifest::ArtifactFile {
            name: "dump.zst".to_owned(),
            size_bytes: 10,
            raw_bytes: 20,
            sha256: "ab".repeat(32),
        };
        let manifest = ArtifactManifest {
            format: warden_shared::manifest::MANIFEST_FORMAT,
            artifact_id: "a1".to_owned(),
            agent: "db1".to_owned(),
            database: "app".to_owned(),
            order_id: "o1".to_owned(),
            trigger: "manual".to_owned(),
            server_version: "17.2".to_owned(),
            server_version_num: 170002,
            pg_dump_version: "pg_dump (PostgreSQL) 17.2".to_owned(),
            dump: file.clone(),
            globals: None,
            globals_error: None,
            tables: Vec::new(),
            started_unix_ms: 1,
            finished_unix_ms: 2,
            timings_ms: Default::default(),
            encryption: None,
        };
        // ArtifactManifest does not deny unknown fields: what a newer agent adds is ignored.
        let mut json = serde_json::to_value(&manifest).expect("json");
        json["compression_level"] = serde_json::json!(3);
        json["dump"]["compression"] = serde_json::json!("zstd");
        let bytes = serde_json::to_vec(&json).expect("bytes");
        write_file_atomically(&dir, MANIFEST_FILE, &bytes).expect("manifest");
        assert_eq!(
            super::super::Repository::Local(r.clone())
                .read_manifest("db1/a1")
                .await
                .expect("parses"),
            manifest
        );
    }

    #[tokio::test]
    async fn an_unreadable_manifest_makes_the_artifact_corrupt() {
        let tmp = tempfile::tempdir().expect("tempdir");
        let r = repo(tmp.path());
        let dir = r.create_artifact_dir("db1/a1").expect("create");
        write_file_atomically(&dir, MANIFEST_FILE, b"{\"format\": ").expect("manifest");
        match super::super::Repository::Local(r.clone())
            .read_manifest("db1/a1")
            .await
        {
            Err(AgentError::CorruptArtifact {
                artifact_id,
                detail,
            }) => {
                assert_eq!(artifact_id, "a1");
                assert!(detail.contains("is not a valid manifest"), "{detail}");
            }
            other => panic!("expected CorruptArtifact, got {other:?}"),
        }
    }
}
