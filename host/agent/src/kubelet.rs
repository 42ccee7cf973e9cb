//! The kubelet endpoint (logs, exec, attach, port-forward), reached only through the
//! tunnel.

use std::collections::HashMap;
use std::sync::{Arc, Mutex};

use axum::body::Body;
use axum::extract::{Path as UrlPath, Query, State};
use axum::response::{IntoResponse, Response};
use kedge_runtime::oci::OciRuntime;
use kedge_runtime::wasm::WasmRuntime;
use tokio_util::sync::CancellationToken;

use super::{ContainerId, LogHandle, stream};

#[derive(serde::Deserialize)]
struct LogQuery {
    follow: Option<String>,
    previous: Option<String>,
    #[serde(rename = "tailLines")]
    tail_lines: Option<usize>,
    #[serde(rename = "sinceSeconds")]
    since_seconds: Option<i64>,
    #[serde(rename = "sinceTime")]
    since_time: Option<String>,
    timestamps: Option<String>,
    #[serde(rename = "limitBytes")]
    limit_bytes: Option<u64>,
    pub(crate) uid: Option<String>,
    /// The server's own: each record framed with its cursor (kedge_runtime::logs::Frame),
    /// so a followed stream can resume where it broke.
    framed: Option<String>,
    /// The server's own: go on right after this cursor of run `run`.
    cursor: Option<String>,
    run: Option<u32>,
}

/// Which run of a container a log stream reads (its restart count), in every answer: what a
/// server resuming the stream asks for again.
pub(crate) const LOG_RUN_HEADER: &str = "x-kedge-log-run";

pub(crate) fn truthy(v: &Option<String>) -> bool {
    v.as_deref()
        .is_some_and(|v| v.eq_ignore_ascii_case("true") || v == "1")
}

pub(crate) type LogMap = Arc<Mutex<HashMap<ContainerId, LogHandle>>>;

/// What the kubelet endpoint serves from.
pub(crate) struct Kubelet {
    pub(crate) logs: LogMap,
    pub(crate) oci: Option<Arc<OciRuntime>>,
    pub(crate) wasm: WasmRuntime,
    /// Stops exec and port-forward sessions when the agent stops.
    pub(crate) cancel: CancellationToken,
    /// Served at `/metrics`.
    pub(crate) metrics: super::metrics::AgentMetrics,
}

pub(crate) fn kubelet_router(kubelet: Arc<Kubelet>) -> axum::Router {
    axum::Router::new()
        .route(
            "/containerLogs/{ns}/{pod}/{container}",
            axum::routing::get(container_logs),
        )
        .route(
            "/exec/{ns}/{pod}/{container}",
            axum::routing::post(stream::exec),
        )
        .route(
            "/attach/{ns}/{pod}/{container}",
            axum::routing::post(stream::attach),
        )
        .route(
            "/portForward/{ns}/{pod}",
            axum::routing::post(stream::port_forward),
        )
        .route(super::relay::PATH, axum::routing::post(super::relay::serve))
        .route("/healthz", axum::routing::get(super::http_proxy::healthz))
        .route("/metrics", axum::routing::get(super::metrics::serve))
        .route(
            "/podProxy/{*target}",
            axum::routing::any(super::http_proxy::pod_proxy),
        )
        .with_state(kubelet)
}

async fn container_logs(
    State(kubelet): State<Arc<Kubelet>>,
    UrlPath((ns, pod, container)): UrlPath<(String, String, String)>,
    Query(q): Query<LogQuery>,
) -> Response {
    let handle = kubelet
        .logs
        .lock()
        .unwrap_or_else(|p| p.into_inner())
        .get(&(ns.clone(), pod.clone(), container.clone()))
        .cloned();
    let Some(h) = handle.filter(|h| q.uid.as_ref().is_none_or(|u| *u == h.uid)) else {
        return (
            http::StatusCode::NOT_FOUND,
            format!("container \"{container}\" in pod \"{pod}\" is waiting to start or has no logs on this node"),
        )
            .into_response();
    };
    let resume = match q.cursor.as_deref().map(str::parse) {
        None => None,
        Some(Ok(c)) => Some(c),
        Some(Err(e)) => return (http::StatusCode::BAD_REQUEST, e).into_response(),
    };
    let (path, done, run) = if let Some(run) = q.run.filter(|r| *r != h.restart_count) {
        // A run that has ended since (the stream resumes after the container restarted):
        // the rest of its log, then the end, as the original stream would have had.
        if run > h.restart_count {
            return (
                http::StatusCode::NOT_FOUND,
                format!("container \"{container}\" in pod \"{pod}\" has no run {run}"),
            )
                .into_response();
        }
        let (_ended, done) = tokio::sync::watch::channel(true);
        (h.dir.join(format!("{run}.log")), Some(done), run)
    } else if truthy(&q.previous) {
        if h.restart_count == 0 {
            return (
                http::StatusCode::BAD_REQUEST,
                format!("previous terminated container \"{container}\" in pod \"{pod}\" not found"),
            )
                .into_response();
        }
        (
            h.dir.join(format!("{}.log", h.restart_count - 1)),
            None,
            h.restart_count - 1,
        )
    } else {
        (
            h.dir.join(format!("{}.log", h.restart_count)),
            Some(h.done.clone()),
            h.restart_count,
        )
    };
    let since = match (&q.since_time, q.since_seconds) {
        (Some(t), _) => chrono::DateTime::parse_from_rfc3339(t)
            .ok()
            .map(|t| t.with_timezone(&chrono::Utc)),
        (None, Some(s)) => Some(chrono::Utc::now() - chrono::Duration::seconds(s)),
        _ => None,
    };
    let opts = kedge_runtime::logs::LogOptions {
        // A previous run is over: nothing to follow.
        follow: truthy(&q.follow) && !truthy(&q.previous),
        tail_lines: q.tail_lines,
        since,
        timestamps: truthy(&q.timestamps),
        limit_bytes: q.limit_bytes,
        // A byte limit would cut a frame: the server frames only unlimited streams.
        framed: truthy(&q.framed) && q.limit_bytes.is_none(),
        resume,
    };
    // A body that fails before its first byte makes hyper drop the stream without the head,
    // which the server can only report as a 502; a missing file gets a real answer instead.
    if let Err(e) = tokio::fs::metadata(&path).await {
        let (code, text) = if e.kind() == std::io::ErrorKind::NotFound {
            (
                http::StatusCode::NOT_FOUND,
                format!("container \"{container}\" in pod \"{pod}\" has no log on this node"),
            )
        } else {
            (
                http::StatusCode::INTERNAL_SERVER_ERROR,
                format!("reading the log of container \"{container}\" in pod \"{pod}\": {e}"),
            )
        };
        return (code, text).into_response();
    }
    let stream = kedge_runtime::logs::read(path, opts, done);
    let mut r = Response::new(Body::from_stream(stream));
    r.headers_mut().insert(
        http::header::CONTENT_TYPE,
        http::HeaderValue::from_static("text/plain"),
    );
    r.headers_mut()
        .insert(LOG_RUN_HEADER, http::HeaderValue::from(run));
    r
}
