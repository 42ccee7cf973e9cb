//! ControllerRevisions: a non-negative revision and data fixed once written.

use k8s_openapi::api::apps::v1 as apps;
use serde_json::{Value, json};

use super::common::{immutable, invalid_raw};
use super::table_fmt::{CREATED, Column, age, col, i, name, s};
use super::{KindRules, Typed, typed};
use crate::error::Cause;
use kedge_core::resources::Resource;

pub(super) struct ControllerRevision;

static COLUMNS: [Column; 4] = [
    col("Name", "string", 0),
    col("Controller", "string", 0),
    col("Revision", "integer", 0),
    col("Age", "string", 0),
];

impl KindRules for ControllerRevision {
    fn validate(
        &self,
        _res: &Resource,
        obj: &Value,
        _old: Option<&Value>,
        causes: &mut Vec<Cause>,
    ) {
        if let Some(r) = obj.get("revision").and_then(Value::as_i64)
            && r < 0
        {
            causes.push(invalid_raw(
                "revision",
                &r.to_string(),
                "must be greater than or equal to 0",
            ));
        }
    }

    fn validate_update(&self, old: &Value, new: &Value, causes: &mut Vec<Cause>) {
        immutable(old, new, "data", "/data", causes);
    }

    fn columns(&self) -> &'static [Column] {
        &COLUMNS
    }

    fn cells(&self, o: &Value, now: chrono::DateTime<chrono::Utc>) -> Vec<Value> {
        let controller = o
            .pointer("/metadata/ownerReferences")
            .and_then(Value::as_array)
            .and_then(|refs| {
                refs.iter()
                    .find(|r| r.get("controller").and_then(Value::as_bool) == Some(true))
            })
            .map(|r| {
                let group = s(r, "/apiVersion").rsplit_once('/').map_or("", |(g, _)| g);
                let kind = s(r, "/kind").to_lowercase();
                let gk = if group.is_empty() {
                    kind
                } else {
                    format!("{kind}.{group}")
                };
                format!("{gk}/{}", s(r, "/name"))
            })
            .unwrap_or_else(|| "<none>".into());
        vec![
            name(o),
            json!(controller),
            json!(i(o, "/revision")),
            json!(age(o, CREATED, now)),
        ]
    }

    fn typed(&self) -> Option<&'static dyn Typed> {
        typed::<apps::ControllerRevision>()
    }
}
