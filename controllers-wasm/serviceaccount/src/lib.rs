//! The service account controller as a kedge plugin: every active namespace has a
//! ServiceAccount named `default`, as Kubernetes' serviceaccounts-controller keeps it —
//! created with the namespace (and for namespaces that existed before), and again whenever
//! it is deleted.
//!
//! ServiceAccounts are declared in `owns`: a ServiceAccount has no controller, and for a
//! Namespace plugin the host enqueues an owned object's own namespace, so deleting `default`
//! brings its namespace back here at once.

use k8s_openapi::api::core::v1::{Namespace, ServiceAccount};
use kedge_guest::{
    ApiError, Cluster, ClusterExt, Controller, KindRef, LogLevel, ObjectKey, Outcome, Registration,
    Result,
};

pub const DEFAULT_NAME: &str = "default";

pub struct ServiceAccounts;

impl Controller for ServiceAccounts {
    fn registration() -> Registration {
        Registration::new("serviceaccount", KindRef::of::<Namespace>())
            .owns([KindRef::of::<ServiceAccount>()])
            .writes([KindRef::of::<ServiceAccount>()])
    }

    fn reconcile(cluster: &dyn Cluster, key: &ObjectKey) -> Result<Outcome> {
        reconcile(cluster, key)
    }
}

kedge_guest::export_controller!(ServiceAccounts);

fn done() -> Outcome {
    Outcome {
        requeue_after_ms: None,
    }
}

fn active(ns: &Namespace) -> bool {
    ns.metadata.deletion_timestamp.is_none()
        && ns.status.as_ref().and_then(|s| s.phase.as_deref()) != Some("Terminating")
}

pub fn reconcile(c: &dyn Cluster, key: &ObjectKey) -> Result<Outcome> {
    let ns = match c.get::<Namespace>("", &key.name)? {
        Some(ns) if active(&ns) => ns,
        _ => return Ok(done()),
    };
    let name = ns.metadata.name.unwrap_or_default();
    if c.get::<ServiceAccount>(&name, DEFAULT_NAME)?.is_some() {
        return Ok(done());
    }
    let mut sa = ServiceAccount::default();
    sa.metadata.name = Some(DEFAULT_NAME.into());
    sa.metadata.namespace = Some(name.clone());
    match c.create(&name, &sa) {
        Ok(_) => {
            c.log(
                LogLevel::Debug,
                &format!("created the default service account in {name}"),
            );
            Ok(done())
        }
        // Someone was quicker, or the namespace started terminating meanwhile.
        Err(ApiError::AlreadyExists(_) | ApiError::Forbidden(_) | ApiError::NotFound(_)) => {
            Ok(done())
        }
        Err(e) => Err(e.into()),
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use kedge_guest::{FakeCluster, Verb};
    use serde_json::json;

    fn ns(c: &FakeCluster, name: &str, extra: serde_json::Value) {
        let mut obj = json!({"apiVersion": "v1", "kind": "Namespace", "metadata": {"name": name}});
        if let Some(m) = extra.as_object() {
            for (k, v) in m {
                obj[k] = v.clone();
            }
        }
        c.seed_json(obj);
    }

    #[test]
    fn creates_default_once_per_active_namespace() {
        let c = FakeCluster::new();
        ns(&c, "team", json!({}));
        let key = ObjectKey::of::<Namespace>("", "team");
        reconcile(&c, &key).unwrap();
        assert!(
            c.object("v1", "ServiceAccount", "team", "default")
                .is_some()
        );
        reconcile(&c, &key).unwrap();
        assert_eq!(c.count(Verb::Create, "ServiceAccount"), 1);
    }

    #[test]
    fn leaves_missing_and_terminating_namespaces_alone() {
        let c = FakeCluster::new();
        ns(&c, "going", json!({"status": {"phase": "Terminating"}}));
        reconcile(&c, &ObjectKey::of::<Namespace>("", "going")).unwrap();
        reconcile(&c, &ObjectKey::of::<Namespace>("", "nowhere")).unwrap();
        assert_eq!(c.count(Verb::Create, "ServiceAccount"), 0);
    }

    #[test]
    fn owns_service_accounts_so_a_deletion_comes_back_here() {
        let r = ServiceAccounts::registration();
        assert_eq!(r.for_kind, KindRef::of::<Namespace>());
        assert_eq!(r.owns, vec![KindRef::of::<ServiceAccount>()]);
    }
}
