//! Who is calling. Authentication happens at the transport (client certificates on HTTPS and
//! on the QUIC tunnel); the identity travels as a request extension of this one type, which
//! the tunnel crate defines because it inserts it for node connections.

pub use kedge_tunnel::Identity;
