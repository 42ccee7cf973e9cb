//! Offline autonomy: an agent restarted while the server is down runs its pods again from its
//! own record, and reconciles with the API when the server is back (a pod deleted meanwhile
//! is stopped, the others carry on with their status re-sent).

use std::path::{Path, PathBuf};
use std::time::Duration;

use crate::harness::{Cluster, Proc, plugin_cache, spawn, wait_for};

/// Starts the cluster's server again on its data dir and address.
fn restart_server(c: &mut Cluster) {
    let data = c.dir.path().join("server");
    let listen = format!("{}:{}", c.host, c.port);
    let cache = plugin_cache();
    let p: Proc = spawn(
        "server-again",
        c.dir.path(),
        &[
            "server",
            "--data-dir",
            data.to_str().unwrap(),
            "--listen",
            &listen,
            "--plugin-cache-dir",
            cache.to_str().unwrap(),
            "--tls-san",
            &c.host,
        ],
    );
    c.server = p;
    c.wait("the API back", || {
        c.kubectl(&["get", "--raw", "/readyz"]).ok.then_some(())
    });
}

/// Every CRI log file of the pod `name` on the node whose data dir is `node_dir`.
fn log_files(node_dir: &Path, name: &str) -> Vec<PathBuf> {
    fn walk(d: &Path, out: &mut Vec<PathBuf>) {
        for e in std::fs::read_dir(d).into_iter().flatten().flatten() {
            let p = e.path();
            if p.is_dir() {
                walk(&p, out);
            } else if p.extension().is_some_and(|x| x == "log") {
                out.push(p);
            }
        }
    }
    let mut out = Vec::new();
    for e in std::fs::read_dir(node_dir.join("pods"))
        .into_iter()
        .flatten()
        .flatten()
    {
        if e.file_name()
            .to_string_lossy()
            .contains(&format!("_{name}_"))
        {
            walk(&e.path(), &mut out);
        }
    }
    out
}

/// Whether the pod wrote a log line stamped after `since` (CRI lines start with RFC 3339).
fn logged_since(node_dir: &Path, name: &str, since: chrono::DateTime<chrono::Utc>) -> bool {
    log_files(node_dir, name).iter().any(|f| {
        std::fs::read_to_string(f)
            .unwrap_or_default()
            .lines()
            .any(|l| {
                l.split_whitespace()
                    .next()
                    .and_then(|t| chrono::DateTime::parse_from_rfc3339(t).ok())
                    .is_some_and(|t| t > since)
            })
    })
}

const PODS: &str = r#"apiVersion: v1
kind: Pod
metadata: {name: keep}
spec:
  containers:
  - {name: hello, image: "kedge.dev/samples/hello-wasm:v1"}
---
apiVersion: v1
kind: Pod
metadata: {name: doomed}
spec:
  containers:
  - {name: hello, image: "kedge.dev/samples/hello-wasm:v1"}
"#;

#[test]
fn an_agent_restarted_while_the_server_is_down_runs_its_pods_from_local_state() {
    let mut c = Cluster::start();
    let token = c.token.clone();
    let node = "auto-node";
    let node_dir = c.dir.path().join(node);
    c.start_agent(node, &token);
    let out = c.kubectl_stdin(&["apply", "-f", "-"], Some(PODS));
    assert!(out.ok, "{}", out.stderr);
    c.wait("both pods Running", || {
        let pods = c.pods("");
        let running = pods.iter().filter(|p| p.phase == "Running").count();
        (running == 2).then_some(())
    });
    let uid = c.k(&["get", "pod", "keep", "-o", "jsonpath={.metadata.uid}"]);

    // Server down, then the agent restarted: both pods run again from the local record.
    c.server.kill();
    c.agent(node).kill();
    let restarted = chrono::Utc::now();
    std::thread::sleep(Duration::from_millis(1100));
    c.agents.retain(|a| a.name != node);
    c.start_agent(node, &token);
    wait_for(
        "both pods running again without the server",
        Duration::from_secs(60),
        || {
            (logged_since(&node_dir, "keep", restarted)
                && logged_since(&node_dir, "doomed", restarted))
            .then_some(())
        },
    );
    let log = c.agent(node).log_text();
    assert!(log.contains("starting pod from the local record"), "{log}");

    // Server back: the agent reconnects, the pod is the same one, and Running.
    restart_server(&mut c);
    c.wait("keep Running again, same uid", || {
        let out = c.kubectl(&[
            "get",
            "pod",
            "keep",
            "-o",
            "jsonpath={.metadata.uid} {.status.phase}",
        ]);
        (out.ok && out.stdout == format!("{uid} Running")).then_some(())
    });
    // The agent redials with back-off; once it is back, logs come through the tunnel.
    c.wait("kubectl logs through the tunnel again", || {
        let out = c.kubectl(&["logs", "keep"]);
        (out.ok && !out.stdout.is_empty()).then_some(())
    });

    // A pod deleted while its agent is away is stopped when the agent comes back, even if
    // the agent first started it from its record.
    c.agent(node).kill();
    let out = c.kubectl(&["delete", "pod", "doomed", "--wait=false"]);
    assert!(out.ok, "{}", out.stderr);
    c.server.kill();
    c.agents.retain(|a| a.name != node);
    c.start_agent(node, &token);
    std::thread::sleep(Duration::from_secs(2));
    restart_server(&mut c);
    c.wait("doomed gone, keep Running", || {
        let gone = !c.kubectl(&["get", "pod", "doomed"]).ok;
        let keep = c.k(&["get", "pod", "keep", "-o", "jsonpath={.status.phase}"]);
        (gone && keep == "Running").then_some(())
    });
    let records = std::fs::read_dir(node_dir.join("pod-cache"))
        .unwrap()
        .count();
    assert_eq!(records, 1, "only keep is still recorded");
}
