//! The API server proxy, as kube-apiserver serves it: `pods/[https:]NAME[:PORT]/proxy/…`,
//! `services/[https:]NAME[:PORTNAME-OR-NUMBER]/proxy/…` and `nodes/NAME[:PORT]/proxy/…`.
//!
//! Everything goes through the tunnel of the node that can reach the target, so a pod behind
//! a NAT is as reachable as one next to the server:
//! - a pod: its IP and port, connected to by its node's agent (`/podProxy/<scheme>/<ip>/<port>`
//!   on the agent's kubelet router, which opens the TCP connection and forwards the request);
//! - a service: a ready endpoint of it (from its EndpointSlices, else its Endpoints), then
//!   as a pod, through the endpoint's node;
//! - a node: its agent's own kubelet router (`/healthz`, `/containerLogs/…`), or, with a port
//!   that is not the kubelet's, that port on the node's InternalIP.
//!
//! Request and response bodies are streamed; headers pass except hop-by-hop ones and the
//! caller's credentials (kube-apiserver drops `Authorization` once it has authenticated);
//! redirects and `Location` headers are the backend's, untouched.

use axum::body::Body;
use axum::http::{HeaderName, HeaderValue, Method, StatusCode, header, request::Parts};
use axum::response::{IntoResponse, Response};
use serde_json::Value;

use super::error::{ApiError, Result};
use super::http::ApiState;
use kedge_core::resources::{self, Resource};

/// What a proxy URL names.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub(crate) enum Kind {
    Pod,
    Service,
    Node,
}

/// A parsed proxy URL.
#[derive(Debug, PartialEq, Eq)]
pub(crate) struct ProxyPath {
    pub kind: Kind,
    pub namespace: String,
    /// The name segment as sent (`https:web:8443`): what RBAC's `resourceNames` match, as in
    /// Kubernetes.
    pub id: String,
    /// `http`, `https`, or empty (http).
    pub scheme: String,
    pub name: String,
    /// A port number or (services, pods) a port name; empty when not given.
    pub port: String,
    /// The path after `/proxy`, as sent (still percent-encoded): empty or starting with `/`.
    pub rest: String,
}

impl ProxyPath {
    pub fn resource(&self) -> &'static Resource {
        let kind = match self.kind {
            Kind::Pod => "Pod",
            Kind::Service => "Service",
            Kind::Node => "Node",
        };
        resources::by_kind("v1", kind).expect("core kinds are served")
    }
}

/// kube's `SplitSchemeNamePort`: `name`, `name:port` or `scheme:name:port`, the scheme `http`
/// or `https`.
pub(crate) fn split_scheme_name_port(id: &str) -> Option<(String, String, String)> {
    let parts: Vec<&str> = id.split(':').collect();
    let (scheme, name, port) = match parts.as_slice() {
        [name] => ("", *name, ""),
        [name, port] => ("", *name, *port),
        [scheme, name, port] => (*scheme, *name, *port),
        _ => return None,
    };
    if name.is_empty() || !matches!(scheme, "" | "http" | "https") {
        return None;
    }
    Some((scheme.to_string(), name.to_string(), port.to_string()))
}

fn percent_decode(s: &str) -> String {
    url::form_urlencoded::parse(format!("x={}", s.replace('+', "%2B")).as_bytes())
        .next()
        .map(|(_, v)| v.into_owned())
        .unwrap_or_default()
}

/// Recognises a proxy URL (the raw request path); None for any other path. A proxy URL with
/// a malformed name is a 400, worded as kube-apiserver's.
pub(crate) fn parse(path: &str) -> Option<Result<ProxyPath>> {
    let rest = path.strip_prefix("/api/v1/")?;
    let (kind, namespace, id, tail) = if let Some(r) = rest.strip_prefix("namespaces/") {
        let mut it = r.splitn(5, '/');
        let ns = it.next()?;
        let kind = match it.next()? {
            "pods" => Kind::Pod,
            "services" => Kind::Service,
            _ => return None,
        };
        let id = it.next()?;
        if it.next()? != "proxy" {
            return None;
        }
        (kind, ns, id, it.next())
    } else if let Some(r) = rest.strip_prefix("nodes/") {
        let mut it = r.splitn(3, '/');
        let id = it.next()?;
        if it.next()? != "proxy" {
            return None;
        }
        (Kind::Node, "", id, it.next())
    } else {
        return None;
    };
    if id.is_empty() || (kind != Kind::Node && namespace.is_empty()) {
        return None;
    }
    let id = percent_decode(id);
    let Some((scheme, name, port)) = split_scheme_name_port(&id) else {
        let what = match kind {
            Kind::Pod => "pod",
            Kind::Service => "service",
            Kind::Node => "node",
        };
        return Some(Err(ApiError::bad_request(format!(
            "invalid {what} request {id:?}"
        ))));
    };
    Some(Ok(ProxyPath {
        kind,
        namespace: percent_decode(namespace),
        id,
        scheme,
        name,
        port,
        rest: tail.map(|t| format!("/{t}")).unwrap_or_default(),
    }))
}

/// The authorization verb of a proxy request: by method alone (kube's RequestInfo).
pub(crate) fn verb(method: &Method) -> String {
    match *method {
        Method::GET | Method::HEAD => "get".into(),
        Method::POST => "create".into(),
        Method::PUT => "update".into(),
        Method::PATCH => "patch".into(),
        Method::DELETE => "delete".into(),
        ref m => m.as_str().to_ascii_lowercase(),
    }
}

/// Where a request goes: the node whose tunnel carries it, and the path on its agent.
#[derive(Debug, PartialEq, Eq)]
pub(crate) struct Route {
    pub node: String,
    /// Origin-form path on the agent's kubelet router, without the query.
    pub path: String,
}

fn unavailable(message: impl Into<String>) -> ApiError {
    ApiError::new(503, "ServiceUnavailable", message)
}

fn to_backend(scheme: &str, ip: &str, port: u16, rest: &str) -> String {
    let scheme = if scheme.is_empty() { "http" } else { scheme };
    let rest = if rest.is_empty() { "/" } else { rest };
    format!("/podProxy/{scheme}/{ip}/{port}{rest}")
}

/// The port of a pod a proxy URL names: a number, a container port's name, or (none given)
/// the first declared container port, else the scheme's default.
fn pod_port(pod: &Value, p: &ProxyPath) -> Result<u16> {
    let ports: Vec<&Value> = pod
        .pointer("/spec/containers")
        .and_then(Value::as_array)
        .into_iter()
        .flatten()
        .flat_map(|c| {
            c.get("ports")
                .and_then(Value::as_array)
                .into_iter()
                .flatten()
        })
        .collect();
    let number = |v: &Value| {
        v.get("containerPort")
            .and_then(Value::as_u64)
            .and_then(|n| u16::try_from(n).ok())
    };
    if p.port.is_empty() {
        return Ok(ports
            .first()
            .and_then(|v| number(v))
            .unwrap_or(if p.scheme == "https" { 443 } else { 80 }));
    }
    if let Ok(n) = p.port.parse::<u16>() {
        if n == 0 {
            return Err(ApiError::bad_request(format!("invalid port {:?}", p.port)));
        }
        return Ok(n);
    }
    ports
        .iter()
        .find(|v| v.get("name").and_then(Value::as_str) == Some(p.port.as_str()))
        .and_then(|v| number(v))
        .ok_or_else(|| {
            ApiError::bad_request(format!(
                "pod {:?} has no container port named {:?}",
                p.name, p.port
            ))
        })
}

/// A ready address a service request may go to.
#[derive(Clone, Debug, PartialEq, Eq)]
pub(crate) struct Candidate {
    pub ip: String,
    pub port: u16,
    pub node: Option<String>,
    /// The pod behind it (`targetRef`), to find its node when the endpoint names none.
    pub pod: Option<String>,
}

/// The ready addresses of a Service's EndpointSlices for the service port named `port` (""
/// for an unnamed one). An endpoint's `ready` absent counts as ready (the API's rule).
pub(crate) fn slice_candidates(slices: &[Value], port: &str) -> Vec<Candidate> {
    let mut out = Vec::new();
    for s in slices {
        let Some(n) = named_port(s.get("ports"), port) else {
            continue;
        };
        for e in s
            .get("endpoints")
            .and_then(Value::as_array)
            .into_iter()
            .flatten()
        {
            if e.pointer("/conditions/ready").and_then(Value::as_bool) == Some(false) {
                continue;
            }
            let Some(ip) = e.pointer("/addresses/0").and_then(Value::as_str) else {
                continue;
            };
            out.push(Candidate {
                ip: ip.to_string(),
                port: n,
                node: e.get("nodeName").and_then(Value::as_str).map(String::from),
                pod: pod_ref(e.get("targetRef")),
            });
        }
    }
    out
}

/// The number of the port named `name` ("" for an unnamed one) in a slice's or subset's
/// `ports`.
fn named_port(ports: Option<&Value>, name: &str) -> Option<u16> {
    ports
        .and_then(Value::as_array)
        .into_iter()
        .flatten()
        .find(|p| p.get("name").and_then(Value::as_str).unwrap_or("") == name)
        .and_then(|p| p.get("port").and_then(Value::as_u64))
        .and_then(|n| u16::try_from(n).ok())
}

fn pod_ref(r: Option<&Value>) -> Option<String> {
    r.filter(|r| r.get("kind").and_then(Value::as_str) == Some("Pod"))
        .and_then(|r| r.get("name").and_then(Value::as_str))
        .map(String::from)
}

/// The same from an Endpoints object (its `addresses`, never `notReadyAddresses`).
pub(crate) fn endpoints_candidates(ep: &Value, port: &str) -> Vec<Candidate> {
    let mut out = Vec::new();
    for ss in ep
        .get("subsets")
        .and_then(Value::as_array)
        .into_iter()
        .flatten()
    {
        let Some(n) = named_port(ss.get("ports"), port) else {
            continue;
        };
        for a in ss
            .get("addresses")
            .and_then(Value::as_array)
            .into_iter()
            .flatten()
        {
            let Some(ip) = a.get("ip").and_then(Value::as_str) else {
                continue;
            };
            out.push(Candidate {
                ip: ip.to_string(),
                port: n,
                node: a.get("nodeName").and_then(Value::as_str).map(String::from),
                pod: pod_ref(a.get("targetRef")),
            });
        }
    }
    out
}

/// kube-apiserver picks an endpoint at random; `seed` is that randomness (fixed in tests).
pub(crate) fn choose(candidates: &[Candidate], seed: usize) -> Option<&Candidate> {
    if candidates.is_empty() {
        return None;
    }
    candidates.get(seed % candidates.len())
}

/// The service port a URL names, as kube-apiserver resolves it: a number becomes the name
/// of the service port with that number; a name (or nothing, for an unnamed port) is used
/// as it is.
pub(crate) fn service_port_name(svc: &Value, p: &ProxyPath) -> Result<String> {
    let Ok(n) = p.port.parse::<u64>() else {
        return Ok(p.port.clone());
    };
    svc.pointer("/spec/ports")
        .and_then(Value::as_array)
        .into_iter()
        .flatten()
        .find(|sp| sp.get("port").and_then(Value::as_u64) == Some(n))
        .map(|sp| {
            sp.get("name")
                .and_then(Value::as_str)
                .unwrap_or("")
                .to_string()
        })
        .ok_or_else(|| {
            unavailable(format!(
                "no service port {n} found for service {:?}",
                p.name
            ))
        })
}

fn get(st: &ApiState, kind: &str, ns: &str, name: &str) -> Result<Value> {
    st.api.get(
        resources::by_kind("v1", kind).expect("core kinds are served"),
        ns,
        name,
    )
}

/// Where the request of `p` goes.
pub(crate) fn route(st: &ApiState, p: &ProxyPath, seed: usize) -> Result<Route> {
    match p.kind {
        Kind::Pod => {
            let pod = get(st, "Pod", &p.namespace, &p.name)?;
            let port = pod_port(&pod, p)?;
            let Some(node) = pod.pointer("/spec/nodeName").and_then(Value::as_str) else {
                return Err(ApiError::bad_request(format!(
                    "pod {} does not have a host assigned",
                    p.name
                )));
            };
            let Some(ip) = pod
                .pointer("/status/podIP")
                .and_then(Value::as_str)
                .filter(|ip| !ip.is_empty())
            else {
                let phase = pod
                    .pointer("/status/phase")
                    .and_then(Value::as_str)
                    .unwrap_or("Pending");
                return Err(unavailable(format!(
                    "error trying to reach service: pod {:?} has no IP address yet (phase {phase})",
                    p.name
                )));
            };
            Ok(Route {
                node: node.to_string(),
                path: to_backend(&p.scheme, ip, port, &p.rest),
            })
        }
        Kind::Service => {
            let svc = get(st, "Service", &p.namespace, &p.name)?;
            let port = service_port_name(&svc, p)?;
            let slices = resources::by_kind("discovery.k8s.io/v1", "EndpointSlice")
                .expect("endpoint slices are served");
            let labels = kedge_core::selector::Selector::parse(&format!(
                "kubernetes.io/service-name={}",
                p.name
            ))
            .map_err(|e| ApiError::bad_request(e.to_string()))?;
            let list = st.api.list(
                slices,
                &p.namespace,
                &super::ops::ListOptions {
                    labels,
                    ..Default::default()
                },
            )?;
            let slices = list["items"].as_array().cloned().unwrap_or_default();
            let (any, candidates) = if slices.is_empty() {
                match get(st, "Endpoints", &p.namespace, &p.name) {
                    Ok(ep) => (
                        ep.get("subsets")
                            .and_then(Value::as_array)
                            .is_some_and(|s| !s.is_empty()),
                        endpoints_candidates(&ep, &port),
                    ),
                    Err(e) if e.code == 404 => (false, Vec::new()),
                    Err(e) => return Err(e),
                }
            } else {
                (true, slice_candidates(&slices, &port))
            };
            let Some(c) = choose(&candidates, seed) else {
                // kube-apiserver names the service, or the whole request once it had
                // endpoints but none for the port.
                let who = if any { &p.id } else { &p.name };
                return Err(unavailable(format!(
                    "no endpoints available for service {who:?}"
                )));
            };
            let node = match (&c.node, &c.pod) {
                (Some(n), _) => n.clone(),
                (None, Some(pod)) => get(st, "Pod", &p.namespace, pod)
                    .ok()
                    .and_then(|pod| {
                        pod.pointer("/spec/nodeName")
                            .and_then(Value::as_str)
                            .map(String::from)
                    })
                    .ok_or_else(|| {
                        unavailable(format!(
                            "error trying to reach service: the pod of endpoint {} is on no node",
                            c.ip
                        ))
                    })?,
                (None, None) => {
                    return Err(unavailable(format!(
                        "error trying to reach service: endpoint {} names no node to reach it through",
                        c.ip
                    )));
                }
            };
            Ok(Route {
                node,
                path: to_backend(&p.scheme, &c.ip, c.port, &p.rest),
            })
        }
        Kind::Node => {
            let node = get(st, "Node", "", &p.name)?;
            let kubelet_port = node
                .pointer("/status/daemonEndpoints/kubeletEndpoint/Port")
                .and_then(Value::as_u64)
                .unwrap_or(0);
            let port: u64 = if p.port.is_empty() {
                kubelet_port
            } else {
                p.port
                    .parse()
                    .ok()
                    .filter(|n| *n <= u64::from(u16::MAX))
                    .ok_or_else(|| {
                        ApiError::bad_request(format!("invalid node request {:?}", p.id))
                    })?
            };
            if port == kubelet_port || port == 0 {
                let rest = if p.rest.is_empty() { "/" } else { &p.rest };
                return Ok(Route {
                    node: p.name.clone(),
                    path: rest.to_string(),
                });
            }
            let ip = node
                .pointer("/status/addresses")
                .and_then(Value::as_array)
                .into_iter()
                .flatten()
                .find(|a| a.get("type").and_then(Value::as_str) == Some("InternalIP"))
                .and_then(|a| a.get("address").and_then(Value::as_str))
                .ok_or_else(|| {
                    unavailable(format!(
                        "error trying to reach service: node {:?} has no InternalIP",
                        p.name
                    ))
                })?;
            Ok(Route {
                node: p.name.clone(),
                path: to_backend(&p.scheme, ip, port as u16, &p.rest),
            })
        }
    }
}

/// Forwards the request of `p` and streams the answer back.
pub(crate) async fn serve(
    st: &ApiState,
    parts: Parts,
    body: Body,
    p: ProxyPath,
) -> Result<Response> {
    if p.rest.is_empty() && matches!(parts.method, Method::GET | Method::HEAD) {
        // As kube-apiserver: `…/proxy` redirects to `…/proxy/`, so relative links work.
        let mut location = format!("{}/", parts.uri.path());
        if let Some(q) = parts.uri.query() {
            location.push('?');
            location.push_str(q);
        }
        let mut r = StatusCode::MOVED_PERMANENTLY.into_response();
        if let Ok(v) = HeaderValue::from_str(&location) {
            r.headers_mut().insert(header::LOCATION, v);
        }
        return Ok(r);
    }
    let seed = rand::random::<u32>() as usize;
    let route = route(st, &p, seed)?;
    let proxy = st
        .nodes
        .get()
        .ok_or_else(|| unavailable("no node tunnel server is running"))?;
    let mut uri = route.path.clone();
    if let Some(q) = parts.uri.query() {
        uri.push('?');
        uri.push_str(q);
    }
    let mut headers = parts.headers.clone();
    kedge_tunnel::headers::strip_hop_by_hop(&mut headers);
    headers.remove(header::HOST);
    headers.remove(header::AUTHORIZATION);
    let impersonation: Vec<HeaderName> = headers
        .keys()
        .filter(|k| k.as_str().starts_with("impersonate-"))
        .cloned()
        .collect();
    for k in impersonation {
        headers.remove(k);
    }
    let mut req = http::Request::builder()
        .method(parts.method.clone())
        .uri(&uri)
        .body(body)
        .map_err(|e| ApiError::bad_request(format!("proxy request {uri:?}: {e}")))?;
    *req.headers_mut() = headers;
    let node = &route.node;
    tracing::debug!(node = %node, path = %route.path, method = %parts.method, "proxying");
    let resp = proxy
        .request(node, req)
        .await
        .map_err(|e| unavailable(format!("error trying to reach service: node {node:?}: {e}")))?;
    let (mut rp, rb) = resp.into_parts();
    kedge_tunnel::headers::strip_hop_by_hop(&mut rp.headers);
    Ok(Response::from_parts(rp, rb))
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    fn parsed(path: &str) -> ProxyPath {
        parse(path).unwrap().unwrap()
    }

    #[test]
    fn scheme_name_port_forms() {
        let s = |id: &str| split_scheme_name_port(id);
        let t = |a: &str, b: &str, c: &str| Some((a.to_string(), b.to_string(), c.to_string()));
        assert_eq!(s("web"), t("", "web", ""));
        assert_eq!(s("web:8080"), t("", "web", "8080"));
        assert_eq!(s("web:http"), t("", "web", "http"));
        assert_eq!(s("https:web:8443"), t("https", "web", "8443"));
        assert_eq!(s("https:web:"), t("https", "web", ""));
        assert_eq!(s("http:web:metrics"), t("http", "web", "metrics"));
        // Two parts are always name:port, as in Kubernetes.
        assert_eq!(s("https:web"), t("", "https", "web"));
        assert_eq!(s("ftp:web:21"), None);
        assert_eq!(s(":80"), None);
        assert_eq!(s("a:b:c:d"), None);
    }

    #[test]
    fn proxy_urls_parse_with_their_rest_and_leave_others_alone() {
        let p = parsed("/api/v1/namespaces/default/pods/web-1:8080/proxy/a/b%20c");
        assert_eq!(p.kind, Kind::Pod);
        assert_eq!(
            (p.namespace.as_str(), p.id.as_str(), p.name.as_str()),
            ("default", "web-1:8080", "web-1")
        );
        assert_eq!((p.port.as_str(), p.rest.as_str()), ("8080", "/a/b%20c"));
        let p = parsed("/api/v1/namespaces/d/services/https:web:metrics/proxy/");
        assert_eq!(p.kind, Kind::Service);
        assert_eq!(
            (p.scheme.as_str(), p.port.as_str(), p.rest.as_str()),
            ("https", "metrics", "/")
        );
        let p = parsed("/api/v1/namespaces/d/services/web/proxy");
        assert_eq!((p.port.as_str(), p.rest.as_str()), ("", ""));
        let p = parsed("/api/v1/nodes/n1/proxy/healthz");
        assert_eq!(p.kind, Kind::Node);
        assert_eq!((p.name.as_str(), p.rest.as_str()), ("n1", "/healthz"));
        let p = parsed("/api/v1/namespaces/d/pods/https%3Aweb%3A443/proxy/x");
        assert_eq!((p.scheme.as_str(), p.name.as_str()), ("https", "web"));
        assert_eq!(p.id, "https:web:443");
        for other in [
            "/api/v1/namespaces/d/pods/web",
            "/api/v1/namespaces/d/pods/web/log",
            "/api/v1/namespaces/d/pods/web/proxyx/a",
            "/api/v1/namespaces/d/configmaps/c/proxy",
            "/api/v1/nodes/n1",
            "/api/v1/nodes",
            "/apis/apps/v1/namespaces/d/deployments/x/proxy",
        ] {
            assert!(parse(other).is_none(), "{other}");
        }
        let e = parse("/api/v1/namespaces/d/services/ftp:web:21/proxy/")
            .unwrap()
            .unwrap_err();
        assert_eq!(
            (e.code, e.message.as_str()),
            (400, "invalid service request \"ftp:web:21\"")
        );
    }

    #[test]
    fn pod_ports_by_number_name_or_first_declared() {
        let pod = json!({"spec": {"containers": [
            {"name": "a"},
            {"name": "b", "ports": [{"name": "http", "containerPort": 8080}, {"name": "m", "containerPort": 9090}]},
        ]}});
        let port = |id: &str| {
            pod_port(
                &pod,
                &parsed(&format!("/api/v1/namespaces/d/pods/{id}/proxy/")),
            )
        };
        assert_eq!(port("p").unwrap(), 8080);
        assert_eq!(port("p:9000").unwrap(), 9000);
        assert_eq!(port("p:m").unwrap(), 9090);
        assert_eq!(port("p:nope").unwrap_err().code, 400);
        let bare = json!({"spec": {"containers": [{"name": "a"}]}});
        let p = parsed("/api/v1/namespaces/d/pods/https:p:/proxy/");
        assert_eq!(pod_port(&bare, &p).unwrap(), 443);
    }

    #[test]
    fn service_ports_and_endpoint_choice() {
        let svc = json!({"spec": {"ports": [{"name": "http", "port": 80}, {"name": "admin", "port": 9000}]}});
        let p = |id: &str| parsed(&format!("/api/v1/namespaces/d/services/{id}/proxy/"));
        assert_eq!(service_port_name(&svc, &p("web:80")).unwrap(), "http");
        assert_eq!(service_port_name(&svc, &p("web:admin")).unwrap(), "admin");
        assert_eq!(service_port_name(&svc, &p("web")).unwrap(), "");
        let e = service_port_name(&svc, &p("web:81")).unwrap_err();
        assert_eq!(
            (e.code, e.message.as_str()),
            (503, "no service port 81 found for service \"web\"")
        );

        let slices = [
            json!({"ports": [{"name": "http", "port": 8080}, {"name": "admin", "port": 9001}],
            "endpoints": [
                {"addresses": ["10.42.0.5"], "conditions": {"ready": true}, "nodeName": "n1",
                    "targetRef": {"kind": "Pod", "name": "web-a"}},
                {"addresses": ["10.42.1.7"], "conditions": {"ready": false}, "nodeName": "n2"},
                {"addresses": ["10.42.2.9"], "targetRef": {"kind": "Pod", "name": "web-c"}},
            ]}),
            json!({"ports": [{"name": "other", "port": 1}],
                "endpoints": [{"addresses": ["10.42.3.1"], "conditions": {"ready": true}}]}),
        ];
        let c = slice_candidates(&slices, "http");
        assert_eq!(c.len(), 2, "not ready and other ports left out: {c:?}");
        assert_eq!(
            c[0],
            Candidate {
                ip: "10.42.0.5".into(),
                port: 8080,
                node: Some("n1".into()),
                pod: Some("web-a".into())
            }
        );
        assert_eq!(c[1].node, None, "found through its pod");
        assert_eq!(c[1].pod.as_deref(), Some("web-c"));
        assert_eq!(choose(&c, 0), Some(&c[0]));
        assert_eq!(choose(&c, 3), Some(&c[1]));
        assert_eq!(choose(&[], 3), None);
        assert!(slice_candidates(&slices, "").is_empty());

        let ep = json!({"subsets": [{"addresses": [{"ip": "10.42.0.5", "nodeName": "n1"}],
            "notReadyAddresses": [{"ip": "10.42.0.6", "nodeName": "n1"}],
            "ports": [{"port": 8080}]}]});
        let c = endpoints_candidates(&ep, "");
        assert_eq!(c.len(), 1);
        assert_eq!((c[0].ip.as_str(), c[0].port), ("10.42.0.5", 8080));
        assert!(endpoints_candidates(&ep, "http").is_empty());
    }

    #[test]
    fn backend_paths_and_verbs() {
        assert_eq!(
            to_backend("", "10.42.0.5", 8080, ""),
            "/podProxy/http/10.42.0.5/8080/"
        );
        assert_eq!(
            to_backend("https", "10.42.0.5", 8443, "/a?b"),
            "/podProxy/https/10.42.0.5/8443/a?b"
        );
        assert_eq!(verb(&Method::HEAD), "get");
        assert_eq!(verb(&Method::POST), "create");
        assert_eq!(verb(&Method::OPTIONS), "options");
    }
}
