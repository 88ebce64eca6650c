//! Runs the real `warden` binary against a scripted in-process AdminService on loopback.
//!
//! The fake answers like the coordinator would (orders that progress, refusals with
//! messages), so these tests pin what scripts rely on: exit codes, JSON shapes, the actor
//! metadata, the refusal to replace without confirmation, the policy commands (windows,
//! apply, export, prune), the recovery commands (drill, rto, status) and migrations (migrate,
//! migrate status, rollouts).

use std::collections::HashMap;
use std::process::Stdio;
use std::sync::{Arc, Mutex, MutexGuard};

use serde_json::Value;
use tokio::net::TcpListener;
use tokio_stream::wrappers::TcpListenerStream;
use tonic::{Request, Response, Status};
use warden_proto::v1;
use warden_proto::v1::admin_service_server::{AdminService, AdminServiceServer};
use warden_proto::v1::order_result::Outcome as ResultOutcome;

const CREATED_MS: i64 = 1_795_728_605_250;
/// Every scripted order ends within a few polls; a run this long is stuck.
const RUN_LIMIT: std::time::Duration = std::time::Duration::from_secs(60);

const HELD_UNTIL_MS: i64 = CREATED_MS + 3 * 3_600_000;
const HELD_REASON: &str = "no maintenance window is open for pg1/shop";

#[derive(Default)]
struct Recorded {
    actors: Vec<String>,
    /// The `authorization` metadata of each call.
    authorizations: Vec<String>,
    tokens_created: Vec<v1::CreateTokenRequest>,
    polls: HashMap<String, usize>,
    restores: Vec<v1::SubmitRestoreRequest>,
    policies: Vec<v1::ApplyPolicyRequest>,
    windows_added: Vec<v1::AddWindowRequest>,
    windows_removed: Vec<v1::RemoveWindowRequest>,
    next_windows: Vec<v1::NextWindowRequest>,
    prunes: Vec<v1::PruneRequest>,
    drills: Vec<v1::SubmitDrillRequest>,
    migrates: Vec<v1::SubmitMigrateRequest>,
    rollouts: Vec<v1::SubmitRolloutRequest>,
}

/// What the fake records, shared by the service and the test that started it.
#[derive(Clone, Default)]
struct Log(Arc<Mutex<Recorded>>);

impl Log {
    fn lock(&self) -> MutexGuard<'_, Recorded> {
        self.0.lock().expect("lock")
    }
}

struct Fake {
    /// A fleet in trouble: its audit chain is broken and a database breaches its RTO.
    troubled: bool,
    recorded: Log,
}

impl Fake {
    fn record<T>(&self, request: &Request<T>) {
        let actor = request
            .metadata()
            .get("x-warden-actor")
            .and_then(|v| v.to_str().ok())
            .unwrap_or("<none>")
            .to_owned();
        let authorization = request
            .metadata()
            .get("authorization")
            .and_then(|v| v.to_str().ok())
            .unwrap_or("<none>")
            .to_owned();
        let mut recorded = self.recorded.lock();
        recorded.actors.push(actor);
        recorded.authorizations.push(authorization);
    }

    /// Answers a poll of the order or rollout `id` (`what`) by its script: one step further
    /// each time, the last one stays.
    fn poll<T: Clone>(
        &self,
        what: &str,
        id: String,
        script: fn(&str) -> Option<Vec<T>>,
    ) -> Result<Response<T>, Status> {
        let steps =
            script(&id).ok_or_else(|| Status::not_found(format!("no {what} with id {id}")))?;
        let mut recorded = self.recorded.lock();
        let polls = recorded.polls.entry(id).or_default();
        let step = steps[(*polls).min(steps.len() - 1)].clone();
        *polls += 1;
        Ok(Response::new(step))
    }
}

/// Answers a submit with the first step of the script it starts.
fn submitted<T>(steps: Option<Vec<T>>) -> Result<Response<T>, Status> {
    steps
        .and_then(|s| s.into_iter().next())
        .map(Response::new)
        .ok_or_else(|| Status::internal("no script"))
}

/// The coordinator's refusal of a database it does not know.
fn unknown_database(name: &str) -> Status {
    Status::not_found(format!("unknown database {name}: see warden databases"))
}

fn order(id: &str, kind: v1::OrderKind, database: &str, state: v1::OrderState) -> v1::Order {
    v1::Order {
        id: id.into(),
        kind: kind.into(),
        database: database.into(),
        state: state.into(),
        requested_by: "tester@fake".into(),
        attempts: 1,
        created_unix_ms: CREATED_MS,
        updated_unix_ms: CREATED_MS,
        ..Default::default()
    }
}

fn finished(mut order: v1::Order, outcome: Option<ResultOutcome>, error: &str) -> v1::Order {
    order.started_unix_ms = CREATED_MS + 100;
    order.finished_unix_ms = CREATED_MS + 2100;
    order.error = error.into();
    order.result = Some(v1::OrderResult {
        order_id: order.id.clone(),
        success: error.is_empty(),
        error: error.into(),
        cancelled: false,
        artifact_corrupt: false,
        outcome,
    });
    order
}

fn running(mut order: v1::Order, bytes: u64) -> v1::Order {
    order.state = v1::OrderState::Running.into();
    order.phase = "dump".into();
    order.progress_bytes = bytes;
    order.progress_bytes_per_sec = 1024.0 * 1024.0;
    order
}

/// A drill of artifact a-1.
fn drill(id: &str, database: &str, state: v1::OrderState) -> v1::Order {
    v1::Order {
        spec: Some(v1::OrderSpec {
            params: Some(v1::order_spec::Params::Drill(v1::DrillParams {
                artifact_id: "a-1".into(),
                artifact_path: "pg1/shop/a-1".into(),
                sha256: "ab".repeat(32),
                checks: vec![],
                source_database: String::new(),
            })),
        }),
        ..order(id, v1::OrderKind::Drill, database, state)
    }
}

const CORRUPT_ERROR: &str =
    "sha256 of pg1/shop/a-1/dump.zst does not match the catalog: the artifact is corrupt";

fn health_report() -> v1::HealthReport {
    v1::HealthReport {
        connected: true,
        latency_ms: 3,
        server_version: "15.18".into(),
        database_size_bytes: 8 * 1024 * 1024,
        table_count: 3,
        connections_used: 7,
        connections_max: 100,
        in_recovery: true,
        uptime_seconds: 2 * 86_400 + 3 * 3600,
        replication_role: "standby".into(),
        replication_lag_ms: 1250,
        oldest_transaction_seconds: 300,
        wraparound_age: 150_000_000,
        repository_free_bytes: 10 * 1024 * 1024 * 1024,
        repository_total_bytes: 100 * 1024 * 1024 * 1024,
    }
}

fn held(mut order: v1::Order) -> v1::Order {
    order.state = v1::OrderState::Held.into();
    order.phase = HELD_REASON.into();
    order.held_until_unix_ms = HELD_UNTIL_MS;
    order.deadline_unix_ms = HELD_UNTIL_MS + 2 * 3_600_000;
    order.safety_backup_order_id = "o-safety".into();
    order
}

/// The states an order goes through, one per poll; the last one stays.
fn script(id: &str) -> Option<Vec<v1::Order>> {
    use v1::OrderKind::{Backup, Restore};
    use v1::OrderState::{Expired, Failed, Queued, Succeeded};
    let backup = |state| order(id, Backup, "pg1/shop", state);
    match id {
        "o-ok" => Some(vec![
            backup(Queued),
            running(backup(Queued), 1024 * 1024),
            running(backup(Queued), 3 * 1024 * 1024),
            finished(
                backup(Succeeded),
                Some(ResultOutcome::Backup(v1::BackupOutcome {
                    artifact_id: "a-1".into(),
                    artifact_path: "pg1/shop/a-1".into(),
                    manifest_json: "{}".into(),
                    verified: false,
                })),
                "",
            ),
        ]),
        "o-fail" => Some(vec![
            backup(Queued),
            running(backup(Queued), 4096),
            finished(
                backup(Failed),
                None,
                "pg_dump exited with status 1: permission denied for table secrets",
            ),
        ]),
        "o-restore" => Some(vec![
            order(id, Restore, "pg1/shop", Queued),
            finished(
                order(id, Restore, "pg1/shop", Succeeded),
                Some(ResultOutcome::Restore(v1::RestoreOutcome {
                    database: "pg1/shop".into(),
                    tables_verified: 3,
                    rows_verified: 950,
                    phases: vec![v1::PhaseTiming {
                        phase: "restore".into(),
                        millis: 1500,
                    }],
                })),
                "",
            ),
        ]),
        // A replacing restore held for its window, which stays held.
        "o-held" => Some(vec![held(order(id, Restore, "pg1/shop", Queued))]),
        "o-drill" => Some(vec![
            drill(id, "pg1/shop", Queued),
            {
                let mut restoring = running(drill(id, "pg1/shop", Queued), 100 * 1024);
                restoring.phase = "pg_restore".into();
                restoring
            },
            finished(
                drill(id, "pg1/shop", Succeeded),
                Some(ResultOutcome::Drill(v1::DrillOutcome {
                    scratch_database: "pg1/warden_drill_3f_a1".into(),
                    tables_verified: 3,
                    rows_verified: 950,
                    phases: [
                        ("fetch", 12),
                        ("verify_checksum", 30),
                        ("decompress", 80),
                        ("pg_restore", 1200),
                        ("verify_rows", 90),
                        ("checks", 88),
                        ("cleanup", 40),
                    ]
                    .into_iter()
                    .map(|(phase, millis)| v1::PhaseTiming {
                        phase: phase.into(),
                        millis,
                    })
                    .collect(),
                    checks: vec![v1::CheckResult {
                        name: "orders_have_customers".into(),
                        passed: true,
                        error: String::new(),
                    }],
                    restore_millis: 1500,
                    raw_bytes: 200 * 1024,
                })),
                "",
            ),
        ]),
        // The checksum proves the artifact corrupt before anything is restored.
        "o-drill-corrupt" => Some(vec![drill(id, "pg1/shop", Queued), {
            let mut failed = finished(drill(id, "pg1/shop", Failed), None, CORRUPT_ERROR);
            if let Some(result) = failed.result.as_mut() {
                result.artifact_corrupt = true;
            }
            failed
        }]),
        "o-health" => Some(vec![finished(
            order(id, v1::OrderKind::Health, "pg1/shop", Succeeded),
            Some(ResultOutcome::Health(health_report())),
            "",
        )]),
        // Held until the window closed before it could start.
        "o-expire" => Some(vec![
            held(order(id, Restore, "pg1/shop", Queued)),
            held(order(id, Restore, "pg1/shop", Queued)),
            {
                let mut expired = held(order(id, Restore, "pg1/shop", Queued));
                expired.state = Expired.into();
                expired.phase = String::new();
                expired.held_until_unix_ms = 0;
                expired.finished_unix_ms = HELD_UNTIL_MS;
                expired.error =
                    "maintenance window prod-sunday closed before the restore could start".into();
                expired
            },
        ]),
        _ => migrate_script(id),
    }
}

const PRE_MIGRATION: &str = "a-pre";
const MIGRATE_ERROR: &str = "0003_backfill.sql failed: ERROR: column \"emial\" does not exist";
const RESTORE_COMMAND: &str = "warden restore a-pre --replace --target pg1/broken --yes --reason 'undo failed migration o-migrate-fail'";
const COMMAND_OUTPUT: &str =
    "Migrating: 2026_11_01_create_users\nMigrated:  2026_11_01_create_users (12ms)\n";

/// A migrate order of the three files the tests write, or of a command.
fn migrate_order(id: &str, database: &str, state: v1::OrderState, status_only: bool) -> v1::Order {
    let file = |version: &str, name: &str| v1::MigrationFile {
        version: version.into(),
        name: name.into(),
        sha256: version.repeat(16),
        sql: "SELECT 1;".into(),
    };
    let source = if id == "o-migrate-cmd" {
        v1::migrate_params::Source::Command("artisan".into())
    } else {
        v1::migrate_params::Source::Sql(v1::SqlMigrations {
            files: vec![
                file("0001", "create_users"),
                file("0002", "add_email"),
                file("0003", "backfill"),
            ],
        })
    };
    v1::Order {
        spec: Some(v1::OrderSpec {
            params: Some(v1::order_spec::Params::Migrate(v1::MigrateParams {
                source: Some(source),
                status_only,
                on_check_failure: if status_only { "" } else { "stop" }.into(),
                ..Default::default()
            })),
        }),
        ..order(id, v1::OrderKind::Migrate, database, state)
    }
}

fn applied(version: &str, name: &str, duration_ms: u64) -> v1::AppliedMigration {
    v1::AppliedMigration {
        version: version.into(),
        name: name.into(),
        sha256: version.repeat(16),
        applied_unix_ms: CREATED_MS,
        duration_ms,
    }
}

fn pending(version: &str, name: &str) -> v1::MigrationRef {
    v1::MigrationRef {
        version: version.into(),
        name: name.into(),
    }
}

fn check(name: &str, error: &str) -> v1::CheckResult {
    v1::CheckResult {
        name: name.into(),
        passed: error.is_empty(),
        error: error.into(),
    }
}

fn phases(timings: &[(&str, u64)]) -> Vec<v1::PhaseTiming> {
    timings
        .iter()
        .map(|(phase, millis)| v1::PhaseTiming {
            phase: (*phase).into(),
            millis: *millis,
        })
        .collect()
}

fn migrate_script(id: &str) -> Option<Vec<v1::Order>> {
    use v1::OrderState::{Failed, Queued, Succeeded};
    let migrate = |database: &str, state| migrate_order(id, database, state, false);
    let status = |database: &str, state| migrate_order(id, database, state, true);
    let outcome = |o: v1::MigrateOutcome| Some(ResultOutcome::Migrate(o));
    match id {
        "o-migrate" => Some(vec![
            migrate("pg1/shop", Queued),
            {
                let mut applying = running(migrate("pg1/shop", Queued), 0);
                applying.phase = "apply".into();
                applying
            },
            finished(
                migrate("pg1/shop", Succeeded),
                outcome(v1::MigrateOutcome {
                    applied: vec![
                        applied("0002", "add_email", 120),
                        applied("0003", "backfill", 3200),
                    ],
                    already_applied: vec![applied("0001", "create_users", 40)],
                    checks: vec![check("users_have_email", "")],
                    pre_migration_artifact_id: PRE_MIGRATION.into(),
                    phases: phases(&[("apply", 3320), ("checks", 15)]),
                    ..Default::default()
                }),
                "",
            ),
        ]),
        "o-migrate-fail" => Some(vec![
            migrate("pg1/broken", Queued),
            finished(
                migrate("pg1/broken", Failed),
                outcome(v1::MigrateOutcome {
                    applied: vec![applied("0002", "add_email", 120)],
                    already_applied: vec![applied("0001", "create_users", 40)],
                    pending: vec![pending("0003", "backfill")],
                    failed_version: "0003".into(),
                    pre_migration_artifact_id: PRE_MIGRATION.into(),
                    restore_command: RESTORE_COMMAND.into(),
                    phases: phases(&[("apply", 300)]),
                    ..Default::default()
                }),
                MIGRATE_ERROR,
            ),
        ]),
        // A post-check failed and the pre-migration backup was restored.
        "o-migrate-restored" => Some(vec![finished(
            migrate("pg1/checked", Failed),
            outcome(v1::MigrateOutcome {
                applied: vec![applied("0001", "create_users", 40)],
                checks: vec![check("users_have_email", "returned false")],
                pre_migration_artifact_id: PRE_MIGRATION.into(),
                restored: true,
                phases: phases(&[("apply", 40), ("checks", 10), ("restore", 900)]),
                ..Default::default()
            }),
            "post-migration check users_have_email returned false; restored a-pre",
        )]),
        "o-migrate-cmd" => Some(vec![finished(
            migrate("pg1/shop", Succeeded),
            outcome(v1::MigrateOutcome {
                pre_migration_artifact_id: PRE_MIGRATION.into(),
                command_output: COMMAND_OUTPUT.into(),
                phases: phases(&[("apply", 1200)]),
                ..Default::default()
            }),
            "",
        )]),
        "o-migrate-held" => Some(vec![held(migrate("pg1/held", Queued))]),
        // An applied file changed since: status exits 2.
        "o-status" => Some(vec![
            status("pg1/shop", Queued),
            finished(
                status("pg1/shop", Succeeded),
                outcome(v1::MigrateOutcome {
                    already_applied: vec![applied("0001", "create_users", 40)],
                    changed: vec![v1::ChangedMigration {
                        version: "0002".into(),
                        name: "add_email".into(),
                        recorded_sha256: "0002".repeat(16),
                        file_sha256: "ffee".repeat(16),
                    }],
                    pending: vec![pending("0003", "backfill")],
                    unknown: vec![applied("0000", "legacy", 5)],
                    ..Default::default()
                }),
                "",
            ),
        ]),
        "o-status-clean" => Some(vec![finished(
            status("pg1/clean", Succeeded),
            outcome(v1::MigrateOutcome {
                already_applied: vec![
                    applied("0001", "create_users", 40),
                    applied("0002", "add_email", 120),
                ],
                pending: vec![pending("0003", "backfill")],
                ..Default::default()
            }),
            "",
        )]),
        _ => None,
    }
}

fn target(database: &str, wave: u32, state: &str, order_id: &str) -> v1::RolloutTarget {
    let done = state == "succeeded";
    v1::RolloutTarget {
        database: database.into(),
        wave,
        state: state.into(),
        order_id: order_id.into(),
        pre_migration_artifact_id: if done { PRE_MIGRATION } else { "" }.into(),
        applied: if done {
            vec!["0002".into(), "0003".into()]
        } else {
            vec![]
        },
        error: String::new(),
    }
}

fn rollout(id: &str, state: &str, wave: u32, targets: Vec<v1::RolloutTarget>) -> v1::Rollout {
    let finished = state != "running";
    v1::Rollout {
        id: id.into(),
        state: state.into(),
        selector: "env=prod".into(),
        waves: "1,100%".into(),
        requested_by: "tester@fake".into(),
        reason: "release 42".into(),
        created_unix_ms: CREATED_MS,
        finished_unix_ms: if finished { CREATED_MS + 60_000 } else { 0 },
        current_wave: wave,
        wave_count: 2,
        error: String::new(),
        migrations: vec![
            pending("0001", "create_users"),
            pending("0002", "add_email"),
            pending("0003", "backfill"),
        ],
        command: String::new(),
        targets,
    }
}

/// The states a rollout goes through, one per poll; the last one stays.
fn rollout_script(id: &str) -> Option<Vec<v1::Rollout>> {
    // pg1/shop goes in wave 1, pg2/shop and pg3/shop in wave 2; each has its order once its wave
    // has started.
    let r1 = |state: &str, wave: u32, states: [&str; 3]| {
        let databases = [
            ("pg1/shop", 1, "o-r1"),
            ("pg2/shop", 2, "o-r2"),
            ("pg3/shop", 2, "o-r3"),
        ];
        let targets = databases
            .into_iter()
            .zip(states)
            .map(|((database, wave, order_id), state)| {
                let order_id = if state == "waiting" { "" } else { order_id };
                target(database, wave, state, order_id)
            })
            .collect();
        rollout(id, state, wave, targets)
    };
    match id {
        "r-1" => Some(vec![
            r1("running", 1, ["running", "waiting", "waiting"]),
            r1("running", 2, ["succeeded", "running", "held"]),
            r1("succeeded", 2, ["succeeded", "succeeded", "succeeded"]),
        ]),
        "r-halt" => Some(vec![
            rollout(
                id,
                "running",
                1,
                vec![
                    target("pg1/broken", 1, "running", "o-migrate-fail"),
                    target("pg2/shop", 2, "waiting", ""),
                ],
            ),
            {
                let mut failed = target("pg1/broken", 1, "failed", "o-migrate-fail");
                failed.error = MIGRATE_ERROR.into();
                failed.applied = vec!["0002".into()];
                failed.pre_migration_artifact_id = PRE_MIGRATION.into();
                let mut halted = rollout(
                    id,
                    "halted",
                    1,
                    vec![failed, target("pg2/shop", 2, "skipped", "")],
                );
                halted.error =
                    "pg1/broken failed in wave 1: the rollout stopped before wave 2".into();
                halted
            },
        ]),
        _ => None,
    }
}

fn artifact() -> v1::Artifact {
    v1::Artifact {
        id: "a-1".into(),
        database: "pg1/shop".into(),
        state: "complete".into(),
        trigger: "manual".into(),
        order_id: "o-ok".into(),
        created_unix_ms: CREATED_MS,
        size_bytes: 40_960,
        raw_bytes: 204_800,
        sha256: "ab".repeat(32),
        server_version: "15.18".into(),
        pg_dump_version: "pg_dump (PostgreSQL) 15.18".into(),
        path: "pg1/shop/a-1".into(),
        verified: true,
        manifest_json: r#"{"format":1,"tables":[]}"#.into(),
        drilled_unix_ms: CREATED_MS + 3_600_000,
        corrupt_reason: String::new(),
    }
}

fn corrupt_artifact() -> v1::Artifact {
    v1::Artifact {
        id: "a-0".into(),
        state: "corrupt".into(),
        created_unix_ms: CREATED_MS - 86_400_000,
        verified: false,
        drilled_unix_ms: 0,
        corrupt_reason: CORRUPT_ERROR.into(),
        ..artifact()
    }
}

/// The RTO report, worst first; pg1/broken breaches its RPO in a troubled fleet.
fn rto_rows(troubled: bool) -> Vec<v1::RtoRow> {
    vec![
        v1::RtoRow {
            database: "pg1/broken".into(),
            tier: "critical".into(),
            rto_ms: 1_800_000,
            rpo_ms: 86_400_000,
            newest_backup_unix_ms: CREATED_MS - 26 * 3_600_000,
            newest_backup_age_ms: 26 * 3_600_000,
            status: if troubled { "breach" } else { "at_risk" }.into(),
            reasons: vec![
                "newest backup is 26h old, RPO 24h".into(),
                "never drilled: run `warden drill pg1/broken`".into(),
            ],
            ..Default::default()
        },
        v1::RtoRow {
            database: "pg1/shop".into(),
            tier: "standard".into(),
            rto_ms: 3_600_000,
            rpo_ms: 86_400_000,
            last_drill_unix_ms: CREATED_MS,
            last_drill_ms: 1500,
            last_drill_passed: true,
            last_drill_artifact_id: "a-1".into(),
            predicted_restore_ms: 1600,
            newest_backup_unix_ms: CREATED_MS,
            newest_backup_age_ms: 2 * 3_600_000,
            status: "ok".into(),
            reasons: vec![],
        },
    ]
}

#[tonic::async_trait]
impl AdminService for Fake {
    async fn create_token(
        &self,
        request: Request<v1::CreateTokenRequest>,
    ) -> Result<Response<v1::CreateTokenResponse>, Status> {
        self.record(&request);
        let request = request.into_inner();
        self.recorded.lock().tokens_created.push(request.clone());
        let enrollment = !request.agent.is_empty();
        Ok(Response::new(v1::CreateTokenResponse {
            token: Some(v1::Token {
                id: "t-1".into(),
                kind: if enrollment { "enrollment" } else { "operator" }.into(),
                name: if enrollment {
                    request.agent
                } else {
                    request.name
                },
                role: request.role,
                created_by: "operator:root".into(),
                created_unix_ms: CREATED_MS,
                expires_unix_ms: CREATED_MS + request.ttl_ms,
                used_unix_ms: 0,
                revoked_unix_ms: 0,
            }),
            secret: "wdn_op_s3cr3t".into(),
        }))
    }

    async fn list_tokens(
        &self,
        request: Request<v1::ListTokensRequest>,
    ) -> Result<Response<v1::ListTokensResponse>, Status> {
        self.record(&request);
        Ok(Response::new(v1::ListTokensResponse {
            tokens: vec![v1::Token {
                id: "t-1".into(),
                kind: "operator".into(),
                name: "alice".into(),
                role: "viewer".into(),
                created_by: "operator:root".into(),
                created_unix_ms: CREATED_MS,
                expires_unix_ms: CREATED_MS + 3_600_000,
                used_unix_ms: 0,
                revoked_unix_ms: CREATED_MS + 60_000,
            }],
        }))
    }

    async fn revoke_token(
        &self,
        request: Request<v1::RevokeTokenRequest>,
    ) -> Result<Response<v1::Token>, Status> {
        self.record(&request);
        Err(Status::not_found(format!(
            "no token {:?}: `warden tokens` lists them",
            request.into_inner().id
        )))
    }

    async fn revoke_agent(
        &self,
        request: Request<v1::RevokeAgentRequest>,
    ) -> Result<Response<v1::RevokeAgentResponse>, Status> {
        self.record(&request);
        Ok(Response::new(v1::RevokeAgentResponse {
            agent: request.into_inner().agent,
            certificates_revoked: 2,
        }))
    }

    async fn list_agents(
        &self,
        request: Request<v1::ListAgentsRequest>,
    ) -> Result<Response<v1::ListAgentsResponse>, Status> {
        self.record(&request);
        let agent = |name: &str, online| v1::Agent {
            name: name.into(),
            version: "0.1.0".into(),
            labels: HashMap::from([("env".into(), "demo".into())]),
            online,
            last_seen_unix_ms: CREATED_MS,
            database_count: 1,
            repository: "file:///repo".into(),
        };
        Ok(Response::new(v1::ListAgentsResponse {
            agents: vec![agent("pg1", true), agent("pg2", false)],
        }))
    }

    async fn list_databases(
        &self,
        request: Request<v1::ListDatabasesRequest>,
    ) -> Result<Response<v1::ListDatabasesResponse>, Status> {
        self.record(&request);
        Ok(Response::new(v1::ListDatabasesResponse {
            databases: vec![],
        }))
    }

    async fn submit_backup(
        &self,
        request: Request<v1::SubmitBackupRequest>,
    ) -> Result<Response<v1::Order>, Status> {
        self.record(&request);
        let id = match request.get_ref().database.as_str() {
            "pg1/shop" => "o-ok",
            "pg1/broken" => "o-fail",
            other => return Err(unknown_database(other)),
        };
        submitted(script(id))
    }

    async fn submit_restore(
        &self,
        request: Request<v1::SubmitRestoreRequest>,
    ) -> Result<Response<v1::Order>, Status> {
        self.record(&request);
        let request = request.into_inner();
        let id = if request.artifact_id == "a-held" {
            "o-expire"
        } else {
            "o-restore"
        };
        self.recorded.lock().restores.push(request);
        submitted(script(id))
    }

    async fn submit_health(
        &self,
        request: Request<v1::SubmitHealthRequest>,
    ) -> Result<Response<v1::Order>, Status> {
        self.record(&request);
        Err(Status::failed_precondition(
            "agent pg2 is offline: start it, then retry",
        ))
    }

    async fn get_order(
        &self,
        request: Request<v1::GetOrderRequest>,
    ) -> Result<Response<v1::Order>, Status> {
        self.record(&request);
        self.poll("order", request.into_inner().id, script)
    }

    async fn list_orders(
        &self,
        request: Request<v1::ListOrdersRequest>,
    ) -> Result<Response<v1::ListOrdersResponse>, Status> {
        self.record(&request);
        Ok(Response::new(v1::ListOrdersResponse { orders: vec![] }))
    }

    async fn cancel_order(
        &self,
        request: Request<v1::CancelOrderRequest>,
    ) -> Result<Response<v1::Order>, Status> {
        self.record(&request);
        Err(Status::failed_precondition(
            "order o-ok has already ended: nothing to cancel",
        ))
    }

    async fn list_artifacts(
        &self,
        request: Request<v1::ListArtifactsRequest>,
    ) -> Result<Response<v1::ListArtifactsResponse>, Status> {
        self.record(&request);
        let mut artifacts = vec![artifact()];
        if request.get_ref().include_expired {
            artifacts.push(corrupt_artifact());
        }
        Ok(Response::new(v1::ListArtifactsResponse { artifacts }))
    }

    async fn get_artifact(
        &self,
        request: Request<v1::GetArtifactRequest>,
    ) -> Result<Response<v1::Artifact>, Status> {
        self.record(&request);
        match request.get_ref().id.as_str() {
            "a-1" => Ok(Response::new(artifact())),
            other => Err(Status::not_found(format!("no artifact with id {other}"))),
        }
    }

    async fn list_audit(
        &self,
        request: Request<v1::ListAuditRequest>,
    ) -> Result<Response<v1::ListAuditResponse>, Status> {
        self.record(&request);
        Ok(Response::new(v1::ListAuditResponse { events: vec![] }))
    }

    async fn verify_audit(
        &self,
        request: Request<v1::VerifyAuditRequest>,
    ) -> Result<Response<v1::VerifyAuditResponse>, Status> {
        self.record(&request);
        Ok(Response::new(if self.troubled {
            v1::VerifyAuditResponse {
                ok: false,
                events_checked: 4,
                first_broken_seq: 4,
                problem: "hash does not match the event's contents".into(),
            }
        } else {
            v1::VerifyAuditResponse {
                ok: true,
                events_checked: 12,
                first_broken_seq: 0,
                problem: String::new(),
            }
        }))
    }

    async fn apply_policy(
        &self,
        request: Request<v1::ApplyPolicyRequest>,
    ) -> Result<Response<v1::ApplyPolicyResponse>, Status> {
        self.record(&request);
        let request = request.into_inner();
        self.recorded.lock().policies.push(request.clone());
        if request.toml.contains("Mars/Olympus") {
            return Err(Status::invalid_argument(
                "windows[0].timezone: unknown time zone \"Mars/Olympus\": use an IANA name such as Europe/Berlin",
            ));
        }
        let change = |op: &str, what: &str, name: &str, detail: &str| v1::PolicyChange {
            op: op.into(),
            what: what.into(),
            name: name.into(),
            detail: detail.into(),
        };
        Ok(Response::new(v1::ApplyPolicyResponse {
            changes: vec![
                change("added", "window", "prod-sunday", ""),
                change(
                    "changed",
                    "schedule",
                    "nightly",
                    "cron: 0 3 * * * -> 0 4 * * *",
                ),
                change("removed", "retention", "old", ""),
            ],
            version: if request.dry_run { 3 } else { 4 },
            applied: !request.dry_run,
        }))
    }

    async fn export_policy(
        &self,
        request: Request<v1::ExportPolicyRequest>,
    ) -> Result<Response<v1::ExportPolicyResponse>, Status> {
        self.record(&request);
        Ok(Response::new(v1::ExportPolicyResponse {
            toml: EXPORTED.into(),
            version: 3,
        }))
    }

    async fn list_windows(
        &self,
        request: Request<v1::ListWindowsRequest>,
    ) -> Result<Response<v1::ListWindowsResponse>, Status> {
        self.record(&request);
        Ok(Response::new(v1::ListWindowsResponse {
            windows: vec![
                v1::WindowInfo {
                    name: "prod-sunday".into(),
                    kind: "maintenance".into(),
                    selector: "env=prod".into(),
                    timezone: "Europe/Berlin".into(),
                    recurrence: "weekly sun 02:00-04:00".into(),
                    open_until_unix_ms: 0,
                    next_start_unix_ms: HELD_UNTIL_MS,
                    next_end_unix_ms: HELD_UNTIL_MS + 7_200_000,
                },
                v1::WindowInfo {
                    name: "xmas".into(),
                    kind: "freeze".into(),
                    selector: String::new(),
                    timezone: "UTC".into(),
                    recurrence: "once 2026-12-24T00:00 - 2026-12-27T00:00".into(),
                    open_until_unix_ms: 0,
                    next_start_unix_ms: 0,
                    next_end_unix_ms: 0,
                },
            ],
        }))
    }

    async fn add_window(
        &self,
        request: Request<v1::AddWindowRequest>,
    ) -> Result<Response<v1::ApplyPolicyResponse>, Status> {
        self.record(&request);
        let request = request.into_inner();
        let name = request.name.clone();
        self.recorded.lock().windows_added.push(request);
        Ok(Response::new(v1::ApplyPolicyResponse {
            changes: vec![v1::PolicyChange {
                op: "added".into(),
                what: "window".into(),
                name,
                detail: String::new(),
            }],
            version: 5,
            applied: true,
        }))
    }

    async fn remove_window(
        &self,
        request: Request<v1::RemoveWindowRequest>,
    ) -> Result<Response<v1::ApplyPolicyResponse>, Status> {
        self.record(&request);
        let request = request.into_inner();
        if request.name != "prod-sunday" {
            return Err(Status::not_found(format!(
                "no window named {}: see warden windows",
                request.name
            )));
        }
        self.recorded.lock().windows_removed.push(request);
        Ok(Response::new(v1::ApplyPolicyResponse {
            changes: vec![v1::PolicyChange {
                op: "removed".into(),
                what: "window".into(),
                name: "prod-sunday".into(),
                detail: String::new(),
            }],
            version: 6,
            applied: true,
        }))
    }

    async fn next_window(
        &self,
        request: Request<v1::NextWindowRequest>,
    ) -> Result<Response<v1::NextWindowResponse>, Status> {
        self.record(&request);
        let request = request.into_inner();
        let database = request.database.clone();
        self.recorded.lock().next_windows.push(request);
        Ok(Response::new(v1::NextWindowResponse {
            database,
            allowed_now: false,
            open_window: String::new(),
            open_until_unix_ms: 0,
            freeze_window: "release-freeze".into(),
            freeze_until_unix_ms: CREATED_MS + 3_600_000,
            next_window: "prod-sunday".into(),
            next_start_unix_ms: HELD_UNTIL_MS,
            next_end_unix_ms: HELD_UNTIL_MS + 7_200_000,
            labels: HashMap::from([("env".into(), "prod".into())]),
        }))
    }

    async fn prune(
        &self,
        request: Request<v1::PruneRequest>,
    ) -> Result<Response<v1::PruneResponse>, Status> {
        self.record(&request);
        let request = request.into_inner();
        let dry_run = request.dry_run;
        self.recorded.lock().prunes.push(request);
        let decision = |id: &str, created: i64, prune: bool, why: &str| v1::PruneDecision {
            artifact_id: id.into(),
            database: "pg1/shop".into(),
            created_unix_ms: created,
            size_bytes: 40_960,
            prune,
            why: why.into(),
        };
        Ok(Response::new(v1::PruneResponse {
            decisions: vec![
                decision(
                    "a-old",
                    CREATED_MS - 90 * 86_400_000,
                    true,
                    "kept by no rule (daily 7, weekly 4)",
                ),
                decision("a-1", CREATED_MS, false, "daily: newest of 2026-11-26"),
            ],
            order_ids: if dry_run {
                vec![]
            } else {
                vec!["o-prune".into()]
            },
        }))
    }

    async fn submit_drill(
        &self,
        request: Request<v1::SubmitDrillRequest>,
    ) -> Result<Response<v1::Order>, Status> {
        self.record(&request);
        let request = request.into_inner();
        let id = match request.database.as_str() {
            "pg1/shop" => "o-drill",
            "pg1/corrupt" => "o-drill-corrupt",
            other => return Err(unknown_database(other)),
        };
        self.recorded.lock().drills.push(request);
        submitted(script(id))
    }

    async fn rto_report(
        &self,
        request: Request<v1::RtoReportRequest>,
    ) -> Result<Response<v1::RtoReportResponse>, Status> {
        self.record(&request);
        Ok(Response::new(v1::RtoReportResponse {
            rows: rto_rows(self.troubled),
            generated_unix_ms: CREATED_MS,
        }))
    }

    async fn fleet_status(
        &self,
        request: Request<v1::FleetStatusRequest>,
    ) -> Result<Response<v1::FleetStatusResponse>, Status> {
        self.record(&request);
        let database =
            |name: &str, online, health: &str, reasons: &[&str], rto: &str| v1::DatabaseStatus {
                database: name.into(),
                agent_online: online,
                health: health.into(),
                health_reasons: reasons.iter().map(|r| (*r).to_owned()).collect(),
                report: online.then(health_report),
                health_unix_ms: if online { CREATED_MS } else { 0 },
                newest_backup_unix_ms: CREATED_MS,
                rto_status: rto.into(),
            };
        Ok(Response::new(v1::FleetStatusResponse {
            agents_online: 1,
            agents_total: 2,
            databases: vec![
                database(
                    "pg2/inventory",
                    false,
                    "down",
                    &["agent pg2 is offline"],
                    "unknown",
                ),
                database(
                    "pg1/broken",
                    true,
                    "degraded",
                    &["replication lag 1.2s", "oldest transaction 5m"],
                    "breach",
                ),
                database("pg1/shop", true, "healthy", &[], "ok"),
            ],
            generated_unix_ms: CREATED_MS,
            repositories: vec![
                v1::AgentRepository {
                    agent: "pg1".into(),
                    repository: "s3://backups/warden".into(),
                    agent_online: true,
                    health: Some(v1::RepositoryHealth {
                        ok: false,
                        error: "cannot write s3://backups/warden/.warden-probe/pg1/x: \
                                SignatureDoesNotMatch"
                            .into(),
                        probe_ms: 0,
                        checked_unix_ms: CREATED_MS,
                    }),
                },
                v1::AgentRepository {
                    agent: "pg2".into(),
                    repository: "file:///var/lib/warden/repo".into(),
                    agent_online: false,
                    health: Some(v1::RepositoryHealth {
                        ok: true,
                        error: String::new(),
                        probe_ms: 4,
                        checked_unix_ms: CREATED_MS,
                    }),
                },
            ],
        }))
    }

    async fn submit_migrate(
        &self,
        request: Request<v1::SubmitMigrateRequest>,
    ) -> Result<Response<v1::Order>, Status> {
        self.record(&request);
        let request = request.into_inner();
        let command = matches!(
            request.migration.as_ref().and_then(|m| m.source.as_ref()),
            Some(v1::migration_request::Source::Command(_))
        );
        let id = match (request.database.as_str(), request.status_only, command) {
            ("pg1/shop", true, _) => "o-status",
            ("pg1/clean", true, _) => "o-status-clean",
            ("pg1/shop", false, true) => "o-migrate-cmd",
            ("pg1/shop", false, false) => "o-migrate",
            ("pg1/broken", false, _) => "o-migrate-fail",
            ("pg1/checked", false, _) => "o-migrate-restored",
            ("pg1/held", false, _) => "o-migrate-held",
            (other, _, _) => return Err(unknown_database(other)),
        };
        self.recorded.lock().migrates.push(request);
        submitted(script(id))
    }

    async fn submit_rollout(
        &self,
        request: Request<v1::SubmitRolloutRequest>,
    ) -> Result<Response<v1::Rollout>, Status> {
        self.record(&request);
        let request = request.into_inner();
        let id = match request.selector.as_str() {
            "env=prod" => "r-1",
            "env=broken" => "r-halt",
            other => {
                return Err(Status::failed_precondition(format!(
                    "selector {other:?} selects no database: see warden databases"
                )));
            }
        };
        self.recorded.lock().rollouts.push(request);
        submitted(rollout_script(id))
    }

    async fn get_rollout(
        &self,
        request: Request<v1::GetRolloutRequest>,
    ) -> Result<Response<v1::Rollout>, Status> {
        self.record(&request);
        self.poll("rollout", request.into_inner().id, rollout_script)
    }

    async fn list_rollouts(
        &self,
        request: Request<v1::ListRolloutsRequest>,
    ) -> Result<Response<v1::ListRolloutsResponse>, Status> {
        self.record(&request);
        let last = |id: &str| rollout_script(id).and_then(|steps| steps.last().cloned());
        Ok(Response::new(v1::ListRolloutsResponse {
            rollouts: ["r-halt", "r-1"].into_iter().filter_map(last).collect(),
        }))
    }
}

const EXPORTED: &str = "# fleet policy, version 3\n[[window]]\nname = \"prod-sunday\"\n";

struct Server {
    url: String,
    recorded: Log,
}

impl Server {
    /// How often the CLI polled order or rollout `id`.
    fn polls(&self, id: &str) -> usize {
        self.recorded.lock().polls.get(id).copied().unwrap_or(0)
    }
}

/// Starts the fake; `troubled` breaks its audit chain and has a database breach its RTO.
async fn start(troubled: bool) -> Server {
    let listener = TcpListener::bind("127.0.0.1:0").await.expect("bind");
    let url = format!("http://{}", listener.local_addr().expect("local addr"));
    let recorded = Log::default();
    let fake = Fake {
        troubled,
        recorded: recorded.clone(),
    };
    tokio::spawn(
        tonic::transport::Server::builder()
            .add_service(AdminServiceServer::new(fake))
            .serve_with_incoming(TcpListenerStream::new(listener)),
    );
    Server { url, recorded }
}

struct Run {
    code: i32,
    stdout: String,
    stderr: String,
}

impl Run {
    fn json(&self) -> Value {
        serde_json::from_str(&self.stdout)
            .unwrap_or_else(|err| panic!("stdout is not JSON ({err}): {}", self.stdout))
    }
}

async fn warden(url: &str, args: &[&str]) -> Run {
    warden_with(url, args, &[]).await
}

/// Runs the CLI with extra environment variables.
async fn warden_with(url: &str, args: &[&str], env: &[(&str, &str)]) -> Run {
    let run = tokio::process::Command::new(env!("CARGO_BIN_EXE_warden"))
        .args(args)
        .env_remove("WARDEN_TOKEN")
        .env_remove("WARDEN_TOKEN_FILE")
        .envs(env.iter().copied())
        .env("WARDEN_COORDINATOR", url)
        .env("USER", "tester")
        .stdin(Stdio::null())
        // A CLI that never ends (a follow loop that misses a final state) fails the test
        // instead of hanging the suite.
        .kill_on_drop(true)
        .output();
    let output = tokio::time::timeout(RUN_LIMIT, run)
        .await
        .unwrap_or_else(|_| panic!("warden {args:?} did not end within {RUN_LIMIT:?}"))
        .expect("run warden");
    Run {
        code: output.status.code().expect("exited"),
        stdout: String::from_utf8(output.stdout).expect("utf-8 stdout"),
        stderr: String::from_utf8(output.stderr).expect("utf-8 stderr"),
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn agents_as_json_with_the_actor_on_every_call() {
    let server = start(false).await;
    let run = warden(&server.url, &["agents", "--json"]).await;
    assert_eq!(run.code, 0, "{}", run.stderr);
    let agents = run.json();
    assert_eq!(agents.as_array().map(Vec::len), Some(2));
    assert_eq!(agents[0]["name"], "pg1");
    assert_eq!(agents[0]["labels"]["env"], "demo");
    assert_eq!(agents[1]["online"], false);
    assert_eq!(agents[0]["last_seen"], "2026-11-26T21:30:05.250Z");

    let actors = server.recorded.lock().actors.clone();
    assert_eq!(actors.len(), 1);
    assert!(actors[0].starts_with("tester@"), "{actors:?}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn tables_for_people() {
    let server = start(false).await;
    let run = warden(&server.url, &["artifacts"]).await;
    assert_eq!(run.code, 0, "{}", run.stderr);
    let mut lines = run.stdout.lines();
    assert!(
        lines.next().is_some_and(|l| l.starts_with("ID")),
        "{}",
        run.stdout
    );
    let row = lines.next().expect("one artifact row");
    assert_has_all(
        row,
        &[
            "a-1",
            "pg1/shop",
            "complete",
            "2026-11-26 21:30:05Z",
            "40.0 KiB",
        ],
    );
    let empty = warden(&server.url, &["databases"]).await;
    assert_eq!(empty.stdout.trim(), "no databases");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn backup_wait_follows_to_success() {
    let server = start(false).await;
    let run = warden(&server.url, &["backup", "pg1/shop", "--wait", "--json"]).await;
    assert_eq!(run.code, 0, "{}", run.stderr);
    let order = run.json();
    assert_eq!(order["state"], "succeeded");
    assert_eq!(order["kind"], "backup");
    assert_eq!(order["artifact_id"], "a-1");
    assert_eq!(order["restore"], Value::Null);
    assert_eq!(order["finished_at"], "2026-11-26T21:30:07.350Z");
    let polls = server.polls("o-ok");
    assert!(polls >= 3, "polled {polls} times");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn backup_without_wait_prints_the_submitted_order() {
    let server = start(false).await;
    let run = warden(&server.url, &["backup", "pg1/broken", "--json"]).await;
    assert_eq!(run.code, 0, "{}", run.stderr);
    assert_eq!(run.json()["state"], "queued");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn failed_work_exits_one_with_its_error() {
    let server = start(false).await;
    let run = warden(&server.url, &["backup", "pg1/broken", "--wait"]).await;
    assert_eq!(run.code, 1, "{}", run.stderr);
    assert!(run.stdout.contains("failed"), "{}", run.stdout);
    assert!(
        run.stdout.contains("permission denied for table secrets"),
        "{}",
        run.stdout
    );
    let watched = warden(&server.url, &["order", "o-fail", "--watch", "--json"]).await;
    assert_eq!(watched.code, 1);
    assert_eq!(
        watched.json()["error"],
        "pg_dump exited with status 1: permission denied for table secrets"
    );
    // Without --watch the order is only shown: success, whatever its state.
    let shown = warden(&server.url, &["order", "o-fail"]).await;
    assert_eq!(shown.code, 0, "{}", shown.stderr);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn refusals_exit_two_with_the_coordinators_message() {
    let server = start(false).await;
    let unknown = warden(&server.url, &["backup", "pg9/x"]).await;
    assert_eq!(unknown.code, 2);
    assert_eq!(
        unknown.stderr.trim(),
        "error: unknown database pg9/x: see warden databases"
    );
    let offline = warden(&server.url, &["health", "pg2/inventory", "--wait"]).await;
    assert_eq!(offline.code, 2);
    assert!(
        offline.stderr.contains("agent pg2 is offline"),
        "{}",
        offline.stderr
    );
    let missing = warden(&server.url, &["order", "nope"]).await;
    assert_eq!(missing.code, 2);
    assert_eq!(missing.stderr.trim(), "error: no order with id nope");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn replacing_needs_confirmation() {
    let server = start(false).await;
    let refused = warden(&server.url, &["restore", "a-1", "--replace"]).await;
    assert_eq!(refused.code, 2);
    assert_eq!(
        refused.stderr.trim(),
        "error: refusing to replace without confirmation: pass --yes"
    );
    assert!(server.recorded.lock().restores.is_empty());

    let run = warden(
        &server.url,
        &["restore", "a-1", "--replace", "--yes", "--wait", "--json"],
    )
    .await;
    assert_eq!(run.code, 0, "{}", run.stderr);
    let order = run.json();
    assert_eq!(order["restore"]["rows_verified"], 950);
    assert_eq!(order["restore"]["phases"][0]["phase"], "restore");
    let restores = server.recorded.lock().restores.clone();
    assert_eq!(restores.len(), 1);
    assert!(restores[0].replace && restores[0].new_name.is_empty());
    assert_eq!(restores[0].artifact_id, "a-1");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn restore_as_a_new_database() {
    let server = start(false).await;
    let run = warden(
        &server.url,
        &[
            "restore",
            "a-1",
            "--new-name",
            "shop copy",
            "--target",
            "pg2/inventory",
        ],
    )
    .await;
    assert_eq!(run.code, 0, "{}", run.stderr);
    let restores = server.recorded.lock().restores.clone();
    assert_eq!(restores[0].new_name, "shop copy");
    assert_eq!(restores[0].target, "pg2/inventory");
    assert!(!restores[0].replace);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn audit_verify_reports_intact_and_broken_chains() {
    let intact = start(false).await;
    let run = warden(&intact.url, &["audit", "verify"]).await;
    assert_eq!(run.code, 0);
    assert_eq!(run.stdout.trim(), "audit log intact: 12 events checked");

    let broken = start(true).await;
    let run = warden(&broken.url, &["audit", "verify"]).await;
    assert_eq!(run.code, 1);
    assert_eq!(
        run.stdout.trim(),
        "audit log BROKEN at seq 4: hash does not match the event's contents"
    );
    let run = warden(&broken.url, &["audit", "verify", "--json"]).await;
    assert_eq!(run.code, 1);
    assert_eq!(
        run.json(),
        serde_json::json!({"ok": false, "events_checked": 4, "first_broken_seq": 4,
                           "problem": "hash does not match the event's contents"})
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_absent_coordinator_is_named() {
    let port = std::net::TcpListener::bind("127.0.0.1:0")
        .and_then(|l| l.local_addr())
        .expect("bind a free port")
        .port();
    let url = format!("http://127.0.0.1:{port}");
    let run = warden(&url, &["agents"]).await;
    assert_eq!(run.code, 2);
    assert!(
        run.stderr
            .starts_with(&format!("error: cannot reach the coordinator at {url}: ")),
        "{}",
        run.stderr
    );
    assert!(
        run.stderr
            .contains("set --coordinator or WARDEN_COORDINATOR")
    );
}

/// Writes `text` to a file of its own under the test target's scratch directory.
fn scratch_file(name: &str, text: &str) -> std::path::PathBuf {
    let dir = std::path::Path::new(env!("CARGO_TARGET_TMPDIR")).join("warden-cli-tests");
    std::fs::create_dir_all(&dir).expect("create scratch directory");
    let path = dir.join(name);
    std::fs::write(&path, text).expect("write scratch file");
    path
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn emergency_restore_without_reason_is_refused_before_sending() {
    let server = start(false).await;
    for reason in [None, Some(""), Some("   ")] {
        let mut args = vec!["restore", "a-1", "--replace", "--yes", "--emergency"];
        if let Some(reason) = reason {
            args.extend(["--reason", reason]);
        }
        let run = warden(&server.url, &args).await;
        assert_eq!(run.code, 2, "{args:?}: {}", run.stderr);
        assert!(
            run.stderr
                .starts_with("error: --emergency needs --reason TEXT"),
            "{}",
            run.stderr
        );
        assert!(run.stdout.is_empty(), "{}", run.stdout);
    }
    let recorded = server.recorded.lock();
    assert!(recorded.restores.is_empty());
    assert!(
        recorded.actors.is_empty(),
        "nothing may be sent: {:?}",
        recorded.actors
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn skipping_the_safety_backup_needs_an_emergency() {
    let server = start(false).await;
    let run = warden(
        &server.url,
        &[
            "restore",
            "a-1",
            "--replace",
            "--yes",
            "--skip-safety-backup",
            "--reason",
            "hurry",
        ],
    )
    .await;
    assert_eq!(run.code, 2, "{}", run.stderr);
    assert!(
        run.stderr
            .starts_with("error: --skip-safety-backup only goes with --emergency"),
        "{}",
        run.stderr
    );
    let new_name = warden(
        &server.url,
        &[
            "restore",
            "a-1",
            "--new-name",
            "copy",
            "--emergency",
            "--reason",
            "hurry",
        ],
    )
    .await;
    assert_eq!(new_name.code, 2, "{}", new_name.stderr);
    assert!(
        new_name
            .stderr
            .starts_with("error: --emergency only goes with --replace"),
        "{}",
        new_name.stderr
    );
    assert!(server.recorded.lock().actors.is_empty());
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn emergency_restore_sends_its_flags() {
    let server = start(false).await;
    let run = warden(
        &server.url,
        &[
            "restore",
            "a-1",
            "--replace",
            "--yes",
            "--emergency",
            "--skip-safety-backup",
            "--no-wait",
            "--reason",
            "prod is corrupt",
            "--json",
        ],
    )
    .await;
    assert_eq!(run.code, 0, "{}", run.stderr);
    let restores = server.recorded.lock().restores.clone();
    assert_eq!(restores.len(), 1);
    let sent = &restores[0];
    assert!(sent.replace && sent.emergency && sent.skip_safety_backup && sent.no_wait);
    assert_eq!(sent.reason, "prod is corrupt");
    // A plain replace sends none of them.
    let plain = warden(&server.url, &["restore", "a-1", "--replace", "--yes"]).await;
    assert_eq!(plain.code, 0, "{}", plain.stderr);
    let restores = server.recorded.lock().restores.clone();
    assert!(!restores[1].emergency && !restores[1].skip_safety_backup && !restores[1].no_wait);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn held_order_shows_its_reason_and_when_it_may_start() {
    let server = start(false).await;
    let run = warden(&server.url, &["order", "o-held"]).await;
    assert_eq!(run.code, 0, "{}", run.stderr);
    let field = |name: &str| {
        run.stdout
            .lines()
            .find_map(|line| line.strip_prefix(name))
            .map(|rest| rest.trim().to_owned())
    };
    assert_eq!(field("STATE").as_deref(), Some("held"), "{}", run.stdout);
    let phase = field("PHASE").unwrap_or_default();
    assert!(
        phase.starts_with(&format!(
            "{HELD_REASON}; may start at 2026-11-27 00:30:05Z ("
        )),
        "{}",
        run.stdout
    );
    assert_eq!(
        field("SAFETY BACKUP").as_deref(),
        Some("o-safety"),
        "{}",
        run.stdout
    );
    assert!(
        field("DEADLINE").is_some_and(|d| d.starts_with("2026-11-27 02:30:05Z")),
        "{}",
        run.stdout
    );

    let json = warden(&server.url, &["order", "o-held", "--json"])
        .await
        .json();
    assert_eq!(json["state"], "held");
    assert_eq!(json["phase"], HELD_REASON);
    assert_eq!(json["held_until"], "2026-11-27T00:30:05.250Z");
    assert_eq!(json["deadline"], "2026-11-27T02:30:05.250Z");
    assert_eq!(json["safety_backup_order_id"], "o-safety");
    assert_eq!(json["emergency"], false);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn waiting_restore_follows_a_held_order_until_it_expires() {
    let server = start(false).await;
    let run = warden(
        &server.url,
        &["restore", "a-held", "--replace", "--yes", "--wait"],
    )
    .await;
    assert_eq!(run.code, 1, "{}", run.stderr);
    // Without a terminal the wait is explained on stderr, once.
    let note = format!("order o-expire is held: {HELD_REASON}; may start at 2026-11-27 00:30:05Z");
    assert_eq!(run.stderr.matches(&note).count(), 1, "{}", run.stderr);
    assert!(run.stdout.contains("expired"), "{}", run.stdout);
    assert!(
        run.stdout
            .contains("maintenance window prod-sunday closed before the restore could start"),
        "{}",
        run.stdout
    );
    assert!(server.polls("o-expire") >= 2);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn apply_dry_run_prints_changes_and_sends_the_document() {
    let server = start(false).await;
    let document = "[[window]]\nname = \"prod-sunday\"\ntimezone = \"Europe/Berlin\"\n";
    let path = scratch_file("dry-run-fleet.toml", document);
    let path = path.to_str().expect("utf-8 path");
    let run = warden(&server.url, &["apply", "-f", path, "--dry-run"]).await;
    assert_eq!(run.code, 0, "{}", run.stderr);
    assert_eq!(
        run.stdout,
        "+ window prod-sunday\n\
         ~ schedule nightly: cron: 0 3 * * * -> 0 4 * * *\n\
         - retention old\n\
         dry run: nothing was applied; policy version 3 stays in force\n"
    );
    let policies = server.recorded.lock().policies.clone();
    assert_eq!(policies.len(), 1);
    assert!(policies[0].dry_run);
    assert_eq!(policies[0].toml, document);

    let applied = warden(&server.url, &["apply", "--file", path, "--json"]).await;
    assert_eq!(applied.code, 0, "{}", applied.stderr);
    assert_eq!(
        applied.json(),
        serde_json::json!({
            "applied": true, "version": 4, "dry_run": false, "changes": [
                {"op": "added", "what": "window", "name": "prod-sunday", "detail": null},
                {"op": "changed", "what": "schedule", "name": "nightly",
                 "detail": "cron: 0 3 * * * -> 0 4 * * *"},
                {"op": "removed", "what": "retention", "name": "old", "detail": null}
            ]
        })
    );
    assert!(!server.recorded.lock().policies[1].dry_run);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn apply_with_an_unreadable_file_exits_two() {
    let server = start(false).await;
    let missing = std::path::Path::new(env!("CARGO_TARGET_TMPDIR")).join("no-such-fleet.toml");
    let missing = missing.to_str().expect("utf-8 path");
    let run = warden(&server.url, &["apply", "-f", missing]).await;
    assert_eq!(run.code, 2, "{}", run.stderr);
    assert!(
        run.stderr.starts_with(&format!(
            "error: cannot read the policy document {missing}: "
        )),
        "{}",
        run.stderr
    );
    // A directory is no document either.
    let run = warden(&server.url, &["apply", "-f", env!("CARGO_TARGET_TMPDIR")]).await;
    assert_eq!(run.code, 2, "{}", run.stderr);
    assert!(
        run.stderr.contains("cannot read the policy document"),
        "{}",
        run.stderr
    );
    assert!(server.recorded.lock().actors.is_empty());
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn apply_of_an_invalid_document_exits_two_with_the_coordinators_message() {
    let server = start(false).await;
    let path = scratch_file(
        "invalid-fleet.toml",
        "[[window]]\nname = \"w\"\ntimezone = \"Mars/Olympus\"\n",
    );
    let run = warden(&server.url, &["apply", "-f", path.to_str().expect("utf-8")]).await;
    assert_eq!(run.code, 2, "{}", run.stderr);
    assert_eq!(
        run.stderr.trim(),
        "error: windows[0].timezone: unknown time zone \"Mars/Olympus\": use an IANA name such as Europe/Berlin"
    );
    assert!(run.stdout.is_empty(), "{}", run.stdout);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn export_prints_the_document_as_is() {
    let server = start(false).await;
    let run = warden(&server.url, &["export"]).await;
    assert_eq!(run.code, 0, "{}", run.stderr);
    assert_eq!(run.stdout, EXPORTED);
    let json = warden(&server.url, &["export", "--json"]).await;
    assert_eq!(
        json.json(),
        serde_json::json!({"version": 3, "toml": EXPORTED})
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn windows_list_as_table_and_json() {
    let server = start(false).await;
    let run = warden(&server.url, &["windows"]).await;
    assert_eq!(run.code, 0, "{}", run.stderr);
    let lines: Vec<&str> = run.stdout.lines().collect();
    assert_eq!(lines.len(), 3, "{}", run.stdout);
    assert!(lines[0].starts_with("NAME"), "{}", run.stdout);
    assert_has_all(
        lines[1],
        &[
            "prod-sunday",
            "maintenance",
            "env=prod",
            "Europe/Berlin",
            "closed",
            "2026-11-27 00:30:05Z – 2026-11-27 02:30:05Z",
        ],
    );
    assert_has_all(
        lines[2],
        &[
            "xmas",
            "freeze",
            "(all)",
            "not in force",
            "none within a year",
        ],
    );
    let json = warden(&server.url, &["windows", "--json"]).await.json();
    assert_eq!(json.as_array().map(Vec::len), Some(2));
    assert_eq!(json[0]["next_start"], "2026-11-27T00:30:05.250Z");
    assert_eq!(json[1]["selector"], "");
    assert_eq!(json[1]["next_start"], serde_json::Value::Null);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn windows_next_json_shape() {
    let server = start(false).await;
    let run = warden(&server.url, &["windows", "next", "pg1/shop", "--json"]).await;
    assert_eq!(run.code, 0, "{}", run.stderr);
    assert_eq!(
        run.json(),
        serde_json::json!({
            "database": "pg1/shop", "labels": {"env": "prod"}, "allowed_now": false,
            "open_window": null, "open_until": null,
            "freeze_window": "release-freeze", "freeze_until": "2026-11-26T22:30:05.250Z",
            "next_window": "prod-sunday", "next_start": "2026-11-27T00:30:05.250Z",
            "next_end": "2026-11-27T02:30:05.250Z"
        })
    );
    let sent = server.recorded.lock().next_windows.clone();
    assert_eq!(sent[0].database, "pg1/shop");

    let table = warden(&server.url, &["windows", "next", "pg1/shop"]).await;
    assert_eq!(table.code, 0, "{}", table.stderr);
    assert_has_all(
        &table.stdout,
        &[
            "ALLOWED NOW   no",
            "FREEZE        release-freeze until 2026-11-26 22:30:05Z",
            "NEXT OPENING  prod-sunday 2026-11-27 00:30:05Z – 2026-11-27 02:30:05Z",
        ],
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn window_add_and_rm_print_the_changes() {
    let server = start(false).await;
    let run = warden(
        &server.url,
        &[
            "window",
            "add",
            "nightly-dev",
            "--timezone",
            "UTC",
            "--selector",
            "env=dev",
            "--cron",
            "0 1 * * *",
            "--duration",
            "2h",
            "--replace",
        ],
    )
    .await;
    assert_eq!(run.code, 0, "{}", run.stderr);
    assert_eq!(
        run.stdout,
        "+ window nightly-dev\napplied: policy version 5 is in force\n"
    );
    let added = server.recorded.lock().windows_added.clone();
    let sent = &added[0];
    assert_eq!(
        (
            sent.name.as_str(),
            sent.kind.as_str(),
            sent.selector.as_str(),
            sent.timezone.as_str()
        ),
        ("nightly-dev", "maintenance", "env=dev", "UTC")
    );
    assert_eq!(
        (sent.cron.as_str(), sent.duration.as_str()),
        ("0 1 * * *", "2h")
    );
    assert!(sent.weekly.is_empty() && sent.start.is_empty() && sent.end.is_empty());
    assert!(sent.replace);

    let rm = warden(&server.url, &["window", "rm", "prod-sunday", "--json"]).await;
    assert_eq!(rm.code, 0, "{}", rm.stderr);
    assert_eq!(rm.json()["changes"][0]["op"], "removed");
    let unknown = warden(&server.url, &["window", "rm", "nope"]).await;
    assert_eq!(unknown.code, 2);
    assert_eq!(
        unknown.stderr.trim(),
        "error: no window named nope: see warden windows"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn prune_dry_run_json_shape() {
    let server = start(false).await;
    let run = warden(
        &server.url,
        &["prune", "--dry-run", "--database", "pg1/shop", "--json"],
    )
    .await;
    assert_eq!(run.code, 0, "{}", run.stderr);
    assert_eq!(
        run.json(),
        serde_json::json!({
            "dry_run": true,
            "decisions": [
                {"artifact_id": "a-old", "database": "pg1/shop",
                 "created": "2026-08-28T21:30:05.250Z", "size_bytes": 40_960, "prune": true,
                 "why": "kept by no rule (daily 7, weekly 4)"},
                {"artifact_id": "a-1", "database": "pg1/shop",
                 "created": "2026-11-26T21:30:05.250Z", "size_bytes": 40_960, "prune": false,
                 "why": "daily: newest of 2026-11-26"}
            ],
            "order_ids": []
        })
    );
    let prunes = server.recorded.lock().prunes.clone();
    assert!(prunes[0].dry_run);
    assert_eq!(prunes[0].database, "pg1/shop");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn prune_table_lists_what_goes() {
    let server = start(false).await;
    let run = warden(&server.url, &["prune"]).await;
    assert_eq!(run.code, 0, "{}", run.stderr);
    let lines: Vec<&str> = run.stdout.lines().collect();
    assert_eq!(lines.len(), 3, "{}", run.stdout);
    assert!(lines[0].starts_with("ARTIFACT"), "{}", run.stdout);
    assert!(lines[1].starts_with("a-old") && lines[1].contains("kept by no rule"));
    assert_eq!(
        lines[2],
        "pruning 1 artifact (40.0 KiB), keeping 1 artifact: order o-prune removes the files (follow with `warden order ID --watch`)"
    );
    let prunes = server.recorded.lock().prunes.clone();
    assert!(!prunes[0].dry_run && prunes[0].database.is_empty());

    let all = warden(&server.url, &["prune", "--dry-run", "--all"]).await;
    assert_eq!(all.code, 0, "{}", all.stderr);
    let lines: Vec<&str> = all.stdout.lines().collect();
    assert_eq!(lines.len(), 4, "{}", all.stdout);
    assert!(lines[0].contains("DECISION"), "{}", all.stdout);
    assert!(
        lines[2].starts_with("a-1") && lines[2].contains("keep"),
        "{}",
        all.stdout
    );
    assert!(
        lines[3].starts_with("dry run: would prune 1 artifact"),
        "{}",
        all.stdout
    );
}

/// The value of one "FIELD  value" line of a single view, the first when there are several.
fn field(stdout: &str, name: &str) -> Option<String> {
    stdout
        .lines()
        .find_map(|line| line.strip_prefix(name))
        .filter(|rest| rest.starts_with(' '))
        .map(|rest| rest.trim().to_owned())
}

/// Asserts each field of a single view, its "NAME  value" lines.
#[track_caller]
fn assert_fields(out: &str, expected: &[(&str, &str)]) {
    for (name, value) in expected {
        assert_eq!(field(out, name).as_deref(), Some(*value), "{name} in {out}");
    }
}

/// Asserts that a row, or a whole output, contains every one of `parts`.
#[track_caller]
fn assert_has_all(text: &str, parts: &[&str]) {
    for part in parts {
        assert!(text.contains(part), "{part} missing in {text}");
    }
}

/// The column titles of a table's header line, single-spaced.
fn columns(header: &str) -> String {
    header.split_whitespace().collect::<Vec<_>>().join(" ")
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn drill_wait_follows_and_prints_phases_and_checks() {
    let server = start(false).await;
    let run = warden(&server.url, &["drill", "pg1/shop", "--wait"]).await;
    assert_eq!(run.code, 0, "{}", run.stderr);
    let out = &run.stdout;
    assert_fields(
        out,
        &[
            ("KIND", "drill"),
            ("STATE", "succeeded"),
            ("ARTIFACT", "a-1"),
            ("DRILL", "passed"),
            ("SCRATCH DATABASE", "pg1/warden_drill_3f_a1"),
            ("VERIFIED", "3 tables, 950 rows"),
            ("RESTORE TIME", "1.5s for 200.0 KiB (133.3 KiB/s)"),
            (
                "PHASES",
                "fetch 12ms, verify_checksum 30ms, decompress 80ms, pg_restore 1.2s, verify_rows 90ms, checks 88ms, cleanup 40ms",
            ),
            ("CHECK", "orders_have_customers: passed"),
        ],
    );
    assert!(!out.contains("CORRUPT"), "{out}");
    assert!(server.polls("o-drill") >= 2);
    let sent = server.recorded.lock().drills.clone();
    assert_eq!(sent[0].database, "pg1/shop");
    assert!(sent[0].artifact_id.is_empty() && sent[0].reason.is_empty());

    let json = warden(
        &server.url,
        &[
            "drill",
            "pg1/shop",
            "--artifact",
            "a-1",
            "--reason",
            "quarterly drill",
            "--wait",
            "--json",
        ],
    )
    .await;
    assert_eq!(json.code, 0, "{}", json.stderr);
    let order = json.json();
    assert_eq!(order["kind"], "drill");
    assert_eq!(order["state"], "succeeded");
    assert_eq!(order["artifact_corrupt"], false);
    let drill = &order["drill"];
    assert_eq!(drill["artifact_id"], "a-1");
    assert_eq!(drill["passed"], true);
    assert_eq!(drill["scratch_database"], "pg1/warden_drill_3f_a1");
    assert_eq!(drill["restore_millis"], 1500);
    assert_eq!(drill["raw_bytes"], 200 * 1024);
    assert_eq!(drill["phases"].as_array().map(Vec::len), Some(7));
    assert_eq!(
        drill["phases"][3],
        serde_json::json!({"phase": "pg_restore", "millis": 1200})
    );
    assert_eq!(
        drill["checks"],
        serde_json::json!([{"name": "orders_have_customers", "passed": true, "error": null}])
    );
    let sent = server.recorded.lock().drills.clone();
    assert_eq!(
        (sent[1].artifact_id.as_str(), sent[1].reason.as_str()),
        ("a-1", "quarterly drill")
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn drill_without_wait_prints_the_submitted_order() {
    let server = start(false).await;
    let run = warden(&server.url, &["drill", "pg1/shop", "--json"]).await;
    assert_eq!(run.code, 0, "{}", run.stderr);
    let order = run.json();
    assert_eq!(order["state"], "queued");
    assert_eq!(order["drill"], Value::Null);
    assert_eq!(server.polls("o-drill"), 0);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn failed_drill_exits_one_and_names_the_corrupt_artifact() {
    let server = start(false).await;
    let run = warden(&server.url, &["drill", "pg1/corrupt", "--wait"]).await;
    assert_eq!(run.code, 1, "{}", run.stderr);
    let out = &run.stdout;
    assert_eq!(field(out, "STATE").as_deref(), Some("failed"), "{out}");
    assert_eq!(field(out, "DRILL").as_deref(), Some("FAILED"), "{out}");
    assert_eq!(field(out, "ERROR").as_deref(), Some(CORRUPT_ERROR), "{out}");
    assert_eq!(
        field(out, "ARTIFACT CORRUPT").as_deref(),
        Some(
            "yes: the failure proves a-1 unusable and it is marked corrupt; pick another with `warden artifacts pg1/shop`"
        ),
        "{out}"
    );

    let json = warden(
        &server.url,
        &["order", "o-drill-corrupt", "--watch", "--json"],
    )
    .await;
    assert_eq!(json.code, 1, "{}", json.stderr);
    let order = json.json();
    assert_eq!(order["state"], "failed");
    assert_eq!(order["artifact_corrupt"], true);
    assert_eq!(order["error"], CORRUPT_ERROR);
    assert_eq!(order["drill"], Value::Null);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn drill_of_a_bad_database_exits_two() {
    let server = start(false).await;
    let malformed = warden(&server.url, &["drill", "shop", "--wait"]).await;
    assert_eq!(malformed.code, 2, "{}", malformed.stderr);
    assert!(
        malformed
            .stderr
            .starts_with("error: invalid value 'shop' for '<DB>': "),
        "{}",
        malformed.stderr
    );
    assert!(server.recorded.lock().actors.is_empty());

    let unknown = warden(&server.url, &["drill", "pg9/x", "--wait"]).await;
    assert_eq!(unknown.code, 2, "{}", unknown.stderr);
    assert_eq!(
        unknown.stderr.trim(),
        "error: unknown database pg9/x: see warden databases"
    );
    assert!(unknown.stdout.is_empty(), "{}", unknown.stdout);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn rto_exits_two_on_a_breach() {
    let server = start(true).await;
    let run = warden(&server.url, &["rto"]).await;
    assert_eq!(run.code, 2, "{}", run.stderr);
    assert!(run.stderr.is_empty(), "{}", run.stderr);
    let lines: Vec<&str> = run.stdout.lines().collect();
    assert_eq!(lines.len(), 3, "{}", run.stdout);
    assert_eq!(
        columns(lines[0]),
        "DATABASE TIER STATUS RTO LAST DRILL PREDICTED RPO BACKUP AGE WHY",
    );
    // Worst first, as the coordinator sent them.
    assert_has_all(
        lines[1],
        &[
            "pg1/broken",
            "critical",
            "breach",
            "30m",
            "never",
            "1d",
            "1d 2h",
            "newest backup is 26h old, RPO 24h; never drilled: run `warden drill pg1/broken`",
        ],
    );
    assert_has_all(
        lines[2],
        &["pg1/shop", "standard", "ok", "1h", "1.5s (", "1.6s", "2h"],
    );

    let json = warden(&server.url, &["rto", "--json"]).await;
    assert_eq!(json.code, 2, "{}", json.stderr);
    let report = json.json();
    assert_eq!(report["generated_at"], "2026-11-26T21:30:05.250Z");
    assert_eq!(
        report["databases"][0],
        serde_json::json!({
            "database": "pg1/broken", "tier": "critical", "status": "breach",
            "reasons": ["newest backup is 26h old, RPO 24h",
                        "never drilled: run `warden drill pg1/broken`"],
            "rto_ms": 1_800_000, "rpo_ms": 86_400_000,
            "last_drill_at": null, "last_drill_ms": null, "last_drill_passed": null,
            "last_drill_artifact_id": null, "predicted_restore_ms": null,
            "newest_backup_at": "2026-11-25T19:30:05.250Z",
            "newest_backup_age_ms": 93_600_000
        })
    );
    assert_eq!(
        report["databases"][1]["last_drill_at"],
        "2026-11-26T21:30:05.250Z"
    );
    assert_eq!(report["databases"][1]["last_drill_passed"], true);
    assert_eq!(report["databases"][1]["predicted_restore_ms"], 1600);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn rto_exits_zero_without_a_breach() {
    let server = start(false).await;
    let run = warden(&server.url, &["rto"]).await;
    assert_eq!(run.code, 0, "{}", run.stderr);
    assert!(
        run.stdout
            .lines()
            .nth(1)
            .is_some_and(|l| l.contains("at_risk"))
    );
    let json = warden(&server.url, &["rto", "--json"]).await;
    assert_eq!(json.code, 0, "{}", json.stderr);
    let report = json.json();
    assert_eq!(report["databases"].as_array().map(Vec::len), Some(2));
    assert_eq!(report["databases"][0]["status"], "at_risk");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn status_shows_the_fleet_at_a_glance() {
    let server = start(true).await;
    let run = warden(&server.url, &["status"]).await;
    // A breach or a database down does not fail `status`: `rto` is the gate.
    assert_eq!(run.code, 0, "{}", run.stderr);
    let lines: Vec<&str> = run.stdout.lines().collect();
    assert_eq!(
        lines[..4],
        [
            "agents: 1 of 2 online",
            "databases: 1 healthy, 1 degraded, 1 down, 0 unknown",
            "rto: 1 ok, 0 at_risk, 1 breach, 1 unknown",
            "",
        ],
        "{}",
        run.stdout
    );
    assert_eq!(lines.len(), 12, "{}", run.stdout);
    assert_eq!(
        columns(lines[4]),
        "DATABASE HEALTH LATENCY SIZE CONNECTIONS NEWEST BACKUP RTO WHY",
    );
    assert!(lines[5].starts_with("pg2/inventory"), "{}", run.stdout);
    assert!(lines[5].contains("agent pg2 is offline"), "{}", lines[5]);
    assert_has_all(
        lines[6],
        &[
            "pg1/broken",
            "degraded",
            "3ms",
            "8.0 MiB",
            "7 of 100",
            "breach",
            "replication lag 1.2s; oldest transaction 5m",
        ],
    );
    assert!(lines[7].starts_with("pg1/shop"), "{}", run.stdout);
    assert_eq!(lines[8], "");
    assert_eq!(
        columns(lines[9]),
        "AGENT REPOSITORY STATE PROBE CHECKED ERROR"
    );
    assert_has_all(
        lines[10],
        &[
            "pg1",
            "s3://backups/warden",
            "failing",
            "SignatureDoesNotMatch",
        ],
    );
    assert_has_all(
        lines[11],
        &["pg2", "file:///var/lib/warden/repo", "agent offline"],
    );

    let json = warden(&server.url, &["status", "--json"]).await;
    assert_eq!(json.code, 0, "{}", json.stderr);
    let status = json.json();
    assert_eq!(status["generated_at"], "2026-11-26T21:30:05.250Z");
    assert_eq!(
        (
            status["agents_online"].as_u64(),
            status["agents_total"].as_u64()
        ),
        (Some(1), Some(2))
    );
    let down = &status["databases"][0];
    assert_eq!(down["database"], "pg2/inventory");
    assert_eq!(down["agent_online"], false);
    assert_eq!(down["health"], "down");
    assert_eq!(
        down["health_reasons"],
        serde_json::json!(["agent pg2 is offline"])
    );
    assert_eq!(down["report"], Value::Null);
    assert_eq!(down["health_at"], Value::Null);
    assert_eq!(down["rto_status"], "unknown");
    let degraded = &status["databases"][1];
    assert_eq!(degraded["health_at"], "2026-11-26T21:30:05.250Z");
    assert_eq!(degraded["report"]["replication_role"], "standby");
    assert_eq!(degraded["report"]["replication_lag_ms"], 1250);
    assert_eq!(
        degraded["report"]["repository_total_bytes"],
        100_u64 * 1024 * 1024 * 1024
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn order_shows_the_new_health_fields() {
    let server = start(false).await;
    let run = warden(&server.url, &["order", "o-health"]).await;
    assert_eq!(run.code, 0, "{}", run.stderr);
    let out = &run.stdout;
    assert_fields(
        out,
        &[
            ("LATENCY", "3ms"),
            ("CONNECTIONS", "7 of 100"),
            ("UPTIME", "2d 3h"),
            ("REPLICATION", "standby, 1.2s behind"),
            ("OLDEST TRANSACTION", "5m"),
            ("WRAPAROUND AGE", "150000000"),
            ("REPOSITORY", "10.0 GiB free of 100.0 GiB"),
        ],
    );
    let json = warden(&server.url, &["order", "o-health", "--json"])
        .await
        .json();
    assert_eq!(json["health"]["uptime_seconds"], 2 * 86_400 + 3 * 3600);
    assert_eq!(json["health"]["oldest_transaction_seconds"], 300);
    assert_eq!(json["health"]["wraparound_age"], 150_000_000);
    assert_eq!(
        json["health"]["repository_free_bytes"],
        10_u64 * 1024 * 1024 * 1024
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn corrupt_artifacts_stand_out() {
    let server = start(false).await;
    let run = warden(&server.url, &["artifacts", "--all"]).await;
    assert_eq!(run.code, 0, "{}", run.stderr);
    let corrupt = run
        .stdout
        .lines()
        .find(|line| line.starts_with("a-0"))
        .unwrap_or_else(|| panic!("no corrupt artifact in {}", run.stdout));
    assert!(corrupt.contains("CORRUPT"), "{corrupt}");
    assert!(
        !run.stdout
            .lines()
            .any(|l| l.starts_with("a-1") && l.contains("CORRUPT"))
    );

    let json = warden(&server.url, &["artifacts", "--all", "--json"])
        .await
        .json();
    assert_eq!(json[0]["drilled_at"], "2026-11-26T22:30:05.250Z");
    assert_eq!(json[0]["corrupt_reason"], Value::Null);
    assert_eq!(json[1]["state"], "corrupt");
    assert_eq!(json[1]["corrupt_reason"], CORRUPT_ERROR);
    assert_eq!(json[1]["drilled_at"], Value::Null);
}

/// A fresh directory of migration files under the test target's scratch directory.
fn migrations_dir(name: &str, files: &[(&str, &[u8])]) -> std::path::PathBuf {
    let dir = std::path::Path::new(env!("CARGO_TARGET_TMPDIR"))
        .join("warden-cli-tests")
        .join(name);
    let _ = std::fs::remove_dir_all(&dir);
    std::fs::create_dir_all(&dir).expect("create migrations directory");
    for (file, contents) in files {
        std::fs::write(dir.join(file), contents).expect("write migration file");
    }
    dir
}

const CREATE_USERS: &[u8] = b"CREATE TABLE users (id bigint PRIMARY KEY);\n";
const ADD_EMAIL: &[u8] = b"ALTER TABLE users ADD COLUMN email text;\n";
const BACKFILL: &[u8] = b"UPDATE users SET email = id || '@example.com';\n";

/// The three migrations the fake's scripts know, and a file that is no migration.
fn good_migrations(name: &str) -> String {
    let dir = migrations_dir(
        name,
        &[
            ("0003_backfill.sql", BACKFILL),
            ("0001_create_users.sql", CREATE_USERS),
            ("0002_add_email.sql", ADD_EMAIL),
            ("README.md", b"# not a migration"),
        ],
    );
    dir.to_str().expect("utf-8 path").to_owned()
}

/// An applied migration of the fake's scripts, as the CLI's JSON shows it.
fn applied_json(version: &str, name: &str, duration_ms: u64) -> Value {
    serde_json::json!({
        "version": version, "name": name, "sha256": version.repeat(16),
        "applied_at": "2026-11-26T21:30:05.250Z", "duration_ms": duration_ms
    })
}

/// Runs `warden migrate TARGET --dir DIR --reason "release 42" --wait` over the good
/// migrations in `name`, TARGET a database or a selector, and asserts that it succeeds.
async fn release(server: &Server, target: &[&str], name: &str) -> Run {
    let dir = good_migrations(name);
    let mut args = vec!["migrate"];
    args.extend(target);
    args.extend(["--dir", &dir, "--reason", "release 42", "--wait"]);
    let run = warden(&server.url, &args).await;
    assert_eq!(run.code, 0, "{}", run.stderr);
    run
}

fn sent_versions(request: &v1::SubmitMigrateRequest) -> Vec<(String, String, String)> {
    match request.migration.as_ref().and_then(|m| m.source.as_ref()) {
        Some(v1::migration_request::Source::Sql(sql)) => sql
            .files
            .iter()
            .map(|f| (f.version.clone(), f.name.clone(), f.sha256.clone()))
            .collect(),
        other => panic!("expected SQL files, got {other:?}"),
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn migrate_wait_sends_the_files_and_prints_what_was_applied() {
    let server = start(false).await;
    let run = release(&server, &["pg1/shop"], "migrate-wait").await;
    let out = &run.stdout;
    assert_fields(
        out,
        &[
            ("KIND", "migrate"),
            ("STATE", "succeeded"),
            ("FILES", "0001_create_users, 0002_add_email, 0003_backfill"),
            ("ON CHECK FAILURE", "stop"),
            ("PRE-MIGRATION BACKUP", "a-pre"),
            ("APPLIED", "0002_add_email (120ms), 0003_backfill (3.2s)"),
            ("ALREADY APPLIED", "1"),
            ("CHECK", "users_have_email: passed"),
            ("PHASES", "apply 3.3s, checks 15ms"),
        ],
    );
    assert!(
        !out.contains("RESTORE WITH") && !out.contains("PENDING"),
        "{out}"
    );
    assert!(server.polls("o-migrate") >= 2);

    let sent = server.recorded.lock().migrates.clone();
    assert_eq!(sent.len(), 1);
    assert_eq!(sent[0].database, "pg1/shop");
    assert!(!sent[0].status_only);
    // In version order, README.md left out, each with the sha256 of its bytes.
    assert_eq!(
        sent_versions(&sent[0]),
        [
            ("0001", "create_users", CREATE_USERS),
            ("0002", "add_email", ADD_EMAIL),
            ("0003", "backfill", BACKFILL),
        ]
        .map(|(v, n, bytes)| (
            v.to_owned(),
            n.to_owned(),
            warden_shared::migration::sha256_hex(bytes)
        ))
    );
    let migration = sent[0].migration.clone().expect("a migration");
    assert_eq!(migration.reason, "release 42");
    assert!(!migration.emergency && !migration.skip_safety_backup && !migration.no_wait);
    assert_eq!(migration.on_check_failure, "");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn migrate_json_shape() {
    let server = start(false).await;
    let dir = good_migrations("migrate-json");
    let run = warden(
        &server.url,
        &["migrate", "pg1/shop", "--dir", &dir, "--wait", "--json"],
    )
    .await;
    assert_eq!(run.code, 0, "{}", run.stderr);
    let order = run.json();
    assert_eq!(order["kind"], "migrate");
    assert_eq!(order["state"], "succeeded");
    assert_eq!(order["drill"], Value::Null);
    assert_eq!(
        order["migration"],
        serde_json::json!({
            "pre_migration_artifact_id": "a-pre",
            "applied": [
                applied_json("0002", "add_email", 120),
                applied_json("0003", "backfill", 3200)
            ],
            "already_applied": [applied_json("0001", "create_users", 40)],
            "pending": [], "changed": [], "unknown": [],
            "failed_version": null,
            "checks": [{"name": "users_have_email", "passed": true, "error": null}],
            "restored": false, "restore_command": null, "command_output": null,
            "phases": [{"phase": "apply", "millis": 3320}, {"phase": "checks", "millis": 15}]
        })
    );
    // Before there is an outcome, there is no migration document.
    let queued = warden(
        &server.url,
        &["migrate", "pg1/shop", "--dir", &dir, "--json"],
    )
    .await;
    assert_eq!(queued.code, 0, "{}", queued.stderr);
    assert_eq!(queued.json()["migration"], Value::Null);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn failed_migration_exits_one_and_says_how_to_restore() {
    let server = start(false).await;
    let dir = good_migrations("migrate-fail");
    let run = warden(
        &server.url,
        &["migrate", "pg1/broken", "--dir", &dir, "--wait"],
    )
    .await;
    assert_eq!(run.code, 1, "{}", run.stderr);
    let out = &run.stdout;
    assert_fields(
        out,
        &[
            ("STATE", "failed"),
            ("ERROR", MIGRATE_ERROR),
            ("PRE-MIGRATION BACKUP", "a-pre"),
            ("APPLIED", "0002_add_email (120ms)"),
            ("ALREADY APPLIED", "1"),
            ("PENDING", "0003_backfill (not reached)"),
            ("FAILED FILE", "0003_backfill.sql"),
            ("RESTORE WITH", RESTORE_COMMAND),
        ],
    );
    // Prominently, on stderr too: the exact command, on a line of its own.
    assert!(
        run.stderr.contains(
            "migration order o-migrate-fail failed after changing pg1/broken and did not restore it"
        ),
        "{}",
        run.stderr
    );
    assert!(
        run.stderr
            .lines()
            .any(|line| line.trim() == RESTORE_COMMAND),
        "{}",
        run.stderr
    );

    let json = warden(
        &server.url,
        &["order", "o-migrate-fail", "--watch", "--json"],
    )
    .await;
    assert_eq!(json.code, 1, "{}", json.stderr);
    let migration = &json.json()["migration"];
    assert_eq!(migration["failed_version"], "0003");
    assert_eq!(migration["restore_command"], RESTORE_COMMAND);
    assert_eq!(migration["restored"], false);
    assert_eq!(
        migration["pending"],
        serde_json::json!([{"version": "0003", "name": "backfill"}])
    );
    assert!(json.stderr.contains(RESTORE_COMMAND), "{}", json.stderr);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_failed_check_can_restore_the_pre_migration_backup() {
    let server = start(false).await;
    let dir = good_migrations("migrate-restored");
    let run = warden(
        &server.url,
        &[
            "migrate",
            "pg1/checked",
            "--dir",
            &dir,
            "--on-check-failure",
            "restore",
            "--wait",
        ],
    )
    .await;
    assert_eq!(run.code, 1, "{}", run.stderr);
    let out = &run.stdout;
    assert_eq!(
        field(out, "CHECK").as_deref(),
        Some("users_have_email: FAILED: returned false"),
        "{out}"
    );
    assert_eq!(
        field(out, "RESTORED").as_deref(),
        Some(
            "yes: the pre-migration backup a-pre was restored over pg1/checked, as it was before the migration"
        ),
        "{out}"
    );
    assert!(!out.contains("RESTORE WITH"), "{out}");
    assert!(!run.stderr.contains("warden restore"), "{}", run.stderr);
    let sent = server.recorded.lock().migrates.clone();
    assert_eq!(
        sent[0]
            .migration
            .as_ref()
            .map(|m| m.on_check_failure.as_str()),
        Some("restore")
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn command_migrations_show_the_output_tail() {
    let server = start(false).await;
    let run = warden(
        &server.url,
        &["migrate", "pg1/shop", "--command", "artisan", "--wait"],
    )
    .await;
    assert_eq!(run.code, 0, "{}", run.stderr);
    let out = &run.stdout;
    assert_eq!(field(out, "COMMAND").as_deref(), Some("artisan"), "{out}");
    assert_eq!(
        field(out, "OUTPUT").as_deref(),
        Some("Migrating: 2026_11_01_create_users"),
        "{out}"
    );
    assert!(
        out.contains("Migrated:  2026_11_01_create_users (12ms)"),
        "{out}"
    );
    let sent = server.recorded.lock().migrates.clone();
    assert!(matches!(
        sent[0].migration.as_ref().and_then(|m| m.source.as_ref()),
        Some(v1::migration_request::Source::Command(name)) if name == "artisan"
    ));
    let json = warden(&server.url, &["order", "o-migrate-cmd", "--json"]).await;
    assert_eq!(json.json()["migration"]["command_output"], COMMAND_OUTPUT);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn migrate_without_wait_says_how_to_follow() {
    let server = start(false).await;
    let dir = good_migrations("migrate-nowait");
    let run = warden(&server.url, &["migrate", "pg1/shop", "--dir", &dir]).await;
    assert_eq!(run.code, 0, "{}", run.stderr);
    assert_eq!(field(&run.stdout, "STATE").as_deref(), Some("queued"));
    assert_eq!(
        run.stderr.trim(),
        "order o-migrate is queued: follow it with `warden order o-migrate --watch` or stop it with `warden cancel o-migrate`"
    );
    assert_eq!(server.polls("o-migrate"), 0);

    let held = warden(
        &server.url,
        &["migrate", "pg1/held", "--dir", &dir, "--no-wait"],
    )
    .await;
    assert_eq!(held.code, 0, "{}", held.stderr);
    assert!(
        held.stderr.starts_with(&format!(
            "order o-migrate-held is held: {HELD_REASON}; may start at 2026-11-27 00:30:05Z; it starts by itself when it may: follow it with"
        )),
        "{}",
        held.stderr
    );
    let sent = server.recorded.lock().migrates.clone();
    assert!(sent[1].migration.as_ref().is_some_and(|m| m.no_wait));
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn bad_migration_directories_are_refused_before_sending() {
    let server = start(false).await;
    let bad_name = migrations_dir(
        "bad-name",
        &[
            ("0001_a.sql", b"SELECT 1;"),
            ("add-users.sql", b"SELECT 1;"),
        ],
    );
    let duplicate = migrations_dir(
        "duplicate",
        &[("0001_a.sql", b"SELECT 1;"), ("1_b.sql", b"SELECT 2;")],
    );
    let empty = migrations_dir("empty", &[("notes.txt", b"no migrations here")]);
    let latin1 = migrations_dir("latin1", &[("0001_a.sql", b"SELECT 'caf\xe9';")]);
    let missing = std::path::Path::new(env!("CARGO_TARGET_TMPDIR")).join("no-such-migrations");
    for (dir, expected) in [
        (
            &bad_name,
            "\"add-users.sql\" is not a migration file name".to_owned(),
        ),
        (
            &duplicate,
            "0001_a.sql and 1_b.sql have the same version".to_owned(),
        ),
        (
            &empty,
            format!(
                "no migration files in {}: name them like 0001_create_users.sql",
                empty.display()
            ),
        ),
        (
            &latin1,
            "0001_a.sql: not UTF-8 text (invalid bytes at offset 11): save it as UTF-8".to_owned(),
        ),
        (
            &missing,
            format!("cannot read the migrations directory {}", missing.display()),
        ),
    ] {
        let dir = dir.to_str().expect("utf-8 path");
        for args in [
            &["migrate", "pg1/shop", "--dir", dir][..],
            &["migrate", "status", "pg1/shop", "--dir", dir][..],
            &["migrate", "--selector", "env=prod", "--dir", dir][..],
        ] {
            let run = warden(&server.url, args).await;
            assert_eq!(run.code, 2, "{args:?}: {}", run.stderr);
            assert!(run.stderr.starts_with("error: "), "{}", run.stderr);
            assert!(
                run.stderr.contains(&expected),
                "{expected} missing in {}",
                run.stderr
            );
            assert!(run.stdout.is_empty(), "{}", run.stdout);
        }
    }
    assert!(server.recorded.lock().actors.is_empty());
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn migrate_flags_are_checked_before_sending() {
    let server = start(false).await;
    let dir = good_migrations("migrate-flags");
    let refused = [
        (
            &["migrate", "pg1/shop", "--dir", &dir, "--emergency"][..],
            "error: --emergency needs --reason TEXT: say why the migration cannot wait",
        ),
        (
            &[
                "migrate",
                "pg1/shop",
                "--dir",
                &dir,
                "--skip-safety-backup",
                "--reason",
                "x",
            ][..],
            "error: --skip-safety-backup only goes with --emergency: a migration that waits for its maintenance window always takes a pre-migration backup",
        ),
        (
            &["migrate", "pg1/shop", "--command", " "][..],
            "error: --command needs the name of a migration command",
        ),
        (
            &[
                "migrate",
                "pg1/shop",
                "--selector",
                "env=prod",
                "--dir",
                &dir,
            ][..],
            "error: the argument '[DB]' cannot be used with '--selector <SEL>'",
        ),
        (
            &["migrate", "pg1/shop"][..],
            "error: the following required arguments were not provided:",
        ),
    ];
    for (args, expected) in refused {
        let run = warden(&server.url, args).await;
        assert_eq!(run.code, 2, "{args:?}: {}", run.stderr);
        assert!(run.stderr.starts_with(expected), "{args:?}: {}", run.stderr);
    }
    assert!(server.recorded.lock().actors.is_empty());

    let run = warden(
        &server.url,
        &[
            "migrate",
            "pg1/shop",
            "--dir",
            &dir,
            "--emergency",
            "--skip-safety-backup",
            "--reason",
            "hotfix",
        ],
    )
    .await;
    assert_eq!(run.code, 0, "{}", run.stderr);
    let sent = server.recorded.lock().migrates.clone();
    let migration = sent[0].migration.clone().expect("a migration");
    assert!(migration.emergency && migration.skip_safety_backup);
    assert_eq!(migration.reason, "hotfix");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn migrate_status_exits_two_when_an_applied_file_changed() {
    let server = start(false).await;
    let dir = good_migrations("status");
    let run = warden(
        &server.url,
        &["migrate", "status", "pg1/shop", "--dir", &dir],
    )
    .await;
    assert_eq!(run.code, 2, "{}", run.stderr);
    let out = &run.stdout;
    assert_eq!(field(out, "DATABASE").as_deref(), Some("pg1/shop"), "{out}");
    assert_eq!(field(out, "ORDER").as_deref(), Some("o-status"), "{out}");
    assert_eq!(
        field(out, "FILES").as_deref(),
        Some("1 applied, 1 pending, 1 changed, 1 unknown"),
        "{out}"
    );
    let rows: Vec<&str> = out
        .lines()
        .skip_while(|line| !line.starts_with("STATUS"))
        .collect();
    assert!(rows.len() >= 5, "{out}");
    assert_eq!(
        columns(rows[0]),
        "STATUS VERSION NAME APPLIED AT TOOK SHA256",
    );
    // By version: the unknown 0000 first.
    assert!(
        rows[1].starts_with("unknown") && rows[1].contains("legacy"),
        "{out}"
    );
    assert!(
        rows[2].starts_with("applied")
            && rows[2].contains("0001")
            && rows[2].contains("2026-11-26 21:30:05Z")
            && rows[2].contains("40ms"),
        "{out}"
    );
    assert!(
        rows[3].starts_with("CHANGED")
            && rows[3].contains("applied 000200020002, file now ffeeffeeffee"),
        "{out}"
    );
    assert!(
        rows[4].starts_with("pending") && rows[4].contains("backfill"),
        "{out}"
    );
    assert!(
        out.contains("1 applied file changed since it was applied"),
        "{out}"
    );
    let sent = server.recorded.lock().migrates.clone();
    assert!(sent[0].status_only);
    assert_eq!(sent_versions(&sent[0]).len(), 3);

    let json = warden(
        &server.url,
        &["migrate", "status", "pg1/shop", "--dir", &dir, "--json"],
    )
    .await;
    assert_eq!(json.code, 2, "{}", json.stderr);
    assert_eq!(
        json.json(),
        serde_json::json!({
            "database": "pg1/shop",
            "order_id": "o-status",
            "applied": [applied_json("0001", "create_users", 40)],
            "pending": [{"version": "0003", "name": "backfill"}],
            "changed": [{"version": "0002", "name": "add_email",
                         "recorded_sha256": "0002".repeat(16),
                         "file_sha256": "ffee".repeat(16)}],
            "unknown": [applied_json("0000", "legacy", 5)]
        })
    );

    // The status order itself, in the order views.
    let shown = warden(&server.url, &["order", "o-status"]).await;
    assert_eq!(
        field(&shown.stdout, "KIND").as_deref(),
        Some("migrate status")
    );
    assert!(field(&shown.stdout, "MODE").is_some_and(|m| m.starts_with("status only")));
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn migrate_status_exits_zero_when_nothing_changed() {
    let server = start(false).await;
    let dir = good_migrations("status-clean");
    let run = warden(
        &server.url,
        &["migrate", "status", "pg1/clean", "--dir", &dir, "--json"],
    )
    .await;
    assert_eq!(run.code, 0, "{}", run.stderr);
    let status = run.json();
    assert_eq!(status["applied"].as_array().map(Vec::len), Some(2));
    assert_eq!(status["changed"], serde_json::json!([]));
    assert_eq!(status["pending"][0]["name"], "backfill");
    let table = warden(
        &server.url,
        &["migrate", "status", "pg1/clean", "--dir", &dir],
    )
    .await;
    assert_eq!(table.code, 0, "{}", table.stderr);
    assert!(!table.stdout.contains("changed since"), "{}", table.stdout);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn rollout_waits_wave_by_wave() {
    let server = start(false).await;
    let run = release(&server, &["--selector", "env=prod"], "rollout").await;
    // Without a terminal, each change of the waves goes to stderr once.
    assert_eq!(
        run.stderr.lines().collect::<Vec<_>>(),
        [
            "rollout r-1: wave 1 of 2 · 1 running, 2 waiting",
            "rollout r-1: wave 2 of 2 · 1 succeeded, 1 running, 1 held",
            "rollout r-1: wave 2 of 2 · 3 succeeded",
        ],
        "{}",
        run.stderr
    );
    let out = &run.stdout;
    assert_fields(
        out,
        &[
            ("ID", "r-1"),
            ("STATE", "succeeded"),
            ("SELECTOR", "env=prod"),
            ("WAVE", "2 of 2"),
            ("MIGRATION", "3 files, 0001 to 0003"),
            ("WAVES", "1,100%"),
            ("FILES", "0001_create_users, 0002_add_email, 0003_backfill"),
            ("REASON", "release 42"),
        ],
    );
    let targets: Vec<&str> = out
        .lines()
        .skip_while(|line| !line.starts_with("WAVE  DATABASE"))
        .collect();
    assert_eq!(targets.len(), 4, "{out}");
    assert_eq!(
        columns(targets[0]),
        "WAVE DATABASE STATE ORDER PRE-MIGRATION BACKUP APPLIED ERROR",
    );
    assert_has_all(
        targets[1],
        &["1", "pg1/shop", "succeeded", "o-r1", "a-pre", "0002, 0003"],
    );
    let sent = server.recorded.lock().rollouts.clone();
    assert_eq!(sent[0].selector, "env=prod");
    assert_eq!(sent[0].waves, "1,25%,100%");
    let migration = sent[0].migration.clone().expect("a migration");
    assert_eq!(migration.reason, "release 42");
    assert!(matches!(
        migration.source,
        Some(v1::migration_request::Source::Sql(sql)) if sql.files.len() == 3
    ));
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn rollout_json_shape_and_waves() {
    let server = start(false).await;
    let run = warden(
        &server.url,
        &[
            "migrate",
            "--selector",
            "env=prod",
            "--command",
            "artisan",
            "--waves",
            "1,100%",
            "--json",
        ],
    )
    .await;
    assert_eq!(run.code, 0, "{}", run.stderr);
    assert_eq!(
        run.stderr.trim(),
        "rollout r-1 is running: follow it with `warden rollout r-1 --wait`"
    );
    assert_eq!(
        run.json(),
        serde_json::json!({
            "id": "r-1", "state": "running", "selector": "env=prod", "waves": "1,100%",
            "current_wave": 1, "wave_count": 2, "requested_by": "tester@fake",
            "reason": "release 42", "created_at": "2026-11-26T21:30:05.250Z",
            "finished_at": null, "error": null,
            "migrations": [{"version": "0001", "name": "create_users"},
                           {"version": "0002", "name": "add_email"},
                           {"version": "0003", "name": "backfill"}],
            "command": null,
            "targets": [
                {"database": "pg1/shop", "wave": 1, "state": "running", "order_id": "o-r1",
                 "pre_migration_artifact_id": null, "applied": [], "error": null},
                {"database": "pg2/shop", "wave": 2, "state": "waiting", "order_id": null,
                 "pre_migration_artifact_id": null, "applied": [], "error": null},
                {"database": "pg3/shop", "wave": 2, "state": "waiting", "order_id": null,
                 "pre_migration_artifact_id": null, "applied": [], "error": null}
            ]
        })
    );
    let sent = server.recorded.lock().rollouts.clone();
    assert_eq!(sent[0].waves, "1,100%");
    assert!(matches!(
        sent[0].migration.as_ref().and_then(|m| m.source.as_ref()),
        Some(v1::migration_request::Source::Command(name)) if name == "artisan"
    ));
    assert_eq!(server.polls("r-1"), 0);
    let unknown = warden(
        &server.url,
        &[
            "migrate",
            "--selector",
            "env=nowhere",
            "--command",
            "artisan",
        ],
    )
    .await;
    assert_eq!(unknown.code, 2);
    assert_eq!(
        unknown.stderr.trim(),
        "error: selector \"env=nowhere\" selects no database: see warden databases"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_halted_rollout_exits_one_and_shows_where_each_database_stands() {
    let server = start(false).await;
    let run = warden(&server.url, &["rollout", "r-halt", "--wait"]).await;
    assert_eq!(run.code, 1, "{}", run.stderr);
    let out = &run.stdout;
    assert_eq!(field(out, "STATE").as_deref(), Some("halted"), "{out}");
    assert_eq!(
        field(out, "ERROR").as_deref(),
        Some("pg1/broken failed in wave 1: the rollout stopped before wave 2"),
        "{out}"
    );
    let failed = out
        .lines()
        .find(|line| line.starts_with("1 ") && line.contains("pg1/broken"))
        .unwrap_or_else(|| panic!("no row of pg1/broken in {out}"));
    assert_has_all(
        failed,
        &["failed", "o-migrate-fail", "a-pre", "0002", MIGRATE_ERROR],
    );
    assert!(
        out.lines()
            .any(|line| line.contains("pg2/shop") && line.contains("skipped")),
        "{out}"
    );

    let json = warden(&server.url, &["rollout", "r-halt", "--json"]).await;
    assert_eq!(json.code, 0, "{}", json.stderr);
    let rollout = json.json();
    assert_eq!(rollout["state"], "halted");
    assert_eq!(rollout["targets"][0]["error"], MIGRATE_ERROR);
    assert_eq!(
        rollout["targets"][0]["applied"],
        serde_json::json!(["0002"])
    );
    assert_eq!(rollout["finished_at"], "2026-11-26T21:31:05.250Z");

    let missing = warden(&server.url, &["rollout", "r-nope"]).await;
    assert_eq!(missing.code, 2);
    assert_eq!(missing.stderr.trim(), "error: no rollout with id r-nope");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn rollouts_list_one_row_each() {
    let server = start(false).await;
    let run = warden(&server.url, &["rollouts"]).await;
    assert_eq!(run.code, 0, "{}", run.stderr);
    let lines: Vec<&str> = run.stdout.lines().collect();
    assert_eq!(lines.len(), 3, "{}", run.stdout);
    assert_eq!(
        columns(lines[0]),
        "ID STATE SELECTOR WAVE MIGRATION CREATED REQUESTED BY DATABASES",
    );
    assert_has_all(
        lines[1],
        &[
            "r-halt",
            "halted",
            "env=prod",
            "1 of 2",
            "1 failed, 1 skipped",
        ],
    );
    assert_has_all(
        lines[2],
        &[
            "r-1",
            "succeeded",
            "2 of 2",
            "3 files, 0001 to 0003",
            "3 succeeded",
        ],
    );
    let json = warden(&server.url, &["rollouts", "--json"]).await.json();
    assert_eq!(json.as_array().map(Vec::len), Some(2));
    assert_eq!(json[1]["state"], "succeeded");
    assert_eq!(json[1]["targets"][2]["pre_migration_artifact_id"], "a-pre");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_token_goes_on_every_call_from_the_environment_or_a_private_file() {
    let server = start(false).await;
    let run = warden_with(
        &server.url,
        &["agents"],
        &[("WARDEN_TOKEN", "wdn_op_abc\n")],
    )
    .await;
    assert_eq!(run.code, 0, "{}", run.stderr);

    let dir = tempfile::tempdir().expect("tempdir");
    let file = dir.path().join("token");
    std::fs::write(&file, "wdn_op_from_file\n").expect("write");
    let set_mode = |mode| {
        std::fs::set_permissions(&file, std::os::unix::fs::PermissionsExt::from_mode(mode))
            .expect("chmod")
    };
    set_mode(0o644);
    let path = file.display().to_string();
    let run = warden(&server.url, &["agents", "--token-file", &path]).await;
    assert_eq!(run.code, 2, "{}", run.stdout);
    assert!(run.stderr.contains("chmod 600"), "{}", run.stderr);
    set_mode(0o600);
    let run = warden(&server.url, &["agents", "--token-file", &path]).await;
    assert_eq!(run.code, 0, "{}", run.stderr);
    let run = warden(&server.url, &["agents"]).await;
    assert_eq!(run.code, 0, "{}", run.stderr);

    assert_eq!(
        server.recorded.lock().authorizations,
        ["Bearer wdn_op_abc", "Bearer wdn_op_from_file", "<none>"]
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn tokens_are_created_listed_and_shown_once() {
    let server = start(false).await;
    let run = warden(
        &server.url,
        &[
            "token", "create", "--role", "viewer", "--name", "alice", "--ttl", "1h", "--json",
        ],
    )
    .await;
    assert_eq!(run.code, 0, "{}", run.stderr);
    let created = run.json();
    assert_eq!(created["secret"], "wdn_op_s3cr3t");
    assert_eq!(created["token"]["role"], "viewer");
    assert_eq!(created["token"]["expires"], "2026-11-26T22:30:05.250Z");
    let sent = server.recorded.lock().tokens_created.clone();
    assert_eq!(sent[0].ttl_ms, 3_600_000);
    assert_eq!(
        (sent[0].role.as_str(), sent[0].name.as_str()),
        ("viewer", "alice")
    );

    let run = warden(&server.url, &["token", "create", "--agent", "db1"]).await;
    assert_eq!(run.code, 0, "{}", run.stderr);
    assert!(
        run.stdout.contains("warden-agent enroll --token"),
        "{}",
        run.stdout
    );
    assert!(run.stdout.contains("wdn_op_s3cr3t"), "{}", run.stdout);

    // A role without a name, both kinds at once, or neither are refused before sending.
    for args in [
        &["token", "create", "--role", "admin"][..],
        &[
            "token", "create", "--role", "admin", "--name", "x", "--agent", "db1",
        ],
        &["token", "create"],
        &["token", "create", "--role", "root", "--name", "x"],
    ] {
        let run = warden(&server.url, args).await;
        assert_eq!(run.code, 2, "{args:?}: {}", run.stdout);
    }
    assert_eq!(server.recorded.lock().tokens_created.len(), 2);

    let run = warden(&server.url, &["tokens", "--json"]).await;
    assert_eq!(run.code, 0, "{}", run.stderr);
    let tokens = run.json();
    assert_eq!(tokens[0]["name"], "alice");
    assert!(tokens[0].get("secret").is_none(), "{tokens}");
    let run = warden(&server.url, &["tokens"]).await;
    assert!(run.stdout.contains("revoked"), "{}", run.stdout);

    let run = warden(&server.url, &["token", "revoke", "t-9"]).await;
    assert_eq!(run.code, 2);
    assert!(run.stderr.contains("warden tokens"), "{}", run.stderr);

    let run = warden(
        &server.url,
        &["agent", "revoke", "db1", "--reason", "host lost", "--json"],
    )
    .await;
    assert_eq!(run.code, 0, "{}", run.stderr);
    assert_eq!(run.json()["certificates_revoked"], 2);
}
