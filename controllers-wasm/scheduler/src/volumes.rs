//! VolumeBinding, as kube-scheduler's plugin of that name does it for kedge's volumes: a pod
//! whose claim does not exist stays Pending (`persistentvolumeclaim "x" not found`); a bound
//! claim's volume restricts the pod to the nodes its node affinity names; an unbound
//! `WaitForFirstConsumer` claim fits anywhere (local-path provisions on any node) and, once
//! the pod has a node, gets the `volume.kubernetes.io/selected-node` annotation for the
//! provisioner to act on.

use k8s_openapi::api::core::v1::{
    Node, NodeSelector, PersistentVolume, PersistentVolumeClaim, Pod,
};
use kedge_guest::selector::node_selector_matches;
use kedge_guest::{ApiResultExt, Cluster, ClusterExt, Result};

/// The annotation kube-scheduler writes on a claim waiting for its first consumer.
pub const SELECTED_NODE: &str = "volume.kubernetes.io/selected-node";

/// What the pod's claims ask of its node.
#[derive(Default)]
pub struct Volumes {
    /// The node affinity of each bound volume: every one must match.
    pub affinities: Vec<NodeSelector>,
    /// Unbound claims to annotate with the chosen node.
    pub unbound: Vec<String>,
}

impl Volumes {
    /// Reads the pod's claims; `Err(message)` when one does not exist.
    pub fn of(cluster: &dyn Cluster, pod: &Pod) -> Result<std::result::Result<Self, String>> {
        let ns = pod.metadata.namespace.as_deref().unwrap_or_default();
        let mut out = Volumes::default();
        let claims = pod
            .spec
            .as_ref()
            .and_then(|s| s.volumes.as_ref())
            .into_iter()
            .flatten()
            .filter_map(|v| v.persistent_volume_claim.as_ref());
        for c in claims {
            let Some(pvc) = cluster.get::<PersistentVolumeClaim>(ns, &c.claim_name)? else {
                return Ok(Err(format!(
                    "persistentvolumeclaim \"{}\" not found",
                    c.claim_name
                )));
            };
            if pvc.metadata.deletion_timestamp.is_some() {
                return Ok(Err(format!(
                    "persistentvolumeclaim \"{}\" is being deleted",
                    c.claim_name
                )));
            }
            let volume = pvc
                .spec
                .as_ref()
                .and_then(|s| s.volume_name.clone())
                .filter(|v| !v.is_empty());
            match volume {
                Some(v) => {
                    let affinity = cluster
                        .get::<PersistentVolume>("", &v)?
                        .and_then(|pv| pv.spec)
                        .and_then(|s| s.node_affinity)
                        .and_then(|a| a.required);
                    out.affinities.extend(affinity);
                }
                None => out.unbound.push(c.claim_name.clone()),
            }
        }
        Ok(Ok(out))
    }

    /// Whether the bound volumes can be reached from `node`.
    pub fn fits(&self, node: &Node) -> bool {
        self.affinities
            .iter()
            .all(|a| node_selector_matches(a, node))
    }

    /// Writes the chosen node on the unbound claims (before the pod is bound, as
    /// kube-scheduler's PreBind does).
    pub fn select(&self, cluster: &dyn Cluster, ns: &str, node: &str) -> Result<()> {
        for name in &self.unbound {
            let patch = serde_json::json!({"metadata": {"annotations": {SELECTED_NODE: node}}});
            cluster
                .patch_merge::<PersistentVolumeClaim>(ns, name, &patch)
                .ignore_not_found()?;
        }
        Ok(())
    }
}
