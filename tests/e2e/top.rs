//! Resource metrics with the real `kubectl top`: a busy and an idle pod, Wasm (the sample
//! with `HELLO_BURN`, spinning) and OCI (busybox `while :; do :; done` against `sleep`), on a
//! node sampling every second; the busy ones show more CPU, `top nodes`, `--containers`, `-A`
//! and `-l` work, the raw objects read as metrics-server's, other verbs are 405 and RBAC's
//! `view` grants reading them.

use std::collections::HashMap;

use serde_json::{Value, json};

use crate::harness::{Busybox, Cluster, containers_unavailable};
use crate::rbac::{as_user, token_kubeconfig};

/// `NAME -> (millicores, MiB)` from `kubectl top pods` output (the rows after the header).
fn top_rows(out: &str) -> HashMap<String, (u64, u64)> {
    out.lines()
        .skip(1)
        .filter_map(|l| {
            let f: Vec<&str> = l.split_whitespace().collect();
            let cpu = f.get(1)?.strip_suffix('m')?.parse().ok()?;
            let mem = f.get(2)?.strip_suffix("Mi")?.parse().ok()?;
            Some((f[0].to_string(), (cpu, mem)))
        })
        .collect()
}

fn pod(name: &str, kind: &str, image: &str, container: Value) -> Value {
    let mut c = container;
    c["name"] = json!("main");
    c["image"] = json!(image);
    json!({"apiVersion": "v1", "kind": "Pod",
        "metadata": {"name": name, "labels": {"app": "top", "runtime": kind}},
        "spec": {"nodeName": "top-n1", "containers": [c]}})
}

#[test]
fn kubectl_top_shows_the_busy_pods_above_the_idle_ones() {
    let mut c = Cluster::start();
    let oci = containers_unavailable();
    if let Some(why) = &oci {
        eprintln!("kubectl top (OCI pods): SKIPPING the OCI half: {why}");
    }
    let busybox = oci.is_none().then(|| Busybox::start(c.dir.path()));
    let token = c.token.clone();
    let mut flags = vec!["--metric-resolution-seconds", "1"];
    let registries = busybox
        .as_ref()
        .map(|b| b.registries_yaml.display().to_string());
    if let Some(r) = &registries {
        flags.extend_from_slice(&["--registries-config", r]);
    }
    c.start_agent_with("top-n1", &token, &flags);

    let wasm = "kedge.dev/samples/hello-wasm:v1";
    let mut pods = vec![
        pod(
            "wasm-busy",
            "wasm",
            wasm,
            json!({"env": [{"name": "HELLO_BURN", "value": "1"}]}),
        ),
        pod("wasm-idle", "wasm", wasm, json!({})),
    ];
    if let Some(b) = &busybox {
        pods.push(pod(
            "oci-busy",
            "oci",
            &b.image,
            json!({"args": ["sh", "-c", "while :; do :; done"]}),
        ));
        pods.push(pod(
            "oci-idle",
            "oci",
            &b.image,
            json!({"args": ["sleep", "3600"]}),
        ));
    }
    let names: Vec<String> = pods
        .iter()
        .map(|p| p["metadata"]["name"].as_str().unwrap().to_string())
        .collect();
    for p in &pods {
        let r = c.kubectl_stdin(&["apply", "-f", "-"], Some(&p.to_string()));
        assert!(r.ok, "{}", r.stderr);
    }

    // Every pod shows up, and each busy one above its idle twin (the first report may come
    // from before a busy guest got going: wait for a settled one).
    let mut last = String::new();
    let rows = c.wait("kubectl top pods to rank the busy pods first", || {
        let r = c.kubectl(&["top", "pods", "-l", "app=top"]);
        last = format!("{}{}", r.stdout, r.stderr);
        let rows = top_rows(&r.stdout);
        let ranked = |kind: &str| match (
            rows.get(&format!("{kind}-busy")),
            rows.get(&format!("{kind}-idle")),
        ) {
            (Some(busy), Some(idle)) => busy.0 >= 100 && busy.0 > idle.0 * 4,
            _ => false,
        };
        let all = names.iter().all(|n| rows.contains_key(n));
        (all && ranked("wasm") && (busybox.is_none() || ranked("oci"))).then_some(rows)
    });
    eprintln!("kubectl top pods:\n{last}");
    // The Wasm guests' memory is their linear memory: a few MiB at most.
    assert!(rows["wasm-idle"].1 < 64, "{rows:?}");

    // The node, with its capacity's percentages.
    let nodes = c.k(&["top", "nodes"]);
    let line = nodes
        .lines()
        .find(|l| l.starts_with("top-n1 "))
        .unwrap_or_else(|| panic!("{nodes}"));
    assert!(line.contains('%') && line.contains("Mi"), "{nodes}");
    assert!(nodes.starts_with("NAME"), "{nodes}");

    // Per container, all namespaces, and a selector.
    let containers = c.k(&["top", "pods", "--containers", "-l", "app=top"]);
    assert!(containers.starts_with("POD"), "{containers}");
    assert!(
        containers.lines().any(|l| {
            let f: Vec<&str> = l.split_whitespace().collect();
            f.len() == 4 && f[0] == "wasm-busy" && f[1] == "main"
        }),
        "{containers}"
    );
    let all = c.k(&["top", "pods", "-A"]);
    assert!(
        all.lines()
            .any(|l| l.starts_with("default") && l.contains("wasm-busy")),
        "{all}"
    );
    let only_wasm = c.k(&["top", "pods", "-l", "runtime=wasm"]);
    assert!(
        only_wasm.contains("wasm-idle") && !only_wasm.contains("oci-"),
        "{only_wasm}"
    );
    let one = c.k(&["top", "pod", "wasm-idle"]);
    assert!(
        one.contains("wasm-idle") && !one.contains("wasm-busy"),
        "{one}"
    );

    // The objects as metrics-server shapes them.
    let raw: Value = serde_json::from_str(&c.k(&[
        "get",
        "--raw",
        "/apis/metrics.k8s.io/v1beta1/namespaces/default/pods/wasm-busy",
    ]))
    .unwrap();
    assert_eq!(raw["kind"], "PodMetrics");
    assert_eq!(raw["metadata"]["labels"]["app"], "top");
    assert!(raw["window"].as_str().unwrap().ends_with('s'), "{raw}");
    let cpu = raw["containers"][0]["usage"]["cpu"].as_str().unwrap();
    assert!(cpu.ends_with('n'), "{raw}");
    if busybox.is_some() {
        // An OCI container's working set comes from its memory cgroup: a shell holds some.
        let oci: Value = serde_json::from_str(&c.k(&[
            "get",
            "--raw",
            "/apis/metrics.k8s.io/v1beta1/namespaces/default/pods/oci-busy",
        ]))
        .unwrap();
        let mem = oci["containers"][0]["usage"]["memory"].as_str().unwrap();
        let ki: u64 = mem.strip_suffix("Ki").unwrap().parse().unwrap();
        assert!(ki > 0, "{oci}");
    }
    // Discovered as metrics-server's kinds.
    let kinds = c.k(&["api-resources", "--api-group=metrics.k8s.io"]);
    assert!(
        kinds.contains("NodeMetrics") && kinds.contains("PodMetrics"),
        "{kinds}"
    );
    let node: Value =
        serde_json::from_str(&c.k(&["get", "--raw", "/apis/metrics.k8s.io/v1beta1/nodes/top-n1"]))
            .unwrap();
    assert_eq!(node["kind"], "NodeMetrics");
    assert!(node["usage"]["memory"].as_str().unwrap().ends_with("Ki"));
    let gone = c.kubectl(&[
        "get",
        "--raw",
        "/apis/metrics.k8s.io/v1beta1/namespaces/default/pods/nope",
    ]);
    assert!(
        !gone.ok && gone.stderr.contains("NotFound"),
        "{}",
        gone.stderr
    );
    // metrics-server serves get and list only.
    let delete = c.kubectl(&[
        "delete",
        "--raw",
        "/apis/metrics.k8s.io/v1beta1/namespaces/default/pods/wasm-busy",
    ]);
    assert!(
        !delete.ok && delete.stderr.contains("MethodNotAllowed"),
        "{}",
        delete.stderr
    );
    // `kubectl get` of the kind works too (a Table).
    let table = c.k(&["get", "podmetrics.metrics.k8s.io", "wasm-busy"]);
    assert!(
        table.contains("CPU") && table.contains("wasm-busy"),
        "{table}"
    );

    // RBAC: nothing without a role; the bootstrap `view` role grants it, as Kubernetes'
    // aggregated roles do.
    c.k(&["create", "serviceaccount", "watcher"]);
    let sa_token = c.k(&["create", "token", "watcher"]);
    let kc = token_kubeconfig(&c, "watcher", sa_token.trim());
    let denied = as_user(&c, &kc, &["top", "pods"]);
    assert!(
        !denied.ok && denied.stderr.contains("forbidden"),
        "{}",
        denied.stderr
    );
    c.k(&[
        "create",
        "rolebinding",
        "watcher-view",
        "--clusterrole=view",
        "--serviceaccount=default:watcher",
    ]);
    c.wait("the view role to grant kubectl top", || {
        let r = as_user(&c, &kc, &["top", "pods"]);
        (r.ok && r.stdout.contains("wasm-idle")).then_some(())
    });

    // A deleted pod's metrics go with it.
    c.k(&["delete", "pod", "wasm-idle", "--wait=false"]);
    c.wait("the deleted pod's metrics to go", || {
        let r = c.kubectl(&[
            "get",
            "--raw",
            "/apis/metrics.k8s.io/v1beta1/namespaces/default/pods/wasm-idle",
        ]);
        (!r.ok).then_some(())
    });
}
