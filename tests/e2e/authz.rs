//! Node identities are restricted (Kubernetes' Node authorizer + NodeRestriction): with its
//! own client certificate, a node reads only the pods bound to it and the secrets those use.

use std::path::Path;

use crate::harness::Cluster;

/// A kubeconfig for the node's own certificate (what the agent authenticates with).
fn node_kubeconfig(c: &Cluster, node: &str) -> std::path::PathBuf {
    let tunnel = c.dir.path().join(node).join("tunnel");
    let (cert, key, ca) = (
        tunnel.join("node.crt"),
        tunnel.join("node.key"),
        tunnel.join("ca.crt"),
    );
    for f in [&cert, &key, &ca] {
        assert!(f.exists(), "{} exists", f.display());
    }
    let path = c.dir.path().join(format!("{node}.kubeconfig"));
    let p = |f: &Path| f.display().to_string();
    std::fs::write(
        &path,
        format!(
            "apiVersion: v1\nkind: Config\nclusters:\n- name: kedge\n  cluster:\n    server: https://{}:{}\n    certificate-authority: {}\n\
             users:\n- name: {node}\n  user:\n    client-certificate: {}\n    client-key: {}\n\
             contexts:\n- name: {node}\n  context: {{cluster: kedge, user: {node}}}\ncurrent-context: {node}\n",
            c.host,
            c.port,
            p(&ca),
            p(&cert),
            p(&key)
        ),
    )
    .unwrap();
    path
}

fn pod(name: &str, node: &str, secret: &str) -> String {
    format!(
        r#"apiVersion: v1
kind: Pod
metadata: {{name: {name}}}
spec:
  nodeName: {node}
  imagePullSecrets: [{{name: {secret}}}]
  containers:
  - {{name: hello, image: "kedge.dev/samples/hello-wasm:v1"}}
"#
    )
}

#[test]
fn a_node_certificate_reads_only_its_own_pods_and_their_secrets() {
    let mut c = Cluster::start();
    let token = c.token.clone();
    c.start_agent("authz-a", &token);
    c.start_agent("authz-b", &token);
    c.wait("both nodes registered", || {
        let out = c.kubectl(&["get", "node", "authz-a", "authz-b"]);
        out.ok.then_some(())
    });
    for (s, node) in [("pull-a", "authz-a"), ("pull-b", "authz-b")] {
        let made = c.kubectl(&[
            "create",
            "secret",
            "docker-registry",
            s,
            "--docker-server=registry.invalid",
            "--docker-username=u",
            "--docker-password=p",
        ]);
        assert!(made.ok, "{}", made.stderr);
        let p = pod(&format!("on-{node}"), node, s);
        let made = c.kubectl_stdin(&["apply", "-f", "-"], Some(&p));
        assert!(made.ok, "{}", made.stderr);
    }
    let kc = node_kubeconfig(&c, "authz-a");
    let kc = kc.to_str().unwrap();
    let as_node = |args: &[&str]| {
        let mut all = vec!["--kubeconfig", kc];
        all.extend_from_slice(args);
        c.kubectl(&all)
    };
    let allowed = |args: &[&str]| {
        let out = as_node(args);
        assert!(
            out.ok,
            "as node authz-a, {args:?} should work: {}",
            out.stderr
        );
        out.stdout
    };
    let forbidden = |args: &[&str]| {
        let out = as_node(args);
        assert!(
            !out.ok,
            "as node authz-a, {args:?} should be refused: {}",
            out.stdout
        );
        assert!(
            out.stderr.contains("Forbidden") || out.stderr.contains("forbidden"),
            "{args:?}: {}",
            out.stderr
        );
        assert!(out.stderr.contains("system:node:authz-a"), "{}", out.stderr);
    };

    let who = allowed(&[
        "auth",
        "whoami",
        "-o",
        "jsonpath={.status.userInfo.username}",
    ]);
    assert_eq!(who, "system:node:authz-a");
    allowed(&["get", "pod", "on-authz-a"]);
    allowed(&["get", "pods", "--field-selector", "spec.nodeName=authz-a"]);
    allowed(&["get", "secret", "pull-a"]);
    allowed(&["get", "nodes"]);
    forbidden(&["get", "pod", "on-authz-b"]);
    forbidden(&["get", "pods"]);
    forbidden(&[
        "get",
        "pods",
        "-A",
        "--field-selector",
        "spec.nodeName=authz-b",
    ]);
    forbidden(&["get", "secret", "pull-b"]);
    forbidden(&["get", "secrets"]);
    forbidden(&["get", "secrets", "-n", "kube-system"]);
    forbidden(&["delete", "pod", "on-authz-b", "--wait=false"]);
    forbidden(&["label", "node", "authz-b", "x=y"]);
    forbidden(&[
        "create",
        "deployment",
        "d",
        "--image=kedge.dev/samples/hello-wasm:v1",
    ]);
    // Nothing a refused request asked for happened.
    assert!(c.kubectl(&["get", "pod", "on-authz-b"]).ok);
    assert!(
        c.kubectl(&["get", "deployment", "d"])
            .stderr
            .contains("NotFound")
    );
}
