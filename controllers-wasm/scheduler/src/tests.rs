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
    assert_eq!(r.reads[1].kind, "Namespace", "namespaceSelector terms");
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

// ---- Node affinity, inter-pod affinity, topology spread, runtime, image locality ----

use k8s_openapi::api::core::v1::{
    Affinity, ContainerImage, NodeAffinity, NodeSelector, NodeSelectorRequirement,
    NodeSelectorTerm, PodAffinity, PodAffinityTerm, PodAntiAffinity, PreferredSchedulingTerm,
    Taint, TopologySpreadConstraint, WeightedPodAffinityTerm,
};
use k8s_openapi::apimachinery::pkg::apis::meta::v1::LabelSelector;

const HOST: &str = "kubernetes.io/hostname";
const ZONE: &str = "topology.kubernetes.io/zone";

/// A node labelled the way the agent registers it (hostname), plus `labels`.
fn host(name: &str, labels: &[(&str, &str)]) -> Node {
    let mut all = vec![(HOST, name)];
    all.extend_from_slice(labels);
    node(name, "4", "8Gi", &all)
}

fn labeled(mut p: Pod, labels: &[(&str, &str)]) -> Pod {
    p.metadata.labels = Some(
        labels
            .iter()
            .map(|(k, v)| (k.to_string(), v.to_string()))
            .collect(),
    );
    p
}

fn web(name: &str) -> Pod {
    labeled(pod(name, "100m", "64Mi"), &[("app", "web")])
}

fn selector(k: &str, v: &str) -> Option<LabelSelector> {
    Some(LabelSelector {
        match_labels: Some([(k.to_string(), v.to_string())].into()),
        ..Default::default()
    })
}

fn term(k: &str, v: &str, topology_key: &str) -> PodAffinityTerm {
    PodAffinityTerm {
        label_selector: selector(k, v),
        topology_key: topology_key.into(),
        ..Default::default()
    }
}

fn with_affinity(mut p: Pod, affinity: Affinity) -> Pod {
    p.spec.as_mut().unwrap().affinity = Some(affinity);
    p
}

fn anti(terms: Vec<PodAffinityTerm>) -> Affinity {
    Affinity {
        pod_anti_affinity: Some(PodAntiAffinity {
            required_during_scheduling_ignored_during_execution: Some(terms),
            ..Default::default()
        }),
        ..Default::default()
    }
}

fn affinity(terms: Vec<PodAffinityTerm>) -> Affinity {
    Affinity {
        pod_affinity: Some(PodAffinity {
            required_during_scheduling_ignored_during_execution: Some(terms),
            ..Default::default()
        }),
        ..Default::default()
    }
}

fn message(fake: &FakeCluster, name: &str) -> Option<String> {
    let p = fake.get::<Pod>("default", name).unwrap().unwrap();
    p.status?
        .conditions?
        .into_iter()
        .find(|c| c.type_ == "PodScheduled")?
        .message
}

fn req(key: &str, op: &str, values: &[&str]) -> NodeSelectorRequirement {
    NodeSelectorRequirement {
        key: key.into(),
        operator: op.into(),
        values: Some(values.iter().map(|v| v.to_string()).collect()),
    }
}

#[test]
fn required_node_affinity_filters_and_preferred_scores() {
    let fake = FakeCluster::new();
    fake.seed(&host("a", &[("zone", "x"), ("cores", "8")]));
    fake.seed(&host("b", &[("zone", "y"), ("cores", "2")]));
    fake.seed(&host("c", &[("zone", "x"), ("cores", "2")]));
    let required = NodeSelector {
        node_selector_terms: vec![
            // ORed terms; requirements inside one term are ANDed.
            NodeSelectorTerm {
                match_expressions: Some(vec![
                    req("zone", "In", &["x"]),
                    req("cores", "Gt", &["4"]),
                ]),
                match_fields: None,
            },
            NodeSelectorTerm {
                match_expressions: None,
                match_fields: Some(vec![req("metadata.name", "In", &["b"])]),
            },
        ],
    };
    let node_affinity = |preferred: Vec<PreferredSchedulingTerm>| Affinity {
        node_affinity: Some(NodeAffinity {
            required_during_scheduling_ignored_during_execution: Some(required.clone()),
            preferred_during_scheduling_ignored_during_execution: Some(preferred),
        }),
        ..Default::default()
    };
    // No preference: a and b fit, equal in everything, the name decides.
    fake.seed(&with_affinity(
        pod("plain", "100m", "64Mi"),
        node_affinity(vec![]),
    ));
    run(&fake, "plain");
    assert_eq!(node_of(&fake, "plain").as_deref(), Some("a"));
    // A preference for zone y outweighs b having more pods than a.
    let prefer_y = PreferredSchedulingTerm {
        weight: 50,
        preference: NodeSelectorTerm {
            match_expressions: Some(vec![req("zone", "In", &["y"])]),
            match_fields: None,
        },
    };
    fake.seed(&bound(pod("resident-0", "100m", "64Mi"), "b"));
    fake.seed(&bound(pod("resident-1", "100m", "64Mi"), "b"));
    fake.seed(&with_affinity(
        pod("picky", "100m", "64Mi"),
        node_affinity(vec![prefer_y]),
    ));
    run(&fake, "picky");
    assert_eq!(node_of(&fake, "picky").as_deref(), Some("b"));

    // Nothing matches: NotIn/DoesNotExist exclude the rest.
    let none = Affinity {
        node_affinity: Some(NodeAffinity {
            required_during_scheduling_ignored_during_execution: Some(NodeSelector {
                node_selector_terms: vec![NodeSelectorTerm {
                    match_expressions: Some(vec![
                        req("zone", "NotIn", &["y"]),
                        req("cores", "DoesNotExist", &[]),
                    ]),
                    match_fields: None,
                }],
            }),
            ..Default::default()
        }),
        ..Default::default()
    };
    fake.seed(&with_affinity(pod("nowhere", "100m", "64Mi"), none));
    assert_eq!(run(&fake, "nowhere"), Outcome::requeue_after_ms(5000));
    assert_eq!(
        message(&fake, "nowhere").as_deref(),
        Some("0/3 nodes are available: 3 node(s) didn't match Pod's node affinity/selector.")
    );
}

#[test]
fn required_anti_affinity_puts_replicas_on_distinct_hosts() {
    let fake = FakeCluster::new();
    for n in ["a", "b", "c"] {
        fake.seed(&host(n, &[]));
    }
    // Replicas arrive one after another; each must see the ones bound just before it.
    for i in 0..4 {
        fake.seed(&with_affinity(
            web(&format!("w{i}")),
            anti(vec![term("app", "web", HOST)]),
        ));
    }
    let mut hosts: Vec<String> = (0..3)
        .map(|i| {
            run(&fake, &format!("w{i}"));
            node_of(&fake, &format!("w{i}")).unwrap()
        })
        .collect();
    hosts.sort();
    assert_eq!(hosts, ["a", "b", "c"]);
    assert_eq!(run(&fake, "w3"), Outcome::requeue_after_ms(5000));
    assert_eq!(
        message(&fake, "w3").as_deref(),
        Some("0/3 nodes are available: 3 node(s) didn't match pod anti-affinity rules.")
    );
}

#[test]
fn existing_pods_anti_affinity_is_symmetric() {
    let fake = FakeCluster::new();
    fake.seed(&host("a", &[]));
    // The loner on a refuses web pods on its host; the incoming web pod says nothing.
    let loner = with_affinity(
        labeled(pod("loner", "100m", "64Mi"), &[("app", "loner")]),
        anti(vec![term("app", "web", HOST)]),
    );
    fake.seed(&bound(loner, "a"));
    fake.seed(&web("w"));
    run(&fake, "w");
    assert_eq!(
        message(&fake, "w").as_deref(),
        Some(
            "0/1 nodes are available: 1 node(s) didn't satisfy existing pods anti-affinity rules."
        )
    );
    fake.seed(&host("b", &[]));
    run(&fake, "w");
    assert_eq!(node_of(&fake, "w").as_deref(), Some("b"));
}

#[test]
fn required_affinity_follows_matching_pods_by_zone() {
    let fake = FakeCluster::new();
    fake.seed(&host("a1", &[(ZONE, "a")]));
    fake.seed(&host("b1", &[(ZONE, "b")]));
    fake.seed(&host("b2", &[(ZONE, "b")]));
    fake.seed(&host("nozone", &[]));
    fake.seed(&bound(
        labeled(pod("db", "100m", "64Mi"), &[("app", "db")]),
        "b1",
    ));
    // Same zone as the db, and b2 has fewer pods than b1.
    fake.seed(&with_affinity(
        web("near-db"),
        affinity(vec![term("app", "db", ZONE)]),
    ));
    run(&fake, "near-db");
    assert_eq!(node_of(&fake, "near-db").as_deref(), Some("b2"));

    // No cache pod anywhere, but the pod is one: the first of a group may go anywhere
    // that has the topology key.
    let first = with_affinity(
        labeled(pod("cache-0", "100m", "64Mi"), &[("app", "cache")]),
        affinity(vec![term("app", "cache", ZONE)]),
    );
    fake.seed(&first);
    run(&fake, "cache-0");
    assert_eq!(node_of(&fake, "cache-0").as_deref(), Some("a1"));

    // Affinity to pods that exist nowhere, not matching itself: never.
    fake.seed(&with_affinity(
        web("lonely"),
        affinity(vec![term("app", "queue", ZONE)]),
    ));
    run(&fake, "lonely");
    assert_eq!(
        message(&fake, "lonely").as_deref(),
        Some("0/4 nodes are available: 4 node(s) didn't match pod affinity rules.")
    );
}

#[test]
fn affinity_terms_look_in_their_namespaces() {
    use k8s_openapi::api::core::v1::Namespace;
    let fake = FakeCluster::new();
    let mut ns = Namespace::default();
    ns.metadata.name = Some("data".into());
    ns.metadata.labels = Some([("team".to_string(), "storage".to_string())].into());
    fake.seed(&ns);
    fake.seed(&host("a", &[]));
    fake.seed(&host("b", &[]));
    let mut db = bound(labeled(pod("db", "100m", "64Mi"), &[("app", "db")]), "b");
    db.metadata.namespace = Some("data".into());
    fake.seed(&db);

    // By default a term looks in the pod's own namespace: the db in "data" does not count.
    fake.seed(&with_affinity(
        web("same-ns"),
        affinity(vec![term("app", "db", HOST)]),
    ));
    run(&fake, "same-ns");
    assert_eq!(node_of(&fake, "same-ns"), None);

    let by_selector = PodAffinityTerm {
        namespace_selector: selector("team", "storage"),
        ..term("app", "db", HOST)
    };
    fake.seed(&with_affinity(
        web("by-selector"),
        affinity(vec![by_selector]),
    ));
    run(&fake, "by-selector");
    assert_eq!(node_of(&fake, "by-selector").as_deref(), Some("b"));

    let by_name = PodAffinityTerm {
        namespaces: Some(vec!["data".into()]),
        ..term("app", "db", HOST)
    };
    fake.seed(&with_affinity(web("by-name"), affinity(vec![by_name])));
    run(&fake, "by-name");
    assert_eq!(node_of(&fake, "by-name").as_deref(), Some("b"));
}

#[test]
fn preferred_anti_affinity_outweighs_pod_count() {
    let fake = FakeCluster::new();
    fake.seed(&host("a", &[]));
    fake.seed(&host("b", &[]));
    fake.seed(&bound(web("w0"), "a"));
    for i in 0..3 {
        fake.seed(&bound(pod(&format!("x{i}"), "100m", "64Mi"), "b"));
    }
    fake.seed(&web("plain"));
    run(&fake, "plain");
    assert_eq!(node_of(&fake, "plain").as_deref(), Some("a"), "fewer pods");

    let prefer_away = Affinity {
        pod_anti_affinity: Some(PodAntiAffinity {
            preferred_during_scheduling_ignored_during_execution: Some(vec![
                WeightedPodAffinityTerm {
                    weight: 100,
                    pod_affinity_term: term("app", "web", HOST),
                },
            ]),
            ..Default::default()
        }),
        ..Default::default()
    };
    fake.seed(&with_affinity(web("shy"), prefer_away));
    run(&fake, "shy");
    assert_eq!(node_of(&fake, "shy").as_deref(), Some("b"));
}

fn spread(when: &str, key: &str, min_domains: Option<i32>) -> TopologySpreadConstraint {
    TopologySpreadConstraint {
        max_skew: 1,
        topology_key: key.into(),
        when_unsatisfiable: when.into(),
        label_selector: selector("app", "web"),
        min_domains,
        ..Default::default()
    }
}

fn with_spread(mut p: Pod, c: TopologySpreadConstraint) -> Pod {
    p.spec.as_mut().unwrap().topology_spread_constraints = Some(vec![c]);
    p
}

#[test]
fn topology_spread_do_not_schedule_keeps_skew() {
    let fake = FakeCluster::new();
    fake.seed(&host("a1", &[(ZONE, "a")]));
    fake.seed(&host("a2", &[(ZONE, "a")]));
    let mut b1 = host("b1", &[(ZONE, "b")]);
    b1.spec = Some(NodeSpec {
        unschedulable: Some(true),
        ..Default::default()
    });
    fake.seed(&b1);
    fake.seed(&host("nozone", &[]));
    fake.seed(&bound(web("w0"), "a1"));
    // Zone a has 1, zone b 0 (a cordoned node still counts as a domain): a is full.
    fake.seed(&with_spread(web("w1"), spread("DoNotSchedule", ZONE, None)));
    run(&fake, "w1");
    assert_eq!(
        message(&fake, "w1").as_deref(),
        Some(
            "0/4 nodes are available: 1 node(s) didn't match pod topology spread constraints (missing required label), 1 node(s) were unschedulable, 2 node(s) didn't match pod topology spread constraints."
        )
    );
    fake.seed(&host("b1", &[(ZONE, "b")]));
    run(&fake, "w1");
    assert_eq!(node_of(&fake, "w1").as_deref(), Some("b1"));

    // One per zone now; minDomains 3 with two zones treats the minimum as 0: skew 2.
    fake.seed(&with_spread(
        web("w2"),
        spread("DoNotSchedule", ZONE, Some(3)),
    ));
    run(&fake, "w2");
    assert_eq!(node_of(&fake, "w2"), None);
    fake.seed(&with_spread(web("w3"), spread("DoNotSchedule", ZONE, None)));
    run(&fake, "w3");
    assert_eq!(
        node_of(&fake, "w3").as_deref(),
        Some("a2"),
        "a2 has no pods"
    );
}

#[test]
fn topology_spread_schedule_anyway_scores() {
    let fake = FakeCluster::new();
    fake.seed(&host("a", &[]));
    fake.seed(&host("b", &[]));
    fake.seed(&bound(web("w0"), "a"));
    for i in 0..3 {
        fake.seed(&bound(pod(&format!("x{i}"), "100m", "64Mi"), "b"));
    }
    fake.seed(&web("plain"));
    run(&fake, "plain");
    assert_eq!(node_of(&fake, "plain").as_deref(), Some("a"), "fewer pods");
    fake.seed(&with_spread(
        web("spread"),
        spread("ScheduleAnyway", HOST, None),
    ));
    run(&fake, "spread");
    assert_eq!(node_of(&fake, "spread").as_deref(), Some("b"));
}

/// A pod's `runtimeClassName` alone places nothing: the node selector its RuntimeClass
/// gave it at admission does (a class named anything may use either runtime).
#[test]
fn runtime_classes_place_pods_through_their_node_selector() {
    let fake = FakeCluster::new();
    fake.seed(&host("wasm-only", &[("kedge.io/runtime-wasm", "true")]));
    let with_class = |name: &str, class: &str, selector: Option<(&str, &str)>| {
        let mut p = pod(name, "100m", "64Mi");
        let spec = p.spec.as_mut().unwrap();
        spec.runtime_class_name = Some(class.into());
        spec.node_selector = selector.map(|(k, v)| [(k.to_string(), v.to_string())].into());
        p
    };
    fake.seed(&with_class(
        "oci",
        "runc",
        Some(("kedge.io/runtime-oci", "true")),
    ));
    run(&fake, "oci");
    assert_eq!(
        message(&fake, "oci").as_deref(),
        Some("0/1 nodes are available: 1 node(s) didn't match Pod's node affinity/selector.")
    );
    fake.seed(&with_class("fast", "fast-wasm", None));
    run(&fake, "fast");
    assert_eq!(node_of(&fake, "fast").as_deref(), Some("wasm-only"));
    fake.seed(&host("runc", &[("kedge.io/runtime-oci", "true")]));
    run(&fake, "oci");
    assert_eq!(node_of(&fake, "oci").as_deref(), Some("runc"));
}

/// `spec.overhead` (set from the pod's RuntimeClass) counts on top of the containers'
/// requests, for the incoming pod and for those already placed.
#[test]
fn pod_overhead_counts_in_the_resource_fit() {
    let with_overhead = |mut p: Pod, cpu: &str| {
        p.spec.as_mut().unwrap().overhead =
            Some([("cpu".to_string(), Quantity(cpu.into()))].into());
        p
    };
    let fake = FakeCluster::new();
    fake.seed(&node("small", "1", "8Gi", &[]));
    fake.seed(&with_overhead(pod("big", "800m", "64Mi"), "300m"));
    run(&fake, "big");
    assert_eq!(node_of(&fake, "big"), None);
    assert_eq!(
        message(&fake, "big").as_deref(),
        Some("0/1 nodes are available: 1 Insufficient cpu.")
    );
    fake.seed(&with_overhead(pod("fits", "800m", "64Mi"), "200m"));
    run(&fake, "fits");
    assert_eq!(node_of(&fake, "fits").as_deref(), Some("small"));

    let fake = FakeCluster::new();
    fake.seed(&node("small", "1", "8Gi", &[]));
    fake.seed(&bound(
        with_overhead(pod("placed", "500m", "64Mi"), "300m"),
        "small",
    ));
    fake.seed(&pod("next", "300m", "64Mi"));
    run(&fake, "next");
    assert_eq!(
        node_of(&fake, "next"),
        None,
        "500m + 300m overhead + 300m > 1"
    );
}

#[test]
fn image_locality_prefers_nodes_holding_the_image() {
    let fake = FakeCluster::new();
    fake.seed(&host("a", &[]));
    let mut b = host("b", &[]);
    b.status.as_mut().unwrap().images = Some(vec![ContainerImage {
        names: Some(vec![
            "docker.io/library/nginx@sha256:0123".into(),
            "docker.io/library/nginx:1.27".into(),
        ]),
        size_bytes: Some(500 << 20),
    }]);
    fake.seed(&b);
    let mut p = pod("p", "100m", "64Mi");
    p.spec.as_mut().unwrap().containers[0].image = Some("nginx:1.27".into());
    fake.seed(&p);
    run(&fake, "p");
    assert_eq!(node_of(&fake, "p").as_deref(), Some("b"));
}

#[test]
fn prefer_no_schedule_taints_steer_away() {
    let fake = FakeCluster::new();
    let mut a = host("a", &[]);
    a.spec = Some(NodeSpec {
        taints: Some(vec![Taint {
            key: "edge".into(),
            effect: "PreferNoSchedule".into(),
            ..Default::default()
        }]),
        ..Default::default()
    });
    fake.seed(&a);
    fake.seed(&host("b", &[]));
    fake.seed(&pod("p", "100m", "64Mi"));
    run(&fake, "p");
    assert_eq!(node_of(&fake, "p").as_deref(), Some("b"));
}

#[test]
fn one_reconcile_places_a_batch_of_pending_pods_counting_each_binding() {
    let fake = FakeCluster::new();
    fake.seed(&node("a", "1", "8Gi", &[]));
    fake.seed(&node("b", "1", "8Gi", &[]));
    // Each node fits two of these; the batch must see its own bindings to spread them and
    // not overcommit.
    for n in ["p1", "p2", "p3", "p4", "p5"] {
        fake.seed(&pod(n, "500m", "64Mi"));
    }
    run(&fake, "p3");
    assert_eq!(fake.count(Verb::Bind, "Pod"), 4, "four fit, in one call");
    assert!(
        node_of(&fake, "p3").is_some(),
        "the pod asked about goes first"
    );
    let on = |n: &str| {
        ["p1", "p2", "p3", "p4", "p5"]
            .iter()
            .filter(|p| node_of(&fake, p).as_deref() == Some(n))
            .count()
    };
    assert_eq!((on("a"), on("b")), (2, 2));
    // The fifth fits nowhere; its own reconcile reports it.
    let left = ["p1", "p2", "p4", "p5"]
        .into_iter()
        .find(|p| node_of(&fake, p).is_none())
        .unwrap();
    assert_eq!(
        run(&fake, left),
        Outcome::requeue_after_ms(UNSCHEDULABLE_RETRY_MS)
    );
    let p = fake.get::<Pod>("default", left).unwrap().unwrap();
    let cond = &p.status.unwrap().conditions.unwrap()[0];
    assert_eq!(cond.reason.as_deref(), Some("Unschedulable"));
    assert!(
        cond.message
            .as_deref()
            .unwrap()
            .contains("Insufficient cpu"),
        "{cond:?}"
    );
}

fn with_port(mut p: Pod, container_port: i32) -> Pod {
    p.spec.as_mut().unwrap().containers[0].ports =
        Some(vec![k8s_openapi::api::core::v1::ContainerPort {
            container_port,
            ..Default::default()
        }]);
    p
}

#[test]
fn pods_sharing_the_node_network_do_not_share_a_container_port() {
    let fake = FakeCluster::new();
    fake.seed(&node("a", "4", "8Gi", &[]));
    fake.seed(&with_port(pod("web-1", "100m", "64Mi"), 8080));
    fake.seed(&with_port(pod("web-2", "100m", "64Mi"), 8080));
    // One reconcile places the batch: the first binding is counted against the second.
    run(&fake, "web-1");
    assert_eq!(node_of(&fake, "web-1").as_deref(), Some("a"));
    assert_eq!(node_of(&fake, "web-2"), None);
    assert_eq!(
        run(&fake, "web-2"),
        Outcome::requeue_after_ms(UNSCHEDULABLE_RETRY_MS)
    );
    assert_eq!(
        message(&fake, "web-2").as_deref(),
        Some(
            "0/1 nodes are available: 1 node(s) didn't have free ports for the requested pod ports."
        )
    );

    // Another port, or another node, is free.
    fake.seed(&with_port(pod("api", "100m", "64Mi"), 9090));
    run(&fake, "api");
    assert_eq!(node_of(&fake, "api").as_deref(), Some("a"));
    fake.seed(&node("b", "4", "8Gi", &[]));
    run(&fake, "web-2");
    assert_eq!(node_of(&fake, "web-2").as_deref(), Some("b"));
}

#[test]
fn a_finished_pod_frees_its_port() {
    let fake = FakeCluster::new();
    fake.seed(&node("a", "4", "8Gi", &[]));
    let mut done = bound(with_port(pod("done", "100m", "64Mi"), 8080), "a");
    done.status.as_mut().unwrap().phase = Some("Succeeded".into());
    fake.seed(&done);
    fake.seed(&with_port(pod("next", "100m", "64Mi"), 8080));
    run(&fake, "next");
    assert_eq!(node_of(&fake, "next").as_deref(), Some("a"));
}

/// VolumeBinding: a missing claim keeps the pod Pending with kube's message; a bound claim's
/// volume pins the pod to its node; an unbound claim gets the chosen node written on it.
#[test]
fn claims_steer_placement_and_learn_their_node() {
    use serde_json::json;
    let fake = FakeCluster::new();
    fake.seed(&node("a", "4", "8Gi", &[("kubernetes.io/hostname", "a")]));
    fake.seed(&node("b", "4", "8Gi", &[("kubernetes.io/hostname", "b")]));
    let with_claim = |name: &str, claim: &str| {
        let mut p = pod(name, "0", "0");
        p.spec.as_mut().unwrap().volumes = Some(vec![
            serde_json::from_value(
                json!({"name": "v", "persistentVolumeClaim": {"claimName": claim}}),
            )
            .unwrap(),
        ]);
        fake.seed(&p);
    };
    with_claim("lost", "nope");
    run(&fake, "lost");
    let lost = fake.get::<Pod>("default", "lost").unwrap().unwrap();
    let cond = &lost.status.unwrap().conditions.unwrap()[0];
    assert_eq!(
        cond.message.as_deref(),
        Some("persistentvolumeclaim \"nope\" not found")
    );

    fake.seed_json(
        json!({"apiVersion": "v1", "kind": "PersistentVolume", "metadata": {"name": "pv-b"},
        "spec": {"nodeAffinity": {"required": {"nodeSelectorTerms": [{"matchExpressions": [
            {"key": "kubernetes.io/hostname", "operator": "In", "values": ["b"]}]}]}}}}),
    );
    fake.seed_json(json!({"apiVersion": "v1", "kind": "PersistentVolumeClaim",
        "metadata": {"name": "bound", "namespace": "default"}, "spec": {"volumeName": "pv-b"}}));
    fake.seed_json(json!({"apiVersion": "v1", "kind": "PersistentVolumeClaim",
        "metadata": {"name": "fresh", "namespace": "default"}, "spec": {}}));
    for i in 0..3 {
        let name = format!("pinned-{i}");
        with_claim(&name, "bound");
        run(&fake, &name);
        let p = fake.get::<Pod>("default", &name).unwrap().unwrap();
        assert_eq!(p.spec.unwrap().node_name.as_deref(), Some("b"));
    }
    with_claim("new", "fresh");
    run(&fake, "new");
    let p = fake.get::<Pod>("default", "new").unwrap().unwrap();
    let node = p.spec.unwrap().node_name.unwrap();
    let pvc = fake
        .get::<PersistentVolumeClaim>("default", "fresh")
        .unwrap()
        .unwrap();
    assert_eq!(
        pvc.metadata.annotations.unwrap()[volumes::SELECTED_NODE],
        node
    );
}

fn with_priority(mut p: Pod, priority: i32) -> Pod {
    p.spec.as_mut().unwrap().priority = Some(priority);
    p
}

fn exists(fake: &FakeCluster, name: &str) -> bool {
    fake.get::<Pod>("default", name).unwrap().is_some()
}

fn nominated(fake: &FakeCluster, name: &str) -> Option<String> {
    fake.get::<Pod>("default", name)
        .unwrap()
        .unwrap()
        .status
        .and_then(|s| s.nominated_node_name)
}

/// A full node: the high-priority pod evicts the fewest, least important pods it needs
/// (the more important of the low ones is reprieved), is nominated, and binds on its next
/// try; the victim is told why.
#[test]
fn a_higher_priority_pod_preempts_the_least_it_needs() {
    let fake = FakeCluster::new();
    fake.seed(&node("a", "2", "8Gi", &[]));
    fake.seed(&with_priority(bound(pod("low", "900m", "64Mi"), "a"), 10));
    fake.seed(&with_priority(bound(pod("lower", "900m", "64Mi"), "a"), 5));
    fake.seed(&with_priority(pod("critical", "900m", "64Mi"), 1000));
    let out = run(&fake, "critical");
    assert_eq!(out, Outcome::requeue_after_ms(PREEMPTED_RETRY_MS));
    assert!(!exists(&fake, "lower"), "the least important pod goes");
    assert!(
        exists(&fake, "low"),
        "one victim is enough: the other is reprieved"
    );
    assert_eq!(nominated(&fake, "critical").as_deref(), Some("a"));
    let events = fake
        .list::<k8s_openapi::api::core::v1::Event>("default", "")
        .unwrap();
    assert!(
        events
            .iter()
            .any(|e| e.reason.as_deref() == Some("Preempted")
                && e.message
                    .as_deref()
                    .is_some_and(|m| m.ends_with("on node a"))),
        "{events:?}"
    );
    // Its victim gone, it binds.
    assert_eq!(run(&fake, "critical"), Outcome::done());
    assert_eq!(node_of(&fake, "critical").as_deref(), Some("a"));
}

/// No preemption for `preemptionPolicy: Never`, nor of pods of equal or higher priority.
#[test]
fn preemption_respects_policy_and_priority() {
    let fake = FakeCluster::new();
    fake.seed(&node("a", "1", "8Gi", &[]));
    fake.seed(&with_priority(bound(pod("peer", "900m", "64Mi"), "a"), 100));
    fake.seed(&with_priority(pod("same", "900m", "64Mi"), 100));
    let mut never = with_priority(pod("never", "900m", "64Mi"), 1000);
    never.spec.as_mut().unwrap().preemption_policy = Some("Never".into());
    fake.seed(&never);
    for name in ["same", "never"] {
        assert_eq!(
            run(&fake, name),
            Outcome::requeue_after_ms(UNSCHEDULABLE_RETRY_MS),
            "{name}"
        );
        assert!(nominated(&fake, name).is_none(), "{name}");
    }
    assert!(exists(&fake, "peer"));
}

/// The node whose victims matter least is chosen, and a pod of lower priority than a
/// nominated one does not take the room it made.
#[test]
fn the_cheapest_node_is_preempted_and_its_room_kept() {
    let fake = FakeCluster::new();
    fake.seed(&node("a", "1", "8Gi", &[]));
    fake.seed(&node("b", "1", "8Gi", &[]));
    fake.seed(&with_priority(bound(pod("on-a", "900m", "64Mi"), "a"), 50));
    fake.seed(&with_priority(bound(pod("on-b", "900m", "64Mi"), "b"), 20));
    fake.seed(&with_priority(pod("vip", "900m", "64Mi"), 100));
    run(&fake, "vip");
    assert!(exists(&fake, "on-a"));
    assert!(!exists(&fake, "on-b"), "b's victim has the lower priority");
    assert_eq!(nominated(&fake, "vip").as_deref(), Some("b"));
    // A lower-priority pod arriving now finds b taken by the nominated pod.
    fake.seed(&with_priority(pod("late", "900m", "64Mi"), 10));
    assert_eq!(
        run(&fake, "late"),
        Outcome::requeue_after_ms(UNSCHEDULABLE_RETRY_MS)
    );
    assert!(node_of(&fake, "late").is_none());
    assert_eq!(run(&fake, "vip"), Outcome::done());
    assert_eq!(node_of(&fake, "vip").as_deref(), Some("b"));
}

#[test]
fn large_clusters_search_until_enough_nodes_are_feasible() {
    assert_eq!(feasible_nodes_to_find(0), 0);
    assert_eq!(feasible_nodes_to_find(99), 99);
    assert_eq!(feasible_nodes_to_find(100), 100);
    assert_eq!(feasible_nodes_to_find(1000), 420);
    assert_eq!(feasible_nodes_to_find(5000), 500);
    assert_eq!(feasible_nodes_to_find(10_000), 500);
    assert_eq!(feasible_nodes_to_find(20_000), 1000);

    // 300 nodes, only the last has room: the search goes on until it finds it, and a pod
    // that fits nowhere is checked against every node (the message counts all 300).
    let fake = FakeCluster::new();
    for i in 0..300 {
        let cpu = if i == 299 { "4" } else { "1" };
        fake.seed(&node(&format!("n-{i:03}"), cpu, "8Gi", &[]));
    }
    fake.seed(&pod("big", "2", "1Gi"));
    fake.seed(&pod("huge", "8", "1Gi"));
    run(&fake, "big");
    assert_eq!(
        node_of(&fake, "big").as_deref(),
        Some("n-299"),
        "{:?}",
        message(&fake, "big")
    );
    run(&fake, "huge");
    assert_eq!(node_of(&fake, "huge"), None);
    assert_eq!(
        message(&fake, "huge").as_deref(),
        Some("0/300 nodes are available: 300 Insufficient cpu.")
    );

    // Plenty of room everywhere: pods of one batch spread over the nodes, each search
    // starting where the last stopped.
    let fake = FakeCluster::new();
    for i in 0..300 {
        fake.seed(&node(&format!("n-{i:03}"), "8", "8Gi", &[]));
    }
    for i in 0..20 {
        fake.seed(&pod(&format!("p-{i:02}"), "100m", "64Mi"));
    }
    run(&fake, "p-00");
    let nodes: std::collections::HashSet<String> = (0..20)
        .map(|i| node_of(&fake, &format!("p-{i:02}")).expect("every pod bound"))
        .collect();
    assert_eq!(nodes.len(), 20, "one pod per node: {nodes:?}");
}

#[test]
fn a_pending_pod_that_cannot_be_placed_does_not_cost_the_batch() {
    let fake = FakeCluster::new();
    fake.seed(&node("a", "4", "8Gi", &[]));
    // The oldest pending pod has a request that does not parse: it is in every batch.
    let mut bad = pod("bad", "100m", "64Mi");
    bad.metadata.creation_timestamp = parse_time("2020-01-01T00:00:00Z");
    bad.spec.as_mut().unwrap().containers[0]
        .resources
        .as_mut()
        .unwrap()
        .requests
        .as_mut()
        .unwrap()
        .insert("cpu".into(), Quantity("lots".into()));
    fake.seed(&bad);
    for name in ["x", "y"] {
        let mut p = pod(name, "100m", "64Mi");
        p.metadata.creation_timestamp = parse_time("2021-01-01T00:00:00Z");
        fake.seed(&p);
    }
    run(&fake, "x");
    assert_eq!(node_of(&fake, "x").as_deref(), Some("a"));
    assert_eq!(node_of(&fake, "y").as_deref(), Some("a"));
    assert_eq!(node_of(&fake, "bad"), None);
    // Its own reconcile reports the error.
    assert!(Scheduler::reconcile(&fake, &ObjectKey::of::<Pod>("default", "bad")).is_err());
}
