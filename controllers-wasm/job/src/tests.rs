use super::*;
use k8s_openapi::api::core::v1::{
    Container, ContainerState, ContainerStateTerminated, ContainerStatus, PodCondition, PodSpec,
    PodStatus, PodTemplateSpec,
};
use kedge_guest::meta::parse_time;
use kedge_guest::{FakeCluster, Verb};

fn job(f: impl FnOnce(&mut JobSpec)) -> Job {
    let mut spec = JobSpec {
        completions: Some(1),
        parallelism: Some(1),
        backoff_limit: Some(6),
        completion_mode: Some("NonIndexed".into()),
        suspend: Some(false),
        template: PodTemplateSpec {
            metadata: Some(ObjectMeta {
                labels: Some([("app".to_string(), "batch".to_string())].into()),
                ..Default::default()
            }),
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
    };
    f(&mut spec);
    Job {
        metadata: ObjectMeta {
            name: Some("pi".into()),
            namespace: Some("ns".into()),
            uid: Some("job-uid".into()),
            ..Default::default()
        },
        spec: Some(spec),
        status: None,
    }
}

fn run(fake: &FakeCluster) -> Outcome {
    JobController::reconcile(fake, &ObjectKey::of::<Job>("ns", "pi")).unwrap()
}

fn stored(fake: &FakeCluster) -> Job {
    fake.get::<Job>("ns", "pi").unwrap().unwrap()
}

fn status(fake: &FakeCluster) -> JobStatus {
    stored(fake).status.unwrap_or_default()
}

fn pods(fake: &FakeCluster) -> Vec<Pod> {
    fake.list::<Pod>("ns", "").unwrap()
}

fn active(fake: &FakeCluster) -> Vec<Pod> {
    pods(fake).into_iter().filter(is_active).collect()
}

fn cond<'a>(st: &'a JobStatus, t: &str) -> Option<&'a JobCondition> {
    condition_true(st, t)
}

fn has_event(fake: &FakeCluster, type_: &str, reason: &str, message: &str) -> bool {
    fake.list::<Event>("ns", "").unwrap().iter().any(|e| {
        e.type_.as_deref() == Some(type_)
            && e.reason.as_deref() == Some(reason)
            && e.message.as_deref() == Some(message)
    })
}

/// Ends `pod` with `phase` at `at`.
fn end(fake: &FakeCluster, pod: &Pod, phase: &str, at: &str) {
    let mut p = pod.clone();
    p.status = Some(PodStatus {
        phase: Some(phase.into()),
        container_statuses: Some(vec![ContainerStatus {
            name: "c".into(),
            state: Some(ContainerState {
                terminated: Some(ContainerStateTerminated {
                    exit_code: if phase == "Succeeded" { 0 } else { 1 },
                    finished_at: parse_time(at),
                    ..Default::default()
                }),
                ..Default::default()
            }),
            ..Default::default()
        }]),
        ..Default::default()
    });
    fake.seed(&p);
}

fn end_all(fake: &FakeCluster, phase: &str, at: &str) {
    for p in active(fake) {
        end(fake, &p, phase, at);
    }
}

fn running(fake: &FakeCluster, restarts: i32) {
    for mut p in active(fake) {
        p.status = Some(PodStatus {
            phase: Some("Running".into()),
            conditions: Some(vec![PodCondition {
                type_: "Ready".into(),
                status: "True".into(),
                ..Default::default()
            }]),
            container_statuses: Some(vec![ContainerStatus {
                name: "c".into(),
                restart_count: restarts,
                ..Default::default()
            }]),
            ..Default::default()
        });
        fake.seed(&p);
    }
}

#[test]
fn creates_labelled_owned_pods_up_to_parallelism() {
    let fake = FakeCluster::new();
    fake.seed(&job(|s| {
        s.completions = Some(3);
        s.parallelism = Some(2);
    }));
    assert_eq!(run(&fake), Outcome::done());
    let ps = pods(&fake);
    assert_eq!(ps.len(), 2);
    let p = &ps[0];
    assert!(p.metadata.name.as_deref().unwrap().starts_with("pi-"));
    let l = p.metadata.labels.clone().unwrap();
    assert_eq!(l["job-name"], "pi");
    assert_eq!(l["batch.kubernetes.io/job-name"], "pi");
    assert_eq!(l["batch.kubernetes.io/controller-uid"], "job-uid");
    assert_eq!(l["controller-uid"], "job-uid");
    assert_eq!(l["app"], "batch");
    let owner = controller_of(&p.metadata).unwrap();
    assert_eq!(
        (owner.kind.as_str(), owner.uid.as_str()),
        ("Job", "job-uid")
    );
    let st = status(&fake);
    assert_eq!((st.active, st.ready), (Some(2), Some(0)));
    assert_eq!(st.start_time, parse_time("2025-01-01T00:00:00Z"));
    assert!(has_event(
        &fake,
        "Normal",
        "SuccessfulCreate",
        &format!("Created pod: {}", p.metadata.name.clone().unwrap())
    ));

    // Level-triggered: nothing more while they run.
    fake.clear_writes();
    running(&fake, 0);
    run(&fake);
    assert_eq!(fake.count(Verb::Create, "Pod"), 0);
    assert_eq!(status(&fake).ready, Some(2));
}

#[test]
fn completions_reached_completes_the_job() {
    let fake = FakeCluster::new();
    fake.seed(&job(|s| {
        s.completions = Some(3);
        s.parallelism = Some(2);
    }));
    run(&fake);
    fake.set_now("2025-01-01T00:00:10Z");
    end_all(&fake, "Succeeded", "2025-01-01T00:00:09Z");
    run(&fake);
    // One more to go, only one pod needed.
    assert_eq!(active(&fake).len(), 1);
    assert_eq!(status(&fake).succeeded, Some(2));
    end_all(&fake, "Succeeded", "2025-01-01T00:00:10Z");
    fake.set_now("2025-01-01T00:00:20Z");
    run(&fake);
    let st = status(&fake);
    assert_eq!((st.succeeded, st.active, st.failed), (Some(3), None, None));
    let c = cond(&st, "Complete").unwrap();
    assert_eq!(c.reason.as_deref(), Some("CompletionsReached"));
    assert!(cond(&st, "SuccessCriteriaMet").is_some());
    assert_eq!(st.completion_time, parse_time("2025-01-01T00:00:20Z"));
    assert!(has_event(&fake, "Normal", "Completed", "Job completed"));
    fake.clear_writes();
    run(&fake);
    assert!(fake.writes().is_empty(), "finished job is left alone");
}

#[test]
fn work_queue_mode_completes_when_one_succeeded_and_none_active() {
    let fake = FakeCluster::new();
    fake.seed(&job(|s| {
        s.completions = None;
        s.parallelism = Some(3);
    }));
    run(&fake);
    let ps = active(&fake);
    assert_eq!(ps.len(), 3);
    end(&fake, &ps[0], "Succeeded", "2025-01-01T00:00:05Z");
    run(&fake);
    // No replacements after the first success; the others finish on their own.
    assert_eq!(active(&fake).len(), 2);
    assert!(cond(&status(&fake), "Complete").is_none());
    end_all(&fake, "Succeeded", "2025-01-01T00:00:06Z");
    run(&fake);
    let st = status(&fake);
    assert!(cond(&st, "Complete").is_some());
    assert_eq!(st.succeeded, Some(3));
}

#[test]
fn indexed_mode_gives_each_pod_its_index() {
    let fake = FakeCluster::new();
    fake.seed(&job(|s| {
        s.completions = Some(3);
        s.parallelism = Some(2);
        s.completion_mode = Some("Indexed".into());
    }));
    run(&fake);
    let mut ps = active(&fake);
    ps.sort_by_key(index_of);
    assert_eq!(
        ps.iter().map(index_of).collect::<Vec<_>>(),
        [Some(0), Some(1)]
    );
    let p1 = &ps[1];
    assert!(p1.metadata.name.as_deref().unwrap().starts_with("pi-1-"));
    assert_eq!(p1.metadata.labels.as_ref().unwrap()[INDEX_KEY], "1");
    let spec = p1.spec.as_ref().unwrap();
    assert_eq!(spec.hostname.as_deref(), Some("pi-1"));
    let env = spec.containers[0].env.as_ref().unwrap();
    assert!(
        env.iter()
            .any(|e| e.name == INDEX_ENV && e.value.as_deref() == Some("1"))
    );

    // Index 1 succeeds, index 0 fails: next come 0 (again) and 2, after the back-off.
    end(&fake, &ps[1], "Succeeded", "2025-01-01T00:00:05Z");
    end(&fake, &ps[0], "Failed", "2025-01-01T00:00:05Z");
    fake.set_now("2025-01-01T00:00:20Z");
    run(&fake);
    let st = status(&fake);
    assert_eq!(st.completed_indexes.as_deref(), Some("1"));
    let mut idx: Vec<_> = active(&fake).iter().map(index_of).collect();
    idx.sort();
    assert_eq!(idx, [Some(0), Some(2)]);
    end_all(&fake, "Succeeded", "2025-01-01T00:00:30Z");
    run(&fake);
    let st = status(&fake);
    assert_eq!(st.completed_indexes.as_deref(), Some("0-2"));
    assert_eq!(st.succeeded, Some(3));
    assert!(cond(&st, "Complete").is_some());
}

#[test]
fn failed_pods_are_replaced_after_exponential_back_off() {
    let fake = FakeCluster::new();
    fake.seed(&job(|_| {}));
    run(&fake);
    end_all(&fake, "Failed", "2025-01-01T00:00:05Z");
    fake.set_now("2025-01-01T00:00:06Z");
    // First failure: 10 s from the failure.
    assert_eq!(run(&fake), Outcome::requeue_after_ms(9_000));
    assert!(active(&fake).is_empty());
    assert_eq!(status(&fake).failed, Some(1));
    fake.set_now("2025-01-01T00:00:15Z");
    run(&fake);
    assert_eq!(active(&fake).len(), 1);
    // Second failure: 20 s.
    end_all(&fake, "Failed", "2025-01-01T00:00:20Z");
    fake.set_now("2025-01-01T00:00:20Z");
    assert_eq!(run(&fake), Outcome::requeue_after_ms(20_000));
    assert_eq!(status(&fake).failed, Some(2));
}

#[test]
fn back_off_is_capped_at_six_minutes() {
    let fake = FakeCluster::new();
    fake.seed(&job(|s| s.backoff_limit = Some(100)));
    let mut j = stored(&fake);
    j.status = Some(JobStatus {
        failed: Some(10),
        ..Default::default()
    });
    fake.seed(&j);
    run(&fake);
    end_all(&fake, "Failed", "2025-01-01T00:00:00Z");
    assert_eq!(run(&fake), Outcome::requeue_after_ms(360_000));
}

#[test]
fn backoff_limit_exceeded_fails_the_job() {
    let fake = FakeCluster::new();
    fake.seed(&job(|s| {
        s.backoff_limit = Some(1);
        s.parallelism = Some(2);
        s.completions = Some(4);
    }));
    run(&fake);
    let ps = active(&fake);
    end(&fake, &ps[0], "Failed", "2025-01-01T00:00:01Z");
    fake.set_now("2025-01-01T00:00:20Z");
    run(&fake);
    assert!(cond(&status(&fake), "Failed").is_none());
    let again = active(&fake);
    assert_eq!(again.len(), 2);
    let fresh = again
        .iter()
        .find(|p| p.metadata.name != ps[1].metadata.name)
        .unwrap();
    end(&fake, fresh, "Failed", "2025-01-01T00:00:25Z");
    run(&fake);
    let st = status(&fake);
    let failed = cond(&st, "Failed").unwrap();
    assert_eq!(failed.reason.as_deref(), Some("BackoffLimitExceeded"));
    assert!(cond(&st, "FailureTarget").is_some());
    assert_eq!((st.failed, st.active), (Some(2), None));
    assert!(active(&fake).is_empty(), "the still-running pod is deleted");
    assert!(has_event(
        &fake,
        "Warning",
        "BackoffLimitExceeded",
        "Job has reached the specified backoff limit"
    ));
    assert!(st.completion_time.is_none());
}

#[test]
fn on_failure_counts_container_restarts() {
    let fake = FakeCluster::new();
    fake.seed(&job(|s| {
        s.backoff_limit = Some(3);
        s.template.spec.as_mut().unwrap().restart_policy = Some("OnFailure".into());
    }));
    run(&fake);
    running(&fake, 2);
    run(&fake);
    assert!(cond(&status(&fake), "Failed").is_none());
    running(&fake, 3);
    run(&fake);
    let st = status(&fake);
    assert_eq!(
        cond(&st, "Failed").unwrap().reason.as_deref(),
        Some("BackoffLimitExceeded")
    );
    assert!(active(&fake).is_empty());
}

#[test]
fn active_deadline_fails_the_job() {
    let fake = FakeCluster::new();
    fake.seed(&job(|s| s.active_deadline_seconds = Some(30)));
    assert_eq!(run(&fake), Outcome::requeue_after_ms(30_000));
    fake.set_now("2025-01-01T00:00:30Z");
    run(&fake);
    let st = status(&fake);
    assert_eq!(
        cond(&st, "Failed").unwrap().reason.as_deref(),
        Some("DeadlineExceeded")
    );
    assert!(active(&fake).is_empty());
    assert!(has_event(
        &fake,
        "Warning",
        "DeadlineExceeded",
        "Job was active longer than specified deadline"
    ));
}

#[test]
fn suspend_deletes_pods_and_resume_restarts_the_clock() {
    let fake = FakeCluster::new();
    fake.seed(&job(|s| s.parallelism = Some(2)));
    run(&fake);
    let mut j = stored(&fake);
    j.spec.as_mut().unwrap().suspend = Some(true);
    fake.seed(&j);
    run(&fake);
    assert!(active(&fake).is_empty());
    let st = status(&fake);
    assert_eq!(
        cond(&st, "Suspended").unwrap().reason.as_deref(),
        Some("JobSuspended")
    );
    assert!(st.start_time.is_none());
    assert!(has_event(&fake, "Normal", "Suspended", "Job suspended"));

    let mut j = stored(&fake);
    j.spec.as_mut().unwrap().suspend = Some(false);
    fake.seed(&j);
    fake.set_now("2025-01-01T01:00:00Z");
    run(&fake);
    assert_eq!(active(&fake).len(), 1);
    let st = status(&fake);
    assert!(cond(&st, "Suspended").is_none());
    assert_eq!(st.start_time, parse_time("2025-01-01T01:00:00Z"));
    assert!(has_event(&fake, "Normal", "Resumed", "Job resumed"));
}

#[test]
fn parallelism_decrease_deletes_extra_pods() {
    let fake = FakeCluster::new();
    fake.seed(&job(|s| {
        s.parallelism = Some(3);
        s.completions = Some(10);
    }));
    run(&fake);
    let mut j = stored(&fake);
    j.spec.as_mut().unwrap().parallelism = Some(1);
    fake.seed(&j);
    run(&fake);
    assert_eq!(active(&fake).len(), 1);
    assert_eq!(status(&fake).active, Some(1));
}

#[test]
fn ttl_after_finished_deletes_the_job() {
    let fake = FakeCluster::new();
    fake.seed(&job(|s| s.ttl_seconds_after_finished = Some(60)));
    run(&fake);
    end_all(&fake, "Succeeded", "2025-01-01T00:00:05Z");
    fake.set_now("2025-01-01T00:00:05Z");
    assert_eq!(run(&fake), Outcome::requeue_after_ms(60_000));
    fake.set_now("2025-01-01T00:01:00Z");
    assert_eq!(run(&fake), Outcome::requeue_after_ms(5_000));
    fake.set_now("2025-01-01T00:01:05Z");
    assert_eq!(run(&fake), Outcome::done());
    assert!(fake.get::<Job>("ns", "pi").unwrap().is_none());
}

#[test]
fn ttl_zero_deletes_a_failed_job_at_once() {
    let fake = FakeCluster::new();
    fake.seed(&job(|s| {
        s.ttl_seconds_after_finished = Some(0);
        s.backoff_limit = Some(0);
    }));
    run(&fake);
    end_all(&fake, "Failed", "2025-01-01T00:00:05Z");
    run(&fake);
    assert!(fake.get::<Job>("ns", "pi").unwrap().is_none());
}

#[test]
fn pods_of_other_owners_are_ignored() {
    let fake = FakeCluster::new();
    fake.seed(&job(|_| {}));
    let mut stranger = Pod::default();
    stranger.metadata.name = Some("pi-zzzzz".into());
    stranger.metadata.namespace = Some("ns".into());
    stranger.metadata.labels = Some([("job-name".to_string(), "pi".to_string())].into());
    fake.seed(&stranger);
    run(&fake);
    assert_eq!(fake.count(Verb::Create, "Pod"), 1);
}

#[test]
fn index_sets_round_trip() {
    let set = parse_indexes("0,2-4,7");
    assert_eq!(set.iter().copied().collect::<Vec<_>>(), [0, 2, 3, 4, 7]);
    assert_eq!(format_indexes(&set), "0,2-4,7");
    assert_eq!(format_indexes(&BTreeSet::new()), "");
}
