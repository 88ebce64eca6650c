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
///
/// Only variables naming a field of `T` are read: the components share the `WARDEN_` prefix
/// (the CLI's `WARDEN_COORDINATOR` must not break a coordinator started from the same shell),
/// while unknown keys in the file are still refused when `T` denies unknown fields.
pub fn load<T, O>(file: Option<&Path>, env_prefix: &str, overrides: &O) -> Result<T, ConfigError>
where
    T: DeserializeOwned + Serialize + Default,
    O: Serialize,
{
    let defaults = T::default();
    let fields: Vec<String> = match serde_json::to_value(&defaults) {
        Ok(serde_json::Value::Object(map)) => map.keys().cloned().collect(),
        _ => Vec::new(),
    };
    let mut figment = Figment::from(Serialized::defaults(defaults));
    if let Some(file) = file {
        if !file.exists() {
            return Err(ConfigError(format!(
                "config file {} does not exist",
                file.display()
            )));
        }
        // Config files hold credentials (database URLs, webhook URLs, key paths): one that
        // others can read is refused before anything in it is used.
        crate::pki::check_private(file).map_err(|e| ConfigError(e.to_string()))?;
        figment = figment.merge(Toml::file(file));
    }
    figment
        .merge(
            Env::prefixed(env_prefix)
                .filter(move |key| {
                    let top = key.as_str().split("__").next().unwrap_or_default();
                    fields.iter().any(|field| field.eq_ignore_ascii_case(top))
                })
                .split("__"),
        )
        .merge(Serialized::defaults(overrides))
        .extract()
        .map_err(|e| ConfigError(e.to_string()))
}

#[cfg(test)]
// figment's test jail returns its own (large) error type.
#[allow(clippy::result_large_err)]
mod tests {
    use serde::Deserialize;

    use super::*;

    #[derive(Debug, Default, Serialize, Deserialize)]
    #[serde(default, deny_unknown_fields)]
    struct Sample {
        listen: String,
        lease_ms: u64,
    }

    #[derive(Serialize)]
    struct NoFlags {}

    #[test]
    fn env_fields_are_read_and_other_prefixed_variables_ignored() {
        figment::Jail::expect_with(|jail| {
            jail.set_env("WARDENTEST_LISTEN", "0.0.0.0:1");
            jail.set_env("WARDENTEST_COORDINATOR", "http://elsewhere");
            let sample: Sample = load(None, "WARDENTEST_", &NoFlags {}).expect("loads");
            assert_eq!(sample.listen, "0.0.0.0:1");
            Ok(())
        });
    }

    #[test]
    fn unknown_keys_in_the_file_are_refused() {
        figment::Jail::expect_with(|jail| {
            jail.create_file("c.toml", "lisen = \"x\"")?;
            set_mode(Path::new("c.toml"), 0o600);
            let error = load::<Sample, _>(Some(Path::new("c.toml")), "WARDENTEST_", &NoFlags {})
                .expect_err("typo refused");
            assert!(error.to_string().contains("lisen"), "{error}");
            Ok(())
        });
    }

    fn set_mode(path: &Path, mode: u32) {
        use std::os::unix::fs::PermissionsExt;
        std::fs::set_permissions(path, std::fs::Permissions::from_mode(mode)).expect("chmod");
    }

    #[test]
    fn a_file_others_can_read_is_refused_before_it_is_read() {
        figment::Jail::expect_with(|jail| {
            jail.create_file("c.toml", "listen = \"x\"")?;
            for mode in [0o644, 0o640, 0o604] {
                set_mode(Path::new("c.toml"), mode);
                let error =
                    load::<Sample, _>(Some(Path::new("c.toml")), "WARDENTEST_", &NoFlags {})
                        .expect_err("readable by others");
                assert!(error.to_string().contains("chmod 600"), "{error}");
            }
            set_mode(Path::new("c.toml"), 0o600);
            let sample: Sample =
                load(Some(Path::new("c.toml")), "WARDENTEST_", &NoFlags {}).expect("loads");
            assert_eq!(sample.listen, "x");
            Ok(())
        });
    }
}
