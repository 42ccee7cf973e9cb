//! The Kubernetes REST surface over HTTP: URL routing, query parameters, content types,
//! watch streaming and Table output. Object semantics live in [`super::ops`].

use std::collections::HashMap;
use std::sync::{Arc, OnceLock};
use std::time::Duration;

use axum::body::{Body, Bytes};
use axum::extract::{Request, State};
use axum::http::{HeaderMap, HeaderValue, Method, StatusCode, header};
use axum::response::{IntoResponse, Response};
use futures_util::StreamExt as _;
use futures_util::future::BoxFuture;
use serde_json::{Value, json};

use super::error::{ApiError, Cause, Result};
use super::ops::{Api, DeleteOptions, ListOptions, WriteOptions, parse_propagation};
use super::schema::FieldValidation;
use super::table::{self, IncludeObject};
use super::{discovery, openapi};
use crate::auth::Identity;
use kedge_core::patch::PatchType;
use kedge_core::resources::{self, Resource, Retired};
use kedge_core::selector::{FieldSelector, Selector as LabelSelector};

/// Reaches a node's agent (through its tunnel) for kubelet-style requests.
pub trait NodeProxy: Send + Sync + 'static {
    fn request(
        &self,
        node: &str,
        req: http::Request<Body>,
    ) -> BoxFuture<'_, std::result::Result<http::Response<Body>, String>>;

    /// [`request`](Self::request) through this server's own tunnel only (a request another
    /// replica forwarded here, see [`super::forward`]).
    fn local(
        &self,
        node: &str,
        req: http::Request<Body>,
    ) -> BoxFuture<'_, std::result::Result<http::Response<Body>, String>> {
        self.request(node, req)
    }
}

/// Shared state of the HTTP layer.
pub struct ApiState {
    pub api: Arc<Api>,
    pub nodes: OnceLock<Arc<dyn NodeProxy>>,
    pub clock: super::ops::Clock,
    /// Set once the default controllers and scheduler run; until then `/readyz` says 503
    /// (like kube-apiserver's post-start hooks), so clients and tests know writes will be
    /// acted on.
    pub ready: std::sync::atomic::AtomicBool,
    /// RBAC for callers that are neither masters nor nodes.
    pub rbac: Arc<super::rbac::Authorizer>,
    /// Signs and verifies service-account tokens.
    pub tokens: Arc<crate::tokens::Signer>,
    /// Relayed connections open per node (between nodes behind different NATs), bounded.
    pub relays: super::relay::Slots,
    /// What requests and watches record into.
    pub metrics: super::metrics::ApiMetrics,
    /// Every part's metrics (the API's among them), served at `GET /metrics`.
    pub registry: Arc<prometheus_client::registry::Registry>,
}

pub fn router(state: Arc<ApiState>) -> axum::Router {
    axum::Router::new().fallback(handle).with_state(state)
}

async fn handle(State(st): State<Arc<ApiState>>, req: Request) -> Response {
    let started = std::time::Instant::now();
    let method = req.method().clone();
    let path = req.uri().path().to_string();
    let segs: Vec<&str> = path.split('/').filter(|s| !s.is_empty()).collect();
    let target = resolve(&segs);
    let labels = request_labels(&req, target.as_ref());
    let result = dispatch(&st, req).await;
    let mut response = match result {
        Ok(r) => r,
        Err(e) => {
            tracing::debug!(%method, %path, code = e.code, reason = e.reason, "request failed");
            status_response(&e)
        }
    };
    // Every answer about a retired version says so, errors included; kubectl prints it.
    if let Some(r) = target.and_then(|t| t.retired)
        && let Some(w) = r.warning()
        && let Some(h) = super::retired::warning_header(&w)
    {
        response.headers_mut().append(header::WARNING, h);
    }
    st.metrics
        .request(&labels, response.status(), started.elapsed());
    response
}

/// The metric labels of a request: from the served resource table for resource URLs and the
/// API server proxy, the verb alone for anything else.
fn request_labels(req: &Request, target: Option<&Target>) -> super::metrics::RequestLabels {
    let (method, headers) = (req.method(), req.headers());
    if let Some(Ok(p)) = super::proxy::parse(req.uri().path()) {
        let res = p.resource();
        return super::metrics::resource_labels(
            method,
            headers,
            false,
            res,
            res.namespaced,
            true,
            Some("proxy"),
        );
    }
    let Some(t) = target else {
        return super::metrics::non_resource_labels(method);
    };
    let watching = req.uri().query().is_some_and(|q| {
        url::form_urlencoded::parse(q.as_bytes())
            .any(|(k, v)| k == "watch" && (v.eq_ignore_ascii_case("true") || v == "1"))
    });
    super::metrics::resource_labels(
        method,
        headers,
        watching,
        t.retired.map_or(t.res, |r| &r.resource),
        !t.namespace.is_empty(),
        t.name.is_some(),
        t.sub.as_deref(),
    )
}

fn status_response(e: &ApiError) -> Response {
    let mut r = json_response(
        StatusCode::from_u16(e.code).unwrap_or(StatusCode::INTERNAL_SERVER_ERROR),
        &e.status(),
        &[],
    );
    // kube-apiserver's writer turns `details.retryAfterSeconds` into the header client-go
    // waits on before retrying by itself.
    if let Some(secs) = e
        .details
        .as_ref()
        .and_then(|d| d.get("retryAfterSeconds"))
        .and_then(Value::as_u64)
        .filter(|s| *s > 0)
    {
        r.headers_mut()
            .insert(header::RETRY_AFTER, HeaderValue::from(secs));
    }
    r
}

fn json_response(code: StatusCode, v: &Value, warnings: &[String]) -> Response {
    let mut r = (
        code,
        [(header::CONTENT_TYPE, "application/json")],
        serde_json::to_vec(v).unwrap_or_default(),
    )
        .into_response();
    for w in warnings {
        if let Some(h) = super::retired::warning_header(w) {
            r.headers_mut().append(header::WARNING, h);
        }
    }
    r
}

type Query = HashMap<String, String>;

fn parse_query(q: Option<&str>) -> Query {
    url::form_urlencoded::parse(q.unwrap_or("").as_bytes())
        .into_owned()
        .collect()
}

fn flag(q: &Query, k: &str) -> bool {
    q.get(k)
        .is_some_and(|v| v.eq_ignore_ascii_case("true") || v == "1")
}

fn wants_table(headers: &HeaderMap) -> bool {
    headers
        .get(header::ACCEPT)
        .and_then(|v| v.to_str().ok())
        .is_some_and(|a| {
            a.split(',')
                .next()
                .is_some_and(|first| first.contains("as=Table"))
        })
}

/// What a Table's rows embed, when the request asks for a Table; `includeObject` is read
/// (and refused when unknown) only then, as kube-apiserver does.
fn table_options(headers: &HeaderMap, q: &Query) -> Result<Option<IncludeObject>> {
    if !wants_table(headers) {
        return Ok(None);
    }
    IncludeObject::parse(q.get("includeObject").map(String::as_str)).map(Some)
}

fn wants_aggregated(headers: &HeaderMap) -> bool {
    headers
        .get(header::ACCEPT)
        .and_then(|v| v.to_str().ok())
        .is_some_and(|a| a.contains("as=APIGroupDiscoveryList"))
}

/// Where a resource URL points.
struct Target {
    /// The stored resource, also for a URL in a retired version.
    res: &'static Resource,
    namespace: String,
    name: Option<String>,
    sub: Option<String>,
    /// The retired version the URL names, whose bodies are converted.
    retired: Option<&'static Retired>,
}

async fn dispatch(st: &ApiState, req: Request) -> Result<Response> {
    let (parts, body) = req.into_parts();
    let path = parts.uri.path().trim_end_matches('/').to_string();
    let segs: Vec<&str> = path.split('/').filter(|s| !s.is_empty()).collect();
    let query = parse_query(parts.uri.query());
    let headers = &parts.headers;

    // Health endpoints are open, like kube-apiserver's.
    match segs.as_slice() {
        ["livez"] => return Ok((StatusCode::OK, "ok").into_response()),
        ["healthz"] | ["readyz"] => {
            return Ok(if st.ready.load(std::sync::atomic::Ordering::Acquire) {
                (StatusCode::OK, "ok").into_response()
            } else {
                (
                    StatusCode::SERVICE_UNAVAILABLE,
                    "[-]plugins failed: the default controllers are still loading",
                )
                    .into_response()
            });
        }
        _ => {}
    }
    // The dashboard's static page, open like kube-dashboard's assets (it holds no data; every
    // request it makes is an API call with the user's token): see super::ui.
    if let Some(r) = super::ui::serve(&segs, &parts.method) {
        return r;
    }
    // A client certificate first (as kube-apiserver's authenticator chain), else a bearer
    // token; neither, or a token that does not verify, is 401.
    let identity = match parts.extensions.get::<Identity>().cloned() {
        Some(id) => id,
        None => bearer_identity(st, headers)?,
    };
    // The API server proxy: a subresource URL with a path of its own after `/proxy`.
    if let Some(p) = super::proxy::parse(parts.uri.path()) {
        let p = p?;
        let target = Target {
            res: p.resource(),
            namespace: p.namespace.clone(),
            name: Some(p.id.clone()),
            sub: Some("proxy".into()),
            retired: None,
        };
        authorize(st, &identity, &parts.method, &target, &query, &[])?;
        return super::proxy::serve(st, parts, body, p).await;
    }
    // The relay between nodes behind different NATs: nodes only, checked by the relay itself
    // (it is no resource RBAC could grant).
    if let Some(target) = super::relay::parse(&segs) {
        return super::relay::serve(st, &identity, parts, &target).await;
    }
    // Another server replica's request for a node whose tunnel is here (replicas only,
    // checked there).
    if let Some((node, rest)) = super::forward::parse(&parts) {
        return super::forward::serve(st, &identity, parts, body, &node, &rest).await;
    }
    // Resource metrics (`metrics.k8s.io`, authorized there) and the nodes' usage reports.
    if super::resource_metrics::is_resource_path(&segs) {
        return super::resource_metrics::serve(
            st,
            &identity,
            &parts.method,
            headers,
            &segs,
            &query,
        );
    }
    if let Some(node) = super::resource_metrics::report_target(&segs) {
        let body = axum::body::to_bytes(body, super::body::MAX_BODY)
            .await
            .map_err(super::body::too_large)?;
        let now = std::time::Instant::now();
        return super::resource_metrics::receive_report(
            &st.api,
            &identity,
            &parts.method,
            node,
            &body,
            now,
        );
    }
    // Paths outside the resource URLs, and the review "resources" answered right here, are
    // authorized now; resource requests once their URL is resolved.
    if super::rbac::applies(&identity) {
        let attrs = match segs.as_slice() {
            ["apis", g, "v1", plural]
                if discovery::VIRTUAL
                    .iter()
                    .any(|r| r.group == *g && r.plural == *plural) =>
            {
                // Only `create` is served; other methods get their 405 if authorized.
                let verb = if parts.method == Method::POST {
                    "create".to_string()
                } else {
                    parts.method.as_str().to_ascii_lowercase()
                };
                Some(super::rbac::Attributes::resource(
                    &verb, g, plural, "", "", "",
                ))
            }
            _ if resolve(&segs).is_none() => Some(super::rbac::Attributes::non_resource(
                &parts.method.as_str().to_ascii_lowercase(),
                if path.is_empty() { "/" } else { &path },
            )),
            _ => None,
        };
        if let Some(a) = attrs {
            st.rbac.check(&identity, &a)?;
        }
    }

    match (segs.as_slice(), &parts.method) {
        (["version"], &Method::GET) => {
            return Ok(json_response(StatusCode::OK, &discovery::version(), &[]));
        }
        // RBAC as a non-resource URL above (kube's `system:monitoring` role).
        (["metrics"], &Method::GET) => return Ok(super::metrics::response(&st.registry)),
        // `kedge snapshot save`: the whole store, Secrets included, so never a node's (the
        // node authorizer grants nodes no non-resource URL) and for others only what RBAC
        // grants on the non-resource URL (cluster-admin's `*`).
        (["kedge", "snapshot"], &Method::GET) => {
            if super::authz::node_of(&identity).is_some() {
                return Err(ApiError::forbidden(format!(
                    "User \"{}\" cannot get path \"{path}\"",
                    identity.user
                )));
            }
            return Ok(snapshot_response(st));
        }
        (["api"], &Method::GET) => {
            return Ok(if wants_aggregated(headers) {
                aggregated_response(discovery::aggregated(true))
            } else {
                json_response(StatusCode::OK, &discovery::api_versions(), &[])
            });
        }
        (["apis"], &Method::GET) => {
            return Ok(if wants_aggregated(headers) {
                aggregated_response(discovery::aggregated(false))
            } else {
                json_response(StatusCode::OK, &discovery::api_group_list(), &[])
            });
        }
        (["api", "v1"], &Method::GET) => {
            let doc = discovery::resource_list("", "v1").expect("core is served");
            return Ok(json_response(StatusCode::OK, &doc, &[]));
        }
        (["apis", g], &Method::GET) => {
            let doc = discovery::api_group(g).ok_or_else(|| ApiError::path_not_found(&path))?;
            return Ok(json_response(StatusCode::OK, &doc, &[]));
        }
        (["apis", g, v], &Method::GET) => {
            let doc =
                discovery::resource_list(g, v).ok_or_else(|| ApiError::path_not_found(&path))?;
            return Ok(json_response(StatusCode::OK, &doc, &[]));
        }
        (["apis", "authentication.k8s.io", "v1", "selfsubjectreviews"], &Method::POST) => {
            // The body (an empty review) carries nothing the answer depends on.
            let review = crate::auth::self_subject_review(&identity);
            return Ok(json_response(StatusCode::CREATED, &review, &[]));
        }
        (
            [
                "apis",
                "authorization.k8s.io",
                "v1",
                kind @ ("selfsubjectaccessreviews"
                | "subjectaccessreviews"
                | "selfsubjectrulesreviews"),
            ],
            &Method::POST,
        ) => {
            let bytes = axum::body::to_bytes(body, super::body::MAX_BODY)
                .await
                .map_err(super::body::too_large)?;
            let review = body_json(&bytes, headers)?;
            let answer = match *kind {
                "selfsubjectrulesreviews" => rules_review(st, &identity, review),
                k => access_review(st, &identity, review, k == "selfsubjectaccessreviews")?,
            };
            return Ok(json_response(StatusCode::CREATED, &answer, &[]));
        }
        (["openapi", "v3"], &Method::GET) => {
            return Ok(openapi::response(openapi::root()));
        }
        (["openapi", "v3", "api", "v1"], &Method::GET) => {
            let doc = openapi::group_version("", "v1").expect("core is served");
            return Ok(openapi::response(doc));
        }
        (["openapi", "v3", "apis", g, v], &Method::GET) => {
            let doc =
                openapi::group_version(g, v).ok_or_else(|| ApiError::path_not_found(&path))?;
            return Ok(openapi::response(doc));
        }
        _ => {}
    }

    let target = resolve(&segs).ok_or_else(|| ApiError::path_not_found(&path))?;
    tracing::trace!(user = %identity.user, method = %parts.method, path, "request");
    // Streaming subresources take the connection over: they need the request's upgrade
    // handle, not its body.
    if let (Some(name), Some(sub)) = (target.name.as_deref(), target.sub.as_deref())
        && target.res.kind == "Pod"
        && matches!(parts.method, Method::GET | Method::POST)
    {
        let ns = target.namespace.as_str();
        if matches!(sub, "exec" | "attach" | "portforward") {
            // The same authorization as every other request (nodes may not open a shell in
            // pods); these requests have no body to inspect.
            authorize(st, &identity, &parts.method, &target, &query, &[])?;
        }
        match sub {
            "exec" => return super::stream::exec(st, parts, ns, name, false).await,
            "attach" => return super::stream::exec(st, parts, ns, name, true).await,
            "portforward" => return super::stream::port_forward(st, parts, ns, name).await,
            _ => {}
        }
    }
    let body = axum::body::to_bytes(body, super::body::MAX_BODY)
        .await
        .map_err(super::body::too_large)?;
    authorize(st, &identity, &parts.method, &target, &query, &body)?;
    let rbac_write = target.res.group == super::rbac::GROUP && parts.method != Method::GET;
    if rbac_write && super::rbac::applies(&identity) {
        check_escalation(st, &identity, &parts.method, headers, &target, &body)?;
    }
    let out = handle_resource(st, &parts.method, headers, &query, target, body).await;
    if rbac_write {
        st.rbac.invalidate();
    }
    out
}

/// Streams [`kedge_store::Store::save_snapshot`]: the copy is written on a blocking thread
/// into a bounded channel the body reads, so a slow client slows the copy and nothing is
/// buffered whole. A failure midway aborts the body: the client sees a cut transfer, never a
/// short file that looks complete.
fn snapshot_response(st: &ApiState) -> Response {
    /// Hands what the store writes to the response body, a chunk at a time.
    struct ToBody {
        tx: tokio::sync::mpsc::Sender<std::io::Result<bytes::Bytes>>,
        buf: Vec<u8>,
    }
    const CHUNK: usize = 256 << 10;
    impl std::io::Write for ToBody {
        fn write(&mut self, data: &[u8]) -> std::io::Result<usize> {
            self.buf.extend_from_slice(data);
            if self.buf.len() >= CHUNK {
                self.flush()?;
            }
            Ok(data.len())
        }
        fn flush(&mut self) -> std::io::Result<()> {
            if self.buf.is_empty() {
                return Ok(());
            }
            let chunk = bytes::Bytes::from(std::mem::take(&mut self.buf));
            self.tx
                .blocking_send(Ok(chunk))
                .map_err(|_| std::io::Error::other("the client went away"))
        }
    }
    let (tx, mut rx) = tokio::sync::mpsc::channel(4);
    let store = st.api.store().clone();
    tokio::task::spawn_blocking(move || {
        let mut out = ToBody {
            tx: tx.clone(),
            buf: Vec::with_capacity(CHUNK),
        };
        match store.save_snapshot(&mut out) {
            Ok(info) => tracing::info!(
                revision = info.revision,
                objects = info.objects,
                "store snapshot sent"
            ),
            Err(e) => {
                tracing::warn!(error = %e, "store snapshot failed");
                let _ = tx.blocking_send(Err(std::io::Error::other(e.to_string())));
            }
        }
    });
    let body = Body::from_stream(futures_util::stream::poll_fn(move |cx| rx.poll_recv(cx)));
    let mut r = Response::new(body);
    r.headers_mut().insert(
        header::CONTENT_TYPE,
        HeaderValue::from_static("application/octet-stream"),
    );
    r
}

/// The identity of an `Authorization: Bearer` service-account token.
fn bearer_identity(st: &ApiState, headers: &HeaderMap) -> Result<Identity> {
    let token = headers
        .get(header::AUTHORIZATION)
        .and_then(|v| v.to_str().ok())
        .and_then(|v| v.trim().split_once(' '))
        .filter(|(scheme, _)| scheme.eq_ignore_ascii_case("bearer"))
        .map(|(_, t)| t.trim())
        .filter(|t| !t.is_empty())
        .ok_or_else(ApiError::unauthorized)?;
    crate::tokens::authenticate(&st.api, &st.tokens, token, (st.clock)().timestamp()).map_err(|e| {
        tracing::debug!(error = %e, "bearer token refused");
        ApiError::unauthorized()
    })
}

/// kube's authorization attributes of a resource request. The streaming pod subresources
/// are `create` whatever the method (kube 1.32 checks `create` for WebSocket upgrades too).
fn resource_attributes(method: &Method, t: &Target, query: &Query) -> super::rbac::Attributes {
    let sub = t.sub.as_deref().unwrap_or("");
    let verb = if matches!(sub, "exec" | "attach" | "portforward") {
        "create".to_string()
    } else if sub == "proxy" {
        super::proxy::verb(method)
    } else {
        super::authz::verb(method, t.name.is_some(), query).to_string()
    };
    let namespace = if t.res.kind == "Namespace" {
        // A namespace is in itself, as kube's RequestInfo has it.
        t.name.as_deref().unwrap_or("")
    } else {
        &t.namespace
    };
    super::rbac::Attributes::resource(
        &verb,
        t.res.group,
        t.res.plural,
        sub,
        namespace,
        t.name.as_deref().unwrap_or(""),
    )
}

/// Node authorizer for nodes, RBAC for everyone but masters.
fn authorize(
    st: &ApiState,
    identity: &Identity,
    method: &Method,
    t: &Target,
    query: &Query,
    body: &[u8],
) -> Result<()> {
    super::authz::authorize(
        &st.api,
        identity,
        &super::authz::Request {
            method,
            res: t.res,
            namespace: &t.namespace,
            name: t.name.as_deref(),
            sub: t.sub.as_deref(),
            query,
            body,
        },
    )?;
    if super::rbac::applies(identity) {
        st.rbac
            .check(identity, &resource_attributes(method, t, query))?;
    }
    Ok(())
}

/// The object an RBAC write would store, checked against what the caller may grant.
fn check_escalation(
    st: &ApiState,
    identity: &Identity,
    method: &Method,
    headers: &HeaderMap,
    t: &Target,
    body: &Bytes,
) -> Result<()> {
    let obj = match (method, t.name.as_deref()) {
        (&Method::POST | &Method::PUT, _) => body_json(body, headers)?,
        (&Method::PATCH, Some(_)) if is_apply_patch(headers) => super::body::yaml(body)
            .map_err(|e| ApiError::bad_request(format!("error decoding patch: {e}")))?,
        (&Method::PATCH, Some(name)) => {
            let current = st.api.get(t.res, &t.namespace, name)?;
            let (patch, kind) = patch_body(body, headers)?;
            kedge_core::patch::apply(&current, &patch, kind)
                .map_err(|e| super::ops::patch_error(kind, e))?
        }
        _ => return Ok(()),
    };
    st.rbac
        .check_escalation(identity, t.res, &t.namespace, &obj)
}

/// A SelfSubjectAccessReview (about the caller) or SubjectAccessReview (about the user in
/// its spec), answered and not stored.
fn access_review(st: &ApiState, caller: &Identity, mut review: Value, own: bool) -> Result<Value> {
    let spec = review.get("spec").cloned().unwrap_or(Value::Null);
    let s = |v: &Value, k: &str| {
        v.get(k)
            .and_then(Value::as_str)
            .unwrap_or_default()
            .to_string()
    };
    let attrs = match (
        spec.get("resourceAttributes"),
        spec.get("nonResourceAttributes"),
    ) {
        (Some(r), None) if r.is_object() => super::rbac::Attributes::resource(
            &s(r, "verb"),
            &s(r, "group"),
            &s(r, "resource"),
            &s(r, "subresource"),
            &s(r, "namespace"),
            &s(r, "name"),
        ),
        (None, Some(n)) if n.is_object() => {
            super::rbac::Attributes::non_resource(&s(n, "verb"), &s(n, "path"))
        }
        _ => {
            return Err(ApiError::new(
                422,
                "Invalid",
                "spec.resourceAttributes: Invalid value: \"null\": exactly one of nonResourceAttributes or resourceAttributes must be specified",
            ));
        }
    };
    let subject = if own {
        caller.clone()
    } else {
        let groups = spec
            .get("groups")
            .and_then(Value::as_array)
            .into_iter()
            .flatten()
            .filter_map(|g| g.as_str().map(str::to_string))
            .collect();
        let user = s(&spec, "user");
        if user.is_empty() && spec.get("groups").is_none() {
            return Err(ApiError::new(
                422,
                "Invalid",
                "spec.user: Invalid value: \"\": at least one of user or group must be specified",
            ));
        }
        Identity { user, groups }
    };
    let allowed = decide(st, &subject, &attrs);
    if own {
        review["spec"]["user"] = Value::Null;
    }
    review["kind"] = json!(if own {
        "SelfSubjectAccessReview"
    } else {
        "SubjectAccessReview"
    });
    review["apiVersion"] = json!("authorization.k8s.io/v1");
    if !review.get("metadata").is_some_and(Value::is_object) {
        review["metadata"] = json!({});
    }
    review["metadata"]["creationTimestamp"] = Value::Null;
    if let Some(spec) = review.get_mut("spec").and_then(Value::as_object_mut) {
        spec.retain(|_, v| !v.is_null());
    }
    review["status"] = json!({"allowed": allowed});
    Ok(review)
}

/// A SelfSubjectRulesReview (`kubectl auth can-i --list`): the caller's RBAC rules in the
/// namespace. Nodes are decided per request, so their answer is marked incomplete.
fn rules_review(st: &ApiState, caller: &Identity, mut review: Value) -> Value {
    let ns = review
        .pointer("/spec/namespace")
        .and_then(Value::as_str)
        .unwrap_or_default()
        .to_string();
    let rules = st.rbac.rules_for(caller, &ns);
    let (resource, non_resource): (Vec<_>, Vec<_>) =
        rules.iter().partition(|r| r.non_resource_urls.is_empty());
    let resource: Vec<Value> = resource
        .iter()
        .map(|r| {
            let mut v = json!({"verbs": r.verbs, "apiGroups": r.api_groups,
                "resources": r.resources});
            if !r.resource_names.is_empty() {
                v["resourceNames"] = json!(r.resource_names);
            }
            v
        })
        .collect();
    let non_resource: Vec<Value> = non_resource
        .iter()
        .map(|r| json!({"verbs": r.verbs, "nonResourceURLs": r.non_resource_urls}))
        .collect();
    review["kind"] = json!("SelfSubjectRulesReview");
    review["apiVersion"] = json!("authorization.k8s.io/v1");
    review["metadata"] = json!({"creationTimestamp": null});
    review["spec"] = json!({"namespace": ns});
    review["status"] = json!({"resourceRules": resource, "nonResourceRules": non_resource,
        "incomplete": super::authz::node_of(caller).is_some()});
    review
}

/// Whether `id` may do `a`: masters always, nodes by the Node authorizer, others by RBAC.
fn decide(st: &ApiState, id: &Identity, a: &super::rbac::Attributes) -> bool {
    if super::authz::node_of(id).is_none() {
        return st.rbac.allows(id, a);
    }
    // The Node authorizer decides per request: ask it about the equivalent one.
    let Some(res) = resources::by_group_plural(&a.group, &a.resource) else {
        return false;
    };
    let method = match a.verb.as_str() {
        "get" | "list" | "watch" => Method::GET,
        "create" => Method::POST,
        "update" => Method::PUT,
        "patch" => Method::PATCH,
        "delete" | "deletecollection" => Method::DELETE,
        _ => return false,
    };
    let mut query = Query::new();
    if a.verb == "watch" {
        query.insert("watch".into(), "true".into());
    }
    let named = matches!(a.verb.as_str(), "get" | "update" | "patch" | "delete");
    super::authz::authorize(
        &st.api,
        id,
        &super::authz::Request {
            method: &method,
            res,
            namespace: &a.namespace,
            name: named.then_some(a.name.as_str()),
            sub: (!a.subresource.is_empty()).then_some(a.subresource.as_str()),
            query: &query,
            body: &[],
        },
    )
    .is_ok()
}

fn aggregated_response(v: Value) -> Response {
    (
        StatusCode::OK,
        [(header::CONTENT_TYPE, discovery::AGGREGATED_CONTENT_TYPE)],
        serde_json::to_vec(&v).unwrap_or_default(),
    )
        .into_response()
}

/// A served resource by URL: the stored resource, and the retired version if the URL names
/// one.
fn lookup(
    group: &str,
    version: &str,
    plural: &str,
) -> Option<(&'static Resource, Option<&'static Retired>)> {
    match resources::by_plural(group, version, plural) {
        Some(r) => Some((r, None)),
        None => resources::retired(group, version, plural).map(|r| (r.stored(), Some(r))),
    }
}

/// Parses `/api/v1/...` and `/apis/<g>/<v>/...` resource URLs.
fn resolve(segs: &[&str]) -> Option<Target> {
    let (group, version, rest) = match segs {
        ["api", v, rest @ ..] => ("", *v, rest),
        ["apis", g, v, rest @ ..] => (*g, *v, rest),
        _ => return None,
    };
    let namespaced_form = rest.len() >= 3
        && rest[0] == "namespaces"
        && lookup(group, version, rest[2]).is_some_and(|(r, _)| r.namespaced);
    let (namespace, rest) = if namespaced_form {
        (rest[1].to_string(), &rest[2..])
    } else {
        (String::new(), rest)
    };
    let (res, retired) = lookup(group, version, rest.first()?)?;
    let name = rest.get(1).map(|s| s.to_string());
    let sub = rest.get(2).map(|s| s.to_string());
    if rest.len() > 3 {
        return None;
    }
    let seen = retired.map_or(res, |r| &r.resource);
    if let Some(s) = &sub
        && !seen.has(s)
    {
        return None;
    }
    Some(Target {
        res,
        namespace,
        name,
        sub,
        retired,
    })
}

fn body_json(body: &Bytes, headers: &HeaderMap) -> Result<Value> {
    let ct = headers
        .get(header::CONTENT_TYPE)
        .and_then(|v| v.to_str().ok())
        .unwrap_or("application/json");
    let base = ct.split(';').next().unwrap_or("").trim();
    match base {
        // kubectl scale --current-replicas sends no content type at all.
        "application/json" | "" | "*/*" => super::body::json(body)
            .map_err(|e| ApiError::bad_request(format!("error decoding JSON body: {e}"))),
        "application/yaml" => super::body::yaml(body)
            .map_err(|e| ApiError::bad_request(format!("error decoding YAML body: {e}"))),
        super::protobuf::CONTENT_TYPE => super::protobuf::decode(body),
        other => Err(ApiError::unsupported_media(other)),
    }
}

fn write_options(q: &Query, headers: &HeaderMap) -> Result<WriteOptions> {
    let validation = match q.get("fieldValidation") {
        None => FieldValidation::default(),
        Some(v) => FieldValidation::parse(v).ok_or_else(|| {
            ApiError::bad_request(format!(
                "fieldValidation: Unsupported value: {v:?}: supported values: \"Ignore\", \"Warn\", \"Strict\""
            ))
        })?,
    };
    Ok(WriteOptions {
        dry_run: q.get("dryRun").is_some_and(|v| v == "All"),
        validation,
        warnings: Default::default(),
        manager: field_manager(q, headers),
    })
}

/// The manager a write is recorded under: `?fieldManager=`, else the User-Agent up to its
/// first `/` (`kubectl/v1.32.0 (linux/amd64) ...` → `kubectl`), as kube-apiserver derives it.
fn field_manager(q: &Query, headers: &HeaderMap) -> Option<String> {
    if let Some(m) = q.get("fieldManager").filter(|m| !m.is_empty()) {
        return Some(m.clone());
    }
    let ua = headers.get(header::USER_AGENT)?.to_str().ok()?;
    let prefix: String = ua.split('/').next()?.trim().chars().take(128).collect();
    (!prefix.is_empty()).then_some(prefix)
}

fn is_apply_patch(headers: &HeaderMap) -> bool {
    headers
        .get(header::CONTENT_TYPE)
        .and_then(|v| v.to_str().ok())
        .is_some_and(|ct| ct.trim_start().starts_with("application/apply-patch+yaml"))
}

fn warnings(opts: &WriteOptions) -> Vec<String> {
    opts.warnings
        .lock()
        .unwrap_or_else(|p| p.into_inner())
        .clone()
}

async fn handle_resource(
    st: &ApiState,
    method: &Method,
    headers: &HeaderMap,
    q: &Query,
    t: Target,
    body: Bytes,
) -> Result<Response> {
    let api = &st.api;
    let res = t.res;
    let ns = t.namespace.as_str();
    // A retired version: bodies converted in and out, lists and events labelled with it.
    let view = t.retired;
    let seen = view.map_or(res, |r| &r.resource);
    let inbound = |v| super::retired::inbound(view, v);
    let outbound = |v| super::retired::outbound(view, v);
    if res.namespaced && ns.is_empty() && t.name.is_some() {
        return Err(ApiError::path_not_found(&format!(
            "{} must be addressed within a namespace",
            res.plural
        )));
    }
    match (method, t.name.as_deref(), t.sub.as_deref()) {
        // Collection.
        (&Method::GET, None, None) => {
            let (labels, fields) = selectors(q, res)?;
            let watching = flag(q, "watch");
            validate_list_options(q, watching)?;
            if watching {
                let as_table = table_options(headers, q)?;
                return watch(st, res, view, ns, labels, fields, q, as_table);
            }
            check_list_revision(st, q)?;
            let opts = ListOptions {
                labels,
                fields,
                limit: q.get("limit").and_then(|l| l.parse().ok()),
                continue_token: q.get("continue").filter(|c| !c.is_empty()).cloned(),
            };
            let mut page = api.list_page(res, ns, &opts)?;
            if let Some(include) = table_options(headers, q)? {
                let mut t = list_table(res, &page, (st.clock)(), include)?;
                table::map_objects(&mut t, outbound)?;
                return Ok(json_response(StatusCode::OK, &t, &[]));
            }
            if view.is_some() {
                page.items = std::mem::take(&mut page.items)
                    .into_iter()
                    .map(|o| super::retired::outbound_bytes(view, o))
                    .collect::<Result<_>>()?;
            }
            Ok(list_response(seen, &page))
        }
        (&Method::POST, None, None) => {
            let obj = inbound(body_json(&body, headers)?)?;
            let opts = write_options(q, headers)?;
            let created = outbound(api.create(res, ns, obj, &opts)?)?;
            Ok(json_response(
                StatusCode::CREATED,
                &created,
                &warnings(&opts),
            ))
        }
        (&Method::DELETE, None, None) => {
            // deletecollection: every object the selectors match.
            let (labels, fields) = selectors(q, res)?;
            let list = api.list(
                res,
                ns,
                &ListOptions {
                    labels,
                    fields,
                    ..Default::default()
                },
            )?;
            let opts = delete_options(&body, q)?;
            let mut deleted = Vec::new();
            for o in list["items"].as_array().cloned().unwrap_or_default() {
                let name = kedge_core::meta::name(&o).to_string();
                let ons = kedge_core::meta::namespace(&o).to_string();
                match api.delete(res, &ons, &name, &opts) {
                    Ok(d) => deleted.push(outbound(d)?),
                    Err(e) if e.code == 404 => {}
                    Err(e) => return Err(e),
                }
            }
            let mut list = list;
            list["items"] = json!(deleted);
            list["apiVersion"] = json!(seen.api_version());
            Ok(json_response(StatusCode::OK, &list, &[]))
        }
        // One object.
        (&Method::GET, Some(name), None) => {
            let obj = api.get(res, ns, name)?;
            if let Some(include) = table_options(headers, q)? {
                // Cells from the stored form; an embedded object in the request's version.
                let meta = json!({"resourceVersion": obj["metadata"]["resourceVersion"].clone()});
                let mut t = table::table(res, vec![obj], meta, (st.clock)(), include);
                table::map_objects(&mut t, outbound)?;
                return Ok(json_response(StatusCode::OK, &t, &[]));
            }
            Ok(json_response(StatusCode::OK, &outbound(obj)?, &[]))
        }
        (&Method::PUT, Some(name), None | Some("status")) => {
            let obj = inbound(body_json(&body, headers)?)?;
            let opts = write_options(q, headers)?;
            let out = outbound(api.update(res, ns, name, obj, t.sub.as_deref(), &opts)?)?;
            Ok(json_response(StatusCode::OK, &out, &warnings(&opts)))
        }
        (&Method::PATCH, Some(name), None) if is_apply_patch(headers) => {
            // Server-side apply; YAML is a superset of the JSON kubectl sends.
            let config: Value = super::body::yaml(&body)
                .map_err(|e| ApiError::bad_request(format!("error decoding patch: {e}")))?;
            let config = inbound(config)?;
            let manager = q.get("fieldManager").filter(|m| !m.is_empty()).ok_or_else(|| {
                ApiError::new(
                    422,
                    "Invalid",
                    "PatchOptions.meta.k8s.io \"\" is invalid: fieldManager: Required value: is required for apply patch",
                )
            })?;
            let opts = write_options(q, headers)?;
            let (out, created) =
                api.apply(res, ns, name, config, manager, flag(q, "force"), &opts)?;
            let out = outbound(out)?;
            let code = if created {
                StatusCode::CREATED
            } else {
                StatusCode::OK
            };
            Ok(json_response(code, &out, &warnings(&opts)))
        }
        (&Method::PATCH, Some(name), None | Some("status")) => {
            let (patch, kind) = patch_body(&body, headers)?;
            let opts = write_options(q, headers)?;
            let out = api.patch_as(res, ns, name, t.sub.as_deref(), &patch, kind, &opts, view)?;
            let out = outbound(out)?;
            Ok(json_response(StatusCode::OK, &out, &warnings(&opts)))
        }
        (&Method::DELETE, Some(name), None) => {
            let opts = delete_options(&body, q)?;
            let out = outbound(api.delete(res, ns, name, &opts)?)?;
            Ok(json_response(StatusCode::OK, &out, &[]))
        }
        (&Method::GET, Some(name), Some("status")) => Ok(json_response(
            StatusCode::OK,
            &outbound(api.get(res, ns, name)?)?,
            &[],
        )),
        (&Method::GET, Some(name), Some("scale")) => Ok(json_response(
            StatusCode::OK,
            &api.get_scale(res, ns, name)?,
            &[],
        )),
        (&Method::PUT, Some(name), Some("scale")) => {
            let scale = body_json(&body, headers)?;
            let opts = write_options(q, headers)?;
            Ok(json_response(
                StatusCode::OK,
                &api.update_scale(res, ns, name, &scale, &opts)?,
                &[],
            ))
        }
        (&Method::PATCH, Some(name), Some("scale")) => {
            let (patch, kind) = patch_body(&body, headers)?;
            let current = api.get_scale(res, ns, name)?;
            let patched = kedge_core::patch::apply(&current, &patch, kind)
                .map_err(|e| super::ops::patch_error(kind, e))?;
            let opts = write_options(q, headers)?;
            Ok(json_response(
                StatusCode::OK,
                &api.update_scale(res, ns, name, &patched, &opts)?,
                &[],
            ))
        }
        (&Method::POST, Some(name), Some("binding")) => {
            let binding = body_json(&body, headers)?;
            api.bind(ns, name, &binding)?;
            Ok(json_response(
                StatusCode::CREATED,
                &json!({"kind": "Status", "apiVersion": "v1", "metadata": {}, "status": "Success", "code": 201}),
                &[],
            ))
        }
        (&Method::POST, Some(name), Some("eviction")) => {
            let eviction = body_json(&body, headers)?;
            let dry_run = q.get("dryRun").is_some_and(|v| v == "All");
            let out = super::eviction::evict(api, ns, name, &eviction, dry_run)?;
            Ok(json_response(StatusCode::CREATED, &out, &[]))
        }
        (&Method::GET, Some(name), Some("log")) => pod_log(st, ns, name, q).await,
        (&Method::POST, Some(name), Some("token")) => {
            let request = body_json(&body, headers)?;
            let out =
                crate::tokens::token_request(api, &st.tokens, ns, name, &request, (st.clock)())?;
            Ok(json_response(StatusCode::CREATED, &out, &[]))
        }
        _ => Err(ApiError::method_not_allowed(format!(
            "the server does not allow this method on the requested resource ({method} {})",
            res.plural
        ))),
    }
}

/// `labelSelector` and `fieldSelector` of a collection request.
fn selectors(q: &Query, res: &Resource) -> Result<(LabelSelector, FieldSelector)> {
    let labels = LabelSelector::parse(q.get("labelSelector").map_or("", |s| s))
        .map_err(|e| ApiError::bad_request(e.to_string()))?;
    let fields = FieldSelector::parse(
        q.get("fieldSelector").map_or("", |s| s),
        res.field_selectors,
    )
    .map_err(|e| ApiError::bad_request(e.to_string()))?;
    Ok((labels, fields))
}

/// kube-apiserver's `ValidateListOptions`: the `resourceVersionMatch` / `sendInitialEvents`
/// combinations it refuses, with its wording, as one 422 on `ListOptions.meta.k8s.io`.
fn validate_list_options(q: &Query, watching: bool) -> Result<()> {
    let matching = q.get("resourceVersionMatch").filter(|m| !m.is_empty());
    let rv = q.get("resourceVersion").map_or("", String::as_str);
    let has_continue = q.get("continue").is_some_and(|c| !c.is_empty());
    let send_initial = q.contains_key("sendInitialEvents");
    let mut causes = Vec::new();
    let forbidden = |field: &str, why: &str| Cause {
        reason: "FieldValueForbidden",
        field: field.to_string(),
        message: format!("Forbidden: {why}"),
    };
    if watching {
        if send_initial {
            if matching.map(String::as_str) != Some("NotOlderThan") {
                causes.push(forbidden(
                    "resourceVersionMatch",
                    "sendInitialEvents requires setting resourceVersionMatch to NotOlderThan",
                ));
            }
            if !flag(q, "allowWatchBookmarks") {
                causes.push(forbidden(
                    "allowWatchBookmarks",
                    "sendInitialEvents requires setting allowWatchBookmarks to true",
                ));
            }
        }
        if let Some(m) = matching {
            if !send_initial {
                causes.push(forbidden(
                    "resourceVersionMatch",
                    "resourceVersionMatch is forbidden for watch unless sendInitialEvents is provided",
                ));
            }
            if m != "NotOlderThan" {
                causes.push(Cause::unsupported(
                    "resourceVersionMatch",
                    m,
                    &["NotOlderThan"],
                ));
            }
            if has_continue {
                causes.push(forbidden(
                    "resourceVersionMatch",
                    "resourceVersionMatch is forbidden when continue is provided",
                ));
            }
        }
    } else {
        if let Some(m) = matching {
            if rv.is_empty() {
                causes.push(forbidden(
                    "resourceVersionMatch",
                    "resourceVersionMatch is forbidden unless resourceVersion is provided",
                ));
            }
            if has_continue {
                causes.push(forbidden(
                    "resourceVersionMatch",
                    "resourceVersionMatch is forbidden when continue is provided",
                ));
            }
            if m != "Exact" && m != "NotOlderThan" {
                causes.push(Cause::unsupported(
                    "resourceVersionMatch",
                    m,
                    &["Exact", "NotOlderThan", ""],
                ));
            }
            if m == "Exact" && rv == "0" {
                causes.push(forbidden(
                    "resourceVersionMatch",
                    "resourceVersionMatch \"exact\" is forbidden for resourceVersion \"0\"",
                ));
            }
        }
        if send_initial {
            causes.push(forbidden(
                "sendInitialEvents",
                "sendInitialEvents is forbidden for list",
            ));
        }
    }
    if causes.is_empty() {
        Ok(())
    } else {
        Err(ApiError::invalid_options("ListOptions", causes))
    }
}

/// A list's `resourceVersion` under `resourceVersionMatch`. The store lists only its
/// current state, so `Exact` is served at the current revision only (an older one is 410
/// Expired, as after a compaction), and a revision from the future is a 504 as when
/// kube-apiserver's cache cannot catch up.
fn check_list_revision(st: &ApiState, q: &Query) -> Result<()> {
    let rv = q.get("resourceVersion").map_or("", String::as_str);
    if !rv.is_empty() && rv.parse::<kedge_store::Revision>().is_err() {
        // What kube-apiserver's storage answers (Go's wording of the parse error).
        return Err(ApiError::bad_request(format!(
            "resourceVersion: Invalid value: {rv:?}: strconv.ParseUint: parsing {rv:?}: invalid syntax"
        )));
    }
    let Some(m) = q.get("resourceVersionMatch").filter(|m| !m.is_empty()) else {
        return Ok(());
    };
    let wanted: kedge_store::Revision = rv
        .parse()
        .map_err(|_| ApiError::bad_request(format!("invalid resource version: {rv:?}")))?;
    let current = st.api.store().revision();
    if wanted > current {
        return Err(ApiError {
            details: Some(json!({"causes": [{"reason": "ResourceVersionTooLarge",
                "message": "Too large resource version"}], "retryAfterSeconds": 1})),
            ..ApiError::new(
                504,
                "Timeout",
                format!("Timeout: Too large resource version: {wanted}, current: {current}"),
            )
        });
    }
    if m == "Exact" && wanted < current {
        return Err(ApiError::expired(format!(
            "too old resource version: {wanted} ({current})"
        )));
    }
    Ok(())
}

fn patch_body(body: &Bytes, headers: &HeaderMap) -> Result<(Value, PatchType)> {
    let ct = headers
        .get(header::CONTENT_TYPE)
        .and_then(|v| v.to_str().ok())
        .unwrap_or("");
    let kind = PatchType::from_content_type(ct).ok_or_else(|| {
        if ct.starts_with("application/apply-patch") {
            ApiError::new(
                415,
                "UnsupportedMediaType",
                "server-side apply is served on the object itself, not on its subresources",
            )
        } else {
            ApiError::unsupported_media(ct)
        }
    })?;
    let v = super::body::json(body)
        .map_err(|e| ApiError::bad_request(format!("error decoding patch: {e}")))?;
    Ok((v, kind))
}

fn delete_options(body: &Bytes, q: &Query) -> Result<DeleteOptions> {
    let mut opts = if body.iter().all(u8::is_ascii_whitespace) {
        DeleteOptions::default()
    } else {
        let v: Value = serde_json::from_slice(body)
            .map_err(|e| ApiError::bad_request(format!("error decoding DeleteOptions: {e}")))?;
        DeleteOptions::from_body(&v)?
    };
    // The Python client sends these as query parameters.
    if let Some(p) = q.get("propagationPolicy") {
        opts.propagation = Some(parse_propagation(p)?);
    }
    if let Some(g) = q.get("gracePeriodSeconds") {
        opts.grace_period_seconds = Some(
            g.parse()
                .map_err(|_| ApiError::bad_request("gracePeriodSeconds must be an integer"))?,
        );
    }
    if q.get("dryRun").is_some_and(|v| v == "All") {
        opts.dry_run = true;
    }
    Ok(opts)
}

#[allow(clippy::too_many_arguments)] // the watch's resource, its version and its query
fn watch(
    st: &ApiState,
    res: &'static Resource,
    view: Option<&'static Retired>,
    ns: &str,
    labels: LabelSelector,
    fields: FieldSelector,
    q: &Query,
    as_table: Option<IncludeObject>,
) -> Result<Response> {
    let rv = match q.get("resourceVersion").map(String::as_str) {
        None | Some("") | Some("0") => None,
        Some(rv) => Some(
            rv.parse()
                .map_err(|_| ApiError::bad_request(format!("invalid resource version: {rv:?}")))?,
        ),
    };
    // Watch-list (`sendInitialEvents`, validated above): true sends the current state as
    // ADDED then a bookmark marking its end; false starts at the given or newest revision
    // without the synthetic events.
    let send_initial = q
        .get("sendInitialEvents")
        .map(|v| v.eq_ignore_ascii_case("true"));
    let from = match send_initial {
        Some(true) => None,
        Some(false) => Some(rv.unwrap_or_else(|| st.api.store().revision())),
        None => rv,
    };
    let initial_end = send_initial == Some(true);
    let bookmarks = flag(q, "allowWatchBookmarks");
    let timeout = q
        .get("timeoutSeconds")
        .and_then(|t| t.parse::<u64>().ok())
        .map(Duration::from_secs)
        // kube-apiserver picks 30-60 min when unset; a bound keeps abandoned watches finite.
        .unwrap_or(Duration::from_secs(1800));
    let deadline = tokio::time::Instant::now() + timeout;
    let clock = st.clock.clone();
    // What the events' objects and bookmarks are labelled with.
    let seen = view.map_or(res, |r| &r.resource);
    struct WatchState {
        watch: Option<super::ops::ApiWatch>,
        pending_error: Option<ApiError>,
        done: bool,
        /// The initial-events-end bookmark is still due (watch-list).
        initial_end: bool,
        /// Counts this watcher while the stream lives, and the events it is sent.
        watcher: super::metrics::WatcherGuard,
    }
    let watcher = st.metrics.watcher(seen);
    // A revision the store has not reached (its revision is authoritative, read from etcd on
    // that backend) was seen before a restore or a migration to another store: 410, so the
    // client relists instead of waiting, silently, for numbers that now mean other changes.
    let current = st.api.store().revision();
    let opened = match from {
        Some(f) if f > current => Err(ApiError::expired(format!(
            "too old resource version: {f} ({current}): newer than the store, which was restored or migrated"
        ))),
        _ => st.api.watch(res, ns, labels, fields, from),
    };
    let state = match opened {
        Ok(w) => WatchState {
            watch: Some(w),
            pending_error: None,
            done: false,
            initial_end,
            watcher,
        },
        // Too old: 200 with one ERROR event carrying the 410, so clients relist.
        Err(e) if e.code == 410 => WatchState {
            watch: None,
            pending_error: Some(e),
            done: false,
            initial_end: false,
            watcher,
        },
        Err(e) => return Err(e),
    };
    // Bookmarks every minute keep informers' resourceVersion fresh.
    let bookmark_every = Duration::from_secs(60);
    let stream = futures_util::stream::unfold(state, move |mut s| {
        let clock = clock.clone();
        async move {
            if s.done {
                return None;
            }
            if let Some(e) = s.pending_error.take() {
                s.done = true;
                let line = json!({"type": "ERROR", "object": e.status()});
                return Some((vec![line_bytes(&line)], s));
            }
            let w = s.watch.as_mut()?;
            if s.initial_end && !w.has_initial() {
                s.initial_end = false;
                let line = json!({"type": "BOOKMARK", "object": {
                    "kind": seen.kind, "apiVersion": seen.api_version(),
                    "metadata": {"resourceVersion": w.start_revision().to_string(),
                        "annotations": {"k8s.io/initial-events-end": "true"}}}});
                return Some((vec![line_bytes(&line)], s));
            }
            loop {
                let next = tokio::time::timeout_at(
                    deadline.min(tokio::time::Instant::now() + bookmark_every),
                    w.next(),
                )
                .await;
                match next {
                    Err(_) if tokio::time::Instant::now() >= deadline => return None,
                    Err(_) if bookmarks => {
                        let line = json!({"type": "BOOKMARK", "object": {
                            "kind": seen.kind, "apiVersion": seen.api_version(),
                            "metadata": {"resourceVersion": w.revision().to_string()}}});
                        return Some((vec![line_bytes(&line)], s));
                    }
                    Err(_) => continue,
                    Ok(None) => return None,
                    Ok(Some(Err(e))) => {
                        s.done = true;
                        let line = json!({"type": "ERROR", "object": e.status()});
                        return Some((vec![line_bytes(&line)], s));
                    }
                    Ok(Some(Ok((kind, obj)))) => {
                        s.watcher.event();
                        let Some(include) = as_table else {
                            // The stored JSON as it is: no parse, no re-serialisation, no
                            // copy (a stalled client holds the ring's own bytes), unless
                            // the watch is in a retired version.
                            return Some(match super::retired::outbound_bytes(view, obj) {
                                Ok(obj) => (event_line(kind.as_str(), obj), s),
                                Err(e) => {
                                    s.done = true;
                                    let line = json!({"type": "ERROR", "object": e.status()});
                                    (vec![line_bytes(&line)], s)
                                }
                            });
                        };
                        // A one-row Table, its row's object in the watch's version.
                        let one_row = serde_json::from_slice::<Value>(&obj)
                            .map_err(|e| {
                                ApiError::internal(format!("stored object unreadable: {e}"))
                            })
                            .and_then(|obj| {
                                let meta = json!({"resourceVersion": obj["metadata"]["resourceVersion"].clone()});
                                let mut t = table::table(res, vec![obj], meta, clock(), include);
                                table::map_objects(&mut t, |o| super::retired::outbound(view, o))?;
                                Ok(t)
                            });
                        let line = match one_row {
                            Ok(t) => json!({"type": kind.as_str(), "object": t}),
                            Err(e) => {
                                s.done = true;
                                json!({"type": "ERROR", "object": e.status()})
                            }
                        };
                        return Some((vec![line_bytes(&line)], s));
                    }
                }
            }
        }
    })
    .flat_map(|frames| {
        futures_util::stream::iter(frames.into_iter().map(Ok::<_, std::io::Error>))
    });
    let mut r = Response::new(Body::from_stream(stream));
    r.headers_mut().insert(
        header::CONTENT_TYPE,
        HeaderValue::from_static("application/json"),
    );
    Ok(r)
}

/// A list as kube-apiserver sends it, around the objects' stored JSON (nothing parsed).
fn list_response(res: &Resource, page: &super::ops::ListPage) -> Response {
    let head = json!({"kind": res.list_kind(), "apiVersion": res.api_version(),
        "metadata": page.metadata()});
    let mut b = serde_json::to_vec(&head).unwrap_or_default();
    b.pop(); // the closing brace
    b.extend_from_slice(b",\"items\":[");
    let total: usize = page.items.iter().map(|i| i.len() + 1).sum();
    b.reserve(total + 2);
    for (i, item) in page.items.iter().enumerate() {
        if i > 0 {
            b.push(b',');
        }
        b.extend_from_slice(item);
    }
    b.extend_from_slice(b"]}");
    ([(header::CONTENT_TYPE, "application/json")], b).into_response()
}

/// A list as a Table, its objects parsed a few hundred at a time.
fn list_table(
    res: &'static Resource,
    page: &super::ops::ListPage,
    now: chrono::DateTime<chrono::Utc>,
    include: IncludeObject,
) -> Result<Value> {
    let mut out: Option<Value> = None;
    for chunk in page.items.chunks(256) {
        let objs = super::ops::ListPage::parse(chunk)?;
        let t = table::table(res, objs, page.metadata(), now, include);
        match (&mut out, t) {
            (None, t) => out = Some(t),
            (Some(o), mut t) => {
                if let (Some(rows), Some(more)) = (
                    o.get_mut("rows").and_then(Value::as_array_mut),
                    t.get_mut("rows").and_then(Value::as_array_mut),
                ) {
                    rows.append(more);
                }
            }
        }
    }
    Ok(out.unwrap_or_else(|| table::table(res, Vec::new(), page.metadata(), now, include)))
}

/// `{"type":…,"object":…}` and a newline around an object's JSON, as three frames: the
/// object's bytes are sent as they are held, not copied.
fn event_line(kind: &str, object: Bytes) -> Vec<Bytes> {
    let head = format!("{{\"type\":\"{kind}\",\"object\":");
    vec![Bytes::from(head), object, Bytes::from_static(b"}\n")]
}

fn line_bytes(v: &Value) -> Bytes {
    let mut b = serde_json::to_vec(v).unwrap_or_default();
    b.push(b'\n');
    Bytes::from(b)
}

/// The container a pod subresource request means: the one named, the default-container
/// annotation's, or the only one.
pub(super) fn pod_container(pod: &Value, name: &str, requested: Option<&String>) -> Result<String> {
    let names = |list: &str| -> Vec<String> {
        pod.pointer(&format!("/spec/{list}"))
            .and_then(Value::as_array)
            .map(|cs| {
                cs.iter()
                    .filter_map(|c| c.get("name").and_then(Value::as_str).map(String::from))
                    .collect()
            })
            .unwrap_or_default()
    };
    let containers = names("containers");
    let init = names("initContainers");
    let container = match requested.filter(|c| !c.is_empty()) {
        Some(c) if containers.contains(c) || init.contains(c) => c.clone(),
        Some(c) => {
            return Err(ApiError::bad_request(format!(
                "container {c} is not valid for pod {name}"
            )));
        }
        None => {
            let default = pod
                .pointer("/metadata/annotations/kubectl.kubernetes.io~1default-container")
                .and_then(Value::as_str)
                .map(String::from);
            match (default, containers.len()) {
                (Some(d), _) => d,
                (None, 1) => containers[0].clone(),
                _ => {
                    let mut message = format!(
                        "a container name must be specified for pod {name}, choose one of: [{}]",
                        containers.join(" ")
                    );
                    if !init.is_empty() {
                        message.push_str(&format!(
                            " or one of the init containers: [{}]",
                            init.join(" ")
                        ));
                    }
                    return Err(ApiError::bad_request(message));
                }
            }
        }
    };
    Ok(container)
}

/// `pods/<name>/log`: relayed to the pod's node over its tunnel.
async fn pod_log(st: &ApiState, ns: &str, name: &str, q: &Query) -> Result<Response> {
    let res = resources::by_kind("v1", "Pod").expect("pods are served");
    let pod = st.api.get(res, ns, name)?;
    let container = pod_container(&pod, name, q.get("container"))?;
    let Some(node) = pod.pointer("/spec/nodeName").and_then(Value::as_str) else {
        return Err(ApiError::bad_request(format!(
            "pod {name} does not have a host assigned"
        )));
    };
    let proxy = st
        .nodes
        .get()
        .ok_or_else(|| ApiError::unavailable("no node tunnel server is running"))?;
    let mut forwarded: Vec<(String, String)> = q
        .iter()
        .filter(|(k, _)| {
            matches!(
                k.as_str(),
                "follow"
                    | "previous"
                    | "sinceSeconds"
                    | "sinceTime"
                    | "tailLines"
                    | "timestamps"
                    | "limitBytes"
            )
        })
        .map(|(k, v)| (k.clone(), v.clone()))
        .collect();
    let uid = kedge_core::meta::uid(&pod).to_string();
    forwarded.push(("uid".into(), uid.clone()));
    // A followed stream is framed by the agent, so it can be resumed when the node's tunnel
    // breaks (a byte limit would cut frames: those streams are relayed as they are).
    let resumable =
        q.get("follow").is_some_and(|v| v == "true" || v == "1") && !q.contains_key("limitBytes");
    if resumable {
        forwarded.push(("framed".into(), "true".into()));
    }
    let qs = url::form_urlencoded::Serializer::new(String::new())
        .extend_pairs(forwarded.iter().cloned())
        .finish();
    let uri = format!("/containerLogs/{ns}/{name}/{container}?{qs}");
    let req = http::Request::get(uri)
        .body(Body::empty())
        .map_err(|e| ApiError::internal(e.to_string()))?;
    let resp = proxy.request(node, req).await.map_err(|e| {
        ApiError::new(
            502,
            "ServiceUnavailable",
            format!("error talking to node {node:?}: {e}"),
        )
    })?;
    if !resp.status().is_success() {
        let code = resp.status().as_u16();
        let bytes = axum::body::to_bytes(resp.into_body(), 64 * 1024)
            .await
            .unwrap_or_default();
        let msg = String::from_utf8_lossy(&bytes).trim().to_string();
        return Err(ApiError::new(
            if code == 404 { 404 } else { 400 },
            if code == 404 {
                "NotFound"
            } else {
                "BadRequest"
            },
            msg,
        ));
    }
    let run = resp
        .headers()
        .get(LOG_RUN_HEADER)
        .and_then(|v| v.to_str().ok()?.parse::<u32>().ok());
    let body = match run {
        // An agent that frames (older ones answer plain text, relayed as it is).
        Some(run) if resumable => Body::from_stream(futures_util::stream::unfold(
            LogFollow {
                proxy: proxy.clone(),
                api: st.api.clone(),
                node: node.to_string(),
                path: format!("/containerLogs/{ns}/{name}/{container}"),
                pod: (ns.to_string(), name.to_string(), uid),
                forwarded,
                run,
                cursor: None,
                body: Some(resp.into_body().into_data_stream()),
                buf: bytes::BytesMut::new(),
            },
            |mut f| async move {
                let chunk = f.next().await?;
                Some((chunk, f))
            },
        )),
        _ => resp.into_body(),
    };
    let mut r = Response::new(body);
    r.headers_mut()
        .insert(header::CONTENT_TYPE, HeaderValue::from_static("text/plain"));
    Ok(r)
}

/// The header an agent names the container run of a log stream with.
const LOG_RUN_HEADER: &str = "x-kedge-log-run";
/// How often a followed log whose node went away asks the node again.
const LOG_RESUME_EVERY: Duration = Duration::from_secs(1);

/// A `kubectl logs -f` relayed from a node's framed stream: the records pass on as the client
/// asked for them; when the tunnel breaks (the stream ends without its end frame) the client
/// keeps its connection and the stream goes on, once the node is back, right after the last
/// record passed on — nothing lost, nothing twice. It ends when the container's run ends,
/// the pod goes away, or the client hangs up.
struct LogFollow {
    proxy: Arc<dyn NodeProxy>,
    api: Arc<Api>,
    node: String,
    path: String,
    /// Namespace, name and uid of the pod.
    pod: (String, String, String),
    /// The first request's query (tail/since apply only until the first record passed on).
    forwarded: Vec<(String, String)>,
    run: u32,
    cursor: Option<kedge_core::logframe::LogCursor>,
    body: Option<axum::body::BodyDataStream>,
    buf: bytes::BytesMut,
}

impl LogFollow {
    async fn next(&mut self) -> Option<std::result::Result<Bytes, std::io::Error>> {
        use kedge_core::logframe::Frame;
        loop {
            let Some(body) = self.body.as_mut() else {
                if !self.reopen().await {
                    return None;
                }
                continue;
            };
            match body.next().await {
                Some(Ok(data)) => {
                    self.buf.extend_from_slice(&data);
                    let frames = match Frame::split(&mut self.buf) {
                        Ok(f) => f,
                        Err(e) => return Some(Err(std::io::Error::other(e))),
                    };
                    let mut out = Vec::new();
                    for (cursor, record) in frames {
                        if Frame::is_end(&cursor, &record) {
                            // The run ended: pass on what came before, then stop.
                            self.body = None;
                            self.pod.2.clear();
                            break;
                        }
                        self.cursor = Some(cursor);
                        out.extend_from_slice(&record);
                    }
                    if !out.is_empty() {
                        return Some(Ok(Bytes::from(out)));
                    }
                    if self.pod.2.is_empty() {
                        return None;
                    }
                }
                // Cut short: the tunnel broke (or the node's agent restarted).
                Some(Err(_)) | None => {
                    tracing::debug!(node = %self.node, pod = %self.pod.1, "followed log broke off; resuming when the node is back");
                    self.body = None;
                    self.buf.clear();
                }
            }
        }
    }

    /// Asks the node again, after a pause, for as long as the pod is the same one; `false`
    /// when it is gone (or its run no longer exists) and the stream should end.
    async fn reopen(&mut self) -> bool {
        let (ns, name, uid) = &self.pod;
        if uid.is_empty() {
            return false;
        }
        tokio::time::sleep(LOG_RESUME_EVERY).await;
        let res = resources::by_kind("v1", "Pod").expect("pods are served");
        match self.api.get(res, ns, name) {
            Ok(p) if kedge_core::meta::uid(&p) == uid => {}
            _ => return false,
        }
        let mut query: Vec<(String, String)> = match self.cursor {
            // Right after the last record passed on, whatever tail/since said at first.
            Some(c) => self
                .forwarded
                .iter()
                .filter(|(k, _)| matches!(k.as_str(), "follow" | "timestamps" | "uid" | "framed"))
                .cloned()
                .chain([("cursor".to_string(), c.to_string())])
                .collect(),
            None => self.forwarded.clone(),
        };
        query.push(("run".into(), self.run.to_string()));
        let qs = url::form_urlencoded::Serializer::new(String::new())
            .extend_pairs(query)
            .finish();
        let Ok(req) = http::Request::get(format!("{}?{qs}", self.path)).body(Body::empty()) else {
            return false;
        };
        match self.proxy.request(&self.node, req).await {
            Ok(resp) if resp.status().is_success() => {
                self.body = Some(resp.into_body().into_data_stream());
                true
            }
            // The pod or its run is gone from the node: nothing more will come.
            Ok(resp) if resp.status() == StatusCode::NOT_FOUND => false,
            // Not back yet (or refused for now): try again.
            _ => true,
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn resolves_urls() {
        let t = resolve(&["api", "v1", "namespaces", "default", "pods", "p", "log"]).unwrap();
        assert_eq!((t.res.plural, t.namespace.as_str()), ("pods", "default"));
        assert_eq!(t.sub.as_deref(), Some("log"));
        let t = resolve(&["api", "v1", "namespaces", "default"]).unwrap();
        assert_eq!(
            (t.res.plural, t.name.as_deref()),
            ("namespaces", Some("default"))
        );
        let t = resolve(&["api", "v1", "namespaces", "x", "status"]).unwrap();
        assert_eq!(t.sub.as_deref(), Some("status"));
        let t = resolve(&["apis", "apps", "v1", "deployments"]).unwrap();
        assert!(t.namespace.is_empty() && t.name.is_none());
        let t = resolve(&["api", "v1", "namespaces", "d", "pods", "p", "exec"]).unwrap();
        assert_eq!(t.sub.as_deref(), Some("exec"));
        assert!(resolve(&["api", "v1", "namespaces", "d", "pods", "p", "proxy"]).is_none());
        assert!(resolve(&["apis", "apps", "v2", "deployments"]).is_none());
        // A retired version resolves to the stored resource, and knows it is retired.
        let t = resolve(&[
            "apis",
            "batch",
            "v1beta1",
            "namespaces",
            "d",
            "cronjobs",
            "c",
        ])
        .unwrap();
        assert_eq!((t.res.version, t.res.kind), ("v1", "CronJob"));
        assert_eq!(t.retired.unwrap().resource.version, "v1beta1");
        let t = resolve(&[
            "apis",
            "batch",
            "v1beta1",
            "namespaces",
            "d",
            "cronjobs",
            "c",
            "status",
        ]);
        assert_eq!(t.unwrap().sub.as_deref(), Some("status"));
        assert!(resolve(&["apis", "batch", "v1beta1", "namespaces", "d", "jobs"]).is_none());
        assert!(
            resolve(&["apis", "batch", "v1", "cronjobs"])
                .unwrap()
                .retired
                .is_none()
        );
    }

    /// A server over a fresh store, with the `default` namespace.
    fn state(dir: &std::path::Path) -> Arc<ApiState> {
        let store = kedge_store::redb::RedbStore::open(
            &dir.join("s"),
            kedge_store::redb::Options::default(),
        )
        .unwrap();
        let api = Arc::new(Api::new(Arc::new(store), super::super::ops::system_clock()));
        super::super::rbac::ensure_bootstrap(&api).unwrap();
        let ns = resources::by_kind("v1", "Namespace").unwrap();
        api.create(
            ns,
            "",
            json!({"metadata": {"name": "default"}}),
            &WriteOptions::default(),
        )
        .unwrap();
        let mut registry = prometheus_client::registry::Registry::default();
        let metrics = crate::metrics::ApiMetrics::new(&mut registry);
        Arc::new(ApiState {
            rbac: Arc::new(super::super::rbac::Authorizer::new(api.clone())),
            api,
            nodes: OnceLock::new(),
            clock: super::super::ops::system_clock(),
            ready: true.into(),
            tokens: Arc::new(crate::tokens::Signer::generate().unwrap()),
            relays: Default::default(),
            metrics,
            registry: Arc::new(registry),
        })
    }

    struct Answer {
        code: u16,
        warnings: Vec<String>,
        body: Value,
    }

    /// One request as `user` (in `groups`), its body JSON (a watch's events as an array).
    async fn call(
        st: &Arc<ApiState>,
        who: (&str, &[&str]),
        method: &str,
        uri: &str,
        content_type: &str,
        body: Value,
    ) -> Answer {
        let mut req = http::Request::builder()
            .method(method)
            .uri(uri)
            .header(header::CONTENT_TYPE, content_type)
            .body(Body::from(if body.is_null() {
                Vec::new()
            } else {
                serde_json::to_vec(&body).unwrap()
            }))
            .unwrap();
        let mut groups: Vec<String> = who.1.iter().map(|g| g.to_string()).collect();
        groups.push("system:authenticated".into());
        req.extensions_mut().insert(Identity {
            user: who.0.into(),
            groups,
        });
        let r = handle(State(st.clone()), req).await;
        let warnings = r
            .headers()
            .get_all(header::WARNING)
            .iter()
            .map(|v| v.to_str().unwrap().to_string())
            .collect();
        let code = r.status().as_u16();
        let bytes = axum::body::to_bytes(r.into_body(), usize::MAX)
            .await
            .unwrap();
        let body = if uri.contains("watch=true") {
            let lines: Vec<Value> = String::from_utf8_lossy(&bytes)
                .lines()
                .map(|l| serde_json::from_str(l).unwrap())
                .collect();
            json!(lines)
        } else {
            serde_json::from_slice(&bytes).unwrap()
        };
        Answer {
            code,
            warnings,
            body,
        }
    }

    const ADMIN: (&str, &[&str]) = ("admin", &["system:masters"]);

    /// `GET /metrics` as `who`: its status and text.
    async fn scrape(st: &Arc<ApiState>, who: (&str, &[&str])) -> (u16, String) {
        let (code, bytes) = get_as(st, who, "/metrics").await;
        (code, String::from_utf8(bytes.to_vec()).unwrap())
    }

    /// `GET uri` as `who`: the status and the body's bytes.
    async fn get_as(st: &Arc<ApiState>, who: (&str, &[&str]), uri: &str) -> (u16, Bytes) {
        let mut req = http::Request::builder()
            .uri(uri)
            .body(Body::empty())
            .unwrap();
        let mut groups: Vec<String> = who.1.iter().map(|g| g.to_string()).collect();
        groups.push("system:authenticated".into());
        req.extensions_mut().insert(Identity {
            user: who.0.into(),
            groups,
        });
        let r = handle(State(st.clone()), req).await;
        let code = r.status().as_u16();
        let bytes = axum::body::to_bytes(r.into_body(), usize::MAX)
            .await
            .unwrap();
        (code, bytes)
    }

    /// Every line of the exposition is a comment the format knows or one sample:
    /// `name{label="value",...} number`.
    fn assert_exposition(text: &str) {
        assert!(text.ends_with("# EOF\n"), "no EOF marker");
        for line in text.lines() {
            if let Some(c) = line.strip_prefix("# ") {
                assert!(
                    ["HELP ", "TYPE ", "UNIT ", "EOF"]
                        .iter()
                        .any(|p| c.starts_with(p)),
                    "{line}"
                );
                continue;
            }
            let (series, value) = line.rsplit_once(' ').unwrap_or_else(|| panic!("{line}"));
            assert!(
                value.parse::<f64>().is_ok() || ["+Inf", "-Inf", "NaN"].contains(&value),
                "{line}"
            );
            let (name, labels) = match series.split_once('{') {
                Some((n, l)) => (n, l.strip_suffix('}').unwrap_or_else(|| panic!("{line}"))),
                None => (series, ""),
            };
            assert!(
                !name.is_empty()
                    && name
                        .chars()
                        .all(|c| c.is_ascii_alphanumeric() || c == '_' || c == ':'),
                "{line}"
            );
            // Our label values hold no quotes or commas, so a plain split is exact.
            for pair in labels.split(',').filter(|p| !p.is_empty()) {
                let (k, v) = pair.split_once('=').unwrap_or_else(|| panic!("{line}"));
                assert!(
                    k.chars().all(|c| c.is_ascii_alphanumeric() || c == '_'),
                    "{line}"
                );
                assert!(
                    v.len() >= 2 && v.starts_with('"') && v.ends_with('"'),
                    "{line}"
                );
            }
        }
    }

    /// The value of the one sample whose series is exactly `series`.
    fn sample(text: &str, series: &str) -> Option<f64> {
        text.lines()
            .find_map(|l| l.strip_prefix(series)?.strip_prefix(' ')?.parse().ok())
    }

    /// Requests count under kube-apiserver's labels (LIST, GET, POST with their scopes, a
    /// watch as WATCH, an unknown path under resource=""), watchers are counted while they
    /// stream, and the whole exposition parses.
    #[tokio::test]
    async fn metrics_count_requests_with_kube_labels() {
        let dir = tempfile::tempdir().unwrap();
        let st = state(dir.path());
        let cm = json!({"metadata": {"name": "a"}, "data": {"k": "v"}});
        let path = "/api/v1/namespaces/default/configmaps";
        assert_eq!(call(&st, ADMIN, "POST", path, JSON, cm).await.code, 201);
        for _ in 0..2 {
            assert_eq!(
                call(&st, ADMIN, "GET", path, JSON, Value::Null).await.code,
                200
            );
        }
        let one = format!("{path}/a");
        assert_eq!(
            call(&st, ADMIN, "GET", &one, JSON, Value::Null).await.code,
            200
        );
        let missing = format!("{path}/nope");
        assert_eq!(
            call(&st, ADMIN, "GET", &missing, JSON, Value::Null)
                .await
                .code,
            404
        );
        let unknown = "/apis/nothing.example/v1/things";
        assert_eq!(
            call(&st, ADMIN, "GET", unknown, JSON, Value::Null)
                .await
                .code,
            404
        );
        let watch = format!("{path}?watch=true&timeoutSeconds=1");
        let w = call(&st, ADMIN, "GET", &watch, JSON, Value::Null).await;
        assert_eq!(
            w.body.as_array().unwrap().len(),
            1,
            "the one configmap as ADDED"
        );

        let (code, text) = scrape(&st, ADMIN).await;
        assert_eq!(code, 200);
        assert_exposition(&text);
        let total = |verb: &str, scope: &str, code: u16| {
            sample(
                &text,
                &format!(
                    "apiserver_request_total{{verb=\"{verb}\",group=\"\",version=\"v1\",resource=\"configmaps\",subresource=\"\",scope=\"{scope}\",component=\"apiserver\",code=\"{code}\"}}"
                ),
            )
        };
        assert_eq!(total("POST", "resource", 201), Some(1.0), "{text}");
        assert_eq!(total("LIST", "namespace", 200), Some(2.0));
        assert_eq!(total("GET", "resource", 200), Some(1.0));
        assert_eq!(total("GET", "resource", 404), Some(1.0));
        assert_eq!(total("WATCH", "namespace", 200), Some(1.0));
        let unknown_path = "apiserver_request_total{verb=\"GET\",group=\"\",version=\"\",resource=\"\",subresource=\"\",scope=\"\",component=\"apiserver\",code=\"404\"}";
        assert_eq!(sample(&text, unknown_path), Some(1.0));
        assert!(
            !text.contains("nothing.example"),
            "URLs never become labels"
        );
        let lists = "apiserver_request_duration_seconds_count{verb=\"LIST\",group=\"\",version=\"v1\",resource=\"configmaps\",subresource=\"\",scope=\"namespace\",component=\"apiserver\"}";
        assert_eq!(sample(&text, lists), Some(2.0));
        let kind = "{group=\"\",version=\"v1\",kind=\"ConfigMap\"}";
        assert_eq!(
            sample(&text, &format!("apiserver_watch_events_total{kind}")),
            Some(1.0)
        );
        // The watch ended (its timeout) and its stream was dropped: no watcher left.
        assert_eq!(
            sample(&text, &format!("apiserver_registered_watchers{kind}")),
            Some(0.0)
        );
    }

    /// `/metrics` is a non-resource URL under RBAC, as in kube-apiserver: `system:monitoring`
    /// (bound by the bootstrap policy) and cluster admins may read it, others get 403.
    #[tokio::test]
    async fn metrics_need_the_monitoring_role() {
        let dir = tempfile::tempdir().unwrap();
        let st = state(dir.path());
        assert_eq!(scrape(&st, ("jane", &[])).await.0, 403);
        let (code, text) = scrape(&st, ("prometheus", &["system:monitoring"])).await;
        assert_eq!(code, 200);
        assert!(text.contains("# TYPE apiserver_request counter"), "{text}");
        assert_eq!(scrape(&st, ADMIN).await.0, 200);
    }
    /// A watch from a revision the store has not reached (seen before a restore or a
    /// migration) is a 410 at once, not a wait for numbers that will mean other changes.
    #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
    async fn a_watch_from_beyond_the_store_is_gone() {
        let dir = tempfile::tempdir().unwrap();
        let st = state(dir.path());
        let cms = "/api/v1/namespaces/default/configmaps";
        let cm = json!({"metadata": {"name": "a"}});
        assert_eq!(call(&st, ADMIN, "POST", cms, JSON, cm).await.code, 201);
        let now = st.api.store().revision();
        let beyond = now + 1000;
        let r = call(
            &st,
            ADMIN,
            "GET",
            &format!("{cms}?watch=true&resourceVersion={beyond}&timeoutSeconds=5"),
            JSON,
            Value::Null,
        )
        .await;
        assert_eq!(r.code, 200);
        assert_eq!(r.body[0]["type"], "ERROR", "{}", r.body);
        assert_eq!(r.body[0]["object"]["code"], 410, "{}", r.body);
        // From the current revision: an ordinary watch (ends at its timeout, no error).
        let ok = call(
            &st,
            ADMIN,
            "GET",
            &format!("{cms}?watch=true&resourceVersion={now}&timeoutSeconds=1"),
            JSON,
            Value::Null,
        )
        .await;
        assert_eq!(ok.code, 200);
        assert!(ok.body.as_array().unwrap().is_empty(), "{}", ok.body);
    }

    /// `GET /kedge/snapshot` (`kedge snapshot save`) holds every Secret: cluster admins get
    /// the store's copy (a redb file here), nodes and users without a grant get 403.
    #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
    async fn a_store_snapshot_is_for_cluster_admins_only() {
        let dir = tempfile::tempdir().unwrap();
        let st = state(dir.path());
        let get = |who| get_as(&st, who, "/kedge/snapshot");
        assert_eq!(get(("jane", &[])).await.0, 403);
        assert_eq!(get(("system:node:n1", &["system:nodes"])).await.0, 403);
        let (code, bytes) = get(ADMIN).await;
        assert_eq!(code, 200);
        assert!(bytes.starts_with(b"redb"), "{} bytes", bytes.len());
    }

    const JSON: &str = "application/json";
    const BETA: &str = "/apis/batch/v1beta1/namespaces/default/cronjobs";
    const V1: &str = "/apis/batch/v1/namespaces/default/cronjobs";
    const DEPRECATED: &str = "299 - \"batch/v1beta1 CronJob is deprecated in v1.21+, unavailable in v1.25+; use batch/v1 CronJob\"";

    /// `includeObject` on Tables (what `kubectl get --sort-by` needs): list, get and watch
    /// rows embed nothing, the PartialObjectMetadata (the default) or the whole object in
    /// the URL's version; an unknown value is a 400 before anything is read or streamed,
    /// and is ignored when no Table is asked for.
    #[tokio::test]
    async fn tables_honour_include_object() {
        const TABLE: &str = "application/json;as=Table;v=v1;g=meta.k8s.io,application/json";
        let dir = tempfile::tempdir().unwrap();
        let st = state(dir.path());
        let cms = "/api/v1/namespaces/default/configmaps";
        let cm = json!({"metadata": {"name": "a"}, "data": {"k": "2"}});
        assert_eq!(call(&st, ADMIN, "POST", cms, JSON, cm).await.code, 201);
        let cj = json!({"apiVersion": "batch/v1beta1", "kind": "CronJob",
            "metadata": {"name": "c"}, "spec": {"schedule": "* * * * *",
            "jobTemplate": {"spec": {"template": {"spec": {"restartPolicy": "Never",
            "containers": [{"name": "c", "image": "busybox"}]}}}}}});
        assert_eq!(call(&st, ADMIN, "POST", BETA, JSON, cj).await.code, 201);
        // One Table read as admin: its code and body (a watch's events as an array).
        let table = |uri: String| {
            let st = st.clone();
            async move {
                let mut req = http::Request::builder()
                    .uri(&uri)
                    .header(header::ACCEPT, TABLE)
                    .body(Body::empty())
                    .unwrap();
                req.extensions_mut().insert(Identity {
                    user: "admin".into(),
                    groups: vec!["system:masters".into(), "system:authenticated".into()],
                });
                let r = handle(State(st), req).await;
                let code = r.status().as_u16();
                let bytes = axum::body::to_bytes(r.into_body(), usize::MAX)
                    .await
                    .unwrap();
                let mut values: Vec<Value> = serde_json::Deserializer::from_slice(&bytes)
                    .into_iter()
                    .map(Result::unwrap)
                    .collect();
                let body = if uri.contains("watch=true") && code == 200 {
                    json!(values)
                } else {
                    values.remove(0)
                };
                (code, body)
            }
        };
        let row_object = |t: &Value| t["rows"][0].get("object").cloned();
        let read = |uri: String| {
            let table = &table;
            async move {
                let (code, t) = table(uri.clone()).await;
                assert_eq!(code, 200, "{uri}: {t}");
                assert_eq!(t["kind"], "Table", "{uri}: {t}");
                row_object(&t)
            }
        };
        for uri in [format!("{cms}?"), format!("{cms}/a?"), format!("{BETA}?")] {
            assert_eq!(read(format!("{uri}includeObject=None")).await, None);
            for default in ["", "includeObject=Metadata"] {
                let o = read(format!("{uri}{default}")).await.unwrap();
                assert_eq!(
                    (&o["kind"], &o["apiVersion"]),
                    (&json!("PartialObjectMetadata"), &json!("meta.k8s.io/v1")),
                    "{uri}{default}"
                );
                assert!(o.get("data").is_none() && o.get("spec").is_none());
            }
        }
        let o = read(format!("{cms}?includeObject=Object")).await.unwrap();
        assert_eq!(
            (&o["kind"], &o["data"]["k"]),
            (&json!("ConfigMap"), &json!("2"))
        );
        let o = read(format!("{cms}/a?includeObject=Object")).await.unwrap();
        assert_eq!(
            (&o["apiVersion"], &o["data"]["k"]),
            (&json!("v1"), &json!("2"))
        );
        for uri in [BETA.to_string(), format!("{BETA}/c")] {
            let o = read(format!("{uri}?includeObject=Object")).await.unwrap();
            assert_eq!(
                (&o["kind"], &o["apiVersion"]),
                (&json!("CronJob"), &json!("batch/v1beta1")),
                "{uri}"
            );
        }
        // Watches: each event a one-row Table, honouring includeObject too.
        for (uri, want) in [
            (
                format!("{cms}?watch=true&timeoutSeconds=1"),
                "PartialObjectMetadata",
            ),
            (
                format!("{cms}?watch=true&timeoutSeconds=1&includeObject=Object"),
                "ConfigMap",
            ),
            (
                format!("{BETA}?watch=true&timeoutSeconds=1&includeObject=Object"),
                "CronJob",
            ),
        ] {
            let (code, events) = table(uri.clone()).await;
            assert_eq!(code, 200, "{uri}");
            let e = &events[0];
            assert_eq!(
                (&e["type"], &e["object"]["kind"]),
                (&json!("ADDED"), &json!("Table"))
            );
            assert_eq!(e["object"]["rows"].as_array().unwrap().len(), 1, "{e}");
            assert_eq!(row_object(&e["object"]).unwrap()["kind"], want, "{uri}");
        }
        let (_, events) = table(format!(
            "{BETA}?watch=true&timeoutSeconds=1&includeObject=Object"
        ))
        .await;
        assert_eq!(
            row_object(&events[0]["object"]).unwrap()["apiVersion"],
            "batch/v1beta1"
        );
        let (_, events) = table(format!(
            "{cms}?watch=true&timeoutSeconds=1&includeObject=None"
        ))
        .await;
        assert_eq!(row_object(&events[0]["object"]), None);
        // Anything else: 400, worded as kube-apiserver words it; no Table, no check.
        for uri in [
            format!("{cms}?"),
            format!("{cms}/a?"),
            format!("{cms}?watch=true&"),
        ] {
            let (code, s) = table(format!("{uri}includeObject=Everything")).await;
            assert_eq!(
                (code, &s["reason"]),
                (400, &json!("BadRequest")),
                "{uri}: {s}"
            );
            assert_eq!(
                s["message"],
                "Unable to convert to Table as requested: includeObject: Invalid value: \
                 \"Everything\": must be 'Metadata', 'Object', 'None', or empty"
            );
        }
        let plain = call(
            &st,
            ADMIN,
            "GET",
            &format!("{cms}?includeObject=Everything"),
            JSON,
            Value::Null,
        )
        .await;
        assert_eq!(
            (plain.code, &plain.body["kind"]),
            (200, &json!("ConfigMapList"))
        );
    }

    /// batch/v1beta1 CronJob over HTTP: every verb, converted to and from the one stored
    /// version, each answer (errors too) with the deprecation warning, none on batch/v1.
    #[tokio::test]
    async fn retired_cronjob_version_is_served_converted_and_warned() {
        let dir = tempfile::tempdir().unwrap();
        let st = state(dir.path());
        let manifest = json!({"apiVersion": "batch/v1beta1", "kind": "CronJob",
            "metadata": {"name": "hello"}, "spec": {"schedule": "*/1 * * * *",
            "jobTemplate": {"spec": {"template": {"spec": {"restartPolicy": "OnFailure",
            "containers": [{"name": "hello", "image": "busybox", "args": ["date"]}]}}}}}});
        let a = call(&st, ADMIN, "POST", BETA, JSON, manifest).await;
        assert_eq!(a.code, 201, "{}", a.body);
        assert_eq!(a.warnings, [DEPRECATED]);
        assert_eq!(a.body["apiVersion"], "batch/v1beta1");
        assert_eq!(a.body["spec"]["successfulJobsHistoryLimit"], 3, "defaulted");
        // Stored once, visible through both versions.
        let a = call(&st, ADMIN, "GET", &format!("{V1}/hello"), JSON, Value::Null).await;
        assert_eq!(
            (a.code, a.body["apiVersion"].as_str()),
            (200, Some("batch/v1"))
        );
        assert!(a.warnings.is_empty());
        let a = call(
            &st,
            ADMIN,
            "GET",
            &format!("{BETA}/hello/status"),
            JSON,
            Value::Null,
        )
        .await;
        assert_eq!(a.body["apiVersion"], "batch/v1beta1");
        let a = call(&st, ADMIN, "GET", BETA, JSON, Value::Null).await;
        assert_eq!(
            (a.body["kind"].as_str(), a.body["apiVersion"].as_str()),
            (Some("CronJobList"), Some("batch/v1beta1"))
        );
        assert_eq!(a.body["items"][0]["apiVersion"], "batch/v1beta1");
        assert_eq!(a.warnings, [DEPRECATED]);
        // Patches apply to the object as the retired version shows it.
        let patch = json!([{"op": "test", "path": "/apiVersion", "value": "batch/v1beta1"},
            {"op": "replace", "path": "/spec/suspend", "value": true}]);
        let uri = format!("{BETA}/hello");
        let a = call(
            &st,
            ADMIN,
            "PATCH",
            &uri,
            "application/json-patch+json",
            patch,
        )
        .await;
        assert_eq!(a.code, 200, "{}", a.body);
        assert_eq!(a.body["spec"]["suspend"], true);
        for ct in [
            "application/merge-patch+json",
            "application/strategic-merge-patch+json",
        ] {
            let p = json!({"metadata": {"labels": {"via": "beta"}}});
            let a = call(&st, ADMIN, "PATCH", &uri, ct, p).await;
            assert_eq!(
                (a.code, a.body["apiVersion"].as_str()),
                (200, Some("batch/v1beta1"))
            );
        }
        let config = json!({"apiVersion": "batch/v1beta1", "kind": "CronJob",
            "metadata": {"name": "hello"}, "spec": {"schedule": "@hourly"}});
        let a = call(
            &st,
            ADMIN,
            "PATCH",
            &format!("{uri}?fieldManager=ssa&force=true"),
            "application/apply-patch+yaml",
            config,
        )
        .await;
        assert_eq!(a.code, 200, "{}", a.body);
        assert_eq!(
            (
                a.body["apiVersion"].as_str(),
                a.body["spec"]["schedule"].as_str()
            ),
            (Some("batch/v1beta1"), Some("@hourly"))
        );
        // A PUT of the v1beta1 object; a body in another version is refused, with the warning.
        let mut obj = a.body.clone();
        obj["spec"]["suspend"] = json!(false);
        let a = call(&st, ADMIN, "PUT", &uri, JSON, obj.clone()).await;
        assert_eq!(a.code, 200, "{}", a.body);
        obj["apiVersion"] = json!("batch/v1");
        let a = call(&st, ADMIN, "PUT", &uri, JSON, obj).await;
        assert_eq!((a.code, a.warnings.len()), (400, 1));
        let a = call(&st, ADMIN, "GET", &format!("{V1}/hello"), JSON, Value::Null).await;
        assert_eq!(
            (
                a.body["spec"]["schedule"].as_str(),
                a.body["metadata"]["labels"]["via"].as_str()
            ),
            (Some("@hourly"), Some("beta"))
        );
        // Watch events in the requested version.
        let a = call(
            &st,
            ADMIN,
            "GET",
            &format!("{BETA}?watch=true&timeoutSeconds=1"),
            JSON,
            Value::Null,
        )
        .await;
        assert_eq!(a.body[0]["type"], "ADDED");
        assert_eq!(a.body[0]["object"]["apiVersion"], "batch/v1beta1");
        assert_eq!(a.warnings, [DEPRECATED]);
        // RBAC names group and resource, not version: a rule on batch cronjobs covers both.
        let role = json!({"metadata": {"name": "cj-reader", "namespace": "default"},
            "rules": [{"apiGroups": ["batch"], "resources": ["cronjobs"], "verbs": ["get"]}]});
        let binding = json!({"metadata": {"name": "cj-reader", "namespace": "default"},
            "roleRef": {"apiGroup": "rbac.authorization.k8s.io", "kind": "Role", "name": "cj-reader"},
            "subjects": [{"kind": "User", "name": "alice"}]});
        let roles = "/apis/rbac.authorization.k8s.io/v1/namespaces/default";
        assert_eq!(
            call(&st, ADMIN, "POST", &format!("{roles}/roles"), JSON, role)
                .await
                .code,
            201
        );
        let a = call(
            &st,
            ADMIN,
            "POST",
            &format!("{roles}/rolebindings"),
            JSON,
            binding,
        )
        .await;
        assert_eq!(a.code, 201);
        let alice = ("alice", &[][..]);
        assert_eq!(
            call(&st, alice, "GET", &uri, JSON, Value::Null).await.code,
            200
        );
        assert_eq!(
            call(&st, alice, "GET", &format!("{V1}/hello"), JSON, Value::Null)
                .await
                .code,
            200
        );
        assert_eq!(
            call(&st, alice, "DELETE", &uri, JSON, Value::Null)
                .await
                .code,
            403
        );
        // Delete through the retired version; a miss is a 404 with the warning.
        let a = call(&st, ADMIN, "DELETE", &uri, JSON, Value::Null).await;
        assert_eq!(a.code, 200, "{}", a.body);
        let a = call(&st, ADMIN, "GET", &uri, JSON, Value::Null).await;
        assert_eq!(
            (a.code, a.warnings.as_slice()),
            (404, &[DEPRECATED.to_string()][..])
        );
        assert_eq!(a.body["message"], "cronjobs.batch \"hello\" not found");
    }

    /// `pods/eviction` over HTTP: refused with 429 while the budget is not processed or has
    /// nothing to spare, allowed (201) once it has, spending it and deleting the pod
    /// gracefully; `create pods/eviction` is what RBAC checks (the `edit` role has it); two
    /// budgets over one pod are a 500.
    #[tokio::test]
    async fn eviction_spends_the_budget_or_is_refused() {
        let dir = tempfile::tempdir().unwrap();
        let st = state(dir.path());
        let pods = "/api/v1/namespaces/default/pods";
        let pdbs = "/apis/policy/v1/namespaces/default/poddisruptionbudgets";
        for name in ["web-1", "web-2"] {
            let pod = json!({"metadata": {"name": name, "labels": {"app": "web"}},
                "spec": {"nodeName": "n1", "containers": [{"name": "c", "image": "busybox"}]}});
            let a = call(&st, ADMIN, "POST", pods, JSON, pod).await;
            assert_eq!(a.code, 201, "{}", a.body);
            let mut running = a.body;
            running["status"] = json!({"phase": "Running",
                "conditions": [{"type": "Ready", "status": "True"}]});
            let uri = format!("{pods}/{name}/status");
            assert_eq!(call(&st, ADMIN, "PUT", &uri, JSON, running).await.code, 200);
        }
        let pdb = json!({"metadata": {"name": "web"},
            "spec": {"minAvailable": 1, "selector": {"matchLabels": {"app": "web"}}}});
        let a = call(&st, ADMIN, "POST", pdbs, JSON, pdb).await;
        assert_eq!(a.code, 201, "{}", a.body);
        assert_eq!(a.body["status"]["disruptionsAllowed"], 0);
        let evict = |name: &str| {
            json!({"apiVersion": "policy/v1", "kind": "Eviction",
                "metadata": {"name": name, "namespace": "default"}})
        };
        let uri = format!("{pods}/web-1/eviction");

        // Not processed by the controller yet.
        let a = call(&st, ADMIN, "POST", &uri, JSON, evict("web-1")).await;
        assert_eq!(
            (a.code, &a.body["reason"]),
            (429, &json!("TooManyRequests"))
        );
        assert_eq!(a.body["details"]["retryAfterSeconds"], 10);

        let set_status = |allowed: i64| {
            let st = st.clone();
            async move {
                let a = call(&st, ADMIN, "GET", &format!("{pdbs}/web"), JSON, Value::Null).await;
                let mut b = a.body;
                b["status"] = json!({"observedGeneration": 1, "expectedPods": 2,
                    "desiredHealthy": 1, "currentHealthy": 1 + allowed,
                    "disruptionsAllowed": allowed});
                let uri = format!("{pdbs}/web/status");
                assert_eq!(call(&st, ADMIN, "PUT", &uri, JSON, b).await.code, 200);
            }
        };
        set_status(0).await;
        let a = call(&st, ADMIN, "POST", &uri, JSON, evict("web-1")).await;
        assert_eq!(a.code, 429, "{}", a.body);
        assert_eq!(
            a.body["message"],
            "Cannot evict pod as it would violate the pod's disruption budget."
        );
        assert_eq!(
            a.body["details"]["causes"][0],
            json!({"reason": "DisruptionBudget",
                "message": "The disruption budget web needs 1 healthy pods and has 1 currently"})
        );

        // RBAC: `create` on `pods/eviction`, which `edit` grants.
        set_status(1).await;
        let alice = ("alice", &[][..]);
        let a = call(&st, alice, "POST", &uri, JSON, evict("web-1")).await;
        assert_eq!(a.code, 403, "{}", a.body);
        let binding = json!({"metadata": {"name": "alice-edit", "namespace": "default"},
            "roleRef": {"apiGroup": "rbac.authorization.k8s.io", "kind": "ClusterRole", "name": "edit"},
            "subjects": [{"kind": "User", "name": "alice"}]});
        let roles = "/apis/rbac.authorization.k8s.io/v1/namespaces/default/rolebindings";
        assert_eq!(
            call(&st, ADMIN, "POST", roles, JSON, binding).await.code,
            201
        );
        let a = call(&st, alice, "POST", &uri, JSON, evict("web-1")).await;
        assert_eq!(
            (a.code, &a.body["status"]),
            (201, &json!("Success")),
            "{}",
            a.body
        );
        let pod = call(
            &st,
            ADMIN,
            "GET",
            &format!("{pods}/web-1"),
            JSON,
            Value::Null,
        )
        .await;
        assert!(
            pod.body["metadata"]["deletionTimestamp"].is_string(),
            "graceful"
        );
        let b = call(&st, ADMIN, "GET", &format!("{pdbs}/web"), JSON, Value::Null).await;
        assert_eq!(b.body["status"]["disruptionsAllowed"], 0);
        assert!(b.body["status"]["disruptedPods"]["web-1"].is_string());
        assert_eq!(
            b.body["status"]["conditions"][0]["reason"],
            "InsufficientPods"
        );
        // Spent: the next one waits.
        let uri2 = format!("{pods}/web-2/eviction");
        assert_eq!(
            call(&st, ADMIN, "POST", &uri2, JSON, evict("web-2"))
                .await
                .code,
            429
        );
        // The terminating pod goes again without consulting the budget.
        assert_eq!(
            call(&st, ADMIN, "POST", &uri, JSON, evict("web-1"))
                .await
                .code,
            201
        );
        // The body must name the pod of the URL.
        assert_eq!(
            call(&st, ADMIN, "POST", &uri2, JSON, evict("web-1"))
                .await
                .code,
            400
        );

        // Two budgets over one pod: not supported.
        let all =
            json!({"metadata": {"name": "all"}, "spec": {"maxUnavailable": 1, "selector": {}}});
        assert_eq!(call(&st, ADMIN, "POST", pdbs, JSON, all).await.code, 201);
        let a = call(&st, ADMIN, "POST", &uri2, JSON, evict("web-2")).await;
        assert_eq!(a.code, 500);
        assert_eq!(
            a.body["message"],
            "This pod has more than one PodDisruptionBudget, which the eviction subresource does not support."
        );
        // Discovery tells kubectl drain to evict with policy/v1.
        let a = call(&st, ADMIN, "GET", "/api/v1", JSON, Value::Null).await;
        let eviction = a.body["resources"]
            .as_array()
            .unwrap()
            .iter()
            .find(|r| r["name"] == "pods/eviction")
            .cloned()
            .unwrap();
        assert_eq!(
            (&eviction["group"], &eviction["version"], &eviction["kind"]),
            (&json!("policy"), &json!("v1"), &json!("Eviction"))
        );
    }

    /// Records what reaches a node and answers with a redirect, so the test sees the request
    /// the server forwards and the answer it passes back.
    struct Recorder(std::sync::Mutex<Vec<(String, http::request::Parts, Bytes)>>);

    impl NodeProxy for Recorder {
        fn request(
            &self,
            node: &str,
            req: http::Request<Body>,
        ) -> BoxFuture<'_, std::result::Result<http::Response<Body>, String>> {
            let node = node.to_string();
            Box::pin(async move {
                let (parts, body) = req.into_parts();
                let body = axum::body::to_bytes(body, 1 << 20).await.unwrap();
                self.0.lock().unwrap().push((node, parts, body));
                Ok(http::Response::builder()
                    .status(302)
                    .header(header::LOCATION, "/login")
                    .header(header::CONNECTION, "close")
                    .body(Body::from("moved"))
                    .unwrap())
            })
        }
    }

    /// The API server proxy in process: pods, services (by port name and number, a ready
    /// endpoint only) and nodes reach the right node and path with the query, body and
    /// headers (credentials and hop-by-hop ones dropped), the answer comes back untouched;
    /// no endpoints is a 503; RBAC decides on `<resource>/proxy`.
    #[tokio::test]
    async fn proxy_requests_reach_the_right_node_and_path() {
        let dir = tempfile::tempdir().unwrap();
        let st = state(dir.path());
        let rec = Arc::new(Recorder(Default::default()));
        let _ = st.nodes.set(rec.clone());
        let create = |uri: &'static str, obj: Value| {
            let st = st.clone();
            async move {
                let a = call(&st, ADMIN, "POST", uri, JSON, obj).await;
                assert_eq!(a.code, 201, "{}", a.body);
            }
        };
        create("/api/v1/nodes", json!({"metadata": {"name": "n1"}})).await;
        create(
            "/api/v1/namespaces/default/pods",
            json!({"metadata": {"name": "web"}, "spec": {"nodeName": "n1",
                "containers": [{"name": "c", "image": "x", "ports": [{"containerPort": 8080}]}]}}),
        )
        .await;
        let pods = resources::by_kind("v1", "Pod").unwrap();
        let mut pod = st.api.get(pods, "default", "web").unwrap();
        pod["status"] = json!({"phase": "Running", "podIP": "10.42.0.5"});
        st.api
            .update(
                pods,
                "default",
                "web",
                pod,
                Some("status"),
                &WriteOptions::default(),
            )
            .unwrap();
        create(
            "/api/v1/namespaces/default/services",
            json!({"metadata": {"name": "web"}, "spec": {"selector": {"app": "web"},
                "ports": [{"name": "http", "port": 80, "targetPort": 8080}]}}),
        )
        .await;
        create(
            "/apis/discovery.k8s.io/v1/namespaces/default/endpointslices",
            json!({"metadata": {"name": "web-1", "labels": {"kubernetes.io/service-name": "web"}},
                "addressType": "IPv4", "ports": [{"name": "http", "port": 8080}],
                "endpoints": [
                    {"addresses": ["10.42.1.9"], "conditions": {"ready": false}, "nodeName": "n2"},
                    {"addresses": ["10.42.0.5"], "conditions": {"ready": true}, "nodeName": "n1"}]}),
        )
        .await;
        create(
            "/api/v1/namespaces/default/services",
            json!({"metadata": {"name": "empty"}, "spec": {"ports": [{"port": 80}]}}),
        )
        .await;

        let send = |method: &str, uri: &str, who: (&str, &[&str]), body: &'static str| {
            let mut req = http::Request::builder()
                .method(method)
                .uri(uri)
                .header(header::AUTHORIZATION, "Bearer secret")
                .header(header::CONNECTION, "keep-alive, x-hop")
                .header("x-hop", "1")
                .header("x-app", "kept")
                .body(Body::from(body))
                .unwrap();
            req.extensions_mut().insert(Identity {
                user: who.0.into(),
                groups: who.1.iter().map(|g| g.to_string()).collect(),
            });
            handle(State(st.clone()), req)
        };
        let last = || {
            let l = rec.0.lock().unwrap();
            let (node, parts, body) = l.last().unwrap();
            (node.clone(), parts.clone(), body.clone())
        };

        let r = send(
            "POST",
            "/api/v1/namespaces/default/pods/web/proxy/a/b?x=1&y=%20",
            ADMIN,
            "data",
        )
        .await;
        assert_eq!(r.status(), 302);
        assert_eq!(r.headers()[header::LOCATION], "/login");
        assert!(r.headers().get(header::CONNECTION).is_none());
        assert_eq!(
            &axum::body::to_bytes(r.into_body(), 64).await.unwrap()[..],
            b"moved"
        );
        let (node, parts, body) = last();
        assert_eq!(node, "n1");
        assert_eq!(parts.method, Method::POST);
        assert_eq!(parts.uri, "/podProxy/http/10.42.0.5/8080/a/b?x=1&y=%20");
        assert_eq!(&body[..], b"data");
        assert_eq!(parts.headers["x-app"], "kept");
        for gone in ["authorization", "connection", "x-hop"] {
            assert!(parts.headers.get(gone).is_none(), "{gone} forwarded");
        }

        for svc in ["web:http", "web:80", "https:web:http"] {
            let r = send(
                "GET",
                &format!("/api/v1/namespaces/default/services/{svc}/proxy/"),
                ADMIN,
                "",
            )
            .await;
            assert_eq!(r.status(), 302, "{svc}");
            let (node, parts, _) = last();
            assert_eq!(node, "n1", "the ready endpoint's node");
            let scheme = if svc.starts_with("https") {
                "https"
            } else {
                "http"
            };
            assert_eq!(
                parts.uri,
                format!("/podProxy/{scheme}/10.42.0.5/8080/").as_str()
            );
        }
        let r = send("GET", "/api/v1/nodes/n1/proxy/healthz?verbose", ADMIN, "").await;
        assert_eq!(r.status(), 302);
        assert_eq!(last().1.uri, "/healthz?verbose");

        // Without a trailing slash: redirected to it, as kube-apiserver does.
        let r = send(
            "GET",
            "/api/v1/namespaces/default/services/web:http/proxy?q=1",
            ADMIN,
            "",
        )
        .await;
        assert_eq!(r.status(), 301);
        assert_eq!(
            r.headers()[header::LOCATION],
            "/api/v1/namespaces/default/services/web:http/proxy/?q=1"
        );

        let before = rec.0.lock().unwrap().len();
        let status = |r: Response| async move {
            let code = r.status().as_u16();
            let b = axum::body::to_bytes(r.into_body(), 1 << 16).await.unwrap();
            (code, serde_json::from_slice::<Value>(&b).unwrap())
        };
        let (code, body) = status(
            send(
                "GET",
                "/api/v1/namespaces/default/services/empty/proxy/",
                ADMIN,
                "",
            )
            .await,
        )
        .await;
        assert_eq!(
            (code, body["reason"].as_str()),
            (503, Some("ServiceUnavailable"))
        );
        assert_eq!(
            body["message"],
            "no endpoints available for service \"empty\""
        );
        let (code, body) = status(
            send(
                "GET",
                "/api/v1/namespaces/default/services/web:other/proxy/",
                ADMIN,
                "",
            )
            .await,
        )
        .await;
        assert_eq!(code, 503);
        assert_eq!(
            body["message"],
            "no endpoints available for service \"web:other\""
        );
        let (code, _) = status(
            send(
                "GET",
                "/api/v1/namespaces/default/pods/nope/proxy/",
                ADMIN,
                "",
            )
            .await,
        )
        .await;
        assert_eq!(code, 404);
        // RBAC: nobody but admins here; a node may not proxy at all.
        let (code, body) = status(
            send(
                "GET",
                "/api/v1/namespaces/default/pods/web/proxy/",
                ("alice", &["system:authenticated"]),
                "",
            )
            .await,
        )
        .await;
        assert_eq!(code, 403);
        assert!(
            body["message"]
                .as_str()
                .unwrap()
                .contains("cannot get resource \"pods/proxy\""),
            "{body}"
        );
        let (code, _) = status(
            send(
                "GET",
                "/api/v1/nodes/n1/proxy/healthz",
                ("system:node:n1", &["system:nodes"]),
                "",
            )
            .await,
        )
        .await;
        assert_eq!(code, 403);
        assert_eq!(
            rec.0.lock().unwrap().len(),
            before,
            "nothing refused was forwarded"
        );
    }

    /// A CustomResourceDefinition end to end through the HTTP layer: established at once,
    /// discovered, its objects pruned, defaulted and validated by its schema, printed with its
    /// columns, its status and scale subresources, its second version a view, and its objects
    /// deleted with it.
    #[tokio::test]
    async fn custom_resources_are_served_while_their_definition_lives() {
        const MERGE: &str = "application/merge-patch+json";
        let dir = tempfile::tempdir().unwrap();
        let st = state(dir.path());
        let g = "crdtest.kedge.dev";
        let version = |name: &str, storage: bool| {
            json!({"name": name, "served": true, "storage": storage,
            "schema": {"openAPIV3Schema": {"type": "object", "properties": {
                "spec": {"type": "object", "required": ["size"], "properties": {
                    "size": {"type": "integer", "minimum": 1, "maximum": 10},
                    "color": {"type": "string", "enum": ["red", "blue"], "default": "red"},
                    "replicas": {"type": "integer"}}},
                "status": {"type": "object", "properties": {
                    "ready": {"type": "boolean"}, "replicas": {"type": "integer"}}}}}},
            "subresources": {"status": {}, "scale": {"specReplicasPath": ".spec.replicas",
                "statusReplicasPath": ".status.replicas"}},
            "additionalPrinterColumns": [
                {"name": "Size", "type": "integer", "jsonPath": ".spec.size"},
                {"name": "Color", "type": "string", "jsonPath": ".spec.color", "priority": 1}]})
        };
        let crd = json!({"apiVersion": "apiextensions.k8s.io/v1", "kind": "CustomResourceDefinition",
            "metadata": {"name": format!("gizmos.{g}")},
            "spec": {"group": g, "scope": "Namespaced",
                "names": {"plural": "gizmos", "kind": "Gizmo", "shortNames": ["gz"], "categories": ["all"]},
                "versions": [version("v1", true), version("v1beta1", false)]}});
        let crds = "/apis/apiextensions.k8s.io/v1/customresourcedefinitions";
        let a = call(&st, ADMIN, "POST", crds, JSON, crd).await;
        assert_eq!(a.code, 201, "{}", a.body);
        assert_eq!(a.body["status"]["acceptedNames"]["kind"], "Gizmo");
        assert!(
            a.body["status"]["conditions"]
                .as_array()
                .unwrap()
                .iter()
                .any(|c| c["type"] == "Established" && c["status"] == "True")
        );
        // Discovered in both forms, with the second version after the storage one.
        let d = call(&st, ADMIN, "GET", &format!("/apis/{g}"), JSON, Value::Null).await;
        assert_eq!(d.body["preferredVersion"]["version"], "v1", "{}", d.body);
        assert_eq!(d.body["versions"].as_array().unwrap().len(), 2);
        let d = call(
            &st,
            ADMIN,
            "GET",
            &format!("/apis/{g}/v1"),
            JSON,
            Value::Null,
        )
        .await;
        let r = &d.body["resources"][0];
        assert_eq!(
            (r["name"].as_str(), r["shortNames"][0].as_str()),
            (Some("gizmos"), Some("gz"))
        );

        let url = format!("/apis/{g}/v1/namespaces/default/gizmos");
        // Validation against the schema, with field paths.
        let bad = json!({"apiVersion": format!("{g}/v1"), "kind": "Gizmo",
            "metadata": {"name": "bad"}, "spec": {"size": 11, "color": "green"}});
        let a = call(&st, ADMIN, "POST", &url, JSON, bad).await;
        assert_eq!(a.code, 422, "{}", a.body);
        let fields: Vec<&str> = a.body["details"]["causes"]
            .as_array()
            .unwrap()
            .iter()
            .map(|c| c["field"].as_str().unwrap())
            .collect();
        assert_eq!(fields, ["spec.color", "spec.size"], "{}", a.body);
        // Unknown fields pruned (and warned of), defaults filled, status dropped on create.
        let good = json!({"apiVersion": format!("{g}/v1"), "kind": "Gizmo",
            "metadata": {"name": "one"}, "spec": {"size": 3, "extra": 1, "replicas": 2},
            "status": {"ready": true}});
        let a = call(&st, ADMIN, "POST", &url, JSON, good).await;
        assert_eq!(a.code, 201, "{}", a.body);
        assert_eq!(
            a.body["spec"],
            json!({"size": 3, "color": "red", "replicas": 2})
        );
        assert!(a.body.get("status").is_none(), "{}", a.body);
        assert_eq!(a.body["metadata"]["generation"], 1);
        assert!(
            a.warnings
                .iter()
                .any(|w| w.contains("unknown field") && w.contains("spec.extra")),
            "{:?}",
            a.warnings
        );
        // The status subresource: checked by the schema, and the only way to write status.
        let status = format!("{url}/one/status");
        let a = call(
            &st,
            ADMIN,
            "PATCH",
            &status,
            MERGE,
            json!({"status": {"ready": "yes"}}),
        )
        .await;
        assert_eq!(a.code, 422, "{}", a.body);
        let a = call(
            &st,
            ADMIN,
            "PATCH",
            &status,
            MERGE,
            json!({"status": {"ready": true, "replicas": 2}}),
        )
        .await;
        assert_eq!(
            (a.code, &a.body["status"]["ready"]),
            (200, &json!(true)),
            "{}",
            a.body
        );
        // Scale through its paths.
        let a = call(
            &st,
            ADMIN,
            "GET",
            &format!("{url}/one/scale"),
            JSON,
            Value::Null,
        )
        .await;
        assert_eq!(
            (
                a.body["spec"]["replicas"].as_i64(),
                a.body["status"]["replicas"].as_i64()
            ),
            (Some(2), Some(2)),
            "{}",
            a.body
        );
        let a = call(
            &st,
            ADMIN,
            "PATCH",
            &format!("{url}/one/scale"),
            MERGE,
            json!({"spec": {"replicas": 5}}),
        )
        .await;
        assert_eq!(a.code, 200, "{}", a.body);
        let a = call(&st, ADMIN, "GET", &format!("{url}/one"), JSON, Value::Null).await;
        assert_eq!(a.body["spec"]["replicas"], 5);
        assert_eq!(a.body["metadata"]["generation"], 2);
        // The other version is a view of the same objects.
        let beta = format!("/apis/{g}/v1beta1/namespaces/default/gizmos/one");
        let a = call(&st, ADMIN, "GET", &beta, JSON, Value::Null).await;
        assert_eq!(a.body["apiVersion"], format!("{g}/v1beta1"), "{}", a.body);
        // Printer columns.
        let mut req = http::Request::builder()
            .uri(&url)
            .header(
                header::ACCEPT,
                "application/json;as=Table;v=v1;g=meta.k8s.io",
            )
            .body(Body::empty())
            .unwrap();
        req.extensions_mut().insert(Identity {
            user: "admin".into(),
            groups: vec!["system:masters".into()],
        });
        let r = handle(State(st.clone()), req).await;
        let table: Value = serde_json::from_slice(
            &axum::body::to_bytes(r.into_body(), usize::MAX)
                .await
                .unwrap(),
        )
        .unwrap();
        let names: Vec<&str> = table["columnDefinitions"]
            .as_array()
            .unwrap()
            .iter()
            .map(|c| c["name"].as_str().unwrap())
            .collect();
        assert_eq!(names, ["Name", "Size", "Color"], "{table}");
        assert_eq!(
            table["rows"][0]["cells"],
            json!(["one", 3, "red"]),
            "{table}"
        );

        // Deleting the definition deletes its objects; one held by a finalizer holds the
        // definition (terminating, refusing new objects) until it goes.
        let held = json!({"apiVersion": format!("{g}/v1"), "kind": "Gizmo",
            "metadata": {"name": "held", "finalizers": ["e2e.kedge.dev/hold"]}, "spec": {"size": 1}});
        assert_eq!(call(&st, ADMIN, "POST", &url, JSON, held).await.code, 201);
        let a = call(
            &st,
            ADMIN,
            "DELETE",
            &format!("{crds}/gizmos.{g}"),
            JSON,
            Value::Null,
        )
        .await;
        assert!(a.code == 200 || a.code == 202, "{}", a.body);
        let a = call(
            &st,
            ADMIN,
            "GET",
            &format!("{crds}/gizmos.{g}"),
            JSON,
            Value::Null,
        )
        .await;
        assert_eq!(a.code, 200, "{}", a.body);
        assert!(
            a.body["metadata"]["deletionTimestamp"].is_string(),
            "{}",
            a.body
        );
        let a = call(&st, ADMIN, "GET", &format!("{url}/one"), JSON, Value::Null).await;
        assert_eq!(a.code, 404, "{}", a.body);
        let late = json!({"metadata": {"name": "late"}, "spec": {"size": 1}});
        let a = call(&st, ADMIN, "POST", &url, JSON, late).await;
        assert_eq!(a.code, 405, "{}", a.body);
        let a = call(
            &st,
            ADMIN,
            "PATCH",
            &format!("{url}/held"),
            MERGE,
            json!({"metadata": {"finalizers": null}}),
        )
        .await;
        assert_eq!(a.code, 200, "{}", a.body);
        let a = call(
            &st,
            ADMIN,
            "GET",
            &format!("{crds}/gizmos.{g}"),
            JSON,
            Value::Null,
        )
        .await;
        assert_eq!(a.code, 404, "{}", a.body);
        let a = call(&st, ADMIN, "GET", &url, JSON, Value::Null).await;
        assert_eq!(a.code, 404, "{}", a.body);
        let key = kedge_store::prefix(g, "gizmos", "");
        let (left, _) = st.api.store().list(&key).unwrap();
        assert!(left.is_empty(), "{left:?}");
    }

    /// A definition's status is the server's, and its deletion finishes whatever else holds
    /// it: another finalizer on the definition keeps it (terminating, nothing looping) until
    /// it goes, and a server restarted mid-cleanup serves the kind again and finishes.
    #[tokio::test]
    async fn a_definition_being_deleted_survives_other_finalizers_and_restarts() {
        const MERGE: &str = "application/merge-patch+json";
        let dir = tempfile::tempdir().unwrap();
        let st = state(dir.path());
        let g = "crdlife.kedge.dev";
        let crds = "/apis/apiextensions.k8s.io/v1/customresourcedefinitions";
        let crd_url = format!("{crds}/things.{g}");
        let crd = json!({"apiVersion": "apiextensions.k8s.io/v1", "kind": "CustomResourceDefinition",
            "metadata": {"name": format!("things.{g}"), "finalizers": ["e2e.kedge.dev/keep"]},
            "spec": {"group": g, "scope": "Namespaced", "names": {"plural": "things", "kind": "Thing"},
                "versions": [{"name": "v1", "served": true, "storage": true,
                    "schema": {"openAPIV3Schema": {"type": "object",
                        "x-kubernetes-preserve-unknown-fields": true}}}]}});
        let a = call(&st, ADMIN, "POST", crds, JSON, crd).await;
        assert_eq!(a.code, 201, "{}", a.body);

        // /status: conditions and accepted names stay the server's; storedVersions is checked.
        let a = call(
            &st,
            ADMIN,
            "PATCH",
            &format!("{crd_url}/status"),
            MERGE,
            json!({"status": {"acceptedNames": {"plural": "others", "kind": "Other"},
                "conditions": [], "storedVersions": ["v1"]}}),
        )
        .await;
        assert_eq!(a.code, 200, "{}", a.body);
        assert_eq!(a.body["status"]["acceptedNames"]["kind"], "Thing");
        assert_eq!(a.body["status"]["conditions"].as_array().unwrap().len(), 2);
        let a = call(
            &st,
            ADMIN,
            "PATCH",
            &format!("{crd_url}/status"),
            MERGE,
            json!({"status": {"storedVersions": ["v9"]}}),
        )
        .await;
        assert_eq!(a.code, 422, "{}", a.body);

        let url = format!("/apis/{g}/v1/namespaces/default/things");
        let held = json!({"apiVersion": format!("{g}/v1"), "kind": "Thing",
            "metadata": {"name": "held", "finalizers": ["e2e.kedge.dev/hold"]}});
        assert_eq!(call(&st, ADMIN, "POST", &url, JSON, held).await.code, 201);
        let a = call(&st, ADMIN, "DELETE", &crd_url, JSON, Value::Null).await;
        assert!(a.code == 200 || a.code == 202, "{}", a.body);

        // A restart while the object holds the cleanup: the kind is served again.
        super::super::crd::unregister(g, "things");
        assert!(resources::by_group_plural(g, "things").is_none());
        super::super::crd::load(&st.api).unwrap();
        let a = call(&st, ADMIN, "GET", &format!("{url}/held"), JSON, Value::Null).await;
        assert_eq!(a.code, 200, "{}", a.body);
        let late = json!({"metadata": {"name": "late"}});
        assert_eq!(call(&st, ADMIN, "POST", &url, JSON, late).await.code, 405);
        let a = call(
            &st,
            ADMIN,
            "PATCH",
            &format!("{url}/held"),
            MERGE,
            json!({"metadata": {"finalizers": null}}),
        )
        .await;
        assert_eq!(a.code, 200, "{}", a.body);

        // The cleanup is done; the other finalizer still holds the definition.
        let a = call(&st, ADMIN, "GET", &crd_url, JSON, Value::Null).await;
        assert_eq!(a.code, 200, "{}", a.body);
        assert_eq!(
            a.body["metadata"]["finalizers"],
            json!(["e2e.kedge.dev/keep"])
        );
        // A restart now finds nothing to clean and loops on nothing.
        super::super::crd::load(&st.api).unwrap();
        let a = call(
            &st,
            ADMIN,
            "PATCH",
            &crd_url,
            MERGE,
            json!({"metadata": {"finalizers": null}}),
        )
        .await;
        assert_eq!(a.code, 200, "{}", a.body);
        assert_eq!(
            call(&st, ADMIN, "GET", &crd_url, JSON, Value::Null)
                .await
                .code,
            404
        );
        assert!(resources::by_group_plural(g, "things").is_none());
    }

    /// Server-side apply follows a custom kind's schema: two managers applying different
    /// items of an `x-kubernetes-list-type: map` list (keyed by `id`, not a built-in merge
    /// key) both keep them and own them per item, as do creates and updates.
    #[tokio::test]
    async fn server_side_apply_merges_custom_map_lists_by_their_keys() {
        const APPLY: &str = "application/apply-patch+yaml";
        let dir = tempfile::tempdir().unwrap();
        let st = state(dir.path());
        let g = "ssatest.kedge.dev";
        let schema = json!({"type": "object", "properties": {"spec": {"type": "object",
            "properties": {"entries": {"type": "array", "x-kubernetes-list-type": "map",
                "x-kubernetes-list-map-keys": ["id"],
                "items": {"type": "object", "required": ["id"], "properties": {
                    "id": {"type": "integer"}, "value": {"type": "string"}}}}}}}});
        let crd = json!({"apiVersion": "apiextensions.k8s.io/v1",
            "kind": "CustomResourceDefinition", "metadata": {"name": format!("rules.{g}")},
            "spec": {"group": g, "scope": "Namespaced",
                "names": {"plural": "rules", "kind": "Rule"},
                "versions": [{"name": "v1", "served": true, "storage": true,
                    "schema": {"openAPIV3Schema": schema}}]}});
        let crds = "/apis/apiextensions.k8s.io/v1/customresourcedefinitions";
        let a = call(&st, ADMIN, "POST", crds, JSON, crd).await;
        assert_eq!(a.code, 201, "{}", a.body);
        let url = format!("/apis/{g}/v1/namespaces/default/rules");
        let rule = |entries: Value| {
            json!({"apiVersion": format!("{g}/v1"), "kind": "Rule",
                "metadata": {"name": "r"}, "spec": {"entries": entries}})
        };
        let owned = |obj: &Value, manager: &str| {
            obj["metadata"]["managedFields"]
                .as_array()
                .and_then(|m| m.iter().find(|e| e["manager"] == manager))
                .map(|e| e["fieldsV1"]["f:spec"]["f:entries"].clone())
                .unwrap_or(Value::Null)
        };
        let apply = |manager: &str, entries: Value| {
            let (uri, body) = (format!("{url}/r?fieldManager={manager}"), rule(entries));
            let st = st.clone();
            async move { call(&st, ADMIN, "PATCH", &uri, APPLY, body).await }
        };
        let a = apply("a", json!([{"id": 1, "value": "one"}])).await;
        assert_eq!(a.code, 201, "{}", a.body);
        let b = apply("b", json!([{"id": 2, "value": "two"}])).await;
        assert_eq!(b.code, 200, "{}", b.body);
        assert_eq!(
            b.body["spec"]["entries"],
            json!([{"id": 1, "value": "one"}, {"id": 2, "value": "two"}])
        );
        assert_eq!(
            owned(&b.body, "a"),
            json!({"k:{\"id\":1}": {".": {}, "f:id": {}, "f:value": {}}})
        );
        assert_eq!(
            owned(&b.body, "b"),
            json!({"k:{\"id\":2}": {".": {}, "f:id": {}, "f:value": {}}})
        );
        // Another value for a's item conflicts on that item's field only.
        let c = apply(
            "b",
            json!([{"id": 2, "value": "two"}, {"id": 1, "value": "uno"}]),
        )
        .await;
        assert_eq!(c.code, 409, "{}", c.body);
        assert!(
            c.body["message"]
                .as_str()
                .unwrap()
                .ends_with(".spec.entries[id=1].value"),
            "{}",
            c.body
        );
        // An update takes over just the item field it changes.
        let patch = json!({"spec": {"entries": [{"id": 1, "value": "one"},
            {"id": 2, "value": "deux"}]}});
        let u = call(
            &st,
            ADMIN,
            "PATCH",
            &format!("{url}/r?fieldManager=edit"),
            "application/merge-patch+json",
            patch,
        )
        .await;
        assert_eq!(u.code, 200, "{}", u.body);
        assert_eq!(
            owned(&u.body, "edit"),
            json!({"k:{\"id\":2}": {"f:value": {}}})
        );
        // a drops its item: it goes; b's stays.
        let a = apply("a", json!([])).await;
        assert_eq!(a.code, 200, "{}", a.body);
        assert_eq!(
            a.body["spec"]["entries"],
            json!([{"id": 2, "value": "deux"}])
        );
        // An applied item without its key is refused.
        let bad = apply("a", json!([{"value": "x"}])).await;
        assert_eq!(bad.code, 422, "{}", bad.body);
        // A create records the creator's items by key too.
        let created = call(
            &st,
            ADMIN,
            "POST",
            &format!("{url}?fieldManager=creator"),
            JSON,
            json!({"apiVersion": format!("{g}/v1"), "kind": "Rule",
                "metadata": {"name": "s"}, "spec": {"entries": [{"id": 7}]}}),
        )
        .await;
        assert_eq!(created.code, 201, "{}", created.body);
        assert_eq!(
            owned(&created.body, "creator"),
            json!({"k:{\"id\":7}": {".": {}, "f:id": {}}})
        );
    }
}
