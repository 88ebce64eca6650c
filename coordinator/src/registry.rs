//! Live agent sessions, in memory: who is connected right now, on which stream generation,
//! and when we last heard from them.
//!
//! Liveness is kept here rather than written to the store on every heartbeat: the store
//! records an agent's connect and disconnect, the registry the beats in between. Each
//! session also keeps the databases its agent reported in its Hello, so a submission to an
//! online agent is checked without reading the store.

use std::collections::{HashMap, HashSet};
use std::sync::Mutex;
use std::time::{Duration, Instant};

use tokio::sync::mpsc;
use warden_proto::v1::CoordinatorMessage;

struct Session {
    generation: i64,
    outbox: mpsc::Sender<CoordinatorMessage>,
    last_seen: Instant,
    /// The databases the agent reported in the Hello of this session.
    databases: HashSet<String>,
}

#[derive(Default)]
pub struct Registry {
    sessions: Mutex<HashMap<String, Session>>,
}

impl Registry {
    fn sessions(&self) -> std::sync::MutexGuard<'_, HashMap<String, Session>> {
        // A panic while holding this lock cannot leave the map half-updated: every
        // critical section is a single insert, remove or field write.
        self.sessions
            .lock()
            .unwrap_or_else(std::sync::PoisonError::into_inner)
    }

    /// Makes `generation` the agent's live session, replacing (and so closing) an older one;
    /// `databases` are those its Hello reported.
    pub fn register(
        &self,
        agent: &str,
        generation: i64,
        outbox: mpsc::Sender<CoordinatorMessage>,
        databases: HashSet<String>,
    ) {
        self.sessions().insert(
            agent.to_owned(),
            Session {
                generation,
                outbox,
                last_seen: Instant::now(),
                databases,
            },
        );
    }

    /// Forgets the session if it is still `generation`; returns whether it was.
    pub fn remove(&self, agent: &str, generation: i64) -> bool {
        let mut sessions = self.sessions();
        if sessions
            .get(agent)
            .is_some_and(|s| s.generation == generation)
        {
            sessions.remove(agent);
            true
        } else {
            false
        }
    }

    /// Notes a sign of life; returns false when `generation` is not the live session.
    pub fn touch(&self, agent: &str, generation: i64) -> bool {
        match self.sessions().get_mut(agent) {
            Some(session) if session.generation == generation => {
                session.last_seen = Instant::now();
                true
            }
            _ => false,
        }
    }

    /// The generation of the agent's live session, if it has one.
    pub fn generation(&self, agent: &str) -> Option<i64> {
        self.sessions().get(agent).map(|s| s.generation)
    }

    /// Returns whether `generation` is the agent's live session.
    pub fn is_live(&self, agent: &str, generation: i64) -> bool {
        self.sessions()
            .get(agent)
            .is_some_and(|s| s.generation == generation)
    }

    /// Drops every session, which ends their streams.
    pub fn clear(&self) {
        self.sessions().clear();
    }

    pub fn is_online(&self, agent: &str) -> bool {
        self.sessions().contains_key(agent)
    }

    /// Returns whether `agent` is online and reported `database` when it connected.
    pub fn reports_database(&self, agent: &str, database: &str) -> bool {
        self.sessions()
            .get(agent)
            .is_some_and(|s| s.databases.contains(database))
    }

    /// Queues a message to the agent's live session; returns false when it has none or its
    /// outbox is closed or full.
    pub fn send(&self, agent: &str, message: CoordinatorMessage) -> bool {
        let outbox = match self.sessions().get(agent) {
            Some(session) => session.outbox.clone(),
            None => return false,
        };
        outbox.try_send(message).is_ok()
    }

    /// Sessions not heard from for longer than `lease`.
    pub fn expired(&self, lease: Duration) -> Vec<(String, i64)> {
        self.sessions()
            .iter()
            .filter(|(_, s)| s.last_seen.elapsed() > lease)
            .map(|(name, s)| (name.clone(), s.generation))
            .collect()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_newer_session_fences_the_older_one() {
        let registry = Registry::default();
        let (tx1, _rx1) = mpsc::channel(4);
        let (tx2, mut rx2) = mpsc::channel(4);
        registry.register("db1", 1, tx1, HashSet::new());
        registry.register("db1", 2, tx2, HashSet::new());
        assert!(!registry.touch("db1", 1));
        assert!(!registry.remove("db1", 1));
        assert!(registry.send("db1", CoordinatorMessage::default()));
        assert!(rx2.try_recv().is_ok());
        assert!(registry.remove("db1", 2));
        assert!(!registry.is_online("db1"));
    }

    #[test]
    fn a_session_knows_the_databases_of_its_hello() {
        let registry = Registry::default();
        let (tx, _rx) = mpsc::channel(4);
        registry.register("a1", 1, tx, HashSet::from(["app".to_owned()]));
        assert!(registry.reports_database("a1", "app"));
        assert!(!registry.reports_database("a1", "billing"));
        assert!(!registry.reports_database("a2", "app"));
        assert!(registry.remove("a1", 1));
        assert!(!registry.reports_database("a1", "app"), "not once offline");
    }

    #[test]
    fn silent_sessions_expire() {
        let registry = Registry::default();
        let (tx, _rx) = mpsc::channel(4);
        registry.register("db1", 1, tx, HashSet::new());
        assert!(registry.expired(Duration::from_secs(60)).is_empty());
        assert_eq!(
            registry.expired(Duration::ZERO),
            vec![("db1".to_owned(), 1)]
        );
    }
}
