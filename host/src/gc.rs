//! The garbage collector: deletes objects all of whose owners are gone.
//!
//! The API cascades deletes at the moment an owner is deleted; this catches what that cannot:
//! a dependent created by a controller that had not yet seen its owner's deletion (a
//! ReplicaSet replacing a pod while the ReplicaSet itself is being deleted). It watches every
//! namespaced kind through the shared informers and also sweeps periodically. Moving it into a
//! Wasm plugin is part of the controller-set issue.

use std::sync::Arc;
use std::time::Duration;

use serde_json::Value;
use tokio_util::sync::CancellationToken;

use crate::api::Api;
use crate::api::ops::DeleteOptions;
use crate::core::meta;
use crate::core::resources::{self, RESOURCES, Resource};
use crate::core::selector::LabelSelector;
use crate::plugins::informer::Informers;

/// A full sweep catches anything an event was missed for (e.g. across a relist).
const SWEEP_EVERY: Duration = Duration::from_secs(30);

/// True when `obj` has owner references and none of those owners exists any more (same name
/// and uid). An owner of a kind kedge does not serve counts as existing: we cannot tell.
pub fn orphaned(api: &Api, obj: &Value) -> bool {
    let Some(refs) = obj
        .pointer("/metadata/ownerReferences")
        .and_then(Value::as_array)
        .filter(|r| !r.is_empty())
    else {
        return false;
    };
    let ns = meta::namespace(obj);
    refs.iter().all(|r| {
        let av = r
            .get("apiVersion")
            .and_then(Value::as_str)
            .unwrap_or_default();
        let kind = r.get("kind").and_then(Value::as_str).unwrap_or_default();
        let name = r.get("name").and_then(Value::as_str).unwrap_or_default();
        let uid = r.get("uid").and_then(Value::as_str).unwrap_or_default();
        let Some(res) = resources::by_kind(av, kind) else {
            return false;
        };
        match api.get(res, if res.namespaced { ns } else { "" }, name) {
            Ok(owner) => meta::uid(&owner) != uid,
            Err(e) => e.code == 404,
        }
    })
}

fn collect(api: &Api, res: &'static Resource, obj: &Value) {
    if obj.pointer("/metadata/deletionTimestamp").is_some() || !orphaned(api, obj) {
        return;
    }
    let (ns, name) = (meta::namespace(obj), meta::name(obj));
    let opts = DeleteOptions {
        precondition_uid: Some(meta::uid(obj).to_string()),
        // The informer's copy may be stale (an orphaning write since removed the owner
        // reference): only delete the version that was judged.
        precondition_rv: obj
            .pointer("/metadata/resourceVersion")
            .and_then(Value::as_str)
            .map(String::from),
        ..Default::default()
    };
    match api.delete(res, ns, name, &opts) {
        Ok(_) => tracing::debug!(
            kind = res.kind,
            namespace = ns,
            name,
            "collected orphaned dependent"
        ),
        Err(e) if e.code == 404 || e.code == 409 => {}
        Err(e) => tracing::warn!(kind = res.kind, name, error = %e, "garbage collection failed"),
    }
}

/// Runs until `cancel`.
pub async fn run(api: Arc<Api>, informers: Arc<Informers>, cancel: CancellationToken) {
    let kinds: Vec<&'static Resource> = RESOURCES
        .iter()
        .filter(|r| r.namespaced && !matches!(r.kind, "Event" | "Lease"))
        .collect();
    let (tx, mut rx) = tokio::sync::mpsc::unbounded_channel();
    let mut forwarders = tokio::task::JoinSet::new();
    for res in &kinds {
        let inf = informers.get(res);
        let mut sub = inf.subscribe();
        let (tx, res) = (tx.clone(), *res);
        forwarders.spawn(async move {
            while let Some(change) = sub.recv().await {
                if tx.send((res, change.object)).is_err() {
                    break;
                }
            }
        });
    }
    drop(tx);
    let mut sweep = tokio::time::interval(SWEEP_EVERY);
    loop {
        tokio::select! {
            _ = cancel.cancelled() => break,
            Some((res, obj)) = rx.recv() => collect(&api, res, &obj),
            _ = sweep.tick() => {
                for res in &kinds {
                    for obj in informers.get(res).list("", &LabelSelector::default()) {
                        collect(&api, res, &obj);
                    }
                }
            }
        }
    }
    forwarders.abort_all();
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::api::ops::{WriteOptions, system_clock};
    use crate::store::redb::{Options, RedbStore};
    use serde_json::json;

    #[test]
    fn dependents_of_missing_owners_are_orphaned() {
        let dir = tempfile::tempdir().unwrap();
        let store = RedbStore::open(&dir.path().join("s"), Options::default()).unwrap();
        let api = Api::new(Arc::new(store), system_clock());
        let w = WriteOptions::default();
        let ns = resources::by_kind("v1", "Namespace").unwrap();
        api.create(ns, "", json!({"metadata": {"name": "d"}}), &w)
            .unwrap();
        let cm = resources::by_kind("v1", "ConfigMap").unwrap();
        let owner = api
            .create(cm, "d", json!({"metadata": {"name": "owner"}}), &w)
            .unwrap();
        let dep = |uid: &str| {
            json!({"metadata": {"namespace": "d", "ownerReferences": [
                {"apiVersion": "v1", "kind": "ConfigMap", "name": "owner", "uid": uid}]}})
        };
        assert!(!orphaned(&api, &dep(meta::uid(&owner))));
        // Same name, other uid: a different (recreated) owner.
        assert!(orphaned(&api, &dep("old-uid")));
        assert!(!orphaned(&api, &json!({"metadata": {"namespace": "d"}})));
    }
}
