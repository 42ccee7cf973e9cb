//! The container lifecycle as an explicit state machine, and the pod status derived from it —
//! pure functions, tested without a runtime.
//!
//! ```text
//!   ImagePull ──ok──▶ Starting ──▶ Running ──exit──▶ Terminated ──restart?──▶ BackOff ─▶ ImagePull
//!      │  └─fail─▶ PullBackOff ─▶ ImagePull        └─no restart──▶ Done
//! ```

use serde_json::{Value, json};

use crate::probe::ProbeKind;

/// Where one container is.
#[derive(Clone, Debug, PartialEq)]
pub enum ContainerState {
    /// Resolving and loading the image.
    ImagePull,
    /// The image could not be had; retrying after a back-off.
    PullBackOff {
        reason: String,
        message: String,
    },
    /// The image loaded but the container could not start (bad config, bad module).
    StartError {
        reason: String,
        message: String,
    },
    Running {
        started_at: String,
    },
    /// Exited and waiting for its restart back-off.
    BackOff {
        exit_code: i32,
        reason: String,
        started_at: String,
        finished_at: String,
    },
    /// Exited for good (restartPolicy says no more restarts).
    Done {
        exit_code: i32,
        reason: String,
        message: Option<String>,
        started_at: String,
        finished_at: String,
    },
}

/// How one run of a container ended.
#[derive(Clone, Debug)]
pub(crate) struct Termination {
    pub exit_code: i32,
    pub reason: String,
    pub message: Option<String>,
    pub started_at: String,
    pub finished_at: String,
}

impl Termination {
    /// The `terminated` state as `lastState` shows it (`message` null when there is none).
    pub fn status(&self) -> Value {
        json!({"exitCode": self.exit_code, "reason": self.reason, "startedAt": self.started_at,
            "finishedAt": self.finished_at, "message": self.message})
    }
}

/// One container's record as the agent keeps it.
#[derive(Clone, Debug)]
pub struct ContainerRecord {
    pub name: String,
    pub image: String,
    pub image_id: String,
    pub state: ContainerState,
    pub restart_count: u32,
    /// The last termination, shown as `lastState` (what `kubectl logs --previous` refers to).
    pub last_terminated: Option<Value>,
    /// Whether the container ever ran (a pod with a started container is Running, not
    /// Pending, even while it is in back-off).
    pub ever_started: bool,
    /// The container has a startup probe: each run is not `started` until it passes.
    pub has_startup: bool,
    /// The container has a readiness probe: each run is not `ready` until it passes.
    pub has_readiness: bool,
    /// This run's startup probe passed (or there is none).
    pub probe_started: bool,
    /// This run's readiness probe passes (or there is none).
    pub probe_ready: bool,
}

impl ContainerRecord {
    pub fn new(name: &str, image: &str) -> Self {
        ContainerRecord {
            name: name.to_string(),
            image: image.to_string(),
            image_id: String::new(),
            state: ContainerState::ImagePull,
            restart_count: 0,
            last_terminated: None,
            ever_started: false,
            has_startup: false,
            has_readiness: false,
            probe_started: true,
            probe_ready: true,
        }
    }

    /// A record for a container with these probes.
    pub(crate) fn with_probes(mut self, startup: bool, readiness: bool) -> Self {
        self.has_startup = startup;
        self.has_readiness = readiness;
        self.probe_started = !startup;
        self.probe_ready = !readiness;
        self
    }

    /// The image could not be had (`reason` is kubelet's: ErrImagePull, ImagePullBackOff,
    /// or a config error found while preparing): waiting, retried after a back-off.
    pub(crate) fn pull_failed(&mut self, reason: String, message: String) {
        self.state = ContainerState::PullBackOff { reason, message };
    }

    /// The image loaded but the run could not be set up (its directory or log file).
    pub(crate) fn start_failed(&mut self, reason: String, message: String) {
        self.state = ContainerState::StartError { reason, message };
    }

    /// Run number `restart_count` started from `image_id` at `started_at`.
    pub fn started(&mut self, image_id: String, restart_count: u32, started_at: String) {
        self.image_id = image_id;
        self.ever_started = true;
        self.restart_count = restart_count;
        self.state = ContainerState::Running { started_at };
        // Each run is probed afresh.
        self.probe_started = !self.has_startup;
        self.probe_ready = !self.has_readiness;
    }

    /// A probe's result flipped for run `run` (a result for an earlier run is stale and
    /// dropped). Liveness results are not kept: a failing one ends the run.
    pub(crate) fn probed(&mut self, run: u32, kind: ProbeKind, ok: bool) {
        if run != self.restart_count || !matches!(self.state, ContainerState::Running { .. }) {
            return;
        }
        match kind {
            ProbeKind::Startup => self.probe_started = ok,
            ProbeKind::Readiness => self.probe_ready = ok,
            ProbeKind::Liveness => {}
        }
    }

    /// Running, and its startup probe (if any) passed.
    pub fn is_started(&self) -> bool {
        matches!(self.state, ContainerState::Running { .. }) && self.probe_started
    }

    /// The run ended and the restart policy restarts it: it becomes `lastState`, the count
    /// moves to `restart_count`, and the container waits out its back-off.
    pub(crate) fn exited_to_restart(&mut self, end: Termination, restart_count: u32) {
        self.last_terminated = Some(end.status());
        self.restart_count = restart_count;
        self.state = ContainerState::BackOff {
            exit_code: end.exit_code,
            reason: end.reason,
            started_at: end.started_at,
            finished_at: end.finished_at,
        };
    }

    /// The run ended for good (the restart policy says no more restarts).
    pub(crate) fn exited_for_good(&mut self, end: Termination) {
        self.state = ContainerState::Done {
            exit_code: end.exit_code,
            reason: end.reason,
            message: end.message,
            started_at: end.started_at,
            finished_at: end.finished_at,
        };
    }

    /// Running, started, and its readiness probe (if any) passes.
    pub fn ready(&self) -> bool {
        self.is_started() && self.probe_ready
    }

    /// The `containerStatuses[]` entry (every field the Python client requires is present).
    pub fn status(&self) -> Value {
        let state = match &self.state {
            ContainerState::ImagePull => {
                json!({"waiting": {"reason": "ContainerCreating"}})
            }
            ContainerState::PullBackOff { reason, message }
            | ContainerState::StartError { reason, message } => {
                json!({"waiting": {"reason": reason, "message": message}})
            }
            ContainerState::Running { started_at } => json!({"running": {"startedAt": started_at}}),
            ContainerState::BackOff { .. } => json!({"waiting": {
                "reason": "CrashLoopBackOff",
                "message": format!("back-off restarting failed container {}", self.name)}}),
            ContainerState::Done {
                exit_code,
                reason,
                message,
                started_at,
                finished_at,
            } => {
                let mut t = json!({"exitCode": exit_code, "reason": reason,
                    "startedAt": started_at, "finishedAt": finished_at});
                if let Some(m) = message {
                    t["message"] = json!(m);
                }
                json!({"terminated": t})
            }
        };
        let mut s = json!({
            "name": self.name,
            "image": self.image,
            "imageID": self.image_id,
            "ready": self.ready(),
            "started": self.is_started(),
            "restartCount": self.restart_count,
            "state": state,
        });
        if let Some(t) = &self.last_terminated {
            s["lastState"] = json!({"terminated": t});
        }
        s
    }
}

/// The pod phase from its containers (kubelet's rules, without init containers).
pub fn phase(containers: &[ContainerRecord]) -> &'static str {
    if containers.is_empty() {
        return "Pending";
    }
    let all_done = containers
        .iter()
        .all(|c| matches!(c.state, ContainerState::Done { .. }));
    if all_done {
        let all_ok = containers
            .iter()
            .all(|c| matches!(c.state, ContainerState::Done { exit_code: 0, .. }));
        return if all_ok { "Succeeded" } else { "Failed" };
    }
    if containers.iter().any(|c| c.ever_started) {
        "Running"
    } else {
        "Pending"
    }
}

/// The pod's `status` (phase, conditions, containerStatuses), keeping the scheduler's
/// PodScheduled condition and the start time already reported.
pub fn pod_status(
    existing: &Value,
    containers: &[ContainerRecord],
    host_ip: &str,
    now: &str,
) -> Value {
    let phase = phase(containers);
    let all_ready = !containers.is_empty() && containers.iter().all(ContainerRecord::ready);
    let mut status = existing.clone();
    if !status.is_object() {
        status = json!({});
    }
    status["phase"] = json!(phase);
    status["hostIP"] = json!(host_ip);
    status["hostIPs"] = json!([{"ip": host_ip}]);
    // Pods share the node's network (no CNI yet): the pod's address is the node's.
    status["podIP"] = json!(host_ip);
    status["podIPs"] = json!([{"ip": host_ip}]);
    if status.get("startTime").is_none() {
        status["startTime"] = json!(now);
    }
    let mut obj = json!({"status": status});
    let ready = if all_ready { "True" } else { "False" };
    let not_ready_reason = (!all_ready).then_some("ContainersNotReady");
    let unready: Vec<&str> = containers
        .iter()
        .filter(|c| !c.ready())
        .map(|c| c.name.as_str())
        .collect();
    let msg =
        (!all_ready).then(|| format!("containers with unready status: [{}]", unready.join(" ")));
    let done = matches!(phase, "Succeeded" | "Failed");
    let done_reason = done.then_some("PodCompleted");
    kedge_core::meta::set_condition(&mut obj, "Initialized", "True", done_reason, None, now);
    kedge_core::meta::set_condition(
        &mut obj,
        "Ready",
        ready,
        done_reason.or(not_ready_reason),
        msg.as_deref(),
        now,
    );
    kedge_core::meta::set_condition(
        &mut obj,
        "ContainersReady",
        ready,
        done_reason.or(not_ready_reason),
        msg.as_deref(),
        now,
    );
    kedge_core::meta::set_condition(&mut obj, "PodScheduled", "True", None, None, now);
    obj["status"]["containerStatuses"] = json!(
        containers
            .iter()
            .map(ContainerRecord::status)
            .collect::<Vec<_>>()
    );
    obj["status"].take()
}

#[cfg(test)]
mod tests {
    use super::*;

    fn rec(state: ContainerState, started: bool) -> ContainerRecord {
        ContainerRecord {
            ever_started: started,
            state,
            ..ContainerRecord::new("c", "img")
        }
    }

    fn done(code: i32) -> ContainerState {
        ContainerState::Done {
            exit_code: code,
            reason: if code == 0 { "Completed" } else { "Error" }.into(),
            message: None,
            started_at: "a".into(),
            finished_at: "b".into(),
        }
    }

    #[test]
    fn phases() {
        assert_eq!(phase(&[rec(ContainerState::ImagePull, false)]), "Pending");
        let running = ContainerState::Running {
            started_at: "t".into(),
        };
        assert_eq!(phase(&[rec(running.clone(), true)]), "Running");
        let backoff = ContainerState::BackOff {
            exit_code: 1,
            reason: "Error".into(),
            started_at: "a".into(),
            finished_at: "b".into(),
        };
        // Crash-looping pods are Running (kubectl shows CrashLoopBackOff from the container).
        assert_eq!(phase(&[rec(backoff, true)]), "Running");
        assert_eq!(
            phase(&[rec(done(0), true), rec(done(0), true)]),
            "Succeeded"
        );
        assert_eq!(phase(&[rec(done(0), true), rec(done(2), true)]), "Failed");
        assert_eq!(phase(&[rec(done(0), true), rec(running, true)]), "Running");
    }

    #[test]
    fn status_has_conditions_and_container_fields() {
        let c = rec(
            ContainerState::Running {
                started_at: "t0".into(),
            },
            true,
        );
        let s = pod_status(&json!({"phase": "Pending"}), &[c], "10.0.0.1", "t1");
        assert_eq!(s["phase"], "Running");
        let conds = s["conditions"].as_array().unwrap();
        let ready = conds.iter().find(|c| c["type"] == "Ready").unwrap();
        assert_eq!(ready["status"], "True");
        let cs = &s["containerStatuses"][0];
        for f in ["name", "image", "imageID", "ready", "restartCount"] {
            assert!(cs.get(f).is_some(), "{f}");
        }
        assert_eq!(cs["state"]["running"]["startedAt"], "t0");
    }

    #[test]
    fn pull_failure_is_a_waiting_reason() {
        let c = rec(
            ContainerState::PullBackOff {
                reason: "ImagePullBackOff".into(),
                message: "nope".into(),
            },
            false,
        );
        let s = pod_status(&json!({}), &[c], "h", "t");
        assert_eq!(s["phase"], "Pending");
        assert_eq!(
            s["containerStatuses"][0]["state"]["waiting"]["reason"],
            "ImagePullBackOff"
        );
    }

    #[test]
    fn a_container_s_runs_move_through_its_transitions() {
        let end = |code: i32, message: Option<&str>| Termination {
            exit_code: code,
            reason: if code == 0 { "Completed" } else { "Error" }.into(),
            message: message.map(Into::into),
            started_at: "t1".into(),
            finished_at: "t2".into(),
        };
        let mut r = ContainerRecord::new("c", "img");
        r.pull_failed("ErrImagePull".into(), "no such image".into());
        assert_eq!(r.status()["state"]["waiting"]["reason"], "ErrImagePull");
        assert!(!r.ever_started);
        r.started("sha256:1".into(), 0, "t1".into());
        assert!(r.ready() && r.ever_started);
        assert_eq!(r.status()["imageID"], "sha256:1");
        r.exited_to_restart(end(1, Some("boom")), 1);
        let s = r.status();
        assert_eq!(s["restartCount"], 1);
        assert_eq!(s["state"]["waiting"]["reason"], "CrashLoopBackOff");
        assert_eq!(s["lastState"]["terminated"]["exitCode"], 1);
        assert_eq!(s["lastState"]["terminated"]["message"], "boom");
        r.start_failed("RunContainerError".into(), "disk full".into());
        assert_eq!(r.status()["state"]["waiting"]["message"], "disk full");
        r.started("sha256:1".into(), 1, "t3".into());
        r.exited_for_good(end(0, None));
        let s = r.status();
        assert_eq!(s["state"]["terminated"]["reason"], "Completed");
        assert!(s["state"]["terminated"].get("message").is_none());
        assert_eq!(s["restartCount"], 1);
        assert_eq!(phase(&[r]), "Succeeded");
    }
}
