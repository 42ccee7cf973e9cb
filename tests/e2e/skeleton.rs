//! The walking skeleton, end to end: a server and two agents as real processes on loopback,
//! driven by the real kubectl.

use std::collections::BTreeSet;
use std::time::Duration;

use crate::harness::{Cluster, tail};

const APP: &str = "app=hello-wasm";

fn running(c: &Cluster, n: usize, image: &str) -> Option<Vec<crate::harness::PodInfo>> {
    let pods = c.pods(APP);
    let ok = pods.len() == n
        && pods
            .iter()
            .all(|p| p.phase == "Running" && p.ready && !p.deleting && p.image == image);
    ok.then_some(pods)
}

#[test]
fn deployment_of_a_wasm_app_across_two_nodes_behind_the_tunnel() {
    let mut c = Cluster::start();
    let token = c.token.clone();
    c.start_agent("node-a", &token);
    // The second node joins with a token made by `kedge token create`, as an operator would.
    let out = std::process::Command::new(crate::harness::KEDGE)
        .args(["token", "create", "--ttl", "1h", "--kubeconfig"])
        .arg(&c.kubeconfig)
        .output()
        .unwrap();
    assert!(
        out.status.success(),
        "token create: {}",
        String::from_utf8_lossy(&out.stderr)
    );
    let token_b = String::from_utf8(out.stdout).unwrap().trim().to_string();
    assert!(token_b.starts_with("K10") && token_b != token);
    c.start_agent("node-b", &token_b);

    c.wait("both nodes Ready", || {
        let out = c.k(&[
            "get",
            "nodes",
            "-o",
            "jsonpath={range .items[*]}{.metadata.name}={.status.conditions[?(@.type==\"Ready\")].status} {end}",
        ]);
        (out.contains("node-a=True") && out.contains("node-b=True")).then_some(())
    });
    // Each node holds a Lease in kube-node-lease.
    let leases = c.k(&["get", "leases", "-n", "kube-node-lease", "-o", "name"]);
    assert!(
        leases.contains("node-a") && leases.contains("node-b"),
        "{leases}"
    );

    // Apply the manifest with plain `kubectl apply` (server-side validation via OpenAPI).
    let manifest = crate::harness::repo().join("manifests/hello-wasm.yaml");
    c.k(&["apply", "-f", manifest.to_str().unwrap()]);
    let v1 = "kedge.dev/samples/hello-wasm:v1";
    let pods = c.wait("3 Running pods", || running(&c, 3, v1));
    let nodes: BTreeSet<&str> = pods.iter().map(|p| p.node.as_str()).collect();
    assert_eq!(
        nodes,
        BTreeSet::from(["node-a", "node-b"]),
        "the scheduler spreads replicas over both nodes: {pods:?}"
    );
    // kubectl get pods prints the Table columns users know.
    let table = c.k(&["get", "pods"]);
    assert!(
        table.contains("READY") && table.contains("STATUS") && table.contains("Running"),
        "{table}"
    );

    // kubectl logs travels server → tunnel → agent.
    let first = &pods[0].name;
    let logs = c.wait("the pod's log line", || {
        let r = c.kubectl(&["logs", first]);
        (r.ok && r.stdout.contains("hello from")).then_some(r.stdout)
    });
    assert!(
        logs.contains(&format!("hello from {first} in default")),
        "{logs}"
    );
    // -f streams until we stop it; the first line arrives.
    let follow = std::process::Command::new("timeout")
        .args(["3", "kubectl", "--kubeconfig"])
        .arg(&c.kubeconfig)
        .args(["logs", "-f", first])
        .output()
        .unwrap();
    assert!(String::from_utf8_lossy(&follow.stdout).contains("hello from"));

    // kubectl describe tells the story with Events from the controllers, scheduler and agent.
    let described = c.k(&["describe", "deployment", "hello-wasm"]);
    assert!(
        described.contains("ScalingReplicaSet") && described.contains("Scaled up replica set"),
        "{described}"
    );
    let described = c.k(&["describe", "pod", first]);
    for reason in ["Scheduled", "Pulled", "Created", "Started"] {
        assert!(
            described.contains(reason),
            "no {reason} event:\n{described}"
        );
    }
    let rs = c.k(&["describe", "replicasets", "-l", "app=hello-wasm"]);
    assert!(rs.contains("SuccessfulCreate"), "{rs}");

    // A new image makes a new ReplicaSet; the old pods are replaced.
    let v2 = "kedge.dev/samples/hello-wasm:v2";
    c.k(&[
        "set",
        "image",
        "deployment/hello-wasm",
        &format!("hello={v2}"),
    ]);
    let new_pods = c.wait("3 Running pods of the new image", || running(&c, 3, v2));
    for p in &new_pods {
        assert!(
            !pods.iter().any(|o| o.name == p.name),
            "old pod {} kept",
            p.name
        );
    }
    let rs = c.k(&[
        "get",
        "rs",
        "-l",
        APP,
        "-o",
        "jsonpath={range .items[*]}{.spec.replicas} {end}",
    ]);
    let mut counts: Vec<&str> = rs.split_whitespace().collect();
    counts.sort();
    assert_eq!(
        counts,
        vec!["0", "3"],
        "old ReplicaSet scaled to 0, new one to 3"
    );
    c.k(&[
        "rollout",
        "status",
        "deployment/hello-wasm",
        "--timeout=60s",
    ]);

    // Scale up and back down.
    c.k(&["scale", "deployment/hello-wasm", "--replicas=5"]);
    c.wait("5 Running pods", || running(&c, 5, v2));
    c.k(&["scale", "deployment/hello-wasm", "--replicas=1"]);
    c.wait("1 pod left", || running(&c, 1, v2));

    // Deleting the Deployment removes its ReplicaSets and pods.
    c.k(&["delete", "deployment", "hello-wasm"]);
    c.wait("every pod gone", || c.pods(APP).is_empty().then_some(()));
    c.wait("every ReplicaSet gone", || {
        c.k(&["get", "rs", "-l", APP, "-o", "name"])
            .trim()
            .is_empty()
            .then_some(())
    });

    // Losing one agent breaks nothing else.
    c.kubectl_stdin(
        &["apply", "-f", "-"],
        Some(
            r#"{"apiVersion":"apps/v1","kind":"Deployment","metadata":{"name":"pinned"},
  "spec":{"replicas":1,"selector":{"matchLabels":{"app":"pinned"}},
  "template":{"metadata":{"labels":{"app":"pinned"}},"spec":{
    "nodeSelector":{"kubernetes.io/hostname":"node-a"},
    "containers":[{"name":"hello","image":"kedge.dev/samples/hello-wasm:v1"}]}}}}"#,
        ),
    );
    let pinned = c.wait("the pinned pod Running on node-a", || {
        let p = c.pods("app=pinned");
        (p.len() == 1 && p[0].phase == "Running" && p[0].node == "node-a").then(|| p[0].clone())
    });
    c.agent("node-b").crash();
    std::thread::sleep(Duration::from_secs(2));
    assert!(
        c.server.is_running(),
        "server died:\n{}",
        tail(&c.server.log_text(), 40)
    );
    assert!(c.agent("node-a").is_running());
    c.k(&["get", "nodes"]);
    let logs = c.k(&["logs", &pinned.name]);
    assert!(logs.contains("hello from"), "{logs}");
    let p = c.pods("app=pinned");
    assert_eq!(p.len(), 1);
    assert_eq!(p[0].phase, "Running");
    // The API keeps serving writes, and the controllers keep reconciling.
    c.k(&["scale", "deployment/pinned", "--replicas=2"]);
    c.wait("2 pinned pods Running on node-a", || {
        let p = c.pods("app=pinned");
        (p.len() == 2 && p.iter().all(|p| p.phase == "Running" && p.node == "node-a")).then_some(())
    });
}

#[test]
fn invalid_requests_get_kubernetes_errors_and_change_nothing() {
    let c = Cluster::start();
    let bad = r#"{"apiVersion":"v1","kind":"Pod","metadata":{"name":"bad"},
        "spec":{"containers":[{"name":"c"}]}}"#;
    let r = c.kubectl_stdin(&["create", "-f", "-"], Some(bad));
    assert!(!r.ok);
    assert!(
        r.stderr
            .contains("spec.containers[0].image: Required value"),
        "{}",
        r.stderr
    );
    let r = c.kubectl(&["get", "pod", "nope"]);
    assert!(r.stderr.contains("pods \"nope\" not found"), "{}", r.stderr);
    // Strict field validation (kubectl's default) refuses unknown fields.
    let typo = r#"{"apiVersion":"v1","kind":"Pod","metadata":{"name":"typo"},
        "spec":{"containers":[{"name":"c","image":"x:1","imagee":"y"}]}}"#;
    let r = c.kubectl_stdin(&["create", "-f", "-"], Some(typo));
    assert!(!r.ok && r.stderr.contains("unknown field"), "{}", r.stderr);
    let r = c.kubectl(&["get", "pods", "-o", "name"]);
    assert!(
        r.ok && r.stdout.trim().is_empty(),
        "nothing was stored: {}",
        r.stdout
    );
    // A stale resourceVersion is a conflict.
    c.kubectl_stdin(
        &["create", "-f", "-"],
        Some(r#"{"apiVersion":"v1","kind":"Namespace","metadata":{"name":"team-a"}}"#),
    );
    let ns = c.k(&["get", "ns", "team-a", "-o", "json"]);
    let mut v: serde_json::Value = serde_json::from_str(&ns).unwrap();
    v["metadata"]["labels"] = serde_json::json!({"x": "1"});
    c.kubectl_stdin(&["replace", "-f", "-"], Some(&v.to_string()));
    v["metadata"]["labels"] = serde_json::json!({"x": "2"});
    let r = c.kubectl_stdin(&["replace", "-f", "-"], Some(&v.to_string()));
    assert!(
        r.stderr.contains("the object has been modified"),
        "{}",
        r.stderr
    );
}

/// Container exits become container states, restartPolicy decides restarts (with kubelet's
/// back-off), `kubectl logs --previous` reads the last run, and the memory limit caps the
/// instance.
#[test]
fn exit_codes_restart_policies_and_memory_limits() {
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
    let pod = |name: &str, policy: &str, env: &str, limits: &str| {
        format!(
            r#"{{"apiVersion":"v1","kind":"Pod","metadata":{{"name":"{name}"}},"spec":{{
            "restartPolicy":"{policy}","containers":[{{"name":"app",
            "image":"kedge.dev/samples/hello-wasm:v1","env":[{env}],
            "resources":{{"limits":{{{limits}}}}}}}]}}}}"#
        )
    };
    let exit_env = |code: i32| {
        format!(
            r#"{{"name":"HELLO_EXIT_AFTER_SECS","value":"1"}},{{"name":"HELLO_EXIT_CODE","value":"{code}"}}"#
        )
    };
    for (name, policy, env, limits) in [
        ("once", "Never", exit_env(0), String::new()),
        ("fails", "Never", exit_env(3), String::new()),
        ("retry", "OnFailure", exit_env(3), String::new()),
        (
            "tiny",
            "Never",
            String::new(),
            r#""memory":"1Mi""#.to_string(),
        ),
    ] {
        let r = c.kubectl_stdin(
            &["create", "-f", "-"],
            Some(&pod(name, policy, &env, &limits)),
        );
        assert!(r.ok, "{}", r.stderr);
    }
    let field =
        |name: &str, path: &str| c.k(&["get", "pod", name, "-o", &format!("jsonpath={path}")]);
    c.wait("pod once Succeeded", || {
        (field("once", "{.status.phase}") == "Succeeded").then_some(())
    });
    assert_eq!(
        field(
            "once",
            "{.status.containerStatuses[0].state.terminated.reason}"
        ),
        "Completed"
    );
    c.wait("pod fails Failed", || {
        (field("fails", "{.status.phase}") == "Failed").then_some(())
    });
    assert_eq!(
        field(
            "fails",
            "{.status.containerStatuses[0].state.terminated.exitCode}"
        ),
        "3"
    );
    // OnFailure restarts after the first 10 s back-off; the previous run's log stays readable.
    c.wait("pod retry restarted", || {
        let n: u32 = field("retry", "{.status.containerStatuses[0].restartCount}")
            .parse()
            .unwrap_or(0);
        (n >= 1).then_some(())
    });
    assert_eq!(
        field(
            "retry",
            "{.status.containerStatuses[0].lastState.terminated.exitCode}"
        ),
        "3"
    );
    // Once the second run has started, the first one is the "previous" container.
    let prev = c.wait("logs of the previous run", || {
        let r = c.kubectl(&["logs", "retry", "--previous"]);
        r.ok.then_some(r.stdout)
    });
    assert!(prev.contains("hello from retry"), "{prev}");
    // A 1 MiB cap is below what the module needs: it is stopped, as an OOM kill.
    c.wait("pod tiny OOMKilled", || {
        (field(
            "tiny",
            "{.status.containerStatuses[0].state.terminated.reason}",
        ) == "OOMKilled")
            .then_some(())
    });
    assert_eq!(field("tiny", "{.status.phase}"), "Failed");
}
