use super::*;
use k8s_openapi::api::apps::v1::ReplicaSetStatus;
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

fn run(fake: &FakeCluster) -> Outcome {
    DeploymentController::reconcile(fake, &ObjectKey::of::<Deployment>("ns", "web")).unwrap()
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
        observed_generation: rs.metadata.generation,
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
    let progressing = condition(&deploy(&fake), "Progressing");
    assert_eq!(
        (
            progressing.reason.as_deref(),
            progressing.message.as_deref()
        ),
        (
            Some("NewReplicaSetCreated"),
            Some(format!("Created new replica set \"web-{hash}\"").as_str())
        )
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
    // Controlled by something else: never adopted, never scaled.
    foreign.metadata = ObjectMeta {
        name: Some("foreign".into()),
        namespace: Some("ns".into()),
        labels: foreign.metadata.labels.clone(),
        owner_references: Some(vec![
            k8s_openapi::apimachinery::pkg::apis::meta::v1::OwnerReference {
                api_version: "apps/v1".into(),
                kind: "Deployment".into(),
                name: "other".into(),
                uid: "uid-other".into(),
                controller: Some(true),
                ..Default::default()
            },
        ]),
        ..Default::default()
    };
    fake.seed(&foreign);
    fake.clear_writes();
    run(&fake);
    assert_eq!(fake.count(Verb::Patch, "ReplicaSet"), 0);
    assert_eq!(fake.count(Verb::Create, "ReplicaSet"), 0);
}

fn image(rs: &ReplicaSet) -> String {
    rs.spec
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
        .unwrap()
}

fn set_image(fake: &FakeCluster, img: &str) {
    set_spec(fake, |s| {
        s.template.spec.as_mut().unwrap().containers[0].image = Some(img.into())
    });
}

fn rs_writes(fake: &FakeCluster) -> usize {
    fake.writes()
        .iter()
        .filter(|w| w.kind == "ReplicaSet")
        .count()
}

/// Plays the ReplicaSet controller and the pods between Deployment reconciles: every
/// ReplicaSet has its `spec.replicas` pods, of which `available(rs)` are available. Runs the
/// Deployment until it writes nothing (each write would enqueue it again), returning the
/// `(image, spec.replicas)` of every ReplicaSet, by revision, after each run that changed
/// ReplicaSets.
fn settle(fake: &FakeCluster, available: impl Fn(&ReplicaSet) -> i32) -> Vec<Vec<(String, i32)>> {
    let mut steps = Vec::new();
    for _ in 0..50 {
        for rs in rss(fake) {
            report(fake, &rs, available(&rs).min(spec_replicas(&rs)));
        }
        fake.clear_writes();
        run(fake);
        if fake.writes().iter().all(|w| w.kind == "Event") {
            return steps;
        }
        if rs_writes(fake) > 0 {
            steps.push(
                rss(fake)
                    .iter()
                    .map(|r| (image(r), spec_replicas(r)))
                    .collect(),
            );
        }
    }
    panic!("no convergence: {steps:?}");
}

fn rolling(fake: &FakeCluster, surge: IntOrString, unavailable: IntOrString) {
    set_spec(fake, |s| {
        s.strategy = Some(k8s_openapi::api::apps::v1::DeploymentStrategy {
            type_: Some("RollingUpdate".into()),
            rolling_update: Some(k8s_openapi::api::apps::v1::RollingUpdateDeployment {
                max_surge: Some(surge.clone()),
                max_unavailable: Some(unavailable.clone()),
            }),
        })
    });
}

/// A Deployment at `replicas`, rolled out and fully available on nginx:1.
fn available_deployment(replicas: i32) -> FakeCluster {
    let fake = FakeCluster::new();
    fake.create("ns", &deployment(replicas, "nginx:1")).unwrap();
    settle(&fake, spec_replicas);
    settle(&fake, spec_replicas);
    let p = condition(&deploy(&fake), "Progressing");
    assert_eq!(p.reason.as_deref(), Some("NewReplicaSetAvailable"));
    fake
}

fn one(img: &str, n: i32) -> (String, i32) {
    (img.to_string(), n)
}

#[test]
fn rolling_update_proceeds_step_by_step_as_pods_become_available() {
    // Default strategy, 25%/25% of 4: one pod over, one pod short at most.
    let fake = available_deployment(4);
    set_image(&fake, "nginx:2");
    let steps = settle(&fake, spec_replicas);
    assert_eq!(
        steps,
        [
            vec![one("nginx:1", 3), one("nginx:2", 1)],
            vec![one("nginx:1", 3), one("nginx:2", 2)],
            vec![one("nginx:1", 1), one("nginx:2", 2)],
            vec![one("nginx:1", 1), one("nginx:2", 4)],
            vec![one("nginx:1", 0), one("nginx:2", 4)],
        ]
    );
    for step in &steps {
        let total: i32 = step.iter().map(|s| s.1).sum();
        assert!(total <= 5, "within replicas + maxSurge: {step:?}");
    }
    run(&fake);
    let d = deploy(&fake);
    let p = condition(&d, "Progressing");
    assert_eq!(
        (p.status.as_str(), p.reason.as_deref()),
        ("True", Some("NewReplicaSetAvailable"))
    );
    let st = d.status.unwrap();
    assert_eq!(
        (
            st.replicas,
            st.updated_replicas,
            st.available_replicas,
            st.unavailable_replicas
        ),
        (Some(4), Some(4), Some(4), Some(0))
    );
    assert_eq!(
        run(&fake),
        Outcome::done(),
        "complete: no deadline to watch"
    );
}

#[test]
fn max_surge_one_max_unavailable_zero_replaces_one_pod_at_a_time() {
    let fake = available_deployment(3);
    rolling(&fake, IntOrString::Int(1), IntOrString::Int(0));
    set_image(&fake, "nginx:2");
    let steps = settle(&fake, spec_replicas);
    assert_eq!(
        steps,
        [
            vec![one("nginx:1", 3), one("nginx:2", 1)],
            vec![one("nginx:1", 2), one("nginx:2", 1)],
            vec![one("nginx:1", 2), one("nginx:2", 2)],
            vec![one("nginx:1", 1), one("nginx:2", 2)],
            vec![one("nginx:1", 1), one("nginx:2", 3)],
            vec![one("nginx:1", 0), one("nginx:2", 3)],
        ]
    );
}

#[test]
fn unready_template_stops_at_max_unavailable_then_misses_its_deadline() {
    let fake = available_deployment(4);
    set_spec(&fake, |s| s.progress_deadline_seconds = Some(60));
    set_image(&fake, "nginx:2");
    // The new pods never become ready; old ones stay healthy.
    let never = |rs: &ReplicaSet| {
        if image(rs) == "nginx:2" {
            0
        } else {
            spec_replicas(rs)
        }
    };
    let steps = settle(&fake, never);
    assert_eq!(
        steps.last().unwrap(),
        &vec![one("nginx:1", 3), one("nginx:2", 2)],
        "3 = replicas - maxUnavailable old pods keep serving, 5 = replicas + maxSurge in all: {steps:?}"
    );
    let d = deploy(&fake);
    let new_name = rss(&fake)[1].metadata.name.clone().unwrap();
    let st = d.status.clone().unwrap();
    assert_eq!(
        (
            st.replicas,
            st.updated_replicas,
            st.available_replicas,
            st.unavailable_replicas
        ),
        (Some(5), Some(2), Some(3), Some(2))
    );
    assert_eq!(condition(&d, "Available").status, "True", "3 >= 4 - 1");
    let p = condition(&d, "Progressing");
    assert_eq!(
        (p.status.as_str(), p.reason.as_deref()),
        ("True", Some("ReplicaSetUpdated"))
    );
    // No event will come: the reconcile asks to look again just after the deadline.
    assert_eq!(run(&fake), Outcome::requeue_after_ms(61_000));
    fake.set_now("2025-01-01T00:00:59Z");
    assert_eq!(run(&fake), Outcome::requeue_after_ms(2_000));
    assert_eq!(
        condition(&deploy(&fake), "Progressing").reason.as_deref(),
        Some("ReplicaSetUpdated")
    );
    fake.set_now("2025-01-01T00:01:01Z");
    assert_eq!(run(&fake), Outcome::done());
    let p = condition(&deploy(&fake), "Progressing");
    assert_eq!(
        (p.status.as_str(), p.reason.as_deref(), p.message.as_deref()),
        (
            "False",
            Some("ProgressDeadlineExceeded"),
            Some(format!("ReplicaSet \"{new_name}\" has timed out progressing.").as_str())
        )
    );
    assert_eq!(
        rss(&fake)
            .iter()
            .map(|r| (image(r), spec_replicas(r)))
            .collect::<Vec<_>>(),
        [one("nginx:1", 3), one("nginx:2", 2)],
        "a missed deadline changes nothing else"
    );
    // Progress again (the pods finally became ready): the rollout resumes and completes.
    let steps = settle(&fake, spec_replicas);
    assert_eq!(
        steps.last().unwrap(),
        &vec![one("nginx:1", 0), one("nginx:2", 4)]
    );
    run(&fake);
    assert_eq!(
        condition(&deploy(&fake), "Progressing").reason.as_deref(),
        Some("NewReplicaSetAvailable")
    );
}

#[test]
fn recreate_waits_for_old_pods_to_be_gone_before_creating_new_ones() {
    let fake = available_deployment(3);
    set_spec(&fake, |s| {
        s.strategy = Some(k8s_openapi::api::apps::v1::DeploymentStrategy {
            type_: Some("Recreate".into()),
            rolling_update: None,
        })
    });
    set_image(&fake, "nginx:2");
    run(&fake);
    let old = rss(&fake);
    assert_eq!(old.len(), 1, "no new ReplicaSet while old pods run");
    assert_eq!(spec_replicas(&old[0]), 0);
    // The ReplicaSet controller has not caught up: its status still shows 3 pods.
    assert_eq!(run(&fake), Outcome::requeue_after_ms(2_000));
    assert_eq!(rss(&fake).len(), 1);
    // It has; one pod is still terminating.
    report(&fake, &old[0], 0);
    let mut pod = Pod::default();
    pod.metadata.name = Some("web-old-1".into());
    pod.metadata.namespace = Some("ns".into());
    pod.metadata.owner_references = Some(vec![new_controller_ref(&old[0])]);
    pod.metadata.deletion_timestamp = parse_time("2025-01-01T00:00:00Z");
    pod.status = Some(k8s_openapi::api::core::v1::PodStatus {
        phase: Some("Running".into()),
        ..Default::default()
    });
    fake.seed(&pod);
    assert_eq!(run(&fake), Outcome::requeue_after_ms(2_000));
    assert_eq!(rss(&fake).len(), 1);
    // Gone: the new ReplicaSet starts at full size.
    fake.delete::<Pod>("ns", "web-old-1").unwrap();
    fake.clear_writes();
    run(&fake);
    let all = rss(&fake);
    assert_eq!(
        all.iter()
            .map(|r| (image(r), spec_replicas(r)))
            .collect::<Vec<_>>(),
        [one("nginx:1", 0), one("nginx:2", 3)]
    );
    let events: Vec<String> = fake
        .list::<k8s_openapi::api::core::v1::Event>("ns", "")
        .unwrap()
        .into_iter()
        .filter_map(|e| e.message)
        .collect();
    let new_name = all[1].metadata.name.clone().unwrap();
    let old_name = all[0].metadata.name.clone().unwrap();
    assert!(events.contains(&format!("Scaled down replica set {old_name} from 3 to 0")));
    assert!(events.contains(&format!("Scaled up replica set {new_name} from 0 to 3")));
    // Recreate allows no unavailability: Available only with every pod up.
    assert_eq!(condition(&deploy(&fake), "Available").status, "False");
    settle(&fake, spec_replicas);
    run(&fake);
    assert_eq!(condition(&deploy(&fake), "Available").status, "True");
}

#[test]
fn min_ready_seconds_is_copied_into_replica_sets() {
    let fake = FakeCluster::new();
    let mut d = deployment(2, "nginx:1");
    d.spec.as_mut().unwrap().min_ready_seconds = Some(10);
    fake.create("ns", &d).unwrap();
    run(&fake);
    assert_eq!(
        rss(&fake)[0].spec.as_ref().unwrap().min_ready_seconds,
        Some(10)
    );
    set_spec(&fake, |s| s.min_ready_seconds = Some(30));
    fake.clear_writes();
    run(&fake);
    assert_eq!(
        fake.count(Verb::Create, "ReplicaSet"),
        0,
        "not a new template"
    );
    assert_eq!(
        rss(&fake)[0].spec.as_ref().unwrap().min_ready_seconds,
        Some(30)
    );
}

/// The Deployment and the ReplicaSet controller together, pods turning ready as time
/// passes: an old pod goes only once a new one has been ready for minReadySeconds.
#[test]
fn rollout_waits_for_min_ready_seconds_with_the_replica_set_controller() {
    let fake = available_deployment(2);
    rolling(&fake, IntOrString::Int(1), IntOrString::Int(0));
    set_spec(&fake, |s| s.min_ready_seconds = Some(30));
    set_image(&fake, "nginx:2");
    let mut t = 0;
    let mut first_old_scale_down = None;
    for _ in 0..40 {
        let now = format!("2025-01-01T00:{:02}:{:02}Z", t / 60, t % 60);
        fake.set_now(&now);
        // Twice: a ReplicaSet's status change enqueues the Deployment at once.
        for _ in 0..2 {
            run(&fake);
            for rs in rss(&fake) {
                let key = ObjectKey::of::<ReplicaSet>("ns", rs.metadata.name.as_deref().unwrap());
                kedge_podset::reconcile::<ReplicaSet>(&fake, &key, "test").unwrap();
            }
        }
        // Pods created by now turn ready now (their Ready transition time).
        for mut p in fake.list::<Pod>("ns", "").unwrap() {
            if !kedge_guest::pod::is_ready(&p) {
                p.status = Some(k8s_openapi::api::core::v1::PodStatus {
                    phase: Some("Running".into()),
                    conditions: Some(vec![k8s_openapi::api::core::v1::PodCondition {
                        type_: "Ready".into(),
                        status: "True".into(),
                        last_transition_time: parse_time(&now),
                        ..Default::default()
                    }]),
                    ..Default::default()
                });
                fake.seed(&p);
            }
        }
        let all = rss(&fake);
        if all.len() == 2 && spec_replicas(&all[0]) < 2 && first_old_scale_down.is_none() {
            first_old_scale_down = Some(t);
        }
        if all.len() == 2 && spec_replicas(&all[0]) == 0 {
            break;
        }
        t += 10;
    }
    // Old pods were ready for long; the first new pod is created at t=0, ready at t=0, and
    // available at t=30: the old ReplicaSet shrinks only then.
    assert_eq!(first_old_scale_down, Some(30));
    assert_eq!(
        rss(&fake)
            .iter()
            .map(|r| (image(r), spec_replicas(r)))
            .collect::<Vec<_>>(),
        [one("nginx:1", 0), one("nginx:2", 2)]
    );
}

#[test]
fn revision_history_limit_deletes_oldest_scaled_down_replica_sets() {
    let fake = available_deployment(1);
    set_spec(&fake, |s| s.revision_history_limit = Some(1));
    for img in ["nginx:2", "nginx:3", "nginx:4"] {
        set_image(&fake, img);
        settle(&fake, spec_replicas);
    }
    let left: Vec<(String, u64)> = rss(&fake)
        .iter()
        .map(|r| (image(r), revision(&r.metadata)))
        .collect();
    assert_eq!(
        left,
        [("nginx:3".to_string(), 3), ("nginx:4".to_string(), 4)],
        "one old ReplicaSet kept"
    );
    // A ReplicaSet that still has pods is never deleted, whatever the limit.
    set_spec(&fake, |s| s.revision_history_limit = Some(0));
    set_image(&fake, "nginx:5");
    run(&fake);
    run(&fake);
    assert!(rss(&fake).iter().any(|r| image(r) == "nginx:4"));
    settle(&fake, spec_replicas);
    settle(&fake, spec_replicas);
    let left: Vec<String> = rss(&fake).iter().map(image).collect();
    assert_eq!(left, ["nginx:5"]);
}

fn orphan(name: &str, img: &str, replicas: i32) -> ReplicaSet {
    let d = deployment(replicas, img);
    let spec = d.spec.unwrap();
    ReplicaSet {
        metadata: ObjectMeta {
            name: Some(name.into()),
            namespace: Some("ns".into()),
            labels: labels(&[("app", "web")]),
            ..Default::default()
        },
        spec: Some(ReplicaSetSpec {
            replicas: Some(replicas),
            selector: spec.selector,
            template: Some(spec.template),
            min_ready_seconds: None,
        }),
        status: Some(ReplicaSetStatus {
            replicas,
            available_replicas: Some(replicas),
            ready_replicas: Some(replicas),
            observed_generation: Some(1),
            ..Default::default()
        }),
    }
}

#[test]
fn adopts_orphaned_replica_sets_and_rolls_them_over() {
    let fake = FakeCluster::new();
    fake.seed(&orphan("legacy", "nginx:0", 2));
    let mut other = orphan("unrelated", "nginx:0", 1);
    other.metadata.labels = labels(&[("app", "db")]);
    fake.seed(&other);
    fake.create("ns", &deployment(2, "nginx:1")).unwrap();
    run(&fake);
    let d = deploy(&fake);
    let legacy = fake.get::<ReplicaSet>("ns", "legacy").unwrap().unwrap();
    let owner = controller_of(&legacy.metadata).expect("adopted");
    assert_eq!(
        (
            owner.uid.as_str(),
            owner.kind.as_str(),
            owner.block_owner_deletion
        ),
        (d.metadata.uid.as_deref().unwrap(), "Deployment", Some(true))
    );
    let unrelated = fake.get::<ReplicaSet>("ns", "unrelated").unwrap().unwrap();
    assert!(unrelated.metadata.owner_references.is_none());
    // The adopted one is old: the new template rolls over it.
    settle(&fake, spec_replicas);
    assert_eq!(
        spec_replicas(&fake.get::<ReplicaSet>("ns", "legacy").unwrap().unwrap()),
        0
    );
    assert_eq!(
        spec_replicas(&fake.get::<ReplicaSet>("ns", "unrelated").unwrap().unwrap()),
        1
    );
}

#[test]
fn adopted_replica_set_with_the_current_template_is_the_new_one() {
    let fake = FakeCluster::new();
    fake.seed(&orphan("legacy", "nginx:1", 2));
    fake.create("ns", &deployment(2, "nginx:1")).unwrap();
    fake.clear_writes();
    run(&fake);
    assert_eq!(fake.count(Verb::Create, "ReplicaSet"), 0);
    let d = deploy(&fake);
    let p = condition(&d, "Progressing");
    assert_eq!(
        (p.reason.as_deref(), p.message.as_deref()),
        (
            Some("NewReplicaSetAvailable"),
            Some("ReplicaSet \"legacy\" has successfully progressed.")
        )
    );
    assert_eq!(d.metadata.annotations.unwrap()[REVISION_ANNOTATION], "1");
}

#[test]
fn resize_during_a_rollout_is_spread_proportionally() {
    let fake = available_deployment(4);
    set_image(&fake, "nginx:2");
    let never = |rs: &ReplicaSet| {
        if image(rs) == "nginx:2" {
            0
        } else {
            spec_replicas(rs)
        }
    };
    settle(&fake, never);
    // Stuck at 3 old + 2 new, both last scaled for 4 replicas (max 5).
    set_spec(&fake, |s| s.replicas = Some(8));
    fake.clear_writes();
    run(&fake);
    // 8 replicas, surge 2: 10 allowed, 5 more spread 3:2 by size.
    assert_eq!(
        rss(&fake)
            .iter()
            .map(|r| (image(r), spec_replicas(r)))
            .collect::<Vec<_>>(),
        [one("nginx:1", 6), one("nginx:2", 4)]
    );
    let new = &rss(&fake)[1];
    let ann = new.metadata.annotations.as_ref().unwrap();
    assert_eq!(
        (
            ann[DESIRED_REPLICAS_ANNOTATION].as_str(),
            ann[MAX_REPLICAS_ANNOTATION].as_str()
        ),
        ("8", "10")
    );
}

#[test]
fn pause_then_resume_reports_it_and_resumes_the_rollout() {
    let fake = available_deployment(2);
    set_spec(&fake, |s| s.paused = Some(true));
    set_image(&fake, "nginx:2");
    assert_eq!(run(&fake), Outcome::done());
    let p = condition(&deploy(&fake), "Progressing");
    assert_eq!(
        (p.status.as_str(), p.reason.as_deref(), p.message.as_deref()),
        (
            "Unknown",
            Some("DeploymentPaused"),
            Some("Deployment is paused")
        )
    );
    assert_eq!(rss(&fake).len(), 1, "paused: no rollout");
    set_spec(&fake, |s| s.paused = Some(false));
    run(&fake);
    assert_eq!(rss(&fake).len(), 2);
    // Resumed, then at once the rollout's own news (as in Kubernetes).
    let p = condition(&deploy(&fake), "Progressing");
    assert_eq!(
        (p.status.as_str(), p.reason.as_deref()),
        ("True", Some("NewReplicaSetCreated"))
    );
    settle(&fake, spec_replicas);
    run(&fake);
    assert_eq!(
        condition(&deploy(&fake), "Progressing").reason.as_deref(),
        Some("NewReplicaSetAvailable")
    );
}
