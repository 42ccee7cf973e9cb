//! Service environment variables, as kubelet sets them (Docker links' names): for every
//! Service of the pod's namespace that exists when a container starts and has a cluster IP,
//! `{SVC}_SERVICE_HOST`, `{SVC}_SERVICE_PORT` (and `_{PORTNAME}` per named port),
//! `{SVC}_PORT` and `{SVC}_PORT_{port}_{PROTO}[_PROTO|_PORT|_ADDR]`. Only with
//! `enableServiceLinks` (default true); the `kubernetes` Service's variables are the agent's
//! own business (it points them at an API server address that works from the node) and are
//! not produced here.

use serde_json::Value;

/// The variables for `services` (a namespace's Services, any order), sorted by Service name
/// so that a later Service's variables come later, as kubelet's map iteration does not
/// promise but its users read them.
pub fn service_env(services: &[Value]) -> Vec<(String, String)> {
    let mut svcs: Vec<&Value> = services
        .iter()
        .filter(|s| {
            let ip = s["spec"]["clusterIP"].as_str().unwrap_or_default();
            let api =
                s["metadata"]["namespace"] == "default" && s["metadata"]["name"] == "kubernetes";
            !ip.is_empty() && ip != "None" && !api
        })
        .collect();
    svcs.sort_by_key(|s| s["metadata"]["name"].as_str().unwrap_or_default());
    let mut out = Vec::new();
    for s in svcs {
        let name = s["metadata"]["name"].as_str().unwrap_or_default();
        let ip = s["spec"]["clusterIP"].as_str().unwrap_or_default();
        let ports = s["spec"]["ports"].as_array().cloned().unwrap_or_default();
        let Some(first) = ports.first() else { continue };
        let prefix = env_name(name);
        out.push((format!("{prefix}_SERVICE_HOST"), ip.to_owned()));
        out.push((format!("{prefix}_SERVICE_PORT"), port(first).to_string()));
        for p in &ports {
            if let Some(pn) = p["name"].as_str().filter(|n| !n.is_empty()) {
                out.push((
                    format!("{prefix}_SERVICE_PORT_{}", env_name(pn)),
                    port(p).to_string(),
                ));
            }
        }
        out.push((
            format!("{prefix}_PORT"),
            format!("{}://{ip}:{}", proto(first).to_lowercase(), port(first)),
        ));
        for p in &ports {
            let (n, pr) = (port(p), proto(p));
            let lower = pr.to_lowercase();
            let base = format!("{prefix}_PORT_{n}_{pr}");
            out.push((base.clone(), format!("{lower}://{ip}:{n}")));
            out.push((format!("{base}_PROTO"), lower));
            out.push((format!("{base}_PORT"), n.to_string()));
            out.push((format!("{base}_ADDR"), ip.to_owned()));
        }
    }
    out
}

fn port(p: &Value) -> u64 {
    p["port"].as_u64().unwrap_or_default()
}

fn proto(p: &Value) -> String {
    p["protocol"].as_str().unwrap_or("TCP").to_uppercase()
}

/// `my-service` → `MY_SERVICE`.
fn env_name(s: &str) -> String {
    s.to_uppercase().replace('-', "_")
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    #[test]
    fn variables_follow_docker_links_naming() {
        let svcs = [
            json!({"metadata": {"name": "my-service"}, "spec": {"clusterIP": "10.43.0.11",
                "ports": [{"name": "http", "port": 80, "protocol": "TCP"}, {"name": "dns-udp", "port": 53, "protocol": "UDP"}]}}),
            json!({"metadata": {"name": "headless"}, "spec": {"clusterIP": "None", "ports": [{"port": 80}]}}),
            json!({"metadata": {"name": "ext"}, "spec": {"type": "ExternalName", "externalName": "example.org"}}),
            json!({"metadata": {"name": "kubernetes", "namespace": "default"},
                "spec": {"clusterIP": "10.43.0.1", "ports": [{"name": "https", "port": 443}]}}),
        ];
        let env = service_env(&svcs);
        let get = |k: &str| env.iter().find(|(n, _)| n == k).map(|(_, v)| v.as_str());
        assert_eq!(get("MY_SERVICE_SERVICE_HOST"), Some("10.43.0.11"));
        assert_eq!(get("MY_SERVICE_SERVICE_PORT"), Some("80"));
        assert_eq!(get("MY_SERVICE_SERVICE_PORT_HTTP"), Some("80"));
        assert_eq!(get("MY_SERVICE_SERVICE_PORT_DNS_UDP"), Some("53"));
        assert_eq!(get("MY_SERVICE_PORT"), Some("tcp://10.43.0.11:80"));
        assert_eq!(get("MY_SERVICE_PORT_80_TCP"), Some("tcp://10.43.0.11:80"));
        assert_eq!(get("MY_SERVICE_PORT_80_TCP_PROTO"), Some("tcp"));
        assert_eq!(get("MY_SERVICE_PORT_80_TCP_PORT"), Some("80"));
        assert_eq!(get("MY_SERVICE_PORT_80_TCP_ADDR"), Some("10.43.0.11"));
        assert_eq!(get("MY_SERVICE_PORT_53_UDP"), Some("udp://10.43.0.11:53"));
        // Headless and ExternalName Services have no address to give.
        assert!(
            !env.iter()
                .any(|(n, _)| n.starts_with("HEADLESS") || n.starts_with("EXT_"))
        );
        // The API server's variables are the agent's own (set once, pointing where it chose).
        assert!(!env.iter().any(|(n, _)| n.starts_with("KUBERNETES_")));
    }
}
