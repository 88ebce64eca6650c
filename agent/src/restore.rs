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
                validate_database_name(&params.new_name)?;
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
                let side = format!("warden_restore_{short_id}");
                let old_name = format!("warden_old_{short_id}");
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
