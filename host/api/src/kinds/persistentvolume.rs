//! PersistentVolumes (core/v1, cluster-scoped): a piece of node storage a claim binds to. The
//! node agent mounts `hostPath` and `local` volumes only, so every other source is refused by
//! name; a `local` volume must say by its node affinity which node holds it (kube-apiserver
//! requires it too). A new volume without a claim starts `Available` (what Kubernetes' PV
//! controller writes at once; kedge's local-path plugin binds claims to it).

use k8s_openapi::api::core::v1 as core;
use serde_json::{Value, json};

use super::common::ensure_object;
use super::persistentvolumeclaim::{
    access_modes_cell, validate_access_modes, validate_storage, validate_volume_mode,
};
use super::table_fmt::{CREATED, Column, age, col, name, s};
use super::{KindRules, Typed, typed};
use crate::error::Cause;
use kedge_core::resources::Resource;

pub(super) struct PersistentVolume;

/// The volume sources kedge's node agent mounts.
const SOURCES: [&str; 2] = ["hostPath", "local"];

/// Every source field of core/v1's `PersistentVolumeSpec`: exactly one may be set.
const ALL_SOURCES: [&str; 21] = [
    "awsElasticBlockStore",
    "azureDisk",
    "azureFile",
    "cephfs",
    "cinder",
    "csi",
    "fc",
    "flexVolume",
    "flocker",
    "gcePersistentDisk",
    "glusterfs",
    "hostPath",
    "iscsi",
    "local",
    "nfs",
    "photonPersistentDisk",
    "portworxVolume",
    "quobyte",
    "rbd",
    "scaleIO",
    "storageos",
];

const RECLAIM_POLICIES: [&str; 2] = ["Delete", "Retain"];

/// kubectl 1.32's PersistentVolume printer.
static COLUMNS: [Column; 11] = [
    col("Name", "string", 0),
    col("Capacity", "string", 0),
    col("Access Modes", "string", 0),
    col("Reclaim Policy", "string", 0),
    col("Status", "string", 0),
    col("Claim", "string", 0),
    col("StorageClass", "string", 0),
    col("VolumeAttributesClass", "string", 0),
    col("Reason", "string", 0),
    col("Age", "string", 0),
    col("VolumeMode", "string", 1),
];

impl KindRules for PersistentVolume {
    fn default(&self, obj: &mut Value) {
        let spec = ensure_object(obj, "spec");
        spec.entry("persistentVolumeReclaimPolicy")
            .or_insert(json!("Retain"));
        spec.entry("volumeMode").or_insert(json!("Filesystem"));
    }

    fn on_create(&self, obj: &mut Value, now: &str) {
        let claimed = obj.pointer("/spec/claimRef").is_some_and(|c| !c.is_null());
        let phase = if claimed { "Pending" } else { "Available" };
        obj["status"] = json!({"phase": phase, "lastPhaseTransitionTime": now});
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
        let source = |spec: &Value| {
            ALL_SOURCES
                .iter()
                .map(|k| spec.get(*k).cloned())
                .collect::<Vec<_>>()
        };
        if source(&old["spec"]) != source(&new["spec"]) {
            causes.push(Cause::forbidden(
                "spec.persistentvolumesource",
                "spec.persistentvolumesource is immutable after creation",
            ));
        }
        let affinity = |o: &Value| o.pointer("/spec/nodeAffinity").cloned();
        if affinity(old).is_some() && affinity(old) != affinity(new) {
            causes.push(Cause::invalid(
                "spec.nodeAffinity",
                "",
                "field is immutable",
            ));
        }
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
        let claim = match o.pointer("/spec/claimRef") {
            Some(c) if !c.is_null() => format!("{}/{}", s(c, "/namespace"), s(c, "/name")),
            _ => String::new(),
        };
        let vac = o
            .pointer("/spec/volumeAttributesClassName")
            .and_then(Value::as_str)
            .unwrap_or("<unset>");
        vec![
            name(o),
            json!(s(o, "/spec/capacity/storage")),
            json!(access_modes_cell(o.pointer("/spec/accessModes"))),
            json!(s(o, "/spec/persistentVolumeReclaimPolicy")),
            json!(phase),
            json!(claim),
            json!(s(o, "/spec/storageClassName")),
            json!(vac),
            json!(s(o, "/status/reason")),
            json!(age(o, CREATED, now)),
            json!(s(o, "/spec/volumeMode")),
        ]
    }

    fn typed(&self) -> Option<&'static dyn Typed> {
        typed::<core::PersistentVolume>()
    }
}

/// kube-apiserver's `ValidatePersistentVolumeSpec`, with the sources kedge cannot mount
/// refused by name.
fn validate_spec(spec: &Value, causes: &mut Vec<Cause>) {
    validate_storage(
        spec.pointer("/capacity/storage"),
        "spec.capacity[storage]",
        causes,
    );
    validate_access_modes(spec.get("accessModes"), "spec.accessModes", causes);
    validate_volume_mode(spec, "spec.volumeMode", causes);
    if let Some(p) = spec
        .get("persistentVolumeReclaimPolicy")
        .and_then(Value::as_str)
        && !RECLAIM_POLICIES.contains(&p)
    {
        causes.push(if p == "Recycle" {
            Cause::forbidden(
                "spec.persistentVolumeReclaimPolicy",
                "kedge does not recycle volumes (Recycle is deprecated): use Delete or Retain",
            )
        } else {
            Cause::unsupported("spec.persistentVolumeReclaimPolicy", p, &RECLAIM_POLICIES)
        });
    }
    let set: Vec<&str> = ALL_SOURCES
        .iter()
        .copied()
        .filter(|k| spec.get(*k).is_some_and(|v| !v.is_null()))
        .collect();
    match set.as_slice() {
        [] => causes.push(Cause {
            reason: "FieldValueRequired",
            field: "spec".into(),
            message: "Required value: must specify a volume type".into(),
        }),
        [_] => {}
        [_, rest @ ..] => {
            for k in rest {
                causes.push(Cause::forbidden(
                    format!("spec.{k}"),
                    "may not specify more than 1 volume type",
                ));
            }
        }
    }
    for k in &set {
        if !SOURCES.contains(k) {
            causes.push(Cause::forbidden(
                format!("spec.{k}"),
                "the node agent mounts hostPath and local persistent volumes only",
            ));
        }
    }
    for k in SOURCES {
        if let Some(src) = spec.get(k).filter(|v| !v.is_null()) {
            let path = src["path"].as_str().unwrap_or_default();
            if path.is_empty() {
                causes.push(Cause::required(format!("spec.{k}.path")));
            } else if !path.starts_with('/') {
                causes.push(Cause::invalid(
                    format!("spec.{k}.path"),
                    path,
                    "must be an absolute path",
                ));
            } else if path.split('/').any(|c| c == "..") {
                causes.push(Cause::invalid(
                    format!("spec.{k}.path"),
                    path,
                    "must not contain '..'",
                ));
            }
        }
    }
    if let Some(t) = spec.pointer("/hostPath/type").and_then(Value::as_str)
        && !matches!(t, "" | "DirectoryOrCreate" | "Directory")
    {
        causes.push(Cause::unsupported(
            "spec.hostPath.type",
            t,
            &["", "Directory", "DirectoryOrCreate"],
        ));
    }
    let affinity = spec
        .pointer("/nodeAffinity/required/nodeSelectorTerms")
        .and_then(Value::as_array)
        .is_some_and(|t| !t.is_empty());
    if spec.get("local").is_some_and(|v| !v.is_null()) && !affinity {
        causes.push(Cause {
            reason: "FieldValueRequired",
            field: "spec.nodeAffinity".into(),
            message: "Required value: Local volume requires node affinity".into(),
        });
    }
    if spec.get("mountOptions").is_some_and(|v| !v.is_null()) {
        causes.push(Cause::forbidden(
            "spec.mountOptions",
            "hostPath and local volumes are bind mounts: mount options do not apply",
        ));
    }
}

#[cfg(test)]
mod tests {
    use crate::kinds::test_support::*;

    fn pv(spec: Value) -> Value {
        json!({"apiVersion": "v1", "kind": "PersistentVolume",
            "metadata": {"name": "pv1"}, "spec": spec})
    }

    fn base(source: Value) -> Value {
        let mut s = json!({"capacity": {"storage": "1Gi"}, "accessModes": ["ReadWriteOnce"]});
        for (k, v) in source.as_object().unwrap() {
            s[k] = v.clone();
        }
        s
    }

    #[test]
    fn volumes_are_checked_and_only_mountable_sources_accepted() {
        let res = by_kind("v1", "PersistentVolume").unwrap();
        let affinity = json!({"required": {"nodeSelectorTerms": [{"matchExpressions": [
            {"key": "kubernetes.io/hostname", "operator": "In", "values": ["n1"]}]}]}});
        let mut ok = pv(base(json!({"hostPath": {"path": "/srv/a"}})));
        default(res, &mut ok);
        assert_eq!(ok["spec"]["persistentVolumeReclaimPolicy"], "Retain");
        assert!(validate(res, &ok).is_empty());
        let local = pv(base(
            json!({"local": {"path": "/mnt/d"}, "nodeAffinity": affinity}),
        ));
        assert!(validate(res, &local).is_empty());
        for (spec, want) in [
            (
                json!({"local": {"path": "/mnt/d"}}),
                vec![("spec.nodeAffinity", "FieldValueRequired")],
            ),
            (
                json!({"nfs": {"server": "s", "path": "/x"}}),
                vec![("spec.nfs", "FieldValueForbidden")],
            ),
            (json!({}), vec![("spec", "FieldValueRequired")]),
            (
                json!({"hostPath": {"path": "/a"}, "local": {"path": "/b"}, "nodeAffinity": affinity}),
                vec![("spec.local", "FieldValueForbidden")],
            ),
            (
                json!({"hostPath": {"path": "rel"}, "persistentVolumeReclaimPolicy": "Recycle"}),
                vec![
                    ("spec.persistentVolumeReclaimPolicy", "FieldValueForbidden"),
                    ("spec.hostPath.path", "FieldValueInvalid"),
                ],
            ),
        ] {
            assert_eq!(
                field_reasons(&validate(res, &pv(base(spec.clone())))),
                want,
                "{spec}"
            );
        }
        let mut no_cap = pv(base(json!({"hostPath": {"path": "/a"}})));
        no_cap["spec"].as_object_mut().unwrap().remove("capacity");
        no_cap["spec"]["accessModes"] = json!([]);
        assert_eq!(
            fields(&validate(res, &no_cap)),
            ["spec.capacity[storage]", "spec.accessModes"]
        );
    }

    #[test]
    fn the_source_is_immutable() {
        let res = by_kind("v1", "PersistentVolume").unwrap();
        let old = pv(base(json!({"hostPath": {"path": "/a"}})));
        let mut new = old.clone();
        new["spec"]["hostPath"]["path"] = json!("/b");
        assert_eq!(
            fields(&validate_update(res, &old, &new)),
            ["spec.persistentvolumesource"]
        );
        let mut claimed = old.clone();
        claimed["spec"]["claimRef"] = json!({"namespace": "default", "name": "c"});
        assert!(validate_update(res, &old, &claimed).is_empty());
    }

    #[test]
    fn table_and_status() {
        let res = by_kind("v1", "PersistentVolume").unwrap();
        let rules = crate::kinds::rules(res);
        let mut o = pv(base(json!({"hostPath": {"path": "/a"}})));
        default(res, &mut o);
        crate::kinds::on_create(res, &mut o, "2026-01-01T00:00:00Z");
        assert_eq!(o["status"]["phase"], "Available");
        o["spec"]["claimRef"] = json!({"namespace": "default", "name": "data"});
        o["spec"]["storageClassName"] = json!("manual");
        o["status"]["phase"] = json!("Bound");
        let cells = rules.cells(&o, chrono::Utc::now());
        assert_eq!(
            cells[..9],
            [
                json!("pv1"),
                json!("1Gi"),
                json!("RWO"),
                json!("Retain"),
                json!("Bound"),
                json!("default/data"),
                json!("manual"),
                json!("<unset>"),
                json!("")
            ]
        );
    }
}
