//! Leases: their holder.

use k8s_openapi::api::coordination::v1 as coord;
use serde_json::{Value, json};

use super::table_fmt::{CREATED, Column, age, col, name, s};
use super::{KindRules, Typed, typed};

pub(super) struct Lease;

static COLUMNS: [Column; 3] = [
    col("Name", "string", 0),
    col("Holder", "string", 0),
    col("Age", "string", 0),
];

impl KindRules for Lease {
    fn columns(&self) -> &'static [Column] {
        &COLUMNS
    }

    fn cells(&self, o: &Value, now: chrono::DateTime<chrono::Utc>) -> Vec<Value> {
        vec![
            name(o),
            json!(s(o, "/spec/holderIdentity")),
            json!(age(o, CREATED, now)),
        ]
    }

    fn typed(&self) -> Option<&'static dyn Typed> {
        typed::<coord::Lease>()
    }
}
