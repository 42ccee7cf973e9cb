//! Jobs: completions and parallelism defaults, the generated selector and pod labels, the
//! checks a Job's spec and a CronJob's job template share, and what stays fixed.

use k8s_openapi::api::batch::v1 as batch;
use serde_json::{Value, json};

use super::common::{
    ensure_object, ensure_object_value, go_map, immutable, invalid_raw, non_negative, one_of,
};
use super::podspec::{default_pod_spec, validate_pod_spec};
use super::table_fmt::{
    CREATED, Column, age, col, containers_and_images, format_selector, has_condition, human_age, i,
    name, parse_time,
};
use super::{KindRules, Typed, typed};
use crate::error::Cause;
use kedge_core::resources::Resource;
use kedge_core::{meta, selector};

/// The label keys kube-apiserver puts on a Job's pod template (legacy and prefixed forms).
pub const JOB_UID_LABELS: [&str; 2] = ["controller-uid", "batch.kubernetes.io/controller-uid"];
pub const JOB_NAME_LABELS: [&str; 2] = ["job-name", "batch.kubernetes.io/job-name"];

pub(super) struct Job;

static COLUMNS: [Column; 8] = [
    col("Name", "string", 0),
    col("Status", "string", 0),
    col("Completions", "string", 0),
    col("Duration", "string", 0),
    col("Age", "string", 0),
    col("Containers", "string", 1),
    col("Images", "string", 1),
    col("Selector", "string", 1),
];

impl KindRules for Job {
    fn default(&self, obj: &mut Value) {
        default_job(obj);
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
        match obj.get("spec") {
            Some(spec) => validate_job_spec(obj, spec, "spec", causes),
            None => causes.push(Cause::required("spec")),
        }
    }

    fn validate_update(&self, old: &Value, new: &Value, causes: &mut Vec<Cause>) {
        immutable(old, new, "spec.selector", "/spec/selector", causes);
        immutable(
            old,
            new,
            "spec.completionMode",
            "/spec/completionMode",
            causes,
        );
        // A suspended Job that never started may change its pods' scheduling directives
        // and metadata; otherwise the template is fixed.
        let fresh_suspended = old.pointer("/spec/suspend").and_then(Value::as_bool) == Some(true)
            && old.pointer("/status/startTime").is_none();
        let strip = |v: &Value| {
            let mut t = v.pointer("/spec/template").cloned().unwrap_or(Value::Null);
            if fresh_suspended {
                if let Some(m) = t.as_object_mut() {
                    m.remove("metadata");
                }
                if let Some(s) = t.get_mut("spec").and_then(Value::as_object_mut) {
                    for f in ["nodeSelector", "tolerations", "affinity", "schedulingGates"] {
                        s.remove(f);
                    }
                }
            }
            t
        };
        if strip(old) != strip(new) {
            causes.push(invalid_raw(
                "spec.template",
                "core.PodTemplateSpec{...}",
                "field is immutable",
            ));
        }
    }

    fn columns(&self) -> &'static [Column] {
        &COLUMNS
    }

    fn cells(&self, o: &Value, now: chrono::DateTime<chrono::Utc>) -> Vec<Value> {
        let (status, completions, duration) = job_cells(o, now);
        let (c, im) = containers_and_images(o, "/spec/template/spec/containers");
        vec![
            name(o),
            json!(status),
            json!(completions),
            json!(duration),
            json!(age(o, CREATED, now)),
            json!(c),
            json!(im),
            json!(format_selector(o.pointer("/spec/selector"))),
        ]
    }

    fn typed(&self) -> Option<&'static dyn Typed> {
        typed::<batch::Job>()
    }
}

fn default_job(obj: &mut Value) {
    let name = meta::name(obj).to_string();
    let uid = meta::uid(obj).to_string();
    let spec = ensure_object(obj, "spec");
    if spec.get("completions").is_none() && spec.get("parallelism").is_none() {
        spec.insert("completions".into(), json!(1));
    }
    spec.entry("parallelism").or_insert(json!(1));
    let per_index = spec.get("backoffLimitPerIndex").is_some();
    spec.entry("backoffLimit")
        .or_insert(json!(if per_index { i64::from(i32::MAX) } else { 6 }));
    spec.entry("completionMode").or_insert(json!("NonIndexed"));
    spec.entry("suspend").or_insert(json!(false));
    let replacement = if spec.get("podFailurePolicy").is_some() {
        "Failed"
    } else {
        "TerminatingOrFailed"
    };
    spec.entry("podReplacementPolicy")
        .or_insert(json!(replacement));
    let manual = spec.get("manualSelector").and_then(Value::as_bool) == Some(true);
    if !manual && !uid.is_empty() {
        // kube-apiserver's generateSelector: label the template with the job's name and uid
        // (never overwriting a user's label: a conflict then fails validation) and select on
        // the uid.
        let template = spec.entry("template").or_insert_with(|| json!({}));
        let labels = ensure_object(ensure_object_value(template, "metadata"), "labels");
        for k in JOB_NAME_LABELS {
            labels.entry(k).or_insert(json!(name));
        }
        for k in JOB_UID_LABELS {
            labels.entry(k).or_insert(json!(uid));
        }
        let selector = spec.entry("selector").or_insert_with(|| json!({}));
        if !selector.is_object() {
            *selector = json!({});
        }
        let ml = ensure_object(selector, "matchLabels");
        ml.entry(JOB_UID_LABELS[1]).or_insert(json!(uid));
    }
    if let Some(pod) = obj.pointer_mut("/spec/template/spec") {
        default_pod_spec(pod);
    }
}

pub(super) fn validate_job_spec(obj: &Value, spec: &Value, at: &str, causes: &mut Vec<Cause>) {
    for f in [
        "parallelism",
        "completions",
        "backoffLimit",
        "activeDeadlineSeconds",
    ] {
        non_negative(spec, f, at, causes);
    }
    one_of(
        spec,
        "completionMode",
        at,
        &["NonIndexed", "Indexed"],
        causes,
    );
    if spec.get("completionMode").and_then(Value::as_str) == Some("Indexed")
        && spec.get("completions").is_none_or(Value::is_null)
    {
        causes.push(Cause {
            reason: "FieldValueRequired",
            field: format!("{at}.completions"),
            message: "Required value: when completion mode is Indexed".into(),
        });
    }
    let manual = spec.get("manualSelector").and_then(Value::as_bool) == Some(true);
    // A Job itself (not a CronJob's template) must have a selector by now: generated unless
    // manualSelector.
    let top_level = at == "spec";
    let sel = match spec.get("selector") {
        None if top_level => {
            causes.push(Cause::required(format!("{at}.selector")));
            None
        }
        None => None,
        Some(s) => match selector::Selector::from_structured(s) {
            Ok(sel) => Some(sel),
            Err(e) => {
                causes.push(Cause::invalid(format!("{at}.selector"), "", e));
                None
            }
        },
    };
    if top_level && !manual {
        let uid = meta::uid(obj);
        let got = spec
            .pointer("/selector/matchLabels")
            .and_then(|m| m.get(JOB_UID_LABELS[1]))
            .and_then(Value::as_str);
        if got.is_some_and(|g| g != uid) {
            causes.push(invalid_raw(
                format!("{at}.selector"),
                &serde_json::to_string(&spec["selector"]).unwrap_or_default(),
                "`selector` not auto-generated",
            ));
        }
    }
    let Some(template) = spec.get("template") else {
        causes.push(Cause::required(format!("{at}.template")));
        return;
    };
    let labels = template
        .pointer("/metadata/labels")
        .and_then(Value::as_object);
    if let Some(sel) = sel
        && !sel.matches(labels)
    {
        causes.push(invalid_raw(
            format!("{at}.template.metadata.labels"),
            &go_map(labels),
            "`selector` does not match template `labels`",
        ));
    }
    match template.get("spec") {
        Some(pod) => {
            let pat = format!("{at}.template.spec");
            validate_pod_spec(pod, &pat, causes);
            let policy = pod
                .get("restartPolicy")
                .and_then(Value::as_str)
                .unwrap_or_default();
            if policy != "OnFailure" && policy != "Never" {
                causes.push(Cause::unsupported(
                    format!("{pat}.restartPolicy"),
                    policy,
                    &["OnFailure", "Never"],
                ));
            }
        }
        None => causes.push(Cause::required(format!("{at}.template.spec"))),
    }
}

fn job_cells(o: &Value, now: chrono::DateTime<chrono::Utc>) -> (String, String, String) {
    let status = if has_condition(o, "Complete") {
        "Complete"
    } else if has_condition(o, "Failed") {
        "Failed"
    } else if o.pointer("/metadata/deletionTimestamp").is_some() {
        "Terminating"
    } else if has_condition(o, "Suspended") {
        "Suspended"
    } else if has_condition(o, "FailureTarget") {
        "FailureTarget"
    } else if has_condition(o, "SuccessCriteriaMet") {
        "SuccessCriteriaMet"
    } else {
        "Running"
    };
    let succeeded = i(o, "/status/succeeded");
    let completions = match (
        o.pointer("/spec/completions").and_then(Value::as_i64),
        o.pointer("/spec/parallelism").and_then(Value::as_i64),
    ) {
        (Some(c), _) => format!("{succeeded}/{c}"),
        (None, Some(p)) if p > 1 => format!("{succeeded}/1 of {p}"),
        _ => format!("{succeeded}/1"),
    };
    let duration = match (
        parse_time(o, "/status/startTime"),
        parse_time(o, "/status/completionTime"),
    ) {
        (None, _) => String::new(),
        (Some(start), None) => human_age((now - start).num_seconds()),
        (Some(start), Some(end)) => human_age((end - start).num_seconds()),
    };
    (status.into(), completions, duration)
}

#[cfg(test)]
mod tests {
    use crate::kinds::test_support::*;

    #[test]
    fn job_generated_selector_defaults_and_restart_policy() {
        let res = by_kind("batch/v1", "Job").unwrap();
        let mut j = json!({"metadata": {"name": "pi", "uid": "u1"}, "spec": {
            "template": pod_template(Value::Null, "Never")}});
        j["spec"]["template"]["metadata"] = json!({});
        default(res, &mut j);
        assert_eq!(
            j["spec"]["selector"],
            json!({"matchLabels": {"batch.kubernetes.io/controller-uid": "u1"}})
        );
        let labels = &j["spec"]["template"]["metadata"]["labels"];
        assert_eq!(labels["job-name"], "pi");
        assert_eq!(labels["controller-uid"], "u1");
        assert_eq!(
            (&j["spec"]["completions"], &j["spec"]["parallelism"]),
            (&json!(1), &json!(1))
        );
        assert_eq!(j["spec"]["backoffLimit"], 6);
        assert_eq!(j["spec"]["completionMode"], "NonIndexed");
        assert!(validate(res, &j).is_empty(), "{:?}", validate(res, &j));
        // parallelism alone leaves completions unset (a work queue).
        let mut q = json!({"metadata": {"name": "q", "uid": "u2"}, "spec": {"parallelism": 3,
            "template": pod_template(json!({}), "OnFailure")}});
        default(res, &mut q);
        assert!(q["spec"].get("completions").is_none());
        // Always is not a Job restart policy.
        let mut a = json!({"metadata": {"name": "a", "uid": "u3"}, "spec": {
            "template": pod_template(json!({}), "Always")}});
        default(res, &mut a);
        let c = validate(res, &a);
        assert_eq!(fields(&c), ["spec.template.spec.restartPolicy"]);
        assert_eq!(
            c[0].message,
            "Unsupported value: \"Always\": supported values: \"OnFailure\", \"Never\""
        );
        // The selector and template are fixed once created.
        let mut changed = j.clone();
        changed["spec"]["template"]["spec"]["containers"][0]["image"] = json!("other:1");
        assert_eq!(
            fields(&validate_update(res, &j, &changed)),
            ["spec.template"]
        );
    }
}
