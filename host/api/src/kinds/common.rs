//! Small pieces the kinds' rules share: creating nested objects while defaulting, and the
//! causes kube-apiserver words the same way for every kind (unquoted values, duplicates,
//! ranges, enums, immutable fields).

use serde_json::{Map, Value, json};

use crate::error::Cause;

pub(super) fn ensure_object_value<'a>(obj: &'a mut Value, field: &str) -> &'a mut Value {
    if !obj.get(field).is_some_and(Value::is_object) {
        obj[field] = json!({});
    }
    &mut obj[field]
}

pub(super) fn ensure_object<'a>(obj: &'a mut Value, field: &str) -> &'a mut Map<String, Value> {
    ensure_object_value(obj, field)
        .as_object_mut()
        .expect("just made an object")
}

/// An Invalid cause whose value prints unquoted, as Go prints numbers and structs.
pub(super) fn invalid_raw(field: impl Into<String>, value: &str, why: &str) -> Cause {
    Cause {
        reason: "FieldValueInvalid",
        field: field.into(),
        message: format!("Invalid value: {value}: {why}"),
    }
}

/// A label map as Go's `%#v` prints it: `map[string]string{"a":"1", "b":"2"}`.
pub(super) fn go_map(labels: Option<&Map<String, Value>>) -> String {
    let mut parts: Vec<String> = labels
        .into_iter()
        .flatten()
        .map(|(k, v)| format!("{k:?}:{:?}", v.as_str().unwrap_or_default()))
        .collect();
    parts.sort();
    format!("map[string]string{{{}}}", parts.join(", "))
}

pub(super) fn duplicate(field: impl Into<String>, value: &str) -> Cause {
    Cause {
        reason: "FieldValueDuplicate",
        field: field.into(),
        message: format!("Duplicate value: {value}"),
    }
}

pub(super) fn non_negative(spec: &Value, field: &str, at: &str, causes: &mut Vec<Cause>) {
    if let Some(v) = spec.get(field)
        && v.as_i64().is_none_or(|n| n < 0)
    {
        causes.push(invalid_raw(
            format!("{at}.{field}"),
            &v.to_string(),
            "must be greater than or equal to 0",
        ));
    }
}

pub(super) fn one_of(
    spec: &Value,
    field: &str,
    at: &str,
    allowed: &[&str],
    causes: &mut Vec<Cause>,
) {
    if let Some(v) = spec.get(field).and_then(Value::as_str)
        && !allowed.contains(&v)
    {
        causes.push(Cause::unsupported(format!("{at}.{field}"), v, allowed));
    }
}

pub(super) fn valid_port(v: &Value) -> bool {
    v.as_i64().is_some_and(|p| (1..=65535).contains(&p))
}

/// A field kube-apiserver refuses to change once set, at `ptr` (a JSON pointer), reported as
/// `field`.
pub(super) fn immutable(old: &Value, new: &Value, field: &str, ptr: &str, causes: &mut Vec<Cause>) {
    let (o, n) = (old.pointer(ptr), new.pointer(ptr));
    if o != n {
        causes.push(invalid_raw(
            field,
            &n.map(|v| v.to_string()).unwrap_or_else(|| "null".into()),
            "field is immutable",
        ));
    }
}

/// `spec.selector` changed: immutable once set for Deployments and ReplicaSets (apps/v1).
pub(super) fn selector_change(old: &Value, new: &Value) -> Option<(String, String)> {
    (old.pointer("/spec/selector") != new.pointer("/spec/selector"))
        .then(|| ("spec.selector".into(), "field is immutable".into()))
}

/// kube-apiserver's wording for a malformed percentage (`IsValidPercent`).
pub(super) const PERCENT_MSG: &str = "a valid percent string must be a numeric string followed by an ending \
     '%' (e.g. '1%',  or '93%', regex used for validation is '[0-9]+%')";

/// An int-or-percent as Go prints it in a cause: the number, or the string unquoted.
pub(super) fn int_or_percent_text(v: &Value) -> String {
    v.as_str().map_or_else(|| v.to_string(), str::to_owned)
}

/// The value of an int-or-percent (`getIntOrPercentValue`): the number, or the percentage
/// without its sign; `None` when malformed (reported separately).
pub(super) fn int_or_percent(v: &Value) -> Option<i64> {
    match v {
        Value::Number(n) => n.as_i64(),
        Value::String(s) => s
            .strip_suffix('%')
            .filter(|p| !p.is_empty() && p.bytes().all(|b| b.is_ascii_digit()))
            .and_then(|p| p.parse().ok()),
        _ => None,
    }
}

/// `ValidatePositiveIntOrPercent`: a non-negative integer or a well-formed percentage.
pub(super) fn positive_int_or_percent(v: &Value, field: &str, causes: &mut Vec<Cause>) {
    let why = match v {
        Value::Number(n) if n.as_i64().is_some_and(|n| n >= 0) => return,
        Value::Number(_) => "must be greater than or equal to 0",
        Value::String(_) if int_or_percent(v).is_some() => return,
        _ => PERCENT_MSG,
    };
    causes.push(invalid_raw(field, &int_or_percent_text(v), why));
}
