//! NodeAffinity: `nodeSelector` and required node affinity as a filter, preferred node
//! affinity as a score (the sum of the weights of the matching terms).

use k8s_openapi::api::core::v1::{Node, NodeAffinity, PodSpec};
use kedge_guest::meta::labels_of;
use kedge_guest::selector::{node_selector_matches, node_term_matches};

fn node_affinity(spec: &PodSpec) -> Option<&NodeAffinity> {
    spec.affinity.as_ref()?.node_affinity.as_ref()
}

/// `nodeSelector` (every pair present) AND required node affinity (any term matches).
pub fn matches(spec: &PodSpec, node: &Node) -> bool {
    let labels = labels_of(&node.metadata);
    let selector_ok = spec
        .node_selector
        .iter()
        .flatten()
        .all(|(k, v)| labels.get(k) == Some(v));
    selector_ok
        && node_affinity(spec)
            .and_then(|na| {
                na.required_during_scheduling_ignored_during_execution
                    .as_ref()
            })
            .is_none_or(|required| node_selector_matches(required, node))
}

/// Sum of the weights of the preferred terms `node` matches (terms with weight 0 or no
/// requirements count for nothing, as in kube-scheduler).
pub fn preferred_score(spec: &PodSpec, node: &Node) -> i64 {
    node_affinity(spec)
        .and_then(|na| {
            na.preferred_during_scheduling_ignored_during_execution
                .as_deref()
        })
        .unwrap_or(&[])
        .iter()
        .filter(|t| t.weight != 0 && node_term_matches(&t.preference, node))
        .map(|t| i64::from(t.weight))
        .sum()
}

/// Whether the pod states any preferred node affinity (otherwise the score is skipped).
pub fn has_preferences(spec: &PodSpec) -> bool {
    node_affinity(spec)
        .and_then(|na| {
            na.preferred_during_scheduling_ignored_during_execution
                .as_deref()
        })
        .is_some_and(|p| !p.is_empty())
}
