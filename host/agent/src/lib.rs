//! `kedge agent`: the node agent (kubelet). It dials the server over the QUIC tunnel,
//! registers its Node, renews its Lease, runs the pods bound to it and reports their status,
//! and serves their logs back through the tunnel.

pub mod client;
mod container;
mod events;
mod objects;
mod spec;
pub mod status;
pub(crate) mod stream;

use std::collections::{BTreeMap, HashMap};
use std::path::PathBuf;
use std::sync::{Arc, Mutex};
use std::time::Duration;

use anyhow::Context as _;
use axum::body::Body;
use axum::extract::{Path as UrlPath, Query, State};
use axum::response::{IntoResponse, Response};
use serde_json::{Value, json};
use tokio::sync::watch;
use tokio_util::sync::CancellationToken;

use client::Client;
use kedge_core::meta;
use kedge_core::meta::Clock;
use kedge_registry::{LocalImageStore, Puller, Reference, RegistriesConfig};
use kedge_runtime::oci::OciRuntime;
use kedge_runtime::wasm::WasmRuntime;
use status::ContainerRecord;

/// How often the Lease is renewed (kubelet's default).
const LEASE_RENEW: Duration = Duration::from_secs(10);
const LEASE_DURATION_SECONDS: i64 = 40;
/// How often the Ready condition's heartbeat is refreshed.
const STATUS_HEARTBEAT: Duration = Duration::from_secs(60);

/// Sample Wasm images every agent has in its local store, so `manifests/hello-wasm.yaml`
/// runs on a fresh machine with no registry (like K3s' airgap images). `v2` is the same
/// program under another tag, for trying rollouts.
pub const SAMPLE_IMAGES: &[(&str, &[u8])] = &[
    ("kedge.dev/samples/hello-wasm:v1", HELLO_WASM),
    ("kedge.dev/samples/hello-wasm:v2", HELLO_WASM),
];
use kedge_guests::HELLO_WASM;

/// A Node taint.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Taint {
    pub key: String,
    pub value: Option<String>,
    pub effect: String,
}

impl std::str::FromStr for Taint {
    type Err = String;

    /// `key=value:Effect` or `key:Effect`, as kubelet's flag takes them.
    fn from_str(s: &str) -> Result<Self, String> {
        let (kv, effect) = s
            .rsplit_once(':')
            .ok_or_else(|| format!("taint {s:?}: expected key[=value]:Effect"))?;
        if !matches!(effect, "NoSchedule" | "PreferNoSchedule" | "NoExecute") {
            return Err(format!(
                "taint {s:?}: effect must be NoSchedule, PreferNoSchedule or NoExecute"
            ));
        }
        let (key, value) = match kv.split_once('=') {
            Some((k, v)) => (k, Some(v.to_string())),
            None => (kv, None),
        };
        if key.is_empty() {
            return Err(format!("taint {s:?}: empty key"));
        }
        Ok(Taint {
            key: key.to_string(),
            value,
            effect: effect.to_string(),
        })
    }
}

#[derive(Clone, Debug)]
pub struct AgentConfig {
    /// `host:port` of the server (UDP, the same port number as its HTTPS API).
    pub server: String,
    pub join_token: Option<String>,
    pub node_name: String,
    pub data_dir: PathBuf,
    pub labels: Vec<(String, String)>,
    /// Taints the Node registers with (`--node-taints key=value:Effect`), as kubelet's
    /// `--register-with-taints`.
    pub taints: Vec<Taint>,
    /// Registry mirrors, credentials and TLS trust (K3s' `registries.yaml`).
    pub registries: RegistriesConfig,
    /// Size budget of the node's image store; least recently used images not in use are
    /// removed past it.
    pub image_store_max_bytes: u64,
    /// How often the node's copies of Secrets and ConfigMaps are refreshed and the volumes of
    /// running pods updated from them ([`OBJECT_REFRESH`] unless a test wants it quicker).
    pub object_refresh: Duration,
}

/// Where a container's logs are, for the kubelet endpoint.
#[derive(Clone)]
struct LogHandle {
    uid: String,
    dir: PathBuf,
    restart_count: u32,
    /// Turns true when the current run ends (a follow then drains and closes).
    done: watch::Receiver<bool>,
    /// The runc id of the current run; `None` for a Wasm container.
    runc_id: Option<String>,
    /// What `kubectl exec` starts in a Wasm container: its program again.
    wasm: Option<Arc<stream::WasmTarget>>,
    /// The current run's stdin (open with `stdin: true`) and its live output, for
    /// `kubectl attach`.
    stdin: Option<kedge_runtime::stdio::Attach>,
}

type ContainerId = (String, String, String);

struct Shared {
    node: String,
    client: Client,
    runtime: WasmRuntime,
    /// runc, when the node has it (and runs as root): OCI images run only then.
    oci: Option<Arc<OciRuntime>>,
    puller: Puller,
    events: events::Recorder,
    /// The image each live container uses (by manifest digest), spared by image GC.
    images_in_use: Mutex<HashMap<ContainerId, String>>,
    /// The node's copies of the Secrets and ConfigMaps its pods use.
    objects: objects::Store,
    /// Who writes the pods' `configMap`, `secret` and `projected` volumes now, and what of
    /// them must stay (container starts and the refresh both go through it).
    volumes: objects::Volumes,
    pods_dir: PathBuf,
    /// The agent's data directory (its filesystem is what DiskPressure watches).
    data_dir: PathBuf,
    taints: Vec<Taint>,
    /// Per-container runtime state (OCI bundles, overlay layers).
    containers_dir: PathBuf,
    host_ip: String,
    /// Shared with the kubelet endpoint, which serves these containers' logs.
    logs: LogMap,
    clock: Clock,
}

impl Shared {
    fn now(&self) -> String {
        meta::timestamp((self.clock)())
    }

    fn pod_path(ns: &str, name: &str) -> String {
        format!("/api/v1/namespaces/{ns}/pods/{name}")
    }
}

/// A running agent.
pub struct Agent {
    pub node: String,
    tasks: tokio_util::task::TaskTracker,
}

impl Agent {
    pub async fn stopped(&self) {
        self.tasks.close();
        self.tasks.wait().await;
    }
}

fn local_ip_towards(server: &str) -> String {
    use std::net::ToSocketAddrs;
    let target = server.to_socket_addrs().ok().and_then(|mut a| a.next());
    target
        .and_then(|t| {
            let bind = if t.is_ipv6() { "[::]:0" } else { "0.0.0.0:0" };
            let s = std::net::UdpSocket::bind(bind).ok()?;
            // connect() on UDP only picks a route; nothing is sent.
            s.connect(t).ok()?;
            s.local_addr().ok().map(|a| a.ip().to_string())
        })
        .unwrap_or_else(|| "127.0.0.1".into())
}

pub async fn start(cfg: AgentConfig, cancel: CancellationToken) -> anyhow::Result<Agent> {
    kedge_tunnel::install_crypto_provider();
    // The data dir holds the node's key, its copies of Secrets and the pods' files.
    kedge_store::fsmode::private_dir(&cfg.data_dir)
        .with_context(|| format!("creating {}", cfg.data_dir.display()))?;
    let images =
        Arc::new(LocalImageStore::open(cfg.data_dir.join("images")).context("image store")?);
    for (r, bytes) in SAMPLE_IMAGES {
        let reference = Reference::parse(r).expect("valid sample reference");
        if images.lookup(&reference)?.is_none() {
            images.import(&reference, bytes)?;
        }
    }
    let logs: LogMap = Arc::default();
    let oci = match OciRuntime::detect(&cfg.data_dir.join("runc")) {
        Ok(r) => {
            tracing::info!(version = %r.version(), "OCI containers run with runc");
            Some(Arc::new(r))
        }
        Err(e) => {
            tracing::warn!(error = %e, "no OCI runtime: this node runs Wasm images only");
            None
        }
    };
    let wasm = WasmRuntime::new().context("wasm runtime")?;
    let kubelet = kubelet_router(Arc::new(Kubelet {
        logs: logs.clone(),
        oci: oci.clone(),
        wasm: wasm.clone(),
        cancel: cancel.clone(),
    }));
    let tunnel = kedge_tunnel::agent::TunnelClient::start(
        kedge_tunnel::agent::AgentConfig {
            server: cfg.server.clone(),
            join_token: cfg.join_token.clone(),
            node_name: cfg.node_name.clone(),
            state_dir: cfg.data_dir.join("tunnel"),
        },
        kubelet,
        cancel.clone(),
    )
    .await
    .context("connecting to the server")?;
    let containers_dir = cfg.data_dir.join("containers");
    if let Some(r) = &oci {
        // A previous agent process that died without stopping its containers left them
        // running, unsupervised: remove them before running pods again.
        r.remove_leftovers(&containers_dir);
    }
    let client = Client::new(tunnel.clone());
    let clock = kedge_core::meta::system_clock();
    let shared = Arc::new(Shared {
        node: cfg.node_name.clone(),
        events: events::Recorder::new(
            client.clone(),
            cfg.node_name.clone(),
            clock.clone(),
            cfg.data_dir.join("event-outbox.json"),
        ),
        client,
        runtime: wasm,
        oci,
        puller: Puller::new(images, cfg.registries.clone()),
        images_in_use: Mutex::default(),
        objects: objects::Store::new(&cfg.data_dir),
        volumes: objects::Volumes::default(),
        pods_dir: cfg.data_dir.join("pods"),
        data_dir: cfg.data_dir.clone(),
        taints: cfg.taints.clone(),
        containers_dir,
        host_ip: local_ip_towards(&cfg.server),
        logs,
        clock,
    });
    let tasks = tokio_util::task::TaskTracker::new();
    tasks.spawn(node_loop(
        shared.clone(),
        cfg.labels.clone(),
        cancel.clone(),
    ));
    tasks.spawn(pod_sync_loop(shared.clone(), tasks.clone(), cancel.clone()));
    tasks.spawn(object_refresh_loop(
        shared.clone(),
        cfg.object_refresh,
        cancel.clone(),
    ));
    let events = shared.clone();
    let stop = cancel.clone();
    tasks.spawn(async move { events.events.flush_loop(stop).await });
    tasks.spawn(container::image_gc_loop(
        shared.clone(),
        cfg.image_store_max_bytes,
        cancel.clone(),
    ));
    Ok(Agent {
        node: cfg.node_name,
        tasks,
    })
}

type Ctx = Arc<Shared>;

// ---------------------------------------------------------------------------------------
// Node registration, lease, heartbeat.

fn mem_total_bytes() -> u64 {
    std::fs::read_to_string("/proc/meminfo")
        .ok()
        .and_then(|m| {
            m.lines()
                .find(|l| l.starts_with("MemTotal:"))
                .and_then(|l| l.split_whitespace().nth(1))
                .and_then(|kb| kb.parse::<u64>().ok())
        })
        .map(|kb| kb * 1024)
        .unwrap_or(0)
}

fn read_trim(path: &str) -> String {
    std::fs::read_to_string(path)
        .map(|s| s.trim().to_string())
        .unwrap_or_default()
}

fn os_image() -> String {
    std::fs::read_to_string("/etc/os-release")
        .ok()
        .and_then(|s| {
            s.lines()
                .find_map(|l| l.strip_prefix("PRETTY_NAME="))
                .map(|v| v.trim_matches('"').to_string())
        })
        .unwrap_or_else(|| "Linux".into())
}

/// `status.images`: every image in the node's store, as kubelet lists them — the references
/// it is known by plus `<repository>@<digest>`, and its size on disk (manifest and layers, or
/// the module), largest first. The scheduler's image locality score reads it.
fn node_images(store: &LocalImageStore) -> Vec<Value> {
    let mut by_digest: BTreeMap<String, (Vec<String>, u64)> = BTreeMap::new();
    for (reference, digest) in store.images() {
        let entry = by_digest.entry(digest.clone()).or_default();
        if entry.0.is_empty() {
            let image = Reference::parse(&reference)
                .ok()
                .and_then(|r| store.image(&r).ok().flatten());
            let Some(image) = image else { continue };
            let size = |d: &str| {
                store
                    .blob_file(d)
                    .ok()
                    .and_then(|p| std::fs::metadata(p).ok())
                    .map_or(0, |m| m.len())
            };
            entry.1 = match &image.kind {
                kedge_registry::ImageKind::Wasm { module } => {
                    std::fs::metadata(module).map_or(0, |m| m.len())
                }
                kedge_registry::ImageKind::Oci { layers, .. } => {
                    size(&image.digest) + layers.iter().map(|l| size(l)).sum::<u64>()
                }
            };
            entry.0.push(image.image_id.clone());
        }
        entry.0.push(reference);
    }
    let mut images: Vec<(Vec<String>, u64)> = by_digest
        .into_values()
        .filter(|(names, _)| !names.is_empty())
        .collect();
    images.sort_by(|a, b| b.1.cmp(&a.1).then_with(|| a.0.cmp(&b.0)));
    images
        .into_iter()
        .map(|(names, size)| json!({"names": names, "sizeBytes": size}))
        .collect()
}

fn node_object(ctx: &Shared, labels: &[(String, String)], now: &str) -> Value {
    let cpus = std::thread::available_parallelism().map_or(1, |n| n.get());
    let mem = mem_total_bytes();
    let arch = kedge_core::kube_arch();
    let mut l = serde_json::Map::new();
    l.insert("kubernetes.io/hostname".into(), json!(ctx.node));
    l.insert("kubernetes.io/os".into(), json!("linux"));
    l.insert("kubernetes.io/arch".into(), json!(arch));
    l.insert("beta.kubernetes.io/os".into(), json!("linux"));
    l.insert("beta.kubernetes.io/arch".into(), json!(arch));
    l.insert("kedge.io/runtime-wasm".into(), json!("true"));
    if ctx.oci.is_some() {
        l.insert("kedge.io/runtime-oci".into(), json!("true"));
    }
    for (k, v) in labels {
        l.insert(k.clone(), json!(v));
    }
    let capacity =
        json!({"cpu": cpus.to_string(), "memory": format!("{}Ki", mem / 1024), "pods": "110"});
    let taints: Vec<Value> = ctx
        .taints
        .iter()
        .map(|t| json!({"key": t.key, "value": t.value, "effect": t.effect}))
        .collect();
    let spec = if taints.is_empty() {
        json!({})
    } else {
        json!({"taints": taints})
    };
    json!({
        "apiVersion": "v1",
        "kind": "Node",
        "metadata": {"name": ctx.node, "labels": l},
        "spec": spec,
        "status": {
            "capacity": capacity,
            "allocatable": capacity,
            "conditions": node_conditions(now, now, sense_pressure(&ctx.data_dir)),
            "images": node_images(ctx.puller.store()),
            "addresses": [
                {"type": "InternalIP", "address": ctx.host_ip},
                {"type": "Hostname", "address": ctx.node},
            ],
            "daemonEndpoints": {"kubeletEndpoint": {"Port": 0}},
            "nodeInfo": {
                "machineID": read_trim("/etc/machine-id"),
                "systemUUID": read_trim("/sys/class/dmi/id/product_uuid"),
                "bootID": read_trim("/proc/sys/kernel/random/boot_id"),
                "kernelVersion": read_trim("/proc/sys/kernel/osrelease"),
                "osImage": os_image(),
                "containerRuntimeVersion": runtime_version(ctx),
                "kubeletVersion": "v1.32.0-kedge",
                "kubeProxyVersion": "",
                "operatingSystem": "linux",
                "architecture": arch,
            },
        },
    })
}

/// What `kubectl get nodes -o wide` shows as CONTAINER-RUNTIME: runc when the node runs
/// containers, wasmtime always.
fn runtime_version(ctx: &Shared) -> String {
    let wasm = "wasmtime://48.0.8";
    match &ctx.oci {
        Some(r) => format!(
            "runc://{} + {wasm}",
            r.version().trim_start_matches("runc ")
        ),
        None => wasm.to_string(),
    }
}

/// Resource pressure as kubelet's default hard eviction thresholds define it.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
struct Pressure {
    /// `memory.available` < 100 MiB.
    memory: bool,
    /// `nodefs.available` < 10 % on the agent's data filesystem.
    disk: bool,
}

fn mem_available_bytes() -> Option<u64> {
    std::fs::read_to_string("/proc/meminfo").ok().and_then(|m| {
        m.lines()
            .find(|l| l.starts_with("MemAvailable:"))
            .and_then(|l| l.split_whitespace().nth(1))
            .and_then(|kb| kb.parse::<u64>().ok())
            .map(|kb| kb * 1024)
    })
}

fn sense_pressure(data_dir: &std::path::Path) -> Pressure {
    let memory = mem_available_bytes().is_some_and(|b| b < 100 << 20);
    let disk = rustix::fs::statvfs(data_dir)
        .is_ok_and(|st| st.f_blocks > 0 && (st.f_bavail as f64) < 0.10 * st.f_blocks as f64);
    Pressure { memory, disk }
}

fn node_conditions(now: &str, since: &str, pressure: Pressure) -> Value {
    let c = |t: &str, s: &str, reason: &str, msg: &str| {
        json!({"type": t, "status": s, "reason": reason, "message": msg,
            "lastHeartbeatTime": now, "lastTransitionTime": since})
    };
    let memory = if pressure.memory {
        c(
            "MemoryPressure",
            "True",
            "KubeletHasInsufficientMemory",
            "kubelet has insufficient memory available",
        )
    } else {
        c(
            "MemoryPressure",
            "False",
            "KubeletHasSufficientMemory",
            "kubelet has sufficient memory available",
        )
    };
    let disk = if pressure.disk {
        c(
            "DiskPressure",
            "True",
            "KubeletHasDiskPressure",
            "kubelet has disk pressure",
        )
    } else {
        c(
            "DiskPressure",
            "False",
            "KubeletHasNoDiskPressure",
            "kubelet has no disk pressure",
        )
    };
    json!([
        memory,
        disk,
        c(
            "PIDPressure",
            "False",
            "KubeletHasSufficientPID",
            "kubelet has sufficient PID available"
        ),
        c(
            "Ready",
            "True",
            "KubeletReady",
            "kedge agent is posting ready status"
        ),
    ])
}

async fn register_node(ctx: &Ctx, labels: &[(String, String)]) -> client::Result<()> {
    let now = ctx.now();
    let node = node_object(ctx, labels, &now);
    match ctx.client.create("/api/v1/nodes", &node).await {
        Ok(_) => Ok(()),
        Err(e) if e.code() == Some(409) => {
            // Re-registration after a restart: refresh labels and status.
            let path = format!("/api/v1/nodes/{}", ctx.node);
            ctx.client
                .merge_patch(
                    &path,
                    &json!({"metadata": {"labels": node["metadata"]["labels"]}}),
                )
                .await?;
            ctx.client
                .merge_patch(
                    &format!("{path}/status"),
                    &json!({"status": node["status"]}),
                )
                .await?;
            Ok(())
        }
        Err(e) => Err(e),
    }
}

fn micro_time(t: chrono::DateTime<chrono::Utc>) -> String {
    t.to_rfc3339_opts(chrono::SecondsFormat::Micros, true)
}

async fn renew_lease(ctx: &Ctx) -> client::Result<()> {
    let path = format!(
        "/apis/coordination.k8s.io/v1/namespaces/kube-node-lease/leases/{}",
        ctx.node
    );
    let now = micro_time((ctx.clock)());
    match ctx.client.get(&path).await {
        Ok(mut lease) => {
            lease["spec"]["renewTime"] = json!(now);
            lease["spec"]["holderIdentity"] = json!(ctx.node);
            ctx.client.put(&path, &lease).await.map(|_| ())
        }
        Err(e) if e.code() == Some(404) => ctx
            .client
            .create(
                "/apis/coordination.k8s.io/v1/namespaces/kube-node-lease/leases",
                &json!({
                    "apiVersion": "coordination.k8s.io/v1",
                    "kind": "Lease",
                    "metadata": {"name": ctx.node, "namespace": "kube-node-lease"},
                    "spec": {"holderIdentity": ctx.node, "leaseDurationSeconds": LEASE_DURATION_SECONDS,
                             "acquireTime": now, "renewTime": now},
                }),
            )
            .await
            .map(|_| ()),
        Err(e) => Err(e),
    }
}

async fn node_loop(ctx: Ctx, labels: Vec<(String, String)>, cancel: CancellationToken) {
    let mut registered = false;
    let mut last_heartbeat = tokio::time::Instant::now();
    let mut attempt = 0u32;
    let mut images_sent = Value::Null;
    loop {
        if !registered {
            match register_node(&ctx, &labels).await {
                Ok(()) => {
                    registered = true;
                    attempt = 0;
                    tracing::info!(node = %ctx.node, "node registered");
                    ctx.events
                        .node(events::Kind::Normal, "Starting", "Starting kedge agent.")
                        .await;
                }
                Err(e) => {
                    attempt += 1;
                    tracing::warn!(error = %e, attempt, "node registration failed; retrying");
                }
            }
        }
        if registered {
            if let Err(e) = renew_lease(&ctx).await {
                tracing::warn!(error = %e, "lease renewal failed");
            }
            // The node lifecycle controller marks a silent node Unknown; once heard from
            // again, say Ready at once rather than at the next periodic heartbeat.
            let cur = ctx
                .client
                .get(&format!("/api/v1/nodes/{}", ctx.node))
                .await
                .ok();
            let ready = cur.as_ref().and_then(|n| {
                n.pointer("/status/conditions")?
                    .as_array()?
                    .iter()
                    .find(|c| c["type"] == "Ready")
                    .cloned()
            });
            let ready_true = ready.as_ref().is_some_and(|c| c["status"] == "True");
            // Pulls and image GC change the list: report it at the next lease renewal.
            let images = json!(node_images(ctx.puller.store()));
            let images_changed = cur.is_some()
                && cur.as_ref().and_then(|n| n.pointer("/status/images")) != Some(&images)
                && images != images_sent;
            if last_heartbeat.elapsed() >= STATUS_HEARTBEAT
                || (cur.is_some() && !ready_true)
                || images_changed
            {
                let now = ctx.now();
                let path = format!("/api/v1/nodes/{}/status", ctx.node);
                let since = ready
                    .filter(|_| ready_true)
                    .and_then(|c| c["lastTransitionTime"].as_str().map(String::from))
                    .unwrap_or_else(|| now.clone());
                match ctx
                    .client
                    .merge_patch(
                        &path,
                        &json!({"status": {"conditions": node_conditions(
                            &now,
                            &since,
                            sense_pressure(&ctx.data_dir),
                        ), "images": images}}),
                    )
                    .await
                {
                    Ok(_) => {
                        images_sent = images;
                        last_heartbeat = tokio::time::Instant::now();
                        if cur.is_some() && !ready_true {
                            ctx.events
                                .node(
                                    events::Kind::Normal,
                                    "NodeReady",
                                    &format!("Node {} status is now: NodeReady", ctx.node),
                                )
                                .await;
                        }
                    }
                    Err(e) => tracing::warn!(error = %e, "node status heartbeat failed"),
                }
            }
        }
        let wait = if registered {
            LEASE_RENEW
        } else {
            Duration::from_millis(200 * (1 << attempt.min(5)))
        };
        tokio::select! {
            _ = cancel.cancelled() => return,
            _ = tokio::time::sleep(wait) => {}
        }
    }
}

// ---------------------------------------------------------------------------------------
// Pods.

struct PodWorker {
    cancel: CancellationToken,
    done: watch::Receiver<bool>,
    terminating: bool,
    /// How long containers get between TERM and KILL: the pod's
    /// `terminationGracePeriodSeconds`, replaced by the deletion's grace period.
    grace: watch::Sender<Duration>,
}

/// Kubernetes' default `terminationGracePeriodSeconds`.
const DEFAULT_GRACE: Duration = Duration::from_secs(30);

fn grace_of(pod: &Value) -> Duration {
    pod.pointer("/metadata/deletionGracePeriodSeconds")
        .or_else(|| pod.pointer("/spec/terminationGracePeriodSeconds"))
        .and_then(Value::as_u64)
        .map_or(DEFAULT_GRACE, Duration::from_secs)
}

async fn pod_sync_loop(ctx: Ctx, tasks: tokio_util::task::TaskTracker, cancel: CancellationToken) {
    let mut workers: HashMap<String, PodWorker> = HashMap::new();
    let selector = format!("spec.nodeName={}", ctx.node);
    let q = url::form_urlencoded::Serializer::new(String::new())
        .append_pair("fieldSelector", &selector)
        .finish();
    let mut failures = 0u32;
    // Where the next watch starts; `None` until listed, and again after 410 Gone. A watch
    // that merely broke (tunnel lost, server-side timeout) resumes from here without a
    // relist, as client-go's reflector does: a relist of every pod per reconnect is what
    // a fleet of flapping edge links cannot afford.
    let mut resume: Option<String> = None;
    // Offline autonomy: the pods this node ran before start again at once from the agent's
    // own record, server or not; the first list below reconciles them with the API (pods
    // deleted meanwhile are stopped, status is re-sent).
    for pod in pod_cache::load(&ctx.data_dir) {
        tracing::info!(pod = %format!("{}/{}", meta::namespace(&pod), meta::name(&pod)), "starting pod from the local record");
        observe_pod(&ctx, &tasks, &mut workers, pod, false);
    }
    ctx.objects.prune(|| pod_cache::peek(&ctx.data_dir));
    'relist: loop {
        if failures > 0 {
            let wait = Duration::from_millis(200 * (1 << failures.min(5)));
            tokio::select! {
                _ = cancel.cancelled() => break,
                _ = tokio::time::sleep(wait) => {}
            }
        }
        let rv = match resume.clone() {
            Some(rv) => {
                tracing::debug!(rv, "resuming the pod watch");
                rv
            }
            None => {
                let list_path = format!("/api/v1/pods?{q}");
                let list = tokio::select! {
                    _ = cancel.cancelled() => break,
                    l = ctx.client.get(&list_path) => l,
                };
                let list = match list {
                    Ok(l) => l,
                    Err(e) => {
                        failures += 1;
                        tracing::debug!(error = %e, "listing pods failed");
                        continue;
                    }
                };
                let rv = list["metadata"]["resourceVersion"]
                    .as_str()
                    .unwrap_or("0")
                    .to_string();
                let items = list["items"].as_array().cloned().unwrap_or_default();
                tracing::debug!(rv, pods = items.len(), "pods listed");
                let present: Vec<String> = items.iter().map(|p| meta::uid(p).to_string()).collect();
                // Pods that disappeared while we were not watching.
                workers.retain(|uid, w| {
                    let keep = present.contains(uid);
                    if !keep {
                        w.cancel.cancel();
                        forget_pod(&ctx, uid);
                    }
                    keep
                });
                for p in items {
                    observe_pod(&ctx, &tasks, &mut workers, p, false);
                }
                resume = Some(rv.clone());
                rv
            }
        };
        let watch_path =
            format!("/api/v1/pods?{q}&watch=true&resourceVersion={rv}&allowWatchBookmarks=true");
        let watch = tokio::select! {
            _ = cancel.cancelled() => break,
            w = ctx.client.watch(&watch_path) => w,
        };
        let mut w = match watch {
            Ok(w) => w,
            Err(e) => {
                failures += 1;
                if e.code() == Some(410) {
                    resume = None;
                }
                tracing::debug!(error = %e, "watching pods failed");
                continue;
            }
        };
        failures = 0;
        loop {
            let ev = tokio::select! {
                _ = cancel.cancelled() => break 'relist,
                e = w.next() => e,
            };
            let Some(Ok(ev)) = ev else {
                failures = 1;
                continue 'relist;
            };
            resume = resume_point(resume, &ev);
            let obj = ev["object"].clone();
            match ev["type"].as_str() {
                Some("ADDED" | "MODIFIED") => observe_pod(&ctx, &tasks, &mut workers, obj, false),
                Some("DELETED") => observe_pod(&ctx, &tasks, &mut workers, obj, true),
                Some("ERROR") => {
                    tracing::debug!(status = %obj, "pod watch error; relisting");
                    continue 'relist;
                }
                _ => {}
            }
        }
    }
    // The agent is shutting down: stop its containers, quickly (kubelet's shutdown grace).
    for w in workers.values() {
        let _ = w.grace.send(SHUTDOWN_GRACE);
        w.cancel.cancel();
    }
}

/// `<dir>/<uid>.json`, for a pod's uid; `None` for anything but a UUID, which must not become
/// a path.
fn uid_file(dir: &std::path::Path, uid: &str) -> Option<PathBuf> {
    let safe = !uid.is_empty() && uid.bytes().all(|b| b.is_ascii_alphanumeric() || b == b'-');
    safe.then(|| dir.join(format!("{uid}.json")))
}

/// The agent's own record of the pods it runs (`<data-dir>/pod-cache/<uid>.json`), so that it
/// runs them again after its own restart even while the server is unreachable.
mod pod_cache {
    use std::path::{Path, PathBuf};

    use serde_json::Value;

    use kedge_core::meta;

    fn dir(data_dir: &Path) -> PathBuf {
        data_dir.join("pod-cache")
    }

    fn path(data_dir: &Path, uid: &str) -> Option<PathBuf> {
        super::uid_file(&dir(data_dir), uid)
    }

    /// Writes the pod (temp file + rename: a crash leaves the old record or the new one).
    pub fn remember(data_dir: &Path, pod: &Value) {
        let Some(p) = path(data_dir, meta::uid(pod)) else {
            return;
        };
        let write = || -> std::io::Result<()> {
            std::fs::create_dir_all(dir(data_dir))?;
            let tmp = p.with_extension("tmp");
            std::fs::write(&tmp, serde_json::to_vec(pod)?)?;
            std::fs::rename(&tmp, &p)
        };
        if let Err(e) = write() {
            tracing::warn!(error = %e, "could not record the pod locally");
        }
    }

    pub fn forget(data_dir: &Path, uid: &str) {
        if let Some(p) = path(data_dir, uid) {
            let _ = std::fs::remove_file(p);
        }
    }

    /// The recorded pods; unreadable records are dropped.
    pub fn load(data_dir: &Path) -> Vec<Value> {
        read(data_dir, true)
    }

    /// The recorded pods, touching nothing: safe while records are being written.
    pub fn peek(data_dir: &Path) -> Vec<Value> {
        read(data_dir, false)
    }

    fn read(data_dir: &Path, clean: bool) -> Vec<Value> {
        let Ok(entries) = std::fs::read_dir(dir(data_dir)) else {
            return Vec::new();
        };
        let mut pods = Vec::new();
        for e in entries.flatten() {
            let p = e.path();
            if p.extension().and_then(|x| x.to_str()) != Some("json") {
                if clean {
                    let _ = std::fs::remove_file(&p);
                }
                continue;
            }
            match std::fs::read(&p)
                .ok()
                .and_then(|b| serde_json::from_slice::<Value>(&b).ok())
            {
                Some(pod) => pods.push(pod),
                None if clean => {
                    tracing::warn!(file = %p.display(), "dropping an unreadable pod record");
                    let _ = std::fs::remove_file(&p);
                }
                None => {}
            }
        }
        pods
    }

    #[cfg(test)]
    mod tests {
        use super::*;
        use serde_json::json;

        #[test]
        fn records_round_trip_and_bad_ones_are_dropped() {
            let d = tempfile::tempdir().unwrap();
            let pod = json!({"metadata": {"uid": "0f6c-11", "name": "a", "namespace": "default"}});
            remember(d.path(), &pod);
            remember(d.path(), &json!({"metadata": {"uid": "../escape"}}));
            std::fs::write(dir(d.path()).join("junk.json"), b"{not json").unwrap();
            assert_eq!(load(d.path()), vec![pod]);
            assert_eq!(std::fs::read_dir(dir(d.path())).unwrap().count(), 1);
            forget(d.path(), "0f6c-11");
            assert!(load(d.path()).is_empty());
        }
    }
}

/// What the agent keeps of each container across its own restarts
/// (`<data-dir>/pod-state/<uid>.json`): the restart count (which also sets the back-off), whether
/// it ever started, its last termination, and whether it was running when the agent last
/// wrote. kubelet derives these from the runtime's record of dead containers; the agent's
/// containers do not outlive it, so it writes them down.
mod container_counts {
    use std::collections::BTreeMap;
    use std::path::{Path, PathBuf};

    use serde_json::Value;

    use super::status::{ContainerRecord, ContainerState};

    #[derive(Clone, Debug, Default, PartialEq, serde::Serialize, serde::Deserialize)]
    #[serde(rename_all = "camelCase")]
    pub struct Counts {
        pub restart_count: u32,
        pub ever_started: bool,
        #[serde(default, skip_serializing_if = "Option::is_none")]
        pub last_terminated: Option<Value>,
        /// `startedAt` of the run that was going on.
        #[serde(default, skip_serializing_if = "Option::is_none")]
        pub running_since: Option<String>,
    }

    pub type Record = BTreeMap<String, Counts>;

    fn path(data_dir: &Path, uid: &str) -> Option<PathBuf> {
        super::uid_file(&data_dir.join("pod-state"), uid)
    }

    /// What `records` say that must outlive the agent.
    pub fn of(records: &[ContainerRecord]) -> Record {
        records
            .iter()
            .map(|r| {
                let counts = Counts {
                    restart_count: r.restart_count,
                    ever_started: r.ever_started,
                    last_terminated: r.last_terminated.clone(),
                    running_since: match &r.state {
                        ContainerState::Running { started_at } => Some(started_at.clone()),
                        _ => None,
                    },
                };
                (r.name.clone(), counts)
            })
            .collect()
    }

    /// Continues the counts of a previous agent's run: a container that was running when
    /// that agent went away was stopped with it, so this run is its next restart (as after a
    /// node reboot in Kubernetes, whose last state then says `Unknown`).
    pub fn resume(record: &mut ContainerRecord, saved: &Counts, now: &str) {
        record.restart_count = saved.restart_count;
        record.ever_started = saved.ever_started;
        record.last_terminated = saved.last_terminated.clone();
        if let Some(started_at) = &saved.running_since {
            record.restart_count += 1;
            record.last_terminated = Some(serde_json::json!({"exitCode": 255,
                "reason": "Unknown", "message": "the node agent restarted",
                "startedAt": started_at, "finishedAt": now}));
        }
    }

    pub fn load(data_dir: &Path, uid: &str) -> Record {
        path(data_dir, uid)
            .and_then(|p| std::fs::read(p).ok())
            .and_then(|b| serde_json::from_slice(&b).ok())
            .unwrap_or_default()
    }

    /// Writes atomically (a crash leaves the old record or the new one).
    pub fn save(data_dir: &Path, uid: &str, record: &Record) {
        let Some(p) = path(data_dir, uid) else {
            return;
        };
        let write = || -> std::io::Result<()> {
            kedge_store::fsmode::private_dir(&data_dir.join("pod-state"))?;
            let bytes = serde_json::to_vec(record)?;
            kedge_tunnel::write_atomic(&p, &bytes, kedge_store::fsmode::PRIVATE_FILE)
                .map_err(std::io::Error::other)
        };
        if let Err(e) = write() {
            tracing::warn!(error = %e, "could not record the pod's restart counts locally");
        }
    }

    pub fn forget(data_dir: &Path, uid: &str) {
        if let Some(p) = path(data_dir, uid) {
            let _ = std::fs::remove_file(p);
        }
    }

    #[cfg(test)]
    mod tests {
        use super::*;

        #[test]
        fn counts_survive_the_agent_and_a_running_container_counts_one_more_restart() {
            let d = tempfile::tempdir().unwrap();
            let mut a = ContainerRecord::new("a", "img");
            a.restart_count = 3;
            a.ever_started = true;
            a.state = ContainerState::Running {
                started_at: "2026-12-06T10:00:00Z".into(),
            };
            let mut b = ContainerRecord::new("b", "img");
            b.restart_count = 5;
            b.ever_started = true;
            b.last_terminated = Some(serde_json::json!({"exitCode": 1}));
            b.state = ContainerState::BackOff {
                exit_code: 1,
                reason: "Error".into(),
                started_at: String::new(),
                finished_at: String::new(),
            };
            save(d.path(), "u-1", &of(&[a, b]));

            let saved = load(d.path(), "u-1");
            let mut a = ContainerRecord::new("a", "img");
            resume(&mut a, &saved["a"], "2026-12-06T11:00:00Z");
            assert_eq!((a.restart_count, a.ever_started), (4, true));
            assert_eq!(a.last_terminated.as_ref().unwrap()["reason"], "Unknown");
            let mut b = ContainerRecord::new("b", "img");
            resume(&mut b, &saved["b"], "2026-12-06T11:00:00Z");
            assert_eq!(
                b.restart_count, 5,
                "a container in back-off keeps its count"
            );
            assert_eq!(b.last_terminated.as_ref().unwrap()["exitCode"], 1);

            forget(d.path(), "u-1");
            assert!(load(d.path(), "u-1").is_empty());
            assert!(load(d.path(), "../etc").is_empty());
        }
    }
}

/// Forgets a pod's record, and the local copies of objects only it used.
fn forget_pod(ctx: &Shared, uid: &str) {
    pod_cache::forget(&ctx.data_dir, uid);
    container_counts::forget(&ctx.data_dir, uid);
    ctx.objects.prune(|| pod_cache::peek(&ctx.data_dir));
}

/// How often, by default, the node's copies of Secrets and ConfigMaps are refreshed from the
/// API and the `configMap`, `secret` and `projected` volumes of running pods rewritten from
/// them: a minute, as kubelet's sync period (`kedge agent --object-refresh-seconds`).
pub const OBJECT_REFRESH: Duration = Duration::from_secs(60);

async fn object_refresh_loop(ctx: Ctx, period: Duration, cancel: CancellationToken) {
    loop {
        tokio::select! {
            _ = cancel.cancelled() => return,
            _ = tokio::time::sleep(period) => {}
        }
        if ctx.client.is_connected() {
            objects::refresh(&ctx.client, &ctx.objects).await;
            refresh_volumes(&ctx).await;
        }
    }
}

/// Rewrites the `configMap`, `secret` and `projected` volumes of the pods this node runs from
/// the node's fresh copies, as kubelet's sync does: containers see the new files (the volume's
/// `..data` link swapped at once, see [`objects::write_volume`]) without a restart. As in
/// Kubernetes:
/// - a file mounted by `subPath` is not updated (it is bound to the file of its time);
/// - a volume whose object is gone keeps its last files unless the source is `optional`, in
///   which case its files go (kubelet writes an optional missing object as empty);
/// - a volume no container has written yet is left to the container's start.
///
/// Each write also removes what interrupted writes left, and old timestamped directories no
/// container's `subPath` is bound into any more ([`objects::Volumes`]).
async fn refresh_volumes(ctx: &Shared) {
    for pod in pod_cache::peek(&ctx.data_dir) {
        let dirs = pod_dirs(ctx, &pod);
        let (ns, pod_name, uid) = (meta::namespace(&pod), meta::name(&pod), meta::uid(&pod));
        for v in pod
            .pointer("/spec/volumes")
            .and_then(Value::as_array)
            .into_iter()
            .flatten()
        {
            let Some(dir) = spec::projected_dir(&dirs, v).filter(|d| objects::volume_written(d))
            else {
                continue;
            };
            let volume = v["name"].as_str().unwrap_or_default();
            let pod = format!("{ns}/{pod_name}");
            let refs = objects::volume_refs(ns, v);
            let files = objects::resolve(&ctx.client, &ctx.objects, refs, objects::Source::Copies)
                .await
                .and_then(|o| objects::volume_files(&o, ns, v));
            let files = match files {
                Ok(Some(files)) => files,
                Ok(None) => continue,
                Err(e) => {
                    tracing::debug!(pod, volume, error = %e, "volume not refreshed: it keeps its files");
                    continue;
                }
            };
            let written = ctx
                .volumes
                .with_pod(uid, (ctx.clock)(), move |w| {
                    w.write(&dir, &files, false).map_err(|e| e.to_string())
                })
                .await
                .and_then(|r| r);
            match written {
                Ok(true) => tracing::info!(pod, volume, "volume updated"),
                Ok(false) => {}
                Err(e) => tracing::debug!(pod, volume, error = %e, "updating a volume failed"),
            }
        }
    }
    // An object first asked for above was kept: if its pod went meanwhile, so does the copy.
    ctx.objects.prune(|| pod_cache::peek(&ctx.data_dir));
}

/// Grace period of containers when the agent itself stops.
const SHUTDOWN_GRACE: Duration = Duration::from_secs(3);

/// The revision the pod watch resumes from after `ev`. An ERROR event is the server saying
/// our revision is gone (410: compacted away), the one case that needs a relist.
fn resume_point(current: Option<String>, ev: &Value) -> Option<String> {
    if ev["type"] == "ERROR" {
        return None;
    }
    ev.pointer("/object/metadata/resourceVersion")
        .and_then(Value::as_str)
        .filter(|rv| !rv.is_empty())
        .map(String::from)
        .or(current)
}

/// Starts, keeps or stops the worker of one pod.
fn observe_pod(
    ctx: &Ctx,
    tasks: &tokio_util::task::TaskTracker,
    workers: &mut HashMap<String, PodWorker>,
    pod: Value,
    deleted: bool,
) {
    let uid = meta::uid(&pod).to_string();
    if deleted {
        forget_pod(ctx, &uid);
        let done = workers.remove(&uid).map(|w| {
            w.cancel.cancel();
            w.done
        });
        let ctx = ctx.clone();
        tasks.spawn(async move {
            if let Some(mut done) = done {
                let _ = done.wait_for(|d| *d).await;
            }
            remove_pod_dirs(&ctx, &pod).await;
        });
        return;
    }
    let terminating = pod.pointer("/metadata/deletionTimestamp").is_some();
    let finished = matches!(
        pod.pointer("/status/phase").and_then(Value::as_str),
        Some("Succeeded" | "Failed")
    );
    match workers.get_mut(&uid) {
        None if terminating => {
            // Not running here (e.g. after an agent restart): just confirm the deletion.
            forget_pod(ctx, &uid);
            let ctx = ctx.clone();
            tasks.spawn(async move {
                remove_pod_dirs(&ctx, &pod).await;
                confirm_deletion(&ctx, &pod).await
            });
        }
        None if finished => {}
        None => {
            let cancel = CancellationToken::new();
            let (done_tx, done_rx) = watch::channel(false);
            let (grace_tx, grace_rx) = watch::channel(grace_of(&pod));
            workers.insert(
                uid.clone(),
                PodWorker {
                    cancel: cancel.clone(),
                    done: done_rx,
                    terminating: false,
                    grace: grace_tx,
                },
            );
            pod_cache::remember(&ctx.data_dir, &pod);
            let ctx = ctx.clone();
            tasks.spawn(async move {
                let stopped = cancel.clone();
                run_pod(&ctx, pod, cancel, grace_rx).await;
                if !stopped.is_cancelled() {
                    // Finished on its own (restartPolicy Never/OnFailure): not to be run again.
                    forget_pod(&ctx, &uid);
                }
                ctx.events.forget_pod(&uid);
                let _ = done_tx.send(true);
            });
        }
        Some(w) if terminating && !w.terminating => {
            forget_pod(ctx, &uid);
            w.terminating = true;
            let _ = w.grace.send(grace_of(&pod));
            w.cancel.cancel();
            let mut done = w.done.clone();
            let ctx = ctx.clone();
            tasks.spawn(async move {
                for c in pod
                    .pointer("/spec/containers")
                    .and_then(Value::as_array)
                    .into_iter()
                    .flatten()
                {
                    let name = c["name"].as_str().unwrap_or_default();
                    ctx.events
                        .pod(
                            &pod,
                            Some(name),
                            events::Kind::Normal,
                            "Killing",
                            &format!("Stopping container {name}"),
                        )
                        .await;
                }
                let _ = done.wait_for(|d| *d).await;
                remove_pod_dirs(&ctx, &pod).await;
                confirm_deletion(&ctx, &pod).await;
            });
        }
        Some(_) => {}
    }
}

/// Where a pod's logs and volumes live on this node.
fn pod_dirs(ctx: &Shared, pod: &Value) -> spec::PodDirs {
    let (ns, name, uid) = (meta::namespace(pod), meta::name(pod), meta::uid(pod));
    let shm = std::path::Path::new("/dev/shm");
    spec::PodDirs {
        disk: ctx.pods_dir.join(format!("{ns}_{name}_{uid}")),
        memory: if shm.is_dir() {
            shm.join("kedge").join(uid)
        } else {
            ctx.pods_dir
                .join(format!("{ns}_{name}_{uid}"))
                .join("memory")
        },
    }
}

/// Removes a stopped pod's logs and emptyDir volumes.
async fn remove_pod_dirs(ctx: &Ctx, pod: &Value) {
    let dirs = pod_dirs(ctx, pod);
    for d in [dirs.disk, dirs.memory] {
        match tokio::fs::remove_dir_all(&d).await {
            Ok(()) => {}
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => {}
            Err(e) => tracing::warn!(dir = %d.display(), error = %e, "removing pod files failed"),
        }
    }
}

/// Tells the API the pod's containers are stopped: delete with a zero grace period, only if
/// it is still the same pod (uid precondition).
async fn confirm_deletion(ctx: &Ctx, pod: &Value) {
    let path = Shared::pod_path(meta::namespace(pod), meta::name(pod));
    let body = json!({"kind": "DeleteOptions", "apiVersion": "v1", "gracePeriodSeconds": 0,
        "preconditions": {"uid": meta::uid(pod)}});
    match ctx.client.delete(&path, &body).await {
        Ok(_) => tracing::debug!(pod = %path, "pod deletion confirmed"),
        Err(e) if matches!(e.code(), Some(404 | 409)) => {}
        Err(e) => tracing::warn!(pod = %path, error = %e, "confirming pod deletion failed"),
    }
}

/// The records of one pod's containers and the serialised status writer.
struct PodRun {
    ns: String,
    name: String,
    uid: String,
    /// The container counts as last written to the node's disk.
    counts: std::sync::Mutex<container_counts::Record>,
    records: tokio::sync::Mutex<Vec<ContainerRecord>>,
    /// The status as last read or written, to keep fields the agent does not own.
    last_status: tokio::sync::Mutex<Value>,
    /// The last status write did not land (the server was unreachable): it is retried until
    /// it does, as kubelet's status manager resyncs, or a pod that finished while the link
    /// was down would stay Running in the API for good.
    unsynced: std::sync::atomic::AtomicBool,
}

/// First and longest wait between retries of a status write that did not land.
const STATUS_RETRY_START: Duration = Duration::from_secs(1);
const STATUS_RETRY_CAP: Duration = Duration::from_secs(10);

impl PodRun {
    async fn update(&self, ctx: &Ctx, i: usize, f: impl FnOnce(&mut ContainerRecord)) {
        let mut recs = self.records.lock().await;
        f(&mut recs[i]);
        let counts = container_counts::of(&recs);
        {
            let mut saved = self.counts.lock().unwrap_or_else(|p| p.into_inner());
            if *saved != counts {
                // A synced file write: off the async workers.
                kedge_store::blocking(|| container_counts::save(&ctx.data_dir, &self.uid, &counts));
                *saved = counts;
            }
        }
        let mut last = self.last_status.lock().await;
        let status = status::pod_status(&last, &recs, &ctx.host_ip, &ctx.now());
        drop(recs);
        self.write(ctx, &mut last, status).await;
    }

    /// Writes the current status again if the last write did not land.
    async fn resync(&self, ctx: &Ctx) {
        let recs = self.records.lock().await;
        let mut last = self.last_status.lock().await;
        if !self.unsynced() {
            return;
        }
        let status = status::pod_status(&last, &recs, &ctx.host_ip, &ctx.now());
        drop(recs);
        tracing::debug!(pod = %self.name, "writing the pod status again");
        self.write(ctx, &mut last, status).await;
    }

    fn unsynced(&self) -> bool {
        self.unsynced.load(std::sync::atomic::Ordering::Relaxed)
    }

    async fn write(&self, ctx: &Ctx, last: &mut Value, status: Value) {
        let path = format!("{}/status", Shared::pod_path(&self.ns, &self.name));
        let res = ctx
            .client
            .merge_patch(&path, &json!({"status": status}))
            .await;
        let landed = match res {
            Ok(p) => {
                *last = p["status"].clone();
                true
            }
            // The pod is gone: nothing left to report.
            Err(e) if e.code() == Some(404) => true,
            Err(e) => {
                tracing::warn!(pod = %self.name, error = %e, "status update failed; will retry");
                false
            }
        };
        self.unsynced
            .store(!landed, std::sync::atomic::Ordering::Relaxed);
    }

    /// Retries a status write that did not land, with back-off, until it lands or `stop`
    /// fires; with `forever`, goes on watching for the next failed write until `stop`.
    async fn retry_unsynced(&self, ctx: &Ctx, stop: &CancellationToken, forever: bool) {
        let mut wait = STATUS_RETRY_START;
        loop {
            if !forever && !self.unsynced() {
                return;
            }
            tokio::select! {
                _ = stop.cancelled() => return,
                _ = tokio::time::sleep(wait) => {}
            }
            if self.unsynced() {
                self.resync(ctx).await;
                wait = (wait * 2).min(STATUS_RETRY_CAP);
            } else {
                wait = STATUS_RETRY_START;
            }
        }
    }
}

async fn run_pod(
    ctx: &Ctx,
    pod: Value,
    cancel: CancellationToken,
    grace: watch::Receiver<Duration>,
) {
    let containers = pod
        .pointer("/spec/containers")
        .and_then(Value::as_array)
        .cloned()
        .unwrap_or_default();
    let uid = meta::uid(&pod).to_string();
    let saved = container_counts::load(&ctx.data_dir, &uid);
    let now = ctx.now();
    let records: Vec<ContainerRecord> = containers
        .iter()
        .map(|c| {
            let name = c["name"].as_str().unwrap_or_default();
            let mut r = ContainerRecord::new(name, c["image"].as_str().unwrap_or_default());
            if let Some(counts) = saved.get(name) {
                container_counts::resume(&mut r, counts, &now);
            }
            r
        })
        .collect();
    let run = Arc::new(PodRun {
        ns: meta::namespace(&pod).to_string(),
        name: meta::name(&pod).to_string(),
        counts: std::sync::Mutex::new(saved),
        uid,
        records: tokio::sync::Mutex::new(records),
        last_status: tokio::sync::Mutex::new(pod.get("status").cloned().unwrap_or(json!({}))),
        unsynced: std::sync::atomic::AtomicBool::new(false),
    });
    tracing::info!(pod = %format!("{}/{}", run.ns, run.name), "starting pod");
    let mut set = tokio::task::JoinSet::new();
    for (i, c) in containers.into_iter().enumerate() {
        let (ctx, pod, run, cancel, grace) = (
            ctx.clone(),
            pod.clone(),
            run.clone(),
            cancel.clone(),
            grace.clone(),
        );
        set.spawn(
            async move { container::run_container(&ctx, &pod, &c, i, &run, cancel, grace).await },
        );
    }
    let containers = async { while set.join_next().await.is_some() {} };
    // `never` keeps the retry loop alive exactly as long as the containers run.
    let never = CancellationToken::new();
    tokio::select! {
        () = containers => {}
        () = run.retry_unsynced(ctx, &never, true) => {}
    }
    // The containers' last word (Succeeded, Failed) must reach the API too.
    run.retry_unsynced(ctx, &cancel, false).await;
}

/// A container's environment: kedge's `POD_NAME`/`POD_NAMESPACE`, then `envFrom`, then `env`
/// (later wins), with `valueFrom` resolved against the pod and the `objects` it uses.
fn container_env(
    pod: &Value,
    c: &Value,
    node: &str,
    host_ip: &str,
    objects: &objects::Objects,
) -> Result<Vec<(String, String)>, String> {
    let ns = meta::namespace(pod);
    let mut env = vec![
        ("POD_NAME".to_string(), meta::name(pod).to_string()),
        ("POD_NAMESPACE".to_string(), ns.to_string()),
    ];
    for (k, v) in objects::env_from(objects, ns, c)? {
        env.retain(|(ek, _)| *ek != k);
        env.push((k, v));
    }
    for e in c.get("env").and_then(Value::as_array).into_iter().flatten() {
        let name = e["name"].as_str().unwrap_or_default().to_string();
        let key_ref = |kind, ptr: &str| {
            e.pointer(ptr)
                .map(|sel| objects::key_ref(objects, kind, ns, sel))
        };
        let value = if let Some(v) = e.get("value").and_then(Value::as_str) {
            v.to_string()
        } else if let Some(path) = e
            .pointer("/valueFrom/fieldRef/fieldPath")
            .and_then(Value::as_str)
        {
            match path {
                "metadata.name" => meta::name(pod).to_string(),
                "metadata.namespace" => meta::namespace(pod).to_string(),
                "metadata.uid" => meta::uid(pod).to_string(),
                "spec.nodeName" => node.to_string(),
                // Pods share the node's network for now: both are the node's address.
                "status.hostIP" | "status.podIP" => host_ip.to_string(),
                "spec.serviceAccountName" => pod
                    .pointer("/spec/serviceAccountName")
                    .and_then(Value::as_str)
                    .unwrap_or("default")
                    .to_string(),
                other => {
                    return Err(format!(
                        "env {name}: fieldRef {other:?} is not supported by kedge yet"
                    ));
                }
            }
        } else if let Some(v) = key_ref(objects::Kind::ConfigMap, "/valueFrom/configMapKeyRef")
            .or_else(|| key_ref(objects::Kind::Secret, "/valueFrom/secretKeyRef"))
        {
            match v.map_err(|m| format!("env {name}: {m}"))? {
                Some(v) => v,
                // Optional and missing: the variable is left out.
                None => continue,
            }
        } else if e.get("valueFrom").is_some() {
            return Err(format!(
                "env {name}: only value and valueFrom fieldRef, configMapKeyRef and \
                 secretKeyRef are supported by kedge yet"
            ));
        } else {
            String::new()
        };
        env.retain(|(k, _)| *k != name);
        env.push((name, value));
    }
    Ok(env)
}

fn container_args(c: &Value) -> Vec<String> {
    let strings = |k: &str| -> Vec<String> {
        c.get(k)
            .and_then(Value::as_array)
            .map(|a| {
                a.iter()
                    .filter_map(|s| s.as_str().map(String::from))
                    .collect()
            })
            .unwrap_or_default()
    };
    let command = strings("command");
    let args = strings("args");
    let mut argv = if command.is_empty() {
        vec![c["name"].as_str().unwrap_or("main").to_string()]
    } else {
        command
    };
    argv.extend(args);
    argv
}

// ---------------------------------------------------------------------------------------
// The kubelet endpoint, reached only through the tunnel.

#[derive(serde::Deserialize)]
struct LogQuery {
    follow: Option<String>,
    previous: Option<String>,
    #[serde(rename = "tailLines")]
    tail_lines: Option<usize>,
    #[serde(rename = "sinceSeconds")]
    since_seconds: Option<i64>,
    #[serde(rename = "sinceTime")]
    since_time: Option<String>,
    timestamps: Option<String>,
    #[serde(rename = "limitBytes")]
    limit_bytes: Option<u64>,
    uid: Option<String>,
}

fn truthy(v: &Option<String>) -> bool {
    v.as_deref()
        .is_some_and(|v| v.eq_ignore_ascii_case("true") || v == "1")
}

type LogMap = Arc<Mutex<HashMap<ContainerId, LogHandle>>>;

/// What the kubelet endpoint serves from.
struct Kubelet {
    logs: LogMap,
    oci: Option<Arc<OciRuntime>>,
    wasm: WasmRuntime,
    /// Stops exec and port-forward sessions when the agent stops.
    cancel: CancellationToken,
}

fn kubelet_router(kubelet: Arc<Kubelet>) -> axum::Router {
    axum::Router::new()
        .route(
            "/containerLogs/{ns}/{pod}/{container}",
            axum::routing::get(container_logs),
        )
        .route(
            "/exec/{ns}/{pod}/{container}",
            axum::routing::post(stream::exec),
        )
        .route(
            "/attach/{ns}/{pod}/{container}",
            axum::routing::post(stream::attach),
        )
        .route(
            "/portForward/{ns}/{pod}",
            axum::routing::post(stream::port_forward),
        )
        .with_state(kubelet)
}

async fn container_logs(
    State(kubelet): State<Arc<Kubelet>>,
    UrlPath((ns, pod, container)): UrlPath<(String, String, String)>,
    Query(q): Query<LogQuery>,
) -> Response {
    let handle = kubelet
        .logs
        .lock()
        .unwrap_or_else(|p| p.into_inner())
        .get(&(ns.clone(), pod.clone(), container.clone()))
        .cloned();
    let Some(h) = handle.filter(|h| q.uid.as_ref().is_none_or(|u| *u == h.uid)) else {
        return (
            http::StatusCode::NOT_FOUND,
            format!("container \"{container}\" in pod \"{pod}\" is waiting to start or has no logs on this node"),
        )
            .into_response();
    };
    let (path, done) = if truthy(&q.previous) {
        if h.restart_count == 0 {
            return (
                http::StatusCode::BAD_REQUEST,
                format!("previous terminated container \"{container}\" in pod \"{pod}\" not found"),
            )
                .into_response();
        }
        (h.dir.join(format!("{}.log", h.restart_count - 1)), None)
    } else {
        (
            h.dir.join(format!("{}.log", h.restart_count)),
            Some(h.done.clone()),
        )
    };
    let since = match (&q.since_time, q.since_seconds) {
        (Some(t), _) => chrono::DateTime::parse_from_rfc3339(t)
            .ok()
            .map(|t| t.with_timezone(&chrono::Utc)),
        (None, Some(s)) => Some(chrono::Utc::now() - chrono::Duration::seconds(s)),
        _ => None,
    };
    let opts = kedge_runtime::logs::LogOptions {
        // A previous run is over: nothing to follow.
        follow: truthy(&q.follow) && !truthy(&q.previous),
        tail_lines: q.tail_lines,
        since,
        timestamps: truthy(&q.timestamps),
        limit_bytes: q.limit_bytes,
    };
    // A body that fails before its first byte makes hyper drop the stream without the head,
    // which the server can only report as a 502; a missing file gets a real answer instead.
    if let Err(e) = tokio::fs::metadata(&path).await {
        let (code, text) = if e.kind() == std::io::ErrorKind::NotFound {
            (
                http::StatusCode::NOT_FOUND,
                format!("container \"{container}\" in pod \"{pod}\" has no log on this node"),
            )
        } else {
            (
                http::StatusCode::INTERNAL_SERVER_ERROR,
                format!("reading the log of container \"{container}\" in pod \"{pod}\": {e}"),
            )
        };
        return (code, text).into_response();
    }
    let stream = kedge_runtime::logs::read(path, opts, done);
    let mut r = Response::new(Body::from_stream(stream));
    r.headers_mut().insert(
        http::header::CONTENT_TYPE,
        http::HeaderValue::from_static("text/plain"),
    );
    r
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn taints_parse_like_kubelet_flags() {
        let t: Taint = "dedicated=gpu:NoSchedule".parse().unwrap();
        assert_eq!(
            t,
            Taint {
                key: "dedicated".into(),
                value: Some("gpu".into()),
                effect: "NoSchedule".into()
            }
        );
        let t: Taint = "edge.example/flaky:NoExecute".parse().unwrap();
        assert_eq!(t.value, None);
        assert!("nokey".parse::<Taint>().is_err());
        assert!("k=v:Sometimes".parse::<Taint>().is_err());
        assert!("=v:NoSchedule".parse::<Taint>().is_err());
    }

    /// Guards the reconnect path: a watch broken by a lost tunnel resumes from the last
    /// revision it saw (events and bookmarks), and only 410 Gone makes the agent relist.
    #[test]
    fn a_broken_pod_watch_resumes_from_its_last_revision_and_relists_only_when_gone() {
        let ev =
            |t: &str, rv: &str| json!({"type": t, "object": {"metadata": {"resourceVersion": rv}}});
        let listed = Some("10".to_string());
        assert_eq!(
            resume_point(listed.clone(), &ev("ADDED", "11")).as_deref(),
            Some("11")
        );
        assert_eq!(
            resume_point(Some("11".into()), &ev("BOOKMARK", "15")).as_deref(),
            Some("15")
        );
        assert_eq!(
            resume_point(Some("15".into()), &ev("DELETED", "16")).as_deref(),
            Some("16")
        );
        // An event without a revision keeps the one we have.
        let bare = json!({"type": "MODIFIED", "object": {}});
        assert_eq!(resume_point(listed.clone(), &bare), listed);
        // 410 Gone (the revision was compacted away) arrives as an ERROR event: relist.
        let gone = json!({"type": "ERROR", "object": {"kind": "Status", "code": 410, "reason": "Expired"}});
        assert_eq!(resume_point(listed, &gone), None);
    }

    #[test]
    fn node_images_list_each_image_once_with_its_names_and_size() {
        let d = tempfile::tempdir().unwrap();
        let store = LocalImageStore::open(d.path()).unwrap();
        for (r, bytes) in SAMPLE_IMAGES {
            store.import(&Reference::parse(r).unwrap(), bytes).unwrap();
        }
        let images = node_images(&store);
        // v1 and v2 are the same module: one entry, both tags, its digest form.
        assert_eq!(images.len(), 1, "{images:?}");
        let names: Vec<&str> = images[0]["names"]
            .as_array()
            .unwrap()
            .iter()
            .map(|n| n.as_str().unwrap())
            .collect();
        assert!(
            names.contains(&"kedge.dev/samples/hello-wasm:v1"),
            "{names:?}"
        );
        assert!(
            names.contains(&"kedge.dev/samples/hello-wasm:v2"),
            "{names:?}"
        );
        assert!(names.iter().any(|n| n.contains("@sha256:")), "{names:?}");
        assert_eq!(
            images[0]["sizeBytes"].as_u64().unwrap(),
            SAMPLE_IMAGES[0].1.len() as u64
        );
    }

    /// A container reported Running may not have written anything yet: its log reads empty,
    /// and a log that is missing is a 404 with a message, never a stream that breaks before
    /// its head (which the server can only pass on as a 502).
    #[tokio::test]
    async fn logs_answer_with_a_head_whether_or_not_the_file_exists() {
        use http_body_util::BodyExt as _;
        use tower::ServiceExt as _;
        let dir = tempfile::tempdir().unwrap();
        let (_done_tx, done) = watch::channel(false);
        let logs = LogMap::default();
        logs.lock().unwrap().insert(
            ("ns".into(), "p".into(), "c".into()),
            LogHandle {
                uid: "u".into(),
                dir: dir.path().to_owned(),
                restart_count: 1,
                done,
                runc_id: None,
                wasm: None,
                stdin: None,
            },
        );
        let router = kubelet_router(Arc::new(Kubelet {
            logs,
            oci: None,
            wasm: WasmRuntime::new().unwrap(),
            cancel: CancellationToken::new(),
        }));
        let get = |q: &str| {
            let uri = format!("/containerLogs/ns/p/c{q}");
            let router = router.clone();
            async move {
                let req = http::Request::get(uri).body(Body::empty()).unwrap();
                let resp = router.oneshot(req).await.unwrap();
                let status = resp.status();
                let body = resp.into_body().collect().await.unwrap().to_bytes();
                (status, String::from_utf8_lossy(&body).into_owned())
            }
        };
        let (status, body) = get("").await;
        assert_eq!(status, http::StatusCode::NOT_FOUND, "{body}");
        assert!(body.contains("has no log on this node"), "{body}");
        std::fs::write(dir.path().join("1.log"), "").unwrap();
        assert_eq!(get("").await, (http::StatusCode::OK, String::new()));
        // The previous run's log (0.log) is gone too: a message, not a broken stream.
        let (status, body) = get("?previous=true").await;
        assert_eq!(status, http::StatusCode::NOT_FOUND, "{body}");
    }

    #[test]
    fn pressure_is_sensed_on_a_real_filesystem() {
        let dir = tempfile::tempdir().unwrap();
        // This machine has memory and disk to spare; the point is that sensing works.
        let p = sense_pressure(dir.path());
        assert!(!p.memory, "{p:?}");
        let conds = node_conditions(
            "t",
            "t",
            Pressure {
                memory: true,
                disk: false,
            },
        );
        assert_eq!(conds[0]["status"], "True");
        assert_eq!(conds[0]["reason"], "KubeletHasInsufficientMemory");
        assert_eq!(conds[1]["status"], "False");
    }
}
