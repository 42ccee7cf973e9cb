use super::*;
use kedge_guest::{FakeCluster, Verb};

fn sts_json(replicas: i32, policy: &str) -> Value {
    json!({
        "apiVersion": "apps/v1", "kind": "StatefulSet",
        "metadata": {"name": "web", "namespace": "ns"},
        "spec": {
            "replicas": replicas,
            "serviceName": "web-svc",
            "podManagementPolicy": policy,
            "selector": {"matchLabels": {"app": "web"}},
            "updateStrategy": {"type": "RollingUpdate", "rollingUpdate": {"partition": 0}},
            "revisionHistoryLimit": 10,
            "template": {
                "metadata": {"labels": {"app": "web"}},
                "spec": {"containers": [{"name": "hello", "image": "hello:v1"}]}
            }
        }
    })
}

fn setup(replicas: i32, policy: &str) -> FakeCluster {
    let fake = FakeCluster::new();
    fake.create_object("apps/v1", "StatefulSet", "ns", &sts_json(replicas, policy))
        .unwrap();
    fake.clear_writes();
    fake
}

fn run(fake: &FakeCluster) {
    assert_eq!(
        StatefulSetController::reconcile(fake, &ObjectKey::of::<StatefulSet>("ns", "web")).unwrap(),
        Outcome::done()
    );
}

fn stored(fake: &FakeCluster) -> StatefulSet {
    fake.get::<StatefulSet>("ns", "web").unwrap().unwrap()
}

fn status(fake: &FakeCluster) -> StatefulSetStatus {
    stored(fake).status.unwrap()
}

fn patch_spec(fake: &FakeCluster, spec: Value) {
    fake.patch_object(
        "apps/v1",
        "StatefulSet",
        "ns",
        "web",
        &json!({"spec": spec}),
    )
    .unwrap();
}

fn pod(fake: &FakeCluster, name: &str) -> Option<Pod> {
    fake.get::<Pod>("ns", name).unwrap()
}

fn names(fake: &FakeCluster) -> Vec<String> {
    fake.list::<Pod>("ns", "")
        .unwrap()
        .into_iter()
        .filter_map(|p| p.metadata.name)
        .collect()
}

fn set_phase(fake: &FakeCluster, name: &str, phase: &str, ready: bool) {
    let mut p = fake.object("v1", "Pod", "ns", name).unwrap();
    p["status"] = json!({"phase": phase, "conditions": [
        {"type": "Ready", "status": if ready { "True" } else { "False" }}]});
    fake.seed_json(p);
}

fn make_ready(fake: &FakeCluster, name: &str) {
    set_phase(fake, name, "Running", true);
}

fn image(p: &Pod) -> &str {
    p.spec.as_ref().unwrap().containers[0]
        .image
        .as_deref()
        .unwrap()
}

fn events(fake: &FakeCluster) -> Vec<String> {
    fake.list::<Event>("ns", "")
        .unwrap()
        .into_iter()
        .filter_map(|e| e.message)
        .collect()
}

/// Brings the StatefulSet up: each created pod turns ready before the next reconcile.
fn converge(fake: &FakeCluster) {
    for _ in 0..20 {
        run(fake);
        for n in names(fake) {
            if pod(fake, &n).is_some_and(|p| !healthy(&p)) {
                make_ready(fake, &n);
            }
        }
    }
    run(fake);
}

fn revisions(fake: &FakeCluster) -> Vec<ControllerRevision> {
    let mut r = fake.list::<ControllerRevision>("ns", "").unwrap();
    r.sort_by_key(|r| r.revision);
    r
}

#[test]
fn ordered_ready_creates_one_ordinal_at_a_time() {
    let fake = setup(3, "OrderedReady");
    run(&fake);
    assert_eq!(names(&fake), ["web-0"]);
    let p = pod(&fake, "web-0").unwrap();
    let labels = labels_of(&p.metadata);
    let update = status(&fake).update_revision.unwrap();
    assert_eq!(labels[POD_NAME_LABEL], "web-0");
    assert_eq!(labels[POD_INDEX_LABEL], "0");
    assert_eq!(labels[REVISION_LABEL], update);
    assert_eq!(labels["app"], "web");
    let spec = p.spec.as_ref().unwrap();
    assert_eq!(spec.hostname.as_deref(), Some("web-0"));
    assert_eq!(spec.subdomain.as_deref(), Some("web-svc"));
    let owner = controller_of(&p.metadata).unwrap();
    assert_eq!(
        (owner.kind.as_str(), owner.name.as_str()),
        ("StatefulSet", "web")
    );
    assert_eq!(
        events(&fake),
        ["create Pod web-0 in StatefulSet web successful"]
    );

    // web-0 pending, then running but not ready: nothing more.
    run(&fake);
    set_phase(&fake, "web-0", "Running", false);
    run(&fake);
    assert_eq!(names(&fake), ["web-0"]);

    make_ready(&fake, "web-0");
    run(&fake);
    assert_eq!(names(&fake), ["web-0", "web-1"]);
    run(&fake);
    assert_eq!(names(&fake), ["web-0", "web-1"]);
    make_ready(&fake, "web-1");
    run(&fake);
    assert_eq!(names(&fake), ["web-0", "web-1", "web-2"]);
    make_ready(&fake, "web-2");
    run(&fake);
    let st = status(&fake);
    assert_eq!(st.replicas, 3);
    assert_eq!(st.ready_replicas, Some(3));
    assert_eq!(st.available_replicas, Some(3));
    assert_eq!(st.current_replicas, Some(3));
    assert_eq!(st.updated_replicas, Some(3));
    assert_eq!(st.current_revision, st.update_revision);
    assert_eq!(st.observed_generation, Some(1));
    assert_eq!(st.collision_count, Some(0));
    // Converged: a further reconcile writes nothing.
    fake.clear_writes();
    run(&fake);
    assert!(fake.writes().is_empty(), "{:?}", fake.writes());
}

#[test]
fn parallel_creates_and_deletes_all_at_once() {
    let fake = setup(3, "Parallel");
    run(&fake);
    assert_eq!(names(&fake), ["web-0", "web-1", "web-2"]);
    assert_eq!(fake.count(Verb::Create, "Pod"), 3);
    patch_spec(&fake, json!({"replicas": 0}));
    run(&fake);
    assert!(names(&fake).is_empty());
    assert_eq!(fake.count(Verb::Delete, "Pod"), 3);
}

#[test]
fn scale_down_removes_highest_ordinal_first_one_at_a_time() {
    let fake = setup(3, "OrderedReady");
    converge(&fake);
    patch_spec(&fake, json!({"replicas": 1}));
    // An unhealthy survivor blocks scale-down.
    set_phase(&fake, "web-0", "Running", false);
    fake.clear_writes();
    run(&fake);
    assert_eq!(fake.count(Verb::Delete, "Pod"), 0);
    make_ready(&fake, "web-0");

    run(&fake);
    assert_eq!(names(&fake), ["web-0", "web-1"]);
    assert!(events(&fake).contains(&"delete Pod web-2 in StatefulSet web successful".into()));
    run(&fake);
    assert_eq!(names(&fake), ["web-0"]);
    run(&fake);
    let st = status(&fake);
    assert_eq!((st.replicas, st.ready_replicas), (1, Some(1)));
}

#[test]
fn scale_down_waits_for_a_terminating_pod_to_go() {
    let fake = setup(3, "OrderedReady");
    converge(&fake);
    let mut p = fake.object("v1", "Pod", "ns", "web-2").unwrap();
    p["metadata"]["deletionTimestamp"] = json!("2025-01-01T00:00:00Z");
    fake.seed_json(p);
    patch_spec(&fake, json!({"replicas": 1}));
    fake.clear_writes();
    run(&fake);
    assert_eq!(fake.count(Verb::Delete, "Pod"), 0);
    fake.delete::<Pod>("ns", "web-2").unwrap();
    run(&fake);
    assert_eq!(names(&fake), ["web-0"]);
}

#[test]
fn missing_and_failed_pods_are_recreated_under_their_name() {
    let fake = setup(3, "OrderedReady");
    converge(&fake);
    fake.delete::<Pod>("ns", "web-1").unwrap();
    run(&fake);
    assert_eq!(names(&fake), ["web-0", "web-1", "web-2"]);
    assert_eq!(
        pod(&fake, "web-1").unwrap().metadata.name.as_deref(),
        Some("web-1")
    );
    make_ready(&fake, "web-1");

    set_phase(&fake, "web-0", "Failed", false);
    fake.clear_writes();
    run(&fake);
    assert_eq!(fake.count(Verb::Delete, "Pod"), 1);
    assert!(pod(&fake, "web-0").is_none());
    run(&fake);
    let p = pod(&fake, "web-0").unwrap();
    assert_eq!(p.status.unwrap().phase.as_deref(), Some("Pending"));
}

#[test]
fn orphans_with_our_name_are_adopted_not_duplicated() {
    let fake = setup(1, "OrderedReady");
    fake.seed_json(json!({"apiVersion": "v1", "kind": "Pod",
        "metadata": {"name": "web-0", "namespace": "ns", "labels": {"app": "web"}},
        "spec": {"containers": [{"name": "hello", "image": "hello:v1"}]},
        "status": {"phase": "Running"}}));
    run(&fake);
    assert_eq!(fake.count(Verb::Create, "Pod"), 0);
    let p = pod(&fake, "web-0").unwrap();
    assert_eq!(controller_of(&p.metadata).unwrap().name, "web");
}

#[test]
fn partitioned_rolling_update_goes_step_by_step() {
    let fake = setup(3, "OrderedReady");
    converge(&fake);
    let rev1 = status(&fake).current_revision.unwrap();
    patch_spec(
        &fake,
        json!({"updateStrategy": {"rollingUpdate": {"partition": 1}},
               "template": {"spec": {"containers": [{"name": "hello", "image": "hello:v2"}]}}}),
    );
    fake.clear_writes();
    run(&fake);
    let st = status(&fake);
    let rev2 = st.update_revision.clone().unwrap();
    assert_ne!(rev1, rev2);
    assert_eq!(st.current_revision.as_deref(), Some(rev1.as_str()));
    // Highest ordinal first.
    assert!(pod(&fake, "web-2").is_none());
    assert_eq!(names(&fake), ["web-0", "web-1"]);

    run(&fake);
    let p2 = pod(&fake, "web-2").unwrap();
    assert_eq!(
        (image(&p2), revision_of(&p2)),
        ("hello:v2", Some(rev2.as_str()))
    );
    // web-1 waits until web-2 is Ready.
    run(&fake);
    assert!(pod(&fake, "web-1").is_some());
    assert_eq!(image(&pod(&fake, "web-1").unwrap()), "hello:v1");
    make_ready(&fake, "web-2");
    run(&fake);
    assert!(pod(&fake, "web-1").is_none());
    run(&fake);
    assert_eq!(image(&pod(&fake, "web-1").unwrap()), "hello:v2");
    make_ready(&fake, "web-1");
    run(&fake);
    run(&fake);
    // Below the partition: the old revision stays.
    let p0 = pod(&fake, "web-0").unwrap();
    assert_eq!(
        (image(&p0), revision_of(&p0)),
        ("hello:v1", Some(rev1.as_str()))
    );
    let st = status(&fake);
    assert_eq!(
        (st.current_replicas, st.updated_replicas, st.ready_replicas),
        (Some(1), Some(2), Some(3))
    );
    assert_eq!(st.current_revision.as_deref(), Some(rev1.as_str()));

    // A lost pod below the partition comes back at the old revision.
    fake.delete::<Pod>("ns", "web-0").unwrap();
    run(&fake);
    assert_eq!(image(&pod(&fake, "web-0").unwrap()), "hello:v1");
    make_ready(&fake, "web-0");

    // Partition 0 finishes the rollout; the update revision becomes current.
    patch_spec(
        &fake,
        json!({"updateStrategy": {"rollingUpdate": {"partition": 0}}}),
    );
    run(&fake);
    assert!(pod(&fake, "web-0").is_none());
    run(&fake);
    assert_eq!(image(&pod(&fake, "web-0").unwrap()), "hello:v2");
    make_ready(&fake, "web-0");
    run(&fake);
    let st = status(&fake);
    assert_eq!(st.current_revision.as_deref(), Some(rev2.as_str()));
    assert_eq!(
        (st.current_replicas, st.updated_replicas),
        (Some(3), Some(3))
    );
}

#[test]
fn on_delete_updates_only_pods_the_user_deletes() {
    let fake = setup(2, "OrderedReady");
    converge(&fake);
    patch_spec(
        &fake,
        json!({"updateStrategy": {"type": "OnDelete", "rollingUpdate": null},
               "template": {"spec": {"containers": [{"name": "hello", "image": "hello:v2"}]}}}),
    );
    fake.clear_writes();
    run(&fake);
    run(&fake);
    assert_eq!(fake.count(Verb::Delete, "Pod"), 0);
    assert_eq!(status(&fake).updated_replicas, Some(0));
    fake.delete::<Pod>("ns", "web-1").unwrap();
    run(&fake);
    assert_eq!(image(&pod(&fake, "web-1").unwrap()), "hello:v2");
    assert_eq!(image(&pod(&fake, "web-0").unwrap()), "hello:v1");
}

#[test]
fn revisions_record_templates_roll_back_and_are_trimmed() {
    let fake = setup(1, "Parallel");
    run(&fake);
    let revs = revisions(&fake);
    assert_eq!(revs.len(), 1);
    let r1 = &revs[0];
    let t = stored(&fake).spec.unwrap().template;
    let name1 = format!("web-{}", revision_hash(&t, 0));
    assert_eq!(r1.metadata.name.as_deref(), Some(name1.as_str()));
    assert_eq!(r1.revision, 1);
    assert_eq!(controller_of(&r1.metadata).unwrap().name, "web");
    let data = &r1.data.as_ref().unwrap().0;
    assert_eq!(data["spec"]["template"]["$patch"], "replace");
    assert_eq!(
        data["spec"]["template"]["spec"]["containers"][0]["image"],
        "hello:v1"
    );

    let set_image = |img: &str| {
        patch_spec(
            &fake,
            json!({"template": {"spec": {"containers": [{"name": "hello", "image": img}]}}}),
        )
    };
    set_image("hello:v2");
    converge(&fake);
    let revs = revisions(&fake);
    assert_eq!(revs.iter().map(|r| r.revision).collect::<Vec<_>>(), [1, 2]);

    // Back to v1: the old revision is reused and becomes the newest.
    set_image("hello:v1");
    run(&fake);
    let revs = revisions(&fake);
    assert_eq!(revs.len(), 2);
    assert_eq!(revs[1].metadata.name.as_deref(), Some(name1.as_str()));
    assert_eq!(revs[1].revision, 3);
    assert_eq!(
        status(&fake).update_revision.as_deref(),
        Some(name1.as_str())
    );
    converge(&fake);

    // History beyond the limit goes, oldest first; what is in use stays.
    patch_spec(&fake, json!({"revisionHistoryLimit": 1}));
    for img in ["hello:v3", "hello:v4", "hello:v5"] {
        set_image(img);
        converge(&fake);
    }
    let revs = revisions(&fake);
    assert_eq!(revs.len(), 2, "{revs:?}");
    assert_eq!(revs[1].revision, 6);
}

#[test]
fn revision_name_collisions_bump_the_count() {
    let fake = setup(1, "Parallel");
    let t = stored(&fake).spec.unwrap().template;
    // A foreign revision squats on the name the template would get.
    fake.seed_json(
        json!({"apiVersion": "apps/v1", "kind": "ControllerRevision",
        "metadata": {"name": format!("web-{}", revision_hash(&t, 0)), "namespace": "ns"},
        "revision": 1, "data": {}}),
    );
    run(&fake);
    let st = status(&fake);
    assert_eq!(st.collision_count, Some(1));
    assert_eq!(
        st.update_revision.unwrap(),
        format!("web-{}", revision_hash(&t, 1))
    );
}

#[test]
fn claims_become_node_local_volumes_pinned_to_their_node() {
    let fake = FakeCluster::new();
    let mut s = sts_json(1, "OrderedReady");
    s["spec"]["volumeClaimTemplates"] = json!([{"metadata": {"name": "data"},
        "spec": {"accessModes": ["ReadWriteOnce"]}}]);
    s["spec"]["template"]["spec"]["volumes"] = json!([{"name": "data", "emptyDir": {}}]);
    fake.create_object("apps/v1", "StatefulSet", "ns", &s)
        .unwrap();
    run(&fake);
    let p = pod(&fake, "web-0").unwrap();
    let spec = p.spec.unwrap();
    let vols = spec.volumes.unwrap();
    assert_eq!(vols.len(), 1);
    let hp = vols[0].host_path.as_ref().unwrap();
    assert_eq!(hp.path, "/var/lib/kedge/volumes/ns/data-web-0");
    assert_eq!(hp.type_.as_deref(), Some("DirectoryOrCreate"));
    assert!(
        spec.node_name.is_none(),
        "the first pod is scheduled freely"
    );

    fake.bind_pod("ns", "web-0", "node-a").unwrap();
    run(&fake);
    let annotations = stored(&fake).metadata.annotations.unwrap();
    assert_eq!(annotations[VOLUME_NODES_ANNOTATION], r#"{"0":"node-a"}"#);

    fake.delete::<Pod>("ns", "web-0").unwrap();
    run(&fake);
    let again = pod(&fake, "web-0").unwrap();
    assert_eq!(again.spec.unwrap().node_name.as_deref(), Some("node-a"));
}

#[test]
fn ordinals_parse_strictly() {
    assert_eq!(ordinal_of("web", "web-0"), Some(0));
    assert_eq!(ordinal_of("web", "web--1"), None);
    assert_eq!(ordinal_of("web", "web-x"), None);
    assert_eq!(ordinal_of("web", "web-1-2"), None);
}

/// The reconcile's outcome, for the tests that look at its requeue.
fn outcome(fake: &FakeCluster) -> Outcome {
    StatefulSetController::reconcile(fake, &ObjectKey::of::<StatefulSet>("ns", "web")).unwrap()
}

/// Running and Ready since `since` (RFC 3339), or without a transition time when `None`.
fn ready_since(fake: &FakeCluster, name: &str, since: Option<&str>) {
    let mut p = fake.object("v1", "Pod", "ns", name).unwrap();
    let mut cond = json!({"type": "Ready", "status": "True"});
    if let Some(t) = since {
        cond["lastTransitionTime"] = json!(t);
    }
    p["status"] = json!({"phase": "Running", "conditions": [cond]});
    fake.seed_json(p);
}

fn setup_min_ready(replicas: i32, policy: &str, min_ready_seconds: i32) -> FakeCluster {
    let fake = FakeCluster::new();
    let mut s = sts_json(replicas, policy);
    s["spec"]["minReadySeconds"] = json!(min_ready_seconds);
    fake.create_object("apps/v1", "StatefulSet", "ns", &s)
        .unwrap();
    fake
}

fn counts(fake: &FakeCluster) -> (Option<i32>, Option<i32>) {
    let st = status(fake);
    (st.ready_replicas, st.available_replicas)
}

#[test]
fn available_replicas_lag_readiness_by_min_ready_seconds() {
    let fake = setup_min_ready(3, "Parallel", 10);
    run(&fake);
    ready_since(&fake, "web-0", Some("2025-01-01T00:00:00Z"));
    ready_since(&fake, "web-1", Some("2025-01-01T00:00:04Z"));
    // Ready without a transition time: never available while minReadySeconds is set.
    ready_since(&fake, "web-2", None);
    // (now, availableReplicas, requeue): the requeue lands on the next pod's due time.
    let cases = [
        ("2025-01-01T00:00:00Z", 0, Some(10_000)),
        ("2025-01-01T00:00:09.500Z", 0, Some(500)),
        ("2025-01-01T00:00:10Z", 1, Some(4_000)),
        ("2025-01-01T00:00:13Z", 1, Some(1_000)),
        ("2025-01-01T00:00:14Z", 2, None),
        ("2025-01-01T01:00:00Z", 2, None),
    ];
    for (now, available, requeue) in cases {
        fake.set_now(now);
        let out = outcome(&fake);
        assert_eq!(counts(&fake), (Some(3), Some(available)), "at {now}");
        assert_eq!(out.requeue_after_ms, requeue, "at {now}");
    }
}

#[test]
fn min_ready_seconds_zero_counts_ready_as_available_at_once() {
    // Explicit 0 and absent behave alike: available with readiness, nothing to requeue for.
    for min_ready in [None, Some(0)] {
        let fake = FakeCluster::new();
        let mut s = sts_json(2, "OrderedReady");
        if let Some(m) = min_ready {
            s["spec"]["minReadySeconds"] = json!(m);
        }
        fake.create_object("apps/v1", "StatefulSet", "ns", &s)
            .unwrap();
        run(&fake);
        ready_since(&fake, "web-0", Some("2025-01-01T00:00:00Z"));
        assert_eq!(outcome(&fake), Outcome::done(), "{min_ready:?}");
        assert_eq!(names(&fake), ["web-0", "web-1"], "{min_ready:?}");
        ready_since(&fake, "web-1", None);
        assert_eq!(outcome(&fake), Outcome::done(), "{min_ready:?}");
        assert_eq!(counts(&fake), (Some(2), Some(2)), "{min_ready:?}");
    }
}

#[test]
fn ordered_ready_creates_the_next_ordinal_once_the_last_is_available() {
    let fake = setup_min_ready(2, "OrderedReady", 10);
    run(&fake);
    ready_since(&fake, "web-0", Some("2025-01-01T00:00:00Z"));
    // (now, pods afterwards, requeue)
    let cases: [(&str, &[&str], Option<u64>); 3] = [
        ("2025-01-01T00:00:00Z", &["web-0"], Some(10_000)),
        ("2025-01-01T00:00:09Z", &["web-0"], Some(1_000)),
        ("2025-01-01T00:00:10Z", &["web-0", "web-1"], None),
    ];
    for (now, want, requeue) in cases {
        fake.set_now(now);
        assert_eq!(outcome(&fake).requeue_after_ms, requeue, "at {now}");
        assert_eq!(names(&fake), want, "at {now}");
    }
}

#[test]
fn rolling_update_waits_for_the_updated_pod_to_be_available() {
    // OrderedReady already waits while re-creating the ordinal; Parallel relies on the
    // rolling update's own wait.
    for policy in ["OrderedReady", "Parallel"] {
        let fake = setup_min_ready(3, policy, 30);
        // Bring it up with pods ready long ago, so all are available.
        for _ in 0..6 {
            let _ = outcome(&fake);
            for n in names(&fake) {
                if pod(&fake, &n).is_some_and(|p| !healthy(&p)) {
                    ready_since(&fake, &n, Some("2024-01-01T00:00:00Z"));
                }
            }
        }
        assert_eq!(outcome(&fake), Outcome::done(), "{policy}");
        assert_eq!(counts(&fake), (Some(3), Some(3)), "{policy}");

        patch_spec(
            &fake,
            json!({"template": {"spec": {"containers": [{"name": "hello", "image": "hello:v2"}]}}}),
        );
        run(&fake);
        assert!(pod(&fake, "web-2").is_none(), "{policy}");
        run(&fake);
        assert_eq!(image(&pod(&fake, "web-2").unwrap()), "hello:v2", "{policy}");
        ready_since(&fake, "web-2", Some("2025-01-01T00:00:00Z"));

        // Ready but not yet available: web-1 stays, and the reconcile comes back exactly
        // when web-2's 30 s are up.
        for (now, requeue) in [
            ("2025-01-01T00:00:00Z", 30_000),
            ("2025-01-01T00:00:29Z", 1_000),
        ] {
            fake.set_now(now);
            assert_eq!(
                outcome(&fake).requeue_after_ms,
                Some(requeue),
                "{policy} at {now}"
            );
            let p1 = pod(&fake, "web-1").unwrap();
            assert_eq!(image(&p1), "hello:v1", "{policy} at {now}");
            assert!(!terminating(&p1), "{policy} at {now}");
            assert_eq!(counts(&fake), (Some(3), Some(2)), "{policy} at {now}");
        }
        fake.set_now("2025-01-01T00:00:30Z");
        assert_eq!(outcome(&fake), Outcome::done(), "{policy}");
        assert!(
            pod(&fake, "web-1").is_none(),
            "{policy}: web-2 available, web-1 next"
        );
        assert_eq!(image(&pod(&fake, "web-0").unwrap()), "hello:v1", "{policy}");
    }
}

#[test]
fn scale_down_lets_a_fresh_pod_become_available_first() {
    let fake = setup_min_ready(2, "OrderedReady", 10);
    run(&fake);
    ready_since(&fake, "web-0", Some("2024-01-01T00:00:00Z"));
    run(&fake);
    ready_since(&fake, "web-1", Some("2025-01-01T00:00:00Z"));
    patch_spec(&fake, json!({"replicas": 1}));
    assert_eq!(outcome(&fake).requeue_after_ms, Some(10_000));
    assert_eq!(names(&fake), ["web-0", "web-1"]);
    fake.set_now("2025-01-01T00:00:10Z");
    assert_eq!(outcome(&fake), Outcome::done());
    assert_eq!(names(&fake), ["web-0"]);
}
