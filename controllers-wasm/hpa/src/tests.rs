//! The controller against a FakeCluster holding a Deployment, its pods and their
//! `metrics.k8s.io/v1beta1` PodMetrics.

use k8s_openapi::api::apps::v1::Deployment;
use k8s_openapi::api::autoscaling::v2::HorizontalPodAutoscaler;
use k8s_openapi::api::core::v1::Event;
use kedge_guest::{ClusterExt, FakeCluster, Outcome, Verb};
use serde_json::{Value, json};

use super::*;

const T0: &str = "2025-01-01T01:00:00Z";

fn at(secs: i64) -> String {
    jiff::Timestamp::from_second(T0.parse::<jiff::Timestamp>().unwrap().as_second() + secs)
        .unwrap()
        .to_string()
}

fn key() -> ObjectKey {
    ObjectKey::of::<HorizontalPodAutoscaler>("default", "web")
}

fn cpu_hpa(target: i64, min: i64, max: i64, behavior: Option<Value>) -> Value {
    let mut spec = json!({
        "scaleTargetRef": {"apiVersion": "apps/v1", "kind": "Deployment", "name": "web"},
        "minReplicas": min, "maxReplicas": max,
        "metrics": [{"type": "Resource", "resource": {"name": "cpu",
            "target": {"type": "Utilization", "averageUtilization": target}}}]});
    if let Some(b) = behavior {
        spec["behavior"] = b;
    }
    json!({"apiVersion": "autoscaling/v2", "kind": "HorizontalPodAutoscaler",
        "metadata": {"name": "web", "namespace": "default", "generation": 1}, "spec": spec})
}

/// A Deployment of `replicas` whose pods (one per `usage`, each requesting 100m) use so many
/// millicores, with PodMetrics for the `Some` ones.
fn world(replicas: i64, usage: &[Option<i64>], hpa: Value) -> FakeCluster {
    let fake = FakeCluster::new();
    fake.set_now(T0);
    fake.seed_json(json!({"apiVersion": "apps/v1", "kind": "Deployment",
        "metadata": {"name": "web", "namespace": "default"},
        "spec": {"replicas": replicas, "selector": {"matchLabels": {"app": "web"}},
            "template": {"metadata": {"labels": {"app": "web"}},
                "spec": {"containers": [{"name": "app", "image": "busybox"}]}}}}));
    for (i, u) in usage.iter().enumerate() {
        add_pod(&fake, &format!("web-{i}"), Some("100m"), *u);
    }
    fake.seed_json(hpa);
    fake
}

fn add_pod(fake: &FakeCluster, name: &str, request: Option<&str>, usage: Option<i64>) {
    let resources = match request {
        Some(r) => json!({"requests": {"cpu": r}}),
        None => json!({}),
    };
    fake.seed_json(json!({"apiVersion": "v1", "kind": "Pod",
        "metadata": {"name": name, "namespace": "default", "labels": {"app": "web"}},
        "spec": {"containers": [{"name": "app", "image": "busybox", "resources": resources}]},
        "status": {"phase": "Running", "startTime": "2025-01-01T00:00:00Z",
            "conditions": [{"type": "Ready", "status": "True",
                "lastTransitionTime": "2025-01-01T00:00:00Z"}]}}));
    if let Some(u) = usage {
        set_usage(fake, name, u);
    }
}

fn set_usage(fake: &FakeCluster, pod: &str, millis: i64) {
    // Nanocores, as metrics-server reports them.
    fake.seed_json(json!({"apiVersion": "metrics.k8s.io/v1beta1", "kind": "PodMetrics",
        "metadata": {"name": pod, "namespace": "default", "labels": {"app": "web"}},
        "timestamp": T0, "window": "10.5s",
        "containers": [{"name": "app", "usage": {"cpu": format!("{}n", millis * 1_000_000), "memory": "12Ki"}}]}));
}

fn replicas(fake: &FakeCluster) -> i32 {
    fake.get::<Deployment>("default", "web")
        .unwrap()
        .unwrap()
        .spec
        .unwrap()
        .replicas
        .unwrap()
}

fn status(fake: &FakeCluster) -> Value {
    fake.object(
        "autoscaling/v2",
        "HorizontalPodAutoscaler",
        "default",
        "web",
    )
    .unwrap()["status"]
        .clone()
}

fn condition(fake: &FakeCluster, type_: &str) -> (String, String, String) {
    let s = status(fake);
    let c = s["conditions"]
        .as_array()
        .unwrap()
        .iter()
        .find(|c| c["type"] == type_)
        .unwrap_or_else(|| panic!("{type_} in {s}"))
        .clone();
    (
        c["status"].as_str().unwrap().into(),
        c["reason"].as_str().unwrap().into(),
        c["message"].as_str().unwrap().into(),
    )
}

fn events(fake: &FakeCluster) -> Vec<(String, String, String)> {
    fake.list::<Event>("default", "")
        .unwrap()
        .into_iter()
        .map(|e| {
            (
                e.type_.unwrap_or_default(),
                e.reason.unwrap_or_default(),
                e.message.unwrap_or_default(),
            )
        })
        .collect()
}

fn sync(fake: &FakeCluster) -> Outcome {
    HpaController::reconcile(fake, &key()).unwrap()
}

#[test]
fn registration_reads_pod_metrics_and_writes_the_targets() {
    let r = HpaController::registration();
    assert_eq!(r.name, "hpa");
    assert!(
        r.reads
            .contains(&KindRef::new("metrics.k8s.io/v1beta1", "PodMetrics"))
    );
    assert!(r.writes.contains(&KindRef::of::<Deployment>()));
}

#[test]
fn scales_up_by_the_utilization_ratio() {
    let fake = world(2, &[Some(90), Some(90)], cpu_hpa(50, 1, 10, None));
    assert_eq!(sync(&fake), Outcome::requeue_after_ms(15_000));
    assert_eq!(replicas(&fake), 4);
    assert_eq!(
        events(&fake),
        [(
            "Normal".into(),
            "SuccessfulRescale".into(),
            "New size: 4; reason: cpu resource utilization (percentage of request) above target"
                .into()
        )]
    );
    let s = status(&fake);
    assert_eq!(
        (s["currentReplicas"].clone(), s["desiredReplicas"].clone()),
        (json!(2), json!(4))
    );
    assert_eq!(s["lastScaleTime"], T0);
    assert_eq!(
        s["currentMetrics"],
        json!([{"type": "Resource", "resource": {"name": "cpu",
            "current": {"averageUtilization": 90, "averageValue": "90m"}}}])
    );
    assert_eq!(
        condition(&fake, "AbleToScale"),
        (
            "True".into(),
            "SucceededRescale".into(),
            "the HPA controller was able to update the target scale to 4".into()
        )
    );
    assert_eq!(
        condition(&fake, "ScalingActive"),
        (
            "True".into(),
            "ValidMetricFound".into(),
            "the HPA was able to successfully calculate a replica count from cpu resource utilization (percentage of request)".into()
        )
    );
    assert_eq!(condition(&fake, "ScalingLimited").1, "DesiredWithinRange");
}

#[test]
fn within_the_tolerance_nothing_changes() {
    // 54 % against 50 %: 8 % off, inside the default 10 %.
    let fake = world(2, &[Some(54), Some(54)], cpu_hpa(50, 1, 10, None));
    sync(&fake);
    assert_eq!(replicas(&fake), 2);
    assert_eq!(fake.count(Verb::Patch, "Deployment"), 0);
    assert_eq!(status(&fake)["desiredReplicas"], 2);
    assert_eq!(condition(&fake, "AbleToScale").1, "ReadyForNewScale");
    // A wider tolerance from the controller's ConfigMap keeps 60 % too.
    let fake = world(2, &[Some(60), Some(60)], cpu_hpa(50, 1, 10, None));
    fake.seed_json(json!({"apiVersion": "v1", "kind": "ConfigMap",
        "metadata": {"name": "kedge-hpa-controller", "namespace": "kube-system"},
        "data": {"tolerance": "0.25", "syncPeriod": "2s"}}));
    assert_eq!(sync(&fake), Outcome::requeue_after_ms(2000));
    assert_eq!(replicas(&fake), 2);
}

#[test]
fn max_and_min_clamp_the_count() {
    let fake = world(2, &[Some(200), Some(200)], cpu_hpa(50, 1, 3, None));
    sync(&fake);
    assert_eq!(replicas(&fake), 3);
    assert_eq!(
        condition(&fake, "ScalingLimited"),
        (
            "True".into(),
            "TooManyReplicas".into(),
            "the desired replica count is more than the maximum replica count".into()
        )
    );
    let no_window = json!({"scaleDown": {"stabilizationWindowSeconds": 0}});
    let fake = world(
        4,
        &[Some(1), Some(1), Some(1), Some(1)],
        cpu_hpa(50, 2, 10, Some(no_window)),
    );
    sync(&fake);
    assert_eq!(replicas(&fake), 2);
    assert_eq!(condition(&fake, "ScalingLimited").1, "TooFewReplicas");
    assert_eq!(
        events(&fake)[0].2,
        "New size: 2; reason: All metrics below target"
    );
    // A target outside the bounds is brought in without looking at metrics.
    let fake = world(5, &[], cpu_hpa(50, 1, 3, None));
    sync(&fake);
    assert_eq!(replicas(&fake), 3);
    assert_eq!(
        events(&fake)[0].2,
        "New size: 3; reason: Current number of replicas above Spec.MaxReplicas"
    );
}

#[test]
fn scale_down_waits_for_the_stabilization_window() {
    let fake = world(
        4,
        &[Some(5), Some(5), Some(5), Some(5)],
        cpu_hpa(50, 1, 10, None),
    );
    sync(&fake);
    assert_eq!(replicas(&fake), 4);
    assert_eq!(
        condition(&fake, "AbleToScale"),
        (
            "True".into(),
            "ScaleDownStabilized".into(),
            "recent recommendations were higher than current one, applying the highest recent recommendation".into()
        )
    );
    // The history is kept in the object between reconciles (fresh instances).
    let stored = fake
        .object(
            "autoscaling/v2",
            "HorizontalPodAutoscaler",
            "default",
            "web",
        )
        .unwrap();
    assert!(stored["metadata"]["annotations"][HISTORY_ANNOTATION].is_string());
    fake.set_now(&at(200));
    sync(&fake);
    assert_eq!(replicas(&fake), 4);
    let writes = fake.writes().len();
    fake.set_now(&at(215));
    sync(&fake);
    assert_eq!(fake.writes().len(), writes, "a steady state writes nothing");
    fake.set_now(&at(301));
    sync(&fake);
    assert_eq!(replicas(&fake), 1);
}

#[test]
fn the_window_comes_from_behavior_or_the_controller_config() {
    let short = json!({"scaleDown": {"stabilizationWindowSeconds": 30}});
    let fake = world(
        4,
        &[Some(5), Some(5), Some(5), Some(5)],
        cpu_hpa(50, 1, 10, Some(short)),
    );
    sync(&fake);
    assert_eq!(replicas(&fake), 4);
    fake.set_now(&at(31));
    sync(&fake);
    assert_eq!(replicas(&fake), 1);

    let fake = world(
        4,
        &[Some(5), Some(5), Some(5), Some(5)],
        cpu_hpa(50, 1, 10, None),
    );
    fake.seed_json(json!({"apiVersion": "v1", "kind": "ConfigMap",
        "metadata": {"name": "kedge-hpa-controller", "namespace": "kube-system"},
        "data": {"downscaleStabilization": "20s"}}));
    sync(&fake);
    fake.set_now(&at(21));
    sync(&fake);
    assert_eq!(replicas(&fake), 1);
}

#[test]
fn behavior_policies_pace_the_change() {
    // At most one pod a minute up.
    let slow =
        json!({"scaleUp": {"policies": [{"type": "Pods", "value": 1, "periodSeconds": 60}]}});
    let fake = world(1, &[Some(400)], cpu_hpa(50, 1, 10, Some(slow)));
    sync(&fake);
    assert_eq!(replicas(&fake), 2);
    assert_eq!(condition(&fake, "ScalingLimited").1, "ScaleUpLimit");
    add_pod(&fake, "web-1", Some("100m"), Some(400));
    fake.set_now(&at(30));
    sync(&fake);
    assert_eq!(replicas(&fake), 2, "this minute's pod is spent");
    fake.set_now(&at(61));
    sync(&fake);
    assert_eq!(replicas(&fake), 3);
    // Disabled: never down.
    let never = json!({"scaleDown": {"selectPolicy": "Disabled", "stabilizationWindowSeconds": 0}});
    let fake = world(
        3,
        &[Some(1), Some(1), Some(1)],
        cpu_hpa(50, 1, 10, Some(never)),
    );
    sync(&fake);
    assert_eq!(replicas(&fake), 3);
    assert_eq!(condition(&fake, "ScalingLimited").1, "ScaleDownLimit");
    // Default scale-up: 4 pods or double per 15 s, whichever is more.
    let fake = world(1, &[Some(1000)], cpu_hpa(10, 1, 100, None));
    sync(&fake);
    assert_eq!(replicas(&fake), 5);
}

#[test]
fn a_pod_without_a_request_stops_scaling_with_kubes_condition() {
    let fake = world(2, &[Some(90)], cpu_hpa(50, 1, 10, None));
    add_pod(&fake, "web-1", None, Some(90));
    sync(&fake);
    assert_eq!(replicas(&fake), 2);
    assert_eq!(
        condition(&fake, "ScalingActive"),
        (
            "False".into(),
            "FailedGetResourceMetric".into(),
            "the HPA was unable to compute the replica count: failed to get cpu utilization: missing request for cpu in container app of Pod web-1".into()
        )
    );
    let ev = events(&fake);
    assert_eq!(ev[0].0, "Warning");
    assert!(ev.iter().any(|e| e.1 == "FailedGetResourceMetric"));
    assert!(ev.iter().any(|e| e.1 == "FailedComputeMetricsReplicas"));
    // The same failure again records no new Event.
    fake.set_now(&at(15));
    sync(&fake);
    assert_eq!(events(&fake).len(), ev.len());
}

#[test]
fn missing_metrics_stop_scaling() {
    let fake = world(2, &[None, None], cpu_hpa(50, 1, 10, None));
    sync(&fake);
    assert_eq!(replicas(&fake), 2);
    assert_eq!(
        condition(&fake, "ScalingActive").2,
        "the HPA was unable to compute the replica count: failed to get cpu utilization: unable to get metrics for resource cpu: no metrics returned from resource metrics API"
    );
    assert_eq!(status(&fake)["currentReplicas"], 2);
    // Once samples arrive, it scales.
    set_usage(&fake, "web-0", 100);
    set_usage(&fake, "web-1", 100);
    fake.set_now(&at(15));
    sync(&fake);
    assert_eq!(replicas(&fake), 4);
    assert_eq!(condition(&fake, "ScalingActive").1, "ValidMetricFound");
}

#[test]
fn a_missing_target_is_a_failed_get_scale() {
    let fake = world(2, &[], cpu_hpa(50, 1, 10, None));
    fake.delete::<Deployment>("default", "web").unwrap();
    sync(&fake);
    assert_eq!(
        condition(&fake, "AbleToScale"),
        (
            "False".into(),
            "FailedGetScale".into(),
            "the HPA controller was unable to get the target's current scale: deployments.apps \"web\" not found".into()
        )
    );
}

#[test]
fn memory_average_value_and_container_metrics() {
    let hpa = json!({"apiVersion": "autoscaling/v2", "kind": "HorizontalPodAutoscaler",
        "metadata": {"name": "web", "namespace": "default"},
        "spec": {"scaleTargetRef": {"apiVersion": "apps/v1", "kind": "Deployment", "name": "web"},
            "minReplicas": 1, "maxReplicas": 10, "metrics": [
                {"type": "Resource", "resource": {"name": "memory", "target": {"type": "AverageValue", "averageValue": "6Ki"}}},
                {"type": "ContainerResource", "containerResource": {"name": "cpu", "container": "app",
                    "target": {"type": "Utilization", "averageUtilization": 50}}}]}});
    // 12Ki per pod against 6Ki: 4 pods; cpu 40 % against 50 %: 2 → the larger, 4.
    let fake = world(2, &[Some(40), Some(40)], hpa);
    sync(&fake);
    assert_eq!(replicas(&fake), 4);
    let s = status(&fake);
    assert_eq!(
        s["currentMetrics"][0]["resource"]["current"]["averageValue"],
        "12288"
    );
    assert_eq!(
        s["currentMetrics"][1]["containerResource"]["current"]["averageUtilization"],
        40
    );
    assert!(
        events(&fake)[0]
            .2
            .ends_with("reason: memory resource above target")
    );
}

#[test]
fn milli_quantities_print_as_kube_does() {
    assert_eq!(milli_quantity(90).0, "90m");
    assert_eq!(milli_quantity(2000).0, "2");
    assert_eq!(milli_quantity(12_288_000).0, "12288");
    assert_eq!(milli_quantity(1_000_000_000).0, "1M");
    assert_eq!(milli_quantity(0).0, "0");
}

#[test]
fn a_target_scaled_to_zero_is_left_alone() {
    let fake = world(0, &[], cpu_hpa(50, 1, 10, None));
    sync(&fake);
    assert_eq!(replicas(&fake), 0);
    assert_eq!(fake.count(Verb::Patch, "Deployment"), 0);
    assert_eq!(
        condition(&fake, "ScalingActive"),
        (
            "False".into(),
            "ScalingDisabled".into(),
            "scaling is disabled since the replica count of the target is zero".into()
        )
    );
}
