//! Live updates of ConfigMap volumes: a ConfigMap changed while its pod runs reaches the files
//! of the volume the container mounts (a directory), keys removed go, and a file mounted by
//! `subPath` keeps its content — as in Kubernetes. The agent refreshes every 2 s here
//! (`--object-refresh-seconds`) instead of its default minute. The same holds for a Wasm
//! container, which sees volumes as preopened directories: `kubectl exec` starts its program
//! again (the sample's `--cat PATH` prints a file), reading the volume as it is now.

use std::time::Duration;

use crate::harness::{Busybox, Cluster, containers_unavailable, wait_for};

fn pod(image: &str) -> String {
    format!(
        r#"apiVersion: v1
kind: Pod
metadata: {{name: reader}}
spec:
  terminationGracePeriodSeconds: 1
  containers:
  - name: main
    image: "{image}"
    command: [sh, -c, "trap 'exit 0' TERM; while true; do sleep 1; done"]
    volumeMounts:
    - {{name: cfg, mountPath: /etc/cfg}}
    - {{name: cfg, mountPath: /etc/pinned, subPath: key}}
  volumes:
  - name: cfg
    configMap: {{name: live}}
"#
    )
}

#[test]
fn a_configmap_update_reaches_a_running_pods_volume_but_not_its_sub_path() {
    if let Some(why) = containers_unavailable() {
        eprintln!("volumes: SKIPPING (a busybox container reads the files): {why}");
        return;
    }
    let mut c = Cluster::start();
    let b = Busybox::start(c.dir.path());
    let token = c.token.clone();
    let registries = b.registries_yaml.display().to_string();
    c.start_agent_with(
        "vol-node",
        &token,
        &[
            "--registries-config",
            &registries,
            "--object-refresh-seconds",
            "2",
        ],
    );
    c.k(&[
        "create",
        "configmap",
        "live",
        "--from-literal=key=one",
        "--from-literal=extra=soon gone",
    ]);
    let out = c.kubectl_stdin(&["apply", "-f", "-"], Some(&pod(&b.image)));
    assert!(out.ok, "{}", out.stderr);
    c.wait("the reader Running", || {
        let p = c.pods("");
        p.iter()
            .any(|p| p.name == "reader" && p.phase == "Running")
            .then_some(())
    });
    let cat = |path: &str| {
        let out = c.kubectl(&["exec", "reader", "--", "cat", path]);
        out.ok.then_some(out.stdout)
    };
    c.wait("the files readable", || {
        (cat("/etc/cfg/key").as_deref() == Some("one")).then_some(())
    });
    assert_eq!(cat("/etc/pinned").as_deref(), Some("one"));
    assert_eq!(cat("/etc/cfg/extra").as_deref(), Some("soon gone"));

    // The ConfigMap changes: one key updated, one removed.
    c.k(&[
        "patch",
        "configmap",
        "live",
        "--type=merge",
        "-p",
        r#"{"data": {"key": "two", "extra": null}}"#,
    ]);
    wait_for(
        "the new value in the running pod's volume",
        Duration::from_secs(90),
        || (cat("/etc/cfg/key").as_deref() == Some("two")).then_some(()),
    );
    let ls = c.k(&["exec", "reader", "--", "ls", "/etc/cfg"]);
    assert_eq!(ls.split_whitespace().collect::<Vec<_>>(), ["key"], "{ls}");
    // The subPath mount is bound to the file of its time.
    assert_eq!(cat("/etc/pinned").as_deref(), Some("one"));
    let log = c.agent("vol-node").log_text();
    assert!(log.contains("volume updated"), "{log}");
}

/// A Wasm pod: the ConfigMap whole at /etc/cfg, and a directory of it by `subPath` at
/// /etc/pinned (a preopen is a directory, so the item lands in one).
const WASM_POD: &str = r#"apiVersion: v1
kind: Pod
metadata: {name: wasm-reader}
spec:
  terminationGracePeriodSeconds: 1
  containers:
  - name: hello
    image: "kedge.dev/samples/hello-wasm:v1"
    volumeMounts:
    - {name: cfg, mountPath: /etc/cfg}
    - {name: items, mountPath: /etc/pinned, subPath: dir}
  volumes:
  - name: cfg
    configMap: {name: live}
  - name: items
    configMap: {name: live, items: [{key: key, path: dir/key}]}
"#;

#[test]
fn a_configmap_update_reaches_a_wasm_pods_volume_but_not_its_sub_path() {
    // No runc needed: the agent runs the sample Wasm image it carries.
    let mut c = Cluster::start();
    let token = c.token.clone();
    c.start_agent_with("wasm-vol-node", &token, &["--object-refresh-seconds", "2"]);
    c.k(&["create", "configmap", "live", "--from-literal=key=one"]);
    let out = c.kubectl_stdin(&["apply", "-f", "-"], Some(WASM_POD));
    assert!(out.ok, "{}", out.stderr);
    c.wait("the Wasm reader Running", || {
        c.pods("")
            .iter()
            .any(|p| p.name == "wasm-reader" && p.phase == "Running")
            .then_some(())
    });
    // Exec runs the container's program again; its argv begins with the container's argv[0].
    let cat = |path: &str| {
        let out = c.kubectl(&["exec", "wasm-reader", "--", "hello", "--cat", path]);
        out.ok.then_some(out.stdout)
    };
    c.wait("the files readable", || {
        (cat("/etc/cfg/key").as_deref() == Some("one")).then_some(())
    });
    assert_eq!(cat("/etc/pinned/key").as_deref(), Some("one"));

    c.k(&[
        "patch",
        "configmap",
        "live",
        "--type=merge",
        "-p",
        r#"{"data": {"key": "two"}}"#,
    ]);
    wait_for(
        "the new value in the running Wasm pod's volume",
        Duration::from_secs(90),
        || (cat("/etc/cfg/key").as_deref() == Some("two")).then_some(()),
    );
    // The subPath directory is the one of the container's start, still there for each exec
    // to preopen again after the refresh replaced it in the volume.
    assert_eq!(cat("/etc/pinned/key").as_deref(), Some("one"));
    let log = c.agent("wasm-vol-node").log_text();
    assert!(log.contains("volume updated"), "{log}");
}
