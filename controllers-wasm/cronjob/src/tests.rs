use super::*;
use k8s_openapi::api::batch::v1::{CronJobSpec, JobCondition, JobSpec, JobTemplateSpec};
use k8s_openapi::api::core::v1::{Container, PodSpec, PodTemplateSpec};
use kedge_guest::{FakeCluster, Verb};

fn cronjob(schedule: &str, f: impl FnOnce(&mut CronJobSpec)) -> CronJob {
    let mut spec = CronJobSpec {
        schedule: schedule.into(),
        concurrency_policy: Some("Allow".into()),
        suspend: Some(false),
        successful_jobs_history_limit: Some(3),
        failed_jobs_history_limit: Some(1),
        job_template: JobTemplateSpec {
            metadata: Some(ObjectMeta {
                labels: Some([("app".to_string(), "tick".to_string())].into()),
                annotations: Some([("note".to_string(), "x".to_string())].into()),
                ..Default::default()
            }),
            spec: Some(JobSpec {
                template: PodTemplateSpec {
                    metadata: None,
                    spec: Some(PodSpec {
                        containers: vec![Container {
                            name: "c".into(),
                            image: Some("busybox".into()),
                            ..Default::default()
                        }],
                        restart_policy: Some("Never".into()),
                        ..Default::default()
                    }),
                },
                ..Default::default()
            }),
        },
        ..Default::default()
    };
    f(&mut spec);
    CronJob {
        metadata: ObjectMeta {
            name: Some("tick".into()),
            namespace: Some("ns".into()),
            creation_timestamp: kedge_guest::meta::parse_time("2025-01-01T00:00:00Z"),
            ..Default::default()
        },
        spec: Some(spec),
        status: None,
    }
}

fn run(fake: &FakeCluster) -> Outcome {
    CronJobController::reconcile(fake, &ObjectKey::of::<CronJob>("ns", "tick")).unwrap()
}

fn stored(fake: &FakeCluster) -> CronJob {
    fake.get::<CronJob>("ns", "tick").unwrap().unwrap()
}

fn jobs(fake: &FakeCluster) -> Vec<Job> {
    fake.list::<Job>("ns", "").unwrap()
}

fn events(fake: &FakeCluster) -> Vec<(String, String, String)> {
    fake.list::<Event>("ns", "")
        .unwrap()
        .into_iter()
        .map(|e| {
            (
                e.type_.unwrap_or_default(),
                e.reason.unwrap_or_default(),
                e.message.unwrap_or_default(),
            )
        })
        .collect()
}

fn has_event(fake: &FakeCluster, reason: &str) -> bool {
    events(fake).iter().any(|(_, r, _)| r == reason)
}

fn finish(fake: &FakeCluster, name: &str, how: &str, at: &str) {
    let mut job = fake.get::<Job>("ns", name).unwrap().unwrap();
    let st = job.status.get_or_insert_default();
    st.start_time = job.metadata.creation_timestamp.clone();
    st.conditions = Some(vec![JobCondition {
        type_: how.into(),
        status: "True".into(),
        ..Default::default()
    }]);
    if how == "Complete" {
        st.completion_time = kedge_guest::meta::parse_time(at);
    }
    fake.seed(&job);
}

#[test]
fn nothing_before_first_time_then_job_at_the_minute() {
    let fake = FakeCluster::new();
    fake.seed(&cronjob("*/5 * * * *", |_| {}));
    fake.set_now("2025-01-01T00:02:00Z");
    assert_eq!(run(&fake), Outcome::requeue_after_ms(180_100));
    assert!(jobs(&fake).is_empty());

    fake.set_now("2025-01-01T00:05:00.5Z");
    let out = run(&fake);
    assert_eq!(out.requeue_after_ms, Some(299_600));
    let js = jobs(&fake);
    assert_eq!(js.len(), 1);
    let job = &js[0];
    // 2025-01-01T00:05Z is 28_928_165 minutes after the epoch.
    assert_eq!(job.metadata.name.as_deref(), Some("tick-28928165"));
    let ann = job.metadata.annotations.clone().unwrap();
    assert_eq!(
        ann[SCHEDULED_TIMESTAMP_ANNOTATION],
        "2025-01-01T00:05:00+00:00"
    );
    assert_eq!(ann["note"], "x");
    assert_eq!(job.metadata.labels.clone().unwrap()["app"], "tick");
    let owner = controller_of(&job.metadata).unwrap();
    assert_eq!(
        (owner.kind.as_str(), owner.name.as_str()),
        ("CronJob", "tick")
    );
    assert!(job.spec.is_some());
    let st = stored(&fake).status.unwrap();
    assert_eq!(st.active.unwrap()[0].name.as_deref(), Some("tick-28928165"));
    assert_eq!(
        st.last_schedule_time,
        kedge_guest::meta::parse_time("2025-01-01T00:05:00Z")
    );
    assert!(events(&fake).contains(&(
        "Normal".into(),
        "SuccessfulCreate".into(),
        "Created job tick-28928165".into()
    )));

    // Level-triggered: again at the same time creates nothing.
    fake.clear_writes();
    run(&fake);
    assert_eq!(fake.count(Verb::Create, "Job"), 0);
}

#[test]
fn finished_job_leaves_active_and_sets_last_successful_time() {
    let fake = FakeCluster::new();
    fake.seed(&cronjob("* * * * *", |_| {}));
    fake.set_now("2025-01-01T00:01:00Z");
    run(&fake);
    finish(&fake, "tick-28928161", "Complete", "2025-01-01T00:01:30Z");
    fake.set_now("2025-01-01T00:01:40Z");
    run(&fake);
    let st = stored(&fake).status.unwrap();
    assert!(st.active.is_none());
    assert_eq!(
        st.last_successful_time,
        kedge_guest::meta::parse_time("2025-01-01T00:01:30Z")
    );
    assert!(events(&fake).iter().any(|(_, r, m)| r == "SawCompletedJob"
        && m == "Saw completed job: tick-28928161, status: Complete"));
}

#[test]
fn forbid_skips_while_active_and_starts_when_it_finishes() {
    let fake = FakeCluster::new();
    fake.seed(&cronjob("* * * * *", |s| {
        s.concurrency_policy = Some("Forbid".into())
    }));
    fake.set_now("2025-01-01T00:01:00Z");
    run(&fake);
    fake.set_now("2025-01-01T00:02:00Z");
    run(&fake);
    assert_eq!(jobs(&fake).len(), 1);
    assert!(has_event(&fake, "JobAlreadyActive"));
    finish(&fake, "tick-28928161", "Complete", "2025-01-01T00:02:10Z");
    fake.set_now("2025-01-01T00:02:20Z");
    run(&fake);
    assert!(fake.get::<Job>("ns", "tick-28928162").unwrap().is_some());
}

#[test]
fn allow_runs_concurrently() {
    let fake = FakeCluster::new();
    fake.seed(&cronjob("* * * * *", |_| {}));
    for t in ["2025-01-01T00:01:00Z", "2025-01-01T00:02:00Z"] {
        fake.set_now(t);
        run(&fake);
    }
    assert_eq!(jobs(&fake).len(), 2);
    assert_eq!(stored(&fake).status.unwrap().active.unwrap().len(), 2);
}

#[test]
fn replace_deletes_the_active_job() {
    let fake = FakeCluster::new();
    fake.seed(&cronjob("* * * * *", |s| {
        s.concurrency_policy = Some("Replace".into())
    }));
    fake.set_now("2025-01-01T00:01:00Z");
    run(&fake);
    fake.set_now("2025-01-01T00:02:00Z");
    run(&fake);
    let names: Vec<_> = jobs(&fake)
        .into_iter()
        .filter_map(|j| j.metadata.name)
        .collect();
    assert_eq!(names, ["tick-28928162"]);
    assert!(
        events(&fake)
            .iter()
            .any(|(_, r, m)| r == "SuccessfulDelete" && m == "Deleted job tick-28928161")
    );
    let active = stored(&fake).status.unwrap().active.unwrap();
    assert_eq!(active.len(), 1);
}

#[test]
fn too_many_missed_warns_and_starts_the_most_recent() {
    let fake = FakeCluster::new();
    fake.seed(&cronjob("* * * * *", |_| {}));
    // Three days later: ~4320 missed minutes.
    fake.set_now("2025-01-04T00:00:30Z");
    run(&fake);
    assert!(events(&fake).iter().any(|(t, r, m)| t == "Warning"
        && r == "TooManyMissedTimes"
        && m.starts_with("too many missed start times: 4320.")));
    let names: Vec<_> = jobs(&fake)
        .into_iter()
        .filter_map(|j| j.metadata.name)
        .collect();
    // 2025-01-04T00:00Z.
    assert_eq!(names, ["tick-28932480"]);
}

#[test]
fn starting_deadline_bounds_the_missed_window() {
    let fake = FakeCluster::new();
    fake.seed(&cronjob("0 * * * *", |s| {
        s.starting_deadline_seconds = Some(60)
    }));
    // 01:00 was missed by 5 minutes: outside the 60 s window, nothing runs.
    fake.set_now("2025-01-01T01:05:00Z");
    assert_eq!(run(&fake), Outcome::requeue_after_ms(55 * 60_000 + 100));
    assert!(jobs(&fake).is_empty());
    // Within the window it runs, and no warning about missed times.
    fake.set_now("2025-01-01T02:00:45Z");
    run(&fake);
    assert_eq!(jobs(&fake).len(), 1);
    assert!(!has_event(&fake, "TooManyMissedTimes"));
}

#[test]
fn starting_deadline_prevents_the_too_many_missed_warning() {
    let fake = FakeCluster::new();
    fake.seed(&cronjob("* * * * *", |s| {
        s.starting_deadline_seconds = Some(300)
    }));
    fake.set_now("2025-01-04T00:00:30Z");
    run(&fake);
    assert!(!has_event(&fake, "TooManyMissedTimes"));
    assert_eq!(jobs(&fake).len(), 1);
}

#[test]
fn suspend_stops_new_runs() {
    let fake = FakeCluster::new();
    fake.seed(&cronjob("* * * * *", |s| s.suspend = Some(true)));
    fake.set_now("2025-01-01T00:05:00Z");
    assert_eq!(run(&fake), Outcome::done());
    assert!(jobs(&fake).is_empty());
}

#[test]
fn history_limits_delete_oldest_finished_jobs() {
    let fake = FakeCluster::new();
    fake.seed(&cronjob("* * * * *", |s| {
        s.successful_jobs_history_limit = Some(2);
        s.failed_jobs_history_limit = Some(1);
    }));
    for m in 1..=6 {
        fake.set_now(&format!("2025-01-01T00:0{m}:00Z"));
        run(&fake);
        let name = format!("tick-{}", 28_928_160 + m);
        let how = if m % 2 == 0 { "Failed" } else { "Complete" };
        finish(&fake, &name, how, &format!("2025-01-01T00:0{m}:30Z"));
    }
    fake.set_now("2025-01-01T00:06:40Z");
    run(&fake);
    let mut names: Vec<_> = jobs(&fake)
        .into_iter()
        .filter_map(|j| j.metadata.name)
        .collect();
    names.sort();
    // Complete: 1,3,5 → keep 3,5. Failed: 2,4,6 → keep 6.
    assert_eq!(names, ["tick-28928163", "tick-28928165", "tick-28928166"]);
    assert!(has_event(&fake, "SuccessfulDelete"));
}

#[test]
fn time_zone_shifts_the_schedule() {
    let fake = FakeCluster::new();
    fake.seed(&cronjob("0 9 * * *", |s| {
        s.time_zone = Some("Asia/Tokyo".into())
    }));
    // 09:00 in Tokyo is 00:00 UTC.
    fake.set_now("2025-01-02T00:00:10Z");
    run(&fake);
    let job = jobs(&fake).pop().unwrap();
    assert_eq!(
        job.metadata.annotations.unwrap()[SCHEDULED_TIMESTAMP_ANNOTATION],
        "2025-01-02T09:00:00+09:00"
    );
}

#[test]
fn bad_schedule_or_zone_is_reported_not_retried() {
    let fake = FakeCluster::new();
    fake.seed(&cronjob("TZ=UTC * * * * *", |_| {}));
    assert_eq!(run(&fake), Outcome::done());
    assert!(events(&fake).iter().any(|(t, r, m)| t == "Warning"
        && r == "UnparseableSchedule"
        && m.contains("use timeZone field instead")));

    let fake = FakeCluster::new();
    fake.seed(&cronjob("* * * * *", |s| {
        s.time_zone = Some("Mars/Base".into())
    }));
    assert_eq!(run(&fake), Outcome::done());
    assert!(has_event(&fake, "UnknownTimeZone"));
    assert!(jobs(&fake).is_empty());
}

#[test]
fn jobs_of_others_are_ignored() {
    let fake = FakeCluster::new();
    fake.seed(&cronjob("* * * * *", |_| {}));
    let mut other = Job::default();
    other.metadata.name = Some("tick-28928161".into());
    other.metadata.namespace = Some("ns".into());
    fake.seed(&other);
    fake.set_now("2025-01-01T00:01:00Z");
    run(&fake);
    let st = stored(&fake).status.unwrap_or_default();
    assert!(st.active.is_none());
    assert!(st.last_schedule_time.is_none());
}
