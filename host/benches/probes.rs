//! What probes cost and how fast readiness reaches a Service (prints, asserts nothing):
//! - the node agent's CPU (a `kedge agent` process, its own time plus its children's: runc)
//!   with `PODS` pods and no probes, then with a readiness probe every second on each pod:
//!   httpGet and exec, on Wasm pods (the sample app serving HTTP) and, as root with runc, on
//!   busybox pods (`KEDGE_BENCH_OCI_PODS`, default 50: runc exec costs a process per probe);
//! - readiness flip → Endpoints: a pod's app turns unready (and ready again) `FLIPS` times;
//!   the time from the flip to its Service's Endpoints moving the pod (p50, p99), with
//!   `periodSeconds: 1`, `failureThreshold: 1` (the probe period bounds it).
//!
//! Run: `cargo bench -p kedge --bench probes` (`KEDGE_BENCH_PODS=N`, default 200).

mod common;

use std::io::{Read as _, Write as _};
use std::process::{Child, Command, Stdio};
use std::sync::Arc;
use std::time::{Duration, Instant};

use kedge::api::ops::{Api, ListOptions, WriteOptions};
use kedge::core::resources::by_kind;
use kedge::server;
use serde_json::{Value, json};
use tokio_util::sync::CancellationToken;

const KEDGE: &str = env!("CARGO_BIN_EXE_kedge");
const WINDOW: Duration = Duration::from_secs(20);
const FLIPS: usize = 20;

fn env_n(key: &str, default: usize) -> usize {
    std::env::var(key)
        .ok()
        .and_then(|v| v.parse().ok())
        .unwrap_or(default)
}

/// CPU seconds of process `pid` and its waited-for children.
fn cpu_seconds(pid: u32) -> f64 {
    let stat = std::fs::read_to_string(format!("/proc/{pid}/stat")).unwrap_or_default();
    let Some(close) = stat.rfind(')') else {
        return 0.0;
    };
    let f: Vec<&str> = stat[close + 2..].split_whitespace().collect();
    let ticks = 100.0;
    (11..=14)
        .filter_map(|i| f.get(i)?.parse::<f64>().ok())
        .sum::<f64>()
        / ticks
}

/// The container of pod number `i`.
type PodMaker<'a> = Box<dyn Fn(usize) -> Value + 'a>;

struct Agent(Child);

impl Drop for Agent {
    fn drop(&mut self) {
        let _ = Command::new("kill")
            .args(["-TERM", &self.0.id().to_string()])
            .status();
        let _ = self.0.wait();
    }
}

fn main() {
    let rt = tokio::runtime::Builder::new_multi_thread()
        .worker_threads(2)
        .enable_all()
        .build()
        .unwrap();
    rt.block_on(run());
}

fn percentile(v: &mut [Duration], p: f64) -> Duration {
    v.sort();
    v[((v.len() as f64 - 1.0) * p).round() as usize]
}

fn http(port: u16, path: &str) -> bool {
    let Ok(mut s) = std::net::TcpStream::connect(("127.0.0.1", port)) else {
        return false;
    };
    let _ = s.set_read_timeout(Some(Duration::from_secs(2)));
    let _ = write!(s, "GET {path} HTTP/1.0\r\n\r\n");
    let mut out = String::new();
    let _ = s.read_to_string(&mut out);
    out.starts_with("HTTP/1.0 200")
}

async fn run() {
    let pods_n = env_n("KEDGE_BENCH_PODS", 200);
    let dir = tempfile::tempdir().unwrap();
    let cancel = CancellationToken::new();
    let srv = server::start(
        common::server_config(dir.path().join("server")),
        cancel.clone(),
    )
    .await
    .unwrap();
    let registry = oci_registry(dir.path());
    let mut args = vec![
        "agent".to_string(),
        "--server".into(),
        srv.tunnel_addr.to_string(),
        "--token".into(),
        srv.join_token.clone(),
        "--name".into(),
        "probes".into(),
        "--data-dir".into(),
        dir.path().join("agent").display().to_string(),
        // The probes are timed against ports on the node's loopback, as before the pod
        // network: pods stay on the node's network, and no proxy or DNS runs beside them.
        "--pod-network".into(),
        "host".into(),
        "--proxy-mode".into(),
        "none".into(),
        "--cluster-dns".into(),
        String::new(),
    ];
    if let Some((_, yaml)) = &registry {
        args.push("--registries-config".into());
        args.push(yaml.display().to_string());
    }
    let agent = Agent(
        Command::new(KEDGE)
            .args(&args)
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            .spawn()
            .unwrap(),
    );
    let api = srv.api.clone();
    let nodes = by_kind("v1", "Node").unwrap();
    while api.get(nodes, "", "probes").is_err() {
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    let pid = agent.0.id();
    println!(
        "agent CPU, % of one core over {}s (pods all Ready first):",
        WINDOW.as_secs()
    );
    let wasm = |i: usize, probe: Value| {
        let port = 20000 + i;
        let mut c = json!({"name": "hello", "image": "kedge.dev/samples/hello-wasm:v1",
            "env": [{"name": "HELLO_LISTEN", "value": port.to_string()}]});
        if !probe.is_null() {
            c["readinessProbe"] = probe;
        }
        c
    };
    let http_probe =
        |i: usize| json!({"httpGet": {"path": "/healthz", "port": 20000 + i}, "periodSeconds": 1});
    let exec_probe = json!({"exec": {"command": ["hello", "--once"]}, "periodSeconds": 1});
    let cases: Vec<(&str, usize, PodMaker)> = vec![
        (
            "Wasm, no probes",
            pods_n,
            Box::new(move |i| wasm(i, Value::Null)),
        ),
        (
            "Wasm, httpGet every 1s",
            pods_n,
            Box::new(move |i| wasm(i, http_probe(i))),
        ),
        (
            "Wasm, exec every 1s",
            pods_n,
            Box::new(move |i| wasm(i, exec_probe.clone())),
        ),
    ];
    for (label, n, container) in &cases {
        measure(&api, pid, label, *n, container).await;
    }
    if let Some((image, _)) = &registry {
        let n = env_n("KEDGE_BENCH_OCI_PODS", 50);
        let image = image.clone();
        let busybox = move |i: usize, probe: Value| {
            let port = 21000 + i;
            let script = format!(
                "mkdir -p /www && echo ok > /www/index.html && exec httpd -f -p {port} -h /www"
            );
            let mut c = json!({"name": "web", "image": image, "args": ["sh", "-c", script]});
            if !probe.is_null() {
                c["readinessProbe"] = probe;
            }
            c
        };
        let with = |probe: fn(usize) -> Value| -> PodMaker {
            let busybox = busybox.clone();
            Box::new(move |i| busybox(i, probe(i)))
        };
        let oci: Vec<(&str, PodMaker)> = vec![
            ("OCI busybox, no probes", with(|_| Value::Null)),
            (
                "OCI busybox, httpGet every 1s",
                with(|i| json!({"httpGet": {"path": "/", "port": 21000 + i}, "periodSeconds": 1})),
            ),
            (
                "OCI busybox, exec every 1s",
                with(|_| json!({"exec": {"command": ["true"]}, "periodSeconds": 1})),
            ),
        ];
        for (label, container) in &oci {
            measure(&api, pid, label, n, container).await;
        }
    } else {
        println!("  OCI: skipped (needs root, runc and docker-registry)");
    }
    flip_latency(&api).await;
    drop(agent);
    cancel.cancel();
}

/// Creates `n` pods from `container`, waits for all of them Ready, measures the agent's CPU
/// over the window, and deletes them.
async fn measure(
    api: &Arc<Api>,
    pid: u32,
    label: &str,
    n: usize,
    container: &dyn Fn(usize) -> Value,
) {
    let pods = by_kind("v1", "Pod").unwrap();
    let w = WriteOptions::default();
    for i in 0..n {
        api.create(
            pods,
            "default",
            json!({"metadata": {"name": format!("p{i}"), "labels": {"bench": "probes"}},
                "spec": {"nodeName": "probes", "terminationGracePeriodSeconds": 1,
                    "containers": [container(i)]}}),
            &w,
        )
        .unwrap();
    }
    let opts = ListOptions {
        labels: kedge::core::selector::Selector::parse("bench=probes").unwrap(),
        ..Default::default()
    };
    let started = Instant::now();
    loop {
        let list = api.list(pods, "default", &opts).unwrap();
        let ready = list["items"]
            .as_array()
            .unwrap()
            .iter()
            .filter(|p| p["status"]["containerStatuses"][0]["ready"] == true)
            .count();
        if ready == n {
            break;
        }
        if started.elapsed() > Duration::from_secs(240) {
            println!("  {label}: only {ready}/{n} pods Ready after 4 min; measured anyway");
            break;
        }
        tokio::time::sleep(Duration::from_millis(500)).await;
    }
    // Let the start-up settle, then measure.
    tokio::time::sleep(Duration::from_secs(3)).await;
    let (c0, t0) = (cpu_seconds(pid), Instant::now());
    tokio::time::sleep(WINDOW).await;
    let cpu = (cpu_seconds(pid) - c0) / t0.elapsed().as_secs_f64() * 100.0;
    println!("  {label}, {n} pods: {cpu:.1} %");
    for i in 0..n {
        let _ = api.delete(
            pods,
            "default",
            &format!("p{i}"),
            &kedge::api::ops::DeleteOptions::default(),
        );
    }
    let gone = Instant::now();
    while api.list(pods, "default", &opts).unwrap()["items"]
        .as_array()
        .is_some_and(|a| !a.is_empty())
        && gone.elapsed() < Duration::from_secs(120)
    {
        tokio::time::sleep(Duration::from_millis(200)).await;
    }
}

/// Readiness flip → Endpoints, both ways, `FLIPS` times.
async fn flip_latency(api: &Arc<Api>) {
    let (pods, services, endpoints) = (
        by_kind("v1", "Pod").unwrap(),
        by_kind("v1", "Service").unwrap(),
        by_kind("v1", "Endpoints").unwrap(),
    );
    let w = WriteOptions::default();
    let port = 22000;
    api.create(
        services,
        "default",
        json!({"metadata": {"name": "flip"}, "spec": {"selector": {"app": "flip"},
            "ports": [{"port": 80, "targetPort": port}]}}),
        &w,
    )
    .unwrap();
    api.create(
        pods,
        "default",
        json!({"metadata": {"name": "flip", "labels": {"app": "flip"}},
            "spec": {"nodeName": "probes", "containers": [{"name": "hello",
                "image": "kedge.dev/samples/hello-wasm:v1",
                "env": [{"name": "HELLO_LISTEN", "value": port.to_string()}],
                "readinessProbe": {"httpGet": {"path": "/healthz", "port": port},
                    "periodSeconds": 1, "failureThreshold": 1}}]}}),
        &w,
    )
    .unwrap();
    let in_endpoints = |api: &Api| -> Option<bool> {
        let e = api.get(endpoints, "default", "flip").ok()?;
        let names = |key: &str| {
            e["subsets"]
                .as_array()
                .into_iter()
                .flatten()
                .flat_map(|s| s[key].as_array().cloned().unwrap_or_default())
                .any(|a| a["targetRef"]["name"] == "flip")
        };
        if names("addresses") {
            Some(true)
        } else if names("notReadyAddresses") {
            Some(false)
        } else {
            None
        }
    };
    let wait = |api: &Api, want: bool| {
        let started = Instant::now();
        loop {
            if in_endpoints(api) == Some(want) {
                return started.elapsed();
            }
            if started.elapsed() > Duration::from_secs(60) {
                panic!("the Endpoints never followed");
            }
            std::thread::sleep(Duration::from_millis(5));
        }
    };
    wait(api, true);
    let (mut out, mut back) = (Vec::new(), Vec::new());
    for _ in 0..FLIPS {
        assert!(http(port, "/ready/off"));
        out.push(wait(api, false));
        assert!(http(port, "/ready/on"));
        back.push(wait(api, true));
    }
    let ms = |d: Duration| format!("{:.0} ms", d.as_secs_f64() * 1e3);
    println!(
        "readiness flip → Endpoints (periodSeconds 1, {FLIPS} flips each way): \
         unready p50 {} p99 {}, ready again p50 {} p99 {}",
        ms(percentile(&mut out, 0.5)),
        ms(percentile(&mut out, 0.99)),
        ms(percentile(&mut back, 0.5)),
        ms(percentile(&mut back, 0.99)),
    );
}

/// A local registry with a busybox image (as root with runc and docker-registry), and its
/// registries.yaml.
fn oci_registry(dir: &std::path::Path) -> Option<(String, std::path::PathBuf)> {
    use kedge_registry::testing::{TestRegistry, TestRegistryOptions, busybox_image_layer};
    let root = Command::new("id")
        .arg("-u")
        .output()
        .map(|o| String::from_utf8_lossy(&o.stdout).trim() == "0")
        .unwrap_or(false);
    if !root || Command::new("runc").arg("--version").output().is_err() {
        return None;
    }
    kedge_registry::testing::registry_available().ok()?;
    let registry = TestRegistry::start(TestRegistryOptions { auth: false }).ok()?;
    let config = kedge_registry::OciConfig {
        cmd: vec!["sh".into()],
        env: vec!["PATH=/bin".into()],
        ..Default::default()
    };
    let push = std::thread::scope(|s| {
        s.spawn(|| {
            tokio::runtime::Runtime::new()
                .unwrap()
                .block_on(registry.push_oci_image(
                    "apps/busybox:v1",
                    &[busybox_image_layer().unwrap()],
                    &config,
                ))
        })
        .join()
        .unwrap()
    });
    push.ok()?;
    let host = registry.host();
    let yaml = dir.join("registries.yaml");
    std::fs::write(
        &yaml,
        format!(
            "configs:\n  \"{host}\":\n    tls:\n      ca_file: {}\n",
            registry.ca_file.display()
        ),
    )
    .ok()?;
    // The registry lives as long as the bench.
    std::mem::forget(registry);
    Some((format!("{host}/apps/busybox:v1"), yaml))
}
