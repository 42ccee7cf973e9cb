//! `kedge snapshot save` from a running cluster on the embedded store, the store wiped, `kedge
//! snapshot restore`: the objects come back with their resourceVersions, what was written
//! after the snapshot is gone, and the node's running pods carry on, not restarted.

use crate::harness::*;

fn field(c: &Cluster, what: &[&str], path: &str) -> String {
    let mut args = vec!["get"];
    args.extend_from_slice(what);
    let jsonpath = format!("jsonpath={path}");
    args.extend_from_slice(&["-o", &jsonpath]);
    c.k(&args)
}

/// Name, UID and container start time of each pod of the Deployment, sorted by name.
fn pods_of(c: &Cluster) -> Vec<(String, String, String)> {
    let out = c.k(&[
        "get",
        "pods",
        "-l",
        "app=web",
        "-o",
        r#"jsonpath={range .items[*]}{.metadata.name} {.metadata.uid} {.status.containerStatuses[0].state.running.startedAt}{"\n"}{end}"#,
    ]);
    let mut pods: Vec<_> = out
        .lines()
        .filter_map(|l| {
            let mut f = l.split_whitespace();
            Some((
                f.next()?.to_string(),
                f.next()?.to_string(),
                f.next()?.to_string(),
            ))
        })
        .collect();
    pods.sort();
    pods
}

#[test]
fn a_restored_snapshot_brings_the_objects_back_and_the_pods_run_on() {
    if on_etcd() {
        // The embedded store's snapshot; etcd's is tested in etcd.rs.
        eprintln!("SKIPPED on etcd: this is the embedded store's snapshot and restore");
        return;
    }
    let mut c = Cluster::start_with(&["--secrets-encryption"]);
    let token = c.token.clone();
    c.start_agent("snap-node", &token);
    let kubeconfig = c.kubeconfig.to_str().unwrap().to_string();
    c.k(&[
        "create",
        "secret",
        "generic",
        "keys",
        "--from-literal=token=plain-s3cr3t-value",
    ]);
    c.k(&["create", "configmap", "before", "--from-literal=a=1"]);
    c.k(&[
        "create",
        "deployment",
        "web",
        "--image=kedge.dev/samples/hello-wasm:v1",
        "--replicas=2",
    ]);
    let running = c.wait("two running pods of the deployment", || {
        let pods = pods_of(&c);
        (pods.len() == 2 && pods.iter().all(|p| !p.2.is_empty())).then_some(pods)
    });
    let before_rv = field(&c, &["configmap", "before"], "{.metadata.resourceVersion}");
    let deploy_rv = field(&c, &["deployment", "web"], "{.metadata.resourceVersion}");

    let file = c.dir.path().join("cluster.snapshot");
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
    let said = String::from_utf8_lossy(&out.stdout);
    assert!(
        said.contains("embedded store") && said.contains("revision"),
        "{said}"
    );
    // Sealed at rest, sealed in the copy; and only its owner may read it.
    let bytes = std::fs::read(&file).unwrap();
    assert!(
        !bytes
            .windows(b"plain-s3cr3t-value".len())
            .any(|w| w == b"plain-s3cr3t-value"),
        "the snapshot holds the Secret in plaintext"
    );
    use std::os::unix::fs::PermissionsExt as _;
    assert_eq!(
        std::fs::metadata(&file).unwrap().permissions().mode() & 0o077,
        0
    );

    // Written after the snapshot: gone once it is restored.
    c.k(&["create", "configmap", "after", "--from-literal=b=2"]);
    c.k(&["delete", "configmap", "before"]);
    let later_rv = field(&c, &["configmap", "after"], "{.metadata.resourceVersion}");

    let data = c.dir.path().join("server");
    // Not into a running server's store.
    let busy = kedge(&[
        "snapshot",
        "restore",
        file.to_str().unwrap(),
        "--data-dir",
        data.to_str().unwrap(),
    ]);
    assert!(!busy.status.success());
    assert!(
        String::from_utf8_lossy(&busy.stderr).contains("in use"),
        "{}",
        String::from_utf8_lossy(&busy.stderr)
    );
    // A copy cut short is refused, and nothing is touched.
    let short = c.dir.path().join("short.snapshot");
    std::fs::write(&short, &bytes[..bytes.len() / 2]).unwrap();
    c.server.kill();
    let refused = kedge(&[
        "snapshot",
        "restore",
        short.to_str().unwrap(),
        "--data-dir",
        data.to_str().unwrap(),
    ]);
    assert!(!refused.status.success());
    assert!(data.join("state.redb").exists());

    // The store wiped, then restored.
    std::fs::remove_file(data.join("state.redb")).unwrap();
    let out = kedge(&[
        "snapshot",
        "restore",
        file.to_str().unwrap(),
        "--data-dir",
        data.to_str().unwrap(),
    ]);
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    assert!(
        String::from_utf8_lossy(&out.stdout).contains("restored"),
        "{}",
        String::from_utf8_lossy(&out.stdout)
    );
    c.restart_server(&["--secrets-encryption"]);

    assert_eq!(
        field(&c, &["configmap", "before"], "{.metadata.resourceVersion}"),
        before_rv
    );
    assert_eq!(
        field(&c, &["deployment", "web"], "{.metadata.resourceVersion}"),
        deploy_rv
    );
    assert!(!c.kubectl(&["get", "configmap", "after"]).ok);
    assert_eq!(
        field(&c, &["secret", "keys"], "{.data.token}"),
        "cGxhaW4tczNjcjN0LXZhbHVl"
    );
    // The same pods, never restarted: the node still runs them and reports them again.
    c.wait("the node Ready again", || {
        (field(
            &c,
            &["node", "snap-node"],
            r#"{.status.conditions[?(@.type=="Ready")].status}"#,
        ) == "True")
            .then_some(())
    });
    std::thread::sleep(std::time::Duration::from_secs(3));
    assert_eq!(pods_of(&c), running);
    // New writes go on past the bump; a watch from a revision seen before the restore
    // relists (410) rather than waiting for numbers that now mean other changes.
    c.k(&["label", "configmap", "before", "x=y"]);
    let new_rv: u64 = field(&c, &["configmap", "before"], "{.metadata.resourceVersion}")
        .parse()
        .unwrap();
    assert!(new_rv > 1_000_000_000, "{new_rv}");
    let old = c.kubectl(&[
        "get",
        "--raw",
        &format!("/api/v1/namespaces/default/configmaps?watch=1&resourceVersion={later_rv}&timeoutSeconds=2"),
    ]);
    assert!(
        old.stdout.contains("Expired") || old.stdout.contains("410"),
        "stdout: {}\nstderr: {}",
        old.stdout,
        old.stderr
    );
}
