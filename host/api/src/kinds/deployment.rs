//! Deployments: rollout defaults (strategy, history, deadline) and the workload checks.

use k8s_openapi::api::apps::v1 as apps;
use serde_json::{Value, json};

use super::common::{
    ensure_object, ensure_object_value, int_or_percent, int_or_percent_text, invalid_raw,
    non_negative, positive_int_or_percent, selector_change,
};
use super::podspec::{default_pod_spec, validate_workload};
use super::table_fmt::{CREATED, Column, age, col, containers_and_images, i, name};
use super::{KindRules, Typed, typed};
use crate::error::Cause;
use kedge_core::resources::Resource;

pub(super) struct Deployment;

static COLUMNS: [Column; 8] = [
    col("Name", "string", 0),
    col("Ready", "string", 0),
    col("Up-to-date", "integer", 0),
    col("Available", "integer", 0),
    col("Age", "string", 0),
    col("Containers", "string", 1),
    col("Images", "string", 1),
    col("Selector", "string", 1),
];

/// The spec fields [`validate_rollout`] checks.
const ROLLOUT_FIELDS: [&str; 4] = [
    "/spec/strategy",
    "/spec/minReadySeconds",
    "/spec/progressDeadlineSeconds",
    "/spec/revisionHistoryLimit",
];

/// kube-apiserver's `ValidateDeploymentSpec` checks of the rollout settings: the strategy
/// (type, RollingUpdate budgets), minReadySeconds, progressDeadlineSeconds (above
/// minReadySeconds) and revisionHistoryLimit.
fn validate_rollout(spec: &Value, causes: &mut Vec<Cause>) {
    non_negative(spec, "revisionHistoryLimit", "spec", causes);
    non_negative(spec, "minReadySeconds", "spec", causes);
    non_negative(spec, "progressDeadlineSeconds", "spec", causes);
    if let Some(deadline) = spec.get("progressDeadlineSeconds").and_then(Value::as_i64) {
        let min_ready = spec
            .get("minReadySeconds")
            .and_then(Value::as_i64)
            .unwrap_or(0);
        if deadline <= min_ready {
            causes.push(invalid_raw(
                "spec.progressDeadlineSeconds",
                &deadline.to_string(),
                "must be greater than minReadySeconds",
            ));
        }
    }
    let Some(strategy) = spec.get("strategy") else {
        return;
    };
    let rolling = strategy.get("rollingUpdate").filter(|r| !r.is_null());
    match strategy.get("type").and_then(Value::as_str) {
        None | Some("") => causes.push(Cause::required("spec.strategy.type")),
        Some("Recreate") => {
            if rolling.is_some() {
                causes.push(Cause::forbidden(
                    "spec.strategy.rollingUpdate",
                    "may not be specified when strategy `type` is 'Recreate'",
                ));
            }
        }
        Some("RollingUpdate") => {
            let Some(ru) = rolling else {
                causes.push(Cause::required("spec.strategy.rollingUpdate"));
                return;
            };
            let at = "spec.strategy.rollingUpdate";
            let unavailable = ru.get("maxUnavailable");
            let surge = ru.get("maxSurge");
            if let Some(v) = unavailable {
                positive_int_or_percent(v, &format!("{at}.maxUnavailable"), causes);
            }
            if let Some(v) = surge {
                positive_int_or_percent(v, &format!("{at}.maxSurge"), causes);
            }
            let zero = |v: Option<&Value>| v.is_none_or(|v| int_or_percent(v) == Some(0));
            if zero(unavailable) && zero(surge) {
                causes.push(invalid_raw(
                    format!("{at}.maxUnavailable"),
                    &unavailable.map_or_else(|| "null".into(), int_or_percent_text),
                    "may not be 0 when `maxSurge` is 0",
                ));
            }
            if let Some(v) = unavailable.filter(|v| v.is_string())
                && int_or_percent(v).is_some_and(|p| p > 100)
            {
                causes.push(invalid_raw(
                    format!("{at}.maxUnavailable"),
                    &int_or_percent_text(v),
                    "must not be greater than 100%",
                ));
            }
        }
        Some(other) => causes.push(Cause::unsupported(
            "spec.strategy.type",
            other,
            &["Recreate", "RollingUpdate"],
        )),
    }
}

impl KindRules for Deployment {
    fn immutable_change(&self, old: &Value, new: &Value) -> Option<(String, String)> {
        selector_change(old, new)
    }

    fn default(&self, obj: &mut Value) {
        let spec = ensure_object(obj, "spec");
        spec.entry("replicas").or_insert(json!(1));
        spec.entry("revisionHistoryLimit").or_insert(json!(10));
        spec.entry("progressDeadlineSeconds").or_insert(json!(600));
        // As apps/v1 defaults them: RollingUpdate, each unset budget 25%.
        let strategy = spec.entry("strategy").or_insert_with(|| json!({}));
        if let Some(st) = strategy.as_object_mut() {
            st.entry("type").or_insert(json!("RollingUpdate"));
            if st.get("type").and_then(Value::as_str) == Some("RollingUpdate") {
                let ru = st.entry("rollingUpdate").or_insert_with(|| json!({}));
                if let Some(ru) = ru.as_object_mut() {
                    ru.entry("maxSurge").or_insert(json!("25%"));
                    ru.entry("maxUnavailable").or_insert(json!("25%"));
                }
            }
        }
        if let Some(pod) = obj.pointer_mut("/spec/template/spec") {
            default_pod_spec(pod);
        }
        // kubectl rollout undo patches /metadata/annotations, which must exist.
        ensure_object(ensure_object_value(obj, "metadata"), "annotations");
    }

    fn initial_status(&self) -> Option<Value> {
        Some(json!({}))
    }

    fn validate(&self, res: &Resource, obj: &Value, old: Option<&Value>, causes: &mut Vec<Cause>) {
        validate_workload(res, obj, causes);
        // Checked since the Deployment plugin honours these fields; an object stored before
        // is held to them only when an update touches them.
        let touched = |f: &str| old.is_none_or(|o| o.pointer(f) != obj.pointer(f));
        if let Some(spec) = obj.get("spec")
            && ROLLOUT_FIELDS.iter().any(|f| touched(f))
        {
            validate_rollout(spec, causes);
        }
    }

    fn columns(&self) -> &'static [Column] {
        &COLUMNS
    }

    fn cells(&self, o: &Value, now: chrono::DateTime<chrono::Utc>) -> Vec<Value> {
        let (c, im) = containers_and_images(o, "/spec/template/spec/containers");
        let sel = o
            .pointer("/spec/selector")
            .map(crate::ops::selector_string)
            .unwrap_or_default();
        vec![
            name(o),
            json!(format!(
                "{}/{}",
                i(o, "/status/readyReplicas"),
                i(o, "/spec/replicas")
            )),
            json!(i(o, "/status/updatedReplicas")),
            json!(i(o, "/status/availableReplicas")),
            json!(age(o, CREATED, now)),
            json!(c),
            json!(im),
            json!(sel),
        ]
    }

    fn typed(&self) -> Option<&'static dyn Typed> {
        typed::<apps::Deployment>()
    }
}

#[cfg(test)]
mod tests {
    use crate::kinds::test_support::*;

    #[test]
    fn deployment_defaults_and_selector_check() {
        let res = by_kind("apps/v1", "Deployment").unwrap();
        let mut d = json!({"metadata": {"name": "web"}, "spec": {
            "selector": {"matchLabels": {"app": "web"}},
            "template": {"metadata": {"labels": {"app": "other"}},
                         "spec": {"containers": [{"name": "c", "image": "x:1"}]}}}});
        default(res, &mut d);
        assert_eq!(d["spec"]["replicas"], 1);
        assert_eq!(d["metadata"]["annotations"], json!({}));
        assert_eq!(
            d["spec"]["template"]["spec"]["containers"][0]["imagePullPolicy"],
            "IfNotPresent"
        );
        let causes = validate(res, &d);
        assert_eq!(causes.len(), 1);
        assert_eq!(causes[0].field, "spec.template.metadata.labels");
    }

    fn web(spec: Value) -> Value {
        let mut d = json!({"metadata": {"name": "web"}, "spec": {
            "selector": {"matchLabels": {"app": "web"}},
            "template": pod_template(json!({"app": "web"}), "Always")}});
        for (k, v) in spec.as_object().unwrap() {
            d["spec"][k] = v.clone();
        }
        d
    }

    #[test]
    fn rollout_defaults_match_apps_v1() {
        let res = by_kind("apps/v1", "Deployment").unwrap();
        let mut d = web(json!({}));
        default(res, &mut d);
        assert_eq!(
            d["spec"]["strategy"],
            json!({"type": "RollingUpdate", "rollingUpdate": {"maxSurge": "25%", "maxUnavailable": "25%"}})
        );
        assert_eq!(
            (
                &d["spec"]["revisionHistoryLimit"],
                &d["spec"]["progressDeadlineSeconds"]
            ),
            (&json!(10), &json!(600))
        );
        // Each unset budget gets its own default; Recreate gets none.
        let mut d = web(json!({"strategy": {"rollingUpdate": {"maxSurge": 0}}}));
        default(res, &mut d);
        assert_eq!(
            d["spec"]["strategy"],
            json!({"type": "RollingUpdate", "rollingUpdate": {"maxSurge": 0, "maxUnavailable": "25%"}})
        );
        let mut d = web(json!({"strategy": {"type": "Recreate"}}));
        default(res, &mut d);
        assert_eq!(d["spec"]["strategy"], json!({"type": "Recreate"}));
        assert!(validate(res, &d).is_empty());
    }

    #[test]
    fn strategy_is_validated_as_kube_apiserver_does() {
        let res = by_kind("apps/v1", "Deployment").unwrap();
        let check = |spec: Value| {
            let mut d = web(spec);
            default(res, &mut d);
            validate(res, &d)
                .into_iter()
                .map(|c| format!("{}: {}", c.field, c.message))
                .collect::<Vec<_>>()
        };
        let ru = |surge: Value, unavailable: Value| {
            json!({"strategy": {"type": "RollingUpdate",
                "rollingUpdate": {"maxSurge": surge, "maxUnavailable": unavailable}}})
        };
        assert!(check(ru(json!(1), json!(0))).is_empty());
        assert!(check(ru(json!("0%"), json!("100%"))).is_empty());
        assert_eq!(
            check(ru(json!(0), json!(0))),
            [
                "spec.strategy.rollingUpdate.maxUnavailable: Invalid value: 0: may not be 0 when `maxSurge` is 0"
            ]
        );
        assert_eq!(
            check(ru(json!("0%"), json!("0%"))),
            [
                "spec.strategy.rollingUpdate.maxUnavailable: Invalid value: 0%: may not be 0 when `maxSurge` is 0"
            ]
        );
        assert_eq!(
            check(json!({"strategy": {"type": "Recreate", "rollingUpdate": {"maxSurge": 1}}})),
            [
                "spec.strategy.rollingUpdate: Forbidden: may not be specified when strategy `type` is 'Recreate'"
            ]
        );
        assert_eq!(
            check(ru(json!(-1), json!("150%"))),
            [
                "spec.strategy.rollingUpdate.maxSurge: Invalid value: -1: must be greater than or equal to 0",
                "spec.strategy.rollingUpdate.maxUnavailable: Invalid value: 150%: must not be greater than 100%",
            ]
        );
        assert_eq!(
            check(ru(json!("5"), json!("-5%"))),
            [
                format!(
                    "spec.strategy.rollingUpdate.maxUnavailable: Invalid value: -5%: {}",
                    crate::kinds::common::PERCENT_MSG
                ),
                format!(
                    "spec.strategy.rollingUpdate.maxSurge: Invalid value: 5: {}",
                    crate::kinds::common::PERCENT_MSG
                ),
            ]
        );
        assert_eq!(
            check(json!({"strategy": {"type": "BlueGreen"}})),
            [
                "spec.strategy.type: Unsupported value: \"BlueGreen\": supported values: \"Recreate\", \"RollingUpdate\""
            ]
        );
        assert_eq!(
            check(
                json!({"minReadySeconds": 30, "progressDeadlineSeconds": 30, "revisionHistoryLimit": -1})
            ),
            [
                "spec.revisionHistoryLimit: Invalid value: -1: must be greater than or equal to 0",
                "spec.progressDeadlineSeconds: Invalid value: 30: must be greater than minReadySeconds",
            ]
        );
    }

    /// A Deployment stored before these checks keeps working: an update that leaves its
    /// rollout settings alone is not refused for them.
    #[test]
    fn rollout_checks_apply_to_updates_only_when_touched() {
        let res = by_kind("apps/v1", "Deployment").unwrap();
        let mut old = web(json!({"strategy": {"type": "RollingUpdate",
            "rollingUpdate": {"maxSurge": 0, "maxUnavailable": 0}}}));
        default(res, &mut old);
        let mut relabelled = old.clone();
        relabelled["metadata"]["labels"] = json!({"team": "a"});
        assert!(validate_replacing(res, &relabelled, Some(&old)).is_empty());
        let mut changed = old.clone();
        changed["spec"]["strategy"]["rollingUpdate"]["maxSurge"] = json!("0%");
        assert_eq!(
            fields(&validate_replacing(res, &changed, Some(&old))),
            ["spec.strategy.rollingUpdate.maxUnavailable"]
        );
    }
}
