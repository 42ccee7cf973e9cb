//! DaemonSets: rolling-update defaults, the workload checks and a selector fixed once set.

use k8s_openapi::api::apps::v1 as apps;
use serde_json::{Value, json};

use super::common::{ensure_object, immutable};
use super::podspec::{default_pod_spec, validate_workload};
use super::table_fmt::{
    CREATED, Column, age, col, containers_and_images, format_labels, format_selector, i, name,
};
use super::{KindRules, Typed, typed};
use crate::error::Cause;
use kedge_core::resources::Resource;

pub(super) struct DaemonSet;

static COLUMNS: [Column; 11] = [
    col("Name", "string", 0),
    col("Desired", "integer", 0),
    col("Current", "integer", 0),
    col("Ready", "integer", 0),
    col("Up-to-date", "integer", 0),
    col("Available", "integer", 0),
    col("Node Selector", "string", 0),
    col("Age", "string", 0),
    col("Containers", "string", 1),
    col("Images", "string", 1),
    col("Selector", "string", 1),
];

impl KindRules for DaemonSet {
    fn default(&self, obj: &mut Value) {
        let spec = ensure_object(obj, "spec");
        spec.entry("revisionHistoryLimit").or_insert(json!(10));
        let strategy = spec
            .entry("updateStrategy")
            .or_insert_with(|| json!({"type": "RollingUpdate"}));
        if let Some(st) = strategy.as_object_mut() {
            st.entry("type").or_insert(json!("RollingUpdate"));
            if st.get("type").and_then(Value::as_str) == Some("RollingUpdate") {
                let ru = st.entry("rollingUpdate").or_insert_with(|| json!({}));
                if let Some(ru) = ru.as_object_mut() {
                    ru.entry("maxUnavailable").or_insert(json!(1));
                    ru.entry("maxSurge").or_insert(json!(0));
                }
            }
        }
        if let Some(pod) = obj.pointer_mut("/spec/template/spec") {
            default_pod_spec(pod);
        }
    }

    fn initial_status(&self) -> Option<Value> {
        Some(json!({"currentNumberScheduled": 0, "numberMisscheduled": 0,
            "desiredNumberScheduled": 0, "numberReady": 0}))
    }

    fn validate(&self, res: &Resource, obj: &Value, _old: Option<&Value>, causes: &mut Vec<Cause>) {
        validate_workload(res, obj, causes);
    }

    fn validate_update(&self, old: &Value, new: &Value, causes: &mut Vec<Cause>) {
        immutable(old, new, "spec.selector", "/spec/selector", causes);
    }

    fn columns(&self) -> &'static [Column] {
        &COLUMNS
    }

    fn cells(&self, o: &Value, now: chrono::DateTime<chrono::Utc>) -> Vec<Value> {
        let (c, im) = containers_and_images(o, "/spec/template/spec/containers");
        vec![
            name(o),
            json!(i(o, "/status/desiredNumberScheduled")),
            json!(i(o, "/status/currentNumberScheduled")),
            json!(i(o, "/status/numberReady")),
            json!(i(o, "/status/updatedNumberScheduled")),
            json!(i(o, "/status/numberAvailable")),
            json!(format_labels(o.pointer("/spec/template/spec/nodeSelector"))),
            json!(age(o, CREATED, now)),
            json!(c),
            json!(im),
            json!(format_selector(o.pointer("/spec/selector"))),
        ]
    }

    fn typed(&self) -> Option<&'static dyn Typed> {
        typed::<apps::DaemonSet>()
    }
}

#[cfg(test)]
mod tests {
    use crate::kinds::test_support::*;

    #[test]
    fn daemonset_defaults() {
        let res = by_kind("apps/v1", "DaemonSet").unwrap();
        let mut d = json!({"metadata": {"name": "d"}, "spec": {
            "selector": {"matchLabels": {"app": "d"}},
            "template": pod_template(json!({"app": "x"}), "Always")}});
        default(res, &mut d);
        assert_eq!(
            d["spec"]["updateStrategy"],
            json!({"type": "RollingUpdate", "rollingUpdate": {"maxUnavailable": 1, "maxSurge": 0}})
        );
        assert_eq!(
            fields(&validate(res, &d)),
            ["spec.template.metadata.labels"]
        );
    }
}
