//! The Warden coordinator: the registry of connected agents, order dispatch and
//! reconciliation, the artifact catalog and the audit chain, served over gRPC.

pub mod audit;
pub mod config;
pub mod error;
pub mod fleet;
pub mod grpc;
pub mod health;
pub mod http;
pub mod notify;
pub mod policy;
pub mod registry;
pub mod rto;
pub mod security;
pub mod server;
pub mod store;

pub use config::CoordinatorConfig;
pub use error::{CoordinatorError, CoordinatorResult};
pub use fleet::Fleet;
