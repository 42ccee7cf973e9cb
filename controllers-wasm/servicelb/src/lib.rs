//! ServiceLB as a kedge plugin: the `status.loadBalancer.ingress` of `type: LoadBalancer`
//! Services, as K3s' ServiceLB (klipper-lb) publishes it.
//!
//! There is no load balancer to program: every node agent with ServiceLB on listens on (or
//! DNATs) the LoadBalancer ports on its own addresses, so a Service is reachable on each such
//! node. This plugin only says where, so `kubectl get svc` shows an EXTERNAL-IP instead of
//! `<pending>` and clients can find it:
//!
//! - A Service of `type: LoadBalancer` without `spec.loadBalancerClass` gets one ingress entry
//!   `{ip, ipMode: VIP}` per address of every Ready node that serves ServiceLB, sorted by
//!   address, each once; no such node, no entries. A Service with a `loadBalancerClass`
//!   belongs to another controller and is left alone.
//! - A node serves unless its label [`SERVICE_LB_LABEL`] is `"false"` (what
//!   `kedge agent --disable-servicelb` sets). As in K3s, once any node carries
//!   [`K3S_ENABLE_LB_LABEL`], only the nodes where it is `"true"` serve (K3s selects its
//!   `svclb` pods' nodes that way: the label's presence anywhere turns the selection on).
//! - A node's address is its `ExternalIP`, else its `InternalIP` (all of them of the chosen
//!   type), of the Service's IP families (`spec.ipFamilies`, IPv4 when unset).
//! - `externalTrafficPolicy: Local` changes nothing here: K3s lists every serving node too
//!   (the proxy on a node without a local endpoint drops the traffic).
//! - A Service that is no longer a LoadBalancer has its ingress cleared (one that gained a
//!   `loadBalancerClass` is another controller's now and keeps what it has).
//!
//! The status is written only when the ingress changes, for a LoadBalancer with a Normal
//! `UpdatedIngressIP` Event (clearing a former one is silent). Nodes are "owned": they have no controller, so an event on any Node (joining,
//! leaving, readiness, labels, addresses) enqueues every Service; no periodic resync.

use std::collections::BTreeSet;
use std::net::IpAddr;

use k8s_openapi::api::core::v1::{
    Event, LoadBalancerIngress, LoadBalancerStatus, Node, Service, ServiceStatus,
};
use kedge_guest::meta::{find_condition, labels_of};
use kedge_guest::{
    Cluster, ClusterExt, Controller, KindRef, ObjectKey, Outcome, Registration, Result,
};

/// The node label that says whether the node's agent serves LoadBalancer Services; `"false"`
/// with `--disable-servicelb`, anything else (or no label) serves.
pub const SERVICE_LB_LABEL: &str = "kedge.io/servicelb";
/// K3s' opt-in node label: once any node has it, only nodes with it `"true"` serve.
pub const K3S_ENABLE_LB_LABEL: &str = "svccontroller.k3s.cattle.io/enablelb";
/// The `ipMode` of every entry: traffic to the address reaches the node's proxy as is.
pub const IP_MODE_VIP: &str = "VIP";

const COMPONENT: &str = "service-lb-controller";

pub struct ServiceLb;

impl Controller for ServiceLb {
    fn registration() -> Registration {
        Registration::new("servicelb", KindRef::of::<Service>())
            // Nodes have no controller, so each of their events enqueues every Service: how a
            // node joining, leaving or changing readiness, labels or addresses reaches them
            // (watches map within a namespace and cannot name a cluster-scoped kind).
            .owns([KindRef::of::<Node>()])
            .writes([KindRef::of::<Service>(), KindRef::of::<Event>()])
    }

    fn reconcile(cluster: &dyn Cluster, key: &ObjectKey) -> Result<Outcome> {
        reconcile(cluster, key)
    }
}

kedge_guest::export_controller!(ServiceLb);

/// Whether ServiceLB owns `svc`: a LoadBalancer without a class of another controller.
pub fn is_served(svc: &Service) -> bool {
    svc.spec.as_ref().is_some_and(|s| {
        s.type_.as_deref() == Some("LoadBalancer") && s.load_balancer_class.is_none()
    })
}

/// Whether a Service is a LoadBalancer of another controller (its `loadBalancerClass`).
fn other_class(svc: &Service) -> bool {
    svc.spec.as_ref().is_some_and(|s| {
        s.type_.as_deref() == Some("LoadBalancer") && s.load_balancer_class.is_some()
    })
}

fn is_node_ready(node: &Node) -> bool {
    node.status
        .as_ref()
        .and_then(|s| s.conditions.as_deref())
        .and_then(|c| find_condition(c, "Ready"))
        .is_some_and(|c| c.status == "True")
}

/// The nodes whose agents serve LoadBalancer Services and are Ready now.
pub fn serving_nodes(nodes: &[Node]) -> Vec<&Node> {
    let opt_in = nodes
        .iter()
        .any(|n| labels_of(&n.metadata).contains_key(K3S_ENABLE_LB_LABEL));
    nodes
        .iter()
        .filter(|n| {
            let labels = labels_of(&n.metadata);
            labels.get(SERVICE_LB_LABEL).map(String::as_str) != Some("false")
                && (!opt_in || labels.get(K3S_ENABLE_LB_LABEL).map(String::as_str) == Some("true"))
        })
        .filter(|n| is_node_ready(n))
        .collect()
}

/// Whether `ip` is of one of `families` (`IPv4`, `IPv6`).
fn of_family(ip: &IpAddr, families: &[String]) -> bool {
    let family = if ip.is_ipv4() { "IPv4" } else { "IPv6" };
    families.iter().any(|f| f == family)
}

/// A node's addresses for a Service of `families`: its ExternalIPs of those families, else
/// its InternalIPs of them.
fn node_ips(node: &Node, families: &[String]) -> Vec<IpAddr> {
    let addresses = node
        .status
        .as_ref()
        .and_then(|s| s.addresses.as_deref())
        .unwrap_or_default();
    let of_type = |ty: &str| -> Vec<IpAddr> {
        addresses
            .iter()
            .filter(|a| a.type_ == ty)
            .filter_map(|a| a.address.parse::<IpAddr>().ok())
            .filter(|ip| of_family(ip, families))
            .collect()
    };
    let external = of_type("ExternalIP");
    if external.is_empty() {
        of_type("InternalIP")
    } else {
        external
    }
}

/// The ingress ServiceLB publishes for `svc` given the cluster's `nodes`: sorted by address
/// (numerically), each address once.
pub fn ingress_for(svc: &Service, nodes: &[Node]) -> Vec<LoadBalancerIngress> {
    let families = svc
        .spec
        .as_ref()
        .and_then(|s| s.ip_families.clone())
        .filter(|f| !f.is_empty())
        .unwrap_or_else(|| vec!["IPv4".to_owned()]);
    let ips: BTreeSet<IpAddr> = serving_nodes(nodes)
        .into_iter()
        .flat_map(|n| node_ips(n, &families))
        .collect();
    ips.into_iter()
        .map(|ip| LoadBalancerIngress {
            ip: Some(ip.to_string()),
            ip_mode: Some(IP_MODE_VIP.to_owned()),
            ..Default::default()
        })
        .collect()
}

fn current_ingress(svc: &Service) -> &[LoadBalancerIngress] {
    svc.status
        .as_ref()
        .and_then(|s| s.load_balancer.as_ref())
        .and_then(|lb| lb.ingress.as_deref())
        .unwrap_or_default()
}

fn reconcile(cluster: &dyn Cluster, key: &ObjectKey) -> Result<Outcome> {
    let ns = key.namespace.as_str();
    let Some(svc) = cluster.get::<Service>(ns, &key.name)? else {
        return Ok(Outcome::done());
    };
    if other_class(&svc) {
        return Ok(Outcome::done());
    }
    let served = is_served(&svc);
    let want = if served {
        ingress_for(&svc, &cluster.list::<Node>("", "")?)
    } else {
        Vec::new()
    };
    // An absent ingress and an empty one are the same: no write between them.
    if current_ingress(&svc) == want.as_slice() {
        return Ok(Outcome::done());
    }
    let ips: Vec<&str> = want.iter().filter_map(|i| i.ip.as_deref()).collect();
    let status = ServiceStatus {
        load_balancer: Some(LoadBalancerStatus {
            ingress: (!want.is_empty()).then_some(want.clone()),
        }),
        ..svc.status.clone().unwrap_or_default()
    };
    cluster.update_status_if_changed(ns, &svc, status)?;
    if served {
        let listed = if ips.is_empty() {
            "none (no ready node serves LoadBalancer Services)".to_owned()
        } else {
            ips.join(", ")
        };
        let _ = cluster.record_event(
            &svc,
            "Normal",
            "UpdatedIngressIP",
            &format!("LoadBalancer Ingress IP addresses updated: {listed}"),
            COMPONENT,
        );
    }
    Ok(Outcome::done())
}

#[cfg(test)]
mod tests;
