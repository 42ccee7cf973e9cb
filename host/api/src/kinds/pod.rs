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
        let total = o
            .pointer("/spec/containers")
            .and_then(Value::as_array)
            .map_or(0, Vec::len);
        let statuses = o
            .pointer("/status/containerStatuses")
            .and_then(Value::as_array)
            .cloned()
            .unwrap_or_default();
        let ready = statuses
            .iter()
            .filter(|c| c.get("ready").and_then(Value::as_bool) == Some(true))
            .count();
        let restarts: i64 = statuses.iter().map(|c| i(c, "/restartCount")).sum();
        let ip = s(o, "/status/podIP");
        let node = s(o, "/spec/nodeName");
        vec![
            name(o),
            json!(format!("{ready}/{total}")),
            json!(pod_status(o)),
            json!(restarts.to_string()),
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

/// The STATUS column of `kubectl get pods`: a waiting or terminated reason beats the phase.
pub fn pod_status(p: &Value) -> String {
    if p.pointer("/metadata/deletionTimestamp").is_some() {
        return "Terminating".into();
    }
    let mut reason = s(p, "/status/phase").to_string();
    if let Some(r) = p.pointer("/status/reason").and_then(Value::as_str) {
        reason = r.to_string();
    }
    let statuses = p
        .pointer("/status/containerStatuses")
        .and_then(Value::as_array)
        .cloned()
        .unwrap_or_default();
    for cs in statuses.iter().rev() {
        if let Some(r) = cs.pointer("/state/waiting/reason").and_then(Value::as_str) {
            reason = r.to_string();
        } else if let Some(t) = cs.pointer("/state/terminated") {
            reason = match t.get("reason").and_then(Value::as_str) {
                Some(r) => r.to_string(),
                None => format!("ExitCode:{}", i(t, "/exitCode")),
            };
        }
    }
    if reason.is_empty() {
        "Unknown".into()
    } else {
        reason
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn pod_status_prefers_container_reasons() {
        let p = json!({"status": {"phase": "Pending", "containerStatuses": [
            {"state": {"waiting": {"reason": "ImagePullBackOff"}}}]}});
        assert_eq!(pod_status(&p), "ImagePullBackOff");
        let p = json!({"metadata": {"deletionTimestamp": "x"}, "status": {"phase": "Running"}});
        assert_eq!(pod_status(&p), "Terminating");
    }
}
