//! Lifecycle hooks run by the agent, here on Wasm containers: httpGet hooks reach their
//! target (a server this test runs) after the start and before the stop, a `sleep` preStop
//! hook holds the stop back, and a failing postStart hook (exec: the program again) kills the
//! container with kubelet's `FailedPostStartHook` Event.

use std::io::Read as _;
use std::net::TcpListener;
use std::time::{Duration, Instant};

use serde_json::{Value, json};

use crate::harness::Cluster;

fn apply(c: &Cluster, obj: &Value) {
    let r = c.kubectl_stdin(&["apply", "-f", "-"], Some(&obj.to_string()));
    assert!(r.ok, "{}", r.stderr);
}

fn hello_pod(name: &str, lifecycle: Value) -> Value {
    json!({"apiVersion": "v1", "kind": "Pod", "metadata": {"name": name},
        "spec": {"containers": [{"name": "hello", "image": "kedge.dev/samples/hello-wasm:v1",
            "lifecycle": lifecycle}]}})
}

/// The paths of the next `n` requests to `l`, within `timeout`.
fn requests(l: &TcpListener, n: usize, timeout: Duration) -> Vec<String> {
    l.set_nonblocking(true).unwrap();
    let deadline = Instant::now() + timeout;
    let mut seen = Vec::new();
    while seen.len() < n && Instant::now() < deadline {
        match l.accept() {
            Ok((mut s, _)) => {
                s.set_nonblocking(false).unwrap();
                s.set_read_timeout(Some(Duration::from_secs(2))).unwrap();
                let mut buf = [0u8; 1024];
                let n = s.read(&mut buf).unwrap_or(0);
                let head = String::from_utf8_lossy(&buf[..n]).to_string();
                let path = head
                    .split_whitespace()
                    .nth(1)
                    .unwrap_or_default()
                    .to_string();
                use std::io::Write as _;
                let _ = s.write_all(b"HTTP/1.0 200 OK\r\nContent-Length: 0\r\n\r\n");
                seen.push(path);
            }
            Err(_) => std::thread::sleep(Duration::from_millis(50)),
        }
    }
    seen
}

#[test]
fn lifecycle_hooks_run_on_wasm_containers() {
    let mut c = Cluster::start();
    let token = c.token.clone();
    c.start_agent("hooks-node", &token);

    // httpGet hooks, to a server of this test's.
    let l = TcpListener::bind("127.0.0.1:0").unwrap();
    let port = l.local_addr().unwrap().port();
    let get = |path: &str| json!({"httpGet": {"host": "127.0.0.1", "port": port, "path": path}});
    apply(
        &c,
        &hello_pod(
            "http",
            json!({"postStart": get("/started"), "preStop": get("/stopping")}),
        ),
    );
    assert_eq!(
        requests(&l, 1, Duration::from_secs(60)),
        ["/started"],
        "the postStart hook"
    );
    let r = c.kubectl(&["delete", "pod", "http", "--wait=false"]);
    assert!(r.ok, "{}", r.stderr);
    assert_eq!(
        requests(&l, 1, Duration::from_secs(30)),
        ["/stopping"],
        "the preStop hook"
    );

    // A sleep preStop hook holds the stop back (a Wasm instance otherwise stops at once).
    apply(
        &c,
        &hello_pod("sleepy", json!({"preStop": {"sleep": {"seconds": 3}}})),
    );
    c.wait("the sleepy pod Running", || {
        let p: Value = serde_json::from_str(&c.k(&["get", "pod", "sleepy", "-o", "json"])).ok()?;
        (p["status"]["phase"] == "Running").then_some(())
    });
    let began = Instant::now();
    let r = c.kubectl(&["delete", "pod", "sleepy", "--timeout=60s"]);
    assert!(r.ok, "{}", r.stderr);
    let took = began.elapsed();
    assert!(took >= Duration::from_secs(3), "deleted in {took:?}");

    // A failing postStart hook kills the container, which restarts.
    apply(
        &c,
        &hello_pod(
            "failing",
            json!({"postStart": {"exec": {"command": ["hello", "--cat", "/nonexistent"]}}}),
        ),
    );
    c.wait("FailedPostStartHook and a restart", || {
        let events = c.k(&[
            "get",
            "events",
            "--field-selector",
            "involvedObject.name=failing,reason=FailedPostStartHook",
            "-o",
            "jsonpath={.items[*].message}",
        ]);
        let p: Value = serde_json::from_str(&c.k(&["get", "pod", "failing", "-o", "json"])).ok()?;
        let restarts = p["status"]["containerStatuses"][0]["restartCount"].as_u64()?;
        (events.contains("Exec lifecycle hook ([\"hello\", \"--cat\", \"/nonexistent\"])")
            && events.contains("cannot read /nonexistent")
            && restarts >= 1)
            .then_some(())
    });
}
