//! PriorityClasses (scheduling.k8s.io/v1, cluster-scoped): a name for a pod priority. The
//! server creates Kubernetes' two system classes at start; pod admission ([`admit`]) turns a
//! pod's `priorityClassName` (or the `globalDefault` class) into `spec.priority` and
//! `spec.preemptionPolicy`, and the scheduler plugin orders its queue by priority and
//! preempts lower-priority pods for a pod that fits nowhere.

use k8s_openapi::api::scheduling::v1 as scheduling;
use serde_json::{Value, json};

use super::table_fmt::{CREATED, Column, age, col, s};
use super::{KindRules, Typed, typed};
use crate::error::Cause;
use kedge_core::resources::Resource;

pub(super) struct PriorityClass;

/// The highest value a user's class may have (`HighestUserDefinablePriority`).
pub(crate) const HIGHEST_USER_PRIORITY: i64 = 1_000_000_000;

/// Kubernetes' system classes: name and value, created by the server at start.
pub const SYSTEM_CLASSES: [(&str, i64); 2] = [
    ("system-node-critical", 2_000_001_000),
    ("system-cluster-critical", 2_000_000_000),
];

const POLICIES: [&str; 2] = ["PreemptLowerPriority", "Never"];

/// kubectl 1.32's PriorityClass printer.
static COLUMNS: [Column; 5] = [
    col("Name", "string", 0),
    col("Value", "integer", 0),
    col("Global-Default", "boolean", 0),
    col("Age", "string", 0),
    col("PreemptionPolicy", "string", 0),
];

fn is_system(name: &str, value: Option<i64>, global_default: bool) -> bool {
    SYSTEM_CLASSES
        .iter()
        .any(|(n, v)| *n == name && value == Some(*v))
        && !global_default
}

impl KindRules for PriorityClass {
    fn default(&self, obj: &mut Value) {
        if let Some(m) = obj.as_object_mut() {
            m.entry("preemptionPolicy")
                .or_insert(json!("PreemptLowerPriority"));
        }
    }

    fn validate(
        &self,
        _res: &Resource,
        obj: &Value,
        _old: Option<&Value>,
        causes: &mut Vec<Cause>,
    ) {
        let name = s(obj, "/metadata/name");
        let value = obj.get("value").and_then(Value::as_i64);
        let global = obj["globalDefault"].as_bool().unwrap_or(false);
        match value {
            None => causes.push(Cause::required("value")),
            Some(_) if is_system(name, value, global) => {}
            Some(v) => {
                if name.starts_with("system-") {
                    causes.push(Cause::forbidden(
                        "metadata.name",
                        "priority class names with 'system-' prefix are reserved for system use only",
                    ));
                }
                if v > HIGHEST_USER_PRIORITY {
                    causes.push(Cause::forbidden(
                        "value",
                        format!(
                            "maximum allowed value of a user defined priority is {HIGHEST_USER_PRIORITY}"
                        ),
                    ));
                }
            }
        }
        if let Some(v) = value
            && i32::try_from(v).is_err()
        {
            causes.push(Cause::invalid(
                "value",
                &v.to_string(),
                "must be a 32-bit integer",
            ));
        }
        let policy = s(obj, "/preemptionPolicy");
        if !policy.is_empty() && !POLICIES.contains(&policy) {
            causes.push(Cause::unsupported("preemptionPolicy", policy, &POLICIES));
        }
    }

    fn validate_update(&self, old: &Value, new: &Value, causes: &mut Vec<Cause>) {
        if old.get("value") != new.get("value") {
            causes.push(Cause::forbidden(
                "value",
                "may not be changed in an update.",
            ));
        }
        if old.get("preemptionPolicy") != new.get("preemptionPolicy") {
            causes.push(Cause::invalid(
                "preemptionPolicy",
                s(new, "/preemptionPolicy"),
                "field is immutable",
            ));
        }
    }

    fn columns(&self) -> &'static [Column] {
        &COLUMNS
    }

    fn cells(&self, o: &Value, now: chrono::DateTime<chrono::Utc>) -> Vec<Value> {
        vec![
            json!(s(o, "/metadata/name")),
            json!(o["value"].as_i64().unwrap_or(0)),
            json!(o["globalDefault"].as_bool().unwrap_or(false)),
            json!(age(o, CREATED, now)),
            json!(s(o, "/preemptionPolicy")),
        ]
    }

    fn typed(&self) -> Option<&'static dyn Typed> {
        typed::<scheduling::PriorityClass>()
    }
}

/// Whether the class is the cluster's default for pods that name none.
pub(crate) fn is_global_default(o: &Value) -> bool {
    o["globalDefault"].as_bool().unwrap_or(false)
}

/// Kubernetes' `Priority` admission of a new pod, given the class it names (`None`: not
/// found) or, when it names none, the `globalDefault` class if any. Sets `spec.priority`,
/// `spec.preemptionPolicy` and (from a default class) `spec.priorityClassName`. The error is
/// the refusal's message, worded as Kubernetes'.
pub(crate) fn admit(
    pod: &mut Value,
    named: Option<&str>,
    class: Option<&Value>,
) -> Result<(), String> {
    let (class_name, value, policy) = match (named, class) {
        (Some(n), None) => return Err(format!("no PriorityClass with name {n} was found")),
        (_, Some(c)) => (
            s(c, "/metadata/name").to_string(),
            c["value"].as_i64().unwrap_or(0),
            c["preemptionPolicy"]
                .as_str()
                .unwrap_or("PreemptLowerPriority")
                .to_string(),
        ),
        (None, None) => (String::new(), 0, "PreemptLowerPriority".to_string()),
    };
    let Some(spec) = pod.get_mut("spec").and_then(Value::as_object_mut) else {
        return Ok(());
    };
    if let Some(given) = spec.get("priority").and_then(Value::as_i64)
        && given != value
    {
        return Err(format!(
            "the integer value of priority ({given}) must not be provided in pod spec; priority \
             admission controller computed {value} from the given PriorityClass name"
        ));
    }
    if let Some(given) = spec.get("preemptionPolicy").and_then(Value::as_str)
        && given != policy
    {
        return Err(format!(
            "the string value of PreemptionPolicy ({given}) must not be provided in pod spec; \
             priority admission controller computed {policy} from the given PriorityClass name"
        ));
    }
    if !class_name.is_empty() {
        spec.insert("priorityClassName".into(), json!(class_name));
    }
    spec.insert("priority".into(), json!(value));
    spec.insert("preemptionPolicy".into(), json!(policy));
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::kinds::test_support::*;

    #[test]
    fn classes_are_checked_and_shown() {
        let res = by_kind("scheduling.k8s.io/v1", "PriorityClass").unwrap();
        let mut pc = json!({"apiVersion": "scheduling.k8s.io/v1", "kind": "PriorityClass",
            "metadata": {"name": "high", "creationTimestamp": "2026-01-01T00:00:00Z"},
            "value": 1000, "globalDefault": true});
        default(res, &mut pc);
        assert_eq!(pc["preemptionPolicy"], "PreemptLowerPriority");
        assert!(validate(res, &pc).is_empty());
        let cells = crate::kinds::rules(res).cells(&pc, chrono::Utc::now());
        assert_eq!(cells[..3], [json!("high"), json!(1000), json!(true)]);
        assert_eq!(cells[4], json!("PreemptLowerPriority"));
        // The system classes, exactly as Kubernetes defines them, and nothing else so named.
        for (name, value) in SYSTEM_CLASSES {
            let sys = json!({"metadata": {"name": name}, "value": value});
            assert!(validate(res, &sys).is_empty(), "{name}");
        }
        let fake = json!({"metadata": {"name": "system-mine"}, "value": 5});
        assert_eq!(fields(&validate(res, &fake)), ["metadata.name"]);
        let too_high = json!({"metadata": {"name": "top"}, "value": 2_000_000_000});
        assert_eq!(fields(&validate(res, &too_high)), ["value"]);
        let bad = json!({"metadata": {"name": "x"}, "value": 1, "preemptionPolicy": "Sometimes"});
        assert_eq!(fields(&validate(res, &bad)), ["preemptionPolicy"]);
        assert_eq!(
            fields(&validate(res, &json!({"metadata": {"name": "x"}}))),
            ["value"]
        );
        let mut changed = pc.clone();
        changed["value"] = json!(7);
        assert_eq!(fields(&validate_update(res, &pc, &changed)), ["value"]);
    }

    #[test]
    fn admission_resolves_the_priority() {
        let high = json!({"metadata": {"name": "high"}, "value": 1000,
            "preemptionPolicy": "Never"});
        let mut pod = json!({"spec": {"priorityClassName": "high"}});
        admit(&mut pod, Some("high"), Some(&high)).unwrap();
        assert_eq!(pod["spec"]["priority"], 1000);
        assert_eq!(pod["spec"]["preemptionPolicy"], "Never");
        // The default class names itself on pods that name none.
        let mut pod = json!({"spec": {}});
        admit(&mut pod, None, Some(&high)).unwrap();
        assert_eq!(pod["spec"]["priorityClassName"], "high");
        assert_eq!(pod["spec"]["priority"], 1000);
        // No class at all: priority 0.
        let mut pod = json!({"spec": {}});
        admit(&mut pod, None, None).unwrap();
        assert_eq!(pod["spec"]["priority"], 0);
        assert_eq!(pod["spec"]["preemptionPolicy"], "PreemptLowerPriority");
        assert!(pod["spec"].get("priorityClassName").is_none());
        // Refusals, in Kubernetes' words.
        let e = admit(&mut json!({"spec": {}}), Some("nope"), None).unwrap_err();
        assert_eq!(e, "no PriorityClass with name nope was found");
        let e = admit(
            &mut json!({"spec": {"priority": 5}}),
            Some("high"),
            Some(&high),
        )
        .unwrap_err();
        assert!(
            e.starts_with("the integer value of priority (5) must not be provided"),
            "{e}"
        );
        let e = admit(
            &mut json!({"spec": {"preemptionPolicy": "PreemptLowerPriority"}}),
            Some("high"),
            Some(&high),
        )
        .unwrap_err();
        assert!(e.contains("computed Never"), "{e}");
        // Stating what admission computes is fine (a replaced or re-applied pod).
        let mut pod = json!({"spec": {"priority": 1000, "preemptionPolicy": "Never"}});
        admit(&mut pod, Some("high"), Some(&high)).unwrap();
    }
}
