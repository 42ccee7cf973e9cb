//! HTTP/1.1 over one QUIC bidirectional stream, both directions.

use std::time::Duration;

use hyper_util::rt::TokioIo;
use hyper_util::service::TowerToHyperService;
use quinn::{RecvStream, SendStream};
use tokio_util::sync::CancellationToken;
use tracing::debug;

use crate::Error;

/// Streams one tunnel may hold open at once, each way. Every API call, watch, log, exec,
/// port-forward and relayed Service connection is one; quinn's default (100) let ~95 relayed
/// connections stall a node's own API calls.
const MAX_STREAMS: u32 = 1024;
/// What all of a connection's streams together may have in flight unread: with many streams
/// open, this, not the per-stream window, bounds the memory a peer can make us hold.
const CONNECTION_WINDOW: u32 = 16 * 1024 * 1024;

/// The QUIC transport settings both ends share: keep-alives every 5 s hold NAT mappings
/// open, and 30 s of silence means the peer is gone (reconnect rather than hang).
pub(crate) fn transport_config(keep_alive: bool) -> std::sync::Arc<quinn::TransportConfig> {
    transport_config_idle(keep_alive, Duration::from_secs(30))
}

/// [`transport_config`] with another idle timeout (keep-alives at a quarter of it, at most
/// every 5 s). The shorter of the two ends' timeouts applies.
pub(crate) fn transport_config_idle(
    keep_alive: bool,
    idle: Duration,
) -> std::sync::Arc<quinn::TransportConfig> {
    let mut t = quinn::TransportConfig::default();
    t.max_concurrent_bidi_streams(quinn::VarInt::from_u32(MAX_STREAMS));
    t.receive_window(quinn::VarInt::from_u32(CONNECTION_WINDOW));
    t.max_idle_timeout(Some(
        quinn::IdleTimeout::try_from(idle).expect("an idle timeout fits a varint"),
    ));
    if keep_alive {
        t.keep_alive_interval(Some((idle / 4).min(Duration::from_secs(5))));
    }
    std::sync::Arc::new(t)
}

pub(crate) type StreamIo = TokioIo<tokio::io::Join<RecvStream, SendStream>>;

pub(crate) fn stream_io(send: SendStream, recv: RecvStream) -> StreamIo {
    TokioIo::new(tokio::io::join(recv, send))
}

/// Serves one HTTP/1.1 connection on a stream until the peer is done or `cancel` fires.
/// Upgrades stay enabled so exec/attach/port-forward can take the stream over later.
pub(crate) async fn serve_stream(
    send: SendStream,
    recv: RecvStream,
    router: axum::Router,
    cancel: CancellationToken,
) {
    let conn = hyper::server::conn::http1::Builder::new()
        .serve_connection(stream_io(send, recv), TowerToHyperService::new(router))
        .with_upgrades();
    tokio::select! {
        res = conn => if let Err(e) = res {
            debug!(error = %e, "tunnel http stream ended with an error");
        },
        () = cancel.cancelled() => {}
    }
}

/// Sends one request on a fresh stream. The connection task lives as long as the response
/// body is read (streamed logs and watches) and stops with `cancel` or the QUIC connection.
pub(crate) async fn send_request<B>(
    send: SendStream,
    recv: RecvStream,
    mut req: http::Request<B>,
    default_host: &str,
    cancel: CancellationToken,
) -> Result<http::Response<hyper::body::Incoming>, Error>
where
    B: hyper::body::Body + Send + 'static,
    B::Data: Send,
    B::Error: Into<Box<dyn std::error::Error + Send + Sync>>,
{
    normalize_target(&mut req, default_host);
    let (mut sender, conn) = hyper::client::conn::http1::handshake(stream_io(send, recv)).await?;
    tokio::spawn(async move {
        tokio::select! {
            res = conn.with_upgrades() => if let Err(e) = res {
                debug!(error = %e, "tunnel http client stream ended with an error");
            },
            () = cancel.cancelled() => {}
        }
    });
    Ok(sender.send_request(req).await?)
}

/// HTTP/1.1 needs a Host header and servers expect origin-form targets; callers of the
/// tunnel think in paths (`/api/v1/...`) or absolute URLs, so accept both.
fn normalize_target<B>(req: &mut http::Request<B>, default_host: &str) {
    let host = req
        .uri()
        .authority()
        .map(|a| a.as_str().to_owned())
        .unwrap_or_else(|| default_host.to_owned());
    if !req.headers().contains_key(http::header::HOST)
        && let Ok(v) = http::HeaderValue::from_str(&host)
    {
        req.headers_mut().insert(http::header::HOST, v);
    }
    if req.uri().scheme().is_some() {
        let pq = req
            .uri()
            .path_and_query()
            .map(|p| p.as_str().to_owned())
            .unwrap_or_else(|| "/".to_owned());
        if let Ok(uri) = pq.parse() {
            *req.uri_mut() = uri;
        }
    }
}
