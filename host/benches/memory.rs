//! Memory and body-parsing figures (prints, asserts nothing), against real `kedge server`
//! processes on loopback whose RSS is read from /proc:
//! - bytes held per stored byte: N small ConfigMaps, RSS idle and after one unpaginated list;
//! - watchers: 100 watchers from `resourceVersion=1` on an empty namespace, then on every
//!   ConfigMap (history of a ~600 KB ConfigMap written 60 times), first not reading, then
//!   reading everything; RSS before and after (peak sampled every 50 ms);
//! - a big pod's status writes: the largest pod the API accepts, its status written 300
//!   times; the store file's size and RSS, then after deleting the pod and restarting;
//! - body parsing: the slowest of a set of hostile and large JSON/YAML bodies at the size
//!   limit, parsed in this process;
//! - `kedge dev` start: process start → its node Ready, first on a fresh data dir (every
//!   built-in plugin compiled: Winch first, Cranelift in the background), then restarted on
//!   the same dir (plugins from the compile cache); RSS 20 s after the second start. Pods share
//!   the host network (`--pod-network host --proxy-mode none`), so the figure is the control
//!   plane's and the agent's, not CNI's.
//!
//! Run: `cargo bench -p kedge --bench memory` (`KEDGE_BENCH_CMS=20000` for fewer ConfigMaps;
//! `KEDGE_BENCH_ONLY=cms|watch|pod|bodies|dev` for one part).

use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::{Duration, Instant};

use http_body_util::BodyExt as _;
use kedge::kubeclient::KubeClient;
use serde_json::{Value, json};

const KEDGE: &str = env!("CARGO_BIN_EXE_kedge");

struct Server {
    child: Child,
    data: PathBuf,
    client: Option<Arc<KubeClient>>,
}

impl Drop for Server {
    fn drop(&mut self) {
        let _ = Command::new("kill")
            .args(["-TERM", &self.child.id().to_string()])
            .status();
        let _ = self.child.wait();
    }
}

/// Whether the server answers `/readyz` with 200 (every plugin started).
async fn readyz(c: &KubeClient) -> bool {
    matches!(
        c.request(http::Method::GET, "/readyz", "application/json", None)
            .await,
        Ok((200, _))
    )
}

fn free_port() -> u16 {
    let l = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
    l.local_addr().unwrap().port()
}

impl Server {
    /// `kedge <command> --data-dir <data> --listen 127.0.0.1:<port> <extra>`, output dropped.
    fn spawn(command: &str, data: &Path, port: u16, extra: &[&std::ffi::OsStr]) -> Server {
        let child = Command::new(KEDGE)
            .args([command, "--data-dir"])
            .arg(data)
            .args(["--listen", &format!("127.0.0.1:{port}")])
            .args(extra)
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            .spawn()
            .expect("kedge");
        Server {
            child,
            data: data.to_path_buf(),
            client: None,
        }
    }

    /// Polls (for up to 120 s) until the admin kubeconfig works and `done` holds; keeps that
    /// client.
    async fn wait_until(&mut self, what: &str, done: impl AsyncFn(&KubeClient) -> bool) {
        let kubeconfig = self.data.join("admin.kubeconfig");
        let deadline = Instant::now() + Duration::from_secs(120);
        loop {
            assert!(Instant::now() < deadline, "timed out waiting for {what}");
            if kubeconfig.exists()
                && let Ok(c) = KubeClient::from_kubeconfig(&kubeconfig)
                && done(&c).await
            {
                self.client = Some(Arc::new(c));
                return;
            }
            tokio::time::sleep(Duration::from_millis(20)).await;
        }
    }

    async fn start(data: &Path) -> Server {
        let cache = PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("../target/bench-plugin-cache");
        let mut server = Server::spawn(
            "server",
            data,
            free_port(),
            &["--plugin-cache-dir".as_ref(), cache.as_os_str()],
        );
        server.wait_until("the server", readyz).await;
        // Let the plugins' informers settle.
        tokio::time::sleep(Duration::from_secs(3)).await;
        server
    }

    fn client(&self) -> &Arc<KubeClient> {
        self.client.as_ref().expect("started")
    }

    fn rss_mb(&self) -> f64 {
        rss_mb(self.child.id())
    }

    fn stop(self) {
        drop(self);
    }

    async fn req(
        &self,
        method: http::Method,
        path: &str,
        ct: &str,
        body: Option<&Value>,
    ) -> (u16, Value) {
        self.client().request(method, path, ct, body).await.unwrap()
    }
}

fn rss_mb(pid: u32) -> f64 {
    std::fs::read_to_string(format!("/proc/{pid}/status"))
        .ok()
        .and_then(|s| {
            s.lines()
                .find(|l| l.starts_with("VmRSS:"))
                .and_then(|l| l.split_whitespace().nth(1))
                .and_then(|kb| kb.parse::<f64>().ok())
        })
        .map_or(0.0, |kb| kb / 1024.0)
}

fn file_mb(p: &Path) -> f64 {
    std::fs::metadata(p).map_or(0.0, |m| m.len() as f64 / 1e6)
}

async fn namespace(s: &Server, name: &str) {
    let (code, body) = s
        .req(
            http::Method::POST,
            "/api/v1/namespaces",
            "application/json",
            Some(&json!({"apiVersion": "v1", "kind": "Namespace", "metadata": {"name": name}})),
        )
        .await;
    assert!(code == 201 || code == 409, "{body}");
}

/// Samples the server's RSS every 50 ms while `work` runs; returns the peak.
async fn peak_while<F: std::future::Future<Output = T>, T>(pid: u32, work: F) -> (f64, T) {
    let peak = Arc::new(AtomicU64::new(0));
    let stop = tokio_util::sync::CancellationToken::new();
    let sampler = {
        let (peak, stop) = (peak.clone(), stop.clone());
        tokio::spawn(async move {
            while !stop.is_cancelled() {
                peak.fetch_max((rss_mb(pid) * 1000.0) as u64, Ordering::Relaxed);
                tokio::time::sleep(Duration::from_millis(50)).await;
            }
        })
    };
    let out = work.await;
    stop.cancel();
    let _ = sampler.await;
    (peak.load(Ordering::Relaxed) as f64 / 1000.0, out)
}

fn main() {
    let rt = tokio::runtime::Builder::new_multi_thread()
        .enable_all()
        .build()
        .unwrap();
    let only = std::env::var("KEDGE_BENCH_ONLY").ok();
    let parts = ["cms", "watch", "pod", "bodies", "dev"];
    if let Some(o) = &only {
        assert!(
            parts.contains(&o.as_str()),
            "KEDGE_BENCH_ONLY: one of {parts:?}"
        );
    }
    let run = |p: &str| only.as_deref().is_none_or(|o| o == p);
    if run("cms") {
        rt.block_on(config_maps());
    }
    if run("watch") {
        rt.block_on(watchers());
    }
    if run("pod") {
        rt.block_on(big_pod());
    }
    if run("bodies") {
        bodies();
    }
    if run("dev") {
        rt.block_on(dev_start());
    }
}

/// Starts `kedge dev` on `data` and returns it with the time from spawn to its node Ready —
/// Ready written by this run's agent: a node object whose resourceVersion is not `stale`
/// (the last one the previous run left) — and to `/readyz` ok (every plugin started).
async fn dev(data: &Path, port: u16, stale: Option<&str>) -> (Server, Duration, Duration) {
    let t0 = Instant::now();
    let mut server = Server::spawn(
        "dev",
        data,
        port,
        &[
            "--name",
            "bench-dev",
            "--pod-network",
            "host",
            "--proxy-mode",
            "none",
        ]
        .map(AsRef::as_ref),
    );
    server
        .wait_until("the dev node to be Ready", async |c| {
            let Ok((200, node)) = c
                .request(
                    http::Method::GET,
                    "/api/v1/nodes/bench-dev",
                    "application/json",
                    None,
                )
                .await
            else {
                return false;
            };
            let ready = node["status"]["conditions"].as_array().is_some_and(|cs| {
                cs.iter()
                    .any(|c| c["type"] == "Ready" && c["status"] == "True")
            });
            ready && node["metadata"]["resourceVersion"].as_str() != stale
        })
        .await;
    let took = t0.elapsed();
    server.wait_until("the dev server's /readyz", readyz).await;
    (server, took, t0.elapsed())
}

async fn dev_start() {
    let dir = tempfile::tempdir().unwrap();
    let port = free_port();
    let (first, cold, cold_ready) = dev(dir.path(), port, None).await;
    // Let the background optimisation finish before the restart, so the second start is
    // the cached one.
    tokio::time::sleep(Duration::from_secs(30)).await;
    let (_, node) = first
        .req(
            http::Method::GET,
            "/api/v1/nodes/bench-dev",
            "application/json",
            None,
        )
        .await;
    first.stop();
    let stale = node["metadata"]["resourceVersion"]
        .as_str()
        .map(String::from);
    let (second, warm, warm_ready) = dev(dir.path(), port, stale.as_deref()).await;
    tokio::time::sleep(Duration::from_secs(20)).await;
    println!(
        "kedge dev, start → node Ready / → every plugin started (/readyz): fresh data dir (plugins compiled) {:.2} s / {:.2} s, restart (plugins cached) {:.2} s / {:.2} s; RSS 20 s after the restart {:.1} MB",
        cold.as_secs_f64(),
        cold_ready.as_secs_f64(),
        warm.as_secs_f64(),
        warm_ready.as_secs_f64(),
        second.rss_mb()
    );
    second.stop();
}

async fn config_maps() {
    let n: usize = std::env::var("KEDGE_BENCH_CMS")
        .ok()
        .and_then(|v| v.parse().ok())
        .unwrap_or(91_000);
    let dir = tempfile::tempdir().unwrap();
    let s = Server::start(&dir.path().join("server")).await;
    let start = s.rss_mb();
    let clients = 32;
    let stored = Arc::new(AtomicU64::new(0));
    let t = Instant::now();
    let mut tasks = Vec::new();
    for c in 0..clients {
        let (client, stored) = (s.client().clone(), stored.clone());
        tasks.push(tokio::spawn(async move {
            let mut conn = client.connect().await.unwrap();
            for i in (c..n).step_by(clients) {
                let cm = json!({"apiVersion": "v1", "kind": "ConfigMap",
                    "metadata": {"name": format!("cm-{i}"), "namespace": "default", "labels": {"app": "load"}},
                    "data": {"key": format!("value-{i}"), "other": "x".repeat(200)}});
                let (code, body) = conn
                    .request(
                        http::Method::POST,
                        "/api/v1/namespaces/default/configmaps",
                        "application/json",
                        Some(&cm),
                    )
                    .await
                    .unwrap();
                assert_eq!(code, 201, "{body}");
                stored.fetch_add(serde_json::to_vec(&body).unwrap().len() as u64, Ordering::Relaxed);
            }
        }));
    }
    for t in tasks {
        t.await.unwrap();
    }
    let created = t.elapsed();
    tokio::time::sleep(Duration::from_secs(15)).await;
    let idle = s.rss_mb();
    let stored_mb = stored.load(Ordering::Relaxed) as f64 / 1e6;
    let (peak, len) = peak_while(s.child.id(), async {
        let mut conn = s.client().connect().await.unwrap();
        let resp = conn
            .send(
                http::Method::GET,
                "/api/v1/configmaps",
                "application/json",
                None,
            )
            .await
            .unwrap();
        resp.into_body().collect().await.unwrap().to_bytes().len()
    })
    .await;
    tokio::time::sleep(Duration::from_secs(15)).await;
    let after = s.rss_mb();
    println!(
        "bytes held per stored byte ({n} ConfigMaps, {stored_mb:.1} MB of JSON, created in {:.1} s):",
        created.as_secs_f64()
    );
    println!(
        "  RSS at start {start:.0} MB, idle after the creates {idle:.0} MB: {:.1} bytes per stored byte",
        (idle - start) / stored_mb
    );
    println!(
        "  one unpaginated list ({:.1} MB): peak {peak:.0} MB, {after:.0} MB 15 s later: {:.1} bytes per stored byte",
        len as f64 / 1e6,
        (after - start) / stored_mb
    );
    println!("  store file {:.0} MB", file_mb(&s.data.join("state.redb")));
    s.stop();
}

/// Opens `n` watches on `path`; `read` says whether each drains its stream until it has seen
/// revision `until`, or just holds it open.
async fn watch_all(
    s: &Server,
    path: &str,
    n: usize,
    read: Option<u64>,
) -> Vec<tokio::task::JoinHandle<u64>> {
    let mut out = Vec::new();
    for _ in 0..n {
        let client = s.client().clone();
        let path = path.to_string();
        out.push(tokio::spawn(async move {
            let mut conn = client.connect().await.unwrap();
            let resp = conn
                .send(http::Method::GET, &path, "application/json", None)
                .await
                .unwrap();
            let mut body = resp.into_body();
            let Some(until) = read else {
                // Hold the stream without reading: the server may not buffer for us.
                tokio::time::sleep(Duration::from_secs(3600)).await;
                return 0;
            };
            let mut bytes = 0u64;
            let mut tail = Vec::new();
            while let Some(frame) = body.frame().await {
                let Ok(frame) = frame else { break };
                if let Some(d) = frame.data_ref() {
                    bytes += d.len() as u64;
                    tail.extend_from_slice(d);
                    if tail.len() > 256 {
                        tail.drain(..tail.len() - 256);
                    }
                    let needle = format!("\"resourceVersion\":\"{until}\"");
                    if String::from_utf8_lossy(&tail).contains(&needle) {
                        break;
                    }
                }
            }
            bytes
        }));
    }
    out
}

/// 100 watchers on `path` that never read: the server's RSS peak over 10 s.
async fn stalled(s: &Server, path: &str, what: &str) {
    let base = s.rss_mb();
    let (peak, held) = peak_while(s.child.id(), async {
        let held = watch_all(s, path, 100, None).await;
        tokio::time::sleep(Duration::from_secs(10)).await;
        held
    })
    .await;
    println!(
        "  100 watchers {what}: peak {peak:.0} MB (+{:.0} MB)",
        peak - base
    );
    for h in held {
        h.abort();
    }
    tokio::time::sleep(Duration::from_secs(5)).await;
}

/// 100 watchers on `path` reading until they have seen revision `until`: the RSS peak.
async fn reading(s: &Server, path: &str, until: u64, what: &str) {
    let base = s.rss_mb();
    let t = Instant::now();
    let (peak, bytes) = peak_while(s.child.id(), async {
        let mut total = 0;
        for h in watch_all(s, path, 100, Some(until)).await {
            total += h.await.unwrap();
        }
        total
    })
    .await;
    println!(
        "  100 watchers {what}, reading it all ({:.0} MB in {:.1} s): peak {peak:.0} MB (+{:.0} MB)",
        bytes as f64 / 1e6,
        t.elapsed().as_secs_f64(),
        peak - base
    );
}

async fn watchers() {
    let dir = tempfile::tempdir().unwrap();
    let s = Server::start(&dir.path().join("server")).await;
    namespace(&s, "busy").await;
    namespace(&s, "quiet").await;
    let data: serde_json::Map<String, Value> = (0..25_000)
        .map(|i| (format!("key-{i:05}"), json!(format!("value {i}"))))
        .collect();
    let mut cm = json!({"apiVersion": "v1", "kind": "ConfigMap",
        "metadata": {"name": "big", "namespace": "busy"}, "data": data});
    let size = serde_json::to_vec(&cm).unwrap().len();
    let mut last = 0;
    for i in 0..60 {
        cm["data"]["key-00000"] = json!(format!("update {i}"));
        let (code, body) = if i == 0 {
            s.req(
                http::Method::POST,
                "/api/v1/namespaces/busy/configmaps",
                "application/json",
                Some(&cm),
            )
            .await
        } else {
            s.req(
                http::Method::PUT,
                "/api/v1/namespaces/busy/configmaps/big",
                "application/json",
                Some(&cm),
            )
            .await
        };
        assert!(code == 200 || code == 201, "{body}");
        last = body["metadata"]["resourceVersion"]
            .as_str()
            .unwrap()
            .parse()
            .unwrap();
        cm["metadata"]["resourceVersion"] = json!(null);
    }
    tokio::time::sleep(Duration::from_secs(10)).await;
    let base = s.rss_mb();
    println!(
        "watchers (history: a {:.0} KB ConfigMap written 60 times, revision {last}):",
        size as f64 / 1e3
    );
    println!("  RSS before {base:.0} MB");

    stalled(
        &s,
        "/api/v1/namespaces/quiet/configmaps?watch=1&resourceVersion=1",
        "from resourceVersion=1 on an empty namespace",
    )
    .await;
    let every = "/api/v1/configmaps?watch=1&resourceVersion=1";
    stalled(
        &s,
        every,
        "from resourceVersion=1 on every ConfigMap, not reading",
    )
    .await;
    reading(&s, every, last, "from resourceVersion=1 on every ConfigMap").await;
    tokio::time::sleep(Duration::from_secs(15)).await;
    println!("  15 s after they left: {:.0} MB", s.rss_mb());

    // The everyday case: many small objects. 500 ConfigMaps of ~2 KB, each written 10 times.
    namespace(&s, "small").await;
    // Watches start just before these writes: the big ConfigMap's history has pushed revision
    // 1 out of the log by now (a watch from there gets 410).
    let before_small = last;
    let mut conn = s.client().connect().await.unwrap();
    for round in 0..10 {
        for i in 0..500 {
            let cm = json!({"apiVersion": "v1", "kind": "ConfigMap",
                "metadata": {"name": format!("cm-{i}"), "namespace": "small"},
                "data": {"round": round.to_string(), "text": "x".repeat(2000)}});
            let (method, path) = if round == 0 {
                (
                    http::Method::POST,
                    "/api/v1/namespaces/small/configmaps".to_string(),
                )
            } else {
                (
                    http::Method::PUT,
                    format!("/api/v1/namespaces/small/configmaps/cm-{i}"),
                )
            };
            let (code, body) = conn
                .request(method, &path, "application/json", Some(&cm))
                .await
                .unwrap();
            assert!(code == 200 || code == 201, "{body}");
            last = body["metadata"]["resourceVersion"]
                .as_str()
                .unwrap()
                .parse()
                .unwrap();
        }
    }
    tokio::time::sleep(Duration::from_secs(10)).await;
    let path =
        format!("/api/v1/namespaces/small/configmaps?watch=1&resourceVersion={before_small}");
    let path = path.as_str();
    println!(
        "watchers (history: 500 ConfigMaps of ~2 KB, each written 10 times; from revision {before_small}):"
    );
    stalled(&s, path, "from before those writes, not reading").await;
    reading(&s, path, last, "from before those writes").await;
    s.stop();
}

async fn big_pod() {
    let dir = tempfile::tempdir().unwrap();
    let data = dir.path().join("server");
    let s = Server::start(&data).await;
    // The largest pod the API takes: 100 containers (the limit), ~1.4 MB of env.
    let containers: Vec<Value> = (0..100)
        .map(|i| {
            let env: Vec<Value> = (0..100)
                .map(|j| json!({"name": format!("VAR_{j}"), "value": "x".repeat(80)}))
                .collect();
            json!({"name": format!("c{i}"), "image": "busybox", "env": env})
        })
        .collect();
    let pod = json!({"apiVersion": "v1", "kind": "Pod",
        "metadata": {"name": "big", "namespace": "default"},
        "spec": {"containers": containers, "nodeName": "nowhere"}});
    let size = serde_json::to_vec(&pod).unwrap().len();
    let (code, body) = s
        .req(
            http::Method::POST,
            "/api/v1/namespaces/default/pods",
            "application/json",
            Some(&pod),
        )
        .await;
    assert_eq!(code, 201, "{}", body["message"]);
    let db = data.join("state.redb");
    let (start_rss, start_db) = (s.rss_mb(), file_mb(&db));
    let t = Instant::now();
    println!(
        "a big pod's status writes ({:.2} MB pod):",
        size as f64 / 1e6
    );
    println!("  before: store file {start_db:.0} MB, RSS {start_rss:.0} MB");
    for i in 1..=1000 {
        let patch = json!({"status": {"phase": "Pending", "message": format!("write {i}")}});
        let (code, body) = s
            .req(
                http::Method::PATCH,
                "/api/v1/namespaces/default/pods/big/status",
                "application/merge-patch+json",
                Some(&patch),
            )
            .await;
        assert_eq!(code, 200, "{}", body["message"]);
        if i % 250 == 0 {
            println!(
                "  after {i} writes ({:.0} s): store file {:.0} MB, RSS {:.0} MB",
                t.elapsed().as_secs_f64(),
                file_mb(&db),
                s.rss_mb()
            );
        }
    }
    let (code, _) = s
        .req(
            http::Method::DELETE,
            "/api/v1/namespaces/default/pods/big?gracePeriodSeconds=0",
            "application/json",
            None,
        )
        .await;
    assert_eq!(code, 200);
    tokio::time::sleep(Duration::from_secs(10)).await;
    println!(
        "  pod deleted: RSS {:.0} MB, store file {:.0} MB",
        s.rss_mb(),
        file_mb(&db)
    );
    s.stop();
    let s = Server::start(&data).await;
    println!(
        "  after a restart: store file {:.0} MB, RSS {:.0} MB",
        file_mb(&db),
        s.rss_mb()
    );
    // Past the store's 1.5 MiB, under the body limit: refused by the store.
    let mut too_big = pod.clone();
    for c in too_big["spec"]["containers"].as_array_mut().unwrap() {
        c["env"][0]["value"] = json!("y".repeat(5_000));
    }
    let size = serde_json::to_vec(&too_big).unwrap().len();
    let (code, body) = s
        .req(
            http::Method::POST,
            "/api/v1/namespaces/default/pods",
            "application/json",
            Some(&too_big),
        )
        .await;
    println!(
        "  a {:.2} MB pod: {code} {}",
        size as f64 / 1e6,
        body["message"].as_str().unwrap_or_default()
    );
    s.stop();
}

fn bodies() {
    use kedge::api::body;
    let limit = body::MAX_BODY;
    let fill = |unit: &str, open: &str, close: &str| {
        let mut s = String::from(open);
        while s.len() + unit.len() + close.len() <= limit {
            s.push_str(unit);
        }
        s.push_str(close);
        s
    };
    let nest = |open: &str, close: &str, depth: usize| {
        format!("{}1{},", open.repeat(depth), close.repeat(depth))
    };
    let mut cm = String::from("apiVersion: v1\nkind: ConfigMap\nmetadata:\n  name: big\ndata:\n");
    let mut i = 0;
    while cm.len() < limit - 100 {
        cm.push_str(&format!("  key{i}: \"value {i}\"\n"));
        i += 1;
    }
    let mut block =
        String::from("apiVersion: v1\nkind: ConfigMap\nmetadata:\n  name: big\ndata:\n  file: |\n");
    while block.len() < limit - 100 {
        block.push_str("    {\"a\": [1, 2, {\"b\": \"c\"}], \"d\": \"some text\"}\n");
    }
    let yaml_cases: Vec<(&str, String)> = vec![
        ("flow [ x limit", "[".repeat(limit)),
        ("flow {a: x limit", "{a: ".repeat(limit / 4)),
        ("block - x limit", "- ".repeat(limit / 2)),
        ("block ? x limit", "? ".repeat(limit / 2)),
        ("flow maps nested 60 deep, repeated", fill(&nest("{a: ", "}", 60), "[", "1]")),
        ("block sequences nested 60 deep, repeated", fill(&format!("{}x\n", "- ".repeat(60)), "", "")),
        ("small sequence items", fill("- 1\n", "", "")),
        ("alias bomb", "a0: &a0 [x,x,x,x,x,x,x,x,x,x]\na1: &a1 [*a0,*a0,*a0,*a0,*a0,*a0,*a0,*a0,*a0,*a0]\na2: &a2 [*a1,*a1,*a1,*a1,*a1,*a1,*a1,*a1,*a1,*a1]\na3: &a3 [*a2,*a2,*a2,*a2,*a2,*a2,*a2,*a2,*a2,*a2]\na4: [*a3,*a3,*a3,*a3,*a3,*a3,*a3,*a3,*a3,*a3]\n".into()),
        ("ConfigMap with many keys", cm),
        ("ConfigMap with keys at the node limit", {
            let mut s = String::from("apiVersion: v1\nkind: ConfigMap\nmetadata:\n  name: big\ndata:\n");
            for i in 0..(body::YAML_MAX_NODES / 2 - 8) {
                s.push_str(&format!("  key{i}: \"value {i}\"\n"));
            }
            s
        }),
        ("ConfigMap with one block scalar", block),
    ];
    // As many units as stay within the JSON token budget (the most a body may hold).
    let within = |unit: &str, per_unit: usize| {
        let n = body::JSON_MAX_TOKENS / per_unit;
        format!("[{}1]", unit.repeat(n - 1))
    };
    let small = r#"{"metadata": {"name": "n", "labels": {"a": "b"}}, "spec": {"x": [1, 2, 3]}},"#;
    let json_cases: Vec<(&str, String)> = vec![
        ("JSON [ x limit", "[".repeat(limit)),
        (
            "JSON arrays nested 120 deep, repeated",
            fill(&nest("[", "]", 120), "[", "1]"),
        ),
        ("JSON small objects", fill(small, "[", "1]")),
        (
            "JSON arrays nested 120 deep, token limit",
            within(&nest("[", "]", 120), 121),
        ),
        ("JSON small objects, token limit", within(small, 16)),
        ("JSON numbers, token limit", within("1,", 1)),
        ("JSON strings", fill(r#""a\u00e9b\n","#, "[", "1]")),
    ];
    println!(
        "body parsing (limit {:.2} MB; the slowest of 5 runs each):",
        limit as f64 / 1e6
    );
    let time = |f: &dyn Fn() -> bool| {
        let mut worst = Duration::ZERO;
        let mut ok = false;
        for _ in 0..5 {
            let t = Instant::now();
            ok = f();
            worst = worst.max(t.elapsed());
        }
        (worst, ok)
    };
    let mut slowest = Duration::ZERO;
    for (name, b) in &yaml_cases {
        let (d, ok) = time(&|| body::yaml(b.as_bytes()).is_ok());
        slowest = slowest.max(d);
        println!(
            "  YAML {name:<42} {:>8.1} KB {:>7.2} ms {}",
            b.len() as f64 / 1e3,
            d.as_secs_f64() * 1e3,
            if ok { "parsed" } else { "refused" }
        );
    }
    for (name, b) in &json_cases {
        let (d, ok) = time(&|| body::json(b.as_bytes()).is_ok());
        slowest = slowest.max(d);
        println!(
            "  {name:<47} {:>8.1} KB {:>7.2} ms {}",
            b.len() as f64 / 1e3,
            d.as_secs_f64() * 1e3,
            if ok { "parsed" } else { "refused" }
        );
    }
    println!("  slowest: {:.2} ms", slowest.as_secs_f64() * 1e3);
}
