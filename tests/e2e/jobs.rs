//! Jobs and CronJobs end to end, on one cluster with one agent: a Job running 3 completions
//! two at a time completes; a failing Job with `backoffLimit: 1` fails with
//! BackoffLimitExceeded after one back-off; an every-minute CronJob creates its first Job
//! within 75 s (the schedule is real: no test-only shortcut in the controller).

use std::time::Duration;

use serde_json::Value;

use crate::harness::{Cluster, wait_for};

const IMAGE: &str = "kedge.dev/samples/hello-wasm:v1";

fn job_manifest(name: &str, exit_code: i32, extra_spec: &str) -> String {
    format!(
        r#"{{"apiVersion":"batch/v1","kind":"Job","metadata":{{"name":"{name}"}},
        "spec":{{{extra_spec}"template":{{"spec":{{"restartPolicy":"Never","containers":[{{
          "name":"hello","image":"{IMAGE}",
          "env":[{{"name":"HELLO_EXIT_AFTER_SECS","value":"0"}},
                 {{"name":"HELLO_EXIT_CODE","value":"{exit_code}"}}]}}]}}}}}}}}"#
    )
}

fn get(c: &Cluster, what: &str) -> Option<Value> {
    let r = c.kubectl(&["get", what, "-o", "json"]);
    r.ok.then(|| serde_json::from_str(&r.stdout).unwrap())
}

fn condition(job: &Value, type_: &str) -> Option<Value> {
    job.pointer("/status/conditions")?
        .as_array()?
        .iter()
        .find(|c| c["type"] == type_ && c["status"] == "True")
        .cloned()
}

#[test]
fn jobs_complete_fail_and_cronjobs_fire() {
    let mut c = Cluster::start();
    let token = c.token.clone();
    c.start_agent("node-a", &token);

    // The CronJob first: its first run is up to a minute away.
    let cron = format!(
        r#"{{"apiVersion":"batch/v1","kind":"CronJob","metadata":{{"name":"tick"}},
        "spec":{{"schedule":"*/1 * * * *","jobTemplate":{{"spec":{{"template":{{"spec":{{
          "restartPolicy":"Never","containers":[{{"name":"hello","image":"{IMAGE}",
          "env":[{{"name":"HELLO_EXIT_AFTER_SECS","value":"0"}},
                 {{"name":"HELLO_EXIT_CODE","value":"0"}}]}}]}}}}}}}}}}}}"#
    );
    for manifest in [
        cron,
        job_manifest("ok", 0, r#""completions":3,"parallelism":2,"#),
        job_manifest("bad", 1, r#""backoffLimit":1,"#),
    ] {
        let r = c.kubectl_stdin(&["create", "-f", "-"], Some(&manifest));
        assert!(r.ok, "{}", r.stderr);
    }

    let ok = c.wait("job ok Complete with 3 succeeded", || {
        let j = get(&c, "job/ok")?;
        condition(&j, "Complete").map(|_| j)
    });
    assert_eq!(ok["status"]["succeeded"], 3, "{ok}");
    assert_eq!(
        condition(&ok, "Complete").unwrap()["reason"],
        "CompletionsReached"
    );
    assert!(ok["status"]["completionTime"].is_string(), "{ok}");
    let pods = c.pods("batch.kubernetes.io/job-name=ok");
    assert_eq!(pods.len(), 3, "{pods:?}");
    assert!(pods.iter().all(|p| p.phase == "Succeeded"), "{pods:?}");

    let bad = c.wait("job bad Failed", || {
        let j = get(&c, "job/bad")?;
        condition(&j, "Failed").map(|_| j)
    });
    assert_eq!(
        condition(&bad, "Failed").unwrap()["reason"],
        "BackoffLimitExceeded"
    );
    assert_eq!(bad["status"]["failed"], 2, "{bad}");
    let events = c.k(&["get", "events", "-o", "json"]);
    assert!(events.contains("BackoffLimitExceeded"), "{events}");
    assert!(events.contains("Created pod: ok-"), "{events}");

    // 75 s from creation covers the next minute boundary plus scheduling slack.
    let job = wait_for("a Job from CronJob tick", Duration::from_secs(75), || {
        let list = get(&c, "jobs")?;
        list["items"]
            .as_array()?
            .iter()
            .find(|j| {
                j["metadata"]["name"]
                    .as_str()
                    .is_some_and(|n| n.starts_with("tick-"))
            })
            .cloned()
    });
    assert!(
        job["metadata"]["annotations"]["batch.kubernetes.io/cronjob-scheduled-timestamp"]
            .is_string(),
        "{job}"
    );
    assert_eq!(job["metadata"]["ownerReferences"][0]["kind"], "CronJob");
    let cj = c.wait("CronJob status lastScheduleTime", || {
        let cj = get(&c, "cronjob/tick")?;
        cj["status"]["lastScheduleTime"].is_string().then_some(cj)
    });
    assert!(cj["status"]["lastScheduleTime"].is_string(), "{cj}");
}
