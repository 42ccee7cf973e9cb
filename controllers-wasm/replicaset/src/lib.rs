//! The ReplicaSet controller as a kedge plugin: keeps `spec.replicas` active pods that
//! match the selector, adopting orphans and releasing pods whose labels drifted away. The
//! logic lives in `kedge-podset`, shared with the ReplicationController plugin.

use k8s_openapi::api::apps::v1::ReplicaSet;
use k8s_openapi::api::core::v1::{Event, Pod};
#[cfg(test)]
use k8s_openapi::apimachinery::pkg::apis::meta::v1::ObjectMeta;
use kedge_guest::{Cluster, Controller, KindRef, ObjectKey, Outcome, Registration, Result};

/// The Events' source, as Kubernetes' controller names it.
const COMPONENT: &str = "replicaset-controller";

/// The plugin type wired to the component exports.
pub struct ReplicaSetController;

impl Controller for ReplicaSetController {
    fn registration() -> Registration {
        Registration::new("replicaset", KindRef::of::<ReplicaSet>())
            .owns([KindRef::of::<Pod>()])
            .writes([
                KindRef::of::<Pod>(),
                KindRef::of::<ReplicaSet>(),
                KindRef::of::<Event>(),
            ])
    }

    fn reconcile(cluster: &dyn Cluster, key: &ObjectKey) -> Result<Outcome> {
        kedge_podset::reconcile::<ReplicaSet>(cluster, key, COMPONENT)
    }
}

kedge_guest::export_controller!(ReplicaSetController);

#[cfg(test)]
mod tests;
