//! Node-pressure eviction, as kubelet's eviction manager does it with its hard thresholds:
//! every 10 s the agent compares `memory.available` and `nodefs.available` with them; while
//! one is crossed it evicts one pod per round, the one kubelet would pick — first pods using
//! more than they requested, then the one using most above its request (memory: the memory
//! cgroup of OCI containers, the linear memory of Wasm ones; disk: the pod's logs and
//! emptyDir volumes). An evicted pod's containers are stopped and the pod fails with
//! `reason: Evicted`, kubelet's message, a `DisruptionTarget` condition and an `Evicted`
//! Event; its controller replaces it elsewhere.

use std::collections::HashMap;
use std::path::Path;
use std::sync::Arc;
use std::time::Duration;

use kedge_core::{meta, quantity};
use serde_json::Value;
use tokio_util::sync::CancellationToken;

use super::{Ctx, Shared};

/// How often the agent looks (kubelet's housekeeping interval).
const EVERY: Duration = Duration::from_secs(10);

/// Hard eviction thresholds (`--eviction-hard`, kubelet's syntax). The defaults are
/// kubelet's for memory (100 MiB) and an absolute 1 GiB for the node's filesystem instead of
/// kubelet's 10 %: on a gateway whose data dir shares the root filesystem, or a developer's
/// machine, 10 % of a big disk is tens of gigabytes held back, and every pod would be evicted
/// while plenty is left; on a small edge disk 1 GiB is about kubelet's share.
#[derive(Clone, Debug, PartialEq)]
pub struct Thresholds {
    /// `memory.available` below this many bytes.
    pub memory_bytes: Option<u64>,
    /// `nodefs.available` below this fraction of the agent's data filesystem (or bytes).
    pub nodefs: Option<Amount>,
}

#[derive(Clone, Copy, Debug, PartialEq)]
pub enum Amount {
    Bytes(u64),
    Fraction(f64),
}

impl Default for Thresholds {
    /// `memory.available<100Mi,nodefs.available<1Gi`.
    fn default() -> Self {
        Thresholds {
            memory_bytes: Some(100 << 20),
            nodefs: Some(Amount::Bytes(1 << 30)),
        }
    }
}

impl std::str::FromStr for Thresholds {
    type Err = String;

    /// `memory.available<100Mi,nodefs.available<10%` (signals kubelet has and kedge senses).
    fn from_str(s: &str) -> Result<Self, String> {
        let mut t = Thresholds {
            memory_bytes: None,
            nodefs: None,
        };
        for part in s.split(',').map(str::trim).filter(|p| !p.is_empty()) {
            let (signal, value) = part
                .split_once('<')
                .ok_or_else(|| format!("{part:?}: expected SIGNAL<QUANTITY"))?;
            let amount = match value.strip_suffix('%') {
                Some(p) => {
                    let p: f64 = p.parse().map_err(|_| format!("{part:?}: bad percentage"))?;
                    if !(0.0..=100.0).contains(&p) {
                        return Err(format!("{part:?}: a percentage is 0 to 100"));
                    }
                    Amount::Fraction(p / 100.0)
                }
                None => Amount::Bytes(
                    quantity::parse_bytes(value).map_err(|e| format!("{part:?}: {e}"))?,
                ),
            };
            match signal {
                "memory.available" => {
                    t.memory_bytes = Some(match amount {
                        Amount::Bytes(b) => b,
                        Amount::Fraction(f) => (f * super::node::mem_total_bytes() as f64) as u64,
                    })
                }
                "nodefs.available" => t.nodefs = Some(amount),
                other => {
                    return Err(format!(
                        "{other:?}: kedge evicts on memory.available and nodefs.available"
                    ));
                }
            }
        }
        Ok(t)
    }
}

/// A resource the node runs short of.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub(crate) enum Starved {
    Memory,
    Disk,
}

impl Starved {
    fn word(self) -> &'static str {
        match self {
            Starved::Memory => "memory",
            Starved::Disk => "ephemeral-storage",
        }
    }
}

/// A crossed threshold: what, the threshold's text, and what is available.
#[derive(Clone, Debug, PartialEq)]
pub(crate) struct Signal {
    pub starved: Starved,
    pub threshold: String,
    pub available: u64,
}

/// What the node has left, against the thresholds (what crosses one: memory first).
pub(crate) fn observe(t: &Thresholds, data_dir: &Path) -> Option<Signal> {
    observe_all(t, data_dir).into_iter().next()
}

/// Every crossed threshold.
pub(crate) fn observe_all(t: &Thresholds, data_dir: &Path) -> Vec<Signal> {
    let mut out = Vec::new();
    out.extend(observe_memory(t));
    out.extend(observe_disk(t, data_dir));
    out
}

fn observe_memory(t: &Thresholds) -> Option<Signal> {
    if let (Some(limit), Some(avail)) = (t.memory_bytes, super::node::mem_available_bytes())
        && avail < limit
    {
        return Some(Signal {
            starved: Starved::Memory,
            threshold: bytes_text(limit),
            available: avail,
        });
    }
    None
}

fn observe_disk(t: &Thresholds, data_dir: &Path) -> Option<Signal> {
    let st = rustix::fs::statvfs(data_dir).ok()?;
    let avail = st.f_bavail * st.f_frsize;
    let total = st.f_blocks * st.f_frsize;
    let (limit, text) = match t.nodefs? {
        Amount::Bytes(b) => (b, bytes_text(b)),
        Amount::Fraction(f) => ((f * total as f64) as u64, format!("{}%", f * 100.0)),
    };
    (avail < limit).then_some(Signal {
        starved: Starved::Disk,
        threshold: text,
        available: avail,
    })
}

/// Bytes as kubelet prints quantities in these messages (`Ki`).
fn bytes_text(b: u64) -> String {
    format!("{}Ki", b / 1024)
}

/// A pod the agent may evict: registered for as long as its containers run.
pub(crate) struct Evictable {
    pub pod: Value,
    /// Cancelled to evict it; `why` says why.
    pub evict: CancellationToken,
    pub why: std::sync::Mutex<Option<String>>,
}

/// One candidate's standing: its usage and request of the starved resource, per container.
#[derive(Clone, Debug, PartialEq)]
pub(crate) struct Standing {
    pub uid: String,
    /// (container, usage, request) in bytes.
    pub containers: Vec<(String, u64, u64)>,
}

impl Standing {
    fn usage(&self) -> u64 {
        self.containers.iter().map(|c| c.1).sum()
    }

    fn request(&self) -> u64 {
        self.containers.iter().map(|c| c.2).sum()
    }

    fn exceeds(&self) -> bool {
        self.usage() > self.request()
    }
}

/// kubelet's order for picking whom to evict: pods using more than they requested first,
/// then by how far usage is above the request (all pods have the same priority on kedge).
pub(crate) fn pick(standings: &[Standing]) -> Option<&Standing> {
    standings.iter().max_by(|a, b| {
        let over = |s: &Standing| s.usage() as i128 - s.request() as i128;
        a.exceeds()
            .cmp(&b.exceeds())
            .then(over(a).cmp(&over(b)))
            // Deterministic among equals.
            .then(b.uid.cmp(&a.uid))
    })
}

/// kubelet's message for an evicted pod.
pub(crate) fn message(signal: &Signal, s: &Standing) -> String {
    let word = signal.starved.word();
    let mut m = format!(
        "The node was low on resource: {word}. Threshold quantity: {}, available: {}. ",
        signal.threshold,
        bytes_text(signal.available)
    );
    for (name, usage, request) in &s.containers {
        if usage > request {
            m.push_str(&format!(
                "Container {name} was using {}, request is {}, has larger consumption of {word}. ",
                bytes_text(*usage),
                if *request == 0 {
                    "0".to_string()
                } else {
                    bytes_text(*request)
                }
            ));
        }
    }
    m
}

fn request_of(c: &Value, starved: Starved) -> u64 {
    let key = match starved {
        Starved::Memory => "memory",
        Starved::Disk => "ephemeral-storage",
    };
    c.pointer(&format!("/resources/requests/{key}"))
        .and_then(Value::as_str)
        .and_then(|q| quantity::parse_bytes(q).ok())
        .unwrap_or(0)
}

/// Bytes under `dir`, not following links.
fn disk_usage(dir: &Path) -> u64 {
    let mut total = 0;
    let mut stack = vec![dir.to_path_buf()];
    while let Some(d) = stack.pop() {
        let Ok(entries) = std::fs::read_dir(&d) else {
            continue;
        };
        for e in entries.flatten() {
            let Ok(md) = e.metadata() else { continue };
            if md.is_dir() {
                stack.push(e.path());
            } else if md.is_file() {
                total += md.len();
            }
        }
    }
    total
}

/// The standing of every evictable pod on the starved resource.
fn standings(ctx: &Shared, starved: Starved) -> Vec<Standing> {
    let pods: Vec<Arc<Evictable>> = ctx
        .evictable
        .lock()
        .unwrap_or_else(|p| p.into_inner())
        .values()
        .cloned()
        .collect();
    let logs = ctx.logs.lock().unwrap_or_else(|p| p.into_inner()).clone();
    pods.iter()
        .map(|e| {
            let pod = &e.pod;
            let (ns, name, uid) = (meta::namespace(pod), meta::name(pod), meta::uid(pod));
            let containers = pod
                .pointer("/spec/containers")
                .and_then(Value::as_array)
                .into_iter()
                .flatten();
            let mut out: Vec<(String, u64, u64)> = containers
                .map(|c| {
                    let cname = c["name"].as_str().unwrap_or_default().to_string();
                    let usage = match starved {
                        Starved::Memory => logs
                            .get(&(ns.to_string(), name.to_string(), cname.clone()))
                            .filter(|h| h.uid == uid)
                            .map_or(0, |h| memory_of(ctx, h)),
                        Starved::Disk => 0,
                    };
                    (cname, usage, request_of(c, starved))
                })
                .collect();
            if starved == Starved::Disk {
                // The pod's logs and emptyDir volumes, counted for its first container.
                let used = disk_usage(&super::pods::pod_dirs(ctx, pod).disk);
                if let Some(first) = out.first_mut() {
                    first.1 = used;
                }
            }
            Standing {
                uid: uid.to_string(),
                containers: out,
            }
        })
        .collect()
}

fn memory_of(ctx: &Shared, h: &super::LogHandle) -> u64 {
    if let Some(g) = &h.memory {
        return g.load(std::sync::atomic::Ordering::Relaxed);
    }
    match (&h.runc_id, &ctx.oci) {
        (Some(id), Some(oci)) => oci.memory_usage(id).unwrap_or(0),
        _ => 0,
    }
}

/// Evicts one pod per round while a threshold is crossed.
pub(crate) async fn eviction_loop(ctx: Ctx, thresholds: Thresholds, cancel: CancellationToken) {
    loop {
        tokio::select! {
            _ = cancel.cancelled() => return,
            _ = tokio::time::sleep(EVERY) => {}
        }
        let (t, dir) = (thresholds.clone(), ctx.data_dir.clone());
        let Ok(Some(signal)) = tokio::task::spawn_blocking(move || observe(&t, &dir)).await else {
            continue;
        };
        let c = ctx.clone();
        let starved = signal.starved;
        let Ok(standings) = tokio::task::spawn_blocking(move || standings(&c, starved)).await
        else {
            continue;
        };
        let Some(victim) = pick(&standings) else {
            continue;
        };
        let why = message(&signal, victim);
        let target = ctx
            .evictable
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .get(&victim.uid)
            .cloned();
        if let Some(e) = target {
            tracing::warn!(pod = %meta::name(&e.pod), %why, "evicting a pod: the node is under pressure");
            *e.why.lock().unwrap_or_else(|p| p.into_inner()) = Some(why);
            e.evict.cancel();
        }
    }
}

/// The pods the agent may evict, by uid.
pub(crate) type Registry = std::sync::Mutex<HashMap<String, Arc<Evictable>>>;

#[cfg(test)]
mod tests {
    use super::*;

    fn s(uid: &str, containers: &[(u64, u64)]) -> Standing {
        Standing {
            uid: uid.into(),
            containers: containers
                .iter()
                .enumerate()
                .map(|(i, (u, r))| (format!("c{i}"), *u, *r))
                .collect(),
        }
    }

    #[test]
    fn thresholds_parse_as_kubelet_flags() {
        let t: Thresholds = "memory.available<200Mi,nodefs.available<5%"
            .parse()
            .unwrap();
        assert_eq!(t.memory_bytes, Some(200 << 20));
        assert_eq!(t.nodefs, Some(Amount::Fraction(0.05)));
        let t: Thresholds = "nodefs.available<1Gi".parse().unwrap();
        assert_eq!(
            (t.memory_bytes, t.nodefs),
            (None, Some(Amount::Bytes(1 << 30)))
        );
        assert!("imagefs.available<10%".parse::<Thresholds>().is_err());
        assert!("memory.available>1Mi".parse::<Thresholds>().is_err());
        assert!("nodefs.available<120%".parse::<Thresholds>().is_err());
        assert_eq!(Thresholds::default().memory_bytes, Some(100 << 20));
    }

    /// kubelet's ranking: over-request first (BestEffort using anything is over its request
    /// of 0), then by usage above request.
    #[test]
    fn the_pod_most_over_its_request_goes_first() {
        let guaranteed = s("guaranteed", &[(90 << 20, 100 << 20)]);
        let burstable_over = s("burstable", &[(60 << 20, 50 << 20)]);
        let best_effort = s("besteffort", &[(20 << 20, 0)]);
        let all = [
            guaranteed.clone(),
            burstable_over.clone(),
            best_effort.clone(),
        ];
        assert_eq!(
            pick(&all).unwrap().uid,
            "besteffort",
            "20Mi over beats 10Mi over"
        );
        let all = [guaranteed.clone(), burstable_over.clone()];
        assert_eq!(pick(&all).unwrap().uid, "burstable");
        assert_eq!(pick(&[guaranteed]).unwrap().uid, "guaranteed");
        assert!(pick(&[]).is_none());
    }

    #[test]
    fn messages_read_as_kubelet_writes_them() {
        let signal = Signal {
            starved: Starved::Memory,
            threshold: "100Mi".into(),
            available: 81232 * 1024,
        };
        let m = message(&signal, &s("p", &[(12000 * 1024, 0), (1024, 4096)]));
        assert_eq!(
            m,
            "The node was low on resource: memory. Threshold quantity: 100Mi, available: \
             81232Ki. Container c0 was using 12000Ki, request is 0, has larger consumption of \
             memory. "
        );
    }
}
