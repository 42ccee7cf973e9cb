//! The CronJob controller as a kedge plugin: creates a Job from `spec.jobTemplate` at each
//! time `spec.schedule` names, like kube-controller-manager's cronjob-controller (v2).
//!
//! - Jobs are named `<cronjob>-<scheduled time in minutes since the epoch>` and carry the
//!   annotation `batch.kubernetes.io/cronjob-scheduled-timestamp` (RFC 3339 in the
//!   CronJob's time zone); the CronJob is their controlling owner.
//! - Schedules: see [`cron`]. `spec.timeZone` takes any IANA name (the time zone database
//!   is compiled into the plugin); unset means UTC.
//! - Only the most recent missed time is started. More than 100 missed times since the last
//!   one (or within `startingDeadlineSeconds`) gives a `TooManyMissedTimes` warning first.
//!   A time older than `startingDeadlineSeconds` is skipped (`MissSchedule`).
//! - `concurrencyPolicy`: `Allow`; `Forbid` skips a run while a Job is active (and starts it
//!   when the active one finishes, if still within the deadline); `Replace` deletes the
//!   active Jobs first.
//! - `suspend` stops new runs; active Jobs keep running.
//! - Finished Jobs beyond `successfulJobsHistoryLimit` / `failedJobsHistoryLimit` are
//!   deleted, oldest first (background propagation deletes their pods).
//! - Status: `active` references, `lastScheduleTime`, `lastSuccessfulTime`. The reconcile
//!   requeues itself for the next scheduled time.

pub mod cron;

use jiff::Timestamp;
use jiff::tz::TimeZone;
use k8s_openapi::api::batch::v1::{CronJob, CronJobStatus, Job, JobStatus};
use k8s_openapi::api::core::v1::{Event, ObjectReference};
use k8s_openapi::apimachinery::pkg::apis::meta::v1::{ObjectMeta, Time};
use kedge_guest::meta::{controller_of, new_controller_ref};
use kedge_guest::{
    ApiError, ApiResultExt, Cluster, ClusterExt, Controller, KindRef, LogLevel, ObjectKey, Outcome,
    Registration, Result,
};

use crate::cron::{NextRun, Schedule};

/// The Events' source, as Kubernetes names the controller.
const COMPONENT: &str = "cronjob-controller";
/// The annotation carrying the scheduled time on each Job.
pub const SCHEDULED_TIMESTAMP_ANNOTATION: &str = "batch.kubernetes.io/cronjob-scheduled-timestamp";
/// More missed start times than this, and Kubernetes warns (and still starts the latest).
const MAX_MISSED: i64 = 100;

/// The plugin type wired to the component exports.
pub struct CronJobController;

impl Controller for CronJobController {
    fn registration() -> Registration {
        Registration::new("cronjob", KindRef::of::<CronJob>())
            .owns([KindRef::of::<Job>()])
            .writes([
                KindRef::of::<Job>(),
                KindRef::of::<CronJob>(),
                KindRef::of::<Event>(),
            ])
    }

    fn reconcile(cluster: &dyn Cluster, key: &ObjectKey) -> Result<Outcome> {
        reconcile(cluster, key)
    }
}

kedge_guest::export_controller!(CronJobController);

/// How a Job ended, read from its conditions.
fn finished(job: &Job) -> Option<&'static str> {
    let conds = job.status.as_ref()?.conditions.as_ref()?;
    conds
        .iter()
        .find_map(|c| match (c.type_.as_str(), c.status.as_str()) {
            ("Complete", "True") => Some("Complete"),
            ("Failed", "True") => Some("Failed"),
            _ => None,
        })
}

fn job_ref(job: &Job) -> ObjectReference {
    ObjectReference {
        api_version: Some("batch/v1".into()),
        kind: Some("Job".into()),
        name: job.metadata.name.clone(),
        namespace: job.metadata.namespace.clone(),
        uid: job.metadata.uid.clone(),
        resource_version: job.metadata.resource_version.clone(),
        ..Default::default()
    }
}

fn job_name(cj: &str, scheduled: Timestamp) -> String {
    format!("{cj}-{}", scheduled.as_second().div_euclid(60))
}

/// The most recent scheduled time in `(earliest, now]` and how many there were (the count
/// is estimated from the interval between the first two when there are more than 100, as
/// Kubernetes does).
fn most_recent(
    sched: &Schedule,
    tz: &TimeZone,
    earliest: Timestamp,
    now: Timestamp,
) -> (Option<Timestamp>, i64) {
    let mut t = earliest;
    let mut latest = None;
    let mut count = 0;
    while let Some(n) = sched.next_after(t, tz).filter(|n| *n <= now) {
        count += 1;
        latest = Some(n);
        t = n;
        if count > MAX_MISSED {
            break;
        }
    }
    if count <= MAX_MISSED {
        return (latest, count);
    }
    let first = sched.next_after(earliest, tz);
    let second = first.and_then(|f| sched.next_after(f, tz));
    if let (Some(a), Some(b)) = (first, second) {
        let step = (b.as_second() - a.as_second()).max(1);
        count = (now.as_second() - a.as_second()) / step + 1;
    }
    // Find the latest one by looking back over widening windows, so a years-old
    // lastScheduleTime on an every-minute schedule costs a handful of steps, not millions.
    for back in [
        3_600i64,
        86_400,
        32 * 86_400,
        367 * 86_400,
        6 * 367 * 86_400,
    ] {
        let Ok(from) = now.checked_sub(jiff::SignedDuration::from_secs(back)) else {
            continue;
        };
        let from = from.max(earliest);
        let mut t = from;
        let mut found = None;
        while let Some(n) = sched.next_after(t, tz).filter(|n| *n <= now) {
            found = Some(n);
            t = n;
        }
        if found.is_some() {
            return (found, count);
        }
    }
    (latest, count)
}

fn reconcile(cluster: &dyn Cluster, key: &ObjectKey) -> Result<Outcome> {
    let ns = key.namespace.as_str();
    let Some(cj) = cluster.get::<CronJob>(ns, &key.name)? else {
        return Ok(Outcome::done());
    };
    let Some(spec) = cj.spec.clone() else {
        return Ok(Outcome::done());
    };
    let now: Timestamp = cluster
        .now()
        .parse()
        .map_err(|e| format!("host clock: {e}"))?;
    let uid = cj.metadata.uid.clone().unwrap_or_default();
    let old_status = cj.status.clone().unwrap_or_default();
    let mut status = old_status.clone();

    let mut jobs: Vec<Job> = cluster
        .list::<Job>(ns, "")?
        .into_iter()
        .filter(|j| controller_of(&j.metadata).is_some_and(|r| r.uid == uid))
        .collect();

    // Active list: exactly the owned Jobs that have not finished.
    let was_active: Vec<String> = old_status
        .active
        .iter()
        .flatten()
        .filter_map(|r| r.uid.clone())
        .collect();
    let mut active = Vec::new();
    for job in &jobs {
        let name = job.metadata.name.clone().unwrap_or_default();
        match finished(job) {
            None => active.push(job_ref(job)),
            Some(how) => {
                if job
                    .metadata
                    .uid
                    .as_ref()
                    .is_some_and(|u| was_active.contains(u))
                {
                    let _ = cluster.record_event(
                        &cj,
                        "Normal",
                        "SawCompletedJob",
                        &format!("Saw completed job: {name}, status: {how}"),
                        COMPONENT,
                    );
                }
                if how == "Complete"
                    && let Some(done) = job.status.as_ref().and_then(|s| s.completion_time.clone())
                    && status
                        .last_successful_time
                        .as_ref()
                        .is_none_or(|t| t.0 < done.0)
                {
                    status.last_successful_time = Some(done);
                }
            }
        }
    }
    status.active = (!active.is_empty()).then_some(active);

    cleanup_history(cluster, &cj, &mut jobs, &spec)?;

    if cj.metadata.deletion_timestamp.is_some() || spec.suspend == Some(true) {
        write_status(cluster, &cj, status)?;
        return Ok(Outcome::done());
    }

    let sched = match Schedule::parse(&spec.schedule) {
        Ok(s) => s,
        Err(e) => {
            warn_once(
                cluster,
                &cj,
                "UnparseableSchedule",
                &format!("unparseable schedule: {:?} : {e}", spec.schedule),
            );
            write_status(cluster, &cj, status)?;
            return Ok(Outcome::done());
        }
    };
    let tz = match cron::time_zone(spec.time_zone.as_deref()) {
        Ok(tz) => tz,
        Err(e) => {
            warn_once(
                cluster,
                &cj,
                "UnknownTimeZone",
                &format!(
                    "invalid timeZone: {:?}: {e}",
                    spec.time_zone.as_deref().unwrap_or("")
                ),
            );
            write_status(cluster, &cj, status)?;
            return Ok(Outcome::done());
        }
    };

    let mut earliest = status
        .last_schedule_time
        .as_ref()
        .or(cj.metadata.creation_timestamp.as_ref())
        .map(|t| t.0)
        .unwrap_or(now);
    if let Some(sds) = spec.starting_deadline_seconds
        && let Ok(limit) = now.checked_sub(jiff::SignedDuration::from_secs(sds))
        && limit > earliest
    {
        earliest = limit;
    }
    let (scheduled, missed) = most_recent(&sched, &tz, earliest, now);
    if missed > MAX_MISSED {
        let _ = cluster.record_event(
            &cj,
            "Warning",
            "TooManyMissedTimes",
            &format!(
                "too many missed start times: {missed}. Set or decrease .spec.startingDeadlineSeconds or check clock skew"
            ),
            COMPONENT,
        );
    }

    if let Some(scheduled) = scheduled {
        run_once(cluster, &cj, &spec, &mut status, scheduled, now, &tz)?;
    }
    write_status(cluster, &cj, status)?;

    Ok(match sched.next_after(now, &tz) {
        // A little after the time itself, so the host clock has surely passed it.
        Some(next) => Outcome::requeue_after_ms(
            u64::try_from(next.duration_since(now).as_millis()).unwrap_or(0) + 100,
        ),
        None => Outcome::done(),
    })
}

/// Starts the run for `scheduled` unless policy or deadline says otherwise.
fn run_once(
    cluster: &dyn Cluster,
    cj: &CronJob,
    spec: &k8s_openapi::api::batch::v1::CronJobSpec,
    status: &mut CronJobStatus,
    scheduled: Timestamp,
    now: Timestamp,
    tz: &TimeZone,
) -> Result<()> {
    let ns = cj.metadata.namespace.clone().unwrap_or_default();
    let cj_name = cj.metadata.name.clone().unwrap_or_default();
    if let Some(sds) = spec.starting_deadline_seconds
        && scheduled
            .checked_add(jiff::SignedDuration::from_secs(sds))
            .is_ok_and(|d| d < now)
    {
        let _ = cluster.record_event(
            cj,
            "Warning",
            "MissSchedule",
            &format!(
                "Missed scheduled time to start a job: {}",
                scheduled.strftime("%a, %d %b %Y %H:%M:%S %z")
            ),
            COMPONENT,
        );
        return Ok(());
    }
    let active: Vec<ObjectReference> = status.active.clone().unwrap_or_default();
    let name = job_name(&cj_name, scheduled);
    if active
        .iter()
        .any(|r| r.name.as_deref() == Some(name.as_str()))
    {
        return Ok(());
    }
    match spec.concurrency_policy.as_deref() {
        Some("Forbid") if !active.is_empty() => {
            let _ = cluster.record_event(
                cj,
                "Normal",
                "JobAlreadyActive",
                "Not starting job because prior execution is running and concurrency policy is Forbid",
                COMPONENT,
            );
            return Ok(());
        }
        Some("Replace") => {
            for r in &active {
                let jname = r.name.clone().unwrap_or_default();
                if cluster
                    .delete::<Job>(&ns, &jname)
                    .ignore_not_found()?
                    .is_some()
                {
                    let _ = cluster.record_event(
                        cj,
                        "Normal",
                        "SuccessfulDelete",
                        &format!("Deleted job {jname}"),
                        COMPONENT,
                    );
                }
            }
            status.active = None;
        }
        _ => {}
    }

    let tmpl = &spec.job_template;
    let tmeta = tmpl.metadata.clone().unwrap_or_default();
    let mut annotations = tmeta.annotations.unwrap_or_default();
    annotations.insert(
        SCHEDULED_TIMESTAMP_ANNOTATION.into(),
        scheduled
            .to_zoned(tz.clone())
            .strftime("%Y-%m-%dT%H:%M:%S%:z")
            .to_string(),
    );
    let job = Job {
        metadata: ObjectMeta {
            name: Some(name.clone()),
            namespace: Some(ns.clone()),
            labels: tmeta.labels,
            annotations: Some(annotations),
            owner_references: Some(vec![new_controller_ref(cj)]),
            ..Default::default()
        },
        spec: tmpl.spec.clone(),
        status: None,
    };
    let created = match cluster.create(&ns, &job) {
        Ok(j) => {
            let _ = cluster.record_event(
                cj,
                "Normal",
                "SuccessfulCreate",
                &format!("Created job {name}"),
                COMPONENT,
            );
            j
        }
        // Created by an earlier reconcile whose status write was lost: adopt the fact.
        Err(ApiError::AlreadyExists(_)) => match cluster.get::<Job>(&ns, &name)? {
            Some(j) if controller_of(&j.metadata).map(|r| &r.uid) == cj.metadata.uid.as_ref() => j,
            _ => {
                cluster.log(
                    LogLevel::Warn,
                    &format!("cronjob {ns}/{cj_name}: job {name} exists and is not ours"),
                );
                return Ok(());
            }
        },
        Err(e) => return Err(e.into()),
    };
    if finished(&created).is_none() {
        status
            .active
            .get_or_insert_default()
            .push(job_ref(&created));
    }
    status.last_schedule_time = Some(Time(scheduled));
    Ok(())
}

/// Deletes the oldest finished Jobs beyond the history limits.
fn cleanup_history(
    cluster: &dyn Cluster,
    cj: &CronJob,
    jobs: &mut [Job],
    spec: &k8s_openapi::api::batch::v1::CronJobSpec,
) -> Result<()> {
    let ns = cj.metadata.namespace.clone().unwrap_or_default();
    jobs.sort_by_key(|j| {
        (
            j.status
                .as_ref()
                .and_then(|s: &JobStatus| s.start_time.clone())
                .or(j.metadata.creation_timestamp.clone()),
            j.metadata.name.clone(),
        )
    });
    for (how, limit) in [
        ("Complete", spec.successful_jobs_history_limit),
        ("Failed", spec.failed_jobs_history_limit),
    ] {
        let Some(limit) = limit else { continue };
        let done: Vec<&Job> = jobs.iter().filter(|j| finished(j) == Some(how)).collect();
        let excess = done
            .len()
            .saturating_sub(usize::try_from(limit).unwrap_or(0));
        for job in done.into_iter().take(excess) {
            let name = job.metadata.name.clone().unwrap_or_default();
            if cluster
                .delete::<Job>(&ns, &name)
                .ignore_not_found()?
                .is_some()
            {
                let _ = cluster.record_event(
                    cj,
                    "Normal",
                    "SuccessfulDelete",
                    &format!("Deleted job {name}"),
                    COMPONENT,
                );
            }
        }
    }
    Ok(())
}

/// A warning about a broken spec. No requeue follows, so it repeats only when the
/// CronJob or one of its Jobs changes.
fn warn_once(cluster: &dyn Cluster, cj: &CronJob, reason: &str, message: &str) {
    let _ = cluster.record_event(cj, "Warning", reason, message, COMPONENT);
}

fn write_status(cluster: &dyn Cluster, cj: &CronJob, new: CronJobStatus) -> Result<()> {
    let ns = cj.metadata.namespace.as_deref().unwrap_or("");
    cluster.update_status_if_changed(ns, cj, new)?;
    Ok(())
}

#[cfg(test)]
mod tests;
