//! `GET /api/v1/nodes/<target>/relay?ip=A.B.C.D&port=N`: the data path between nodes that
//! cannot reach each other (behind different NATs).
//!
//! A node asks, through its own tunnel, for a TCP connection to a pod of another node; the
//! server opens an upgraded stream to the target node's agent through that node's tunnel
//! (as for port-forward), the agent connects to `ip:port`, and the server splices the two
//! streams: agent A → server → agent B → pod. Both hops are upgraded to
//! [`TCP_UPGRADE`]: after `101` each carries the raw bytes of the one TCP connection, and a
//! half-close travels as the stream's end.
//!
//! Only nodes may ask, and only for what the target node itself hosts: an address in its
//! `spec.podCIDR(s)` (pods with their own network) or its InternalIP (pods on the node's
//! network). Anything else would make the server an open TCP proxy into every node's
//! network. Nothing is recorded in the store.
//!
//! A stream upgraded to [`UDP_UPGRADE`] instead carries one UDP flow, its datagrams framed
//! by the agents; the server splices it the same way. Each node takes part in at most
//! [`MAX_RELAYS_PER_NODE`] relayed connections at once (as caller or target), so relays
//! never take all of a tunnel's streams from the node's own API calls.

use std::net::Ipv4Addr;
use std::time::Duration;

use axum::body::Body;
use axum::http::{HeaderValue, Method, StatusCode, header, request::Parts};
use axum::response::Response;
use hyper_util::rt::TokioIo;
use serde_json::Value;

use super::alloc::Cidr;
use super::error::{ApiError, Result};
use super::http::ApiState;
use crate::auth::Identity;
use kedge_core::channel::{RELAY_PATH as AGENT_PATH, TCP_UPGRADE, UDP_UPGRADE};
use kedge_core::resources;

/// Bound on the target agent's answer: it connects within 5 s; the rest is a round trip
/// over its tunnel.
const AGENT_TIMEOUT: Duration = Duration::from_secs(8);
/// Copy buffer per direction of a relayed connection: as the agent's port-forward splice, a
/// QUIC stream write per 64 KiB rather than per 8 KiB; also the most a relay holds per
/// direction.
const SPLICE_BUF: usize = 64 * 1024;

/// Relayed connections one node takes part in at once, as caller or target: half of the
/// 1,024 streams its tunnel carries, so its own API calls always have room.
pub const MAX_RELAYS_PER_NODE: usize = 512;

/// Relayed connections open per node.
#[derive(Debug, Default)]
pub struct Slots(std::sync::Arc<std::sync::Mutex<std::collections::HashMap<String, usize>>>);

/// One relayed connection's claim on both its nodes' slots, given back when dropped.
#[derive(Debug)]
pub(crate) struct Claim {
    slots: std::sync::Arc<std::sync::Mutex<std::collections::HashMap<String, usize>>>,
    nodes: [String; 2],
}

impl Slots {
    /// A slot of `from` and of `to`, or the node that has none left.
    pub(crate) fn claim(&self, from: &str, to: &str) -> std::result::Result<Claim, String> {
        let mut open = self.0.lock().unwrap_or_else(|p| p.into_inner());
        for n in [from, to] {
            if open.get(n).copied().unwrap_or(0) >= MAX_RELAYS_PER_NODE {
                return Err(n.to_string());
            }
        }
        for n in [from, to] {
            *open.entry(n.to_string()).or_default() += 1;
        }
        Ok(Claim {
            slots: self.0.clone(),
            nodes: [from.to_string(), to.to_string()],
        })
    }

    #[cfg(test)]
    fn open(&self, node: &str) -> usize {
        let open = self.0.lock().unwrap_or_else(|p| p.into_inner());
        open.get(node).copied().unwrap_or(0)
    }
}

impl Drop for Claim {
    fn drop(&mut self) {
        let mut open = self.slots.lock().unwrap_or_else(|p| p.into_inner());
        for n in &self.nodes {
            if let Some(c) = open.get_mut(n) {
                *c -= 1;
                if *c == 0 {
                    open.remove(n);
                }
            }
        }
    }
}

/// The target node of a relay URL (`/api/v1/nodes/<name>/relay`), None for any other path.
pub(crate) fn parse(segs: &[&str]) -> Option<String> {
    match segs {
        ["api", "v1", "nodes", name, "relay"] if !name.is_empty() => Some((*name).to_string()),
        _ => None,
    }
}

/// What a relay request asks for, once its query is read.
#[derive(Debug, PartialEq, Eq)]
pub(crate) struct Dest {
    pub ip: Ipv4Addr,
    pub port: u16,
}

/// `ip` (IPv4) and `port` (1–65535) from the query.
pub(crate) fn dest(query: Option<&str>) -> Result<Dest> {
    let (mut ip, mut port) = (None, None);
    for (k, v) in url::form_urlencoded::parse(query.unwrap_or("").as_bytes()) {
        match k.as_ref() {
            "ip" => ip = Some(v.into_owned()),
            "port" => port = Some(v.into_owned()),
            _ => {}
        }
    }
    let ip = ip.ok_or_else(|| ApiError::bad_request("query parameter \"ip\" is required"))?;
    let ip: Ipv4Addr = ip.parse().map_err(|_| {
        ApiError::bad_request(format!(
            "query parameter \"ip\": {ip:?} is not an IPv4 address"
        ))
    })?;
    let port = port.ok_or_else(|| ApiError::bad_request("query parameter \"port\" is required"))?;
    let port = port.parse::<u16>().ok().filter(|p| *p > 0).ok_or_else(|| {
        ApiError::bad_request(format!(
            "query parameter \"port\": {port:?} is not a port number (1-65535)"
        ))
    })?;
    Ok(Dest { ip, port })
}

fn forbidden(id: &Identity, target: &str, why: &str) -> ApiError {
    let a = super::rbac::Attributes::resource("get", "", "nodes", "relay", "", target);
    super::rbac::forbidden(id, &a, why)
}

/// The caller's node name: only nodes relay, and never to themselves (their own pods are
/// local to them).
pub(crate) fn caller<'a>(id: &'a Identity, target: &str) -> Result<&'a str> {
    let Some(node) = super::authz::node_of(id) else {
        return Err(forbidden(
            id,
            target,
            "only nodes (group system:nodes) may relay connections between nodes",
        ));
    };
    if node == target {
        return Err(ApiError::bad_request(format!(
            "node {node:?} cannot relay to itself: its pods are local"
        )));
    }
    Ok(node)
}

/// Whether the Node `target` hosts a pod at `ip:port`: a pod address inside its
/// `spec.podCIDR(s)` (not the range's own network, gateway or broadcast address: those are
/// the node itself), or its InternalIP on a port one of its pods serves there
/// (`node_ports`: hostNetwork pods' containerPorts and every pod's hostPorts). Nothing else
/// of a node may be reached through the relay: its own services (sshd, the agent's
/// forwarders) stay the node's. The refusal says what the node does host.
pub(crate) fn hosts(
    target: &Value,
    ip: Ipv4Addr,
    port: u16,
    node_ports: impl FnOnce() -> Vec<u16>,
) -> std::result::Result<(), String> {
    let cidrs: Vec<Cidr> = target
        .pointer("/spec/podCIDRs")
        .and_then(Value::as_array)
        .into_iter()
        .flatten()
        .chain(target.pointer("/spec/podCIDR"))
        .filter_map(Value::as_str)
        .filter_map(|c| c.parse::<Cidr>().ok())
        .collect();
    let internal: Vec<Ipv4Addr> = target
        .pointer("/status/addresses")
        .and_then(Value::as_array)
        .into_iter()
        .flatten()
        .filter(|a| a["type"] == "InternalIP")
        .filter_map(|a| a["address"].as_str()?.parse().ok())
        .collect();
    if let Some(c) = cidrs.iter().find(|c| c.contains(ip)) {
        let net = u32::from(c.addr);
        let size = 1u64 << (32 - u32::from(c.prefix));
        let last = (u64::from(net) + size - 1) as u32;
        let node_own = [net, net.wrapping_add(1), last];
        if c.prefix < 31 && node_own.contains(&u32::from(ip)) {
            return Err(format!(
                "{ip} is the node's own address in its pod CIDR ({c}), not a pod's"
            ));
        }
        return Ok(());
    }
    if internal.contains(&ip) {
        if node_ports().contains(&port) {
            return Ok(());
        }
        return Err(format!(
            "no pod on the node serves port {port} on its address {ip} (a hostNetwork \
             pod's containerPort or a hostPort)"
        ));
    }
    let list = |v: Vec<String>| {
        if v.is_empty() {
            "none".to_string()
        } else {
            v.join(", ")
        }
    };
    Err(format!(
        "{ip} is neither in the node's pod CIDR ({}) nor its InternalIP ({})",
        list(cidrs.iter().map(ToString::to_string).collect()),
        list(internal.iter().map(ToString::to_string).collect()),
    ))
}

/// The ports (of `protocol`) pods on `node` serve on its own address: hostNetwork pods'
/// containerPorts and every pod's hostPorts.
fn pod_ports_on(api: &crate::ops::Api, node: &str, protocol: &str) -> Vec<u16> {
    let pods = resources::by_kind("v1", "Pod").expect("pods are served");
    let Ok(list) = api.list(pods, "", &crate::ops::ListOptions::default()) else {
        return Vec::new();
    };
    let mut ports = Vec::new();
    for p in list["items"].as_array().into_iter().flatten() {
        if p.pointer("/spec/nodeName").and_then(Value::as_str) != Some(node) {
            continue;
        }
        let host_network = p.pointer("/spec/hostNetwork") == Some(&Value::Bool(true));
        for key in ["initContainers", "containers"] {
            for c in p
                .pointer(&format!("/spec/{key}"))
                .and_then(Value::as_array)
                .into_iter()
                .flatten()
            {
                for port in c["ports"].as_array().into_iter().flatten() {
                    if port["protocol"].as_str().unwrap_or("TCP") != protocol {
                        continue;
                    }
                    let n = port["hostPort"]
                        .as_u64()
                        .filter(|n| *n > 0)
                        .or_else(|| port["containerPort"].as_u64().filter(|_| host_network));
                    if let Some(n) = n.and_then(|n| u16::try_from(n).ok()) {
                        ports.push(n);
                    }
                }
            }
        }
    }
    ports
}

/// The relay's kind: a TCP connection or a UDP flow, by the upgrade asked for.
fn asked_upgrade(parts: &Parts) -> Option<&'static str> {
    kedge_core::channel::relay_upgrade(parts.headers.get(header::UPGRADE)?.to_str().ok()?)
}

/// Serves one relay request: every check, then the target agent's stream, then `101` and
/// the splice in a task of its own. The task ends when both directions have ended, at the
/// latest when either tunnel closes (as when the server stops).
pub(crate) async fn serve(
    st: &ApiState,
    identity: &Identity,
    mut parts: Parts,
    target: &str,
) -> Result<Response> {
    let from = caller(identity, target)?.to_string();
    if parts.method != Method::GET {
        return Err(ApiError::method_not_allowed(format!(
            "a relay is a GET with an upgrade to {TCP_UPGRADE}"
        )));
    }
    let d = dest(parts.uri.query())?;
    let token = asked_upgrade(&parts).ok_or_else(|| {
        ApiError::bad_request(format!(
            "a relay needs an upgrade to {TCP_UPGRADE} (TCP) or {UDP_UPGRADE} (UDP)"
        ))
    })?;
    let protocol = if token == UDP_UPGRADE { "UDP" } else { "TCP" };
    let nodes = resources::by_kind("v1", "Node").expect("nodes are served");
    let node = st.api.get(nodes, "", target)?;
    let node_ports = || pod_ports_on(&st.api, target, protocol);
    hosts(&node, d.ip, d.port, node_ports).map_err(|why| forbidden(identity, target, &why))?;
    let on_upgrade = parts
        .extensions
        .remove::<hyper::upgrade::OnUpgrade>()
        .ok_or_else(|| ApiError::bad_request(format!("a relay needs an upgrade to {token}")))?;
    let claim = st.relays.claim(&from, target).map_err(|full| {
        ApiError::new(
            429,
            "TooManyRequests",
            format!(
                "node {full:?} already takes part in {MAX_RELAYS_PER_NODE} relayed \
                 connections, the most per node"
            ),
        )
    })?;
    let proxy = st
        .nodes
        .get()
        .cloned()
        .ok_or_else(|| ApiError::unavailable("no node tunnel server is running"))?;
    let uri = format!("{AGENT_PATH}?ip={}&port={}", d.ip, d.port);
    let req = http::Request::post(uri)
        .header(header::CONNECTION, "upgrade")
        .header(header::UPGRADE, token)
        .body(Body::empty())
        .map_err(|e| ApiError::internal(e.to_string()))?;
    let to_b = async {
        let mut resp = proxy.request(target, req).await.map_err(|e| {
            ApiError::unavailable(format!(
                "node {target:?} cannot be reached through its tunnel: {e}"
            ))
        })?;
        if resp.status() != StatusCode::SWITCHING_PROTOCOLS {
            return Err(agent_refusal(target, resp).await);
        }
        hyper::upgrade::on(&mut resp).await.map_err(|e| {
            ApiError::unavailable(format!("upgrading the stream to node {target:?}: {e}"))
        })
    };
    let to_b = tokio::time::timeout(AGENT_TIMEOUT, to_b)
        .await
        .map_err(|_| {
            ApiError::new(
                504,
                "Timeout",
                format!("node {target:?} did not answer a relay within {AGENT_TIMEOUT:?}"),
            )
        })??;
    let (ip, port) = (d.ip, d.port);
    tokio::spawn(async move {
        let _claim = claim;
        let from_a = match on_upgrade.await {
            Ok(io) => io,
            Err(e) => {
                tracing::debug!(from, error = %e, "relay: the caller's upgrade failed");
                return;
            }
        };
        let (mut a, mut b) = (TokioIo::new(from_a), TokioIo::new(to_b));
        match tokio::io::copy_bidirectional_with_sizes(&mut a, &mut b, SPLICE_BUF, SPLICE_BUF).await
        {
            Ok((up, down)) => {
                tracing::trace!(from, %ip, port, up, down, "relayed connection ended")
            }
            Err(e) => tracing::debug!(from, %ip, port, error = %e, "relayed connection broke"),
        }
    });
    let mut r = Response::new(Body::empty());
    *r.status_mut() = StatusCode::SWITCHING_PROTOCOLS;
    let h = r.headers_mut();
    h.insert(header::CONNECTION, HeaderValue::from_static("upgrade"));
    h.insert(header::UPGRADE, HeaderValue::from_static(token));
    Ok(r)
}

/// The target agent's answer before an upgrade (port closed, no route, timed out) as the
/// caller's Status, with the agent's words.
async fn agent_refusal(target: &str, resp: http::Response<Body>) -> ApiError {
    let code = resp.status().as_u16();
    let bytes = axum::body::to_bytes(resp.into_body(), 64 * 1024)
        .await
        .unwrap_or_default();
    let text = String::from_utf8_lossy(&bytes).trim().to_string();
    let msg = if text.is_empty() {
        format!("node {target:?} answered {code} to a relay")
    } else {
        text
    };
    match code {
        400 => ApiError::bad_request(msg),
        // The relay route answers everything else itself: an agent from before it.
        404 => ApiError::new(
            502,
            "ServiceUnavailable",
            format!(
                "node {target:?} does not relay connections (its agent is older than the server)"
            ),
        ),
        504 => ApiError::new(504, "Timeout", msg),
        _ => ApiError::new(502, "ServiceUnavailable", msg),
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    fn id(user: &str, groups: &[&str]) -> Identity {
        Identity {
            user: user.into(),
            groups: groups.iter().map(|g| g.to_string()).collect(),
        }
    }

    #[test]
    fn a_node_takes_part_in_a_bounded_number_of_relays() {
        let slots = Slots::default();
        let mut held = Vec::new();
        for _ in 0..MAX_RELAYS_PER_NODE {
            held.push(slots.claim("a", "b").unwrap());
        }
        // a and b are both full; c and d are not.
        assert_eq!(slots.claim("a", "c").unwrap_err(), "a");
        assert_eq!(slots.claim("c", "b").unwrap_err(), "b");
        assert_eq!(slots.open("c"), 0, "a refused claim takes nothing");
        let other = slots.claim("c", "d").unwrap();
        held.pop();
        let again = slots.claim("c", "b").unwrap();
        assert_eq!(slots.open("b"), MAX_RELAYS_PER_NODE);
        assert_eq!(slots.open("c"), 2);
        drop((other, again, held));
        for n in ["a", "b", "c", "d"] {
            assert_eq!(slots.open(n), 0, "{n}");
        }
    }

    #[test]
    fn relay_urls() {
        assert_eq!(
            parse(&["api", "v1", "nodes", "b", "relay"]).as_deref(),
            Some("b")
        );
        assert_eq!(parse(&["api", "v1", "nodes", "b"]), None);
        assert_eq!(parse(&["api", "v1", "nodes", "b", "proxy"]), None);
        assert_eq!(parse(&["apis", "x", "v1", "nodes", "b", "relay"]), None);
    }

    #[test]
    fn only_other_nodes_relay() {
        let node = id("system:node:a", &["system:nodes", "system:authenticated"]);
        assert_eq!(caller(&node, "b").unwrap(), "a");
        let e = caller(&node, "a").unwrap_err();
        assert_eq!(e.code, 400);
        assert!(e.message.contains("itself"), "{}", e.message);
        for who in [
            id("admin", &["system:masters"]),
            id("system:node:a", &["system:authenticated"]),
            id("alice", &["system:nodes-not"]),
        ] {
            let e = caller(&who, "b").unwrap_err();
            assert_eq!(e.code, 403, "{who:?}");
            assert!(
                e.message.contains("nodes \"b\" is forbidden"),
                "{}",
                e.message
            );
            assert!(e.message.contains("only nodes"), "{}", e.message);
        }
    }

    #[test]
    fn query_names_an_ipv4_address_and_a_port() {
        assert_eq!(
            dest(Some("ip=10.42.1.7&port=80")).unwrap(),
            Dest {
                ip: Ipv4Addr::new(10, 42, 1, 7),
                port: 80
            }
        );
        assert_eq!(dest(Some("port=65535&ip=1.2.3.4")).unwrap().port, 65535);
        for bad in [
            None,
            Some("ip=10.42.1.7"),
            Some("port=80"),
            Some("ip=10.42.1.7&port=0"),
            Some("ip=10.42.1.7&port=65536"),
            Some("ip=10.42.1.7&port=http"),
            Some("ip=fe80::1&port=80"),
            Some("ip=example.com&port=80"),
        ] {
            let e = dest(bad).unwrap_err();
            assert_eq!(e.code, 400, "{bad:?}");
        }
    }

    #[test]
    fn a_node_hosts_its_pod_cidr_and_its_internal_ip() {
        let n = json!({"spec": {"podCIDR": "10.42.1.0/24", "podCIDRs": ["10.42.1.0/24"]},
            "status": {"addresses": [
                {"type": "Hostname", "address": "b"},
                {"type": "ExternalIP", "address": "203.0.113.9"},
                {"type": "InternalIP", "address": "192.168.7.2"}]}});
        let served = || vec![8080];
        for ok in ["10.42.1.7", "10.42.1.254", "192.168.7.2"] {
            assert!(hosts(&n, ok.parse().unwrap(), 8080, served).is_ok(), "{ok}");
        }
        // The node's own addresses in its range are the node, not pods.
        for own in ["10.42.1.0", "10.42.1.1", "10.42.1.255"] {
            let e = hosts(&n, own.parse().unwrap(), 22, served).unwrap_err();
            assert!(e.contains("node's own address"), "{own}: {e}");
        }
        // Its InternalIP only on a port a pod serves there.
        let e = hosts(&n, "192.168.7.2".parse().unwrap(), 22, served).unwrap_err();
        assert!(e.contains("no pod on the node serves port 22"), "{e}");
        for bad in [
            "10.42.2.7",
            "10.42.0.255",
            "192.168.7.3",
            "203.0.113.9",
            "127.0.0.1",
        ] {
            let e = hosts(&n, bad.parse().unwrap(), 8080, || vec![8080]).unwrap_err();
            assert!(
                e.contains("10.42.1.0/24") && e.contains("192.168.7.2"),
                "{bad}: {e}"
            );
        }
        // A node with neither hosts nothing.
        let e = hosts(
            &json!({"spec": {}}),
            "10.42.1.7".parse().unwrap(),
            80,
            Vec::new,
        )
        .unwrap_err();
        assert!(e.contains("(none)"), "{e}");
        // podCIDRs alone counts too.
        let n = json!({"spec": {"podCIDRs": ["10.42.3.0/24"]}});
        assert!(hosts(&n, "10.42.3.9".parse().unwrap(), 80, Vec::new).is_ok());
    }
}
