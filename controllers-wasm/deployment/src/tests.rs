use super::*;
use k8s_openapi::api::apps::v1::{DeploymentSpec, ReplicaSetStatus};
use k8s_openapi::api::core::v1::{Container, PodSpec};
use k8s_openapi::apimachinery::pkg::apis::meta::v1::LabelSelector;
use kedge_guest::{FakeCluster, Verb};

fn labels(pairs: &[(&str, &str)]) -> Option<std::collections::BTreeMap<String, String>> {
    Some(
        pairs
            .iter()
            .map(|(k, v)| (k.to_string(), v.to_string()))
            .collect(),
    )
}

fn deployment(replicas: i32, image: &str) -> Deployment {
    Deployment {
        metadata: ObjectMeta {
            name: Some("web".into()),
            namespace: Some("ns".into()),
            ..Default::default()
        },
        spec: Some(DeploymentSpec {
            replicas: Some(replicas),
            selector: LabelSelector {
                match_labels: labels(&[("app", "web")]),
                ..Default::default()
            },
            template: PodTemplateSpec {
                metadata: Some(ObjectMeta {
                    labels: labels(&[("app", "web")]),
                    ..Default::default()
                }),
                spec: Some(PodSpec {
                    containers: vec![Container {
                        name: "c".into(),
                        image: Some(image.into()),
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

fn run(fake: &FakeCluster) {
    assert_eq!(
        DeploymentController::reconcile(fake, &ObjectKey::of::<Deployment>("ns", "web")).unwrap(),
        Outcome::done()
    );
}

fn deploy(fake: &FakeCluster) -> Deployment {
    fake.get::<Deployment>("ns", "web").unwrap().unwrap()
}

fn rss(fake: &FakeCluster) -> Vec<ReplicaSet> {
    let mut v = fake.list::<ReplicaSet>("ns", "").unwrap();
    v.sort_by_key(|r| revision(&r.metadata));
    v
}

/// Plays the ReplicaSet controller: reports `available` of the spec's replicas as up.
fn report(fake: &FakeCluster, rs: &ReplicaSet, available: i32) {
    let mut rs = fake
        .get::<ReplicaSet>("ns", rs.metadata.name.as_deref().unwrap())
        .unwrap()
        .unwrap();
    let replicas = spec_replicas(&rs);
    rs.status = Some(ReplicaSetStatus {
        replicas,
        ready_replicas: Some(available),
        available_replicas: Some(available),
        ..Default::default()
    });
    fake.seed(&rs);
}

fn set_spec(fake: &FakeCluster, f: impl Fn(&mut DeploymentSpec)) {
    let mut d = deploy(fake);
    f(d.spec.as_mut().unwrap());
    fake.update("ns", &d).unwrap();
}

fn condition(d: &Deployment, type_: &str) -> DeploymentCondition {
    d.status
        .clone()
        .unwrap()
        .conditions
        .unwrap()
        .into_iter()
        .find(|c| c.type_ == type_)
        .unwrap()
}

#[test]
fn creates_hashed_replica_set_from_scratch() {
    let fake = FakeCluster::new();
    fake.create("ns", &deployment(3, "nginx:1")).unwrap();
    fake.clear_writes();
    run(&fake);
    assert_eq!(fake.count(Verb::Create, "ReplicaSet"), 1);
    let d = deploy(&fake);
    let hash = pod_template_hash(&d.spec.as_ref().unwrap().template);
    let events = fake
        .list::<k8s_openapi::api::core::v1::Event>("ns", "")
        .unwrap();
    assert_eq!(
        events[0].message.as_deref(),
        Some(format!("Scaled up replica set web-{hash} from 0 to 3").as_str())
    );
    let rs = &rss(&fake)[0];
    assert_eq!(
        rs.metadata.name.as_deref(),
        Some(format!("web-{hash}").as_str())
    );
    assert_eq!(revision(&rs.metadata), 1);
    assert_eq!(
        controller_of(&rs.metadata).unwrap().uid,
        d.metadata.uid.clone().unwrap()
    );
    let spec = rs.spec.as_ref().unwrap();
    assert_eq!(spec.replicas, Some(3));
    assert_eq!(
        spec.selector.match_labels,
        labels(&[("app", "web"), ("pod-template-hash", &hash)])
    );
    assert_eq!(
        spec.template
            .as_ref()
            .unwrap()
            .metadata
            .as_ref()
            .unwrap()
            .labels,
        labels(&[("app", "web"), ("pod-template-hash", &hash)])
    );
    assert_eq!(
        d.metadata
            .annotations
            .unwrap()
            .get(REVISION_ANNOTATION)
            .map(String::as_str),
        Some("1")
    );
    let st = d.status.clone().unwrap();
    assert_eq!(
        (st.replicas, st.unavailable_replicas, st.observed_generation),
        (Some(0), Some(3), Some(1))
    );
    assert_eq!(
        condition(&deploy(&fake), "Available").reason.as_deref(),
        Some("MinimumReplicasUnavailable")
    );
    assert_eq!(
        condition(&deploy(&fake), "Progressing").reason.as_deref(),
        Some("ReplicaSetUpdated")
    );
}

#[test]
fn becomes_available_then_converges_without_writes() {
    let fake = FakeCluster::new();
    fake.create("ns", &deployment(2, "nginx:1")).unwrap();
    run(&fake);
    report(&fake, &rss(&fake)[0], 2);
    fake.set_now("2025-01-01T00:01:00Z");
    run(&fake);
    let d = deploy(&fake);
    let st = d.status.clone().unwrap();
    assert_eq!(
        (
            st.replicas,
            st.updated_replicas,
            st.available_replicas,
            st.unavailable_replicas
        ),
        (Some(2), Some(2), Some(2), Some(0))
    );
    let avail = condition(&d, "Available");
    assert_eq!(
        (avail.status.as_str(), avail.last_transition_time.clone()),
        ("True", parse_time("2025-01-01T00:01:00Z"))
    );
    assert_eq!(
        condition(&d, "Progressing").reason.as_deref(),
        Some("NewReplicaSetAvailable")
    );
    assert_eq!(
        condition(&d, "Progressing").last_transition_time,
        parse_time("2025-01-01T00:00:00Z"),
        "status stayed True"
    );
    fake.clear_writes();
    fake.set_now("2025-01-01T00:02:00Z");
    run(&fake);
    assert!(fake.writes().is_empty(), "converged: {:?}", fake.writes());
}

#[test]
fn scales_the_current_replica_set_up_and_down() {
    let fake = FakeCluster::new();
    fake.create("ns", &deployment(2, "nginx:1")).unwrap();
    run(&fake);
    for n in [5, 1] {
        set_spec(&fake, |s| s.replicas = Some(n));
        fake.clear_writes();
        run(&fake);
        assert_eq!(fake.count(Verb::Patch, "ReplicaSet"), 1);
        assert_eq!(fake.count(Verb::Create, "ReplicaSet"), 0);
        assert_eq!(rss(&fake)[0].spec.as_ref().unwrap().replicas, Some(n));
    }
}

#[test]
fn rollout_keeps_old_pods_until_new_ones_are_available() {
    let fake = FakeCluster::new();
    fake.create("ns", &deployment(2, "nginx:1")).unwrap();
    run(&fake);
    report(&fake, &rss(&fake)[0], 2);
    run(&fake);
    set_spec(&fake, |s| {
        s.template.spec.as_mut().unwrap().containers[0].image = Some("nginx:2".into())
    });
    run(&fake);
    let [old, new] = <[ReplicaSet; 2]>::try_from(rss(&fake)).unwrap();
    assert_eq!((revision(&old.metadata), revision(&new.metadata)), (1, 2));
    assert_eq!(
        (spec_replicas(&old), spec_replicas(&new)),
        (2, 2),
        "no downtime: old stays up"
    );
    assert_eq!(
        deploy(&fake).metadata.annotations.unwrap()[REVISION_ANNOTATION],
        "2"
    );

    report(&fake, &new, 1);
    run(&fake);
    assert_eq!(
        spec_replicas(&rss(&fake)[0]),
        2,
        "new not fully available yet"
    );
    report(&fake, &new, 2);
    run(&fake);
    assert_eq!(spec_replicas(&rss(&fake)[0]), 0);
    report(&fake, &rss(&fake)[0], 0);
    run(&fake);
    let d = deploy(&fake);
    assert_eq!(
        condition(&d, "Progressing").reason.as_deref(),
        Some("NewReplicaSetAvailable")
    );
    assert_eq!(d.status.unwrap().updated_replicas, Some(2));
}

#[test]
fn rollback_reuses_the_old_replica_set_with_a_new_revision() {
    let fake = FakeCluster::new();
    fake.create("ns", &deployment(1, "nginx:1")).unwrap();
    run(&fake);
    set_spec(&fake, |s| {
        s.template.spec.as_mut().unwrap().containers[0].image = Some("nginx:2".into())
    });
    run(&fake);
    set_spec(&fake, |s| {
        s.template.spec.as_mut().unwrap().containers[0].image = Some("nginx:1".into())
    });
    fake.clear_writes();
    run(&fake);
    assert_eq!(fake.count(Verb::Create, "ReplicaSet"), 0);
    let revs: Vec<_> = rss(&fake)
        .iter()
        .map(|r| {
            (
                r.spec
                    .as_ref()
                    .unwrap()
                    .template
                    .as_ref()
                    .unwrap()
                    .spec
                    .as_ref()
                    .unwrap()
                    .containers[0]
                    .image
                    .clone()
                    .unwrap(),
                revision(&r.metadata),
            )
        })
        .collect();
    assert_eq!(
        revs,
        [("nginx:2".to_string(), 2), ("nginx:1".to_string(), 3)]
    );
    assert_eq!(
        deploy(&fake).metadata.annotations.unwrap()[REVISION_ANNOTATION],
        "3"
    );
}

#[test]
fn paused_only_scales() {
    let fake = FakeCluster::new();
    fake.create("ns", &deployment(2, "nginx:1")).unwrap();
    run(&fake);
    set_spec(&fake, |s| {
        s.paused = Some(true);
        s.replicas = Some(4);
        s.template.spec.as_mut().unwrap().containers[0].image = Some("nginx:2".into());
    });
    fake.clear_writes();
    run(&fake);
    assert_eq!(fake.count(Verb::Create, "ReplicaSet"), 0);
    assert_eq!(rss(&fake).len(), 1);
    assert_eq!(spec_replicas(&rss(&fake)[0]), 4);
    assert_eq!(
        condition(&deploy(&fake), "Progressing").reason.as_deref(),
        Some("DeploymentPaused")
    );
}

#[test]
fn paused_before_first_rollout_creates_nothing() {
    let fake = FakeCluster::new();
    let mut d = deployment(2, "nginx:1");
    d.spec.as_mut().unwrap().paused = Some(true);
    fake.create("ns", &d).unwrap();
    fake.clear_writes();
    run(&fake);
    assert_eq!(fake.count(Verb::Create, "ReplicaSet"), 0);
    assert_eq!(fake.count(Verb::UpdateStatus, "Deployment"), 1);
}

#[test]
fn ignores_replica_sets_it_does_not_own_and_missing_deployments() {
    let fake = FakeCluster::new();
    run(&fake);
    fake.create("ns", &deployment(1, "nginx:1")).unwrap();
    run(&fake);
    let mut foreign = rss(&fake)[0].clone();
    foreign.metadata = ObjectMeta {
        name: Some("foreign".into()),
        namespace: Some("ns".into()),
        ..Default::default()
    };
    fake.seed(&foreign);
    fake.clear_writes();
    run(&fake);
    assert_eq!(fake.count(Verb::Patch, "ReplicaSet"), 0);
    assert_eq!(fake.count(Verb::Create, "ReplicaSet"), 0);
}
