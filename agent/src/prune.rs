//! The prune executor: removes the artifacts that retention expired from the repository.
//!
//! It needs no database connection, so it also runs for a database this agent no longer
//! serves. Every entry is removed on its own: one bad entry fails the order but does not
//! keep the others, and a retried prune finds the removed ones gone, which counts as done.

use tokio_util::sync::CancellationToken;
use warden_proto::v1;

use crate::error::{AgentError, AgentResult};
use crate::orders::cancellable;
use crate::repository::{Removal, Repository};

/// Removes every artifact the order lists and returns their ids; fails naming each one that
/// could not be removed, and why, once all entries were tried.
pub async fn run(
    repository: &Repository,
    order_id: &str,
    params: &v1::PruneParams,
    cancel: &CancellationToken,
) -> AgentResult<v1::PruneOutcome> {
    // An unmounted share must not read as "every artifact already gone".
    repository.check_root().await?;
    let mut removed = Vec::new();
    let mut failed = Vec::new();
    for artifact in &params.artifacts {
        if cancel.is_cancelled() {
            return Err(AgentError::Cancelled);
        }
        // A cancel stops before the next entry, or between the deletions of one, and a retry
        // finishes what was left.
        let removal = cancellable(
            cancel,
            repository.remove_artifact(&artifact.artifact_id, &artifact.artifact_path),
        )
        .await;
        match removal {
            Ok(removal) => {
                tracing::info!(
                    %order_id,
                    artifact_id = %artifact.artifact_id,
                    already_gone = removal == Removal::AlreadyGone,
                    "artifact removed"
                );
                removed.push(artifact.artifact_id.clone());
            }
            Err(AgentError::Cancelled) => return Err(AgentError::Cancelled),
            Err(error) => {
                tracing::warn!(%order_id, artifact_id = %artifact.artifact_id, %error, "cannot remove artifact");
                failed.push((artifact.artifact_id.clone(), error.to_string()));
            }
        }
    }
    if failed.is_empty() {
        Ok(v1::PruneOutcome {
            removed_artifact_ids: removed,
        })
    } else {
        Err(AgentError::PruneIncomplete { failed, removed })
    }
}

#[cfg(test)]
mod tests {
    use std::fs;
    use std::path::Path;

    use url::Url;
    use warden_shared::manifest::{DUMP_FILE, MANIFEST_FILE};

    use super::*;
    use crate::repository::{LocalRepository, write_file_atomically};

    fn repo(dir: &Path) -> Repository {
        let url = Url::from_file_path(dir).expect("absolute path");
        Repository::Local(LocalRepository::from_url(url.as_str()).expect("file url"))
    }

    fn artifact(r: &Repository, path: &str) -> std::path::PathBuf {
        let Repository::Local(local) = r else {
            panic!("a file repository")
        };
        let dir = local.create_artifact_dir(path).expect("create");
        write_file_atomically(&dir, DUMP_FILE, b"dump").expect("dump");
        write_file_atomically(&dir, MANIFEST_FILE, b"{}").expect("manifest");
        dir
    }

    fn entry(id: &str, path: &str) -> v1::PruneArtifact {
        v1::PruneArtifact {
            artifact_id: id.to_owned(),
            artifact_path: path.to_owned(),
        }
    }

    #[tokio::test]
    async fn removes_listed_artifacts_and_a_retry_succeeds() {
        let tmp = tempfile::tempdir().expect("tempdir");
        let r = repo(tmp.path());
        let old = artifact(&r, "db1/a1");
        let older = artifact(&r, "db1/a2");
        let kept = artifact(&r, "db1/a3");
        let params = v1::PruneParams {
            artifacts: vec![entry("a1", "db1/a1"), entry("a2", "db1/a2")],
        };
        let cancel = CancellationToken::new();

        let outcome = run(&r, "o1", &params, &cancel).await.expect("prune");
        assert_eq!(outcome.removed_artifact_ids, ["a1", "a2"]);
        assert!(!old.exists() && !older.exists());
        assert!(kept.join(MANIFEST_FILE).exists());
        let leftovers: Vec<_> = fs::read_dir(tmp.path().join("db1"))
            .expect("list")
            .map(|e| e.expect("entry").file_name())
            .collect();
        assert_eq!(leftovers, ["a3"], "no .deleting directory is left behind");

        let again = run(&r, "o1", &params, &cancel)
            .await
            .expect("retried prune");
        assert_eq!(again.removed_artifact_ids, ["a1", "a2"]);
        assert!(kept.join(MANIFEST_FILE).exists());
    }

    #[tokio::test]
    async fn bad_entries_fail_the_order_but_the_good_ones_are_removed() {
        let tmp = tempfile::tempdir().expect("tempdir");
        let root = tmp.path().join("repo");
        fs::create_dir(&root).expect("root");
        let r = repo(&root);
        let good = artifact(&r, "db1/a1");
        let other = artifact(&r, "db1/a2");
        let outside = tmp.path().join("a3");
        fs::create_dir(&outside).expect("outside");
        let params = v1::PruneParams {
            artifacts: vec![
                entry("a1", "db1/a1"),
                entry("a3", "../a3"),
                entry("x9", "db1/a2"),
            ],
        };

        let error = run(&r, "o1", &params, &CancellationToken::new())
            .await
            .expect_err("bad entries")
            .to_string();
        assert!(
            error.starts_with("cannot remove 2 of 3 artifacts: a3 ("),
            "{error}"
        );
        assert!(error.contains("x9 (artifact path \"db1/a2\""), "{error}");
        assert!(
            error.contains("does not end with the artifact id"),
            "{error}"
        );
        assert!(error.ends_with("removed: a1"), "{error}");
        assert!(!good.exists());
        assert!(other.join(MANIFEST_FILE).exists());
        assert!(outside.exists());
    }

    #[tokio::test]
    async fn a_cancelled_prune_stops_before_the_next_entry() {
        let tmp = tempfile::tempdir().expect("tempdir");
        let r = repo(tmp.path());
        let dir = artifact(&r, "db1/a1");
        let cancel = CancellationToken::new();
        cancel.cancel();
        let params = v1::PruneParams {
            artifacts: vec![entry("a1", "db1/a1")],
        };
        let result = run(&r, "o1", &params, &cancel).await;
        assert!(matches!(result, Err(AgentError::Cancelled)), "{result:?}");
        assert!(dir.join(MANIFEST_FILE).exists());
    }
}
