//! PATCH bodies: JSON merge patch (RFC 7386), JSON patch (RFC 6902) and Kubernetes' strategic
//! merge patch, all on `serde_json::Value`.
//!
//! Strategic merge is what `kubectl apply`, `set image` and `patch` send by default: like a
//! merge patch, except that lists of objects with a merge key (containers by `name`, ports by
//! `containerPort`, ...) merge element by element, and `$patch` / `$retainKeys` /
//! `$deleteFromPrimitiveList` directives steer it. No crate implements it; the merge keys
//! below are those of the Kubernetes types kedge serves.

use serde_json::{Map, Value};

#[derive(Debug, thiserror::Error)]
pub enum Error {
    #[error("invalid JSON patch: {0}")]
    JsonPatch(String),
    #[error("invalid strategic merge patch: {0}")]
    Strategic(String),
    /// A directive of the wrong shape (kube-apiserver answers 400 with these words).
    #[error("{0}")]
    BadFormat(&'static str),
}

/// The patch content types Kubernetes accepts.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum PatchType {
    Merge,
    Json,
    Strategic,
}

impl PatchType {
    pub fn from_content_type(ct: &str) -> Option<Self> {
        match ct.split(';').next().unwrap_or("").trim() {
            "application/merge-patch+json" => Some(PatchType::Merge),
            "application/json-patch+json" => Some(PatchType::Json),
            "application/strategic-merge-patch+json" => Some(PatchType::Strategic),
            _ => None,
        }
    }
}

pub fn apply(target: &Value, patch: &Value, kind: PatchType) -> Result<Value, Error> {
    let mut out = target.clone();
    match kind {
        PatchType::Merge => json_patch::merge(&mut out, patch),
        PatchType::Json => {
            let p: json_patch::Patch = serde_json::from_value(patch.clone())
                .map_err(|e| Error::JsonPatch(e.to_string()))?;
            json_patch::patch(&mut out, &p).map_err(|e| Error::JsonPatch(e.to_string()))?;
        }
        PatchType::Strategic => strategic_merge(&mut out, patch)?,
    }
    Ok(out)
}

/// The merge key of a list field, by field name. `None`: the list is replaced whole.
pub fn merge_key(field: &str, patch_items: &[Value]) -> Option<&'static str> {
    Some(match field {
        "containers"
        | "initContainers"
        | "ephemeralContainers"
        | "env"
        | "imagePullSecrets"
        | "volumes"
        | "resourceClaims" => "name",
        "volumeMounts" => "mountPath",
        "volumeDevices" => "devicePath",
        "hostAliases" => "ip",
        "topologySpreadConstraints" => "topologyKey",
        "conditions" | "addresses" => "type",
        "ownerReferences" => "uid",
        // Container ports merge by containerPort, Service ports by port.
        "ports" => {
            if patch_items.iter().any(|p| p.get("containerPort").is_some()) {
                "containerPort"
            } else {
                "port"
            }
        }
        _ => return None,
    })
}

/// Lists of scalars that merge as sets rather than being replaced.
pub fn is_set_list(field: &str) -> bool {
    matches!(field, "finalizers")
}

/// Checks the shape of a map's directives as apimachinery's strategic merge does: lists of
/// strings for `$retainKeys` and lists for `$setElementOrder/…` and
/// `$deleteFromPrimitiveList/…`, a string `$patch`.
fn check_directives(pmap: &Map<String, Value>) -> Result<(), Error> {
    for (k, v) in pmap {
        if k == "$retainKeys" {
            let strings = v.as_array().is_some_and(|l| l.iter().all(Value::is_string));
            if !strings {
                return Err(Error::BadFormat("invalid patch format of retainKeys"));
            }
        } else if k.starts_with("$setElementOrder/") {
            if !v.is_array() {
                return Err(Error::BadFormat(
                    "invalid patch format of setElementOrder list",
                ));
            }
        } else if k.starts_with("$deleteFromPrimitiveList/") {
            let scalars = v
                .as_array()
                .is_some_and(|l| l.iter().all(|x| !x.is_object() && !x.is_array()));
            if !scalars {
                return Err(Error::BadFormat("invalid patch format of primitive list"));
            }
        } else if k == "$patch" && !v.is_string() {
            return Err(Error::BadFormat("invalid patch format of $patch"));
        }
    }
    Ok(())
}

pub fn strategic_merge(target: &mut Value, patch: &Value) -> Result<(), Error> {
    let Some(pmap) = patch.as_object() else {
        *target = patch.clone();
        return Ok(());
    };
    check_directives(pmap)?;
    match pmap.get("$patch").and_then(Value::as_str) {
        Some("replace") => {
            *target = Value::Object(strip_directives(pmap));
            return Ok(());
        }
        Some("delete") => {
            *target = Value::Null;
            return Ok(());
        }
        Some("merge") | None => {}
        Some(other) => return Err(Error::Strategic(format!("unknown $patch {other:?}"))),
    }
    if !target.is_object() {
        *target = Value::Object(Map::new());
    }
    let tmap = target.as_object_mut().expect("object");
    for (k, v) in pmap {
        if k == "$patch" || k == "$retainKeys" || k.starts_with("$setElementOrder/") {
            continue;
        }
        if let Some(field) = k.strip_prefix("$deleteFromPrimitiveList/") {
            if let (Some(Value::Array(list)), Some(remove)) = (tmap.get_mut(field), v.as_array()) {
                list.retain(|x| !remove.contains(x));
            }
            continue;
        }
        match v {
            Value::Null => {
                tmap.remove(k);
            }
            Value::Object(o) if o.get("$patch").and_then(Value::as_str) == Some("delete") => {
                tmap.remove(k);
            }
            Value::Object(_) => {
                let slot = tmap.entry(k.clone()).or_insert(Value::Null);
                strategic_merge(slot, v)?;
            }
            Value::Array(items) => {
                let slot = tmap.entry(k.clone()).or_insert(Value::Array(Vec::new()));
                merge_list(slot, items, k)?;
            }
            _ => {
                tmap.insert(k.clone(), v.clone());
            }
        }
    }
    if let Some(retain) = pmap.get("$retainKeys").and_then(Value::as_array) {
        let keep: Vec<&str> = retain.iter().filter_map(Value::as_str).collect();
        tmap.retain(|k, _| keep.contains(&k.as_str()));
    }
    Ok(())
}

fn merge_list(target: &mut Value, items: &[Value], field: &str) -> Result<(), Error> {
    if items
        .iter()
        .any(|i| i.get("$patch").and_then(Value::as_str) == Some("replace"))
    {
        *target = Value::Array(
            items
                .iter()
                .filter(|i| i.get("$patch").is_none())
                .cloned()
                .collect(),
        );
        return Ok(());
    }
    if !target.is_array() {
        *target = Value::Array(Vec::new());
    }
    let list = target.as_array_mut().expect("array");
    if is_set_list(field) {
        for i in items {
            if !list.contains(i) {
                list.push(i.clone());
            }
        }
        return Ok(());
    }
    let Some(key) = merge_key(field, items) else {
        *list = items.to_vec();
        return Ok(());
    };
    for item in items {
        let Some(id) = item.get(key) else {
            return Err(Error::Strategic(format!(
                "list {field} element lacks its merge key {key:?}"
            )));
        };
        let pos = list.iter().position(|e| e.get(key) == Some(id));
        let delete = item.get("$patch").and_then(Value::as_str) == Some("delete");
        match (pos, delete) {
            (Some(p), true) => {
                list.remove(p);
            }
            (None, true) => {}
            (Some(p), false) => strategic_merge(&mut list[p], item)?,
            (None, false) => {
                let mut fresh = Value::Null;
                strategic_merge(&mut fresh, item)?;
                list.push(fresh);
            }
        }
    }
    Ok(())
}

fn strip_directives(m: &Map<String, Value>) -> Map<String, Value> {
    m.iter()
        .filter(|(k, _)| !k.starts_with('$'))
        .map(|(k, v)| (k.clone(), v.clone()))
        .collect()
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    fn smp(target: Value, patch: Value) -> Value {
        apply(&target, &patch, PatchType::Strategic).unwrap()
    }

    #[test]
    fn containers_merge_by_name() {
        let t = json!({"spec": {"containers": [
            {"name": "a", "image": "a:1", "args": ["x"]},
            {"name": "b", "image": "b:1"}]}});
        let out = smp(
            t,
            json!({"spec": {"containers": [{"name": "a", "image": "a:2"}]}}),
        );
        assert_eq!(
            out,
            json!({"spec": {"containers": [
                {"name": "a", "image": "a:2", "args": ["x"]},
                {"name": "b", "image": "b:1"}]}})
        );
    }

    #[test]
    fn delete_directive_and_null() {
        let t = json!({"metadata": {"labels": {"a": "1", "b": "2"}},
            "spec": {"containers": [{"name": "a"}, {"name": "b"}]}});
        let out = smp(
            t,
            json!({"metadata": {"labels": {"a": null}},
                "spec": {"containers": [{"name": "b", "$patch": "delete"}]}}),
        );
        assert_eq!(
            out,
            json!({"metadata": {"labels": {"b": "2"}}, "spec": {"containers": [{"name": "a"}]}})
        );
    }

    #[test]
    fn unkeyed_lists_replace_and_sets_union() {
        let t = json!({"args": ["a", "b"], "metadata": {"finalizers": ["x"]}});
        let out = smp(
            t,
            json!({"args": ["c"], "metadata": {"finalizers": ["y", "x"]}}),
        );
        assert_eq!(
            out,
            json!({"args": ["c"], "metadata": {"finalizers": ["x", "y"]}})
        );
    }

    #[test]
    fn retain_keys_and_replace() {
        let t = json!({"strategy": {"type": "RollingUpdate", "rollingUpdate": {"maxSurge": 1}}});
        let out = smp(
            t.clone(),
            json!({"strategy": {"$retainKeys": ["type"], "type": "Recreate"}}),
        );
        assert_eq!(out, json!({"strategy": {"type": "Recreate"}}));
        let out = smp(
            t,
            json!({"strategy": {"$patch": "replace", "type": "Recreate"}}),
        );
        assert_eq!(out, json!({"strategy": {"type": "Recreate"}}));
    }

    #[test]
    fn ports_pick_their_key_and_env_appends() {
        let t = json!({"ports": [{"containerPort": 80, "name": "http"}],
            "env": [{"name": "A", "value": "1"}]});
        let out = smp(
            t,
            json!({"ports": [{"containerPort": 80, "protocol": "TCP"}],
                "env": [{"name": "B", "value": "2"}],
                "$setElementOrder/env": [{"name": "A"}, {"name": "B"}]}),
        );
        assert_eq!(
            out,
            json!({"ports": [{"containerPort": 80, "name": "http", "protocol": "TCP"}],
                "env": [{"name": "A", "value": "1"}, {"name": "B", "value": "2"}]})
        );
    }

    /// Regression (hardening issue, finding 5): malformed directives were accepted (200).
    #[test]
    fn malformed_directives_are_refused() {
        let target = json!({"spec": {"strategy": {"type": "Recreate"}}});
        for (patch, msg) in [
            (
                json!({"spec": {"strategy": {"$retainKeys": 5}}}),
                "invalid patch format of retainKeys",
            ),
            (
                json!({"spec": {"$retainKeys": ["a", 1]}}),
                "invalid patch format of retainKeys",
            ),
            (
                json!({"spec": {"$setElementOrder/containers": "garbage"}}),
                "invalid patch format of setElementOrder list",
            ),
            (
                json!({"metadata": {"$deleteFromPrimitiveList/finalizers": {"a": 1}}}),
                "invalid patch format of primitive list",
            ),
        ] {
            match apply(&target, &patch, PatchType::Strategic) {
                Err(e @ Error::BadFormat(_)) => assert_eq!(e.to_string(), msg),
                other => panic!("{patch}: {other:?}"),
            }
        }
        // Well-formed ones still apply.
        let ok = json!({"spec": {"strategy": {"$retainKeys": ["type"], "type": "Recreate"},
            "$setElementOrder/containers": [{"name": "a"}]}});
        assert!(apply(&target, &ok, PatchType::Strategic).is_ok());
    }

    #[test]
    fn keyed_element_without_key_is_an_error() {
        let r = apply(
            &json!({"containers": []}),
            &json!({"containers": [{"image": "x"}]}),
            PatchType::Strategic,
        );
        assert!(r.is_err());
    }

    #[test]
    fn merge_and_json_patch() {
        let t = json!({"a": 1, "b": {"c": 2}});
        assert_eq!(
            apply(&t, &json!({"b": {"c": null}, "d": 3}), PatchType::Merge).unwrap(),
            json!({"a": 1, "b": {}, "d": 3})
        );
        assert_eq!(
            apply(
                &t,
                &json!([{"op": "replace", "path": "/a", "value": 5}]),
                PatchType::Json
            )
            .unwrap(),
            json!({"a": 5, "b": {"c": 2}})
        );
        assert!(
            apply(
                &t,
                &json!([{"op": "test", "path": "/a", "value": 9}]),
                PatchType::Json
            )
            .is_err()
        );
    }
}
