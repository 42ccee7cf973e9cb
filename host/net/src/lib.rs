//! Node networking for the kedge agent (the service-networking issue):
//!
//! - [`cni`]: each pod's network namespace and IP from the node's podCIDR, through the
//!   standard CNI plugins (bridge, host-local, portmap, loopback), driven per the CNI spec.
//! - [`netns`]: entering a pod's network namespace from a thread (Wasm containers open their
//!   sockets there).
//! - [`model`]: the Services and EndpointSlices a node knows, as one table the proxy reads.
//! - [`nft`] and [`userspace`]: the service proxy's two modes; [`conntrack`]: the UDP flows
//!   the nftables mode clears when endpoints go.
//! - [`dns`] and [`resolv`]: node-local cluster DNS and the pods' resolv.conf.
//! - [`svcenv`]: Docker-links-style service environment variables.
//!
//! Nothing here talks to the API server: the agent feeds it what its watches see.

pub mod cidr;
pub mod cni;
pub mod conntrack;
pub mod dns;
pub mod iface;
pub mod model;
pub mod netns;
pub mod nft;
pub mod resolv;
pub mod svcenv;
pub mod userspace;
