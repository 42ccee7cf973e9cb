//! Node identity end to end: with 20-second node certificates an agent renews its
//! certificate over the tunnel while its node stays Ready and its pod keeps running;
//! `kedge node revoke` closes its tunnel, gets its certificate refused on the tunnel and with
//! 401 on HTTPS, and the node goes Unknown; it joins again only with a token created after
//! the revocation (restarted meanwhile, it keeps its pods). `kedge token list/delete`: a
//! deleted or expired token cannot join a node. A node whose certificate expired while it was
//! off starts offline and joins again with a token written into its data dir.

use std::os::unix::fs::PermissionsExt;
use std::path::{Path, PathBuf};
use std::process::Command;
use std::time::Duration;

use serde_json::Value;

use crate::harness::{Cluster, KEDGE, wait_for};

fn node_ready(c: &Cluster, name: &str) -> String {
    let r = c.kubectl(&[
        "get",
        "node",
        name,
        "-o",
        r#"jsonpath={.status.conditions[?(@.type=="Ready")].status}"#,
    ]);
    if r.ok { r.stdout } else { String::new() }
}

/// `kedge <args>` against the cluster's admin kubeconfig: (success, stdout, stderr).
fn kedge(c: &Cluster, args: &[&str]) -> (bool, String, String) {
    let out = Command::new(KEDGE)
        .args(args)
        .arg("--kubeconfig")
        .arg(&c.kubeconfig)
        .output()
        .unwrap();
    (
        out.status.success(),
        String::from_utf8_lossy(&out.stdout).into_owned(),
        String::from_utf8_lossy(&out.stderr).into_owned(),
    )
}

/// The log of the agent process `name` (read by path: [`Cluster::wait`] borrows the cluster).
fn agent_log(c: &Cluster, name: &str) -> String {
    std::fs::read_to_string(c.dir.path().join(format!("{name}.log"))).unwrap_or_default()
}

fn cert_of(tunnel_dir: &Path) -> kedge_tunnel::pki::CertInfo {
    let pem = std::fs::read_to_string(tunnel_dir.join("node.crt")).unwrap();
    kedge_tunnel::pki::cert_info_pem(&pem).unwrap()
}

/// A kubeconfig that authenticates with a copy of the node's current key and certificate.
fn node_kubeconfig(c: &Cluster, tunnel_dir: &Path, name: &str) -> PathBuf {
    let dir = c.dir.path().join(name);
    std::fs::create_dir_all(&dir).unwrap();
    for f in ["node.crt", "node.key", "ca.crt"] {
        std::fs::copy(tunnel_dir.join(f), dir.join(f)).unwrap();
    }
    let kc = dir.join("kubeconfig");
    let d = dir.display();
    std::fs::write(
        &kc,
        format!(
            "apiVersion: v1\nkind: Config\nclusters:\n- name: k\n  cluster:\n    server: https://{}:{}\n    certificate-authority: {d}/ca.crt\n\
             users:\n- name: node\n  user:\n    client-certificate: {d}/node.crt\n    client-key: {d}/node.key\n\
             contexts:\n- name: k\n  context: {{cluster: k, user: node}}\ncurrent-context: k\n",
            c.host, c.port
        ),
    )
    .unwrap();
    kc
}

fn raw_version(kubeconfig: &Path) -> (bool, String) {
    let out = Command::new("kubectl")
        .arg("--kubeconfig")
        .arg(kubeconfig)
        .args(["get", "--raw", "/version", "--request-timeout=10s"])
        .output()
        .unwrap();
    (
        out.status.success(),
        String::from_utf8_lossy(&out.stderr).into_owned(),
    )
}

fn pod_state(c: &Cluster) -> (String, String, String) {
    let out = c.k(&[
        "get",
        "pod",
        "steady",
        "-o",
        "jsonpath={.metadata.uid} {.status.phase} {.status.containerStatuses[0].restartCount}",
    ]);
    let v: Vec<String> = out.split(' ').map(str::to_owned).collect();
    (
        v[0].clone(),
        v[1].clone(),
        v.get(2).cloned().unwrap_or_default(),
    )
}

#[test]
fn certificates_rotate_revoked_nodes_are_refused_and_tokens_are_managed() {
    let mut c = Cluster::start_with(&["--node-cert-validity", "20s"]);
    let cm = r#"{"apiVersion":"v1","kind":"ConfigMap",
        "metadata":{"name":"kedge-node-lifecycle","namespace":"kube-system"},
        "data":{"gracePeriodSeconds":"15","evictionSeconds":"600"}}"#;
    let r = c.kubectl_stdin(&["create", "-f", "-"], Some(cm));
    assert!(r.ok, "{}", r.stderr);
    let node = "rot-node";
    let tunnel_dir = c.dir.path().join(node).join("tunnel");
    let token = c.token.clone();
    c.start_agent(node, &token);
    c.wait("the node Ready", || {
        (node_ready(&c, node) == "True").then_some(())
    });
    let pod = format!(
        r#"{{"apiVersion":"v1","kind":"Pod","metadata":{{"name":"steady"}},
        "spec":{{"nodeName":"{node}","containers":[{{"name":"hello","image":"kedge.dev/samples/hello-wasm:v1"}}]}}}}"#
    );
    let r = c.kubectl_stdin(&["create", "-f", "-"], Some(&pod));
    assert!(r.ok, "{}", r.stderr);
    c.wait("the pod Running", || {
        (pod_state(&c).1 == "Running").then_some(())
    });
    let before_pod = pod_state(&c);
    let first = cert_of(&tunnel_dir);
    let life = first.lifetime();
    assert!(
        life <= Duration::from_secs(21),
        "--node-cert-validity applies: {life:?}"
    );

    // 1. Rotation at 70–80 % of 20 s: new serial, later expiry, node and pod undisturbed.
    let second = c.wait("the agent to renew its certificate", || {
        let now = cert_of(&tunnel_dir);
        (now.serial != first.serial).then_some(now)
    });
    assert!(second.not_after > first.not_after, "{first:?} → {second:?}");
    c.wait("the agent on the renewed certificate", || {
        agent_log(&c, node)
            .contains("tunnel now uses the renewed certificate")
            .then_some(())
    });
    assert!(c.server.log_text().contains("node certificate renewed"));
    assert_eq!(node_ready(&c, node), "True", "node stays Ready");
    assert_eq!(
        pod_state(&c),
        before_pod,
        "the pod keeps running, not restarted"
    );
    // Past the first certificate's expiry the node still talks to the API.
    std::thread::sleep(
        first
            .not_after
            .duration_since(std::time::SystemTime::now())
            .unwrap_or_default()
            + Duration::from_secs(1),
    );
    assert_eq!(node_ready(&c, node), "True");
    let current = cert_of(&tunnel_dir);
    let node_kc = node_kubeconfig(&c, &tunnel_dir, "node-creds");
    let (ok, err) = raw_version(&node_kc);
    assert!(
        ok,
        "the node's certificate works on HTTPS before revocation: {err}"
    );

    // 2. Revocation: tunnel closed at once, certificate refused, 401 on HTTPS.
    let (ok, out, err) = kedge(&c, &["node", "revoke", node]);
    assert!(ok, "{err}");
    assert!(out.contains("revoked"), "{out}");
    let cm = c.k(&[
        "get",
        "configmap",
        "-n",
        "kube-system",
        "kedge-node-revocations",
        "-o",
        "json",
    ]);
    let cm: Value = serde_json::from_str(&cm).unwrap();
    assert!(cm["data"][node].is_string(), "{cm}");
    c.wait("the server to close the node's tunnel", || {
        c.server
            .log_text()
            .contains("node revoked: closing its tunnel")
            .then_some(())
    });
    c.wait("the agent refused", || {
        let log = agent_log(&c, node);
        (log.contains("refuses its certificate") && log.contains("reconnect refused")).then_some(())
    });
    assert!(c.agent(node).log_text().contains("revoked"));
    let (ok, err) = raw_version(&node_kc);
    assert!(
        !ok && err.contains("Unauthorized"),
        "revoked cert on HTTPS: {err}"
    );
    assert_eq!(
        cert_of(&tunnel_dir).serial,
        current.serial,
        "no renewal once revoked"
    );

    // 3. Tokens: list shows them (never the secret), delete and expiry stop joins.
    let (ok, fresh, err) = kedge(
        &c,
        &[
            "token",
            "create",
            "--ttl",
            "1h",
            "--description",
            "rot-node, again",
        ],
    );
    assert!(ok, "{err}");
    let (ok, _, err) = kedge(&c, &["token", "create", "--description", "two\nlines"]);
    assert!(
        !ok && err.trim().lines().count() == 1 && err.contains("one line"),
        "{err}"
    );
    let fresh = fresh.trim().to_string();
    let (ok, doomed, err) = kedge(&c, &["token", "create", "--ttl", "1h"]);
    assert!(ok, "{err}");
    let doomed = doomed.trim().to_string();
    let (ok, short, err) = kedge(&c, &["token", "create", "--ttl", "1s"]);
    assert!(ok, "{err}");
    let id = |t: &str| {
        t.rsplit("::")
            .next()
            .unwrap()
            .split('.')
            .next()
            .unwrap()
            .to_string()
    };
    let secret = |t: &str| t.rsplit('.').next().unwrap().to_string();
    let (ok, list, err) = kedge(&c, &["token", "list"]);
    assert!(ok, "{err}");
    assert!(list.starts_with("ID"), "{list}");
    for t in [&token, &fresh, &doomed] {
        assert!(list.contains(&id(t)), "{} in\n{list}", id(t));
        assert!(!list.contains(&secret(t)), "no secrets in\n{list}");
    }
    assert!(
        list.contains("<forever>") && list.contains("authentication"),
        "{list}"
    );
    assert!(
        list.lines()
            .any(|l| l.starts_with(&id(&fresh)) && l.ends_with("rot-node, again")),
        "{list}"
    );
    let (ok, out, err) = kedge(&c, &["token", "delete", &id(&doomed)]);
    assert!(ok && out.contains("deleted"), "{out}{err}");
    let (_, list, _) = kedge(&c, &["token", "list"]);
    assert!(!list.contains(&id(&doomed)), "{list}");
    let (ok, _, err) = kedge(&c, &["token", "delete", &id(&doomed)]);
    assert!(!ok && err.contains("no bootstrap token"), "{err}");

    let refused = |c: &mut Cluster, name: &str, token: &str, why: &str| {
        c.start_agent(name, token);
        let agent = c.agent(name);
        wait_for(
            &format!("{name} to give up"),
            Duration::from_secs(30),
            || (!agent.is_running()).then_some(()),
        );
        let log = agent.log_text();
        assert!(log.contains(why), "{name}: {log}");
    };
    std::thread::sleep(Duration::from_millis(1500));
    refused(&mut c, "late-node", &short, "invalid or expired");
    refused(&mut c, "other-node", &doomed, "invalid or expired");

    // 4. The revoked node goes Unknown; the token it joined with cannot bring it back, a
    // token created after the revocation can.
    c.wait("the revoked node not Ready", || {
        let s = node_ready(&c, node);
        (s == "Unknown" || s == "False").then_some(())
    });
    c.agent(node).kill();
    c.agents.retain(|a| a.name != node);
    // Not renewed since the revocation, its certificate has expired (or is made to): the
    // agent starts offline, keeping its pods, and its old token is refused.
    std::thread::sleep(
        cert_of(&tunnel_dir)
            .not_after
            .duration_since(std::time::SystemTime::now())
            .unwrap_or_default()
            + Duration::from_secs(1),
    );
    c.start_agent(node, &token);
    c.wait("the old token refused", || {
        agent_log(&c, node).contains("created after").then_some(())
    });
    assert!(c.agent(node).is_running(), "{}", agent_log(&c, node));
    assert_ne!(node_ready(&c, node), "True");
    c.agent(node).kill();
    c.agents.retain(|a| a.name != node);
    c.start_agent(node, &fresh);
    c.wait("the node Ready again after joining anew", || {
        (node_ready(&c, node) == "True").then_some(())
    });
    let rejoined = cert_of(&tunnel_dir);
    assert_ne!(rejoined.serial, current.serial);
    assert!(c.agent(node).log_text().contains("joined the cluster"));

    // 5. Regression: a node whose certificate expired while it was off (and whose unit file
    // still holds a dead token) used to exit at start, pods and all. It starts, runs its pods
    // from the local record and says what it needs; a join token written into its data dir
    // brings it back without a restart.
    c.agent(node).kill();
    c.agents.retain(|a| a.name != node);
    let before = cert_of(&tunnel_dir);
    std::thread::sleep(
        before
            .not_after
            .duration_since(std::time::SystemTime::now())
            .unwrap_or_default()
            + Duration::from_secs(1),
    );
    c.start_agent(node, &doomed);
    c.wait(
        "the agent running offline on its expired certificate",
        || {
            let log = agent_log(&c, node);
            (log.contains("starting pod from the local record") && log.contains("join-token"))
                .then_some(())
        },
    );
    assert!(c.agent(node).is_running(), "{}", agent_log(&c, node));
    let (ok, again, err) = kedge(&c, &["token", "create", "--ttl", "1h"]);
    assert!(ok, "{err}");
    let token_file = tunnel_dir.join("join-token");
    // As ssh with a key: a token file others may read is refused, saying what to do.
    // Made 644 before it appears under its name, whatever the umask.
    let staged = tunnel_dir.join("join-token.staged");
    std::fs::write(&staged, again).unwrap();
    std::fs::set_permissions(&staged, PermissionsExt::from_mode(0o644)).unwrap();
    std::fs::rename(&staged, &token_file).unwrap();
    c.wait("the agent to refuse a token file others may read", || {
        agent_log(&c, node).contains("chmod 600").then_some(())
    });
    assert_eq!(cert_of(&tunnel_dir).serial, before.serial);
    std::fs::set_permissions(&token_file, PermissionsExt::from_mode(0o600)).unwrap();
    c.wait("the agent to join with the token file", || {
        (cert_of(&tunnel_dir).serial != before.serial).then_some(())
    });
    c.wait("the node Ready again", || {
        (node_ready(&c, node) == "True").then_some(())
    });
    assert!(!token_file.exists(), "a spent token file is removed");
    assert!(c.agent(node).is_running());
}
