//! The default scheduler as a kedge plugin: binds each pending pod to the best feasible
//! node, with kube-scheduler's filters and scores (default profile) where kedge has the
//! information, and the same "0/N nodes are available: …" message when nothing fits.
//!
//! Filters, in kube-scheduler's order (a node is rejected by the first that fails): node
//! Ready, not cordoned, taints (`NoSchedule`/`NoExecute`) against the pod's tolerations,
//! `nodeSelector` and required node affinity, the runtime (below), free ports
//! (`nodeports.rs`: `hostPort`s, and every `containerPort` while pods share the node's
//! network), CPU/memory requests and pod count against `status.allocatable`, topology spread
//! (`DoNotSchedule`), inter-pod affinity and anti-affinity (the incoming pod's required
//! terms, and the required anti-affinity of pods already placed).
//!
//! Scores, each normalized to 0–100 over the feasible nodes and summed with weights
//! (`score.rs`): untolerated `PreferNoSchedule` taints (3), preferred node affinity (2),
//! topology spread `ScheduleAnyway` (2), preferred inter-pod (anti-)affinity of both pods
//! (2), least allocated (1), balanced allocation (1), image locality (1), and kedge's fewest
//! pods (1), so replicas that request nothing still spread across the edge fleet. Ties go
//! to fewer pods, then the less loaded node, then the name (kube-scheduler picks at random).
//!
//! Runtime fit comes from RuntimeClasses, as in Kubernetes: the API's admission merges a
//! pod's class's `scheduling.nodeSelector` (the `runc` class: `kedge.io/runtime-oci=true`,
//! which the agent sets when runc is usable) into the pod's `nodeSelector`, and its
//! `overhead` into `spec.overhead`, which the resource fit counts on top of the containers'
//! requests (`pod_requests`). A pod with no `runtimeClassName` fits any node: the reference
//! alone does not tell whether an image is Wasm or OCI (only its media type after pulling
//! does), so an unmarked OCI pod may land on a Wasm-only node and fail there — give OCI pods
//! the `runc` class to prevent it.
//!
//! Pods counted for inter-pod affinity and spreading: active pods bound to a known node,
//! including those this plugin bound moments ago (the host writes bindings through to the
//! cache `list` reads). Volumes: `volumes.rs`. Pending pods are taken by priority, then
//! age; a pod that fits nowhere may preempt pods of lower priority (`preempt.rs`). Not
//! implemented: default spread constraints.

mod interpod;
mod nodeaffinity;
mod nodeports;
mod preempt;
mod score;
mod spread;
mod volumes;

use std::cmp::Reverse;
use std::collections::{BTreeMap, HashMap};

use k8s_openapi::api::core::v1::{
    Event, Namespace, Node, PersistentVolume, PersistentVolumeClaim, Pod, PodCondition, Toleration,
};
use kedge_guest::meta::{find_condition, parse_time, set_condition};
pub use kedge_guest::pod::tolerates;
use kedge_guest::pod::{Requests, is_active, pod_requests};
use kedge_guest::quantity::{parse_bytes, parse_cpu_millis};
use kedge_guest::{
    ApiResultExt, Cluster, ClusterExt, Controller, KindRef, LogLevel, ObjectKey, Outcome,
    PodBinding, Registration, Result,
};

use interpod::{InterPod, NamespaceLabels};
use nodeports::NodePorts;
use score::Capacity;
use spread::Spread;
use volumes::Volumes;

/// How long to wait before retrying a pod that fits nowhere; new nodes and freed capacity
/// do not enqueue the pod (Nodes are only read), so polling is what notices them.
const UNSCHEDULABLE_RETRY_MS: u64 = 5000;

/// kube-scheduler's default when a node does not report `allocatable.pods`.
const DEFAULT_MAX_PODS: u64 = 110;

/// The plugin type wired to the component exports.
pub struct Scheduler;

impl Controller for Scheduler {
    fn registration() -> Registration {
        Registration::new("scheduler", KindRef::of::<Pod>())
            // Namespaces: for pod affinity terms with a namespaceSelector.
            .reads([
                KindRef::of::<Node>(),
                KindRef::of::<Namespace>(),
                KindRef::of::<PersistentVolume>(),
            ])
            .writes([
                KindRef::of::<Pod>(),
                KindRef::of::<Event>(),
                // The selected-node annotation of WaitForFirstConsumer claims.
                KindRef::of::<PersistentVolumeClaim>(),
            ])
    }

    fn reconcile(cluster: &dyn Cluster, key: &ObjectKey) -> Result<Outcome> {
        schedule(cluster, key)
    }
}

kedge_guest::export_controller!(Scheduler);

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
    NodePorts,
    PodNetwork,
    Cpu,
    Memory,
    Pods,
    Spread,
    SpreadMissingLabel,
    PodAffinity,
    PodAntiAffinity,
    ExistingAntiAffinity,
    VolumeNodeAffinity,
}

impl Reason {
    fn text(self) -> &'static str {
        match self {
            Reason::NotReady => "node(s) were not ready",
            Reason::Unschedulable => "node(s) were unschedulable",
            Reason::Taint => "node(s) had untolerated taint(s)",
            Reason::Selector => "node(s) didn't match Pod's node affinity/selector",
            Reason::NodePorts => "node(s) didn't have free ports for the requested pod ports",
            Reason::PodNetwork => {
                "node(s) had no pod network to map a hostPort to a different containerPort or hostIP"
            }
            Reason::Cpu => "Insufficient cpu",
            Reason::Memory => "Insufficient memory",
            Reason::Pods => "Too many pods",
            Reason::Spread => "node(s) didn't match pod topology spread constraints",
            Reason::SpreadMissingLabel => {
                "node(s) didn't match pod topology spread constraints (missing required label)"
            }
            Reason::PodAffinity => "node(s) didn't match pod affinity rules",
            Reason::PodAntiAffinity => "node(s) didn't match pod anti-affinity rules",
            Reason::ExistingAntiAffinity => {
                "node(s) didn't satisfy existing pods anti-affinity rules"
            }
            Reason::VolumeNodeAffinity => "node(s) had volume node affinity conflict",
        }
    }
}

/// What is already committed on one node.
#[derive(Default, Clone, Copy)]
struct Usage {
    requests: Requests,
    /// With the scoring defaults for pods that request nothing.
    non_zero: Requests,
    pods: u64,
}

fn ppm(used: u64, capacity: u64) -> u128 {
    if capacity == 0 {
        0
    } else {
        u128::from(used) * 1_000_000 / u128::from(capacity)
    }
}

/// Whether `node` has a `NoSchedule`/`NoExecute` taint the pod does not tolerate.
fn untolerated_taint(node: &Node, pod: &Pod) -> bool {
    let tolerations: &[Toleration] = pod
        .spec
        .as_ref()
        .and_then(|s| s.tolerations.as_deref())
        .unwrap_or(&[]);
    node.spec
        .as_ref()
        .and_then(|s| s.taints.as_deref())
        .unwrap_or(&[])
        .iter()
        .filter(|t| matches!(t.effect.as_str(), "NoSchedule" | "NoExecute"))
        .any(|t| !tolerations.iter().any(|tol| tolerates(tol, t)))
}

fn capacity(node: &Node) -> (Capacity, u64) {
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
    (
        Capacity {
            cpu_millis: cpu,
            memory_bytes: memory,
        },
        max_pods,
    )
}

/// The filters, in order; the node's capacity when it passes them all.
#[allow(clippy::too_many_arguments)]
fn evaluate(
    node: &Node,
    (cap, max_pods): (Capacity, u64),
    pod: &Pod,
    want: Requests,
    usage: Usage,
    ports: &NodePorts,
    spread: &Spread,
    interpod: &InterPod,
) -> Result<Capacity, Vec<Reason>> {
    let spec = pod.spec.as_ref().expect("needs_scheduling checked spec");
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
    if untolerated_taint(node, pod) {
        return Err(vec![Reason::Taint]);
    }
    if !nodeaffinity::matches(spec, node) {
        return Err(vec![Reason::Selector]);
    }
    if let Some(r) = ports.check(node) {
        return Err(vec![r]);
    }
    let used = usage.requests.saturating_add(want);
    let mut reasons = Vec::new();
    if want.cpu_millis > 0 && used.cpu_millis > cap.cpu_millis {
        reasons.push(Reason::Cpu);
    }
    if want.memory_bytes > 0 && used.memory_bytes > cap.memory_bytes {
        reasons.push(Reason::Memory);
    }
    if usage.pods + 1 > max_pods {
        reasons.push(Reason::Pods);
    }
    if !reasons.is_empty() {
        return Err(reasons);
    }
    if let Some(r) = spread.check(node, pod).or_else(|| interpod.check(node)) {
        return Err(vec![r]);
    }
    Ok(cap)
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

/// A node that passed every filter.
struct Feasible<'a> {
    node: &'a Node,
    usage: Usage,
    cap: Capacity,
}

impl<'a> Feasible<'a> {
    fn name(&self) -> &'a str {
        self.node.metadata.name.as_deref().unwrap_or("")
    }
}

/// Everything the scores read besides the feasible nodes.
struct World<'a> {
    pod: &'a Pod,
    want: Requests,
    nodes: &'a [Node],
    pods_by_node: &'a BTreeMap<&'a str, Vec<&'a Pod>>,
    spread: &'a Spread,
    interpod: &'a InterPod,
}

/// The weighted sum of the normalized scores of each feasible node.
fn total_scores(w: &World, feasible: &[Feasible]) -> Vec<i64> {
    let spec = w.pod.spec.as_ref().expect("needs_scheduling checked spec");
    let mut total = vec![0i64; feasible.len()];
    let mut add = |weight: i64, scores: Vec<i64>| {
        for (t, s) in total.iter_mut().zip(scores) {
            *t += weight * s;
        }
    };
    let raw = |f: &dyn Fn(&Feasible) -> i64| feasible.iter().map(f).collect::<Vec<_>>();

    let mut taints = raw(&|f| score::intolerable_prefer_no_schedule(f.node, w.pod));
    score::default_normalize(&mut taints, true);
    add(score::TAINT_WEIGHT, taints);

    if nodeaffinity::has_preferences(spec) {
        let mut s = raw(&|f| nodeaffinity::preferred_score(spec, f.node));
        score::default_normalize(&mut s, false);
        add(score::NODE_AFFINITY_WEIGHT, s);
    }

    let nodes: Vec<&Node> = feasible.iter().map(|f| f.node).collect();
    if let Some(s) = w.spread.scores(w.pod, &nodes, w.nodes, w.pods_by_node) {
        add(score::SPREAD_WEIGHT, s);
    }

    if w.interpod.has_scores() {
        let mut s = raw(&|f| w.interpod.score(f.node));
        score::min_max_normalize(&mut s);
        add(score::INTER_POD_WEIGHT, s);
    }

    let want_non_zero = score::non_zero(w.want);
    add(
        score::LEAST_ALLOCATED_WEIGHT,
        raw(&|f| score::least_allocated(f.usage.non_zero.saturating_add(want_non_zero), f.cap)),
    );
    add(
        score::BALANCED_WEIGHT,
        raw(&|f| score::balanced(f.usage.requests.saturating_add(w.want), f.cap)),
    );

    let images = score::ImageLocality::new(spec, w.nodes);
    if images.applies() {
        add(score::IMAGE_WEIGHT, raw(&|f| images.score(f.node)));
    }

    let mut pods = raw(&|f| f.usage.pods as i64);
    score::default_normalize(&mut pods, true);
    add(score::FEWEST_PODS_WEIGHT, pods);
    total
}

/// The best node: highest total, then fewer pods, then less loaded, then by name.
fn pick<'n>(w: &World, feasible: &[Feasible<'n>]) -> Option<&'n str> {
    let totals = total_scores(w, feasible);
    feasible
        .iter()
        .zip(totals)
        .min_by_key(|(f, total)| {
            let used = f.usage.requests.saturating_add(w.want);
            (
                Reverse(*total),
                f.usage.pods,
                ppm(used.cpu_millis, f.cap.cpu_millis) + ppm(used.memory_bytes, f.cap.memory_bytes),
                f.name(),
            )
        })
        .map(|(f, _)| f.name())
}

/// Most pods one reconcile places: the pod asked about, then other pending pods by
/// priority and age. Listing and decoding every Node and Pod is a large part of a call's
/// cost, so one snapshot serves a batch (as kube-scheduler's cache serves its queue); every
/// placement is added to the snapshot before the next pod is placed, and the batch's
/// bindings are written together at the end.
const BATCH: usize = 256;

/// Wall-clock budget for placing the batch, well inside the host's per-call deadline (the
/// bindings are written after it).
const BATCH_BUDGET: std::time::Duration = std::time::Duration::from_millis(300);

/// Where one pod goes.
enum Decision {
    Bind(String),
    Unschedulable(String),
    /// Fits nowhere (the message says why), but will on `node` once `victims` are gone.
    Preempt {
        message: String,
        node: String,
        victims: Vec<Pod>,
    },
}

fn schedule(cluster: &dyn Cluster, key: &ObjectKey) -> Result<Outcome> {
    let Some(pod) = cluster.get::<Pod>(&key.namespace, &key.name)? else {
        return Ok(Outcome::done());
    };
    if !needs_scheduling(&pod) {
        return Ok(Outcome::done());
    }
    let started = std::time::Instant::now();
    let first = pod.metadata.uid.clone().unwrap_or_default();
    let nodes = cluster.list::<Node>("", "")?;
    let all_pods = cluster.list::<Pod>("", "")?;
    let ns_labels = NamespaceLabels::new(cluster);
    // FNV-1a of the pod's uid: where this reconcile's search over the nodes starts.
    let start = first.bytes().fold(0xcbf2_9ce4_8422_2325_u64, |h, b| {
        (h ^ u64::from(b)).wrapping_mul(0x0100_0000_01b3)
    });
    let mut snap = Snapshot::new(&nodes, &all_pods, start as usize);

    // The pod asked about first, then the other pending ones by age. The list's copy of the
    // first is what the snapshot counts once it is placed (the others are the list's).
    let first_listed = all_pods.iter().find(|p| p.metadata.uid == pod.metadata.uid);
    let mut queue: Vec<&Pod> = all_pods
        .iter()
        .filter(|p| p.metadata.uid != pod.metadata.uid && needs_scheduling(p))
        .collect();
    // kube-scheduler's queue order: higher priority first, then older.
    queue.sort_by(|a, b| {
        (
            Reverse(preempt::priority(a)),
            &a.metadata.creation_timestamp,
            &a.metadata.name,
        )
            .cmp(&(
                Reverse(preempt::priority(b)),
                &b.metadata.creation_timestamp,
                &b.metadata.name,
            ))
    });
    queue.truncate(BATCH - 1);
    queue.insert(0, &pod);

    let mut outcome = Outcome::done();
    // Pods placed in the snapshot, bound together at the end: one host call whose writes
    // share commits, as kube-scheduler binds asynchronously after assuming the pod.
    let mut placed: Vec<(&Pod, String)> = Vec::new();
    for (i, candidate) in queue.into_iter().enumerate() {
        if i > 0 && started.elapsed() > BATCH_BUDGET {
            break;
        }
        // An error about another pod of the batch (a request that does not parse, a claim
        // that cannot be read) is that pod's own reconcile's to report: it must not cost the
        // placements made so far, or one bad pending pod would stop all scheduling.
        let volumes = match Volumes::of(cluster, candidate) {
            Ok(Ok(v)) => v,
            Ok(Err(message)) => {
                if i == 0 {
                    outcome = report_unschedulable(cluster, candidate, &message)?;
                }
                continue;
            }
            Err(e) if i == 0 => return Err(e),
            Err(_) => continue,
        };
        let decision = match decide(candidate, &snap, &ns_labels, &volumes) {
            Ok(d) => d,
            Err(e) if i == 0 => return Err(e),
            Err(_) => continue,
        };
        let ns = candidate.metadata.namespace.clone().unwrap_or_default();
        match decision {
            Decision::Bind(node) => {
                // Claims waiting for their first consumer learn the node first (rare).
                match volumes.select(cluster, &ns, &node) {
                    Ok(()) => {}
                    Err(e) if i == 0 => return Err(e),
                    Err(_) => continue,
                }
                // The next pods of the batch see this one where it is going.
                if let Some(p) = if i == 0 {
                    first_listed
                } else {
                    Some(candidate)
                } {
                    snap.bind(p, &node);
                }
                placed.push((candidate, node));
            }
            // Other pods of the batch that fit nowhere get their own reconcile, which
            // reports it.
            Decision::Unschedulable(message) if i == 0 => {
                outcome = report_unschedulable(cluster, candidate, &message)?;
            }
            Decision::Preempt {
                message,
                node,
                victims,
            } if i == 0 => {
                outcome = preempt_for(cluster, candidate, &message, &node, &victims)?;
                // The victims are leaving and the pod holds their room: the rest of the
                // pending pods are placed by their own reconciles, which see that.
                break;
            }
            Decision::Unschedulable(_) | Decision::Preempt { .. } => {}
        }
    }
    bind_all(cluster, &first, &placed)?;
    Ok(outcome)
}

/// Binds the pods of a batch and records their Scheduled events, each set in one call. A
/// pod bound or deleted meanwhile is left alone; another error fails the reconcile when it
/// is the pod the reconcile was for (`first`), so that pod is retried.
fn bind_all(cluster: &dyn Cluster, first: &str, placed: &[(&Pod, String)]) -> Result<()> {
    if placed.is_empty() {
        return Ok(());
    }
    // Each binding names the pod's uid: a pod deleted and created again under its name
    // since it was placed is refused, not bound where its predecessor was going.
    let bindings: Vec<PodBinding> = placed
        .iter()
        .map(|(pod, node)| PodBinding {
            namespace: pod.metadata.namespace.clone().unwrap_or_default(),
            name: pod.metadata.name.clone().unwrap_or_default(),
            node: node.clone(),
            uid: pod.metadata.uid.clone(),
        })
        .collect();
    let results = cluster.bind_pods(&bindings);
    let mut events = Vec::with_capacity(placed.len());
    let mut failed = None;
    for (((pod, _), b), result) in placed.iter().zip(&bindings).zip(results) {
        let pod: &Pod = pod;
        let (ns, name, node) = (&b.namespace, &b.name, &b.node);
        match result.ignore_stale() {
            Ok(Some(())) => events.push((
                pod,
                "Normal",
                "Scheduled",
                format!("Successfully assigned {ns}/{name} to {node}"),
            )),
            // Bound meanwhile (another scheduler run, or a stale read): nothing to do.
            Ok(None) => {}
            Err(e) if pod.metadata.uid.as_deref() == Some(first) => failed = Some(e),
            Err(e) => cluster.log(
                LogLevel::Warn,
                &format!("binding {ns}/{name} to {node}: {e}"),
            ),
        }
    }
    cluster.log(
        LogLevel::Debug,
        &format!("bound {} of {} pods", events.len(), placed.len()),
    );
    let _ = cluster.record_events(&events, "default-scheduler");
    match failed {
        Some(e) => Err(e.into()),
        None => Ok(()),
    }
}

/// What the pods already placed hold, per node: built once per batch from one list of the
/// nodes and pods (kube-scheduler's NodeInfo cache), each binding of the batch added to it,
/// so placing a pod no longer walks every pod.
struct Snapshot<'a> {
    nodes: &'a [Node],
    index: HashMap<&'a str, usize>,
    /// Each node's allocatable CPU and memory and its pod limit, parsed once.
    capacity: Vec<(Capacity, u64)>,
    /// Requests of the active pods bound to each node.
    usage: Vec<Usage>,
    /// The active pods bound to each node, with their requests.
    pods: Vec<Vec<(&'a Pod, Requests)>>,
    /// Active pods bound to a node that have pod (anti-)affinity terms, with their node:
    /// their required anti-affinity and preferences reach every incoming pod.
    with_affinity: Vec<(&'a Pod, &'a Node)>,
    /// Where the next pod's search for feasible nodes starts.
    next_start: std::cell::Cell<usize>,
    /// Unbound active pods nominated to a node by a preemption, with their requests.
    nominated: Vec<(&'a Pod, &'a str, Requests)>,
    /// The pods holding ports on each node name.
    holding_ports: nodeports::Holding<'a>,
}

impl<'a> Snapshot<'a> {
    /// `start`: where the first pod's search for feasible nodes starts (a fresh instance
    /// remembers nothing, so each reconcile picks one from its pod).
    fn new(nodes: &'a [Node], all_pods: &'a [Pod], start: usize) -> Self {
        let index: HashMap<&str, usize> = nodes
            .iter()
            .enumerate()
            .map(|(i, n)| (n.metadata.name.as_deref().unwrap_or(""), i))
            .collect();
        let mut snap = Snapshot {
            nodes,
            capacity: nodes.iter().map(capacity).collect(),
            usage: vec![Usage::default(); nodes.len()],
            pods: vec![Vec::new(); nodes.len()],
            index,
            with_affinity: Vec::new(),
            next_start: std::cell::Cell::new(start % nodes.len().max(1)),
            nominated: Vec::new(),
            holding_ports: HashMap::new(),
        };
        for pod in all_pods {
            let Some(spec) = pod.spec.as_ref() else {
                continue;
            };
            let node = spec.node_name.as_deref().unwrap_or("");
            if node.is_empty() {
                if is_active(pod)
                    && let Some(at) = pod
                        .status
                        .as_ref()
                        .and_then(|s| s.nominated_node_name.as_deref())
                        .filter(|n| !n.is_empty())
                {
                    snap.nominated
                        .push((pod, at, pod_requests(spec).unwrap_or_default()));
                }
                continue;
            }
            snap.place(pod, node);
        }
        snap
    }

    /// Counts `pod` on `node` (its own `spec.nodeName` is not read).
    fn place(&mut self, pod: &'a Pod, node: &'a str) {
        let Some(spec) = pod.spec.as_ref() else {
            return;
        };
        if nodeports::holds_ports(pod) {
            self.holding_ports.entry(node).or_default().push(pod);
        }
        if !is_active(pod) {
            return;
        }
        // A bound pod with a bad quantity was admitted anyway; count it as one pod, no
        // resources.
        let requests = pod_requests(spec).unwrap_or_default();
        let Some(&i) = self.index.get(node) else {
            return;
        };
        let u = &mut self.usage[i];
        u.requests = u.requests.saturating_add(requests);
        u.non_zero = u.non_zero.saturating_add(score::non_zero(requests));
        u.pods += 1;
        self.pods[i].push((pod, requests));
        if interpod::has_pod_affinity(pod) {
            self.with_affinity.push((pod, &self.nodes[i]));
        }
    }

    /// A pod of the batch was bound to `node`.
    fn bind(&mut self, pod: &'a Pod, node: &str) {
        self.nominated
            .retain(|(p, _, _)| p.metadata.uid != pod.metadata.uid);
        if let Some(&i) = self.index.get(node) {
            let name = self.nodes[i].metadata.name.as_deref().unwrap_or("");
            self.place(pod, name);
        }
    }

    /// Pods on the known nodes, by node name (what spreading counts).
    fn pods_by_node(&self) -> BTreeMap<&'a str, Vec<&'a Pod>> {
        self.nodes
            .iter()
            .zip(&self.pods)
            .filter(|(_, pods)| !pods.is_empty())
            .map(|(n, pods)| {
                (
                    n.metadata.name.as_deref().unwrap_or(""),
                    pods.iter().map(|(p, _)| *p).collect(),
                )
            })
            .collect()
    }
}

/// Below this many nodes every node is filtered and scored (kube-scheduler's
/// `minFeasibleNodesToFind`).
const MIN_FEASIBLE_NODES: usize = 100;
/// The least share of the nodes searched for feasible ones, in percent
/// (`minFeasibleNodesPercentageToFind`).
const MIN_FEASIBLE_PERCENT: usize = 5;

/// How many feasible nodes are enough to pick from: kube-scheduler's adaptive
/// `percentageOfNodesToScore` (its default): every node up to 100, then 50 % less one point
/// per 125 nodes, at least 5 % and at least 100 nodes (420 of 1,000; 500 of 10,000). A pod
/// that fits nowhere is still checked against every node, so its message counts them all.
fn feasible_nodes_to_find(all: usize) -> usize {
    if all < MIN_FEASIBLE_NODES {
        return all;
    }
    let percent = 50usize.saturating_sub(all / 125).max(MIN_FEASIBLE_PERCENT);
    (all * percent / 100).max(MIN_FEASIBLE_NODES)
}

/// Filters and scores the nodes for `pod` against the pods in the snapshot: every node,
/// or from where the last pod stopped until enough are feasible
/// ([`feasible_nodes_to_find`]).
fn decide(
    pod: &Pod,
    snap: &Snapshot,
    ns_labels: &NamespaceLabels,
    volumes: &Volumes,
) -> Result<Decision> {
    let spec = pod.spec.as_ref().expect("needs_scheduling checked spec");
    let want = pod_requests(spec).map_err(|e| format!("pod requests: {e}"))?;
    let nodes = snap.nodes;
    // Pods nominated to a node (by an earlier preemption, of at least this pod's priority)
    // take room there: their requests are added to the node's usage.
    let mut nominated: HashMap<&str, Usage> = HashMap::new();
    for (other, at, requests) in &snap.nominated {
        if other.metadata.uid != pod.metadata.uid
            && preempt::priority(other) >= preempt::priority(pod)
        {
            let u = nominated.entry(at).or_default();
            u.requests = u.requests.saturating_add(*requests);
            u.non_zero = u.non_zero.saturating_add(score::non_zero(*requests));
            u.pods += 1;
        }
    }
    let usage_of = |i: usize, name: &str| {
        let mut u = snap.usage[i];
        if let Some(n) = nominated.get(name) {
            u.requests = u.requests.saturating_add(n.requests);
            u.non_zero = u.non_zero.saturating_add(n.non_zero);
            u.pods += n.pods;
        }
        u
    };
    // Spreading counts pods per node, pod affinity looks at every placed pod: built only for
    // a pod that has such constraints (the affinity of pods already placed is in the snapshot).
    let has_spread = spec
        .topology_spread_constraints
        .as_ref()
        .is_some_and(|c| !c.is_empty());
    let pods_by_node = if has_spread {
        snap.pods_by_node()
    } else {
        BTreeMap::new()
    };
    let placed: Vec<(&Pod, &Node)> = if interpod::has_pod_affinity(pod) {
        nodes
            .iter()
            .zip(&snap.pods)
            .flat_map(|(n, pods)| pods.iter().map(move |(p, _)| (*p, n)))
            .collect()
    } else {
        snap.with_affinity.clone()
    };

    let interpod = InterPod::new(pod, &placed, ns_labels);
    let ports = NodePorts::new(pod, &snap.holding_ports);
    let spread = Spread::new(pod, nodes, &pods_by_node);
    let mut reasons: BTreeMap<Reason, usize> = BTreeMap::new();
    let mut feasible = Vec::new();
    let mut preemptible: Vec<usize> = Vec::new();
    // As kube-scheduler: stop filtering once enough feasible nodes are found, and start
    // where the previous pod stopped, so every node gets its turn.
    let enough = feasible_nodes_to_find(nodes.len());
    let start = snap.next_start.get();
    let mut processed = 0;
    for k in 0..nodes.len() {
        if feasible.len() >= enough {
            break;
        }
        processed += 1;
        let i = (start + k) % nodes.len();
        let node = &nodes[i];
        let name = node.metadata.name.as_deref().unwrap_or("");
        let u = usage_of(i, name);
        let evaluated = if volumes.fits(node) {
            evaluate(
                node,
                snap.capacity[i],
                pod,
                want,
                u,
                &ports,
                &spread,
                &interpod,
            )
        } else {
            Err(vec![Reason::VolumeNodeAffinity])
        };
        match evaluated {
            Ok(cap) => feasible.push(Feasible {
                node,
                usage: u,
                cap,
            }),
            Err(rs) => {
                if preempt::resources_only(&rs) {
                    preemptible.push(i);
                }
                rs.into_iter()
                    .for_each(|r| *reasons.entry(r).or_default() += 1);
            }
        }
    }
    snap.next_start
        .set((start + processed) % nodes.len().max(1));
    let world = World {
        pod,
        want,
        nodes,
        pods_by_node: &pods_by_node,
        spread: &spread,
        interpod: &interpod,
    };
    if let Some(best) = pick(&world, &feasible) {
        return Ok(Decision::Bind(best.to_string()));
    }
    let message = unschedulable_message(nodes.len(), &reasons);
    if !preempt::may_preempt(pod) || preemptible.is_empty() {
        return Ok(Decision::Unschedulable(message));
    }
    let candidates: Vec<preempt::NodePods> = preemptible
        .into_iter()
        .map(|i| {
            let node = &nodes[i];
            let name = node.metadata.name.as_deref().unwrap_or("");
            preempt::NodePods {
                node,
                pods: snap.pods[i].clone(),
                nominated: nominated.get(name).copied().unwrap_or_default(),
            }
        })
        .collect();
    let fits = |node: &Node, u: Usage| {
        let cap = snap
            .index
            .get(node.metadata.name.as_deref().unwrap_or(""))
            .map_or_else(|| capacity(node), |&i| snap.capacity[i]);
        evaluate(node, cap, pod, want, u, &ports, &spread, &interpod).is_ok()
    };
    Ok(match preempt::plan(pod, &candidates, &fits) {
        Some(plan) => Decision::Preempt {
            message,
            node: plan.node.to_string(),
            victims: plan.victims.into_iter().cloned().collect(),
        },
        None => Decision::Unschedulable(message),
    })
}

/// How soon a pod that preempted is tried again: its victims no longer count once their
/// deletion started.
const PREEMPTED_RETRY_MS: u64 = 500;

/// Preempts for `pod`: nominates `node` in its status (with the unschedulable condition),
/// then deletes each victim gracefully, its uid a precondition, telling it why.
fn preempt_for(
    cluster: &dyn Cluster,
    pod: &Pod,
    message: &str,
    node: &str,
    victims: &[Pod],
) -> Result<Outcome> {
    let mut nominated = pod.clone();
    nominated.status.get_or_insert_default().nominated_node_name = Some(node.to_string());
    report_unschedulable_as(cluster, pod, nominated, message)?;
    let uid = pod.metadata.uid.as_deref().unwrap_or_default();
    for v in victims {
        let (ns, name) = (
            v.metadata.namespace.as_deref().unwrap_or_default(),
            v.metadata.name.as_deref().unwrap_or_default(),
        );
        let opts = kedge_guest::DeleteOptions {
            propagation: None,
            uid: v.metadata.uid.clone(),
            resource_version: None,
        };
        // Gone or replaced meanwhile: nothing to preempt there.
        if cluster
            .delete_object_with("v1", "Pod", ns, name, &opts)
            .ignore_stale()?
            .is_none()
        {
            continue;
        }
        cluster.log(
            LogLevel::Info,
            &format!("preempted {ns}/{name} on {node} for {uid}"),
        );
        let _ = cluster.record_event(
            v,
            "Normal",
            "Preempted",
            &format!("Preempted by pod {uid} on node {node}"),
            "default-scheduler",
        );
    }
    Ok(Outcome::requeue_after_ms(PREEMPTED_RETRY_MS))
}

/// `PodScheduled=False` with kubectl's message and a FailedScheduling Event, once per
/// change; the pod is looked at again later (new nodes do not enqueue it).
fn report_unschedulable(cluster: &dyn Cluster, pod: &Pod, message: &str) -> Result<Outcome> {
    report_unschedulable_as(cluster, pod, pod.clone(), message)
}

/// [`report_unschedulable`] writing `updated` (the pod with other status changes).
fn report_unschedulable_as(
    cluster: &dyn Cluster,
    pod: &Pod,
    mut updated: Pod,
    message: &str,
) -> Result<Outcome> {
    let ns = pod.metadata.namespace.as_deref().unwrap_or_default();
    let name = pod.metadata.name.as_deref().unwrap_or_default();
    let nominated_changed = updated.status.as_ref().map(|s| &s.nominated_node_name)
        != pod.status.as_ref().map(|s| &s.nominated_node_name);
    let status = updated.status.get_or_insert_default();
    let changed = set_condition(
        status.conditions.get_or_insert_default(),
        PodCondition {
            type_: "PodScheduled".into(),
            status: "False".into(),
            reason: Some("Unschedulable".into()),
            message: Some(message.to_string()),
            last_transition_time: parse_time(&cluster.now()),
            ..Default::default()
        },
    );
    if changed || nominated_changed {
        // A conflict means the pod changed; its own event reconciles it again.
        cluster.update_status(ns, &updated).ignore_stale()?;
    }
    if changed {
        cluster.log(
            LogLevel::Info,
            &format!("{ns}/{name} unschedulable: {message}"),
        );
        let _ = cluster.record_event(
            pod,
            "Warning",
            "FailedScheduling",
            message,
            "default-scheduler",
        );
    }
    Ok(Outcome::requeue_after_ms(UNSCHEDULABLE_RETRY_MS))
}

#[cfg(test)]
mod tests;
