//! The namespace controller as a kedge plugin: a deleted namespace is emptied, then removed.
//!
//! Deleting a namespace only marks it (`deletionTimestamp`, `status.phase: Terminating`; the
//! API refuses new objects in it) and holds it with `kubernetes` in `spec.finalizers`. This
//! plugin then deletes every object in it — every kind it may read, listed with the `*` kind,
//! Events included — and looks again every second while some are still going (pods stop
//! gracefully, finalizers hold others). Once nothing is left it drops its finalizer and the
//! API removes the namespace.

use k8s_openapi::api::core::v1::{Event, Namespace};
use serde_json::{Value, json};

use kedge_guest::{
    ApiError, ApiResultExt, Cluster, Controller, DeleteOptions, KindRef, LogLevel, ObjectKey,
    Outcome, Propagation, Registration, Result,
};

/// The `spec.finalizers` entry this controller owns.
pub const FINALIZER: &str = "kubernetes";
/// How soon a terminating namespace is looked at again while objects remain.
pub const RECHECK_MS: u64 = 1000;

pub struct Namespaces;

impl Controller for Namespaces {
    fn registration() -> Registration {
        Registration::new("namespace", KindRef::of::<Namespace>())
            // Every kind, and Events (which `*` leaves out).
            .reads([KindRef::every(), KindRef::of::<Event>()])
            .writes([
                KindRef::every(),
                KindRef::of::<Namespace>(),
                KindRef::of::<Event>(),
            ])
    }

    fn reconcile(cluster: &dyn Cluster, key: &ObjectKey) -> Result<Outcome> {
        reconcile(cluster, key)
    }
}

kedge_guest::export_controller!(Namespaces);

fn done() -> Outcome {
    Outcome {
        requeue_after_ms: None,
    }
}

fn field<'a>(obj: &'a Value, path: &str) -> &'a str {
    obj.pointer(path)
        .and_then(Value::as_str)
        .unwrap_or_default()
}

fn spec_finalizers(ns: &Value) -> Vec<Value> {
    ns.pointer("/spec/finalizers")
        .and_then(Value::as_array)
        .cloned()
        .unwrap_or_default()
}

pub fn reconcile(c: &dyn Cluster, key: &ObjectKey) -> Result<Outcome> {
    let Some(ns) = c.get_object("v1", "Namespace", "", &key.name)? else {
        return Ok(done());
    };
    if ns.pointer("/metadata/deletionTimestamp").is_none()
        || !spec_finalizers(&ns).iter().any(|f| f == FINALIZER)
    {
        return Ok(done());
    }
    let name = key.name.as_str();
    for obj in c.list_objects("*", "*", name, "")? {
        if obj.pointer("/metadata/deletionTimestamp").is_some() {
            continue;
        }
        let opts = DeleteOptions {
            propagation: Some(Propagation::Background),
            uid: Some(field(&obj, "/metadata/uid").to_string()),
            resource_version: None,
        };
        c.delete_object_with(
            field(&obj, "/apiVersion"),
            field(&obj, "/kind"),
            name,
            field(&obj, "/metadata/name"),
            &opts,
        )
        .ignore_stale()?;
    }
    let left = c.list_objects("*", "*", name, "")?;
    if !left.is_empty() {
        c.log(
            LogLevel::Debug,
            &format!(
                "namespace {name} waits for {} object(s) to go, e.g. {} {}",
                left.len(),
                field(&left[0], "/kind"),
                field(&left[0], "/metadata/name"),
            ),
        );
        return Ok(Outcome {
            requeue_after_ms: Some(RECHECK_MS),
        });
    }
    // Empty: drop our finalizer (conditional on the version read); the API then removes the
    // namespace.
    let rest: Vec<Value> = spec_finalizers(&ns)
        .into_iter()
        .filter(|f| f != FINALIZER)
        .collect();
    let mut next = ns.clone();
    next["spec"]["finalizers"] = json!(rest);
    match c.update_object("v1", "Namespace", "", &next) {
        Ok(_) | Err(ApiError::NotFound(_)) => Ok(done()),
        // Changed meanwhile: look again soon.
        Err(ApiError::Conflict(_)) => Ok(Outcome {
            requeue_after_ms: Some(RECHECK_MS),
        }),
        Err(e) => Err(e.into()),
    }
}

#[cfg(test)]
mod tests;
