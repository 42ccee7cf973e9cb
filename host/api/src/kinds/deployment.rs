//! Deployments: rollout defaults (strategy, history, deadline) and the workload checks.

use k8s_openapi::api::apps::v1 as apps;
use serde_json::{Value, json};

use super::common::{ensure_object, ensure_object_value, selector_change};
use super::podspec::{default_pod_spec, validate_workload};
use super::table_fmt::{CREATED, Column, age, col, containers_and_images, i, name};
use super::{KindRules, Typed, typed};
use crate::error::Cause;
use kedge_core::resources::Resource;

pub(super) struct Deployment;

static COLUMNS: [Column; 8] = [
    col("Name", "string", 0),
    col("Ready", "string", 0),
    col("Up-to-date", "integer", 0),
    col("Available", "integer", 0),
    col("Age", "string", 0),
    col("Containers", "string", 1),
    col("Images", "string", 1),
    col("Selector", "string", 1),
];

impl KindRules for Deployment {
    fn immutable_change(&self, old: &Value, new: &Value) -> Option<(String, String)> {
        selector_change(old, new)
    }

    fn default(&self, obj: &mut Value) {
        let spec = ensure_object(obj, "spec");
        spec.entry("replicas").or_insert(json!(1));
        spec.entry("revisionHistoryLimit").or_insert(json!(10));
        spec.entry("progressDeadlineSeconds").or_insert(json!(600));
        let strategy = spec
            .entry("strategy")
            .or_insert_with(|| json!({"type": "RollingUpdate"}));
        if strategy.get("type").and_then(Value::as_str) == Some("RollingUpdate")
            && strategy.get("rollingUpdate").is_none()
        {
            strategy["rollingUpdate"] = json!({"maxSurge": "25%", "maxUnavailable": "25%"});
        }
        if let Some(pod) = obj.pointer_mut("/spec/template/spec") {
            default_pod_spec(pod);
        }
        // kubectl rollout undo patches /metadata/annotations, which must exist.
        ensure_object(ensure_object_value(obj, "metadata"), "annotations");
    }

    fn initial_status(&self) -> Option<Value> {
        Some(json!({}))
    }

    fn validate(&self, res: &Resource, obj: &Value, _old: Option<&Value>, causes: &mut Vec<Cause>) {
        validate_workload(res, obj, causes);
    }

    fn columns(&self) -> &'static [Column] {
        &COLUMNS
    }

    fn cells(&self, o: &Value, now: chrono::DateTime<chrono::Utc>) -> Vec<Value> {
        let (c, im) = containers_and_images(o, "/spec/template/spec/containers");
        let sel = o
            .pointer("/spec/selector")
            .map(crate::ops::selector_string)
            .unwrap_or_default();
        vec![
            name(o),
            json!(format!(
                "{}/{}",
                i(o, "/status/readyReplicas"),
                i(o, "/spec/replicas")
            )),
            json!(i(o, "/status/updatedReplicas")),
            json!(i(o, "/status/availableReplicas")),
            json!(age(o, CREATED, now)),
            json!(c),
            json!(im),
            json!(sel),
        ]
    }

    fn typed(&self) -> Option<&'static dyn Typed> {
        typed::<apps::Deployment>()
    }
}

#[cfg(test)]
mod tests {
    use crate::kinds::test_support::*;

    #[test]
    fn deployment_defaults_and_selector_check() {
        let res = by_kind("apps/v1", "Deployment").unwrap();
        let mut d = json!({"metadata": {"name": "web"}, "spec": {
            "selector": {"matchLabels": {"app": "web"}},
            "template": {"metadata": {"labels": {"app": "other"}},
                         "spec": {"containers": [{"name": "c", "image": "x:1"}]}}}});
        default(res, &mut d);
        assert_eq!(d["spec"]["replicas"], 1);
        assert_eq!(d["metadata"]["annotations"], json!({}));
        assert_eq!(
            d["spec"]["template"]["spec"]["containers"][0]["imagePullPolicy"],
            "IfNotPresent"
        );
        let causes = validate(res, &d);
        assert_eq!(causes.len(), 1);
        assert_eq!(causes[0].field, "spec.template.metadata.labels");
    }
}
