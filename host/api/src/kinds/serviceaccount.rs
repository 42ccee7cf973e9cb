//! ServiceAccounts: how many token Secrets they list.

use k8s_openapi::api::core::v1 as core;
use serde_json::{Value, json};

use super::table_fmt::{CREATED, Column, age, col, name};
use super::{KindRules, Typed, typed};

pub(super) struct ServiceAccount;

static COLUMNS: [Column; 3] = [
    col("Name", "string", 0),
    col("Secrets", "string", 0),
    col("Age", "string", 0),
];

impl KindRules for ServiceAccount {
    fn columns(&self) -> &'static [Column] {
        &COLUMNS
    }

    fn cells(&self, o: &Value, now: chrono::DateTime<chrono::Utc>) -> Vec<Value> {
        vec![
            name(o),
            json!(
                o.get("secrets")
                    .and_then(Value::as_array)
                    .map_or(0, Vec::len)
            ),
            json!(age(o, CREATED, now)),
        ]
    }

    fn typed(&self) -> Option<&'static dyn Typed> {
        typed::<core::ServiceAccount>()
    }
}
