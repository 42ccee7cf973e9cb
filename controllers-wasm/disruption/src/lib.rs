//! The disruption controller as a kedge plugin: the status of every PodDisruptionBudget, which
//! the `pods/eviction` subresource spends (Kubernetes' disruption controller).
//!
//! For a budget, the pods of its namespace its selector picks (policy/v1: an empty selector
//! picks every pod, an absent one none):
//! - `expectedPods`: with an integer `minAvailable`, the number of those pods; with a
//!   percentage, or with `maxUnavailable`, the sum of the scale of their controllers
//!   (Deployment through its ReplicaSet, ReplicaSet, StatefulSet, ReplicationController), each
//!   counted once. Pods without a controller are left out (Warning `UnmanagedPods`); a pod
//!   whose controller cannot be found makes the computation fail.
//! - `desiredHealthy`: `minAvailable` (a percentage of `expectedPods`, rounded up), or
//!   `expectedPods - maxUnavailable` (rounded up likewise), never below 0.
//! - `currentHealthy`: those pods that are Ready, not being deleted and not in
//!   `disruptedPods`.
//! - `disruptionsAllowed`: `currentHealthy - desiredHealthy`, 0 when negative or when no
//!   pod is expected; `observedGeneration`; the `DisruptionAllowed` condition
//!   (`SufficientPods` / `InsufficientPods`).
//! - `disruptedPods`: the evictions the API approved, kept until the pod is being deleted or
//!   for two minutes (then the pod gets a Warning `NotDeleted` and counts again); the budget
//!   is looked at again when the next entry expires.
//!
//! A failed computation sets `disruptionsAllowed` to 0 with the condition `False`/`SyncFailed`
//! (fail closed: no eviction gets through a budget the controller cannot evaluate).
//!
//! Pods are not owned by budgets: their events reach the budgets whose selector picks them
//! (before or after the change).

use std::collections::BTreeMap;

use k8s_openapi::api::apps::v1::{Deployment, ReplicaSet, StatefulSet};
use k8s_openapi::api::core::v1::{Event, Pod, ReplicationController};
use k8s_openapi::api::policy::v1::{PodDisruptionBudget, PodDisruptionBudgetStatus};
use k8s_openapi::apimachinery::pkg::apis::meta::v1::{Condition, OwnerReference, Time};
use k8s_openapi::apimachinery::pkg::util::intstr::IntOrString;
use kedge_guest::meta::{controller_of, parse_time};
use kedge_guest::pod::is_ready;
use kedge_guest::selector::Selector;
use kedge_guest::{
    Cluster, ClusterExt, Controller, Error, KindRef, ObjectKey, Outcome, Registration, Result,
    Watch,
};

/// How long an approved eviction keeps its pod out of `currentHealthy` before the controller
/// assumes the deletion is not coming (Kubernetes' `DeletionTimeout`).
pub const DELETION_TIMEOUT_MS: i64 = 2 * 60 * 1000;

/// The condition the controller keeps on every budget.
pub const DISRUPTION_ALLOWED: &str = "DisruptionAllowed";

const COMPONENT: &str = "controllermanager";

pub struct DisruptionController;

impl Controller for DisruptionController {
    fn registration() -> Registration {
        Registration::new("disruption", KindRef::of::<PodDisruptionBudget>())
            .reads([
                KindRef::of::<Pod>(),
                KindRef::of::<ReplicaSet>(),
                KindRef::of::<Deployment>(),
                KindRef::of::<StatefulSet>(),
                KindRef::of::<ReplicationController>(),
            ])
            .writes([KindRef::of::<PodDisruptionBudget>(), KindRef::of::<Event>()])
    }

    fn reconcile(cluster: &dyn Cluster, key: &ObjectKey) -> Result<Outcome> {
        reconcile(cluster, key)
    }

    fn watches() -> Vec<Watch> {
        vec![Watch::label_selector::<Pod>("spec.selector")]
    }
}

kedge_guest::export_controller!(DisruptionController);

/// The pods of `pdb`'s namespace its selector picks (policy/v1 semantics).
fn pods_of(cluster: &dyn Cluster, pdb: &PodDisruptionBudget) -> Result<Vec<Pod>> {
    let ns = pdb.metadata.namespace.as_deref().unwrap_or_default();
    let Some(sel) = pdb.spec.as_ref().and_then(|s| s.selector.as_ref()) else {
        return Ok(Vec::new());
    };
    let sel = Selector::from_label_selector(sel).map_err(|e| Error::msg(e.to_string()))?;
    Ok(cluster
        .list::<Pod>(ns, "")?
        .into_iter()
        .filter(|p| sel.matches_opt(p.metadata.labels.as_ref()))
        .collect())
}

/// `GetScaledValueFromIntOrPercent` rounding up: an integer as is, a percentage of `total`.
pub fn scaled(v: &IntOrString, total: i32) -> std::result::Result<i32, String> {
    match v {
        IntOrString::Int(n) => Ok(*n),
        IntOrString::String(s) => {
            let p: i64 = s
                .strip_suffix('%')
                .and_then(|p| p.parse().ok())
                .ok_or_else(|| format!("invalid value for IntOrString: invalid value {s:?}"))?;
            let n = (p * i64::from(total) + 99).div_euclid(100);
            Ok(i32::try_from(n).unwrap_or(i32::MAX))
        }
    }
}

fn same_uid(meta_uid: Option<&String>, r: &OwnerReference) -> bool {
    meta_uid.is_some_and(|u| *u == r.uid)
}

fn group_of(api_version: &str) -> &str {
    api_version.split_once('/').map_or("", |(g, _)| g)
}

/// The controller of a pod and its desired scale: `(uid, replicas)`; `None` when the
/// reference names nothing that exists (with the right uid).
fn controller_scale(
    cluster: &dyn Cluster,
    ns: &str,
    r: &OwnerReference,
) -> Result<Option<(String, i32)>> {
    let group = group_of(&r.api_version);
    match (group, r.kind.as_str()) {
        ("", "ReplicationController") => Ok(cluster
            .get::<ReplicationController>(ns, &r.name)?
            .filter(|rc| same_uid(rc.metadata.uid.as_ref(), r))
            .map(|rc| {
                let n = rc.spec.and_then(|s| s.replicas).unwrap_or(1);
                (r.uid.clone(), n)
            })),
        ("apps" | "extensions", "ReplicaSet") => {
            let Some(rs) = cluster
                .get::<ReplicaSet>(ns, &r.name)?
                .filter(|rs| same_uid(rs.metadata.uid.as_ref(), r))
            else {
                return Ok(None);
            };
            // A Deployment's ReplicaSet counts as its Deployment.
            if let Some(d) = controller_of(&rs.metadata).filter(|d| {
                d.kind == "Deployment" && matches!(group_of(&d.api_version), "apps" | "extensions")
            }) && let Some(dep) = cluster
                .get::<Deployment>(ns, &d.name)?
                .filter(|dep| same_uid(dep.metadata.uid.as_ref(), d))
            {
                let n = dep.spec.and_then(|s| s.replicas).unwrap_or(1);
                return Ok(Some((d.uid.clone(), n)));
            }
            let n = rs.spec.and_then(|s| s.replicas).unwrap_or(1);
            Ok(Some((r.uid.clone(), n)))
        }
        ("apps", "StatefulSet") => Ok(cluster
            .get::<StatefulSet>(ns, &r.name)?
            .filter(|s| same_uid(s.metadata.uid.as_ref(), r))
            .map(|s| {
                let n = s.spec.and_then(|s| s.replicas).unwrap_or(1);
                (r.uid.clone(), n)
            })),
        _ => Ok(None),
    }
}

/// `getExpectedScale`: the sum of the scales of the pods' controllers, and the names of the
/// pods without one.
fn expected_scale(cluster: &dyn Cluster, ns: &str, pods: &[Pod]) -> Result<(i32, Vec<String>)> {
    let mut scales: BTreeMap<String, i32> = BTreeMap::new();
    let mut unmanaged = Vec::new();
    for pod in pods {
        let name = pod.metadata.name.clone().unwrap_or_default();
        let Some(r) = controller_of(&pod.metadata) else {
            unmanaged.push(name);
            continue;
        };
        if scales.contains_key(&r.uid) {
            continue;
        }
        match controller_scale(cluster, ns, r)? {
            Some((uid, n)) => {
                scales.insert(uid, n);
            }
            None => return Err(Error::msg(format!("found no controllers for pod {name:?}"))),
        }
    }
    Ok((scales.values().sum(), unmanaged))
}

/// `getExpectedPodCount`: `(expectedPods, desiredHealthy, unmanaged pods)`.
fn expected_and_desired(
    cluster: &dyn Cluster,
    pdb: &PodDisruptionBudget,
    pods: &[Pod],
) -> Result<(i32, i32, Vec<String>)> {
    let ns = pdb.metadata.namespace.as_deref().unwrap_or_default();
    let spec = pdb.spec.clone().unwrap_or_default();
    if let Some(max) = &spec.max_unavailable {
        let (expected, unmanaged) = expected_scale(cluster, ns, pods)?;
        let max = scaled(max, expected).map_err(Error::msg)?;
        return Ok((expected, (expected - max).max(0), unmanaged));
    }
    match &spec.min_available {
        Some(IntOrString::Int(n)) => Ok((count(pods.len()), *n, Vec::new())),
        Some(min) => {
            let (expected, unmanaged) = expected_scale(cluster, ns, pods)?;
            let desired = scaled(min, expected).map_err(Error::msg)?;
            Ok((expected, desired, unmanaged))
        }
        None => Ok((0, 0, Vec::new())),
    }
}

fn count(n: usize) -> i32 {
    i32::try_from(n).unwrap_or(i32::MAX)
}

fn ms(t: &Time) -> i64 {
    t.0.as_millisecond()
}

/// `buildDisruptedPodMap`: the approved evictions still pending (their pods exist, are not
/// being deleted yet, and were approved less than [`DELETION_TIMEOUT_MS`] ago), the pods
/// whose eviction never came, and when the next entry expires.
fn pending_evictions(
    pdb: &PodDisruptionBudget,
    pods: &[Pod],
    now_ms: i64,
) -> (BTreeMap<String, Time>, Vec<String>, Option<i64>) {
    let recorded = pdb
        .status
        .as_ref()
        .and_then(|s| s.disrupted_pods.clone())
        .unwrap_or_default();
    let mut kept = BTreeMap::new();
    let mut overdue = Vec::new();
    let mut recheck: Option<i64> = None;
    for pod in pods {
        if pod.metadata.deletion_timestamp.is_some() {
            continue;
        }
        let name = pod.metadata.name.clone().unwrap_or_default();
        let Some(at) = recorded.get(&name) else {
            continue;
        };
        let expires = ms(at) + DELETION_TIMEOUT_MS;
        if expires < now_ms {
            overdue.push(name);
        } else {
            recheck = Some(recheck.map_or(expires, |r| r.min(expires)));
            kept.insert(name, at.clone());
        }
    }
    (kept, overdue, recheck)
}

/// `countHealthyPods`: Ready, not being deleted, not about to be.
fn healthy(pods: &[Pod], disrupted: &BTreeMap<String, Time>) -> i32 {
    count(
        pods.iter()
            .filter(|p| p.metadata.deletion_timestamp.is_none())
            .filter(|p| {
                !p.metadata
                    .name
                    .as_ref()
                    .is_some_and(|n| disrupted.contains_key(n))
            })
            .filter(|p| is_ready(p))
            .count(),
    )
}

/// `meta.SetStatusCondition`: replaces the condition of the same type, moving
/// `lastTransitionTime` only when the status changes.
fn set_condition(conditions: &mut Vec<Condition>, new: Condition) {
    match conditions.iter_mut().find(|c| c.type_ == new.type_) {
        Some(old) => {
            if old.status != new.status {
                old.status = new.status;
                old.last_transition_time = new.last_transition_time;
            }
            old.reason = new.reason;
            old.message = new.message;
            old.observed_generation = new.observed_generation;
        }
        None => conditions.push(new),
    }
}

/// The `DisruptionAllowed` condition for `status` (`UpdateDisruptionAllowedCondition`).
fn disruption_allowed(status: &mut PodDisruptionBudgetStatus, now: &Time) {
    let (state, reason) = if status.disruptions_allowed > 0 {
        ("True", "SufficientPods")
    } else {
        ("False", "InsufficientPods")
    };
    let cond = Condition {
        type_: DISRUPTION_ALLOWED.into(),
        status: state.into(),
        reason: reason.into(),
        message: String::new(),
        observed_generation: status.observed_generation,
        last_transition_time: now.clone(),
    };
    set_condition(status.conditions.get_or_insert_default(), cond);
}

/// A budget's status and what came up computing it.
struct Computed {
    status: PodDisruptionBudgetStatus,
    /// Pods without a controller, left out of a scale-based `expectedPods`.
    unmanaged: Vec<String>,
    /// Pods whose approved eviction never came.
    overdue: Vec<String>,
    /// When (epoch ms) the next pending eviction expires.
    recheck_ms: Option<i64>,
}

/// The status of a budget whose pods are `pods` (pure but for the controller lookups).
fn compute(
    cluster: &dyn Cluster,
    pdb: &PodDisruptionBudget,
    pods: &[Pod],
    now: &Time,
) -> Result<Computed> {
    let (expected, desired, unmanaged) = expected_and_desired(cluster, pdb, pods)?;
    let (disrupted, overdue, recheck_ms) = pending_evictions(pdb, pods, ms(now));
    let current = healthy(pods, &disrupted);
    let allowed = if expected <= 0 {
        0
    } else {
        (current - desired).max(0)
    };
    let mut status = PodDisruptionBudgetStatus {
        current_healthy: current,
        desired_healthy: desired,
        expected_pods: expected,
        disruptions_allowed: allowed,
        disrupted_pods: (!disrupted.is_empty()).then_some(disrupted),
        observed_generation: pdb.metadata.generation,
        conditions: pdb.status.as_ref().and_then(|s| s.conditions.clone()),
    };
    disruption_allowed(&mut status, now);
    Ok(Computed {
        status,
        unmanaged,
        overdue,
        recheck_ms,
    })
}

fn reconcile(cluster: &dyn Cluster, key: &ObjectKey) -> Result<Outcome> {
    let ns = key.namespace.as_str();
    let Some(pdb) = cluster.get::<PodDisruptionBudget>(ns, &key.name)? else {
        return Ok(Outcome::done());
    };
    let now_text = cluster.now();
    let now = parse_time(&now_text).ok_or_else(|| Error::msg(format!("bad time {now_text}")))?;
    let computed = pods_of(cluster, &pdb).and_then(|pods| {
        let out = compute(cluster, &pdb, &pods, &now)?;
        Ok((pods, out))
    });
    let (
        pods,
        Computed {
            status,
            unmanaged,
            overdue,
            recheck_ms,
        },
    ) = match computed {
        Ok(c) => c,
        Err(e) => {
            fail_safe(cluster, &pdb, &e.to_string(), &now)?;
            return Err(e);
        }
    };
    let changed = pdb.status.as_ref() != Some(&status);
    if changed {
        if !unmanaged.is_empty() {
            let _ = cluster.record_event(
                &pdb,
                "Warning",
                "UnmanagedPods",
                &format!(
                    "Pods selected by this PodDisruptionBudget were found to be unmanaged ({}). \
                     As a result, the status of the PDB cannot be calculated correctly, which may \
                     result in undefined behavior. To account for these pods please set \
                     \".spec.minAvailable\" field of the PDB to an integer value.",
                    unmanaged.join(", ")
                ),
                COMPONENT,
            );
        }
        for name in &overdue {
            if let Some(pod) = pods.iter().find(|p| p.metadata.name.as_ref() == Some(name)) {
                let _ = cluster.record_event(
                    pod,
                    "Warning",
                    "NotDeleted",
                    &format!(
                        "Pod was expected by PDB {ns}/{} to be deleted but it wasn't",
                        key.name
                    ),
                    COMPONENT,
                );
            }
        }
        cluster.update_status_if_changed(ns, &pdb, status)?;
    }
    Ok(match recheck_ms {
        Some(at) => Outcome::requeue_after_ms(u64::try_from(at - ms(&now)).unwrap_or(0).max(1000)),
        None => Outcome::done(),
    })
}

/// `failSafe`: no disruption allowed while the budget cannot be evaluated.
fn fail_safe(
    cluster: &dyn Cluster,
    pdb: &PodDisruptionBudget,
    why: &str,
    now: &Time,
) -> Result<()> {
    let ns = pdb.metadata.namespace.as_deref().unwrap_or_default();
    let mut status = pdb.status.clone().unwrap_or_default();
    status.disruptions_allowed = 0;
    let cond = Condition {
        type_: DISRUPTION_ALLOWED.into(),
        status: "False".into(),
        reason: "SyncFailed".into(),
        message: why.into(),
        observed_generation: status.observed_generation,
        last_transition_time: now.clone(),
    };
    set_condition(status.conditions.get_or_insert_default(), cond);
    if pdb.status.as_ref() != Some(&status) {
        let _ = cluster.record_event(
            pdb,
            "Warning",
            "CalculateExpectedPodCountFailed",
            &format!("Failed to calculate the number of expected pods: {why}"),
            COMPONENT,
        );
        cluster.update_status_if_changed(ns, pdb, status)?;
    }
    Ok(())
}

#[cfg(test)]
mod tests;
