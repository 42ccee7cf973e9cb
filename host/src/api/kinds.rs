//! Per-kind defaulting and validation, applied to every write whatever its source (kubectl,
//! client libraries, agents, plugins) — the same path for all callers.

use serde_json::{Map, Value, json};

use super::error::Cause;
use crate::core::meta;
use crate::core::resources::Resource;
use crate::core::selector;

/// Fills in what Kubernetes defaults on create and update.
pub fn default(res: &Resource, obj: &mut Value) {
    match res.kind {
        "Pod" => {
            if let Some(spec) = obj.get_mut("spec") {
                default_pod_spec(spec);
            }
        }
        "Deployment" => {
            let spec = ensure_object(obj, "spec");
            spec.entry("replicas").or_insert(json!(1));
            spec.entry("revisionHistoryLimit").or_insert(json!(10));
            spec.entry("progressDeadlineSeconds").or_insert(json!(600));
            let strategy = spec
                .entry("strategy")
                .or_insert_with(|| json!({"type": "RollingUpdate"}));
            if strategy.get("type").and_then(Value::as_str) == Some("RollingUpdate")
                && strategy.get("rollingUpdate").is_none()
            {
                strategy["rollingUpdate"] = json!({"maxSurge": "25%", "maxUnavailable": "25%"});
            }
            if let Some(pod) = obj.pointer_mut("/spec/template/spec") {
                default_pod_spec(pod);
            }
            // kubectl rollout undo patches /metadata/annotations, which must exist.
            ensure_object(ensure_object_value(obj, "metadata"), "annotations");
        }
        "ReplicaSet" => {
            ensure_object(obj, "spec")
                .entry("replicas")
                .or_insert(json!(1));
            if let Some(pod) = obj.pointer_mut("/spec/template/spec") {
                default_pod_spec(pod);
            }
        }
        _ => {}
    }
}

fn ensure_object_value<'a>(obj: &'a mut Value, field: &str) -> &'a mut Value {
    if !obj.get(field).is_some_and(Value::is_object) {
        obj[field] = json!({});
    }
    &mut obj[field]
}

fn ensure_object<'a>(obj: &'a mut Value, field: &str) -> &'a mut Map<String, Value> {
    ensure_object_value(obj, field)
        .as_object_mut()
        .expect("just made an object")
}

fn default_pod_spec(spec: &mut Value) {
    let Some(s) = spec.as_object_mut() else {
        return;
    };
    s.entry("restartPolicy").or_insert(json!("Always"));
    s.entry("dnsPolicy").or_insert(json!("ClusterFirst"));
    s.entry("schedulerName")
        .or_insert(json!("default-scheduler"));
    s.entry("terminationGracePeriodSeconds")
        .or_insert(json!(30));
    s.entry("securityContext").or_insert(json!({}));
    s.entry("enableServiceLinks").or_insert(json!(true));
    for list in ["containers", "initContainers"] {
        if let Some(Value::Array(cs)) = s.get_mut(list) {
            for c in cs.iter_mut().filter_map(Value::as_object_mut) {
                let image = c.get("image").and_then(Value::as_str).unwrap_or_default();
                let policy = default_pull_policy(image);
                c.entry("imagePullPolicy").or_insert(json!(policy));
                c.entry("terminationMessagePath")
                    .or_insert(json!("/dev/termination-log"));
                c.entry("terminationMessagePolicy").or_insert(json!("File"));
                c.entry("resources").or_insert(json!({}));
            }
        }
    }
}

/// `:latest` or no tag → Always, else IfNotPresent (Kubernetes' rule). A malformed
/// reference is left for the agent to report as a pull error on the container.
fn default_pull_policy(image: &str) -> &'static str {
    use kedge_registry::PullPolicy;
    match kedge_registry::Reference::parse(image) {
        Ok(r) => match kedge_registry::default_pull_policy(&r) {
            PullPolicy::Always => "Always",
            PullPolicy::IfNotPresent => "IfNotPresent",
            PullPolicy::Never => "Never",
        },
        Err(_) => "IfNotPresent",
    }
}

/// Validates an object about to be stored; an empty list means valid.
pub fn validate(res: &Resource, obj: &Value) -> Vec<Cause> {
    let mut causes = Vec::new();
    let name = meta::name(obj);
    let check = if res.kind == "Namespace" {
        meta::validate_label(name)
    } else {
        meta::validate_subdomain(name)
    };
    if let Err(why) = check {
        causes.push(Cause::invalid("metadata.name", name, why));
    }
    match res.kind {
        "Pod" => match obj.get("spec") {
            Some(spec) => validate_pod_spec(spec, "spec", &mut causes),
            None => causes.push(Cause::required("spec")),
        },
        "Deployment" | "ReplicaSet" => validate_workload(obj, &mut causes),
        _ => {}
    }
    causes
}

fn validate_workload(obj: &Value, causes: &mut Vec<Cause>) {
    let Some(spec) = obj.get("spec") else {
        causes.push(Cause::required("spec"));
        return;
    };
    if let Some(r) = spec.get("replicas")
        && r.as_i64().is_none_or(|r| r < 0)
    {
        causes.push(Cause::invalid(
            "spec.replicas",
            &r.to_string(),
            "must be greater than or equal to 0",
        ));
    }
    let sel = match spec.get("selector") {
        None => {
            causes.push(Cause::required("spec.selector"));
            None
        }
        Some(s) => match selector::from_structured(s) {
            Ok(sel) if sel.is_empty() => {
                causes.push(Cause::invalid(
                    "spec.selector",
                    "{}",
                    "empty selector is invalid for deployment",
                ));
                None
            }
            Ok(sel) => Some(sel),
            Err(e) => {
                causes.push(Cause::invalid("spec.selector", "", e));
                None
            }
        },
    };
    let Some(template) = spec.get("template") else {
        causes.push(Cause::required("spec.template"));
        return;
    };
    let labels = template
        .pointer("/metadata/labels")
        .and_then(Value::as_object);
    if let Some(sel) = sel
        && !sel.matches(labels)
    {
        causes.push(Cause::invalid(
            "spec.template.metadata.labels",
            &serde_json::to_string(&labels).unwrap_or_default(),
            "`selector` does not match template `labels`",
        ));
    }
    match template.get("spec") {
        Some(pod) => {
            validate_pod_spec(pod, "spec.template.spec", causes);
            let policy = pod.get("restartPolicy").and_then(Value::as_str);
            if policy.is_some_and(|p| p != "Always") {
                causes.push(Cause::unsupported(
                    "spec.template.spec.restartPolicy",
                    policy.unwrap_or_default(),
                    &["Always"],
                ));
            }
        }
        None => causes.push(Cause::required("spec.template.spec")),
    }
}

fn validate_pod_spec(spec: &Value, at: &str, causes: &mut Vec<Cause>) {
    let containers = spec.get("containers").and_then(Value::as_array);
    match containers {
        None => causes.push(Cause::required(format!("{at}.containers"))),
        Some(cs) if cs.is_empty() => causes.push(Cause::required(format!("{at}.containers"))),
        Some(cs) => {
            let mut seen = Vec::new();
            for (i, c) in cs.iter().enumerate() {
                let path = format!("{at}.containers[{i}]");
                match c.get("name").and_then(Value::as_str) {
                    None | Some("") => causes.push(Cause::required(format!("{path}.name"))),
                    Some(n) => {
                        if let Err(why) = meta::validate_label(n) {
                            causes.push(Cause::invalid(format!("{path}.name"), n, why));
                        }
                        if seen.contains(&n) {
                            causes.push(Cause {
                                reason: "FieldValueDuplicate",
                                field: format!("{path}.name"),
                                message: format!("Duplicate value: {n:?}"),
                            });
                        }
                        seen.push(n);
                    }
                }
                match c.get("image").and_then(Value::as_str) {
                    None | Some("") => causes.push(Cause::required(format!("{path}.image"))),
                    Some(img) if img.trim() != img => causes.push(Cause::invalid(
                        format!("{path}.image"),
                        img,
                        "must not have leading or trailing whitespace",
                    )),
                    Some(_) => {}
                }
                if let Some(p) = c.get("imagePullPolicy").and_then(Value::as_str) {
                    let allowed = ["Always", "IfNotPresent", "Never"];
                    if !allowed.contains(&p) {
                        causes.push(Cause::unsupported(
                            format!("{path}.imagePullPolicy"),
                            p,
                            &allowed,
                        ));
                    }
                }
            }
        }
    }
    if let Some(p) = spec.get("restartPolicy").and_then(Value::as_str) {
        let allowed = ["Always", "OnFailure", "Never"];
        if !allowed.contains(&p) {
            causes.push(Cause::unsupported(
                format!("{at}.restartPolicy"),
                p,
                &allowed,
            ));
        }
    }
}

/// The pod's QoS class, as the API reports it in status.
pub fn qos_class(spec: &Value) -> &'static str {
    let containers = spec
        .get("containers")
        .and_then(Value::as_array)
        .cloned()
        .unwrap_or_default();
    let mut any = false;
    let mut guaranteed = true;
    for c in &containers {
        let req = c.pointer("/resources/requests").and_then(Value::as_object);
        let lim = c.pointer("/resources/limits").and_then(Value::as_object);
        if req.is_some_and(|r| !r.is_empty()) || lim.is_some_and(|l| !l.is_empty()) {
            any = true;
        }
        for r in ["cpu", "memory"] {
            let l = lim.and_then(|l| l.get(r));
            let q = req.and_then(|q| q.get(r)).or(l);
            if l.is_none() || q != l {
                guaranteed = false;
            }
        }
    }
    match (any, guaranteed) {
        (false, _) => "BestEffort",
        (true, true) => "Guaranteed",
        (true, false) => "Burstable",
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::core::resources::by_kind;

    #[test]
    fn pod_without_image_is_invalid() {
        let res = by_kind("v1", "Pod").unwrap();
        let pod = json!({"metadata": {"name": "bad"}, "spec": {"containers": [{"name": "c"}]}});
        let causes = validate(res, &pod);
        assert_eq!(causes.len(), 1);
        assert_eq!(causes[0].field, "spec.containers[0].image");
        assert_eq!(causes[0].message, "Required value");
    }

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

    #[test]
    fn qos() {
        assert_eq!(qos_class(&json!({"containers": [{}]})), "BestEffort");
        assert_eq!(
            qos_class(
                &json!({"containers": [{"resources": {"limits": {"cpu": "1", "memory": "1Gi"}}}]})
            ),
            "Guaranteed"
        );
        assert_eq!(
            qos_class(&json!({"containers": [{"resources": {"requests": {"cpu": "1"}}}]})),
            "Burstable"
        );
    }
}
