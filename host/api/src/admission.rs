//! Kubernetes' LimitRanger and ResourceQuota admission, in the API's write path.
//!
//! LimitRanger: a new pod's containers get the namespace's LimitRange defaults (`default` →
//! limits, `defaultRequest` → requests, each only where missing, with kube's
//! `kubernetes.io/limit-ranger` annotation); then every `min`, `max` and
//! `maxLimitRequestRatio` of Container and Pod items is checked, and a new claim against the
//! PersistentVolumeClaim items. A violation is a 403 worded as kube-apiserver's plugin words it.
//!
//! ResourceQuota: what an object counts for (`pods`, `requests.cpu`, `count/secrets`, ...) is a
//! pure function of the object ([`usage`]). There is no quota controller: a namespace's usage
//! is computed from the store, under a lock per namespace (striped) held from the check until
//! the write is stored and every quota's `status` rewritten, so two writes racing for the last
//! unit cannot both pass, and `status.used` follows every create, update and delete — the same
//! design as [`crate::alloc`]: derived from the objects, no record that could drift.

use std::collections::BTreeMap;
use std::hash::{Hash, Hasher};
use std::sync::{Mutex, MutexGuard};

use serde_json::{Value, json};

use crate::error::{ApiError, Result, qualified};
use crate::ops::{Api, ListOptions};
use kedge_core::meta;
use kedge_core::quantity;
use kedge_core::resources::{self, Resource};
use kedge_store as store;

/// A Kubernetes quantity in thousandths, remembering whether it was written in binary units
/// (`Mi`), which its canonical form keeps.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Default)]
pub(crate) struct Qty {
    milli: i128,
    binary: bool,
}

impl Qty {
    /// A non-negative quantity as Kubernetes reads it (rounded up to a thousandth).
    pub(crate) fn parse(s: &str) -> Option<Qty> {
        let milli = match quantity::parse_cpu_millis(s) {
            Ok(m) => i128::from(m),
            Err(quantity::QuantityError::Overflow(_)) => {
                i128::from(quantity::parse_bytes(s).ok()?) * 1000
            }
            Err(_) => return None,
        };
        let suffix = s.trim().trim_end_matches(|c: char| c.is_ascii_digit());
        Some(Qty {
            milli,
            binary: suffix.ends_with('i'),
        })
    }

    /// The value in thousandths.
    pub(crate) fn milli(self) -> i128 {
        self.milli
    }

    fn count(n: i128) -> Qty {
        Qty {
            milli: n * 1000,
            binary: false,
        }
    }

    fn add(self, o: Qty) -> Qty {
        Qty {
            milli: self.milli + o.milli,
            binary: self.binary || o.binary,
        }
    }

    fn sub(self, o: Qty) -> Qty {
        Qty {
            milli: self.milli - o.milli,
            binary: self.binary || o.binary,
        }
    }

    fn max(self, o: Qty) -> Qty {
        if o.milli > self.milli { o } else { self }
    }

    /// `resource.Quantity.String()`: binary units while the value is a whole number of
    /// at least 1Ki, else the largest decimal suffix that keeps an integer (`1500m`, `2`,
    /// `3M`).
    pub(crate) fn canonical(self) -> String {
        let (neg, m) = (self.milli < 0, self.milli.unsigned_abs());
        let sign = if neg { "-" } else { "" };
        if self.binary && m % 1000 == 0 && m / 1000 >= 1024 {
            let mut v = m / 1000;
            let mut unit = 0;
            while unit < 6 && v % 1024 == 0 {
                v /= 1024;
                unit += 1;
            }
            let suffix = ["", "Ki", "Mi", "Gi", "Ti", "Pi", "Ei"][unit];
            return format!("{sign}{v}{suffix}");
        }
        if m == 0 {
            return "0".into();
        }
        // Exponents of ten in thousandths: 10^3 is a unit, 10^6 a thousand (k), ...
        let suffixes = ["m", "", "k", "M", "G", "T", "P", "E"];
        let mut v = m;
        let mut i = 0;
        while i + 1 < suffixes.len() && v % 1000 == 0 {
            v /= 1000;
            i += 1;
        }
        format!("{sign}{v}{}", suffixes[i])
    }
}

/// A resource list (`{"cpu": "500m"}`), parsed; unparseable values are left out (validation
/// refuses them before admission runs).
pub(crate) type List = BTreeMap<String, Qty>;

fn list_of(v: Option<&Value>) -> List {
    v.and_then(Value::as_object)
        .into_iter()
        .flatten()
        .filter_map(|(k, v)| Some((k.clone(), Qty::parse(v.as_str()?)?)))
        .collect()
}

fn pretty(l: &List) -> String {
    l.iter()
        .map(|(k, v)| format!("{k}={}", v.canonical()))
        .collect::<Vec<_>>()
        .join(",")
}

/// `utilerrors.NewAggregate(errs).Error()`: one message as is, several deduplicated in `[..]`.
fn aggregate(msgs: &[String]) -> String {
    let mut seen: Vec<&String> = Vec::new();
    for m in msgs {
        if !seen.contains(&m) {
            seen.push(m);
        }
    }
    match seen.as_slice() {
        [one] => (*one).clone(),
        many => format!(
            "[{}]",
            many.iter()
                .map(|s| s.as_str())
                .collect::<Vec<_>>()
                .join(", ")
        ),
    }
}

/// The pod's containers and init containers (with whether each is a sidecar).
fn containers(pod: &Value) -> Vec<(&Value, bool)> {
    let mut out = Vec::new();
    for (ptr, init) in [("/spec/containers", false), ("/spec/initContainers", true)] {
        for c in pod
            .pointer(ptr)
            .and_then(Value::as_array)
            .into_iter()
            .flatten()
        {
            out.push((c, init));
        }
    }
    out
}

/// kube's `podRequests`/`podLimits` (the sidecar formula): the app containers and sidecars
/// together, or the largest init container with the sidecars started before it, whichever is
/// more, per resource.
fn pod_total(pod: &Value, which: &str) -> List {
    let of = |c: &Value| list_of(c.pointer(&format!("/resources/{which}")));
    let mut total = List::new();
    let add = |into: &mut List, l: &List| {
        for (k, v) in l {
            let e = into.entry(k.clone()).or_default();
            *e = e.add(*v);
        }
    };
    for c in pod
        .pointer("/spec/containers")
        .and_then(Value::as_array)
        .into_iter()
        .flatten()
    {
        add(&mut total, &of(c));
    }
    let mut sidecars = List::new();
    let mut init_max = List::new();
    for c in pod
        .pointer("/spec/initContainers")
        .and_then(Value::as_array)
        .into_iter()
        .flatten()
    {
        let own = of(c);
        let effective = if c.get("restartPolicy").and_then(Value::as_str) == Some("Always") {
            add(&mut total, &own);
            add(&mut sidecars, &own);
            sidecars.clone()
        } else {
            let mut t = own;
            add(&mut t, &sidecars);
            t
        };
        for (k, v) in effective {
            let e = init_max.entry(k).or_default();
            *e = e.max(v);
        }
    }
    for (k, v) in init_max {
        let e = total.entry(k).or_default();
        *e = e.max(v);
    }
    total
}

// ---- LimitRanger ----------------------------------------------------------------------

/// `mergePodResourceRequirements`: fills each container's missing limits from the
/// Container items' `default` and missing requests from their `defaultRequest`, and records
/// what it set in the `kubernetes.io/limit-ranger` annotation.
pub(crate) fn limit_defaults(ranges: &[Value], pod: &mut Value) {
    let mut limits = serde_json::Map::new();
    let mut requests = serde_json::Map::new();
    for item in items(ranges).filter(|i| item_type(i) == "Container") {
        for (src, into) in [("default", &mut limits), ("defaultRequest", &mut requests)] {
            if let Some(m) = item.get(src).and_then(Value::as_object) {
                into.extend(m.iter().map(|(k, v)| (k.clone(), v.clone())));
            }
        }
    }
    if limits.is_empty() && requests.is_empty() {
        return;
    }
    let mut notes = Vec::new();
    for (ptr, prefix) in [
        ("/spec/containers", "container"),
        ("/spec/initContainers", "init container"),
    ] {
        let Some(cs) = pod.pointer_mut(ptr).and_then(Value::as_array_mut) else {
            continue;
        };
        for c in cs {
            let name = c
                .get("name")
                .and_then(Value::as_str)
                .unwrap_or("")
                .to_string();
            let Some(c) = c.as_object_mut() else { continue };
            let res = c.entry("resources").or_insert_with(|| json!({}));
            if !res.is_object() {
                *res = json!({});
            }
            let mut set = |field: &str, defaults: &serde_json::Map<String, Value>| {
                let l = res
                    .as_object_mut()
                    .expect("object")
                    .entry(field)
                    .or_insert_with(|| json!({}));
                if !l.is_object() {
                    *l = json!({});
                }
                let l = l.as_object_mut().expect("object");
                let mut names = Vec::new();
                for (k, v) in defaults {
                    if !l.contains_key(k) {
                        l.insert(k.clone(), v.clone());
                        names.push(k.clone());
                    }
                }
                names.sort();
                names
            };
            let req = set("requests", &requests);
            let lim = set("limits", &limits);
            if !req.is_empty() {
                notes.push(format!("{} request for {prefix} {name}", req.join(", ")));
            }
            if !lim.is_empty() {
                notes.push(format!("{} limit for {prefix} {name}", lim.join(", ")));
            }
        }
    }
    if !notes.is_empty() {
        let meta = &mut pod["metadata"];
        if !meta.get("annotations").is_some_and(Value::is_object) {
            meta["annotations"] = json!({});
        }
        meta["annotations"]["kubernetes.io/limit-ranger"] =
            json!(format!("LimitRanger plugin set: {}", notes.join("; ")));
    }
}

fn items(ranges: &[Value]) -> impl Iterator<Item = &Value> {
    ranges.iter().flat_map(|r| {
        r.pointer("/spec/limits")
            .and_then(Value::as_array)
            .into_iter()
            .flatten()
    })
}

fn item_type(item: &Value) -> &str {
    item.get("type").and_then(Value::as_str).unwrap_or("")
}

/// A constraint's bound and the observed request and limit, compared in thousandths.
fn min_constraint(kind: &str, name: &str, bound: &str, req: &List, lim: &List) -> Option<String> {
    let b = Qty::parse(bound)?;
    let shown = b.canonical();
    let Some(r) = req.get(name) else {
        return Some(format!(
            "minimum {name} usage per {kind} is {shown}.  No request is specified"
        ));
    };
    if r.milli < b.milli {
        return Some(format!(
            "minimum {name} usage per {kind} is {shown}, but request is {}",
            r.canonical()
        ));
    }
    match lim.get(name) {
        Some(l) if l.milli < b.milli => Some(format!(
            "minimum {name} usage per {kind} is {shown}, but limit is {}",
            l.canonical()
        )),
        _ => None,
    }
}

fn max_constraint(kind: &str, name: &str, bound: &str, req: &List, lim: &List) -> Option<String> {
    let b = Qty::parse(bound)?;
    let shown = b.canonical();
    let Some(l) = lim.get(name) else {
        return Some(format!(
            "maximum {name} usage per {kind} is {shown}.  No limit is specified"
        ));
    };
    if l.milli > b.milli {
        return Some(format!(
            "maximum {name} usage per {kind} is {shown}, but limit is {}",
            l.canonical()
        ));
    }
    match req.get(name) {
        Some(r) if r.milli > b.milli => Some(format!(
            "maximum {name} usage per {kind} is {shown}, but request is {}",
            r.canonical()
        )),
        _ => None,
    }
}

fn max_request_constraint(kind: &str, name: &str, bound: &str, req: &List) -> Option<String> {
    let b = Qty::parse(bound)?;
    let shown = b.canonical();
    match req.get(name) {
        None => Some(format!(
            "maximum {name} usage per {kind} is {shown}.  No request is specified"
        )),
        Some(r) if r.milli > b.milli => Some(format!(
            "maximum {name} usage per {kind} is {shown}, but request is {}",
            r.canonical()
        )),
        _ => None,
    }
}

fn ratio_constraint(kind: &str, name: &str, bound: &str, req: &List, lim: &List) -> Option<String> {
    let b = Qty::parse(bound)?;
    let shown = b.canonical();
    let r = req.get(name).map_or(0, |q| q.milli);
    let l = lim.get(name).map_or(0, |q| q.milli);
    if r == 0 {
        return Some(format!(
            "{name} max limit to request ratio per {kind} is {shown}, but no request is specified or request is 0"
        ));
    }
    if l == 0 {
        return Some(format!(
            "{name} max limit to request ratio per {kind} is {shown}, but no limit is specified or limit is 0"
        ));
    }
    #[allow(clippy::cast_precision_loss)] // Kubernetes compares these as float64 too
    let observed = l as f64 / r as f64;
    #[allow(clippy::cast_precision_loss)]
    let allowed = b.milli as f64;
    (observed * 1000.0 > allowed).then(|| {
        format!(
            "{name} max limit to request ratio per {kind} is {shown}, but provided ratio is {observed:.6}"
        )
    })
}

/// Applies one item's min, max and ratio to a request and limit list.
fn check_item(item: &Value, kind: &str, req: &List, lim: &List, errs: &mut Vec<String>) {
    let each = |field: &str| -> Vec<(String, String)> {
        item.get(field)
            .and_then(Value::as_object)
            .into_iter()
            .flatten()
            .filter_map(|(k, v)| Some((k.clone(), v.as_str()?.to_string())))
            .collect()
    };
    for (k, v) in each("min") {
        errs.extend(min_constraint(kind, &k, &v, req, lim));
    }
    for (k, v) in each("max") {
        errs.extend(max_constraint(kind, &k, &v, req, lim));
    }
    for (k, v) in each("maxLimitRequestRatio") {
        errs.extend(ratio_constraint(kind, &k, &v, req, lim));
    }
}

/// `PodValidateLimitFunc` and `PersistentVolumeClaimValidateLimitFunc`, over every LimitRange
/// of the namespace: the messages of what the object violates.
pub(crate) fn limit_violations(ranges: &[Value], res: &Resource, obj: &Value) -> Vec<String> {
    let mut errs = Vec::new();
    let is_pod = res.group.is_empty() && res.kind == "Pod";
    for item in items(ranges) {
        match item_type(item) {
            "Container" if is_pod => {
                for (c, _) in containers(obj) {
                    let req = list_of(c.pointer("/resources/requests"));
                    let lim = list_of(c.pointer("/resources/limits"));
                    check_item(item, "Container", &req, &lim, &mut errs);
                }
            }
            "Pod" if is_pod => {
                let req = pod_total(obj, "requests");
                let lim = pod_total(obj, "limits");
                check_item(item, "Pod", &req, &lim, &mut errs);
            }
            "PersistentVolumeClaim" if !is_pod => {
                let req = list_of(obj.pointer("/spec/resources/requests"));
                for (k, v) in item
                    .get("min")
                    .and_then(Value::as_object)
                    .into_iter()
                    .flatten()
                {
                    errs.extend(min_constraint(
                        "PersistentVolumeClaim",
                        k,
                        v.as_str().unwrap_or_default(),
                        &req,
                        &List::new(),
                    ));
                }
                for (k, v) in item
                    .get("max")
                    .and_then(Value::as_object)
                    .into_iter()
                    .flatten()
                {
                    errs.extend(max_request_constraint(
                        "PersistentVolumeClaim",
                        k,
                        v.as_str().unwrap_or_default(),
                        &req,
                    ));
                }
            }
            _ => {}
        }
    }
    errs
}

// ---- ResourceQuota ----------------------------------------------------------------------

/// The compute resources a quota on pods may hold, which each container must then state
/// (kube's `validationSet`).
const COMPUTE: &[&str] = &[
    "cpu",
    "memory",
    "requests.cpu",
    "requests.memory",
    "limits.cpu",
    "limits.memory",
];

/// The legacy object-count names, by the kind they count.
const LEGACY_COUNTS: &[(&str, &str)] = &[
    ("Pod", "pods"),
    ("Service", "services"),
    ("ConfigMap", "configmaps"),
    ("Secret", "secrets"),
    ("PersistentVolumeClaim", "persistentvolumeclaims"),
    ("ReplicationController", "replicationcontrollers"),
    ("ResourceQuota", "resourcequotas"),
];

/// `count/<plural>` (core) or `count/<plural>.<group>`.
fn count_name(res: &Resource) -> String {
    if res.group.is_empty() {
        format!("count/{}", res.plural)
    } else {
        format!("count/{}.{}", res.plural, res.group)
    }
}

/// The resources a kind's usage is reported in (kube's evaluators' `MatchingResources`).
fn tracked_names(res: &Resource) -> Vec<String> {
    let mut out = vec![count_name(res)];
    if res.group.is_empty() {
        for (kind, name) in LEGACY_COUNTS {
            if *kind == res.kind {
                out.push((*name).to_string());
            }
        }
        match res.kind {
            "Pod" => out.extend(COMPUTE.iter().map(|s| s.to_string())),
            "Service" => out.extend(["services.nodeports".into(), "services.loadbalancers".into()]),
            "PersistentVolumeClaim" => out.push("requests.storage".into()),
            _ => {}
        }
    }
    out
}

/// The served kind a quota resource name counts, if kedge implements it.
pub(crate) fn kind_of(name: &str) -> Option<&'static Resource> {
    resources::all()
        .into_iter()
        .filter(|r| r.namespaced)
        .find(|r| tracked_names(r).iter().any(|n| n == name))
}

/// `QuotaV1Pod`: terminal pods, and pods left terminating past their grace period, use no
/// compute resources (they still count in `count/pods`).
fn pod_counts(pod: &Value, now: chrono::DateTime<chrono::Utc>) -> bool {
    if matches!(
        pod.pointer("/status/phase").and_then(Value::as_str),
        Some("Succeeded" | "Failed")
    ) {
        return false;
    }
    let deleted = pod
        .pointer("/metadata/deletionTimestamp")
        .and_then(Value::as_str)
        .and_then(|t| chrono::DateTime::parse_from_rfc3339(t).ok());
    let grace = pod
        .pointer("/metadata/deletionGracePeriodSeconds")
        .and_then(Value::as_i64);
    match (deleted, grace) {
        (Some(t), Some(g)) => now <= t.with_timezone(&chrono::Utc) + chrono::Duration::seconds(g),
        _ => true,
    }
}

/// What one object counts for, as kube's quota evaluators count it.
pub(crate) fn usage(res: &Resource, obj: &Value, now: chrono::DateTime<chrono::Utc>) -> List {
    let mut u = List::new();
    u.insert(count_name(res), Qty::count(1));
    if !res.group.is_empty() {
        return u;
    }
    for (kind, name) in LEGACY_COUNTS {
        if *kind == res.kind && *kind != "Pod" {
            u.insert((*name).to_string(), Qty::count(1));
        }
    }
    match res.kind {
        "Pod" if pod_counts(obj, now) => {
            u.insert("pods".into(), Qty::count(1));
            let req = pod_total(obj, "requests");
            let lim = pod_total(obj, "limits");
            for r in ["cpu", "memory"] {
                if let Some(q) = req.get(r) {
                    u.insert(r.into(), *q);
                    u.insert(format!("requests.{r}"), *q);
                }
                if let Some(q) = lim.get(r) {
                    u.insert(format!("limits.{r}"), *q);
                }
            }
        }
        "Service" => {
            let ports = obj
                .pointer("/spec/ports")
                .and_then(Value::as_array)
                .map_or(0, Vec::len);
            let ty = obj.pointer("/spec/type").and_then(Value::as_str);
            let node_ports = match ty {
                Some("NodePort") => ports,
                Some("LoadBalancer")
                    if obj.pointer("/spec/allocateLoadBalancerNodePorts")
                        != Some(&json!(false)) =>
                {
                    ports
                }
                _ => 0,
            };
            u.insert("services.nodeports".into(), Qty::count(node_ports as i128));
            u.insert(
                "services.loadbalancers".into(),
                Qty::count(i128::from(ty == Some("LoadBalancer"))),
            );
        }
        "PersistentVolumeClaim" => {
            if let Some(q) = list_of(obj.pointer("/spec/resources/requests")).get("storage") {
                u.insert("requests.storage".into(), *q);
            }
        }
        _ => {}
    }
    u
}

/// kube's pod evaluator `Constraints`: with a quota on compute resources, every container
/// states each of them.
fn missing_compute(pod: &Value, hard: &List) -> Option<String> {
    let required: Vec<&str> = COMPUTE
        .iter()
        .copied()
        .filter(|r| hard.contains_key(*r))
        .collect();
    let mut missing: BTreeMap<&str, Vec<String>> = BTreeMap::new();
    for (c, _) in containers(pod) {
        let req = list_of(c.pointer("/resources/requests"));
        let lim = list_of(c.pointer("/resources/limits"));
        for r in &required {
            let has = match *r {
                "cpu" | "requests.cpu" => req.contains_key("cpu"),
                "memory" | "requests.memory" => req.contains_key("memory"),
                "limits.cpu" => lim.contains_key("cpu"),
                _ => lim.contains_key("memory"),
            };
            if !has {
                let name = c.get("name").and_then(Value::as_str).unwrap_or("");
                missing.entry(r).or_default().push(name.to_string());
            }
        }
    }
    if missing.is_empty() {
        return None;
    }
    let parts: Vec<String> = missing
        .into_iter()
        .map(|(r, mut names)| {
            names.sort();
            names.dedup();
            format!("{r} for: {}", names.join(","))
        })
        .collect();
    Some(format!("must specify {}", parts.join("; ")))
}

/// Striped per-namespace locks: a namespace's quota check and its write happen under one.
#[derive(Default)]
pub(crate) struct Locks([Mutex<()>; 16]);

impl Locks {
    fn lock(&self, ns: &str) -> MutexGuard<'_, ()> {
        let mut h = std::collections::hash_map::DefaultHasher::new();
        ns.hash(&mut h);
        let i = (h.finish() % self.0.len() as u64) as usize;
        self.0[i].lock().unwrap_or_else(|p| p.into_inner())
    }
}

/// Held from a write's quota check until it is stored; dropping it rewrites the namespace's
/// quota statuses from the store.
pub(crate) struct QuotaGuard<'a> {
    api: &'a Api,
    ns: String,
    _lock: MutexGuard<'a, ()>,
}

impl Drop for QuotaGuard<'_> {
    fn drop(&mut self) {
        if let Err(e) = self.api.refresh_quotas(&self.ns) {
            tracing::warn!(namespace = %self.ns, error = %e, "updating quota status failed");
        }
    }
}

fn quota_resource() -> &'static Resource {
    resources::by_kind("v1", "ResourceQuota").expect("resourcequotas are served")
}

fn hard_of(quota: &Value) -> List {
    list_of(quota.pointer("/spec/hard"))
}

/// `pods "x"` for the message: the generateName prefix for a generated name, as
/// kube-apiserver names an object admission sees before its name is generated.
fn display_name(obj: &Value) -> String {
    let name = meta::name(obj);
    match obj
        .pointer("/metadata/generateName")
        .and_then(Value::as_str)
    {
        Some(g) if !g.is_empty() && name.starts_with(g) && name.len() == g.len() + 5 => g.into(),
        _ => name.into(),
    }
}

impl Api {
    fn now_utc(&self) -> chrono::DateTime<chrono::Utc> {
        chrono::DateTime::parse_from_rfc3339(&self.now())
            .map(|t| t.with_timezone(&chrono::Utc))
            .unwrap_or_else(|_| chrono::Utc::now())
    }

    fn in_namespace(&self, kind: &str, ns: &str) -> Result<Vec<Value>> {
        let res = resources::by_kind("v1", kind).expect("served");
        let list = self.list(res, ns, &ListOptions::default())?;
        Ok(list["items"].as_array().cloned().unwrap_or_default())
    }

    /// LimitRanger's defaults for a new pod (before validation, as a mutating plugin).
    pub(crate) fn limit_range_defaults(&self, res: &Resource, ns: &str, obj: &mut Value) {
        if !(res.group.is_empty() && res.kind == "Pod") {
            return;
        }
        if let Ok(ranges) = self.in_namespace("LimitRange", ns)
            && !ranges.is_empty()
        {
            limit_defaults(&ranges, obj);
        }
    }

    /// The namespace's usage of `names`, from the store.
    fn used(&self, ns: &str, names: &[String]) -> Result<List> {
        let now = self.now_utc();
        let mut used = List::new();
        let mut kinds: Vec<&'static Resource> = Vec::new();
        for n in names {
            used.insert(n.clone(), Qty::default());
            if let Some(r) = kind_of(n)
                && !kinds.iter().any(|k| std::ptr::eq(*k, r))
            {
                kinds.push(r);
            }
        }
        for r in kinds {
            let list = self.list(r, ns, &ListOptions::default())?;
            for o in list["items"].as_array().into_iter().flatten() {
                for (k, v) in usage(r, o, now) {
                    if let Some(e) = used.get_mut(&k) {
                        *e = e.add(v);
                    }
                }
            }
        }
        Ok(used)
    }

    /// A quota's status as the store has it now: `hard` from the spec, `used` of each.
    fn quota_status(&self, ns: &str, quota: &Value) -> Result<Value> {
        let hard = quota.pointer("/spec/hard").cloned().unwrap_or(json!({}));
        let names: Vec<String> = hard_of(quota).into_keys().collect();
        let used = self.used(ns, &names)?;
        let used: serde_json::Map<String, Value> = used
            .into_iter()
            .map(|(k, v)| (k, json!(v.canonical())))
            .collect();
        Ok(json!({"hard": hard, "used": used}))
    }

    /// Rewrites every quota status of the namespace that differs from the store's usage.
    fn refresh_quotas(&self, ns: &str) -> Result<()> {
        let res = quota_resource();
        for _ in 0..5 {
            let mut conflict = false;
            for q in self.in_namespace("ResourceQuota", ns)? {
                let status = self.quota_status(ns, &q)?;
                if q.get("status") == Some(&status) {
                    continue;
                }
                let mut next = q.clone();
                next["status"] = status;
                let key = store::key("", res.plural, ns, meta::name(&q));
                match self.store().update(&key, next, store::revision_of(&q)) {
                    Ok(_) => {}
                    Err(store::Error::Conflict { .. }) => conflict = true,
                    Err(store::Error::NotFound) => {}
                    Err(e) => return Err(ApiError::from_store(e, res, meta::name(&q))),
                }
            }
            if !conflict {
                return Ok(());
            }
        }
        Ok(())
    }

    /// The admission of a write of `new` in place of `old` (`None`: a create; `new` None: a
    /// delete): LimitRanger's checks of a new pod or claim, then every quota of the namespace.
    /// Returns the guard to hold until the write is stored, or None when no quota is involved.
    pub(crate) fn admit(
        &self,
        res: &'static Resource,
        ns: &str,
        old: Option<&Value>,
        new: Option<&mut Value>,
    ) -> Result<Option<QuotaGuard<'_>>> {
        if !res.namespaced {
            return Ok(None);
        }
        let creating = old.is_none();
        if creating
            && let Some(obj) = new.as_deref()
            && res.group.is_empty()
            && matches!(res.kind, "Pod" | "PersistentVolumeClaim")
        {
            let ranges = self.in_namespace("LimitRange", ns)?;
            let errs = limit_violations(&ranges, res, obj);
            if !errs.is_empty() {
                return Err(forbidden(res, obj, &aggregate(&errs)));
            }
        }
        let is_quota = res.group.is_empty() && res.kind == "ResourceQuota";
        // Most namespaces have no quota. Seen so without the lock, a write there is not held
        // up behind the namespace's other writes (on etcd the lock would serialize a read's
        // round trip). As before, a write that found no quota goes on without the lock, so
        // one racing a quota's creation may be missing from its `status.used` until the
        // namespace's next quota-counted write (later checks count live objects), as
        // Kubernetes' quota admission, reading quotas from its informer, lets writes through
        // while a quota is being created.
        if !is_quota && self.in_namespace("ResourceQuota", ns)?.is_empty() {
            return Ok(None);
        }
        let lock = self.quota.lock(ns);
        let quotas = self.in_namespace("ResourceQuota", ns)?;
        if quotas.is_empty() && !is_quota {
            return Ok(None);
        }
        let now = self.now_utc();
        let before = old.map(|o| usage(res, o, now)).unwrap_or_default();
        let after = new
            .as_deref()
            .map(|o| usage(res, o, now))
            .unwrap_or_default();
        let mut delta = after.clone();
        for (k, v) in &before {
            let e = delta.entry(k.clone()).or_default();
            *e = e.sub(*v);
        }
        if old.is_some() && new.is_some() && !is_quota && delta.values().all(|v| v.milli == 0) {
            // An update that changes no usage (a pod's status, a relabel): nothing to check or
            // to rewrite.
            return Ok(None);
        }
        let names = tracked_names(res);
        if let Some(obj) = new.as_deref() {
            for q in &quotas {
                if meta::name(q) == meta::name(obj) && is_quota && !creating {
                    continue;
                }
                let hard = hard_of(q);
                if !hard.keys().any(|k| names.contains(k)) {
                    continue;
                }
                if creating
                    && res.kind == "Pod"
                    && let Some(why) = missing_compute(obj, &hard)
                {
                    return Err(forbidden(
                        res,
                        obj,
                        &format!("failed quota: {}: {why}", meta::name(q)),
                    ));
                }
                // Only what grows is checked: an update that lowers a usage still over a
                // lowered quota goes through.
                let requested: List = delta
                    .iter()
                    .filter(|(k, v)| hard.contains_key(*k) && v.milli > 0)
                    .map(|(k, v)| (k.clone(), *v))
                    .collect();
                if requested.is_empty() {
                    continue;
                }
                let keys: Vec<String> = requested.keys().cloned().collect();
                let used = self.used(ns, &keys)?;
                let exceeded: Vec<&String> = keys
                    .iter()
                    .filter(|k| used[*k].add(requested[*k]).milli > hard[*k].milli)
                    .collect();
                if !exceeded.is_empty() {
                    let mask = |l: &List| -> List {
                        l.iter()
                            .filter(|(k, _)| exceeded.contains(k))
                            .map(|(k, v)| (k.clone(), *v))
                            .collect()
                    };
                    return Err(forbidden(
                        res,
                        obj,
                        &format!(
                            "exceeded quota: {}, requested: {}, used: {}, limited: {}",
                            meta::name(q),
                            pretty(&mask(&requested)),
                            pretty(&mask(&used)),
                            pretty(&mask(&hard))
                        ),
                    ));
                }
            }
        }
        if is_quota && let Some(obj) = new {
            // The quota's own status, counting this write (it may count quotas itself).
            let names: Vec<String> = hard_of(obj).into_keys().collect();
            let mut used = self.used(ns, &names)?;
            for (k, v) in used.iter_mut() {
                if let Some(d) = delta.get(k) {
                    *v = v.add(*d);
                }
            }
            let used: serde_json::Map<String, Value> = used
                .into_iter()
                .map(|(k, v)| (k, json!(v.canonical())))
                .collect();
            let hard = obj.pointer("/spec/hard").cloned().unwrap_or(json!({}));
            obj["status"] = json!({"hard": hard, "used": used});
        }
        Ok(Some(QuotaGuard {
            api: self,
            ns: ns.to_string(),
            _lock: lock,
        }))
    }
}

/// 403 `pods "x" is forbidden: <why>`.
fn forbidden(res: &Resource, obj: &Value, why: &str) -> ApiError {
    let name = display_name(obj);
    ApiError {
        details: Some(json!({"name": name, "group": res.group, "kind": res.plural})),
        ..ApiError::forbidden(format!("{} \"{name}\" is forbidden: {why}", qualified(res)))
    }
}

#[cfg(test)]
mod tests {
    use std::sync::Arc;

    use serde_json::{Value, json};

    use super::*;
    use crate::ops::{Api, DeleteOptions, WriteOptions, system_clock};
    use kedge_core::resources::by_kind;
    use kedge_store::redb::{Options, RedbStore};

    #[test]
    fn quantities_print_as_kubernetes_canonical_form() {
        for (input, out) in [
            ("500m", "500m"),
            ("0.5", "500m"),
            ("1000m", "1"),
            ("1", "1"),
            ("2000000", "2M"),
            ("128Mi", "128Mi"),
            ("1024Mi", "1Gi"),
            ("1536Mi", "1536Mi"),
            ("512", "512"),
            ("1G", "1G"),
            ("0", "0"),
        ] {
            assert_eq!(Qty::parse(input).unwrap().canonical(), out, "{input}");
        }
    }

    fn pod(containers: Value) -> Value {
        json!({"metadata": {"name": "p"}, "spec": {"containers": containers}})
    }

    /// LimitRanger: defaults only where missing, with kube's annotation; then min, max and
    /// ratio with kube's messages.
    #[test]
    fn limit_ranges_default_then_bound_containers() {
        let lr = json!({"spec": {"limits": [{"type": "Container",
            "default": {"cpu": "500m", "memory": "256Mi"},
            "defaultRequest": {"cpu": "100m", "memory": "128Mi"},
            "max": {"cpu": "1"}, "min": {"cpu": "50m"}, "maxLimitRequestRatio": {"cpu": "5"}}]}});
        let mut p = pod(json!([
            {"name": "bare", "image": "i"},
            {"name": "some", "image": "i", "resources": {"limits": {"cpu": "800m"}, "requests": {"cpu": "800m"}}},
        ]));
        limit_defaults(std::slice::from_ref(&lr), &mut p);
        assert_eq!(
            p["spec"]["containers"][0]["resources"],
            json!({"requests": {"cpu": "100m", "memory": "128Mi"},
                "limits": {"cpu": "500m", "memory": "256Mi"}})
        );
        assert_eq!(
            p["spec"]["containers"][1]["resources"],
            json!({"requests": {"cpu": "800m", "memory": "128Mi"},
                "limits": {"cpu": "800m", "memory": "256Mi"}})
        );
        assert_eq!(
            p["metadata"]["annotations"]["kubernetes.io/limit-ranger"],
            "LimitRanger plugin set: cpu, memory request for container bare; cpu, memory limit \
             for container bare; memory request for container some; memory limit for container some"
        );
        let pods = by_kind("v1", "Pod").unwrap();
        assert!(limit_violations(std::slice::from_ref(&lr), pods, &p).is_empty());

        let big = pod(json!([{"name": "c", "image": "i",
            "resources": {"limits": {"cpu": "2"}, "requests": {"cpu": "100m"}}}]));
        assert_eq!(
            limit_violations(std::slice::from_ref(&lr), pods, &big),
            [
                "maximum cpu usage per Container is 1, but limit is 2",
                "cpu max limit to request ratio per Container is 5, but provided ratio is 20.000000",
            ]
        );
        let small = pod(json!([{"name": "c", "image": "i",
            "resources": {"limits": {"cpu": "1"}, "requests": {"cpu": "10m"}}}]));
        let errs = limit_violations(std::slice::from_ref(&lr), pods, &small);
        assert_eq!(
            errs[0],
            "minimum cpu usage per Container is 50m, but request is 10m"
        );
        assert_eq!(
            aggregate(&errs),
            "[minimum cpu usage per Container is 50m, but request is 10m, cpu max limit to \
             request ratio per Container is 5, but provided ratio is 100.000000]"
        );
        let none = pod(json!([{"name": "c", "image": "i"}]));
        assert_eq!(
            limit_violations(std::slice::from_ref(&lr), pods, &none)[0],
            "minimum cpu usage per Container is 50m.  No request is specified"
        );

        // Pod items bound the pod's sum; claims their storage request.
        let per_pod = json!({"spec": {"limits": [{"type": "Pod", "max": {"memory": "1Gi"}}]}});
        let two = pod(json!([
            {"name": "a", "image": "i", "resources": {"limits": {"memory": "768Mi"}}},
            {"name": "b", "image": "i", "resources": {"limits": {"memory": "512Mi"}}},
        ]));
        assert_eq!(
            limit_violations(&[per_pod], pods, &two),
            ["maximum memory usage per Pod is 1Gi, but limit is 1280Mi"]
        );
        let claims = json!({"spec": {"limits": [{"type": "PersistentVolumeClaim",
            "max": {"storage": "2Gi"}, "min": {"storage": "1Gi"}}]}});
        let pvc = json!({"spec": {"resources": {"requests": {"storage": "5Gi"}}}});
        assert_eq!(
            limit_violations(
                &[claims],
                by_kind("v1", "PersistentVolumeClaim").unwrap(),
                &pvc
            ),
            ["maximum storage usage per PersistentVolumeClaim is 2Gi, but request is 5Gi"]
        );
    }

    #[test]
    fn usage_counts_as_kubes_evaluators() {
        let now = chrono::Utc::now();
        let pods = by_kind("v1", "Pod").unwrap();
        let p = json!({"spec": {
            "containers": [{"name": "a", "resources": {"requests": {"cpu": "250m"}, "limits": {"cpu": "500m", "memory": "64Mi"}}},
                           {"name": "b", "resources": {"requests": {"cpu": "250m"}}}],
            "initContainers": [{"name": "i", "resources": {"requests": {"cpu": "1"}}}]}});
        let u = usage(pods, &p, now);
        assert_eq!(
            pretty(&u),
            "count/pods=1,cpu=1,limits.cpu=500m,limits.memory=64Mi,pods=1,requests.cpu=1"
        );
        let mut done = p.clone();
        done["status"] = json!({"phase": "Succeeded"});
        assert_eq!(pretty(&usage(pods, &done, now)), "count/pods=1");
        let svc = by_kind("v1", "Service").unwrap();
        let np = json!({"spec": {"type": "NodePort", "ports": [{"port": 1}, {"port": 2}]}});
        assert_eq!(
            pretty(&usage(svc, &np, now)),
            "count/services=1,services=1,services.loadbalancers=0,services.nodeports=2"
        );
        let dep = by_kind("apps/v1", "Deployment").unwrap();
        assert_eq!(
            pretty(&usage(dep, &json!({}), now)),
            "count/deployments.apps=1"
        );
    }

    fn api() -> (tempfile::TempDir, Api) {
        let dir = tempfile::tempdir().unwrap();
        let store = RedbStore::open(&dir.path().join("s"), Options::default()).unwrap();
        let api = Api::new(Arc::new(store), system_clock());
        let ns = by_kind("v1", "Namespace").unwrap();
        api.create(
            ns,
            "",
            json!({"metadata": {"name": "d"}}),
            &WriteOptions::default(),
        )
        .unwrap();
        (dir, api)
    }

    fn small_pod(name: &str) -> Value {
        json!({"metadata": {"name": name}, "spec": {"containers": [{"name": "c", "image": "i",
            "resources": {"limits": {"cpu": "100m", "memory": "32Mi"}}}]}})
    }

    /// Through the API: the third pod is refused with kube's message, a pod without limits
    /// under a compute quota too, the status follows creates and deletes, and terminal pods
    /// stop counting.
    #[test]
    fn quotas_are_enforced_and_their_status_kept() {
        let (_dir, api) = api();
        let w = WriteOptions::default();
        let (rq, pods) = (
            by_kind("v1", "ResourceQuota").unwrap(),
            by_kind("v1", "Pod").unwrap(),
        );
        let q = api
            .create(
                rq,
                "d",
                json!({"metadata": {"name": "q"},
                "spec": {"hard": {"pods": "2", "limits.cpu": "1", "limits.memory": "1Gi"}}}),
                &w,
            )
            .unwrap();
        assert_eq!(
            q["status"],
            json!({"hard": {"pods": "2", "limits.cpu": "1", "limits.memory": "1Gi"},
                "used": {"pods": "0", "limits.cpu": "0", "limits.memory": "0"}})
        );
        api.create(pods, "d", small_pod("a"), &w).unwrap();
        api.create(pods, "d", small_pod("b"), &w).unwrap();
        let status = api.get(rq, "d", "q").unwrap()["status"]["used"].clone();
        assert_eq!(
            status,
            json!({"pods": "2", "limits.cpu": "200m", "limits.memory": "64Mi"})
        );
        let e = api.create(pods, "d", small_pod("c"), &w).unwrap_err();
        assert_eq!(e.code, 403);
        assert_eq!(
            e.message,
            "pods \"c\" is forbidden: exceeded quota: q, requested: pods=1, used: pods=2, limited: pods=2"
        );
        // A generated name is not known yet to kube's admission: the prefix is reported.
        let mut generated = small_pod("");
        generated["metadata"] = json!({"generateName": "web-"});
        assert!(
            api.create(pods, "d", generated, &w)
                .unwrap_err()
                .message
                .starts_with("pods \"web-\" is forbidden: exceeded quota: q,")
        );
        let bare = json!({"metadata": {"name": "bare"}, "spec": {"containers": [{"name": "c", "image": "i"}]}});
        assert_eq!(
            api.create(pods, "d", bare, &w).unwrap_err().message,
            "pods \"bare\" is forbidden: failed quota: q: must specify limits.cpu for: c; limits.memory for: c"
        );
        // A pod that finished stops counting; a deleted one too.
        let mut a = api.get(pods, "d", "a").unwrap();
        a["status"] = json!({"phase": "Succeeded"});
        api.update(pods, "d", "a", a, Some("status"), &w).unwrap();
        assert_eq!(
            api.get(rq, "d", "q").unwrap()["status"]["used"]["pods"],
            "1"
        );
        api.create(pods, "d", small_pod("c"), &w).unwrap();
        api.delete(pods, "d", "b", &DeleteOptions::default())
            .unwrap();
        assert_eq!(
            api.get(rq, "d", "q").unwrap()["status"]["used"],
            json!({"pods": "1", "limits.cpu": "100m", "limits.memory": "32Mi"})
        );
        // Object counts, and a second quota counting quotas.
        let cms = by_kind("v1", "ConfigMap").unwrap();
        api.create(
            rq,
            "d",
            json!({"metadata": {"name": "objects"},
            "spec": {"hard": {"count/configmaps": "1", "resourcequotas": "2"}}}),
            &w,
        )
        .unwrap();
        api.create(cms, "d", json!({"metadata": {"name": "one"}}), &w)
            .unwrap();
        assert_eq!(
            api.create(cms, "d", json!({"metadata": {"name": "two"}}), &w)
                .unwrap_err()
                .message,
            "configmaps \"two\" is forbidden: exceeded quota: objects, requested: count/configmaps=1, used: count/configmaps=1, limited: count/configmaps=1"
        );
        assert_eq!(
            api.get(rq, "d", "objects").unwrap()["status"]["used"],
            json!({"count/configmaps": "1", "resourcequotas": "2"})
        );
    }

    /// Regression guard for the race the namespace lock closes: of many pods created at once
    /// against a quota with room for one, exactly one is stored.
    #[test]
    fn racing_creates_cannot_both_take_the_last_unit() {
        let (_dir, api) = api();
        let w = WriteOptions::default();
        let rq = by_kind("v1", "ResourceQuota").unwrap();
        let pods = by_kind("v1", "Pod").unwrap();
        api.create(
            rq,
            "d",
            json!({"metadata": {"name": "q"}, "spec": {"hard": {"pods": "1"}}}),
            &w,
        )
        .unwrap();
        let api = Arc::new(api);
        let handles: Vec<_> = (0..8)
            .map(|i| {
                let api = api.clone();
                std::thread::spawn(move || {
                    api.create(
                        pods,
                        "d",
                        small_pod(&format!("p{i}")),
                        &WriteOptions::default(),
                    )
                    .is_ok()
                })
            })
            .collect();
        let created = handles
            .into_iter()
            .map(|h| h.join().unwrap())
            .filter(|ok| *ok)
            .count();
        assert_eq!(created, 1);
        let list = api.list(pods, "d", &Default::default()).unwrap();
        assert_eq!(list["items"].as_array().unwrap().len(), 1);
        assert_eq!(
            api.get(rq, "d", "q").unwrap()["status"]["used"]["pods"],
            "1"
        );
    }

    /// Through the API: a LimitRange's defaults land on a new pod, one over `max` is refused
    /// with kube's 403.
    #[test]
    fn limit_ranges_apply_to_new_pods() {
        let (_dir, api) = api();
        let w = WriteOptions::default();
        let lr = by_kind("v1", "LimitRange").unwrap();
        let pods = by_kind("v1", "Pod").unwrap();
        api.create(
            lr,
            "d",
            json!({"metadata": {"name": "lr"}, "spec": {"limits": [{"type": "Container",
            "max": {"cpu": "500m"}, "defaultRequest": {"cpu": "100m"}}]}}),
            &w,
        )
        .unwrap();
        let p = api
            .create(pods, "d", json!({"metadata": {"name": "p"}, "spec": {"containers": [{"name": "c", "image": "i"}]}}), &w)
            .unwrap();
        assert_eq!(
            p["spec"]["containers"][0]["resources"],
            json!({"limits": {"cpu": "500m"}, "requests": {"cpu": "100m"}})
        );
        let big = json!({"metadata": {"name": "x"}, "spec": {"containers": [{"name": "c", "image": "i",
            "resources": {"limits": {"cpu": "1"}}}]}});
        let e = api.create(pods, "d", big, &w).unwrap_err();
        assert_eq!((e.code, e.reason), (403, "Forbidden"));
        assert_eq!(
            e.message,
            "pods \"x\" is forbidden: maximum cpu usage per Container is 500m, but limit is 1"
        );
    }
}
