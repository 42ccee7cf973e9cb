//! The few non-HTTP messages on the tunnel, as newline-terminated JSON.
//!
//! Bootstrap happens on the only stream of a certificate-less connection; the welcome is a
//! server-opened unidirectional stream that tells an mTLS agent the server accepted its
//! certificate (in TLS 1.3 the client finishes its handshake before the server has checked
//! the client certificate, so without it a refusal would be indistinguishable from a later
//! network failure).

use serde::{Deserialize, Serialize};

/// Upper bound for a bootstrap request or reply: a CSR and two certificates fit many times
/// over; anything larger is not a kedge peer.
pub(crate) const MAX_MESSAGE: usize = 64 * 1024;

#[derive(Debug, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub(crate) struct BootstrapRequest {
    pub token: String,
    pub node_name: String,
    pub csr: String,
}

#[derive(Debug, Serialize, Deserialize)]
#[serde(rename_all = "camelCase", untagged)]
pub(crate) enum BootstrapReply {
    Issued {
        certificate: String,
        ca: String,
    },
    Refused {
        error: String,
        /// The token itself was refused (unknown, expired, malformed, or older than the
        /// node's revocation), so the agent does not send it again. Anything else (a bad CSR
        /// or node name, a server fault) may pass on a retry. Absent from a server that does
        /// not tell: then no token is given up on.
        #[serde(default, skip_serializing_if = "std::ops::Not::not")]
        token: bool,
    },
}

/// Certificate renewal is an HTTP request on the node's authenticated tunnel, answered by
/// the tunnel server itself (it owns the CA) before the API router; the path is outside
/// every Kubernetes API prefix. The reply is a [`BootstrapReply`].
pub(crate) const RENEW_PATH: &str = "/kedge-tunnel/v1/renew";

#[derive(Debug, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub(crate) struct RenewRequest {
    /// A CSR for a fresh key: the subject is ignored (the server names the certificate after
    /// the connection's node), only possession of the key is proven.
    pub csr: String,
}

#[derive(Debug, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub(crate) struct Welcome {
    /// The node name the server took from the certificate, for the agent's logs.
    pub node: String,
    /// The address the server sees the connection come from (the NAT's public side for a
    /// gateway behind one). Absent from servers before it was added.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub observed: Option<String>,
}

/// Application close codes; the reason text carries the detail for humans.
pub(crate) mod close {
    use quinn::VarInt;
    pub const SHUTDOWN: VarInt = VarInt::from_u32(0);
    pub const REPLACED: VarInt = VarInt::from_u32(1);
    pub const UNAUTHORIZED: VarInt = VarInt::from_u32(2);
    pub const BOOTSTRAP_DONE: VarInt = VarInt::from_u32(3);
    /// The agent moved to a connection with its renewed certificate.
    pub const ROTATED: VarInt = VarInt::from_u32(4);
    /// The agent heard nothing from the server for too long and dials again.
    pub const STALLED: VarInt = VarInt::from_u32(5);
}

pub(crate) fn encode<T: Serialize>(msg: &T) -> Vec<u8> {
    let mut v = serde_json::to_vec(msg).expect("wire messages always serialize");
    v.push(b'\n');
    v
}
