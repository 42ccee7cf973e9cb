//! Service proxy figures, printed rather than asserted:
//!
//! - building the table and rendering the nftables ruleset for 1,000 Services with 10
//!   endpoints each; applying it (`nft -f`) and applying a one-endpoint change, inside a
//!   throwaway network namespace (root and `nft` needed, else skipped);
//! - the userspace proxy's first sync (1,000 listeners) and a one-endpoint change;
//! - request/response rate and latency percentiles of a small fixed-size exchange over
//!   kept-alive connections, direct to the backend versus through a ClusterIP: userspace on
//!   loopback; nftables between two network namespaces.
//!
//! Run with `cargo bench -p kedge-net --bench proxy`. Bounded: each load run stops after
//! `LOAD_TIME` or `MAX_REQUESTS`; every exchange waits at most `IO_TIMEOUT`; helper
//! processes exit on their own after `HELPER_LIFETIME`.

use std::net::{Ipv4Addr, SocketAddrV4};
use std::process::{Child, Command, Stdio};
use std::sync::Arc;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::time::{Duration, Instant};

use kedge_net::model::{ProxyConfig, ServiceTable};
use kedge_net::nft::{NftProxy, render};
use kedge_net::userspace::{UserspaceOptions, UserspaceProxy};
use serde_json::{Value, json};
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::{TcpListener, TcpStream};

const SERVICES: usize = 1_000;
const ENDPOINTS: usize = 10;
const ROUNDS: usize = 5;
const LOAD_TIME: Duration = Duration::from_secs(3);
const MAX_REQUESTS: usize = 300_000;
const IO_TIMEOUT: Duration = Duration::from_secs(2);
const CLIENTS: usize = 8;
const HELPER_LIFETIME: Duration = Duration::from_secs(60);
/// An HTTP/1.1-sized exchange: a short GET and a small response, fixed lengths so the
/// client knows where a response ends without parsing.
const REQUEST: &[u8] = b"GET /healthz HTTP/1.1\r\nHost: web\r\nUser-Agent: bench\r\n\r\n";
const RESPONSE_LEN: usize = 128;
const ROLE: &str = "KEDGE_PROXY_BENCH_ROLE";

/// `SERVICES` ClusterIP Services, one TCP port each, `ENDPOINTS` ready endpoints each;
/// `cluster_ip` chooses the address of Service `i`, `bump` moves one endpoint.
fn fixture(cluster_ip: impl Fn(usize) -> Ipv4Addr, port: u16, bump: bool) -> ServiceTable {
    let (services, slices) = fixture_json(cluster_ip, port, bump);
    ServiceTable::build(&services, &slices)
}

fn fixture_json(
    cluster_ip: impl Fn(usize) -> Ipv4Addr,
    port: u16,
    bump: bool,
) -> (Vec<Value>, Vec<Value>) {
    let mut services = Vec::with_capacity(SERVICES);
    let mut slices = Vec::with_capacity(SERVICES);
    for i in 0..SERVICES {
        let name = format!("svc-{i}");
        services.push(json!({
            "metadata": {"name": name, "namespace": "bench"},
            "spec": {"clusterIP": cluster_ip(i).to_string(),
                     "ports": [{"name": "http", "port": port}]}
        }));
        let endpoints: Vec<Value> = (0..ENDPOINTS)
            .map(|e| {
                let n =
                    i * ENDPOINTS + e + usize::from(bump && i == SERVICES / 2 && e == 0) * 60_000;
                json!({"addresses": [format!("10.42.{}.{}", n / 250 % 256, n % 250 + 1)],
                       "nodeName": "n1"})
            })
            .collect();
        slices.push(json!({
            "metadata": {"name": format!("{name}-abc"), "namespace": "bench",
                         "labels": {"kubernetes.io/service-name": name}},
            "addressType": "IPv4",
            "ports": [{"name": "http", "port": 8080}],
            "endpoints": endpoints
        }));
    }
    (services, slices)
}

fn cfg() -> ProxyConfig {
    ProxyConfig {
        node_name: "n1".into(),
        node_ips: vec![Ipv4Addr::new(192, 168, 1, 10)],
        cluster_cidr: (Ipv4Addr::new(10, 42, 0, 0), 16),
        service_lb: false,
    }
}

fn median(mut samples: Vec<Duration>) -> Duration {
    samples.sort();
    samples[samples.len() / 2]
}

fn ms(d: Duration) -> String {
    format!("{:.2} ms", d.as_secs_f64() * 1e3)
}

fn us(d: Duration) -> String {
    format!("{:.0} µs", d.as_secs_f64() * 1e6)
}

fn is_root_with(tools: &[&str]) -> Option<String> {
    let uid = Command::new("id").arg("-u").output().ok()?;
    if String::from_utf8_lossy(&uid.stdout).trim() != "0" {
        return Some("not root".into());
    }
    for t in tools {
        let ok = Command::new("sh")
            .args(["-c", &format!("command -v {t}")])
            .stdout(Stdio::null())
            .status()
            .is_ok_and(|s| s.success());
        if !ok {
            return Some(format!("`{t}` missing"));
        }
    }
    None
}

/// A network namespace of the bench, deleted on drop.
struct Netns(String);

impl Netns {
    fn new(tag: &str) -> Netns {
        let name = format!("kb{}-{tag}", std::process::id());
        run("ip", &["netns", "add", &name]);
        let ns = Netns(name);
        ns.ip(&["link", "set", "lo", "up"]);
        ns
    }
    fn ip(&self, args: &[&str]) {
        let mut all = vec!["-n", &self.0];
        all.extend_from_slice(args);
        run("ip", &all);
    }
}

impl Drop for Netns {
    fn drop(&mut self) {
        let _ = Command::new("ip").args(["netns", "del", &self.0]).status();
    }
}

fn run(program: &str, args: &[&str]) {
    let out = Command::new(program).args(args).output().expect(program);
    assert!(
        out.status.success(),
        "{program} {args:?}: {}",
        String::from_utf8_lossy(&out.stderr)
    );
}

/// A helper process of this bench binary inside `ns`; killed on drop.
struct Helper(Child);

impl Helper {
    fn spawn(ns: &Netns, role: &str) -> Helper {
        let child = Command::new("ip")
            .args(["netns", "exec", &ns.0])
            .arg(std::env::current_exe().unwrap())
            .env(ROLE, role)
            .stdout(Stdio::piped())
            .spawn()
            .unwrap();
        Helper(child)
    }
    fn first_line(&mut self) -> String {
        use std::io::BufRead;
        let out = self.0.stdout.take().unwrap();
        std::io::BufReader::new(out)
            .lines()
            .next()
            .and_then(Result::ok)
            .unwrap_or_default()
    }
}

impl Drop for Helper {
    fn drop(&mut self) {
        let _ = self.0.kill();
        let _ = self.0.wait();
    }
}

/// The backend: answers every `REQUEST` with `RESPONSE_LEN` bytes, connections kept alive.
async fn serve(listener: TcpListener) {
    let mut conns = tokio::task::JoinSet::new();
    while let Ok((mut s, _)) = listener.accept().await {
        let _ = s.set_nodelay(true);
        conns.spawn(async move {
            let mut buf = vec![0u8; REQUEST.len()];
            let response = vec![b'x'; RESPONSE_LEN];
            while s.read_exact(&mut buf).await.is_ok() {
                if s.write_all(&response).await.is_err() {
                    break;
                }
            }
        });
    }
}

struct Figures {
    requests: usize,
    elapsed: Duration,
    p50: Duration,
    p99: Duration,
    errors: usize,
}

impl Figures {
    fn line(&self) -> String {
        format!(
            "{:>9.0} req/s  p50 {:>6}  p99 {:>6}  ({} requests, {} errors)",
            self.requests as f64 / self.elapsed.as_secs_f64(),
            us(self.p50),
            us(self.p99),
            self.requests,
            self.errors
        )
    }
}

/// `CLIENTS` kept-alive connections doing request/response back to back.
async fn load(addr: SocketAddrV4) -> Figures {
    let count = Arc::new(AtomicUsize::new(0));
    let start = Instant::now();
    let mut tasks = tokio::task::JoinSet::new();
    for _ in 0..CLIENTS {
        let count = count.clone();
        tasks.spawn(async move {
            let mut samples = Vec::new();
            let mut errors = 0;
            let Ok(Ok(mut s)) = tokio::time::timeout(IO_TIMEOUT, TcpStream::connect(addr)).await
            else {
                return (samples, 1);
            };
            let _ = s.set_nodelay(true);
            let mut buf = vec![0u8; RESPONSE_LEN];
            while start.elapsed() < LOAD_TIME
                && count.fetch_add(1, Ordering::Relaxed) < MAX_REQUESTS
            {
                let t = Instant::now();
                let exchange = async {
                    s.write_all(REQUEST).await?;
                    s.read_exact(&mut buf).await
                };
                match tokio::time::timeout(IO_TIMEOUT, exchange).await {
                    Ok(Ok(_)) => samples.push(t.elapsed()),
                    _ => {
                        errors += 1;
                        break;
                    }
                }
            }
            (samples, errors)
        });
    }
    let mut all = Vec::new();
    let mut errors = 0;
    while let Some(r) = tasks.join_next().await {
        let (s, e) = r.unwrap();
        all.extend(s);
        errors += e;
    }
    let elapsed = start.elapsed();
    all.sort();
    let pct = |p: f64| {
        all.get(((all.len().max(1) - 1) as f64 * p).round() as usize)
            .copied()
            .unwrap_or_default()
    };
    Figures {
        requests: all.len(),
        elapsed,
        p50: pct(0.5),
        p99: pct(0.99),
        errors,
    }
}

/// Helper roles: `serve,<addr>` prints READY then serves; `load,<addr>` prints one line.
fn helper(role: &str) {
    std::thread::spawn(|| {
        std::thread::sleep(HELPER_LIFETIME);
        std::process::exit(0);
    });
    let rt = tokio::runtime::Runtime::new().unwrap();
    let (kind, addr) = role.split_once(',').expect("role,addr");
    let addr: SocketAddrV4 = addr.parse().unwrap();
    rt.block_on(async {
        match kind {
            "serve" => {
                let l = TcpListener::bind(addr).await.unwrap();
                println!("READY");
                serve(l).await;
            }
            "load" => println!("{}", load(addr).await.line()),
            _ => panic!("bad role {role}"),
        }
    });
}

fn main() {
    if let Ok(role) = std::env::var(ROLE) {
        return helper(&role);
    }
    let rt = tokio::runtime::Runtime::new().unwrap();
    let cluster_ip = |i: usize| Ipv4Addr::new(10, 43, (i / 250) as u8, (i % 250 + 1) as u8);

    // Pure work: table build and ruleset text.
    let mut build = Vec::new();
    let mut rendered = Vec::new();
    let mut text = String::new();
    for _ in 0..ROUNDS {
        let (services, slices) = fixture_json(cluster_ip, 80, false);
        let t = Instant::now();
        let table = ServiceTable::build(&services, &slices);
        build.push(t.elapsed());
        let t = Instant::now();
        text = render(&table, &cfg());
        rendered.push(t.elapsed());
    }
    println!("{SERVICES} services x {ENDPOINTS} endpoints");
    println!("  ServiceTable::build        {}", ms(median(build)));
    println!(
        "  nft::render                {}  ({} lines, {} KiB)",
        ms(median(rendered)),
        text.lines().count(),
        text.len() / 1024
    );

    let why_not = is_root_with(&["ip", "nft"]);
    if let Some(why) = &why_not {
        println!("  nft apply: skipped ({why})");
    } else {
        let ns = Netns::new("apply");
        let proxy = NftProxy::in_netns(cfg(), &ns.0);
        let a = fixture(cluster_ip, 80, false);
        let b = fixture(cluster_ip, 80, true);
        let t = Instant::now();
        rt.block_on(proxy.sync(&a)).unwrap();
        println!("  nft first sync (full)      {}", ms(t.elapsed()));
        let mut inc = Vec::new();
        for i in 0..ROUNDS * 2 {
            let next = if i % 2 == 0 { &b } else { &a };
            let t = Instant::now();
            rt.block_on(proxy.sync(next)).unwrap();
            inc.push(t.elapsed());
        }
        println!("  nft one-endpoint change    {}", ms(median(inc)));
        let t = Instant::now();
        rt.block_on(proxy.sync(&a)).unwrap();
        rt.block_on(proxy.sync(&a)).unwrap();
        println!("  nft no-op sync             {}", ms(t.elapsed() / 2));
        rt.block_on(proxy.shutdown());
    }

    // Userspace: 1,000 listeners on loopback addresses standing in for ClusterIPs.
    let loop_ip = |i: usize| Ipv4Addr::new(127, 88, (i / 250) as u8, (i % 250 + 1) as u8);
    let port = 18080;
    let proxy = UserspaceProxy::new(cfg(), UserspaceOptions::default());
    let a = fixture(loop_ip, port, false);
    let b = fixture(loop_ip, port, true);
    let t = Instant::now();
    let stats = rt.block_on(proxy.sync(&a)).unwrap();
    println!(
        "  userspace first sync       {}  ({} listeners, {} failed)",
        ms(t.elapsed()),
        stats.added,
        stats.failed
    );
    let mut inc = Vec::new();
    for i in 0..ROUNDS * 2 {
        let next = if i % 2 == 0 { &b } else { &a };
        let t = Instant::now();
        rt.block_on(proxy.sync(next)).unwrap();
        inc.push(t.elapsed());
    }
    println!("  userspace one-endpoint change {}", ms(median(inc)));
    rt.block_on(proxy.shutdown());

    // Latency: userspace on loopback.
    println!("request/response, {CLIENTS} kept-alive connections, {LOAD_TIME:?} each");
    rt.block_on(async {
        let l = TcpListener::bind("127.0.0.1:0").await.unwrap();
        let std::net::SocketAddr::V4(backend) = l.local_addr().unwrap() else {
            unreachable!()
        };
        let server = tokio::spawn(serve(l));
        let vip = SocketAddrV4::new(Ipv4Addr::new(127, 88, 200, 1), port);
        let table = ServiceTable::build(
            &[json!({"metadata": {"name": "web", "namespace": "bench"},
                     "spec": {"clusterIP": vip.ip().to_string(), "ports": [{"name": "http", "port": port}]}})],
            &[json!({"metadata": {"name": "web-abc", "namespace": "bench",
                                  "labels": {"kubernetes.io/service-name": "web"}},
                     "addressType": "IPv4", "ports": [{"name": "http", "port": backend.port()}],
                     "endpoints": [{"addresses": ["127.0.0.1"]}]})],
        );
        let proxy = UserspaceProxy::new(cfg(), UserspaceOptions::default());
        proxy.sync(&table).await.unwrap();
        println!("  loopback direct            {}", load(backend).await.line());
        println!("  userspace via ClusterIP    {}", load(vip).await.line());
        proxy.shutdown().await;
        server.abort();
    });

    // Latency: nftables between a "node" and a "pod" namespace.
    if let Some(why) = why_not {
        println!("  nft latency: skipped ({why})");
        return;
    }
    let node = Netns::new("node");
    let pod = Netns::new("pod");
    node.ip(&[
        "link", "add", "p1", "type", "veth", "peer", "name", "eth0", "netns", &pod.0,
    ]);
    node.ip(&["addr", "add", "10.42.1.1/24", "dev", "p1"]);
    node.ip(&["link", "set", "p1", "up"]);
    node.ip(&["route", "add", "10.43.0.0/16", "dev", "p1"]);
    pod.ip(&["addr", "add", "10.42.1.2/24", "dev", "eth0"]);
    pod.ip(&["link", "set", "eth0", "up"]);
    pod.ip(&["route", "add", "default", "via", "10.42.1.1"]);
    let mut server = Helper::spawn(&pod, "serve,0.0.0.0:8080");
    assert_eq!(server.first_line(), "READY");
    let table = ServiceTable::build(
        &[json!({"metadata": {"name": "web", "namespace": "bench"},
                 "spec": {"clusterIP": "10.43.0.10", "ports": [{"name": "http", "port": 80}]}})],
        &[json!({"metadata": {"name": "web-abc", "namespace": "bench",
                              "labels": {"kubernetes.io/service-name": "web"}},
                 "addressType": "IPv4", "ports": [{"name": "http", "port": 8080}],
                 "endpoints": [{"addresses": ["10.42.1.2"]}]})],
    );
    let proxy = NftProxy::in_netns(cfg(), &node.0);
    rt.block_on(proxy.sync(&table)).unwrap();
    let direct = Helper::spawn(&node, "load,10.42.1.2:8080").first_line();
    println!("  netns direct (veth)        {direct}");
    let via = Helper::spawn(&node, "load,10.43.0.10:80").first_line();
    println!("  nft via ClusterIP          {via}");
    rt.block_on(proxy.shutdown());
    drop(server);
}
