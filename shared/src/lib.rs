//! Domain types and plumbing shared by Warden's coordinator, agents and CLI.
//!
//! Nothing here knows about gRPC: wire types live in `warden-proto`, which converts to and
//! from the types defined here at the edge.

pub mod config;
pub mod labels;
pub mod manifest;
pub mod migration;
pub mod names;
pub mod order;
pub mod pki;
pub mod retry;
pub mod shutdown;
pub mod telemetry;

pub use labels::{Labels, Selector, SelectorError};
pub use manifest::ArtifactManifest;
pub use migration::{Guard, MigrationFile};
pub use names::{DatabaseId, NameError, validate_agent_name, validate_database_name};
pub use order::{
    ArtifactPointer, DrillCheck, MigrationSource, OnCheckFailure, OrderKind, OrderSpec, OrderState,
    PruneTarget,
};

/// Milliseconds since the Unix epoch, the time unit on the wire and in the store.
pub fn now_unix_ms() -> i64 {
    chrono::Utc::now().timestamp_millis()
}
