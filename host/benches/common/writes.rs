//! What the benches that write through the API share (`api`, `datastores`): ConfigMap
//! creates from concurrent clients, and watch delivery latency with many watchers.

use std::collections::HashMap;
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use http_body_util::BodyExt as _;
use kedge::kubeclient::KubeClient;
use serde_json::json;

/// The `p` quantile of `v` (sorted here).
pub fn percentile(v: &mut [Duration], p: f64) -> Duration {
    v.sort();
    v[((v.len() as f64 - 1.0) * p).round() as usize]
}

pub fn ms(d: Duration) -> String {
    format!("{:.2} ms", d.as_secs_f64() * 1e3)
}

pub fn config_map(ns: &str, name: &str) -> serde_json::Value {
    json!({"apiVersion": "v1", "kind": "ConfigMap",
        "metadata": {"name": name, "namespace": ns}, "data": {"key": "value"}})
}

pub async fn create_ns(client: &KubeClient, ns: &str) {
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

/// `total` ConfigMap creates in the new namespace `ns` from `clients` clients, each on its
/// own persistent connection: every create's latency, and the time they all took.
pub async fn creates(
    client: &Arc<KubeClient>,
    ns: &str,
    clients: usize,
    total: usize,
) -> (Vec<Duration>, Duration) {
    create_ns(client, ns).await;
    let per = total / clients;
    let started = Instant::now();
    let tasks: Vec<_> = (0..clients)
        .map(|c| {
            let (client, ns) = (client.clone(), ns.to_string());
            tokio::spawn(async move {
                let mut conn = client.connect().await.unwrap();
                let mut lat = Vec::with_capacity(per);
                for i in 0..per {
                    let at = Instant::now();
                    let (code, body) = conn
                        .request(
                            http::Method::POST,
                            &format!("/api/v1/namespaces/{ns}/configmaps"),
                            "application/json",
                            Some(&config_map(&ns, &format!("cm-{c:02}-{i:04}"))),
                        )
                        .await
                        .unwrap();
                    assert_eq!(code, 201, "{body}");
                    lat.push(at.elapsed());
                }
                lat
            })
        })
        .collect();
    let mut lat = Vec::new();
    for t in tasks {
        lat.extend(t.await.unwrap());
    }
    (lat, started.elapsed())
}

/// Watch delivery in the new namespace `ns`: `watchers` watchers, then `events` creates 5 ms
/// apart (a steady stream, not a burst: what a cluster's churn looks like). Every delivery's
/// latency, from just before its create was sent to its ADDED event arriving.
pub async fn watch_deliveries(
    client: &Arc<KubeClient>,
    ns: &'static str,
    watchers: usize,
    events: usize,
) -> Vec<Duration> {
    create_ns(client, ns).await;
    let sent: Arc<Mutex<HashMap<String, Instant>>> = Arc::default();
    let latencies: Arc<Mutex<Vec<Duration>>> = Arc::default();
    let (ready_tx, mut ready_rx) = tokio::sync::mpsc::channel::<()>(watchers);
    let mut tasks = Vec::new();
    for _ in 0..watchers {
        let (client, sent, latencies, ready) = (
            client.clone(),
            sent.clone(),
            latencies.clone(),
            ready_tx.clone(),
        );
        tasks.push(tokio::spawn(async move {
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
            let (mut buf, mut seen) = (Vec::new(), 0);
            while seen < events {
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
    for _ in 0..watchers {
        ready_rx.recv().await.unwrap();
    }
    let mut conn = client.connect().await.unwrap();
    for i in 0..events {
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
        tokio::time::sleep(Duration::from_millis(5)).await;
    }
    for w in tasks {
        let _ = tokio::time::timeout(Duration::from_secs(60), w).await;
    }
    latencies.lock().unwrap().clone()
}
