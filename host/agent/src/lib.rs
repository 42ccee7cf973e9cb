//! `kedge agent`: the node agent (kubelet). It dials the server over the QUIC tunnel,
//! registers its Node, renews its Lease, runs the pods bound to it and reports their status,
//! and serves their logs back through the tunnel.

mod claims;
mod client;
mod container;
mod container_counts;
mod downward;
mod env;
mod events;
mod eviction;
mod http_proxy;
mod kubelet;
mod metrics;
mod network;
mod node;
mod objects;
mod pod_cache;
mod pods;
mod probe;
mod refresh;
mod relay;
mod runtime_class;
mod sa_token;
mod spec;
mod status;
mod stream;
mod udp_relay;
mod usage;

pub use eviction::Thresholds as EvictionThresholds;
pub use kedge_runtime::logs::LogRotation;
pub use network::{NetworkConfig, PodNetworkMode, ProxyMode, parse_cidr};
pub use node::Taint;
pub use refresh::OBJECT_REFRESH;
pub use usage::DEFAULT_INTERVAL as METRIC_RESOLUTION;

use std::collections::HashMap;
use std::path::PathBuf;
use std::sync::{Arc, Mutex, OnceLock};
use std::time::Duration;

use anyhow::Context as _;
use tokio::sync::watch;
use tokio_util::sync::CancellationToken;

use client::Client;
use kedge_core::meta;
use kedge_core::meta::Clock;
use kedge_registry::{LocalImageStore, Puller, Reference, RegistriesConfig};
use kedge_runtime::oci::OciRuntime;
use kedge_runtime::wasm::WasmRuntime;
use kubelet::{Kubelet, LogMap, kubelet_router};
use node::{local_ip_towards, node_loop};
use pods::pod_sync_loop;
use refresh::object_refresh_loop;

/// Sample Wasm images every agent has in its local store, so `manifests/hello-wasm.yaml`
/// runs on a fresh machine with no registry (like K3s' airgap images). `v2` is the same
/// program under another tag, for trying rollouts.
pub(crate) const SAMPLE_IMAGES: &[(&str, &[u8])] = &[
    ("kedge.dev/samples/hello-wasm:v1", HELLO_WASM),
    ("kedge.dev/samples/hello-wasm:v2", HELLO_WASM),
];
use kedge_guests::HELLO_WASM;

#[derive(Clone, Debug)]
pub struct AgentConfig {
    /// `host:port` of the server (UDP, the same port number as its HTTPS API), or several,
    /// comma-separated.
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
    /// Node-pressure eviction thresholds (`--eviction-hard`, kubelet's defaults).
    pub eviction_hard: EvictionThresholds,
    /// When container log files are rotated (`--container-log-max-size`,
    /// `--container-log-max-files`, kubelet's defaults).
    pub container_logs: LogRotation,
    /// The pod network, the service proxy and cluster DNS.
    pub network: NetworkConfig,
    /// How often the node and its containers' CPU and memory are sampled for
    /// `metrics.k8s.io` (`--metric-resolution-seconds`, [`METRIC_RESOLUTION`]).
    pub metric_resolution: Duration,
    /// KEP-2535: see [`kedge_registry::Puller::with_secret_pulled_images_verified`].
    pub ensure_secret_pulled_images: bool,
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
    /// The linear memory a Wasm container's run holds (OCI containers: their cgroup).
    memory: Option<kedge_runtime::wasm::MemoryGauge>,
    /// The CPU time a Wasm container's run has used (OCI containers: their cgroup).
    cpu: Option<kedge_runtime::wasm::CpuGauge>,
    /// The pod's network namespace, when it has its own (port-forward connects from inside).
    netns: Option<PathBuf>,
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
    /// `host:port` of the API server (what in-cluster clients are pointed at).
    api_server: String,
    /// When each pod's ServiceAccount token is due for renewal, by pod uid.
    sa_tokens: Mutex<HashMap<String, sa_token::Due>>,
    /// The pods node-pressure eviction may pick, by uid.
    evictable: eviction::Registry,
    /// Node-pressure thresholds (also what the Node's pressure conditions report).
    eviction_hard: EvictionThresholds,
    /// When container log files are rotated.
    container_logs: LogRotation,
    /// The node's networking, decided once at start (before any pod runs).
    net: OnceLock<Arc<network::Network>>,
    /// Container starts, image pulls, probes (served by the kubelet endpoint).
    metrics: metrics::AgentMetrics,
}

impl Shared {
    fn now(&self) -> String {
        meta::timestamp((self.clock)())
    }

    /// The node's networking; set before the pod loop starts.
    fn net(&self) -> &network::Network {
        self.net
            .get()
            .expect("networking is decided before pods run")
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

pub async fn start(cfg: AgentConfig, cancel: CancellationToken) -> anyhow::Result<Agent> {
    kedge_tunnel::install_crypto_provider();
    // The data dir holds the node's key, its copies of Secrets and the pods' files.
    kedge_store::fsmode::private_dir(&cfg.data_dir)
        .with_context(|| format!("creating {}", cfg.data_dir.display()))?;
    // Exclusive: `kedge image import` on the same store is refused while the agent runs.
    let images = Arc::new(
        LocalImageStore::open_exclusive(cfg.data_dir.join("images")).context("image store")?,
    );
    for (r, bytes) in SAMPLE_IMAGES {
        let reference = Reference::parse(r).expect("valid sample reference");
        if images.lookup(&reference)?.is_none() {
            images.import(&reference, bytes)?;
        }
    }
    // The airgap images directory (K3s' agent/images/): archives placed in the store
    // directory are imported before any pod starts; one that fails is reported and skipped.
    let store = Arc::clone(&images);
    let imported =
        tokio::task::spawn_blocking(move || store.import_airgap_dir(std::time::SystemTime::now()))
            .await
            .context("importing airgap images")?;
    for (file, result) in imported {
        match result {
            Ok(report) => {
                for skipped in &report.skipped {
                    tracing::warn!(archive = %file.display(), %skipped, "airgap image not imported");
                }
                if report.unchanged {
                    tracing::debug!(archive = %file.display(), "airgap archive unchanged since its import");
                } else {
                    tracing::info!(archive = %file.display(), images = report.images.len(), "airgap images imported");
                }
            }
            Err(e) => {
                tracing::warn!(archive = %file.display(), error = %format!("{:#}", anyhow::Error::from(e)), "airgap archive refused");
            }
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
    let metrics = metrics::AgentMetrics::default();
    let kubelet = kubelet_router(Arc::new(Kubelet {
        logs: logs.clone(),
        oci: oci.clone(),
        wasm: wasm.clone(),
        cancel: cancel.clone(),
        metrics: metrics.clone(),
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
        puller: Puller::new(images, cfg.registries.clone())
            .with_secret_pulled_images_verified(cfg.ensure_secret_pulled_images),
        images_in_use: Mutex::default(),
        objects: objects::Store::new(&cfg.data_dir),
        volumes: objects::Volumes::default(),
        pods_dir: cfg.data_dir.join("pods"),
        data_dir: cfg.data_dir.clone(),
        taints: cfg.taints.clone(),
        containers_dir,
        host_ip: local_ip_towards(kedge_tunnel::agent::first_server(&cfg.server)),
        logs,
        clock,
        // In-cluster clients reach the API at the first server given.
        api_server: kedge_tunnel::agent::first_server(&cfg.server).to_string(),
        sa_tokens: Mutex::default(),
        evictable: eviction::Registry::default(),
        eviction_hard: cfg.eviction_hard.clone(),
        container_logs: cfg.container_logs,
        net: OnceLock::new(),
        metrics,
    });
    let tasks = tokio_util::task::TaskTracker::new();
    tasks.spawn(node_loop(
        shared.clone(),
        cfg.labels.clone(),
        cancel.clone(),
    ));
    // Pods start once the node knows how to network them: its podCIDR comes with its
    // registration (or from its own record, offline).
    {
        let (shared, tasks2, cancel, cfg_net) = (
            shared.clone(),
            tasks.clone(),
            cancel.clone(),
            cfg.network.clone(),
        );
        tasks.spawn(async move {
            let net = network::Network::init(
                cfg_net,
                &shared.data_dir,
                &shared.client,
                &shared.node,
                &cancel,
            )
            .await;
            let net = Arc::new(net);
            let _ = shared.net.set(net.clone());
            {
                let (shared, cancel) = (shared.clone(), cancel.clone());
                tasks2.spawn(async move { network::announce(&shared, &cancel).await });
            }
            tasks2.spawn(network::services_loop(shared.clone(), cancel.clone()));
            tasks2.spawn(network::routes_loop(shared.clone(), cancel.clone()));
            // Pods wait (a little) for the Services to be served: a pod that started before
            // would keep the wrong resolv.conf and API address for its life. Offline, the
            // recorded Services are served at once and the wait ends on its bound.
            if net.is_cni() {
                let mut served = net.served.subscribe();
                let _ = tokio::time::timeout(
                    std::time::Duration::from_secs(5),
                    served.wait_for(|s| *s),
                )
                .await;
            }
            pod_sync_loop(shared, tasks2, cancel).await;
        });
    }
    tasks.spawn(object_refresh_loop(
        shared.clone(),
        cfg.object_refresh,
        cancel.clone(),
    ));
    let events = shared.clone();
    let stop = cancel.clone();
    tasks.spawn(async move { events.events.flush_loop(stop).await });
    tasks.spawn(eviction::eviction_loop(
        shared.clone(),
        cfg.eviction_hard.clone(),
        cancel.clone(),
    ));
    tasks.spawn(claims::cleanup_loop(
        shared.client.clone(),
        shared.node.clone(),
        cancel.clone(),
    ));
    tasks.spawn(usage::usage_loop(
        shared.clone(),
        cfg.metric_resolution,
        cancel.clone(),
    ));
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

#[cfg(test)]
mod tests {
    use super::*;
    use crate::node::{Pressure, node_conditions, node_images, sense_pressure};
    use crate::pods::resume_point;
    use axum::body::Body;
    use serde_json::json;

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
                memory: None,
                cpu: None,
                netns: None,
            },
        );
        let router = kubelet_router(Arc::new(Kubelet {
            logs,
            oci: None,
            wasm: WasmRuntime::new().unwrap(),
            cancel: CancellationToken::new(),
            metrics: Default::default(),
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
        let p = sense_pressure(dir.path(), &Default::default());
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
