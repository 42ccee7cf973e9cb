use super::*;
use k8s_openapi::api::apps::v1::{DaemonSetSpec, DaemonSetUpdateStrategy, RollingUpdateDaemonSet};
use k8s_openapi::api::core::v1::{
    Affinity, Container, NodeAffinity, NodeSelector, NodeSelectorRequirement, NodeSelectorTerm,
    NodeSpec, PodCondition, PodStatus, PodTemplateSpec, Taint, Toleration,
};
use k8s_openapi::apimachinery::pkg::apis::meta::v1::LabelSelector;
use kedge_guest::meta::controller_of;
use kedge_guest::{FakeCluster, Verb};

fn labels(pairs: &[(&str, &str)]) -> Option<BTreeMap<String, String>> {
    Some(
        pairs
            .iter()
            .map(|(k, v)| (k.to_string(), v.to_string()))
            .collect(),
    )
}

fn ds() -> DaemonSet {
    DaemonSet {
        metadata: ObjectMeta {
            name: Some("agent".into()),
            namespace: Some("ns".into()),
            ..Default::default()
        },
        spec: Some(DaemonSetSpec {
            selector: LabelSelector {
                match_labels: labels(&[("app", "agent")]),
                ..Default::default()
            },
            template: PodTemplateSpec {
                metadata: Some(ObjectMeta {
                    labels: labels(&[("app", "agent")]),
                    ..Default::default()
                }),
                spec: Some(PodSpec {
                    containers: vec![Container {
                        name: "c".into(),
                        image: Some("img:v1".into()),
                        ..Default::default()
                    }],
                    ..Default::default()
                }),
            },
            ..Default::default()
        }),
        status: None,
    }
}

fn node(name: &str, node_labels: &[(&str, &str)], taints: &[(&str, &str)]) -> Node {
    Node {
        metadata: ObjectMeta {
            name: Some(name.into()),
            labels: labels(node_labels),
            ..Default::default()
        },
        spec: Some(NodeSpec {
            taints: Some(
                taints
                    .iter()
                    .map(|(k, e)| Taint {
                        key: k.to_string(),
                        effect: e.to_string(),
                        ..Default::default()
                    })
                    .collect(),
            ),
            ..Default::default()
        }),
        status: None,
    }
}

fn cluster(nodes: &[Node], d: DaemonSet) -> FakeCluster {
    let fake = FakeCluster::new();
    for n in nodes {
        fake.seed(n);
    }
    fake.create("ns", &d).unwrap();
    fake.clear_writes();
    fake
}

fn run(fake: &FakeCluster) {
    assert_eq!(
        DaemonSetController::reconcile(fake, &ObjectKey::of::<DaemonSet>("ns", "agent")).unwrap(),
        Outcome::requeue_after_ms(NODE_POLL_MS)
    );
}

fn stored(fake: &FakeCluster) -> DaemonSet {
    fake.get::<DaemonSet>("ns", "agent").unwrap().unwrap()
}

fn status(fake: &FakeCluster) -> DaemonSetStatus {
    stored(fake).status.unwrap()
}

fn pods(fake: &FakeCluster) -> Vec<Pod> {
    fake.list::<Pod>("ns", "").unwrap()
}

/// node → image of its pods, sorted.
fn placement(fake: &FakeCluster) -> Vec<(String, String)> {
    let mut v: Vec<_> = pods(fake)
        .iter()
        .map(|p| {
            (
                node_of(p).unwrap_or("").to_string(),
                p.spec.as_ref().unwrap().containers[0]
                    .image
                    .clone()
                    .unwrap_or_default(),
            )
        })
        .collect();
    v.sort();
    v
}

fn ready_all(fake: &FakeCluster) {
    for mut p in pods(fake) {
        p.status = Some(PodStatus {
            phase: Some("Running".into()),
            conditions: Some(vec![PodCondition {
                type_: "Ready".into(),
                status: "True".into(),
                last_transition_time: parse_time("2025-01-01T00:00:00Z"),
                ..Default::default()
            }]),
            ..Default::default()
        });
        fake.seed(&p);
    }
}

fn set_image(fake: &FakeCluster, image: &str) {
    let mut d = stored(fake);
    d.spec
        .as_mut()
        .unwrap()
        .template
        .spec
        .as_mut()
        .unwrap()
        .containers[0]
        .image = Some(image.into());
    fake.update("ns", &d).unwrap();
}

fn events(fake: &FakeCluster, reason: &str) -> Vec<String> {
    fake.list::<Event>("ns", "")
        .unwrap()
        .into_iter()
        .filter(|e| e.reason.as_deref() == Some(reason))
        .filter_map(|e| e.message)
        .collect()
}

fn revisions(fake: &FakeCluster) -> Vec<(String, i64)> {
    let mut v: Vec<_> = fake
        .list::<ControllerRevision>("ns", "")
        .unwrap()
        .into_iter()
        .map(|r| (r.metadata.name.unwrap(), r.revision))
        .collect();
    v.sort_by_key(|(_, r)| *r);
    v
}

#[test]
fn one_bound_pinned_tolerant_pod_per_node_then_converges() {
    let fake = cluster(&[node("a", &[], &[]), node("b", &[], &[])], ds());
    run(&fake);
    assert_eq!(fake.count(Verb::Create, "Pod"), 2);
    assert_eq!(
        placement(&fake),
        vec![("a".into(), "img:v1".into()), ("b".into(), "img:v1".into())]
    );
    let d = stored(&fake);
    let hash = pod_template_hash(&d.spec.as_ref().unwrap().template);
    for p in pods(&fake) {
        let node = node_of(&p).unwrap().to_string();
        let l = labels_of(&p.metadata);
        assert_eq!(l.get("app").map(String::as_str), Some("agent"));
        assert_eq!(l.get(HASH_LABEL), Some(&hash));
        assert_eq!(l.get(GENERATION_LABEL).map(String::as_str), Some("1"));
        assert!(p.metadata.name.as_deref().unwrap().starts_with("agent-"));
        let owner = controller_of(&p.metadata).unwrap();
        assert_eq!(
            (owner.kind.as_str(), owner.uid.as_str()),
            ("DaemonSet", d.metadata.uid.as_deref().unwrap())
        );
        let spec = p.spec.unwrap();
        let terms = spec
            .affinity
            .unwrap()
            .node_affinity
            .unwrap()
            .required_during_scheduling_ignored_during_execution
            .unwrap()
            .node_selector_terms;
        let field = &terms[0].match_fields.as_ref().unwrap()[0];
        assert_eq!(
            (
                field.key.as_str(),
                field.operator.as_str(),
                field.values.clone()
            ),
            ("metadata.name", "In", Some(vec![node]))
        );
        let tols = spec.tolerations.unwrap();
        for (key, effect) in DAEMON_TOLERATIONS {
            assert!(tols.iter().any(|t| t.key.as_deref() == Some(*key)
                && t.effect.as_deref() == Some(*effect)
                && t.operator.as_deref() == Some("Exists")));
        }
    }
    let created = events(&fake, "SuccessfulCreate");
    assert_eq!(created.len(), 2);
    assert!(created.iter().all(|m| m.starts_with("Created pod: agent-")));
    let st = status(&fake);
    assert_eq!(
        (
            st.desired_number_scheduled,
            st.current_number_scheduled,
            st.number_ready,
            st.number_available,
            st.number_unavailable,
            st.updated_number_scheduled,
            st.number_misscheduled,
            st.observed_generation,
        ),
        (2, 2, 0, Some(0), Some(2), Some(2), 0, Some(1))
    );

    ready_all(&fake);
    fake.clear_writes();
    run(&fake);
    let st = status(&fake);
    assert_eq!(
        (st.number_ready, st.number_available, st.number_unavailable),
        (2, Some(2), Some(0))
    );
    fake.clear_writes();
    run(&fake);
    assert!(fake.writes().is_empty(), "{:?}", fake.writes());
}

#[test]
fn new_nodes_get_a_pod_and_removed_nodes_lose_theirs() {
    let fake = cluster(&[node("a", &[], &[])], ds());
    run(&fake);
    fake.seed(&node("b", &[], &[]));
    run(&fake);
    assert_eq!(placement(&fake).len(), 2);
    fake.delete::<Node>("", "a").unwrap();
    run(&fake);
    assert_eq!(placement(&fake), vec![("b".into(), "img:v1".into())]);
    assert_eq!(events(&fake, "SuccessfulDelete").len(), 1);
    assert!(events(&fake, "SuccessfulDelete")[0].starts_with("Deleted pod: agent-"));
    assert_eq!(status(&fake).desired_number_scheduled, 1);
}

#[test]
fn node_selector_picks_nodes_and_relabelled_nodes_lose_their_pod() {
    let mut d = ds();
    d.spec
        .as_mut()
        .unwrap()
        .template
        .spec
        .as_mut()
        .unwrap()
        .node_selector = labels(&[("disk", "ssd")]);
    let fake = cluster(
        &[
            node("a", &[("disk", "ssd")], &[]),
            node("b", &[("disk", "hdd")], &[]),
        ],
        d,
    );
    run(&fake);
    assert_eq!(placement(&fake), vec![("a".into(), "img:v1".into())]);
    fake.seed(&node("a", &[("disk", "hdd")], &[]));
    run(&fake);
    assert!(placement(&fake).is_empty());
    let st = status(&fake);
    assert_eq!(
        (st.desired_number_scheduled, st.current_number_scheduled),
        (0, 0)
    );
}

fn req(key: &str, op: &str, values: &[&str]) -> NodeSelectorRequirement {
    NodeSelectorRequirement {
        key: key.into(),
        operator: op.into(),
        values: (!values.is_empty()).then(|| values.iter().map(|v| v.to_string()).collect()),
    }
}

fn with_affinity(terms: Vec<NodeSelectorTerm>) -> PodSpec {
    PodSpec {
        affinity: Some(Affinity {
            node_affinity: Some(NodeAffinity {
                required_during_scheduling_ignored_during_execution: Some(NodeSelector {
                    node_selector_terms: terms,
                }),
                ..Default::default()
            }),
            ..Default::default()
        }),
        ..Default::default()
    }
}

fn exprs(reqs: Vec<NodeSelectorRequirement>) -> NodeSelectorTerm {
    NodeSelectorTerm {
        match_expressions: Some(reqs),
        match_fields: None,
    }
}

#[test]
fn required_node_affinity_operators() {
    let n = node("edge-1", &[("zone", "a"), ("cores", "8")], &[]);
    let runs = |terms| fit(&with_affinity(terms), &n).should_run;
    assert!(runs(vec![exprs(vec![req("zone", "In", &["a", "b"])])]));
    assert!(!runs(vec![exprs(vec![req("zone", "In", &["b"])])]));
    assert!(runs(vec![exprs(vec![req("zone", "NotIn", &["b"])])]));
    assert!(runs(vec![exprs(vec![req("gpu", "NotIn", &["x"])])]));
    assert!(runs(vec![exprs(vec![req("zone", "Exists", &[])])]));
    assert!(!runs(vec![exprs(vec![req("gpu", "Exists", &[])])]));
    assert!(runs(vec![exprs(vec![req("gpu", "DoesNotExist", &[])])]));
    assert!(runs(vec![exprs(vec![req("cores", "Gt", &["4"])])]));
    assert!(!runs(vec![exprs(vec![req("cores", "Lt", &["4"])])]));
    assert!(!runs(vec![exprs(vec![req("zone", "Gt", &["4"])])]));
    // Expressions within a term are ANDed, terms are ORed, an empty term matches nothing.
    assert!(!runs(vec![exprs(vec![
        req("zone", "In", &["a"]),
        req("cores", "Lt", &["4"])
    ])]));
    assert!(runs(vec![
        exprs(vec![req("zone", "In", &["z"])]),
        exprs(vec![req("cores", "Gt", &["1"])])
    ]));
    assert!(!runs(vec![NodeSelectorTerm::default()]));
    let fields = |op, v: &[&str]| NodeSelectorTerm {
        match_expressions: None,
        match_fields: Some(vec![req("metadata.name", op, v)]),
    };
    assert!(runs(vec![fields("In", &["edge-1"])]));
    assert!(!runs(vec![fields("In", &["edge-2"])]));
    assert!(runs(vec![fields("NotIn", &["edge-2"])]));
}

#[test]
fn affinity_excluding_a_node_in_a_reconcile() {
    let mut d = ds();
    d.spec
        .as_mut()
        .unwrap()
        .template
        .spec
        .as_mut()
        .unwrap()
        .affinity = with_affinity(vec![exprs(vec![req(
        "kubernetes.io/hostname",
        "NotIn",
        &["b"],
    )])])
    .affinity;
    let fake = cluster(
        &[
            node("a", &[("kubernetes.io/hostname", "a")], &[]),
            node("b", &[("kubernetes.io/hostname", "b")], &[]),
        ],
        d,
    );
    run(&fake);
    assert_eq!(placement(&fake), vec![("a".into(), "img:v1".into())]);
}

#[test]
fn taints_are_respected_and_daemon_tolerations_apply() {
    let mut d = ds();
    d.spec
        .as_mut()
        .unwrap()
        .template
        .spec
        .as_mut()
        .unwrap()
        .tolerations = Some(vec![Toleration {
        key: Some("dedicated".into()),
        operator: Some("Exists".into()),
        ..Default::default()
    }]);
    let fake = cluster(
        &[
            node("plain", &[], &[]),
            node("gpu", &[], &[("gpu", "NoSchedule")]),
            node("dedicated", &[], &[("dedicated", "NoExecute")]),
            node(
                "sick",
                &[],
                &[("node.kubernetes.io/not-ready", "NoExecute")],
            ),
            node(
                "gone",
                &[],
                &[("node.kubernetes.io/unreachable", "NoExecute")],
            ),
            node(
                "cordoned",
                &[],
                &[("node.kubernetes.io/unschedulable", "NoSchedule")],
            ),
            node(
                "full",
                &[],
                &[("node.kubernetes.io/disk-pressure", "NoSchedule")],
            ),
        ],
        d,
    );
    run(&fake);
    let nodes: Vec<String> = placement(&fake).into_iter().map(|(n, _)| n).collect();
    assert_eq!(
        nodes,
        vec!["cordoned", "dedicated", "full", "gone", "plain", "sick"]
    );
    // A NoSchedule taint added later keeps the running pod (misscheduled); NoExecute evicts.
    fake.seed(&node("plain", &[], &[("maint", "NoSchedule")]));
    fake.seed(&node("sick", &[], &[("evict", "NoExecute")]));
    run(&fake);
    let nodes: Vec<String> = placement(&fake).into_iter().map(|(n, _)| n).collect();
    assert_eq!(
        nodes,
        vec!["cordoned", "dedicated", "full", "gone", "plain"]
    );
    let st = status(&fake);
    assert_eq!(
        (
            st.desired_number_scheduled,
            st.current_number_scheduled,
            st.number_misscheduled
        ),
        (4, 4, 1)
    );
}

#[test]
fn host_network_pods_also_tolerate_network_unavailable() {
    let mut spec = PodSpec {
        host_network: Some(true),
        ..Default::default()
    };
    eligibility::add_daemon_tolerations(&mut spec);
    eligibility::add_daemon_tolerations(&mut spec);
    let tols = spec.tolerations.unwrap();
    assert_eq!(tols.len(), DAEMON_TOLERATIONS.len() + 1);
    assert!(
        tols.iter()
            .any(|t| t.key.as_deref() == Some(eligibility::NETWORK_UNAVAILABLE))
    );
}

fn orphan(name: &str, node: &str, pod_labels: &[(&str, &str)]) -> Pod {
    Pod {
        metadata: ObjectMeta {
            name: Some(name.into()),
            namespace: Some("ns".into()),
            labels: labels(pod_labels),
            ..Default::default()
        },
        spec: Some(PodSpec {
            node_name: Some(node.into()),
            containers: vec![Container {
                name: "c".into(),
                image: Some("img:v1".into()),
                ..Default::default()
            }],
            ..Default::default()
        }),
        status: None,
    }
}

#[test]
fn adopts_matching_orphans_and_releases_drifted_pods() {
    let fake = cluster(&[node("a", &[], &[]), node("b", &[], &[])], ds());
    fake.seed(&orphan("mine", "a", &[("app", "agent")]));
    fake.seed(&orphan("other", "b", &[("app", "else")]));
    run(&fake);
    let uid = stored(&fake).metadata.uid.unwrap();
    let mine = fake.get::<Pod>("ns", "mine").unwrap().unwrap();
    assert_eq!(controller_of(&mine.metadata).unwrap().uid, uid);
    let other = fake.get::<Pod>("ns", "other").unwrap().unwrap();
    assert!(controller_of(&other.metadata).is_none());
    // a keeps the adopted pod, b gets a new one.
    assert_eq!(fake.count(Verb::Create, "Pod"), 1);

    // Relabel the adopted pod: released, and node a gets a fresh daemon pod.
    let mut mine = mine;
    mine.metadata.labels = labels(&[("app", "moved")]);
    fake.seed(&mine);
    fake.clear_writes();
    run(&fake);
    let mine = fake.get::<Pod>("ns", "mine").unwrap().unwrap();
    assert!(controller_of(&mine.metadata).is_none());
    assert_eq!(fake.count(Verb::Create, "Pod"), 1);
}

#[test]
fn failed_pods_are_replaced() {
    let fake = cluster(&[node("a", &[], &[])], ds());
    run(&fake);
    let mut p = pods(&fake).remove(0);
    p.status = Some(PodStatus {
        phase: Some("Failed".into()),
        ..Default::default()
    });
    fake.seed(&p);
    run(&fake);
    let now = pods(&fake);
    assert_eq!(now.len(), 1);
    assert_ne!(now[0].metadata.name, p.metadata.name);
    assert_eq!(events(&fake, "FailedDaemonPod").len(), 1);
}

#[test]
fn duplicate_pods_on_a_node_keep_the_oldest() {
    let fake = cluster(&[node("a", &[], &[])], ds());
    fake.seed(&orphan("old", "a", &[("app", "agent")]));
    fake.set_now("2025-01-01T00:01:00Z");
    fake.seed(&orphan("new", "a", &[("app", "agent")]));
    run(&fake);
    let names: Vec<_> = pods(&fake)
        .into_iter()
        .map(|p| p.metadata.name.unwrap())
        .collect();
    assert_eq!(names, vec!["old"]);
}

fn rolling(d: &mut DaemonSet, max_unavailable: Option<IntOrString>) {
    d.spec.as_mut().unwrap().update_strategy = Some(DaemonSetUpdateStrategy {
        type_: Some("RollingUpdate".into()),
        rolling_update: Some(RollingUpdateDaemonSet {
            max_unavailable,
            ..Default::default()
        }),
    });
}

fn four_nodes() -> Vec<Node> {
    ["a", "b", "c", "d"].map(|n| node(n, &[], &[])).to_vec()
}

#[test]
fn rolling_update_replaces_one_pod_at_a_time() {
    let mut d = ds();
    rolling(&mut d, Some(IntOrString::Int(1)));
    let fake = cluster(&four_nodes(), d);
    run(&fake);
    ready_all(&fake);
    run(&fake);
    set_image(&fake, "img:v2");
    for step in 1..=4 {
        fake.clear_writes();
        run(&fake); // deletes one old pod
        assert_eq!(fake.count(Verb::Delete, "Pod"), 1, "step {step}");
        assert_eq!(pods(&fake).len(), 3);
        run(&fake); // creates its replacement
        assert_eq!(fake.count(Verb::Create, "Pod"), 1, "step {step}");
        // Not ready yet: the budget is used up, nothing else moves.
        fake.clear_writes();
        run(&fake);
        assert_eq!(fake.count(Verb::Delete, "Pod"), 0, "step {step}");
        let new = placement(&fake)
            .iter()
            .filter(|(_, i)| i == "img:v2")
            .count();
        assert_eq!(new, step);
        assert_eq!(status(&fake).updated_number_scheduled, Some(step as i32));
        ready_all(&fake);
    }
    run(&fake);
    let st = status(&fake);
    assert_eq!(
        (
            st.updated_number_scheduled,
            st.number_available,
            st.observed_generation
        ),
        (Some(4), Some(4), Some(2))
    );
    let hash = pod_template_hash(&stored(&fake).spec.unwrap().template);
    assert!(
        pods(&fake)
            .iter()
            .all(|p| hash_of(p) == Some(hash.as_str()))
    );
    assert_eq!(
        pods(&fake)[0]
            .metadata
            .labels
            .as_ref()
            .unwrap()
            .get(GENERATION_LABEL)
            .map(String::as_str),
        Some("2")
    );
}

#[test]
fn rolling_update_percentage_rounds_up_and_unavailable_old_pods_go_first() {
    let mut d = ds();
    rolling(&mut d, Some(IntOrString::String("30%".into())));
    let fake = cluster(&four_nodes(), d);
    run(&fake);
    ready_all(&fake);
    run(&fake);
    set_image(&fake, "img:v2");
    fake.clear_writes();
    run(&fake);
    // 30% of 4 rounds up to 2.
    assert_eq!(fake.count(Verb::Delete, "Pod"), 2);

    assert_eq!(
        max_unavailable(Some(&IntOrString::String("25%".into())), 4),
        1
    );
    assert_eq!(
        max_unavailable(Some(&IntOrString::String("0%".into())), 4),
        1
    );
    assert_eq!(max_unavailable(Some(&IntOrString::Int(0)), 0), 0);
    assert_eq!(max_unavailable(None, 3), 1);

    // An old pod that is not available anyway is replaced without using the budget.
    let mut d = ds();
    rolling(&mut d, Some(IntOrString::Int(1)));
    let fake = cluster(&four_nodes(), d);
    run(&fake);
    ready_all(&fake);
    let mut sick = pods(&fake).remove(0);
    sick.status.as_mut().unwrap().conditions = None;
    fake.seed(&sick);
    run(&fake);
    set_image(&fake, "img:v2");
    fake.clear_writes();
    run(&fake);
    assert_eq!(fake.count(Verb::Delete, "Pod"), 2);
    assert!(
        fake.get::<Pod>("ns", sick.metadata.name.as_deref().unwrap())
            .unwrap()
            .is_none()
    );
}

#[test]
fn on_delete_only_replaces_pods_the_user_deleted() {
    let mut d = ds();
    d.spec.as_mut().unwrap().update_strategy = Some(DaemonSetUpdateStrategy {
        type_: Some("OnDelete".into()),
        rolling_update: None,
    });
    let fake = cluster(&[node("a", &[], &[]), node("b", &[], &[])], d);
    run(&fake);
    ready_all(&fake);
    set_image(&fake, "img:v2");
    fake.clear_writes();
    run(&fake);
    assert_eq!(fake.count(Verb::Delete, "Pod"), 0);
    assert_eq!(status(&fake).updated_number_scheduled, Some(0));
    let victim = pods(&fake)
        .into_iter()
        .find(|p| node_of(p) == Some("a"))
        .unwrap();
    fake.delete::<Pod>("ns", victim.metadata.name.as_deref().unwrap())
        .unwrap();
    run(&fake);
    assert_eq!(
        placement(&fake),
        vec![("a".into(), "img:v2".into()), ("b".into(), "img:v1".into())]
    );
}

#[test]
fn controller_revisions_record_history_renumber_on_rollback_and_prune() {
    let mut d = ds();
    d.spec.as_mut().unwrap().revision_history_limit = Some(1);
    let fake = cluster(&[node("a", &[], &[])], d);
    run(&fake);
    let h1 = pod_template_hash(&stored(&fake).spec.unwrap().template);
    assert_eq!(revisions(&fake), vec![(format!("agent-{h1}"), 1)]);
    let cr = fake
        .get::<ControllerRevision>("ns", &format!("agent-{h1}"))
        .unwrap()
        .unwrap();
    let data = cr.data.unwrap().0;
    assert_eq!(data["spec"]["template"]["$patch"], "replace");
    assert_eq!(
        data["spec"]["template"]["spec"]["containers"][0]["image"],
        "img:v1"
    );
    assert_eq!(
        cr.metadata.labels.as_ref().unwrap().get(HASH_LABEL),
        Some(&h1)
    );
    assert_eq!(controller_of(&cr.metadata).unwrap().kind, "DaemonSet");

    ready_all(&fake);
    set_image(&fake, "img:v2");
    run(&fake);
    let h2 = pod_template_hash(&stored(&fake).spec.unwrap().template);
    assert_eq!(
        revisions(&fake),
        vec![(format!("agent-{h1}"), 1), (format!("agent-{h2}"), 2)]
    );
    // Roll back: the old revision is renumbered, not copied.
    set_image(&fake, "img:v1");
    run(&fake);
    assert_eq!(
        revisions(&fake),
        vec![(format!("agent-{h2}"), 2), (format!("agent-{h1}"), 3)]
    );
    set_image(&fake, "img:v3");
    run(&fake);
    run(&fake);
    ready_all(&fake);
    run(&fake);
    // Limit 1: of the old revisions only the newest unused one survives.
    let revs = revisions(&fake);
    assert_eq!(revs.len(), 2, "{revs:?}");
    assert_eq!(revs[0], (format!("agent-{h1}"), 3));
    assert_eq!(revs[1].1, 4);
}

#[test]
fn min_ready_seconds_delays_availability() {
    let mut d = ds();
    d.spec.as_mut().unwrap().min_ready_seconds = Some(30);
    let fake = cluster(&[node("a", &[], &[])], d);
    run(&fake);
    ready_all(&fake);
    fake.set_now("2025-01-01T00:00:10Z");
    let out =
        DaemonSetController::reconcile(&fake, &ObjectKey::of::<DaemonSet>("ns", "agent")).unwrap();
    assert!(out.requeue_after_ms.unwrap() < NODE_POLL_MS + 1);
    assert_eq!(status(&fake).number_available, Some(0));
    fake.set_now("2025-01-01T00:00:31Z");
    run(&fake);
    assert_eq!(status(&fake).number_available, Some(1));
}

#[test]
fn missing_daemonset_and_empty_selector_are_left_alone() {
    let fake = FakeCluster::new();
    assert_eq!(
        DaemonSetController::reconcile(&fake, &ObjectKey::of::<DaemonSet>("ns", "agent")).unwrap(),
        Outcome::done()
    );
    let mut d = ds();
    d.spec.as_mut().unwrap().selector = LabelSelector::default();
    let fake = cluster(&[node("a", &[], &[])], d);
    assert_eq!(
        DaemonSetController::reconcile(&fake, &ObjectKey::of::<DaemonSet>("ns", "agent")).unwrap(),
        Outcome::done()
    );
    assert!(pods(&fake).is_empty());
}

#[test]
fn unbound_pods_count_for_the_node_their_affinity_targets() {
    let fake = cluster(&[node("a", &[], &[]), node("b", &[], &[])], ds());
    let mut pinned = orphan("pinned", "", &[("app", "agent")]);
    eligibility::pin_to_node(pinned.spec.as_mut().unwrap(), "a");
    fake.seed(&pinned);
    fake.seed(&orphan("loose", "", &[("app", "agent")]));
    run(&fake);
    // a keeps the pinned pod, b gets a new one; the pod with no target node is left alone.
    assert_eq!(fake.count(Verb::Create, "Pod"), 1);
    assert_eq!(fake.count(Verb::Delete, "Pod"), 0);
    let created = fake
        .writes()
        .into_iter()
        .find(|w| w.verb == Verb::Create && w.kind == "Pod")
        .unwrap();
    assert_eq!(created.body["spec"]["nodeName"], "b");
    assert_eq!(status(&fake).current_number_scheduled, 2);
}

#[test]
fn orphaned_revision_of_the_same_template_is_adopted() {
    let fake = cluster(&[node("a", &[], &[])], ds());
    let template = stored(&fake).spec.unwrap().template;
    let hash = pod_template_hash(&template);
    fake.seed(&ControllerRevision {
        metadata: ObjectMeta {
            name: Some(format!("agent-{hash}")),
            namespace: Some("ns".into()),
            ..Default::default()
        },
        data: Some(k8s_openapi::apimachinery::pkg::runtime::RawExtension(
            revision::revision_data(&template),
        )),
        revision: 7,
    });
    run(&fake);
    let cr = fake
        .get::<ControllerRevision>("ns", &format!("agent-{hash}"))
        .unwrap()
        .unwrap();
    assert_eq!(
        controller_of(&cr.metadata).map(|r| r.uid.clone()),
        stored(&fake).metadata.uid
    );
    assert_eq!(placement(&fake).len(), 1);
}
