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
    ApiResultExt, Cluster, ClusterExt, Controller, KindRef, ObjectKey, Outcome, Registration,
    Result,
};
use serde_json::json;

/// The annotation that asks for a greeting.
pub const ANNOTATION: &str = "template.kedge.io/greet";

pub struct Greeter;

impl Controller for Greeter {
    fn registration() -> Registration {
        // Every event on a ConfigMap reconciles that ConfigMap. The host refuses writes to
        // anything not listed (and the Plugin object must grant these in spec.writes).
        Registration::new("greeter", KindRef::of::<ConfigMap>())
            .writes([KindRef::of::<ConfigMap>(), KindRef::of::<Event>()])
    }

    // `?` turns API and JSON errors into the reconcile's error: the host logs it and retries
    // the key with back-off (override `error_policy` to decide otherwise).
    fn reconcile(cluster: &dyn Cluster, key: &ObjectKey) -> Result<Outcome> {
        let Some(cm) = cluster.get::<ConfigMap>(&key.namespace, &key.name)? else {
            // Deleted meanwhile: nothing to do.
            return Ok(Outcome::done());
        };
        let annotations = cm.metadata.annotations.as_ref();
        let Some(who) = annotations.and_then(|a| a.get(ANNOTATION)) else {
            return Ok(Outcome::done());
        };
        let want = format!("Hello, {who}!");
        if cm.data.as_ref().and_then(|d| d.get("greeting")) == Some(&want) {
            return Ok(Outcome::done());
        }
        let patch = json!({"data": {"greeting": want}});
        // `None`: deleted between the read and the write.
        let patched = cluster.patch_merge::<ConfigMap>(&key.namespace, &key.name, &patch);
        if let Some(updated) = patched.ignore_not_found()? {
            // Events are best effort: a failure to record one is not a failed reconcile.
            let _ = cluster.record_event(&updated, "Normal", "Greeted", &want, "greeter");
        }
        Ok(Outcome::done())
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
