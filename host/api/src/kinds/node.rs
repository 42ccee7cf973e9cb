//! Nodes: written by their agents, listed as `kubectl get nodes` shows them.

use k8s_openapi::api::core::v1 as core;
use serde_json::{Value, json};

use super::table_fmt::{CREATED, Column, age, col, name, s};
use super::{KindRules, Typed, typed};

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
