//! NodePorts: a pod does not fit a node where a pod already holds one of the ports it
//! needs — same protocol and number on overlapping host IPs, where `0.0.0.0` (or no
//! `hostIP`) overlaps every address — as kube-scheduler's NodePorts filter decides.
//!
//! The ports a pod holds on its node are the `hostPort`s of its containers and init
//! containers (what kube-scheduler counts) and, while [`pods_share_node_network`], every
//! `containerPort` too: with no pod network the container's process listens on the node
//! itself, so two pods declaring `containerPort: 8080` cannot run side by side. A
//! `containerPort` takes the `hostIP` and protocol of its entry, as it does for a
//! `hostNetwork` pod in Kubernetes (whose API copies `containerPort` into `hostPort`).
//!
//! Counted: pods bound to the node that have not finished (`Succeeded`/`Failed`),
//! terminating ones included — their processes hold the ports until the agent stops them,
//! and kube-scheduler counts them too.

use std::collections::HashMap;

use k8s_openapi::api::core::v1::{Node, Pod, PodSpec};

use crate::Reason;

/// Whether every pod shares its node's network namespace (pod IP = node IP), so every port
/// a container declares is a port on the node. True until kedge has a pod network; then only
/// `hostNetwork` pods' `containerPort`s (and everyone's `hostPort`s) hold node ports.
pub(crate) const fn pods_share_node_network() -> bool {
    true
}

/// The address that stands for every address of the node.
const ANY_IP: &str = "0.0.0.0";

/// One port held on a node.
#[derive(Debug, Clone, PartialEq, Eq)]
pub(crate) struct HostPort {
    /// [`ANY_IP`] when the pod gave none.
    ip: String,
    /// `TCP` when the pod gave none.
    protocol: String,
    port: i32,
}

impl HostPort {
    fn overlaps(&self, other: &HostPort) -> bool {
        self.port == other.port
            && self.protocol == other.protocol
            && (self.ip == ANY_IP || other.ip == ANY_IP || self.ip == other.ip)
    }
}

/// The ports `spec` holds on its node (see the module doc for which).
pub(crate) fn held_ports(spec: &PodSpec) -> Vec<HostPort> {
    let container_ports = pods_share_node_network() || spec.host_network == Some(true);
    let mut held = Vec::new();
    let containers = spec
        .init_containers
        .iter()
        .flatten()
        .chain(&spec.containers);
    for p in containers.flat_map(|c| c.ports.iter().flatten()) {
        let host_port = p.host_port.filter(|&n| n > 0);
        let numbers = host_port
            .into_iter()
            .chain(Some(p.container_port).filter(|&n| container_ports && n > 0));
        for port in numbers {
            let hp = HostPort {
                ip: p
                    .host_ip
                    .as_deref()
                    .filter(|ip| !ip.is_empty())
                    .unwrap_or(ANY_IP)
                    .to_string(),
                protocol: p
                    .protocol
                    .as_deref()
                    .filter(|p| !p.is_empty())
                    .unwrap_or("TCP")
                    .to_string(),
                port,
            };
            if !held.contains(&hp) {
                held.push(hp);
            }
        }
    }
    held
}

/// The incoming pod's ports and what the pods on each node hold.
pub(crate) struct NodePorts<'a> {
    wanted: Vec<HostPort>,
    held: HashMap<&'a str, Vec<HostPort>>,
}

impl<'a> NodePorts<'a> {
    pub(crate) fn new(pod: &Pod, all_pods: &'a [Pod]) -> Self {
        let wanted = pod.spec.as_ref().map(held_ports).unwrap_or_default();
        let mut held: HashMap<&str, Vec<HostPort>> = HashMap::new();
        // A pod that needs no port fits whatever the nodes hold.
        if !wanted.is_empty() {
            for other in all_pods {
                let Some(spec) = other.spec.as_ref() else {
                    continue;
                };
                let node = spec.node_name.as_deref().unwrap_or("");
                let phase = other.status.as_ref().and_then(|s| s.phase.as_deref());
                if node.is_empty()
                    || matches!(phase, Some("Succeeded" | "Failed"))
                    || other.metadata.uid == pod.metadata.uid
                {
                    continue;
                }
                held.entry(node).or_default().extend(held_ports(spec));
            }
        }
        NodePorts { wanted, held }
    }

    /// `Some(reason)` when a port the pod needs is taken on `node`.
    pub(crate) fn check(&self, node: &Node) -> Option<Reason> {
        let name = node.metadata.name.as_deref().unwrap_or("");
        let held = self.held.get(name)?;
        self.wanted
            .iter()
            .any(|w| held.iter().any(|h| h.overlaps(w)))
            .then_some(Reason::NodePorts)
    }
}

#[cfg(test)]
mod tests {
    use k8s_openapi::api::core::v1::{Container, ContainerPort, PodStatus};

    use super::*;

    /// A port entry: `host_port` 0 for none, `ip` and `protocol` "" for none.
    fn port(container_port: i32, host_port: i32, ip: &str, protocol: &str) -> ContainerPort {
        ContainerPort {
            container_port,
            host_port: (host_port > 0).then_some(host_port),
            host_ip: (!ip.is_empty()).then(|| ip.to_string()),
            protocol: (!protocol.is_empty()).then(|| protocol.to_string()),
            ..Default::default()
        }
    }

    fn pod(name: &str, node: &str, phase: &str, ports: Vec<ContainerPort>) -> Pod {
        let mut p = Pod::default();
        p.metadata.name = Some(name.into());
        p.metadata.uid = Some(name.into());
        p.spec = Some(PodSpec {
            node_name: (!node.is_empty()).then(|| node.to_string()),
            containers: vec![Container {
                name: "c".into(),
                ports: Some(ports),
                ..Default::default()
            }],
            ..Default::default()
        });
        p.status = Some(PodStatus {
            phase: Some(phase.into()),
            ..Default::default()
        });
        p
    }

    fn node(name: &str) -> Node {
        let mut n = Node::default();
        n.metadata.name = Some(name.into());
        n
    }

    #[test]
    fn conflicts() {
        // (case, port of the pod already on node "n", port of the incoming pod, conflict)
        let cases = [
            (
                "same hostPort and protocol",
                port(80, 8080, "", "TCP"),
                port(81, 8080, "", ""),
                true,
            ),
            (
                "same hostPort, TCP vs UDP",
                port(80, 8080, "", "TCP"),
                port(81, 8080, "", "UDP"),
                false,
            ),
            (
                "same hostPort on different host IPs",
                port(80, 8080, "10.0.0.1", ""),
                port(81, 8080, "10.0.0.2", ""),
                false,
            ),
            (
                "same hostPort on the same host IP",
                port(80, 8080, "10.0.0.1", ""),
                port(81, 8080, "10.0.0.1", ""),
                true,
            ),
            (
                "0.0.0.0 held, a specific IP wanted",
                port(80, 8080, "0.0.0.0", ""),
                port(81, 8080, "10.0.0.2", ""),
                true,
            ),
            (
                "a specific IP held, every IP wanted",
                port(80, 8080, "10.0.0.1", ""),
                port(81, 8080, "", ""),
                true,
            ),
            (
                "different hostPorts",
                port(80, 8080, "", ""),
                port(81, 8081, "", ""),
                false,
            ),
            (
                "containerPort only: the shared node network makes it a node port",
                port(8080, 0, "", ""),
                port(8080, 0, "", ""),
                true,
            ),
            (
                "containerPort only, TCP vs UDP",
                port(53, 0, "", "TCP"),
                port(53, 0, "", "UDP"),
                false,
            ),
            (
                "a containerPort held against a hostPort wanted",
                port(9000, 0, "", ""),
                port(80, 9000, "", ""),
                true,
            ),
        ];
        assert!(pods_share_node_network(), "the table assumes today's rule");
        for (case, held, wanted, conflict) in cases {
            let pods = [pod("old", "n", "Running", vec![held])];
            let incoming = pod("new", "", "Pending", vec![wanted]);
            let got = NodePorts::new(&incoming, &pods).check(&node("n"));
            assert_eq!(got.is_some(), conflict, "{case}");
        }
    }

    #[test]
    fn only_unfinished_pods_of_the_node_count() {
        let wanted = pod("new", "", "Pending", vec![port(8080, 0, "", "")]);
        for (case, phase, on, conflict) in [
            ("running on the node", "Running", "n", true),
            ("pending on the node", "Pending", "n", true),
            ("succeeded", "Succeeded", "n", false),
            ("failed", "Failed", "n", false),
            ("on another node", "Running", "other", false),
            ("not bound yet", "Pending", "", false),
        ] {
            let pods = [pod("old", on, phase, vec![port(8080, 0, "", "")])];
            let got = NodePorts::new(&wanted, &pods).check(&node("n"));
            assert_eq!(got.is_some(), conflict, "{case}");
        }
        // The pod does not collide with itself (it may be in the list, bound meanwhile).
        let itself = pod("new", "n", "Running", vec![port(8080, 0, "", "")]);
        let pods = [itself.clone()];
        assert_eq!(NodePorts::new(&itself, &pods).check(&node("n")), None);
    }

    #[test]
    fn init_containers_ports_count() {
        let mut old = pod("old", "n", "Running", vec![]);
        old.spec.as_mut().unwrap().init_containers = Some(vec![Container {
            name: "init".into(),
            ports: Some(vec![port(80, 9000, "", "")]),
            ..Default::default()
        }]);
        let wanted = pod("new", "", "Pending", vec![port(9000, 0, "", "")]);
        let pods = [old];
        assert_eq!(
            NodePorts::new(&wanted, &pods).check(&node("n")),
            Some(Reason::NodePorts)
        );
    }

    #[test]
    fn held_ports_default_and_deduplicate() {
        let spec = pod("p", "", "Pending", vec![port(8080, 8080, "", "")])
            .spec
            .unwrap();
        assert_eq!(
            held_ports(&spec),
            [HostPort {
                ip: ANY_IP.into(),
                protocol: "TCP".into(),
                port: 8080
            }]
        );
        let spec = pod("p", "", "Pending", vec![port(80, 8080, "10.0.0.1", "UDP")])
            .spec
            .unwrap();
        let numbers: Vec<i32> = held_ports(&spec).iter().map(|h| h.port).collect();
        assert_eq!(numbers, [8080, 80], "the hostPort and the containerPort");
    }
}
