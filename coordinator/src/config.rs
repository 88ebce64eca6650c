//! Coordinator configuration: defaults < TOML file < `WARDEN_*` env < flags.

use std::fmt;
use std::net::SocketAddr;
use std::path::PathBuf;
use std::time::Duration;

use serde::{Deserialize, Serialize};
use url::Url;
use warden_shared::config::ConfigError;

use crate::notify::AlertEvent;

#[derive(Debug, Clone, Serialize, Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct CoordinatorConfig {
    /// gRPC address for agents and operators.
    pub listen: SocketAddr,
    /// HTTP address of `GET /metrics` (Prometheus text format) and `GET /healthz`. Port 0
    /// picks a free port, which the coordinator logs when it starts.
    pub http_listen: SocketAddr,
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
    /// OTLP/gRPC collector that receives the coordinator's spans (`service.name`
    /// `warden-coordinator`), e.g. `http://127.0.0.1:4317`; `http://` only, as spans are sent
    /// without TLS. None are exported when unset.
    pub otlp_endpoint: Option<Url>,
    /// Endpoints that receive alerts as JSON POSTs (Slack incoming webhooks work as they
    /// are), one `[[webhooks]]` table each:
    ///
    /// ```toml
    /// [[webhooks]]
    /// url = "https://hooks.slack.com/services/T000/B000/XXXX"
    /// events = ["order_failed", "recovery_breach"]   # optional; default: every event
    /// ```
    pub webhooks: Vec<WebhookConfig>,
    /// Where `warden-coordinator ca init` put the CA and the server certificate (`ca.pem`,
    /// `ca-key.pem`, `server.pem`, `server-key.pem`; the keys mode 0600).
    pub tls_dir: PathBuf,
    /// How long the certificates signed for agents are valid; agents renew theirs when a
    /// third of this is left.
    #[serde(with = "humantime_serde")]
    pub agent_cert_ttl: Duration,
    /// Plaintext gRPC, no client certificates: for a development fleet on one machine only.
    pub insecure_dev: bool,
}

/// One `[[webhooks]]` entry.
#[derive(Clone, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct WebhookConfig {
    /// `http://` or `https://` URL the alerts are POSTed to. Often a secret (a Slack webhook
    /// URL is its own credential): shown only as its origin by `Debug` and `--dump-config`.
    pub url: Url,
    /// The events this endpoint receives (`order_failed`, `recovery_breach`,
    /// `recovery_restored`, `database_down`, `database_recovered`, `agent_down`,
    /// `agent_recovered`); empty or absent: all of them.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub events: Vec<AlertEvent>,
}

impl WebhookConfig {
    /// Returns whether this endpoint wants alerts of `event`.
    pub fn wants(&self, event: AlertEvent) -> bool {
        self.events.is_empty() || self.events.contains(&event)
    }

    /// Returns the URL cut to its origin (`https://hooks.slack.com/***`), fit for logs.
    pub fn redacted_url(&self) -> Url {
        let mut url = self.url.clone();
        // Both fail only for URLs that cannot have credentials, which then have none.
        let _ = url.set_username("");
        let _ = url.set_password(None);
        url.set_path("/***");
        url.set_query(None);
        url.set_fragment(None);
        url
    }
}

impl fmt::Debug for WebhookConfig {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("WebhookConfig")
            .field("url", &self.redacted_url().as_str())
            .field("events", &self.events)
            .finish()
    }
}

impl Default for CoordinatorConfig {
    fn default() -> Self {
        Self {
            listen: SocketAddr::from(([127, 0, 0, 1], 7717)),
            http_listen: SocketAddr::from(([127, 0, 0, 1], 7718)),
            store: "sqlite://warden.db".to_owned(),
            heartbeat_interval: Duration::from_secs(2),
            lease: Duration::from_secs(10),
            max_attempts: 3,
            policy_tick: Duration::from_secs(1),
            prune_interval: Duration::from_secs(300),
            health_interval: Duration::from_secs(30),
            log_json: false,
            otlp_endpoint: None,
            webhooks: Vec::new(),
            tls_dir: PathBuf::from("tls"),
            agent_cert_ttl: Duration::from_secs(30 * 24 * 3600),
            insecure_dev: false,
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
        if self.insecure_dev && !self.listen.ip().is_loopback() {
            return Err(ConfigError::new(format!(
                "insecure_dev serves plaintext without agent certificates, so it listens on \
                 loopback only, not {}: use listen = \"127.0.0.1:7717\", or run `warden-coordinator \
                 ca init` and drop insecure_dev",
                self.listen
            )));
        }
        if self.agent_cert_ttl < Duration::from_secs(10) {
            return Err(ConfigError::new(format!(
                "agent_cert_ttl ({}) is too short: agents renew when a third is left, so give \
                 them at least 10s (default 30 days)",
                humantime::format_duration(self.agent_cert_ttl)
            )));
        }
        if !self.store.starts_with("sqlite:") {
            return Err(ConfigError::new(format!(
                "store {:?} is not supported: use sqlite://PATH",
                self.store
            )));
        }
        if self.http_listen == self.listen && self.listen.port() != 0 {
            return Err(ConfigError::new(format!(
                "http_listen and listen are both {}: give the HTTP port its own address, \
                 e.g. http_listen = \"127.0.0.1:7718\"",
                self.listen
            )));
        }
        for (index, webhook) in self.webhooks.iter().enumerate() {
            // The URL itself may be a secret: name the entry and its scheme only.
            if !matches!(webhook.url.scheme(), "http" | "https") {
                return Err(ConfigError::new(format!(
                    "webhooks[{index}].url: scheme {:?} is not supported: use an http:// or \
                     https:// URL",
                    webhook.url.scheme()
                )));
            }
            if webhook.url.host().is_none() {
                return Err(ConfigError::new(format!(
                    "webhooks[{index}].url has no host: use e.g. https://hooks.example.com/alerts"
                )));
            }
        }
        Ok(())
    }

    /// Returns the configuration as `--dump-config` prints it, webhook URLs cut to their
    /// origin.
    pub fn to_redacted_toml(&self) -> Result<String, toml::ser::Error> {
        let mut shown = self.clone();
        for webhook in &mut shown.webhooks {
            webhook.url = webhook.redacted_url();
        }
        toml::to_string(&shown)
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
    fn insecure_dev_listens_on_loopback_only() {
        let config = CoordinatorConfig {
            insecure_dev: true,
            listen: SocketAddr::from(([0, 0, 0, 0], 7717)),
            ..CoordinatorConfig::default()
        };
        let error = config.validate().expect_err("invalid").to_string();
        assert!(error.contains("loopback only"), "{error}");
        let local = CoordinatorConfig {
            insecure_dev: true,
            ..CoordinatorConfig::default()
        };
        local.validate().expect("loopback is fine");
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

    fn parse(toml: &str) -> CoordinatorConfig {
        toml::from_str(toml).expect("parses")
    }

    #[test]
    fn webhooks_parse_with_and_without_an_event_filter() {
        let config = parse(
            r#"
            http_listen = "127.0.0.1:0"
            [[webhooks]]
            url = "https://hooks.example.com/services/T0/B0/secret"
            events = ["order_failed", "recovery_breach"]
            [[webhooks]]
            url = "http://127.0.0.1:9000/alerts"
            "#,
        );
        config.validate().expect("valid");
        assert_eq!(config.http_listen, SocketAddr::from(([127, 0, 0, 1], 0)));
        let [filtered, all] = &config.webhooks[..] else {
            panic!("two webhooks: {:?}", config.webhooks)
        };
        assert!(filtered.wants(AlertEvent::OrderFailed));
        assert!(!filtered.wants(AlertEvent::AgentDown));
        assert!(all.wants(AlertEvent::AgentDown));
    }

    #[test]
    fn an_unknown_webhook_event_is_refused_with_its_name() {
        let error = toml::from_str::<CoordinatorConfig>(
            "[[webhooks]]\nurl = \"https://h.example.com/x\"\nevents = [\"order_exploded\"]",
        )
        .expect_err("refused")
        .to_string();
        assert!(error.contains("order_exploded"), "{error}");
    }

    #[test]
    fn a_webhook_that_is_not_http_is_refused_without_showing_the_url() {
        let config = parse("[[webhooks]]\nurl = \"ftp://files.example.com/secret-token\"");
        let error = config.validate().expect_err("invalid").to_string();
        assert!(error.contains("webhooks[0].url"), "{error}");
        assert!(error.contains("\"ftp\""), "{error}");
        assert!(!error.contains("secret-token"), "{error}");
    }

    #[test]
    fn webhook_secrets_are_left_out_of_debug_and_the_dumped_config() {
        let config = parse(
            "[[webhooks]]\nurl = \"https://user:pw@hooks.example.com/services/T0/B0/secret?token=t\"",
        );
        let dumped = config.to_redacted_toml().expect("dumped");
        let debug = format!("{config:?}");
        for shown in [&dumped, &debug] {
            assert!(shown.contains("https://hooks.example.com/***"), "{shown}");
            for secret in ["secret", "token", "pw"] {
                assert!(!shown.contains(secret), "{secret} in {shown}");
            }
        }
        // The dump is a config file that loads again.
        parse(&dumped).validate().expect("valid");
    }

    #[test]
    fn grpc_and_http_on_one_address_are_refused() {
        let config = CoordinatorConfig {
            http_listen: CoordinatorConfig::default().listen,
            ..CoordinatorConfig::default()
        };
        let error = config.validate().expect_err("invalid").to_string();
        assert!(error.contains("http_listen"), "{error}");
    }
}
