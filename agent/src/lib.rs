//! The Warden agent: runs backups, restores, migrations and health checks of the PostgreSQL
//! databases in its configuration, on orders from the coordinator it dials out to.
//!
//! [`session`] keeps the stream to the coordinator and sends periodic health reports;
//! [`orders`] dispatches an order to the [`backup`], [`restore`], [`drill`], [`migrate`],
//! [`health`] or [`prune`] executor; restores and drills share [`copy`], drills and migrations
//! share the SQL checks of [`drill`], migrations start their commands and hooks with
//! [`program`]; the executors use [`pg`] for SQL, [`pgtools`] for the PostgreSQL client
//! binaries, [`codec`] to move dumps in and out of the [`repository`] (a directory or a
//! bucket), sealed with [`sealing`] when encryption is configured, filling in the data
//! offsets of archives on the way out with [`pgarchive`].

pub mod backup;
pub mod codec;
pub mod config;
pub mod copy;
pub mod drill;
pub mod error;
pub mod health;
pub mod identity;
pub mod migrate;
pub mod orders;
pub mod pg;
pub mod pgarchive;
pub mod pgtools;
pub mod program;
pub mod progress;
pub mod prune;
pub mod repository;
pub mod restore;
pub mod sealing;
pub mod session;

pub use config::AgentConfig;
pub use error::{AgentError, AgentResult};
pub use orders::AgentContext;
