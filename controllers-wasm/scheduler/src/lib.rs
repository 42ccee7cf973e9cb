//! The default scheduler as a kedge plugin: binds each pending pod to the feasible node
//! with the fewest pods, so replicas spread across the edge fleet.
//!
//! Filters: node Ready, not cordoned, taints (`NoSchedule`/`NoExecute`) against the pod's
//! tolerations, `nodeSelector`, CPU/memory requests and pod count against
//! `status.allocatable`. Not implemented yet: affinity, topology spread, preemption, host
//! ports.

use std::collections::BTreeMap;

use k8s_openapi::api::core::v1::{Event, Node, Pod, PodCondition, Toleration};
use kedge_guest::meta::{find_condition, labels_of, parse_time, set_condition};
pub use kedge_guest::pod::tolerates;
use kedge_guest::pod::{Requests, is_active, pod_requests};
use kedge_guest::quantity::{parse_bytes, parse_cpu_millis};
use kedge_guest::{
    ApiError, Cluster, ClusterExt, Controller, KindRef, LogLevel, ObjectKey, Outcome, Registration,
};

/// How long to wait before retrying a pod that fits nowhere; new nodes and freed capacity
/// do not enqueue the pod (Nodes are only read), so polling is what notices them.
const UNSCHEDULABLE_RETRY_MS: u64 = 5000;

/// kube-scheduler's default when a node does not report `allocatable.pods`.
const DEFAULT_MAX_PODS: u64 = 110;

/// The plugin type wired to the component exports.
pub struct Scheduler;

impl Controller for Scheduler {
    fn registration() -> Registration {
        Registration {
            name: "scheduler".into(),
            for_kind: KindRef::of::<Pod>(),
            owns: vec![],
            reads: vec![KindRef::of::<Node>()],
            writes: vec![KindRef::of::<Pod>(), KindRef::of::<Event>()],
        }
    }

    fn reconcile(cluster: &dyn Cluster, key: &ObjectKey) -> Result<Outcome, String> {
        schedule(cluster, key)
    }
}

kedge_guest::export_controller!(Scheduler);

fn api(e: ApiError) -> String {
    e.to_string()
}

fn needs_scheduling(pod: &Pod) -> bool {
    let Some(spec) = &pod.spec else { return false };
    pod.metadata.deletion_timestamp.is_none()
        && spec.node_name.as_deref().unwrap_or("").is_empty()
        && matches!(
            spec.scheduler_name.as_deref(),
            None | Some("" | "default-scheduler")
        )
        && spec.scheduling_gates.as_ref().is_none_or(Vec::is_empty)
}

/// Why a node was filtered out, in kube-scheduler's wording (they appear in the message).
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord)]
enum Reason {
    NotReady,
    Unschedulable,
    Taint,
    Selector,
    Cpu,
    Memory,
    Pods,
}

impl Reason {
    fn text(self) -> &'static str {
        match self {
            Reason::NotReady => "node(s) were not ready",
            Reason::Unschedulable => "node(s) were unschedulable",
            Reason::Taint => "node(s) had untolerated taint(s)",
            Reason::Selector => "node(s) didn't match Pod's node affinity/selector",
            Reason::Cpu => "Insufficient cpu",
            Reason::Memory => "Insufficient memory",
            Reason::Pods => "Too many pods",
        }
    }
}

/// What is already committed on one node.
#[derive(Default, Clone, Copy)]
struct Usage {
    requests: Requests,
    pods: u64,
}

/// Ordering key of a feasible node: fewer pods, then less loaded, then name.
#[derive(PartialEq, Eq, PartialOrd, Ord)]
struct Score<'a> {
    pods: u64,
    load_ppm: u128,
    name: &'a str,
}

fn ppm(used: u64, capacity: u64) -> u128 {
    if capacity == 0 {
        0
    } else {
        u128::from(used) * 1_000_000 / u128::from(capacity)
    }
}

fn evaluate<'a>(
    node: &'a Node,
    pod: &Pod,
    want: Requests,
    usage: Usage,
) -> Result<Score<'a>, Vec<Reason>> {
    let ready = node
        .status
        .as_ref()
        .and_then(|s| s.conditions.as_deref())
        .and_then(|c| find_condition(c, "Ready"))
        .is_some_and(|c| c.status == "True");
    if !ready {
        return Err(vec![Reason::NotReady]);
    }
    if node.spec.as_ref().and_then(|s| s.unschedulable) == Some(true) {
        return Err(vec![Reason::Unschedulable]);
    }
    let tolerations: &[Toleration] = pod
        .spec
        .as_ref()
        .and_then(|s| s.tolerations.as_deref())
        .unwrap_or(&[]);
    let untolerated = node
        .spec
        .as_ref()
        .and_then(|s| s.taints.as_deref())
        .unwrap_or(&[])
        .iter()
        .filter(|t| matches!(t.effect.as_str(), "NoSchedule" | "NoExecute"))
        .any(|t| !tolerations.iter().any(|tol| tolerates(tol, t)));
    if untolerated {
        return Err(vec![Reason::Taint]);
    }
    let node_labels = labels_of(&node.metadata);
    let selector = pod.spec.as_ref().and_then(|s| s.node_selector.as_ref());
    if !selector
        .into_iter()
        .flatten()
        .all(|(k, v)| node_labels.get(k) == Some(v))
    {
        return Err(vec![Reason::Selector]);
    }
    let alloc = node.status.as_ref().and_then(|s| s.allocatable.as_ref());
    let get = |name: &str| alloc.and_then(|a| a.get(name)).map(|q| q.0.as_str());
    // An unparsable allocatable is a broken node: treat the resource as absent (zero).
    let cpu = get("cpu")
        .and_then(|q| parse_cpu_millis(q).ok())
        .unwrap_or(0);
    let memory = get("memory").and_then(|q| parse_bytes(q).ok()).unwrap_or(0);
    let max_pods = get("pods")
        .and_then(|q| parse_bytes(q).ok())
        .unwrap_or(DEFAULT_MAX_PODS);
    let used_cpu = usage.requests.cpu_millis.saturating_add(want.cpu_millis);
    let used_memory = usage
        .requests
        .memory_bytes
        .saturating_add(want.memory_bytes);
    let mut reasons = Vec::new();
    if want.cpu_millis > 0 && used_cpu > cpu {
        reasons.push(Reason::Cpu);
    }
    if want.memory_bytes > 0 && used_memory > memory {
        reasons.push(Reason::Memory);
    }
    if usage.pods + 1 > max_pods {
        reasons.push(Reason::Pods);
    }
    if !reasons.is_empty() {
        return Err(reasons);
    }
    let name = node.metadata.name.as_deref().unwrap_or("");
    Ok(Score {
        pods: usage.pods,
        load_ppm: ppm(used_cpu, cpu) + ppm(used_memory, memory),
        name,
    })
}

/// "0/3 nodes are available: 1 Insufficient cpu, 2 node(s) didn't match ...": the
/// "count reason" strings sorted as text, the way kube-scheduler's FitError renders them.
fn unschedulable_message(total: usize, reasons: &BTreeMap<Reason, usize>) -> String {
    if total == 0 {
        return "0/0 nodes are available: no nodes registered.".into();
    }
    let mut parts: Vec<String> = reasons
        .iter()
        .map(|(r, n)| format!("{n} {}", r.text()))
        .collect();
    parts.sort();
    format!("0/{total} nodes are available: {}.", parts.join(", "))
}

fn schedule(cluster: &dyn Cluster, key: &ObjectKey) -> Result<Outcome, String> {
    let Some(pod) = cluster.get::<Pod>(&key.namespace, &key.name).map_err(api)? else {
        return Ok(Outcome::done());
    };
    if !needs_scheduling(&pod) {
        return Ok(Outcome::done());
    }
    let spec = pod.spec.as_ref().expect("needs_scheduling checked spec");
    let want = pod_requests(spec).map_err(|e| format!("pod requests: {e}"))?;

    let mut usage: BTreeMap<String, Usage> = BTreeMap::new();
    for other in cluster.list::<Pod>("", "").map_err(api)? {
        let node = other
            .spec
            .as_ref()
            .and_then(|s| s.node_name.clone())
            .unwrap_or_default();
        if node.is_empty() || !is_active(&other) || other.metadata.uid == pod.metadata.uid {
            continue;
        }
        // A bound pod with a bad quantity was admitted anyway; count it as one pod, no resources.
        let requests = other
            .spec
            .as_ref()
            .and_then(|s| pod_requests(s).ok())
            .unwrap_or_default();
        let u = usage.entry(node).or_default();
        u.requests = u.requests.saturating_add(requests);
        u.pods += 1;
    }

    let nodes = cluster.list::<Node>("", "").map_err(api)?;
    let mut reasons: BTreeMap<Reason, usize> = BTreeMap::new();
    let mut best: Option<Score> = None;
    for node in &nodes {
        let name = node.metadata.name.as_deref().unwrap_or("");
        match evaluate(
            node,
            &pod,
            want,
            usage.get(name).copied().unwrap_or_default(),
        ) {
            Ok(score) => best = best.into_iter().chain([score]).min(),
            Err(rs) => rs
                .into_iter()
                .for_each(|r| *reasons.entry(r).or_default() += 1),
        }
    }

    let ns = pod.metadata.namespace.as_deref().unwrap_or(&key.namespace);
    let name = pod.metadata.name.as_deref().unwrap_or(&key.name);
    if let Some(best) = best {
        return match cluster.bind_pod(ns, name, best.name) {
            Ok(()) => {
                cluster.log(
                    LogLevel::Debug,
                    &format!("bound {ns}/{name} to {}", best.name),
                );
                let _ = cluster.record_event(
                    &pod,
                    "Normal",
                    "Scheduled",
                    &format!("Successfully assigned {ns}/{name} to {}", best.name),
                    "default-scheduler",
                );
                Ok(Outcome::done())
            }
            // Bound meanwhile (another scheduler run, or a stale read): nothing left to do.
            Err(ApiError::Conflict(_) | ApiError::NotFound(_)) => Ok(Outcome::done()),
            Err(e) => Err(api(e)),
        };
    }

    let message = unschedulable_message(nodes.len(), &reasons);
    let mut updated = pod.clone();
    let status = updated.status.get_or_insert_default();
    let changed = set_condition(
        status.conditions.get_or_insert_default(),
        PodCondition {
            type_: "PodScheduled".into(),
            status: "False".into(),
            reason: Some("Unschedulable".into()),
            message: Some(message.clone()),
            last_transition_time: parse_time(&cluster.now()),
            ..Default::default()
        },
    );
    if changed {
        match cluster.update_status(ns, &updated) {
            // A conflict means the pod changed; its own event reconciles it again.
            Ok(_) | Err(ApiError::Conflict(_) | ApiError::NotFound(_)) => {}
            Err(e) => return Err(api(e)),
        }
        cluster.log(
            LogLevel::Info,
            &format!("{ns}/{name} unschedulable: {message}"),
        );
        let _ = cluster.record_event(
            &pod,
            "Warning",
            "FailedScheduling",
            &message,
            "default-scheduler",
        );
    }
    Ok(Outcome::requeue_after_ms(UNSCHEDULABLE_RETRY_MS))
}

#[cfg(test)]
mod tests;
