//! Nodes: written by their agents, listed as `kubectl get nodes` shows them; the pod CIDR the
//! server gave a Node (see [`crate::alloc`]) is kept over a replace that omits it and never
//! changes once set.

use k8s_openapi::api::core::v1 as core;
use serde_json::{Value, json};

use super::table_fmt::{CREATED, Column, age, col, name, s};
use super::{KindRules, Typed, typed};
use crate::error::Cause;

pub(super) struct Node;

static COLUMNS: [Column; 10] = [
    col("Name", "string", 0),
    col("Status", "string", 0),
    col("Roles", "string", 0),
    col("Age", "string", 0),
    col("Version", "string", 0),
    col("Internal-IP", "string", 1),
    col("External-IP", "string", 1),
    col("OS-Image", "string", 1),
    col("Kernel-Version", "string", 1),
    col("Container-Runtime", "string", 1),
];

impl KindRules for Node {
    fn prepare_update(&self, old: &Value, new: &mut Value) {
        keep_pod_cidr(old, new);
    }

    fn validate_update(&self, old: &Value, new: &Value, causes: &mut Vec<Cause>) {
        let cidrs = |o: &Value| -> Vec<String> {
            match o.pointer("/spec/podCIDRs").and_then(Value::as_array) {
                Some(a) if !a.is_empty() => a
                    .iter()
                    .filter_map(|c| c.as_str().map(String::from))
                    .collect(),
                _ => o
                    .pointer("/spec/podCIDR")
                    .and_then(Value::as_str)
                    .filter(|c| !c.is_empty())
                    .map(String::from)
                    .into_iter()
                    .collect(),
            }
        };
        let before = cidrs(old);
        if !before.is_empty() && cidrs(new) != before {
            // kube-apiserver's ValidateNodeUpdate, word for word.
            causes.push(Cause::forbidden(
                "spec.podCIDRs",
                "node updates may not change podCIDR except from \"\" to valid",
            ));
        }
    }

    fn columns(&self) -> &'static [Column] {
        &COLUMNS
    }

    fn cells(&self, o: &Value, now: chrono::DateTime<chrono::Utc>) -> Vec<Value> {
        let conds = o
            .pointer("/status/conditions")
            .and_then(Value::as_array)
            .cloned()
            .unwrap_or_default();
        let ready = conds
            .iter()
            .find(|c| s(c, "/type") == "Ready")
            .map(|c| s(c, "/status").to_string());
        let mut status = match ready.as_deref() {
            Some("True") => "Ready".to_string(),
            Some("False") => "NotReady".to_string(),
            _ => "Unknown".to_string(),
        };
        if o.pointer("/spec/unschedulable").and_then(Value::as_bool) == Some(true) {
            status.push_str(",SchedulingDisabled");
        }
        let mut roles: Vec<String> = o
            .pointer("/metadata/labels")
            .and_then(Value::as_object)
            .map(|l| {
                l.keys()
                    .filter_map(|k| k.strip_prefix("node-role.kubernetes.io/"))
                    .map(String::from)
                    .collect()
            })
            .unwrap_or_default();
        roles.sort();
        let addr = |t: &str| {
            o.pointer("/status/addresses")
                .and_then(Value::as_array)
                .and_then(|a| a.iter().find(|x| s(x, "/type") == t))
                .map(|x| s(x, "/address").to_string())
                .unwrap_or_else(|| "<none>".into())
        };
        vec![
            name(o),
            json!(status),
            json!(if roles.is_empty() {
                "<none>".into()
            } else {
                roles.join(",")
            }),
            json!(age(o, CREATED, now)),
            json!(s(o, "/status/nodeInfo/kubeletVersion")),
            json!(addr("InternalIP")),
            json!(addr("ExternalIP")),
            json!(s(o, "/status/nodeInfo/osImage")),
            json!(s(o, "/status/nodeInfo/kernelVersion")),
            json!(s(o, "/status/nodeInfo/containerRuntimeVersion")),
        ]
    }

    fn typed(&self) -> Option<&'static dyn Typed> {
        typed::<core::Node>()
    }
}

/// Before defaulting an update: a replace or patch that drops `spec.podCIDR(s)` keeps what the
/// server allocated (as Services keep their cluster IPs), instead of failing as a change.
fn keep_pod_cidr(old: &Value, new: &mut Value) {
    let empty = |v: Option<&Value>| {
        v.is_none_or(|v| {
            v.is_null() || v.as_str() == Some("") || v.as_array().is_some_and(|a| a.is_empty())
        })
    };
    let Some(os) = old.get("spec") else {
        return;
    };
    if empty(os.get("podCIDR")) && empty(os.get("podCIDRs")) {
        return;
    }
    let Some(obj) = new.as_object_mut() else {
        return;
    };
    let spec = obj.entry("spec").or_insert_with(|| json!({}));
    if spec.is_null() {
        *spec = json!({});
    }
    let Some(ns) = spec.as_object_mut() else {
        return;
    };
    if empty(ns.get("podCIDR")) && empty(ns.get("podCIDRs")) {
        for f in ["podCIDR", "podCIDRs"] {
            if let Some(v) = os.get(f) {
                ns.insert(f.into(), v.clone());
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn pod_cidr_is_kept_when_omitted_and_immutable_once_set() {
        let old = json!({"metadata": {"name": "n"},
            "spec": {"podCIDR": "10.42.0.0/24", "podCIDRs": ["10.42.0.0/24"]}});
        let mut replaced = json!({"metadata": {"name": "n"}, "spec": {"unschedulable": true}});
        keep_pod_cidr(&old, &mut replaced);
        assert_eq!(replaced["spec"]["podCIDR"], "10.42.0.0/24");
        assert_eq!(replaced["spec"]["podCIDRs"], json!(["10.42.0.0/24"]));
        let mut causes = Vec::new();
        Node.validate_update(&old, &replaced, &mut causes);
        assert!(causes.is_empty());

        let mut changed = old.clone();
        changed["spec"]["podCIDR"] = json!("10.42.1.0/24");
        changed["spec"]["podCIDRs"] = json!(["10.42.1.0/24"]);
        keep_pod_cidr(&old, &mut changed);
        Node.validate_update(&old, &changed, &mut causes);
        assert_eq!(causes.len(), 1);
        assert_eq!(causes[0].field, "spec.podCIDRs");
        assert_eq!(
            causes[0].message,
            "Forbidden: node updates may not change podCIDR except from \"\" to valid"
        );

        // From "" to a value is allowed.
        let mut causes = Vec::new();
        let bare = json!({"metadata": {"name": "n"}, "spec": {}});
        Node.validate_update(&bare, &old, &mut causes);
        assert!(causes.is_empty());
    }
}
