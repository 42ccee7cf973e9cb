//! ConfigMaps: `data` and base64 `binaryData`, never the same key in both.

use k8s_openapi::api::core::v1 as core;
use serde_json::{Value, json};

use super::data::{check_size, frozen, normalize_data, validate_data};
use super::table_fmt::{CREATED, Column, age, col, name};
use super::{KindRules, Typed, typed};
use crate::error::Cause;
use kedge_core::resources::Resource;

pub(super) struct ConfigMap;

static COLUMNS: [Column; 3] = [
    col("Name", "string", 0),
    col("Data", "integer", 0),
    col("Age", "string", 0),
];

impl KindRules for ConfigMap {
    fn update_checks_first(&self) -> bool {
        true
    }

    fn default(&self, obj: &mut Value) {
        normalize_data(obj, "binaryData");
    }

    fn validate(
        &self,
        _res: &Resource,
        obj: &Value,
        _old: Option<&Value>,
        causes: &mut Vec<Cause>,
    ) {
        let data = obj.get("data").and_then(Value::as_object);
        for k in obj
            .get("binaryData")
            .and_then(Value::as_object)
            .into_iter()
            .flat_map(|m| m.keys())
        {
            if data.is_some_and(|d| d.contains_key(k)) {
                causes.push(Cause::invalid(
                    format!("binaryData[{k}]"),
                    k,
                    "duplicate of key present in data",
                ));
            }
        }
        let size = validate_data(obj, "data", false, causes)
            + validate_data(obj, "binaryData", true, causes);
        check_size(size, causes);
    }

    fn validate_update(&self, old: &Value, new: &Value, causes: &mut Vec<Cause>) {
        frozen(old, new, &[("data", false), ("binaryData", true)], causes);
    }

    fn columns(&self) -> &'static [Column] {
        &COLUMNS
    }

    fn cells(&self, o: &Value, now: chrono::DateTime<chrono::Utc>) -> Vec<Value> {
        vec![
            name(o),
            json!(
                o.get("data")
                    .and_then(Value::as_object)
                    .map_or(0, |d| d.len())
                    + o.get("binaryData")
                        .and_then(Value::as_object)
                        .map_or(0, |d| d.len())
            ),
            json!(age(o, CREATED, now)),
        ]
    }

    fn typed(&self) -> Option<&'static dyn Typed> {
        typed::<core::ConfigMap>()
    }
}
