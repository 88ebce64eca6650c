//! `fleet.toml`: the declarative policy document that `warden apply` takes and
//! `warden export` prints.
//!
//! The document is read in two steps: serde structs that mirror the TOML (`Raw*`, unknown keys
//! rejected) and then validation into the typed policy, so every error names the entry and
//! key it came from, e.g. `window "prod-sunday".timezone`. An entry whose name is not valid
//! is named by its position instead, counted from 0: `schedule[2].name`.
//!
//! ```toml
//! # Warden fleet policy
//!
//! default_tier = "standard"
//!
//! [limits]
//! per_agent = 2
//! fleet_backups = 4
//!
//! [[window]]
//! name = "prod-sunday"
//! selector = "env=prod"
//! kind = "maintenance"
//! timezone = "Europe/Berlin"
//! weekly = "sun 02:00-04:00"
//!
//! [[schedule]]
//! name = "nightly"
//! selector = "env=prod"
//! cron = "0 3 * * *"
//! timezone = "UTC"
//! jitter = "5m"
//!
//! [schedule.retention]
//! keep_days = 30
//! daily = 7
//!
//! [[schedule]]
//! name = "weekly-drill"
//! selector = "env=prod"
//! cron = "0 5 * * sat"
//! timezone = "UTC"
//! action = "drill"
//!
//! [[retention]]
//! name = "default"
//! selector = ""
//! keep_days = 30
//!
//! [[tiers]]
//! name = "standard"
//! rto = "30m"
//! rpo = "24h"
//!
//! [[tiers]]
//! name = "critical"
//! selector = "tier=critical"
//! rto = "15m"
//! rpo = "1h"
//!
//! [[checks]]
//! name = "orders-present"
//! selector = "team=payments"
//! sql = "select count(*) > 0 from orders"
//!
//! [migrate]
//! guard = "env=prod"
//! deny_sql = ["DELETE FROM ...", "ALTER TABLE ... DROP COLUMN ..."]
//! deny_commands = ["flyway clean"]
//! on_check_failure = "restore"
//! ```
//!
//! Tiers set the RTO and RPO the recovery report holds databases to. A database gets the
//! strictest tier whose selector matches it (smallest `rto`, then `rpo`, then name), else
//! `default_tier` (default `standard`, and it must name a tier in force). A tier without a
//! `selector` only applies as the default tier; `selector = ""` selects the whole fleet.
//! Tiers are optional: a document without `[[tiers]]` gets the built-in `standard` and
//! `critical` tiers shown above (see [`builtin_tiers`]), and `warden export` leaves them out
//! again, so a document without tiers round-trips unchanged.
//!
//! A drill of a database runs every `[[checks]]` entry whose selector matches it, in
//! document order; `sql` is one query returning one boolean. A schedule with
//! `action = "drill"` runs restore drills instead of backups, and has no retention.
//!
//! `[migrate]` governs safe migrations (all keys optional). `guard` selects the databases the
//! destructive guard protects (default `env=prod`; `""` protects none): there a migration
//! whose SQL matches a deny pattern, or a migration command whose command line contains a
//! denied fragment, is refused unless glass is broken. `deny_sql` and `deny_commands` add
//! patterns to the built-in ones (`DROP DATABASE`, `DROP SCHEMA ... CASCADE`, `TRUNCATE`,
//! `DROP OWNED`; `migrate:fresh`, `db:drop`, ...); in an SQL pattern `...` stands for any
//! words. After applying, a migration runs the `[[checks]]` that select its database;
//! `on_check_failure` says what a failing check does: `stop` (default: stop and say how to
//! restore) or `restore` (restore the pre-migration backup at once). `warden export` prints
//! the table only when it differs from these defaults.

use std::collections::{BTreeMap, HashSet};
use std::time::Duration;

use chrono_tz::Tz;
use serde::{Deserialize, Serialize};

use warden_shared::{DrillCheck, Labels, OnCheckFailure};

use super::recovery::{normalize_check_sql, select_tier};
use super::{
    CheckRule, CronExpr, DEFAULT_TIER, Limits, MigratePolicy, PolicyError, Recurrence, Retention,
    RetentionRule, Schedule, ScheduleAction, Tier, WeeklySpec, Window, WindowKind, builtin_tiers,
    format_local_time, parse_duration, parse_local_time, parse_name, parse_selector,
    parse_timezone,
};

/// The whole policy of the fleet.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct FleetPolicy {
    pub limits: Limits,
    pub windows: Vec<Window>,
    pub schedules: Vec<Schedule>,
    pub retention: Vec<RetentionRule>,
    /// The recovery tiers in force: the document's, or [`builtin_tiers`] when it defines
    /// none. Never empty once parsed.
    pub tiers: Vec<Tier>,
    /// The tier of databases that no tier's selector picks; names one of `tiers`.
    pub default_tier: String,
    /// SQL checks for restore drills and after migrations, in document order.
    pub checks: Vec<CheckRule>,
    /// The `[migrate]` table: the destructive guard and what failing post-checks do.
    pub migrate: MigratePolicy,
}

impl Default for FleetPolicy {
    /// The policy of an empty document: default limits, the built-in tiers, nothing else.
    fn default() -> Self {
        Self {
            limits: Limits::default(),
            windows: Vec::new(),
            schedules: Vec::new(),
            retention: Vec::new(),
            tiers: builtin_tiers().to_vec(),
            default_tier: DEFAULT_TIER.to_owned(),
            checks: Vec::new(),
            migrate: MigratePolicy::default(),
        }
    }
}

impl FleetPolicy {
    /// The tier of a database with `labels`: the strictest tier whose selector matches
    /// (smallest RTO, then smallest RPO, then name), else the default tier.
    pub fn tier_for(&self, labels: &Labels) -> &Tier {
        select_tier(&self.tiers, &self.default_tier, labels)
    }

    /// The checks a drill of a database with `labels` runs, and a migration of it after
    /// applying: every check whose selector matches, in document order.
    pub fn checks_for(&self, labels: &Labels) -> Vec<DrillCheck> {
        self.checks
            .iter()
            .filter(|check| check.selector.matches(labels))
            .map(CheckRule::to_drill_check)
            .collect()
    }
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum ChangeOp {
    Added,
    Changed,
    Removed,
}

/// One difference between two policies, for `warden apply` to print.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Change {
    pub op: ChangeOp,
    /// `window`, `schedule`, `retention`, `tier`, `check`, `limits`, `default_tier` or
    /// `migrate`.
    pub what: String,
    pub name: String,
    /// What differs, e.g. `timezone: UTC -> Europe/Berlin`. For an added or removed entry,
    /// all of its fields, e.g. `kind: freeze; timezone: UTC; ...`.
    pub detail: String,
}

/// The first line of every exported document.
const HEADER: &str = "# Warden fleet policy\n";
/// The field an error points at when the document is not TOML or not of this shape.
const DOCUMENT: &str = "fleet.toml";
/// The longest a cron window may stay open after each occurrence.
const MAX_CRON_WINDOW: Duration = Duration::from_secs(7 * 24 * 3600);
/// The longest jitter: it spreads one slot's runs and should stay well below the time between
/// slots.
const MAX_JITTER: Duration = Duration::from_secs(24 * 3600);
/// `keep_days` when a retention table leaves it out.
const DEFAULT_KEEP_DAYS: u32 = 30;

// ---- the document as written ---------------------------------------------------------------
//
// Every value is optional here, and numbers are i64 (TOML's integer), so that a missing or
// out-of-range value is reported by validation with its field, not by serde.

#[derive(Debug, Default, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
struct RawDocument {
    // A plain value: TOML prints it before any table.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    default_tier: Option<String>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    limits: Option<RawLimits>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    migrate: Option<RawMigrate>,
    #[serde(default, rename = "window", skip_serializing_if = "Vec::is_empty")]
    windows: Vec<RawWindow>,
    #[serde(default, rename = "schedule", skip_serializing_if = "Vec::is_empty")]
    schedules: Vec<RawSchedule>,
    #[serde(default, rename = "retention", skip_serializing_if = "Vec::is_empty")]
    retention: Vec<RawRetentionRule>,
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    tiers: Vec<RawTier>,
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    checks: Vec<RawCheck>,
}

#[derive(Debug, Default, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
struct RawTier {
    name: Option<String>,
    #[serde(skip_serializing_if = "Option::is_none")]
    selector: Option<String>,
    rto: Option<String>,
    rpo: Option<String>,
}

#[derive(Debug, Default, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
struct RawCheck {
    name: Option<String>,
    selector: Option<String>,
    sql: Option<String>,
}

#[derive(Debug, Default, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
struct RawMigrate {
    guard: Option<String>,
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    deny_sql: Vec<String>,
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    deny_commands: Vec<String>,
    on_check_failure: Option<String>,
}

#[derive(Debug, Default, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
struct RawLimits {
    per_agent: Option<i64>,
    fleet_backups: Option<i64>,
}

#[derive(Debug, Default, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
struct RawWindow {
    name: Option<String>,
    selector: Option<String>,
    kind: Option<String>,
    timezone: Option<String>,
    #[serde(skip_serializing_if = "Option::is_none")]
    weekly: Option<String>,
    #[serde(skip_serializing_if = "Option::is_none")]
    cron: Option<String>,
    #[serde(skip_serializing_if = "Option::is_none")]
    duration: Option<String>,
    /// A string, or a TOML local date-time written without quotes.
    #[serde(skip_serializing_if = "Option::is_none")]
    start: Option<toml::Value>,
    #[serde(skip_serializing_if = "Option::is_none")]
    end: Option<toml::Value>,
}

#[derive(Debug, Default, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
struct RawSchedule {
    name: Option<String>,
    selector: Option<String>,
    cron: Option<String>,
    timezone: Option<String>,
    #[serde(skip_serializing_if = "Option::is_none")]
    jitter: Option<String>,
    #[serde(skip_serializing_if = "Option::is_none")]
    action: Option<String>,
    #[serde(skip_serializing_if = "Option::is_none")]
    retention: Option<RawRetention>,
}

#[derive(Debug, Default, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
struct RawRetention {
    keep_days: Option<i64>,
    #[serde(skip_serializing_if = "Option::is_none")]
    keep_last: Option<i64>,
    #[serde(skip_serializing_if = "Option::is_none")]
    daily: Option<i64>,
    #[serde(skip_serializing_if = "Option::is_none")]
    weekly: Option<i64>,
    #[serde(skip_serializing_if = "Option::is_none")]
    monthly: Option<i64>,
    #[serde(skip_serializing_if = "Option::is_none")]
    timezone: Option<String>,
}

/// A top-level `[[retention]]`: a name and selector, then the keys of [`RawRetention`]
/// (repeated, since `flatten` and `deny_unknown_fields` do not mix).
#[derive(Debug, Default, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
struct RawRetentionRule {
    name: Option<String>,
    selector: Option<String>,
    keep_days: Option<i64>,
    #[serde(skip_serializing_if = "Option::is_none")]
    keep_last: Option<i64>,
    #[serde(skip_serializing_if = "Option::is_none")]
    daily: Option<i64>,
    #[serde(skip_serializing_if = "Option::is_none")]
    weekly: Option<i64>,
    #[serde(skip_serializing_if = "Option::is_none")]
    monthly: Option<i64>,
    #[serde(skip_serializing_if = "Option::is_none")]
    timezone: Option<String>,
}

// ---- parsing and validation ----------------------------------------------------------------

impl FleetPolicy {
    /// Parses and validates a document; the first problem found is the error.
    pub fn parse(text: &str) -> Result<Self, PolicyError> {
        let raw: RawDocument = toml::from_str(text).map_err(|e| {
            // Show the offending text as the value when toml points at it.
            let value = e.span().and_then(|span| text.get(span)).unwrap_or_default();
            PolicyError::new(
                DOCUMENT,
                value,
                format!("not a valid fleet policy: {}", e.to_string().trim_end()),
            )
        })?;

        let default = Limits::default();
        let limits = match raw.limits {
            Some(limits) => Limits {
                per_agent: limit("limits.per_agent", limits.per_agent, default.per_agent)?,
                fleet_backups: limit(
                    "limits.fleet_backups",
                    limits.fleet_backups,
                    default.fleet_backups,
                )?,
            },
            None => default,
        };

        let windows = named_entries(
            "window",
            "window",
            raw.windows,
            |r| r.name.as_deref(),
            window,
        )?;
        let schedules = named_entries(
            "schedule",
            "schedule",
            raw.schedules,
            |r| r.name.as_deref(),
            schedule,
        )?;
        let retention = named_entries(
            "retention",
            "retention rule",
            raw.retention,
            |r| r.name.as_deref(),
            retention_rule,
        )?;
        let mut tiers = named_entries("tiers", "tier", raw.tiers, |r| r.name.as_deref(), tier)?;
        if tiers.is_empty() {
            tiers = builtin_tiers().to_vec();
        }
        let default_tier = default_tier(raw.default_tier, &tiers)?;
        let checks = named_entries("checks", "check", raw.checks, |r| r.name.as_deref(), check)?;
        let migrate = raw.migrate.map(migrate).transpose()?.unwrap_or_default();

        Ok(Self {
            limits,
            windows,
            schedules,
            retention,
            tiers,
            default_tier,
            checks,
            migrate,
        })
    }
}

/// Hands out the names of one kind of entry, refusing invalid and repeated ones.
/// Validates the entries of one table: each gets a unique, valid name first, then `build`
/// checks the rest of it.
fn named_entries<R, T>(
    what: &'static str,
    noun: &'static str,
    raw: Vec<R>,
    name_of: impl Fn(&R) -> Option<&str>,
    build: impl Fn(String, R) -> Result<T, PolicyError>,
) -> Result<Vec<T>, PolicyError> {
    let mut names = UniqueNames::new(what, noun);
    raw.into_iter()
        .enumerate()
        .map(|(index, raw)| {
            let name = names.claim(index, name_of(&raw))?;
            build(name, raw)
        })
        .collect()
}

struct UniqueNames {
    /// The table, e.g. `retention`, which error fields start with.
    what: &'static str,
    /// What one entry is called in a sentence, e.g. `retention rule`.
    noun: &'static str,
    seen: HashSet<String>,
}

impl UniqueNames {
    fn new(what: &'static str, noun: &'static str) -> Self {
        Self {
            what,
            noun,
            seen: HashSet::new(),
        }
    }

    /// Checks the name of entry `index`; an entry without a valid name is known by its index.
    fn claim(&mut self, index: usize, name: Option<&str>) -> Result<String, PolicyError> {
        let field = format!("{}[{index}].name", self.what);
        let Some(name) = name else {
            return Err(PolicyError::new(
                field,
                "",
                format!(
                    "missing; every {} needs a name of letters, digits, '-', '_' or '.'",
                    self.noun
                ),
            ));
        };
        let name = parse_name(&field, name)?;
        if !self.seen.insert(name.clone()) {
            return Err(PolicyError::new(
                field,
                name,
                format!(
                    "another {} already has this name; names must be unique among {}s",
                    self.noun, self.noun
                ),
            ));
        }
        Ok(name)
    }
}

/// Builds the field paths of one named entry: `window "prod-sunday".timezone`.
struct Entry {
    path: String,
}

impl Entry {
    fn new(what: &str, name: &str) -> Self {
        Self {
            path: format!("{what} {name:?}"),
        }
    }

    fn field(&self, key: &str) -> String {
        format!("{}.{key}", self.path)
    }

    /// A required text value, or an error saying it is missing and what to write.
    fn required<'a>(
        &self,
        key: &str,
        value: Option<&'a str>,
        expected: &str,
    ) -> Result<&'a str, PolicyError> {
        value.ok_or_else(|| PolicyError::new(self.field(key), "", format!("missing; {expected}")))
    }
}

/// A concurrency limit: at least 1.
fn limit(field: &str, value: Option<i64>, default: u32) -> Result<u32, PolicyError> {
    let Some(value) = value else {
        return Ok(default);
    };
    u32::try_from(value)
        .ok()
        .filter(|value| *value >= 1)
        .ok_or_else(|| {
            PolicyError::new(
                field,
                value.to_string(),
                format!("must be a whole number from 1 to {}", u32::MAX),
            )
        })
}

/// A retention count: 0 or more.
fn count(field: String, value: Option<i64>, default: u32) -> Result<u32, PolicyError> {
    let Some(value) = value else {
        return Ok(default);
    };
    u32::try_from(value).map_err(|_| {
        PolicyError::new(
            field,
            value.to_string(),
            format!("must be a whole number from 0 to {}", u32::MAX),
        )
    })
}

fn window(name: String, raw: RawWindow) -> Result<Window, PolicyError> {
    let entry = Entry::new("window", &name);
    let selector = parse_selector(
        &entry.field("selector"),
        raw.selector.as_deref().unwrap_or(""),
    )?;
    let kind = match entry.required(
        "kind",
        raw.kind.as_deref(),
        "give kind = \"maintenance\" or kind = \"freeze\"",
    )? {
        "maintenance" => WindowKind::Maintenance,
        "freeze" => WindowKind::Freeze,
        other => {
            return Err(PolicyError::new(
                entry.field("kind"),
                other,
                "unknown kind; expected maintenance (destructive work may start) or freeze (nothing but backups and health checks)",
            ));
        }
    };
    let timezone = parse_timezone(
        &entry.field("timezone"),
        entry.required(
            "timezone",
            raw.timezone.as_deref(),
            "give an IANA time zone such as UTC or Europe/Berlin",
        )?,
    )?;

    if let (Some(duration), None) = (&raw.duration, &raw.cron) {
        return Err(PolicyError::new(
            entry.field("duration"),
            duration.as_str(),
            "duration goes with cron; weekly and start/end windows carry their own length",
        ));
    }
    let given: Vec<&str> = [
        ("weekly", raw.weekly.is_some()),
        ("cron", raw.cron.is_some()),
        ("start/end", raw.start.is_some() || raw.end.is_some()),
    ]
    .into_iter()
    .filter_map(|(key, present)| present.then_some(key))
    .collect();
    const ONE_OF: &str = "give exactly one of weekly = \"sun 02:00-04:00\", cron = \"0 2 * * sun\" with duration = \"2h\", or start and end";
    if given.len() != 1 {
        let problem = if given.is_empty() {
            format!("no recurrence; {ONE_OF}")
        } else {
            format!("more than one recurrence; {ONE_OF}")
        };
        return Err(PolicyError::new(
            entry.path.as_str(),
            given.join(", "),
            problem,
        ));
    }

    let recurrence = if let Some(weekly) = &raw.weekly {
        Recurrence::Weekly(WeeklySpec::parse(&entry.field("weekly"), weekly)?)
    } else if let Some(cron) = &raw.cron {
        let cron = CronExpr::parse(&entry.field("cron"), cron)?;
        let text = entry.required(
            "duration",
            raw.duration.as_deref(),
            "a cron window needs a duration such as duration = \"2h\"",
        )?;
        let duration = parse_duration(&entry.field("duration"), text)?;
        if duration.is_zero() || duration > MAX_CRON_WINDOW {
            return Err(PolicyError::new(
                entry.field("duration"),
                text,
                "must be longer than zero and at most 7 days (168h)",
            ));
        }
        Recurrence::Cron { cron, duration }
    } else {
        let start = local_time(&entry, "start", raw.start.as_ref())?;
        let end = local_time(&entry, "end", raw.end.as_ref())?;
        if end <= start {
            return Err(PolicyError::new(
                entry.field("end"),
                format_local_time(&end),
                format!(
                    "must be after start ({}); a one-off window needs a positive length",
                    format_local_time(&start)
                ),
            ));
        }
        Recurrence::Once { start, end }
    };

    Ok(Window {
        name,
        selector,
        kind,
        recurrence,
        timezone,
    })
}

/// `start` or `end` of a one-off window: a string, or an unquoted TOML local date-time.
fn local_time(
    entry: &Entry,
    key: &str,
    value: Option<&toml::Value>,
) -> Result<chrono::NaiveDateTime, PolicyError> {
    let field = entry.field(key);
    match value {
        None => Err(PolicyError::new(
            field,
            "",
            "missing; a one-off window needs both start and end, e.g. start = \"2026-12-20T00:00\"",
        )),
        Some(toml::Value::String(text)) => parse_local_time(&field, text),
        Some(toml::Value::Datetime(datetime))
            if datetime.date.is_some() && datetime.time.is_some() && datetime.offset.is_none() =>
        {
            parse_local_time(&field, &datetime.to_string())
        }
        Some(other) => Err(PolicyError::new(
            field,
            // A bare datetime `Value` prints as toml's internal table; print its own text.
            match other {
                toml::Value::Datetime(datetime) => datetime.to_string(),
                other => other.to_string(),
            },
            "expected a local date and time such as \"2026-12-20T00:00\", without an offset: it is read in the window's timezone",
        )),
    }
}

fn schedule(name: String, raw: RawSchedule) -> Result<Schedule, PolicyError> {
    let entry = Entry::new("schedule", &name);
    let selector = parse_selector(
        &entry.field("selector"),
        raw.selector.as_deref().unwrap_or(""),
    )?;
    let cron = CronExpr::parse(
        &entry.field("cron"),
        entry.required(
            "cron",
            raw.cron.as_deref(),
            "give a cron expression such as cron = \"0 3 * * *\"",
        )?,
    )?;
    let timezone = match &raw.timezone {
        Some(text) => parse_timezone(&entry.field("timezone"), text)?,
        None => Tz::UTC,
    };
    let jitter = match &raw.jitter {
        Some(text) => {
            let jitter = parse_duration(&entry.field("jitter"), text)?;
            if jitter > MAX_JITTER {
                return Err(PolicyError::new(
                    entry.field("jitter"),
                    text.as_str(),
                    "must be at most 24h; jitter spreads the runs of one slot and should be well below the time between slots",
                ));
            }
            jitter
        }
        None => Duration::ZERO,
    };
    let action = match raw.action.as_deref() {
        None => ScheduleAction::Backup,
        Some(text) => ScheduleAction::parse(text).ok_or_else(|| {
            PolicyError::new(
                entry.field("action"),
                text,
                "unknown action; expected backup (takes a backup) or drill (restores the newest backup into a scratch database and times it)",
            )
        })?,
    };
    if action == ScheduleAction::Drill && raw.retention.is_some() {
        return Err(PolicyError::new(
            entry.field("retention"),
            "[schedule.retention]",
            "a drill schedule takes no backups, so it has no retention; remove the retention table or give it to a backup schedule or a [[retention]] rule",
        ));
    }
    let retention = raw
        .retention
        .map(|raw| retention(&entry.field("retention"), raw, timezone))
        .transpose()?;
    Ok(Schedule {
        name,
        selector,
        cron,
        timezone,
        jitter,
        action,
        retention,
    })
}

/// The keys of a retention table; `path` is where the table sits, and `timezone` the default
/// for its GFS boundaries.
fn retention(path: &str, raw: RawRetention, timezone: Tz) -> Result<Retention, PolicyError> {
    let field = |key: &str| format!("{path}.{key}");
    Ok(Retention {
        keep_days: count(field("keep_days"), raw.keep_days, DEFAULT_KEEP_DAYS)?,
        keep_last: count(field("keep_last"), raw.keep_last, 0)?,
        daily: count(field("daily"), raw.daily, 0)?,
        weekly: count(field("weekly"), raw.weekly, 0)?,
        monthly: count(field("monthly"), raw.monthly, 0)?,
        timezone: match &raw.timezone {
            Some(text) => parse_timezone(&field("timezone"), text)?,
            None => timezone,
        },
    })
}

fn retention_rule(name: String, raw: RawRetentionRule) -> Result<RetentionRule, PolicyError> {
    let entry = Entry::new("retention", &name);
    let selector = parse_selector(
        &entry.field("selector"),
        raw.selector.as_deref().unwrap_or(""),
    )?;
    let keys = RawRetention {
        keep_days: raw.keep_days,
        keep_last: raw.keep_last,
        daily: raw.daily,
        weekly: raw.weekly,
        monthly: raw.monthly,
        timezone: raw.timezone,
    };
    Ok(RetentionRule {
        retention: retention(&entry.path, keys, Tz::UTC)?,
        name,
        selector,
    })
}

/// A target duration of a tier: required, longer than zero.
fn target(
    entry: &Entry,
    key: &str,
    value: Option<&str>,
    example: &str,
) -> Result<Duration, PolicyError> {
    let text = entry.required(
        key,
        value,
        &format!("give a duration such as {key} = \"{example}\""),
    )?;
    let duration = parse_duration(&entry.field(key), text)?;
    if duration.is_zero() {
        return Err(PolicyError::new(
            entry.field(key),
            text,
            format!("must be longer than zero, e.g. {key} = \"{example}\""),
        ));
    }
    Ok(duration)
}

fn tier(name: String, raw: RawTier) -> Result<Tier, PolicyError> {
    let entry = Entry::new("tiers", &name);
    // Unlike other entries, a missing selector is not the whole fleet: the tier then only
    // applies as the default tier.
    let selector = raw
        .selector
        .as_deref()
        .map(|text| parse_selector(&entry.field("selector"), text))
        .transpose()?;
    let rto = target(&entry, "rto", raw.rto.as_deref(), "30m")?;
    let rpo = target(&entry, "rpo", raw.rpo.as_deref(), "24h")?;
    Ok(Tier {
        name,
        rto,
        rpo,
        selector,
    })
}

/// `default_tier`: `standard` unless given; it must name one of `tiers`.
fn default_tier(value: Option<String>, tiers: &[Tier]) -> Result<String, PolicyError> {
    let given = value.is_some();
    let name = value.unwrap_or_else(|| DEFAULT_TIER.to_owned());
    if tiers.iter().any(|tier| tier.name == name) {
        return Ok(name);
    }
    let names = tiers
        .iter()
        .map(|tier| tier.name.as_str())
        .collect::<Vec<_>>()
        .join(", ");
    let problem = if given {
        format!("no tier has this name; name one of the tiers: {names}")
    } else {
        format!(
            "no tier has this name, and it is the default tier when default_tier is not given; set default_tier to one of the tiers: {names}"
        )
    };
    Err(PolicyError::new("default_tier", name, problem))
}

fn check(name: String, raw: RawCheck) -> Result<CheckRule, PolicyError> {
    let entry = Entry::new("checks", &name);
    let selector = parse_selector(
        &entry.field("selector"),
        raw.selector.as_deref().unwrap_or(""),
    )?;
    let text = entry.required(
        "sql",
        raw.sql.as_deref(),
        "give one query that returns one boolean, e.g. sql = \"select count(*) > 0 from orders\"",
    )?;
    let sql = normalize_check_sql(text)
        .map_err(|problem| PolicyError::new(entry.field("sql"), text, problem))?;
    Ok(CheckRule {
        name,
        selector,
        sql,
    })
}

/// The `[migrate]` table; keys left out keep their defaults.
fn migrate(raw: RawMigrate) -> Result<MigratePolicy, PolicyError> {
    let default = MigratePolicy::default();
    let guard = match raw.guard.as_deref() {
        None => default.guard,
        Some(text) if text.trim().is_empty() => None,
        Some(text) => Some(parse_selector("migrate.guard", text)?),
    };
    for (index, pattern) in raw.deny_sql.iter().enumerate() {
        warden_shared::migration::validate_sql_pattern(pattern).map_err(|e| {
            PolicyError::new(
                format!("migrate.deny_sql[{index}]"),
                pattern.as_str(),
                format!(
                    "{e}; write the statement's keywords, with ... for any words, e.g. \"ALTER TABLE ... DROP COLUMN ...\""
                ),
            )
        })?;
    }
    for (index, fragment) in raw.deny_commands.iter().enumerate() {
        if fragment.trim().is_empty() {
            return Err(PolicyError::new(
                format!("migrate.deny_commands[{index}]"),
                fragment.as_str(),
                "an empty fragment would match every command; give part of a command line, e.g. \"flyway clean\"",
            ));
        }
    }
    let on_check_failure = match raw.on_check_failure.as_deref() {
        None => default.on_check_failure,
        Some(text) => text.parse::<OnCheckFailure>().map_err(|_| {
            PolicyError::new(
                "migrate.on_check_failure",
                text,
                "unknown value; expected stop (stop and say how to restore the pre-migration backup) or restore (restore it at once)",
            )
        })?,
    };
    Ok(MigratePolicy {
        guard,
        deny_sql: raw.deny_sql,
        deny_commands: raw.deny_commands,
        on_check_failure,
    })
}

// ---- printing -----------------------------------------------------------------------------

fn kind_name(kind: WindowKind) -> &'static str {
    match kind {
        WindowKind::Maintenance => "maintenance",
        WindowKind::Freeze => "freeze",
    }
}

fn duration_text(duration: Duration) -> String {
    humantime::format_duration(duration).to_string()
}

/// A count printed only when it is not 0, its default.
fn nonzero(value: u32) -> Option<i64> {
    (value != 0).then_some(i64::from(value))
}

fn raw_retention(retention: &Retention, default_timezone: Tz) -> RawRetention {
    RawRetention {
        keep_days: Some(i64::from(retention.keep_days)),
        keep_last: nonzero(retention.keep_last),
        daily: nonzero(retention.daily),
        weekly: nonzero(retention.weekly),
        monthly: nonzero(retention.monthly),
        timezone: (retention.timezone != default_timezone)
            .then(|| retention.timezone.name().to_owned()),
    }
}

impl FleetPolicy {
    /// Prints the policy as a document that `parse` reads back to an equal policy: the header
    /// comment, `default_tier`, `[limits]`, `[migrate]`, then windows, schedules, retention
    /// rules, tiers and checks in their order, each with its keys in a fixed order. Defaults
    /// that say nothing are left out (a zero jitter, the backup action, zero counts, the
    /// built-in tiers, `default_tier = "standard"` when the tiers are the built-in ones, a
    /// `[migrate]` table of defaults, empty deny lists); the scope, time zone and `keep_days`
    /// always print.
    pub fn to_toml(&self) -> String {
        let print_tiers = self.tiers != builtin_tiers();
        let raw = RawDocument {
            default_tier: (print_tiers || self.default_tier != DEFAULT_TIER)
                .then(|| self.default_tier.clone()),
            limits: Some(RawLimits {
                per_agent: Some(i64::from(self.limits.per_agent)),
                fleet_backups: Some(i64::from(self.limits.fleet_backups)),
            }),
            migrate: (self.migrate != MigratePolicy::default()).then(|| RawMigrate {
                guard: Some(self.migrate.guard_text()),
                deny_sql: self.migrate.deny_sql.clone(),
                deny_commands: self.migrate.deny_commands.clone(),
                on_check_failure: Some(self.migrate.on_check_failure.as_str().to_owned()),
            }),
            windows: self.windows.iter().map(raw_window).collect(),
            schedules: self
                .schedules
                .iter()
                .map(|schedule| RawSchedule {
                    name: Some(schedule.name.clone()),
                    selector: Some(schedule.selector.to_string()),
                    cron: Some(schedule.cron.as_str().to_owned()),
                    timezone: Some(schedule.timezone.name().to_owned()),
                    jitter: (!schedule.jitter.is_zero()).then(|| duration_text(schedule.jitter)),
                    action: (schedule.action != ScheduleAction::Backup)
                        .then(|| schedule.action.as_str().to_owned()),
                    retention: schedule
                        .retention
                        .as_ref()
                        .map(|retention| raw_retention(retention, schedule.timezone)),
                })
                .collect(),
            retention: self
                .retention
                .iter()
                .map(|rule| {
                    let keys = raw_retention(&rule.retention, Tz::UTC);
                    RawRetentionRule {
                        name: Some(rule.name.clone()),
                        selector: Some(rule.selector.to_string()),
                        keep_days: keys.keep_days,
                        keep_last: keys.keep_last,
                        daily: keys.daily,
                        weekly: keys.weekly,
                        monthly: keys.monthly,
                        timezone: keys.timezone,
                    }
                })
                .collect(),
            tiers: if print_tiers {
                self.tiers
                    .iter()
                    .map(|tier| RawTier {
                        name: Some(tier.name.clone()),
                        selector: tier.selector.as_ref().map(ToString::to_string),
                        rto: Some(duration_text(tier.rto)),
                        rpo: Some(duration_text(tier.rpo)),
                    })
                    .collect()
            } else {
                Vec::new()
            },
            checks: self
                .checks
                .iter()
                .map(|check| RawCheck {
                    name: Some(check.name.clone()),
                    selector: Some(check.selector.to_string()),
                    sql: Some(check.sql.clone()),
                })
                .collect(),
        };
        // Only strings, integers and tables: serializing cannot fail.
        let body = toml::to_string(&raw).expect("a fleet policy always serializes to TOML");
        format!("{HEADER}\n{body}")
    }
}

fn raw_window(window: &Window) -> RawWindow {
    let mut raw = RawWindow {
        name: Some(window.name.clone()),
        selector: Some(window.selector.to_string()),
        kind: Some(kind_name(window.kind).to_owned()),
        timezone: Some(window.timezone.name().to_owned()),
        ..RawWindow::default()
    };
    match &window.recurrence {
        Recurrence::Weekly(spec) => raw.weekly = Some(spec.as_str().to_owned()),
        Recurrence::Cron { cron, duration } => {
            raw.cron = Some(cron.as_str().to_owned());
            raw.duration = Some(duration_text(*duration));
        }
        Recurrence::Once { start, end } => {
            raw.start = Some(toml::Value::String(format_local_time(start)));
            raw.end = Some(toml::Value::String(format_local_time(end)));
        }
    }
    raw
}

// ---- differences --------------------------------------------------------------------------

/// The fields of an entry as `warden apply` shows them, in a fixed order.
type Fields = Vec<(&'static str, String)>;

fn selector_text(selector: &warden_shared::Selector) -> String {
    if selector.is_everything() {
        "(whole fleet)".to_owned()
    } else {
        selector.to_string()
    }
}

fn limits_fields(limits: &Limits) -> Fields {
    vec![
        ("per_agent", limits.per_agent.to_string()),
        ("fleet_backups", limits.fleet_backups.to_string()),
    ]
}

fn window_fields(window: &Window) -> Fields {
    let mut fields = vec![
        ("selector", selector_text(&window.selector)),
        ("kind", kind_name(window.kind).to_owned()),
        ("timezone", window.timezone.name().to_owned()),
    ];
    match &window.recurrence {
        Recurrence::Weekly(spec) => fields.push(("weekly", spec.as_str().to_owned())),
        Recurrence::Cron { cron, duration } => {
            fields.push(("cron", cron.as_str().to_owned()));
            fields.push(("duration", duration_text(*duration)));
        }
        Recurrence::Once { start, end } => {
            fields.push(("start", format_local_time(start)));
            fields.push(("end", format_local_time(end)));
        }
    }
    fields
}

fn retention_fields(fields: &mut Fields, keys: [&'static str; 6], retention: &Retention) {
    let values = [
        retention.keep_days.to_string(),
        retention.keep_last.to_string(),
        retention.daily.to_string(),
        retention.weekly.to_string(),
        retention.monthly.to_string(),
        retention.timezone.name().to_owned(),
    ];
    fields.extend(keys.into_iter().zip(values));
}

fn schedule_fields(schedule: &Schedule) -> Fields {
    let mut fields = vec![
        ("selector", selector_text(&schedule.selector)),
        ("cron", schedule.cron.as_str().to_owned()),
        ("timezone", schedule.timezone.name().to_owned()),
        ("jitter", duration_text(schedule.jitter)),
        ("action", schedule.action.as_str().to_owned()),
    ];
    if let Some(retention) = &schedule.retention {
        let keys = [
            "retention.keep_days",
            "retention.keep_last",
            "retention.daily",
            "retention.weekly",
            "retention.monthly",
            "retention.timezone",
        ];
        retention_fields(&mut fields, keys, retention);
    }
    fields
}

fn retention_rule_fields(rule: &RetentionRule) -> Fields {
    let mut fields = vec![("selector", selector_text(&rule.selector))];
    let keys = [
        "keep_days",
        "keep_last",
        "daily",
        "weekly",
        "monthly",
        "timezone",
    ];
    retention_fields(&mut fields, keys, &rule.retention);
    fields
}

fn tier_fields(tier: &Tier) -> Fields {
    // A tier without a selector has no selector field: a change shows it as `(none)`.
    let mut fields = Vec::new();
    if let Some(selector) = &tier.selector {
        fields.push(("selector", selector_text(selector)));
    }
    fields.push(("rto", duration_text(tier.rto)));
    fields.push(("rpo", duration_text(tier.rpo)));
    fields
}

fn migrate_fields(migrate: &MigratePolicy) -> Fields {
    let list = |items: &[String]| {
        if items.is_empty() {
            "(none)".to_owned()
        } else {
            items
                .iter()
                .map(|item| format!("{item:?}"))
                .collect::<Vec<_>>()
                .join(", ")
        }
    };
    vec![
        (
            "guard",
            migrate
                .guard
                .as_ref()
                .map_or_else(|| "(no database)".to_owned(), selector_text),
        ),
        ("deny_sql", list(&migrate.deny_sql)),
        ("deny_commands", list(&migrate.deny_commands)),
        (
            "on_check_failure",
            migrate.on_check_failure.as_str().to_owned(),
        ),
    ]
}

fn check_fields(check: &CheckRule) -> Fields {
    // A change prints on one line: white space runs in a multi-line query become one space.
    let sql = check.sql.split_whitespace().collect::<Vec<_>>().join(" ");
    vec![("selector", selector_text(&check.selector)), ("sql", sql)]
}

/// `key: value; key: value`, for an added or removed entry.
fn listed(fields: &Fields) -> String {
    fields
        .iter()
        .map(|(key, value)| format!("{key}: {value}"))
        .collect::<Vec<_>>()
        .join("; ")
}

/// `key: old -> new` for each field that differs; a field only one side has is `(none)` on
/// the other.
fn changed(old: &Fields, new: &Fields) -> String {
    let lookup = |fields: &Fields, key: &str| {
        fields
            .iter()
            .find(|(k, _)| *k == key)
            .map(|(_, value)| value.clone())
    };
    let mut keys: Vec<&'static str> = old.iter().map(|(key, _)| *key).collect();
    for (key, _) in new {
        if !keys.contains(key) {
            keys.push(key);
        }
    }
    keys.into_iter()
        .filter_map(|key| {
            let (before, after) = (lookup(old, key), lookup(new, key));
            (before != after).then(|| {
                let none = || "(none)".to_owned();
                format!(
                    "{key}: {} -> {}",
                    before.unwrap_or_else(none),
                    after.unwrap_or_else(none)
                )
            })
        })
        .collect::<Vec<_>>()
        .join("; ")
}

/// Appends the changes between two lists of named entries, sorted by name.
fn diff_entries<T: PartialEq>(
    what: &str,
    old: &[T],
    new: &[T],
    name: impl Fn(&T) -> &str,
    fields: impl Fn(&T) -> Fields,
    changes: &mut Vec<Change>,
) {
    let old: BTreeMap<&str, &T> = old.iter().map(|entry| (name(entry), entry)).collect();
    let new: BTreeMap<&str, &T> = new.iter().map(|entry| (name(entry), entry)).collect();
    let mut names: Vec<&str> = old.keys().chain(new.keys()).copied().collect();
    names.sort_unstable();
    names.dedup();
    for entry_name in names {
        let (op, detail) = match (old.get(entry_name), new.get(entry_name)) {
            (Some(before), Some(after)) if before == after => continue,
            (Some(before), Some(after)) => {
                (ChangeOp::Changed, changed(&fields(before), &fields(after)))
            }
            (None, Some(after)) => (ChangeOp::Added, listed(&fields(after))),
            (Some(before), None) => (ChangeOp::Removed, listed(&fields(before))),
            (None, None) => continue,
        };
        changes.push(Change {
            op,
            what: what.to_owned(),
            name: entry_name.to_owned(),
            detail,
        });
    }
}

impl FleetPolicy {
    /// What applying `next` over `self` changes: limits first, then windows, schedules,
    /// retention rules and tiers, each sorted by name, the default tier, checks sorted by
    /// name, then the `[migrate]` table. Entries are matched by name, so a renamed entry shows as one removed and one
    /// added. Tiers are compared as in force, so a document that drops its tiers shows the
    /// built-in ones coming back.
    pub fn diff(&self, next: &FleetPolicy) -> Vec<Change> {
        let mut changes = Vec::new();
        if self.limits != next.limits {
            changes.push(Change {
                op: ChangeOp::Changed,
                what: "limits".to_owned(),
                name: "limits".to_owned(),
                detail: changed(&limits_fields(&self.limits), &limits_fields(&next.limits)),
            });
        }
        diff_entries(
            "window",
            &self.windows,
            &next.windows,
            |w| &w.name,
            window_fields,
            &mut changes,
        );
        diff_entries(
            "schedule",
            &self.schedules,
            &next.schedules,
            |s| &s.name,
            schedule_fields,
            &mut changes,
        );
        diff_entries(
            "retention",
            &self.retention,
            &next.retention,
            |r| &r.name,
            retention_rule_fields,
            &mut changes,
        );
        diff_entries(
            "tier",
            &self.tiers,
            &next.tiers,
            |t| &t.name,
            tier_fields,
            &mut changes,
        );
        if self.default_tier != next.default_tier {
            changes.push(Change {
                op: ChangeOp::Changed,
                what: "default_tier".to_owned(),
                name: "default_tier".to_owned(),
                detail: format!(
                    "default_tier: {} -> {}",
                    self.default_tier, next.default_tier
                ),
            });
        }
        diff_entries(
            "check",
            &self.checks,
            &next.checks,
            |c| &c.name,
            check_fields,
            &mut changes,
        );
        if self.migrate != next.migrate {
            changes.push(Change {
                op: ChangeOp::Changed,
                what: "migrate".to_owned(),
                name: "migrate".to_owned(),
                detail: changed(
                    &migrate_fields(&self.migrate),
                    &migrate_fields(&next.migrate),
                ),
            });
        }
        changes
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use warden_shared::labels::labels;

    /// The example the README and the demo point at must stay valid.
    #[test]
    fn the_shipped_example_parses_and_round_trips() {
        let text = include_str!("../../../deploy/fleet.toml");
        let policy = FleetPolicy::parse(text).expect("deploy/fleet.toml is valid");
        assert!(
            policy
                .schedules
                .iter()
                .any(|s| s.action == ScheduleAction::Drill)
        );
        assert!(!policy.checks.is_empty());
        assert_eq!(
            policy.migrate.on_check_failure,
            warden_shared::OnCheckFailure::Restore
        );
        assert_eq!(policy.migrate.deny_sql.len(), 1);
        assert_eq!(
            FleetPolicy::parse(&policy.to_toml()).expect("reparses"),
            policy
        );
    }

    const EXAMPLE: &str = r#"
[limits]
per_agent = 3
fleet_backups = 6

[[window]]
name = "prod-sunday"
selector = "env=prod,team=payments"
kind = "maintenance"
timezone = "Europe/Berlin"
weekly = "sun 02:00-04:00"

[[window]]
name = "nightly-cron"
kind = "maintenance"
timezone = "UTC"
cron = "0 2 * * sun"
duration = "2h"

[[window]]
name = "holiday.freeze"
selector = "env=prod"
kind = "freeze"
timezone = "America/New_York"
start = "2026-12-20T00:00"
end = "2027-01-02 06:30:15"

[[schedule]]
name = "nightly"
selector = "env=prod"
cron = "0 3 * * *"
timezone = "Europe/Berlin"
jitter = "5m"
action = "backup"
[schedule.retention]
keep_last = 7
daily = 7
weekly = 4
monthly = 6

[[schedule]]
name = "hourly"
cron = "0 * * * *"
[schedule.retention]
keep_days = 2
timezone = "Asia/Tokyo"

[[retention]]
name = "default"
selector = ""
keep_days = 30

[[retention]]
name = "payments_long"
selector = "team=payments"
keep_days = 0
keep_last = 10
monthly = 24
timezone = "Europe/Berlin"
"#;

    fn parse(text: &str) -> FleetPolicy {
        FleetPolicy::parse(text).unwrap_or_else(|e| panic!("{e}"))
    }

    fn error(text: &str) -> PolicyError {
        match FleetPolicy::parse(text) {
            Ok(policy) => panic!("accepted {text:?} as {policy:?}"),
            Err(e) => e,
        }
    }

    #[test]
    fn parses_the_documented_format() {
        let policy = parse(EXAMPLE);
        assert_eq!(
            policy.limits,
            Limits {
                per_agent: 3,
                fleet_backups: 6
            }
        );

        let names: Vec<&str> = policy.windows.iter().map(|w| w.name.as_str()).collect();
        assert_eq!(names, ["prod-sunday", "nightly-cron", "holiday.freeze"]);
        let sunday = &policy.windows[0];
        assert_eq!(sunday.selector.to_string(), "env=prod,team=payments");
        assert_eq!(sunday.kind, WindowKind::Maintenance);
        assert_eq!(sunday.timezone, chrono_tz::Europe::Berlin);
        assert!(
            matches!(&sunday.recurrence, Recurrence::Weekly(spec) if spec.as_str() == "sun 02:00-04:00")
        );
        assert!(policy.windows[1].selector.is_everything());
        assert!(matches!(
            &policy.windows[1].recurrence,
            Recurrence::Cron { cron, duration }
                if cron.as_str() == "0 2 * * sun" && *duration == Duration::from_secs(7200)
        ));
        let holiday = &policy.windows[2];
        assert_eq!(holiday.kind, WindowKind::Freeze);
        let Recurrence::Once { start, end } = &holiday.recurrence else {
            panic!("{:?}", holiday.recurrence);
        };
        assert_eq!(format_local_time(start), "2026-12-20T00:00");
        assert_eq!(format_local_time(end), "2027-01-02T06:30:15");

        let nightly = &policy.schedules[0];
        assert_eq!(nightly.cron.as_str(), "0 3 * * *");
        assert_eq!(nightly.timezone, chrono_tz::Europe::Berlin);
        assert_eq!(nightly.jitter, Duration::from_secs(300));
        assert_eq!(nightly.action, ScheduleAction::Backup);
        assert_eq!(
            nightly.retention,
            Some(Retention {
                keep_days: 30,
                keep_last: 7,
                daily: 7,
                weekly: 4,
                monthly: 6,
                // GFS boundaries default to the schedule's time zone.
                timezone: chrono_tz::Europe::Berlin,
            })
        );
        let hourly = &policy.schedules[1];
        assert_eq!(hourly.timezone, Tz::UTC);
        assert_eq!(hourly.jitter, Duration::ZERO);
        assert_eq!(
            hourly.retention,
            Some(Retention {
                keep_days: 2,
                timezone: chrono_tz::Asia::Tokyo,
                ..Retention::default()
            })
        );

        assert_eq!(policy.retention.len(), 2);
        assert_eq!(policy.retention[0].retention, Retention::default());
        assert_eq!(
            policy.retention[1].retention,
            Retention {
                keep_days: 0,
                keep_last: 10,
                daily: 0,
                weekly: 0,
                monthly: 24,
                timezone: chrono_tz::Europe::Berlin,
            }
        );
    }

    #[test]
    fn an_empty_document_is_the_default_policy() {
        assert_eq!(parse(""), FleetPolicy::default());
        assert_eq!(parse("# nothing yet\n"), FleetPolicy::default());
        assert_eq!(parse("[limits]\n").limits, Limits::default());
        assert_eq!(
            parse("[limits]\nfleet_backups = 9\n").limits,
            Limits {
                per_agent: 2,
                fleet_backups: 9
            }
        );
    }

    #[test]
    fn schedule_defaults() {
        let policy = parse("[[schedule]]\nname = \"s\"\ncron = \"0 3 * * *\"\n");
        let schedule = &policy.schedules[0];
        assert!(schedule.selector.is_everything());
        assert_eq!(schedule.timezone, Tz::UTC);
        assert_eq!(schedule.jitter, Duration::ZERO);
        assert_eq!(schedule.action, ScheduleAction::Backup);
        assert_eq!(schedule.retention, None);
        // A present but empty retention table keeps 30 days.
        let policy = parse(
            "[[schedule]]\nname = \"s\"\ncron = \"0 3 * * *\"\ntimezone = \"Europe/Paris\"\n[schedule.retention]\n",
        );
        assert_eq!(
            policy.schedules[0].retention,
            Some(Retention {
                timezone: chrono_tz::Europe::Paris,
                ..Retention::default()
            })
        );
    }

    #[test]
    fn one_off_windows_accept_several_local_time_spellings() {
        for (start, expected) in [
            ("\"2026-12-20T00:00\"", "2026-12-20T00:00"),
            ("\"2026-12-20 00:00\"", "2026-12-20T00:00"),
            ("\"2026-12-20T00:00:30\"", "2026-12-20T00:00:30"),
            ("\"2026-12-20 00:00:30\"", "2026-12-20T00:00:30"),
            // A TOML local date-time, unquoted.
            ("2026-12-20T00:00:30", "2026-12-20T00:00:30"),
            ("2026-12-20 00:00:00", "2026-12-20T00:00"),
        ] {
            let text = format!(
                "[[window]]\nname = \"w\"\nkind = \"freeze\"\ntimezone = \"UTC\"\nstart = {start}\nend = \"2027-01-01T00:00\"\n"
            );
            let policy = parse(&text);
            let Recurrence::Once { start: parsed, .. } = &policy.windows[0].recurrence else {
                panic!("{:?}", policy.windows[0].recurrence);
            };
            assert_eq!(format_local_time(parsed), expected, "{start}");
        }
    }

    #[test]
    fn names_are_unique_per_kind_only() {
        let policy = parse(
            r#"
[[window]]
name = "nightly"
kind = "freeze"
timezone = "UTC"
weekly = "sun 02:00-04:00"
[[schedule]]
name = "nightly"
cron = "0 3 * * *"
[[retention]]
name = "nightly"
"#,
        );
        assert_eq!(policy.windows[0].name, "nightly");
        assert_eq!(policy.schedules[0].name, "nightly");
        assert_eq!(policy.retention[0].name, "nightly");
    }

    /// A window and a schedule that are valid so far, for the cases below to extend.
    const W: &str = "[[window]]\nname = \"w\"\nkind = \"freeze\"\ntimezone = \"UTC\"\n";
    const S: &str = "[[schedule]]\nname = \"s\"\ncron = \"0 3 * * *\"\n";

    /// Checks that each document is rejected with the expected field and value, and a problem
    /// that contains the expected words; reports every case that is not.
    fn assert_rejected(cases: &[(String, &str, &str, &str)]) {
        let mut wrong = Vec::new();
        for (text, field, value, problem) in cases {
            let e = error(text);
            if e.field != *field || e.value != *value || !e.problem.contains(problem) {
                wrong.push(format!(
                    "{text:?}\n  got:  {e}\n  want: {field} = {value:?}: ...{problem}..."
                ));
            }
        }
        assert!(wrong.is_empty(), "{}", wrong.join("\n"));
    }

    #[test]
    fn rejects_malformed_toml_and_bad_limits() {
        #[rustfmt::skip]
        let cases: Vec<(String, &str, &str, &str)> = vec![
            // (document, field, value, words in the problem)
            ("[[window]\nname = 1".into(), "fleet.toml", "]", "line 1, column 9"),
            (format!("{W}weekly = \"sun 02:00-04:00\"\ncolour = \"red\"\n"), "fleet.toml", "colour", "unknown field `colour`"),
            ("[limit]\nper_agent = 1\n".into(), "fleet.toml", "limit", "unknown field `limit`"),
            (format!("{S}[schedule.retention]\nkeep_hours = 1\n"), "fleet.toml", "keep_hours", "unknown field"),
            ("[limits]\nper_agent = \"two\"\n".into(), "fleet.toml", "\"two\"", "invalid type"),
            ("[limits]\nper_agent = 0\n".into(), "limits.per_agent", "0", "from 1"),
            ("[limits]\nfleet_backups = -4\n".into(), "limits.fleet_backups", "-4", "from 1"),
        ];
        assert_rejected(&cases);
    }

    #[test]
    fn rejects_bad_and_repeated_names() {
        let long_name = "n".repeat(64);
        #[rustfmt::skip]
        let cases: Vec<(String, &str, &str, &str)> = vec![
            ("[[window]]\nkind = \"freeze\"\n".into(), "window[0].name", "", "missing"),
            ("[[window]]\nname = \"prod sunday\"\n".into(), "window[0].name", "prod sunday", "' '"),
            ("[[window]]\nname = \"\"\n".into(), "window[0].name", "", "empty"),
            (format!("[[window]]\nname = \"{long_name}\"\n"), "window[0].name", long_name.as_str(), "64 characters"),
            (format!("{W}weekly = \"sun 02:00-04:00\"\n{W}weekly = \"sun 02:00-04:00\"\n"), "window[1].name", "w", "unique"),
            (format!("{S}{S}"), "schedule[1].name", "s", "unique"),
            (format!("{S}{S}[[schedule]]\nname = \"bad/name\"\n"), "schedule[1].name", "s", "unique"),
            (format!("{S}[[schedule]]\nname = \"ok\"\ncron = \"0 3 * * *\"\n[[schedule]]\nname = \"bad/name\"\n"), "schedule[2].name", "bad/name", "'/'"),
            ("[[retention]]\nname = \"r\"\n[[retention]]\nname = \"r\"\n".into(), "retention[1].name", "r", "unique among retention rules"),
            ("[[retention]]\nselector = \"env=prod\"\n".into(), "retention[0].name", "", "missing"),
        ];
        assert_rejected(&cases);
    }

    #[test]
    fn rejects_bad_windows() {
        #[rustfmt::skip]
        let cases: Vec<(String, &str, &str, &str)> = vec![
            (format!("{W}weekly = \"sun 02:00-04:00\"\nselector = \"env\"\n"), "window \"w\".selector", "env", "no '='"),
            ("[[window]]\nname = \"w\"\ntimezone = \"UTC\"\nweekly = \"sun 02:00-04:00\"\n".into(), "window \"w\".kind", "", "missing"),
            ("[[window]]\nname = \"w\"\nkind = \"thaw\"\ntimezone = \"UTC\"\n".into(), "window \"w\".kind", "thaw", "maintenance"),
            ("[[window]]\nname = \"w\"\nkind = \"freeze\"\nweekly = \"sun 02:00-04:00\"\n".into(), "window \"w\".timezone", "", "IANA"),
            ("[[window]]\nname = \"w\"\nkind = \"freeze\"\ntimezone = \"Mars/Olympus\"\n".into(), "window \"w\".timezone", "Mars/Olympus", "IANA"),
            (W.into(), "window \"w\"", "", "no recurrence"),
            (format!("{W}weekly = \"sun 02:00-04:00\"\ncron = \"0 2 * * sun\"\nduration = \"2h\"\n"), "window \"w\"", "weekly, cron", "more than one"),
            (format!("{W}cron = \"0 2 * * sun\"\nstart = \"2026-12-20T00:00\"\n"), "window \"w\"", "cron, start/end", "exactly one"),
            (format!("{W}cron = \"0 2 * * sun\"\n"), "window \"w\".duration", "", "needs a duration"),
            (format!("{W}weekly = \"sun 02:00-04:00\"\nduration = \"2h\"\n"), "window \"w\".duration", "2h", "goes with cron"),
            (format!("{W}cron = \"0 2 * * sun\"\nduration = \"0s\"\n"), "window \"w\".duration", "0s", "longer than zero"),
            (format!("{W}cron = \"0 2 * * sun\"\nduration = \"8days\"\n"), "window \"w\".duration", "8days", "7 days"),
            (format!("{W}cron = \"0 2 * * sun\"\nduration = \"two hours\"\n"), "window \"w\".duration", "two hours", "duration"),
            (format!("{W}cron = \"0 25 * * *\"\nduration = \"2h\"\n"), "window \"w\".cron", "0 25 * * *", "cron"),
            (format!("{W}start = \"2026-12-20T00:00\"\n"), "window \"w\".end", "", "both start and end"),
            (format!("{W}start = \"2026-12-20T00:00\"\nend = \"2026-12-20T00:00\"\n"), "window \"w\".end", "2026-12-20T00:00", "after start"),
            (format!("{W}start = \"2026-12-20T00:00\"\nend = \"2026-12-19T00:00\"\n"), "window \"w\".end", "2026-12-19T00:00", "after start"),
            (format!("{W}start = \"20.12.2026\"\nend = \"2026-12-21T00:00\"\n"), "window \"w\".start", "20.12.2026", "2026-12-20T00:00"),
            (format!("{W}start = 2026-12-20T00:00:00Z\nend = \"2026-12-21T00:00\"\n"), "window \"w\".start", "2026-12-20T00:00:00Z", "without an offset"),
            (format!("{W}start = 2026-12-20\nend = \"2026-12-21T00:00\"\n"), "window \"w\".start", "2026-12-20", "local date and time"),
            (format!("{W}start = 5\nend = \"2026-12-21T00:00\"\n"), "window \"w\".start", "5", "local date and time"),
        ];
        assert_rejected(&cases);
    }

    #[test]
    fn rejects_bad_schedules_and_retention() {
        #[rustfmt::skip]
        let cases: Vec<(String, &str, &str, &str)> = vec![
            ("[[schedule]]\nname = \"s\"\n".into(), "schedule \"s\".cron", "", "missing"),
            ("[[schedule]]\nname = \"s\"\ncron = \"every night\"\n".into(), "schedule \"s\".cron", "every night", "cron"),
            (format!("{S}timezone = \"Berlin\"\n"), "schedule \"s\".timezone", "Berlin", "IANA"),
            (format!("{S}selector = \"env=prod,,\"\n"), "schedule \"s\".selector", "env=prod,,", "no '='"),
            (format!("{S}jitter = \"soon\"\n"), "schedule \"s\".jitter", "soon", "duration"),
            (format!("{S}jitter = \"2days\"\n"), "schedule \"s\".jitter", "2days", "24h"),
            (format!("{S}action = \"restore\"\n"), "schedule \"s\".action", "restore", "expected backup (takes a backup) or drill"),
            (format!("{S}[schedule.retention]\nkeep_days = -1\n"), "schedule \"s\".retention.keep_days", "-1", "from 0"),
            (format!("{S}[schedule.retention]\nmonthly = 4294967296\n"), "schedule \"s\".retention.monthly", "4294967296", "from 0"),
            (format!("{S}[schedule.retention]\ntimezone = \"Nowhere\"\n"), "schedule \"s\".retention.timezone", "Nowhere", "IANA"),
            ("[[retention]]\nname = \"r\"\nkeep_last = -3\n".into(), "retention \"r\".keep_last", "-3", "from 0"),
            ("[[retention]]\nname = \"r\"\ntimezone = \"CEST\"\n".into(), "retention \"r\".timezone", "CEST", "IANA"),
            ("[[retention]]\nname = \"r\"\nselector = \"team\"\n".into(), "retention \"r\".selector", "team", "no '='"),
        ];
        assert_rejected(&cases);
    }

    #[test]
    fn toml_errors_carry_line_and_column() {
        let e = error("[limits]\nper_agent = 2\nfleet_backups = = 3\n");
        assert_eq!(e.field, "fleet.toml");
        assert!(e.problem.contains("line 3, column"), "{e}");
    }

    #[test]
    fn round_trips_a_rich_policy() {
        let policy = parse(EXAMPLE);
        let text = policy.to_toml();
        assert!(text.starts_with("# Warden fleet policy\n"), "{text}");
        assert_eq!(parse(&text), policy, "{text}");
        // Printing is canonical: what was read back prints the same.
        assert_eq!(parse(&text).to_toml(), text);
    }

    #[test]
    fn round_trips_a_policy_built_in_code() {
        let policy = FleetPolicy {
            limits: Limits {
                per_agent: 1,
                fleet_backups: 100,
            },
            windows: vec![Window {
                name: "w".to_owned(),
                selector: "region=eu-west-1".parse().unwrap(),
                kind: WindowKind::Freeze,
                recurrence: Recurrence::Cron {
                    cron: CronExpr::parse("cron", "30 1 * * mon-fri").unwrap(),
                    duration: Duration::from_secs(5400),
                },
                timezone: chrono_tz::Australia::Sydney,
            }],
            schedules: vec![Schedule {
                name: "s".to_owned(),
                selector: warden_shared::Selector::everything(),
                cron: CronExpr::parse("cron", "0 */6 * * *").unwrap(),
                timezone: Tz::UTC,
                jitter: Duration::from_secs(90),
                action: ScheduleAction::Backup,
                retention: Some(Retention {
                    keep_days: 0,
                    keep_last: 3,
                    daily: 0,
                    weekly: 2,
                    monthly: 0,
                    timezone: chrono_tz::America::Chicago,
                }),
            }],
            retention: vec![],
            tiers: vec![
                Tier {
                    name: "gold".to_owned(),
                    rto: Duration::from_secs(330),
                    rpo: Duration::from_secs(900),
                    selector: Some("sla=gold".parse().unwrap()),
                },
                Tier {
                    name: "bronze".to_owned(),
                    rto: Duration::from_secs(4 * 3600),
                    rpo: Duration::from_secs(7 * 24 * 3600),
                    selector: None,
                },
            ],
            default_tier: "bronze".to_owned(),
            checks: vec![CheckRule {
                name: "c".to_owned(),
                selector: warden_shared::Selector::everything(),
                sql: "select 'line\nbreak' <> '\"quoted\"'".to_owned(),
            }],
            migrate: MigratePolicy {
                guard: None,
                deny_sql: vec!["ALTER TABLE ... DROP COLUMN ...".to_owned()],
                deny_commands: vec!["say \"clean\"".to_owned()],
                on_check_failure: OnCheckFailure::Restore,
            },
        };
        let text = policy.to_toml();
        assert_eq!(parse(&text), policy, "{text}");
        assert!(text.contains("rto = \"5m 30s\""), "{text}");
        assert!(text.contains("rpo = \"7days\""), "{text}");
        assert!(text.contains("jitter = \"1m 30s\""), "{text}");
        assert!(text.contains("duration = \"1h 30m\""), "{text}");
        assert!(text.contains("keep_days = 0"), "{text}");
    }

    #[test]
    fn prints_the_canonical_format() {
        let policy = parse(
            r#"
[[schedule]]
jitter = "0s"
timezone = "UTC"
cron = "0 3 * * *"
name = "nightly"
selector = "team=payments, env=prod"
action = "backup"
[schedule.retention]
daily = 7
keep_last = 0
timezone = "UTC"

[[window]]
weekly = "sun 02:00-04:00"
timezone = "Europe/Berlin"
kind = "maintenance"
name = "prod-sunday"

[[retention]]
name = "default"
"#,
        );
        let expected = r#"# Warden fleet policy

[limits]
per_agent = 2
fleet_backups = 4

[[window]]
name = "prod-sunday"
selector = ""
kind = "maintenance"
timezone = "Europe/Berlin"
weekly = "sun 02:00-04:00"

[[schedule]]
name = "nightly"
selector = "env=prod,team=payments"
cron = "0 3 * * *"
timezone = "UTC"

[schedule.retention]
keep_days = 30
daily = 7

[[retention]]
name = "default"
selector = ""
keep_days = 30
"#;
        assert_eq!(policy.to_toml(), expected);
        assert_eq!(
            FleetPolicy::default().to_toml(),
            "# Warden fleet policy\n\n[limits]\nper_agent = 2\nfleet_backups = 4\n"
        );
    }

    #[test]
    fn diff_of_equal_policies_is_empty() {
        let policy = parse(EXAMPLE);
        assert_eq!(policy.diff(&policy.clone()), []);
        assert_eq!(FleetPolicy::default().diff(&FleetPolicy::default()), []);
    }

    #[test]
    fn diff_lists_changed_fields() {
        let before = parse(EXAMPLE);
        let after = parse(
            &EXAMPLE
                .replace(
                    "timezone = \"Europe/Berlin\"\nweekly = \"sun 02:00-04:00\"",
                    "timezone = \"UTC\"\nweekly = \"sat 02:00-04:00\"",
                )
                .replace("per_agent = 3", "per_agent = 1")
                .replace("jitter = \"5m\"", "jitter = \"10m\"")
                .replace("keep_last = 7\n", ""),
        );
        let changes = before.diff(&after);
        assert_eq!(
            changes,
            [
                Change {
                    op: ChangeOp::Changed,
                    what: "limits".into(),
                    name: "limits".into(),
                    detail: "per_agent: 3 -> 1".into(),
                },
                Change {
                    op: ChangeOp::Changed,
                    what: "window".into(),
                    name: "prod-sunday".into(),
                    detail:
                        "timezone: Europe/Berlin -> UTC; weekly: sun 02:00-04:00 -> sat 02:00-04:00"
                            .into(),
                },
                Change {
                    op: ChangeOp::Changed,
                    what: "schedule".into(),
                    name: "nightly".into(),
                    detail: "jitter: 5m -> 10m; retention.keep_last: 7 -> 0".into(),
                },
            ]
        );
    }

    #[test]
    fn diff_adds_and_removes_by_name_in_order() {
        let before = parse(EXAMPLE);
        let mut after = before.clone();
        // Remove one window, add two schedules out of order, change a recurrence's kind and
        // drop a schedule's retention.
        after.windows.retain(|w| w.name != "nightly-cron");
        let mut zeta = after.schedules[1].clone();
        zeta.name = "zeta".into();
        zeta.retention = None;
        let mut alpha = zeta.clone();
        alpha.name = "alpha".into();
        after.schedules.push(zeta);
        after.schedules.push(alpha);
        after.schedules[1].retention = None;
        after.windows[1].recurrence =
            Recurrence::Weekly(WeeklySpec::parse("weekly", "sat,sun 01:00-05:00").unwrap());
        after.retention.reverse();
        after.retention[0].selector = "team=billing".parse().unwrap();

        let changes = before.diff(&after);
        let summary: Vec<(ChangeOp, &str, &str)> = changes
            .iter()
            .map(|c| (c.op, c.what.as_str(), c.name.as_str()))
            .collect();
        assert_eq!(
            summary,
            [
                (ChangeOp::Changed, "window", "holiday.freeze"),
                (ChangeOp::Removed, "window", "nightly-cron"),
                (ChangeOp::Added, "schedule", "alpha"),
                (ChangeOp::Changed, "schedule", "hourly"),
                (ChangeOp::Added, "schedule", "zeta"),
                (ChangeOp::Changed, "retention", "payments_long"),
            ]
        );
        assert_eq!(
            changes[0].detail,
            "start: 2026-12-20T00:00 -> (none); end: 2027-01-02T06:30:15 -> (none); weekly: (none) -> sat,sun 01:00-05:00"
        );
        assert_eq!(
            changes[1].detail,
            "selector: (whole fleet); kind: maintenance; timezone: UTC; cron: 0 2 * * sun; duration: 2h"
        );
        assert_eq!(
            changes[2].detail,
            "selector: (whole fleet); cron: 0 * * * *; timezone: UTC; jitter: 0s; action: backup"
        );
        assert!(
            changes[3]
                .detail
                .starts_with("retention.keep_days: 2 -> (none); retention.keep_last: 0 -> (none)"),
            "{}",
            changes[3].detail
        );
        assert_eq!(changes[5].detail, "selector: team=payments -> team=billing");
    }

    /// A document with custom tiers, checks and a drill schedule, for the tests below.
    const RECOVERY: &str = r#"
default_tier = "silver"

[[schedule]]
name = "weekly-drill"
selector = "env=prod"
cron = "0 5 * * sat"
action = "drill"
jitter = "30m"

[[tiers]]
name = "gold"
selector = "sla=gold"
rto = "10m"
rpo = "15m"

[[tiers]]
name = "payments"
selector = "team=payments"
rto = "10m"
rpo = "1h"

[[tiers]]
name = "silver"
rto = "1h"
rpo = "24h"

[[tiers]]
name = "prod"
selector = "env=prod"
rto = "30m"
rpo = "4h"

[[checks]]
name = "orders-present"
selector = "team=payments"
sql = "select count(*) > 0 from orders;"

[[checks]]
name = "no-negative-balances"
sql = """
select not exists (
  select 1 from accounts where balance < 0
)
"""

[[checks]]
name = "prod-users"
selector = "env=prod"
sql = "select count(*) > 0 from users"
"#;

    #[test]
    fn parses_tiers_checks_and_drill_schedules() {
        let policy = parse(RECOVERY);
        assert_eq!(policy.default_tier, "silver");
        let tiers: Vec<(&str, u64, u64, Option<String>)> = policy
            .tiers
            .iter()
            .map(|t| {
                (
                    t.name.as_str(),
                    t.rto.as_secs(),
                    t.rpo.as_secs(),
                    t.selector.as_ref().map(ToString::to_string),
                )
            })
            .collect();
        assert_eq!(
            tiers,
            [
                ("gold", 600, 900, Some("sla=gold".to_owned())),
                ("payments", 600, 3600, Some("team=payments".to_owned())),
                ("silver", 3600, 86400, None),
                ("prod", 1800, 14400, Some("env=prod".to_owned())),
            ]
        );
        let schedule = &policy.schedules[0];
        assert_eq!(schedule.action, ScheduleAction::Drill);
        assert_eq!(schedule.retention, None);
        assert_eq!(schedule.jitter, Duration::from_secs(1800));
        let checks: Vec<(&str, String, &str)> = policy
            .checks
            .iter()
            .map(|c| (c.name.as_str(), c.selector.to_string(), c.sql.as_str()))
            .collect();
        assert_eq!(
            checks,
            [
                // The trailing semicolon and surrounding white space are dropped.
                (
                    "orders-present",
                    "team=payments".to_owned(),
                    "select count(*) > 0 from orders"
                ),
                (
                    "no-negative-balances",
                    String::new(),
                    "select not exists (\n  select 1 from accounts where balance < 0\n)"
                ),
                (
                    "prod-users",
                    "env=prod".to_owned(),
                    "select count(*) > 0 from users"
                ),
            ]
        );
    }

    #[test]
    fn tier_for_picks_the_strictest_matching_tier_else_the_default() {
        let policy = parse(RECOVERY);
        let tier = |pairs: &[(&str, &str)]| policy.tier_for(&labels(pairs)).name.clone();
        assert_eq!(tier(&[]), "silver");
        assert_eq!(tier(&[("env", "dev")]), "silver");
        assert_eq!(tier(&[("env", "prod")]), "prod");
        // gold and payments share the smallest RTO; gold's RPO is smaller.
        assert_eq!(tier(&[("env", "prod"), ("team", "payments")]), "payments");
        assert_eq!(
            tier(&[("env", "prod"), ("team", "payments"), ("sla", "gold")]),
            "gold"
        );
        // A label that names a tier does not pick it: only selectors do.
        assert_eq!(tier(&[("tier", "gold")]), "silver");
    }

    #[test]
    fn without_tiers_the_builtin_ones_apply() {
        for text in ["", "[limits]\nper_agent = 1\n"] {
            let policy = parse(text);
            assert_eq!(policy.tiers, builtin_tiers(), "{text:?}");
            assert_eq!(policy.default_tier, "standard");
            let standard = policy.tier_for(&labels(&[("env", "prod")]));
            assert_eq!(
                (standard.name.as_str(), standard.rto, standard.rpo),
                (
                    "standard",
                    Duration::from_secs(1800),
                    Duration::from_secs(86400)
                )
            );
            let critical = policy.tier_for(&labels(&[("tier", "critical")]));
            assert_eq!(
                (critical.name.as_str(), critical.rto, critical.rpo),
                (
                    "critical",
                    Duration::from_secs(900),
                    Duration::from_secs(3600)
                )
            );
        }
        // default_tier may name a built-in tier.
        let policy = parse("default_tier = \"critical\"\n");
        assert_eq!(policy.tiers, builtin_tiers());
        assert_eq!(policy.tier_for(&labels(&[])).name, "critical");
        // Defining tiers replaces the built-in ones: `critical` is gone.
        let policy = parse(
            "default_tier = \"only\"\n[[tiers]]\nname = \"only\"\nrto = \"1h\"\nrpo = \"1h\"\n",
        );
        assert_eq!(policy.tiers.len(), 1);
        assert_eq!(
            policy.tier_for(&labels(&[("tier", "critical")])).name,
            "only"
        );
    }

    #[test]
    fn checks_for_returns_the_matching_checks_in_document_order() {
        let policy = parse(RECOVERY);
        let names = |pairs: &[(&str, &str)]| -> Vec<String> {
            policy
                .checks_for(&labels(pairs))
                .into_iter()
                .map(|c| c.name)
                .collect()
        };
        assert_eq!(names(&[]), ["no-negative-balances"]);
        assert_eq!(
            names(&[("env", "prod"), ("team", "payments")]),
            ["orders-present", "no-negative-balances", "prod-users"]
        );
        assert_eq!(
            policy.checks_for(&labels(&[("team", "payments")]))[0],
            DrillCheck {
                name: "orders-present".to_owned(),
                sql: "select count(*) > 0 from orders".to_owned(),
            }
        );
        assert_eq!(FleetPolicy::default().checks_for(&labels(&[])), []);
    }

    /// A tier and a check that are valid so far, for the cases below to extend.
    const T: &str = "[[tiers]]\nname = \"gold\"\n";
    const C: &str = "[[checks]]\nname = \"c\"\n";

    #[test]
    fn rejects_bad_tiers_checks_and_drill_schedules() {
        const RPO: &str = "rpo = \"1h\"\n";
        const RTO: &str = "rto = \"30m\"\n";
        const SILVER: &str = "[[tiers]]\nname = \"silver\"\nrto = \"1h\"\nrpo = \"1h\"\n";
        #[rustfmt::skip]
        let cases: Vec<(String, &str, &str, &str)> = vec![
            (format!("{T}rto = \"5x\"\n{RPO}"), "tiers \"gold\".rto", "5x", "not a duration such as 2h or 90m"),
            (format!("{T}{RTO}rpo = \"soon\"\n"), "tiers \"gold\".rpo", "soon", "not a duration"),
            (format!("{T}{RPO}"), "tiers \"gold\".rto", "", "missing; give a duration such as rto = \"30m\""),
            (format!("{T}{RTO}"), "tiers \"gold\".rpo", "", "missing; give a duration such as rpo = \"24h\""),
            (format!("{T}rto = \"0s\"\n{RPO}"), "tiers \"gold\".rto", "0s", "longer than zero"),
            (format!("{T}{RTO}rpo = \"0m\"\n"), "tiers \"gold\".rpo", "0m", "longer than zero"),
            (format!("{T}{RTO}{RPO}selector = \"tier\"\n"), "tiers \"gold\".selector", "tier", "no '='"),
            (format!("{T}{RTO}rpo = 3600\n"), "fleet.toml", "3600", "invalid type"),
            (format!("{T}{RTO}{RPO}rt0 = \"1m\"\n"), "fleet.toml", "rt0", "unknown field `rt0`"),
            ("[[tiers]]\nrto = \"1h\"\n".into(), "tiers[0].name", "", "missing; every tier needs a name"),
            (format!("{SILVER}[[tiers]]\nname = \"silver\"\n"), "tiers[1].name", "silver", "unique among tiers"),
            (format!("{SILVER}[[tiers]]\nname = \"gold medal\"\n"), "tiers[1].name", "gold medal", "' '"),
            ("[[tier]]\nname = \"gold\"\n".into(), "fleet.toml", "tier", "unknown field `tier`"),
            // default_tier names a tier in force.
            ("default_tier = \"platinum\"\n".into(), "default_tier", "platinum", "no tier has this name; name one of the tiers: standard, critical"),
            (format!("default_tier = \"gold\"\n{SILVER}"), "default_tier", "gold", "name one of the tiers: silver"),
            (SILVER.into(), "default_tier", "standard", "when default_tier is not given; set default_tier to one of the tiers: silver"),
            ("default_tier = 1\n".into(), "fleet.toml", "1", "invalid type"),
            // Checks.
            (C.into(), "checks \"c\".sql", "", "missing; give one query"),
            (format!("{C}sql = \"  \"\n"), "checks \"c\".sql", "  ", "the query is empty"),
            (format!("{C}sql = \"select 1; select 2\"\n"), "checks \"c\".sql", "select 1; select 2", "more than one statement"),
            (format!("{C}sql = \"select true\"\nselector = \"env=\"\n"), "checks \"c\".selector", "env=", "empty value"),
            (format!("{C}sql = \"select true\"\n{C}sql = \"select true\"\n"), "checks[1].name", "c", "unique among checks"),
            ("[[checks]]\nsql = \"select true\"\n".into(), "checks[0].name", "", "missing; every check needs a name"),
            (format!("{C}sql = \"select true\"\ntimeout = \"1m\"\n"), "fleet.toml", "timeout", "unknown field `timeout`"),
            // Drill schedules.
            (format!("{S}action = \"drill\"\n[schedule.retention]\nkeep_days = 7\n"), "schedule \"s\".retention", "[schedule.retention]", "a drill schedule takes no backups, so it has no retention"),
            (format!("{S}action = \"drill\"\n[schedule.retention]\n"), "schedule \"s\".retention", "[schedule.retention]", "no retention"),
            (format!("{S}action = \"Drill\"\n"), "schedule \"s\".action", "Drill", "expected backup (takes a backup) or drill"),
        ];
        assert_rejected(&cases);
        // How the error reads as a whole (the rest is humantime's own words).
        let message = error(&format!("{T}rto = \"5x\"\n{RPO}")).to_string();
        assert!(
            message.starts_with(
                "tiers \"gold\".rto = \"5x\": not a duration such as 2h or 90m: unknown time unit \"x\""
            ),
            "{message}"
        );
    }

    #[test]
    fn round_trips_tiers_checks_and_drill_schedules() {
        let policy = parse(RECOVERY);
        let text = policy.to_toml();
        assert_eq!(parse(&text), policy, "{text}");
        assert_eq!(parse(&text).to_toml(), text);
        // `warden window add` edits the printed document as a generic TOML table, which
        // sorts the keys; the result still reads back the same.
        let table: toml::Table = toml::from_str(&text).unwrap();
        let reprinted = toml::to_string(&table).unwrap();
        assert_eq!(parse(&reprinted), policy, "{reprinted}");
        // The default tier alone, with the built-in tiers.
        for text in [
            "default_tier = \"critical\"\n",
            "default_tier = \"standard\"\n",
            "",
        ] {
            let policy = parse(text);
            assert_eq!(parse(&policy.to_toml()), policy, "{text:?}");
        }
    }

    #[test]
    fn export_leaves_the_builtin_tiers_out() {
        let default = FleetPolicy::default().to_toml();
        assert!(
            !default.contains("tiers") && !default.contains("default_tier"),
            "{default}"
        );
        // The built-in tiers written out are the policy of a document without them.
        let explicit = r#"
default_tier = "standard"
[[tiers]]
name = "standard"
rto = "30m"
rpo = "24h"
[[tiers]]
name = "critical"
selector = "tier=critical"
rto = "15m"
rpo = "1h"
"#;
        assert_eq!(parse(explicit), FleetPolicy::default());
        assert_eq!(parse(explicit).to_toml(), default);
        // Another default tier prints alone, before every table.
        assert_eq!(
            parse("default_tier = \"critical\"\n").to_toml(),
            "# Warden fleet policy\n\ndefault_tier = \"critical\"\n\n[limits]\nper_agent = 2\nfleet_backups = 4\n"
        );
        // Custom tiers print with their default tier, even the default one.
        let text =
            parse("[[tiers]]\nname = \"standard\"\nrto = \"20m\"\nrpo = \"24h\"\n").to_toml();
        assert!(text.contains("default_tier = \"standard\"\n"), "{text}");
        assert!(
            text.contains("[[tiers]]\nname = \"standard\"\nrto = \"20m\"\nrpo = \"1day\"\n"),
            "{text}"
        );
    }

    #[test]
    fn prints_tiers_checks_and_drill_schedules_canonically() {
        let policy = parse(RECOVERY);
        let expected = r#"# Warden fleet policy

default_tier = "silver"

[limits]
per_agent = 2
fleet_backups = 4

[[schedule]]
name = "weekly-drill"
selector = "env=prod"
cron = "0 5 * * sat"
timezone = "UTC"
jitter = "30m"
action = "drill"

[[tiers]]
name = "gold"
selector = "sla=gold"
rto = "10m"
rpo = "15m"

[[tiers]]
name = "payments"
selector = "team=payments"
rto = "10m"
rpo = "1h"

[[tiers]]
name = "silver"
rto = "1h"
rpo = "1day"

[[tiers]]
name = "prod"
selector = "env=prod"
rto = "30m"
rpo = "4h"

[[checks]]
name = "orders-present"
selector = "team=payments"
sql = "select count(*) > 0 from orders"

[[checks]]
name = "no-negative-balances"
selector = ""
sql = """
select not exists (
  select 1 from accounts where balance < 0
)"""

[[checks]]
name = "prod-users"
selector = "env=prod"
sql = "select count(*) > 0 from users"
"#;
        assert_eq!(policy.to_toml(), expected);
    }

    #[test]
    fn diff_reports_tiers_checks_and_the_default_tier() {
        let before = parse(RECOVERY);
        let after = parse(
            &RECOVERY
                .replace("default_tier = \"silver\"", "default_tier = \"prod\"")
                .replace(
                    "rto = \"10m\"\nrpo = \"15m\"",
                    "rto = \"5m\"\nrpo = \"15m\"",
                )
                .replace("selector = \"team=payments\"\nrto", "rto")
                .replace(
                    "[[tiers]]\nname = \"silver\"\nrto = \"1h\"\nrpo = \"24h\"\n",
                    "",
                )
                .replace("from users", "from users where active")
                .replace("balance < 0\n", "balance < 0 or balance is null\n")
                .replace("name = \"orders-present\"", "name = \"orders-exist\"")
                .replace("action = \"drill\"\n", ""),
        );
        let changes = before.diff(&after);
        let summary: Vec<(ChangeOp, &str, &str, &str)> = changes
            .iter()
            .map(|c| (c.op, c.what.as_str(), c.name.as_str(), c.detail.as_str()))
            .collect();
        assert_eq!(
            summary,
            [
                (
                    ChangeOp::Changed,
                    "schedule",
                    "weekly-drill",
                    "action: drill -> backup"
                ),
                (ChangeOp::Changed, "tier", "gold", "rto: 10m -> 5m"),
                (
                    ChangeOp::Changed,
                    "tier",
                    "payments",
                    "selector: team=payments -> (none)"
                ),
                (ChangeOp::Removed, "tier", "silver", "rto: 1h; rpo: 1day"),
                (
                    ChangeOp::Changed,
                    "default_tier",
                    "default_tier",
                    "default_tier: silver -> prod"
                ),
                (
                    ChangeOp::Changed,
                    "check",
                    "no-negative-balances",
                    "sql: select not exists ( select 1 from accounts where balance < 0 ) -> select not exists ( select 1 from accounts where balance < 0 or balance is null )"
                ),
                (
                    ChangeOp::Added,
                    "check",
                    "orders-exist",
                    "selector: team=payments; sql: select count(*) > 0 from orders"
                ),
                (
                    ChangeOp::Removed,
                    "check",
                    "orders-present",
                    "selector: team=payments; sql: select count(*) > 0 from orders"
                ),
                (
                    ChangeOp::Changed,
                    "check",
                    "prod-users",
                    "sql: select count(*) > 0 from users -> select count(*) > 0 from users where active"
                ),
            ]
        );
        // Dropping every tier brings the built-in ones back, and the diff says so.
        let mut without = before.clone();
        without.tiers = builtin_tiers().to_vec();
        without.default_tier = "standard".to_owned();
        let summary: Vec<(ChangeOp, String)> = before
            .diff(&without)
            .into_iter()
            .map(|c| (c.op, format!("{} {}", c.what, c.name)))
            .collect();
        assert_eq!(
            summary,
            [
                (ChangeOp::Added, "tier critical".to_owned()),
                (ChangeOp::Removed, "tier gold".to_owned()),
                (ChangeOp::Removed, "tier payments".to_owned()),
                (ChangeOp::Removed, "tier prod".to_owned()),
                (ChangeOp::Removed, "tier silver".to_owned()),
                (ChangeOp::Added, "tier standard".to_owned()),
                (ChangeOp::Changed, "default_tier default_tier".to_owned()),
            ]
        );
    }

    const MIGRATE: &str = r#"
[migrate]
guard = "env=prod,team=payments"
deny_sql = ["DELETE FROM ...", "ALTER TABLE ... DROP COLUMN ..."]
deny_commands = ["flyway clean"]
on_check_failure = "restore"
"#;

    #[test]
    fn parses_the_migrate_table() {
        let policy = parse(MIGRATE);
        let migrate = &policy.migrate;
        assert_eq!(migrate.guard_text(), "env=prod,team=payments");
        assert_eq!(
            migrate.deny_sql,
            ["DELETE FROM ...", "ALTER TABLE ... DROP COLUMN ..."]
        );
        assert_eq!(migrate.deny_commands, ["flyway clean"]);
        assert_eq!(migrate.on_check_failure, OnCheckFailure::Restore);
        assert!(migrate.guards(&labels(&[("env", "prod"), ("team", "payments")])));
        assert!(!migrate.guards(&labels(&[("env", "prod")])));
        // The policy's patterns come on top of the built-in ones.
        let guard = migrate.guard();
        assert!(guard.check_sql("delete from orders").is_some());
        assert!(guard.check_sql("TRUNCATE orders").is_some());
        assert!(guard.check_sql("ALTER TABLE t DROP COLUMN c").is_some());
        assert!(guard.check_sql("ALTER TABLE t ADD COLUMN c int").is_none());
    }

    #[test]
    fn migrate_defaults_and_an_empty_guard() {
        assert_eq!(parse("").migrate, MigratePolicy::default());
        assert_eq!(parse("[migrate]\n").migrate, MigratePolicy::default());
        let default = MigratePolicy::default();
        assert_eq!(default.guard_text(), "env=prod");
        assert_eq!(default.on_check_failure, OnCheckFailure::Stop);
        assert!(default.guards(&labels(&[("env", "prod")])));
        // An empty guard protects no database (not the whole fleet).
        let none = parse("[migrate]\nguard = \"\"\n").migrate;
        assert_eq!(none.guard, None);
        assert!(!none.guards(&labels(&[("env", "prod")])));
        assert_eq!(
            parse("[migrate]\non_check_failure = \"stop\"\n").migrate,
            MigratePolicy::default()
        );
    }

    #[test]
    fn rejects_a_bad_migrate_table() {
        const M: &str = "[migrate]\n";
        #[rustfmt::skip]
        let cases: Vec<(String, &str, &str, &str)> = vec![
            (format!("{M}guard = \"env\"\n"), "migrate.guard", "env", "no '='"),
            (format!("{M}deny_sql = [\"TRUNCATE\", \"... CASCADE\"]\n"), "migrate.deny_sql[1]", "... CASCADE", "starts with \"...\""),
            (format!("{M}deny_sql = [\"  \"]\n"), "migrate.deny_sql[0]", "  ", "empty"),
            (format!("{M}deny_commands = [\"flyway clean\", \" \"]\n"), "migrate.deny_commands[1]", " ", "would match every command"),
            (format!("{M}on_check_failure = \"rollback\"\n"), "migrate.on_check_failure", "rollback", "expected stop"),
            (format!("{M}deny_sql = \"TRUNCATE\"\n"), "fleet.toml", "\"TRUNCATE\"", "invalid type"),
            (format!("{M}guards = \"env=prod\"\n"), "fleet.toml", "guards", "unknown field `guards`"),
        ];
        assert_rejected(&cases);
    }

    #[test]
    fn round_trips_the_migrate_table_and_prints_it_only_when_set() {
        let policy = parse(MIGRATE);
        let text = policy.to_toml();
        assert_eq!(parse(&text), policy, "{text}");
        assert_eq!(parse(&text).to_toml(), text);
        assert_eq!(
            text,
            r#"# Warden fleet policy

[limits]
per_agent = 2
fleet_backups = 4

[migrate]
guard = "env=prod,team=payments"
deny_sql = ["DELETE FROM ...", "ALTER TABLE ... DROP COLUMN ..."]
deny_commands = ["flyway clean"]
on_check_failure = "restore"
"#
        );
        // Only the guard differs: the empty lists stay out.
        let text = parse("[migrate]\nguard = \"\"\n").to_toml();
        assert!(
            text.ends_with("[migrate]\nguard = \"\"\non_check_failure = \"stop\"\n"),
            "{text}"
        );
        assert_eq!(parse(&text).migrate.guard, None);
        // Defaults print nothing.
        assert!(
            !parse("[migrate]\nguard = \"env=prod\"\n")
                .to_toml()
                .contains("migrate")
        );
    }

    #[test]
    fn diff_reports_the_migrate_table() {
        let before = parse("");
        let after = parse(MIGRATE);
        assert_eq!(
            before.diff(&after),
            [Change {
                op: ChangeOp::Changed,
                what: "migrate".into(),
                name: "migrate".into(),
                detail: "guard: env=prod -> env=prod,team=payments; deny_sql: (none) -> \"DELETE FROM ...\", \"ALTER TABLE ... DROP COLUMN ...\"; deny_commands: (none) -> \"flyway clean\"; on_check_failure: stop -> restore".into(),
            }]
        );
        let unguarded = parse("[migrate]\nguard = \"\"\n");
        assert_eq!(
            before.diff(&unguarded)[0].detail,
            "guard: env=prod -> (no database)"
        );
        assert_eq!(after.diff(&after.clone()), []);
    }
}
