//! Pods: the spec's defaults (requests from limits too, unlike templates) and checks, and
//! `kubectl get pods`' columns.

use k8s_openapi::api::core::v1 as core;
use serde_json::{Value, json};

use super::podspec::{default_pod_spec, qos_class, requests_from_limits, validate_pod_spec};
use super::table_fmt::{CREATED, Column, age, col, i, name, s};
use super::{KindRules, Typed, typed};
use crate::error::Cause;
use kedge_core::resources::Resource;

pub(super) struct Pod;

/// kube-apiserver's refusal of a pod update that touches more than it allows.
const POD_UPDATE_FORBIDDEN: &str = "pod updates may not change fields other than `spec.containers[*].image`, `spec.initContainers[*].image`, `spec.activeDeadlineSeconds`, `spec.tolerations` (only additions to existing tolerations), `spec.terminationGracePeriodSeconds` (allow it to be set to 1 if it was previously negative)";

static COLUMNS: [Column; 9] = [
    col("Name", "string", 0),
    col("Ready", "string", 0),
    col("Status", "string", 0),
    col("Restarts", "string", 0),
    col("Age", "string", 0),
    col("IP", "string", 1),
    col("Node", "string", 1),
    col("Nominated Node", "string", 1),
    col("Readiness Gates", "string", 1),
];

impl KindRules for Pod {
    fn on_create(&self, obj: &mut Value, now: &str) {
        let qos = qos_class(obj.get("spec").unwrap_or(&Value::Null));
        let mut status = json!({"phase": "Pending", "qosClass": qos});
        // A pod created already bound (nodeName set) is scheduled.
        if obj
            .pointer("/spec/nodeName")
            .and_then(Value::as_str)
            .is_some()
        {
            status["conditions"] = json!([{"type": "PodScheduled", "status": "True",
                "lastProbeTime": null, "lastTransitionTime": now}]);
        }
        obj["status"] = status;
    }

    fn immutable_change(&self, old: &Value, new: &Value) -> Option<(String, String)> {
        let old_node = old.pointer("/spec/nodeName");
        if old_node.is_some() && old_node != new.pointer("/spec/nodeName") {
            return Some(("spec.nodeName".into(), POD_UPDATE_FORBIDDEN.into()));
        }
        let strip = |v: &Value| {
            let mut s = v.get("spec").cloned().unwrap_or(Value::Null);
            if let Some(cs) = s.get_mut("containers").and_then(Value::as_array_mut) {
                for c in cs {
                    if let Some(c) = c.as_object_mut() {
                        c.remove("image");
                    }
                }
            }
            if let Some(m) = s.as_object_mut() {
                m.remove("nodeName");
                m.remove("activeDeadlineSeconds");
                m.remove("tolerations");
                m.remove("terminationGracePeriodSeconds");
            }
            s
        };
        if strip(old) != strip(new) {
            return Some(("spec".into(), POD_UPDATE_FORBIDDEN.into()));
        }
        None
    }

    fn default(&self, obj: &mut Value) {
        if let Some(spec) = obj.get_mut("spec") {
            default_pod_spec(spec);
            requests_from_limits(spec);
        }
    }

    fn validate(
        &self,
        _res: &Resource,
        obj: &Value,
        _old: Option<&Value>,
        causes: &mut Vec<Cause>,
    ) {
        match obj.get("spec") {
            Some(spec) => validate_pod_spec(spec, "spec", causes),
            None => causes.push(Cause::required("spec")),
        }
    }

    fn columns(&self) -> &'static [Column] {
        &COLUMNS
    }

    fn cells(&self, o: &Value, now: chrono::DateTime<chrono::Utc>) -> Vec<Value> {
        let row = print_pod(o);
        let ip = s(o, "/status/podIP");
        let node = s(o, "/spec/nodeName");
        vec![
            name(o),
            json!(format!("{}/{}", row.ready, row.total)),
            json!(row.reason),
            json!(row.restarts.to_string()),
            json!(age(o, CREATED, now)),
            json!(if ip.is_empty() { "<none>" } else { ip }),
            json!(if node.is_empty() { "<none>" } else { node }),
            json!("<none>"),
            json!("<none>"),
        ]
    }

    fn typed(&self) -> Option<&'static dyn Typed> {
        typed::<core::Pod>()
    }
}

/// The READY, STATUS and RESTARTS columns of `kubectl get pods`.
pub(crate) struct PodRow {
    pub ready: usize,
    pub total: usize,
    pub reason: String,
    pub restarts: i64,
}

/// kubectl's pod printer: init containers first (`Init:N/M`, `Init:<reason>`), then the app
/// containers' waiting or terminated reasons over the phase; sidecars (init containers with
/// `restartPolicy: Always`) count among the containers once started.
pub(crate) fn print_pod(p: &Value) -> PodRow {
    let list = |ptr: &str| {
        p.pointer(ptr)
            .and_then(Value::as_array)
            .cloned()
            .unwrap_or_default()
    };
    let (init_specs, init_statuses) = (
        list("/spec/initContainers"),
        list("/status/initContainerStatuses"),
    );
    let statuses = list("/status/containerStatuses");
    let sidecar = |name: &str| {
        init_specs
            .iter()
            .any(|c| c["name"].as_str() == Some(name) && kedge_core::pod::is_sidecar(c))
    };
    let mut total = list("/spec/containers").len()
        + init_specs
            .iter()
            .filter(|c| kedge_core::pod::is_sidecar(c))
            .count();
    let mut ready = 0;
    let mut restarts = 0i64;
    let mut sidecar_restarts = 0i64;
    let phase = s(p, "/status/phase").to_string();
    let mut reason = match p.pointer("/status/reason").and_then(Value::as_str) {
        Some(r) if !r.is_empty() => r.to_string(),
        _ => phase.clone(),
    };
    let terminated_reason = |t: &Value, prefix: &str| match t.get("reason").and_then(Value::as_str)
    {
        Some(r) if !r.is_empty() => format!("{prefix}{r}"),
        _ => format!("{prefix}ExitCode:{}", i(t, "/exitCode")),
    };
    let mut initializing = false;
    for (n, cs) in init_statuses.iter().enumerate() {
        let name = cs["name"].as_str().unwrap_or_default();
        let count = i(cs, "/restartCount");
        restarts += count;
        if sidecar(name) {
            sidecar_restarts += count;
        }
        let terminated = cs.pointer("/state/terminated");
        let waiting = cs
            .pointer("/state/waiting/reason")
            .and_then(Value::as_str)
            .filter(|r| !r.is_empty() && *r != "PodInitializing");
        if terminated.is_some_and(|t| i(t, "/exitCode") == 0) {
            continue;
        }
        if sidecar(name) && cs["started"] == true {
            if cs["ready"] == true {
                ready += 1;
            }
            continue;
        }
        reason = match (terminated, waiting) {
            (Some(t), _) => terminated_reason(t, "Init:"),
            (None, Some(w)) => format!("Init:{w}"),
            (None, None) => format!("Init:{n}/{}", init_specs.len()),
        };
        initializing = true;
        break;
    }
    let initialized = p
        .pointer("/status/conditions")
        .and_then(Value::as_array)
        .into_iter()
        .flatten()
        .any(|c| c["type"] == "Initialized" && c["status"] == "True");
    if !initializing || initialized {
        restarts = sidecar_restarts;
        let mut running = false;
        for cs in statuses.iter().rev() {
            restarts += i(cs, "/restartCount");
            let waiting = cs
                .pointer("/state/waiting/reason")
                .and_then(Value::as_str)
                .filter(|r| !r.is_empty());
            if let Some(w) = waiting {
                reason = w.to_string();
            } else if let Some(t) = cs.pointer("/state/terminated") {
                reason = terminated_reason(t, "");
            } else if cs["ready"] == true && cs.pointer("/state/running").is_some() {
                running = true;
                ready += 1;
            }
        }
        if reason == "Completed" && running {
            let ready_condition = p
                .pointer("/status/conditions")
                .and_then(Value::as_array)
                .into_iter()
                .flatten()
                .any(|c| c["type"] == "Ready" && c["status"] == "True");
            reason = if ready_condition {
                "Running"
            } else {
                "NotReady"
            }
            .into();
        }
    }
    if p.pointer("/metadata/deletionTimestamp").is_some() {
        if p.pointer("/status/reason").and_then(Value::as_str) == Some("NodeLost") {
            reason = "Unknown".into();
        } else if !matches!(phase.as_str(), "Succeeded" | "Failed") {
            reason = "Terminating".into();
        }
    }
    if reason.is_empty() {
        reason = "Unknown".into();
    }
    total = total.max(ready);
    PodRow {
        ready,
        total,
        reason,
        restarts,
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn pod_status_prefers_container_reasons() {
        let p = json!({"status": {"phase": "Pending", "containerStatuses": [
            {"state": {"waiting": {"reason": "ImagePullBackOff"}}}]}});
        assert_eq!(print_pod(&p).reason, "ImagePullBackOff");
        let p = json!({"metadata": {"deletionTimestamp": "x"}, "status": {"phase": "Running"}});
        assert_eq!(print_pod(&p).reason, "Terminating");
    }

    /// The rows kubectl prints for pods with init containers and sidecars.
    #[test]
    fn init_containers_show_as_kubectl_prints_them() {
        let spec = json!({"initContainers": [{"name": "a"}, {"name": "b"},
            {"name": "side", "restartPolicy": "Always"}], "containers": [{"name": "app"}]});
        let waiting = |r: &str| json!({"waiting": {"reason": r}});
        let done = |code: i64, r: &str| json!({"terminated": {"exitCode": code, "reason": r}});
        let running = json!({"running": {}});
        let init = |a: Value, b: Value, side: Value, side_started: bool| {
            json!([{"name": "a", "state": a, "restartCount": 0},
                {"name": "b", "state": b, "restartCount": 2},
                {"name": "side", "state": side, "started": side_started, "ready": side_started,
                    "restartCount": 1}])
        };
        let app = |state: Value, ready: bool| json!([{"name": "app", "state": state, "ready": ready, "restartCount": 0}]);
        let initialized = json!([{"type": "Initialized", "status": "True"},
            {"type": "Ready", "status": "True"}]);
        let not_initialized = json!([{"type": "Initialized", "status": "False"}]);
        let cases = [
            // (init statuses, app statuses, conditions, READY, STATUS, RESTARTS)
            (
                init(
                    waiting("PodInitializing"),
                    waiting("PodInitializing"),
                    waiting("PodInitializing"),
                    false,
                ),
                app(waiting("PodInitializing"), false),
                not_initialized.clone(),
                "0/2",
                "Init:0/3",
                0,
            ),
            (
                init(
                    done(0, "Completed"),
                    running.clone(),
                    waiting("PodInitializing"),
                    false,
                ),
                app(waiting("PodInitializing"), false),
                not_initialized.clone(),
                "0/2",
                "Init:1/3",
                2,
            ),
            (
                init(
                    done(0, "Completed"),
                    done(1, "Error"),
                    waiting("PodInitializing"),
                    false,
                ),
                app(waiting("PodInitializing"), false),
                not_initialized.clone(),
                "0/2",
                "Init:Error",
                2,
            ),
            (
                init(
                    done(0, "Completed"),
                    waiting("CrashLoopBackOff"),
                    waiting("PodInitializing"),
                    false,
                ),
                app(waiting("PodInitializing"), false),
                not_initialized.clone(),
                "0/2",
                "Init:CrashLoopBackOff",
                2,
            ),
            (
                init(
                    done(0, "Completed"),
                    done(0, "Completed"),
                    running.clone(),
                    true,
                ),
                app(running.clone(), true),
                initialized.clone(),
                "2/2",
                "Running",
                1,
            ),
        ];
        for (init_statuses, app_statuses, conditions, ready, status, restarts) in cases {
            let phase = if status == "Running" {
                "Running"
            } else {
                "Pending"
            };
            let p = json!({"spec": spec, "status": {"phase": phase,
                "initContainerStatuses": init_statuses, "containerStatuses": app_statuses,
                "conditions": conditions}});
            let row = print_pod(&p);
            assert_eq!(
                (
                    format!("{}/{}", row.ready, row.total),
                    row.reason.as_str(),
                    row.restarts
                ),
                (ready.to_string(), status, restarts),
                "{p}"
            );
        }
    }
}
