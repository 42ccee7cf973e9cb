//! A container's probes (liveness, readiness, startup): Kubernetes' defaults and checks, worded
//! as kube-apiserver words them. The node agent runs them (`kedge-agent`'s probe module).

use serde_json::{Value, json};

use super::common::invalid_raw;
use crate::error::Cause;

const PROBES: [&str; 3] = ["livenessProbe", "readinessProbe", "startupProbe"];
const HANDLERS: [&str; 4] = ["exec", "httpGet", "tcpSocket", "grpc"];

/// SetDefaults_Probe and SetDefaults_HTTPGetAction: zero or absent counts take their
/// defaults, an httpGet gets path `/` and scheme `HTTP`.
pub(super) fn default_probes(c: &mut serde_json::Map<String, Value>) {
    for name in PROBES {
        let Some(p) = c.get_mut(name).and_then(Value::as_object_mut) else {
            continue;
        };
        for (field, default) in [
            ("timeoutSeconds", 1),
            ("periodSeconds", 10),
            ("successThreshold", 1),
            ("failureThreshold", 3),
        ] {
            if p.get(field).and_then(Value::as_i64).is_none_or(|v| v == 0) {
                p.insert(field.into(), json!(default));
            }
        }
        if let Some(h) = p.get_mut("httpGet").and_then(Value::as_object_mut) {
            if h.get("path")
                .and_then(Value::as_str)
                .is_none_or(str::is_empty)
            {
                h.insert("path".into(), json!("/"));
            }
            h.entry("scheme").or_insert(json!("HTTP"));
        }
    }
}

/// The probes of container `c` at `path` (`spec.containers[0]`); `init` for an init container
/// that is not a sidecar, which may have none.
pub(super) fn validate_probes(c: &Value, path: &str, init: bool, causes: &mut Vec<Cause>) {
    for name in PROBES {
        let Some(p) = c.get(name).filter(|p| !p.is_null()) else {
            continue;
        };
        let at = format!("{path}.{name}");
        if init {
            causes.push(Cause::forbidden(
                at,
                "may not be set for init containers without restartPolicy=Always",
            ));
            continue;
        }
        validate_handler(p, &at, causes);
        for field in ["initialDelaySeconds", "timeoutSeconds", "periodSeconds"] {
            non_negative_int(p, field, &at, causes);
        }
        for field in ["successThreshold", "failureThreshold"] {
            non_negative_int(p, field, &at, causes);
        }
        if name != "readinessProbe"
            && let Some(s) = p.get("successThreshold")
            && s.as_i64() != Some(1)
        {
            causes.push(invalid_raw(
                format!("{at}.successThreshold"),
                &s.to_string(),
                "must be 1",
            ));
        }
        if let Some(g) = p
            .get("terminationGracePeriodSeconds")
            .filter(|g| !g.is_null())
        {
            if name == "readinessProbe" {
                causes.push(invalid_raw(
                    format!("{at}.terminationGracePeriodSeconds"),
                    &g.to_string(),
                    "must not be set for readinessProbes",
                ));
            } else if g.as_i64().is_none_or(|g| g <= 0) {
                causes.push(invalid_raw(
                    format!("{at}.terminationGracePeriodSeconds"),
                    &g.to_string(),
                    "must be greater than 0",
                ));
            }
        }
    }
}

fn non_negative_int(p: &Value, field: &str, at: &str, causes: &mut Vec<Cause>) {
    if let Some(v) = p.get(field)
        && v.as_i64().is_none_or(|n| n < 0)
    {
        causes.push(invalid_raw(
            format!("{at}.{field}"),
            &v.to_string(),
            "must be greater than or equal to 0",
        ));
    }
}

/// Exactly one handler, each well formed.
fn validate_handler(p: &Value, at: &str, causes: &mut Vec<Cause>) {
    let set: Vec<&str> = HANDLERS
        .into_iter()
        .filter(|h| p.get(*h).is_some_and(|v| !v.is_null()))
        .collect();
    match set.as_slice() {
        [] => {
            causes.push(Cause::required(at.to_string()));
            if let Some(c) = causes.last_mut() {
                c.message = "Required value: must specify a handler type".into();
            }
            return;
        }
        [_] => {}
        [_, more @ ..] => {
            for h in more {
                causes.push(Cause::forbidden(
                    format!("{at}.{h}"),
                    "may not specify more than 1 handler type",
                ));
            }
            return;
        }
    }
    match set[0] {
        "exec" => {
            if p.pointer("/exec/command")
                .and_then(Value::as_array)
                .is_none_or(Vec::is_empty)
            {
                causes.push(Cause::required(format!("{at}.exec.command")));
            }
        }
        "httpGet" => {
            port(&p["httpGet"]["port"], &format!("{at}.httpGet.port"), causes);
            if let Some(s) = p.pointer("/httpGet/scheme").and_then(Value::as_str)
                && !["HTTP", "HTTPS"].contains(&s)
            {
                causes.push(Cause::unsupported(
                    format!("{at}.httpGet.scheme"),
                    s,
                    &["HTTP", "HTTPS"],
                ));
            }
        }
        "tcpSocket" => port(
            &p["tcpSocket"]["port"],
            &format!("{at}.tcpSocket.port"),
            causes,
        ),
        _ => {
            let port = &p["grpc"]["port"];
            if !port.as_i64().is_some_and(|n| (1..=65535).contains(&n)) {
                causes.push(invalid_raw(
                    format!("{at}.grpc.port"),
                    &port.to_string(),
                    "must be between 1 and 65535, inclusive",
                ));
            }
        }
    }
}

/// A port by number (1–65535) or by name (an IANA service name, 1–15 characters).
fn port(v: &Value, at: &str, causes: &mut Vec<Cause>) {
    match v {
        Value::Null => causes.push(Cause::required(at.to_string())),
        Value::Number(n) => {
            if !n.as_i64().is_some_and(|n| (1..=65535).contains(&n)) {
                causes.push(invalid_raw(
                    at,
                    &n.to_string(),
                    "must be between 1 and 65535, inclusive",
                ));
            }
        }
        Value::String(s) => {
            let name_ok = !s.is_empty()
                && s.len() <= 15
                && s.bytes()
                    .all(|b| b.is_ascii_lowercase() || b.is_ascii_digit() || b == b'-')
                && s.bytes().any(|b| b.is_ascii_lowercase())
                && !s.starts_with('-')
                && !s.ends_with('-')
                && !s.contains("--");
            let number_ok = s.parse::<u32>().is_ok_and(|n| (1..=65535).contains(&n));
            if !name_ok && !number_ok {
                causes.push(Cause::invalid(
                    at,
                    s,
                    "must contain only alpha-numeric characters (a-z, 0-9), and hyphens (-), \
                     at most 15 characters, at least one letter, no hyphen at either end or \
                     next to another",
                ));
            }
        }
        other => causes.push(invalid_raw(at, &other.to_string(), "must be a port")),
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::kinds::test_support::*;

    fn pod_with(probes: Value) -> Value {
        let mut c = json!({"name": "c", "image": "i"});
        for (k, v) in probes.as_object().unwrap() {
            c[k] = v.clone();
        }
        json!({"metadata": {"name": "p"}, "spec": {"containers": [c]}})
    }

    #[test]
    fn probes_are_defaulted_as_kubernetes_does() {
        let pod = by_kind("v1", "Pod").unwrap();
        let mut p = pod_with(json!({
            "livenessProbe": {"httpGet": {"port": 80}, "periodSeconds": 0},
            "readinessProbe": {"tcpSocket": {"port": 80}, "failureThreshold": 5}}));
        default(pod, &mut p);
        let c = &p["spec"]["containers"][0];
        assert_eq!(
            c["livenessProbe"],
            json!({"httpGet": {"port": 80, "path": "/", "scheme": "HTTP"}, "periodSeconds": 10,
                "timeoutSeconds": 1, "successThreshold": 1, "failureThreshold": 3})
        );
        assert_eq!(c["readinessProbe"]["failureThreshold"], 5);
        assert_eq!(c["readinessProbe"]["periodSeconds"], 10);
    }

    #[test]
    fn probes_are_checked() {
        let pod = by_kind("v1", "Pod").unwrap();
        let at = "spec.containers[0]";
        let cases = [
            (
                json!({"livenessProbe": {"periodSeconds": 3}}),
                vec![(format!("{at}.livenessProbe"), "FieldValueRequired")],
            ),
            (
                json!({"readinessProbe": {"tcpSocket": {"port": 1}, "exec": {"command": ["x"]}}}),
                vec![(
                    format!("{at}.readinessProbe.tcpSocket"),
                    "FieldValueForbidden",
                )],
            ),
            (
                json!({"livenessProbe": {"tcpSocket": {"port": 80}, "successThreshold": 2}}),
                vec![(
                    format!("{at}.livenessProbe.successThreshold"),
                    "FieldValueInvalid",
                )],
            ),
            (
                json!({"readinessProbe": {"httpGet": {"port": 70000}}}),
                vec![(
                    format!("{at}.readinessProbe.httpGet.port"),
                    "FieldValueInvalid",
                )],
            ),
            (
                json!({"readinessProbe": {"httpGet": {"port": "Not_A_Name"}}}),
                vec![(
                    format!("{at}.readinessProbe.httpGet.port"),
                    "FieldValueInvalid",
                )],
            ),
            (
                json!({"startupProbe": {"grpc": {"port": 0}}}),
                vec![(format!("{at}.startupProbe.grpc.port"), "FieldValueInvalid")],
            ),
            (
                json!({"readinessProbe": {"exec": {"command": []}}}),
                vec![(
                    format!("{at}.readinessProbe.exec.command"),
                    "FieldValueRequired",
                )],
            ),
            (
                json!({"readinessProbe": {"tcpSocket": {"port": 1},
                    "terminationGracePeriodSeconds": 5}}),
                vec![(
                    format!("{at}.readinessProbe.terminationGracePeriodSeconds"),
                    "FieldValueInvalid",
                )],
            ),
            (
                json!({"livenessProbe": {"tcpSocket": {"port": 1}, "initialDelaySeconds": -1}}),
                vec![(
                    format!("{at}.livenessProbe.initialDelaySeconds"),
                    "FieldValueInvalid",
                )],
            ),
        ];
        for (probes, want) in cases {
            let causes = validate(pod, &pod_with(probes.clone()));
            let got: Vec<(String, &str)> =
                causes.iter().map(|c| (c.field.clone(), c.reason)).collect();
            assert_eq!(got, want, "{probes}");
        }
        let fine = pod_with(json!({
            "livenessProbe": {"httpGet": {"port": "http", "path": "/healthz"},
                "terminationGracePeriodSeconds": 3},
            "readinessProbe": {"grpc": {"port": 9090}, "successThreshold": 2},
            "startupProbe": {"exec": {"command": ["true"]}, "failureThreshold": 30}}));
        assert!(
            validate(pod, &fine).is_empty(),
            "{:?}",
            validate(pod, &fine)
        );
        let causes = validate(
            pod,
            &pod_with(json!({"livenessProbe": {"periodSeconds": 3}})),
        );
        assert_eq!(
            causes[0].message,
            "Required value: must specify a handler type"
        );
    }
}
