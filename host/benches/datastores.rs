//! kedge's writes and watches on each datastore, side by side in one run (prints, asserts
//! nothing): the embedded store (redb), etcd with one member and etcd with three members
//! (Debian's etcd-server, started here on loopback, fsync on, as etcd runs by default).
//!
//! For each: durable ConfigMap creates per second through kedge's API (HTTPS with mutual TLS,
//! 32 clients on persistent connections) with their p50/p99 latency; the same creates
//! straight through the store (`Store::create`, 32 threads), what the datastore layer costs
//! without the API; for etcd, the same
//! number of raw puts of a value of the same size straight to etcd (32 concurrent clients)
//! as the ceiling; and watch delivery latency with 100 watchers (time from just before a
//! create is sent to its ADDED event arriving at each watcher).
//!
//! All members share this machine's cores and disk: the three-member figures show what
//! replication costs here, not what three machines would do.
//!
//! Run: `cargo bench -p kedge --bench datastores` (`-- --quick` for a short run).

mod common;
#[path = "common/writes.rs"]
mod writes;

use std::path::Path;
use std::process::{Child, Command, Stdio};
use std::sync::Arc;
use std::time::{Duration, Instant};

use kedge::kubeclient::KubeClient;
use kedge::server;
use tokio_util::sync::CancellationToken;
use writes::{config_map, ms, percentile};

const CLIENTS: usize = 32;
const WATCHERS: usize = 100;

struct Sizes {
    writes: usize,
    watched: usize,
}

/// Writes: per second, p50, p99.
struct Rate {
    per_sec: f64,
    p50: Duration,
    p99: Duration,
}

impl Rate {
    fn of(mut lat: Vec<Duration>, took: Duration) -> Rate {
        let per_sec = lat.len() as f64 / took.as_secs_f64();
        Rate {
            per_sec,
            p50: percentile(&mut lat, 0.5),
            p99: percentile(&mut lat, 0.99),
        }
    }
}

/// An etcd cluster on loopback, killed when dropped.
struct Etcd {
    children: Vec<Child>,
    endpoints: Vec<String>,
    _dir: tempfile::TempDir,
}

impl Drop for Etcd {
    fn drop(&mut self) {
        for c in &mut self.children {
            let _ = c.kill();
            let _ = c.wait();
        }
    }
}

fn port() -> u16 {
    std::net::TcpListener::bind("127.0.0.1:0")
        .unwrap()
        .local_addr()
        .unwrap()
        .port()
}

async fn start_etcd(members: usize) -> Option<Etcd> {
    if Command::new("etcd").arg("--version").output().is_err() {
        println!("etcd is not installed (scripts/setup.sh installs it): etcd rows skipped");
        return None;
    }
    let dir = tempfile::tempdir().unwrap();
    let urls: Vec<(String, String)> = (0..members)
        .map(|_| {
            (
                format!("http://127.0.0.1:{}", port()),
                format!("http://127.0.0.1:{}", port()),
            )
        })
        .collect();
    let cluster = urls
        .iter()
        .enumerate()
        .map(|(i, (_, p))| format!("m{i}={p}"))
        .collect::<Vec<_>>()
        .join(",");
    let children = urls
        .iter()
        .enumerate()
        .map(|(i, (client, peer))| {
            let log = std::fs::File::create(dir.path().join(format!("m{i}.log"))).unwrap();
            Command::new("etcd")
                .args(["--name", &format!("m{i}"), "--data-dir"])
                .arg(dir.path().join(format!("m{i}")))
                .args(["--listen-client-urls", client])
                .args(["--advertise-client-urls", client])
                .args(["--listen-peer-urls", peer])
                .args(["--initial-advertise-peer-urls", peer])
                .args(["--initial-cluster", &cluster])
                .args(["--log-level", "error"])
                .stdout(log.try_clone().unwrap())
                .stderr(log)
                .stdin(Stdio::null())
                .spawn()
                .unwrap()
        })
        .collect();
    let e = Etcd {
        children,
        endpoints: urls.into_iter().map(|(c, _)| c).collect(),
        _dir: dir,
    };
    let deadline = Instant::now() + Duration::from_secs(30);
    for ep in &e.endpoints {
        loop {
            let ok = match etcd_client::Client::connect([ep.as_str()], None).await {
                Ok(mut c) => c.status().await.is_ok_and(|s| s.leader() != 0),
                Err(_) => false,
            };
            if ok {
                break;
            }
            assert!(Instant::now() < deadline, "etcd did not start");
            tokio::time::sleep(Duration::from_millis(100)).await;
        }
    }
    Some(e)
}

/// `n` puts of a ConfigMap-sized value straight to etcd, from [`CLIENTS`] clients.
async fn raw_puts(endpoints: &[String], n: usize) -> Rate {
    let value = serde_json::to_vec(&config_map("bench", "cm-00-0000")).unwrap();
    let per = n / CLIENTS;
    let started = Instant::now();
    let mut tasks = Vec::new();
    for c in 0..CLIENTS {
        let (endpoints, value) = (endpoints.to_vec(), value.clone());
        tasks.push(tokio::spawn(async move {
            let mut kv = etcd_client::Client::connect(endpoints, None)
                .await
                .unwrap()
                .kv_client();
            let mut lat = Vec::with_capacity(per);
            for i in 0..per {
                let at = Instant::now();
                kv.put(format!("/raw/{c}/{i}"), value.clone(), None)
                    .await
                    .unwrap();
                lat.push(at.elapsed());
            }
            lat
        }));
    }
    let mut lat = Vec::new();
    for t in tasks {
        lat.extend(t.await.unwrap());
    }
    Rate::of(lat, started.elapsed())
}

/// `n` creates straight through the store (`Store::create`, no API in front) from
/// [`CLIENTS`] threads: what the datastore layer costs by itself.
fn store_creates(store: Arc<dyn kedge::store::Store>, n: usize) -> Rate {
    let per = n / CLIENTS;
    let started = Instant::now();
    let threads: Vec<_> = (0..CLIENTS)
        .map(|c| {
            let store = store.clone();
            std::thread::spawn(move || {
                (0..per)
                    .map(|i| {
                        let name = format!("cm-{c:02}-{i:04}");
                        let at = Instant::now();
                        store
                            .create(
                                &kedge::store::key("", "configmaps", "store", &name),
                                config_map("store", &name),
                            )
                            .unwrap();
                        at.elapsed()
                    })
                    .collect::<Vec<_>>()
            })
        })
        .collect();
    let lat = threads
        .into_iter()
        .flat_map(|t| t.join().unwrap())
        .collect();
    Rate::of(lat, started.elapsed())
}

/// `n` ConfigMap creates through the API from [`CLIENTS`] clients.
async fn api_creates(client: &Arc<KubeClient>, n: usize) -> Rate {
    let (lat, took) = writes::creates(client, "writes", CLIENTS, n).await;
    Rate::of(lat, took)
}

/// Watch delivery with [`WATCHERS`] watchers over `events` creates 5 ms apart: p50, p99.
async fn watch_latency(client: &Arc<KubeClient>, events: usize) -> (Duration, Duration, usize) {
    let mut l = writes::watch_deliveries(client, "watched", WATCHERS, events).await;
    let n = l.len();
    (percentile(&mut l, 0.5), percentile(&mut l, 0.99), n)
}

struct Row {
    backend: String,
    raw: Option<Rate>,
    store: Rate,
    api: Rate,
    watch: (Duration, Duration, usize),
}

/// A server on `endpoints` (the embedded store when `None`), measured.
async fn measure(backend: &str, dir: &Path, etcd: Option<&Etcd>, sizes: &Sizes) -> Row {
    let raw = match etcd {
        Some(e) => Some(raw_puts(&e.endpoints, sizes.writes).await),
        None => None,
    };
    // The store alone, under a key root (or file) of its own.
    let store: Arc<dyn kedge::store::Store> = match etcd {
        Some(e) => {
            let mut o = kedge::store::etcd::Options::new(e.endpoints.clone());
            o.root = "/store-bench/".into();
            Arc::new(kedge::store::etcd::EtcdStore::connect(o).unwrap())
        }
        None => Arc::new(
            kedge::store::redb::RedbStore::open(
                &dir.join(format!("{backend}-store.redb")),
                Default::default(),
            )
            .unwrap(),
        ),
    };
    let writes = sizes.writes;
    let store = tokio::task::spawn_blocking(move || store_creates(store, writes))
        .await
        .unwrap();
    let mut cfg = common::server_config(dir.join(backend));
    cfg.datastore = etcd.map(|e| kedge::store::etcd::Options::new(e.endpoints.clone()));
    let cancel = CancellationToken::new();
    let srv = server::start(cfg, cancel.clone()).await.unwrap();
    let client = Arc::new(KubeClient::from_kubeconfig(&srv.kubeconfig).unwrap());
    let api = api_creates(&client, sizes.writes).await;
    let watch = watch_latency(&client, sizes.watched).await;
    cancel.cancel();
    let _ = tokio::time::timeout(Duration::from_secs(10), srv.stopped()).await;
    let row = Row {
        backend: backend.to_string(),
        raw,
        store,
        api,
        watch,
    };
    print_row(&row);
    row
}

fn print_row(r: &Row) {
    let raw = r.raw.as_ref().map_or("—".to_string(), |x| {
        format!("{:.0}/s (p99 {})", x.per_sec, ms(x.p99))
    });
    let share = r.raw.as_ref().map_or(String::new(), |x| {
        format!(" = {:.0} % of raw", 100.0 * r.api.per_sec / x.per_sec)
    });
    println!(
        "| {:<10} | {:>6.0}/s{share} | {} / {} | {:.0}/s (p99 {}) | {} | {} / {} ({} deliveries) |",
        r.backend,
        r.api.per_sec,
        ms(r.api.p50),
        ms(r.api.p99),
        r.store.per_sec,
        ms(r.store.p99),
        raw,
        ms(r.watch.0),
        ms(r.watch.1),
        r.watch.2,
    );
}

fn main() {
    let quick = std::env::args().any(|a| a == "--quick");
    let sizes = if quick {
        Sizes {
            writes: 320,
            watched: 20,
        }
    } else {
        Sizes {
            writes: 3200,
            watched: 200,
        }
    };
    let rt = tokio::runtime::Builder::new_multi_thread()
        .enable_all()
        .build()
        .unwrap();
    rt.block_on(async {
        let dir = tempfile::tempdir().unwrap();
        println!(
            "datastores: {} ConfigMap creates from {CLIENTS} clients; {WATCHERS} watchers × {} creates",
            sizes.writes, sizes.watched
        );
        println!(
            "| datastore | kedge creates (32 clients, HTTPS) | p50 / p99 | Store::create alone (32 threads) | raw etcd puts (32 clients) | watch p50 / p99 |"
        );
        println!("|---|---|---|---|---|---|");
        let mut rows = vec![measure("redb", dir.path(), None, &sizes).await];
        for members in [1, 3] {
            if let Some(e) = start_etcd(members).await {
                rows.push(measure(&format!("etcd×{members}"), dir.path(), Some(&e), &sizes).await);
            }
        }
        drop(rows);
    });
}
