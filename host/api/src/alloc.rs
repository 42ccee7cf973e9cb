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
//! IP rarely collides with a dynamically allocated one.

use std::collections::HashSet;
use std::net::Ipv4Addr;
use std::sync::{Mutex, MutexGuard};

use serde_json::{Value, json};

use super::error::Cause;
use kedge_core::meta;
use kedge_store::{self as store, Store};

/// The service CIDR (K3s's default).
pub(crate) const SERVICE_CIDR: (Ipv4Addr, u8) = (Ipv4Addr::new(10, 43, 0, 0), 16);
/// The first IP of the range goes to the `kubernetes` Service, as in every cluster.
pub const KUBERNETES_SERVICE_IP: Ipv4Addr = Ipv4Addr::new(10, 43, 0, 1);
pub(crate) const NODE_PORT_MIN: u16 = 30000;
pub(crate) const NODE_PORT_MAX: u16 = 32767;

/// kube-apiserver's static band: min(max(16, size/16), 256) IPs, min(max(16, size/16), 128)
/// ports.
const IP_STATIC_BAND: u32 = 256;
const PORT_STATIC_BAND: u16 = 128;

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
    let free = |o: u32| !used.ips.contains(&Ipv4Addr::from(base + o));
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

/// Serialises Service allocations (see the module documentation).
#[derive(Debug, Default)]
pub(crate) struct Allocator {
    lock: Mutex<()>,
}

impl Allocator {
    /// Assigns IPs and ports to the Service `svc` (named `ns/name`); returns the guard to hold
    /// until the object is stored. Invalid requests come back as 422 causes.
    pub fn service<'a>(
        &'a self,
        store: &dyn Store,
        ns: &str,
        name: &str,
        svc: &mut Value,
    ) -> Result<Result<MutexGuard<'a, ()>, Vec<Cause>>, store::Error> {
        let guard = self.lock.lock().unwrap_or_else(|p| p.into_inner());
        let (all, _) = store.list(&store::prefix("", "services", ""))?;
        let used = used_by(&all, ns, name);
        let seed = rand::random::<u32>();
        Ok(assign(svc, &used, seed).map(|()| guard))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn svc(ns: &str, name: &str, spec: Value) -> Value {
        json!({"metadata": {"namespace": ns, "name": name}, "spec": spec})
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
}
