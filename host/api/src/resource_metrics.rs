//! The resource metrics API, `metrics.k8s.io/v1beta1` (NodeMetrics, PodMetrics), served as
//! metrics-server serves it: from the latest samples in memory, never stored. `kubectl top`
//! reads it.
//!
//! Each agent samples its node and its pods' containers every `--metric-resolution-seconds`
//! (cumulative CPU time from cgroups or the Wasm guests' thread CPU clocks, memory working
//! set or linear memory), turns two consecutive samples into rates (nanocores over the
//! window between them, as metrics-server does) and sends them with `PUT
//! /api/v1/nodes/<node>/usage` on its tunnel, the connection it makes every other API request
//! on (a node may send its own only). The server keeps the last report of each node and
//! forgets it when it goes stale (three intervals without a new one) or the Node is gone;
//! a pod's metrics are served while the pod exists with the same uid on the node that
//! reported it. Labels come from the stored Pods and Nodes, so label selectors select as
//! they do for `kubectl get`.
//!
//! The kinds are in [`METRICS`], not in the resource table: they have no storage, watch,
//! OpenAPI or informer, and their plurals (`nodes`, `pods`) would collide with the core
//! kinds' wherever a kind is keyed by plural alone. Discovery lists them (verbs get and
//! list), and every other verb is 405 as from metrics-server.

use std::collections::HashMap;
use std::sync::{Arc, RwLock};
use std::time::{Duration, Instant};

use axum::http::{HeaderMap, Method, StatusCode, header};
use axum::response::{IntoResponse, Response};
use serde::Deserialize;
use serde_json::{Value, json};

use crate::auth::Identity;
use crate::error::{ApiError, Result};
use crate::ops::{Api, ListOptions};
use kedge_core::meta;
use kedge_core::resources::{self, Resource};
use kedge_core::selector::{FieldSelector, Selector as LabelSelector};

pub const GROUP: &str = "metrics.k8s.io";
pub const VERSION: &str = "v1beta1";

/// The metrics kinds, as metrics-server registers them.
pub static METRICS: &[Resource] = &[
    Resource {
        group: GROUP,
        version: VERSION,
        kind: "NodeMetrics",
        plural: "nodes",
        singular: "",
        namespaced: false,
        short_names: &[],
        categories: &[],
        subresources: &[],
        field_selectors: &[],
    },
    Resource {
        group: GROUP,
        version: VERSION,
        kind: "PodMetrics",
        plural: "pods",
        singular: "",
        namespaced: true,
        short_names: &[],
        categories: &[],
        subresources: &[],
        field_selectors: &[],
    },
];

/// The verbs metrics-server serves.
pub(crate) const VERBS: &[&str] = &["get", "list"];

/// A metrics kind by `apiVersion` and `kind` (what a plugin names).
pub fn by_kind(api_version: &str, kind: &str) -> Option<&'static Resource> {
    METRICS
        .iter()
        .find(|r| r.api_version() == api_version && r.kind == kind)
}

pub(crate) fn is_metrics(r: &Resource) -> bool {
    METRICS.iter().any(|m| std::ptr::eq(m, r))
}

fn node_metrics() -> &'static Resource {
    &METRICS[0]
}

fn pod_metrics() -> &'static Resource {
    &METRICS[1]
}

/// Reports older than this many of their node's intervals are dropped (metrics-server drops
/// a node whose scrape failed).
const STALE_INTERVALS: u32 = 3;
/// The shortest and longest sampling intervals a report may state.
const MIN_INTERVAL: f64 = 0.1;
const MAX_INTERVAL: f64 = 3600.0;
/// Pods in one report: far more than a node runs (kubelet's default is 110).
const MAX_PODS: usize = 5000;

/// CPU rate and memory of a node or a container.
#[derive(Clone, Debug, Deserialize, PartialEq)]
#[serde(rename_all = "camelCase", deny_unknown_fields)]
pub struct Usage {
    /// CPU in billionths of a core (cumulative CPU nanoseconds over the window, per second).
    pub cpu_nano_cores: u64,
    /// Working set (OCI: cgroup usage less inactive file cache; Wasm: linear memory).
    pub memory_bytes: u64,
}

#[derive(Clone, Debug, Deserialize, PartialEq)]
#[serde(rename_all = "camelCase", deny_unknown_fields)]
pub struct ContainerUsage {
    pub name: String,
    pub cpu_nano_cores: u64,
    pub memory_bytes: u64,
}

#[derive(Clone, Debug, Deserialize, PartialEq)]
#[serde(rename_all = "camelCase", deny_unknown_fields)]
pub struct PodUsage {
    pub namespace: String,
    pub name: String,
    pub uid: String,
    pub containers: Vec<ContainerUsage>,
}

/// What an agent sends: one sampling round, rates over the window since the previous one.
#[derive(Clone, Debug, Deserialize, PartialEq)]
#[serde(rename_all = "camelCase", deny_unknown_fields)]
pub struct Report {
    /// When the later of the two samples was taken (RFC 3339).
    pub timestamp: String,
    /// Seconds between the two samples.
    pub window_seconds: f64,
    /// The agent's sampling interval, which tells when its report is stale.
    pub interval_seconds: f64,
    pub node: Usage,
    #[serde(default)]
    pub pods: Vec<PodUsage>,
}

impl Report {
    fn check(&self) -> std::result::Result<(), String> {
        if chrono::DateTime::parse_from_rfc3339(&self.timestamp).is_err() {
            return Err(format!("timestamp {:?} is not RFC 3339", self.timestamp));
        }
        if !(self.window_seconds.is_finite() && self.window_seconds > 0.0) {
            return Err("windowSeconds must be positive".into());
        }
        if !(MIN_INTERVAL..=MAX_INTERVAL).contains(&self.interval_seconds) {
            return Err(format!(
                "intervalSeconds must be between {MIN_INTERVAL} and {MAX_INTERVAL}"
            ));
        }
        if self.pods.len() > MAX_PODS {
            return Err(format!("at most {MAX_PODS} pods per report"));
        }
        Ok(())
    }
}

struct Entry {
    received: Instant,
    report: Arc<Report>,
    /// `namespace/name` → index in `report.pods`.
    pods: HashMap<String, usize>,
}

impl Entry {
    fn stale(&self, now: Instant) -> bool {
        let limit = Duration::from_secs_f64(self.report.interval_seconds) * STALE_INTERVALS;
        now.saturating_duration_since(self.received) > limit
    }

    fn pod(&self, ns: &str, name: &str) -> Option<&PodUsage> {
        self.pods
            .get(&format!("{ns}/{name}"))
            .map(|i| &self.report.pods[*i])
    }
}

/// The latest report of every node, in memory only.
#[derive(Default)]
pub struct Samples {
    nodes: RwLock<HashMap<String, Entry>>,
}

impl Samples {
    /// Keeps `report` as `node`'s latest (received at `now`), dropping stale reports of
    /// other nodes.
    pub fn record(&self, node: &str, report: Report, now: Instant) -> Result<()> {
        report
            .check()
            .map_err(|e| ApiError::bad_request(format!("usage report: {e}")))?;
        let pods = report
            .pods
            .iter()
            .enumerate()
            .map(|(i, p)| (format!("{}/{}", p.namespace, p.name), i))
            .collect();
        let mut nodes = self.nodes.write().unwrap_or_else(|p| p.into_inner());
        nodes.retain(|n, e| n == node || !e.stale(now));
        nodes.insert(
            node.to_string(),
            Entry {
                received: now,
                report: Arc::new(report),
                pods,
            },
        );
        Ok(())
    }

    /// How many nodes have a report (stale ones included until the next write).
    pub fn len(&self) -> usize {
        self.nodes.read().unwrap_or_else(|p| p.into_inner()).len()
    }

    pub fn is_empty(&self) -> bool {
        self.len() == 0
    }

    /// Node metrics of the stored Nodes (all, or `name`) matching `labels` that have a fresh
    /// report.
    pub fn nodes(
        &self,
        api: &Api,
        name: Option<&str>,
        labels: &LabelSelector,
        now: Instant,
    ) -> Result<Vec<Value>> {
        let node_res = resources::by_kind("v1", "Node").expect("nodes are served");
        let nodes = match name {
            Some(n) => match api.get(node_res, "", n) {
                Ok(o) => vec![o],
                Err(e) if e.code == 404 => vec![],
                Err(e) => return Err(e),
            },
            None => list_items(api.list(
                node_res,
                "",
                &ListOptions {
                    labels: labels.clone(),
                    ..Default::default()
                },
            )?),
        };
        let map = self.nodes.read().unwrap_or_else(|p| p.into_inner());
        let mut out = Vec::new();
        for n in nodes {
            let Some(e) = map.get(meta::name(&n)).filter(|e| !e.stale(now)) else {
                continue;
            };
            let r = &e.report;
            out.push(json!({
                "kind": "NodeMetrics",
                "apiVersion": format!("{GROUP}/{VERSION}"),
                "metadata": object_meta(&n, api),
                "timestamp": timestamp(&r.timestamp),
                "window": window(r.window_seconds),
                "usage": usage(r.node.cpu_nano_cores, r.node.memory_bytes),
            }));
        }
        Ok(out)
    }

    /// Pod metrics of the stored Pods in `ns` (all namespaces when empty; all, or `name`)
    /// matching the selectors, whose node reported them.
    pub fn pods(
        &self,
        api: &Api,
        ns: &str,
        name: Option<&str>,
        labels: &LabelSelector,
        fields: &FieldSelector,
        now: Instant,
    ) -> Result<Vec<Value>> {
        let pod_res = resources::by_kind("v1", "Pod").expect("pods are served");
        let pods = match name {
            Some(n) => match api.get(pod_res, ns, n) {
                Ok(o) => vec![o],
                Err(e) if e.code == 404 => vec![],
                Err(e) => return Err(e),
            },
            None => list_items(api.list(
                pod_res,
                ns,
                &ListOptions {
                    labels: labels.clone(),
                    fields: fields.clone(),
                    ..Default::default()
                },
            )?),
        };
        let map = self.nodes.read().unwrap_or_else(|p| p.into_inner());
        let mut out = Vec::new();
        for p in pods {
            let node = p
                .pointer("/spec/nodeName")
                .and_then(Value::as_str)
                .unwrap_or_default();
            let Some(e) = map.get(node).filter(|e| !e.stale(now)) else {
                continue;
            };
            let Some(u) = e
                .pod(meta::namespace(&p), meta::name(&p))
                .filter(|u| u.uid == meta::uid(&p))
            else {
                continue;
            };
            let containers: Vec<Value> = u
                .containers
                .iter()
                .map(|c| json!({"name": c.name, "usage": usage(c.cpu_nano_cores, c.memory_bytes)}))
                .collect();
            out.push(json!({
                "kind": "PodMetrics",
                "apiVersion": format!("{GROUP}/{VERSION}"),
                "metadata": object_meta(&p, api),
                "timestamp": timestamp(&e.report.timestamp),
                "window": window(e.report.window_seconds),
                "containers": containers,
            }));
        }
        Ok(out)
    }
}

fn list_items(list: Value) -> Vec<Value> {
    match list {
        Value::Object(mut o) => match o.remove("items") {
            Some(Value::Array(a)) => a,
            _ => Vec::new(),
        },
        _ => Vec::new(),
    }
}

/// metrics-server's metadata: the object's name, namespace and labels, created now.
fn object_meta(obj: &Value, api: &Api) -> Value {
    let mut m = json!({"name": meta::name(obj), "creationTimestamp": api.now()});
    if !meta::namespace(obj).is_empty() {
        m["namespace"] = json!(meta::namespace(obj));
    }
    if let Some(l) = obj.pointer("/metadata/labels").filter(|l| l.is_object()) {
        m["labels"] = l.clone();
    }
    m
}

/// The report's time as `metav1.Time` (seconds).
fn timestamp(t: &str) -> String {
    chrono::DateTime::parse_from_rfc3339(t)
        .map(|t| meta::timestamp(t.with_timezone(&chrono::Utc)))
        .unwrap_or_else(|_| t.to_string())
}

/// Seconds as a Go duration (`metav1.Duration`), millisecond precision: `15.012s`.
pub(crate) fn window(seconds: f64) -> String {
    let ms = (seconds * 1000.0).round() as u64;
    if ms.is_multiple_of(1000) {
        format!("{}s", ms / 1000)
    } else {
        let s = format!("{}.{:03}", ms / 1000, ms % 1000);
        format!("{}s", s.trim_end_matches('0'))
    }
}

/// `usage` as metrics-server writes it: CPU in nanocores, memory in Ki.
pub(crate) fn usage(cpu_nano_cores: u64, memory_bytes: u64) -> Value {
    json!({"cpu": format!("{cpu_nano_cores}n"), "memory": format!("{}Ki", memory_bytes / 1024)})
}

/// The node a usage report is sent for: `PUT /api/v1/nodes/<name>/usage`.
pub(crate) fn report_target<'a>(segs: &[&'a str]) -> Option<&'a str> {
    match segs {
        ["api", "v1", "nodes", name, "usage"] if !name.is_empty() => Some(name),
        _ => None,
    }
}

/// Takes a node's usage report: from that node only.
pub(crate) fn receive_report(
    api: &Api,
    identity: &Identity,
    method: &Method,
    node: &str,
    body: &[u8],
    now: Instant,
) -> Result<Response> {
    if crate::authz::node_of(identity) != Some(node) {
        return Err(ApiError::forbidden(format!(
            "User {:?} cannot report the usage of node {node:?}: only the node itself may",
            identity.user
        )));
    }
    if method != Method::PUT {
        return Err(ApiError::method_not_allowed(
            "the server does not allow this method on the requested resource",
        ));
    }
    let report: Report = serde_json::from_slice(body)
        .map_err(|e| ApiError::bad_request(format!("usage report: {e}")))?;
    api.usage.record(node, report, now)?;
    Ok(StatusCode::NO_CONTENT.into_response())
}

/// Whether `segs` is a metrics resource URL (not the group's discovery documents).
pub(crate) fn is_resource_path(segs: &[&str]) -> bool {
    matches!(segs, ["apis", GROUP, _, _, ..])
}

/// What a metrics URL names.
#[derive(Debug, PartialEq)]
struct Target<'a> {
    res: &'static Resource,
    namespace: &'a str,
    name: Option<&'a str>,
}

fn parse<'a>(segs: &[&'a str]) -> Option<Target<'a>> {
    let rest = match segs {
        ["apis", GROUP, VERSION, rest @ ..] => rest,
        _ => return None,
    };
    let (res, namespace, name) = match rest {
        ["nodes"] => (node_metrics(), "", None),
        ["nodes", name] => (node_metrics(), "", Some(*name)),
        ["pods"] => (pod_metrics(), "", None),
        ["namespaces", ns, "pods"] => (pod_metrics(), *ns, None),
        ["namespaces", ns, "pods", name] => (pod_metrics(), *ns, Some(*name)),
        _ => return None,
    };
    Some(Target {
        res,
        namespace,
        name,
    })
}

/// Serves a `metrics.k8s.io` resource URL: get and list, authorized as every resource
/// request is (RBAC for users, nothing for nodes), 405 for anything else.
pub(crate) fn serve(
    st: &crate::http::ApiState,
    identity: &Identity,
    method: &Method,
    headers: &HeaderMap,
    segs: &[&str],
    query: &HashMap<String, String>,
) -> Result<Response> {
    let path = format!("/{}", segs.join("/"));
    let t = parse(segs).ok_or_else(|| ApiError::path_not_found(&path))?;
    let watching = query
        .get("watch")
        .is_some_and(|v| v.eq_ignore_ascii_case("true") || v == "1");
    let verb = match (method, t.name) {
        (&Method::GET, _) if watching => "watch",
        (&Method::GET, Some(_)) => "get",
        (&Method::GET, None) => "list",
        (m, _) => return Err(not_allowed(m)),
    };
    let attrs = crate::rbac::Attributes::resource(
        verb,
        GROUP,
        t.res.plural,
        "",
        t.namespace,
        t.name.unwrap_or(""),
    );
    if crate::authz::node_of(identity).is_some() {
        // The Node authorizer grants nodes nothing of this group, nor does their RBAC role.
        return Err(crate::rbac::forbidden(identity, &attrs, ""));
    }
    if crate::rbac::applies(identity) {
        st.rbac.check(identity, &attrs)?;
    }
    if watching {
        return Err(not_allowed(method));
    }
    let labels = LabelSelector::parse(query.get("labelSelector").map_or("", String::as_str))
        .map_err(|e| ApiError::bad_request(e.to_string()))?;
    let fields = FieldSelector::parse(query.get("fieldSelector").map_or("", String::as_str), &[])
        .map_err(|e| ApiError::bad_request(e.to_string()))?;
    let api = &st.api;
    let now = Instant::now();
    let items = if std::ptr::eq(t.res, node_metrics()) {
        let mut items = api.usage.nodes(api, t.name, &labels, now)?;
        items.retain(|i| fields.matches(i));
        items
    } else {
        api.usage
            .pods(api, t.namespace, t.name, &labels, &fields, now)?
    };
    let body = match t.name {
        Some(name) => items.into_iter().next().ok_or_else(|| {
            let shown = if t.namespace.is_empty() {
                name.to_string()
            } else {
                format!("{}/{name}", t.namespace)
            };
            ApiError::new(
                404,
                "NotFound",
                format!(
                    "{}.{GROUP} \"{shown}\" not found",
                    t.res.kind.to_lowercase()
                ),
            )
        })?,
        None => json!({
            "kind": format!("{}List", t.res.kind),
            "apiVersion": format!("{GROUP}/{VERSION}"),
            "metadata": {},
            "items": items,
        }),
    };
    let body = if wants_table(headers) {
        table(&body)
    } else {
        body
    };
    Ok((
        StatusCode::OK,
        [(header::CONTENT_TYPE, "application/json")],
        serde_json::to_vec(&body).unwrap_or_default(),
    )
        .into_response())
}

fn not_allowed(method: &Method) -> ApiError {
    ApiError::method_not_allowed(format!(
        "the server does not allow this method on the requested resource ({method} is not \
         supported by metrics.k8s.io: get and list are)"
    ))
}

fn wants_table(headers: &HeaderMap) -> bool {
    headers
        .get(header::ACCEPT)
        .and_then(|v| v.to_str().ok())
        .and_then(|a| a.split(',').next())
        .is_some_and(|first| first.contains("as=Table"))
}

/// A Table as metrics-server's (`kubectl get podmetrics`): name, CPU, memory, window.
fn table(body: &Value) -> Value {
    let items: Vec<&Value> = match body.get("items").and_then(Value::as_array) {
        Some(a) => a.iter().collect(),
        None => vec![body],
    };
    let rows: Vec<Value> = items
        .iter()
        .map(|i| {
            let (cpu, mem) = match i.get("usage") {
                Some(u) => (
                    u["cpu"].as_str().unwrap_or_default().to_string(),
                    u["memory"].as_str().unwrap_or_default().to_string(),
                ),
                None => {
                    let (mut c, mut m) = (0u64, 0u64);
                    for x in i["containers"].as_array().into_iter().flatten() {
                        c += parse_suffixed(&x["usage"]["cpu"], "n");
                        m += parse_suffixed(&x["usage"]["memory"], "Ki");
                    }
                    (format!("{c}n"), format!("{m}Ki"))
                }
            };
            json!({"cells": [meta::name(i), cpu, mem, i["window"]],
                "object": {"kind": "PartialObjectMetadata", "apiVersion": "meta.k8s.io/v1",
                    "metadata": i["metadata"]}})
        })
        .collect();
    let col = |name: &str, format: &str| json!({"name": name, "type": "string", "format": format, "description": "", "priority": 0});
    json!({
        "kind": "Table",
        "apiVersion": "meta.k8s.io/v1",
        "metadata": {},
        "columnDefinitions": [col("Name", "name"), col("CPU", ""), col("Memory", ""), col("Window", "")],
        "rows": rows,
    })
}

fn parse_suffixed(v: &Value, suffix: &str) -> u64 {
    v.as_str()
        .and_then(|s| s.strip_suffix(suffix))
        .and_then(|n| n.parse().ok())
        .unwrap_or(0)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn report(pods: Vec<PodUsage>, interval: f64) -> Report {
        Report {
            timestamp: "2026-12-06T18:00:00.123456Z".into(),
            window_seconds: 15.0123,
            interval_seconds: interval,
            node: Usage {
                cpu_nano_cores: 250_000_000,
                memory_bytes: 2 << 30,
            },
            pods,
        }
    }

    #[test]
    fn quantities_and_windows_read_as_metrics_server_writes_them() {
        assert_eq!(window(15.0123), "15.012s");
        assert_eq!(window(15.0), "15s");
        assert_eq!(window(1.5), "1.5s");
        assert_eq!(window(0.05), "0.05s");
        assert_eq!(
            usage(12_345_678, 5 * 1024 * 1024 + 100),
            json!({"cpu": "12345678n", "memory": "5120Ki"})
        );
        assert_eq!(timestamp("2026-12-06T18:00:00.9Z"), "2026-12-06T18:00:00Z");
    }

    #[test]
    fn urls_parse_like_the_aggregated_api() {
        let p = |s: &str| {
            let segs: Vec<&str> = s.split('/').filter(|x| !x.is_empty()).collect();
            parse(&segs).map(|t| {
                (
                    t.res.kind,
                    t.namespace.to_string(),
                    t.name.map(String::from),
                )
            })
        };
        assert_eq!(
            p("/apis/metrics.k8s.io/v1beta1/nodes"),
            Some(("NodeMetrics", "".into(), None))
        );
        assert_eq!(
            p("/apis/metrics.k8s.io/v1beta1/nodes/n1"),
            Some(("NodeMetrics", "".into(), Some("n1".into())))
        );
        assert_eq!(
            p("/apis/metrics.k8s.io/v1beta1/namespaces/a/pods/b"),
            Some(("PodMetrics", "a".into(), Some("b".into())))
        );
        assert_eq!(
            p("/apis/metrics.k8s.io/v1beta1/pods"),
            Some(("PodMetrics", "".into(), None))
        );
        assert_eq!(p("/apis/metrics.k8s.io/v1beta1/namespaces/a/nodes"), None);
        assert_eq!(p("/apis/metrics.k8s.io/v1/nodes"), None);
        assert!(is_resource_path(&["apis", GROUP, VERSION, "nodes"]));
        assert!(!is_resource_path(&["apis", GROUP, VERSION]));
        assert_eq!(
            report_target(&["api", "v1", "nodes", "n1", "usage"]),
            Some("n1")
        );
        assert_eq!(
            by_kind("metrics.k8s.io/v1beta1", "PodMetrics")
                .unwrap()
                .plural,
            "pods"
        );
        assert!(by_kind("v1", "Pod").is_none());
    }

    #[test]
    fn reports_are_checked_and_go_stale_after_three_intervals() {
        let s = Samples::default();
        let t0 = Instant::now();
        let mut bad = report(vec![], 2.0);
        bad.window_seconds = 0.0;
        assert_eq!(s.record("n1", bad, t0).unwrap_err().code, 400);
        let mut bad = report(vec![], 2.0);
        bad.timestamp = "yesterday".into();
        assert_eq!(s.record("n1", bad, t0).unwrap_err().code, 400);
        assert_eq!(
            s.record("n1", report(vec![], 0.0), t0).unwrap_err().code,
            400
        );
        s.record("n1", report(vec![], 2.0), t0).unwrap();
        s.record("n2", report(vec![], 10.0), t0).unwrap();
        let map = s.nodes.read().unwrap();
        assert!(!map["n1"].stale(t0 + Duration::from_secs(6)));
        assert!(map["n1"].stale(t0 + Duration::from_secs(7)));
        assert!(!map["n2"].stale(t0 + Duration::from_secs(7)));
        drop(map);
        // A later report from another node sweeps the stale one out.
        s.record("n2", report(vec![], 10.0), t0 + Duration::from_secs(7))
            .unwrap();
        assert_eq!(s.len(), 1);
        // Unknown fields are refused (a newer agent's report is not half read).
        let r: std::result::Result<Report, _> = serde_json::from_value(json!({
            "timestamp": "2026-12-06T18:00:00Z", "windowSeconds": 1, "intervalSeconds": 1,
            "node": {"cpuNanoCores": 1, "memoryBytes": 1, "swapBytes": 1}}));
        assert!(r.is_err());
    }

    #[test]
    fn tables_sum_a_pod_s_containers() {
        let pod = json!({"kind": "PodMetrics", "metadata": {"name": "p", "namespace": "d"},
            "window": "15s", "containers": [
                {"name": "a", "usage": {"cpu": "1000n", "memory": "10Ki"}},
                {"name": "b", "usage": {"cpu": "500n", "memory": "6Ki"}}]});
        let t = table(&json!({"items": [pod]}));
        assert_eq!(t["rows"][0]["cells"], json!(["p", "1500n", "16Ki", "15s"]));
        assert_eq!(t["columnDefinitions"].as_array().unwrap().len(), 4);
    }
}
