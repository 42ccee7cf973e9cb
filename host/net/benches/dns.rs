//! Node-local DNS figures (the service-networking issue's goal: ≥ 20,000 queries/s on one
//! core, p99 < 1 ms), printed rather than asserted:
//!
//! - `Zone::build` for 1,000 Services with 10 endpoints each, and `DnsServer::update`;
//! - queries/s and latency percentiles of A lookups against the server on 127.0.0.1, the
//!   server on one thread (a current-thread runtime) and the clients on another.
//!
//! Run with `cargo bench -p kedge-net --bench dns`. Bounded: 200,000 queries or 20 s of load,
//! whichever comes first; every query waits at most 1 s.

use std::net::SocketAddr;
use std::sync::Arc;
use std::sync::atomic::{AtomicU64, AtomicUsize, Ordering};
use std::time::{Duration, Instant};

use hickory_proto::op::{Message, Query, ResponseCode};
use hickory_proto::rr::{Name, RecordType};
use kedge_net::dns::{DnsConfig, DnsServer, Zone};
use serde_json::{Value, json};
use tokio::net::UdpSocket;
use tokio_util::sync::CancellationToken;

const SERVICES: usize = 1_000;
const ENDPOINTS: usize = 10;
const MAX_QUERIES: usize = 200_000;
const MAX_LOAD_TIME: Duration = Duration::from_secs(20);
const QUERY_TIMEOUT: Duration = Duration::from_secs(1);
const CLIENTS: usize = 16;
const WARMUP: usize = 2_000;
const BUILD_ROUNDS: usize = 10;

/// `SERVICES` Services, every other one headless, each with one EndpointSlice of `ENDPOINTS`
/// ready endpoints (StatefulSet-style hostnames on the headless ones) and two named ports.
fn fixture() -> (Vec<Value>, Vec<Value>) {
    let mut services = Vec::with_capacity(SERVICES);
    let mut slices = Vec::with_capacity(SERVICES);
    for i in 0..SERVICES {
        let name = format!("svc-{i}");
        let namespace = format!("ns-{}", i % 20);
        let headless = i % 2 == 1;
        let cluster_ip = if headless {
            "None".to_string()
        } else {
            format!("10.43.{}.{}", i / 250, i % 250 + 1)
        };
        services.push(json!({
            "metadata": {"name": name, "namespace": namespace},
            "spec": {"clusterIP": cluster_ip, "ports": [
                {"name": "http", "port": 80, "protocol": "TCP"},
                {"name": "dns", "port": 53, "protocol": "UDP"}]}
        }));
        let endpoints: Vec<Value> = (0..ENDPOINTS)
            .map(|e| {
                let n = i * ENDPOINTS + e;
                json!({"addresses": [format!("10.42.{}.{}", n / 250, n % 250 + 1)],
                       "hostname": format!("{name}-{e}"), "conditions": {"ready": true}})
            })
            .collect();
        slices.push(json!({
            "metadata": {"name": format!("{name}-abc"), "namespace": namespace,
                         "labels": {"kubernetes.io/service-name": name}},
            "addressType": "IPv4",
            "ports": [{"name": "http", "port": 8080, "protocol": "TCP"}],
            "endpoints": endpoints
        }));
    }
    (services, slices)
}

fn median(mut samples: Vec<Duration>) -> Duration {
    samples.sort();
    samples[samples.len() / 2]
}

fn percentile(sorted: &[Duration], p: f64) -> Duration {
    let index = ((sorted.len() as f64 - 1.0) * p).round() as usize;
    sorted[index]
}

/// One pre-encoded A query per Service name, with its message ID (each client socket has one
/// query in flight, so a fixed ID per name is enough to match answers).
fn queries() -> Vec<(u16, Vec<u8>)> {
    (0..SERVICES)
        .map(|i| {
            let name =
                Name::from_ascii(format!("svc-{i}.ns-{}.svc.cluster.local.", i % 20)).unwrap();
            let mut message = Message::query();
            message.add_query(Query::query(name, RecordType::A));
            message.metadata.recursion_desired = true;
            (message.metadata.id, message.to_vec().unwrap())
        })
        .collect()
}

struct Load {
    sent: AtomicUsize,
    lost: AtomicU64,
    bad: AtomicU64,
}

/// One closed-loop client: send, wait for the answer, repeat until the shared budget is spent.
async fn client(
    server: SocketAddr,
    queries: Arc<Vec<(u16, Vec<u8>)>>,
    load: Arc<Load>,
    budget: usize,
    deadline: Instant,
    check: bool,
) -> Vec<Duration> {
    let socket = UdpSocket::bind("127.0.0.1:0").await.unwrap();
    socket.connect(server).await.unwrap();
    let mut latencies = Vec::new();
    let mut buf = vec![0u8; 4096];
    loop {
        let n = load.sent.fetch_add(1, Ordering::Relaxed);
        if n >= budget || Instant::now() >= deadline {
            break;
        }
        let (id, query) = &queries[n % queries.len()];
        let started = Instant::now();
        socket.send(query).await.unwrap();
        match tokio::time::timeout(QUERY_TIMEOUT, socket.recv(&mut buf)).await {
            Ok(Ok(len)) => {
                latencies.push(started.elapsed());
                if check {
                    let answer = Message::from_vec(&buf[..len]).unwrap();
                    if answer.metadata.id != *id
                        || answer.metadata.response_code != ResponseCode::NoError
                        || answer.answers.is_empty()
                    {
                        load.bad.fetch_add(1, Ordering::Relaxed);
                    }
                }
            }
            _ => {
                load.lost.fetch_add(1, Ordering::Relaxed);
            }
        }
    }
    latencies
}

fn main() {
    let (services, slices) = fixture();
    println!(
        "dns bench: {SERVICES} services x {ENDPOINTS} endpoints (half headless), {CLIENTS} UDP clients"
    );

    let build_times: Vec<Duration> = (0..BUILD_ROUNDS)
        .map(|_| {
            let started = Instant::now();
            let zone = Zone::build("cluster.local", &services, &slices);
            let took = started.elapsed();
            assert_eq!(zone.services(), SERVICES);
            took
        })
        .collect();
    println!(
        "Zone::build        median {:?} over {BUILD_ROUNDS} rounds",
        median(build_times)
    );

    // The server: one thread, one current-thread runtime.
    let cancel = CancellationToken::new();
    let (tx, rx) = std::sync::mpsc::channel();
    let server_cancel = cancel.clone();
    let server_thread = std::thread::spawn(move || {
        let runtime = tokio::runtime::Builder::new_current_thread()
            .enable_all()
            .build()
            .unwrap();
        runtime.block_on(async move {
            let cfg = DnsConfig {
                listen: vec!["127.0.0.1:0".parse().unwrap()],
                domain: "cluster.local".into(),
                upstreams: Vec::new(),
            };
            let server = DnsServer::start(cfg, server_cancel.clone()).await.unwrap();
            tx.send(server).unwrap();
            server_cancel.cancelled().await;
        });
    });
    let server = rx.recv().unwrap();
    let addr = server.local_addrs()[0];

    let update_times: Vec<Duration> = (0..BUILD_ROUNDS)
        .map(|_| {
            let zone = Zone::build("cluster.local", &services, &slices);
            let started = Instant::now();
            server.update(zone);
            started.elapsed()
        })
        .collect();
    println!(
        "DnsServer::update  median {:?} (swap, and drop of the old zone)",
        median(update_times)
    );

    let runtime = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
        .unwrap();
    let queries = Arc::new(queries());
    let run = |budget: usize, check: bool| -> (Vec<Duration>, Duration, Arc<Load>) {
        let load = Arc::new(Load {
            sent: AtomicUsize::new(0),
            lost: AtomicU64::new(0),
            bad: AtomicU64::new(0),
        });
        let started = Instant::now();
        let deadline = started + MAX_LOAD_TIME;
        let mut latencies = runtime.block_on(async {
            let tasks: Vec<_> = (0..CLIENTS)
                .map(|_| {
                    tokio::spawn(client(
                        addr,
                        queries.clone(),
                        load.clone(),
                        budget,
                        deadline,
                        check,
                    ))
                })
                .collect();
            let mut all = Vec::new();
            for task in tasks {
                all.extend(task.await.unwrap());
            }
            all
        });
        let elapsed = started.elapsed();
        latencies.sort();
        (latencies, elapsed, load)
    };

    let (_, _, warm) = run(WARMUP, true);
    let bad = warm.bad.load(Ordering::Relaxed);
    assert_eq!(bad, 0, "{bad} wrong answers during warm-up");

    let (latencies, elapsed, load) = run(MAX_QUERIES, false);
    let answered = latencies.len();
    println!(
        "A queries          {answered} answered in {elapsed:.2?}: {:.0} queries/s, {} lost",
        answered as f64 / elapsed.as_secs_f64(),
        load.lost.load(Ordering::Relaxed)
    );
    println!(
        "latency            p50 {:?}  p90 {:?}  p99 {:?}  max {:?}",
        percentile(&latencies, 0.50),
        percentile(&latencies, 0.90),
        percentile(&latencies, 0.99),
        latencies.last().copied().unwrap_or_default()
    );

    cancel.cancel();
    server_thread.join().unwrap();
    drop(server);
}
