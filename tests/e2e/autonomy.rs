//! Offline autonomy: an agent restarted while the server is down runs its pods again from its
//! own record — with the ConfigMaps and Secrets they use from its local copies, restarting a
//! crashing one per its restartPolicy — and reconciles with the API when the server is back
//! (a pod deleted meanwhile is stopped, the others carry on with their status re-sent, the
//! events of the offline period are sent).

use std::os::unix::fs::PermissionsExt as _;
use std::path::{Path, PathBuf};
use std::time::Duration;

use crate::harness::{Busybox, Cluster, containers_unavailable, wait_for};

/// Every CRI log file of the pod `name` on the node whose data dir is `node_dir`.
fn log_files(node_dir: &Path, name: &str) -> Vec<PathBuf> {
    fn walk(d: &Path, out: &mut Vec<PathBuf>) {
        for e in std::fs::read_dir(d).into_iter().flatten().flatten() {
            let p = e.path();
            if p.is_dir() {
                walk(&p, out);
            } else if p.extension().is_some_and(|x| x == "log") {
                out.push(p);
            }
        }
    }
    let mut out = Vec::new();
    for e in std::fs::read_dir(node_dir.join("pods"))
        .into_iter()
        .flatten()
        .flatten()
    {
        if e.file_name()
            .to_string_lossy()
            .contains(&format!("_{name}_"))
        {
            walk(&e.path(), &mut out);
        }
    }
    out
}

/// Whether the pod wrote a log line stamped after `since` (CRI lines start with RFC 3339).
fn logged_since(node_dir: &Path, name: &str, since: chrono::DateTime<chrono::Utc>) -> bool {
    logged_since_containing(node_dir, name, since, "")
}

/// Whether the pod wrote a log line containing `needle` stamped after `since`.
fn logged_since_containing(
    node_dir: &Path,
    name: &str,
    since: chrono::DateTime<chrono::Utc>,
    needle: &str,
) -> bool {
    count_logged_since(node_dir, name, since, needle) > 0
}

/// How many log lines of the pod (all its runs) contain `needle` and are stamped after
/// `since`.
fn count_logged_since(
    node_dir: &Path,
    name: &str,
    since: chrono::DateTime<chrono::Utc>,
    needle: &str,
) -> usize {
    log_files(node_dir, name)
        .iter()
        .map(|f| {
            std::fs::read_to_string(f)
                .unwrap_or_default()
                .lines()
                .filter(|l| {
                    l.contains(needle)
                        && l.split_whitespace()
                            .next()
                            .and_then(|t| chrono::DateTime::parse_from_rfc3339(t).ok())
                            .is_some_and(|t| t > since)
                })
                .count()
        })
        .sum()
}

/// The agent's local copies of Secrets and ConfigMaps (`kind/ns_name.json`), and their modes.
fn object_copies(node_dir: &Path) -> Vec<(String, u32)> {
    let mut out = Vec::new();
    for kind in ["configmaps", "secrets"] {
        for e in std::fs::read_dir(node_dir.join("object-cache").join(kind))
            .into_iter()
            .flatten()
            .flatten()
        {
            let mode = e.metadata().unwrap().permissions().mode() & 0o777;
            out.push((format!("{kind}/{}", e.file_name().to_string_lossy()), mode));
        }
    }
    out.sort();
    out
}

const PODS: &str = r#"apiVersion: v1
kind: Pod
metadata: {name: keep}
spec:
  containers:
  - {name: hello, image: "kedge.dev/samples/hello-wasm:v1"}
---
apiVersion: v1
kind: Pod
metadata: {name: doomed}
spec:
  containers:
  - {name: hello, image: "kedge.dev/samples/hello-wasm:v1"}
"#;

/// A Wasm pod that exits (code from a Secret) after a few seconds (from a ConfigMap), again
/// and again under `restartPolicy: Always`: it can only start with both objects at hand.
const CRASHER: &str = r#"apiVersion: v1
kind: Pod
metadata: {name: crasher}
spec:
  containers:
  - name: hello
    image: "kedge.dev/samples/hello-wasm:v1"
    env:
    - name: HELLO_EXIT_AFTER_SECS
      valueFrom: {configMapKeyRef: {name: app-config, key: exit-after}}
    - name: HELLO_EXIT_CODE
      valueFrom: {secretKeyRef: {name: app-secret, key: exit-code}}
"#;

/// A container that prints what it got from the ConfigMap and the Secret: env (`valueFrom`,
/// `envFrom`) and files (a `secret` volume, a `configMap` volume and one key of it by
/// `subPath`).
fn configured(image: &str) -> String {
    format!(
        r#"apiVersion: v1
kind: Pod
metadata: {{name: configured}}
spec:
  terminationGracePeriodSeconds: 1
  containers:
  - name: main
    image: "{image}"
    imagePullPolicy: Always
    command:
    - sh
    - -c
    - >-
      echo "greeting=$GREETING token=$S_token file=$(cat /etc/secret/token)
      conf=$(cat /etc/app/app.conf) one=$(cat /etc/one.conf)";
      trap 'exit 0' TERM; while true; do sleep 1; done
    env:
    - name: GREETING
      valueFrom: {{configMapKeyRef: {{name: app-config, key: greeting}}}}
    envFrom:
    - secretRef: {{name: app-secret}}
      prefix: S_
    volumeMounts:
    - {{name: secret, mountPath: /etc/secret}}
    - {{name: config, mountPath: /etc/app}}
    - {{name: config, mountPath: /etc/one.conf, subPath: app.conf}}
  volumes:
  - name: secret
    secret: {{secretName: app-secret}}
  - name: config
    configMap: {{name: app-config}}
"#
    )
}

/// What the crasher prints as it exits (the code from the Secret).
const CRASHED: &str = "crasher exiting with code 3";

const CONFIGURED_SAYS: &str =
    "greeting=hello offline token=s3cr3t-token file=s3cr3t-token conf=mode=edge one=mode=edge";

#[test]
fn an_agent_restarted_while_the_server_is_down_runs_its_pods_from_local_state() {
    let mut c = Cluster::start();
    let token = c.token.clone();
    let node = "auto-node";
    let node_dir = c.dir.path().join(node);
    let start = chrono::Utc::now();
    // The container part (files from a Secret and a ConfigMap) needs runc; the rest does not.
    let mut busybox = match containers_unavailable() {
        None => Some(Busybox::start(c.dir.path())),
        Some(why) => {
            eprintln!(
                "autonomy: SKIPPING the container pod (volumes from a Secret/ConfigMap): {why}"
            );
            None
        }
    };
    let agent_args: Vec<String> = busybox
        .iter()
        .flat_map(|b| {
            [
                "--registries-config".to_string(),
                b.registries_yaml.display().to_string(),
            ]
        })
        .collect();
    let agent_args: Vec<&str> = agent_args.iter().map(String::as_str).collect();
    c.start_agent_with(node, &token, &agent_args);
    for create in [
        &[
            "create",
            "configmap",
            "app-config",
            "--from-literal=greeting=hello offline",
            "--from-literal=exit-after=3",
            "--from-literal=app.conf=mode=edge",
        ][..],
        &[
            "create",
            "secret",
            "generic",
            "app-secret",
            "--from-literal=token=s3cr3t-token",
            "--from-literal=exit-code=3",
        ],
        // Nobody uses this one: the node never keeps it.
        &[
            "create",
            "secret",
            "generic",
            "unused",
            "--from-literal=a=b",
        ],
    ] {
        c.k(create);
    }
    let mut manifests = format!("{PODS}---\n{CRASHER}");
    if let Some(b) = &busybox {
        manifests.push_str("---\n");
        manifests.push_str(&configured(&b.image));
    }
    let out = c.kubectl_stdin(&["apply", "-f", "-"], Some(&manifests));
    assert!(out.ok, "{}", out.stderr);
    let expected = if busybox.is_some() { 3 } else { 2 };
    c.wait("the pods Running, the crasher exited once", || {
        let pods = c.pods("");
        let running = pods
            .iter()
            .filter(|p| p.phase == "Running" && p.name != "crasher")
            .count();
        let crashed = count_logged_since(&node_dir, "crasher", start, CRASHED) > 0;
        (running == expected && crashed).then_some(())
    });
    if busybox.is_some() {
        let logs = c.k(&["logs", "configured"]);
        assert!(logs.contains(CONFIGURED_SAYS), "{logs}");
    }
    let uid = c.k(&["get", "pod", "keep", "-o", "jsonpath={.metadata.uid}"]);
    // What the pods use is kept, privately; what no pod uses is not.
    let copies = object_copies(&node_dir);
    assert_eq!(
        copies,
        [
            ("configmaps/default_app-config.json".to_string(), 0o600),
            ("secrets/default_app-secret.json".to_string(), 0o600),
        ],
        "the node's copies"
    );
    // The Secret's copy is sealed with the node's cache key: neither its value nor the value's
    // base64 is on the node's disk there (the restart below runs the pods from it).
    let sealed =
        std::fs::read(node_dir.join("object-cache/secrets/default_app-secret.json")).unwrap();
    let sealed = String::from_utf8_lossy(&sealed);
    assert!(sealed.starts_with("kedge:enc:aesgcm:v1:"), "{sealed}");
    for plain in ["s3cr3t-token", "czNjcjN0LXRva2Vu"] {
        assert!(!sealed.contains(plain), "{plain} in the node's copy");
    }

    // The crasher's restart count as the API has it before the agent goes away.
    let restart_count = |c: &Cluster| -> Option<u32> {
        c.kubectl(&[
            "get",
            "pod",
            "crasher",
            "-o",
            "jsonpath={.status.containerStatuses[0].restartCount}",
        ])
        .stdout
        .trim()
        .parse()
        .ok()
    };
    let restarts_before = c.wait("the crasher restarted once", || {
        restart_count(&c).filter(|n| *n >= 1)
    });

    // Server down, then the agent restarted: the pods run again from the local record, with
    // their ConfigMap and Secret from the local copies (and, the registry gone too, the image
    // from the node's store despite `imagePullPolicy: Always`).
    c.server.kill();
    if let Some(b) = &mut busybox {
        b.registry.stop();
    }
    c.agent(node).kill();
    let restarted = chrono::Utc::now();
    std::thread::sleep(Duration::from_millis(1100));
    c.agents.retain(|a| a.name != node);
    c.start_agent_with(node, &token, &agent_args);
    wait_for(
        "the pods running again without the server",
        Duration::from_secs(60),
        || {
            (logged_since(&node_dir, "keep", restarted)
                && logged_since(&node_dir, "doomed", restarted)
                && logged_since(&node_dir, "crasher", restarted)
                && (busybox.is_none()
                    || logged_since_containing(
                        &node_dir,
                        "configured",
                        restarted,
                        CONFIGURED_SAYS,
                    )))
            .then_some(())
        },
    );
    let log = c.agent(node).log_text();
    assert!(log.contains("starting pod from the local record"), "{log}");
    if busybox.is_some() {
        assert!(
            log.contains("registry unreachable: using the image on the node"),
            "{log}"
        );
    }
    // The crasher exits (after the ConfigMap's 3 s, with the Secret's code 3) and is started
    // again per its restartPolicy, all without the server.
    wait_for(
        "the crasher restarted after a crash, offline",
        Duration::from_secs(90),
        || (count_logged_since(&node_dir, "crasher", restarted, CRASHED) >= 2).then_some(()),
    );
    assert!(
        c.agent(node)
            .log_text()
            .contains("server unreachable: using the local copy"),
        "the pods' objects must have come from the local copies"
    );

    // Server back: the agent reconnects, the pod is the same one, and Running.
    let back = chrono::Utc::now();
    c.restart_server(&[]);
    c.wait("keep Running again, same uid", || {
        let out = c.kubectl(&[
            "get",
            "pod",
            "keep",
            "-o",
            "jsonpath={.metadata.uid} {.status.phase}",
        ]);
        (out.ok && out.stdout == format!("{uid} Running")).then_some(())
    });
    // Regression (hardening issue, finding 6): the restart count (and with it the back-off)
    // went on from where the agent left it, not from zero: at least one more for each
    // crash logged since the agent's restart.
    c.wait(
        "the crasher's restart count kept across the agent's restart",
        || {
            let crashes = count_logged_since(&node_dir, "crasher", restarted, CRASHED) as u32;
            let now = restart_count(&c)?;
            (now >= restarts_before + crashes).then_some(())
        },
    );
    // The agent redials with back-off; once it is back, logs come through the tunnel.
    c.wait("kubectl logs through the tunnel again", || {
        let out = c.kubectl(&["logs", "keep"]);
        (out.ok && !out.stdout.is_empty()).then_some(())
    });

    // What happened on the node meanwhile is told too: the events recorded while the server
    // was down (the crasher started again, offline) are sent once it is back, with their own
    // times.
    c.wait("an Event of the offline period", || {
        let out = c.kubectl(&["get", "events", "-o", "json"]);
        let list: serde_json::Value = serde_json::from_str(&out.stdout).ok()?;
        list["items"]
            .as_array()?
            .iter()
            .any(|e| {
                e["involvedObject"]["name"] == "crasher"
                    && e["reason"] == "Started"
                    && e["firstTimestamp"]
                        .as_str()
                        .and_then(|t| chrono::DateTime::parse_from_rfc3339(t).ok())
                        .is_some_and(|t| t.timestamp() >= restarted.timestamp() && t < back)
            })
            .then_some(())
    });
    assert!(
        c.agent(node)
            .log_text()
            .contains("sent the events recorded while the server was unreachable")
    );

    // A pod deleted while its agent is away is stopped when the agent comes back, even if
    // the agent first started it from its record.
    c.agent(node).kill();
    let out = c.kubectl(&["delete", "pod", "doomed", "--wait=false"]);
    assert!(out.ok, "{}", out.stderr);
    c.server.kill();
    c.agents.retain(|a| a.name != node);
    c.start_agent(node, &token);
    std::thread::sleep(Duration::from_secs(2));
    c.restart_server(&[]);
    c.wait("doomed gone, keep Running", || {
        let gone = !c.kubectl(&["get", "pod", "doomed"]).ok;
        let keep = c.k(&["get", "pod", "keep", "-o", "jsonpath={.status.phase}"]);
        (gone && keep == "Running").then_some(())
    });
    let records = std::fs::read_dir(node_dir.join("pod-cache"))
        .unwrap()
        .count();
    assert_eq!(records, expected, "doomed is no longer recorded");

    // The objects' copies go with the last pod that uses them.
    c.k(&["delete", "pod", "crasher", "--wait=false"]);
    c.wait("the ConfigMap's copy kept for the configured pod", || {
        (object_copies(&node_dir).len() == if busybox.is_some() { 2 } else { 0 }).then_some(())
    });
    if busybox.is_some() {
        c.k(&["delete", "pod", "configured", "--wait=false"]);
        c.wait("no copies left", || {
            object_copies(&node_dir).is_empty().then_some(())
        });
    }
}
