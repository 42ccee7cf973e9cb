//! Endpoints: TCP by default, addresses that are IPs, ports in range.

use k8s_openapi::api::core::v1 as core;
use serde_json::{Value, json};

use super::common::{invalid_raw, one_of, valid_port};
use super::table_fmt::{CREATED, Column, age, col, i, name, s};
use super::{KindRules, Typed, typed};
use crate::error::Cause;
use kedge_core::resources::Resource;

pub(super) struct Endpoints;

static COLUMNS: [Column; 3] = [
    col("Name", "string", 0),
    col("Endpoints", "string", 0),
    col("Age", "string", 0),
];

impl KindRules for Endpoints {
    fn default(&self, obj: &mut Value) {
        if let Some(Value::Array(subsets)) = obj.get_mut("subsets") {
            for ss in subsets.iter_mut() {
                if let Some(Value::Array(ports)) = ss.get_mut("ports") {
                    for p in ports.iter_mut().filter_map(Value::as_object_mut) {
                        p.entry("protocol").or_insert(json!("TCP"));
                    }
                }
            }
        }
    }

    fn validate(
        &self,
        _res: &Resource,
        obj: &Value,
        _old: Option<&Value>,
        causes: &mut Vec<Cause>,
    ) {
        validate_endpoints(obj, causes);
    }

    fn columns(&self) -> &'static [Column] {
        &COLUMNS
    }

    fn cells(&self, o: &Value, now: chrono::DateTime<chrono::Utc>) -> Vec<Value> {
        vec![
            name(o),
            json!(format_endpoints(o)),
            json!(age(o, CREATED, now)),
        ]
    }

    fn typed(&self) -> Option<&'static dyn Typed> {
        typed::<core::Endpoints>()
    }
}

fn validate_endpoints(obj: &Value, causes: &mut Vec<Cause>) {
    let subsets = obj
        .get("subsets")
        .and_then(Value::as_array)
        .cloned()
        .unwrap_or_default();
    for (i, ss) in subsets.iter().enumerate() {
        for list in ["addresses", "notReadyAddresses"] {
            for (j, a) in ss
                .get(list)
                .and_then(Value::as_array)
                .into_iter()
                .flatten()
                .enumerate()
            {
                let at = format!("subsets[{i}].{list}[{j}].ip");
                match a.get("ip").and_then(Value::as_str) {
                    None | Some("") => causes.push(Cause::required(at)),
                    Some(ip) if ip.parse::<std::net::IpAddr>().is_err() => {
                        causes.push(Cause::invalid(
                            at,
                            ip,
                            "must be a valid IP address, (e.g. 10.9.8.7 or 2001:db8::ffff)",
                        ))
                    }
                    Some(_) => {}
                }
            }
        }
        let ports = ss
            .get("ports")
            .and_then(Value::as_array)
            .cloned()
            .unwrap_or_default();
        for (j, p) in ports.iter().enumerate() {
            let at = format!("subsets[{i}].ports[{j}]");
            if ports.len() > 1
                && p.get("name")
                    .and_then(Value::as_str)
                    .is_none_or(str::is_empty)
            {
                causes.push(Cause::required(format!("{at}.name")));
            }
            match p.get("port") {
                None => causes.push(Cause::required(format!("{at}.port"))),
                Some(v) if !valid_port(v) => causes.push(invalid_raw(
                    format!("{at}.port"),
                    &v.to_string(),
                    "must be between 1 and 65535, inclusive",
                )),
                Some(_) => {}
            }
            one_of(p, "protocol", &at, &["SCTP", "TCP", "UDP"], causes);
        }
    }
}

/// ENDPOINTS: up to three `ip:port`, then ` + N more...`.
fn format_endpoints(o: &Value) -> String {
    let subsets = o
        .get("subsets")
        .and_then(Value::as_array)
        .cloned()
        .unwrap_or_default();
    if subsets.is_empty() {
        return "<none>".into();
    }
    const MAX: usize = 3;
    let (mut list, mut count, mut more) = (Vec::new(), 0usize, false);
    for ss in &subsets {
        let addrs: Vec<&str> = ss
            .get("addresses")
            .and_then(Value::as_array)
            .into_iter()
            .flatten()
            .map(|a| s(a, "/ip"))
            .collect();
        let ports: Vec<i64> = ss
            .get("ports")
            .and_then(Value::as_array)
            .into_iter()
            .flatten()
            .map(|p| i(p, "/port"))
            .collect();
        if ports.is_empty() {
            count += addrs.len();
            for a in &addrs {
                if list.len() == MAX {
                    more = true;
                    break;
                }
                list.push(a.to_string());
            }
            continue;
        }
        for port in ports {
            count += addrs.len();
            for a in &addrs {
                if list.len() == MAX {
                    more = true;
                    break;
                }
                list.push(if a.contains(':') {
                    format!("[{a}]:{port}")
                } else {
                    format!("{a}:{port}")
                });
            }
        }
    }
    let ret = list.join(",");
    if more {
        format!("{ret} + {} more...", count - MAX)
    } else {
        ret
    }
}
