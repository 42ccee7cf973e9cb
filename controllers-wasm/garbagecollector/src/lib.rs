//! The garbage collector as a kedge plugin: what Kubernetes' garbage collector does with
//! `metadata.ownerReferences` and the deletion finalizers.
//!
//! The API server only marks: a background deletion removes the object at once, a foreground
//! one leaves it with `deletionTimestamp` and the finalizer `foregroundDeletion`, an orphaning
//! one with the finalizer `orphan`. This plugin does the rest. It registers for every kind, so
//! the host gives it a key for every object that changes, and for a deletion also the keys of
//! the deleted object's dependents and owners. For each key it:
//!
//! - **orphans**: the object is being deleted and holds `orphan`: every dependent loses its
//!   owner reference to it, then the finalizer goes (and with it, the object);
//! - **waits in the foreground**: the object is being deleted and holds `foregroundDeletion`:
//!   its dependents are deleted (in the foreground themselves when they have dependents of
//!   their own), and once no dependent with `blockOwnerDeletion: true` is left the finalizer
//!   goes;
//! - **collects**: the object has owner references and none of its owners exists any more
//!   (same name *and* uid) — or the remaining ones are being deleted in the foreground — so it
//!   is deleted (uid precondition: never a namesake created meanwhile). With some owners left,
//!   references to vanished owners are dropped instead and foreground owners unblocked.
//!
//! An owner of a kind the cluster does not serve counts as present: the collector cannot tell.

use serde_json::{Value, json};

use kedge_guest::{
    ApiError, Cluster, Controller, DeleteOptions, KindRef, LogLevel, ObjectKey, Outcome,
    Propagation, Registration, Result,
};

pub const FOREGROUND: &str = "foregroundDeletion";
pub const ORPHAN: &str = "orphan";

/// How long an owner waiting for dependents is looked at again without an event (a
/// dependent's deletion event normally brings it back sooner).
const FOREGROUND_RECHECK_MS: u64 = 10_000;
/// Attempts of a read-modify-write that keeps meeting concurrent writers.
const ATTEMPTS: usize = 5;

pub struct GarbageCollector;

impl Controller for GarbageCollector {
    fn registration() -> Registration {
        Registration::new("garbagecollector", KindRef::every())
            .reads([KindRef::every()])
            .writes([KindRef::every()])
    }

    fn reconcile(cluster: &dyn Cluster, key: &ObjectKey) -> Result<Outcome> {
        reconcile(cluster, key)
    }
}

kedge_guest::export_controller!(GarbageCollector);

fn done() -> Outcome {
    Outcome {
        requeue_after_ms: None,
    }
}

fn meta<'a>(obj: &'a Value, field: &str) -> &'a str {
    obj["metadata"][field].as_str().unwrap_or_default()
}

fn finalizers(obj: &Value) -> Vec<String> {
    obj["metadata"]["finalizers"]
        .as_array()
        .into_iter()
        .flatten()
        .filter_map(|f| f.as_str().map(String::from))
        .collect()
}

fn deleting(obj: &Value) -> bool {
    obj["metadata"].get("deletionTimestamp").is_some()
}

fn owner_refs(obj: &Value) -> Vec<Value> {
    obj["metadata"]["ownerReferences"]
        .as_array()
        .cloned()
        .unwrap_or_default()
}

fn api_version_kind(obj: &Value) -> (&str, &str) {
    (
        obj["apiVersion"].as_str().unwrap_or_default(),
        obj["kind"].as_str().unwrap_or_default(),
    )
}

pub fn reconcile(c: &dyn Cluster, key: &ObjectKey) -> Result<Outcome> {
    let Some(obj) = c.get_object(&key.api_version, &key.kind, &key.namespace, &key.name)? else {
        // Gone: the host queued its dependents (they are collected as orphans) and its owners
        // (one may be waiting for it in the foreground).
        return Ok(done());
    };
    if deleting(&obj) {
        let f = finalizers(&obj);
        if f.iter().any(|x| x == ORPHAN) {
            orphan_dependents(c, &obj)?;
            remove_finalizer(c, key, obj, ORPHAN)?;
            return Ok(done());
        }
        if f.iter().any(|x| x == FOREGROUND) {
            return foreground(c, key, obj);
        }
    }
    collect(c, key, &obj)?;
    Ok(done())
}

/// What one owner reference points at now.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Owner {
    /// Exists, with the referenced uid, and is not being deleted in the foreground.
    Solid,
    /// Gone, or replaced by a namesake with another uid.
    Dangling,
    /// Being deleted in the foreground: it waits for its dependents.
    Waiting,
}

fn classify(c: &dyn Cluster, dependent_ns: &str, r: &Value) -> Result<Owner> {
    let field = |f: &str| r[f].as_str().unwrap_or_default();
    // A namespaced owner lives in its dependent's namespace; the host ignores the namespace
    // for cluster-scoped kinds.
    match c.get_object(
        field("apiVersion"),
        field("kind"),
        dependent_ns,
        field("name"),
    ) {
        Ok(None) => Ok(Owner::Dangling),
        Ok(Some(o)) if meta(&o, "uid") != field("uid") => Ok(Owner::Dangling),
        Ok(Some(o)) if deleting(&o) && finalizers(&o).iter().any(|f| f == FOREGROUND) => {
            Ok(Owner::Waiting)
        }
        Ok(Some(_)) => Ok(Owner::Solid),
        // A kind the cluster does not serve (or we may not read): cannot tell, keep.
        Err(ApiError::Forbidden(_) | ApiError::NotFound(_) | ApiError::Invalid(_)) => {
            Ok(Owner::Solid)
        }
        Err(e) => Err(e.into()),
    }
}

/// The dependent side: collect `obj` if its owners are all gone (or waiting in the
/// foreground); otherwise drop references to vanished owners.
fn collect(c: &dyn Cluster, key: &ObjectKey, obj: &Value) -> Result<()> {
    let mut obj = obj.clone();
    for _ in 0..ATTEMPTS {
        let refs = owner_refs(&obj);
        if refs.is_empty() {
            return Ok(());
        }
        let ns = meta(&obj, "namespace").to_string();
        let mut states = Vec::with_capacity(refs.len());
        for r in &refs {
            states.push(classify(c, &ns, r)?);
        }
        let any = |s: Owner| states.contains(&s);
        if any(Owner::Solid) {
            if !any(Owner::Dangling) && !any(Owner::Waiting) {
                return Ok(());
            }
            // Keep the live owners; a foreground owner must not wait for a dependent that
            // stays for another owner's sake.
            let kept: Vec<Value> = refs
                .iter()
                .zip(&states)
                .filter(|(_, s)| **s != Owner::Dangling)
                .map(|(r, s)| {
                    let mut r = r.clone();
                    if *s == Owner::Waiting && r.get("blockOwnerDeletion").is_some() {
                        r["blockOwnerDeletion"] = json!(false);
                    }
                    r
                })
                .collect();
            match set_owner_refs(c, key, &obj, kept) {
                Err(ApiError::Conflict(_)) => {}
                other => return Ok(other?),
            }
        } else {
            if deleting(&obj) {
                return Ok(());
            }
            // Dependents of a foreground deletion go in the foreground too when they have
            // dependents of their own, so the chain is deleted bottom-up.
            let propagation = if any(Owner::Waiting) && !c.dependents(meta(&obj, "uid"))?.is_empty()
            {
                Propagation::Foreground
            } else {
                Propagation::Background
            };
            let opts = DeleteOptions {
                propagation: Some(propagation),
                uid: Some(meta(&obj, "uid").to_string()),
                resource_version: Some(meta(&obj, "resourceVersion").to_string()),
            };
            match c.delete_object_with(
                &key.api_version,
                &key.kind,
                &key.namespace,
                &key.name,
                &opts,
            ) {
                Ok(()) => {
                    c.log(
                        LogLevel::Debug,
                        &format!(
                            "collected {} {}/{}: its owners are gone",
                            key.kind, key.namespace, key.name
                        ),
                    );
                    return Ok(());
                }
                Err(ApiError::NotFound(_)) => return Ok(()),
                Err(ApiError::Conflict(_)) => {}
                Err(e) => return Err(e.into()),
            }
        }
        // Someone wrote meanwhile: judge the fresh object.
        match c.get_object(&key.api_version, &key.kind, &key.namespace, &key.name)? {
            Some(fresh) if meta(&fresh, "uid") == meta(&obj, "uid") => obj = fresh,
            _ => return Ok(()),
        }
    }
    Err(format!(
        "{} {}/{} kept changing while being collected",
        key.kind, key.namespace, key.name
    )
    .into())
}

fn set_owner_refs(
    c: &dyn Cluster,
    key: &ObjectKey,
    obj: &Value,
    refs: Vec<Value>,
) -> Result<(), ApiError> {
    // A merge patch replaces the list whole; the resourceVersion makes it conditional. Go's
    // omitempty: no owners is no field.
    let refs = if refs.is_empty() {
        Value::Null
    } else {
        Value::Array(refs)
    };
    let patch = json!({"metadata": {
        "ownerReferences": refs,
        "resourceVersion": meta(obj, "resourceVersion"),
    }});
    c.patch_object(
        &key.api_version,
        &key.kind,
        &key.namespace,
        &key.name,
        &patch,
    )
    .map(drop)
}

/// The dependents of `owner` as (key, object).
fn dependents_of(c: &dyn Cluster, owner: &Value) -> Result<Vec<(ObjectKey, Value)>> {
    let uid = meta(owner, "uid");
    Ok(c.dependents(uid)?
        .into_iter()
        .map(|d| {
            let (av, kind) = api_version_kind(&d);
            (
                ObjectKey::new(av, kind, meta(&d, "namespace"), meta(&d, "name")),
                d,
            )
        })
        .collect())
}

/// Removes every owner reference to `owner` from its dependents.
fn orphan_dependents(c: &dyn Cluster, owner: &Value) -> Result<()> {
    let uid = meta(owner, "uid").to_string();
    for (key, mut dep) in dependents_of(c, owner)? {
        for attempt in 0..ATTEMPTS {
            let kept: Vec<Value> = owner_refs(&dep)
                .into_iter()
                .filter(|r| r["uid"].as_str() != Some(uid.as_str()))
                .collect();
            match set_owner_refs(c, &key, &dep, kept) {
                Ok(()) | Err(ApiError::NotFound(_)) => break,
                Err(ApiError::Conflict(_)) if attempt + 1 < ATTEMPTS => {
                    match c.get_object(&key.api_version, &key.kind, &key.namespace, &key.name)? {
                        Some(fresh) => dep = fresh,
                        None => break,
                    }
                }
                Err(e) => return Err(format!("orphaning {} {}: {e}", key.kind, key.name).into()),
            }
        }
    }
    Ok(())
}

/// Drops `finalizer` from `obj` (read-modify-write on resourceVersion).
fn remove_finalizer(
    c: &dyn Cluster,
    key: &ObjectKey,
    mut obj: Value,
    finalizer: &str,
) -> Result<()> {
    for _ in 0..ATTEMPTS {
        let rest: Vec<String> = finalizers(&obj)
            .into_iter()
            .filter(|f| f != finalizer)
            .collect();
        let patch = json!({"metadata": {
            "finalizers": if rest.is_empty() { Value::Null } else { json!(rest) },
            "resourceVersion": meta(&obj, "resourceVersion"),
        }});
        match c.patch_object(
            &key.api_version,
            &key.kind,
            &key.namespace,
            &key.name,
            &patch,
        ) {
            Ok(_) | Err(ApiError::NotFound(_)) => return Ok(()),
            Err(ApiError::Conflict(_)) => {
                match c.get_object(&key.api_version, &key.kind, &key.namespace, &key.name)? {
                    Some(fresh) if meta(&fresh, "uid") == meta(&obj, "uid") => obj = fresh,
                    _ => return Ok(()),
                }
            }
            Err(e) => return Err(e.into()),
        }
    }
    Err(format!(
        "{} {}/{} kept changing while its {finalizer} finalizer was removed",
        key.kind, key.namespace, key.name
    )
    .into())
}

/// Whether `dep`'s reference to the owner with `uid` blocks the owner's deletion.
fn blocks(dep: &Value, uid: &str) -> bool {
    owner_refs(dep)
        .iter()
        .any(|r| r["uid"].as_str() == Some(uid) && r["blockOwnerDeletion"] == json!(true))
}

/// The owner side of a foreground deletion.
fn foreground(c: &dyn Cluster, key: &ObjectKey, owner: Value) -> Result<Outcome> {
    let uid = meta(&owner, "uid").to_string();
    for (dkey, dep) in dependents_of(c, &owner)? {
        if !deleting(&dep) {
            collect(c, &dkey, &dep)?;
        }
    }
    // What is left after this round (deletions without finalizers are immediate).
    let blocking: Vec<String> = dependents_of(c, &owner)?
        .iter()
        .filter(|(_, d)| blocks(d, &uid))
        .map(|(k, _)| format!("{} {}", k.kind, k.name))
        .collect();
    if !blocking.is_empty() {
        c.log(
            LogLevel::Debug,
            &format!(
                "{} {}/{} waits in the foreground for {}",
                key.kind,
                key.namespace,
                key.name,
                blocking.join(", ")
            ),
        );
        // Each dependent's deletion brings this owner back; the recheck is a safety net.
        return Ok(Outcome {
            requeue_after_ms: Some(FOREGROUND_RECHECK_MS),
        });
    }
    remove_finalizer(c, key, owner, FOREGROUND)?;
    Ok(done())
}

#[cfg(test)]
mod tests;
