//! kedge: a Kubernetes-model orchestrator for the edge — API server, Wasm controllers and
//! scheduler, node agent, in one binary.

pub mod agent;
pub mod api;
pub mod auth;
pub mod core;
pub mod fsmode;
pub mod kubeclient;
pub mod node_identity;
pub mod plugins;
pub mod push;
pub mod server;
pub mod store;
pub mod tokens;
