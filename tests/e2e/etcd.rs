//! A whole `kedge server` on etcd (`--datastore-endpoint`): objects written with kubectl,
//! controllers at work, watches from a resourceVersion, and a restart that keeps every object
//! with its resourceVersion. The test starts its own etcd on loopback ports.

use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

use crate::harness::*;

/// An etcd of its own for one test, killed when dropped.
struct Etcd {
    child: Child,
    endpoint: String,
    _dir: tempfile::TempDir,
}

impl Drop for Etcd {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

fn tcp_port() -> u16 {
    std::net::TcpListener::bind("127.0.0.1:0")
        .unwrap()
        .local_addr()
        .unwrap()
        .port()
}

/// Starts etcd and waits until it serves; `None` (said) when etcd is not installed.
fn start_etcd() -> Option<Etcd> {
    if Command::new("etcd").arg("--version").output().is_err() {
        eprintln!(
            "SKIPPED: the etcd binary is not installed (scripts/setup.sh installs Debian's etcd-server)"
        );
        return None;
    }
    for _ in 0..3 {
        let dir = tempfile::tempdir().unwrap();
        let (client, peer) = (tcp_port(), tcp_port());
        let endpoint = format!("http://127.0.0.1:{client}");
        let peer_url = format!("http://127.0.0.1:{peer}");
        let log = std::fs::File::create(dir.path().join("etcd.log")).unwrap();
        let child = Command::new("etcd")
            .args(["--name", "e2e", "--data-dir"])
            .arg(dir.path().join("data"))
            .args(["--listen-client-urls", &endpoint])
            .args(["--advertise-client-urls", &endpoint])
            .args(["--listen-peer-urls", &peer_url])
            .args(["--initial-advertise-peer-urls", &peer_url])
            .args(["--initial-cluster", &format!("e2e={peer_url}")])
            .args(["--log-level", "error"])
            .stdout(log.try_clone().unwrap())
            .stderr(log)
            .stdin(Stdio::null())
            .spawn()
            .expect("starting etcd");
        let mut e = Etcd {
            child,
            endpoint,
            _dir: dir,
        };
        // etcd answers its health endpoint on the client URL once it has a leader.
        let deadline = Instant::now() + Duration::from_secs(20);
        while Instant::now() < deadline {
            if e.child.try_wait().ok().flatten().is_some() {
                break;
            }
            let health = Command::new("curl")
                .args(["-sf", "--max-time", "2", &format!("{}/health", e.endpoint)])
                .output();
            if health
                .is_ok_and(|o| o.status.success() && o.stdout.starts_with(b"{\"health\":\"true\""))
            {
                return Some(e);
            }
            std::thread::sleep(Duration::from_millis(100));
        }
    }
    panic!("etcd did not start in 3 attempts");
}

fn rv_of(c: &Cluster, what: &[&str]) -> u64 {
    let mut args = vec!["get"];
    args.extend_from_slice(what);
    args.extend_from_slice(&["-o", "jsonpath={.metadata.resourceVersion}"]);
    c.k(&args)
        .trim()
        .parse()
        .expect("a numeric resourceVersion")
}

fn start_server_again(c: &mut Cluster, endpoint: &str) {
    let data = c.dir.path().join("server");
    let listen = format!("{}:{}", c.host, c.port);
    let cache = plugin_cache();
    c.server = spawn(
        "server-again",
        c.dir.path(),
        &[
            "server",
            "--data-dir",
            data.to_str().unwrap(),
            "--listen",
            &listen,
            "--plugin-cache-dir",
            cache.to_str().unwrap(),
            "--tls-san",
            &c.host,
            "--datastore-endpoint",
            endpoint,
        ],
    );
    c.wait("the API back", || {
        c.kubectl(&["get", "--raw", "/readyz"]).ok.then_some(())
    });
}

#[test]
fn a_server_on_etcd_keeps_its_objects_and_their_versions_across_a_restart() {
    let Some(etcd) = start_etcd() else { return };
    let mut c = Cluster::start_with(&["--datastore-endpoint", &etcd.endpoint]);
    // The state is in etcd, not in the data dir.
    assert!(!c.dir.path().join("server/state.redb").exists());

    c.k(&["create", "namespace", "shop"]);
    c.k(&[
        "-n",
        "shop",
        "create",
        "configmap",
        "cfg",
        "--from-literal=a=1",
    ]);
    let cm_rv = rv_of(&c, &["-n", "shop", "configmap", "cfg"]);
    // A stale update is refused (409) as with any store.
    let stale = c.kubectl_stdin(
        &["replace", "-f", "-"],
        Some(&format!(
            r#"{{"apiVersion":"v1","kind":"ConfigMap","metadata":{{"name":"cfg","namespace":"shop","resourceVersion":"{}"}},"data":{{"a":"2"}}}}"#,
            cm_rv - 1
        )),
    );
    assert!(
        !stale.ok && stale.stderr.contains("modified"),
        "{}",
        stale.stderr
    );
    // Controllers run on etcd too: a Deployment gets its ReplicaSet and Pods (pending: no
    // node here).
    c.k(&[
        "-n",
        "shop",
        "create",
        "deployment",
        "web",
        "--image=registry.example/web:1",
        "--replicas=2",
    ]);
    c.wait("two pods of the deployment", || {
        let out = c.kubectl(&["-n", "shop", "get", "pods", "-l", "app=web", "-o", "name"]);
        (out.stdout.lines().count() == 2).then_some(())
    });
    // A watch from a resourceVersion sees what came after it, in order.
    c.k(&["-n", "shop", "label", "configmap", "cfg", "tier=front"]);
    c.k(&["-n", "shop", "delete", "configmap", "cfg"]);
    let events = c.k(&[
        "get",
        "--raw",
        &format!(
            "/api/v1/namespaces/shop/configmaps?watch=1&resourceVersion={cm_rv}&timeoutSeconds=2"
        ),
    ]);
    let kinds: Vec<String> = events
        .lines()
        .filter(|l| !l.trim().is_empty())
        .map(|l| {
            serde_json::from_str::<serde_json::Value>(l).unwrap()["type"]
                .as_str()
                .unwrap()
                .to_string()
        })
        .collect();
    assert_eq!(kinds, ["MODIFIED", "DELETED"], "{events}");

    c.k(&[
        "-n",
        "shop",
        "create",
        "configmap",
        "kept",
        "--from-literal=b=2",
    ]);
    let kept_rv = rv_of(&c, &["-n", "shop", "configmap", "kept"]);
    let deploy_rv = rv_of(&c, &["-n", "shop", "deployment", "web"]);
    let pods_before = c.k(&["-n", "shop", "get", "pods", "-o", "name"]);

    c.server.kill();
    start_server_again(&mut c, &etcd.endpoint);
    assert_eq!(rv_of(&c, &["-n", "shop", "configmap", "kept"]), kept_rv);
    assert_eq!(rv_of(&c, &["-n", "shop", "deployment", "web"]), deploy_rv);
    assert_eq!(
        c.k(&["-n", "shop", "get", "pods", "-o", "name"]),
        pods_before
    );
    assert_eq!(
        c.k(&[
            "-n",
            "shop",
            "get",
            "configmap",
            "kept",
            "-o",
            "jsonpath={.data.b}"
        ]),
        "2"
    );
    // Writes go on from etcd's revision.
    c.k(&["-n", "shop", "label", "configmap", "kept", "x=y"]);
    assert!(rv_of(&c, &["-n", "shop", "configmap", "kept"]) > kept_rv);
    // A watch from before the restart is too old for the new server's watch cache: 410, and
    // kubectl-style clients relist.
    let old = c.kubectl(&[
        "get",
        "--raw",
        &format!(
            "/api/v1/namespaces/shop/configmaps?watch=1&resourceVersion={cm_rv}&timeoutSeconds=2"
        ),
    ]);
    assert!(
        old.stdout.contains("Expired")
            || old.stdout.contains("410")
            || old.stderr.contains("410")
            || old.stderr.contains("Gone"),
        "stdout: {}\nstderr: {}",
        old.stdout,
        old.stderr
    );
}
