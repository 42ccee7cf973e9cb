//! Resource usage of the node and its containers, for `metrics.k8s.io` (`kubectl top`), as
//! kubelet's summary feeds metrics-server.
//!
//! Every `--metric-resolution-seconds` (15 s, metrics-server's resolution) the agent reads
//! cumulative counters:
//! - OCI containers: their cgroup's CPU time (v1 `cpuacct.usage`, v2 `cpu.stat` `usage_usec`)
//!   and memory working set (usage less inactive file cache, as cAdvisor computes it);
//! - Wasm containers: the CPU time of the threads while they ran the guest (see
//!   `kedge_runtime::wasm`'s CPU gauge) and the guest's linear memory;
//! - the node: busy time from `/proc/stat` and working set `MemTotal - MemAvailable`.
//!
//! Two consecutive rounds give rates: CPU nanoseconds over the window between them, per
//! second, in nanocores (what metrics-server computes from kubelet's two cumulative
//! samples). A container seen for the first time, or restarted since (a new run starts its
//! counters again), has no rate yet; a pod is reported once all its running containers have
//! one. The round's report is sent to the server on the tunnel (`PUT
//! /api/v1/nodes/<node>/usage`, see kedge-api's `resource_metrics`); a failed send is
//! dropped, the next round's replaces it.

use std::collections::HashMap;
use std::sync::atomic::Ordering;
use std::time::Duration;

use serde_json::{Value, json};
use tokio::time::Instant;
use tokio_util::sync::CancellationToken;

use kedge_core::meta;

use super::{Ctx, Shared};

/// metrics-server's default `--metric-resolution`.
pub const DEFAULT_INTERVAL: Duration = Duration::from_secs(15);

/// Which run of which container: `(pod uid, container, restart count)`. Counters start
/// again with each run.
type RunKey = (String, String, u32);

/// One container's cumulative counters.
#[derive(Clone, Copy, Debug, PartialEq)]
pub(crate) struct Counters {
    pub cpu_ns: u64,
    pub memory_bytes: u64,
}

#[derive(Clone, Debug, PartialEq)]
pub(crate) struct ContainerReading {
    pub name: String,
    pub run: u32,
    pub counters: Counters,
}

#[derive(Clone, Debug, PartialEq)]
pub(crate) struct PodReading {
    pub namespace: String,
    pub name: String,
    pub uid: String,
    pub containers: Vec<ContainerReading>,
}

/// What one sampling round read.
#[derive(Clone, Debug)]
pub(crate) struct Round {
    pub taken: Instant,
    pub timestamp: chrono::DateTime<chrono::Utc>,
    pub node: Counters,
    pub pods: Vec<PodReading>,
}

impl Round {
    fn runs(&self) -> HashMap<RunKey, Counters> {
        self.pods
            .iter()
            .flat_map(|p| {
                p.containers
                    .iter()
                    .map(|c| ((p.uid.clone(), c.name.clone(), c.run), c.counters))
            })
            .collect()
    }
}

/// CPU nanoseconds used between two cumulative readings, per second of `window`: nanocores.
/// `None` when the counter went back (a reset) or the window is empty.
pub(crate) fn nanocores(before_ns: u64, after_ns: u64, window: Duration) -> Option<u64> {
    let used = after_ns.checked_sub(before_ns)?;
    let window = window.as_nanos();
    if window == 0 {
        return None;
    }
    Some((used as u128 * 1_000_000_000 / window) as u64)
}

/// The report of `cur` against the round before it (the body of `PUT .../usage`).
pub(crate) fn report(prev: &Round, cur: &Round, interval: Duration) -> Option<Value> {
    let window = cur.taken.checked_duration_since(prev.taken)?;
    let node_cpu = nanocores(prev.node.cpu_ns, cur.node.cpu_ns, window)?;
    let before = prev.runs();
    let pods: Vec<Value> = cur
        .pods
        .iter()
        .filter_map(|p| {
            let containers: Option<Vec<Value>> = p
                .containers
                .iter()
                .map(|c| {
                    let old = before.get(&(p.uid.clone(), c.name.clone(), c.run))?;
                    let cpu = nanocores(old.cpu_ns, c.counters.cpu_ns, window)?;
                    Some(json!({"name": c.name, "cpuNanoCores": cpu,
                        "memoryBytes": c.counters.memory_bytes}))
                })
                .collect();
            let containers = containers.filter(|c| !c.is_empty())?;
            Some(
                json!({"namespace": p.namespace, "name": p.name, "uid": p.uid,
                "containers": containers}),
            )
        })
        .collect();
    Some(json!({
        "timestamp": cur.timestamp.to_rfc3339_opts(chrono::SecondsFormat::Millis, true),
        "windowSeconds": window.as_secs_f64(),
        "intervalSeconds": interval.as_secs_f64(),
        "node": {"cpuNanoCores": node_cpu, "memoryBytes": cur.node.memory_bytes},
        "pods": pods,
    }))
}

/// Busy CPU time of the node from `/proc/stat`'s `cpu` line, in nanoseconds: user, nice,
/// system, irq, softirq and steal (guest time is inside user already; idle and iowait are
/// not busy), counted in `ticks_per_second` (USER_HZ).
pub(crate) fn proc_stat_busy_ns(stat: &str, ticks_per_second: u64) -> Option<u64> {
    let line = stat.lines().find(|l| l.starts_with("cpu "))?;
    let f: Vec<u64> = line
        .split_whitespace()
        .skip(1)
        .map(|v| v.parse().ok())
        .collect::<Option<_>>()?;
    let at = |i: usize| f.get(i).copied().unwrap_or(0);
    // user nice system idle iowait irq softirq steal
    let ticks = at(0) + at(1) + at(2) + at(5) + at(6) + at(7);
    Some((ticks as u128 * 1_000_000_000 / ticks_per_second.max(1) as u128) as u64)
}

/// The node's working set from `/proc/meminfo`: `MemTotal - MemAvailable` (kubelet's
/// `memory.available` is the complement).
pub(crate) fn meminfo_working_set(meminfo: &str) -> Option<u64> {
    let kb = |key: &str| {
        meminfo
            .lines()
            .find(|l| l.starts_with(key))
            .and_then(|l| l.split_whitespace().nth(1))
            .and_then(|v| v.parse::<u64>().ok())
    };
    Some(kb("MemTotal:")?.saturating_sub(kb("MemAvailable:")?) * 1024)
}

/// A `key value` line of a cgroup stat file.
fn stat_value(text: &str, key: &str) -> Option<u64> {
    text.lines().find_map(|l| {
        let (k, v) = l.split_once(' ')?;
        (k == key).then(|| v.trim().parse().ok())?
    })
}

/// CPU nanoseconds from cgroup v1's `cpuacct.usage` or v2's `cpu.stat` (`usage_usec`).
pub(crate) fn cgroup_cpu_ns(text: &str, v2: bool) -> Option<u64> {
    if v2 {
        stat_value(text, "usage_usec").map(|us| us.saturating_mul(1000))
    } else {
        text.trim().parse().ok()
    }
}

/// The working set as cAdvisor computes it: usage less inactive file pages (v1:
/// `memory.usage_in_bytes` and `total_inactive_file`; v2: `memory.current` and
/// `inactive_file`), never below zero.
pub(crate) fn cgroup_working_set(usage: &str, stat: &str, v2: bool) -> Option<u64> {
    let usage: u64 = usage.trim().parse().ok()?;
    let key = if v2 {
        "inactive_file"
    } else {
        "total_inactive_file"
    };
    Some(usage.saturating_sub(stat_value(stat, key).unwrap_or(0)))
}

/// An OCI container's counters, read from its cgroup.
fn oci_counters(dirs: &kedge_runtime::oci::CgroupDirs) -> Option<Counters> {
    let read = |p: std::path::PathBuf| std::fs::read_to_string(p).ok();
    let (cpu_file, usage_file) = if dirs.v2 {
        ("cpu.stat", "memory.current")
    } else {
        ("cpuacct.usage", "memory.usage_in_bytes")
    };
    let cpu_ns = cgroup_cpu_ns(&read(dirs.cpu.join(cpu_file))?, dirs.v2)?;
    let memory_bytes = cgroup_working_set(
        &read(dirs.memory.join(usage_file))?,
        &read(dirs.memory.join("memory.stat")).unwrap_or_default(),
        dirs.v2,
    )?;
    Some(Counters {
        cpu_ns,
        memory_bytes,
    })
}

/// The node's counters.
fn node_counters() -> Option<Counters> {
    let stat = std::fs::read_to_string("/proc/stat").ok()?;
    let meminfo = std::fs::read_to_string("/proc/meminfo").ok()?;
    Some(Counters {
        cpu_ns: proc_stat_busy_ns(&stat, rustix::param::clock_ticks_per_second())?,
        memory_bytes: meminfo_working_set(&meminfo)?,
    })
}

/// Reads every running container of the pods this node runs now.
pub(crate) fn read_round(ctx: &Shared, taken: Instant) -> Option<Round> {
    let timestamp = (ctx.clock)();
    let node = node_counters()?;
    let pods: Vec<Value> = ctx
        .evictable
        .lock()
        .unwrap_or_else(|p| p.into_inner())
        .values()
        .map(|e| e.pod.clone())
        .collect();
    let logs = ctx.logs.lock().unwrap_or_else(|p| p.into_inner()).clone();
    let mut out = Vec::with_capacity(pods.len());
    for pod in &pods {
        let (ns, name, uid) = (meta::namespace(pod), meta::name(pod), meta::uid(pod));
        let mut containers = Vec::new();
        // The app containers and the sidecars (restartable init containers, which run beside
        // them and which the HPA counts, as kube's does); other init containers are done.
        let sidecars = pod
            .pointer("/spec/initContainers")
            .and_then(Value::as_array)
            .into_iter()
            .flatten()
            .filter(|c| c["restartPolicy"] == "Always");
        for c in sidecars.chain(
            pod.pointer("/spec/containers")
                .and_then(Value::as_array)
                .into_iter()
                .flatten(),
        ) {
            let cname = c["name"].as_str().unwrap_or_default();
            let Some(h) = logs
                .get(&(ns.to_string(), name.to_string(), cname.to_string()))
                .filter(|h| h.uid == uid && !*h.done.borrow())
            else {
                continue;
            };
            let counters = match (&h.cpu, &h.memory, &h.runc_id, &ctx.oci) {
                (Some(cpu), Some(mem), _, _) => Some(Counters {
                    cpu_ns: cpu.load(Ordering::Relaxed),
                    memory_bytes: mem.load(Ordering::Relaxed),
                }),
                (_, _, Some(id), Some(oci)) => oci.cgroup_dirs(id).as_ref().and_then(oci_counters),
                _ => None,
            };
            if let Some(counters) = counters {
                containers.push(ContainerReading {
                    name: cname.to_string(),
                    run: h.restart_count,
                    counters,
                });
            }
        }
        if !containers.is_empty() {
            out.push(PodReading {
                namespace: ns.to_string(),
                name: name.to_string(),
                uid: uid.to_string(),
                containers,
            });
        }
    }
    Some(Round {
        taken,
        timestamp,
        node,
        pods: out,
    })
}

/// Samples every `interval` and sends each round's rates to the server.
pub(crate) async fn usage_loop(ctx: Ctx, interval: Duration, cancel: CancellationToken) {
    let path = format!("/api/v1/nodes/{}/usage", ctx.node);
    let mut ticks = tokio::time::interval(interval);
    ticks.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
    let mut prev: Option<Round> = None;
    loop {
        tokio::select! {
            _ = cancel.cancelled() => return,
            _ = ticks.tick() => {}
        }
        let c = ctx.clone();
        let taken = Instant::now();
        let Ok(Some(round)) = tokio::task::spawn_blocking(move || read_round(&c, taken)).await
        else {
            tracing::debug!("reading the node's usage failed");
            continue;
        };
        let body = prev.as_ref().and_then(|p| report(p, &round, interval));
        prev = Some(round);
        let Some(body) = body else { continue };
        if let Err(e) = ctx
            .client
            .call(http::Method::PUT, &path, "application/json", Some(&body))
            .await
        {
            // Expected while offline; the next round's report replaces this one.
            tracing::debug!(error = %e, "sending the usage report failed");
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn rates_are_nanocores_over_the_window() {
        let s = Duration::from_secs(1);
        assert_eq!(nanocores(0, 500_000_000, s), Some(500_000_000));
        assert_eq!(
            nanocores(1_000, 1_000 + 3_000_000_000, Duration::from_secs(2)),
            Some(1_500_000_000)
        );
        assert_eq!(nanocores(10, 5, s), None, "a reset counter has no rate");
        assert_eq!(nanocores(0, 5, Duration::ZERO), None);
    }

    fn round(at: Instant, node_cpu: u64, pods: Vec<PodReading>) -> Round {
        Round {
            taken: at,
            timestamp: chrono::DateTime::parse_from_rfc3339("2026-12-06T18:00:00Z")
                .unwrap()
                .with_timezone(&chrono::Utc),
            node: Counters {
                cpu_ns: node_cpu,
                memory_bytes: 1 << 30,
            },
            pods,
        }
    }

    fn pod(uid: &str, containers: &[(&str, u32, u64, u64)]) -> PodReading {
        PodReading {
            namespace: "default".into(),
            name: format!("pod-{uid}"),
            uid: uid.into(),
            containers: containers
                .iter()
                .map(|(n, run, cpu, mem)| ContainerReading {
                    name: n.to_string(),
                    run: *run,
                    counters: Counters {
                        cpu_ns: *cpu,
                        memory_bytes: *mem,
                    },
                })
                .collect(),
        }
    }

    /// A pod is reported once every container has two readings of the same run; a restarted
    /// container (a new run) waits for its second reading.
    #[tokio::test(start_paused = true)]
    async fn reports_rate_containers_seen_twice_in_the_same_run() {
        let t0 = Instant::now();
        let t1 = t0 + Duration::from_secs(2);
        let prev = round(
            t0,
            1_000_000_000,
            vec![
                pod("busy", &[("c", 0, 0, 100)]),
                pod("two", &[("a", 0, 0, 1), ("b", 0, 0, 1)]),
                pod("restarted", &[("c", 0, 9_000_000_000, 1)]),
            ],
        );
        let cur = round(
            t1,
            3_000_000_000,
            vec![
                pod("busy", &[("c", 0, 2_000_000_000, 4096)]),
                pod("two", &[("a", 0, 0, 1), ("b", 0, 10, 1)]),
                pod("restarted", &[("c", 1, 1_000, 1)]),
                pod("new", &[("c", 0, 5, 1)]),
            ],
        );
        let r = report(&prev, &cur, Duration::from_secs(2)).unwrap();
        assert_eq!(r["windowSeconds"], 2.0);
        assert_eq!(r["intervalSeconds"], 2.0);
        assert_eq!(r["node"]["cpuNanoCores"], 1_000_000_000);
        assert_eq!(r["timestamp"], "2026-12-06T18:00:00.000Z");
        let pods = r["pods"].as_array().unwrap();
        let names: Vec<&str> = pods.iter().map(|p| p["uid"].as_str().unwrap()).collect();
        assert_eq!(names, ["busy", "two"]);
        assert_eq!(pods[0]["containers"][0]["cpuNanoCores"], 1_000_000_000);
        assert_eq!(pods[0]["containers"][0]["memoryBytes"], 4096);
        assert_eq!(pods[1]["containers"][1]["cpuNanoCores"], 5);
        // The server's parser takes the body as sent.
        assert!(
            report(&cur, &prev, Duration::from_secs(2)).is_none(),
            "time went back"
        );
    }

    #[test]
    fn proc_stat_busy_time_leaves_out_idle_and_iowait() {
        let stat = "cpu  100 5 50 1000 40 3 2 1 7 0\ncpu0 50 2 25 500 20 1 1 0 3 0\nintr 1 2\n";
        // (100 + 5 + 50 + 3 + 2 + 1) ticks at 100 Hz.
        assert_eq!(proc_stat_busy_ns(stat, 100), Some(1_610_000_000));
        assert_eq!(proc_stat_busy_ns("intr 1\n", 100), None);
    }

    #[test]
    fn node_working_set_is_total_less_available() {
        let m = "MemTotal:       16000 kB\nMemFree:  100 kB\nMemAvailable:   12000 kB\n";
        assert_eq!(meminfo_working_set(m), Some(4000 * 1024));
        assert_eq!(meminfo_working_set("MemTotal: 1 kB\n"), None);
    }

    #[test]
    fn cgroup_files_parse_for_v1_and_v2() {
        assert_eq!(cgroup_cpu_ns("123456789\n", false), Some(123_456_789));
        let v2 = "usage_usec 2500\nuser_usec 2000\nsystem_usec 500\n";
        assert_eq!(cgroup_cpu_ns(v2, true), Some(2_500_000));
        assert_eq!(cgroup_cpu_ns("garbage", false), None);
        let v1_stat = "cache 4096\nrss 8192\ninactive_file 1\ntotal_inactive_file 4096\n";
        assert_eq!(cgroup_working_set("16384\n", v1_stat, false), Some(12288));
        let v2_stat = "anon 8192\nfile 4096\ninactive_file 1024\n";
        assert_eq!(cgroup_working_set("12288\n", v2_stat, true), Some(11264));
        // More inactive cache than usage (racy reads): zero, not a wrap.
        assert_eq!(
            cgroup_working_set("10\n", "total_inactive_file 20\n", false),
            Some(0)
        );
    }

    /// The figure: what one sampling round costs the agent with 100 OCI pods — the node's
    /// files, 100 containers' cgroup files (real cgroups when root on cgroup v1, else the
    /// same files in a temporary directory), the rates and the report's JSON — as CPU % of
    /// one core at the default 15 s and at a 1 s resolution. Wasm containers cost two atomic
    /// loads each here (their metering is in kedge-runtime's `wasm::cpu` figure).
    /// `cargo test -p kedge-agent --release --lib usage::tests::sampling_cost -- --ignored --nocapture`
    #[test]
    #[ignore]
    fn sampling_cost_with_100_pods() {
        const PODS: usize = 100;
        const ROUNDS: u32 = 200;
        let tmp = tempfile::tempdir().unwrap();
        let real = rustix::process::geteuid().is_root()
            && std::path::Path::new("/sys/fs/cgroup/cpuacct/cpuacct.usage").exists()
            && std::path::Path::new("/sys/fs/cgroup/memory/memory.stat").exists();
        let leaf = format!("kedge-usage-bench-{}", std::process::id());
        let dirs: Vec<kedge_runtime::oci::CgroupDirs> = (0..PODS)
            .map(|i| {
                let (cpu, memory) = if real {
                    let cpu =
                        std::path::PathBuf::from(format!("/sys/fs/cgroup/cpuacct/{leaf}-{i}"));
                    let mem = std::path::PathBuf::from(format!("/sys/fs/cgroup/memory/{leaf}-{i}"));
                    std::fs::create_dir(&cpu).unwrap();
                    std::fs::create_dir(&mem).unwrap();
                    (cpu, mem)
                } else {
                    let d = tmp.path().join(i.to_string());
                    std::fs::create_dir(&d).unwrap();
                    std::fs::write(d.join("cpuacct.usage"), "123456789\n").unwrap();
                    std::fs::write(d.join("memory.usage_in_bytes"), "1048576\n").unwrap();
                    std::fs::write(
                        d.join("memory.stat"),
                        "cache 0\nrss 1048576\n".repeat(18) + "total_inactive_file 4096\n",
                    )
                    .unwrap();
                    (d.clone(), d)
                };
                kedge_runtime::oci::CgroupDirs {
                    v2: false,
                    cpu,
                    memory,
                }
            })
            .collect();
        let round = |taken: Instant| Round {
            taken,
            timestamp: chrono::Utc::now(),
            node: node_counters().unwrap(),
            pods: dirs
                .iter()
                .enumerate()
                .map(|(i, d)| PodReading {
                    namespace: "default".into(),
                    name: format!("pod-{i}"),
                    uid: format!("uid-{i}"),
                    containers: vec![ContainerReading {
                        name: "main".into(),
                        run: 0,
                        counters: oci_counters(d).unwrap(),
                    }],
                })
                .collect(),
        };
        let t0 = Instant::now();
        let mut prev = round(t0);
        let started = std::time::Instant::now();
        let mut bytes = 0;
        for r in 1..=ROUNDS {
            let cur = round(t0 + Duration::from_secs(15 * r as u64));
            let body = report(&prev, &cur, DEFAULT_INTERVAL).unwrap();
            bytes = serde_json::to_vec(&body).unwrap().len();
            prev = cur;
        }
        let per_round = started.elapsed() / ROUNDS;
        if real {
            for i in 0..PODS {
                let _ = std::fs::remove_dir(format!("/sys/fs/cgroup/cpuacct/{leaf}-{i}"));
                let _ = std::fs::remove_dir(format!("/sys/fs/cgroup/memory/{leaf}-{i}"));
            }
        }
        let pct = |interval: f64| per_round.as_secs_f64() / interval * 100.0;
        println!(
            "usage sampling, {PODS} OCI pods ({} cgroups): {per_round:?} per round, \
             report {bytes} bytes; CPU of one core: {:.4} % at 15 s, {:.3} % at 1 s",
            if real { "real v1" } else { "file" },
            pct(15.0),
            pct(1.0)
        );
        assert!(pct(15.0) < 1.0, "sampling must stay cheap");
    }

    /// This machine's own files parse (the readers are what runs on a node).
    #[test]
    fn the_node_s_counters_read() {
        let c = node_counters().expect("/proc/stat and /proc/meminfo");
        assert!(c.cpu_ns > 0 && c.memory_bytes > 0, "{c:?}");
    }
}
