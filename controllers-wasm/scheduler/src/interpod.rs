//! InterPodAffinity: required pod affinity / anti-affinity as filters (including the
//! required anti-affinity of pods already placed, which is symmetric), preferred terms as a
//! score — kube-scheduler's algorithm over topology domains `(topologyKey, node label
//! value)`. Only active pods bound to a known node count.

use std::cell::OnceCell;
use std::collections::{BTreeMap, HashMap};

use k8s_openapi::api::core::v1::{Namespace, Node, Pod, PodAffinityTerm, WeightedPodAffinityTerm};
use k8s_openapi::apimachinery::pkg::apis::meta::v1::LabelSelectorRequirement;
use kedge_guest::meta::labels_of;
use kedge_guest::selector::Selector;
use kedge_guest::{Cluster, ClusterExt, LogLevel};

use crate::Reason;

type Labels = BTreeMap<String, String>;

/// kube-scheduler's `hardPodAffinityWeight` default: an existing pod's *required* affinity
/// to the incoming pod counts as a preference of this weight.
const HARD_POD_AFFINITY_WEIGHT: i64 = 1;

/// Labels of every namespace, listed on first use: only `namespaceSelector` terms need them.
pub struct NamespaceLabels<'c> {
    cluster: &'c dyn Cluster,
    cache: OnceCell<HashMap<String, Labels>>,
}

impl<'c> NamespaceLabels<'c> {
    pub fn new(cluster: &'c dyn Cluster) -> Self {
        Self {
            cluster,
            cache: OnceCell::new(),
        }
    }

    fn get(&self, ns: &str) -> Option<&Labels> {
        self.cache
            .get_or_init(|| match self.cluster.list::<Namespace>("", "") {
                Ok(list) => list
                    .into_iter()
                    .filter_map(|n| Some((n.metadata.name?, n.metadata.labels.unwrap_or_default())))
                    .collect(),
                Err(e) => {
                    // A namespaceSelector then matches only what an empty label set matches.
                    self.cluster.log(
                        LogLevel::Warn,
                        &format!("listing namespaces for a namespaceSelector: {e}"),
                    );
                    HashMap::new()
                }
            })
            .get(ns)
    }
}

/// One pod (anti-)affinity term, resolved against the pod that carries it.
struct Term {
    topology_key: String,
    /// `None`: a missing or invalid labelSelector, which selects no pod.
    selector: Option<Selector>,
    namespaces: Vec<String>,
    namespace_selector: Option<Selector>,
    weight: i64,
}

impl Term {
    fn new(t: &PodAffinityTerm, owner: &Pod, weight: i64) -> Self {
        let owner_labels = labels_of(&owner.metadata);
        let selector = t.label_selector.as_ref().and_then(|ls| {
            // matchLabelKeys / mismatchLabelKeys: `key In/NotIn (owner's value)`, for the
            // keys the owner carries.
            let mut ls = ls.clone();
            let keys = [
                ("In", &t.match_label_keys),
                ("NotIn", &t.mismatch_label_keys),
            ];
            for (op, keys) in keys {
                for key in keys.iter().flatten() {
                    if let Some(v) = owner_labels.get(key) {
                        ls.match_expressions.get_or_insert_default().push(
                            LabelSelectorRequirement {
                                key: key.clone(),
                                operator: op.into(),
                                values: Some(vec![v.clone()]),
                            },
                        );
                    }
                }
            }
            Selector::from_label_selector(&ls).ok()
        });
        let mut namespaces = t.namespaces.clone().unwrap_or_default();
        if namespaces.is_empty() && t.namespace_selector.is_none() {
            namespaces.push(owner.metadata.namespace.clone().unwrap_or_default());
        }
        Term {
            topology_key: t.topology_key.clone(),
            selector,
            namespaces,
            namespace_selector: t
                .namespace_selector
                .as_ref()
                .and_then(|s| Selector::from_label_selector(s).ok()),
            weight,
        }
    }

    fn matches(&self, pod: &Pod, ns_labels: &NamespaceLabels) -> bool {
        let Some(selector) = &self.selector else {
            return false;
        };
        let ns = pod.metadata.namespace.as_deref().unwrap_or("");
        let ns_ok = self.namespaces.iter().any(|n| n == ns)
            || self
                .namespace_selector
                .as_ref()
                .is_some_and(|s| s.matches_opt(ns_labels.get(ns)));
        ns_ok && selector.matches_opt(pod.metadata.labels.as_ref())
    }
}

/// A pod's four lists of terms.
#[derive(Default)]
struct Terms {
    required_affinity: Vec<Term>,
    required_anti: Vec<Term>,
    preferred_affinity: Vec<Term>,
    preferred_anti: Vec<Term>,
}

impl Terms {
    fn of(pod: &Pod) -> Self {
        let Some(affinity) = pod.spec.as_ref().and_then(|s| s.affinity.as_ref()) else {
            return Self::default();
        };
        let required = |terms: Option<&Vec<PodAffinityTerm>>| -> Vec<Term> {
            terms
                .into_iter()
                .flatten()
                .map(|t| Term::new(t, pod, 0))
                .collect()
        };
        let aff = affinity.pod_affinity.as_ref();
        let anti = affinity.pod_anti_affinity.as_ref();
        let preferred = |terms: Option<&Vec<WeightedPodAffinityTerm>>| {
            terms
                .into_iter()
                .flatten()
                .map(|w| Term::new(&w.pod_affinity_term, pod, i64::from(w.weight)))
                .collect::<Vec<_>>()
        };
        Terms {
            required_affinity: required(aff.and_then(|a| {
                a.required_during_scheduling_ignored_during_execution
                    .as_ref()
            })),
            required_anti: required(anti.and_then(|a| {
                a.required_during_scheduling_ignored_during_execution
                    .as_ref()
            })),
            preferred_affinity: preferred(aff.and_then(|a| {
                a.preferred_during_scheduling_ignored_during_execution
                    .as_ref()
            })),
            preferred_anti: preferred(anti.and_then(|a| {
                a.preferred_during_scheduling_ignored_during_execution
                    .as_ref()
            })),
        }
    }
}

pub(crate) fn has_pod_affinity(pod: &Pod) -> bool {
    pod.spec
        .as_ref()
        .and_then(|s| s.affinity.as_ref())
        .is_some_and(|a| a.pod_affinity.is_some() || a.pod_anti_affinity.is_some())
}

/// Per topology key, per value: a count or a score.
type Counts = HashMap<String, HashMap<String, i64>>;

fn add(counts: &mut Counts, node_labels: &Labels, key: &str, delta: i64) {
    if let Some(value) = node_labels.get(key) {
        *counts
            .entry(key.to_owned())
            .or_default()
            .entry(value.clone())
            .or_default() += delta;
    }
}

fn get(counts: &Counts, key: &str, value: &str) -> i64 {
    counts
        .get(key)
        .and_then(|m| m.get(value))
        .copied()
        .unwrap_or(0)
}

/// What the filter and the score need, computed once per scheduling decision.
pub struct InterPod {
    required_affinity: Vec<Term>,
    required_anti: Vec<Term>,
    /// Domains holding pods that match *all* of the incoming pod's required affinity terms.
    affinity_counts: Counts,
    /// Domains holding pods that match one of its required anti-affinity terms.
    anti_counts: Counts,
    /// Domains holding pods whose required anti-affinity matches the incoming pod.
    existing_anti_counts: Counts,
    /// The preferred terms of both sides, summed per domain.
    scores: Counts,
    /// The incoming pod matches its own required affinity terms (first of a group).
    matches_itself: bool,
}

impl InterPod {
    /// `placed`: every active pod bound to a known node, with that node.
    pub fn new(pod: &Pod, placed: &[(&Pod, &Node)], ns_labels: &NamespaceLabels) -> Self {
        let own = Terms::of(pod);
        let mut this = InterPod {
            matches_itself: own
                .required_affinity
                .iter()
                .all(|t| t.matches(pod, ns_labels)),
            required_affinity: vec![],
            required_anti: vec![],
            affinity_counts: Counts::new(),
            anti_counts: Counts::new(),
            existing_anti_counts: Counts::new(),
            scores: Counts::new(),
        };
        for (other, node) in placed {
            let labels = labels_of(&node.metadata);
            if labels.is_empty() {
                continue;
            }
            if !own.required_affinity.is_empty()
                && own
                    .required_affinity
                    .iter()
                    .all(|t| t.matches(other, ns_labels))
            {
                for t in &own.required_affinity {
                    add(&mut this.affinity_counts, labels, &t.topology_key, 1);
                }
            }
            for t in &own.required_anti {
                if t.matches(other, ns_labels) {
                    add(&mut this.anti_counts, labels, &t.topology_key, 1);
                }
            }
            for (terms, sign) in [(&own.preferred_affinity, 1), (&own.preferred_anti, -1)] {
                for t in terms {
                    if t.matches(other, ns_labels) {
                        add(&mut this.scores, labels, &t.topology_key, sign * t.weight);
                    }
                }
            }
            if !has_pod_affinity(other) {
                continue;
            }
            let theirs = Terms::of(other);
            for t in &theirs.required_anti {
                if t.matches(pod, ns_labels) {
                    add(&mut this.existing_anti_counts, labels, &t.topology_key, 1);
                }
            }
            let weighted = theirs
                .required_affinity
                .iter()
                .map(|t| (t, HARD_POD_AFFINITY_WEIGHT))
                .chain(theirs.preferred_affinity.iter().map(|t| (t, t.weight)))
                .chain(theirs.preferred_anti.iter().map(|t| (t, -t.weight)));
            for (t, w) in weighted {
                if t.matches(pod, ns_labels) {
                    add(&mut this.scores, labels, &t.topology_key, w);
                }
            }
        }
        this.required_affinity = own.required_affinity;
        this.required_anti = own.required_anti;
        this
    }

    /// The filter, in kube-scheduler's order: affinity, anti-affinity, existing pods'
    /// anti-affinity.
    pub fn check(&self, node: &Node) -> Option<Reason> {
        let labels = labels_of(&node.metadata);
        if !self.required_affinity.is_empty() {
            let mut pods_exist = true;
            for t in &self.required_affinity {
                // Every topology key must exist on the node.
                let Some(value) = labels.get(&t.topology_key) else {
                    return Some(Reason::PodAffinity);
                };
                if get(&self.affinity_counts, &t.topology_key, value) <= 0 {
                    pods_exist = false;
                }
            }
            // The first pod of a group with affinity to itself may go anywhere that has the
            // topology keys, or it would wait forever.
            let first_of_group = self.affinity_counts.is_empty() && self.matches_itself;
            if !pods_exist && !first_of_group {
                return Some(Reason::PodAffinity);
            }
        }
        for t in &self.required_anti {
            if labels
                .get(&t.topology_key)
                .is_some_and(|v| get(&self.anti_counts, &t.topology_key, v) > 0)
            {
                return Some(Reason::PodAntiAffinity);
            }
        }
        if !self.existing_anti_counts.is_empty()
            && labels
                .iter()
                .any(|(k, v)| get(&self.existing_anti_counts, k, v) > 0)
        {
            return Some(Reason::ExistingAntiAffinity);
        }
        None
    }

    /// Whether any preference applies (otherwise the score is skipped).
    pub fn has_scores(&self) -> bool {
        !self.scores.is_empty()
    }

    /// The raw score of `node`: the preferences of every domain it belongs to.
    pub fn score(&self, node: &Node) -> i64 {
        labels_of(&node.metadata)
            .iter()
            .map(|(k, v)| get(&self.scores, k, v))
            .sum()
    }
}
