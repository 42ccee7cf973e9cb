//! Scheduler figures (prints, asserts nothing but completion), in process: the store (redb,
//! durable like a real server), the API verbs, and the plugin host running the default
//! scheduler plugin alone — no HTTPS, no other controllers, no agents.
//! - throughput: 1,000 Ready nodes, then pods created as fast as the API takes them (16
//!   clients at once); pods/s
//!   from the first create to the last pod seen bound (by the pod informer's watch), for
//!   plain pods, pods with a topology spread constraint over zones, and pods with required
//!   anti-affinity on the hostname (the pods of earlier runs stay, so later runs schedule
//!   against a fuller cluster);
//! - reconcile overhead: `PluginHost::reconcile` of a pod that does not exist — a fresh
//!   instance, one `get`, the return — median and p99 per call.
//!
//! Every loop is bounded in count and time. Run: `cargo bench -p kedge --bench scheduler`

use std::collections::{BTreeMap, HashSet};
use std::sync::Arc;
use std::time::{Duration, Instant};

use kedge::api::Api;
use kedge::api::ops::{ListOptions, WriteOptions, system_clock};
use kedge::core::resources;
use kedge::plugins::{PluginConfig, PluginHost};
use kedge::server::default_plugins;
use kedge::store::redb::{Options as StoreOptions, RedbStore};
use serde_json::{Value, json};
use tokio_util::sync::CancellationToken;

/// The `kedge` binary's allocator (host/src/main.rs), so the figures are the server's.
#[global_allocator]
static ALLOC: tikv_jemallocator::Jemalloc = tikv_jemallocator::Jemalloc;

const NODES: usize = 1000;
const ZONES: usize = 10;
/// Pods per throughput run, and how long a run may take before it reports what it has.
const PLAIN_PODS: usize = 2000;
const CONSTRAINED_PODS: usize = 500;
const RUN_TIMEOUT: Duration = Duration::from_secs(360);
const RECONCILE_CALLS: usize = 2000;
/// Clients creating the pods of a throughput run at once.
const CREATORS: usize = 16;

fn percentile(v: &mut [Duration], p: f64) -> Duration {
    v.sort();
    v[((v.len() as f64 - 1.0) * p).round() as usize]
}

fn us(d: Duration) -> String {
    format!("{:.0} µs", d.as_secs_f64() * 1e6)
}

fn node(i: usize) -> Value {
    let name = format!("node-{i:04}");
    json!({"apiVersion": "v1", "kind": "Node",
        "metadata": {"name": name, "labels": {
            "kubernetes.io/hostname": name,
            "kubernetes.io/os": "linux",
            "topology.kubernetes.io/zone": format!("zone-{}", i % ZONES),
            "kedge.io/runtime-wasm": "true"}},
        "status": {
            "capacity": {"cpu": "8", "memory": "32Gi", "pods": "110"},
            "allocatable": {"cpu": "8", "memory": "32Gi", "pods": "110"},
            "conditions": [{"type": "Ready", "status": "True", "reason": "KubeletReady",
                "lastHeartbeatTime": "2026-01-01T00:00:00Z",
                "lastTransitionTime": "2026-01-01T00:00:00Z"}]}})
}

fn pod(ns: &str, name: &str, app: &str, extra: &Value) -> Value {
    let mut spec = json!({"containers": [{"name": "app", "image": "ghcr.io/kedge/hello:1",
        "resources": {"requests": {"cpu": "10m", "memory": "16Mi"}}}]});
    if let (Some(spec), Some(extra)) = (spec.as_object_mut(), extra.as_object()) {
        spec.extend(extra.clone());
    }
    json!({"apiVersion": "v1", "kind": "Pod",
        "metadata": {"name": name, "namespace": ns, "labels": {"app": app}},
        "spec": spec})
}

/// How the pods of `ns` landed: pods per zone (max − min) and the most pods on one node —
/// what the spread and anti-affinity runs must respect, checked on the stored pods.
fn placement(api: &Api, ns: &str) -> String {
    let pods = resources::by_kind("v1", "Pod").unwrap();
    let list = api.list(pods, ns, &ListOptions::default()).unwrap();
    let mut per_node: BTreeMap<String, usize> = BTreeMap::new();
    let mut per_zone: BTreeMap<usize, usize> = (0..ZONES).map(|z| (z, 0)).collect();
    for p in list["items"].as_array().into_iter().flatten() {
        let Some(node) = p.pointer("/spec/nodeName").and_then(Value::as_str) else {
            continue;
        };
        let i: usize = node.trim_start_matches("node-").parse().unwrap();
        *per_zone.entry(i % ZONES).or_default() += 1;
        *per_node.entry(node.to_string()).or_default() += 1;
    }
    let max_zone = per_zone.values().max().copied().unwrap_or(0);
    let min_zone = per_zone.values().min().copied().unwrap_or(0);
    format!(
        "zone skew {}, at most {} pod(s) per node",
        max_zone - min_zone,
        per_node.values().max().copied().unwrap_or(0)
    )
}

fn main() {
    let rt = tokio::runtime::Builder::new_multi_thread()
        .enable_all()
        .build()
        .unwrap();
    rt.block_on(run());
}

/// Creates `count` pods in `ns` from a blocking thread and waits (bounded) until the pod
/// informer has seen all of them bound. Prints and returns pods/s.
async fn throughput(
    api: &Arc<Api>,
    host: &PluginHost,
    label: &str,
    ns: &str,
    count: usize,
    extra: Value,
) {
    let pods = resources::by_kind("v1", "Pod").unwrap();
    let mut events = host.informers().get(pods).subscribe();
    let start = Instant::now();
    // Several clients create at once, so the creates share commits and come faster than
    // the scheduler could place them one by one (one client waiting for each fsync would
    // measure the store, not the scheduler).
    let creator = {
        let api = api.clone();
        let ns = ns.to_string();
        tokio::task::spawn_blocking(move || {
            std::thread::scope(|s| {
                for c in 0..CREATORS {
                    let (api, ns, extra) = (&api, &ns, &extra);
                    s.spawn(move || {
                        for i in (c..count).step_by(CREATORS) {
                            let p = pod(ns, &format!("p-{i:05}"), ns, extra);
                            api.create(pods, ns, p, &WriteOptions::default())
                                .expect("creating a pod");
                        }
                    });
                }
            });
            start.elapsed()
        })
    };
    let mut bound: HashSet<String> = HashSet::new();
    let deadline = tokio::time::Instant::now() + RUN_TIMEOUT;
    while bound.len() < count {
        let change = tokio::select! {
            c = events.recv() => match c { Some(c) => c, None => break },
            _ = tokio::time::sleep_until(deadline) => break,
        };
        let Ok(o) = change.object() else { continue };
        if o.pointer("/metadata/namespace").and_then(Value::as_str) == Some(ns)
            && o.pointer("/spec/nodeName")
                .and_then(Value::as_str)
                .is_some_and(|n| !n.is_empty())
        {
            bound.insert(
                o.pointer("/metadata/name")
                    .and_then(Value::as_str)
                    .unwrap_or("")
                    .to_string(),
            );
        }
    }
    let took = start.elapsed();
    let created_in = creator.await.unwrap();
    let done = if bound.len() == count {
        String::new()
    } else {
        format!(" (TIMED OUT after {RUN_TIMEOUT:?})")
    };
    println!(
        "scheduler: {label}: {}/{count} pods bound on {NODES} nodes in {:.2} s = {:.0} pods/s{done} \
         (creates took {:.2} s; {})",
        bound.len(),
        took.as_secs_f64(),
        bound.len() as f64 / took.as_secs_f64(),
        created_in.as_secs_f64(),
        placement(api, ns),
    );
}

async fn run() {
    let dir = tempfile::tempdir().unwrap();
    let cancel = CancellationToken::new();
    let store = Arc::new(
        RedbStore::open(
            &dir.path().join("state.redb"),
            StoreOptions {
                durable: true,
                ..Default::default()
            },
        )
        .unwrap(),
    );
    // A /24 per node: 1,000 nodes need more than the default /16.
    let network = kedge::api::alloc::ClusterNetwork::parse("10.64.0.0/12", "10.43.0.10").unwrap();
    let api = Arc::new(Api::new(store, system_clock()).with_network(network));
    let namespaces = resources::by_kind("v1", "Namespace").unwrap();
    for ns in ["default", "plain", "spread", "anti"] {
        api.create(
            namespaces,
            "",
            json!({"apiVersion": "v1", "kind": "Namespace", "metadata": {"name": ns}}),
            &WriteOptions::default(),
        )
        .unwrap();
    }
    let nodes = resources::by_kind("v1", "Node").unwrap();
    for i in 0..NODES {
        api.create(nodes, "", node(i), &WriteOptions::default())
            .unwrap();
    }

    let cache =
        std::path::PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("../target/bench-plugin-cache");
    let host = Arc::new(
        PluginHost::new(
            api.clone(),
            PluginConfig {
                cache_dir: Some(cache),
                ..Default::default()
            },
            cancel.clone(),
        )
        .unwrap(),
    );
    let scheduler = host
        .load("scheduler", default_plugins::SCHEDULER)
        .await
        .unwrap();
    // Kept alive for the whole run (the slot is what takes new plugin versions).
    let _slot = host.start(scheduler.clone());

    throughput(&api, &host, "plain", "plain", PLAIN_PODS, json!({})).await;
    let spread = json!({"topologySpreadConstraints": [{"maxSkew": 1,
        "topologyKey": "topology.kubernetes.io/zone", "whenUnsatisfiable": "DoNotSchedule",
        "labelSelector": {"matchLabels": {"app": "spread"}}}]});
    throughput(
        &api,
        &host,
        "topology spread (zone, DoNotSchedule)",
        "spread",
        CONSTRAINED_PODS,
        spread,
    )
    .await;
    let anti = json!({"affinity": {"podAntiAffinity": {
        "requiredDuringSchedulingIgnoredDuringExecution": [{
            "labelSelector": {"matchLabels": {"app": "anti"}},
            "topologyKey": "kubernetes.io/hostname"}]}}});
    throughput(
        &api,
        &host,
        "required anti-affinity (hostname)",
        "anti",
        CONSTRAINED_PODS,
        anti,
    )
    .await;

    // Reconcile overhead: a key that does not exist (instantiate, one get, return).
    let mut calls = Vec::with_capacity(RECONCILE_CALLS);
    let budget = Instant::now();
    for _ in 0..RECONCILE_CALLS {
        if budget.elapsed() > Duration::from_secs(60) {
            break;
        }
        let t = Instant::now();
        host.reconcile(&scheduler, "default", "does-not-exist")
            .await
            .unwrap();
        calls.push(t.elapsed());
    }
    println!(
        "reconcile overhead (missing pod, fresh instance per call): {} calls, median {}, p99 {}",
        calls.len(),
        us(percentile(&mut calls, 0.5)),
        us(percentile(&mut calls, 0.99)),
    );
    cancel.cancel();
    host.stopped().await;
}
