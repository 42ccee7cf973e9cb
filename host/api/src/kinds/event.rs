//! Events: listed newest-first-looking, as `kubectl get events` prints them.

use k8s_openapi::api::core::v1 as core;
use serde_json::{Value, json};

use super::table_fmt::{Column, age, col, s};
use super::{KindRules, Typed, typed};

pub(super) struct Event;

static COLUMNS: [Column; 5] = [
    col("Last Seen", "string", 0),
    col("Type", "string", 0),
    col("Reason", "string", 0),
    col("Object", "string", 0),
    col("Message", "string", 0),
];

impl KindRules for Event {
    fn columns(&self) -> &'static [Column] {
        &COLUMNS
    }

    fn cells(&self, o: &Value, now: chrono::DateTime<chrono::Utc>) -> Vec<Value> {
        let last = if o
            .pointer("/lastTimestamp")
            .and_then(Value::as_str)
            .is_some()
        {
            age(o, "/lastTimestamp", now)
        } else {
            age(o, "/eventTime", now)
        };
        vec![
            json!(last),
            json!(s(o, "/type")),
            json!(s(o, "/reason")),
            json!(format!(
                "{}/{}",
                s(o, "/involvedObject/kind").to_lowercase(),
                s(o, "/involvedObject/name")
            )),
            json!(s(o, "/message")),
        ]
    }

    fn typed(&self) -> Option<&'static dyn Typed> {
        typed::<core::Event>()
    }
}
