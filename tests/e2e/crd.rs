//! CustomResourceDefinitions with the real kubectl and the official Python client (issue 20,
//! item 1): a definition with two versions, established at once; its objects validated (422
//! with field paths), defaulted and pruned by its schema, printed with its columns, explained,
//! edited, read through the deprecated version, garbage-collected by owner reference, and
//! deleted with their definition. No agent: the API and the controllers are what is tested.

use std::process::{Command, Stdio};

use crate::harness::{Cluster, repo, tail};

const CRD: &str = r#"
apiVersion: apiextensions.k8s.io/v1
kind: CustomResourceDefinition
metadata:
  name: widgets.e2e.kedge.dev
spec:
  group: e2e.kedge.dev
  scope: Namespaced
  names:
    plural: widgets
    singular: widget
    kind: Widget
    shortNames: [wd]
  versions:
  - name: v1
    served: true
    storage: true
    schema: &schema
      openAPIV3Schema:
        type: object
        description: A widget of the e2e tests.
        properties:
          spec:
            type: object
            required: [size]
            properties:
              size:
                type: integer
                minimum: 1
                description: How big the widget is, in whole units.
              color:
                type: string
                enum: [red, blue]
                default: red
          status:
            type: object
            properties:
              ready: {type: boolean}
    subresources: &subresources
      status: {}
    additionalPrinterColumns: &columns
    - {name: Size, type: integer, jsonPath: .spec.size}
    - {name: Color, type: string, jsonPath: .spec.color, priority: 1}
    - {name: Age, type: date, jsonPath: .metadata.creationTimestamp}
  - name: v1beta1
    served: true
    storage: false
    deprecated: true
    schema: *schema
    subresources: *subresources
    additionalPrinterColumns: *columns
"#;

fn widget(name: &str, size: i64) -> String {
    format!(
        "apiVersion: e2e.kedge.dev/v1\nkind: Widget\nmetadata:\n  name: {name}\nspec:\n  size: {size}\n"
    )
}

#[test]
fn custom_resources_with_kubectl() {
    let c = Cluster::start();
    let r = c.kubectl_stdin(&["apply", "-f", "-"], Some(CRD));
    assert!(r.ok, "{}", r.stderr);
    c.k(&[
        "wait",
        "--for",
        "condition=established",
        "--timeout=30s",
        "crd/widgets.e2e.kedge.dev",
    ]);
    let crds = c.k(&["get", "crd"]);
    assert!(
        crds.starts_with("NAME") && crds.contains("CREATED AT"),
        "{crds}"
    );
    assert!(crds.contains("widgets.e2e.kedge.dev"), "{crds}");

    // Objects: defaults filled, columns printed, short name and field selector work.
    let r = c.kubectl_stdin(&["apply", "-f", "-"], Some(&widget("w1", 3)));
    assert!(r.ok, "{}", r.stderr);
    assert_eq!(
        c.k(&["get", "wd", "w1", "-o", "jsonpath={.spec.color}"]),
        "red"
    );
    let table = c.k(&["get", "widgets"]);
    let header: Vec<&str> = table.lines().next().unwrap().split_whitespace().collect();
    assert_eq!(header, ["NAME", "SIZE", "AGE"], "{table}");
    assert!(table.lines().nth(1).unwrap().starts_with("w1"), "{table}");
    let wide = c.k(&["get", "widgets", "-o", "wide"]);
    assert!(wide.lines().next().unwrap().contains("COLOR"), "{wide}");
    assert!(wide.contains("red"), "{wide}");
    let by_name = c.k(&[
        "get",
        "widgets",
        "--field-selector",
        "metadata.name=w1",
        "-o",
        "name",
    ]);
    assert_eq!(by_name.trim(), "widget.e2e.kedge.dev/w1");

    // Validation: a 422 with the field path, and nothing stored.
    let r = c.kubectl_stdin(&["apply", "-f", "-"], Some(&widget("w0", 0)));
    assert!(!r.ok, "a widget of size 0 was accepted");
    assert!(
        r.stderr.contains(
            "spec.size: Invalid value: 0: spec.size in body should be greater than or equal to 1"
        ),
        "{}",
        r.stderr
    );
    assert!(!c.kubectl(&["get", "widget", "w0"]).ok);

    // explain reads the schema from OpenAPI v3.
    let explain = c.k(&["explain", "widgets.spec.size"]);
    assert!(explain.contains("How big the widget is"), "{explain}");
    assert!(explain.contains("integer"), "{explain}");

    // edit: the editor changes the size, the server stores it (generation moves on).
    let out = Command::new("kubectl")
        .arg("--kubeconfig")
        .arg(&c.kubeconfig)
        .args(["edit", "widget", "w1"])
        .env("KUBE_EDITOR", "sed -i s/size:\\ 3/size:\\ 4/")
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .output()
        .unwrap();
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    assert_eq!(
        c.k(&["get", "widget", "w1", "-o", "jsonpath={.spec.size}"]),
        "4"
    );
    assert_eq!(
        c.k(&[
            "get",
            "widget",
            "w1",
            "-o",
            "jsonpath={.metadata.generation}"
        ]),
        "2"
    );

    // The deprecated version: the same object, its apiVersion, and kube's warning.
    let r = c.kubectl(&[
        "get",
        "widgets.v1beta1.e2e.kedge.dev",
        "w1",
        "-o",
        "jsonpath={.apiVersion}",
    ]);
    assert!(r.ok, "{}", r.stderr);
    assert_eq!(r.stdout, "e2e.kedge.dev/v1beta1");
    assert!(
        r.stderr
            .contains("e2e.kedge.dev/v1beta1 Widget is deprecated"),
        "{}",
        r.stderr
    );

    // Owner references: a ConfigMap owned by a widget goes with it (the garbage collector).
    let uid = c.k(&["get", "widget", "w1", "-o", "jsonpath={.metadata.uid}"]);
    let owned = format!(
        "apiVersion: v1\nkind: ConfigMap\nmetadata:\n  name: owned\n  ownerReferences:\n  - apiVersion: e2e.kedge.dev/v1\n    kind: Widget\n    name: w1\n    uid: {uid}\ndata:\n  k: v\n"
    );
    let r = c.kubectl_stdin(&["apply", "-f", "-"], Some(&owned));
    assert!(r.ok, "{}", r.stderr);
    c.k(&["delete", "widget", "w1"]);
    c.wait("the owned ConfigMap to be collected", || {
        (!c.kubectl(&["get", "cm", "owned"]).ok).then_some(())
    });

    // Deleting the definition deletes its objects, then the kind is no longer served.
    let r = c.kubectl_stdin(&["apply", "-f", "-"], Some(&widget("w2", 2)));
    assert!(r.ok, "{}", r.stderr);
    c.k(&["delete", "crd", "widgets.e2e.kedge.dev", "--timeout=30s"]);
    let r = c.kubectl(&["get", "widgets"]);
    assert!(!r.ok, "widgets are still served: {}", r.stdout);
    // kubectl's discovery cache may still know the kind: then the list itself is a 404.
    assert!(
        r.stderr
            .contains("the server doesn't have a resource type \"widgets\"")
            || r.stderr
                .contains("the server could not find the requested resource"),
        "{}",
        r.stderr
    );
    let raw = c.kubectl(&["get", "--raw", "/apis/e2e.kedge.dev/v1"]);
    assert!(
        !raw.ok,
        "the group-version is still discovered: {}",
        raw.stdout
    );
    // Recreated, it starts empty: nothing of the old objects survived.
    let r = c.kubectl_stdin(&["apply", "-f", "-"], Some(CRD));
    assert!(r.ok, "{}", r.stderr);
    c.k(&[
        "wait",
        "--for",
        "condition=established",
        "--timeout=30s",
        "crd/widgets.e2e.kedge.dev",
    ]);
    let none = c.kubectl(&["get", "widgets", "-o", "name"]);
    assert!(
        none.ok && none.stdout.trim().is_empty(),
        "{} {}",
        none.stdout,
        none.stderr
    );
}

#[test]
fn custom_objects_with_the_python_client() {
    let probe = Command::new("python3")
        .args(["-c", "import kubernetes"])
        .output()
        .expect("python3 is needed for this test");
    assert!(
        probe.status.success(),
        "the Python `kubernetes` client is missing: `pip install kubernetes` (make setup does)"
    );
    let c = Cluster::start();
    let out = Command::new("timeout")
        .arg("120")
        .arg("python3")
        .arg(repo().join("tests/e2e/python/custom_objects.py"))
        .arg(&c.kubeconfig)
        .output()
        .unwrap();
    assert!(
        out.status.success(),
        "python custom objects failed:\n{}\n{}\n--- server ---\n{}",
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr),
        tail(&c.server.log_text(), 30)
    );
    assert!(String::from_utf8_lossy(&out.stdout).contains("all checks passed"));
}
