//! The artifact repository: `<root>/<agent>/<artifact_id>/{dump.zst, globals.sql.zst,
//! manifest.json}` (the data files end in `.age` when sealed, see [`crate::sealing`]), on a
//! file system the agents share ([`LocalRepository`], `file://`) or in an S3-compatible
//! bucket ([`ObjectRepository`], `s3://bucket/prefix`).
//!
//! Both keep the same rules. `manifest.json` is written last, only after every data file is
//! complete and durable: it is the commit point, and an artifact without it is an unfinished
//! backup that [`Repository::cleanup_incomplete`] removes before the agent takes orders.
//! Removal runs the other way round, so an artifact never looks complete with files missing.
//! Data files are written as streams through a [`Sink`] and read back through a [`Source`],
//! so no dump is ever held in memory or staged whole on the way.

mod local;
mod object;

use std::io::{self, Read, Write};
use std::path::Path;
use std::sync::Arc;
use std::time::Duration;

use tokio::sync::RwLock;

pub use local::{LocalRepository, commit_file, partial_path, write_file_atomically};
pub use object::{ObjectRepository, S3Settings};
use warden_shared::ArtifactManifest;

use crate::error::{AgentError, AgentResult};
use crate::orders::blocking;

/// What [`Repository::remove_artifact`] found.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Removal {
    /// The artifact existed and is gone now.
    Removed,
    /// There was nothing to remove (a retried prune, or an artifact removed by hand).
    AlreadyGone,
}

/// Where a data file of a new artifact is written. Dropping it before [`Sink::finish`]
/// abandons the file: it never becomes part of an artifact.
pub trait Sink: Write + Send {
    /// Makes everything written durable (fsync, or the completed multipart upload).
    fn finish(self: Box<Self>) -> io::Result<()>;
}

/// The bytes of a stored file, read on a blocking thread.
pub type Source = Box<dyn Read + Send>;

/// An artifact repository.
#[derive(Debug, Clone)]
pub enum Repository {
    Local(LocalRepository),
    Object(ObjectRepository),
}

impl Repository {
    /// Opens the repository at `url`: `file:///absolute/path` or `s3://bucket[/prefix]`
    /// (with `s3` for the endpoint, region and credentials not taken from the environment).
    pub fn open(url: &str, s3: &S3Settings) -> AgentResult<Self> {
        if url.starts_with("s3://") {
            ObjectRepository::open(url, s3).map(Self::Object)
        } else {
            LocalRepository::from_url(url).map(Self::Local)
        }
    }

    /// Returns the URL as configured (it holds no credentials).
    pub fn url(&self) -> &str {
        match self {
            Self::Local(r) => r.url(),
            Self::Object(r) => r.url(),
        }
    }

    /// Returns the root directory of a `file://` repository.
    pub fn local_root(&self) -> Option<&Path> {
        match self {
            Self::Local(r) => Some(r.root()),
            Self::Object(_) => None,
        }
    }

    /// Checks that a `file://` repository's root exists: a missing root usually means an
    /// unmounted share, and writing backups to the local disk underneath would hide that.
    /// A bucket is checked by [`Repository::probe`].
    pub async fn check_root(&self) -> AgentResult<()> {
        match self {
            Self::Local(r) => {
                let r = r.clone();
                blocking(move || r.check_root()).await
            }
            Self::Object(_) => Ok(()),
        }
    }

    /// Returns the artifact path relative to the root, `<agent>/<artifact_id>`.
    pub fn artifact_path(agent: &str, artifact_id: &str) -> String {
        format!("{agent}/{artifact_id}")
    }

    /// Starts a new artifact at `artifact_path`; fails if one is there.
    pub async fn create_artifact(&self, artifact_path: &str) -> AgentResult<ArtifactWriter> {
        match self {
            Self::Local(r) => {
                let (r, path) = (r.clone(), artifact_path.to_owned());
                let dir = blocking(move || r.create_artifact_dir(&path)).await?;
                Ok(ArtifactWriter::new(Place::Local { dir }))
            }
            Self::Object(r) => Ok(ArtifactWriter::new(Place::Object {
                repository: r.clone(),
                path: r.check_path(artifact_path)?.to_owned(),
            })),
        }
    }

    /// Reads and parses an artifact's manifest. A manifest that is not valid JSON of a
    /// manifest makes the artifact corrupt.
    pub async fn read_manifest(&self, artifact_path: &str) -> AgentResult<ArtifactManifest> {
        let (bytes, location) = match self {
            Self::Local(r) => {
                let (r, path) = (r.clone(), artifact_path.to_owned());
                blocking(move || r.read_manifest_bytes(&path)).await?
            }
            Self::Object(r) => r.read_manifest_bytes(artifact_path).await?,
        };
        serde_json::from_slice(&bytes).map_err(|e| AgentError::CorruptArtifact {
            artifact_id: artifact_path
                .rsplit('/')
                .next()
                .unwrap_or(artifact_path)
                .to_owned(),
            detail: format!("{location} is not a valid manifest: {e}"),
        })
    }

    /// Opens data file `name` of the artifact at `artifact_path` for reading.
    pub async fn open_file(&self, artifact_path: &str, name: &str) -> AgentResult<Source> {
        check_file_name(artifact_path, name)?;
        match self {
            Self::Local(r) => {
                let (r, path, name) = (r.clone(), artifact_path.to_owned(), name.to_owned());
                blocking(move || r.open_file(&path, &name)).await
            }
            Self::Object(r) => r.open_file(artifact_path, name).await,
        }
    }

    /// Removes an artifact and returns whether there was one. Idempotent: an artifact that
    /// is already gone is not an error, and the leftover of a removal that a crash
    /// interrupted is finished. Refuses any path that is not `<agent>/<artifact_id>` for this
    /// very id (the path comes from the catalog, and must never delete anything else).
    pub async fn remove_artifact(
        &self,
        artifact_id: &str,
        artifact_path: &str,
    ) -> AgentResult<Removal> {
        check_artifact_path(artifact_id, artifact_path)?;
        match self {
            Self::Local(r) => {
                let (r, id, path) = (r.clone(), artifact_id.to_owned(), artifact_path.to_owned());
                blocking(move || r.remove_artifact(&id, &path)).await
            }
            Self::Object(r) => r.remove_artifact(artifact_path).await,
        }
    }

    /// Removes every artifact of `agent` without a manifest (backups interrupted by a crash
    /// or a kill, with their unfinished uploads) or half removed, and returns where they
    /// were. Runs before the agent takes orders.
    pub async fn cleanup_incomplete(&self, agent: &str) -> AgentResult<Vec<String>> {
        match self {
            Self::Local(r) => {
                let (r, agent) = (r.clone(), agent.to_owned());
                let removed = blocking(move || r.cleanup_incomplete(&agent)).await?;
                Ok(removed
                    .into_iter()
                    .map(|p| p.display().to_string())
                    .collect())
            }
            Self::Object(r) => r.cleanup_incomplete(agent).await,
        }
    }

    /// Writes, reads back and deletes a small probe object (or file) of `agent`, and returns
    /// how long that took: whether this agent can back up into and restore from the
    /// repository right now, with the storage's own error when it cannot.
    pub async fn probe(&self, agent: &str) -> AgentResult<Duration> {
        let started = std::time::Instant::now();
        match self {
            Self::Local(r) => {
                let (r, agent) = (r.clone(), agent.to_owned());
                blocking(move || r.probe(&agent)).await?;
            }
            Self::Object(r) => r.probe(agent).await?,
        }
        Ok(started.elapsed())
    }
}

/// Held by every sink of an artifact, and by the task that aborts an abandoned upload,
/// until nothing more can reach the repository from it: see [`ArtifactWriter::settle`].
pub type WriterGuard = tokio::sync::OwnedRwLockReadGuard<()>;

/// A new artifact being written.
#[derive(Debug)]
pub struct ArtifactWriter {
    place: Place,
    writers: Arc<RwLock<()>>,
}

#[derive(Debug)]
enum Place {
    Local {
        dir: std::path::PathBuf,
    },
    Object {
        repository: ObjectRepository,
        path: String,
    },
}

impl ArtifactWriter {
    fn new(place: Place) -> Self {
        Self {
            place,
            writers: Arc::new(RwLock::new(())),
        }
    }

    /// Where the artifact is, for messages.
    pub fn location(&self) -> String {
        match &self.place {
            Place::Local { dir } => dir.display().to_string(),
            Place::Object { repository, path } => repository.location(path, ""),
        }
    }

    /// Creates data file `name` of the artifact. It becomes part of the artifact once its
    /// sink is finished and [`ArtifactWriter::commit_files`] has run.
    pub async fn create_file(&self, name: &str) -> AgentResult<Box<dyn Sink>> {
        let guard = self.writers.clone().read_owned().await;
        match &self.place {
            Place::Local { dir } => {
                let dir = dir.clone();
                let name = name.to_owned();
                blocking(move || local::create_file(&dir, &name, guard)).await
            }
            Place::Object { repository, path } => repository.create_file(path, name, guard).await,
        }
    }

    /// Waits (a minute at most) until no sink of this artifact can write any more: a
    /// cancelled backup's compressing thread may still be finishing an upload, or its
    /// abandoned upload waiting for its parts in flight before it is aborted. Removing the
    /// artifact before then could leave an object behind.
    pub async fn settle(&self) {
        let settled = tokio::time::timeout(SETTLE_TIMEOUT, self.writers.write()).await;
        if settled.is_err() {
            tracing::warn!(location = %self.location(), "a writer of the artifact has not stopped; removing it anyway");
        }
    }

    /// Removes data file `name`, abandoned before it was finished (its sink dropped).
    pub async fn discard_file(&self, name: &str) -> AgentResult<()> {
        match &self.place {
            Place::Local { dir } => {
                let partial = partial_path(dir, name);
                match tokio::fs::remove_file(&partial).await {
                    Err(e) if e.kind() != io::ErrorKind::NotFound => Err(AgentError::io(format!(
                        "cannot remove {}",
                        partial.display()
                    ))(e)),
                    _ => Ok(()),
                }
            }
            Place::Object { repository, path } => repository.discard_file(path, name).await,
        }
    }

    /// Puts the finished data files `files` (name, size) in place: a `file://` repository
    /// wrote them under `.partial` names; in a bucket, they are checked to be there whole.
    pub async fn commit_files(&self, files: Vec<(String, u64)>) -> AgentResult<()> {
        match &self.place {
            Place::Local { dir } => {
                let dir = dir.clone();
                blocking(move || {
                    files
                        .iter()
                        .try_for_each(|(name, _)| commit_file(&dir, name))
                })
                .await
            }
            Place::Object { repository, path } => repository.check_files(path, &files).await,
        }
    }

    /// Writes the manifest: the commit point of the artifact.
    pub async fn write_manifest(&self, bytes: Vec<u8>) -> AgentResult<()> {
        match &self.place {
            Place::Local { dir } => {
                let dir = dir.clone();
                blocking(move || {
                    write_file_atomically(&dir, warden_shared::manifest::MANIFEST_FILE, &bytes)
                })
                .await
            }
            Place::Object { repository, path } => repository.write_manifest(path, bytes).await,
        }
    }
}

/// The longest [`ArtifactWriter::settle`] waits.
const SETTLE_TIMEOUT: Duration = Duration::from_secs(60);

/// Refuses an artifact path that would leave the repository (the path comes over the wire).
fn check_relative(artifact_path: &str) -> AgentResult<()> {
    let safe = !artifact_path.is_empty()
        && Path::new(artifact_path)
            .components()
            .all(|c| matches!(c, std::path::Component::Normal(_)))
        && !artifact_path.contains("//")
        && !artifact_path.ends_with('/');
    if safe {
        Ok(())
    } else {
        Err(AgentError::InvalidOrder(format!(
            "artifact path {artifact_path:?} is not a relative path inside the repository"
        )))
    }
}

/// Refuses a data file name that is not a plain name (it comes from a manifest in the
/// repository, which anyone who can write there could have changed).
fn check_file_name(artifact_path: &str, name: &str) -> AgentResult<()> {
    check_relative(artifact_path)?;
    if is_artifact_id(name) {
        Ok(())
    } else {
        Err(AgentError::InvalidOrder(format!(
            "file name {name:?} of artifact {artifact_path:?} is not a plain file name"
        )))
    }
}

/// Suffix of an artifact directory that is being removed; whatever carries it is garbage.
const DELETING_SUFFIX: &str = ".deleting";

/// Checks that an artifact about to be removed is `<agent>/<artifact_id>` with this very
/// `artifact_id`, and that neither part is hidden (`.staging`) or being removed.
fn check_artifact_path(artifact_id: &str, artifact_path: &str) -> AgentResult<()> {
    check_relative(artifact_path)?;
    let parts: Vec<&str> = artifact_path.split('/').collect();
    let refuse = |why: &str| {
        Err(AgentError::InvalidOrder(format!(
            "artifact path {artifact_path:?} of artifact {artifact_id:?} {why}; \
             refusing to remove it, nothing was deleted"
        )))
    };
    match parts.as_slice() {
        [agent, _] if warden_shared::validate_agent_name(agent).is_err() => refuse(&format!(
            "does not start with an agent name ({agent:?} is not one)"
        )),
        [_, last] if *last != artifact_id => refuse("does not end with the artifact id"),
        [_, _] if !is_artifact_id(artifact_id) => refuse(
            "does not name an artifact: an id starts with a letter or digit and holds \
             only letters, digits, '.', '_' or '-'",
        ),
        [_, _] => Ok(()),
        _ => refuse("is not of the form AGENT/ARTIFACT_ID"),
    }
}

/// Returns whether `id` can be an artifact id (or a file name in one): a plain name that is
/// neither hidden nor being removed. Backups use UUIDs.
fn is_artifact_id(id: &str) -> bool {
    id.starts_with(|c: char| c.is_ascii_alphanumeric())
        && id
            .chars()
            .all(|c| c.is_ascii_alphanumeric() || matches!(c, '.' | '_' | '-'))
        && !id.ends_with(DELETING_SUFFIX)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn artifact_paths_stay_inside_the_repository() {
        assert!(check_relative("db1/0191").is_ok());
        for bad in [
            "",
            "/etc",
            "../x",
            "db1/../../etc",
            "./db1",
            "db1//a",
            "db1/",
        ] {
            assert!(check_relative(bad).is_err(), "{bad}");
        }
        assert!(check_file_name("db1/a", "dump.zst.age").is_ok());
        for bad in ["../manifest.json", "x/y", ".hidden", ""] {
            assert!(check_file_name("db1/a", bad).is_err(), "{bad}");
        }
    }

    #[test]
    fn removal_refuses_paths_that_could_hit_something_else() {
        for (id, path, why) in [
            ("a1", "../a1", "not a relative path inside the repository"),
            ("a1", "/tmp/a1", "not a relative path"),
            ("a1", "db1/../../a1", "not a relative path"),
            ("a2", "db1/a1", "does not end with the artifact id"),
            ("db1", "db1", "is not of the form AGENT/ARTIFACT_ID"),
            ("a1", "x/db1/a1", "is not of the form AGENT/ARTIFACT_ID"),
            ("a1", "db1//a1", "not a relative path"),
            ("db1", ".staging/db1", "does not start with an agent name"),
            (".x", "db1/.x", "does not name an artifact"),
            (
                "a1.deleting",
                "db1/a1.deleting",
                "does not name an artifact",
            ),
        ] {
            let error = check_artifact_path(id, path).expect_err(path).to_string();
            assert!(error.contains(why), "{path}: {error}");
        }
        assert!(check_artifact_path("a1", "db1/a1").is_ok());
    }
}
