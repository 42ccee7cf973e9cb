//! Who is calling. Authentication happens at the transport (client certificates on HTTPS and
//! on the QUIC tunnel); the identity travels as a request extension.

/// An authenticated caller: certificate CN → user, O → groups.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Identity {
    pub user: String,
    pub groups: Vec<String>,
}
