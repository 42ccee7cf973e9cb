//! NodePorts: a pod does not fit a node where a pod already holds one of the ports it
//! needs — same protocol and number on overlapping host IPs, where `0.0.0.0` (or no
//! `hostIP`) overlaps every address — as kube-scheduler's NodePorts filter decides.
//!
//! The ports a pod holds on its node are the `hostPort`s of its containers and init
//! containers (what kube-scheduler counts) and, on a node whose pods share its network
//! ([`pods_share_node_network`]: its agent runs without a pod network), every
//! `containerPort` too: there the container's process listens on the node itself, so two
//! pods declaring `containerPort: 8080` cannot run side by side. A
//! `containerPort` takes the `hostIP` and protocol of its entry, as it does for a
//! `hostNetwork` pod in Kubernetes (whose API copies `containerPort` into `hostPort`).
//!
//! Counted: pods bound to the node that have not finished (`Succeeded`/`Failed`),
//! terminating ones included — their processes hold the ports until the agent stops them,
//! and kube-scheduler counts them too.

use std::collections::HashMap;

use k8s_openapi::api::core::v1::{Node, Pod, PodSpec};

use crate::Reason;

/// The label an agent puts on its Node: `cni` when its pods get their own network, `host`
/// when they share the node's.
pub const POD_NETWORK_LABEL: &str = "kedge.io/pod-network";

/// Whether pods on `node` share its network namespace (pod IP = node IP), so every port a
/// container declares is a port on the node. Only a node that says it has a pod network is
/// spared (an agent from before the pod network says nothing); there only `hostNetwork`
/// pods' `containerPort`s (and everyone's `hostPort`s) hold node ports.
pub(crate) fn pods_share_node_network(node: &Node) -> bool {
    node.metadata
        .labels
        .as_ref()
        .and_then(|l| l.get(POD_NETWORK_LABEL))
        .is_none_or(|v| v != "cni")
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
pub(crate) fn held_ports(spec: &PodSpec, shared_network: bool) -> Vec<HostPort> {
    let container_ports = shared_network || spec.host_network == Some(true);
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

/// Whether a pod maps a hostPort to a different containerPort or binds it to one hostIP
/// (not for `hostNetwork` pods, whose ports are the node's own).
fn needs_port_mapping(spec: &PodSpec) -> bool {
    spec.host_network != Some(true)
        && spec
            .init_containers
            .iter()
            .flatten()
            .chain(&spec.containers)
            .flat_map(|c| c.ports.iter().flatten())
            .any(|p| {
                p.host_port.is_some_and(|h| h > 0 && h != p.container_port)
                    || p.host_ip.as_deref().is_some_and(|ip| !ip.is_empty())
            })
}

/// The incoming pod and the pods on each node (their ports depend on the node's network).
pub(crate) struct NodePorts<'a> {
    pod: &'a Pod,
    spec: Option<&'a PodSpec>,
    held: Option<&'a Holding<'a>>,
}

/// The pods that hold ports on each node: bound and not finished (terminating ones
/// included).
pub(crate) type Holding<'a> = HashMap<&'a str, Vec<&'a Pod>>;

/// Whether a pod bound to a node holds its ports there.
pub(crate) fn holds_ports(pod: &Pod) -> bool {
    let phase = pod.status.as_ref().and_then(|s| s.phase.as_deref());
    !matches!(phase, Some("Succeeded" | "Failed"))
}

impl<'a> NodePorts<'a> {
    /// `holding`: the unfinished pods bound to each node ([`Holding`]).
    pub(crate) fn new(pod: &'a Pod, holding: &'a Holding<'a>) -> Self {
        let spec = pod.spec.as_ref();
        // A pod that declares no port fits whatever the nodes hold.
        let any = spec.is_some_and(|s| !held_ports(s, true).is_empty());
        NodePorts {
            pod,
            spec,
            held: any.then_some(holding),
        }
    }

    /// `Some(reason)` when a port the pod needs is taken on `node`.
    pub(crate) fn check(&self, node: &Node) -> Option<Reason> {
        let shared = pods_share_node_network(node);
        // A port mapping (hostPort to another containerPort, or on one hostIP) is portmap's
        // work in the pod's network: a node whose pods share its network cannot do it.
        if shared && self.spec.is_some_and(needs_port_mapping) {
            return Some(Reason::PodNetwork);
        }
        let name = node.metadata.name.as_deref().unwrap_or("");
        let held = self.held?.get(name)?;
        let wanted = held_ports(self.spec?, shared);
        // The pod itself may be in the snapshot, bound meanwhile: it does not collide.
        let held: Vec<HostPort> = held
            .iter()
            .filter(|p| p.metadata.uid != self.pod.metadata.uid)
            .filter_map(|p| p.spec.as_ref())
            .flat_map(|s| held_ports(s, shared))
            .collect();
        wanted
            .iter()
            .any(|w| held.iter().any(|h| h.overlaps(w)))
            .then_some(Reason::NodePorts)
    }
}

#[cfg(test)]
mod tests {
    use k8s_openapi::api::core::v1::{Container, ContainerPort, PodStatus};

    use super::*;

    /// What the scheduler's snapshot holds for these pods.
    fn holding(pods: &[Pod]) -> Holding<'_> {
        let mut h = Holding::new();
        for p in pods {
            let node = p.spec.as_ref().and_then(|s| s.node_name.as_deref());
            if let Some(node) = node.filter(|n| !n.is_empty())
                && holds_ports(p)
            {
                h.entry(node).or_default().push(p);
            }
        }
        h
    }

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
                port(9000, 9000, "", ""),
                true,
            ),
        ];
        assert!(
            pods_share_node_network(&node("n")),
            "plain cases run on a host-network node"
        );
        let mut cni = node("n");
        cni.metadata.labels = Some([(POD_NETWORK_LABEL.to_string(), "cni".to_string())].into());
        for (case, held, wanted, conflict) in cases {
            let pods = [pod("old", "n", "Running", vec![held])];
            let incoming = pod("new", "", "Pending", vec![wanted]);
            // A port mapped to another number or one address needs a pod network: those cases
            // are about hostPorts, which collide the same way there.
            let on = if incoming.spec.as_ref().is_some_and(needs_port_mapping) {
                &cni
            } else {
                &node("n")
            };
            let got = NodePorts::new(&incoming, &holding(&pods)).check(on);
            assert_eq!(got.is_some(), conflict, "{case}");
        }
    }

    /// On a node with a pod network each pod has its own address: two pods declaring the same
    /// containerPort fit side by side; hostPorts still collide.
    #[test]
    fn a_pod_network_frees_container_ports_but_not_host_ports() {
        let mut n = node("n");
        n.metadata.labels = Some([(POD_NETWORK_LABEL.to_string(), "cni".to_string())].into());
        assert!(!pods_share_node_network(&n));
        let pods = [pod("old", "n", "Running", vec![port(80, 0, "", "")])];
        let same = pod("new", "", "Pending", vec![port(80, 0, "", "")]);
        assert!(NodePorts::new(&same, &holding(&pods)).check(&n).is_none());
        assert!(
            NodePorts::new(&same, &holding(&pods))
                .check(&node("n"))
                .is_some()
        );
        let host = [pod("old", "n", "Running", vec![port(80, 8080, "", "")])];
        let wants_host = pod("new", "", "Pending", vec![port(81, 8080, "", "")]);
        assert!(
            NodePorts::new(&wants_host, &holding(&host))
                .check(&n)
                .is_some()
        );
        // A mapping to another port fits only where portmap can make it.
        let mapped = pod("new", "", "Pending", vec![port(80, 9090, "", "")]);
        assert_eq!(NodePorts::new(&mapped, &holding(&[])).check(&n), None);
        assert_eq!(
            NodePorts::new(&mapped, &holding(&[])).check(&node("n")),
            Some(Reason::PodNetwork)
        );
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
            let got = NodePorts::new(&wanted, &holding(&pods)).check(&node("n"));
            assert_eq!(got.is_some(), conflict, "{case}");
        }
        // The pod does not collide with itself (it may be in the list, bound meanwhile).
        let itself = pod("new", "n", "Running", vec![port(8080, 0, "", "")]);
        let pods = [itself.clone()];
        assert_eq!(
            NodePorts::new(&itself, &holding(&pods)).check(&node("n")),
            None
        );
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
            NodePorts::new(&wanted, &holding(&pods)).check(&node("n")),
            Some(Reason::NodePorts)
        );
    }

    #[test]
    fn held_ports_default_and_deduplicate() {
        let spec = pod("p", "", "Pending", vec![port(8080, 8080, "", "")])
            .spec
            .unwrap();
        assert_eq!(
            held_ports(&spec, true),
            [HostPort {
                ip: ANY_IP.into(),
                protocol: "TCP".into(),
                port: 8080
            }]
        );
        let spec = pod("p", "", "Pending", vec![port(80, 8080, "10.0.0.1", "UDP")])
            .spec
            .unwrap();
        let numbers: Vec<i32> = held_ports(&spec, true).iter().map(|h| h.port).collect();
        assert_eq!(numbers, [8080, 80], "the hostPort and the containerPort");
    }
}
