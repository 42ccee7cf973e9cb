//! ReplicaSets and ReplicationControllers: the same printer; a ReplicationController's map
//! selector (defaulted from its template) where a ReplicaSet has a label selector.

use k8s_openapi::api::{apps::v1 as apps, core::v1 as core};
use serde_json::{Value, json};

use super::common::{ensure_object, go_map, invalid_raw, selector_change};
use super::podspec::{default_pod_spec, validate_pod_spec, validate_workload};
use super::table_fmt::{
    CREATED, Column, age, col, containers_and_images, i, map_selector_string, name,
};
use super::{KindRules, Typed, typed};
use crate::error::Cause;
use kedge_core::resources::Resource;

pub(super) struct ReplicaSet;

pub(super) struct ReplicationController;

static COLUMNS: [Column; 8] = [
    col("Name", "string", 0),
    col("Desired", "integer", 0),
    col("Current", "integer", 0),
    col("Ready", "integer", 0),
    col("Age", "string", 0),
    col("Containers", "string", 1),
    col("Images", "string", 1),
    col("Selector", "string", 1),
];

impl KindRules for ReplicaSet {
    fn immutable_change(&self, old: &Value, new: &Value) -> Option<(String, String)> {
        selector_change(old, new)
    }

    fn default(&self, obj: &mut Value) {
        ensure_object(obj, "spec")
            .entry("replicas")
            .or_insert(json!(1));
        if let Some(pod) = obj.pointer_mut("/spec/template/spec") {
            default_pod_spec(pod);
        }
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
        let sel = o
            .pointer("/spec/selector")
            .map(crate::ops::selector_string)
            .unwrap_or_default();
        cells(o, now, sel)
    }

    fn typed(&self) -> Option<&'static dyn Typed> {
        typed::<apps::ReplicaSet>()
    }
}

impl KindRules for ReplicationController {
    fn default(&self, obj: &mut Value) {
        // SetDefaults_ReplicationController: selector and labels from the template.
        let template_labels = obj.pointer("/spec/template/metadata/labels").cloned();
        if let Some(tl) = template_labels.filter(|l| l.as_object().is_some_and(|m| !m.is_empty())) {
            let spec = ensure_object(obj, "spec");
            if spec
                .get("selector")
                .and_then(Value::as_object)
                .is_none_or(|m| m.is_empty())
            {
                spec.insert("selector".into(), tl.clone());
            }
            let m = ensure_object(obj, "metadata");
            if m.get("labels")
                .and_then(Value::as_object)
                .is_none_or(|l| l.is_empty())
            {
                m.insert("labels".into(), tl);
            }
        }
        ensure_object(obj, "spec")
            .entry("replicas")
            .or_insert(json!(1));
        if let Some(pod) = obj.pointer_mut("/spec/template/spec") {
            default_pod_spec(pod);
        }
    }

    fn initial_status(&self) -> Option<Value> {
        Some(json!({"replicas": 0}))
    }

    fn validate(
        &self,
        _res: &Resource,
        obj: &Value,
        _old: Option<&Value>,
        causes: &mut Vec<Cause>,
    ) {
        validate_replication_controller(obj, causes);
    }

    fn columns(&self) -> &'static [Column] {
        &COLUMNS
    }

    fn cells(&self, o: &Value, now: chrono::DateTime<chrono::Utc>) -> Vec<Value> {
        let sel = o
            .pointer("/spec/selector")
            .map(map_selector_string)
            .unwrap_or_default();
        cells(o, now, sel)
    }

    fn typed(&self) -> Option<&'static dyn Typed> {
        typed::<core::ReplicationController>()
    }
}

/// The row of either kind, with its selector as its kind prints it.
fn cells(o: &Value, now: chrono::DateTime<chrono::Utc>, sel: String) -> Vec<Value> {
    let (c, im) = containers_and_images(o, "/spec/template/spec/containers");
    vec![
        name(o),
        json!(i(o, "/spec/replicas")),
        json!(i(o, "/status/replicas")),
        json!(i(o, "/status/readyReplicas")),
        json!(age(o, CREATED, now)),
        json!(c),
        json!(im),
        json!(sel),
    ]
}

/// ValidateReplicationControllerSpec: a non-empty map selector the template's labels match.
fn validate_replication_controller(obj: &Value, causes: &mut Vec<Cause>) {
    let Some(spec) = obj.get("spec") else {
        causes.push(Cause::required("spec"));
        return;
    };
    if let Some(r) = spec.get("replicas")
        && r.as_i64().is_none_or(|r| r < 0)
    {
        causes.push(invalid_raw(
            "spec.replicas",
            &r.to_string(),
            "must be greater than or equal to 0",
        ));
    }
    let selector = spec.get("selector").and_then(Value::as_object);
    let Some(selector) = selector.filter(|s| !s.is_empty()) else {
        causes.push(Cause::required("spec.selector"));
        return;
    };
    let Some(template) = spec.get("template") else {
        causes.push(Cause::required("spec.template"));
        return;
    };
    let labels = template
        .pointer("/metadata/labels")
        .and_then(Value::as_object);
    let matches = selector
        .iter()
        .all(|(k, v)| labels.and_then(|l| l.get(k)) == Some(v));
    if !matches {
        causes.push(invalid_raw(
            "spec.template.metadata.labels",
            &go_map(labels),
            "`selector` does not match template `labels`",
        ));
    }
    match template.get("spec") {
        Some(ps) => validate_pod_spec(ps, "spec.template.spec", causes),
        None => causes.push(Cause::required("spec.template.spec")),
    }
}
