//! Server-side Tables with the real kubectl (issue 20, item 6): `--sort-by` on a field outside
//! the metadata makes kubectl ask for `includeObject=Object`, and sorts the Table's rows by
//! the full objects it then gets back. With PartialObjectMetadata rows it printed "No
//! resources found". No agent: the API is what is tested.

use serde_json::json;

use crate::harness::Cluster;

/// Cell `col` of every line of `kubectl get … --no-headers`.
fn column(out: &str, col: usize) -> Vec<String> {
    out.lines()
        .filter_map(|l| l.split_whitespace().nth(col).map(str::to_string))
        .collect()
}

/// Objects created with `kubectl create -f -`, one by one.
fn create(c: &Cluster, items: Vec<serde_json::Value>) {
    for item in items {
        let r = c.kubectl_stdin(&["create", "-f", "-"], Some(&item.to_string()));
        assert!(r.ok, "create failed:\n{}", r.stderr);
    }
}

#[test]
fn sort_by_a_field_outside_metadata() {
    let c = Cluster::start();

    // ConfigMaps whose names sort one way and whose `.data.k` sorts another.
    let cms: Vec<_> = [("c1", "b"), ("c2", "c"), ("c3", "a")]
        .iter()
        .map(|(name, k)| {
            json!({"apiVersion": "v1", "kind": "ConfigMap",
                "metadata": {"name": name, "labels": {"set": "sorted"}}, "data": {"k": k}})
        })
        .collect();
    create(&c, cms);
    let args = ["get", "cm", "-l", "set=sorted", "--sort-by=.data.k"];
    let sorted = c.k(&[&args[..], &["--no-headers"]].concat());
    assert_eq!(column(&sorted, 0), ["c3", "c1", "c2"], "{sorted}");
    // What kubectl asked for to get there.
    let r = c.kubectl(&[&args[..], &["-v=6"]].concat());
    assert!(r.ok, "{}", r.stderr);
    assert!(
        r.stderr.contains("includeObject=Object"),
        "kubectl did not ask for the objects:\n{}",
        r.stderr
    );
    // The Table still has the kind's columns, and one object sorts as a list of one.
    assert!(r.stdout.starts_with("NAME"), "{}", r.stdout);
    let one = c.k(&["get", "cm", "c2", "--sort-by=.data.k", "--no-headers"]);
    assert_eq!(column(&one, 0), ["c2"], "{one}");
    // Without --sort-by the rows carry the metadata alone: labels still show.
    let labels = c.k(&["get", "cm", "-l", "set=sorted", "--show-labels"]);
    assert!(labels.contains("set=sorted"), "{labels}");

    // The most common events command: oldest first by lastTimestamp, whatever the names.
    let events: Vec<_> = [
        ("e1", "third", "2025-01-01T00:03:00Z"),
        ("e2", "first", "2025-01-01T00:01:00Z"),
        ("e3", "second", "2025-01-01T00:02:00Z"),
    ]
    .iter()
    .map(|(name, message, at)| {
        json!({"apiVersion": "v1", "kind": "Event",
            "metadata": {"name": name, "labels": {"set": "sorted"}},
            "involvedObject": {"apiVersion": "v1", "kind": "ConfigMap", "name": "c1",
                "namespace": "default"},
            "reason": "Tested", "message": message, "type": "Normal", "count": 1,
            "firstTimestamp": at, "lastTimestamp": at,
            "source": {"component": "e2e"}})
    })
    .collect();
    create(&c, events);
    let out = c.k(&[
        "get",
        "events",
        "-l",
        "set=sorted",
        "--sort-by=.lastTimestamp",
    ]);
    let lines: Vec<&str> = out.lines().collect();
    assert!(lines[0].starts_with("LAST SEEN"), "{out}");
    let messages: Vec<String> = lines[1..]
        .iter()
        .map(|l| l.split_whitespace().last().unwrap_or_default().to_string())
        .collect();
    assert_eq!(messages, ["first", "second", "third"], "{out}");
    assert!(
        lines[1].contains("configmap/c1"),
        "the OBJECT column: {out}"
    );
}
