//! HorizontalPodAutoscaler between `autoscaling/v1` (what `kubectl autoscale` sends) and the
//! stored `autoscaling/v2`, as kube-apiserver converts them (`pkg/apis/autoscaling/v1`'s
//! conversion): v1's `targetCPUUtilizationPercentage` is v2's Resource `cpu` `Utilization`
//! metric; what v1 has no field for travels in kube's `autoscaling.alpha.kubernetes.io/…`
//! annotations (other metrics, `behavior`, current metrics, conditions), so either version
//! reads and writes the same object without loss. Both directions accept partial objects
//! (apply configurations).

use serde_json::{Map, Value, json};

/// v1 annotation holding the metrics other than the CPU utilization one (v1 `MetricSpec`s).
pub const METRIC_SPECS: &str = "autoscaling.alpha.kubernetes.io/metrics";
/// v1 annotation holding `status.currentMetrics` (v1 `MetricStatus`es).
pub const METRIC_STATUSES: &str = "autoscaling.alpha.kubernetes.io/current-metrics";
/// v1 annotation holding `status.conditions`.
pub const CONDITIONS: &str = "autoscaling.alpha.kubernetes.io/conditions";
/// v1 annotation holding `spec.behavior`.
pub const BEHAVIOR: &str = "autoscaling.alpha.kubernetes.io/behavior";

fn is_cpu_utilization(m: &Value) -> bool {
    m["type"] == "Resource"
        && m["resource"]["name"] == "cpu"
        && m["resource"]["target"]["averageUtilization"].is_i64()
}

/// Moves `from[key]` to `to[key]` when present.
fn carry(from: &Value, to: &mut Map<String, Value>, key: &str) {
    if let Some(v) = from.get(key).filter(|v| !v.is_null()) {
        to.insert(key.into(), v.clone());
    }
}

/// The field holding a metric of a resource type (the types v1 has fields of its own for).
fn resource_key(ty: &str) -> Option<&'static str> {
    match ty {
        "Resource" => Some("resource"),
        "ContainerResource" => Some("containerResource"),
        _ => None,
    }
}

/// A v2 `MetricSpec` (`part` "target") or `MetricStatus` (`part` "current") of a resource
/// kind as v1 writes it (`targetAverageUtilization`, `currentAverageValue`, …); other types
/// keep their v2 form under their v2 key, which v1 clients do not read and
/// [`metric_spec_up`] / [`metric_status_up`] bring back.
fn metric_down(m: &Value, part: &str) -> Value {
    let ty = m["type"].as_str().unwrap_or_default();
    let Some(key) = resource_key(ty) else {
        return m.clone();
    };
    let src = &m[key];
    let mut out = Map::new();
    carry(src, &mut out, "name");
    carry(src, &mut out, "container");
    for (v2, v1) in [
        ("averageUtilization", "AverageUtilization"),
        ("averageValue", "AverageValue"),
    ] {
        if let Some(v) = src[part].get(v2).filter(|v| !v.is_null()) {
            out.insert(format!("{part}{v1}"), v.clone());
        }
    }
    json!({"type": ty, key: out})
}

fn metric_spec_up(m: &Value) -> Value {
    let ty = m["type"].as_str().unwrap_or_default();
    let Some(key) = resource_key(ty) else {
        return m.clone();
    };
    let src = &m[key];
    if src.get("target").is_some() {
        return m.clone();
    }
    let mut out = Map::new();
    carry(src, &mut out, "name");
    carry(src, &mut out, "container");
    let target = if let Some(u) = src.get("targetAverageUtilization").filter(|v| !v.is_null()) {
        json!({"type": "Utilization", "averageUtilization": u})
    } else {
        json!({"type": "AverageValue", "averageValue": src.get("targetAverageValue").cloned().unwrap_or(Value::Null)})
    };
    out.insert("target".into(), target);
    json!({"type": ty, key: out})
}

fn metric_status_up(m: &Value) -> Value {
    let ty = m["type"].as_str().unwrap_or_default();
    let Some(key) = resource_key(ty) else {
        return m.clone();
    };
    let src = &m[key];
    if src.get("current").is_some() {
        return m.clone();
    }
    let mut out = Map::new();
    carry(src, &mut out, "name");
    carry(src, &mut out, "container");
    let mut current = Map::new();
    if let Some(u) = src.get("currentAverageUtilization") {
        current.insert("averageUtilization".into(), u.clone());
    }
    if let Some(v) = src.get("currentAverageValue") {
        current.insert("averageValue".into(), v.clone());
    }
    out.insert("current".into(), Value::Object(current));
    json!({"type": ty, key: out})
}

/// Takes a JSON-encoded annotation off the object.
fn take_annotation(obj: &mut Value, key: &str) -> Result<Option<Value>, String> {
    let Some(annotations) = obj
        .pointer_mut("/metadata/annotations")
        .and_then(Value::as_object_mut)
    else {
        return Ok(None);
    };
    let Some(text) = annotations.remove(key) else {
        return Ok(None);
    };
    if annotations.is_empty()
        && let Some(m) = obj.get_mut("metadata").and_then(Value::as_object_mut)
    {
        m.remove("annotations");
    }
    let text = text.as_str().unwrap_or_default();
    serde_json::from_str(text)
        .map(Some)
        .map_err(|e| format!("annotation {key}: {e}"))
}

fn put_annotation(obj: &mut Value, key: &str, value: &Value) {
    if !obj["metadata"].is_object() {
        obj["metadata"] = json!({});
    }
    if !obj["metadata"]["annotations"].is_object() {
        obj["metadata"]["annotations"] = json!({});
    }
    obj["metadata"]["annotations"][key] = Value::from(value.to_string());
}

/// autoscaling/v1 → autoscaling/v2 (`apiVersion` is set by the caller).
pub fn v1_to_v2(obj: &mut Value) -> Result<(), String> {
    let other = take_annotation(obj, METRIC_SPECS)?;
    let behavior = take_annotation(obj, BEHAVIOR)?;
    let statuses = take_annotation(obj, METRIC_STATUSES)?;
    let conditions = take_annotation(obj, CONDITIONS)?;
    if let Some(spec) = obj.get_mut("spec").and_then(Value::as_object_mut) {
        let cpu = spec.remove("targetCPUUtilizationPercentage");
        let mut metrics: Vec<Value> = other
            .as_ref()
            .and_then(Value::as_array)
            .into_iter()
            .flatten()
            .map(metric_spec_up)
            .collect();
        if let Some(cpu) = cpu.filter(|v| !v.is_null()) {
            metrics.push(json!({"type": "Resource", "resource": {"name": "cpu",
                "target": {"type": "Utilization", "averageUtilization": cpu}}}));
        }
        if !metrics.is_empty() {
            spec.insert("metrics".into(), Value::Array(metrics));
        }
        if let Some(b) = behavior {
            spec.insert("behavior".into(), b);
        }
    }
    if let Some(status) = obj.get_mut("status").and_then(Value::as_object_mut) {
        let cpu = status.remove("currentCPUUtilizationPercentage");
        match statuses.as_ref().and_then(Value::as_array) {
            Some(all) => {
                status.insert(
                    "currentMetrics".into(),
                    Value::Array(all.iter().map(metric_status_up).collect()),
                );
            }
            None => {
                if let Some(cpu) = cpu.filter(|v| !v.is_null()) {
                    status.insert(
                        "currentMetrics".into(),
                        json!([{"type": "Resource", "resource": {"name": "cpu",
                            "current": {"averageUtilization": cpu}}}]),
                    );
                }
            }
        }
        if let Some(c) = conditions {
            status.insert("conditions".into(), c);
        }
    }
    Ok(())
}

/// autoscaling/v2 → autoscaling/v1.
pub fn v2_to_v1(obj: &mut Value) -> Result<(), String> {
    let mut other = Vec::new();
    let mut behavior = None;
    if let Some(spec) = obj.get_mut("spec").and_then(Value::as_object_mut) {
        let metrics = spec.remove("metrics");
        let mut cpu = None;
        for m in metrics
            .as_ref()
            .and_then(Value::as_array)
            .into_iter()
            .flatten()
        {
            if is_cpu_utilization(m) {
                // kube keeps the first; a second one travels with the others.
                if cpu.is_none() {
                    cpu = Some(m["resource"]["target"]["averageUtilization"].clone());
                    continue;
                }
            }
            other.push(metric_down(m, "target"));
        }
        if let Some(cpu) = cpu {
            spec.insert("targetCPUUtilizationPercentage".into(), cpu);
        }
        behavior = spec.remove("behavior").filter(|b| !b.is_null());
    }
    let mut statuses = None;
    let mut conditions = None;
    if let Some(status) = obj.get_mut("status").and_then(Value::as_object_mut) {
        let current = status.remove("currentMetrics");
        let current: Vec<&Value> = current
            .as_ref()
            .and_then(Value::as_array)
            .into_iter()
            .flatten()
            .collect();
        if let Some(u) = current
            .iter()
            .find(|m| m["type"] == "Resource" && m["resource"]["name"] == "cpu")
            .and_then(|m| m["resource"]["current"].get("averageUtilization"))
            .filter(|v| !v.is_null())
        {
            status.insert("currentCPUUtilizationPercentage".into(), u.clone());
        }
        if !current.is_empty() {
            statuses = Some(Value::Array(
                current
                    .into_iter()
                    .map(|m| metric_down(m, "current"))
                    .collect(),
            ));
        }
        conditions = status
            .remove("conditions")
            .filter(|c| c.as_array().is_some_and(|a| !a.is_empty()));
    }
    if !other.is_empty() {
        put_annotation(obj, METRIC_SPECS, &Value::Array(other));
    }
    if let Some(s) = statuses {
        put_annotation(obj, METRIC_STATUSES, &s);
    }
    if let Some(b) = behavior {
        put_annotation(obj, BEHAVIOR, &b);
    }
    if let Some(c) = conditions {
        put_annotation(obj, CONDITIONS, &c);
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn kubectl_autoscale_body_becomes_a_cpu_metric_and_back() {
        let mut v1 = json!({"metadata": {"name": "web"}, "spec": {
            "scaleTargetRef": {"apiVersion": "apps/v1", "kind": "Deployment", "name": "web"},
            "minReplicas": 1, "maxReplicas": 3, "targetCPUUtilizationPercentage": 50}});
        let original = v1.clone();
        v1_to_v2(&mut v1).unwrap();
        assert_eq!(
            v1["spec"]["metrics"],
            json!([{"type": "Resource", "resource": {"name": "cpu",
                "target": {"type": "Utilization", "averageUtilization": 50}}}])
        );
        assert!(v1["spec"].get("targetCPUUtilizationPercentage").is_none());
        v2_to_v1(&mut v1).unwrap();
        assert_eq!(v1, original);
    }

    #[test]
    fn what_v1_lacks_travels_in_kubes_annotations() {
        let v2 = json!({"metadata": {"name": "web", "annotations": {"a": "b"}}, "spec": {
            "scaleTargetRef": {"kind": "Deployment", "name": "web"}, "maxReplicas": 5,
            "metrics": [
                {"type": "Resource", "resource": {"name": "memory", "target": {"type": "AverageValue", "averageValue": "100Mi"}}},
                {"type": "Resource", "resource": {"name": "cpu", "target": {"type": "Utilization", "averageUtilization": 60}}}],
            "behavior": {"scaleDown": {"stabilizationWindowSeconds": 30}}},
            "status": {"currentReplicas": 2, "desiredReplicas": 3,
                "currentMetrics": [{"type": "Resource", "resource": {"name": "cpu", "current": {"averageUtilization": 90, "averageValue": "90m"}}}],
                "conditions": [{"type": "AbleToScale", "status": "True", "reason": "SucceededRescale"}]}});
        let mut v1 = v2.clone();
        v2_to_v1(&mut v1).unwrap();
        assert_eq!(v1["spec"]["targetCPUUtilizationPercentage"], 60);
        assert_eq!(v1["status"]["currentCPUUtilizationPercentage"], 90);
        let a = &v1["metadata"]["annotations"];
        assert_eq!(a["a"], "b");
        let other: Value = serde_json::from_str(a[METRIC_SPECS].as_str().unwrap()).unwrap();
        assert_eq!(
            other,
            json!([{"type": "Resource", "resource": {"name": "memory", "targetAverageValue": "100Mi"}}])
        );
        assert!(a[BEHAVIOR].is_string() && a[CONDITIONS].is_string());
        assert!(a[METRIC_STATUSES].is_string());
        let mut back = v1.clone();
        v1_to_v2(&mut back).unwrap();
        // The CPU metric comes back after the others (as kube orders them).
        let mut expected = v2.clone();
        expected["spec"]["metrics"] = json!([v2["spec"]["metrics"][0], v2["spec"]["metrics"][1]]);
        assert_eq!(back, expected);
    }
}
