//! The plugin host: runs controllers and the scheduler as WebAssembly components.
//!
//! Each plugin is compiled (quickly by Winch first, then optimised by Cranelift in the
//! background: see `engine`) and pre-instantiated; every reconcile gets a fresh instance
//! (microseconds: instances come from wasmtime's pools), so a trap cannot leave state
//! behind. Every call runs under an epoch deadline (CPU time) and a memory cap; a trap or
//! timeout fails that reconcile, which is retried with back-off — the host and other plugins
//! carry on. Reads come from shared informer caches, writes go through [`Api`] (same
//! defaulting and validation as kubectl's requests), limited to the kinds the plugin declared.

mod config;
mod engine;
pub mod lease;
pub mod manager;
pub mod metrics;
mod permissions;
mod queue;
mod slot;
mod wit_host;

pub use config::{Limits, PluginConfig};
pub use engine::{Outcome, Plugin, PluginHost, Tier};
pub use permissions::{Grant, KindSet, Permissions, WatchBy, WatchRule, is_wildcard};
pub use slot::Slot;

use std::time::Duration;

/// The epoch ticks every 10 ms; deadlines are counted in ticks.
const EPOCH_TICK: Duration = Duration::from_millis(10);

#[derive(Debug, thiserror::Error)]
pub enum Error {
    #[error("compiling plugin {name}: {source}")]
    Compile {
        name: String,
        #[source]
        source: wasmtime::Error,
    },
    #[error("instantiating plugin {name}: {source}")]
    Instantiate {
        name: String,
        #[source]
        source: wasmtime::Error,
    },
    #[error("plugin {name} registration is invalid: {why}")]
    Registration { name: String, why: String },
    #[error("plugin {plugin} reconcile of {key} trapped: {reason}")]
    Trap {
        plugin: String,
        key: String,
        reason: String,
    },
    #[error("plugin {plugin} reconcile of {key} failed: {message}")]
    Reconcile {
        plugin: String,
        key: String,
        message: String,
    },
    #[error("plugin engine: {0}")]
    Engine(#[source] wasmtime::Error),
}

pub type Result<T, E = Error> = std::result::Result<T, E>;

mod cache;
#[cfg(test)]
mod emit_events_tests;
#[cfg(test)]
mod resource_metrics_tests;

#[cfg(test)]
mod tests {
    use super::*;
    use crate::permissions::resolve_watch;
    use crate::wit_host::{KindRef, Watch, WatchMap};
    use kedge_core::resources;
    use serde_json::Value;

    fn watch(api_version: &str, kind: &str, by: WatchMap) -> Watch {
        Watch {
            kind: KindRef {
                api_version: api_version.into(),
                kind: kind.into(),
            },
            by,
        }
    }

    #[test]
    fn watches_are_validated() {
        let svc = resources::by_kind("v1", "Service");
        let ok = resolve_watch(
            &watch("v1", "Pod", WatchMap::SelectorMap("spec.selector".into())),
            svc,
        )
        .unwrap();
        assert_eq!(ok.kind.kind, "Pod");
        assert_eq!(ok.by, WatchBy::SelectorMap("/spec/selector".into()));
        let err = |w: Watch, primary| resolve_watch(&w, primary).unwrap_err();
        assert!(err(watch("v1", "Pod", WatchMap::SameName), None).contains("every kind"));
        assert!(err(watch("v1", "Node", WatchMap::SameName), svc).contains("namespaced"));
        assert!(err(watch("v1", "Nope", WatchMap::SameName), svc).contains("not served"));
        for bad in ["", "spec..selector", ".spec"] {
            let e = err(watch("v1", "Pod", WatchMap::LabelSelector(bad.into())), svc);
            assert!(e.contains("dotted field path"), "{bad}: {e}");
        }
    }

    #[test]
    fn a_selector_map_selects_nothing_when_empty_a_label_selector_everything() {
        let map = WatchBy::SelectorMap("/spec/selector".into());
        let structured = WatchBy::LabelSelector("/spec/selector".into());
        let labels = serde_json::json!({"app": "web", "tier": "fe"});
        let labels = labels.as_object();
        let with = |sel: Value| serde_json::json!({"spec": {"selector": sel}});
        let sel = map
            .selector_of(&with(serde_json::json!({"app": "web"})))
            .unwrap();
        assert!(sel.matches(labels));
        let sel = map
            .selector_of(&with(serde_json::json!({"app": "db"})))
            .unwrap();
        assert!(!sel.matches(labels));
        assert!(map.selector_of(&with(serde_json::json!({}))).is_none());
        assert!(map.selector_of(&serde_json::json!({"spec": {}})).is_none());
        let sel = structured
            .selector_of(&with(serde_json::json!({"matchExpressions": [
                {"key": "tier", "operator": "In", "values": ["fe", "be"]}]})))
            .unwrap();
        assert!(sel.matches(labels));
        let all = structured
            .selector_of(&with(serde_json::json!({})))
            .unwrap();
        assert!(all.matches(None::<&serde_json::Map<String, Value>>));
        assert!(structured.selector_of(&serde_json::json!({})).is_none());
        assert!(structured.selector_of(&with(Value::Null)).is_none());
        assert!(
            WatchBy::SameName
                .selector_of(&with(serde_json::json!({})))
                .is_none()
        );
    }
}
