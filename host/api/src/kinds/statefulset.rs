//! StatefulSets: defaults (ordered pods, partitioned rolling updates, claim retention), the
//! service name and claim templates they need, and the spec fields that may change.

use k8s_openapi::api::apps::v1 as apps;
use serde_json::{Value, json};

use super::common::{
    ensure_object, int_or_percent, int_or_percent_text, invalid_raw, non_negative, one_of,
    positive_int_or_percent,
};
use super::podspec::{default_pod_spec, validate_workload};
use super::table_fmt::{CREATED, Column, age, col, containers_and_images, i, name};
use super::{KindRules, Typed, typed};
use crate::error::Cause;
use kedge_core::meta;
use kedge_core::resources::Resource;

pub(super) struct StatefulSet;

static COLUMNS: [Column; 5] = [
    col("Name", "string", 0),
    col("Ready", "string", 0),
    col("Age", "string", 0),
    col("Containers", "string", 1),
    col("Images", "string", 1),
];

impl KindRules for StatefulSet {
    fn default(&self, obj: &mut Value) {
        let spec = ensure_object(obj, "spec");
        spec.entry("replicas").or_insert(json!(1));
        spec.entry("podManagementPolicy")
            .or_insert(json!("OrderedReady"));
        spec.entry("revisionHistoryLimit").or_insert(json!(10));
        let strategy = spec
            .entry("updateStrategy")
            .or_insert_with(|| json!({"type": "RollingUpdate"}));
        if let Some(st) = strategy.as_object_mut() {
            st.entry("type").or_insert(json!("RollingUpdate"));
            if st.get("type").and_then(Value::as_str) == Some("RollingUpdate") {
                let ru = st.entry("rollingUpdate").or_insert_with(|| json!({}));
                if let Some(ru) = ru.as_object_mut() {
                    ru.entry("partition").or_insert(json!(0));
                }
            }
        }
        let retention = spec
            .entry("persistentVolumeClaimRetentionPolicy")
            .or_insert_with(|| json!({}));
        if let Some(r) = retention.as_object_mut() {
            r.entry("whenDeleted").or_insert(json!("Retain"));
            r.entry("whenScaled").or_insert(json!("Retain"));
        }
        if let Some(Value::Array(vcts)) = spec.get_mut("volumeClaimTemplates") {
            for t in vcts.iter_mut().filter_map(Value::as_object_mut) {
                t.entry("apiVersion").or_insert(json!("v1"));
                t.entry("kind").or_insert(json!("PersistentVolumeClaim"));
                if let Some(ts) = t.get_mut("spec").and_then(Value::as_object_mut) {
                    ts.entry("volumeMode").or_insert(json!("Filesystem"));
                }
            }
        }
        if let Some(pod) = obj.pointer_mut("/spec/template/spec") {
            default_pod_spec(pod);
        }
    }

    fn initial_status(&self) -> Option<Value> {
        Some(json!({"replicas": 0, "availableReplicas": 0}))
    }

    fn validate(&self, res: &Resource, obj: &Value, _old: Option<&Value>, causes: &mut Vec<Cause>) {
        validate_workload(res, obj, causes);
        validate_statefulset(obj, causes);
    }

    fn validate_update(&self, old: &Value, new: &Value, causes: &mut Vec<Cause>) {
        let strip = |v: &Value| {
            let mut s = v.get("spec").cloned().unwrap_or(Value::Null);
            if let Some(m) = s.as_object_mut() {
                for f in [
                    "replicas",
                    "ordinals",
                    "template",
                    "updateStrategy",
                    "revisionHistoryLimit",
                    "persistentVolumeClaimRetentionPolicy",
                    "minReadySeconds",
                ] {
                    m.remove(f);
                }
            }
            s
        };
        if strip(old) != strip(new) {
            causes.push(Cause::forbidden(
                "spec",
                "updates to statefulset spec for fields other than 'replicas', 'ordinals', \
                 'template', 'updateStrategy', 'revisionHistoryLimit', \
                 'persistentVolumeClaimRetentionPolicy' and 'minReadySeconds' are forbidden",
            ));
        }
    }

    fn columns(&self) -> &'static [Column] {
        &COLUMNS
    }

    fn cells(&self, o: &Value, now: chrono::DateTime<chrono::Utc>) -> Vec<Value> {
        let (c, im) = containers_and_images(o, "/spec/template/spec/containers");
        vec![
            name(o),
            json!(format!(
                "{}/{}",
                i(o, "/status/readyReplicas"),
                i(o, "/spec/replicas")
            )),
            json!(age(o, CREATED, now)),
            json!(c),
            json!(im),
        ]
    }

    fn typed(&self) -> Option<&'static dyn Typed> {
        typed::<apps::StatefulSet>()
    }
}

fn validate_statefulset(obj: &Value, causes: &mut Vec<Cause>) {
    let Some(spec) = obj.get("spec") else {
        return;
    };
    if spec
        .get("serviceName")
        .and_then(Value::as_str)
        .is_none_or(str::is_empty)
    {
        causes.push(Cause::required("spec.serviceName"));
    }
    one_of(
        spec,
        "podManagementPolicy",
        "spec",
        &["OrderedReady", "Parallel"],
        causes,
    );
    if let Some(st) = spec.get("updateStrategy") {
        one_of(
            st,
            "type",
            "spec.updateStrategy",
            &["RollingUpdate", "OnDelete"],
            causes,
        );
        if let Some(ru) = st.get("rollingUpdate") {
            non_negative(ru, "partition", "spec.updateStrategy.rollingUpdate", causes);
            if let Some(v) = ru.get("maxUnavailable").filter(|v| !v.is_null()) {
                validate_max_unavailable(v, causes);
            }
        }
    }
    non_negative(spec, "minReadySeconds", "spec", causes);
    if let Some(vcts) = spec.get("volumeClaimTemplates").and_then(Value::as_array) {
        for (i, t) in vcts.iter().enumerate() {
            let n = t.pointer("/metadata/name").and_then(Value::as_str);
            match n {
                None | Some("") => causes.push(Cause::required(format!(
                    "spec.volumeClaimTemplates[{i}].metadata.name"
                ))),
                Some(n) => {
                    if let Err(why) = meta::validate_subdomain(n) {
                        causes.push(Cause::invalid(
                            format!("spec.volumeClaimTemplates[{i}].metadata.name"),
                            n,
                            why,
                        ));
                    }
                }
            }
            if t.pointer("/spec/accessModes")
                .and_then(Value::as_array)
                .is_none_or(Vec::is_empty)
            {
                causes.push(Cause {
                    reason: "FieldValueRequired",
                    field: format!("spec.volumeClaimTemplates[{i}].spec.accessModes"),
                    message: "Required value: at least 1 access mode is required".into(),
                });
            }
        }
    }
}

/// kube-apiserver's `validateRollingUpdateStatefulSet` for `maxUnavailable`: a positive
/// integer or a percentage in (0%, 100%]. Zero is judged as Go's `getIntOrPercentValue` reads
/// the value: a string that is no percentage counts as the integer it spells, else 0, so "abc"
/// is also "cannot be 0".
fn validate_max_unavailable(v: &Value, causes: &mut Vec<Cause>) {
    let at = "spec.updateStrategy.rollingUpdate.maxUnavailable";
    positive_int_or_percent(v, at, causes);
    let value = int_or_percent(v)
        .or_else(|| v.as_str().and_then(|s| s.parse().ok()))
        .unwrap_or(0);
    if value == 0 {
        causes.push(invalid_raw(at, &int_or_percent_text(v), "cannot be 0"));
    }
    if v.is_string() && int_or_percent(v).is_some_and(|p| p > 100) {
        causes.push(invalid_raw(
            at,
            &int_or_percent_text(v),
            "must not be greater than 100%",
        ));
    }
}

#[cfg(test)]
mod tests {
    use crate::kinds::test_support::*;

    #[test]
    fn statefulset_defaults_validation_and_immutability() {
        let res = by_kind("apps/v1", "StatefulSet").unwrap();
        let mut s = json!({"metadata": {"name": "web"}, "spec": {
            "selector": {"matchLabels": {"app": "web"}},
            "template": pod_template(json!({"app": "web"}), "Always")}});
        default(res, &mut s);
        assert_eq!(s["spec"]["replicas"], 1);
        assert_eq!(s["spec"]["podManagementPolicy"], "OrderedReady");
        assert_eq!(s["spec"]["updateStrategy"]["rollingUpdate"]["partition"], 0);
        assert_eq!(s["spec"]["revisionHistoryLimit"], 10);
        assert_eq!(
            s["spec"]["persistentVolumeClaimRetentionPolicy"]["whenDeleted"],
            "Retain"
        );
        assert_eq!(fields(&validate(res, &s)), ["spec.serviceName"]);
        s["spec"]["serviceName"] = json!("web");
        assert!(validate(res, &s).is_empty());
        let mut scaled = s.clone();
        scaled["spec"]["replicas"] = json!(5);
        assert!(validate_update(res, &s, &scaled).is_empty());
        let mut renamed = s.clone();
        renamed["spec"]["serviceName"] = json!("other");
        let c = validate_update(res, &s, &renamed);
        assert_eq!(c[0].field, "spec");
        assert!(c[0].message.starts_with(
            "Forbidden: updates to statefulset spec for fields other than 'replicas'"
        ));
    }

    #[test]
    fn max_unavailable_is_validated_as_kube_apiserver_does() {
        let res = by_kind("apps/v1", "StatefulSet").unwrap();
        let check = |max: Value| {
            let mut s = json!({"metadata": {"name": "web"}, "spec": {
                "serviceName": "web",
                "selector": {"matchLabels": {"app": "web"}},
                "updateStrategy": {"type": "RollingUpdate",
                    "rollingUpdate": {"partition": 0, "maxUnavailable": max}},
                "template": pod_template(json!({"app": "web"}), "Always")}});
            default(res, &mut s);
            validate(res, &s)
                .into_iter()
                .map(|c| format!("{}: {}", c.field, c.message))
                .collect::<Vec<_>>()
        };
        let at = "spec.updateStrategy.rollingUpdate.maxUnavailable";
        let pct = crate::kinds::common::PERCENT_MSG;
        // Accepted (and no longer refused as unsupported).
        for ok in [
            json!(1),
            json!(3),
            json!("1%"),
            json!("40%"),
            json!("100%"),
            json!(null),
        ] {
            assert!(check(ok.clone()).is_empty(), "{ok}");
        }
        let cases: [(Value, Vec<String>); 6] = [
            (
                json!(0),
                vec![format!("{at}: Invalid value: 0: cannot be 0")],
            ),
            (
                json!("0%"),
                vec![format!("{at}: Invalid value: 0%: cannot be 0")],
            ),
            (
                json!(-1),
                vec![format!(
                    "{at}: Invalid value: -1: must be greater than or equal to 0"
                )],
            ),
            (
                json!("150%"),
                vec![format!(
                    "{at}: Invalid value: 150%: must not be greater than 100%"
                )],
            ),
            // Not a percentage: Go reads "5" as 5, "abc" as 0.
            (json!("5"), vec![format!("{at}: Invalid value: 5: {pct}")]),
            (
                json!("abc"),
                vec![
                    format!("{at}: Invalid value: abc: {pct}"),
                    format!("{at}: Invalid value: abc: cannot be 0"),
                ],
            ),
        ];
        for (max, want) in cases {
            assert_eq!(check(max.clone()), want, "{max}");
        }
    }
}
