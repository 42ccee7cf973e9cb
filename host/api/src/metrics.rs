//! The API server's own metrics, under kube-apiserver's names so its dashboards and alerts
//! read kedge's too, and `GET /metrics`, which encodes the whole server's registry.
//!
//! Labels are `&'static str` from the served resource table (never from the URL as sent), so
//! a client cannot grow the series count and recording a request allocates nothing.

use std::time::Duration;

use axum::http::{HeaderMap, HeaderValue, Method, StatusCode, header};
use axum::response::{IntoResponse, Response};
use prometheus_client::encoding::EncodeLabelSet;
use prometheus_client::metrics::counter::Counter;
use prometheus_client::metrics::family::Family;
use prometheus_client::metrics::gauge::Gauge;
use prometheus_client::metrics::histogram::Histogram;
use prometheus_client::registry::Registry;

use kedge_core::resources::Resource;

/// kube-apiserver's buckets for `apiserver_request_duration_seconds`.
const REQUEST_BUCKETS: [f64; 23] = [
    0.005, 0.025, 0.05, 0.1, 0.2, 0.4, 0.6, 0.8, 1.0, 1.25, 1.5, 2.0, 3.0, 4.0, 5.0, 6.0, 8.0,
    10.0, 15.0, 20.0, 30.0, 45.0, 60.0,
];

/// What kube-apiserver labels a request with, less the status code.
#[derive(Clone, Debug, Default, Hash, PartialEq, Eq, EncodeLabelSet)]
pub(crate) struct RequestLabels {
    /// `GET`, `LIST`, `WATCH`, `POST`, `PUT`, `PATCH`, `APPLY`, `DELETE`,
    /// `DELETECOLLECTION`, `CONNECT` (streams and proxy), as kube's `CleanVerb`.
    pub(crate) verb: &'static str,
    pub(crate) group: &'static str,
    pub(crate) version: &'static str,
    /// The plural of a served resource; "" for every other path.
    pub(crate) resource: &'static str,
    pub(crate) subresource: &'static str,
    /// `resource` (one object), `namespace`, `cluster`, or "" for non-resource paths.
    pub(crate) scope: &'static str,
    pub(crate) component: &'static str,
}

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
struct CodeLabels {
    verb: &'static str,
    group: &'static str,
    version: &'static str,
    resource: &'static str,
    subresource: &'static str,
    scope: &'static str,
    component: &'static str,
    code: u16,
}

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
struct KindLabels {
    group: &'static str,
    version: &'static str,
    kind: &'static str,
}

type HistogramFamily<L> = Family<L, Histogram, fn() -> Histogram>;

/// The API server's metric families. Cloning shares them (each is an `Arc` inside).
#[derive(Clone, Debug)]
pub struct ApiMetrics {
    requests: Family<CodeLabels, Counter>,
    durations: HistogramFamily<RequestLabels>,
    watchers: Family<KindLabels, Gauge>,
    watch_events: Family<KindLabels, Counter>,
}

impl Default for ApiMetrics {
    fn default() -> Self {
        ApiMetrics {
            requests: Family::default(),
            durations: Family::new_with_constructor(|| Histogram::new(REQUEST_BUCKETS)),
            watchers: Family::default(),
            watch_events: Family::default(),
        }
    }
}

impl ApiMetrics {
    /// Families registered in `registry` (which `GET /metrics` then encodes).
    pub fn new(registry: &mut Registry) -> Self {
        let m = ApiMetrics::default();
        // prometheus-client appends `_total` to counters.
        registry.register(
            "apiserver_request",
            "Counter of apiserver requests broken out for each verb, group, version, resource, scope, component, and HTTP response code",
            m.requests.clone(),
        );
        registry.register(
            "apiserver_request_duration_seconds",
            "Response latency distribution in seconds for each verb, group, version, resource, subresource, scope and component (for WATCH and CONNECT: until the response starts)",
            m.durations.clone(),
        );
        registry.register(
            "apiserver_registered_watchers",
            "Number of currently registered watchers for a given resource",
            m.watchers.clone(),
        );
        registry.register(
            "apiserver_watch_events",
            "Number of events sent in watch clients",
            m.watch_events.clone(),
        );
        m
    }

    /// One answered request: its code and how long it took to start answering.
    pub(crate) fn request(&self, l: &RequestLabels, code: StatusCode, took: Duration) {
        self.durations.get_or_create(l).observe(took.as_secs_f64());
        self.requests
            .get_or_create(&CodeLabels {
                verb: l.verb,
                group: l.group,
                version: l.version,
                resource: l.resource,
                subresource: l.subresource,
                scope: l.scope,
                component: l.component,
                code: code.as_u16(),
            })
            .inc();
    }

    /// A watch of `res` registered; it counts until the returned guard drops (the client
    /// went away, or the watch ended).
    pub(crate) fn watcher(&self, res: &'static Resource) -> WatcherGuard {
        let gauge = self.watchers.get_or_create_owned(&kind_labels(res));
        gauge.inc();
        WatcherGuard {
            gauge,
            events: self.watch_events.get_or_create_owned(&kind_labels(res)),
        }
    }
}

fn kind_labels(res: &'static Resource) -> KindLabels {
    KindLabels {
        group: res.group,
        version: res.version,
        kind: res.kind,
    }
}

/// One registered watcher (see [`ApiMetrics::watcher`]).
pub(crate) struct WatcherGuard {
    gauge: Gauge,
    events: Counter,
}

impl WatcherGuard {
    /// One event sent to this watcher.
    pub(crate) fn event(&self) {
        self.events.inc();
    }
}

impl Drop for WatcherGuard {
    fn drop(&mut self) {
        self.gauge.dec();
    }
}

/// The labels of a resource request, as kube's `CleanVerb` and `CleanScope` derive them.
pub(crate) fn resource_labels(
    method: &Method,
    headers: &HeaderMap,
    watching: bool,
    res: &'static Resource,
    namespaced: bool,
    name: bool,
    sub: Option<&str>,
) -> RequestLabels {
    let subresource = sub
        .and_then(|s| res.subresources.iter().find(|x| **x == s).copied())
        .unwrap_or("");
    let connect = matches!(subresource, "exec" | "attach" | "portforward" | "proxy");
    let verb = match *method {
        _ if connect => "CONNECT",
        Method::GET if watching => "WATCH",
        Method::GET if !name => "LIST",
        Method::GET => "GET",
        Method::POST => "POST",
        Method::PUT => "PUT",
        Method::PATCH
            if headers
                .get(header::CONTENT_TYPE)
                .and_then(|v| v.to_str().ok())
                .is_some_and(|ct| ct.starts_with("application/apply-patch")) =>
        {
            "APPLY"
        }
        Method::PATCH => "PATCH",
        Method::DELETE if !name => "DELETECOLLECTION",
        Method::DELETE => "DELETE",
        _ => "OTHER",
    };
    // kube's CleanScope: a create names one object too.
    let scope = if name || verb == "POST" {
        "resource"
    } else if namespaced {
        "namespace"
    } else {
        "cluster"
    };
    RequestLabels {
        verb,
        group: res.group,
        version: res.version,
        resource: res.plural,
        subresource,
        scope,
        component: "apiserver",
    }
}

/// The labels of any other path: its verb only, so unknown URLs add no series.
pub(crate) fn non_resource_labels(method: &Method) -> RequestLabels {
    let verb = match *method {
        Method::GET => "GET",
        Method::POST => "POST",
        Method::PUT => "PUT",
        Method::PATCH => "PATCH",
        Method::DELETE => "DELETE",
        Method::HEAD => "HEAD",
        Method::OPTIONS => "OPTIONS",
        _ => "OTHER",
    };
    RequestLabels {
        verb,
        component: "apiserver",
        ..Default::default()
    }
}

/// `GET /metrics`: the registry in the Prometheus text format (OpenMetrics flavour, which
/// Prometheus negotiates first).
pub(crate) fn response(registry: &Registry) -> Response {
    let mut text = String::new();
    if let Err(e) = prometheus_client::encoding::text::encode(&mut text, registry) {
        return (
            StatusCode::INTERNAL_SERVER_ERROR,
            format!("encoding metrics: {e}"),
        )
            .into_response();
    }
    let mut r = (StatusCode::OK, text).into_response();
    r.headers_mut().insert(
        header::CONTENT_TYPE,
        HeaderValue::from_static("application/openmetrics-text; version=1.0.0; charset=utf-8"),
    );
    r
}

#[cfg(test)]
mod tests {
    use super::*;
    use kedge_core::resources::by_kind;

    /// kube's CleanVerb and CleanScope: the HTTP method, the URL's shape and the patch type
    /// make the verb; streams and the proxy are CONNECT; an unknown subresource is "".
    #[test]
    fn verbs_and_scopes_as_kube_cleans_them() {
        let pods = by_kind("v1", "Pod").unwrap();
        let nodes = by_kind("v1", "Node").unwrap();
        let none = HeaderMap::new();
        let mut apply = HeaderMap::new();
        apply.insert(
            header::CONTENT_TYPE,
            HeaderValue::from_static("application/apply-patch+yaml"),
        );
        let l = |m: Method, h: &HeaderMap, watch, res, ns, name, sub| {
            let l = resource_labels(&m, h, watch, res, ns, name, sub);
            (l.verb, l.scope, l.subresource)
        };
        let get = Method::GET;
        assert_eq!(
            l(get.clone(), &none, false, pods, true, false, None),
            ("LIST", "namespace", "")
        );
        assert_eq!(
            l(get.clone(), &none, false, pods, false, false, None),
            ("LIST", "cluster", "")
        );
        assert_eq!(
            l(get.clone(), &none, true, pods, true, false, None),
            ("WATCH", "namespace", "")
        );
        assert_eq!(
            l(get.clone(), &none, false, nodes, false, true, None),
            ("GET", "resource", "")
        );
        assert_eq!(
            l(Method::POST, &none, false, pods, true, false, None),
            ("POST", "resource", "")
        );
        assert_eq!(
            l(Method::PATCH, &apply, false, pods, true, true, None),
            ("APPLY", "resource", "")
        );
        assert_eq!(
            l(
                Method::PATCH,
                &none,
                false,
                pods,
                true,
                true,
                Some("status")
            ),
            ("PATCH", "resource", "status")
        );
        assert_eq!(
            l(Method::DELETE, &none, false, pods, true, false, None),
            ("DELETECOLLECTION", "namespace", "")
        );
        assert_eq!(
            l(Method::POST, &none, false, pods, true, true, Some("exec")),
            ("CONNECT", "resource", "exec")
        );
        assert_eq!(
            l(get, &none, false, pods, true, true, Some("made-up")),
            ("GET", "resource", "")
        );
        assert_eq!(non_resource_labels(&Method::GET).resource, "");
    }
}
