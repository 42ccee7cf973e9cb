//! The HorizontalPodAutoscaler controller as a kedge plugin: kube's horizontal controller
//! (`pkg/controller/podautoscaler`) over the resource metrics API.
//!
//! Every sync period (15 s; see [`config`]) and on every change of an HPA, for its target
//! (an apps/v1 Deployment, ReplicaSet or StatefulSet):
//! - the target's scale: `spec.replicas` and its selector (`AbleToScale`:
//!   `SucceededGetScale`, or `FailedGetScale` with a Warning);
//! - per metric (`Resource` or `ContainerResource`, `cpu` or `memory`), the replicas it asks
//!   for from the selected pods' `metrics.k8s.io/v1beta1` PodMetrics and their containers'
//!   requests ([`calc`]); the largest proposal wins (`ScalingActive`: `ValidMetricFound`, or
//!   `FailedGetResourceMetric` with kube's message, e.g. a pod without a request);
//! - the stabilisation windows, the `behavior` policies (kube's defaults without one) and
//!   `minReplicas`/`maxReplicas` ([`behavior`]; `ScalingLimited`: `DesiredWithinRange`,
//!   `TooManyReplicas`, `TooFewReplicas`, `ScaleUpLimit`, `ScaleDownLimit`);
//! - a new count is written to the target's `spec.replicas` (a merge patch conditional on
//!   the resourceVersion read, what its `/scale` does), with the Normal Event
//!   `SuccessfulRescale` `New size: N; reason: cpu resource utilization (percentage of
//!   request) above target`;
//! - the status: `currentReplicas`, `desiredReplicas`, `lastScaleTime`, `currentMetrics`,
//!   the conditions, `observedGeneration`.
//!
//! Warning Events (`FailedGetScale`, `FailedGetResourceMetric`, `FailedComputeMetricsReplicas`,
//! `FailedRescale`) are recorded when the condition they explain changes, not at every sync
//! (kube's recorder folds the repeats into a count; a plugin's Events are separate objects).

pub mod behavior;
pub mod calc;
pub mod config;

use std::collections::{BTreeMap, BTreeSet};

use k8s_openapi::api::apps::v1::{Deployment, ReplicaSet, StatefulSet};
use k8s_openapi::api::autoscaling::v2::{
    ContainerResourceMetricStatus, HorizontalPodAutoscaler, HorizontalPodAutoscalerCondition,
    HorizontalPodAutoscalerStatus, MetricSpec, MetricStatus, MetricValueStatus,
    ResourceMetricStatus,
};
use k8s_openapi::api::core::v1::{ConfigMap, Event, Pod};
use k8s_openapi::apimachinery::pkg::api::resource::Quantity;
use k8s_openapi::apimachinery::pkg::apis::meta::v1::Time;
use kedge_guest::quantity::{parse_bytes, parse_cpu_millis};
use kedge_guest::selector::Selector;
use kedge_guest::{
    Cluster, ClusterExt, Controller, KindRef, ObjectKey, Outcome, Registration, Result,
};
use serde_json::{Value, json};

use behavior::{HISTORY_ANNOTATION, History, Rules};
use calc::{Knobs, PodView, Sample, Target};
use config::Config;

/// The Events' source, as Kubernetes' controller names it.
pub const COMPONENT: &str = "horizontal-pod-autoscaler";
/// The resource metrics API's pod kind.
pub const POD_METRICS_API: &str = "metrics.k8s.io/v1beta1";
pub const POD_METRICS: &str = "PodMetrics";

pub struct HpaController;

impl Controller for HpaController {
    fn registration() -> Registration {
        Registration::new("hpa", KindRef::of::<HorizontalPodAutoscaler>())
            .reads([
                KindRef::of::<Deployment>(),
                KindRef::of::<ReplicaSet>(),
                KindRef::of::<StatefulSet>(),
                KindRef::of::<Pod>(),
                KindRef::of::<ConfigMap>(),
                KindRef::new(POD_METRICS_API, POD_METRICS),
            ])
            .writes([
                KindRef::of::<HorizontalPodAutoscaler>(),
                KindRef::of::<Deployment>(),
                KindRef::of::<ReplicaSet>(),
                KindRef::of::<StatefulSet>(),
                KindRef::of::<Event>(),
            ])
    }

    fn reconcile(cluster: &dyn Cluster, key: &ObjectKey) -> Result<Outcome> {
        reconcile(cluster, key)
    }
}

kedge_guest::export_controller!(HpaController);

/// The target's `/scale`, read from the workload.
struct Scale {
    kind: String,
    name: String,
    replicas: i32,
    selector: String,
    resource_version: String,
}

fn plural(kind: &str) -> String {
    format!("{}s", kind.to_lowercase())
}

fn read_scale(
    cluster: &dyn Cluster,
    ns: &str,
    kind: &str,
    name: &str,
) -> std::result::Result<Scale, String> {
    let not_found = || format!("{}.apps \"{name}\" not found", plural(kind));
    if !matches!(kind, "Deployment" | "ReplicaSet" | "StatefulSet") {
        return Err(format!("no matches for kind \"{kind}\" in group \"apps\""));
    }
    let obj = cluster
        .get_object("apps/v1", kind, ns, name)
        .map_err(|e| format!("{e:?}"))?
        .ok_or_else(not_found)?;
    let selector = match obj.pointer("/spec/selector") {
        Some(s) if !s.is_null() => Selector::from_structured(s)
            .map_err(|e| format!("{e}"))?
            .to_string(),
        _ => String::new(),
    };
    Ok(Scale {
        kind: kind.to_string(),
        name: name.to_string(),
        replicas: obj
            .pointer("/spec/replicas")
            .and_then(Value::as_i64)
            .map_or(1, |n| i32::try_from(n).unwrap_or(i32::MAX)),
        selector,
        resource_version: obj
            .pointer("/metadata/resourceVersion")
            .and_then(Value::as_str)
            .unwrap_or_default()
            .to_string(),
    })
}

fn time_ms(t: &Time) -> i64 {
    t.0.as_millisecond()
}

fn now_ms(cluster: &dyn Cluster) -> i64 {
    kedge_guest::meta::parse_time(&cluster.now()).map_or(0, |t| time_ms(&t))
}

fn time_of(ms: i64) -> Option<Time> {
    jiff::Timestamp::from_millisecond(ms).ok().map(Time)
}

/// A quantity in milli-units (kube's `MilliValue`): millicores, milli-bytes.
fn milli(resource: &str, q: &str) -> Option<i64> {
    let v = if resource == "cpu" {
        parse_cpu_millis(q).ok()?
    } else {
        parse_bytes(q).ok()?.checked_mul(1000)?
    };
    i64::try_from(v).ok()
}

/// `resource.NewMilliQuantity(v, DecimalSI).String()`.
fn milli_quantity(v: i64) -> Quantity {
    if v % 1000 != 0 {
        return Quantity(format!("{v}m"));
    }
    let mut n = v / 1000;
    for suffix in ["", "k", "M", "G", "T", "P"] {
        if n % 1000 != 0 || n == 0 {
            return Quantity(format!("{n}{suffix}"));
        }
        n /= 1000;
    }
    Quantity(format!("{n}E"))
}

/// One pod as [`calc`] sees it, for `resource` (of `container` only, if named).
fn pod_view(pod: &Pod, resource: &str, container: Option<&str>) -> PodView {
    let name = pod.metadata.name.clone().unwrap_or_default();
    let status = pod.status.clone().unwrap_or_default();
    let ready = status
        .conditions
        .as_ref()
        .and_then(|cs| cs.iter().find(|c| c.type_ == "Ready"))
        .map(|c| {
            (
                c.status == "True",
                c.last_transition_time.as_ref().map(time_ms),
            )
        });
    let mut request = Ok(0i64);
    if let Some(spec) = &pod.spec {
        let sidecars = spec
            .init_containers
            .iter()
            .flatten()
            .filter(|c| c.restart_policy.as_deref() == Some("Always"));
        for c in spec.containers.iter().chain(sidecars) {
            if container.is_some_and(|want| want != c.name) {
                continue;
            }
            let r = c
                .resources
                .as_ref()
                .and_then(|r| r.requests.as_ref())
                .and_then(|r| r.get(resource))
                .and_then(|q| milli(resource, &q.0));
            match (r, &mut request) {
                (Some(v), Ok(sum)) => *sum += v,
                (None, Ok(_)) => {
                    request = Err(format!(
                        "missing request for {resource} in container {} of Pod {name}",
                        c.name
                    ));
                }
                _ => {}
            }
        }
    }
    PodView {
        name,
        phase: status.phase.unwrap_or_default(),
        deleting: pod.metadata.deletion_timestamp.is_some(),
        ready,
        start_ms: status.start_time.as_ref().map(time_ms),
        request,
    }
}

/// The PodMetrics samples of `pods` for `resource` (`getPodMetrics`/`getContainerMetrics`):
/// a pod with a container lacking the resource, or without containers, has no sample.
fn samples(
    metrics: &[Value],
    pods: &BTreeSet<String>,
    resource: &str,
    container: Option<&str>,
) -> BTreeMap<String, Sample> {
    let mut out = BTreeMap::new();
    for m in metrics {
        let name = m
            .pointer("/metadata/name")
            .and_then(Value::as_str)
            .unwrap_or_default();
        if !pods.contains(name) {
            continue;
        }
        let containers = m["containers"].as_array().cloned().unwrap_or_default();
        let usage = |c: &Value| {
            c["usage"][resource]
                .as_str()
                .and_then(|q| milli(resource, q))
        };
        let value = match container {
            Some(want) => containers
                .iter()
                .find(|c| c["name"] == want)
                .and_then(usage),
            None if containers.is_empty() => None,
            None => containers
                .iter()
                .map(usage)
                .try_fold(0i64, |sum, v| v.map(|v| sum + v)),
        };
        let Some(value) = value else { continue };
        let timestamp_ms = m["timestamp"]
            .as_str()
            .and_then(kedge_guest::meta::parse_time)
            .map_or(0, |t| time_ms(&t));
        let window_ms = m["window"]
            .as_str()
            .and_then(config::parse_duration_ms)
            .unwrap_or(0);
        out.insert(
            name.to_string(),
            Sample {
                timestamp_ms,
                window_ms,
                value,
            },
        );
    }
    out
}

/// What one metric gave: its proposal, its name for Events, its status; or the condition
/// reason and the error.
struct MetricOutcome {
    replicas: i32,
    name: String,
    status: MetricStatus,
}

/// `computeStatusForResourceMetricGeneric` for one metric spec.
fn compute_metric(
    spec: &MetricSpec,
    current: i32,
    pods: &[Pod],
    metrics: &std::result::Result<Vec<Value>, String>,
    knobs: &Knobs,
    now: i64,
) -> std::result::Result<MetricOutcome, (&'static str, String)> {
    let (resource, container, target, reason) = match spec.type_.as_str() {
        "Resource" => {
            let Some(r) = &spec.resource else {
                return Err((
                    "FailedGetResourceMetric",
                    "missing resource metric source".into(),
                ));
            };
            (r.name.as_str(), None, &r.target, "FailedGetResourceMetric")
        }
        "ContainerResource" => {
            let Some(r) = &spec.container_resource else {
                return Err((
                    "FailedGetContainerResourceMetric",
                    "missing container resource metric source".into(),
                ));
            };
            (
                r.name.as_str(),
                Some(r.container.as_str()),
                &r.target,
                "FailedGetContainerResourceMetric",
            )
        }
        other => {
            return Err((
                "InvalidMetricSourceType",
                format!("unknown metric source type \"{other}\""),
            ));
        }
    };
    let raw = target
        .average_value
        .as_ref()
        .and_then(|q| milli(resource, &q.0));
    let target_kind = match (raw, target.average_utilization) {
        (Some(v), _) => Target::AverageValue(v),
        (None, Some(u)) => Target::Utilization(u),
        (None, None) => {
            return Err((
                reason,
                "invalid resource metric source: neither an average utilization target nor an average value (usage) target was set".into(),
            ));
        }
    };
    let what = if matches!(target_kind, Target::AverageValue(_)) {
        "usage"
    } else {
        "utilization"
    };
    let fail = |e: String| (reason, format!("failed to get {resource} {what}: {e}"));
    let metrics = metrics
        .as_ref()
        .map_err(|e| fail(format!("unable to get metrics for resource {resource}: unable to fetch metrics from resource metrics API: {e}")))?;
    let views: Vec<PodView> = pods
        .iter()
        .map(|p| pod_view(p, resource, container))
        .collect();
    let names: BTreeSet<String> = views.iter().map(|p| p.name.clone()).collect();
    let samples = samples(metrics, &names, resource, container);
    let p = calc::resource_replicas(current, target_kind, resource, &views, samples, knobs, now)
        .map_err(fail)?;
    let value = MetricValueStatus {
        average_utilization: p.utilization,
        average_value: Some(milli_quantity(p.average)),
        value: None,
    };
    let (name, status) = match container {
        None => (
            if p.utilization.is_some() {
                format!("{resource} resource utilization (percentage of request)")
            } else {
                format!("{resource} resource")
            },
            MetricStatus {
                type_: "Resource".into(),
                resource: Some(ResourceMetricStatus {
                    name: resource.into(),
                    current: value,
                }),
                ..Default::default()
            },
        ),
        Some(c) => (
            if p.utilization.is_some() {
                format!("{resource} container resource utilization (percentage of request)")
            } else {
                format!("{resource} container resource")
            },
            MetricStatus {
                type_: "ContainerResource".into(),
                container_resource: Some(ContainerResourceMetricStatus {
                    name: resource.into(),
                    container: c.into(),
                    current: value,
                }),
                ..Default::default()
            },
        ),
    };
    Ok(MetricOutcome {
        replicas: p.replicas,
        name,
        status,
    })
}

/// kube's `setConditionInList`: the transition time moves only with the status. Returns
/// whether the reason or message changed (an Event is due).
fn set_condition(
    conds: &mut Vec<HorizontalPodAutoscalerCondition>,
    type_: &str,
    status: bool,
    reason: &str,
    message: &str,
    now: i64,
) -> bool {
    let status = if status { "True" } else { "False" };
    let i = match conds.iter().position(|c| c.type_ == type_) {
        Some(i) => i,
        None => {
            conds.push(HorizontalPodAutoscalerCondition {
                type_: type_.into(),
                ..Default::default()
            });
            conds.len() - 1
        }
    };
    let c = &mut conds[i];
    let changed = c.status != status
        || c.reason.as_deref() != Some(reason)
        || c.message.as_deref() != Some(message);
    if c.status != status {
        c.last_transition_time = time_of(now);
    }
    c.status = status.into();
    c.reason = Some(reason.into());
    c.message = Some(message.into());
    changed
}

/// One sync of an HPA.
pub fn reconcile(cluster: &dyn Cluster, key: &ObjectKey) -> Result<Outcome> {
    let ns = key.namespace.as_str();
    let Some(hpa) = cluster.get::<HorizontalPodAutoscaler>(ns, &key.name)? else {
        return Ok(Outcome::done());
    };
    if hpa.metadata.deletion_timestamp.is_some() {
        return Ok(Outcome::done());
    }
    let cfg = Config::read(cluster);
    let requeue = Outcome::requeue_after_ms(u64::try_from(cfg.sync_period_ms).unwrap_or(15_000));
    let now = now_ms(cluster);
    let spec = hpa.spec.clone().unwrap_or_default();
    let old_status = hpa.status.clone().unwrap_or_default();
    let mut conds = old_status.conditions.clone().unwrap_or_default();
    let history_text = hpa
        .metadata
        .annotations
        .as_ref()
        .and_then(|a| a.get(HISTORY_ANNOTATION));
    let mut history = History::parse(history_text.map(String::as_str));
    let warn = |reason: &str, message: &str| {
        let _ = cluster.record_event(&hpa, "Warning", reason, message, COMPONENT);
    };
    let write_status = |status: HorizontalPodAutoscalerStatus| -> Result<()> {
        cluster.update_status_if_changed(ns, &hpa, status)?;
        Ok(())
    };

    let target = &spec.scale_target_ref;
    let scale = match read_scale(cluster, ns, &target.kind, &target.name) {
        Ok(s) => s,
        Err(e) => {
            let message =
                format!("the HPA controller was unable to get the target's current scale: {e}");
            if set_condition(
                &mut conds,
                "AbleToScale",
                false,
                "FailedGetScale",
                &message,
                now,
            ) {
                warn("FailedGetScale", &e);
            }
            write_status(HorizontalPodAutoscalerStatus {
                conditions: Some(conds),
                ..old_status.clone()
            })?;
            return Ok(requeue);
        }
    };
    set_condition(
        &mut conds,
        "AbleToScale",
        true,
        "SucceededGetScale",
        "the HPA controller was able to get the target's current scale",
        now,
    );
    let current = scale.replicas;
    history.record_initial(current, now);
    let min = spec.min_replicas.unwrap_or(1);
    let max = spec.max_replicas;
    let behavior = spec
        .behavior
        .as_ref()
        .map(|b| serde_json::to_value(b).unwrap_or(Value::Null));
    let up = Rules::from_spec(
        behavior.as_ref().and_then(|b| b.get("scaleUp")),
        Rules::default_up(),
    );
    let down = Rules::from_spec(
        behavior.as_ref().and_then(|b| b.get("scaleDown")),
        Rules::default_down(cfg.downscale_stabilization_s),
    );

    let mut statuses: Option<Vec<MetricStatus>> = None;
    let (desired, reason, rescale) = if current == 0 && min != 0 {
        set_condition(
            &mut conds,
            "ScalingActive",
            false,
            "ScalingDisabled",
            "scaling is disabled since the replica count of the target is zero",
            now,
        );
        (0, String::new(), false)
    } else if current > max {
        (
            max,
            "Current number of replicas above Spec.MaxReplicas".to_string(),
            true,
        )
    } else if current < min {
        (
            min,
            "Current number of replicas below Spec.MinReplicas".to_string(),
            true,
        )
    } else {
        // `computeReplicasForMetrics`.
        if scale.selector.is_empty() {
            if set_condition(
                &mut conds,
                "ScalingActive",
                false,
                "InvalidSelector",
                "the HPA target's scale is missing a selector",
                now,
            ) {
                warn("SelectorRequired", "selector is required");
            }
            write_status(HorizontalPodAutoscalerStatus {
                current_replicas: Some(current),
                conditions: Some(conds),
                ..old_status.clone()
            })?;
            return Ok(requeue);
        }
        let pods = cluster.list::<Pod>(ns, &scale.selector)?;
        let metrics = cluster
            .list_objects(POD_METRICS_API, POD_METRICS, ns, "")
            .map_err(|e| format!("{e:?}"));
        let knobs = Knobs {
            tolerance: cfg.tolerance,
            cpu_initialization_ms: cfg.cpu_initialization_ms,
            initial_readiness_delay_ms: cfg.initial_readiness_delay_ms,
        };
        let specs = spec.metrics.clone().unwrap_or_default();
        let mut metric_statuses = vec![MetricStatus::default(); specs.len()];
        let (mut proposed, mut metric_name) = (0, String::new());
        let mut first_error: Option<(&'static str, String)> = None;
        let mut invalid = 0;
        for (i, m) in specs.iter().enumerate() {
            match compute_metric(m, current, &pods, &metrics, &knobs, now) {
                Ok(o) => {
                    if proposed == 0 || o.replicas > proposed {
                        proposed = o.replicas;
                        metric_name = o.name;
                    }
                    metric_statuses[i] = o.status;
                }
                Err(e) => {
                    invalid += 1;
                    first_error.get_or_insert(e);
                }
            }
        }
        statuses = Some(metric_statuses);
        if invalid > 0 && (invalid >= specs.len() || proposed < current) {
            let (why, e) = first_error.unwrap_or(("FailedGetResourceMetric", String::new()));
            let message = format!("the HPA was unable to compute the replica count: {e}");
            if set_condition(&mut conds, "ScalingActive", false, why, &message, now) {
                warn(why, &e);
                warn(
                    "FailedComputeMetricsReplicas",
                    &format!(
                        "invalid metrics ({invalid} invalid out of {}), first error is: {e}",
                        specs.len()
                    ),
                );
            }
            write_status(HorizontalPodAutoscalerStatus {
                current_replicas: Some(current),
                current_metrics: statuses.filter(|s| !s.is_empty()),
                conditions: Some(conds),
                ..old_status.clone()
            })?;
            save_history(cluster, ns, &hpa, history_text, &history)?;
            return Ok(requeue);
        }
        set_condition(
            &mut conds,
            "ScalingActive",
            true,
            "ValidMetricFound",
            &format!(
                "the HPA was able to successfully calculate a replica count from {metric_name}"
            ),
            now,
        );
        let reason = if proposed > current {
            format!("{metric_name} above target")
        } else if proposed < current {
            "All metrics below target".to_string()
        } else {
            String::new()
        };
        let n = behavior::normalize(&mut history, &up, &down, current, proposed, (min, max), now);
        set_condition(
            &mut conds,
            "AbleToScale",
            true,
            n.able_reason,
            n.able_message,
            now,
        );
        set_condition(
            &mut conds,
            "ScalingLimited",
            n.limited,
            n.limited_reason,
            n.limited_message,
            now,
        );
        (n.replicas, reason, n.replicas != current)
    };

    let mut last_scale_time = old_status.last_scale_time.clone();
    let desired = if rescale {
        let patch = json!({"metadata": {"resourceVersion": scale.resource_version},
            "spec": {"replicas": desired}});
        match cluster.patch_object("apps/v1", &scale.kind, ns, &scale.name, &patch) {
            Ok(_) => {
                set_condition(
                    &mut conds,
                    "AbleToScale",
                    true,
                    "SucceededRescale",
                    &format!("the HPA controller was able to update the target scale to {desired}"),
                    now,
                );
                let _ = cluster.record_event(
                    &hpa,
                    "Normal",
                    "SuccessfulRescale",
                    &format!("New size: {desired}; reason: {reason}"),
                    COMPONENT,
                );
                history.record_scale(current, desired, now, &up, &down);
                last_scale_time = time_of(now);
                desired
            }
            Err(e) => {
                let e = format!("{e:?}");
                let message =
                    format!("the HPA controller was unable to update the target scale: {e}");
                if set_condition(
                    &mut conds,
                    "AbleToScale",
                    false,
                    "FailedUpdateScale",
                    &message,
                    now,
                ) {
                    warn(
                        "FailedRescale",
                        &format!("New size: {desired}; reason: {reason}; error: {e}"),
                    );
                }
                write_status(HorizontalPodAutoscalerStatus {
                    current_replicas: Some(current),
                    current_metrics: statuses.filter(|s| !s.is_empty()),
                    conditions: Some(conds),
                    ..old_status.clone()
                })?;
                save_history(cluster, ns, &hpa, history_text, &history)?;
                return Ok(requeue);
            }
        }
    } else {
        current
    };
    write_status(HorizontalPodAutoscalerStatus {
        current_replicas: Some(current),
        desired_replicas: desired,
        last_scale_time,
        current_metrics: statuses.filter(|s| !s.is_empty()),
        conditions: Some(conds),
        observed_generation: hpa.metadata.generation,
    })?;
    save_history(cluster, ns, &hpa, history_text, &history)?;
    Ok(requeue)
}

/// Writes the history annotation when it changed (after the status: a merge patch is not
/// conditional, so the status write's resourceVersion precondition is unaffected).
fn save_history(
    cluster: &dyn Cluster,
    ns: &str,
    hpa: &HorizontalPodAutoscaler,
    before: Option<&String>,
    history: &History,
) -> Result<()> {
    let text = history.render();
    if before.is_some_and(|b| *b == text) {
        return Ok(());
    }
    let name = hpa.metadata.name.as_deref().unwrap_or_default();
    let patch = json!({"metadata": {"annotations": {HISTORY_ANNOTATION: text}}});
    match cluster.patch_object(
        "autoscaling/v2",
        "HorizontalPodAutoscaler",
        ns,
        name,
        &patch,
    ) {
        Ok(_) | Err(kedge_guest::ApiError::NotFound(_)) => Ok(()),
        Err(e) => Err(e.into()),
    }
}

#[cfg(test)]
mod tests;
