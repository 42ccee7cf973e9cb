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

fn round_trip<T: serde::de::DeserializeOwned + serde::Serialize>(
    v: &Value,
) -> Result<Value, String> {
    let typed: T = serde_json::from_value(v.clone()).map_err(|e| e.to_string())?;
    serde_json::to_value(typed).map_err(|e| e.to_string())
}

/// Decodes `obj` as the Kubernetes type of `res`. Kinds without a typed struct pass through.
pub fn decode(res: &Resource, obj: &Value) -> Result<Decoded, String> {
    use k8s_openapi::api::{
        apps::v1 as apps, batch::v1 as batch, coordination::v1 as coord, core::v1 as core,
    };
    let normalised = match (res.group, res.kind) {
        ("", "Pod") => round_trip::<core::Pod>(obj)?,
        ("", "Node") => round_trip::<core::Node>(obj)?,
        ("", "Namespace") => round_trip::<core::Namespace>(obj)?,
        ("", "Event") => round_trip::<core::Event>(obj)?,
        ("", "Secret") => round_trip::<core::Secret>(obj)?,
        ("", "ConfigMap") => round_trip::<core::ConfigMap>(obj)?,
        ("apps", "Deployment") => round_trip::<apps::Deployment>(obj)?,
        ("", "Service") => round_trip::<core::Service>(obj)?,
        ("", "Endpoints") => round_trip::<core::Endpoints>(obj)?,
        ("", "ServiceAccount") => round_trip::<core::ServiceAccount>(obj)?,
        ("apps", "ReplicaSet") => round_trip::<apps::ReplicaSet>(obj)?,
        ("", "ReplicationController") => round_trip::<core::ReplicationController>(obj)?,
        ("apps", "StatefulSet") => round_trip::<apps::StatefulSet>(obj)?,
        ("apps", "DaemonSet") => round_trip::<apps::DaemonSet>(obj)?,
        ("apps", "ControllerRevision") => round_trip::<apps::ControllerRevision>(obj)?,
        ("batch", "Job") => round_trip::<batch::Job>(obj)?,
        ("batch", "CronJob") => round_trip::<batch::CronJob>(obj)?,
        ("coordination.k8s.io", "Lease") => round_trip::<coord::Lease>(obj)?,
        ("discovery.k8s.io", "EndpointSlice") => {
            round_trip::<k8s_openapi::api::discovery::v1::EndpointSlice>(obj)?
        }
        ("rbac.authorization.k8s.io", "ClusterRole") => {
            round_trip::<k8s_openapi::api::rbac::v1::ClusterRole>(obj)?
        }
        ("rbac.authorization.k8s.io", "ClusterRoleBinding") => {
            round_trip::<k8s_openapi::api::rbac::v1::ClusterRoleBinding>(obj)?
        }
        ("rbac.authorization.k8s.io", "Role") => {
            round_trip::<k8s_openapi::api::rbac::v1::Role>(obj)?
        }
        ("rbac.authorization.k8s.io", "RoleBinding") => {
            round_trip::<k8s_openapi::api::rbac::v1::RoleBinding>(obj)?
        }
        ("plugins.kedge.io", "Plugin") => round_trip::<crate::plugin_kind::PluginObject>(obj)?,
        _ => obj.clone(),
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
