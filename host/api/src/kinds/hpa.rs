//! HorizontalPodAutoscalers (autoscaling/v2, stored; autoscaling/v1 is served by conversion,
//! see `kedge_core::autoscaling`): defaulted and checked as kube-apiserver's
//! `ValidateHorizontalPodAutoscaler` does, with kube's `kubectl get` columns. The controller is
//! the `hpa` plugin (`controllers-wasm/hpa`).
//!
//! What kedge cannot act on is refused with a 422 naming the field: metric sources other than
//! `Resource` and `ContainerResource` (Pods, Object and External metrics need a custom or
//! external metrics API kedge does not serve), resources other than `cpu` and `memory` (the
//! only ones `metrics.k8s.io` reports), targets other than Deployments, ReplicaSets and
//! StatefulSets of apps/v1, and the per-direction `tolerance` (alpha in Kubernetes 1.33).

use k8s_openapi::api::autoscaling::v1 as autoscaling_v1;
use k8s_openapi::api::autoscaling::v2 as autoscaling;
use serde_json::{Value, json};

use super::common::invalid_raw;
use super::table_fmt::{CREATED, Column, age, col, name, s};
use super::{KindRules, Typed, typed};
use crate::error::Cause;
use kedge_core::resources::Resource;

pub(super) struct HorizontalPodAutoscaler;

/// kube's default target when an HPA names no metric (`DefaultCPUUtilization`).
const DEFAULT_CPU_UTILIZATION: i64 = 80;
/// `MaxStabilizationWindowSeconds`, `MaxPeriodSeconds`.
const MAX_STABILIZATION_SECONDS: i64 = 3600;
const MAX_PERIOD_SECONDS: i64 = 1800;

const METRIC_TYPES: &[&str] = &[
    "ContainerResource",
    "External",
    "Object",
    "Pods",
    "Resource",
];
/// What kedge's controller computes.
const HONOURED_METRIC_TYPES: &[&str] = &["ContainerResource", "Resource"];
const HONOURED_RESOURCES: &[&str] = &["cpu", "memory"];
const SELECT_POLICIES: &[&str] = &["Disabled", "Max", "Min"];
const POLICY_TYPES: &[&str] = &["Percent", "Pods"];
/// The targets the controller scales (apps/v1).
pub(crate) const TARGET_KINDS: &[&str] = &["Deployment", "ReplicaSet", "StatefulSet"];

/// kubectl's HorizontalPodAutoscaler printer.
static COLUMNS: [Column; 7] = [
    col("Name", "string", 0),
    col("Reference", "string", 0),
    col("Targets", "string", 0),
    col("MinPods", "string", 0),
    col("MaxPods", "integer", 0),
    col("Replicas", "integer", 0),
    col("Age", "string", 0),
];

impl KindRules for HorizontalPodAutoscaler {
    fn default(&self, obj: &mut Value) {
        default_spec(obj);
    }

    fn initial_status(&self) -> Option<Value> {
        // kube-apiserver resets the status on create; v1 requires both counters.
        Some(json!({"currentReplicas": 0, "desiredReplicas": 0}))
    }

    fn validate(
        &self,
        _res: &Resource,
        obj: &Value,
        _old: Option<&Value>,
        causes: &mut Vec<Cause>,
    ) {
        validate_spec(obj.get("spec").unwrap_or(&Value::Null), causes);
        validate_status(obj.get("status").unwrap_or(&Value::Null), causes);
    }

    fn columns(&self) -> &'static [Column] {
        &COLUMNS
    }

    fn cells(&self, o: &Value, now: chrono::DateTime<chrono::Utc>) -> Vec<Value> {
        let reference = format!(
            "{}/{}",
            s(o, "/spec/scaleTargetRef/kind"),
            s(o, "/spec/scaleTargetRef/name")
        );
        let min = match o.pointer("/spec/minReplicas").and_then(Value::as_i64) {
            Some(n) => n.to_string(),
            None => "<unset>".into(),
        };
        vec![
            name(o),
            json!(reference),
            json!(targets(o)),
            json!(min),
            json!(
                o.pointer("/spec/maxReplicas")
                    .and_then(Value::as_i64)
                    .unwrap_or(0)
            ),
            json!(
                o.pointer("/status/currentReplicas")
                    .and_then(Value::as_i64)
                    .unwrap_or(0)
            ),
            json!(age(o, CREATED, now)),
        ]
    }

    fn typed(&self) -> Option<&'static dyn Typed> {
        typed::<autoscaling::HorizontalPodAutoscaler>()
    }
}

/// The typed form of autoscaling/v1, which has its own shape (its OpenAPI schema).
pub(super) fn v1_typed() -> Option<&'static dyn Typed> {
    typed::<autoscaling_v1::HorizontalPodAutoscaler>()
}

/// kubectl's `formatHPAMetrics`: `cpu: 40%/50%` per metric, the current value from the status
/// entry of the same index, at most two then `+ N more...`.
fn targets(o: &Value) -> String {
    let specs = o
        .pointer("/spec/metrics")
        .and_then(Value::as_array)
        .cloned()
        .unwrap_or_default();
    if specs.is_empty() {
        return "<none>".into();
    }
    let statuses = o
        .pointer("/status/currentMetrics")
        .and_then(Value::as_array)
        .cloned()
        .unwrap_or_default();
    let mut list = Vec::new();
    for (i, spec) in specs.iter().enumerate() {
        let key = match spec["type"].as_str() {
            Some("Resource") => "resource",
            Some("ContainerResource") => "containerResource",
            _ => {
                list.push("<unknown type>".to_string());
                continue;
            }
        };
        let src = &spec[key];
        let current = statuses.get(i).map(|st| &st[key]["current"]);
        let resource = src["name"].as_str().unwrap_or_default();
        let name = if key == "containerResource" {
            format!(
                "{resource} of container \"{}\"",
                src["container"].as_str().unwrap_or_default()
            )
        } else {
            resource.to_string()
        };
        let cell = if let Some(target) = src["target"]["averageValue"].as_str() {
            let now = current
                .and_then(|c| c["averageValue"].as_str())
                .unwrap_or("<unknown>");
            format!("{name}: {now}/{target}")
        } else {
            let now = current
                .and_then(|c| c["averageUtilization"].as_i64())
                .map_or("<unknown>".to_string(), |u| format!("{u}%"));
            let target = src["target"]["averageUtilization"]
                .as_i64()
                .map_or("<auto>".to_string(), |u| format!("{u}%"));
            format!("{name}: {now}/{target}")
        };
        list.push(cell);
    }
    let count = list.len();
    if count > 2 {
        format!("{} + {} more...", list[..2].join(", "), count - 2)
    } else {
        list.join(", ")
    }
}

/// kube's v2 defaults (`SetDefaults_HorizontalPodAutoscaler`): `minReplicas` 1, the CPU target
/// of 80 % when no metric is named, and a given `behavior`'s missing parts from the defaults
/// (scale up: no stabilisation, the larger of 4 pods and 100 % per 15 s; scale down: 100 % per
/// 15 s, the window left to the controller).
fn default_spec(obj: &mut Value) {
    let Some(spec) = obj.get_mut("spec").and_then(Value::as_object_mut) else {
        return;
    };
    if spec.get("minReplicas").is_none_or(Value::is_null) {
        spec.insert("minReplicas".into(), json!(1));
    }
    if spec
        .get("metrics")
        .is_none_or(|m| m.as_array().is_none_or(Vec::is_empty))
    {
        spec.insert(
            "metrics".into(),
            json!([{"type": "Resource", "resource": {"name": "cpu",
                "target": {"type": "Utilization", "averageUtilization": DEFAULT_CPU_UTILIZATION}}}]),
        );
    }
    let Some(behavior) = spec.get_mut("behavior").and_then(Value::as_object_mut) else {
        return;
    };
    let up = behavior.entry("scaleUp").or_insert_with(|| json!({}));
    if up.is_null() {
        *up = json!({});
    }
    if let Some(up) = up.as_object_mut() {
        up.entry("stabilizationWindowSeconds").or_insert(json!(0));
        up.entry("selectPolicy").or_insert(json!("Max"));
        up.entry("policies").or_insert(json!([
            {"type": "Pods", "value": 4, "periodSeconds": 15},
            {"type": "Percent", "value": 100, "periodSeconds": 15}]));
    }
    let down = behavior.entry("scaleDown").or_insert_with(|| json!({}));
    if down.is_null() {
        *down = json!({});
    }
    if let Some(down) = down.as_object_mut() {
        down.entry("selectPolicy").or_insert(json!("Max"));
        down.entry("policies").or_insert(json!([
            {"type": "Percent", "value": 100, "periodSeconds": 15}]));
    }
}

/// `IsValidPathSegmentName`.
fn path_segment_errors(name: &str) -> Vec<String> {
    let mut out = Vec::new();
    if name == "." || name == ".." {
        out.push(format!("may not be '{name}'"));
    }
    for bad in ["/", "%"] {
        if name.contains(bad) {
            out.push(format!("may not contain '{bad}'"));
        }
    }
    out
}

fn int(v: &Value) -> String {
    v.to_string()
}

/// kube-apiserver's `ValidateHorizontalPodAutoscalerSpec` (minReplicas, maxReplicas, the
/// target reference, metrics, behavior, in that order) and kedge's refusals.
fn validate_spec(spec: &Value, causes: &mut Vec<Cause>) {
    let min = spec.get("minReplicas").filter(|v| !v.is_null());
    if let Some(m) = min
        && m.as_i64().is_none_or(|n| n < 1)
    {
        causes.push(invalid_raw(
            "spec.minReplicas",
            &int(m),
            "must be greater than or equal to 1",
        ));
    }
    let max = spec.get("maxReplicas").and_then(Value::as_i64).unwrap_or(0);
    if max < 1 {
        causes.push(invalid_raw(
            "spec.maxReplicas",
            &max.to_string(),
            "must be greater than 0",
        ));
    }
    if let Some(m) = min.and_then(Value::as_i64)
        && max < m
    {
        causes.push(invalid_raw(
            "spec.maxReplicas",
            &max.to_string(),
            "must be greater than or equal to `minReplicas`",
        ));
    }
    validate_target_ref(spec.get("scaleTargetRef").unwrap_or(&Value::Null), causes);
    for (i, m) in spec
        .get("metrics")
        .and_then(Value::as_array)
        .into_iter()
        .flatten()
        .enumerate()
    {
        validate_metric(m, &format!("spec.metrics[{i}]"), causes);
    }
    if let Some(b) = spec.get("behavior").filter(|v| !v.is_null()) {
        for dir in ["scaleUp", "scaleDown"] {
            if let Some(r) = b.get(dir).filter(|v| !v.is_null()) {
                validate_rules(r, &format!("spec.behavior.{dir}"), causes);
            }
        }
    }
}

fn validate_target_ref(r: &Value, causes: &mut Vec<Cause>) {
    let at = "spec.scaleTargetRef";
    let kind = r["kind"].as_str().unwrap_or_default();
    if kind.is_empty() {
        causes.push(Cause::required(format!("{at}.kind")));
    } else {
        for why in path_segment_errors(kind) {
            causes.push(Cause::invalid(format!("{at}.kind"), kind, why));
        }
    }
    let name = r["name"].as_str().unwrap_or_default();
    if name.is_empty() {
        causes.push(Cause::required(format!("{at}.name")));
    } else {
        for why in path_segment_errors(name) {
            causes.push(Cause::invalid(format!("{at}.name"), name, why));
        }
    }
    // kedge's controller scales the apps/v1 workloads.
    let api_version = r["apiVersion"].as_str().unwrap_or_default();
    if !api_version.is_empty() && api_version != "apps/v1" {
        causes.push(Cause::unsupported(
            format!("{at}.apiVersion"),
            api_version,
            &["apps/v1"],
        ));
    }
    if !kind.is_empty() && !TARGET_KINDS.contains(&kind) {
        causes.push(Cause::unsupported(format!("{at}.kind"), kind, TARGET_KINDS));
    }
}

/// `validateMetricSpec` with the source checks kedge honours.
fn validate_metric(m: &Value, at: &str, causes: &mut Vec<Cause>) {
    let ty = m["type"].as_str().unwrap_or_default();
    if ty.is_empty() {
        causes.push(Cause::required_with(
            format!("{at}.type"),
            "must specify a metric source type",
        ));
    }
    if !METRIC_TYPES.contains(&ty) {
        causes.push(Cause::unsupported(format!("{at}.type"), ty, METRIC_TYPES));
        return;
    }
    let expected = match ty {
        "Resource" => "resource",
        "ContainerResource" => "containerResource",
        "Pods" => "pods",
        "Object" => "object",
        _ => "external",
    };
    let present: Vec<&str> = [
        "object",
        "pods",
        "resource",
        "containerResource",
        "external",
    ]
    .into_iter()
    .filter(|k| m.get(*k).is_some_and(|v| !v.is_null()))
    .collect();
    if !HONOURED_METRIC_TYPES.contains(&ty) {
        causes.push(Cause::forbidden(
            format!("{at}.type"),
            format!(
                "not supported by kedge: {ty} metrics need a custom or external metrics API; \
                 kedge's controller computes Resource and ContainerResource metrics \
                 (cpu, memory) from metrics.k8s.io"
            ),
        ));
    } else {
        match m.get(expected).filter(|v| !v.is_null()) {
            None => causes.push(Cause::required_with(
                format!("{at}.{expected}"),
                "must populate information for the given metric source",
            )),
            Some(src) => validate_resource_source(src, &format!("{at}.{expected}"), ty, causes),
        }
    }
    if present.len() > 1 {
        for other in present.iter().filter(|k| **k != expected) {
            causes.push(Cause::forbidden(
                format!("{at}.{other}"),
                "must populate the given metric source only",
            ));
        }
    }
}

/// `validateResourceSource` / `validateContainerResourceSource`, `validateMetricTarget`.
fn validate_resource_source(src: &Value, at: &str, ty: &str, causes: &mut Vec<Cause>) {
    let name = src["name"].as_str().unwrap_or_default();
    if name.is_empty() {
        causes.push(Cause::required_with(
            format!("{at}.name"),
            "must specify a resource name",
        ));
    } else if !HONOURED_RESOURCES.contains(&name) {
        causes.push(Cause::unsupported(
            format!("{at}.name"),
            name,
            HONOURED_RESOURCES,
        ));
    }
    if ty == "ContainerResource" {
        let container = src["container"].as_str().unwrap_or_default();
        if container.is_empty() {
            causes.push(Cause::required_with(
                format!("{at}.container"),
                "must specify a container",
            ));
        } else if let Err(why) = kedge_core::meta::validate_label(container) {
            causes.push(Cause::invalid(format!("{at}.container"), container, why));
        }
    }
    let target = src.get("target").unwrap_or(&Value::Null);
    let tat = format!("{at}.target");
    let target_type = target["type"].as_str().unwrap_or_default();
    if target_type.is_empty() {
        causes.push(Cause::required_with(
            format!("{tat}.type"),
            "must specify a metric target type",
        ));
    }
    if !["Utilization", "Value", "AverageValue"].contains(&target_type) {
        causes.push(Cause::invalid(
            format!("{tat}.type"),
            target_type,
            "must be either Utilization, Value, or AverageValue",
        ));
    }
    for field in ["value", "averageValue"] {
        if let Some(q) = target.get(field).filter(|v| !v.is_null()) {
            let text = q.as_str().map_or_else(|| q.to_string(), str::to_owned);
            let positive = match name {
                "memory" => kedge_core::quantity::parse_bytes(&text).is_ok_and(|b| b > 0),
                _ => kedge_core::quantity::parse_cpu_millis(&text).is_ok_and(|m| m > 0),
            };
            if !positive {
                causes.push(invalid_raw(
                    format!("{tat}.{field}"),
                    &format!("\"{text}\""),
                    "must be positive",
                ));
            }
        }
    }
    let utilization = target.get("averageUtilization").filter(|v| !v.is_null());
    if let Some(u) = utilization
        && u.as_i64().is_none_or(|n| n < 1)
    {
        causes.push(invalid_raw(
            format!("{tat}.averageUtilization"),
            &int(u),
            "must be greater than 0",
        ));
    }
    let average = target.get("averageValue").filter(|v| !v.is_null());
    if utilization.is_none() && average.is_none() {
        causes.push(Cause::required_with(
            format!("{tat}.averageUtilization"),
            "must set either a target raw value or a target utilization",
        ));
    }
    if utilization.is_some() && average.is_some() {
        causes.push(Cause::forbidden(
            format!("{tat}.averageValue"),
            "may not set both a target raw value and a target utilization",
        ));
    }
}

/// `validateScalingRules` and `validateScalingPolicy`.
fn validate_rules(r: &Value, at: &str, causes: &mut Vec<Cause>) {
    if let Some(w) = r.get("stabilizationWindowSeconds").filter(|v| !v.is_null()) {
        let n = w.as_i64().unwrap_or(-1);
        if n < 0 {
            causes.push(invalid_raw(
                format!("{at}.stabilizationWindowSeconds"),
                &int(w),
                "must be greater than or equal to zero",
            ));
        }
        if n > MAX_STABILIZATION_SECONDS {
            causes.push(invalid_raw(
                format!("{at}.stabilizationWindowSeconds"),
                &int(w),
                &format!("must be less than or equal to {MAX_STABILIZATION_SECONDS}"),
            ));
        }
    }
    if let Some(p) = r.get("selectPolicy").and_then(Value::as_str)
        && !SELECT_POLICIES.contains(&p)
    {
        causes.push(Cause::unsupported(
            format!("{at}.selectPolicy"),
            p,
            SELECT_POLICIES,
        ));
    }
    let policies = r
        .get("policies")
        .and_then(Value::as_array)
        .cloned()
        .unwrap_or_default();
    if policies.is_empty() {
        causes.push(Cause::required_with(
            format!("{at}.policies"),
            "must specify at least one Policy",
        ));
    }
    for (i, p) in policies.iter().enumerate() {
        let pat = format!("{at}.policies[{i}]");
        let ty = p["type"].as_str().unwrap_or_default();
        if !POLICY_TYPES.contains(&ty) {
            causes.push(Cause::unsupported(format!("{pat}.type"), ty, POLICY_TYPES));
        }
        let value = p["value"].as_i64().unwrap_or(0);
        if value <= 0 {
            causes.push(invalid_raw(
                format!("{pat}.value"),
                &value.to_string(),
                "must be greater than zero",
            ));
        }
        let period = p["periodSeconds"].as_i64().unwrap_or(0);
        if period <= 0 {
            causes.push(invalid_raw(
                format!("{pat}.periodSeconds"),
                &period.to_string(),
                "must be greater than zero",
            ));
        }
        if period > MAX_PERIOD_SECONDS {
            causes.push(invalid_raw(
                format!("{pat}.periodSeconds"),
                &period.to_string(),
                &format!("must be less than or equal to {MAX_PERIOD_SECONDS}"),
            ));
        }
    }
    if r.get("tolerance").is_some_and(|v| !v.is_null()) {
        causes.push(Cause::forbidden(
            format!("{at}.tolerance"),
            "not supported by kedge: the tolerance is the controller's (10 %, \
             `tolerance` in the kube-system/kedge-hpa-controller ConfigMap)",
        ));
    }
}

/// `ValidateHorizontalPodAutoscalerStatusUpdate`: the replica counts are not negative.
fn validate_status(status: &Value, causes: &mut Vec<Cause>) {
    for field in ["currentReplicas", "desiredReplicas"] {
        if let Some(v) = status.get(field).and_then(Value::as_i64)
            && v < 0
        {
            causes.push(invalid_raw(
                format!("status.{field}"),
                &v.to_string(),
                "must be greater than or equal to 0",
            ));
        }
    }
}

#[cfg(test)]
mod tests {
    use super::super::test_support::*;
    use super::*;

    fn hpa(spec: Value) -> Value {
        json!({"apiVersion": "autoscaling/v2", "kind": "HorizontalPodAutoscaler",
            "metadata": {"name": "web", "namespace": "default"}, "spec": spec})
    }

    fn res() -> &'static Resource {
        by_kind("autoscaling/v2", "HorizontalPodAutoscaler").unwrap()
    }

    fn target() -> Value {
        json!({"apiVersion": "apps/v1", "kind": "Deployment", "name": "web"})
    }

    fn checked(spec: Value) -> Vec<Cause> {
        let mut o = hpa(spec);
        default(res(), &mut o);
        validate(res(), &o)
    }

    #[test]
    fn defaults_as_kube_apiserver() {
        let mut o = hpa(json!({"scaleTargetRef": target(), "maxReplicas": 3,
            "behavior": {"scaleDown": {"stabilizationWindowSeconds": 60}}}));
        default(res(), &mut o);
        assert_eq!(o["spec"]["minReplicas"], 1);
        assert_eq!(
            o["spec"]["metrics"][0]["resource"]["target"]["averageUtilization"],
            80
        );
        let b = &o["spec"]["behavior"];
        assert_eq!(b["scaleUp"]["stabilizationWindowSeconds"], 0);
        assert_eq!(b["scaleUp"]["policies"].as_array().unwrap().len(), 2);
        assert_eq!(b["scaleDown"]["stabilizationWindowSeconds"], 60);
        assert_eq!(b["scaleDown"]["selectPolicy"], "Max");
        assert!(validate(res(), &o).is_empty(), "{:?}", validate(res(), &o));
        // Without behavior, none is made up (the controller applies the defaults).
        let mut plain = hpa(json!({"scaleTargetRef": target(), "maxReplicas": 3}));
        default(res(), &mut plain);
        assert!(plain["spec"].get("behavior").is_none());
    }

    #[test]
    fn spec_rules_in_kube_order_and_wording() {
        let causes = checked(json!({"scaleTargetRef": {}, "minReplicas": 0, "maxReplicas": 0}));
        assert_eq!(
            field_reasons(&causes),
            [
                ("spec.minReplicas", "FieldValueInvalid"),
                ("spec.maxReplicas", "FieldValueInvalid"),
                ("spec.scaleTargetRef.kind", "FieldValueRequired"),
                ("spec.scaleTargetRef.name", "FieldValueRequired"),
            ]
        );
        assert_eq!(
            causes[0].message,
            "Invalid value: 0: must be greater than or equal to 1"
        );
        let causes =
            checked(json!({"scaleTargetRef": target(), "minReplicas": 5, "maxReplicas": 3}));
        assert_eq!(
            causes[0].message,
            "Invalid value: 3: must be greater than or equal to `minReplicas`"
        );
        let causes =
            checked(json!({"scaleTargetRef": {"kind": "Foo/x", "name": "a"}, "maxReplicas": 3}));
        assert_eq!(
            fields(&causes),
            ["spec.scaleTargetRef.kind", "spec.scaleTargetRef.kind"]
        );
    }

    #[test]
    fn metrics_kedge_cannot_compute_are_refused_by_field() {
        for (metric, field, reason) in [
            (
                json!({"type": "Pods", "pods": {"metric": {"name": "qps"}, "target": {"type": "AverageValue", "averageValue": "1"}}}),
                "spec.metrics[0].type",
                "FieldValueForbidden",
            ),
            (
                json!({"type": "External", "external": {}}),
                "spec.metrics[0].type",
                "FieldValueForbidden",
            ),
            (
                json!({"type": "Object", "object": {}}),
                "spec.metrics[0].type",
                "FieldValueForbidden",
            ),
            (
                json!({"type": "Resource", "resource": {"name": "ephemeral-storage", "target": {"type": "AverageValue", "averageValue": "1Gi"}}}),
                "spec.metrics[0].resource.name",
                "FieldValueNotSupported",
            ),
            (
                json!({"type": "Resource", "resource": {"name": "cpu", "target": {"type": "Utilization"}}}),
                "spec.metrics[0].resource.target.averageUtilization",
                "FieldValueRequired",
            ),
            (
                json!({"type": "Resource", "resource": {"name": "cpu", "target": {"type": "Utilization", "averageUtilization": 0}}}),
                "spec.metrics[0].resource.target.averageUtilization",
                "FieldValueInvalid",
            ),
            (
                json!({"type": "Resource", "resource": {"name": "memory", "target": {"type": "AverageValue", "averageValue": "0"}}}),
                "spec.metrics[0].resource.target.averageValue",
                "FieldValueInvalid",
            ),
            (
                json!({"type": "ContainerResource", "containerResource": {"name": "cpu", "target": {"type": "Utilization", "averageUtilization": 50}}}),
                "spec.metrics[0].containerResource.container",
                "FieldValueRequired",
            ),
            (
                json!({"type": "Resource"}),
                "spec.metrics[0].resource",
                "FieldValueRequired",
            ),
            (
                json!({"type": "Bogus"}),
                "spec.metrics[0].type",
                "FieldValueNotSupported",
            ),
        ] {
            let causes =
                checked(json!({"scaleTargetRef": target(), "maxReplicas": 3, "metrics": [metric]}));
            assert_eq!(field_reasons(&causes), [(field, reason)], "{metric}");
        }
        let causes = checked(
            json!({"scaleTargetRef": target(), "maxReplicas": 3, "metrics": [
            {"type": "Pods", "pods": {}}]}),
        );
        assert!(
            causes[0].message.contains("not supported by kedge"),
            "{}",
            causes[0].message
        );
        // Both shapes of one metric: the other is forbidden.
        let causes = checked(
            json!({"scaleTargetRef": target(), "maxReplicas": 3, "metrics": [
            {"type": "Resource", "resource": {"name": "cpu", "target": {"type": "Utilization", "averageUtilization": 5}},
             "pods": {}}]}),
        );
        assert_eq!(
            field_reasons(&causes),
            [("spec.metrics[0].pods", "FieldValueForbidden")]
        );
        // What kedge honours.
        assert!(checked(json!({"scaleTargetRef": target(), "maxReplicas": 3, "metrics": [
            {"type": "Resource", "resource": {"name": "memory", "target": {"type": "AverageValue", "averageValue": "64Mi"}}},
            {"type": "ContainerResource", "containerResource": {"name": "cpu", "container": "app", "target": {"type": "Utilization", "averageUtilization": 60}}}]}))
        .is_empty());
    }

    #[test]
    fn targets_kedge_cannot_scale_are_refused() {
        let causes = checked(
            json!({"scaleTargetRef": {"apiVersion": "v1", "kind": "ReplicationController", "name": "a"}, "maxReplicas": 3}),
        );
        assert_eq!(
            field_reasons(&causes),
            [
                ("spec.scaleTargetRef.apiVersion", "FieldValueNotSupported"),
                ("spec.scaleTargetRef.kind", "FieldValueNotSupported")
            ]
        );
    }

    #[test]
    fn behavior_rules() {
        let causes = checked(
            json!({"scaleTargetRef": target(), "maxReplicas": 3, "behavior": {
            "scaleUp": {"stabilizationWindowSeconds": 3601, "selectPolicy": "Most", "policies": []},
            "scaleDown": {"stabilizationWindowSeconds": -1, "policies": [
                {"type": "Replicas", "value": 0, "periodSeconds": 1801}], "tolerance": "0.05"}}}),
        );
        assert_eq!(
            field_reasons(&causes),
            [
                (
                    "spec.behavior.scaleUp.stabilizationWindowSeconds",
                    "FieldValueInvalid"
                ),
                (
                    "spec.behavior.scaleUp.selectPolicy",
                    "FieldValueNotSupported"
                ),
                ("spec.behavior.scaleUp.policies", "FieldValueRequired"),
                (
                    "spec.behavior.scaleDown.stabilizationWindowSeconds",
                    "FieldValueInvalid"
                ),
                (
                    "spec.behavior.scaleDown.policies[0].type",
                    "FieldValueNotSupported"
                ),
                (
                    "spec.behavior.scaleDown.policies[0].value",
                    "FieldValueInvalid"
                ),
                (
                    "spec.behavior.scaleDown.policies[0].periodSeconds",
                    "FieldValueInvalid"
                ),
                ("spec.behavior.scaleDown.tolerance", "FieldValueForbidden"),
            ]
        );
        assert_eq!(
            causes[1].message,
            "Unsupported value: \"Most\": supported values: \"Disabled\", \"Max\", \"Min\""
        );
    }

    #[test]
    fn targets_column_as_kubectl_prints_it() {
        let mut o = hpa(
            json!({"scaleTargetRef": target(), "maxReplicas": 3, "metrics": [
            {"type": "Resource", "resource": {"name": "cpu", "target": {"type": "Utilization", "averageUtilization": 50}}},
            {"type": "Resource", "resource": {"name": "memory", "target": {"type": "AverageValue", "averageValue": "64Mi"}}}]}),
        );
        assert_eq!(targets(&o), "cpu: <unknown>/50%, memory: <unknown>/64Mi");
        o["status"] = json!({"currentMetrics": [
            {"type": "Resource", "resource": {"name": "cpu", "current": {"averageUtilization": 12, "averageValue": "12m"}}},
            {"type": "Resource", "resource": {"name": "memory", "current": {"averageValue": "10Mi"}}}]});
        assert_eq!(targets(&o), "cpu: 12%/50%, memory: 10Mi/64Mi");
        let m = o["spec"]["metrics"][0].clone();
        o["spec"]["metrics"] = json!([m.clone(), m.clone(), m]);
        assert!(targets(&o).ends_with(" + 1 more..."));
        let cells = HorizontalPodAutoscaler.cells(&o, chrono::Utc::now());
        assert_eq!(cells[1], "Deployment/web");
        assert_eq!(cells[3], "<unset>");
        assert_eq!(cells[4], 3);
    }
}
