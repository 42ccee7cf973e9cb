//! The local-path provisioner as a kedge plugin: K3s' `rancher.io/local-path` (a directory on
//! the node) with Kubernetes' PV controller and PVC protection around it.
//!
//! For each PersistentVolumeClaim:
//! - **Protection**: a claim carries `kubernetes.io/pvc-protection` while it exists; once it
//!   is being deleted the finalizer goes when no pod that is not finished uses it (polled: pod
//!   events do not reach claims).
//! - **Provisioning** (class of provisioner `rancher.io/local-path`, `WaitForFirstConsumer`):
//!   the claim waits until the scheduler writes `volume.kubernetes.io/selected-node` on it (it
//!   does when it places a pod using the claim), then gets a PersistentVolume `pvc-<uid>`: a
//!   `hostPath` (`DirectoryOrCreate`) at `<nodePath>/pvc-<uid>_<ns>_<name>` (`nodePath`: the
//!   class parameter, default [`DEFAULT_NODE_PATH`]), node affinity on that node's hostname,
//!   the claim's request as capacity, the class's reclaim policy, the finalizer
//!   [`CLEANUP_FINALIZER`] and the label [`NODE_LABEL`] through which that node's agent finds
//!   it, removes the directory once the volume is deleted (with reclaim policy `Delete` only:
//!   a `Retain` volume's data outlives its object, as in Kubernetes), and drops the finalizer.
//! - **Static binding** (no class, `""`, or a class of another provisioner): the smallest
//!   `Available` volume of the same class whose capacity, access modes, volume mode and the
//!   claim's selector fit, or the volume the claim names in `spec.volumeName`.
//! - **Binding**: the volume's `claimRef` and phase `Bound`; the claim's `spec.volumeName`,
//!   `pv.kubernetes.io/bind-completed` and `bound-by-controller` annotations, and status
//!   (phase, capacity, access modes) — the PV controller's order: volume first.
//!
//! Every reconcile also sweeps the volumes: one whose claim is gone (or another claim of that
//! name) becomes `Released`; a released volume with reclaim policy `Delete` is deleted (for a
//! local-path volume the agent then removes the directory), with `Retain` it stays, data and
//! all. Static `hostPath` volumes with `Delete` lose only their object: kedge never removes a
//! directory it did not make.

use std::collections::BTreeMap;

use k8s_openapi::api::core::v1::{
    Event, HostPathVolumeSource, NodeSelector, NodeSelectorRequirement, NodeSelectorTerm,
    ObjectReference, PersistentVolume, PersistentVolumeClaim, PersistentVolumeClaimStatus,
    PersistentVolumeSpec, PersistentVolumeStatus, Pod, VolumeNodeAffinity,
};
use k8s_openapi::api::storage::v1::StorageClass;
use k8s_openapi::apimachinery::pkg::api::resource::Quantity;
use kedge_guest::meta::labels_of;
use kedge_guest::quantity::parse_bytes;
use kedge_guest::selector::Selector;
use kedge_guest::{
    ApiResultExt, Cluster, ClusterExt, Controller, KindRef, ObjectKey, Outcome, Registration,
    Result,
};

/// The provisioner this plugin serves, as K3s names it.
pub const PROVISIONER: &str = "rancher.io/local-path";
/// Where volumes go on the node when the class has no `nodePath` parameter.
pub const DEFAULT_NODE_PATH: &str = "/var/lib/kedge/storage";
/// Held by a local-path volume until its node's agent has removed the directory (kept if the
/// volume's reclaim policy is `Retain`).
pub const CLEANUP_FINALIZER: &str = "kedge.io/local-path-cleanup";
/// The node holding a local-path volume: the agent lists its volumes by it.
pub const NODE_LABEL: &str = "kedge.io/local-path-node";
/// Kubernetes' PVC protection finalizer.
pub const PROTECTION_FINALIZER: &str = "kubernetes.io/pvc-protection";
/// Written by the scheduler on a `WaitForFirstConsumer` claim: the node of its first pod.
pub const SELECTED_NODE: &str = "volume.kubernetes.io/selected-node";

const COMPONENT: &str = "persistentvolume-controller";

/// How often claims in flight (pending, or held by a pod while being deleted) are looked at
/// again: pods and volumes do not enqueue claims.
const POLL_MS: u64 = 2000;

pub struct LocalPath;

impl Controller for LocalPath {
    fn registration() -> Registration {
        Registration::new("localpath", KindRef::of::<PersistentVolumeClaim>())
            .reads([
                KindRef::of::<PersistentVolume>(),
                KindRef::of::<StorageClass>(),
                KindRef::of::<Pod>(),
            ])
            .writes([
                KindRef::of::<PersistentVolumeClaim>(),
                KindRef::of::<PersistentVolume>(),
                KindRef::of::<Event>(),
            ])
    }

    fn reconcile(cluster: &dyn Cluster, key: &ObjectKey) -> Result<Outcome> {
        reconcile(cluster, key)
    }
}

kedge_guest::export_controller!(LocalPath);

fn storage_of(q: Option<&BTreeMap<String, Quantity>>) -> u64 {
    q.and_then(|m| m.get("storage"))
        .and_then(|q| parse_bytes(&q.0).ok())
        .unwrap_or(0)
}

fn claim_request(pvc: &PersistentVolumeClaim) -> u64 {
    storage_of(
        pvc.spec
            .as_ref()
            .and_then(|s| s.resources.as_ref())
            .and_then(|r| r.requests.as_ref()),
    )
}

fn class_of(pvc: &PersistentVolumeClaim) -> &str {
    pvc.spec
        .as_ref()
        .and_then(|s| s.storage_class_name.as_deref())
        .unwrap_or("")
}

fn phase_of(pv: &PersistentVolume) -> &str {
    pv.status
        .as_ref()
        .and_then(|s| s.phase.as_deref())
        .unwrap_or("")
}

/// Whether the volume can serve the claim (the PV controller's `FindMatchingVolume`, without
/// topology): same class and volume mode, enough capacity, every requested access mode, the
/// claim's selector.
pub fn fits(pv: &PersistentVolume, pvc: &PersistentVolumeClaim) -> bool {
    let (Some(vs), Some(cs)) = (&pv.spec, &pvc.spec) else {
        return false;
    };
    let mode = |m: &Option<String>| m.clone().unwrap_or_else(|| "Filesystem".into());
    let modes_ok = cs
        .access_modes
        .iter()
        .flatten()
        .all(|m| vs.access_modes.iter().flatten().any(|x| x == m));
    let selector_ok = match &cs.selector {
        None => true,
        Some(sel) => serde_json::to_value(sel)
            .ok()
            .and_then(|v| Selector::from_structured(&v).ok())
            .is_some_and(|s| s.matches(labels_of(&pv.metadata))),
    };
    vs.storage_class_name.as_deref().unwrap_or("") == class_of(pvc)
        && mode(&vs.volume_mode) == mode(&cs.volume_mode)
        && storage_of(vs.capacity.as_ref()) >= claim_request(pvc)
        && modes_ok
        && selector_ok
}

/// The smallest available, unclaimed volume that fits.
pub fn best_match<'a>(
    volumes: &'a [PersistentVolume],
    pvc: &PersistentVolumeClaim,
) -> Option<&'a PersistentVolume> {
    volumes
        .iter()
        .filter(|pv| {
            phase_of(pv) == "Available"
                && pv.metadata.deletion_timestamp.is_none()
                && pv
                    .spec
                    .as_ref()
                    .and_then(|s| s.claim_ref.as_ref())
                    .is_none()
                && fits(pv, pvc)
        })
        .min_by_key(|pv| {
            (
                storage_of(pv.spec.as_ref().and_then(|s| s.capacity.as_ref())),
                pv.metadata.name.clone(),
            )
        })
}

/// Whether a pod that has not finished uses the claim.
fn in_use(pods: &[Pod], name: &str) -> bool {
    pods.iter().any(|p| {
        let finished = matches!(
            p.status.as_ref().and_then(|s| s.phase.as_deref()),
            Some("Succeeded" | "Failed")
        );
        !finished
            && p.spec
                .as_ref()
                .and_then(|s| s.volumes.as_ref())
                .into_iter()
                .flatten()
                .any(|v| {
                    v.persistent_volume_claim
                        .as_ref()
                        .is_some_and(|c| c.claim_name == name)
                })
    })
}

fn reconcile(cluster: &dyn Cluster, key: &ObjectKey) -> Result<Outcome> {
    let mut busy = sweep_volumes(cluster)?;
    if let Some(pvc) = cluster.get::<PersistentVolumeClaim>(&key.namespace, &key.name)? {
        busy |= sync_claim(cluster, pvc)?;
    }
    Ok(if busy {
        Outcome::requeue_after_ms(POLL_MS)
    } else {
        Outcome::done()
    })
}

/// Releases volumes whose claim is gone and reclaims the released ones; `true` while a
/// volume is still on its way out.
fn sweep_volumes(cluster: &dyn Cluster) -> Result<bool> {
    let mut busy = false;
    for pv in cluster.list::<PersistentVolume>("", "")? {
        let name = pv.metadata.name.clone().unwrap_or_default();
        if pv.metadata.deletion_timestamp.is_some() {
            busy = true;
            continue;
        }
        let Some(claim) = pv.spec.as_ref().and_then(|s| s.claim_ref.clone()) else {
            continue;
        };
        let phase = phase_of(&pv);
        if phase == "Bound" || phase == "Pending" {
            let ns = claim.namespace.as_deref().unwrap_or_default();
            let cname = claim.name.as_deref().unwrap_or_default();
            let current = cluster.get::<PersistentVolumeClaim>(ns, cname)?;
            let gone = match &current {
                None => true,
                Some(c) => claim.uid.is_some() && c.metadata.uid != claim.uid,
            };
            if !gone {
                continue;
            }
            let status = PersistentVolumeStatus {
                phase: Some("Released".into()),
                last_phase_transition_time: kedge_guest::meta::parse_time(&cluster.now()),
                ..Default::default()
            };
            cluster.update_status_if_changed("", &pv, status)?;
            busy = true;
        } else if phase == "Released" {
            let policy = pv
                .spec
                .as_ref()
                .and_then(|s| s.persistent_volume_reclaim_policy.as_deref())
                .unwrap_or("Retain");
            if policy == "Delete" {
                cluster
                    .delete::<PersistentVolume>("", &name)
                    .ignore_not_found()?;
                busy = true;
            }
        }
    }
    Ok(busy)
}

/// One claim's protection, provisioning and binding; `true` when it must be looked at again.
fn sync_claim(cluster: &dyn Cluster, mut pvc: PersistentVolumeClaim) -> Result<bool> {
    let ns = pvc.metadata.namespace.clone().unwrap_or_default();
    let name = pvc.metadata.name.clone().unwrap_or_default();
    let finalizers = pvc.metadata.finalizers.clone().unwrap_or_default();
    let protected = finalizers.iter().any(|f| f == PROTECTION_FINALIZER);
    if pvc.metadata.deletion_timestamp.is_some() {
        if !protected {
            return Ok(false);
        }
        if in_use(&cluster.list::<Pod>(&ns, "")?, &name) {
            return Ok(true);
        }
        pvc.metadata.finalizers = Some(
            finalizers
                .into_iter()
                .filter(|f| f != PROTECTION_FINALIZER)
                .collect(),
        );
        cluster.update(&ns, &pvc).ignore_stale()?;
        return Ok(false);
    }
    if !protected {
        pvc.metadata
            .finalizers
            .get_or_insert_default()
            .push(PROTECTION_FINALIZER.into());
        return match cluster.update(&ns, &pvc).ignore_stale()? {
            Some(updated) => sync_binding(cluster, updated),
            None => Ok(false),
        };
    }
    sync_binding(cluster, pvc)
}

fn sync_binding(cluster: &dyn Cluster, pvc: PersistentVolumeClaim) -> Result<bool> {
    let ns = pvc.metadata.namespace.clone().unwrap_or_default();
    let bound_phase = pvc.status.as_ref().and_then(|s| s.phase.as_deref()) == Some("Bound");
    let named = pvc
        .spec
        .as_ref()
        .and_then(|s| s.volume_name.clone())
        .filter(|n| !n.is_empty());
    if let Some(volume) = named {
        if bound_phase {
            return Ok(false);
        }
        let Some(pv) = cluster.get::<PersistentVolume>("", &volume)? else {
            // kube: the claim is Lost once its volume is gone; until then it waits.
            return Ok(true);
        };
        bind(cluster, pv, pvc)?;
        return Ok(false);
    }
    let class_name = class_of(&pvc).to_string();
    let class = if class_name.is_empty() {
        None
    } else {
        cluster.get::<StorageClass>("", &class_name)?
    };
    let local = class.as_ref().is_some_and(|c| c.provisioner == PROVISIONER);
    let volumes = cluster.list::<PersistentVolume>("", "")?;
    // A volume provisioned for this claim earlier (a crash between the two writes).
    let uid = pvc.metadata.uid.clone().unwrap_or_default();
    if let Some(pv) = volumes
        .iter()
        .find(|pv| pv.metadata.name.as_deref() == Some(&format!("pvc-{uid}")))
    {
        bind(cluster, pv.clone(), pvc)?;
        return Ok(false);
    }
    if !local {
        return match best_match(&volumes, &pvc) {
            Some(pv) => {
                bind(cluster, pv.clone(), pvc)?;
                Ok(false)
            }
            None => {
                let _ = cluster.record_event(
                    &pvc,
                    "Normal",
                    "FailedBinding",
                    "no persistent volumes available for this claim and no storage class is set",
                    COMPONENT,
                );
                Ok(true)
            }
        };
    }
    let class = class.expect("local means a class");
    let node = pvc
        .metadata
        .annotations
        .as_ref()
        .and_then(|a| a.get(SELECTED_NODE))
        .cloned();
    let Some(node) = node else {
        let _ = cluster.record_event(
            &pvc,
            "Normal",
            "WaitForFirstConsumer",
            "waiting for first consumer to be created before binding",
            COMPONENT,
        );
        return Ok(false);
    };
    let pv = cluster.create("", &provisioned_volume(&pvc, &class, &node))?;
    let _ = cluster.record_event(
        &pvc,
        "Normal",
        "ProvisioningSucceeded",
        &format!(
            "Successfully provisioned volume {}",
            pv.metadata.name.as_deref().unwrap_or_default()
        ),
        &format!("{PROVISIONER}_{node}"),
    );
    let _ = ns;
    bind(cluster, pv, pvc)?;
    Ok(false)
}

/// The directory of a claim's volume under `base`, as local-path-provisioner names it.
pub fn volume_dir(base: &str, pvc: &PersistentVolumeClaim) -> String {
    format!(
        "{}/pvc-{}_{}_{}",
        base.trim_end_matches('/'),
        pvc.metadata.uid.as_deref().unwrap_or_default(),
        pvc.metadata.namespace.as_deref().unwrap_or_default(),
        pvc.metadata.name.as_deref().unwrap_or_default()
    )
}

/// The volume local-path makes for `pvc` on `node`.
pub fn provisioned_volume(
    pvc: &PersistentVolumeClaim,
    class: &StorageClass,
    node: &str,
) -> PersistentVolume {
    let base = class
        .parameters
        .as_ref()
        .and_then(|p| p.get("nodePath"))
        .map_or(DEFAULT_NODE_PATH, String::as_str);
    let spec = pvc.spec.clone().unwrap_or_default();
    let request = spec
        .resources
        .as_ref()
        .and_then(|r| r.requests.as_ref())
        .and_then(|r| r.get("storage"))
        .cloned()
        .unwrap_or_else(|| Quantity("0".into()));
    let mut pv = PersistentVolume::default();
    pv.metadata.name = Some(format!(
        "pvc-{}",
        pvc.metadata.uid.as_deref().unwrap_or_default()
    ));
    pv.metadata.annotations = Some(
        [(
            "pv.kubernetes.io/provisioned-by".to_string(),
            PROVISIONER.to_string(),
        )]
        .into(),
    );
    pv.metadata.labels = Some([(NODE_LABEL.to_string(), node.to_string())].into());
    pv.metadata.finalizers = Some(vec![CLEANUP_FINALIZER.into()]);
    pv.spec = Some(PersistentVolumeSpec {
        capacity: Some([("storage".to_string(), request)].into()),
        access_modes: spec.access_modes.clone(),
        persistent_volume_reclaim_policy: Some(
            class
                .reclaim_policy
                .clone()
                .unwrap_or_else(|| "Delete".into()),
        ),
        storage_class_name: class.metadata.name.clone(),
        volume_mode: Some("Filesystem".into()),
        host_path: Some(HostPathVolumeSource {
            path: volume_dir(base, pvc),
            type_: Some("DirectoryOrCreate".into()),
        }),
        node_affinity: Some(VolumeNodeAffinity {
            required: Some(NodeSelector {
                node_selector_terms: vec![NodeSelectorTerm {
                    match_expressions: Some(vec![NodeSelectorRequirement {
                        key: "kubernetes.io/hostname".into(),
                        operator: "In".into(),
                        values: Some(vec![node.to_string()]),
                    }]),
                    ..Default::default()
                }],
            }),
        }),
        claim_ref: Some(claim_ref(pvc)),
        ..Default::default()
    });
    pv
}

fn claim_ref(pvc: &PersistentVolumeClaim) -> ObjectReference {
    ObjectReference {
        api_version: Some("v1".into()),
        kind: Some("PersistentVolumeClaim".into()),
        namespace: pvc.metadata.namespace.clone(),
        name: pvc.metadata.name.clone(),
        uid: pvc.metadata.uid.clone(),
        ..Default::default()
    }
}

/// Binds the volume to the claim and the claim to the volume, as the PV controller does.
fn bind(
    cluster: &dyn Cluster,
    mut pv: PersistentVolume,
    mut pvc: PersistentVolumeClaim,
) -> Result<()> {
    let ns = pvc.metadata.namespace.clone().unwrap_or_default();
    let pv_name = pv.metadata.name.clone().unwrap_or_default();
    let spec = pv.spec.get_or_insert_default();
    if spec.claim_ref.as_ref().and_then(|c| c.uid.as_ref()) != pvc.metadata.uid.as_ref() {
        spec.claim_ref = Some(claim_ref(&pvc));
        pv.metadata
            .annotations
            .get_or_insert_default()
            .insert("pv.kubernetes.io/bound-by-controller".into(), "yes".into());
        let Some(updated) = cluster.update("", &pv).ignore_stale()? else {
            return Ok(());
        };
        pv = updated;
    }
    let status = PersistentVolumeStatus {
        phase: Some("Bound".into()),
        last_phase_transition_time: kedge_guest::meta::parse_time(&cluster.now()),
        ..Default::default()
    };
    if phase_of(&pv) != "Bound" {
        cluster.update_status_if_changed("", &pv, status)?;
    }
    let capacity = pv.spec.as_ref().and_then(|s| s.capacity.clone());
    let modes = pv.spec.as_ref().and_then(|s| s.access_modes.clone());
    let claim_spec = pvc.spec.get_or_insert_default();
    if claim_spec.volume_name.as_deref() != Some(&pv_name) {
        claim_spec.volume_name = Some(pv_name.clone());
        let a = pvc.metadata.annotations.get_or_insert_default();
        a.insert("pv.kubernetes.io/bind-completed".into(), "yes".into());
        a.insert("pv.kubernetes.io/bound-by-controller".into(), "yes".into());
        let Some(updated) = cluster.update(&ns, &pvc).ignore_stale()? else {
            return Ok(());
        };
        pvc = updated;
    }
    let status = PersistentVolumeClaimStatus {
        phase: Some("Bound".into()),
        capacity,
        access_modes: modes,
        ..pvc.status.clone().unwrap_or_default()
    };
    cluster.update_status_if_changed(&ns, &pvc, status)?;
    Ok(())
}

#[cfg(test)]
mod tests;
