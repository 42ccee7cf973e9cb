//! Namespaces: named by DNS labels (they become parts of DNS names) and listed with their
//! phase.

use k8s_openapi::api::core::v1 as core;
use serde_json::{Value, json};

use super::table_fmt::{CREATED, Column, age, col, name, s};
use super::{KindRules, Typed, typed};
use kedge_core::meta;

/// `spec.finalizers` entry of a namespace: what holds a deleted namespace until the namespace
/// controller emptied it.
pub(crate) const NAMESPACE_FINALIZER: &str = "kubernetes";

pub(super) struct Namespace;

static COLUMNS: [Column; 3] = [
    col("Name", "string", 0),
    col("Status", "string", 0),
    col("Age", "string", 0),
];

impl KindRules for Namespace {
    fn check_name(&self, name: &str) -> Result<(), String> {
        meta::validate_label(name)
    }

    fn on_create(&self, obj: &mut Value, _now: &str) {
        obj["status"] = json!({"phase": "Active"});
        if obj.pointer("/spec/finalizers").is_none() {
            obj["spec"]["finalizers"] = json!([NAMESPACE_FINALIZER]);
        }
    }

    fn columns(&self) -> &'static [Column] {
        &COLUMNS
    }

    fn cells(&self, o: &Value, now: chrono::DateTime<chrono::Utc>) -> Vec<Value> {
        vec![
            name(o),
            json!(s(o, "/status/phase")),
            json!(age(o, CREATED, now)),
        ]
    }

    fn typed(&self) -> Option<&'static dyn Typed> {
        typed::<core::Namespace>()
    }
}
