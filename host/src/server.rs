//! `kedge server`: the control plane — store, API over HTTPS, QUIC tunnel endpoint for
//! nodes, and the plugin host with the default controllers and scheduler.

use std::net::SocketAddr;
use std::path::PathBuf;
use std::sync::Arc;

use anyhow::Context as _;
use hyper_util::rt::TokioIo;
use serde_json::{Value, json};
use tokio_util::sync::CancellationToken;

use crate::api::alloc::ClusterNetwork;
use crate::api::http::ApiState;
use crate::api::node_identity::{StoreTokens, token_secret};
use crate::api::ops::{Api, WriteOptions};
use crate::auth::Identity;
use crate::core::patch::PatchType;
use crate::core::resources;
use crate::plugins::manager::PluginManager;
use crate::plugins::{PluginConfig, PluginHost};
use crate::store::redb::{Options as StoreOptions, RedbStore};
use kedge_tunnel::pki::{ClusterPki, identity_from_cert};
use kedge_tunnel::revocation::Revocations;
use kedge_tunnel::server::{NodeTunnels, ServerOptions, TunnelServer};
use kedge_tunnel::token::{BootstrapToken, JoinToken};

/// The default plugin set, built from controllers-wasm/ by build.rs.
pub use kedge_guests::default_plugins;

#[derive(Clone, Debug)]
pub struct ServerConfig {
    pub data_dir: PathBuf,
    /// HTTPS (TCP) and tunnel (UDP) share this address.
    pub listen: SocketAddr,
    /// Extra names/IPs for the serving certificate.
    pub tls_sans: Vec<String>,
    pub plugin_cache_dir: Option<PathBuf>,
    pub plugins: PluginConfig,
    /// Store fsync per commit (off only for benchmarks).
    pub durable: bool,
    /// Credentials and trust for plugins whose source is an OCI image.
    pub registries: kedge_registry::RegistriesConfig,
    /// Validity of the node certificates the tunnel issues (agents renew at 70–80 % of it);
    /// [`kedge_tunnel::server::DEFAULT_NODE_CERT_VALIDITY`] unless told otherwise.
    pub node_cert_validity: std::time::Duration,
    /// Keep the cluster's state in etcd instead of the embedded redb file
    /// (`--datastore-endpoint`).
    pub datastore: Option<kedge_store::etcd::Options>,
    /// Events the embedded store's watch log keeps (`--watch-history`); its default when
    /// `None`.
    pub watch_history: Option<u64>,
    /// This server's name among the replicas (`--replica-name`); default: the hostname and
    /// a suffix kept in the data dir.
    pub replica_name: Option<String>,
    /// The plugins' leader election on etcd, where several servers may share the cluster
    /// (on the embedded store the server is alone and runs every plugin).
    pub leader_election: kedge_plugins::lease::Timings,
    /// On etcd: the token the servers of the cluster share (`--token`), which seals their
    /// bootstrap data there; kept in, or made into, `<data-dir>/server-token` when `None`.
    pub server_token: Option<String>,
    /// `--server URL`: join the cluster of the server at URL (its datastore is asked of it
    /// with the server token, see [`crate::join`]) instead of naming the datastore.
    pub join: Option<String>,
}

/// The local address this machine sends from to the first etcd endpoint (no packet is
/// sent: a UDP socket's connect only picks the route).
fn outbound_ip(etcd: &kedge_store::etcd::Options) -> Option<String> {
    let url = url::Url::parse(etcd.endpoints.first()?).ok()?;
    let host = url.host_str()?.trim_matches(['[', ']']).to_string();
    let port = url.port_or_known_default().unwrap_or(2379);
    let target = std::net::ToSocketAddrs::to_socket_addrs(&(host.as_str(), port))
        .ok()?
        .next()?;
    let local: SocketAddr = if target.is_ipv4() {
        "0.0.0.0:0".parse().ok()?
    } else {
        "[::]:0".parse().ok()?
    };
    let socket = std::net::UdpSocket::bind(local).ok()?;
    socket.connect(target).ok()?;
    let ip = socket.local_addr().ok()?.ip();
    (!ip.is_unspecified()).then(|| ip.to_string())
}

/// This machine's hostname, if it has one.
fn hostname() -> Option<String> {
    std::fs::read_to_string("/proc/sys/kernel/hostname")
        .map(|h| h.trim().to_string())
        .ok()
        .filter(|h| !h.is_empty())
}

/// The replica's name: `name` if given, else `<hostname>-<6 hex>` with the suffix made once
/// and kept in `<data-dir>/replica-name`, so a restarted replica is the same one (and takes
/// back its own leases at once).
pub fn replica_name(data_dir: &std::path::Path, name: Option<&str>) -> anyhow::Result<String> {
    if let Some(n) = name {
        return Ok(n.to_string());
    }
    let path = data_dir.join("replica-name");
    if let Ok(n) = std::fs::read_to_string(&path)
        && !n.trim().is_empty()
    {
        return Ok(n.trim().to_string());
    }
    let host = hostname()
        .map(|h| h.to_lowercase())
        .unwrap_or_else(|| "kedge".into());
    let name = format!("{host}-{:06x}", rand::random::<u32>() & 0xff_ffff);
    std::fs::write(&path, &name).with_context(|| format!("writing {}", path.display()))?;
    Ok(name)
}

/// Secrets at rest: where the server's store gets its encryption configuration (see
/// [`kedge_store::encryption`]). Nothing is encrypted by default, as in Kubernetes and K3s.
#[derive(Clone, Debug, Default)]
pub enum StoreEncryption {
    #[default]
    Off,
    /// kube-apiserver's `--encryption-provider-config FILE`: an `EncryptionConfiguration`.
    File(PathBuf),
    /// K3s' `--secrets-encryption`: `<data-dir>/cred/encryption-config.json`, written with a
    /// fresh aescbc key for `secrets` on first start and read as it is afterwards (edit it to
    /// rotate, as any such file).
    Generated,
}

/// Where `--secrets-encryption` keeps its configuration (K3s' path in its server dir).
pub fn generated_encryption_config(data_dir: &std::path::Path) -> PathBuf {
    data_dir.join("cred").join("encryption-config.json")
}

impl StoreEncryption {
    /// The store's encryption, reading (or first creating) its file. Every problem of the
    /// file is reported at once, in one line.
    pub fn load(
        &self,
        data_dir: &std::path::Path,
    ) -> anyhow::Result<Arc<kedge_store::encryption::Encryption>> {
        use kedge_store::encryption::Encryption;
        let path = match self {
            StoreEncryption::Off => return Ok(Arc::default()),
            StoreEncryption::File(p) => {
                return Encryption::load(p)
                    .map(Arc::new)
                    .with_context(|| "--encryption-provider-config".to_string());
            }
            StoreEncryption::Generated => generated_encryption_config(data_dir),
        };
        if !path.exists() {
            let dir = path.parent().expect("a file in a dir");
            crate::fsmode::private_dir(dir)
                .with_context(|| format!("creating {}", dir.display()))?;
            let text = Encryption::generate_aescbc_config()?;
            // Written whole before it takes the final name: a crash leaves no half key file.
            let tmp = path.with_extension("json.tmp");
            let _ = std::fs::remove_file(&tmp);
            crate::fsmode::private_file(&tmp)
                .and_then(|()| std::fs::write(&tmp, text))
                .and_then(|()| std::fs::File::open(&tmp)?.sync_all())
                .and_then(|()| std::fs::rename(&tmp, &path))
                .with_context(|| format!("writing {}", path.display()))?;
            tracing::info!(path = %path.display(), "secrets encryption: generated an aescbc key");
        } else {
            crate::fsmode::private_file(&path).with_context(|| format!("{}", path.display()))?;
        }
        Encryption::load(&path)
            .map(Arc::new)
            .with_context(|| "--secrets-encryption".to_string())
    }
}

/// Logs what the start's re-encryption did: objects sealed with a key or provider other
/// than the one writing now (or plaintext ones, when encryption was just turned on) are
/// rewritten before the API serves, so once a server has started with a new key first, the
/// old key can be dropped. A failure is logged, not fatal: what was not rewritten stays
/// readable while its key is listed.
fn reencrypted(outcome: Result<usize, kedge_store::Error>) {
    match outcome {
        Ok(0) => {}
        Ok(n) => tracing::info!(objects = n, "store: re-encrypted with the current key"),
        Err(e) => tracing::warn!(error = %e, "store: re-encrypting failed"),
    }
}

/// A running server.
pub struct Server {
    pub api: Arc<Api>,
    pub https_addr: SocketAddr,
    pub tunnel_addr: SocketAddr,
    pub kubeconfig: PathBuf,
    pub join_token: String,
    pub plugins: Arc<PluginHost>,
    /// Turns Plugin objects into running plugins (hot swap, rollback).
    pub plugin_manager: Arc<PluginManager>,
    pub nodes: NodeTunnels,
    tasks: tokio_util::task::TaskTracker,
}

impl Server {
    /// Waits for every task to finish (after the cancel token fired).
    pub async fn stopped(&self) {
        self.tasks.close();
        self.tasks.wait().await;
        self.plugins.stopped().await;
    }
}

/// The Node annotation holding where the server sees the node's tunnel come from: behind
/// which address (the public side of its NAT) a gateway is.
pub const TUNNEL_ADDRESS_ANNOTATION: &str = "kedge.io/tunnel-address";
/// The Node annotation naming the server replica holding the node's tunnel (`--replica-name`).
pub const TUNNEL_SERVER_ANNOTATION: &str = "kedge.io/tunnel-server";

/// Keeps [`TUNNEL_ADDRESS_ANNOTATION`] on every connected node's Node current: checked every
/// few seconds against the live connections, written only when it changed (a new connection,
/// or a NAT rebinding QUIC migrated across).
async fn record_tunnel_addresses(
    api: Arc<Api>,
    nodes: kedge_tunnel::server::NodeTunnels,
    replica: String,
    cancel: CancellationToken,
) {
    let mut recorded: std::collections::HashMap<String, String> = Default::default();
    // Often enough that a node which moved to this replica is found here (forwarding) soon;
    // a tick compares in memory and writes only what changed.
    let mut every = tokio::time::interval(std::time::Duration::from_secs(1));
    loop {
        tokio::select! {
            () = cancel.cancelled() => return,
            _ = every.tick() => {}
        }
        let live: std::collections::HashMap<String, SocketAddr> =
            nodes.remote_addresses().into_iter().collect();
        recorded.retain(|n, _| live.contains_key(n));
        for (node, addr) in live {
            let addr = addr.to_string();
            if recorded.get(&node) == Some(&addr) {
                continue;
            }
            let api = api.clone();
            let (n, a, r) = (node.clone(), addr.clone(), replica.clone());
            let written = tokio::task::spawn_blocking(move || {
                let res = resources::by_kind("v1", "Node").expect("nodes are served");
                let patch = json!({"metadata": {"annotations": {
                    TUNNEL_ADDRESS_ANNOTATION: a, TUNNEL_SERVER_ANNOTATION: r}}});
                api.patch(
                    res,
                    "",
                    &n,
                    None,
                    &patch,
                    PatchType::Merge,
                    &WriteOptions::default(),
                )
            })
            .await;
            match written {
                Ok(Ok(_)) => {
                    recorded.insert(node, addr);
                }
                // Not registered yet (the agent creates its Node after connecting): next time.
                Ok(Err(e)) if e.code == 404 => {}
                Ok(Err(e)) => {
                    tracing::debug!(node, error = %e, "recording the tunnel address failed")
                }
                Err(_) => {}
            }
        }
    }
}

fn ensure(api: &Api, kind: &str, ns: &str, obj: Value) -> anyhow::Result<()> {
    let (av, k) = kind.split_once(':').expect("av:kind");
    let res = resources::by_kind(av, k).expect("served kind");
    match api.create(res, ns, obj, &WriteOptions::default()) {
        Ok(_) => Ok(()),
        Err(e) if e.reason == "AlreadyExists" => Ok(()),
        Err(e) => Err(anyhow::anyhow!("creating default {k}: {e}")),
    }
}

/// `default/kubernetes`, the Service in-cluster clients reach the API by, as kube-apiserver
/// keeps it; its endpoints are [`kubernetes_endpoints`].
fn kubernetes_service(api: &Api, port: u16) -> anyhow::Result<()> {
    let ip = crate::api::alloc::KUBERNETES_SERVICE_IP.to_string();
    ensure(
        api,
        "v1:Service",
        "default",
        json!({"metadata": {"name": "kubernetes", "namespace": "default",
                "labels": {"component": "apiserver", "provider": "kubernetes"}},
            "spec": {"clusterIP": ip, "ports": [{"name": "https", "port": 443, "protocol": "TCP",
                "targetPort": port}]}}),
    )
}

/// The label naming who keeps an EndpointSlice.
const MANAGED_BY: &str = "endpointslice.kubernetes.io/managed-by";

/// Makes the `kubernetes` Service's Endpoints and EndpointSlices list `servers` (the API
/// servers' addresses; on etcd every live replica, as kube-apiserver's lease endpoint
/// reconciler keeps them). Servers on different ports (replicas sharing a machine) get a
/// subset, and a slice, per port: `kubernetes` for the lowest, `kubernetes-<port>` for the
/// others. Written only where it differs, so replicas that agree write nothing.
fn kubernetes_endpoints(api: &Api, servers: &[std::net::SocketAddr]) -> anyhow::Result<()> {
    let mut by_port: std::collections::BTreeMap<u16, Vec<std::net::IpAddr>> = Default::default();
    for s in servers {
        by_port.entry(s.port()).or_default().push(s.ip());
    }
    if by_port.is_empty() {
        return Ok(());
    }
    for ips in by_port.values_mut() {
        ips.sort();
        ips.dedup();
    }
    let port_json = |port: u16| json!([{"name": "https", "port": port, "protocol": "TCP"}]);
    let subsets: Vec<Value> = by_port
        .iter()
        .map(|(port, ips)| {
            json!({"addresses": ips.iter().map(|ip| json!({"ip": ip.to_string()})).collect::<Vec<_>>(),
                "ports": port_json(*port)})
        })
        .collect();
    let subsets = Value::Array(subsets);
    let slices = resources::by_kind("discovery.k8s.io/v1", "EndpointSlice").expect("served kind");
    let first = *by_port.keys().next().expect("not empty");
    let mut wanted = Vec::new();
    for (port, ips) in &by_port {
        let name = if *port == first {
            "kubernetes".to_string()
        } else {
            format!("kubernetes-{port}")
        };
        let v4 = ips.iter().any(|ip| ip.is_ipv4());
        let family = if v4 { "IPv4" } else { "IPv6" };
        let endpoints: Vec<Value> = ips
            .iter()
            .filter(|ip| ip.is_ipv4() == v4)
            .map(|ip| json!({"addresses": [ip.to_string()], "conditions": {"ready": true}}))
            .collect();
        let slice = json!({"metadata": {"name": name, "namespace": "default",
                "labels": {"kubernetes.io/service-name": "kubernetes", MANAGED_BY: "kedge-server"}},
            "addressType": family,
            "endpoints": endpoints,
            "ports": port_json(*port)});
        match api.get(slices, "default", &name) {
            Ok(mut old)
                if old.get("endpoints") != slice.get("endpoints")
                    || old.get("ports") != slice.get("ports")
                    || old.get("addressType") != slice.get("addressType") =>
            {
                old["endpoints"] = slice["endpoints"].clone();
                old["ports"] = slice["ports"].clone();
                old["addressType"] = slice["addressType"].clone();
                api.update(
                    slices,
                    "default",
                    &name,
                    old,
                    None,
                    &WriteOptions::default(),
                )
                .map_err(|e| anyhow::anyhow!("updating the kubernetes endpoint slice: {e}"))?;
            }
            Ok(_) => {}
            Err(_) => ensure(api, "discovery.k8s.io/v1:EndpointSlice", "default", slice)?,
        }
        wanted.push(name);
    }
    // Slices of ports no server listens on any more.
    let opts = crate::api::ops::ListOptions {
        labels: crate::core::selector::Selector::parse(&format!(
            "kubernetes.io/service-name=kubernetes,{MANAGED_BY}=kedge-server"
        ))
        .expect("a valid selector"),
        ..Default::default()
    };
    if let Ok(list) = api.list(slices, "default", &opts) {
        for old in list["items"].as_array().into_iter().flatten() {
            let name = old["metadata"]["name"].as_str().unwrap_or_default();
            if !wanted.iter().any(|w| w == name) {
                let _ = api.delete(
                    slices,
                    "default",
                    name,
                    &crate::api::ops::DeleteOptions::default(),
                );
            }
        }
    }
    let res = resources::by_kind("v1", "Endpoints").expect("served kind");
    match api.get(res, "default", "kubernetes") {
        Ok(mut ep) if ep.get("subsets") != Some(&subsets) => {
            ep["subsets"] = subsets;
            api.update(
                res,
                "default",
                "kubernetes",
                ep,
                None,
                &WriteOptions::default(),
            )
            .map_err(|e| anyhow::anyhow!("updating the kubernetes endpoints: {e}"))?;
        }
        Ok(_) => {}
        Err(_) => ensure(
            api,
            "v1:Endpoints",
            "default",
            json!({"metadata": {"name": "kubernetes", "namespace": "default",
                    "labels": {"endpointslice.kubernetes.io/skip-mirror": "true"}},
                "subsets": subsets}),
        )?,
    }
    Ok(())
}

/// On etcd: keeps the `kubernetes` Service's endpoints at the live replicas (their identity
/// leases' addresses), as each replica sees them change, until `cancel`. Every replica
/// writes the same thing, so they converge; a lost race is written again next change or
/// within a lease period.
async fn follow_api_servers(
    api: Arc<Api>,
    mut servers: tokio::sync::watch::Receiver<Vec<String>>,
    every: std::time::Duration,
    cancel: CancellationToken,
) {
    loop {
        let published = servers.borrow_and_update().clone();
        let api2 = api.clone();
        let done = tokio::task::spawn_blocking(move || {
            // Names (a replica that listens everywhere and has no IP to publish) resolved.
            let addrs: Vec<SocketAddr> = published
                .iter()
                .filter_map(|a| {
                    let found = a.parse().ok().or_else(|| {
                        std::net::ToSocketAddrs::to_socket_addrs(a.as_str())
                            .ok()
                            .and_then(|mut i| i.next())
                    });
                    if found.is_none() {
                        tracing::warn!(address = %a, "a server's address does not resolve: left out of the kubernetes Service");
                    }
                    found
                })
                .collect();
            kubernetes_endpoints(&api2, &addrs)
        })
        .await;
        if let Ok(Err(e)) = done {
            tracing::debug!(error = %e, "updating the kubernetes service's endpoints failed");
        }
        tokio::select! {
            _ = cancel.cancelled() => return,
            r = servers.changed() => if r.is_err() { return },
            _ = tokio::time::sleep(every) => {}
        }
    }
}

/// The annotation that tells agents to serve a Service's IP themselves (node-local DNS) and
/// their service proxy to leave it alone.
pub const NODE_LOCAL_DNS_ANNOTATION: &str = "kedge.io/node-local-dns";

/// `kube-system/kube-dns` as every cluster has it, at `--cluster-dns`: no selector (each
/// agent answers on that IP itself). Created when absent; one left with another IP (the flag
/// changed) is reported, not replaced — a cluster IP cannot change in place.
fn kube_dns_service(api: &Api, ip: std::net::Ipv4Addr) {
    let svc = json!({"metadata": {"name": "kube-dns", "namespace": "kube-system",
            "labels": {"k8s-app": "kube-dns", "kubernetes.io/name": "CoreDNS",
                "kubernetes.io/cluster-service": "true"},
            "annotations": {NODE_LOCAL_DNS_ANNOTATION: "true"}},
        "spec": {"clusterIP": ip.to_string(), "ports": [
            {"name": "dns", "port": 53, "protocol": "UDP", "targetPort": 53},
            {"name": "dns-tcp", "port": 53, "protocol": "TCP", "targetPort": 53}]}});
    let res = resources::by_kind("v1", "Service").expect("served kind");
    match api.create(res, "kube-system", svc, &WriteOptions::default()) {
        Ok(_) => tracing::info!(%ip, "created the kube-dns Service"),
        Err(e) if e.reason == "AlreadyExists" => {
            let have = api.get(res, "kube-system", "kube-dns").ok().and_then(|s| {
                s.pointer("/spec/clusterIP")
                    .and_then(Value::as_str)
                    .map(String::from)
            });
            if have.as_deref() != Some(ip.to_string().as_str()) {
                tracing::warn!(
                    want = %ip,
                    have = have.as_deref().unwrap_or(""),
                    "kube-system/kube-dns has another cluster IP than --cluster-dns; delete it to have it recreated at the next start"
                );
            }
        }
        Err(e) => tracing::error!(%ip, error = %e, "creating the kube-dns Service failed"),
    }
}

fn write_private(path: &std::path::Path, contents: &str) -> anyhow::Result<()> {
    use std::io::Write;
    // Created 0600, or narrowed to it if an older kedge left it wider.
    crate::fsmode::private_file(path).with_context(|| format!("writing {}", path.display()))?;
    let mut f = std::fs::OpenOptions::new()
        .write(true)
        .truncate(true)
        .open(path)
        .with_context(|| format!("writing {}", path.display()))?;
    f.write_all(contents.as_bytes())?;
    Ok(())
}

/// Every 30 s, ends snapshots held for more than 10 minutes (watches whose clients stopped
/// reading their initial events); every 5 minutes, gives the store's file back what a burst
/// of big writes took (see [`RedbStore::maintain`]).
async fn maintain_store(store: Arc<RedbStore>, cancel: CancellationToken) {
    let tick = std::time::Duration::from_secs(30);
    for n in 1u64.. {
        tokio::select! {
            _ = cancel.cancelled() => return,
            _ = tokio::time::sleep(tick) => {}
        }
        let ended = store.end_old_snapshots(std::time::Duration::from_secs(600));
        if ended > 0 {
            tracing::info!(
                ended,
                "ended watches whose clients left their initial events unread for 10 minutes"
            );
        }
        if n % 10 == 0 {
            let s = store.clone();
            if let Ok(Err(e)) = tokio::task::spawn_blocking(move || s.maintain()).await {
                tracing::warn!(error = %e, "store maintenance failed");
            }
        }
    }
}

/// Starts every part of the server with the default cluster addressing; returns once all
/// listen.
pub async fn start(cfg: ServerConfig, cancel: CancellationToken) -> anyhow::Result<Server> {
    start_with_network(cfg, ClusterNetwork::default(), cancel).await
}

/// Starts every part of the server, handing out pod CIDRs of `network.cluster_cidr` and
/// serving cluster DNS at `network.cluster_dns`; returns once all listen.
pub async fn start_with_network(
    cfg: ServerConfig,
    network: ClusterNetwork,
    cancel: CancellationToken,
) -> anyhow::Result<Server> {
    start_with(cfg, network, StoreEncryption::Off, cancel).await
}

/// [`start_with_network`], with the store encrypting what it writes as `encryption` says
/// (`--encryption-provider-config`, `--secrets-encryption`).
pub async fn start_with(
    cfg: ServerConfig,
    network: ClusterNetwork,
    encryption: StoreEncryption,
    cancel: CancellationToken,
) -> anyhow::Result<Server> {
    let (server, plugins) = start_serving(cfg, network, encryption, cancel).await?;
    plugins.await?;
    Ok(server)
}

/// The rest of a server's start: creating the built-in Plugins and starting every Plugin
/// (compiling what is not in the compile cache); `/readyz` answers ok once it is done.
pub type PluginStartup = std::pin::Pin<Box<dyn Future<Output = anyhow::Result<()>> + Send>>;

/// [`start_with`] up to the API, the tunnel and the server's own informers serving; the
/// plugins' start is returned to await. `kedge dev` starts its agent meanwhile: on a first
/// start every built-in plugin is compiled, and the node need not wait for the controllers
/// (nor does a kubelet for kube-controller-manager).
pub async fn start_serving(
    cfg: ServerConfig,
    network: ClusterNetwork,
    encryption: StoreEncryption,
    cancel: CancellationToken,
) -> anyhow::Result<(Server, PluginStartup)> {
    kedge_tunnel::install_crypto_provider();
    // The data dir holds Secrets, tokens and keys: nobody else may enter it.
    crate::fsmode::private_dir(&cfg.data_dir)
        .with_context(|| format!("creating data dir {}", cfg.data_dir.display()))?;
    // A replica joining through another server learns the datastore from it; one that
    // joined before finds it in its data dir.
    let mut cfg = cfg;
    if cfg.datastore.is_none() {
        cfg.datastore = match &cfg.join {
            Some(server) => {
                if cfg.server_token.is_none()
                    && !crate::bootstrap::token_path(&cfg.data_dir).exists()
                {
                    anyhow::bail!(
                        "--server needs --token: the cluster's server token (the first server's <data-dir>/server-token)"
                    );
                }
                let token =
                    crate::bootstrap::server_token(&cfg.data_dir, cfg.server_token.as_deref())?;
                Some(crate::join::datastore(&cfg.data_dir, server, &token).await?)
            }
            None => {
                let saved = crate::join::saved(&cfg.data_dir)?;
                if let Some(o) = &saved {
                    tracing::info!(
                        endpoints = %o.endpoints.join(","),
                        "this data dir joined a cluster on etcd: using its datastore"
                    );
                }
                saved
            }
        };
    }
    // On etcd, where several servers may share the cluster: the CA, the service-account key
    // and the generated encryption config are the cluster's, from etcd (or this server's,
    // published there if it is the first).
    let mut server_token = None;
    if let Some(etcd) = cfg.datastore.clone() {
        let token = crate::bootstrap::server_token(&cfg.data_dir, cfg.server_token.as_deref())?;
        let (dir, enc, t) = (cfg.data_dir.clone(), encryption.clone(), token.clone());
        let synced = tokio::task::spawn_blocking(move || {
            let synced = crate::bootstrap::sync(&dir, &etcd, &t.secret, || {
                ClusterPki::load_or_create(&dir.join("pki"), &[]).context("cluster PKI")?;
                crate::tokens::Signer::load_or_create(&dir.join("pki").join("sa.key"))
                    .map_err(|e| anyhow::anyhow!("service-account signing key: {e}"))?;
                enc.load(&dir).map(|_| ())
            })?;
            // Kept only now that it has opened (or sealed) the cluster's data.
            crate::bootstrap::save_token(&dir, &t)?;
            anyhow::Ok(synced)
        })
        .await??;
        match synced {
            crate::bootstrap::Synced::Published => tracing::info!(
                token_file = %crate::bootstrap::token_path(&cfg.data_dir).display(),
                "published this server's CA and keys as the cluster's bootstrap data; other servers join with --server <this server's URL> --token <the token file's contents>"
            ),
            crate::bootstrap::Synced::Same => {}
            crate::bootstrap::Synced::Adopted(files) => tracing::info!(
                ?files,
                "took the cluster's bootstrap data from etcd (replaced files kept beside them)"
            ),
        }
        server_token = Some(token);
    }
    let encryption = encryption.load(&cfg.data_dir)?;
    if !encryption.is_empty() {
        tracing::info!(encryption = %encryption.describe(), "store: encrypting at rest");
    }
    // In-cluster clients reach the API server as the `kubernetes` Service (its ClusterIP, or
    // its DNS names) through their node's service proxy, and check the certificate for
    // those names, as kube-apiserver's certificate carries them.
    let mut sans = cfg.tls_sans.clone();
    for name in [
        crate::api::alloc::KUBERNETES_SERVICE_IP.to_string(),
        "kubernetes".into(),
        "kubernetes.default".into(),
        "kubernetes.default.svc".into(),
        "kubernetes.default.svc.cluster.local".into(),
    ] {
        if !sans.contains(&name) {
            sans.push(name);
        }
    }
    let pki = Arc::new(
        ClusterPki::load_or_create(&cfg.data_dir.join("pki"), &sans).context("cluster PKI")?,
    );
    // A full token names the cluster's CA: one naming another is a token of another cluster
    // (whose secret happened to open this one's data, or a mix-up of files). The data dir
    // keeps the full form, which replicas join with.
    if let Some(token) = &server_token {
        let ca_hash = pki.ca_cert_hash();
        if let Some(h) = token.ca_hash.as_deref().filter(|h| *h != ca_hash) {
            anyhow::bail!(
                "--token names the CA sha256 {h}, but this cluster's CA is {ca_hash}: a token of another cluster"
            );
        }
        crate::bootstrap::save_full_token(&cfg.data_dir, token, &ca_hash)?;
    }
    // One registry for the whole server, served at `GET /metrics`: each part gets its
    // families here, made once, and records into them; nothing is process-global, so
    // several servers in one process (the tests) keep apart.
    let mut registry = prometheus_client::registry::Registry::default();
    let api_metrics = crate::api::metrics::ApiMetrics::new(&mut registry);
    let store_metrics = kedge_store::metrics::StoreMetrics::new(&mut registry);
    let plugin_metrics = kedge_plugins::metrics::PluginMetrics::new(&mut registry);
    let tunnel_metrics = kedge_tunnel::metrics::TunnelMetrics::new(&mut registry);
    // The redb store gets its file maintained (below); etcd compacts its own history.
    let mut redb_store = None;
    let store: Arc<dyn kedge_store::Store> = match &cfg.datastore {
        Some(etcd) => {
            let etcd = kedge_store::etcd::EtcdStore::connect(kedge_store::etcd::Options {
                encryption: encryption.clone(),
                ..etcd.clone()
            })
            .with_context(|| format!("connecting to etcd at {}", etcd.endpoints.join(",")))?
            .with_metrics(store_metrics);
            // A migration into this key root that did not finish: serving it would serve
            // half a cluster (and the next migration run would skip what the server wrote).
            if kedge_store::Store::get(&etcd, &crate::snapshot::migration_marker())
                .map_err(|e| anyhow::anyhow!("reading etcd: {e}"))?
                .is_some()
            {
                anyhow::bail!(
                    "a `kedge datastore migrate` into this etcd key root did not finish: run it again before starting the server"
                );
            }
            if !encryption.is_empty() {
                reencrypted(etcd.reencrypt());
            }
            Arc::new(etcd)
        }
        None => {
            let redb = Arc::new(
                RedbStore::open(
                    &cfg.data_dir.join("state.redb"),
                    StoreOptions {
                        durable: cfg.durable,
                        encryption: encryption.clone(),
                        history: cfg.watch_history.unwrap_or(StoreOptions::default().history),
                        ..Default::default()
                    },
                )
                .with_context(|| format!("opening store in {}", cfg.data_dir.display()))?
                .with_metrics(store_metrics),
            );
            if !encryption.is_empty() {
                reencrypted(redb.reencrypt());
            }
            redb_store = Some(redb.clone());
            redb
        }
    };
    let clock = crate::api::ops::system_clock();
    let api = Arc::new(Api::new(store.clone(), clock.clone()).with_network(network));
    for ns in ["default", "kube-system", "kube-public", "kube-node-lease"] {
        ensure(&api, "v1:Namespace", "", json!({"metadata": {"name": ns}}))?;
    }
    // Users' kinds are served from the start, and deletions of definitions resume.
    crate::api::crd::load(&api).map_err(|e| anyhow::anyhow!("serving custom resources: {e}"))?;
    // Nodes stored before pod CIDRs were handed out get theirs now.
    match api.assign_missing_pod_cidrs() {
        Ok(0) => {}
        Ok(n) => {
            tracing::info!(nodes = n, cluster_cidr = %network.cluster_cidr, "assigned pod CIDRs")
        }
        Err(e) => tracing::warn!(error = %e, "assigning pod CIDRs to stored nodes failed"),
    }
    kube_dns_service(&api, network.cluster_dns);

    let tcp = tokio::net::TcpListener::bind(cfg.listen)
        .await
        .with_context(|| format!("listening on {} (tcp)", cfg.listen))?;
    let https_addr = tcp.local_addr()?;

    // Admin credentials and the first join token, created once.
    let kubeconfig = cfg.data_dir.join("admin.kubeconfig");
    let url_host = if https_addr.ip().is_unspecified() {
        "127.0.0.1".to_string()
    } else {
        https_addr.ip().to_string()
    };
    let url = format!("https://{url_host}:{}", https_addr.port());
    kubernetes_service(&api, https_addr.port())?;
    // Alone (the embedded store), this server is the API; on etcd the live replicas are,
    // kept by [`follow_api_servers`] once this one's identity lease is up.
    if cfg.datastore.is_none()
        && let Ok(ip) = url_host.parse::<std::net::IpAddr>()
    {
        kubernetes_endpoints(&api, &[std::net::SocketAddr::new(ip, https_addr.port())])?;
    }
    // K3s' default StorageClass, served by the local-path plugin; kept as the user left it.
    ensure(
        &api,
        "storage.k8s.io/v1:StorageClass",
        "",
        json!({"metadata": {"name": "local-path",
                "annotations": {"storageclass.kubernetes.io/is-default-class": "true"}},
            "provisioner": "rancher.io/local-path", "reclaimPolicy": "Delete",
            "volumeBindingMode": "WaitForFirstConsumer"}),
    )?;
    // kedge's two runtimes as RuntimeClasses, each placing its pods on nodes that run it
    // (the labels the agent sets at registration); kept as the user left them.
    for (class, label) in [
        ("wasm", "kedge.io/runtime-wasm"),
        ("runc", "kedge.io/runtime-oci"),
    ] {
        ensure(
            &api,
            "node.k8s.io/v1:RuntimeClass",
            "",
            json!({"metadata": {"name": class}, "handler": class,
                "scheduling": {"nodeSelector": {label: "true"}}}),
        )?;
    }
    // Kubernetes' two system PriorityClasses.
    for (class, value) in crate::api::SYSTEM_PRIORITY_CLASSES {
        ensure(
            &api,
            "scheduling.k8s.io/v1:PriorityClass",
            "",
            json!({"metadata": {"name": class}, "value": value,
                "description": "Used for system critical pods that must not be moved from their current node."}),
        )?;
    }
    crate::api::rbac::ensure_bootstrap(&api)
        .map_err(|e| anyhow::anyhow!("creating the default RBAC roles: {e}"))?;
    let signer = Arc::new(
        crate::tokens::Signer::load_or_create(&cfg.data_dir.join("pki").join("sa.key"))
            .context("service account signing key")?,
    );
    let rbac = Arc::new(crate::api::rbac::Authorizer::new(api.clone()));
    {
        let (cert, key) = pki
            .issue_client(
                "kedge-admin",
                &["system:masters"],
                std::time::Duration::from_secs(365 * 86400),
            )
            .context("issuing the admin certificate")?;
        pki.write_kubeconfig(&kubeconfig, &url, "kedge-admin", &cert, &key)
            .context("writing the admin kubeconfig")?;
    }
    let token_file = cfg.data_dir.join("token");
    let join_token = match std::fs::read_to_string(&token_file) {
        Ok(t) if !t.trim().is_empty() => t.trim().to_string(),
        _ => {
            let token = BootstrapToken::generate();
            ensure(&api, "v1:Secret", "kube-system", token_secret(&token, None))?;
            let join = JoinToken {
                ca_hash: pki.ca_cert_hash(),
                token,
            }
            .to_string();
            write_private(&token_file, &format!("{join}\n"))?;
            join
        }
    };

    let replica = replica_name(&cfg.data_dir, cfg.replica_name.as_deref())?;
    let state = Arc::new(ApiState {
        api: api.clone(),
        nodes: std::sync::OnceLock::new(),
        clock: clock.clone(),
        ready: std::sync::atomic::AtomicBool::new(false),
        rbac: rbac.clone(),
        tokens: signer.clone(),
        relays: Default::default(),
        metrics: api_metrics,
        registry: Arc::new(registry),
    });
    let router = crate::api::http::router(state.clone());

    // Read before the tunnel accepts; kept current by the informer task below.
    let revocations = Arc::new(Revocations::default());
    crate::node_identity::load(&api, &revocations);
    let tunnel = TunnelServer::bind(
        https_addr,
        pki.clone(),
        Arc::new(StoreTokens {
            api: api.clone(),
            clock: clock.clone(),
        }),
        router.clone(),
        ServerOptions {
            node_cert_validity: cfg.node_cert_validity,
            revocations: revocations.clone(),
            metrics: tunnel_metrics,
        },
    )
    .context("starting the node tunnel (udp)")?;
    let tunnel_addr = tunnel.local_addr();
    let nodes = tunnel.nodes();
    // On etcd, requests for nodes another replica holds go through that replica.
    let forwarding_tls = match &cfg.datastore {
        Some(_) => Some(crate::forward::Forwarding::client_tls(&pki, &replica)?),
        None => None,
    };
    let _ = state.nodes.set(Arc::new(crate::forward::Forwarding {
        local: nodes.clone(),
        api: api.clone(),
        replica: replica.clone(),
        tls: forwarding_tls,
    }));

    let tasks = tokio_util::task::TaskTracker::new();
    if let Some(redb) = redb_store {
        tasks.spawn(maintain_store(redb, cancel.clone()));
    }
    tasks.spawn(tunnel.serve(cancel.clone()));
    tasks.spawn(record_tunnel_addresses(
        api.clone(),
        nodes.clone(),
        replica.clone(),
        cancel.clone(),
    ));
    let tls = tokio_rustls::TlsAcceptor::from(pki.https_server_config()?);
    // Replicas join through any server on etcd (`kedge server --server URL --token T`).
    let join_answer = match (&cfg.datastore, &server_token) {
        (Some(etcd), Some(token)) => Some(Arc::new(crate::join::Answer {
            secret: token.secret.clone(),
            datastore: etcd.clone(),
        })),
        _ => None,
    };
    tasks.spawn(serve_https(
        tcp,
        tls,
        crate::join::route(router, join_answer),
        revocations.clone(),
        cancel.clone(),
    ));

    let plugins = Arc::new(
        PluginHost::new(
            api.clone(),
            PluginConfig {
                cache_dir: cfg.plugin_cache_dir.clone(),
                ..cfg.plugins.clone()
            },
            cancel.clone(),
        )?
        .with_metrics(plugin_metrics),
    );
    // The controllers and the scheduler are Plugin objects: the built-in ones are created
    // when missing, then every Plugin starts from its spec (or, after a restart, from the
    // version that was running).
    let plugin_manager = PluginManager::new(
        plugins.clone(),
        api.clone(),
        default_plugins::ALL,
        &cfg.data_dir,
        cfg.registries.clone(),
    )?;
    tasks.spawn(crate::node_identity::run(
        plugins.informers().clone(),
        revocations,
        cancel.clone(),
    ));
    tasks.spawn(crate::api::rbac::run(
        rbac,
        plugins.informers().clone(),
        cancel.clone(),
    ));
    let election = match &cfg.datastore {
        Some(_) => {
            let mut e = kedge_plugins::lease::Election::new(replica.clone(), cfg.leader_election);
            // Where the other replicas (forwarding) and pods (the `kubernetes` Service) reach
            // this one's API: the address it listens on; when that is every address, an IP
            // among the certificate's names, else the address this machine reaches etcd
            // from (its way out, as kube-apiserver's --advertise-address defaults to the
            // default route's), else the hostname.
            let host = if https_addr.ip().is_unspecified() {
                cfg.tls_sans
                    .iter()
                    .find(|s| s.parse::<std::net::IpAddr>().is_ok())
                    .cloned()
                    .or_else(|| cfg.datastore.as_ref().and_then(outbound_ip))
                    .or_else(|| cfg.tls_sans.first().cloned())
                    .or_else(hostname)
                    .unwrap_or_else(|| "localhost".into())
            } else {
                https_addr.ip().to_string()
            };
            e.address = Some(if host.contains(':') && !host.starts_with('[') {
                format!("[{host}]:{}", https_addr.port())
            } else {
                format!("{host}:{}", https_addr.port())
            });
            Some(e)
        }
        None => None,
    };
    // Kubernetes' tokens controller (legacy service-account token Secrets): on etcd one
    // replica at a time runs it, the holder of its own Lease, as kube-controller-manager's
    // controllers are leader-elected; alone, this server runs it.
    tasks.spawn(legacy_tokens(
        api.clone(),
        plugins.informers().clone(),
        signer,
        pki.ca_pem().to_string(),
        election.clone(),
        cancel.clone(),
    ));
    let startup: PluginStartup = {
        let manager = plugin_manager.clone();
        let (api, cancel) = (api.clone(), cancel.clone());
        Box::pin(async move {
            if let Some(e) = &election {
                // Counted among the replicas before the plugins' elections start.
                e.keep_identity(api.clone(), cancel.clone()).await;
                tokio::spawn(follow_api_servers(
                    api,
                    e.live_servers(),
                    e.timings.retry_period * 5,
                    cancel,
                ));
                tracing::info!(replica = %replica, "plugins run where their leases are held");
            }
            manager.set_replica(kedge_plugins::manager::Replica {
                identity: replica,
                election,
            });
            manager.install_builtins().await?;
            manager.start().await;
            state
                .ready
                .store(true, std::sync::atomic::Ordering::Release);
            tracing::info!(%https_addr, %tunnel_addr, "kedge server ready");
            Ok(())
        })
    };
    let server = Server {
        api,
        https_addr,
        tunnel_addr,
        kubeconfig,
        join_token,
        plugins,
        plugin_manager,
        nodes,
        tasks,
    };
    Ok((server, startup))
}

/// The lease the legacy token controller runs under on etcd.
const TOKENS_LEASE: &str = "kedge-controller-tokens";

/// [`crate::tokens::run_legacy`] while this replica holds [`TOKENS_LEASE`] (always, without an
/// election), until `cancel`.
async fn legacy_tokens(
    api: Arc<Api>,
    informers: Arc<crate::store::informer::Informers>,
    signer: Arc<crate::tokens::Signer>,
    ca_pem: String,
    election: Option<kedge_plugins::lease::Election>,
    cancel: CancellationToken,
) {
    let Some(election) = election else {
        crate::tokens::run_legacy(api, informers, signer, ca_pem, cancel).await;
        return;
    };
    let mut leading = election.elect(api.clone(), TOKENS_LEASE.to_string(), cancel.clone());
    loop {
        if leading.wait_for(|l| *l).await.is_err() || cancel.is_cancelled() {
            return;
        }
        tracing::info!("running the legacy service-account token controller (its lease is here)");
        let stop = cancel.child_token();
        let run = crate::tokens::run_legacy(
            api.clone(),
            informers.clone(),
            signer.clone(),
            ca_pem.clone(),
            stop.clone(),
        );
        tokio::pin!(run);
        tokio::select! {
            _ = &mut run => return,
            gone = async { leading.wait_for(|l| !*l).await.is_err() } => {
                stop.cancel();
                run.await;
                if gone {
                    return;
                }
            }
        }
    }
}

/// HTTPS accept loop: TLS with optional client certificates; the certificate's subject becomes
/// the request's [`Identity`] (no certificate: anonymous, refused by the API with 401).
async fn serve_https(
    tcp: tokio::net::TcpListener,
    tls: tokio_rustls::TlsAcceptor,
    router: axum::Router,
    revocations: Arc<Revocations>,
    cancel: CancellationToken,
) {
    let conns = tokio_util::task::TaskTracker::new();
    loop {
        let (sock, peer) = tokio::select! {
            _ = cancel.cancelled() => break,
            a = tcp.accept() => match a {
                Ok(x) => x,
                Err(e) => {
                    tracing::warn!(error = %e, "accept failed");
                    continue;
                }
            },
        };
        let tls = tls.clone();
        let router = router.clone();
        let cancel = cancel.clone();
        let revocations = revocations.clone();
        conns.spawn(async move {
            let stream = match tls.accept(sock).await {
                Ok(s) => s,
                Err(e) => {
                    tracing::debug!(%peer, error = %e, "tls handshake failed");
                    return;
                }
            };
            let leaf = stream.get_ref().1.peer_certificates().and_then(|c| c.first());
            let identity: Option<Identity> = leaf.and_then(identity_from_cert);
            // A node certificate is checked against the revocation list on every request,
            // since a connection can outlive the revocation.
            let node_cert = leaf.and_then(kedge_tunnel::revocation::node_cert);
            let svc = tower::ServiceExt::map_request(
                router,
                move |mut req: http::Request<hyper::body::Incoming>| {
                    let revoked = node_cert.as_ref().and_then(|(node, issued)| {
                        revocations.check(node, *issued).err()
                    });
                    match (&identity, revoked) {
                        (Some(_), Some(r)) => {
                            tracing::warn!(%peer, reason = %r, "refusing a revoked node certificate")
                        }
                        (Some(id), None) => {
                            req.extensions_mut().insert(id.clone());
                        }
                        (None, _) => {}
                    }
                    req
                },
            );
            let svc = hyper_util::service::TowerToHyperService::new(svc);
            let conn = hyper::server::conn::http1::Builder::new()
                .serve_connection(TokioIo::new(stream), svc)
                .with_upgrades();
            tokio::pin!(conn);
            tokio::select! {
                r = conn.as_mut() => {
                    if let Err(e) = r {
                        tracing::debug!(%peer, error = %e, "connection ended with error");
                    }
                }
                _ = cancel.cancelled() => {
                    conn.as_mut().graceful_shutdown();
                    let _ = tokio::time::timeout(std::time::Duration::from_secs(5), conn).await;
                }
            }
        });
    }
    conns.close();
    let _ = tokio::time::timeout(std::time::Duration::from_secs(5), conns.wait()).await;
}

#[cfg(test)]
mod tests {
    /// The API validates `spec.source.builtin` against its own list of names (it does not
    /// depend on the embedded guests): that list and the embedded set must agree.
    #[test]
    fn builtin_plugin_names_are_the_embedded_set() {
        let embedded: Vec<&str> = super::default_plugins::ALL
            .iter()
            .map(|(n, _)| *n)
            .collect();
        assert_eq!(embedded, crate::api::plugin_kind::BUILTIN_NAMES);
    }

    /// The `kubernetes` Service's endpoints list the servers given: a subset and a slice per
    /// port, and what is no longer given goes (a slice of a port nobody serves on too).
    #[test]
    fn the_kubernetes_endpoints_list_the_live_servers() {
        use super::*;
        let dir = tempfile::tempdir().unwrap();
        let store = RedbStore::open(
            &dir.path().join("s"),
            StoreOptions {
                durable: false,
                ..Default::default()
            },
        )
        .unwrap();
        let api = Api::new(Arc::new(store), crate::api::ops::system_clock());
        ensure(
            &api,
            "v1:Namespace",
            "",
            json!({"metadata": {"name": "default"}}),
        )
        .unwrap();
        let at = |s: &[&str]| {
            s.iter()
                .map(|a| a.parse().unwrap())
                .collect::<Vec<SocketAddr>>()
        };
        let endpoints = |api: &Api| {
            let ep = api
                .get(
                    resources::by_kind("v1", "Endpoints").unwrap(),
                    "default",
                    "kubernetes",
                )
                .unwrap();
            ep["subsets"].clone()
        };
        let slice = |api: &Api, name: &str| {
            api.get(
                resources::by_kind("discovery.k8s.io/v1", "EndpointSlice").unwrap(),
                "default",
                name,
            )
            .ok()
        };
        kubernetes_endpoints(
            &api,
            &at(&["10.0.0.2:6443", "10.0.0.1:6443", "127.0.0.1:7000"]),
        )
        .unwrap();
        assert_eq!(
            endpoints(&api),
            json!([
                {"addresses": [{"ip": "10.0.0.1"}, {"ip": "10.0.0.2"}],
                 "ports": [{"name": "https", "port": 6443, "protocol": "TCP"}]},
                {"addresses": [{"ip": "127.0.0.1"}],
                 "ports": [{"name": "https", "port": 7000, "protocol": "TCP"}]},
            ])
        );
        let main = slice(&api, "kubernetes").unwrap();
        assert_eq!(main["endpoints"].as_array().unwrap().len(), 2);
        assert_eq!(main["ports"][0]["port"], 6443);
        assert_eq!(
            slice(&api, "kubernetes-7000").unwrap()["endpoints"][0]["addresses"],
            json!(["127.0.0.1"])
        );
        // Unchanged: nothing written.
        let rv = main["metadata"]["resourceVersion"].clone();
        kubernetes_endpoints(
            &api,
            &at(&["10.0.0.1:6443", "10.0.0.2:6443", "127.0.0.1:7000"]),
        )
        .unwrap();
        assert_eq!(
            slice(&api, "kubernetes").unwrap()["metadata"]["resourceVersion"],
            rv
        );
        // One server left.
        kubernetes_endpoints(&api, &at(&["10.0.0.2:6443"])).unwrap();
        assert_eq!(endpoints(&api).as_array().unwrap().len(), 1);
        assert_eq!(
            slice(&api, "kubernetes").unwrap()["endpoints"],
            json!([{"addresses": ["10.0.0.2"], "conditions": {"ready": true}}])
        );
        assert!(slice(&api, "kubernetes-7000").is_none());
    }
}
