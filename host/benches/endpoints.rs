//! How fast Endpoints follow pods (prints, asserts nothing), in process: the endpoints plugin
//! on a plugin host with a durable store, `SERVICES` selector Services in one namespace.
//! - follow latency: from a pod's status write (IP and Ready) to its Service's Endpoints
//!   listing it, for `PODS` pods one after the other. The plugin learns of the pod only
//!   through its watch by selector (no periodic resync), so this is informer → routing (every
//!   Service's selector of the namespace checked against the pod's labels) → reconcile →
//!   Endpoints write;
//! - idle cost: the process's CPU time over `IDLE` once everything converged.
//!
//! Run: `cargo bench -p kedge --bench endpoints`

use std::sync::Arc;
use std::time::{Duration, Instant};

use kedge::api::ops::{Api, WriteOptions, system_clock};
use kedge::core::patch::PatchType;
use kedge::core::resources::by_kind;
use kedge::plugins::{PluginConfig, PluginHost};
use kedge::store::redb::{Options, RedbStore};
use serde_json::json;
use tokio_util::sync::CancellationToken;

const SERVICES: usize = 200;
const PODS: usize = 50;
const IDLE: Duration = Duration::from_secs(5);

/// This process's CPU time (user + system), from /proc.
fn cpu_seconds() -> f64 {
    let stat = std::fs::read_to_string("/proc/self/stat").unwrap();
    // Fields after the command name (which may contain spaces) start at state, field 3.
    let rest = &stat[stat.rfind(')').unwrap() + 2..];
    let f: Vec<&str> = rest.split_whitespace().collect();
    let ticks: f64 = std::process::Command::new("getconf")
        .arg("CLK_TCK")
        .output()
        .ok()
        .and_then(|o| String::from_utf8_lossy(&o.stdout).trim().parse().ok())
        .unwrap_or(100.0);
    (f[11].parse::<f64>().unwrap() + f[12].parse::<f64>().unwrap()) / ticks
}

fn ms(d: Duration) -> String {
    format!("{:.1} ms", d.as_secs_f64() * 1e3)
}

fn main() {
    let rt = tokio::runtime::Builder::new_multi_thread()
        .worker_threads(2)
        .enable_all()
        .build()
        .unwrap();
    rt.block_on(run());
}

async fn run() {
    let dir = tempfile::tempdir().unwrap();
    let store = RedbStore::open(&dir.path().join("s.redb"), Options::default()).unwrap();
    let api = Arc::new(Api::new(Arc::new(store), system_clock()));
    let w = WriteOptions::default();
    let (services, pods, endpoints) = (
        by_kind("v1", "Service").unwrap(),
        by_kind("v1", "Pod").unwrap(),
        by_kind("v1", "Endpoints").unwrap(),
    );
    api.create(
        by_kind("v1", "Namespace").unwrap(),
        "",
        json!({"metadata": {"name": "default"}}),
        &w,
    )
    .unwrap();
    for i in 0..SERVICES {
        api.create(
            services,
            "default",
            json!({"metadata": {"name": format!("svc-{i}")}, "spec": {
                "selector": {"app": format!("app-{i}")}, "ports": [{"port": 80}]}}),
            &w,
        )
        .unwrap();
    }
    let cancel = CancellationToken::new();
    let config = PluginConfig {
        cache_dir: Some(
            std::path::PathBuf::from(env!("CARGO_MANIFEST_DIR"))
                .join("../target/bench-plugin-cache"),
        ),
        ..Default::default()
    };
    let host = Arc::new(PluginHost::new(api.clone(), config, cancel.clone()).unwrap());
    let plugin = host
        .load("endpoints", kedge::server::default_plugins::ENDPOINTS)
        .await
        .unwrap();
    host.start(plugin);

    let listed = |svc: &str, ip: &str| {
        api.get(endpoints, "default", svc).is_ok_and(|ep| {
            ep["subsets"].as_array().into_iter().flatten().any(|s| {
                s["addresses"]
                    .as_array()
                    .into_iter()
                    .flatten()
                    .any(|a| a["ip"] == ip)
            })
        })
    };
    let mut follow = Vec::with_capacity(PODS);
    for i in 0..PODS {
        let name = format!("pod-{i}");
        let ip = format!("10.2.{}.{}", i / 250, i % 250 + 1);
        api.create(
            pods,
            "default",
            json!({"metadata": {"name": name, "labels": {"app": format!("app-{i}")}},
                "spec": {"nodeName": "n1", "containers": [{"name": "c", "image": "x:1"}]}}),
            &w,
        )
        .unwrap();
        let start = Instant::now();
        api.patch(
            pods,
            "default",
            &name,
            Some("status"),
            &json!({"status": {"podIP": ip, "conditions": [{"type": "Ready", "status": "True"}]}}),
            PatchType::Merge,
            &w,
        )
        .unwrap();
        let deadline = start + Duration::from_secs(30);
        while !listed(&format!("svc-{i}"), &ip) {
            assert!(Instant::now() < deadline, "pod-{i} never listed");
            tokio::time::sleep(Duration::from_millis(1)).await;
        }
        follow.push(start.elapsed());
    }
    follow.sort();
    println!(
        "pod Ready -> Endpoints listing it ({PODS} pods, {SERVICES} Services in the namespace): \
         median {}, p90 {}, max {}",
        ms(follow[PODS / 2]),
        ms(follow[PODS * 9 / 10]),
        ms(follow[PODS - 1]),
    );

    // Let the last writes settle, then measure a quiet cluster.
    tokio::time::sleep(Duration::from_secs(1)).await;
    let before = cpu_seconds();
    tokio::time::sleep(IDLE).await;
    let used = cpu_seconds() - before;
    println!(
        "idle, {SERVICES} Services: {:.2} % of one core over {:?}",
        used / IDLE.as_secs_f64() * 100.0,
        IDLE
    );
    cancel.cancel();
}
