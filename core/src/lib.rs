//! What the kedge host and its Wasm plugins both need, written once: pure functions with no
//! I/O, built for the host and for `wasm32-wasip2` guests alike. Two implementations of one
//! format disagree sooner or later (the host's floating-point quantities made `9m` of CPU
//! 10 millicores on a node whose scheduler counted 9); one cannot.
//!
//! - [`quantity`], [`selector`] (label and field selectors), [`cron`] (schedules): the formats
//!   both sides parse.
//! - [`meta`], [`patch`], [`apply`], [`resources`], [`pod`]: objects as the API server sees
//!   them (names, conditions, merge patches, server-side apply, the resource table).
//! - [`channel`]: the framing of exec/attach streams between the API server and the agent.
//!
//! The `k8s-openapi` feature adds conversions from k8s-openapi's typed selectors, which the
//! guest SDK uses.

pub mod apply;
pub mod autoscaling;
pub mod channel;
pub mod crd_schema;
pub mod cron;
pub mod logframe;
pub mod meta;
pub mod patch;
pub mod pod;
pub mod quantity;
pub mod resources;
pub mod selector;

/// This machine's architecture as Kubernetes names it (`GOARCH`: amd64, arm64, ...), for a
/// node's `nodeInfo` and the server's version.
pub fn kube_arch() -> &'static str {
    match std::env::consts::ARCH {
        "x86_64" => "amd64",
        "aarch64" => "arm64",
        other => other,
    }
}
