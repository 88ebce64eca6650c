//! Labels on agents and databases, and the selectors that policy uses to pick them.
//!
//! A selector is a comma-separated conjunction of `key=value` terms: `env=prod,team=payments`
//! matches what carries both labels; the empty selector matches the whole fleet.

use std::collections::BTreeMap;
use std::fmt;
use std::str::FromStr;

/// Labels of one database: its agent's labels, overridden by its own.
pub type Labels = BTreeMap<String, String>;

/// A conjunction of `key=value` terms, kept sorted so equal selectors print the same.
#[derive(Debug, Clone, Default, PartialEq, Eq, Hash)]
pub struct Selector {
    terms: BTreeMap<String, String>,
}

#[derive(Debug, thiserror::Error, PartialEq, Eq)]
#[error(
    "bad selector {text:?}: {problem}; write key=value terms separated by commas, e.g. env=prod,team=payments"
)]
pub struct SelectorError {
    pub text: String,
    pub problem: String,
}

impl Selector {
    /// The selector that matches everything.
    pub fn everything() -> Self {
        Self::default()
    }

    pub fn is_everything(&self) -> bool {
        self.terms.is_empty()
    }

    pub fn matches(&self, labels: &Labels) -> bool {
        self.terms
            .iter()
            .all(|(key, value)| labels.get(key) == Some(value))
    }
}

impl FromStr for Selector {
    type Err = SelectorError;

    fn from_str(text: &str) -> Result<Self, Self::Err> {
        let error = |problem: String| SelectorError {
            text: text.to_owned(),
            problem,
        };
        let mut terms = BTreeMap::new();
        if text.trim().is_empty() {
            return Ok(Self { terms });
        }
        for term in text.split(',') {
            let term = term.trim();
            let Some((key, value)) = term.split_once('=') else {
                return Err(error(format!("term {term:?} has no '='")));
            };
            let (key, value) = (key.trim(), value.trim());
            for (what, part) in [("key", key), ("value", value)] {
                if part.is_empty() {
                    return Err(error(format!("term {term:?} has an empty {what}")));
                }
                if let Some(bad) = part
                    .chars()
                    .find(|c| !(c.is_alphanumeric() || matches!(c, '-' | '_' | '.' | '/')))
                {
                    return Err(error(format!(
                        "term {term:?} has {bad:?} in its {what}; use letters, digits, '-', '_', '.' or '/'"
                    )));
                }
            }
            if let Some(previous) = terms.insert(key.to_owned(), value.to_owned())
                && previous != value
            {
                return Err(error(format!(
                    "key {key:?} is given twice with different values"
                )));
            }
        }
        Ok(Self { terms })
    }
}

impl fmt::Display for Selector {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        for (i, (key, value)) in self.terms.iter().enumerate() {
            if i > 0 {
                f.write_str(",")?;
            }
            write!(f, "{key}={value}")?;
        }
        Ok(())
    }
}

/// Labels from `(key, value)` pairs, e.g. `labels(&[("env", "prod")])`.
pub fn labels(pairs: &[(&str, &str)]) -> Labels {
    pairs
        .iter()
        .map(|(k, v)| ((*k).to_owned(), (*v).to_owned()))
        .collect()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn empty_selector_matches_everything() {
        let selector: Selector = "".parse().unwrap();
        assert!(selector.is_everything());
        assert!(selector.matches(&labels(&[])));
        assert!(selector.matches(&labels(&[("env", "prod")])));
    }

    #[test]
    fn every_term_must_match() {
        let selector: Selector = " team=payments , env=prod".parse().unwrap();
        assert_eq!(selector.to_string(), "env=prod,team=payments");
        assert!(selector.matches(&labels(&[
            ("env", "prod"),
            ("team", "payments"),
            ("x", "y")
        ])));
        assert!(!selector.matches(&labels(&[("env", "prod")])));
        assert!(!selector.matches(&labels(&[("env", "dev"), ("team", "payments")])));
    }

    #[test]
    fn malformed_selectors_name_the_term() {
        for (text, needle) in [
            ("env", "has no '='"),
            ("env=", "empty value"),
            ("=prod", "empty key"),
            ("env=prod,,", "has no '='"),
            ("env=pr od", "' '"),
            ("env=prod,env=dev", "twice"),
            ("env='x'", "'\\''"),
        ] {
            let error = text.parse::<Selector>().unwrap_err();
            assert!(
                error.to_string().contains(needle),
                "{text:?}: {error} should mention {needle:?}"
            );
        }
    }
}
