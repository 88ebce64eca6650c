//! Coordinator configuration: defaults < TOML file < `WARDEN_*` env < flags.

use std::net::SocketAddr;
use std::time::Duration;

use serde::{Deserialize, Serialize};
use warden_shared::config::ConfigError;

#[derive(Debug, Clone, Serialize, Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct CoordinatorConfig {
    /// gRPC address for agents and operators.
    pub listen: SocketAddr,
    /// State store URL: `sqlite://PATH`.
    pub store: String,
    /// How often agents send heartbeats.
    #[serde(with = "humantime_serde")]
    pub heartbeat_interval: Duration,
    /// An agent silent this long is offline, and the orders it held are lost.
    #[serde(with = "humantime_serde")]
    pub lease: Duration,
    /// How many times an idempotent order is dispatched in all (first try included).
    pub max_attempts: u32,
    /// How often held orders, maintenance windows and schedules are looked at again.
    #[serde(with = "humantime_serde")]
    pub policy_tick: Duration,
    /// How often retention runs on its own (`warden prune` runs it at once).
    #[serde(with = "humantime_serde")]
    pub prune_interval: Duration,
    /// How often agents report the health of their databases.
    #[serde(with = "humantime_serde")]
    pub health_interval: Duration,
    pub log_json: bool,
}

impl Default for CoordinatorConfig {
    fn default() -> Self {
        Self {
            listen: SocketAddr::from(([127, 0, 0, 1], 7717)),
            store: "sqlite://warden.db".to_owned(),
            heartbeat_interval: Duration::from_secs(2),
            lease: Duration::from_secs(10),
            max_attempts: 3,
            policy_tick: Duration::from_secs(1),
            prune_interval: Duration::from_secs(300),
            health_interval: Duration::from_secs(30),
            log_json: false,
        }
    }
}

impl CoordinatorConfig {
    /// Checks values that parse but cannot work.
    pub fn validate(&self) -> Result<(), ConfigError> {
        if self.heartbeat_interval.is_zero() {
            return Err(ConfigError::new("heartbeat_interval must be more than 0s"));
        }
        if self.lease < self.heartbeat_interval * 2 {
            return Err(ConfigError::new(format!(
                "lease ({}) must be at least twice heartbeat_interval ({}), or agents flap offline",
                humantime::format_duration(self.lease),
                humantime::format_duration(self.heartbeat_interval)
            )));
        }
        if self.policy_tick.is_zero()
            || self.prune_interval.is_zero()
            || self.health_interval.is_zero()
        {
            return Err(ConfigError::new(
                "policy_tick, prune_interval and health_interval must be more than 0s",
            ));
        }
        if self.max_attempts == 0 {
            return Err(ConfigError::new("max_attempts must be at least 1"));
        }
        if !self.store.starts_with("sqlite:") {
            return Err(ConfigError::new(format!(
                "store {:?} is not supported: use sqlite://PATH",
                self.store
            )));
        }
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn defaults_are_valid() {
        CoordinatorConfig::default().validate().expect("valid");
    }

    #[test]
    fn lease_shorter_than_two_heartbeats_is_refused() {
        let config = CoordinatorConfig {
            lease: Duration::from_secs(3),
            ..CoordinatorConfig::default()
        };
        let error = config.validate().expect_err("invalid").to_string();
        assert!(error.contains("lease (3s)"), "{error}");
    }
}
