//! Per-kind API behaviour — defaulting, validation, `kubectl get` columns and the typed
//! Kubernetes form — one [`KindRules`] value per kind, applied to every write whatever its
//! source (kubectl, client libraries, agents, plugins): the same path for all callers.
//!
//! The drivers here ([`default`], [`validate_replacing`], [`validate_update`], ...) run what
//! every kind shares (the metadata name, labels and annotations) and then the kind's own rules,
//! so causes come out in kube-apiserver's order. [`crate::table`], [`crate::schema`] and
//! [`crate::openapi`] reach the kind through [`rules`] too.
//!
//! Adding a kind (after its row in `kedge_core::resources::RESOURCES`):
//! 1. a file `kinds/<kind>.rs` with a unit struct implementing [`KindRules`], overriding only
//!    what differs from the defaults (no defaulting or status, no checks beyond the shared
//!    ones, NAME and AGE columns, no typed form: an open schema and no field pruning);
//! 2. its `mod` line below and its line in [`rules`].
//!
//! Shared pieces: pod specs and workload templates in [`podspec`], Secret and ConfigMap data
//! in [`data`], cause wording and defaulting helpers in [`common`], cell formatting in
//! [`table_fmt`]. Strategic-merge keys are per field, not per kind: `kedge_core::patch`.

use std::marker::PhantomData;

use k8s_openapi::schemars::JsonSchema;
use k8s_openapi::schemars::generate::SchemaGenerator;
use serde_json::Value;

use crate::error::Cause;
use kedge_core::meta;
use kedge_core::resources::Resource;

mod common;
mod data;
mod podspec;
mod probes;
pub(crate) mod table_fmt;
mod unsupported;

mod configmap;
mod controllerrevision;
mod crd;
mod cronjob;
mod daemonset;
mod deployment;
mod endpoints;
mod endpointslice;
mod event;
mod hpa;
mod job;
mod lease;
mod limitrange;
mod namespace;
mod node;
mod persistentvolume;
pub(crate) mod persistentvolumeclaim;
mod pod;
mod poddisruptionbudget;
pub(crate) mod priorityclass;
mod rbac;
mod replicaset;
mod resourcequota;
pub(crate) mod runtimeclass;
mod secret;
mod service;
mod serviceaccount;
mod statefulset;
pub(crate) mod storageclass;

pub(crate) use namespace::NAMESPACE_FINALIZER;
pub(crate) use table_fmt::Column;

/// What one kind does differently. Every method defaults to what a kind without rules gets,
/// so a kind overrides only what it has.
pub trait KindRules: Sync {
    /// Why `metadata.name` is not a valid name of this kind: a DNS subdomain unless the kind
    /// says otherwise.
    fn check_name(&self, name: &str) -> Result<(), String> {
        meta::validate_subdomain(name)
    }

    /// Fills in what Kubernetes defaults on create and update.
    fn default(&self, _obj: &mut Value) {}

    /// The status a new object starts with (kube-apiserver resets it on create). Written the
    /// way the Go zero value serialises, so strict clients find their required counters.
    fn initial_status(&self) -> Option<Value> {
        None
    }

    /// On create, after defaulting: the status the object starts with and whatever else
    /// kube-apiserver's create strategy sets. By default, [`Self::initial_status`].
    fn on_create(&self, obj: &mut Value, _now: &str) {
        if let Some(s) = self.initial_status() {
            obj["status"] = s;
        }
    }

    /// Before defaulting an update: carries over what the server set and the client omitted.
    fn prepare_update(&self, _old: &Value, _new: &mut Value) {}

    /// `(field, message)` when an update changes a field this kind keeps immutable (checked
    /// before validation, as kube-apiserver's update strategies do).
    fn immutable_change(&self, _old: &Value, _new: &Value) -> Option<(String, String)> {
        None
    }

    /// Whether the update-only checks report before the object's own (Secret and ConfigMap:
    /// `ValidateSecretUpdate` and `ValidateConfigMapUpdate` do, and kubectl shows the causes
    /// in that order).
    fn update_checks_first(&self) -> bool {
        false
    }

    /// The kind's own checks of an object about to be stored in place of `old` (if any), after
    /// the shared metadata checks.
    fn validate(
        &self,
        _res: &Resource,
        _obj: &Value,
        _old: Option<&Value>,
        _causes: &mut Vec<Cause>,
    ) {
    }

    /// Update-only checks: fields kube-apiserver refuses to change once set.
    fn validate_update(&self, _old: &Value, _new: &Value, _causes: &mut Vec<Cause>) {}

    /// A write of the `status` subresource (`obj`, in place of `old`): defaults and checks of
    /// the whole object (custom kinds' schemas; a definition's server-owned status; other
    /// built-in kinds check their status writes elsewhere or not at all).
    fn validate_status(&self, _old: &Value, _obj: &mut Value) -> Vec<Cause> {
        Vec::new()
    }

    /// The columns of `kubectl get`, as kubectl's printer for the kind has them.
    fn columns(&self) -> &'static [Column] {
        &table_fmt::NAME_AGE
    }

    /// One row: a cell per column of [`Self::columns`].
    fn cells(&self, o: &Value, now: chrono::DateTime<chrono::Utc>) -> Vec<Value> {
        vec![
            table_fmt::name(o),
            Value::from(table_fmt::age(o, table_fmt::CREATED, now)),
        ]
    }

    /// The Kubernetes type objects of this kind decode into (unknown fields dropped) and whose
    /// schema `/openapi/v3` serves; `None` for a kind without one.
    fn typed(&self) -> Option<&'static dyn Typed> {
        None
    }
}

/// The rules of each kind: the one registration line of a kind.
pub fn rules(res: &Resource) -> &'static dyn KindRules {
    match (res.group, res.kind) {
        ("", "Namespace") => &namespace::Namespace,
        ("", "Node") => &node::Node,
        ("", "Pod") => &pod::Pod,
        ("", "Event") => &event::Event,
        ("", "Secret") => &secret::Secret,
        ("", "ConfigMap") => &configmap::ConfigMap,
        ("", "Service") => &service::Service,
        ("", "Endpoints") => &endpoints::Endpoints,
        ("", "ServiceAccount") => &serviceaccount::ServiceAccount,
        ("", "ReplicationController") => &replicaset::ReplicationController,
        ("", "PersistentVolumeClaim") => &persistentvolumeclaim::PersistentVolumeClaim,
        ("", "PersistentVolume") => &persistentvolume::PersistentVolume,
        ("", "ResourceQuota") => &resourcequota::ResourceQuota,
        ("", "LimitRange") => &limitrange::LimitRange,
        ("storage.k8s.io", "StorageClass") => &storageclass::StorageClass,
        ("scheduling.k8s.io", "PriorityClass") => &priorityclass::PriorityClass,
        ("node.k8s.io", "RuntimeClass") => &runtimeclass::RuntimeClass,
        ("apps", "ControllerRevision") => &controllerrevision::ControllerRevision,
        ("apps", "DaemonSet") => &daemonset::DaemonSet,
        ("apps", "Deployment") => &deployment::Deployment,
        ("apps", "ReplicaSet") => &replicaset::ReplicaSet,
        ("apps", "StatefulSet") => &statefulset::StatefulSet,
        ("batch", "Job") => &job::Job,
        ("batch", "CronJob") => &cronjob::CronJob,
        ("coordination.k8s.io", "Lease") => &lease::Lease,
        ("discovery.k8s.io", "EndpointSlice") => &endpointslice::EndpointSlice,
        ("policy", "PodDisruptionBudget") => &poddisruptionbudget::PodDisruptionBudget,
        ("autoscaling", "HorizontalPodAutoscaler") => &hpa::HorizontalPodAutoscaler,
        (crate::rbac::GROUP, "Role") => &rbac::ROLE,
        (crate::rbac::GROUP, "ClusterRole") => &rbac::CLUSTER_ROLE,
        (crate::rbac::GROUP, "RoleBinding") => &rbac::ROLE_BINDING,
        (crate::rbac::GROUP, "ClusterRoleBinding") => &rbac::CLUSTER_ROLE_BINDING,
        ("plugins.kedge.io", "Plugin") => &crate::plugin_kind::Rules,
        (crate::crd::GROUP, "CustomResourceDefinition") => &crd::Crd,
        _ => match crate::crd::custom(res) {
            Some(c) if kedge_core::resources::is_custom(res) => c,
            _ => &NoRules,
        },
    }
}

/// The typed form of a version served by conversion whose shape differs from its stored
/// version's (autoscaling/v1 HorizontalPodAutoscaler): its own OpenAPI schema. `None` for
/// a version of the stored shape.
pub(crate) fn version_typed(version: &Resource) -> Option<&'static dyn Typed> {
    match (version.group, version.version, version.kind) {
        ("autoscaling", "v1", "HorizontalPodAutoscaler") => hpa::v1_typed(),
        _ => None,
    }
}

/// A kind with nothing of its own.
struct NoRules;

impl KindRules for NoRules {}

/// A kind's Kubernetes type, behind an object-safe face: decoding a body through it and
/// registering its schema.
pub trait Typed: Sync {
    /// The object as the typed struct reads and writes it back: unknown fields dropped, a
    /// wrong type an error.
    fn round_trip(&self, obj: &Value) -> Result<Value, String>;

    /// Adds the type's schema (and those it refers to) to `generator`; returns its definition
    /// name (`io.k8s.api.apps.v1.Deployment`).
    fn register(&self, generator: &mut SchemaGenerator) -> String;
}

/// [`Typed`] for the Rust type `T`.
struct TypedAs<T>(PhantomData<fn() -> T>);

impl<T> TypedAs<T> {
    const IT: Self = TypedAs(PhantomData);
}

impl<T: serde::de::DeserializeOwned + serde::Serialize + JsonSchema> Typed for TypedAs<T> {
    fn round_trip(&self, obj: &Value) -> Result<Value, String> {
        let typed: T = serde_json::from_value(obj.clone()).map_err(|e| e.to_string())?;
        serde_json::to_value(typed).map_err(|e| e.to_string())
    }

    fn register(&self, generator: &mut SchemaGenerator) -> String {
        generator.subschema_for::<T>();
        T::schema_name().into_owned()
    }
}

/// The typed form of a kind whose Rust type is `T`, for [`KindRules::typed`].
pub(crate) const fn typed<T>() -> Option<&'static dyn Typed>
where
    T: serde::de::DeserializeOwned + serde::Serialize + JsonSchema + 'static,
{
    Some(&TypedAs::<T>::IT)
}

/// Fills in what Kubernetes defaults on create and update.
pub fn default(res: &Resource, obj: &mut Value) {
    rules(res).default(obj);
}

/// [`KindRules::on_create`] of `res`'s kind: the status a new object starts with, and what
/// else create sets.
pub(crate) fn on_create(res: &Resource, obj: &mut Value, now: &str) {
    rules(res).on_create(obj, now);
}

/// [`KindRules::immutable_change`] of `res`'s kind.
pub(crate) fn immutable_change(
    res: &Resource,
    old: &Value,
    new: &Value,
) -> Option<(String, String)> {
    rules(res).immutable_change(old, new)
}

/// [`KindRules::update_checks_first`] of `res`'s kind.
pub(crate) fn update_checks_first(res: &Resource) -> bool {
    rules(res).update_checks_first()
}

/// Before defaulting an update: carries over what the server allocated and the client
/// omitted (kube-apiserver's `patchAllocatedValues`), so `kubectl replace` of a manifest
/// without `clusterIP` or `nodePort` keeps them instead of failing as a change.
pub(crate) fn prepare_update(res: &Resource, old: &Value, new: &mut Value) {
    rules(res).prepare_update(old, new);
}

/// [`KindRules::validate_status`] of `res`'s kind.
pub(crate) fn validate_status(res: &Resource, old: &Value, obj: &mut Value) -> Vec<Cause> {
    rules(res).validate_status(old, obj)
}

/// Validates an object about to be created; an empty list means valid.
pub fn validate(res: &Resource, obj: &Value) -> Vec<Cause> {
    validate_replacing(res, obj, None)
}

/// Validates an object about to be stored in place of `old` (if any). Rules kedge added after
/// objects may have been stored without them apply to an update only when it touches what
/// they check, so such an object can still be relabelled, finalized and deleted.
pub(crate) fn validate_replacing(res: &Resource, obj: &Value, old: Option<&Value>) -> Vec<Cause> {
    let rules = rules(res);
    let mut causes = Vec::new();
    let name = meta::name(obj);
    if let Err(why) = rules.check_name(name) {
        causes.push(Cause::invalid("metadata.name", name, why));
    }
    for at in [
        "/metadata",
        "/spec/template/metadata",
        "/spec/jobTemplate/metadata",
        "/spec/jobTemplate/spec/template/metadata",
        "/template/metadata",
    ] {
        validate_labels_and_annotations(obj, old, at, &mut causes);
    }
    rules.validate(res, obj, old, &mut causes);
    unsupported::check(res, obj, old, &mut causes);
    causes
}

/// Update-only rules: fields kube-apiserver refuses to change once set.
pub(crate) fn validate_update(res: &Resource, old: &Value, new: &Value) -> Vec<Cause> {
    let mut causes = Vec::new();
    rules(res).validate_update(old, new, &mut causes);
    causes
}

/// ValidateObjectMeta's rules on the labels and annotations of the metadata at `at` (a JSON
/// pointer): keys are qualified names, label values short label-shaped strings, annotations
/// at most 256 KiB in all. On an update only what changed is checked, so an object stored
/// before kedge checked these can still be finalized and deleted.
fn validate_labels_and_annotations(
    obj: &Value,
    old: Option<&Value>,
    at: &str,
    causes: &mut Vec<Cause>,
) {
    let Some(m) = obj.pointer(at) else {
        return;
    };
    let path = at.trim_start_matches('/').replace('/', ".");
    let changed =
        |field: &str| old.is_none_or(|o| o.pointer(at).and_then(|m| m.get(field)) != m.get(field));
    if changed("labels")
        && let Some(labels) = m.get("labels").and_then(Value::as_object)
    {
        let field = format!("{path}.labels");
        for (k, v) in labels {
            for why in meta::qualified_name_errors(k) {
                causes.push(Cause::invalid(&field, k, why));
            }
            if let Some(v) = v.as_str() {
                for why in meta::label_value_errors(v) {
                    causes.push(Cause::invalid(&field, v, why));
                }
            }
        }
    }
    if changed("annotations")
        && let Some(annotations) = m.get("annotations").and_then(Value::as_object)
    {
        let field = format!("{path}.annotations");
        let mut size = 0;
        for (k, v) in annotations {
            for why in meta::qualified_name_errors(&k.to_lowercase()) {
                causes.push(Cause::invalid(&field, k, why));
            }
            size += k.len() + v.as_str().map_or(0, str::len);
        }
        if size > meta::ANNOTATIONS_MAX_BYTES {
            causes.push(Cause {
                reason: "FieldValueTooLong",
                field,
                message: format!(
                    "Too long: must have at most {} bytes",
                    meta::ANNOTATIONS_MAX_BYTES
                ),
            });
        }
    }
}

/// What the kinds' tests share.
#[cfg(test)]
pub(crate) mod test_support {
    pub(crate) use super::{
        default, prepare_update, validate, validate_replacing, validate_update,
    };
    pub(crate) use crate::error::Cause;
    pub(crate) use kedge_core::resources::by_kind;
    pub(crate) use serde_json::{Value, json};

    pub(crate) fn field_reasons(causes: &[Cause]) -> Vec<(&str, &str)> {
        causes
            .iter()
            .map(|c| (c.field.as_str(), c.reason))
            .collect()
    }

    pub(crate) fn fields(causes: &[Cause]) -> Vec<&str> {
        causes.iter().map(|c| c.field.as_str()).collect()
    }

    pub(crate) fn pod_template(labels: Value, restart: &str) -> Value {
        json!({"metadata": {"labels": labels}, "spec": {"restartPolicy": restart,
            "containers": [{"name": "c", "image": "busybox:1.28"}]}})
    }

    pub(crate) fn b64(s: &str) -> String {
        use base64::Engine as _;
        base64::engine::general_purpose::STANDARD.encode(s)
    }
}

#[cfg(test)]
mod tests {
    use super::test_support::*;

    /// Regression (hardening issue, finding 5): label keys and values, and the annotations'
    /// total size, are checked as Kubernetes checks them (they were all accepted).
    #[test]
    fn labels_and_annotations_follow_kubernetes() {
        let cm = by_kind("v1", "ConfigMap").unwrap();
        let with = |labels: Value, annotations: Value| json!({"metadata": {"name": "a", "labels": labels, "annotations": annotations}});
        for (labels, bad) in [
            (json!({"a b": "x"}), "a b"),
            (json!({"-bad-": "x"}), "-bad-"),
            (json!({"ok": "bad value!"}), "bad value!"),
            (json!({"ok": "x".repeat(64)}), ""),
            (json!({"x".repeat(64): "v"}), ""),
        ] {
            let causes = validate(cm, &with(labels, json!({})));
            assert_eq!(
                field_reasons(&causes),
                [("metadata.labels", "FieldValueInvalid")]
            );
            assert!(causes[0].message.contains(bad), "{}", causes[0].message);
        }
        let fine = with(
            json!({"app.kubernetes.io/name": "web", "tier": "", "v": "1.2_3"}),
            json!({"kubectl.kubernetes.io/last-applied-configuration": "{}", "Note": "x"}),
        );
        assert!(validate(cm, &fine).is_empty());
        let big = with(json!({}), json!({"a": "x".repeat(256 * 1024)}));
        assert_eq!(
            field_reasons(&validate(cm, &big)),
            [("metadata.annotations", "FieldValueTooLong")]
        );
        // Templates too.
        let dep = by_kind("apps/v1", "Deployment").unwrap();
        let d = json!({"metadata": {"name": "d"}, "spec": {"selector": {"matchLabels": {"a b": "x"}},
            "template": {"metadata": {"labels": {"a b": "x"}}, "spec": {"containers": [{"name": "c", "image": "i"}]}}}});
        assert!(
            field_reasons(&validate(dep, &d))
                .contains(&("spec.template.metadata.labels", "FieldValueInvalid"))
        );
        // An update that leaves bad labels stored before alone is not refused for them.
        let old = with(json!({"a b": "x"}), json!({}));
        let mut new = old.clone();
        new["data"] = json!({"k": "v"});
        assert!(validate_replacing(cm, &new, Some(&old)).is_empty());
    }
}
