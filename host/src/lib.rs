//! kedge: a Kubernetes-model orchestrator for the edge — API server, Wasm controllers and
//! scheduler, node agent, in one binary. This crate composes the others (see the README's
//! Layout): [`server`] wires the store, the API and the plugin host together, `main.rs`
//! is the command line, [`kubeclient`] and [`push`] are its client-side commands.
//!
//! The subsystem crates are re-exported under their old module names, so `kedge::api::...`
//! keeps naming the API server for tests and benches.

pub use kedge_agent as agent;
pub use kedge_api as api;
pub use kedge_api::{auth, node_identity, tokens};
pub use kedge_core as core;
pub use kedge_plugins as plugins;
pub use kedge_store as store;
pub use kedge_store::fsmode;

pub mod bootstrap;
pub mod forward;
pub mod join;
pub mod kubeclient;
pub mod push;
pub mod server;
pub mod snapshot;
