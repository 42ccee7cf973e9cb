use super::*;
use kedge_guest::FakeCluster;

fn terminating(c: &FakeCluster, name: &str) {
    c.seed_json(json!({"apiVersion": "v1", "kind": "Namespace",
        "metadata": {"name": name, "deletionTimestamp": "2025-01-01T00:00:00Z"},
        "spec": {"finalizers": [FINALIZER]}, "status": {"phase": "Terminating"}}));
}

fn object(c: &FakeCluster, av: &str, kind: &str, ns: &str, name: &str, meta: Value) {
    let mut m = json!({"name": name, "namespace": ns});
    for (k, v) in meta.as_object().into_iter().flatten() {
        m[k] = v.clone();
    }
    c.seed_json(json!({"apiVersion": av, "kind": kind, "metadata": m}));
}

fn key(name: &str) -> ObjectKey {
    ObjectKey::of::<Namespace>("", name)
}

#[test]
fn an_active_namespace_is_left_alone() {
    let c = FakeCluster::new();
    c.seed_json(
        json!({"apiVersion": "v1", "kind": "Namespace", "metadata": {"name": "live"},
        "spec": {"finalizers": [FINALIZER]}}),
    );
    object(&c, "v1", "ConfigMap", "live", "cfg", json!({}));
    assert_eq!(reconcile(&c, &key("live")).unwrap(), done());
    assert!(c.object("v1", "ConfigMap", "live", "cfg").is_some());
    assert!(c.writes().is_empty());
}

#[test]
fn a_deleted_namespace_is_emptied_then_released() {
    let c = FakeCluster::new();
    terminating(&c, "team");
    object(&c, "v1", "ConfigMap", "team", "cfg", json!({}));
    object(&c, "apps/v1", "Deployment", "team", "web", json!({}));
    object(&c, "v1", "Event", "team", "web.1", json!({}));
    object(&c, "v1", "ConfigMap", "other", "keep", json!({}));
    assert_eq!(reconcile(&c, &key("team")).unwrap(), done());
    for (av, kind, name) in [
        ("v1", "ConfigMap", "cfg"),
        ("apps/v1", "Deployment", "web"),
        ("v1", "Event", "web.1"),
    ] {
        assert!(c.object(av, kind, "team", name).is_none(), "{kind} {name}");
    }
    assert!(
        c.object("v1", "Namespace", "", "team").is_none(),
        "released"
    );
    assert!(c.object("v1", "ConfigMap", "other", "keep").is_some());
}

#[test]
fn objects_still_going_hold_the_namespace() {
    let c = FakeCluster::new();
    terminating(&c, "team");
    object(
        &c,
        "v1",
        "ConfigMap",
        "team",
        "held",
        json!({"finalizers": ["example.com/hold"]}),
    );
    let out = reconcile(&c, &key("team")).unwrap();
    assert_eq!(out.requeue_after_ms, Some(RECHECK_MS));
    let held = c.object("v1", "ConfigMap", "team", "held").unwrap();
    assert!(held["metadata"]["deletionTimestamp"].is_string());
    let ns = c.object("v1", "Namespace", "", "team").expect("still held");
    assert_eq!(ns["spec"]["finalizers"], json!([FINALIZER]));
    // Its finalizer goes: the next look releases the namespace.
    c.patch_object(
        "v1",
        "ConfigMap",
        "team",
        "held",
        &json!({"metadata": {"finalizers": null}}),
    )
    .unwrap();
    assert_eq!(reconcile(&c, &key("team")).unwrap(), done());
    assert!(c.object("v1", "Namespace", "", "team").is_none());
}
