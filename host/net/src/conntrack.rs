//! Stale UDP conntrack entries, cleared as kube-proxy clears them.
//!
//! The kernel decides DNAT once per conntrack flow. A UDP "connection" has no end, so a client
//! that keeps sending keeps its flow, and with it the endpoint it was first given, long after
//! that endpoint left the Service (and, for a Service that had no endpoints, keeps whatever its
//! first packet got). After each successful nftables sync the proxy deletes those flows, so
//! the client's next packet is placed again by the new rules:
//!
//! - an endpoint that carried a UDP service port's traffic and no longer does: the flows to
//!   that port whose replies come from the endpoint
//!   (`conntrack -D -p udp --orig-dst <ip> --orig-port-dst <port> --reply-src <endpoint>`;
//!   for NodePorts without `--orig-dst`);
//! - a UDP service port that had no endpoint and has some now: every flow to it.
//!
//! [`stale_flows`] decides (pure, from the previous and the new table); [`Conntrack`] runs the
//! `conntrack` tool. The first sync of a process deletes nothing: what an earlier agent
//! installed is unknown, and clearing every UDP flow on each restart would break live ones.

use std::collections::{BTreeMap, BTreeSet};
use std::net::Ipv4Addr;
use std::process::Stdio;
use std::sync::atomic::{AtomicBool, Ordering};
use std::time::Duration;

use tokio::process::Command;

use crate::model::{Endpoint, Protocol, ProxyConfig, Service, ServicePort, ServiceTable};

/// One `conntrack -D` run takes a netlink dump of the whole table; far longer than this means
/// something is wrong, and the sync (which waits for it) must not hang on it.
const RUN_TIMEOUT: Duration = Duration::from_secs(10);

/// Where a client's UDP flow was addressed.
#[derive(Clone, Copy, Debug, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub enum Target {
    /// A ClusterIP, or a load-balancer ingress address the table programs, and the port.
    Service { ip: Ipv4Addr, port: u16 },
    /// A NodePort, on whichever node address the client used.
    NodePort(u16),
}

/// One set of conntrack flows to delete.
#[derive(Clone, Copy, Debug, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub struct Deletion {
    pub target: Target,
    /// Only the flows answered by this endpoint; `None`: every flow to the target (it had no
    /// endpoint before, so no flow to it was going anywhere useful).
    pub endpoint: Option<Ipv4Addr>,
}

impl Deletion {
    /// The `conntrack` arguments that delete exactly these flows.
    pub fn args(&self) -> Vec<String> {
        let mut a: Vec<String> = ["-D", "-p", "udp"].map(String::from).to_vec();
        match self.target {
            Target::Service { ip, port } => a.extend([
                "--orig-dst".into(),
                ip.to_string(),
                "--orig-port-dst".into(),
                port.to_string(),
            ]),
            Target::NodePort(port) => a.extend(["--orig-port-dst".into(), port.to_string()]),
        }
        if let Some(ep) = self.endpoint {
            a.extend(["--reply-src".into(), ep.to_string()]);
        }
        a
    }
}

/// What the rules do with new UDP flows to one target.
#[derive(Debug, Default)]
struct Reach {
    /// The endpoints (address, target port) new flows are DNATed to.
    usable: BTreeSet<(Ipv4Addr, u16)>,
    /// Terminating endpoints that still serve: they get no new flows but keep the ones they
    /// have (a draining endpoint, as kube-proxy leaves it).
    draining: BTreeSet<(Ipv4Addr, u16)>,
}

impl Reach {
    fn add(&mut self, port: &ServicePort, node: Option<&str>) {
        let key = |e: &Endpoint| (e.ip, e.port);
        self.usable.extend(port.usable(node).into_iter().map(key));
        self.draining.extend(
            port.endpoints
                .iter()
                .filter(|e| node.is_none_or(|n| e.node_name.as_deref() == Some(n)))
                .filter(|e| e.serving && e.terminating)
                .map(key),
        );
    }
}

/// Every UDP target the rules built from `table` handle, with where they send new flows.
/// Mirrors [`crate::nft`]'s choices: ClusterIPs follow `internalTrafficPolicy`; NodePorts and
/// load-balancer addresses reach every usable endpoint (pods and the node itself) and, under
/// `externalTrafficPolicy: Local`, this node's (everyone else).
fn udp_targets(table: &ServiceTable, cfg: &ProxyConfig) -> BTreeMap<Target, Reach> {
    let mut out: BTreeMap<Target, Reach> = BTreeMap::new();
    let node = Some(cfg.node_name.as_str());
    for svc in &table.services {
        for port in svc.ports.iter().filter(|p| p.protocol == Protocol::Udp) {
            let internal = if svc.internal_local { node } else { None };
            for &ip in &svc.cluster_ips {
                out.entry(Target::Service {
                    ip,
                    port: port.port,
                })
                .or_default()
                .add(port, internal);
            }
            for target in external_targets(svc, port, cfg) {
                let reach = out.entry(target).or_default();
                reach.add(port, None);
                if svc.external_local {
                    reach.add(port, node);
                }
            }
        }
    }
    out
}

fn external_targets(svc: &Service, port: &ServicePort, cfg: &ProxyConfig) -> Vec<Target> {
    let node_port = port.node_port.filter(|_| svc.has_node_ports());
    svc.external_ips(cfg)
        .into_iter()
        .map(|ip| Target::Service {
            ip,
            port: port.port,
        })
        .chain(node_port.map(Target::NodePort))
        .collect()
}

/// The conntrack deletions that take UDP clients off what `old` (the table last applied)
/// sent them to and `new` no longer does, sorted and without duplicates.
pub fn stale_flows(old: &ServiceTable, new: &ServiceTable, cfg: &ProxyConfig) -> Vec<Deletion> {
    let before = udp_targets(old, cfg);
    let after = udp_targets(new, cfg);
    let mut out = BTreeSet::new();
    for (target, was) in &before {
        let now = after.get(target);
        for ep in &was.usable {
            let kept = now.is_some_and(|n| n.usable.contains(ep) || n.draining.contains(ep));
            if !kept {
                out.insert(Deletion {
                    target: *target,
                    endpoint: Some(ep.0),
                });
            }
        }
    }
    for (target, now) in &after {
        let had_none = before.get(target).is_none_or(|w| w.usable.is_empty());
        if had_none && !now.usable.is_empty() {
            out.insert(Deletion {
                target: *target,
                endpoint: None,
            });
        }
    }
    out.into_iter().collect()
}

#[derive(Debug, thiserror::Error)]
pub(crate) enum Error {
    #[error("conntrack is not installed")]
    Missing,
    #[error("cannot run {program}")]
    Spawn {
        program: String,
        #[source]
        source: std::io::Error,
    },
    #[error("conntrack did not finish within {RUN_TIMEOUT:?}")]
    Timeout,
    #[error("conntrack failed ({status}): {stderr}")]
    Failed { status: String, stderr: String },
}

/// Runs `conntrack`, on the node or (like the proxy's `nft`) inside a named namespace.
pub(crate) struct Conntrack {
    /// Program and leading arguments before conntrack's own: `conntrack`, or
    /// `ip netns exec <ns> conntrack`.
    command: Vec<String>,
    /// Set once the tool was found missing, so the warning is logged once, not per sync.
    warned_missing: AtomicBool,
}

impl Conntrack {
    /// The node's own `conntrack`.
    pub(crate) fn new() -> Conntrack {
        Conntrack::with_command(vec!["conntrack".into()])
    }

    /// `conntrack` inside the named network namespace (tests and benches).
    pub(crate) fn in_netns(netns: &str) -> Conntrack {
        Conntrack::with_command(
            ["ip", "netns", "exec", netns, "conntrack"]
                .map(String::from)
                .to_vec(),
        )
    }

    pub(crate) fn with_command(command: Vec<String>) -> Conntrack {
        Conntrack {
            command,
            warned_missing: AtomicBool::new(false),
        }
    }

    /// Runs `deletions` one by one and returns how many flows went. Failures are logged, not
    /// returned: the rules are in place already, and a flow left behind is what happened
    /// before this existed. Without the tool, one warning for the proxy's whole life.
    pub(crate) async fn delete(&self, deletions: &[Deletion]) -> u64 {
        let mut deleted = 0;
        for d in deletions {
            match self.run(&d.args()).await {
                Ok(n) => deleted += n,
                Err(Error::Missing) => {
                    if !self.warned_missing.swap(true, Ordering::Relaxed) {
                        tracing::warn!(
                            "conntrack is not installed: UDP clients of a removed endpoint keep \
                             sending to it until they pause (install the conntrack package)"
                        );
                    }
                    return deleted;
                }
                Err(error) => {
                    tracing::warn!(%error, args = ?d.args(), "deleting stale UDP conntrack entries failed");
                }
            }
        }
        if !deletions.is_empty() {
            tracing::debug!(
                runs = deletions.len(),
                deleted,
                "stale UDP conntrack entries deleted"
            );
        }
        deleted
    }

    async fn run(&self, args: &[String]) -> Result<u64, Error> {
        let program = self.command.first().cloned().unwrap_or_default();
        let child = Command::new(&program)
            .args(&self.command[1..])
            .args(args)
            .stdin(Stdio::null())
            .stdout(Stdio::null())
            .stderr(Stdio::piped())
            .kill_on_drop(true)
            .spawn();
        let child = match child {
            Ok(c) => c,
            Err(e) if e.kind() == std::io::ErrorKind::NotFound && self.command.len() == 1 => {
                return Err(Error::Missing);
            }
            Err(source) => return Err(Error::Spawn { program, source }),
        };
        let out = tokio::time::timeout(RUN_TIMEOUT, child.wait_with_output())
            .await
            .map_err(|_| Error::Timeout)?
            .map_err(|source| Error::Spawn { program, source })?;
        let stderr = String::from_utf8_lossy(&out.stderr);
        outcome(out.status.code(), &stderr)
    }
}

/// Reads one run's exit code and stderr: the number of flows deleted, or why it failed.
/// conntrack exits 1 when no flow matched, which is the usual case, not an error.
fn outcome(code: Option<i32>, stderr: &str) -> Result<u64, Error> {
    let count = stderr
        .lines()
        .find_map(|l| {
            l.split(": ")
                .last()?
                .strip_suffix(" flow entries have been deleted.")
        })
        .and_then(|n| n.trim().parse::<u64>().ok());
    match (code, count) {
        (Some(0), n) => Ok(n.unwrap_or(0)),
        (Some(1), Some(0)) => Ok(0),
        // `ip netns exec` reports a program it cannot find this way.
        _ if stderr.contains("exec of \"") && stderr.contains("No such file or directory") => {
            Err(Error::Missing)
        }
        _ => {
            let mut stderr = stderr.trim().to_string();
            stderr.truncate(1024);
            Err(Error::Failed {
                status: code.map_or_else(|| "killed".into(), |c| format!("exit status {c}")),
                stderr,
            })
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::iface::tests::TestNetns;
    use crate::model::tests::{cfg, slice, svc};
    use crate::nft::{NftProxy, Ruleset, render_full, render_update};
    use serde_json::{Value, json};
    use std::net::UdpSocket;

    const CIP: Ipv4Addr = Ipv4Addr::new(10, 43, 0, 53);
    const A: Ipv4Addr = Ipv4Addr::new(10, 42, 0, 7);
    const B: Ipv4Addr = Ipv4Addr::new(10, 42, 1, 7);

    /// A Service `dns` with one UDP port 53 (and a TCP one) over `eps`, target port 5353.
    fn dns(spec_extra: Value, eps: Value) -> ServiceTable {
        let mut spec = json!({"clusterIP": "10.43.0.53", "ports": [
            {"name": "dns", "port": 53, "protocol": "UDP"}, {"name": "dns-tcp", "port": 53}]});
        for (k, v) in spec_extra.as_object().unwrap() {
            spec[k] = v.clone();
        }
        ServiceTable::build(
            &[svc("d", "dns", spec)],
            &[slice(
                "d",
                "dns",
                json!([{"name": "dns", "port": 5353, "protocol": "UDP"},
                       {"name": "dns-tcp", "port": 5353}]),
                eps,
            )],
        )
    }

    fn ep(ip: Ipv4Addr, node: &str) -> Value {
        json!({"addresses": [ip.to_string()], "nodeName": node})
    }

    fn cluster_ip(endpoint: Option<Ipv4Addr>) -> Deletion {
        Deletion {
            target: Target::Service { ip: CIP, port: 53 },
            endpoint,
        }
    }

    #[test]
    fn a_removed_udp_endpoint_loses_its_flows_and_tcp_is_left_alone() {
        let old = dns(json!({}), json!([ep(A, "n1"), ep(B, "n2")]));
        let new = dns(json!({}), json!([ep(B, "n2")]));
        assert_eq!(
            stale_flows(&old, &new, &cfg()),
            vec![cluster_ip(Some(A))],
            "one deletion, for UDP only"
        );
        assert_eq!(stale_flows(&new, &new, &cfg()), vec![], "no change");
        // Adding an endpoint to a Service that had one takes nothing away.
        assert_eq!(stale_flows(&new, &old, &cfg()), vec![]);
    }

    #[test]
    fn conntrack_arguments() {
        assert_eq!(
            cluster_ip(Some(A)).args().join(" "),
            "-D -p udp --orig-dst 10.43.0.53 --orig-port-dst 53 --reply-src 10.42.0.7"
        );
        assert_eq!(
            cluster_ip(None).args().join(" "),
            "-D -p udp --orig-dst 10.43.0.53 --orig-port-dst 53"
        );
        let np = Deletion {
            target: Target::NodePort(30053),
            endpoint: Some(B),
        };
        assert_eq!(
            np.args().join(" "),
            "-D -p udp --orig-port-dst 30053 --reply-src 10.42.1.7"
        );
    }

    #[test]
    fn node_ports_and_load_balancer_addresses_are_cleared_too() {
        let spec = json!({"type": "LoadBalancer", "ports": [
            {"name": "dns", "port": 53, "protocol": "UDP", "nodePort": 30053}]});
        let mut old = dns(spec.clone(), json!([ep(A, "n1"), ep(B, "n2")]));
        old.services[0].load_balancer_ips = vec![Ipv4Addr::new(203, 0, 113, 5)];
        let mut new = dns(spec, json!([ep(B, "n2")]));
        new.services[0].load_balancer_ips = vec![Ipv4Addr::new(203, 0, 113, 5)];
        let at = |ip: Ipv4Addr| Deletion {
            target: Target::Service { ip, port: 53 },
            endpoint: Some(A),
        };
        // cfg(): ServiceLB on, node address 192.168.1.10.
        assert_eq!(
            stale_flows(&old, &new, &cfg()),
            vec![
                at(CIP),
                at(Ipv4Addr::new(192, 168, 1, 10)),
                at(Ipv4Addr::new(203, 0, 113, 5)),
                Deletion {
                    target: Target::NodePort(30053),
                    endpoint: Some(A)
                },
            ]
        );
    }

    #[test]
    fn a_port_that_gets_its_first_endpoint_is_cleared_whole() {
        let none = dns(
            json!({"type": "NodePort", "ports": [
                {"name": "dns", "port": 53, "protocol": "UDP", "nodePort": 30053}]}),
            json!([{"addresses": [A.to_string()], "conditions": {"ready": false}}]),
        );
        let one = dns(
            json!({"type": "NodePort", "ports": [
                {"name": "dns", "port": 53, "protocol": "UDP", "nodePort": 30053}]}),
            json!([ep(A, "n1")]),
        );
        let mut c = cfg();
        c.service_lb = false;
        assert_eq!(
            stale_flows(&none, &one, &c),
            vec![
                cluster_ip(None),
                Deletion {
                    target: Target::NodePort(30053),
                    endpoint: None
                },
            ]
        );
        // A Service new to the table counts as having had none.
        assert_eq!(
            stale_flows(&ServiceTable::default(), &one, &c).len(),
            2,
            "{:?}",
            stale_flows(&ServiceTable::default(), &one, &c)
        );
        // Losing its last endpoint clears that endpoint's flows (they would go nowhere).
        assert_eq!(stale_flows(&one, &none, &c)[0], cluster_ip(Some(A)));
    }

    #[test]
    fn a_removed_service_loses_its_flows() {
        let old = dns(json!({}), json!([ep(A, "n1")]));
        assert_eq!(
            stale_flows(&old, &ServiceTable::default(), &cfg()),
            vec![cluster_ip(Some(A))]
        );
    }

    #[test]
    fn a_draining_endpoint_keeps_its_flows_until_it_stops_serving() {
        let old = dns(json!({}), json!([ep(A, "n1"), ep(B, "n2")]));
        let draining = dns(
            json!({}),
            json!([{"addresses": [A.to_string()], "nodeName": "n1",
                    "conditions": {"ready": false, "serving": true, "terminating": true}},
                   ep(B, "n2")]),
        );
        assert_eq!(stale_flows(&old, &draining, &cfg()), vec![]);
        let stopped = dns(
            json!({}),
            json!([{"addresses": [A.to_string()], "nodeName": "n1",
                    "conditions": {"ready": false, "serving": false, "terminating": true}},
                   ep(B, "n2")]),
        );
        assert_eq!(
            stale_flows(&old, &stopped, &cfg()),
            vec![cluster_ip(Some(A))],
            "not serving any more: still listed, but gone"
        );
    }

    #[test]
    fn a_new_target_port_on_the_same_address_is_a_new_endpoint() {
        let old = dns(json!({}), json!([ep(A, "n1")]));
        let mut new = old.clone();
        let udp = new.services[0]
            .ports
            .iter_mut()
            .find(|p| p.protocol == Protocol::Udp)
            .unwrap();
        udp.endpoints[0].port = 5354;
        assert_eq!(stale_flows(&old, &new, &cfg()), vec![cluster_ip(Some(A))]);
    }

    #[test]
    fn internal_traffic_policy_local_counts_only_this_nodes_endpoints() {
        let old = dns(
            json!({"internalTrafficPolicy": "Local"}),
            json!([ep(A, "n1"), ep(B, "n2")]),
        );
        let new = dns(
            json!({"internalTrafficPolicy": "Local"}),
            json!([ep(A, "n1")]),
        );
        assert_eq!(
            stale_flows(&old, &new, &cfg()),
            vec![],
            "the ClusterIP never sent anyone to the other node's endpoint"
        );
        let gone = dns(
            json!({"internalTrafficPolicy": "Local"}),
            json!([ep(B, "n2")]),
        );
        assert_eq!(stale_flows(&old, &gone, &cfg()), vec![cluster_ip(Some(A))]);
    }

    #[test]
    fn conntrack_outcomes() {
        let v = "conntrack v1.4.7 (conntrack-tools): ";
        assert_eq!(
            outcome(Some(0), &format!("{v}3 flow entries have been deleted.\n")).unwrap(),
            3
        );
        assert_eq!(
            outcome(Some(1), &format!("{v}0 flow entries have been deleted.\n")).unwrap(),
            0,
            "nothing matched is not an error"
        );
        assert!(matches!(
            outcome(
                Some(1),
                "exec of \"conntrack\" failed: No such file or directory\n"
            ),
            Err(Error::Missing)
        ));
        assert!(matches!(
            outcome(
                Some(1),
                &format!("{v}Operation failed: invalid parameters\n")
            ),
            Err(Error::Failed { .. })
        ));
        assert!(matches!(outcome(None, ""), Err(Error::Failed { .. })));
    }

    /// Root-only tests run as root or not at all: as root, a missing tool is a failure (CI
    /// installs them, scripts/setup.sh too), not a reason to pass quietly.
    fn root_with(tools: &[&str]) -> bool {
        let uid = std::process::Command::new("id").arg("-u").output();
        if !uid.is_ok_and(|o| String::from_utf8_lossy(&o.stdout).trim() == "0") {
            eprintln!("skipping: not root");
            return false;
        }
        if let Some(why) = crate::iface::tests::missing_root(tools) {
            panic!("{why}: this root test needs {tools:?} (scripts/setup.sh installs them)");
        }
        true
    }

    /// A UDP server in a namespace that answers every datagram with `ident`; stops (and is
    /// joined) when dropped.
    struct UdpServer {
        stop: std::sync::Arc<AtomicBool>,
        thread: Option<std::thread::JoinHandle<()>>,
    }

    impl UdpServer {
        fn start(ns: &TestNetns, ident: &'static str) -> UdpServer {
            let stop = std::sync::Arc::new(AtomicBool::new(false));
            let (ready_tx, ready_rx) = std::sync::mpsc::channel();
            let path = crate::netns::path(&ns.0);
            let flag = stop.clone();
            let thread = std::thread::spawn(move || {
                crate::netns::enter(&path).unwrap();
                let sock = UdpSocket::bind("0.0.0.0:5353").unwrap();
                sock.set_read_timeout(Some(Duration::from_millis(100)))
                    .unwrap();
                ready_tx.send(()).unwrap();
                let mut buf = [0u8; 64];
                while !flag.load(Ordering::Relaxed) {
                    if let Ok((_, from)) = sock.recv_from(&mut buf) {
                        let _ = sock.send_to(ident.as_bytes(), from);
                    }
                }
            });
            ready_rx.recv().expect("the UDP server thread died");
            UdpServer {
                stop,
                thread: Some(thread),
            }
        }
    }

    impl Drop for UdpServer {
        fn drop(&mut self) {
            self.stop.store(true, Ordering::Relaxed);
            if let Some(t) = self.thread.take() {
                let _ = t.join();
            }
        }
    }

    /// A UDP socket made inside `ns` (it stays there for its whole life).
    fn udp_socket_in(ns: &TestNetns) -> UdpSocket {
        let path = crate::netns::path(&ns.0);
        std::thread::spawn(move || {
            crate::netns::enter(&path).unwrap();
            let s = UdpSocket::bind("0.0.0.0:0").unwrap();
            s.set_read_timeout(Some(Duration::from_millis(500)))
                .unwrap();
            s
        })
        .join()
        .unwrap()
    }

    /// Who answers `count` datagrams sent from `sock` to `dst` ("-" for no answer).
    fn ask(sock: &UdpSocket, dst: &str, count: usize) -> Vec<String> {
        let mut buf = [0u8; 64];
        (0..count)
            .map(|_| {
                sock.send_to(b"who", dst).unwrap();
                match sock.recv_from(&mut buf) {
                    Ok((n, _)) => String::from_utf8_lossy(&buf[..n]).into_owned(),
                    Err(_) => "-".into(),
                }
            })
            .collect()
    }

    #[test]
    fn a_udp_client_follows_the_service_to_its_new_endpoint() {
        if !root_with(&["ip", "nft", "conntrack"]) {
            return;
        }
        // client 192.168.79.2 ── 192.168.79.1 node 10.42.1.1 ── 10.42.1.2 pod a
        //                                       10.42.2.1 ── 10.42.2.2 pod b
        let node = TestNetns::new("ctnode");
        let client = TestNetns::new("ctcli");
        let pod_a = TestNetns::new("ctpa");
        let pod_b = TestNetns::new("ctpb");
        for (peer, inside, outside, net) in [
            (&client, "c0", "192.168.79.2/24", "192.168.79"),
            (&pod_a, "pa", "10.42.1.2/24", "10.42.1"),
            (&pod_b, "pb", "10.42.2.2/24", "10.42.2"),
        ] {
            node.ip(&[
                "link", "add", inside, "type", "veth", "peer", "name", "eth0", "netns", &peer.0,
            ]);
            node.ip(&["addr", "add", &format!("{net}.1/24"), "dev", inside]);
            node.ip(&["link", "set", inside, "up"]);
            peer.ip(&["addr", "add", outside, "dev", "eth0"]);
            peer.ip(&["link", "set", "eth0", "up"]);
            peer.ip(&["route", "add", "default", "via", &format!("{net}.1")]);
        }
        node.exec(&["sysctl", "-qw", "net.ipv4.ip_forward=1"]);
        let _a = UdpServer::start(&pod_a, "a");
        let _b = UdpServer::start(&pod_b, "b");

        let to = |ip: Ipv4Addr| {
            dns(
                json!({"ports": [{"name": "dns", "port": 53, "protocol": "UDP"}]}),
                json!([ep(ip, "n1")]),
            )
        };
        let on_a = to(Ipv4Addr::new(10, 42, 1, 2));
        let on_b = to(Ipv4Addr::new(10, 42, 2, 2));
        let c = ProxyConfig {
            node_name: "n1".into(),
            node_ips: vec![Ipv4Addr::new(192, 168, 79, 1)],
            cluster_cidr: (Ipv4Addr::new(10, 42, 0, 0), 16),
            service_lb: false,
        };
        let dst = "10.43.0.53:53";

        // The problem, shown with the rules alone: the kernel keeps a live UDP flow on the
        // endpoint it was first DNATed to, whatever the rules say now.
        let nft = |script: String| {
            let mut child = std::process::Command::new("ip")
                .args(["netns", "exec", &node.0, "nft", "-f", "-"])
                .stdin(Stdio::piped())
                .spawn()
                .unwrap();
            use std::io::Write as _;
            child
                .stdin
                .take()
                .unwrap()
                .write_all(script.as_bytes())
                .unwrap();
            assert!(child.wait().unwrap().success());
        };
        let (rs_a, rs_b) = (Ruleset::build(&on_a, &c), Ruleset::build(&on_b, &c));
        nft(render_full(&rs_a));
        let stuck = udp_socket_in(&client);
        assert_eq!(ask(&stuck, dst, 3), ["a", "a", "a"]);
        nft(render_update(&rs_a, &rs_b));
        assert_eq!(
            ask(&stuck, dst, 3),
            ["a", "a", "a"],
            "without clearing, the flow stays on the old endpoint"
        );
        assert_eq!(
            ask(&udp_socket_in(&client), dst, 1),
            ["b"],
            "a new flow takes the new rules"
        );

        // The proxy clears the flow: the same socket (same source port) moves to b.
        let proxy = NftProxy::in_netns(c, &node.0);
        let rt = tokio::runtime::Builder::new_current_thread()
            .enable_all()
            .build()
            .unwrap();
        rt.block_on(proxy.sync(&on_a)).unwrap();
        let sock = udp_socket_in(&client);
        let port = sock.local_addr().unwrap().port();
        assert_eq!(ask(&sock, dst, 5), ["a"; 5]);
        rt.block_on(proxy.sync(&on_b)).unwrap();
        assert_eq!(sock.local_addr().unwrap().port(), port);
        assert_eq!(
            ask(&sock, dst, 5),
            ["b"; 5],
            "the client follows the Service"
        );
        rt.block_on(proxy.shutdown());
    }

    #[tokio::test]
    async fn a_missing_tool_warns_once_and_stops_the_batch() {
        let ct = Conntrack::with_command(vec!["kedge-test-no-such-conntrack".into()]);
        let all = [cluster_ip(Some(A)), cluster_ip(Some(B))];
        assert_eq!(ct.delete(&all).await, 0);
        assert!(ct.warned_missing.load(Ordering::Relaxed));
        assert_eq!(ct.delete(&all).await, 0, "and again, silently");
    }
}
