//! Thin gRPC handlers: decode, validate, call the fleet, map the error to a `Status`.

pub mod admin;
pub mod agent;
