//! The Deployment controller as a kedge plugin: one ReplicaSet per pod-template version,
//! the newest scaled to `spec.replicas`, older ones scaled to zero once the new one is fully
//! available (no downtime, but also no surge limits).
//!
//! Not implemented yet: RollingUpdate's maxSurge/maxUnavailable pacing (a new template that
//! never becomes ready keeps the old pods running forever), Recreate, progressDeadlineSeconds,
//! revisionHistoryLimit clean-up, adoption of orphaned ReplicaSets, minReadySeconds.

use k8s_openapi::api::apps::v1::{
    Deployment, DeploymentCondition, DeploymentStatus, ReplicaSet, ReplicaSetSpec,
};
use k8s_openapi::api::core::v1::{Event, PodTemplateSpec};
use k8s_openapi::apimachinery::pkg::apis::meta::v1::ObjectMeta;
use kedge_guest::meta::{controller_of, new_controller_ref, parse_time, set_condition};
use kedge_guest::pod::{POD_TEMPLATE_HASH_LABEL, pod_template_hash};
use kedge_guest::selector::Selector;
use kedge_guest::{
    ApiResultExt, Cluster, ClusterExt, Controller, KindRef, LogLevel, ObjectKey, Outcome,
    Registration, Result,
};
use serde_json::json;

/// The Events' source, as Kubernetes' controller names it.
const COMPONENT: &str = "deployment-controller";

/// `ScalingReplicaSet`, worded as Kubernetes' deployment controller does.
fn scaled(cluster: &dyn Cluster, deploy: &Deployment, rs: &str, from: i32, to: i32) {
    if from == to {
        return;
    }
    let dir = if to > from { "up" } else { "down" };
    let _ = cluster.record_event(
        deploy,
        "Normal",
        "ScalingReplicaSet",
        &format!("Scaled {dir} replica set {rs} from {from} to {to}"),
        COMPONENT,
    );
}

/// Annotation carrying the rollout revision on Deployments and their ReplicaSets.
pub const REVISION_ANNOTATION: &str = "deployment.kubernetes.io/revision";
/// Copied from the Deployment to its current ReplicaSet, where `kubectl rollout history`
/// reads it (CHANGE-CAUSE), as the Kubernetes deployment controller copies annotations.
pub const CHANGE_CAUSE_ANNOTATION: &str = "kubernetes.io/change-cause";

fn change_cause(meta: &ObjectMeta) -> Option<&String> {
    meta.annotations.as_ref()?.get(CHANGE_CAUSE_ANNOTATION)
}

/// The plugin type wired to the component exports.
pub struct DeploymentController;

impl Controller for DeploymentController {
    fn registration() -> Registration {
        Registration::new("deployment", KindRef::of::<Deployment>())
            .owns([KindRef::of::<ReplicaSet>()])
            .writes([
                KindRef::of::<ReplicaSet>(),
                KindRef::of::<Deployment>(),
                KindRef::of::<Event>(),
            ])
    }

    fn reconcile(cluster: &dyn Cluster, key: &ObjectKey) -> Result<Outcome> {
        reconcile(cluster, key)
    }
}

kedge_guest::export_controller!(DeploymentController);

fn revision(meta: &ObjectMeta) -> u64 {
    meta.annotations
        .as_ref()
        .and_then(|a| a.get(REVISION_ANNOTATION))
        .and_then(|r| r.parse().ok())
        .unwrap_or(0)
}

fn template_hash(rs: &ReplicaSet) -> Option<&str> {
    rs.spec
        .as_ref()?
        .template
        .as_ref()?
        .metadata
        .as_ref()?
        .labels
        .as_ref()?
        .get(POD_TEMPLATE_HASH_LABEL)
        .map(String::as_str)
}

fn spec_replicas(rs: &ReplicaSet) -> i32 {
    rs.spec.as_ref().and_then(|s| s.replicas).unwrap_or(1)
}

fn status_of(rs: &ReplicaSet) -> (i32, i32, i32) {
    rs.status.as_ref().map_or((0, 0, 0), |s| {
        (
            s.replicas,
            s.ready_replicas.unwrap_or(0),
            s.available_replicas.unwrap_or(0),
        )
    })
}

/// The ReplicaSet for the current template: selector and labels extended with the hash so
/// it never selects pods of another template version.
fn new_replica_set(deploy: &Deployment, hash: &str, replicas: i32, rev: u64) -> ReplicaSet {
    let spec = deploy.spec.as_ref().expect("caller checked spec");
    let mut template: PodTemplateSpec = spec.template.clone();
    let tmeta = template.metadata.get_or_insert_default();
    tmeta
        .labels
        .get_or_insert_default()
        .insert(POD_TEMPLATE_HASH_LABEL.into(), hash.into());
    let mut selector = spec.selector.clone();
    selector
        .match_labels
        .get_or_insert_default()
        .insert(POD_TEMPLATE_HASH_LABEL.into(), hash.into());
    let name = deploy.metadata.name.as_deref().unwrap_or("");
    ReplicaSet {
        metadata: ObjectMeta {
            name: Some(format!("{name}-{hash}")),
            namespace: deploy.metadata.namespace.clone(),
            labels: tmeta.labels.clone(),
            annotations: Some(
                [(REVISION_ANNOTATION.to_string(), rev.to_string())]
                    .into_iter()
                    .chain(
                        change_cause(&deploy.metadata)
                            .map(|c| (CHANGE_CAUSE_ANNOTATION.to_string(), c.clone())),
                    )
                    .collect(),
            ),
            owner_references: Some(vec![new_controller_ref(deploy)]),
            ..Default::default()
        },
        spec: Some(ReplicaSetSpec {
            replicas: Some(replicas),
            selector,
            template: Some(template),
            min_ready_seconds: spec.min_ready_seconds,
        }),
        status: None,
    }
}

/// Replaces `old` in `list` by `new` (same name), keeping the list the post-write truth.
fn store(list: &mut [ReplicaSet], new: ReplicaSet) {
    if let Some(slot) = list
        .iter_mut()
        .find(|r| r.metadata.name == new.metadata.name)
    {
        *slot = new;
    }
}

fn reconcile(cluster: &dyn Cluster, key: &ObjectKey) -> Result<Outcome> {
    let ns = key.namespace.as_str();
    let Some(mut deploy) = cluster.get::<Deployment>(ns, &key.name)? else {
        return Ok(Outcome::done());
    };
    if deploy.metadata.deletion_timestamp.is_some() {
        return Ok(Outcome::done());
    }
    let Some(spec) = deploy.spec.clone() else {
        return Ok(Outcome::done());
    };
    match Selector::from_label_selector(&spec.selector) {
        Ok(s) if !s.requirements().is_empty() => {}
        Ok(_) => return invalid(cluster, key, "empty selector"),
        Err(e) => return invalid(cluster, key, &e.to_string()),
    }
    let uid = deploy.metadata.uid.clone().unwrap_or_default();
    let desired = spec.replicas.unwrap_or(1).max(0);
    let paused = spec.paused == Some(true);
    let hash = pod_template_hash(&spec.template);

    let mut owned: Vec<ReplicaSet> = cluster
        .list::<ReplicaSet>(ns, "")?
        .into_iter()
        .filter(|rs| controller_of(&rs.metadata).is_some_and(|r| r.uid == uid))
        .collect();
    let max_old_rev = owned
        .iter()
        .filter(|r| template_hash(r) != Some(&hash))
        .map(|r| revision(&r.metadata))
        .max()
        .unwrap_or(0);

    // The ReplicaSet to scale: the one for the current template, or while paused the newest.
    let mut target = owned.iter().position(|r| template_hash(r) == Some(&hash));
    if target.is_none() && paused {
        target = owned
            .iter()
            .enumerate()
            .max_by_key(|(_, r)| revision(&r.metadata))
            .map(|(i, _)| i);
    }
    let target_name = match target {
        // Paused before its first rollout: nothing to scale, and no new ReplicaSet.
        None if paused => None,
        Some(i) => {
            let rs = &owned[i];
            let name = rs.metadata.name.clone().unwrap_or_default();
            let mut patch = serde_json::Map::new();
            if spec_replicas(rs) != desired {
                patch.insert("spec".into(), json!({"replicas": desired}));
            }
            let mut annotations = serde_json::Map::new();
            // A rollback makes an old template current again: it becomes the newest revision.
            if !paused && revision(&rs.metadata) <= max_old_rev {
                annotations.insert(
                    REVISION_ANNOTATION.into(),
                    json!((max_old_rev + 1).to_string()),
                );
            }
            if template_hash(rs) == Some(&hash)
                && let Some(cause) = change_cause(&deploy.metadata)
                && change_cause(&rs.metadata) != Some(cause)
            {
                annotations.insert(CHANGE_CAUSE_ANNOTATION.into(), json!(cause));
            }
            if !annotations.is_empty() {
                patch.insert("metadata".into(), json!({ "annotations": annotations }));
            }
            if !patch.is_empty() {
                let from = spec_replicas(rs);
                let updated = cluster.patch_merge::<ReplicaSet>(ns, &name, &patch.into())?;
                scaled(cluster, &deploy, &name, from, spec_replicas(&updated));
                store(&mut owned, updated);
            }
            Some(name)
        }
        None => {
            let rs = new_replica_set(&deploy, &hash, desired, max_old_rev + 1);
            let created = cluster.create(ns, &rs)?;
            let name = created.metadata.name.clone().unwrap_or_default();
            cluster.log(LogLevel::Info, &format!("created replicaset {ns}/{name}"));
            scaled(cluster, &deploy, &name, 0, desired);
            owned.push(created);
            Some(name)
        }
    };
    let new_rs = owned
        .iter()
        .find(|r| r.metadata.name.is_some() && r.metadata.name == target_name)
        .cloned();
    let (new_replicas, _, new_available) = new_rs.as_ref().map_or((0, 0, 0), status_of);

    // Old ReplicaSets go to zero only once the new one can carry the whole load.
    if !paused && new_available >= desired {
        let old_names: Vec<String> = owned
            .iter()
            .filter(|r| r.metadata.name != target_name && spec_replicas(r) > 0)
            .filter_map(|r| r.metadata.name.clone())
            .collect();
        for name in old_names {
            let from = owned
                .iter()
                .find(|r| r.metadata.name.as_deref() == Some(&name))
                .map_or(0, spec_replicas);
            let updated =
                cluster.patch_merge::<ReplicaSet>(ns, &name, &json!({"spec": {"replicas": 0}}))?;
            scaled(cluster, &deploy, &name, from, 0);
            store(&mut owned, updated);
        }
    }

    // The Deployment's revision follows its current ReplicaSet; annotations always present.
    let rev = new_rs.as_ref().map(|r| revision(&r.metadata).to_string());
    let annotations = deploy.metadata.annotations.get_or_insert_default();
    if let Some(rev) = rev
        && annotations.get(REVISION_ANNOTATION) != Some(&rev)
    {
        annotations.insert(REVISION_ANNOTATION.into(), rev);
        match cluster.update(ns, &deploy).ignore_stale()? {
            Some(d) => deploy = d,
            // Changed meanwhile: that change enqueues the Deployment again.
            None => return Ok(Outcome::done()),
        }
    }

    let (replicas, ready, available) = owned
        .iter()
        .map(status_of)
        .fold((0, 0, 0), |a, s| (a.0 + s.0, a.1 + s.1, a.2 + s.2));
    let old = deploy.status.clone().unwrap_or_default();
    let mut conditions = old.conditions.clone().unwrap_or_default();
    let now = parse_time(&cluster.now());
    let condition =
        |type_: &str, status: &str, reason: &str, message: String| DeploymentCondition {
            type_: type_.into(),
            status: status.into(),
            reason: Some(reason.into()),
            message: Some(message),
            last_update_time: now.clone(),
            last_transition_time: now.clone(),
        };
    set_condition(
        &mut conditions,
        if available >= desired {
            condition(
                "Available",
                "True",
                "MinimumReplicasAvailable",
                "Deployment has minimum availability.".into(),
            )
        } else {
            condition(
                "Available",
                "False",
                "MinimumReplicasUnavailable",
                "Deployment does not have minimum availability.".into(),
            )
        },
    );
    set_condition(
        &mut conditions,
        if paused {
            condition(
                "Progressing",
                "Unknown",
                "DeploymentPaused",
                "Deployment is paused".into(),
            )
        } else if new_available >= desired && new_replicas == replicas {
            condition(
                "Progressing",
                "True",
                "NewReplicaSetAvailable",
                format!(
                    "ReplicaSet \"{}\" has successfully progressed.",
                    target_name.as_deref().unwrap_or("")
                ),
            )
        } else {
            condition(
                "Progressing",
                "True",
                "ReplicaSetUpdated",
                format!(
                    "ReplicaSet \"{}\" is progressing.",
                    target_name.as_deref().unwrap_or("")
                ),
            )
        },
    );
    let status = DeploymentStatus {
        observed_generation: deploy.metadata.generation,
        replicas: Some(replicas),
        updated_replicas: Some(new_replicas),
        ready_replicas: Some(ready),
        available_replicas: Some(available),
        unavailable_replicas: Some((desired - available).max(0)),
        conditions: Some(conditions),
        collision_count: old.collision_count,
        terminating_replicas: old.terminating_replicas,
    };
    cluster.update_status_if_changed(ns, &deploy, status)?;
    Ok(Outcome::done())
}

/// A Deployment the API server should not have admitted: say so once, do not retry.
fn invalid(cluster: &dyn Cluster, key: &ObjectKey, why: &str) -> Result<Outcome> {
    cluster.log(
        LogLevel::Warn,
        &format!("deployment {}/{}: {why}; ignoring", key.namespace, key.name),
    );
    Ok(Outcome::done())
}

#[cfg(test)]
mod tests;
