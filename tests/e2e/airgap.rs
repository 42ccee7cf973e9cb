//! A gateway with no registry: images supplied as archives, one with `kedge image import`
//! before the agent starts, one dropped in the agent's airgap directory, and pods running them
//! under runc with `IfNotPresent` and `Never`. Image names are under `.invalid`, so no pull
//! could succeed.

use std::path::Path;

use kedge_registry::testing::busybox_docker_archive;
use serde_json::{Value, json};

use crate::harness::{Cluster, KEDGE};

fn docker_archive(tag: &str) -> Vec<u8> {
    busybox_docker_archive(&[tag]).expect("building a docker archive")
}

fn import(node_dir: &Path, archive: &Path) -> std::process::Output {
    std::process::Command::new(KEDGE)
        .args(["image", "import", "--data-dir"])
        .arg(node_dir)
        .arg(archive)
        .output()
        .unwrap()
}

fn pod(name: &str, image: &str, policy: &str) -> Value {
    json!({
        "apiVersion": "v1", "kind": "Pod",
        "metadata": {"name": name},
        "spec": {"containers": [{
            "name": "shell", "image": image, "imagePullPolicy": policy,
            "command": ["sh", "-c", format!("echo offline {name}; sleep 3600")],
        }]},
    })
}

#[test]
fn imported_and_airgap_directory_images_run_with_no_registry() {
    let mut c = Cluster::start();
    let node_dir = c.dir.path().join("gw-1");
    let archive = c.dir.path().join("busybox.tar");
    std::fs::write(&archive, docker_archive("gateway.invalid/edge/busybox:1")).unwrap();
    let out = import(&node_dir, &archive);
    assert!(
        out.status.success(),
        "kedge image import: {}",
        String::from_utf8_lossy(&out.stderr)
    );
    let printed = String::from_utf8_lossy(&out.stdout);
    assert!(
        printed.starts_with("gateway.invalid/edge/busybox:1@sha256:"),
        "{printed}"
    );
    // The airgap directory: picked up when the agent starts.
    std::fs::write(
        node_dir.join("images/tools.tar"),
        docker_archive("gateway.invalid/edge/tools:2"),
    )
    .unwrap();

    let token = c.token.clone();
    c.start_agent("gw-1", &token);
    c.wait("gw-1 Ready and able to run containers", || {
        let r = c.kubectl(&["get", "node", "gw-1", "-o", "json"]);
        let n: Value = serde_json::from_str(&r.stdout).ok()?;
        (n.pointer("/metadata/labels/kedge.io~1runtime-oci") == Some(&json!("true"))).then_some(())
    });
    // The running agent owns the store: a second writer is refused, saying why.
    let busy = import(&node_dir, &archive);
    assert!(!busy.status.success());
    let stderr = String::from_utf8_lossy(&busy.stderr);
    assert!(stderr.contains("in use"), "{stderr}");

    for (name, image, policy) in [
        ("imported", "gateway.invalid/edge/busybox:1", "IfNotPresent"),
        ("airgap", "gateway.invalid/edge/tools:2", "Never"),
    ] {
        let r = c.kubectl_stdin(
            &["create", "-f", "-"],
            Some(&pod(name, image, policy).to_string()),
        );
        assert!(r.ok, "{}", r.stderr);
        let logs = c.wait(&format!("pod {name} to log"), || {
            let r = c.kubectl(&["logs", name]);
            r.stdout.contains("offline").then_some(r.stdout)
        });
        assert!(logs.contains(&format!("offline {name}")), "{logs}");
    }
}
