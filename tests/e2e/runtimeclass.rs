//! RuntimeClasses (`node.k8s.io/v1`) with the real kubectl: the server's `wasm` and `runc`
//! classes, the admission of pods that name one (unknown class refused, node selector
//! merged), scheduling by a class's node selector across two agents, and the agent running
//! only images of the class's handler (a Wasm class and an OCI image, a runc class and a
//! Wasm image, a handler the node lacks: each a clear `CreateContainerError`).

use serde_json::Value;

use crate::harness::{Busybox, Cluster, containers_unavailable, tail};

fn pod_json(c: &Cluster, name: &str) -> Option<Value> {
    let r = c.kubectl(&["get", "pod", name, "-o", "json"]);
    r.ok.then(|| serde_json::from_str(&r.stdout).unwrap())
}

/// The first container's waiting reason and message.
fn waiting(c: &Cluster, name: &str) -> Option<(String, String)> {
    let p = pod_json(c, name)?;
    let w = p.pointer("/status/containerStatuses/0/state/waiting")?;
    Some((
        w["reason"].as_str()?.to_string(),
        w["message"].as_str().unwrap_or("").to_string(),
    ))
}

fn running_on(c: &Cluster, name: &str) -> Option<String> {
    let p = pod_json(c, name)?;
    (p.pointer("/status/phase").and_then(Value::as_str) == Some("Running"))
        .then(|| p["spec"]["nodeName"].as_str().unwrap_or("").to_string())
}

fn pod(name: &str, class: &str, image: &str) -> String {
    format!(
        "apiVersion: v1\nkind: Pod\nmetadata:\n  name: {name}\nspec:\n  runtimeClassName: {class}\n  \
         containers:\n  - name: main\n    image: \"{image}\"\n    command: [\"sh\", \"-c\", \"sleep 3600\"]\n"
    )
}

/// A pod of the Wasm sample, which greets until stopped.
fn wasm_pod(name: &str, class: &str) -> String {
    format!(
        "apiVersion: v1\nkind: Pod\nmetadata:\n  name: {name}\nspec:\n  runtimeClassName: {class}\n  \
         containers:\n  - name: hello\n    image: kedge.dev/samples/hello-wasm:v1\n"
    )
}

fn apply(c: &Cluster, yaml: &str) {
    let r = c.kubectl_stdin(&["apply", "-f", "-"], Some(yaml));
    assert!(
        r.ok,
        "kubectl apply failed:\n{}\n{yaml}\n--- server ---\n{}",
        r.stderr,
        tail(&c.server.log_text(), 30)
    );
}

fn expect_create_error(c: &Cluster, name: &str, words: &[&str]) {
    let (reason, message) = c.wait(&format!("{name} to fail to start"), || {
        waiting(c, name).filter(|(_, m)| words.iter().all(|w| m.contains(w)))
    });
    assert_eq!(reason, "CreateContainerError", "{message}");
}

#[test]
fn runtime_classes_pick_nodes_and_runtimes() {
    let mut c = Cluster::start();

    // The server's two classes, with kubectl's columns; explain reads the schema.
    let table = c.k(&["get", "runtimeclasses"]);
    let lines: Vec<Vec<&str>> = table
        .lines()
        .map(|l| l.split_whitespace().collect())
        .collect();
    assert_eq!(lines[0], ["NAME", "HANDLER", "AGE"], "{table}");
    assert!(lines.iter().any(|l| l[..2] == ["wasm", "wasm"]), "{table}");
    assert!(lines.iter().any(|l| l[..2] == ["runc", "runc"]), "{table}");
    let wasm: Value =
        serde_json::from_str(&c.k(&["get", "runtimeclass", "wasm", "-o", "json"])).unwrap();
    assert_eq!(
        wasm["scheduling"]["nodeSelector"]["kedge.io/runtime-wasm"],
        "true"
    );
    let explain = c.k(&["explain", "runtimeclass.handler"]);
    assert!(explain.contains("KIND:       RuntimeClass"), "{explain}");
    assert!(explain.contains("handler specifies"), "{explain}");

    // A class of one's own: Wasm, on the nodes of the pool `edge` (node-a only).
    apply(
        &c,
        "apiVersion: node.k8s.io/v1\nkind: RuntimeClass\nmetadata:\n  name: edge-wasm\n\
         handler: wasm\nscheduling:\n  nodeSelector:\n    pool: edge\n",
    );
    apply(
        &c,
        "apiVersion: node.k8s.io/v1\nkind: RuntimeClass\nmetadata:\n  name: secure\nhandler: kata\n",
    );
    let busybox = containers_unavailable()
        .is_none()
        .then(|| Busybox::start(c.dir.path()));
    let registries = busybox
        .as_ref()
        .map(|b| b.registries_yaml.to_str().unwrap().to_string());
    let token = c.token.clone();
    for (node, label) in [("node-a", Some("pool=edge")), ("node-b", None)] {
        let mut extra: Vec<&str> = Vec::new();
        if let Some(l) = label {
            extra.extend(["--node-labels", l]);
        }
        if let Some(r) = &registries {
            extra.extend(["--registries-config", r.as_str()]);
        }
        c.start_agent_with(node, &token, &extra);
    }
    c.wait("both nodes Ready", || {
        let r = c.kubectl(&["get", "nodes", "--no-headers"]);
        (r.stdout.lines().filter(|l| l.contains(" Ready")).count() == 2).then_some(())
    });

    // An unknown class is refused at admission, as kube-apiserver's plugin words it.
    let refused = c.kubectl_stdin(&["apply", "-f", "-"], Some(&wasm_pod("lost", "nope")));
    assert!(!refused.ok);
    assert!(
        refused
            .stderr
            .contains("pods \"lost\" is forbidden: pod rejected: RuntimeClass \"nope\" not found"),
        "{}",
        refused.stderr
    );

    // The wasm class: its node selector merged, the sample runs.
    apply(&c, &wasm_pod("hello", "wasm"));
    c.wait("hello Running", || running_on(&c, "hello"));
    let p = pod_json(&c, "hello").unwrap();
    assert_eq!(p["spec"]["nodeSelector"]["kedge.io/runtime-wasm"], "true");

    // The class's node selector places its pods: all on node-a.
    for i in 0..3 {
        apply(&c, &wasm_pod(&format!("edge-{i}"), "edge-wasm"));
    }
    for i in 0..3 {
        let node = c.wait("edge pods Running", || running_on(&c, &format!("edge-{i}")));
        assert_eq!(node, "node-a", "edge-{i}");
    }

    // A handler the nodes do not have.
    apply(&c, &wasm_pod("kata", "secure"));
    expect_create_error(&c, "kata", &["no runtime for \"kata\" is configured"]);

    // The wrong kind of image for the class's handler, both ways (needs a registry serving
    // an OCI image, and runc for the runc class's nodes).
    let Some(busybox) = busybox else {
        eprintln!(
            "skipping the OCI half of runtime_classes_pick_nodes_and_runtimes: {}",
            containers_unavailable().unwrap_or_default()
        );
        return;
    };
    apply(&c, &pod("oci-in-wasm", "wasm", &busybox.image));
    expect_create_error(
        &c,
        "oci-in-wasm",
        &["is an OCI container image, not a Wasm", "handler \"wasm\""],
    );
    apply(&c, &wasm_pod("wasm-in-runc", "runc"));
    expect_create_error(
        &c,
        "wasm-in-runc",
        &["is a Wasm component or module", "handler \"runc\""],
    );
    apply(&c, &pod("box", "runc", &busybox.image));
    c.wait("box Running", || running_on(&c, "box"));
    let p = pod_json(&c, "box").unwrap();
    assert_eq!(p["spec"]["nodeSelector"]["kedge.io/runtime-oci"], "true");
}
