//! When and how soon to restart a container, following kubelet's rules.

use std::fmt;
use std::str::FromStr;
use std::time::Duration;

/// A pod's `spec.restartPolicy`.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub enum RestartPolicy {
    /// Kubernetes' default when the field is absent.
    #[default]
    Always,
    OnFailure,
    Never,
}

/// The pod spec named a restart policy Kubernetes does not have.
#[derive(Debug, thiserror::Error)]
#[error("unknown restart policy {0:?} (expected Always, OnFailure or Never)")]
pub struct UnknownRestartPolicy(pub String);

impl FromStr for RestartPolicy {
    type Err = UnknownRestartPolicy;

    /// Exact, case-sensitive names, as the API server validates them.
    fn from_str(s: &str) -> Result<Self, Self::Err> {
        match s {
            "Always" => Ok(Self::Always),
            "OnFailure" => Ok(Self::OnFailure),
            "Never" => Ok(Self::Never),
            other => Err(UnknownRestartPolicy(other.to_owned())),
        }
    }
}

impl fmt::Display for RestartPolicy {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(match self {
            Self::Always => "Always",
            Self::OnFailure => "OnFailure",
            Self::Never => "Never",
        })
    }
}

/// Whether a container that exited with `exit_code` is started again.
pub fn should_restart(policy: RestartPolicy, exit_code: i32) -> bool {
    match policy {
        RestartPolicy::Always => true,
        RestartPolicy::OnFailure => exit_code != 0,
        RestartPolicy::Never => false,
    }
}

/// First back-off delay (kubelet's `initialBackOff`).
pub const INITIAL_BACKOFF: Duration = Duration::from_secs(10);
/// Longest back-off delay (kubelet's `MaxContainerBackOff`).
pub const MAX_BACKOFF: Duration = Duration::from_secs(300);
/// A container that ran at least this long before exiting gets its back-off reset, so a
/// service that crashes once a day does not wait five minutes to come back.
pub const BACKOFF_RESET_AFTER: Duration = Duration::from_secs(600);

/// Delay before the next start, given how many restarts already happened since the last reset:
/// 10 s, 20 s, 40 s, … capped at 300 s.
pub fn backoff(restart_count: u32) -> Duration {
    // 2^5 * 10 s already exceeds the cap, so larger exponents need no arithmetic.
    if restart_count >= 5 {
        return MAX_BACKOFF;
    }
    (INITIAL_BACKOFF * (1u32 << restart_count)).min(MAX_BACKOFF)
}

/// Whether a run of `ran_for` resets the back-off sequence (see [`BACKOFF_RESET_AFTER`]).
pub fn resets_backoff(ran_for: Duration) -> bool {
    ran_for >= BACKOFF_RESET_AFTER
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn policy_parsing_and_default() {
        assert_eq!(RestartPolicy::default(), RestartPolicy::Always);
        for p in [
            RestartPolicy::Always,
            RestartPolicy::OnFailure,
            RestartPolicy::Never,
        ] {
            assert_eq!(p.to_string().parse::<RestartPolicy>().unwrap(), p);
        }
        let err = "always".parse::<RestartPolicy>().unwrap_err();
        assert!(err.to_string().contains("unknown restart policy"));
    }

    #[test]
    fn restart_decisions() {
        let cases = [
            (RestartPolicy::Always, 0, true),
            (RestartPolicy::Always, 1, true),
            (RestartPolicy::OnFailure, 0, false),
            (RestartPolicy::OnFailure, 137, true),
            (RestartPolicy::OnFailure, -1, true),
            (RestartPolicy::Never, 0, false),
            (RestartPolicy::Never, 2, false),
        ];
        for (policy, code, want) in cases {
            assert_eq!(should_restart(policy, code), want, "{policy} exit {code}");
        }
    }

    #[test]
    fn backoff_doubles_then_caps() {
        let secs: Vec<u64> = (0..8).map(|n| backoff(n).as_secs()).collect();
        assert_eq!(secs, [10, 20, 40, 80, 160, 300, 300, 300]);
        assert_eq!(backoff(u32::MAX), MAX_BACKOFF);
        assert!(!resets_backoff(Duration::from_secs(599)));
        assert!(resets_backoff(Duration::from_secs(600)));
    }
}
