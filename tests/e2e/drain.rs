//! Eviction and drain end to end, with the real kubectl: `kubectl cordon/uncordon`,
//! `kubectl create pdb` and `kubectl get pdb`, and `kubectl drain` evicting through the
//! `pods/eviction` subresource — held back by a PodDisruptionBudget the disruption controller
//! keeps up to date, skipping DaemonSet pods, and moving a Deployment's pods to the other node.

use crate::harness::{Cluster, PodInfo};

const APP: &str = "app=drain-web";

const DEPLOYMENT: &str = r#"{"apiVersion":"apps/v1","kind":"Deployment","metadata":{"name":"web"},
  "spec":{"replicas":2,"selector":{"matchLabels":{"app":"drain-web"}},
    "template":{"metadata":{"labels":{"app":"drain-web"}},"spec":{
      "terminationGracePeriodSeconds":2,
      "containers":[{"name":"hello","image":"kedge.dev/samples/hello-wasm:v1"}]}}}}"#;

const DAEMONSET: &str = r#"{"apiVersion":"apps/v1","kind":"DaemonSet","metadata":{"name":"agent"},
  "spec":{"selector":{"matchLabels":{"app":"drain-agent"}},
    "template":{"metadata":{"labels":{"app":"drain-agent"}},"spec":{
      "terminationGracePeriodSeconds":2,
      "containers":[{"name":"hello","image":"kedge.dev/samples/hello-wasm:v1"}]}}}}"#;

fn node_json(c: &Cluster, name: &str) -> serde_json::Value {
    serde_json::from_str(&c.k(&["get", "node", name, "-o", "json"])).unwrap()
}

fn ready(c: &Cluster, name: &str) -> bool {
    let r = c.kubectl(&["get", "node", name, "-o", "json"]);
    r.ok && serde_json::from_str::<serde_json::Value>(&r.stdout).is_ok_and(|n| {
        n["status"]["conditions"]
            .as_array()
            .into_iter()
            .flatten()
            .any(|c| c["type"] == "Ready" && c["status"] == "True")
    })
}

/// The Deployment's live pods once there are exactly two, Running and ready.
fn two_running(c: &Cluster) -> Option<Vec<PodInfo>> {
    let pods: Vec<PodInfo> = c.pods(APP).into_iter().filter(|p| !p.deleting).collect();
    (pods.len() == 2 && pods.iter().all(|p| p.phase == "Running" && p.ready)).then_some(pods)
}

/// The `kubectl get node` STATUS cell.
fn node_status(c: &Cluster, name: &str) -> String {
    let out = c.k(&["get", "node", name, "--no-headers"]);
    out.split_whitespace()
        .nth(1)
        .unwrap_or_default()
        .to_string()
}

fn pdb_status(c: &Cluster) -> serde_json::Value {
    let v: serde_json::Value =
        serde_json::from_str(&c.k(&["get", "pdb", "web", "-o", "json"])).unwrap();
    let s = &v["status"];
    serde_json::json!([
        s["observedGeneration"],
        s["expectedPods"],
        s["desiredHealthy"],
        s["currentHealthy"],
        s["disruptionsAllowed"]
    ])
}

#[test]
fn drain_respects_disruption_budgets_and_daemonsets() {
    let mut c = Cluster::start();
    let token = c.token.clone();
    c.start_agent("node-a", &token);
    c.start_agent("node-b", &token);
    c.wait("both nodes Ready", || {
        (ready(&c, "node-a") && ready(&c, "node-b")).then_some(())
    });

    // Cordoned, node-b takes no new pods: the Deployment lands on node-a.
    assert!(c.k(&["cordon", "node-b"]).contains("node/node-b cordoned"));
    assert_eq!(node_json(&c, "node-b")["spec"]["unschedulable"], true);
    assert_eq!(node_status(&c, "node-b"), "Ready,SchedulingDisabled");
    let r = c.kubectl_stdin(&["create", "-f", "-"], Some(DEPLOYMENT));
    assert!(r.ok, "{}", r.stderr);
    let r = c.kubectl_stdin(&["create", "-f", "-"], Some(DAEMONSET));
    assert!(r.ok, "{}", r.stderr);
    let first = c.wait("two web pods Running on node-a", || two_running(&c));
    assert!(first.iter().all(|p| p.node == "node-a"), "{first:?}");
    c.wait("a daemon pod Running on node-a", || {
        c.pods("app=drain-agent")
            .iter()
            .any(|p| p.node == "node-a" && p.phase == "Running")
            .then_some(())
    });
    assert!(
        c.k(&["uncordon", "node-b"])
            .contains("node/node-b uncordoned")
    );
    assert_eq!(node_status(&c, "node-b"), "Ready");

    // A budget that keeps both pods (kubectl sends it as protobuf), kept by the disruption
    // controller: 2 expected, 2 desired, 2 healthy, nothing to spare.
    let out = c.k(&[
        "create",
        "pdb",
        "web",
        "--selector",
        APP,
        "--min-available",
        "2",
    ]);
    assert!(
        out.contains("poddisruptionbudget.policy/web created"),
        "{out}"
    );
    c.wait("the budget's status", || {
        (pdb_status(&c) == serde_json::json!([1, 2, 2, 2, 0])).then_some(())
    });
    let table = c.k(&["get", "pdb"]);
    let header: Vec<&str> = table.lines().next().unwrap().split_whitespace().collect();
    assert_eq!(
        header,
        [
            "NAME",
            "MIN",
            "AVAILABLE",
            "MAX",
            "UNAVAILABLE",
            "ALLOWED",
            "DISRUPTIONS",
            "AGE"
        ],
        "{table}"
    );
    let row: Vec<&str> = table.lines().nth(1).unwrap().split_whitespace().collect();
    assert_eq!(row[..4], ["web", "2", "N/A", "0"], "{table}");

    // Without --ignore-daemonsets, drain refuses the DaemonSet's pod.
    let r = c.kubectl(&["drain", "node-a", "--timeout=15s"]);
    assert!(!r.ok);
    assert!(
        r.stderr.contains("cannot delete DaemonSet-managed Pods"),
        "{}",
        r.stderr
    );

    // The budget holds: drain cordons node-a, retries the refused evictions, and gives up.
    let r = c.kubectl(&[
        "drain",
        "node-a",
        "--ignore-daemonsets",
        "--delete-emptydir-data",
        "--timeout=15s",
    ]);
    assert!(
        !r.ok,
        "drain must fail while the budget holds:\n{}",
        r.stdout
    );
    assert!(
        r.stderr
            .contains("Cannot evict pod as it would violate the pod's disruption budget"),
        "{}",
        r.stderr
    );
    assert_eq!(node_status(&c, "node-a"), "Ready,SchedulingDisabled");
    let still = two_running(&c).expect("both pods still running");
    assert!(still.iter().all(|p| p.node == "node-a"), "{still:?}");

    // One pod may go at a time: drain evicts one, waits for its replacement on node-b to be
    // Ready (the controller then allows the next), evicts the other, and succeeds.
    c.k(&[
        "patch",
        "pdb",
        "web",
        "--type=merge",
        "-p",
        r#"{"spec":{"minAvailable":1}}"#,
    ]);
    c.wait("the budget allowing one disruption", || {
        (pdb_status(&c) == serde_json::json!([2, 2, 1, 2, 1])).then_some(())
    });
    let r = c.kubectl(&[
        "drain",
        "node-a",
        "--ignore-daemonsets",
        "--delete-emptydir-data",
        "--timeout=120s",
    ]);
    assert!(
        r.ok,
        "drain failed:\n{}\n{}\n--- server ---\n{}",
        r.stdout,
        r.stderr,
        crate::harness::tail(&c.server.log_text(), 40)
    );
    assert!(
        r.stdout.contains("evicting pod default/web-"),
        "{}",
        r.stdout
    );
    assert!(r.stdout.contains("node/node-a drained"), "{}", r.stdout);
    assert!(
        r.stderr.contains("ignoring DaemonSet-managed Pods"),
        "{}",
        r.stderr
    );
    let moved = c.wait("both pods Running on node-b", || {
        two_running(&c).filter(|pods| pods.iter().all(|p| p.node == "node-b"))
    });
    assert!(
        moved.iter().all(|p| first.iter().all(|f| f.name != p.name)),
        "replacements: {moved:?}"
    );
    // The DaemonSet's pod stays.
    assert!(
        c.pods("app=drain-agent")
            .iter()
            .any(|p| p.node == "node-a" && !p.deleting)
    );
    assert_eq!(node_status(&c, "node-a"), "Ready,SchedulingDisabled");

    assert!(
        c.k(&["uncordon", "node-a"])
            .contains("node/node-a uncordoned")
    );
    assert_eq!(node_status(&c, "node-a"), "Ready");
    assert!(node_json(&c, "node-a")["spec"]["unschedulable"].is_null());
}
