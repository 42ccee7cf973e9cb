//! `kubectl port-forward` throughput (prints, asserts only that bytes arrive):
//! a TCP server on loopback sends (or receives) 128 MiB directly, through the tunnel alone
//! (server → QUIC stream → agent → TCP), and through the whole forward path — kubectl →
//! SPDY in WebSocket (or on an upgraded connection) over TLS → API server → QUIC tunnel
//! stream → agent → TCP — with an in-process server and agent and the real kubectl.
//!
//! Run: `cargo bench -p kedge --bench portforward`

mod common;

use std::io::{BufRead as _, Read as _, Write as _};
use std::net::{TcpListener, TcpStream};
use std::process::{Command, Stdio};
use std::time::{Duration, Instant};

use kedge::agent::{self, AgentConfig};
use kedge::core::resources::by_kind;
use kedge::server;
use tokio_util::sync::CancellationToken;

/// Bytes per transfer: large enough to dwarf connection setup, small enough to stay quick.
const SIZE: usize = 128 << 20;
const RUNS: usize = 3;
const CHUNK: usize = 64 * 1024;

fn main() {
    let rt = tokio::runtime::Runtime::new().unwrap();
    rt.block_on(run());
}

/// A server that, per connection, sends SIZE bytes ("down") or reads until EOF and answers
/// with the count ("up"), chosen by the first byte the client sends.
fn serve(listener: TcpListener) {
    for conn in listener.incoming() {
        let Ok(mut s) = conn else { continue };
        std::thread::spawn(move || {
            let mut mode = [0u8; 1];
            if s.read_exact(&mut mode).is_err() {
                return;
            }
            if mode[0] == b'd' {
                let buf = vec![7u8; CHUNK];
                let mut left = SIZE;
                while left > 0 {
                    let n = left.min(CHUNK);
                    if s.write_all(&buf[..n]).is_err() {
                        return;
                    }
                    left -= n;
                }
            } else {
                let mut buf = vec![0u8; CHUNK];
                let mut total = 0u64;
                while let Ok(n) = s.read(&mut buf) {
                    if n == 0 {
                        break;
                    }
                    total += n as u64;
                }
                let _ = s.write_all(&total.to_be_bytes());
            }
        });
    }
}

/// MB/s of one download and one upload of SIZE bytes via `port`.
fn measure(port: u16) -> (f64, f64) {
    let mbps = |d: Duration| SIZE as f64 / 1e6 / d.as_secs_f64();
    let mut s = TcpStream::connect(("127.0.0.1", port)).unwrap();
    let start = Instant::now();
    s.write_all(b"d").unwrap();
    let mut buf = vec![0u8; CHUNK];
    let mut got = 0;
    while got < SIZE {
        let n = s.read(&mut buf).unwrap();
        assert!(n > 0, "connection closed after {got} bytes");
        got += n;
    }
    let down = mbps(start.elapsed());

    let mut s = TcpStream::connect(("127.0.0.1", port)).unwrap();
    let start = Instant::now();
    s.write_all(b"u").unwrap();
    let data = vec![9u8; CHUNK];
    let mut left = SIZE;
    while left > 0 {
        let n = left.min(CHUNK);
        s.write_all(&data[..n]).unwrap();
        left -= n;
    }
    s.shutdown(std::net::Shutdown::Write).unwrap();
    let mut count = [0u8; 8];
    s.read_exact(&mut count).unwrap();
    assert_eq!(u64::from_be_bytes(count), SIZE as u64);
    let up = mbps(start.elapsed());
    (down, up)
}

fn report(what: &str, runs: &[(f64, f64)]) {
    let median = |mut v: Vec<f64>| {
        v.sort_by(|a, b| a.total_cmp(b));
        v[v.len() / 2]
    };
    println!(
        "{what}: download {:.0} MB/s, upload {:.0} MB/s (median of {}, {} MiB each)",
        median(runs.iter().map(|r| r.0).collect()),
        median(runs.iter().map(|r| r.1).collect()),
        runs.len(),
        SIZE >> 20
    );
}

async fn run() {
    let listener = TcpListener::bind("127.0.0.1:0").unwrap();
    let target = listener.local_addr().unwrap().port();
    std::thread::spawn(move || serve(listener));

    let direct: Vec<_> = (0..RUNS).map(|_| measure(target)).collect();
    report("plain TCP on loopback", &direct);

    let dir = tempfile::tempdir().unwrap();
    let cancel = CancellationToken::new();
    let srv = server::start(
        common::server_config(dir.path().join("server")),
        cancel.clone(),
    )
    .await
    .unwrap();
    let _agent = agent::start(
        AgentConfig {
            server: srv.tunnel_addr.to_string(),
            join_token: Some(srv.join_token.clone()),
            node_name: "bench".into(),
            data_dir: dir.path().join("agent"),
            labels: vec![],
            taints: vec![],
            registries: Default::default(),
            image_store_max_bytes: 10 << 30,
            object_refresh: agent::OBJECT_REFRESH,
            eviction_hard: Default::default(),
            container_logs: Default::default(),
            metric_resolution: agent::METRIC_RESOLUTION,
            ensure_secret_pulled_images: false,
            // Timing the control path, not the pod network: pods on the node's network.
            network: kedge::agent::NetworkConfig {
                pod_network: kedge::agent::PodNetworkMode::Host,
                proxy_mode: kedge::agent::ProxyMode::None,
                cluster_dns: None,
                ..Default::default()
            },
        },
        cancel.clone(),
    )
    .await
    .unwrap();
    let kubectl = |args: &[&str]| {
        Command::new("kubectl")
            .arg("--kubeconfig")
            .arg(&srv.kubeconfig)
            .args(args)
            .stdin(Stdio::piped())
            .stdout(Stdio::piped())
            .stderr(Stdio::inherit())
            .spawn()
            .unwrap()
    };
    // A Wasm pod to forward "to": pods share the node's network, so its port-forward reaches
    // the bench's server on the node's loopback.
    let mut c = kubectl(&["create", "-f", "-"]);
    c.stdin
        .take()
        .unwrap()
        .write_all(
            br#"{"apiVersion":"v1","kind":"Pod","metadata":{"name":"pf"},
            "spec":{"containers":[{"name":"hello","image":"kedge.dev/samples/hello-wasm:v1"}]}}"#,
        )
        .unwrap();
    assert!(c.wait().unwrap().success());
    let pods = by_kind("v1", "Pod").unwrap();
    let start = Instant::now();
    while srv
        .api
        .get(pods, "default", "pf")
        .ok()
        .and_then(|p| p["status"]["phase"].as_str().map(str::to_owned))
        .as_deref()
        != Some("Running")
    {
        assert!(start.elapsed() < Duration::from_secs(60), "pod never ran");
        tokio::time::sleep(Duration::from_millis(20)).await;
    }

    // The tunnel alone: the server's stream to the agent (as the API server opens one per
    // forwarded connection), no kubectl, TLS or SPDY.
    let local_tunnel = {
        let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
        let port = listener.local_addr().unwrap().port();
        let nodes = srv.nodes.clone();
        let uid = srv.api.get(pods, "default", "pf").unwrap()["metadata"]["uid"]
            .as_str()
            .unwrap()
            .to_string();
        tokio::spawn(async move {
            while let Ok((mut client, _)) = listener.accept().await {
                let (nodes, uid) = (nodes.clone(), uid.clone());
                tokio::spawn(async move {
                    let req = http::Request::post(format!(
                        "/portForward/default/pf?port={target}&uid={uid}"
                    ))
                    .header("connection", "upgrade")
                    .header("upgrade", "kedge-tcp")
                    .body(axum::body::Body::empty())
                    .unwrap();
                    let mut resp = nodes.request("bench", req).await.unwrap();
                    assert_eq!(resp.status(), 101);
                    let io = hyper::upgrade::on(&mut resp).await.unwrap();
                    let mut io = hyper_util::rt::TokioIo::new(io);
                    let _ = tokio::io::copy_bidirectional_with_sizes(
                        &mut client,
                        &mut io,
                        1 << 16,
                        1 << 16,
                    )
                    .await;
                });
            }
        });
        port
    };
    let runs: Vec<_> = tokio::task::spawn_blocking(move || {
        (0..RUNS).map(|_| measure(local_tunnel)).collect::<Vec<_>>()
    })
    .await
    .unwrap();
    report("QUIC tunnel stream only (server -> agent -> TCP)", &runs);

    let local = TcpListener::bind("127.0.0.1:0")
        .unwrap()
        .local_addr()
        .unwrap()
        .port();
    for (what, env) in [
        ("kubectl port-forward (SPDY in WebSocket)", "true"),
        ("kubectl port-forward (SPDY upgrade)", "false"),
    ] {
        let mut pf = Command::new("kubectl")
            .env("KUBECTL_PORT_FORWARD_WEBSOCKETS", env)
            .arg("--kubeconfig")
            .arg(&srv.kubeconfig)
            .args(["port-forward", "pod/pf", &format!("{local}:{target}")])
            .stdout(Stdio::piped())
            .stderr(Stdio::inherit())
            .spawn()
            .unwrap();
        let mut out = std::io::BufReader::new(pf.stdout.take().unwrap());
        let mut line = String::new();
        out.read_line(&mut line).unwrap();
        assert!(line.contains("Forwarding from"), "{line}");
        std::thread::spawn(move || std::io::copy(&mut out, &mut std::io::sink()));
        let runs: Vec<_> = tokio::task::spawn_blocking(move || {
            (0..RUNS).map(|_| measure(local)).collect::<Vec<_>>()
        })
        .await
        .unwrap();
        report(what, &runs);
        let _ = pf.kill();
        let _ = pf.wait();
    }
    cancel.cancel();
}
