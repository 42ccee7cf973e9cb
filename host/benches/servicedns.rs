//! How fast a new Service becomes a name on a node (prints, asserts nothing): the server runs
//! in this process, a `kedge agent` as a child process connected over the tunnel (a remote
//! node, as far as the path goes: watch → the agent's view → its DNS zone); the bench
//! creates `SERVICES` Services one after the other and times each from the create returning
//! to the node's DNS server answering its name with its ClusterIP (p50, p99, max).
//!
//! Needs root (the agent puts its DNS address, `127.0.10.53`, on `lo`; the bench removes it
//! at the end). Run: `cargo bench -p kedge --bench servicedns` (`KEDGE_BENCH_SERVICES=N`,
//! default 100).

mod common;

use std::net::{Ipv4Addr, SocketAddr, UdpSocket};
use std::process::{Child, Command, Stdio};
use std::str::FromStr as _;
use std::time::{Duration, Instant};

use hickory_proto::op::{Message, Query};
use hickory_proto::rr::{Name, RData, RecordType};
use kedge::api::ops::WriteOptions;
use kedge::core::resources::by_kind;
use kedge::server;
use serde_json::json;
use tokio_util::sync::CancellationToken;

const KEDGE: &str = env!("CARGO_BIN_EXE_kedge");
const DNS_IP: Ipv4Addr = Ipv4Addr::new(127, 0, 10, 53);
/// How long one name may take before the bench gives up on it.
const NAME_TIMEOUT: Duration = Duration::from_secs(10);

struct Agent(Child);

impl Drop for Agent {
    fn drop(&mut self) {
        let _ = Command::new("kill")
            .args(["-TERM", &self.0.id().to_string()])
            .status();
        let _ = self.0.wait();
        let _ = Command::new("ip")
            .args(["addr", "del", &format!("{DNS_IP}/32"), "dev", "lo"])
            .output();
    }
}

/// One A query; the addresses answered.
fn query_a(sock: &UdpSocket, name: &Name, id: u16) -> Vec<Ipv4Addr> {
    let mut q = Message::query();
    q.metadata.id = id;
    q.metadata.recursion_desired = true;
    q.add_query(Query::query(name.clone(), RecordType::A));
    let Ok(bytes) = q.to_vec() else {
        return Vec::new();
    };
    if sock.send(&bytes).is_err() {
        return Vec::new();
    }
    let mut buf = [0u8; 1500];
    let Ok(n) = sock.recv(&mut buf) else {
        return Vec::new();
    };
    let Ok(m) = Message::from_vec(&buf[..n]) else {
        return Vec::new();
    };
    m.answers
        .iter()
        .filter_map(|r| match &r.data {
            RData::A(a) => Some(a.0),
            _ => None,
        })
        .collect()
}

fn main() {
    if !Command::new("id")
        .arg("-u")
        .output()
        .is_ok_and(|o| o.stdout.starts_with(b"0"))
    {
        println!("servicedns: needs root (the node's DNS address goes on lo); skipped");
        return;
    }
    tokio::runtime::Runtime::new().unwrap().block_on(run());
}

async fn run() {
    let n: usize = std::env::var("KEDGE_BENCH_SERVICES")
        .ok()
        .and_then(|v| v.parse().ok())
        .unwrap_or(100);
    let dir = tempfile::tempdir().unwrap();
    let cancel = CancellationToken::new();
    let srv = server::start(
        common::server_config(dir.path().join("server")),
        cancel.clone(),
    )
    .await
    .unwrap();
    let _agent = Agent(
        Command::new(KEDGE)
            .args([
                "agent",
                "--server",
                &srv.tunnel_addr.to_string(),
                "--token",
                &srv.join_token,
                "--name",
                "dns-bench",
                "--data-dir",
                &dir.path().join("agent").display().to_string(),
                "--pod-network",
                "host",
                "--proxy-mode",
                "none",
                "--cluster-dns",
                &DNS_IP.to_string(),
            ])
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            .spawn()
            .unwrap(),
    );
    let sock = UdpSocket::bind("127.0.0.1:0").unwrap();
    sock.connect(SocketAddr::from((DNS_IP, 53))).unwrap();
    sock.set_read_timeout(Some(Duration::from_millis(50)))
        .unwrap();
    // The node's DNS server is up once it answers for the API server's own Service.
    let kubernetes = Name::from_str("kubernetes.default.svc.cluster.local.").unwrap();
    let up = Instant::now();
    while query_a(&sock, &kubernetes, 1).is_empty() {
        assert!(
            up.elapsed() < Duration::from_secs(60),
            "the agent's DNS server never answered"
        );
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    let services = by_kind("v1", "Service").unwrap();
    let mut times = Vec::with_capacity(n);
    let mut lost = 0;
    for i in 0..n {
        let name = format!("bench-{i}");
        let created = srv
            .api
            .create(
                services,
                "default",
                json!({"apiVersion": "v1", "kind": "Service", "metadata": {"name": name},
                       "spec": {"ports": [{"port": 80}]}}),
                &WriteOptions::default(),
            )
            .unwrap();
        let t0 = Instant::now();
        let ip: Ipv4Addr = created["spec"]["clusterIP"]
            .as_str()
            .unwrap()
            .parse()
            .unwrap();
        let fqdn = Name::from_str(&format!("{name}.default.svc.cluster.local.")).unwrap();
        loop {
            if query_a(&sock, &fqdn, (i % 60_000) as u16 + 2).contains(&ip) {
                times.push(t0.elapsed());
                break;
            }
            if t0.elapsed() > NAME_TIMEOUT {
                lost += 1;
                break;
            }
            tokio::time::sleep(Duration::from_millis(1)).await;
        }
    }
    times.sort();
    let pct = |p: f64| times[((times.len() as f64 * p).ceil() as usize).clamp(1, times.len()) - 1];
    println!(
        "Service created → its name answered by the node's DNS (agent over the tunnel), {n} Services:"
    );
    if times.is_empty() {
        println!("  none resolved within {NAME_TIMEOUT:?}");
    } else {
        println!(
            "  p50 {:.1} ms, p99 {:.1} ms, max {:.1} ms, not resolved within {:?}: {lost}",
            pct(0.5).as_secs_f64() * 1e3,
            pct(0.99).as_secs_f64() * 1e3,
            times.last().unwrap().as_secs_f64() * 1e3,
            NAME_TIMEOUT
        );
    }
    cancel.cancel();
}
