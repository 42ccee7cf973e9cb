//! Service-account tokens and RBAC with the real kubectl (and the Python client): a token from
//! `kubectl create token` authenticates without a client certificate, is refused everything
//! but discovery until a Role and RoleBinding allow it, `kubectl auth can-i` agrees, and the
//! token stops working when its ServiceAccount is deleted.

use std::path::PathBuf;
use std::process::Command;

use base64::Engine as _;

use crate::harness::{Cluster, Kubectl, tail};

/// A kubeconfig with the cluster CA and a bearer token, and no client certificate.
pub(crate) fn token_kubeconfig(c: &Cluster, name: &str, token: &str) -> PathBuf {
    let ca = c.dir.path().join("server/pki/ca.crt");
    assert!(ca.exists(), "{} exists", ca.display());
    let path = c.dir.path().join(format!("{name}.kubeconfig"));
    std::fs::write(
        &path,
        format!(
            "apiVersion: v1\nkind: Config\nclusters:\n- name: kedge\n  cluster:\n    server: https://{}:{}\n    certificate-authority: {}\n\
             users:\n- name: {name}\n  user:\n    token: {token}\n\
             contexts:\n- name: {name}\n  context: {{cluster: kedge, user: {name}, namespace: default}}\ncurrent-context: {name}\n",
            c.host,
            c.port,
            ca.display(),
        ),
    )
    .unwrap();
    path
}

pub(crate) fn as_user(c: &Cluster, kubeconfig: &std::path::Path, args: &[&str]) -> Kubectl {
    let mut all = vec!["--kubeconfig", kubeconfig.to_str().unwrap()];
    all.extend_from_slice(args);
    c.kubectl(&all)
}

#[test]
fn service_account_tokens_are_authorized_by_rbac() {
    let c = Cluster::start();
    c.k(&["create", "namespace", "rbac-other"]);
    c.k(&["create", "serviceaccount", "bot"]);
    // `kubectl create token` (a protobuf TokenRequest), with and without a duration.
    let short = c.kubectl(&["create", "token", "bot", "--duration=1m"]);
    assert!(
        !short.ok && short.stderr.contains("less than 10 minutes"),
        "{}",
        short.stderr
    );
    let token = c.k(&["create", "token", "bot", "--duration=20m"]);
    let token = token.trim().to_string();
    assert_eq!(token.split('.').count(), 3, "a JWT: {token}");
    let claims: serde_json::Value = serde_json::from_slice(
        &base64::engine::general_purpose::URL_SAFE_NO_PAD
            .decode(token.split('.').nth(1).unwrap())
            .unwrap(),
    )
    .unwrap();
    assert_eq!(claims["sub"], "system:serviceaccount:default:bot");
    assert_eq!(claims["kubernetes.io"]["serviceaccount"]["name"], "bot");
    let lifetime = claims["exp"].as_i64().unwrap() - claims["iat"].as_i64().unwrap();
    assert_eq!(lifetime, 1200);
    let bot = token_kubeconfig(&c, "bot", &token);
    let as_bot = |args: &[&str]| as_user(&c, &bot, args);
    let forbidden = |args: &[&str], message: &str| {
        let out = as_bot(args);
        assert!(
            !out.ok,
            "as bot, {args:?} should be refused: {}",
            out.stdout
        );
        assert!(
            out.stderr.contains("is forbidden: User") && out.stderr.contains(message),
            "{args:?}: {}",
            out.stderr
        );
    };
    let can_i = |args: &[&str]| -> String {
        let mut all = vec!["auth", "can-i"];
        all.extend_from_slice(args);
        as_bot(&all).stdout.trim().to_string()
    };

    // Authenticated (discovery and whoami work), authorized for nothing else yet.
    let who = as_bot(&[
        "auth",
        "whoami",
        "-o",
        "jsonpath={.status.userInfo.username}",
    ]);
    assert!(who.ok, "{}", who.stderr);
    assert_eq!(who.stdout, "system:serviceaccount:default:bot");
    forbidden(
        &["get", "pods"],
        "pods is forbidden: User \"system:serviceaccount:default:bot\" cannot list resource \"pods\" in API group \"\" in the namespace \"default\"",
    );
    assert_eq!(can_i(&["list", "pods"]), "no");

    // A Role and RoleBinding (kubectl create role/rolebinding send protobuf).
    c.k(&[
        "create",
        "role",
        "pod-reader",
        "--verb=get",
        "--verb=list",
        "--resource=pods",
    ]);
    c.k(&[
        "create",
        "rolebinding",
        "bot-reads-pods",
        "--role=pod-reader",
        "--serviceaccount=default:bot",
    ]);
    let listed = c.k(&["get", "rolebinding", "bot-reads-pods", "-o", "wide"]);
    assert!(
        listed.contains("Role/pod-reader") && listed.contains("default/bot"),
        "{listed}"
    );
    let described = c.k(&["describe", "role", "pod-reader"]);
    assert!(
        described.contains("pods") && described.contains("[get list]"),
        "{described}"
    );
    let out = as_bot(&["get", "pods"]);
    assert!(out.ok, "list pods after the binding: {}", out.stderr);
    forbidden(
        &["get", "pods", "-n", "rbac-other"],
        "cannot list resource \"pods\" in API group \"\" in the namespace \"rbac-other\"",
    );
    forbidden(
        &["run", "p", "--image=kedge.dev/samples/hello-wasm:v1"],
        "cannot create resource \"pods\"",
    );
    forbidden(&["get", "secrets"], "cannot list resource \"secrets\"");
    assert_eq!(can_i(&["list", "pods"]), "yes");
    assert_eq!(can_i(&["get", "pods", "--subresource=log"]), "no");
    assert_eq!(can_i(&["create", "pods"]), "no");
    assert_eq!(can_i(&["list", "pods", "-n", "rbac-other"]), "no");
    let list = can_i(&["--list"]);
    assert!(
        list.lines()
            .any(|l| l.starts_with("pods ") && l.ends_with("[get list]")),
        "{list}"
    );
    assert!(list.contains("/version"), "{list}");
    let elsewhere = can_i(&["--list", "-n", "rbac-other"]);
    assert!(
        !elsewhere.lines().any(|l| l.starts_with("pods ")),
        "{elsewhere}"
    );

    // A ClusterRole and ClusterRoleBinding; and no granting beyond what one holds.
    c.k(&[
        "create",
        "clusterrole",
        "ns-reader",
        "--verb=get,list",
        "--resource=namespaces",
    ]);
    c.k(&[
        "create",
        "clusterrolebinding",
        "bot-reads-ns",
        "--clusterrole=ns-reader",
        "--serviceaccount=default:bot",
    ]);
    let out = as_bot(&["get", "namespaces"]);
    assert!(
        out.ok && out.stdout.contains("rbac-other"),
        "{}",
        out.stderr
    );
    assert_eq!(can_i(&["list", "namespaces"]), "yes");
    forbidden(
        &[
            "create",
            "clusterrolebinding",
            "mine",
            "--clusterrole=cluster-admin",
            "--serviceaccount=default:bot",
        ],
        "cannot create resource \"clusterrolebindings\"",
    );
    // The default roles are there, cluster-admin bound to system:masters.
    let roles = c.k(&["get", "clusterroles"]);
    for r in ["cluster-admin", "admin", "edit", "view", "system:discovery"] {
        assert!(roles.contains(r), "{r} in {roles}");
    }
    let admin = c.k(&["auth", "can-i", "*", "*"]);
    assert_eq!(admin.trim(), "yes");

    // A legacy token Secret is filled by the server and works too.
    let made = c.kubectl_stdin(
        &["apply", "-f", "-"],
        Some(
            "apiVersion: v1\nkind: Secret\nmetadata:\n  name: bot-token\n  annotations:\n    kubernetes.io/service-account.name: bot\ntype: kubernetes.io/service-account-token\n",
        ),
    );
    assert!(made.ok, "{}", made.stderr);
    let legacy = c.wait("the legacy token secret filled", || {
        let out = c.kubectl(&["get", "secret", "bot-token", "-o", "jsonpath={.data.token}"]);
        (out.ok && !out.stdout.is_empty()).then_some(out.stdout)
    });
    let legacy = String::from_utf8(
        base64::engine::general_purpose::STANDARD
            .decode(legacy.trim())
            .unwrap(),
    )
    .unwrap();
    let ca = c.k(&[
        "get",
        "secret",
        "bot-token",
        "-o",
        "jsonpath={.data.ca\\.crt}",
    ]);
    assert!(!ca.is_empty());
    let bot_legacy = token_kubeconfig(&c, "bot-legacy", &legacy);
    let out = as_user(&c, &bot_legacy, &["get", "pods"]);
    assert!(out.ok, "legacy token: {}", out.stderr);

    // The Python client with the bearer token.
    python_with_token(&c, &token);

    // Namespace admin may hand out what it holds there, not more (RBAC's escalation check).
    c.k(&[
        "create",
        "rolebinding",
        "bot-admin",
        "--clusterrole=admin",
        "--serviceaccount=default:bot",
        "-n",
        "rbac-other",
    ]);
    let out = as_bot(&[
        "create",
        "rolebinding",
        "viewers",
        "--clusterrole=view",
        "--group=team",
        "-n",
        "rbac-other",
    ]);
    assert!(out.ok, "granting view as a namespace admin: {}", out.stderr);
    let out = as_bot(&[
        "create",
        "rolebinding",
        "grab",
        "--clusterrole=cluster-admin",
        "--serviceaccount=default:bot",
        "-n",
        "rbac-other",
    ]);
    assert!(
        !out.ok
            && out
                .stderr
                .contains("attempting to grant RBAC permissions not currently held"),
        "{}",
        out.stderr
    );

    // Neither certificate nor token: 401 with a Status (kubectl would prompt for a
    // password here, so curl asks).
    let ca = c.dir.path().join("server/pki/ca.crt");
    let out = Command::new("curl")
        .args(["-sS", "--max-time", "20", "--cacert"])
        .arg(&ca)
        .arg(format!(
            "https://{}:{}/api/v1/namespaces/default/pods",
            c.host, c.port
        ))
        .output()
        .expect("curl is needed for this test");
    let status: serde_json::Value = serde_json::from_slice(&out.stdout).unwrap_or_default();
    assert_eq!(status["code"], 401, "{status}");
    assert_eq!(status["reason"], "Unauthorized", "{status}");
    // A token that does not verify: 401.
    let mut forged = token.clone();
    forged.pop();
    forged.push(if token.ends_with('A') { 'B' } else { 'A' });
    let bad = token_kubeconfig(&c, "forged", &forged);
    let out = as_user(&c, &bad, &["get", "pods"]);
    assert!(
        !out.ok && out.stderr.contains("Unauthorized"),
        "{}",
        out.stderr
    );

    // Deleting the ServiceAccount revokes its tokens, legacy ones included.
    c.k(&["delete", "serviceaccount", "bot"]);
    for kc in [&bot, &bot_legacy] {
        let out = as_user(&c, kc, &["get", "pods"]);
        assert!(
            !out.ok && out.stderr.contains("Unauthorized"),
            "after deleting the service account: {}\n--- server ---\n{}",
            out.stderr,
            tail(&c.server.log_text(), 20)
        );
    }
}

/// The Python `kubernetes` client with `Authorization: Bearer`; skipped (and said so) when
/// the package is missing.
fn python_with_token(c: &Cluster, token: &str) {
    let probe = Command::new("python3")
        .args(["-c", "import kubernetes"])
        .output();
    if !probe.is_ok_and(|p| p.status.success()) {
        eprintln!("skipping the Python part: the `kubernetes` package is missing (`make setup`)");
        return;
    }
    let script = r#"
import sys
from kubernetes import client
cfg = client.Configuration()
cfg.host = sys.argv[1]
cfg.ssl_ca_cert = sys.argv[2]
cfg.api_key = {"authorization": "Bearer " + sys.argv[3]}
v1 = client.CoreV1Api(client.ApiClient(cfg))
v1.list_namespaced_pod("default")
try:
    v1.list_namespaced_pod("rbac-other")
    sys.exit("listing pods in rbac-other should be forbidden")
except client.ApiException as e:
    assert e.status == 403, e.status
print("python ok")
"#;
    let ca = c.dir.path().join("server/pki/ca.crt");
    let out = Command::new("timeout")
        .arg("120")
        .arg("python3")
        .arg("-c")
        .arg(script)
        .arg(format!("https://{}:{}", c.host, c.port))
        .arg(&ca)
        .arg(token)
        .output()
        .unwrap();
    assert!(
        out.status.success() && String::from_utf8_lossy(&out.stdout).contains("python ok"),
        "python client with a bearer token:\n{}\n{}",
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr)
    );
}
