//! The official Python `kubernetes` client, unmodified, against a real server and agent:
//! create/list/watch/patch/delete of a Deployment and a Pod (tests/e2e/python/client.py).

use std::process::Command;

use crate::harness::{Cluster, repo, tail};

#[test]
fn the_official_python_client_works_unmodified() {
    let probe = Command::new("python3")
        .args(["-c", "import kubernetes"])
        .output()
        .expect("python3 is needed for this test");
    assert!(
        probe.status.success(),
        "the Python `kubernetes` client is missing: `pip install kubernetes` (make setup does)\n{}",
        String::from_utf8_lossy(&probe.stderr)
    );
    let mut c = Cluster::start();
    let token = c.token.clone();
    c.start_agent("node-py", &token);
    c.wait("node-py Ready", || {
        let out = c.k(&["get", "nodes", "-o", "name"]);
        out.contains("node-py").then_some(())
    });
    let script = repo().join("tests/e2e/python/client.py");
    let out = Command::new("timeout")
        .arg("300")
        .arg("python3")
        .arg(&script)
        .arg(&c.kubeconfig)
        .output()
        .unwrap();
    assert!(
        out.status.success(),
        "python client failed:\n{}\n{}\n--- server ---\n{}",
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr),
        tail(&c.server.log_text(), 30)
    );
    assert!(String::from_utf8_lossy(&out.stdout).contains("all checks passed"));
}
