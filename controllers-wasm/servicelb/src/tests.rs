use k8s_openapi::api::core::v1::{
    NodeAddress, NodeCondition, NodeStatus, ServicePort, ServiceSpec,
};
use kedge_guest::{FakeCluster, Verb};

use super::*;

fn service(name: &str, ty: &str) -> Service {
    let mut s = Service::default();
    s.metadata.name = Some(name.into());
    s.metadata.namespace = Some("default".into());
    s.spec = Some(ServiceSpec {
        type_: Some(ty.into()),
        ip_families: Some(vec!["IPv4".into()]),
        ports: Some(vec![ServicePort {
            port: 80,
            node_port: Some(30080),
            ..Default::default()
        }]),
        ..Default::default()
    });
    // What the API starts every Service with.
    s.status = Some(ServiceStatus {
        load_balancer: Some(LoadBalancerStatus::default()),
        ..Default::default()
    });
    s
}

/// A node with `(type, address)` addresses and `labels`.
fn node(name: &str, ready: bool, addresses: &[(&str, &str)], labels: &[(&str, &str)]) -> Node {
    let mut n = Node::default();
    n.metadata.name = Some(name.into());
    n.metadata.labels = Some(
        labels
            .iter()
            .map(|(k, v)| (k.to_string(), v.to_string()))
            .collect(),
    );
    n.status = Some(NodeStatus {
        addresses: Some(
            addresses
                .iter()
                .map(|(t, a)| NodeAddress {
                    type_: t.to_string(),
                    address: a.to_string(),
                })
                .collect(),
        ),
        conditions: Some(vec![NodeCondition {
            type_: "Ready".into(),
            status: if ready { "True" } else { "False" }.into(),
            ..Default::default()
        }]),
        ..Default::default()
    });
    n
}

fn internal(name: &str, ip: &str) -> Node {
    node(name, true, &[("InternalIP", ip), ("Hostname", name)], &[])
}

fn run(fake: &FakeCluster, name: &str) -> std::result::Result<Outcome, String> {
    kedge_guest::run::<ServiceLb>(fake, &ObjectKey::of::<Service>("default", name))
}

/// The stored ingress as `(ip, ipMode)` pairs.
fn ingress(fake: &FakeCluster, name: &str) -> Vec<(String, String)> {
    let svc = fake.get::<Service>("default", name).unwrap().unwrap();
    current_ingress(&svc)
        .iter()
        .map(|i| {
            (
                i.ip.clone().unwrap_or_default(),
                i.ip_mode.clone().unwrap_or_default(),
            )
        })
        .collect()
}

fn ips(fake: &FakeCluster, name: &str) -> Vec<String> {
    ingress(fake, name).into_iter().map(|(ip, _)| ip).collect()
}

#[test]
fn registration_reconciles_services_and_hears_of_nodes() {
    let r = ServiceLb::registration();
    assert_eq!(r.name, "servicelb");
    assert_eq!(r.for_kind, KindRef::of::<Service>());
    assert_eq!(r.owns, vec![KindRef::of::<Node>()]);
    assert!(r.writes.contains(&KindRef::of::<Service>()));
    assert!(r.writes.contains(&KindRef::of::<Event>()));
}

/// Every ready serving node's address, ExternalIP before InternalIP, sorted numerically and
/// each once, all `ipMode: VIP`; an Event says so.
#[test]
fn load_balancer_service_gets_the_node_addresses() {
    let fake = FakeCluster::new();
    fake.seed(&internal("edge-b", "10.0.0.10"));
    fake.seed(&internal("edge-a", "10.0.0.9"));
    fake.seed(&node(
        "edge-c",
        true,
        &[("InternalIP", "10.0.0.11"), ("ExternalIP", "203.0.113.7")],
        &[],
    ));
    // Two nodes behind one address: listed once.
    fake.seed(&internal("edge-d", "10.0.0.9"));
    // Not an IP of the Service's family, and not an IP at all: skipped.
    fake.seed(&node(
        "edge-e",
        true,
        &[("InternalIP", "fd00::5"), ("ExternalIP", "gw.example.org")],
        &[],
    ));
    fake.seed(&service("web", "LoadBalancer"));
    assert_eq!(run(&fake, "web"), Ok(Outcome::done()));
    assert_eq!(
        ingress(&fake, "web"),
        [
            ("10.0.0.9".to_string(), "VIP".to_string()),
            ("10.0.0.10".into(), "VIP".into()),
            ("203.0.113.7".into(), "VIP".into()),
        ]
    );
    assert_eq!(fake.count(Verb::UpdateStatus, "Service"), 1);
    let events = fake.list::<Event>("default", "").unwrap();
    assert_eq!(events.len(), 1, "{events:?}");
    assert_eq!(events[0].reason.as_deref(), Some("UpdatedIngressIP"));
    assert!(
        events[0]
            .message
            .as_deref()
            .unwrap()
            .ends_with("10.0.0.9, 10.0.0.10, 203.0.113.7"),
        "{events:?}"
    );
}

/// A node that is not Ready (or never reported) serves nothing; when it becomes Ready its
/// address is added.
#[test]
fn nodes_that_are_not_ready_are_left_out() {
    let fake = FakeCluster::new();
    fake.seed(&internal("edge-1", "10.0.0.1"));
    fake.seed(&node("edge-2", false, &[("InternalIP", "10.0.0.2")], &[]));
    let mut silent = internal("edge-3", "10.0.0.3");
    silent.status.as_mut().unwrap().conditions = None;
    fake.seed(&silent);
    fake.seed(&service("web", "LoadBalancer"));
    run(&fake, "web").unwrap();
    assert_eq!(ips(&fake, "web"), ["10.0.0.1"]);

    fake.seed(&internal("edge-2", "10.0.0.2"));
    run(&fake, "web").unwrap();
    assert_eq!(ips(&fake, "web"), ["10.0.0.1", "10.0.0.2"]);
}

/// `kedge.io/servicelb: "false"` (an agent with `--disable-servicelb`) does not serve; any
/// other value does.
#[test]
fn nodes_with_servicelb_off_are_left_out() {
    let fake = FakeCluster::new();
    fake.seed(&node(
        "edge-1",
        true,
        &[("InternalIP", "10.0.0.1")],
        &[(SERVICE_LB_LABEL, "true")],
    ));
    fake.seed(&node(
        "edge-2",
        true,
        &[("InternalIP", "10.0.0.2")],
        &[(SERVICE_LB_LABEL, "false")],
    ));
    fake.seed(&service("web", "LoadBalancer"));
    run(&fake, "web").unwrap();
    assert_eq!(ips(&fake, "web"), ["10.0.0.1"]);

    // The only serving node turns it off: no ingress left.
    fake.seed(&node(
        "edge-1",
        true,
        &[("InternalIP", "10.0.0.1")],
        &[(SERVICE_LB_LABEL, "false")],
    ));
    run(&fake, "web").unwrap();
    assert!(ips(&fake, "web").is_empty());
    let svc = fake.get::<Service>("default", "web").unwrap().unwrap();
    assert_eq!(
        svc.status.unwrap().load_balancer,
        Some(LoadBalancerStatus::default())
    );
}

/// As in K3s: once a node carries `svccontroller.k3s.cattle.io/enablelb`, only the nodes
/// where it is `"true"` serve (and `kedge.io/servicelb: "false"` still wins).
#[test]
fn k3s_enablelb_restricts_to_labelled_nodes() {
    let fake = FakeCluster::new();
    fake.seed(&internal("edge-1", "10.0.0.1"));
    fake.seed(&node(
        "edge-2",
        true,
        &[("InternalIP", "10.0.0.2")],
        &[(K3S_ENABLE_LB_LABEL, "true")],
    ));
    fake.seed(&node(
        "edge-3",
        true,
        &[("InternalIP", "10.0.0.3")],
        &[(K3S_ENABLE_LB_LABEL, "false")],
    ));
    fake.seed(&node(
        "edge-4",
        true,
        &[("InternalIP", "10.0.0.4")],
        &[(K3S_ENABLE_LB_LABEL, "true"), (SERVICE_LB_LABEL, "false")],
    ));
    fake.seed(&service("web", "LoadBalancer"));
    run(&fake, "web").unwrap();
    assert_eq!(ips(&fake, "web"), ["10.0.0.2"]);
}

/// A Service that stops being a LoadBalancer loses its ingress; one that never was one is not
/// written at all.
#[test]
fn non_load_balancer_services_are_cleared() {
    let fake = FakeCluster::new();
    fake.seed(&internal("edge-1", "10.0.0.1"));
    fake.seed(&service("web", "LoadBalancer"));
    run(&fake, "web").unwrap();
    assert_eq!(ips(&fake, "web"), ["10.0.0.1"]);

    let mut svc = fake.get::<Service>("default", "web").unwrap().unwrap();
    svc.spec.as_mut().unwrap().type_ = Some("NodePort".into());
    fake.seed(&svc);
    fake.clear_writes();
    run(&fake, "web").unwrap();
    assert!(ips(&fake, "web").is_empty());
    let svc = fake.get::<Service>("default", "web").unwrap().unwrap();
    assert_eq!(
        svc.status.unwrap().load_balancer,
        Some(LoadBalancerStatus::default())
    );
    assert_eq!(fake.count(Verb::UpdateStatus, "Service"), 1);
    // Clearing is no news worth an Event.
    assert_eq!(fake.count(Verb::Create, "Event"), 0);

    for (name, ty) in [("plain", "ClusterIP"), ("ports", "NodePort")] {
        fake.seed(&service(name, ty));
        let mut bare = service(&format!("{name}-bare"), ty);
        bare.status = None;
        fake.seed(&bare);
        fake.clear_writes();
        run(&fake, name).unwrap();
        run(&fake, &format!("{name}-bare")).unwrap();
        assert!(fake.writes().is_empty(), "{name}: {:?}", fake.writes());
    }
}

/// A LoadBalancer of another class is another controller's: its status is left as it is.
#[test]
fn services_of_another_load_balancer_class_are_left_alone() {
    let fake = FakeCluster::new();
    fake.seed(&internal("edge-1", "10.0.0.1"));
    let mut svc = service("metal", "LoadBalancer");
    svc.spec.as_mut().unwrap().load_balancer_class = Some("metallb.io/metallb".into());
    svc.status = Some(ServiceStatus {
        load_balancer: Some(LoadBalancerStatus {
            ingress: Some(vec![LoadBalancerIngress {
                ip: Some("192.0.2.50".into()),
                ..Default::default()
            }]),
        }),
        ..Default::default()
    });
    fake.seed(&svc);
    assert_eq!(run(&fake, "metal"), Ok(Outcome::done()));
    assert!(fake.writes().is_empty(), "{:?}", fake.writes());
    assert_eq!(
        ingress(&fake, "metal"),
        [("192.0.2.50".to_string(), String::new())]
    );
}

/// Converged: a second pass (say, after a node heartbeat) writes nothing, no status and no
/// Event; nor does a Service with no serving node, absent status or not.
#[test]
fn nothing_is_written_when_the_ingress_is_unchanged() {
    let fake = FakeCluster::new();
    fake.seed(&internal("edge-1", "10.0.0.1"));
    fake.seed(&service("web", "LoadBalancer"));
    run(&fake, "web").unwrap();
    fake.clear_writes();
    run(&fake, "web").unwrap();
    assert!(fake.writes().is_empty(), "{:?}", fake.writes());

    fake.seed(&node(
        "edge-1",
        true,
        &[("InternalIP", "10.0.0.1")],
        &[(SERVICE_LB_LABEL, "false")],
    ));
    let mut bare = service("bare", "LoadBalancer");
    bare.status = None;
    fake.seed(&bare);
    fake.clear_writes();
    run(&fake, "bare").unwrap();
    assert!(fake.writes().is_empty(), "{:?}", fake.writes());
}

/// `externalTrafficPolicy: Local` still lists every serving node, as K3s does.
#[test]
fn external_traffic_policy_local_lists_every_serving_node() {
    let fake = FakeCluster::new();
    fake.seed(&internal("edge-1", "10.0.0.1"));
    fake.seed(&internal("edge-2", "10.0.0.2"));
    let mut svc = service("web", "LoadBalancer");
    svc.spec.as_mut().unwrap().external_traffic_policy = Some("Local".into());
    fake.seed(&svc);
    run(&fake, "web").unwrap();
    assert_eq!(ips(&fake, "web"), ["10.0.0.1", "10.0.0.2"]);
}

/// A Service deleted before its key came up is nothing to do.
#[test]
fn a_missing_service_is_done() {
    let fake = FakeCluster::new();
    assert_eq!(run(&fake, "gone"), Ok(Outcome::done()));
    assert!(fake.writes().is_empty());
}
