use k8s_openapi::api::coordination::v1::{Lease, LeaseSpec};
use k8s_openapi::api::core::v1::{
    ConfigMap, Event, Node, NodeCondition, NodeStatus, Pod, PodSpec, Toleration,
};
use k8s_openapi::apimachinery::pkg::apis::meta::v1::MicroTime;
use kedge_guest::{ClusterExt, Controller, FakeCluster, ObjectKey, Outcome};

use super::*;

const T0: &str = "2025-01-01T00:00:00Z";

fn at(secs: i64) -> String {
    let t = parse_time(T0).unwrap().0 + k8s_openapi::jiff::SignedDuration::from_secs(secs);
    t.to_string()
}

fn node(name: &str) -> Node {
    let mut n = Node::default();
    n.metadata.name = Some(name.into());
    n.status = Some(NodeStatus {
        conditions: Some(vec![
            NodeCondition {
                type_: "Ready".into(),
                status: "True".into(),
                reason: Some("KubeletReady".into()),
                last_heartbeat_time: parse_time(T0),
                last_transition_time: parse_time(T0),
                ..Default::default()
            },
            NodeCondition {
                type_: "MemoryPressure".into(),
                status: "False".into(),
                ..Default::default()
            },
        ]),
        ..Default::default()
    });
    n
}

fn lease(name: &str, renewed: &str) -> Lease {
    let mut l = Lease::default();
    l.metadata.name = Some(name.into());
    l.metadata.namespace = Some("kube-node-lease".into());
    l.spec = Some(LeaseSpec {
        holder_identity: Some(name.into()),
        renew_time: parse_time(renewed).map(|t| MicroTime(t.0)),
        ..Default::default()
    });
    l
}

fn pod(name: &str, node: &str, tolerations: Vec<Toleration>) -> Pod {
    let mut p = Pod::default();
    p.metadata.name = Some(name.into());
    p.metadata.namespace = Some("default".into());
    p.spec = Some(PodSpec {
        node_name: Some(node.into()),
        tolerations: Some(tolerations),
        ..Default::default()
    });
    p
}

fn run(fake: &FakeCluster) -> Outcome {
    NodeLifecycle::reconcile(fake, &ObjectKey::of::<Node>("", "edge-1")).unwrap()
}

fn stored(fake: &FakeCluster) -> Node {
    fake.get::<Node>("", "edge-1").unwrap().unwrap()
}

fn unreachable_taints(n: &Node) -> Vec<String> {
    n.spec
        .as_ref()
        .and_then(|s| s.taints.clone())
        .unwrap_or_default()
        .into_iter()
        .filter(|t| t.key == UNREACHABLE_TAINT)
        .map(|t| t.effect)
        .collect()
}

fn pods(fake: &FakeCluster) -> Vec<String> {
    let mut v: Vec<String> = fake
        .list::<Pod>("default", "")
        .unwrap()
        .into_iter()
        .filter_map(|p| p.metadata.name)
        .collect();
    v.sort();
    v
}

#[test]
fn a_node_with_a_fresh_lease_is_left_alone() {
    let fake = FakeCluster::new();
    fake.seed(&node("edge-1"));
    fake.seed(&lease("edge-1", &at(100)));
    fake.set_now(&at(110));
    let out = run(&fake);
    assert!(fake.writes().is_empty(), "{:?}", fake.writes());
    // Looks again when the grace period would run out: 40 - 10 s, plus a second.
    assert_eq!(out, Outcome::requeue_after_ms(31_000));
}

#[test]
fn silence_past_the_grace_period_makes_the_node_unknown_and_tainted_then_evicts() {
    let fake = FakeCluster::new();
    fake.seed(&node("edge-1"));
    fake.seed(&lease("edge-1", T0));
    fake.seed(&pod("plain", "edge-1", vec![]));
    fake.seed(&pod(
        "patient",
        "edge-1",
        vec![Toleration {
            key: Some(UNREACHABLE_TAINT.into()),
            operator: Some("Exists".into()),
            effect: Some("NoExecute".into()),
            toleration_seconds: Some(600),
            ..Default::default()
        }],
    ));
    fake.seed(&pod(
        "forever",
        "edge-1",
        vec![Toleration {
            operator: Some("Exists".into()),
            ..Default::default()
        }],
    ));
    fake.seed(&pod("elsewhere", "edge-2", vec![]));

    fake.set_now(&at(41));
    run(&fake);
    let n = stored(&fake);
    let conds = n.status.unwrap().conditions.unwrap();
    assert!(conds.iter().all(|c| c.status == "Unknown"), "{conds:?}");
    assert_eq!(conds[0].reason.as_deref(), Some("NodeStatusUnknown"));
    assert_eq!(
        unreachable_taints(&stored(&fake)),
        ["NoSchedule", "NoExecute"]
    );
    assert_eq!(pods(&fake), ["elsewhere", "forever", "patient", "plain"]);
    let events = fake.list::<Event>("default", "").unwrap();
    assert!(
        events
            .iter()
            .any(|e| e.reason.as_deref() == Some("NodeNotReady"))
    );

    // The default 300 s pass: the pod without a toleration goes.
    fake.set_now(&at(41 + 300));
    run(&fake);
    assert_eq!(pods(&fake), ["elsewhere", "forever", "patient"]);
    // Its own 600 s pass: the patient one goes too; the one tolerating forever stays.
    fake.set_now(&at(41 + 600));
    run(&fake);
    assert_eq!(pods(&fake), ["elsewhere", "forever"]);
}

#[test]
fn the_heartbeat_returning_lifts_the_taints() {
    let fake = FakeCluster::new();
    fake.seed(&node("edge-1"));
    fake.seed(&lease("edge-1", T0));
    fake.set_now(&at(60));
    run(&fake);
    assert_eq!(unreachable_taints(&stored(&fake)).len(), 2);
    // A second pass changes nothing more.
    fake.clear_writes();
    run(&fake);
    assert!(
        fake.writes().iter().all(|w| w.kind != "Node"),
        "{:?}",
        fake.writes()
    );
    fake.seed(&lease("edge-1", &at(65)));
    fake.set_now(&at(66));
    run(&fake);
    assert!(unreachable_taints(&stored(&fake)).is_empty());
}

#[test]
fn timeouts_come_from_the_config_map() {
    let fake = FakeCluster::new();
    let mut cm = ConfigMap::default();
    cm.metadata.name = Some(CONFIG_NAME.into());
    cm.metadata.namespace = Some(CONFIG_NAMESPACE.into());
    cm.data = Some(
        [
            ("gracePeriodSeconds".to_string(), "5".to_string()),
            ("evictionSeconds".to_string(), "3".to_string()),
        ]
        .into(),
    );
    fake.seed(&cm);
    fake.seed(&node("edge-1"));
    fake.seed(&lease("edge-1", T0));
    fake.seed(&pod("plain", "edge-1", vec![]));
    fake.set_now(&at(6));
    run(&fake);
    assert_eq!(unreachable_taints(&stored(&fake)).len(), 2);
    assert_eq!(pods(&fake), ["plain"]);
    fake.set_now(&at(10));
    run(&fake);
    assert!(pods(&fake).is_empty());
}

#[test]
fn toleration_matching() {
    let p = |t: Vec<Toleration>| pod("p", "n", t);
    assert_eq!(tolerated_ms(&p(vec![]), 300_000), Some(300_000));
    let other_key = Toleration {
        key: Some("example.com/other".into()),
        operator: Some("Exists".into()),
        ..Default::default()
    };
    assert_eq!(tolerated_ms(&p(vec![other_key]), 7), Some(7));
    let no_schedule_only = Toleration {
        key: Some(UNREACHABLE_TAINT.into()),
        operator: Some("Exists".into()),
        effect: Some("NoSchedule".into()),
        ..Default::default()
    };
    assert_eq!(tolerated_ms(&p(vec![no_schedule_only]), 7), Some(7));
    let forever = Toleration {
        key: Some(UNREACHABLE_TAINT.into()),
        operator: Some("Exists".into()),
        ..Default::default()
    };
    assert_eq!(tolerated_ms(&p(vec![forever]), 7), None);
}
