use super::*;
use k8s_openapi::api::apps::v1::ReplicaSetSpec;
use k8s_openapi::api::core::v1::{Container, PodCondition, PodSpec, PodStatus, PodTemplateSpec};
use k8s_openapi::apimachinery::pkg::apis::meta::v1::LabelSelector;
use kedge_guest::meta::parse_time;
use kedge_guest::meta::{controller_of, new_controller_ref};
use kedge_guest::{ClusterExt, FakeCluster, Verb};

fn labels(pairs: &[(&str, &str)]) -> Option<std::collections::BTreeMap<String, String>> {
    Some(
        pairs
            .iter()
            .map(|(k, v)| (k.to_string(), v.to_string()))
            .collect(),
    )
}

fn rs(replicas: i32) -> ReplicaSet {
    ReplicaSet {
        metadata: ObjectMeta {
            name: Some("web".into()),
            namespace: Some("ns".into()),
            ..Default::default()
        },
        spec: Some(ReplicaSetSpec {
            replicas: Some(replicas),
            selector: LabelSelector {
                match_labels: labels(&[("app", "web")]),
                ..Default::default()
            },
            template: Some(PodTemplateSpec {
                metadata: Some(ObjectMeta {
                    labels: labels(&[("app", "web"), ("tier", "fe")]),
                    ..Default::default()
                }),
                spec: Some(PodSpec {
                    containers: vec![Container {
                        name: "c".into(),
                        image: Some("nginx".into()),
                        ..Default::default()
                    }],
                    ..Default::default()
                }),
            }),
            ..Default::default()
        }),
        status: None,
    }
}

fn run(fake: &FakeCluster) {
    assert_eq!(
        ReplicaSetController::reconcile(fake, &ObjectKey::of::<ReplicaSet>("ns", "web")).unwrap(),
        Outcome::done()
    );
}

fn stored(fake: &FakeCluster) -> ReplicaSet {
    fake.get::<ReplicaSet>("ns", "web").unwrap().unwrap()
}

fn owned_pods(fake: &FakeCluster) -> Vec<Pod> {
    let uid = stored(fake).metadata.uid;
    fake.list::<Pod>("ns", "")
        .unwrap()
        .into_iter()
        .filter(|p| controller_of(&p.metadata).map(|r| Some(&r.uid)) == Some(uid.as_ref()))
        .collect()
}

fn set_pods(fake: &FakeCluster, f: impl Fn(&mut Pod)) {
    for mut p in owned_pods(fake) {
        f(&mut p);
        fake.seed(&p);
    }
}

fn ready(p: &mut Pod) {
    p.status = Some(PodStatus {
        phase: Some("Running".into()),
        conditions: Some(vec![PodCondition {
            type_: "Ready".into(),
            status: "True".into(),
            ..Default::default()
        }]),
        ..Default::default()
    });
}

#[test]
fn creates_pods_from_scratch_then_converges() {
    let fake = FakeCluster::new();
    fake.create("ns", &rs(3)).unwrap();
    fake.clear_writes();
    run(&fake);
    assert_eq!(fake.count(Verb::Create, "Pod"), 3);
    let pods = owned_pods(&fake);
    assert_eq!(pods.len(), 3);
    let p = &pods[0];
    assert!(p.metadata.name.as_deref().unwrap().starts_with("web-"));
    assert_eq!(p.metadata.labels, labels(&[("app", "web"), ("tier", "fe")]));
    assert_eq!(
        controller_of(&p.metadata).unwrap().block_owner_deletion,
        Some(true)
    );
    assert_eq!(
        p.spec.as_ref().unwrap().containers[0].image.as_deref(),
        Some("nginx")
    );
    let st = stored(&fake).status.unwrap();
    assert_eq!(
        (
            st.replicas,
            st.fully_labeled_replicas,
            st.ready_replicas,
            st.observed_generation
        ),
        (3, Some(3), Some(0), Some(1))
    );

    set_pods(&fake, ready);
    fake.clear_writes();
    run(&fake);
    assert_eq!(fake.count(Verb::UpdateStatus, "ReplicaSet"), 1);
    assert_eq!(stored(&fake).status.unwrap().available_replicas, Some(3));
    fake.clear_writes();
    run(&fake);
    assert!(
        fake.writes().is_empty(),
        "converged: no writes, got {:?}",
        fake.writes()
    );
}

#[test]
fn scales_up_and_down_preferring_cheap_victims() {
    let fake = FakeCluster::new();
    fake.create("ns", &rs(2)).unwrap();
    run(&fake);
    set_pods(&fake, |p| {
        ready(p);
        p.spec.as_mut().unwrap().node_name = Some("n1".into());
    });
    let mut r = stored(&fake);
    r.spec.as_mut().unwrap().replicas = Some(4);
    fake.update("ns", &r).unwrap();
    fake.clear_writes();
    run(&fake);
    assert_eq!(fake.count(Verb::Create, "Pod"), 2);
    let newcomers: Vec<_> = fake
        .writes()
        .iter()
        .filter(|w| w.verb == Verb::Create && w.kind == "Pod")
        .map(|w| w.name.clone())
        .collect();

    let mut r = stored(&fake);
    r.spec.as_mut().unwrap().replicas = Some(1);
    fake.update("ns", &r).unwrap();
    fake.clear_writes();
    run(&fake);
    let deleted: Vec<_> = fake
        .writes()
        .iter()
        .filter(|w| w.verb == Verb::Delete)
        .map(|w| w.name.clone())
        .collect();
    assert_eq!(deleted.len(), 3);
    // Each create and delete is recorded as an Event on the ReplicaSet, as kubectl describe
    // shows them.
    let events = fake
        .list::<k8s_openapi::api::core::v1::Event>("ns", "")
        .unwrap();
    let reasons: Vec<_> = events.iter().filter_map(|e| e.reason.as_deref()).collect();
    assert!(
        reasons.contains(&"SuccessfulCreate") && reasons.contains(&"SuccessfulDelete"),
        "{reasons:?}"
    );
    for n in &newcomers {
        assert!(deleted.contains(n), "unscheduled pending pods go first");
    }
    assert_eq!(owned_pods(&fake).len(), 1);
    assert_eq!(stored(&fake).status.unwrap().replicas, 1);
}

#[test]
fn newest_ready_pod_goes_first_among_equals() {
    let fake = FakeCluster::new();
    fake.create("ns", &rs(2)).unwrap();
    run(&fake);
    let names: Vec<_> = owned_pods(&fake)
        .into_iter()
        .map(|p| p.metadata.name.unwrap())
        .collect();
    for (i, mut p) in owned_pods(&fake).into_iter().enumerate() {
        ready(&mut p);
        p.spec.as_mut().unwrap().node_name = Some("n".into());
        p.metadata.creation_timestamp = parse_time(&format!("2025-01-0{}T00:00:00Z", i + 1));
        fake.seed(&p);
    }
    let mut r = stored(&fake);
    r.spec.as_mut().unwrap().replicas = Some(1);
    fake.update("ns", &r).unwrap();
    fake.clear_writes();
    run(&fake);
    assert_eq!(fake.writes()[0].verb, Verb::Delete);
    assert_eq!(fake.writes()[0].name, names[1]);
}

#[test]
fn terminated_pods_are_replaced() {
    let fake = FakeCluster::new();
    fake.create("ns", &rs(1)).unwrap();
    run(&fake);
    set_pods(&fake, |p| {
        p.status = Some(PodStatus {
            phase: Some("Failed".into()),
            ..Default::default()
        })
    });
    fake.clear_writes();
    run(&fake);
    assert_eq!(fake.count(Verb::Create, "Pod"), 1);
    assert_eq!(fake.count(Verb::Delete, "Pod"), 0);
}

#[test]
fn adopts_matching_orphans_and_releases_drifted_pods() {
    let fake = FakeCluster::new();
    fake.create("ns", &rs(2)).unwrap();
    let orphan = Pod {
        metadata: ObjectMeta {
            name: Some("orphan".into()),
            namespace: Some("ns".into()),
            labels: labels(&[("app", "web")]),
            ..Default::default()
        },
        ..Default::default()
    };
    fake.seed(&orphan);
    let mut stranger = orphan.clone();
    stranger.metadata.name = Some("stranger".into());
    stranger.metadata.labels = labels(&[("app", "db")]);
    fake.seed(&stranger);
    fake.clear_writes();
    run(&fake);
    assert_eq!(fake.count(Verb::Patch, "Pod"), 1);
    assert_eq!(fake.count(Verb::Create, "Pod"), 1);
    let uid = stored(&fake).metadata.uid.unwrap();
    let adopted = fake.get::<Pod>("ns", "orphan").unwrap().unwrap();
    assert_eq!(controller_of(&adopted.metadata).unwrap().uid, uid);
    assert!(controller_of(&fake.get::<Pod>("ns", "stranger").unwrap().unwrap().metadata).is_none());

    // Relabel the adopted pod: it is released and replaced.
    let mut drifted = adopted;
    drifted.metadata.labels = labels(&[("app", "debug")]);
    fake.seed(&drifted);
    fake.clear_writes();
    run(&fake);
    let released = fake.get::<Pod>("ns", "orphan").unwrap().unwrap();
    assert_eq!(released.metadata.owner_references, Some(vec![]));
    assert_eq!(fake.count(Verb::Create, "Pod"), 1);
    assert_eq!(owned_pods(&fake).len(), 2);
}

#[test]
fn pods_of_other_controllers_and_terminating_orphans_are_left_alone() {
    let fake = FakeCluster::new();
    fake.create("ns", &rs(1)).unwrap();
    let mut foreign = Pod {
        metadata: ObjectMeta {
            name: Some("foreign".into()),
            namespace: Some("ns".into()),
            labels: labels(&[("app", "web")]),
            ..Default::default()
        },
        ..Default::default()
    };
    let mut other = rs(1);
    other.metadata.name = Some("other".into());
    other.metadata.uid = Some("other-uid".into());
    foreign.metadata.owner_references = Some(vec![new_controller_ref(&other)]);
    fake.seed(&foreign);
    let dying = Pod {
        metadata: ObjectMeta {
            name: Some("dying".into()),
            namespace: Some("ns".into()),
            labels: labels(&[("app", "web")]),
            deletion_timestamp: parse_time("2025-01-01T00:00:00Z"),
            ..Default::default()
        },
        ..Default::default()
    };
    fake.seed(&dying);
    fake.clear_writes();
    run(&fake);
    assert_eq!(fake.count(Verb::Patch, "Pod"), 0);
    assert_eq!(fake.count(Verb::Create, "Pod"), 1);
}

#[test]
fn gone_or_deleting_replicaset_is_a_no_op() {
    let fake = FakeCluster::new();
    run(&fake);
    let mut r = rs(3);
    r.metadata.deletion_timestamp = parse_time("2025-01-01T00:00:00Z");
    fake.seed(&r);
    run(&fake);
    assert!(fake.writes().is_empty());
}

#[test]
fn empty_selector_is_refused() {
    let fake = FakeCluster::new();
    let mut r = rs(1);
    r.spec.as_mut().unwrap().selector = LabelSelector::default();
    fake.create("ns", &r).unwrap();
    fake.clear_writes();
    run(&fake);
    assert!(fake.writes().is_empty());
    assert_eq!(fake.logs().len(), 1);
}

fn ready_since(t: &str) -> impl Fn(&mut Pod) {
    let t = t.to_owned();
    move |p: &mut Pod| {
        ready(p);
        let c = &mut p.status.as_mut().unwrap().conditions.as_mut().unwrap()[0];
        c.last_transition_time = parse_time(&t);
    }
}

fn reconcile_at(fake: &FakeCluster, now: &str) -> Outcome {
    fake.set_now(now);
    ReplicaSetController::reconcile(fake, &ObjectKey::of::<ReplicaSet>("ns", "web")).unwrap()
}

#[test]
fn min_ready_seconds_delays_availability_and_requeues_until_due() {
    let fake = FakeCluster::new();
    let mut r = rs(2);
    r.spec.as_mut().unwrap().min_ready_seconds = Some(30);
    fake.create("ns", &r).unwrap();
    run(&fake);
    set_pods(&fake, ready_since("2025-01-01T00:00:10Z"));
    // Ready for 5s of the 30 required: ready but not available, look again in 25s.
    assert_eq!(
        reconcile_at(&fake, "2025-01-01T00:00:15Z"),
        Outcome::requeue_after_ms(25_000)
    );
    let st = stored(&fake).status.unwrap();
    assert_eq!(
        (st.ready_replicas, st.available_replicas),
        (Some(2), Some(0))
    );
    // Exactly at lastTransitionTime + minReadySeconds the pods count.
    assert_eq!(reconcile_at(&fake, "2025-01-01T00:00:40Z"), Outcome::done());
    assert_eq!(stored(&fake).status.unwrap().available_replicas, Some(2));
}

#[test]
fn min_ready_seconds_ignores_ready_pods_without_transition_time() {
    let fake = FakeCluster::new();
    let mut r = rs(1);
    r.spec.as_mut().unwrap().min_ready_seconds = Some(5);
    fake.create("ns", &r).unwrap();
    run(&fake);
    set_pods(&fake, ready);
    assert_eq!(reconcile_at(&fake, "2025-01-02T00:00:00Z"), Outcome::done());
    let st = stored(&fake).status.unwrap();
    assert_eq!(
        (st.ready_replicas, st.available_replicas),
        (Some(1), Some(0))
    );
}
