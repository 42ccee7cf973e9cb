//! `GET /metrics` with the real kubectl: the Prometheus exposition of the server, counting
//! kubectl's own requests under kube-apiserver's names, and guarded by RBAC as in Kubernetes
//! (a service account reads it once bound to `system:monitoring`); and the agent's
//! `/metrics` through the API server proxy.

use crate::harness::Cluster;
use crate::rbac::{as_user, token_kubeconfig};

/// The value of the first sample whose series starts with `prefix` and holds every label of
/// `labels`.
fn sample(text: &str, name: &str, labels: &[&str]) -> Option<f64> {
    text.lines()
        .filter(|l| l.starts_with(&format!("{name}{{")) || l.starts_with(&format!("{name} ")))
        .find(|l| labels.iter().all(|want| l.contains(want)))
        .and_then(|l| l.rsplit_once(' ')?.1.parse().ok())
}

#[test]
fn kubectl_reads_metrics_and_rbac_guards_them() {
    let mut c = Cluster::start();
    c.k(&["create", "configmap", "metrics-a", "--from-literal=k=v"]);
    for _ in 0..3 {
        c.k(&["get", "configmaps"]);
    }
    let text = c.k(&["get", "--raw", "/metrics"]);
    assert!(text.ends_with("# EOF\n"), "not a complete exposition");
    let lists = sample(
        &text,
        "apiserver_request_total",
        &[
            r#"verb="LIST""#,
            r#"resource="configmaps""#,
            r#"scope="namespace""#,
            r#"code="200""#,
        ],
    );
    assert!(lists.is_some_and(|n| n >= 3.0), "{lists:?}\n{text}");
    let creates = sample(
        &text,
        "apiserver_request_total",
        &[
            r#"verb="POST""#,
            r#"resource="configmaps""#,
            r#"code="201""#,
        ],
    );
    assert!(creates.is_some_and(|n| n >= 1.0), "{creates:?}");
    // The other parts record into the same registry: the store committed the writes, the
    // built-in plugins reconciled, their informers watch.
    let commits = sample(&text, "kedge_store_commit_duration_seconds_count", &[]);
    assert!(commits.is_some_and(|n| n >= 1.0), "{commits:?}");
    assert!(
        text.contains("kedge_plugin_reconcile_total{plugin=\""),
        "no plugin reconciles:\n{text}"
    );
    assert_eq!(sample(&text, "kedge_tunnel_connections", &[]), Some(0.0));

    // A node's tunnel counts while it is open, with the bytes it carried.
    let token = c.token.clone();
    c.start_agent("metrics-n1", &token);
    c.wait("the node's tunnel in the metrics", || {
        let text = c.k(&["get", "--raw", "/metrics"]);
        let open = sample(&text, "kedge_tunnel_connections", &[]);
        let sent = sample(&text, "kedge_tunnel_sent_bytes_total", &[]);
        (open == Some(1.0) && sent.is_some_and(|b| b > 0.0)).then_some(())
    });

    // The agent's own metrics, through the API server proxy (RBAC: nodes/proxy).
    let pod = "apiVersion: v1\nkind: Pod\nmetadata: {name: metrics-pod}\nspec:\n  nodeName: metrics-n1\n  containers:\n  - {name: hello, image: \"kedge.dev/samples/hello-wasm:v1\"}\n";
    let applied = c.kubectl_stdin(&["apply", "-f", "-"], Some(pod));
    assert!(applied.ok, "{}", applied.stderr);
    c.wait("the agent to count the container start", || {
        let r = c.kubectl(&["get", "--raw", "/api/v1/nodes/metrics-n1/proxy/metrics"]);
        let text = r.stdout;
        let started = sample(
            &text,
            "kubelet_started_containers_total",
            &[r#"container_type="container""#],
        );
        let images = sample(&text, "kedge_agent_image_pulls_total", &[]);
        (started.is_some_and(|n| n >= 1.0) && images.is_some_and(|n| n >= 1.0)).then_some(())
    });

    // A service account sees 403 until bound to kube's `system:monitoring` role.
    c.k(&["create", "serviceaccount", "prometheus"]);
    let token = c.k(&["create", "token", "prometheus", "--duration=20m"]);
    let prom = token_kubeconfig(&c, "prometheus", token.trim());
    let denied = as_user(&c, &prom, &["get", "--raw", "/metrics"]);
    assert!(!denied.ok, "{}", denied.stdout);
    assert!(denied.stderr.contains("Forbidden"), "{}", denied.stderr);
    c.k(&[
        "create",
        "clusterrolebinding",
        "prometheus",
        "--clusterrole=system:monitoring",
        "--serviceaccount=default:prometheus",
    ]);
    c.wait("the binding to take effect", || {
        let out = as_user(&c, &prom, &["get", "--raw", "/metrics"]);
        (out.ok && out.stdout.contains("apiserver_request_total")).then_some(())
    });
}
