//! Probes, end to end: the node agent runs them and the rest of the cluster follows their
//! results — readiness moves a pod out of its Service's Endpoints and back, liveness restarts
//! a hung server (`RESTARTS` 1, kubelet's Events), startup holds readiness back, and an exec
//! probe in an OCI container restarts it when its check starts failing.

use std::io::{Read as _, Write as _};
use std::time::Duration;

use serde_json::{Value, json};

use crate::harness::{Busybox, Cluster, containers_unavailable, free_port};

/// A request to a pod's server (pods share the node's network, and the node is this
/// machine): the status line, or `None` if it does not answer in time.
fn http(port: u16, path: &str) -> Option<String> {
    let mut s = std::net::TcpStream::connect(("127.0.0.1", port)).ok()?;
    s.set_read_timeout(Some(Duration::from_secs(2))).ok()?;
    write!(s, "GET {path} HTTP/1.0\r\n\r\n").ok()?;
    let mut out = String::new();
    s.read_to_string(&mut out).ok()?;
    out.lines().next().map(String::from)
}

fn pod_json(c: &Cluster, name: &str) -> Value {
    serde_json::from_str(&c.k(&["get", "pod", name, "-o", "json"])).unwrap_or(Value::Null)
}

fn container_status(c: &Cluster, name: &str) -> Value {
    pod_json(c, name)["status"]["containerStatuses"][0].clone()
}

fn condition(pod: &Value, ty: &str) -> Option<String> {
    pod["status"]["conditions"]
        .as_array()?
        .iter()
        .find(|c| c["type"] == ty)
        .and_then(|c| c["status"].as_str().map(String::from))
}

/// (ready pod names, not-ready pod names) of a Service's Endpoints.
fn endpoints(c: &Cluster, name: &str) -> (Vec<String>, Vec<String>) {
    let v: Value = serde_json::from_str(&c.k(&["get", "endpoints", name, "-o", "json"]))
        .unwrap_or(Value::Null);
    let names = |key: &str| -> Vec<String> {
        v["subsets"]
            .as_array()
            .into_iter()
            .flatten()
            .flat_map(|s| s[key].as_array().cloned().unwrap_or_default())
            .filter_map(|a| a["targetRef"]["name"].as_str().map(String::from))
            .collect()
    };
    (names("addresses"), names("notReadyAddresses"))
}

fn events_of(c: &Cluster, pod: &str) -> Vec<(String, String)> {
    let v: Value = serde_json::from_str(&c.k(&[
        "get",
        "events",
        "--field-selector",
        &format!("involvedObject.name={pod}"),
        "-o",
        "json",
    ]))
    .unwrap_or(Value::Null);
    v["items"]
        .as_array()
        .into_iter()
        .flatten()
        .map(|e| {
            (
                e["reason"].as_str().unwrap_or_default().to_string(),
                e["message"].as_str().unwrap_or_default().to_string(),
            )
        })
        .collect()
}

fn apply(c: &Cluster, obj: &Value) {
    let r = c.kubectl_stdin(&["apply", "-f", "-"], Some(&obj.to_string()));
    assert!(r.ok, "{}", r.stderr);
}

fn hello(name: &str, port: u16, probes: Value) -> Value {
    let mut container = json!({"name": "hello", "image": "kedge.dev/samples/hello-wasm:v1",
        "env": [{"name": "HELLO_LISTEN", "value": port.to_string()}],
        "ports": [{"name": "http", "containerPort": port}]});
    for (k, v) in probes.as_object().unwrap() {
        container[k] = v.clone();
    }
    json!({"apiVersion": "v1", "kind": "Pod",
        "metadata": {"name": name, "labels": {"app": name}},
        "spec": {"containers": [container]}})
}

#[test]
fn probes_drive_readiness_endpoints_and_restarts_of_wasm_servers() {
    let mut c = Cluster::start();
    let token = c.token.clone();
    c.start_agent("probe-node", &token);

    // Readiness: out of the Service's Endpoints while /healthz fails, back in after.
    let port = free_port();
    apply(
        &c,
        &hello(
            "ready",
            port,
            json!({"readinessProbe": {"httpGet": {"path": "/healthz", "port": "http"},
                "periodSeconds": 1, "failureThreshold": 1}}),
        ),
    );
    apply(
        &c,
        &json!({"apiVersion": "v1", "kind": "Service", "metadata": {"name": "ready"},
            "spec": {"selector": {"app": "ready"}, "ports": [{"port": 80, "targetPort": "http"}]}}),
    );
    c.wait("the ready pod in the Endpoints", || {
        (endpoints(&c, "ready").0 == ["ready"]).then_some(())
    });
    assert_eq!(http(port, "/ready/off").as_deref(), Some("HTTP/1.0 200 OK"));
    c.wait("the pod unready and out of the Endpoints", || {
        let pod = pod_json(&c, "ready");
        (condition(&pod, "Ready").as_deref() == Some("False")
            && condition(&pod, "ContainersReady").as_deref() == Some("False")
            && endpoints(&c, "ready") == (vec![], vec!["ready".to_string()]))
            .then_some(())
    });
    let status = container_status(&c, "ready");
    assert_eq!(status["ready"], false, "{status}");
    assert_eq!(status["started"], true, "{status}");
    assert!(
        status["state"]["running"].is_object(),
        "still running: {status}"
    );
    assert!(
        events_of(&c, "ready").iter().any(|(r, m)| r == "Unhealthy"
            && m.starts_with("Readiness probe failed: HTTP probe failed with statuscode: 503")),
        "{:?}",
        events_of(&c, "ready")
    );
    assert_eq!(http(port, "/ready/on").as_deref(), Some("HTTP/1.0 200 OK"));
    c.wait("the pod back in the Endpoints", || {
        (endpoints(&c, "ready") == (vec!["ready".to_string()], vec![])).then_some(())
    });
    assert_eq!(container_status(&c, "ready")["restartCount"], 0);

    // Liveness: a server that stops answering is killed and started again.
    let port = free_port();
    apply(
        &c,
        &hello(
            "alive",
            port,
            json!({"livenessProbe": {"httpGet": {"path": "/", "port": port},
                "periodSeconds": 1, "timeoutSeconds": 1, "failureThreshold": 2}}),
        ),
    );
    c.wait("the alive pod answering", || {
        let s = container_status(&c, "alive");
        (s["ready"] == true && http(port, "/").is_some()).then_some(())
    });
    assert_eq!(http(port, "/hang"), None, "a hung server does not answer");
    c.wait("the hung server restarted", || {
        let s = container_status(&c, "alive");
        (s["restartCount"] == 1 && s["ready"] == true && http(port, "/").is_some()).then_some(s)
    });
    let events = events_of(&c, "alive");
    let unhealthy = events
        .iter()
        .position(|(r, m)| r == "Unhealthy" && m.starts_with("Liveness probe failed: "));
    let killing = events.iter().position(|(r, m)| {
        r == "Killing" && m == "Container hello failed liveness probe, will be restarted"
    });
    assert!(
        unhealthy.is_some() && killing.is_some(),
        "Unhealthy then Killing: {events:?}"
    );
    let s = container_status(&c, "alive");
    assert_eq!(s["lastState"]["terminated"]["exitCode"], 137, "{s}");
    let table = c.k(&["get", "pod", "alive"]);
    let row = table.lines().nth(1).unwrap_or_default().to_string();
    assert_eq!(
        row.split_whitespace().nth(3),
        Some("1"),
        "RESTARTS 1: {table}"
    );

    // Startup holds readiness back until it passes; its exec probe runs the Wasm program
    // again (`hello --cat` exits 1 until the file exists).
    let dir = c.dir.path().join("startup");
    std::fs::create_dir_all(&dir).unwrap();
    let port = free_port();
    let mut pod = hello(
        "slow",
        port,
        json!({"startupProbe": {"exec": {"command": ["hello", "--cat", "/probe/started"]},
                "periodSeconds": 1, "failureThreshold": 600},
            "readinessProbe": {"httpGet": {"path": "/healthz", "port": port},
                "periodSeconds": 1}}),
    );
    pod["spec"]["containers"][0]["volumeMounts"] = json!([{"name": "p", "mountPath": "/probe"}]);
    pod["spec"]["volumes"] =
        json!([{"name": "p", "hostPath": {"path": dir.display().to_string()}}]);
    apply(&c, &pod);
    c.wait("the slow pod serving", || {
        http(port, "/healthz")
            .is_some_and(|l| l.contains("200"))
            .then_some(())
    });
    // Serving, and its readiness check would pass, but it has not started.
    std::thread::sleep(Duration::from_secs(3));
    let s = container_status(&c, "slow");
    assert_eq!(
        (&s["started"], &s["ready"]),
        (&json!(false), &json!(false)),
        "{s}"
    );
    assert_eq!(
        condition(&pod_json(&c, "slow"), "Ready").as_deref(),
        Some("False")
    );
    std::fs::write(dir.join("started"), "yes").unwrap();
    c.wait("the slow pod started and ready", || {
        let s = container_status(&c, "slow");
        (s["started"] == true && s["ready"] == true).then_some(())
    });
    assert_eq!(container_status(&c, "slow")["restartCount"], 0);
}

/// The documentation's liveness example (an exec probe that `cat`s a file the container
/// removes after a while), on a real OCI container.
#[test]
fn an_exec_liveness_probe_restarts_an_oci_container() {
    if let Some(why) = containers_unavailable() {
        eprintln!("probes (OCI): SKIPPING: {why}");
        return;
    }
    let mut c = Cluster::start();
    let b = Busybox::start(c.dir.path());
    let token = c.token.clone();
    let registries = b.registries_yaml.display().to_string();
    c.start_agent_with("probe-oci", &token, &["--registries-config", &registries]);
    apply(
        &c,
        &json!({"apiVersion": "v1", "kind": "Pod", "metadata": {"name": "liveness-exec"},
            "spec": {"terminationGracePeriodSeconds": 30, "containers": [{"name": "liveness",
                "image": b.image,
                "args": ["sh", "-c", "touch /tmp/healthy; sleep 4; rm -f /tmp/healthy; sleep 600"],
                "livenessProbe": {"exec": {"command": ["cat", "/tmp/healthy"]},
                    "periodSeconds": 1, "failureThreshold": 1,
                    // The probe's own grace period replaces the pod's 30 s: `sh` ignores TERM,
                    // so the kill comes after 1 s.
                    "terminationGracePeriodSeconds": 1}}]}}),
    );
    let s = c.wait(
        "the container killed by its liveness probe and restarted",
        || {
            let s = container_status(&c, "liveness-exec");
            (s["restartCount"].as_u64() >= Some(1)).then_some(s)
        },
    );
    let last = &s["lastState"]["terminated"];
    assert!(last.is_object(), "{s}");
    let events = events_of(&c, "liveness-exec");
    assert!(
        events.iter().any(|(r, m)| r == "Unhealthy"
            && m.starts_with("Liveness probe failed: ")
            && m.contains("/tmp/healthy")),
        "{events:?}"
    );
    assert!(
        events.iter().any(|(r, m)| r == "Killing"
            && m == "Container liveness failed liveness probe, will be restarted"),
        "{events:?}"
    );
    // Killed within the probe's grace period, not the pod's 30 s.
    let started =
        chrono::DateTime::parse_from_rfc3339(last["startedAt"].as_str().unwrap()).unwrap();
    let finished =
        chrono::DateTime::parse_from_rfc3339(last["finishedAt"].as_str().unwrap()).unwrap();
    let ran = (finished - started).num_seconds();
    assert!(ran < 15, "ran {ran} s: {s}");
}
