//! The node lifecycle controller as a kedge plugin: what happens when an edge node goes quiet.
//!
//! - A node's heartbeat is its Lease in `kube-node-lease` (renewed every 10 s by the agent)
//!   or its Ready condition's `lastHeartbeatTime`, whichever is newer.
//! - No heartbeat for the grace period (default 40 s, Kubernetes' node-monitor-grace-period):
//!   every node condition becomes `Unknown` ("Kubelet stopped posting node status."), and the
//!   node gets the taints `node.kubernetes.io/unreachable` with effects `NoSchedule` (no new
//!   pods) and `NoExecute` (its pods are evicted).
//! - Eviction: a pod on an unreachable node is deleted once the `NoExecute` taint is older
//!   than the pod tolerates — `tolerationSeconds` of a matching toleration, forever for a
//!   matching toleration without seconds, else the default (300 s, what Kubernetes'
//!   DefaultTolerationSeconds admission gives every pod). Its controller replaces it
//!   elsewhere; the deletion completes when the node comes back or is deleted.
//! - Its pods are marked not Ready (their `Ready` condition `False`, a `NodeNotReady` Warning
//!   Event), as Kubernetes' MarkPodsNotReady does, so Services stop routing to them; they keep
//!   running on the node.
//! - The heartbeat returns: the taints are removed (the agent re-posts Ready itself, and
//!   writes its pods' conditions back over what this controller set).
//!
//! Edge autonomy: an edge site cut off for hours should keep its workloads where they run
//! rather than have them deleted and recreated elsewhere (they keep running on the node
//! anyway; the agent restarts them from its own copy). The Node annotation
//! `node.kedge.io/autonomy-duration` holds how long: a Go-style duration (`90s`, `10m`,
//! `2h30m`, `24h`), or `0` for as long as the node stays away. While it runs, counted from
//! the `NoExecute` taint's `timeAdded`, no pod of the node is evicted whatever its
//! tolerations say; afterwards eviction is the usual one (a pod that tolerates the taint
//! longer stays longer; without the annotation, or with a duration shorter than a pod's
//! toleration, nothing changes). Pods not deleted are not replaced by their controllers.
//! The node still shows `Unknown`/NotReady and carries the taints, so nothing new is
//! scheduled there and `kubectl get nodes` tells the truth. A value that is not a
//! duration gets a Warning Event `InvalidAutonomyDuration` on the Node, and the node is
//! treated as if it had no annotation. Removing the annotation while the node is away
//! restores the usual eviction at once.
//!
//! Settings live in the ConfigMap `kube-system/kedge-node-lifecycle` (plugins have no
//! configuration of their own; a ConfigMap is readable, watchable and editable with
//! kubectl): `gracePeriodSeconds` and `evictionSeconds` shorten the timeouts (tests,
//! fast-failover sites), `autonomyDuration` (same syntax as the annotation) is the
//! autonomy of every node without the annotation.

use k8s_openapi::api::coordination::v1::Lease;
use k8s_openapi::api::core::v1::{ConfigMap, Event, Node, NodeCondition, Pod, Taint, Toleration};
use k8s_openapi::apimachinery::pkg::apis::meta::v1::Time;
use k8s_openapi::jiff::SignedDuration;
use kedge_guest::meta::{find_condition, parse_time};
use kedge_guest::pod::tolerates;
use kedge_guest::{
    ApiResultExt, Cluster, ClusterExt, Controller, KindRef, LogLevel, ObjectKey, Outcome,
    Registration, Result,
};

pub const UNREACHABLE_TAINT: &str = "node.kubernetes.io/unreachable";

/// The taint a cordoned node carries (`spec.unschedulable`), as Kubernetes' node lifecycle
/// controller sets it.
pub const UNSCHEDULABLE_TAINT: &str = "node.kubernetes.io/unschedulable";
/// Kubernetes' node-monitor-grace-period.
pub const DEFAULT_GRACE_SECONDS: i64 = 40;
/// Kubernetes' default tolerationSeconds for unreachable nodes.
pub const DEFAULT_EVICTION_SECONDS: i64 = 300;
pub const CONFIG_NAMESPACE: &str = "kube-system";
pub const CONFIG_NAME: &str = "kedge-node-lifecycle";
/// The Node annotation that keeps an unreachable node's pods bound (see the module doc).
pub const AUTONOMY_ANNOTATION: &str = "node.kedge.io/autonomy-duration";
/// The ConfigMap key of the server-wide autonomy of nodes without the annotation.
pub const AUTONOMY_CONFIG_KEY: &str = "autonomyDuration";
/// The Event reason for an autonomy value that does not parse.
pub const INVALID_AUTONOMY: &str = "InvalidAutonomyDuration";
const COMPONENT: &str = "node-controller";

pub struct NodeLifecycle;

impl Controller for NodeLifecycle {
    fn registration() -> Registration {
        Registration::new("nodelifecycle", KindRef::of::<Node>())
            .reads([KindRef::of::<Lease>(), KindRef::of::<ConfigMap>()])
            .writes([
                KindRef::of::<Node>(),
                KindRef::of::<Pod>(),
                KindRef::of::<Event>(),
            ])
    }

    fn reconcile(cluster: &dyn Cluster, key: &ObjectKey) -> Result<Outcome> {
        reconcile(cluster, key)
    }
}

kedge_guest::export_controller!(NodeLifecycle);

/// The timeouts in force.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Timeouts {
    pub grace_ms: i64,
    pub eviction_ms: i64,
    /// For nodes without the annotation; `None`: no autonomy.
    pub autonomy: Option<Autonomy>,
}

/// How long an unreachable node keeps its pods whatever their tolerations.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Autonomy {
    /// This many milliseconds after the node was tainted unreachable.
    For(i64),
    /// As long as the node is away (the value `0`).
    Forever,
}

/// Reads an autonomy value: a Go-style duration, or `0` (any zero duration) for
/// [`Autonomy::Forever`]. The error says what is accepted, for the Event.
///
/// Durations are read by jiff's parser, which also takes a few spellings Go does not
/// (`1 hour`, ISO 8601 `PT1H`); every Go spelling of hours and smaller units reads the same.
pub fn parse_autonomy(value: &str) -> Result<Autonomy, String> {
    let value = value.trim();
    let invalid =
        || format!("{value:?} is not a duration such as 90s, 10m or 2h30m, nor 0 (never evict)");
    if value == "0" {
        return Ok(Autonomy::Forever);
    }
    let d: SignedDuration = value.parse().map_err(|_| invalid())?;
    if d.is_negative() {
        return Err(invalid());
    }
    if d.is_zero() {
        return Ok(Autonomy::Forever);
    }
    Ok(Autonomy::For(
        i64::try_from(d.as_millis()).unwrap_or(i64::MAX),
    ))
}

fn timeouts(cluster: &dyn Cluster) -> Result<Timeouts> {
    let cm = cluster.get::<ConfigMap>(CONFIG_NAMESPACE, CONFIG_NAME)?;
    let data = cm.as_ref().and_then(|c| c.data.clone()).unwrap_or_default();
    let seconds = |key: &str, default: i64| {
        data.get(key)
            .and_then(|v| v.trim().parse::<i64>().ok())
            .filter(|s| *s >= 0)
            .unwrap_or(default)
    };
    let autonomy = match (data.get(AUTONOMY_CONFIG_KEY), cm.as_ref()) {
        (Some(v), Some(cm)) => match parse_autonomy(v) {
            Ok(a) => Some(a),
            Err(why) => {
                warn_once(
                    cluster,
                    cm,
                    INVALID_AUTONOMY,
                    &format!("{AUTONOMY_CONFIG_KEY}: {why}; nodes get no autonomy by default"),
                )?;
                None
            }
        },
        _ => None,
    };
    Ok(Timeouts {
        grace_ms: seconds("gracePeriodSeconds", DEFAULT_GRACE_SECONDS) * 1000,
        eviction_ms: seconds("evictionSeconds", DEFAULT_EVICTION_SECONDS) * 1000,
        autonomy,
    })
}

/// The node's own autonomy, else the server-wide default; a malformed annotation is
/// reported and ignored.
fn node_autonomy(
    cluster: &dyn Cluster,
    node: &Node,
    default: Option<Autonomy>,
) -> Result<Option<Autonomy>> {
    let Some(value) = node
        .metadata
        .annotations
        .as_ref()
        .and_then(|a| a.get(AUTONOMY_ANNOTATION))
    else {
        return Ok(default);
    };
    match parse_autonomy(value) {
        Ok(a) => Ok(Some(a)),
        Err(why) => {
            warn_once(
                cluster,
                node,
                INVALID_AUTONOMY,
                &format!("annotation {AUTONOMY_ANNOTATION}: {why}; ignored"),
            )?;
            Ok(default)
        }
    }
}

/// A Warning Event about `obj`, unless one with the same reason and message is there
/// already: reconciles repeat every few seconds, Events should not.
fn warn_once<K>(cluster: &dyn Cluster, obj: &K, reason: &str, message: &str) -> Result<()>
where
    K: k8s_openapi::Resource
        + k8s_openapi::Metadata<Ty = k8s_openapi::apimachinery::pkg::apis::meta::v1::ObjectMeta>,
{
    let meta = obj.metadata();
    let ns = meta.namespace.as_deref().unwrap_or("default");
    let seen = cluster.list::<Event>(ns, "")?.iter().any(|e| {
        e.involved_object.kind.as_deref() == Some(K::KIND)
            && e.involved_object.name == meta.name
            && e.reason.as_deref() == Some(reason)
            && e.message.as_deref() == Some(message)
    });
    if !seen {
        cluster.log(LogLevel::Warn, message);
        let _ = cluster.record_event(obj, "Warning", reason, message, COMPONENT);
    }
    Ok(())
}

/// When (ms after the node was tainted unreachable) a pod goes: `None` = not while the
/// node is away. Autonomy only ever postpones an eviction.
pub fn eviction_delay_ms(tolerated_ms: Option<i64>, autonomy: Option<Autonomy>) -> Option<i64> {
    match autonomy {
        None => tolerated_ms,
        Some(Autonomy::Forever) => None,
        Some(Autonomy::For(kept)) => tolerated_ms.map(|t| t.max(kept)),
    }
}

fn ms(t: &Time) -> i64 {
    t.0.as_millisecond()
}

/// The newest sign of life: the Lease's renewTime or the Ready condition's heartbeat.
fn last_heartbeat_ms(node: &Node, lease: Option<&Lease>) -> Option<i64> {
    let from_lease = lease
        .and_then(|l| l.spec.as_ref())
        .and_then(|s| s.renew_time.as_ref())
        .map(|t| t.0.as_millisecond());
    let from_status = node
        .status
        .as_ref()
        .and_then(|s| s.conditions.as_deref())
        .and_then(|c| find_condition(c, "Ready"))
        .and_then(|c| c.last_heartbeat_time.as_ref())
        .map(ms);
    from_lease.max(from_status)
}

fn is_unreachable_taint(t: &Taint) -> bool {
    t.key == UNREACHABLE_TAINT
}

/// How long (ms) `pod` tolerates the unreachable NoExecute taint: `None` = forever.
pub fn tolerated_ms(pod: &Pod, default_ms: i64) -> Option<i64> {
    let tolerations: &[Toleration] = pod
        .spec
        .as_ref()
        .and_then(|s| s.tolerations.as_deref())
        .unwrap_or(&[]);
    let taint = Taint {
        key: UNREACHABLE_TAINT.into(),
        effect: "NoExecute".into(),
        ..Default::default()
    };
    let matching = tolerations.iter().find(|t| tolerates(t, &taint));
    match matching {
        Some(t) => t.toleration_seconds.map(|s| s.max(0) * 1000),
        None => Some(default_ms),
    }
}

fn reconcile(cluster: &dyn Cluster, key: &ObjectKey) -> Result<Outcome> {
    let Some(mut node) = cluster.get::<Node>("", &key.name)? else {
        return Ok(Outcome::done());
    };
    let timeouts = timeouts(cluster)?;
    let autonomy = node_autonomy(cluster, &node, timeouts.autonomy)?;
    let now_s = cluster.now();
    let now = parse_time(&now_s).ok_or("host clock is not RFC 3339")?;
    let now_ms = ms(&now);
    // A cordoned node carries the unschedulable taint, and only while cordoned.
    let cordoned = node
        .spec
        .as_ref()
        .and_then(|s| s.unschedulable)
        .unwrap_or(false);
    let mut current = node
        .spec
        .as_ref()
        .and_then(|s| s.taints.clone())
        .unwrap_or_default();
    if cordoned != current.iter().any(|t| t.key == UNSCHEDULABLE_TAINT) {
        if cordoned {
            current.push(Taint {
                key: UNSCHEDULABLE_TAINT.into(),
                effect: "NoSchedule".into(),
                time_added: Some(now.clone()),
                value: None,
            });
        } else {
            current.retain(|t| t.key != UNSCHEDULABLE_TAINT);
        }
        node.spec.get_or_insert_default().taints = Some(current);
        match cluster.update("", &node).ignore_stale()? {
            Some(updated) => node = updated,
            None => return Ok(Outcome::requeue_after_ms(1000)),
        }
    }
    let lease = cluster.get::<Lease>("kube-node-lease", &key.name)?;
    let Some(last) = last_heartbeat_ms(&node, lease.as_ref()) else {
        // Not heard from yet (registering): look again after a grace period.
        return Ok(Outcome::requeue_after_ms(timeouts.grace_ms.max(1000) as u64));
    };
    let silent_ms = now_ms - last;
    let name = key.name.clone();
    let taints = node
        .spec
        .as_ref()
        .and_then(|s| s.taints.clone())
        .unwrap_or_default();
    let tainted_at = taints
        .iter()
        .find(|t| is_unreachable_taint(t) && t.effect == "NoExecute")
        .and_then(|t| t.time_added.as_ref().map(ms));

    if silent_ms <= timeouts.grace_ms {
        // Alive. Lift the unreachable taints if they are there.
        if taints.iter().any(is_unreachable_taint) {
            let kept: Vec<Taint> = taints
                .into_iter()
                .filter(|t| !is_unreachable_taint(t))
                .collect();
            node.spec.get_or_insert_default().taints = Some(kept);
            if cluster.update("", &node).ignore_stale()?.is_none() {
                return Ok(Outcome::requeue_after_ms(1000));
            }
            cluster.log(LogLevel::Info, &format!("node {name} is reachable again"));
            let _ = cluster.record_event(
                &node,
                "Normal",
                "NodeReachable",
                &format!("Node {name} is reachable again"),
                COMPONENT,
            );
        }
        // Next check: when the grace period would run out without a new heartbeat.
        let wait = (timeouts.grace_ms - silent_ms).max(0) + 1000;
        return Ok(Outcome::requeue_after_ms(wait as u64));
    }

    // Silent past the grace period: conditions Unknown, taints on.
    let mut status = node.status.clone().unwrap_or_default();
    let mut conditions = status.conditions.clone().unwrap_or_default();
    let mut changed = false;
    for c in conditions.iter_mut() {
        if c.status != "Unknown" {
            *c = NodeCondition {
                type_: c.type_.clone(),
                status: "Unknown".into(),
                reason: Some("NodeStatusUnknown".into()),
                message: Some("Kubelet stopped posting node status.".into()),
                last_heartbeat_time: c.last_heartbeat_time.clone(),
                last_transition_time: Some(now.clone()),
            };
            changed = true;
        }
    }
    if changed {
        status.conditions = Some(conditions);
        node.status = Some(status);
        let Some(stored) = cluster.update_status("", &node).ignore_stale()? else {
            return Ok(Outcome::requeue_after_ms(1000));
        };
        node = stored;
        cluster.log(
            LogLevel::Info,
            &format!("node {name} silent for {} s: Unknown", silent_ms / 1000),
        );
        let _ = cluster.record_event(
            &node,
            "Normal",
            "NodeNotReady",
            &format!("Node {name} status is now: NodeNotReady"),
            COMPONENT,
        );
    }
    let tainted_at = match tainted_at {
        Some(t) => t,
        None => {
            let mut taints = node
                .spec
                .as_ref()
                .and_then(|s| s.taints.clone())
                .unwrap_or_default();
            taints.retain(|t| !is_unreachable_taint(t));
            for effect in ["NoSchedule", "NoExecute"] {
                taints.push(Taint {
                    key: UNREACHABLE_TAINT.into(),
                    effect: effect.into(),
                    time_added: Some(now.clone()),
                    value: None,
                });
            }
            node.spec.get_or_insert_default().taints = Some(taints);
            if cluster.update("", &node).ignore_stale()?.is_none() {
                return Ok(Outcome::requeue_after_ms(1000));
            }
            if let Some(a) = autonomy {
                let how_long = match a {
                    Autonomy::Forever => "until it is back".to_string(),
                    Autonomy::For(ms) => format!("for {:#}", SignedDuration::from_millis(ms)),
                };
                let _ = cluster.record_event(
                    &node,
                    "Normal",
                    "NodeAutonomy",
                    &format!("Node {name} is unreachable; its pods stay bound {how_long}"),
                    COMPONENT,
                );
            }
            now_ms
        }
    };

    // Evict the pods whose tolerance of the taint has run out.
    let mut next_ms: Option<i64> = None;
    for pod in cluster.list::<Pod>("", "")? {
        let on_node = pod.spec.as_ref().and_then(|s| s.node_name.as_deref()) == Some(&name);
        if !on_node || pod.metadata.deletion_timestamp.is_some() {
            continue;
        }
        mark_not_ready(cluster, &pod, &now, tainted_at)?;
        let tolerated = tolerated_ms(&pod, timeouts.eviction_ms);
        let Some(delay) = eviction_delay_ms(tolerated, autonomy) else {
            continue;
        };
        let due = tainted_at.saturating_add(delay);
        if due > now_ms {
            next_ms = Some(next_ms.map_or(due, |n: i64| n.min(due)));
            continue;
        }
        let ns = pod.metadata.namespace.clone().unwrap_or_default();
        let pod_name = pod.metadata.name.clone().unwrap_or_default();
        if cluster
            .delete::<Pod>(&ns, &pod_name)
            .ignore_not_found()?
            .is_some()
        {
            cluster.log(
                LogLevel::Info,
                &format!("evicted {ns}/{pod_name} from unreachable node {name}"),
            );
            let _ = cluster.record_event(
                &pod,
                "Normal",
                "TaintManagerEviction",
                &format!("Marking for deletion Pod {ns}/{pod_name}"),
                COMPONENT,
            );
        }
    }
    // Look again when the next pod is due, and in any case now and then (a heartbeat ends
    // all this; a new pod bound meanwhile needs its own deadline).
    let wait = next_ms.map_or(timeouts.grace_ms.max(5000), |n| n - now_ms + 500);
    Ok(Outcome::requeue_after_ms(wait.clamp(500, 60_000) as u64))
}

/// Kubernetes' MarkPodsNotReady: while its node is silent a pod is not Ready, so Services
/// stop sending it traffic from elsewhere; the pod keeps running, and its agent sets Ready
/// again when it is back (it writes its own conditions over what others changed). Only a
/// Ready that dates from before the node went silent (`tainted_at`) is taken back: one the
/// agent wrote since is news from the node, and taking it back again would make the pod
/// flap while the node's heartbeat is on its way. A lost race is no error: the next pass
/// looks again.
fn mark_not_ready(cluster: &dyn Cluster, pod: &Pod, now: &Time, tainted_at: i64) -> Result<()> {
    let mut pod = pod.clone();
    let Some(ready) = pod
        .status
        .as_mut()
        .and_then(|s| s.conditions.as_mut())
        .and_then(|c| c.iter_mut().find(|c| c.type_ == "Ready"))
    else {
        return Ok(());
    };
    let since = ready.last_transition_time.as_ref().map_or(i64::MIN, ms);
    if ready.status == "False" || since >= tainted_at {
        return Ok(());
    }
    ready.status = "False".into();
    ready.last_transition_time = Some(now.clone());
    let ns = pod.metadata.namespace.clone().unwrap_or_default();
    if let Some(stored) = cluster.update_status(&ns, &pod).ignore_stale()? {
        let _ = cluster.record_event(
            &stored,
            "Warning",
            "NodeNotReady",
            "Node is not ready",
            COMPONENT,
        );
    }
    Ok(())
}

#[cfg(test)]
mod tests;
