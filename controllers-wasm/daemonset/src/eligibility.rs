//! Which nodes a DaemonSet's pod belongs on: pure functions over a node and the pod spec,
//! the predicates kube-controller-manager's `NodeShouldRunDaemonPod` runs.

use k8s_openapi::api::core::v1::{
    Affinity, Node, NodeAffinity, NodeSelector, NodeSelectorRequirement, NodeSelectorTerm, PodSpec,
    Toleration,
};
use kedge_guest::meta::labels_of;
use kedge_guest::selector::node_selector_matches;

/// Taint keys a DaemonSet pod tolerates whatever its template says, with their effect, as
/// Kubernetes' `AddOrUpdateDaemonPodTolerations` adds them: a node agent must keep running
/// on a node that is not ready, unreachable, under pressure or cordoned.
pub const DAEMON_TOLERATIONS: &[(&str, &str)] = &[
    ("node.kubernetes.io/not-ready", "NoExecute"),
    ("node.kubernetes.io/unreachable", "NoExecute"),
    ("node.kubernetes.io/disk-pressure", "NoSchedule"),
    ("node.kubernetes.io/memory-pressure", "NoSchedule"),
    ("node.kubernetes.io/pid-pressure", "NoSchedule"),
    ("node.kubernetes.io/unschedulable", "NoSchedule"),
];

/// Added only for `hostNetwork` pods, which do not need the node's pod network.
pub const NETWORK_UNAVAILABLE: &str = "node.kubernetes.io/network-unavailable";

/// The verdict for one node.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Fit {
    /// A pod should be created here (and counts in `desiredNumberScheduled`).
    pub should_run: bool,
    /// A pod already here may stay: like `should_run`, except that an untolerated
    /// `NoSchedule` taint only stops new pods, it does not evict.
    pub should_continue: bool,
}

/// Adds the [`DAEMON_TOLERATIONS`] the spec lacks (effect and key both matching), keeping
/// the user's own tolerations first.
pub fn add_daemon_tolerations(spec: &mut PodSpec) {
    let mut wanted: Vec<(&str, &str)> = DAEMON_TOLERATIONS.to_vec();
    if spec.host_network == Some(true) {
        wanted.push((NETWORK_UNAVAILABLE, "NoSchedule"));
    }
    let tolerations = spec.tolerations.get_or_insert_default();
    for (key, effect) in wanted {
        let present = tolerations.iter().any(|t| {
            t.key.as_deref() == Some(key)
                && t.operator.as_deref() == Some("Exists")
                && t.effect.as_deref() == Some(effect)
        });
        if !present {
            tolerations.push(Toleration {
                key: Some(key.into()),
                operator: Some("Exists".into()),
                effect: Some(effect.into()),
                ..Default::default()
            });
        }
    }
}

/// Pins a pod to `node` the way Kubernetes does for DaemonSet pods
/// (`ReplaceDaemonSetPodNodeNameNodeAffinity`): the required node affinity becomes the single
/// term `metadata.name In [node]`; preferred terms and pod (anti-)affinity are kept.
pub fn pin_to_node(spec: &mut PodSpec, node: &str) {
    let term = NodeSelectorTerm {
        match_expressions: None,
        match_fields: Some(vec![NodeSelectorRequirement {
            key: "metadata.name".into(),
            operator: "In".into(),
            values: Some(vec![node.into()]),
        }]),
    };
    let affinity = spec.affinity.get_or_insert_with(Affinity::default);
    let na = affinity
        .node_affinity
        .get_or_insert_with(NodeAffinity::default);
    na.required_during_scheduling_ignored_during_execution = Some(NodeSelector {
        node_selector_terms: vec![term],
    });
}

pub use kedge_guest::pod::tolerates;

/// `nodeSelector` (every pair present) and required node affinity (any term matches).
pub fn matches_node_selection(spec: &PodSpec, node: &Node) -> bool {
    let labels = labels_of(&node.metadata);
    let selector_ok = spec
        .node_selector
        .iter()
        .flatten()
        .all(|(k, v)| labels.get(k) == Some(v));
    let required = spec
        .affinity
        .as_ref()
        .and_then(|a| a.node_affinity.as_ref())
        .and_then(|na| {
            na.required_during_scheduling_ignored_during_execution
                .as_ref()
        });
    let affinity_ok = required.is_none_or(|r| node_selector_matches(r, node));
    selector_ok && affinity_ok
}

/// Judges `node` for a pod with `spec` (the template with the daemon tolerations added).
pub fn fit(spec: &PodSpec, node: &Node) -> Fit {
    let name = node.metadata.name.as_deref().unwrap_or("");
    let pinned_elsewhere = spec
        .node_name
        .as_deref()
        .is_some_and(|n| !n.is_empty() && n != name);
    if pinned_elsewhere || !matches_node_selection(spec, node) {
        return Fit {
            should_run: false,
            should_continue: false,
        };
    }
    let tolerations = spec.tolerations.as_deref().unwrap_or(&[]);
    let untolerated = |effect: &str| {
        node.spec
            .as_ref()
            .and_then(|s| s.taints.as_deref())
            .unwrap_or(&[])
            .iter()
            .filter(|t| t.effect == effect)
            .any(|t| !tolerations.iter().any(|tol| tolerates(tol, t)))
    };
    // `spec.unschedulable` acts as the `node.kubernetes.io/unschedulable` taint, which the
    // daemon tolerations always cover, so a cordoned node still runs its daemons.
    let no_execute = untolerated("NoExecute");
    Fit {
        should_run: !no_execute && !untolerated("NoSchedule"),
        should_continue: !no_execute,
    }
}
