//! EndpointSlices: an address type kube knows.

use k8s_openapi::api::discovery::v1 as discovery;
use serde_json::{Value, json};

use super::table_fmt::{CREATED, Column, age, col, i, name, s};
use super::{KindRules, Typed, typed};
use crate::error::Cause;
use kedge_core::resources::Resource;

pub(super) struct EndpointSlice;

static COLUMNS: [Column; 5] = [
    col("Name", "string", 0),
    col("AddressType", "string", 0),
    col("Ports", "string", 0),
    col("Endpoints", "string", 0),
    col("Age", "string", 0),
];

impl KindRules for EndpointSlice {
    fn validate(
        &self,
        _res: &Resource,
        obj: &Value,
        _old: Option<&Value>,
        causes: &mut Vec<Cause>,
    ) {
        match obj.get("addressType").and_then(Value::as_str) {
            None => causes.push(Cause::required("addressType")),
            Some("IPv4" | "IPv6" | "FQDN") => {}
            Some(t) => causes.push(Cause::unsupported(
                "addressType",
                t,
                &["FQDN", "IPv4", "IPv6"],
            )),
        }
    }

    fn columns(&self) -> &'static [Column] {
        &COLUMNS
    }

    fn cells(&self, o: &Value, now: chrono::DateTime<chrono::Utc>) -> Vec<Value> {
        let ports: Vec<String> = o
            .get("ports")
            .and_then(Value::as_array)
            .into_iter()
            .flatten()
            .map(|p| i(p, "/port").to_string())
            .collect();
        let addrs: Vec<String> = o
            .get("endpoints")
            .and_then(Value::as_array)
            .into_iter()
            .flatten()
            .flat_map(|e| {
                e.get("addresses")
                    .and_then(Value::as_array)
                    .cloned()
                    .unwrap_or_default()
            })
            .filter_map(|a| a.as_str().map(str::to_string))
            .collect();
        // kubectl prints at most three addresses, then "+ N more...".
        let shown = if addrs.is_empty() {
            "<unset>".to_string()
        } else if addrs.len() > 3 {
            format!("{} + {} more...", addrs[..3].join(","), addrs.len() - 3)
        } else {
            addrs.join(",")
        };
        vec![
            name(o),
            json!(s(o, "/addressType")),
            json!(if ports.is_empty() {
                "<unset>".to_string()
            } else {
                ports.join(",")
            }),
            json!(shown),
            json!(age(o, CREATED, now)),
        ]
    }

    fn typed(&self) -> Option<&'static dyn Typed> {
        typed::<discovery::EndpointSlice>()
    }
}
