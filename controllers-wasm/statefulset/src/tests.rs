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

/// A StatefulSet of `replicas` with claim template `data` (and a template volume of that name,
/// which the claim replaces).
fn setup_claims(replicas: i32, policy: &str) -> FakeCluster {
    let fake = FakeCluster::new();
    let mut s = sts_json(replicas, policy);
    s["spec"]["volumeClaimTemplates"] = json!([{
        "metadata": {"name": "data", "labels": {"tier": "db"}, "annotations": {"note": "kept"}},
        "spec": {"accessModes": ["ReadWriteOnce"], "volumeMode": "Filesystem",
            "resources": {"requests": {"storage": "1Gi"}},
            "selector": {"matchLabels": {"disk": "ssd"}}}}]);
    s["spec"]["template"]["spec"]["volumes"] = json!([
        {"name": "data", "emptyDir": {}}, {"name": "scratch", "emptyDir": {}}]);
    fake.create_object("apps/v1", "StatefulSet", "ns", &s)
        .unwrap();
    fake.clear_writes();
    fake
}

fn claim_names(fake: &FakeCluster) -> Vec<String> {
    fake.list::<PersistentVolumeClaim>("ns", "")
        .unwrap()
        .into_iter()
        .filter_map(|c| c.metadata.name)
        .collect()
}

/// The claim each `persistentVolumeClaim` volume of the pod names, by volume name.
fn pod_claims(fake: &FakeCluster, name: &str) -> Vec<(String, String)> {
    let spec = pod(fake, name).unwrap().spec.unwrap();
    spec.volumes
        .unwrap_or_default()
        .into_iter()
        .filter_map(|v| Some((v.name, v.persistent_volume_claim?.claim_name)))
        .collect()
}

#[test]
fn claims_are_made_from_the_templates_before_their_pods() {
    let fake = setup_claims(1, "OrderedReady");
    run(&fake);
    // The claim first, then the pod.
    let order: Vec<(Verb, String)> = fake
        .writes()
        .into_iter()
        .filter(|w| w.verb == Verb::Create && w.kind != "ControllerRevision" && w.kind != "Event")
        .map(|w| (w.verb, w.name))
        .collect();
    assert_eq!(
        order,
        [
            (Verb::Create, "data-web-0".to_string()),
            (Verb::Create, "web-0".to_string())
        ]
    );
    let c = fake
        .get::<PersistentVolumeClaim>("ns", "data-web-0")
        .unwrap()
        .unwrap();
    let labels = labels_of(&c.metadata);
    assert_eq!(
        (labels["tier"].as_str(), labels["app"].as_str()),
        ("db", "web")
    );
    assert_eq!(c.metadata.annotations.unwrap()["note"], "kept");
    assert!(
        c.metadata.owner_references.is_none(),
        "claims are retained: no owner"
    );
    let spec = serde_json::to_value(c.spec.unwrap()).unwrap();
    assert_eq!(
        spec,
        json!({"accessModes": ["ReadWriteOnce"], "volumeMode": "Filesystem",
            "resources": {"requests": {"storage": "1Gi"}},
            "selector": {"matchLabels": {"disk": "ssd"}}}),
        "the template's spec as is: the API fills in the default class"
    );
    assert!(
        events(&fake)
            .contains(&"create Claim data-web-0 Pod web-0 in StatefulSet web success".into())
    );

    // The pod mounts it under the template's name, in place of the template volume of that
    // name; nothing ties it to a node.
    let p = pod(&fake, "web-0").unwrap();
    let spec = p.spec.unwrap();
    assert!(spec.node_name.is_none() && spec.affinity.is_none());
    let vols = spec.volumes.unwrap();
    assert_eq!(vols.len(), 2, "{vols:?}");
    assert!(vols.iter().all(|v| v.host_path.is_none()));
    assert!(
        vols.iter()
            .any(|v| v.name == "scratch" && v.empty_dir.is_some())
    );
    assert_eq!(
        pod_claims(&fake, "web-0"),
        [("data".to_string(), "data-web-0".to_string())]
    );

    // Once made, a claim is not made again.
    fake.clear_writes();
    run(&fake);
    assert_eq!(fake.count(Verb::Create, "PersistentVolumeClaim"), 0);
}

#[test]
fn each_ordinal_gets_its_own_claims() {
    let fake = setup_claims(3, "OrderedReady");
    let mut s = fake.object("apps/v1", "StatefulSet", "ns", "web").unwrap();
    s["spec"]["volumeClaimTemplates"]
        .as_array_mut()
        .unwrap()
        .push(json!({"metadata": {"name": "logs"},
            "spec": {"accessModes": ["ReadWriteOnce"], "storageClassName": "fast",
                "resources": {"requests": {"storage": "100Mi"}}}}));
    fake.seed_json(s);
    converge(&fake);
    assert_eq!(
        claim_names(&fake),
        [
            "data-web-0",
            "data-web-1",
            "data-web-2",
            "logs-web-0",
            "logs-web-1",
            "logs-web-2"
        ]
    );
    assert_eq!(fake.count(Verb::Create, "PersistentVolumeClaim"), 6);
    let logs = fake
        .get::<PersistentVolumeClaim>("ns", "logs-web-2")
        .unwrap()
        .unwrap();
    assert_eq!(
        logs.spec.unwrap().storage_class_name.as_deref(),
        Some("fast")
    );
    for i in 0..3 {
        let mut got = pod_claims(&fake, &format!("web-{i}"));
        got.sort();
        assert_eq!(
            got,
            [
                ("data".to_string(), format!("data-web-{i}")),
                ("logs".to_string(), format!("logs-web-{i}"))
            ]
        );
    }
}

#[test]
fn scale_down_and_deletion_keep_claims_and_scale_up_reuses_them() {
    let fake = setup_claims(3, "OrderedReady");
    converge(&fake);
    let uid = |n: &str| {
        fake.get::<PersistentVolumeClaim>("ns", n)
            .unwrap()
            .unwrap()
            .metadata
            .uid
    };
    let before: Vec<_> = ["data-web-1", "data-web-2"].map(uid).into();

    patch_spec(&fake, json!({"replicas": 1}));
    fake.clear_writes();
    converge(&fake);
    assert_eq!(names(&fake), ["web-0"]);
    assert_eq!(fake.count(Verb::Delete, "PersistentVolumeClaim"), 0);
    assert_eq!(
        claim_names(&fake),
        ["data-web-0", "data-web-1", "data-web-2"]
    );

    // Scaled up again: the same claims, under the same pods.
    patch_spec(&fake, json!({"replicas": 3}));
    converge(&fake);
    assert_eq!(names(&fake), ["web-0", "web-1", "web-2"]);
    assert_eq!(fake.count(Verb::Create, "PersistentVolumeClaim"), 0);
    assert_eq!(
        pod_claims(&fake, "web-2"),
        [("data".to_string(), "data-web-2".to_string())]
    );
    let after: Vec<_> = ["data-web-1", "data-web-2"].map(uid).into();
    assert_eq!(before, after);

    // The StatefulSet goes (its pods go by garbage collection, not simulated): the claims
    // stay, and nothing owns them.
    fake.delete::<StatefulSet>("ns", "web").unwrap();
    fake.clear_writes();
    run(&fake);
    assert!(fake.writes().is_empty(), "{:?}", fake.writes());
    let claims = fake.list::<PersistentVolumeClaim>("ns", "").unwrap();
    assert_eq!(claims.len(), 3);
    assert!(claims.iter().all(|c| c.metadata.owner_references.is_none()));
}

/// Claim `data-web-<ordinal>`, held by a finalizer, then deleted: it stays, being deleted.
fn deleting_claim(fake: &FakeCluster, ordinal: i32) {
    let name = format!("data-web-{ordinal}");
    fake.seed_json(json!({"apiVersion": "v1", "kind": "PersistentVolumeClaim",
        "metadata": {"name": name, "namespace": "ns",
            "finalizers": ["kubernetes.io/pvc-protection"]},
        "spec": {"accessModes": ["ReadWriteOnce"], "resources": {"requests": {"storage": "1Gi"}}}}));
    fake.delete::<PersistentVolumeClaim>("ns", &name).unwrap();
}

fn drop_finalizers(fake: &FakeCluster, ordinal: i32) {
    fake.patch_object(
        "v1",
        "PersistentVolumeClaim",
        "ns",
        &format!("data-web-{ordinal}"),
        &json!({"metadata": {"finalizers": null}}),
    )
    .unwrap();
}

#[test]
fn a_claim_being_deleted_holds_its_pod_back_until_it_is_gone() {
    let fake = setup_claims(1, "OrderedReady");
    deleting_claim(&fake, 0);
    for _ in 0..2 {
        assert_eq!(
            outcome(&fake).requeue_after_ms,
            Some(CLAIM_POLL_MS),
            "claims do not enqueue the StatefulSet: it polls"
        );
        assert!(names(&fake).is_empty());
    }
    drop_finalizers(&fake, 0);
    assert!(claim_names(&fake).is_empty());
    run(&fake);
    assert_eq!(names(&fake), ["web-0"]);
    let c = fake
        .get::<PersistentVolumeClaim>("ns", "data-web-0")
        .unwrap()
        .unwrap();
    assert!(c.metadata.deletion_timestamp.is_none());
}

#[test]
fn parallel_creates_the_other_ordinals_while_one_claim_is_deleted() {
    let fake = setup_claims(3, "Parallel");
    deleting_claim(&fake, 1);
    assert_eq!(outcome(&fake).requeue_after_ms, Some(CLAIM_POLL_MS));
    assert_eq!(names(&fake), ["web-0", "web-2"]);
    drop_finalizers(&fake, 1);
    run(&fake);
    assert_eq!(names(&fake), ["web-0", "web-1", "web-2"]);
}

#[test]
fn a_pending_pod_gets_back_a_claim_it_lost() {
    let fake = setup_claims(2, "OrderedReady");
    run(&fake);
    // web-0 Pending; its claim deleted by hand (no finalizer in the fake: gone at once).
    fake.delete::<PersistentVolumeClaim>("ns", "data-web-0")
        .unwrap();
    run(&fake);
    assert_eq!(claim_names(&fake), ["data-web-0"]);
    // A running pod's lost claim is not re-made (Kubernetes leaves it too).
    make_ready(&fake, "web-0");
    converge(&fake);
    fake.delete::<PersistentVolumeClaim>("ns", "data-web-0")
        .unwrap();
    fake.clear_writes();
    run(&fake);
    assert_eq!(fake.count(Verb::Create, "PersistentVolumeClaim"), 0);
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

#[test]
fn max_unavailable_scales_percentages_down_and_is_at_least_one() {
    let pct = |s: &str| Some(IntOrString::String(s.into()));
    // (maxUnavailable, replicas, pods)
    let cases = [
        (None, 5, 1),
        (Some(IntOrString::Int(1)), 3, 1),
        (Some(IntOrString::Int(2)), 5, 2),
        // More than there are replicas: a count, not capped.
        (Some(IntOrString::Int(3)), 0, 3),
        (pct("40%"), 5, 2),
        (pct("100%"), 5, 5),
        // Rounded down, as Kubernetes' controller does (2.5 -> 2)...
        (pct("10%"), 25, 2),
        (pct("50%"), 5, 2),
        // ...but never below 1, so an update always moves.
        (pct("10%"), 5, 1),
        (pct("50%"), 0, 1),
        // What the API refuses, should it be stored anyway: the default.
        (Some(IntOrString::Int(0)), 5, 1),
        (Some(IntOrString::Int(-2)), 5, 1),
        (pct("5"), 5, 1),
        (pct("%"), 5, 1),
        (pct("-5%"), 5, 1),
    ];
    for (value, replicas, want) in cases {
        assert_eq!(
            max_unavailable(value.as_ref(), replicas),
            want,
            "{value:?} of {replicas}"
        );
    }
}

/// A StatefulSet of `replicas` pods with `rollingUpdate` as given, all Running and available
/// (Ready since long before the fake's clock).
fn setup_rolling(
    replicas: i32,
    policy: &str,
    rolling: Value,
    min_ready_seconds: Option<i32>,
) -> FakeCluster {
    let fake = FakeCluster::new();
    let mut s = sts_json(replicas, policy);
    s["spec"]["updateStrategy"]["rollingUpdate"] = rolling;
    if let Some(m) = min_ready_seconds {
        s["spec"]["minReadySeconds"] = json!(m);
    }
    fake.create_object("apps/v1", "StatefulSet", "ns", &s)
        .unwrap();
    for _ in 0..=replicas {
        let _ = outcome(&fake);
        for n in names(&fake) {
            if pod(&fake, &n).is_some_and(|p| !healthy(&p)) {
                ready_since(&fake, &n, Some("2024-01-01T00:00:00Z"));
            }
        }
    }
    assert_eq!(outcome(&fake), Outcome::done(), "{policy}");
    assert_eq!(counts(&fake), (Some(replicas), Some(replicas)), "{policy}");
    fake
}

fn update_to_v2(fake: &FakeCluster) {
    patch_spec(
        fake,
        json!({"template": {"spec": {"containers": [{"name": "hello", "image": "hello:v2"}]}}}),
    );
    fake.clear_writes();
}

/// The pods deleted since the last call, in order.
fn deleted(fake: &FakeCluster) -> Vec<String> {
    let d = fake
        .writes()
        .into_iter()
        .filter(|w| w.verb == Verb::Delete && w.kind == "Pod")
        .map(|w| w.name)
        .collect();
    fake.clear_writes();
    d
}

/// The pods on the new template.
fn on_v2(fake: &FakeCluster) -> Vec<String> {
    names(fake)
        .into_iter()
        .filter(|n| pod(fake, n).is_some_and(|p| image(&p) == "hello:v2"))
        .collect()
}

#[test]
fn max_unavailable_replaces_that_many_pods_at_once_highest_first() {
    for policy in ["Parallel", "OrderedReady"] {
        let ordered = policy == "OrderedReady";
        let fake = setup_rolling(
            5,
            policy,
            json!({"partition": 0, "maxUnavailable": 2}),
            None,
        );
        update_to_v2(&fake);
        run(&fake);
        assert_eq!(deleted(&fake), ["web-4", "web-3"], "{policy}");

        // They come back on the new template (OrderedReady: in order, each ready first);
        // while they are not available, nothing else goes.
        run(&fake);
        if ordered {
            assert_eq!(on_v2(&fake), ["web-3"]);
            run(&fake);
            assert!(deleted(&fake).is_empty());
            make_ready(&fake, "web-3");
            run(&fake);
        }
        assert_eq!(on_v2(&fake), ["web-3", "web-4"], "{policy}");
        run(&fake);
        assert!(deleted(&fake).is_empty(), "{policy}");
        make_ready(&fake, "web-3");
        if ordered {
            make_ready(&fake, "web-4");
            run(&fake);
            assert_eq!(deleted(&fake), ["web-2", "web-1"]);
            run(&fake);
            assert_eq!(on_v2(&fake), ["web-1", "web-3", "web-4"]);
            make_ready(&fake, "web-1");
            run(&fake);
        } else {
            // One of the two is back: one more may go (the budget is a window, as in
            // Kubernetes), then the next as soon as the other is back.
            run(&fake);
            assert_eq!(deleted(&fake), ["web-2"]);
            make_ready(&fake, "web-4");
            run(&fake);
            assert_eq!(deleted(&fake), ["web-1"]);
            run(&fake);
        }
        assert_eq!(
            on_v2(&fake),
            ["web-1", "web-2", "web-3", "web-4"],
            "{policy}"
        );
        // web-0 waits for web-1 and web-2, then the rollout completes.
        run(&fake);
        assert!(deleted(&fake).is_empty(), "{policy}");
        make_ready(&fake, "web-1");
        make_ready(&fake, "web-2");
        run(&fake);
        assert_eq!(deleted(&fake), ["web-0"], "{policy}");
        run(&fake);
        make_ready(&fake, "web-0");
        run(&fake);
        assert_eq!(on_v2(&fake).len(), 5, "{policy}");
        let st = status(&fake);
        assert_eq!(st.current_revision, st.update_revision, "{policy}");
        assert_eq!(st.updated_replicas, Some(5), "{policy}");
    }
}

#[test]
fn max_unavailable_stops_at_the_partition_and_counts_pods_below_it() {
    for policy in ["Parallel", "OrderedReady"] {
        // 60% of 5 = 3, but only web-3 and web-4 are at or above the partition.
        let fake = setup_rolling(
            5,
            policy,
            json!({"partition": 3, "maxUnavailable": "60%"}),
            None,
        );
        update_to_v2(&fake);
        run(&fake);
        assert_eq!(deleted(&fake), ["web-4", "web-3"], "{policy}");
        for _ in 0..4 {
            run(&fake);
            for n in ["web-3", "web-4"] {
                if pod(&fake, n).is_some() {
                    make_ready(&fake, n);
                }
            }
        }
        run(&fake);
        assert!(deleted(&fake).is_empty(), "{policy}");
        assert_eq!(on_v2(&fake), ["web-3", "web-4"], "{policy}");

        // An unavailable pod below the partition takes its share of the budget: with
        // maxUnavailable 2 and web-0 not ready, one pod at a time.
        let fake = setup_rolling(
            5,
            policy,
            json!({"partition": 1, "maxUnavailable": 2}),
            None,
        );
        update_to_v2(&fake);
        set_phase(&fake, "web-0", "Running", false);
        fake.clear_writes();
        let _ = outcome(&fake);
        if policy == "OrderedReady" {
            // OrderedReady waits for web-0 before anything else.
            assert!(deleted(&fake).is_empty());
            continue;
        }
        assert_eq!(deleted(&fake), ["web-4"], "{policy}");
    }
}

#[test]
fn max_unavailable_waits_for_replaced_pods_to_be_available() {
    // Parallel: the rolling update's own count is what waits (OrderedReady's ordinal wait is
    // tested above).
    let fake = setup_rolling(
        5,
        "Parallel",
        json!({"partition": 0, "maxUnavailable": 2}),
        Some(30),
    );
    update_to_v2(&fake);
    run(&fake);
    assert_eq!(deleted(&fake), ["web-4", "web-3"]);
    run(&fake);
    ready_since(&fake, "web-3", Some("2025-01-01T00:00:00Z"));
    ready_since(&fake, "web-4", Some("2025-01-01T00:00:00Z"));
    // Ready but not yet available: nobody else goes, and the reconcile comes back when
    // they are.
    for (now, requeue) in [
        ("2025-01-01T00:00:00Z", 30_000),
        ("2025-01-01T00:00:29Z", 1_000),
    ] {
        fake.set_now(now);
        assert_eq!(outcome(&fake).requeue_after_ms, Some(requeue), "at {now}");
        assert!(deleted(&fake).is_empty(), "at {now}");
        assert_eq!(counts(&fake), (Some(5), Some(3)), "at {now}");
    }
    fake.set_now("2025-01-01T00:00:30Z");
    assert_eq!(outcome(&fake), Outcome::done());
    assert_eq!(deleted(&fake), ["web-2", "web-1"]);
}

#[test]
fn without_max_unavailable_parallel_updates_one_pod_at_a_time() {
    let fake = setup_rolling(3, "Parallel", json!({"partition": 0}), None);
    update_to_v2(&fake);
    run(&fake);
    assert_eq!(deleted(&fake), ["web-2"]);
    run(&fake);
    run(&fake);
    assert!(deleted(&fake).is_empty());
    make_ready(&fake, "web-2");
    run(&fake);
    assert_eq!(deleted(&fake), ["web-1"]);
}
