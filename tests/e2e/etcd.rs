//! A whole `kedge server` on etcd (`--datastore-endpoint`): objects written with kubectl,
//! controllers at work, watches from a resourceVersion, and a restart that keeps every object
//! with its resourceVersion. The test starts its own etcd on loopback ports.

use std::process::{Command, Stdio};
use std::time::{Duration, Instant};

use crate::harness::*;

fn rv_of(c: &Cluster, what: &[&str]) -> u64 {
    let mut args = vec!["get"];
    args.extend_from_slice(what);
    args.extend_from_slice(&["-o", "jsonpath={.metadata.resourceVersion}"]);
    c.k(&args)
        .trim()
        .parse()
        .expect("a numeric resourceVersion")
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
    c.restart_server(&["--datastore-endpoint", &etcd.endpoint]);
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

fn configmap_data(c: &Cluster, name: &str) -> String {
    c.k(&[
        "-n",
        "shop",
        "get",
        "configmap",
        name,
        "-o",
        "jsonpath={.data}",
    ])
}

#[test]
fn a_snapshot_of_a_server_on_etcd_is_restored_by_etcds_own_tool() {
    let Some(mut etcd) = start_etcd() else { return };
    let has = |tool: &str| Command::new(tool).arg("version").output().is_ok();
    if !has("etcdctl") && !has("etcdutl") {
        eprintln!(
            "SKIPPED: neither etcdctl nor etcdutl is installed (scripts/setup.sh installs Debian's etcd-client)"
        );
        return;
    }
    let mut c = Cluster::start_with(&["--datastore-endpoint", &etcd.endpoint]);
    c.k(&["create", "namespace", "shop"]);
    c.k(&[
        "-n",
        "shop",
        "create",
        "configmap",
        "before",
        "--from-literal=a=1",
    ]);
    let rv = rv_of(&c, &["-n", "shop", "configmap", "before"]);
    let file = c.dir.path().join("etcd.snapshot");
    let kubeconfig = c.kubeconfig.to_str().unwrap().to_string();
    let out = kedge(&[
        "snapshot",
        "save",
        "--kubeconfig",
        &kubeconfig,
        file.to_str().unwrap(),
    ]);
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    assert!(
        String::from_utf8_lossy(&out.stdout).contains("etcd"),
        "{}",
        String::from_utf8_lossy(&out.stdout)
    );
    c.k(&[
        "-n",
        "shop",
        "create",
        "configmap",
        "after",
        "--from-literal=b=2",
    ]);

    // Everything stopped, etcd's data thrown away, the snapshot restored into a new data dir.
    c.server.kill();
    let _ = etcd.child.kill();
    let _ = etcd.child.wait();
    std::fs::remove_dir_all(etcd.dir.path().join("data")).unwrap();
    let restored = etcd.dir.path().join("restored");
    let out = kedge(&[
        "snapshot",
        "restore",
        file.to_str().unwrap(),
        "--etcd-data-dir",
        restored.to_str().unwrap(),
        "--etcd-name",
        "e2e",
        "--etcd-initial-cluster",
        &format!("e2e={}", etcd.peer_url),
        "--etcd-initial-advertise-peer-urls",
        &etcd.peer_url,
    ]);
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    // An etcd snapshot given as an embedded store's is refused with what to do instead.
    let wrong = kedge(&[
        "snapshot",
        "restore",
        file.to_str().unwrap(),
        "--data-dir",
        c.dir.path().join("server").to_str().unwrap(),
    ]);
    assert!(!wrong.status.success());
    assert!(
        String::from_utf8_lossy(&wrong.stderr).contains("--etcd-data-dir"),
        "{}",
        String::from_utf8_lossy(&wrong.stderr)
    );

    let again = run_etcd(
        tempfile::tempdir().unwrap(),
        &restored,
        etcd.endpoint.clone(),
        etcd.peer_url.clone(),
    )
    .expect("etcd starts on the restored data dir");
    c.restart_server(&["--datastore-endpoint", &again.endpoint]);
    assert_eq!(rv_of(&c, &["-n", "shop", "configmap", "before"]), rv);
    assert_eq!(configmap_data(&c, "before"), r#"{"a":"1"}"#);
    assert!(!c.kubectl(&["-n", "shop", "get", "configmap", "after"]).ok);
}

#[test]
fn a_cluster_on_the_embedded_store_moves_onto_etcd() {
    if on_etcd() {
        eprintln!("SKIPPED under make test-etcd: it starts on the embedded store");
        return;
    }
    let Some(etcd) = start_etcd() else { return };
    let mut c = Cluster::start_with(&["--secrets-encryption"]);
    c.k(&["create", "namespace", "shop"]);
    c.k(&[
        "-n",
        "shop",
        "create",
        "configmap",
        "cfg",
        "--from-literal=a=1",
    ]);
    c.k(&[
        "-n",
        "shop",
        "create",
        "secret",
        "generic",
        "keys",
        "--from-literal=token=moved-s3cr3t",
    ]);
    let uid = c.k(&[
        "-n",
        "shop",
        "get",
        "configmap",
        "cfg",
        "-o",
        "jsonpath={.metadata.uid}",
    ]);
    c.server.kill();

    let data = c.dir.path().join("server");
    let migrate_with = |extra: &[&str]| {
        let mut args = vec![
            "datastore",
            "migrate",
            "--data-dir",
            data.to_str().unwrap(),
            "--to",
            &etcd.endpoint,
            "--secrets-encryption",
        ];
        args.extend_from_slice(extra);
        kedge(&args)
    };
    let migrate = || migrate_with(&[]);
    // As a run that stopped halfway leaves it: its marker (with the embedded store's
    // revision it copied at) and some objects in etcd (here the namespace, written
    // differently). A server will not start on that; the next run goes on, skipping what is
    // there — unless the embedded store changed since, which it refuses.
    let probe = migrate_with(&["--datastore-prefix", "/probe/"]);
    let said = String::from_utf8_lossy(&probe.stdout).to_string();
    assert!(probe.status.success(), "{said}");
    let revision: u64 = said
        .split("embedded store revision ")
        .nth(1)
        .and_then(|r| r.split(')').next())
        .and_then(|r| r.trim().parse().ok())
        .unwrap_or_else(|| panic!("no revision in {said:?}"));
    let put = |key: &str, value: &str| {
        let body = format!(
            r#"{{"key":"{}","value":"{}"}}"#,
            base64_encode(key.as_bytes()),
            base64_encode(value.as_bytes())
        );
        let out = Command::new("curl")
            .args(["-sf", "--max-time", "5", "-X", "POST", "-d", &body])
            .arg(format!("{}/v3/kv/put", etcd.endpoint))
            .output()
            .unwrap();
        assert!(out.status.success(), "putting {key} into etcd");
    };
    let marker = |rev: u64| {
        put(
            "/registry/kedge-internal/migrations//in-progress",
            &format!(
                r#"{{"apiVersion":"kedge.io/v1","kind":"Migration","metadata":{{"name":"in-progress"}},"fromRevision":{rev}}}"#
            ),
        )
    };
    marker(revision + 1);
    put(
        "/registry/core/namespaces//shop",
        r#"{"apiVersion":"v1","kind":"Namespace","metadata":{"name":"shop","uid":"copied-before"}}"#,
    );
    let refused = kedge(&[
        "server",
        "--data-dir",
        data.to_str().unwrap(),
        "--listen",
        &format!("127.0.0.1:{}", free_port()),
        "--datastore-endpoint",
        &etcd.endpoint,
        "--secrets-encryption",
    ]);
    assert!(!refused.status.success());
    assert!(
        String::from_utf8_lossy(&refused.stderr).contains("did not finish"),
        "{}",
        String::from_utf8_lossy(&refused.stderr)
    );
    let changed = migrate();
    assert!(!changed.status.success());
    assert!(
        String::from_utf8_lossy(&changed.stderr).contains("changed since"),
        "{}",
        String::from_utf8_lossy(&changed.stderr)
    );
    marker(revision);
    let out = migrate();
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    assert!(
        String::from_utf8_lossy(&out.stdout).contains("migrated"),
        "{}",
        String::from_utf8_lossy(&out.stdout)
    );
    // etcd holds the Secret sealed, as the embedded store did (etcd's JSON gateway).
    let key = base64_encode(b"/registry/core/secrets/shop/keys");
    let raw = Command::new("curl")
        .args(["-sf", "--max-time", "5", "-X", "POST", "-d"])
        .arg(format!(r#"{{"key":"{key}"}}"#))
        .arg(format!("{}/v3/kv/range", etcd.endpoint))
        .output()
        .unwrap();
    let raw: serde_json::Value = serde_json::from_slice(&raw.stdout).unwrap();
    let value = {
        use base64::Engine as _;
        base64::engine::general_purpose::STANDARD
            .decode(raw["kvs"][0]["value"].as_str().expect("the Secret in etcd"))
            .unwrap()
    };
    assert!(
        value.starts_with(b"k8s:enc:aescbc:v1:"),
        "{}",
        String::from_utf8_lossy(&value)
    );

    c.restart_server(&[
        "--datastore-endpoint",
        &etcd.endpoint,
        "--secrets-encryption",
    ]);
    assert_eq!(
        c.k(&[
            "-n",
            "shop",
            "get",
            "configmap",
            "cfg",
            "-o",
            "jsonpath={.metadata.uid}"
        ]),
        uid
    );
    assert_eq!(configmap_data(&c, "cfg"), r#"{"a":"1"}"#);
    assert_eq!(
        c.k(&[
            "-n",
            "shop",
            "get",
            "secret",
            "keys",
            "-o",
            "jsonpath={.data.token}"
        ]),
        base64_encode(b"moved-s3cr3t")
    );
    // Controllers work on the moved cluster.
    c.k(&[
        "-n",
        "shop",
        "create",
        "deployment",
        "web",
        "--image=registry.example/web:1",
        "--replicas=1",
    ]);
    c.wait("the deployment's pod", || {
        let out = c.kubectl(&["-n", "shop", "get", "pods", "-l", "app=web", "-o", "name"]);
        (out.stdout.lines().count() == 1).then_some(())
    });
    // Twice is refused: etcd is no longer empty.
    c.server.kill();
    let again = migrate();
    assert!(!again.status.success());
    assert!(
        String::from_utf8_lossy(&again.stderr).contains("already holds"),
        "{}",
        String::from_utf8_lossy(&again.stderr)
    );
}

fn base64_encode(b: &[u8]) -> String {
    use base64::Engine as _;
    base64::engine::general_purpose::STANDARD.encode(b)
}

fn pod_count(kubeconfig: &std::path::Path) -> Option<usize> {
    let out = kubectl_at(
        kubeconfig,
        &["-n", "shop", "get", "pods", "-l", "app=web", "-o", "name"],
    )?;
    Some(out.lines().filter(|l| !l.is_empty()).count())
}

/// Two servers on one etcd, the second joined with the first one's token (the cluster's CA
/// and keys come sealed from etcd), share the plugins, each run by the holder of its Lease:
/// they spread over both; `kill -9` of the one holding most of them during a scale-up, and
/// the other takes them over within the lease time and the Deployment converges with neither
/// a duplicate nor a lost pod; the dead one, restarted, rejoins and gets its share back.
#[test]
fn plugins_spread_over_two_servers_and_fail_over_when_one_dies() {
    let Some(etcd) = start_etcd() else { return };
    // Kubernetes' timings scaled down (15 s / 10 s / 2 s by default).
    let timings = [
        "--leader-elect-lease-duration",
        "6s",
        "--leader-elect-renew-deadline",
        "4s",
        "--leader-elect-retry-period",
        "1s",
    ];
    let mut flags = vec![
        "--datastore-endpoint",
        &etcd.endpoint,
        "--replica-name",
        "alpha",
    ];
    flags.extend_from_slice(&timings);
    let mut c = Cluster::start_with(&flags);
    let a_config = c.kubeconfig.clone();
    // The first server made the cluster's token and published its CA and keys, sealed, in
    // etcd; a server with the wrong token is refused, the second one joins with the token.
    let a_data = c.dir.path().join("server");
    let token = std::fs::read_to_string(a_data.join("server-token")).unwrap();
    let intruder = c.dir.path().join("server-x");
    let refused = Command::new(KEDGE)
        .args(["server", "--data-dir", intruder.to_str().unwrap()])
        .args(["--listen", &format!("127.0.0.1:{}", free_port())])
        .args([
            "--datastore-endpoint",
            &etcd.endpoint,
            "--token",
            "not-the-token",
        ])
        .output()
        .unwrap();
    assert!(!refused.status.success());
    assert!(
        String::from_utf8_lossy(&refused.stderr).contains("--token"),
        "{}",
        String::from_utf8_lossy(&refused.stderr)
    );
    let b_data = c.dir.path().join("server-b");
    let b_listen = format!("127.0.0.1:{}", free_port());
    let start_b = |c: &Cluster| {
        let mut args = vec![
            "--datastore-endpoint",
            &etcd.endpoint,
            "--replica-name",
            "beta",
            "--token",
            token.trim(),
        ];
        args.extend_from_slice(&timings);
        spawn_server(
            "server-b",
            c.dir.path(),
            &b_data,
            &b_listen,
            "127.0.0.1",
            &args,
        )
    };
    let mut b = start_b(&c);
    let b_config = b_data.join("admin.kubeconfig");
    c.wait("the second server ready", || {
        (b_config.exists() && kubectl_at(&b_config, &["get", "--raw", "/readyz"]).is_some())
            .then_some(())
    });
    // One cluster: the same CA and service-account key on both.
    for f in ["pki/ca.crt", "pki/ca.key", "pki/sa.key"] {
        assert_eq!(
            std::fs::read(a_data.join(f)).unwrap(),
            std::fs::read(b_data.join(f)).unwrap(),
            "{f}"
        );
    }
    // Both serve the whole API: what one writes the other reads.
    c.k(&["create", "namespace", "shop"]);
    c.wait("the namespace through the second server", || {
        kubectl_at(&b_config, &["get", "namespace", "shop"]).map(|_| ())
    });
    c.wait("the plugins spread over both servers", || {
        let h = holders(&a_config);
        let on = |r: &str| h.iter().filter(|(_, x)| x == r).count();
        (h.len() >= 10
            && on("alpha") >= 3
            && on("beta") >= 3
            && on("alpha") + on("beta") == h.len())
        .then_some(())
    });
    let wide = kubectl_at(&a_config, &["get", "plugins", "-o", "wide"]).unwrap();
    assert!(wide.lines().next().unwrap().contains("HOLDER"), "{wide}");
    assert!(wide.contains("alpha") && wide.contains("beta"), "{wide}");
    kubectl_at(
        &b_config,
        &[
            "-n",
            "shop",
            "create",
            "deployment",
            "web",
            "--image=registry.example/web:1",
            "--replicas=2",
        ],
    )
    .expect("creating the deployment");
    c.wait("two pods", || (pod_count(&a_config)? == 2).then_some(()));

    // The replica holding the most plugins dies during a scale-up.
    let h = holders(&a_config);
    let on_alpha = h.iter().filter(|(_, x)| x == "alpha").count();
    let (dead, survivor, survivor_name) = if on_alpha * 2 >= h.len() {
        ("alpha", b_config.clone(), "beta")
    } else {
        ("beta", a_config.clone(), "alpha")
    };
    if dead == "alpha" {
        c.server.crash();
    } else {
        b.crash();
    }
    let killed = Instant::now();
    kubectl_at(
        &survivor,
        &["-n", "shop", "scale", "deployment", "web", "--replicas=6"],
    )
    .expect("scaling through the survivor");
    c.wait("the survivor running every plugin", || {
        let h = holders(&survivor);
        (!h.is_empty() && h.iter().all(|(_, x)| x == survivor_name)).then_some(())
    });
    let takeover = killed.elapsed();
    eprintln!("plugin failover: every plugin on {survivor_name} {takeover:?} after the kill");
    assert!(takeover < Duration::from_secs(20), "{takeover:?}");
    c.wait("six pods", || (pod_count(&survivor)? == 6).then_some(()));
    // Neither duplicates nor losses: six it stays.
    for _ in 0..6 {
        std::thread::sleep(Duration::from_millis(500));
        assert_eq!(pod_count(&survivor), Some(6));
    }

    // The dead replica comes back and gets its share again.
    if dead == "alpha" {
        let mut flags = vec![
            "--datastore-endpoint",
            &etcd.endpoint,
            "--replica-name",
            "alpha",
        ];
        flags.extend_from_slice(&timings);
        c.restart_server(&flags);
    } else {
        b = start_b(&c);
        c.wait("the second server back", || {
            kubectl_at(&b_config, &["get", "--raw", "/readyz"]).map(|_| ())
        });
    }
    c.wait("the plugins spread again", || {
        let h = holders(&survivor);
        (h.iter().filter(|(_, x)| x == dead).count() >= 3).then_some(())
    });
    assert_eq!(pod_count(&survivor), Some(6));
    drop(b);
}

/// An agent given both servers of a cluster on etcd connects to one (recorded on its Node),
/// and when that one is killed moves to the other within seconds: the Node says so, and its
/// pod runs on, never restarted, its logs reachable through the survivor.
#[test]
fn an_agent_moves_to_the_other_server_when_its_server_dies() {
    let Some(etcd) = start_etcd() else { return };
    let mut c = Cluster::start_with(&[
        "--datastore-endpoint",
        &etcd.endpoint,
        "--replica-name",
        "alpha",
    ]);
    let a_config = c.kubeconfig.clone();
    let token = std::fs::read_to_string(c.dir.path().join("server/server-token")).unwrap();
    let b_data = c.dir.path().join("server-b");
    let b_port = free_port();
    let b_listen = format!("127.0.0.1:{b_port}");
    let beta = [
        "--datastore-endpoint",
        &etcd.endpoint,
        "--replica-name",
        "beta",
        "--token",
        token.trim(),
    ];
    let start_b = |c: &Cluster, name: &str| {
        spawn_server(name, c.dir.path(), &b_data, &b_listen, "127.0.0.1", &beta)
    };
    let mut b = start_b(&c, "server-b");
    let b_config = b_data.join("admin.kubeconfig");
    c.wait("the second server ready", || {
        (b_config.exists() && kubectl_at(&b_config, &["get", "--raw", "/readyz"]).is_some())
            .then_some(())
    });
    let servers = format!("127.0.0.1:{},127.0.0.1:{b_port}", c.port);
    let join = c.token.clone();
    c.start_agent_at(None, &servers, "ha-node", &join, &[]);
    let web_port = free_port();
    c.k(&[
        "run",
        "keep",
        "--image=kedge.dev/samples/hello-wasm:v1",
        "--restart=Always",
        &format!("--env=HELLO_LISTEN=127.0.0.1:{web_port}"),
    ]);
    let started = |cfg: &std::path::Path| {
        kubectl_at(
            cfg,
            &[
                "get",
                "pod",
                "keep",
                "-o",
                "jsonpath={.status.containerStatuses[0].state.running.startedAt}",
            ],
        )
        .filter(|s| !s.is_empty())
    };
    let before = c.wait("the pod running", || started(&a_config));
    let holder_of = |cfg: &std::path::Path| {
        kubectl_at(
            cfg,
            &[
                "get",
                "node",
                "ha-node",
                "-o",
                r#"jsonpath={.metadata.annotations.kedge\.io/tunnel-server}"#,
            ],
        )
        .filter(|s| !s.is_empty())
    };
    let holder = c.wait("the node's tunnel recorded", || holder_of(&a_config));
    let (survivor, survivor_name, dead_config) = if holder == "alpha" {
        c.server.crash();
        (b_config.clone(), "beta", a_config.clone())
    } else {
        assert_eq!(holder, "beta");
        b.crash();
        (a_config.clone(), "alpha", b_config.clone())
    };
    let killed = Instant::now();
    c.wait("the node on the survivor", || {
        (holder_of(&survivor)? == survivor_name).then_some(())
    });
    let moved = killed.elapsed();
    eprintln!("agent failover: the node's tunnel on {survivor_name} {moved:?} after the kill");
    assert!(moved < Duration::from_secs(20), "{moved:?}");
    c.wait("the node Ready", || {
        (kubectl_at(
            &survivor,
            &[
                "get",
                "node",
                "ha-node",
                "-o",
                r#"jsonpath={.status.conditions[?(@.type=="Ready")].status}"#,
            ],
        )? == "True")
            .then_some(())
    });
    // Not restarted: the same container start, no restart counted.
    assert_eq!(started(&survivor).as_deref(), Some(before.as_str()));
    assert_eq!(
        kubectl_at(
            &survivor,
            &[
                "get",
                "pod",
                "keep",
                "-o",
                "jsonpath={.status.containerStatuses[0].restartCount}"
            ]
        )
        .as_deref(),
        Some("0")
    );
    assert!(kubectl_at(&survivor, &["logs", "keep", "--tail=5"]).is_some());

    // The dead server back: the node stays on the survivor, and what is asked of it through
    // the other server is forwarded there (replica to replica): logs, and port-forward's
    // upgraded stream.
    if survivor_name == "beta" {
        c.restart_server(&[
            "--datastore-endpoint",
            &etcd.endpoint,
            "--replica-name",
            "alpha",
            "--token",
            token.trim(),
        ]);
    } else {
        b = start_b(&c, "server-b-again");
    }
    c.wait("the dead server back", || {
        kubectl_at(&dead_config, &["get", "--raw", "/readyz"]).map(|_| ())
    });
    assert_eq!(holder_of(&dead_config).as_deref(), Some(survivor_name));
    let logs = c.wait("logs through the other server", || {
        kubectl_at(&dead_config, &["logs", "keep", "--tail=20"])
    });
    assert!(logs.contains("listening on"), "{logs}");
    let local = free_port();
    let mut pf = Command::new("kubectl")
        .arg("--kubeconfig")
        .arg(&dead_config)
        .args(["port-forward", "pod/keep", &format!("{local}:{web_port}")])
        .stdout(Stdio::piped())
        .stderr(Stdio::null())
        .spawn()
        .unwrap();
    let mut out = std::io::BufReader::new(pf.stdout.take().unwrap());
    let mut line = String::new();
    std::io::BufRead::read_line(&mut out, &mut line).unwrap();
    assert!(
        line.contains("Forwarding from"),
        "port-forward said {line:?}"
    );
    // kubectl says a line per connection: keep reading, or it dies of a closed pipe.
    std::thread::spawn(move || std::io::copy(&mut out, &mut std::io::sink()));
    let mut got = String::new();
    {
        use std::io::{Read as _, Write as _};
        let mut conn = std::net::TcpStream::connect(("127.0.0.1", local)).unwrap();
        conn.set_read_timeout(Some(Duration::from_secs(20)))
            .unwrap();
        conn.write_all(b"GET / HTTP/1.0\r\nHost: x\r\n\r\n")
            .unwrap();
        let _ = conn.read_to_string(&mut got);
    }
    let _ = pf.kill();
    let _ = pf.wait();
    assert!(got.contains("hello from keep"), "{got}");
    drop(b);
}
