//! `/metrics` scrape figures (prints, asserts nothing): the time to answer one Prometheus
//! scrape of the server, over real HTTPS with mutual TLS on loopback, on an empty cluster and
//! after 1,000 Nodes and 10,000 Pods (bound to those nodes, so no controller chases them) were
//! written through the API, which is what moves the request, watch and store families.
//!
//! Run: `cargo bench -p kedge --bench scrape`

mod common;

use std::sync::Arc;
use std::time::{Duration, Instant};

use kedge::kubeclient::KubeClient;
use kedge::server;
use serde_json::json;
use tokio_util::sync::CancellationToken;

const NODES: usize = 1000;
const PODS: usize = 10_000;
const CLIENTS: usize = 16;
const SCRAPES: usize = 30;

fn main() {
    let rt = tokio::runtime::Builder::new_multi_thread()
        .enable_all()
        .build()
        .unwrap();
    rt.block_on(run());
}

/// `SCRAPES` scrapes on one connection: p50, max and the body size.
async fn scrape(client: &KubeClient) -> (Duration, Duration, usize) {
    let mut conn = client.connect().await.unwrap();
    let mut times = Vec::new();
    let mut size = 0;
    for _ in 0..SCRAPES {
        let start = Instant::now();
        let (code, body) = conn
            .request(http::Method::GET, "/metrics", "text/plain", None)
            .await
            .unwrap();
        times.push(start.elapsed());
        assert_eq!(code, 200);
        size = body.as_str().map_or(0, str::len);
    }
    times.sort();
    (times[SCRAPES / 2], times[SCRAPES - 1], size)
}

/// Creates `count` objects with `CLIENTS` concurrent connections.
async fn create_all(
    client: &Arc<KubeClient>,
    path: &'static str,
    count: usize,
    body: fn(usize) -> serde_json::Value,
) {
    let mut tasks = Vec::new();
    for c in 0..CLIENTS {
        let client = client.clone();
        tasks.push(tokio::spawn(async move {
            let mut conn = client.connect().await.unwrap();
            for i in (c..count).step_by(CLIENTS) {
                let (code, b) = conn
                    .request(http::Method::POST, path, "application/json", Some(&body(i)))
                    .await
                    .unwrap();
                assert_eq!(code, 201, "{b}");
            }
        }));
    }
    for t in tasks {
        t.await.unwrap();
    }
}

async fn run() {
    let dir = tempfile::tempdir().unwrap();
    let cancel = CancellationToken::new();
    // A /24 per node: 1,000 nodes need more than the default /16.
    let network = kedge::api::alloc::ClusterNetwork::parse("10.64.0.0/12", "10.43.0.10").unwrap();
    let srv = server::start_with_network(
        common::server_config(dir.path().join("server")),
        network,
        cancel.clone(),
    )
    .await
    .unwrap();
    let client = Arc::new(KubeClient::from_kubeconfig(&srv.kubeconfig).unwrap());

    let (p50, max, size) = scrape(&client).await;
    println!(
        "/metrics, empty cluster: p50 {:.2} ms, max {:.2} ms, {size} bytes",
        p50.as_secs_f64() * 1e3,
        max.as_secs_f64() * 1e3
    );
    let start = Instant::now();
    create_all(&client, "/api/v1/nodes", NODES, |i| {
        json!({"apiVersion": "v1", "kind": "Node", "metadata": {"name": format!("n{i}")},
            "status": {"capacity": {"cpu": "4", "memory": "8Gi", "pods": "110"}}})
    })
    .await;
    create_all(&client, "/api/v1/namespaces/default/pods", PODS, |i| {
        json!({"apiVersion": "v1", "kind": "Pod", "metadata": {"name": format!("p{i}")},
            "spec": {"nodeName": format!("n{}", i % NODES),
                "containers": [{"name": "c", "image": "kedge.dev/samples/hello-wasm:v1"}]}})
    })
    .await;
    println!(
        "wrote {NODES} nodes and {PODS} pods in {:.1} s",
        start.elapsed().as_secs_f64()
    );
    let (p50, max, size) = scrape(&client).await;
    println!(
        "/metrics, {NODES} nodes and {PODS} pods: p50 {:.2} ms, max {:.2} ms, {size} bytes",
        p50.as_secs_f64() * 1e3,
        max.as_secs_f64() * 1e3
    );
    cancel.cancel();
}
