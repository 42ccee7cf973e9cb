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

fn annotated(mut n: Node, value: &str) -> Node {
    n.metadata.annotations = Some([(AUTONOMY_ANNOTATION.to_string(), value.to_string())].into());
    n
}

fn config(data: &[(&str, &str)]) -> ConfigMap {
    let mut cm = ConfigMap::default();
    cm.metadata.name = Some(CONFIG_NAME.into());
    cm.metadata.namespace = Some(CONFIG_NAMESPACE.into());
    cm.data = Some(
        data.iter()
            .map(|(k, v)| (k.to_string(), v.to_string()))
            .collect(),
    );
    cm
}

fn events(fake: &FakeCluster, ns: &str, reason: &str) -> Vec<Event> {
    fake.list::<Event>(ns, "")
        .unwrap()
        .into_iter()
        .filter(|e| e.reason.as_deref() == Some(reason))
        .collect()
}

fn patient(name: &str, seconds: i64) -> Pod {
    pod(
        name,
        "edge-1",
        vec![Toleration {
            key: Some(UNREACHABLE_TAINT.into()),
            operator: Some("Exists".into()),
            effect: Some("NoExecute".into()),
            toleration_seconds: Some(seconds),
            ..Default::default()
        }],
    )
}

/// The node went silent at T0 and is found unreachable (and tainted) at 41 s.
fn disconnected(fake: &FakeCluster, node: Node) {
    fake.seed(&node);
    fake.seed(&lease("edge-1", T0));
    fake.set_now(&at(41));
    run(fake);
    assert_eq!(unreachable_taints(&stored(fake)).len(), 2);
}

#[test]
fn autonomy_annotation_keeps_pods_past_their_tolerations_then_evicts() {
    let fake = FakeCluster::new();
    fake.seed(&pod("plain", "edge-1", vec![]));
    fake.seed(&patient("hour", 3600));
    disconnected(&fake, annotated(node("edge-1"), "10m"));
    let said = events(&fake, "default", "NodeAutonomy");
    assert_eq!(said.len(), 1);
    assert_eq!(
        said[0].message.as_deref(),
        Some("Node edge-1 is unreachable; its pods stay bound for 10m")
    );

    // Past the default 300 s: nothing is evicted, and the node still shows its state.
    fake.set_now(&at(41 + 300));
    run(&fake);
    fake.set_now(&at(41 + 599));
    run(&fake);
    assert_eq!(pods(&fake), ["hour", "plain"]);
    let n = stored(&fake);
    let conds = n.status.as_ref().unwrap().conditions.as_ref().unwrap();
    assert!(conds.iter().all(|c| c.status == "Unknown"), "{conds:?}");
    assert_eq!(unreachable_taints(&n), ["NoSchedule", "NoExecute"]);

    // Ten minutes after the taint: the usual eviction; a longer toleration still holds.
    fake.set_now(&at(41 + 600));
    run(&fake);
    assert_eq!(pods(&fake), ["hour"]);
    fake.set_now(&at(41 + 3600));
    run(&fake);
    assert!(pods(&fake).is_empty());
}

#[test]
fn autonomy_zero_never_evicts() {
    let fake = FakeCluster::new();
    fake.seed(&pod("plain", "edge-1", vec![]));
    disconnected(&fake, annotated(node("edge-1"), "0"));
    assert_eq!(
        events(&fake, "default", "NodeAutonomy")[0]
            .message
            .as_deref(),
        Some("Node edge-1 is unreachable; its pods stay bound until it is back")
    );
    for secs in [300, 3600, 30 * 24 * 3600] {
        fake.set_now(&at(41 + secs));
        run(&fake);
        assert_eq!(pods(&fake), ["plain"], "after {secs} s");
    }
    assert_eq!(fake.count(kedge_guest::Verb::Delete, "Pod"), 0);
}

#[test]
fn malformed_autonomy_is_reported_once_and_ignored() {
    let fake = FakeCluster::new();
    fake.seed(&pod("plain", "edge-1", vec![]));
    disconnected(&fake, annotated(node("edge-1"), "soon"));
    fake.set_now(&at(100));
    run(&fake);
    let warned = events(&fake, "default", INVALID_AUTONOMY);
    assert_eq!(warned.len(), 1, "once, not every reconcile: {warned:?}");
    assert_eq!(warned[0].type_.as_deref(), Some("Warning"));
    assert_eq!(warned[0].involved_object.kind.as_deref(), Some("Node"));
    assert_eq!(
        warned[0].message.as_deref(),
        Some(
            "annotation node.kedge.io/autonomy-duration: \"soon\" is not a duration such as 90s, 10m or 2h30m, nor 0 (never evict); ignored"
        )
    );
    assert!(events(&fake, "default", "NodeAutonomy").is_empty());
    // The default behaviour: gone after 300 s.
    fake.set_now(&at(41 + 300));
    run(&fake);
    assert!(pods(&fake).is_empty());
}

#[test]
fn malformed_annotation_falls_back_to_the_server_default() {
    let fake = FakeCluster::new();
    fake.seed(&config(&[(AUTONOMY_CONFIG_KEY, "10m")]));
    fake.seed(&pod("plain", "edge-1", vec![]));
    disconnected(&fake, annotated(node("edge-1"), "-5m"));
    assert_eq!(events(&fake, "default", INVALID_AUTONOMY).len(), 1);
    fake.set_now(&at(41 + 300));
    run(&fake);
    assert_eq!(pods(&fake), ["plain"]);
    fake.set_now(&at(41 + 600));
    run(&fake);
    assert!(pods(&fake).is_empty());
}

#[test]
fn the_server_default_applies_to_nodes_without_the_annotation() {
    let fake = FakeCluster::new();
    fake.seed(&config(&[(AUTONOMY_CONFIG_KEY, "10m")]));
    fake.seed(&pod("plain", "edge-1", vec![]));
    disconnected(&fake, node("edge-1"));
    fake.set_now(&at(41 + 300));
    run(&fake);
    assert_eq!(pods(&fake), ["plain"]);
    fake.set_now(&at(41 + 600));
    run(&fake);
    assert!(pods(&fake).is_empty());

    // A node's own annotation wins, here a short one that gives the usual 300 s back.
    let fake = FakeCluster::new();
    fake.seed(&config(&[(AUTONOMY_CONFIG_KEY, "0")]));
    fake.seed(&pod("plain", "edge-1", vec![]));
    disconnected(&fake, annotated(node("edge-1"), "1s"));
    fake.set_now(&at(41 + 300));
    run(&fake);
    assert!(pods(&fake).is_empty());
}

#[test]
fn a_malformed_server_default_is_reported_on_the_config_map() {
    let fake = FakeCluster::new();
    fake.seed(&config(&[(AUTONOMY_CONFIG_KEY, "forever")]));
    fake.seed(&pod("plain", "edge-1", vec![]));
    disconnected(&fake, node("edge-1"));
    fake.set_now(&at(100));
    run(&fake);
    let warned = events(&fake, CONFIG_NAMESPACE, INVALID_AUTONOMY);
    assert_eq!(warned.len(), 1, "{warned:?}");
    assert_eq!(warned[0].involved_object.kind.as_deref(), Some("ConfigMap"));
    fake.set_now(&at(41 + 300));
    run(&fake);
    assert!(pods(&fake).is_empty(), "no autonomy by default");
}

#[test]
fn removing_the_annotation_while_away_restores_eviction() {
    let fake = FakeCluster::new();
    fake.seed(&pod("plain", "edge-1", vec![]));
    fake.seed(&patient("patient", 600));
    disconnected(&fake, annotated(node("edge-1"), "0"));
    fake.set_now(&at(41 + 400));
    run(&fake);
    assert_eq!(pods(&fake), ["patient", "plain"]);

    let mut n = stored(&fake);
    n.metadata.annotations = None;
    fake.seed(&n);
    run(&fake);
    assert_eq!(pods(&fake), ["patient"], "past its 300 s: evicted at once");
    fake.set_now(&at(41 + 600));
    run(&fake);
    assert!(pods(&fake).is_empty());
}

#[test]
fn autonomy_values() {
    for (value, want) in [
        ("90s", Ok(Autonomy::For(90_000))),
        ("10m", Ok(Autonomy::For(600_000))),
        ("2h30m", Ok(Autonomy::For(9_000_000))),
        ("24h", Ok(Autonomy::For(86_400_000))),
        ("1.5h", Ok(Autonomy::For(5_400_000))),
        ("500ms", Ok(Autonomy::For(500))),
        (" 10m ", Ok(Autonomy::For(600_000))),
        ("0", Ok(Autonomy::Forever)),
        ("0s", Ok(Autonomy::Forever)),
    ] {
        assert_eq!(parse_autonomy(value), want, "{value:?}");
    }
    for bad in ["", "10", "-5m", "soon", "10 parsecs", "m"] {
        assert!(parse_autonomy(bad).is_err(), "{bad:?}");
    }
}

#[test]
fn autonomy_only_postpones_evictions() {
    let ten_min = Some(Autonomy::For(600_000));
    for (tolerated, autonomy, want) in [
        (Some(300_000), None, Some(300_000)),
        (Some(300_000), ten_min, Some(600_000)),
        (Some(3_600_000), ten_min, Some(3_600_000)),
        (None, ten_min, None),
        (Some(300_000), Some(Autonomy::Forever), None),
    ] {
        assert_eq!(
            eviction_delay_ms(tolerated, autonomy),
            want,
            "{tolerated:?} {autonomy:?}"
        );
    }
}

#[test]
fn a_cordoned_node_carries_the_unschedulable_taint_while_cordoned() {
    let fake = FakeCluster::new();
    let mut n = node("edge-1");
    n.spec.get_or_insert_default().unschedulable = Some(true);
    fake.seed(&n);
    fake.seed(&lease("edge-1", &at(100)));
    fake.set_now(&at(110));
    run(&fake);
    let taints = |n: &Node| -> Vec<(String, String)> {
        n.spec
            .as_ref()
            .and_then(|s| s.taints.clone())
            .unwrap_or_default()
            .into_iter()
            .map(|t| (t.key, t.effect))
            .collect()
    };
    assert_eq!(
        taints(&stored(&fake)),
        [(UNSCHEDULABLE_TAINT.to_string(), "NoSchedule".to_string())]
    );
    run(&fake);
    assert_eq!(taints(&stored(&fake)).len(), 1, "added once");
    let mut n = stored(&fake);
    n.spec.get_or_insert_default().unschedulable = None;
    fake.seed(&n);
    run(&fake);
    assert!(taints(&stored(&fake)).is_empty(), "uncordoned");
}

#[test]
fn a_silent_node_s_pods_are_marked_not_ready_and_keep_running() {
    use k8s_openapi::api::core::v1::{PodCondition, PodStatus};
    let ready = |name: &str, node: &str| {
        let mut p = pod(name, node, vec![]);
        p.status = Some(PodStatus {
            phase: Some("Running".into()),
            conditions: Some(vec![
                PodCondition {
                    type_: "Ready".into(),
                    status: "True".into(),
                    last_transition_time: parse_time(T0),
                    ..Default::default()
                },
                PodCondition {
                    type_: "ContainersReady".into(),
                    status: "True".into(),
                    ..Default::default()
                },
            ]),
            ..Default::default()
        });
        p
    };
    let fake = FakeCluster::new();
    fake.seed(&ready("here", "edge-1"));
    fake.seed(&ready("elsewhere", "edge-2"));
    disconnected(&fake, node("edge-1"));
    let status = |name: &str| {
        fake.get::<Pod>("default", name)
            .unwrap()
            .unwrap()
            .status
            .unwrap()
    };
    let here = status("here");
    let conds = here.conditions.as_ref().unwrap();
    assert_eq!(conds[0].type_, "Ready");
    assert_eq!(conds[0].status, "False");
    assert_eq!(conds[0].last_transition_time, parse_time(&at(41)));
    // Only Ready, as Kubernetes does; the pod is still running.
    assert_eq!(conds[1].status, "True");
    assert_eq!(here.phase.as_deref(), Some("Running"));
    assert_eq!(
        status("elsewhere").conditions.unwrap()[0].status,
        "True",
        "another node's pod is left alone"
    );
    let on_pods: Vec<_> = events(&fake, "default", "NodeNotReady")
        .into_iter()
        .filter(|e| e.involved_object.kind.as_deref() == Some("Pod"))
        .collect();
    assert_eq!(on_pods.len(), 1);
    assert_eq!(on_pods[0].type_.as_deref(), Some("Warning"));
    // Later passes change nothing more.
    fake.set_now(&at(60));
    run(&fake);
    assert_eq!(fake.count(kedge_guest::Verb::UpdateStatus, "Pod"), 1);
    assert_eq!(pods(&fake), ["elsewhere", "here"]);
    // The agent is back and says Ready before its heartbeat reaches this controller: news
    // from the node, not taken back (no flapping).
    let mut back = fake.get::<Pod>("default", "here").unwrap().unwrap();
    let conds = back.status.as_mut().unwrap().conditions.as_mut().unwrap();
    conds[0].status = "True".into();
    conds[0].last_transition_time = parse_time(&at(65));
    fake.update_status("default", &back).unwrap();
    fake.set_now(&at(66));
    run(&fake);
    assert_eq!(status("here").conditions.unwrap()[0].status, "True");
}
