//! Container probes as kubelet runs them: startup, liveness and readiness, each an `exec`,
//! `httpGet`, `tcpSocket` or `grpc` check repeated every `periodSeconds` once
//! `initialDelaySeconds` have passed since the container started, bounded by
//! `timeoutSeconds`, whose result flips after `successThreshold` consecutive successes or
//! `failureThreshold` consecutive failures.
//!
//! - Startup holds the other two until it succeeds (the container is not `started`); failing
//!   it kills the container, as liveness does.
//! - Liveness failing kills the run (with the probe's `terminationGracePeriodSeconds` if it
//!   has one); the restart policy decides what follows, with the usual back-off.
//! - Readiness drives the container's `ready`, so the pod's `ContainersReady`/`Ready`,
//!   Endpoints and rollouts. Before its first success the container is not ready.
//!
//! Probes run on the node, so they go on while the node is cut off from the server. Network
//! probes aim at the pod's IP (`host` overrides it) — today the node's, since pods share the
//! node's network. An `exec` probe runs `runc exec` in an OCI container, and in a Wasm
//! container starts its program again with the probe's arguments (as `kubectl exec` does, so
//! the command must begin with the program's name).

use std::sync::Arc;
use std::time::Duration;

use serde_json::Value;
use tokio::io::AsyncReadExt as _;
use tokio_util::sync::CancellationToken;

use super::Ctx;
use super::events::Kind as EventKind;
use super::pods::PodRun;
use super::stream::WasmTarget;

/// Which probe.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub(crate) enum ProbeKind {
    Startup,
    Liveness,
    Readiness,
}

impl ProbeKind {
    fn field(self) -> &'static str {
        match self {
            ProbeKind::Startup => "startupProbe",
            ProbeKind::Liveness => "livenessProbe",
            ProbeKind::Readiness => "readinessProbe",
        }
    }

    /// As kubelet's Events name it.
    fn word(self) -> &'static str {
        match self {
            ProbeKind::Startup => "Startup",
            ProbeKind::Liveness => "Liveness",
            ProbeKind::Readiness => "Readiness",
        }
    }
}

/// A port by number or by the name of one of the container's ports.
#[derive(Clone, Debug, PartialEq, Eq)]
pub(crate) enum PortRef {
    Number(u16),
    Name(String),
}

impl PortRef {
    fn of(v: &Value) -> Result<Self, String> {
        match v {
            Value::Number(n) => n
                .as_u64()
                .and_then(|n| u16::try_from(n).ok())
                .filter(|n| *n > 0)
                .map(PortRef::Number)
                .ok_or_else(|| format!("port {n} is not between 1 and 65535")),
            Value::String(s) => match s.parse::<u16>() {
                Ok(n) if n > 0 => Ok(PortRef::Number(n)),
                _ => Ok(PortRef::Name(s.clone())),
            },
            _ => Err("port is missing".into()),
        }
    }

    /// The number, looking a name up in the container's `ports`.
    fn resolve(&self, container: &Value) -> Result<u16, String> {
        match self {
            PortRef::Number(n) => Ok(*n),
            PortRef::Name(name) => container["ports"]
                .as_array()
                .into_iter()
                .flatten()
                .find(|p| p["name"].as_str() == Some(name))
                .and_then(|p| p["containerPort"].as_u64())
                .and_then(|n| u16::try_from(n).ok())
                .ok_or_else(|| format!("no container port named {name:?}")),
        }
    }
}

/// What a probe does.
#[derive(Clone, Debug, PartialEq, Eq)]
pub(crate) enum Handler {
    Exec(Vec<String>),
    Http {
        https: bool,
        host: Option<String>,
        port: PortRef,
        path: String,
        headers: Vec<(String, String)>,
    },
    Tcp {
        host: Option<String>,
        port: PortRef,
    },
    Grpc {
        port: u16,
        service: String,
    },
    /// A lifecycle hook's `sleep`.
    Sleep(Duration),
}

impl Handler {
    /// The handler of a probe or lifecycle hook object (`exec`, `httpGet`, `tcpSocket`,
    /// `grpc`: exactly one, which the API has checked).
    pub(crate) fn of(p: &Value) -> Result<Self, String> {
        if let Some(cmd) = p.pointer("/exec/command").and_then(Value::as_array) {
            let argv: Vec<String> = cmd
                .iter()
                .filter_map(|s| s.as_str().map(String::from))
                .collect();
            if argv.is_empty() {
                return Err("exec.command is empty".into());
            }
            return Ok(Handler::Exec(argv));
        }
        if let Some(h) = p.get("httpGet") {
            let path = h["path"].as_str().unwrap_or("");
            let path = if path.starts_with('/') {
                path.to_string()
            } else {
                format!("/{path}")
            };
            return Ok(Handler::Http {
                https: h["scheme"].as_str().is_some_and(|s| s == "HTTPS"),
                host: h["host"]
                    .as_str()
                    .filter(|s| !s.is_empty())
                    .map(String::from),
                port: PortRef::of(&h["port"])?,
                path,
                headers: h["httpHeaders"]
                    .as_array()
                    .into_iter()
                    .flatten()
                    .filter_map(|kv| {
                        Some((
                            kv["name"].as_str()?.to_string(),
                            kv["value"].as_str()?.to_string(),
                        ))
                    })
                    .collect(),
            });
        }
        if let Some(t) = p.get("tcpSocket") {
            return Ok(Handler::Tcp {
                host: t["host"]
                    .as_str()
                    .filter(|s| !s.is_empty())
                    .map(String::from),
                port: PortRef::of(&t["port"])?,
            });
        }
        if let Some(g) = p.get("grpc") {
            let port = g["port"]
                .as_u64()
                .and_then(|n| u16::try_from(n).ok())
                .filter(|n| *n > 0)
                .ok_or("grpc.port is not between 1 and 65535")?;
            return Ok(Handler::Grpc {
                port,
                service: g["service"].as_str().unwrap_or_default().to_string(),
            });
        }
        Err("no handler (exec, httpGet, tcpSocket or grpc)".into())
    }
}

/// One probe of a container, with Kubernetes' defaults filled in.
#[derive(Clone, Debug, PartialEq, Eq)]
pub(crate) struct Probe {
    pub kind: ProbeKind,
    pub handler: Handler,
    pub initial_delay: Duration,
    pub period: Duration,
    pub timeout: Duration,
    pub success_threshold: u32,
    pub failure_threshold: u32,
    /// Replaces the pod's grace period when this probe kills the container.
    pub termination_grace: Option<Duration>,
}

impl Probe {
    /// The container's probe of `kind`, if it has one.
    pub(crate) fn of(container: &Value, kind: ProbeKind) -> Result<Option<Self>, String> {
        let Some(p) = container.get(kind.field()).filter(|p| !p.is_null()) else {
            return Ok(None);
        };
        let secs = |k: &str, default: u64, min: u64| {
            Duration::from_secs(p[k].as_u64().unwrap_or(default).max(min))
        };
        let count = |k: &str, default: u32| {
            p[k].as_u64()
                .and_then(|n| u32::try_from(n).ok())
                .unwrap_or(default)
                .max(1)
        };
        let handler = Handler::of(p).map_err(|e| format!("{}: {e}", kind.field()))?;
        Ok(Some(Probe {
            kind,
            handler,
            initial_delay: secs("initialDelaySeconds", 0, 0),
            period: secs("periodSeconds", 10, 1),
            timeout: secs("timeoutSeconds", 1, 1),
            // Liveness and startup need exactly one success (the API refuses other values).
            success_threshold: match kind {
                ProbeKind::Readiness => count("successThreshold", 1),
                _ => 1,
            },
            failure_threshold: count("failureThreshold", 3),
            termination_grace: p["terminationGracePeriodSeconds"]
                .as_u64()
                .map(Duration::from_secs),
        }))
    }
}

/// A container's three probes.
#[derive(Clone, Debug, Default)]
pub(crate) struct Probes {
    pub startup: Option<Probe>,
    pub liveness: Option<Probe>,
    pub readiness: Option<Probe>,
}

impl Probes {
    pub(crate) fn of(container: &Value) -> Result<Self, String> {
        Ok(Probes {
            startup: Probe::of(container, ProbeKind::Startup)?,
            liveness: Probe::of(container, ProbeKind::Liveness)?,
            readiness: Probe::of(container, ProbeKind::Readiness)?,
        })
    }

    pub(crate) fn is_empty(&self) -> bool {
        self.startup.is_none() && self.liveness.is_none() && self.readiness.is_none()
    }
}

/// The result of a probe from its attempts: it flips only after `successThreshold`
/// consecutive successes or `failureThreshold` consecutive failures (kubelet's worker).
#[derive(Clone, Debug)]
pub(crate) struct Tracker {
    success_threshold: u32,
    failure_threshold: u32,
    /// The current result.
    ok: bool,
    /// The last attempt's outcome and how many in a row had it.
    last: Option<bool>,
    run: u32,
}

impl Tracker {
    /// A tracker whose result is `initial` until the attempts say otherwise: readiness and
    /// startup start failed (not ready, not started), liveness starts passed.
    pub(crate) fn new(probe: &Probe) -> Self {
        Tracker {
            success_threshold: probe.success_threshold,
            failure_threshold: probe.failure_threshold,
            ok: probe.kind == ProbeKind::Liveness,
            last: None,
            run: 0,
        }
    }

    /// Failed `failureThreshold` times in a row (what ends a startup probe, whose result
    /// never was a success to flip from).
    pub(crate) fn failed_for_good(&self) -> bool {
        self.last == Some(false) && self.run >= self.failure_threshold
    }

    /// Records one attempt; returns the new result when it changed.
    pub(crate) fn observe(&mut self, ok: bool) -> Option<bool> {
        if self.last == Some(ok) {
            self.run = self.run.saturating_add(1);
        } else {
            self.last = Some(ok);
            self.run = 1;
        }
        let needed = if ok {
            self.success_threshold
        } else {
            self.failure_threshold
        };
        if self.run < needed || self.ok == ok {
            return None;
        }
        self.ok = ok;
        Some(ok)
    }
}

/// Where a container's `exec` probes run.
#[derive(Clone)]
pub(crate) enum ExecTarget {
    Oci {
        runc_id: String,
        oci: Arc<kedge_runtime::oci::OciRuntime>,
    },
    Wasm {
        target: Arc<WasmTarget>,
        runtime: kedge_runtime::wasm::WasmRuntime,
    },
}

/// How much of an exec probe's output is kept for its Event.
const MAX_OUTPUT: usize = 1024;

/// What the probes of one run of a container need.
pub(crate) struct Prober {
    pub ctx: Ctx,
    pub pod: Value,
    pub container: Value,
    /// The container's index in the pod's records.
    pub index: usize,
    pub run: Arc<PodRun>,
    /// The run's number (its restart count): results are recorded only for it.
    pub run_no: u32,
    pub exec: ExecTarget,
    /// When the run started (`initialDelaySeconds` count from it).
    pub started: tokio::time::Instant,
    /// The pod's address (network probes without `host`).
    pub pod_ip: String,
    /// Cancelled to kill the run (a failed liveness or startup probe).
    pub kill: CancellationToken,
    /// The grace period the run is stopped with.
    pub grace: Arc<tokio::sync::watch::Sender<Duration>>,
}

impl Prober {
    fn name(&self) -> &str {
        self.container["name"].as_str().unwrap_or_default()
    }

    /// Runs the container's probes for as long as the run lives (the caller drops this future
    /// when the run ends). Returns when there is nothing (more) to probe.
    pub(crate) async fn supervise(self, probes: Probes) {
        // The run is reported started when runc is asked to run it; checks begin once the
        // container is actually there.
        if let ExecTarget::Oci { runc_id, oci } = &self.exec
            && let Err(e) = oci.until_running(runc_id).await
        {
            tracing::debug!(container = %self.name(), error = %e, "probing a container that is not running");
        }
        if let Some(startup) = &probes.startup
            && !self.until_started(startup).await
        {
            return;
        }
        if probes.startup.is_some() {
            let no = self.run_no;
            self.run
                .update(&self.ctx, self.index, |r| {
                    r.probed(no, ProbeKind::Startup, true)
                })
                .await;
        }
        let liveness = async {
            if let Some(p) = &probes.liveness {
                self.liveness(p).await;
            }
        };
        let readiness = async {
            if let Some(p) = &probes.readiness {
                self.readiness(p).await;
            }
        };
        tokio::join!(liveness, readiness);
    }

    /// Probes until the startup probe passes (true) or fails for good, which kills the run
    /// (false).
    async fn until_started(&self, p: &Probe) -> bool {
        let mut t = Tracker::new(p);
        let mut ticks = Ticks::new(p, self.started);
        loop {
            ticks.next().await;
            let ok = self.attempt(p).await;
            if t.observe(ok) == Some(true) {
                return true;
            }
            if t.failed_for_good() {
                self.kill(p).await;
                return false;
            }
        }
    }

    async fn liveness(&self, p: &Probe) {
        let mut t = Tracker::new(p);
        let mut ticks = Ticks::new(p, self.started);
        loop {
            ticks.next().await;
            let ok = self.attempt(p).await;
            if t.observe(ok) == Some(false) {
                self.kill(p).await;
                return;
            }
        }
    }

    async fn readiness(&self, p: &Probe) {
        let mut t = Tracker::new(p);
        let mut ticks = Ticks::new(p, self.started);
        loop {
            ticks.next().await;
            let ok = self.attempt(p).await;
            if let Some(ready) = t.observe(ok) {
                let no = self.run_no;
                self.run
                    .update(&self.ctx, self.index, |r| {
                        r.probed(no, ProbeKind::Readiness, ready)
                    })
                    .await;
            }
        }
    }

    /// One attempt; a failure is reported as kubelet's `Unhealthy` Event.
    async fn attempt(&self, p: &Probe) -> bool {
        let outcome = check(
            &p.handler,
            &self.container,
            &self.pod_ip,
            p.timeout,
            Some(&self.exec),
        )
        .await;
        self.ctx.metrics.probe(p.kind, outcome.is_ok());
        match outcome {
            Ok(()) => true,
            Err(why) => {
                tracing::debug!(container = %self.name(), probe = p.kind.word(), %why, "probe failed");
                self.ctx
                    .events
                    .pod(
                        &self.pod,
                        Some(self.name()),
                        EventKind::Warning,
                        "Unhealthy",
                        &format!("{} probe failed: {why}", p.kind.word()),
                    )
                    .await;
                false
            }
        }
    }

    /// Kills the run for a failed liveness or startup probe, with kubelet's `Killing` Event.
    async fn kill(&self, p: &Probe) {
        let name = self.name().to_string();
        tracing::info!(container = %name, probe = p.kind.word(), "probe failed; killing the container");
        self.ctx
            .events
            .pod(
                &self.pod,
                Some(&name),
                EventKind::Normal,
                "Killing",
                &format!(
                    "Container {name} failed {} probe, will be restarted",
                    p.kind.word().to_lowercase()
                ),
            )
            .await;
        if let Some(g) = p.termination_grace {
            let _ = self.grace.send(g);
        }
        self.kill.cancel();
    }
}

/// The probe's schedule: the first attempt once `initialDelaySeconds` have passed since the
/// run started, then one per `periodSeconds` (missed ticks are skipped, not bunched).
struct Ticks {
    interval: tokio::time::Interval,
}

impl Ticks {
    fn new(p: &Probe, started: tokio::time::Instant) -> Self {
        let first = (started + p.initial_delay).max(tokio::time::Instant::now());
        let mut interval = tokio::time::interval_at(first, p.period);
        interval.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
        Ticks { interval }
    }

    async fn next(&mut self) {
        self.interval.tick().await;
    }
}

/// One check by `handler`, bounded by `timeout`: `Err` says why it failed, in kubelet's words
/// where it has them.
pub(crate) async fn check(
    handler: &Handler,
    container: &Value,
    pod_ip: &str,
    timeout: Duration,
    exec: Option<&ExecTarget>,
) -> Result<(), String> {
    match handler {
        Handler::Exec(argv) => match exec {
            Some(exec) => exec_check(exec, argv, timeout).await,
            None => Err("nothing to exec in".into()),
        },
        Handler::Tcp { host, port } => {
            let port = port.resolve(container)?;
            let addr = join_host_port(host.as_deref().unwrap_or(pod_ip), port);
            match tokio::time::timeout(timeout, tokio::net::TcpStream::connect(&addr)).await {
                Ok(Ok(_)) => Ok(()),
                Ok(Err(e)) => Err(format!("dial tcp {addr}: connect: {e}")),
                Err(_) => Err(format!("dial tcp {addr}: i/o timeout")),
            }
        }
        Handler::Http {
            https,
            host,
            port,
            path,
            headers,
        } => {
            let port = port.resolve(container)?;
            let scheme = if *https { "https" } else { "http" };
            let url = format!(
                "{scheme}://{}{path}",
                join_host_port(host.as_deref().unwrap_or(pod_ip), port)
            );
            http_check(&url, headers, timeout).await
        }
        Handler::Grpc { port, service } => {
            grpc_check(&join_host_port(pod_ip, *port), service, timeout).await
        }
        Handler::Sleep(d) => {
            tokio::time::sleep(*d).await;
            Ok(())
        }
    }
}

fn join_host_port(host: &str, port: u16) -> String {
    if host.contains(':') && !host.starts_with('[') {
        format!("[{host}]:{port}")
    } else {
        format!("{host}:{port}")
    }
}

/// The HTTP client of probes: kubelet's user agent, no certificate checks (kubelet does not
/// verify a probe's TLS), redirects followed on the same host only, and no connection reuse
/// (each attempt is a fresh connection, as kubelet's).
fn http_client() -> &'static reqwest::Client {
    static CLIENT: std::sync::OnceLock<reqwest::Client> = std::sync::OnceLock::new();
    CLIENT.get_or_init(|| {
        kedge_tunnel::install_crypto_provider();
        reqwest::Client::builder()
            .user_agent(concat!("kube-probe/", env!("CARGO_PKG_VERSION")))
            .danger_accept_invalid_certs(true)
            .pool_max_idle_per_host(0)
            .redirect(reqwest::redirect::Policy::custom(|attempt| {
                let same_host = attempt
                    .previous()
                    .first()
                    .is_some_and(|first| first.host_str() == attempt.url().host_str());
                if attempt.previous().len() >= 10 || !same_host {
                    // kubelet counts a redirect elsewhere as success, not following it.
                    attempt.stop()
                } else {
                    attempt.follow()
                }
            }))
            .build()
            .expect("a client without custom TLS roots builds")
    })
}

/// `httpGet`: any status from 200 to 399 passes.
async fn http_check(
    url: &str,
    headers: &[(String, String)],
    timeout: Duration,
) -> Result<(), String> {
    let mut req = http_client()
        .get(url)
        .timeout(timeout)
        .header("Accept", "*/*");
    for (k, v) in headers {
        req = req.header(k.as_str(), v.as_str());
    }
    match req.send().await {
        Ok(resp) => {
            let code = resp.status().as_u16();
            if (200..400).contains(&code) {
                Ok(())
            } else {
                Err(format!("HTTP probe failed with statuscode: {code}"))
            }
        }
        Err(e) if e.is_timeout() => Err(format!(
            "Get {url:?}: context deadline exceeded (Client.Timeout exceeded while awaiting headers)"
        )),
        Err(e) => Err(format!("Get {url:?}: {}", error_chain(&e))),
    }
}

fn error_chain(e: &(dyn std::error::Error + 'static)) -> String {
    let mut text = e.to_string();
    let mut source = e.source();
    while let Some(s) = source {
        text.push_str(": ");
        text.push_str(&s.to_string());
        source = s.source();
    }
    text
}

/// `grpc`: the standard health service (`grpc.health.v1.Health/Check`) over plain-text
/// HTTP/2, as kubelet calls it; only `SERVING` passes.
async fn grpc_check(addr: &str, service: &str, timeout: Duration) -> Result<(), String> {
    static CLIENT: std::sync::OnceLock<reqwest::Client> = std::sync::OnceLock::new();
    let client = CLIENT.get_or_init(|| {
        // reqwest builds its TLS config even for plain text.
        kedge_tunnel::install_crypto_provider();
        reqwest::Client::builder()
            .user_agent(concat!("kube-probe/", env!("CARGO_PKG_VERSION")))
            .http2_prior_knowledge()
            .pool_max_idle_per_host(0)
            .build()
            .expect("a plain-text HTTP/2 client builds")
    });
    let url = format!("http://{addr}/grpc.health.v1.Health/Check");
    let body = grpc::frame(&grpc::health_request(service));
    let call = async {
        let resp = client
            .post(&url)
            .header("content-type", "application/grpc")
            .header("te", "trailers")
            .body(body)
            .send()
            .await
            .map_err(|e| format!("failed to connect service {addr:?}: {}", error_chain(&e)))?;
        if let Some(status) = grpc::status(resp.headers()) {
            return Err(status);
        }
        let bytes = resp
            .bytes()
            .await
            .map_err(|e| format!("health rpc failed: {}", error_chain(&e)))?;
        let status = grpc::health_status(&bytes)?;
        if status == grpc::SERVING {
            Ok(())
        } else {
            Err(format!(
                "service unhealthy (responded with {:?})",
                grpc::status_name(status)
            ))
        }
    };
    match tokio::time::timeout(timeout, call).await {
        Ok(r) => r,
        Err(_) => Err(format!(
            "timeout: health rpc did not complete within {}s",
            timeout.as_secs()
        )),
    }
}

/// The few bytes of gRPC the health check needs: one length-prefixed message each way, and
/// the two protobuf messages, each with a single field.
pub(crate) mod grpc {
    pub const SERVING: u64 = 1;

    /// A message with gRPC's 5-byte prefix (not compressed, big-endian length).
    pub fn frame(message: &[u8]) -> Vec<u8> {
        let mut out = Vec::with_capacity(5 + message.len());
        out.push(0);
        out.extend_from_slice(&(message.len() as u32).to_be_bytes());
        out.extend_from_slice(message);
        out
    }

    /// `HealthCheckRequest { service = 1 }`.
    pub fn health_request(service: &str) -> Vec<u8> {
        let mut m = Vec::new();
        if !service.is_empty() {
            m.push(0x0a);
            varint(&mut m, service.len() as u64);
            m.extend_from_slice(service.as_bytes());
        }
        m
    }

    fn varint(out: &mut Vec<u8>, mut v: u64) {
        while v >= 0x80 {
            out.push((v as u8) | 0x80);
            v >>= 7;
        }
        out.push(v as u8);
    }

    fn read_varint(b: &[u8]) -> Option<(u64, usize)> {
        let mut v = 0u64;
        for (i, byte) in b.iter().enumerate().take(10) {
            v |= u64::from(byte & 0x7f) << (7 * i);
            if byte & 0x80 == 0 {
                return Some((v, i + 1));
            }
        }
        None
    }

    /// The `status` of a framed `HealthCheckResponse` (0, UNKNOWN, when absent, as proto3
    /// leaves defaults out).
    pub fn health_status(body: &[u8]) -> Result<u64, String> {
        if body.len() < 5 {
            return Err("health rpc returned no response message".into());
        }
        if body[0] != 0 {
            return Err("health rpc response is compressed".into());
        }
        let len = u32::from_be_bytes([body[1], body[2], body[3], body[4]]) as usize;
        let mut m = body
            .get(5..5 + len)
            .ok_or("health rpc response is truncated")?;
        let mut status = 0;
        while !m.is_empty() {
            let (key, n) = read_varint(m).ok_or("malformed health rpc response")?;
            m = &m[n..];
            match key & 7 {
                0 => {
                    let (v, n) = read_varint(m).ok_or("malformed health rpc response")?;
                    m = &m[n..];
                    if key >> 3 == 1 {
                        status = v;
                    }
                }
                2 => {
                    let (len, n) = read_varint(m).ok_or("malformed health rpc response")?;
                    m = m
                        .get(n + len as usize..)
                        .ok_or("malformed health rpc response")?;
                }
                5 => m = m.get(4..).ok_or("malformed health rpc response")?,
                1 => m = m.get(8..).ok_or("malformed health rpc response")?,
                _ => return Err("malformed health rpc response".into()),
            }
        }
        Ok(status)
    }

    /// A non-OK `grpc-status` of a trailers-only answer, as an error text.
    pub fn status(headers: &http::HeaderMap) -> Option<String> {
        let code = headers.get("grpc-status")?.to_str().ok()?;
        if code == "0" {
            return None;
        }
        let message = headers
            .get("grpc-message")
            .and_then(|m| m.to_str().ok())
            .unwrap_or_default();
        Some(format!(
            "health rpc failed with status code {code}: {message}"
        ))
    }

    pub fn status_name(status: u64) -> &'static str {
        match status {
            0 => "UNKNOWN",
            1 => "SERVING",
            2 => "NOT_SERVING",
            3 => "SERVICE_UNKNOWN",
            _ => "unrecognised",
        }
    }
}

/// `exec`: exit code 0 passes; the output is the failure's message.
async fn exec_check(target: &ExecTarget, argv: &[String], timeout: Duration) -> Result<(), String> {
    match target {
        ExecTarget::Oci { runc_id, oci } => oci.exec_checked(runc_id, argv, timeout).await,
        ExecTarget::Wasm { target: w, runtime } => {
            if argv.first().map(String::as_str) != Some(w.program()) {
                return Err(format!(
                    "the container is a WebAssembly program, with no shell or other binaries: \
                     an exec probe runs that program again, so its command must begin with \
                     {:?}",
                    w.program()
                ));
            }
            let spec = kedge_runtime::wasm::ExecSpec {
                args: argv.to_vec(),
                ..w.container.clone()
            };
            let mut proc = runtime
                .exec(&w.workload, spec, false)
                .map_err(|e| format!("cannot start the probe: {e}"))?;
            let (mut out, mut err) = (proc.stdout.take(), proc.stderr.take());
            let mut text = Vec::new();
            let mut errtext = Vec::new();
            let run = async {
                let read_out = async {
                    if let Some(o) = out.as_mut() {
                        let _ = read_bounded(o, &mut text).await;
                    }
                };
                let read_err = async {
                    if let Some(e) = err.as_mut() {
                        let _ = read_bounded(e, &mut errtext).await;
                    }
                };
                tokio::join!(read_out, read_err);
                proc.wait().await
            };
            let exit = match tokio::time::timeout(timeout, run).await {
                Ok(exit) => exit,
                Err(_) => {
                    proc.stop().await;
                    return Err(format!(
                        "command {argv:?} timed out after {}s",
                        timeout.as_secs()
                    ));
                }
            };
            text.extend_from_slice(&errtext);
            let output = String::from_utf8_lossy(&text).trim().to_string();
            match exit {
                Ok(kedge_runtime::wasm::Exit::Code(0)) => Ok(()),
                Ok(e) => Err(if output.is_empty() {
                    format!("command {argv:?} exited with {}", e.exit_code())
                } else {
                    output
                }),
                Err(e) => Err(format!("command {argv:?} failed: {e}")),
            }
        }
    }
}

/// Reads `r` to its end, keeping the first [`MAX_OUTPUT`] bytes (the rest is drained, so
/// the guest never blocks on a full pipe).
async fn read_bounded(
    r: &mut (impl tokio::io::AsyncRead + Unpin),
    keep: &mut Vec<u8>,
) -> std::io::Result<()> {
    let mut buf = [0u8; 4096];
    loop {
        let n = r.read(&mut buf).await?;
        if n == 0 {
            return Ok(());
        }
        let room = MAX_OUTPUT.saturating_sub(keep.len());
        keep.extend_from_slice(&buf[..n.min(room)]);
    }
}

#[cfg(test)]
mod tests;
