//! API versions Kubernetes has retired but older docs still show (issue 21, item 9): the
//! Kubernetes 1.20 docs' batch/v1beta1 CronJob applies with the real kubectl (client-side
//! validation and apply unchanged), kubectl prints kube-apiserver's deprecation warning, and
//! the one stored object reads back in either version. No agent: the API is what is tested.

use crate::harness::Cluster;

/// The CronJob example of the Kubernetes 1.20 documentation, with kedge's sample image in
/// place of busybox so that it would run on any machine.
const HELLO_V1BETA1: &str = r#"apiVersion: batch/v1beta1
kind: CronJob
metadata:
  name: hello
spec:
  schedule: "*/1 * * * *"
  jobTemplate:
    spec:
      template:
        spec:
          containers:
          - name: hello
            image: kedge.dev/samples/hello-wasm:v1
            imagePullPolicy: IfNotPresent
            args:
            - /bin/sh
            - -c
            - date; echo Hello from the Kubernetes cluster
          restartPolicy: OnFailure
"#;

const WARNING: &str = "Warning: batch/v1beta1 CronJob is deprecated in v1.21+, unavailable in v1.25+; use batch/v1 CronJob";

fn yaml_field<'a>(yaml: &'a str, key: &str) -> Option<&'a str> {
    yaml.lines()
        .find_map(|l| l.strip_prefix(key)?.strip_prefix(": "))
}

#[test]
fn batch_v1beta1_cronjob_applies_with_the_deprecation_warning() {
    let c = Cluster::start();
    let r = c.kubectl_stdin(&["apply", "-f", "-"], Some(HELLO_V1BETA1));
    assert!(r.ok, "apply failed:\n{}", r.stderr);
    assert_eq!(r.stdout.trim(), "cronjob.batch/hello created");
    assert!(r.stderr.contains(WARNING), "stderr: {}", r.stderr);

    // Applying again is a client-side apply patch through the retired version.
    let changed = HELLO_V1BETA1.replace("*/1 * * * *", "*/5 * * * *");
    let r = c.kubectl_stdin(&["apply", "-f", "-"], Some(&changed));
    assert!(r.ok, "re-apply failed:\n{}", r.stderr);
    assert_eq!(r.stdout.trim(), "cronjob.batch/hello configured");
    assert!(r.stderr.contains(WARNING), "stderr: {}", r.stderr);

    // One object, two versions.
    let beta = c.kubectl(&["get", "cronjobs.v1beta1.batch", "hello", "-o", "yaml"]);
    assert!(beta.ok, "{}", beta.stderr);
    assert_eq!(
        yaml_field(&beta.stdout, "apiVersion"),
        Some("batch/v1beta1")
    );
    assert!(beta.stdout.contains("*/5 * * * *"), "{}", beta.stdout);
    assert!(beta.stderr.contains(WARNING), "stderr: {}", beta.stderr);
    let v1 = c.kubectl(&["get", "cronjob", "hello", "-o", "yaml"]);
    assert!(v1.ok, "{}", v1.stderr);
    assert_eq!(yaml_field(&v1.stdout, "apiVersion"), Some("batch/v1"));
    assert!(!v1.stderr.contains("deprecated"), "stderr: {}", v1.stderr);

    // The table through the retired version, and `get all` listing the CronJob once.
    let table = c.k(&["get", "cronjobs.v1beta1.batch"]);
    assert!(table.lines().any(|l| l.starts_with("hello ")), "{table}");
    let all = c.k(&["get", "all"]);
    assert_eq!(
        all.lines()
            .filter(|l| l.starts_with("cronjob.batch/hello "))
            .count(),
        1,
        "{all}"
    );

    // Server-side apply (taking the schedule over from client-side apply) and delete
    // through the retired version too.
    let ssa = HELLO_V1BETA1.replace("*/1 * * * *", "@hourly");
    let r = c.kubectl_stdin(
        &["apply", "--server-side", "--force-conflicts", "-f", "-"],
        Some(&ssa),
    );
    assert!(r.ok, "server-side apply failed:\n{}", r.stderr);
    assert_eq!(
        c.k(&["get", "cronjob", "hello", "-o", "jsonpath={.spec.schedule}"]),
        "@hourly"
    );
    let r = c.kubectl(&["delete", "cronjobs.v1beta1.batch", "hello"]);
    assert!(r.ok, "delete failed:\n{}", r.stderr);
    assert!(r.stderr.contains(WARNING), "stderr: {}", r.stderr);
    let gone = c.kubectl(&["get", "cronjob", "hello"]);
    assert!(
        !gone.ok && gone.stderr.contains("NotFound"),
        "{}",
        gone.stderr
    );
}
