//! Node loss, end to end: an agent dies; the node lifecycle plugin marks its node Unknown and
//! taints it unreachable, evicts its pods, the Deployment replaces them on the other node; the
//! agent comes back and everything converges. Timeouts shortened through the
//! `kube-system/kedge-node-lifecycle` ConfigMap.

use serde_json::Value;

use crate::harness::Cluster;

fn node(c: &Cluster, name: &str) -> Option<Value> {
    let r = c.kubectl(&["get", "node", name, "-o", "json"]);
    r.ok.then(|| serde_json::from_str(&r.stdout).unwrap())
}

fn ready_status(n: &Value) -> String {
    n.pointer("/status/conditions")
        .and_then(Value::as_array)
        .and_then(|cs| cs.iter().find(|c| c["type"] == "Ready"))
        .and_then(|c| c["status"].as_str())
        .unwrap_or("")
        .to_string()
}

fn unreachable_taints(n: &Value) -> usize {
    n.pointer("/spec/taints")
        .and_then(Value::as_array)
        .map_or(0, |ts| {
            ts.iter()
                .filter(|t| t["key"] == "node.kubernetes.io/unreachable")
                .count()
        })
}

#[test]
fn a_lost_node_turns_unknown_its_pods_move_and_it_recovers() {
    let mut c = Cluster::start();
    let cm = r#"{"apiVersion":"v1","kind":"ConfigMap",
        "metadata":{"name":"kedge-node-lifecycle","namespace":"kube-system"},
        "data":{"gracePeriodSeconds":"15","evictionSeconds":"3"}}"#;
    let r = c.kubectl_stdin(&["create", "-f", "-"], Some(cm));
    assert!(r.ok, "{}", r.stderr);
    let token = c.token.clone();
    c.start_agent("node-a", &token);
    c.start_agent_with(
        "node-b",
        &token,
        &[
            "--node-labels",
            "kedge.io/pool=shops",
            "--node-taints",
            "edge.example/slow=yes:PreferNoSchedule",
        ],
    );
    c.wait("both nodes Ready", || {
        let a = node(&c, "node-a")?;
        let b = node(&c, "node-b")?;
        (ready_status(&a) == "True" && ready_status(&b) == "True").then_some(())
    });
    // Labels and taints from the agent's flags; runtimes and pressure conditions reported.
    let b = node(&c, "node-b").unwrap();
    assert_eq!(b["metadata"]["labels"]["kedge.io/pool"], "shops");
    assert_eq!(b["metadata"]["labels"]["kedge.io/runtime-wasm"], "true");
    let taints = b["spec"]["taints"].as_array().cloned().unwrap_or_default();
    assert!(
        taints
            .iter()
            .any(|t| t["key"] == "edge.example/slow" && t["effect"] == "PreferNoSchedule"),
        "{taints:?}"
    );
    // Capacity and allocatable (CPU, memory, pods), addresses, node info with the runtimes.
    let st = &b["status"];
    for r in ["cpu", "memory", "pods"] {
        for k in ["capacity", "allocatable"] {
            assert!(
                st[k][r].as_str().is_some_and(|v| !v.is_empty()),
                "{k}.{r}: {st}"
            );
        }
    }
    assert_eq!(st["capacity"]["pods"], "110");
    assert!(st["capacity"]["memory"].as_str().unwrap().ends_with("Ki"));
    let addresses = st["addresses"].as_array().unwrap();
    for t in ["InternalIP", "Hostname"] {
        assert!(addresses.iter().any(|a| a["type"] == t), "{addresses:?}");
    }
    let info = &st["nodeInfo"];
    assert_eq!(info["operatingSystem"], "linux");
    assert_eq!(
        info["architecture"],
        std::env::consts::ARCH
            .replace("x86_64", "amd64")
            .replace("aarch64", "arm64")
    );
    assert!(
        info["kubeletVersion"].as_str().unwrap().contains("kedge"),
        "{info}"
    );
    assert!(
        info["containerRuntimeVersion"]
            .as_str()
            .unwrap()
            .contains("wasmtime"),
        "{info}"
    );
    // The images it holds, for the scheduler's image locality.
    let images = b["status"]["images"]
        .as_array()
        .cloned()
        .unwrap_or_default();
    assert!(
        images.iter().any(|i| i["names"]
            .as_array()
            .is_some_and(|n| n.iter().any(|n| n == "kedge.dev/samples/hello-wasm:v1"))
            && i["sizeBytes"].as_u64().is_some_and(|s| s > 0)),
        "{images:?}"
    );
    let conds = b["status"]["conditions"].as_array().unwrap();
    // (Their status is this machine's: a nearly full disk does show DiskPressure.)
    for t in ["MemoryPressure", "DiskPressure", "PIDPressure"] {
        assert!(
            conds
                .iter()
                .any(|c| c["type"] == t && (c["status"] == "False" || c["status"] == "True")),
            "{conds:?}"
        );
    }
    let deploy = r#"{"apiVersion":"apps/v1","kind":"Deployment","metadata":{"name":"spread"},
      "spec":{"replicas":2,"selector":{"matchLabels":{"app":"spread"}},
      "template":{"metadata":{"labels":{"app":"spread"}},"spec":{
        "terminationGracePeriodSeconds":2,
        "tolerations":[{"key":"edge.example/slow","operator":"Exists","effect":"PreferNoSchedule"}],
        "containers":[{"name":"hello","image":"kedge.dev/samples/hello-wasm:v1"}]}}}}"#;
    // (The toleration: as with kube-scheduler, an untolerated PreferNoSchedule taint weighs
    // more than spreading, and this test wants one replica per node.)
    let r = c.kubectl_stdin(&["create", "-f", "-"], Some(deploy));
    assert!(r.ok, "{}", r.stderr);
    let pods = c.wait("one Running pod on each node", || {
        let p = c.pods("app=spread");
        let on = |n: &str| {
            p.iter()
                .filter(|p| p.node == n && p.phase == "Running")
                .count()
        };
        (p.len() == 2 && on("node-a") == 1 && on("node-b") == 1).then_some(p)
    });
    let lost = pods
        .iter()
        .find(|p| p.node == "node-b")
        .unwrap()
        .name
        .clone();

    // node-b's agent dies (no goodbye: SIGKILL).
    c.agent("node-b").crash();
    c.wait("node-b Unknown and tainted unreachable", || {
        let n = node(&c, "node-b")?;
        (ready_status(&n) == "Unknown" && unreachable_taints(&n) == 2).then_some(())
    });
    c.wait("the pod of node-b evicted and replaced on node-a", || {
        let p = c.pods("app=spread");
        let evicted = p.iter().any(|p| p.name == lost && p.deleting);
        let on_a = p
            .iter()
            .filter(|p| p.node == "node-a" && p.phase == "Running" && !p.deleting)
            .count();
        (evicted && on_a == 2).then_some(())
    });
    let events = c.k(&["get", "events", "-A"]);
    assert!(
        events.contains("NodeNotReady") && events.contains("TaintManagerEviction"),
        "{events}"
    );
    // Nothing new goes to the unreachable node.
    assert!(
        c.pods("app=spread")
            .iter()
            .all(|p| p.node != "node-b" || p.name == lost)
    );

    // The agent comes back (same data dir, its node certificate): Ready, untainted, and it
    // confirms the deletion of the pod evicted while it was away.
    c.start_agent("node-b", &token);
    c.wait("node-b Ready again and untainted", || {
        let n = node(&c, "node-b")?;
        (ready_status(&n) == "True" && unreachable_taints(&n) == 0).then_some(())
    });
    c.wait("the evicted pod gone", || {
        (!c.pods("app=spread").iter().any(|p| p.name == lost)).then_some(())
    });
    let p = c.pods("app=spread");
    assert_eq!(p.len(), 2, "{p:?}");
    // kubectl describe node tells the story.
    let described = c.k(&["describe", "node", "node-b"]);
    for reason in ["Starting", "NodeNotReady", "NodeReachable"] {
        assert!(
            described.contains(reason),
            "no {reason} event:\n{described}"
        );
    }
}
