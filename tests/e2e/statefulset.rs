//! StatefulSet, end to end with the real kubectl: ordered creation of `web-0..2` behind a
//! headless Service, each with its own PersistentVolumeClaim `www-web-<i>` from the claim
//! template (provisioned by local-path and Bound), a partitioned rolling update (highest
//! ordinal first, ordinals below the partition untouched), ordered scale-down (`web-2` before
//! `web-1`) that keeps the claims, a scale-up that mounts the same claim again, and deletion of
//! the StatefulSet, which leaves its claims.

use serde_json::json;

use crate::harness::{Cluster, PodInfo};

const V1: &str = "kedge.dev/samples/hello-wasm:v1";
const V2: &str = "kedge.dev/samples/hello-wasm:v2";

fn by_name<'a>(pods: &'a [PodInfo], name: &str) -> Option<&'a PodInfo> {
    pods.iter().find(|p| p.name == name)
}

fn up(p: Option<&PodInfo>) -> bool {
    p.is_some_and(|p| p.phase == "Running" && p.ready && !p.deleting)
}

/// (status, volume) of each claim `kubectl get pvc` lists, by name.
fn claims(c: &Cluster) -> Vec<(String, String, String)> {
    c.k(&["get", "pvc", "--no-headers"])
        .lines()
        .map(|l| {
            let cells: Vec<&str> = l.split_whitespace().collect();
            let cell = |i: usize| cells.get(i).copied().unwrap_or("").to_string();
            (cell(0), cell(1), cell(2))
        })
        .collect()
}

fn all_bound(c: &Cluster, want: &[&str]) -> Option<Vec<(String, String, String)>> {
    let got = claims(c);
    let names: Vec<&str> = got.iter().map(|(n, _, _)| n.as_str()).collect();
    (names == want && got.iter().all(|(_, s, _)| s == "Bound")).then_some(got)
}

/// The READY column of `kubectl get sts web`.
fn ready_column(c: &Cluster) -> String {
    let out = c.k(&["get", "sts", "web", "--no-headers"]);
    out.split_whitespace().nth(1).unwrap_or("").to_string()
}

#[test]
fn statefulset_orders_creation_update_and_scale_down() {
    let mut c = Cluster::start();
    let token = c.token.clone();
    // This machine's disk may be nearly full (builds share it): the default `nodefs.available
    // <10%` would evict the pods, which this test is not about.
    c.start_agent_with(
        "node-a",
        &token,
        &["--eviction-hard", "nodefs.available<1Gi"],
    );

    let svc = r#"{"apiVersion":"v1","kind":"Service","metadata":{"name":"web"},
      "spec":{"clusterIP":"None","selector":{"app":"web"},"ports":[{"port":80}]}}"#;
    let r = c.kubectl_stdin(&["create", "-f", "-"], Some(svc));
    assert!(r.ok, "{}", r.stderr);
    // A local-path class keeping its directories in the test's own directory.
    let storage = c.dir.path().join("storage");
    let class = json!({"apiVersion": "storage.k8s.io/v1", "kind": "StorageClass",
        "metadata": {"name": "web-data"}, "provisioner": "rancher.io/local-path",
        "volumeBindingMode": "WaitForFirstConsumer", "reclaimPolicy": "Delete",
        "parameters": {"nodePath": storage.to_str().unwrap()}});
    let r = c.kubectl_stdin(&["create", "-f", "-"], Some(&class.to_string()));
    assert!(r.ok, "{}", r.stderr);
    let sts = json!({"apiVersion": "apps/v1", "kind": "StatefulSet", "metadata": {"name": "web"},
      "spec": {"replicas": 3, "serviceName": "web", "selector": {"matchLabels": {"app": "web"}},
        "template": {"metadata": {"labels": {"app": "web"}}, "spec": {
          "terminationGracePeriodSeconds": 2,
          "containers": [{"name": "hello", "image": V1,
            "volumeMounts": [{"name": "www", "mountPath": "/data"}]}]}},
        "volumeClaimTemplates": [{"metadata": {"name": "www"},
          "spec": {"accessModes": ["ReadWriteOnce"], "storageClassName": "web-data",
            "resources": {"requests": {"storage": "1Gi"}}}}]}});
    let r = c.kubectl_stdin(&["create", "-f", "-"], Some(&sts.to_string()));
    assert!(r.ok, "{}", r.stderr);

    // OrderedReady: whenever ordinal i exists, every lower ordinal is already Running+Ready.
    let mut seen: Vec<String> = Vec::new();
    c.wait("web-0..2 Running and Ready, created in order", || {
        let pods = c.pods("app=web");
        for p in &pods {
            if !seen.contains(&p.name) {
                seen.push(p.name.clone());
            }
        }
        for i in 1..3 {
            if by_name(&pods, &format!("web-{i}")).is_some() {
                for lower in 0..i {
                    assert!(
                        up(by_name(&pods, &format!("web-{lower}"))),
                        "web-{i} exists before web-{lower} is ready: {pods:?}"
                    );
                }
            }
        }
        (0..3)
            .all(|i| up(by_name(&pods, &format!("web-{i}"))))
            .then_some(())
    });
    assert_eq!(seen, ["web-0", "web-1", "web-2"]);
    let created = |name: &str| {
        c.k(&[
            "get",
            "pod",
            name,
            "-o",
            "jsonpath={.metadata.creationTimestamp}",
        ])
    };
    let (t0, t1, t2) = (created("web-0"), created("web-1"), created("web-2"));
    assert!(t0 <= t1 && t1 <= t2, "{t0} {t1} {t2}");
    let host = c.k(&[
        "get",
        "pod",
        "web-1",
        "-o",
        "jsonpath={.spec.hostname}/{.spec.subdomain}/{.metadata.labels.statefulset\\.kubernetes\\.io/pod-name}",
    ]);
    assert_eq!(host, "web-1/web/web-1");
    c.wait("READY 3/3", || (ready_column(&c) == "3/3").then_some(()));
    let events = c.k(&["get", "events"]);
    assert!(
        events.contains("create Pod web-0 in StatefulSet web successful")
            && events.contains("create Claim www-web-0 Pod web-0 in StatefulSet web success"),
        "{events}"
    );

    // One claim per ordinal, provisioned on the node and Bound; each pod mounts its own.
    let www = ["www-web-0", "www-web-1", "www-web-2"];
    let bound = c.wait("www-web-0..2 Bound", || all_bound(&c, &www));
    for i in 0..3 {
        let claim = c.k(&[
            "get",
            "pod",
            &format!("web-{i}"),
            "-o",
            "jsonpath={.spec.volumes[?(@.name==\"www\")].persistentVolumeClaim.claimName}",
        ]);
        assert_eq!(claim, format!("www-web-{i}"));
    }
    let labels = c.k(&[
        "get",
        "pvc",
        "www-web-1",
        "-o",
        "jsonpath={.metadata.labels.app}",
    ]);
    assert_eq!(labels, "web");
    let owners = c.k(&[
        "get",
        "pvc",
        "www-web-1",
        "-o",
        "jsonpath={.metadata.ownerReferences}",
    ]);
    assert_eq!(owners, "", "claims are retained: nothing owns them");

    // Partitioned rolling update: web-2 then web-1 move to v2; web-0 stays on v1.
    c.k(&[
        "patch",
        "sts",
        "web",
        "-p",
        r#"{"spec":{"updateStrategy":{"type":"RollingUpdate","rollingUpdate":{"partition":1}}}}"#,
    ]);
    c.k(&["set", "image", "sts/web", &format!("hello={V2}")]);
    c.wait("web-2 and web-1 on v2 and ready, web-0 on v1", || {
        let pods = c.pods("app=web");
        let img = |n: &str| by_name(&pods, n).map(|p| p.image.clone());
        if img("web-1").as_deref() == Some(V2) {
            assert!(
                img("web-2").as_deref() == Some(V2) && up(by_name(&pods, "web-2")),
                "web-1 updated before web-2 was ready on v2: {pods:?}"
            );
        }
        assert_eq!(img("web-0").as_deref().unwrap_or(V1), V1, "{pods:?}");
        (img("web-1").as_deref() == Some(V2)
            && img("web-2").as_deref() == Some(V2)
            && (0..3).all(|i| up(by_name(&pods, &format!("web-{i}")))))
        .then_some(())
    });
    let status = |field: &str| {
        c.k(&[
            "get",
            "sts",
            "web",
            "-o",
            &format!("jsonpath={{.status.{field}}}"),
        ])
    };
    c.wait("status counts of the partitioned rollout", || {
        (status("updatedReplicas") == "2"
            && status("currentReplicas") == "1"
            && status("readyReplicas") == "3")
            .then_some(())
    });
    assert_ne!(status("currentRevision"), status("updateRevision"));
    let revs = c.k(&["get", "controllerrevisions", "--no-headers"]);
    assert_eq!(revs.lines().count(), 2, "{revs}");
    assert_eq!(ready_column(&c), "3/3");

    // Ordered scale-down: web-2 goes (completely) before web-1 is touched.
    c.k(&["scale", "sts", "web", "--replicas=1"]);
    c.wait("only web-0 left", || {
        let pods = c.pods("app=web");
        let web1_going = by_name(&pods, "web-1").is_none_or(|p| p.deleting);
        if web1_going {
            assert!(
                by_name(&pods, "web-2").is_none(),
                "web-1 removed before web-2 was gone: {pods:?}"
            );
        }
        (pods.len() == 1 && up(by_name(&pods, "web-0"))).then_some(())
    });
    c.wait("READY 1/1", || (ready_column(&c) == "1/1").then_some(()));
    let events = c.k(&["get", "events"]);
    assert!(
        events.contains("delete Pod web-2 in StatefulSet web successful"),
        "{events}"
    );
    // Scale-down keeps the claims, bound to the same volumes.
    assert_eq!(all_bound(&c, &www).as_ref(), Some(&bound));

    // Scaled up again, web-1 mounts its old claim (the same volume, on the node it is on).
    c.k(&["scale", "sts", "web", "--replicas=2"]);
    c.wait("web-0 and web-1 up", || {
        let pods = c.pods("app=web");
        (pods.len() == 2 && up(by_name(&pods, "web-0")) && up(by_name(&pods, "web-1")))
            .then_some(())
    });
    assert_eq!(all_bound(&c, &www).as_ref(), Some(&bound));

    // Deleting the StatefulSet takes its pods, not its claims.
    c.k(&["delete", "statefulset", "web", "--wait=true"]);
    c.wait("the pods gone", || {
        c.pods("app=web").is_empty().then_some(())
    });
    assert_eq!(all_bound(&c, &www).as_ref(), Some(&bound));
}
