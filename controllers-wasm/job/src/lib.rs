//! The Job controller as a kedge plugin: runs pods from `spec.template` until enough of
//! them succeed, like kube-controller-manager's job-controller.
//!
//! - Pods: generateName `<job>-` (Indexed: `<job>-<index>-`), labels `job-name`,
//!   `batch.kubernetes.io/job-name`, `controller-uid`, `batch.kubernetes.io/controller-uid`,
//!   the Job as controlling owner.
//! - `parallelism` pods at most run at once. NonIndexed with `completions`: done after that
//!   many successes. Work-queue mode (`completions` unset): done once any pod succeeded and
//!   none is active; no new pods after the first success. Indexed: one success per index
//!   `0..completions`; each pod gets the `batch.kubernetes.io/job-completion-index`
//!   annotation and label, the `JOB_COMPLETION_INDEX` env var and hostname `<job>-<index>`.
//! - Failures: failed pods count toward `backoffLimit` (with `restartPolicy: OnFailure` the
//!   agent restarts containers in place and their restart counts count too). Replacements
//!   for failed pods wait an exponential back-off: 10 s · 2^(failures-1), at most 6 min.
//!   Past the limit: conditions `FailureTarget` and `Failed` (reason `BackoffLimitExceeded`),
//!   active pods deleted. `activeDeadlineSeconds` past `startTime`: the same with reason
//!   `DeadlineExceeded`.
//! - Success: conditions `SuccessCriteriaMet` and `Complete` (reason `CompletionsReached`),
//!   `completionTime`, leftover active pods deleted.
//! - `suspend`: active pods deleted, condition `Suspended`; on resume `startTime` restarts.
//! - `ttlSecondsAfterFinished`: the finished Job is deleted (background propagation) after
//!   the TTL.
//!
//! Not done: `uncountedTerminatedPods` and the `batch.kubernetes.io/job-tracking` finalizer
//! (counts are taken from the pods present and never go down, so a finished pod deleted
//! before it was seen is not counted); `podFailurePolicy`, `successPolicy`,
//! `backoffLimitPerIndex`, `podReplacementPolicy` (a terminating pod is replaced at once);
//! adoption of orphan pods matching the selector.

use std::collections::{BTreeMap, BTreeSet};

use k8s_openapi::api::batch::v1::{Job, JobCondition, JobSpec, JobStatus};
use k8s_openapi::api::core::v1::{EnvVar, Event, Pod};
use k8s_openapi::apimachinery::pkg::apis::meta::v1::{ObjectMeta, Time};
use k8s_openapi::jiff::{SignedDuration, Timestamp};
use kedge_guest::meta::{controller_of, new_controller_ref};
use kedge_guest::pod::{is_active, is_ready};
use kedge_guest::{
    ApiResultExt, Cluster, ClusterExt, Controller, KindRef, ObjectKey, Outcome, Registration,
    Result,
};

/// The Events' source, as Kubernetes names the controller.
const COMPONENT: &str = "job-controller";
/// Annotation and label carrying a pod's completion index (Indexed mode).
pub const INDEX_KEY: &str = "batch.kubernetes.io/job-completion-index";
/// The env var an Indexed pod's containers read their index from.
pub const INDEX_ENV: &str = "JOB_COMPLETION_INDEX";
/// Labels naming the Job on its pods (legacy and prefixed forms, as kube-apiserver adds).
pub const JOB_NAME_LABELS: [&str; 2] = ["job-name", "batch.kubernetes.io/job-name"];
/// Labels carrying the Job's uid on its pods.
pub const JOB_UID_LABELS: [&str; 2] = ["controller-uid", "batch.kubernetes.io/controller-uid"];
/// First back-off after a failed pod, doubled per further failure (Kubernetes' DefaultJobPodFailureBackOff).
const BACKOFF_BASE_SECS: i64 = 10;
/// Back-off ceiling (Kubernetes' MaxJobPodFailureBackOff).
const BACKOFF_MAX_SECS: i64 = 360;

/// The plugin type wired to the component exports.
pub struct JobController;

impl Controller for JobController {
    fn registration() -> Registration {
        Registration::new("job", KindRef::of::<Job>())
            .owns([KindRef::of::<Pod>()])
            .writes([
                KindRef::of::<Pod>(),
                KindRef::of::<Job>(),
                KindRef::of::<Event>(),
            ])
    }

    fn reconcile(cluster: &dyn Cluster, key: &ObjectKey) -> Result<Outcome> {
        reconcile(cluster, key)
    }
}

kedge_guest::export_controller!(JobController);

fn count(n: usize) -> i32 {
    i32::try_from(n).unwrap_or(i32::MAX)
}

fn phase(pod: &Pod) -> &str {
    pod.status
        .as_ref()
        .and_then(|s| s.phase.as_deref())
        .unwrap_or("")
}

fn index_of(pod: &Pod) -> Option<i32> {
    pod.metadata
        .annotations
        .as_ref()
        .and_then(|a| a.get(INDEX_KEY))
        .or_else(|| pod.metadata.labels.as_ref().and_then(|l| l.get(INDEX_KEY)))
        .and_then(|v| v.parse().ok())
}

/// When a finished pod stopped: its last container's finish time, else its creation.
fn finished_at(pod: &Pod) -> Option<Timestamp> {
    let st = pod.status.as_ref();
    st.and_then(|s| s.container_statuses.as_ref())
        .into_iter()
        .flatten()
        .filter_map(|c| c.state.as_ref()?.terminated.as_ref()?.finished_at.as_ref())
        .map(|t| t.0)
        .max()
        .or_else(|| pod.metadata.creation_timestamp.as_ref().map(|t| t.0))
}

/// Container restarts of the active pods: what counts toward `backoffLimit` under
/// `restartPolicy: OnFailure`.
fn restarts(pods: &[&Pod]) -> i64 {
    pods.iter()
        .filter_map(|p| p.status.as_ref())
        .flat_map(|s| {
            s.container_statuses
                .iter()
                .flatten()
                .chain(s.init_container_statuses.iter().flatten())
        })
        .map(|c| i64::from(c.restart_count))
        .sum()
}

/// Parses `completedIndexes` ("1,3-5") into a set.
fn parse_indexes(s: &str) -> BTreeSet<i32> {
    let mut out = BTreeSet::new();
    for part in s.split(',').filter(|p| !p.is_empty()) {
        match part.split_once('-') {
            Some((a, b)) => {
                if let (Ok(a), Ok(b)) = (a.parse::<i32>(), b.parse::<i32>()) {
                    out.extend(a..=b);
                }
            }
            None => out.extend(part.parse::<i32>().ok()),
        }
    }
    out
}

/// Renders a set of indexes the way Kubernetes does: ascending, runs as `a-b`.
fn format_indexes(set: &BTreeSet<i32>) -> String {
    let mut parts = Vec::new();
    let mut iter = set.iter().copied().peekable();
    while let Some(start) = iter.next() {
        let mut end = start;
        while iter.peek() == Some(&(end + 1)) {
            end = iter.next().unwrap_or(end);
        }
        parts.push(if start == end {
            start.to_string()
        } else {
            format!("{start}-{end}")
        });
    }
    parts.join(",")
}

/// Sets a condition; the transition time moves only with the status. Returns whether
/// anything changed.
fn set_condition(
    st: &mut JobStatus,
    type_: &str,
    status: &str,
    reason: &str,
    message: &str,
    now: &Time,
) -> bool {
    let conds = st.conditions.get_or_insert_default();
    let new = JobCondition {
        type_: type_.into(),
        status: status.into(),
        reason: Some(reason.into()),
        message: Some(message.into()),
        last_probe_time: Some(now.clone()),
        last_transition_time: Some(now.clone()),
    };
    match conds.iter_mut().find(|c| c.type_ == type_) {
        None => {
            conds.push(new);
            true
        }
        Some(old)
            if old.status == status && old.reason == new.reason && old.message == new.message =>
        {
            false
        }
        Some(old) => {
            let keep = (old.status == status).then(|| old.last_transition_time.clone());
            *old = new;
            if let Some(t) = keep {
                old.last_transition_time = t;
            }
            true
        }
    }
}

fn condition_true<'a>(st: &'a JobStatus, type_: &str) -> Option<&'a JobCondition> {
    st.conditions
        .iter()
        .flatten()
        .find(|c| c.type_ == type_ && c.status == "True")
}

fn millis_until(now: Timestamp, at: Timestamp) -> u64 {
    u64::try_from(at.duration_since(now).as_millis()).unwrap_or(0)
}

fn earliest(a: Option<u64>, b: Option<u64>) -> Option<u64> {
    match (a, b) {
        (Some(x), Some(y)) => Some(x.min(y)),
        (x, y) => x.or(y),
    }
}

fn reconcile(cluster: &dyn Cluster, key: &ObjectKey) -> Result<Outcome> {
    let ns = key.namespace.as_str();
    let Some(job) = cluster.get::<Job>(ns, &key.name)? else {
        return Ok(Outcome::done());
    };
    if job.metadata.deletion_timestamp.is_some() {
        return Ok(Outcome::done());
    }
    let Some(spec) = job.spec.clone() else {
        return Ok(Outcome::done());
    };
    let now_ts: Timestamp = cluster
        .now()
        .parse()
        .map_err(|e| format!("host clock: {e}"))?;
    let now = Time(now_ts);
    let uid = job.metadata.uid.clone().unwrap_or_default();
    let pods: Vec<Pod> = cluster
        .list::<Pod>(ns, "")?
        .into_iter()
        .filter(|p| controller_of(&p.metadata).is_some_and(|r| r.uid == uid))
        .collect();
    let active: Vec<&Pod> = pods.iter().filter(|p| is_active(p)).collect();

    let old = job.status.clone().unwrap_or_default();
    let mut st = old.clone();

    // Already finished: only leftovers and the TTL remain.
    if condition_true(&old, "Complete").is_some() || condition_true(&old, "Failed").is_some() {
        delete_pods(cluster, &job, &active)?;
        return Ok(ttl(cluster, &job, &spec, &old, now_ts)?
            .map_or_else(Outcome::done, Outcome::requeue_after_ms));
    }

    let indexed = spec.completion_mode.as_deref() == Some("Indexed");
    let on_failure = spec
        .template
        .spec
        .as_ref()
        .and_then(|s| s.restart_policy.as_deref())
        == Some("OnFailure");
    let completions = spec.completions;
    let parallelism = usize::try_from(spec.parallelism.unwrap_or(1).max(0)).unwrap_or(0);
    let backoff_limit = i64::from(spec.backoff_limit.unwrap_or(6));

    // Counts only grow: a finished pod deleted later stays counted.
    let failed_pods: Vec<&Pod> = pods.iter().filter(|p| phase(p) == "Failed").collect();
    let failed = old.failed.unwrap_or(0).max(count(failed_pods.len()));
    let mut done_indexes = BTreeSet::new();
    let succeeded = if indexed {
        let c = completions.unwrap_or(0);
        done_indexes = parse_indexes(old.completed_indexes.as_deref().unwrap_or(""));
        done_indexes.extend(
            pods.iter()
                .filter(|p| phase(p) == "Succeeded")
                .filter_map(index_of)
                .filter(|i| (0..c).contains(i)),
        );
        st.completed_indexes = (!done_indexes.is_empty()).then(|| format_indexes(&done_indexes));
        count(done_indexes.len())
    } else {
        let n = pods.iter().filter(|p| phase(p) == "Succeeded").count();
        old.succeeded.unwrap_or(0).max(count(n))
    };
    st.succeeded = (succeeded > 0).then_some(succeeded);
    st.failed = (failed > 0).then_some(failed);

    // Suspended: no pods, no clock.
    if spec.suspend == Some(true) {
        delete_pods(cluster, &job, &active)?;
        if set_condition(
            &mut st,
            "Suspended",
            "True",
            "JobSuspended",
            "Job suspended",
            &now,
        ) {
            let _ = cluster.record_event(&job, "Normal", "Suspended", "Job suspended", COMPONENT);
        }
        st.start_time = None;
        st.active = None;
        st.ready = Some(0);
        write_status(cluster, &job, st)?;
        return Ok(Outcome::done());
    }
    if condition_true(&old, "Suspended").is_some() {
        set_condition(
            &mut st,
            "Suspended",
            "False",
            "JobResumed",
            "Job resumed",
            &now,
        );
        let _ = cluster.record_event(&job, "Normal", "Resumed", "Job resumed", COMPONENT);
        st.start_time = None;
    }
    let start = st.start_time.get_or_insert_with(|| now.clone()).0;

    // Failure: back-off limit, then deadline (Kubernetes' order).
    let exceeded = i64::from(failed) > backoff_limit
        || (on_failure && {
            let r = restarts(&active);
            if backoff_limit == 0 {
                r > 0
            } else {
                r >= backoff_limit
            }
        });
    let deadline = spec
        .active_deadline_seconds
        .and_then(|s| start.checked_add(SignedDuration::from_secs(s)).ok());
    let failure = if exceeded {
        Some((
            "BackoffLimitExceeded",
            "Job has reached the specified backoff limit",
        ))
    } else if deadline.is_some_and(|d| d <= now_ts) {
        Some((
            "DeadlineExceeded",
            "Job was active longer than specified deadline",
        ))
    } else {
        None
    };
    if let Some((reason, message)) = failure {
        delete_pods(cluster, &job, &active)?;
        set_condition(&mut st, "FailureTarget", "True", reason, message, &now);
        set_condition(&mut st, "Failed", "True", reason, message, &now);
        st.active = None;
        st.ready = Some(0);
        let _ = cluster.record_event(&job, "Warning", reason, message, COMPONENT);
        let finished = write_status(cluster, &job, st.clone())?;
        return Ok(ttl(cluster, &finished, &spec, &st, now_ts)?
            .map_or_else(Outcome::done, Outcome::requeue_after_ms));
    }

    // Success.
    let complete = match completions {
        Some(c) => succeeded >= c,
        None => succeeded > 0 && active.is_empty(),
    };
    if complete {
        delete_pods(cluster, &job, &active)?;
        let message = "Reached expected number of succeeded pods";
        set_condition(
            &mut st,
            "SuccessCriteriaMet",
            "True",
            "CompletionsReached",
            message,
            &now,
        );
        set_condition(
            &mut st,
            "Complete",
            "True",
            "CompletionsReached",
            message,
            &now,
        );
        st.completion_time = Some(now.clone());
        st.active = None;
        st.ready = Some(0);
        let _ = cluster.record_event(&job, "Normal", "Completed", "Job completed", COMPONENT);
        let finished = write_status(cluster, &job, st.clone())?;
        return Ok(ttl(cluster, &finished, &spec, &st, now_ts)?
            .map_or_else(Outcome::done, Outcome::requeue_after_ms));
    }

    // Still running: converge the active pods.
    let mut requeue = deadline.map(|d| millis_until(now_ts, d));
    let mut running: Vec<&Pod> = active.clone();
    let want_new: Vec<Option<i32>> = if indexed {
        let c = completions.unwrap_or(0);
        let held: BTreeSet<i32> = active.iter().filter_map(|p| index_of(p)).collect();
        (0..c)
            .filter(|i| !done_indexes.contains(i) && !held.contains(i))
            .take(parallelism.saturating_sub(active.len()))
            .map(Some)
            .collect()
    } else {
        let want = match completions {
            Some(c) => usize::try_from((c - succeeded).max(0))
                .unwrap_or(0)
                .min(parallelism),
            // Work queue: after the first success the remaining pods only finish.
            None if succeeded > 0 => active.len().min(parallelism),
            None => parallelism,
        };
        vec![None; want.saturating_sub(active.len())]
    };
    if active.len() > parallelism {
        // Parallelism went down: drop the cheapest first (not ready, newest).
        let mut victims = active.clone();
        victims.sort_by_key(|p| {
            (
                is_ready(p),
                std::cmp::Reverse(p.metadata.creation_timestamp.clone()),
            )
        });
        victims.truncate(active.len() - parallelism);
        delete_pods(cluster, &job, &victims)?;
        running.retain(|p| !victims.iter().any(|v| v.metadata.uid == p.metadata.uid));
    }
    let mut created = Vec::new();
    if !want_new.is_empty() {
        // Replacements after failures wait out the back-off.
        let wait = (failed > 0)
            .then(|| {
                let exp = u32::try_from(failed - 1).unwrap_or(u32::MAX).min(16);
                let delay = (BACKOFF_BASE_SECS << exp).min(BACKOFF_MAX_SECS);
                let last = failed_pods.iter().filter_map(|p| finished_at(p)).max()?;
                let ready_at = last.checked_add(SignedDuration::from_secs(delay)).ok()?;
                (ready_at > now_ts).then(|| millis_until(now_ts, ready_at))
            })
            .flatten();
        match wait {
            Some(ms) => requeue = earliest(requeue, Some(ms)),
            None => {
                for index in want_new {
                    created.push(create_pod(cluster, &job, &spec, index)?);
                }
            }
        }
    }
    let active_n = running.len() + created.len();
    st.active = (active_n > 0).then(|| count(active_n));
    st.ready = Some(count(running.iter().filter(|p| is_ready(p)).count()));
    write_status(cluster, &job, st)?;
    Ok(requeue.map_or_else(Outcome::done, Outcome::requeue_after_ms))
}

/// A new pod for `job`, `index` in Indexed mode.
fn create_pod(cluster: &dyn Cluster, job: &Job, spec: &JobSpec, index: Option<i32>) -> Result<Pod> {
    let ns = job.metadata.namespace.clone().unwrap_or_default();
    let name = job.metadata.name.clone().unwrap_or_default();
    let uid = job.metadata.uid.clone().unwrap_or_default();
    let tmeta = spec.template.metadata.clone().unwrap_or_default();
    let mut labels: BTreeMap<String, String> = tmeta.labels.unwrap_or_default();
    for k in JOB_NAME_LABELS {
        labels.entry(k.into()).or_insert_with(|| name.clone());
    }
    for k in JOB_UID_LABELS {
        labels.entry(k.into()).or_insert_with(|| uid.clone());
    }
    let mut annotations = tmeta.annotations.unwrap_or_default();
    let mut pod_spec = spec.template.spec.clone().unwrap_or_default();
    let generate_name = match index {
        Some(i) => {
            labels.insert(INDEX_KEY.into(), i.to_string());
            annotations.insert(INDEX_KEY.into(), i.to_string());
            pod_spec
                .hostname
                .get_or_insert_with(|| format!("{name}-{i}"));
            for c in pod_spec
                .containers
                .iter_mut()
                .chain(pod_spec.init_containers.iter_mut().flatten())
            {
                let env = c.env.get_or_insert_default();
                if !env.iter().any(|e| e.name == INDEX_ENV) {
                    env.push(EnvVar {
                        name: INDEX_ENV.into(),
                        value: Some(i.to_string()),
                        value_from: None,
                    });
                }
            }
            format!("{name}-{i}-")
        }
        None => format!("{name}-"),
    };
    let pod = Pod {
        metadata: ObjectMeta {
            generate_name: Some(generate_name),
            namespace: Some(ns.clone()),
            labels: Some(labels),
            annotations: (!annotations.is_empty()).then_some(annotations),
            owner_references: Some(vec![new_controller_ref(job)]),
            ..Default::default()
        },
        spec: Some(pod_spec),
        status: None,
    };
    let created = cluster.create(&ns, &pod)?;
    let _ = cluster.record_event(
        job,
        "Normal",
        "SuccessfulCreate",
        &format!(
            "Created pod: {}",
            created.metadata.name.as_deref().unwrap_or("")
        ),
        COMPONENT,
    );
    Ok(created)
}

fn delete_pods(cluster: &dyn Cluster, job: &Job, pods: &[&Pod]) -> Result<()> {
    let ns = job.metadata.namespace.clone().unwrap_or_default();
    for p in pods {
        let name = p.metadata.name.as_deref().unwrap_or("");
        if cluster
            .delete::<Pod>(&ns, name)
            .ignore_not_found()?
            .is_some()
        {
            let _ = cluster.record_event(
                job,
                "Normal",
                "SuccessfulDelete",
                &format!("Deleted pod: {name}"),
                COMPONENT,
            );
        }
    }
    Ok(())
}

/// `ttlSecondsAfterFinished`: deletes the Job once expired, else how long to wait.
fn ttl(
    cluster: &dyn Cluster,
    job: &Job,
    spec: &JobSpec,
    st: &JobStatus,
    now: Timestamp,
) -> Result<Option<u64>> {
    let Some(ttl) = spec.ttl_seconds_after_finished else {
        return Ok(None);
    };
    let finished = st
        .completion_time
        .as_ref()
        .or_else(|| condition_true(st, "Failed").and_then(|c| c.last_transition_time.as_ref()))
        .map_or(now, |t| t.0);
    let expires = finished
        .checked_add(SignedDuration::from_secs(i64::from(ttl)))
        .unwrap_or(finished);
    if expires > now {
        return Ok(Some(millis_until(now, expires)));
    }
    let ns = job.metadata.namespace.as_deref().unwrap_or("");
    cluster
        .delete::<Job>(ns, job.metadata.name.as_deref().unwrap_or(""))
        .ignore_not_found()?;
    Ok(None)
}

/// Writes the status when it changed; returns the Job as stored.
fn write_status(cluster: &dyn Cluster, job: &Job, new: JobStatus) -> Result<Job> {
    let ns = job.metadata.namespace.as_deref().unwrap_or("");
    Ok(cluster.update_status_if_changed(ns, job, new)?)
}

#[cfg(test)]
mod tests;
