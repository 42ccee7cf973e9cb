//! Workload runtimes for the node agent: pod containers whose images are Wasm or ordinary
//! Linux images, their CRI-format log files, and kubelet's restart rules.
//!
//! `wasm` runs WASI command components (P2) and core modules (P1) with a memory cap and
//! prompt cancellation; `oci` runs Linux containers through runc on an overlay of the image;
//! `logs` writes and serves container logs; `restart` holds the pure restart-policy and
//! back-off rules so the agent's state machine stays testable; `stdio` keeps a container's
//! stdin open for `kubectl attach -i`.

pub mod logs;
pub mod oci;
pub mod restart;
pub mod stdio;
pub mod wasm;

use std::path::PathBuf;

/// Errors from loading or starting a workload. A workload that starts and then fails is not an
/// error: it is an [`wasm::Exit`].
#[derive(Debug, thiserror::Error)]
pub enum Error {
    #[error("failed to configure the wasm engine")]
    Engine(#[source] wasmtime::Error),
    #[error("failed to start the epoch ticker thread")]
    Ticker(#[source] std::io::Error),
    #[error("image is not a wasm binary (no \\0asm header)")]
    NotWasm,
    #[error("unsupported wasm binary version {0:02x?} (expected a core module or a component)")]
    UnsupportedBinary([u8; 4]),
    #[error("failed to compile wasm {digest}")]
    Compile {
        digest: String,
        #[source]
        source: wasmtime::Error,
    },
    #[error("wasm compile task failed")]
    CompileTask(#[source] tokio::task::JoinError),
    #[error("failed to set up wasi for the workload")]
    Link(#[source] wasmtime::Error),
    #[error("failed to instantiate wasm {digest} (missing or mismatched imports?)")]
    Instantiate {
        digest: String,
        #[source]
        source: wasmtime::Error,
    },
    #[error("wasm {digest} is not a command: it has no `{export}` export")]
    NotCommand {
        digest: String,
        export: &'static str,
        #[source]
        source: wasmtime::Error,
    },
    #[error("runc is not usable: {0}")]
    RuncUnavailable(String),
    #[error("the oci runtime needs root (running as uid {0})")]
    NotRoot(u32),
    #[error("invalid container spec: {0}")]
    InvalidSpec(String),
    #[error("cannot resolve user {user:?} in the image: {reason}")]
    User { user: String, reason: String },
    #[error("cannot {what} {path}")]
    Io {
        what: &'static str,
        path: PathBuf,
        #[source]
        source: std::io::Error,
    },
    #[error(
        "cannot mount the overlay rootfs at {target} (overlayfs missing from the kernel, or the \
         work dir on a filesystem overlayfs cannot use as upper layer?)"
    )]
    Overlay {
        target: PathBuf,
        #[source]
        source: std::io::Error,
    },
    #[error("cannot unmount {target}")]
    Unmount {
        target: PathBuf,
        #[source]
        source: std::io::Error,
    },
    #[error("cannot run runc {op}")]
    RuncSpawn {
        op: &'static str,
        #[source]
        source: std::io::Error,
    },
    #[error("runc {op} {id} failed: {message}")]
    Runc {
        op: &'static str,
        id: String,
        message: String,
    },
    #[error("postStart hook {argv:?} failed, container killed: {message}")]
    PostStartHook { argv: Vec<String>, message: String },
    #[error("cannot give the workload the directory {path}")]
    Preopen {
        path: PathBuf,
        #[source]
        source: wasmtime::Error,
    },
    #[error("cannot open log file {path}")]
    Log {
        path: PathBuf,
        #[source]
        source: std::io::Error,
    },
}

pub type Result<T, E = Error> = std::result::Result<T, E>;
