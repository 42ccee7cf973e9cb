//! The Kubernetes API server: object verbs ([`ops`]), their HTTP surface ([`http`]),
//! discovery, OpenAPI, Tables, per-kind rules (defaulting, validation, columns, typed form:
//! [`kinds`], one file per kind; kedge's own Plugin kind in [`plugin_kind`]), authentication
//! ([`auth`], service-account [`tokens`], node bootstrap in [`node_identity`]) and
//! authorization ([`authz`], [`rbac`]).
//!
//! It depends on the store and the pure core, never on the plugin host or the node agent:
//! both of those call into it.

mod admission;
pub mod alloc;
pub mod auth;
mod authz;
pub mod body;
pub mod crd;
mod discovery;
pub mod error;
mod eviction;
pub mod forward;
#[cfg(test)]
mod fuzz;
pub mod http;
mod kinds;
pub mod metrics;
pub mod node_identity;
mod openapi;
pub mod ops;
pub mod plugin_kind;
mod protobuf;
mod proxy;
pub mod rbac;
mod relay;
pub mod resource_metrics;
mod retired;
pub mod schema;
mod spdy;
mod stream;
mod table;
pub mod tokens;
mod ui;

pub use error::ApiError;
pub use kinds::priorityclass::SYSTEM_CLASSES as SYSTEM_PRIORITY_CLASSES;
pub use ops::Api;
