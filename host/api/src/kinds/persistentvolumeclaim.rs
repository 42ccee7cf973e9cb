//! PersistentVolumeClaims (core/v1): a pod's request for storage, bound to a
//! PersistentVolume by the local-path plugin (`controllers-wasm/localpath`), which provisions
//! the volume or picks a matching static one. The API defaults and checks the claim as
//! kube-apiserver does; the default StorageClass is filled in by the admission step in
//! [`crate::ops`] (Kubernetes' `DefaultStorageClass`). kedge mounts filesystem volumes only,
//! clones and populators are not provided, and no provisioner resizes a volume: those fields
//! are refused rather than stored and ignored.

use k8s_openapi::api::core::v1 as core;
use serde_json::{Value, json};

use super::common::ensure_object;
use super::table_fmt::{CREATED, Column, age, col, name, s};
use super::{KindRules, Typed, typed};
use crate::error::Cause;
use kedge_core::quantity::parse_bytes;
use kedge_core::resources::Resource;

pub(super) struct PersistentVolumeClaim;

/// The access modes of core/v1, in kube-apiserver's order, and kubectl's abbreviations.
pub(super) const ACCESS_MODES: [(&str, &str); 4] = [
    ("ReadWriteOnce", "RWO"),
    ("ReadOnlyMany", "ROX"),
    ("ReadWriteMany", "RWX"),
    ("ReadWriteOncePod", "RWOP"),
];

/// The annotation that names the default StorageClass.
pub(crate) const DEFAULT_CLASS_ANNOTATION: &str = "storageclass.kubernetes.io/is-default-class";

/// kubectl 1.32's PersistentVolumeClaim printer.
static COLUMNS: [Column; 9] = [
    col("Name", "string", 0),
    col("Status", "string", 0),
    col("Volume", "string", 0),
    col("Capacity", "string", 0),
    col("Access Modes", "string", 0),
    col("StorageClass", "string", 0),
    col("VolumeAttributesClass", "string", 0),
    col("Age", "string", 0),
    col("VolumeMode", "string", 1),
];

/// `GetAccessModesAsString`: the modes present, abbreviated, in a fixed order.
pub(super) fn access_modes_cell(modes: Option<&Value>) -> String {
    let modes: Vec<&str> = modes
        .and_then(Value::as_array)
        .into_iter()
        .flatten()
        .filter_map(Value::as_str)
        .collect();
    ACCESS_MODES
        .iter()
        .filter(|(m, _)| modes.contains(m))
        .map(|(_, short)| *short)
        .collect::<Vec<_>>()
        .join(",")
}

/// `ValidatePersistentVolumeAccessModes`: at least one, each known.
pub(super) fn validate_access_modes(modes: Option<&Value>, field: &str, causes: &mut Vec<Cause>) {
    let modes: Vec<&Value> = modes
        .and_then(Value::as_array)
        .into_iter()
        .flatten()
        .collect();
    if modes.is_empty() {
        causes.push(Cause {
            reason: "FieldValueRequired",
            field: field.into(),
            message: "Required value: at least 1 access mode is required".into(),
        });
    }
    let known: Vec<&str> = ACCESS_MODES.iter().map(|(m, _)| *m).collect();
    for m in &modes {
        let m = m.as_str().unwrap_or_default();
        if !known.contains(&m) {
            causes.push(Cause::unsupported(field, m, &known));
        }
    }
    if modes.iter().any(|m| m.as_str() == Some("ReadWriteOncePod")) && modes.len() > 1 {
        causes.push(Cause::forbidden(
            field,
            "may not use ReadWriteOncePod with other access modes",
        ));
    }
}

/// `volumeMode`: kedge's agent mounts filesystems; raw block devices are not provided.
pub(super) fn validate_volume_mode(spec: &Value, field: &str, causes: &mut Vec<Cause>) {
    if let Some(m) = spec.get("volumeMode").and_then(Value::as_str)
        && m != "Filesystem"
    {
        let cause = if m == "Block" {
            Cause::forbidden(field, "kedge mounts filesystem volumes only")
        } else {
            Cause::unsupported(field, m, &["Block", "Filesystem"])
        };
        causes.push(cause);
    }
}

/// A storage quantity that must be present and positive.
pub(super) fn validate_storage(q: Option<&Value>, field: &str, causes: &mut Vec<Cause>) {
    match q {
        None | Some(Value::Null) => causes.push(Cause::required(field)),
        Some(v) => {
            let text = v.as_str().map_or_else(|| v.to_string(), str::to_string);
            match parse_bytes(&text) {
                Ok(0) => causes.push(Cause::invalid(field, &text, "must be greater than zero")),
                Ok(_) => {}
                Err(e) => causes.push(Cause::invalid(field, &text, e)),
            }
        }
    }
}

impl KindRules for PersistentVolumeClaim {
    fn default(&self, obj: &mut Value) {
        let spec = ensure_object(obj, "spec");
        spec.entry("volumeMode").or_insert(json!("Filesystem"));
    }

    fn initial_status(&self) -> Option<Value> {
        Some(json!({"phase": "Pending"}))
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

    fn validate_update(&self, old: &Value, new: &Value, causes: &mut Vec<Cause>) {
        validate_spec_update(&old["spec"], &new["spec"], causes);
    }

    fn columns(&self) -> &'static [Column] {
        &COLUMNS
    }

    fn cells(&self, o: &Value, now: chrono::DateTime<chrono::Utc>) -> Vec<Value> {
        let phase = if o.pointer("/metadata/deletionTimestamp").is_some() {
            "Terminating"
        } else {
            s(o, "/status/phase")
        };
        let bound = phase == "Bound";
        let capacity = if bound {
            s(o, "/status/capacity/storage")
        } else {
            ""
        };
        let modes = if bound {
            access_modes_cell(o.pointer("/status/accessModes"))
        } else {
            String::new()
        };
        let vac = o
            .pointer("/spec/volumeAttributesClassName")
            .and_then(Value::as_str)
            .unwrap_or("<unset>");
        vec![
            name(o),
            json!(phase),
            json!(s(o, "/spec/volumeName")),
            json!(capacity),
            json!(modes),
            json!(s(o, "/spec/storageClassName")),
            json!(vac),
            json!(age(o, CREATED, now)),
            json!(s(o, "/spec/volumeMode")),
        ]
    }

    fn typed(&self) -> Option<&'static dyn Typed> {
        typed::<core::PersistentVolumeClaim>()
    }
}

/// kube-apiserver's `ValidatePersistentVolumeClaimSpec`, with what kedge does not provide
/// refused by name.
pub(crate) fn validate_spec(spec: &Value, causes: &mut Vec<Cause>) {
    validate_access_modes(spec.get("accessModes"), "spec.accessModes", causes);
    validate_storage(
        spec.pointer("/resources/requests/storage"),
        "spec.resources[storage]",
        causes,
    );
    validate_volume_mode(spec, "spec.volumeMode", causes);
    if let Some(sel) = spec.get("selector").filter(|v| !v.is_null())
        && let Err(e) = kedge_core::selector::Selector::from_structured(sel)
    {
        causes.push(Cause::invalid("spec.selector", "", e));
    }
    for (field, why) in [
        (
            "dataSource",
            "kedge provisions empty volumes only (no clones or snapshots)",
        ),
        (
            "dataSourceRef",
            "kedge provisions empty volumes only (no volume populators)",
        ),
        (
            "volumeAttributesClassName",
            "kedge serves no VolumeAttributesClasses",
        ),
    ] {
        if spec.get(field).is_some_and(|v| !v.is_null()) {
            causes.push(Cause::forbidden(format!("spec.{field}"), why));
        }
    }
}

/// `ValidatePersistentVolumeClaimUpdate`: the spec is immutable except `resources.requests`
/// and the binding the controller writes (`volumeName` of an unbound claim). kedge's volumes
/// cannot grow (local-path and static volumes are directories without a size), so a larger
/// request is refused with the resize admission's wording, and a smaller one as kube does.
fn validate_spec_update(old: &Value, new: &Value, causes: &mut Vec<Cause>) {
    let strip = |spec: &Value, keep_name: bool| {
        let mut s = spec.clone();
        if let Some(m) = s.as_object_mut() {
            m.remove("resources");
            if !keep_name {
                m.remove("volumeName");
            }
        }
        s
    };
    let old_name = old["volumeName"].as_str().unwrap_or_default();
    let binding = old_name.is_empty();
    if strip(old, !binding) != strip(new, !binding) {
        causes.push(Cause::forbidden(
            "spec",
            "spec is immutable after creation except resources.requests and \
             volumeAttributesClassName for bound claims",
        ));
        return;
    }
    let size = |spec: &Value| {
        spec.pointer("/resources/requests/storage")
            .and_then(Value::as_str)
            .and_then(|q| parse_bytes(q).ok())
    };
    match (size(old), size(new)) {
        (Some(a), Some(b)) if b < a => causes.push(Cause::forbidden(
            "spec.resources.requests.storage",
            "field can not be less than previous value",
        )),
        (Some(a), Some(b)) if b > a => causes.push(Cause::forbidden(
            "spec.resources.requests.storage",
            "only dynamically provisioned pvc can be resized and the storageclass that \
             provisions the pvc must support resize (kedge's volumes cannot be resized)",
        )),
        _ => {}
    }
}

#[cfg(test)]
mod tests {
    use crate::kinds::test_support::*;

    fn pvc(spec: Value) -> Value {
        json!({"apiVersion": "v1", "kind": "PersistentVolumeClaim",
            "metadata": {"name": "data", "namespace": "default"}, "spec": spec})
    }

    fn good() -> Value {
        json!({"accessModes": ["ReadWriteOnce"], "resources": {"requests": {"storage": "1Gi"}}})
    }

    #[test]
    fn claims_are_checked_as_kube_apiserver_does() {
        let res = by_kind("v1", "PersistentVolumeClaim").unwrap();
        let mut ok = pvc(good());
        default(res, &mut ok);
        assert_eq!(ok["spec"]["volumeMode"], "Filesystem");
        assert!(validate(res, &ok).is_empty());
        for (spec, want) in [
            (
                json!({"resources": {"requests": {"storage": "1Gi"}}}),
                vec![("spec.accessModes", "FieldValueRequired")],
            ),
            (
                json!({"accessModes": ["ReadWriteOnce"]}),
                vec![("spec.resources[storage]", "FieldValueRequired")],
            ),
            (
                json!({"accessModes": ["Sometimes"], "resources": {"requests": {"storage": "0"}}}),
                vec![
                    ("spec.accessModes", "FieldValueNotSupported"),
                    ("spec.resources[storage]", "FieldValueInvalid"),
                ],
            ),
            (
                json!({"accessModes": ["ReadWriteOnce"], "volumeMode": "Block",
                    "resources": {"requests": {"storage": "1Gi"}}}),
                vec![("spec.volumeMode", "FieldValueForbidden")],
            ),
            (
                json!({"accessModes": ["ReadWriteOnce"], "dataSource": {"kind": "PersistentVolumeClaim", "name": "x"},
                    "resources": {"requests": {"storage": "1Gi"}}}),
                vec![("spec.dataSource", "FieldValueForbidden")],
            ),
        ] {
            assert_eq!(field_reasons(&validate(res, &pvc(spec))), want);
        }
    }

    #[test]
    fn only_the_binding_may_change_and_nothing_resizes() {
        let res = by_kind("v1", "PersistentVolumeClaim").unwrap();
        let old = pvc(good());
        let mut bound = old.clone();
        bound["spec"]["volumeName"] = json!("pvc-1");
        assert!(validate_update(res, &old, &bound).is_empty());
        let mut renamed = bound.clone();
        renamed["spec"]["volumeName"] = json!("pvc-2");
        assert_eq!(
            field_reasons(&validate_update(res, &bound, &renamed)),
            [("spec", "FieldValueForbidden")]
        );
        let mut modes = old.clone();
        modes["spec"]["accessModes"] = json!(["ReadWriteMany"]);
        assert_eq!(fields(&validate_update(res, &old, &modes)), ["spec"]);
        for size in ["2Gi", "512Mi"] {
            let mut resized = bound.clone();
            resized["spec"]["resources"]["requests"]["storage"] = json!(size);
            assert_eq!(
                fields(&validate_update(res, &bound, &resized)),
                ["spec.resources.requests.storage"]
            );
        }
    }

    #[test]
    fn table_shows_the_binding() {
        let res = by_kind("v1", "PersistentVolumeClaim").unwrap();
        let rules = crate::kinds::rules(res);
        let mut o = pvc(good());
        o["spec"]["storageClassName"] = json!("local-path");
        o["spec"]["volumeName"] = json!("pvc-1");
        o["status"] = json!({"phase": "Bound", "capacity": {"storage": "1Gi"},
            "accessModes": ["ReadWriteOnce", "ReadWriteMany"]});
        let cells = rules.cells(&o, chrono::Utc::now());
        assert_eq!(
            cells[..7],
            [
                json!("data"),
                json!("Bound"),
                json!("pvc-1"),
                json!("1Gi"),
                json!("RWO,RWX"),
                json!("local-path"),
                json!("<unset>")
            ]
        );
    }
}
