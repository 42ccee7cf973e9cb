//! The Services and EndpointSlices a node knows, reduced to what the service proxy acts on.
//!
//! The agent's watches hand us raw JSON; this module is the one place that reads it, so the
//! two proxy modes ([`crate::nft`], [`crate::userspace`]) agree on what a Service means —
//! which endpoints carry traffic, which policies apply — and only differ in how they forward.
//! Everything here is pure: the table is a value the agent can compare with the last one to
//! skip a sync that would change nothing.

use std::collections::{BTreeMap, BTreeSet};
use std::net::Ipv4Addr;

use serde_json::Value;

/// The label by which an EndpointSlice names its Service (discovery.k8s.io/v1).
pub const SERVICE_NAME_LABEL: &str = "kubernetes.io/service-name";

/// Services the agent answers itself (node-local cluster DNS): every node owns that IP, so
/// proxying it would send queries away from the local server.
pub const NODE_LOCAL_DNS_ANNOTATION: &str = "kedge.io/node-local-dns";

/// Kubernetes' default for `sessionAffinityConfig.clientIP.timeoutSeconds` (three hours).
pub const DEFAULT_AFFINITY_TIMEOUT_SECS: u32 = 10800;

/// What the proxy needs to know about the node it runs on.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct ProxyConfig {
    /// Decides which endpoints are local for the `Local` traffic policies.
    pub node_name: String,
    /// The node's own addresses: LoadBalancer ingress when `service_lb` is on.
    pub node_ips: Vec<Ipv4Addr>,
    /// Pod traffic (from inside this range) keeps its source; anything else that is DNATed
    /// gets masqueraded so replies come back through this node.
    pub cluster_cidr: (Ipv4Addr, u8),
    /// K3s ServiceLB: LoadBalancer Services listen on every node's own addresses, and those
    /// addresses become the Service's `status.loadBalancer.ingress`.
    pub service_lb: bool,
}

impl ProxyConfig {
    /// Whether `ip` is a pod address, i.e. inside the cluster CIDR.
    pub fn in_cluster_cidr(&self, ip: Ipv4Addr) -> bool {
        crate::cidr::contains(self.cluster_cidr, ip)
    }
}

/// `spec.type`; ExternalName Services never reach the table (they are DNS only).
#[derive(Clone, Copy, Debug, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub enum ServiceType {
    ClusterIP,
    NodePort,
    LoadBalancer,
}

/// The transport protocols the proxy forwards; SCTP ports are dropped at build time.
#[derive(Clone, Copy, Debug, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub enum Protocol {
    Tcp,
    Udp,
}

impl Protocol {
    /// The lowercase name nftables and logs use.
    pub fn as_str(self) -> &'static str {
        match self {
            Protocol::Tcp => "tcp",
            Protocol::Udp => "udp",
        }
    }
}

/// One Service as the proxy sees it. Sorted and deduplicated so equal inputs give equal
/// values whatever order the watch delivered them in.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Service {
    pub namespace: String,
    pub name: String,
    pub kind: ServiceType,
    /// IPv4 cluster IPs; never empty (headless Services are skipped).
    pub cluster_ips: Vec<Ipv4Addr>,
    /// `status.loadBalancer.ingress[].ip` set by whoever provides the load balancer; traffic
    /// to them is handled here too so in-cluster clients short-cut the external hop.
    pub load_balancer_ips: Vec<Ipv4Addr>,
    pub ports: Vec<ServicePort>,
    /// ClientIP session affinity timeout in seconds; `None` for no affinity.
    pub affinity_timeout_secs: Option<u32>,
    /// `internalTrafficPolicy: Local`: ClusterIP traffic only to this node's endpoints.
    pub internal_local: bool,
    /// `externalTrafficPolicy: Local`: NodePort/LoadBalancer traffic only to this node's
    /// endpoints, with the client's source address kept.
    pub external_local: bool,
}

/// One port of a Service with the endpoints that serve it.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct ServicePort {
    pub name: String,
    pub protocol: Protocol,
    pub port: u16,
    pub node_port: Option<u16>,
    /// Every endpoint that has this port in its slice, ready or not; [`Self::usable`] picks.
    pub endpoints: Vec<Endpoint>,
}

/// One endpoint address for one service port.
#[derive(Clone, Debug, PartialEq, Eq, PartialOrd, Ord)]
pub struct Endpoint {
    pub ip: Ipv4Addr,
    /// The target port, resolved through the slice port of the same name.
    pub port: u16,
    pub node_name: Option<String>,
    pub ready: bool,
    pub serving: bool,
    pub terminating: bool,
}

impl ServicePort {
    /// The endpoints that should get new connections, as kube-proxy chooses them: the ready
    /// ones, or when none is ready the serving-and-terminating ones (so a rolling update of
    /// the last replica drains instead of refusing). `node` narrows to that node's endpoints
    /// first, for the `Local` traffic policies; the fallback then applies among those.
    pub fn usable(&self, node: Option<&str>) -> Vec<&Endpoint> {
        let candidates: Vec<&Endpoint> = self
            .endpoints
            .iter()
            .filter(|e| node.is_none_or(|n| e.node_name.as_deref() == Some(n)))
            .collect();
        let ready: Vec<&Endpoint> = candidates.iter().copied().filter(|e| e.ready).collect();
        if !ready.is_empty() {
            return ready;
        }
        candidates
            .into_iter()
            .filter(|e| e.serving && e.terminating)
            .collect()
    }
}

impl Service {
    /// Whether this Service has ports reachable on the node's own addresses.
    pub fn has_node_ports(&self) -> bool {
        matches!(self.kind, ServiceType::NodePort | ServiceType::LoadBalancer)
    }

    /// The addresses that reach this Service's ports (not NodePorts) from outside the cluster
    /// network: its status ingress IPs, plus the node's own addresses under ServiceLB.
    pub fn external_ips(&self, cfg: &ProxyConfig) -> Vec<Ipv4Addr> {
        if self.kind != ServiceType::LoadBalancer {
            return Vec::new();
        }
        let mut ips: BTreeSet<Ipv4Addr> = self.load_balancer_ips.iter().copied().collect();
        if cfg.service_lb {
            ips.extend(cfg.node_ips.iter().copied());
        }
        ips.into_iter().collect()
    }
}

/// Every Service the proxy forwards, sorted by namespace and name.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct ServiceTable {
    pub services: Vec<Service>,
}

impl ServiceTable {
    /// Builds the table from core/v1 Service and discovery.k8s.io/v1 EndpointSlice objects.
    /// Objects the proxy cannot act on (headless, ExternalName, IPv6-only, node-local DNS,
    /// malformed) are left out rather than failing the whole table: one bad object must not
    /// stop every other Service from working.
    pub fn build(services: &[Value], slices: &[Value]) -> ServiceTable {
        // Endpoints per (namespace, service) from all its IPv4 slices, merged.
        let mut by_service: BTreeMap<(String, String), Vec<&Value>> = BTreeMap::new();
        for slice in slices {
            if slice.get("addressType").and_then(Value::as_str) != Some("IPv4") {
                continue;
            }
            let Some(svc) = slice
                .pointer("/metadata/labels")
                .and_then(|l| l.get(SERVICE_NAME_LABEL))
                .and_then(Value::as_str)
            else {
                continue;
            };
            let ns = str_at(slice, "/metadata/namespace").unwrap_or("default");
            by_service
                .entry((ns.to_string(), svc.to_string()))
                .or_default()
                .push(slice);
        }
        let mut out: Vec<Service> = services
            .iter()
            .filter_map(|s| {
                let ns = str_at(s, "/metadata/namespace").unwrap_or("default");
                let name = str_at(s, "/metadata/name")?;
                let slices = by_service
                    .get(&(ns.to_string(), name.to_string()))
                    .map(Vec::as_slice)
                    .unwrap_or(&[]);
                parse_service(s, slices)
            })
            .collect();
        out.sort_by(|a, b| (&a.namespace, &a.name).cmp(&(&b.namespace, &b.name)));
        ServiceTable { services: out }
    }

    /// The `status.loadBalancer.ingress` IPs this node provides, per (namespace, name) of
    /// each LoadBalancer Service: its own addresses when ServiceLB is on, nothing otherwise.
    /// The agent merges these over all nodes into the Service's status.
    pub fn node_load_balancer_ingress(
        &self,
        cfg: &ProxyConfig,
    ) -> BTreeMap<(String, String), Vec<Ipv4Addr>> {
        if !cfg.service_lb {
            return BTreeMap::new();
        }
        let mut ips = cfg.node_ips.clone();
        ips.sort();
        ips.dedup();
        self.services
            .iter()
            .filter(|s| s.kind == ServiceType::LoadBalancer)
            .map(|s| ((s.namespace.clone(), s.name.clone()), ips.clone()))
            .collect()
    }

    /// The ClusterIPs of every Service in the table: what the userspace proxy puts on its
    /// dummy interface.
    pub fn cluster_ips(&self) -> BTreeSet<Ipv4Addr> {
        self.services
            .iter()
            .flat_map(|s| s.cluster_ips.iter().copied())
            .collect()
    }
}

fn str_at<'a>(v: &'a Value, ptr: &str) -> Option<&'a str> {
    v.pointer(ptr).and_then(Value::as_str)
}

fn parse_ipv4(s: &str) -> Option<Ipv4Addr> {
    s.parse().ok()
}

fn parse_protocol(v: &Value) -> Option<Protocol> {
    match v.get("protocol").and_then(Value::as_str).unwrap_or("TCP") {
        "TCP" => Some(Protocol::Tcp),
        "UDP" => Some(Protocol::Udp),
        _ => None,
    }
}

fn port_u16(v: Option<&Value>) -> Option<u16> {
    v.and_then(Value::as_u64)
        .and_then(|p| u16::try_from(p).ok())
        .filter(|p| *p != 0)
}

fn parse_service(s: &Value, slices: &[&Value]) -> Option<Service> {
    if s.pointer("/metadata/annotations")
        .and_then(|a| a.get(NODE_LOCAL_DNS_ANNOTATION))
        .and_then(Value::as_str)
        == Some("true")
    {
        return None;
    }
    let spec = s.get("spec")?;
    let kind = match spec
        .get("type")
        .and_then(Value::as_str)
        .unwrap_or("ClusterIP")
    {
        "ClusterIP" => ServiceType::ClusterIP,
        "NodePort" => ServiceType::NodePort,
        "LoadBalancer" => ServiceType::LoadBalancer,
        _ => return None, // ExternalName: DNS only.
    };
    let mut cluster_ips: Vec<Ipv4Addr> = match spec.get("clusterIPs").and_then(Value::as_array) {
        Some(ips) => ips
            .iter()
            .filter_map(Value::as_str)
            .filter_map(parse_ipv4)
            .collect(),
        None => spec
            .get("clusterIP")
            .and_then(Value::as_str)
            .and_then(parse_ipv4)
            .into_iter()
            .collect(),
    };
    cluster_ips.sort();
    cluster_ips.dedup();
    if cluster_ips.is_empty() {
        return None; // headless ("None") or IPv6-only.
    }
    let mut load_balancer_ips: Vec<Ipv4Addr> = s
        .pointer("/status/loadBalancer/ingress")
        .and_then(Value::as_array)
        .into_iter()
        .flatten()
        .filter_map(|i| i.get("ip").and_then(Value::as_str))
        .filter_map(parse_ipv4)
        .collect();
    load_balancer_ips.sort();
    load_balancer_ips.dedup();
    let affinity_timeout_secs =
        (spec.get("sessionAffinity").and_then(Value::as_str) == Some("ClientIP")).then(|| {
            spec.pointer("/sessionAffinityConfig/clientIP/timeoutSeconds")
                .and_then(Value::as_u64)
                .and_then(|t| u32::try_from(t).ok())
                .filter(|t| *t > 0)
                .unwrap_or(DEFAULT_AFFINITY_TIMEOUT_SECS)
        });
    let local = |field: &str| spec.get(field).and_then(Value::as_str) == Some("Local");
    let internal_local = local("internalTrafficPolicy");
    // externalTrafficPolicy only means something where there is external traffic.
    let external_local = kind != ServiceType::ClusterIP && local("externalTrafficPolicy");

    let mut ports: Vec<ServicePort> = spec
        .get("ports")
        .and_then(Value::as_array)
        .into_iter()
        .flatten()
        .filter_map(|p| {
            let protocol = parse_protocol(p)?;
            let name = p
                .get("name")
                .and_then(Value::as_str)
                .unwrap_or("")
                .to_string();
            let mut endpoints: Vec<Endpoint> = slices
                .iter()
                .flat_map(|sl| slice_endpoints(sl, &name, protocol))
                .collect();
            // The same address may appear in two slices while the controller moves it;
            // keep one, the ready copy if there is one.
            endpoints.sort_by_key(|e| (e.ip, e.port, !e.ready));
            endpoints.dedup_by(|a, b| a.ip == b.ip && a.port == b.port);
            Some(ServicePort {
                port: port_u16(p.get("port"))?,
                node_port: if kind == ServiceType::ClusterIP {
                    None
                } else {
                    port_u16(p.get("nodePort"))
                },
                name,
                protocol,
                endpoints,
            })
        })
        .collect();
    ports.sort_by_key(|p| (p.protocol, p.port));
    ports.dedup_by_key(|p| (p.protocol, p.port));
    Some(Service {
        namespace: str_at(s, "/metadata/namespace")
            .unwrap_or("default")
            .to_string(),
        name: str_at(s, "/metadata/name")?.to_string(),
        kind,
        cluster_ips,
        load_balancer_ips,
        ports,
        affinity_timeout_secs,
        internal_local,
        external_local,
    })
}

/// The endpoints of one slice for the service port named `port_name`: the slice port of the
/// same name and protocol gives the target port (named targetPorts were already resolved by
/// the endpoints controller, per pod).
fn slice_endpoints(slice: &Value, port_name: &str, protocol: Protocol) -> Vec<Endpoint> {
    let Some(port) = slice
        .get("ports")
        .and_then(Value::as_array)
        .into_iter()
        .flatten()
        .find(|p| {
            p.get("name").and_then(Value::as_str).unwrap_or("") == port_name
                && parse_protocol(p) == Some(protocol)
        })
        .and_then(|p| port_u16(p.get("port")))
    else {
        return Vec::new();
    };
    slice
        .get("endpoints")
        .and_then(Value::as_array)
        .into_iter()
        .flatten()
        .flat_map(|e| {
            let cond = |k: &str| {
                e.pointer(&format!("/conditions/{k}"))
                    .and_then(Value::as_bool)
            };
            // The API says a missing `ready` means ready; `serving` defaults to `ready`.
            let ready = cond("ready").unwrap_or(true);
            let serving = cond("serving").unwrap_or(ready);
            let terminating = cond("terminating").unwrap_or(false);
            let node_name = e
                .get("nodeName")
                .and_then(Value::as_str)
                .map(str::to_string);
            e.get("addresses")
                .and_then(Value::as_array)
                .into_iter()
                .flatten()
                .filter_map(Value::as_str)
                .filter_map(parse_ipv4)
                .map(move |ip| Endpoint {
                    ip,
                    port,
                    node_name: node_name.clone(),
                    ready,
                    serving,
                    terminating,
                })
                .collect::<Vec<_>>()
        })
        .collect()
}

/// What one sync did, for logs and benches. The nftables proxy counts chains, the userspace
/// proxy counts listeners; `failed` is what could not be installed (a port in use).
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct SyncStats {
    pub service_ports: usize,
    pub endpoints: usize,
    pub added: usize,
    pub changed: usize,
    pub removed: usize,
    pub failed: usize,
}

/// The service proxy of one agent, in whichever mode it runs. Lives here rather than beside
/// either mode so the agent holds one value and never matches on the mode itself.
pub enum Proxier {
    /// Kernel DNAT through nftables (root).
    Nft(crate::nft::NftProxy),
    /// Listeners in the agent (no root, or on request).
    Userspace(crate::userspace::UserspaceProxy),
}

impl Proxier {
    /// Makes the node forward exactly `table`. Cheap to call with an unchanged table, but the
    /// agent should still compare tables first: that skips the nft process entirely.
    pub async fn sync(&self, table: &ServiceTable) -> anyhow::Result<SyncStats> {
        Ok(match self {
            Proxier::Nft(p) => p.sync(table).await?,
            Proxier::Userspace(p) => p.sync(table).await?,
        })
    }

    /// Removes everything the proxy installed (rules, listeners, addresses).
    pub async fn shutdown(&self) {
        match self {
            Proxier::Nft(p) => p.shutdown().await,
            Proxier::Userspace(p) => p.shutdown().await,
        }
    }
}

#[cfg(test)]
pub(crate) mod tests {
    use super::*;
    use serde_json::json;

    pub(crate) fn svc(ns: &str, name: &str, spec: Value) -> Value {
        json!({"metadata": {"namespace": ns, "name": name}, "spec": spec})
    }

    pub(crate) fn slice(ns: &str, svc: &str, ports: Value, endpoints: Value) -> Value {
        json!({
            "metadata": {"namespace": ns, "name": format!("{svc}-abc"),
                         "labels": {SERVICE_NAME_LABEL: svc}},
            "addressType": "IPv4", "ports": ports, "endpoints": endpoints,
        })
    }

    pub(crate) fn cfg() -> ProxyConfig {
        ProxyConfig {
            node_name: "n1".into(),
            node_ips: vec![Ipv4Addr::new(192, 168, 1, 10)],
            cluster_cidr: (Ipv4Addr::new(10, 42, 0, 0), 16),
            service_lb: true,
        }
    }

    #[test]
    fn builds_ports_endpoints_and_policies() {
        let services = [svc(
            "default",
            "web",
            json!({
                "type": "NodePort", "clusterIP": "10.43.0.5", "clusterIPs": ["10.43.0.5", "fd00::5"],
                "ports": [
                    {"name": "http", "port": 80, "targetPort": "http", "nodePort": 30080},
                    {"name": "dns", "port": 53, "protocol": "UDP", "nodePort": 30053},
                    {"name": "s", "port": 9, "protocol": "SCTP"},
                ],
                "sessionAffinity": "ClientIP",
                "externalTrafficPolicy": "Local", "internalTrafficPolicy": "Local",
            }),
        )];
        let slices = [slice(
            "default",
            "web",
            json!([{"name": "http", "port": 8080}, {"name": "dns", "port": 5353, "protocol": "UDP"}]),
            json!([
                {"addresses": ["10.42.0.7"], "nodeName": "n1"},
                {"addresses": ["10.42.1.7"], "nodeName": "n2",
                 "conditions": {"ready": false, "serving": true, "terminating": true}},
            ]),
        )];
        let t = ServiceTable::build(&services, &slices);
        assert_eq!(t.services.len(), 1);
        let s = &t.services[0];
        assert_eq!(s.cluster_ips, vec![Ipv4Addr::new(10, 43, 0, 5)]);
        assert_eq!(s.affinity_timeout_secs, Some(DEFAULT_AFFINITY_TIMEOUT_SECS));
        assert!(s.internal_local && s.external_local);
        assert_eq!(s.ports.len(), 2, "SCTP is skipped");
        let http = s.ports.iter().find(|p| p.name == "http").unwrap();
        assert_eq!(
            (http.protocol, http.port, http.node_port),
            (Protocol::Tcp, 80, Some(30080))
        );
        assert_eq!(http.endpoints.len(), 2);
        assert!(http.endpoints.iter().all(|e| e.port == 8080));
        let dns = s.ports.iter().find(|p| p.name == "dns").unwrap();
        assert_eq!(dns.protocol, Protocol::Udp);
        assert!(dns.endpoints.iter().all(|e| e.port == 5353));
        // Only the ready one carries traffic.
        assert_eq!(http.usable(None).len(), 1);
        assert_eq!(http.usable(None)[0].ip, Ipv4Addr::new(10, 42, 0, 7));
        // On n2 only the terminating one exists: the fallback picks it.
        assert_eq!(http.usable(Some("n2"))[0].ip, Ipv4Addr::new(10, 42, 1, 7));
        assert!(http.usable(Some("n3")).is_empty());
    }

    #[test]
    fn not_ready_and_not_serving_never_carry_traffic() {
        let services = [svc(
            "d",
            "a",
            json!({"clusterIP": "10.43.0.1", "ports": [{"port": 80}]}),
        )];
        let slices = [slice(
            "d",
            "a",
            json!([{"port": 80}]),
            json!([{"addresses": ["10.42.0.1"], "conditions": {"ready": false}}]),
        )];
        let t = ServiceTable::build(&services, &slices);
        assert!(t.services[0].ports[0].usable(None).is_empty());
    }

    #[test]
    fn skips_headless_external_name_and_node_local_dns() {
        let mut dns = svc(
            "kube-system",
            "dns",
            json!({"clusterIP": "10.43.0.10", "ports": [{"port": 53}]}),
        );
        dns["metadata"]["annotations"] = json!({NODE_LOCAL_DNS_ANNOTATION: "true"});
        let services = [
            svc(
                "d",
                "headless",
                json!({"clusterIP": "None", "ports": [{"port": 80}]}),
            ),
            svc(
                "d",
                "ext",
                json!({"type": "ExternalName", "externalName": "example.com"}),
            ),
            dns,
            svc(
                "d",
                "ok",
                json!({"clusterIP": "10.43.0.2", "ports": [{"port": 80}]}),
            ),
        ];
        let t = ServiceTable::build(&services, &[]);
        let names: Vec<&str> = t.services.iter().map(|s| s.name.as_str()).collect();
        assert_eq!(names, vec!["ok"]);
    }

    #[test]
    fn table_is_order_independent_and_comparable() {
        let a = svc(
            "d",
            "a",
            json!({"clusterIP": "10.43.0.1", "ports": [{"port": 80}]}),
        );
        let b = svc(
            "d",
            "b",
            json!({"clusterIP": "10.43.0.2", "ports": [{"port": 80}]}),
        );
        let s1 = slice(
            "d",
            "a",
            json!([{"port": 80}]),
            json!([{"addresses": ["10.42.0.1"]}]),
        );
        let s2 = slice(
            "d",
            "a",
            json!([{"port": 80}]),
            json!([{"addresses": ["10.42.0.2"]}]),
        );
        let t1 = ServiceTable::build(&[a.clone(), b.clone()], &[s1.clone(), s2.clone()]);
        let t2 = ServiceTable::build(&[b, a], &[s2, s1]);
        assert_eq!(t1, t2);
    }

    #[test]
    fn affinity_timeout_and_load_balancer_ingress() {
        let services = [svc(
            "d",
            "lb",
            json!({"type": "LoadBalancer", "clusterIP": "10.43.0.3",
                   "ports": [{"port": 443, "nodePort": 31443}],
                   "sessionAffinity": "ClientIP",
                   "sessionAffinityConfig": {"clientIP": {"timeoutSeconds": 60}}}),
        )];
        let t = ServiceTable::build(&services, &[]);
        assert_eq!(t.services[0].affinity_timeout_secs, Some(60));
        let mut c = cfg();
        let ing = t.node_load_balancer_ingress(&c);
        assert_eq!(
            ing.get(&("d".to_string(), "lb".to_string())),
            Some(&vec![Ipv4Addr::new(192, 168, 1, 10)])
        );
        assert_eq!(
            t.services[0].external_ips(&c),
            vec![Ipv4Addr::new(192, 168, 1, 10)]
        );
        c.service_lb = false;
        assert!(t.node_load_balancer_ingress(&c).is_empty());
        assert!(t.services[0].external_ips(&c).is_empty());
    }

    #[test]
    fn an_address_in_two_slices_counts_once_and_ready_wins() {
        let services = [svc(
            "d",
            "a",
            json!({"clusterIP": "10.43.0.1", "ports": [{"port": 80}]}),
        )];
        let slices = [
            slice(
                "d",
                "a",
                json!([{"port": 80}]),
                json!([{"addresses": ["10.42.0.1"], "conditions": {"ready": false}}]),
            ),
            slice(
                "d",
                "a",
                json!([{"port": 80}]),
                json!([{"addresses": ["10.42.0.1"]}]),
            ),
        ];
        let t = ServiceTable::build(&services, &slices);
        assert_eq!(t.services[0].ports[0].endpoints.len(), 1);
        assert!(t.services[0].ports[0].endpoints[0].ready);
    }

    #[test]
    fn cluster_cidr_membership() {
        let c = cfg();
        assert!(c.in_cluster_cidr(Ipv4Addr::new(10, 42, 255, 1)));
        assert!(!c.in_cluster_cidr(Ipv4Addr::new(10, 43, 0, 1)));
    }
}
