//! The controller's settings: kube-controller-manager's `--horizontal-pod-autoscaler-*` flags,
//! read from the ConfigMap `kube-system/kedge-hpa-controller` (Plugin objects carry no
//! settings of their own) at every reconcile, so a change applies at the next sync.
//!
//! ```yaml
//! data:
//!   syncPeriod: 15s                 # --horizontal-pod-autoscaler-sync-period
//!   tolerance: "0.1"                # --horizontal-pod-autoscaler-tolerance
//!   downscaleStabilization: 5m      # --horizontal-pod-autoscaler-downscale-stabilization
//!   cpuInitializationPeriod: 5m     # --horizontal-pod-autoscaler-cpu-initialization-period
//!   initialReadinessDelay: 30s      # --horizontal-pod-autoscaler-initial-readiness-delay
//! ```
//!
//! A value that does not parse is logged and its default used.

use k8s_openapi::api::core::v1::ConfigMap;
use kedge_guest::{Cluster, ClusterExt, LogLevel};

pub const NAMESPACE: &str = "kube-system";
pub const NAME: &str = "kedge-hpa-controller";

#[derive(Debug, Clone, Copy, PartialEq)]
pub struct Config {
    pub sync_period_ms: i64,
    pub tolerance: f64,
    pub downscale_stabilization_s: i64,
    pub cpu_initialization_ms: i64,
    pub initial_readiness_delay_ms: i64,
}

impl Default for Config {
    fn default() -> Self {
        Config {
            sync_period_ms: 15_000,
            tolerance: 0.1,
            downscale_stabilization_s: 300,
            cpu_initialization_ms: 300_000,
            initial_readiness_delay_ms: 30_000,
        }
    }
}

/// A Go duration (`1m30s`, `10.5s`, `250ms`, `0`) in milliseconds, rounded down.
pub fn parse_duration_ms(text: &str) -> Option<i64> {
    let s = text.trim();
    if s == "0" {
        return Some(0);
    }
    if s.is_empty() || s.starts_with('-') {
        return None;
    }
    let mut total_ns: f64 = 0.0;
    let mut rest = s.trim_start_matches('+');
    while !rest.is_empty() {
        let n = rest
            .find(|c: char| !(c.is_ascii_digit() || c == '.'))
            .unwrap_or(rest.len());
        if n == 0 {
            return None;
        }
        let value: f64 = rest[..n].parse().ok()?;
        rest = &rest[n..];
        let unit_len = rest
            .find(|c: char| c.is_ascii_digit() || c == '.')
            .unwrap_or(rest.len());
        let scale = match &rest[..unit_len] {
            "ns" => 1.0,
            "us" | "µs" => 1e3,
            "ms" => 1e6,
            "s" => 1e9,
            "m" => 60e9,
            "h" => 3600e9,
            _ => return None,
        };
        rest = &rest[unit_len..];
        total_ns += value * scale;
    }
    Some((total_ns / 1e6) as i64)
}

impl Config {
    /// The settings from `data`, keys absent or unreadable keeping their defaults (each
    /// unreadable one reported through `bad`).
    pub fn from_data(
        data: &std::collections::BTreeMap<String, String>,
        mut bad: impl FnMut(&str, &str),
    ) -> Config {
        let mut c = Config::default();
        let mut duration = |key: &str, into: &mut i64| {
            if let Some(v) = data.get(key) {
                match parse_duration_ms(v) {
                    Some(ms) => *into = ms,
                    None => bad(key, v),
                }
            }
        };
        duration("syncPeriod", &mut c.sync_period_ms);
        let mut window_ms = c.downscale_stabilization_s * 1000;
        duration("downscaleStabilization", &mut window_ms);
        c.downscale_stabilization_s = window_ms / 1000;
        duration("cpuInitializationPeriod", &mut c.cpu_initialization_ms);
        duration("initialReadinessDelay", &mut c.initial_readiness_delay_ms);
        if let Some(v) = data.get("tolerance") {
            match v.trim().parse::<f64>() {
                Ok(t) if t >= 0.0 && t.is_finite() => c.tolerance = t,
                _ => bad("tolerance", v),
            }
        }
        // A sync period of 0 would spin.
        c.sync_period_ms = c.sync_period_ms.max(100);
        c
    }

    /// The cluster's settings (defaults without the ConfigMap).
    pub fn read(cluster: &dyn Cluster) -> Config {
        match cluster.get::<ConfigMap>(NAMESPACE, NAME) {
            Ok(Some(cm)) => Config::from_data(&cm.data.unwrap_or_default(), |key, value| {
                cluster.log(
                    LogLevel::Warn,
                    &format!("{NAMESPACE}/{NAME}: {key}: cannot use {value:?}; using the default"),
                );
            }),
            Ok(None) => Config::default(),
            Err(e) => {
                cluster.log(
                    LogLevel::Warn,
                    &format!("reading {NAMESPACE}/{NAME}: {e:?}; using the defaults"),
                );
                Config::default()
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn go_durations() {
        assert_eq!(parse_duration_ms("15s"), Some(15_000));
        assert_eq!(parse_duration_ms("1m30s"), Some(90_000));
        assert_eq!(parse_duration_ms("10.5s"), Some(10_500));
        assert_eq!(parse_duration_ms("250ms"), Some(250));
        assert_eq!(parse_duration_ms("1h"), Some(3_600_000));
        assert_eq!(parse_duration_ms("0"), Some(0));
        for bad in ["", "15", "s", "-1s", "1d", "1.2.3s"] {
            assert_eq!(parse_duration_ms(bad), None, "{bad}");
        }
    }

    #[test]
    fn settings_from_data_with_defaults_for_the_rest() {
        let data = [
            ("syncPeriod", "2s"),
            ("tolerance", "0.2"),
            ("downscaleStabilization", "20s"),
            ("initialReadinessDelay", "soon"),
        ]
        .into_iter()
        .map(|(k, v)| (k.to_string(), v.to_string()))
        .collect();
        let mut bad = Vec::new();
        let c = Config::from_data(&data, |k, _| bad.push(k.to_string()));
        assert_eq!(c.sync_period_ms, 2000);
        assert_eq!(c.tolerance, 0.2);
        assert_eq!(c.downscale_stabilization_s, 20);
        assert_eq!(c.cpu_initialization_ms, 300_000);
        assert_eq!(c.initial_readiness_delay_ms, 30_000);
        assert_eq!(bad, ["initialReadinessDelay"]);
    }
}
