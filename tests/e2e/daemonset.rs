//! DaemonSet end to end: one pod of the sample Wasm app per node, a joining node gets its
//! pod, `kubectl set image` rolls the pods, a nodeSelector that excludes a node removes its
//! pod, and `kubectl get ds` / `kubectl rollout status ds` read the controller's status.

use std::collections::BTreeMap;

use crate::harness::{Cluster, PodInfo};

const SELECTOR: &str = "app=hello-ds";
const V1: &str = "kedge.dev/samples/hello-wasm:v1";
const V2: &str = "kedge.dev/samples/hello-wasm:v2";

const DS: &str = r#"{"apiVersion":"apps/v1","kind":"DaemonSet","metadata":{"name":"hello"},
  "spec":{"selector":{"matchLabels":{"app":"hello-ds"}},
    "updateStrategy":{"type":"RollingUpdate","rollingUpdate":{"maxUnavailable":1}},
    "template":{"metadata":{"labels":{"app":"hello-ds"}},"spec":{
      "terminationGracePeriodSeconds":2,
      "containers":[{"name":"hello","image":"kedge.dev/samples/hello-wasm:v1"}]}}}}"#;

/// node → pod, once the DaemonSet's pods are exactly one Running, ready pod of `image` on
/// each of `nodes` (and nothing else, terminating pods aside).
fn settled(c: &Cluster, nodes: &[&str], image: &str) -> Option<BTreeMap<String, PodInfo>> {
    let pods: Vec<PodInfo> = c
        .pods(SELECTOR)
        .into_iter()
        .filter(|p| !p.deleting)
        .collect();
    let ok = pods.len() == nodes.len()
        && pods
            .iter()
            .all(|p| p.phase == "Running" && p.ready && p.image == image);
    let by_node: BTreeMap<String, PodInfo> =
        pods.into_iter().map(|p| (p.node.clone(), p)).collect();
    let on_nodes = by_node.keys().map(String::as_str).eq(nodes.iter().copied());
    (ok && on_nodes).then_some(by_node)
}

/// `kubectl get ds hello`: DESIRED CURRENT READY UP-TO-DATE AVAILABLE.
fn ds_row(c: &Cluster) -> Vec<String> {
    let table = c.k(&["get", "ds", "hello"]);
    table
        .lines()
        .find(|l| l.starts_with("hello "))
        .map(|l| {
            l.split_whitespace()
                .skip(1)
                .take(5)
                .map(str::to_owned)
                .collect()
        })
        .unwrap_or_default()
}

#[test]
fn daemonset_follows_nodes_rolls_images_and_honours_node_selectors() {
    let mut c = Cluster::start();
    let token = c.token.clone();
    c.start_agent("node-a", &token);
    let r = c.kubectl_stdin(&["create", "-f", "-"], Some(DS));
    assert!(r.ok, "{}", r.stderr);
    let first = c.wait("a Running daemon pod on node-a", || {
        settled(&c, &["node-a"], V1)
    });

    // A joining node gets its pod (noticed by the controller's node poll, ≤ 10 s).
    c.start_agent("node-b", &token);
    let both = c.wait("a daemon pod on each node", || {
        settled(&c, &["node-a", "node-b"], V1)
    });
    assert_eq!(
        both["node-a"].name, first["node-a"].name,
        "node-a's pod kept"
    );
    c.wait(
        "kubectl get ds: 2 desired, current, ready, up to date, available",
        || (ds_row(&c) == ["2", "2", "2", "2", "2"]).then_some(()),
    );

    // A new image rolls the pods one node at a time.
    c.k(&["set", "image", "ds/hello", &format!("hello={V2}")]);
    c.k(&["rollout", "status", "ds/hello", "--timeout=60s"]);
    let rolled = c.wait("both pods replaced by the new image", || {
        settled(&c, &["node-a", "node-b"], V2)
    });
    for (node, p) in &rolled {
        assert_ne!(p.name, both[node].name, "{node}'s pod was not replaced");
    }
    let revisions = c.k(&["get", "controllerrevisions", "-l", SELECTOR, "-o", "name"]);
    assert_eq!(revisions.lines().count(), 2, "{revisions}");

    // A nodeSelector matching node-a only: node-b's pod goes.
    c.k(&["label", "node", "node-a", "role=edge"]);
    c.k(&[
        "patch",
        "ds",
        "hello",
        "--type=merge",
        "-p",
        r#"{"spec":{"template":{"spec":{"nodeSelector":{"role":"edge"}}}}}"#,
    ]);
    c.wait("only node-a keeps a daemon pod", || {
        settled(&c, &["node-a"], V2)
    });
    c.wait("kubectl get ds: 1 everywhere", || {
        (ds_row(&c) == ["1", "1", "1", "1", "1"]).then_some(())
    });
    let described = c.k(&["describe", "ds", "hello"]);
    for want in [
        "SuccessfulCreate",
        "Created pod: hello-",
        "SuccessfulDelete",
    ] {
        assert!(described.contains(want), "no {want}:\n{described}");
    }

    // The ControllerRevisions are what `kubectl rollout history/undo` use: undoing the
    // nodeSelector brings node-b's pod back.
    let history = c.k(&["rollout", "history", "ds/hello"]);
    assert!(history.contains('3'), "{history}");
    c.k(&["rollout", "undo", "ds/hello"]);
    c.wait("node-b's pod back after the undo", || {
        settled(&c, &["node-a", "node-b"], V2)
    });

    c.k(&["delete", "ds", "hello"]);
    c.wait("the daemon pods gone", || {
        c.pods(SELECTOR).is_empty().then_some(())
    });
}
