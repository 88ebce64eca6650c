//! Names of agents and databases, and the fleet-wide database id `AGENT/DBNAME`.
//!
//! Agent names end up in file paths and log fields, so they are restricted to a safe
//! alphabet. Database names are PostgreSQL identifiers: anything PostgreSQL accepts is
//! accepted (quotes, spaces, unicode), because they are always quoted when they reach SQL,
//! except `/` (it separates agent from database) and names PostgreSQL would silently
//! truncate.

use std::fmt;

/// PostgreSQL truncates identifiers longer than this many bytes (NAMEDATALEN - 1).
pub const MAX_IDENTIFIER_BYTES: usize = 63;

#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum NameError {
    #[error(
        "invalid agent name {0:?}: use 1 to 63 letters, digits, '.', '_' or '-', starting with a letter or digit"
    )]
    Agent(String),
    #[error("invalid database name {name:?}: {why}")]
    Database { name: String, why: &'static str },
    #[error("invalid database id {0:?}: expected AGENT/DBNAME, for example db1/app")]
    DatabaseId(String),
}

/// Checks that an agent name is safe to use in paths, logs and labels.
pub fn validate_agent_name(name: &str) -> Result<(), NameError> {
    let ok = !name.is_empty()
        && name.len() <= MAX_IDENTIFIER_BYTES
        && name
            .chars()
            .next()
            .is_some_and(|c| c.is_ascii_alphanumeric())
        && name
            .chars()
            .all(|c| c.is_ascii_alphanumeric() || matches!(c, '.' | '_' | '-'));
    if ok {
        Ok(())
    } else {
        Err(NameError::Agent(name.to_owned()))
    }
}

/// Checks that a database name is one PostgreSQL keeps as written and Warden can address.
pub fn validate_database_name(name: &str) -> Result<(), NameError> {
    let why = if name.is_empty() {
        "it is empty"
    } else if name.len() > MAX_IDENTIFIER_BYTES {
        "it is longer than 63 bytes, and PostgreSQL would truncate it"
    } else if name.contains('/') {
        "'/' is not allowed (it separates agent and database in AGENT/DBNAME)"
    } else if name.chars().any(char::is_control) {
        "control characters are not allowed"
    } else {
        return Ok(());
    };
    Err(NameError::Database {
        name: name.to_owned(),
        why,
    })
}

/// Quotes a PostgreSQL identifier so that any name is taken literally, never as SQL.
pub fn quote_ident(name: &str) -> String {
    format!("\"{}\"", name.replace('"', "\"\""))
}

/// Quotes a PostgreSQL string literal.
pub fn quote_literal(value: &str) -> String {
    format!("'{}'", value.replace('\'', "''"))
}

/// A database in the fleet, written `AGENT/DBNAME`.
#[derive(Debug, Clone, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub struct DatabaseId {
    pub agent: String,
    pub database: String,
}

impl DatabaseId {
    /// Builds an id from its parts, validating both.
    pub fn new(agent: &str, database: &str) -> Result<Self, NameError> {
        validate_agent_name(agent)?;
        validate_database_name(database)?;
        Ok(Self {
            agent: agent.to_owned(),
            database: database.to_owned(),
        })
    }

    /// Parses `AGENT/DBNAME`.
    pub fn parse(text: &str) -> Result<Self, NameError> {
        let (agent, database) = text
            .split_once('/')
            .ok_or_else(|| NameError::DatabaseId(text.to_owned()))?;
        Self::new(agent, database)
    }
}

impl fmt::Display for DatabaseId {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{}/{}", self.agent, self.database)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn agent_names() {
        for ok in ["db1", "eu-west.pg-01", "A_b"] {
            assert!(validate_agent_name(ok).is_ok(), "{ok}");
        }
        for bad in ["", "-x", "a/b", "a b", "ä", "x\"y", &"a".repeat(64)] {
            assert!(validate_agent_name(bad).is_err(), "{bad}");
        }
    }

    #[test]
    fn database_names_allow_what_postgres_allows() {
        for ok in ["app", "my db", "quo\"te", "it's", "données", "ünïcødé 数据"] {
            assert!(validate_database_name(ok).is_ok(), "{ok}");
        }
        for bad in ["", "a/b", "tab\there", &"x".repeat(64)] {
            assert!(validate_database_name(bad).is_err(), "{bad}");
        }
        // 63 bytes of multi-byte characters is the limit, not 63 characters.
        assert!(validate_database_name(&"é".repeat(32)).is_err());
        assert!(validate_database_name(&"é".repeat(31)).is_ok());
    }

    #[test]
    fn database_id_round_trip() {
        let id = DatabaseId::parse("db1/my \"db\"").expect("valid");
        assert_eq!(id.agent, "db1");
        assert_eq!(id.database, "my \"db\"");
        assert_eq!(id.to_string(), "db1/my \"db\"");
        assert!(DatabaseId::parse("nodatabase").is_err());
        assert!(DatabaseId::parse("db1/a/b").is_err());
        assert!(DatabaseId::parse("/app").is_err());
    }

    #[test]
    fn quoting() {
        assert_eq!(quote_ident("a\"b"), "\"a\"\"b\"");
        assert_eq!(quote_literal("it's"), "'it''s'");
    }
}
