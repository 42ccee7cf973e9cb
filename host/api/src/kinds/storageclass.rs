//! StorageClasses (storage.k8s.io/v1, cluster-scoped): how claims of a class get volumes. The
//! server creates K3s' default class `local-path` at start; the local-path plugin provisions
//! for classes of provisioner `rancher.io/local-path`, which kedge serves only with
//! `WaitForFirstConsumer` binding (the volume is made on the node the scheduler picks) and
//! the one parameter it reads, `nodePath`. Classes of other provisioners are kept, as in
//! Kubernetes: their claims bind only to matching static volumes.

use k8s_openapi::api::storage::v1 as storage;
use serde_json::{Value, json};

use super::persistentvolumeclaim::DEFAULT_CLASS_ANNOTATION;
use super::table_fmt::{CREATED, Column, age, col, s};
use super::{KindRules, Typed, typed};
use crate::error::Cause;
use kedge_core::resources::Resource;

pub(super) struct StorageClass;

/// The provisioner kedge's local-path plugin serves (K3s' name for it).
pub(crate) const LOCAL_PATH: &str = "rancher.io/local-path";

const BINDING_MODES: [&str; 2] = ["Immediate", "WaitForFirstConsumer"];

/// kubectl 1.32's StorageClass printer.
static COLUMNS: [Column; 6] = [
    col("Name", "string", 0),
    col("Provisioner", "string", 0),
    col("ReclaimPolicy", "string", 0),
    col("VolumeBindingMode", "string", 0),
    col("AllowVolumeExpansion", "string", 0),
    col("Age", "string", 0),
];

impl KindRules for StorageClass {
    fn default(&self, obj: &mut Value) {
        if let Some(m) = obj.as_object_mut() {
            m.entry("reclaimPolicy").or_insert(json!("Delete"));
            m.entry("volumeBindingMode").or_insert(json!("Immediate"));
        }
    }

    fn validate(
        &self,
        _res: &Resource,
        obj: &Value,
        _old: Option<&Value>,
        causes: &mut Vec<Cause>,
    ) {
        let provisioner = s(obj, "/provisioner");
        if provisioner.is_empty() {
            causes.push(Cause::required("provisioner"));
        }
        if let Some(p) = obj.get("reclaimPolicy").and_then(Value::as_str)
            && !matches!(p, "Delete" | "Retain")
        {
            causes.push(Cause::unsupported(
                "reclaimPolicy",
                p,
                &["Delete", "Retain"],
            ));
        }
        let mode = s(obj, "/volumeBindingMode");
        if !mode.is_empty() && !BINDING_MODES.contains(&mode) {
            causes.push(Cause::unsupported(
                "volumeBindingMode",
                mode,
                &BINDING_MODES,
            ));
        }
        if provisioner == LOCAL_PATH {
            if mode == "Immediate" {
                causes.push(Cause::forbidden(
                    "volumeBindingMode",
                    "kedge's local-path provisioner binds on the first consumer only: use \
                     WaitForFirstConsumer",
                ));
            }
            for (k, v) in obj
                .get("parameters")
                .and_then(Value::as_object)
                .into_iter()
                .flatten()
            {
                let path = v.as_str().unwrap_or_default();
                if k != "nodePath" {
                    causes.push(Cause::forbidden(
                        format!("parameters[{k}]"),
                        "kedge's local-path provisioner reads only the parameter nodePath",
                    ));
                } else if !path.starts_with('/') || path.split('/').any(|c| c == "..") {
                    causes.push(Cause::invalid(
                        "parameters[nodePath]",
                        path,
                        "must be an absolute path without '..'",
                    ));
                }
            }
            if obj["allowVolumeExpansion"] == json!(true) {
                causes.push(Cause::forbidden(
                    "allowVolumeExpansion",
                    "kedge's local-path volumes cannot be resized",
                ));
            }
        }
        for field in ["mountOptions", "allowedTopologies"] {
            if obj.get(field).is_some_and(|v| !v.is_null()) {
                causes.push(Cause::forbidden(field, "not provided by kedge"));
            }
        }
    }

    fn validate_update(&self, old: &Value, new: &Value, causes: &mut Vec<Cause>) {
        for (field, why) in [
            ("parameters", "updates to parameters are forbidden."),
            ("provisioner", "updates to provisioner are forbidden."),
            ("reclaimPolicy", "updates to reclaimPolicy are forbidden."),
            ("volumeBindingMode", "field is immutable"),
        ] {
            if old.get(field) != new.get(field) {
                causes.push(Cause::forbidden(field, why));
            }
        }
    }

    fn columns(&self) -> &'static [Column] {
        &COLUMNS
    }

    fn cells(&self, o: &Value, now: chrono::DateTime<chrono::Utc>) -> Vec<Value> {
        let mut name = s(o, "/metadata/name").to_string();
        if is_default(o) {
            name.push_str(" (default)");
        }
        let or = |v: &str, d: &str| {
            if v.is_empty() {
                d.to_string()
            } else {
                v.to_string()
            }
        };
        vec![
            json!(name),
            json!(s(o, "/provisioner")),
            json!(or(s(o, "/reclaimPolicy"), "Delete")),
            json!(or(s(o, "/volumeBindingMode"), "Immediate")),
            json!(o["allowVolumeExpansion"].as_bool().unwrap_or(false)),
            json!(age(o, CREATED, now)),
        ]
    }

    fn typed(&self) -> Option<&'static dyn Typed> {
        typed::<storage::StorageClass>()
    }
}

/// Whether the class is marked default (`IsDefaultAnnotation`; the beta key counts too).
pub(crate) fn is_default(o: &Value) -> bool {
    let a = o.pointer("/metadata/annotations");
    [
        DEFAULT_CLASS_ANNOTATION,
        "storageclass.beta.kubernetes.io/is-default-class",
    ]
    .iter()
    .any(|k| a.and_then(|a| a.get(*k)).and_then(Value::as_str) == Some("true"))
}

#[cfg(test)]
mod tests {
    use crate::kinds::test_support::*;

    #[test]
    fn classes_are_defaulted_checked_and_shown() {
        let res = by_kind("storage.k8s.io/v1", "StorageClass").unwrap();
        let mut sc = json!({"apiVersion": "storage.k8s.io/v1", "kind": "StorageClass",
            "metadata": {"name": "local-path", "creationTimestamp": "2026-01-01T00:00:00Z",
                "annotations": {"storageclass.kubernetes.io/is-default-class": "true"}},
            "provisioner": "rancher.io/local-path", "volumeBindingMode": "WaitForFirstConsumer"});
        default(res, &mut sc);
        assert_eq!(sc["reclaimPolicy"], "Delete");
        assert!(validate(res, &sc).is_empty());
        let cells = crate::kinds::rules(res).cells(&sc, chrono::Utc::now());
        assert_eq!(
            cells[..5],
            [
                json!("local-path (default)"),
                json!("rancher.io/local-path"),
                json!("Delete"),
                json!("WaitForFirstConsumer"),
                json!(false)
            ]
        );
        let mut bad = sc.clone();
        bad["volumeBindingMode"] = json!("Immediate");
        bad["parameters"] = json!({"nodePath": "rel", "pathPattern": "x"});
        bad["reclaimPolicy"] = json!("Recycle");
        assert_eq!(
            fields(&validate(res, &bad)),
            [
                "reclaimPolicy",
                "volumeBindingMode",
                "parameters[nodePath]",
                "parameters[pathPattern]"
            ]
        );
        let mut changed = sc.clone();
        changed["parameters"] = json!({"nodePath": "/srv"});
        assert_eq!(fields(&validate_update(res, &sc, &changed)), ["parameters"]);
        let other = json!({"metadata": {"name": "ext"}, "provisioner": "example.com/nfs"});
        assert!(validate(res, &other).is_empty());
    }
}
