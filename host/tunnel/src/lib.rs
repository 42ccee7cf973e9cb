//! Cluster PKI, join tokens and the QUIC tunnel between edge nodes and the control plane.
//!
//! Edge nodes sit behind NAT and firewalls, so they dial out: one QUIC connection per node
//! (ALPN `kedge/1`, mutual TLS against the cluster CA) carries the node's API calls to the
//! server and, in the other direction, the server's kubelet-style calls to the node. Each
//! QUIC bidirectional stream is exactly one HTTP/1.1 connection, so both ends reuse plain
//! hyper/axum and the stream's own flow control keeps a slow log follower from stalling the
//! rest of the node's traffic.
//!
//! A node without a certificate joins with a K3s-style join token: the token pins the CA by
//! hash (so it alone bootstraps trust) and carries a Kubernetes-style bootstrap token that the
//! server checks before signing the node's CSR.

pub mod agent;
mod error;
pub mod frames;
mod fsutil;
pub mod headers;
mod io;
pub mod metrics;
pub mod pki;
pub mod revocation;
pub mod server;
pub mod token;
mod wire;

#[cfg(test)]
mod e2e_tests;

pub use error::{Error, Result};
pub use fsutil::write_atomic;

/// An authenticated caller, derived from a verified client certificate (CN → user, O →
/// groups). The HTTP layers put it into request extensions so handlers can authorize.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Identity {
    /// Kubernetes user name, e.g. `system:node:edge-1` or `admin`.
    pub user: String,
    /// Kubernetes groups, always including `system:authenticated`.
    pub groups: Vec<String>,
}

/// Installs ring as the process-wide rustls provider.
///
/// The tunnel itself names its provider explicitly, but other rustls users in the same
/// process (the HTTPS API, OCI clients) rely on the process default and panic without one.
/// Calling it twice, or after someone else installed a provider, is harmless.
pub fn install_crypto_provider() {
    let _ = rustls::crypto::ring::default_provider().install_default();
}

/// ALPN of the tunnel protocol; bumping it is how an incompatible wire change is refused
/// during the handshake instead of failing obscurely later.
pub const ALPN: &[u8] = b"kedge/1";

/// The name agents verify the server certificate against. Fixed so that the server's
/// addresses (NAT, DNS, floating IPs) can change without reissuing certificates.
pub const SERVER_NAME: &str = "kedge-server";
