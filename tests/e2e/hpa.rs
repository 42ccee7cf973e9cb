//! HorizontalPodAutoscaler with the real kubectl: `kubectl autoscale` (autoscaling/v1,
//! converted to the stored v2), `kubectl get hpa` columns, `describe`, validation refusals,
//! and the `hpa` plugin scaling a CPU-burning Deployment up within the sync period and back
//! down after the (shortened) stabilisation window.

use std::time::{Duration, Instant};

use serde_json::{Value, json};

use crate::harness::{Busybox, Cluster, containers_unavailable, repo};

fn deployment_replicas(c: &Cluster, name: &str) -> i64 {
    let d: Value = serde_json::from_str(&c.k(&["get", "deployment", name, "-o", "json"])).unwrap();
    d["spec"]["replicas"].as_i64().unwrap_or(1)
}

fn hpa_json(c: &Cluster, name: &str) -> Value {
    serde_json::from_str(&c.k(&["get", "hpa", name, "-o", "json"])).unwrap()
}

fn condition(hpa: &Value, type_: &str) -> Option<(String, String)> {
    hpa["status"]["conditions"]
        .as_array()?
        .iter()
        .find(|c| c["type"] == type_)
        .map(|c| {
            (
                c["status"].as_str().unwrap_or_default().to_string(),
                c["reason"].as_str().unwrap_or_default().to_string(),
            )
        })
}

/// The seed's `kubectl autoscale deployment/nginx-deployment --min=10 --max=15
/// --cpu-percent=80`: created through autoscaling/v1, listed with kube's columns, read in
/// both versions, described; the controller brings the Deployment up to `--min` at once
/// (kube's "Current number of replicas below Spec.MinReplicas", no metrics needed).
#[test]
fn kubectl_autoscale_creates_and_lists_the_seed_hpa() {
    let c = Cluster::start();
    let manifest = repo().join("manifests/nginx-deployment.yaml");
    c.k(&["apply", "-f", manifest.to_str().unwrap()]);
    let r = c.kubectl(&[
        "autoscale",
        "deployment/nginx-deployment",
        "--min=10",
        "--max=15",
        "--cpu-percent=80",
    ]);
    assert!(r.ok, "{}", r.stderr);
    assert_eq!(
        r.stdout.trim(),
        "horizontalpodautoscaler.autoscaling/nginx-deployment autoscaled"
    );
    // autoscaling/v1 is served beside v2 without a deprecation warning.
    assert!(!r.stderr.contains("deprecated"), "{}", r.stderr);

    let table = c.k(&["get", "hpa"]);
    let header: Vec<&str> = table.lines().next().unwrap().split_whitespace().collect();
    assert_eq!(
        header,
        [
            "NAME",
            "REFERENCE",
            "TARGETS",
            "MINPODS",
            "MAXPODS",
            "REPLICAS",
            "AGE"
        ]
    );
    let row = table
        .lines()
        .find(|l| l.starts_with("nginx-deployment "))
        .unwrap_or_else(|| panic!("{table}"));
    assert!(row.contains("Deployment/nginx-deployment"), "{table}");
    assert!(row.contains("cpu: <unknown>/80%"), "{table}");
    let cols: Vec<&str> = row.split_whitespace().collect();
    let n = cols.len();
    assert_eq!((cols[n - 4], cols[n - 3]), ("10", "15"), "{table}");

    // Stored as v2: the v1 target became a cpu Utilization metric; v1 reads it back.
    let v2 = hpa_json(&c, "nginx-deployment");
    assert_eq!(v2["apiVersion"], "autoscaling/v2");
    assert_eq!(
        v2["spec"]["metrics"],
        json!([{"type": "Resource", "resource": {"name": "cpu",
            "target": {"type": "Utilization", "averageUtilization": 80}}}])
    );
    let v1: Value = serde_json::from_str(&c.k(&[
        "get",
        "horizontalpodautoscalers.v1.autoscaling",
        "nginx-deployment",
        "-o",
        "json",
    ]))
    .unwrap();
    assert_eq!(v1["apiVersion"], "autoscaling/v1");
    assert_eq!(v1["spec"]["targetCPUUtilizationPercentage"], 80);
    assert_eq!(v1["spec"]["minReplicas"], 10);

    // `kubectl get all` lists it once (category `all`, in its stored version).
    let all = c.k(&["get", "all"]);
    assert_eq!(
        all.lines()
            .filter(|l| l.starts_with("horizontalpodautoscaler.autoscaling/nginx-deployment "))
            .count(),
        1,
        "{all}"
    );
    // A v1 manifest applies (client-side apply computes its patch against the v1 schema).
    let v1_manifest = json!({"apiVersion": "autoscaling/v1", "kind": "HorizontalPodAutoscaler",
        "metadata": {"name": "web-v1"},
        "spec": {"scaleTargetRef": {"apiVersion": "apps/v1", "kind": "Deployment", "name": "nginx-deployment"},
            "maxReplicas": 12, "targetCPUUtilizationPercentage": 60}});
    for _ in 0..2 {
        let r = c.kubectl_stdin(&["apply", "-f", "-"], Some(&v1_manifest.to_string()));
        assert!(r.ok, "{}", r.stderr);
    }
    let web = hpa_json(&c, "web-v1");
    assert_eq!(web["spec"]["minReplicas"], 1);
    assert_eq!(
        web["spec"]["metrics"][0]["resource"]["target"]["averageUtilization"],
        60
    );
    c.k(&["delete", "hpa", "web-v1"]);

    // Below its minimum, the target goes to 10 without waiting for metrics.
    c.wait("the HPA to raise nginx-deployment to its minimum", || {
        (deployment_replicas(&c, "nginx-deployment") == 10).then_some(())
    });
    let describe = c.wait("describe to show the rescale", || {
        let d = c.k(&["describe", "hpa", "nginx-deployment"]);
        d.contains("SuccessfulRescale").then_some(d)
    });
    eprintln!("{describe}");
    for want in [
        "Reference:",
        "Deployment/nginx-deployment",
        "Min replicas:",
        "Max replicas:",
        "New size: 10; reason: Current number of replicas below Spec.MinReplicas",
        "AbleToScale",
    ] {
        assert!(describe.contains(want), "{want} in\n{describe}");
    }
    // REPLICAS is the target's count the controller last saw.
    c.wait("REPLICAS to show 10", || {
        let table = c.k(&["get", "hpa", "nginx-deployment", "--no-headers"]);
        let cols: Vec<&str> = table.split_whitespace().collect();
        (cols.len() >= 2 && cols[cols.len() - 2] == "10").then_some(())
    });
}

/// What kedge cannot honour is refused with a 422 naming the field; kube's own rules hold.
#[test]
fn invalid_hpas_are_refused_by_field() {
    let c = Cluster::start();
    let hpa = |spec: Value| {
        json!({"apiVersion": "autoscaling/v2", "kind": "HorizontalPodAutoscaler",
            "metadata": {"name": "bad"}, "spec": spec})
        .to_string()
    };
    let target = json!({"apiVersion": "apps/v1", "kind": "Deployment", "name": "web"});
    for (spec, field) in [
        (
            json!({"scaleTargetRef": target, "maxReplicas": 3, "metrics": [{"type": "Pods",
                "pods": {"metric": {"name": "qps"}, "target": {"type": "AverageValue", "averageValue": "1"}}}]}),
            "spec.metrics[0].type: Forbidden: not supported by kedge",
        ),
        (
            json!({"scaleTargetRef": target, "minReplicas": 0, "maxReplicas": 3}),
            "spec.minReplicas: Invalid value: 0: must be greater than or equal to 1",
        ),
        (
            json!({"scaleTargetRef": target, "minReplicas": 4, "maxReplicas": 3}),
            "spec.maxReplicas: Invalid value: 3: must be greater than or equal to `minReplicas`",
        ),
        (
            json!({"scaleTargetRef": {"kind": "Deployment"}, "maxReplicas": 3}),
            "spec.scaleTargetRef.name: Required value",
        ),
        (
            json!({"scaleTargetRef": target, "maxReplicas": 3,
                "behavior": {"scaleDown": {"policies": [{"type": "Pods", "value": 0, "periodSeconds": 15}]}}}),
            "spec.behavior.scaleDown.policies[0].value: Invalid value: 0: must be greater than zero",
        ),
    ] {
        let r = c.kubectl_stdin(&["apply", "-f", "-"], Some(&hpa(spec)));
        assert!(!r.ok, "accepted: {field}");
        assert!(r.stderr.contains(field), "{field} in {}", r.stderr);
    }
    let r = c.kubectl(&["get", "hpa", "bad"]);
    assert!(!r.ok);
}

/// A Deployment whose pods burn CPU (busybox under runc when it can run, else the Wasm
/// sample's `HELLO_BURN`), each requesting 100m: `kubectl autoscale --cpu-percent=50` takes it
/// from 1 to 3 within the sync period; with the load off it stays up through the shortened
/// stabilisation window, then goes back to 1.
#[test]
fn a_busy_deployment_scales_up_then_down_after_the_window() {
    let mut c = Cluster::start();
    let oci = containers_unavailable();
    let busybox = oci.is_none().then(|| Busybox::start(c.dir.path()));
    let token = c.token.clone();
    let mut flags = vec!["--metric-resolution-seconds", "1"];
    let registries = busybox
        .as_ref()
        .map(|b| b.registries_yaml.display().to_string());
    if let Some(r) = &registries {
        flags.extend_from_slice(&["--registries-config", r]);
    }
    c.start_agent_with("hpa-n1", &token, &flags);
    // The controller's settings, shortened for the test.
    c.k(&[
        "create",
        "configmap",
        "kedge-hpa-controller",
        "-n",
        "kube-system",
        "--from-literal=syncPeriod=2s",
        "--from-literal=downscaleStabilization=20s",
    ]);

    let (image, container) = match &busybox {
        Some(b) => (
            b.image.clone(),
            json!({"command": ["sh", "-c",
                "if [ \"$BURN\" = 1 ]; then while :; do :; done; else sleep 3600; fi"],
                "env": [{"name": "BURN", "value": "1"}]}),
        ),
        None => {
            eprintln!("hpa: busybox cannot run ({oci:?}): the Wasm sample burns instead");
            (
                "kedge.dev/samples/hello-wasm:v1".to_string(),
                json!({"env": [{"name": "HELLO_BURN", "value": "1"}]}),
            )
        }
    };
    let mut main = container;
    main["name"] = json!("main");
    main["image"] = json!(image);
    main["resources"] = json!({"requests": {"cpu": "100m"}});
    let deployment = json!({"apiVersion": "apps/v1", "kind": "Deployment",
        "metadata": {"name": "burner"},
        "spec": {"replicas": 1, "selector": {"matchLabels": {"app": "burner"}},
            "template": {"metadata": {"labels": {"app": "burner"}},
                "spec": {"containers": [main]}}}});
    let r = c.kubectl_stdin(&["apply", "-f", "-"], Some(&deployment.to_string()));
    assert!(r.ok, "{}", r.stderr);
    c.k(&[
        "autoscale",
        "deployment/burner",
        "--min=1",
        "--max=3",
        "--cpu-percent=50",
    ]);

    // Up: 1 → 3 (max) within a few sync periods once samples come in.
    let started = Instant::now();
    c.wait("the HPA to scale the burner up to 3", || {
        (deployment_replicas(&c, "burner") == 3).then_some(())
    });
    eprintln!("hpa: scaled up after {:?}", started.elapsed());
    let table = c.k(&["get", "hpa", "burner"]);
    eprintln!("{table}");
    let row: Vec<&str> = table.lines().nth(1).unwrap().split_whitespace().collect();
    assert_eq!(row[1], "Deployment/burner", "{table}");
    let h = hpa_json(&c, "burner");
    assert_eq!(
        condition(&h, "ScalingActive"),
        Some(("True".into(), "ValidMetricFound".into())),
        "{h}"
    );
    let events = c.k(&[
        "get",
        "events",
        "--field-selector",
        "involvedObject.name=burner,reason=SuccessfulRescale",
        "-o",
        "jsonpath={.items[*].message}",
    ]);
    assert!(
        events.contains("reason: cpu resource utilization (percentage of request) above target"),
        "{events}"
    );

    // Load off: the pods are replaced by idle ones; the count holds through the window.
    let env = if busybox.is_some() {
        "BURN=0"
    } else {
        "HELLO_BURN-"
    };
    c.k(&["set", "env", "deployment/burner", env]);
    c.wait("the HPA to see the idle pods and hold the count", || {
        let h = hpa_json(&c, "burner");
        (condition(&h, "AbleToScale").is_some_and(|(_, r)| r == "ScaleDownStabilized"))
            .then_some(())
    });
    let low_since = Instant::now();
    assert_eq!(deployment_replicas(&c, "burner"), 3);
    let deadline = Instant::now() + Duration::from_secs(90);
    while deployment_replicas(&c, "burner") != 1 {
        assert!(
            Instant::now() < deadline,
            "not scaled down:\n{}",
            c.k(&["describe", "hpa", "burner"])
        );
        std::thread::sleep(Duration::from_millis(500));
    }
    let held = low_since.elapsed();
    eprintln!("hpa: scaled down {held:?} after the first stabilised recommendation");
    // The window is 20 s from the end of the last high recommendation, which is when the
    // first stabilised (low) one came: the count held for about that long (less the polls'
    // lag), not one sync period.
    assert!(
        held >= Duration::from_secs(15),
        "scaled down after {held:?}"
    );
    let describe = c.k(&["describe", "hpa", "burner"]);
    assert!(
        describe.contains("New size: 1; reason: All metrics below target"),
        "{describe}"
    );
}
