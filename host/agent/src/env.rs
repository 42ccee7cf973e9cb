//! A container's environment and command line, as kubelet builds them.

use kedge_core::meta;
use serde_json::Value;

use super::objects;

/// A container's environment: kedge's `POD_NAME`/`POD_NAMESPACE`, then `envFrom`, then `env`
/// (later wins), with `valueFrom` resolved against the pod and the `objects` it uses.
pub(crate) fn container_env(
    pod: &Value,
    c: &Value,
    node: &str,
    host_ip: &str,
    objects: &objects::Objects,
) -> Result<Vec<(String, String)>, String> {
    let ns = meta::namespace(pod);
    let mut env = vec![
        ("POD_NAME".to_string(), meta::name(pod).to_string()),
        ("POD_NAMESPACE".to_string(), ns.to_string()),
    ];
    for (k, v) in objects::env_from(objects, ns, c)? {
        env.retain(|(ek, _)| *ek != k);
        env.push((k, v));
    }
    for e in c.get("env").and_then(Value::as_array).into_iter().flatten() {
        let name = e["name"].as_str().unwrap_or_default().to_string();
        let key_ref = |kind, ptr: &str| {
            e.pointer(ptr)
                .map(|sel| objects::key_ref(objects, kind, ns, sel))
        };
        let value = if let Some(v) = e.get("value").and_then(Value::as_str) {
            v.to_string()
        } else if let Some(path) = e
            .pointer("/valueFrom/fieldRef/fieldPath")
            .and_then(Value::as_str)
        {
            match path {
                "metadata.name" => meta::name(pod).to_string(),
                "metadata.namespace" => meta::namespace(pod).to_string(),
                "metadata.uid" => meta::uid(pod).to_string(),
                "spec.nodeName" => node.to_string(),
                // Pods share the node's network for now: both are the node's address.
                "status.hostIP" | "status.podIP" => host_ip.to_string(),
                "spec.serviceAccountName" => pod
                    .pointer("/spec/serviceAccountName")
                    .and_then(Value::as_str)
                    .unwrap_or("default")
                    .to_string(),
                other => {
                    return Err(format!(
                        "env {name}: fieldRef {other:?} is not supported by kedge yet"
                    ));
                }
            }
        } else if let Some(v) = key_ref(objects::Kind::ConfigMap, "/valueFrom/configMapKeyRef")
            .or_else(|| key_ref(objects::Kind::Secret, "/valueFrom/secretKeyRef"))
        {
            match v.map_err(|m| format!("env {name}: {m}"))? {
                Some(v) => v,
                // Optional and missing: the variable is left out.
                None => continue,
            }
        } else if e.get("valueFrom").is_some() {
            return Err(format!(
                "env {name}: only value and valueFrom fieldRef, configMapKeyRef and \
                 secretKeyRef are supported by kedge yet"
            ));
        } else {
            String::new()
        };
        env.retain(|(k, _)| *k != name);
        env.push((name, value));
    }
    Ok(env)
}

pub(crate) fn container_args(c: &Value) -> Vec<String> {
    let strings = |k: &str| -> Vec<String> {
        c.get(k)
            .and_then(Value::as_array)
            .map(|a| {
                a.iter()
                    .filter_map(|s| s.as_str().map(String::from))
                    .collect()
            })
            .unwrap_or_default()
    };
    let command = strings("command");
    let args = strings("args");
    let mut argv = if command.is_empty() {
        vec![c["name"].as_str().unwrap_or("main").to_string()]
    } else {
        command
    };
    argv.extend(args);
    argv
}
