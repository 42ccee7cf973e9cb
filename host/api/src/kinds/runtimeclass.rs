//! RuntimeClasses (node.k8s.io/v1, cluster-scoped): which runtime runs a pod's containers.
//! The server creates `wasm` (handler `wasm`, wasmtime) and `runc` (handler `runc`, OCI
//! containers) at start, each with a `scheduling.nodeSelector` on the label the agent sets
//! when it runs that runtime. Other classes may name any handler, as in Kubernetes, where
//! handlers are the nodes' business: an agent that does not know one fails the pod's
//! containers and says so.
//!
//! [`admit`] is Kubernetes' `RuntimeClass` admission plugin for a new pod: the class must
//! exist, its node selector and tolerations are merged into the pod's, and its
//! `overhead.podFixed` becomes the pod's `spec.overhead`, which the scheduler counts on top
//! of the containers' requests. Overhead may name only `cpu` and `memory`, the resources
//! kedge schedules.

use k8s_openapi::api::node::v1 as node;
use serde_json::{Map, Value, json};

use super::table_fmt::{CREATED, Column, age, col, s};
use super::{KindRules, Typed, typed};
use crate::error::Cause;
use kedge_core::meta;
use kedge_core::quantity::{parse_bytes, parse_cpu_millis};
use kedge_core::resources::Resource;

pub(super) struct RuntimeClass;

/// The resources an overhead may name: those the scheduler counts.
const OVERHEAD_RESOURCES: [&str; 2] = ["cpu", "memory"];

const TOLERATION_OPERATORS: [&str; 2] = ["Equal", "Exists"];
const TAINT_EFFECTS: [&str; 3] = ["NoSchedule", "PreferNoSchedule", "NoExecute"];

/// kubectl 1.32's RuntimeClass printer.
static COLUMNS: [Column; 3] = [
    col("Name", "string", 0),
    col("Handler", "string", 0),
    col("Age", "string", 0),
];

impl KindRules for RuntimeClass {
    fn validate(
        &self,
        _res: &Resource,
        obj: &Value,
        _old: Option<&Value>,
        causes: &mut Vec<Cause>,
    ) {
        match obj.get("handler").and_then(Value::as_str) {
            None | Some("") => causes.push(Cause::required("handler")),
            Some(h) => {
                if let Err(why) = meta::validate_label(h) {
                    causes.push(Cause::invalid("handler", h, why));
                }
            }
        }
        for (name, q) in obj
            .pointer("/overhead/podFixed")
            .and_then(Value::as_object)
            .into_iter()
            .flatten()
        {
            let field = format!("overhead.podFixed[{name}]");
            let text = q.as_str().unwrap_or_default();
            let parsed = match name.as_str() {
                "cpu" => parse_cpu_millis(text).map(drop),
                "memory" => parse_bytes(text).map(drop),
                _ => {
                    causes.push(Cause::unsupported(
                        "overhead.podFixed",
                        name,
                        &OVERHEAD_RESOURCES,
                    ));
                    continue;
                }
            };
            if parsed.is_err() {
                causes.push(Cause::invalid(
                    field,
                    text,
                    "must be a non-negative quantity",
                ));
            }
        }
        let selector = obj
            .pointer("/scheduling/nodeSelector")
            .and_then(Value::as_object);
        for (k, v) in selector.into_iter().flatten() {
            let field = "scheduling.nodeSelector";
            let v = v.as_str().unwrap_or_default();
            for why in meta::qualified_name_errors(k) {
                causes.push(Cause::invalid(field, k, why));
            }
            for why in meta::label_value_errors(v) {
                causes.push(Cause::invalid(field, v, why));
            }
        }
        let tolerations = obj
            .pointer("/scheduling/tolerations")
            .and_then(Value::as_array);
        for (i, t) in tolerations.into_iter().flatten().enumerate() {
            let at = format!("scheduling.tolerations[{i}]");
            let op = s(t, "/operator");
            if !op.is_empty() && !TOLERATION_OPERATORS.contains(&op) {
                causes.push(Cause::unsupported(
                    format!("{at}.operator"),
                    op,
                    &TOLERATION_OPERATORS,
                ));
            }
            if op == "Exists" && !s(t, "/value").is_empty() {
                causes.push(Cause::invalid(
                    format!("{at}.operator"),
                    op,
                    "value must be empty when `operator` is 'Exists'",
                ));
            }
            if s(t, "/key").is_empty() && op != "Exists" {
                causes.push(Cause::invalid(
                    format!("{at}.operator"),
                    op,
                    "operator must be Exists when `key` is empty, which means \"match all \
                     values and all keys\"",
                ));
            }
            let effect = s(t, "/effect");
            if !effect.is_empty() && !TAINT_EFFECTS.contains(&effect) {
                causes.push(Cause::unsupported(
                    format!("{at}.effect"),
                    effect,
                    &TAINT_EFFECTS,
                ));
            }
        }
    }

    fn validate_update(&self, old: &Value, new: &Value, causes: &mut Vec<Cause>) {
        if old.get("handler") != new.get("handler") {
            let h = new.get("handler").and_then(Value::as_str).unwrap_or("");
            causes.push(Cause::invalid("handler", h, "field is immutable"));
        }
    }

    fn columns(&self) -> &'static [Column] {
        &COLUMNS
    }

    fn cells(&self, o: &Value, now: chrono::DateTime<chrono::Utc>) -> Vec<Value> {
        vec![
            json!(s(o, "/metadata/name")),
            json!(s(o, "/handler")),
            json!(age(o, CREATED, now)),
        ]
    }

    fn typed(&self) -> Option<&'static dyn Typed> {
        typed::<node::RuntimeClass>()
    }
}

/// Kubernetes' RuntimeClass admission of a new pod, given the class its `runtimeClassName`
/// names (`None`: no such class). The error is the plugin's wording, which the caller
/// reports as a 403 Forbidden on the pod. A pod that names no class passes unchanged, but
/// may not set `overhead` itself.
pub(crate) fn admit(pod: &mut Value, class: Option<&Value>) -> Result<(), String> {
    let Some(spec) = pod.get_mut("spec").and_then(Value::as_object_mut) else {
        return Ok(());
    };
    let name = spec
        .get("runtimeClassName")
        .and_then(Value::as_str)
        .filter(|n| !n.is_empty())
        .map(String::from);
    let has_overhead = spec
        .get("overhead")
        .and_then(Value::as_object)
        .is_some_and(|o| !o.is_empty());
    let Some(name) = name else {
        if has_overhead {
            return Err(
                "pod rejected: Pod Overhead set without corresponding RuntimeClass defined \
                 Overhead"
                    .into(),
            );
        }
        return Ok(());
    };
    let Some(class) = class else {
        return Err(format!("pod rejected: RuntimeClass {name:?} not found"));
    };
    // Overhead: the class's, which a pod may repeat but not contradict.
    match class
        .pointer("/overhead/podFixed")
        .and_then(Value::as_object)
    {
        Some(fixed) => {
            if has_overhead && !same_quantities(&spec["overhead"], fixed) {
                return Err(
                    "pod rejected: Pod's Overhead doesn't match RuntimeClass's defined Overhead"
                        .into(),
                );
            }
            spec.insert("overhead".into(), Value::Object(fixed.clone()));
        }
        None if has_overhead => {
            return Err(
                "pod rejected: Pod Overhead set without corresponding RuntimeClass defined \
                 Overhead"
                    .into(),
            );
        }
        None => {}
    }
    // Scheduling: the class's node selector joins the pod's (a key both set differently is a
    // conflict), its tolerations join the pod's.
    if let Some(selector) = class
        .pointer("/scheduling/nodeSelector")
        .and_then(Value::as_object)
        .filter(|s| !s.is_empty())
    {
        let mut merged = spec
            .get("nodeSelector")
            .and_then(Value::as_object)
            .cloned()
            .unwrap_or_default();
        for (key, value) in selector {
            match merged.get(key) {
                Some(pod_value) if pod_value != value => {
                    return Err(format!(
                        "conflict: runtimeClass.scheduling.nodeSelector[{key}] = {}; \
                         pod.spec.nodeSelector[{key}] = {}",
                        value.as_str().unwrap_or_default(),
                        pod_value.as_str().unwrap_or_default()
                    ));
                }
                _ => {
                    merged.insert(key.clone(), value.clone());
                }
            }
        }
        spec.insert("nodeSelector".into(), Value::Object(merged));
    }
    if let Some(extra) = class
        .pointer("/scheduling/tolerations")
        .and_then(Value::as_array)
        .filter(|t| !t.is_empty())
    {
        let mut tolerations = spec
            .get("tolerations")
            .and_then(Value::as_array)
            .cloned()
            .unwrap_or_default();
        for t in extra {
            if !tolerations.iter().any(|have| same_toleration(have, t)) {
                tolerations.push(t.clone());
            }
        }
        spec.insert("tolerations".into(), Value::Array(tolerations));
    }
    Ok(())
}

/// Whether two resource lists hold the same quantities (`1000m` is `1`, as Kubernetes'
/// semantic equality has it).
fn same_quantities(pod: &Value, class: &Map<String, Value>) -> bool {
    let Some(pod) = pod.as_object() else {
        return false;
    };
    let amount = |name: &str, q: &Value| {
        let q = q.as_str().unwrap_or_default();
        match name {
            "cpu" => parse_cpu_millis(q).ok(),
            _ => parse_bytes(q).ok(),
        }
    };
    pod.len() == class.len()
        && pod.iter().all(|(name, q)| {
            class.get(name).is_some_and(|c| {
                let (a, b) = (amount(name, q), amount(name, c));
                if a.is_some() && b.is_some() {
                    a == b
                } else {
                    q == c
                }
            })
        })
}

/// Tolerations equal but for defaults left out (`operator: Equal`, empty strings).
fn same_toleration(a: &Value, b: &Value) -> bool {
    let norm = |t: &Value| {
        let op = match s(t, "/operator") {
            "" => "Equal",
            op => op,
        };
        (
            s(t, "/key").to_string(),
            op.to_string(),
            s(t, "/value").to_string(),
            s(t, "/effect").to_string(),
            t.get("tolerationSeconds").cloned(),
        )
    };
    norm(a) == norm(b)
}

#[cfg(test)]
mod tests {
    use super::admit;
    use crate::kinds::test_support::*;

    fn class(body: Value) -> Value {
        let mut c = json!({"apiVersion": "node.k8s.io/v1", "kind": "RuntimeClass",
            "metadata": {"name": "wasm", "creationTimestamp": "2026-01-01T00:00:00Z"},
            "handler": "wasm"});
        for (k, v) in body.as_object().unwrap() {
            c[k] = v.clone();
        }
        c
    }

    fn pod(spec: Value) -> Value {
        let mut spec = spec;
        spec["containers"] = json!([{"name": "c", "image": "x:1"}]);
        json!({"metadata": {"name": "p", "namespace": "default"}, "spec": spec})
    }

    #[test]
    fn classes_are_checked_and_shown() {
        let res = by_kind("node.k8s.io/v1", "RuntimeClass").unwrap();
        let ok = class(
            json!({"overhead": {"podFixed": {"cpu": "250m", "memory": "64Mi"}},
            "scheduling": {"nodeSelector": {"kedge.io/runtime-wasm": "true"},
                "tolerations": [{"key": "edge", "operator": "Exists", "effect": "NoSchedule"}]}}),
        );
        assert!(validate(res, &ok).is_empty());
        let cells = crate::kinds::rules(res).cells(&ok, chrono::Utc::now());
        assert_eq!(cells[..2], [json!("wasm"), json!("wasm")]);
        let names: Vec<&str> = crate::kinds::rules(res)
            .columns()
            .iter()
            .map(|c| c.name)
            .collect();
        assert_eq!(names, ["Name", "Handler", "Age"]);

        let bad = class(json!({"handler": "Not_A_Label",
            "overhead": {"podFixed": {"cpu": "lots", "nvidia.com/gpu": "1"}},
            "scheduling": {"nodeSelector": {"bad key!": "v"},
                "tolerations": [{"key": "k", "operator": "Maybe", "effect": "Sometimes"}]}}));
        assert_eq!(
            field_reasons(&validate(res, &bad)),
            [
                ("handler", "FieldValueInvalid"),
                ("overhead.podFixed[cpu]", "FieldValueInvalid"),
                ("overhead.podFixed", "FieldValueNotSupported"),
                ("scheduling.nodeSelector", "FieldValueInvalid"),
                (
                    "scheduling.tolerations[0].operator",
                    "FieldValueNotSupported"
                ),
                ("scheduling.tolerations[0].effect", "FieldValueNotSupported"),
            ]
        );
        let mut no_handler = ok.clone();
        no_handler.as_object_mut().unwrap().remove("handler");
        assert_eq!(fields(&validate(res, &no_handler)), ["handler"]);
        let mut changed = ok.clone();
        changed["handler"] = json!("runc");
        assert_eq!(fields(&validate_update(res, &ok, &changed)), ["handler"]);
    }

    /// The plugin's wording for a class that does not exist, and for overhead set by hand.
    #[test]
    fn unknown_classes_and_hand_set_overhead_are_refused() {
        let mut p = pod(json!({"runtimeClassName": "gvisor"}));
        assert_eq!(
            admit(&mut p, None).unwrap_err(),
            "pod rejected: RuntimeClass \"gvisor\" not found"
        );
        let mut p = pod(json!({"overhead": {"cpu": "1"}}));
        assert_eq!(
            admit(&mut p, None).unwrap_err(),
            "pod rejected: Pod Overhead set without corresponding RuntimeClass defined Overhead"
        );
        let mut p = pod(json!({"runtimeClassName": "wasm", "overhead": {"cpu": "1"}}));
        assert_eq!(
            admit(&mut p, Some(&class(json!({})))).unwrap_err(),
            "pod rejected: Pod Overhead set without corresponding RuntimeClass defined Overhead"
        );
        let mut plain = pod(json!({}));
        let before = plain.clone();
        admit(&mut plain, None).unwrap();
        assert_eq!(plain, before);
    }

    #[test]
    fn overhead_comes_from_the_class_and_may_be_repeated_but_not_contradicted() {
        let c = class(json!({"overhead": {"podFixed": {"cpu": "250m", "memory": "64Mi"}}}));
        let mut p = pod(json!({"runtimeClassName": "wasm"}));
        admit(&mut p, Some(&c)).unwrap();
        assert_eq!(
            p["spec"]["overhead"],
            json!({"cpu": "250m", "memory": "64Mi"})
        );
        let mut same = pod(json!({"runtimeClassName": "wasm",
            "overhead": {"cpu": "0.25", "memory": "64Mi"}}));
        admit(&mut same, Some(&c)).unwrap();
        assert_eq!(same["spec"]["overhead"]["cpu"], "250m");
        for differing in [
            json!({"cpu": "500m", "memory": "64Mi"}),
            json!({"cpu": "250m"}),
            json!({"cpu": "250m", "memory": "64Mi", "pods": "1"}),
        ] {
            let mut p = pod(json!({"runtimeClassName": "wasm", "overhead": differing}));
            assert_eq!(
                admit(&mut p, Some(&c)).unwrap_err(),
                "pod rejected: Pod's Overhead doesn't match RuntimeClass's defined Overhead"
            );
        }
    }

    /// Through the API: the admission runs on pod create, with kube-apiserver's 403.
    #[test]
    fn pod_creation_goes_through_the_admission() {
        use crate::ops::{Api, WriteOptions, system_clock};
        use kedge_store::redb::{Options, RedbStore};
        let dir = tempfile::tempdir().unwrap();
        let store = RedbStore::open(&dir.path().join("s"), Options::default()).unwrap();
        let api = Api::new(std::sync::Arc::new(store), system_clock());
        let w = WriteOptions::default();
        let r = |k: &str, v: &str| by_kind(k, v).unwrap();
        api.create(
            r("v1", "Namespace"),
            "",
            json!({"metadata": {"name": "default"}}),
            &w,
        )
        .unwrap();
        api.create(
            r("node.k8s.io/v1", "RuntimeClass"),
            "",
            class(json!({"overhead": {"podFixed": {"cpu": "100m"}},
                "scheduling": {"nodeSelector": {"kedge.io/runtime-wasm": "true"}}})),
            &w,
        )
        .unwrap();
        let created = api
            .create(
                r("v1", "Pod"),
                "default",
                pod(json!({"runtimeClassName": "wasm"})),
                &w,
            )
            .unwrap();
        assert_eq!(created["spec"]["overhead"], json!({"cpu": "100m"}));
        assert_eq!(
            created["spec"]["nodeSelector"],
            json!({"kedge.io/runtime-wasm": "true"})
        );
        let mut unknown = pod(json!({"runtimeClassName": "gvisor"}));
        unknown["metadata"]["name"] = json!("q");
        let e = api
            .create(r("v1", "Pod"), "default", unknown, &w)
            .unwrap_err();
        assert_eq!((e.code, e.reason), (403, "Forbidden"));
        assert_eq!(
            e.message,
            "pods \"q\" is forbidden: pod rejected: RuntimeClass \"gvisor\" not found"
        );
    }

    #[test]
    fn node_selectors_and_tolerations_are_merged_and_conflicts_refused() {
        let c = class(json!({"scheduling": {
            "nodeSelector": {"kedge.io/runtime-wasm": "true", "zone": "a"},
            "tolerations": [{"key": "edge", "operator": "Exists", "effect": "NoSchedule"},
                {"key": "k", "value": "v", "effect": "NoExecute"}]}}));
        let mut p = pod(json!({"runtimeClassName": "wasm",
            "nodeSelector": {"zone": "a", "disk": "ssd"},
            "tolerations": [{"key": "k", "operator": "Equal", "value": "v", "effect": "NoExecute"}]}));
        admit(&mut p, Some(&c)).unwrap();
        assert_eq!(
            p["spec"]["nodeSelector"],
            json!({"kedge.io/runtime-wasm": "true", "zone": "a", "disk": "ssd"})
        );
        assert_eq!(
            p["spec"]["tolerations"],
            json!([{"key": "k", "operator": "Equal", "value": "v", "effect": "NoExecute"},
                {"key": "edge", "operator": "Exists", "effect": "NoSchedule"}])
        );
        let mut none = pod(json!({"runtimeClassName": "wasm"}));
        admit(&mut none, Some(&c)).unwrap();
        assert_eq!(
            none["spec"]["nodeSelector"]["kedge.io/runtime-wasm"],
            "true"
        );
        assert_eq!(none["spec"]["tolerations"].as_array().unwrap().len(), 2);
        let mut clash = pod(json!({"runtimeClassName": "wasm", "nodeSelector": {"zone": "b"}}));
        assert_eq!(
            admit(&mut clash, Some(&c)).unwrap_err(),
            "conflict: runtimeClass.scheduling.nodeSelector[zone] = a; \
             pod.spec.nodeSelector[zone] = b"
        );
    }
}
