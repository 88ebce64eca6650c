//! The restore executor: restores an artifact into a new database (see [`crate::copy`]),
//! and for `replace` swaps the verified copy in by renames.
//!
//! Nothing on the server changes until the dump's sha256 matches the catalog. A restore into
//! a new name leaves nothing behind when it fails. A replace never exposes a half-restored
//! database: the data goes into a side database first, and the original is only renamed
//! away once the copy is complete and verified; any failure before that point undoes the
//! renames and drops the side database, so the original stays as it was.

use std::time::Instant;

use sqlx::Connection;
use sqlx::postgres::PgConnection;
use tokio_util::sync::CancellationToken;
use warden_proto::v1;
use warden_shared::validate_database_name;

use crate::copy::{self, ArtifactRef, CopyPlan, InTheWay, phase};
use crate::drill::DRILL_PREFIX;
use crate::error::{AgentError, AgentResult};
use crate::orders::{AgentContext, OrderTarget, cancellable};
use crate::pg;
use crate::progress::ProgressReporter;

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
        into = %plan.copy.into,
        replace = plan.replace,
        "restore started"
    );
    let staged = copy::staging_file(&ctx.staging_dir, order_id);
    let mut created = None;
    let mut phases = Vec::new();

    let restored = cancellable(
        cancel,
        copy::restore_copy(
            ctx,
            &plan.copy,
            &ArtifactRef::from(params),
            &staged,
            progress,
            &mut created,
            &mut phases,
        ),
    )
    .await;
    copy::remove_staged(&staged).await;
    // The swap is a handful of quick statements that must not stop halfway, so a cancel
    // arriving now is too late.
    let result = match restored {
        Ok(restored) if plan.replace => {
            let started = Instant::now();
            let swapped = swap(&plan).await;
            if swapped.is_ok() {
                // The side database now carries the target's name.
                created = None;
            }
            copy::record(&mut phases, phase::SWAP, started);
            swapped.map(|()| restored)
        }
        other => other,
    };
    match result {
        Ok(restored) => {
            tracing::info!(
                %order_id,
                database = %target.db.label,
                tables_verified = restored.tables_verified,
                rows_verified = restored.rows_verified,
                "restore finished"
            );
            Ok(v1::RestoreOutcome {
                database: plan.target_name.clone(),
                tables_verified: restored.tables_verified,
                rows_verified: restored.rows_verified,
                phases,
            })
        }
        Err(error) => {
            if let Some(name) = created {
                match copy::drop_database(&plan.copy, &name).await {
                    Ok(()) => {
                        tracing::info!(database = %target.db.label, dropped = %name, "dropped the unfinished restore")
                    }
                    Err(error) => tracing::error!(
                        database = %target.db.label,
                        leftover = %name,
                        %error,
                        "cannot drop the unfinished restore; drop it by hand"
                    ),
                }
            }
            Err(error)
        }
    }
}

/// Prefix of the side database a replace restores into.
const SIDE_PREFIX: &str = "warden_restore_";
/// Prefix of the name the original gets while a replace swaps.
const OLD_PREFIX: &str = "warden_old_";

/// Prefixes of the databases Warden names itself, which a restore's new name may not take:
/// the agent drops drill scratch databases it finds at startup, and a replace refuses to run
/// (or renames over) its side and old names.
const RESERVED_PREFIXES: [(&str, &str); 3] = [
    (DRILL_PREFIX, "drill scratch databases"),
    (SIDE_PREFIX, "the side databases of replace restores"),
    (OLD_PREFIX, "the databases a replace restore swaps out"),
];

/// Refuses a new name that starts with a prefix of [`RESERVED_PREFIXES`], in any case.
fn check_new_name(name: &str) -> AgentResult<()> {
    validate_database_name(name)?;
    let lower = name.to_ascii_lowercase();
    match RESERVED_PREFIXES
        .iter()
        .find(|(prefix, _)| lower.starts_with(prefix))
    {
        Some((prefix, what)) => Err(AgentError::InvalidOrder(format!(
            "cannot restore into {name:?}: the prefix {prefix:?} is reserved for {what}, which \
             Warden creates and drops itself; choose another --new-name"
        ))),
        None => Ok(()),
    }
}

/// Names and connections of one restore, fixed before anything runs.
struct RestorePlan {
    /// The copy: into the new name, or into the side database of a replace.
    copy: CopyPlan,
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
        match (params.new_name.is_empty(), params.replace) {
            (false, false) => {
                check_new_name(&params.new_name)?;
                let refuse = vec![(params.new_name.clone(), "choose another --new-name")];
                Ok(Self {
                    copy: CopyPlan::new(
                        ctx,
                        target,
                        params.new_name.clone(),
                        InTheWay::Refuse(refuse),
                    ),
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
                // Side and old names carry the artifact id's tail, so a leftover is
                // recognisable.
                let short_id = copy::short_artifact_id(&params.artifact_id);
                let side = format!("{SIDE_PREFIX}{short_id}");
                let old_name = format!("{OLD_PREFIX}{short_id}");
                let refuse = vec![
                    (
                        side.clone(),
                        "an interrupted restore left it behind; drop it and try again",
                    ),
                    // The swap's undo reads the names on the server, which only works if the
                    // old name is free before the swap starts.
                    (
                        old_name.clone(),
                        "an interrupted replace left it behind; check whether it holds data \
                         you need, drop it and try again",
                    ),
                ];
                Ok(Self {
                    copy: CopyPlan::new(ctx, target, side, InTheWay::Refuse(refuse)),
                    target_name: name,
                    old_name,
                    replace: true,
                })
            }
            _ => Err(AgentError::InvalidOrder(
                "a restore needs exactly one of new_name and replace".to_owned(),
            )),
        }
    }
}

/// Puts the verified side database in place of the target: the target stops accepting
/// connections, its sessions end, it is renamed away, the side database takes its name and
/// owner, and the old one is dropped. Failing before the end undoes the renames.
async fn swap(plan: &RestorePlan) -> AgentResult<()> {
    let m = &plan.copy.maintenance;
    let mut conn = m.connect().await?;
    let original = pg::database_settings(m, &mut conn, &plan.target_name).await?;
    let (target, side, old) = (&plan.target_name, &plan.copy.into, &plan.old_name);
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
        tracing::warn!(database = %plan.copy.target.label, old = %old, %error, "cannot drop the replaced database; drop it by hand");
    }
    let _ = conn.close().await;
    Ok(())
}

/// Restores the names the swap changed, judging from what exists on the server (a failed
/// statement may or may not have taken effect), and the target's connection setting.
async fn undo_swap(plan: &RestorePlan, allow_connections: bool) {
    let m = &plan.copy.maintenance;
    let (target, side, old) = (&plan.target_name, &plan.copy.into, &plan.old_name);
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
            tracing::info!(database = %plan.copy.target.label, "replace undone, original database kept")
        }
        Err(error) => tracing::error!(
            database = %plan.copy.target.label,
            old = %old,
            %error,
            "cannot undo the replace; the original may be named as in `old`"
        ),
    }
}

#[cfg(test)]
mod tests {
    use std::path::Path;

    use super::*;
    use crate::drill;
    use crate::orders::tests::context;

    fn restore_into(new_name: &str) -> v1::RestoreParams {
        v1::RestoreParams {
            artifact_id: "0191f3a2-7c4b-7d2e-9a1b-4c5d6e7f8a9b".to_owned(),
            artifact_path: "db1/0191f3a2-7c4b-7d2e-9a1b-4c5d6e7f8a9b".to_owned(),
            sha256: "ab".repeat(32),
            new_name: new_name.to_owned(),
            replace: false,
        }
    }

    #[test]
    fn a_new_name_may_not_take_a_reserved_prefix() {
        let ctx = context(Path::new("/repo"));
        let target = ctx.target("app").expect("configured");
        let scratch = drill::scratch_database_name("db1", "0191f3a2-7c4b-7d2e-9a1b-4c5d6e7f8a9b");
        for (name, prefix) in [
            (scratch.as_str(), "warden_drill_"),
            ("warden_drill_notes", "warden_drill_"),
            ("Warden_Drill_x", "warden_drill_"),
            ("warden_restore_4c5d6e7f8a9b", "warden_restore_"),
            ("warden_old_4c5d6e7f8a9b", "warden_old_"),
        ] {
            let error = RestorePlan::new(&ctx, &target, &restore_into(name))
                .err()
                .unwrap_or_else(|| panic!("{name} was accepted"));
            assert!(matches!(error, AgentError::InvalidOrder(_)), "{error:?}");
            let text = error.to_string();
            assert!(
                text.contains(&format!("the prefix {prefix:?} is reserved")),
                "{text}"
            );
            assert!(text.contains(&format!("{name:?}")), "{text}");
        }
        for name in ["app copy", "warden_drill", "my_warden_drill_x", "warden"] {
            let plan = RestorePlan::new(&ctx, &target, &restore_into(name)).expect(name);
            assert_eq!(plan.copy.into, name);
            assert!(!plan.replace);
        }
        // A replace names its side and old databases with the reserved prefixes itself.
        let replace = v1::RestoreParams {
            new_name: String::new(),
            replace: true,
            ..restore_into("")
        };
        let plan = RestorePlan::new(&ctx, &target, &replace).expect("replace");
        assert_eq!(plan.copy.into, "warden_restore_4c5d6e7f8a9b");
        assert_eq!(plan.old_name, "warden_old_4c5d6e7f8a9b");
    }
}
