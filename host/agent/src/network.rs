//! The node's side of service networking (issue 15), wired from [`kedge_net`]:
//!
//! - the pod network: every pod that does not ask for `hostNetwork` gets its own network
//!   namespace and an address of the node's podCIDR through the CNI plugins; without root,
//!   the plugins or a podCIDR, pods share the node's network, and the Node says so (the
//!   `kedge.io/pod-network` label the scheduler reads, and a `PodNetworkUnavailable`
//!   Event);
//! - the node's view of Services and EndpointSlices (a list and watch through the tunnel,
//!   kept on disk so it survives an agent restart while the server is away), which feeds the
//!   service proxy, the node-local DNS server and the service environment variables.

use std::collections::{BTreeMap, HashMap};
use std::net::Ipv4Addr;
use std::path::{Path, PathBuf};
use std::sync::{Arc, Mutex, OnceLock};
use std::time::Duration;

use kedge_core::meta;
use kedge_net::cni::{Cni, CniConfig, PortMapping};
use kedge_net::netns::Executor;
use serde_json::{Value, json};
use tokio::sync::watch;
use tokio_util::sync::CancellationToken;

use super::client::Client;

/// `--pod-network`.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum PodNetworkMode {
    /// A pod network when the node can have one (root, the CNI plugins, a podCIDR).
    Auto,
    /// Every pod on the node's network, as before the pod network existed.
    Host,
}

impl std::str::FromStr for PodNetworkMode {
    type Err = String;
    fn from_str(s: &str) -> Result<Self, String> {
        match s {
            "auto" | "cni" => Ok(Self::Auto),
            "host" => Ok(Self::Host),
            _ => Err(format!("pod network {s:?}: expected auto or host")),
        }
    }
}

/// `--proxy-mode`.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum ProxyMode {
    /// nftables as root with `nft`, else userspace.
    Auto,
    Nftables,
    Userspace,
    /// No service proxy on this node.
    None,
}

impl std::str::FromStr for ProxyMode {
    type Err = String;
    fn from_str(s: &str) -> Result<Self, String> {
        match s {
            "auto" | "" => Ok(Self::Auto),
            "nftables" => Ok(Self::Nftables),
            "userspace" => Ok(Self::Userspace),
            "none" => Ok(Self::None),
            _ => Err(format!(
                "proxy mode {s:?}: expected nftables, userspace, auto or none"
            )),
        }
    }
}

/// The node's networking settings (agent flags).
#[derive(Clone, Debug)]
pub struct NetworkConfig {
    pub pod_network: PodNetworkMode,
    pub proxy_mode: ProxyMode,
    /// The whole cluster's pod range (`--cluster-cidr`): traffic within it is not
    /// masqueraded.
    pub cluster_cidr: (Ipv4Addr, u8),
    /// The node-local DNS server's address (`--cluster-dns`, the `kube-dns` Service's IP);
    /// `None`: no cluster DNS on this node.
    pub cluster_dns: Option<Ipv4Addr>,
    /// `--cluster-domain`.
    pub cluster_domain: String,
    /// Where the CNI plugins are.
    pub cni_bin_dirs: Vec<PathBuf>,
    /// The bridge pods join.
    pub bridge: String,
    /// K3s' ServiceLB: LoadBalancer Services listen on this node.
    pub service_lb: bool,
}

impl Default for NetworkConfig {
    fn default() -> Self {
        NetworkConfig {
            pod_network: PodNetworkMode::Auto,
            proxy_mode: ProxyMode::Auto,
            cluster_cidr: (Ipv4Addr::new(10, 42, 0, 0), 16),
            cluster_dns: Some(Ipv4Addr::new(10, 43, 0, 10)),
            cluster_domain: "cluster.local".into(),
            cni_bin_dirs: kedge_net::cni::DEFAULT_BIN_DIRS
                .iter()
                .map(PathBuf::from)
                .collect(),
            bridge: "kedge0".into(),
            service_lb: true,
        }
    }
}

use kedge_net::cidr::contains as cidr_contains;
pub use kedge_net::cidr::parse as parse_cidr;

/// How this node's pods are networked.
pub(crate) enum Mode {
    Cni {
        cni: Cni,
        pod_cidr: (Ipv4Addr, u8),
    },
    /// The node's network, and why.
    Host(String),
}

/// One pod's network.
pub(crate) struct PodNet {
    pub ip: Ipv4Addr,
    pub netns: PathBuf,
    /// The runtime its Wasm containers run on, started with the first of them.
    executor: OnceLock<Arc<Executor>>,
}

impl PodNet {
    /// A handle of the runtime inside the pod's namespace, for the Wasm runtime.
    pub fn handle(&self) -> std::io::Result<tokio::runtime::Handle> {
        if let Some(e) = self.executor.get() {
            return Ok(e.handle());
        }
        let e = Executor::start(&self.netns)?;
        Ok(self.executor.get_or_init(|| e).handle())
    }
}

/// The node's networking state.
pub(crate) struct Network {
    pub cfg: NetworkConfig,
    pub mode: Mode,
    pods: Mutex<HashMap<String, Arc<PodNet>>>,
    /// The node's resolv.conf as it was at start (what `Default` pods get and what DNS
    /// forwards to).
    pub host_resolv: String,
    /// Whether the node-local DNS server is serving (ClusterFirst pods point at it).
    pub dns_up: std::sync::atomic::AtomicBool,
    /// The Services and EndpointSlices this node knows.
    pub view: watch::Sender<View>,
    /// The agent's own forwarders on the pod bridge (with a pod network only).
    forwarders: Option<Forwarders>,
    /// `ip:port` of the `kubernetes` Service once this node's proxy serves it (pods with
    /// their own network are pointed at it, as kubelet points them at the Service).
    pub api_service: Mutex<Option<String>>,
    /// The nodes whose pods this node cannot route to (behind another NAT, or on another
    /// network): their Service endpoints are reached through the server's relay.
    pub unreachable: watch::Sender<std::collections::BTreeSet<String>>,
    /// Turns true once the proxy and DNS have served the Services as first listed (or as
    /// recorded, when the server is away): pods start after it, so their resolv.conf and
    /// `KUBERNETES_SERVICE_HOST` are right from their first container on.
    pub served: watch::Sender<bool>,
    /// Which of the two lists (1: Services, 2: EndpointSlices) arrived since the start.
    listed: std::sync::atomic::AtomicU8,
}

/// What the node knows of the cluster's Services.
#[derive(Clone, Debug, Default)]
pub(crate) struct View {
    pub services: BTreeMap<String, Value>,
    pub slices: BTreeMap<String, Value>,
}

impl View {
    pub fn services_in(&self, ns: &str) -> Vec<Value> {
        self.services
            .values()
            .filter(|s| meta::namespace(s) == ns)
            .cloned()
            .collect()
    }
}

/// What the node recorded of its network: the podCIDR it was given, so a restart while the
/// server is away sets pods up the same way.
fn record_path(data_dir: &Path) -> PathBuf {
    data_dir.join("network.json")
}

/// The podCIDR this node recorded, if it ever had one.
pub(crate) fn recorded_pod_cidr(data_dir: &Path) -> Option<String> {
    std::fs::read(record_path(data_dir))
        .ok()
        .and_then(|b| serde_json::from_slice::<Value>(&b).ok())
        .and_then(|v| v["podCIDR"].as_str().map(str::to_owned))
}

/// Records the podCIDR the node's pod network uses (read at the next start).
pub(crate) fn record_pod_cidr(data_dir: &Path, cidr: &str) {
    if let Err(e) = std::fs::write(
        record_path(data_dir),
        serde_json::to_vec(&json!({"podCIDR": cidr})).expect("JSON"),
    ) {
        tracing::warn!(error = %e, "recording the podCIDR failed");
    }
}

impl Network {
    /// Decides how pods are networked. Waits (bounded) for the Node's podCIDR when the node
    /// has never had one; the Node is registered meanwhile by the node loop.
    pub async fn init(
        cfg: NetworkConfig,
        data_dir: &Path,
        client: &Client,
        node: &str,
        cancel: &CancellationToken,
    ) -> Network {
        // As kubelet and K3s do: with systemd-resolved, /etc/resolv.conf names its stub on
        // 127.0.0.53, which a pod's own namespace (and the DNS server forwarding for it)
        // cannot use; the real upstreams are in resolved's own file.
        let host_resolv = ["/run/systemd/resolve/resolv.conf", "/etc/resolv.conf"]
            .iter()
            .find_map(|p| std::fs::read_to_string(p).ok())
            .unwrap_or_default();
        let mode = Self::decide(&cfg, data_dir, client, node, cancel).await;
        match &mode {
            Mode::Cni { pod_cidr, .. } => {
                tracing::info!(pod_cidr = %format!("{}/{}", pod_cidr.0, pod_cidr.1), "pods get their own network (CNI)")
            }
            Mode::Host(why) => tracing::warn!(%why, "pods share the node's network"),
        }
        let forwarders = match &mode {
            Mode::Cni { pod_cidr, .. } => match ensure_bridge(&cfg.bridge, *pod_cidr).await {
                Ok(()) => Some(Forwarders::new(gateway_of(*pod_cidr), client.clone())),
                Err(e) => {
                    tracing::warn!(error = %e, "no pod bridge yet: in-cluster clients use the API server's own address");
                    None
                }
            },
            Mode::Host(_) => None,
        };
        Network {
            cfg,
            mode,
            pods: Mutex::default(),
            host_resolv,
            dns_up: std::sync::atomic::AtomicBool::new(false),
            view: watch::Sender::new(View::default()),
            forwarders,
            api_service: Mutex::default(),
            unreachable: watch::Sender::new(Default::default()),
            served: watch::Sender::new(false),
            listed: std::sync::atomic::AtomicU8::new(0),
        }
    }

    async fn decide(
        cfg: &NetworkConfig,
        data_dir: &Path,
        client: &Client,
        node: &str,
        cancel: &CancellationToken,
    ) -> Mode {
        if cfg.pod_network == PodNetworkMode::Host {
            return Mode::Host("--pod-network host".into());
        }
        if !kedge_net::netns::can_manage() {
            return Mode::Host(
                "the agent is not root (or iproute2 is missing): no pod network namespaces".into(),
            );
        }
        if let Err(e) = kedge_net::cni::find_plugins(&cfg.cni_bin_dirs) {
            return Mode::Host(format!(
                "{e} (install the CNI plugins, e.g. Debian's containernetworking-plugins)"
            ));
        }
        let recorded = recorded_pod_cidr(data_dir);
        let cidr = match recorded {
            Some(c) => Some(c),
            None => wait_for_pod_cidr(client, node, cancel).await,
        };
        let Some(cidr) = cidr else {
            return Mode::Host(
                "the Node has no spec.podCIDR (the server did not allocate one)".into(),
            );
        };
        let pod_cidr = match parse_cidr(&cidr) {
            Ok(c) => c,
            Err(e) => return Mode::Host(format!("spec.podCIDR {e}")),
        };
        record_pod_cidr(data_dir, &cidr);
        let masq = install_masquerade(node, pod_cidr, cfg.cluster_cidr, cfg.cluster_dns).await;
        if let Err(e) = &masq {
            tracing::warn!(error = %e, "no nftables masquerade rule; the bridge plugin masquerades instead");
        }
        match Cni::new(CniConfig {
            bin_dirs: cfg.cni_bin_dirs.clone(),
            state_dir: data_dir.join("cni"),
            pod_cidr,
            bridge: cfg.bridge.clone(),
            ip_masq: masq.is_err(),
        }) {
            Ok(cni) => Mode::Cni { cni, pod_cidr },
            Err(e) => Mode::Host(e.to_string()),
        }
    }

    pub fn is_cni(&self) -> bool {
        matches!(self.mode, Mode::Cni { .. })
    }

    /// The pod's network: `None` on the node's network (`hostNetwork`, or no pod network).
    pub async fn setup(&self, pod: &Value) -> Result<Option<Arc<PodNet>>, String> {
        let Mode::Cni { cni, .. } = &self.mode else {
            return Ok(None);
        };
        if host_network(pod) {
            return Ok(None);
        }
        let uid = meta::uid(pod).to_string();
        if let Some(n) = self
            .pods
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .get(&uid)
        {
            return Ok(Some(n.clone()));
        }
        let ports = host_ports(pod);
        let net = cni
            .setup(&uid, meta::namespace(pod), meta::name(pod), &ports)
            .await
            .map_err(|e| e.to_string())?;
        let n = Arc::new(PodNet {
            ip: net.ip,
            netns: net.netns,
            executor: OnceLock::new(),
        });
        self.pods
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .insert(uid, n.clone());
        Ok(Some(n))
    }

    /// The network of a running pod, if it has its own.
    pub fn pod(&self, uid: &str) -> Option<Arc<PodNet>> {
        self.pods
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .get(uid)
            .cloned()
    }

    /// Removes the pod's network (it is gone, or finished).
    pub async fn teardown(&self, uid: &str) {
        let Mode::Cni { cni, .. } = &self.mode else {
            return;
        };
        // Dropping the last handle stops the pod's Wasm runtime thread.
        self.pods
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .remove(uid);
        if let Err(e) = cni.teardown(uid).await {
            tracing::warn!(%uid, error = %e, "tearing down the pod's network failed");
        }
    }

    /// Tears down the networks of pods that are neither running nor expected (left by a
    /// previous agent process for pods deleted while it was away).
    pub async fn collect_garbage(&self, keep: &[String]) {
        let Mode::Cni { cni, .. } = &self.mode else {
            return;
        };
        // Whatever is not kept goes, also a network still in the running map: its pod was
        // dropped by a relist (deleted while the node was away) and has no other way out.
        for uid in cni.known() {
            if !keep.contains(&uid) {
                tracing::info!(%uid, "removing the network of a pod that is gone");
                self.teardown(&uid).await;
            }
        }
    }

    /// The pod's `/etc/resolv.conf`, by its `dnsPolicy`.
    /// Whether pods are pointed at the cluster DNS (configured, and this node serves it).
    pub fn cluster_dns_serving(&self) -> bool {
        self.cfg.cluster_dns.is_some() && self.dns_up.load(std::sync::atomic::Ordering::Relaxed)
    }

    pub fn resolv_conf(&self, pod: &Value) -> Result<String, String> {
        let dns_up = self.dns_up.load(std::sync::atomic::Ordering::Relaxed);
        let cfg = kedge_net::resolv::ResolvConfig {
            cluster_dns: match (dns_up, self.cfg.cluster_dns) {
                (true, Some(ip)) => vec![ip.into()],
                _ => Vec::new(),
            },
            domain: self.cfg.cluster_domain.clone(),
            host_resolv_conf: self.host_resolv.clone(),
        };
        let out = kedge_net::resolv::resolv_conf(pod, &cfg).map_err(|e| e.to_string())?;
        for w in &out.warnings {
            tracing::warn!(pod = %format!("{}/{}", meta::namespace(pod), meta::name(pod)), warning = %w, "resolv.conf");
        }
        Ok(out.text)
    }
}

/// The pod's `/etc/hosts`, as kubelet writes it for a pod with its own network: localhost,
/// the pod's address with its hostname (and FQDN under a subdomain), then `hostAliases`.
pub(crate) fn hosts_file(pod: &Value, ip: Ipv4Addr, domain: &str) -> String {
    let name = pod
        .pointer("/spec/hostname")
        .and_then(Value::as_str)
        .filter(|h| !h.is_empty())
        .unwrap_or_else(|| meta::name(pod));
    let mut out = String::from(
        "# Kubernetes-managed hosts file.\n127.0.0.1\tlocalhost\n::1\tlocalhost ip6-localhost ip6-loopback\nfe00::0\tip6-localnet\nfe00::0\tip6-mcastprefix\nfe00::1\tip6-allnodes\nfe00::2\tip6-allrouters\n",
    );
    match pod
        .pointer("/spec/subdomain")
        .and_then(Value::as_str)
        .filter(|s| !s.is_empty())
    {
        Some(sub) => {
            let ns = meta::namespace(pod);
            out.push_str(&format!("{ip}\t{name}.{sub}.{ns}.svc.{domain}\t{name}\n"));
        }
        None => out.push_str(&format!("{ip}\t{name}\n")),
    }
    out.push_str(&host_aliases(pod));
    out
}

/// The `/etc/hosts` of a pod on the node's network: the node's own file, then the pod's
/// `hostAliases` (kubelet's rule for `hostNetwork` pods).
pub(crate) fn node_hosts_file(pod: &Value) -> String {
    let mut out = std::fs::read_to_string("/etc/hosts").unwrap_or_else(|_| {
        "127.0.0.1\tlocalhost\n::1\tlocalhost ip6-localhost ip6-loopback\n".into()
    });
    out.push_str(&host_aliases(pod));
    out
}

fn host_aliases(pod: &Value) -> String {
    let mut out = String::new();
    for a in pod
        .pointer("/spec/hostAliases")
        .and_then(Value::as_array)
        .into_iter()
        .flatten()
    {
        let names: Vec<&str> = a["hostnames"]
            .as_array()
            .into_iter()
            .flatten()
            .filter_map(Value::as_str)
            .collect();
        if let Some(aip) = a["ip"].as_str()
            && !names.is_empty()
        {
            if out.is_empty() {
                out.push_str("\n# Entries added by HostAliases.\n");
            }
            out.push_str(&format!("{aip}\t{}\n", names.join("\t")));
        }
    }
    out
}

pub(crate) fn host_network(pod: &Value) -> bool {
    pod.pointer("/spec/hostNetwork")
        .and_then(Value::as_bool)
        .unwrap_or(false)
}

/// The pod's `hostPort`s, for `portmap`.
fn host_ports(pod: &Value) -> Vec<PortMapping> {
    let mut out = Vec::new();
    for key in ["initContainers", "containers"] {
        for c in pod
            .pointer(&format!("/spec/{key}"))
            .and_then(Value::as_array)
            .into_iter()
            .flatten()
        {
            for p in c["ports"].as_array().into_iter().flatten() {
                let (Some(hp), Some(cp)) = (p["hostPort"].as_u64(), p["containerPort"].as_u64())
                else {
                    continue;
                };
                let (Ok(hp), Ok(cp)) = (u16::try_from(hp), u16::try_from(cp)) else {
                    continue;
                };
                if hp == 0 {
                    continue;
                }
                out.push(PortMapping {
                    host_port: hp,
                    container_port: cp,
                    protocol: p["protocol"].as_str().unwrap_or("TCP").to_lowercase(),
                    host_ip: p["hostIP"]
                        .as_str()
                        .filter(|s| !s.is_empty())
                        .map(str::to_owned),
                });
            }
        }
    }
    out
}

/// Polls the Node until the server has given it a podCIDR (it does at registration; an
/// older or differently configured server never does: then after a bound, `None`).
async fn wait_for_pod_cidr(
    client: &Client,
    node: &str,
    cancel: &CancellationToken,
) -> Option<String> {
    let path = format!("/api/v1/nodes/{node}");
    let deadline = tokio::time::Instant::now() + Duration::from_secs(60);
    let mut found_node = false;
    while tokio::time::Instant::now() < deadline {
        if let Ok(n) = client.get(&path).await {
            if let Some(c) = n.pointer("/spec/podCIDR").and_then(Value::as_str) {
                return Some(c.to_owned());
            }
            if found_node {
                // Registered, seen twice, still without one: the server does not allocate.
                return None;
            }
            found_node = true;
        }
        tokio::select! {
            () = cancel.cancelled() => return None,
            () = tokio::time::sleep(Duration::from_millis(250)) => {}
        }
    }
    None
}

/// The nftables table of this node's pod masquerade rule: one per node name, so agents that
/// share a machine (tests, `kedge dev` beside another agent) do not overwrite each other.
fn masq_table(node: &str) -> String {
    format!("kedge_masq_{}", nft_name(node))
}

/// The nftables table of this node's redirects to pods behind other NATs.
fn far_table(node: &str) -> String {
    format!("kedge_far_{}", nft_name(node))
}

/// A node name as nftables accepts it in a table name.
fn nft_name(node: &str) -> String {
    node.chars()
        .map(|c| if c.is_ascii_alphanumeric() { c } else { '_' })
        .take(40)
        .collect()
}

/// Masquerades what pods send out of the cluster (not to other pods: pod-to-pod traffic keeps
/// its source address across nodes, as Kubernetes requires), and keeps the node-local DNS
/// server to pods and the node itself (it is no open resolver for a LAN that routes the
/// cluster DNS address to the node).
async fn install_masquerade(
    node: &str,
    (pod_net, pod_len): (Ipv4Addr, u8),
    (cl_net, cl_len): (Ipv4Addr, u8),
    dns: Option<Ipv4Addr>,
) -> Result<(), String> {
    let table = masq_table(node);
    let guard = dns
        .map(|ip| {
            format!(
                "  chain dns_guard {{\n    type filter hook input priority 0; policy accept;\n    ip daddr {ip} meta l4proto {{ tcp, udp }} th dport 53 ip saddr != {{ {cl_net}/{cl_len}, 127.0.0.0/8 }} fib saddr type != local drop\n  }}\n"
            )
        })
        .unwrap_or_default();
    let rules = format!(
        "table ip {table} {{}}\ndelete table ip {table}\ntable ip {table} {{\n  chain postrouting {{\n    type nat hook postrouting priority srcnat; policy accept;\n    ip saddr {pod_net}/{pod_len} ip daddr != {cl_net}/{cl_len} ip daddr != 224.0.0.0/4 masquerade\n  }}\n{guard}}}\n"
    );
    nft_apply(&rules).await
}

async fn nft_apply(rules: &str) -> Result<(), String> {
    kedge_net::nft::apply_script(rules)
        .await
        .map_err(|e| e.to_string())
}

/// Runs `ip` with `args`; its stdout, or what it said on stderr.
async fn ip(args: &[&str]) -> Result<String, String> {
    let out = tokio::process::Command::new("ip")
        .args(args)
        .output()
        .await
        .map_err(|e| format!("ip: {e}"))?;
    if out.status.success() {
        Ok(String::from_utf8_lossy(&out.stdout).into_owned())
    } else {
        Err(format!(
            "ip {}: {}",
            args.join(" "),
            String::from_utf8_lossy(&out.stderr).trim()
        ))
    }
}

/// The label the scheduler reads to know whether a node's pods share its network.
pub(crate) const POD_NETWORK_LABEL: &str = "kedge.io/pod-network";
/// Whether the node serves LoadBalancer Services (`"false"` with `--disable-servicelb`): the
/// servicelb plugin lists the addresses of the nodes that do as the Services' ingress.
pub(crate) const SERVICE_LB_LABEL: &str = "kedge.io/servicelb";

impl Network {
    /// The value of [`POD_NETWORK_LABEL`] for this node.
    pub fn label(&self) -> &'static str {
        if self.is_cni() { "cni" } else { "host" }
    }
}

/// Tells the cluster how this node networks its pods: the Node's label (retried until it
/// lands; the node loop keeps it on re-registration) and, without a pod network, a Warning
/// Event saying why.
pub(crate) async fn announce(ctx: &super::Ctx, cancel: &CancellationToken) {
    let net = ctx.net();
    if let Mode::Host(why) = &net.mode {
        ctx.events
            .node(
                super::events::Kind::Warning,
                "PodNetworkUnavailable",
                &format!("pods share the node's network: {why}"),
            )
            .await;
    }
    let patch = json!({"metadata": {"labels": {
        POD_NETWORK_LABEL: net.label(),
        SERVICE_LB_LABEL: net.cfg.service_lb.to_string(),
    }}});
    let path = format!("/api/v1/nodes/{}", ctx.node);
    let mut wait = Duration::from_millis(200);
    loop {
        match ctx.client.merge_patch(&path, &patch).await {
            Ok(_) => return,
            Err(e) => tracing::debug!(error = %e, "labelling the node failed; retrying"),
        }
        tokio::select! {
            () = cancel.cancelled() => return,
            () = tokio::time::sleep(wait) => {}
        }
        wait = (wait * 2).min(Duration::from_secs(10));
    }
}

/// Where the node keeps its last view of Services and EndpointSlices.
fn view_path(data_dir: &Path) -> PathBuf {
    data_dir.join("service-view.json")
}

fn load_view(data_dir: &Path) -> View {
    let Ok(bytes) = std::fs::read(view_path(data_dir)) else {
        return View::default();
    };
    let Ok(v) = serde_json::from_slice::<Value>(&bytes) else {
        return View::default();
    };
    let map = |k: &str| -> BTreeMap<String, Value> {
        v[k].as_array()
            .into_iter()
            .flatten()
            .map(|o| (key_of(o), o.clone()))
            .collect()
    };
    View {
        services: map("services"),
        slices: map("slices"),
    }
}

fn save_view(data_dir: &Path, view: &View) {
    let v = json!({
        "services": view.services.values().collect::<Vec<_>>(),
        "slices": view.slices.values().collect::<Vec<_>>(),
    });
    let p = view_path(data_dir);
    let tmp = p.with_extension("tmp");
    let write = || -> std::io::Result<()> {
        std::fs::write(&tmp, serde_json::to_vec(&v)?)?;
        std::fs::rename(&tmp, &p)
    };
    if let Err(e) = write() {
        tracing::warn!(error = %e, "could not record the service view");
    }
}

fn key_of(o: &Value) -> String {
    format!("{}/{}", meta::namespace(o), meta::name(o))
}

/// What a watch tells its owner.
enum Change {
    /// The whole list (after a list or relist).
    Replace(BTreeMap<String, Value>),
    Put(String, Value),
    Delete(String),
}

/// Lists and watches `path` for good (relisting on 410 and after errors, with backoff),
/// handing every change to `apply`. While the server is unreachable nothing changes: the
/// owner keeps what it had.
async fn watch_objects(
    client: Client,
    path: &'static str,
    apply: impl Fn(Change) + Send,
    cancel: CancellationToken,
) {
    let mut resume: Option<String> = None;
    let mut failures = 0u32;
    loop {
        if failures > 0 {
            let wait = Duration::from_millis(200 * (1 << failures.min(5)));
            tokio::select! {
                () = cancel.cancelled() => return,
                () = tokio::time::sleep(wait) => {}
            }
        }
        let rv = match resume.clone() {
            Some(rv) => rv,
            None => {
                let list = tokio::select! {
                    () = cancel.cancelled() => return,
                    l = client.get(path) => l,
                };
                let list = match list {
                    Ok(l) => l,
                    Err(e) => {
                        failures += 1;
                        tracing::debug!(error = %e, path, "listing failed");
                        continue;
                    }
                };
                let items: BTreeMap<String, Value> = list["items"]
                    .as_array()
                    .into_iter()
                    .flatten()
                    .map(|o| (key_of(o), o.clone()))
                    .collect();
                apply(Change::Replace(items));
                list["metadata"]["resourceVersion"]
                    .as_str()
                    .unwrap_or("0")
                    .to_owned()
            }
        };
        let watch_path = format!("{path}?watch=true&resourceVersion={rv}&allowWatchBookmarks=true");
        let w = tokio::select! {
            () = cancel.cancelled() => return,
            w = client.watch(&watch_path) => w,
        };
        let mut w = match w {
            Ok(w) => w,
            Err(e) => {
                failures += 1;
                if e.code() == Some(410) {
                    resume = None;
                }
                continue;
            }
        };
        failures = 0;
        resume = Some(rv);
        loop {
            let ev = tokio::select! {
                () = cancel.cancelled() => return,
                e = w.next() => e,
            };
            let Some(Ok(ev)) = ev else {
                failures = 1;
                break;
            };
            let obj = &ev["object"];
            if let Some(rv) = obj
                .pointer("/metadata/resourceVersion")
                .and_then(Value::as_str)
            {
                resume = Some(rv.to_owned());
            }
            match ev["type"].as_str() {
                Some("ADDED" | "MODIFIED") => apply(Change::Put(key_of(obj), obj.clone())),
                Some("DELETED") => apply(Change::Delete(key_of(obj))),
                Some("ERROR") => {
                    resume = None;
                    break;
                }
                _ => {}
            }
        }
    }
}

fn apply_to(map: &mut BTreeMap<String, Value>, change: Change) {
    match change {
        Change::Replace(items) => *map = items,
        Change::Put(k, v) => {
            map.insert(k, v);
        }
        Change::Delete(k) => {
            map.remove(&k);
        }
    }
}

/// Keeps the node's view of Services current and applies it: the service proxy's rules and
/// the DNS server's zone follow every change (coalesced over a few milliseconds), and the
/// view is recorded on disk for a restart while the server is away.
pub(crate) async fn services_loop(ctx: super::Ctx, cancel: CancellationToken) {
    let net = ctx.net.get().expect("set before").clone();
    net.view.send_replace(load_view(&ctx.data_dir));
    {
        let n = net.clone();
        tokio::spawn(watch_objects(
            ctx.client.clone(),
            "/api/v1/services",
            move |c| {
                if matches!(c, Change::Replace(_)) {
                    n.listed.fetch_or(1, std::sync::atomic::Ordering::Relaxed);
                }
                n.view.send_modify(|v| apply_to(&mut v.services, c))
            },
            cancel.clone(),
        ));
        let n = net.clone();
        tokio::spawn(watch_objects(
            ctx.client.clone(),
            "/apis/discovery.k8s.io/v1/endpointslices",
            move |c| {
                if matches!(c, Change::Replace(_)) {
                    n.listed.fetch_or(2, std::sync::atomic::Ordering::Relaxed);
                }
                n.view.send_modify(|v| apply_to(&mut v.slices, c))
            },
            cancel.clone(),
        ));
    }
    let proxier = start_proxy(&ctx, &net).await;
    let dns = start_dns(&net, &cancel).await;
    let mut rx = net.view.subscribe();
    rx.mark_changed();
    let mut far = net.unreachable.subscribe();
    let mut last_saved = tokio::time::Instant::now();
    let mut dirty = false;
    let mut last_table = None;
    let mut retry = false;
    loop {
        tokio::select! {
            () = cancel.cancelled() => break,
            changed = rx.changed() => if changed.is_err() { break },
            changed = far.changed() => if changed.is_err() { break },
            // Record a view that changed, at most every 2 s.
            () = tokio::time::sleep(Duration::from_secs(2)), if dirty => {}
            () = tokio::time::sleep(Duration::from_secs(1)), if retry => {}
        }
        // Coalesce a burst of events into one sync.
        tokio::time::sleep(Duration::from_millis(20)).await;
        let original = rx.borrow_and_update().clone();
        // The proxy's copy: endpoints this node serves itself are rewritten in it; names and
        // the record on disk keep the Services as they are.
        let mut view = original.clone();
        // The `kubernetes` Service goes to this node's forwarder to the API server.
        let mut api_service = None;
        if let (Some(fw), Some(_)) = (&net.forwarders, &proxier)
            && let Some(slice) = view.slices.get("default/kubernetes")
        {
            match fw.port_for(&Upstream::Api(ctx.api_server.clone())).await {
                Ok(port) => {
                    let gw = fw.bind;
                    let local = local_api_slice(slice, gw, port);
                    view.slices.insert("default/kubernetes".into(), local);
                    api_service = view.services.get("default/kubernetes").and_then(|s| {
                        let ip = s.pointer("/spec/clusterIP")?.as_str()?;
                        let port = s.pointer("/spec/ports/0/port")?.as_u64()?;
                        Some(format!("{ip}:{port}"))
                    });
                }
                Err(e) => tracing::warn!(error = %e, "no forwarder to the API server"),
            }
        }
        // Endpoints on nodes this one cannot route to go through local forwarders to the
        // relay (TCP and UDP; SCTP, which the relay does not carry, is left out).
        if let (Some(fw), Some(_)) = (&net.forwarders, &proxier) {
            let far_nodes = far.borrow_and_update().clone();
            let mut used = std::collections::HashSet::new();
            if api_service.is_some() {
                used.insert(Upstream::Api(ctx.api_server.clone()));
            }
            if !far_nodes.is_empty() {
                relay_far_endpoints(&mut view, &far_nodes, fw, &mut used).await;
            }
            fw.retain(&used);
        }
        // Building the zone and the table is tens of milliseconds at a thousand Services:
        // off the async workers.
        let (zone, table) = {
            let (proxied, named, domain, want_zone) = (
                view.clone(),
                original.clone(),
                net.cfg.cluster_domain.clone(),
                dns.is_some(),
            );
            match tokio::task::spawn_blocking(move || {
                let zone = want_zone.then(|| {
                    let services: Vec<Value> = named.services.into_values().collect();
                    let slices: Vec<Value> = named.slices.into_values().collect();
                    kedge_net::dns::Zone::build(&domain, &services, &slices)
                });
                let services: Vec<Value> = proxied.services.into_values().collect();
                let slices: Vec<Value> = proxied.slices.into_values().collect();
                let table = kedge_net::model::ServiceTable::build(&services, &slices);
                (zone, table)
            })
            .await
            {
                Ok(built) => built,
                Err(e) => {
                    tracing::error!(error = %e, "building the service view failed");
                    continue;
                }
            }
        };
        if let (Some(dns), Some(zone)) = (&dns, zone) {
            dns.update(zone);
        }
        retry = false;
        if let Some(p) = &proxier
            && last_table.as_ref() != Some(&table)
        {
            match p.sync(&table).await {
                Ok(stats) => {
                    tracing::debug!(?stats, "service proxy synced");
                    last_table = Some(table);
                    *net.api_service.lock().unwrap_or_else(|p| p.into_inner()) =
                        api_service.clone();
                }
                Err(e) => {
                    // Tried again shortly, whether or not anything changes meanwhile.
                    tracing::warn!(error = %e, "service proxy sync failed");
                    retry = true;
                }
            }
        }
        let listed = net.listed.load(std::sync::atomic::Ordering::Relaxed) == 3;
        // Offline the recorded view is all there is: serving it is being ready.
        if (listed || !ctx.client.is_connected()) && !retry {
            net.served.send_if_modified(|s| !std::mem::replace(s, true));
        }
        dirty = true;
        if last_saved.elapsed() >= Duration::from_secs(2) {
            let d = ctx.data_dir.clone();
            let record = original.clone();
            let _ = tokio::task::spawn_blocking(move || save_view(&d, &record)).await;
            last_saved = tokio::time::Instant::now();
            dirty = false;
        }
    }
    // nftables rules stay while the agent is away (the kernel keeps serving, as after
    // kube-proxy exits); userspace listeners go with the proxier.
    drop(proxier);
}

/// Where a local forwarder sends the connections it accepts.
#[derive(Clone, Debug, PartialEq, Eq, Hash)]
pub(crate) enum Upstream {
    /// The API server, over TCP at the address the agent dials (in-cluster clients' way to
    /// it: the `kubernetes` Service).
    Api(String),
    /// A pod (or a host-network pod's node address) on a node this one cannot route to
    /// (behind another NAT): through the server's relay, over both nodes' tunnels.
    Relay {
        node: String,
        ip: Ipv4Addr,
        port: u16,
        /// A UDP endpoint: the forwarder is a UDP socket relaying each client's flow.
        udp: bool,
    },
}

/// Most connections one forwarder carries at once.
const FORWARDER_CONNECTIONS: usize = 1024;

/// TCP forwarders in the agent, listening on the pod bridge's gateway address: what the
/// service proxy sends a Service endpoint to when the agent itself must carry the traffic.
/// The `kubernetes` Service is one: its endpoint is the API server's address as the server
/// sees itself (loopback in `kedge dev`, an address a pod behind NAT may not route to), so
/// every node answers it locally and forwards to the address its own agent uses. Endpoints
/// on nodes behind another NAT are the other: the forwarder relays through the server.
pub(crate) struct Forwarders {
    bind: Ipv4Addr,
    client: Client,
    map: Mutex<HashMap<Upstream, (u16, tokio_util::task::AbortOnDropHandle<()>)>>,
}

impl Forwarders {
    fn new(bind: Ipv4Addr, client: Client) -> Self {
        Forwarders {
            bind,
            client,
            map: Mutex::default(),
        }
    }

    /// Stops the forwarders not in `keep` (their Services or endpoints went away).
    fn retain(&self, keep: &std::collections::HashSet<Upstream>) {
        self.map
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .retain(|up, _| keep.contains(up));
    }

    /// The local port forwarding to `up`, started on first use.
    async fn port_for(&self, up: &Upstream) -> std::io::Result<u16> {
        if let Some((port, _)) = self.map.lock().unwrap_or_else(|p| p.into_inner()).get(up) {
            return Ok(*port);
        }
        if let Upstream::Relay {
            node,
            ip,
            port,
            udp: true,
        } = up
        {
            let dst = std::net::SocketAddrV4::new(*ip, *port);
            let (local, task) =
                crate::udp_relay::forwarder(self.bind, self.client.clone(), node.clone(), dst)
                    .await?;
            let mut map = self.map.lock().unwrap_or_else(|p| p.into_inner());
            return Ok(map.entry(up.clone()).or_insert((local, task)).0);
        }
        let listener = tokio::net::TcpListener::bind((self.bind, 0)).await?;
        let port = listener.local_addr()?.port();
        let (target, tunnel) = (up.clone(), self.client.clone());
        let task = tokio::spawn(async move {
            let slots = Arc::new(tokio::sync::Semaphore::new(FORWARDER_CONNECTIONS));
            loop {
                let Ok((conn, _)) = listener.accept().await else {
                    tokio::time::sleep(Duration::from_millis(50)).await;
                    continue;
                };
                let Ok(slot) = slots.clone().try_acquire_owned() else {
                    continue; // Dropping the connection: too many at once.
                };
                let (target, tunnel) = (target.clone(), tunnel.clone());
                tokio::spawn(async move {
                    let _slot = slot;
                    if let Err(e) = forward(conn, &target, &tunnel).await {
                        tracing::debug!(?target, error = %e, "forwarded connection failed");
                    }
                });
            }
        });
        let mut map = self.map.lock().unwrap_or_else(|p| p.into_inner());
        let entry = map
            .entry(up.clone())
            .or_insert((port, tokio_util::task::AbortOnDropHandle::new(task)));
        Ok(entry.0)
    }
}

/// Carries one accepted connection to its upstream, both ways, half-closes included.
async fn forward(
    mut conn: tokio::net::TcpStream,
    target: &Upstream,
    tunnel: &Client,
) -> std::io::Result<()> {
    let _ = conn.set_nodelay(true);
    match target {
        Upstream::Api(addr) => {
            let mut up = tokio::time::timeout(
                Duration::from_secs(10),
                tokio::net::TcpStream::connect(addr.as_str()),
            )
            .await
            .map_err(|_| std::io::Error::other("connecting to the API server timed out"))??;
            tokio::io::copy_bidirectional(&mut conn, &mut up).await?;
        }
        Upstream::Relay {
            node,
            ip,
            port,
            udp: false,
        } => {
            let mut up = crate::relay::relay_connect(tunnel, node, *ip, *port).await?;
            tokio::io::copy_bidirectional(&mut conn, &mut up).await?;
        }
        Upstream::Relay { udp: true, .. } => {
            return Err(std::io::Error::other("a UDP upstream has no TCP forwarder"));
        }
    }
    Ok(())
}

/// Replaces, in `view`, every endpoint that lives on a node in `far` by this node's
/// forwarder to it through the relay: one slice per such endpoint, its TCP and UDP ports (by
/// the same names) on the forwarders' ports. The proxy then treats it as any endpoint.
async fn relay_far_endpoints(
    view: &mut View,
    far: &std::collections::BTreeSet<String>,
    fw: &Forwarders,
    used: &mut std::collections::HashSet<Upstream>,
) {
    let mut added = Vec::new();
    for (key, slice) in view.slices.iter_mut() {
        let Some(endpoints) = slice["endpoints"].as_array().cloned() else {
            continue;
        };
        let ports = slice["ports"].as_array().cloned().unwrap_or_default();
        let (near, remote): (Vec<Value>, Vec<Value>) = endpoints
            .into_iter()
            .partition(|e| e["nodeName"].as_str().is_none_or(|n| !far.contains(n)));
        if remote.is_empty() {
            continue;
        }
        slice["endpoints"] = Value::Array(near);
        for (i, e) in remote.iter().enumerate() {
            let node = e["nodeName"].as_str().unwrap_or_default().to_owned();
            let Some(ip) = e["addresses"][0]
                .as_str()
                .and_then(|a| a.parse::<Ipv4Addr>().ok())
            else {
                continue;
            };
            let mut local_ports = Vec::new();
            for p in &ports {
                let udp = match p["protocol"].as_str().unwrap_or("TCP") {
                    "TCP" => false,
                    "UDP" => true,
                    _ => continue,
                };
                let Some(port) = p["port"].as_u64().and_then(|n| u16::try_from(n).ok()) else {
                    continue;
                };
                let up = Upstream::Relay {
                    node: node.clone(),
                    ip,
                    port,
                    udp,
                };
                match fw.port_for(&up).await {
                    Ok(local) => {
                        let mut lp = p.clone();
                        lp["port"] = json!(local);
                        local_ports.push(lp);
                        used.insert(up);
                    }
                    Err(e) => tracing::warn!(error = %e, "no relay forwarder"),
                }
            }
            if local_ports.is_empty() {
                continue;
            }
            let mut e = e.clone();
            e["addresses"] = json!([fw.bind.to_string()]);
            let mut relayed = slice.clone();
            relayed["metadata"]["name"] = json!(format!("{}-relay-{i}", meta::name(slice)));
            relayed["endpoints"] = json!([e]);
            relayed["ports"] = Value::Array(local_ports);
            added.push((format!("{key}-relay-{i}"), relayed));
        }
    }
    view.slices.extend(added);
}

/// The `kubernetes` Service's EndpointSlice as this node serves it: one endpoint, this node's
/// forwarder to the API server.
fn local_api_slice(slice: &Value, gateway: Ipv4Addr, port: u16) -> Value {
    let mut s = slice.clone();
    s["endpoints"] = json!([{"addresses": [gateway.to_string()], "conditions": {"ready": true}}]);
    s["ports"] = json!([{"name": "https", "port": port, "protocol": "TCP"}]);
    s
}

/// The gateway address the bridge plugin gives the bridge: the podCIDR's first address.
fn gateway_of((net, _): (Ipv4Addr, u8)) -> Ipv4Addr {
    Ipv4Addr::from(u32::from(net) + 1)
}

/// Makes the pod bridge with its gateway address before any pod exists (the bridge plugin
/// takes it as it finds it), so the agent's forwarders can listen there from the start.
async fn ensure_bridge(name: &str, (net, len): (Ipv4Addr, u8)) -> Result<(), String> {
    if ip(&["link", "show", name]).await.is_err() {
        ip(&["link", "add", name, "type", "bridge"]).await?;
    }
    let gw = format!("{}/{len}", gateway_of((net, len)));
    let addrs = ip(&["-4", "addr", "show", "dev", name]).await?;
    if !addrs.contains(&format!("inet {gw} ")) {
        ip(&["addr", "add", &gw, "dev", name]).await?;
    }
    ip(&["link", "set", name, "up"]).await.map(|_| ())
}

/// The routing protocol number kedge's routes carry, so the agent tells them from
/// everyone else's when it reconciles (`ip route show proto 123`).
const ROUTE_PROTO: &str = "123";

/// The label that groups nodes by network: nodes that both carry it with different values
/// are never routed to directly, even when an address looks adjacent.
pub(crate) const NETWORK_LABEL: &str = "kedge.io/network";

/// Host-gw routes to other nodes' podCIDRs: a node whose InternalIP this node reaches
/// directly (on a link of its own, no gateway between) gets `ip route replace <podCIDR> via
/// <InternalIP>`; the routes of nodes that went away, or moved, are removed. Pod traffic
/// between such nodes travels unencapsulated and keeps its addresses.
pub(crate) async fn routes_loop(ctx: super::Ctx, cancel: CancellationToken) {
    let net = ctx.net.get().expect("set before").clone();
    if !net.is_cni() {
        return;
    }
    let (tx, mut rx) = watch::channel(BTreeMap::<String, Value>::new());
    tokio::spawn(watch_objects(
        ctx.client.clone(),
        "/api/v1/nodes",
        move |c| tx.send_modify(|m| apply_to(m, c)),
        cancel.clone(),
    ));
    // A previous run's redirects to far podCIDRs go first: they would send traffic to a
    // listener that is gone (recreated below if nodes are still far).
    let _ = nft_apply(&format!(
        "table ip {t} {{}}\ndelete table ip {t}\n",
        t = far_table(&ctx.node)
    ))
    .await;
    let mut last: Option<BTreeMap<String, Ipv4Addr>> = None;
    let mut far_pods: Option<FarPods> = None;
    // What of the Nodes decides routes; a heartbeat that changes none of it is skipped.
    let mut seen: Option<Vec<(String, Value, Value, Value)>> = None;
    loop {
        let by_timer = tokio::select! {
            () = cancel.cancelled() => return,
            changed = rx.changed() => if changed.is_err() { return } else { false },
            // Links change under us (a cable, a DHCP lease): look again now and then.
            () = tokio::time::sleep(Duration::from_secs(30)) => true,
        };
        let nodes = rx.borrow_and_update().clone();
        let now: Vec<(String, Value, Value, Value)> = nodes
            .values()
            .map(|n| {
                (
                    meta::name(n).to_owned(),
                    n.pointer("/spec/podCIDR").cloned().unwrap_or_default(),
                    n.pointer("/status/addresses").cloned().unwrap_or_default(),
                    n.pointer("/metadata/labels").cloned().unwrap_or_default(),
                )
            })
            .collect();
        if !by_timer && seen.as_ref() == Some(&now) {
            continue;
        }
        seen = Some(now);
        let me = nodes.get(&format!("/{}", ctx.node)).cloned();
        let my_net = me
            .as_ref()
            .and_then(|n| {
                n.pointer(&format!(
                    "/metadata/labels/{}",
                    NETWORK_LABEL.replace('/', "~1")
                ))
            })
            .and_then(Value::as_str)
            .map(str::to_owned);
        let mut wanted = BTreeMap::new();
        let mut far = std::collections::BTreeSet::new();
        // podCIDR → node, of the nodes this one cannot route to.
        let mut far_cidrs = BTreeMap::new();
        for n in nodes.values() {
            if meta::name(n) == ctx.node {
                continue;
            }
            let Some(cidr) = n.pointer("/spec/podCIDR").and_then(Value::as_str) else {
                continue;
            };
            let their_net = n
                .pointer(&format!(
                    "/metadata/labels/{}",
                    NETWORK_LABEL.replace('/', "~1")
                ))
                .and_then(Value::as_str);
            if let (Some(a), Some(b)) = (&my_net, their_net)
                && a != b
            {
                far.insert(meta::name(n).to_owned());
                far_cidrs.insert(cidr.to_owned(), meta::name(n).to_owned());
                continue;
            }
            let Some(ip) = internal_ip(n) else { continue };
            if ip.to_string() == ctx.host_ip {
                // Another agent on this very machine: its bridge is beside ours.
                continue;
            }
            if !directly_reachable(ip).await {
                far.insert(meta::name(n).to_owned());
                far_cidrs.insert(cidr.to_owned(), meta::name(n).to_owned());
                continue;
            }
            wanted.insert(cidr.to_owned(), ip);
        }
        net.unreachable.send_if_modified(|f| {
            let changed = *f != far;
            *f = far;
            changed
        });
        if far_pods.is_none() && !far_cidrs.is_empty() {
            match FarPods::start(&ctx.node, &net.cfg.bridge, ctx.client.clone()).await {
                Ok(f) => far_pods = Some(f),
                Err(e) => tracing::warn!(error = %e, "no relay for pods behind other NATs"),
            }
        }
        if let Some(f) = far_pods.as_mut()
            && let Err(e) = f.sync(&far_cidrs).await
        {
            tracing::warn!(error = %e, "redirecting traffic to pods behind other NATs failed");
        }
        if last.as_ref() == Some(&wanted) {
            continue;
        }
        match sync_routes(&wanted).await {
            Ok(()) => {
                tracing::info!(
                    routes = wanted.len(),
                    "routes to other nodes' pods in place"
                );
                last = Some(wanted);
            }
            Err(e) => tracing::warn!(error = %e, "programming routes to other nodes failed"),
        }
    }
}

use crate::udp_relay::FarCidrs;

/// Pod addresses on nodes behind another NAT, reached directly (not only through a
/// Service): nftables redirects TCP to their podCIDRs to a listener in the agent, which reads
/// each connection's original destination (`SO_ORIGINAL_DST`) and relays it to the node that
/// has that podCIDR, through the server. UDP is redirected to a socket that relays each
/// flow the same way ([`crate::udp_relay::FarUdp`]). Anything else to them (ICMP) is refused here with an ICMP
/// error, rather than leaving by the default route with a pod's address no router knows.
struct FarPods {
    table: String,
    /// Only pods' traffic (arriving on the bridge) and the node's own is redirected: a host
    /// on the LAN gets no relay through this node.
    bridge: String,
    port: u16,
    /// The UDP socket; `None` without the `conntrack` tool (then UDP to far pods is refused
    /// like any other protocol the relay does not carry).
    udp: Option<crate::udp_relay::FarUdp>,
    cidrs: FarCidrs,
    applied: Option<BTreeMap<String, String>>,
    _task: tokio_util::task::AbortOnDropHandle<()>,
}

impl FarPods {
    async fn start(node: &str, bridge: &str, client: Client) -> std::io::Result<FarPods> {
        // Every local address: the redirect lands on the pod bridge's address for pods and
        // on 127.0.0.1 for the node's own processes. A connection that was not redirected
        // has no far destination and is closed.
        let listener = tokio::net::TcpListener::bind(("0.0.0.0", 0)).await?;
        let port = listener.local_addr()?.port();
        let cidrs: FarCidrs = Arc::default();
        let udp = if crate::udp_relay::conntrack_available().await {
            crate::udp_relay::FarUdp::start(client.clone(), cidrs.clone())
                .await
                .map_err(|e| e.to_string())
        } else {
            Err("the conntrack tool is missing (`make setup` installs it)".to_string())
        };
        let udp = udp
            .inspect_err(|e| tracing::warn!(error = %e, "UDP to pods behind other NATs is refused"))
            .ok();
        let lookup = cidrs.clone();
        let task = tokio::spawn(async move {
            let slots = Arc::new(tokio::sync::Semaphore::new(FORWARDER_CONNECTIONS));
            loop {
                let Ok((mut conn, _)) = listener.accept().await else {
                    tokio::time::sleep(Duration::from_millis(50)).await;
                    continue;
                };
                let Ok(slot) = slots.clone().try_acquire_owned() else {
                    continue;
                };
                let Ok(dst) = rustix::net::sockopt::ip_original_dst(&conn) else {
                    continue;
                };
                let node = lookup
                    .lock()
                    .unwrap_or_else(|p| p.into_inner())
                    .iter()
                    .find(|(cidr, _)| cidr_contains(*cidr, *dst.ip()))
                    .map(|(_, n)| n.clone());
                let Some(node) = node else { continue };
                let client = client.clone();
                tokio::spawn(async move {
                    let _slot = slot;
                    let _ = conn.set_nodelay(true);
                    match crate::relay::relay_connect(&client, &node, *dst.ip(), dst.port()).await {
                        Ok(mut up) => {
                            let _ = tokio::io::copy_bidirectional(&mut conn, &mut up).await;
                        }
                        Err(e) => {
                            tracing::debug!(%dst, %node, error = %e, "relaying to a pod behind another NAT failed")
                        }
                    }
                });
            }
        });
        Ok(FarPods {
            table: far_table(node),
            bridge: bridge.to_owned(),
            port,
            udp,
            cidrs,
            applied: None,
            _task: tokio_util::task::AbortOnDropHandle::new(task),
        })
    }

    /// Redirects exactly the podCIDRs of `far` (podCIDR → node).
    async fn sync(&mut self, far: &BTreeMap<String, String>) -> Result<(), String> {
        if self.applied.as_ref() == Some(far) {
            return Ok(());
        }
        let parsed: Vec<((Ipv4Addr, u8), String)> = far
            .iter()
            .filter_map(|(c, n)| parse_cidr(c).ok().map(|c| (c, n.clone())))
            .collect();
        *self.cidrs.lock().unwrap_or_else(|p| p.into_inner()) = parsed.clone();
        let cidrs: Vec<(Ipv4Addr, u8)> = parsed.iter().map(|(c, _)| *c).collect();
        let udp_port = self.udp.as_ref().map(|u| u.port);
        let rules = far_rules(&self.table, &self.bridge, &cidrs, self.port, udp_port);
        nft_apply(&rules).await?;
        self.applied = Some(far.clone());
        Ok(())
    }
}

/// The far-pods table: TCP to `cidrs` redirected to `port`, UDP (with `udp_port`) to
/// `udp_port`, pods' traffic (from the bridge) and the node's own alike; anything else to
/// them refused with an ICMP error.
fn far_rules(
    table: &str,
    bridge: &str,
    cidrs: &[(Ipv4Addr, u8)],
    port: u16,
    udp_port: Option<u16>,
) -> String {
    let elements = if cidrs.is_empty() {
        String::new()
    } else {
        let list: Vec<String> = cidrs
            .iter()
            .map(|(ip, len)| format!("{ip}/{len}"))
            .collect();
        format!("    elements = {{ {} }}\n", list.join(", "))
    };
    let (udp_in, udp_out, carried) = match udp_port {
        Some(u) => (
            format!("    iifname \"{bridge}\" ip daddr @far meta l4proto udp redirect to :{u}\n"),
            format!("    ip daddr @far meta l4proto udp redirect to :{u}\n"),
            "{ tcp, udp }",
        ),
        None => (String::new(), String::new(), "tcp"),
    };
    format!(
        "table ip {table} {{}}\ndelete table ip {table}\ntable ip {table} {{\n  set far {{\n    type ipv4_addr; flags interval;\n{elements}  }}\n  chain prerouting {{\n    type nat hook prerouting priority -110; policy accept;\n    iifname \"{bridge}\" ip daddr @far meta l4proto tcp redirect to :{port}\n{udp_in}  }}\n  chain output {{\n    type nat hook output priority -110; policy accept;\n    ip daddr @far meta l4proto tcp redirect to :{port}\n{udp_out}  }}\n  chain other_forward {{\n    type filter hook forward priority filter; policy accept;\n    iifname \"{bridge}\" ip daddr @far meta l4proto != {carried} reject with icmp type admin-prohibited\n  }}\n  chain other_output {{\n    type filter hook output priority filter; policy accept;\n    ip daddr @far meta l4proto != {carried} reject with icmp type admin-prohibited\n  }}\n}}\n"
    )
}

fn internal_ip(node: &Value) -> Option<Ipv4Addr> {
    node.pointer("/status/addresses")?
        .as_array()?
        .iter()
        .find(|a| a["type"] == "InternalIP")?["address"]
        .as_str()?
        .parse()
        .ok()
}

/// Whether `ip` is on one of this node's links (the kernel's route to it has no gateway).
async fn directly_reachable(addr: Ipv4Addr) -> bool {
    ip(&["-4", "route", "get", &addr.to_string()])
        .await
        .is_ok_and(|text| !text.contains(" via ") && !text.starts_with("local "))
}

/// Makes kedge's routes exactly `wanted` (podCIDR → next hop).
async fn sync_routes(wanted: &BTreeMap<String, Ipv4Addr>) -> Result<(), String> {
    let current = ip(&["-4", "route", "show", "proto", ROUTE_PROTO]).await?;
    for line in current.lines() {
        let Some(dst) = line.split_whitespace().next() else {
            continue;
        };
        let via = line
            .split_whitespace()
            .skip_while(|w| *w != "via")
            .nth(1)
            .and_then(|v| v.parse::<Ipv4Addr>().ok());
        if wanted.get(dst).copied() != via {
            ip(&["route", "del", dst, "proto", ROUTE_PROTO]).await?;
        }
    }
    for (cidr, via) in wanted {
        let via = via.to_string();
        ip(&["route", "replace", cidr, "via", &via, "proto", ROUTE_PROTO]).await?;
    }
    Ok(())
}

/// The service proxy in the mode asked for (or the best this node can run); `None` with
/// `--proxy-mode none`, or when no mode can run here.
async fn start_proxy(ctx: &super::Ctx, net: &Network) -> Option<kedge_net::model::Proxier> {
    use kedge_net::model::Proxier;
    let node_ips: Vec<Ipv4Addr> = ctx.host_ip.parse().into_iter().collect();
    let cfg = kedge_net::model::ProxyConfig {
        node_name: ctx.node.clone(),
        node_ips,
        cluster_cidr: net.cfg.cluster_cidr,
        service_lb: net.cfg.service_lb,
    };
    let root = rustix::process::geteuid().is_root();
    let nft = root && has_nft().await;
    let mode = match net.cfg.proxy_mode {
        ProxyMode::None => ProxyMode::None,
        ProxyMode::Auto if nft => ProxyMode::Nftables,
        ProxyMode::Auto => ProxyMode::Userspace,
        m => m,
    };
    if nft && mode != ProxyMode::Nftables {
        // Rules an earlier run in nftables mode left would still answer the ClusterIPs
        // (with the endpoints of then), before any listener of ours.
        let t = kedge_net::nft::TABLE;
        let _ = nft_apply(&format!("table ip {t} {{}}\ndelete table ip {t}\n")).await;
    }
    if mode == ProxyMode::None {
        return None;
    }
    match mode {
        ProxyMode::Nftables if !nft => {
            tracing::error!(
                "--proxy-mode nftables needs root and the nft command; no service proxy on this node"
            );
            None
        }
        ProxyMode::Nftables => {
            tracing::info!("service proxy: nftables");
            Some(Proxier::Nft(kedge_net::nft::NftProxy::new(cfg)))
        }
        _ => {
            // As root the ClusterIPs go on a dummy interface, so node processes and pods
            // (routed through the node) reach the listeners; otherwise only NodePorts and
            // LoadBalancer ports are reachable, and the log says so.
            let interface = root.then(|| "kedge-svc0".to_string());
            if interface.is_none() {
                tracing::warn!(
                    "userspace proxy without root: ClusterIPs are not reachable on this node, only NodePorts"
                );
            }
            tracing::info!("service proxy: userspace");
            Some(Proxier::Userspace(
                kedge_net::userspace::UserspaceProxy::new(
                    cfg,
                    kedge_net::userspace::UserspaceOptions {
                        interface,
                        ..Default::default()
                    },
                ),
            ))
        }
    }
}

async fn has_nft() -> bool {
    tokio::process::Command::new("nft")
        .arg("--version")
        .output()
        .await
        .is_ok_and(|o| o.status.success())
}

/// The node-local DNS server on the cluster DNS address. As root the address goes on the
/// node's loopback interface (a /32 beside 127.0.0.1: some kernels, this project's CI
/// machines among them, have no dummy interfaces), so node processes reach it directly and
/// pods through their default route to the node.
async fn start_dns(net: &Network, cancel: &CancellationToken) -> Option<kedge_net::dns::DnsServer> {
    let ip = net.cfg.cluster_dns?;
    if !rustix::process::geteuid().is_root() {
        tracing::warn!("not root: no cluster DNS on this node (pods get the node's resolv.conf)");
        return None;
    }
    if let Err(e) = self::ip(&["addr", "replace", &format!("{ip}/32"), "dev", "lo"]).await {
        tracing::warn!(error = %e, "cannot put the cluster DNS address on lo; no cluster DNS");
        return None;
    }
    let upstreams = kedge_net::dns::upstreams_from_resolv_conf(&net.host_resolv)
        .into_iter()
        .filter(|u| *u != std::net::IpAddr::V4(ip))
        .map(|u| std::net::SocketAddr::new(u, 53))
        .collect();
    let cfg = kedge_net::dns::DnsConfig {
        listen: vec![std::net::SocketAddr::new(ip.into(), 53)],
        domain: net.cfg.cluster_domain.clone(),
        upstreams,
    };
    match kedge_net::dns::DnsServer::start(cfg, cancel.child_token()).await {
        Ok(s) => {
            tracing::info!(%ip, "cluster DNS serving");
            net.dns_up.store(true, std::sync::atomic::Ordering::Relaxed);
            Some(s)
        }
        Err(e) => {
            // Another agent on this machine may serve it already (tests, `kedge dev` beside
            // an agent): then pods still resolve through it.
            let taken = format!("{e:#}").contains("in use");
            tracing::warn!(error = %format!("{e:#}"), taken, "the cluster DNS server did not start");
            if taken {
                net.dns_up.store(true, std::sync::atomic::Ordering::Relaxed);
            }
            None
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn host_ports_are_what_portmap_gets() {
        let pod = json!({"spec": {"containers": [{"name": "c", "ports": [
            {"containerPort": 80, "hostPort": 8080},
            {"containerPort": 53, "hostPort": 5353, "protocol": "UDP", "hostIP": "127.0.0.1"},
            {"containerPort": 9090},
        ]}]}});
        assert_eq!(
            host_ports(&pod),
            vec![
                PortMapping {
                    host_port: 8080,
                    container_port: 80,
                    protocol: "tcp".into(),
                    host_ip: None
                },
                PortMapping {
                    host_port: 5353,
                    container_port: 53,
                    protocol: "udp".into(),
                    host_ip: Some("127.0.0.1".into())
                },
            ]
        );
    }

    #[test]
    fn far_rules_parse_with_and_without_udp() {
        let cidrs = [
            (Ipv4Addr::new(10, 42, 2, 0), 24),
            (Ipv4Addr::new(10, 42, 3, 0), 24),
        ];
        let with = far_rules("kedge_far_t", "kedge0", &cidrs, 4000, Some(4001));
        assert!(with.contains("udp redirect to :4001"), "{with}");
        assert!(
            with.contains("elements = { 10.42.2.0/24, 10.42.3.0/24 }"),
            "{with}"
        );
        assert!(with.contains("l4proto != { tcp, udp } reject"), "{with}");
        let without = far_rules("kedge_far_t", "kedge0", &[], 4000, None);
        assert!(!without.contains("udp redirect"), "{without}");
        assert!(without.contains("l4proto != tcp reject"), "{without}");
        // nft itself checks them where it can (root): in a namespace of the test's own.
        if !rustix::process::geteuid().is_root() {
            return;
        }
        let ns = format!("kedge-far-rules-{}", std::process::id());
        let ok = |args: &[&str]| {
            std::process::Command::new(args[0])
                .args(&args[1..])
                .status()
        };
        if ok(&["ip", "netns", "add", &ns]).is_err() {
            return;
        }
        for script in [&with, &without] {
            let mut child = std::process::Command::new("ip")
                .args(["netns", "exec", &ns, "nft", "-c", "-f", "-"])
                .stdin(std::process::Stdio::piped())
                .spawn()
                .unwrap();
            use std::io::Write as _;
            child
                .stdin
                .take()
                .unwrap()
                .write_all(script.as_bytes())
                .unwrap();
            let status = child.wait().unwrap();
            if !status.success() {
                let _ = ok(&["ip", "netns", "del", &ns]);
                panic!("nft refused:\n{script}");
            }
        }
        let _ = ok(&["ip", "netns", "del", &ns]);
    }

    #[test]
    fn hosts_file_names_the_pod_as_kubelet_does() {
        let pod = json!({"metadata": {"name": "web-0", "namespace": "default"},
            "spec": {"hostname": "web-0", "subdomain": "nginx",
                     "hostAliases": [{"ip": "10.1.2.3", "hostnames": ["foo.local", "bar.local"]}]}});
        let h = hosts_file(&pod, Ipv4Addr::new(10, 42, 0, 5), "cluster.local");
        assert!(
            h.contains("10.42.0.5\tweb-0.nginx.default.svc.cluster.local\tweb-0\n"),
            "{h}"
        );
        assert!(h.contains("10.1.2.3\tfoo.local\tbar.local\n"), "{h}");
        let plain = json!({"metadata": {"name": "p", "namespace": "x"}, "spec": {}});
        assert!(
            hosts_file(&plain, Ipv4Addr::new(10, 42, 0, 6), "cluster.local")
                .contains("10.42.0.6\tp\n")
        );
    }
}
