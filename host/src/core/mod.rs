//! Pure logic with no I/O: the resource table, selectors, patches, object metadata.

pub mod apply;
pub mod channel;
pub mod cron;
pub mod meta;
pub mod patch;
pub mod pod;
pub use kedge_core::quantity;
pub mod resources;
pub mod selector;
pub mod spdy;

/// This machine's architecture as Kubernetes names it (`GOARCH`: amd64, arm64, ...), for a
/// node's `nodeInfo` and the server's version.
pub fn kube_arch() -> &'static str {
    match std::env::consts::ARCH {
        "x86_64" => "amd64",
        "aarch64" => "arm64",
        other => other,
    }
}
