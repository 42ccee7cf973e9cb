//! The service proxy's nftables mode: Services become kernel DNAT, so forwarded traffic
//! never passes through the agent and keeps flowing while the agent restarts.
//!
//! Everything lives in one table of our own, `ip kedge-proxy`; other tables (the CNI's,
//! the distribution's firewall) are never read or written. Lookups go through verdict maps
//! keyed on `daddr . l4proto . dport`, so a packet costs one hash lookup however many
//! Services exist; per-Service work happens in small chains the map jumps to:
//!
//! ```text
//! nat_prerouting / nat_output ─▶ services ─┬─ @service_ips  (ClusterIPs, LB IPs)
//!                                          └─ @node_ports   (fib daddr type local)
//!   cip-<svc>  ClusterIP entry: masquerade non-pod sources, then svc-/lcl-
//!   ext-<svc>  NodePort/LB entry: traffic policy, masquerade, then svc-/lcl-
//!   svc-<svc>  balance over all usable endpoints   (affinity sets, numgen)
//!   lcl-<svc>  balance over this node's endpoints  (the Local policies)
//!   ep-<svc>/<ip>/<port>  hairpin masquerade, affinity update, dnat
//! filter_input / filter_forward / filter_output ─▶ reject what has no endpoints
//! ```
//!
//! The first sync replaces the table in one transaction (`add`, `delete`, define — so an
//! old table goes and the new one arrives with no moment in between). Later syncs send only
//! the difference, still as one transaction: recreating everything each time would also
//! forget every client's session affinity, which lives in the per-endpoint sets.
//!
//! DNAT is decided once per conntrack flow, so after each sync the UDP flows still bound to
//! endpoints the new table dropped are deleted ([`crate::conntrack`]).

use std::collections::BTreeMap;
use std::fmt::Write as _;
use std::process::Stdio;

use tokio::io::AsyncWriteExt;
use tokio::process::Command;
use tokio::sync::Mutex;

use crate::conntrack::{Conntrack, stale_flows};
use crate::model::{Endpoint, ProxyConfig, Service, ServicePort, ServiceTable, SyncStats};

/// Our table. `ip` family: the proxy is IPv4-only, like the model.
pub const TABLE: &str = "kedge-proxy";

/// The packet mark bit that asks postrouting to masquerade. The bit kube-proxy uses: the
/// two never run on one node, and CNI plugins already leave it alone.
pub const MASQ_MARK: u32 = 0x4000;

#[derive(Debug, thiserror::Error)]
pub enum Error {
    #[error("cannot run {program}")]
    Spawn {
        program: String,
        #[source]
        source: std::io::Error,
    },
    #[error("nft refused the ruleset ({status}): {stderr}")]
    Nft { status: String, stderr: String },
}

pub type Result<T, E = Error> = std::result::Result<T, E>;

/// The rules for one table, as named pieces, so two versions can be diffed into a small
/// transaction. Only the parts that depend on Services are here; the hooks and helper
/// chains are fixed text ([`FIXED_CHAINS`]).
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub(crate) struct Ruleset {
    /// Regular chain name → its rules.
    chains: BTreeMap<String, Vec<String>>,
    /// Affinity set name → timeout in seconds.
    sets: BTreeMap<String, u32>,
    /// Map name → element key → verdict.
    maps: BTreeMap<&'static str, BTreeMap<String, String>>,
}

const SERVICE_IPS: &str = "service_ips";
const NODE_PORTS: &str = "node_ports";
const NO_EP_SERVICES: &str = "no_endpoint_services";
const NO_EP_NODE_PORTS: &str = "no_endpoint_node_ports";

/// Map declarations: name and key type (all map to verdicts).
const MAPS: [(&str, &str); 4] = [
    (SERVICE_IPS, "ipv4_addr . inet_proto . inet_service"),
    (NODE_PORTS, "inet_proto . inet_service"),
    (NO_EP_SERVICES, "ipv4_addr . inet_proto . inet_service"),
    (NO_EP_NODE_PORTS, "inet_proto . inet_service"),
];

/// Chains that never change: (name, base-chain spec or "", rules).
/// Priorities are numbers (-100 is dstnat, 100 srcnat) because nft before 1.0.7 only
/// knows the names on some hooks. "No endpoints" is decided on the address the client
/// used: on output the check runs at -110, before DNAT; on input and forward DNAT has
/// already happened, so a translated connection is let through (`ct status dnat`) and a
/// Service port with no endpoints, never translated, still carries its own address.
/// NodePorts on 127.0.0.0/8 are left out: reaching them would need route_localnet, which
/// opens the node's loopback services to the network.
const FIXED_CHAINS: &[(&str, &str, &[&str])] = &[
    (
        "nat_prerouting",
        "type nat hook prerouting priority -100; policy accept;",
        &["jump services"],
    ),
    (
        "nat_output",
        "type nat hook output priority -100; policy accept;",
        &["jump services"],
    ),
    (
        "nat_postrouting",
        "type nat hook postrouting priority 100; policy accept;",
        &["jump masquerading"],
    ),
    (
        "filter_input",
        "type filter hook input priority -110; policy accept;",
        &[
            "ct state new jump node_ports_check",
            "ct state new jump endpoints_check",
        ],
    ),
    (
        "filter_forward",
        "type filter hook forward priority -110; policy accept;",
        &["ct state new jump endpoints_check"],
    ),
    (
        "filter_output",
        "type filter hook output priority -110; policy accept;",
        &["ct state new jump endpoints_check"],
    ),
    (
        "services",
        "",
        &[
            "ip daddr . meta l4proto . th dport vmap @service_ips",
            "fib daddr type local ip daddr != 127.0.0.0/8 meta l4proto . th dport vmap @node_ports",
        ],
    ),
    (
        "endpoints_check",
        "",
        &[
            "ct status dnat return",
            "ip daddr . meta l4proto . th dport vmap @no_endpoint_services",
        ],
    ),
    (
        "node_ports_check",
        "",
        &[
            "ct status dnat return",
            "fib daddr type local ip daddr != 127.0.0.0/8 meta l4proto . th dport vmap @no_endpoint_node_ports",
        ],
    ),
    ("mark_for_masq", "", &["meta mark set meta mark | 0x4000"]),
    (
        "masquerading",
        "",
        &[
            "meta mark & 0x4000 == 0 return",
            "meta mark set meta mark ^ 0x4000",
            "masquerade fully-random",
        ],
    ),
    (
        "reject_chain",
        "",
        &["meta l4proto tcp reject with tcp reset", "reject"],
    ),
];

/// Renders the whole ruleset for `table` as one `nft -f` transaction that replaces our
/// table (and nothing else). Pure, so tests read the text.
pub fn render(table: &ServiceTable, cfg: &ProxyConfig) -> String {
    render_full(&Ruleset::build(table, cfg))
}

/// Chain and set names are nft identifiers; Kubernetes names are DNS labels already, this
/// only guards against anything the API might let through.
fn ident(s: &str) -> String {
    s.chars()
        .map(|c| {
            if c.is_ascii_alphanumeric() || matches!(c, '-' | '_' | '.' | '/') {
                c
            } else {
                '_'
            }
        })
        .collect()
}

impl Ruleset {
    pub(crate) fn build(table: &ServiceTable, cfg: &ProxyConfig) -> Ruleset {
        let mut rs = Ruleset::default();
        for (name, _) in MAPS {
            rs.maps.insert(name, BTreeMap::new());
        }
        for svc in &table.services {
            for port in &svc.ports {
                rs.add_port(svc, port, cfg);
            }
        }
        rs
    }

    fn map(&mut self, name: &'static str) -> &mut BTreeMap<String, String> {
        self.maps.entry(name).or_default()
    }

    fn add_port(&mut self, svc: &Service, port: &ServicePort, cfg: &ProxyConfig) {
        let proto = port.protocol.as_str();
        let key = ident(&format!(
            "{}/{}/{}/{}",
            svc.namespace, svc.name, proto, port.port
        ));
        let (net, len) = cfg.cluster_cidr;
        let cidr = format!("{net}/{len}");
        let all = port.usable(None);
        let local = port.usable(Some(&cfg.node_name));
        let svc_chain = format!("svc-{key}");
        let lcl_chain = format!("lcl-{key}");
        let mut need_lcl = false;
        let mut need_svc = false;

        // ClusterIP entry.
        let internal = if svc.internal_local { &local } else { &all };
        if internal.is_empty() {
            for ip in &svc.cluster_ips {
                self.map(NO_EP_SERVICES).insert(
                    format!("{ip} . {proto} . {}", port.port),
                    "goto reject_chain".into(),
                );
            }
        } else {
            let target = if svc.internal_local {
                need_lcl = true;
                &lcl_chain
            } else {
                need_svc = true;
                &svc_chain
            };
            let cip = format!("cip-{key}");
            self.chains.insert(
                cip.clone(),
                vec![
                    format!("ip saddr != {cidr} jump mark_for_masq"),
                    format!("goto {target}"),
                ],
            );
            for ip in &svc.cluster_ips {
                self.map(SERVICE_IPS).insert(
                    format!("{ip} . {proto} . {}", port.port),
                    format!("goto {cip}"),
                );
            }
        }

        // External entries: NodePort on every local address, LB ingress IPs.
        let lb_ips = svc.external_ips(cfg);
        let node_port = port.node_port.filter(|_| svc.has_node_ports());
        if node_port.is_some() || !lb_ips.is_empty() {
            if all.is_empty() {
                if let Some(np) = node_port {
                    self.map(NO_EP_NODE_PORTS)
                        .insert(format!("{proto} . {np}"), "goto reject_chain".into());
                }
                for ip in &lb_ips {
                    self.map(NO_EP_SERVICES).insert(
                        format!("{ip} . {proto} . {}", port.port),
                        "goto reject_chain".into(),
                    );
                }
            } else {
                need_svc = true;
                let ext = format!("ext-{key}");
                let rules = if svc.external_local {
                    // Pods and the node itself are not "external": they get the whole
                    // Service (masqueraded, so replies from other nodes come back here).
                    // Outside clients keep their address and only reach this node's
                    // endpoints; with none here they are dropped (as kube-proxy does), not
                    // sent to another node, which would lose their address after all.
                    let mut r = vec![
                        format!("ip saddr {cidr} jump mark_for_masq"),
                        format!("ip saddr {cidr} goto {svc_chain}"),
                        "fib saddr type local jump mark_for_masq".to_string(),
                        format!("fib saddr type local goto {svc_chain}"),
                    ];
                    if local.is_empty() {
                        r.push("drop".into());
                    } else {
                        need_lcl = true;
                        r.push(format!("goto {lcl_chain}"));
                    }
                    r
                } else {
                    vec!["jump mark_for_masq".into(), format!("goto {svc_chain}")]
                };
                self.chains.insert(ext.clone(), rules);
                if let Some(np) = node_port {
                    self.map(NODE_PORTS)
                        .insert(format!("{proto} . {np}"), format!("goto {ext}"));
                }
                for ip in &lb_ips {
                    self.map(SERVICE_IPS).insert(
                        format!("{ip} . {proto} . {}", port.port),
                        format!("goto {ext}"),
                    );
                }
            }
        }

        if need_svc {
            self.balance(&svc_chain, &key, &all, svc.affinity_timeout_secs, port);
        }
        if need_lcl {
            self.balance(&lcl_chain, &key, &local, svc.affinity_timeout_secs, port);
        }
    }

    /// A chain spreading new connections over `eps`: a client with a live affinity entry
    /// goes back to its endpoint, everyone else is placed at random.
    fn balance(
        &mut self,
        chain: &str,
        key: &str,
        eps: &[&Endpoint],
        affinity: Option<u32>,
        port: &ServicePort,
    ) {
        let mut rules = Vec::new();
        let mut vmap = Vec::new();
        for (i, ep) in eps.iter().enumerate() {
            let ep_key = format!("{key}/{}/{}", ep.ip, ep.port);
            let ep_chain = format!("ep-{ep_key}");
            // The timeout is in the name: a set's timeout cannot change in place, and a new
            // name makes the diff replace the set together with the rules naming it.
            let aff_set = format!("aff-{}-{ep_key}", affinity.unwrap_or(0));
            if let Some(timeout) = affinity {
                rules.push(format!("ip saddr @{aff_set} goto {ep_chain}"));
                self.sets.insert(aff_set.clone(), timeout);
            }
            vmap.push(format!("{i} : goto {ep_chain}"));
            let mut ep_rules = vec![format!("ip saddr {} jump mark_for_masq", ep.ip)];
            if affinity.is_some() {
                ep_rules.push(format!("update @{aff_set} {{ ip saddr }}"));
            }
            ep_rules.push(format!(
                "meta l4proto {} dnat to {}:{}",
                port.protocol.as_str(),
                ep.ip,
                ep.port
            ));
            self.chains.insert(ep_chain, ep_rules);
        }
        rules.push(format!(
            "numgen random mod {} vmap {{ {} }}",
            eps.len(),
            vmap.join(", ")
        ));
        self.chains.insert(chain.to_string(), rules);
    }

    fn endpoint_chains(&self) -> usize {
        self.chains.keys().filter(|k| k.starts_with("ep-")).count()
    }
}

fn set_decl(out: &mut String, name: &str, timeout: u32) {
    let _ = writeln!(
        out,
        "add set ip {TABLE} {name} {{ type ipv4_addr; flags dynamic,timeout; timeout {timeout}s; }}"
    );
}

fn elements(out: &mut String, verb: &str, map: &str, items: &[String]) {
    // Chunked so no single line grows without bound at thousands of Services.
    for chunk in items.chunks(500) {
        let _ = writeln!(
            out,
            "{verb} element ip {TABLE} {map} {{ {} }}",
            chunk.join(", ")
        );
    }
}

/// The whole table, replacing whatever version of it is installed.
pub(crate) fn render_full(rs: &Ruleset) -> String {
    let mut out = String::new();
    // `add` first so `delete` cannot fail on a node that never had the table.
    let _ = writeln!(out, "add table ip {TABLE}");
    let _ = writeln!(out, "delete table ip {TABLE}");
    let _ = writeln!(out, "add table ip {TABLE}");
    for (name, ty) in MAPS {
        let _ = writeln!(out, "add map ip {TABLE} {name} {{ type {ty} : verdict; }}");
    }
    for (name, spec, _) in FIXED_CHAINS {
        if spec.is_empty() {
            let _ = writeln!(out, "add chain ip {TABLE} {name}");
        } else {
            let _ = writeln!(out, "add chain ip {TABLE} {name} {{ {spec} }}");
        }
    }
    for name in rs.chains.keys() {
        let _ = writeln!(out, "add chain ip {TABLE} {name}");
    }
    for (name, timeout) in &rs.sets {
        set_decl(&mut out, name, *timeout);
    }
    for (name, _, rules) in FIXED_CHAINS {
        for r in *rules {
            let _ = writeln!(out, "add rule ip {TABLE} {name} {r}");
        }
    }
    for (name, rules) in &rs.chains {
        for r in rules {
            let _ = writeln!(out, "add rule ip {TABLE} {name} {r}");
        }
    }
    for (map, elems) in &rs.maps {
        let items: Vec<String> = elems.iter().map(|(k, v)| format!("{k} : {v}")).collect();
        elements(&mut out, "add", map, &items);
    }
    out
}

/// The transaction that turns installed `old` into `new`, touching only what differs.
/// Order matters inside it: nothing may be deleted while a rule or map element still
/// points at it, and nothing referenced before it is declared.
pub(crate) fn render_update(old: &Ruleset, new: &Ruleset) -> String {
    let mut out = String::new();
    for (name, timeout) in &new.sets {
        if !old.sets.contains_key(name) {
            set_decl(&mut out, name, *timeout);
        }
    }
    for name in new.chains.keys().filter(|n| !old.chains.contains_key(*n)) {
        let _ = writeln!(out, "add chain ip {TABLE} {name}");
    }
    // Map elements that go or change: removed first so the chains they name can go.
    for (map, new_elems) in &new.maps {
        let empty = BTreeMap::new();
        let old_elems = old.maps.get(map).unwrap_or(&empty);
        let gone: Vec<String> = old_elems
            .iter()
            .filter(|(k, v)| new_elems.get(*k) != Some(v))
            .map(|(k, _)| k.clone())
            .collect();
        elements(&mut out, "delete", map, &gone);
    }
    let changed: Vec<&String> = new
        .chains
        .iter()
        .filter(|(n, r)| old.chains.get(*n).is_some_and(|o| o != *r))
        .map(|(n, _)| n)
        .collect();
    let removed: Vec<&String> = old
        .chains
        .keys()
        .filter(|n| !new.chains.contains_key(*n))
        .collect();
    for name in changed.iter().chain(&removed) {
        let _ = writeln!(out, "flush chain ip {TABLE} {name}");
    }
    for (name, rules) in &new.chains {
        if old.chains.get(name) == Some(rules) {
            continue;
        }
        for r in rules {
            let _ = writeln!(out, "add rule ip {TABLE} {name} {r}");
        }
    }
    for (map, new_elems) in &new.maps {
        let empty = BTreeMap::new();
        let old_elems = old.maps.get(map).unwrap_or(&empty);
        let added: Vec<String> = new_elems
            .iter()
            .filter(|(k, v)| old_elems.get(*k) != Some(v))
            .map(|(k, v)| format!("{k} : {v}"))
            .collect();
        elements(&mut out, "add", map, &added);
    }
    for name in &removed {
        let _ = writeln!(out, "delete chain ip {TABLE} {name}");
    }
    for name in old.sets.keys().filter(|n| !new.sets.contains_key(*n)) {
        let _ = writeln!(out, "delete set ip {TABLE} {name}");
    }
    out
}

/// Kernel DNAT for the node's Services. Holds the ruleset it last installed so the next
/// sync can send only the difference.
pub struct NftProxy {
    cfg: ProxyConfig,
    /// The program and leading arguments that run `nft`: plain `nft` on a node, wrapped in
    /// `ip netns exec` by tests and benches that must not touch the host's rules.
    command: Vec<String>,
    /// Clears UDP flows the new rules would no longer make (in the same namespace as `nft`).
    conntrack: Conntrack,
    installed: Mutex<Installed>,
}

/// What the last syncs left in the kernel, as far as we know.
#[derive(Default)]
struct Installed {
    /// The ruleset in our table; `None` makes the next sync replace the whole table.
    ruleset: Option<Ruleset>,
    /// The table the last successful sync applied: where UDP flows may still be DNATed to.
    table: Option<ServiceTable>,
}

impl NftProxy {
    pub fn new(cfg: ProxyConfig) -> NftProxy {
        NftProxy {
            cfg,
            command: vec!["nft".into()],
            conntrack: Conntrack::new(),
            installed: Mutex::default(),
        }
    }

    /// A proxy whose rules go into the named network namespace (tests and benches).
    pub fn in_netns(cfg: ProxyConfig, netns: &str) -> NftProxy {
        NftProxy {
            cfg,
            command: ["ip", "netns", "exec", netns, "nft"]
                .map(String::from)
                .to_vec(),
            conntrack: Conntrack::in_netns(netns),
            installed: Mutex::default(),
        }
    }

    /// Installs `table`, then deletes the UDP conntrack flows that would keep clients on
    /// endpoints the table no longer sends them to ([`crate::conntrack`]).
    pub async fn sync(&self, table: &ServiceTable) -> Result<SyncStats> {
        let new = Ruleset::build(table, &self.cfg);
        let mut installed = self.installed.lock().await;
        let stats = self.install(&mut installed.ruleset, table, new).await?;
        if let Some(old) = installed.table.replace(table.clone())
            && old != *table
        {
            let stale = stale_flows(&old, table, &self.cfg);
            self.conntrack.delete(&stale).await;
        }
        Ok(stats)
    }

    /// Installs `new`: a difference against the last successful sync, or the whole table
    /// the first time and after any failure (someone may have changed our table under us).
    async fn install(
        &self,
        installed: &mut Option<Ruleset>,
        table: &ServiceTable,
        new: Ruleset,
    ) -> Result<SyncStats> {
        let mut stats = SyncStats {
            service_ports: table.services.iter().map(|s| s.ports.len()).sum(),
            endpoints: new.endpoint_chains(),
            ..SyncStats::default()
        };
        if let Some(old) = installed.as_ref() {
            if *old == new {
                return Ok(stats);
            }
            let script = render_update(old, &new);
            match self.apply(&script).await {
                Ok(()) => {
                    stats.added = new
                        .chains
                        .keys()
                        .filter(|n| !old.chains.contains_key(*n))
                        .count();
                    stats.removed = old
                        .chains
                        .keys()
                        .filter(|n| !new.chains.contains_key(*n))
                        .count();
                    stats.changed = new
                        .chains
                        .iter()
                        .filter(|(n, r)| old.chains.get(*n).is_some_and(|o| o != *r))
                        .count();
                    *installed = Some(new);
                    return Ok(stats);
                }
                Err(error) => {
                    tracing::warn!(%error, "incremental nft update failed, replacing the table");
                    *installed = None;
                }
            }
        }
        self.apply(&render_full(&new)).await?;
        stats.added = new.chains.len();
        *installed = Some(new);
        Ok(stats)
    }

    /// Deletes our table; the node is left as if the proxy had never run.
    pub async fn shutdown(&self) {
        let mut installed = self.installed.lock().await;
        let script = format!("add table ip {TABLE}\ndelete table ip {TABLE}\n");
        if let Err(error) = self.apply(&script).await {
            tracing::warn!(%error, "removing the proxy's nft table failed");
        }
        *installed = Installed::default();
    }

    async fn apply(&self, script: &str) -> Result<()> {
        run_nft(&self.command, &["-f", "-"], script).await
    }
}

/// Applies `script` with the node's own `nft` (one kernel transaction): what the agent's
/// other tables (masquerade, redirects to the relay) are written with too.
pub async fn apply_script(script: &str) -> Result<()> {
    run_nft(&["nft".to_string()], &["-f", "-"], script).await
}

/// Runs nft with `script` on stdin; nft itself makes a `-f` file one kernel transaction.
pub(crate) async fn run_nft(command: &[String], args: &[&str], script: &str) -> Result<()> {
    let program = command.first().cloned().unwrap_or_else(|| "nft".into());
    let spawn_err = |source| Error::Spawn {
        program: program.clone(),
        source,
    };
    let mut child = Command::new(&program)
        .args(&command[1..])
        .args(args)
        .stdin(Stdio::piped())
        .stdout(Stdio::null())
        .stderr(Stdio::piped())
        .kill_on_drop(true)
        .spawn()
        .map_err(spawn_err)?;
    if let Some(mut stdin) = child.stdin.take() {
        stdin
            .write_all(script.as_bytes())
            .await
            .map_err(spawn_err)?;
    }
    let out = child.wait_with_output().await.map_err(spawn_err)?;
    if out.status.success() {
        return Ok(());
    }
    let mut stderr = String::from_utf8_lossy(&out.stderr).into_owned();
    // nft echoes the offending line; a few kilobytes is enough to find it.
    stderr.truncate(4096);
    Err(Error::Nft {
        status: out.status.to_string(),
        stderr,
    })
}

#[cfg(test)]
pub(crate) mod tests {
    use super::*;
    use crate::iface::tests::{TestNetns, missing_root};
    use crate::model::tests::{cfg, slice, svc};
    use serde_json::{Value, json};
    use std::io::{BufRead, BufReader, Read, Write};
    use std::net::{Ipv4Addr, SocketAddr, TcpListener, TcpStream};
    use std::process::{Child, Command};
    use std::time::Duration;

    fn web(spec_extra: Value, eps: Value) -> ServiceTable {
        let mut spec = json!({"clusterIP": "10.43.0.10", "ports": [{"name": "http", "port": 80}]});
        for (k, v) in spec_extra.as_object().unwrap() {
            spec[k] = v.clone();
        }
        ServiceTable::build(
            &[svc("default", "web", spec)],
            &[slice(
                "default",
                "web",
                json!([{"name": "http", "port": 8080}]),
                eps,
            )],
        )
    }

    fn two_eps() -> Value {
        json!([
            {"addresses": ["10.42.0.7"], "nodeName": "n1"},
            {"addresses": ["10.42.1.7"], "nodeName": "n2"},
        ])
    }

    /// `n` ClusterIP Services of `eps` endpoints each, a mix of the features the renderer
    /// has branches for, as the agent would see them.
    pub(crate) fn synthetic(n: usize, eps: usize) -> ServiceTable {
        let mut services = Vec::new();
        let mut slices = Vec::new();
        for i in 0..n {
            let name = format!("svc{i}");
            let mut spec = json!({
                "clusterIP": format!("10.43.{}.{}", i / 250, i % 250 + 1),
                "ports": [{"name": "http", "port": 80}],
            });
            if i % 3 == 0 {
                spec["type"] = json!("NodePort");
                spec["ports"][0]["nodePort"] = json!(30000 + i);
            }
            if i % 5 == 0 {
                spec["sessionAffinity"] = json!("ClientIP");
            }
            if i % 7 == 0 {
                spec["type"] = json!("LoadBalancer");
                spec["ports"][0]["nodePort"] = json!(30000 + i);
                spec["externalTrafficPolicy"] = json!("Local");
            }
            services.push(svc("bench", &name, spec));
            let endpoints: Vec<Value> = (0..eps)
                .map(|e| {
                    json!({"addresses": [format!("10.42.{}.{}", e, i % 250 + 2)],
                                "nodeName": if e % 2 == 0 { "n1" } else { "n2" }})
                })
                .collect();
            slices.push(slice(
                "bench",
                &name,
                json!([{"name": "http", "port": 8080}]),
                json!(endpoints),
            ));
        }
        ServiceTable::build(&services, &slices)
    }

    #[test]
    fn cluster_ip_goes_through_one_map_to_random_endpoints() {
        let out = render(&web(json!({}), two_eps()), &cfg());
        assert!(out.starts_with(
            "add table ip kedge-proxy\ndelete table ip kedge-proxy\nadd table ip kedge-proxy\n"
        ));
        assert!(out.contains("add element ip kedge-proxy service_ips { 10.43.0.10 . tcp . 80 : goto cip-default/web/tcp/80 }"), "{out}");
        assert!(out.contains("add rule ip kedge-proxy cip-default/web/tcp/80 ip saddr != 10.42.0.0/16 jump mark_for_masq"));
        assert!(out.contains("add rule ip kedge-proxy svc-default/web/tcp/80 numgen random mod 2 vmap { 0 : goto ep-default/web/tcp/80/10.42.0.7/8080, 1 : goto ep-default/web/tcp/80/10.42.1.7/8080 }"), "{out}");
        assert!(out.contains("add rule ip kedge-proxy ep-default/web/tcp/80/10.42.0.7/8080 ip saddr 10.42.0.7 jump mark_for_masq"), "hairpin");
        assert!(out.contains("add rule ip kedge-proxy ep-default/web/tcp/80/10.42.0.7/8080 meta l4proto tcp dnat to 10.42.0.7:8080"));
        assert!(!out.contains("aff-"), "no affinity asked for");
        assert!(
            out.contains(&format!(
                "mark_for_masq meta mark set meta mark | {MASQ_MARK:#x}"
            )),
            "MASQ_MARK is the bit the fixed chains use"
        );
        assert!(
            !out.contains("add element ip kedge-proxy node_ports"),
            "no NodePort elements for a ClusterIP Service"
        );
    }

    #[test]
    fn node_port_and_load_balancer_masquerade_and_share_the_service_chain() {
        let t = web(
            json!({"type": "LoadBalancer", "ports": [{"name": "http", "port": 80, "nodePort": 30080}]}),
            two_eps(),
        );
        let out = render(&t, &cfg());
        assert!(out.contains("add element ip kedge-proxy node_ports { tcp . 30080 : goto ext-default/web/tcp/80 }"), "{out}");
        assert!(
            out.contains("192.168.1.10 . tcp . 80 : goto ext-default/web/tcp/80"),
            "ServiceLB listens on the node IP: {out}"
        );
        assert!(out.contains("add rule ip kedge-proxy ext-default/web/tcp/80 jump mark_for_masq\nadd rule ip kedge-proxy ext-default/web/tcp/80 goto svc-default/web/tcp/80"));
        let mut no_lb = cfg();
        no_lb.service_lb = false;
        assert!(!render(&t, &no_lb).contains("192.168.1.10 . tcp"));
    }

    #[test]
    fn client_ip_affinity_uses_a_timed_set_per_endpoint() {
        let t = web(
            json!({"sessionAffinity": "ClientIP", "sessionAffinityConfig": {"clientIP": {"timeoutSeconds": 60}}}),
            two_eps(),
        );
        let out = render(&t, &cfg());
        assert!(out.contains("add set ip kedge-proxy aff-60-default/web/tcp/80/10.42.0.7/8080 { type ipv4_addr; flags dynamic,timeout; timeout 60s; }"), "{out}");
        assert!(out.contains("add rule ip kedge-proxy svc-default/web/tcp/80 ip saddr @aff-60-default/web/tcp/80/10.42.0.7/8080 goto ep-default/web/tcp/80/10.42.0.7/8080"));
        assert!(out.contains("add rule ip kedge-proxy ep-default/web/tcp/80/10.42.1.7/8080 update @aff-60-default/web/tcp/80/10.42.1.7/8080 { ip saddr }"));
        // The lookups come before the random pick.
        let lookup = out.find("svc-default/web/tcp/80 ip saddr @aff").unwrap();
        let pick = out.find("svc-default/web/tcp/80 numgen").unwrap();
        assert!(lookup < pick);
    }

    #[test]
    fn ports_without_endpoints_are_rejected_not_translated() {
        let t = web(
            json!({"type": "NodePort", "ports": [{"name": "http", "port": 80, "nodePort": 30080}]}),
            json!([{"addresses": ["10.42.0.7"], "conditions": {"ready": false}}]),
        );
        let out = render(&t, &cfg());
        assert!(out.contains("add element ip kedge-proxy no_endpoint_services { 10.43.0.10 . tcp . 80 : goto reject_chain }"), "{out}");
        assert!(out.contains(
            "add element ip kedge-proxy no_endpoint_node_ports { tcp . 30080 : goto reject_chain }"
        ));
        assert!(!out.contains("add element ip kedge-proxy service_ips"));
        assert!(!out.contains(" dnat to "));
        assert!(out.contains("reject_chain meta l4proto tcp reject with tcp reset"));
    }

    #[test]
    fn external_traffic_policy_local_keeps_sources_and_stays_on_the_node() {
        let t = web(
            json!({"type": "NodePort", "externalTrafficPolicy": "Local",
                           "ports": [{"name": "http", "port": 80, "nodePort": 30080}]}),
            two_eps(),
        );
        let out = render(&t, &cfg());
        let ext: Vec<&str> = out
            .lines()
            .filter(|l| l.starts_with("add rule ip kedge-proxy ext-"))
            .collect();
        assert!(
            !ext.iter()
                .any(|l| l.ends_with("ext-default/web/tcp/80 jump mark_for_masq")),
            "outside clients keep their address: {ext:?}"
        );
        assert!(
            ext.last().unwrap().ends_with("goto lcl-default/web/tcp/80"),
            "{ext:?}"
        );
        assert!(out.contains("add rule ip kedge-proxy lcl-default/web/tcp/80 numgen random mod 1 vmap { 0 : goto ep-default/web/tcp/80/10.42.0.7/8080 }"), "{out}");
        // Pods and the node itself still reach every endpoint.
        assert!(
            out.contains("ext-default/web/tcp/80 fib saddr type local goto svc-default/web/tcp/80")
        );
        // No endpoint on this node: outside clients are dropped.
        let mut other = cfg();
        other.node_name = "n3".into();
        let out = render(&t, &other);
        assert!(
            out.contains("add rule ip kedge-proxy ext-default/web/tcp/80 drop"),
            "{out}"
        );
        assert!(!out.contains("add chain ip kedge-proxy lcl-"));
    }

    #[test]
    fn internal_traffic_policy_local_sends_cluster_ip_to_local_endpoints_only() {
        let out = render(
            &web(json!({"internalTrafficPolicy": "Local"}), two_eps()),
            &cfg(),
        );
        assert!(
            out.contains(
                "add rule ip kedge-proxy cip-default/web/tcp/80 goto lcl-default/web/tcp/80"
            ),
            "{out}"
        );
        assert!(
            !out.contains("10.42.1.7"),
            "the other node's endpoint is unused: {out}"
        );
        let mut other = cfg();
        other.node_name = "n3".into();
        let out = render(
            &web(json!({"internalTrafficPolicy": "Local"}), two_eps()),
            &other,
        );
        assert!(
            out.contains("no_endpoint_services { 10.43.0.10 . tcp . 80 : goto reject_chain }"),
            "{out}"
        );
    }

    #[test]
    fn udp_and_multi_port_services_get_a_chain_per_port() {
        let t = ServiceTable::build(
            &[svc(
                "kube-system",
                "dns",
                json!({"clusterIP": "10.43.0.53", "ports": [
                {"name": "dns", "port": 53, "protocol": "UDP"}, {"name": "dns-tcp", "port": 53}]}),
            )],
            &[slice(
                "kube-system",
                "dns",
                json!([{"name": "dns", "port": 5353, "protocol": "UDP"}, {"name": "dns-tcp", "port": 5353}]),
                json!([{"addresses": ["10.42.0.9"]}]),
            )],
        );
        let out = render(&t, &cfg());
        assert!(
            out.contains("10.43.0.53 . tcp . 53 : goto cip-kube-system/dns/tcp/53"),
            "{out}"
        );
        assert!(
            out.contains("10.43.0.53 . udp . 53 : goto cip-kube-system/dns/udp/53"),
            "{out}"
        );
        assert!(out.contains("meta l4proto udp dnat to 10.42.0.9:5353"));
    }

    #[test]
    fn an_endpoint_change_updates_only_its_service() {
        let c = cfg();
        let old = Ruleset::build(&synthetic(50, 3), &c);
        let mut changed = synthetic(50, 3);
        let port = &mut changed.services[10].ports[0];
        port.endpoints[0].ip = Ipv4Addr::new(10, 42, 99, 99);
        let new = Ruleset::build(&changed, &c);
        let up = render_update(&old, &new);
        assert!(!up.contains("delete table"), "{up}");
        let key = format!("bench/{}/tcp/80", changed.services[10].name);
        for line in up.lines() {
            assert!(line.contains(&key), "touches another service: {line}");
        }
        assert!(
            up.contains(&format!(
                "add chain ip kedge-proxy ep-{key}/10.42.99.99/8080"
            )),
            "{up}"
        );
        assert!(
            up.contains(&format!("flush chain ip kedge-proxy svc-{key}")),
            "{up}"
        );
        assert!(
            up.lines()
                .any(|l| l.starts_with("delete chain ip kedge-proxy ep-")),
            "{up}"
        );
        assert_eq!(render_update(&new, &new), "", "no change, no commands");
    }

    #[test]
    fn an_affinity_timeout_change_replaces_the_sets() {
        let c = cfg();
        let a = Ruleset::build(&web(json!({"sessionAffinity": "ClientIP"}), two_eps()), &c);
        let b = Ruleset::build(
            &web(
                json!({"sessionAffinity": "ClientIP",
                        "sessionAffinityConfig": {"clientIP": {"timeoutSeconds": 30}}}),
                two_eps(),
            ),
            &c,
        );
        let up = render_update(&a, &b);
        assert!(up.contains("add set ip kedge-proxy aff-30-default/web/tcp/80/10.42.0.7/8080 { type ipv4_addr; flags dynamic,timeout; timeout 30s; }"), "{up}");
        assert!(
            up.contains("delete set ip kedge-proxy aff-10800-default/web/tcp/80/10.42.0.7/8080"),
            "{up}"
        );
        assert!(
            up.find("flush chain ip kedge-proxy svc-").unwrap() < up.find("delete set").unwrap()
        );
    }

    #[test]
    fn renders_a_thousand_services_quickly() {
        let t = synthetic(1000, 10);
        let start = std::time::Instant::now();
        let out = render(&t, &cfg());
        assert!(start.elapsed() < Duration::from_secs(5));
        assert_eq!(
            out.lines()
                .filter(|l| l.starts_with("add chain ip kedge-proxy ep-"))
                .count(),
            1000 * 10,
            "one chain per endpoint, shared by svc- and lcl-"
        );
    }

    fn nft_in(ns: &TestNetns, args: &[&str], script: &str) -> std::process::Output {
        let mut child = Command::new("ip")
            .args(["netns", "exec", &ns.0, "nft"])
            .args(args)
            .stdin(std::process::Stdio::piped())
            .stdout(std::process::Stdio::piped())
            .stderr(std::process::Stdio::piped())
            .spawn()
            .unwrap();
        child
            .stdin
            .take()
            .unwrap()
            .write_all(script.as_bytes())
            .unwrap();
        child.wait_with_output().unwrap()
    }

    #[test]
    fn kernel_accepts_a_thousand_service_ruleset_and_its_updates() {
        if let Some(why) = missing_root(&["ip", "nft"]) {
            eprintln!("skipping: {why}");
            return;
        }
        let ns = TestNetns::new("nftc");
        let c = cfg();
        let full = Ruleset::build(&synthetic(1000, 10), &c);
        let text = render_full(&full);
        // Check mode: the kernel validates the whole batch and commits nothing.
        let out = nft_in(&ns, &["-c", "-f", "-"], &text);
        assert!(
            out.status.success(),
            "{}",
            String::from_utf8_lossy(&out.stderr)
        );
        let out = nft_in(&ns, &["-f", "-"], &text);
        assert!(
            out.status.success(),
            "{}",
            String::from_utf8_lossy(&out.stderr)
        );
        let mut t2 = synthetic(1000, 10);
        t2.services[0].ports[0].endpoints.pop();
        t2.services.remove(500);
        t2.services[7].ports[0].endpoints[3].ip = Ipv4Addr::new(10, 42, 200, 1);
        let next = Ruleset::build(&t2, &c);
        let out = nft_in(&ns, &["-f", "-"], &render_update(&full, &next));
        assert!(
            out.status.success(),
            "{}",
            String::from_utf8_lossy(&out.stderr)
        );
        // What the kernel holds now equals a fresh install of the new table.
        let listed = nft_in(&ns, &["list", "table", "ip", TABLE], "");
        let got = String::from_utf8_lossy(&listed.stdout).into_owned();
        let ns2 = TestNetns::new("nftc2");
        assert!(
            nft_in(&ns2, &["-f", "-"], &render_full(&next))
                .status
                .success()
        );
        let want =
            String::from_utf8_lossy(&nft_in(&ns2, &["list", "table", "ip", TABLE], "").stdout)
                .into_owned();
        assert_eq!(got.len(), want.len(), "incremental and fresh tables differ");
        let mut a: Vec<&str> = got.lines().collect();
        let mut b: Vec<&str> = want.lines().collect();
        a.sort();
        b.sort();
        assert_eq!(a, b);
    }

    /// Env var that turns the test binary into a helper process inside a namespace.
    const ROLE: &str = "KEDGE_NET_E2E_ROLE";

    /// Not a test: the "pod" server and the client of the end-to-end test, run by re-executing
    /// this test binary under `ip netns exec` (ignored, and a no-op without the env var).
    #[test]
    #[ignore = "helper process for nft_end_to_end_in_network_namespaces"]
    fn e2e_helper_process() {
        let Ok(role) = std::env::var(ROLE) else {
            return;
        };
        let mut parts = role.split(',');
        match (parts.next(), parts.next(), parts.next()) {
            (Some("serve"), Some(addr), Some(ident)) => {
                // Never outlive the test that started us.
                std::thread::spawn(|| {
                    std::thread::sleep(Duration::from_secs(120));
                    std::process::exit(0);
                });
                let l = TcpListener::bind(addr).unwrap();
                println!("READY");
                std::io::stdout().flush().unwrap();
                // Each answer names the pod and the source it saw: masquerade shows.
                for mut c in l.incoming().take(10_000).flatten() {
                    let peer = c
                        .peer_addr()
                        .map(|a| a.ip().to_string())
                        .unwrap_or_default();
                    let _ = writeln!(c, "{ident} {peer}");
                }
            }
            (Some("connect"), Some(addr), Some(count)) => {
                let addr: SocketAddr = addr.parse().unwrap();
                for _ in 0..count.parse::<usize>().unwrap().min(100) {
                    match TcpStream::connect_timeout(&addr, Duration::from_secs(2)) {
                        Ok(mut s) => {
                            s.set_read_timeout(Some(Duration::from_secs(2))).unwrap();
                            let mut got = String::new();
                            let _ = s.read_to_string(&mut got);
                            println!("GOT {}", got.trim());
                        }
                        Err(e) => println!("ERR {}", e.kind()),
                    }
                }
            }
            _ => panic!("bad {ROLE}: {role}"),
        }
    }

    fn helper(ns: &TestNetns, role: &str) -> Command {
        let mut c = Command::new("ip");
        c.args(["netns", "exec", &ns.0])
            .arg(std::env::current_exe().unwrap())
            .args([
                "nft::tests::e2e_helper_process",
                "--exact",
                "--ignored",
                "--nocapture",
                "--test-threads=1",
            ])
            .env(ROLE, role)
            .stdout(std::process::Stdio::piped())
            .stderr(std::process::Stdio::null());
        c
    }

    /// A helper server; killed (by its own pid) when dropped.
    pub(crate) struct Server(pub(crate) Child);
    impl Drop for Server {
        fn drop(&mut self) {
            let _ = self.0.kill();
            let _ = self.0.wait();
        }
    }

    pub(crate) fn serve(ns: &TestNetns, addr: &str, ident: &str) -> Server {
        let mut child = Server(
            helper(ns, &format!("serve,{addr},{ident}"))
                .spawn()
                .unwrap(),
        );
        let out = child.0.stdout.take().unwrap();
        let ready = BufReader::new(out)
            .lines()
            .map_while(|l| l.ok())
            .any(|l| l.ends_with("READY"));
        assert!(ready, "server {ident} did not start");
        child
    }

    /// The pod names of `connect` answers (their first word).
    pub(crate) fn who(answers: &[String]) -> Vec<String> {
        answers
            .iter()
            .map(|a| a.split_whitespace().next().unwrap_or("").to_string())
            .collect()
    }

    /// `count` connections to `addr` from inside `ns`: "<pod> <source it saw>" or "ERR …".
    pub(crate) fn connect(ns: &TestNetns, addr: &str, count: usize) -> Vec<String> {
        let out = helper(ns, &format!("connect,{addr},{count}"))
            .output()
            .unwrap();
        String::from_utf8_lossy(&out.stdout)
            .lines()
            // libtest prints "test … " before our first line, so look inside lines.
            .filter_map(|l| match (l.find("GOT "), l.find("ERR ")) {
                (Some(i), _) => Some(l[i + 4..].to_string()),
                (None, Some(i)) => Some(l[i..].to_string()),
                _ => None,
            })
            .collect()
    }

    #[test]
    fn nft_end_to_end_in_network_namespaces() {
        if let Some(why) = missing_root(&["ip", "nft"]) {
            eprintln!("skipping: {why}");
            return;
        }
        // client 192.168.77.2 ── 192.168.77.1 node 10.42.1.1 ── 10.42.1.2 pod1
        //                                        10.42.2.1 ── 10.42.2.2 pod2
        let node = TestNetns::new("node");
        let client = TestNetns::new("cli");
        let pod1 = TestNetns::new("pod1");
        let pod2 = TestNetns::new("pod2");
        for (peer, inside, outside, net) in [
            (&client, "c0", "192.168.77.2/24", "192.168.77"),
            (&pod1, "p1", "10.42.1.2/24", "10.42.1"),
            (&pod2, "p2", "10.42.2.2/24", "10.42.2"),
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
        // Node processes need a route to ClusterIPs before output DNAT rewrites them.
        node.ip(&["route", "add", "10.43.0.0/16", "dev", "c0"]);
        node.exec(&["sysctl", "-qw", "net.ipv4.ip_forward=1"]);
        let _s1 = serve(&pod1, "0.0.0.0:8080", "pod1");
        let _s2 = serve(&pod2, "0.0.0.0:8080", "pod2");

        let eps = json!([{"addresses": ["10.42.1.2"], "nodeName": "n1"}, {"addresses": ["10.42.2.2"], "nodeName": "n1"}]);
        let port = json!([{"name": "http", "port": 8080}]);
        let table = ServiceTable::build(
            &[
                svc(
                    "d",
                    "web",
                    json!({"type": "NodePort", "clusterIP": "10.43.0.10", "ports": [{"name": "http", "port": 80, "nodePort": 30080}]}),
                ),
                svc(
                    "d",
                    "sticky",
                    json!({"clusterIP": "10.43.0.11", "ports": [{"name": "http", "port": 80}], "sessionAffinity": "ClientIP"}),
                ),
                svc(
                    "d",
                    "empty",
                    json!({"clusterIP": "10.43.0.12", "ports": [{"name": "http", "port": 80}]}),
                ),
                svc(
                    "d",
                    "local",
                    json!({"type": "NodePort", "clusterIP": "10.43.0.14", "externalTrafficPolicy": "Local",
                           "ports": [{"name": "http", "port": 80, "nodePort": 30081}]}),
                ),
                svc(
                    "d",
                    "self",
                    json!({"clusterIP": "10.43.0.13", "ports": [{"name": "http", "port": 80}]}),
                ),
            ],
            &[
                slice("d", "web", port.clone(), eps.clone()),
                slice("d", "sticky", port.clone(), eps),
                slice(
                    "d",
                    "local",
                    port.clone(),
                    json!([{"addresses": ["10.42.1.2"], "nodeName": "n1"}, {"addresses": ["10.42.2.2"], "nodeName": "n2"}]),
                ),
                slice(
                    "d",
                    "self",
                    port,
                    json!([{"addresses": ["10.42.1.2"], "nodeName": "n1"}]),
                ),
            ],
        );
        let c = ProxyConfig {
            node_name: "n1".into(),
            node_ips: vec![Ipv4Addr::new(192, 168, 77, 1)],
            cluster_cidr: (Ipv4Addr::new(10, 42, 0, 0), 16),
            service_lb: false,
        };
        let proxy = NftProxy::in_netns(c, &node.0);
        let rt = tokio::runtime::Builder::new_current_thread()
            .enable_all()
            .build()
            .unwrap();
        let stats = rt.block_on(proxy.sync(&table)).unwrap();
        assert_eq!(stats.service_ports, 5, "{stats:?}");

        let from_node = who(&connect(&node, "10.43.0.10:80", 1));
        assert!(
            matches!(from_node[0].as_str(), "pod1" | "pod2"),
            "ClusterIP from the node: {from_node:?}"
        );

        let via_node_port = who(&connect(&client, "192.168.77.1:30080", 20));
        assert!(
            via_node_port.contains(&"pod1".to_string())
                && via_node_port.contains(&"pod2".to_string()),
            "NodePort spreads: {via_node_port:?}"
        );

        let answers = connect(&client, "10.43.0.10:80", 20);
        let spread = who(&answers);
        assert!(
            spread.contains(&"pod1".to_string()) && spread.contains(&"pod2".to_string()),
            "ClusterIP spreads: {spread:?}"
        );
        assert!(
            answers
                .iter()
                .all(|a| a == "pod1 10.42.1.1" || a == "pod2 10.42.2.1"),
            "a client outside the cluster CIDR is masqueraded: {answers:?}"
        );

        let pinned = who(&connect(&client, "10.43.0.11:80", 10));
        assert_eq!(pinned.len(), 10);
        assert!(
            pinned.iter().all(|p| p == &pinned[0]) && pinned[0].starts_with("pod"),
            "affinity pins: {pinned:?}"
        );

        let local = connect(&client, "192.168.77.1:30081", 10);
        assert!(
            local.iter().all(|a| a == "pod1 192.168.77.2"),
            "externalTrafficPolicy Local: this node's endpoint only, client address kept: {local:?}"
        );
        let hairpin = connect(&pod1, "10.43.0.13:80", 1);
        assert_eq!(
            hairpin,
            vec!["pod1 10.42.1.1".to_string()],
            "hairpin is masqueraded"
        );
        let pod_to_pod = connect(&pod2, "10.43.0.13:80", 1);
        assert_eq!(
            pod_to_pod,
            vec!["pod1 10.42.2.2".to_string()],
            "pod sources are kept"
        );

        let refused = connect(&client, "10.43.0.12:80", 1);
        assert_eq!(
            refused,
            vec!["ERR connection refused".to_string()],
            "no endpoints: reset"
        );

        // An incremental sync that drops pod2 from web: every connection lands on pod1.
        let only1 = json!([{"addresses": ["10.42.1.2"], "nodeName": "n1"}]);
        let table2 = ServiceTable::build(
            &[svc(
                "d",
                "web",
                json!({"type": "NodePort", "clusterIP": "10.43.0.10", "ports": [{"name": "http", "port": 80, "nodePort": 30080}]}),
            )],
            &[slice(
                "d",
                "web",
                json!([{"name": "http", "port": 8080}]),
                only1,
            )],
        );
        rt.block_on(proxy.sync(&table2)).unwrap();
        let after = who(&connect(&client, "10.43.0.10:80", 10));
        assert!(after.iter().all(|p| p == "pod1"), "{after:?}");
        let gone = connect(&client, "10.43.0.11:80", 1);
        assert!(gone[0].starts_with("ERR"), "removed service: {gone:?}");

        rt.block_on(proxy.shutdown());
        let listed = Command::new("ip")
            .args(["netns", "exec", &node.0, "nft", "list", "tables"])
            .output()
            .unwrap();
        assert!(
            !String::from_utf8_lossy(&listed.stdout).contains(TABLE),
            "shutdown removes the table"
        );
    }
}
