//! Watching the fleet: the health agents report, the RTO/RPO report, the fleet status, and
//! the alerts raised when a database, an agent or a recovery target changes for the worse
//! (or recovers).
//!
//! Health reports are kept in memory: agents send one as soon as they connect, so a restarted
//! coordinator knows the fleet again within one health interval. Alert state is in memory
//! too, so a condition still true after a restart is announced once more.

use std::collections::{HashMap, HashSet};

use serde_json::json;
use tracing::info;
use warden_proto::v1;
use warden_shared::{ArtifactManifest, OrderState};

use super::Fleet;
use super::policy::database_labels;
use crate::error::CoordinatorResult;
use crate::health::{self, HealthState, HealthThresholds};
use crate::notify::{Alert, AlertEvent};
use crate::rto::{self, Assessment, BackupFact, DrillFact, RecoveryInput, RtoStatus};
use crate::store::{DrillRecord, OrderRecord};

/// The newest health report of one database.
#[derive(Debug, Clone, Default)]
pub struct HealthEntry {
    /// Absent when the agent could not reach the database.
    pub report: Option<v1::HealthReport>,
    /// Why the agent could not reach it.
    pub error: String,
    pub reported_unix_ms: i64,
}

/// One database in the fleet status.
#[derive(Debug, Clone)]
pub struct DatabaseStatus {
    /// `AGENT/DBNAME`.
    pub database: String,
    pub agent_online: bool,
    pub health: HealthState,
    pub health_reasons: Vec<String>,
    pub entry: Option<HealthEntry>,
    /// How it stands against its recovery targets (absent for a database the report does
    /// not cover yet).
    pub recovery: Option<Assessment>,
}

impl DatabaseStatus {
    pub fn rto_status(&self) -> RtoStatus {
        self.recovery
            .as_ref()
            .map_or(RtoStatus::Unknown, |a| a.status)
    }
}

/// The fleet at a glance.
#[derive(Debug, Clone)]
pub struct FleetStatus {
    pub agents_online: u32,
    pub agents_total: u32,
    /// Worst first.
    pub databases: Vec<DatabaseStatus>,
    /// The newest repository check of each agent that sent one, failing ones first.
    pub repositories: Vec<v1::AgentRepository>,
}

/// What the monitor knows between passes.
#[derive(Default)]
pub(super) struct MonitorState {
    /// (agent, database) -> newest health report.
    health: HashMap<(String, String), HealthEntry>,
    /// Alert subject ("health:A/D", "rto:A/D", "agent:A") -> the state last announced.
    announced: HashMap<String, String>,
    /// Agent -> its newest check of its repository.
    repositories: HashMap<String, v1::RepositoryHealth>,
}

impl Fleet {
    /// Records the health reports of one agent's databases and alerts on the ones whose
    /// state changed.
    pub async fn record_health(
        &self,
        agent: &str,
        reports: v1::HealthReports,
    ) -> CoordinatorResult<()> {
        let now = warden_shared::now_unix_ms();
        let online = self.registry.is_online(agent);
        let mut changed = Vec::new();
        {
            let mut state = self.monitor.lock().unwrap_or_else(|e| e.into_inner());
            if let Some(repository) = reports.repository {
                state.repositories.insert(agent.to_owned(), repository);
            }
            for db in reports.databases {
                let entry = HealthEntry {
                    report: db.report,
                    error: db.error,
                    reported_unix_ms: now,
                };
                let (health, reasons) = self.classify(Some(&entry), online, now);
                changed.push((format!("{agent}/{}", db.database), health, reasons));
                state.health.insert((agent.to_owned(), db.database), entry);
            }
        }
        for (database, health, reasons) in changed {
            self.announce_health(&database, health, &reasons);
        }
        Ok(())
    }

    /// Judges a database's newest health report (if any).
    fn classify(
        &self,
        entry: Option<&HealthEntry>,
        agent_online: bool,
        now_unix_ms: i64,
    ) -> (HealthState, Vec<String>) {
        health::classify(
            entry.and_then(|e| e.report.as_ref()),
            entry.map_or("", |e| e.error.as_str()),
            entry.map_or(0, |e| e.reported_unix_ms),
            agent_online,
            self.settings.health_interval,
            now_unix_ms,
            &HealthThresholds::default(),
        )
    }

    /// The fleet at a glance: agents online, every present database's health, newest backup
    /// and RTO status, worst first.
    pub async fn fleet_status(&self) -> CoordinatorResult<FleetStatus> {
        let now = warden_shared::now_unix_ms();
        let agents = self.store.list_agents().await?;
        let online: HashSet<&str> = agents
            .iter()
            .filter(|a| self.registry.is_online(&a.name))
            .map(|a| a.name.as_str())
            .collect();
        let mut report: HashMap<String, Assessment> = self
            .rto_report(now)
            .await?
            .into_iter()
            .map(|a| (a.database.clone(), a))
            .collect();
        let (health, checks) = {
            let state = self.monitor.lock().unwrap_or_else(|e| e.into_inner());
            (state.health.clone(), state.repositories.clone())
        };
        let mut databases = Vec::new();
        for db in self.store.list_databases(None).await? {
            let id = format!("{}/{}", db.agent, db.name);
            let agent_online = online.contains(db.agent.as_str());
            let entry = health.get(&(db.agent.clone(), db.name.clone())).cloned();
            let (mut state, mut reasons) = self.classify(entry.as_ref(), agent_online, now);
            // A repository the agent cannot write to or read from fails the next backup and
            // any restore: the database is not safe, whatever its server says.
            if let Some(check) = checks.get(&db.agent).filter(|c| agent_online && !c.ok) {
                reasons.push(format!(
                    "its agent cannot use its repository: {}",
                    check.error
                ));
                if state == HealthState::Healthy {
                    state = HealthState::Degraded;
                }
            }
            databases.push(DatabaseStatus {
                recovery: report.remove(&id),
                database: id,
                agent_online,
                health: state,
                health_reasons: reasons,
                entry,
            });
        }
        databases.sort_by(|a, b| {
            (a.health.severity(), a.rto_status().severity(), &a.database).cmp(&(
                b.health.severity(),
                b.rto_status().severity(),
                &b.database,
            ))
        });
        let mut repositories: Vec<v1::AgentRepository> = agents
            .iter()
            .filter_map(|agent| {
                checks.get(&agent.name).map(|check| v1::AgentRepository {
                    agent: agent.name.clone(),
                    repository: agent.repository.clone(),
                    agent_online: online.contains(agent.name.as_str()),
                    health: Some(check.clone()),
                })
            })
            .collect();
        repositories.sort_by_key(|r| (r.health.as_ref().is_some_and(|h| h.ok), r.agent.clone()));
        Ok(FleetStatus {
            agents_online: u32::try_from(online.len()).unwrap_or(u32::MAX),
            agents_total: u32::try_from(agents.len()).unwrap_or(u32::MAX),
            databases,
            repositories,
        })
    }

    /// Assesses every present database against its tier's RTO and RPO, worst first.
    pub async fn rto_report(&self, now_unix_ms: i64) -> CoordinatorResult<Vec<Assessment>> {
        let policy = self.policy();
        let labels = {
            let mut conn = self.store.read().await?;
            database_labels(&mut conn).await?
        };
        let newest: HashMap<(String, String), BackupFact> = self
            .store
            .newest_complete_artifacts()
            .await?
            .into_iter()
            .map(|a| {
                // The recovery point is when the dump's snapshot was taken, not when it was
                // written out: a 3 h dump is 3 h old when it completes.
                let snapshot_unix_ms = serde_json::from_str::<ArtifactManifest>(&a.manifest_json)
                    .map_or(a.created_unix_ms, |m| m.started_unix_ms);
                (
                    (a.agent.clone(), a.database.clone()),
                    BackupFact {
                        artifact_id: a.id,
                        created_unix_ms: snapshot_unix_ms,
                        raw_bytes: u64::try_from(a.raw_bytes).unwrap_or(0),
                    },
                )
            })
            .collect();
        let mut drills: HashMap<(String, String), Vec<DrillFact>> = HashMap::new();
        for drill in self.store.recent_drills().await? {
            drills
                .entry((drill.agent.clone(), drill.database.clone()))
                .or_default()
                .push(drill_fact(drill));
        }
        let mut rows = Vec::new();
        for ((agent, database), db_labels) in &labels {
            if db_labels.contains_key(super::policy::ABSENT_KEY) {
                continue;
            }
            let tier = policy.policy.tier_for(db_labels);
            let key = (agent.clone(), database.clone());
            let agent_drills: Vec<DrillFact> = drills
                .iter()
                .filter(|((a, d), _)| a == agent && d != database)
                .flat_map(|(_, list)| list.iter().cloned())
                .collect();
            rows.push(rto::assess(
                RecoveryInput {
                    database: format!("{agent}/{database}"),
                    tier: tier.name.clone(),
                    rto: tier.rto,
                    rpo: tier.rpo,
                    newest_backup: newest.get(&key).cloned(),
                    drills: drills.get(&key).cloned().unwrap_or_default(),
                    agent_drills,
                },
                now_unix_ms,
            ));
        }
        rto::sort_worst_first(&mut rows);
        Ok(rows)
    }

    /// One monitoring pass: alerts on databases whose health or recovery status changed and
    /// on agents that went offline or came back.
    pub async fn monitor(&self) -> CoordinatorResult<()> {
        let status = self.fleet_status().await?;
        for row in status
            .databases
            .iter()
            .filter_map(|db| db.recovery.as_ref())
        {
            let state = row.status.as_str();
            let subject = format!("rto:{}", row.database);
            if let Some(previous) = self.announce(&subject, state) {
                let (event, text) = if row.status == RtoStatus::Breach {
                    (
                        AlertEvent::RecoveryBreach,
                        format!(
                            "{} breaches its {} recovery targets: {}",
                            row.database,
                            row.tier,
                            row.reasons.join("; ")
                        ),
                    )
                } else if previous == RtoStatus::Breach.as_str() {
                    (
                        AlertEvent::RecoveryRestored,
                        format!(
                            "{} meets its {} recovery targets again ({state})",
                            row.database, row.tier
                        ),
                    )
                } else {
                    continue;
                };
                self.alert(
                    event,
                    &row.database,
                    text,
                    json!({ "status": state, "reasons": row.reasons, "tier": row.tier }),
                );
            }
        }
        // While an agent is offline its databases cannot be judged: `agent_down` says so once
        // instead of one `database_down` per database.
        for db in status.databases.iter().filter(|db| db.agent_online) {
            self.announce_health(&db.database, db.health, &db.health_reasons);
        }
        for agent in self.store.list_agents().await? {
            let online = self.registry.is_online(&agent.name);
            let subject = format!("agent:{}", agent.name);
            let state = if online { "online" } else { "offline" };
            if let Some(previous) = self.announce(&subject, state) {
                if !online {
                    self.alert(
                        AlertEvent::AgentDown,
                        &agent.name,
                        format!("agent {} is offline", agent.name),
                        json!({ "last_seen_unix_ms": agent.last_seen_unix_ms }),
                    );
                } else if previous == "offline" {
                    self.alert(
                        AlertEvent::AgentRecovered,
                        &agent.name,
                        format!("agent {} is back online", agent.name),
                        json!({}),
                    );
                }
            }
        }
        Ok(())
    }

    fn announce_health(&self, database: &str, health: HealthState, reasons: &[String]) {
        let subject = format!("health:{database}");
        // No fresh report is no news: a database that was down stays down until a report
        // says otherwise.
        if health == HealthState::Unknown {
            return;
        }
        let Some(previous) = self.announce(&subject, health.as_str()) else {
            return;
        };
        let details = json!({ "health": health.as_str(), "reasons": reasons });
        if health == HealthState::Down {
            self.alert(
                AlertEvent::DatabaseDown,
                database,
                format!("{database} is down: {}", reasons.join("; ")),
                details,
            );
        } else if previous == HealthState::Down.as_str() {
            self.alert(
                AlertEvent::DatabaseRecovered,
                database,
                format!("{database} answers again (health: {})", health.as_str()),
                details,
            );
        }
    }

    /// Records `state` for `subject`; returns the state announced before when it changed
    /// (empty when none was), `None` when nothing changed.
    fn announce(&self, subject: &str, state: &str) -> Option<String> {
        let mut monitor = self.monitor.lock().unwrap_or_else(|e| e.into_inner());
        let previous = monitor
            .announced
            .insert(subject.to_owned(), state.to_owned());
        match previous {
            Some(previous) if previous == state => None,
            previous => Some(previous.unwrap_or_default()),
        }
    }

    /// Alerts on an order that failed.
    pub(super) fn alert_if_failed(&self, order: &OrderRecord) {
        if order.state != OrderState::Failed {
            return;
        }
        self.alert(
            AlertEvent::OrderFailed,
            &order.target(),
            format!(
                "{} order {} on {} failed: {}",
                order.kind,
                order.id,
                order.target(),
                order.error
            ),
            json!({ "order_id": order.id, "kind": order.kind.as_str(), "error": order.error }),
        );
    }

    /// Sends an alert to the webhooks without waiting for them.
    pub(super) fn alert(
        &self,
        event: AlertEvent,
        subject: &str,
        text: String,
        details: serde_json::Value,
    ) {
        info!(event = event.as_str(), subject, %text, "alert");
        self.notifier
            .notify(Alert::new(event, subject, text, details));
    }
}

fn drill_fact(drill: DrillRecord) -> DrillFact {
    DrillFact {
        order_id: drill.order_id,
        artifact_id: drill.artifact_id,
        finished_unix_ms: drill.finished_unix_ms,
        passed: drill.passed,
        restore_ms: u64::try_from(drill.restore_ms).unwrap_or(0),
        raw_bytes: u64::try_from(drill.raw_bytes).unwrap_or(0),
        error: drill.error,
    }
}
