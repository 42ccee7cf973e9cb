//! Who is calling. Authentication happens at the transport (client certificates on HTTPS and
//! on the QUIC tunnel); the identity travels as a request extension of this one type, which
//! the tunnel crate defines because it inserts it for node connections.

pub use kedge_tunnel::Identity;

/// `authentication.k8s.io/v1` SelfSubjectReview of the caller (`kubectl auth whoami`): who
/// the request authenticated as. Answered, never stored.
pub(crate) fn self_subject_review(id: &Identity) -> serde_json::Value {
    serde_json::json!({
        "kind": "SelfSubjectReview",
        "apiVersion": "authentication.k8s.io/v1",
        "metadata": {"creationTimestamp": null},
        "status": {"userInfo": {"username": id.user, "groups": id.groups}},
    })
}
