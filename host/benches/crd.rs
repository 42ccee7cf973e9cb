//! Custom resource figures (prints, asserts nothing), against an in-process server over real
//! HTTPS with mutual TLS on loopback, durable store:
//! - CustomResourceDefinition create → established and servable: from just before the create
//!   is sent until a create of an object of its kind succeeds (p50 / max over 20 definitions);
//! - custom-object create throughput with 8 concurrent clients beside ConfigMap creates on the
//!   same server (the cost of the schema's prune, default and validate).
//!
//! Run: `cargo bench -p kedge --bench crd`

mod common;

use std::sync::Arc;
use std::time::{Duration, Instant};

use kedge::kubeclient::KubeClient;
use kedge::server;
use serde_json::{Value, json};
use tokio_util::sync::CancellationToken;

const DEFINITIONS: usize = 20;
const CREATES: usize = 2000;
const CLIENTS: usize = 8;

fn crd(plural: &str, kind: &str) -> Value {
    json!({"apiVersion": "apiextensions.k8s.io/v1", "kind": "CustomResourceDefinition",
        "metadata": {"name": format!("{plural}.bench.kedge.dev")},
        "spec": {"group": "bench.kedge.dev", "scope": "Namespaced",
            "names": {"plural": plural, "kind": kind},
            "versions": [{"name": "v1", "served": true, "storage": true,
                "schema": {"openAPIV3Schema": {"type": "object", "properties": {
                    "spec": {"type": "object", "required": ["size"], "properties": {
                        "size": {"type": "integer", "minimum": 1},
                        "color": {"type": "string", "enum": ["red", "blue"], "default": "red"},
                        "labels": {"type": "object", "additionalProperties": {"type": "string"}}}}}}}}]}})
}

fn object(kind: &str, name: &str) -> Value {
    json!({"apiVersion": "bench.kedge.dev/v1", "kind": kind,
        "metadata": {"name": name}, "spec": {"size": 3, "labels": {"a": "b"}}})
}

async fn post(client: &KubeClient, path: &str, body: &Value) -> u16 {
    let (code, _) = client
        .request(http::Method::POST, path, "application/json", Some(body))
        .await
        .unwrap();
    code
}

async fn throughput(
    client: &Arc<KubeClient>,
    path: &str,
    body: impl Fn(usize) -> Value + Send + Sync + 'static,
) -> f64 {
    let body = Arc::new(body);
    let start = Instant::now();
    let mut tasks = Vec::new();
    for c in 0..CLIENTS {
        let (client, path, body) = (client.clone(), path.to_string(), body.clone());
        tasks.push(tokio::spawn(async move {
            for i in 0..CREATES / CLIENTS {
                assert_eq!(post(&client, &path, &body(c * CREATES + i)).await, 201);
            }
        }));
    }
    for t in tasks {
        t.await.unwrap();
    }
    CREATES as f64 / start.elapsed().as_secs_f64()
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

    let mut ready = Vec::new();
    for i in 0..DEFINITIONS {
        let (plural, kind) = (format!("things{i}"), format!("Thing{i}"));
        let start = Instant::now();
        let code = post(
            &client,
            "/apis/apiextensions.k8s.io/v1/customresourcedefinitions",
            &crd(&plural, &kind),
        )
        .await;
        assert_eq!(code, 201);
        let path = format!("/apis/bench.kedge.dev/v1/namespaces/default/{plural}");
        loop {
            if post(&client, &path, &object(&kind, "first")).await == 201 {
                break;
            }
            assert!(
                start.elapsed() < Duration::from_secs(30),
                "{plural} never served"
            );
        }
        ready.push(start.elapsed());
    }
    ready.sort();
    println!(
        "CRD create -> established and servable (n={DEFINITIONS}): p50 {:.2} ms, max {:.2} ms",
        ready[DEFINITIONS / 2].as_secs_f64() * 1e3,
        ready[DEFINITIONS - 1].as_secs_f64() * 1e3
    );

    let custom = throughput(
        &client,
        "/apis/bench.kedge.dev/v1/namespaces/default/things0",
        |i| object("Thing0", &format!("t{i}")),
    )
    .await;
    let cms = throughput(&client, "/api/v1/namespaces/default/configmaps", |i| {
        json!({"apiVersion": "v1", "kind": "ConfigMap", "metadata": {"name": format!("c{i}")},
            "data": {"size": "3", "a": "b"}})
    })
    .await;
    println!(
        "creates/s with {CLIENTS} clients, {CREATES} each: custom objects {custom:.0}, ConfigMaps {cms:.0} ({:.0} %)",
        custom / cms * 100.0
    );
    cancel.cancel();
}
