//! Node identities are restricted (Kubernetes' Node authorizer + NodeRestriction): with its
//! own client certificate, a node reads only the pods bound to it and the secrets and config
//! maps those use, writes only its own Node, Lease and pods' status, and reaches no other
//! node's pods through exec, attach, port-forward, logs or proxy. Certificates of another CA,
//! or expired ones, are refused on HTTPS. (The tunnel's refusals of foreign, expired and
//! revoked certificates are host/tunnel's tests and `node_identity`.)

use std::path::Path;
use std::time::Duration;

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

fn pod(name: &str, node: &str, secret: &str, config_map: &str) -> String {
    format!(
        r#"apiVersion: v1
kind: Pod
metadata: {{name: {name}}}
spec:
  nodeName: {node}
  imagePullSecrets: [{{name: {secret}}}]
  volumes:
  - {{name: conf, configMap: {{name: {config_map}, optional: true}}}}
  containers:
  - {{name: hello, image: "kedge.dev/samples/hello-wasm:v1"}}
"#
    )
}

/// A kubeconfig that trusts the cluster's CA and authenticates with `cert`/`key` (PEM).
fn cert_kubeconfig(c: &Cluster, name: &str, cert: &str, key: &str) -> std::path::PathBuf {
    let dir = c.dir.path().join(name);
    std::fs::create_dir_all(&dir).unwrap();
    std::fs::write(dir.join("client.crt"), cert).unwrap();
    std::fs::write(dir.join("client.key"), key).unwrap();
    let ca = c.dir.path().join("authz-a").join("tunnel").join("ca.crt");
    let path = dir.join("kubeconfig");
    std::fs::write(
        &path,
        format!(
            "apiVersion: v1\nkind: Config\nclusters:\n- name: kedge\n  cluster:\n    server: https://{}:{}\n    certificate-authority: {}\n\
             users:\n- name: u\n  user:\n    client-certificate: {}\n    client-key: {}\n\
             contexts:\n- name: u\n  context: {{cluster: kedge, user: u}}\ncurrent-context: u\n",
            c.host,
            c.port,
            ca.display(),
            dir.join("client.crt").display(),
            dir.join("client.key").display()
        ),
    )
    .unwrap();
    path
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
    for (s, cm, node) in [
        ("pull-a", "conf-a", "authz-a"),
        ("pull-b", "conf-b", "authz-b"),
    ] {
        let made = c.kubectl(&["create", "configmap", cm, "--from-literal=k=v"]);
        assert!(made.ok, "{}", made.stderr);
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
        let p = pod(&format!("on-{node}"), node, s, cm);
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

    // The rest of the matrix, as one table: what node authz-a may and may not do to node
    // authz-b, its pods and what they use.
    c.wait("both nodes' Leases", || {
        c.kubectl(&[
            "get",
            "lease",
            "-n",
            "kube-node-lease",
            "authz-a",
            "authz-b",
        ])
        .ok
        .then_some(())
    });
    let empty = c.dir.path().join("empty.json");
    std::fs::write(&empty, "{}").unwrap();
    let empty = empty.to_str().unwrap();
    let pods = "/api/v1/namespaces/default/pods";
    let exec = format!("{pods}/on-authz-b/exec?command=true&stdout=true");
    let attach = format!("{pods}/on-authz-b/attach?stdout=true");
    let forward = format!("{pods}/on-authz-b/portforward?ports=80");
    let pod_proxy = format!("{pods}/on-authz-b/proxy/");
    let matrix: &[(bool, &[&str])] = &[
        (true, &["get", "configmap", "conf-a"]),
        (false, &["get", "configmap", "conf-b"]),
        (false, &["get", "configmaps"]),
        (
            false,
            &["get", "configmap", "-n", "kube-system", "kube-root-ca.crt"],
        ),
        (true, &["get", "lease", "-n", "kube-node-lease", "authz-a"]),
        (false, &["get", "lease", "-n", "kube-node-lease", "authz-b"]),
        (false, &["get", "leases", "-n", "kube-node-lease"]),
        (
            false,
            &[
                "annotate",
                "lease",
                "-n",
                "kube-node-lease",
                "authz-b",
                "x=y",
            ],
        ),
        (true, &["get", "node", "authz-b"]),
        (false, &["delete", "node", "authz-b", "--wait=false"]),
        (false, &["annotate", "node", "authz-b", "x=y"]),
        (false, &["logs", "on-authz-b"]),
        (false, &["exec", "on-authz-b", "--", "true"]),
        (false, &["create", "--raw", &exec, "-f", empty]),
        (false, &["create", "--raw", &attach, "-f", empty]),
        (false, &["create", "--raw", &forward, "-f", empty]),
        (false, &["get", "--raw", &pod_proxy]),
        (
            false,
            &["get", "--raw", "/api/v1/nodes/authz-b/proxy/healthz"],
        ),
        (false, &["get", "events"]),
        (false, &["get", "events", "-A"]),
        (false, &["annotate", "pod", "on-authz-a", "x=y"]),
    ];
    for (ok, args) in matrix {
        if *ok {
            allowed(args);
        } else {
            forbidden(args);
        }
    }

    // Certificates the cluster did not issue, or that expired, get nowhere on HTTPS.
    let foreign_dir = c.dir.path().join("foreign-ca");
    let foreign = kedge_tunnel::pki::ClusterPki::load_or_create(&foreign_dir, &[]).unwrap();
    let (cert, key) = foreign
        .issue_client(
            "system:node:authz-a",
            &["system:nodes"],
            Duration::from_secs(3600),
        )
        .unwrap();
    let ours_copy = c.dir.path().join("ca-copy");
    copy_dir(&c.dir.path().join("server").join("pki"), &ours_copy);
    let ours = kedge_tunnel::pki::ClusterPki::load_or_create(&ours_copy, &[]).unwrap();
    let (old_cert, old_key) = ours
        .issue_client(
            "system:node:authz-a",
            &["system:nodes"],
            Duration::from_secs(1),
        )
        .unwrap();
    let (good_cert, good_key) = ours
        .issue_client(
            "system:node:authz-a",
            &["system:nodes"],
            Duration::from_secs(3600),
        )
        .unwrap();
    std::thread::sleep(Duration::from_secs(2));
    for (name, cert, key, works) in [
        ("foreign", &cert, &key, false),
        ("expired", &old_cert, &old_key, false),
        ("fresh", &good_cert, &good_key, true),
    ] {
        let kc = cert_kubeconfig(&c, name, cert, key);
        let out = c.kubectl(&[
            "--kubeconfig",
            kc.to_str().unwrap(),
            "get",
            "pod",
            "on-authz-a",
            "--request-timeout=10s",
        ]);
        assert_eq!(
            out.ok, works,
            "a {name} certificate for system:node:authz-a: {}{}",
            out.stdout, out.stderr
        );
        if !works {
            assert!(!out.stdout.contains("on-authz-a"), "{}", out.stdout);
        }
    }
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

fn copy_dir(from: &Path, to: &Path) {
    std::fs::create_dir_all(to).unwrap();
    for e in std::fs::read_dir(from).unwrap() {
        let e = e.unwrap();
        if e.file_type().unwrap().is_file() {
            std::fs::copy(e.path(), to.join(e.file_name())).unwrap();
        }
    }
}
