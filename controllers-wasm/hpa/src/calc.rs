//! The replica count one resource metric asks for, as kube's `ReplicaCalculator` computes it
//! (`GetResourceReplicas`, `GetRawResourceReplicas`): pods grouped into ready, unready,
//! missing (no sample) and ignored (being deleted, failed); the ratio of the ready pods'
//! usage to the target; a second pass that counts missing pods at 100 % of their request (or
//! the target) on a scale-down and unready and missing pods at 0 on a scale-up, never
//! reversing the direction of the first pass; no change within the tolerance. Values are in
//! milli-units, as kube's `MilliValue` (millicores, milli-bytes).

use std::collections::{BTreeMap, BTreeSet};

/// What the calculation needs of one pod the target's selector picks.
#[derive(Debug, Clone, PartialEq)]
pub struct PodView {
    pub name: String,
    pub phase: String,
    pub deleting: bool,
    /// The Ready condition: whether True, and its lastTransitionTime (ms).
    pub ready: Option<(bool, Option<i64>)>,
    /// `status.startTime` (ms).
    pub start_ms: Option<i64>,
    /// The sum of the containers' requests for the resource (milli), or kube's error naming
    /// the first container without one.
    pub request: Result<i64, String>,
}

/// One pod's usage from its PodMetrics.
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct Sample {
    pub timestamp_ms: i64,
    pub window_ms: i64,
    pub value: i64,
}

/// The target of a resource metric.
#[derive(Debug, Clone, Copy, PartialEq)]
pub enum Target {
    /// Percent of the request.
    Utilization(i32),
    /// Average usage per pod (milli).
    AverageValue(i64),
}

/// The controller's knobs (kube-controller-manager's `--horizontal-pod-autoscaler-*`).
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct Knobs {
    pub tolerance: f64,
    pub cpu_initialization_ms: i64,
    pub initial_readiness_delay_ms: i64,
}

/// What a metric proposes.
#[derive(Debug, Clone, PartialEq)]
pub struct Proposal {
    pub replicas: i32,
    /// Utilization targets: the ready pods' usage in percent of their requests.
    pub utilization: Option<i32>,
    /// The average usage of the pods counted (milli).
    pub average: i64,
}

fn within(tolerance: f64, ratio: f64) -> bool {
    (1.0 - ratio).abs() <= tolerance
}

/// `groupPods`: ready count, then the unready, missing and ignored pods' names.
fn group(
    pods: &[PodView],
    metrics: &BTreeMap<String, Sample>,
    cpu: bool,
    knobs: &Knobs,
    now_ms: i64,
) -> (usize, BTreeSet<String>, BTreeSet<String>, BTreeSet<String>) {
    let (mut ready, mut unready, mut missing, mut ignored) =
        (0, BTreeSet::new(), BTreeSet::new(), BTreeSet::new());
    for p in pods {
        if p.deleting || p.phase == "Failed" {
            ignored.insert(p.name.clone());
            continue;
        }
        if p.phase == "Pending" {
            unready.insert(p.name.clone());
            continue;
        }
        let Some(m) = metrics.get(&p.name) else {
            missing.insert(p.name.clone());
            continue;
        };
        if cpu {
            let not_ready = match (p.ready, p.start_ms) {
                (Some((is_ready, transition)), Some(start)) => {
                    let transition = transition.unwrap_or(start);
                    if start + knobs.cpu_initialization_ms > now_ms {
                        // Within the initialisation period: unready, or no full window of
                        // samples since the pod became ready.
                        !is_ready || m.timestamp_ms < transition + m.window_ms
                    } else {
                        // Unready and never ready since its start.
                        !is_ready && start + knobs.initial_readiness_delay_ms > transition
                    }
                }
                _ => true,
            };
            if not_ready {
                unready.insert(p.name.clone());
                continue;
            }
        }
        ready += 1;
    }
    (ready, unready, missing, ignored)
}

/// `GetResourceUtilizationRatio`: (ratio to target, utilization %, average raw value).
fn utilization_ratio(
    metrics: &BTreeMap<String, Sample>,
    requests: &BTreeMap<String, i64>,
    target: i32,
) -> Result<(f64, i32, i64), String> {
    let (mut total, mut requested, mut n) = (0i64, 0i64, 0i64);
    for (name, m) in metrics {
        let Some(r) = requests.get(name) else {
            continue;
        };
        total += m.value;
        requested += r;
        n += 1;
    }
    if requested == 0 {
        return Err("no metrics returned matched known pods".into());
    }
    let utilization = i32::try_from(total * 100 / requested).unwrap_or(i32::MAX);
    Ok((
        f64::from(utilization) / f64::from(target),
        utilization,
        total / n,
    ))
}

/// `GetMetricUsageRatio`: (ratio to target, average value).
fn usage_ratio(metrics: &BTreeMap<String, Sample>, target: i64) -> (f64, i64) {
    let total: i64 = metrics.values().map(|m| m.value).sum();
    let n = i64::try_from(metrics.len()).unwrap_or(1).max(1);
    let average = total / n;
    (average as f64 / target as f64, average)
}

fn ceil_times(ratio: f64, n: usize) -> i32 {
    (ratio * n as f64).ceil() as i32
}

/// The replica count a resource metric asks for, given the target's current replicas, the
/// pods its selector picks and the PodMetrics samples of those pods (by pod name).
pub fn resource_replicas(
    current: i32,
    target: Target,
    resource: &str,
    pods: &[PodView],
    mut metrics: BTreeMap<String, Sample>,
    knobs: &Knobs,
    now_ms: i64,
) -> Result<Proposal, String> {
    if metrics.is_empty() {
        return Err(format!(
            "unable to get metrics for resource {resource}: no metrics returned from resource metrics API"
        ));
    }
    if pods.is_empty() {
        return Err("no pods returned by selector while calculating replica count".into());
    }
    let (ready, unready, missing, ignored) =
        group(pods, &metrics, resource == "cpu", knobs, now_ms);
    metrics.retain(|name, _| !ignored.contains(name) && !unready.contains(name));
    if metrics.is_empty() {
        return Err("did not receive metrics for targeted pods (pods might be unready)".into());
    }
    let tolerance = knobs.tolerance;
    match target {
        Target::Utilization(target) => {
            let mut requests = BTreeMap::new();
            for p in pods {
                requests.insert(p.name.clone(), p.request.clone()?);
            }
            let (ratio, utilization, average) = utilization_ratio(&metrics, &requests, target)?;
            let proposal = |replicas| Proposal {
                replicas,
                utilization: Some(utilization),
                average,
            };
            let up_with_unready = !unready.is_empty() && ratio > 1.0;
            if !up_with_unready && missing.is_empty() {
                if within(tolerance, ratio) {
                    return Ok(proposal(current));
                }
                return Ok(proposal(ceil_times(ratio, ready)));
            }
            if !missing.is_empty() {
                let fallback = i64::from(target.max(100));
                for name in &missing {
                    let value = if ratio < 1.0 {
                        requests.get(name).copied().unwrap_or(0) * fallback / 100
                    } else {
                        0
                    };
                    if ratio != 1.0 {
                        metrics.insert(
                            name.clone(),
                            Sample {
                                timestamp_ms: 0,
                                window_ms: 0,
                                value,
                            },
                        );
                    }
                }
            }
            if up_with_unready {
                for name in &unready {
                    metrics.insert(
                        name.clone(),
                        Sample {
                            timestamp_ms: 0,
                            window_ms: 0,
                            value: 0,
                        },
                    );
                }
            }
            let (new_ratio, _, _) = utilization_ratio(&metrics, &requests, target)?;
            if within(tolerance, new_ratio)
                || (ratio < 1.0 && new_ratio > 1.0)
                || (ratio > 1.0 && new_ratio < 1.0)
            {
                return Ok(proposal(current));
            }
            let replicas = ceil_times(new_ratio, metrics.len());
            if (new_ratio < 1.0 && replicas > current) || (new_ratio > 1.0 && replicas < current) {
                return Ok(proposal(current));
            }
            Ok(proposal(replicas))
        }
        Target::AverageValue(target) => {
            let (ratio, average) = usage_ratio(&metrics, target);
            let proposal = |replicas| Proposal {
                replicas,
                utilization: None,
                average,
            };
            let up_with_unready = !unready.is_empty() && ratio > 1.0;
            if !up_with_unready && missing.is_empty() {
                if within(tolerance, ratio) {
                    return Ok(proposal(current));
                }
                return Ok(proposal(ceil_times(ratio, ready)));
            }
            for name in &missing {
                let value = if ratio < 1.0 { target } else { 0 };
                metrics.insert(
                    name.clone(),
                    Sample {
                        timestamp_ms: 0,
                        window_ms: 0,
                        value,
                    },
                );
            }
            if up_with_unready {
                for name in &unready {
                    metrics.insert(
                        name.clone(),
                        Sample {
                            timestamp_ms: 0,
                            window_ms: 0,
                            value: 0,
                        },
                    );
                }
            }
            let (new_ratio, _) = usage_ratio(&metrics, target);
            if within(tolerance, new_ratio)
                || (ratio < 1.0 && new_ratio > 1.0)
                || (ratio > 1.0 && new_ratio < 1.0)
            {
                return Ok(proposal(current));
            }
            let replicas = ceil_times(new_ratio, metrics.len());
            if (new_ratio < 1.0 && replicas > current) || (new_ratio > 1.0 && replicas < current) {
                return Ok(proposal(current));
            }
            Ok(proposal(replicas))
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    const KNOBS: Knobs = Knobs {
        tolerance: 0.1,
        cpu_initialization_ms: 300_000,
        initial_readiness_delay_ms: 30_000,
    };
    const NOW: i64 = 10_000_000;

    fn pod(name: &str, request: i64) -> PodView {
        PodView {
            name: name.into(),
            phase: "Running".into(),
            deleting: false,
            ready: Some((true, Some(NOW - 3_600_000))),
            start_ms: Some(NOW - 3_600_000),
            request: Ok(request),
        }
    }

    fn samples(values: &[(&str, i64)]) -> BTreeMap<String, Sample> {
        values
            .iter()
            .map(|(n, v)| {
                (
                    n.to_string(),
                    Sample {
                        timestamp_ms: NOW - 1000,
                        window_ms: 15_000,
                        value: *v,
                    },
                )
            })
            .collect()
    }

    fn replicas(
        current: i32,
        target: Target,
        pods: &[PodView],
        m: &[(&str, i64)],
    ) -> Result<Proposal, String> {
        resource_replicas(current, target, "cpu", pods, samples(m), &KNOBS, NOW)
    }

    #[test]
    fn utilization_above_target_scales_up_by_the_ratio() {
        let pods = [pod("a", 100), pod("b", 100)];
        // 90 % against 50 %: ceil(2 × 1.8) = 4.
        let p = replicas(2, Target::Utilization(50), &pods, &[("a", 90), ("b", 90)]).unwrap();
        assert_eq!((p.replicas, p.utilization, p.average), (4, Some(90), 90));
        // Below: 10 % of 50 % → ceil(2 × 0.2) = 1.
        let p = replicas(2, Target::Utilization(50), &pods, &[("a", 10), ("b", 10)]).unwrap();
        assert_eq!(p.replicas, 1);
    }

    #[test]
    fn within_tolerance_keeps_the_count() {
        let pods = [pod("a", 100), pod("b", 100)];
        // 54 % / 50 % = 1.08: within 10 %.
        let p = replicas(2, Target::Utilization(50), &pods, &[("a", 54), ("b", 54)]).unwrap();
        assert_eq!(p.replicas, 2);
        // 56 % / 50 % = 1.12: out of it.
        let p = replicas(2, Target::Utilization(50), &pods, &[("a", 56), ("b", 56)]).unwrap();
        assert_eq!(p.replicas, 3);
        // A custom tolerance.
        let wide = Knobs {
            tolerance: 0.2,
            ..KNOBS
        };
        let p = resource_replicas(
            2,
            Target::Utilization(50),
            "cpu",
            &pods,
            samples(&[("a", 56), ("b", 56)]),
            &wide,
            NOW,
        )
        .unwrap();
        assert_eq!(p.replicas, 2);
    }

    #[test]
    fn missing_requests_and_missing_metrics_are_errors_in_kubes_words() {
        let mut no_request = pod("b", 0);
        no_request.request = Err("missing request for cpu in container app of Pod b".into());
        let e = replicas(
            2,
            Target::Utilization(50),
            &[pod("a", 100), no_request],
            &[("a", 90), ("b", 90)],
        )
        .unwrap_err();
        assert_eq!(e, "missing request for cpu in container app of Pod b");
        let e = replicas(2, Target::Utilization(50), &[pod("a", 100)], &[]).unwrap_err();
        assert_eq!(
            e,
            "unable to get metrics for resource cpu: no metrics returned from resource metrics API"
        );
    }

    #[test]
    fn missing_samples_count_conservatively() {
        let pods = [pod("a", 100), pod("b", 100)];
        // Scale-down with a pod without sample: it counts as 100 % → (10+100)/200 = 55 % ≈ 1.1
        // of the target: within tolerance, keep 2.
        let p = replicas(2, Target::Utilization(50), &pods, &[("a", 10)]).unwrap();
        assert_eq!(p.replicas, 2);
        // Scale-up with one: it counts as 0 → (200+0)/200 = 100 % → ceil(2 × 2) = 4.
        let p = replicas(2, Target::Utilization(50), &pods, &[("a", 200)]).unwrap();
        assert_eq!(p.replicas, 4);
    }

    #[test]
    fn unready_pods_do_not_drive_a_scale_up() {
        let mut starting = pod("b", 100);
        starting.phase = "Pending".into();
        let pods = [pod("a", 100), starting];
        // a alone is at 100 % of 50 %; b counts as 0 on the way up: 50 % → no change.
        let p = replicas(2, Target::Utilization(50), &pods, &[("a", 100)]).unwrap();
        assert_eq!(p.replicas, 2);
    }

    #[test]
    fn average_value_targets() {
        let pods = [pod("a", 0), pod("b", 0)];
        let p = replicas(
            2,
            Target::AverageValue(100),
            &pods,
            &[("a", 300), ("b", 300)],
        )
        .unwrap();
        assert_eq!((p.replicas, p.utilization, p.average), (6, None, 300));
    }
}
