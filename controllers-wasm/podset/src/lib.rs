//! The logic shared by the ReplicaSet and ReplicationController plugins: keep a number of
//! identical pods matching a selector, adopting orphans and releasing pods whose labels
//! drifted away, with Kubernetes' scale-down order and status counts.
//!
//! A pod counts as available once it has been ready for `spec.minReadySeconds` (Kubernetes'
//! `IsPodAvailable`: the Ready condition's `lastTransitionTime` plus `minReadySeconds` is not
//! after now). While a ready pod is still waiting for that, the reconcile asks to be run
//! again when the earliest one becomes available, since no event would announce it.

use std::cmp::Reverse;

use k8s_openapi::api::apps::v1::{ReplicaSet, ReplicaSetStatus};
use k8s_openapi::api::core::v1::{
    Pod, PodTemplateSpec, ReplicationController, ReplicationControllerStatus,
};
use k8s_openapi::apimachinery::pkg::apis::meta::v1::{ObjectMeta, Time};
use kedge_guest::meta::{find_condition, labels_of, new_controller_ref, parse_time};
use kedge_guest::pod::{claim_pods, is_active, is_ready};
use kedge_guest::selector::Selector;
use kedge_guest::{ApiResultExt, Cluster, ClusterExt, LogLevel, ObjectKey, Outcome, Result};
use serde::Serialize;
use serde::de::DeserializeOwned;

/// The status counts a pod set reports.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct Counts {
    pub replicas: i32,
    pub fully_labeled: i32,
    pub ready: i32,
    pub available: i32,
    pub observed_generation: Option<i64>,
}

/// A kind that keeps a number of identical pods: ReplicaSet, ReplicationController.
pub trait PodSet:
    k8s_openapi::Resource
    + k8s_openapi::Metadata<Ty = ObjectMeta>
    + Serialize
    + DeserializeOwned
    + Clone
{
    /// The selector; an `Err` or an empty selector makes the object invalid.
    fn selector(&self) -> Result<Selector, String>;
    fn replicas(&self) -> i32;
    /// How long a pod must have been ready before it counts as available.
    fn min_ready_seconds(&self) -> i32;
    fn template(&self) -> Option<&PodTemplateSpec>;
    /// The counts in the stored status.
    fn counts(&self) -> Counts;
    /// This object with its status set to `c`.
    fn with_counts(&self, c: Counts) -> Self;
}

impl PodSet for ReplicaSet {
    fn selector(&self) -> Result<Selector, String> {
        let spec = self.spec.as_ref().ok_or("spec is missing")?;
        Selector::from_label_selector(&spec.selector).map_err(|e| e.to_string())
    }

    fn replicas(&self) -> i32 {
        self.spec.as_ref().and_then(|s| s.replicas).unwrap_or(1)
    }

    fn min_ready_seconds(&self) -> i32 {
        self.spec
            .as_ref()
            .and_then(|s| s.min_ready_seconds)
            .unwrap_or(0)
    }

    fn template(&self) -> Option<&PodTemplateSpec> {
        self.spec.as_ref()?.template.as_ref()
    }

    fn counts(&self) -> Counts {
        let s = self.status.clone().unwrap_or_default();
        Counts {
            replicas: s.replicas,
            fully_labeled: s.fully_labeled_replicas.unwrap_or(0),
            ready: s.ready_replicas.unwrap_or(0),
            available: s.available_replicas.unwrap_or(0),
            observed_generation: s.observed_generation,
        }
    }

    fn with_counts(&self, c: Counts) -> Self {
        let old = self.status.clone().unwrap_or_default();
        let mut out = self.clone();
        out.status = Some(ReplicaSetStatus {
            replicas: c.replicas,
            fully_labeled_replicas: Some(c.fully_labeled),
            ready_replicas: Some(c.ready),
            available_replicas: Some(c.available),
            observed_generation: c.observed_generation,
            conditions: old.conditions,
            terminating_replicas: old.terminating_replicas,
        });
        out
    }
}

impl PodSet for ReplicationController {
    fn selector(&self) -> Result<Selector, String> {
        let spec = self.spec.as_ref().ok_or("spec is missing")?;
        // The API server defaults an empty selector to the template's labels.
        let map = spec
            .selector
            .clone()
            .filter(|m| !m.is_empty())
            .or_else(|| spec.template.as_ref()?.metadata.as_ref()?.labels.clone())
            .unwrap_or_default();
        let text: Vec<String> = map.iter().map(|(k, v)| format!("{k}={v}")).collect();
        Selector::parse(&text.join(",")).map_err(|e| e.to_string())
    }

    fn replicas(&self) -> i32 {
        self.spec.as_ref().and_then(|s| s.replicas).unwrap_or(1)
    }

    fn min_ready_seconds(&self) -> i32 {
        self.spec
            .as_ref()
            .and_then(|s| s.min_ready_seconds)
            .unwrap_or(0)
    }

    fn template(&self) -> Option<&PodTemplateSpec> {
        self.spec.as_ref()?.template.as_ref()
    }

    fn counts(&self) -> Counts {
        let s = self.status.clone().unwrap_or_default();
        Counts {
            replicas: s.replicas,
            fully_labeled: s.fully_labeled_replicas.unwrap_or(0),
            ready: s.ready_replicas.unwrap_or(0),
            available: s.available_replicas.unwrap_or(0),
            observed_generation: s.observed_generation,
        }
    }

    fn with_counts(&self, c: Counts) -> Self {
        let old = self.status.clone().unwrap_or_default();
        let mut out = self.clone();
        out.status = Some(ReplicationControllerStatus {
            replicas: c.replicas,
            fully_labeled_replicas: Some(c.fully_labeled),
            ready_replicas: Some(c.ready),
            available_replicas: Some(c.available),
            observed_generation: c.observed_generation,
            conditions: old.conditions,
        });
        out
    }
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

/// When a ready pod becomes available (epoch milliseconds): the Ready condition's
/// `lastTransitionTime` plus `min_ready_seconds`; `None` for a pod that is not ready, or
/// that is ready without a transition time while `min_ready_seconds` is positive (Kubernetes
/// never counts those).
pub fn available_since(pod: &Pod, min_ready_seconds: i32) -> Option<i64> {
    if !is_ready(pod) {
        return None;
    }
    let since = pod
        .status
        .as_ref()
        .and_then(|s| s.conditions.as_deref())
        .and_then(|c| find_condition(c, "Ready"))
        .and_then(|c| c.last_transition_time.as_ref())
        .map(|t| t.0.as_millisecond());
    match (since, min_ready_seconds) {
        (_, s) if s <= 0 => Some(i64::MIN),
        (Some(t), s) => Some(t + i64::from(s) * 1000),
        (None, _) => None,
    }
}

/// Reconciles one pod set of kind `K`; `component` names the Events' source.
pub fn reconcile<K: PodSet>(
    cluster: &dyn Cluster,
    key: &ObjectKey,
    component: &str,
) -> Result<Outcome> {
    let ns = key.namespace.as_str();
    let Some(rs) = cluster.get::<K>(ns, &key.name)? else {
        return Ok(Outcome::done());
    };
    if rs.metadata().deletion_timestamp.is_some() {
        return Ok(Outcome::done());
    }
    let selector = match rs.selector() {
        // An empty selector would claim every pod in the namespace; the API server forbids it.
        Ok(s) if !s.requirements().is_empty() => s,
        Ok(_) => return invalid(cluster, key, "empty selector"),
        Err(e) => return invalid(cluster, key, &e),
    };

    let owned = claim_pods(cluster, &rs, &selector)?;

    let mut active: Vec<Pod> = owned.into_iter().filter(is_active).collect();
    let desired = usize::try_from(rs.replicas()).unwrap_or(0);
    if active.len() < desired {
        let template = rs.template().ok_or("spec.template is missing")?;
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
            let created = cluster.create(ns, &pod)?;
            let pod_name = created.metadata.name.clone().unwrap_or_default();
            let _ = cluster.record_event(
                &rs,
                "Normal",
                "SuccessfulCreate",
                &format!("Created pod: {pod_name}"),
                component,
            );
            active.push(created);
        }
    } else if active.len() > desired {
        active.sort_by_cached_key(deletion_cost);
        for victim in active.drain(..active.len() - desired) {
            let pod_name = victim.metadata.name.as_deref().unwrap_or("");
            if cluster
                .delete::<Pod>(ns, pod_name)
                .ignore_not_found()?
                .is_some()
            {
                let _ = cluster.record_event(
                    &rs,
                    "Normal",
                    "SuccessfulDelete",
                    &format!("Deleted pod: {pod_name}"),
                    component,
                );
            }
        }
    }

    let template_labels = rs
        .template()
        .and_then(|t| t.metadata.as_ref())
        .map(labels_of);
    let count = |f: &dyn Fn(&Pod) -> bool| {
        i32::try_from(active.iter().filter(|p| f(p)).count()).unwrap_or(i32::MAX)
    };
    let ready = count(&is_ready);
    let now_ms = parse_time(&cluster.now()).map_or(i64::MAX, |t| t.0.as_millisecond());
    let min_ready = rs.min_ready_seconds();
    let since: Vec<i64> = active
        .iter()
        .filter_map(|p| available_since(p, min_ready))
        .collect();
    let available =
        i32::try_from(since.iter().filter(|&&t| t <= now_ms).count()).unwrap_or(i32::MAX);
    // The earliest ready pod still inside its minReadySeconds: look again when it is due.
    let next_due = since
        .iter()
        .filter(|&&t| t > now_ms)
        .min()
        .map(|t| t - now_ms);
    let counts = Counts {
        replicas: count(&|_| true),
        fully_labeled: count(&|p| {
            let labels = labels_of(&p.metadata);
            template_labels
                .into_iter()
                .flatten()
                .all(|(k, v)| labels.get(k) == Some(v))
        }),
        ready,
        available,
        observed_generation: rs.metadata().generation,
    };
    if counts != rs.counts() {
        // A conflict means the object changed; that change enqueues it again.
        cluster
            .update_status(ns, &rs.with_counts(counts))
            .ignore_stale()?;
    }
    Ok(match next_due {
        Some(ms) => Outcome::requeue_after_ms(u64::try_from(ms).unwrap_or(0)),
        None => Outcome::done(),
    })
}

/// A ReplicaSet the API server should not have admitted: say so once, do not retry.
fn invalid(cluster: &dyn Cluster, key: &ObjectKey, why: &str) -> Result<Outcome> {
    cluster.log(
        LogLevel::Warn,
        &format!(
            "{} {}/{}: {why}; ignoring",
            key.kind.to_lowercase(),
            key.namespace,
            key.name
        ),
    );
    Ok(Outcome::done())
}
