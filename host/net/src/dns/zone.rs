//! The cluster zone: every name the node-local DNS answers itself, built from the Services and
//! EndpointSlices in the agent's watch cache. Pure data, no I/O: built off the serving path and
//! swapped in whole, so a query never sees half an update.

use std::collections::{HashMap, HashSet};
use std::net::IpAddr;

use hickory_proto::op::ResponseCode;
use hickory_proto::rr::rdata::{A, AAAA, CNAME, PTR, SOA, SRV, TXT};
use hickory_proto::rr::{LowerName, Name, RData, Record, RecordType};
use serde_json::Value;
use tracing::debug;

/// Seconds every answer may be cached: CoreDNS's default for the kubernetes plugin, short
/// enough that a moved endpoint is picked up quickly, long enough to absorb ndots:5 bursts.
pub(crate) const TTL: u32 = 5;

/// How many CNAMEs deep an answer may chain inside the zone (ExternalName to ExternalName):
/// bounds the work a looping pair of Services can cause.
pub(crate) const MAX_CNAME_CHAIN: usize = 8;

/// The label linking an EndpointSlice to its Service.
const SERVICE_NAME_LABEL: &str = "kubernetes.io/service-name";

/// The version of the Kubernetes DNS specification we answer to (its `dns-version` TXT record).
const SPEC_VERSION: &str = "1.1.0";

/// The names the node-local DNS server answers from its own data, as CoreDNS's kubernetes plugin
/// would for the same Services and EndpointSlices.
///
/// Build one with [`Zone::build`] whenever the watch cache changes and hand it to
/// [`DnsServer::update`](super::DnsServer::update); the server swaps it in atomically.
#[derive(Clone, Debug)]
pub struct Zone {
    /// The cluster domain; `None` when the configured domain was not a DNS name, so the zone
    /// claims nothing and every query is forwarded.
    origin: Option<LowerName>,
    /// The apex SOA, sent in the authority section of negative answers.
    soa: Record,
    /// Every name that exists, empty non-terminals included (as nodes without records), plus the
    /// reverse names of ClusterIPs and of headless endpoints with a hostname.
    /// Keyed by `Name`, whose hash and equality ignore case, so a lowercase `LowerName` from a
    /// query finds its node without building a key.
    nodes: HashMap<Name, Node>,
    services: usize,
}

/// The records of one name. SRV names keep the addresses of their targets beside them so an
/// answer carries them in the additional section without a second lookup.
#[derive(Clone, Debug, Default)]
struct Node {
    records: Vec<Record>,
    additionals: Vec<Record>,
}

/// What the zone says about one question.
#[derive(Debug)]
pub(crate) struct Answer<'z> {
    pub(crate) rcode: ResponseCode,
    pub(crate) answers: Vec<&'z Record>,
    pub(crate) additionals: &'z [Record],
    /// The SOA for the authority section of a negative answer (NXDOMAIN or NODATA).
    pub(crate) soa: Option<&'z Record>,
    /// Set when the answer is a CNAME the server should follow for the asked type.
    pub(crate) cname_target: Option<&'z Name>,
}

impl Zone {
    /// A zone for `domain` with no Services: names in the domain are NXDOMAIN until the first
    /// real zone arrives.
    pub fn empty(domain: &str) -> Zone {
        Zone::build(domain, &[], &[])
    }

    /// Builds the zone for `domain` (e.g. `cluster.local`) from core/v1 Service and
    /// discovery.k8s.io/v1 EndpointSlice objects as JSON.
    ///
    /// Objects that lack what a record needs (no name, an unparsable IP, a name that is not a
    /// DNS label) are skipped, never fatal: one odd object must not take the cluster's names
    /// down. Slices belong to a Service through the `kubernetes.io/service-name` label.
    pub fn build(domain: &str, services: &[Value], slices: &[Value]) -> Zone {
        let origin = match parse_domain(domain) {
            Ok(origin) => Some(origin),
            Err(error) => {
                tracing::warn!(domain, %error, "cluster domain is not a DNS name; answering nothing");
                None
            }
        };
        let origin_name = origin.as_ref().map(Name::from).unwrap_or_else(Name::root);
        let soa = soa_record(&origin_name, 0);
        let mut builder = Builder {
            origin: origin_name.clone(),
            svc: prefixed(&origin_name, &["svc"]),
            nodes: HashMap::new(),
        };
        let mut count = 0;
        if origin.is_some() {
            builder.add(&origin_name, soa.clone());
            if let Ok(version) =
                Name::from_ascii("dns-version").and_then(|n| n.append_domain(&origin_name))
            {
                builder.add(
                    &version,
                    Record::from_rdata(
                        version.clone(),
                        TTL,
                        RData::TXT(TXT::new(vec![SPEC_VERSION.into()])),
                    ),
                );
            }
            let by_service = slices_by_service(slices);
            for service in services {
                if builder.add_service(service, &by_service) {
                    count += 1;
                }
            }
            builder.add_empty_non_terminals();
        }
        Zone {
            origin,
            soa,
            nodes: builder.nodes,
            services: count,
        }
    }

    /// The number of Services the zone answers for.
    pub fn services(&self) -> usize {
        self.services
    }

    /// The cluster domain, if it was a valid DNS name.
    pub(crate) fn origin(&self) -> Option<&LowerName> {
        self.origin.as_ref()
    }

    /// Stamps `serial` into the SOA so secondaries and humans can tell zones apart.
    pub(crate) fn set_serial(&mut self, serial: u32) {
        let Some(origin) = &self.origin else { return };
        let origin_name = Name::from(origin);
        self.soa = soa_record(&origin_name, serial);
        if let Some(apex) = self.nodes.get_mut(&**origin) {
            apex.records.retain(|r| r.record_type() != RecordType::SOA);
            apex.records.push(self.soa.clone());
        }
    }

    /// Whether `name` falls inside the cluster domain (where missing names are NXDOMAIN).
    pub(crate) fn claims(&self, name: &LowerName) -> bool {
        self.origin.as_ref().is_some_and(|o| o.zone_of(name))
    }

    /// Answers one question from the zone, or `None` when the name is not ours and the server
    /// should forward it: outside the cluster domain and not a reverse name we know. Unknown
    /// reverse names fall through to the upstreams, as CoreDNS's default Corefile does with
    /// `fallthrough in-addr.arpa ip6.arpa`.
    pub(crate) fn lookup(&self, name: &LowerName, qtype: RecordType) -> Option<Answer<'_>> {
        let claimed = self.claims(name);
        let Some(node) = self.nodes.get(&**name) else {
            return claimed.then(|| self.negative(ResponseCode::NXDomain));
        };
        if !matches!(qtype, RecordType::CNAME | RecordType::ANY)
            && let Some(cname) = node
                .records
                .iter()
                .find(|r| r.record_type() == RecordType::CNAME)
        {
            let target = match &cname.data {
                RData::CNAME(CNAME(target)) => Some(target),
                _ => None,
            };
            return Some(Answer {
                rcode: ResponseCode::NoError,
                answers: vec![cname],
                additionals: &[],
                soa: None,
                cname_target: target,
            });
        }
        let answers: Vec<&Record> = node
            .records
            .iter()
            .filter(|r| qtype == RecordType::ANY || r.record_type() == qtype)
            .collect();
        if answers.is_empty() {
            // A reverse name we know, asked for another type: not our business.
            return claimed.then(|| self.negative(ResponseCode::NoError));
        }
        let additionals = if matches!(qtype, RecordType::SRV | RecordType::ANY) {
            &node.additionals[..]
        } else {
            &[]
        };
        Some(Answer {
            rcode: ResponseCode::NoError,
            answers,
            additionals,
            soa: None,
            cname_target: None,
        })
    }

    fn negative(&self, rcode: ResponseCode) -> Answer<'_> {
        Answer {
            rcode,
            answers: Vec::new(),
            additionals: &[],
            soa: Some(&self.soa),
            cname_target: None,
        }
    }
}

/// Parses the cluster domain into the zone's origin (lowercase, fully qualified).
pub(crate) fn parse_domain(domain: &str) -> Result<LowerName, hickory_proto::ProtoError> {
    let trimmed = domain.trim().trim_end_matches('.');
    if trimmed.is_empty() {
        return Err("empty cluster domain".into());
    }
    let mut name = Name::from_ascii(trimmed)?;
    name.set_fqdn(true);
    Ok(LowerName::new(&name))
}

/// CoreDNS's SOA for the cluster zone: `ns.dns.<zone>` and `hostmaster.<zone>`, and its timers.
fn soa_record(origin: &Name, serial: u32) -> Record {
    let mname = prefixed(origin, &["ns", "dns"]).unwrap_or_else(|| origin.clone());
    let rname = prefixed(origin, &["hostmaster"]).unwrap_or_else(|| origin.clone());
    let soa = SOA::new(mname, rname, serial, 7200, 1800, 86400, TTL);
    Record::from_rdata(origin.clone(), TTL, RData::SOA(soa))
}

/// `labels...` followed by `base`, or `None` if that is not a valid name.
fn prefixed(base: &Name, labels: &[&str]) -> Option<Name> {
    Name::from_labels(labels.iter().map(|l| l.as_bytes()))
        .and_then(|n| n.append_domain(base))
        .ok()
}

/// EndpointSlices grouped by (namespace, service name).
fn slices_by_service(slices: &[Value]) -> HashMap<(&str, &str), Vec<&Value>> {
    let mut map: HashMap<(&str, &str), Vec<&Value>> = HashMap::new();
    for slice in slices {
        let Some(service) = slice
            .pointer("/metadata/labels")
            .and_then(|l| l.get(SERVICE_NAME_LABEL))
            .and_then(Value::as_str)
        else {
            continue;
        };
        map.entry((namespace_of(slice), service))
            .or_default()
            .push(slice);
    }
    map
}

fn namespace_of(object: &Value) -> &str {
    object
        .pointer("/metadata/namespace")
        .and_then(Value::as_str)
        .filter(|ns| !ns.is_empty())
        .unwrap_or("default")
}

/// A named port as SRV records use it: `_<name>._<protocol>`.
struct NamedPort<'a> {
    name: &'a str,
    protocol: String,
    port: u16,
}

/// The named ports in a Service's `spec.ports` or an EndpointSlice's `ports`.
fn named_ports(ports: Option<&Value>) -> Vec<NamedPort<'_>> {
    let Some(ports) = ports.and_then(Value::as_array) else {
        return Vec::new();
    };
    ports
        .iter()
        .filter_map(|p| {
            let name = p
                .get("name")
                .and_then(Value::as_str)
                .filter(|n| !n.is_empty())?;
            let port = u16::try_from(p.get("port").and_then(Value::as_u64)?).ok()?;
            let protocol = p
                .get("protocol")
                .and_then(Value::as_str)
                .unwrap_or("TCP")
                .to_ascii_lowercase();
            Some(NamedPort {
                name,
                protocol,
                port,
            })
        })
        .collect()
}

/// An endpoint's name inside its headless Service: its `hostname`, else its address with the
/// separators turned into dashes (CoreDNS's convention, e.g. `10-1-2-3`).
fn endpoint_label(hostname: Option<&str>, ip: IpAddr) -> String {
    if let Some(hostname) = hostname.filter(|h| !h.is_empty()) {
        return hostname.to_ascii_lowercase();
    }
    match ip {
        IpAddr::V4(v4) => v4.to_string().replace('.', "-"),
        IpAddr::V6(v6) => {
            // A label may not start or end with a dash, which `::` at either end would give.
            let mut label = v6.to_string().replace(':', "-");
            if label.starts_with('-') {
                label.insert(0, '0');
            }
            if label.ends_with('-') {
                label.push('0');
            }
            label
        }
    }
}

fn address_record(name: &Name, ip: IpAddr) -> Record {
    let rdata = match ip {
        IpAddr::V4(v4) => RData::A(A(v4)),
        IpAddr::V6(v6) => RData::AAAA(AAAA(v6)),
    };
    Record::from_rdata(name.clone(), TTL, rdata)
}

/// One SRV target of a headless Service, gathered before the weights are known.
struct SrvTarget {
    port: u16,
    target: Name,
    ip: IpAddr,
}

struct Builder {
    origin: Name,
    /// `svc.<origin>`, the parent of every namespace's names.
    svc: Option<Name>,
    nodes: HashMap<Name, Node>,
}

impl Builder {
    fn node(&mut self, name: &Name) -> &mut Node {
        // Look up before inserting: most calls find the node, and a key costs an allocation.
        if !self.nodes.contains_key(name) {
            self.nodes.insert(name.clone(), Node::default());
        }
        self.nodes.get_mut(name).expect("inserted above")
    }

    fn add(&mut self, name: &Name, record: Record) {
        self.node(name).records.push(record);
    }

    /// `label.base` with `label` lowercased (`base` is already); `None` (and a debug line)
    /// when it is not a valid name.
    fn child(&self, label: &str, base: &Name) -> Option<Name> {
        let lowered;
        let label = if label.bytes().any(|b| b.is_ascii_uppercase()) {
            lowered = label.to_ascii_lowercase();
            lowered.as_str()
        } else {
            label
        };
        match Name::from_labels([label.as_bytes()]).and_then(|n| n.append_domain(base)) {
            Ok(name) => Some(name),
            Err(error) => {
                debug!(label, %base, %error, "skipping a name that is not valid DNS");
                None
            }
        }
    }

    /// Adds one Service's records; false if it had no usable name.
    fn add_service(
        &mut self,
        service: &Value,
        slices: &HashMap<(&str, &str), Vec<&Value>>,
    ) -> bool {
        let Some(name) = service.pointer("/metadata/name").and_then(Value::as_str) else {
            return false;
        };
        let namespace = namespace_of(service);
        let Some(svc_base) = self.svc.clone() else {
            return false;
        };
        let Some(ns_name) = self.child(namespace, &svc_base) else {
            return false;
        };
        let Some(base) = self.child(name, &ns_name) else {
            return false;
        };
        // The Service's own name exists even when it has nothing to answer (NODATA).
        self.node(&base);
        let spec = service.get("spec");
        let field = |key: &str| spec.and_then(|s| s.get(key));

        if field("type").and_then(Value::as_str) == Some("ExternalName") {
            let target = field("externalName").and_then(Value::as_str).unwrap_or("");
            match Name::from_ascii(target.trim_end_matches('.')) {
                Ok(mut target) if !target.is_root() => {
                    target.set_fqdn(true);
                    self.add(
                        &base,
                        Record::from_rdata(base.clone(), TTL, RData::CNAME(CNAME(target))),
                    );
                }
                _ => debug!(
                    service = name,
                    namespace, target, "externalName is not a DNS name"
                ),
            }
            return true;
        }

        if field("clusterIP").and_then(Value::as_str) == Some("None") {
            let publish_not_ready =
                field("publishNotReadyAddresses").and_then(Value::as_bool) == Some(true);
            let empty = Vec::new();
            let own = slices.get(&(namespace, name)).unwrap_or(&empty);
            self.add_headless(&base, own, publish_not_ready);
            return true;
        }

        let mut ips: Vec<IpAddr> = field("clusterIPs")
            .and_then(Value::as_array)
            .map(|a| a.iter().filter_map(|v| v.as_str()?.parse().ok()).collect())
            .unwrap_or_default();
        if ips.is_empty()
            && let Some(ip) = field("clusterIP")
                .and_then(Value::as_str)
                .and_then(|s| s.parse().ok())
        {
            ips.push(ip);
        }
        let addresses: Vec<Record> = ips.iter().map(|ip| address_record(&base, *ip)).collect();
        for ip in &ips {
            let reverse = Name::from(*ip);
            self.add(
                &reverse,
                Record::from_rdata(reverse.clone(), TTL, RData::PTR(PTR(base.clone()))),
            );
        }
        for port in named_ports(field("ports")) {
            let Some(srv_name) = self.srv_name(&port, &base) else {
                continue;
            };
            let srv = SRV::new(0, 100, port.port, base.clone());
            let node = self.node(&srv_name);
            node.records
                .push(Record::from_rdata(srv_name.clone(), TTL, RData::SRV(srv)));
            node.additionals.extend(addresses.iter().cloned());
        }
        self.node(&base).records.extend(addresses);
        true
    }

    /// `_<port>._<protocol>.<base>`.
    fn srv_name(&self, port: &NamedPort<'_>, base: &Name) -> Option<Name> {
        let proto = self.child(&format!("_{}", port.protocol), base)?;
        self.child(&format!("_{}", port.name), &proto)
    }

    /// A headless Service: the ready endpoints' addresses at the Service's name and at each
    /// endpoint's own name, PTRs for endpoints with a hostname, SRV per named endpoint port.
    fn add_headless(&mut self, base: &Name, slices: &[&Value], publish_not_ready: bool) {
        let mut seen: HashSet<IpAddr> = HashSet::new();
        // SRV name -> targets, kept in slice order.
        let mut srv: Vec<(Name, Vec<SrvTarget>)> = Vec::new();
        for slice in slices {
            if !matches!(
                slice.get("addressType").and_then(Value::as_str),
                Some("IPv4" | "IPv6")
            ) {
                continue; // FQDN slices carry no addresses to answer with.
            }
            // The SRV names of this slice's named ports, and where each one's targets go.
            let mut ports: Vec<(u16, usize)> = Vec::new();
            for port in named_ports(slice.get("ports")) {
                let Some(srv_name) = self.srv_name(&port, base) else {
                    continue;
                };
                let index = match srv.iter().position(|(n, _)| *n == srv_name) {
                    Some(index) => index,
                    None => {
                        srv.push((srv_name, Vec::new()));
                        srv.len() - 1
                    }
                };
                ports.push((port.port, index));
            }
            let endpoints = slice
                .get("endpoints")
                .and_then(Value::as_array)
                .map(Vec::as_slice)
                .unwrap_or(&[]);
            for endpoint in endpoints {
                // A missing `ready` condition means ready (the EndpointSlice API's rule).
                let ready = endpoint
                    .pointer("/conditions/ready")
                    .and_then(Value::as_bool)
                    != Some(false);
                if !ready && !publish_not_ready {
                    continue;
                }
                let hostname = endpoint.get("hostname").and_then(Value::as_str);
                let addresses = endpoint
                    .get("addresses")
                    .and_then(Value::as_array)
                    .map(Vec::as_slice)
                    .unwrap_or(&[]);
                for ip in addresses
                    .iter()
                    .filter_map(|a| a.as_str()?.parse::<IpAddr>().ok())
                {
                    if !seen.insert(ip) {
                        continue;
                    }
                    self.add(base, address_record(base, ip));
                    let Some(own) = self.child(&endpoint_label(hostname, ip), base) else {
                        continue;
                    };
                    self.add(&own, address_record(&own, ip));
                    if hostname.is_some_and(|h| !h.is_empty()) {
                        let reverse = Name::from(ip);
                        self.add(
                            &reverse,
                            Record::from_rdata(reverse.clone(), TTL, RData::PTR(PTR(own.clone()))),
                        );
                    }
                    for &(port, index) in &ports {
                        srv[index].1.push(SrvTarget {
                            port,
                            target: own.clone(),
                            ip,
                        });
                    }
                }
            }
        }
        for (srv_name, targets) in srv {
            // One SRV record per (port, target): a dual-stack endpoint appears in an IPv4 and an
            // IPv6 slice under one name, and both its addresses go in the additional section.
            let mut unique: Vec<(u16, &Name)> = Vec::new();
            for t in &targets {
                if !unique.contains(&(t.port, &t.target)) {
                    unique.push((t.port, &t.target));
                }
            }
            // Equal shares of 100, as CoreDNS gives each target of one priority.
            let weight = u16::try_from(100 / unique.len().max(1)).unwrap_or(1).max(1);
            let records: Vec<Record> = unique
                .iter()
                .map(|(port, target)| {
                    let rdata = RData::SRV(SRV::new(0, weight, *port, (*target).clone()));
                    Record::from_rdata(srv_name.clone(), TTL, rdata)
                })
                .collect();
            let node = self.node(&srv_name);
            node.records.extend(records);
            for t in &targets {
                let additional = address_record(&t.target, t.ip);
                if !node.additionals.contains(&additional) {
                    node.additionals.push(additional);
                }
            }
        }
    }

    /// Every ancestor of a name in the cluster domain exists (NODATA, not NXDOMAIN): `svc.<zone>`,
    /// `<ns>.svc.<zone>`, `_tcp.<svc>.<ns>.svc.<zone>` and so on, as CoreDNS answers them.
    fn add_empty_non_terminals(&mut self) {
        let origin = &self.origin;
        let mut missing: HashSet<Name> = HashSet::new();
        for name in self.nodes.keys().filter(|n| origin.zone_of(n)) {
            let mut parent = name.base_name();
            // An ancestor already present has had its own ancestors seen (or will have).
            while origin.zone_of(&parent)
                && parent != *origin
                && !self.nodes.contains_key(&parent)
                && missing.insert(parent.clone())
            {
                parent = parent.base_name();
            }
        }
        for name in missing {
            self.nodes.entry(name).or_default();
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;
    use std::str::FromStr;

    fn lower(name: &str) -> LowerName {
        LowerName::from_str(name).unwrap()
    }

    fn zone() -> Zone {
        let services = vec![
            json!({"metadata": {"name": "web", "namespace": "default"},
                   "spec": {"clusterIP": "10.43.0.10", "clusterIPs": ["10.43.0.10", "fd00::10"],
                            "ports": [{"name": "http", "port": 80, "protocol": "TCP"}, {"port": 81}]}}),
            json!({"metadata": {"name": "nginx", "namespace": "default"},
                   "spec": {"clusterIP": "None", "ports": [{"name": "web", "port": 80}]}}),
            json!({"metadata": {"name": "ext", "namespace": "other"},
                   "spec": {"type": "ExternalName", "externalName": "example.com."}}),
        ];
        let slices = vec![json!({
            "metadata": {"name": "nginx-abc", "namespace": "default",
                         "labels": {"kubernetes.io/service-name": "nginx"}},
            "addressType": "IPv4",
            "ports": [{"name": "web", "port": 8080, "protocol": "TCP"}],
            "endpoints": [
                {"addresses": ["10.42.0.5"], "hostname": "web-0", "conditions": {"ready": true}},
                {"addresses": ["10.42.0.6"]},
                {"addresses": ["10.42.0.7"], "conditions": {"ready": false}},
            ]
        })];
        Zone::build("cluster.local", &services, &slices)
    }

    fn rdatas(answer: &Answer<'_>) -> Vec<String> {
        answer.answers.iter().map(|r| r.data.to_string()).collect()
    }

    #[test]
    fn cluster_ip_service_has_a_aaaa_srv_and_ptr() {
        let zone = zone();
        let a = zone
            .lookup(&lower("web.default.svc.cluster.local."), RecordType::A)
            .unwrap();
        assert_eq!(rdatas(&a), ["10.43.0.10"]);
        let aaaa = zone
            .lookup(&lower("WEB.default.svc.cluster.local."), RecordType::AAAA)
            .unwrap();
        assert_eq!(rdatas(&aaaa), ["fd00::10"]);
        let srv = zone
            .lookup(
                &lower("_http._tcp.web.default.svc.cluster.local."),
                RecordType::SRV,
            )
            .unwrap();
        assert_eq!(rdatas(&srv), ["0 100 80 web.default.svc.cluster.local."]);
        assert_eq!(srv.additionals.len(), 2);
        let ptr = zone
            .lookup(&lower("10.0.43.10.in-addr.arpa."), RecordType::PTR)
            .unwrap();
        assert_eq!(rdatas(&ptr), ["web.default.svc.cluster.local."]);
    }

    #[test]
    fn headless_service_answers_ready_endpoints_only() {
        let zone = zone();
        let a = zone
            .lookup(&lower("nginx.default.svc.cluster.local."), RecordType::A)
            .unwrap();
        assert_eq!(rdatas(&a), ["10.42.0.5", "10.42.0.6"]);
        let pod = zone
            .lookup(
                &lower("web-0.nginx.default.svc.cluster.local."),
                RecordType::A,
            )
            .unwrap();
        assert_eq!(rdatas(&pod), ["10.42.0.5"]);
        let dashed = zone
            .lookup(
                &lower("10-42-0-6.nginx.default.svc.cluster.local."),
                RecordType::A,
            )
            .unwrap();
        assert_eq!(rdatas(&dashed), ["10.42.0.6"]);
        let srv = zone
            .lookup(
                &lower("_web._tcp.nginx.default.svc.cluster.local."),
                RecordType::SRV,
            )
            .unwrap();
        assert_eq!(
            rdatas(&srv),
            [
                "0 50 8080 web-0.nginx.default.svc.cluster.local.",
                "0 50 8080 10-42-0-6.nginx.default.svc.cluster.local."
            ]
        );
        assert_eq!(srv.additionals.len(), 2);
        // Only the endpoint with a hostname gets a PTR; the others fall through to upstream.
        let ptr = zone
            .lookup(&lower("5.0.42.10.in-addr.arpa."), RecordType::PTR)
            .unwrap();
        assert_eq!(rdatas(&ptr), ["web-0.nginx.default.svc.cluster.local."]);
        assert!(
            zone.lookup(&lower("6.0.42.10.in-addr.arpa."), RecordType::PTR)
                .is_none()
        );
        let unready = zone
            .lookup(
                &lower("10-42-0-7.nginx.default.svc.cluster.local."),
                RecordType::A,
            )
            .unwrap();
        assert_eq!(unready.rcode, ResponseCode::NXDomain);
    }

    #[test]
    fn external_name_is_a_cname_to_follow() {
        let zone = zone();
        let a = zone
            .lookup(&lower("ext.other.svc.cluster.local."), RecordType::A)
            .unwrap();
        assert_eq!(rdatas(&a), ["example.com."]);
        assert_eq!(
            a.cname_target.map(ToString::to_string).as_deref(),
            Some("example.com.")
        );
        let cname = zone
            .lookup(&lower("ext.other.svc.cluster.local."), RecordType::CNAME)
            .unwrap();
        assert!(cname.cname_target.is_none());
    }

    #[test]
    fn missing_names_are_nxdomain_and_empty_non_terminals_nodata() {
        let zone = zone();
        let nx = zone
            .lookup(&lower("nope.default.svc.cluster.local."), RecordType::A)
            .unwrap();
        assert_eq!(nx.rcode, ResponseCode::NXDomain);
        assert!(nx.soa.is_some());
        for ent in [
            "default.svc.cluster.local.",
            "svc.cluster.local.",
            "cluster.local.",
            "_tcp.web.default.svc.cluster.local.",
        ] {
            let nodata = zone.lookup(&lower(ent), RecordType::A).unwrap();
            assert_eq!(nodata.rcode, ResponseCode::NoError, "{ent}");
            assert!(nodata.answers.is_empty() && nodata.soa.is_some(), "{ent}");
        }
        assert!(
            zone.nodes
                .keys()
                .all(|n| n.to_ascii().ends_with("cluster.local.")
                    || n.to_ascii().ends_with(".arpa."))
        );
        let missing_ns = zone
            .lookup(&lower("nothere.svc.cluster.local."), RecordType::A)
            .unwrap();
        assert_eq!(missing_ns.rcode, ResponseCode::NXDomain);
        // The port without a name has no SRV record.
        let unnamed = zone
            .lookup(
                &lower("_81._tcp.web.default.svc.cluster.local."),
                RecordType::SRV,
            )
            .unwrap();
        assert_eq!(unnamed.rcode, ResponseCode::NXDomain);
    }

    #[test]
    fn outside_names_are_forwarded() {
        let zone = zone();
        assert!(zone.lookup(&lower("example.com."), RecordType::A).is_none());
        assert!(
            zone.lookup(&lower("9.9.9.9.in-addr.arpa."), RecordType::PTR)
                .is_none()
        );
    }

    #[test]
    fn apex_soa_and_spec_version() {
        let mut zone = zone();
        zone.set_serial(7);
        let soa = zone
            .lookup(&lower("cluster.local."), RecordType::SOA)
            .unwrap();
        assert_eq!(
            rdatas(&soa),
            ["ns.dns.cluster.local. hostmaster.cluster.local. 7 7200 1800 86400 5"]
        );
        let txt = zone
            .lookup(&lower("dns-version.cluster.local."), RecordType::TXT)
            .unwrap();
        assert_eq!(rdatas(&txt), ["1.1.0"]);
    }

    #[test]
    fn publish_not_ready_addresses_includes_unready_endpoints() {
        let services = vec![json!({"metadata": {"name": "db", "namespace": "ns"},
            "spec": {"clusterIP": "None", "publishNotReadyAddresses": true}})];
        let slices = vec![
            json!({"metadata": {"namespace": "ns", "labels": {"kubernetes.io/service-name": "db"}},
            "addressType": "IPv4",
            "endpoints": [{"addresses": ["10.0.0.1"], "conditions": {"ready": false}}]}),
        ];
        let zone = Zone::build("cluster.local", &services, &slices);
        let a = zone
            .lookup(&lower("db.ns.svc.cluster.local."), RecordType::A)
            .unwrap();
        assert_eq!(rdatas(&a), ["10.0.0.1"]);
    }

    #[test]
    fn dual_stack_endpoint_has_one_srv_record_and_both_addresses() {
        let services = vec![json!({"metadata": {"name": "db", "namespace": "ns"},
            "spec": {"clusterIP": "None"}})];
        let slice = |family: &str, ip: &str| {
            json!({"metadata": {"namespace": "ns", "labels": {"kubernetes.io/service-name": "db"}},
                "addressType": family, "ports": [{"name": "pg", "port": 5432}],
                "endpoints": [{"addresses": [ip], "hostname": "db-0"}]})
        };
        let slices = vec![slice("IPv4", "10.0.0.1"), slice("IPv6", "fd00::1")];
        let zone = Zone::build("cluster.local", &services, &slices);
        let srv = zone
            .lookup(&lower("_pg._tcp.db.ns.svc.cluster.local."), RecordType::SRV)
            .unwrap();
        assert_eq!(rdatas(&srv), ["0 100 5432 db-0.db.ns.svc.cluster.local."]);
        assert_eq!(srv.additionals.len(), 2);
        let aaaa = zone
            .lookup(&lower("db-0.db.ns.svc.cluster.local."), RecordType::AAAA)
            .unwrap();
        assert_eq!(rdatas(&aaaa), ["fd00::1"]);
    }

    #[test]
    fn invalid_domain_claims_nothing() {
        let zone = Zone::build("bad..domain", &[], &[]);
        assert!(zone.origin().is_none());
        assert!(
            zone.lookup(&lower("x.svc.cluster.local."), RecordType::A)
                .is_none()
        );
    }

    #[test]
    fn ipv6_endpoint_labels_never_start_or_end_with_a_dash() {
        assert_eq!(endpoint_label(None, "::1".parse().unwrap()), "0--1");
        assert_eq!(endpoint_label(None, "fd00::".parse().unwrap()), "fd00--0");
        assert_eq!(
            endpoint_label(Some("Web-0"), "::1".parse().unwrap()),
            "web-0"
        );
    }
}
