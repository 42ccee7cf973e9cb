//! Typed decoding of request bodies through k8s-openapi, as kube-apiserver decodes into its Go
//! types: wrong types are a 400, unknown fields are reported per `fieldValidation`
//! (Strict → 400, Warn → a `Warning` header, Ignore → silently dropped) and never stored.

use serde_json::Value;

use kedge_core::resources::Resource;

#[derive(Clone, Copy, Debug, PartialEq, Eq, Default)]
pub enum FieldValidation {
    Ignore,
    #[default]
    Warn,
    Strict,
}

impl FieldValidation {
    pub fn parse(s: &str) -> Option<Self> {
        match s {
            "Ignore" => Some(Self::Ignore),
            "Warn" => Some(Self::Warn),
            "Strict" => Some(Self::Strict),
            _ => None,
        }
    }
}

/// The outcome of decoding: the normalised object and the unknown fields it had.
pub struct Decoded {
    pub object: Value,
    pub unknown: Vec<String>,
}

/// Decodes `obj` as the Kubernetes type of `res`. Kinds without a typed struct pass through.
pub fn decode(res: &Resource, obj: &Value) -> Result<Decoded, String> {
    let normalised = match crate::kinds::rules(res).typed() {
        Some(t) => t.round_trip(obj)?,
        None => obj.clone(),
    };
    let mut unknown = Vec::new();
    diff(obj, &normalised, "", &mut unknown);
    Ok(Decoded {
        object: normalised,
        unknown,
    })
}

/// Paths present (and non-null) in `original` but missing from `decoded`.
fn diff(original: &Value, decoded: &Value, at: &str, out: &mut Vec<String>) {
    match (original, decoded) {
        (Value::Object(o), Value::Object(d)) => {
            for (k, v) in o {
                let path = if at.is_empty() {
                    k.clone()
                } else {
                    format!("{at}.{k}")
                };
                match d.get(k) {
                    None if !v.is_null() && !is_empty_container(v) => out.push(path),
                    None => {}
                    Some(dv) => diff(v, dv, &path, out),
                }
            }
        }
        (Value::Array(o), Value::Array(d)) => {
            for (i, (v, dv)) in o.iter().zip(d).enumerate() {
                diff(v, dv, &format!("{at}[{i}]"), out);
            }
        }
        _ => {}
    }
}

/// `{}` / `[]` that the typed struct drops are not unknown fields.
fn is_empty_container(v: &Value) -> bool {
    match v {
        Value::Object(m) => m.is_empty(),
        Value::Array(a) => a.is_empty(),
        _ => false,
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use kedge_core::resources::by_kind;
    use serde_json::json;

    #[test]
    fn unknown_fields_are_found_and_dropped() {
        let res = by_kind("v1", "Pod").unwrap();
        let d = decode(
            res,
            &json!({"apiVersion": "v1", "kind": "Pod", "metadata": {"name": "a", "creationTimestamp": null},
                "spec": {"containers": [{"name": "c", "image": "i", "imagee": "typo"}], "bogus": 1}}),
        )
        .unwrap();
        assert_eq!(d.unknown, vec!["spec.bogus", "spec.containers[0].imagee"]);
        assert!(d.object["spec"].get("bogus").is_none());
    }

    #[test]
    fn wrong_types_are_errors() {
        let res = by_kind("apps/v1", "Deployment").unwrap();
        assert!(
            decode(
                res,
                &json!({"metadata": {"name": "a"}, "spec": {"replicas": "three"}})
            )
            .is_err()
        );
    }
}
