//! The ReplicationController controller as a kedge plugin: the ReplicaSet controller's logic
//! (adoption, release, scale up and down, status counts) for the older core/v1 kind, whose
//! selector is a plain label map.

use k8s_openapi::api::core::v1::{Event, Pod, ReplicationController};
use kedge_guest::{Cluster, Controller, KindRef, ObjectKey, Outcome, Registration, Result};

/// The Events' source, as Kubernetes' controller names it.
const COMPONENT: &str = "replication-controller";

pub struct ReplicationControllerController;

impl Controller for ReplicationControllerController {
    fn registration() -> Registration {
        Registration::new(
            "replicationcontroller",
            KindRef::of::<ReplicationController>(),
        )
        .owns([KindRef::of::<Pod>()])
        .writes([
            KindRef::of::<Pod>(),
            KindRef::of::<ReplicationController>(),
            KindRef::of::<Event>(),
        ])
    }

    fn reconcile(cluster: &dyn Cluster, key: &ObjectKey) -> Result<Outcome> {
        kedge_podset::reconcile::<ReplicationController>(cluster, key, COMPONENT)
    }
}

kedge_guest::export_controller!(ReplicationControllerController);

#[cfg(test)]
mod tests {
    use super::*;
    use kedge_guest::{ClusterExt, FakeCluster, Verb};
    use serde_json::json;

    fn rc(fake: &FakeCluster, replicas: i32, selector: serde_json::Value) {
        fake.seed_json(json!({"apiVersion": "v1", "kind": "ReplicationController",
            "metadata": {"name": "web", "namespace": "ns", "uid": "rc-uid"},
            "spec": {"replicas": replicas, "selector": selector,
                "template": {"metadata": {"labels": {"app": "web"}},
                    "spec": {"containers": [{"name": "c", "image": "nginx"}]}}}}));
    }

    fn run(fake: &FakeCluster) {
        let key = ObjectKey {
            api_version: "v1".into(),
            kind: "ReplicationController".into(),
            namespace: "ns".into(),
            name: "web".into(),
        };
        ReplicationControllerController::reconcile(fake, &key).unwrap();
    }

    #[test]
    fn keeps_replicas_adopts_and_reports_status() {
        let fake = FakeCluster::new();
        rc(&fake, 3, json!({"app": "web"}));
        fake.seed_json(json!({"apiVersion": "v1", "kind": "Pod",
            "metadata": {"name": "orphan", "namespace": "ns", "labels": {"app": "web"}},
            "spec": {"containers": [{"name": "c", "image": "nginx"}]}}));
        run(&fake);
        assert_eq!(fake.count(Verb::Create, "Pod"), 2, "the orphan is adopted");
        let pods = fake.list::<Pod>("ns", "app=web").unwrap();
        assert_eq!(pods.len(), 3);
        for p in &pods {
            let owner = &p.metadata.owner_references.as_ref().unwrap()[0];
            assert_eq!(owner.kind, "ReplicationController");
            assert_eq!(owner.controller, Some(true));
        }
        let stored = fake
            .get::<ReplicationController>("ns", "web")
            .unwrap()
            .unwrap();
        assert_eq!(stored.status.unwrap().replicas, 3);
    }

    #[test]
    fn an_empty_selector_means_the_template_labels_and_scale_down_deletes() {
        let fake = FakeCluster::new();
        rc(&fake, 2, json!({}));
        run(&fake);
        assert_eq!(fake.list::<Pod>("ns", "app=web").unwrap().len(), 2);
        let mut stored = fake
            .get::<ReplicationController>("ns", "web")
            .unwrap()
            .unwrap();
        stored.spec.as_mut().unwrap().replicas = Some(0);
        fake.seed(&stored);
        run(&fake);
        assert_eq!(fake.count(Verb::Delete, "Pod"), 2);
    }
}
