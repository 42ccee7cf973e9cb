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
#[path = "common/writes.rs"]
mod writes;

use std::sync::Arc;

use kedge::kubeclient::KubeClient;
use kedge::server;
use tokio_util::sync::CancellationToken;
use writes::{ms, percentile};

const WRITES_PER_LEVEL: usize = 2000;
const WATCHERS: usize = 100;
const WATCHED_EVENTS: usize = 200;

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
        let (lat, took) = writes::creates(
            &client,
            &format!("writes-{clients}"),
            clients,
            WRITES_PER_LEVEL,
        )
        .await;
        let n = lat.len();
        println!(
            "writes: {clients:>2} concurrent clients: {n} ConfigMap creates in {:.2} s = {:.0} creates/s",
            took.as_secs_f64(),
            n as f64 / took.as_secs_f64()
        );
    }

    // Watch delivery latency with many watchers.
    let mut l = writes::watch_deliveries(&client, "watched", WATCHERS, WATCHED_EVENTS).await;
    println!(
        "watch: {WATCHERS} watchers × {WATCHED_EVENTS} creates: {} deliveries, latency p50 {}, p99 {}, max {}",
        l.len(),
        ms(percentile(&mut l, 0.5)),
        ms(percentile(&mut l, 0.99)),
        ms(percentile(&mut l, 1.0)),
    );
    cancel.cancel();
}
