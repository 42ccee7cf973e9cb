//! Per-kind defaulting and validation, applied to every write whatever its source (kubectl,
//! client libraries, agents, plugins) — the same path for all callers.

use serde_json::{Map, Value, json};

use super::error::Cause;
use kedge_core::meta;
use kedge_core::resources::Resource;
use kedge_core::selector;

/// `stringData` is write-only, as in kube-apiserver: each entry becomes the base64 `data`
/// entry of that key (replacing one given there) and `stringData` is not stored. Left as it is
/// when a value is not a string, for validation to refuse.
fn fold_string_data(obj: &mut Value) {
    use base64::Engine as _;
    let Some(Value::Object(strings)) = obj.get("stringData") else {
        return;
    };
    if !strings.values().all(Value::is_string) {
        return;
    }
    let encoded: Vec<(String, Value)> = strings
        .iter()
        .map(|(k, v)| {
            let text = v.as_str().unwrap_or_default();
            let b64 = base64::engine::general_purpose::STANDARD.encode(text);
            (k.clone(), Value::String(b64))
        })
        .collect();
    if let Some(m) = obj.as_object_mut() {
        m.remove("stringData");
    }
    let data = ensure_object(obj, "data");
    for (k, v) in encoded {
        data.insert(k, v);
    }
}

/// kube-apiserver's limit on the data of one Secret or ConfigMap.
const MAX_DATA_BYTES: usize = 1024 * 1024;

/// Base64 as Go's decoder reads it for a `[]byte` field: line breaks ignored, non-zero
/// trailing bits tolerated (`base64 FILE` output pasted into YAML is accepted).
fn decode_base64_leniently(s: &str) -> Option<Vec<u8>> {
    use base64::Engine as _;
    use base64::engine::{GeneralPurpose, GeneralPurposeConfig};
    const LENIENT: GeneralPurpose = GeneralPurpose::new(
        &base64::alphabet::STANDARD,
        GeneralPurposeConfig::new().with_decode_allow_trailing_bits(true),
    );
    let compact: String = s.chars().filter(|c| !matches!(c, '\r' | '\n')).collect();
    LENIENT.decode(compact).ok()
}

/// The bytes fields of Secrets (`data`) and ConfigMaps (`binaryData`) are stored as kube
/// stores them after its decode/encode round trip: canonical base64. A value that is not
/// base64 is left for validation to refuse; a `null` map is no map.
fn normalize_data(obj: &mut Value, bytes_field: &str) {
    use base64::Engine as _;
    if let Some(m) = obj.as_object_mut() {
        for f in ["data", "stringData", "binaryData"] {
            if m.get(f).is_some_and(Value::is_null) {
                m.remove(f);
            }
        }
    }
    if let Some(Value::Object(map)) = obj.get_mut(bytes_field) {
        for v in map.values_mut() {
            if let Some(bytes) = v.as_str().and_then(decode_base64_leniently) {
                *v = Value::String(base64::engine::general_purpose::STANDARD.encode(bytes));
            }
        }
    }
}

/// Checks the keys of a ConfigMap's or Secret's map `field` (file names in a volume, hence
/// kube's `IsConfigMapKey` rules) and its values (strings; base64 if `bytes`). Returns the
/// size of the values, in bytes, which is what kube's 1 MiB limit counts.
fn validate_data(obj: &Value, field: &str, bytes: bool, causes: &mut Vec<Cause>) -> usize {
    use base64::Engine as _;
    let Some(map) = obj.get(field) else { return 0 };
    let Some(map) = map.as_object() else {
        causes.push(Cause::invalid(field, "", "must be a map of strings"));
        return 0;
    };
    let mut size = 0;
    for (k, v) in map {
        let at = format!("{field}[{k}]");
        let why = if k.is_empty() || k.len() > 253 {
            Some("must be no more than 253 characters and not empty")
        } else if !k
            .bytes()
            .all(|b| b.is_ascii_alphanumeric() || matches!(b, b'-' | b'_' | b'.'))
        {
            Some(
                "a valid config key must consist of alphanumeric characters, '-', '_' or '.' \
                 (e.g. 'key.name',  or 'KEY_NAME',  or 'key-name', regex used for validation \
                 is '[-._a-zA-Z0-9]+')",
            )
        } else if k == "." || k == ".." || k.starts_with("..") {
            Some("must not be '.' or '..' or start with '..'")
        } else {
            None
        };
        if let Some(why) = why {
            causes.push(Cause::invalid(at.clone(), k, why));
        }
        match v.as_str() {
            Some(s) if !bytes => size += s.len(),
            Some(s) => match base64::engine::general_purpose::STANDARD.decode(s) {
                Ok(b) => size += b.len(),
                Err(_) => causes.push(Cause::invalid(at, "", "must be base64-encoded bytes")),
            },
            None => causes.push(Cause::invalid(at, "", "must be a string")),
        }
    }
    size
}

/// The keys each well-known Secret type must carry, as kube-apiserver's `ValidateSecret`
/// checks them: consumers (kubelet's image pulls, ingress controllers, the token controller)
/// rely on them being there.
fn validate_secret_type(obj: &Value, causes: &mut Vec<Cause>) {
    let data = obj.get("data").and_then(Value::as_object);
    let has = |k: &str| data.is_some_and(|d| d.contains_key(k));
    // A value that is not base64 is refused by `validate_data` already.
    let bytes = |k: &str| {
        data.and_then(|d| d.get(k))
            .and_then(Value::as_str)
            .and_then(decode_base64_leniently)
    };
    let required = |k: &str| Cause::required(format!("data[{k}]"));
    match obj.get("type").and_then(Value::as_str).unwrap_or_default() {
        // The token controller needs to know whose token to put in it.
        crate::tokens::SECRET_TYPE
            if obj
                .pointer("/metadata/annotations")
                .and_then(|a| a.get(crate::tokens::SA_NAME_ANNOTATION))
                .and_then(Value::as_str)
                .is_none_or(str::is_empty) =>
        {
            causes.push(Cause::required(format!(
                "metadata.annotations[{}]",
                crate::tokens::SA_NAME_ANNOTATION
            )));
        }
        t @ ("kubernetes.io/dockercfg" | "kubernetes.io/dockerconfigjson") => {
            let key = if t == "kubernetes.io/dockercfg" {
                ".dockercfg"
            } else {
                ".dockerconfigjson"
            };
            if !has(key) {
                causes.push(required(key));
            } else if let Some(why) = bytes(key).and_then(|b| json_object_error(&b)) {
                causes.push(Cause::invalid(
                    format!("data[{key}]"),
                    "<secret contents redacted>",
                    why,
                ));
            }
        }
        // Either may be empty, but one must be there.
        "kubernetes.io/basic-auth" if !has("username") && !has("password") => {
            causes.push(required("username"));
            causes.push(required("password"));
        }
        "kubernetes.io/ssh-auth" if bytes("ssh-privatekey").is_none_or(|b| b.is_empty()) => {
            causes.push(required("ssh-privatekey"));
        }
        "kubernetes.io/tls" => {
            for k in ["tls.crt", "tls.key"] {
                if !has(k) {
                    causes.push(required(k));
                }
            }
        }
        _ => {}
    }
}

/// Why a docker config (`.dockercfg`, `.dockerconfigjson`) is not a JSON object, or `None`
/// when it is one (or `null`, which Go's `json.Unmarshal` into a map takes as no map).
fn json_object_error(b: &[u8]) -> Option<String> {
    serde_json::from_slice::<Option<serde_json::Map<String, Value>>>(b)
        .err()
        .map(|e| format!("not a JSON object: {e}"))
}

/// Fills in what Kubernetes defaults on create and update.
pub fn default(res: &Resource, obj: &mut Value) {
    match res.kind {
        "Secret" => {
            // kubectl create secret generic sends an empty type; kube-apiserver stores Opaque.
            if obj
                .get("type")
                .and_then(Value::as_str)
                .is_none_or(str::is_empty)
            {
                obj["type"] = json!("Opaque");
            }
            normalize_data(obj, "data");
            fold_string_data(obj);
        }
        "ConfigMap" => normalize_data(obj, "binaryData"),
        "Pod" => {
            if let Some(spec) = obj.get_mut("spec") {
                default_pod_spec(spec);
                requests_from_limits(spec);
            }
        }
        "RoleBinding" | "ClusterRoleBinding" => super::rbac::default_subjects(obj),
        "Deployment" => {
            let spec = ensure_object(obj, "spec");
            spec.entry("replicas").or_insert(json!(1));
            spec.entry("revisionHistoryLimit").or_insert(json!(10));
            spec.entry("progressDeadlineSeconds").or_insert(json!(600));
            let strategy = spec
                .entry("strategy")
                .or_insert_with(|| json!({"type": "RollingUpdate"}));
            if strategy.get("type").and_then(Value::as_str) == Some("RollingUpdate")
                && strategy.get("rollingUpdate").is_none()
            {
                strategy["rollingUpdate"] = json!({"maxSurge": "25%", "maxUnavailable": "25%"});
            }
            if let Some(pod) = obj.pointer_mut("/spec/template/spec") {
                default_pod_spec(pod);
            }
            // kubectl rollout undo patches /metadata/annotations, which must exist.
            ensure_object(ensure_object_value(obj, "metadata"), "annotations");
        }
        "ReplicationController" => {
            // SetDefaults_ReplicationController: selector and labels from the template.
            let template_labels = obj.pointer("/spec/template/metadata/labels").cloned();
            if let Some(tl) =
                template_labels.filter(|l| l.as_object().is_some_and(|m| !m.is_empty()))
            {
                let spec = ensure_object(obj, "spec");
                if spec
                    .get("selector")
                    .and_then(Value::as_object)
                    .is_none_or(|m| m.is_empty())
                {
                    spec.insert("selector".into(), tl.clone());
                }
                let m = ensure_object(obj, "metadata");
                if m.get("labels")
                    .and_then(Value::as_object)
                    .is_none_or(|l| l.is_empty())
                {
                    m.insert("labels".into(), tl);
                }
            }
            ensure_object(obj, "spec")
                .entry("replicas")
                .or_insert(json!(1));
            if let Some(pod) = obj.pointer_mut("/spec/template/spec") {
                default_pod_spec(pod);
            }
        }
        "ReplicaSet" => {
            ensure_object(obj, "spec")
                .entry("replicas")
                .or_insert(json!(1));
            if let Some(pod) = obj.pointer_mut("/spec/template/spec") {
                default_pod_spec(pod);
            }
        }
        "StatefulSet" => {
            let spec = ensure_object(obj, "spec");
            spec.entry("replicas").or_insert(json!(1));
            spec.entry("podManagementPolicy")
                .or_insert(json!("OrderedReady"));
            spec.entry("revisionHistoryLimit").or_insert(json!(10));
            let strategy = spec
                .entry("updateStrategy")
                .or_insert_with(|| json!({"type": "RollingUpdate"}));
            if let Some(st) = strategy.as_object_mut() {
                st.entry("type").or_insert(json!("RollingUpdate"));
                if st.get("type").and_then(Value::as_str) == Some("RollingUpdate") {
                    let ru = st.entry("rollingUpdate").or_insert_with(|| json!({}));
                    if let Some(ru) = ru.as_object_mut() {
                        ru.entry("partition").or_insert(json!(0));
                    }
                }
            }
            let retention = spec
                .entry("persistentVolumeClaimRetentionPolicy")
                .or_insert_with(|| json!({}));
            if let Some(r) = retention.as_object_mut() {
                r.entry("whenDeleted").or_insert(json!("Retain"));
                r.entry("whenScaled").or_insert(json!("Retain"));
            }
            if let Some(Value::Array(vcts)) = spec.get_mut("volumeClaimTemplates") {
                for t in vcts.iter_mut().filter_map(Value::as_object_mut) {
                    t.entry("apiVersion").or_insert(json!("v1"));
                    t.entry("kind").or_insert(json!("PersistentVolumeClaim"));
                    if let Some(ts) = t.get_mut("spec").and_then(Value::as_object_mut) {
                        ts.entry("volumeMode").or_insert(json!("Filesystem"));
                    }
                }
            }
            if let Some(pod) = obj.pointer_mut("/spec/template/spec") {
                default_pod_spec(pod);
            }
        }
        "DaemonSet" => {
            let spec = ensure_object(obj, "spec");
            spec.entry("revisionHistoryLimit").or_insert(json!(10));
            let strategy = spec
                .entry("updateStrategy")
                .or_insert_with(|| json!({"type": "RollingUpdate"}));
            if let Some(st) = strategy.as_object_mut() {
                st.entry("type").or_insert(json!("RollingUpdate"));
                if st.get("type").and_then(Value::as_str) == Some("RollingUpdate") {
                    let ru = st.entry("rollingUpdate").or_insert_with(|| json!({}));
                    if let Some(ru) = ru.as_object_mut() {
                        ru.entry("maxUnavailable").or_insert(json!(1));
                        ru.entry("maxSurge").or_insert(json!(0));
                    }
                }
            }
            if let Some(pod) = obj.pointer_mut("/spec/template/spec") {
                default_pod_spec(pod);
            }
        }
        "Job" => default_job(obj),
        "CronJob" => {
            let spec = ensure_object(obj, "spec");
            spec.entry("concurrencyPolicy").or_insert(json!("Allow"));
            spec.entry("suspend").or_insert(json!(false));
            spec.entry("successfulJobsHistoryLimit").or_insert(json!(3));
            spec.entry("failedJobsHistoryLimit").or_insert(json!(1));
            if let Some(pod) = obj.pointer_mut("/spec/jobTemplate/spec/template/spec") {
                default_pod_spec(pod);
            }
        }
        "Service" => default_service(obj),
        "Plugin" => crate::plugin_kind::default(obj),
        "Endpoints" => {
            if let Some(Value::Array(subsets)) = obj.get_mut("subsets") {
                for ss in subsets.iter_mut() {
                    if let Some(Value::Array(ports)) = ss.get_mut("ports") {
                        for p in ports.iter_mut().filter_map(Value::as_object_mut) {
                            p.entry("protocol").or_insert(json!("TCP"));
                        }
                    }
                }
            }
        }
        _ => {}
    }
}

/// The status a new object starts with (kube-apiserver resets it on create). Written the way
/// the Go zero value serialises, so strict clients find their required counters.
pub fn initial_status(kind: &str) -> Option<Value> {
    Some(match kind {
        "Deployment" | "ReplicaSet" | "Job" | "CronJob" => json!({}),
        "ReplicationController" => json!({"replicas": 0}),
        "StatefulSet" => json!({"replicas": 0, "availableReplicas": 0}),
        "DaemonSet" => json!({"currentNumberScheduled": 0, "numberMisscheduled": 0,
            "desiredNumberScheduled": 0, "numberReady": 0}),
        "Service" => json!({"loadBalancer": {}}),
        _ => return None,
    })
}

/// The label keys kube-apiserver puts on a Job's pod template (legacy and prefixed forms).
pub const JOB_UID_LABELS: [&str; 2] = ["controller-uid", "batch.kubernetes.io/controller-uid"];
pub const JOB_NAME_LABELS: [&str; 2] = ["job-name", "batch.kubernetes.io/job-name"];

fn default_job(obj: &mut Value) {
    let name = meta::name(obj).to_string();
    let uid = meta::uid(obj).to_string();
    let spec = ensure_object(obj, "spec");
    if spec.get("completions").is_none() && spec.get("parallelism").is_none() {
        spec.insert("completions".into(), json!(1));
    }
    spec.entry("parallelism").or_insert(json!(1));
    let per_index = spec.get("backoffLimitPerIndex").is_some();
    spec.entry("backoffLimit")
        .or_insert(json!(if per_index { i64::from(i32::MAX) } else { 6 }));
    spec.entry("completionMode").or_insert(json!("NonIndexed"));
    spec.entry("suspend").or_insert(json!(false));
    let replacement = if spec.get("podFailurePolicy").is_some() {
        "Failed"
    } else {
        "TerminatingOrFailed"
    };
    spec.entry("podReplacementPolicy")
        .or_insert(json!(replacement));
    let manual = spec.get("manualSelector").and_then(Value::as_bool) == Some(true);
    if !manual && !uid.is_empty() {
        // kube-apiserver's generateSelector: label the template with the job's name and uid
        // (never overwriting a user's label: a conflict then fails validation) and select on
        // the uid.
        let template = spec.entry("template").or_insert_with(|| json!({}));
        let labels = ensure_object(ensure_object_value(template, "metadata"), "labels");
        for k in JOB_NAME_LABELS {
            labels.entry(k).or_insert(json!(name));
        }
        for k in JOB_UID_LABELS {
            labels.entry(k).or_insert(json!(uid));
        }
        let selector = spec.entry("selector").or_insert_with(|| json!({}));
        if !selector.is_object() {
            *selector = json!({});
        }
        let ml = ensure_object(selector, "matchLabels");
        ml.entry(JOB_UID_LABELS[1]).or_insert(json!(uid));
    }
    if let Some(pod) = obj.pointer_mut("/spec/template/spec") {
        default_pod_spec(pod);
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
pub fn prepare_update(res: &Resource, old: &Value, new: &mut Value) {
    if res.kind == "Plugin" {
        return crate::plugin_kind::prepare_update(old, new);
    }
    if res.kind != "Service" {
        return;
    }
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

fn ensure_object_value<'a>(obj: &'a mut Value, field: &str) -> &'a mut Value {
    if !obj.get(field).is_some_and(Value::is_object) {
        obj[field] = json!({});
    }
    &mut obj[field]
}

fn ensure_object<'a>(obj: &'a mut Value, field: &str) -> &'a mut Map<String, Value> {
    ensure_object_value(obj, field)
        .as_object_mut()
        .expect("just made an object")
}

fn default_pod_spec(spec: &mut Value) {
    let Some(s) = spec.as_object_mut() else {
        return;
    };
    s.entry("restartPolicy").or_insert(json!("Always"));
    s.entry("dnsPolicy").or_insert(json!("ClusterFirst"));
    s.entry("schedulerName")
        .or_insert(json!("default-scheduler"));
    s.entry("terminationGracePeriodSeconds")
        .or_insert(json!(30));
    s.entry("securityContext").or_insert(json!({}));
    s.entry("enableServiceLinks").or_insert(json!(true));
    for list in ["containers", "initContainers"] {
        if let Some(Value::Array(cs)) = s.get_mut(list) {
            for c in cs.iter_mut().filter_map(Value::as_object_mut) {
                let image = c.get("image").and_then(Value::as_str).unwrap_or_default();
                let policy = default_pull_policy(image);
                c.entry("imagePullPolicy").or_insert(json!(policy));
                c.entry("terminationMessagePath")
                    .or_insert(json!("/dev/termination-log"));
                c.entry("terminationMessagePolicy").or_insert(json!("File"));
                c.entry("resources").or_insert(json!({}));
            }
        }
    }
}

/// SetDefaults_Pod: a container with a limit and no request for a resource requests its
/// limit, so the scheduler counts what the container may use. Pods only, not templates (as in
/// Kubernetes, where a template's pods are defaulted when created).
fn requests_from_limits(spec: &mut Value) {
    for list in ["containers", "initContainers"] {
        let Some(Value::Array(cs)) = spec.get_mut(list) else {
            continue;
        };
        for c in cs {
            let Some(limits) = c
                .pointer("/resources/limits")
                .and_then(Value::as_object)
                .filter(|l| !l.is_empty())
                .cloned()
            else {
                continue;
            };
            let Some(resources) = c.get_mut("resources").and_then(Value::as_object_mut) else {
                continue;
            };
            let requests = resources.entry("requests").or_insert_with(|| json!({}));
            if requests.is_null() {
                *requests = json!({});
            }
            if let Some(requests) = requests.as_object_mut() {
                for (k, v) in limits {
                    requests.entry(k).or_insert(v);
                }
            }
        }
    }
}

/// `:latest` or no tag → Always, else IfNotPresent (Kubernetes' rule). A malformed
/// reference is left for the agent to report as a pull error on the container.
fn default_pull_policy(image: &str) -> &'static str {
    use kedge_registry::PullPolicy;
    match kedge_registry::Reference::parse(image) {
        Ok(r) => match kedge_registry::default_pull_policy(&r) {
            PullPolicy::Always => "Always",
            PullPolicy::IfNotPresent => "IfNotPresent",
            PullPolicy::Never => "Never",
        },
        Err(_) => "IfNotPresent",
    }
}

/// Validates an object about to be created; an empty list means valid.
pub fn validate(res: &Resource, obj: &Value) -> Vec<Cause> {
    validate_replacing(res, obj, None)
}

/// Validates an object about to be stored in place of `old` (if any). Rules kedge added after
/// objects may have been stored without them apply to an update only when it touches what
/// they check, so such an object can still be relabelled, finalized and deleted.
pub fn validate_replacing(res: &Resource, obj: &Value, old: Option<&Value>) -> Vec<Cause> {
    let mut causes = Vec::new();
    let name = meta::name(obj);
    let check = if res.kind == "Namespace" {
        meta::validate_label(name)
    } else if res.group == super::rbac::GROUP {
        super::rbac::validate_name(name)
    } else {
        meta::validate_subdomain(name)
    };
    if let Err(why) = check {
        causes.push(Cause::invalid("metadata.name", name, why));
    }
    for at in [
        "/metadata",
        "/spec/template/metadata",
        "/spec/jobTemplate/metadata",
        "/spec/jobTemplate/spec/template/metadata",
        "/template/metadata",
    ] {
        validate_labels_and_annotations(obj, old, at, &mut causes);
    }
    match res.kind {
        "Pod" => match obj.get("spec") {
            Some(spec) => validate_pod_spec(spec, "spec", &mut causes),
            None => causes.push(Cause::required("spec")),
        },
        "Deployment" | "ReplicaSet" | "DaemonSet" => validate_workload(res, obj, &mut causes),
        "StatefulSet" => {
            validate_workload(res, obj, &mut causes);
            validate_statefulset(obj, &mut causes);
        }
        "Job" => match obj.get("spec") {
            Some(spec) => validate_job_spec(obj, spec, "spec", &mut causes),
            None => causes.push(Cause::required("spec")),
        },
        "CronJob" => validate_cronjob(obj, &mut causes),
        "Service" => validate_service(obj, &mut causes),
        "Endpoints" => validate_endpoints(obj, &mut causes),
        "Plugin" => crate::plugin_kind::validate(obj, &mut causes),
        "ReplicationController" => validate_replication_controller(obj, &mut causes),
        "Secret" | "ConfigMap" => {
            let size = if res.kind == "Secret" {
                if obj.get("stringData").is_some() {
                    causes.push(Cause::invalid("stringData", "", "must be a map of strings"));
                }
                validate_data(obj, "data", true, &mut causes)
            } else {
                let data = obj.get("data").and_then(Value::as_object);
                for k in obj
                    .get("binaryData")
                    .and_then(Value::as_object)
                    .into_iter()
                    .flat_map(|m| m.keys())
                {
                    if data.is_some_and(|d| d.contains_key(k)) {
                        causes.push(Cause::invalid(
                            format!("binaryData[{k}]"),
                            k,
                            "duplicate of key present in data",
                        ));
                    }
                }
                validate_data(obj, "data", false, &mut causes)
                    + validate_data(obj, "binaryData", true, &mut causes)
            };
            if size > MAX_DATA_BYTES {
                causes.push(Cause::invalid(
                    "data",
                    "",
                    format!("Too long: must have at most {MAX_DATA_BYTES} bytes"),
                ));
            }
            let payload = |o: &Value| (o.get("type").cloned(), o.get("data").cloned());
            if res.kind == "Secret" && old.is_none_or(|old| payload(old) != payload(obj)) {
                validate_secret_type(obj, &mut causes);
            }
        }
        "Role" | "ClusterRole" => super::rbac::validate_role(res, obj, &mut causes),
        "RoleBinding" | "ClusterRoleBinding" => {
            super::rbac::validate_binding(res, obj, &mut causes)
        }
        "EndpointSlice" => match obj.get("addressType").and_then(Value::as_str) {
            None => causes.push(Cause::required("addressType")),
            Some("IPv4" | "IPv6" | "FQDN") => {}
            Some(t) => causes.push(Cause::unsupported(
                "addressType",
                t,
                &["FQDN", "IPv4", "IPv6"],
            )),
        },
        "ControllerRevision" => {
            if let Some(r) = obj.get("revision").and_then(Value::as_i64)
                && r < 0
            {
                causes.push(invalid_raw(
                    "revision",
                    &r.to_string(),
                    "must be greater than or equal to 0",
                ));
            }
        }
        _ => {}
    }
    causes
}

/// ValidateObjectMeta's rules on the labels and annotations of the metadata at `at` (a JSON
/// pointer): keys are qualified names, label values short label-shaped strings, annotations
/// at most 256 KiB in all. On an update only what changed is checked, so an object stored
/// before kedge checked these can still be finalized and deleted.
fn validate_labels_and_annotations(
    obj: &Value,
    old: Option<&Value>,
    at: &str,
    causes: &mut Vec<Cause>,
) {
    let Some(m) = obj.pointer(at) else {
        return;
    };
    let path = at.trim_start_matches('/').replace('/', ".");
    let changed =
        |field: &str| old.is_none_or(|o| o.pointer(at).and_then(|m| m.get(field)) != m.get(field));
    if changed("labels")
        && let Some(labels) = m.get("labels").and_then(Value::as_object)
    {
        let field = format!("{path}.labels");
        for (k, v) in labels {
            for why in meta::qualified_name_errors(k) {
                causes.push(Cause::invalid(&field, k, why));
            }
            if let Some(v) = v.as_str() {
                for why in meta::label_value_errors(v) {
                    causes.push(Cause::invalid(&field, v, why));
                }
            }
        }
    }
    if changed("annotations")
        && let Some(annotations) = m.get("annotations").and_then(Value::as_object)
    {
        let field = format!("{path}.annotations");
        let mut size = 0;
        for (k, v) in annotations {
            for why in meta::qualified_name_errors(&k.to_lowercase()) {
                causes.push(Cause::invalid(&field, k, why));
            }
            size += k.len() + v.as_str().map_or(0, str::len);
        }
        if size > meta::ANNOTATIONS_MAX_BYTES {
            causes.push(Cause {
                reason: "FieldValueTooLong",
                field,
                message: format!(
                    "Too long: must have at most {} bytes",
                    meta::ANNOTATIONS_MAX_BYTES
                ),
            });
        }
    }
}

/// An Invalid cause whose value prints unquoted, as Go prints numbers and structs.
fn invalid_raw(field: impl Into<String>, value: &str, why: &str) -> Cause {
    Cause {
        reason: "FieldValueInvalid",
        field: field.into(),
        message: format!("Invalid value: {value}: {why}"),
    }
}

/// A label map as Go's `%#v` prints it: `map[string]string{"a":"1", "b":"2"}`.
fn go_map(labels: Option<&Map<String, Value>>) -> String {
    let mut parts: Vec<String> = labels
        .into_iter()
        .flatten()
        .map(|(k, v)| format!("{k:?}:{:?}", v.as_str().unwrap_or_default()))
        .collect();
    parts.sort();
    format!("map[string]string{{{}}}", parts.join(", "))
}

fn duplicate(field: impl Into<String>, value: &str) -> Cause {
    Cause {
        reason: "FieldValueDuplicate",
        field: field.into(),
        message: format!("Duplicate value: {value}"),
    }
}

fn non_negative(spec: &Value, field: &str, at: &str, causes: &mut Vec<Cause>) {
    if let Some(v) = spec.get(field)
        && v.as_i64().is_none_or(|n| n < 0)
    {
        causes.push(invalid_raw(
            format!("{at}.{field}"),
            &v.to_string(),
            "must be greater than or equal to 0",
        ));
    }
}

fn one_of(spec: &Value, field: &str, at: &str, allowed: &[&str], causes: &mut Vec<Cause>) {
    if let Some(v) = spec.get(field).and_then(Value::as_str)
        && !allowed.contains(&v)
    {
        causes.push(Cause::unsupported(format!("{at}.{field}"), v, allowed));
    }
}

fn validate_statefulset(obj: &Value, causes: &mut Vec<Cause>) {
    let Some(spec) = obj.get("spec") else {
        return;
    };
    if spec
        .get("serviceName")
        .and_then(Value::as_str)
        .is_none_or(str::is_empty)
    {
        causes.push(Cause::required("spec.serviceName"));
    }
    one_of(
        spec,
        "podManagementPolicy",
        "spec",
        &["OrderedReady", "Parallel"],
        causes,
    );
    if let Some(st) = spec.get("updateStrategy") {
        one_of(
            st,
            "type",
            "spec.updateStrategy",
            &["RollingUpdate", "OnDelete"],
            causes,
        );
        if let Some(ru) = st.get("rollingUpdate") {
            non_negative(ru, "partition", "spec.updateStrategy.rollingUpdate", causes);
        }
    }
    non_negative(spec, "minReadySeconds", "spec", causes);
    if let Some(vcts) = spec.get("volumeClaimTemplates").and_then(Value::as_array) {
        for (i, t) in vcts.iter().enumerate() {
            let n = t.pointer("/metadata/name").and_then(Value::as_str);
            match n {
                None | Some("") => causes.push(Cause::required(format!(
                    "spec.volumeClaimTemplates[{i}].metadata.name"
                ))),
                Some(n) => {
                    if let Err(why) = meta::validate_subdomain(n) {
                        causes.push(Cause::invalid(
                            format!("spec.volumeClaimTemplates[{i}].metadata.name"),
                            n,
                            why,
                        ));
                    }
                }
            }
            if t.pointer("/spec/accessModes")
                .and_then(Value::as_array)
                .is_none_or(Vec::is_empty)
            {
                causes.push(Cause {
                    reason: "FieldValueRequired",
                    field: format!("spec.volumeClaimTemplates[{i}].spec.accessModes"),
                    message: "Required value: at least 1 access mode is required".into(),
                });
            }
        }
    }
}

fn validate_job_spec(obj: &Value, spec: &Value, at: &str, causes: &mut Vec<Cause>) {
    for f in [
        "parallelism",
        "completions",
        "backoffLimit",
        "activeDeadlineSeconds",
    ] {
        non_negative(spec, f, at, causes);
    }
    one_of(
        spec,
        "completionMode",
        at,
        &["NonIndexed", "Indexed"],
        causes,
    );
    if spec.get("completionMode").and_then(Value::as_str) == Some("Indexed")
        && spec.get("completions").is_none_or(Value::is_null)
    {
        causes.push(Cause {
            reason: "FieldValueRequired",
            field: format!("{at}.completions"),
            message: "Required value: when completion mode is Indexed".into(),
        });
    }
    let manual = spec.get("manualSelector").and_then(Value::as_bool) == Some(true);
    // A Job itself (not a CronJob's template) must have a selector by now: generated unless
    // manualSelector.
    let top_level = at == "spec";
    let sel = match spec.get("selector") {
        None if top_level => {
            causes.push(Cause::required(format!("{at}.selector")));
            None
        }
        None => None,
        Some(s) => match selector::from_structured(s) {
            Ok(sel) => Some(sel),
            Err(e) => {
                causes.push(Cause::invalid(format!("{at}.selector"), "", e));
                None
            }
        },
    };
    if top_level && !manual {
        let uid = meta::uid(obj);
        let got = spec
            .pointer("/selector/matchLabels")
            .and_then(|m| m.get(JOB_UID_LABELS[1]))
            .and_then(Value::as_str);
        if got.is_some_and(|g| g != uid) {
            causes.push(invalid_raw(
                format!("{at}.selector"),
                &serde_json::to_string(&spec["selector"]).unwrap_or_default(),
                "`selector` not auto-generated",
            ));
        }
    }
    let Some(template) = spec.get("template") else {
        causes.push(Cause::required(format!("{at}.template")));
        return;
    };
    let labels = template
        .pointer("/metadata/labels")
        .and_then(Value::as_object);
    if let Some(sel) = sel
        && !sel.matches(labels)
    {
        causes.push(invalid_raw(
            format!("{at}.template.metadata.labels"),
            &go_map(labels),
            "`selector` does not match template `labels`",
        ));
    }
    match template.get("spec") {
        Some(pod) => {
            let pat = format!("{at}.template.spec");
            validate_pod_spec(pod, &pat, causes);
            let policy = pod
                .get("restartPolicy")
                .and_then(Value::as_str)
                .unwrap_or_default();
            if policy != "OnFailure" && policy != "Never" {
                causes.push(Cause::unsupported(
                    format!("{pat}.restartPolicy"),
                    policy,
                    &["OnFailure", "Never"],
                ));
            }
        }
        None => causes.push(Cause::required(format!("{at}.template.spec"))),
    }
}

fn validate_cronjob(obj: &Value, causes: &mut Vec<Cause>) {
    let name = meta::name(obj);
    // The controller appends an 11-character suffix to job names (kube-apiserver's limit).
    if name.len() > 52 {
        causes.push(Cause::invalid(
            "metadata.name",
            name,
            "must be no more than 52 characters",
        ));
    }
    let Some(spec) = obj.get("spec") else {
        causes.push(Cause::required("spec"));
        return;
    };
    match spec.get("schedule").and_then(Value::as_str) {
        None | Some("") => causes.push(Cause::required("spec.schedule")),
        Some(s) => {
            if let Err(why) = kedge_core::cron::check(s) {
                causes.push(Cause::invalid("spec.schedule", s, why));
            }
        }
    }
    if let Some(tz) = spec.get("timeZone").and_then(Value::as_str)
        && (tz.is_empty() || tz.contains(char::is_whitespace) || tz.starts_with('/'))
    {
        causes.push(Cause::invalid(
            "spec.timeZone",
            tz,
            format!("unknown time zone {tz}"),
        ));
    }
    one_of(
        spec,
        "concurrencyPolicy",
        "spec",
        &["Allow", "Forbid", "Replace"],
        causes,
    );
    for f in [
        "startingDeadlineSeconds",
        "successfulJobsHistoryLimit",
        "failedJobsHistoryLimit",
    ] {
        non_negative(spec, f, "spec", causes);
    }
    match spec.pointer("/jobTemplate/spec") {
        Some(js) => validate_job_spec(obj, js, "spec.jobTemplate.spec", causes),
        None => causes.push(Cause::required("spec.jobTemplate.spec")),
    }
}

fn valid_port(v: &Value) -> bool {
    v.as_i64().is_some_and(|p| (1..=65535).contains(&p))
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

fn validate_endpoints(obj: &Value, causes: &mut Vec<Cause>) {
    let subsets = obj
        .get("subsets")
        .and_then(Value::as_array)
        .cloned()
        .unwrap_or_default();
    for (i, ss) in subsets.iter().enumerate() {
        for list in ["addresses", "notReadyAddresses"] {
            for (j, a) in ss
                .get(list)
                .and_then(Value::as_array)
                .into_iter()
                .flatten()
                .enumerate()
            {
                let at = format!("subsets[{i}].{list}[{j}].ip");
                match a.get("ip").and_then(Value::as_str) {
                    None | Some("") => causes.push(Cause::required(at)),
                    Some(ip) if ip.parse::<std::net::IpAddr>().is_err() => {
                        causes.push(Cause::invalid(
                            at,
                            ip,
                            "must be a valid IP address, (e.g. 10.9.8.7 or 2001:db8::ffff)",
                        ))
                    }
                    Some(_) => {}
                }
            }
        }
        let ports = ss
            .get("ports")
            .and_then(Value::as_array)
            .cloned()
            .unwrap_or_default();
        for (j, p) in ports.iter().enumerate() {
            let at = format!("subsets[{i}].ports[{j}]");
            if ports.len() > 1
                && p.get("name")
                    .and_then(Value::as_str)
                    .is_none_or(str::is_empty)
            {
                causes.push(Cause::required(format!("{at}.name")));
            }
            match p.get("port") {
                None => causes.push(Cause::required(format!("{at}.port"))),
                Some(v) if !valid_port(v) => causes.push(invalid_raw(
                    format!("{at}.port"),
                    &v.to_string(),
                    "must be between 1 and 65535, inclusive",
                )),
                Some(_) => {}
            }
            one_of(p, "protocol", &at, &["SCTP", "TCP", "UDP"], causes);
        }
    }
}

/// Update-only rules: fields kube-apiserver refuses to change once set.
pub fn validate_update(res: &Resource, old: &Value, new: &Value) -> Vec<Cause> {
    let mut causes = Vec::new();
    let immutable = |field: &str, ptr: &str, causes: &mut Vec<Cause>| {
        let (o, n) = (old.pointer(ptr), new.pointer(ptr));
        if o != n {
            causes.push(invalid_raw(
                field,
                &n.map(|v| v.to_string()).unwrap_or_else(|| "null".into()),
                "field is immutable",
            ));
        }
    };
    match res.kind {
        "RoleBinding" | "ClusterRoleBinding" if old.get("roleRef") != new.get("roleRef") => {
            causes.push(invalid_raw(
                "roleRef",
                &new.get("roleRef").map(Value::to_string).unwrap_or_default(),
                "cannot change roleRef",
            ));
        }
        "Service" => {
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
        "StatefulSet" => {
            let strip = |v: &Value| {
                let mut s = v.get("spec").cloned().unwrap_or(Value::Null);
                if let Some(m) = s.as_object_mut() {
                    for f in [
                        "replicas",
                        "ordinals",
                        "template",
                        "updateStrategy",
                        "revisionHistoryLimit",
                        "persistentVolumeClaimRetentionPolicy",
                        "minReadySeconds",
                    ] {
                        m.remove(f);
                    }
                }
                s
            };
            if strip(old) != strip(new) {
                causes.push(Cause::forbidden(
                    "spec",
                    "updates to statefulset spec for fields other than 'replicas', 'ordinals', \
                     'template', 'updateStrategy', 'revisionHistoryLimit', \
                     'persistentVolumeClaimRetentionPolicy' and 'minReadySeconds' are forbidden",
                ));
            }
        }
        "DaemonSet" => immutable("spec.selector", "/spec/selector", &mut causes),
        "Job" => {
            immutable("spec.selector", "/spec/selector", &mut causes);
            immutable("spec.completionMode", "/spec/completionMode", &mut causes);
            // A suspended Job that never started may change its pods' scheduling directives
            // and metadata; otherwise the template is fixed.
            let fresh_suspended = old.pointer("/spec/suspend").and_then(Value::as_bool)
                == Some(true)
                && old.pointer("/status/startTime").is_none();
            let strip = |v: &Value| {
                let mut t = v.pointer("/spec/template").cloned().unwrap_or(Value::Null);
                if fresh_suspended {
                    if let Some(m) = t.as_object_mut() {
                        m.remove("metadata");
                    }
                    if let Some(s) = t.get_mut("spec").and_then(Value::as_object_mut) {
                        for f in ["nodeSelector", "tolerations", "affinity", "schedulingGates"] {
                            s.remove(f);
                        }
                    }
                }
                t
            };
            if strip(old) != strip(new) {
                causes.push(invalid_raw(
                    "spec.template",
                    "core.PodTemplateSpec{...}",
                    "field is immutable",
                ));
            }
        }
        "ControllerRevision" => immutable("data", "/data", &mut causes),
        "Secret" | "ConfigMap" => {
            let secret = res.kind == "Secret";
            if secret {
                let ty = |v: &Value| v.get("type").and_then(Value::as_str).map(str::to_owned);
                if ty(old) != ty(new) {
                    let t = ty(new).unwrap_or_default();
                    causes.push(Cause::invalid("type", &t, "field is immutable"));
                }
            }
            // Kubelets stop watching an immutable object, so only its metadata may change (and
            // it may be deleted), as in kube.
            if old.get("immutable") == Some(&Value::Bool(true)) {
                const WHY: &str = "field is immutable when `immutable` is set";
                if new.get("immutable") != Some(&Value::Bool(true)) {
                    causes.push(Cause::forbidden("immutable", WHY));
                }
                if data_entries(old, "data", secret) != data_entries(new, "data", secret) {
                    causes.push(Cause::forbidden("data", WHY));
                }
                if !secret
                    && data_entries(old, "binaryData", true)
                        != data_entries(new, "binaryData", true)
                {
                    causes.push(Cause::forbidden("binaryData", WHY));
                }
            }
        }
        _ => {}
    }
    causes
}

/// The entries of a Secret's or ConfigMap's map `field` as compared for an immutable object:
/// base64 values (`bytes`) by their bytes, and no map the same as an empty one.
fn data_entries(obj: &Value, field: &str, bytes: bool) -> Vec<(String, Value)> {
    let mut entries: Vec<(String, Value)> = obj
        .get(field)
        .and_then(Value::as_object)
        .into_iter()
        .flatten()
        .map(|(k, v)| {
            let decoded = v
                .as_str()
                .filter(|_| bytes)
                .and_then(decode_base64_leniently);
            (k.clone(), decoded.map_or_else(|| v.clone(), Value::from))
        })
        .collect();
    entries.sort_by(|a, b| a.0.cmp(&b.0));
    entries
}

/// ValidateReplicationControllerSpec: a non-empty map selector the template's labels match.
fn validate_replication_controller(obj: &Value, causes: &mut Vec<Cause>) {
    let Some(spec) = obj.get("spec") else {
        causes.push(Cause::required("spec"));
        return;
    };
    if let Some(r) = spec.get("replicas")
        && r.as_i64().is_none_or(|r| r < 0)
    {
        causes.push(invalid_raw(
            "spec.replicas",
            &r.to_string(),
            "must be greater than or equal to 0",
        ));
    }
    let selector = spec.get("selector").and_then(Value::as_object);
    let Some(selector) = selector.filter(|s| !s.is_empty()) else {
        causes.push(Cause::required("spec.selector"));
        return;
    };
    let Some(template) = spec.get("template") else {
        causes.push(Cause::required("spec.template"));
        return;
    };
    let labels = template
        .pointer("/metadata/labels")
        .and_then(Value::as_object);
    let matches = selector
        .iter()
        .all(|(k, v)| labels.and_then(|l| l.get(k)) == Some(v));
    if !matches {
        causes.push(invalid_raw(
            "spec.template.metadata.labels",
            &go_map(labels),
            "`selector` does not match template `labels`",
        ));
    }
    match template.get("spec") {
        Some(ps) => validate_pod_spec(ps, "spec.template.spec", causes),
        None => causes.push(Cause::required("spec.template.spec")),
    }
}

fn validate_workload(res: &Resource, obj: &Value, causes: &mut Vec<Cause>) {
    let Some(spec) = obj.get("spec") else {
        causes.push(Cause::required("spec"));
        return;
    };
    if let Some(r) = spec.get("replicas")
        && r.as_i64().is_none_or(|r| r < 0)
    {
        causes.push(invalid_raw(
            "spec.replicas",
            &r.to_string(),
            "must be greater than or equal to 0",
        ));
    }
    let sel = match spec.get("selector") {
        None => {
            causes.push(Cause::required("spec.selector"));
            None
        }
        Some(s) => match selector::from_structured(s) {
            Ok(sel) if sel.is_empty() => {
                causes.push(Cause::invalid(
                    "spec.selector",
                    "{}",
                    format!("empty selector is invalid for {}", res.singular),
                ));
                None
            }
            Ok(sel) => Some(sel),
            Err(e) => {
                causes.push(Cause::invalid("spec.selector", "", e));
                None
            }
        },
    };
    let Some(template) = spec.get("template") else {
        causes.push(Cause::required("spec.template"));
        return;
    };
    let labels = template
        .pointer("/metadata/labels")
        .and_then(Value::as_object);
    if let Some(sel) = sel
        && !sel.matches(labels)
    {
        causes.push(invalid_raw(
            "spec.template.metadata.labels",
            &go_map(labels),
            "`selector` does not match template `labels`",
        ));
    }
    match template.get("spec") {
        Some(pod) => {
            validate_pod_spec(pod, "spec.template.spec", causes);
            let policy = pod.get("restartPolicy").and_then(Value::as_str);
            if policy.is_some_and(|p| p != "Always") {
                causes.push(Cause::unsupported(
                    "spec.template.spec.restartPolicy",
                    policy.unwrap_or_default(),
                    &["Always"],
                ));
            }
        }
        None => causes.push(Cause::required("spec.template.spec")),
    }
}

/// The most containers (init, regular and ephemeral together) a pod may have. Kubernetes sets
/// none, but every container is a process, a log and a status entry on a small node, and a
/// pod of a thousand containers (~800 KB) made every status write of it cost a megabyte.
pub const MAX_CONTAINERS: usize = 100;

fn validate_pod_spec(spec: &Value, at: &str, causes: &mut Vec<Cause>) {
    let count = ["initContainers", "containers", "ephemeralContainers"]
        .iter()
        .filter_map(|k| spec.get(*k).and_then(Value::as_array))
        .map(Vec::len)
        .sum::<usize>();
    if count > MAX_CONTAINERS {
        causes.push(Cause {
            reason: "FieldValueTooMany",
            field: format!("{at}.containers"),
            message: format!("Too many: {count}: must have at most {MAX_CONTAINERS} items"),
        });
    }
    let containers = spec.get("containers").and_then(Value::as_array);
    match containers {
        None => causes.push(Cause::required(format!("{at}.containers"))),
        Some(cs) if cs.is_empty() => causes.push(Cause::required(format!("{at}.containers"))),
        Some(cs) => {
            let mut seen = Vec::new();
            for (i, c) in cs.iter().enumerate() {
                let path = format!("{at}.containers[{i}]");
                match c.get("name").and_then(Value::as_str) {
                    None | Some("") => causes.push(Cause::required(format!("{path}.name"))),
                    Some(n) => {
                        if let Err(why) = meta::validate_label(n) {
                            causes.push(Cause::invalid(format!("{path}.name"), n, why));
                        }
                        if seen.contains(&n) {
                            causes.push(Cause {
                                reason: "FieldValueDuplicate",
                                field: format!("{path}.name"),
                                message: format!("Duplicate value: {n:?}"),
                            });
                        }
                        seen.push(n);
                    }
                }
                match c.get("image").and_then(Value::as_str) {
                    None | Some("") => causes.push(Cause::required(format!("{path}.image"))),
                    Some(img) if img.trim() != img => causes.push(Cause::invalid(
                        format!("{path}.image"),
                        img,
                        "must not have leading or trailing whitespace",
                    )),
                    Some(_) => {}
                }
                if let Some(p) = c.get("imagePullPolicy").and_then(Value::as_str) {
                    let allowed = ["Always", "IfNotPresent", "Never"];
                    if !allowed.contains(&p) {
                        causes.push(Cause::unsupported(
                            format!("{path}.imagePullPolicy"),
                            p,
                            &allowed,
                        ));
                    }
                }
            }
        }
    }
    if let Some(p) = spec.get("restartPolicy").and_then(Value::as_str) {
        let allowed = ["Always", "OnFailure", "Never"];
        if !allowed.contains(&p) {
            causes.push(Cause::unsupported(
                format!("{at}.restartPolicy"),
                p,
                &allowed,
            ));
        }
    }
}

/// The pod's QoS class, as the API reports it in status.
pub fn qos_class(spec: &Value) -> &'static str {
    let containers = spec
        .get("containers")
        .and_then(Value::as_array)
        .cloned()
        .unwrap_or_default();
    let mut any = false;
    let mut guaranteed = true;
    for c in &containers {
        let req = c.pointer("/resources/requests").and_then(Value::as_object);
        let lim = c.pointer("/resources/limits").and_then(Value::as_object);
        if req.is_some_and(|r| !r.is_empty()) || lim.is_some_and(|l| !l.is_empty()) {
            any = true;
        }
        for r in ["cpu", "memory"] {
            let l = lim.and_then(|l| l.get(r));
            let q = req.and_then(|q| q.get(r)).or(l);
            if l.is_none() || q != l {
                guaranteed = false;
            }
        }
    }
    match (any, guaranteed) {
        (false, _) => "BestEffort",
        (true, true) => "Guaranteed",
        (true, false) => "Burstable",
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use kedge_core::resources::by_kind;

    fn field_reasons(causes: &[Cause]) -> Vec<(&str, &str)> {
        causes
            .iter()
            .map(|c| (c.field.as_str(), c.reason))
            .collect()
    }

    /// Regression (hardening issue, finding 5): label keys and values, and the annotations'
    /// total size, are checked as Kubernetes checks them (they were all accepted).
    #[test]
    fn labels_and_annotations_follow_kubernetes() {
        let cm = by_kind("v1", "ConfigMap").unwrap();
        let with = |labels: Value, annotations: Value| json!({"metadata": {"name": "a", "labels": labels, "annotations": annotations}});
        for (labels, bad) in [
            (json!({"a b": "x"}), "a b"),
            (json!({"-bad-": "x"}), "-bad-"),
            (json!({"ok": "bad value!"}), "bad value!"),
            (json!({"ok": "x".repeat(64)}), ""),
            (json!({"x".repeat(64): "v"}), ""),
        ] {
            let causes = validate(cm, &with(labels, json!({})));
            assert_eq!(
                field_reasons(&causes),
                [("metadata.labels", "FieldValueInvalid")]
            );
            assert!(causes[0].message.contains(bad), "{}", causes[0].message);
        }
        let fine = with(
            json!({"app.kubernetes.io/name": "web", "tier": "", "v": "1.2_3"}),
            json!({"kubectl.kubernetes.io/last-applied-configuration": "{}", "Note": "x"}),
        );
        assert!(validate(cm, &fine).is_empty());
        let big = with(json!({}), json!({"a": "x".repeat(256 * 1024)}));
        assert_eq!(
            field_reasons(&validate(cm, &big)),
            [("metadata.annotations", "FieldValueTooLong")]
        );
        // Templates too.
        let dep = by_kind("apps/v1", "Deployment").unwrap();
        let d = json!({"metadata": {"name": "d"}, "spec": {"selector": {"matchLabels": {"a b": "x"}},
            "template": {"metadata": {"labels": {"a b": "x"}}, "spec": {"containers": [{"name": "c", "image": "i"}]}}}});
        assert!(
            field_reasons(&validate(dep, &d))
                .contains(&("spec.template.metadata.labels", "FieldValueInvalid"))
        );
        // An update that leaves bad labels stored before alone is not refused for them.
        let old = with(json!({"a b": "x"}), json!({}));
        let mut new = old.clone();
        new["data"] = json!({"k": "v"});
        assert!(validate_replacing(cm, &new, Some(&old)).is_empty());
    }

    #[test]
    fn pods_have_a_container_count_limit() {
        let pod = by_kind("v1", "Pod").unwrap();
        let containers = |n: usize| {
            (0..n)
                .map(|i| json!({"name": format!("c{i}"), "image": "busybox"}))
                .collect::<Vec<_>>()
        };
        let p =
            json!({"metadata": {"name": "p"}, "spec": {"containers": containers(MAX_CONTAINERS)}});
        assert!(validate(pod, &p).is_empty());
        let p = json!({"metadata": {"name": "p"}, "spec": {"containers": containers(1000)}});
        let causes = validate(pod, &p);
        assert_eq!(
            field_reasons(&causes),
            [("spec.containers", "FieldValueTooMany")]
        );
        assert_eq!(
            causes[0].message,
            "Too many: 1000: must have at most 100 items"
        );
    }

    /// Regression (hardening issue, finding 5): a pod with limits and no requests requests
    /// its limits (it was scheduled as if it asked for nothing).
    #[test]
    fn pod_requests_default_to_limits() {
        let pod = by_kind("v1", "Pod").unwrap();
        let mut p = json!({"metadata": {"name": "p"}, "spec": {"containers": [
            {"name": "a", "image": "i", "resources": {"limits": {"memory": "1Ti", "cpu": "2"}}},
            {"name": "b", "image": "i", "resources": {"limits": {"memory": "1Gi"}, "requests": {"memory": "1Mi"}}},
            {"name": "c", "image": "i"},
        ], "initContainers": [{"name": "i", "image": "i", "resources": {"limits": {"cpu": "1"}}}]}});
        default(pod, &mut p);
        let cs = &p["spec"]["containers"];
        assert_eq!(
            cs[0]["resources"]["requests"],
            json!({"memory": "1Ti", "cpu": "2"})
        );
        assert_eq!(cs[1]["resources"]["requests"], json!({"memory": "1Mi"}));
        assert_eq!(cs[2]["resources"], json!({}));
        assert_eq!(
            p["spec"]["initContainers"][0]["resources"]["requests"],
            json!({"cpu": "1"})
        );
        // Templates are left alone (their pods are defaulted when created).
        let dep = by_kind("apps/v1", "Deployment").unwrap();
        let mut d = json!({"spec": {"template": {"spec": {"containers": [
            {"name": "a", "image": "i", "resources": {"limits": {"memory": "1Gi"}}}]}}}});
        default(dep, &mut d);
        assert!(
            d.pointer("/spec/template/spec/containers/0/resources/requests")
                .is_none()
        );
    }

    #[test]
    fn pod_without_image_is_invalid() {
        let res = by_kind("v1", "Pod").unwrap();
        let pod = json!({"metadata": {"name": "bad"}, "spec": {"containers": [{"name": "c"}]}});
        let causes = validate(res, &pod);
        assert_eq!(causes.len(), 1);
        assert_eq!(causes[0].field, "spec.containers[0].image");
        assert_eq!(causes[0].message, "Required value");
    }

    /// As kube-apiserver: `stringData` lands base64-encoded in `data` (winning over a `data`
    /// entry of the same key) and is not stored; keys must be file names; data is base64.
    #[test]
    fn secret_string_data_is_folded_into_data_and_keys_are_checked() {
        let res = by_kind("v1", "Secret").unwrap();
        let mut s = json!({"metadata": {"name": "s"},
            "data": {"a": "b2xk", "keep": "eA=="},
            "stringData": {"a": "new", "token-id": "abcdef"}});
        default(res, &mut s);
        assert_eq!(s["type"], "Opaque");
        assert_eq!(s.get("stringData"), None);
        assert_eq!(
            s["data"],
            json!({"a": "bmV3", "keep": "eA==", "token-id": "YWJjZGVm"})
        );
        assert!(validate(res, &s).is_empty(), "{:?}", validate(res, &s));

        let mut bad = json!({"metadata": {"name": "s"}, "stringData": {"n": 1}});
        default(res, &mut bad);
        let fields: Vec<String> = validate(res, &bad).into_iter().map(|c| c.field).collect();
        assert_eq!(fields, ["stringData"]);

        let bad = json!({"metadata": {"name": "s"},
            "data": {"a b": "eA==", "..x": "eA==", "ok": "not base64!"}});
        let fields: Vec<String> = validate(res, &bad).into_iter().map(|c| c.field).collect();
        assert_eq!(fields, ["data[..x]", "data[a b]", "data[ok]"]);

        let cm = by_kind("v1", "ConfigMap").unwrap();
        let big = "x".repeat(MAX_DATA_BYTES + 1);
        let causes = validate(cm, &json!({"metadata": {"name": "c"}, "data": {"k": big}}));
        assert_eq!(causes.len(), 1);
        assert_eq!(causes[0].field, "data");
        let ok = json!({"metadata": {"name": "c"}, "data": {"app.properties": "a=1"}});
        assert!(validate(cm, &ok).is_empty());

        // As kube counts it: the values' bytes, decoded; keys do not count.
        let just = "x".repeat(MAX_DATA_BYTES);
        let b64 = {
            use base64::Engine as _;
            base64::engine::general_purpose::STANDARD.encode(&just)
        };
        let s = json!({"metadata": {"name": "s"}, "data": {"k": b64}});
        assert!(validate(res, &s).is_empty());

        // `base64 FILE` output (line breaks, stray trailing bits) is read as Go reads it and
        // stored canonical; null maps are no maps.
        let mut s = json!({"metadata": {"name": "s"}, "data": {"k": "aGVs\nbG8=\n", "t": "YR=="},
            "stringData": null});
        default(res, &mut s);
        assert_eq!(s["data"], json!({"k": "aGVsbG8=", "t": "YQ=="}));
        assert!(validate(res, &s).is_empty(), "{:?}", validate(res, &s));
        let mut c = json!({"metadata": {"name": "c"}, "data": null});
        default(cm, &mut c);
        assert!(validate(cm, &c).is_empty());

        // ConfigMap: binaryData is base64, and a key may not be in both maps.
        let c = json!({"metadata": {"name": "c"}, "data": {"a": "1"},
            "binaryData": {"a": "MQ==", "b": "%%"}});
        let fields: Vec<String> = validate(cm, &c).into_iter().map(|c| c.field).collect();
        assert_eq!(fields, ["binaryData[a]", "binaryData[b]"]);
    }

    #[test]
    fn deployment_defaults_and_selector_check() {
        let res = by_kind("apps/v1", "Deployment").unwrap();
        let mut d = json!({"metadata": {"name": "web"}, "spec": {
            "selector": {"matchLabels": {"app": "web"}},
            "template": {"metadata": {"labels": {"app": "other"}},
                         "spec": {"containers": [{"name": "c", "image": "x:1"}]}}}});
        default(res, &mut d);
        assert_eq!(d["spec"]["replicas"], 1);
        assert_eq!(d["metadata"]["annotations"], json!({}));
        assert_eq!(
            d["spec"]["template"]["spec"]["containers"][0]["imagePullPolicy"],
            "IfNotPresent"
        );
        let causes = validate(res, &d);
        assert_eq!(causes.len(), 1);
        assert_eq!(causes[0].field, "spec.template.metadata.labels");
    }

    fn fields(causes: &[Cause]) -> Vec<&str> {
        causes.iter().map(|c| c.field.as_str()).collect()
    }

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

    fn pod_template(labels: Value, restart: &str) -> Value {
        json!({"metadata": {"labels": labels}, "spec": {"restartPolicy": restart,
            "containers": [{"name": "c", "image": "busybox:1.28"}]}})
    }

    #[test]
    fn statefulset_defaults_validation_and_immutability() {
        let res = by_kind("apps/v1", "StatefulSet").unwrap();
        let mut s = json!({"metadata": {"name": "web"}, "spec": {
            "selector": {"matchLabels": {"app": "web"}},
            "template": pod_template(json!({"app": "web"}), "Always")}});
        default(res, &mut s);
        assert_eq!(s["spec"]["replicas"], 1);
        assert_eq!(s["spec"]["podManagementPolicy"], "OrderedReady");
        assert_eq!(s["spec"]["updateStrategy"]["rollingUpdate"]["partition"], 0);
        assert_eq!(s["spec"]["revisionHistoryLimit"], 10);
        assert_eq!(
            s["spec"]["persistentVolumeClaimRetentionPolicy"]["whenDeleted"],
            "Retain"
        );
        assert_eq!(fields(&validate(res, &s)), ["spec.serviceName"]);
        s["spec"]["serviceName"] = json!("web");
        assert!(validate(res, &s).is_empty());
        let mut scaled = s.clone();
        scaled["spec"]["replicas"] = json!(5);
        assert!(validate_update(res, &s, &scaled).is_empty());
        let mut renamed = s.clone();
        renamed["spec"]["serviceName"] = json!("other");
        let c = validate_update(res, &s, &renamed);
        assert_eq!(c[0].field, "spec");
        assert!(c[0].message.starts_with(
            "Forbidden: updates to statefulset spec for fields other than 'replicas'"
        ));
    }

    #[test]
    fn daemonset_defaults() {
        let res = by_kind("apps/v1", "DaemonSet").unwrap();
        let mut d = json!({"metadata": {"name": "d"}, "spec": {
            "selector": {"matchLabels": {"app": "d"}},
            "template": pod_template(json!({"app": "x"}), "Always")}});
        default(res, &mut d);
        assert_eq!(
            d["spec"]["updateStrategy"],
            json!({"type": "RollingUpdate", "rollingUpdate": {"maxUnavailable": 1, "maxSurge": 0}})
        );
        assert_eq!(
            fields(&validate(res, &d)),
            ["spec.template.metadata.labels"]
        );
    }

    #[test]
    fn job_generated_selector_defaults_and_restart_policy() {
        let res = by_kind("batch/v1", "Job").unwrap();
        let mut j = json!({"metadata": {"name": "pi", "uid": "u1"}, "spec": {
            "template": pod_template(Value::Null, "Never")}});
        j["spec"]["template"]["metadata"] = json!({});
        default(res, &mut j);
        assert_eq!(
            j["spec"]["selector"],
            json!({"matchLabels": {"batch.kubernetes.io/controller-uid": "u1"}})
        );
        let labels = &j["spec"]["template"]["metadata"]["labels"];
        assert_eq!(labels["job-name"], "pi");
        assert_eq!(labels["controller-uid"], "u1");
        assert_eq!(
            (&j["spec"]["completions"], &j["spec"]["parallelism"]),
            (&json!(1), &json!(1))
        );
        assert_eq!(j["spec"]["backoffLimit"], 6);
        assert_eq!(j["spec"]["completionMode"], "NonIndexed");
        assert!(validate(res, &j).is_empty(), "{:?}", validate(res, &j));
        // parallelism alone leaves completions unset (a work queue).
        let mut q = json!({"metadata": {"name": "q", "uid": "u2"}, "spec": {"parallelism": 3,
            "template": pod_template(json!({}), "OnFailure")}});
        default(res, &mut q);
        assert!(q["spec"].get("completions").is_none());
        // Always is not a Job restart policy.
        let mut a = json!({"metadata": {"name": "a", "uid": "u3"}, "spec": {
            "template": pod_template(json!({}), "Always")}});
        default(res, &mut a);
        let c = validate(res, &a);
        assert_eq!(fields(&c), ["spec.template.spec.restartPolicy"]);
        assert_eq!(
            c[0].message,
            "Unsupported value: \"Always\": supported values: \"OnFailure\", \"Never\""
        );
        // The selector and template are fixed once created.
        let mut changed = j.clone();
        changed["spec"]["template"]["spec"]["containers"][0]["image"] = json!("other:1");
        assert_eq!(
            fields(&validate_update(res, &j, &changed)),
            ["spec.template"]
        );
    }

    #[test]
    fn cronjob_defaults_and_schedule() {
        let res = by_kind("batch/v1", "CronJob").unwrap();
        let mut cj = json!({"metadata": {"name": "hello"}, "spec": {"schedule": "@hourly",
            "jobTemplate": {"spec": {"template": pod_template(json!({}), "OnFailure")}}}});
        default(res, &mut cj);
        assert_eq!(cj["spec"]["concurrencyPolicy"], "Allow");
        assert_eq!(cj["spec"]["suspend"], false);
        assert_eq!(cj["spec"]["successfulJobsHistoryLimit"], 3);
        assert_eq!(cj["spec"]["failedJobsHistoryLimit"], 1);
        assert!(validate(res, &cj).is_empty(), "{:?}", validate(res, &cj));
        cj["spec"]["schedule"] = json!("61 * * * *");
        let c = validate(res, &cj);
        assert_eq!(fields(&c), ["spec.schedule"]);
        assert_eq!(
            c[0].message,
            "Invalid value: \"61 * * * *\": end of range (61) above maximum (59): 61"
        );
    }

    fn b64(s: &str) -> String {
        use base64::Engine as _;
        base64::engine::general_purpose::STANDARD.encode(s)
    }

    /// ValidateSecret's per-type rules: the keys each type needs, worded as kube words them.
    #[test]
    fn secret_types_require_their_keys() {
        let res = by_kind("v1", "Secret").unwrap();
        let secret =
            |ty: &str, data: Value| json!({"metadata": {"name": "s"}, "type": ty, "data": data});
        let check = |ty: &str, data: Value| -> Vec<String> {
            validate(res, &secret(ty, data))
                .into_iter()
                .map(|c| format!("{}: {}", c.field, c.message))
                .collect()
        };
        let json_cfg = b64(r#"{"auths": {"r.example": {"auth": "dTpw"}}}"#);
        let ok: &[(&str, Value)] = &[
            ("Opaque", json!({})),
            (
                "bootstrap.kubernetes.io/token",
                json!({"token-id": b64("abcdef")}),
            ),
            ("example.com/custom", json!({})),
            (
                "kubernetes.io/dockerconfigjson",
                json!({".dockerconfigjson": json_cfg}),
            ),
            (
                "kubernetes.io/dockercfg",
                json!({".dockercfg": b64("null")}),
            ),
            // Either is enough, even empty.
            ("kubernetes.io/basic-auth", json!({"password": ""})),
            (
                "kubernetes.io/ssh-auth",
                json!({"ssh-privatekey": b64("k")}),
            ),
            ("kubernetes.io/tls", json!({"tls.crt": "", "tls.key": ""})),
        ];
        for (ty, data) in ok {
            assert_eq!(check(ty, data.clone()), Vec::<String>::new(), "{ty}");
        }
        let bad: &[(&str, Value, &[&str])] = &[
            (
                "kubernetes.io/service-account-token",
                json!({}),
                &["metadata.annotations[kubernetes.io/service-account.name]: Required value"],
            ),
            (
                "kubernetes.io/dockerconfigjson",
                json!({"config.json": json_cfg}),
                &["data[.dockerconfigjson]: Required value"],
            ),
            (
                "kubernetes.io/dockerconfigjson",
                json!({".dockerconfigjson": b64(r#"{"auths": "#)}),
                &[
                    "data[.dockerconfigjson]: Invalid value: \"<secret contents redacted>\": \
                   not a JSON object: EOF while parsing a value at line 1 column 10",
                ],
            ),
            (
                "kubernetes.io/dockercfg",
                json!({".dockercfg": b64("[]")}),
                &[
                    "data[.dockercfg]: Invalid value: \"<secret contents redacted>\": not a \
                   JSON object: invalid type: sequence, expected a map at line 1 column 0",
                ],
            ),
            (
                "kubernetes.io/basic-auth",
                json!({"user": b64("u")}),
                &[
                    "data[username]: Required value",
                    "data[password]: Required value",
                ],
            ),
            (
                "kubernetes.io/ssh-auth",
                json!({"ssh-privatekey": ""}),
                &["data[ssh-privatekey]: Required value"],
            ),
            (
                "kubernetes.io/tls",
                json!({"tls.crt": b64("c")}),
                &["data[tls.key]: Required value"],
            ),
            (
                "kubernetes.io/tls",
                json!({}),
                &[
                    "data[tls.crt]: Required value",
                    "data[tls.key]: Required value",
                ],
            ),
        ];
        for (ty, data, want) in bad {
            assert_eq!(check(ty, data.clone()), *want, "{ty}");
        }
        // stringData counts: it is folded into data before validation.
        let mut s = json!({"metadata": {"name": "s"}, "type": "kubernetes.io/basic-auth",
            "stringData": {"username": "u"}});
        default(res, &mut s);
        assert!(validate(res, &s).is_empty(), "{:?}", validate(res, &s));
        // Stored before these rules (no tls.key): a metadata-only update still goes through,
        // one that touches the data is held to them.
        let old = secret("kubernetes.io/tls", json!({"tls.crt": b64("c")}));
        let mut relabelled = old.clone();
        relabelled["metadata"]["labels"] = json!({"a": "b"});
        assert!(validate_replacing(res, &relabelled, Some(&old)).is_empty());
        let mut changed = old.clone();
        changed["data"]["tls.crt"] = json!(b64("d"));
        assert_eq!(validate_replacing(res, &changed, Some(&old)).len(), 1);
    }

    /// A docker config must be a JSON object (or `null`, as Go's `json.Unmarshal` into a map
    /// takes it); anything else is refused with the parser's reason.
    #[test]
    fn docker_configs_must_be_json_objects() {
        let ok = r#" {"a": [1, -2.5e+3, "x\u00e9\n", true, false, null, {}], "b": {}} "#;
        assert_eq!(json_object_error(ok.as_bytes()), None);
        assert_eq!(json_object_error(b"null"), None);
        let deep = "[".repeat(200_000);
        for bad in [
            "",
            "{\"a\": 1",
            "{\"a\": 1,}",
            "{} {}",
            "12",
            "\"s\"",
            "[1]",
            &deep,
        ] {
            let why = json_object_error(bad.as_bytes()).unwrap_or_default();
            assert!(why.starts_with("not a JSON object: "), "{bad:.20}: {why}");
        }
        assert!(
            json_object_error(b"{\"a\": 1")
                .unwrap()
                .contains("EOF while parsing")
        );
    }

    /// ValidateSecretUpdate / ValidateConfigMapUpdate: a Secret's type never changes; an
    /// immutable object keeps its data and stays immutable, while its metadata may change.
    #[test]
    fn immutable_secrets_and_config_maps_keep_their_data() {
        let secret = by_kind("v1", "Secret").unwrap();
        let cm = by_kind("v1", "ConfigMap").unwrap();
        let msgs = |c: Vec<Cause>| -> Vec<String> {
            c.into_iter()
                .map(|c| format!("{}: {}", c.field, c.message))
                .collect()
        };
        let forbidden =
            |f: &str| format!("{f}: Forbidden: field is immutable when `immutable` is set");

        let old = json!({"metadata": {"name": "s"}, "type": "Opaque", "data": {"k": "dg=="}});
        let mut retyped = old.clone();
        retyped["type"] = json!("kubernetes.io/tls");
        assert_eq!(
            msgs(validate_update(secret, &old, &retyped)),
            ["type: Invalid value: \"kubernetes.io/tls\": field is immutable"]
        );
        // Not immutable: data may change, and immutable may be set.
        let mut changed = old.clone();
        changed["data"]["k"] = json!("dw==");
        changed["immutable"] = json!(true);
        assert!(validate_update(secret, &old, &changed).is_empty());

        let frozen = changed;
        let mut relabeled = frozen.clone();
        relabeled["metadata"]["labels"] = json!({"a": "b"});
        assert!(validate_update(secret, &frozen, &relabeled).is_empty());
        // The same bytes in another base64 spelling are no change.
        let mut respelled = frozen.clone();
        respelled["data"]["k"] = json!("dx==");
        assert!(validate_update(secret, &frozen, &respelled).is_empty());
        let mut thawed = frozen.clone();
        thawed["immutable"] = json!(false);
        thawed["data"]["k2"] = json!("eA==");
        thawed["type"] = json!("example.com/x");
        assert_eq!(
            msgs(validate_update(secret, &frozen, &thawed)),
            [
                "type: Invalid value: \"example.com/x\": field is immutable".to_string(),
                forbidden("immutable"),
                forbidden("data"),
            ]
        );
        let mut unset = frozen.clone();
        unset.as_object_mut().unwrap().remove("immutable");
        assert_eq!(
            msgs(validate_update(secret, &frozen, &unset)),
            [forbidden("immutable")]
        );
        // stringData is folded into data before the comparison.
        let mut via_strings = frozen.clone();
        via_strings["stringData"] = json!({"k": "other"});
        default(secret, &mut via_strings);
        assert_eq!(
            msgs(validate_update(secret, &frozen, &via_strings)),
            [forbidden("data")]
        );

        // ConfigMap: data and binaryData; no data is the same as an empty map.
        let frozen = json!({"metadata": {"name": "c"}, "immutable": true,
            "binaryData": {"b": "AAE="}});
        let mut empty = frozen.clone();
        empty["data"] = json!({});
        assert!(validate_update(cm, &frozen, &empty).is_empty());
        let mut changed = frozen.clone();
        changed["data"] = json!({"a": "1"});
        changed["binaryData"] = json!({});
        changed["immutable"] = json!(false);
        assert_eq!(
            msgs(validate_update(cm, &frozen, &changed)),
            [
                forbidden("immutable"),
                forbidden("data"),
                forbidden("binaryData")
            ]
        );
    }

    /// Through the API: a patch of an immutable object's data is a 422 Invalid naming every
    /// cause (update rules first, as kube orders them) and stores nothing; metadata patches
    /// and the delete go through.
    #[test]
    fn api_refuses_data_changes_of_immutable_objects() {
        use crate::ops::{Api, DeleteOptions, WriteOptions, system_clock};
        use kedge_core::patch::PatchType;
        use kedge_store::redb::{Options, RedbStore};
        use std::sync::Arc;
        let dir = tempfile::tempdir().unwrap();
        let store = RedbStore::open(&dir.path().join("s"), Options::default()).unwrap();
        let api = Api::new(Arc::new(store), system_clock());
        let w = WriteOptions::default();
        let (nsr, secrets, cms) = (
            by_kind("v1", "Namespace").unwrap(),
            by_kind("v1", "Secret").unwrap(),
            by_kind("v1", "ConfigMap").unwrap(),
        );
        api.create(nsr, "", json!({"metadata": {"name": "t"}}), &w)
            .unwrap();
        let patch = |res, name: &str, body: Value| {
            api.patch(res, "t", name, None, &body, PatchType::Merge, &w)
        };

        let tls = json!({"metadata": {"name": "web"}, "type": "kubernetes.io/tls",
            "immutable": true, "stringData": {"tls.crt": "C", "tls.key": "K"}});
        let created = api.create(secrets, "t", tls, &w).unwrap();
        let e = patch(secrets, "web", json!({"data": {"tls.key": null}})).unwrap_err();
        assert_eq!((e.code, e.reason), (422, "Invalid"));
        assert_eq!(
            e.message,
            "Secret \"web\" is invalid: [data: Forbidden: field is immutable when `immutable` \
             is set, data[tls.key]: Required value]"
        );
        let e = patch(secrets, "web", json!({"type": "Opaque", "immutable": null})).unwrap_err();
        assert_eq!(
            e.message,
            "Secret \"web\" is invalid: [type: Invalid value: \"Opaque\": field is immutable, \
             immutable: Forbidden: field is immutable when `immutable` is set]"
        );
        assert_eq!(api.get(secrets, "t", "web").unwrap(), created);
        let labeled = patch(secrets, "web", json!({"metadata": {"labels": {"a": "b"}}})).unwrap();
        assert_eq!(labeled["metadata"]["labels"], json!({"a": "b"}));
        assert_eq!(labeled["data"], created["data"]);

        // A missing key is refused on create too, and nothing is stored.
        let half = json!({"metadata": {"name": "half"}, "type": "kubernetes.io/tls",
            "stringData": {"tls.crt": "C"}});
        let e = api.create(secrets, "t", half, &w).unwrap_err();
        assert_eq!(
            e.message,
            "Secret \"half\" is invalid: data[tls.key]: Required value"
        );
        assert_eq!(api.get(secrets, "t", "half").unwrap_err().code, 404);

        let c = json!({"metadata": {"name": "cfg"}, "data": {"a": "1"}});
        api.create(cms, "t", c, &w).unwrap();
        patch(cms, "cfg", json!({"immutable": true})).unwrap();
        let e = patch(cms, "cfg", json!({"data": {"a": "2"}})).unwrap_err();
        assert_eq!(
            e.message,
            "ConfigMap \"cfg\" is invalid: data: Forbidden: field is immutable when `immutable` \
             is set"
        );
        assert_eq!(api.get(cms, "t", "cfg").unwrap()["data"], json!({"a": "1"}));
        api.delete(cms, "t", "cfg", &DeleteOptions::default())
            .unwrap();
        assert_eq!(api.get(cms, "t", "cfg").unwrap_err().code, 404);
    }

    #[test]
    fn qos() {
        assert_eq!(qos_class(&json!({"containers": [{}]})), "BestEffort");
        assert_eq!(
            qos_class(
                &json!({"containers": [{"resources": {"limits": {"cpu": "1", "memory": "1Gi"}}}]})
            ),
            "Guaranteed"
        );
        assert_eq!(
            qos_class(&json!({"containers": [{"resources": {"requests": {"cpu": "1"}}}]})),
            "Burstable"
        );
    }
}
