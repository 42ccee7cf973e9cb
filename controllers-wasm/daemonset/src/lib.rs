//! The DaemonSet controller as a kedge plugin: one pod per eligible node.
//!
//! - Eligible: the template's `nodeSelector` and required node affinity match the node,
//!   and the pod tolerates the node's `NoSchedule`/`NoExecute` taints. Like Kubernetes,
//!   every daemon pod gets tolerations for not-ready/unreachable (`NoExecute`) and the
//!   pressure/unschedulable taints (`NoSchedule`), so daemons keep running on sick or
//!   cordoned nodes. A pod stays on a node that gained an untolerated `NoSchedule` taint
//!   (counted as misscheduled); selector/affinity mismatch or `NoExecute` removes it.
//! - Placement: each pod carries the node affinity `metadata.name In [node]` (what
//!   Kubernetes ≥ 1.12 uses to let the default scheduler place daemon pods) *and* is created
//!   with `spec.nodeName` set. kedge's scheduler plugin does not implement node affinity
//!   yet, and binding directly also lets daemons land on nodes the scheduler would filter
//!   (not ready, full): node agents are exactly what must run there.
//! - Nodes are declared in `owns`: a node has no controller, and an owned cluster-scoped
//!   object without a controller enqueues every DaemonSet, so node joins, removals and
//!   label/taint changes reach every DaemonSet at once. A slow resync ([`NODE_POLL_MS`]) is
//!   only a safety net.
//! - Updates: `RollingUpdate` deletes old-template pods, at most `maxUnavailable` (int or
//!   percentage of the desired count, rounded up) unavailable at a time, and the next
//!   reconcile creates their replacements; old pods that are unavailable anyway go first
//!   and free. `OnDelete` only fills nodes whose pod is gone. `maxSurge` is not honoured
//!   (treated as 0).
//! - History: pods carry `controller-revision-hash`; each template is a ControllerRevision
//!   `<ds>-<hash>` owned by the DaemonSet, pruned to `revisionHistoryLimit`.
//! - Pods on nodes that no longer exist are deleted (Kubernetes leaves this to its pod GC).

mod eligibility;
mod revision;

use std::collections::{BTreeMap, BTreeSet};

use k8s_openapi::api::apps::v1::{ControllerRevision, DaemonSet, DaemonSetStatus};
use k8s_openapi::api::core::v1::{Event, Node, Pod, PodSpec};
use k8s_openapi::apimachinery::pkg::apis::meta::v1::ObjectMeta;
use k8s_openapi::apimachinery::pkg::util::intstr::IntOrString;
use kedge_guest::meta::{find_condition, labels_of, new_controller_ref, parse_time};
use kedge_guest::pod::{claim_pods, is_ready, pod_template_hash};
use kedge_guest::selector::Selector;
use kedge_guest::{
    ApiResultExt, Cluster, ClusterExt, Controller, KindRef, LogLevel, ObjectKey, Outcome,
    Registration, Result,
};

pub use eligibility::{DAEMON_TOLERATIONS, Fit, fit};

/// The Events' source, as Kubernetes' controller names it.
const COMPONENT: &str = "daemonset-controller";

/// Label carrying the template hash, on pods and ControllerRevisions.
pub const HASH_LABEL: &str = "controller-revision-hash";

/// Label carrying the DaemonSet generation a pod was made from (Kubernetes sets it too).
pub const GENERATION_LABEL: &str = "pod-template-generation";

/// How often a DaemonSet looks at the world again without an event (node events enqueue it;
/// this is a safety net).
pub const NODE_POLL_MS: u64 = 60_000;

/// The plugin type wired to the component exports.
pub struct DaemonSetController;

impl Controller for DaemonSetController {
    fn registration() -> Registration {
        Registration::new("daemonset", KindRef::of::<DaemonSet>())
            .owns([
                KindRef::of::<Pod>(),
                KindRef::of::<ControllerRevision>(),
                KindRef::of::<Node>(),
            ])
            .writes([
                KindRef::of::<Pod>(),
                KindRef::of::<DaemonSet>(),
                KindRef::of::<ControllerRevision>(),
                KindRef::of::<Event>(),
            ])
    }

    fn reconcile(cluster: &dyn Cluster, key: &ObjectKey) -> Result<Outcome> {
        reconcile(cluster, key)
    }
}

kedge_guest::export_controller!(DaemonSetController);

/// The node a daemon pod is for: its `nodeName`, else the single node its required affinity
/// pins it to (`GetTargetNodeName` in Kubernetes).
fn node_of(pod: &Pod) -> Option<&str> {
    let spec = pod.spec.as_ref()?;
    if let Some(n) = spec.node_name.as_deref().filter(|n| !n.is_empty()) {
        return Some(n);
    }
    let terms = &spec
        .affinity
        .as_ref()?
        .node_affinity
        .as_ref()?
        .required_during_scheduling_ignored_during_execution
        .as_ref()?
        .node_selector_terms;
    terms
        .iter()
        .flat_map(|t| t.match_fields.iter().flatten())
        .find(|f| f.key == "metadata.name" && f.operator == "In")
        .and_then(|f| match f.values.as_deref() {
            Some([one]) => Some(one.as_str()),
            _ => None,
        })
}

fn phase(pod: &Pod) -> Option<&str> {
    pod.status.as_ref().and_then(|s| s.phase.as_deref())
}

fn hash_of(pod: &Pod) -> Option<&str> {
    labels_of(&pod.metadata).get(HASH_LABEL).map(String::as_str)
}

/// Ready for at least `min_ready_seconds` (Kubernetes' `IsPodAvailable`).
fn is_available(pod: &Pod, min_ready_seconds: i64, now_ms: Option<i64>) -> bool {
    if !is_ready(pod) {
        return false;
    }
    if min_ready_seconds <= 0 {
        return true;
    }
    let since = pod
        .status
        .as_ref()
        .and_then(|s| s.conditions.as_deref())
        .and_then(|c| find_condition(c, "Ready"))
        .and_then(|c| c.last_transition_time.as_ref())
        .map(|t| t.0.as_millisecond());
    matches!((since, now_ms), (Some(s), Some(n)) if s + min_ready_seconds * 1000 <= n)
}

/// `maxUnavailable` as a pod count: percentages of `desired` round up, and a DaemonSet
/// allowing neither unavailability nor surge still moves one pod at a time.
fn max_unavailable(value: Option<&IntOrString>, desired: usize) -> usize {
    let n = match value {
        None => 1,
        Some(IntOrString::Int(i)) => usize::try_from(*i).unwrap_or(0),
        Some(IntOrString::String(s)) => match s.strip_suffix('%').map(str::parse::<usize>) {
            Some(Ok(pct)) => (pct * desired).div_ceil(100),
            _ => 1,
        },
    };
    if n == 0 && desired > 0 { 1 } else { n }
}

/// The pod this DaemonSet runs on `node`: the template with the hash and generation labels,
/// the daemon tolerations, node affinity pinned to `node` and `spec.nodeName` set.
fn new_pod(ds: &DaemonSet, hash: &str, node: &str) -> Pod {
    let template = ds
        .spec
        .as_ref()
        .map(|s| s.template.clone())
        .unwrap_or_default();
    let tmeta = template.metadata.unwrap_or_default();
    let mut labels = tmeta.labels.unwrap_or_default();
    labels.insert(HASH_LABEL.into(), hash.into());
    if let Some(g) = ds.metadata.generation {
        labels.insert(GENERATION_LABEL.into(), g.to_string());
    }
    let mut spec = daemon_spec(ds);
    eligibility::pin_to_node(&mut spec, node);
    spec.node_name = Some(node.into());
    let ds_name = ds.metadata.name.as_deref().unwrap_or("");
    Pod {
        metadata: ObjectMeta {
            generate_name: Some(format!("{ds_name}-")),
            namespace: ds.metadata.namespace.clone(),
            labels: Some(labels),
            annotations: tmeta.annotations,
            owner_references: Some(vec![new_controller_ref(ds)]),
            ..Default::default()
        },
        spec: Some(spec),
        status: None,
    }
}

/// The template's pod spec with the daemon tolerations: what eligibility is judged on.
fn daemon_spec(ds: &DaemonSet) -> PodSpec {
    let mut spec = ds
        .spec
        .as_ref()
        .and_then(|s| s.template.spec.clone())
        .unwrap_or_default();
    eligibility::add_daemon_tolerations(&mut spec);
    spec
}

/// What one reconcile does to pods, with the Events Kubernetes records for it.
struct Writer<'a> {
    cluster: &'a dyn Cluster,
    ds: &'a DaemonSet,
    ns: &'a str,
    changed: bool,
}

impl Writer<'_> {
    fn create(&mut self, hash: &str, node: &str) -> Result<Pod> {
        self.changed = true;
        let made = self
            .cluster
            .create(self.ns, &new_pod(self.ds, hash, node))?;
        let name = made.metadata.name.as_deref().unwrap_or("");
        self.cluster.log(
            LogLevel::Debug,
            &format!("daemon pod {}/{name} created on {node}", self.ns),
        );
        let _ = self.cluster.record_event(
            self.ds,
            "Normal",
            "SuccessfulCreate",
            &format!("Created pod: {name}"),
            COMPONENT,
        );
        Ok(made)
    }

    fn delete(&mut self, pod: &Pod) -> Result<()> {
        self.changed = true;
        let name = pod.metadata.name.as_deref().unwrap_or("");
        if self
            .cluster
            .delete::<Pod>(self.ns, name)
            .ignore_not_found()?
            .is_some()
        {
            let _ = self.cluster.record_event(
                self.ds,
                "Normal",
                "SuccessfulDelete",
                &format!("Deleted pod: {name}"),
                COMPONENT,
            );
        }
        Ok(())
    }
}

/// The pods of one node, split the way the sync needs them.
#[derive(Default)]
struct NodePods {
    /// Neither terminating nor failed, oldest first.
    running: Vec<Pod>,
    failed: Vec<Pod>,
}

fn reconcile(cluster: &dyn Cluster, key: &ObjectKey) -> Result<Outcome> {
    let ns = key.namespace.as_str();
    let Some(ds) = cluster.get::<DaemonSet>(ns, &key.name)? else {
        return Ok(Outcome::done());
    };
    if ds.metadata.deletion_timestamp.is_some() {
        return Ok(Outcome::done());
    }
    let Some(spec) = ds.spec.as_ref() else {
        return Ok(Outcome::done());
    };
    let selector = match Selector::from_label_selector(&spec.selector) {
        // An empty selector would claim every pod in the namespace; the API server forbids it.
        Ok(s) if !s.requirements().is_empty() => s,
        Ok(_) => return invalid(cluster, key, "empty selector"),
        Err(e) => return invalid(cluster, key, &e.to_string()),
    };
    let hash = pod_template_hash(&spec.template);
    let now_ms = parse_time(&cluster.now()).map(|t| t.0.as_millisecond());
    let min_ready = i64::from(spec.min_ready_seconds.unwrap_or(0));

    let mut revs = revision::owned_revisions(cluster, &ds)?;
    let current_rev = revision::sync_current(cluster, &ds, &hash, &mut revs)?;

    let mut by_node: BTreeMap<String, NodePods> = BTreeMap::new();
    let mut unplaced = Vec::new();
    let mut pods = claim_pods(cluster, &ds, &selector)?;
    pods.sort_by_key(|p| {
        (
            p.metadata.creation_timestamp.clone(),
            p.metadata.name.clone(),
        )
    });
    for pod in pods {
        if pod.metadata.deletion_timestamp.is_some() {
            continue;
        }
        let Some(node) = node_of(&pod).map(str::to_owned) else {
            unplaced.push(pod);
            continue;
        };
        let entry = by_node.entry(node).or_default();
        if phase(&pod) == Some("Failed") {
            entry.failed.push(pod);
        } else {
            entry.running.push(pod);
        }
    }

    let nodes = cluster.list::<Node>("", "")?;
    let pod_spec = daemon_spec(&ds);
    let mut w = Writer {
        cluster,
        ds: &ds,
        ns,
        changed: false,
    };
    // After manage: node → (fit, the pod kept there, if any).
    let mut placed: BTreeMap<String, (Fit, Option<Pod>)> = BTreeMap::new();
    for node in &nodes {
        let name = node.metadata.name.clone().unwrap_or_default();
        let f = fit(&pod_spec, node);
        let NodePods { running, failed } = by_node.remove(&name).unwrap_or_default();
        for pod in &failed {
            let pod_name = pod.metadata.name.as_deref().unwrap_or("");
            let _ = cluster.record_event(
                &ds,
                "Warning",
                "FailedDaemonPod",
                &format!(
                    "Found failed daemon pod {ns}/{pod_name} on node {name}, will try to kill it"
                ),
                COMPONENT,
            );
            w.delete(pod)?;
        }
        let kept = if !f.should_continue {
            for pod in &running {
                w.delete(pod)?;
            }
            None
        } else if running.is_empty() {
            f.should_run.then(|| w.create(&hash, &name)).transpose()?
        } else {
            // More than one daemon pod on a node: keep the oldest, as Kubernetes does.
            let mut running = running.into_iter();
            let first = running.next();
            for extra in running {
                w.delete(&extra)?;
            }
            first
        };
        placed.insert(name, (f, kept));
    }
    // Pods bound to nodes that are gone.
    for pods in by_node.into_values() {
        for pod in pods.running.iter().chain(&pods.failed) {
            w.delete(pod)?;
        }
    }
    // Matching pods with no target node (made by hand): Kubernetes skips them too.
    for pod in &unplaced {
        let name = pod.metadata.name.as_deref().unwrap_or("");
        cluster.log(
            LogLevel::Debug,
            &format!("pod {ns}/{name} has no target node; ignored"),
        );
    }

    let rolling = spec
        .update_strategy
        .as_ref()
        .and_then(|s| s.type_.as_deref())
        .is_none_or(|t| t == "RollingUpdate");
    let desired = placed.values().filter(|(f, _)| f.should_run).count();
    // Roll only on a settled view, like Kubernetes waiting for its expectations: the
    // creates and deletes above come back as events and the next reconcile rolls.
    if rolling && !w.changed {
        let budget = max_unavailable(
            spec.update_strategy
                .as_ref()
                .and_then(|s| s.rolling_update.as_ref())
                .and_then(|r| r.max_unavailable.as_ref()),
            desired,
        );
        let mut unavailable = 0;
        let mut free = Vec::new();
        let mut candidates = Vec::new();
        for (f, pod) in placed.values() {
            if !f.should_continue {
                continue;
            }
            match pod {
                None if f.should_run => unavailable += 1,
                None => {}
                Some(p) if hash_of(p) == Some(hash.as_str()) => {
                    unavailable += usize::from(!is_available(p, min_ready, now_ms));
                }
                Some(p) if !is_available(p, min_ready, now_ms) => free.push(p.clone()),
                Some(p) => candidates.push(p.clone()),
            }
        }
        let room = budget.saturating_sub(unavailable).min(candidates.len());
        for pod in free.iter().chain(&candidates[..room]) {
            w.delete(pod)?;
            let node = node_of(pod).unwrap_or("").to_owned();
            if let Some(slot) = placed.get_mut(&node) {
                slot.1 = None;
            }
        }
    }

    // Status, from the view after this reconcile's writes.
    let count = |f: &dyn Fn(&Fit, &Pod) -> bool| {
        let n = placed
            .values()
            .filter(|(fit, p)| p.as_ref().is_some_and(|p| f(fit, p)))
            .count();
        i32::try_from(n).unwrap_or(i32::MAX)
    };
    let desired = i32::try_from(desired).unwrap_or(i32::MAX);
    let available = count(&|f, p| f.should_run && is_available(p, min_ready, now_ms));
    let old = ds.status.clone().unwrap_or_default();
    let status = DaemonSetStatus {
        current_number_scheduled: count(&|f, _| f.should_run),
        desired_number_scheduled: desired,
        number_misscheduled: count(&|f, _| !f.should_run),
        number_ready: count(&|f, p| f.should_run && is_ready(p)),
        number_available: Some(available),
        number_unavailable: Some(desired - available),
        updated_number_scheduled: Some(count(&|f, p| {
            f.should_run && hash_of(p) == Some(hash.as_str())
        })),
        observed_generation: ds.metadata.generation,
        collision_count: old.collision_count,
        conditions: old.conditions.clone(),
    };
    cluster.update_status_if_changed(ns, &ds, status)?;

    let live: BTreeSet<String> = placed
        .values()
        .filter_map(|(_, p)| p.as_ref().and_then(hash_of).map(str::to_owned))
        .collect();
    let limit = usize::try_from(spec.revision_history_limit.unwrap_or(10)).unwrap_or(0);
    revision::cleanup(cluster, ns, limit, &revs, &current_rev, &live)?;

    // A pod that is ready but not yet available becomes available without any event.
    let waiting_ms = placed
        .values()
        .filter_map(|(_, p)| p.as_ref())
        .filter(|p| is_ready(p) && !is_available(p, min_ready, now_ms))
        .map(|_| u64::try_from(min_ready * 1000).unwrap_or(0).max(1000))
        .min();
    Ok(Outcome::requeue_after_ms(
        waiting_ms.map_or(NODE_POLL_MS, |w| w.min(NODE_POLL_MS)),
    ))
}

/// A DaemonSet the API server should not have admitted: say so once, do not retry.
fn invalid(cluster: &dyn Cluster, key: &ObjectKey, why: &str) -> Result<Outcome> {
    cluster.log(
        LogLevel::Warn,
        &format!("daemonset {}/{}: {why}; ignoring", key.namespace, key.name),
    );
    Ok(Outcome::done())
}

#[cfg(test)]
mod tests;
