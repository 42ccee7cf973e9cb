//! The kubectl fidelity sweep of issue 4: each everyday command against a server with one
//! agent, checked against what kubectl prints against a real cluster. What other files
//! already cover (apply, create <kind>, the documentation manifests, the skeleton's rollout)
//! is not repeated here.

use std::io::{BufRead, BufReader};
use std::process::{Child, Command, Stdio};
use std::sync::mpsc;
use std::time::Duration;

use serde_json::{Value, json};

use crate::harness::{Cluster, Kubectl};

const IMAGE: &str = "kedge.dev/samples/hello-wasm:v1";

fn with_node() -> Cluster {
    let mut c = Cluster::start();
    let token = c.token.clone();
    c.start_agent("node-a", &token);
    c.wait("node-a Ready", || {
        let out = c.k(&[
            "get",
            "nodes",
            "-o",
            "jsonpath={.items[*].status.conditions[?(@.type==\"Ready\")].status}",
        ]);
        (out.trim() == "True").then_some(())
    });
    c
}

fn kubectl_cmd(c: &Cluster, args: &[&str]) -> Command {
    let mut cmd = Command::new("kubectl");
    cmd.arg("--kubeconfig")
        .arg(&c.kubeconfig)
        .arg("--cache-dir")
        .arg(c.dir.path().join("kube-cache"))
        .args(args)
        .stdin(Stdio::null());
    cmd
}

/// kubectl with extra environment (EDITOR, feature gates).
fn kubectl_env(c: &Cluster, env: &[(&str, &str)], args: &[&str]) -> Kubectl {
    let mut cmd = kubectl_cmd(c, args);
    cmd.args(["--request-timeout=30s"])
        .envs(env.iter().copied());
    let out = cmd.output().unwrap();
    Kubectl {
        ok: out.status.success(),
        stdout: String::from_utf8_lossy(&out.stdout).into_owned(),
        stderr: String::from_utf8_lossy(&out.stderr).into_owned(),
    }
}

/// A kubectl left running (`-w`), its stdout lines arriving on a channel.
struct Streaming {
    child: Child,
    lines: mpsc::Receiver<String>,
}

impl Streaming {
    fn start(c: &Cluster, args: &[&str]) -> Streaming {
        let mut child = kubectl_cmd(c, args)
            .stdout(Stdio::piped())
            .stderr(Stdio::null())
            .spawn()
            .unwrap();
        let out = child.stdout.take().unwrap();
        let (tx, lines) = mpsc::channel();
        std::thread::spawn(move || {
            for l in BufReader::new(out).lines().map_while(Result::ok) {
                if tx.send(l).is_err() {
                    break;
                }
            }
        });
        Streaming { child, lines }
    }

    /// Lines until one satisfies `f` (all of them returned), or panics after 30 s.
    fn until(&self, what: &str, f: impl Fn(&str) -> bool) -> Vec<String> {
        let mut seen = Vec::new();
        loop {
            match self.lines.recv_timeout(Duration::from_secs(30)) {
                Ok(l) => {
                    let done = f(&l);
                    seen.push(l);
                    if done {
                        return seen;
                    }
                }
                Err(_) => panic!("no line with {what}; got:\n{}", seen.join("\n")),
            }
        }
    }
}

impl Drop for Streaming {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

/// Raw HTTPS with the admin certificate of the kubeconfig, as `curl` users call the API.
struct Curl {
    base: String,
    cert: std::path::PathBuf,
    key: std::path::PathBuf,
}

impl Curl {
    fn new(c: &Cluster) -> Curl {
        use base64::Engine;
        let field = |path: &str| {
            let b64 = c.k(&["config", "view", "--raw", "-o", &format!("jsonpath={path}")]);
            base64::engine::general_purpose::STANDARD
                .decode(b64.trim())
                .unwrap()
        };
        let cert = c.dir.path().join("admin.crt");
        let key = c.dir.path().join("admin.key");
        std::fs::write(&cert, field("{.users[0].user.client-certificate-data}")).unwrap();
        std::fs::write(&key, field("{.users[0].user.client-key-data}")).unwrap();
        Curl {
            base: format!("https://127.0.0.1:{}", c.port),
            cert,
            key,
        }
    }

    /// (HTTP status, body).
    fn call(&self, method: &str, path: &str, body: Option<&str>) -> (u16, String) {
        let mut cmd = Command::new("curl");
        cmd.args([
            "-sk",
            "--max-time",
            "20",
            "-w",
            "\n%{http_code}",
            "-X",
            method,
        ])
        .arg("--cert")
        .arg(&self.cert)
        .arg("--key")
        .arg(&self.key);
        if let Some(b) = body {
            cmd.args(["-H", "Content-Type: application/json", "-d", b]);
        }
        let out = cmd.arg(format!("{}{path}", self.base)).output().unwrap();
        let text = String::from_utf8_lossy(&out.stdout).into_owned();
        let (body, code) = text.rsplit_once('\n').unwrap_or(("", "0"));
        (code.trim().parse().unwrap_or(0), body.to_string())
    }

    /// Newline-delimited watch events of a watch URL that ends within `secs`.
    fn watch(&self, path: &str, secs: u32) -> Vec<Value> {
        let out = Command::new("curl")
            .args(["-sk", "-N", "--max-time", &secs.to_string()])
            .arg("--cert")
            .arg(&self.cert)
            .arg("--key")
            .arg(&self.key)
            .arg(format!("{}{path}", self.base))
            .output()
            .unwrap();
        String::from_utf8_lossy(&out.stdout)
            .lines()
            .filter(|l| !l.trim().is_empty())
            .map(|l| serde_json::from_str(l).unwrap_or_else(|e| panic!("{e}: {l}")))
            .collect()
    }
}

fn get_json(c: &Cluster, args: &[&str]) -> Value {
    let mut a = vec!["get"];
    a.extend_from_slice(args);
    a.extend_from_slice(&["-o", "json"]);
    serde_json::from_str(&c.k(&a)).unwrap()
}

fn pod_json(name: &str, extra_meta: Value) -> String {
    let mut p = json!({"apiVersion": "v1", "kind": "Pod",
        "metadata": {"name": name, "labels": {"sweep": "yes"}},
        "spec": {"containers": [{"name": "app", "image": IMAGE}]}});
    if let (Some(m), Some(extra)) = (p["metadata"].as_object_mut(), extra_meta.as_object()) {
        for (k, v) in extra {
            m.insert(k.clone(), v.clone());
        }
    }
    p.to_string()
}

fn deployment_json(name: &str, replicas: u32) -> String {
    json!({"apiVersion": "apps/v1", "kind": "Deployment", "metadata": {"name": name},
        "spec": {"replicas": replicas, "selector": {"matchLabels": {"app": name}},
        "template": {"metadata": {"labels": {"app": name}},
            "spec": {"containers": [{"name": "app", "image": IMAGE}]}}}})
    .to_string()
}

fn create(c: &Cluster, manifest: &str) {
    let r = c.kubectl_stdin(&["create", "-f", "-"], Some(manifest));
    assert!(r.ok, "create: {}", r.stderr);
}

fn phase(c: &Cluster, ns: &str, name: &str) -> String {
    c.kubectl(&[
        "get",
        "pod",
        name,
        "-n",
        ns,
        "-o",
        "jsonpath={.status.phase}",
    ])
    .stdout
}

/// `version`, `api-versions`, `api-resources`, `cluster-info`, `auth whoami`.
#[test]
fn discovery_commands_and_whoami() {
    let c = Cluster::start();
    let v = c.k(&["version", "-o", "json"]);
    let v: Value = serde_json::from_str(&v).unwrap();
    assert_eq!(v["serverVersion"]["major"], "1", "{v}");
    assert_eq!(v["serverVersion"]["minor"], "32", "{v}");
    let versions = c.k(&["api-versions"]);
    for gv in [
        "v1",
        "apps/v1",
        "batch/v1",
        "coordination.k8s.io/v1",
        "authentication.k8s.io/v1",
    ] {
        assert!(versions.lines().any(|l| l == gv), "{gv} in\n{versions}");
    }
    let resources = c.k(&["api-resources"]);
    let head = resources.lines().next().unwrap();
    assert_eq!(
        head.split_whitespace().collect::<Vec<_>>(),
        ["NAME", "SHORTNAMES", "APIVERSION", "NAMESPACED", "KIND"]
    );
    let row = |name: &str| {
        resources
            .lines()
            .find(|l| l.split_whitespace().next() == Some(name))
            .unwrap_or_else(|| panic!("no {name} in\n{resources}"))
            .split_whitespace()
            .collect::<Vec<_>>()
    };
    assert_eq!(
        row("deployments"),
        ["deployments", "deploy", "apps/v1", "true", "Deployment"]
    );
    assert_eq!(
        row("selfsubjectreviews"),
        [
            "selfsubjectreviews",
            "authentication.k8s.io/v1",
            "false",
            "SelfSubjectReview"
        ]
    );
    // Listable kinds only: the review is create-only, as in Kubernetes.
    let listable = c.k(&["api-resources", "--verbs=list", "-o", "name"]);
    assert!(!listable.contains("selfsubjectreviews"), "{listable}");
    assert!(listable.lines().any(|l| l == "pods"), "{listable}");
    let info = c.k(&["cluster-info"]);
    assert!(
        info.contains(&format!(
            "Kubernetes control plane is running at https://127.0.0.1:{}",
            c.port
        )),
        "{info}"
    );

    // `auth whoami` reads a SelfSubjectReview of the admin certificate.
    let who = c.k(&["auth", "whoami"]);
    let lines: Vec<Vec<&str>> = who
        .lines()
        .map(|l| l.split_whitespace().collect())
        .collect();
    assert_eq!(lines[0], ["ATTRIBUTE", "VALUE"], "{who}");
    assert_eq!(lines[1], ["Username", "kedge-admin"], "{who}");
    assert_eq!(
        lines[2],
        ["Groups", "[system:masters", "system:authenticated]"],
        "{who}"
    );
    let who: Value = serde_json::from_str(&c.k(&["auth", "whoami", "-o", "json"])).unwrap();
    assert_eq!(who["kind"], "SelfSubjectReview");
    assert_eq!(who["apiVersion"], "authentication.k8s.io/v1");
    assert_eq!(who["status"]["userInfo"]["username"], "kedge-admin");
    // The review is not stored: there is nothing to get.
    let r = c.kubectl(&["get", "selfsubjectreviews"]);
    assert!(!r.ok, "{}", r.stdout);
}

/// `get` with field selectors, `-A`, `--chunk-size`, `-w` (Table rows as they change), and
/// the watch-list / resourceVersionMatch parameters.
#[test]
fn reads_selectors_pagination_and_watches() {
    let c = with_node();
    c.k(&["create", "namespace", "other"]);
    for (name, ns) in [("p1", "default"), ("p2", "default"), ("p3", "other")] {
        let r = c.kubectl_stdin(
            &["create", "-n", ns, "-f", "-"],
            Some(&pod_json(name, json!({}))),
        );
        assert!(r.ok, "{}", r.stderr);
    }
    c.wait("pods Running", || {
        (phase(&c, "default", "p1") == "Running"
            && phase(&c, "default", "p2") == "Running"
            && phase(&c, "other", "p3") == "Running")
            .then_some(())
    });
    // A pod that cannot be placed stays Pending.
    let pending = json!({"apiVersion": "v1", "kind": "Pod", "metadata": {"name": "stuck"},
        "spec": {"nodeSelector": {"nowhere": "true"},
        "containers": [{"name": "app", "image": IMAGE}]}});
    create(&c, &pending.to_string());

    let names = |args: &[&str]| {
        let mut a = vec!["get"];
        a.extend_from_slice(args);
        a.extend_from_slice(&["-o", "name"]);
        let mut v: Vec<String> = c.k(&a).lines().map(String::from).collect();
        v.sort();
        v
    };
    assert_eq!(
        names(&["pods", "--field-selector", "metadata.name=p2"]),
        ["pod/p2"]
    );
    assert_eq!(
        names(&["pods", "-A", "--field-selector", "metadata.namespace=other"]),
        ["pod/p3"]
    );
    assert_eq!(
        names(&["pods", "-A", "--field-selector", "spec.nodeName=node-a"]),
        ["pod/p1", "pod/p2", "pod/p3"]
    );
    assert_eq!(
        names(&["pods", "--field-selector", "status.phase!=Running"]),
        ["pod/stuck"]
    );
    assert_eq!(
        names(&[
            "pods",
            "--field-selector",
            "status.phase=Running,metadata.name!=p1"
        ]),
        ["pod/p2"]
    );
    let r = c.kubectl(&["get", "pods", "--field-selector", "spec.image=x"]);
    assert!(!r.ok);
    assert!(
        r.stderr.contains(
            "Error from server (BadRequest): Unable to find \"/v1, Resource=pods\" that match label selector \"\", field selector \"spec.image=x\": \"spec.image\" is not a known field selector: only \"metadata.name\", \"metadata.namespace\""
        ) || r.stderr.contains("spec.image"),
        "{}",
        r.stderr
    );

    // -A prints the NAMESPACE column; --chunk-size=1 pages with continue tokens, across kinds.
    let all = c.k(&["get", "pods", "-A", "--chunk-size=1"]);
    let lines: Vec<&str> = all.lines().collect();
    assert!(lines[0].starts_with("NAMESPACE"), "{all}");
    assert_eq!(lines.len(), 5, "one header and four pods:\n{all}");
    assert!(
        all.contains("other") && all.contains("p3") && all.contains("stuck"),
        "{all}"
    );
    let mixed = names(&["pods,namespaces,services", "-A", "--chunk-size=1"]);
    for n in ["pod/p1", "pod/p3", "namespace/other", "service/kubernetes"] {
        assert!(mixed.iter().any(|m| m == n), "{n} in {mixed:?}");
    }
    let page: Value =
        serde_json::from_str(&c.k(&["get", "--raw", "/api/v1/pods?limit=1"])).unwrap();
    assert_eq!(page["items"].as_array().unwrap().len(), 1);
    assert_eq!(page["metadata"]["remainingItemCount"], 3);
    let token = page["metadata"]["continue"].as_str().unwrap();
    let next: Value = serde_json::from_str(&c.k(&[
        "get",
        "--raw",
        &format!("/api/v1/pods?limit=10&continue={token}"),
    ]))
    .unwrap();
    assert_eq!(next["items"].as_array().unwrap().len(), 3, "{next}");
    assert!(next["metadata"].get("continue").is_none(), "{next}");

    // get -w: the table first, then one row per change.
    let w = Streaming::start(&c, &["get", "pods", "-w", "-l", "sweep=yes"]);
    let first = w.until("p2", |l| l.starts_with("p2"));
    assert!(first[0].starts_with("NAME"), "{first:?}");
    assert!(
        first[0].contains("READY") && first[0].contains("STATUS"),
        "Table columns on watch: {first:?}"
    );
    c.k(&["label", "pod", "p1", "changed=1"]);
    create(&c, &pod_json("p4", json!({})));
    let rows = w.until("p4 Running", |l| {
        l.starts_with("p4") && l.contains("Running")
    });
    assert!(
        rows.iter()
            .any(|l| l.starts_with("p1") && l.contains("Running")),
        "{rows:?}"
    );
    drop(w);

    // Watch-list (sendInitialEvents): existing objects as ADDED, a bookmark that ends them,
    // then live events.
    let curl = Curl::new(&c);
    let events = curl.watch(
        "/api/v1/namespaces/default/pods?watch=1&sendInitialEvents=true&resourceVersionMatch=NotOlderThan&allowWatchBookmarks=true&timeoutSeconds=2",
        5,
    );
    let kinds: Vec<&str> = events.iter().map(|e| e["type"].as_str().unwrap()).collect();
    assert_eq!(
        kinds,
        ["ADDED", "ADDED", "ADDED", "ADDED", "BOOKMARK"],
        "{events:?}"
    );
    let bm = &events[4]["object"];
    assert_eq!(
        bm["metadata"]["annotations"]["k8s.io/initial-events-end"], "true",
        "{bm}"
    );
    assert!(bm["metadata"]["resourceVersion"].is_string(), "{bm}");
    // kubectl's informers use it when the WatchListClient gate is on.
    let r = kubectl_env(
        &c,
        &[("KUBE_FEATURE_WatchListClient", "true")],
        &[
            "wait",
            "--for=jsonpath={.status.phase}=Running",
            "pod/p4",
            "--timeout=30s",
        ],
    );
    assert!(r.ok, "{}", r.stderr);

    // Combinations Kubernetes refuses, and resourceVersionMatch on lists.
    let rv = page["metadata"]["resourceVersion"].as_str().unwrap();
    for (query, code, message) in [
        (
            "watch=1&sendInitialEvents=true&allowWatchBookmarks=true".to_string(),
            422,
            "resourceVersionMatch: Forbidden: sendInitialEvents requires setting resourceVersionMatch to NotOlderThan",
        ),
        (
            "watch=1&sendInitialEvents=true&resourceVersionMatch=NotOlderThan".to_string(),
            422,
            "allowWatchBookmarks: Forbidden: sendInitialEvents requires setting allowWatchBookmarks to true",
        ),
        (
            "watch=1&resourceVersionMatch=NotOlderThan&resourceVersion=1".to_string(),
            422,
            "resourceVersionMatch: Forbidden: resourceVersionMatch is forbidden for watch unless sendInitialEvents is provided",
        ),
        (
            "resourceVersionMatch=Exact".to_string(),
            422,
            "resourceVersionMatch: Forbidden: resourceVersionMatch is forbidden unless resourceVersion is provided",
        ),
        (
            "resourceVersionMatch=Exact&resourceVersion=0".to_string(),
            422,
            "resourceVersionMatch: Forbidden: resourceVersionMatch \\\"exact\\\" is forbidden for resourceVersion \\\"0\\\"",
        ),
        (
            "resourceVersionMatch=Newest&resourceVersion=1".to_string(),
            422,
            "resourceVersionMatch: Unsupported value: \\\"Newest\\\"",
        ),
        (
            "sendInitialEvents=true".to_string(),
            422,
            "sendInitialEvents: Forbidden: sendInitialEvents is forbidden for list",
        ),
        (
            "resourceVersionMatch=Exact&resourceVersion=1".to_string(),
            410,
            "too old resource version: 1",
        ),
        // Regression (hardening issue, finding 5): a list at a garbage version was served.
        (
            "resourceVersion=abc".to_string(),
            400,
            "resourceVersion: Invalid value: \\\"abc\\\"",
        ),
    ] {
        let (got, body) = curl.call("GET", &format!("/api/v1/pods?{query}"), None);
        assert_eq!(got, code, "{query}: {body}");
        assert!(body.contains(message), "{query}: {body}");
    }
    let (got, body) = curl.call(
        "GET",
        &format!("/api/v1/pods?resourceVersionMatch=NotOlderThan&resourceVersion={rv}"),
        None,
    );
    assert_eq!(got, 200, "{body}");
    // Exact at the current version is served. (The agent writes now and then: a write
    // between our two requests makes the version old, so try a few times.)
    let mut last = (0, String::new());
    for _ in 0..5 {
        let now: Value = serde_json::from_str(&c.k(&["get", "--raw", "/api/v1/pods"])).unwrap();
        let now_rv = now["metadata"]["resourceVersion"]
            .as_str()
            .unwrap()
            .to_string();
        last = curl.call(
            "GET",
            &format!("/api/v1/pods?resourceVersionMatch=Exact&resourceVersion={now_rv}"),
            None,
        );
        if last.0 == 200 {
            break;
        }
    }
    assert_eq!(last.0, 200, "{}", last.1);
}

/// create, replace, edit, label, annotate, patch (three types), scale, set image, rollout
/// status/history/undo/pause/resume/restart, wait.
#[test]
fn writes_rollouts_and_waits() {
    let c = with_node();
    create(&c, &deployment_json("web", 2));
    c.k(&[
        "wait",
        "--for=condition=Available",
        "deployment/web",
        "--timeout=60s",
    ]);
    c.k(&["rollout", "status", "deployment/web", "--timeout=60s"]);

    // label / annotate, including overwrite and removal.
    assert_eq!(
        c.k(&["label", "deployment", "web", "tier=front"]).trim(),
        "deployment.apps/web labeled"
    );
    let r = c.kubectl(&["label", "deployment", "web", "tier=back"]);
    assert!(!r.ok);
    assert_eq!(
        r.stderr.trim(),
        "error: 'tier' already has a value (front), and --overwrite is false"
    );
    c.k(&["label", "deployment", "web", "tier=back", "--overwrite"]);
    c.k(&["annotate", "deployment", "web", "note=hi"]);
    let d = get_json(&c, &["deployment", "web"]);
    assert_eq!(d["metadata"]["labels"]["tier"], "back");
    assert_eq!(d["metadata"]["annotations"]["note"], "hi");
    c.k(&["label", "deployment", "web", "tier-"]);
    c.k(&["annotate", "deployment", "web", "note-"]);
    let d = get_json(&c, &["deployment", "web"]);
    assert!(d["metadata"]["labels"].get("tier").is_none(), "{d}");
    assert!(d["metadata"]["annotations"].get("note").is_none(), "{d}");

    // patch: strategic (containers merge by name), merge, json.
    assert_eq!(
        c.k(&[
            "patch",
            "deployment",
            "web",
            "-p",
            r#"{"spec":{"template":{"spec":{"containers":[{"name":"app","env":[{"name":"A","value":"1"}]}]}}}}"#,
        ])
        .trim(),
        "deployment.apps/web patched"
    );
    let d = get_json(&c, &["deployment", "web"]);
    let ctr = &d["spec"]["template"]["spec"]["containers"][0];
    assert_eq!(ctr["image"], IMAGE, "strategic merge kept the image: {d}");
    assert_eq!(ctr["env"][0]["value"], "1");
    c.k(&[
        "patch",
        "deployment",
        "web",
        "--type=merge",
        "-p",
        r#"{"metadata":{"labels":{"merged":"yes"}}}"#,
    ]);
    c.k(&[
        "patch",
        "deployment",
        "web",
        "--type=json",
        "-p",
        r#"[{"op":"replace","path":"/spec/template/spec/containers/0/env/0/value","value":"2"}]"#,
    ]);
    let d = get_json(&c, &["deployment", "web"]);
    assert_eq!(d["metadata"]["labels"]["merged"], "yes");
    assert_eq!(
        d["spec"]["template"]["spec"]["containers"][0]["env"][0]["value"],
        "2"
    );
    // kubectl says "(no change)" when the object it gets back equals the one it read; a
    // status write by the controllers in between makes it say "patched" instead: retry.
    let mut said = String::new();
    for _ in 0..10 {
        let r = c.kubectl(&["patch", "deployment", "web", "-p", r#"{"spec":{}}"#]);
        said = r.stdout.trim().to_string();
        if said == "deployment.apps/web patched (no change)" {
            break;
        }
        std::thread::sleep(std::time::Duration::from_millis(300));
    }
    assert_eq!(said, "deployment.apps/web patched (no change)");

    // replace with a stale object conflicts; a fresh one goes through.
    let mut cm = json!({"apiVersion": "v1", "kind": "ConfigMap",
        "metadata": {"name": "cfg"}, "data": {"k": "1"}});
    create(&c, &cm.to_string());
    cm["data"]["k"] = json!("2");
    let r = c.kubectl_stdin(&["replace", "-f", "-"], Some(&cm.to_string()));
    assert_eq!(r.stdout.trim(), "configmap/cfg replaced", "{}", r.stderr);
    assert_eq!(c.k(&["get", "cm", "cfg", "-o", "jsonpath={.data.k}"]), "2");

    // edit with a non-interactive editor.
    let editor = c.dir.path().join("editor.sh");
    std::fs::write(
        &editor,
        "#!/bin/sh\nsed -i 's/^  k: \"2\"$/  k: \"3\"/' \"$1\"\n",
    )
    .unwrap();
    Command::new("chmod")
        .arg("+x")
        .arg(&editor)
        .status()
        .unwrap();
    let r = kubectl_env(
        &c,
        &[("EDITOR", editor.to_str().unwrap())],
        &["edit", "cm", "cfg"],
    );
    assert!(r.ok, "{}", r.stderr);
    assert_eq!(r.stdout.trim(), "configmap/cfg edited");
    assert_eq!(c.k(&["get", "cm", "cfg", "-o", "jsonpath={.data.k}"]), "3");
    let r = kubectl_env(&c, &[("EDITOR", "true")], &["edit", "cm", "cfg"]);
    assert_eq!(r.stderr.trim(), "Edit cancelled, no changes made.");

    // scale through the scale subresource, with and without --current-replicas.
    assert_eq!(
        c.k(&["scale", "deployment/web", "--replicas=3"]).trim(),
        "deployment.apps/web scaled"
    );
    let r = c.kubectl(&[
        "scale",
        "deployment/web",
        "--current-replicas=2",
        "--replicas=1",
    ]);
    assert!(!r.ok);
    assert_eq!(r.stderr.trim(), "error: Expected replicas to be 2, was 3");
    c.k(&[
        "scale",
        "deployment/web",
        "--current-replicas=3",
        "--replicas=2",
    ]);
    let scale: Value = serde_json::from_str(&c.k(&[
        "get",
        "--raw",
        "/apis/apps/v1/namespaces/default/deployments/web/scale",
    ]))
    .unwrap();
    assert_eq!(scale["kind"], "Scale");
    assert_eq!(scale["spec"]["replicas"], 2);
    c.k(&["rollout", "status", "deployment/web", "--timeout=60s"]);

    // Revisions with their change causes.
    c.k(&[
        "set",
        "image",
        "deployment/web",
        "app=kedge.dev/samples/hello-wasm:v2",
    ]);
    c.k(&[
        "annotate",
        "deployment",
        "web",
        "kubernetes.io/change-cause=image v2",
    ]);
    c.k(&["rollout", "status", "deployment/web", "--timeout=60s"]);
    let history = c.wait("the change cause on the new ReplicaSet", || {
        let h = c.k(&["rollout", "history", "deployment/web"]);
        h.contains("image v2").then_some(h)
    });
    let rows: Vec<Vec<&str>> = history
        .lines()
        .skip(1)
        .filter(|l| !l.trim().is_empty())
        .map(|l| l.split_whitespace().collect())
        .collect();
    assert_eq!(rows[0], ["REVISION", "CHANGE-CAUSE"], "{history}");
    // Revisions 2 and 3 are the template patches above; the image change is the last.
    assert_eq!(rows[1], ["1", "<none>"], "{history}");
    let last = rows.last().unwrap();
    assert_eq!(last[1..], ["image", "v2"], "{history}");
    let latest: u32 = last[0].parse().unwrap();
    let rev1 = c.k(&["rollout", "history", "deployment/web", "--revision=1"]);
    assert!(rev1.contains(IMAGE), "{rev1}");

    // undo to revision 1 brings the first template back (as revision 3).
    assert_eq!(
        c.k(&["rollout", "undo", "deployment/web", "--to-revision=1"])
            .trim(),
        "deployment.apps/web rolled back"
    );
    c.k(&["rollout", "status", "deployment/web", "--timeout=60s"]);
    let d = get_json(&c, &["deployment", "web"]);
    assert_eq!(
        d["spec"]["template"]["spec"]["containers"][0]["image"],
        IMAGE
    );
    assert_eq!(
        d["metadata"]["annotations"]["deployment.kubernetes.io/revision"],
        (latest + 1).to_string()
    );

    // pause / resume / restart.
    assert_eq!(
        c.k(&["rollout", "pause", "deployment/web"]).trim(),
        "deployment.apps/web paused"
    );
    let r = c.kubectl(&["rollout", "pause", "deployment/web"]);
    assert!(!r.ok);
    assert_eq!(
        r.stderr.trim(),
        "error: deployments.apps \"web\" is already paused"
    );
    assert_eq!(
        c.k(&["rollout", "resume", "deployment/web"]).trim(),
        "deployment.apps/web resumed"
    );
    assert_eq!(
        c.k(&["rollout", "restart", "deployment/web"]).trim(),
        "deployment.apps/web restarted"
    );
    c.k(&["rollout", "status", "deployment/web", "--timeout=60s"]);
    let d = get_json(&c, &["deployment", "web"]);
    assert!(
        d["spec"]["template"]["metadata"]["annotations"]["kubectl.kubernetes.io/restartedAt"]
            .is_string(),
        "{d}"
    );

    // wait: jsonpath and delete.
    c.k(&[
        "wait",
        "--for=jsonpath={.status.readyReplicas}=2",
        "deployment/web",
        "--timeout=60s",
    ]);
    let r = c.kubectl(&[
        "wait",
        "--for=condition=Nonexistent",
        "deployment/web",
        "--timeout=1s",
    ]);
    assert!(!r.ok);
    assert_eq!(
        r.stderr.trim(),
        "error: timed out waiting for the condition on deployments/web"
    );
    let pods = c.k(&["get", "pods", "-l", "app=web", "-o", "name"]);
    c.k(&["delete", "deployment", "web", "--wait=false"]);
    let mut args = vec!["wait", "--for=delete", "--timeout=60s"];
    args.extend(pods.lines());
    c.k(&args);
}

/// delete with --cascade, DeleteOptions over REST, finalizers and --grace-period.
#[test]
fn deletion_propagation_finalizers_and_grace() {
    let c = with_node();
    let rs_names = |app: &str| c.k(&["get", "rs", "-l", &format!("app={app}"), "-o", "name"]);
    let running = |app: &str, n: usize| {
        c.wait(&format!("{n} pods of {app} Running"), || {
            let p = c.pods(&format!("app={app}"));
            (p.len() == n && p.iter().all(|p| p.phase == "Running")).then_some(p)
        })
    };

    // Orphan: the ReplicaSet and pods stay, without their owner reference.
    create(&c, &deployment_json("orph", 1));
    running("orph", 1);
    assert_eq!(
        c.k(&["delete", "deployment", "orph", "--cascade=orphan"])
            .trim(),
        "deployment.apps \"orph\" deleted"
    );
    let rs = rs_names("orph");
    assert_eq!(rs.lines().count(), 1, "{rs}");
    let rsj = get_json(&c, &[rs.trim()]);
    assert!(rsj["metadata"].get("ownerReferences").is_none(), "{rsj}");
    assert_eq!(running("orph", 1).len(), 1);

    // The same over REST: a DeleteOptions body as in the Kubernetes docs' curl example.
    create(&c, &deployment_json("orph2", 1));
    running("orph2", 1);
    let curl = Curl::new(&c);
    let (code, body) = curl.call(
        "DELETE",
        "/apis/apps/v1/namespaces/default/deployments/orph2",
        Some(r#"{"kind":"DeleteOptions","apiVersion":"v1","propagationPolicy":"Orphan"}"#),
    );
    assert_eq!(code, 200, "{body}");
    // The API only marks the owner (finalizer `orphan`); the garbage collector strips the
    // references, then the finalizer, and the deployment is gone.
    c.wait("the orphaning deployment gone", || {
        (!c.kubectl(&["get", "deployment", "orph2"]).ok).then_some(())
    });
    let rs = rs_names("orph2");
    assert_eq!(rs.lines().count(), 1, "{rs}");
    let rsj = get_json(&c, &[rs.trim()]);
    assert!(rsj["metadata"].get("ownerReferences").is_none(), "{rsj}");
    assert_eq!(running("orph2", 1).len(), 1);
    let (code, body) = curl.call(
        "DELETE",
        &format!(
            "/apis/apps/v1/namespaces/default/{}",
            rs.trim().replace("replicaset.apps/", "replicasets/")
        ),
        Some(r#"{"kind":"DeleteOptions","apiVersion":"v1","propagationPolicy":"Sideways"}"#),
    );
    assert_eq!(code, 400, "{body}");
    assert!(
        body.contains(r#"Unsupported value: \"Sideways\""#),
        "{body}"
    );
    // A ReplicaSet deleted with orphan propagation: its pods stay (its controller must not
    // adopt them back on the way out, or the garbage collector would take them).
    create(&c, &deployment_json("orph3", 2));
    running("orph3", 2);
    c.k(&["delete", "deployment", "orph3", "--cascade=orphan"]);
    let rs3 = rs_names("orph3");
    c.k(&["delete", rs3.trim(), "--cascade=orphan"]);
    std::thread::sleep(std::time::Duration::from_secs(3));
    let pods = c.pods("app=orph3");
    assert_eq!(pods.len(), 2, "{pods:?}");
    assert!(pods.iter().all(|p| !p.deleting), "{pods:?}");
    for p in &pods {
        let pj = get_json(&c, &["pod", &p.name]);
        assert!(pj["metadata"].get("ownerReferences").is_none(), "{pj}");
    }
    c.k(&["delete", "pods", "-l", "app=orph3", "--grace-period=1"]);

    // The orphans go with their (background) deletion.
    c.k(&["delete", "rs", "-l", "app in (orph,orph2)"]);
    c.wait("orphaned pods gone", || {
        c.pods("app in (orph,orph2)").is_empty().then_some(())
    });

    // Foreground: the owner stays, marked, until its dependents are gone.
    create(&c, &deployment_json("fg", 2));
    running("fg", 2);
    let w = Streaming::start(
        &c,
        &[
            "get",
            "deployment",
            "fg",
            "-w",
            "--output-watch-events",
            "-o",
            "jsonpath={.type} {.object.metadata.finalizers} {.object.metadata.deletionTimestamp}{\"\\n\"}",
        ],
    );
    // The watch is established (its initial ADDED arrived) before the delete.
    w.until("the watch's initial event", |l| l.starts_with("ADDED"));
    c.k(&["delete", "deployment", "fg", "--cascade=foreground"]);
    assert!(c.pods("app=fg").is_empty(), "pods gone before the owner");
    assert!(rs_names("fg").trim().is_empty());
    let seen = w.until("DELETED", |l| l.starts_with("DELETED"));
    assert!(
        seen.iter()
            .any(|l| l.starts_with("MODIFIED") && l.contains("foregroundDeletion")),
        "{seen:?}"
    );
    drop(w);

    // Background (the default): the owner goes at once, the dependents after it.
    create(&c, &deployment_json("bg", 1));
    running("bg", 1);
    c.k(&["delete", "deployment", "bg", "--cascade=background"]);
    c.wait("bg pods gone", || c.pods("app=bg").is_empty().then_some(()));
    assert!(rs_names("bg").trim().is_empty());

    // A custom finalizer holds the object, marked, until it is removed.
    let cm = json!({"apiVersion": "v1", "kind": "ConfigMap",
        "metadata": {"name": "held", "finalizers": ["example.com/hold"]}});
    create(&c, &cm.to_string());
    let r = c.kubectl(&["delete", "cm", "held", "--wait=false"]);
    assert_eq!(
        r.stdout.trim(),
        "configmap \"held\" deleted",
        "{}",
        r.stderr
    );
    let held = get_json(&c, &["cm", "held"]);
    assert!(held["metadata"]["deletionTimestamp"].is_string(), "{held}");
    // Still there on a second delete, and no new field can be added by a finalizer-less write.
    c.k(&["delete", "cm", "held", "--wait=false"]);
    assert!(c.kubectl(&["get", "cm", "held"]).ok);
    c.k(&[
        "patch",
        "cm",
        "held",
        "--type=json",
        "-p",
        r#"[{"op":"remove","path":"/metadata/finalizers"}]"#,
    ]);
    let r = c.kubectl(&["get", "cm", "held"]);
    assert_eq!(
        r.stderr.trim(),
        "Error from server (NotFound): configmaps \"held\" not found"
    );

    // --grace-period: a running pod terminates within it; 0 with --force is immediate.
    create(&c, &pod_json("graceful", json!({})));
    c.wait("graceful Running", || {
        (phase(&c, "default", "graceful") == "Running").then_some(())
    });
    c.k(&[
        "delete",
        "pod",
        "graceful",
        "--grace-period=5",
        "--wait=false",
    ]);
    // The agent may already have stopped it; while it terminates, the grace period shows.
    let r = c.kubectl(&["get", "pod", "graceful", "-o", "json"]);
    if r.ok {
        let p: Value = serde_json::from_str(&r.stdout).unwrap();
        assert_eq!(p["metadata"]["deletionGracePeriodSeconds"], 5, "{p}");
    }
    c.k(&["wait", "--for=delete", "pod/graceful", "--timeout=30s"]);
    create(&c, &pod_json("forced", json!({})));
    let r = c.kubectl(&["delete", "pod", "forced", "--grace-period=0", "--force"]);
    assert!(r.ok, "{}", r.stderr);
    assert!(
        r.stderr
            .contains("Immediate deletion does not wait for confirmation that the running resource has been terminated"),
        "{}",
        r.stderr
    );
    assert_eq!(r.stdout.trim(), "pod \"forced\" force deleted");
    assert!(!c.kubectl(&["get", "pod", "forced"]).ok);
}

/// Invalid requests: the Status kubectl renders, and nothing changes.
#[test]
fn errors_render_as_kubectl_prints_them() {
    let c = Cluster::start();
    create(&c, &deployment_json("d", 1));
    let before = get_json(&c, &["deployment", "d"]);
    let configmaps = c.k(&["get", "cm", "-o", "name"]);
    // (Not the resourceVersion: the controllers keep writing the Deployment's status and
    // revision annotation meanwhile. What a request could change is spec, labels, generation.)
    let generation = before["metadata"]["generation"].clone();
    let expect = |args: &[&str], stdin: Option<&str>, line: &str| {
        let r = c.kubectl_stdin(args, stdin);
        assert!(!r.ok, "{args:?} succeeded: {}", r.stdout);
        assert_eq!(r.stderr.trim(), line, "{args:?}");
    };
    expect(
        &["get", "deployment", "nope"],
        None,
        "Error from server (NotFound): deployments.apps \"nope\" not found",
    );
    expect(
        &["create", "-f", "-"],
        Some(&deployment_json("d", 1)),
        "Error from server (AlreadyExists): error when creating \"STDIN\": deployments.apps \"d\" already exists",
    );
    expect(
        &["scale", "deployment", "d", "--replicas=-1"],
        None,
        "error: The --replicas=COUNT flag is required, and COUNT must be greater than or equal to 0",
    );
    expect(
        &[
            "patch",
            "deployment",
            "d",
            "--type=merge",
            "-p",
            r#"{"spec":{"replicas":-2}}"#,
        ],
        None,
        "The Deployment \"d\" is invalid: spec.replicas: Invalid value: -2: must be greater than or equal to 0",
    );
    expect(
        &[
            "patch",
            "deployment",
            "d",
            "--type=json",
            "-p",
            r#"[{"op":"replace","path":"/spec/nothere/x","value":1}]"#,
        ],
        None,
        "The request is invalid: : invalid JSON patch: operation '/0' failed at path '/spec/nothere/x': path is invalid",
    );
    // A stale resourceVersion on replace.
    let mut stale = before.clone();
    stale["metadata"]["resourceVersion"] = json!("1");
    expect(
        &["replace", "-f", "-"],
        Some(&stale.to_string()),
        "Error from server (Conflict): error when replacing \"STDIN\": Operation cannot be fulfilled on deployments.apps \"d\": the object has been modified; please apply your changes to the latest version and try again",
    );
    let curl = Curl::new(&c);
    let (code, body) = curl.call(
        "POST",
        "/api/v1/namespaces/default/configmaps",
        Some("{not json"),
    );
    assert_eq!(code, 400, "{body}");
    let s: Value = serde_json::from_str(&body).unwrap();
    assert_eq!(
        (s["kind"].as_str(), s["reason"].as_str()),
        (Some("Status"), Some("BadRequest"))
    );
    let out = Command::new("curl")
        .args([
            "-sk",
            "-w",
            "\n%{http_code}",
            "-X",
            "POST",
            "-H",
            "Content-Type: text/csv",
            "-d",
            "a,b",
        ])
        .arg("--cert")
        .arg(&curl.cert)
        .arg("--key")
        .arg(&curl.key)
        .arg(format!(
            "{}/api/v1/namespaces/default/configmaps",
            curl.base
        ))
        .output()
        .unwrap();
    let text = String::from_utf8_lossy(&out.stdout);
    assert!(text.ends_with("\n415"), "{text}");
    assert!(
        text.contains("\"reason\":\"UnsupportedMediaType\""),
        "{text}"
    );
    let (code, body) = curl.call("DELETE", "/api/v1/namespaces/default/configmaps/nope", None);
    assert_eq!(code, 404, "{body}");
    // Nothing changed.
    let after = get_json(&c, &["deployment", "d"]);
    assert_eq!(after["metadata"]["generation"], generation);
    assert_eq!(after["metadata"]["labels"], before["metadata"]["labels"]);
    assert_eq!(after["spec"], before["spec"]);
    assert_eq!(c.k(&["get", "cm", "-o", "name"]), configmaps);
}
