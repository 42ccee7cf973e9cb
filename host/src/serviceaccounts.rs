//! The `default` ServiceAccount of every namespace, as Kubernetes' serviceaccounts-controller
//! keeps it: created for existing namespaces at start, for each namespace when it is created,
//! and again whenever it is deleted.
//!
//! It is an informer-driven task beside the garbage collector rather than a step of the
//! namespace create path, because "recreated if deleted" needs to watch ServiceAccounts
//! anyway, and keeping it out of [`crate::api::ops`] keeps the verbs free of side effects on
//! other objects (a namespace created by a plugin, a restore or a dry run gets the same
//! treatment). Moving it into a Wasm plugin belongs with the controller-set issue.

use std::sync::Arc;
use std::time::Duration;

use serde_json::{Value, json};
use tokio_util::sync::CancellationToken;

use crate::api::Api;
use crate::api::ops::WriteOptions;
use crate::core::meta;
use crate::core::resources::{self, Resource};
use crate::core::selector::LabelSelector;
use crate::plugins::informer::Informers;
use crate::store::EventType;

/// A full pass catches anything an event was missed for.
const SWEEP_EVERY: Duration = Duration::from_secs(30);

pub const DEFAULT_NAME: &str = "default";

fn namespaces() -> &'static Resource {
    resources::by_kind("v1", "Namespace").expect("namespaces are served")
}

fn service_accounts() -> &'static Resource {
    resources::by_kind("v1", "ServiceAccount").expect("serviceaccounts are served")
}

fn active(ns: &Value) -> bool {
    ns.pointer("/metadata/deletionTimestamp").is_none()
        && ns.pointer("/status/phase").and_then(Value::as_str) != Some("Terminating")
}

/// Creates `default` in `ns` unless it exists or the namespace is going away.
pub fn ensure(api: &Api, ns: &str) {
    let sa = service_accounts();
    if api.get(sa, ns, DEFAULT_NAME).is_ok() {
        return;
    }
    match api.get(namespaces(), "", ns) {
        Ok(n) if active(&n) => {}
        _ => return,
    }
    let obj = json!({"metadata": {"name": DEFAULT_NAME, "namespace": ns}});
    match api.create(sa, ns, obj, &WriteOptions::default()) {
        Ok(_) => tracing::debug!(namespace = ns, "created the default service account"),
        Err(e) if e.code == 409 || e.code == 403 || e.code == 404 => {}
        Err(e) => {
            tracing::warn!(namespace = ns, error = %e, "creating the default service account")
        }
    }
}

/// Ensures it in every existing namespace.
pub fn ensure_all(api: &Api) {
    let Ok(list) = api.list(namespaces(), "", &Default::default()) else {
        return;
    };
    for n in list["items"].as_array().into_iter().flatten() {
        ensure(api, meta::name(n));
    }
}

/// Runs until `cancel`.
pub async fn run(api: Arc<Api>, informers: Arc<Informers>, cancel: CancellationToken) {
    let ns_inf = informers.get(namespaces());
    let sa_inf = informers.get(service_accounts());
    let mut ns_events = ns_inf.subscribe();
    let mut sa_events = sa_inf.subscribe();
    let mut sweep = tokio::time::interval(SWEEP_EVERY);
    loop {
        tokio::select! {
            _ = cancel.cancelled() => break,
            Some(c) = ns_events.recv() => {
                if c.kind != EventType::Deleted && active(&c.object) {
                    ensure(&api, meta::name(&c.object));
                }
            }
            Some(c) = sa_events.recv() => {
                if c.kind == EventType::Deleted && meta::name(&c.object) == DEFAULT_NAME {
                    ensure(&api, meta::namespace(&c.object));
                }
            }
            _ = sweep.tick() => {
                for n in ns_inf.list("", &LabelSelector::default()) {
                    if active(&n) {
                        ensure(&api, meta::name(&n));
                    }
                }
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::api::ops::system_clock;
    use crate::store::redb::{Options, RedbStore};

    #[test]
    fn ensure_creates_once_and_skips_missing_namespaces() {
        let dir = tempfile::tempdir().unwrap();
        let store = RedbStore::open(&dir.path().join("s"), Options::default()).unwrap();
        let api = Api::new(Arc::new(store), system_clock());
        api.create(
            namespaces(),
            "",
            json!({"metadata": {"name": "team"}}),
            &WriteOptions::default(),
        )
        .unwrap();
        ensure_all(&api);
        ensure(&api, "team");
        ensure(&api, "nowhere");
        let sa = api.get(service_accounts(), "team", "default").unwrap();
        assert_eq!(meta::namespace(&sa), "team");
        assert!(api.get(service_accounts(), "nowhere", "default").is_err());
    }
}
