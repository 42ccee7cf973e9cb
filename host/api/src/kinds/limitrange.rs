//! LimitRanges: per-container, per-pod and per-claim bounds and container defaults,
//! enforced on create by [`crate::admission`] (kube's LimitRanger). Defaulted and validated
//! as kube-apiserver does (`SetDefaults_LimitRangeItem`, `ValidateLimitRange`).

use k8s_openapi::api::core::v1 as core;
use serde_json::{Map, Value, json};

use super::resourcequota::check_quantities;
use super::table_fmt::{Column, col, name, s};
use super::{KindRules, Typed, typed};
use crate::admission::Qty;
use crate::error::Cause;
use kedge_core::resources::Resource;

pub(super) struct LimitRange;

/// kubectl's LimitRange printer.
static COLUMNS: [Column; 2] = [col("Name", "string", 0), col("Created At", "date", 0)];

const TYPES: &[&str] = &["Pod", "Container", "PersistentVolumeClaim"];

/// SetDefaults_LimitRangeItem, for Container items: a default limit from `max`, a default
/// request from the default limit, else from `min`.
fn default_item(item: &mut Value) {
    if item.get("type").and_then(Value::as_str) != Some("Container") {
        return;
    }
    let get = |item: &Value, f: &str| -> Map<String, Value> {
        item.get(f)
            .and_then(Value::as_object)
            .cloned()
            .unwrap_or_default()
    };
    let mut default = get(item, "default");
    for (k, v) in get(item, "max") {
        default.entry(k).or_insert(v);
    }
    let mut request = get(item, "defaultRequest");
    for (k, v) in default.iter() {
        request.entry(k.clone()).or_insert(v.clone());
    }
    for (k, v) in get(item, "min") {
        request.entry(k).or_insert(v);
    }
    if !default.is_empty() {
        item["default"] = Value::Object(default);
    }
    if !request.is_empty() {
        item["defaultRequest"] = Value::Object(request);
    }
}

impl KindRules for LimitRange {
    fn default(&self, obj: &mut Value) {
        if let Some(items) = obj
            .pointer_mut("/spec/limits")
            .and_then(Value::as_array_mut)
        {
            items.iter_mut().for_each(default_item);
        }
    }

    fn validate(
        &self,
        _res: &Resource,
        obj: &Value,
        _old: Option<&Value>,
        causes: &mut Vec<Cause>,
    ) {
        let items = obj
            .pointer("/spec/limits")
            .and_then(Value::as_array)
            .cloned()
            .unwrap_or_default();
        let mut seen = Vec::new();
        for (i, item) in items.iter().enumerate() {
            let at = format!("spec.limits[{i}]");
            let ty = s(item, "/type");
            if !TYPES.contains(&ty) {
                causes.push(Cause::unsupported(format!("{at}.type"), ty, TYPES));
                continue;
            }
            if seen.contains(&ty) {
                causes.push(super::common::duplicate(format!("{at}.type"), ty));
                continue;
            }
            seen.push(ty);
            let allowed: &[&str] = if ty == "PersistentVolumeClaim" {
                &["storage"]
            } else {
                &["cpu", "memory"]
            };
            for f in [
                "max",
                "min",
                "default",
                "defaultRequest",
                "maxLimitRequestRatio",
            ] {
                let not_here = match (ty, f) {
                    ("Pod", "default" | "defaultRequest") => {
                        Some("may not be specified when `type` is 'Pod'".to_string())
                    }
                    (
                        "PersistentVolumeClaim",
                        "default" | "defaultRequest" | "maxLimitRequestRatio",
                    ) => Some(format!(
                        "not supported by kedge: LimitRanger sets no {f} on claims"
                    )),
                    _ => None,
                };
                if let Some(why) = not_here
                    && item
                        .get(f)
                        .and_then(Value::as_object)
                        .is_some_and(|m| !m.is_empty())
                {
                    causes.push(Cause::forbidden(format!("{at}.{f}"), why));
                    continue;
                }
                let known = |k: &str| {
                    (!allowed.contains(&k)).then(|| {
                        format!(
                            "a {ty} limit may name only {} (what kedge schedules and enforces)",
                            allowed.join(" and ")
                        )
                    })
                };
                check_quantities(item.get(f), &format!("{at}.{f}"), known, causes);
            }
            let q = |f: &str, k: &str| -> Option<(Qty, String)> {
                let text = item.get(f)?.get(k)?.as_str()?.to_string();
                Some((Qty::parse(&text)?, text))
            };
            if ty == "PersistentVolumeClaim"
                && q("min", "storage").is_none()
                && q("max", "storage").is_none()
            {
                causes.push(Cause::required_with(
                    format!("{at}.limits"),
                    "either minimum or maximum storage value is required, but neither was provided",
                ));
            }
            for k in allowed {
                let field = |f: &str| format!("{at}.{f}[{k}]");
                let (min, max) = (q("min", k), q("max", k));
                let (def, req) = (q("default", k), q("defaultRequest", k));
                let gt = |a: &Option<(Qty, String)>, b: &Option<(Qty, String)>| match (a, b) {
                    (Some(a), Some(b)) => {
                        (a.0.milli() > b.0.milli()).then(|| (a.1.clone(), b.1.clone()))
                    }
                    _ => None,
                };
                if let Some((a, b)) = gt(&min, &max) {
                    causes.push(Cause::invalid(
                        field("min"),
                        &a,
                        format!("min value {a} is greater than max value {b}"),
                    ));
                }
                if let Some((a, b)) = gt(&req, &max) {
                    causes.push(Cause::invalid(
                        field("defaultRequest"),
                        &a,
                        format!("default request value {a} is greater than max value {b}"),
                    ));
                }
                if let Some((a, b)) = gt(&min, &req) {
                    causes.push(Cause::invalid(
                        field("min"),
                        &a,
                        format!("min value {a} is greater than default request value {b}"),
                    ));
                }
                if let Some((a, b)) = gt(&req, &def) {
                    causes.push(Cause::invalid(
                        field("defaultRequest"),
                        &a,
                        format!(
                            "default request value {a} is greater than default limit value {b}"
                        ),
                    ));
                }
                if let Some((a, b)) = gt(&def, &max) {
                    causes.push(Cause::invalid(
                        field("default"),
                        &a,
                        format!("default value {a} is greater than max value {b}"),
                    ));
                }
                if let Some((a, b)) = gt(&min, &def) {
                    causes.push(Cause::invalid(
                        field("min"),
                        &a,
                        format!("min value {a} is greater than default value {b}"),
                    ));
                }
                if let Some((ratio, text)) = q("maxLimitRequestRatio", k) {
                    if ratio.milli() < 1000 {
                        causes.push(Cause::invalid(
                            field("maxLimitRequestRatio"),
                            &text,
                            format!("ratio {text} is less than 1"),
                        ));
                    } else if let (Some(mn), Some(mx)) = (&min, &max)
                        && mn.0.milli() > 0
                    {
                        #[allow(clippy::cast_precision_loss)] // as kube-apiserver: float64
                        let most = mx.0.milli() as f64 / mn.0.milli() as f64;
                        #[allow(clippy::cast_precision_loss)]
                        if ratio.milli() as f64 / 1000.0 > most {
                            causes.push(Cause::invalid(
                                field("maxLimitRequestRatio"),
                                &text,
                                format!("ratio {text} is greater than max/min = {most:.6}"),
                            ));
                        }
                    }
                }
            }
        }
    }

    fn columns(&self) -> &'static [Column] {
        &COLUMNS
    }

    fn cells(&self, o: &Value, _now: chrono::DateTime<chrono::Utc>) -> Vec<Value> {
        vec![name(o), json!(s(o, "/metadata/creationTimestamp"))]
    }

    fn typed(&self) -> Option<&'static dyn Typed> {
        typed::<core::LimitRange>()
    }
}

#[cfg(test)]
mod tests {
    use super::super::test_support::*;

    fn range(limits: Value) -> Value {
        json!({"metadata": {"name": "lr", "namespace": "d"}, "spec": {"limits": limits}})
    }

    #[test]
    fn container_defaults_follow_max_and_min() {
        let lr = by_kind("v1", "LimitRange").unwrap();
        let mut o = range(
            json!([{"type": "Container", "max": {"cpu": "1", "memory": "1Gi"},
            "min": {"memory": "10Mi"}, "default": {"memory": "512Mi"}}]),
        );
        default(lr, &mut o);
        assert_eq!(
            o["spec"]["limits"][0]["default"],
            json!({"cpu": "1", "memory": "512Mi"})
        );
        assert_eq!(
            o["spec"]["limits"][0]["defaultRequest"],
            json!({"cpu": "1", "memory": "512Mi"})
        );
        assert!(validate(lr, &o).is_empty(), "{:?}", validate(lr, &o));
    }

    #[test]
    fn bad_ranges_are_refused_with_kubes_wording() {
        let lr = by_kind("v1", "LimitRange").unwrap();
        let o = range(json!([
            {"type": "Container", "min": {"cpu": "2"}, "max": {"cpu": "1", "ephemeral-storage": "1Gi"}},
            {"type": "Pod", "default": {"cpu": "1"}},
            {"type": "Container"},
            {"type": "Volume"},
            {"type": "PersistentVolumeClaim"},
        ]));
        let causes = validate(lr, &o);
        assert_eq!(
            field_reasons(&causes),
            [
                (
                    "spec.limits[0].max[ephemeral-storage]",
                    "FieldValueForbidden"
                ),
                ("spec.limits[0].min[cpu]", "FieldValueInvalid"),
                ("spec.limits[1].default", "FieldValueForbidden"),
                ("spec.limits[2].type", "FieldValueDuplicate"),
                ("spec.limits[3].type", "FieldValueNotSupported"),
                ("spec.limits[4].limits", "FieldValueRequired"),
            ]
        );
        assert!(
            causes[1]
                .message
                .contains("min value 2 is greater than max value 1")
        );
    }
}
