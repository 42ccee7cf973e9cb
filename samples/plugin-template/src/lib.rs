//! A template kedge controller plugin. Copy this crate, rename it, change the kinds and the
//! reconcile.
//!
//! What it does: a ConfigMap annotated `template.kedge.io/greet: <who>` gets
//! `data.greeting: "Hello, <who>!"` and an Event saying so. It shows the parts every
//! controller has: a registration (what it reconciles and may touch), a level-triggered
//! reconcile that reads the object fresh, writes only when something differs, and tolerates
//! the object being gone; and unit tests against the SDK's fake cluster.
//!
//! Build, push, run (see the README's "Writing a plugin"):
//! `cargo build -p kedge-sample-plugin-template --target wasm32-wasip2 --release`, then
//! `kedge push target/wasm32-wasip2/release/kedge_sample_plugin_template.wasm REGISTRY/greeter:v1`
//! and `kubectl apply` a Plugin naming that image.

use k8s_openapi::api::core::v1::{ConfigMap, Event};
use kedge_guest::{
    ApiError, Cluster, ClusterExt, Controller, KindRef, ObjectKey, Outcome, Registration,
};
use serde_json::json;

/// The annotation that asks for a greeting.
pub const ANNOTATION: &str = "template.kedge.io/greet";

pub struct Greeter;

impl Controller for Greeter {
    fn registration() -> Registration {
        Registration {
            name: "greeter".into(),
            // Every event on a ConfigMap reconciles that ConfigMap.
            for_kind: KindRef::of::<ConfigMap>(),
            owns: vec![],
            reads: vec![],
            // The host refuses writes to anything not listed (and the Plugin object must
            // grant these in spec.writes).
            writes: vec![KindRef::of::<ConfigMap>(), KindRef::of::<Event>()],
        }
    }

    fn reconcile(cluster: &dyn Cluster, key: &ObjectKey) -> Result<Outcome, String> {
        let Some(cm) = cluster
            .get::<ConfigMap>(&key.namespace, &key.name)
            .map_err(|e| e.to_string())?
        else {
            // Deleted meanwhile: nothing to do.
            return Ok(Outcome::done());
        };
        let Some(who) = cm
            .metadata
            .annotations
            .as_ref()
            .and_then(|a| a.get(ANNOTATION))
        else {
            return Ok(Outcome::done());
        };
        let want = format!("Hello, {who}!");
        let have = cm.data.as_ref().and_then(|d| d.get("greeting"));
        if have == Some(&want) {
            return Ok(Outcome::done());
        }
        let patch = json!({"data": {"greeting": want}});
        match cluster.patch_merge::<ConfigMap>(&key.namespace, &key.name, &patch) {
            Ok(updated) => {
                // Events are best effort: a failure to record one is not a failed reconcile.
                let _ = cluster.record_event(&updated, "Normal", "Greeted", &want, "greeter");
                Ok(Outcome::done())
            }
            // Deleted between the read and the write.
            Err(ApiError::NotFound(_)) => Ok(Outcome::done()),
            Err(e) => Err(e.to_string()),
        }
    }
}

kedge_guest::export_controller!(Greeter);

#[cfg(test)]
mod tests {
    use super::*;
    use kedge_guest::{FakeCluster, Verb};

    fn key(name: &str) -> ObjectKey {
        ObjectKey {
            api_version: "v1".into(),
            kind: "ConfigMap".into(),
            namespace: "default".into(),
            name: name.into(),
        }
    }

    #[test]
    fn greets_annotated_config_maps_once() {
        let fake = FakeCluster::new();
        fake.seed_json(json!({"apiVersion": "v1", "kind": "ConfigMap",
            "metadata": {"name": "hi", "namespace": "default", "annotations": {ANNOTATION: "edge"}}}));
        Greeter::reconcile(&fake, &key("hi")).unwrap();
        let cm = fake.get::<ConfigMap>("default", "hi").unwrap().unwrap();
        assert_eq!(cm.data.unwrap()["greeting"], "Hello, edge!");
        assert_eq!(fake.count(Verb::Create, "Event"), 1);
        // Level-triggered: a second reconcile finds nothing to do.
        fake.clear_writes();
        Greeter::reconcile(&fake, &key("hi")).unwrap();
        assert!(fake.writes().is_empty());
    }

    #[test]
    fn leaves_other_config_maps_and_missing_ones_alone() {
        let fake = FakeCluster::new();
        fake.seed_json(json!({"apiVersion": "v1", "kind": "ConfigMap",
            "metadata": {"name": "plain", "namespace": "default"}, "data": {"a": "b"}}));
        Greeter::reconcile(&fake, &key("plain")).unwrap();
        Greeter::reconcile(&fake, &key("gone")).unwrap();
        assert!(fake.writes().is_empty());
    }
}
