//! CustomResourceDefinitions (apiextensions.k8s.io/v1, cluster-scoped): the definition's
//! checks, defaults and status, as kube-apiserver's apiextensions words them. What a stored
//! definition does to the server (its kind served, its objects deleted with it) is in
//! [`crate::crd`].
//!
//! Refused beyond kube's checks, naming the field: conversion webhooks (only the `None`
//! strategy), served versions whose schema, subresources or printer columns differ from the
//! storage version's (they would need conversion), a storage version that is not served,
//! groups kedge serves itself, a `listKind` other than `<Kind>List`, `selectableFields`
//! (field selectors on custom kinds are metadata's), and what the schema engine cannot honour
//! (`x-kubernetes-validations` and the rest listed in [`kedge_core::crd_schema`]).

use k8s_openapi::apiextensions_apiserver::pkg::apis::apiextensions::v1 as apiext;
use serde_json::{Value, json};

use super::table_fmt::{Column, col, s};
use super::{KindRules, Typed, typed};
use crate::crd::{CLEANUP_FINALIZER, JsonPath, accepted_names, names_conflict};
use crate::error::Cause;
use kedge_core::crd_schema::Schema;
use kedge_core::meta;
use kedge_core::resources::{self, Resource};

pub(super) struct Crd;

/// kubectl's columns for definitions: NAME, CREATED AT.
static COLUMNS: [Column; 2] = [col("Name", "string", 0), col("Created At", "date", 0)];

const COLUMN_TYPES: [&str; 5] = ["integer", "number", "string", "boolean", "date"];

fn invalid(field: impl Into<String>, value: &Value, why: &str) -> Cause {
    let shown = match value {
        Value::String(s) => format!("{s:?}"),
        other => other.to_string(),
    };
    Cause {
        reason: "FieldValueInvalid",
        field: field.into(),
        message: format!("Invalid value: {shown}: {why}"),
    }
}

fn required(field: impl Into<String>, why: &str) -> Cause {
    Cause {
        reason: "FieldValueRequired",
        field: field.into(),
        message: if why.is_empty() {
            "Required value".into()
        } else {
            format!("Required value: {why}")
        },
    }
}

fn forbidden(field: impl Into<String>, why: &str) -> Cause {
    Cause {
        reason: "FieldValueForbidden",
        field: field.into(),
        message: format!("Forbidden: {why}"),
    }
}

/// DNS-1035 label: what version names, plurals and singulars must be.
fn dns1035(v: &str) -> Result<(), String> {
    let ok = !v.is_empty()
        && v.len() <= 63
        && v.starts_with(|c: char| c.is_ascii_lowercase())
        && v.chars()
            .all(|c| c.is_ascii_lowercase() || c.is_ascii_digit() || c == '-')
        && !v.ends_with('-');
    if ok {
        Ok(())
    } else {
        Err(
            "a DNS-1035 label must consist of lower case alphanumeric characters or '-', start \
             with an alphabetic character, and end with an alphanumeric character (e.g. \
             'my-name',  or 'abc-123', regex used for validation is '[a-z]([-a-z0-9]*[a-z0-9])?')"
                .into(),
        )
    }
}

fn str_list(v: &Value) -> Vec<&str> {
    v.as_array()
        .into_iter()
        .flatten()
        .filter_map(Value::as_str)
        .collect()
}

/// The status kube's apiextensions controllers keep: names accepted (or the conflict),
/// established, and every version ever stored.
fn status(obj: &mut Value, now: &str) {
    let name = meta::name(obj).to_string();
    let spec = obj["spec"].clone();
    let mut stored: Vec<String> = str_list(&obj["status"]["storedVersions"])
        .into_iter()
        .map(String::from)
        .collect();
    if let Some(v) = spec["versions"]
        .as_array()
        .into_iter()
        .flatten()
        .find(|v| v["storage"] == true)
        .and_then(|v| v["name"].as_str())
        && !stored.iter().any(|s| s == v)
    {
        stored.push(v.to_string());
    }
    let was_established = obj["status"]["conditions"]
        .as_array()
        .into_iter()
        .flatten()
        .any(|c| c["type"] == "Established" && c["status"] == "True");
    if !obj.get("status").is_some_and(Value::is_object) {
        obj["status"] = json!({});
    }
    match names_conflict(&name, &spec) {
        None => {
            meta::set_condition(
                obj,
                "NamesAccepted",
                "True",
                Some("NoConflicts"),
                Some("no conflicts found"),
                now,
            );
            meta::set_condition(
                obj,
                "Established",
                "True",
                Some("InitialNamesAccepted"),
                Some("the initial names have been accepted"),
                now,
            );
            obj["status"]["acceptedNames"] = accepted_names(&spec);
        }
        Some((reason, message)) => {
            meta::set_condition(
                obj,
                "NamesAccepted",
                "False",
                Some(reason),
                Some(&message),
                now,
            );
            if !was_established {
                meta::set_condition(
                    obj,
                    "Established",
                    "False",
                    Some("NotAccepted"),
                    Some("not all names are accepted"),
                    now,
                );
                obj["status"]["acceptedNames"] = json!({"plural": "", "kind": ""});
            }
        }
    }
    // kube's conditions carry no lastProbeTime.
    for c in obj["status"]["conditions"]
        .as_array_mut()
        .into_iter()
        .flatten()
    {
        if let Some(o) = c.as_object_mut() {
            o.remove("lastProbeTime");
        }
    }
    obj["status"]["storedVersions"] = json!(stored);
}

impl KindRules for Crd {
    fn default(&self, obj: &mut Value) {
        let Some(spec) = obj.get_mut("spec").filter(|s| s.is_object()) else {
            return;
        };
        if let Some(kind) = spec.pointer("/names/kind").and_then(Value::as_str) {
            let (singular, list) = (kind.to_lowercase(), format!("{kind}List"));
            let names = &mut spec["names"];
            if names.get("singular").is_none_or(|v| v.as_str() == Some("")) {
                names["singular"] = json!(singular);
            }
            if names.get("listKind").is_none_or(|v| v.as_str() == Some("")) {
                names["listKind"] = json!(list);
            }
        }
        if !spec.get("conversion").is_some_and(Value::is_object) {
            spec["conversion"] = json!({"strategy": "None"});
        }
    }

    fn on_create(&self, obj: &mut Value, now: &str) {
        obj["status"] = json!({});
        let mut f = meta::finalizers(obj);
        if !f.iter().any(|x| x == CLEANUP_FINALIZER) {
            f.push(CLEANUP_FINALIZER.into());
        }
        obj["metadata"]["finalizers"] = json!(f);
        status(obj, now);
    }

    fn prepare_update(&self, _old: &Value, new: &mut Value) {
        let now = meta::timestamp(chrono::Utc::now());
        status(new, &now);
    }

    fn validate(
        &self,
        _res: &Resource,
        obj: &Value,
        _old: Option<&Value>,
        causes: &mut Vec<Cause>,
    ) {
        validate_spec(obj, causes);
    }

    /// `/status` writes: the conditions and accepted names are the server's (a write cannot
    /// establish a definition whose names conflict); `storedVersions` is the clients' to trim
    /// (after a storage migration) but must keep the storage version and name only versions
    /// the definition has.
    fn validate_status(&self, old: &Value, obj: &mut Value) -> Vec<Cause> {
        if !obj.get("status").is_some_and(Value::is_object) {
            obj["status"] = json!({});
        }
        for owned in ["conditions", "acceptedNames"] {
            match old["status"].get(owned) {
                Some(v) => obj["status"][owned] = v.clone(),
                None => {
                    if let Some(s) = obj["status"].as_object_mut() {
                        s.remove(owned);
                    }
                }
            }
        }
        let mut causes = Vec::new();
        let versions: Vec<&str> = obj["spec"]["versions"]
            .as_array()
            .into_iter()
            .flatten()
            .filter_map(|v| v["name"].as_str())
            .collect();
        let stored = &obj["status"]["storedVersions"];
        if !stored.is_array() {
            causes.push(required(
                "status.storedVersions",
                "must have at least one stored version",
            ));
            return causes;
        }
        for (i, v) in stored.as_array().into_iter().flatten().enumerate() {
            if !v.as_str().is_some_and(|v| versions.contains(&v)) {
                causes.push(invalid(
                    format!("status.storedVersions[{i}]"),
                    v,
                    "must appear in spec.versions",
                ));
            }
        }
        if let Some(storage) = obj["spec"]["versions"]
            .as_array()
            .into_iter()
            .flatten()
            .find(|v| v["storage"] == true)
            .and_then(|v| v["name"].as_str())
            && !str_list(stored).contains(&storage)
        {
            causes.push(invalid(
                "status.storedVersions",
                stored,
                &format!("must have the storage version {storage}"),
            ));
        }
        causes
    }

    fn validate_update(&self, old: &Value, new: &Value, causes: &mut Vec<Cause>) {
        if old.pointer("/spec/scope") != new.pointer("/spec/scope") {
            causes.push(invalid(
                "spec.scope",
                &new["spec"]["scope"],
                "field is immutable",
            ));
        }
        let versions: Vec<&str> = new["spec"]["versions"]
            .as_array()
            .into_iter()
            .flatten()
            .filter_map(|v| v["name"].as_str())
            .collect();
        for (i, v) in str_list(&old["status"]["storedVersions"])
            .iter()
            .enumerate()
        {
            if !versions.contains(v) {
                causes.push(invalid(
                    format!("status.storedVersions[{i}]"),
                    &json!(v),
                    "must appear in spec.versions",
                ));
            }
        }
    }

    fn columns(&self) -> &'static [Column] {
        &COLUMNS
    }

    fn cells(&self, o: &Value, _now: chrono::DateTime<chrono::Utc>) -> Vec<Value> {
        vec![
            json!(s(o, "/metadata/name")),
            json!(s(o, "/metadata/creationTimestamp")),
        ]
    }

    fn typed(&self) -> Option<&'static dyn Typed> {
        typed::<apiext::CustomResourceDefinition>()
    }
}

fn validate_spec(obj: &Value, causes: &mut Vec<Cause>) {
    let spec = &obj["spec"];
    let group = spec["group"].as_str().unwrap_or_default();
    let plural = spec
        .pointer("/names/plural")
        .and_then(Value::as_str)
        .unwrap_or_default();
    let name = meta::name(obj);
    if name != format!("{plural}.{group}") {
        causes.push(invalid(
            "metadata.name",
            &json!(name),
            "must be spec.names.plural+\".\"+spec.group",
        ));
    }
    if group.is_empty() {
        causes.push(required("spec.group", ""));
    } else if meta::validate_subdomain(group).is_err() || !group.contains('.') {
        causes.push(invalid(
            "spec.group",
            &spec["group"],
            "should be a domain with at least one dot",
        ));
    } else if resources::RESOURCES
        .iter()
        .chain(crate::discovery::VIRTUAL)
        .chain(crate::resource_metrics::METRICS)
        .any(|r| r.group == group)
    {
        causes.push(invalid(
            "spec.group",
            &spec["group"],
            "kedge serves this group itself; custom resources need a group of their own",
        ));
    } else if (group == "k8s.io"
        || group.ends_with(".k8s.io")
        || group == "kubernetes.io"
        || group.ends_with(".kubernetes.io"))
        && obj
            .pointer("/metadata/annotations/api-approved.kubernetes.io")
            .and_then(Value::as_str)
            .is_none_or(str::is_empty)
    {
        // kube's rule for the groups of the Kubernetes project (KEP 1111).
        causes.push(required(
            "metadata.annotations[api-approved.kubernetes.io]",
            "protected groups must have approval annotation \"api-approved.kubernetes.io\", see https://github.com/kubernetes/enhancements/pull/1111",
        ));
    }
    match spec["scope"].as_str() {
        Some("Namespaced" | "Cluster") => {}
        None => causes.push(required("spec.scope", "")),
        Some(other) => causes.push(Cause {
            reason: "FieldValueNotSupported",
            field: "spec.scope".into(),
            message: format!(
                "Unsupported value: {other:?}: supported values: \"Cluster\", \"Namespaced\""
            ),
        }),
    }
    validate_names(&spec["names"], causes);
    match spec.pointer("/conversion/strategy").and_then(Value::as_str) {
        None | Some("None") => {
            if spec
                .pointer("/conversion/webhook")
                .is_some_and(|w| !w.is_null())
            {
                causes.push(forbidden(
                    "spec.conversion.webhook",
                    "should not be set when strategy is not set to Webhook",
                ));
            }
        }
        Some("Webhook") => causes.push(forbidden(
            "spec.conversion.strategy",
            "kedge does not call conversion webhooks; only the None strategy is supported",
        )),
        Some(other) => causes.push(Cause {
            reason: "FieldValueNotSupported",
            field: "spec.conversion.strategy".into(),
            message: format!(
                "Unsupported value: {other:?}: supported values: \"None\", \"Webhook\""
            ),
        }),
    }
    if spec["preserveUnknownFields"] == true {
        causes.push(invalid(
            "spec.preserveUnknownFields",
            &json!(true),
            "must be false in order to use defaults in the schema",
        ));
    }
    validate_versions(spec, causes);
}

fn validate_names(names: &Value, causes: &mut Vec<Cause>) {
    for (field, required_value) in [("plural", true), ("singular", false)] {
        match names[field].as_str() {
            None | Some("") if required_value => {
                causes.push(required(format!("spec.names.{field}"), ""))
            }
            None | Some("") => {}
            Some(v) => {
                if let Err(why) = dns1035(v) {
                    causes.push(invalid(format!("spec.names.{field}"), &json!(v), &why));
                }
            }
        }
    }
    for field in ["kind", "listKind"] {
        match names[field].as_str() {
            None | Some("") if field == "kind" => causes.push(required("spec.names.kind", "")),
            None | Some("") => {}
            Some(v) => {
                if dns1035(&v.to_lowercase()).is_err() {
                    causes.push(invalid(
                        format!("spec.names.{field}"),
                        &json!(v),
                        "may have mixed case, but should otherwise match: [a-z]([-a-z0-9]*[a-z0-9])?",
                    ));
                }
            }
        }
    }
    if names["kind"].is_string() && names["kind"] == names["listKind"] {
        causes.push(invalid(
            "spec.names.listKind",
            &names["listKind"],
            "kind and listKind may not be the same",
        ));
    } else if let (Some(kind), Some(list)) = (names["kind"].as_str(), names["listKind"].as_str())
        && !list.is_empty()
        && list != format!("{kind}List")
    {
        causes.push(invalid(
            "spec.names.listKind",
            &names["listKind"],
            &format!("kedge names the lists of a kind <kind>List; leave it out or use {kind}List"),
        ));
    }
    for (i, v) in str_list(&names["shortNames"]).iter().enumerate() {
        if let Err(why) = meta::validate_label(v) {
            causes.push(invalid(
                format!("spec.names.shortNames[{i}]"),
                &json!(v),
                &why,
            ));
        }
    }
    for (i, v) in str_list(&names["categories"]).iter().enumerate() {
        if let Err(why) = meta::validate_label(v) {
            causes.push(invalid(
                format!("spec.names.categories[{i}]"),
                &json!(v),
                &why,
            ));
        }
    }
}

fn validate_versions(spec: &Value, causes: &mut Vec<Cause>) {
    let versions = spec["versions"].as_array().cloned().unwrap_or_default();
    if versions.is_empty() {
        causes.push(invalid(
            "spec.versions",
            &json!(null),
            "must have exactly one version marked as storage version",
        ));
        return;
    }
    let storage: Vec<usize> = (0..versions.len())
        .filter(|i| versions[*i]["storage"] == true)
        .collect();
    if storage.len() != 1 {
        causes.push(invalid(
            "spec.versions",
            &json!(
                versions
                    .iter()
                    .map(|v| v["name"].clone())
                    .collect::<Vec<_>>()
            ),
            "must have exactly one version marked as storage version",
        ));
    }
    if !versions.iter().any(|v| v["served"] == true) {
        causes.push(invalid(
            "spec.versions",
            &json!(
                versions
                    .iter()
                    .map(|v| v["name"].clone())
                    .collect::<Vec<_>>()
            ),
            "must have at least one version marked as served",
        ));
    }
    let mut seen = Vec::new();
    for (i, v) in versions.iter().enumerate() {
        let at = format!("spec.versions[{i}]");
        match v["name"].as_str() {
            None | Some("") => causes.push(required(format!("{at}.name"), "")),
            Some(n) => {
                if let Err(why) = dns1035(n) {
                    causes.push(invalid(format!("{at}.name"), &json!(n), &why));
                }
                if seen.contains(&n) {
                    causes.push(Cause {
                        reason: "FieldValueDuplicate",
                        field: format!("{at}.name"),
                        message: format!("Duplicate value: {n:?}"),
                    });
                }
                seen.push(n);
            }
        }
        if v["storage"] == true && v["served"] != true {
            causes.push(forbidden(
                format!("{at}.served"),
                "kedge serves custom resources in their storage version: it must be served",
            ));
        }
        if v["deprecated"] != true && v.get("deprecationWarning").is_some_and(|w| !w.is_null()) {
            causes.push(forbidden(
                format!("{at}.deprecationWarning"),
                "can only be set for deprecated versions",
            ));
        }
        match v.pointer("/schema/openAPIV3Schema") {
            None => causes.push(required(
                format!("{at}.schema.openAPIV3Schema"),
                "schemas are required",
            )),
            Some(s) => {
                if let Err(errs) = Schema::parse(s) {
                    let prefix = format!("{at}.schema.openAPIV3Schema");
                    causes.extend(errs.into_iter().map(|c| {
                        let c = c.under(&prefix);
                        Cause {
                            reason: c.reason,
                            field: c.field,
                            message: c.message,
                        }
                    }));
                }
            }
        }
        if v["selectableFields"]
            .as_array()
            .is_some_and(|f| !f.is_empty())
        {
            causes.push(forbidden(
                format!("{at}.selectableFields"),
                "kedge selects custom resources by metadata.name and metadata.namespace only",
            ));
        }
        validate_subresources(v, &at, causes);
        validate_columns(v, &at, causes);
    }
    // Served versions are views of the storage version (the None strategy): they must hold
    // the same objects the same way.
    if let [s] = storage[..] {
        let st = &versions[s];
        for (i, v) in versions.iter().enumerate() {
            if i == s || v["served"] != true {
                continue;
            }
            for (field, ptr) in [
                ("schema", "/schema"),
                ("subresources", "/subresources"),
                ("additionalPrinterColumns", "/additionalPrinterColumns"),
            ] {
                if v.pointer(ptr) != st.pointer(ptr) {
                    causes.push(forbidden(
                        format!("spec.versions[{i}].{field}"),
                        &format!(
                            "must equal the storage version's ({:?}): kedge converts between \
                             versions with the None strategy only, which changes nothing but \
                             apiVersion",
                            st["name"].as_str().unwrap_or_default()
                        ),
                    ));
                }
            }
        }
    }
}

fn validate_subresources(v: &Value, at: &str, causes: &mut Vec<Cause>) {
    let Some(sub) = v.get("subresources").filter(|s| !s.is_null()) else {
        return;
    };
    let Some(scale) = sub.get("scale").filter(|s| !s.is_null()) else {
        return;
    };
    let at = format!("{at}.subresources.scale");
    for (field, under, required_value) in [
        ("specReplicasPath", ".spec.", true),
        ("statusReplicasPath", ".status.", true),
        ("labelSelectorPath", "", false),
    ] {
        match scale[field].as_str() {
            None | Some("") if required_value => causes.push(required(format!("{at}.{field}"), "")),
            None | Some("") => {}
            Some(p) => {
                let simple = p.starts_with('.')
                    && p[1..].split('.').all(|s| {
                        !s.is_empty() && s.chars().all(|c| c.is_ascii_alphanumeric() || c == '_')
                    });
                if !simple {
                    causes.push(invalid(
                        format!("{at}.{field}"),
                        &json!(p),
                        "must be a simple json path starting with .",
                    ));
                } else if !under.is_empty() && !p.starts_with(under) {
                    causes.push(invalid(
                        format!("{at}.{field}"),
                        &json!(p),
                        &format!(
                            "should be a json path under {}",
                            under.trim_end_matches('.')
                        ),
                    ));
                } else if under.is_empty()
                    && !(p.starts_with(".spec.") || p.starts_with(".status."))
                {
                    causes.push(invalid(
                        format!("{at}.{field}"),
                        &json!(p),
                        "should be a json path under either .spec or .status",
                    ));
                }
            }
        }
    }
}

fn validate_columns(v: &Value, at: &str, causes: &mut Vec<Cause>) {
    for (j, c) in v["additionalPrinterColumns"]
        .as_array()
        .into_iter()
        .flatten()
        .enumerate()
    {
        let at = format!("{at}.additionalPrinterColumns[{j}]");
        if c["name"].as_str().is_none_or(str::is_empty) {
            causes.push(required(format!("{at}.name"), ""));
        }
        match c["type"].as_str() {
            None | Some("") => causes.push(required(format!("{at}.type"), "")),
            Some(t) if !COLUMN_TYPES.contains(&t) => causes.push(Cause {
                reason: "FieldValueNotSupported",
                field: format!("{at}.type"),
                message: format!(
                    "Unsupported value: {t:?}: supported values: \"boolean\", \"date\", \"integer\", \"number\", \"string\""
                ),
            }),
            Some(_) => {}
        }
        if c["priority"].as_i64().is_some_and(|p| p < 0) {
            causes.push(invalid(
                format!("{at}.priority"),
                &c["priority"],
                "must be a non-negative integer",
            ));
        }
        match c["jsonPath"].as_str() {
            None | Some("") => causes.push(required(format!("{at}.JSONPath"), "")),
            Some(p) => {
                if let Err(why) = JsonPath::parse(p) {
                    causes.push(invalid(format!("{at}.JSONPath"), &json!(p), &why));
                }
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn crd(versions: Value) -> Value {
        json!({"apiVersion": "apiextensions.k8s.io/v1", "kind": "CustomResourceDefinition",
            "metadata": {"name": "widgets.example.com"},
            "spec": {"group": "example.com", "scope": "Namespaced",
                "names": {"plural": "widgets", "kind": "Widget"},
                "versions": versions}})
    }

    fn schema() -> Value {
        json!({"openAPIV3Schema": {"type": "object", "properties": {"spec": {"type": "object",
            "properties": {"size": {"type": "integer", "minimum": 1}}}}}})
    }

    fn causes_of(mut obj: Value) -> Vec<String> {
        Crd.default(&mut obj);
        let mut c = Vec::new();
        Crd.validate(
            resources::by_kind("apiextensions.k8s.io/v1", "CustomResourceDefinition").unwrap(),
            &obj,
            None,
            &mut c,
        );
        c.into_iter()
            .map(|c| format!("{}: {}", c.field, c.message))
            .collect()
    }

    #[test]
    fn a_good_definition_passes_and_gets_its_names_and_status() {
        let mut obj =
            crd(json!([{"name": "v1", "served": true, "storage": true, "schema": schema()}]));
        assert!(
            causes_of(obj.clone()).is_empty(),
            "{:?}",
            causes_of(obj.clone())
        );
        Crd.default(&mut obj);
        assert_eq!(obj["spec"]["names"]["singular"], "widget");
        assert_eq!(obj["spec"]["names"]["listKind"], "WidgetList");
        assert_eq!(obj["spec"]["conversion"]["strategy"], "None");
        Crd.on_create(&mut obj, "2026-12-06T00:00:00Z");
        assert_eq!(obj["metadata"]["finalizers"], json!([CLEANUP_FINALIZER]));
        assert_eq!(obj["status"]["storedVersions"], json!(["v1"]));
        assert_eq!(obj["status"]["acceptedNames"]["kind"], "Widget");
        let conds = obj["status"]["conditions"].as_array().unwrap();
        assert!(
            conds
                .iter()
                .any(|c| c["type"] == "Established" && c["status"] == "True")
        );
    }

    #[test]
    fn bad_definitions_are_refused_by_field() {
        let mut bad = crd(json!([
            {"name": "v1", "served": true, "storage": true, "schema": schema()},
            {"name": "v2", "served": true, "storage": true, "schema": schema()},
            {"name": "V3", "served": true, "storage": false},
        ]));
        bad["metadata"]["name"] = json!("wrong.example.com");
        bad["spec"]["scope"] = json!("Global");
        bad["spec"]["conversion"] = json!({"strategy": "Webhook"});
        let c = causes_of(bad);
        let has = |s: &str| c.iter().any(|x| x.contains(s));
        assert!(
            has(
                "metadata.name: Invalid value: \"wrong.example.com\": must be spec.names.plural+\".\"+spec.group"
            ),
            "{c:?}"
        );
        assert!(has("spec.scope: Unsupported value: \"Global\""), "{c:?}");
        assert!(has("spec.versions: Invalid value"), "{c:?}");
        assert!(
            has("exactly one version marked as storage version"),
            "{c:?}"
        );
        assert!(has("spec.versions[2].name: Invalid value: \"V3\""), "{c:?}");
        assert!(
            has("spec.versions[2].schema.openAPIV3Schema: Required value: schemas are required"),
            "{c:?}"
        );
        assert!(has("spec.conversion.strategy: Forbidden"), "{c:?}");

        let cel = crd(
            json!([{"name": "v1", "served": true, "storage": true, "schema":
            {"openAPIV3Schema": {"type": "object", "x-kubernetes-validations": [{"rule": "self.x > 0"}]}}}]),
        );
        let c = causes_of(cel);
        assert!(
            c.iter().any(|x| x
                .starts_with("spec.versions[0].schema.openAPIV3Schema.x-kubernetes-validations")),
            "{c:?}"
        );

        let differ = crd(json!([
            {"name": "v1", "served": true, "storage": true, "schema": schema()},
            {"name": "v1beta1", "served": true, "storage": false, "schema": {"openAPIV3Schema": {"type": "object"}}},
        ]));
        let c = causes_of(differ);
        assert!(
            c.iter().any(|x| x.starts_with(
                "spec.versions[1].schema: Forbidden: must equal the storage version's"
            )),
            "{c:?}"
        );

        let mut builtin =
            crd(json!([{"name": "v1", "served": true, "storage": true, "schema": schema()}]));
        builtin["spec"]["group"] = json!("apps");
        builtin["metadata"]["name"] = json!("widgets.apps");
        assert!(
            causes_of(builtin)
                .iter()
                .any(|x| x.starts_with("spec.group"))
        );

        let cols = crd(
            json!([{"name": "v1", "served": true, "storage": true, "schema": schema(),
            "subresources": {"scale": {"specReplicasPath": ".status.n", "statusReplicasPath": ".status.n"}},
            "additionalPrinterColumns": [{"name": "X", "type": "float", "jsonPath": ".spec[*]"}]}]),
        );
        let c = causes_of(cols);
        let has = |s: &str| c.iter().any(|x| x.contains(s));
        assert!(
            has(
                "subresources.scale.specReplicasPath: Invalid value: \".status.n\": should be a json path under .spec"
            ),
            "{c:?}"
        );
        assert!(
            has("additionalPrinterColumns[0].type: Unsupported value: \"float\""),
            "{c:?}"
        );
        assert!(
            has("additionalPrinterColumns[0].JSONPath: Invalid value: \".spec[*]\""),
            "{c:?}"
        );
    }
}
