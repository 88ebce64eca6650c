//! Output of every entity, as a table for people or as JSON for scripts.
//!
//! Each entity is described once (its columns, its extra details, its JSON shape) and the same
//! description serves list views (one row per entity) and single views (one field per line).

use std::io::{IsTerminal, Write};

use comfy_table::{ColumnConstraint, ContentArrangement, Table, presets};
use serde::Serialize;
use warden_proto::v1;
use warden_proto::v1::order_result::Outcome as ResultOutcome;
use warden_shared::{OrderKind, OrderState};

use crate::error::CliError;
use crate::format;
use crate::json::{
    AgentJson, AgentRepositoryJson, ArtifactJson, AuditEventJson, AuditVerifyJson,
    CreatedTokenJson, DatabaseJson, DatabaseStatusJson, ExportJson, FleetStatusJson,
    MigrationStatusJson, NextWindowJson, OrderJson, PolicyResultJson, PruneJson, RevokedAgentJson,
    RolloutJson, RolloutTargetJson, RtoReportJson, RtoRowJson, TokenJson, WindowJson,
    artifact_corrupt, migrate_outcome, migrate_params, order_kind, order_kind_name, order_outcome,
    order_state, order_state_name, result_succeeded, source_artifact_id, version_number,
};

/// The RTO status of a database that misses its target.
pub const RTO_BREACH: &str = "breach";
/// RTO statuses as the coordinator names them, from good to bad, unknown last.
const RTO_STATUSES: [&str; 4] = ["ok", "at_risk", RTO_BREACH, "unknown"];
/// Database health verdicts as the coordinator names them, from good to bad, unknown last.
const HEALTH_STATES: [&str; 4] = ["healthy", "degraded", "down", "unknown"];

/// One kind of thing the CLI shows: agents, databases, orders, artifacts, audit events,
/// windows, RTO rows, database statuses.
pub trait Entity {
    type Json: Serialize;

    /// What a list of these is called, for "no artifacts".
    const PLURAL: &'static str;
    /// Column titles of the list view; `row` returns one cell for each.
    const COLUMNS: &'static [&'static str];

    fn to_json(&self) -> Self::Json;
    fn row(&self, now_ms: i64) -> Vec<String>;
    /// Further fields shown only in the single view, each only when it has a value.
    fn details(&self, _now_ms: i64) -> Vec<(&'static str, String)> {
        Vec::new()
    }
}

/// Prints a list: a JSON array, or a table with one row per entity.
pub fn print_list<E: Entity>(items: &[E], json: bool) -> Result<(), CliError> {
    if json {
        let docs: Vec<E::Json> = items.iter().map(Entity::to_json).collect();
        return print_json(&docs);
    }
    if items.is_empty() {
        return print_text(&format!("no {}", E::PLURAL));
    }
    print_text(&list_table(items, warden_shared::now_unix_ms()).trim_fmt())
}

/// Prints one entity: a JSON object, or one "FIELD  value" line per column and detail.
pub fn print_one<E: Entity>(item: &E, json: bool) -> Result<(), CliError> {
    if json {
        return print_json(&item.to_json());
    }
    print_text(&detail_table(item, warden_shared::now_unix_ms()).trim_fmt())
}

/// Prints one order; for a migration that failed after changing its database and was not
/// restored, says on stderr, where it cannot be missed, how to restore it.
pub fn print_order(order: &v1::Order, json: bool) -> Result<(), CliError> {
    print_one(order, json)?;
    if let Some(note) = restore_note(order) {
        eprintln!("{note}");
    }
    Ok(())
}

/// Prints the result of `audit verify`.
pub fn print_verify(verify: &v1::VerifyAuditResponse, json: bool) -> Result<(), CliError> {
    if json {
        return print_json(&AuditVerifyJson::from(verify));
    }
    let line = if verify.ok {
        format!("audit log intact: {} events checked", verify.events_checked)
    } else {
        format!(
            "audit log BROKEN at seq {}: {}",
            verify.first_broken_seq, verify.problem
        )
    };
    print_text(&line)
}

/// Prints when destructive work may start on a database (`windows next`).
pub fn print_next_window(next: &v1::NextWindowResponse, json: bool) -> Result<(), CliError> {
    if json {
        return print_json(&NextWindowJson::from(next));
    }
    print_text(&key_value_table(next_window_fields(next, warden_shared::now_unix_ms())).trim_fmt())
}

/// The `windows next` answer, one field per line.
pub fn next_window_fields(
    next: &v1::NextWindowResponse,
    now_ms: i64,
) -> Vec<(&'static str, String)> {
    let open = if next.open_window.is_empty() {
        "none open".to_owned()
    } else {
        format!(
            "{} open until {}",
            next.open_window,
            format::time_relative(next.open_until_unix_ms, now_ms)
        )
    };
    let freeze = if next.freeze_window.is_empty() {
        format::NONE.to_owned()
    } else {
        format!(
            "{} until {}",
            next.freeze_window,
            format::time_relative(next.freeze_until_unix_ms, now_ms)
        )
    };
    let next_opening = if next.next_start_unix_ms == 0 {
        "none within a year".to_owned()
    } else {
        format!(
            "{} {}",
            format::or_none(&next.next_window),
            span_text(next.next_start_unix_ms, next.next_end_unix_ms, now_ms)
        )
    };
    vec![
        ("DATABASE", next.database.clone()),
        ("LABELS", format::labels(&next.labels)),
        ("ALLOWED NOW", format::yes_no(next.allowed_now)),
        ("WINDOW", open),
        ("FREEZE", freeze),
        ("NEXT OPENING", next_opening),
    ]
}

/// Describes a span: "2026-11-29 01:00:00Z – 2026-11-29 03:00:00Z (in 2d 3h)".
fn span_text(start_ms: i64, end_ms: i64, now_ms: i64) -> String {
    format!(
        "{} – {} ({})",
        format::time(start_ms),
        format::time(end_ms),
        format::relative(start_ms, now_ms)
    )
}

/// Prints what `apply`, `window add` or `window rm` changed, or would change for a dry run.
pub fn print_policy_result(
    response: &v1::ApplyPolicyResponse,
    dry_run: bool,
    json: bool,
) -> Result<(), CliError> {
    if json {
        return print_json(&PolicyResultJson::new(response, dry_run));
    }
    print_text(&policy_result_text(response, dry_run))
}

/// One line per change ("+ window prod-sunday", "~ schedule nightly: cron: … -> …"), then
/// whether anything was applied.
pub fn policy_result_text(response: &v1::ApplyPolicyResponse, dry_run: bool) -> String {
    let mut lines: Vec<String> = response.changes.iter().map(change_line).collect();
    let version = response.version;
    lines.push(if response.changes.is_empty() {
        format!("no changes: policy version {version} stays in force")
    } else if dry_run {
        format!("dry run: nothing was applied; policy version {version} stays in force")
    } else if response.applied {
        format!("applied: policy version {version} is in force")
    } else {
        format!("not applied: policy version {version} stays in force")
    });
    lines.join("\n")
}

fn change_line(change: &v1::PolicyChange) -> String {
    let symbol = match change.op.as_str() {
        "added" => "+",
        "removed" => "-",
        "changed" => "~",
        _ => "?",
    };
    let mut line = format!("{symbol} {}", change.what);
    if !change.name.is_empty() {
        line.push(' ');
        line.push_str(&change.name);
    }
    if !change.detail.is_empty() {
        line.push_str(": ");
        line.push_str(&change.detail);
    }
    line
}

/// Prints the policy document exactly as the coordinator sent it.
pub fn print_export(export: &v1::ExportPolicyResponse, json: bool) -> Result<(), CliError> {
    if json {
        return print_json(&ExportJson::from(export));
    }
    let mut out = std::io::stdout().lock();
    out.write_all(export.toml.as_bytes())?;
    if !export.toml.is_empty() && !export.toml.ends_with('\n') {
        writeln!(out)?;
    }
    out.flush()?;
    Ok(())
}

/// Prints the decisions of a prune: the artifacts pruned (and kept, with `show_kept`), then a
/// summary with the prune orders.
pub fn print_prune(
    response: &v1::PruneResponse,
    dry_run: bool,
    show_kept: bool,
    json: bool,
) -> Result<(), CliError> {
    if json {
        return print_json(&PruneJson::new(response, dry_run));
    }
    let mut text = String::new();
    if let Some(table) = prune_table(&response.decisions, show_kept) {
        text.push_str(&table.trim_fmt());
        text.push('\n');
    }
    text.push_str(&prune_summary(response, dry_run));
    print_text(&text)
}

/// The table of prune decisions, or nothing when there is no row to show.
pub fn prune_table(decisions: &[v1::PruneDecision], show_kept: bool) -> Option<Table> {
    let shown: Vec<&v1::PruneDecision> =
        decisions.iter().filter(|d| d.prune || show_kept).collect();
    if shown.is_empty() {
        return None;
    }
    let mut table = new_table();
    let mut header = vec!["ARTIFACT", "DATABASE", "CREATED", "SIZE"];
    if show_kept {
        header.push("DECISION");
    }
    header.push("WHY");
    table.set_header(header);
    for decision in shown {
        let mut row = vec![
            decision.artifact_id.clone(),
            decision.database.clone(),
            format::time(decision.created_unix_ms),
            format::bytes(decision.size_bytes),
        ];
        if show_kept {
            row.push(if decision.prune { "prune" } else { "keep" }.to_owned());
        }
        row.push(format::or_none(&decision.why));
        table.add_row(row);
    }
    arrange_columns(&mut table);
    Some(table)
}

/// Says how much is pruned and kept, and which orders remove the files.
pub fn prune_summary(response: &v1::PruneResponse, dry_run: bool) -> String {
    let pruned: Vec<&v1::PruneDecision> = response.decisions.iter().filter(|d| d.prune).collect();
    let kept = response.decisions.len() - pruned.len();
    let bytes = format::bytes(pruned.iter().map(|d| d.size_bytes).sum());
    let kept = count(kept, "artifact");
    if pruned.is_empty() {
        return format!("nothing to prune; {kept} kept");
    }
    let pruning = count(pruned.len(), "artifact");
    if dry_run {
        return format!(
            "dry run: would prune {pruning} ({bytes}) and keep {kept}; nothing was removed"
        );
    }
    if response.order_ids.is_empty() {
        return format!("pruned {pruning} ({bytes}); kept {kept}");
    }
    let (noun, verb) = if response.order_ids.len() == 1 {
        ("order", "removes")
    } else {
        ("orders", "remove")
    };
    format!(
        "pruning {pruning} ({bytes}), keeping {kept}: {noun} {} {verb} the files (follow with `warden order ID --watch`)",
        response.order_ids.join(", ")
    )
}

/// Prints the RTO report: one row per database, worst first (the coordinator's order).
pub fn print_rto(report: &v1::RtoReportResponse, json: bool) -> Result<(), CliError> {
    if json {
        return print_json(&RtoReportJson::from(report));
    }
    print_list(&report.rows, false)
}

/// Prints the fleet status: agents online and databases counted by health and RTO status,
/// then one row per database, worst first.
pub fn print_status(status: &v1::FleetStatusResponse, json: bool) -> Result<(), CliError> {
    if json {
        return print_json(&FleetStatusJson::from(status));
    }
    let now_ms = warden_shared::now_unix_ms();
    let table = if status.databases.is_empty() {
        "no databases".to_owned()
    } else {
        list_table(&status.databases, now_ms).trim_fmt()
    };
    let mut text = format!("{}\n\n{table}", status_summary(status));
    if !status.repositories.is_empty() {
        text.push_str("\n\n");
        text.push_str(&list_table(&status.repositories, now_ms).trim_fmt());
    }
    print_text(&text)
}

/// The head of `warden status`: agents online, databases by health, databases by RTO status.
pub fn status_summary(status: &v1::FleetStatusResponse) -> String {
    let databases = &status.databases;
    format!(
        "agents: {} of {} online\ndatabases: {}\nrto: {}",
        status.agents_online,
        status.agents_total,
        tally(databases.iter().map(|d| d.health.as_str()), &HEALTH_STATES),
        tally(
            databases.iter().map(|d| d.rto_status.as_str()),
            &RTO_STATUSES
        ),
    )
}

/// Counts values by name: "2 healthy, 0 degraded, 1 down, 0 unknown". The `known` names come
/// first and always, then any other name the coordinator sent; an empty value is "unknown".
fn tally<'a>(values: impl Iterator<Item = &'a str>, known: &[&'a str]) -> String {
    let mut counts: Vec<(&str, usize)> = known.iter().map(|name| (*name, 0)).collect();
    for value in values {
        let value = if value.is_empty() { "unknown" } else { value };
        match counts.iter_mut().find(|(name, _)| *name == value) {
            Some((_, count)) => *count += 1,
            None => counts.push((value, 1)),
        }
    }
    counts
        .iter()
        .map(|(name, count)| format!("{count} {name}"))
        .collect::<Vec<_>>()
        .join(", ")
}

/// "1 artifact", "3 artifacts".
fn count(n: usize, noun: &str) -> String {
    if n == 1 {
        format!("1 {noun}")
    } else {
        format!("{n} {noun}s")
    }
}

/// Builds a "FIELD  value" table, the shape of every single view.
fn key_value_table(fields: Vec<(&'static str, String)>) -> Table {
    let mut table = new_table();
    for (name, value) in fields {
        table.add_row(vec![name.to_owned(), value]);
    }
    arrange_columns(&mut table);
    table
}

fn print_json<T: Serialize + ?Sized>(document: &T) -> Result<(), CliError> {
    let text = serde_json::to_string_pretty(document)
        .map_err(|err| CliError::Output(std::io::Error::other(err)))?;
    print_text(&text)
}

fn print_text(text: &str) -> Result<(), CliError> {
    let mut out = std::io::stdout().lock();
    writeln!(out, "{text}")?;
    out.flush()?;
    Ok(())
}

/// Narrower terminals get unwrapped rows: wrapping into them is less readable than scrolling.
const MIN_WRAP_WIDTH: u16 = 40;

fn new_table() -> Table {
    let mut table = Table::new();
    // Borderless, kubectl-like: easy to read and to grep.
    table.load_preset(presets::NOTHING);
    // Wrap to the terminal's width, unless it reports none worth wrapping to (a pty of
    // `script` or a CI runner says 0 columns).
    if std::io::stdout().is_terminal() && table.width().is_some_and(|w| w >= MIN_WRAP_WIDTH) {
        table.set_content_arrangement(ContentArrangement::Dynamic);
    }
    table
}

/// Sets the spacing between columns, and lets only the last column wrap: ids and times split
/// over lines are hard to read and to copy, while the last column holds free text (params,
/// repository, error) that wraps well.
fn arrange_columns(table: &mut Table) {
    let last = table.column_count().saturating_sub(1);
    for (index, column) in table.column_iter_mut().enumerate() {
        column.set_padding((0, 2));
        if index < last {
            column.set_constraint(ColumnConstraint::ContentWidth);
        }
    }
}

/// Builds the list view of `items`.
pub fn list_table<E: Entity>(items: &[E], now_ms: i64) -> Table {
    let mut table = new_table();
    table.set_header(E::COLUMNS.to_vec());
    for item in items {
        table.add_row(item.row(now_ms));
    }
    arrange_columns(&mut table);
    table
}

/// Builds the single view of `item`: its columns, then its details, one per line.
pub fn detail_table<E: Entity>(item: &E, now_ms: i64) -> Table {
    let fields = E::COLUMNS.iter().copied().zip(item.row(now_ms));
    key_value_table(fields.chain(item.details(now_ms)).collect())
}

impl Entity for v1::Agent {
    type Json = AgentJson;
    const PLURAL: &'static str = "agents";
    const COLUMNS: &'static [&'static str] = &[
        "NAME",
        "STATE",
        "VERSION",
        "LABELS",
        "DATABASES",
        "LAST SEEN",
        "REPOSITORY",
    ];

    fn to_json(&self) -> AgentJson {
        self.into()
    }

    fn row(&self, now_ms: i64) -> Vec<String> {
        vec![
            self.name.clone(),
            if self.online { "online" } else { "offline" }.to_owned(),
            format::or_none(&self.version),
            format::labels(&self.labels),
            self.database_count.to_string(),
            format::ago(self.last_seen_unix_ms, now_ms),
            format::or_none(&self.repository),
        ]
    }
}

impl Entity for v1::Token {
    type Json = TokenJson;
    const PLURAL: &'static str = "tokens";
    const COLUMNS: &'static [&'static str] = &[
        "ID",
        "KIND",
        "NAME",
        "ROLE",
        "STATE",
        "EXPIRES",
        "CREATED BY",
    ];

    fn to_json(&self) -> TokenJson {
        self.into()
    }

    fn row(&self, now_ms: i64) -> Vec<String> {
        let state = if self.revoked_unix_ms != 0 {
            "revoked"
        } else if self.expires_unix_ms <= now_ms {
            "expired"
        } else if self.used_unix_ms != 0 {
            "used"
        } else {
            "active"
        };
        vec![
            self.id.clone(),
            self.kind.clone(),
            self.name.clone(),
            format::or_none(&self.role),
            state.to_owned(),
            format::time_relative(self.expires_unix_ms, now_ms),
            self.created_by.clone(),
        ]
    }
}

/// Prints a new token and its secret, which nothing shows again.
pub fn print_created_token(created: &v1::CreateTokenResponse, json: bool) -> Result<(), CliError> {
    if json {
        return print_json(&CreatedTokenJson {
            token: created.token.as_ref().map(TokenJson::from),
            secret: created.secret.clone(),
        });
    }
    if let Some(token) = &created.token {
        print_one(token, false)?;
    }
    let hint = match created.token.as_ref().map(|t| t.kind.as_str()) {
        Some("enrollment") => "warden-agent enroll --token",
        _ => "WARDEN_TOKEN or --token-file for the CLI",
    };
    print_text(&format!(
        "\nsecret (shown once; for {hint}):\n{}",
        created.secret
    ))
}

pub fn print_revoked_agent(revoked: &v1::RevokeAgentResponse, json: bool) -> Result<(), CliError> {
    if json {
        return print_json(&RevokedAgentJson {
            agent: revoked.agent.clone(),
            certificates_revoked: revoked.certificates_revoked,
        });
    }
    print_text(&format!(
        "agent {} revoked: {} certificate(s); it can connect again only after enrolling with \
         a new token",
        revoked.agent, revoked.certificates_revoked
    ))
}

impl Entity for v1::Database {
    type Json = DatabaseJson;
    const PLURAL: &'static str = "databases";
    const COLUMNS: &'static [&'static str] = &[
        "DATABASE",
        "AGENT",
        "LABELS",
        "LAST BACKUP",
        "LAST ARTIFACT",
    ];

    fn to_json(&self) -> DatabaseJson {
        self.into()
    }

    fn row(&self, now_ms: i64) -> Vec<String> {
        let last_backup = if self.last_backup_unix_ms == 0 {
            "never".to_owned()
        } else {
            format!(
                "{} ({})",
                format::time(self.last_backup_unix_ms),
                format::ago(self.last_backup_unix_ms, now_ms)
            )
        };
        vec![
            self.id.clone(),
            if self.agent_online {
                "online"
            } else {
                "offline"
            }
            .to_owned(),
            format::labels(&self.labels),
            last_backup,
            format::or_none(&self.last_artifact_id),
        ]
    }
}

/// Describes why a held order waits and when it may start: "no maintenance window is open;
/// may start at 2026-11-29 01:00:00Z (in 2d 3h)", the time relative to `now_ms` when given.
/// Nothing for an order that is not held.
pub fn held_note(order: &v1::Order, now_ms: Option<i64>) -> Option<String> {
    if order_state(order) != Some(OrderState::Held) {
        return None;
    }
    let reason = if order.phase.is_empty() {
        "waiting to start"
    } else {
        order.phase.as_str()
    };
    Some(if order.held_until_unix_ms > 0 {
        let at = match now_ms {
            Some(now_ms) => format::time_relative(order.held_until_unix_ms, now_ms),
            None => format::time(order.held_until_unix_ms),
        };
        format!("{reason}; may start at {at}")
    } else {
        reason.to_owned()
    })
}

/// Describes how far a running order got: "12.3 MiB at 4.5 MiB/s".
pub fn order_progress(order: &v1::Order) -> String {
    if order.progress_bytes == 0 {
        return format::NONE.to_owned();
    }
    let bytes = format::bytes(order.progress_bytes);
    // A rate is only meaningful while the work is moving.
    match format::rate(order.progress_bytes_per_sec) {
        Some(rate) if !order_state(order).is_some_and(OrderState::is_final) => {
            format!("{bytes} at {rate}")
        }
        _ => bytes,
    }
}

impl Entity for v1::Order {
    type Json = OrderJson;
    const PLURAL: &'static str = "orders";
    const COLUMNS: &'static [&'static str] = &[
        "ID",
        "KIND",
        "DATABASE",
        "STATE",
        "PHASE",
        "PROGRESS",
        "CREATED",
        "REQUESTED BY",
    ];

    fn to_json(&self) -> OrderJson {
        self.into()
    }

    fn row(&self, now_ms: i64) -> Vec<String> {
        let state = if self.emergency {
            format!("{} (emergency)", order_state_name(self))
        } else {
            order_state_name(self).to_owned()
        };
        vec![
            self.id.clone(),
            order_kind_label(self),
            self.database.clone(),
            state,
            held_note(self, Some(now_ms)).unwrap_or_else(|| format::or_none(&self.phase)),
            order_progress(self),
            format::time(self.created_unix_ms),
            format::or_none(&self.requested_by),
        ]
    }

    fn details(&self, now_ms: i64) -> Vec<(&'static str, String)> {
        let mut details = Vec::new();
        if !self.reason.is_empty() {
            details.push(("REASON", self.reason.clone()));
        }
        if self.emergency {
            details.push((
                "EMERGENCY",
                "yes: started without waiting for a maintenance window".to_owned(),
            ));
        }
        if !self.safety_backup_order_id.is_empty() {
            details.push(("SAFETY BACKUP", self.safety_backup_order_id.clone()));
        }
        if self.deadline_unix_ms != 0 {
            details.push((
                "DEADLINE",
                format::time_relative(self.deadline_unix_ms, now_ms),
            ));
        }
        details.push(("ATTEMPTS", self.attempts.to_string()));
        if self.started_unix_ms != 0 {
            details.push(("STARTED", format::time(self.started_unix_ms)));
        }
        if self.finished_unix_ms != 0 {
            details.push(("FINISHED", format::time(self.finished_unix_ms)));
            if self.started_unix_ms != 0 {
                let took = u64::try_from(self.finished_unix_ms - self.started_unix_ms).unwrap_or(0);
                details.push(("TOOK", format::millis(took)));
            }
        }
        if !self.error.is_empty() {
            details.push(("ERROR", self.error.clone()));
        }
        let source_artifact = source_artifact_id(self);
        if let Some(artifact) = source_artifact {
            details.push(("ARTIFACT", artifact.to_owned()));
        }
        if let Some(v1::order_spec::Params::Drill(drill)) =
            self.spec.as_ref().and_then(|s| s.params.as_ref())
            && !drill.source_database.is_empty()
        {
            details.push((
                "DRILL OF",
                format!(
                    "{} (on the server of {})",
                    drill.source_database, self.database
                ),
            ));
        }
        // Also for a drill that failed before it had an outcome to report (a corrupt artifact).
        if order_kind(self) == Some(OrderKind::Drill) && self.result.is_some() {
            let verdict = if result_succeeded(self) {
                "passed"
            } else {
                "FAILED"
            };
            details.push(("DRILL", verdict.to_owned()));
        }
        if artifact_corrupt(self) {
            details.push((
                "ARTIFACT CORRUPT",
                format!(
                    "yes: the failure proves {} unusable and it is marked corrupt; pick another with `warden artifacts {}`",
                    source_artifact.unwrap_or("the artifact"),
                    self.database
                ),
            ));
        }
        match order_outcome(self) {
            Some(ResultOutcome::Backup(backup)) => {
                details.push(("ARTIFACT", format::or_none(&backup.artifact_id)));
                if backup.verified {
                    details.push(("READ BACK", "yes: the dump matched its sha256".to_owned()));
                }
            }
            Some(ResultOutcome::Prune(prune)) => {
                details.push((
                    "REMOVED",
                    if prune.removed_artifact_ids.is_empty() {
                        format::NONE.to_owned()
                    } else {
                        prune.removed_artifact_ids.join(", ")
                    },
                ));
            }
            Some(ResultOutcome::Restore(restore)) => {
                details.push(("RESTORED INTO", format::or_none(&restore.database)));
                details.push((
                    "VERIFIED",
                    verified(restore.tables_verified, restore.rows_verified),
                ));
                if !restore.phases.is_empty() {
                    details.push(("PHASES", phase_timings(&restore.phases)));
                }
            }
            Some(ResultOutcome::Drill(drill)) => {
                details.push(("SCRATCH DATABASE", format::or_none(&drill.scratch_database)));
                details.push((
                    "VERIFIED",
                    verified(drill.tables_verified, drill.rows_verified),
                ));
                if drill.restore_millis != 0 {
                    details.push(("RESTORE TIME", restore_time(drill)));
                }
                if !drill.phases.is_empty() {
                    details.push(("PHASES", phase_timings(&drill.phases)));
                }
                details.extend(
                    drill
                        .checks
                        .iter()
                        .map(|check| ("CHECK", check_line(check))),
                );
            }
            Some(ResultOutcome::Health(health)) => details.extend(health_fields(health)),
            // Below, with what the order was asked to do.
            Some(ResultOutcome::Migrate(_)) | None => {}
        }
        if let Some(params) = migrate_params(self) {
            details.extend(migration_fields(self, params));
        }
        details
    }
}

/// The kind of an order as tables show it: "migrate status" for a migrate order that only
/// compares, so `warden orders` tells it from one that changes the database.
pub fn order_kind_label(order: &v1::Order) -> String {
    if migrate_params(order).is_some_and(|params| params.status_only) {
        format!("{} status", order_kind_name(order))
    } else {
        order_kind_name(order).to_owned()
    }
}

/// What a migrate order was asked to do, then what it did: the pre-migration backup, the
/// files applied, already applied, pending, changed and unknown, the file that failed, the
/// checks, and whether the database was restored or how to restore it.
fn migration_fields(order: &v1::Order, params: &v1::MigrateParams) -> Vec<(&'static str, String)> {
    use v1::migrate_params::Source;
    let mut fields = Vec::new();
    match &params.source {
        Some(Source::Sql(sql)) => fields.push((
            "FILES",
            join_or_none(
                sql.files
                    .iter()
                    .map(|f| migration_name(&f.version, &f.name)),
            ),
        )),
        Some(Source::Command(name)) => fields.push(("COMMAND", name.clone())),
        None => {}
    }
    if params.status_only {
        fields.push((
            "MODE",
            "status only: compares the files with what the database recorded; changes nothing"
                .to_owned(),
        ));
    }
    if !params.on_check_failure.is_empty() {
        fields.push(("ON CHECK FAILURE", params.on_check_failure.clone()));
    }
    if !params.rollout_id.is_empty() {
        fields.push(("ROLLOUT", params.rollout_id.clone()));
    }
    let outcome = migrate_outcome(order);
    let pre_migration = outcome
        .map(|o| o.pre_migration_artifact_id.as_str())
        .filter(|id| !id.is_empty())
        .or_else(|| {
            params
                .pre_migration
                .as_ref()
                .map(|p| p.artifact_id.as_str())
        })
        .filter(|id| !id.is_empty());
    if let Some(artifact) = pre_migration {
        fields.push(("PRE-MIGRATION BACKUP", artifact.to_owned()));
    }
    let Some(outcome) = outcome else {
        return fields;
    };
    let command_mode = matches!(params.source, Some(Source::Command(_)));
    if command_mode && outcome.applied.is_empty() && outcome.already_applied.is_empty() {
        // A migration command keeps its own books: nothing to count here.
    } else if params.status_only {
        // A status order applies nothing: whatever it found recorded was there before.
        let recorded = outcome.applied.len() + outcome.already_applied.len();
        fields.push(("ALREADY APPLIED", recorded.to_string()));
    } else {
        fields.push((
            "APPLIED",
            join_or_none(outcome.applied.iter().map(|m| {
                format!(
                    "{} ({})",
                    migration_name(&m.version, &m.name),
                    format::millis(m.duration_ms)
                )
            })),
        ));
        fields.push(("ALREADY APPLIED", outcome.already_applied.len().to_string()));
    }
    if !outcome.pending.is_empty() {
        let pending = join_or_none(
            outcome
                .pending
                .iter()
                .map(|m| migration_name(&m.version, &m.name)),
        );
        fields.push((
            "PENDING",
            if ended_unsuccessfully(order) && !params.status_only {
                format!("{pending} (not reached)")
            } else {
                pending
            },
        ));
    }
    fields.extend(outcome.changed.iter().map(|m| {
        (
            "CHANGED",
            format!(
                "{}: applied with sha256 {}, the file now has {}",
                migration_name(&m.version, &m.name),
                short_sha(&m.recorded_sha256),
                short_sha(&m.file_sha256)
            ),
        )
    }));
    if !outcome.unknown.is_empty() {
        fields.push((
            "UNKNOWN",
            join_or_none(
                outcome
                    .unknown
                    .iter()
                    .map(|m| migration_name(&m.version, &m.name)),
            ),
        ));
    }
    if !outcome.failed_version.is_empty() {
        fields.push(("FAILED FILE", failed_file(params, outcome)));
    }
    fields.extend(
        outcome
            .checks
            .iter()
            .map(|check| ("CHECK", check_line(check))),
    );
    if outcome.restored {
        fields.push((
            "RESTORED",
            format!(
                "yes: the pre-migration backup {} was restored over {}, as it was before the migration",
                pre_migration.unwrap_or("of the database"),
                order.database
            ),
        ));
    }
    if !outcome.restore_command.is_empty() {
        fields.push(("RESTORE WITH", outcome.restore_command.clone()));
    }
    if !outcome.phases.is_empty() {
        fields.push(("PHASES", phase_timings(&outcome.phases)));
    }
    let output = outcome.command_output.trim_end();
    if !output.is_empty() {
        fields.push(("OUTPUT", output.to_owned()));
    }
    fields
}

/// Returns whether the order ended in any other way than success.
fn ended_unsuccessfully(order: &v1::Order) -> bool {
    order_state(order).is_some_and(|state| state.is_final() && state != OrderState::Succeeded)
}

/// "0001_create_users".
fn migration_name(version: &str, name: &str) -> String {
    if name.is_empty() {
        version.to_owned()
    } else {
        format!("{version}_{name}")
    }
}

/// The file whose SQL failed, by its file name when the order carried it.
fn failed_file(params: &v1::MigrateParams, outcome: &v1::MigrateOutcome) -> String {
    let version = outcome.failed_version.as_str();
    let name = match &params.source {
        Some(v1::migrate_params::Source::Sql(sql)) => sql
            .files
            .iter()
            .find(|f| f.version == version)
            .map(|f| f.name.as_str()),
        _ => None,
    }
    .or_else(|| {
        outcome
            .pending
            .iter()
            .find(|m| m.version == version)
            .map(|m| m.name.as_str())
    });
    match name {
        Some(name) => format!("{}.sql", migration_name(version, name)),
        None => version.to_owned(),
    }
}

/// The first 12 hex digits of a checksum, enough to tell two apart.
fn short_sha(sha256: &str) -> String {
    if sha256.is_empty() {
        return format::NONE.to_owned();
    }
    sha256.chars().take(12).collect()
}

/// Joins with ", ", or "none".
fn join_or_none(items: impl Iterator<Item = String>) -> String {
    let joined = items.collect::<Vec<_>>().join(", ");
    if joined.is_empty() {
        "none".to_owned()
    } else {
        joined
    }
}

/// What to say, prominently, when a migration failed after changing its database and was not
/// restored: the exact command that brings back the state from before it.
pub fn restore_note(order: &v1::Order) -> Option<String> {
    let outcome = migrate_outcome(order)?;
    if !ended_unsuccessfully(order) || outcome.restore_command.is_empty() || outcome.restored {
        return None;
    }
    Some(format!(
        "migration order {} failed after changing {} and did not restore it; to bring back the state from before the migration, run:\n\n    {}",
        order.id, order.database, outcome.restore_command
    ))
}

/// Prints what `warden migrate status` found.
pub fn print_migration_status(
    order: &v1::Order,
    status: &v1::MigrateOutcome,
    json: bool,
) -> Result<(), CliError> {
    if json {
        return print_json(&MigrationStatusJson::new(order, status));
    }
    print_text(&migration_status_text(order, status))
}

/// The head of `migrate status` (database, order, counts), the files by version with what
/// the database recorded of each, and what to do about changed files.
pub fn migration_status_text(order: &v1::Order, status: &v1::MigrateOutcome) -> String {
    let applied_count = status.applied.len() + status.already_applied.len();
    let mut text = key_value_table(vec![
        ("DATABASE", order.database.clone()),
        ("ORDER", order.id.clone()),
        (
            "FILES",
            format!(
                "{applied_count} applied, {} pending, {} changed, {} unknown",
                status.pending.len(),
                status.changed.len(),
                status.unknown.len()
            ),
        ),
    ])
    .trim_fmt();
    let mut rows: Vec<(u64, Vec<String>)> = Vec::new();
    // A file's status, version and name, then when it was applied, how long it took, its sha256.
    let row = |state: &str, version: &str, name: &str, [at, took, sha256]: [String; 3]| {
        let cells = vec![
            state.to_owned(),
            version.to_owned(),
            format::or_none(name),
            at,
            took,
            sha256,
        ];
        (version_number(version), cells)
    };
    let recorded = |state: &str, m: &v1::AppliedMigration| {
        let at = format::time(m.applied_unix_ms);
        row(
            state,
            &m.version,
            &m.name,
            [at, format::millis(m.duration_ms), short_sha(&m.sha256)],
        )
    };
    let none = || format::NONE.to_owned();
    rows.extend(
        status
            .applied
            .iter()
            .chain(&status.already_applied)
            .map(|m| recorded("applied", m)),
    );
    rows.extend(status.changed.iter().map(|m| {
        let shas = format!(
            "applied {}, file now {}",
            short_sha(&m.recorded_sha256),
            short_sha(&m.file_sha256)
        );
        row("CHANGED", &m.version, &m.name, [none(), none(), shas])
    }));
    rows.extend(
        status
            .pending
            .iter()
            .map(|m| row("pending", &m.version, &m.name, [none(), none(), none()])),
    );
    rows.extend(status.unknown.iter().map(|m| recorded("unknown", m)));
    // Stable: a version listed twice keeps the order above.
    rows.sort_by_key(|(number, _)| *number);
    text.push_str("\n\n");
    if rows.is_empty() {
        text.push_str("no migrations: none in the directory, none recorded");
    } else {
        let mut table = new_table();
        table.set_header(vec![
            "STATUS",
            "VERSION",
            "NAME",
            "APPLIED AT",
            "TOOK",
            "SHA256",
        ]);
        for (_, row) in rows {
            table.add_row(row);
        }
        arrange_columns(&mut table);
        text.push_str(&table.trim_fmt());
    }
    if !status.changed.is_empty() {
        text.push_str(&format!(
            "\n\n{} changed since it was applied: a migration that ran must stay as it ran; put it back and make the change in a new migration file",
            count(status.changed.len(), "applied file")
        ));
    }
    if !status.unknown.is_empty() {
        text.push_str(&format!(
            "\n\n{} recorded in the database but not in the directory: applied from elsewhere, or its file was removed",
            count(status.unknown.len(), "migration")
        ));
    }
    text
}

/// Prints a rollout: its fields, then one row per database.
pub fn print_rollout(rollout: &v1::Rollout, json: bool) -> Result<(), CliError> {
    if json {
        return print_json(&RolloutJson::from(rollout));
    }
    print_text(&rollout_text(rollout, warden_shared::now_unix_ms()))
}

/// The single view of a rollout and the table of its databases.
pub fn rollout_text(rollout: &v1::Rollout, now_ms: i64) -> String {
    let targets = if rollout.targets.is_empty() {
        "no databases selected".to_owned()
    } else {
        list_table(&rollout.targets, now_ms).trim_fmt()
    };
    format!("{}\n\n{targets}", detail_table(rollout, now_ms).trim_fmt())
}

/// Where a rollout stands, in one line: "wave 2 of 3 · 2 succeeded, 1 running, 5 waiting".
pub fn rollout_progress(rollout: &v1::Rollout) -> String {
    format!("wave {} · {}", wave(rollout), target_states(rollout))
}

/// "2 of 3".
fn wave(rollout: &v1::Rollout) -> String {
    format!("{} of {}", rollout.current_wave, rollout.wave_count)
}

/// The databases counted by state, in the order they first appear: "2 succeeded, 5 waiting".
fn target_states(rollout: &v1::Rollout) -> String {
    if rollout.targets.is_empty() {
        return "no databases".to_owned();
    }
    tally(rollout.targets.iter().map(|t| t.state.as_str()), &[])
}

/// "0001_create_users" for one file, "3 files, 0001 to 0003" for more, "command NAME".
fn migration_summary(rollout: &v1::Rollout) -> String {
    if !rollout.command.is_empty() {
        return format!("command {}", rollout.command);
    }
    match rollout.migrations.as_slice() {
        [] => format::NONE.to_owned(),
        [only] => migration_name(&only.version, &only.name),
        [first, .., last] => format!(
            "{} files, {} to {}",
            rollout.migrations.len(),
            first.version,
            last.version
        ),
    }
}

impl Entity for v1::Rollout {
    type Json = RolloutJson;
    const PLURAL: &'static str = "rollouts";
    const COLUMNS: &'static [&'static str] = &[
        "ID",
        "STATE",
        "SELECTOR",
        "WAVE",
        "MIGRATION",
        "CREATED",
        "REQUESTED BY",
        "DATABASES",
    ];

    fn to_json(&self) -> RolloutJson {
        self.into()
    }

    fn row(&self, _now_ms: i64) -> Vec<String> {
        vec![
            self.id.clone(),
            format::or_none(&self.state),
            selector_text(&self.selector),
            wave(self),
            migration_summary(self),
            format::time(self.created_unix_ms),
            format::or_none(&self.requested_by),
            target_states(self),
        ]
    }

    fn details(&self, _now_ms: i64) -> Vec<(&'static str, String)> {
        let mut details = vec![("WAVES", format::or_none(&self.waves))];
        if self.migrations.len() > 1 {
            details.push((
                "FILES",
                join_or_none(
                    self.migrations
                        .iter()
                        .map(|m| migration_name(&m.version, &m.name)),
                ),
            ));
        }
        if !self.reason.is_empty() {
            details.push(("REASON", self.reason.clone()));
        }
        if self.finished_unix_ms != 0 {
            details.push(("FINISHED", format::time(self.finished_unix_ms)));
        }
        if !self.error.is_empty() {
            details.push(("ERROR", self.error.clone()));
        }
        details
    }
}

impl Entity for v1::RolloutTarget {
    type Json = RolloutTargetJson;
    const PLURAL: &'static str = "databases";
    const COLUMNS: &'static [&'static str] = &[
        "WAVE",
        "DATABASE",
        "STATE",
        "ORDER",
        "PRE-MIGRATION BACKUP",
        "APPLIED",
        "ERROR",
    ];

    fn to_json(&self) -> RolloutTargetJson {
        self.into()
    }

    fn row(&self, _now_ms: i64) -> Vec<String> {
        vec![
            self.wave.to_string(),
            self.database.clone(),
            format::or_none(&self.state),
            format::or_none(&self.order_id),
            format::or_none(&self.pre_migration_artifact_id),
            format::or_none(&self.applied.join(", ")),
            format::or_none(&self.error),
        ]
    }
}

/// A selector as tables show it: "(all)" for the whole fleet.
fn selector_text(selector: &str) -> String {
    if selector.trim().is_empty() {
        "(all)".to_owned()
    } else {
        selector.to_owned()
    }
}

/// "3 tables, 950 rows".
fn verified(tables: u32, rows: u64) -> String {
    format!("{tables} tables, {rows} rows")
}

/// "fetch 12ms, pg_restore 1.2s, cleanup 30ms".
fn phase_timings(phases: &[v1::PhaseTiming]) -> String {
    phases
        .iter()
        .map(|p| format!("{} {}", p.phase, format::millis(p.millis)))
        .collect::<Vec<_>>()
        .join(", ")
}

/// A drill's time to a usable copy, with the throughput that predicts bigger restores:
/// "1.5s for 200.0 KiB (133.3 KiB/s)".
fn restore_time(drill: &v1::DrillOutcome) -> String {
    let took = format::millis(drill.restore_millis);
    if drill.raw_bytes == 0 || drill.restore_millis == 0 {
        return took;
    }
    // Precision loss above 2^53 bytes is far below what a rate shows.
    #[allow(clippy::cast_precision_loss)]
    let per_sec = drill.raw_bytes as f64 * 1000.0 / drill.restore_millis as f64;
    let size = format::bytes(drill.raw_bytes);
    match format::rate(per_sec) {
        Some(rate) => format!("{took} for {size} ({rate})"),
        None => format!("{took} for {size}"),
    }
}

/// "has_orders: passed", "fk_intact: FAILED: returned false".
fn check_line(check: &v1::CheckResult) -> String {
    match (check.passed, check.error.is_empty()) {
        (true, _) => format!("{}: passed", check.name),
        (false, true) => format!("{}: FAILED", check.name),
        (false, false) => format!("{}: FAILED: {}", check.name, check.error),
    }
}

/// "2ms".
fn latency(health: &v1::HealthReport) -> String {
    format!("{}ms", health.latency_ms)
}

/// "5 of 100".
fn connections(health: &v1::HealthReport) -> String {
    format!("{} of {}", health.connections_used, health.connections_max)
}

/// The fields of a health report, each only when the report has it.
fn health_fields(health: &v1::HealthReport) -> Vec<(&'static str, String)> {
    let mut fields = vec![("CONNECTED", format::yes_no(health.connected))];
    if health.connected {
        fields.extend([
            ("LATENCY", latency(health)),
            ("SERVER VERSION", format::or_none(&health.server_version)),
            ("SIZE", format::bytes(health.database_size_bytes)),
            ("TABLES", health.table_count.to_string()),
            ("CONNECTIONS", connections(health)),
            ("IN RECOVERY", format::yes_no(health.in_recovery)),
        ]);
        if health.uptime_seconds != 0 {
            let uptime = format::duration(health.uptime_seconds.saturating_mul(1000));
            fields.push(("UPTIME", uptime));
        }
        if !health.replication_role.is_empty() {
            fields.push(("REPLICATION", replication(health)));
        }
        fields.push((
            "OLDEST TRANSACTION",
            if health.oldest_transaction_seconds == 0 {
                "none open".to_owned()
            } else {
                format::duration(health.oldest_transaction_seconds.saturating_mul(1000))
            },
        ));
        fields.push(("WRAPAROUND AGE", health.wraparound_age.to_string()));
    }
    // The repository's file system is the agent's, reachable whether the database is or not.
    if health.repository_total_bytes != 0 {
        fields.push((
            "REPOSITORY",
            format!(
                "{} free of {}",
                format::bytes(health.repository_free_bytes),
                format::bytes(health.repository_total_bytes)
            ),
        ));
    }
    fields
}

/// "standby, 1.2s behind", "primary, standbys up to 340ms behind", "primary".
fn replication(health: &v1::HealthReport) -> String {
    let lag = format::millis(health.replication_lag_ms);
    match (health.replication_role.as_str(), health.replication_lag_ms) {
        ("standby", _) => format!("standby, {lag} behind"),
        ("primary", 1..) => format!("primary, standbys up to {lag} behind"),
        (role, _) => role.to_owned(),
    }
}

impl Entity for v1::Artifact {
    type Json = ArtifactJson;
    const PLURAL: &'static str = "artifacts";
    const COLUMNS: &'static [&'static str] = &[
        "ID", "DATABASE", "STATE", "TRIGGER", "CREATED", "SIZE", "RAW", "VERIFIED",
    ];

    fn to_json(&self) -> ArtifactJson {
        self.into()
    }

    fn row(&self, _now_ms: i64) -> Vec<String> {
        vec![
            self.id.clone(),
            self.database.clone(),
            // Shouted, so a corrupt artifact is not missed among complete ones.
            if self.state == "corrupt" {
                "CORRUPT".to_owned()
            } else {
                format::or_none(&self.state)
            },
            format::or_none(&self.trigger),
            format::time(self.created_unix_ms),
            format::bytes(self.size_bytes),
            format::bytes(self.raw_bytes),
            format::yes_no(self.verified),
        ]
    }

    fn details(&self, _now_ms: i64) -> Vec<(&'static str, String)> {
        vec![
            ("ORDER", format::or_none(&self.order_id)),
            ("SERVER VERSION", format::or_none(&self.server_version)),
            ("PG_DUMP", format::or_none(&self.pg_dump_version)),
            ("PATH", format::or_none(&self.path)),
            ("SHA256", format::or_none(&self.sha256)),
        ]
    }
}

impl Entity for v1::AuditEvent {
    type Json = AuditEventJson;
    const PLURAL: &'static str = "audit events";
    const COLUMNS: &'static [&'static str] = &[
        "SEQ", "AT", "ACTOR", "ACTION", "TARGET", "OUTCOME", "PARAMS",
    ];

    fn to_json(&self) -> AuditEventJson {
        self.into()
    }

    fn row(&self, _now_ms: i64) -> Vec<String> {
        vec![
            self.seq.to_string(),
            format::time(self.at_unix_ms),
            format::or_none(&self.actor),
            format::or_none(&self.action),
            format::or_none(&self.target),
            format::or_none(&self.outcome),
            compact_params(&self.params_json),
        ]
    }

    fn details(&self, _now_ms: i64) -> Vec<(&'static str, String)> {
        vec![
            ("PREV HASH", format::or_none(&self.prev_hash)),
            ("HASH", format::or_none(&self.hash)),
        ]
    }
}

impl Entity for v1::WindowInfo {
    type Json = WindowJson;
    const PLURAL: &'static str = "windows";
    const COLUMNS: &'static [&'static str] = &[
        "NAME",
        "KIND",
        "SELECTOR",
        "TIMEZONE",
        "RECURRENCE",
        "NOW",
        "NEXT OPENING",
    ];

    fn to_json(&self) -> WindowJson {
        self.into()
    }

    fn row(&self, now_ms: i64) -> Vec<String> {
        let freeze = self.kind == "freeze";
        let now = match (self.open_until_unix_ms, freeze) {
            (0, false) => "closed".to_owned(),
            (0, true) => "not in force".to_owned(),
            (until, false) => format!("open until {}", format::time_relative(until, now_ms)),
            (until, true) => format!("in force until {}", format::time_relative(until, now_ms)),
        };
        let next = if self.next_start_unix_ms == 0 {
            "none within a year".to_owned()
        } else {
            span_text(self.next_start_unix_ms, self.next_end_unix_ms, now_ms)
        };
        vec![
            self.name.clone(),
            format::or_none(&self.kind),
            selector_text(&self.selector),
            format::or_none(&self.timezone),
            format::or_none(&self.recurrence),
            now,
            next,
        ]
    }
}

impl Entity for v1::RtoRow {
    type Json = RtoRowJson;
    const PLURAL: &'static str = "databases";
    const COLUMNS: &'static [&'static str] = &[
        "DATABASE",
        "TIER",
        "STATUS",
        "RTO",
        "LAST DRILL",
        "PREDICTED",
        "RPO",
        "BACKUP AGE",
        "WHY",
    ];

    fn to_json(&self) -> RtoRowJson {
        self.into()
    }

    fn row(&self, now_ms: i64) -> Vec<String> {
        let last_drill = match (self.last_drill_unix_ms, self.last_drill_passed) {
            (0, _) => "never".to_owned(),
            (at, true) => format!(
                "{} ({})",
                format::millis(self.last_drill_ms),
                format::ago(at, now_ms)
            ),
            (at, false) => format!("failed ({})", format::ago(at, now_ms)),
        };
        let backup_age = if self.newest_backup_unix_ms == 0 {
            "never".to_owned()
        } else {
            format::duration(self.newest_backup_age_ms)
        };
        vec![
            self.database.clone(),
            format::or_none(&self.tier),
            format::or_none(&self.status),
            known(self.rto_ms, format::duration),
            last_drill,
            known(self.predicted_restore_ms, format::millis),
            known(self.rpo_ms, format::duration),
            backup_age,
            reasons(&self.reasons),
        ]
    }
}

impl Entity for v1::DatabaseStatus {
    type Json = DatabaseStatusJson;
    const PLURAL: &'static str = "databases";
    // WHY last: free text wraps there, see `arrange_columns`.
    const COLUMNS: &'static [&'static str] = &[
        "DATABASE",
        "HEALTH",
        "LATENCY",
        "SIZE",
        "CONNECTIONS",
        "NEWEST BACKUP",
        "RTO",
        "WHY",
    ];

    fn to_json(&self) -> DatabaseStatusJson {
        self.into()
    }

    fn row(&self, now_ms: i64) -> Vec<String> {
        let connected = self.report.as_ref().filter(|report| report.connected);
        let measured = |show: fn(&v1::HealthReport) -> String| {
            connected.map_or_else(|| format::NONE.to_owned(), show)
        };
        vec![
            self.database.clone(),
            format::or_none(&self.health),
            measured(latency),
            measured(|report| format::bytes(report.database_size_bytes)),
            measured(connections),
            format::ago(self.newest_backup_unix_ms, now_ms),
            format::or_none(&self.rto_status),
            reasons(&self.health_reasons),
        ]
    }
}

impl Entity for v1::AgentRepository {
    type Json = AgentRepositoryJson;
    const PLURAL: &'static str = "repositories";
    // ERROR last: free text wraps there, see `arrange_columns`.
    const COLUMNS: &'static [&'static str] =
        &["AGENT", "REPOSITORY", "STATE", "PROBE", "CHECKED", "ERROR"];

    fn to_json(&self) -> AgentRepositoryJson {
        self.into()
    }

    fn row(&self, now_ms: i64) -> Vec<String> {
        let health = self.health.clone().unwrap_or_default();
        let state = match (self.agent_online, health.ok) {
            (false, _) => "agent offline",
            (true, true) => "ok",
            (true, false) => "failing",
        };
        vec![
            self.agent.clone(),
            self.repository.clone(),
            state.to_owned(),
            if health.ok {
                format::millis(health.probe_ms)
            } else {
                format::NONE.to_owned()
            },
            format::ago(health.checked_unix_ms, now_ms),
            format::or_none(&health.error),
        ]
    }
}

/// Formats a wire value whose 0 means unknown or none, "-" then.
fn known(value: u64, show: fn(u64) -> String) -> String {
    if value == 0 {
        format::NONE.to_owned()
    } else {
        show(value)
    }
}

/// Joins reasons with "; ", or "-" when there are none.
fn reasons(reasons: &[String]) -> String {
    format::or_none(&reasons.join("; "))
}

/// Shows audit parameters on one line; an empty object says nothing, so it shows as "-".
fn compact_params(params_json: &str) -> String {
    match serde_json::from_str::<serde_json::Value>(params_json) {
        Ok(serde_json::Value::Null) => format::NONE.to_owned(),
        Ok(serde_json::Value::Object(map)) if map.is_empty() => format::NONE.to_owned(),
        Ok(value) => value.to_string(),
        Err(_) => format::or_none(params_json.trim()),
    }
}

#[cfg(test)]
mod tests {
    use std::collections::HashMap;

    use super::*;

    fn agent(name: &str, online: bool) -> v1::Agent {
        v1::Agent {
            name: name.into(),
            version: "0.1.0".into(),
            labels: HashMap::from([("env".into(), "demo".into())]),
            online,
            last_seen_unix_ms: 1_000,
            database_count: 2,
            repository: "file:///repo".into(),
        }
    }

    #[test]
    fn list_view_has_one_row_per_entity() {
        let text = list_table(&[agent("pg1", true), agent("pg2", false)], 13_000).trim_fmt();
        let lines: Vec<&str> = text.lines().collect();
        assert_eq!(lines.len(), 3, "{text}");
        assert!(lines[0].starts_with("NAME  STATE"), "{text}");
        assert!(lines[1].starts_with("pg1") && lines[1].contains("online"));
        assert!(lines[2].contains("offline") && lines[2].contains("12s ago"));
        assert!(lines[1].contains("env=demo"));
    }

    #[test]
    fn single_view_lists_columns_then_details() {
        let order = v1::Order {
            id: "o-1".into(),
            kind: v1::OrderKind::Restore.into(),
            database: "pg1/shop".into(),
            state: v1::OrderState::Failed.into(),
            attempts: 1,
            error: "pg_restore failed: disk full".into(),
            ..Default::default()
        };
        let text = detail_table(&order, 0).trim_fmt();
        assert!(
            text.lines().next().is_some_and(|l| l.starts_with("ID")),
            "{text}"
        );
        let field = |name: &str| {
            text.lines()
                .find_map(|line| line.strip_prefix(name))
                .map(str::trim)
                .map(str::to_owned)
        };
        assert_eq!(field("STATE").as_deref(), Some("failed"), "{text}");
        assert_eq!(
            field("ERROR").as_deref(),
            Some("pg_restore failed: disk full"),
            "{text}"
        );
        assert!(!text.contains("RESTORED INTO"), "{text}");
    }

    #[test]
    fn progress_shows_a_rate_only_while_running() {
        let mut order = v1::Order {
            state: v1::OrderState::Running.into(),
            progress_bytes: 3 * 1024 * 1024,
            progress_bytes_per_sec: 1024.0 * 1024.0,
            ..Default::default()
        };
        assert_eq!(order_progress(&order), "3.0 MiB at 1.0 MiB/s");
        order.state = v1::OrderState::Succeeded.into();
        assert_eq!(order_progress(&order), "3.0 MiB");
        order.progress_bytes = 0;
        assert_eq!(order_progress(&order), "-");
    }

    const NOW: i64 = 1_795_728_605_000;

    fn field(text: &str, name: &str) -> Option<String> {
        text.lines()
            .find_map(|line| line.strip_prefix(name))
            .map(|rest| rest.trim().to_owned())
    }

    #[test]
    fn held_orders_say_why_and_when() {
        let mut order = v1::Order {
            id: "o-held".into(),
            kind: v1::OrderKind::Restore.into(),
            database: "pg1/shop".into(),
            state: v1::OrderState::Held.into(),
            phase: "no maintenance window is open for pg1/shop".into(),
            held_until_unix_ms: NOW + 3 * 3_600_000 + 20 * 60_000,
            deadline_unix_ms: NOW + 5 * 3_600_000,
            safety_backup_order_id: "o-safety".into(),
            ..Default::default()
        };
        let text = detail_table(&order, NOW).trim_fmt();
        assert_eq!(
            field(&text, "PHASE").as_deref(),
            Some(
                "no maintenance window is open for pg1/shop; may start at 2026-11-27 00:50:05Z (in 3h 20m)"
            ),
            "{text}"
        );
        assert_eq!(field(&text, "STATE").as_deref(), Some("held"), "{text}");
        assert_eq!(
            field(&text, "SAFETY BACKUP").as_deref(),
            Some("o-safety"),
            "{text}"
        );
        assert_eq!(
            field(&text, "DEADLINE").as_deref(),
            Some("2026-11-27 02:30:05Z (in 5h)"),
            "{text}"
        );
        assert!(!text.contains("EMERGENCY"), "{text}");

        // Waiting for another order to end: no time to promise.
        order.held_until_unix_ms = 0;
        assert_eq!(
            held_note(&order, Some(NOW)).as_deref(),
            Some("no maintenance window is open for pg1/shop")
        );
        order.state = v1::OrderState::Running.into();
        order.emergency = true;
        assert_eq!(held_note(&order, Some(NOW)), None);
        let text = detail_table(&order, NOW).trim_fmt();
        assert_eq!(
            field(&text, "STATE").as_deref(),
            Some("running (emergency)"),
            "{text}"
        );
        assert!(field(&text, "EMERGENCY").is_some(), "{text}");
    }

    #[test]
    fn windows_show_now_and_next() {
        let window = v1::WindowInfo {
            name: "prod-sunday".into(),
            kind: "maintenance".into(),
            selector: String::new(),
            timezone: "Europe/Berlin".into(),
            recurrence: "weekly sun 02:00-04:00".into(),
            open_until_unix_ms: NOW + 20 * 60_000,
            next_start_unix_ms: NOW + 7 * 86_400_000,
            next_end_unix_ms: NOW + 7 * 86_400_000 + 7_200_000,
        };
        let row = window.row(NOW);
        assert_eq!(row[2], "(all)");
        assert_eq!(row[5], "open until 2026-11-26 21:50:05Z (in 20m)");
        assert_eq!(
            row[6],
            "2026-12-03 21:30:05Z – 2026-12-03 23:30:05Z (in 7d)"
        );
        let freeze = v1::WindowInfo {
            kind: "freeze".into(),
            selector: "env=prod".into(),
            open_until_unix_ms: 0,
            next_start_unix_ms: 0,
            ..window
        };
        let row = freeze.row(NOW);
        assert_eq!(
            (row[2].as_str(), row[5].as_str(), row[6].as_str()),
            ("env=prod", "not in force", "none within a year")
        );
    }

    #[test]
    fn next_window_answers_when() {
        let frozen = v1::NextWindowResponse {
            database: "pg1/shop".into(),
            allowed_now: false,
            freeze_window: "xmas".into(),
            freeze_until_unix_ms: NOW + 86_400_000,
            next_window: "prod-sunday".into(),
            next_start_unix_ms: NOW + 2 * 86_400_000,
            next_end_unix_ms: NOW + 2 * 86_400_000 + 7_200_000,
            ..Default::default()
        };
        let fields: HashMap<_, _> = next_window_fields(&frozen, NOW).into_iter().collect();
        assert_eq!(fields["ALLOWED NOW"], "no");
        assert_eq!(fields["WINDOW"], "none open");
        assert_eq!(fields["FREEZE"], "xmas until 2026-11-27 21:30:05Z (in 1d)");
        assert_eq!(
            fields["NEXT OPENING"],
            "prod-sunday 2026-11-28 21:30:05Z – 2026-11-28 23:30:05Z (in 2d)"
        );
        let open = v1::NextWindowResponse {
            database: "pg1/shop".into(),
            allowed_now: true,
            open_window: "prod-sunday".into(),
            open_until_unix_ms: NOW + 3_600_000,
            ..Default::default()
        };
        let fields: HashMap<_, _> = next_window_fields(&open, NOW).into_iter().collect();
        assert_eq!(fields["ALLOWED NOW"], "yes");
        assert_eq!(
            fields["WINDOW"],
            "prod-sunday open until 2026-11-26 22:30:05Z (in 1h)"
        );
        assert_eq!(fields["FREEZE"], "-");
        assert_eq!(fields["NEXT OPENING"], "none within a year");
    }

    fn change(op: &str, what: &str, name: &str, detail: &str) -> v1::PolicyChange {
        v1::PolicyChange {
            op: op.into(),
            what: what.into(),
            name: name.into(),
            detail: detail.into(),
        }
    }

    #[test]
    fn policy_changes_one_per_line() {
        let mut response = v1::ApplyPolicyResponse {
            changes: vec![
                change("added", "window", "prod-sunday", ""),
                change(
                    "changed",
                    "schedule",
                    "nightly",
                    "cron: 0 3 * * * -> 0 4 * * *",
                ),
                change("removed", "retention", "old", ""),
                change("changed", "limits", "", "max_concurrent: 2 -> 3"),
            ],
            version: 7,
            applied: true,
        };
        assert_eq!(
            policy_result_text(&response, false),
            "+ window prod-sunday\n~ schedule nightly: cron: 0 3 * * * -> 0 4 * * *\n- retention old\n~ limits: max_concurrent: 2 -> 3\napplied: policy version 7 is in force"
        );
        response.applied = false;
        response.version = 6;
        assert!(
            policy_result_text(&response, true)
                .ends_with("\ndry run: nothing was applied; policy version 6 stays in force")
        );
        response.changes.clear();
        assert_eq!(
            policy_result_text(&response, false),
            "no changes: policy version 6 stays in force"
        );
    }

    fn decision(id: &str, prune: bool, why: &str) -> v1::PruneDecision {
        v1::PruneDecision {
            artifact_id: id.into(),
            database: "pg1/shop".into(),
            created_unix_ms: NOW,
            size_bytes: 2048,
            prune,
            why: why.into(),
        }
    }

    #[test]
    fn prune_shows_what_goes_and_counts_what_stays() {
        let mut response = v1::PruneResponse {
            decisions: vec![
                decision("a-1", true, "older than every rule keeps"),
                decision("a-2", true, "older than every rule keeps"),
                decision("a-3", false, "daily: newest of 2026-11-26"),
            ],
            order_ids: vec![],
        };
        let table = prune_table(&response.decisions, false)
            .expect("rows")
            .trim_fmt();
        let lines: Vec<&str> = table.lines().collect();
        assert_eq!(lines.len(), 3, "{table}");
        assert!(lines[0].starts_with("ARTIFACT  DATABASE"), "{table}");
        assert!(!lines[0].contains("DECISION"), "{table}");
        assert!(lines[1].contains("older than every rule keeps"), "{table}");
        let all = prune_table(&response.decisions, true)
            .expect("rows")
            .trim_fmt();
        assert_eq!(all.lines().count(), 4, "{all}");
        assert!(
            all.contains("keep") && all.contains("daily: newest"),
            "{all}"
        );
        assert_eq!(
            prune_summary(&response, true),
            "dry run: would prune 2 artifacts (4.0 KiB) and keep 1 artifact; nothing was removed"
        );
        response.order_ids = vec!["o-9".into()];
        assert_eq!(
            prune_summary(&response, false),
            "pruning 2 artifacts (4.0 KiB), keeping 1 artifact: order o-9 removes the files (follow with `warden order ID --watch`)"
        );
        response.decisions.retain(|d| !d.prune);
        assert_eq!(
            prune_summary(&response, false),
            "nothing to prune; 1 artifact kept"
        );
        assert!(prune_table(&response.decisions, false).is_none());
    }

    fn drill(success: bool, corrupt: bool) -> v1::Order {
        v1::Order {
            id: "o-drill".into(),
            kind: v1::OrderKind::Drill.into(),
            database: "pg1/shop".into(),
            state: if success {
                v1::OrderState::Succeeded
            } else {
                v1::OrderState::Failed
            }
            .into(),
            spec: Some(v1::OrderSpec {
                params: Some(v1::order_spec::Params::Drill(v1::DrillParams {
                    artifact_id: "a-1".into(),
                    ..Default::default()
                })),
            }),
            result: Some(v1::OrderResult {
                success,
                artifact_corrupt: corrupt,
                outcome: Some(ResultOutcome::Drill(v1::DrillOutcome {
                    scratch_database: "pg1/warden_drill_1".into(),
                    tables_verified: 3,
                    rows_verified: 950,
                    phases: vec![
                        v1::PhaseTiming {
                            phase: "pg_restore".into(),
                            millis: 1200,
                        },
                        v1::PhaseTiming {
                            phase: "cleanup".into(),
                            millis: 30,
                        },
                    ],
                    checks: vec![
                        v1::CheckResult {
                            name: "has_orders".into(),
                            passed: true,
                            error: String::new(),
                        },
                        v1::CheckResult {
                            name: "fk_intact".into(),
                            passed: success,
                            error: if success { "" } else { "returned false" }.into(),
                        },
                    ],
                    restore_millis: 1500,
                    raw_bytes: 200 * 1024,
                })),
                ..Default::default()
            }),
            ..Default::default()
        }
    }

    #[test]
    fn drills_show_phases_checks_and_restore_time() {
        let text = detail_table(&drill(true, false), NOW).trim_fmt();
        for (name, value) in [
            ("ARTIFACT ", "a-1"),
            ("DRILL ", "passed"),
            ("SCRATCH DATABASE", "pg1/warden_drill_1"),
            ("VERIFIED", "3 tables, 950 rows"),
            ("RESTORE TIME", "1.5s for 200.0 KiB (133.3 KiB/s)"),
            ("PHASES", "pg_restore 1.2s, cleanup 30ms"),
        ] {
            assert_eq!(field(&text, name).as_deref(), Some(value), "{text}");
        }
        let checks: Vec<&str> = text
            .lines()
            .filter_map(|line| line.strip_prefix("CHECK "))
            .map(str::trim)
            .collect();
        assert_eq!(
            checks,
            ["has_orders: passed", "fk_intact: passed"],
            "{text}"
        );
        assert!(!text.contains("CORRUPT"), "{text}");

        let text = detail_table(&drill(false, true), NOW).trim_fmt();
        assert_eq!(field(&text, "DRILL ").as_deref(), Some("FAILED"), "{text}");
        assert!(text.contains("fk_intact: FAILED: returned false"), "{text}");
        assert_eq!(
            field(&text, "ARTIFACT CORRUPT").as_deref(),
            Some(
                "yes: the failure proves a-1 unusable and it is marked corrupt; pick another with `warden artifacts pg1/shop`"
            ),
            "{text}"
        );

        // A corrupt artifact fails the drill before there is an outcome to report.
        let mut corrupt = drill(false, true);
        if let Some(result) = corrupt.result.as_mut() {
            result.outcome = None;
        }
        corrupt.error = "sha256 mismatch".into();
        let text = detail_table(&corrupt, NOW).trim_fmt();
        assert_eq!(field(&text, "DRILL ").as_deref(), Some("FAILED"), "{text}");
        assert!(field(&text, "ARTIFACT CORRUPT").is_some(), "{text}");
        assert!(!text.contains("SCRATCH DATABASE"), "{text}");
    }

    #[test]
    fn health_reports_show_the_server_and_the_repository() {
        let mut health = v1::HealthReport {
            connected: true,
            latency_ms: 2,
            server_version: "15.18".into(),
            connections_used: 5,
            connections_max: 100,
            uptime_seconds: 3 * 86_400 + 4 * 3600,
            replication_role: "standby".into(),
            replication_lag_ms: 1250,
            oldest_transaction_seconds: 0,
            wraparound_age: 150_000_000,
            repository_free_bytes: 10 * 1024 * 1024 * 1024,
            repository_total_bytes: 100 * 1024 * 1024 * 1024,
            ..Default::default()
        };
        let fields: HashMap<_, _> = health_fields(&health).into_iter().collect();
        assert_eq!(fields["LATENCY"], "2ms");
        assert_eq!(fields["CONNECTIONS"], "5 of 100");
        assert_eq!(fields["UPTIME"], "3d 4h");
        assert_eq!(fields["REPLICATION"], "standby, 1.2s behind");
        assert_eq!(fields["OLDEST TRANSACTION"], "none open");
        assert_eq!(fields["WRAPAROUND AGE"], "150000000");
        assert_eq!(fields["REPOSITORY"], "10.0 GiB free of 100.0 GiB");

        health.replication_role = "primary".into();
        health.oldest_transaction_seconds = 2 * 3600 + 5 * 60;
        let fields: HashMap<_, _> = health_fields(&health).into_iter().collect();
        assert_eq!(fields["REPLICATION"], "primary, standbys up to 1.2s behind");
        assert_eq!(fields["OLDEST TRANSACTION"], "2h 5m");
        health.replication_lag_ms = 0;
        assert_eq!(replication(&health), "primary");

        // Unreachable: only what the agent knows without the database.
        health.connected = false;
        let names: Vec<&str> = health_fields(&health).into_iter().map(|(n, _)| n).collect();
        assert_eq!(names, ["CONNECTED", "REPOSITORY"]);
    }

    #[test]
    fn corrupt_artifacts_stand_out() {
        let artifact = v1::Artifact {
            id: "a-1".into(),
            state: "corrupt".into(),
            ..Default::default()
        };
        assert_eq!(artifact.row(NOW)[2], "CORRUPT");
        let complete = v1::Artifact {
            state: "complete".into(),
            ..artifact
        };
        assert_eq!(complete.row(NOW)[2], "complete");
    }

    #[test]
    fn rto_rows_show_targets_drills_and_why() {
        let mut row = v1::RtoRow {
            database: "pg1/shop".into(),
            tier: "critical".into(),
            rto_ms: 1_800_000,
            rpo_ms: 86_400_000,
            last_drill_unix_ms: NOW - 3 * 86_400_000,
            last_drill_ms: 754_000,
            last_drill_passed: true,
            predicted_restore_ms: 1_260_000,
            newest_backup_unix_ms: NOW - 5 * 3_600_000,
            newest_backup_age_ms: 5 * 3_600_000 + 20 * 60_000,
            status: "at_risk".into(),
            reasons: vec![
                "predicted restore is 70% of the RTO".into(),
                "last drill 3d ago".into(),
            ],
            ..Default::default()
        };
        assert_eq!(
            row.row(NOW),
            [
                "pg1/shop",
                "critical",
                "at_risk",
                "30m",
                "12m 34s (3d ago)",
                "21m 00s",
                "1d",
                "5h 20m",
                "predicted restore is 70% of the RTO; last drill 3d ago",
            ]
        );
        row.last_drill_passed = false;
        assert_eq!(row.row(NOW)[4], "failed (3d ago)");
        let never = v1::RtoRow {
            database: "pg2/new".into(),
            status: "unknown".into(),
            ..Default::default()
        };
        assert_eq!(
            never.row(NOW),
            [
                "pg2/new", "-", "unknown", "-", "never", "-", "-", "never", "-"
            ]
        );
    }

    #[test]
    fn status_counts_databases_by_health_and_rto() {
        let database = |name: &str, health: &str, rto: &str| v1::DatabaseStatus {
            database: name.into(),
            health: health.into(),
            rto_status: rto.into(),
            ..Default::default()
        };
        let status = v1::FleetStatusResponse {
            agents_online: 2,
            agents_total: 3,
            databases: vec![
                database("pg3/a", "down", "breach"),
                database("pg1/b", "degraded", "at_risk"),
                database("pg1/c", "healthy", "ok"),
                database("pg2/d", "healthy", ""),
                database("pg2/e", "melting", "ok"),
            ],
            generated_unix_ms: NOW,
            repositories: Vec::new(),
        };
        assert_eq!(
            status_summary(&status),
            "agents: 2 of 3 online\n\
             databases: 2 healthy, 1 degraded, 1 down, 0 unknown, 1 melting\n\
             rto: 2 ok, 1 at_risk, 1 breach, 1 unknown"
        );
    }

    #[test]
    fn status_rows_show_measurements_only_when_connected() {
        let mut status = v1::DatabaseStatus {
            database: "pg1/shop".into(),
            agent_online: true,
            health: "degraded".into(),
            health_reasons: vec!["latency 800ms".into(), "connections 95 of 100".into()],
            report: Some(v1::HealthReport {
                connected: true,
                latency_ms: 800,
                database_size_bytes: 8 * 1024 * 1024,
                connections_used: 95,
                connections_max: 100,
                ..Default::default()
            }),
            health_unix_ms: NOW,
            newest_backup_unix_ms: NOW - 2 * 3_600_000,
            rto_status: "ok".into(),
        };
        assert_eq!(
            status.row(NOW),
            [
                "pg1/shop",
                "degraded",
                "800ms",
                "8.0 MiB",
                "95 of 100",
                "2h ago",
                "ok",
                "latency 800ms; connections 95 of 100",
            ]
        );
        status.report = None;
        status.newest_backup_unix_ms = 0;
        let row = status.row(NOW);
        assert_eq!(&row[2..6], ["-", "-", "-", "never"]);
    }

    fn migrate_order(state: v1::OrderState, outcome: Option<v1::MigrateOutcome>) -> v1::Order {
        let file = |version: &str, name: &str| v1::MigrationFile {
            version: version.into(),
            name: name.into(),
            ..Default::default()
        };
        v1::Order {
            id: "o-m".into(),
            kind: v1::OrderKind::Migrate.into(),
            database: "pg1/shop".into(),
            state: state.into(),
            spec: Some(v1::OrderSpec {
                params: Some(v1::order_spec::Params::Migrate(v1::MigrateParams {
                    source: Some(v1::migrate_params::Source::Sql(v1::SqlMigrations {
                        files: vec![file("0001", "a"), file("0002", "b"), file("0003", "c")],
                    })),
                    rollout_id: "r-1".into(),
                    pre_migration: Some(v1::ArtifactPointer {
                        artifact_id: "a-spec".into(),
                        ..Default::default()
                    }),
                    ..Default::default()
                })),
            }),
            result: outcome.map(|o| v1::OrderResult {
                success: state == v1::OrderState::Succeeded,
                outcome: Some(ResultOutcome::Migrate(o)),
                ..Default::default()
            }),
            ..Default::default()
        }
    }

    fn recorded(version: &str, name: &str) -> v1::AppliedMigration {
        v1::AppliedMigration {
            version: version.into(),
            name: name.into(),
            sha256: "0123456789abcdef".repeat(4),
            applied_unix_ms: NOW,
            duration_ms: 1500,
        }
    }

    #[test]
    fn migrate_orders_show_what_they_will_do_then_what_they_did() {
        let queued = migrate_order(v1::OrderState::Queued, None);
        let text = detail_table(&queued, NOW).trim_fmt();
        assert_eq!(
            field(&text, "FILES").as_deref(),
            Some("0001_a, 0002_b, 0003_c")
        );
        assert_eq!(field(&text, "ROLLOUT").as_deref(), Some("r-1"));
        // The coordinator's pointer until the agent reports.
        assert_eq!(
            field(&text, "PRE-MIGRATION BACKUP").as_deref(),
            Some("a-spec")
        );
        assert!(!text.contains("APPLIED"), "{text}");

        let failed = migrate_order(
            v1::OrderState::Failed,
            Some(v1::MigrateOutcome {
                applied: vec![recorded("0001", "a")],
                pending: vec![v1::MigrationRef {
                    version: "0003".into(),
                    name: "c".into(),
                }],
                failed_version: "0002".into(),
                pre_migration_artifact_id: "a-pre".into(),
                restore_command: "warden restore a-pre --replace --target pg1/shop".into(),
                ..Default::default()
            }),
        );
        let text = detail_table(&failed, NOW).trim_fmt();
        for (name, value) in [
            ("PRE-MIGRATION BACKUP", "a-pre"),
            ("APPLIED", "0001_a (1.5s)"),
            ("ALREADY APPLIED", "0"),
            ("PENDING", "0003_c (not reached)"),
            ("FAILED FILE", "0002_b.sql"),
            (
                "RESTORE WITH",
                "warden restore a-pre --replace --target pg1/shop",
            ),
        ] {
            assert_eq!(
                field(&text, name).as_deref(),
                Some(value),
                "{name} in {text}"
            );
        }
        let note = restore_note(&failed).expect("a note");
        assert!(
            note.ends_with("run:\n\n    warden restore a-pre --replace --target pg1/shop"),
            "{note}"
        );

        // Restored, or not failed: nothing to restore by hand.
        let mut restored = failed.clone();
        if let Some(ResultOutcome::Migrate(outcome)) =
            restored.result.as_mut().and_then(|r| r.outcome.as_mut())
        {
            outcome.restored = true;
        }
        assert_eq!(restore_note(&restored), None);
        let text = detail_table(&restored, NOW).trim_fmt();
        assert!(
            field(&text, "RESTORED")
                .is_some_and(|r| r.starts_with("yes: the pre-migration backup a-pre")),
            "{text}"
        );
        let mut running = failed;
        running.state = v1::OrderState::Running.into();
        assert_eq!(restore_note(&running), None);
    }

    #[test]
    fn status_orders_say_so_in_their_kind() {
        let mut order = migrate_order(v1::OrderState::Queued, None);
        assert_eq!(order_kind_label(&order), "migrate");
        if let Some(v1::order_spec::Params::Migrate(params)) =
            order.spec.as_mut().and_then(|s| s.params.as_mut())
        {
            params.status_only = true;
        }
        assert_eq!(order_kind_label(&order), "migrate status");
        assert_eq!(order.row(NOW)[1], "migrate status");
        assert_eq!(order_kind_label(&v1::Order::default()), "unspecified");
    }

    #[test]
    fn migration_status_is_one_table_in_version_order() {
        let order = migrate_order(v1::OrderState::Succeeded, None);
        let status = v1::MigrateOutcome {
            already_applied: vec![recorded("10", "late"), recorded("0002", "b")],
            pending: vec![v1::MigrationRef {
                version: "11".into(),
                name: "next".into(),
            }],
            changed: vec![v1::ChangedMigration {
                version: "0003".into(),
                name: "c".into(),
                recorded_sha256: "aa".repeat(32),
                file_sha256: "bb".repeat(32),
            }],
            ..Default::default()
        };
        let text = migration_status_text(&order, &status);
        let lines: Vec<&str> = text.lines().collect();
        assert_eq!(
            lines[2],
            "FILES     2 applied, 1 pending, 1 changed, 0 unknown"
        );
        let statuses: Vec<&str> = lines[5..9]
            .iter()
            .filter_map(|l| l.split_whitespace().nth(1))
            .collect();
        assert_eq!(statuses, ["0002", "0003", "10", "11"], "{text}");
        assert!(
            lines[6].contains("applied aaaaaaaaaaaa, file now bbbbbbbbbbbb"),
            "{text}"
        );
        assert!(text.contains("1 applied file changed since"), "{text}");
        let none = migration_status_text(&order, &v1::MigrateOutcome::default());
        assert!(none.ends_with("no migrations: none in the directory, none recorded"));
    }

    #[test]
    fn rollouts_count_their_databases_by_state() {
        let target = |state: &str| v1::RolloutTarget {
            database: "pg1/shop".into(),
            wave: 1,
            state: state.into(),
            ..Default::default()
        };
        let mut rollout = v1::Rollout {
            id: "r-1".into(),
            state: "running".into(),
            current_wave: 1,
            wave_count: 3,
            migrations: vec![v1::MigrationRef {
                version: "0001".into(),
                name: "a".into(),
            }],
            targets: vec![
                target("succeeded"),
                target("running"),
                target("waiting"),
                target("waiting"),
            ],
            ..Default::default()
        };
        let row = rollout.row(NOW);
        assert_eq!(row[2], "(all)");
        assert_eq!(row[3], "1 of 3");
        assert_eq!(row[4], "0001_a");
        assert_eq!(row[7], "1 succeeded, 1 running, 2 waiting");
        assert_eq!(
            rollout_progress(&rollout),
            "wave 1 of 3 · 1 succeeded, 1 running, 2 waiting"
        );
        rollout.migrations.clear();
        rollout.command = "artisan".into();
        rollout.targets.clear();
        let row = rollout.row(NOW);
        assert_eq!(
            (row[4].as_str(), row[7].as_str()),
            ("command artisan", "no databases")
        );
        assert!(rollout_text(&rollout, NOW).ends_with("\n\nno databases selected"));
        assert_eq!(
            target("skipped").row(NOW),
            ["1", "pg1/shop", "skipped", "-", "-", "-", "-"]
        );
    }

    #[test]
    fn audit_params_are_compact() {
        assert_eq!(compact_params(r#"{ "reason": "x" }"#), r#"{"reason":"x"}"#);
        assert_eq!(compact_params("{}"), "-");
        assert_eq!(compact_params(""), "-");
    }
}
