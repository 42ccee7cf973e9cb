//! The `kedge` binary: `server`, `agent`, `dev` (both in one process), `image import`,
//! `token create`.

use std::net::SocketAddr;
use std::path::PathBuf;
use std::time::Duration;

use anyhow::Context as _;
use clap::{Parser, Subcommand};
use tokio_util::sync::CancellationToken;

use kedge::agent::{self, AgentConfig};
use kedge::plugins::PluginConfig;
use kedge::server::{self, ServerConfig};

/// jemalloc gives memory freed after a burst (a create storm, a big list) back to the system,
/// where glibc's malloc keeps most of it (see host/Cargo.toml and the memory bench).
#[global_allocator]
static ALLOC: tikv_jemallocator::Jemalloc = tikv_jemallocator::Jemalloc;

#[derive(Parser)]
#[command(
    name = "kedge",
    version,
    about = "A Kubernetes-model orchestrator for the edge"
)]
struct Cli {
    #[command(subcommand)]
    command: Command,
}

#[derive(clap::Args, Clone)]
struct ServerArgs {
    /// Where the store, PKI, admin kubeconfig and join token live.
    #[arg(long, env = "KEDGE_DATA_DIR")]
    data_dir: Option<PathBuf>,
    /// HTTPS API (TCP) and node tunnel (UDP) address.
    #[arg(long, default_value = "0.0.0.0:6443", env = "KEDGE_LISTEN")]
    listen: SocketAddr,
    /// Extra DNS names or IPs for the serving certificate (repeatable).
    #[arg(long = "tls-san")]
    tls_san: Vec<String>,
    /// Cache of compiled plugins (default: <data-dir>/plugin-cache).
    #[arg(long, env = "KEDGE_PLUGIN_CACHE_DIR")]
    plugin_cache_dir: Option<PathBuf>,
    /// CPU/wall-clock budget of one plugin reconcile, in milliseconds.
    #[arg(long, default_value_t = 2000)]
    plugin_deadline_ms: u64,
    /// Memory cap of one plugin instance, in MiB.
    #[arg(long, default_value_t = 64)]
    plugin_memory_mib: usize,
    /// Validity of node certificates, e.g. 365d, 720h, 30s; agents renew theirs over the
    /// tunnel after 70–80 % of it.
    #[arg(long, default_value = "365d")]
    node_cert_validity: String,
    /// Pod IP range of the cluster (IPv4, at most /24); each Node gets a /24 of it in
    /// `spec.podCIDR`. Must not overlap the service CIDR 10.43.0.0/16.
    #[arg(long, default_value = "10.42.0.0/16")]
    cluster_cidr: String,
    /// IP of the cluster DNS Service `kube-system/kube-dns` (inside the service CIDR
    /// 10.43.0.0/16); every node answers on it itself.
    #[arg(long, default_value = "10.43.0.10")]
    cluster_dns: String,
    /// Keep the cluster's state in etcd (v3 API) at these comma-separated client URLs, e.g.
    /// https://h1:2379,https://h2:2379, instead of the embedded store in the data dir.
    #[arg(long, env = "KEDGE_DATASTORE_ENDPOINT", value_delimiter = ',')]
    datastore_endpoint: Vec<String>,
    /// The CA that signed etcd's serving certificate (https:// endpoints).
    #[arg(long, requires = "datastore_endpoint")]
    datastore_cafile: Option<PathBuf>,
    /// A client certificate for etcd (with --datastore-keyfile).
    #[arg(long, requires_all = ["datastore_endpoint", "datastore_keyfile"])]
    datastore_certfile: Option<PathBuf>,
    /// The key of --datastore-certfile.
    #[arg(long, requires_all = ["datastore_endpoint", "datastore_certfile"])]
    datastore_keyfile: Option<PathBuf>,
    /// The prefix of every key kedge writes to etcd (several clusters can share one etcd
    /// under different prefixes).
    #[arg(long, default_value = kedge::store::etcd::DEFAULT_ROOT, requires = "datastore_endpoint")]
    datastore_prefix: String,
    /// Encrypt resources at rest as this kube-apiserver EncryptionConfiguration file
    /// (apiserver.config.k8s.io/v1, YAML or JSON) says: providers aesgcm, aescbc,
    /// secretbox, identity; the first encrypts new writes, all of them decrypt.
    #[arg(long, conflicts_with = "secrets_encryption")]
    encryption_provider_config: Option<PathBuf>,
    /// Encrypt Secrets at rest with an aescbc key generated on first start into
    /// <data-dir>/cred/encryption-config.json (K3s' --secrets-encryption).
    #[arg(long)]
    secrets_encryption: bool,
    /// How many events the embedded store's watch log keeps (default 10000); a watch or list
    /// from an older resourceVersion gets 410 Gone and relists. etcd keeps its own history.
    #[arg(long, conflicts_with = "datastore_endpoint",
        value_parser = clap::value_parser!(u64).range(10..))]
    watch_history: Option<u64>,
    /// On etcd: the secret the cluster's servers share (K3s' server token), which seals the
    /// CA and keys they share in etcd. The first server makes one (<data-dir>/server-token,
    /// in the full form K10<CA sha256>::server:<secret>); give it to the others.
    #[arg(long, env = "KEDGE_SERVER_TOKEN", hide_env_values = true)]
    token: Option<String>,
    /// Join the cluster of the server at this URL as another replica (https://first:6443):
    /// its datastore is asked of it with --token, which must be the full token
    /// K10<CA sha256>::server:<secret> (the first server's <data-dir>/server-token).
    #[arg(long, env = "KEDGE_URL", conflicts_with = "datastore_endpoint")]
    server: Option<String>,
    /// This server's name among the replicas sharing an etcd (holder of plugin leases);
    /// default: the hostname and a suffix kept in the data dir.
    #[arg(long, env = "KEDGE_REPLICA_NAME")]
    replica_name: Option<String>,
    /// On etcd, each plugin runs on one replica, the holder of its Lease: how long a lease
    /// lasts unrenewed (kube-controller-manager's flag and default).
    #[arg(long, default_value = "15s")]
    leader_elect_lease_duration: String,
    /// How long a plugin's holder keeps running it without renewing its lease.
    #[arg(long, default_value = "10s")]
    leader_elect_renew_deadline: String,
    /// How often leases are tried and renewed.
    #[arg(long, default_value = "2s")]
    leader_elect_retry_period: String,
}

impl ServerArgs {
    fn encryption(&self) -> server::StoreEncryption {
        match (&self.encryption_provider_config, self.secrets_encryption) {
            (Some(file), _) => server::StoreEncryption::File(file.clone()),
            (None, true) => server::StoreEncryption::Generated,
            (None, false) => server::StoreEncryption::Off,
        }
    }

    fn network(&self) -> anyhow::Result<kedge::api::alloc::ClusterNetwork> {
        kedge::api::alloc::ClusterNetwork::parse(&self.cluster_cidr, &self.cluster_dns)
            .map_err(|errors| anyhow::anyhow!("{}", errors.join("; ")))
    }
}

/// Registry credentials and trust (the agent's images, the server's plugin images).
#[derive(clap::Args, Clone)]
struct RegistryArgs {
    /// Registry credentials and TLS trust, K3s' `registries.yaml` format
    /// (`configs: {"host:port": {auth: {username, password}, tls: {ca_file}}}`).
    /// Default: /etc/kedge/registries.yaml when it exists.
    #[arg(long, env = "KEDGE_REGISTRIES_CONFIG")]
    registries_config: Option<PathBuf>,
}

impl RegistryArgs {
    fn load(&self) -> anyhow::Result<kedge_registry::RegistriesConfig> {
        let default = PathBuf::from("/etc/kedge/registries.yaml");
        let path = match &self.registries_config {
            Some(p) => Some(p.clone()),
            None => default.exists().then_some(default),
        };
        match path {
            Some(p) => kedge_registry::RegistriesConfig::load(&p)
                .with_context(|| format!("--registries-config {}", p.display())),
            None => Ok(Default::default()),
        }
    }
}

/// Where a node gets its images.
#[derive(clap::Args, Clone)]
struct ImageArgs {
    #[command(flatten)]
    registries: RegistryArgs,
    /// Size budget of the node's image store, e.g. 10Gi; least recently used images that no
    /// container uses are removed past it.
    #[arg(long, default_value = "10Gi")]
    image_store_max: String,
    /// Kubernetes' KEP-2535 (kubelet's `KubeletEnsureSecretPulledImages`, off by default as
    /// upstream): an image on the node that was pulled with a pod's credentials serves another
    /// pod only if it holds the same credential or proves access by pulling with its own.
    #[arg(long)]
    ensure_secret_pulled_images: bool,
}

impl ImageArgs {
    fn load(&self) -> anyhow::Result<(kedge_registry::RegistriesConfig, u64)> {
        let config = self.registries.load()?;
        let max = kedge::core::quantity::parse_bytes(&self.image_store_max).map_err(|_| {
            anyhow::anyhow!(
                "--image-store-max {:?}: expected a size such as 10Gi or 500Mi",
                self.image_store_max
            )
        })?;
        Ok((config, max))
    }
}

/// How an agent networks its pods (the pod network, the service proxy, cluster DNS).
#[derive(clap::Args)]
struct NetArgs {
    /// `auto`: each pod gets its own network namespace and an address of the node's podCIDR
    /// through the CNI plugins, when the agent runs as root and the plugins are there (else
    /// pods share the node's network, and the Node says so); `host`: always the node's.
    #[arg(long, default_value = "auto")]
    pod_network: agent::PodNetworkMode,
    /// The service proxy: `nftables` (kernel DNAT; needs root and nft), `userspace` (a proxy
    /// in the agent that retries another endpoint when a connect fails), `auto` (nftables
    /// when possible), or `none`.
    #[arg(long, default_value = "auto")]
    proxy_mode: agent::ProxyMode,
    /// The cluster's DNS domain, served by each agent's node-local DNS server.
    #[arg(long, default_value = "cluster.local")]
    cluster_domain: String,
    /// Where the CNI plugins are (searched in order).
    #[arg(
        long,
        value_delimiter = ',',
        default_value = "/usr/lib/cni,/opt/cni/bin"
    )]
    cni_bin_dir: Vec<PathBuf>,
    /// The bridge the pods' interfaces join.
    #[arg(long, default_value = "kedge0")]
    pod_bridge: String,
    /// Do not serve LoadBalancer Services on this node (K3s' ServiceLB is on by default).
    #[arg(long)]
    disable_servicelb: bool,
}

impl NetArgs {
    fn config(
        &self,
        cluster_cidr: &str,
        cluster_dns: &str,
    ) -> anyhow::Result<agent::NetworkConfig> {
        let cidr =
            agent::parse_cidr(cluster_cidr).map_err(|e| anyhow::anyhow!("--cluster-cidr {e}"))?;
        let dns = if cluster_dns.is_empty() {
            None
        } else {
            Some(
                cluster_dns
                    .parse()
                    .map_err(|e| anyhow::anyhow!("--cluster-dns {cluster_dns:?}: {e}"))?,
            )
        };
        Ok(agent::NetworkConfig {
            pod_network: self.pod_network,
            proxy_mode: self.proxy_mode,
            cluster_cidr: cidr,
            cluster_dns: dns,
            cluster_domain: self.cluster_domain.trim_end_matches('.').to_string(),
            cni_bin_dirs: self.cni_bin_dir.clone(),
            bridge: self.pod_bridge.clone(),
            service_lb: !self.disable_servicelb,
        })
    }
}

#[derive(Subcommand)]
enum Command {
    /// Run the control plane: API server, plugin host (controllers, scheduler), node tunnel.
    Server {
        #[command(flatten)]
        server: ServerArgs,
        #[command(flatten)]
        registries: RegistryArgs,
    },
    /// Run a node agent that dials the server over QUIC.
    Agent {
        /// The server's address, host:port (UDP; the same port as its HTTPS API); with several
        /// servers on one etcd, several, comma-separated (or a name resolving to several): the
        /// agent connects to one and moves to another within ~10 s when it dies.
        #[arg(long, env = "KEDGE_SERVER")]
        server: String,
        /// Join token (`K10…::id.secret`), needed until the node has its certificate, and
        /// again if that expires while the node is offline (the agent then runs its pods
        /// offline; a token written to <data-dir>/tunnel/join-token is used without a restart).
        #[arg(long, env = "KEDGE_TOKEN")]
        token: Option<String>,
        /// Node name (default: the hostname).
        #[arg(long, env = "KEDGE_NODE_NAME")]
        name: Option<String>,
        #[arg(long, env = "KEDGE_DATA_DIR")]
        data_dir: Option<PathBuf>,
        /// Labels for the Node, `k=v,k2=v2`.
        #[arg(long, value_delimiter = ',')]
        node_labels: Vec<String>,
        /// Taints the Node registers with, `key=value:Effect,key2:Effect` (as kubelet's
        /// `--register-with-taints`).
        #[arg(long, value_delimiter = ',')]
        node_taints: Vec<String>,
        /// How often, in seconds, the node refreshes its copies of the Secrets and ConfigMaps
        /// its pods use and updates their volumes' files (kubelet's sync period is a minute).
        #[arg(long, default_value_t = 60, value_parser = clap::value_parser!(u64).range(1..))]
        object_refresh_seconds: u64,
        /// Node-pressure eviction thresholds, kubelet's syntax (`nodefs.available` also as a
        /// percentage); they also set the Node's MemoryPressure and DiskPressure.
        #[arg(long, default_value = "memory.available<100Mi,nodefs.available<1Gi")]
        eviction_hard: agent::EvictionThresholds,
        /// Size at which a container's log file is rotated, a quantity such as 10Mi
        /// (kubelet's `containerLogMaxSize`).
        #[arg(long, default_value = "10Mi")]
        container_log_max_size: String,
        /// Log files kept per container, the current one included (kubelet's
        /// `containerLogMaxFiles`); at least 2.
        #[arg(long, default_value_t = 5, value_parser = clap::value_parser!(u64).range(2..))]
        container_log_max_files: u64,
        /// How often, in seconds, the node's and its containers' CPU and memory are sampled
        /// for `kubectl top` (metrics-server's `--metric-resolution`, 15 s); CPU is the rate
        /// between two samples.
        #[arg(long, default_value_t = 15, value_parser = clap::value_parser!(u64).range(1..=3600))]
        metric_resolution_seconds: u64,
        #[command(flatten)]
        images: ImageArgs,
        /// The cluster's pod range (the server's `--cluster-cidr`): pod traffic within it is
        /// not masqueraded.
        #[arg(long, default_value = "10.42.0.0/16")]
        cluster_cidr: String,
        /// The cluster DNS address this node serves (the `kube-dns` Service's IP, the
        /// server's `--cluster-dns`); empty: no cluster DNS on this node.
        #[arg(long, default_value = "10.43.0.10")]
        cluster_dns: String,
        #[command(flatten)]
        net: NetArgs,
    },
    /// A one-node cluster in one process: server plus a local agent, embedded defaults.
    Dev {
        #[command(flatten)]
        server: ServerArgs,
        /// Node name of the local agent (default: the hostname).
        #[arg(long)]
        name: Option<String>,
        #[command(flatten)]
        images: ImageArgs,
        #[command(flatten)]
        net: NetArgs,
    },
    /// Push a Wasm module or component to an OCI registry as a Wasm artifact.
    Push {
        /// The .wasm file.
        file: PathBuf,
        /// Where to push, e.g. registry.example:5000/team/app:v1.
        reference: String,
        /// Registry user (default: from the docker config file, else anonymous).
        #[arg(long, env = "KEDGE_REGISTRY_USERNAME")]
        username: Option<String>,
        /// Registry password (or KEDGE_REGISTRY_PASSWORD).
        #[arg(long, env = "KEDGE_REGISTRY_PASSWORD", hide_env_values = true)]
        password: Option<String>,
        /// Docker config file with credentials (default: $DOCKER_CONFIG/config.json or
        /// ~/.docker/config.json).
        #[arg(long)]
        docker_config: Option<PathBuf>,
        /// PEM file of a CA to trust for this registry.
        #[arg(long)]
        ca_file: Option<PathBuf>,
        /// Skip TLS certificate verification (for a test registry only).
        #[arg(long)]
        insecure_skip_tls_verify: bool,
        /// Registries config (as for the agent) for TLS trust and credentials.
        #[arg(long, env = "KEDGE_REGISTRIES_CONFIG")]
        registries_config: Option<PathBuf>,
    },
    /// The node's local images (offline supply for nodes without registry access).
    Image {
        #[command(subcommand)]
        command: ImageCommand,
    },
    /// Bootstrap tokens for joining nodes.
    Token {
        #[command(subcommand)]
        command: TokenCommand,
    },
    /// Node identity: revoke a node's certificates.
    Node {
        #[command(subcommand)]
        command: NodeCommand,
    },
    /// Copies of the cluster's store: save one from a running server, restore one into a
    /// stopped one.
    Snapshot {
        #[command(subcommand)]
        command: SnapshotCommand,
    },
    /// The cluster's datastore as a whole.
    Datastore {
        #[command(subcommand)]
        command: DatastoreCommand,
    },
}

#[derive(Subcommand)]
enum SnapshotCommand {
    /// Write a consistent copy of the running cluster's store to FILE (mode 0600): a redb file
    /// for the embedded store, etcd's own snapshot on etcd. Sealed Secrets stay sealed.
    Save {
        /// Admin kubeconfig of the cluster (the copy holds every Secret: cluster-admin only).
        #[arg(long, env = "KUBECONFIG")]
        kubeconfig: PathBuf,
        file: PathBuf,
    },
    /// Make FILE the store of a stopped server. An embedded-store snapshot replaces
    /// <data-dir>/state.redb (the old one is kept beside it); objects keep their
    /// resourceVersions, the revision jumps by --bump-revision and clients relist. An etcd
    /// snapshot is restored into a new etcd member data dir by etcd's own tool.
    Restore {
        file: PathBuf,
        /// The server's data dir (`kedge dev`: its data dir).
        #[arg(long, env = "KEDGE_DATA_DIR")]
        data_dir: Option<PathBuf>,
        /// How far the revision jumps past the snapshot's (etcdutl's --bump-revision).
        #[arg(long, default_value_t = kedge::snapshot::DEFAULT_BUMP)]
        bump_revision: u64,
        /// etcd snapshots: the new data dir of the etcd member to start on it.
        #[arg(long)]
        etcd_data_dir: Option<PathBuf>,
        /// etcd snapshots: that member's name.
        #[arg(long, default_value = "default", requires = "etcd_data_dir")]
        etcd_name: String,
        /// etcd snapshots: the restored cluster's members, name=peer-url,…
        #[arg(
            long,
            default_value = "default=http://localhost:2380",
            requires = "etcd_data_dir"
        )]
        etcd_initial_cluster: String,
        /// etcd snapshots: this member's peer URL.
        #[arg(
            long,
            default_value = "http://localhost:2380",
            requires = "etcd_data_dir"
        )]
        etcd_initial_advertise_peer_urls: String,
    },
}

#[derive(Subcommand)]
enum DatastoreCommand {
    /// Copy every object of a stopped server's embedded store into etcd (an empty key root),
    /// then start the server with --datastore-endpoint. Names, UIDs and contents are kept;
    /// resourceVersions become etcd's (clients relist). state.redb is left as it was.
    Migrate {
        /// The server's data dir.
        #[arg(long, env = "KEDGE_DATA_DIR")]
        data_dir: Option<PathBuf>,
        /// etcd client URLs, comma-separated.
        #[arg(long, value_delimiter = ',', required = true)]
        to: Vec<String>,
        #[arg(long)]
        datastore_cafile: Option<PathBuf>,
        #[arg(long, requires = "datastore_keyfile")]
        datastore_certfile: Option<PathBuf>,
        #[arg(long, requires = "datastore_certfile")]
        datastore_keyfile: Option<PathBuf>,
        #[arg(long, default_value = kedge::store::etcd::DEFAULT_ROOT)]
        datastore_prefix: String,
        /// As the server's: needed to read (and keep sealed) what it encrypted.
        #[arg(long, conflicts_with = "secrets_encryption")]
        encryption_provider_config: Option<PathBuf>,
        /// As the server's --secrets-encryption.
        #[arg(long)]
        secrets_encryption: bool,
    },
}

#[derive(Subcommand)]
enum ImageCommand {
    /// Import image archives into the node's image store: `docker save` tarballs and OCI
    /// image layouts (`skopeo copy … oci-archive:`), plain or gzip. Images keep the names the
    /// archive gives and are never removed by image GC. Refused while the node's agent runs
    /// (it owns the store): stop it, or put the files in <data-dir>/images/ and restart it.
    Import {
        /// The archives.
        #[arg(required = true)]
        files: Vec<PathBuf>,
        /// The agent's data dir (`kedge dev`: <dev data dir>/agent).
        #[arg(long, env = "KEDGE_DATA_DIR")]
        data_dir: Option<PathBuf>,
    },
}

#[derive(Subcommand)]
enum NodeCommand {
    /// Revoke every certificate of node NAME issued until now: its tunnel is closed, its
    /// certificate refused on the tunnel and the HTTPS API. It can join again only with a
    /// bootstrap token created after this.
    Revoke {
        /// Admin kubeconfig of the cluster.
        #[arg(long, env = "KUBECONFIG")]
        kubeconfig: PathBuf,
        name: String,
    },
}

#[derive(Subcommand)]
enum TokenCommand {
    /// Create a join token (a bootstrap-token Secret in kube-system) and print it.
    Create {
        /// Admin kubeconfig of the cluster.
        #[arg(long, env = "KUBECONFIG")]
        kubeconfig: PathBuf,
        /// Lifetime, e.g. 30m, 24h, 7d; 0 = never expires.
        #[arg(long, default_value = "24h")]
        ttl: String,
        /// What the token is for (one line), shown by `token list`.
        #[arg(long)]
        description: Option<String>,
    },
    /// List bootstrap tokens: id, time left, expiry, usages, description (never secrets).
    List {
        #[arg(long, env = "KUBECONFIG")]
        kubeconfig: PathBuf,
    },
    /// Delete a bootstrap token (by id, or the whole `id.secret`/join token): nodes can no
    /// longer join with it; nodes that joined keep their certificates.
    Delete {
        #[arg(long, env = "KUBECONFIG")]
        kubeconfig: PathBuf,
        id: String,
    },
}

fn hostname() -> String {
    std::fs::read_to_string("/proc/sys/kernel/hostname")
        .map(|h| h.trim().to_lowercase())
        .ok()
        .filter(|h| !h.is_empty())
        .unwrap_or_else(|| "kedge-node".into())
}

/// `/var/lib/kedge/<leaf>` for root (as K3s uses /var/lib/rancher), else under the user's
/// home, so `kedge dev` works without privileges.
fn default_dir(leaf: &str) -> PathBuf {
    let root = std::fs::read_to_string("/proc/self/status")
        .ok()
        .and_then(|s| {
            s.lines()
                .find(|l| l.starts_with("Uid:"))
                .and_then(|l| l.split_whitespace().nth(1).map(|u| u == "0"))
        })
        .unwrap_or(false);
    match std::env::var_os("HOME") {
        Some(home) if !root => PathBuf::from(home).join(".local/share/kedge").join(leaf),
        _ => PathBuf::from("/var/lib/kedge").join(leaf),
    }
}

fn server_config(a: &ServerArgs, default_leaf: &str) -> anyhow::Result<ServerConfig> {
    let data_dir = a
        .data_dir
        .clone()
        .unwrap_or_else(|| default_dir(default_leaf));
    if a.token.is_some()
        && a.datastore_endpoint.is_empty()
        && a.server.is_none()
        && !kedge::join::saved_path(&data_dir).exists()
    {
        anyhow::bail!(
            "--token is for servers sharing an etcd: give --datastore-endpoint, or --server to join another server"
        );
    }
    let node_cert_validity = parse_ttl(&a.node_cert_validity)
        .ok()
        .flatten()
        .and_then(|d| d.to_std().ok())
        .filter(|d| !d.is_zero())
        .ok_or_else(|| {
            anyhow::anyhow!(
                "--node-cert-validity {:?}: expected a positive duration such as 365d, 720h, 30s",
                a.node_cert_validity
            )
        })?;
    Ok(ServerConfig {
        plugin_cache_dir: Some(
            a.plugin_cache_dir
                .clone()
                .unwrap_or_else(|| data_dir.join("plugin-cache")),
        ),
        data_dir,
        listen: a.listen,
        tls_sans: a.tls_san.clone(),
        plugins: PluginConfig {
            call_deadline: Duration::from_millis(a.plugin_deadline_ms),
            memory_limit: a.plugin_memory_mib << 20,
            cache_dir: None,
            baseline_compiler: true,
        },
        durable: true,
        registries: Default::default(),
        node_cert_validity,
        datastore: datastore(a),
        watch_history: a.watch_history,
        replica_name: a.replica_name.clone(),
        leader_election: leader_election(a)?,
        server_token: a.token.clone(),
        join: a.server.clone(),
    })
}

/// The plugins' leader-election timings from the flags, checked as Kubernetes checks them.
fn leader_election(a: &ServerArgs) -> anyhow::Result<kedge::plugins::lease::Timings> {
    let secs = |flag: &str, v: &str| -> anyhow::Result<Duration> {
        parse_ttl(v)
            .ok()
            .flatten()
            .and_then(|d| d.to_std().ok())
            .filter(|d| !d.is_zero())
            .ok_or_else(|| anyhow::anyhow!("--{flag} {v:?}: expected a duration such as 15s"))
    };
    let t = kedge::plugins::lease::Timings {
        lease_duration: secs(
            "leader-elect-lease-duration",
            &a.leader_elect_lease_duration,
        )?,
        renew_deadline: secs(
            "leader-elect-renew-deadline",
            &a.leader_elect_renew_deadline,
        )?,
        retry_period: secs("leader-elect-retry-period", &a.leader_elect_retry_period)?,
    };
    t.validate()
        .map_err(|e| anyhow::anyhow!("--leader-elect-*: {e}"))?;
    Ok(t)
}

/// The etcd datastore the flags name, if any.
fn datastore(a: &ServerArgs) -> Option<kedge::store::etcd::Options> {
    let endpoints: Vec<String> = a
        .datastore_endpoint
        .iter()
        .map(|e| e.trim().to_string())
        .filter(|e| !e.is_empty())
        .collect();
    if endpoints.is_empty() {
        return None;
    }
    let mut o = kedge::store::etcd::Options::new(endpoints);
    o.ca_file = a.datastore_cafile.clone();
    o.cert_file = a.datastore_certfile.clone();
    o.key_file = a.datastore_keyfile.clone();
    o.root = a.datastore_prefix.clone();
    Some(o)
}

fn parse_labels(raw: &[String]) -> anyhow::Result<Vec<(String, String)>> {
    raw.iter()
        .filter(|l| !l.is_empty())
        .map(|l| {
            l.split_once('=')
                .map(|(k, v)| (k.to_string(), v.to_string()))
                .ok_or_else(|| anyhow::anyhow!("--node-labels: {l:?} is not key=value"))
        })
        .collect()
}

fn parse_ttl(s: &str) -> anyhow::Result<Option<chrono::Duration>> {
    if s == "0" {
        return Ok(None);
    }
    // (By char: an empty or non-ASCII value is an error, not a panic.)
    let Some((last, _)) = s.char_indices().last() else {
        anyhow::bail!("--ttl: empty; expected e.g. 30m, 24h, 7d");
    };
    let (n, unit) = s.split_at(last);
    let n: i64 = n
        .parse()
        .with_context(|| format!("--ttl {s:?}: expected e.g. 30m, 24h, 7d"))?;
    Ok(Some(match unit {
        "s" => chrono::Duration::seconds(n),
        "m" => chrono::Duration::minutes(n),
        "h" => chrono::Duration::hours(n),
        "d" => chrono::Duration::days(n),
        _ => anyhow::bail!("--ttl {s:?}: unit must be s, m, h or d"),
    }))
}

async fn shutdown_signal(cancel: CancellationToken) {
    let mut term = tokio::signal::unix::signal(tokio::signal::unix::SignalKind::terminate())
        .expect("installing the SIGTERM handler");
    tokio::select! {
        _ = tokio::signal::ctrl_c() => {}
        _ = term.recv() => {}
    }
    tracing::info!("shutting down");
    cancel.cancel();
}

#[tokio::main]
async fn main() {
    tracing_subscriber::fmt()
        .with_env_filter(
            // hickory's DNS server logs every query at info: the node-local DNS answers
            // every pod's lookups, so only its warnings are worth a line, whatever RUST_LOG
            // asks of the rest.
            tracing_subscriber::EnvFilter::try_from_default_env()
                .unwrap_or_else(|_| {
                    "info,wasmtime=warn,cranelift=warn,quinn=warn,rustls=warn".into()
                })
                .add_directive("hickory_server=warn".parse().expect("a valid directive")),
        )
        .with_writer(std::io::stderr)
        .init();
    if let Err(e) = run(Cli::parse()).await {
        eprintln!("kedge: {e:#}");
        std::process::exit(1);
    }
}

/// `--container-log-max-size` and `--container-log-max-files` (the latter range-checked by
/// clap).
fn container_log_rotation(max_size: &str, max_files: u64) -> anyhow::Result<agent::LogRotation> {
    let max_bytes = kedge::core::quantity::parse_bytes(max_size)
        .ok()
        .filter(|&b| b > 0)
        .ok_or_else(|| {
            anyhow::anyhow!(
                "--container-log-max-size {max_size:?}: expected a positive size such as 10Mi"
            )
        })?;
    if max_files < 2 {
        anyhow::bail!(
            "--container-log-max-files {max_files}: must be at least 2 (the current file and one rotated)"
        );
    }
    Ok(agent::LogRotation {
        max_bytes,
        max_files: usize::try_from(max_files)?,
    })
}

async fn run(cli: Cli) -> anyhow::Result<()> {
    let cancel = CancellationToken::new();
    match cli.command {
        Command::Server {
            server: a,
            registries,
        } => {
            let mut cfg = server_config(&a, "server")?;
            cfg.registries = registries.load()?;
            let srv = server::start_with(cfg, a.network()?, a.encryption(), cancel.clone()).await?;
            eprintln!(
                "kedge server listening on {} (https) and {} (udp tunnel)\n  admin kubeconfig: {}\n  join token: {}",
                srv.https_addr,
                srv.tunnel_addr,
                srv.kubeconfig.display(),
                srv.join_token
            );
            shutdown_signal(cancel).await;
            let _ = tokio::time::timeout(Duration::from_secs(10), srv.stopped()).await;
        }
        Command::Agent {
            server,
            token,
            name,
            data_dir,
            node_labels,
            node_taints,
            object_refresh_seconds,
            eviction_hard,
            container_log_max_size,
            container_log_max_files,
            metric_resolution_seconds,
            images,
            cluster_cidr,
            cluster_dns,
            net,
        } => {
            let container_logs =
                container_log_rotation(&container_log_max_size, container_log_max_files)?;
            let network = net.config(&cluster_cidr, &cluster_dns)?;
            let (registries, image_store_max_bytes) = images.load()?;
            let taints = node_taints
                .iter()
                .filter(|t| !t.is_empty())
                .map(|t| {
                    t.parse()
                        .map_err(|e: String| anyhow::anyhow!("--node-taints: {e}"))
                })
                .collect::<anyhow::Result<Vec<_>>>()?;
            let cfg = AgentConfig {
                server,
                join_token: token,
                node_name: name.unwrap_or_else(hostname),
                data_dir: data_dir.unwrap_or_else(|| default_dir("agent")),
                labels: parse_labels(&node_labels)?,
                taints,
                registries,
                image_store_max_bytes,
                object_refresh: Duration::from_secs(object_refresh_seconds),
                eviction_hard,
                container_logs,
                network,
                metric_resolution: Duration::from_secs(metric_resolution_seconds),
                ensure_secret_pulled_images: images.ensure_secret_pulled_images,
            };
            let a = agent::start(cfg, cancel.clone()).await?;
            eprintln!("kedge agent running as node {}", a.node);
            shutdown_signal(cancel).await;
            let _ = tokio::time::timeout(Duration::from_secs(10), a.stopped()).await;
        }
        Command::Dev {
            server: a,
            name,
            images,
            net,
        } => {
            let network = net.config(&a.cluster_cidr, &a.cluster_dns)?;
            let (registries, image_store_max_bytes) = images.load()?;
            let mut cfg = server_config(&a, "dev")?;
            cfg.registries = registries.clone();
            let data_dir = cfg.data_dir.clone();
            let (srv, plugins) =
                server::start_serving(cfg, a.network()?, a.encryption(), cancel.clone()).await?;
            let connect = if srv.tunnel_addr.ip().is_unspecified() {
                SocketAddr::new([127, 0, 0, 1].into(), srv.tunnel_addr.port())
            } else {
                srv.tunnel_addr
            };
            let node = name.unwrap_or_else(hostname);
            let agent = agent::start(
                AgentConfig {
                    server: connect.to_string(),
                    join_token: Some(srv.join_token.clone()),
                    node_name: node.clone(),
                    data_dir: data_dir.join("agent"),
                    labels: vec![],
                    taints: vec![],
                    registries,
                    image_store_max_bytes,
                    object_refresh: agent::OBJECT_REFRESH,
                    eviction_hard: Default::default(),
                    container_logs: Default::default(),
                    network,
                    metric_resolution: agent::METRIC_RESOLUTION,
                    ensure_secret_pulled_images: images.ensure_secret_pulled_images,
                },
                cancel.clone(),
            );
            // The node joins while the plugins start (compiled on a first start).
            let (agent, ()) = tokio::try_join!(agent, plugins)?;
            println!(
                "kedge dev cluster is up: node {node}, API {}\n\n  kubectl --kubeconfig {} get nodes\n",
                srv.https_addr,
                srv.kubeconfig.display()
            );
            shutdown_signal(cancel).await;
            let _ = tokio::time::timeout(Duration::from_secs(10), async {
                agent.stopped().await;
                srv.stopped().await;
            })
            .await;
        }
        Command::Token {
            command:
                TokenCommand::Create {
                    kubeconfig,
                    ttl,
                    description,
                },
        } => {
            let ttl = parse_ttl(&ttl)?;
            let token =
                kedge::kubeclient::create_join_token(&kubeconfig, ttl, description.as_deref())
                    .await?;
            println!("{token}");
        }
        Command::Token {
            command: TokenCommand::List { kubeconfig },
        } => {
            let rows = kedge::kubeclient::list_join_tokens(&kubeconfig).await?;
            print!(
                "{}",
                kedge::node_identity::token_table(&rows, chrono::Utc::now())
            );
            if rows.iter().any(|r| !r.extra_groups.is_empty()) {
                eprintln!(
                    "note: EXTRA GROUPS (auth-extra-groups) are shown but have no effect in kedge: its bootstrap tokens only let nodes join"
                );
            }
        }
        Command::Token {
            command: TokenCommand::Delete { kubeconfig, id },
        } => {
            let id = kedge::kubeclient::delete_join_token(&kubeconfig, &id).await?;
            println!("bootstrap token {id} deleted");
        }
        Command::Node {
            command: NodeCommand::Revoke { kubeconfig, name },
        } => {
            let at = kedge::kubeclient::revoke_node(&kubeconfig, &name).await?;
            println!(
                "node {name}: certificates issued until {} revoked; its tunnel is closed.\n\
                 To let it back: kedge token create, then start its agent with --token <new token>.",
                kedge::core::meta::timestamp(at)
            );
        }
        Command::Snapshot {
            command: SnapshotCommand::Save { kubeconfig, file },
        } => {
            let (format, info) = kedge::snapshot::save(&kubeconfig, &file).await?;
            match info {
                Some(i) => println!(
                    "saved a snapshot of the {format} at revision {} ({} objects) to {}",
                    i.revision,
                    i.objects,
                    file.display()
                ),
                None => println!("saved a snapshot of the {format} to {}", file.display()),
            }
        }
        Command::Snapshot {
            command:
                SnapshotCommand::Restore {
                    file,
                    data_dir,
                    bump_revision,
                    etcd_data_dir,
                    etcd_name,
                    etcd_initial_cluster,
                    etcd_initial_advertise_peer_urls,
                },
        } => {
            let line = tokio::task::spawn_blocking(move || {
                let (format, _) = kedge::snapshot::inspect(&file)?;
                match (format, etcd_data_dir) {
                    (kedge::snapshot::Format::Redb, None) => {
                        let dir = data_dir.unwrap_or_else(|| default_dir("server"));
                        kedge::snapshot::restore_redb(&file, &dir, bump_revision)
                    }
                    (kedge::snapshot::Format::Redb, Some(_)) => anyhow::bail!(
                        "{} is a snapshot of the embedded store: restore it with --data-dir, not --etcd-data-dir",
                        file.display()
                    ),
                    (kedge::snapshot::Format::Etcd, Some(dir)) => {
                        let member = kedge::snapshot::EtcdMember {
                            data_dir: dir,
                            name: etcd_name,
                            initial_cluster: etcd_initial_cluster,
                            initial_advertise_peer_urls: etcd_initial_advertise_peer_urls,
                        };
                        kedge::snapshot::restore_etcd(&file, &member, bump_revision)
                    }
                    (kedge::snapshot::Format::Etcd, None) => anyhow::bail!(
                        "{} is an etcd snapshot: give --etcd-data-dir (a new data dir for an etcd member) and the member's --etcd-name, --etcd-initial-cluster, --etcd-initial-advertise-peer-urls",
                        file.display()
                    ),
                }
            })
            .await??;
            println!("{line}");
        }
        Command::Datastore {
            command:
                DatastoreCommand::Migrate {
                    data_dir,
                    to,
                    datastore_cafile,
                    datastore_certfile,
                    datastore_keyfile,
                    datastore_prefix,
                    encryption_provider_config,
                    secrets_encryption,
                },
        } => {
            let dir = data_dir.unwrap_or_else(|| default_dir("server"));
            let endpoints: Vec<String> = to
                .iter()
                .map(|e| e.trim().to_string())
                .filter(|e| !e.is_empty())
                .collect();
            let mut etcd = kedge::store::etcd::Options::new(endpoints.clone());
            etcd.ca_file = datastore_cafile;
            etcd.cert_file = datastore_certfile;
            etcd.key_file = datastore_keyfile;
            etcd.root = datastore_prefix;
            let encryption = match (encryption_provider_config, secrets_encryption) {
                (Some(f), _) => server::StoreEncryption::File(f),
                (None, true) => server::StoreEncryption::Generated,
                (None, false) => server::StoreEncryption::Off,
            };
            let m = tokio::task::spawn_blocking(move || {
                let encryption = encryption.load(&dir)?;
                kedge::snapshot::migrate(&dir, encryption, etcd)
            })
            .await??;
            println!(
                "migrated {} objects (embedded store revision {}) to etcd at {} (now at revision {}); start the server with --datastore-endpoint {}",
                m.objects,
                m.from_revision,
                endpoints.join(","),
                m.to_revision,
                endpoints.join(",")
            );
        }
        Command::Image {
            command: ImageCommand::Import { files, data_dir },
        } => {
            let dir = data_dir
                .unwrap_or_else(|| default_dir("agent"))
                .join("images");
            tokio::task::spawn_blocking(move || {
                let store = kedge_registry::LocalImageStore::open_exclusive(&dir)?;
                for file in &files {
                    // The error names the archive; what was imported before it is printed.
                    let report = store.import_archive(file, std::time::SystemTime::now())?;
                    for image in &report.images {
                        println!("{}@{}", image.reference, image.digest);
                    }
                    for skipped in &report.skipped {
                        eprintln!("{}: not imported: {skipped}", file.display());
                    }
                }
                anyhow::Ok(())
            })
            .await??;
        }
        Command::Push {
            file,
            reference,
            username,
            password,
            docker_config,
            ca_file,
            insecure_skip_tls_verify,
            registries_config,
        } => {
            let opts = kedge::push::PushOptions {
                username,
                password,
                docker_config,
                ca_file,
                insecure_skip_tls_verify,
                registries_config,
            };
            let digest = kedge::push::push(&file, &reference, opts).await?;
            println!("{reference}@{digest}");
        }
    }
    Ok(())
}
