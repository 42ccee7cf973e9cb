//! PodTopologySpread: `whenUnsatisfiable: DoNotSchedule` constraints filter,
//! `ScheduleAnyway` constraints score, with kube-scheduler's arithmetic. Counted: active pods
//! in the incoming pod's namespace, bound to nodes that carry every topology key of the
//! constraints and pass the node inclusion policies (`nodeAffinityPolicy` Honor and
//! `nodeTaintsPolicy` Ignore by default). Not implemented: the cluster-level default
//! constraints kube-scheduler applies to pods that declare none.

use std::collections::{BTreeMap, HashMap};

use k8s_openapi::api::core::v1::{Node, Pod, TopologySpreadConstraint};
use k8s_openapi::apimachinery::pkg::apis::meta::v1::LabelSelectorRequirement;
use kedge_guest::meta::labels_of;
use kedge_guest::selector::Selector;

use crate::{Reason, nodeaffinity, score, untolerated_taint};

struct Constraint {
    max_skew: i64,
    topology_key: String,
    /// `None`: a missing or invalid labelSelector, which selects no pod.
    selector: Option<Selector>,
    min_domains: i64,
    honor_affinity: bool,
    honor_taints: bool,
}

impl Constraint {
    fn new(c: &TopologySpreadConstraint, pod: &Pod) -> Self {
        let pod_labels = labels_of(&pod.metadata);
        let selector = c.label_selector.as_ref().and_then(|ls| {
            let mut ls = ls.clone();
            for key in c.match_label_keys.iter().flatten() {
                if let Some(v) = pod_labels.get(key) {
                    ls.match_expressions
                        .get_or_insert_default()
                        .push(LabelSelectorRequirement {
                            key: key.clone(),
                            operator: "In".into(),
                            values: Some(vec![v.clone()]),
                        });
                }
            }
            Selector::from_label_selector(&ls).ok()
        });
        Constraint {
            max_skew: i64::from(c.max_skew),
            topology_key: c.topology_key.clone(),
            selector,
            min_domains: i64::from(c.min_domains.unwrap_or(1)),
            honor_affinity: c.node_affinity_policy.as_deref() != Some("Ignore"),
            honor_taints: c.node_taints_policy.as_deref() == Some("Honor"),
        }
    }

    fn selects(&self, pod: &Pod) -> bool {
        self.selector
            .as_ref()
            .is_some_and(|s| s.matches_opt(pod.metadata.labels.as_ref()))
    }

    /// Whether pods on `node` count toward the domains at all.
    fn includes(&self, node: &Node, pod: &Pod) -> bool {
        let spec = pod.spec.as_ref();
        (!self.honor_affinity || spec.is_none_or(|s| nodeaffinity::matches(s, node)))
            && (!self.honor_taints || !untolerated_taint(node, pod))
    }

    /// Pods on one node this constraint counts: same namespace, not being deleted, selected.
    fn count(&self, pods: &[&Pod], namespace: Option<&str>) -> i64 {
        pods.iter()
            .filter(|p| {
                p.metadata.deletion_timestamp.is_none()
                    && p.metadata.namespace.as_deref() == namespace
                    && self.selects(p)
            })
            .count() as i64
    }
}

/// The constraints of one pod and, for the hard ones, the counts per domain.
pub struct Spread {
    /// DoNotSchedule constraints with pods per domain value and the global minimum.
    hard: Vec<(Constraint, HashMap<String, i64>, i64)>,
    /// ScheduleAnyway constraints.
    soft: Vec<Constraint>,
}

fn has_keys(node: &Node, constraints: &[&Constraint]) -> bool {
    let labels = labels_of(&node.metadata);
    constraints
        .iter()
        .all(|c| labels.contains_key(&c.topology_key))
}

impl Spread {
    /// `pods_by_node`: active pods bound to each node.
    pub fn new(pod: &Pod, nodes: &[Node], pods_by_node: &BTreeMap<&str, Vec<&Pod>>) -> Self {
        let constraints = pod
            .spec
            .as_ref()
            .and_then(|s| s.topology_spread_constraints.as_deref())
            .unwrap_or(&[]);
        let (mut hard, mut soft) = (Vec::new(), Vec::new());
        for c in constraints {
            let parsed = Constraint::new(c, pod);
            if c.when_unsatisfiable == "ScheduleAnyway" {
                soft.push(parsed);
            } else {
                hard.push(parsed);
            }
        }
        let ns = pod.metadata.namespace.as_deref();
        let refs: Vec<&Constraint> = hard.iter().collect();
        let mut counts: Vec<HashMap<String, i64>> = vec![HashMap::new(); hard.len()];
        if !hard.is_empty() {
            for node in nodes.iter().filter(|n| has_keys(n, &refs)) {
                let labels = labels_of(&node.metadata);
                let name = node.metadata.name.as_deref().unwrap_or("");
                let pods = pods_by_node.get(name).map_or(&[][..], Vec::as_slice);
                for (c, domains) in hard.iter().zip(&mut counts) {
                    if c.includes(node, pod) {
                        *domains.entry(labels[&c.topology_key].clone()).or_default() +=
                            c.count(pods, ns);
                    }
                }
            }
        }
        let hard = hard
            .into_iter()
            .zip(counts)
            .map(|(c, domains)| {
                let min = if (domains.len() as i64) < c.min_domains {
                    0
                } else {
                    domains.values().copied().min().unwrap_or(0)
                };
                (c, domains, min)
            })
            .collect();
        Spread { hard, soft }
    }

    /// The filter: `existing + self - global minimum <= maxSkew` for every hard constraint.
    pub fn check(&self, node: &Node, pod: &Pod) -> Option<Reason> {
        let labels = labels_of(&node.metadata);
        for (c, domains, min) in &self.hard {
            let Some(value) = labels.get(&c.topology_key) else {
                return Some(Reason::SpreadMissingLabel);
            };
            let skew = domains.get(value).copied().unwrap_or(0) + i64::from(c.selects(pod)) - min;
            if skew > c.max_skew {
                return Some(Reason::Spread);
            }
        }
        None
    }

    /// Normalized scores (0–100) of the feasible nodes for the soft constraints, or `None`
    /// when the pod has none. Fewer matching pods in a node's domains scores higher; nodes
    /// missing a topology key score 0.
    pub fn scores(
        &self,
        pod: &Pod,
        feasible: &[&Node],
        nodes: &[Node],
        pods_by_node: &BTreeMap<&str, Vec<&Pod>>,
    ) -> Option<Vec<i64>> {
        if self.soft.is_empty() {
            return None;
        }
        let refs: Vec<&Constraint> = self.soft.iter().collect();
        // Domains are those of the feasible nodes; pods are counted on every node.
        let mut counts: Vec<HashMap<&str, i64>> = vec![HashMap::new(); self.soft.len()];
        for node in feasible.iter().filter(|n| has_keys(n, &refs)) {
            let labels = labels_of(&node.metadata);
            for (c, domains) in self.soft.iter().zip(&mut counts) {
                domains.entry(labels[&c.topology_key].as_str()).or_default();
            }
        }
        let ns = pod.metadata.namespace.as_deref();
        for node in nodes.iter().filter(|n| has_keys(n, &refs)) {
            let labels = labels_of(&node.metadata);
            let name = node.metadata.name.as_deref().unwrap_or("");
            let pods = pods_by_node.get(name).map_or(&[][..], Vec::as_slice);
            for (c, domains) in self.soft.iter().zip(&mut counts) {
                if let Some(n) = domains.get_mut(labels[&c.topology_key].as_str())
                    && c.includes(node, pod)
                {
                    *n += c.count(pods, ns);
                }
            }
        }
        // Constraints over many domains weigh more: ln(domains + 2), as kube-scheduler.
        let weights: Vec<f64> = counts.iter().map(|d| (d.len() as f64 + 2.0).ln()).collect();
        let raw: Vec<Option<i64>> = feasible
            .iter()
            .map(|node| {
                if !has_keys(node, &refs) {
                    return None;
                }
                let labels = labels_of(&node.metadata);
                let s: f64 = self
                    .soft
                    .iter()
                    .zip(&counts)
                    .zip(&weights)
                    .map(|((c, domains), w)| {
                        let n = domains[labels[&c.topology_key].as_str()];
                        n as f64 * w + (c.max_skew - 1) as f64
                    })
                    .sum();
                Some(s.round() as i64)
            })
            .collect();
        Some(score::spread_normalize(&raw))
    }
}
