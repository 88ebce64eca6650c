//! The audit log: an append-only hash chain of everything that changed state and every
//! operator call, including refused ones.
//!
//! Each event's hash is the sha256 of its own fields and the previous event's hash, so editing,
//! removing or reordering any stored event breaks the chain from that event on. Events are
//! appended inside the same store transaction as the state change they describe.

use serde_json::Value;
use sha2::{Digest, Sha256};

/// `prev_hash` of the first event.
pub const GENESIS_HASH: &str = "0000000000000000000000000000000000000000000000000000000000000000";

/// Parameter keys whose values are never stored.
const SECRET_KEYS: [&str; 6] = ["password", "secret", "token", "url", "dsn", "credential"];

/// Who did something: an operator, an agent or the coordinator itself.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Actor {
    Operator(String),
    Agent(String),
    /// Someone with a shell on the coordinator's host (`warden-coordinator token create`).
    Host(String),
    /// A caller that claims to be this agent but proved nothing (no certificate, one that
    /// does not verify, an enrollment that failed): the name is only what it said.
    UnverifiedAgent(String),
    System,
    /// Fires backup schedules.
    Scheduler,
    /// Expires artifacts by retention policy.
    Retention,
}

impl std::fmt::Display for Actor {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            Actor::Operator(name) => write!(f, "operator:{name}"),
            Actor::Agent(name) => write!(f, "agent:{name}"),
            Actor::Host(user) => write!(f, "host:{user}"),
            Actor::UnverifiedAgent(name) => write!(f, "unverified-agent:{name}"),
            Actor::System => f.write_str("system:coordinator"),
            Actor::Scheduler => f.write_str("system:scheduler"),
            Actor::Retention => f.write_str("system:retention"),
        }
    }
}

/// An event before it is chained: what happened, to what, by whom, and how it ended.
#[derive(Debug, Clone)]
pub struct NewAuditEvent {
    pub actor: String,
    pub action: String,
    pub target: String,
    pub params: Value,
    pub outcome: String,
}

impl NewAuditEvent {
    pub fn new(actor: &Actor, action: &str, target: impl Into<String>, params: Value) -> Self {
        Self {
            actor: actor.to_string(),
            action: action.to_owned(),
            target: target.into(),
            params,
            outcome: "ok".to_owned(),
        }
    }

    pub fn with_outcome(mut self, outcome: impl Into<String>) -> Self {
        self.outcome = outcome.into();
        self
    }
}

/// An event as stored.
#[derive(Debug, Clone, PartialEq, Eq, sqlx::FromRow)]
pub struct AuditEvent {
    pub seq: i64,
    pub at_unix_ms: i64,
    pub actor: String,
    pub action: String,
    pub target: String,
    pub params_json: String,
    pub outcome: String,
    pub prev_hash: String,
    pub hash: String,
}

impl AuditEvent {
    /// Chains `event` after the event with `prev_seq` and `prev_hash`.
    pub fn chain(event: NewAuditEvent, prev_seq: i64, prev_hash: &str, at_unix_ms: i64) -> Self {
        let mut stored = AuditEvent {
            seq: prev_seq + 1,
            at_unix_ms,
            actor: event.actor,
            action: event.action,
            target: event.target,
            params_json: redact(event.params).to_string(),
            outcome: event.outcome,
            prev_hash: prev_hash.to_owned(),
            hash: String::new(),
        };
        stored.hash = stored.compute_hash();
        stored
    }

    /// Returns the hash this event must carry given its fields and `prev_hash`.
    pub fn compute_hash(&self) -> String {
        let mut hasher = Sha256::new();
        // Length-prefixed fields, so that moving text from one field to the next changes the hash.
        for field in [
            self.seq.to_string().as_str(),
            self.at_unix_ms.to_string().as_str(),
            &self.actor,
            &self.action,
            &self.target,
            &self.params_json,
            &self.outcome,
            &self.prev_hash,
        ] {
            hasher.update((field.len() as u64).to_be_bytes());
            hasher.update(field.as_bytes());
        }
        hex::encode(hasher.finalize())
    }
}

/// Replaces the values of secret-looking keys, at any depth, by `"***"`.
pub fn redact(value: Value) -> Value {
    match value {
        Value::Object(map) => Value::Object(
            map.into_iter()
                .map(|(key, value)| {
                    let lower = key.to_ascii_lowercase();
                    if SECRET_KEYS.iter().any(|secret| lower.contains(secret)) {
                        (key, Value::String("***".to_owned()))
                    } else {
                        (key, redact(value))
                    }
                })
                .collect(),
        ),
        Value::Array(items) => Value::Array(items.into_iter().map(redact).collect()),
        other => other,
    }
}

/// The outcome of checking the whole chain.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ChainReport {
    pub events_checked: u64,
    /// The first event that does not fit, and why.
    pub broken: Option<(i64, String)>,
}

/// Walks events in seq order and finds the first one that was edited, removed or reordered.
pub fn verify_chain(events: impl IntoIterator<Item = AuditEvent>) -> ChainReport {
    let mut prev_hash = GENESIS_HASH.to_owned();
    let mut checked = 0;
    for (expected_seq, event) in (1..).zip(events) {
        let problem = if event.seq != expected_seq {
            Some(format!(
                "expected seq {expected_seq} but found {}: events were removed or reordered",
                event.seq
            ))
        } else if event.prev_hash != prev_hash {
            Some("prev_hash does not match the previous event's hash".to_owned())
        } else if event.compute_hash() != event.hash {
            Some("hash does not match the event's contents: the event was edited".to_owned())
        } else {
            None
        };
        if let Some(problem) = problem {
            return ChainReport {
                events_checked: checked,
                broken: Some((expected_seq.min(event.seq), problem)),
            };
        }
        checked += 1;
        prev_hash = event.hash;
    }
    ChainReport {
        events_checked: checked,
        broken: None,
    }
}

#[cfg(test)]
mod tests {
    use serde_json::json;

    use super::*;

    fn chain_of(n: usize) -> Vec<AuditEvent> {
        let mut events: Vec<AuditEvent> = Vec::new();
        for i in 0..n {
            let (seq, hash) = events
                .last()
                .map_or((0, GENESIS_HASH.to_owned()), |e| (e.seq, e.hash.clone()));
            let event = NewAuditEvent::new(
                &Actor::Operator("alice".into()),
                "order.submitted",
                format!("db1/app{i}"),
                json!({"i": i}),
            );
            events.push(AuditEvent::chain(event, seq, &hash, 1_000 + i as i64));
        }
        events
    }

    #[test]
    fn intact_chain_verifies() {
        let report = verify_chain(chain_of(5));
        assert_eq!(report.events_checked, 5);
        assert_eq!(report.broken, None);
    }

    #[test]
    fn edited_event_is_found() {
        let mut events = chain_of(5);
        events[2].actor = "operator:mallory".into();
        assert_eq!(verify_chain(events).broken.map(|b| b.0), Some(3));
    }

    #[test]
    fn edited_and_rehashed_event_breaks_the_next_link() {
        let mut events = chain_of(5);
        events[2].outcome = "refused".into();
        events[2].hash = events[2].compute_hash();
        assert_eq!(verify_chain(events).broken.map(|b| b.0), Some(4));
    }

    #[test]
    fn removed_event_is_found() {
        let mut events = chain_of(5);
        events.remove(1);
        assert_eq!(verify_chain(events).broken.map(|b| b.0), Some(2));
    }

    #[test]
    fn reordered_events_are_found() {
        let mut events = chain_of(5);
        events.swap(3, 4);
        assert_eq!(verify_chain(events).broken.map(|b| b.0), Some(4));
    }

    #[test]
    fn field_boundaries_matter() {
        let events = chain_of(1);
        let mut moved = events[0].clone();
        moved.actor.push('x');
        moved.action.remove(0);
        assert_ne!(moved.compute_hash(), events[0].hash);
    }

    #[test]
    fn secrets_are_redacted_at_any_depth() {
        let value = redact(json!({
            "database": "db1/app",
            "url": "postgres://u:pw@h/db",
            "nested": [{"Password": "pw", "ok": 1}],
        }));
        assert_eq!(
            value,
            json!({"database": "db1/app", "url": "***", "nested": [{"Password": "***", "ok": 1}]})
        );
    }
}
