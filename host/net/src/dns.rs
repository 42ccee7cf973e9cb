//! Node-local cluster DNS: every agent answers `*.svc.<cluster domain>` from its own watch
//! cache, so names keep resolving while the control plane is unreachable.
//!
//! Answers follow the Kubernetes DNS specification as CoreDNS's kubernetes plugin serves it
//! (A/AAAA for ClusterIPs, ready endpoints for headless Services and their per-endpoint names,
//! SRV for named ports, CNAME for ExternalName, PTR, NXDOMAIN with the SOA, NODATA for empty
//! non-terminals, TTL 5 s). Everything else, reverse names we do not know included, goes to
//! the node's own resolvers: UDP first, TCP when the answer was truncated, SERVFAIL when none
//! answers.
//!
//! The split: [`Zone`] is pure data built from Service and EndpointSlice JSON, rebuilt and
//! swapped whole on every change; [`DnsServer`] owns the sockets (hickory-server) and the
//! forwarding (hickory-net's client). No DNS wire format is handled here by hand.
//!
//! ```no_run
//! # async fn run(services: Vec<serde_json::Value>, slices: Vec<serde_json::Value>) -> anyhow::Result<()> {
//! use kedge_net::dns::{DnsConfig, DnsServer, Zone, upstreams_from_resolv_conf};
//! let resolv = std::fs::read_to_string("/etc/resolv.conf")?;
//! let upstreams = upstreams_from_resolv_conf(&resolv).into_iter().map(|ip| (ip, 53).into()).collect();
//! let cancel = tokio_util::sync::CancellationToken::new();
//! let cfg = DnsConfig { listen: vec!["10.43.0.10:53".parse()?], domain: "cluster.local".into(), upstreams };
//! let server = DnsServer::start(cfg, cancel.clone()).await?;
//! server.update(Zone::build("cluster.local", &services, &slices));
//! # Ok(()) }
//! ```

use std::net::{IpAddr, SocketAddr};

mod server;
mod zone;

#[cfg(test)]
mod tests;

pub use server::DnsServer;
pub use zone::Zone;

/// Where and for what the node-local DNS server answers.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct DnsConfig {
    /// Addresses to serve UDP and TCP on (port 0 picks one port for both).
    pub listen: Vec<SocketAddr>,
    /// The cluster domain, e.g. `cluster.local`.
    pub domain: String,
    /// Resolvers for everything outside the cluster zone, tried in order. Any that is this
    /// server itself is dropped.
    pub upstreams: Vec<SocketAddr>,
}

/// Why the DNS server could not start.
#[derive(Debug, thiserror::Error)]
pub enum DnsError {
    #[error("cluster domain {domain:?} is not a DNS name")]
    Domain {
        domain: String,
        #[source]
        source: hickory_proto::ProtoError,
    },
    #[error("no listen address for the dns server")]
    NoListen,
    #[error("cannot listen on {protocol} {addr}")]
    Bind {
        protocol: &'static str,
        addr: SocketAddr,
        #[source]
        source: std::io::Error,
    },
}

/// The `nameserver` addresses of a resolv.conf, in order.
///
/// Loopback stubs such as systemd-resolved's 127.0.0.53 are kept: the agent runs in the node's
/// network namespace, where they work. Addresses with a zone index (`fe80::1%eth0`) are skipped,
/// as `IpAddr` cannot carry it. [`DnsServer::start`] drops any that is the server itself.
pub fn upstreams_from_resolv_conf(text: &str) -> Vec<IpAddr> {
    crate::resolv::HostResolv::parse(text)
        .nameservers
        .iter()
        .filter_map(|ns| ns.parse().ok())
        .collect()
}
