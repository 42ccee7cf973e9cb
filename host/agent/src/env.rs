//! A container's environment and command line, as kubelet builds them.

use kedge_core::meta;
use serde_json::Value;

use super::objects;

/// Where a container runs: its node, the node's and the pod's addresses, the API server.
#[derive(Clone, Copy)]
pub(crate) struct Where<'a> {
    pub node: &'a str,
    pub host_ip: &'a str,
    pub pod_ip: &'a str,
    pub server: &'a str,
}

/// A container's environment: kedge's `POD_NAME`/`POD_NAMESPACE`, then `envFrom`, then `env`
/// (later wins), with `valueFrom` resolved against the pod and the `objects` it uses.
pub(crate) fn container_env(
    pod: &Value,
    c: &Value,
    at: Where<'_>,
    service_links: Vec<(String, String)>,
    objects: &objects::Objects,
) -> Result<Vec<(String, String)>, String> {
    let ns = meta::namespace(pod);
    let info = crate::downward::PodInfo {
        pod,
        node: at.node,
        host_ip: at.host_ip,
        pod_ip: at.pod_ip,
    };
    // The Services' variables first (kubelet's order: a container's own win), then the API
    // server's address (its variables may be referenced by `$(VAR)`), then kedge's own, then
    // the container's.
    let mut env = service_links;
    for (k, v) in crate::sa_token::api_env(at.server) {
        env.retain(|(ek, _)| *ek != k);
        env.push((k, v));
    }
    env.push(("POD_NAME".to_string(), meta::name(pod).to_string()));
    env.push(("POD_NAMESPACE".to_string(), ns.to_string()));
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
            // `$(NAME)` of a variable defined before this one (kubelet's order).
            expand(v, |k| lookup(&env, k))
        } else if let Some(path) = e
            .pointer("/valueFrom/fieldRef/fieldPath")
            .and_then(Value::as_str)
        {
            crate::downward::field(&info, path, false).map_err(|m| format!("env {name}: {m}"))?
        } else if let Some(r) = e.pointer("/valueFrom/resourceFieldRef") {
            let container = r["containerName"]
                .as_str()
                .filter(|n| !n.is_empty())
                .or_else(|| c["name"].as_str())
                .unwrap_or_default();
            crate::downward::resource(
                &info,
                container,
                r["resource"].as_str().unwrap_or_default(),
                r["divisor"].as_str(),
            )
            .map_err(|m| format!("env {name}: {m}"))?
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
                "env {name}: valueFrom has none of fieldRef, resourceFieldRef, \
                 configMapKeyRef, secretKeyRef"
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

/// The value of variable `name` in `env` (the last definition wins).
fn lookup(env: &[(String, String)], name: &str) -> Option<String> {
    env.iter()
        .rev()
        .find(|(k, _)| k == name)
        .map(|(_, v)| v.clone())
}

/// kubelet's `$(VAR)` expansion: `$(NAME)` becomes the variable's value when `lookup` knows
/// it and stays as written when not; `$$` is a literal `$` (so `$$(NAME)` is `$(NAME)`).
pub(crate) fn expand(input: &str, lookup: impl Fn(&str) -> Option<String>) -> String {
    let mut out = String::with_capacity(input.len());
    let mut rest = input;
    while let Some(i) = rest.find('$') {
        out.push_str(&rest[..i]);
        let after = &rest[i + 1..];
        if let Some(tail) = after.strip_prefix('$') {
            out.push('$');
            rest = tail;
        } else if let Some(tail) = after.strip_prefix('(')
            && let Some(end) = tail.find(')')
        {
            let name = &tail[..end];
            match lookup(name) {
                Some(v) => out.push_str(&v),
                None => {
                    out.push_str("$(");
                    out.push_str(name);
                    out.push(')');
                }
            }
            rest = &tail[end + 1..];
        } else {
            out.push('$');
            rest = after;
        }
    }
    out.push_str(rest);
    out
}

/// The container with `$(VAR)` references in its `command` and `args` expanded against its
/// environment, as kubelet does before it starts the process.
pub(crate) fn expand_command(c: &Value, env: &[(String, String)]) -> Value {
    let mut c = c.clone();
    for key in ["command", "args"] {
        if let Some(list) = c.get_mut(key).and_then(Value::as_array_mut) {
            for item in list.iter_mut() {
                if let Some(s) = item.as_str() {
                    *item = Value::String(expand(s, |k| lookup(env, k)));
                }
            }
        }
    }
    c
}

#[cfg(test)]
mod expansion_tests {
    use super::*;

    /// Kubernetes' documented cases of dependent environment variables.
    #[test]
    fn references_expand_as_kubelet_expands_them() {
        let vars = |k: &str| match k {
            "A" => Some("a".to_string()),
            "EMPTY" => Some(String::new()),
            _ => None,
        };
        for (input, want) in [
            ("$(A)", "a"),
            ("x$(A)y$(A)", "xaya"),
            ("$(MISSING)", "$(MISSING)"),
            ("$$(A)", "$(A)"),
            ("$$$(A)", "$a"),
            ("$(EMPTY)-", "-"),
            ("$A", "$A"),
            ("$(A", "$(A"),
            ("tail $", "tail $"),
            ("$()", "$()"),
            ("no refs", "no refs"),
        ] {
            assert_eq!(expand(input, vars), want, "{input}");
        }
    }

    #[test]
    fn command_and_args_expand_against_the_environment() {
        let c = serde_json::json!({"command": ["echo", "$(GREETING)"], "args": ["$(NAME)!", "$$(NAME)"]});
        let env = vec![
            ("GREETING".to_string(), "hello".to_string()),
            ("NAME".to_string(), "kedge".to_string()),
        ];
        let c = expand_command(&c, &env);
        assert_eq!(c["command"], serde_json::json!(["echo", "hello"]));
        assert_eq!(c["args"], serde_json::json!(["kedge!", "$(NAME)"]));
    }
}
