//! ResourceQuotas: `spec.hard` over the resources kedge counts (compute resources of pods,
//! object counts); enforced and kept in `status` by [`crate::admission`]. Scopes are refused.

use k8s_openapi::api::core::v1 as core;
use serde_json::{Value, json};

use super::table_fmt::{CREATED, Column, age, col, name};
use super::{KindRules, Typed, typed};
use crate::admission::{Qty, kind_of};
use crate::error::Cause;
use kedge_core::resources::Resource;

pub(super) struct ResourceQuota;

/// kubectl's ResourceQuota printer.
static COLUMNS: [Column; 4] = [
    col("Name", "string", 0),
    col("Age", "string", 0),
    col("Request", "string", 0),
    col("Limit", "string", 0),
];

/// kube's `IsIntegerResourceName`: object counts are whole numbers.
fn is_count(name: &str) -> bool {
    name.starts_with("count/")
        || matches!(
            name,
            "pods"
                | "services"
                | "replicationcontrollers"
                | "resourcequotas"
                | "secrets"
                | "configmaps"
                | "persistentvolumeclaims"
                | "services.nodeports"
                | "services.loadbalancers"
        )
}

/// Checks a resource list of quantities at `at` (`spec.hard`): valid, non-negative, whole
/// for counts; `known` refuses names kedge does not count.
pub(super) fn check_quantities(
    list: Option<&Value>,
    at: &str,
    known: impl Fn(&str) -> Option<String>,
    causes: &mut Vec<Cause>,
) {
    for (k, v) in list.and_then(Value::as_object).into_iter().flatten() {
        let field = format!("{at}[{k}]");
        if let Some(why) = known(k) {
            causes.push(Cause::forbidden(
                field,
                format!("not supported by kedge: {why}"),
            ));
            continue;
        }
        let text = v.as_str().map_or_else(|| v.to_string(), String::from);
        if text.trim_start().starts_with('-') {
            causes.push(Cause::invalid(
                field,
                &text,
                "must be greater than or equal to 0",
            ));
            continue;
        }
        match Qty::parse(&text) {
            None => causes.push(Cause::invalid(
                field,
                &text,
                "quantities must match the regular expression \
                 '^([+-]?[0-9.]+)([eEinumkKMGTP]*[-+]?[0-9]*)$'",
            )),
            Some(q) if is_count(k) && q.canonical().ends_with('m') => {
                causes.push(Cause::invalid(field, &text, "must be an integer"));
            }
            Some(_) => {}
        }
    }
}

impl KindRules for ResourceQuota {
    fn validate(
        &self,
        _res: &Resource,
        obj: &Value,
        _old: Option<&Value>,
        causes: &mut Vec<Cause>,
    ) {
        let known = |k: &str| {
            kind_of(k).is_none().then(|| {
                "kedge counts cpu, memory, requests.cpu, requests.memory, limits.cpu, \
                 limits.memory, pods, services, services.nodeports, services.loadbalancers, \
                 configmaps, secrets, persistentvolumeclaims, requests.storage, \
                 replicationcontrollers, resourcequotas and count/<resource>.<group> of \
                 served namespaced resources"
                    .to_string()
            })
        };
        check_quantities(obj.pointer("/spec/hard"), "spec.hard", known, causes);
        if obj
            .pointer("/spec/scopes")
            .and_then(Value::as_array)
            .is_some_and(|s| !s.is_empty())
        {
            causes.push(Cause::forbidden(
                "spec.scopes",
                "not supported by kedge: quota scopes are not implemented",
            ));
        }
        if obj
            .pointer("/spec/scopeSelector")
            .is_some_and(|s| !s.is_null())
        {
            causes.push(Cause::forbidden(
                "spec.scopeSelector",
                "not supported by kedge: quota scopes are not implemented",
            ));
        }
    }

    fn columns(&self) -> &'static [Column] {
        &COLUMNS
    }

    /// printResourceQuota: `resource: used/hard` pairs sorted by name, `limits.*` in LIMIT.
    fn cells(&self, o: &Value, now: chrono::DateTime<chrono::Utc>) -> Vec<Value> {
        let mut request = Vec::new();
        let mut limit = Vec::new();
        let mut names: Vec<&String> = o
            .pointer("/spec/hard")
            .and_then(Value::as_object)
            .into_iter()
            .flat_map(|m| m.keys())
            .collect();
        names.sort();
        for k in names {
            let q = |which: &str| {
                o.pointer(&format!("/status/{which}"))
                    .and_then(|m| m.get(k))
                    .and_then(Value::as_str)
                    .and_then(Qty::parse)
                    .unwrap_or_default()
                    .canonical()
            };
            let cell = format!("{k}: {}/{}", q("used"), q("hard"));
            if k.split('.').next() == Some("limits") && k.contains('.') {
                limit.push(cell);
            } else {
                request.push(cell);
            }
        }
        vec![
            name(o),
            json!(age(o, CREATED, now)),
            json!(request.join(", ")),
            json!(limit.join(", ")),
        ]
    }

    fn typed(&self) -> Option<&'static dyn Typed> {
        typed::<core::ResourceQuota>()
    }
}

#[cfg(test)]
mod tests {
    use super::super::test_support::*;

    fn quota(hard: Value) -> Value {
        json!({"metadata": {"name": "q", "namespace": "d"}, "spec": {"hard": hard}})
    }

    #[test]
    fn hard_keys_kedge_does_not_count_are_refused_by_name() {
        let rq = by_kind("v1", "ResourceQuota").unwrap();
        let ok = quota(
            json!({"pods": "2", "requests.cpu": "1", "limits.memory": "1Gi",
            "count/deployments.apps": "3", "services.nodeports": "0", "count/configmaps": "1"}),
        );
        assert!(validate(rq, &ok).is_empty(), "{:?}", validate(rq, &ok));
        let bad = quota(
            json!({"requests.nvidia.com/gpu": "1", "pods": "1.5", "cpu": "-1",
            "memory": "lots", "count/widgets.example.com": "1"}),
        );
        assert_eq!(
            field_reasons(&validate(rq, &bad)),
            [
                (
                    "spec.hard[count/widgets.example.com]",
                    "FieldValueForbidden"
                ),
                ("spec.hard[cpu]", "FieldValueInvalid"),
                ("spec.hard[memory]", "FieldValueInvalid"),
                ("spec.hard[pods]", "FieldValueInvalid"),
                ("spec.hard[requests.nvidia.com/gpu]", "FieldValueForbidden"),
            ]
        );
        let mut scoped = quota(json!({"pods": "1"}));
        scoped["spec"]["scopes"] = json!(["BestEffort"]);
        assert_eq!(fields(&validate(rq, &scoped)), ["spec.scopes"]);
    }
}
