//! Container log rotation (`--container-log-max-size`, `--container-log-max-files`): a chatty
//! pod's log directory stays within the limits while `kubectl logs` and `kubectl logs -f` keep
//! answering, the latter without losing lines across rotations.

use std::io::Read as _;
use std::path::{Path, PathBuf};
use std::process::{Command, Stdio};
use std::time::{Duration, Instant};

use serde_json::json;

use crate::harness::{Busybox, Cluster, containers_unavailable};

const MAX_SIZE: u64 = 2048;

/// The container's log directory on the node, once the agent made it.
fn log_dir(node_dir: &Path, pod: &str, container: &str) -> Option<PathBuf> {
    let prefix = format!("default_{pod}_");
    std::fs::read_dir(node_dir.join("pods"))
        .ok()?
        .flatten()
        .find(|e| e.file_name().to_string_lossy().starts_with(&prefix))
        .map(|e| e.path().join(container))
        .filter(|d| d.join("0.log").exists())
}

/// The numbers of the `line N` lines in `text`, in order.
fn numbers(text: &str) -> Vec<u64> {
    text.lines()
        .filter_map(|l| l.strip_prefix("line ")?.split(' ').next()?.parse().ok())
        .collect()
}

#[test]
fn a_chatty_container_log_is_rotated_and_still_readable() {
    if let Some(why) = containers_unavailable() {
        eprintln!("log rotation (OCI): SKIPPING: {why}");
        return;
    }
    let mut c = Cluster::start();
    let b = Busybox::start(c.dir.path());
    let token = c.token.clone();
    let registries = b.registries_yaml.display().to_string();
    c.start_agent_with(
        "logrotate",
        &token,
        &[
            "--registries-config",
            &registries,
            "--container-log-max-size",
            "2Ki",
            "--container-log-max-files",
            "2",
        ],
    );
    // About 10 lines of 80 bytes a second: a rotation every two seconds or so (a follower more
    // than a whole file behind would lose the deleted files' lines, as with kubelet).
    let script = "i=0; while true; do i=$((i+1)); \
        echo \"line $i ..........................................................\"; \
        if [ $((i % 10)) -eq 0 ]; then sleep 1; fi; done";
    let pod = json!({"apiVersion": "v1", "kind": "Pod", "metadata": {"name": "chatty"},
        "spec": {"containers": [{"name": "talk", "image": b.image,
            "args": ["sh", "-c", script]}]}});
    let r = c.kubectl_stdin(&["apply", "-f", "-"], Some(&pod.to_string()));
    assert!(r.ok, "{}", r.stderr);
    let node_dir = c.dir.path().join("logrotate");
    let dir = c.wait("the container's log", || {
        log_dir(&node_dir, "chatty", "talk")
    });

    // Follow from now on while the directory is watched.
    let mut follow = Command::new("kubectl")
        .arg("--kubeconfig")
        .arg(&c.kubeconfig)
        .args(["logs", "-f", "chatty", "--tail", "0"])
        .stdout(Stdio::piped())
        .stderr(Stdio::null())
        .spawn()
        .unwrap();

    let mut rotated_seen = 0;
    let start = Instant::now();
    while start.elapsed() < Duration::from_secs(8) {
        // The directory also holds the OCI container's termination-log.
        let entries: Vec<_> = std::fs::read_dir(&dir)
            .unwrap()
            .flatten()
            .filter(|e| e.file_name().to_string_lossy().starts_with("0.log"))
            .collect();
        let names: Vec<_> = entries
            .iter()
            .map(|e| e.file_name().to_string_lossy().into_owned())
            .collect();
        let total: u64 = entries
            .iter()
            .filter_map(|e| e.metadata().ok())
            .map(|m| m.len())
            .sum();
        assert!(names.len() <= 2, "more than 2 log files: {names:?}");
        // Each file holds at most MAX_SIZE (a record is never split across files).
        assert!(total <= 2 * MAX_SIZE, "{total} bytes of logs: {names:?}");
        rotated_seen += names.iter().filter(|n| n.starts_with("0.log.")).count();
        std::thread::sleep(Duration::from_millis(100));
    }
    assert!(rotated_seen > 0, "the log was never rotated");

    follow.kill().unwrap();
    let mut followed = String::new();
    follow
        .stdout
        .take()
        .unwrap()
        .read_to_string(&mut followed)
        .unwrap();
    let _ = follow.wait();
    // The kill may cut the last line short.
    followed.truncate(followed.rfind('\n').map_or(0, |i| i + 1));
    let seen = numbers(&followed);
    eprintln!(
        "followed {:?}..{:?}; now at {:?}",
        seen.first(),
        seen.last(),
        numbers(&c.k(&["logs", "chatty", "--tail", "1"])).last()
    );
    // ~8 s at ~10 lines/s and 2 KiB (~17 records) per file: several rotations were followed.
    assert!(seen.len() > 40, "followed only {} lines", seen.len());
    for w in seen.windows(2) {
        assert_eq!(
            w[1],
            w[0] + 1,
            "a line was lost or repeated while following"
        );
    }

    let logs = c.kubectl(&["logs", "chatty"]);
    assert!(logs.ok, "{}", logs.stderr);
    let got = numbers(&logs.stdout);
    assert!(!got.is_empty(), "no lines: {:?}", logs.stdout);
    // Only the current file, as kubelet: at most 2 KiB of records.
    assert!(
        logs.stdout.len() as u64 <= MAX_SIZE,
        "{}",
        logs.stdout.len()
    );
    let tail = c.kubectl(&["logs", "chatty", "--tail", "1"]);
    assert!(tail.ok, "{}", tail.stderr);
    assert_eq!(numbers(&tail.stdout).len(), 1, "{:?}", tail.stdout);
}
