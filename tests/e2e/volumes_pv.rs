//! PersistentVolumeClaims end to end, with the built-in local-path provisioner: a claim of a
//! `WaitForFirstConsumer` class stays Pending until a pod uses it, then gets a `hostPath`
//! volume `pvc-<uid>` on the pod's node (a directory under the class's `nodePath`, here in
//! the test's temporary directory) which Wasm and OCI containers share with the host; the data
//! outlives the pod, and later pods go to the volume's node even when they prefer another;
//! deleting the claim (held while a pod uses it) deletes the volume and its directory
//! (`Delete`) or leaves both, `Released` (`Retain`; deleting that volume leaves the data). A
//! pod whose claim does not exist stays Pending and says why, and the server's default class
//! is listed as kubectl shows it.

use std::path::{Path, PathBuf};

use serde_json::{Value, json};

use crate::harness::{Busybox, Cluster, containers_unavailable};

const NODE: &str = "pv-node";
/// A second node, which every pod but the first prefers: the volume keeps them off it.
const OTHER: &str = "pv-other";

fn apply(c: &Cluster, obj: &Value) {
    let r = c.kubectl_stdin(&["apply", "-f", "-"], Some(&obj.to_string()));
    assert!(r.ok, "{}", r.stderr);
}

fn get_json(c: &Cluster, kind: &str, name: &str) -> Option<Value> {
    let r = c.kubectl(&["get", kind, name, "-o", "json"]);
    r.ok.then(|| serde_json::from_str(&r.stdout).unwrap())
}

/// The cells of `kubectl get KIND NAME`; empty cells are skipped, so only the leading ones,
/// up to the first that may be empty, are where the header puts them.
fn row(c: &Cluster, kind: &str, name: &str) -> Vec<String> {
    c.k(&["get", kind, name, "--no-headers"])
        .split_whitespace()
        .map(str::to_string)
        .collect()
}

fn class(name: &str, node_path: &Path, reclaim: &str) -> Value {
    json!({"apiVersion": "storage.k8s.io/v1", "kind": "StorageClass",
        "metadata": {"name": name}, "provisioner": "rancher.io/local-path",
        "volumeBindingMode": "WaitForFirstConsumer", "reclaimPolicy": reclaim,
        "parameters": {"nodePath": node_path.to_str().unwrap()}})
}

fn claim(name: &str, class: &str) -> Value {
    json!({"apiVersion": "v1", "kind": "PersistentVolumeClaim", "metadata": {"name": name},
        "spec": {"accessModes": ["ReadWriteOnce"], "storageClassName": class,
            "resources": {"requests": {"storage": "1Gi"}}}})
}

/// A pod of one container mounting `claim` at /data.
fn pod(name: &str, claim: &str, container: Value) -> Value {
    let mut container = container;
    container["volumeMounts"] = json!([{"name": "data", "mountPath": "/data"}]);
    json!({"apiVersion": "v1", "kind": "Pod", "metadata": {"name": name},
        "spec": {"terminationGracePeriodSeconds": 1, "containers": [container],
            "volumes": [{"name": "data", "persistentVolumeClaim": {"claimName": claim}}]}})
}

/// `pod` required (`true`) or preferring to run on `node`, by node affinity.
fn affine(mut pod: Value, node: &str, required: bool) -> Value {
    let term = json!({"matchExpressions": [
        {"key": "kubernetes.io/hostname", "operator": "In", "values": [node]}]});
    pod["spec"]["affinity"] = if required {
        json!({"nodeAffinity": {"requiredDuringSchedulingIgnoredDuringExecution": {
            "nodeSelectorTerms": [term]}}})
    } else {
        json!({"nodeAffinity": {"preferredDuringSchedulingIgnoredDuringExecution": [
            {"weight": 100, "preference": term}]}})
    };
    pod
}

fn wasm() -> Value {
    json!({"name": "hello", "image": "kedge.dev/samples/hello-wasm:v1"})
}

/// Waits for the pod to run; it must run on [`NODE`], where its volume is.
fn wait_running(c: &Cluster, name: &str) {
    let p = c.wait(&format!("pod {name} Running"), || {
        let p = get_json(c, "pod", name)?;
        (p["status"]["phase"] == "Running").then_some(p)
    });
    assert_eq!(p["spec"]["nodeName"], NODE, "{p}");
}

/// Waits for the claim to be bound; returns its volume's name and host directory.
fn bound_volume(c: &Cluster, claim: &str) -> (String, PathBuf) {
    let volume = c.wait(&format!("claim {claim} Bound"), || {
        let pvc = get_json(c, "pvc", claim)?;
        (pvc["status"]["phase"] == "Bound").then(|| pvc["spec"]["volumeName"].clone())
    });
    let volume = volume.as_str().unwrap().to_string();
    let pv = get_json(c, "pv", &volume).unwrap();
    let dir = PathBuf::from(pv["spec"]["hostPath"]["path"].as_str().unwrap());
    (volume, dir)
}

/// `hello --cat PATH` in the pod, once it prints something.
fn cat(c: &Cluster, pod: &str, path: &str) -> String {
    c.wait(&format!("{path} readable in {pod}"), || {
        let r = c.kubectl(&["exec", pod, "--", "hello", "--cat", path]);
        r.ok.then_some(r.stdout)
    })
}

#[test]
fn local_path_claims_are_provisioned_on_first_use_and_reclaimed() {
    let mut c = Cluster::start();
    let busybox = match containers_unavailable() {
        None => Some(Busybox::start(c.dir.path())),
        Some(why) => {
            eprintln!("volumes_pv: the OCI part is SKIPPED: {why}");
            None
        }
    };
    let token = c.token.clone();
    let registries = busybox
        .as_ref()
        .map(|b| b.registries_yaml.display().to_string());
    // This machine's disk may be nearly full (builds share it): the default `nodefs.available
    // <10%` would evict the pods, which this test is not about.
    let mut flags = vec!["--eviction-hard", "nodefs.available<1Gi"];
    if let Some(r) = &registries {
        flags.extend(["--registries-config", r.as_str()]);
    }
    c.start_agent_with(NODE, &token, &flags);
    c.start_agent_with(OTHER, &token, &flags);
    for node in [NODE, OTHER] {
        c.wait(&format!("node {node} Ready"), || {
            let n = get_json(&c, "node", node)?;
            n["status"]["conditions"]
                .as_array()?
                .iter()
                .any(|c| c["type"] == "Ready" && c["status"] == "True")
                .then_some(())
        });
    }

    // The server's default class, as kubectl lists it.
    let classes = c.k(&["get", "sc"]);
    let default = classes
        .lines()
        .find(|l| l.starts_with("local-path "))
        .unwrap_or_else(|| panic!("no local-path class:\n{classes}"));
    let cells: Vec<&str> = default.split_whitespace().collect();
    assert_eq!(
        cells[..5],
        [
            "local-path",
            "(default)",
            "rancher.io/local-path",
            "Delete",
            "WaitForFirstConsumer"
        ],
        "{classes}"
    );

    let storage = c.dir.path().join("storage");
    apply(&c, &class("scratch", &storage, "Delete"));
    apply(&c, &class("keep", &storage, "Retain"));

    // 1. The claim waits for its first consumer.
    apply(&c, &claim("data", "scratch"));
    assert_eq!(row(&c, "pvc", "data")[..2], ["data", "Pending"]);
    c.wait("the WaitForFirstConsumer event", || {
        c.k(&["describe", "pvc", "data"])
            .contains("waiting for first consumer to be created before binding")
            .then_some(())
    });
    assert_eq!(row(&c, "pvc", "data")[..2], ["data", "Pending"]);
    assert_eq!(c.k(&["get", "pv", "--no-headers"]).trim(), "");
    let uid = get_json(&c, "pvc", "data").unwrap()["metadata"]["uid"]
        .as_str()
        .unwrap()
        .to_string();

    // The first consumer picks the node (here by affinity); the volume is made there.
    apply(&c, &affine(pod("app", "data", wasm()), NODE, true));
    let (volume, dir) = bound_volume(&c, "data");
    assert_eq!(volume, format!("pvc-{uid}"));
    assert_eq!(dir, storage.join(format!("pvc-{uid}_default_data")));
    wait_running(&c, "app");
    // The node waited for the volume, as kubelet does (regression: the container failed to
    // start, CreateContainerConfigError, and started only after a back-off).
    let events = c.k(&["describe", "pod", "app"]);
    assert!(!events.contains("not bound"), "{events}");
    assert!(dir.is_dir(), "{} made on the node", dir.display());
    std::fs::write(dir.join("file"), "kept on the node\n").unwrap();
    assert_eq!(cat(&c, "app", "/data/file"), "kept on the node\n");

    assert_eq!(
        row(&c, "pvc", "data")[..7],
        [
            "data",
            "Bound",
            volume.as_str(),
            "1Gi",
            "RWO",
            "scratch",
            "<unset>"
        ]
    );
    assert_eq!(
        row(&c, "pv", &volume)[..8],
        [
            volume.as_str(),
            "1Gi",
            "RWO",
            "Delete",
            "Bound",
            "default/data",
            "scratch",
            "<unset>"
        ]
    );
    let pv = get_json(&c, "pv", &volume).unwrap();
    assert_eq!(
        pv["spec"]["nodeAffinity"]["required"]["nodeSelectorTerms"][0]["matchExpressions"][0],
        json!({"key": "kubernetes.io/hostname", "operator": "In", "values": [NODE]}),
        "{pv}"
    );

    // An OCI container writes into the same volume; the host sees the file.
    if let Some(b) = &busybox {
        let writer = pod(
            "writer",
            "data",
            json!({"name": "sh", "image": b.image,
                "command": ["sh", "-c", "echo hi > /data/f; sleep 600"]}),
        );
        apply(&c, &affine(writer, OTHER, false));
        wait_running(&c, "writer");
        c.wait("the container's file on the host", || {
            (std::fs::read_to_string(dir.join("f")).ok()? == "hi\n").then_some(())
        });
        assert_eq!(cat(&c, "app", "/data/f"), "hi\n");
        c.k(&["delete", "pod", "writer"]);
    }

    // 2. The data outlives the pod, whose next one goes where the volume is.
    c.k(&["delete", "pod", "app"]);
    apply(&c, &affine(pod("app", "data", wasm()), OTHER, false));
    wait_running(&c, "app");
    assert_eq!(cat(&c, "app", "/data/file"), "kept on the node\n");
    assert_eq!(bound_volume(&c, "data").0, volume);

    // 3. A claim in use is only marked deleted (pvc-protection) until its pod is gone; then,
    // with reclaim policy Delete, the volume and its directory go with it.
    c.k(&["delete", "pvc", "data", "--wait=false"]);
    c.wait("the claim Terminating", || {
        (row(&c, "pvc", "data")[1] == "Terminating").then_some(())
    });
    std::thread::sleep(std::time::Duration::from_secs(3));
    assert_eq!(row(&c, "pvc", "data")[1], "Terminating", "the pod holds it");
    assert_eq!(cat(&c, "app", "/data/file"), "kept on the node\n");
    c.k(&["delete", "pod", "app"]);
    c.wait("the claim deleted", || {
        let r = c.kubectl(&["get", "pvc", "data"]);
        (!r.ok && r.stderr.contains("NotFound")).then_some(())
    });
    c.wait("the volume deleted", || {
        let r = c.kubectl(&["get", "pv", &volume]);
        (!r.ok && r.stderr.contains("NotFound")).then_some(())
    });
    c.wait("the directory removed", || (!dir.exists()).then_some(()));
    assert!(storage.is_dir(), "only the volume's directory goes");

    // 4. Reclaim policy Retain: the volume is Released, the data stays.
    apply(&c, &claim("kept", "keep"));
    apply(&c, &affine(pod("keeper", "kept", wasm()), NODE, true));
    let (kept, kept_dir) = bound_volume(&c, "kept");
    wait_running(&c, "keeper");
    std::fs::write(kept_dir.join("file"), "retained\n").unwrap();
    assert_eq!(cat(&c, "keeper", "/data/file"), "retained\n");
    assert_eq!(row(&c, "pv", &kept)[3], "Retain");
    c.k(&["delete", "pod", "keeper"]);
    c.k(&["delete", "pvc", "kept"]);
    c.wait("the retained volume Released", || {
        let pv = get_json(&c, "pv", &kept)?;
        (pv["status"]["phase"] == "Released").then_some(())
    });
    assert_eq!(
        row(&c, "pv", &kept)[..7],
        [
            kept.as_str(),
            "1Gi",
            "RWO",
            "Retain",
            "Released",
            "default/kept",
            "keep"
        ]
    );
    std::thread::sleep(std::time::Duration::from_secs(4));
    assert!(
        get_json(&c, "pv", &kept).is_some(),
        "a retained volume stays"
    );
    assert_eq!(
        std::fs::read_to_string(kept_dir.join("file")).unwrap(),
        "retained\n"
    );
    // Deleting a retained volume deletes the object only: the data is the admin's to clean
    // up, as in Kubernetes (regression: the agent removed the directory of any local-path
    // volume deleted, whatever its reclaim policy).
    c.k(&["delete", "pv", &kept]);
    assert_eq!(
        std::fs::read_to_string(kept_dir.join("file")).unwrap(),
        "retained\n"
    );

    // What the preference does without a volume: the pods above were kept off `OTHER`.
    let mut free = affine(pod("free", "unused", wasm()), OTHER, false);
    free["spec"]["volumes"] = json!([]);
    free["spec"]["containers"][0]
        .as_object_mut()
        .unwrap()
        .remove("volumeMounts");
    apply(&c, &free);
    let node = c.wait("pod free scheduled", || {
        let p = get_json(&c, "pod", "free")?;
        p["spec"]["nodeName"].as_str().map(str::to_string)
    });
    assert_eq!(node, OTHER);

    // 5. A pod whose claim does not exist is not scheduled, and says why.
    apply(&c, &pod("orphan", "missing", wasm()));
    c.wait("the missing claim in the pod's events", || {
        c.k(&["describe", "pod", "orphan"])
            .contains("persistentvolumeclaim \"missing\" not found")
            .then_some(())
    });
    let p = get_json(&c, "pod", "orphan").unwrap();
    assert_eq!(p["status"]["phase"], "Pending", "{p}");
    assert!(p["spec"]["nodeName"].is_null(), "{p}");
}
