//! How `kubectl get` cells are spelled: the column type of [`super::KindRules::columns`] and
//! the formatting helpers the kinds' `cells` share (ages, label maps, selectors, containers),
//! each following the kubectl printer it names.

use serde_json::{Value, json};

/// One column of a `meta.k8s.io/v1` Table; `priority` 1 columns show with `-o wide` only.
pub struct Column {
    pub name: &'static str,
    pub ty: &'static str,
    pub priority: u8,
}

pub(crate) const fn col(name: &'static str, ty: &'static str, priority: u8) -> Column {
    Column { name, ty, priority }
}

/// What `kubectl get` shows for a kind without a printer of its own.
pub(crate) static NAME_AGE: [Column; 2] = [col("Name", "string", 0), col("Age", "string", 0)];

/// The pointer most AGE cells read.
pub(crate) const CREATED: &str = "/metadata/creationTimestamp";

/// The NAME cell.
pub(crate) fn name(o: &Value) -> Value {
    json!(s(o, "/metadata/name"))
}

/// `labels.FormatLabels`: `k=v,...` sorted by key, `<none>` when empty.
pub(crate) fn format_labels(m: Option<&Value>) -> String {
    let mut parts: Vec<String> = m
        .and_then(Value::as_object)
        .map(|m| {
            m.iter()
                .map(|(k, v)| format!("{k}={}", v.as_str().unwrap_or_default()))
                .collect()
        })
        .unwrap_or_default();
    parts.sort();
    if parts.is_empty() {
        "<none>".into()
    } else {
        parts.join(",")
    }
}

/// `metav1.FormatLabelSelector`: `<none>` for an absent or empty selector.
pub(crate) fn format_selector(sel: Option<&Value>) -> String {
    match sel.map(crate::ops::selector_string) {
        Some(s) if !s.is_empty() => s,
        _ => "<none>".into(),
    }
}

pub(crate) fn has_condition(o: &Value, kind: &str) -> bool {
    o.pointer("/status/conditions")
        .and_then(Value::as_array)
        .into_iter()
        .flatten()
        .any(|c| s(c, "/type") == kind && s(c, "/status") == "True")
}

pub(crate) fn parse_time(o: &Value, ptr: &str) -> Option<chrono::DateTime<chrono::Utc>> {
    chrono::DateTime::parse_from_rfc3339(s(o, ptr))
        .ok()
        .map(|t| t.with_timezone(&chrono::Utc))
}

pub(crate) fn s<'a>(o: &'a Value, ptr: &str) -> &'a str {
    o.pointer(ptr).and_then(Value::as_str).unwrap_or_default()
}

pub(crate) fn i(o: &Value, ptr: &str) -> i64 {
    o.pointer(ptr).and_then(Value::as_i64).unwrap_or(0)
}

/// kubectl's short human durations: 45s, 3m2s, 5h, 3d4h.
pub(crate) fn human_age(secs: i64) -> String {
    let secs = secs.max(0);
    let (m, h, d) = (secs / 60, secs / 3600, secs / 86400);
    if secs < 120 {
        format!("{secs}s")
    } else if m < 10 {
        format!("{m}m{}s", secs % 60)
    } else if h < 3 {
        format!("{m}m")
    } else if h < 8 {
        format!("{h}h{}m", m % 60)
    } else if h < 48 {
        format!("{h}h")
    } else if d < 8 {
        format!("{d}d{}h", h % 24)
    } else if d < 365 * 2 {
        format!("{d}d")
    } else {
        format!("{}y", d / 365)
    }
}

pub(crate) fn age(o: &Value, ptr: &str, now: chrono::DateTime<chrono::Utc>) -> String {
    match chrono::DateTime::parse_from_rfc3339(s(o, ptr)) {
        Ok(t) => human_age((now - t.with_timezone(&chrono::Utc)).num_seconds()),
        Err(_) => "<unknown>".into(),
    }
}

/// A plain label-map selector (ReplicationController) as `k=v,k2=v2`.
pub(crate) fn map_selector_string(sel: &Value) -> String {
    sel.as_object()
        .into_iter()
        .flatten()
        .map(|(k, v)| format!("{k}={}", v.as_str().unwrap_or_default()))
        .collect::<Vec<_>>()
        .join(",")
}

pub(crate) fn containers_and_images(o: &Value, ptr: &str) -> (String, String) {
    let cs = o
        .pointer(ptr)
        .and_then(Value::as_array)
        .cloned()
        .unwrap_or_default();
    let names: Vec<&str> = cs.iter().map(|c| s(c, "/name")).collect();
    let images: Vec<&str> = cs.iter().map(|c| s(c, "/image")).collect();
    (names.join(","), images.join(","))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn ages_like_kubectl() {
        assert_eq!(human_age(5), "5s");
        assert_eq!(human_age(182), "3m2s");
        assert_eq!(human_age(3600), "60m");
        assert_eq!(human_age(4 * 3600 + 60), "4h1m");
        assert_eq!(human_age(3 * 86400 + 3600), "3d1h");
    }
}
