//! The ReplicaSet controller as a kedge plugin: keeps `spec.replicas` active pods that
//! match the selector, adopting orphans and releasing pods whose labels drifted away.
//!
//! `minReadySeconds` is not honoured yet: a pod counts as available as soon as it is ready.

use std::cmp::Reverse;

use k8s_openapi::api::apps::v1::{ReplicaSet, ReplicaSetStatus};
use k8s_openapi::api::core::v1::{Event, Pod};
use k8s_openapi::apimachinery::pkg::apis::meta::v1::{ObjectMeta, Time};
use kedge_guest::meta::{controller_of, labels_of, new_controller_ref};
use kedge_guest::pod::{is_active, is_ready};
use kedge_guest::selector::Selector;
use kedge_guest::{
    ApiError, Cluster, ClusterExt, Controller, KindRef, LogLevel, ObjectKey, Outcome, Registration,
};
use serde_json::json;

/// The Events' source, as Kubernetes' controller names it.
const COMPONENT: &str = "replicaset-controller";

/// The plugin type wired to the component exports.
pub struct ReplicaSetController;

impl Controller for ReplicaSetController {
    fn registration() -> Registration {
        Registration {
            name: "replicaset".into(),
            for_kind: KindRef::of::<ReplicaSet>(),
            owns: vec![KindRef::of::<Pod>()],
            reads: vec![],
            writes: vec![
                KindRef::of::<Pod>(),
                KindRef::of::<ReplicaSet>(),
                KindRef::of::<Event>(),
            ],
        }
    }

    fn reconcile(cluster: &dyn Cluster, key: &ObjectKey) -> Result<Outcome, String> {
        reconcile(cluster, key)
    }
}

kedge_guest::export_controller!(ReplicaSetController);

fn api(e: ApiError) -> String {
    e.to_string()
}

/// Sort key for scale-down: the pod that is cheapest to lose sorts first (unscheduled,
/// then pending, then not ready, then newest), name last for a stable order.
fn deletion_cost(pod: &Pod) -> (bool, bool, bool, Reverse<Option<Time>>, Option<String>) {
    let scheduled = pod
        .spec
        .as_ref()
        .and_then(|s| s.node_name.as_deref())
        .is_some_and(|n| !n.is_empty());
    let pending = pod.status.as_ref().and_then(|s| s.phase.as_deref()) == Some("Pending");
    (
        scheduled,
        !pending,
        is_ready(pod),
        Reverse(pod.metadata.creation_timestamp.clone()),
        pod.metadata.name.clone(),
    )
}

fn reconcile(cluster: &dyn Cluster, key: &ObjectKey) -> Result<Outcome, String> {
    let ns = key.namespace.as_str();
    let Some(rs) = cluster.get::<ReplicaSet>(ns, &key.name).map_err(api)? else {
        return Ok(Outcome::done());
    };
    if rs.metadata.deletion_timestamp.is_some() {
        return Ok(Outcome::done());
    }
    let Some(spec) = rs.spec.as_ref() else {
        return Ok(Outcome::done());
    };
    let selector = match Selector::from_label_selector(&spec.selector) {
        // An empty selector would claim every pod in the namespace; the API server forbids it.
        Ok(s) if !s.requirements().is_empty() => s,
        Ok(_) => return invalid(cluster, key, "empty selector"),
        Err(e) => return invalid(cluster, key, &e.to_string()),
    };
    let uid = rs.metadata.uid.clone().unwrap_or_default();

    let mut owned = Vec::new();
    for pod in cluster.list::<Pod>(ns, "").map_err(api)? {
        let name = pod.metadata.name.clone().unwrap_or_default();
        let matches = selector.matches(labels_of(&pod.metadata));
        match controller_of(&pod.metadata) {
            Some(r) if r.uid == uid && matches => owned.push(pod),
            Some(r) if r.uid == uid => {
                let rest: Vec<_> = pod
                    .metadata
                    .owner_references
                    .iter()
                    .flatten()
                    .filter(|o| o.uid != uid)
                    .collect();
                let patch = json!({"metadata": {"ownerReferences": rest, "uid": pod.metadata.uid}});
                release_or_adopt(cluster.patch_merge::<Pod>(ns, &name, &patch))?;
            }
            None if matches && is_active(&pod) => {
                let mut refs = pod.metadata.owner_references.clone().unwrap_or_default();
                refs.push(new_controller_ref(&rs));
                let patch = json!({"metadata": {"ownerReferences": refs, "uid": pod.metadata.uid}});
                if let Some(adopted) =
                    release_or_adopt(cluster.patch_merge::<Pod>(ns, &name, &patch))?
                {
                    owned.push(adopted);
                }
            }
            _ => {}
        }
    }

    let mut active: Vec<Pod> = owned.into_iter().filter(is_active).collect();
    let desired = usize::try_from(spec.replicas.unwrap_or(1)).unwrap_or(0);
    if active.len() < desired {
        let template = spec.template.as_ref().ok_or("spec.template is missing")?;
        let tmeta = template.metadata.clone().unwrap_or_default();
        let pod = Pod {
            metadata: ObjectMeta {
                generate_name: Some(format!("{}-", key.name)),
                namespace: Some(ns.to_owned()),
                labels: tmeta.labels,
                annotations: tmeta.annotations,
                owner_references: Some(vec![new_controller_ref(&rs)]),
                ..Default::default()
            },
            spec: template.spec.clone(),
            status: None,
        };
        for _ in active.len()..desired {
            let created = cluster.create(ns, &pod).map_err(api)?;
            let pod_name = created.metadata.name.clone().unwrap_or_default();
            let _ = cluster.record_event(
                &rs,
                "Normal",
                "SuccessfulCreate",
                &format!("Created pod: {pod_name}"),
                COMPONENT,
            );
            active.push(created);
        }
    } else if active.len() > desired {
        active.sort_by_cached_key(deletion_cost);
        for victim in active.drain(..active.len() - desired) {
            let pod_name = victim.metadata.name.as_deref().unwrap_or("");
            match cluster.delete::<Pod>(ns, pod_name) {
                Ok(()) => {
                    let _ = cluster.record_event(
                        &rs,
                        "Normal",
                        "SuccessfulDelete",
                        &format!("Deleted pod: {pod_name}"),
                        COMPONENT,
                    );
                }
                Err(ApiError::NotFound(_)) => {}
                Err(e) => return Err(api(e)),
            }
        }
    }

    let template_labels = spec
        .template
        .as_ref()
        .and_then(|t| t.metadata.as_ref())
        .map(labels_of);
    let count = |f: &dyn Fn(&Pod) -> bool| {
        i32::try_from(active.iter().filter(|p| f(p)).count()).unwrap_or(i32::MAX)
    };
    let ready = count(&is_ready);
    let old = rs.status.clone().unwrap_or_default();
    let status = ReplicaSetStatus {
        replicas: count(&|_| true),
        fully_labeled_replicas: Some(count(&|p| {
            let labels = labels_of(&p.metadata);
            template_labels
                .into_iter()
                .flatten()
                .all(|(k, v)| labels.get(k) == Some(v))
        })),
        ready_replicas: Some(ready),
        available_replicas: Some(ready),
        observed_generation: rs.metadata.generation,
        conditions: old.conditions.clone(),
        terminating_replicas: old.terminating_replicas,
    };
    if status != old {
        let mut updated = rs.clone();
        updated.status = Some(status);
        match cluster.update_status(ns, &updated) {
            // A conflict means the ReplicaSet changed; that change enqueues it again.
            Ok(_) | Err(ApiError::Conflict(_) | ApiError::NotFound(_)) => {}
            Err(e) => return Err(api(e)),
        }
    }
    Ok(Outcome::done())
}

/// A patch on a pod that vanished or changed meanwhile is not an error: the next event
/// brings a fresh view.
fn release_or_adopt(result: Result<Pod, ApiError>) -> Result<Option<Pod>, String> {
    match result {
        Ok(p) => Ok(Some(p)),
        Err(ApiError::NotFound(_) | ApiError::Conflict(_)) => Ok(None),
        Err(e) => Err(api(e)),
    }
}

/// A ReplicaSet the API server should not have admitted: say so once, do not retry.
fn invalid(cluster: &dyn Cluster, key: &ObjectKey, why: &str) -> Result<Outcome, String> {
    cluster.log(
        LogLevel::Warn,
        &format!("replicaset {}/{}: {why}; ignoring", key.namespace, key.name),
    );
    Ok(Outcome::done())
}

#[cfg(test)]
mod tests;
