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

/// What a container is to its pod.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub enum Role {
    /// One of `spec.containers`.
    #[default]
    App,
    /// An init container: runs to completion, in order, before the app containers.
    Init,
    /// A native sidecar (an init container with `restartPolicy: Always`): started in order
    /// with the init containers, kept running beside the app containers, stopped after them.
    Sidecar,
}

/// One container's record as the agent keeps it.
#[derive(Clone, Debug)]
pub struct ContainerRecord {
    pub name: String,
    pub role: Role,
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
    /// This run's postStart hook is done (or there is none): the next container may start.
    pub post_started: bool,
}

impl ContainerRecord {
    pub fn new(name: &str, image: &str) -> Self {
        ContainerRecord {
            name: name.to_string(),
            role: Role::App,
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
            post_started: false,
        }
    }

    pub(crate) fn with_role(mut self, role: Role) -> Self {
        self.role = role;
        self
    }

    /// An init container that ran to completion.
    pub fn completed(&self) -> bool {
        matches!(self.state, ContainerState::Done { exit_code: 0, .. })
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
        self.post_started = false;
    }

    /// Run `run`'s postStart hook is done (or it has none).
    pub(crate) fn post_start_done(&mut self, run: u32) {
        if run == self.restart_count && matches!(self.state, ContainerState::Running { .. }) {
            self.post_started = true;
        }
    }

    /// Whether the container lets the pod's next one start: it runs and its postStart hook
    /// is done, or it is not going to (it failed, waits in back-off, or ended).
    pub(crate) fn lets_next_start(&self) -> bool {
        match self.state {
            ContainerState::ImagePull => false,
            ContainerState::Running { .. } => self.post_started,
            _ => true,
        }
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

    /// The node ended the pod (active deadline, eviction): a container that had not ended
    /// is terminated with `reason` (exit 137, as killed), one that never started stays as it
    /// was.
    pub(crate) fn ended_by_node(&mut self, reason: &str, now: String) {
        let started_at = match &self.state {
            ContainerState::Running { started_at } => started_at.clone(),
            ContainerState::BackOff { .. } => now.clone(),
            _ => return,
        };
        self.state = ContainerState::Done {
            exit_code: 137,
            reason: reason.into(),
            message: None,
            started_at,
            finished_at: now,
        };
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

    /// Running, started, and its readiness probe (if any) passes; an init container once
    /// it completed (as kubelet reports it).
    pub fn ready(&self) -> bool {
        match self.role {
            Role::Init => self.completed(),
            Role::App | Role::Sidecar => self.is_started() && self.probe_ready,
        }
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
            "started": self.role != Role::Init && self.is_started(),
            "restartCount": self.restart_count,
            "state": state,
        });
        if let Some(t) = &self.last_terminated {
            s["lastState"] = json!({"terminated": t});
        }
        s
    }
}

/// Whether the pod is initialized: every init container completed, every sidecar started.
fn initialized(records: &[ContainerRecord]) -> bool {
    // Once an app container has run, the pod stays initialized (kubelet's rule), whatever
    // its sidecars do since.
    if records
        .iter()
        .any(|r| r.role == Role::App && r.ever_started)
    {
        return true;
    }
    records.iter().all(|r| match r.role {
        Role::Init => r.completed(),
        // Running, and past its startup probe if it has one.
        Role::Sidecar => r.is_started(),
        Role::App => true,
    })
}

/// The pod phase from its containers (kubelet's rules): Pending while initializing, Failed
/// if an init container failed for good, then the app containers' (sidecars do not count).
pub fn phase(records: &[ContainerRecord]) -> &'static str {
    let failed_init = records.iter().any(|r| {
        r.role == Role::Init
            && matches!(r.state, ContainerState::Done { exit_code, .. } if exit_code != 0)
    });
    if failed_init {
        return "Failed";
    }
    if !initialized(records) {
        return "Pending";
    }
    let containers: Vec<&ContainerRecord> =
        records.iter().filter(|r| r.role == Role::App).collect();
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

/// The names in `records` that `pred` picks out, as kubelet's condition messages list them.
fn names(records: &[ContainerRecord], pred: impl Fn(&ContainerRecord) -> bool) -> Vec<&str> {
    records
        .iter()
        .filter(|r| pred(r))
        .map(|r| r.name.as_str())
        .collect()
}

/// The pod's `status` (phase, conditions, containerStatuses), keeping the scheduler's
/// PodScheduled condition and the start time already reported.
/// What the pod's status also depends on, besides its containers.
#[derive(Clone, Debug, Default)]
pub struct PodFacts {
    /// `spec.readinessGates`' condition types: Ready also needs each of them True in the
    /// pod's conditions (which others write).
    pub gates: Vec<String>,
    /// The node ended the pod (its active deadline ran out, it was evicted): the pod failed
    /// with this reason and message.
    pub ended: Option<(String, String)>,
    /// The pod's own address (its network namespace's); `None`: it shares the node's.
    pub pod_ip: Option<String>,
}

/// Why a readiness gate holds the pod back (kubelet's words), if it does.
fn gate_unready(status: &Value, gate: &str) -> Option<String> {
    let cond = status["conditions"]
        .as_array()
        .into_iter()
        .flatten()
        .find(|c| c["type"] == gate);
    match cond.and_then(|c| c["status"].as_str()) {
        None => Some(format!(
            "corresponding condition of pod readiness gate {gate:?} does not exist."
        )),
        Some("True") => None,
        Some(other) => Some(format!(
            "the status of pod readiness gate {gate:?} is not \"True\", but {other}"
        )),
    }
}

pub fn pod_status(
    existing: &Value,
    records: &[ContainerRecord],
    facts: &PodFacts,
    host_ip: &str,
    now: &str,
) -> Value {
    let phase = if facts.ended.is_some() {
        "Failed"
    } else {
        phase(records)
    };
    let initialized = initialized(records);
    // The app containers and the sidecars make the pod ready.
    let serving = |r: &ContainerRecord| r.role != Role::Init;
    let all_ready = records.iter().any(|r| r.role == Role::App)
        && records
            .iter()
            .filter(|r| serving(r))
            .all(ContainerRecord::ready);
    let mut status = existing.clone();
    if !status.is_object() {
        status = json!({});
    }
    status["phase"] = json!(phase);
    status["hostIP"] = json!(host_ip);
    status["hostIPs"] = json!([{"ip": host_ip}]);
    // A pod on the node's network (hostNetwork, or a node without a pod network) has the
    // node's address.
    let pod_ip = facts.pod_ip.as_deref().unwrap_or(host_ip);
    status["podIP"] = json!(pod_ip);
    status["podIPs"] = json!([{"ip": pod_ip}]);
    if status.get("startTime").is_none() {
        status["startTime"] = json!(now);
    }
    if let Some((reason, message)) = &facts.ended {
        status["reason"] = json!(reason);
        status["message"] = json!(message);
    }
    let gates: Vec<String> = facts
        .gates
        .iter()
        .filter_map(|g| gate_unready(&status, g))
        .collect();
    let mut obj = json!({"status": status});
    let ready = if all_ready { "True" } else { "False" };
    let not_ready_reason = (!all_ready).then_some("ContainersNotReady");
    let unready = names(records, |r| serving(r) && !r.ready());
    let msg =
        (!all_ready).then(|| format!("containers with unready status: [{}]", unready.join(" ")));
    let done = matches!(phase, "Succeeded" | "Failed");
    let done_reason = done.then_some("PodCompleted");
    let set = |obj: &mut Value, ty: &str, ok: bool, reason: Option<&str>, msg: Option<&str>| {
        let status = if ok { "True" } else { "False" };
        kedge_core::meta::set_condition(obj, ty, status, reason, msg, now);
    };
    // The pod's directories exist and its containers may start (kubelet: the sandbox).
    set(&mut obj, "PodReadyToStartContainers", true, None, None);
    if initialized {
        set(&mut obj, "Initialized", true, done_reason, None);
    } else {
        let incomplete = names(records, |r| match r.role {
            Role::Init => !r.completed(),
            Role::Sidecar => !r.is_started(),
            Role::App => false,
        });
        let msg = format!(
            "containers with incomplete status: [{}]",
            incomplete.join(" ")
        );
        set(
            &mut obj,
            "Initialized",
            false,
            Some("ContainersNotInitialized"),
            Some(&msg),
        );
    }
    kedge_core::meta::set_condition(
        &mut obj,
        "ContainersReady",
        ready,
        done_reason.or(not_ready_reason),
        msg.as_deref(),
        now,
    );
    // The pod is Ready when its containers are and every readiness gate is True.
    let (ready, reason, msg) = match (all_ready, gates.is_empty()) {
        (true, false) => (
            "False",
            Some("ReadinessGatesNotReady"),
            Some(gates.join(", ")),
        ),
        _ => (ready, done_reason.or(not_ready_reason), msg),
    };
    kedge_core::meta::set_condition(&mut obj, "Ready", ready, reason, msg.as_deref(), now);
    set(&mut obj, "PodScheduled", true, None, None);
    if let Some((reason, message)) = facts.ended.as_ref().filter(|(r, _)| r == "Evicted") {
        let _ = reason;
        set(
            &mut obj,
            "DisruptionTarget",
            true,
            Some("TerminationByKubelet"),
            Some(message),
        );
    }
    let statuses = |role: fn(&ContainerRecord) -> bool| -> Vec<Value> {
        records
            .iter()
            .filter(|r| role(r))
            .map(|r| {
                let mut s = r.status();
                // App containers wait for the init containers as kubelet shows it.
                if !initialized && r.role == Role::App && r.state == ContainerState::ImagePull {
                    s["state"] = json!({"waiting": {"reason": "PodInitializing"}});
                }
                s
            })
            .collect()
    };
    obj["status"]["containerStatuses"] = json!(statuses(|r| r.role == Role::App));
    let init = statuses(|r| r.role != Role::App);
    if init.is_empty() {
        if let Some(m) = obj["status"].as_object_mut() {
            m.remove("initContainerStatuses");
        }
    } else {
        obj["status"]["initContainerStatuses"] = json!(init);
    }
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
        let s = pod_status(
            &json!({"phase": "Pending"}),
            &[c],
            &PodFacts::default(),
            "10.0.0.1",
            "t1",
        );
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
        let s = pod_status(&json!({}), &[c], &PodFacts::default(), "h", "t");
        assert_eq!(s["phase"], "Pending");
        assert_eq!(
            s["containerStatuses"][0]["state"]["waiting"]["reason"],
            "ImagePullBackOff"
        );
    }

    /// A sidecar counts for `Initialized` once it runs past its startup probe; after an app
    /// container has run, the pod stays initialized whatever the sidecar does.
    #[test]
    fn sidecars_initialize_once_started() {
        let mut side = ContainerRecord::new("side", "img")
            .with_role(Role::Sidecar)
            .with_probes(true, false);
        side.started("sha256:1".into(), 0, "t".into());
        let app = ContainerRecord::new("app", "img");
        assert!(
            !initialized(&[side.clone(), app.clone()]),
            "startup probe pending"
        );
        side.probed(0, ProbeKind::Startup, true);
        assert!(initialized(&[side.clone(), app.clone()]));
        let mut app_ran = app.clone();
        app_ran.started("sha256:2".into(), 0, "t".into());
        let mut crashed = side.clone();
        crashed.state = ContainerState::BackOff {
            exit_code: 1,
            reason: "Error".into(),
            started_at: "a".into(),
            finished_at: "b".into(),
        };
        assert!(
            initialized(&[crashed.clone(), app_ran]),
            "stays initialized"
        );
        assert!(!initialized(&[crashed, app]));
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
