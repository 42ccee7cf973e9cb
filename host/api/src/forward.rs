//! Requests for a node whose tunnel another server replica holds (several servers on one
//! etcd): that replica takes them at `/kedge/nodes/<node>/<path>` from the others and passes
//! them down its own tunnel, upgrades (exec, attach, port-forward, relays) included — the
//! proxy-server role of Kubernetes' Konnectivity. Only replicas may call it: their client
//! certificates, issued by the cluster CA at start, carry the group [`SERVERS_GROUP`]. A
//! forwarded request goes down the local tunnel only, never on to a third replica, so no
//! request can loop.

use axum::body::Body;
use axum::http::{HeaderValue, StatusCode, header};
use axum::response::Response;
use http::request::Parts;

use super::error::{ApiError, Result};
use super::http::ApiState;
use crate::auth::Identity;

/// The group of the server replicas' own client certificates.
pub const SERVERS_GROUP: &str = "kedge:servers";

/// The node and the path (with its query) a forwarded request is for.
pub(crate) fn parse(parts: &Parts) -> Option<(String, String)> {
    let rest = parts.uri.path().strip_prefix("/kedge/nodes/")?;
    let (node, path) = rest.split_once('/').unwrap_or((rest, ""));
    if node.is_empty() {
        return None;
    }
    let query = parts
        .uri
        .query()
        .map(|q| format!("?{q}"))
        .unwrap_or_default();
    Some((node.to_string(), format!("/{path}{query}")))
}

pub(crate) async fn serve(
    st: &ApiState,
    identity: &Identity,
    mut parts: Parts,
    body: Body,
    node: &str,
    path: &str,
) -> Result<Response> {
    if !identity.groups.iter().any(|g| g == SERVERS_GROUP) {
        return Err(ApiError::forbidden(format!(
            "User \"{}\" cannot forward requests to nodes: only server replicas can",
            identity.user
        )));
    }
    let proxy = st
        .nodes
        .get()
        .cloned()
        .ok_or_else(|| ApiError::unavailable("no node tunnel server is running"))?;
    let mut req = http::Request::builder()
        .method(parts.method.clone())
        .uri(path)
        .body(body)
        .map_err(|e| ApiError::bad_request(e.to_string()))?;
    for (k, v) in &parts.headers {
        if k != header::HOST {
            req.headers_mut().append(k, v.clone());
        }
    }
    let on_upgrade = parts.extensions.remove::<hyper::upgrade::OnUpgrade>();
    let mut resp = proxy
        .local(node, req)
        .await
        .map_err(|e| ApiError::unavailable(format!("node {node:?}: {e}")))?;
    tracing::debug!(node, path, status = %resp.status(), "forwarded request answered by the node");
    if resp.status() != StatusCode::SWITCHING_PROTOCOLS {
        return Ok(resp);
    }
    // An upgrade: answer 101 with the node's headers and splice the two streams.
    let Some(from_caller) = on_upgrade else {
        return Err(ApiError::bad_request(
            "an upgrade needs an upgradable connection",
        ));
    };
    let to_node = hyper::upgrade::on(&mut resp).await.map_err(|e| {
        ApiError::unavailable(format!("upgrading the stream to node {node:?}: {e}"))
    })?;
    let mut out = Response::new(Body::empty());
    *out.status_mut() = StatusCode::SWITCHING_PROTOCOLS;
    *out.headers_mut() = resp.headers().clone();
    if !out.headers().contains_key(header::CONNECTION) {
        out.headers_mut()
            .insert(header::CONNECTION, HeaderValue::from_static("upgrade"));
    }
    let node = node.to_string();
    tokio::spawn(async move {
        let caller = match from_caller.await {
            Ok(io) => io,
            Err(e) => {
                tracing::debug!(node, error = %e, "forwarded upgrade: the caller went away");
                return;
            }
        };
        let mut a = hyper_util::rt::TokioIo::new(caller);
        let mut b = hyper_util::rt::TokioIo::new(to_node);
        let r = tokio::io::copy_bidirectional(&mut a, &mut b).await;
        tracing::debug!(node, ?r, "forwarded stream ended");
    });
    Ok(out)
}
