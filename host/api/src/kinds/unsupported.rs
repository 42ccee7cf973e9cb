//! What kedge stores but would not honour is refused, never accepted and ignored: each field
//! here gets a 422 naming it (Forbidden for a field kedge does not act on at all,
//! NotSupported listing the values it does honour). The README's table of honoured fields is
//! the same list, seen from the user's side; keep the two together.
//!
//! Like kube-apiserver's ratcheting validation, a rule applies to an update only when the
//! update changes the value it checks, so an object stored before kedge refused a field can
//! still be scaled, relabelled and deleted; and what a controller creates from its owner's
//! template (checked when the owner was stored) is not checked again.

use serde_json::Value;

use crate::error::Cause;
use kedge_core::resources::Resource;

/// Where a kind keeps its pod spec.
fn pod_spec_at(kind: &str) -> Option<&'static str> {
    match kind {
        "Pod" => Some("/spec"),
        "Deployment"
        | "ReplicaSet"
        | "ReplicationController"
        | "StatefulSet"
        | "DaemonSet"
        | "Job" => Some("/spec/template/spec"),
        "CronJob" => Some("/spec/jobTemplate/spec/template/spec"),
        "PodTemplate" => Some("/template/spec"),
        _ => None,
    }
}

/// Adds a cause for every unsupported field of `obj` (an object of `res`) that `old` did not
/// already have with the same value.
pub(super) fn check(res: &Resource, obj: &Value, old: Option<&Value>, causes: &mut Vec<Cause>) {
    // What a controller makes (a ReplicaSet's pods, a Deployment's ReplicaSets) comes from its
    // owner's template, checked when the owner was stored: a workload stored before a rule
    // existed keeps making its pods (refusing them would stop it replacing lost pods).
    if old.is_none() && controlled(obj) {
        return;
    }
    let mut c = Check { obj, old, causes };
    if let Some(at) = pod_spec_at(res.kind) {
        pod_spec(&mut c, at);
    }
    match res.kind {
        "Job" => job(&mut c, "/spec"),
        "CronJob" => job(&mut c, "/spec/jobTemplate/spec"),
        "StatefulSet" => statefulset(&mut c),
        "DaemonSet" => c.forbid_if(
            "/spec/updateStrategy/rollingUpdate/maxSurge",
            |v| !(v.is_null() || v == 0 || v == "0" || v == "0%"),
            "a DaemonSet's update does not surge on kedge: old pods go before new ones come \
             (maxUnavailable)",
        ),
        "Service" => service(&mut c),
        _ => {}
    }
}

/// Whether the object has a controller owner.
fn controlled(obj: &Value) -> bool {
    obj.pointer("/metadata/ownerReferences")
        .and_then(Value::as_array)
        .is_some_and(|refs| refs.iter().any(|r| r["controller"] == true))
}

struct Check<'a> {
    obj: &'a Value,
    old: Option<&'a Value>,
    causes: &'a mut Vec<Cause>,
}

/// Lists whose items have a unique `name`.
const NAMED_LISTS: [&str; 4] = [
    "containers",
    "initContainers",
    "ephemeralContainers",
    "volumes",
];

/// `ptr` in `new` as a pointer into `old`: the index of an item of a [`NAMED_LISTS`] list
/// becomes the index of the item with the same name in `old`. `None` when `old` has no such
/// item.
fn by_name(new: &Value, old: &Value, ptr: &str) -> Option<String> {
    let segs: Vec<&str> = ptr.split('/').collect();
    let mut out: Vec<String> = Vec::with_capacity(segs.len());
    for (i, seg) in segs.iter().enumerate() {
        let list_prefix = segs[..i].join("/");
        let is_index = i > 0
            && NAMED_LISTS.contains(&segs[i - 1])
            && !seg.is_empty()
            && seg.bytes().all(|b| b.is_ascii_digit());
        if !is_index {
            out.push(seg.to_string());
            continue;
        }
        let name = new
            .pointer(&format!("{list_prefix}/{seg}/name"))
            .and_then(Value::as_str);
        let old_list = old.pointer(&out.join("/")).and_then(Value::as_array)?;
        let j = match name {
            Some(name) => old_list
                .iter()
                .position(|x| x["name"].as_str() == Some(name))?,
            None => seg.parse().ok()?,
        };
        out.push(j.to_string());
    }
    Some(out.join("/"))
}

/// `/spec/containers/0/name` → `spec.containers[0].name`.
fn field_path(ptr: &str) -> String {
    let mut out = String::new();
    for seg in ptr.trim_start_matches('/').split('/') {
        let seg = seg.replace("~1", "/").replace("~0", "~");
        if seg.bytes().all(|b| b.is_ascii_digit()) && !seg.is_empty() {
            out.push_str(&format!("[{seg}]"));
        } else {
            if !out.is_empty() {
                out.push('.');
            }
            out.push_str(&seg);
        }
    }
    out
}

impl Check<'_> {
    fn value(&self, ptr: &str) -> Option<&Value> {
        self.obj.pointer(ptr).filter(|v| !v.is_null())
    }

    /// New or changed by this request. Containers and volumes are matched by name, not by
    /// position, so adding one before another does not make the other's fields look new.
    fn changed(&self, ptr: &str) -> bool {
        let Some(old) = self.old else {
            return true;
        };
        match by_name(self.obj, old, ptr) {
            Some(old_ptr) => old.pointer(&old_ptr) != self.obj.pointer(ptr),
            None => true,
        }
    }

    /// Refuses the field at `ptr` when `pred` holds for its (non-null) value.
    fn forbid_if(&mut self, ptr: &str, pred: impl Fn(&Value) -> bool, why: &str) {
        if let Some(v) = self.value(ptr)
            && pred(v)
            && self.changed(ptr)
        {
            self.causes.push(Cause::forbidden(
                field_path(ptr),
                format!("not supported by kedge: {why}"),
            ));
        }
    }

    /// Refuses the field at `ptr` when it is set to anything non-empty.
    fn forbid(&mut self, ptr: &str, why: &str) {
        self.forbid_if(ptr, non_empty, why);
    }

    /// Refuses a string value outside `allowed` (the values kedge honours).
    fn only(&mut self, ptr: &str, allowed: &[&str]) {
        if let Some(v) = self.value(ptr)
            && !v.as_str().is_some_and(|s| allowed.contains(&s))
            && self.changed(ptr)
        {
            let shown = v.as_str().map_or_else(|| v.to_string(), String::from);
            self.causes
                .push(Cause::unsupported(field_path(ptr), &shown, allowed));
        }
    }

    fn len(&self, ptr: &str) -> usize {
        self.value(ptr)
            .and_then(Value::as_array)
            .map_or(0, Vec::len)
    }
}

fn non_empty(v: &Value) -> bool {
    match v {
        Value::Null => false,
        Value::Bool(b) => *b,
        Value::String(s) => !s.is_empty(),
        Value::Array(a) => !a.is_empty(),
        Value::Object(o) => !o.is_empty(),
        Value::Number(n) => n.as_f64() != Some(0.0),
    }
}

const NO_FQDN_HOSTNAME: &str = "the pod's hostname is its short name (no FQDN hostnames)";

fn pod_spec(c: &mut Check, at: &str) {
    let p = |rest: &str| format!("{at}/{rest}");
    if c.old.is_none() {
        c.forbid(&p("ephemeralContainers"), "cannot be set on create");
    }
    c.forbid(
        &p("hostIPC"),
        "containers always get their own IPC namespace",
    );
    c.forbid(
        &p("hostPID"),
        "containers always get their own PID namespace",
    );
    c.forbid_if(
        &p("hostUsers"),
        |v| v == false,
        "user namespaces are not supported",
    );
    c.forbid(
        &p("shareProcessNamespace"),
        "each container has its own PID namespace (kubectl debug --copy-to needs \
         --share-processes=false)",
    );
    c.forbid(&p("setHostnameAsFQDN"), NO_FQDN_HOSTNAME);
    c.only(
        &p("dnsPolicy"),
        &["ClusterFirst", "ClusterFirstWithHostNet", "Default", "None"],
    );
    c.only(&p("os/name"), &["linux"]);
    // `overhead`: set from the pod's RuntimeClass and checked by its admission
    // (kinds::runtimeclass::admit); the scheduler counts it.
    // `priority`, `priorityClassName`, `preemptionPolicy`: resolved by the Priority admission
    // (kinds::priorityclass::admit); the scheduler orders and preempts by them.
    c.forbid(
        &p("resourceClaims"),
        "dynamic resource allocation is not supported",
    );
    c.forbid(&p("resources"), "pod-level resources are not supported");
    let sc = |rest: &str| format!("{at}/securityContext/{rest}");
    for f in [
        "fsGroup",
        "fsGroupChangePolicy",
        "supplementalGroups",
        "supplementalGroupsPolicy",
        "sysctls",
        "seLinuxOptions",
        "seLinuxChangePolicy",
        "windowsOptions",
    ] {
        c.forbid(
            &sc(f),
            "this security setting is not applied by kedge's node agent",
        );
    }
    security(c, &format!("{at}/securityContext"));
    let host_network = c.obj.pointer(&p("hostNetwork")) == Some(&Value::Bool(true));
    for (list, init) in [("containers", false), ("initContainers", true)] {
        for i in 0..c.len(&p(list)) {
            container(c, &format!("{at}/{list}/{i}"), init);
            if host_network {
                host_network_ports(c, &format!("{at}/{list}/{i}"));
            }
        }
    }
    for i in 0..c.len(&p("volumes")) {
        volume(c, &format!("{at}/volumes/{i}"));
    }
}

/// The security settings pods and containers share.
fn security(c: &mut Check, at: &str) {
    let f = |rest: &str| format!("{at}/{rest}");
    c.only(&f("seccompProfile/type"), &["Unconfined"]);
    c.only(&f("appArmorProfile/type"), &["Unconfined"]);
}

/// A `hostNetwork` pod's ports are the node's own: there is no mapping (kube-apiserver
/// requires `hostPort` to equal `containerPort` there) and no address to bind one to.
fn host_network_ports(c: &mut Check, at: &str) {
    for i in 0..c.len(&format!("{at}/ports")) {
        let port = format!("{at}/ports/{i}");
        let container_port = c.obj.pointer(&format!("{port}/containerPort")).cloned();
        c.forbid_if(
            &format!("{port}/hostPort"),
            |v| v.as_u64() != Some(0) && Some(v) != container_port.as_ref(),
            "with hostNetwork a hostPort must equal its containerPort",
        );
        c.forbid(
            &format!("{port}/hostIP"),
            "with hostNetwork the container binds the node's addresses itself",
        );
    }
}

fn container(c: &mut Check, at: &str, init: bool) {
    let f = |rest: &str| format!("{at}/{rest}");
    let _ = init;
    for hook in ["postStart", "preStop"] {
        c.forbid(
            &f(&format!("lifecycle/{hook}/tcpSocket")),
            "a tcpSocket lifecycle handler does nothing in Kubernetes either (it is kept for \
             compatibility only): use exec, httpGet or sleep",
        );
    }
    c.forbid(
        &f("lifecycle/stopSignal"),
        "containers are stopped with SIGTERM",
    );
    c.forbid(&f("resizePolicy"), "a pod's resources cannot be resized");
    c.forbid(
        &f("resources/claims"),
        "dynamic resource allocation is not supported",
    );
    for kind in ["limits", "requests"] {
        let names: Vec<String> = c
            .value(&f(&format!("resources/{kind}")))
            .and_then(Value::as_object)
            .map(|m| m.keys().cloned().collect())
            .unwrap_or_default();
        for name in names {
            if name != "cpu" && name != "memory" {
                c.forbid(
                    &f(&format!(
                        "resources/{kind}/{}",
                        name.replace('~', "~0").replace('/', "~1")
                    )),
                    "only cpu and memory are scheduled and enforced",
                );
            }
        }
    }
    let sc = |rest: &str| format!("{at}/securityContext/{rest}");
    c.forbid(&sc("privileged"), "privileged containers are not supported");
    // Pods share the node's network (and more): only Kubernetes' baseline capabilities may
    // be added.
    let add = sc("capabilities/add");
    for i in 0..c.len(&add) {
        c.forbid_if(
            &format!("{add}/{i}"),
            |v| {
                let name = v.as_str().unwrap_or_default().to_ascii_uppercase();
                let name = name.strip_prefix("CAP_").unwrap_or(&name).to_string();
                !BASELINE_CAPABILITIES.contains(&name.as_str())
            },
            "only the baseline capabilities may be added (AUDIT_WRITE, CHOWN, DAC_OVERRIDE, \
             FOWNER, FSETID, KILL, MKNOD, NET_BIND_SERVICE, SETFCAP, SETGID, SETPCAP, SETUID, \
             SYS_CHROOT): pods share the node's network namespace",
        );
    }
    c.only(&sc("procMount"), &["Default"]);
    for f in ["seLinuxOptions", "windowsOptions"] {
        c.forbid(
            &sc(f),
            "this security setting is not applied by kedge's node agent",
        );
    }
    security(c, &format!("{at}/securityContext"));
    c.forbid(&f("volumeDevices"), "there are no block volumes");
    for i in 0..c.len(&f("volumeMounts")) {
        let m = |rest: &str| f(&format!("volumeMounts/{i}/{rest}"));
        c.forbid(&m("subPathExpr"), "use subPath");
        c.only(&m("mountPropagation"), &["None"]);
        c.only(&m("recursiveReadOnly"), &["Disabled", "IfPossible"]);
    }
    for i in 0..c.len(&f("env")) {
        let e = |rest: &str| f(&format!("env/{i}/valueFrom/{rest}"));
        field_ref(c, &e("fieldRef/fieldPath"), false);
        resource_ref(c, &e("resourceFieldRef/resource"));
    }
}

/// The capabilities the Pod Security Standards' baseline profile lets a container add.
const BASELINE_CAPABILITIES: [&str; 13] = [
    "AUDIT_WRITE",
    "CHOWN",
    "DAC_OVERRIDE",
    "FOWNER",
    "FSETID",
    "KILL",
    "MKNOD",
    "NET_BIND_SERVICE",
    "SETFCAP",
    "SETGID",
    "SETPCAP",
    "SETUID",
    "SYS_CHROOT",
];

/// The volume sources kedge's node agent provides.
const VOLUMES: [&str; 7] = [
    "emptyDir",
    "hostPath",
    "persistentVolumeClaim",
    "configMap",
    "secret",
    "projected",
    "downwardAPI",
];

fn volume(c: &mut Check, at: &str) {
    let keys: Vec<String> = c
        .value(at)
        .and_then(Value::as_object)
        .map(|m| m.keys().filter(|k| *k != "name").cloned().collect())
        .unwrap_or_default();
    for k in keys {
        if !VOLUMES.contains(&k.as_str()) {
            c.forbid_if(
                &format!("{at}/{k}"),
                |_| true,
                "the node agent provides emptyDir, hostPath, persistentVolumeClaim, configMap, \
                 secret, downwardAPI and projected (configMap, secret and downwardAPI sources) \
                 volumes",
            );
        }
    }
    c.only(&format!("{at}/emptyDir/medium"), &["", "Memory"]);
    c.forbid(
        &format!("{at}/emptyDir/sizeLimit"),
        "emptyDir size is not limited",
    );
    c.only(
        &format!("{at}/hostPath/type"),
        &[
            "",
            "DirectoryOrCreate",
            "Directory",
            "File",
            "Socket",
            "CharDevice",
            "BlockDevice",
        ],
    );
    for i in 0..c.len(&format!("{at}/projected/sources")) {
        let s = format!("{at}/projected/sources/{i}");
        for k in ["serviceAccountToken", "clusterTrustBundle"] {
            c.forbid(
                &format!("{s}/{k}"),
                "projected volumes take configMap, secret and downwardAPI sources",
            );
        }
        downward_items(c, &format!("{s}/downwardAPI"));
    }
    downward_items(c, &format!("{at}/downwardAPI"));
}

/// The items of a downwardAPI volume or projected source.
fn downward_items(c: &mut Check, at: &str) {
    for i in 0..c.len(&format!("{at}/items")) {
        let item = format!("{at}/items/{i}");
        field_ref(c, &format!("{item}/fieldRef/fieldPath"), true);
        resource_ref(c, &format!("{item}/resourceFieldRef/resource"));
    }
}

/// The `fieldRef` paths the node agent resolves (whole label and annotation maps only in
/// files).
fn field_ref(c: &mut Check, ptr: &str, volume: bool) {
    let Some(path) = c.value(ptr).and_then(Value::as_str).map(String::from) else {
        return;
    };
    let subscript = ["metadata.labels['", "metadata.annotations['"]
        .iter()
        .any(|p| path.starts_with(p) && path.ends_with("']"));
    if subscript {
        return;
    }
    let mut allowed = kedge_core::pod::FIELD_REF_PATHS.to_vec();
    if volume {
        allowed.extend(kedge_core::pod::FILE_FIELD_REF_PATHS);
    }
    c.only(ptr, &allowed);
}

/// The resources a `resourceFieldRef` may name.
fn resource_ref(c: &mut Check, ptr: &str) {
    c.only(
        ptr,
        &[
            "limits.cpu",
            "limits.memory",
            "requests.cpu",
            "requests.memory",
        ],
    );
}

fn job(c: &mut Check, at: &str) {
    let p = |rest: &str| format!("{at}/{rest}");
    for (f, why) in [
        ("backoffLimitPerIndex", "the backoff limit is per Job"),
        ("maxFailedIndexes", "the backoff limit is per Job"),
        (
            "podFailurePolicy",
            "every failed pod counts against the backoff limit",
        ),
        (
            "successPolicy",
            "a Job succeeds when its completions succeed",
        ),
    ] {
        c.forbid(&p(f), why);
    }
    c.only(&p("podReplacementPolicy"), &["TerminatingOrFailed"]);
    c.only(&p("managedBy"), &["kubernetes.io/job-controller"]);
}

fn statefulset(c: &mut Check) {
    c.only(
        "/spec/persistentVolumeClaimRetentionPolicy/whenDeleted",
        &["Retain"],
    );
    c.only(
        "/spec/persistentVolumeClaimRetentionPolicy/whenScaled",
        &["Retain"],
    );
    c.forbid("/spec/ordinals/start", "ordinals start at 0");
}

fn service(c: &mut Check) {
    let ipv6 = |v: &Value| v.as_str().is_some_and(|s| s.contains(':'));
    c.forbid_if("/spec/clusterIP", ipv6, "the service network is IPv4 only");
    for i in 0..c.len("/spec/clusterIPs") {
        c.forbid_if(
            &format!("/spec/clusterIPs/{i}"),
            ipv6,
            "the service network is IPv4 only",
        );
    }
    for i in 0..c.len("/spec/ipFamilies") {
        c.only(&format!("/spec/ipFamilies/{i}"), &["IPv4"]);
    }
    let headless_selectorless = c.obj.pointer("/spec/clusterIP") == Some(&Value::from("None"))
        && c.value("/spec/selector").is_none_or(|s| !non_empty(s));
    if !headless_selectorless {
        c.only("/spec/ipFamilyPolicy", &["SingleStack", "PreferDualStack"]);
    }
    c.forbid(
        "/spec/externalIPs",
        "kedge's service proxy does not serve external IPs",
    );
    c.forbid(
        "/spec/healthCheckNodePort",
        "kedge's ServiceLB listens on the nodes themselves and needs no health check port",
    );
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::kinds::test_support::*;
    use serde_json::json;

    fn pod(spec: Value) -> Value {
        let mut p = json!({"metadata": {"name": "p"},
            "spec": {"containers": [{"name": "c", "image": "i"}]}});
        for (k, v) in spec.as_object().unwrap() {
            p["spec"][k] = v.clone();
        }
        p
    }

    fn container(fields: Value) -> Value {
        let mut c = json!({"name": "c", "image": "i"});
        for (k, v) in fields.as_object().unwrap() {
            c[k] = v.clone();
        }
        pod(json!({"containers": [c]}))
    }

    fn refused(kind: (&str, &str), obj: &Value) -> Vec<(String, &'static str)> {
        let res = by_kind(kind.0, kind.1).unwrap();
        let mut d = obj.clone();
        default(res, &mut d);
        validate(res, &d)
            .into_iter()
            .map(|c| (c.field, c.reason))
            .collect()
    }

    const POD: (&str, &str) = ("v1", "Pod");

    #[test]
    fn paths_read_as_kubernetes_prints_them() {
        assert_eq!(
            field_path("/spec/containers/0/resources/limits/nvidia.com~1gpu"),
            "spec.containers[0].resources.limits.nvidia.com/gpu"
        );
    }

    /// Each field kedge would not honour is refused, naming it; the defaults (and what
    /// kubectl sends) pass.
    #[test]
    fn unhonoured_pod_fields_are_refused() {
        let forbidden = "FieldValueForbidden";
        let unsupported = "FieldValueNotSupported";
        let cases = [
            (pod(json!({"hostPID": true})), "spec.hostPID", forbidden),
            (
                pod(json!({"shareProcessNamespace": true})),
                "spec.shareProcessNamespace",
                forbidden,
            ),
            (
                pod(json!({"setHostnameAsFQDN": true})),
                "spec.setHostnameAsFQDN",
                forbidden,
            ),
            (
                pod(
                    json!({"hostNetwork": true, "containers": [{"name": "c", "image": "i",
                    "ports": [{"containerPort": 80, "hostPort": 8080}]}]}),
                ),
                "spec.containers[0].ports[0].hostPort",
                forbidden,
            ),
            (
                pod(json!({"securityContext": {"sysctls": [{"name": "a", "value": "1"}]}})),
                "spec.securityContext.sysctls",
                forbidden,
            ),
            (
                pod(json!({"securityContext": {"seccompProfile": {"type": "RuntimeDefault"}}})),
                "spec.securityContext.seccompProfile.type",
                unsupported,
            ),
            (
                pod(json!({"volumes": [{"name": "v", "nfs": {"server": "s", "path": "/"}}]})),
                "spec.volumes[0].nfs",
                forbidden,
            ),
            (
                pod(json!({"volumes": [{"name": "v", "emptyDir": {"sizeLimit": "1Gi"}}]})),
                "spec.volumes[0].emptyDir.sizeLimit",
                forbidden,
            ),
            (
                pod(json!({"volumes": [{"name": "v", "projected": {"sources": [
                {"serviceAccountToken": {"path": "t"}}]}}]})),
                "spec.volumes[0].projected.sources[0].serviceAccountToken",
                forbidden,
            ),
            (
                container(json!({"securityContext": {"privileged": true}})),
                "spec.containers[0].securityContext.privileged",
                forbidden,
            ),
            (
                container(json!({"securityContext": {"capabilities": {"add": ["ALL"]}}})),
                "spec.containers[0].securityContext.capabilities.add[0]",
                forbidden,
            ),
            (
                container(json!({"lifecycle": {"preStop": {"tcpSocket": {"port": 1}}}})),
                "spec.containers[0].lifecycle.preStop.tcpSocket",
                forbidden,
            ),
            (
                container(json!({"resources": {"limits": {"nvidia.com/gpu": "1"}}})),
                "spec.containers[0].resources.limits.nvidia.com/gpu",
                forbidden,
            ),
            (
                container(
                    json!({"volumeMounts": [{"name": "v", "mountPath": "/v", "subPathExpr": "$(X)"}]}),
                ),
                "spec.containers[0].volumeMounts[0].subPathExpr",
                forbidden,
            ),
            (
                container(
                    json!({"env": [{"name": "A", "valueFrom": {"fieldRef": {"fieldPath": "metadata.generation"}}}]}),
                ),
                "spec.containers[0].env[0].valueFrom.fieldRef.fieldPath",
                unsupported,
            ),
        ];
        for (obj, field, reason) in cases {
            let got = refused(POD, &obj);
            assert!(
                got.contains(&(field.to_string(), reason)),
                "{field}: {got:?} for {obj}"
            );
        }
        // Defaults and what kubectl sends pass.
        let fine = pod(json!({"dnsPolicy": "ClusterFirst", "securityContext": {},
            "hostNetwork": true, "priority": 0, "enableServiceLinks": true,
            "volumes": [{"name": "v", "emptyDir": {"medium": "Memory"}},
                {"name": "w", "projected": {"sources": [{"configMap": {"name": "c"}}]}}],
            "containers": [{"name": "c", "image": "i", "resources": {"limits": {"cpu": "1"}},
                "ports": [{"containerPort": 80, "hostPort": 80}],
                "securityContext": {"allowPrivilegeEscalation": false, "privileged": false,
                    "readOnlyRootFilesystem": true, "runAsNonRoot": true,
                    "capabilities": {"drop": ["ALL"], "add": ["NET_BIND_SERVICE"]},
                    "seccompProfile": {"type": "Unconfined"}}}]}));
        assert_eq!(refused(POD, &fine), vec![]);
    }

    #[test]
    fn workload_templates_services_and_jobs_are_checked_too() {
        let dep = json!({"metadata": {"name": "d"}, "spec": {"selector": {"matchLabels": {"a": "b"}},
            "template": {"metadata": {"labels": {"a": "b"}},
                "spec": {"hostIPC": true, "containers": [{"name": "c", "image": "i"}]}}}});
        assert!(
            refused(("apps/v1", "Deployment"), &dep)
                .contains(&("spec.template.spec.hostIPC".into(), "FieldValueForbidden"))
        );
        let job = json!({"metadata": {"name": "j"}, "spec": {"podFailurePolicy": {"rules": []},
            "template": {"spec": {"restartPolicy": "Never",
                "containers": [{"name": "c", "image": "i"}]}}}});
        assert!(
            refused(("batch/v1", "Job"), &job)
                .contains(&("spec.podFailurePolicy".into(), "FieldValueForbidden"))
        );
        let svc = json!({"metadata": {"name": "s"}, "spec": {"externalIPs": ["1.2.3.4"],
            "ports": [{"port": 80}], "selector": {"a": "b"}}});
        assert_eq!(
            refused(("v1", "Service"), &svc),
            vec![("spec.externalIPs".to_string(), "FieldValueForbidden")]
        );
        // What the service proxy honours passes.
        let svc = json!({"metadata": {"name": "s"}, "spec": {"sessionAffinity": "ClientIP",
            "externalTrafficPolicy": "Local", "internalTrafficPolicy": "Local",
            "ports": [{"port": 80}], "selector": {"a": "b"}}});
        assert_eq!(refused(("v1", "Service"), &svc), vec![]);
        let svc = json!({"metadata": {"name": "s"}, "spec": {"ports": [{"port": 80}],
            "selector": {"a": "b"}}});
        assert_eq!(refused(("v1", "Service"), &svc), vec![]);
    }

    #[test]
    fn only_baseline_capabilities_may_be_added_and_owned_objects_pass() {
        let add =
            |cap: &str| container(json!({"securityContext": {"capabilities": {"add": [cap]}}}));
        assert_eq!(
            refused(POD, &add("NET_ADMIN")),
            vec![(
                "spec.containers[0].securityContext.capabilities.add[0]".to_string(),
                "FieldValueForbidden"
            )]
        );
        assert_eq!(refused(POD, &add("net_bind_service")), vec![]);
        let mut owned = pod(json!({"hostPID": true}));
        owned["metadata"]["ownerReferences"] = json!([{"apiVersion": "apps/v1",
            "kind": "ReplicaSet", "name": "rs", "uid": "u", "controller": true}]);
        assert_eq!(refused(POD, &owned), vec![], "made from a checked template");
    }

    /// Ratcheting matches containers and volumes by name: one added in front of a container
    /// holding a refused value (stored before the rule) does not make it look new.
    #[test]
    fn rules_ratchet_by_name_not_position() {
        let res = by_kind(POD.0, POD.1).unwrap();
        let old = json!({"metadata": {"name": "p"}, "spec": {"containers": [
            {"name": "app", "image": "i", "securityContext": {"privileged": true}}]}});
        let mut new = old.clone();
        new["spec"]["containers"] = json!([{"name": "first", "image": "i"},
            {"name": "app", "image": "i", "securityContext": {"privileged": true}}]);
        let mut causes = Vec::new();
        check(res, &new, Some(&old), &mut causes);
        assert!(causes.is_empty(), "{causes:?}");
        new["spec"]["containers"][0]["securityContext"] = json!({"privileged": true});
        check(res, &new, Some(&old), &mut causes);
        assert_eq!(causes.len(), 1, "the new container's is new: {causes:?}");
        assert_eq!(
            causes[0].field,
            "spec.containers[0].securityContext.privileged"
        );
    }

    /// An object stored before a rule existed can still be updated when the update leaves
    /// the refused field as it was.
    #[test]
    fn rules_ratchet_on_update() {
        let res = by_kind(POD.0, POD.1).unwrap();
        let old = pod(json!({"hostPID": true}));
        let mut new = old.clone();
        new["metadata"]["labels"] = json!({"a": "b"});
        let mut causes = Vec::new();
        check(res, &new, Some(&old), &mut causes);
        assert!(causes.is_empty(), "{causes:?}");
        check(res, &new, None, &mut causes);
        assert_eq!(causes.len(), 1);
    }
}
