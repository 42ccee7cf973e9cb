//! The service proxy's userspace mode: the agent itself listens on every Service address
//! and splices each connection to an endpoint.
//!
//! For agents without root (no nftables), and for endpoints the kernel cannot reach by
//! DNAT — a later change routes endpoints on nodes behind another NAT through the tunnel
//! relay, which is why the way we reach an endpoint is a [`Connector`]. In exchange for a
//! copy through the agent we get what kernel DNAT cannot do: when an endpoint refuses or
//! times out, the next one is tried, so a dead pod costs a client latency, not an error.
//!
//! Each listener owns its connections: removing a Service closes its listener and the
//! connections through it; an unchanged Service port keeps both across syncs, and a
//! changed one only swaps the endpoint list its listener reads.

use std::collections::{BTreeMap, BTreeSet, HashMap};
use std::future::Future;
use std::io;
use std::net::{IpAddr, Ipv4Addr, SocketAddr, SocketAddrV4};
use std::pin::Pin;
use std::sync::{Arc, Mutex as StdMutex};
use std::time::Duration;

use tokio::io::{AsyncRead, AsyncWrite};
use tokio::net::{TcpListener, TcpStream, UdpSocket};
use tokio::sync::Mutex;
use tokio::task::JoinSet;
use tokio::time::Instant;
use tokio_util::task::AbortOnDropHandle;

use crate::model::{Endpoint, Protocol, ProxyConfig, ServiceTable, SyncStats};

/// Client connections served at once per listener; beyond it new ones are closed at once,
/// so a flood on one Service cannot exhaust the agent's file descriptors.
const MAX_CONNECTIONS_PER_LISTENER: usize = 4096;
/// UDP clients tracked at once per listener (each holds a socket); the rest are dropped.
const MAX_UDP_FLOWS_PER_LISTENER: usize = 4096;
/// Clients remembered for session affinity per listener; expired entries go first.
const MAX_AFFINITY_ENTRIES: usize = 65536;
/// Largest UDP datagram.
const UDP_BUFFER: usize = 65535;

#[derive(Debug, thiserror::Error)]
pub enum Error {
    #[error("cannot set up the service interface {name}")]
    Interface {
        name: String,
        #[source]
        source: io::Error,
    },
}

pub type Result<T, E = Error> = std::result::Result<T, E>;

/// A byte stream to an endpoint: a TCP socket, or later a stream relayed over the tunnel.
pub trait ProxyStream: AsyncRead + AsyncWrite + Unpin + Send {}
impl<T: AsyncRead + AsyncWrite + Unpin + Send> ProxyStream for T {}

pub type BoxStream = Box<dyn ProxyStream>;
pub type ConnectFuture<'a> = Pin<Box<dyn Future<Output = io::Result<BoxStream>> + Send + 'a>>;

/// Where a connection goes; carries the endpoint's node so a relaying connector can tell
/// which endpoints it cannot reach directly.
#[derive(Clone, Debug, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub struct Target {
    pub addr: SocketAddrV4,
    pub node_name: Option<String>,
}

/// How the proxy opens a TCP stream to an endpoint. UDP always goes direct.
pub trait Connector: Send + Sync {
    fn connect<'a>(&'a self, target: &'a Target) -> ConnectFuture<'a>;
}

/// A plain TCP connection from this node.
#[derive(Clone, Copy, Debug, Default)]
pub struct DirectConnector;

impl Connector for DirectConnector {
    fn connect<'a>(&'a self, target: &'a Target) -> ConnectFuture<'a> {
        Box::pin(async move {
            let s = TcpStream::connect(target.addr).await?;
            let _ = s.set_nodelay(true);
            Ok(Box::new(s) as BoxStream)
        })
    }
}

/// Settings of the userspace proxy.
#[derive(Clone)]
pub struct UserspaceOptions {
    /// The dummy interface to put ClusterIPs on ([`crate::iface`]); needs root. On a kernel
    /// without dummy interfaces they go on `lo` under [`crate::iface::LOOPBACK_LABEL`].
    /// `None` when the ClusterIPs are already local (tests use 127.0.0.0/8).
    pub interface: Option<String>,
    /// How long one endpoint may take to accept before the next is tried.
    pub connect_timeout: Duration,
    /// A UDP client quiet this long is forgotten (conntrack's UDP default is 30 s).
    pub udp_idle_timeout: Duration,
    pub connector: Arc<dyn Connector>,
}

impl Default for UserspaceOptions {
    fn default() -> Self {
        UserspaceOptions {
            interface: None,
            connect_timeout: Duration::from_secs(2),
            udp_idle_timeout: Duration::from_secs(30),
            connector: Arc::new(DirectConnector),
        }
    }
}

/// One socket the proxy listens on.
#[derive(Clone, Copy, Debug, PartialEq, Eq, PartialOrd, Ord, Hash)]
struct ListenKey {
    protocol: Protocol,
    addr: SocketAddrV4,
}

/// Where a listener sends traffic; compared on sync to see whether anything changed.
#[derive(Clone, Debug, PartialEq, Eq)]
struct RouteSpec {
    service: String,
    /// The endpoints for ordinary clients.
    primary: Vec<Target>,
    /// externalTrafficPolicy Local: pods and the node itself are not external and get
    /// every endpoint, as in nft mode.
    internal: Option<Vec<Target>>,
    affinity: Option<Duration>,
}

/// The endpoint choice of one listener, swapped in place on sync.
struct Route {
    spec: RouteSpec,
    primary: Picker,
    internal: Picker,
}

impl Route {
    fn new(spec: RouteSpec) -> Route {
        let primary = Picker::new(spec.primary.clone(), spec.affinity);
        let internal = Picker::new(spec.internal.clone().unwrap_or_default(), spec.affinity);
        Route {
            spec,
            primary,
            internal,
        }
    }

    fn update(&mut self, spec: RouteSpec) {
        self.primary.set(spec.primary.clone(), spec.affinity);
        self.internal
            .set(spec.internal.clone().unwrap_or_default(), spec.affinity);
        self.spec = spec;
    }

    fn picker(&mut self, internal_client: bool) -> &mut Picker {
        if internal_client && self.spec.internal.is_some() {
            &mut self.internal
        } else {
            &mut self.primary
        }
    }
}

/// Round robin over endpoints, with optional ClientIP affinity. Pure but for the instants
/// callers pass in, so tests drive time.
#[derive(Debug)]
pub(crate) struct Picker {
    targets: Vec<Target>,
    next: usize,
    affinity: Option<Duration>,
    pins: HashMap<Ipv4Addr, (Target, Instant)>,
}

impl Picker {
    pub(crate) fn new(targets: Vec<Target>, affinity: Option<Duration>) -> Picker {
        Picker {
            targets,
            next: 0,
            affinity,
            pins: HashMap::new(),
        }
    }

    fn set(&mut self, targets: Vec<Target>, affinity: Option<Duration>) {
        if affinity.is_none() {
            self.pins.clear();
        }
        self.targets = targets;
        self.affinity = affinity;
    }

    /// Every endpoint, in the order to try them: the client's pinned endpoint if its pin
    /// is live, then round robin. Retrying down this list is what skips a dead endpoint.
    pub(crate) fn order(&mut self, client: Ipv4Addr, now: Instant) -> Vec<Target> {
        let n = self.targets.len();
        let mut out = Vec::with_capacity(n);
        if let (Some(ttl), Some((t, at))) = (self.affinity, self.pins.get(&client))
            && now.saturating_duration_since(*at) < ttl
            && self.targets.contains(t)
        {
            out.push(t.clone());
        }
        if n > 0 {
            let start = self.next % n;
            self.next = self.next.wrapping_add(1);
            for i in 0..n {
                let t = &self.targets[(start + i) % n];
                if !out.contains(t) {
                    out.push(t.clone());
                }
            }
        }
        out
    }

    /// Records that `client` reached `target`, which (with affinity) pins it there.
    pub(crate) fn connected(&mut self, client: Ipv4Addr, target: &Target, now: Instant) {
        let Some(ttl) = self.affinity else { return };
        if self.pins.len() >= MAX_AFFINITY_ENTRIES && !self.pins.contains_key(&client) {
            self.pins
                .retain(|_, (_, at)| now.saturating_duration_since(*at) < ttl);
            if self.pins.len() >= MAX_AFFINITY_ENTRIES {
                return;
            }
        }
        self.pins.insert(client, (target.clone(), now));
    }
}

struct Listener {
    route: Arc<StdMutex<Route>>,
    _task: AbortOnDropHandle<()>,
}

/// What every listener task shares.
struct Shared {
    cfg: ProxyConfig,
    opts: UserspaceOptions,
}

impl Shared {
    /// Whether a client counts as inside the cluster for externalTrafficPolicy Local.
    fn is_internal(&self, client: Ipv4Addr) -> bool {
        client.is_loopback()
            || self.cfg.in_cluster_cidr(client)
            || self.cfg.node_ips.contains(&client)
    }
}

#[derive(Default)]
struct State {
    listeners: BTreeMap<ListenKey, Listener>,
    /// The kernel had no dummy interfaces, so the ClusterIPs are on `lo` (warned once).
    on_loopback: bool,
}

/// The userspace service proxy. Listener tasks are owned by it and stop when it is dropped
/// or shut down.
pub struct UserspaceProxy {
    shared: Arc<Shared>,
    state: Mutex<State>,
}

impl UserspaceProxy {
    pub fn new(cfg: ProxyConfig, opts: UserspaceOptions) -> UserspaceProxy {
        UserspaceProxy {
            shared: Arc::new(Shared { cfg, opts }),
            state: Mutex::new(State::default()),
        }
    }

    /// Opens listeners for new Service ports, closes those of removed ones and gives
    /// changed ones their new endpoints. A port that cannot be bound (in use) is logged and
    /// counted in `failed`; the rest still sync.
    pub async fn sync(&self, table: &ServiceTable) -> Result<SyncStats> {
        let wanted = desired(table, &self.shared.cfg);
        let mut state = self.state.lock().await;
        if let Some(name) = &self.shared.opts.interface {
            let ips: BTreeSet<Ipv4Addr> = table.cluster_ips();
            let name2 = name.clone();
            let on_dummy =
                tokio::task::spawn_blocking(move || match crate::iface::ensure_dummy(&name2) {
                    Ok(()) => crate::iface::sync_addresses(&name2, &ips).map(|()| true),
                    Err(e) if crate::iface::dummy_unsupported(&e) => {
                        crate::iface::sync_loopback_addresses(&ips).map(|()| false)
                    }
                    Err(e) => Err(e),
                })
                .await
                .map_err(io::Error::other)
                .and_then(|r| r)
                .map_err(|source| Error::Interface {
                    name: name.clone(),
                    source,
                })?;
            if !on_dummy && !state.on_loopback {
                tracing::warn!(
                    label = crate::iface::LOOPBACK_LABEL,
                    "no dummy interfaces in this kernel, ClusterIPs go on lo"
                );
            }
            state.on_loopback = !on_dummy;
        }
        let mut stats = SyncStats {
            service_ports: wanted.len(),
            endpoints: wanted
                .values()
                .flat_map(|s| s.primary.iter().chain(s.internal.iter().flatten()))
                .collect::<BTreeSet<_>>()
                .len(),
            ..SyncStats::default()
        };
        let before = state.listeners.len();
        state.listeners.retain(|k, _| wanted.contains_key(k));
        stats.removed = before - state.listeners.len();
        for (key, spec) in wanted {
            if let Some(l) = state.listeners.get(&key) {
                let mut route = l.route.lock().unwrap_or_else(|p| p.into_inner());
                if route.spec != spec {
                    route.update(spec);
                    stats.changed += 1;
                }
                continue;
            }
            let service = spec.service.clone();
            match self.listen(key, spec).await {
                Ok(l) => {
                    state.listeners.insert(key, l);
                    stats.added += 1;
                }
                Err(error) => {
                    tracing::warn!(service, addr = %key.addr, protocol = key.protocol.as_str(), %error, "cannot listen");
                    stats.failed += 1;
                }
            }
        }
        Ok(stats)
    }

    /// Closes every listener and connection and removes the service interface.
    pub async fn shutdown(&self) {
        self.state.lock().await.listeners.clear();
        if let Some(name) = self.shared.opts.interface.clone() {
            let r = tokio::task::spawn_blocking(move || {
                crate::iface::remove(&name)?;
                crate::iface::sync_loopback_addresses(&BTreeSet::new())
            })
            .await;
            if let Ok(Err(error)) = r {
                tracing::warn!(%error, "removing the service interface failed");
            }
        }
    }

    async fn listen(&self, key: ListenKey, spec: RouteSpec) -> io::Result<Listener> {
        let route = Arc::new(StdMutex::new(Route::new(spec)));
        let task = match key.protocol {
            Protocol::Tcp => {
                let l = TcpListener::bind(key.addr).await?;
                tokio::spawn(serve_tcp(l, route.clone(), self.shared.clone()))
            }
            Protocol::Udp => {
                let s = UdpSocket::bind(key.addr).await?;
                tokio::spawn(serve_udp(Arc::new(s), route.clone(), self.shared.clone()))
            }
        };
        Ok(Listener {
            route,
            _task: AbortOnDropHandle::new(task),
        })
    }
}

fn targets(eps: &[&Endpoint]) -> Vec<Target> {
    eps.iter()
        .map(|e| Target {
            addr: SocketAddrV4::new(e.ip, e.port),
            node_name: e.node_name.clone(),
        })
        .collect()
}

/// Every socket the table asks for. No listener for a port without usable endpoints: the
/// client then gets a refusal, as nft mode's reject gives it.
fn desired(table: &ServiceTable, cfg: &ProxyConfig) -> BTreeMap<ListenKey, RouteSpec> {
    let mut out = BTreeMap::new();
    for svc in &table.services {
        let service = format!("{}/{}", svc.namespace, svc.name);
        let affinity = svc
            .affinity_timeout_secs
            .map(|s| Duration::from_secs(u64::from(s)));
        for port in &svc.ports {
            let all = targets(&port.usable(None));
            let local = targets(&port.usable(Some(&cfg.node_name)));
            let mut add =
                |ip: Ipv4Addr, p: u16, primary: Vec<Target>, internal: Option<Vec<Target>>| {
                    if primary.is_empty() && internal.as_ref().is_none_or(Vec::is_empty) {
                        return;
                    }
                    let key = ListenKey {
                        protocol: port.protocol,
                        addr: SocketAddrV4::new(ip, p),
                    };
                    // First Service wins a contested address; the API should have refused it.
                    out.entry(key).or_insert(RouteSpec {
                        service: service.clone(),
                        primary,
                        internal,
                        affinity,
                    });
                };
            let internal = if svc.internal_local { &local } else { &all };
            for ip in &svc.cluster_ips {
                add(*ip, port.port, internal.clone(), None);
            }
            let (ext, ext_internal) = if svc.external_local {
                (local.clone(), Some(all.clone()))
            } else {
                (all.clone(), None)
            };
            if let Some(np) = port.node_port.filter(|_| svc.has_node_ports()) {
                add(Ipv4Addr::UNSPECIFIED, np, ext.clone(), ext_internal.clone());
            }
            if cfg.service_lb && svc.kind == crate::model::ServiceType::LoadBalancer {
                for ip in &cfg.node_ips {
                    add(*ip, port.port, ext.clone(), ext_internal.clone());
                }
            }
        }
    }
    out
}

fn client_v4(addr: SocketAddr) -> Ipv4Addr {
    match addr.ip() {
        IpAddr::V4(ip) => ip,
        IpAddr::V6(ip) => ip.to_ipv4_mapped().unwrap_or(Ipv4Addr::UNSPECIFIED),
    }
}

async fn serve_tcp(listener: TcpListener, route: Arc<StdMutex<Route>>, shared: Arc<Shared>) {
    // Dropping this set (the task is aborted) aborts every connection of the listener.
    let mut conns = JoinSet::new();
    loop {
        tokio::select! {
            accepted = listener.accept() => match accepted {
                Ok((sock, peer)) => {
                    if conns.len() >= MAX_CONNECTIONS_PER_LISTENER {
                        tracing::debug!(%peer, "too many connections, closing");
                        continue;
                    }
                    conns.spawn(handle_tcp(sock, peer, route.clone(), shared.clone()));
                }
                Err(error) => {
                    // Usually EMFILE: back off instead of spinning.
                    tracing::debug!(%error, "accept failed");
                    tokio::time::sleep(Duration::from_millis(100)).await;
                }
            },
            Some(_) = conns.join_next(), if !conns.is_empty() => {}
        }
    }
}

async fn handle_tcp(
    mut client: TcpStream,
    peer: SocketAddr,
    route: Arc<StdMutex<Route>>,
    shared: Arc<Shared>,
) {
    let client_ip = client_v4(peer);
    let internal = shared.is_internal(client_ip);
    let order = {
        let mut r = route.lock().unwrap_or_else(|p| p.into_inner());
        r.picker(internal).order(client_ip, Instant::now())
    };
    for target in &order {
        let attempt = tokio::time::timeout(
            shared.opts.connect_timeout,
            shared.opts.connector.connect(target),
        )
        .await;
        let mut upstream = match attempt {
            Ok(Ok(s)) => s,
            Ok(Err(error)) => {
                tracing::debug!(endpoint = %target.addr, %error, "endpoint refused, trying the next");
                continue;
            }
            Err(_) => {
                tracing::debug!(endpoint = %target.addr, "endpoint timed out, trying the next");
                continue;
            }
        };
        {
            let mut r = route.lock().unwrap_or_else(|p| p.into_inner());
            r.picker(internal)
                .connected(client_ip, target, Instant::now());
        }
        let _ = client.set_nodelay(true);
        if let Err(error) = tokio::io::copy_bidirectional(&mut client, &mut upstream).await {
            tracing::debug!(%peer, endpoint = %target.addr, %error, "connection ended");
        }
        return;
    }
    tracing::debug!(%peer, tried = order.len(), "no endpoint accepted");
}

/// One UDP client's association with an endpoint.
struct Flow {
    upstream: Arc<UdpSocket>,
    last: Arc<StdMutex<Instant>>,
    task: AbortOnDropHandle<()>,
}

async fn serve_udp(sock: Arc<UdpSocket>, route: Arc<StdMutex<Route>>, shared: Arc<Shared>) {
    let idle = shared.opts.udp_idle_timeout;
    let mut flows: HashMap<SocketAddr, Flow> = HashMap::new();
    let mut buf = vec![0u8; UDP_BUFFER];
    let mut sweep = tokio::time::interval((idle / 2).max(Duration::from_millis(100)));
    loop {
        tokio::select! {
            received = sock.recv_from(&mut buf) => {
                let Ok((n, peer)) = received else { continue };
                let flow = match flows.get(&peer) {
                    Some(f) if !f.task.is_finished() => f,
                    _ => {
                        if flows.len() >= MAX_UDP_FLOWS_PER_LISTENER {
                            flows.retain(|_, f| !f.task.is_finished());
                            if flows.len() >= MAX_UDP_FLOWS_PER_LISTENER {
                                continue;
                            }
                        }
                        match open_flow(&sock, peer, &route, &shared).await {
                            Some(f) => flows.entry(peer).insert_entry(f).into_mut(),
                            None => continue,
                        }
                    }
                };
                *flow.last.lock().unwrap_or_else(|p| p.into_inner()) = Instant::now();
                let _ = flow.upstream.send(&buf[..n]).await;
            }
            _ = sweep.tick() => {
                let now = Instant::now();
                flows.retain(|_, f| {
                    !f.task.is_finished()
                        && now.saturating_duration_since(*f.last.lock().unwrap_or_else(|p| p.into_inner())) < idle
                });
            }
        }
    }
}

async fn open_flow(
    sock: &Arc<UdpSocket>,
    peer: SocketAddr,
    route: &Arc<StdMutex<Route>>,
    shared: &Arc<Shared>,
) -> Option<Flow> {
    let client_ip = client_v4(peer);
    let internal = shared.is_internal(client_ip);
    // No retry for UDP: nothing tells a silent endpoint from a slow one.
    let target = {
        let mut r = route.lock().unwrap_or_else(|p| p.into_inner());
        let p = r.picker(internal);
        let t = p.order(client_ip, Instant::now()).into_iter().next()?;
        p.connected(client_ip, &t, Instant::now());
        t
    };
    let upstream = UdpSocket::bind((Ipv4Addr::UNSPECIFIED, 0)).await.ok()?;
    upstream.connect(target.addr).await.ok()?;
    let upstream = Arc::new(upstream);
    let last = Arc::new(StdMutex::new(Instant::now()));
    let idle = shared.opts.udp_idle_timeout;
    let task = tokio::spawn({
        let (upstream, last, sock) = (upstream.clone(), last.clone(), sock.clone());
        async move {
            let mut buf = vec![0u8; UDP_BUFFER];
            loop {
                let deadline = *last.lock().unwrap_or_else(|p| p.into_inner()) + idle;
                match tokio::time::timeout_at(deadline, upstream.recv(&mut buf)).await {
                    Ok(Ok(n)) => {
                        *last.lock().unwrap_or_else(|p| p.into_inner()) = Instant::now();
                        let _ = sock.send_to(&buf[..n], peer).await;
                    }
                    // ICMP unreachable from the endpoint: let the next datagram re-pick.
                    Ok(Err(_)) => return,
                    Err(_) => {
                        let last = *last.lock().unwrap_or_else(|p| p.into_inner());
                        if Instant::now().saturating_duration_since(last) >= idle {
                            return;
                        }
                    }
                }
            }
        }
    });
    Some(Flow {
        upstream,
        last,
        task: AbortOnDropHandle::new(task),
    })
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::model::{Endpoint, Service, ServicePort, ServiceType};
    use tokio::io::{AsyncReadExt, AsyncWriteExt};

    fn cfg() -> ProxyConfig {
        ProxyConfig {
            node_name: "n1".into(),
            node_ips: vec![],
            cluster_cidr: (Ipv4Addr::new(10, 42, 0, 0), 16),
            service_lb: false,
        }
    }

    fn service(
        name: &str,
        ip: Ipv4Addr,
        port: u16,
        protocol: Protocol,
        eps: &[SocketAddrV4],
        affinity: Option<u32>,
    ) -> Service {
        Service {
            namespace: "t".into(),
            name: name.into(),
            kind: ServiceType::ClusterIP,
            cluster_ips: vec![ip],
            load_balancer_ips: vec![],
            ports: vec![ServicePort {
                name: String::new(),
                protocol,
                port,
                node_port: None,
                endpoints: eps
                    .iter()
                    .map(|a| Endpoint {
                        ip: *a.ip(),
                        port: a.port(),
                        node_name: Some("n1".into()),
                        ready: true,
                        serving: true,
                        terminating: false,
                    })
                    .collect(),
            }],
            affinity_timeout_secs: affinity,
            internal_local: false,
            external_local: false,
        }
    }

    /// A free port on `ip` (bound, then released).
    fn free_port(ip: Ipv4Addr) -> u16 {
        std::net::TcpListener::bind((ip, 0))
            .unwrap()
            .local_addr()
            .unwrap()
            .port()
    }

    /// A backend that writes its name and closes.
    async fn ident_server(ident: &'static str) -> (SocketAddrV4, AbortOnDropHandle<()>) {
        let l = TcpListener::bind("127.0.0.1:0").await.unwrap();
        let SocketAddr::V4(addr) = l.local_addr().unwrap() else {
            unreachable!()
        };
        let task = tokio::spawn(async move {
            while let Ok((mut s, _)) = l.accept().await {
                let _ = s.write_all(ident.as_bytes()).await;
            }
        });
        (addr, AbortOnDropHandle::new(task))
    }

    async fn echo_server() -> (SocketAddrV4, AbortOnDropHandle<()>) {
        let l = TcpListener::bind("127.0.0.1:0").await.unwrap();
        let SocketAddr::V4(addr) = l.local_addr().unwrap() else {
            unreachable!()
        };
        let task = tokio::spawn(async move {
            let mut conns = JoinSet::new();
            while let Ok((mut s, _)) = l.accept().await {
                conns.spawn(async move {
                    let (mut r, mut w) = s.split();
                    let _ = tokio::io::copy(&mut r, &mut w).await;
                });
            }
        });
        (addr, AbortOnDropHandle::new(task))
    }

    async fn fetch(addr: SocketAddrV4) -> io::Result<String> {
        tokio::time::timeout(Duration::from_secs(5), async {
            let mut s = TcpStream::connect(addr).await?;
            let mut out = String::new();
            s.read_to_string(&mut out).await?;
            Ok(out)
        })
        .await
        .map_err(io::Error::other)?
    }

    fn proxy() -> UserspaceProxy {
        UserspaceProxy::new(
            cfg(),
            UserspaceOptions {
                connect_timeout: Duration::from_millis(500),
                ..UserspaceOptions::default()
            },
        )
    }

    #[tokio::test]
    async fn round_robin_over_two_backends() {
        let (a, _ta) = ident_server("a").await;
        let (b, _tb) = ident_server("b").await;
        let vip = Ipv4Addr::new(127, 77, 1, 1);
        let port = free_port(vip);
        let p = proxy();
        let st = p
            .sync(&ServiceTable {
                services: vec![service("rr", vip, port, Protocol::Tcp, &[a, b], None)],
            })
            .await
            .unwrap();
        assert_eq!((st.added, st.failed), (1, 0));
        let mut got = Vec::new();
        for _ in 0..4 {
            got.push(fetch(SocketAddrV4::new(vip, port)).await.unwrap());
        }
        assert_eq!(got[0], got[2]);
        assert_eq!(got[1], got[3]);
        assert_ne!(got[0], got[1], "{got:?}");
    }

    #[tokio::test]
    async fn a_dead_backend_is_skipped_by_retrying_the_next() {
        let dead = SocketAddrV4::new(Ipv4Addr::LOCALHOST, free_port(Ipv4Addr::LOCALHOST));
        let (b, _tb) = ident_server("alive").await;
        let vip = Ipv4Addr::new(127, 77, 2, 1);
        let port = free_port(vip);
        let p = proxy();
        p.sync(&ServiceTable {
            services: vec![service("retry", vip, port, Protocol::Tcp, &[dead, b], None)],
        })
        .await
        .unwrap();
        for _ in 0..4 {
            assert_eq!(fetch(SocketAddrV4::new(vip, port)).await.unwrap(), "alive");
        }
    }

    #[tokio::test]
    async fn client_ip_affinity_pins_one_client() {
        let (a, _ta) = ident_server("a").await;
        let (b, _tb) = ident_server("b").await;
        let vip = Ipv4Addr::new(127, 77, 3, 1);
        let port = free_port(vip);
        let p = proxy();
        p.sync(&ServiceTable {
            services: vec![service(
                "sticky",
                vip,
                port,
                Protocol::Tcp,
                &[a, b],
                Some(60),
            )],
        })
        .await
        .unwrap();
        let first = fetch(SocketAddrV4::new(vip, port)).await.unwrap();
        for _ in 0..5 {
            assert_eq!(fetch(SocketAddrV4::new(vip, port)).await.unwrap(), first);
        }
    }

    #[test]
    fn affinity_expires_and_falls_back_to_round_robin() {
        let t = |p| Target {
            addr: SocketAddrV4::new(Ipv4Addr::LOCALHOST, p),
            node_name: None,
        };
        let mut picker = Picker::new(vec![t(1), t(2)], Some(Duration::from_secs(10)));
        let client = Ipv4Addr::new(10, 0, 0, 1);
        let now = Instant::now();
        let first = picker.order(client, now);
        assert_eq!(first, vec![t(1), t(2)]);
        picker.connected(client, &t(2), now);
        assert_eq!(
            picker.order(client, now + Duration::from_secs(5))[0],
            t(2),
            "pinned"
        );
        // Expired: plain round robin again (which is at t(1) after two picks).
        assert_eq!(picker.order(client, now + Duration::from_secs(11))[0], t(1));
        // A pinned endpoint that went away is ignored.
        picker.connected(client, &t(2), now);
        picker.set(vec![t(1)], Some(Duration::from_secs(10)));
        assert_eq!(picker.order(client, now), vec![t(1)]);
    }

    #[tokio::test]
    async fn udp_round_trips_through_the_proxy() {
        let backend = UdpSocket::bind("127.0.0.1:0").await.unwrap();
        let SocketAddr::V4(baddr) = backend.local_addr().unwrap() else {
            unreachable!()
        };
        let _echo = AbortOnDropHandle::new(tokio::spawn(async move {
            let mut buf = [0u8; 1500];
            while let Ok((n, from)) = backend.recv_from(&mut buf).await {
                let _ = backend.send_to(&buf[..n], from).await;
            }
        }));
        let vip = Ipv4Addr::new(127, 77, 4, 1);
        let port = std::net::UdpSocket::bind((vip, 0))
            .unwrap()
            .local_addr()
            .unwrap()
            .port();
        let p = proxy();
        let st = p
            .sync(&ServiceTable {
                services: vec![service("udp", vip, port, Protocol::Udp, &[baddr], None)],
            })
            .await
            .unwrap();
        assert_eq!(st.failed, 0);
        let client = UdpSocket::bind("127.0.0.1:0").await.unwrap();
        client.connect((vip, port)).await.unwrap();
        for msg in [&b"ping"[..], b"pong"] {
            client.send(msg).await.unwrap();
            let mut buf = [0u8; 64];
            let n = tokio::time::timeout(Duration::from_secs(5), client.recv(&mut buf))
                .await
                .unwrap()
                .unwrap();
            assert_eq!(&buf[..n], msg);
        }
    }

    #[tokio::test]
    async fn incremental_sync_keeps_open_connections() {
        let (echo, _te) = echo_server().await;
        let (other, _to) = echo_server().await;
        let vip = Ipv4Addr::new(127, 77, 5, 1);
        let port = free_port(vip);
        let vip2 = Ipv4Addr::new(127, 77, 5, 2);
        let port2 = free_port(vip2);
        let p = proxy();
        p.sync(&ServiceTable {
            services: vec![service("keep", vip, port, Protocol::Tcp, &[echo], None)],
        })
        .await
        .unwrap();
        let mut conn = TcpStream::connect((vip, port)).await.unwrap();
        let mut buf = [0u8; 1];
        conn.write_all(b"1").await.unwrap();
        conn.read_exact(&mut buf).await.unwrap();
        assert_eq!(&buf, b"1");
        // Another Service appears and this one gains an endpoint.
        let st = p
            .sync(&ServiceTable {
                services: vec![
                    service("keep", vip, port, Protocol::Tcp, &[echo, other], None),
                    service("new", vip2, port2, Protocol::Tcp, &[other], None),
                ],
            })
            .await
            .unwrap();
        assert_eq!((st.added, st.changed, st.removed), (1, 1, 0), "{st:?}");
        conn.write_all(b"2").await.unwrap();
        tokio::time::timeout(Duration::from_secs(5), conn.read_exact(&mut buf))
            .await
            .unwrap()
            .unwrap();
        assert_eq!(&buf, b"2", "the connection survived the sync");
    }

    #[tokio::test]
    async fn removing_a_service_closes_its_listener() {
        let (a, _ta) = ident_server("a").await;
        let vip = Ipv4Addr::new(127, 77, 6, 1);
        let port = free_port(vip);
        let p = proxy();
        p.sync(&ServiceTable {
            services: vec![service("gone", vip, port, Protocol::Tcp, &[a], None)],
        })
        .await
        .unwrap();
        assert_eq!(fetch(SocketAddrV4::new(vip, port)).await.unwrap(), "a");
        let st = p.sync(&ServiceTable::default()).await.unwrap();
        assert_eq!(st.removed, 1);
        // The abort lands at the task's next await; give it a moment, bounded.
        let mut refused = false;
        for _ in 0..50 {
            if TcpStream::connect((vip, port)).await.is_err() {
                refused = true;
                break;
            }
            tokio::time::sleep(Duration::from_millis(20)).await;
        }
        assert!(refused, "listener still open");
    }

    #[tokio::test]
    async fn a_port_without_usable_endpoints_has_no_listener() {
        let vip = Ipv4Addr::new(127, 77, 7, 1);
        let port = free_port(vip);
        let p = proxy();
        let st = p
            .sync(&ServiceTable {
                services: vec![service("empty", vip, port, Protocol::Tcp, &[], None)],
            })
            .await
            .unwrap();
        assert_eq!(st.added, 0);
        assert!(TcpStream::connect((vip, port)).await.is_err());
    }

    /// NodePorts listen on every address; with externalTrafficPolicy Local a client on the
    /// node itself still reaches endpoints elsewhere, as in nft mode.
    #[tokio::test]
    async fn node_port_serves_node_local_clients_under_local_policy() {
        let (a, _ta) = ident_server("remote").await;
        let vip = Ipv4Addr::new(127, 77, 9, 1);
        let port = free_port(vip);
        let node_port = free_port(Ipv4Addr::UNSPECIFIED);
        let mut s = service("np", vip, port, Protocol::Tcp, &[a], None);
        s.kind = ServiceType::NodePort;
        s.external_local = true;
        s.ports[0].node_port = Some(node_port);
        s.ports[0].endpoints[0].node_name = Some("n2".into());
        let p = proxy();
        let st = p.sync(&ServiceTable { services: vec![s] }).await.unwrap();
        assert_eq!(
            (st.added, st.failed),
            (2, 0),
            "ClusterIP and NodePort listeners"
        );
        let got = fetch(SocketAddrV4::new(Ipv4Addr::LOCALHOST, node_port))
            .await
            .unwrap();
        assert_eq!(got, "remote");
    }

    const PROXY_ROLE: &str = "KEDGE_NET_USERSPACE_E2E";

    /// Not a test: runs the proxy as root inside the "node" namespace of
    /// `userspace_end_to_end_in_network_namespaces` (re-executed under `ip netns exec`).
    #[test]
    #[ignore = "helper process for userspace_end_to_end_in_network_namespaces"]
    fn userspace_helper_process() {
        let Ok(input) = std::env::var(PROXY_ROLE) else {
            return;
        };
        std::thread::spawn(|| {
            std::thread::sleep(Duration::from_secs(120));
            std::process::exit(0);
        });
        let v: serde_json::Value = serde_json::from_str(&input).unwrap();
        let table = ServiceTable::build(
            v["services"].as_array().unwrap(),
            v["slices"].as_array().unwrap(),
        );
        let cfg = ProxyConfig {
            node_ips: vec![Ipv4Addr::new(192, 168, 78, 1)],
            ..cfg()
        };
        let rt = tokio::runtime::Runtime::new().unwrap();
        rt.block_on(async {
            let opts = UserspaceOptions {
                interface: Some(crate::iface::DEFAULT_NAME.into()),
                ..UserspaceOptions::default()
            };
            let p = UserspaceProxy::new(cfg, opts);
            let st = p.sync(&table).await.unwrap();
            println!("READY {} {}", st.added, st.failed);
            tokio::time::sleep(Duration::from_secs(110)).await;
        });
    }

    /// As root: ClusterIPs on the service interface (or `lo` where the kernel has no dummy
    /// interfaces) reach the proxy from the node, from pods and from outside, all routed
    /// through the node.
    #[test]
    fn userspace_end_to_end_in_network_namespaces() {
        use crate::iface::tests::{TestNetns, missing_root};
        use crate::model::tests::{slice, svc};
        use crate::nft::tests::{Server, connect, serve, who};
        use serde_json::json;
        use std::io::BufRead;
        if let Some(why) = missing_root(&["ip"]) {
            eprintln!("skipping: {why}");
            return;
        }
        let node = TestNetns::new("unode");
        let client = TestNetns::new("ucli");
        let pod = TestNetns::new("upod");
        for (peer, inside, outside, net) in [
            (&client, "c0", "192.168.78.2/24", "192.168.78"),
            (&pod, "p1", "10.42.1.2/24", "10.42.1"),
        ] {
            node.ip(&[
                "link", "add", inside, "type", "veth", "peer", "name", "eth0", "netns", &peer.0,
            ]);
            node.ip(&["addr", "add", &format!("{net}.1/24"), "dev", inside]);
            node.ip(&["link", "set", inside, "up"]);
            peer.ip(&["addr", "add", outside, "dev", "eth0"]);
            peer.ip(&["link", "set", "eth0", "up"]);
            peer.ip(&["route", "add", "default", "via", &format!("{net}.1")]);
        }
        let _server = serve(&pod, "0.0.0.0:8080", "pod1");
        let input = json!({
            "services": [svc("d", "web", json!({"type": "NodePort", "clusterIP": "10.43.0.20",
                "ports": [{"name": "http", "port": 80, "nodePort": 30090}]}))],
            "slices": [slice("d", "web", json!([{"name": "http", "port": 8080}]),
                json!([{"addresses": ["10.42.1.2"], "nodeName": "n1"}]))],
        });
        let mut proxy = Server(
            std::process::Command::new("ip")
                .args(["netns", "exec", &node.0])
                .arg(std::env::current_exe().unwrap())
                .args([
                    "userspace::tests::userspace_helper_process",
                    "--exact",
                    "--ignored",
                    "--nocapture",
                    "--test-threads=1",
                ])
                .env(PROXY_ROLE, input.to_string())
                .stdout(std::process::Stdio::piped())
                .spawn()
                .unwrap(),
        );
        let out = proxy.0.stdout.take().unwrap();
        let ready = std::io::BufReader::new(out)
            .lines()
            .map_while(Result::ok)
            .find_map(|l| l.find("READY ").map(|i| l[i + 6..].to_string()));
        assert_eq!(
            ready.as_deref(),
            Some("2 0"),
            "ClusterIP and NodePort listeners"
        );

        assert_eq!(
            who(&connect(&node, "10.43.0.20:80", 1)),
            vec!["pod1"],
            "from the node"
        );
        assert_eq!(
            who(&connect(&client, "10.43.0.20:80", 1)),
            vec!["pod1"],
            "from outside"
        );
        assert_eq!(
            who(&connect(&pod, "10.43.0.20:80", 1)),
            vec!["pod1"],
            "from a pod"
        );
        assert_eq!(
            who(&connect(&client, "192.168.78.1:30090", 1)),
            vec!["pod1"],
            "NodePort"
        );
        drop(proxy);
    }

    /// The connector is the seam the tunnel relay plugs into: every connection goes through it.
    #[tokio::test]
    async fn connections_go_through_the_configured_connector() {
        struct Redirect(SocketAddrV4, std::sync::atomic::AtomicUsize);
        impl Connector for Redirect {
            fn connect<'a>(&'a self, _target: &'a Target) -> ConnectFuture<'a> {
                self.1.fetch_add(1, std::sync::atomic::Ordering::Relaxed);
                Box::pin(
                    async move { Ok(Box::new(TcpStream::connect(self.0).await?) as BoxStream) },
                )
            }
        }
        let (relay, _tr) = ident_server("relayed").await;
        let connector = Arc::new(Redirect(relay, Default::default()));
        let vip = Ipv4Addr::new(127, 77, 8, 1);
        let port = free_port(vip);
        let p = UserspaceProxy::new(
            cfg(),
            UserspaceOptions {
                connector: connector.clone(),
                ..UserspaceOptions::default()
            },
        );
        let unreachable = SocketAddrV4::new(Ipv4Addr::new(10, 42, 9, 9), 80);
        p.sync(&ServiceTable {
            services: vec![service(
                "relay",
                vip,
                port,
                Protocol::Tcp,
                &[unreachable],
                None,
            )],
        })
        .await
        .unwrap();
        assert_eq!(
            fetch(SocketAddrV4::new(vip, port)).await.unwrap(),
            "relayed"
        );
        assert_eq!(connector.1.load(std::sync::atomic::Ordering::Relaxed), 1);
    }
}
