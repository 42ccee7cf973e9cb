//! More of the pod contract, on Wasm pods: the downward API (env `fieldRef` on labels,
//! `resourceFieldRef`, `$(VAR)` in args, a `downwardAPI` volume kept up to date as labels
//! change), readiness gates (Ready waits for a condition another controller sets), and
//! `activeDeadlineSeconds` (the pod fails with `DeadlineExceeded`).

use serde_json::{Value, json};

use crate::harness::Cluster;

fn pod_json(c: &Cluster, name: &str) -> Value {
    serde_json::from_str(&c.k(&["get", "pod", name, "-o", "json"])).unwrap_or(Value::Null)
}

fn condition(pod: &Value, ty: &str) -> (String, String) {
    let c = pod["status"]["conditions"]
        .as_array()
        .into_iter()
        .flatten()
        .find(|c| c["type"] == ty)
        .cloned()
        .unwrap_or(Value::Null);
    (
        c["status"].as_str().unwrap_or_default().to_string(),
        c["reason"].as_str().unwrap_or_default().to_string(),
    )
}

fn apply(c: &Cluster, obj: &Value) {
    let r = c.kubectl_stdin(&["apply", "-f", "-"], Some(&obj.to_string()));
    assert!(r.ok, "{}", r.stderr);
}

#[test]
fn downward_api_readiness_gates_and_active_deadlines() {
    let mut c = Cluster::start();
    let token = c.token.clone();
    c.start_agent_with("contract-node", &token, &["--object-refresh-seconds", "1"]);

    // The downward API, in env (with `$(VAR)` in args) and in a volume.
    apply(
        &c,
        &json!({"apiVersion": "v1", "kind": "Pod",
            "metadata": {"name": "info", "labels": {"zone": "us-east", "app": "info"},
                "annotations": {"build": "two"}},
            "spec": {"containers": [{"name": "hello", "image": "kedge.dev/samples/hello-wasm:v1",
                "args": ["$(ZONE)", "$(CPU_MILLIS)", "$$(ZONE)"],
                "resources": {"requests": {"cpu": "250m"}, "limits": {"memory": "64Mi"}},
                "env": [
                    {"name": "ZONE", "valueFrom": {"fieldRef": {"fieldPath": "metadata.labels['zone']"}}},
                    {"name": "CPU_MILLIS", "valueFrom": {"resourceFieldRef": {
                        "resource": "requests.cpu", "divisor": "1m"}}}],
                "volumeMounts": [{"name": "podinfo", "mountPath": "/etc/podinfo"}]}],
                "volumes": [{"name": "podinfo", "downwardAPI": {"items": [
                    {"path": "labels", "fieldRef": {"fieldPath": "metadata.labels"}},
                    {"path": "annotations", "fieldRef": {"fieldPath": "metadata.annotations"}},
                    {"path": "mem_limit", "resourceFieldRef": {"containerName": "hello",
                        "resource": "limits.memory", "divisor": "1Mi"}}]}}]}}),
    );
    let logs = c.wait("the greeting with expanded args", || {
        let l = c.kubectl(&["logs", "info"]);
        (l.ok && l.stdout.contains("args=")).then_some(l.stdout)
    });
    assert!(
        logs.contains("hello from info in default args=us-east 250 $(ZONE)"),
        "{logs}"
    );
    let cat = |file: &str| {
        let r = c.kubectl(&[
            "exec",
            "info",
            "--",
            "hello",
            "--cat",
            &format!("/etc/podinfo/{file}"),
        ]);
        r.ok.then_some(r.stdout)
    };
    assert_eq!(
        cat("labels").as_deref(),
        Some("app=\"info\"\nzone=\"us-east\"")
    );
    // (kubectl apply adds its last-applied-configuration annotation after ours.)
    let annotations = cat("annotations").unwrap_or_default();
    assert!(
        annotations.starts_with("build=\"two\"\nkubectl.kubernetes.io/last-applied-configuration="),
        "{annotations}"
    );
    assert_eq!(cat("mem_limit").as_deref(), Some("64"));
    c.k(&["label", "pod", "info", "zone=eu-west", "--overwrite"]);
    c.wait("the labels file following the new label", || {
        (cat("labels").as_deref() == Some("app=\"info\"\nzone=\"eu-west\"")).then_some(())
    });

    // A new image for a running pod's container: it restarts with it.
    let r = c.kubectl(&[
        "set",
        "image",
        "pod/info",
        "hello=kedge.dev/samples/hello-wasm:v2",
    ]);
    assert!(r.ok, "{}", r.stderr);
    c.wait("the container restarted with the new image", || {
        let s = &pod_json(&c, "info")["status"]["containerStatuses"][0];
        (s["image"] == "kedge.dev/samples/hello-wasm:v2"
            && s["restartCount"] == 1
            && s["state"]["running"].is_object())
        .then_some(())
    });
    let events = c.k(&[
        "get",
        "events",
        "--field-selector",
        "involvedObject.name=info",
    ]);
    assert!(
        events.contains("Container hello definition changed, will be restarted"),
        "{events}"
    );

    // FallbackToLogsOnError: a failed container's message is the end of its log.
    apply(
        &c,
        &json!({"apiVersion": "v1", "kind": "Pod", "metadata": {"name": "fallback"},
            "spec": {"restartPolicy": "Never", "containers": [{"name": "hello",
                "image": "kedge.dev/samples/hello-wasm:v1",
                "terminationMessagePolicy": "FallbackToLogsOnError",
                "env": [{"name": "HELLO_EXIT_AFTER_SECS", "value": "0"},
                    {"name": "HELLO_EXIT_CODE", "value": "4"}]}]}}),
    );
    c.wait("the log's tail as the termination message", || {
        let t = &pod_json(&c, "fallback")["status"]["containerStatuses"][0]["state"]["terminated"];
        (t["exitCode"] == 4
            && t["message"]
                .as_str()
                .is_some_and(|m| m.contains("hello from fallback in default")))
        .then_some(())
    });

    // A readiness gate: the containers are ready, the pod is not until its condition is True.
    apply(
        &c,
        &json!({"apiVersion": "v1", "kind": "Pod", "metadata": {"name": "gated"},
            "spec": {"readinessGates": [{"conditionType": "example.com/load-balancer"}],
                "containers": [{"name": "hello", "image": "kedge.dev/samples/hello-wasm:v1"}]}}),
    );
    c.wait("containers ready, the pod held back by its gate", || {
        let p = pod_json(&c, "gated");
        (condition(&p, "ContainersReady").0 == "True"
            && condition(&p, "Ready") == ("False".into(), "ReadinessGatesNotReady".into()))
            .then_some(())
    });
    let r = c.kubectl(&[
        "patch",
        "pod",
        "gated",
        "--subresource=status",
        "-p",
        r#"{"status":{"conditions":[{"type":"example.com/load-balancer","status":"True"}]}}"#,
    ]);
    assert!(r.ok, "{}", r.stderr);
    c.wait("the pod Ready once its gate is True", || {
        let p = pod_json(&c, "gated");
        (condition(&p, "Ready").0 == "True"
            && condition(&p, "example.com/load-balancer").0 == "True")
            .then_some(())
    });

    // An active deadline: the pod fails when it runs out.
    apply(
        &c,
        &json!({"apiVersion": "v1", "kind": "Pod", "metadata": {"name": "deadline"},
            "spec": {"activeDeadlineSeconds": 3,
                "containers": [{"name": "hello", "image": "kedge.dev/samples/hello-wasm:v1"}]}}),
    );
    c.wait("the pod Failed with DeadlineExceeded", || {
        let p = pod_json(&c, "deadline");
        (p["status"]["phase"] == "Failed" && p["status"]["reason"] == "DeadlineExceeded")
            .then_some(())
    });
    let events = c.k(&[
        "get",
        "events",
        "--field-selector",
        "involvedObject.name=deadline",
    ]);
    assert!(
        events.contains("DeadlineExceeded")
            && events.contains("Pod was active on the node longer than the specified deadline"),
        "{events}"
    );
    let row = c.k(&["get", "pod", "deadline", "--no-headers"]);
    assert!(row.contains("DeadlineExceeded"), "{row}");
}

/// Node-pressure eviction: with a memory threshold the node can never meet, the agent evicts
/// one pod per round, the one furthest over its request first (a BestEffort pod before a
/// Guaranteed one using less than it asked for), with kubelet's status, condition and Event.
#[test]
fn node_pressure_evicts_the_pod_most_over_its_request_first() {
    let mut c = Cluster::start();
    let token = c.token.clone();
    c.start_agent_with(
        "pressed",
        &token,
        &["--eviction-hard", "memory.available<1000Ti"],
    );
    let hello = |name: &str, resources: Value| {
        json!({"apiVersion": "v1", "kind": "Pod", "metadata": {"name": name},
            "spec": {"containers": [{"name": "hello",
                "image": "kedge.dev/samples/hello-wasm:v1", "resources": resources}]}})
    };
    // The BestEffort pod first: whichever of the two the first round sees, it goes first.
    apply(&c, &hello("best-effort", json!({})));
    apply(
        &c,
        &hello(
            "guaranteed",
            json!({"limits": {"cpu": "100m", "memory": "64Mi"}}),
        ),
    );
    let p = c.wait("the BestEffort pod evicted", || {
        let p = pod_json(&c, "best-effort");
        (p["status"]["reason"] == "Evicted").then_some(p)
    });
    assert_eq!(p["status"]["phase"], "Failed");
    let message = p["status"]["message"].as_str().unwrap_or_default();
    assert!(
        message.starts_with(
            "The node was low on resource: memory. Threshold quantity: 1073741824000Ki"
        ) && message.contains("Container hello was using"),
        "{message}"
    );
    assert_eq!(
        condition(&p, "DisruptionTarget"),
        ("True".into(), "TerminationByKubelet".into())
    );
    assert_ne!(
        pod_json(&c, "guaranteed")["status"]["reason"],
        "Evicted",
        "the Guaranteed pod, under its request, goes later"
    );
    let events = c.k(&[
        "get",
        "events",
        "--field-selector",
        "involvedObject.name=best-effort",
    ]);
    assert!(events.contains("Evicted"), "{events}");
}
