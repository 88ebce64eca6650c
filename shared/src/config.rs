//! Layered configuration: defaults < TOML file < `WARDEN_*` environment < command-line flags.

use std::path::Path;

use figment::Figment;
use figment::providers::{Env, Format, Serialized, Toml};
use serde::Serialize;
use serde::de::DeserializeOwned;

#[derive(Debug, thiserror::Error)]
#[error("invalid configuration: {0}")]
pub struct ConfigError(String);

impl ConfigError {
    pub fn new(message: impl Into<String>) -> Self {
        Self(message.into())
    }
}

/// Loads `T` from its defaults, an optional TOML file, `{env_prefix}*` variables (nested keys
/// separated by `__`), and finally the flags the user gave (`overrides`, with unset flags
/// skipped by `#[serde(skip_serializing_if = "Option::is_none")]`).
pub fn load<T, O>(file: Option<&Path>, env_prefix: &str, overrides: &O) -> Result<T, ConfigError>
where
    T: DeserializeOwned + Serialize + Default,
    O: Serialize,
{
    let mut figment = Figment::from(Serialized::defaults(T::default()));
    if let Some(file) = file {
        if !file.exists() {
            return Err(ConfigError(format!(
                "config file {} does not exist",
                file.display()
            )));
        }
        figment = figment.merge(Toml::file(file));
    }
    figment
        .merge(Env::prefixed(env_prefix).split("__"))
        .merge(Serialized::defaults(overrides))
        .extract()
        .map_err(|e| ConfigError(e.to_string()))
}
