//! Figures for the walking skeleton (prints, asserts nothing):
//! - `kubectl apply` of a 1-replica Wasm Deployment → its pod Running (median of 20), with
//!   the real kubectl against an in-process server and agent on loopback;
//! - plugin reconcile call overhead: a fresh instance + one reconcile of the replicaset plugin
//!   on a converged ReplicaSet, and on an absent key.
//!
//! Run: `cargo bench -p kedge --bench skeleton` (`KEDGE_BENCH_ONLY=overhead` for the second
//! part alone).

mod common;

use std::process::{Command, Stdio};
use std::sync::Arc;
use std::time::{Duration, Instant};

use kedge::agent::{self, AgentConfig};
use kedge::core::resources::by_kind;
use kedge::server;
use tokio_util::sync::CancellationToken;

/// The `kedge` binary's allocator, so call costs are the server's.
#[global_allocator]
static ALLOC: tikv_jemallocator::Jemalloc = tikv_jemallocator::Jemalloc;

fn percentile(v: &mut [Duration], p: f64) -> Duration {
    v.sort();
    let i = ((v.len() as f64 - 1.0) * p).round() as usize;
    v[i]
}

fn ms(d: Duration) -> String {
    format!("{:.2} ms", d.as_secs_f64() * 1e3)
}

fn us(d: Duration) -> String {
    format!("{:.1} µs", d.as_secs_f64() * 1e6)
}

fn main() {
    let rt = tokio::runtime::Runtime::new().unwrap();
    rt.block_on(run());
}

async fn run() {
    let dir = tempfile::tempdir().unwrap();
    let cancel = CancellationToken::new();
    let srv = server::start(
        common::server_config(dir.path().join("server")),
        cancel.clone(),
    )
    .await
    .unwrap();
    let _agent = agent::start(
        AgentConfig {
            server: srv.tunnel_addr.to_string(),
            join_token: Some(srv.join_token.clone()),
            node_name: "bench".into(),
            data_dir: dir.path().join("agent"),
            labels: vec![],
            taints: vec![],
            registries: Default::default(),
            image_store_max_bytes: 10 << 30,
            object_refresh: agent::OBJECT_REFRESH,
            eviction_hard: Default::default(),
            container_logs: Default::default(),
            metric_resolution: agent::METRIC_RESOLUTION,
            ensure_secret_pulled_images: false,
            // Timing the control path, not the pod network: pods on the node's network.
            network: kedge::agent::NetworkConfig {
                pod_network: kedge::agent::PodNetworkMode::Host,
                proxy_mode: kedge::agent::ProxyMode::None,
                cluster_dns: None,
                ..Default::default()
            },
        },
        cancel.clone(),
    )
    .await
    .unwrap();
    let pods = by_kind("v1", "Pod").unwrap();
    let nodes = by_kind("v1", "Node").unwrap();
    let api = srv.api.clone();
    while api.get(nodes, "", "bench").is_err() {
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    let kcache = dir.path().join("kcache");
    let kubectl = |args: &[&str], stdin: Option<String>| {
        use std::io::Write;
        let mut c = Command::new("kubectl")
            .arg("--kubeconfig")
            .arg(&srv.kubeconfig)
            .arg("--cache-dir")
            .arg(&kcache)
            .args(args)
            .stdin(Stdio::piped())
            .stdout(Stdio::null())
            .stderr(Stdio::inherit())
            .spawn()
            .unwrap();
        if let Some(s) = stdin {
            c.stdin.take().unwrap().write_all(s.as_bytes()).unwrap();
        }
        c
    };
    let only = std::env::var("KEDGE_BENCH_ONLY").unwrap_or_default();
    // Warm kubectl's discovery and OpenAPI caches so each sample measures one apply.
    if only != "overhead" {
        let _ = kubectl(&["get", "pods"], None).wait();
    }

    let mut samples = Vec::new();
    let applies = if only == "overhead" { 0 } else { 21 };
    for i in 0..applies {
        let name = format!("bench-{i}");
        let manifest = format!(
            r#"{{"apiVersion":"apps/v1","kind":"Deployment","metadata":{{"name":"{name}"}},
            "spec":{{"replicas":1,"selector":{{"matchLabels":{{"app":"{name}"}}}},
            "template":{{"metadata":{{"labels":{{"app":"{name}"}}}},"spec":{{"containers":[
            {{"name":"hello","image":"kedge.dev/samples/hello-wasm:v1"}}]}}}}}}}}"#
        );
        let sel = kedge::core::selector::Selector::parse(&format!("app={name}")).unwrap();
        let opts = kedge::api::ops::ListOptions {
            labels: sel,
            ..Default::default()
        };
        let start = Instant::now();
        let mut child = kubectl(&["apply", "-f", "-"], Some(manifest));
        loop {
            let list = api.list(pods, "default", &opts).unwrap();
            let running = list["items"].as_array().unwrap().iter().any(|p| {
                p["status"]["phase"] == "Running"
                    && p["status"]["containerStatuses"][0]["ready"] == true
            });
            if running {
                break;
            }
            assert!(start.elapsed() < Duration::from_secs(60), "pod never ran");
            tokio::time::sleep(Duration::from_millis(2)).await;
        }
        let took = start.elapsed();
        assert!(child.wait().unwrap().success());
        // The first sample pays one-time costs (compiling the app); drop it.
        if i > 0 {
            samples.push(took);
        }
        let _ = kubectl(&["delete", "deployment", &name, "--wait=false"], None).wait();
    }
    let mut s = samples.clone();
    if !s.is_empty() {
        println!(
            "kubectl apply (1-replica Wasm Deployment) -> pod Running, n={}: median {}, p90 {}, min {}, max {}",
            s.len(),
            ms(percentile(&mut s, 0.5)),
            ms(percentile(&mut s, 0.9)),
            ms(s[0]),
            ms(*s.last().unwrap())
        );
    }

    // Reconcile overhead: the same plugin bytes in a host of our own.
    let host = Arc::new(
        kedge::plugins::PluginHost::new(api.clone(), Default::default(), cancel.clone()).unwrap(),
    );
    let plugin = host
        .load("replicaset", server::default_plugins::REPLICASET)
        .await
        .unwrap();
    // Time the code plugins run once settled: Cranelift's, compiled in the background.
    let settled = Instant::now();
    while plugin.tier() != kedge::plugins::Tier::Optimized {
        assert!(
            settled.elapsed() < Duration::from_secs(60),
            "never optimised"
        );
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    let rs = by_kind("apps/v1", "ReplicaSet").unwrap();
    let informer = host.informers().get(rs);
    informer.wait_synced().await;
    host.informers().get(pods).wait_synced().await;
    // A converged ReplicaSet with one running pod: reconcile reads it and its pods, writes
    // nothing.
    let opts = kedge::api::ops::ListOptions::default();
    let existing = api.list(rs, "default", &opts).unwrap();
    let _ = existing;
    let manifest = r#"{"apiVersion":"apps/v1","kind":"ReplicaSet","metadata":{"name":"steady"},
        "spec":{"replicas":0,"selector":{"matchLabels":{"app":"steady"}},
        "template":{"metadata":{"labels":{"app":"steady"}},"spec":{"containers":[
        {"name":"c","image":"kedge.dev/samples/hello-wasm:v1"}]}}}}"#;
    api.create(
        rs,
        "default",
        serde_json::from_str(manifest).unwrap(),
        &Default::default(),
    )
    .unwrap();
    while informer.get("default", "steady").is_none() {
        tokio::time::sleep(Duration::from_millis(5)).await;
    }
    // Let it write its status once.
    host.reconcile(&plugin, "default", "steady").await.unwrap();
    tokio::time::sleep(Duration::from_millis(100)).await;
    let calls: usize = std::env::var("KEDGE_BENCH_CALLS")
        .ok()
        .and_then(|v| v.parse().ok())
        .unwrap_or(2000);
    for (label, key) in [("converged ReplicaSet", "steady"), ("absent key", "absent")] {
        let mut t = Vec::new();
        for _ in 0..calls {
            let start = Instant::now();
            host.reconcile(&plugin, "default", key).await.unwrap();
            t.push(start.elapsed());
        }
        println!(
            "plugin reconcile (fresh instance + call), {label}, n={}: median {}, p99 {}",
            t.len(),
            us(percentile(&mut t, 0.5)),
            us(percentile(&mut t, 0.99))
        );
    }
    cancel.cancel();
}
