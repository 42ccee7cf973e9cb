//! In-cluster API access: a pod gets a ServiceAccount token bound to it, the cluster CA and
//! its namespace at /var/run/secrets/kubernetes.io/serviceaccount, and the API server's
//! address in KUBERNETES_SERVICE_HOST/PORT — so the official Python client's
//! `load_incluster_config()` works from inside a container, under RBAC. Wasm containers see
//! the same files (a preopened directory); `automountServiceAccountToken: false` leaves them
//! out.

use std::process::Command;

use serde_json::{Value, json};

use crate::harness::{Busybox, Cluster, containers_unavailable};

const SCRIPT: &str = r#"
from kubernetes import client, config
config.load_incluster_config()
api = client.CoreV1Api()
names = sorted(p.metadata.name for p in api.list_namespaced_pod("default").items)
print("pods:", " ".join(names))
try:
    api.list_namespaced_secret("default")
    print("secrets: allowed")
except client.ApiException as e:
    print("secrets:", e.status)
"#;

fn apply(c: &Cluster, obj: &Value) {
    let r = c.kubectl_stdin(&["apply", "-f", "-"], Some(&obj.to_string()));
    assert!(r.ok, "{}", r.stderr);
}

#[test]
fn pods_reach_the_api_with_their_service_account() {
    if let Some(why) = containers_unavailable() {
        eprintln!("incluster: SKIPPING: {why}");
        return;
    }
    // The container runs this machine's Python (and its `kubernetes` package) from host
    // directories mounted into a busybox image.
    let py = Command::new("python3")
        .args([
            "-c",
            "import sys, os, kubernetes; print(os.path.realpath(sys.executable)); print(sys.prefix)",
        ])
        .output()
        .expect("python3");
    assert!(
        py.status.success(),
        "the Python `kubernetes` client is needed (make setup installs it): {}",
        String::from_utf8_lossy(&py.stderr)
    );
    let out = String::from_utf8_lossy(&py.stdout).to_string();
    let mut lines = out.lines();
    let (python, prefix) = (
        lines.next().unwrap().to_string(),
        lines.next().unwrap().to_string(),
    );

    let mut c = Cluster::start();
    let b = Busybox::start(c.dir.path());
    let token = c.token.clone();
    let registries = b.registries_yaml.display().to_string();
    c.start_agent_with("incluster", &token, &["--registries-config", &registries]);
    apply(
        &c,
        &json!({"apiVersion": "rbac.authorization.k8s.io/v1", "kind": "Role",
            "metadata": {"name": "pod-reader"},
            "rules": [{"apiGroups": [""], "resources": ["pods"], "verbs": ["get", "list"]}]}),
    );
    apply(
        &c,
        &json!({"apiVersion": "rbac.authorization.k8s.io/v1", "kind": "RoleBinding",
            "metadata": {"name": "read-pods"},
            "subjects": [{"kind": "ServiceAccount", "name": "default", "namespace": "default"}],
            "roleRef": {"kind": "Role", "name": "pod-reader", "apiGroup": "rbac.authorization.k8s.io"}}),
    );
    let mut mounts = vec![];
    let mut volumes = vec![];
    for (i, path) in ["/usr", "/lib", "/lib64", prefix.as_str()]
        .iter()
        .enumerate()
    {
        if std::path::Path::new(path).exists() {
            volumes.push(json!({"name": format!("host{i}"), "hostPath": {"path": path}}));
            mounts.push(json!({"name": format!("host{i}"), "mountPath": path, "readOnly": true}));
        }
    }
    apply(
        &c,
        &json!({"apiVersion": "v1", "kind": "Pod", "metadata": {"name": "client"},
            "spec": {"restartPolicy": "Never", "volumes": volumes,
                "containers": [{"name": "python", "image": b.image,
                    "command": [python, "-c", SCRIPT], "volumeMounts": mounts}]}}),
    );
    let phase = c.wait("the in-cluster client finished", || {
        let p: Value = serde_json::from_str(&c.k(&["get", "pod", "client", "-o", "json"])).ok()?;
        let phase = p["status"]["phase"].as_str()?.to_string();
        matches!(phase.as_str(), "Succeeded" | "Failed").then_some(phase)
    });
    let logs = c.k(&["logs", "client"]);
    assert_eq!(phase, "Succeeded", "{logs}");
    assert!(logs.contains("pods: client"), "{logs}");
    assert!(logs.contains("secrets: 403"), "RBAC applies: {logs}");

    // A Wasm container sees the same files; a pod that opts out gets none.
    let files = "/var/run/secrets/kubernetes.io/serviceaccount";
    for (name, automount) in [("wasm", true), ("opted-out", false)] {
        apply(
            &c,
            &json!({"apiVersion": "v1", "kind": "Pod", "metadata": {"name": name},
                "spec": {"automountServiceAccountToken": automount,
                    "containers": [{"name": "hello", "image": "kedge.dev/samples/hello-wasm:v1"}]}}),
        );
    }
    let cat = |pod: &str, file: &str| {
        c.kubectl(&[
            "exec",
            pod,
            "--",
            "hello",
            "--cat",
            &format!("{files}/{file}"),
        ])
    };
    c.wait("the Wasm pod's namespace file", || {
        let r = cat("wasm", "namespace");
        (r.ok && r.stdout == "default").then_some(())
    });
    let token = cat("wasm", "token").stdout;
    assert_eq!(token.split('.').count(), 3, "a JWT: {token}");
    c.wait("the opted-out pod running", || {
        c.kubectl(&["exec", "opted-out", "--", "hello", "--once"])
            .ok
            .then_some(())
    });
    assert!(!cat("opted-out", "namespace").ok);
    // The token is bound to its pod: it stops working when the pod goes.
    let server = c.k(&[
        "config",
        "view",
        "-o",
        "jsonpath={.clusters[0].cluster.server}",
    ]);
    let whoami = |t: &str| {
        Command::new("kubectl")
            .args(["--kubeconfig", "/dev/null", "--server", server.trim()])
            .args(["--insecure-skip-tls-verify", "--token", t, "auth", "whoami"])
            .output()
            .unwrap()
    };
    let out = whoami(&token);
    assert!(
        String::from_utf8_lossy(&out.stdout).contains("system:serviceaccount:default:default"),
        "{}{}",
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr)
    );
    c.k(&["delete", "pod", "wasm", "--wait=true", "--timeout=60s"]);
    assert!(
        !whoami(&token).status.success(),
        "the token died with its pod"
    );
}
