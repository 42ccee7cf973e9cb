//! The `Plugin` kind (`plugins.kedge.io/v1`): a controller or the scheduler as an API object.
//!
//! The spec names the code (`source`), what the plugin may touch (`watches`, `writes`: a grant
//! its own registration must fit in) and its sandbox limits. The host's plugin manager
//! ([`super::manager`]) compiles and validates each new generation and swaps it in; `status`
//! reports the version running, the last swap and why a version was refused or rolled back.
//!
//! The types are the schema: they decode request bodies (unknown fields are reported as for the
//! Kubernetes kinds) and, through schemars, document the kind for `kubectl explain`.

use k8s_openapi::apimachinery::pkg::api::resource::Quantity;
use k8s_openapi::apimachinery::pkg::apis::meta::v1::{Condition, ObjectMeta, Time};
use schemars::JsonSchema;
use serde::{Deserialize, Serialize};
use serde_json::{Value, json};

use crate::error::Cause;
use crate::kinds::table_fmt::{CREATED, Column, age, col, name, s};
use crate::kinds::{self, KindRules, Typed};
use kedge_core::resources::{self, Resource};

/// Reconciles a new version must complete without trapping before it replaces the previous
/// one for good.
pub const DEFAULT_PROBATION: i32 = 3;

/// A controller or scheduler run by the kedge plugin host as a sandboxed WebAssembly
/// component. Applying a new version swaps it in while the cluster runs; a version that fails
/// to compile, to register, or traps on its first reconciles is rolled back.
#[derive(Clone, Debug, Default, Serialize, Deserialize, JsonSchema)]
#[serde(rename_all = "camelCase")]
#[schemars(rename = "io.kedge.plugins.v1.Plugin")]
pub struct PluginObject {
    /// APIVersion defines the versioned schema of this representation of an object.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub api_version: Option<String>,
    /// Kind is a string value representing the REST resource this object represents.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub kind: Option<String>,
    /// Standard object's metadata.
    #[serde(default)]
    pub metadata: ObjectMeta,
    /// What to run and what it may touch.
    pub spec: PluginSpec,
    /// The version running and the outcome of the last swap.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub status: Option<PluginStatus>,
}

/// What to run and what it may touch.
#[derive(Clone, Debug, Default, Serialize, Deserialize, JsonSchema)]
#[serde(rename_all = "camelCase")]
#[schemars(rename = "io.kedge.plugins.v1.PluginSpec")]
pub struct PluginSpec {
    /// `controller` (default) or `scheduler`. A scheduler's primary kind must be v1/Pod and it
    /// must be allowed to write v1/Pod (for bindings).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub role: Option<String>,
    /// Where the component comes from: exactly one of builtin, file, image.
    pub source: PluginSource,
    /// Kinds the plugin may watch and read. Its registration's primary, owned and read kinds
    /// must all be here, or the version is refused.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub watches: Vec<PluginKindRef>,
    /// Kinds the plugin may create, update, patch and delete (checked on every call).
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub writes: Vec<PluginKindRef>,
    /// Sandbox limits of each call.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub limits: Option<PluginLimits>,
    /// Reconciles a new version must complete without trapping before the previous version is
    /// dropped; a trap before that rolls back. Default 3; 0 swaps without probation.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub probation_reconciles: Option<i32>,
}

/// Where the component comes from. Exactly one of builtin, file, image.
#[derive(Clone, Debug, Default, PartialEq, Eq, Serialize, Deserialize, JsonSchema)]
#[serde(rename_all = "camelCase")]
#[schemars(rename = "io.kedge.plugins.v1.PluginSource")]
pub struct PluginSource {
    /// One of the plugins built into this kedge binary (`replicaset`, `scheduler`, ...).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub builtin: Option<String>,
    /// Absolute path of a .wasm component on the server's filesystem.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub file: Option<String>,
    /// OCI reference of a Wasm artifact (as pushed by `kedge push`), pulled by the server with
    /// its registries.yaml credentials and trust, plus `imagePullSecret`.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub image: Option<String>,
    /// Name of a `kubernetes.io/dockerconfigjson` Secret in kube-system holding credentials
    /// for `image`.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub image_pull_secret: Option<String>,
    /// `sha256:<hex>` the component's bytes must hash to; a mismatch refuses the version.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub digest: Option<String>,
}

impl PluginSource {
    /// How the source reads in status and logs: `builtin:replicaset`, `file:/x.wasm`,
    /// `image:reg/x:v2`.
    pub fn describe(&self) -> String {
        match (&self.builtin, &self.file, &self.image) {
            (Some(b), _, _) => format!("builtin:{b}"),
            (_, Some(f), _) => format!("file:{f}"),
            (_, _, Some(i)) => format!("image:{i}"),
            _ => "none".into(),
        }
    }
}

/// A kind, as manifests name it.
#[derive(Clone, Debug, Default, PartialEq, Eq, Serialize, Deserialize, JsonSchema)]
#[serde(rename_all = "camelCase")]
#[schemars(rename = "io.kedge.plugins.v1.PluginKindRef")]
pub struct PluginKindRef {
    /// `v1`, `apps/v1`, `batch/v1`, ...
    pub api_version: String,
    /// `Pod`, `ReplicaSet`, ...
    pub kind: String,
}

/// Sandbox limits of each call into the plugin.
#[derive(Clone, Debug, Default, Serialize, Deserialize, JsonSchema)]
#[serde(rename_all = "camelCase")]
#[schemars(rename = "io.kedge.plugins.v1.PluginLimits")]
pub struct PluginLimits {
    /// Wall-clock budget of one reconcile, host calls included (10 to 60000; default: the
    /// server's --plugin-deadline-ms).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub call_deadline_milliseconds: Option<i64>,
    /// Linear memory cap of one instance, e.g. 64Mi (1Mi to 4Gi; default: the server's
    /// --plugin-memory-mib).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub memory: Option<Quantity>,
}

/// The version running and the outcome of the last swap.
#[derive(Clone, Debug, Default, Serialize, Deserialize, JsonSchema)]
#[serde(rename_all = "camelCase")]
#[schemars(rename = "io.kedge.plugins.v1.PluginStatus")]
pub struct PluginStatus {
    /// The generation the manager last acted on (swapped in or refused).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub observed_generation: Option<i64>,
    /// `Active`, `Probation` (a new version proving itself), `Failed` (nothing runs).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub phase: Option<String>,
    /// sha256 of the component running now.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub active_digest: Option<String>,
    /// Where the running component came from.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub active_source: Option<String>,
    /// The generation whose spec the running component came from.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub active_generation: Option<i64>,
    /// When the running version was swapped in.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub last_swap_time: Option<Time>,
    /// Fetch, compile and validation time of the last version swapped in.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub last_swap_milliseconds: Option<i64>,
    /// `Ready` (the spec's generation runs and passed probation) and `Healthy` (calls are not
    /// trapping).
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub conditions: Vec<Condition>,
    /// The server replica running the plugin: with several servers, the holder of its Lease
    /// `kube-system/kedge-plugin-<name>`.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub holder: Option<String>,
}

/// Names accepted in `spec.source.builtin`: the plugins the server embeds (the server's tests
/// check that this list and its embedded set agree).
pub const BUILTIN_NAMES: &[&str] = &[
    "scheduler",
    "replicaset",
    "replicationcontroller",
    "deployment",
    "job",
    "cronjob",
    "daemonset",
    "statefulset",
    "nodelifecycle",
    "endpoints",
    "garbagecollector",
    "serviceaccount",
    "namespace",
    "disruption",
    "localpath",
    "servicelb",
    "hpa",
];

/// Whether a kind reference is the wildcard (`*`/`*`).
pub fn is_wildcard(api_version: &str, kind: &str) -> bool {
    api_version == "*" && kind == "*"
}

/// The kind's rules, as [`crate::kinds::rules`] finds them.
pub(crate) struct Rules;

static COLUMNS: [Column; 9] = [
    col("Name", "string", 0),
    col("Role", "string", 0),
    col("Source", "string", 0),
    col("Digest", "string", 0),
    col("Phase", "string", 0),
    col("Age", "string", 0),
    col("Holder", "string", 1),
    col("Ready", "string", 1),
    col("Message", "string", 1),
];

impl KindRules for Rules {
    fn default(&self, obj: &mut Value) {
        default(obj);
    }

    fn prepare_update(&self, old: &Value, new: &mut Value) {
        prepare_update(old, new);
    }

    fn validate(
        &self,
        _res: &Resource,
        obj: &Value,
        _old: Option<&Value>,
        causes: &mut Vec<Cause>,
    ) {
        validate(obj, causes);
    }

    fn columns(&self) -> &'static [Column] {
        &COLUMNS
    }

    fn cells(&self, o: &Value, now: chrono::DateTime<chrono::Utc>) -> Vec<Value> {
        let ready = o
            .pointer("/status/conditions")
            .and_then(Value::as_array)
            .and_then(|cs| cs.iter().find(|c| c["type"] == "Ready"));
        let source = serde_json::from_value::<PluginSource>(
            o.pointer("/spec/source").cloned().unwrap_or(Value::Null),
        )
        .map(|s| s.describe())
        .unwrap_or_default();
        let digest = s(o, "/status/activeDigest");
        let short = digest
            .strip_prefix("sha256:")
            .map_or(digest, |h| &h[..h.len().min(12)]);
        vec![
            name(o),
            json!(s(o, "/spec/role")),
            json!(source),
            json!(short),
            json!(s(o, "/status/phase")),
            json!(age(o, CREATED, now)),
            json!(s(o, "/status/holder")),
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

    fn typed(&self) -> Option<&'static dyn Typed> {
        kinds::typed::<PluginObject>()
    }
}

/// Fills in the defaults Kubernetes users see in `kubectl get -o yaml`.
pub fn default(obj: &mut Value) {
    let Some(spec) = obj.get_mut("spec").and_then(Value::as_object_mut) else {
        return;
    };
    spec.entry("role")
        .or_insert_with(|| Value::String("controller".into()));
    spec.entry("probationReconciles")
        .or_insert_with(|| Value::from(DEFAULT_PROBATION));
}

/// `spec.source` is a union: a patch that sets one source on top of another (a client-side
/// `kubectl apply` of `file:` over the built-in object, which carries no last-applied
/// annotation) switches to the new one, as kube-apiserver drops the fields of a union member
/// that is no longer selected. Sources the update does not change are dropped only when
/// exactly one source changed.
pub(crate) fn prepare_update(old: &Value, new: &mut Value) {
    const SOURCES: [&str; 3] = ["builtin", "file", "image"];
    let old_src = old.pointer("/spec/source");
    let Some(src) = new
        .pointer_mut("/spec/source")
        .and_then(Value::as_object_mut)
    else {
        return;
    };
    let set: Vec<&str> = SOURCES
        .into_iter()
        .filter(|k| src.get(*k).is_some_and(|v| !v.is_null()))
        .collect();
    if set.len() < 2 {
        return;
    }
    let changed: Vec<&str> = set
        .iter()
        .copied()
        .filter(|k| old_src.and_then(|o| o.get(*k)) != src.get(*k))
        .collect();
    let [keep] = changed.as_slice() else {
        return;
    };
    for k in SOURCES {
        if k != *keep {
            src.remove(k);
        }
    }
    if *keep != "image" {
        src.remove("imagePullSecret");
    }
}

fn is_sha256(d: &str) -> bool {
    d.strip_prefix("sha256:").is_some_and(|h| {
        h.len() == 64
            && h.bytes()
                .all(|b| b.is_ascii_digit() || (b'a'..=b'f').contains(&b))
    })
}

/// Field-level validation, as kube-apiserver reports it (422 with causes).
pub fn validate(obj: &Value, causes: &mut Vec<Cause>) {
    let Some(spec) = obj.get("spec") else {
        causes.push(Cause::required("spec"));
        return;
    };
    let typed: PluginSpec = match serde_json::from_value(spec.clone()) {
        Ok(s) => s,
        // Type errors are reported by the typed decoding before validation runs.
        Err(_) => return,
    };
    match typed.role.as_deref() {
        None | Some("controller" | "scheduler") => {}
        Some(r) => causes.push(Cause::unsupported(
            "spec.role",
            r,
            &["controller", "scheduler"],
        )),
    }
    let s = &typed.source;
    let set = [s.builtin.is_some(), s.file.is_some(), s.image.is_some()]
        .iter()
        .filter(|x| **x)
        .count();
    if set != 1 {
        causes.push(Cause::invalid(
            "spec.source",
            &s.describe(),
            "exactly one of builtin, file, image must be set",
        ));
    }
    if let Some(b) = &s.builtin
        && !BUILTIN_NAMES.contains(&b.as_str())
    {
        causes.push(Cause::unsupported("spec.source.builtin", b, BUILTIN_NAMES));
    }
    if let Some(f) = &s.file
        && !f.starts_with('/')
    {
        causes.push(Cause::invalid(
            "spec.source.file",
            f,
            "must be an absolute path on the server",
        ));
    }
    if let Some(i) = &s.image
        && let Err(e) = kedge_registry::Reference::parse(i)
    {
        causes.push(Cause::invalid("spec.source.image", i, e));
    }
    if s.image_pull_secret.is_some() && s.image.is_none() {
        causes.push(Cause::invalid(
            "spec.source.imagePullSecret",
            s.image_pull_secret.as_deref().unwrap_or_default(),
            "only meaningful with spec.source.image",
        ));
    }
    if let Some(d) = &s.digest
        && !is_sha256(d)
    {
        causes.push(Cause::invalid(
            "spec.source.digest",
            d,
            "must be sha256: followed by 64 lowercase hex digits",
        ));
    }
    if typed.watches.is_empty() {
        causes.push(Cause::required("spec.watches"));
    }
    for (field, list) in [
        ("spec.watches", &typed.watches),
        ("spec.writes", &typed.writes),
    ] {
        for (i, k) in list.iter().enumerate() {
            let at = format!("{field}[{i}]");
            if is_wildcard(&k.api_version, &k.kind) {
                // Every kind (but Events and Plugins): the garbage collector's grant.
                continue;
            }
            if crate::resource_metrics::by_kind(&k.api_version, &k.kind).is_some() {
                // Resource metrics are read from the nodes' latest samples, never written.
                if field == "spec.writes" {
                    causes.push(Cause::invalid(
                        at,
                        &format!("{}/{}", k.api_version, k.kind),
                        "metrics.k8s.io kinds are read-only",
                    ));
                }
                continue;
            }
            match resources::by_kind(&k.api_version, &k.kind) {
                None => causes.push(Cause::invalid(
                    at,
                    &format!("{}/{}", k.api_version, k.kind),
                    "kind is not served by this cluster",
                )),
                Some(r) if r.group == "plugins.kedge.io" => causes.push(Cause::invalid(
                    at,
                    &format!("{}/{}", k.api_version, k.kind),
                    "a plugin may not watch or write plugins",
                )),
                Some(_) => {}
            }
        }
    }
    if let Some(l) = &typed.limits {
        if let Some(ms) = l.call_deadline_milliseconds
            && !(10..=60_000).contains(&ms)
        {
            causes.push(Cause::invalid(
                "spec.limits.callDeadlineMilliseconds",
                &ms.to_string(),
                "must be between 10 and 60000",
            ));
        }
        if let Some(q) = &l.memory {
            match kedge_core::quantity::parse_bytes(&q.0).ok() {
                Some(b) if ((1 << 20)..=(4u64 << 30)).contains(&b) => {}
                Some(_) => causes.push(Cause::invalid(
                    "spec.limits.memory",
                    &q.0,
                    "must be between 1Mi and 4Gi",
                )),
                None => causes.push(Cause::invalid(
                    "spec.limits.memory",
                    &q.0,
                    "must be a quantity such as 64Mi",
                )),
            }
        }
    }
    if let Some(p) = typed.probation_reconciles
        && !(0..=100).contains(&p)
    {
        causes.push(Cause::invalid(
            "spec.probationReconciles",
            &p.to_string(),
            "must be between 0 and 100",
        ));
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    fn causes(spec: Value) -> Vec<String> {
        let mut c = Vec::new();
        validate(&json!({"spec": spec}), &mut c);
        c.into_iter()
            .map(|c| format!("{}: {}", c.field, c.message))
            .collect()
    }

    #[test]
    fn a_good_spec_is_valid_and_defaults_are_filled() {
        let spec = json!({"source": {"builtin": "replicaset"},
            "watches": [{"apiVersion": "apps/v1", "kind": "ReplicaSet"}, {"apiVersion": "v1", "kind": "Pod"}],
            "writes": [{"apiVersion": "v1", "kind": "Pod"}],
            "limits": {"callDeadlineMilliseconds": 500, "memory": "32Mi"}});
        assert!(
            causes(spec.clone()).is_empty(),
            "{:?}",
            causes(spec.clone())
        );
        let mut obj = json!({"spec": spec});
        default(&mut obj);
        assert_eq!(obj["spec"]["role"], "controller");
        assert_eq!(obj["spec"]["probationReconciles"], 3);
    }

    #[test]
    fn setting_another_source_switches_to_it() {
        let old = json!({"spec": {"source": {"builtin": "replicaset"}}});
        let mut new = json!({"spec": {"source": {"builtin": "replicaset", "file": "/x.wasm"}}});
        prepare_update(&old, &mut new);
        assert_eq!(new["spec"]["source"], json!({"file": "/x.wasm"}));
        // Two changed at once stays ambiguous (and validation refuses it).
        let mut new = json!({"spec": {"source": {"image": "r/x:1", "file": "/x.wasm"}}});
        prepare_update(&old, &mut new);
        assert_eq!(new["spec"]["source"].as_object().unwrap().len(), 2);
    }

    #[test]
    fn bad_specs_name_each_field() {
        let c = causes(json!({"role": "operator",
            "source": {"builtin": "nope", "file": "rel/x.wasm", "digest": "md5:x"},
            "watches": [{"apiVersion": "v9", "kind": "Thing"}, {"apiVersion": "plugins.kedge.io/v1", "kind": "Plugin"}],
            "limits": {"callDeadlineMilliseconds": 5, "memory": "100Gi"},
            "probationReconciles": -1}));
        let text = c.join("\n");
        for field in [
            "spec.role: Unsupported value: \"operator\"",
            "spec.source: Invalid value",
            "spec.source.builtin: Unsupported value: \"nope\"",
            "spec.source.file: Invalid value: \"rel/x.wasm\": must be an absolute path",
            "spec.source.digest: Invalid value",
            "spec.watches[0]: Invalid value: \"v9/Thing\": kind is not served",
            "spec.watches[1]: Invalid value: \"plugins.kedge.io/v1/Plugin\"",
            "spec.limits.callDeadlineMilliseconds: Invalid value",
            "spec.limits.memory: Invalid value: \"100Gi\"",
            "spec.probationReconciles: Invalid value",
        ] {
            assert!(text.contains(field), "missing {field:?} in:\n{text}");
        }
        assert!(
            causes(json!({"source": {"image": "reg.example/x:v1"}}))
                .join("\n")
                .contains("spec.watches: Required value")
        );
    }
}
