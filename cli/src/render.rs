//! Output of every entity, as a table for people or as JSON for scripts.
//!
//! Each entity is described once (its columns, its extra details, its JSON shape) and the same
//! description serves list views (one row per entity) and single views (one field per line).

use std::io::{IsTerminal, Write};

use comfy_table::{ColumnConstraint, ContentArrangement, Table, presets};
use serde::Serialize;
use warden_proto::v1;
use warden_proto::v1::order_result::Outcome as ResultOutcome;
use warden_shared::OrderState;

use crate::error::CliError;
use crate::format;
use crate::json::{
    AgentJson, ArtifactJson, AuditEventJson, AuditVerifyJson, DatabaseJson, OrderJson,
    order_kind_name, order_outcome, order_state, order_state_name,
};

/// One kind of thing the CLI shows: agents, databases, orders, artifacts, audit events.
pub trait Entity {
    type Json: Serialize;

    /// What a list of these is called, for "no artifacts".
    const PLURAL: &'static str;
    /// Column titles of the list view; `row` returns one cell for each.
    const COLUMNS: &'static [&'static str];

    fn to_json(&self) -> Self::Json;
    fn row(&self, now_ms: i64) -> Vec<String>;
    /// Further fields shown only in the single view, each only when it has a value.
    fn details(&self) -> Vec<(&'static str, String)> {
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
    let mut table = new_table();
    let fields = E::COLUMNS.iter().copied().zip(item.row(now_ms));
    for (name, value) in fields.chain(item.details()) {
        table.add_row(vec![name.to_owned(), value]);
    }
    arrange_columns(&mut table);
    table
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

    fn row(&self, _now_ms: i64) -> Vec<String> {
        vec![
            self.id.clone(),
            order_kind_name(self).to_owned(),
            self.database.clone(),
            order_state_name(self).to_owned(),
            format::or_none(&self.phase),
            order_progress(self),
            format::time(self.created_unix_ms),
            format::or_none(&self.requested_by),
        ]
    }

    fn details(&self) -> Vec<(&'static str, String)> {
        let mut details = Vec::new();
        if !self.reason.is_empty() {
            details.push(("REASON", self.reason.clone()));
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
        match order_outcome(self) {
            Some(ResultOutcome::Backup(backup)) => {
                details.push(("ARTIFACT", format::or_none(&backup.artifact_id)));
            }
            Some(ResultOutcome::Restore(restore)) => {
                details.push(("RESTORED INTO", format::or_none(&restore.database)));
                details.push((
                    "VERIFIED",
                    format!(
                        "{} tables, {} rows",
                        restore.tables_verified, restore.rows_verified
                    ),
                ));
                if !restore.phases.is_empty() {
                    let phases: Vec<String> = restore
                        .phases
                        .iter()
                        .map(|p| format!("{} {}", p.phase, format::millis(p.millis)))
                        .collect();
                    details.push(("PHASES", phases.join(", ")));
                }
            }
            Some(ResultOutcome::Health(health)) => {
                details.push(("CONNECTED", format::yes_no(health.connected)));
                if health.connected {
                    details.push(("LATENCY", format!("{}ms", health.latency_ms)));
                    details.push(("SERVER VERSION", format::or_none(&health.server_version)));
                    details.push(("SIZE", format::bytes(health.database_size_bytes)));
                    details.push(("TABLES", health.table_count.to_string()));
                    details.push((
                        "CONNECTIONS",
                        format!("{} of {}", health.connections_used, health.connections_max),
                    ));
                    details.push(("IN RECOVERY", format::yes_no(health.in_recovery)));
                }
            }
            None => {}
        }
        details
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
            format::or_none(&self.state),
            format::or_none(&self.trigger),
            format::time(self.created_unix_ms),
            format::bytes(self.size_bytes),
            format::bytes(self.raw_bytes),
            format::yes_no(self.verified),
        ]
    }

    fn details(&self) -> Vec<(&'static str, String)> {
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

    fn details(&self) -> Vec<(&'static str, String)> {
        vec![
            ("PREV HASH", format::or_none(&self.prev_hash)),
            ("HASH", format::or_none(&self.hash)),
        ]
    }
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

    #[test]
    fn audit_params_are_compact() {
        assert_eq!(compact_params(r#"{ "reason": "x" }"#), r#"{"reason":"x"}"#);
        assert_eq!(compact_params("{}"), "-");
        assert_eq!(compact_params(""), "-");
    }
}
