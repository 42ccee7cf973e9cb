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
//! - The heartbeat returns: the taints are removed (the agent re-posts Ready itself).
//!
//! The grace period and the default eviction time can be shortened (tests, fast-failover
//! sites) with the ConfigMap `kube-system/kedge-node-lifecycle`, keys `gracePeriodSeconds`
//! and `evictionSeconds`.

use k8s_openapi::api::coordination::v1::Lease;
use k8s_openapi::api::core::v1::{ConfigMap, Event, Node, NodeCondition, Pod, Taint, Toleration};
use k8s_openapi::apimachinery::pkg::apis::meta::v1::Time;
use kedge_guest::meta::{find_condition, parse_time};
use kedge_guest::pod::tolerates;
use kedge_guest::{
    ApiResultExt, Cluster, ClusterExt, Controller, KindRef, LogLevel, ObjectKey, Outcome,
    Registration, Result,
};

pub const UNREACHABLE_TAINT: &str = "node.kubernetes.io/unreachable";
/// Kubernetes' node-monitor-grace-period.
pub const DEFAULT_GRACE_SECONDS: i64 = 40;
/// Kubernetes' default tolerationSeconds for unreachable nodes.
pub const DEFAULT_EVICTION_SECONDS: i64 = 300;
pub const CONFIG_NAMESPACE: &str = "kube-system";
pub const CONFIG_NAME: &str = "kedge-node-lifecycle";
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
}

fn timeouts(cluster: &dyn Cluster) -> Result<Timeouts> {
    let cm = cluster.get::<ConfigMap>(CONFIG_NAMESPACE, CONFIG_NAME)?;
    let data = cm.and_then(|c| c.data).unwrap_or_default();
    let seconds = |key: &str, default: i64| {
        data.get(key)
            .and_then(|v| v.trim().parse::<i64>().ok())
            .filter(|s| *s >= 0)
            .unwrap_or(default)
    };
    Ok(Timeouts {
        grace_ms: seconds("gracePeriodSeconds", DEFAULT_GRACE_SECONDS) * 1000,
        eviction_ms: seconds("evictionSeconds", DEFAULT_EVICTION_SECONDS) * 1000,
    })
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
    let now_s = cluster.now();
    let now = parse_time(&now_s).ok_or("host clock is not RFC 3339")?;
    let now_ms = ms(&now);
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
        let Some(tolerated) = tolerated_ms(&pod, timeouts.eviction_ms) else {
            continue;
        };
        let due = tainted_at + tolerated;
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

#[cfg(test)]
mod tests;
