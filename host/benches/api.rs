//! API figures (prints, asserts nothing), against an in-process server over real HTTPS with
//! mutual TLS on loopback, durable store (every write committed to disk before it is
//! acknowledged):
//! - write throughput: ConfigMap creates per second with 1, 8 and 32 concurrent clients, each
//!   on its own persistent connection;
//! - watch delivery latency with 100 concurrent watchers: time from just before a create is
//!   sent to the ADDED event arriving at each watcher (p50 / p99 over every watcher × event).
//!
//! Run: `cargo bench -p kedge --bench api`

mod common;

use std::collections::HashMap;
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use http_body_util::BodyExt as _;
use kedge::kubeclient::KubeClient;
use kedge::server;
use serde_json::json;
use tokio_util::sync::CancellationToken;

const WRITES_PER_LEVEL: usize = 2000;
const WATCHERS: usize = 100;
const WATCHED_EVENTS: usize = 200;

fn percentile(v: &mut [Duration], p: f64) -> Duration {
    v.sort();
    v[((v.len() as f64 - 1.0) * p).round() as usize]
}

fn ms(d: Duration) -> String {
    format!("{:.2} ms", d.as_secs_f64() * 1e3)
}

fn config_map(ns: &str, name: &str) -> serde_json::Value {
    json!({"apiVersion": "v1", "kind": "ConfigMap",
        "metadata": {"name": name, "namespace": ns}, "data": {"key": "value"}})
}

async fn create_ns(client: &KubeClient, ns: &str) {
    let (code, body) = client
        .request(
            http::Method::POST,
            "/api/v1/namespaces",
            "application/json",
            Some(&json!({"apiVersion": "v1", "kind": "Namespace", "metadata": {"name": ns}})),
        )
        .await
        .unwrap();
    assert_eq!(code, 201, "{body}");
}

fn main() {
    let rt = tokio::runtime::Builder::new_multi_thread()
        .enable_all()
        .build()
        .unwrap();
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
    let client = Arc::new(KubeClient::from_kubeconfig(&srv.kubeconfig).unwrap());

    // Write throughput.
    for clients in [1usize, 8, 32] {
        let ns = format!("writes-{clients}");
        create_ns(&client, &ns).await;
        let per_client = WRITES_PER_LEVEL / clients;
        let mut tasks = Vec::new();
        let start = Instant::now();
        for c in 0..clients {
            let client = client.clone();
            let ns = ns.clone();
            tasks.push(tokio::spawn(async move {
                let mut conn = client.connect().await.unwrap();
                for i in 0..per_client {
                    let (code, body) = conn
                        .request(
                            http::Method::POST,
                            &format!("/api/v1/namespaces/{ns}/configmaps"),
                            "application/json",
                            Some(&config_map(&ns, &format!("cm-{c}-{i}"))),
                        )
                        .await
                        .unwrap();
                    assert_eq!(code, 201, "{body}");
                }
            }));
        }
        for t in tasks {
            t.await.unwrap();
        }
        let took = start.elapsed();
        let n = per_client * clients;
        println!(
            "writes: {clients:>2} concurrent clients: {n} ConfigMap creates in {:.2} s = {:.0} creates/s",
            took.as_secs_f64(),
            n as f64 / took.as_secs_f64()
        );
    }

    // Watch delivery latency with many watchers.
    let ns = "watched";
    create_ns(&client, ns).await;
    let sent: Arc<Mutex<HashMap<String, Instant>>> = Arc::default();
    let latencies: Arc<Mutex<Vec<Duration>>> = Arc::default();
    let mut watchers = Vec::new();
    let (ready_tx, mut ready_rx) = tokio::sync::mpsc::channel::<()>(WATCHERS);
    for _ in 0..WATCHERS {
        let client = client.clone();
        let sent = sent.clone();
        let latencies = latencies.clone();
        let ready = ready_tx.clone();
        watchers.push(tokio::spawn(async move {
            let mut conn = client.connect().await.unwrap();
            let resp = conn
                .send(
                    http::Method::GET,
                    &format!("/api/v1/namespaces/{ns}/configmaps?watch=true&timeoutSeconds=120"),
                    "application/json",
                    None,
                )
                .await
                .unwrap();
            assert_eq!(resp.status(), 200);
            ready.send(()).await.unwrap();
            let mut body = resp.into_body();
            let mut buf = Vec::new();
            let mut seen = 0;
            while seen < WATCHED_EVENTS {
                let Some(frame) = body.frame().await else {
                    break;
                };
                let Ok(data) = frame.unwrap().into_data() else {
                    continue;
                };
                let now = Instant::now();
                buf.extend_from_slice(&data);
                while let Some(pos) = buf.iter().position(|&b| b == b'\n') {
                    let line: Vec<u8> = buf.drain(..=pos).collect();
                    let ev: serde_json::Value = serde_json::from_slice(&line).unwrap();
                    if ev["type"] != "ADDED" {
                        continue;
                    }
                    let name = ev["object"]["metadata"]["name"].as_str().unwrap();
                    if let Some(t) = sent.lock().unwrap().get(name) {
                        latencies.lock().unwrap().push(now - *t);
                    }
                    seen += 1;
                }
            }
        }));
    }
    drop(ready_tx);
    for _ in 0..WATCHERS {
        ready_rx.recv().await.unwrap();
    }
    let mut conn = client.connect().await.unwrap();
    for i in 0..WATCHED_EVENTS {
        let name = format!("w-{i}");
        sent.lock().unwrap().insert(name.clone(), Instant::now());
        let (code, body) = conn
            .request(
                http::Method::POST,
                &format!("/api/v1/namespaces/{ns}/configmaps"),
                "application/json",
                Some(&config_map(ns, &name)),
            )
            .await
            .unwrap();
        assert_eq!(code, 201, "{body}");
        // A steady stream, not a burst: what a cluster's churn looks like.
        tokio::time::sleep(Duration::from_millis(5)).await;
    }
    for w in watchers {
        let _ = tokio::time::timeout(Duration::from_secs(60), w).await;
    }
    let mut l = latencies.lock().unwrap().clone();
    println!(
        "watch: {WATCHERS} watchers × {WATCHED_EVENTS} creates: {} deliveries, latency p50 {}, p99 {}, max {}",
        l.len(),
        ms(percentile(&mut l, 0.5)),
        ms(percentile(&mut l, 0.99)),
        ms(percentile(&mut l, 1.0)),
    );
    cancel.cancel();
}
