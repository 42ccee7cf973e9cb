//! ResourceQuota and LimitRange with the real kubectl (issue 20): `kubectl create quota`
//! (a protobuf body), pods counted until the quota is spent and the next refused with
//! kube-apiserver's message, `get`/`describe quota` showing used and hard, a delete freeing
//! room; a LimitRange's defaults on a pod created without resources and a pod over its max
//! refused. No agent: admission is the API's.

use serde_json::Value;

use crate::harness::{Cluster, tail};

const IMAGE: &str = "kedge.dev/samples/hello-wasm:v1";

fn pod(name: &str, cpu: &str, memory: &str) -> String {
    format!(
        "apiVersion: v1\nkind: Pod\nmetadata:\n  name: {name}\nspec:\n  containers:\n  - name: hello\n    \
         image: {IMAGE}\n    resources:\n      limits:\n        cpu: {cpu}\n        memory: {memory}\n"
    )
}

fn apply(c: &Cluster, ns: &str, yaml: &str) -> crate::harness::Kubectl {
    c.kubectl_stdin(&["apply", "-n", ns, "-f", "-"], Some(yaml))
}

fn applied(c: &Cluster, ns: &str, yaml: &str) {
    let r = apply(c, ns, yaml);
    assert!(
        r.ok,
        "kubectl apply failed:\n{}\n{yaml}\n--- server ---\n{}",
        r.stderr,
        tail(&c.server.log_text(), 30)
    );
}

/// The whitespace-split line of `text` whose first word is `first`.
fn line(text: &str, first: &str) -> Vec<String> {
    text.lines()
        .find(|l| l.split_whitespace().next() == Some(first))
        .unwrap_or_else(|| panic!("no line {first} in\n{text}"))
        .split_whitespace()
        .map(String::from)
        .collect()
}

#[test]
fn quota_refuses_the_pod_past_it_and_shows_its_usage() {
    let c = Cluster::start();
    c.k(&["create", "namespace", "team"]);
    let out = c.k(&[
        "create",
        "quota",
        "compute",
        "-n",
        "team",
        "--hard=pods=2,limits.cpu=1,limits.memory=1Gi",
    ]);
    assert!(out.contains("resourcequota/compute created"), "{out}");

    // Pods that state no limits cannot be counted against a compute quota.
    let r = c.kubectl(&["run", "bare", "-n", "team", &format!("--image={IMAGE}")]);
    assert!(!r.ok);
    assert!(
        r.stderr.contains(
            "pods \"bare\" is forbidden: failed quota: compute: must specify limits.cpu for: bare; limits.memory for: bare"
        ),
        "{}",
        r.stderr
    );

    applied(&c, "team", &pod("one", "100m", "64Mi"));
    applied(&c, "team", &pod("two", "200m", "64Mi"));
    let r = apply(&c, "team", &pod("three", "100m", "64Mi"));
    assert!(!r.ok);
    assert!(
        r.stderr.contains(
            "pods \"three\" is forbidden: exceeded quota: compute, requested: pods=1, used: pods=2, limited: pods=2"
        ),
        "{}",
        r.stderr
    );

    let table = c.k(&["get", "quota", "-n", "team"]);
    let header = line(&table, "NAME");
    assert_eq!(header, ["NAME", "AGE", "REQUEST", "LIMIT"], "{table}");
    assert!(
        table.contains("pods: 2/2")
            && table.contains("limits.cpu: 300m/1, limits.memory: 128Mi/1Gi"),
        "{table}"
    );
    let described = c.k(&["describe", "quota", "compute", "-n", "team"]);
    assert_eq!(line(&described, "pods"), ["pods", "2", "2"], "{described}");
    assert_eq!(line(&described, "limits.cpu"), ["limits.cpu", "300m", "1"]);
    assert_eq!(
        line(&described, "limits.memory"),
        ["limits.memory", "128Mi", "1Gi"]
    );

    // A delete frees its room at once.
    c.k(&["delete", "pod", "one", "-n", "team"]);
    let q: Value =
        serde_json::from_str(&c.k(&["get", "quota", "compute", "-n", "team", "-o", "json"]))
            .unwrap();
    assert_eq!(q["status"]["used"]["pods"], "1", "{q}");
    applied(&c, "team", &pod("three", "100m", "64Mi"));

    // Keys kedge does not count are refused by name, not stored and ignored.
    let r = c.kubectl(&[
        "create",
        "quota",
        "gpus",
        "-n",
        "team",
        "--hard=requests.nvidia.com/gpu=1",
    ]);
    assert!(!r.ok);
    assert!(
        r.stderr
            .contains("spec.hard[requests.nvidia.com/gpu]: Forbidden: not supported by kedge"),
        "{}",
        r.stderr
    );
}

#[test]
fn limit_range_defaults_and_bounds_new_pods() {
    let c = Cluster::start();
    c.k(&["create", "namespace", "lr"]);
    applied(
        &c,
        "lr",
        "apiVersion: v1\nkind: LimitRange\nmetadata:\n  name: limits\nspec:\n  limits:\n  - type: Container\n    \
         default:\n      cpu: 200m\n      memory: 64Mi\n    defaultRequest:\n      cpu: 100m\n      memory: 32Mi\n    \
         max:\n      cpu: 500m\n",
    );
    let table = c.k(&["get", "limits", "-n", "lr"]);
    assert_eq!(line(&table, "NAME"), ["NAME", "CREATED", "AT"], "{table}");

    c.k(&["run", "plain", "-n", "lr", &format!("--image={IMAGE}")]);
    let p: Value =
        serde_json::from_str(&c.k(&["get", "pod", "plain", "-n", "lr", "-o", "json"])).unwrap();
    assert_eq!(
        p["spec"]["containers"][0]["resources"],
        serde_json::json!({"limits": {"cpu": "200m", "memory": "64Mi"},
            "requests": {"cpu": "100m", "memory": "32Mi"}})
    );
    assert_eq!(
        p["metadata"]["annotations"]["kubernetes.io/limit-ranger"],
        "LimitRanger plugin set: cpu, memory request for container plain; cpu, memory limit for container plain"
    );

    let r = apply(&c, "lr", &pod("big", "1", "64Mi"));
    assert!(!r.ok);
    assert!(
        r.stderr.contains(
            "pods \"big\" is forbidden: maximum cpu usage per Container is 500m, but limit is 1"
        ),
        "{}",
        r.stderr
    );

    let described = c.k(&["describe", "limits", "limits", "-n", "lr"]);
    // kubectl lists a range's resources in map order: find the cpu row.
    let cpu: Vec<&str> = described
        .lines()
        .map(|l| l.split_whitespace().collect::<Vec<_>>())
        .find(|w| w.first() == Some(&"Container") && w.get(1) == Some(&"cpu"))
        .unwrap_or_else(|| panic!("no Container cpu row in\n{described}"));
    assert_eq!(
        cpu,
        ["Container", "cpu", "-", "500m", "100m", "200m", "-"],
        "{described}"
    );
}
