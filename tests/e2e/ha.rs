//! A highly available control plane, end to end: an etcd cluster of three members, two
//! servers (the second joined with `kedge server --server URL --token …`, knowing nothing
//! else), and three agents each given both servers, one of them behind the test's NAT. The
//! server holding most plugin leases is killed (`kill -9`) during a Deployment scale-up; the
//! other takes the plugins over within the lease time and the Deployment converges with
//! neither a duplicate nor a lost pod; the dead server's agents are on the survivor within
//! 10 s, their pods never restarted; a ReplicaSet controller swapped in before the kill is
//! what the survivor runs. Then one etcd member is stopped and writes go on; the
//! dead server is started again and rejoins; `kubectl logs` and `exec` through either server
//! reach a pod on every node, before and after, and the `kubernetes` Service lists the live
//! servers.
//!
//! Needs root, `ip`, `iptables` (the NAT) and etcd; skips with a message otherwise.

use std::path::Path;
use std::process::Command;
use std::time::{Duration, Instant};

use crate::harness::{
    Cluster, Proc, free_port, holders, kubectl_at, kubectl_output, spawn_server, start_etcd_cluster,
};
use crate::nat::{NatNet, missing_prerequisite};
use crate::plugins::{digest, plugin_yaml, rebuilt};

/// Kubernetes' leader-election timings (15 s / 10 s / 2 s) scaled down.
const TIMINGS: [&str; 6] = [
    "--leader-elect-lease-duration",
    "6s",
    "--leader-elect-renew-deadline",
    "4s",
    "--leader-elect-retry-period",
    "1s",
];
const LEASE: Duration = Duration::from_secs(6);

/// kubectl that must succeed: its stdout, or a panic with what it said.
fn kubectl_must(kubeconfig: &Path, args: &[&str]) -> String {
    let out = kubectl_output(kubeconfig, args).unwrap();
    assert!(
        out.status.success(),
        "kubectl {args:?}: {}",
        String::from_utf8_lossy(&out.stderr)
    );
    String::from_utf8_lossy(&out.stdout).into_owned()
}

fn jsonpath(kubeconfig: &Path, what: &[&str], path: &str) -> Option<String> {
    let mut args = what.to_vec();
    let expr = format!("jsonpath={path}");
    args.extend_from_slice(&["-o", &expr]);
    kubectl_at(kubeconfig, &args).filter(|s| !s.is_empty())
}

fn tunnel_server(kubeconfig: &Path, node: &str) -> Option<String> {
    jsonpath(
        kubeconfig,
        &["get", "node", node],
        r#"{.metadata.annotations.kedge\.io/tunnel-server}"#,
    )
}

/// The names of the Deployment's pods, sorted.
fn web_pods(kubeconfig: &Path) -> Option<Vec<String>> {
    let out = kubectl_at(kubeconfig, &["get", "pods", "-l", "app=web", "-o", "name"])?;
    let mut v: Vec<String> = out
        .lines()
        .filter(|l| !l.is_empty())
        .map(String::from)
        .collect();
    v.sort();
    Some(v)
}

/// Every node's pod's greeting, through the server of `kubeconfig`.
fn logs_reach_every_node(c: &Cluster, kubeconfig: &Path, nodes: &[&str], through: &str) {
    for n in nodes {
        let pod = format!("on-{n}");
        let logs = c.wait(&format!("{pod}'s logs through {through}"), || {
            kubectl_at(kubeconfig, &["logs", &pod, "--tail=50"])
                .filter(|l| l.contains(&format!("hello from {pod}")))
        });
        assert!(!logs.is_empty());
    }
}

/// The ports the `kubernetes` Service's Endpoints list (one subset per port: the two
/// servers listen on different ports of one address), sorted.
fn api_endpoint_ports(kubeconfig: &Path) -> Option<Vec<String>> {
    let out = jsonpath(
        kubeconfig,
        &["get", "endpoints", "kubernetes"],
        r#"{range .subsets[*]}{.ports[0].port}{"\n"}{end}"#,
    )?;
    let mut v: Vec<String> = out.lines().map(String::from).collect();
    v.sort();
    Some(v)
}

/// `kubectl exec` of every node's pod through the server of `kubeconfig` (forwarded to the
/// replica holding the node's tunnel when that is another), and `kubectl attach`: the pods
/// print nothing for 30 s, so an attach that reached its container stays open streaming,
/// where one that did not get through ends at once with an error.
fn exec_reaches_every_node(kubeconfig: &Path, nodes: &[&str]) {
    for n in nodes {
        let pod = format!("on-{n}");
        // A Wasm container's exec runs its program again: named as the container.
        let out = kubectl_must(kubeconfig, &["exec", &pod, "--", &pod, "--once"]);
        assert!(out.starts_with(&format!("hello from {pod}")), "{out}");
        let mut attach = Command::new("kubectl")
            .arg("--kubeconfig")
            .arg(kubeconfig)
            .args(["attach", &pod])
            .stdin(std::process::Stdio::null())
            .stdout(std::process::Stdio::null())
            .stderr(std::process::Stdio::piped())
            .spawn()
            .unwrap();
        std::thread::sleep(Duration::from_secs(3));
        let ended = attach.try_wait().unwrap();
        let _ = attach.kill();
        let out = attach.wait_with_output().unwrap();
        assert!(
            ended.is_none(),
            "kubectl attach {pod} ended: {}",
            String::from_utf8_lossy(&out.stderr)
        );
    }
}

fn pod_started(kubeconfig: &Path, pod: &str) -> Option<String> {
    jsonpath(
        kubeconfig,
        &["get", "pod", pod],
        "{.status.containerStatuses[0].state.running.startedAt}",
    )
}

#[test]
fn three_etcd_members_two_servers_three_agents_survive_losing_a_server_and_a_member() {
    if let Some(why) = missing_prerequisite() {
        eprintln!("SKIPPED: {why}");
        return;
    }
    let Some(mut etcd) = start_etcd_cluster(3) else {
        return;
    };
    let net = NatNet::create();
    let host = net.host_ip();

    // alpha: the first server, on the etcd cluster.
    let mut alpha_flags = vec![
        "--datastore-endpoint",
        &etcd.endpoints,
        "--replica-name",
        "alpha",
    ];
    alpha_flags.extend_from_slice(&TIMINGS);
    let mut c = Cluster::start_on_with(&host, &alpha_flags);
    let a_config = c.kubeconfig.clone();
    let alpha_url = format!("https://{host}:{}", c.port);
    // Its token in K3s' full form: the CA's hash, then the secret.
    let token = std::fs::read_to_string(c.dir.path().join("server/server-token")).unwrap();
    let token = token.trim().to_string();
    assert!(
        token.starts_with("K10") && token.contains("::server:"),
        "{token}"
    );

    // beta joins through alpha knowing only its URL and the token.
    let b_data = c.dir.path().join("server-b");
    let b_port = free_port();
    let b_listen = format!("{host}:{b_port}");
    let beta_url = format!("https://{host}:{b_port}");
    let start_beta = |c: &Cluster, name: &str, through: &str| -> Proc {
        let mut args = vec![
            "--server",
            through,
            "--token",
            &token,
            "--replica-name",
            "beta",
        ];
        args.extend_from_slice(&TIMINGS);
        spawn_server(name, c.dir.path(), &b_data, &b_listen, &host, &args)
    };
    let mut beta = start_beta(&c, "server-b", &alpha_url);
    let b_config = b_data.join("admin.kubeconfig");
    c.wait("beta ready", || {
        (b_config.exists() && kubectl_at(&b_config, &["get", "--raw", "/readyz"]).is_some())
            .then_some(())
    });
    for f in ["pki/ca.crt", "pki/ca.key", "pki/sa.key"] {
        assert_eq!(
            std::fs::read(c.dir.path().join("server").join(f)).unwrap(),
            std::fs::read(b_data.join(f)).unwrap(),
            "{f}"
        );
    }

    // Three agents, each given both servers: two here, one behind the NAT.
    let servers = format!("{host}:{},{host}:{b_port}", c.port);
    let nodes = ["n1", "n2", "n3"];
    let join = c.token.clone();
    for (n, netns) in nodes.iter().zip([None, None, Some(net.sites[0].as_str())]) {
        c.start_agent_at(netns, &servers, n, &join, &[]);
    }
    c.wait("three nodes Ready", || {
        let ready = jsonpath(
            &a_config,
            &["get", "nodes"],
            r#"{range .items[*]}{.status.conditions[?(@.type=="Ready")].status}{"\n"}{end}"#,
        )?;
        (ready.lines().filter(|l| *l == "True").count() == 3).then_some(())
    });
    // A pod on each node, and its logs through either server.
    for n in nodes {
        let overrides = format!(r#"{{"spec":{{"nodeName":"{n}"}}}}"#);
        kubectl_at(
            &a_config,
            &[
                "run",
                &format!("on-{n}"),
                "--image=kedge.dev/samples/hello-wasm:v1",
                "--restart=Always",
                &format!("--overrides={overrides}"),
            ],
        )
        .expect("a pod on each node");
    }
    let started: Vec<String> = nodes
        .iter()
        .map(|n| {
            c.wait("the pods running", || {
                pod_started(&a_config, &format!("on-{n}"))
            })
        })
        .collect();
    logs_reach_every_node(&c, &a_config, &nodes, "alpha");
    logs_reach_every_node(&c, &b_config, &nodes, "beta");

    c.wait("the plugins spread over both servers", || {
        let h = holders(&a_config);
        let on = |r: &str| h.iter().filter(|(_, x)| x == r).count();
        (h.len() >= 10
            && on("alpha") >= 3
            && on("beta") >= 3
            && on("alpha") + on("beta") == h.len())
        .then_some(())
    });
    // In-cluster clients reach the API through the `kubernetes` Service: both servers.
    let mut both = vec![c.port.to_string(), b_port.to_string()];
    both.sort();
    c.wait("both servers behind the kubernetes Service", || {
        (api_endpoint_ports(&a_config)? == both).then_some(())
    });
    // Hot swap with two servers: a new ReplicaSet controller applied through beta is
    // compiled by both and run by its lease's holder; whoever takes the lease over later runs
    // it too (checked after the kill below).
    let files = tempfile::tempdir().unwrap();
    let v2 = rebuilt(kedge::server::default_plugins::REPLICASET, "ha-v2");
    let v2_file = files.path().join("replicaset-v2.wasm");
    std::fs::write(&v2_file, &v2).unwrap();
    let v2_digest = digest(&v2);
    let applied = Command::new("kubectl")
        .arg("--kubeconfig")
        .arg(&b_config)
        .args(["apply", "-f", "-"])
        .stdin(std::process::Stdio::piped())
        .stdout(std::process::Stdio::null())
        .spawn()
        .and_then(|mut k| {
            use std::io::Write as _;
            k.stdin
                .take()
                .unwrap()
                .write_all(plugin_yaml(&v2_file).as_bytes())?;
            k.wait()
        })
        .unwrap();
    assert!(applied.success());
    let swapped = |kubeconfig: &Path| {
        let digest = jsonpath(
            kubeconfig,
            &["get", "plugin", "replicaset"],
            "{.status.activeDigest}",
        )?;
        let reason = jsonpath(
            kubeconfig,
            &["get", "plugin", "replicaset"],
            r#"{.status.conditions[?(@.type=="Ready")].reason}"#,
        )?;
        (digest == v2_digest && reason == "Active").then_some(())
    };
    c.wait("the new ReplicaSet controller active", || {
        swapped(&a_config)
    });
    kubectl_at(
        &b_config,
        &[
            "create",
            "deployment",
            "web",
            "--image=kedge.dev/samples/hello-wasm:v1",
            "--replicas=2",
        ],
    )
    .expect("creating the deployment");
    c.wait("two web pods", || {
        (web_pods(&a_config)?.len() == 2).then_some(())
    });

    // Which node's tunnel is on which server, before the kill.
    let tunnels: Vec<(String, String)> = nodes
        .iter()
        .map(|n| {
            let s = c.wait("the node's tunnel recorded", || tunnel_server(&a_config, n));
            (n.to_string(), s)
        })
        .collect();

    // kill -9 of the server holding most plugins, during a scale-up.
    let h = holders(&a_config);
    let on_alpha = h.iter().filter(|(_, x)| x == "alpha").count();
    let dead = if on_alpha * 2 >= h.len() {
        "alpha"
    } else {
        "beta"
    };
    let (survivor, survivor_name, survivor_url) = if dead == "alpha" {
        c.server.crash();
        (b_config.clone(), "beta", beta_url.clone())
    } else {
        beta.crash();
        (a_config.clone(), "alpha", alpha_url.clone())
    };
    let killed = Instant::now();
    kubectl_must(&survivor, &["scale", "deployment", "web", "--replicas=8"]);

    let orphans: Vec<&str> = tunnels
        .iter()
        .filter(|(_, s)| s == dead)
        .map(|(n, _)| n.as_str())
        .collect();
    let mut agents_back = None;
    let mut takeover = None;
    c.wait("the survivor holding every plugin and every node", || {
        if agents_back.is_none()
            && orphans
                .iter()
                .all(|n| tunnel_server(&survivor, n).as_deref() == Some(survivor_name))
        {
            agents_back = Some(killed.elapsed());
        }
        if takeover.is_none() {
            let h = holders(&survivor);
            if !h.is_empty() && h.iter().all(|(_, x)| x == survivor_name) {
                takeover = Some(killed.elapsed());
            }
        }
        agents_back.zip(takeover)
    });
    let (agents_back, takeover) = (agents_back.unwrap(), takeover.unwrap());
    eprintln!(
        "HA: {dead} killed; plugins all on {survivor_name} after {takeover:?} (lease {LEASE:?}); \
         its {} node(s) {orphans:?} on {survivor_name} after {agents_back:?}",
        orphans.len()
    );
    // Leader election's bound: the lease, the retry period the others look at it with, and
    // the write taking it (client-go's own takeover is the same).
    assert!(takeover < LEASE + Duration::from_secs(6), "{takeover:?}");
    assert!(agents_back < Duration::from_secs(10), "{agents_back:?}");

    // The Deployment converges: eight pods, all ready, and eight it stays.
    c.wait("eight web pods ready", || {
        let ready = jsonpath(
            &survivor,
            &["get", "deployment", "web"],
            "{.status.readyReplicas}",
        )?;
        (ready == "8" && web_pods(&survivor)?.len() == 8).then_some(())
    });
    let settled = web_pods(&survivor).unwrap();
    for _ in 0..6 {
        std::thread::sleep(Duration::from_millis(500));
        assert_eq!(web_pods(&survivor).as_ref(), Some(&settled));
    }
    // The swapped controller is what the survivor runs (it scaled the Deployment).
    c.wait("the new ReplicaSet controller on the survivor", || {
        swapped(&survivor)
    });
    assert_eq!(
        jsonpath(
            &survivor,
            &["get", "plugin", "replicaset"],
            "{.status.holder}"
        )
        .as_deref(),
        Some(survivor_name)
    );
    // No pod restarted by the failover: the same container starts.
    for (n, before) in nodes.iter().zip(&started) {
        assert_eq!(
            pod_started(&survivor, &format!("on-{n}")).as_ref(),
            Some(before),
            "on-{n}"
        );
    }

    // The dead server is out of the kubernetes Service once its identity lease ran out.
    let survivor_port = if dead == "alpha" { b_port } else { c.port }.to_string();
    c.wait("the dead server out of the kubernetes Service", || {
        (api_endpoint_ports(&survivor)? == [survivor_port.clone()]).then_some(())
    });

    // One etcd member stopped: writes go on (the store's client moves to another member).
    etcd.members[0].child.kill().unwrap();
    let _ = etcd.members[0].child.wait();
    let stopped = Instant::now();
    for i in 0..5 {
        // Each within a few seconds (a create whose answer was lost but that was committed
        // answers AlreadyExists when tried again).
        let name = format!("after-member-{i}");
        crate::harness::wait_for(
            "a write with an etcd member down",
            Duration::from_secs(15),
            || {
                let out = Command::new("kubectl")
                    .arg("--kubeconfig")
                    .arg(&survivor)
                    .args(["--request-timeout=5s", "create", "configmap", &name])
                    .output()
                    .ok()?;
                (out.status.success()
                    || String::from_utf8_lossy(&out.stderr).contains("AlreadyExists"))
                .then_some(())
            },
        );
    }
    eprintln!(
        "HA: 5 writes done {:?} after an etcd member stopped",
        stopped.elapsed()
    );
    kubectl_must(&survivor, &["scale", "deployment", "web", "--replicas=3"]);
    c.wait("three web pods", || {
        (web_pods(&survivor)?.len() == 3).then_some(())
    });

    // The dead server back (beta through alpha's URL again or its saved datastore; alpha with
    // its own flags): it rejoins, gets its share of plugins, and reaches every node.
    let dead_config = if dead == "alpha" {
        let mut flags = vec![
            "--datastore-endpoint",
            &etcd.endpoints,
            "--replica-name",
            "alpha",
        ];
        flags.extend_from_slice(&TIMINGS);
        c.restart_server(&flags);
        a_config.clone()
    } else {
        beta = start_beta(&c, "server-b-again", &survivor_url);
        c.wait("beta back", || {
            kubectl_at(&b_config, &["get", "--raw", "/readyz"]).map(|_| ())
        });
        b_config.clone()
    };
    c.wait("the plugins spread again", || {
        let h = holders(&dead_config);
        (h.iter().filter(|(_, x)| x == dead).count() >= 3).then_some(())
    });
    logs_reach_every_node(&c, &dead_config, &nodes, dead);
    logs_reach_every_node(&c, &survivor, &nodes, survivor_name);
    // Every node's tunnel is on the survivor now: exec and attach through the other are
    // forwarded.
    exec_reaches_every_node(&dead_config, &nodes);
    exec_reaches_every_node(&survivor, &nodes);
    c.wait("both servers behind the kubernetes Service again", || {
        (api_endpoint_ports(&survivor)? == both).then_some(())
    });
    assert_eq!(web_pods(&dead_config).map(|p| p.len()), Some(3));

    // beta started again through a `--server` that answers nothing starts from the
    // datastore it saved when it joined.
    beta.kill();
    let nowhere = format!("https://{host}:{}", free_port());
    beta = start_beta(&c, "server-b-saved", &nowhere);
    c.wait("beta back from its saved datastore", || {
        kubectl_at(&b_config, &["get", "--raw", "/readyz"]).map(|_| ())
    });
    assert!(
        beta.log_text()
            .contains("using the datastore this replica joined before"),
        "{}",
        beta.log_text()
    );
    drop(beta);
}
