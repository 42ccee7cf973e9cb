//! Preemption, as kube-scheduler's default plugin does it for a pod that fits nowhere: on
//! each node that failed it only for resources (cpu, memory, pod count), take away every pod
//! of lower priority, check the pod then passes every filter, and give back ("reprieve") the
//! most important of them while it still does; what is left are the victims. The node whose
//! victims matter least wins: the lowest highest victim priority, then the lowest sum of
//! priorities, then the fewest victims, then the name.
//!
//! The scheduler then records the node in the pod's `status.nominatedNodeName`, deletes the
//! victims gracefully (with their uid as a precondition) and tells each why (`Preempted`).
//! Pods being deleted no longer count on their node here, so the pod binds on its next try;
//! meanwhile other pods of lower priority see the nominated pod's requests on that node, so
//! they do not take the room it made. Not done: PodDisruptionBudgets are not weighed when
//! picking victims, and nodes that fail for other reasons (ports, affinity) are not
//! candidates.

use std::cmp::Reverse;

use k8s_openapi::api::core::v1::{Node, Pod};
use kedge_guest::pod::Requests;

use super::{Reason, Usage};

/// A pod's priority (`spec.priority`, set by admission; 0 when absent).
pub fn priority(pod: &Pod) -> i32 {
    pod.spec.as_ref().and_then(|s| s.priority).unwrap_or(0)
}

/// Whether the pod may preempt others (`preemptionPolicy` is not `Never`).
pub fn may_preempt(pod: &Pod) -> bool {
    pod.spec
        .as_ref()
        .and_then(|s| s.preemption_policy.as_deref())
        != Some("Never")
}

/// Whether a node's reasons for refusing the pod are ones preemption can remove.
pub(crate) fn resources_only(reasons: &[Reason]) -> bool {
    !reasons.is_empty()
        && reasons
            .iter()
            .all(|r| matches!(r, Reason::Cpu | Reason::Memory | Reason::Pods))
}

/// A pod and its requests.
type PodRequests<'a> = (&'a Pod, Requests);

/// One node's pods as preemption weighs them.
pub(crate) struct NodePods<'a> {
    pub node: &'a Node,
    /// Its active pods and their requests.
    pub pods: Vec<PodRequests<'a>>,
    /// What nominated pods (of at least the incoming pod's priority) will take there.
    pub nominated: Usage,
}

/// Where to preempt, and whom.
#[derive(Debug)]
pub(crate) struct Plan<'a> {
    pub node: &'a str,
    pub victims: Vec<&'a Pod>,
}

fn usage_of<'p>(pods: impl IntoIterator<Item = &'p Requests>, base: Usage) -> Usage {
    pods.into_iter().fold(base, |mut u, r| {
        u.requests = u.requests.saturating_add(*r);
        u.pods += 1;
        u
    })
}

/// More important first: higher priority, then started earlier (kube's `MoreImportantPod`).
fn importance(p: &Pod) -> (Reverse<i32>, Option<k8s_openapi::jiff::Timestamp>) {
    (
        Reverse(priority(p)),
        p.metadata.creation_timestamp.as_ref().map(|t| t.0),
    )
}

/// The victims on one node, if taking lower-priority pods away lets `pod` pass `fits`.
fn victims_on<'a>(
    pod: &Pod,
    n: &NodePods<'a>,
    fits: &dyn Fn(&Node, Usage) -> bool,
) -> Option<Vec<&'a Pod>> {
    let mine = priority(pod);
    let (mut pool, kept): (Vec<&PodRequests<'a>>, Vec<&PodRequests<'a>>) =
        n.pods.iter().partition(|(p, _)| priority(p) < mine);
    if pool.is_empty() {
        return None;
    }
    let mut usage = usage_of(kept.iter().map(|(_, r)| r), n.nominated);
    if !fits(n.node, usage) {
        return None;
    }
    pool.sort_by_key(|(p, _)| importance(p));
    let mut victims = Vec::new();
    for &(p, r) in pool {
        let with = usage_of([&r], usage);
        if fits(n.node, with) {
            usage = with;
        } else {
            victims.push(p);
        }
    }
    (!victims.is_empty()).then_some(victims)
}

/// The best node to preempt on among `candidates`, or `None` when no node frees enough.
pub(crate) fn plan<'a>(
    pod: &Pod,
    candidates: &[NodePods<'a>],
    fits: &dyn Fn(&Node, Usage) -> bool,
) -> Option<Plan<'a>> {
    candidates
        .iter()
        .filter_map(|n| {
            let victims = victims_on(pod, n, fits)?;
            let name = n.node.metadata.name.as_deref().unwrap_or("");
            Some((name, victims))
        })
        .min_by_key(|(name, victims)| {
            let highest = victims.iter().map(|v| priority(v)).max().unwrap_or(0);
            let sum: i64 = victims.iter().map(|v| i64::from(priority(v))).sum();
            (highest, sum, victims.len(), *name)
        })
        .map(|(node, victims)| Plan { node, victims })
}
