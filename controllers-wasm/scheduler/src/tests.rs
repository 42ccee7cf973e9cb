use super::*;
use k8s_openapi::api::core::v1::{
    Container, NodeCondition, NodeSpec, NodeStatus, PodSpec, PodStatus, ResourceRequirements,
};
use k8s_openapi::apimachinery::pkg::api::resource::Quantity;
use kedge_guest::{FakeCluster, Verb};

fn node(name: &str, cpu: &str, memory: &str, labels: &[(&str, &str)]) -> Node {
    let mut n = Node::default();
    n.metadata.name = Some(name.into());
    n.metadata.labels = Some(
        labels
            .iter()
            .map(|(k, v)| (k.to_string(), v.to_string()))
            .collect(),
    );
    n.status = Some(NodeStatus {
        allocatable: Some(
            [
                ("cpu".to_string(), Quantity(cpu.into())),
                ("memory".to_string(), Quantity(memory.into())),
            ]
            .into(),
        ),
        conditions: Some(vec![NodeCondition {
            type_: "Ready".into(),
            status: "True".into(),
            ..Default::default()
        }]),
        ..Default::default()
    });
    n
}

fn pod(name: &str, cpu: &str, memory: &str) -> Pod {
    let mut p = Pod::default();
    p.metadata.name = Some(name.into());
    p.metadata.namespace = Some("default".into());
    p.spec = Some(PodSpec {
        containers: vec![Container {
            name: "c".into(),
            resources: Some(ResourceRequirements {
                requests: Some(
                    [
                        ("cpu".to_string(), Quantity(cpu.into())),
                        ("memory".to_string(), Quantity(memory.into())),
                    ]
                    .into(),
                ),
                ..Default::default()
            }),
            ..Default::default()
        }],
        ..Default::default()
    });
    p
}

fn bound(mut p: Pod, node: &str) -> Pod {
    p.spec.as_mut().unwrap().node_name = Some(node.into());
    p.status = Some(PodStatus {
        phase: Some("Running".into()),
        ..Default::default()
    });
    p
}

fn run(fake: &FakeCluster, name: &str) -> Outcome {
    Scheduler::reconcile(fake, &ObjectKey::of::<Pod>("default", name)).unwrap()
}

fn node_of(fake: &FakeCluster, name: &str) -> Option<String> {
    fake.get::<Pod>("default", name)
        .unwrap()
        .unwrap()
        .spec
        .unwrap()
        .node_name
}

#[test]
fn binds_to_node_with_fewest_pods() {
    let fake = FakeCluster::new();
    fake.seed(&node("a", "4", "8Gi", &[]));
    fake.seed(&node("b", "4", "8Gi", &[]));
    fake.seed(&bound(pod("x", "100m", "64Mi"), "a"));
    fake.seed(&pod("new", "100m", "64Mi"));
    assert_eq!(run(&fake, "new"), Outcome::done());
    assert_eq!(node_of(&fake, "new").as_deref(), Some("b"));
    assert_eq!(fake.count(Verb::Bind, "Pod"), 1);
    let events = fake
        .list::<k8s_openapi::api::core::v1::Event>("default", "")
        .unwrap();
    assert!(
        events
            .iter()
            .any(|e| e.reason.as_deref() == Some("Scheduled")
                && e.message
                    .as_deref()
                    .is_some_and(|m| m.ends_with("/new to b"))),
        "{events:?}"
    );
}

#[test]
fn replicas_spread_and_ties_break_on_load_then_name() {
    let fake = FakeCluster::new();
    fake.seed(&node("b", "4", "8Gi", &[]));
    fake.seed(&node("a", "4", "8Gi", &[]));
    fake.seed(&node("c", "2", "8Gi", &[]));
    for i in 0..3 {
        fake.seed(&pod(&format!("p{i}"), "500m", "64Mi"));
    }
    for i in 0..3 {
        run(&fake, &format!("p{i}"));
    }
    let mut nodes: Vec<_> = (0..3)
        .map(|i| node_of(&fake, &format!("p{i}")).unwrap())
        .collect();
    assert_eq!(nodes[0], "a", "equal pods and load: name decides");
    nodes.sort();
    assert_eq!(nodes, ["a", "b", "c"]);
}

#[test]
fn filters_selector_cordon_readiness_and_capacity() {
    let fake = FakeCluster::new();
    fake.seed(&node("small", "1", "1Gi", &[("zone", "x")]));
    fake.seed(&node("other-zone", "8", "8Gi", &[("zone", "y")]));
    let mut cordoned = node("cordoned", "8", "8Gi", &[("zone", "x")]);
    cordoned.spec = Some(NodeSpec {
        unschedulable: Some(true),
        ..Default::default()
    });
    fake.seed(&cordoned);
    let mut not_ready = node("not-ready", "8", "8Gi", &[("zone", "x")]);
    not_ready
        .status
        .as_mut()
        .unwrap()
        .conditions
        .as_mut()
        .unwrap()[0]
        .status = "False".into();
    fake.seed(&not_ready);
    let mut big = node("big", "8", "8Gi", &[("zone", "x")]);
    big.status
        .as_mut()
        .unwrap()
        .allocatable
        .as_mut()
        .unwrap()
        .insert("pods".into(), Quantity("1".into()));
    fake.seed(&big);
    fake.seed(&bound(pod("resident", "100m", "1Mi"), "big"));

    let mut p = pod("p", "2", "512Mi");
    p.spec.as_mut().unwrap().node_selector = Some([("zone".to_string(), "x".to_string())].into());
    fake.seed(&p);
    assert_eq!(run(&fake, "p"), Outcome::requeue_after_ms(5000));
    assert_eq!(node_of(&fake, "p"), None);
    let stored = fake.get::<Pod>("default", "p").unwrap().unwrap();
    let cond = stored
        .status
        .unwrap()
        .conditions
        .unwrap()
        .into_iter()
        .find(|c| c.type_ == "PodScheduled")
        .unwrap();
    assert_eq!(
        (cond.status.as_str(), cond.reason.as_deref()),
        ("False", Some("Unschedulable"))
    );
    assert_eq!(
        cond.message.as_deref(),
        Some(
            "0/5 nodes are available: 1 Insufficient cpu, 1 Too many pods, 1 node(s) didn't match Pod's node affinity/selector, 1 node(s) were not ready, 1 node(s) were unschedulable."
        )
    );

    // Level-triggered: an unchanged verdict writes nothing.
    fake.clear_writes();
    fake.set_now("2025-01-01T00:05:00Z");
    run(&fake, "p");
    assert!(fake.writes().is_empty());
}

#[test]
fn counts_only_active_pods_and_init_containers() {
    let fake = FakeCluster::new();
    fake.seed(&node("n", "1", "1Gi", &[]));
    let mut done = bound(pod("done", "900m", "1Mi"), "n");
    done.status.as_mut().unwrap().phase = Some("Succeeded".into());
    fake.seed(&done);
    fake.seed(&pod("fits", "500m", "1Mi"));
    run(&fake, "fits");
    assert_eq!(
        node_of(&fake, "fits").as_deref(),
        Some("n"),
        "finished pods free their requests"
    );

    let mut init_heavy = pod("init-heavy", "100m", "1Mi");
    init_heavy.spec.as_mut().unwrap().init_containers = Some(vec![
        pod("_", "600m", "1Mi").spec.unwrap().containers[0].clone(),
    ]);
    fake.seed(&init_heavy);
    assert_eq!(run(&fake, "init-heavy"), Outcome::requeue_after_ms(5000));
}

#[test]
fn leaves_other_pods_alone() {
    let fake = FakeCluster::new();
    fake.seed(&node("n", "4", "4Gi", &[]));
    fake.seed(&bound(pod("already", "1m", "1"), "n"));
    let mut custom = pod("custom", "1m", "1");
    custom.spec.as_mut().unwrap().scheduler_name = Some("my-scheduler".into());
    fake.seed(&custom);
    let mut deleting = pod("deleting", "1m", "1");
    deleting.metadata.deletion_timestamp = parse_time("2025-01-01T00:00:00Z");
    fake.seed(&deleting);
    for name in ["already", "custom", "deleting", "missing"] {
        assert_eq!(run(&fake, name), Outcome::done());
    }
    assert!(fake.writes().is_empty());
}

#[test]
fn no_nodes_at_all() {
    let fake = FakeCluster::new();
    fake.seed(&pod("p", "1m", "1"));
    assert_eq!(run(&fake, "p"), Outcome::requeue_after_ms(5000));
    let w = fake.writes();
    // The pod's condition, and a FailedScheduling Event saying the same.
    assert_eq!(w.len(), 2);
    assert_eq!(
        w[0].body["status"]["conditions"][0]["message"],
        "0/0 nodes are available: no nodes registered."
    );
    assert_eq!(w[1].kind, "Event");
    assert_eq!(w[1].body["reason"], "FailedScheduling");
    assert_eq!(w[1].body["type"], "Warning");
}

#[test]
fn registration_declares_what_it_touches() {
    let r = Scheduler::registration();
    assert_eq!(
        (r.for_kind.api_version.as_str(), r.for_kind.kind.as_str()),
        ("v1", "Pod")
    );
    assert_eq!(r.reads[0].kind, "Node");
    assert_eq!(r.writes[0].kind, "Pod");
}

#[test]
fn taints_keep_pods_away_unless_tolerated() {
    use k8s_openapi::api::core::v1::{NodeSpec, Taint, Toleration};
    let fake = FakeCluster::new();
    let mut tainted = node("a", "4", "8Gi", &[]);
    tainted.spec = Some(NodeSpec {
        taints: Some(vec![Taint {
            key: "dedicated".into(),
            value: Some("gpu".into()),
            effect: "NoSchedule".into(),
            ..Default::default()
        }]),
        ..Default::default()
    });
    fake.seed(&tainted);
    fake.seed(&pod("plain", "100m", "64Mi"));
    run(&fake, "plain");
    assert_eq!(node_of(&fake, "plain"), None);
    let p = fake.get::<Pod>("default", "plain").unwrap().unwrap();
    let cond = &p.status.unwrap().conditions.unwrap()[0];
    assert_eq!(
        cond.message.as_deref(),
        Some("0/1 nodes are available: 1 node(s) had untolerated taint(s).")
    );

    let mut tolerant = pod("tolerant", "100m", "64Mi");
    tolerant.spec.as_mut().unwrap().tolerations = Some(vec![Toleration {
        key: Some("dedicated".into()),
        operator: Some("Equal".into()),
        value: Some("gpu".into()),
        effect: Some("NoSchedule".into()),
        ..Default::default()
    }]);
    fake.seed(&tolerant);
    run(&fake, "tolerant");
    assert_eq!(node_of(&fake, "tolerant").as_deref(), Some("a"));

    let wrong_value = Toleration {
        key: Some("dedicated".into()),
        value: Some("cpu".into()),
        ..Default::default()
    };
    let taint = Taint {
        key: "dedicated".into(),
        value: Some("gpu".into()),
        effect: "NoSchedule".into(),
        ..Default::default()
    };
    assert!(!crate::tolerates(&wrong_value, &taint));
    let everything = Toleration {
        operator: Some("Exists".into()),
        ..Default::default()
    };
    assert!(crate::tolerates(&everything, &taint));
}
