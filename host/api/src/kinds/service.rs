//! Services: type-dependent defaults, the allocated cluster IP and node ports carried over a
//! replace, port and IP checks, a cluster IP fixed once set, and `kubectl get svc`'s columns.

use k8s_openapi::api::core::v1 as core;
use serde_json::{Value, json};

use super::common::{duplicate, ensure_object, invalid_raw, one_of, valid_port};
use super::table_fmt::{CREATED, Column, age, col, format_labels, i, name, s};
use super::{KindRules, Typed, typed};
use crate::error::Cause;
use kedge_core::meta;
use kedge_core::resources::Resource;

pub(super) struct Service;

static COLUMNS: [Column; 7] = [
    col("Name", "string", 0),
    col("Type", "string", 0),
    col("Cluster-IP", "string", 0),
    col("External-IP", "string", 0),
    col("Port(s)", "string", 0),
    col("Age", "string", 0),
    col("Selector", "string", 1),
];

impl KindRules for Service {
    fn default(&self, obj: &mut Value) {
        default_service(obj);
    }

    fn initial_status(&self) -> Option<Value> {
        Some(json!({"loadBalancer": {}}))
    }

    fn prepare_update(&self, old: &Value, new: &mut Value) {
        keep_allocations(old, new);
    }

    fn validate(
        &self,
        _res: &Resource,
        obj: &Value,
        _old: Option<&Value>,
        causes: &mut Vec<Cause>,
    ) {
        validate_service(obj, causes);
    }

    fn validate_update(&self, old: &Value, new: &Value, causes: &mut Vec<Cause>) {
        let old_ty = old.pointer("/spec/type").and_then(Value::as_str);
        let new_ty = new.pointer("/spec/type").and_then(Value::as_str);
        let old_ip = old
            .pointer("/spec/clusterIP")
            .and_then(Value::as_str)
            .unwrap_or("");
        let new_ip = new
            .pointer("/spec/clusterIP")
            .and_then(Value::as_str)
            .unwrap_or("");
        if old_ty != Some("ExternalName")
            && new_ty != Some("ExternalName")
            && !old_ip.is_empty()
            && old_ip != new_ip
        {
            causes.push(invalid_raw(
                "spec.clusterIPs[0]",
                &format!("[]string{{{new_ip:?}}}"),
                "may not change once set",
            ));
        }
    }

    fn columns(&self) -> &'static [Column] {
        &COLUMNS
    }

    fn cells(&self, o: &Value, now: chrono::DateTime<chrono::Utc>) -> Vec<Value> {
        let ip = s(o, "/spec/clusterIP");
        let ty = s(o, "/spec/type");
        vec![
            name(o),
            json!(if ty.is_empty() { "ClusterIP" } else { ty }),
            json!(if ip.is_empty() { "<none>" } else { ip }),
            json!(service_external_ip(o)),
            json!(service_ports(o)),
            json!(age(o, CREATED, now)),
            json!(format_labels(o.pointer("/spec/selector"))),
        ]
    }

    fn typed(&self) -> Option<&'static dyn Typed> {
        typed::<core::Service>()
    }
}

fn default_service(obj: &mut Value) {
    let spec = ensure_object(obj, "spec");
    let ty = spec
        .entry("type")
        .or_insert(json!("ClusterIP"))
        .as_str()
        .unwrap_or("ClusterIP")
        .to_string();
    spec.entry("sessionAffinity").or_insert(json!("None"));
    if spec.get("sessionAffinity").and_then(Value::as_str) == Some("ClientIP") {
        spec.entry("sessionAffinityConfig")
            .or_insert(json!({"clientIP": {"timeoutSeconds": 10800}}));
    }
    if let Some(Value::Array(ports)) = spec.get_mut("ports") {
        for p in ports.iter_mut().filter_map(Value::as_object_mut) {
            p.entry("protocol").or_insert(json!("TCP"));
            if let Some(port) = p.get("port").cloned() {
                p.entry("targetPort").or_insert(port);
            }
        }
    }
    if ty == "ExternalName" {
        return;
    }
    spec.entry("internalTrafficPolicy")
        .or_insert(json!("Cluster"));
    if ty == "NodePort" || ty == "LoadBalancer" {
        spec.entry("externalTrafficPolicy")
            .or_insert(json!("Cluster"));
    }
    if ty == "LoadBalancer" {
        spec.entry("allocateLoadBalancerNodePorts")
            .or_insert(json!(true));
    }
    let headless = spec.get("clusterIP").and_then(Value::as_str) == Some("None");
    let selectorless = spec
        .get("selector")
        .and_then(Value::as_object)
        .is_none_or(|s| s.is_empty());
    spec.entry("ipFamilies").or_insert(json!(["IPv4"]));
    spec.entry("ipFamilyPolicy")
        .or_insert(json!(if headless && selectorless {
            "RequireDualStack"
        } else {
            "SingleStack"
        }));
}

/// Before defaulting an update: carries over what the server allocated and the client
/// omitted (kube-apiserver's `patchAllocatedValues`), so `kubectl replace` of a manifest
/// without `clusterIP` or `nodePort` keeps them instead of failing as a change.
fn keep_allocations(old: &Value, new: &mut Value) {
    let (Some(os), Some(ns)) = (old.get("spec"), new.get_mut("spec")) else {
        return;
    };
    let old_type = os
        .get("type")
        .and_then(Value::as_str)
        .unwrap_or("ClusterIP");
    let new_type = ns
        .get("type")
        .and_then(Value::as_str)
        .unwrap_or("ClusterIP")
        .to_string();
    let Some(n) = ns.as_object_mut() else {
        return;
    };
    if new_type == "ExternalName" {
        // Moving to ExternalName releases the IP (dropTypeDependentFields).
        if old_type != "ExternalName" {
            for f in ["clusterIP", "clusterIPs", "ipFamilies", "ipFamilyPolicy"] {
                if n.get(f) == os.get(f) {
                    n.remove(f);
                }
            }
        }
        return;
    }
    let empty = |v: Option<&Value>| v.is_none_or(|v| v.is_null() || v.as_str() == Some(""));
    if empty(n.get("clusterIP")) && old_type != "ExternalName" {
        if let Some(ip) = os.get("clusterIP") {
            n.insert("clusterIP".into(), ip.clone());
        }
        if empty(n.get("clusterIPs"))
            && let Some(ips) = os.get("clusterIPs")
        {
            n.insert("clusterIPs".into(), ips.clone());
        }
    } else if n.get("clusterIP") != os.get("clusterIP")
        && n.get("clusterIPs") == os.get("clusterIPs")
    {
        // Only clusterIP changed: clusterIPs follows, and the change is reported on it.
        if let Some(ip) = n.get("clusterIP").cloned() {
            n.insert("clusterIPs".into(), json!([ip]));
        }
    }
    if empty(n.get("clusterIPs"))
        && let Some(ip) = n.get("clusterIP").filter(|v| !empty(Some(v))).cloned()
    {
        n.insert("clusterIPs".into(), json!([ip]));
    }
    let needs_ports = |t: &str| t == "NodePort" || t == "LoadBalancer";
    let old_ports: Vec<(String, Value)> = os
        .get("ports")
        .and_then(Value::as_array)
        .into_iter()
        .flatten()
        .filter_map(|p| {
            Some((
                p.get("name")
                    .and_then(Value::as_str)
                    .unwrap_or("")
                    .to_string(),
                p.get("nodePort")?.clone(),
            ))
        })
        .collect();
    let Some(ports) = n.get_mut("ports").and_then(Value::as_array_mut) else {
        return;
    };
    if needs_ports(old_type) && needs_ports(&new_type) {
        let used: Vec<Value> = ports
            .iter()
            .filter_map(|p| p.get("nodePort").cloned())
            .collect();
        for p in ports.iter_mut().filter_map(Value::as_object_mut) {
            if p.get("nodePort").is_some_and(|v| v.as_i64() != Some(0)) {
                continue;
            }
            let name = p.get("name").and_then(Value::as_str).unwrap_or("");
            if let Some((_, np)) = old_ports.iter().find(|(n, _)| n == name)
                && !used.contains(np)
            {
                p.insert("nodePort".into(), np.clone());
            }
        }
    } else if needs_ports(old_type) && !needs_ports(&new_type) {
        // Leaving NodePort releases the ports the server had given.
        for p in ports.iter_mut().filter_map(Value::as_object_mut) {
            if let Some(np) = p.get("nodePort")
                && old_ports.iter().any(|(_, o)| o == np)
            {
                p.remove("nodePort");
            }
        }
    }
}

/// An IANA service name (a named targetPort): 1–15 lowercase alphanumerics or '-', at least
/// one letter, no leading/trailing or double '-'.
fn valid_port_name(s: &str) -> Result<(), &'static str> {
    if s.is_empty() || s.len() > 15 {
        return Err("must be no more than 15 characters");
    }
    if !s
        .chars()
        .all(|c| c.is_ascii_lowercase() || c.is_ascii_digit() || c == '-')
    {
        return Err("must contain only alpha-numeric characters (a-z, 0-9), and hyphens (-)");
    }
    if !s.chars().any(|c| c.is_ascii_lowercase()) {
        return Err("must contain at least one letter (a-z)");
    }
    if s.starts_with('-') || s.ends_with('-') || s.contains("--") {
        return Err("must not begin or end with a hyphen, or contain adjacent hyphens");
    }
    Ok(())
}

fn validate_service(obj: &Value, causes: &mut Vec<Cause>) {
    let Some(spec) = obj.get("spec") else {
        causes.push(Cause::required("spec"));
        return;
    };
    let ty = spec
        .get("type")
        .and_then(Value::as_str)
        .unwrap_or("ClusterIP");
    one_of(
        spec,
        "type",
        "spec",
        &["ClusterIP", "ExternalName", "LoadBalancer", "NodePort"],
        causes,
    );
    one_of(
        spec,
        "sessionAffinity",
        "spec",
        &["ClientIP", "None"],
        causes,
    );
    let cluster_ip = spec.get("clusterIP").and_then(Value::as_str).unwrap_or("");
    let headless = cluster_ip == "None";
    if ty == "ExternalName" {
        match spec.get("externalName").and_then(Value::as_str) {
            None | Some("") => causes.push(Cause::required("spec.externalName")),
            Some(n) => {
                if let Err(why) = meta::validate_subdomain(n.trim_end_matches('.')) {
                    causes.push(Cause::invalid("spec.externalName", n, why));
                }
            }
        }
        if !cluster_ip.is_empty() {
            causes.push(Cause::forbidden(
                "spec.clusterIPs",
                "may not be set for ExternalName services",
            ));
        }
    } else {
        if !cluster_ip.is_empty() && !headless && cluster_ip.parse::<std::net::IpAddr>().is_err() {
            causes.push(Cause::invalid(
                "spec.clusterIPs[0]",
                cluster_ip,
                "must be a valid IP address, (e.g. 10.9.8.7 or 2001:db8::ffff)",
            ));
        }
        if let Some(first) = spec.pointer("/clusterIPs/0").and_then(Value::as_str)
            && !cluster_ip.is_empty()
            && first != cluster_ip
        {
            causes.push(Cause::invalid(
                "spec.clusterIPs",
                first,
                "first value must match `clusterIP`",
            ));
        }
        if headless && (ty == "NodePort" || ty == "LoadBalancer") {
            causes.push(Cause::invalid(
                "spec.clusterIPs[0]",
                "None",
                format!("may not be set to 'None' for {ty} services"),
            ));
        }
    }
    let ports = spec
        .get("ports")
        .and_then(Value::as_array)
        .cloned()
        .unwrap_or_default();
    if ports.is_empty() && ty != "ExternalName" && !headless {
        causes.push(Cause::required("spec.ports"));
    }
    let mut names: Vec<&str> = Vec::new();
    let mut node_ports: Vec<(String, i64)> = Vec::new();
    let mut port_protocols: Vec<(i64, String)> = Vec::new();
    for (i, p) in ports.iter().enumerate() {
        let at = format!("spec.ports[{i}]");
        let name = p.get("name").and_then(Value::as_str).unwrap_or("");
        if ports.len() > 1 && name.is_empty() {
            causes.push(Cause::required(format!("{at}.name")));
        } else if !name.is_empty() {
            if let Err(why) = meta::validate_label(name) {
                causes.push(Cause::invalid(format!("{at}.name"), name, why));
            }
            if names.contains(&name) {
                causes.push(duplicate(format!("{at}.name"), &format!("{name:?}")));
            }
            names.push(name);
        }
        let port = p.get("port");
        match port {
            None => causes.push(Cause::required(format!("{at}.port"))),
            Some(v) if !valid_port(v) => causes.push(invalid_raw(
                format!("{at}.port"),
                &v.to_string(),
                "must be between 1 and 65535, inclusive",
            )),
            Some(_) => {}
        }
        let protocol = p.get("protocol").and_then(Value::as_str).unwrap_or("TCP");
        if !["SCTP", "TCP", "UDP"].contains(&protocol) {
            causes.push(Cause::unsupported(
                format!("{at}.protocol"),
                protocol,
                &["SCTP", "TCP", "UDP"],
            ));
        }
        if let Some(n) = port.and_then(Value::as_i64) {
            let key = (n, protocol.to_string());
            if port_protocols.contains(&key) {
                causes.push(duplicate(
                    at.clone(),
                    &format!("core.ServicePort{{Name:{name:?}, Protocol:{protocol:?}, Port:{n}}}"),
                ));
            }
            port_protocols.push(key);
        }
        match p.get("targetPort") {
            Some(Value::String(s)) => {
                if let Err(why) = valid_port_name(s) {
                    causes.push(Cause::invalid(format!("{at}.targetPort"), s, why));
                }
            }
            Some(v @ Value::Number(_)) if !valid_port(v) => causes.push(invalid_raw(
                format!("{at}.targetPort"),
                &v.to_string(),
                "must be between 1 and 65535, inclusive",
            )),
            _ => {}
        }
        if let Some(np) = p.get("nodePort").and_then(Value::as_i64)
            && np != 0
        {
            if ty == "ClusterIP" || ty == "ExternalName" {
                causes.push(Cause::forbidden(
                    format!("{at}.nodePort"),
                    format!("may not be used when `type` is '{ty}'"),
                ));
            } else if node_ports.contains(&(protocol.to_string(), np)) {
                causes.push(duplicate(format!("{at}.nodePort"), &np.to_string()));
            }
            node_ports.push((protocol.to_string(), np));
        }
    }
}

/// PORT(S): `80/TCP`, `80:30080/TCP`, comma-separated; `<none>` without ports.
fn service_ports(o: &Value) -> String {
    let ports: Vec<String> = o
        .pointer("/spec/ports")
        .and_then(Value::as_array)
        .into_iter()
        .flatten()
        .map(|p| {
            let proto = p.get("protocol").and_then(Value::as_str).unwrap_or("TCP");
            match p
                .get("nodePort")
                .and_then(Value::as_i64)
                .filter(|n| *n != 0)
            {
                Some(np) => format!("{}:{np}/{proto}", i(p, "/port")),
                None => format!("{}/{proto}", i(p, "/port")),
            }
        })
        .collect();
    if ports.is_empty() {
        "<none>".into()
    } else {
        ports.join(",")
    }
}

/// EXTERNAL-IP as kubectl computes it per Service type.
fn service_external_ip(o: &Value) -> String {
    let strs = |ptr: &str| -> Vec<String> {
        o.pointer(ptr)
            .and_then(Value::as_array)
            .into_iter()
            .flatten()
            .filter_map(|v| v.as_str().map(String::from))
            .collect()
    };
    let external = strs("/spec/externalIPs");
    match s(o, "/spec/type") {
        "ClusterIP" | "" | "NodePort" => {
            if external.is_empty() {
                "<none>".into()
            } else {
                external.join(",")
            }
        }
        "LoadBalancer" => {
            let mut ips: Vec<String> = o
                .pointer("/status/loadBalancer/ingress")
                .and_then(Value::as_array)
                .into_iter()
                .flatten()
                .filter_map(|i| {
                    i.get("ip")
                        .or_else(|| i.get("hostname"))
                        .and_then(Value::as_str)
                        .map(String::from)
                })
                .collect();
            ips.extend(external);
            if ips.is_empty() {
                "<pending>".into()
            } else {
                ips.join(",")
            }
        }
        "ExternalName" => s(o, "/spec/externalName").to_string(),
        _ => "<unknown>".into(),
    }
}

#[cfg(test)]
mod tests {
    use crate::kinds::test_support::*;

    #[test]
    fn service_defaults_and_port_validation() {
        let res = by_kind("v1", "Service").unwrap();
        let mut s = json!({"metadata": {"name": "s"}, "spec": {"selector": {"app": "a"},
            "ports": [{"port": 80}]}});
        default(res, &mut s);
        assert_eq!(s["spec"]["type"], "ClusterIP");
        assert_eq!(s["spec"]["sessionAffinity"], "None");
        assert_eq!(
            s["spec"]["ports"][0],
            json!({"port": 80, "protocol": "TCP", "targetPort": 80})
        );
        assert_eq!(s["spec"]["ipFamilyPolicy"], "SingleStack");
        assert!(validate(res, &s).is_empty());

        let bad = json!({"metadata": {"name": "s"}, "spec": {"type": "ClusterIP", "ports": [
            {"name": "a", "port": 0}, {"name": "a", "port": 81, "nodePort": 30001},
            {"port": 82, "targetPort": 70000}]}});
        let c = validate(res, &bad);
        assert_eq!(
            fields(&c),
            [
                "spec.ports[0].port",
                "spec.ports[1].name",
                "spec.ports[1].nodePort",
                "spec.ports[2].name",
                "spec.ports[2].targetPort"
            ]
        );
        assert_eq!(
            c[0].message,
            "Invalid value: 0: must be between 1 and 65535, inclusive"
        );
        assert_eq!(c[1].message, "Duplicate value: \"a\"");
        let no_ports = json!({"metadata": {"name": "s"}, "spec": {"type": "ClusterIP"}});
        assert_eq!(fields(&validate(res, &no_ports)), ["spec.ports"]);
        let headless = json!({"metadata": {"name": "s"}, "spec": {"clusterIP": "None"}});
        assert!(validate(res, &headless).is_empty());
        let bad_ip =
            json!({"metadata": {"name": "s"}, "spec": {"clusterIP": "x", "ports": [{"port": 1}]}});
        assert_eq!(fields(&validate(res, &bad_ip)), ["spec.clusterIPs[0]"]);
    }

    #[test]
    fn service_updates_keep_allocations_and_refuse_ip_changes() {
        let res = by_kind("v1", "Service").unwrap();
        let old = json!({"spec": {"type": "NodePort", "clusterIP": "10.43.1.1",
            "clusterIPs": ["10.43.1.1"], "ports": [{"name": "http", "port": 80, "nodePort": 30001}]}});
        // A replace without the allocated values keeps them.
        let mut new =
            json!({"spec": {"type": "NodePort", "ports": [{"name": "http", "port": 80}]}});
        prepare_update(res, &old, &mut new);
        assert_eq!(new["spec"]["clusterIP"], "10.43.1.1");
        assert_eq!(new["spec"]["clusterIPs"], json!(["10.43.1.1"]));
        assert_eq!(new["spec"]["ports"][0]["nodePort"], 30001);
        assert!(validate_update(res, &old, &new).is_empty());
        // Changing clusterIP is refused on clusterIPs[0].
        let mut new = old.clone();
        new["spec"]["clusterIP"] = json!("10.43.1.2");
        prepare_update(res, &old, &mut new);
        let c = validate_update(res, &old, &new);
        assert_eq!(c[0].field, "spec.clusterIPs[0]");
        assert_eq!(
            c[0].message,
            "Invalid value: []string{\"10.43.1.2\"}: may not change once set"
        );
        // Leaving NodePort releases the ports.
        let mut new = old.clone();
        new["spec"]["type"] = json!("ClusterIP");
        prepare_update(res, &old, &mut new);
        assert!(new["spec"]["ports"][0].get("nodePort").is_none());
    }
}
