//! The artifact repository: `<root>/<agent>/<artifact_id>/{dump.zst, globals.sql.zst,
//! manifest.json}` on a file system shared by the agents that restore each other's backups.
//!
//! Every file is written under `<name>.partial`, fsynced, renamed into place, and the
//! directory fsynced, so a crash never leaves a file that looks finished but is not.
//! `manifest.json` is written last: it is the commit point, and a directory without it is
//! an unfinished backup that [`Repository::cleanup_incomplete`] removes.

use std::fs::{self, File};
use std::io::Write;
use std::path::{Component, Path, PathBuf};

use url::Url;
use warden_shared::ArtifactManifest;
use warden_shared::manifest::MANIFEST_FILE;

use crate::error::{AgentError, AgentResult};

/// A `file://` repository.
#[derive(Debug, Clone)]
pub struct Repository {
    url: String,
    root: PathBuf,
}

impl Repository {
    /// Parses the repository URL; only `file:///absolute/path` is supported.
    pub fn from_url(url: &str) -> AgentResult<Self> {
        let unsupported = || {
            AgentError::Config(format!(
                "repository {url:?} is not supported: use file:///absolute/path"
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
        let relative = Path::new(artifact_path);
        let safe = !artifact_path.is_empty()
            && relative
                .components()
                .all(|c| matches!(c, Component::Normal(_)));
        if !safe {
            return Err(AgentError::InvalidOrder(format!(
                "artifact path {artifact_path:?} is not a relative path inside the repository"
            )));
        }
        Ok(self.root.join(relative))
    }

    /// Reads and parses an artifact's manifest.
    pub fn read_manifest(&self, artifact_path: &str) -> AgentResult<ArtifactManifest> {
        let path = self.resolve(artifact_path)?.join(MANIFEST_FILE);
        let bytes = fs::read(&path).map_err(AgentError::io(format!(
            "cannot read {} (is the repository shared with the agent that took the backup?)",
            path.display()
        )))?;
        serde_json::from_slice(&bytes).map_err(|e| {
            AgentError::InvalidOrder(format!("manifest {} is not valid: {e}", path.display()))
        })
    }

    /// Removes every directory of `agent` that has no manifest (backups interrupted by a
    /// crash or kill) and returns what it removed. Runs before the agent takes orders.
    pub fn cleanup_incomplete(&self, agent: &str) -> AgentResult<Vec<PathBuf>> {
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
            if path.is_dir() && !path.join(MANIFEST_FILE).exists() {
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

fn fsync_dir(dir: &Path) -> AgentResult<()> {
    File::open(dir)
        .and_then(|d| d.sync_all())
        .map_err(AgentError::io(format!("cannot fsync {}", dir.display())))
}

#[cfg(test)]
mod tests {
    use super::*;

    fn repo(dir: &Path) -> Repository {
        let url = Url::from_file_path(dir).expect("absolute path");
        Repository::from_url(url.as_str()).expect("file url")
    }

    #[test]
    fn only_file_urls_with_absolute_paths() {
        let ok = Repository::from_url("file:///var/lib/warden/repo").expect("valid");
        assert_eq!(ok.root(), Path::new("/var/lib/warden/repo"));
        let spaced = Repository::from_url("file:///tmp/my%20repo").expect("valid");
        assert_eq!(spaced.root(), Path::new("/tmp/my repo"));
        for bad in [
            "s3://bucket/warden",
            "/var/lib/warden",
            "file://host/repo",
            "repo",
        ] {
            let err = Repository::from_url(bad).expect_err(bad).to_string();
            assert!(err.contains(bad), "{err}");
            assert!(err.contains("file:///absolute/path"), "{err}");
        }
    }

    #[test]
    fn artifact_paths_stay_inside_the_repository() {
        let r = Repository::from_url("file:///repo").expect("valid");
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

    #[test]
    fn artifact_dir_is_created_once() {
        let tmp = tempfile::tempdir().expect("tempdir");
        let r = repo(tmp.path());
        r.create_artifact_dir("db1/a").expect("first");
        assert!(r.create_artifact_dir("db1/a").is_err());
    }
}
