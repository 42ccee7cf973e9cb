//! PriorityClasses and preemption (issue 20), with the real kubectl: `kubectl create
//! priorityclass` (protobuf) and `apply`, the system classes, admission resolving a pod's
//! priority or refusing an unknown class, and, on a full node, a high-priority pod
//! preempting the least important pod it needs gone, which is told why.

use crate::harness::Cluster;

fn pod(name: &str, class: &str, cpu_millis: u64) -> String {
    format!(
        r#"
apiVersion: v1
kind: Pod
metadata: {{name: {name}, labels: {{app: prio}}}}
spec:
  priorityClassName: {class}
  terminationGracePeriodSeconds: 1
  containers:
  - name: hello
    image: kedge.dev/samples/hello-wasm:v1
    resources: {{requests: {{cpu: {cpu_millis}m}}}}
"#
    )
}

#[test]
fn a_critical_pod_preempts_on_a_full_node() {
    let mut c = Cluster::start();
    let token = c.token.clone();
    c.start_agent("node-a", &token);

    // Classes: the system ones are there; kubectl's create (protobuf) and apply both work.
    let out = c.k(&["create", "priorityclass", "low", "--value=10"]);
    assert!(out.contains("created"), "{out}");
    let r = c.kubectl_stdin(
        &["apply", "-f", "-"],
        Some(
            "apiVersion: scheduling.k8s.io/v1\nkind: PriorityClass\nmetadata: {name: high}\n\
             value: 1000\ndescription: the pods that must win\n",
        ),
    );
    assert!(r.ok, "{}", r.stderr);
    let table = c.k(&["get", "priorityclasses"]);
    for want in [
        "system-node-critical",
        "system-cluster-critical",
        "low",
        "high",
    ] {
        assert!(table.contains(want), "{want}:\n{table}");
    }
    assert!(table.contains("PREEMPTIONPOLICY"), "{table}");
    let r = c.kubectl_stdin(
        &["apply", "-f", "-"],
        Some(
            "apiVersion: scheduling.k8s.io/v1\nkind: PriorityClass\nmetadata: {name: system-mine}\nvalue: 5\n",
        ),
    );
    assert!(
        !r.ok && r.stderr.contains("reserved for system use only"),
        "{}",
        r.stderr
    );

    // The node's CPU, to fill it: two low pods take 90 %.
    let cpu = c.k(&[
        "get",
        "node",
        "node-a",
        "-o",
        "jsonpath={.status.allocatable.cpu}",
    ]);
    let millis: u64 = match cpu.trim().strip_suffix('m') {
        Some(m) => m.parse().unwrap(),
        None => cpu.trim().parse::<u64>().unwrap() * 1000,
    };
    let share = millis * 45 / 100;
    for name in ["low-1", "low-2"] {
        let r = c.kubectl_stdin(&["apply", "-f", "-"], Some(&pod(name, "low", share)));
        assert!(r.ok, "{}", r.stderr);
    }
    c.wait("both low pods running", || {
        let pods = c.pods("app=prio");
        (pods.len() == 2 && pods.iter().all(|p| p.phase == "Running")).then_some(())
    });
    let priority = c.k(&["get", "pod", "low-1", "-o", "jsonpath={.spec.priority}"]);
    assert_eq!(priority.trim(), "10");

    // An unknown class is refused at admission, in Kubernetes' words.
    let r = c.kubectl_stdin(&["apply", "-f", "-"], Some(&pod("lost", "nope", 10)));
    assert!(
        !r.ok
            && r.stderr
                .contains("no PriorityClass with name nope was found"),
        "{}",
        r.stderr
    );

    // The critical pod fits only if one low pod goes: exactly one does.
    let r = c.kubectl_stdin(&["apply", "-f", "-"], Some(&pod("critical", "high", share)));
    assert!(r.ok, "{}", r.stderr);
    c.wait("the critical pod running on node-a", || {
        let pods = c.pods("app=prio");
        pods.iter()
            .any(|p| p.name == "critical" && p.phase == "Running" && p.node == "node-a")
            .then_some(())
    });
    let left: Vec<String> = c
        .pods("app=prio")
        .into_iter()
        .filter(|p| p.name.starts_with("low-") && !p.deleting)
        .map(|p| p.name)
        .collect();
    assert_eq!(left.len(), 1, "one low pod preempted: {left:?}");
    let events = c.k(&[
        "get",
        "events",
        "--field-selector",
        "reason=Preempted",
        "-o",
        "jsonpath={.items[*].message}",
    ]);
    assert!(
        events.contains("Preempted by pod") && events.contains("on node node-a"),
        "{events}"
    );
}
