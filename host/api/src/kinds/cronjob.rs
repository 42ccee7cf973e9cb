//! CronJobs: schedule and history defaults, the schedule and time zone checks, the job template.

use k8s_openapi::api::batch::v1 as batch;
use serde_json::{Value, json};

use super::common::{ensure_object, non_negative, one_of};
use super::job::validate_job_spec;
use super::podspec::default_pod_spec;
use super::table_fmt::{
    CREATED, Column, age, col, containers_and_images, format_selector, name, s,
};
use super::{KindRules, Typed, typed};
use crate::error::Cause;
use kedge_core::meta;
use kedge_core::resources::Resource;

pub(super) struct CronJob;

static COLUMNS: [Column; 10] = [
    col("Name", "string", 0),
    col("Schedule", "string", 0),
    col("Timezone", "string", 0),
    col("Suspend", "boolean", 0),
    col("Active", "integer", 0),
    col("Last Schedule", "string", 0),
    col("Age", "string", 0),
    col("Containers", "string", 1),
    col("Images", "string", 1),
    col("Selector", "string", 1),
];

impl KindRules for CronJob {
    fn default(&self, obj: &mut Value) {
        let spec = ensure_object(obj, "spec");
        spec.entry("concurrencyPolicy").or_insert(json!("Allow"));
        spec.entry("suspend").or_insert(json!(false));
        spec.entry("successfulJobsHistoryLimit").or_insert(json!(3));
        spec.entry("failedJobsHistoryLimit").or_insert(json!(1));
        if let Some(pod) = obj.pointer_mut("/spec/jobTemplate/spec/template/spec") {
            default_pod_spec(pod);
        }
    }

    fn initial_status(&self) -> Option<Value> {
        Some(json!({}))
    }

    fn validate(
        &self,
        _res: &Resource,
        obj: &Value,
        _old: Option<&Value>,
        causes: &mut Vec<Cause>,
    ) {
        validate_cronjob(obj, causes);
    }

    fn columns(&self) -> &'static [Column] {
        &COLUMNS
    }

    fn cells(&self, o: &Value, now: chrono::DateTime<chrono::Utc>) -> Vec<Value> {
        let (c, im) = containers_and_images(o, "/spec/jobTemplate/spec/template/spec/containers");
        let tz = s(o, "/spec/timeZone");
        let suspend = match o.pointer("/spec/suspend").and_then(Value::as_bool) {
            None => "<unset>",
            Some(true) => "True",
            Some(false) => "False",
        };
        let last = if s(o, "/status/lastScheduleTime").is_empty() {
            "<none>".to_string()
        } else {
            age(o, "/status/lastScheduleTime", now)
        };
        vec![
            name(o),
            json!(s(o, "/spec/schedule")),
            json!(if tz.is_empty() { "<none>" } else { tz }),
            json!(suspend),
            json!(
                o.pointer("/status/active")
                    .and_then(Value::as_array)
                    .map_or(0, Vec::len)
            ),
            json!(last),
            json!(age(o, CREATED, now)),
            json!(c),
            json!(im),
            json!(format_selector(
                o.pointer("/spec/jobTemplate/spec/selector")
            )),
        ]
    }

    fn typed(&self) -> Option<&'static dyn Typed> {
        typed::<batch::CronJob>()
    }
}

fn validate_cronjob(obj: &Value, causes: &mut Vec<Cause>) {
    let name = meta::name(obj);
    // The controller appends an 11-character suffix to job names (kube-apiserver's limit).
    if name.len() > 52 {
        causes.push(Cause::invalid(
            "metadata.name",
            name,
            "must be no more than 52 characters",
        ));
    }
    let Some(spec) = obj.get("spec") else {
        causes.push(Cause::required("spec"));
        return;
    };
    match spec.get("schedule").and_then(Value::as_str) {
        None | Some("") => causes.push(Cause::required("spec.schedule")),
        Some(s) => {
            if let Err(why) = kedge_core::cron::check(s) {
                causes.push(Cause::invalid("spec.schedule", s, why));
            }
        }
    }
    if let Some(tz) = spec.get("timeZone").and_then(Value::as_str)
        && (tz.is_empty() || tz.contains(char::is_whitespace) || tz.starts_with('/'))
    {
        causes.push(Cause::invalid(
            "spec.timeZone",
            tz,
            format!("unknown time zone {tz}"),
        ));
    }
    one_of(
        spec,
        "concurrencyPolicy",
        "spec",
        &["Allow", "Forbid", "Replace"],
        causes,
    );
    for f in [
        "startingDeadlineSeconds",
        "successfulJobsHistoryLimit",
        "failedJobsHistoryLimit",
    ] {
        non_negative(spec, f, "spec", causes);
    }
    match spec.pointer("/jobTemplate/spec") {
        Some(js) => validate_job_spec(obj, js, "spec.jobTemplate.spec", causes),
        None => causes.push(Cause::required("spec.jobTemplate.spec")),
    }
}

#[cfg(test)]
mod tests {
    use crate::kinds::test_support::*;

    #[test]
    fn cronjob_defaults_and_schedule() {
        let res = by_kind("batch/v1", "CronJob").unwrap();
        let mut cj = json!({"metadata": {"name": "hello"}, "spec": {"schedule": "@hourly",
            "jobTemplate": {"spec": {"template": pod_template(json!({}), "OnFailure")}}}});
        default(res, &mut cj);
        assert_eq!(cj["spec"]["concurrencyPolicy"], "Allow");
        assert_eq!(cj["spec"]["suspend"], false);
        assert_eq!(cj["spec"]["successfulJobsHistoryLimit"], 3);
        assert_eq!(cj["spec"]["failedJobsHistoryLimit"], 1);
        assert!(validate(res, &cj).is_empty(), "{:?}", validate(res, &cj));
        cj["spec"]["schedule"] = json!("61 * * * *");
        let c = validate(res, &cj);
        assert_eq!(fields(&c), ["spec.schedule"]);
        assert_eq!(
            c[0].message,
            "Invalid value: \"61 * * * *\": end of range (61) above maximum (59): 61"
        );
    }
}
