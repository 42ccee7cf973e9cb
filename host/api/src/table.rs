//! Server-side printing: `meta.k8s.io/v1` Tables with the columns kubectl users know.

use serde_json::{Value, json};

use kedge_core::resources::Resource;

struct Col {
    name: &'static str,
    ty: &'static str,
    priority: u8,
}

const fn col(name: &'static str, ty: &'static str, priority: u8) -> Col {
    Col { name, ty, priority }
}

fn columns(kind: &str) -> Vec<Col> {
    match kind {
        "Pod" => vec![
            col("Name", "string", 0),
            col("Ready", "string", 0),
            col("Status", "string", 0),
            col("Restarts", "string", 0),
            col("Age", "string", 0),
            col("IP", "string", 1),
            col("Node", "string", 1),
            col("Nominated Node", "string", 1),
            col("Readiness Gates", "string", 1),
        ],
        "Deployment" => vec![
            col("Name", "string", 0),
            col("Ready", "string", 0),
            col("Up-to-date", "integer", 0),
            col("Available", "integer", 0),
            col("Age", "string", 0),
            col("Containers", "string", 1),
            col("Images", "string", 1),
            col("Selector", "string", 1),
        ],
        "ReplicaSet" | "ReplicationController" => vec![
            col("Name", "string", 0),
            col("Desired", "integer", 0),
            col("Current", "integer", 0),
            col("Ready", "integer", 0),
            col("Age", "string", 0),
            col("Containers", "string", 1),
            col("Images", "string", 1),
            col("Selector", "string", 1),
        ],
        "Node" => vec![
            col("Name", "string", 0),
            col("Status", "string", 0),
            col("Roles", "string", 0),
            col("Age", "string", 0),
            col("Version", "string", 0),
            col("Internal-IP", "string", 1),
            col("External-IP", "string", 1),
            col("OS-Image", "string", 1),
            col("Kernel-Version", "string", 1),
            col("Container-Runtime", "string", 1),
        ],
        "Namespace" => vec![
            col("Name", "string", 0),
            col("Status", "string", 0),
            col("Age", "string", 0),
        ],
        "Event" => vec![
            col("Last Seen", "string", 0),
            col("Type", "string", 0),
            col("Reason", "string", 0),
            col("Object", "string", 0),
            col("Message", "string", 0),
        ],
        "EndpointSlice" => vec![
            col("Name", "string", 0),
            col("AddressType", "string", 0),
            col("Ports", "string", 0),
            col("Endpoints", "string", 0),
            col("Age", "string", 0),
        ],
        "Plugin" => vec![
            col("Name", "string", 0),
            col("Role", "string", 0),
            col("Source", "string", 0),
            col("Digest", "string", 0),
            col("Phase", "string", 0),
            col("Age", "string", 0),
            col("Ready", "string", 1),
            col("Message", "string", 1),
        ],
        "Lease" => vec![
            col("Name", "string", 0),
            col("Holder", "string", 0),
            col("Age", "string", 0),
        ],
        "Secret" => vec![
            col("Name", "string", 0),
            col("Type", "string", 0),
            col("Data", "integer", 0),
            col("Age", "string", 0),
        ],
        "ConfigMap" => vec![
            col("Name", "string", 0),
            col("Data", "integer", 0),
            col("Age", "string", 0),
        ],
        "Service" => vec![
            col("Name", "string", 0),
            col("Type", "string", 0),
            col("Cluster-IP", "string", 0),
            col("External-IP", "string", 0),
            col("Port(s)", "string", 0),
            col("Age", "string", 0),
            col("Selector", "string", 1),
        ],
        "Endpoints" => vec![
            col("Name", "string", 0),
            col("Endpoints", "string", 0),
            col("Age", "string", 0),
        ],
        "ServiceAccount" => vec![
            col("Name", "string", 0),
            col("Secrets", "string", 0),
            col("Age", "string", 0),
        ],
        "StatefulSet" => vec![
            col("Name", "string", 0),
            col("Ready", "string", 0),
            col("Age", "string", 0),
            col("Containers", "string", 1),
            col("Images", "string", 1),
        ],
        "DaemonSet" => vec![
            col("Name", "string", 0),
            col("Desired", "integer", 0),
            col("Current", "integer", 0),
            col("Ready", "integer", 0),
            col("Up-to-date", "integer", 0),
            col("Available", "integer", 0),
            col("Node Selector", "string", 0),
            col("Age", "string", 0),
            col("Containers", "string", 1),
            col("Images", "string", 1),
            col("Selector", "string", 1),
        ],
        "ControllerRevision" => vec![
            col("Name", "string", 0),
            col("Controller", "string", 0),
            col("Revision", "integer", 0),
            col("Age", "string", 0),
        ],
        "Job" => vec![
            col("Name", "string", 0),
            col("Status", "string", 0),
            col("Completions", "string", 0),
            col("Duration", "string", 0),
            col("Age", "string", 0),
            col("Containers", "string", 1),
            col("Images", "string", 1),
            col("Selector", "string", 1),
        ],
        "CronJob" => vec![
            col("Name", "string", 0),
            col("Schedule", "string", 0),
            col("Timezone", "string", 0),
            col("Suspend", "boolean", 0),
            col("Active", "integer", 0),
            col("Last Schedule", "string", 0),
            col("Age", "string", 0),
            col("Containers", "string", 1),
            col("Images", "string", 1),
            col("Selector", "string", 1),
        ],
        "Role" | "ClusterRole" => vec![col("Name", "string", 0), col("Created At", "string", 0)],
        "RoleBinding" | "ClusterRoleBinding" => vec![
            col("Name", "string", 0),
            col("Role", "string", 0),
            col("Age", "string", 0),
            col("Users", "string", 1),
            col("Groups", "string", 1),
            col("ServiceAccounts", "string", 1),
        ],
        _ => vec![col("Name", "string", 0), col("Age", "string", 0)],
    }
}

/// `labels.FormatLabels`: `k=v,...` sorted by key, `<none>` when empty.
fn format_labels(m: Option<&Value>) -> String {
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
fn format_selector(sel: Option<&Value>) -> String {
    match sel.map(super::ops::selector_string) {
        Some(s) if !s.is_empty() => s,
        _ => "<none>".into(),
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

/// ENDPOINTS: up to three `ip:port`, then ` + N more...`.
fn format_endpoints(o: &Value) -> String {
    let subsets = o
        .get("subsets")
        .and_then(Value::as_array)
        .cloned()
        .unwrap_or_default();
    if subsets.is_empty() {
        return "<none>".into();
    }
    const MAX: usize = 3;
    let (mut list, mut count, mut more) = (Vec::new(), 0usize, false);
    for ss in &subsets {
        let addrs: Vec<&str> = ss
            .get("addresses")
            .and_then(Value::as_array)
            .into_iter()
            .flatten()
            .map(|a| s(a, "/ip"))
            .collect();
        let ports: Vec<i64> = ss
            .get("ports")
            .and_then(Value::as_array)
            .into_iter()
            .flatten()
            .map(|p| i(p, "/port"))
            .collect();
        if ports.is_empty() {
            count += addrs.len();
            for a in &addrs {
                if list.len() == MAX {
                    more = true;
                    break;
                }
                list.push(a.to_string());
            }
            continue;
        }
        for port in ports {
            count += addrs.len();
            for a in &addrs {
                if list.len() == MAX {
                    more = true;
                    break;
                }
                list.push(if a.contains(':') {
                    format!("[{a}]:{port}")
                } else {
                    format!("{a}:{port}")
                });
            }
        }
    }
    let ret = list.join(",");
    if more {
        format!("{ret} + {} more...", count - MAX)
    } else {
        ret
    }
}

fn has_condition(o: &Value, kind: &str) -> bool {
    o.pointer("/status/conditions")
        .and_then(Value::as_array)
        .into_iter()
        .flatten()
        .any(|c| s(c, "/type") == kind && s(c, "/status") == "True")
}

fn parse_time(o: &Value, ptr: &str) -> Option<chrono::DateTime<chrono::Utc>> {
    chrono::DateTime::parse_from_rfc3339(s(o, ptr))
        .ok()
        .map(|t| t.with_timezone(&chrono::Utc))
}

fn job_cells(o: &Value, now: chrono::DateTime<chrono::Utc>) -> (String, String, String) {
    let status = if has_condition(o, "Complete") {
        "Complete"
    } else if has_condition(o, "Failed") {
        "Failed"
    } else if o.pointer("/metadata/deletionTimestamp").is_some() {
        "Terminating"
    } else if has_condition(o, "Suspended") {
        "Suspended"
    } else if has_condition(o, "FailureTarget") {
        "FailureTarget"
    } else if has_condition(o, "SuccessCriteriaMet") {
        "SuccessCriteriaMet"
    } else {
        "Running"
    };
    let succeeded = i(o, "/status/succeeded");
    let completions = match (
        o.pointer("/spec/completions").and_then(Value::as_i64),
        o.pointer("/spec/parallelism").and_then(Value::as_i64),
    ) {
        (Some(c), _) => format!("{succeeded}/{c}"),
        (None, Some(p)) if p > 1 => format!("{succeeded}/1 of {p}"),
        _ => format!("{succeeded}/1"),
    };
    let duration = match (
        parse_time(o, "/status/startTime"),
        parse_time(o, "/status/completionTime"),
    ) {
        (None, _) => String::new(),
        (Some(start), None) => human_age((now - start).num_seconds()),
        (Some(start), Some(end)) => human_age((end - start).num_seconds()),
    };
    (status.into(), completions, duration)
}

fn s<'a>(o: &'a Value, ptr: &str) -> &'a str {
    o.pointer(ptr).and_then(Value::as_str).unwrap_or_default()
}

fn i(o: &Value, ptr: &str) -> i64 {
    o.pointer(ptr).and_then(Value::as_i64).unwrap_or(0)
}

/// kubectl's short human durations: 45s, 3m2s, 5h, 3d4h.
pub fn human_age(secs: i64) -> String {
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

fn age(o: &Value, ptr: &str, now: chrono::DateTime<chrono::Utc>) -> String {
    match chrono::DateTime::parse_from_rfc3339(s(o, ptr)) {
        Ok(t) => human_age((now - t.with_timezone(&chrono::Utc)).num_seconds()),
        Err(_) => "<unknown>".into(),
    }
}

/// A plain label-map selector (ReplicationController) as `k=v,k2=v2`.
pub fn map_selector_string(sel: &Value) -> String {
    sel.as_object()
        .into_iter()
        .flatten()
        .map(|(k, v)| format!("{k}={}", v.as_str().unwrap_or_default()))
        .collect::<Vec<_>>()
        .join(",")
}

fn containers_and_images(o: &Value, ptr: &str) -> (String, String) {
    let cs = o
        .pointer(ptr)
        .and_then(Value::as_array)
        .cloned()
        .unwrap_or_default();
    let names: Vec<&str> = cs.iter().map(|c| s(c, "/name")).collect();
    let images: Vec<&str> = cs.iter().map(|c| s(c, "/image")).collect();
    (names.join(","), images.join(","))
}

/// The STATUS column of `kubectl get pods`: a waiting or terminated reason beats the phase.
pub fn pod_status(p: &Value) -> String {
    if p.pointer("/metadata/deletionTimestamp").is_some() {
        return "Terminating".into();
    }
    let mut reason = s(p, "/status/phase").to_string();
    if let Some(r) = p.pointer("/status/reason").and_then(Value::as_str) {
        reason = r.to_string();
    }
    let statuses = p
        .pointer("/status/containerStatuses")
        .and_then(Value::as_array)
        .cloned()
        .unwrap_or_default();
    for cs in statuses.iter().rev() {
        if let Some(r) = cs.pointer("/state/waiting/reason").and_then(Value::as_str) {
            reason = r.to_string();
        } else if let Some(t) = cs.pointer("/state/terminated") {
            reason = match t.get("reason").and_then(Value::as_str) {
                Some(r) => r.to_string(),
                None => format!("ExitCode:{}", i(t, "/exitCode")),
            };
        }
    }
    if reason.is_empty() {
        "Unknown".into()
    } else {
        reason
    }
}

fn cells(kind: &str, o: &Value, now: chrono::DateTime<chrono::Utc>) -> Vec<Value> {
    let name = json!(s(o, "/metadata/name"));
    let created = "/metadata/creationTimestamp";
    match kind {
        "Pod" => {
            let total = o
                .pointer("/spec/containers")
                .and_then(Value::as_array)
                .map_or(0, Vec::len);
            let statuses = o
                .pointer("/status/containerStatuses")
                .and_then(Value::as_array)
                .cloned()
                .unwrap_or_default();
            let ready = statuses
                .iter()
                .filter(|c| c.get("ready").and_then(Value::as_bool) == Some(true))
                .count();
            let restarts: i64 = statuses.iter().map(|c| i(c, "/restartCount")).sum();
            let ip = s(o, "/status/podIP");
            let node = s(o, "/spec/nodeName");
            vec![
                name,
                json!(format!("{ready}/{total}")),
                json!(pod_status(o)),
                json!(restarts.to_string()),
                json!(age(o, created, now)),
                json!(if ip.is_empty() { "<none>" } else { ip }),
                json!(if node.is_empty() { "<none>" } else { node }),
                json!("<none>"),
                json!("<none>"),
            ]
        }
        "Deployment" => {
            let (c, im) = containers_and_images(o, "/spec/template/spec/containers");
            let sel = o
                .pointer("/spec/selector")
                .map(super::ops::selector_string)
                .unwrap_or_default();
            vec![
                name,
                json!(format!(
                    "{}/{}",
                    i(o, "/status/readyReplicas"),
                    i(o, "/spec/replicas")
                )),
                json!(i(o, "/status/updatedReplicas")),
                json!(i(o, "/status/availableReplicas")),
                json!(age(o, created, now)),
                json!(c),
                json!(im),
                json!(sel),
            ]
        }
        "ReplicaSet" | "ReplicationController" => {
            let (c, im) = containers_and_images(o, "/spec/template/spec/containers");
            let sel = match o.pointer("/spec/selector") {
                Some(s) if kind == "ReplicationController" => map_selector_string(s),
                Some(s) => super::ops::selector_string(s),
                None => String::new(),
            };
            vec![
                name,
                json!(i(o, "/spec/replicas")),
                json!(i(o, "/status/replicas")),
                json!(i(o, "/status/readyReplicas")),
                json!(age(o, created, now)),
                json!(c),
                json!(im),
                json!(sel),
            ]
        }
        "Node" => {
            let conds = o
                .pointer("/status/conditions")
                .and_then(Value::as_array)
                .cloned()
                .unwrap_or_default();
            let ready = conds
                .iter()
                .find(|c| s(c, "/type") == "Ready")
                .map(|c| s(c, "/status").to_string());
            let mut status = match ready.as_deref() {
                Some("True") => "Ready".to_string(),
                Some("False") => "NotReady".to_string(),
                _ => "Unknown".to_string(),
            };
            if o.pointer("/spec/unschedulable").and_then(Value::as_bool) == Some(true) {
                status.push_str(",SchedulingDisabled");
            }
            let mut roles: Vec<String> = o
                .pointer("/metadata/labels")
                .and_then(Value::as_object)
                .map(|l| {
                    l.keys()
                        .filter_map(|k| k.strip_prefix("node-role.kubernetes.io/"))
                        .map(String::from)
                        .collect()
                })
                .unwrap_or_default();
            roles.sort();
            let addr = |t: &str| {
                o.pointer("/status/addresses")
                    .and_then(Value::as_array)
                    .and_then(|a| a.iter().find(|x| s(x, "/type") == t))
                    .map(|x| s(x, "/address").to_string())
                    .unwrap_or_else(|| "<none>".into())
            };
            vec![
                name,
                json!(status),
                json!(if roles.is_empty() {
                    "<none>".into()
                } else {
                    roles.join(",")
                }),
                json!(age(o, created, now)),
                json!(s(o, "/status/nodeInfo/kubeletVersion")),
                json!(addr("InternalIP")),
                json!(addr("ExternalIP")),
                json!(s(o, "/status/nodeInfo/osImage")),
                json!(s(o, "/status/nodeInfo/kernelVersion")),
                json!(s(o, "/status/nodeInfo/containerRuntimeVersion")),
            ]
        }
        "Namespace" => vec![
            name,
            json!(s(o, "/status/phase")),
            json!(age(o, created, now)),
        ],
        "Event" => {
            let last = if o
                .pointer("/lastTimestamp")
                .and_then(Value::as_str)
                .is_some()
            {
                age(o, "/lastTimestamp", now)
            } else {
                age(o, "/eventTime", now)
            };
            vec![
                json!(last),
                json!(s(o, "/type")),
                json!(s(o, "/reason")),
                json!(format!(
                    "{}/{}",
                    s(o, "/involvedObject/kind").to_lowercase(),
                    s(o, "/involvedObject/name")
                )),
                json!(s(o, "/message")),
            ]
        }
        "EndpointSlice" => {
            let ports: Vec<String> = o
                .get("ports")
                .and_then(Value::as_array)
                .into_iter()
                .flatten()
                .map(|p| i(p, "/port").to_string())
                .collect();
            let addrs: Vec<String> = o
                .get("endpoints")
                .and_then(Value::as_array)
                .into_iter()
                .flatten()
                .flat_map(|e| {
                    e.get("addresses")
                        .and_then(Value::as_array)
                        .cloned()
                        .unwrap_or_default()
                })
                .filter_map(|a| a.as_str().map(str::to_string))
                .collect();
            // kubectl prints at most three addresses, then "+ N more...".
            let shown = if addrs.is_empty() {
                "<unset>".to_string()
            } else if addrs.len() > 3 {
                format!("{} + {} more...", addrs[..3].join(","), addrs.len() - 3)
            } else {
                addrs.join(",")
            };
            vec![
                name,
                json!(s(o, "/addressType")),
                json!(if ports.is_empty() {
                    "<unset>".to_string()
                } else {
                    ports.join(",")
                }),
                json!(shown),
                json!(age(o, created, now)),
            ]
        }
        "Plugin" => {
            let ready = o
                .pointer("/status/conditions")
                .and_then(Value::as_array)
                .and_then(|cs| cs.iter().find(|c| c["type"] == "Ready"));
            let source = serde_json::from_value::<crate::plugin_kind::PluginSource>(
                o.pointer("/spec/source").cloned().unwrap_or(Value::Null),
            )
            .map(|s| s.describe())
            .unwrap_or_default();
            let digest = s(o, "/status/activeDigest");
            let short = digest
                .strip_prefix("sha256:")
                .map_or(digest, |h| &h[..h.len().min(12)]);
            vec![
                name,
                json!(s(o, "/spec/role")),
                json!(source),
                json!(short),
                json!(s(o, "/status/phase")),
                json!(age(o, created, now)),
                json!(ready.map_or(String::new(), |c| format!(
                    "{} ({})",
                    c["status"].as_str().unwrap_or_default(),
                    c["reason"].as_str().unwrap_or_default()
                ))),
                json!(
                    ready
                        .and_then(|c| c["message"].as_str())
                        .unwrap_or_default()
                ),
            ]
        }
        "Lease" => vec![
            name,
            json!(s(o, "/spec/holderIdentity")),
            json!(age(o, created, now)),
        ],
        "Secret" => vec![
            name,
            json!(s(o, "/type")),
            json!(
                o.get("data")
                    .and_then(Value::as_object)
                    .map_or(0, |d| d.len())
            ),
            json!(age(o, created, now)),
        ],
        "ConfigMap" => vec![
            name,
            json!(
                o.get("data")
                    .and_then(Value::as_object)
                    .map_or(0, |d| d.len())
                    + o.get("binaryData")
                        .and_then(Value::as_object)
                        .map_or(0, |d| d.len())
            ),
            json!(age(o, created, now)),
        ],
        "Service" => {
            let ip = s(o, "/spec/clusterIP");
            let ty = s(o, "/spec/type");
            vec![
                name,
                json!(if ty.is_empty() { "ClusterIP" } else { ty }),
                json!(if ip.is_empty() { "<none>" } else { ip }),
                json!(service_external_ip(o)),
                json!(service_ports(o)),
                json!(age(o, created, now)),
                json!(format_labels(o.pointer("/spec/selector"))),
            ]
        }
        "Endpoints" => vec![
            name,
            json!(format_endpoints(o)),
            json!(age(o, created, now)),
        ],
        "ServiceAccount" => vec![
            name,
            json!(
                o.get("secrets")
                    .and_then(Value::as_array)
                    .map_or(0, Vec::len)
            ),
            json!(age(o, created, now)),
        ],
        "StatefulSet" => {
            let (c, im) = containers_and_images(o, "/spec/template/spec/containers");
            vec![
                name,
                json!(format!(
                    "{}/{}",
                    i(o, "/status/readyReplicas"),
                    i(o, "/spec/replicas")
                )),
                json!(age(o, created, now)),
                json!(c),
                json!(im),
            ]
        }
        "DaemonSet" => {
            let (c, im) = containers_and_images(o, "/spec/template/spec/containers");
            vec![
                name,
                json!(i(o, "/status/desiredNumberScheduled")),
                json!(i(o, "/status/currentNumberScheduled")),
                json!(i(o, "/status/numberReady")),
                json!(i(o, "/status/updatedNumberScheduled")),
                json!(i(o, "/status/numberAvailable")),
                json!(format_labels(o.pointer("/spec/template/spec/nodeSelector"))),
                json!(age(o, created, now)),
                json!(c),
                json!(im),
                json!(format_selector(o.pointer("/spec/selector"))),
            ]
        }
        "ControllerRevision" => {
            let controller = o
                .pointer("/metadata/ownerReferences")
                .and_then(Value::as_array)
                .and_then(|refs| {
                    refs.iter()
                        .find(|r| r.get("controller").and_then(Value::as_bool) == Some(true))
                })
                .map(|r| {
                    let group = s(r, "/apiVersion").rsplit_once('/').map_or("", |(g, _)| g);
                    let kind = s(r, "/kind").to_lowercase();
                    let gk = if group.is_empty() {
                        kind
                    } else {
                        format!("{kind}.{group}")
                    };
                    format!("{gk}/{}", s(r, "/name"))
                })
                .unwrap_or_else(|| "<none>".into());
            vec![
                name,
                json!(controller),
                json!(i(o, "/revision")),
                json!(age(o, created, now)),
            ]
        }
        "Job" => {
            let (status, completions, duration) = job_cells(o, now);
            let (c, im) = containers_and_images(o, "/spec/template/spec/containers");
            vec![
                name,
                json!(status),
                json!(completions),
                json!(duration),
                json!(age(o, created, now)),
                json!(c),
                json!(im),
                json!(format_selector(o.pointer("/spec/selector"))),
            ]
        }
        "CronJob" => {
            let (c, im) =
                containers_and_images(o, "/spec/jobTemplate/spec/template/spec/containers");
            let tz = s(o, "/spec/timeZone");
            let suspend = match o.pointer("/spec/suspend").and_then(Value::as_bool) {
                None => "<unset>",
                Some(true) => "True",
                Some(false) => "False",
            };
            let last = if s(o, "/status/lastScheduleTime").is_empty() {
                "<none>".to_string()
            } else {
                age(o, "/status/lastScheduleTime", now)
            };
            vec![
                name,
                json!(s(o, "/spec/schedule")),
                json!(if tz.is_empty() { "<none>" } else { tz }),
                json!(suspend),
                json!(
                    o.pointer("/status/active")
                        .and_then(Value::as_array)
                        .map_or(0, Vec::len)
                ),
                json!(last),
                json!(age(o, created, now)),
                json!(c),
                json!(im),
                json!(format_selector(
                    o.pointer("/spec/jobTemplate/spec/selector")
                )),
            ]
        }
        "Role" | "ClusterRole" => vec![name, json!(s(o, created))],
        "RoleBinding" | "ClusterRoleBinding" => {
            // kubectl's printer: subjects of each kind joined by ", ", service accounts as
            // namespace/name.
            let subjects = |kind: &str| -> String {
                o.get("subjects")
                    .and_then(Value::as_array)
                    .into_iter()
                    .flatten()
                    .filter(|x| x["kind"] == kind)
                    .map(|x| match (kind, s(x, "/namespace")) {
                        ("ServiceAccount", ns) => format!("{ns}/{}", s(x, "/name")),
                        _ => s(x, "/name").to_string(),
                    })
                    .collect::<Vec<_>>()
                    .join(", ")
            };
            vec![
                name,
                json!(format!(
                    "{}/{}",
                    s(o, "/roleRef/kind"),
                    s(o, "/roleRef/name")
                )),
                json!(age(o, created, now)),
                json!(subjects("User")),
                json!(subjects("Group")),
                json!(subjects("ServiceAccount")),
            ]
        }
        _ => vec![name, json!(age(o, created, now))],
    }
}

/// A Table of `items`; `list_meta` is the list's metadata (resourceVersion, continue).
pub fn table(
    res: &Resource,
    items: &[Value],
    list_meta: Value,
    now: chrono::DateTime<chrono::Utc>,
) -> Value {
    let defs: Vec<Value> = columns(res.kind)
        .iter()
        .map(|c| {
            json!({"name": c.name, "type": c.ty, "format": if c.name == "Name" { "name" } else { "" },
                "description": "", "priority": c.priority})
        })
        .collect();
    let rows: Vec<Value> = items
        .iter()
        .map(|o| {
            json!({
                "cells": cells(res.kind, o, now),
                "object": {
                    "kind": "PartialObjectMetadata",
                    "apiVersion": "meta.k8s.io/v1",
                    "metadata": o.get("metadata").cloned().unwrap_or(json!({})),
                },
            })
        })
        .collect();
    json!({
        "kind": "Table",
        "apiVersion": "meta.k8s.io/v1",
        "metadata": list_meta,
        "columnDefinitions": defs,
        "rows": rows,
    })
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

    fn row(kind: &str, o: &Value) -> Vec<Value> {
        let now = chrono::DateTime::parse_from_rfc3339("2025-01-01T00:10:00Z")
            .unwrap()
            .with_timezone(&chrono::Utc);
        let c = cells(kind, o, now);
        assert_eq!(c.len(), columns(kind).len(), "{kind}: one cell per column");
        c
    }

    #[test]
    fn service_columns() {
        let t = "2025-01-01T00:00:00Z";
        let svc = json!({"metadata": {"name": "web", "creationTimestamp": t},
            "spec": {"type": "NodePort", "clusterIP": "10.43.1.2", "selector": {"b": "2", "a": "1"},
                "ports": [{"port": 80, "nodePort": 30080, "protocol": "TCP"}, {"port": 53, "protocol": "UDP"}]}});
        assert_eq!(
            row("Service", &svc),
            vec![
                json!("web"),
                json!("NodePort"),
                json!("10.43.1.2"),
                json!("<none>"),
                json!("80:30080/TCP,53/UDP"),
                json!("10m"),
                json!("a=1,b=2")
            ]
        );
        let lb = json!({"spec": {"type": "LoadBalancer", "clusterIP": "None"}});
        let r = row("Service", &lb);
        assert_eq!(
            (&r[2], &r[3], &r[4]),
            (&json!("None"), &json!("<pending>"), &json!("<none>"))
        );
    }

    #[test]
    fn endpoints_column() {
        let ep = json!({"subsets": [{"addresses": [{"ip": "1.1.1.1"}, {"ip": "2.2.2.2"}],
            "ports": [{"port": 80}, {"port": 81}]}]});
        assert_eq!(
            row("Endpoints", &ep)[1],
            "1.1.1.1:80,2.2.2.2:80,1.1.1.1:81 + 1 more..."
        );
        assert_eq!(row("Endpoints", &json!({}))[1], "<none>");
    }

    #[test]
    fn job_and_cronjob_columns() {
        let job = json!({"spec": {"completions": 3, "parallelism": 1},
            "status": {"succeeded": 1, "startTime": "2025-01-01T00:00:00Z",
                "completionTime": "2025-01-01T00:00:30Z",
                "conditions": [{"type": "Complete", "status": "True"}]}});
        let r = row("Job", &job);
        assert_eq!(
            (&r[1], &r[2], &r[3]),
            (&json!("Complete"), &json!("1/3"), &json!("30s"))
        );
        let r = row("Job", &json!({"spec": {"parallelism": 2}}));
        assert_eq!(
            (&r[1], &r[2], &r[3]),
            (&json!("Running"), &json!("0/1 of 2"), &json!(""))
        );
        let cj = json!({"spec": {"schedule": "* * * * *", "suspend": false}});
        let r = row("CronJob", &cj);
        assert_eq!(
            r[1..6].to_vec(),
            vec![
                json!("* * * * *"),
                json!("<none>"),
                json!("False"),
                json!(0),
                json!("<none>")
            ]
        );
    }

    #[test]
    fn controller_revision_and_daemonset_columns() {
        let cr = json!({"revision": 2, "metadata": {"ownerReferences": [
            {"apiVersion": "apps/v1", "kind": "StatefulSet", "name": "web", "controller": true}]}});
        assert_eq!(row("ControllerRevision", &cr)[1], "statefulset.apps/web");
        let ds = json!({"spec": {"template": {"spec": {"nodeSelector": {"disk": "ssd"}}}}});
        assert_eq!(row("DaemonSet", &ds)[6], "disk=ssd");
        row("StatefulSet", &json!({}));
        row("ServiceAccount", &json!({}));
    }

    #[test]
    fn pod_status_prefers_container_reasons() {
        let p = json!({"status": {"phase": "Pending", "containerStatuses": [
            {"state": {"waiting": {"reason": "ImagePullBackOff"}}}]}});
        assert_eq!(pod_status(&p), "ImagePullBackOff");
        let p = json!({"metadata": {"deletionTimestamp": "x"}, "status": {"phase": "Running"}});
        assert_eq!(pod_status(&p), "Terminating");
    }
}
