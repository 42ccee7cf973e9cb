//! Campaign 6, hostile plugins under load: while writers create and update ConfigMaps and
//! watchers follow them, five plugins misbehave — one spins, one allocates without bound, one
//! traps on every reconcile, one calls the host as fast as it can and one hoards ever larger
//! lists — and are kept busy by a steady stream of objects of the kinds they reconcile.
//!
//! The same load runs twice on one server, first without the hostile plugins (the baseline),
//! then with them. What must hold: the server never crashes, every write succeeds, and every
//! hostile plugin is reported (`Healthy=False`, reason `Trapping`) and backed off (its
//! trapped calls stay within what the slot's exponential back-off allows). The goal of issue
//! 19 — write p99 with the hostile plugins within 5 % of the baseline — is measured and
//! printed, not asserted: timings on a shared CI machine are not a test result.
//!
//! The writers are paced (one write per `KEDGE_CHAOS_PLUGIN_PACE_MS` each) so the server is
//! not saturated: back to back, every write waits behind the others and the p99 measures the
//! queue, not what the plugins take away (`KEDGE_CHAOS_PLUGIN_PACE_MS=0` does that).
//!
//! Short form (CI): 16 writers at 10 writes/s each, 30 watchers, 8 s per phase, 250 ms plugin
//! deadline. Long form: `KEDGE_CHAOS_PLUGIN_WRITERS=50 KEDGE_CHAOS_PLUGIN_WATCHERS=100
//! KEDGE_CHAOS_PLUGIN_SECS=60 KEDGE_CHAOS_PLUGIN_PACE_MS=500 KEDGE_CHAOS_PLUGIN_DEADLINE_MS=2000`.
//! `KEDGE_CHAOS_PLUGIN_HOSTILE=spin,flood` installs only the named ones (what each costs alone).

use std::path::Path;
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::time::{Duration, Instant};

use http_body_util::BodyExt as _;
use kedge::kubeclient::KubeClient;
use serde_json::{Value, json};

use crate::server::{ChaosServer, block_on, call, knob};

const NS: &str = "plugins";
const KEYS_PER_WRITER: usize = 4;
/// Memory cap of each hostile plugin's instance: small, so the hog and the hoarder hit it soon.
const PLUGIN_MEMORY: &str = "32Mi";
/// Trapped calls in a row before a slot backs off (`TRAPS_BEFORE_BACKOFF` in the host).
const TRAPS_BEFORE_BACKOFF: f64 = 3.0;
/// Pause between two trigger objects (an Event and a ReplicaSet for the hostile plugins).
const TRIGGER_EVERY: Duration = Duration::from_millis(100);

/// One hostile plugin: its name, its fixture and the grant its registration needs.
struct Hostile {
    name: &'static str,
    what: &'static str,
    wasm: &'static str,
    watches: &'static [(&'static str, &'static str)],
    writes: &'static [(&'static str, &'static str)],
}

const HOSTILE: &[Hostile] = &[
    Hostile {
        name: "spin",
        what: "loops forever",
        wasm: "kedge_fixture_plugin_spin.wasm",
        watches: &[("v1", "Event")],
        writes: &[],
    },
    Hostile {
        name: "hog",
        what: "allocates without bound",
        wasm: "kedge_fixture_plugin_hog.wasm",
        watches: &[("v1", "Event")],
        writes: &[],
    },
    Hostile {
        // Registers like the replicaset controller: it reconciles ReplicaSets.
        name: "trap",
        what: "panics in every reconcile",
        wasm: "kedge_fixture_plugin_broken.wasm",
        watches: &[("apps/v1", "ReplicaSet"), ("v1", "Pod")],
        writes: &[("v1", "Pod"), ("apps/v1", "ReplicaSet"), ("v1", "Event")],
    },
    Hostile {
        name: "flood",
        what: "calls the host in a tight loop",
        wasm: "kedge_fixture_plugin_flood.wasm",
        watches: &[("v1", "Event")],
        writes: &[],
    },
    Hostile {
        name: "huge",
        what: "hoards whole-cluster lists",
        wasm: "kedge_fixture_plugin_huge.wasm",
        watches: &[("v1", "Event"), ("v1", "ConfigMap")],
        writes: &[],
    },
];

/// The hostile plugins this run installs: all of them, or those `KEDGE_CHAOS_PLUGIN_HOSTILE`
/// names (comma-separated), to see what each costs the API alone.
fn chosen_hostile() -> Vec<&'static Hostile> {
    let Ok(names) = std::env::var("KEDGE_CHAOS_PLUGIN_HOSTILE") else {
        return HOSTILE.iter().collect();
    };
    let names: Vec<&str> = names
        .split(',')
        .map(str::trim)
        .filter(|n| !n.is_empty())
        .collect();
    for n in &names {
        assert!(
            HOSTILE.iter().any(|h| h.name == *n),
            "KEDGE_CHAOS_PLUGIN_HOSTILE: no hostile plugin {n:?} (there are {})",
            HOSTILE
                .iter()
                .map(|h| h.name)
                .collect::<Vec<_>>()
                .join(", ")
        );
    }
    HOSTILE.iter().filter(|h| names.contains(&h.name)).collect()
}

/// What one load phase measured.
#[derive(Default)]
struct Phase {
    /// Every write's latency, sorted.
    latencies: Vec<Duration>,
    /// Writes that did not succeed, with why.
    failures: Vec<String>,
    /// Watch events received over all watchers.
    watch_events: u64,
    /// Trigger objects created.
    triggers: u64,
}

impl Phase {
    fn quantile(&self, q: f64) -> Duration {
        if self.latencies.is_empty() {
            return Duration::ZERO;
        }
        let i = ((self.latencies.len() as f64 * q).ceil() as usize).clamp(1, self.latencies.len());
        self.latencies[i - 1]
    }

    fn figures(&self, secs: u64) -> String {
        format!(
            "p50 {:.1} ms p99 {:.1} ms ({:.0} writes/s, {} watch events)",
            ms(self.quantile(0.5)),
            ms(self.quantile(0.99)),
            self.latencies.len() as f64 / secs as f64,
            self.watch_events
        )
    }
}

fn ms(d: Duration) -> f64 {
    d.as_secs_f64() * 1e3
}

/// What every ConfigMap written carries: a pad, so lists of them are not small.
fn config_map(name: &str, value: u64) -> Value {
    json!({"apiVersion": "v1", "kind": "ConfigMap",
        "metadata": {"name": name, "namespace": NS, "labels": {"chaos": "plugins"}},
        "data": {"value": value.to_string(), "pad": format!("{value:020}").repeat(50)}})
}

/// Creates its own keys, then updates them round-robin until `until`; records each write.
/// One write every `pace` (spread over the writers by `offset`; a write that takes longer
/// delays only the next one), or back to back when `pace` is zero.
async fn writer(
    client: KubeClient,
    phase: usize,
    w: usize,
    until: Instant,
    pace: Duration,
    offset: Duration,
) -> Phase {
    let mut out = Phase::default();
    let mut conn = match client.connect().await {
        Ok(c) => c,
        Err(e) => {
            out.failures.push(format!("writer {w}: connecting: {e}"));
            return out;
        }
    };
    let base = format!("/api/v1/namespaces/{NS}/configmaps");
    let mut created = [false; KEYS_PER_WRITER];
    let mut value = 0u64;
    let mut next = tokio::time::Instant::now() + offset;
    while Instant::now() < until {
        if !pace.is_zero() {
            tokio::time::sleep_until(next).await;
            next += pace;
        }
        let k = value as usize % KEYS_PER_WRITER;
        let name = format!("p{phase}-w{w}-k{k}");
        value += 1;
        let body = config_map(&name, value);
        let began = Instant::now();
        let reply = if created[k] {
            let path = format!("{base}/{name}");
            call(&mut conn, http::Method::PUT, &path, Some(&body)).await
        } else {
            call(&mut conn, http::Method::POST, &base, Some(&body)).await
        };
        let took = began.elapsed();
        match reply {
            Some((200 | 201, _)) => {
                created[k] = true;
                out.latencies.push(took);
            }
            Some((code, body)) => {
                out.failures.push(format!("{name}: {code} {body}"));
                return out;
            }
            None => {
                out.failures.push(format!(
                    "{name}: no answer within 10 s (or the connection broke)"
                ));
                return out;
            }
        }
    }
    out
}

/// Watches the namespace's ConfigMaps until `stop`, reconnecting when a stream ends; counts
/// the events.
async fn watcher(client: KubeClient, stop: Arc<AtomicBool>, events: Arc<AtomicU64>) {
    let path =
        format!("/api/v1/namespaces/{NS}/configmaps?watch=true&labelSelector=chaos%3Dplugins");
    while !stop.load(Ordering::Relaxed) {
        let Ok(mut conn) = client.connect().await else {
            tokio::time::sleep(Duration::from_millis(100)).await;
            continue;
        };
        let Ok(resp) = conn.send(http::Method::GET, &path, "", None).await else {
            tokio::time::sleep(Duration::from_millis(100)).await;
            continue;
        };
        if resp.status() != 200 {
            tokio::time::sleep(Duration::from_millis(100)).await;
            continue;
        }
        let mut body = resp.into_body();
        while !stop.load(Ordering::Relaxed) {
            match tokio::time::timeout(Duration::from_millis(200), body.frame()).await {
                Err(_) => continue,
                Ok(Some(Ok(f))) => {
                    if let Ok(data) = f.into_data() {
                        let lines = data.iter().filter(|b| **b == b'\n').count();
                        events.fetch_add(lines as u64, Ordering::Relaxed);
                    }
                }
                Ok(_) => break,
            }
        }
    }
}

/// Creates an Event (for the plugins reconciling Events) and an empty ReplicaSet (for the
/// one reconciling ReplicaSets) every [`TRIGGER_EVERY`] until `until`, in both phases, so
/// the only difference between them is the hostile plugins.
async fn trigger(client: KubeClient, phase: usize, until: Instant) -> Result<u64, String> {
    let mut conn = client.connect().await.map_err(|e| e.to_string())?;
    let mut n = 0u64;
    while Instant::now() < until {
        let name = format!("t{phase}-{n}");
        let event = json!({"apiVersion": "v1", "kind": "Event",
            "metadata": {"name": name, "namespace": NS},
            "involvedObject": {"kind": "ConfigMap", "name": name, "namespace": NS},
            "reason": "Chaos", "message": "a trigger for the hostile plugins", "type": "Normal"});
        let rs = json!({"apiVersion": "apps/v1", "kind": "ReplicaSet",
            "metadata": {"name": name, "namespace": NS},
            "spec": {"replicas": 0, "selector": {"matchLabels": {"app": name}},
                "template": {"metadata": {"labels": {"app": name}},
                    "spec": {"containers": [{"name": "c", "image": "x:1"}]}}}});
        for (path, body) in [
            (format!("/api/v1/namespaces/{NS}/events"), event),
            (format!("/apis/apps/v1/namespaces/{NS}/replicasets"), rs),
        ] {
            match call(&mut conn, http::Method::POST, &path, Some(&body)).await {
                Some((201, _)) => {}
                other => return Err(format!("creating trigger {name} at {path}: {other:?}")),
            }
        }
        n += 1;
        tokio::time::sleep(TRIGGER_EVERY).await;
    }
    Ok(n)
}

/// The shape of the load, the same in both phases.
struct Load {
    writers: usize,
    watchers: usize,
    secs: u64,
    /// Time between two writes of one writer (zero: back to back, saturating the server).
    pace: Duration,
}

/// One load phase: writers, watchers and the trigger stream for `load.secs` seconds.
fn load_phase(rt: &tokio::runtime::Runtime, kubeconfig: &Path, phase: usize, load: &Load) -> Phase {
    let Load {
        writers,
        watchers,
        secs,
        pace,
    } = *load;
    let client = || KubeClient::from_kubeconfig(kubeconfig).expect("the admin kubeconfig");
    let stop = Arc::new(AtomicBool::new(false));
    let events = Arc::new(AtomicU64::new(0));
    let watch_tasks: Vec<_> = (0..watchers)
        .map(|_| rt.spawn(watcher(client(), stop.clone(), events.clone())))
        .collect();
    // Let the watchers connect before the clock starts.
    std::thread::sleep(Duration::from_millis(500));
    let until = Instant::now() + Duration::from_secs(secs);
    let trig = rt.spawn(trigger(client(), phase, until));
    let write_tasks: Vec<_> = (0..writers)
        .map(|w| {
            let offset = pace * w as u32 / writers as u32;
            rt.spawn(writer(client(), phase, w, until, pace, offset))
        })
        .collect();
    let mut out = Phase::default();
    for t in write_tasks {
        let p = rt.block_on(t).expect("writer task");
        out.latencies.extend(p.latencies);
        out.failures.extend(p.failures);
    }
    match rt.block_on(trig).expect("trigger task") {
        Ok(n) => out.triggers = n,
        Err(e) => out.failures.push(e),
    }
    stop.store(true, Ordering::Relaxed);
    for t in watch_tasks {
        rt.block_on(t).expect("watcher task");
    }
    out.watch_events = events.load(Ordering::Relaxed);
    out.latencies.sort();
    out
}

/// The server process of the first start still answers on its port (nothing restarts it, so
/// a crash would leave the port silent) and has logged no panic.
fn assert_alive(server: &ChaosServer) {
    let ready = block_on(
        server
            .client()
            .request(http::Method::GET, "/readyz", "", None),
    );
    assert!(
        matches!(ready, Ok((200, _))),
        "the server stopped answering: {ready:?}\n{}",
        server.log()
    );
    let log = std::fs::read_to_string(server.dir.path().join("server-1.log")).unwrap_or_default();
    if let Some(at) = log.find("panicked at") {
        panic!(
            "the server panicked:\n{}",
            &log[at.saturating_sub(200)..(at + 2000).min(log.len())]
        );
    }
}

/// A Plugin's `Healthy` condition as (status, reason, message).
fn healthy(plugin: &Value) -> (String, String, String) {
    let c = plugin["status"]["conditions"]
        .as_array()
        .and_then(|cs| cs.iter().find(|c| c["type"] == "Healthy"))
        .cloned()
        .unwrap_or_default();
    let s = |k: &str| c[k].as_str().unwrap_or_default().to_string();
    (s("status"), s("reason"), s("message"))
}

fn get_plugin(server: &ChaosServer, name: &str) -> Value {
    let (code, p) = block_on(server.client().request(
        http::Method::GET,
        &format!("/apis/plugins.kedge.io/v1/plugins/{name}"),
        "",
        None,
    ))
    .expect("reading a Plugin");
    assert_eq!(code, 200, "plugin {name}: {p}");
    p
}

/// `kedge_plugin_traps` of each plugin, from the server's metrics.
fn traps(server: &ChaosServer) -> std::collections::BTreeMap<String, f64> {
    let (code, text) = block_on(
        server
            .client()
            .request(http::Method::GET, "/metrics", "", None),
    )
    .expect("reading /metrics");
    assert_eq!(code, 200, "{text}");
    let text = text.as_str().unwrap_or_default().to_string();
    text.lines()
        .filter(|l| l.starts_with("kedge_plugin_traps"))
        .filter_map(|l| {
            let plugin = l.split("plugin=\"").nth(1)?.split('"').next()?;
            let n: f64 = l.rsplit(' ').next()?.parse().ok()?;
            Some((plugin.to_string(), n))
        })
        .collect()
}

/// Installs the hostile plugins from files next to the server and waits until each runs.
fn install(server: &ChaosServer, deadline_ms: u64, hostile: &[&Hostile]) {
    let files = server.dir.path().join("hostile");
    std::fs::create_dir_all(&files).unwrap();
    let refs = |kinds: &[(&str, &str)]| -> Vec<Value> {
        kinds
            .iter()
            .map(|(v, k)| json!({"apiVersion": v, "kind": k}))
            .collect()
    };
    for h in hostile {
        let src = Path::new(env!("KEDGE_WASM_DIR")).join(h.wasm);
        let file = files.join(h.wasm);
        std::fs::copy(&src, &file).unwrap_or_else(|e| panic!("{}: {e}", src.display()));
        let obj = json!({"apiVersion": "plugins.kedge.io/v1", "kind": "Plugin",
            "metadata": {"name": h.name},
            "spec": {"source": {"file": file}, "watches": refs(h.watches),
                "writes": refs(h.writes),
                "limits": {"callDeadlineMilliseconds": deadline_ms, "memory": PLUGIN_MEMORY}}});
        let (code, body) = block_on(server.client().request(
            http::Method::POST,
            "/apis/plugins.kedge.io/v1/plugins",
            "application/json",
            Some(&obj),
        ))
        .expect("creating a Plugin");
        assert_eq!(code, 201, "creating plugin {}: {body}", h.name);
    }
    for h in hostile {
        crate::harness::wait_for(
            &format!("plugin {} to start", h.name),
            Duration::from_secs(60),
            || {
                let p = get_plugin(server, h.name);
                let ready = p["status"]["conditions"]
                    .as_array()
                    .and_then(|cs| cs.iter().find(|c| c["type"] == "Ready"))
                    .cloned()
                    .unwrap_or_default();
                if ready["status"] == "False" && ready["reason"] != "Probation" {
                    panic!("plugin {} was refused: {p:#}", h.name);
                }
                p["status"]["activeDigest"].is_string().then_some(())
            },
        );
    }
}

#[test]
fn hostile_plugins_do_not_hurt_the_api() {
    let _serial = crate::server::one_at_a_time();
    let load = Load {
        writers: knob("KEDGE_CHAOS_PLUGIN_WRITERS", 16) as usize,
        watchers: knob("KEDGE_CHAOS_PLUGIN_WATCHERS", 30) as usize,
        secs: knob("KEDGE_CHAOS_PLUGIN_SECS", 8),
        pace: Duration::from_millis(knob("KEDGE_CHAOS_PLUGIN_PACE_MS", 100)),
    };
    let deadline_ms = knob("KEDGE_CHAOS_PLUGIN_DEADLINE_MS", 250);
    let began = Instant::now();
    let mut server = ChaosServer::start(&[]);
    let kubeconfig = server.dir.path().join("server/admin.kubeconfig");
    let rt = crate::server::runtime();
    rt.block_on(server.namespace(NS));

    let baseline = load_phase(&rt, &kubeconfig, 0, &load);
    assert!(
        baseline.failures.is_empty(),
        "baseline writes failed:\n{}\nserver log:\n{}",
        baseline.failures.join("\n"),
        server.log()
    );

    let installed = Instant::now();
    let chosen = chosen_hostile();
    install(&server, deadline_ms, &chosen);
    let hostile = load_phase(&rt, &kubeconfig, 1, &load);
    assert_alive(&server);
    assert!(
        hostile.failures.is_empty(),
        "writes failed with hostile plugins:\n{}\nserver log:\n{}",
        hostile.failures.join("\n"),
        server.log()
    );

    // Every hostile plugin reported: Healthy=False, Trapping, its calls backed off.
    let mut reported = Vec::new();
    for h in &chosen {
        let (status, reason, message) = crate::harness::wait_for(
            &format!("plugin {} to be reported", h.name),
            Duration::from_secs(30),
            || {
                let c = healthy(&get_plugin(&server, h.name));
                (c.0 == "False").then_some(c)
            },
        );
        assert_eq!(
            (status.as_str(), reason.as_str()),
            ("False", "Trapping"),
            "plugin {} ({}): {message}",
            h.name,
            h.what
        );
        assert!(message.contains("backed off"), "{}: {message}", h.name);
        // The reason in its own words: the deadline, the memory cap or the panic.
        let why = message
            .split_once("trapped: ")
            .map_or(message.as_str(), |(_, why)| why);
        let why = why.split(" (").next().unwrap_or(why).to_string();
        reported.push((h.name, why));
    }
    // Backed off: after TRAPS_BEFORE_BACKOFF traps in a row each call waits 100 ms, 200 ms,
    // 400 ms, … first, so in `t` seconds a slot gets at most log2(10 t + 1) more calls.
    let t = installed.elapsed().as_secs_f64();
    let allowed = TRAPS_BEFORE_BACKOFF + (10.0 * t + 1.0).log2().ceil() + 1.0;
    let trapped = traps(&server);
    let mut counts = Vec::new();
    for h in &chosen {
        let n = trapped.get(h.name).copied().unwrap_or(0.0);
        assert!(
            n >= TRAPS_BEFORE_BACKOFF,
            "plugin {}: {n} traps recorded, yet reported as trapping",
            h.name
        );
        assert!(
            n <= allowed,
            "plugin {} trapped {n} times in {t:.1} s: not backed off (at most {allowed} expected)",
            h.name
        );
        counts.push(format!("{} {n}", h.name));
    }
    assert_alive(&server);
    server.crash();

    let ratio = ms(hostile.quantile(0.99)) / ms(baseline.quantile(0.99)).max(1e-3);
    let reasons: Vec<String> = reported
        .iter()
        .map(|(n, why)| format!("{n} ({why})"))
        .collect();
    println!(
        "plugins: {} writers (one write per {} ms each), {} watchers, {} s per phase, \
         {deadline_ms} ms plugin deadline: baseline {}; with {} {} (p99 ratio {ratio:.2}, goal ≤ 1.05 {}); \
         {} triggers per phase; each hostile plugin reported Trapping and backed off: {}; \
         traps: {} (≤ {allowed:.0} allowed by back-off); every write succeeded; server never \
         crashed; {:.0} s in all",
        load.writers,
        load.pace.as_millis(),
        load.watchers,
        load.secs,
        baseline.figures(load.secs),
        chosen.iter().map(|h| h.name).collect::<Vec<_>>().join("/"),
        hostile.figures(load.secs),
        if ratio <= 1.05 { "met" } else { "not met" },
        hostile.triggers,
        reasons.join(", "),
        counts.join(", "),
        began.elapsed().as_secs_f64()
    );
}
