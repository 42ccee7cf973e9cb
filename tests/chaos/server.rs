//! One `kedge server` process the campaigns kill and restart on the same data directory and
//! port, and the knobs they share.

use std::path::PathBuf;
use std::time::{Duration, Instant};

use kedge::kubeclient::{Connection, KubeClient};
use serde_json::{Value, json};

use crate::harness::{self, Proc};

/// Campaigns run one at a time even when the test harness runs tests in parallel: each
/// loads the machine on purpose, and their figures (and timeouts) assume it is theirs.
pub fn one_at_a_time() -> std::sync::MutexGuard<'static, ()> {
    static SERIAL: std::sync::Mutex<()> = std::sync::Mutex::new(());
    SERIAL.lock().unwrap_or_else(|p| p.into_inner())
}

/// A number from the environment, or `short` (the CI form).
pub fn knob(name: &str, short: u64) -> u64 {
    match std::env::var(name) {
        Ok(v) if !v.trim().is_empty() => v
            .trim()
            .parse()
            .unwrap_or_else(|_| panic!("{name}={v:?} is not a number")),
        _ => short,
    }
}

/// The run's seed: `KEDGE_CHAOS_SEED`, or a fixed one so CI replays the same schedule.
pub fn seed(campaign: &str) -> u64 {
    let seed = knob("KEDGE_CHAOS_SEED", 20_261_206);
    println!("{campaign}: seed {seed} (KEDGE_CHAOS_SEED={seed} replays it)");
    seed
}

pub struct ChaosServer {
    pub dir: tempfile::TempDir,
    pub port: u16,
    extra: Vec<String>,
    proc: Option<Proc>,
    starts: usize,
    /// How long each start took until the API answered.
    pub start_times: Vec<Duration>,
    client: Option<KubeClient>,
}

impl ChaosServer {
    /// A server with extra `kedge server` flags, started and answering.
    pub fn start(extra: &[&str]) -> ChaosServer {
        let mut s = ChaosServer {
            dir: tempfile::tempdir().unwrap(),
            port: harness::free_port(),
            extra: extra.iter().map(|s| s.to_string()).collect(),
            proc: None,
            starts: 0,
            start_times: Vec::new(),
            client: None,
        };
        s.restart();
        s
    }

    fn data(&self) -> PathBuf {
        self.dir.path().join("server")
    }

    /// Starts the server (again) on the same data directory and port, and waits until its
    /// API answers. The port is free while the server is down, so anything on the machine
    /// binding an ephemeral port may take it meanwhile: then the server starts on another
    /// one (it writes the new address into its admin kubeconfig, which clients read again).
    pub fn restart(&mut self) {
        assert!(self.proc.is_none(), "the server is running");
        let began = Instant::now();
        let mut attempts = 0;
        let client = loop {
            attempts += 1;
            match self.spawn_and_wait() {
                Ok(client) => break client,
                Err(log) if log.contains("Address already in use") && attempts < 5 => {
                    self.proc = None;
                    self.port = harness::free_port();
                }
                Err(log) => panic!("server exited:\n{log}"),
            }
        };
        self.start_times.push(began.elapsed());
        self.client = Some(client);
    }

    /// One start; `Err` with the server's log when it exited instead of answering.
    fn spawn_and_wait(&mut self) -> Result<KubeClient, String> {
        let data = self.data();
        let listen = format!("127.0.0.1:{}", self.port);
        let cache = harness::plugin_cache();
        let mut args = vec![
            "server",
            "--data-dir",
            data.to_str().unwrap(),
            "--listen",
            &listen,
            "--plugin-cache-dir",
            cache.to_str().unwrap(),
        ];
        args.extend(self.extra.iter().map(String::as_str));
        self.starts += 1;
        let proc = harness::spawn(&format!("server-{}", self.starts), self.dir.path(), &args);
        self.proc = Some(proc);
        let kubeconfig = data.join("admin.kubeconfig");
        let url = format!("https://127.0.0.1:{}", self.port);
        let mut exited = None;
        let client = harness::wait_for("the server to answer", Duration::from_secs(90), || {
            let p = self.proc.as_mut().unwrap();
            if !p.is_running() {
                exited = Some(p.log_text());
                return Some(None);
            }
            // The kubeconfig of this start (an earlier one may name another port).
            let text = std::fs::read_to_string(&kubeconfig).ok()?;
            if !text.contains(&url) {
                return None;
            }
            let client = KubeClient::from_kubeconfig(&kubeconfig).ok()?;
            let ready = block_on(client.request(http::Method::GET, "/readyz", "", None));
            matches!(ready, Ok((200, _))).then_some(Some(client))
        });
        client.ok_or_else(|| exited.unwrap_or_default())
    }

    /// SIGKILL, as a crash or power cut would (the process has no chance to flush anything).
    pub fn crash(&mut self) {
        if let Some(mut p) = self.proc.take() {
            p.crash();
        }
    }

    pub fn client(&self) -> &KubeClient {
        self.client.as_ref().expect("started")
    }

    /// The server's log of its latest start (for failure messages).
    pub fn log(&self) -> String {
        self.proc
            .as_ref()
            .map(|p| harness::tail(&p.log_text(), 40))
            .unwrap_or_default()
    }

    /// Creates namespace `ns` (tolerating that it exists).
    pub async fn namespace(&self, ns: &str) {
        let (code, body) = self
            .client()
            .request(
                http::Method::POST,
                "/api/v1/namespaces",
                "application/json",
                Some(&json!({"apiVersion": "v1", "kind": "Namespace", "metadata": {"name": ns}})),
            )
            .await
            .unwrap();
        assert!(
            code == 201 || code == 409,
            "creating namespace {ns}: {code} {body}"
        );
    }

    /// Start times as "p50 / max".
    pub fn start_figures(&self) -> String {
        p50_max(&self.start_times)
    }
}

/// Durations as "p50 …, max …" in milliseconds ("-" when there are none).
pub fn p50_max(t: &[Duration]) -> String {
    let mut t = t.to_vec();
    t.sort();
    if t.is_empty() {
        return "-".into();
    }
    format!(
        "p50 {:.0} ms, max {:.0} ms",
        t[t.len() / 2].as_secs_f64() * 1e3,
        t[t.len() - 1].as_secs_f64() * 1e3
    )
}

/// Polls `f` every 100 ms until it gives a value or `timeout` passes.
pub fn poll_for<T>(timeout: Duration, mut f: impl FnMut() -> Option<T>) -> Option<T> {
    let end = Instant::now() + timeout;
    loop {
        if let Some(v) = f() {
            return Some(v);
        }
        if Instant::now() > end {
            return None;
        }
        std::thread::sleep(Duration::from_millis(100));
    }
}

/// The runtime a campaign drives its clients on.
pub fn runtime() -> tokio::runtime::Runtime {
    tokio::runtime::Builder::new_multi_thread()
        .enable_all()
        .build()
        .unwrap()
}

/// Runs a future to completion from synchronous code, inside or outside a runtime.
pub fn block_on<F: std::future::Future>(f: F) -> F::Output {
    match tokio::runtime::Handle::try_current() {
        Ok(h) => tokio::task::block_in_place(|| h.block_on(f)),
        Err(_) => tokio::runtime::Builder::new_current_thread()
            .enable_all()
            .build()
            .unwrap()
            .block_on(f),
    }
}

/// A resourceVersion as the number it is (kedge's are store revisions).
pub fn rv_of(obj: &Value) -> u64 {
    obj.pointer("/metadata/resourceVersion")
        .and_then(Value::as_str)
        .and_then(|s| s.parse().ok())
        .unwrap_or_else(|| panic!("no numeric resourceVersion in {obj}"))
}

/// One request on `conn` with a deadline; `None` when the connection failed or timed out
/// (the outcome is unknown).
pub async fn call(
    conn: &mut Connection,
    method: http::Method,
    path: &str,
    body: Option<&Value>,
) -> Option<(u16, Value)> {
    let ct = if method == http::Method::PATCH {
        "application/merge-patch+json"
    } else {
        "application/json"
    };
    match tokio::time::timeout(
        Duration::from_secs(10),
        conn.request(method, path, ct, body),
    )
    .await
    {
        Ok(Ok(r)) => Some(r),
        _ => None,
    }
}
