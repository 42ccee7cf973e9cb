use super::*;
use kedge_guest::FakeCluster;

fn owner_ref(kind: &str, name: &str, uid: &str, block: bool) -> Value {
    json!({"apiVersion": "apps/v1", "kind": kind, "name": name, "uid": uid,
           "controller": true, "blockOwnerDeletion": block})
}

fn seed(c: &FakeCluster, av: &str, kind: &str, name: &str, uid: &str, extra: Value) -> Value {
    let mut obj = json!({"apiVersion": av, "kind": kind,
        "metadata": {"name": name, "namespace": "default", "uid": uid}});
    if let Some(m) = extra.as_object() {
        for (k, v) in m {
            obj["metadata"][k] = v.clone();
        }
    }
    c.seed_json(obj)
}

fn pod(c: &FakeCluster, name: &str, owners: Vec<Value>) -> Value {
    seed(
        c,
        "v1",
        "Pod",
        name,
        &format!("pod-{name}"),
        json!({"ownerReferences": owners}),
    )
}

fn key_of(obj: &Value) -> ObjectKey {
    let (av, kind) = api_version_kind(obj);
    ObjectKey::new(av, kind, meta(obj, "namespace"), meta(obj, "name"))
}

fn exists(c: &FakeCluster, obj: &Value) -> Option<Value> {
    let k = key_of(obj);
    c.object(&k.api_version, &k.kind, &k.namespace, &k.name)
}

#[test]
fn registers_for_every_kind() {
    let r = GarbageCollector::registration();
    assert_eq!(r.for_kind, KindRef::every());
    assert!(r.owns.is_empty());
    assert_eq!(r.writes, vec![KindRef::every()]);
}

#[test]
fn dependents_of_a_vanished_owner_are_collected() {
    let c = FakeCluster::new();
    let p = pod(&c, "a", vec![owner_ref("ReplicaSet", "web", "rs-1", true)]);
    reconcile(&c, &key_of(&p)).unwrap();
    assert!(exists(&c, &p).is_none());
    // Nothing owned, nothing touched.
    let free = pod(&c, "free", vec![]);
    reconcile(&c, &key_of(&free)).unwrap();
    assert!(exists(&c, &free).is_some());
}

#[test]
fn a_namesake_owner_does_not_keep_a_dependent() {
    let c = FakeCluster::new();
    seed(&c, "apps/v1", "ReplicaSet", "web", "rs-new", json!({}));
    let p = pod(
        &c,
        "a",
        vec![owner_ref("ReplicaSet", "web", "rs-old", true)],
    );
    reconcile(&c, &key_of(&p)).unwrap();
    assert!(
        exists(&c, &p).is_none(),
        "same name, other uid: a different owner"
    );
}

#[test]
fn live_owners_keep_a_dependent_and_dangling_references_are_dropped() {
    let c = FakeCluster::new();
    seed(&c, "apps/v1", "ReplicaSet", "live", "rs-live", json!({}));
    let p = pod(
        &c,
        "a",
        vec![
            owner_ref("ReplicaSet", "live", "rs-live", true),
            owner_ref("ReplicaSet", "gone", "rs-gone", false),
        ],
    );
    reconcile(&c, &key_of(&p)).unwrap();
    let after = exists(&c, &p).expect("kept");
    let refs = owner_refs(&after);
    assert_eq!(refs.len(), 1);
    assert_eq!(refs[0]["uid"], "rs-live");
    // A second pass has nothing to do.
    c.clear_writes();
    reconcile(&c, &key_of(&p)).unwrap();
    assert!(c.writes().is_empty(), "{:?}", c.writes());
}

#[test]
fn orphaning_strips_the_references_then_the_finalizer() {
    let c = FakeCluster::new();
    let rs = seed(
        &c,
        "apps/v1",
        "ReplicaSet",
        "web",
        "rs-1",
        json!({"deletionTimestamp": "2025-01-01T00:00:00Z", "finalizers": ["orphan"]}),
    );
    let other = owner_ref("ReplicaSet", "other", "rs-2", false);
    seed(&c, "apps/v1", "ReplicaSet", "other", "rs-2", json!({}));
    let a = pod(&c, "a", vec![owner_ref("ReplicaSet", "web", "rs-1", true)]);
    let b = pod(
        &c,
        "b",
        vec![owner_ref("ReplicaSet", "web", "rs-1", true), other.clone()],
    );
    reconcile(&c, &key_of(&rs)).unwrap();
    assert!(exists(&c, &rs).is_none(), "last finalizer gone: deleted");
    let a = exists(&c, &a).expect("orphans stay");
    assert!(a["metadata"].get("ownerReferences").is_none(), "{a}");
    let b = exists(&c, &b).expect("orphans stay");
    assert_eq!(owner_refs(&b), vec![other]);
}

#[test]
fn an_orphaned_owner_keeps_its_other_finalizers() {
    let c = FakeCluster::new();
    let cm = seed(
        &c,
        "v1",
        "ConfigMap",
        "cfg",
        "cm-1",
        json!({"deletionTimestamp": "2025-01-01T00:00:00Z",
               "finalizers": ["example.com/keep", "orphan"]}),
    );
    reconcile(&c, &key_of(&cm)).unwrap();
    let left = exists(&c, &cm).expect("held by its own finalizer");
    assert_eq!(finalizers(&left), vec!["example.com/keep".to_string()]);
}

#[test]
fn foreground_deletion_goes_bottom_up() {
    let c = FakeCluster::new();
    let dep = seed(
        &c,
        "apps/v1",
        "Deployment",
        "web",
        "d-1",
        json!({"deletionTimestamp": "2025-01-01T00:00:00Z",
               "finalizers": ["foregroundDeletion"]}),
    );
    let rs = seed(
        &c,
        "apps/v1",
        "ReplicaSet",
        "web-1",
        "rs-1",
        json!({"ownerReferences": [owner_ref("Deployment", "web", "d-1", true)]}),
    );
    let p1 = pod(
        &c,
        "p1",
        vec![owner_ref("ReplicaSet", "web-1", "rs-1", true)],
    );
    let p2 = pod(
        &c,
        "p2",
        vec![owner_ref("ReplicaSet", "web-1", "rs-1", true)],
    );

    // The deployment waits; its ReplicaSet has pods, so it goes in the foreground too.
    let out = reconcile(&c, &key_of(&dep)).unwrap();
    assert_eq!(out.requeue_after_ms, Some(FOREGROUND_RECHECK_MS));
    let rs_now = exists(&c, &rs).expect("waits for its pods");
    assert_eq!(finalizers(&rs_now), vec![FOREGROUND.to_string()]);
    assert!(exists(&c, &dep).is_some());

    // The ReplicaSet's turn: pods go, then the ReplicaSet itself.
    reconcile(&c, &key_of(&rs)).unwrap();
    assert!(exists(&c, &p1).is_none() && exists(&c, &p2).is_none());
    assert!(exists(&c, &rs).is_none());

    // Nothing blocks the deployment any more.
    reconcile(&c, &key_of(&dep)).unwrap();
    assert!(exists(&c, &dep).is_none());
}

#[test]
fn non_blocking_dependents_do_not_hold_a_foreground_owner() {
    let c = FakeCluster::new();
    let owner = seed(
        &c,
        "apps/v1",
        "ReplicaSet",
        "web",
        "rs-1",
        json!({"deletionTimestamp": "2025-01-01T00:00:00Z",
               "finalizers": ["foregroundDeletion"]}),
    );
    // A pod that terminates gracefully (held by a finalizer here) and does not block.
    let p = seed(
        &c,
        "v1",
        "Pod",
        "slow",
        "pod-slow",
        json!({"ownerReferences": [owner_ref("ReplicaSet", "web", "rs-1", false)],
               "finalizers": ["example.com/drain"]}),
    );
    reconcile(&c, &key_of(&owner)).unwrap();
    assert!(exists(&c, &p).is_some_and(|p| deleting(&p)));
    assert!(exists(&c, &owner).is_none());
}

#[test]
fn a_dependent_kept_by_another_owner_unblocks_the_foreground_one() {
    let c = FakeCluster::new();
    let owner = seed(
        &c,
        "apps/v1",
        "ReplicaSet",
        "web",
        "rs-1",
        json!({"deletionTimestamp": "2025-01-01T00:00:00Z",
               "finalizers": ["foregroundDeletion"]}),
    );
    seed(&c, "apps/v1", "ReplicaSet", "keeper", "rs-2", json!({}));
    let p = pod(
        &c,
        "shared",
        vec![
            owner_ref("ReplicaSet", "web", "rs-1", true),
            owner_ref("ReplicaSet", "keeper", "rs-2", false),
        ],
    );
    reconcile(&c, &key_of(&owner)).unwrap();
    let p = exists(&c, &p).expect("kept by its other owner");
    assert_eq!(owner_refs(&p)[0]["blockOwnerDeletion"], false);
    assert!(exists(&c, &owner).is_none(), "no longer blocked");
}

#[test]
fn a_stale_judgement_never_deletes_a_changed_object() {
    let c = FakeCluster::new();
    let p = pod(&c, "a", vec![owner_ref("ReplicaSet", "web", "rs-1", true)]);
    // Another writer adopted the pod after the collector read it: the delete's
    // resourceVersion precondition fails, the fresh object is judged again and kept.
    let k = key_of(&p);
    seed(&c, "apps/v1", "ReplicaSet", "adopter", "rs-9", json!({}));
    c.patch_object(
        &k.api_version,
        &k.kind,
        &k.namespace,
        &k.name,
        &json!({"metadata": {"ownerReferences": [owner_ref("ReplicaSet", "adopter", "rs-9", true)]}}),
    )
    .unwrap();
    collect(&c, &k, &p).unwrap();
    assert!(exists(&c, &p).is_some());
}
