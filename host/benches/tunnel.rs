//! Tunnel figures (prints, asserts nothing), against an in-process kedge server on loopback
//! (durable store, the default plugins):
//! - reconnect: one agent dials the server through a UDP relay that plays the NAT. The relay
//!   drops everything for a while, then passes traffic again from a new source port (a NAT
//!   rebinding). Measured: time from the link's return to the first API request through the
//!   tunnel that succeeds, median over bounded rounds, for outages shorter than the tunnel's
//!   30 s idle timeout (the QUIC connection migrates) and longer (the agent redials);
//! - fleet: 1,000 simulated agents — real QUIC connections with mutual TLS, each with its own
//!   node certificate — renew their Leases as the agent does (GET + PUT), every 10 s and then
//!   every 1 s. They run in a child process, so the server's CPU time and RSS read from
//!   /proc are the server's alone;
//! - storm: the server restarts (same data dir and port, as in an upgrade) under those 1,000
//!   agents. Each agent's own supervisor notices the close and redials with its jittered
//!   back-off; measured: how long after the new server starts each agent is connected again
//!   (p50, p99, last), the server's CPU meanwhile, and a round of lease renewals after it.
//!
//! Run: `cargo bench -p kedge --bench tunnel`

mod common;

use std::collections::HashMap;
use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, AtomicU64, AtomicUsize, Ordering};
use std::time::{Duration, Instant};

use bytes::Bytes;
use futures_util::StreamExt as _;
use http_body_util::{BodyExt as _, Full};
use kedge::server::{self, ServerConfig};
use kedge_tunnel::agent::{AgentConfig, TunnelClient};
use kedge_tunnel::pki::ClusterPki;
use kedge_tunnel::server::NodeTunnels;
use serde_json::{Value, json};
use tokio::io::{AsyncBufReadExt as _, AsyncWriteExt as _};
use tokio::net::UdpSocket;
use tokio_util::sync::CancellationToken;

/// Outages shorter than the idle timeout (the connection survives and migrates): length,
/// rounds, and which side's request tells that the tunnel is usable again.
const SHORT_OUTAGES: &[(Duration, usize, Probe)] = &[
    (Duration::from_secs(2), 10, Probe::AgentToServer),
    (Duration::from_secs(10), 5, Probe::AgentToServer),
    (Duration::from_secs(2), 5, Probe::ServerToAgent),
];

/// Who sends the request that shows the tunnel works again.
#[derive(Clone, Copy, Debug)]
enum Probe {
    /// An API call of the agent (its lease, its watches).
    AgentToServer,
    /// A kubelet call of the server (`kubectl logs`): it can only follow the agent's new
    /// address once the agent has sent something (a keep-alive, every 5 s).
    ServerToAgent,
}
/// Outages past the 30 s idle timeout: the agent loses the connection and redials. Each
/// round costs ~35 s, hence few.
const LOSS_ROUNDS: usize = 3;
/// No single recovery may take longer than this (bounds every wait below).
const RECOVERY_BOUND: Duration = Duration::from_secs(60);

const AGENTS: usize = 1000;
/// Handshakes in flight at once while the fleet connects.
const CONNECT_CONCURRENCY: usize = 32;
/// (name, renew interval, how long) of each fleet phase: connected and silent but for
/// keep-alives, the agent's 10 s, then a 1 s stress.
const PHASES: &[(&str, Option<Duration>, Duration)] = &[
    (
        "idle (QUIC keep-alives only)",
        None,
        Duration::from_secs(10),
    ),
    (
        "renew every 10 s",
        Some(Duration::from_secs(10)),
        Duration::from_secs(30),
    ),
    (
        "renew every 1 s",
        Some(Duration::from_secs(1)),
        Duration::from_secs(15),
    ),
];
const CHILD_ARG: &str = "tunnel-bench-agents";
const YEAR: Duration = Duration::from_secs(365 * 24 * 3600);

fn ms(d: Duration) -> String {
    format!("{:.0} ms", d.as_secs_f64() * 1e3)
}

fn percentile(v: &mut [Duration], p: f64) -> Duration {
    if v.is_empty() {
        return Duration::ZERO;
    }
    v.sort();
    v[((v.len() as f64 - 1.0) * p).round() as usize]
}

fn main() {
    let args: Vec<String> = std::env::args().collect();
    let rt = tokio::runtime::Builder::new_multi_thread()
        .enable_all()
        .build()
        .unwrap();
    if args.get(1).map(String::as_str) == Some(CHILD_ARG) {
        let addr = args[2].clone();
        let root = PathBuf::from(&args[3]);
        rt.block_on(fleet_child(addr, root));
    } else {
        rt.block_on(run());
    }
}

async fn run() {
    kedge_tunnel::install_crypto_provider();
    let dir = tempfile::tempdir().unwrap();
    let cancel = CancellationToken::new();
    let data = dir.path().join("server");
    let cfg = common::server_config(data.clone());
    let server_cancel = cancel.child_token();
    let srv = server::start(cfg.clone(), server_cancel.clone())
        .await
        .unwrap();
    // The server's own CA, loaded again to issue node certificates without bootstrap.
    let pki = ClusterPki::load_or_create(&data.join("pki"), &[]).unwrap();

    // `KEDGE_BENCH_ONLY=fleet` (or `reconnect`) runs one part.
    let only = std::env::var("KEDGE_BENCH_ONLY").unwrap_or_default();
    assert!(
        ["", "fleet", "reconnect"].contains(&only.as_str()),
        "KEDGE_BENCH_ONLY is fleet or reconnect (or unset for both), not {only:?}"
    );
    if only != "fleet" {
        reconnect(&pki, srv.tunnel_addr, &srv.nodes, dir.path()).await;
    }
    if only == "reconnect" {
        cancel.cancel();
        let _ = tokio::time::timeout(Duration::from_secs(10), srv.stopped()).await;
        return;
    }
    let running = Running {
        cfg: ServerConfig {
            // A restart takes the same port: the agents know no other.
            listen: srv.https_addr,
            ..cfg
        },
        srv,
        cancel: server_cancel,
    };
    let running = fleet(&pki, running, dir.path()).await;

    running.cancel.cancel();
    cancel.cancel();
    let _ = tokio::time::timeout(Duration::from_secs(10), running.srv.stopped()).await;
}

/// The server under test, restartable with the same configuration.
struct Running {
    cfg: ServerConfig,
    srv: server::Server,
    cancel: CancellationToken,
}

impl Running {
    /// Stops the server (its agents see the connections close) and starts it again with the
    /// same state, certificates and port; returns when the new one accepts connections, and
    /// when it began to start (it binds its port first, so agents may connect from then on).
    async fn restart(mut self) -> (Running, std::time::SystemTime) {
        self.cancel.cancel();
        let t = Instant::now();
        if tokio::time::timeout(Duration::from_secs(30), self.srv.stopped())
            .await
            .is_err()
        {
            println!("storm: the old server's tasks did not all stop within 30 s");
        }
        println!(
            "storm: old server stopped in {:.2} s",
            t.elapsed().as_secs_f64()
        );
        drop(self.srv);
        // In one process the stopped server's store may still be referenced (and locked) by
        // a task on its way out; a copy of its data dir is the state a new process would
        // open.
        let copy = self.cfg.data_dir.with_extension("restarted");
        copy_dir(&self.cfg.data_dir, &copy);
        self.cfg.data_dir = copy;
        let cancel = CancellationToken::new();
        // The old sockets are closed once its tasks are done; retry briefly if the port is
        // still held.
        let mut tries = 0;
        let (srv, began) = loop {
            let began = std::time::SystemTime::now();
            match server::start(self.cfg.clone(), cancel.clone()).await {
                Ok(s) => break (s, began),
                Err(e) if tries < 50 => {
                    tries += 1;
                    if tries == 1 {
                        println!("storm: restart waits for the port: {e:#}");
                    }
                    tokio::time::sleep(Duration::from_millis(100)).await;
                }
                Err(e) => panic!("the server does not start again: {e:#}"),
            }
        };
        (
            Running {
                cfg: self.cfg,
                srv,
                cancel,
            },
            began,
        )
    }
}

// ---------------------------------------------------------------------------------------
// Reconnect.

/// A UDP relay standing in for a NAT between agents and the server: each client address
/// gets its own upstream socket (its "mapping"); `rebind` makes the next packet of every
/// client take a fresh one, so the server sees a new source port.
struct Relay {
    front: SocketAddr,
    passing: Arc<AtomicBool>,
    generation: Arc<AtomicU64>,
    task: tokio::task::JoinHandle<()>,
}

struct Mapping {
    upstream: Arc<UdpSocket>,
    generation: u64,
    reader: tokio::task::JoinHandle<()>,
}

impl Drop for Mapping {
    fn drop(&mut self) {
        self.reader.abort();
    }
}

impl Relay {
    async fn start(server: SocketAddr) -> Relay {
        let front = Arc::new(UdpSocket::bind("127.0.0.1:0").await.unwrap());
        let addr = front.local_addr().unwrap();
        let passing = Arc::new(AtomicBool::new(true));
        let generation = Arc::new(AtomicU64::new(0));
        let (p, g) = (passing.clone(), generation.clone());
        let task = tokio::spawn(async move {
            let mut maps: HashMap<SocketAddr, Mapping> = HashMap::new();
            let mut buf = vec![0u8; 65536];
            loop {
                let Ok((n, client)) = front.recv_from(&mut buf).await else {
                    return;
                };
                if !p.load(Ordering::Relaxed) {
                    continue;
                }
                let generation = g.load(Ordering::Relaxed);
                if maps.get(&client).is_none_or(|m| m.generation != generation) {
                    let upstream = Arc::new(UdpSocket::bind("127.0.0.1:0").await.unwrap());
                    upstream.connect(server).await.unwrap();
                    let (up, front, p, g) = (upstream.clone(), front.clone(), p.clone(), g.clone());
                    let reader = tokio::spawn(async move {
                        let mut buf = vec![0u8; 65536];
                        while let Ok(n) = up.recv(&mut buf).await {
                            // A rebinding ends this mapping at once, as a NAT forgets it.
                            if p.load(Ordering::Relaxed) && g.load(Ordering::Relaxed) == generation
                            {
                                let _ = front.send_to(&buf[..n], client).await;
                            }
                        }
                    });
                    maps.insert(
                        client,
                        Mapping {
                            upstream,
                            generation,
                            reader,
                        },
                    );
                }
                let _ = maps[&client].upstream.send(&buf[..n]).await;
            }
        });
        Relay {
            front: addr,
            passing,
            generation,
            task,
        }
    }

    fn cut(&self) {
        self.passing.store(false, Ordering::Relaxed);
    }

    /// The link returns, through new NAT mappings.
    fn restore_rebound(&self) {
        self.generation.fetch_add(1, Ordering::Relaxed);
        self.passing.store(true, Ordering::Relaxed);
    }
}

impl Drop for Relay {
    fn drop(&mut self) {
        self.task.abort();
    }
}

/// A node's tunnel state directory with a certificate issued straight from the CA.
fn node_state(pki: &ClusterPki, root: &Path, node: &str) -> PathBuf {
    let (cert, key) = pki
        .issue_client(&format!("system:node:{node}"), &["system:nodes"], YEAR)
        .unwrap();
    let dir = root.join(node);
    std::fs::create_dir_all(&dir).unwrap();
    std::fs::write(dir.join("node.crt"), cert).unwrap();
    std::fs::write(dir.join("node.key"), key).unwrap();
    std::fs::write(dir.join("ca.crt"), pki.ca_pem()).unwrap();
    dir
}

async fn call(
    client: &TunnelClient,
    method: http::Method,
    path: &str,
    body: Option<&Value>,
) -> Result<(u16, Value), String> {
    let bytes = body.map_or_else(Bytes::new, |b| Bytes::from(serde_json::to_vec(b).unwrap()));
    let req = http::Request::builder()
        .method(method)
        .uri(path)
        .header(http::header::HOST, "kedge-server")
        .header(http::header::CONTENT_TYPE, "application/json")
        .header(http::header::ACCEPT, "application/json")
        .body(Full::new(bytes))
        .unwrap();
    let resp = client.request(req).await.map_err(|e| e.to_string())?;
    let code = resp.status().as_u16();
    let body = resp
        .into_body()
        .collect()
        .await
        .map_err(|e| e.to_string())?
        .to_bytes();
    Ok((code, serde_json::from_slice(&body).unwrap_or(Value::Null)))
}

/// Polls with short, abandoned attempts until one API request through the tunnel succeeds;
/// returns how long that took.
async fn until_usable(client: &TunnelClient) -> Option<Duration> {
    let start = Instant::now();
    while start.elapsed() < RECOVERY_BOUND {
        let attempt = call(client, http::Method::GET, "/version", None);
        if let Ok(Ok((200, _))) = tokio::time::timeout(Duration::from_millis(250), attempt).await {
            return Some(start.elapsed());
        }
        // A connection that is already known dead fails at once: do not spin.
        tokio::time::sleep(Duration::from_millis(10)).await;
    }
    None
}

/// Like [`until_usable`], from the server's side: a kubelet request to the node.
async fn until_reachable(nodes: &NodeTunnels, node: &str) -> Option<Duration> {
    let start = Instant::now();
    while start.elapsed() < RECOVERY_BOUND {
        let req = http::Request::get("/healthz")
            .body(axum::body::Body::empty())
            .unwrap();
        let attempt = async {
            let resp = nodes.request(node, req).await.ok()?;
            let ok = resp.status() == 200;
            resp.into_body().collect().await.ok()?;
            Some(ok)
        };
        if let Ok(Some(true)) = tokio::time::timeout(Duration::from_millis(250), attempt).await {
            return Some(start.elapsed());
        }
        tokio::time::sleep(Duration::from_millis(10)).await;
    }
    None
}

async fn reconnect(pki: &ClusterPki, server: SocketAddr, nodes: &NodeTunnels, root: &Path) {
    let relay = Relay::start(server).await;
    let state = node_state(pki, &root.join("probe"), "reconnect-probe");
    let cancel = CancellationToken::new();
    let client = TunnelClient::start(
        AgentConfig {
            server: relay.front.to_string(),
            join_token: None,
            node_name: "reconnect-probe".into(),
            state_dir: state,
        },
        axum::Router::new().route("/healthz", axum::routing::get(|| async { "ok" })),
        cancel.clone(),
    )
    .await
    .unwrap();
    until_usable(&client)
        .await
        .expect("the probe agent connects");
    // Counts tunnel losses, to tell a migration from a redial.
    let losses = Arc::new(AtomicUsize::new(0));
    let mut up = client.connected();
    let counter = losses.clone();
    let watcher = tokio::spawn(async move {
        while up.changed().await.is_ok() {
            if !*up.borrow_and_update() {
                counter.fetch_add(1, Ordering::Relaxed);
            }
        }
    });

    for &(outage, rounds, probe) in SHORT_OUTAGES {
        let mut took = Vec::new();
        let before = losses.load(Ordering::Relaxed);
        for _ in 0..rounds {
            relay.cut();
            tokio::time::sleep(outage).await;
            relay.restore_rebound();
            let usable = match probe {
                Probe::AgentToServer => until_usable(&client).await,
                Probe::ServerToAgent => until_reachable(nodes, "reconnect-probe").await,
            };
            match usable {
                Some(d) => took.push(d),
                None => println!("reconnect: no recovery within {RECOVERY_BOUND:?}"),
            }
            // Let the path settle before the next cut.
            tokio::time::sleep(Duration::from_millis(500)).await;
        }
        let redials = losses.load(Ordering::Relaxed) - before;
        let n = took.len();
        println!(
            "reconnect: {:>2} s outage, then a new NAT port: {probe:?} usable again after median {}, max {} ({n} rounds; {} of them redialled, the rest migrated)",
            outage.as_secs(),
            ms(percentile(&mut took, 0.5)),
            ms(percentile(&mut took, 1.0)),
            redials,
        );
    }

    let mut took = Vec::new();
    let mut outages = Vec::new();
    for _ in 0..LOSS_ROUNDS {
        let before = losses.load(Ordering::Relaxed);
        relay.cut();
        let cut_at = Instant::now();
        while losses.load(Ordering::Relaxed) == before && cut_at.elapsed() < RECOVERY_BOUND {
            tokio::time::sleep(Duration::from_millis(100)).await;
        }
        // A little past the loss, so the agent is in its redial loop, as after a real outage.
        tokio::time::sleep(Duration::from_secs(2)).await;
        outages.push(cut_at.elapsed());
        relay.restore_rebound();
        match until_usable(&client).await {
            Some(d) => took.push(d),
            None => println!("reconnect: no recovery within {RECOVERY_BOUND:?}"),
        }
    }
    println!(
        "reconnect: {} s outage (connection lost at the 30 s idle timeout, agent redials): usable again after median {}, max {} ({} rounds)",
        percentile(&mut outages, 0.5).as_secs(),
        ms(percentile(&mut took, 0.5)),
        ms(percentile(&mut took, 1.0)),
        took.len(),
    );
    watcher.abort();
    cancel.cancel();
    // Let the probe close its connection before the fleet starts.
    tokio::time::sleep(Duration::from_millis(300)).await;
}

// ---------------------------------------------------------------------------------------
// Fleet.

/// CPU seconds (user + system) and RSS of a process, from /proc.
#[derive(Clone, Copy)]
struct Usage {
    cpu: f64,
    rss_mib: f64,
}

fn clock_ticks() -> f64 {
    std::process::Command::new("getconf")
        .arg("CLK_TCK")
        .output()
        .ok()
        .and_then(|o| String::from_utf8_lossy(&o.stdout).trim().parse().ok())
        .unwrap_or(100.0)
}

fn usage(pid: &str, ticks: f64) -> Option<Usage> {
    let stat = std::fs::read_to_string(format!("/proc/{pid}/stat")).ok()?;
    // Fields after the command name (which may contain spaces) start at state, field 3.
    let rest = &stat[stat.rfind(')')? + 2..];
    let f: Vec<&str> = rest.split_whitespace().collect();
    let utime: f64 = f.get(11)?.parse().ok()?;
    let stime: f64 = f.get(12)?.parse().ok()?;
    let status = std::fs::read_to_string(format!("/proc/{pid}/status")).ok()?;
    let rss_kib: f64 = status
        .lines()
        .find(|l| l.starts_with("VmRSS:"))?
        .split_whitespace()
        .nth(1)?
        .parse()
        .ok()?;
    Some(Usage {
        cpu: (utime + stime) / ticks,
        rss_mib: rss_kib / 1024.0,
    })
}

async fn fleet(pki: &ClusterPki, mut running: Running, root: &Path) -> Running {
    let root = root.join("fleet");
    let start = Instant::now();
    for i in 0..AGENTS {
        node_state(pki, &root, &format!("sim-{i:04}"));
    }
    let issued = start.elapsed();
    println!(
        "fleet: issued {AGENTS} node certificates (ECDSA P-256 key + signature, written to disk) in {:.2} s = {:.2} ms each",
        issued.as_secs_f64(),
        issued.as_secs_f64() * 1e3 / AGENTS as f64
    );

    let ticks = clock_ticks();
    let me = std::process::id().to_string();
    let idle = usage(&me, ticks).unwrap();
    let mut child = tokio::process::Command::new(std::env::current_exe().unwrap())
        .arg(CHILD_ARG)
        .arg(running.srv.tunnel_addr.to_string())
        .arg(&root)
        .stdout(std::process::Stdio::piped())
        .stdin(std::process::Stdio::piped())
        .kill_on_drop(true)
        .spawn()
        .unwrap();
    let child_pid = child.id().unwrap().to_string();
    let mut lines = tokio::io::BufReader::new(child.stdout.take().unwrap()).lines();
    let mut to_child = child.stdin.take().unwrap();
    let mut mark = (Instant::now(), idle, usage(&child_pid, ticks));
    let deadline = Instant::now() + Duration::from_secs(600);
    loop {
        let line = match tokio::time::timeout_at(deadline.into(), lines.next_line()).await {
            Ok(Ok(Some(l))) => l,
            Ok(_) => break,
            Err(_) => {
                println!("fleet: the agents' process did not finish within 10 min");
                break;
            }
        };
        // "start <what>" opens a measured window, "end <what>: <figures>" closes it.
        if line.starts_with("start ") {
            mark = (
                Instant::now(),
                usage(&me, ticks).unwrap(),
                usage(&child_pid, ticks),
            );
            if line.starts_with("start storm") {
                let t = Instant::now();
                let began;
                (running, began) = running.restart().await;
                let up = began
                    .duration_since(std::time::UNIX_EPOCH)
                    .unwrap()
                    .as_nanos();
                println!(
                    "storm: the server stopped and started again in {:.2} s",
                    t.elapsed().as_secs_f64()
                );
                // Tells the agents' process when the new server began to listen.
                to_child
                    .write_all(format!("up {up}\n").as_bytes())
                    .await
                    .unwrap();
            }
        } else if let Some(rest) = line.strip_prefix("end ") {
            let wall = mark.0.elapsed().as_secs_f64();
            let now = usage(&me, ticks).unwrap();
            let child_now = usage(&child_pid, ticks);
            let server_cpu = now.cpu - mark.1.cpu;
            let client_cpu = match (&mark.2, &child_now) {
                (Some(a), Some(b)) => format!("{:.2} s", b.cpu - a.cpu),
                _ => "?".into(),
            };
            println!("fleet: {rest}");
            println!(
                "fleet:   server: {server_cpu:.2} s CPU in {wall:.1} s = {:.1} % of one core, RSS {:.0} MiB ({} tunnels connected); agents' process: {client_cpu} CPU",
                100.0 * server_cpu / wall,
                now.rss_mib,
                running.srv.nodes.connected().len(),
            );
        } else {
            println!("fleet: {line}");
        }
    }
    let _ = tokio::time::timeout(Duration::from_secs(30), child.wait()).await;
    // The agents close their connections on the way out; a close lost with the exiting
    // process leaves the server to notice the silence (30 s idle timeout).
    let left = Instant::now();
    while !running.srv.nodes.connected().is_empty() && left.elapsed() < Duration::from_secs(40) {
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    let end = usage(&me, ticks).unwrap();
    println!(
        "fleet: server RSS {:.0} MiB before the fleet, {:.0} MiB after it left; {} tunnels still registered {:.1} s after the agents' process exited",
        idle.rss_mib,
        end.rss_mib,
        running.srv.nodes.connected().len(),
        left.elapsed().as_secs_f64(),
    );
    running
}

/// The child: `AGENTS` tunnel clients, each renewing its node's Lease.
async fn fleet_child(server: String, root: PathBuf) {
    kedge_tunnel::install_crypto_provider();
    let cancel = CancellationToken::new();
    println!("start connecting {AGENTS} agents");
    let started = Instant::now();
    let clients: Vec<(String, TunnelClient)> = futures_util::stream::iter(0..AGENTS)
        .map(|i| {
            let (server, root, cancel) = (server.clone(), root.clone(), cancel.clone());
            async move {
                let node = format!("sim-{i:04}");
                let client = TunnelClient::start(
                    AgentConfig {
                        server,
                        join_token: None,
                        node_name: node.clone(),
                        state_dir: root.join(&node),
                    },
                    axum::Router::new(),
                    cancel,
                )
                .await
                .unwrap();
                (node, client)
            }
        })
        .buffer_unordered(CONNECT_CONCURRENCY)
        .collect()
        .await;
    let connected = clients
        .iter()
        .filter(|(_, c)| *c.connected().borrow())
        .count();
    println!(
        "end {connected}/{AGENTS} agents connected (mTLS QUIC handshakes, {CONNECT_CONCURRENCY} at a time) in {:.2} s",
        started.elapsed().as_secs_f64()
    );
    let clients = Arc::new(clients);

    for &(name, every, how_long) in PHASES {
        println!("start {name}");
        let Some(every) = every else {
            tokio::time::sleep(how_long).await;
            println!("end {name} for {} s", how_long.as_secs());
            continue;
        };
        let stop = Instant::now() + how_long;
        let mut tasks = Vec::new();
        for (i, _) in clients.iter().enumerate() {
            let clients = clients.clone();
            tasks.push(tokio::spawn(async move {
                let (node, client) = &clients[i];
                // Spread the fleet over the interval, as agents started at random times are.
                let offset = every.mul_f64(i as f64 / AGENTS as f64);
                tokio::time::sleep(offset).await;
                let mut ok = Vec::new();
                let mut failed = 0usize;
                let mut next = tokio::time::Instant::now();
                while Instant::now() < stop {
                    let t = Instant::now();
                    match renew_lease(client, node).await {
                        Ok(()) => ok.push(t.elapsed()),
                        Err(_) => failed += 1,
                    }
                    next += every;
                    if next.into_std() >= stop {
                        break;
                    }
                    tokio::time::sleep_until(next).await;
                }
                (ok, failed)
            }));
        }
        let mut lat = Vec::new();
        let mut failed = 0;
        for t in tasks {
            let (ok, f) = t.await.unwrap();
            lat.extend(ok);
            failed += f;
        }
        println!(
            "end {name} for {} s: {} renewals ({:.0}/s), {failed} failed, latency p50 {}, p99 {}, max {}",
            how_long.as_secs(),
            lat.len(),
            lat.len() as f64 / how_long.as_secs_f64(),
            ms(percentile(&mut lat, 0.5)),
            ms(percentile(&mut lat, 0.99)),
            ms(percentile(&mut lat, 1.0)),
        );
    }
    storm(&clients).await;
    // Still connected while the parent samples the last phase's figures; then each agent
    // closes its connection and waits up to 1 s for the server to see it.
    tokio::time::sleep(Duration::from_secs(1)).await;
    cancel.cancel();
    tokio::time::sleep(Duration::from_millis(1500)).await;
}

fn copy_dir(from: &Path, to: &Path) {
    std::fs::create_dir_all(to).unwrap();
    for e in std::fs::read_dir(from).unwrap() {
        let e = e.unwrap();
        let dest = to.join(e.file_name());
        if e.file_type().unwrap().is_dir() {
            copy_dir(&e.path(), &dest);
        } else {
            std::fs::copy(e.path(), &dest).unwrap();
        }
    }
}

/// The server restarts under the fleet: each agent notices, backs off and redials on its own.
/// Prints when each was connected again, relative to the moment the new server began to start
/// (binding its port first).
async fn storm(clients: &Arc<Vec<(String, TunnelClient)>>) {
    let mut stdin = tokio::io::BufReader::new(tokio::io::stdin()).lines();
    println!("start storm: the server restarts under {AGENTS} agents");
    let started = std::time::SystemTime::now();
    let bound = Duration::from_secs(120);
    // Each agent: lost, then connected again (as a wall-clock time, to compare with the
    // parent's).
    let mut tasks = Vec::new();
    for i in 0..clients.len() {
        let clients = clients.clone();
        tasks.push(tokio::spawn(async move {
            let mut rx = clients[i].1.connected();
            let lost = async { rx.wait_for(|c| !*c).await.is_ok() };
            if tokio::time::timeout(bound, lost).await != Ok(true) {
                return None;
            }
            let back = async { rx.wait_for(|c| *c).await.is_ok() };
            (tokio::time::timeout(bound, back).await == Ok(true)).then(std::time::SystemTime::now)
        }));
    }
    let up = match tokio::time::timeout(bound, stdin.next_line()).await {
        Ok(Ok(Some(l))) => l
            .strip_prefix("up ")
            .and_then(|n| n.parse::<u128>().ok())
            .map(|n| std::time::UNIX_EPOCH + Duration::from_nanos(n as u64)),
        _ => None,
    };
    let Some(up) = up else {
        println!("end storm: the parent never said the server was back");
        return;
    };
    let mut after = Vec::new();
    let mut missing = 0;
    for t in tasks {
        match t.await.unwrap() {
            Some(at) => after.push(at.duration_since(up).unwrap_or_default()),
            None => missing += 1,
        }
    }
    let total = std::time::SystemTime::now()
        .duration_since(started)
        .unwrap_or_default();
    // Everyone is back: one lease renewal each, all at once, to show the API is usable.
    let t = Instant::now();
    let renewed = futures_util::stream::iter(clients.iter())
        .map(|(node, client)| renew_lease(client, node))
        .buffer_unordered(AGENTS)
        .filter(|r| std::future::ready(r.is_ok()))
        .count()
        .await;
    println!(
        "end storm: {}/{AGENTS} agents connected again after the restart (p50 {}, p99 {}, last {} after the new server began to start; {missing} not back within {} s); then {renewed}/{AGENTS} lease renewals at once in {} ms; {:.1} s in all",
        after.len(),
        ms(percentile(&mut after, 0.5)),
        ms(percentile(&mut after, 0.99)),
        ms(percentile(&mut after, 1.0)),
        bound.as_secs(),
        t.elapsed().as_millis(),
        total.as_secs_f64(),
    );
}

/// What the agent does every 10 s: read the Lease, bump renewTime, write it back (or create
/// it the first time).
async fn renew_lease(client: &TunnelClient, node: &str) -> Result<(), String> {
    let base = "/apis/coordination.k8s.io/v1/namespaces/kube-node-lease/leases";
    let path = format!("{base}/{node}");
    let now = chrono::Utc::now().to_rfc3339_opts(chrono::SecondsFormat::Micros, true);
    let (code, mut lease) = call(client, http::Method::GET, &path, None).await?;
    let (code, body) = match code {
        200 => {
            lease["spec"]["renewTime"] = json!(now);
            call(client, http::Method::PUT, &path, Some(&lease)).await?
        }
        404 => {
            let lease = json!({
                "apiVersion": "coordination.k8s.io/v1",
                "kind": "Lease",
                "metadata": {"name": node, "namespace": "kube-node-lease"},
                "spec": {"holderIdentity": node, "leaseDurationSeconds": 40,
                         "acquireTime": now, "renewTime": now},
            });
            call(client, http::Method::POST, base, Some(&lease)).await?
        }
        other => return Err(format!("GET lease: {other}")),
    };
    if (200..300).contains(&code) {
        Ok(())
    } else {
        Err(format!("{code}: {body}"))
    }
}
