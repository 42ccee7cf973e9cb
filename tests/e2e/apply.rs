//! Server-side apply with the real kubectl: field ownership in managedFields, removal of fields
//! dropped from the configuration, conflicts with other managers, `--force-conflicts`,
//! `--field-manager`, and client-side apply alongside it.

use serde_json::Value;

use crate::harness::Cluster;

fn deployment(replicas: u32, extra_label: bool) -> String {
    let tier = if extra_label { "\n    tier: web" } else { "" };
    format!(
        "apiVersion: apps/v1
kind: Deployment
metadata:
  name: ssa
  labels:
    app: ssa{tier}
spec:
  replicas: {replicas}
  selector:
    matchLabels:
      app: ssa
  template:
    metadata:
      labels:
        app: ssa
    spec:
      containers:
      - name: hello
        image: kedge.dev/samples/hello-wasm:v1
"
    )
}

fn get(c: &Cluster) -> Value {
    let out = c.k(&[
        "get",
        "deployment",
        "ssa",
        "-o",
        "json",
        "--show-managed-fields",
    ]);
    serde_json::from_str(&out).unwrap()
}

/// The managedFields entry of `manager` with `operation`.
fn entry<'a>(obj: &'a Value, manager: &str, operation: &str) -> Option<&'a Value> {
    obj["metadata"]["managedFields"]
        .as_array()?
        .iter()
        .find(|e| e["manager"] == manager && e["operation"] == operation)
}

fn owns_replicas(e: Option<&Value>) -> bool {
    e.is_some_and(|e| e["fieldsV1"]["f:spec"].get("f:replicas").is_some())
}

#[test]
fn server_side_apply_tracks_owners_and_reports_conflicts() {
    let c = Cluster::start();
    let file = c.dir.path().join("ssa.yaml");
    let apply_ssa = |yaml: &str, extra: &[&str]| {
        std::fs::write(&file, yaml).unwrap();
        let mut args = vec!["apply", "--server-side", "-f", file.to_str().unwrap()];
        args.extend_from_slice(extra);
        c.kubectl(&args)
    };

    // Apply creates the object; the applier owns exactly what it sent.
    let r = apply_ssa(&deployment(2, true), &[]);
    assert!(r.ok, "{}", r.stderr);
    assert!(r.stdout.contains("serverside-applied"), "{}", r.stdout);
    let yaml = c.k(&[
        "get",
        "deployment",
        "ssa",
        "-o",
        "yaml",
        "--show-managed-fields",
    ]);
    assert!(
        yaml.contains("manager: kubectl") && yaml.contains("operation: Apply"),
        "{yaml}"
    );
    assert!(yaml.contains("k:{\"name\":\"hello\"}"), "{yaml}");
    let d = get(&c);
    assert_eq!(d["spec"]["replicas"], 2);
    assert!(owns_replicas(entry(&d, "kubectl", "Apply")));
    // Once the controllers are done with it (status and revision written), the version
    // stays put unless someone writes.
    c.wait("the Deployment's status settled", || {
        let d = get(&c);
        (d["status"]["observedGeneration"] == d["metadata"]["generation"]
            && d["status"]["replicas"] == 2
            && d["metadata"]["annotations"]["deployment.kubernetes.io/revision"].is_string())
        .then_some(())
    });
    std::thread::sleep(std::time::Duration::from_millis(500));
    let rv = get(&c)["metadata"]["resourceVersion"].clone();

    // The same configuration again stores nothing.
    assert!(apply_ssa(&deployment(2, true), &[]).ok);
    assert_eq!(get(&c)["metadata"]["resourceVersion"], rv);

    // A label dropped from the configuration is removed from the object.
    let r = apply_ssa(&deployment(2, false), &[]);
    assert!(r.ok, "{}", r.stderr);
    let d = get(&c);
    assert!(d["metadata"]["labels"].get("tier").is_none(), "{d}");
    assert_eq!(d["metadata"]["labels"]["app"], "ssa");

    // Another manager changes replicas; a server-side apply of another value conflicts.
    c.k(&["scale", "deployment", "ssa", "--replicas=4"]);
    let r = apply_ssa(&deployment(3, false), &[]);
    assert!(!r.ok, "the apply should conflict: {}", r.stdout);
    assert!(
        r.stderr.contains("conflict with") && r.stderr.contains(".spec.replicas"),
        "{}",
        r.stderr
    );
    assert!(r.stderr.contains("--force-conflicts"), "{}", r.stderr);
    let d = get(&c);
    assert_eq!(d["spec"]["replicas"], 4, "a failed apply changes nothing");
    assert!(!owns_replicas(entry(&d, "kubectl", "Apply")));

    // Dry run: accepted, nothing stored.
    let r = apply_ssa(
        &deployment(3, false),
        &["--force-conflicts", "--dry-run=server"],
    );
    assert!(r.ok, "{}", r.stderr);
    assert_eq!(get(&c)["spec"]["replicas"], 4);

    // Forced, the applier takes the field over.
    let r = apply_ssa(&deployment(3, false), &["--force-conflicts"]);
    assert!(r.ok, "{}", r.stderr);
    let d = get(&c);
    assert_eq!(d["spec"]["replicas"], 3);
    assert!(owns_replicas(entry(&d, "kubectl", "Apply")));
    let others = d["metadata"]["managedFields"]
        .as_array()
        .unwrap()
        .iter()
        .filter(|e| e["operation"] == "Update")
        .filter(|e| e["fieldsV1"]["f:spec"].get("f:replicas").is_some())
        .count();
    assert_eq!(others, 0, "{d}");

    // A second applier under its own name: shares nothing with kubectl's fields...
    let team = "apiVersion: apps/v1
kind: Deployment
metadata:
  name: ssa
  labels:
    team: edge
";
    let r = apply_ssa(team, &["--field-manager=other"]);
    assert!(r.ok, "{}", r.stderr);
    let d = get(&c);
    assert_eq!(d["metadata"]["labels"]["team"], "edge");
    assert_eq!(d["spec"]["replicas"], 3);
    assert!(entry(&d, "other", "Apply").is_some(), "{d}");
    // ...and conflicts with kubectl's when it sets replicas.
    let r = apply_ssa(
        &format!("{team}spec:\n  replicas: 7\n"),
        &["--field-manager=other"],
    );
    assert!(!r.ok);
    assert!(
        r.stderr.contains("conflict with \"kubectl\"") && r.stderr.contains(".spec.replicas"),
        "{}",
        r.stderr
    );

    // Client-side apply keeps working on other objects, recorded as an Update.
    let cm = c.dir.path().join("cm.yaml");
    for value in ["1", "2"] {
        std::fs::write(
            &cm,
            format!(
                "apiVersion: v1\nkind: ConfigMap\nmetadata:\n  name: csa\ndata:\n  k: \"{value}\"\n"
            ),
        )
        .unwrap();
        c.k(&["apply", "-f", cm.to_str().unwrap()]);
    }
    let out = c.k(&["get", "cm", "csa", "-o", "json", "--show-managed-fields"]);
    let v: Value = serde_json::from_str(&out).unwrap();
    assert_eq!(v["data"]["k"], "2");
    assert!(
        entry(&v, "kubectl-client-side-apply", "Update").is_some(),
        "{v}"
    );
}
