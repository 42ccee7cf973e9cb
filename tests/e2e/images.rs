//! Images from a private registry, end to end: a real `docker-registry` on loopback with TLS
//! (test CA) and htpasswd auth, a Wasm artifact pushed with `kedge push`, a busybox OCI image
//! built in the test, and pods that pull them with `imagePullSecrets` — Wasm in wasmtime,
//! containers in runc, on the same agent.

use std::path::PathBuf;
use std::time::{Duration, Instant};

use base64::Engine as _;
use kedge_registry::OciConfig;
use kedge_registry::testing::{TestRegistry, TestRegistryOptions, busybox_image_layer};
use serde_json::{Value, json};

use crate::harness::{Cluster, KEDGE};

fn apply(c: &Cluster, obj: &Value) {
    let r = c.kubectl_stdin(&["create", "-f", "-"], Some(&obj.to_string()));
    assert!(r.ok, "creating {obj}: {}", r.stderr);
}

fn pod_json(c: &Cluster, ns: &str, name: &str) -> Option<Value> {
    let r = c.kubectl(&["get", "pod", "-n", ns, name, "-o", "json"]);
    r.ok.then(|| serde_json::from_str(&r.stdout).unwrap())
}

/// The waiting reason and message of a pod's first container.
fn waiting(c: &Cluster, ns: &str, name: &str) -> Option<(String, String)> {
    let p = pod_json(c, ns, name)?;
    let w = p.pointer("/status/containerStatuses/0/state/waiting")?;
    Some((
        w["reason"].as_str()?.to_string(),
        w["message"].as_str().unwrap_or("").to_string(),
    ))
}

fn all_running(c: &Cluster, ns: &str, name: &str) -> bool {
    pod_json(c, ns, name).is_some_and(|p| {
        p.pointer("/status/phase") == Some(&json!("Running"))
            && p.pointer("/status/containerStatuses")
                .and_then(Value::as_array)
                .is_some_and(|cs| cs.iter().all(|s| s["ready"] == true))
    })
}

fn busybox_pod(ns: &str, name: &str, image: &str, secret: Option<&str>, script: &str) -> Value {
    let mut p = json!({
        "apiVersion": "v1", "kind": "Pod",
        "metadata": {"name": name, "namespace": ns},
        "spec": {"containers": [{
            "name": "shell", "image": image,
            "command": ["sh", "-c", script],
        }]},
    });
    if let Some(s) = secret {
        p["spec"]["imagePullSecrets"] = json!([{"name": s}]);
    }
    p
}

/// `kedge push` of the sample Wasm app to `image` on the test registry, with its
/// credential; the command's stdout (the pushed reference).
fn push_hello(reg: &TestRegistry, image: &str) -> String {
    let wasm = PathBuf::from(env!("KEDGE_WASM_DIR")).join("hello-wasm.wasm");
    crate::harness::push_wasm(reg, &wasm, image)
}

/// A `registries.yaml` in the cluster's dir trusting the registry's CA, with no credentials.
fn trusting_registries(c: &Cluster, reg: &TestRegistry) -> PathBuf {
    let path = c.dir.path().join("registries.yaml");
    std::fs::write(
        &path,
        format!(
            "configs:\n  \"{}\":\n    tls:\n      ca_file: {}\n",
            reg.host(),
            reg.ca_file.display()
        ),
    )
    .unwrap();
    path
}

/// The dockerconfigjson Secret `regcred` in `ns`, holding the registry's credential.
fn regcred(reg: &TestRegistry, ns: &str) -> Value {
    let auth = base64::engine::general_purpose::STANDARD
        .encode(format!("{}:{}", reg.username, reg.password));
    let dockerconfig = json!({"auths": {reg.host(): {"auth": auth}}}).to_string();
    json!({
        "apiVersion": "v1", "kind": "Secret",
        "metadata": {"name": "regcred", "namespace": ns},
        "type": "kubernetes.io/dockerconfigjson",
        "data": {".dockerconfigjson":
            base64::engine::general_purpose::STANDARD.encode(dockerconfig)},
    })
}

#[test]
fn private_registry_images_run_as_wasm_and_containers_with_pull_secrets() {
    kedge_tunnel::install_crypto_provider();
    let rt = tokio::runtime::Runtime::new().unwrap();
    let reg = TestRegistry::start(TestRegistryOptions { auth: true }).expect("test registry");
    let host = reg.host();

    // A busybox image built here (never downloaded), pushed to the private registry.
    let layer = busybox_image_layer().unwrap();
    let config = OciConfig {
        cmd: vec!["sh".into()],
        env: vec!["PATH=/bin".into()],
        ..Default::default()
    };
    rt.block_on(reg.push_oci_image("apps/busybox:v1", &[layer], &config))
        .expect("pushing busybox");
    // The sample Wasm app, pushed as an OCI artifact by `kedge push`.
    let wasm = PathBuf::from(env!("KEDGE_WASM_DIR")).join("hello-wasm.wasm");
    let wasm_ref = format!("{host}/apps/hello:v1");
    let pushed = push_hello(&reg, &wasm_ref);
    assert!(pushed.contains("@sha256:"), "{pushed}");
    // Without credentials the push is refused with the registry's reason.
    let denied = std::process::Command::new(KEDGE)
        .arg("push")
        .arg(&wasm)
        .arg(format!("{host}/apps/denied:v1"))
        .arg("--ca-file")
        .arg(&reg.ca_file)
        .env("HOME", "/nonexistent")
        .output()
        .unwrap();
    assert!(!denied.status.success());
    assert!(
        String::from_utf8_lossy(&denied.stderr).contains("401"),
        "{}",
        String::from_utf8_lossy(&denied.stderr)
    );

    // The node trusts the registry's CA; it has no credentials of its own.
    let mut c = Cluster::start();
    let registries = trusting_registries(&c, &reg);
    let token = c.token.clone();
    c.start_agent_with(
        "node-a",
        &token,
        &["--registries-config", registries.to_str().unwrap()],
    );
    c.wait("node-a Ready and able to run containers", || {
        let r = c.kubectl(&["get", "node", "node-a", "-o", "json"]);
        let n: Value = serde_json::from_str(&r.stdout).ok()?;
        (n.pointer("/metadata/labels/kedge.io~1runtime-oci") == Some(&json!("true"))).then_some(())
    });
    for ns in ["team-a", "team-b"] {
        apply(
            &c,
            &json!({"apiVersion": "v1", "kind": "Namespace", "metadata": {"name": ns}}),
        );
    }
    let busybox = format!("{host}/apps/busybox:v1");

    // 1. No secret: the pull is refused, the pod says why, and an Event records it.
    apply(
        &c,
        &busybox_pod("team-a", "no-secret", &busybox, None, "echo hi; sleep 3600"),
    );
    let (reason, message) = c.wait("no-secret to fail its pull", || {
        waiting(&c, "team-a", "no-secret").filter(|(r, _)| r == "ImagePullBackOff")
    });
    assert_eq!(reason, "ImagePullBackOff");
    assert!(
        message.contains("401") || message.to_lowercase().contains("unauthorized"),
        "{message}"
    );
    let events = c.k(&["get", "events", "-n", "team-a", "-o", "json"]);
    let events: Value = serde_json::from_str(&events).unwrap();
    let failed = events["items"]
        .as_array()
        .unwrap()
        .iter()
        .find(|e| e["reason"] == "Failed" && e["involvedObject"]["name"] == "no-secret")
        .unwrap_or_else(|| panic!("no Failed event: {events}"));
    assert!(
        failed["message"]
            .as_str()
            .unwrap()
            .contains("Failed to pull image"),
        "{failed}"
    );
    assert!(
        c.kubectl(&["get", "pods", "-n", "team-a"])
            .stdout
            .contains("ImagePullBackOff")
    );

    // 2. With a dockerconfigjson Secret in the pod's namespace the container runs.
    apply(&c, &regcred(&reg, "team-a"));
    // It also mounts volumes: an emptyDir, a memory emptyDir, a hostPath it creates.
    let host_dir = c.dir.path().join("host-volume");
    let mut with_secret = busybox_pod(
        "team-a",
        "with-secret",
        &busybox,
        Some("regcred"),
        "echo hi from $(hostname); echo disk > /scratch/f; echo mem > /mem/f; \
         cat /scratch/f /mem/f; echo from-pod > /host/f; exec sleep 3600",
    );
    with_secret["spec"]["volumes"] = json!([
        {"name": "scratch", "emptyDir": {}},
        {"name": "mem", "emptyDir": {"medium": "Memory"}},
        {"name": "host", "hostPath": {"path": host_dir, "type": "DirectoryOrCreate"}},
    ]);
    with_secret["spec"]["containers"][0]["volumeMounts"] = json!([
        {"name": "scratch", "mountPath": "/scratch"},
        {"name": "mem", "mountPath": "/mem"},
        {"name": "host", "mountPath": "/host"},
    ]);
    apply(&c, &with_secret);
    c.wait("with-secret Running", || {
        all_running(&c, "team-a", "with-secret").then_some(())
    });
    let logs = c.wait("the container's log", || {
        let r = c.kubectl(&["logs", "-n", "team-a", "with-secret"]);
        (r.ok && r.stdout.contains("hi from")).then_some(r.stdout)
    });
    assert!(
        logs.contains("hi from with-secret"),
        "hostname is the pod name: {logs}"
    );
    let p = pod_json(&c, "team-a", "with-secret").unwrap();
    let image_id = p
        .pointer("/status/containerStatuses/0/imageID")
        .and_then(Value::as_str)
        .unwrap();
    assert!(
        image_id.starts_with(&format!("{host}/apps/busybox@sha256:")),
        "{image_id}"
    );

    // 3. A secret of another namespace cannot be used. (`Always`: with `IfNotPresent` the
    // image already on the node would be used without any pull, as kubelet does.)
    let mut borrowed = busybox_pod(
        "team-b",
        "borrowed-secret",
        &busybox,
        Some("regcred"),
        "sleep 3600",
    );
    borrowed["spec"]["containers"][0]["imagePullPolicy"] = json!("Always");
    apply(&c, &borrowed);
    c.wait("borrowed-secret to fail its pull", || {
        waiting(&c, "team-b", "borrowed-secret").filter(|(r, _)| r == "ImagePullBackOff")
    });
    let events = c.k(&["get", "events", "-n", "team-b"]);
    assert!(
        events.contains("FailedToRetrieveImagePullSecret"),
        "{events}"
    );

    // 4. One Deployment whose pods mix a Wasm container and an OCI container.
    apply(
        &c,
        &json!({
            "apiVersion": "apps/v1", "kind": "Deployment",
            "metadata": {"name": "mixed", "namespace": "team-a"},
            "spec": {
                "replicas": 1,
                "selector": {"matchLabels": {"app": "mixed"}},
                "template": {
                    "metadata": {"labels": {"app": "mixed"}},
                    "spec": {
                        "imagePullSecrets": [{"name": "regcred"}],
                        "containers": [
                            {"name": "wasm", "image": wasm_ref},
                            {"name": "shell", "image": busybox,
                             "command": ["sh", "-c", "echo from-container; exec sleep 3600"]},
                        ],
                    },
                },
            },
        }),
    );
    let pod = c.wait("the mixed pod Running with both containers ready", || {
        let r = c.kubectl(&[
            "get",
            "pods",
            "-n",
            "team-a",
            "-l",
            "app=mixed",
            "-o",
            "json",
        ]);
        let v: Value = serde_json::from_str(&r.stdout).ok()?;
        let p = v["items"].as_array()?.first()?.clone();
        let name = p["metadata"]["name"].as_str()?.to_string();
        all_running(&c, "team-a", &name).then_some(name)
    });
    let wasm_logs = c.wait("the Wasm container's log", || {
        let r = c.kubectl(&["logs", "-n", "team-a", &pod, "-c", "wasm"]);
        (r.ok && r.stdout.contains("hello from")).then_some(r.stdout)
    });
    assert!(wasm_logs.contains(&pod), "{wasm_logs}");
    c.wait("the OCI container's log", || {
        let r = c.kubectl(&["logs", "-n", "team-a", &pod, "-c", "shell"]);
        (r.ok && r.stdout.contains("from-container")).then_some(())
    });

    // 5. Deletion honours the grace period asked for: `sh` as PID 1 ignores TERM, so the
    // agent kills it once the 2 s are over (not after the pod's default 30 s).
    let t = Instant::now();
    c.k(&[
        "delete",
        "pod",
        "-n",
        "team-a",
        "with-secret",
        "--grace-period=2",
        "--wait=true",
    ]);
    let took = t.elapsed();
    assert!(
        took < Duration::from_secs(20),
        "deleting with --grace-period=2 took {took:?}"
    );
    let events = c.k(&["get", "events", "-n", "team-a"]);
    for reason in ["Pulling", "Pulled", "Created", "Started", "Killing"] {
        assert!(events.contains(reason), "no {reason} event:\n{events}");
    }
    c.k(&["delete", "deployment", "-n", "team-a", "mixed"]);
    c.k(&[
        "delete",
        "pod",
        "-n",
        "team-a",
        "no-secret",
        "--grace-period=0",
        "--force",
    ]);
    c.k(&[
        "delete",
        "pod",
        "-n",
        "team-b",
        "borrowed-secret",
        "--grace-period=0",
        "--force",
    ]);
}

/// KEP-2535 on the agent (`--ensure-secret-pulled-images`): a private Wasm image pulled for a
/// pod holding the registry's secret does not run, from the node's copy, for a pod of the
/// same node without it (`IfNotPresent` pulls to verify, and the registry says no); with the
/// secret another pod uses the copy.
#[test]
fn secret_pulled_images_run_only_for_pods_holding_the_secret() {
    kedge_tunnel::install_crypto_provider();
    let reg = TestRegistry::start(TestRegistryOptions { auth: true }).expect("test registry");
    let image = format!("{}/apps/hello:v1", reg.host());
    push_hello(&reg, &image);

    let mut c = Cluster::start();
    let registries = trusting_registries(&c, &reg);
    let token = c.token.clone();
    c.start_agent_with(
        "kep-node",
        &token,
        &[
            "--registries-config",
            registries.to_str().unwrap(),
            "--ensure-secret-pulled-images",
        ],
    );
    apply(&c, &regcred(&reg, "default"));
    let pod = |name: &str, secret: bool| {
        let mut p = json!({
            "apiVersion": "v1", "kind": "Pod",
            "metadata": {"name": name, "namespace": "default"},
            "spec": {"nodeName": "kep-node", "containers": [{
                "name": "hello", "image": image, "imagePullPolicy": "IfNotPresent"}]},
        });
        if secret {
            p["spec"]["imagePullSecrets"] = json!([{"name": "regcred"}]);
        }
        p
    };
    apply(&c, &pod("owner", true));
    c.wait("owner Running", || {
        all_running(&c, "default", "owner").then_some(())
    });
    apply(&c, &pod("freeloader", false));
    let (_, message) = c.wait("freeloader refused its image", || {
        waiting(&c, "default", "freeloader").filter(|(r, _)| r == "ImagePullBackOff")
    });
    assert!(
        message.contains("401") || message.to_lowercase().contains("unauthorized"),
        "{message}"
    );
    apply(&c, &pod("second-owner", true));
    c.wait("second-owner Running", || {
        all_running(&c, "default", "second-owner").then_some(())
    });
    assert!(
        waiting(&c, "default", "freeloader").is_some(),
        "freeloader still waits"
    );
}
