//! Protobuf request bodies (`application/vnd.kubernetes.protobuf`), which `kubectl create
//! namespace|configmap|secret|deployment|service|job|cronjob|serviceaccount` and `kubectl
//! autoscale` send and do not
//! retry as JSON: the `k8s\0` + `runtime.Unknown` envelope, then the k8s-pb message of the kind,
//! turned into the Kubernetes JSON form so the rest of the API (typed decode, defaulting,
//! validation) sees what `kubectl create -f` would have sent.
//!
//! Nothing is dropped silently. Every field of every message is listed in the tables at the
//! end (the destructuring is exhaustive, so a k8s-pb upgrade that adds a field does not compile
//! until the field is listed): converted, or refused with a 415 naming it when set. Fields
//! k8s-pb itself does not know (a newer kubectl) are found by comparing the body with its
//! re-encoding. Only `status` is dropped, as kube-apiserver drops it on create and update.
//!
//! Zero values: Go writes every non-pointer field, so `""`, `0` and `false` arrive for fields
//! the user never set. As Go's JSON (`omitempty`) does, they are left out — except for the
//! fields marked `ptr` (Go pointers, where an explicit `0`/`false` means something, like
//! `replicas: 0`), list items and map values.

use std::collections::BTreeMap;

use base64::Engine;
use k8s_pb::api::{
    apps::v1 as apps, authentication::v1 as authn, authorization::v1 as authz,
    autoscaling::v1 as autoscaling, batch::v1 as batch, core::v1 as core, policy::v1 as policy,
    policy::v1beta1 as policy_beta, rbac::v1 as rbac, scheduling::v1 as scheduling,
};
use k8s_pb::apimachinery::pkg::api::resource::Quantity;
use k8s_pb::apimachinery::pkg::apis::meta::v1 as meta;
use k8s_pb::apimachinery::pkg::runtime::Unknown;
use k8s_pb::apimachinery::pkg::util::intstr::IntOrString;
use prost::Message;
use serde_json::{Map, Value};

use super::error::{ApiError, Result};

/// The media type, without parameters.
pub const CONTENT_TYPE: &str = "application/vnd.kubernetes.protobuf";

/// Every Kubernetes protobuf body starts with it.
const MAGIC: &[u8] = b"k8s\0";

/// What users can do instead; kubectl prints the message of a 415 as is.
const USE_JSON: &str = "send the object as JSON instead, e.g. \
     `kubectl create ... --dry-run=client -o yaml | kubectl apply -f -`";

/// Decodes a protobuf request body into the object's Kubernetes JSON form.
pub fn decode(body: &[u8]) -> Result<Value> {
    let envelope = body
        .strip_prefix(MAGIC)
        .ok_or_else(|| malformed("it does not start with the k8s\\0 prefix"))?;
    let unknown = Unknown::decode(envelope).map_err(|e| malformed(format!("envelope: {e}")))?;
    if let Some(enc) = unknown
        .content_encoding
        .as_deref()
        .filter(|e| !e.is_empty())
    {
        return Err(unsupported(format!(
            "protobuf bodies with content encoding {enc:?} are not supported; {USE_JSON}"
        )));
    }
    let type_meta = unknown.type_meta.unwrap_or_default();
    let api_version = type_meta.api_version.unwrap_or_default();
    let kind = type_meta.kind.unwrap_or_default();
    let raw = unknown.raw.unwrap_or_default();
    let object = match (api_version.as_str(), kind.as_str()) {
        ("v1", "Namespace") => convert::<core::Namespace>(&raw, &kind)?,
        ("v1", "ServiceAccount") => convert::<core::ServiceAccount>(&raw, &kind)?,
        ("v1", "ConfigMap") => convert::<core::ConfigMap>(&raw, &kind)?,
        // `kubectl create quota`.
        ("v1", "ResourceQuota") => convert::<core::ResourceQuota>(&raw, &kind)?,
        ("v1", "Secret") => convert::<core::Secret>(&raw, &kind)?,
        ("v1", "Service") => convert::<core::Service>(&raw, &kind)?,
        ("v1", "Pod") => convert::<core::Pod>(&raw, &kind)?,
        ("apps/v1", "Deployment") => convert::<apps::Deployment>(&raw, &kind)?,
        // `kubectl autoscale`.
        ("autoscaling/v1", "HorizontalPodAutoscaler") => {
            convert::<autoscaling::HorizontalPodAutoscaler>(&raw, &kind)?
        }
        ("batch/v1", "Job") => convert::<batch::Job>(&raw, &kind)?,
        ("batch/v1", "CronJob") => convert::<batch::CronJob>(&raw, &kind)?,
        ("policy/v1", "PodDisruptionBudget") => {
            convert::<policy::PodDisruptionBudget>(&raw, &kind)?
        }
        // `kubectl create priorityclass`.
        ("scheduling.k8s.io/v1", "PriorityClass") => {
            convert::<scheduling::PriorityClass>(&raw, &kind)?
        }
        // `kubectl drain` evicts through the typed client: protobuf.
        ("policy/v1", "Eviction") => convert::<policy::Eviction>(&raw, &kind)?,
        ("policy/v1beta1", "Eviction") => convert::<policy_beta::Eviction>(&raw, &kind)?,
        ("rbac.authorization.k8s.io/v1", "Role") => convert::<rbac::Role>(&raw, &kind)?,
        ("rbac.authorization.k8s.io/v1", "ClusterRole") => {
            convert::<rbac::ClusterRole>(&raw, &kind)?
        }
        ("rbac.authorization.k8s.io/v1", "RoleBinding") => {
            convert::<rbac::RoleBinding>(&raw, &kind)?
        }
        ("rbac.authorization.k8s.io/v1", "ClusterRoleBinding") => {
            convert::<rbac::ClusterRoleBinding>(&raw, &kind)?
        }
        ("authentication.k8s.io/v1", "TokenRequest") => {
            convert::<authn::TokenRequest>(&raw, &kind)?
        }
        ("authorization.k8s.io/v1", "SelfSubjectAccessReview") => {
            convert::<authz::SelfSubjectAccessReview>(&raw, &kind)?
        }
        ("authorization.k8s.io/v1", "SelfSubjectRulesReview") => {
            convert::<authz::SelfSubjectRulesReview>(&raw, &kind)?
        }
        ("authorization.k8s.io/v1", "SubjectAccessReview") => {
            convert::<authz::SubjectAccessReview>(&raw, &kind)?
        }
        _ => {
            return Err(unsupported(format!(
                "kedge does not decode protobuf bodies of kind {kind:?} ({api_version}); {USE_JSON}"
            )));
        }
    };
    let mut out = Map::new();
    out.insert("apiVersion".into(), Value::String(api_version));
    out.insert("kind".into(), Value::String(kind));
    if let Value::Object(fields) = object {
        out.extend(fields);
    }
    Ok(Value::Object(out))
}

fn convert<M: Message + Default + ToJson>(raw: &[u8], kind: &str) -> Result<Value> {
    let msg = M::decode(raw).map_err(|e| malformed(format!("{kind}: {e}")))?;
    if let Some(field) = unknown_field(raw, &msg.encode_to_vec(), "") {
        return Err(unsupported(format!(
            "the protobuf {kind} has a field kedge does not know (field number path {field}); \
             {USE_JSON}"
        )));
    }
    Ok(msg
        .to_json("", true)?
        .unwrap_or_else(|| Value::Object(Map::new())))
}

fn malformed(why: impl std::fmt::Display) -> ApiError {
    ApiError::bad_request(format!("error decoding the protobuf body: {why}"))
}

fn unsupported(message: String) -> ApiError {
    ApiError::new(415, "UnsupportedMediaType", message)
}

fn join(at: &str, key: &str) -> String {
    if at.is_empty() {
        key.to_string()
    } else {
        format!("{at}.{key}")
    }
}

/// A protobuf value in its Kubernetes JSON form.
trait ToJson {
    /// `None` leaves the field out. `keep` keeps zero values (pointer fields, list items, map
    /// values); `at` is the JSON path, for error messages.
    fn to_json(&self, at: &str, keep: bool) -> Result<Option<Value>>;
}

macro_rules! scalar {
    ($($t:ty),*) => {$(
        impl ToJson for $t {
            fn to_json(&self, _at: &str, keep: bool) -> Result<Option<Value>> {
                Ok((keep || *self != <$t>::default()).then(|| Value::from(self.clone())))
            }
        }
    )*};
}
scalar!(String, i32, i64, bool);

impl<T: ToJson> ToJson for Option<T> {
    fn to_json(&self, at: &str, keep: bool) -> Result<Option<Value>> {
        match self {
            None => Ok(None),
            Some(v) => v.to_json(at, keep),
        }
    }
}

impl<T: ToJson> ToJson for Vec<T> {
    fn to_json(&self, at: &str, _keep: bool) -> Result<Option<Value>> {
        if self.is_empty() {
            return Ok(None);
        }
        let mut items = Vec::with_capacity(self.len());
        for (i, v) in self.iter().enumerate() {
            items.push(
                v.to_json(&format!("{at}[{i}]"), true)?
                    .unwrap_or(Value::Null),
            );
        }
        Ok(Some(Value::Array(items)))
    }
}

impl<T: ToJson> ToJson for BTreeMap<String, T> {
    fn to_json(&self, at: &str, _keep: bool) -> Result<Option<Value>> {
        if self.is_empty() {
            return Ok(None);
        }
        let mut out = Map::new();
        for (k, v) in self {
            let value = v.to_json(&format!("{at}[{k}]"), true)?;
            out.insert(k.clone(), value.unwrap_or(Value::Null));
        }
        Ok(Some(Value::Object(out)))
    }
}

/// `[]byte` fields (Secret `data`, ConfigMap `binaryData`): base64, as in Go's JSON.
impl ToJson for Vec<u8> {
    fn to_json(&self, _at: &str, keep: bool) -> Result<Option<Value>> {
        Ok((keep || !self.is_empty())
            .then(|| Value::String(base64::engine::general_purpose::STANDARD.encode(self))))
    }
}

impl ToJson for Quantity {
    fn to_json(&self, at: &str, keep: bool) -> Result<Option<Value>> {
        self.string.to_json(at, keep)
    }
}

impl ToJson for IntOrString {
    fn to_json(&self, at: &str, keep: bool) -> Result<Option<Value>> {
        // type 1 is a string, 0 (or unset) an int.
        if self.r#type == Some(1) {
            self.str_val.clone().unwrap_or_default().to_json(at, keep)
        } else {
            self.int_val.unwrap_or_default().to_json(at, keep)
        }
    }
}

/// `metav1.Time`: RFC 3339 in seconds, as Kubernetes writes it. Go writes the zero time as an
/// empty message, which is left out (the JSON form is `null`).
impl ToJson for meta::Time {
    fn to_json(&self, at: &str, _keep: bool) -> Result<Option<Value>> {
        if self.seconds.is_none() && self.nanos.is_none() {
            return Ok(None);
        }
        let t = chrono::DateTime::from_timestamp(self.seconds.unwrap_or(0), 0)
            .ok_or_else(|| malformed(format!("{at}: time out of range")))?;
        Ok(Some(Value::String(
            t.to_rfc3339_opts(chrono::SecondsFormat::Secs, true),
        )))
    }
}

fn put<T: ToJson>(
    out: &mut Map<String, Value>,
    at: &str,
    key: &str,
    v: &T,
    keep: bool,
) -> Result<()> {
    if let Some(j) = v.to_json(&join(at, key), keep)? {
        out.insert(key.to_string(), j);
    }
    Ok(())
}

/// Go's embedded structs (`LocalObjectReference` in key selectors, `ProbeHandler` in `Probe`,
/// `VolumeSource` in `Volume`): their fields sit at the parent's level.
fn inline<T: ToJson>(out: &mut Map<String, Value>, at: &str, v: &Option<T>) -> Result<()> {
    if let Some(Value::Object(fields)) = v.to_json(at, false)? {
        out.extend(fields);
    }
    Ok(())
}

/// Whether a field the converter does not handle carries anything.
trait IsSet {
    fn is_set(&self) -> bool;
}

impl<T: Message> IsSet for Option<T> {
    /// prost implements `Message` for the scalars too (as wrapper types), so an empty
    /// encoding means `""`, `0`, `false` or an empty message: nothing to lose.
    fn is_set(&self) -> bool {
        self.as_ref().is_some_and(|v| v.encoded_len() > 0)
    }
}

impl<T> IsSet for Vec<T> {
    fn is_set(&self) -> bool {
        !self.is_empty()
    }
}

impl<K, V> IsSet for BTreeMap<K, V> {
    fn is_set(&self) -> bool {
        !self.is_empty()
    }
}

fn reject<T: IsSet>(at: &str, key: &str, v: &T) -> Result<()> {
    if v.is_set() {
        return Err(unsupported(format!(
            "kedge does not decode the field {} of protobuf bodies yet; {USE_JSON}",
            join(at, key)
        )));
    }
    Ok(())
}

/// One field of a message table: converted (`ptr`: zero values kept), flattened into the
/// parent (`inline`), refused when set (`reject`), or dropped (`ignore`, only `status`).
macro_rules! field {
    ($out:ident, $at:ident, $j:literal, $v:ident) => {
        put(&mut $out, $at, $j, $v, false)?
    };
    ($out:ident, $at:ident, $j:literal, $v:ident, ptr) => {
        put(&mut $out, $at, $j, $v, true)?
    };
    ($out:ident, $at:ident, $j:literal, $v:ident, inline) => {
        inline(&mut $out, $at, $v)?
    };
    ($out:ident, $at:ident, $j:literal, $v:ident, reject) => {
        reject($at, $j, $v)?
    };
    ($out:ident, $at:ident, $j:literal, $v:ident, ignore) => {
        let _ = $v;
    };
}

/// The JSON name of every field of every message, in k8s-pb's order.
macro_rules! messages {
    ($( $m:ident :: $t:ident { $( $f:ident : $j:literal $($mode:ident)? ),* $(,)? } )*) => {$(
        impl ToJson for $m::$t {
            fn to_json(&self, at: &str, _keep: bool) -> Result<Option<Value>> {
                let $m::$t { $($f),* } = self;
                let mut out = Map::new();
                $( field!(out, at, $j, $f $(, $mode)?); )*
                Ok(Some(Value::Object(out)))
            }
        }
    )*};
}

/// One wire field's type and payload (the varint's bytes for wire type 0).
type Wire<'a> = (u8, &'a [u8]);

/// The wire fields of a message: (field number, wire type, payload or varint bytes).
fn wire_fields(mut b: &[u8]) -> Option<Vec<(u64, u8, &[u8])>> {
    fn varint(b: &mut &[u8]) -> Option<u64> {
        let mut v = 0u64;
        for shift in (0..64).step_by(7) {
            let (&byte, rest) = b.split_first()?;
            *b = rest;
            v |= u64::from(byte & 0x7f) << shift;
            if byte < 0x80 {
                return Some(v);
            }
        }
        None
    }
    let mut out = Vec::new();
    while !b.is_empty() {
        let key = varint(&mut b)?;
        let wire = (key & 7) as u8;
        let start = b;
        let len = match wire {
            0 => {
                varint(&mut b)?;
                start.len() - b.len()
            }
            1 => 8,
            2 => usize::try_from(varint(&mut b)?).ok()?,
            5 => 4,
            _ => return None,
        };
        let payload_start = if wire == 0 { start } else { b };
        let payload = payload_start.get(..len)?;
        b = &payload_start[len..];
        out.push((key >> 3, wire, payload));
    }
    Some(out)
}

/// The field-number path of a field in `original` that its prost re-encoding lacks: prost
/// skips fields its message type does not have. Fields Go wrote with a zero value and prost
/// leaves out (map entries with an empty value) are not differences.
fn unknown_field(original: &[u8], reencoded: &[u8], at: &str) -> Option<String> {
    if original == reencoded {
        return None;
    }
    let here = || {
        if at.is_empty() {
            "<root>".to_string()
        } else {
            at.to_string()
        }
    };
    let (Some(o), Some(e)) = (wire_fields(original), wire_fields(reencoded)) else {
        return Some(here());
    };
    let mut by_tag: BTreeMap<u64, (Vec<Wire>, Vec<Wire>)> = BTreeMap::new();
    for (tag, wire, payload) in o {
        by_tag.entry(tag).or_default().0.push((wire, payload));
    }
    for (tag, wire, payload) in e {
        by_tag.entry(tag).or_default().1.push((wire, payload));
    }
    for (tag, (o, e)) in by_tag {
        let path = if at.is_empty() {
            tag.to_string()
        } else {
            format!("{at}.{tag}")
        };
        if e.is_empty() {
            let zero = |(w, p): &Wire| {
                (*w == 2 && p.is_empty()) || (*w == 0 && p.iter().all(|b| *b == 0 || *b == 0x80))
            };
            if o.iter().all(zero) {
                continue;
            }
            return Some(path);
        }
        if o.len() != e.len() {
            return Some(path);
        }
        for (i, ((ow, op), (ew, ep))) in o.iter().zip(&e).enumerate() {
            if op == ep && ow == ew {
                continue;
            }
            if *ow != 2 || *ew != 2 {
                return Some(path);
            }
            let item = if o.len() > 1 {
                format!("{path}[{i}]")
            } else {
                path.clone()
            };
            if let Some(p) = unknown_field(op, ep, &item) {
                return Some(p);
            }
        }
    }
    None
}

messages! {
    autoscaling::HorizontalPodAutoscaler {
        metadata: "metadata",
        spec: "spec",
        status: "status" ignore,
    }
    autoscaling::HorizontalPodAutoscalerSpec {
        scale_target_ref: "scaleTargetRef",
        min_replicas: "minReplicas" ptr,
        max_replicas: "maxReplicas" ptr,
        target_cpu_utilization_percentage: "targetCPUUtilizationPercentage" ptr,
    }
    autoscaling::CrossVersionObjectReference {
        kind: "kind",
        name: "name",
        api_version: "apiVersion",
    }
    scheduling::PriorityClass {
        metadata: "metadata",
        value: "value" ptr,
        global_default: "globalDefault" ptr,
        description: "description",
        preemption_policy: "preemptionPolicy",
    }
    policy::PodDisruptionBudget {
        metadata: "metadata",
        spec: "spec",
        status: "status" ignore,
    }
    policy::PodDisruptionBudgetSpec {
        min_available: "minAvailable" ptr,
        selector: "selector",
        max_unavailable: "maxUnavailable" ptr,
        unhealthy_pod_eviction_policy: "unhealthyPodEvictionPolicy",
    }
    policy::Eviction {
        metadata: "metadata",
        delete_options: "deleteOptions",
    }
    policy_beta::Eviction {
        metadata: "metadata",
        delete_options: "deleteOptions",
    }
    meta::DeleteOptions {
        grace_period_seconds: "gracePeriodSeconds" ptr,
        preconditions: "preconditions",
        orphan_dependents: "orphanDependents" ptr,
        propagation_policy: "propagationPolicy",
        dry_run: "dryRun",
        ignore_store_read_error_with_cluster_breaking_potential:
            "ignoreStoreReadErrorWithClusterBreakingPotential" reject,
    }
    meta::Preconditions {
        uid: "uid",
        resource_version: "resourceVersion",
    }
    rbac::Role {
        metadata: "metadata",
        rules: "rules",
    }
    rbac::ClusterRole {
        metadata: "metadata",
        rules: "rules",
        aggregation_rule: "aggregationRule" reject,
    }
    rbac::PolicyRule {
        verbs: "verbs",
        api_groups: "apiGroups",
        resources: "resources",
        resource_names: "resourceNames",
        non_resource_ur_ls: "nonResourceURLs",
    }
    rbac::RoleBinding {
        metadata: "metadata",
        subjects: "subjects",
        role_ref: "roleRef",
    }
    rbac::ClusterRoleBinding {
        metadata: "metadata",
        subjects: "subjects",
        role_ref: "roleRef",
    }
    rbac::Subject {
        kind: "kind",
        api_group: "apiGroup",
        name: "name",
        namespace: "namespace",
    }
    rbac::RoleRef {
        api_group: "apiGroup",
        kind: "kind",
        name: "name",
    }
    authn::TokenRequest {
        metadata: "metadata",
        spec: "spec",
        status: "status" ignore,
    }
    authn::TokenRequestSpec {
        audiences: "audiences",
        expiration_seconds: "expirationSeconds" ptr,
        bound_object_ref: "boundObjectRef" reject,
    }
    authz::SelfSubjectAccessReview {
        metadata: "metadata",
        spec: "spec",
        status: "status" ignore,
    }
    authz::SelfSubjectAccessReviewSpec {
        resource_attributes: "resourceAttributes",
        non_resource_attributes: "nonResourceAttributes",
    }
    authz::SelfSubjectRulesReview {
        metadata: "metadata",
        spec: "spec",
        status: "status" ignore,
    }
    authz::SelfSubjectRulesReviewSpec {
        namespace: "namespace",
    }
    authz::SubjectAccessReview {
        metadata: "metadata",
        spec: "spec",
        status: "status" ignore,
    }
    authz::SubjectAccessReviewSpec {
        resource_attributes: "resourceAttributes",
        non_resource_attributes: "nonResourceAttributes",
        user: "user",
        groups: "groups",
        extra: "extra" reject,
        uid: "uid",
    }
    authz::ResourceAttributes {
        namespace: "namespace",
        verb: "verb",
        group: "group",
        version: "version",
        resource: "resource",
        subresource: "subresource",
        name: "name",
        field_selector: "fieldSelector" reject,
        label_selector: "labelSelector" reject,
    }
    authz::NonResourceAttributes {
        path: "path",
        verb: "verb",
    }
    meta::ObjectMeta {
        name: "name",
        generate_name: "generateName",
        namespace: "namespace",
        self_link: "selfLink",
        uid: "uid",
        resource_version: "resourceVersion",
        generation: "generation",
        creation_timestamp: "creationTimestamp",
        deletion_timestamp: "deletionTimestamp",
        deletion_grace_period_seconds: "deletionGracePeriodSeconds" ptr,
        labels: "labels",
        annotations: "annotations",
        owner_references: "ownerReferences",
        finalizers: "finalizers",
        managed_fields: "managedFields" reject,
    }
    meta::OwnerReference {
        api_version: "apiVersion",
        kind: "kind",
        name: "name",
        uid: "uid",
        controller: "controller" ptr,
        block_owner_deletion: "blockOwnerDeletion" ptr,
    }
    meta::LabelSelector {
        match_labels: "matchLabels",
        match_expressions: "matchExpressions",
    }
    meta::LabelSelectorRequirement {
        key: "key",
        operator: "operator",
        values: "values",
    }
    core::Namespace {
        metadata: "metadata",
        spec: "spec",
        status: "status" ignore,
    }
    core::NamespaceSpec {
        finalizers: "finalizers",
    }
    core::ServiceAccount {
        metadata: "metadata",
        secrets: "secrets",
        image_pull_secrets: "imagePullSecrets",
        automount_service_account_token: "automountServiceAccountToken" ptr,
    }
    core::ObjectReference {
        kind: "kind",
        namespace: "namespace",
        name: "name",
        uid: "uid",
        api_version: "apiVersion",
        resource_version: "resourceVersion",
        field_path: "fieldPath",
    }
    core::LocalObjectReference {
        name: "name",
    }
    core::ResourceQuota {
        metadata: "metadata",
        spec: "spec",
        status: "status" ignore,
    }
    core::ResourceQuotaSpec {
        hard: "hard",
        scopes: "scopes",
        scope_selector: "scopeSelector" reject,
    }
    core::ConfigMap {
        metadata: "metadata",
        immutable: "immutable" ptr,
        data: "data",
        binary_data: "binaryData",
    }
    core::Secret {
        metadata: "metadata",
        immutable: "immutable" ptr,
        data: "data",
        string_data: "stringData",
        r#type: "type",
    }
    core::Service {
        metadata: "metadata",
        spec: "spec",
        status: "status" ignore,
    }
    core::ServiceSpec {
        ports: "ports",
        selector: "selector",
        cluster_ip: "clusterIP",
        cluster_ips: "clusterIPs",
        r#type: "type",
        external_ips: "externalIPs",
        session_affinity: "sessionAffinity",
        load_balancer_ip: "loadBalancerIP",
        load_balancer_source_ranges: "loadBalancerSourceRanges",
        external_name: "externalName",
        external_traffic_policy: "externalTrafficPolicy",
        health_check_node_port: "healthCheckNodePort",
        publish_not_ready_addresses: "publishNotReadyAddresses",
        session_affinity_config: "sessionAffinityConfig",
        ip_families: "ipFamilies",
        ip_family_policy: "ipFamilyPolicy",
        allocate_load_balancer_node_ports: "allocateLoadBalancerNodePorts" ptr,
        load_balancer_class: "loadBalancerClass",
        internal_traffic_policy: "internalTrafficPolicy",
        traffic_distribution: "trafficDistribution",
    }
    core::ServicePort {
        name: "name",
        protocol: "protocol",
        app_protocol: "appProtocol",
        port: "port",
        target_port: "targetPort",
        node_port: "nodePort",
    }
    core::SessionAffinityConfig {
        client_ip: "clientIP",
    }
    core::ClientIpConfig {
        timeout_seconds: "timeoutSeconds" ptr,
    }
    core::Pod {
        metadata: "metadata",
        spec: "spec",
        status: "status" ignore,
    }
    core::PodTemplateSpec {
        metadata: "metadata",
        spec: "spec",
    }
    core::PodSpec {
        volumes: "volumes",
        init_containers: "initContainers",
        containers: "containers",
        ephemeral_containers: "ephemeralContainers" reject,
        restart_policy: "restartPolicy",
        termination_grace_period_seconds: "terminationGracePeriodSeconds" ptr,
        active_deadline_seconds: "activeDeadlineSeconds" ptr,
        dns_policy: "dnsPolicy",
        node_selector: "nodeSelector",
        service_account_name: "serviceAccountName",
        service_account: "serviceAccount",
        automount_service_account_token: "automountServiceAccountToken" ptr,
        node_name: "nodeName",
        host_network: "hostNetwork",
        host_pid: "hostPID",
        host_ipc: "hostIPC",
        share_process_namespace: "shareProcessNamespace" ptr,
        security_context: "securityContext",
        image_pull_secrets: "imagePullSecrets",
        hostname: "hostname",
        subdomain: "subdomain",
        affinity: "affinity",
        scheduler_name: "schedulerName",
        tolerations: "tolerations",
        host_aliases: "hostAliases",
        priority_class_name: "priorityClassName",
        priority: "priority" ptr,
        dns_config: "dnsConfig",
        readiness_gates: "readinessGates",
        runtime_class_name: "runtimeClassName",
        enable_service_links: "enableServiceLinks" ptr,
        preemption_policy: "preemptionPolicy",
        overhead: "overhead",
        topology_spread_constraints: "topologySpreadConstraints",
        set_hostname_as_fqdn: "setHostnameAsFQDN" ptr,
        os: "os",
        host_users: "hostUsers" ptr,
        scheduling_gates: "schedulingGates",
        resource_claims: "resourceClaims" reject,
        resources: "resources",
        hostname_override: "hostnameOverride",
        workload_ref: "workloadRef" reject,
    }
    core::PodOs {
        name: "name",
    }
    core::PodSchedulingGate {
        name: "name",
    }
    core::Container {
        name: "name",
        image: "image",
        command: "command",
        args: "args",
        working_dir: "workingDir",
        ports: "ports",
        env_from: "envFrom",
        env: "env",
        resources: "resources",
        resize_policy: "resizePolicy",
        restart_policy: "restartPolicy",
        restart_policy_rules: "restartPolicyRules" reject,
        volume_mounts: "volumeMounts",
        volume_devices: "volumeDevices",
        liveness_probe: "livenessProbe",
        readiness_probe: "readinessProbe",
        startup_probe: "startupProbe",
        lifecycle: "lifecycle",
        termination_message_path: "terminationMessagePath",
        termination_message_policy: "terminationMessagePolicy",
        image_pull_policy: "imagePullPolicy",
        security_context: "securityContext",
        stdin: "stdin",
        stdin_once: "stdinOnce",
        tty: "tty",
    }
    core::ContainerPort {
        name: "name",
        host_port: "hostPort",
        container_port: "containerPort",
        protocol: "protocol",
        host_ip: "hostIP",
    }
    core::ContainerResizePolicy {
        resource_name: "resourceName",
        restart_policy: "restartPolicy",
    }
    core::VolumeDevice {
        name: "name",
        device_path: "devicePath",
    }
    core::ResourceClaim {
        name: "name",
        request: "request",
    }
    core::EnvVar {
        name: "name",
        value: "value",
        value_from: "valueFrom",
    }
    core::EnvVarSource {
        field_ref: "fieldRef",
        resource_field_ref: "resourceFieldRef",
        config_map_key_ref: "configMapKeyRef",
        secret_key_ref: "secretKeyRef",
        file_key_ref: "fileKeyRef" reject,
    }
    core::ConfigMapKeySelector {
        local_object_reference: "localObjectReference" inline,
        key: "key",
        optional: "optional" ptr,
    }
    core::SecretKeySelector {
        local_object_reference: "localObjectReference" inline,
        key: "key",
        optional: "optional" ptr,
    }
    core::ObjectFieldSelector {
        api_version: "apiVersion",
        field_path: "fieldPath",
    }
    core::ResourceFieldSelector {
        container_name: "containerName",
        resource: "resource",
        divisor: "divisor",
    }
    core::EnvFromSource {
        prefix: "prefix",
        config_map_ref: "configMapRef",
        secret_ref: "secretRef",
    }
    core::ConfigMapEnvSource {
        local_object_reference: "localObjectReference" inline,
        optional: "optional" ptr,
    }
    core::SecretEnvSource {
        local_object_reference: "localObjectReference" inline,
        optional: "optional" ptr,
    }
    core::ResourceRequirements {
        limits: "limits",
        requests: "requests",
        claims: "claims",
    }
    core::VolumeMount {
        name: "name",
        read_only: "readOnly",
        recursive_read_only: "recursiveReadOnly",
        mount_path: "mountPath",
        sub_path: "subPath",
        mount_propagation: "mountPropagation",
        sub_path_expr: "subPathExpr",
    }
    core::Probe {
        handler: "handler" inline,
        initial_delay_seconds: "initialDelaySeconds",
        timeout_seconds: "timeoutSeconds",
        period_seconds: "periodSeconds",
        success_threshold: "successThreshold",
        failure_threshold: "failureThreshold",
        termination_grace_period_seconds: "terminationGracePeriodSeconds" ptr,
    }
    core::ProbeHandler {
        exec: "exec",
        http_get: "httpGet",
        tcp_socket: "tcpSocket",
        grpc: "grpc",
    }
    core::ExecAction {
        command: "command",
    }
    core::HttpGetAction {
        path: "path",
        port: "port",
        host: "host",
        scheme: "scheme",
        http_headers: "httpHeaders",
    }
    core::HttpHeader {
        name: "name",
        value: "value",
    }
    core::TcpSocketAction {
        port: "port",
        host: "host",
    }
    core::GrpcAction {
        port: "port",
        service: "service",
    }
    core::Lifecycle {
        post_start: "postStart",
        pre_stop: "preStop",
        stop_signal: "stopSignal",
    }
    core::LifecycleHandler {
        exec: "exec",
        http_get: "httpGet",
        tcp_socket: "tcpSocket",
        sleep: "sleep",
    }
    core::SleepAction {
        seconds: "seconds",
    }
    core::SecurityContext {
        capabilities: "capabilities",
        privileged: "privileged" ptr,
        se_linux_options: "seLinuxOptions",
        windows_options: "windowsOptions",
        run_as_user: "runAsUser" ptr,
        run_as_group: "runAsGroup" ptr,
        run_as_non_root: "runAsNonRoot" ptr,
        read_only_root_filesystem: "readOnlyRootFilesystem" ptr,
        allow_privilege_escalation: "allowPrivilegeEscalation" ptr,
        proc_mount: "procMount",
        seccomp_profile: "seccompProfile",
        app_armor_profile: "appArmorProfile",
    }
    core::Capabilities {
        add: "add",
        drop: "drop",
    }
    core::SeLinuxOptions {
        user: "user",
        role: "role",
        r#type: "type",
        level: "level",
    }
    core::SeccompProfile {
        r#type: "type",
        localhost_profile: "localhostProfile",
    }
    core::AppArmorProfile {
        r#type: "type",
        localhost_profile: "localhostProfile",
    }
    core::WindowsSecurityContextOptions {
        gmsa_credential_spec_name: "gmsaCredentialSpecName",
        gmsa_credential_spec: "gmsaCredentialSpec",
        run_as_user_name: "runAsUserName",
        host_process: "hostProcess" ptr,
    }
    core::Volume {
        name: "name",
        volume_source: "volumeSource" inline,
    }
    core::VolumeSource {
        host_path: "hostPath",
        empty_dir: "emptyDir",
        gce_persistent_disk: "gcePersistentDisk" reject,
        aws_elastic_block_store: "awsElasticBlockStore" reject,
        git_repo: "gitRepo" reject,
        secret: "secret",
        nfs: "nfs" reject,
        iscsi: "iscsi" reject,
        glusterfs: "glusterfs" reject,
        persistent_volume_claim: "persistentVolumeClaim",
        rbd: "rbd" reject,
        flex_volume: "flexVolume" reject,
        cinder: "cinder" reject,
        cephfs: "cephfs" reject,
        flocker: "flocker" reject,
        downward_api: "downwardAPI",
        fc: "fc" reject,
        azure_file: "azureFile" reject,
        config_map: "configMap",
        vsphere_volume: "vsphereVolume" reject,
        quobyte: "quobyte" reject,
        azure_disk: "azureDisk" reject,
        photon_persistent_disk: "photonPersistentDisk" reject,
        projected: "projected",
        portworx_volume: "portworxVolume" reject,
        scale_io: "scaleIO" reject,
        storageos: "storageos" reject,
        csi: "csi" reject,
        ephemeral: "ephemeral" reject,
        image: "image" reject,
    }
    core::EmptyDirVolumeSource {
        medium: "medium",
        size_limit: "sizeLimit",
    }
    core::HostPathVolumeSource {
        path: "path",
        r#type: "type",
    }
    core::ConfigMapVolumeSource {
        local_object_reference: "localObjectReference" inline,
        items: "items",
        default_mode: "defaultMode" ptr,
        optional: "optional" ptr,
    }
    core::KeyToPath {
        key: "key",
        path: "path",
        mode: "mode" ptr,
    }
    core::SecretVolumeSource {
        secret_name: "secretName",
        items: "items",
        default_mode: "defaultMode" ptr,
        optional: "optional" ptr,
    }
    core::PersistentVolumeClaimVolumeSource {
        claim_name: "claimName",
        read_only: "readOnly",
    }
    core::ProjectedVolumeSource {
        sources: "sources",
        default_mode: "defaultMode" ptr,
    }
    core::VolumeProjection {
        secret: "secret",
        downward_api: "downwardAPI",
        config_map: "configMap",
        service_account_token: "serviceAccountToken",
        cluster_trust_bundle: "clusterTrustBundle" reject,
        pod_certificate: "podCertificate" reject,
    }
    core::ConfigMapProjection {
        local_object_reference: "localObjectReference" inline,
        items: "items",
        optional: "optional" ptr,
    }
    core::SecretProjection {
        local_object_reference: "localObjectReference" inline,
        items: "items",
        optional: "optional" ptr,
    }
    core::DownwardAPIProjection {
        items: "items",
    }
    core::DownwardAPIVolumeFile {
        path: "path",
        field_ref: "fieldRef",
        resource_field_ref: "resourceFieldRef",
        mode: "mode" ptr,
    }
    core::DownwardAPIVolumeSource {
        items: "items",
        default_mode: "defaultMode" ptr,
    }
    core::ServiceAccountTokenProjection {
        audience: "audience",
        expiration_seconds: "expirationSeconds" ptr,
        path: "path",
    }
    core::PodSecurityContext {
        se_linux_options: "seLinuxOptions",
        windows_options: "windowsOptions",
        run_as_user: "runAsUser" ptr,
        run_as_group: "runAsGroup" ptr,
        run_as_non_root: "runAsNonRoot" ptr,
        supplemental_groups: "supplementalGroups",
        supplemental_groups_policy: "supplementalGroupsPolicy",
        fs_group: "fsGroup" ptr,
        sysctls: "sysctls",
        fs_group_change_policy: "fsGroupChangePolicy",
        seccomp_profile: "seccompProfile",
        app_armor_profile: "appArmorProfile",
        se_linux_change_policy: "seLinuxChangePolicy",
    }
    core::Sysctl {
        name: "name",
        value: "value",
    }
    core::Affinity {
        node_affinity: "nodeAffinity",
        pod_affinity: "podAffinity",
        pod_anti_affinity: "podAntiAffinity",
    }
    core::NodeAffinity {
        required_during_scheduling_ignored_during_execution: "requiredDuringSchedulingIgnoredDuringExecution",
        preferred_during_scheduling_ignored_during_execution: "preferredDuringSchedulingIgnoredDuringExecution",
    }
    core::NodeSelector {
        node_selector_terms: "nodeSelectorTerms",
    }
    core::NodeSelectorTerm {
        match_expressions: "matchExpressions",
        match_fields: "matchFields",
    }
    core::NodeSelectorRequirement {
        key: "key",
        operator: "operator",
        values: "values",
    }
    core::PreferredSchedulingTerm {
        weight: "weight",
        preference: "preference",
    }
    core::PodAffinity {
        required_during_scheduling_ignored_during_execution: "requiredDuringSchedulingIgnoredDuringExecution",
        preferred_during_scheduling_ignored_during_execution: "preferredDuringSchedulingIgnoredDuringExecution",
    }
    core::PodAntiAffinity {
        required_during_scheduling_ignored_during_execution: "requiredDuringSchedulingIgnoredDuringExecution",
        preferred_during_scheduling_ignored_during_execution: "preferredDuringSchedulingIgnoredDuringExecution",
    }
    core::PodAffinityTerm {
        label_selector: "labelSelector",
        namespaces: "namespaces",
        topology_key: "topologyKey",
        namespace_selector: "namespaceSelector",
        match_label_keys: "matchLabelKeys",
        mismatch_label_keys: "mismatchLabelKeys",
    }
    core::WeightedPodAffinityTerm {
        weight: "weight",
        pod_affinity_term: "podAffinityTerm",
    }
    core::Toleration {
        key: "key",
        operator: "operator",
        value: "value",
        effect: "effect",
        toleration_seconds: "tolerationSeconds" ptr,
    }
    core::TopologySpreadConstraint {
        max_skew: "maxSkew",
        topology_key: "topologyKey",
        when_unsatisfiable: "whenUnsatisfiable",
        label_selector: "labelSelector",
        min_domains: "minDomains" ptr,
        node_affinity_policy: "nodeAffinityPolicy",
        node_taints_policy: "nodeTaintsPolicy",
        match_label_keys: "matchLabelKeys",
    }
    core::HostAlias {
        ip: "ip",
        hostnames: "hostnames",
    }
    core::PodDnsConfig {
        nameservers: "nameservers",
        searches: "searches",
        options: "options",
    }
    core::PodDnsConfigOption {
        name: "name",
        value: "value",
    }
    core::PodReadinessGate {
        condition_type: "conditionType",
    }
    apps::Deployment {
        metadata: "metadata",
        spec: "spec",
        status: "status" ignore,
    }
    apps::DeploymentSpec {
        replicas: "replicas" ptr,
        selector: "selector",
        template: "template",
        strategy: "strategy",
        min_ready_seconds: "minReadySeconds",
        revision_history_limit: "revisionHistoryLimit" ptr,
        paused: "paused",
        progress_deadline_seconds: "progressDeadlineSeconds" ptr,
    }
    apps::DeploymentStrategy {
        r#type: "type",
        rolling_update: "rollingUpdate",
    }
    apps::RollingUpdateDeployment {
        max_unavailable: "maxUnavailable" ptr,
        max_surge: "maxSurge" ptr,
    }
    batch::Job {
        metadata: "metadata",
        spec: "spec",
        status: "status" ignore,
    }
    batch::JobSpec {
        parallelism: "parallelism" ptr,
        completions: "completions" ptr,
        active_deadline_seconds: "activeDeadlineSeconds" ptr,
        pod_failure_policy: "podFailurePolicy" reject,
        success_policy: "successPolicy" reject,
        backoff_limit: "backoffLimit" ptr,
        backoff_limit_per_index: "backoffLimitPerIndex" ptr,
        max_failed_indexes: "maxFailedIndexes" ptr,
        selector: "selector",
        manual_selector: "manualSelector" ptr,
        template: "template",
        ttl_seconds_after_finished: "ttlSecondsAfterFinished" ptr,
        completion_mode: "completionMode",
        suspend: "suspend" ptr,
        pod_replacement_policy: "podReplacementPolicy",
        managed_by: "managedBy",
    }
    batch::JobTemplateSpec {
        metadata: "metadata",
        spec: "spec",
    }
    batch::CronJob {
        metadata: "metadata",
        spec: "spec",
        status: "status" ignore,
    }
    batch::CronJobSpec {
        schedule: "schedule",
        time_zone: "timeZone",
        starting_deadline_seconds: "startingDeadlineSeconds" ptr,
        concurrency_policy: "concurrencyPolicy",
        suspend: "suspend" ptr,
        job_template: "jobTemplate",
        successful_jobs_history_limit: "successfulJobsHistoryLimit" ptr,
        failed_jobs_history_limit: "failedJobsHistoryLimit" ptr,
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use k8s_pb::apimachinery::pkg::runtime::TypeMeta;
    use serde_json::json;

    fn envelope(api_version: &str, kind: &str, raw: Vec<u8>) -> Vec<u8> {
        let mut body = MAGIC.to_vec();
        Unknown {
            type_meta: Some(TypeMeta {
                api_version: Some(api_version.into()),
                kind: Some(kind.into()),
            }),
            raw: Some(raw),
            content_encoding: Some(String::new()),
            content_type: Some(String::new()),
        }
        .encode(&mut body)
        .unwrap();
        body
    }

    fn body<M: Message>(api_version: &str, kind: &str, m: &M) -> Vec<u8> {
        envelope(api_version, kind, m.encode_to_vec())
    }

    fn s(v: &str) -> Option<String> {
        Some(v.to_string())
    }

    /// As Go writes ObjectMeta: every non-pointer field, zero or not.
    fn meta(name: &str) -> meta::ObjectMeta {
        meta::ObjectMeta {
            name: s(name),
            generate_name: s(""),
            namespace: s(""),
            self_link: s(""),
            uid: s(""),
            resource_version: s(""),
            generation: Some(0),
            creation_timestamp: Some(meta::Time::default()),
            ..Default::default()
        }
    }

    fn labels(pairs: &[(&str, &str)]) -> BTreeMap<String, String> {
        pairs
            .iter()
            .map(|(k, v)| (k.to_string(), v.to_string()))
            .collect()
    }

    #[test]
    fn namespace() {
        let ns = core::Namespace {
            metadata: Some(meta("x")),
            spec: Some(Default::default()),
            status: Some(core::NamespaceStatus {
                phase: s(""),
                ..Default::default()
            }),
        };
        assert_eq!(
            decode(&body("v1", "Namespace", &ns)).unwrap(),
            json!({"apiVersion": "v1", "kind": "Namespace", "metadata": {"name": "x"}, "spec": {}})
        );
    }

    #[test]
    fn configmap_and_secret() {
        let cm = core::ConfigMap {
            metadata: Some(meta::ObjectMeta {
                labels: labels(&[("app", "web")]),
                ..meta("c")
            }),
            data: labels(&[("a", "b"), ("empty", "")]),
            binary_data: [("bin".to_string(), vec![0u8, 1, 2])].into(),
            immutable: None,
        };
        assert_eq!(
            decode(&body("v1", "ConfigMap", &cm)).unwrap(),
            json!({"apiVersion": "v1", "kind": "ConfigMap",
                "metadata": {"name": "c", "labels": {"app": "web"}},
                "data": {"a": "b", "empty": ""}, "binaryData": {"bin": "AAEC"}})
        );
        let secret = core::Secret {
            metadata: Some(meta("s")),
            immutable: Some(false),
            data: [("k".to_string(), b"v".to_vec())].into(),
            string_data: Default::default(),
            r#type: s("kubernetes.io/dockerconfigjson"),
        };
        assert_eq!(
            decode(&body("v1", "Secret", &secret)).unwrap(),
            json!({"apiVersion": "v1", "kind": "Secret", "metadata": {"name": "s"},
                "immutable": false, "data": {"k": "dg=="}, "type": "kubernetes.io/dockerconfigjson"})
        );
    }

    fn container() -> core::Container {
        core::Container {
            name: s("hello"),
            image: s("kedge.dev/samples/hello-wasm:v1"),
            working_dir: s(""),
            ports: vec![core::ContainerPort {
                name: s(""),
                host_port: Some(0),
                container_port: Some(80),
                protocol: s("TCP"),
                host_ip: s(""),
            }],
            env: vec![
                core::EnvVar {
                    name: s("A"),
                    value: s(""),
                    value_from: None,
                },
                core::EnvVar {
                    name: s("B"),
                    value: s(""),
                    value_from: Some(core::EnvVarSource {
                        config_map_key_ref: Some(core::ConfigMapKeySelector {
                            local_object_reference: Some(core::LocalObjectReference {
                                name: s("cm"),
                            }),
                            key: s("k"),
                            optional: Some(false),
                        }),
                        ..Default::default()
                    }),
                },
            ],
            resources: Some(core::ResourceRequirements {
                limits: [("memory".to_string(), Quantity { string: s("64Mi") })].into(),
                ..Default::default()
            }),
            readiness_probe: Some(core::Probe {
                handler: Some(core::ProbeHandler {
                    http_get: Some(core::HttpGetAction {
                        path: s("/healthz"),
                        port: Some(IntOrString {
                            r#type: Some(1),
                            int_val: Some(0),
                            str_val: s("http"),
                        }),
                        host: s(""),
                        scheme: s(""),
                        http_headers: vec![],
                    }),
                    ..Default::default()
                }),
                initial_delay_seconds: Some(0),
                period_seconds: Some(5),
                ..Default::default()
            }),
            volume_mounts: vec![core::VolumeMount {
                name: s("scratch"),
                read_only: Some(false),
                mount_path: s("/tmp"),
                ..Default::default()
            }],
            termination_message_path: s(""),
            image_pull_policy: s(""),
            stdin: Some(false),
            tty: Some(false),
            ..Default::default()
        }
    }

    fn pod_spec() -> core::PodSpec {
        core::PodSpec {
            volumes: vec![core::Volume {
                name: s("scratch"),
                volume_source: Some(core::VolumeSource {
                    empty_dir: Some(core::EmptyDirVolumeSource {
                        medium: s(""),
                        size_limit: None,
                    }),
                    ..Default::default()
                }),
            }],
            containers: vec![container()],
            restart_policy: s(""),
            termination_grace_period_seconds: Some(0),
            dns_policy: s(""),
            host_network: Some(false),
            node_selector: labels(&[("kubernetes.io/arch", "arm64")]),
            tolerations: vec![core::Toleration {
                key: s("k"),
                operator: s("Exists"),
                value: s(""),
                effect: s("NoSchedule"),
                toleration_seconds: None,
            }],
            ..Default::default()
        }
    }

    fn pod_spec_json() -> Value {
        json!({
            "volumes": [{"name": "scratch", "emptyDir": {}}],
            "containers": [{
                "name": "hello",
                "image": "kedge.dev/samples/hello-wasm:v1",
                "ports": [{"containerPort": 80, "protocol": "TCP"}],
                "env": [{"name": "A"}, {"name": "B", "valueFrom": {"configMapKeyRef":
                    {"name": "cm", "key": "k", "optional": false}}}],
                "resources": {"limits": {"memory": "64Mi"}},
                "readinessProbe": {"httpGet": {"path": "/healthz", "port": "http"}, "periodSeconds": 5},
                "volumeMounts": [{"name": "scratch", "mountPath": "/tmp"}],
            }],
            "terminationGracePeriodSeconds": 0,
            "nodeSelector": {"kubernetes.io/arch": "arm64"},
            "tolerations": [{"key": "k", "operator": "Exists", "effect": "NoSchedule"}],
        })
    }

    fn deployment() -> apps::Deployment {
        let sel = labels(&[("app", "web")]);
        apps::Deployment {
            metadata: Some(meta::ObjectMeta {
                labels: sel.clone(),
                ..meta("web")
            }),
            spec: Some(apps::DeploymentSpec {
                replicas: Some(2),
                selector: Some(meta::LabelSelector {
                    match_labels: sel.clone(),
                    match_expressions: vec![],
                }),
                template: Some(core::PodTemplateSpec {
                    metadata: Some(meta::ObjectMeta {
                        labels: sel,
                        ..meta("")
                    }),
                    spec: Some(pod_spec()),
                }),
                strategy: Some(apps::DeploymentStrategy {
                    r#type: s("RollingUpdate"),
                    rolling_update: Some(apps::RollingUpdateDeployment {
                        max_unavailable: Some(IntOrString {
                            r#type: Some(0),
                            int_val: Some(0),
                            str_val: s(""),
                        }),
                        max_surge: Some(IntOrString {
                            r#type: Some(1),
                            int_val: Some(0),
                            str_val: s("25%"),
                        }),
                    }),
                }),
                min_ready_seconds: Some(0),
                paused: Some(false),
                ..Default::default()
            }),
            status: Some(apps::DeploymentStatus {
                replicas: Some(0),
                ..Default::default()
            }),
        }
    }

    #[test]
    fn deployment_with_a_full_pod_template() {
        let got = decode(&body("apps/v1", "Deployment", &deployment())).unwrap();
        assert_eq!(
            got,
            json!({"apiVersion": "apps/v1", "kind": "Deployment",
            "metadata": {"name": "web", "labels": {"app": "web"}},
            "spec": {
                "replicas": 2,
                "selector": {"matchLabels": {"app": "web"}},
                "template": {"metadata": {"labels": {"app": "web"}}, "spec": pod_spec_json()},
                "strategy": {"type": "RollingUpdate",
                    "rollingUpdate": {"maxUnavailable": 0, "maxSurge": "25%"}},
            }})
        );
        // What the typed decode downstream accepts.
        let _: k8s_openapi::api::apps::v1::Deployment = serde_json::from_value(got).unwrap();
    }

    #[test]
    fn zero_replicas_are_kept() {
        let mut d = deployment();
        d.spec.as_mut().unwrap().replicas = Some(0);
        let got = decode(&body("apps/v1", "Deployment", &d)).unwrap();
        assert_eq!(got["spec"]["replicas"], json!(0));
    }

    #[test]
    fn service_job_cronjob_serviceaccount() {
        let svc = core::Service {
            metadata: Some(meta("web")),
            spec: Some(core::ServiceSpec {
                ports: vec![core::ServicePort {
                    name: s("80-8080"),
                    protocol: s("TCP"),
                    app_protocol: None,
                    port: Some(80),
                    target_port: Some(IntOrString {
                        r#type: Some(0),
                        int_val: Some(8080),
                        str_val: s(""),
                    }),
                    node_port: Some(30080),
                }],
                selector: labels(&[("app", "web")]),
                cluster_ip: s(""),
                r#type: s("NodePort"),
                session_affinity: s(""),
                health_check_node_port: Some(0),
                publish_not_ready_addresses: Some(false),
                ..Default::default()
            }),
            status: Some(Default::default()),
        };
        assert_eq!(
            decode(&body("v1", "Service", &svc)).unwrap(),
            json!({"apiVersion": "v1", "kind": "Service", "metadata": {"name": "web"},
                "spec": {"ports": [{"name": "80-8080", "protocol": "TCP", "port": 80,
                    "targetPort": 8080, "nodePort": 30080}],
                    "selector": {"app": "web"}, "type": "NodePort"}})
        );

        let job_spec = batch::JobSpec {
            backoff_limit: Some(0),
            template: Some(core::PodTemplateSpec {
                metadata: Some(meta("")),
                spec: Some(core::PodSpec {
                    restart_policy: s("Never"),
                    ..pod_spec()
                }),
            }),
            ..Default::default()
        };
        let job = batch::Job {
            metadata: Some(meta("once")),
            spec: Some(job_spec.clone()),
            status: Some(Default::default()),
        };
        let mut spec = pod_spec_json();
        spec["restartPolicy"] = json!("Never");
        let job_json = json!({"backoffLimit": 0, "template": {"metadata": {}, "spec": spec}});
        assert_eq!(
            decode(&body("batch/v1", "Job", &job)).unwrap(),
            json!({"apiVersion": "batch/v1", "kind": "Job", "metadata": {"name": "once"},
                "spec": job_json})
        );

        let cj = batch::CronJob {
            metadata: Some(meta("tick")),
            spec: Some(batch::CronJobSpec {
                schedule: s("*/5 * * * *"),
                job_template: Some(batch::JobTemplateSpec {
                    metadata: Some(meta("tick")),
                    spec: Some(job_spec),
                }),
                concurrency_policy: s(""),
                suspend: None,
                ..Default::default()
            }),
            status: Some(Default::default()),
        };
        assert_eq!(
            decode(&body("batch/v1", "CronJob", &cj)).unwrap(),
            json!({"apiVersion": "batch/v1", "kind": "CronJob", "metadata": {"name": "tick"},
                "spec": {"schedule": "*/5 * * * *",
                    "jobTemplate": {"metadata": {"name": "tick"}, "spec": job_json}}})
        );

        let sa = core::ServiceAccount {
            metadata: Some(meta::ObjectMeta {
                creation_timestamp: Some(meta::Time {
                    seconds: Some(1_700_000_000),
                    nanos: Some(0),
                }),
                ..meta("robot")
            }),
            image_pull_secrets: vec![core::LocalObjectReference { name: s("regcred") }],
            automount_service_account_token: Some(false),
            ..Default::default()
        };
        assert_eq!(
            decode(&body("v1", "ServiceAccount", &sa)).unwrap(),
            json!({"apiVersion": "v1", "kind": "ServiceAccount",
                "metadata": {"name": "robot", "creationTimestamp": "2023-11-14T22:13:20Z"},
                "imagePullSecrets": [{"name": "regcred"}],
                "automountServiceAccountToken": false})
        );
    }

    fn err(body: &[u8]) -> ApiError {
        decode(body).unwrap_err()
    }

    #[test]
    fn unconverted_fields_are_refused_by_name() {
        let with_file_key_ref = |f: core::FileKeySelector| {
            let mut d = deployment();
            let spec = d.spec.as_mut().unwrap().template.as_mut().unwrap();
            spec.spec.as_mut().unwrap().containers[0].env[1]
                .value_from
                .as_mut()
                .unwrap()
                .file_key_ref = Some(f);
            d
        };
        // An empty message carries nothing…
        decode(&body(
            "apps/v1",
            "Deployment",
            &with_file_key_ref(Default::default()),
        ))
        .unwrap();
        // …but a set field is refused, by its JSON path.
        let d = with_file_key_ref(core::FileKeySelector {
            key: s("k"),
            ..Default::default()
        });
        let e = err(&body("apps/v1", "Deployment", &d));
        assert_eq!((e.code, e.reason), (415, "UnsupportedMediaType"));
        assert!(
            e.message
                .contains("spec.template.spec.containers[0].env[1].valueFrom.fileKeyRef"),
            "{}",
            e.message
        );
        assert!(
            e.message
                .contains("--dry-run=client -o yaml | kubectl apply -f -")
        );

        let mut p = core::Pod {
            metadata: Some(meta("p")),
            spec: Some(pod_spec()),
            status: None,
        };
        p.spec.as_mut().unwrap().volumes[0]
            .volume_source
            .as_mut()
            .unwrap()
            .nfs = Some(core::NfsVolumeSource {
            server: s("nas"),
            ..Default::default()
        });
        let e = err(&body("v1", "Pod", &p));
        assert!(e.message.contains("spec.volumes[0].nfs"), "{}", e.message);
    }

    #[test]
    fn fields_unknown_to_k8s_pb_are_refused() {
        let mut raw = core::ConfigMap {
            metadata: Some(meta("c")),
            ..Default::default()
        }
        .encode_to_vec();
        // Field 99, a string, inside nothing k8s-pb knows.
        raw.extend([0x9a, 0x06, 0x01, b'x']);
        let e = err(&envelope("v1", "ConfigMap", raw));
        assert_eq!(e.code, 415);
        assert!(e.message.contains("field number path 99"), "{}", e.message);

        // Nested: field 99 inside metadata (field 1).
        let mut meta_raw = meta("c").encode_to_vec();
        meta_raw.extend([0x9a, 0x06, 0x01, b'x']);
        let mut raw = vec![0x0a, meta_raw.len() as u8];
        raw.extend(meta_raw);
        let e = err(&envelope("v1", "ConfigMap", raw));
        assert!(
            e.message.contains("field number path 1.99"),
            "{}",
            e.message
        );
    }

    #[test]
    fn go_style_empty_map_values_are_not_unknown_fields() {
        // Go writes the empty value of a map entry; prost leaves it out when re-encoding.
        let mut raw = meta("c").encode_to_vec();
        raw = [vec![0x0a, raw.len() as u8], raw].concat();
        // data (field 2): entry {1: "k", 2: ""}.
        raw.extend([0x12, 0x05, 0x0a, 0x01, b'k', 0x12, 0x00]);
        let got = decode(&envelope("v1", "ConfigMap", raw)).unwrap();
        assert_eq!(got["data"], json!({"k": ""}));
    }

    /// `kubectl autoscale` sends an autoscaling/v1 HorizontalPodAutoscaler.
    #[test]
    fn kubectl_autoscale_body() {
        let hpa = autoscaling::HorizontalPodAutoscaler {
            metadata: Some(meta("web")),
            spec: Some(autoscaling::HorizontalPodAutoscalerSpec {
                scale_target_ref: Some(autoscaling::CrossVersionObjectReference {
                    kind: s("Deployment"),
                    name: s("web"),
                    api_version: s("apps/v1"),
                }),
                min_replicas: Some(10),
                max_replicas: Some(15),
                target_cpu_utilization_percentage: Some(80),
            }),
            status: Some(Default::default()),
        };
        assert_eq!(
            decode(&body("autoscaling/v1", "HorizontalPodAutoscaler", &hpa)).unwrap(),
            json!({"apiVersion": "autoscaling/v1", "kind": "HorizontalPodAutoscaler",
                "metadata": {"name": "web"},
                "spec": {"scaleTargetRef": {"kind": "Deployment", "name": "web", "apiVersion": "apps/v1"},
                    "minReplicas": 10, "maxReplicas": 15, "targetCPUUtilizationPercentage": 80}})
        );
    }

    /// `kubectl create pdb` and `kubectl drain` send these: a budget of 0 is kept (a pointer
    /// in Go), and an eviction's delete options come through whole.
    #[test]
    fn budgets_and_evictions() {
        let budget = policy::PodDisruptionBudget {
            metadata: Some(meta("web")),
            spec: Some(policy::PodDisruptionBudgetSpec {
                max_unavailable: Some(IntOrString {
                    r#type: Some(0),
                    int_val: Some(0),
                    str_val: s(""),
                }),
                selector: Some(meta::LabelSelector {
                    match_labels: labels(&[("app", "web")]),
                    ..Default::default()
                }),
                ..Default::default()
            }),
            status: Some(Default::default()),
        };
        assert_eq!(
            decode(&body("policy/v1", "PodDisruptionBudget", &budget)).unwrap(),
            json!({"apiVersion": "policy/v1", "kind": "PodDisruptionBudget",
                "metadata": {"name": "web"},
                "spec": {"maxUnavailable": 0, "selector": {"matchLabels": {"app": "web"}}}})
        );
        let options = meta::DeleteOptions {
            grace_period_seconds: Some(0),
            preconditions: Some(meta::Preconditions {
                uid: s("u-1"),
                resource_version: None,
            }),
            dry_run: vec!["All".into()],
            ..Default::default()
        };
        let want = |v: &str| {
            json!({"apiVersion": v, "kind": "Eviction",
                "metadata": {"name": "web-1"},
                "deleteOptions": {"gracePeriodSeconds": 0, "preconditions": {"uid": "u-1"},
                    "dryRun": ["All"]}})
        };
        let v1 = policy::Eviction {
            metadata: Some(meta("web-1")),
            delete_options: Some(options.clone()),
        };
        assert_eq!(
            decode(&body("policy/v1", "Eviction", &v1)).unwrap(),
            want("policy/v1")
        );
        let beta = policy_beta::Eviction {
            metadata: Some(meta("web-1")),
            delete_options: Some(options),
        };
        assert_eq!(
            decode(&body("policy/v1beta1", "Eviction", &beta)).unwrap(),
            want("policy/v1beta1")
        );
    }

    #[test]
    fn unsupported_kinds_are_415() {
        let e = err(&envelope("apps/v1", "StatefulSet", vec![]));
        assert_eq!(e.code, 415);
        assert!(e.message.contains("StatefulSet") && e.message.contains("kubectl apply -f -"));
        let e = err(&envelope("authentication.k8s.io/v1", "TokenReview", vec![]));
        assert_eq!(e.code, 415);
    }

    #[test]
    fn rbac_token_and_review_bodies() {
        use k8s_pb::api::{authentication::v1 as authn, rbac::v1 as rbac};
        let role = rbac::Role {
            metadata: Some(meta("pod-reader")),
            rules: vec![rbac::PolicyRule {
                verbs: vec!["get".into(), "list".into()],
                api_groups: vec!["".into()],
                resources: vec!["pods".into()],
                ..Default::default()
            }],
        };
        let v = decode(&body("rbac.authorization.k8s.io/v1", "Role", &role)).unwrap();
        assert_eq!(
            v["rules"],
            serde_json::json!([{"verbs": ["get", "list"], "apiGroups": [""], "resources": ["pods"]}])
        );
        let rb = rbac::RoleBinding {
            metadata: Some(meta("b")),
            subjects: vec![rbac::Subject {
                kind: s("ServiceAccount"),
                api_group: s(""),
                name: s("bot"),
                namespace: s("default"),
            }],
            role_ref: Some(rbac::RoleRef {
                api_group: s("rbac.authorization.k8s.io"),
                kind: s("Role"),
                name: s("pod-reader"),
            }),
        };
        let v = decode(&body("rbac.authorization.k8s.io/v1", "RoleBinding", &rb)).unwrap();
        assert_eq!(v["roleRef"]["name"], "pod-reader");
        assert_eq!(
            v["subjects"],
            serde_json::json!([{"kind": "ServiceAccount", "name": "bot", "namespace": "default"}])
        );
        let tr = authn::TokenRequest {
            metadata: Some(meta("bot")),
            spec: Some(authn::TokenRequestSpec {
                expiration_seconds: Some(1200),
                ..Default::default()
            }),
            status: None,
        };
        let v = decode(&body("authentication.k8s.io/v1", "TokenRequest", &tr)).unwrap();
        assert_eq!(v["spec"]["expirationSeconds"], 1200);
    }

    #[test]
    fn malformed_bodies_are_400_not_panics() {
        assert_eq!(err(b"").code, 400);
        assert_eq!(err(b"{\"kind\":\"Namespace\"}").code, 400);
        assert_eq!(err(b"k8s\0\x0a\xff").code, 400);
        // Valid envelope, truncated object.
        let mut raw = deployment().encode_to_vec();
        raw.truncate(raw.len() / 2);
        assert_eq!(err(&envelope("apps/v1", "Deployment", raw)).code, 400);
        // Every prefix and some bit flips of a real body: errors or objects, never a panic.
        let full = body("apps/v1", "Deployment", &deployment());
        for n in 0..full.len() {
            let _ = decode(&full[..n]);
            let mut flipped = full.clone();
            flipped[n] ^= 0x5a;
            let _ = decode(&flipped);
        }
    }
}
