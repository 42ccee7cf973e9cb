//! What the agent keeps of each container across its own restarts
//! (`<data-dir>/pod-state/<uid>.json`): the restart count (which also sets the back-off), whether
//! it ever started, its last termination, and whether it was running when the agent last
//! wrote. kubelet derives these from the runtime's record of dead containers; the agent's
//! containers do not outlive it, so it writes them down.

use std::collections::BTreeMap;
use std::path::{Path, PathBuf};

use serde_json::Value;

use super::status::{ContainerRecord, ContainerState};

#[derive(Clone, Debug, Default, PartialEq, serde::Serialize, serde::Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct Counts {
    pub restart_count: u32,
    pub ever_started: bool,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub last_terminated: Option<Value>,
    /// `startedAt` of the run that was going on.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub running_since: Option<String>,
}

pub type Record = BTreeMap<String, Counts>;

pub(crate) fn path(data_dir: &Path, uid: &str) -> Option<PathBuf> {
    crate::pods::uid_file(&data_dir.join("pod-state"), uid)
}

/// What `records` say that must outlive the agent.
pub fn of(records: &[ContainerRecord]) -> Record {
    records
        .iter()
        .map(|r| {
            let counts = Counts {
                restart_count: r.restart_count,
                ever_started: r.ever_started,
                last_terminated: r.last_terminated.clone(),
                running_since: match &r.state {
                    ContainerState::Running { started_at } => Some(started_at.clone()),
                    _ => None,
                },
            };
            (r.name.clone(), counts)
        })
        .collect()
}

/// Continues the counts of a previous agent's run: a container that was running when
/// that agent went away was stopped with it, so this run is its next restart (as after a
/// node reboot in Kubernetes, whose last state then says `Unknown`).
pub fn resume(record: &mut ContainerRecord, saved: &Counts, now: &str) {
    record.restart_count = saved.restart_count;
    record.ever_started = saved.ever_started;
    record.last_terminated = saved.last_terminated.clone();
    if let Some(started_at) = &saved.running_since {
        record.restart_count += 1;
        record.last_terminated = Some(serde_json::json!({"exitCode": 255,
            "reason": "Unknown", "message": "the node agent restarted",
            "startedAt": started_at, "finishedAt": now}));
    }
}

pub fn load(data_dir: &Path, uid: &str) -> Record {
    path(data_dir, uid)
        .and_then(|p| std::fs::read(p).ok())
        .and_then(|b| serde_json::from_slice(&b).ok())
        .unwrap_or_default()
}

/// Writes atomically (a crash leaves the old record or the new one).
pub(crate) fn save(data_dir: &Path, uid: &str, record: &Record) {
    let Some(p) = path(data_dir, uid) else {
        return;
    };
    let write = || -> std::io::Result<()> {
        kedge_store::fsmode::private_dir(&data_dir.join("pod-state"))?;
        let bytes = serde_json::to_vec(record)?;
        kedge_tunnel::write_atomic(&p, &bytes, kedge_store::fsmode::PRIVATE_FILE)
            .map_err(std::io::Error::other)
    };
    if let Err(e) = write() {
        tracing::warn!(error = %e, "could not record the pod's restart counts locally");
    }
}

pub fn forget(data_dir: &Path, uid: &str) {
    if let Some(p) = path(data_dir, uid) {
        let _ = std::fs::remove_file(p);
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn counts_survive_the_agent_and_a_running_container_counts_one_more_restart() {
        let d = tempfile::tempdir().unwrap();
        let mut a = ContainerRecord::new("a", "img");
        a.restart_count = 3;
        a.ever_started = true;
        a.state = ContainerState::Running {
            started_at: "2026-12-06T10:00:00Z".into(),
        };
        let mut b = ContainerRecord::new("b", "img");
        b.restart_count = 5;
        b.ever_started = true;
        b.last_terminated = Some(serde_json::json!({"exitCode": 1}));
        b.state = ContainerState::BackOff {
            exit_code: 1,
            reason: "Error".into(),
            started_at: String::new(),
            finished_at: String::new(),
        };
        save(d.path(), "u-1", &of(&[a, b]));

        let saved = load(d.path(), "u-1");
        let mut a = ContainerRecord::new("a", "img");
        resume(&mut a, &saved["a"], "2026-12-06T11:00:00Z");
        assert_eq!((a.restart_count, a.ever_started), (4, true));
        assert_eq!(a.last_terminated.as_ref().unwrap()["reason"], "Unknown");
        let mut b = ContainerRecord::new("b", "img");
        resume(&mut b, &saved["b"], "2026-12-06T11:00:00Z");
        assert_eq!(
            b.restart_count, 5,
            "a container in back-off keeps its count"
        );
        assert_eq!(b.last_terminated.as_ref().unwrap()["exitCode"], 1);

        forget(d.path(), "u-1");
        assert!(load(d.path(), "u-1").is_empty());
        assert!(load(d.path(), "../etc").is_empty());
    }
}
