//! PodDisruptionBudgets (policy/v1): how many of the pods a selector picks must stay up
//! through voluntary disruptions. The API checks the spec as kube-apiserver's
//! `ValidatePodDisruptionBudgetSpec` does and starts the status at zero; the disruption
//! controller (a plugin) computes the status, and the `pods/eviction` subresource
//! ([`crate::eviction`]) spends it.

use k8s_openapi::api::policy::v1 as policy;
use serde_json::{Value, json};

use super::common::{PERCENT_MSG, int_or_percent, invalid_raw};
use super::table_fmt::{CREATED, Column, age, col, i, name};
use super::{KindRules, Typed, typed};
use crate::error::Cause;
use kedge_core::resources::Resource;
use kedge_core::selector::Selector;

pub(super) struct PodDisruptionBudget;

/// The policies `spec.unhealthyPodEvictionPolicy` accepts, in kube-apiserver's order.
pub(crate) const UNHEALTHY_POLICIES: &[&str] = &["AlwaysAllow", "IfHealthyBudget"];

/// kubectl's PodDisruptionBudget printer.
static COLUMNS: [Column; 5] = [
    col("Name", "string", 0),
    col("Min Available", "string", 0),
    col("Max Unavailable", "string", 0),
    col("Allowed Disruptions", "integer", 0),
    col("Age", "string", 0),
];

impl KindRules for PodDisruptionBudget {
    fn initial_status(&self) -> Option<Value> {
        // kube-apiserver resets the status on create; v1 always writes the four counters.
        Some(
            json!({"disruptionsAllowed": 0, "currentHealthy": 0, "desiredHealthy": 0,
            "expectedPods": 0}),
        )
    }

    fn validate(
        &self,
        _res: &Resource,
        obj: &Value,
        _old: Option<&Value>,
        causes: &mut Vec<Cause>,
    ) {
        validate_spec(obj.get("spec").unwrap_or(&Value::Null), causes);
    }

    fn columns(&self) -> &'static [Column] {
        &COLUMNS
    }

    fn cells(&self, o: &Value, now: chrono::DateTime<chrono::Utc>) -> Vec<Value> {
        // `IntOrString.String()`, or N/A when unset.
        let budget = |field: &str| match o.pointer(&format!("/spec/{field}")) {
            Some(Value::String(s)) => s.clone(),
            Some(Value::Number(n)) => n.to_string(),
            _ => "N/A".into(),
        };
        vec![
            name(o),
            json!(budget("minAvailable")),
            json!(budget("maxUnavailable")),
            json!(i(o, "/status/disruptionsAllowed")),
            json!(age(o, CREATED, now)),
        ]
    }

    fn typed(&self) -> Option<&'static dyn Typed> {
        typed::<policy::PodDisruptionBudget>()
    }
}

/// `IntOrString` as Go's `%#v` prints it in a cause (the value is not a `Stringer` there).
fn go_int_or_string(v: &Value) -> String {
    match v {
        Value::String(s) => format!("intstr.IntOrString{{Type:1, IntVal:0, StrVal:{s:?}}}"),
        other => format!(
            "intstr.IntOrString{{Type:0, IntVal:{}, StrVal:\"\"}}",
            other.as_i64().unwrap_or(0)
        ),
    }
}

/// `ValidatePositiveIntOrPercent` and `IsNotMoreThan100Percent` of one budget field.
fn validate_budget(v: &Value, field: &str, causes: &mut Vec<Cause>) {
    match v {
        Value::Number(n) => {
            if n.as_i64().is_none_or(|n| n < 0) {
                causes.push(invalid_raw(
                    field,
                    &n.to_string(),
                    "must be greater than or equal to 0",
                ));
            }
        }
        Value::String(_) => match int_or_percent(v) {
            None => causes.push(invalid_raw(field, &go_int_or_string(v), PERCENT_MSG)),
            Some(p) if p > 100 => causes.push(invalid_raw(
                field,
                &go_int_or_string(v),
                "must not be greater than 100%",
            )),
            Some(_) => {}
        },
        _ => causes.push(invalid_raw(
            field,
            &v.to_string(),
            "must be an integer or percentage (e.g '5%')",
        )),
    }
}

/// kube-apiserver's `ValidatePodDisruptionBudgetSpec`: at most one of the two budgets (neither
/// is allowed: such a budget never allows a disruption), each a non-negative integer or a
/// percentage up to 100%, a well-formed selector, a known unhealthy-pod policy.
fn validate_spec(spec: &Value, causes: &mut Vec<Cause>) {
    let min = spec.get("minAvailable").filter(|v| !v.is_null());
    let max = spec.get("maxUnavailable").filter(|v| !v.is_null());
    if let (Some(a), Some(b)) = (min, max) {
        causes.push(invalid_raw(
            "spec",
            &format!("{{minAvailable:{a}, maxUnavailable:{b}}}"),
            "minAvailable and maxUnavailable cannot be both set",
        ));
    }
    if let Some(v) = min {
        validate_budget(v, "spec.minAvailable", causes);
    }
    if let Some(v) = max {
        validate_budget(v, "spec.maxUnavailable", causes);
    }
    if let Some(sel) = spec.get("selector").filter(|v| !v.is_null())
        && let Err(e) = Selector::from_structured(sel)
    {
        causes.push(Cause::invalid("spec.selector", "", e));
    }
    if let Some(p) = spec
        .get("unhealthyPodEvictionPolicy")
        .and_then(Value::as_str)
        && !UNHEALTHY_POLICIES.contains(&p)
    {
        causes.push(Cause::unsupported(
            "spec.unhealthyPodEvictionPolicy",
            p,
            UNHEALTHY_POLICIES,
        ));
    }
}

#[cfg(test)]
mod tests {
    use crate::kinds::test_support::*;

    fn pdb(spec: Value) -> Value {
        json!({"apiVersion": "policy/v1", "kind": "PodDisruptionBudget",
            "metadata": {"name": "web", "namespace": "default"}, "spec": spec})
    }

    fn check(spec: Value) -> Vec<(String, &'static str, String)> {
        let res = by_kind("policy/v1", "PodDisruptionBudget").unwrap();
        validate(res, &pdb(spec))
            .into_iter()
            .map(|c| (c.field, c.reason, c.message))
            .collect()
    }

    /// kube-apiserver's `ValidatePodDisruptionBudgetSpec`, case by case.
    #[test]
    fn spec_is_validated_as_kube_apiserver_does() {
        let sel = json!({"matchLabels": {"app": "web"}});
        for fine in [
            json!({"minAvailable": 2, "selector": sel}),
            json!({"minAvailable": "50%", "selector": sel}),
            json!({"maxUnavailable": 0, "selector": sel}),
            json!({"maxUnavailable": "100%", "selector": {}}),
            // Neither budget: allowed (and never allows a disruption).
            json!({"selector": sel}),
            json!({"minAvailable": 1, "selector": sel, "unhealthyPodEvictionPolicy": "AlwaysAllow"}),
            json!({"minAvailable": 1, "unhealthyPodEvictionPolicy": "IfHealthyBudget"}),
        ] {
            assert_eq!(check(fine.clone()), [], "{fine}");
        }
        let cases = [
            (
                json!({"minAvailable": 1, "maxUnavailable": 1}),
                "spec",
                "FieldValueInvalid",
                "minAvailable and maxUnavailable cannot be both set",
            ),
            (
                json!({"minAvailable": -1}),
                "spec.minAvailable",
                "FieldValueInvalid",
                "Invalid value: -1: must be greater than or equal to 0",
            ),
            (
                json!({"maxUnavailable": "50"}),
                "spec.maxUnavailable",
                "FieldValueInvalid",
                "Invalid value: intstr.IntOrString{Type:1, IntVal:0, StrVal:\"50\"}: a valid percent string",
            ),
            (
                json!({"minAvailable": "101%"}),
                "spec.minAvailable",
                "FieldValueInvalid",
                "must not be greater than 100%",
            ),
            (
                json!({"minAvailable": 1, "selector": {"matchExpressions": [{"key": "a", "operator": "Bogus"}]}}),
                "spec.selector",
                "FieldValueInvalid",
                "",
            ),
            (
                json!({"minAvailable": 1, "unhealthyPodEvictionPolicy": "Never"}),
                "spec.unhealthyPodEvictionPolicy",
                "FieldValueNotSupported",
                "Unsupported value: \"Never\": supported values: \"AlwaysAllow\", \"IfHealthyBudget\"",
            ),
        ];
        for (spec, field, reason, message) in cases {
            let causes = check(spec.clone());
            assert_eq!(causes.len(), 1, "{spec}: {causes:?}");
            assert_eq!(
                (causes[0].0.as_str(), causes[0].1),
                (field, reason),
                "{spec}"
            );
            assert!(causes[0].2.contains(message), "{spec}: {}", causes[0].2);
        }
    }

    /// The columns and cells of `kubectl get pdb`.
    #[test]
    fn table_has_kubectls_columns() {
        let res = by_kind("policy/v1", "PodDisruptionBudget").unwrap();
        let rules = crate::kinds::rules(res);
        let names: Vec<&str> = rules.columns().iter().map(|c| c.name).collect();
        assert_eq!(
            names,
            [
                "Name",
                "Min Available",
                "Max Unavailable",
                "Allowed Disruptions",
                "Age"
            ]
        );
        let now = chrono::DateTime::parse_from_rfc3339("2025-01-01T00:01:00Z")
            .unwrap()
            .with_timezone(&chrono::Utc);
        let mut o = pdb(json!({"minAvailable": "50%"}));
        o["metadata"]["creationTimestamp"] = json!("2025-01-01T00:00:00Z");
        o["status"] = json!({"disruptionsAllowed": 1});
        assert_eq!(
            rules.cells(&o, now),
            [
                json!("web"),
                json!("50%"),
                json!("N/A"),
                json!(1),
                json!("60s")
            ]
        );
        let o = pdb(json!({"maxUnavailable": 0}));
        assert_eq!(
            rules.cells(&o, now)[1..4],
            [json!("N/A"), json!("0"), json!(0)]
        );
    }

    /// A new budget starts with the v1 status counters at zero.
    #[test]
    fn status_starts_at_zero() {
        let res = by_kind("policy/v1", "PodDisruptionBudget").unwrap();
        let mut o = pdb(json!({"minAvailable": 1}));
        crate::kinds::on_create(res, &mut o, "2025-01-01T00:00:00Z");
        assert_eq!(o["status"]["disruptionsAllowed"], 0);
        assert_eq!(o["status"]["expectedPods"], 0);
    }
}
