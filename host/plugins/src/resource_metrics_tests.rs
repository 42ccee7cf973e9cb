//! Plugins read `metrics.k8s.io/v1beta1` PodMetrics (and NodeMetrics) through the same WIT
//! `get` and `list` as stored kinds; the answers come from the nodes' latest usage reports,
//! as the API serves them, and only for a plugin that declared the kind in its `reads`.

use std::sync::Arc;
use std::time::Instant;

use kedge_api::Api;
use kedge_api::ops::{WriteOptions, system_clock};
use kedge_api::resource_metrics::{ContainerUsage, PodUsage, Report, Usage};
use kedge_core::resources;
use serde_json::{Value, json};

use crate::permissions::{Grant, Permissions};
use crate::wit_host::kedge::plugin::cluster::Host as _;
use crate::wit_host::{HostState, KindRef, Registration, WitApiError};

fn kind(api_version: &str, kind: &str) -> KindRef {
    KindRef {
        api_version: api_version.into(),
        kind: kind.into(),
    }
}

fn host(api: &Arc<Api>, reads: Vec<KindRef>) -> HostState {
    let reg = Registration {
        name: "hpa".into(),
        for_kind: kind("apps/v1", "Deployment"),
        owns: vec![],
        reads,
        writes: vec![],
    };
    let host = HostState::for_test(api, &reg);
    assert!(
        host.plugin
            .perms
            .readable
            .kinds
            .iter()
            .all(|r| r.group != "metrics.k8s.io"),
        "metrics kinds get no informer"
    );
    host
}

#[tokio::test]
async fn plugins_read_the_pod_metrics_they_declared() {
    let dir = tempfile::tempdir().unwrap();
    let store =
        kedge_store::redb::RedbStore::open(&dir.path().join("s"), Default::default()).unwrap();
    let api = Arc::new(Api::new(Arc::new(store), system_clock()));
    let ns = resources::by_kind("v1", "Namespace").unwrap();
    let pods = resources::by_kind("v1", "Pod").unwrap();
    let opts = WriteOptions::default();
    api.create(ns, "", json!({"metadata": {"name": "default"}}), &opts)
        .unwrap();
    let mut uids = Vec::new();
    for (name, app) in [("web-1", "web"), ("db-1", "db")] {
        let pod = json!({"metadata": {"name": name, "labels": {"app": app}},
            "spec": {"nodeName": "n1", "containers": [{"name": "c", "image": "x"}]}});
        let made = api.create(pods, "default", pod, &opts).unwrap();
        uids.push(made["metadata"]["uid"].as_str().unwrap().to_string());
    }
    let pod = |name: &str, uid: &str, cpu: u64| PodUsage {
        namespace: "default".into(),
        name: name.into(),
        uid: uid.into(),
        containers: vec![ContainerUsage {
            name: "c".into(),
            cpu_nano_cores: cpu,
            memory_bytes: 8 << 20,
        }],
    };
    api.usage()
        .record(
            "n1",
            Report {
                timestamp: "2026-12-06T18:00:00Z".into(),
                window_seconds: 15.0,
                interval_seconds: 15.0,
                node: Usage {
                    cpu_nano_cores: 1,
                    memory_bytes: 1,
                },
                pods: vec![
                    pod("web-1", &uids[0], 250_000_000),
                    pod("db-1", &uids[1], 5),
                ],
            },
            Instant::now(),
        )
        .unwrap();

    let mut h = host(&api, vec![kind("metrics.k8s.io/v1beta1", "PodMetrics")]);
    let listed = h
        .list(
            "metrics.k8s.io/v1beta1".into(),
            "PodMetrics".into(),
            "default".into(),
            "app=web".into(),
        )
        .unwrap();
    assert_eq!(listed.len(), 1, "{listed:?}");
    let m: Value = serde_json::from_str(&listed[0]).unwrap();
    assert_eq!(m["kind"], "PodMetrics");
    assert_eq!(m["apiVersion"], "metrics.k8s.io/v1beta1");
    assert_eq!(m["metadata"]["name"], "web-1");
    assert_eq!(m["window"], "15s");
    assert_eq!(
        m["containers"],
        json!([{"name": "c", "usage": {"cpu": "250000000n", "memory": "8192Ki"}}])
    );
    let all = h
        .list(
            "metrics.k8s.io/v1beta1".into(),
            "PodMetrics".into(),
            "".into(),
            "".into(),
        )
        .unwrap();
    assert_eq!(all.len(), 2);
    let got = h
        .get(
            "metrics.k8s.io/v1beta1".into(),
            "PodMetrics".into(),
            "default".into(),
            "db-1".into(),
        )
        .unwrap()
        .unwrap();
    assert!(got.contains("\"5n\""), "{got}");
    let missing = h
        .get(
            "metrics.k8s.io/v1beta1".into(),
            "PodMetrics".into(),
            "default".into(),
            "nope".into(),
        )
        .unwrap();
    assert!(missing.is_none());
    // Not declared: refused, as any undeclared kind.
    let nodes = h.list(
        "metrics.k8s.io/v1beta1".into(),
        "NodeMetrics".into(),
        "".into(),
        "".into(),
    );
    assert!(matches!(nodes, Err(WitApiError::Forbidden(_))), "{nodes:?}");
    // A grant without it (the Plugin's spec.watches) refuses it too.
    *h.plugin.grant.write().unwrap() = Some(Grant::default());
    let refused = h.list(
        "metrics.k8s.io/v1beta1".into(),
        "PodMetrics".into(),
        "default".into(),
        "".into(),
    );
    assert!(
        matches!(refused, Err(WitApiError::Forbidden(_))),
        "{refused:?}"
    );
    let mut undeclared = host(&api, vec![]);
    let refused = undeclared.get(
        "metrics.k8s.io/v1beta1".into(),
        "PodMetrics".into(),
        "default".into(),
        "web-1".into(),
    );
    assert!(
        matches!(refused, Err(WitApiError::Forbidden(_))),
        "{refused:?}"
    );
}

/// Metrics are never written: a registration writing them is refused.
#[test]
fn metrics_kinds_cannot_be_written() {
    let reg = Registration {
        name: "bad".into(),
        for_kind: kind("apps/v1", "Deployment"),
        owns: vec![],
        reads: vec![],
        writes: vec![kind("metrics.k8s.io/v1beta1", "PodMetrics")],
    };
    let e = Permissions::from_registration(&reg, &[]).unwrap_err();
    assert!(e.contains("not served"), "{e}");
}

/// A Plugin object may grant reading metrics (`spec.watches`), never writing them, and the
/// grant it gives then includes them.
#[test]
fn plugin_objects_grant_metrics_reads_only() {
    let obj = |field: &str| {
        json!({"apiVersion": "plugins.kedge.io/v1", "kind": "Plugin", "metadata": {"name": "hpa"},
            "spec": {"source": {"builtin": "hpa"},
                "watches": [{"apiVersion": "apps/v1", "kind": "Deployment"}],
                field: [{"apiVersion": "metrics.k8s.io/v1beta1", "kind": "PodMetrics"}]}})
    };
    let mut causes = Vec::new();
    let mut reads = obj("watches");
    reads["spec"]["watches"]
        .as_array_mut()
        .unwrap()
        .push(json!({"apiVersion": "metrics.k8s.io/v1beta1", "kind": "PodMetrics"}));
    kedge_api::plugin_kind::validate(&reads, &mut causes);
    assert!(causes.is_empty(), "{causes:?}");
    kedge_api::plugin_kind::validate(&obj("writes"), &mut causes);
    assert_eq!(causes.len(), 1, "{causes:?}");
    assert!(format!("{causes:?}").contains("read-only"), "{causes:?}");
    let spec: kedge_api::plugin_kind::PluginSpec =
        serde_json::from_value(reads["spec"].clone()).unwrap();
    let g = Grant::of(&spec);
    let pod_metrics =
        kedge_api::resource_metrics::by_kind("metrics.k8s.io/v1beta1", "PodMetrics").unwrap();
    assert!(g.reads.contains(pod_metrics));
    assert!(!g.writes.contains(pod_metrics));
}
