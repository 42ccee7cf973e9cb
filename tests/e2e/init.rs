//! Init containers and native sidecars, end to end: init containers run in order to completion
//! before the app containers (`Init:N/M` meanwhile, `Init:Error` and `Init:CrashLoopBackOff`
//! when one fails), a sidecar starts in order and runs beside the app and is stopped after it,
//! and an init container prepares a file the app then reads — an OCI init container for a
//! Wasm app.

use serde_json::{Value, json};

use crate::harness::{Busybox, Cluster, containers_unavailable};

fn pod_json(c: &Cluster, name: &str) -> Value {
    serde_json::from_str(&c.k(&["get", "pod", name, "-o", "json"])).unwrap_or(Value::Null)
}

/// (READY, STATUS) of the pod's `kubectl get pod` row.
fn row(c: &Cluster, name: &str) -> (String, String) {
    let table = c.k(&["get", "pod", name, "--no-headers"]);
    let cols: Vec<&str> = table.split_whitespace().collect();
    (
        cols.get(1).unwrap_or(&"").to_string(),
        cols.get(2).unwrap_or(&"").to_string(),
    )
}

fn apply(c: &Cluster, obj: &Value) {
    let r = c.kubectl_stdin(&["apply", "-f", "-"], Some(&obj.to_string()));
    assert!(r.ok, "{}", r.stderr);
}

fn hello(name: &str, env: Value) -> Value {
    json!({"name": name, "image": "kedge.dev/samples/hello-wasm:v1", "env": env})
}

/// Exits with `code` after `secs` seconds.
fn exits(secs: u32, code: i32) -> Value {
    json!([{"name": "HELLO_EXIT_AFTER_SECS", "value": secs.to_string()},
        {"name": "HELLO_EXIT_CODE", "value": code.to_string()}])
}

#[test]
fn init_containers_run_in_order_before_the_app_beside_a_sidecar() {
    let mut c = Cluster::start();
    let token = c.token.clone();
    c.start_agent("init-node", &token);

    let mut sidecar = hello("side", json!([]));
    sidecar["restartPolicy"] = json!("Always");
    apply(
        &c,
        &json!({"apiVersion": "v1", "kind": "Pod", "metadata": {"name": "ordered"},
            "spec": {"initContainers": [hello("first", exits(3, 0)), sidecar,
                    hello("second", exits(1, 0))],
                "containers": [hello("app", json!([]))]}}),
    );
    // The first init container runs for 3 s: the pod shows it.
    let seen = c.wait("Init:0/3", || {
        let r = row(&c, "ordered");
        (r.1 == "Init:0/3").then_some(r)
    });
    assert_eq!(seen.0, "0/2", "READY counts the app and the sidecar");
    let p = pod_json(&c, "ordered");
    assert_eq!(p["status"]["phase"], "Pending");
    assert_eq!(
        p["status"]["containerStatuses"][0]["state"]["waiting"]["reason"], "PodInitializing",
        "{p}"
    );
    let init = p["status"]["initContainerStatuses"]
        .as_array()
        .cloned()
        .unwrap_or_default();
    assert_eq!(init.len(), 3, "{p}");
    assert!(
        init[1]["state"].get("running").is_none(),
        "the sidecar waits for the first init container: {p}"
    );
    c.wait("the pod Running with the app and the sidecar ready", || {
        (row(&c, "ordered") == ("2/2".to_string(), "Running".to_string())).then_some(())
    });
    let p = pod_json(&c, "ordered");
    let init = &p["status"]["initContainerStatuses"];
    for (i, name) in ["first", "side", "second"].iter().enumerate() {
        assert_eq!(init[i]["name"], *name, "{p}");
    }
    assert_eq!(init[0]["state"]["terminated"]["reason"], "Completed", "{p}");
    assert_eq!(init[0]["ready"], true, "{p}");
    assert!(
        init[1]["state"]["running"].is_object(),
        "the sidecar outlives init: {p}"
    );
    assert_eq!(
        (&init[1]["started"], &init[1]["ready"]),
        (&json!(true), &json!(true))
    );
    assert_eq!(init[2]["state"]["terminated"]["reason"], "Completed", "{p}");
    // The sidecar started before the second init container, which ended before the app.
    let t = |v: &Value| v.as_str().unwrap_or_default().to_string();
    assert!(
        t(&init[1]["state"]["running"]["startedAt"])
            <= t(&init[2]["state"]["terminated"]["startedAt"])
    );
    assert!(
        t(&init[2]["state"]["terminated"]["finishedAt"])
            <= t(&p["status"]["containerStatuses"][0]["state"]["running"]["startedAt"]),
        "{p}"
    );
    let conditions = p["status"]["conditions"]
        .as_array()
        .cloned()
        .unwrap_or_default();
    for ty in [
        "PodReadyToStartContainers",
        "Initialized",
        "ContainersReady",
        "Ready",
    ] {
        assert!(
            conditions
                .iter()
                .any(|c| c["type"] == ty && c["status"] == "True"),
            "{ty}: {p}"
        );
    }

    // A failing init container: Init:Error, then Init:CrashLoopBackOff; the app never starts.
    apply(
        &c,
        &json!({"apiVersion": "v1", "kind": "Pod", "metadata": {"name": "failing"},
            "spec": {"initContainers": [hello("broken", exits(0, 1))],
                "containers": [hello("app", json!([]))]}}),
    );
    c.wait("Init:CrashLoopBackOff", || {
        (row(&c, "failing").1 == "Init:CrashLoopBackOff").then_some(())
    });
    let p = pod_json(&c, "failing");
    assert_eq!(p["status"]["phase"], "Pending");
    assert!(
        p["status"]["containerStatuses"][0]["state"]["running"].is_null(),
        "{p}"
    );
    // With restartPolicy Never a failed init container fails the pod.
    apply(
        &c,
        &json!({"apiVersion": "v1", "kind": "Pod", "metadata": {"name": "failed"},
            "spec": {"restartPolicy": "Never", "initContainers": [hello("broken", exits(0, 3))],
                "containers": [hello("app", json!([]))]}}),
    );
    c.wait("the pod Failed, Init:Error", || {
        let p = pod_json(&c, "failed");
        (p["status"]["phase"] == "Failed" && row(&c, "failed").1 == "Init:Error").then_some(())
    });

    // A Job-like pod with a sidecar: the app completes, the sidecar is stopped after it, and
    // the pod succeeds.
    let mut sidecar = hello("side", json!([]));
    sidecar["restartPolicy"] = json!("Always");
    apply(
        &c,
        &json!({"apiVersion": "v1", "kind": "Pod", "metadata": {"name": "job-like"},
            "spec": {"restartPolicy": "Never", "initContainers": [sidecar],
                "containers": [hello("app", exits(1, 0))]}}),
    );
    c.wait("the pod Succeeded with its sidecar stopped", || {
        let p = pod_json(&c, "job-like");
        (p["status"]["phase"] == "Succeeded"
            && p["status"]["initContainerStatuses"][0]["state"]["terminated"].is_object())
        .then_some(())
    });
}

/// An OCI init container writes a file into an emptyDir, and the Wasm app reads it.
#[test]
fn an_init_container_prepares_a_file_the_app_reads() {
    if let Some(why) = containers_unavailable() {
        eprintln!("init containers (OCI): SKIPPING: {why}");
        return;
    }
    let mut c = Cluster::start();
    let b = Busybox::start(c.dir.path());
    let token = c.token.clone();
    let registries = b.registries_yaml.display().to_string();
    c.start_agent_with("init-oci", &token, &["--registries-config", &registries]);
    apply(
        &c,
        &json!({"apiVersion": "v1", "kind": "Pod", "metadata": {"name": "handoff"},
            "spec": {"restartPolicy": "Never",
                "volumes": [{"name": "work", "emptyDir": {}}],
                "initContainers": [{"name": "prepare", "image": b.image,
                    "args": ["sh", "-c", "echo prepared by init > /work/greeting"],
                    "volumeMounts": [{"name": "work", "mountPath": "/work"}]}],
                "containers": [{"name": "hello", "image": "kedge.dev/samples/hello-wasm:v1",
                    "args": ["--cat", "/work/greeting"],
                    "volumeMounts": [{"name": "work", "mountPath": "/work"}]}]}}),
    );
    c.wait("the app Succeeded", || {
        (pod_json(&c, "handoff")["status"]["phase"] == "Succeeded").then_some(())
    });
    let logs = c.k(&["logs", "handoff", "-c", "hello"]);
    assert_eq!(logs.trim(), "prepared by init");
    let init_logs = c.kubectl(&["logs", "handoff", "-c", "prepare"]);
    assert!(init_logs.ok, "{}", init_logs.stderr);
}
