//! Cluster IPs and node ports of Services.
//!
//! Design: there is no separate allocation record. What is allocated is *derived from the
//! stored Services*: each Service write scans every stored Service (all namespaces) under one
//! process-wide lock and stores the object before releasing it. Because every write — kubectl,
//! plugins, agents — goes through [`crate::Api`], the lock makes check-and-store atomic, so
//! no duplicate can be handed out; because the store is the only state, allocations survive a
//! restart and a delete frees its IP and ports the moment the object is gone (including a
//! namespace's cascade), with no record that could drift from the objects (kube-apiserver
//! keeps a bitmap and needs a repair loop for exactly that drift). The cost is a scan of the
//! Services per Service write, which is small at edge scale.
//!
//! As kube-apiserver does, dynamic allocation prefers the upper part of each range and leaves
//! the lower band (256 IPs, 128 ports) to requested values, so a Service that asks for a fixed
//! IP rarely collides with a dynamically allocated one. The IPs the server itself gives out
//! (the `kubernetes` Service's, the cluster DNS's) are never picked dynamically, even once the
//! dynamic band is full, so deleting `kube-dns` cannot lose its IP to another Service.
//!
//! Pod CIDRs of Nodes work the same way (kube-controller-manager's range allocator, without
//! its record): each Node gets a /24 of `--cluster-cidr` in `spec.podCIDR(s)`, derived from the
//! stored Nodes under a lock of its own, so a deleted Node frees its range.
//!
//! The lock is one process's. Several servers sharing one store (etcd) also claim each value
//! they hand out under a key of its own, created only if absent ([`Claim`]), so two of them
//! can never give out the same value.

use std::collections::{HashMap, HashSet};
use std::net::Ipv4Addr;
use std::sync::{Mutex, MutexGuard};

use serde_json::{Value, json};

use super::error::Cause;
use kedge_core::meta;
use kedge_store::{self as store, Store};

/// The service CIDR (K3s's default).
pub(crate) const SERVICE_CIDR: (Ipv4Addr, u8) = (Ipv4Addr::new(10, 43, 0, 0), 16);
/// The pod CIDR of the cluster unless `--cluster-cidr` says otherwise (K3s's default).
pub const DEFAULT_CLUSTER_CIDR: Cidr = Cidr {
    addr: Ipv4Addr::new(10, 42, 0, 0),
    prefix: 16,
};
/// The cluster DNS Service's IP unless `--cluster-dns` says otherwise (K3s's default).
pub const DEFAULT_CLUSTER_DNS: Ipv4Addr = Ipv4Addr::new(10, 43, 0, 10);
/// Each node's share of the cluster CIDR (kube-controller-manager's `--node-cidr-mask-size`).
pub const NODE_CIDR_PREFIX: u8 = 24;
/// The first IP of the range goes to the `kubernetes` Service, as in every cluster.
pub const KUBERNETES_SERVICE_IP: Ipv4Addr = Ipv4Addr::new(10, 43, 0, 1);
pub(crate) const NODE_PORT_MIN: u16 = 30000;
pub(crate) const NODE_PORT_MAX: u16 = 32767;

/// kube-apiserver's static band: min(max(16, size/16), 256) IPs, min(max(16, size/16), 128)
/// ports.
const IP_STATIC_BAND: u32 = 256;
const PORT_STATIC_BAND: u16 = 128;

/// An IPv4 network, `10.42.0.0/16`.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub struct Cidr {
    pub addr: Ipv4Addr,
    pub prefix: u8,
}

impl Cidr {
    fn mask(self) -> u32 {
        if self.prefix == 0 {
            0
        } else {
            u32::MAX << (32 - u32::from(self.prefix))
        }
    }

    pub fn contains(self, ip: Ipv4Addr) -> bool {
        u32::from(ip) & self.mask() == u32::from(self.addr)
    }

    /// Whether `other` lies inside this network.
    pub fn covers(self, other: Cidr) -> bool {
        other.prefix >= self.prefix && self.contains(other.addr)
    }

    pub fn overlaps(self, other: Cidr) -> bool {
        self.covers(other) || other.covers(self)
    }
}

impl std::fmt::Display for Cidr {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "{}/{}", self.addr, self.prefix)
    }
}

impl std::str::FromStr for Cidr {
    type Err = String;

    /// An IPv4 network address with its prefix; host bits must be zero.
    fn from_str(s: &str) -> Result<Self, String> {
        let (ip, prefix) = s
            .split_once('/')
            .ok_or_else(|| format!("{s:?} is not an IPv4 CIDR such as 10.42.0.0/16"))?;
        let addr: Ipv4Addr = ip
            .parse()
            .map_err(|_| format!("{s:?} is not an IPv4 CIDR such as 10.42.0.0/16"))?;
        let prefix: u8 = prefix
            .parse()
            .ok()
            .filter(|p| *p <= 32)
            .ok_or_else(|| format!("{s:?}: the prefix length must be 0 to 32"))?;
        let c = Cidr { addr, prefix };
        if u32::from(addr) & !c.mask() != 0 {
            return Err(format!(
                "{s:?} is not a network address (did you mean {}/{prefix}?)",
                Ipv4Addr::from(u32::from(addr) & c.mask())
            ));
        }
        Ok(c)
    }
}

/// The cluster's addressing as the server hands it out: pod CIDRs to Nodes, the cluster DNS
/// IP to `kube-system/kube-dns`.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct ClusterNetwork {
    pub cluster_cidr: Cidr,
    pub cluster_dns: Ipv4Addr,
}

impl Default for ClusterNetwork {
    fn default() -> Self {
        ClusterNetwork {
            cluster_cidr: DEFAULT_CLUSTER_CIDR,
            cluster_dns: DEFAULT_CLUSTER_DNS,
        }
    }
}

impl ClusterNetwork {
    /// From `--cluster-cidr` and `--cluster-dns`, every problem reported at once.
    pub fn parse(cluster_cidr: &str, cluster_dns: &str) -> Result<Self, Vec<String>> {
        let mut errors = Vec::new();
        let service = Cidr {
            addr: SERVICE_CIDR.0,
            prefix: SERVICE_CIDR.1,
        };
        let cidr = match cluster_cidr.parse::<Cidr>() {
            Ok(c) if c.prefix > NODE_CIDR_PREFIX => {
                errors.push(format!(
                    "--cluster-cidr {c}: the prefix must be at most /{NODE_CIDR_PREFIX} (each node gets a /{NODE_CIDR_PREFIX})"
                ));
                None
            }
            Ok(c) if c.overlaps(service) => {
                errors.push(format!(
                    "--cluster-cidr {c} overlaps the service CIDR {service}"
                ));
                None
            }
            Ok(c) => Some(c),
            Err(e) => {
                errors.push(format!("--cluster-cidr: {e}"));
                None
            }
        };
        let dns = match cluster_dns.parse::<Ipv4Addr>() {
            Ok(ip) if offset_of(ip).is_none() => {
                errors.push(format!(
                    "--cluster-dns {ip} is not a usable address of the service CIDR {service}"
                ));
                None
            }
            Ok(ip) if ip == KUBERNETES_SERVICE_IP => {
                errors.push(format!("--cluster-dns {ip} is the kubernetes Service's IP"));
                None
            }
            Ok(ip) => Some(ip),
            Err(_) => {
                errors.push(format!(
                    "--cluster-dns {cluster_dns:?} is not an IPv4 address"
                ));
                None
            }
        };
        match (cidr, dns) {
            (Some(cluster_cidr), Some(cluster_dns)) if errors.is_empty() => Ok(ClusterNetwork {
                cluster_cidr,
                cluster_dns,
            }),
            _ => Err(errors),
        }
    }
}

fn cidr_string() -> String {
    format!("{}/{}", SERVICE_CIDR.0, SERVICE_CIDR.1)
}

/// Usable host addresses of the range as offsets from the network address: 1..=size-2 (the
/// network and broadcast addresses are never handed out).
fn host_offsets() -> (u32, u32) {
    let size = 1u32 << (32 - SERVICE_CIDR.1);
    (1, size - 2)
}

fn offset_of(ip: Ipv4Addr) -> Option<u32> {
    let base = u32::from(SERVICE_CIDR.0);
    let mask = u32::MAX << (32 - SERVICE_CIDR.1);
    let v = u32::from(ip);
    let (lo, hi) = host_offsets();
    (v & mask == base && (lo..=hi).contains(&(v - base))).then(|| v - base)
}

/// What the stored Services hold.
#[derive(Debug, Default)]
pub struct Used {
    pub ips: HashSet<Ipv4Addr>,
    pub node_ports: HashSet<u16>,
    /// IPs only given to a Service that asks for them (the server's own Services').
    pub reserved: HashSet<Ipv4Addr>,
}

/// Types whose ports get node ports.
fn needs_node_ports(spec: &Value) -> bool {
    match spec.get("type").and_then(Value::as_str) {
        Some("NodePort") => true,
        Some("LoadBalancer") => spec
            .get("allocateLoadBalancerNodePorts")
            .and_then(Value::as_bool)
            .unwrap_or(true),
        _ => false,
    }
}

/// The IPs and ports held by `services`, except the one named `ns/name` (the object being
/// written: on update its old values are its own).
pub(crate) fn used_by(services: &[Value], ns: &str, name: &str) -> Used {
    let mut used = Used::default();
    for s in services {
        if meta::namespace(s) == ns && meta::name(s) == name {
            continue;
        }
        let ips = s
            .pointer("/spec/clusterIPs")
            .and_then(Value::as_array)
            .into_iter()
            .flatten()
            .chain(s.pointer("/spec/clusterIP"));
        for ip in ips.filter_map(Value::as_str) {
            if let Ok(ip) = ip.parse() {
                used.ips.insert(ip);
            }
        }
        for p in s
            .pointer("/spec/ports")
            .and_then(Value::as_array)
            .into_iter()
            .flatten()
        {
            if let Some(n) = p.get("nodePort").and_then(Value::as_u64) {
                used.node_ports.insert(n as u16);
            }
        }
    }
    used
}

/// First free value in `from..=to` starting at `start`, wrapping once.
fn probe(from: u32, to: u32, start: u32, free: impl Fn(u32) -> bool) -> Option<u32> {
    if from > to {
        return None;
    }
    let n = to - from + 1;
    (0..n)
        .map(|i| from + (start - from + i) % n)
        .find(|v| free(*v))
}

/// A free IP: a random point in the dynamic band, then the static band.
fn pick_ip(used: &Used, seed: u32) -> Option<Ipv4Addr> {
    let (lo, hi) = host_offsets();
    let base = u32::from(SERVICE_CIDR.0);
    let free = |o: u32| {
        let ip = Ipv4Addr::from(base + o);
        !used.ips.contains(&ip) && !used.reserved.contains(&ip)
    };
    let dyn_lo = (lo + IP_STATIC_BAND).min(hi);
    let start = dyn_lo + seed % (hi - dyn_lo + 1);
    probe(dyn_lo, hi, start, free)
        .or_else(|| probe(lo, dyn_lo - 1, lo + seed % (dyn_lo - lo).max(1), free))
        .map(|o| Ipv4Addr::from(base + o))
}

fn pick_port(used: &HashSet<u16>, seed: u32) -> Option<u16> {
    let (lo, hi) = (u32::from(NODE_PORT_MIN), u32::from(NODE_PORT_MAX));
    let dyn_lo = lo + u32::from(PORT_STATIC_BAND);
    let free = |p: u32| !used.contains(&(p as u16));
    probe(dyn_lo, hi, dyn_lo + seed % (hi - dyn_lo + 1), free)
        .or_else(|| probe(lo, dyn_lo - 1, lo + seed % (dyn_lo - lo), free))
        .map(|p| p as u16)
}

fn go_strings(v: &[&str]) -> String {
    let q: Vec<String> = v.iter().map(|s| format!("{s:?}")).collect();
    format!("[]string{{{}}}", q.join(", "))
}

/// Fills in `spec.clusterIP`/`clusterIPs` and the ports' `nodePort`s of a Service about to be
/// stored, checking requested values against the range and `used`. `seed` picks where the
/// search for a free value starts (random in production, fixed in tests).
pub(crate) fn assign(svc: &mut Value, used: &Used, seed: u32) -> Result<(), Vec<Cause>> {
    let mut causes = Vec::new();
    let Some(spec) = svc.get_mut("spec").and_then(Value::as_object_mut) else {
        return Ok(());
    };
    let external_name = spec.get("type").and_then(Value::as_str) == Some("ExternalName");
    if !external_name {
        let requested = spec
            .get("clusterIP")
            .and_then(Value::as_str)
            .filter(|s| !s.is_empty())
            .or_else(|| {
                spec.get("clusterIPs")
                    .and_then(|v| v.get(0))
                    .and_then(Value::as_str)
                    .filter(|s| !s.is_empty())
            })
            .map(String::from);
        let ip = match requested.as_deref() {
            Some("None") => Some("None".to_string()),
            Some(req) => match req.parse::<Ipv4Addr>() {
                // Syntax errors are reported by validation; nothing to allocate.
                Err(_) => None,
                Ok(ip) if offset_of(ip).is_none() => {
                    causes.push(Cause {
                        reason: "FieldValueInvalid",
                        field: "spec.clusterIPs".into(),
                        message: format!(
                            "Invalid value: {}: failed to allocate IP {ip}: the provided IP ({ip}) is not in the valid range. The range of valid IPs is {}",
                            go_strings(&[req]),
                            cidr_string()
                        ),
                    });
                    None
                }
                Ok(ip) if used.ips.contains(&ip) => {
                    causes.push(Cause {
                        reason: "FieldValueInvalid",
                        field: "spec.clusterIPs".into(),
                        message: format!(
                            "Invalid value: {}: failed to allocate IP {ip}: provided IP is already allocated",
                            go_strings(&[req])
                        ),
                    });
                    None
                }
                Ok(ip) => Some(ip.to_string()),
            },
            None => match pick_ip(used, seed) {
                Some(ip) => Some(ip.to_string()),
                None => {
                    causes.push(Cause {
                        reason: "FieldValueInvalid",
                        field: "spec.clusterIPs".into(),
                        message: "Invalid value: []string{}: failed to allocate a serviceIP: range is full".into(),
                    });
                    None
                }
            },
        };
        if let Some(ip) = ip {
            spec.insert("clusterIP".into(), json!(ip));
            spec.insert("clusterIPs".into(), json!([ip]));
        }
    }
    if needs_node_ports(&Value::Object(spec.clone())) {
        let mut mine: HashSet<u16> = HashSet::new();
        let ports = spec.get_mut("ports").and_then(Value::as_array_mut);
        // Requested ports first, so a dynamic pick never takes one requested later in the list.
        let mut requested = Vec::new();
        for (i, p) in ports.iter().flat_map(|ps| ps.iter()).enumerate() {
            if let Some(n) = p.get("nodePort").and_then(Value::as_i64)
                && n != 0
            {
                requested.push((i, n));
            }
        }
        for (i, n) in requested {
            let field = format!("spec.ports[{i}].nodePort");
            if !(i64::from(NODE_PORT_MIN)..=i64::from(NODE_PORT_MAX)).contains(&n) {
                causes.push(Cause {
                    reason: "FieldValueInvalid",
                    field,
                    message: format!(
                        "Invalid value: {n}: provided port is not in the valid range. The range of valid ports is {NODE_PORT_MIN}-{NODE_PORT_MAX}"
                    ),
                });
            } else if used.node_ports.contains(&(n as u16)) {
                causes.push(Cause {
                    reason: "FieldValueInvalid",
                    field,
                    message: format!("Invalid value: {n}: provided port is already allocated"),
                });
            } else {
                mine.insert(n as u16);
            }
        }
        if let Some(ports) = spec.get_mut("ports").and_then(Value::as_array_mut) {
            for p in ports.iter_mut().filter_map(Value::as_object_mut) {
                if p.get("nodePort")
                    .and_then(Value::as_i64)
                    .is_some_and(|n| n != 0)
                {
                    continue;
                }
                let taken: HashSet<u16> = used.node_ports.union(&mine).copied().collect();
                match pick_port(&taken, seed.wrapping_add(mine.len() as u32)) {
                    Some(n) => {
                        mine.insert(n);
                        p.insert("nodePort".into(), json!(n));
                    }
                    None => {
                        causes.push(Cause {
                            reason: "FieldValueInvalid",
                            field: "spec.ports".into(),
                            message:
                                "Invalid value: \"\": failed to allocate a nodePort: range is full"
                                    .into(),
                        });
                        break;
                    }
                }
            }
        }
    }
    if causes.is_empty() {
        Ok(())
    } else {
        Err(causes)
    }
}

/// The pod CIDRs held by `nodes`, each with its Node, except the Node named `name` (on update
/// its old range is its own).
pub(crate) fn pod_cidrs_used_by(nodes: &[Value], name: &str) -> HashMap<Cidr, String> {
    let mut used = HashMap::new();
    for n in nodes.iter().filter(|n| meta::name(n) != name) {
        let cidrs = n
            .pointer("/spec/podCIDRs")
            .and_then(Value::as_array)
            .into_iter()
            .flatten()
            .chain(n.pointer("/spec/podCIDR"));
        for c in cidrs.filter_map(Value::as_str) {
            if let Ok(c) = c.parse::<Cidr>() {
                used.insert(c, meta::name(n).to_string());
            }
        }
    }
    used
}

/// What a Node asked for: `spec.podCIDR`, else the first of `spec.podCIDRs`.
fn requested_pod_cidr(spec: &serde_json::Map<String, Value>) -> Option<String> {
    fn set(v: Option<&Value>) -> Option<&str> {
        v.and_then(Value::as_str).filter(|s| !s.is_empty())
    }
    set(spec.get("podCIDR"))
        .or_else(|| set(spec.get("podCIDRs").and_then(|v| v.get(0))))
        .map(String::from)
}

/// Fills in `spec.podCIDR` and `spec.podCIDRs` of a Node about to be stored: the /24 it asks
/// for (inside `cluster` and free) or the lowest free one. `Ok(false)` when the range has no
/// free /24 left and the Node asked for none (the caller decides whether that is an error).
pub(crate) fn assign_pod_cidr(
    node: &mut Value,
    cluster: Cidr,
    used: &HashMap<Cidr, String>,
) -> Result<bool, Vec<Cause>> {
    let Some(obj) = node.as_object_mut() else {
        return Ok(true);
    };
    let spec = obj
        .entry("spec")
        .or_insert_with(|| json!({}))
        .as_object_mut();
    let Some(spec) = spec else {
        return Ok(true);
    };
    let field = "spec.podCIDR";
    let cidr = match requested_pod_cidr(spec) {
        Some(req) => {
            let bad = |why: String| vec![Cause::invalid(field, &req, why)];
            let c: Cidr = req.parse().map_err(bad)?;
            if c.prefix != NODE_CIDR_PREFIX || !cluster.covers(c) {
                return Err(bad(format!(
                    "must be a /{NODE_CIDR_PREFIX} inside the cluster CIDR {cluster}"
                )));
            }
            if let Some(holder) = used.get(&c) {
                return Err(bad(format!("already allocated to node {holder:?}")));
            }
            let others: Vec<&Value> = spec
                .get("podCIDRs")
                .and_then(Value::as_array)
                .into_iter()
                .flatten()
                .filter(|v| v.as_str() != Some(req.as_str()))
                .collect();
            if !others.is_empty() {
                return Err(vec![Cause::invalid(
                    "spec.podCIDRs",
                    &Value::Array(others.into_iter().cloned().collect()).to_string(),
                    format!(
                        "must hold only spec.podCIDR ({req}): kedge gives a node one IPv4 range"
                    ),
                )]);
            }
            c
        }
        None => {
            let count = 1u32 << (NODE_CIDR_PREFIX - cluster.prefix);
            let base = u32::from(cluster.addr);
            let step = 1u32 << (32 - NODE_CIDR_PREFIX);
            let free = (0..count)
                .map(|i| Cidr {
                    addr: Ipv4Addr::from(base + i * step),
                    prefix: NODE_CIDR_PREFIX,
                })
                .find(|c| !used.contains_key(c));
            match free {
                Some(c) => c,
                None => return Ok(false),
            }
        }
    };
    spec.insert("podCIDR".into(), json!(cidr.to_string()));
    spec.insert("podCIDRs".into(), json!([cidr.to_string()]));
    Ok(true)
}

/// The message of a full cluster CIDR.
pub(crate) fn pod_cidr_exhausted(cluster: Cidr) -> Cause {
    let nodes = 1u32 << (NODE_CIDR_PREFIX - cluster.prefix);
    Cause {
        reason: "FieldValueInvalid",
        field: "spec.podCIDR".into(),
        message: format!(
            "Invalid value: \"\": failed to allocate a pod CIDR: every /{NODE_CIDR_PREFIX} of the cluster CIDR {cluster} is held by a node ({nodes} nodes); delete a node or restart the server with a larger --cluster-cidr"
        ),
    }
}

/// Serialises Service and Node allocations (see the module documentation).
#[derive(Debug, Default)]
pub(crate) struct Allocator {
    lock: Mutex<()>,
    nodes: Mutex<()>,
    pub(crate) network: ClusterNetwork,
}

impl Allocator {
    pub fn new(network: ClusterNetwork) -> Self {
        Allocator {
            network,
            ..Default::default()
        }
    }

    /// Assigns the pod CIDR of the Node `name` (`creating` it, or updating it); returns the
    /// guard to hold until the object is stored. A full range refuses a new Node and leaves
    /// an existing one as it was.
    pub fn node<'a>(
        &'a self,
        store: &dyn Store,
        claims: Option<&dyn Store>,
        name: &str,
        node: &mut Value,
        creating: bool,
    ) -> Result<Result<MutexGuard<'a, ()>, Vec<Cause>>, store::Error> {
        let guard = self.nodes.lock().unwrap_or_else(|p| p.into_inner());
        let (all, _) = store.list(&store::prefix("", "nodes", ""))?;
        let mut used = pod_cidrs_used_by(&all, name);
        let cluster = self.network.cluster_cidr;
        for _ in 0..CLAIM_ATTEMPTS {
            let mut candidate = node.clone();
            match assign_pod_cidr(&mut candidate, cluster, &used) {
                Ok(true) => {}
                Ok(false) if creating => return Ok(Err(vec![pod_cidr_exhausted(cluster)])),
                Ok(false) => {
                    tracing::warn!(node = name, %cluster, "no free pod CIDR for the node");
                    return Ok(Ok(guard));
                }
                Err(causes) => return Ok(Err(causes)),
            }
            let Some(cidr) = candidate
                .pointer("/spec/podCIDR")
                .and_then(Value::as_str)
                .and_then(|c| c.parse::<Cidr>().ok())
            else {
                *node = candidate;
                return Ok(Ok(guard));
            };
            let Some(claims) = claims else {
                *node = candidate;
                return Ok(Ok(guard));
            };
            match claim(claims, Claim::PodCidr(cidr), "", name)? {
                None => {
                    *node = candidate;
                    return Ok(Ok(guard));
                }
                Some(holder) => {
                    used.insert(cidr, holder);
                }
            }
        }
        Err(store::Error::Backend(
            "pod CIDR allocation kept losing races with other servers".into(),
        ))
    }

    /// Assigns IPs and ports to the Service `svc` (named `ns/name`); returns the guard to hold
    /// until the object is stored. Invalid requests come back as 422 causes.
    pub fn service<'a>(
        &'a self,
        store: &dyn Store,
        claims: Option<&dyn Store>,
        ns: &str,
        name: &str,
        svc: &mut Value,
    ) -> Result<Result<MutexGuard<'a, ()>, Vec<Cause>>, store::Error> {
        let seed = rand::random::<u32>();
        match claims {
            Some(_) => self.service_seeded(store, ns, name, svc, seed),
            None => {
                // Picked, not claimed: nothing is stored.
                let guard = self.lock.lock().unwrap_or_else(|p| p.into_inner());
                let (all, _) = store.list(&store::prefix("", "services", ""))?;
                let mut used = used_by(&all, ns, name);
                used.reserved = [KUBERNETES_SERVICE_IP, self.network.cluster_dns].into();
                Ok(assign(svc, &used, seed).map(|()| guard))
            }
        }
    }

    /// [`service`](Self::service) with the search's start given.
    pub(crate) fn service_seeded<'a>(
        &'a self,
        store: &dyn Store,
        ns: &str,
        name: &str,
        svc: &mut Value,
        seed: u32,
    ) -> Result<Result<MutexGuard<'a, ()>, Vec<Cause>>, store::Error> {
        let guard = self.lock.lock().unwrap_or_else(|p| p.into_inner());
        let (all, _) = store.list(&store::prefix("", "services", ""))?;
        let mut used = used_by(&all, ns, name);
        used.reserved = [KUBERNETES_SERVICE_IP, self.network.cluster_dns].into();
        for attempt in 0..CLAIM_ATTEMPTS {
            let mut candidate = svc.clone();
            if let Err(causes) = assign(&mut candidate, &used, seed.wrapping_add(attempt)) {
                return Ok(Err(causes));
            }
            let mut lost = false;
            for c in claims_of(&candidate) {
                if claim(store, c, ns, name)?.is_some() {
                    // Another server's Service holds it (or is about to): not free after all.
                    match c {
                        Claim::ServiceIp(ip) => used.ips.insert(ip),
                        Claim::NodePort(p) => used.node_ports.insert(p),
                        Claim::PodCidr(_) => false,
                    };
                    lost = true;
                }
            }
            if !lost {
                *svc = candidate;
                return Ok(Ok(guard));
            }
        }
        Err(store::Error::Backend(
            "service IP and port allocation kept losing races with other servers".into(),
        ))
    }
}

impl Allocator {
    /// Frees the claims of a Service or Node just removed from the store (`gone`, its last
    /// state), so its values are free at once, as they are by the scan. Best effort: a claim
    /// left behind is taken over once old (see [`Claim`]).
    pub fn release(&self, store: &dyn Store, kind: &str, ns: &str, name: &str, gone: &Value) {
        let claims: Vec<Claim> = match kind {
            "Service" => claims_of(gone),
            "Node" => pod_cidrs_used_by(std::slice::from_ref(gone), "")
                .into_keys()
                .map(Claim::PodCidr)
                .collect(),
            _ => return,
        };
        for c in claims {
            let key = c.key();
            let Ok(Some(current)) = store.get(&key) else {
                continue;
            };
            let mine = current.pointer("/owner/namespace").and_then(Value::as_str) == Some(ns)
                && current.pointer("/owner/name").and_then(Value::as_str) == Some(name);
            if mine && let Err(e) = store.delete(&key, store::revision_of(&current)) {
                tracing::debug!(key, error = %e, "freeing an allocation claim failed");
            }
        }
    }
}

/// How often an allocation is tried again after losing a value to another server.
const CLAIM_ATTEMPTS: u32 = 16;
/// How long a claim whose owner does not (yet) hold its value is still respected: the owner
/// is stored right after claiming, so only a claim left behind (its owner deleted, or a
/// server that died between claim and store) is that old. Generous for clock skew between
/// servers.
const CLAIM_GRACE_SECS: i64 = 60;

/// One allocated value, claimed in the store under a key of its own.
///
/// The allocator derives what is used from the stored objects (module documentation), under
/// a lock of its process. Several servers on one store (etcd) each have their own lock, so
/// between one server's scan and its write another could pick the same value. A claim closes
/// that window the way Kubernetes' `IPAddress` objects do: before a value is handed out, a
/// key naming it is created only if absent, so of two servers racing for a value exactly one
/// gets it and the other picks again. Claims are never deleted with their owners: one whose
/// owner no longer holds its value, older than [`CLAIM_GRACE_SECS`], is simply taken over.
/// The keys live outside every served resource (`kedge-internal/…`, a group no custom
/// resource can have).
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub(crate) enum Claim {
    ServiceIp(Ipv4Addr),
    NodePort(u16),
    PodCidr(Cidr),
}

impl Claim {
    fn key(self) -> String {
        let (kind, value) = match self {
            Claim::ServiceIp(ip) => ("serviceips", ip.to_string()),
            Claim::NodePort(p) => ("nodeports", p.to_string()),
            Claim::PodCidr(c) => ("podcidrs", format!("{}-{}", c.addr, c.prefix)),
        };
        store::key("kedge-internal", "allocations", kind, &value)
    }

    /// Whether the object `owner` (a Service or a Node) holds this value.
    fn held_by(self, owner: &Value) -> bool {
        match self {
            Claim::PodCidr(c) => {
                pod_cidrs_used_by(std::slice::from_ref(owner), "").contains_key(&c)
            }
            Claim::ServiceIp(ip) => used_by(std::slice::from_ref(owner), "", "")
                .ips
                .contains(&ip),
            Claim::NodePort(p) => used_by(std::slice::from_ref(owner), "", "")
                .node_ports
                .contains(&p),
        }
    }

    fn owner_key(self, ns: &str, name: &str) -> String {
        match self {
            Claim::PodCidr(_) => store::key("", "nodes", "", name),
            _ => store::key("", "services", ns, name),
        }
    }
}

/// The values a Service about to be stored holds.
fn claims_of(svc: &Value) -> Vec<Claim> {
    let used = used_by(std::slice::from_ref(svc), "", "");
    let mut out: Vec<Claim> = used.ips.into_iter().map(Claim::ServiceIp).collect();
    out.extend(used.node_ports.into_iter().map(Claim::NodePort));
    out
}

/// Claims `c` for the object `ns/name`: `None` when it is (now) theirs, else the name of
/// the object that holds it.
fn claim(
    store: &dyn Store,
    c: Claim,
    ns: &str,
    name: &str,
) -> Result<Option<String>, store::Error> {
    let key = c.key();
    let record = |now: chrono::DateTime<chrono::Utc>| {
        json!({"apiVersion": "kedge.io/v1", "kind": "Allocation",
            "metadata": {"name": key.rsplit('/').next().unwrap_or_default()},
            "owner": {"namespace": ns, "name": name},
            "claimedAt": now.to_rfc3339()})
    };
    for _ in 0..3 {
        let now = chrono::Utc::now();
        // Read first: an object written again with the values it has finds its own claims
        // and writes nothing.
        let Some(current) = store.get(&key)? else {
            match store.create(&key, record(now)) {
                Ok(_) => return Ok(None),
                Err(store::Error::AlreadyExists) => continue,
                Err(e) => return Err(e),
            }
        };
        let (o_ns, o_name) = (
            current
                .pointer("/owner/namespace")
                .and_then(Value::as_str)
                .unwrap_or_default(),
            current
                .pointer("/owner/name")
                .and_then(Value::as_str)
                .unwrap_or_default(),
        );
        if o_ns == ns && o_name == name {
            return Ok(None);
        }
        let holder = if o_ns.is_empty() {
            o_name.to_string()
        } else {
            format!("{o_ns}/{o_name}")
        };
        let young = current
            .get("claimedAt")
            .and_then(Value::as_str)
            .and_then(|t| chrono::DateTime::parse_from_rfc3339(t).ok())
            .is_none_or(|t| (now - t.with_timezone(&chrono::Utc)).num_seconds() < CLAIM_GRACE_SECS);
        if young {
            return Ok(Some(holder));
        }
        let owner_holds = store
            .get(&c.owner_key(o_ns, o_name))?
            .is_some_and(|o| c.held_by(&o));
        if owner_holds {
            return Ok(Some(holder));
        }
        // Left behind: take it over, unless someone else does first.
        match store.update(&key, record(now), store::revision_of(&current)) {
            Ok(_) => return Ok(None),
            Err(store::Error::Conflict { .. } | store::Error::NotFound) => continue,
            Err(e) => return Err(e),
        }
    }
    Ok(Some("another server".into()))
}

#[cfg(test)]
mod tests {
    use super::*;

    fn svc(ns: &str, name: &str, spec: Value) -> Value {
        json!({"metadata": {"namespace": ns, "name": name}, "spec": spec})
    }

    fn shared_store(dir: &std::path::Path) -> std::sync::Arc<dyn Store> {
        std::sync::Arc::new(
            kedge_store::redb::RedbStore::open(&dir.join("s"), Default::default()).unwrap(),
        )
    }

    /// Two servers on one store, each with its own allocator (and lock): the second one to
    /// allocate while the first has claimed but not yet stored its Service gets another IP
    /// and other node ports, where without claims it would take the same ones (same seed).
    #[test]
    fn servers_racing_for_a_value_never_both_get_it() {
        let dir = tempfile::tempdir().unwrap();
        let store = shared_store(dir.path());
        let (one, two) = (Allocator::default(), Allocator::default());
        let spec = || json!({"type": "NodePort", "ports": [{"port": 80}]});
        let mut a = svc("default", "a", spec());
        let guard = one
            .service_seeded(store.as_ref(), "default", "a", &mut a, 7)
            .unwrap()
            .unwrap();
        // `a` is not stored yet (the first server still holds its guard).
        let mut b = svc("default", "b", spec());
        drop(
            two.service_seeded(store.as_ref(), "default", "b", &mut b, 7)
                .unwrap()
                .unwrap(),
        );
        drop(guard);
        assert_ne!(a["spec"]["clusterIP"], b["spec"]["clusterIP"]);
        assert_ne!(
            a["spec"]["ports"][0]["nodePort"],
            b["spec"]["ports"][0]["nodePort"]
        );
        // The same Service written again keeps its values without a conflict.
        let mut again = a.clone();
        drop(
            one.service_seeded(store.as_ref(), "default", "a", &mut again, 99)
                .unwrap()
                .unwrap(),
        );
        assert_eq!(again["spec"]["clusterIP"], a["spec"]["clusterIP"]);
        // A value another live Service holds cannot be requested.
        store
            .create(&store::key("", "services", "default", "a"), a.clone())
            .unwrap();
        let mut c = svc(
            "default",
            "c",
            json!({"clusterIP": a["spec"]["clusterIP"], "ports": [{"port": 80}]}),
        );
        let refused = two
            .service_seeded(store.as_ref(), "default", "c", &mut c, 1)
            .unwrap();
        assert!(refused.is_err());
    }

    /// A claim left behind (its owner gone, older than the grace) is taken over; a young one
    /// is respected even while its owner is not stored yet.
    #[test]
    fn claims_left_behind_are_taken_over() {
        let dir = tempfile::tempdir().unwrap();
        let store = shared_store(dir.path());
        let ip: Ipv4Addr = "10.43.200.1".parse().unwrap();
        let old = chrono::Utc::now() - chrono::Duration::seconds(CLAIM_GRACE_SECS + 5);
        store
            .create(
                &Claim::ServiceIp(ip).key(),
                json!({"metadata": {"name": "x"}, "owner": {"namespace": "default", "name": "gone"},
                    "claimedAt": old.to_rfc3339()}),
            )
            .unwrap();
        assert_eq!(
            claim(store.as_ref(), Claim::ServiceIp(ip), "default", "new").unwrap(),
            None
        );
        assert_eq!(
            claim(store.as_ref(), Claim::ServiceIp(ip), "default", "other").unwrap(),
            Some("default/new".into())
        );
        let cidr: Cidr = "10.42.7.0/24".parse().unwrap();
        assert_eq!(
            claim(store.as_ref(), Claim::PodCidr(cidr), "", "n1").unwrap(),
            None
        );
        assert_eq!(
            claim(store.as_ref(), Claim::PodCidr(cidr), "", "n2").unwrap(),
            Some("n1".into())
        );
    }

    #[test]
    fn allocates_in_range_and_mirrors_cluster_ips() {
        let mut s = svc(
            "d",
            "a",
            json!({"type": "ClusterIP", "ports": [{"port": 80}]}),
        );
        assign(&mut s, &Used::default(), 7).unwrap();
        let ip: Ipv4Addr = s["spec"]["clusterIP"].as_str().unwrap().parse().unwrap();
        assert!(
            offset_of(ip).is_some_and(|o| o >= 256),
            "{ip} in the dynamic band"
        );
        assert_eq!(s["spec"]["clusterIPs"], json!([ip.to_string()]));
    }

    #[test]
    fn headless_stays_none() {
        let mut s = svc("d", "a", json!({"clusterIP": "None"}));
        assign(&mut s, &Used::default(), 0).unwrap();
        assert_eq!(s["spec"]["clusterIP"], "None");
        assert_eq!(s["spec"]["clusterIPs"], json!(["None"]));
    }

    #[test]
    fn requested_ip_must_be_in_range_and_free() {
        let taken = svc("d", "x", json!({"clusterIP": "10.43.0.10"}));
        let used = used_by(std::slice::from_ref(&taken), "d", "a");
        let mut s = svc("d", "a", json!({"clusterIP": "10.43.0.10"}));
        let e = assign(&mut s, &used, 0).unwrap_err();
        assert_eq!(e[0].field, "spec.clusterIPs");
        assert!(
            e[0].message.contains("provided IP is already allocated"),
            "{}",
            e[0].message
        );
        let mut s = svc("d", "a", json!({"clusterIP": "10.0.0.5"}));
        let e = assign(&mut s, &used, 0).unwrap_err();
        assert!(
            e[0].message
                .contains("not in the valid range. The range of valid IPs is 10.43.0.0/16")
        );
        // Network and broadcast addresses are not hosts.
        let mut s = svc("d", "a", json!({"clusterIP": "10.43.255.255"}));
        assert!(assign(&mut s, &used, 0).is_err());
        // On update the object's own IP is not "used".
        let used = used_by(&[taken], "d", "x");
        let mut s = svc("d", "x", json!({"clusterIP": "10.43.0.10"}));
        assign(&mut s, &used, 0).unwrap();
    }

    #[test]
    fn dynamic_ips_skip_used_ones() {
        let mut used = Used::default();
        let (_, hi) = host_offsets();
        let base = u32::from(SERVICE_CIDR.0);
        // Every dynamic-band IP but one is taken: the search wraps to find it.
        for o in 256..=hi {
            if o != 300 {
                used.ips.insert(Ipv4Addr::from(base + o));
            }
        }
        assert_eq!(pick_ip(&used, 12345), Some(Ipv4Addr::new(10, 43, 1, 44)));
        used.ips.insert(Ipv4Addr::new(10, 43, 1, 44));
        // Then the static band.
        let ip = pick_ip(&used, 3).unwrap();
        assert!(offset_of(ip).is_some_and(|o| (1..256).contains(&o)));
    }

    #[test]
    fn node_ports_allocated_validated_and_unique() {
        let mut s = svc(
            "d",
            "a",
            json!({"type": "NodePort", "ports": [{"port": 80, "nodePort": 30080}, {"port": 443}]}),
        );
        assign(&mut s, &Used::default(), 1).unwrap();
        assert_eq!(s["spec"]["ports"][0]["nodePort"], 30080);
        let p = s["spec"]["ports"][1]["nodePort"].as_u64().unwrap() as u16;
        assert!((30128..=NODE_PORT_MAX).contains(&p), "{p}");

        let used = used_by(&[s], "d", "b");
        let mut dup = svc(
            "d",
            "b",
            json!({"type": "NodePort", "ports": [{"port": 80, "nodePort": 30080}]}),
        );
        let e = assign(&mut dup, &used, 1).unwrap_err();
        assert_eq!(e[0].field, "spec.ports[0].nodePort");
        assert_eq!(
            e[0].message,
            "Invalid value: 30080: provided port is already allocated"
        );
        let mut low = svc(
            "d",
            "b",
            json!({"type": "NodePort", "ports": [{"port": 80, "nodePort": 80}]}),
        );
        let e = assign(&mut low, &used, 1).unwrap_err();
        assert!(
            e[0].message
                .contains("The range of valid ports is 30000-32767")
        );
        // ClusterIP Services get none.
        let mut c = svc(
            "d",
            "c",
            json!({"type": "ClusterIP", "ports": [{"port": 80}]}),
        );
        assign(&mut c, &used, 1).unwrap();
        assert!(c["spec"]["ports"][0].get("nodePort").is_none());
    }

    /// Through the API over a real store: allocations survive reopening the store, a refused
    /// write stores nothing, and a delete frees the IP and port.
    #[test]
    fn api_allocations_survive_restart_and_free_on_delete() {
        use crate::ops::{Api, DeleteOptions, WriteOptions, system_clock};
        use kedge_core::resources::by_kind;
        use kedge_store::redb::{Options, RedbStore};
        use std::sync::Arc;
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("s");
        let open = || {
            let store = RedbStore::open(&path, Options::default()).unwrap();
            Api::new(Arc::new(store), system_clock())
        };
        let (w, nsr, svc) = (
            WriteOptions::default(),
            by_kind("v1", "Namespace").unwrap(),
            by_kind("v1", "Service").unwrap(),
        );
        let fixed = |name: &str| {
            json!({"metadata": {"name": name}, "spec": {"type": "NodePort",
                "clusterIP": "10.43.0.50", "ports": [{"port": 80, "nodePort": 30050}]}})
        };
        {
            let api = open();
            api.create(nsr, "", json!({"metadata": {"name": "d"}}), &w)
                .unwrap();
            api.create(svc, "d", fixed("a"), &w).unwrap();
        }
        let api = open();
        let e = api.create(svc, "d", fixed("b"), &w).unwrap_err();
        assert_eq!(e.code, 422, "{e}");
        assert!(
            api.get(svc, "d", "b").is_err(),
            "a refused write stores nothing"
        );
        // Dynamic allocations never collide with the stored ones.
        let mut ips = HashSet::new();
        for i in 0..20 {
            let s = api
                .create(
                    svc,
                    "d",
                    json!({"metadata": {"name": format!("s{i}")}, "spec": {
                    "type": "NodePort", "ports": [{"port": 80}]}}),
                    &w,
                )
                .unwrap();
            assert!(ips.insert(s["spec"]["clusterIP"].as_str().unwrap().to_string()));
        }
        api.delete(svc, "d", "a", &DeleteOptions::default())
            .unwrap();
        let b = api.create(svc, "d", fixed("b"), &w).unwrap();
        assert_eq!(b["spec"]["clusterIP"], "10.43.0.50");
        // An update that omits the allocated values keeps them.
        let mut replaced = fixed("b");
        replaced["spec"]
            .as_object_mut()
            .unwrap()
            .remove("clusterIP");
        replaced["spec"]["ports"] = json!([{"port": 80}]);
        let b2 = api.update(svc, "d", "b", replaced, None, &w).unwrap();
        assert_eq!(b2["spec"]["clusterIP"], "10.43.0.50");
        assert_eq!(b2["spec"]["ports"][0]["nodePort"], 30050);
    }

    #[test]
    fn freed_values_are_reusable() {
        let a = svc(
            "d",
            "a",
            json!({"clusterIP": "10.43.0.20", "type": "NodePort", "ports": [{"port": 1, "nodePort": 30001}]}),
        );
        // With `a` stored, the request fails; once it is gone (not in the list), it succeeds.
        let mut b = svc(
            "d",
            "b",
            json!({"clusterIP": "10.43.0.20", "type": "NodePort", "ports": [{"port": 1, "nodePort": 30001}]}),
        );
        assert!(assign(&mut b.clone(), &used_by(&[a], "d", "b"), 0).is_err());
        assign(&mut b, &used_by(&[], "d", "b"), 0).unwrap();
    }

    fn node(name: &str, spec: Value) -> Value {
        json!({"metadata": {"name": name}, "spec": spec})
    }

    #[test]
    fn nodes_get_the_lowest_free_24_or_the_one_they_ask_for() {
        let cluster = DEFAULT_CLUSTER_CIDR;
        let held = [
            node(
                "a",
                json!({"podCIDR": "10.42.0.0/24", "podCIDRs": ["10.42.0.0/24"]}),
            ),
            node("b", json!({"podCIDRs": ["10.42.2.0/24"]})),
        ];
        let used = pod_cidrs_used_by(&held, "c");
        let mut c = node("c", json!({}));
        assert!(assign_pod_cidr(&mut c, cluster, &used).unwrap());
        assert_eq!(c["spec"]["podCIDR"], "10.42.1.0/24");
        assert_eq!(c["spec"]["podCIDRs"], json!(["10.42.1.0/24"]));

        let mut asks = node("c", json!({"podCIDR": "10.42.7.0/24"}));
        assert!(assign_pod_cidr(&mut asks, cluster, &used).unwrap());
        assert_eq!(asks["spec"]["podCIDRs"], json!(["10.42.7.0/24"]));

        let refused = |spec: Value| {
            let mut n = node("c", spec);
            let e = assign_pod_cidr(&mut n, cluster, &used).unwrap_err();
            assert_eq!(e[0].field, "spec.podCIDR");
            e[0].message.clone()
        };
        assert_eq!(
            refused(json!({"podCIDR": "10.42.2.0/24"})),
            "Invalid value: \"10.42.2.0/24\": already allocated to node \"b\""
        );
        assert!(
            refused(json!({"podCIDR": "10.99.0.0/24"}))
                .contains("inside the cluster CIDR 10.42.0.0/16")
        );
        assert!(refused(json!({"podCIDR": "10.42.4.0/23"})).contains("must be a /24"));
        assert!(refused(json!({"podCIDR": "10.42.4.1/24"})).contains("not a network address"));
        // Its own range is not "used" on update.
        let mut a = held[0].clone();
        assert!(assign_pod_cidr(&mut a, cluster, &pod_cidrs_used_by(&held, "a")).unwrap());
        assert_eq!(a["spec"]["podCIDR"], "10.42.0.0/24");
    }

    #[test]
    fn a_full_cluster_cidr_is_reported() {
        let cluster: Cidr = "10.42.0.0/23".parse().unwrap();
        let held = [
            node("a", json!({"podCIDR": "10.42.0.0/24"})),
            node("b", json!({"podCIDR": "10.42.1.0/24"})),
        ];
        let mut c = node("c", json!({}));
        assert!(!assign_pod_cidr(&mut c, cluster, &pod_cidrs_used_by(&held, "c")).unwrap());
        assert!(c["spec"].get("podCIDR").is_none());
        let m = pod_cidr_exhausted(cluster).message;
        assert!(
            m.contains("every /24 of the cluster CIDR 10.42.0.0/23 is held by a node (2 nodes)"),
            "{m}"
        );
    }

    #[test]
    fn cluster_network_flags_are_validated_together() {
        let n = ClusterNetwork::parse("10.42.0.0/16", "10.43.0.10").unwrap();
        assert_eq!(n, ClusterNetwork::default());
        let n = ClusterNetwork::parse("192.168.0.0/20", "10.43.1.53").unwrap();
        assert_eq!(n.cluster_cidr.to_string(), "192.168.0.0/20");
        let e = ClusterNetwork::parse("10.42.0.0/25", "10.44.0.10").unwrap_err();
        assert_eq!(e.len(), 2, "{e:?}");
        assert!(e[0].contains("at most /24"), "{e:?}");
        assert!(
            e[1].contains("not a usable address of the service CIDR 10.43.0.0/16"),
            "{e:?}"
        );
        for (cidr, why) in [
            ("10.0.0.0/8", "overlaps the service CIDR"),
            ("10.43.128.0/17", "overlaps the service CIDR"),
            ("fd00::/48", "not an IPv4 CIDR"),
            ("10.42.1.0/16", "not a network address"),
        ] {
            let e = ClusterNetwork::parse(cidr, "10.43.0.10").unwrap_err();
            assert!(e[0].contains(why), "{cidr}: {e:?}");
        }
        let e = ClusterNetwork::parse("10.42.0.0/16", "10.43.0.1").unwrap_err();
        assert!(e[0].contains("kubernetes Service"), "{e:?}");
    }

    /// The DNS IP is in the static band, and dynamic allocation never takes it, even when
    /// nothing else is free.
    #[test]
    fn dynamic_allocation_never_takes_the_dns_ip() {
        let dns = offset_of(DEFAULT_CLUSTER_DNS).unwrap();
        assert!(dns < IP_STATIC_BAND, "in the static band");
        let (lo, hi) = host_offsets();
        let base = u32::from(SERVICE_CIDR.0);
        let mut used = Used::default();
        for o in lo..=hi {
            used.ips.insert(Ipv4Addr::from(base + o));
        }
        used.ips.remove(&DEFAULT_CLUSTER_DNS);
        used.reserved.insert(DEFAULT_CLUSTER_DNS);
        for seed in [0, 9, 10, 12345] {
            assert_eq!(pick_ip(&used, seed), None);
        }
        // Asked for by name, it is given.
        let mut s = svc(
            "kube-system",
            "kube-dns",
            json!({"clusterIP": "10.43.0.10"}),
        );
        assign(&mut s, &used, 0).unwrap();
    }

    /// Through the API: Nodes created by anyone get a /24, a delete frees it, a taken or
    /// foreign one is refused naming spec.podCIDR, a replace keeps it and a change is refused,
    /// and Nodes stored without one get one at the start pass.
    #[test]
    fn api_nodes_get_pod_cidrs_freed_on_delete() {
        use crate::ops::{Api, DeleteOptions, WriteOptions, system_clock};
        use kedge_core::resources::by_kind;
        use kedge_store::redb::{Options, RedbStore};
        use std::sync::Arc;
        let dir = tempfile::tempdir().unwrap();
        let store: Arc<dyn Store> =
            Arc::new(RedbStore::open(&dir.path().join("s"), Options::default()).unwrap());
        // A Node stored before pod CIDRs were handed out.
        store
            .create(
                &store::key("", "nodes", "", "old"),
                json!({"apiVersion": "v1", "kind": "Node", "metadata": {"name": "old"}, "spec": {}}),
            )
            .unwrap();
        let network = ClusterNetwork::parse("10.42.0.0/23", "10.43.0.10").unwrap();
        let api = Api::new(store, system_clock()).with_network(network);
        let (w, res) = (WriteOptions::default(), by_kind("v1", "Node").unwrap());
        let a = api.create(res, "", node("a", json!({})), &w).unwrap();
        assert_eq!(a["spec"]["podCIDR"], "10.42.0.0/24");
        let e = api
            .create(res, "", node("b", json!({"podCIDR": "10.42.0.0/24"})), &w)
            .unwrap_err();
        assert_eq!(e.code, 422);
        assert!(e.message.contains("spec.podCIDR: Invalid value"), "{e}");
        let b = api.create(res, "", node("b", json!({})), &w).unwrap();
        assert_eq!(b["spec"]["podCIDR"], "10.42.1.0/24");
        let e = api.create(res, "", node("c", json!({})), &w).unwrap_err();
        assert!(e.message.contains("failed to allocate a pod CIDR"), "{e}");
        // The start pass cannot place "old" either: the range is full, and it stays as it was.
        assert_eq!(api.assign_missing_pod_cidrs().unwrap(), 0);
        api.delete(res, "", "b", &DeleteOptions::default()).unwrap();
        assert_eq!(api.assign_missing_pod_cidrs().unwrap(), 1);
        assert_eq!(
            api.get(res, "", "old").unwrap()["spec"]["podCIDR"],
            "10.42.1.0/24"
        );
        // A replace without it keeps it; a change is refused.
        let mut replaced = api.get(res, "", "a").unwrap();
        replaced["spec"] = json!({"unschedulable": true});
        let a2 = api.update(res, "", "a", replaced, None, &w).unwrap();
        assert_eq!(a2["spec"]["podCIDRs"], json!(["10.42.0.0/24"]));
        let mut moved = a2.clone();
        moved["spec"]["podCIDR"] = json!("10.42.1.0/24");
        moved["spec"]["podCIDRs"] = json!(["10.42.1.0/24"]);
        let e = api.update(res, "", "a", moved, None, &w).unwrap_err();
        assert!(e.message.contains("spec.podCIDRs: Forbidden"), "{e}");
    }
}
