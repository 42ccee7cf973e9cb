use super::*;
use kedge_guest::FakeCluster;
use serde_json::{Value, json};

fn class(fake: &FakeCluster, reclaim: &str) {
    fake.seed_json(
        json!({"apiVersion": "storage.k8s.io/v1", "kind": "StorageClass",
        "metadata": {"name": "local-path"}, "provisioner": PROVISIONER,
        "reclaimPolicy": reclaim, "volumeBindingMode": "WaitForFirstConsumer"}),
    );
}

fn claim(fake: &FakeCluster, class: &str, annotations: Value) -> Value {
    fake.seed_json(json!({"apiVersion": "v1", "kind": "PersistentVolumeClaim",
        "metadata": {"name": "data", "namespace": "default", "uid": "u1", "annotations": annotations},
        "spec": {"storageClassName": class, "accessModes": ["ReadWriteOnce"], "volumeMode": "Filesystem",
            "resources": {"requests": {"storage": "1Gi"}}},
        "status": {"phase": "Pending"}}))
}

fn run(fake: &FakeCluster) -> Outcome {
    reconcile(
        fake,
        &ObjectKey::of::<PersistentVolumeClaim>("default", "data"),
    )
    .unwrap()
}

fn pvc(fake: &FakeCluster) -> Value {
    fake.object("v1", "PersistentVolumeClaim", "default", "data")
        .unwrap()
}

#[test]
fn waits_for_the_first_consumer_then_provisions_on_its_node_and_binds() {
    let fake = FakeCluster::new();
    class(&fake, "Delete");
    claim(&fake, "local-path", json!({}));
    run(&fake);
    assert_eq!(
        pvc(&fake)["metadata"]["finalizers"],
        json!([PROTECTION_FINALIZER])
    );
    assert!(fake.list::<PersistentVolume>("", "").unwrap().is_empty());

    let mut c = pvc(&fake);
    c["metadata"]["annotations"] = json!({SELECTED_NODE: "n1"});
    fake.seed_json(c);
    run(&fake);
    let pv = fake.object("v1", "PersistentVolume", "", "pvc-u1").unwrap();
    assert_eq!(
        pv["spec"]["hostPath"]["path"],
        "/var/lib/kedge/storage/pvc-u1_default_data"
    );
    assert_eq!(pv["spec"]["hostPath"]["type"], "DirectoryOrCreate");
    assert_eq!(pv["spec"]["capacity"]["storage"], "1Gi");
    assert_eq!(pv["spec"]["persistentVolumeReclaimPolicy"], "Delete");
    assert_eq!(
        pv["spec"]["nodeAffinity"]["required"]["nodeSelectorTerms"][0]["matchExpressions"][0]["values"],
        json!(["n1"])
    );
    assert_eq!(pv["spec"]["claimRef"]["name"], "data");
    assert_eq!(pv["metadata"]["finalizers"], json!([CLEANUP_FINALIZER]));
    assert_eq!(pv["metadata"]["labels"][NODE_LABEL], "n1");
    assert_eq!(pv["status"]["phase"], "Bound");
    let c = pvc(&fake);
    assert_eq!(c["spec"]["volumeName"], "pvc-u1");
    assert_eq!(c["status"]["phase"], "Bound");
    assert_eq!(c["status"]["capacity"]["storage"], "1Gi");
    assert_eq!(
        c["metadata"]["annotations"]["pv.kubernetes.io/bind-completed"],
        "yes"
    );
}

#[test]
fn static_volumes_bind_by_class_size_and_modes() {
    let fake = FakeCluster::new();
    let pv = |name: &str, size: &str, class: &str, modes: Value| {
        fake.seed_json(json!({"apiVersion": "v1", "kind": "PersistentVolume",
            "metadata": {"name": name},
            "spec": {"capacity": {"storage": size}, "accessModes": modes, "storageClassName": class,
                "volumeMode": "Filesystem", "persistentVolumeReclaimPolicy": "Retain",
                "hostPath": {"path": format!("/srv/{name}")}},
            "status": {"phase": "Available"}}));
    };
    pv("small", "500Mi", "", json!(["ReadWriteOnce"]));
    pv("other-class", "1Gi", "fast", json!(["ReadWriteOnce"]));
    pv("ro", "1Gi", "", json!(["ReadOnlyMany"]));
    pv("big", "10Gi", "", json!(["ReadWriteOnce"]));
    pv("fit", "2Gi", "", json!(["ReadWriteOnce", "ReadWriteMany"]));
    claim(&fake, "", json!({}));
    run(&fake);
    assert_eq!(pvc(&fake)["spec"]["volumeName"], "fit");
    let fit = fake.object("v1", "PersistentVolume", "", "fit").unwrap();
    assert_eq!(fit["status"]["phase"], "Bound");
    assert_eq!(pvc(&fake)["status"]["capacity"]["storage"], "2Gi");
}

#[test]
fn deleting_the_claim_waits_for_its_pods_then_reclaims_by_policy() {
    for (policy, kept) in [("Delete", false), ("Retain", true)] {
        let fake = FakeCluster::new();
        class(&fake, policy);
        claim(&fake, "local-path", json!({SELECTED_NODE: "n1"}));
        run(&fake);
        fake.seed_json(json!({"apiVersion": "v1", "kind": "Pod",
            "metadata": {"name": "p", "namespace": "default"},
            "spec": {"containers": [], "volumes": [{"name": "v", "persistentVolumeClaim": {"claimName": "data"}}]},
            "status": {"phase": "Running"}}));
        fake.delete::<PersistentVolumeClaim>("default", "data")
            .unwrap();
        assert_eq!(run(&fake), Outcome::requeue_after_ms(POLL_MS));
        assert!(
            fake.object("v1", "PersistentVolumeClaim", "default", "data")
                .is_some()
        );
        fake.delete::<Pod>("default", "p").unwrap();
        run(&fake);
        assert!(
            fake.object("v1", "PersistentVolumeClaim", "default", "data")
                .is_none()
        );
        run(&fake); // Released
        run(&fake); // reclaimed
        let pv = fake.object("v1", "PersistentVolume", "", "pvc-u1").unwrap();
        if kept {
            assert_eq!(pv["status"]["phase"], "Released");
            assert!(pv["metadata"]["deletionTimestamp"].is_null());
        } else {
            // The agent of n1 removes the directory, then the finalizer.
            assert!(!pv["metadata"]["deletionTimestamp"].is_null());
        }
    }
}
