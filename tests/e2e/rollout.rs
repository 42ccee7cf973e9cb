//! Deployment rollouts paced by readiness, end to end: a RollingUpdate whose new pods never
//! become ready stops within `maxSurge` / `maxUnavailable`, misses its progress deadline
//! (`kubectl rollout status` fails) and is undone; a Recreate rollout of a server bound to a
//! node port never runs two pods at once; `minReadySeconds` holds availability back.

use std::collections::{BTreeMap, BTreeSet};
use std::io::{Read as _, Write as _};
use std::path::PathBuf;
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

use serde_json::{Value, json};

use crate::harness::{Cluster, PodInfo, free_port};

const V1: &str = "kedge.dev/samples/hello-wasm:v1";
const V2: &str = "kedge.dev/samples/hello-wasm:v2";

/// A readiness check that needs no port (pods share the node's network, so several replicas
/// on one node cannot all listen on one): the Wasm exec runs the program again, and
/// `hello --once` greets and exits 0.
const READY: [&str; 2] = ["hello", "--once"];
/// One that never passes: `hello --cat` of a missing file exits 1.
const NEVER_READY: [&str; 3] = ["hello", "--cat", "/nonexistent"];

/// A full HTTP/1.0 response from a pod's server on this node, or `None` if it does not answer.
fn http(port: u16, path: &str) -> Option<String> {
    let mut s = std::net::TcpStream::connect(("127.0.0.1", port)).ok()?;
    s.set_read_timeout(Some(Duration::from_secs(2))).ok()?;
    write!(s, "GET {path} HTTP/1.0\r\n\r\n").ok()?;
    let mut out = String::new();
    s.read_to_string(&mut out).ok()?;
    Some(out)
}

fn apply(c: &Cluster, obj: &Value) {
    let r = c.kubectl_stdin(&["apply", "-f", "-"], Some(&obj.to_string()));
    assert!(r.ok, "{}", r.stderr);
}

fn get_json(c: &Cluster, args: &[&str]) -> Value {
    let mut all = vec!["get"];
    all.extend_from_slice(args);
    all.extend_from_slice(&["-o", "json"]);
    serde_json::from_str(&c.k(&all)).unwrap()
}

/// A Deployment of the hello-wasm sample labelled `app=<name>`, its one container named
/// `hello` (an exec probe's command begins with it); `spec` fields override the defaults.
fn deployment(name: &str, container: Value, spec: Value) -> Value {
    let mut container = container;
    container["name"] = json!("hello");
    let mut d = json!({"apiVersion": "apps/v1", "kind": "Deployment",
        "metadata": {"name": name},
        "spec": {"replicas": 1, "selector": {"matchLabels": {"app": name}},
            "template": {"metadata": {"labels": {"app": name}},
                "spec": {"containers": [container]}}}});
    for (k, v) in spec.as_object().unwrap() {
        d["spec"][k] = v.clone();
    }
    d
}

fn exec_readiness(command: &[&str]) -> Value {
    json!({"exec": {"command": command}, "periodSeconds": 1})
}

/// The Deployment's condition of type `ty`: (status, reason).
fn condition(d: &Value, ty: &str) -> Option<(String, String)> {
    let c = d["status"]["conditions"]
        .as_array()?
        .iter()
        .find(|c| c["type"] == ty)?;
    Some((
        c["status"].as_str().unwrap_or_default().to_string(),
        c["reason"].as_str().unwrap_or_default().to_string(),
    ))
}

fn live(pods: &[PodInfo]) -> Vec<&PodInfo> {
    pods.iter().filter(|p| !p.deleting).collect()
}

/// `(revision, spec.replicas, status.replicas)` of each ReplicaSet labelled `app=<app>`,
/// by revision.
fn replica_sets(c: &Cluster, app: &str) -> Vec<(u64, i64, i64)> {
    let v = get_json(c, &["rs", "-l", &format!("app={app}")]);
    let mut out: Vec<(u64, i64, i64)> = v["items"]
        .as_array()
        .unwrap()
        .iter()
        .map(|rs| {
            (
                rs["metadata"]["annotations"]["deployment.kubernetes.io/revision"]
                    .as_str()
                    .and_then(|r| r.parse().ok())
                    .unwrap_or(0),
                rs["spec"]["replicas"].as_i64().unwrap_or(-1),
                rs["status"]["replicas"].as_i64().unwrap_or(0),
            )
        })
        .collect();
    out.sort();
    out
}

/// The REVISION column of `kubectl rollout history deployment/<name>`.
fn revisions(c: &Cluster, name: &str) -> Vec<String> {
    let history = c.k(&["rollout", "history", &format!("deployment/{name}")]);
    let mut lines = history.lines();
    assert!(
        lines
            .next()
            .is_some_and(|l| l.starts_with(&format!("deployment.apps/{name}"))),
        "{history}"
    );
    assert!(
        lines.next().is_some_and(|l| l.starts_with("REVISION")),
        "{history}"
    );
    lines
        .filter_map(|l| l.split_whitespace().next())
        .map(String::from)
        .collect()
}

/// `kubectl get pods --watch`: every version of the matching pods, in the order the API
/// server reports them (listed ones first, as ADDED), written to a file as it comes.
struct PodWatch {
    child: Child,
    out: PathBuf,
}

impl PodWatch {
    fn start(c: &Cluster, selector: &str) -> PodWatch {
        let out = c.dir.path().join("pod-watch.json");
        let child = Command::new("kubectl")
            .arg("--kubeconfig")
            .arg(&c.kubeconfig)
            .arg("--cache-dir")
            .arg(c.dir.path().join("kube-cache"))
            .args([
                "get",
                "pods",
                "-l",
                selector,
                "--watch",
                "--output-watch-events",
            ])
            .args(["-o", "json"])
            .stdout(std::fs::File::create(&out).unwrap())
            .stderr(Stdio::null())
            .stdin(Stdio::null())
            .spawn()
            .expect("running kubectl");
        PodWatch { child, out }
    }

    /// (event type, pod) so far; a partly written last event is left for later.
    fn events(&self) -> Vec<(String, Value)> {
        let text = std::fs::read_to_string(&self.out).unwrap_or_default();
        serde_json::Deserializer::from_str(&text)
            .into_iter::<Value>()
            .map_while(Result::ok)
            .map(|e| {
                (
                    e["type"].as_str().unwrap_or_default().to_string(),
                    e["object"].clone(),
                )
            })
            .collect()
    }

    /// The events, once the last ones had a moment to arrive.
    fn stop(mut self) -> Vec<(String, Value)> {
        std::thread::sleep(Duration::from_millis(500));
        let _ = self.child.kill();
        let _ = self.child.wait();
        self.events()
    }
}

impl Drop for PodWatch {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

/// Watch events in a line each: type, pod, phase, ready, deleting.
fn summary(events: &[(String, Value)]) -> Vec<String> {
    events
        .iter()
        .map(|(ty, p)| {
            format!(
                "{ty} {} {} ready={} deleting={}",
                p["metadata"]["name"].as_str().unwrap_or_default(),
                p["status"]["phase"].as_str().unwrap_or_default(),
                p["status"]["containerStatuses"][0]["ready"],
                p["metadata"]["deletionTimestamp"].is_string()
            )
        })
        .collect()
}

#[test]
fn a_rollout_that_never_becomes_ready_stops_at_max_unavailable_and_misses_its_deadline() {
    let mut c = Cluster::start();
    let token = c.token.clone();
    c.start_agent("roll-node", &token);
    let strategy = json!({"type": "RollingUpdate",
        "rollingUpdate": {"maxSurge": 1, "maxUnavailable": 1}});
    let good = json!({"image": V1, "readinessProbe": exec_readiness(&READY)});
    apply(
        &c,
        &deployment("stuck", good, json!({"replicas": 4, "strategy": strategy})),
    );
    c.k(&["rollout", "status", "deployment/stuck", "--timeout=60s"]);
    let pods = c.pods("app=stuck");
    assert_eq!(pods.len(), 4, "{pods:?}");
    assert!(pods.iter().all(|p| p.ready && p.image == V1), "{pods:?}");

    // A template whose pods never become ready. The 10 s deadline comes with it (not at
    // creation) so a slow first start on a busy machine cannot miss it; it must stay above
    // minReadySeconds (0), which the API checks.
    let broken = json!({"image": V2, "readinessProbe": exec_readiness(&NEVER_READY)});
    apply(
        &c,
        &deployment(
            "stuck",
            broken,
            json!({"replicas": 4, "strategy": strategy, "progressDeadlineSeconds": 10}),
        ),
    );
    let started = Instant::now();
    let r = c.kubectl(&["rollout", "status", "deployment/stuck", "--timeout=60s"]);
    assert!(!r.ok, "rollout status succeeded:\n{}", r.stdout);
    assert!(
        r.stderr
            .contains("deployment \"stuck\" exceeded its progress deadline"),
        "{}",
        r.stderr
    );
    let waited = started.elapsed();
    assert!(
        waited >= Duration::from_secs(9),
        "the deadline is 10 s from the template change, missed after {waited:?}"
    );
    let d = get_json(&c, &["deployment", "stuck"]);
    assert_eq!(
        condition(&d, "Progressing"),
        Some(("False".into(), "ProgressDeadlineExceeded".into())),
        "{}",
        d["status"]
    );
    // Old pods still serve: at most maxUnavailable (1) of them went, at most maxSurge (1) pods
    // above replicas exist.
    let pods = c.pods("app=stuck");
    let alive = live(&pods);
    let old_ready = alive.iter().filter(|p| p.image == V1 && p.ready).count();
    assert!(old_ready >= 3, "{pods:#?}");
    assert!(alive.len() <= 5, "{pods:#?}");
    let new: Vec<_> = alive.iter().filter(|p| p.image == V2).collect();
    assert!(!new.is_empty(), "the rollout started: {pods:#?}");
    assert!(new.iter().all(|p| !p.ready), "{pods:#?}");
    // It stays stuck there.
    std::thread::sleep(Duration::from_secs(2));
    let pods = c.pods("app=stuck");
    let alive = live(&pods);
    assert!(
        alive.iter().filter(|p| p.image == V1 && p.ready).count() >= 3 && alive.len() <= 5,
        "{pods:#?}"
    );

    assert_eq!(revisions(&c, "stuck"), ["1", "2"]);

    assert_eq!(
        c.k(&["rollout", "undo", "deployment/stuck"]).trim(),
        "deployment.apps/stuck rolled back"
    );
    c.k(&["rollout", "status", "deployment/stuck", "--timeout=60s"]);
    let d = get_json(&c, &["deployment", "stuck"]);
    assert_eq!(
        d["spec"]["template"]["spec"]["containers"][0]["image"], V1,
        "{d}"
    );
    assert_eq!(
        condition(&d, "Progressing"),
        Some(("True".into(), "NewReplicaSetAvailable".into())),
        "{}",
        d["status"]
    );
    c.wait("4 Ready pods of the old template, nothing else", || {
        let pods = c.pods("app=stuck");
        (pods.len() == 4 && pods.iter().all(|p| p.ready && p.image == V1 && !p.deleting))
            .then_some(())
    });
    // The undo made revision 1 current again, as revision 3.
    assert_eq!(revisions(&c, "stuck"), ["2", "3"]);
    assert_eq!(
        replica_sets(&c, "stuck")
            .iter()
            .map(|&(rev, spec, _)| (rev, spec))
            .collect::<Vec<_>>(),
        [(2, 0), (3, 4)]
    );
}

#[test]
fn recreate_replaces_a_port_bound_app_on_one_node() {
    let mut c = Cluster::start();
    let token = c.token.clone();
    c.start_agent("recreate-node", &token);
    let port = free_port();
    let container = |version: &str| {
        json!({"image": V1,
            "env": [{"name": "HELLO_LISTEN", "value": port.to_string()},
                {"name": "VERSION", "value": version}],
            "ports": [{"name": "http", "containerPort": port}],
            "readinessProbe": {"httpGet": {"path": "/healthz", "port": port},
                "periodSeconds": 1}})
    };
    let spec = json!({"strategy": {"type": "Recreate"}});
    apply(&c, &deployment("solo", container("1"), spec.clone()));
    c.k(&["rollout", "status", "deployment/solo", "--timeout=60s"]);
    let first = c.wait("the first pod ready and serving", || {
        let pods = c.pods("app=solo");
        let [p] = pods.as_slice() else { return None };
        let body = http(port, "/")?;
        (p.ready && body.contains(&format!("hello from {}", p.name))).then(|| p.name.clone())
    });

    // Every change to the pods, in the API server's order, from before the template change.
    let watch = PodWatch::start(&c, "app=solo");
    c.wait("the watch listing the first pod", || {
        watch
            .events()
            .iter()
            .any(|(_, p)| p["metadata"]["name"] == first.as_str())
            .then_some(())
    });
    apply(&c, &deployment("solo", container("2"), spec));
    let second = c.wait("a new pod ready and serving on the same port", || {
        let pods = c.pods("app=solo");
        let [p] = pods.as_slice() else { return None };
        if p.name == first || !p.ready {
            return None;
        }
        let body = http(port, "/")?;
        body.contains(&format!("hello from {}", p.name))
            .then(|| p.name.clone())
    });
    let events = watch.stop();
    let log = summary(&events);
    // Replayed: the old pod stopped (gone, or finished) before any other pod existed, and
    // never more than one pod was there and not being deleted.
    let mut pods: BTreeMap<String, Value> = BTreeMap::new();
    let mut most_live = 0;
    for (i, (ty, pod)) in events.iter().enumerate() {
        let name = pod["metadata"]["name"].as_str().unwrap().to_string();
        if ty == "DELETED" {
            pods.remove(&name);
        } else {
            pods.insert(name, pod.clone());
        }
        most_live = most_live.max(
            pods.values()
                .filter(|p| p["metadata"]["deletionTimestamp"].is_null())
                .count(),
        );
        let old_running = pods.get(&first).is_some_and(|p| {
            !matches!(p["status"]["phase"].as_str(), Some("Succeeded" | "Failed"))
        });
        assert!(
            !(old_running && pods.len() > 1),
            "a new pod while the old one still runs, at event {i} of {log:#?}"
        );
    }
    assert_eq!(most_live, 1, "{log:#?}");
    let names: BTreeSet<&str> = events
        .iter()
        .filter_map(|(_, p)| p["metadata"]["name"].as_str())
        .collect();
    assert_eq!(
        names,
        BTreeSet::from([first.as_str(), second.as_str()]),
        "{log:#?}"
    );
    assert!(
        events
            .iter()
            .any(|(ty, p)| ty == "DELETED" && p["metadata"]["name"] == first.as_str()),
        "the old pod's removal: {log:#?}"
    );
    assert_ne!(second, first);
    c.k(&["rollout", "status", "deployment/solo", "--timeout=60s"]);
    let d = get_json(&c, &["deployment", "solo"]);
    assert_eq!(
        d["spec"]["template"]["spec"]["containers"][0]["env"][1]["value"],
        "2"
    );
    assert_eq!(
        replica_sets(&c, "solo"),
        [(1, 0, 0), (2, 1, 1)],
        "old ReplicaSet at 0, new one at 1"
    );
}

/// The Deployment as the test saw it at one moment, with how long its pod had been Ready.
#[derive(Debug)]
struct Sample {
    since_ready: f64,
    ready: i64,
    available: i64,
    /// The Available condition: (status, reason).
    condition: Option<(String, String)>,
}

#[test]
fn min_ready_seconds_delays_availability() {
    let mut c = Cluster::start();
    let token = c.token.clone();
    c.start_agent("patient-node", &token);
    let container = json!({"image": V1, "readinessProbe": exec_readiness(&READY)});
    apply(
        &c,
        &deployment("patient", container, json!({"minReadySeconds": 5})),
    );
    let mut seen: Vec<Sample> = Vec::new();
    c.wait("the replica available", || {
        let pods = get_json(&c, &["pods", "-l", "app=patient"]);
        let d = get_json(&c, &["deployment", "patient"]);
        let ready_at = pods["items"][0]["status"]["conditions"]
            .as_array()
            .into_iter()
            .flatten()
            .find(|c| c["type"] == "Ready" && c["status"] == "True")
            .and_then(|c| c["lastTransitionTime"].as_str())
            .map(|t| chrono::DateTime::parse_from_rfc3339(t).unwrap())?;
        let since = chrono::Utc::now() - ready_at.to_utc();
        let sample = Sample {
            since_ready: since.num_milliseconds() as f64 / 1000.0,
            ready: d["status"]["readyReplicas"].as_i64().unwrap_or(0),
            available: d["status"]["availableReplicas"].as_i64().unwrap_or(0),
            condition: condition(&d, "Available"),
        };
        let done = sample.available == 1;
        seen.push(sample);
        done.then_some(())
    });
    // Ready but not yet available: below replicas - maxUnavailable (1 - 0), so the
    // Deployment is not Available either.
    let unavailable = Some(("False".into(), "MinimumReplicasUnavailable".into()));
    assert!(
        seen.iter()
            .any(|s| s.ready == 1 && s.available == 0 && s.condition == unavailable),
        "never ready but not yet available: {seen:#?}"
    );
    // Ready times are written in whole seconds, so the pod turned ready up to 1 s after the
    // recorded time; the controller counts from the recorded one.
    let since = seen.last().unwrap().since_ready;
    assert!(
        since >= 5.0,
        "available {since:.1} s after turning ready: {seen:#?}"
    );
    assert!(
        since < 15.0,
        "available only {since:.1} s after turning ready: {seen:#?}"
    );
    let d = get_json(&c, &["deployment", "patient"]);
    assert_eq!(
        condition(&d, "Available"),
        Some(("True".into(), "MinimumReplicasAvailable".into())),
        "{}",
        d["status"]
    );
}
