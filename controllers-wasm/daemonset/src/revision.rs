//! ControllerRevisions: a DaemonSet's template history, stored the way Kubernetes stores
//! it so `kubectl rollout history/undo ds/x` read it.

use std::collections::BTreeSet;

use k8s_openapi::api::apps::v1::{ControllerRevision, DaemonSet};
use k8s_openapi::api::core::v1::PodTemplateSpec;
use k8s_openapi::apimachinery::pkg::apis::meta::v1::ObjectMeta;
use k8s_openapi::apimachinery::pkg::runtime::RawExtension;
use kedge_guest::meta::{controller_of, new_controller_ref};
use kedge_guest::{ApiError, ApiResultExt, Cluster, ClusterExt, Result};
use serde_json::{Value, json};

use crate::HASH_LABEL;

/// Kubernetes keeps revision names within 253 characters by cutting the DaemonSet name.
const MAX_PREFIX: usize = 223;

/// The revision's `data`: a strategic-merge patch replacing the whole template, exactly
/// what kube-controller-manager's `getPatch` stores (and `kubectl rollout undo` applies).
pub fn revision_data(template: &PodTemplateSpec) -> Value {
    let mut t = serde_json::to_value(template).expect("k8s-openapi types always serialize");
    if let Some(m) = t.as_object_mut() {
        m.insert("$patch".into(), json!("replace"));
    }
    json!({"spec": {"template": t}})
}

/// `<ds>-<hash>`.
pub fn revision_name(ds_name: &str, hash: &str) -> String {
    let prefix: String = ds_name.chars().take(MAX_PREFIX).collect();
    format!("{prefix}-{hash}")
}

/// The revisions `ds` controls, oldest revision first.
pub fn owned_revisions(cluster: &dyn Cluster, ds: &DaemonSet) -> Result<Vec<ControllerRevision>> {
    let ns = ds.metadata.namespace.as_deref().unwrap_or("default");
    let uid = ds.metadata.uid.as_deref().unwrap_or("");
    let mut revs: Vec<ControllerRevision> = cluster
        .list::<ControllerRevision>(ns, "")?
        .into_iter()
        .filter(|r| controller_of(&r.metadata).is_some_and(|o| o.uid == uid))
        .collect();
    revs.sort_by_key(|r| (r.revision, r.metadata.name.clone()));
    Ok(revs)
}

fn data_of(r: &ControllerRevision) -> Option<&Value> {
    r.data.as_ref().map(|d| &d.0)
}

/// Makes the revision of the current template exist and carry the highest number (a
/// rollback to an old template renumbers that old revision rather than copying it, as in
/// Kubernetes). Returns its name; `revs` is updated in place.
pub fn sync_current(
    cluster: &dyn Cluster,
    ds: &DaemonSet,
    hash: &str,
    revs: &mut Vec<ControllerRevision>,
) -> Result<String> {
    let ns = ds.metadata.namespace.as_deref().unwrap_or("default");
    let ds_name = ds.metadata.name.as_deref().unwrap_or("");
    let template = ds
        .spec
        .as_ref()
        .map(|s| s.template.clone())
        .unwrap_or_default();
    let data = revision_data(&template);
    let current = revs.iter().position(|r| data_of(r) == Some(&data));
    let others_max = revs
        .iter()
        .enumerate()
        .filter(|(i, _)| Some(*i) != current)
        .map(|(_, r)| r.revision)
        .max()
        .unwrap_or(0);
    if let Some(i) = current {
        let name = revs[i].metadata.name.clone().unwrap_or_default();
        if revs[i].revision <= others_max {
            let patch = json!({"revision": others_max + 1});
            revs[i] = cluster.patch_merge::<ControllerRevision>(ns, &name, &patch)?;
        }
        return Ok(name);
    }
    let name = revision_name(ds_name, hash);
    let mut labels = template
        .metadata
        .as_ref()
        .and_then(|m| m.labels.clone())
        .unwrap_or_default();
    labels.insert(HASH_LABEL.into(), hash.into());
    let rev = ControllerRevision {
        metadata: ObjectMeta {
            name: Some(name.clone()),
            namespace: Some(ns.into()),
            labels: Some(labels),
            annotations: ds.metadata.annotations.clone(),
            owner_references: Some(vec![new_controller_ref(ds)]),
            ..Default::default()
        },
        data: Some(RawExtension(data)),
        revision: others_max + 1,
    };
    match cluster.create(ns, &rev) {
        Ok(made) => revs.push(made),
        Err(ApiError::AlreadyExists(m)) => {
            let existing = cluster.get::<ControllerRevision>(ns, &name)?;
            match existing {
                // Left behind by an orphaning delete of an earlier DaemonSet: adopt it.
                Some(old)
                    if controller_of(&old.metadata).is_none()
                        && data_of(&old) == rev.data.as_ref().map(|d| &d.0) =>
                {
                    let mut refs = old.metadata.owner_references.clone().unwrap_or_default();
                    refs.push(new_controller_ref(ds));
                    let patch = json!({
                        "metadata": {"ownerReferences": refs, "uid": old.metadata.uid},
                        "revision": others_max + 1,
                    });
                    revs.push(cluster.patch_merge::<ControllerRevision>(ns, &name, &patch)?);
                }
                // Someone else's, or a hash collision: report it and let the host retry with
                // back-off rather than clobber it (the GC may be removing a previous owner's).
                _ => return Err(format!("controllerrevision {ns}/{name} exists: {m}").into()),
            }
        }
        Err(e) => return Err(e.into()),
    }
    Ok(name)
}

/// Deletes the oldest revisions beyond `limit`, sparing the current one and any a live pod
/// still runs (its hash label), as Kubernetes' `cleanupHistory` does.
pub fn cleanup(
    cluster: &dyn Cluster,
    ns: &str,
    limit: usize,
    revs: &[ControllerRevision],
    current: &str,
    live_hashes: &BTreeSet<String>,
) -> Result<()> {
    let mut old: Vec<&ControllerRevision> = revs
        .iter()
        .filter(|r| r.metadata.name.as_deref() != Some(current))
        .filter(|r| {
            let hash = r.metadata.labels.as_ref().and_then(|l| l.get(HASH_LABEL));
            hash.is_none_or(|h| !live_hashes.contains(h))
        })
        .collect();
    if old.len() <= limit {
        return Ok(());
    }
    old.sort_by_key(|r| r.revision);
    let excess = old.len() - limit;
    for r in &old[..excess] {
        let name = r.metadata.name.as_deref().unwrap_or("");
        cluster
            .delete::<ControllerRevision>(ns, name)
            .ignore_not_found()?;
    }
    Ok(())
}
