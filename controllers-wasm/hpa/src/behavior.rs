//! From the metrics' proposal to the replica count written, as kube's
//! `normalizeDesiredReplicasWithBehaviors`: the stabilisation windows (the highest
//! recommendation of the scale-down window, the lowest of the scale-up window, bounding the
//! proposal from the current count), then the scaling policies (how many pods, or what percent,
//! may be added or removed per period, counting the scale events of that period; `Max`
//! picks the policy allowing the largest change, `Min` the smallest, `Disabled` none), then
//! `minReplicas`/`maxReplicas`.
//!
//! kube keeps the recommendations and scale events in the controller's memory. A plugin
//! instance is fresh for every reconcile, so they live in the HPA itself, in the annotation
//! [`HISTORY_ANNOTATION`], written only when they change: a recommendation is kept as a run
//! of equal recommendations (the value, and the time the run ended — the time it was
//! replaced, at most one sync period after kube's last sample of it), so a steady
//! recommendation writes nothing. Runs and events past every window and period are dropped.

use serde_json::{Value, json};

/// Where the recommendations and scale events live.
pub const HISTORY_ANNOTATION: &str = "autoscaling.kedge.io/history";

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Select {
    Max,
    Min,
    Disabled,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum PolicyType {
    Pods,
    Percent,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Policy {
    pub ty: PolicyType,
    pub value: i32,
    pub period_s: i64,
}

/// One direction's rules, defaults filled in.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Rules {
    pub stabilization_s: i64,
    pub select: Select,
    pub policies: Vec<Policy>,
}

impl Rules {
    /// kube's default scale-up: no stabilisation, the larger of 4 pods and 100 % per 15 s.
    pub fn default_up() -> Self {
        Rules {
            stabilization_s: 0,
            select: Select::Max,
            policies: vec![
                Policy {
                    ty: PolicyType::Pods,
                    value: 4,
                    period_s: 15,
                },
                Policy {
                    ty: PolicyType::Percent,
                    value: 100,
                    period_s: 15,
                },
            ],
        }
    }

    /// kube's default scale-down: 100 % per 15 s after the controller's window.
    pub fn default_down(window_s: i64) -> Self {
        Rules {
            stabilization_s: window_s,
            select: Select::Max,
            policies: vec![Policy {
                ty: PolicyType::Percent,
                value: 100,
                period_s: 15,
            }],
        }
    }

    /// The rules of `spec.behavior.<dir>` over `defaults` (what the API left unset).
    pub fn from_spec(spec: Option<&Value>, mut defaults: Rules) -> Rules {
        let Some(spec) = spec.filter(|v| v.is_object()) else {
            return defaults;
        };
        if let Some(w) = spec["stabilizationWindowSeconds"].as_i64() {
            defaults.stabilization_s = w;
        }
        match spec["selectPolicy"].as_str() {
            Some("Min") => defaults.select = Select::Min,
            Some("Disabled") => defaults.select = Select::Disabled,
            Some("Max") => defaults.select = Select::Max,
            _ => {}
        }
        if let Some(ps) = spec["policies"].as_array() {
            defaults.policies = ps
                .iter()
                .filter_map(|p| {
                    let ty = match p["type"].as_str()? {
                        "Pods" => PolicyType::Pods,
                        "Percent" => PolicyType::Percent,
                        _ => return None,
                    };
                    Some(Policy {
                        ty,
                        value: i32::try_from(p["value"].as_i64()?).ok()?,
                        period_s: p["periodSeconds"].as_i64()?,
                    })
                })
                .collect();
        }
        defaults
    }

    fn longest_period_ms(&self) -> i64 {
        self.policies.iter().map(|p| p.period_s).max().unwrap_or(0) * 1000
    }
}

/// A run of equal recommendations: the value, and when it was last known current.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Run {
    pub replicas: i32,
    pub until_ms: i64,
}

/// A rescale: by how many pods, when.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct ScaleEvent {
    pub change: i32,
    pub at_ms: i64,
}

/// The state kube keeps in memory per HPA.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct History {
    /// Oldest first; the last one is the current recommendation's run.
    pub runs: Vec<Run>,
    pub up: Vec<ScaleEvent>,
    pub down: Vec<ScaleEvent>,
}

fn ts(ms: i64) -> String {
    jiff::Timestamp::from_millisecond(ms).map_or_else(|_| ms.to_string(), |t| t.to_string())
}

fn parse_ts(v: &Value) -> Option<i64> {
    v.as_str()?
        .parse::<jiff::Timestamp>()
        .ok()
        .map(|t| t.as_millisecond())
}

impl History {
    /// From the annotation's JSON; anything unreadable is an empty history (as after a kube
    /// controller restart).
    pub fn parse(text: Option<&str>) -> History {
        let Some(v) = text.and_then(|t| serde_json::from_str::<Value>(t).ok()) else {
            return History::default();
        };
        let pairs = |key: &str| -> Vec<(i32, i64)> {
            v[key]
                .as_array()
                .into_iter()
                .flatten()
                .filter_map(|p| {
                    Some((
                        i32::try_from(p.get(0)?.as_i64()?).ok()?,
                        parse_ts(p.get(1)?)?,
                    ))
                })
                .collect()
        };
        History {
            runs: pairs("recommendations")
                .into_iter()
                .map(|(replicas, until_ms)| Run { replicas, until_ms })
                .collect(),
            up: pairs("scaleUp")
                .into_iter()
                .map(|(change, at_ms)| ScaleEvent { change, at_ms })
                .collect(),
            down: pairs("scaleDown")
                .into_iter()
                .map(|(change, at_ms)| ScaleEvent { change, at_ms })
                .collect(),
        }
    }

    /// The annotation's JSON.
    pub fn render(&self) -> String {
        json!({
            "recommendations": self.runs.iter().map(|r| json!([r.replicas, ts(r.until_ms)])).collect::<Vec<_>>(),
            "scaleUp": self.up.iter().map(|e| json!([e.change, ts(e.at_ms)])).collect::<Vec<_>>(),
            "scaleDown": self.down.iter().map(|e| json!([e.change, ts(e.at_ms)])).collect::<Vec<_>>(),
        })
        .to_string()
    }

    /// kube's `recordInitialRecommendation`: a new HPA (or one whose history was lost) starts
    /// with the current count as its recommendation.
    pub fn record_initial(&mut self, current: i32, now_ms: i64) {
        if self.runs.is_empty() {
            self.runs.push(Run {
                replicas: current,
                until_ms: now_ms,
            });
        }
    }

    /// kube's `storeScaleEvent`: a rescale from `from` to `to`, events past the direction's
    /// longest period dropped.
    pub fn record_scale(&mut self, from: i32, to: i32, now_ms: i64, up: &Rules, down: &Rules) {
        let (list, rules) = if to > from {
            (&mut self.up, up)
        } else {
            (&mut self.down, down)
        };
        let cutoff = now_ms - rules.longest_period_ms();
        list.retain(|e| e.at_ms > cutoff);
        list.push(ScaleEvent {
            change: (to - from).abs(),
            at_ms: now_ms,
        });
    }
}

/// What [`normalize`] decided, with the conditions' reasons and messages.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Normalized {
    pub replicas: i32,
    /// `AbleToScale` (True): `ReadyForNewScale`, `ScaleUpStabilized` or `ScaleDownStabilized`.
    pub able_reason: &'static str,
    pub able_message: &'static str,
    /// `ScalingLimited`: whether the rules changed the stabilised count, and why.
    pub limited: bool,
    pub limited_reason: &'static str,
    pub limited_message: &'static str,
}

/// Sum of the changes of `events` within the last `period_s` (`getReplicasChangePerPeriod`).
fn change_in_period(period_s: i64, events: &[ScaleEvent], now_ms: i64) -> i32 {
    let cutoff = now_ms - period_s * 1000;
    events
        .iter()
        .filter(|e| e.at_ms > cutoff)
        .map(|e| e.change)
        .sum()
}

/// `calculateScaleUpLimitWithScalingRules`.
fn scale_up_limit(current: i32, h: &History, rules: &Rules, now_ms: i64) -> i32 {
    let pick: fn(i32, i32) -> i32 = match rules.select {
        Select::Disabled => return current,
        Select::Min => i32::min,
        Select::Max => i32::max,
    };
    let mut result = if rules.select == Select::Min {
        i32::MAX
    } else {
        i32::MIN
    };
    for p in &rules.policies {
        let start = current - change_in_period(p.period_s, &h.up, now_ms)
            + change_in_period(p.period_s, &h.down, now_ms);
        let proposed = match p.ty {
            PolicyType::Pods => start + p.value,
            PolicyType::Percent => {
                (f64::from(start) * (1.0 + f64::from(p.value) / 100.0)).ceil() as i32
            }
        };
        result = pick(result, proposed);
    }
    result
}

/// `calculateScaleDownLimitWithBehaviors`.
fn scale_down_limit(current: i32, h: &History, rules: &Rules, now_ms: i64) -> i32 {
    let pick: fn(i32, i32) -> i32 = match rules.select {
        Select::Disabled => return current,
        Select::Min => i32::max,
        Select::Max => i32::min,
    };
    let mut result = if rules.select == Select::Min {
        i32::MIN
    } else {
        i32::MAX
    };
    for p in &rules.policies {
        let start = current - change_in_period(p.period_s, &h.up, now_ms)
            + change_in_period(p.period_s, &h.down, now_ms);
        let proposed = match p.ty {
            PolicyType::Pods => start - p.value,
            PolicyType::Percent => (f64::from(start) * (1.0 - f64::from(p.value) / 100.0)) as i32,
        };
        result = pick(result, proposed);
    }
    result
}

/// Stabilises `desired` (recording it in `h`) and applies the rate rules and the bounds
/// (`minReplicas`, `maxReplicas`).
pub fn normalize(
    h: &mut History,
    up: &Rules,
    down: &Rules,
    current: i32,
    desired: i32,
    (min, max): (i32, i32),
    now_ms: i64,
) -> Normalized {
    // Stabilisation (`stabilizeRecommendationWithBehaviors`) over the runs still in a window;
    // the current run counts as recommended now.
    let up_cutoff = now_ms - up.stabilization_s * 1000;
    let down_cutoff = now_ms - down.stabilization_s * 1000;
    let (mut up_rec, mut down_rec) = (desired, desired);
    let last = h.runs.len().saturating_sub(1);
    for (i, r) in h.runs.iter().enumerate() {
        let at = if i == last { now_ms } else { r.until_ms };
        if at > up_cutoff {
            up_rec = up_rec.min(r.replicas);
        }
        if at > down_cutoff {
            down_rec = down_rec.max(r.replicas);
        }
    }
    let stabilized = current.max(up_rec).min(down_rec);
    // Record the recommendation: a new run when it changed; runs out of both windows go.
    match h.runs.last_mut() {
        Some(r) if r.replicas == desired => {}
        Some(r) => {
            r.until_ms = now_ms;
            h.runs.push(Run {
                replicas: desired,
                until_ms: now_ms,
            });
        }
        None => h.runs.push(Run {
            replicas: desired,
            until_ms: now_ms,
        }),
    }
    let oldest_cutoff = up_cutoff.min(down_cutoff);
    let keep_from = h.runs.len() - 1;
    let mut i = 0;
    h.runs.retain(|r| {
        let keep = i == keep_from || r.until_ms > oldest_cutoff;
        i += 1;
        keep
    });
    let (able_reason, able_message) = if stabilized == desired {
        ("ReadyForNewScale", "recommended size matches current size")
    } else if desired >= current {
        (
            "ScaleUpStabilized",
            "recent recommendations were lower than current one, applying the lowest recent recommendation",
        )
    } else {
        (
            "ScaleDownStabilized",
            "recent recommendations were higher than current one, applying the highest recent recommendation",
        )
    };
    // Rate rules and bounds (`convertDesiredReplicasWithBehaviorRate`).
    let mut out = (
        stabilized,
        "DesiredWithinRange",
        "the desired count is within the acceptable range",
    );
    if stabilized > current {
        let limit = scale_up_limit(current, h, up, now_ms).max(current);
        let (allowed, reason, message) = if max > limit {
            (
                limit,
                "ScaleUpLimit",
                "the desired replica count is increasing faster than the maximum scale rate",
            )
        } else {
            (
                max,
                "TooManyReplicas",
                "the desired replica count is more than the maximum replica count",
            )
        };
        if stabilized > allowed {
            out = (allowed, reason, message);
        }
    } else if stabilized < current {
        let limit = scale_down_limit(current, h, down, now_ms).min(current);
        let (allowed, reason, message) = if min < limit {
            (
                limit,
                "ScaleDownLimit",
                "the desired replica count is decreasing faster than the maximum scale rate",
            )
        } else {
            (
                min,
                "TooFewReplicas",
                "the desired replica count is less than the minimum replica count",
            )
        };
        if stabilized < allowed {
            out = (allowed, reason, message);
        }
    }
    Normalized {
        replicas: out.0,
        able_reason,
        able_message,
        limited: out.0 != stabilized,
        limited_reason: out.1,
        limited_message: out.2,
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    const S: i64 = 1000;

    fn run(h: &mut History, current: i32, desired: i32, at_s: i64) -> Normalized {
        let (up, down) = (Rules::default_up(), Rules::default_down(300));
        normalize(h, &up, &down, current, desired, (1, 10), at_s * S)
    }

    #[test]
    fn scale_down_waits_for_the_window() {
        let mut h = History::default();
        h.record_initial(4, 0);
        // The metrics ask for 1 from t=15 s on: held at 4 until the initial 4 leaves the window.
        let n = run(&mut h, 4, 1, 15);
        assert_eq!((n.replicas, n.able_reason), (4, "ScaleDownStabilized"));
        let n = run(&mut h, 4, 1, 299);
        assert_eq!(n.replicas, 4);
        // The run of 4 ended at 15 s (when 1 replaced it): it leaves the window at 315 s.
        let n = run(&mut h, 4, 1, 316);
        assert_eq!((n.replicas, n.able_reason), (1, "ReadyForNewScale"));
        // Only the current run is left: a steady recommendation writes nothing more.
        assert_eq!(h.runs.len(), 1);
    }

    #[test]
    fn a_steady_recommendation_does_not_change_the_history() {
        let mut h = History::default();
        h.record_initial(2, 0);
        run(&mut h, 2, 2, 15);
        let before = h.clone();
        run(&mut h, 2, 2, 30);
        run(&mut h, 2, 2, 45);
        assert_eq!(h, before);
        assert_eq!(History::parse(Some(&h.render())), h);
    }

    #[test]
    fn scale_up_policies_allow_4_pods_or_double_per_period() {
        let mut h = History::default();
        h.record_initial(1, 0);
        let n = run(&mut h, 1, 10, 15);
        // max(1 + 4, 1 × 2) = 5.
        assert_eq!(
            (n.replicas, n.limited, n.limited_reason),
            (5, true, "ScaleUpLimit")
        );
        let (up, down) = (Rules::default_up(), Rules::default_down(300));
        h.record_scale(1, 5, 15 * S, &up, &down);
        // Within the same 15 s, the period started at 1: still at most 5.
        let n = run(&mut h, 5, 10, 20);
        assert_eq!(n.replicas, 5);
        // Next period: max(5 + 4, 10) = 10, the max.
        let n = run(&mut h, 5, 12, 31);
        assert_eq!((n.replicas, n.limited_reason), (10, "TooManyReplicas"));
    }

    #[test]
    fn min_and_disabled_policies() {
        let mut h = History::default();
        h.record_initial(4, 0);
        let up = Rules {
            select: Select::Min,
            ..Rules::default_up()
        };
        let down = Rules::default_down(0);
        // min(4 + 4, 4 × 2) = 8.
        let n = normalize(&mut h, &up, &down, 4, 20, (1, 100), 10 * S);
        assert_eq!(n.replicas, 8);
        let disabled = Rules {
            select: Select::Disabled,
            ..Rules::default_down(0)
        };
        let n = normalize(&mut h, &up, &disabled, 4, 1, (1, 100), 20 * S);
        assert_eq!((n.replicas, n.limited_reason), (4, "ScaleDownLimit"));
        // Pods policy on the way down: at most 1 pod per 60 s.
        let one = Rules {
            stabilization_s: 0,
            select: Select::Max,
            policies: vec![Policy {
                ty: PolicyType::Pods,
                value: 1,
                period_s: 60,
            }],
        };
        let n = normalize(&mut h, &up, &one, 4, 1, (1, 100), 30 * S);
        assert_eq!(n.replicas, 3);
        h.record_scale(4, 3, 30 * S, &up, &one);
        let n = normalize(&mut h, &up, &one, 3, 1, (1, 100), 60 * S);
        assert_eq!(n.replicas, 3, "the period's pod is spent");
        let n = normalize(&mut h, &up, &one, 3, 1, (1, 100), 91 * S);
        assert_eq!(n.replicas, 2);
    }

    #[test]
    fn bounds_limit_the_count() {
        let mut h = History::default();
        h.record_initial(3, 0);
        let down = Rules::default_down(0);
        let n = normalize(&mut h, &Rules::default_up(), &down, 3, 1, (2, 10), S);
        assert_eq!(
            (n.replicas, n.limited, n.limited_reason),
            (2, true, "TooFewReplicas")
        );
        let n = normalize(&mut h, &Rules::default_up(), &down, 3, 3, (2, 10), 2 * S);
        assert_eq!(
            (n.replicas, n.limited, n.limited_reason),
            (3, false, "DesiredWithinRange")
        );
    }

    #[test]
    fn scale_up_stabilization_takes_the_lowest() {
        let mut h = History::default();
        h.record_initial(2, 0);
        let up = Rules {
            stabilization_s: 60,
            ..Rules::default_up()
        };
        let down = Rules::default_down(0);
        let n = normalize(&mut h, &up, &down, 2, 5, (1, 10), 10 * S);
        assert_eq!((n.replicas, n.able_reason), (2, "ScaleUpStabilized"));
        let n = normalize(&mut h, &up, &down, 2, 5, (1, 10), 71 * S);
        assert_eq!(n.replicas, 5);
    }
}
