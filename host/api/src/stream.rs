//! `pods/exec`, `pods/attach` and `pods/portforward`: the client's WebSocket (or SPDY)
//! connection ends here, and each session continues to the pod's agent on an upgraded
//! tunnel stream.
//!
//! - exec/attach: WebSocket with `v5.channel.k8s.io` (kubectl 1.30+) or `v4.channel.k8s.io`
//!   (client libraries). Messages become [`channel::Frame`]s on one tunnel stream; the
//!   agent's final frame is the Status for the error channel.
//! - port-forward: kubectl speaks SPDY/3.1, inside binary WebSocket messages
//!   (`SPDY/3.1+portforward.k8s.io`) or, as a fallback, on a connection upgraded with
//!   `Upgrade: SPDY/3.1`. Every forwarded connection (a pair of SPDY streams sharing a
//!   `requestID`) gets a tunnel stream of its own that the agent splices to the port, so
//!   QUIC flow control applies per connection.
//!
//! Sessions are spawned tasks; they end when either side closes, and at the latest when the
//! server stops (the tunnel connections close then).

use std::collections::HashMap;
use std::sync::Arc;
use std::time::Duration;

use axum::body::{Body, Bytes};
use axum::extract::FromRequestParts as _;
use axum::extract::ws::{CloseFrame, Message, WebSocket, WebSocketUpgrade};
use axum::http::{HeaderValue, StatusCode, header, request::Parts};
use axum::response::{IntoResponse, Response};
use bytes::BytesMut;
use hyper_util::rt::TokioIo;
use serde_json::Value;
use tokio::io::{AsyncRead, AsyncReadExt as _, AsyncWrite, AsyncWriteExt as _};
use tokio::sync::mpsc;
use tokio_util::task::AbortOnDropHandle;

use super::error::{ApiError, Result};
use super::http::{ApiState, NodeProxy, pod_container};
use super::spdy;
use kedge_core::channel::{self, ClientMessage, Frame};
use kedge_core::channel::{CHANNEL_UPGRADE, READ_AHEAD, TCP_UPGRADE};
use kedge_core::resources;
use kedge_tunnel::frames::write_frames;

/// kubectl's port-forward subprotocol over WebSocket.
const SPDY_PORTFORWARD_WS: &str = "SPDY/3.1+portforward.k8s.io";
const PORTFORWARD_PROTOCOL: &str = "portforward.k8s.io";
/// Read size for relayed bytes.
const CHUNK: usize = 32 * 1024;

fn flag(v: &str) -> bool {
    v.eq_ignore_ascii_case("true") || v == "1"
}

fn is_websocket(parts: &Parts) -> bool {
    parts
        .headers
        .get(header::UPGRADE)
        .and_then(|v| v.to_str().ok())
        .is_some_and(|v| v.eq_ignore_ascii_case("websocket"))
}

struct Located {
    node: String,
    uid: String,
    proxy: Arc<dyn NodeProxy>,
}

/// The pod, checked the way kube-apiserver does before it proxies to kubelet.
fn locate(st: &ApiState, ns: &str, name: &str, verb: &str) -> Result<(Value, Located)> {
    let res = resources::by_kind("v1", "Pod").expect("pods are served");
    let pod = st.api.get(res, ns, name)?;
    let phase = pod
        .pointer("/status/phase")
        .and_then(Value::as_str)
        .unwrap_or("");
    if matches!(phase, "Succeeded" | "Failed") {
        return Err(ApiError::bad_request(format!(
            "cannot {verb} a container in a completed pod; current phase is {phase}"
        )));
    }
    let Some(node) = pod.pointer("/spec/nodeName").and_then(Value::as_str) else {
        return Err(ApiError::bad_request(format!(
            "pod {name} does not have a host assigned"
        )));
    };
    let proxy = st
        .nodes
        .get()
        .cloned()
        .ok_or_else(|| ApiError::unavailable("no node tunnel server is running"))?;
    let located = Located {
        node: node.to_string(),
        uid: kedge_core::meta::uid(&pod).to_string(),
        proxy,
    };
    Ok((pod, located))
}

/// Asks the agent for an upgraded stream; its refusal becomes the client's error.
async fn open_tunnel(
    at: &Located,
    uri: String,
    token: &'static str,
) -> Result<Option<hyper::upgrade::Upgraded>> {
    let req = http::Request::post(uri)
        .header(header::CONNECTION, "upgrade")
        .header(header::UPGRADE, token)
        .body(Body::empty())
        .map_err(|e| ApiError::internal(e.to_string()))?;
    let node = &at.node;
    let mut resp = at.proxy.request(node, req).await.map_err(|e| {
        ApiError::new(
            502,
            "ServiceUnavailable",
            format!("error talking to node {node:?}: {e}"),
        )
    })?;
    match resp.status() {
        StatusCode::SWITCHING_PROTOCOLS => {
            let io = hyper::upgrade::on(&mut resp).await.map_err(|e| {
                ApiError::internal(format!("upgrading the stream to node {node:?}: {e}"))
            })?;
            Ok(Some(io))
        }
        s if s.is_success() => Ok(None),
        s => {
            let bytes = axum::body::to_bytes(resp.into_body(), 64 * 1024)
                .await
                .unwrap_or_default();
            let msg = String::from_utf8_lossy(&bytes).trim().to_string();
            Err(match s.as_u16() {
                404 => ApiError::new(404, "NotFound", msg),
                400 => ApiError::bad_request(msg),
                _ => ApiError::internal(msg),
            })
        }
    }
}

/// `pods/<name>/exec` and `pods/<name>/attach`.
pub(super) async fn exec(
    st: &ApiState,
    mut parts: Parts,
    ns: &str,
    name: &str,
    attach: bool,
) -> Result<Response> {
    let verb = if attach { "attach to" } else { "exec into" };
    let mut command = Vec::new();
    let mut container = None;
    let (mut stdin, mut stdout, mut stderr, mut tty) = (false, false, false, false);
    for (k, v) in url::form_urlencoded::parse(parts.uri.query().unwrap_or("").as_bytes()) {
        match k.as_ref() {
            "command" => command.push(v.into_owned()),
            "container" => container = Some(v.into_owned()),
            "stdin" => stdin = flag(&v),
            "stdout" => stdout = flag(&v),
            "stderr" => stderr = flag(&v),
            "tty" => tty = flag(&v),
            _ => {}
        }
    }
    let (pod, at) = locate(st, ns, name, verb)?;
    let container = pod_container(&pod, name, container.as_ref())?;
    if !attach && command.is_empty() {
        return Err(ApiError::bad_request("you must specify at least 1 command"));
    }
    if !(stdin || stdout || stderr) {
        return Err(ApiError::bad_request(
            "you must specify at least 1 of stdin, stdout, stderr",
        ));
    }
    let websocket = is_websocket(&parts);
    let query = {
        let mut q = url::form_urlencoded::Serializer::new(String::new());
        q.append_pair("uid", &at.uid);
        for c in &command {
            q.append_pair("command", c);
        }
        q.append_pair("stdin", &stdin.to_string());
        q.append_pair("tty", &tty.to_string());
        if !websocket {
            // Let the agent refuse first (unknown container, Wasm): its reason is more
            // useful than ours, and kubectl shows the error of this fallback request.
            q.append_pair("dryRun", "true");
        }
        q.finish()
    };
    let sub = if attach { "attach" } else { "exec" };
    let uri = format!("/{sub}/{ns}/{name}/{container}?{query}");
    if !websocket {
        open_tunnel(&at, uri, CHANNEL_UPGRADE).await?;
        return Err(ApiError::bad_request(format!(
            "kedge serves {sub} over WebSocket only ({} or {}); this client asked for {}",
            channel::V5,
            channel::V4,
            parts
                .headers
                .get(header::UPGRADE)
                .and_then(|v| v.to_str().ok())
                .unwrap_or("no upgrade"),
        )));
    }
    let ws = WebSocketUpgrade::from_request_parts(&mut parts, &())
        .await
        .map_err(|e| ApiError::bad_request(format!("websocket upgrade: {e}")))?
        .protocols(channel::PROTOCOLS);
    let v5 = match ws.selected_protocol().and_then(|p| p.to_str().ok()) {
        Some(channel::V5) => true,
        Some(_) => false,
        None => {
            return Err(ApiError::bad_request(format!(
                "none of the offered WebSocket subprotocols is supported; kedge speaks {} and {}",
                channel::V5,
                channel::V4
            )));
        }
    };
    let Some(tunnel) = open_tunnel(&at, uri, CHANNEL_UPGRADE).await? else {
        return Err(ApiError::internal("the node did not open the exec stream"));
    };
    Ok(ws.on_upgrade(move |socket| relay_exec(socket, TokioIo::new(tunnel), v5)))
}

/// How long a session waits for the client's answer to its first ping.
const READY_WAIT: Duration = Duration::from_secs(1);
/// The least time between the upgrade and the first output to the client.
const READY_GRACE: Duration = Duration::from_millis(10);

/// Waits until the client can take output, and returns what it sent meanwhile (`None`: it
/// left).
///
/// client-go's WebSocket executor before 1.33 (kubectl 1.30–1.32) starts reading the
/// connection on one goroutine while another creates its streams, and drops a message for a
/// stream not created yet ("Unknown stream id …, discarding message"): a command that prints
/// and exits at once could lose its output and exit status, and kubectl then fails with
/// "closed all streams" (kubernetes/kubernetes#131189, fixed in client-go 1.33). kube-apiserver
/// is saved by the round trips to the kubelet and the runtime between its 101 and the first
/// output; kedge has the output ready by then. So the first output waits for the client's
/// pong to a ping sent right after the upgrade (its read loop answers it, one round trip after
/// the streams were started), and at least [`READY_GRACE`]; data from the client proves its
/// streams exist. A client that does not answer pings gets its output after [`READY_WAIT`].
async fn until_client_ready(ws: &mut WebSocket) -> Option<Vec<Message>> {
    let start = tokio::time::Instant::now();
    let mut early = Vec::new();
    if ws
        .send(Message::Ping(Bytes::from_static(b"kedge")))
        .await
        .is_err()
    {
        return None;
    }
    let answered = tokio::time::timeout(READY_WAIT, async {
        loop {
            match ws.recv().await {
                Some(Ok(Message::Pong(_))) => return true,
                Some(Ok(Message::Close(_))) | None | Some(Err(_)) => return false,
                Some(Ok(msg @ Message::Binary(_))) => {
                    early.push(msg);
                    return true;
                }
                Some(Ok(_)) => {}
            }
        }
    })
    .await;
    if answered == Ok(false) {
        return None;
    }
    tokio::time::sleep_until(start + READY_GRACE).await;
    Some(early)
}

/// The tunnel frame for one client message: `Ok(None)` for a message that carries nothing
/// for the node, `Err` when the client closed.
fn client_frame(msg: Message, v5: bool) -> std::result::Result<Option<Frame>, ()> {
    Ok(match msg {
        Message::Binary(b) => match channel::client_message(&b, v5) {
            ClientMessage::Stdin(d) => Some(Frame::new(channel::STDIN, d)),
            ClientMessage::StdinClosed => Some(Frame::new(channel::CLOSE, vec![channel::STDIN])),
            ClientMessage::Resize { width, height } => Some(Frame::new(
                channel::RESIZE,
                serde_json::to_vec(&serde_json::json!({"Width": width, "Height": height}))
                    .unwrap_or_default(),
            )),
            ClientMessage::Ignored => None,
        },
        Message::Close(_) => return Err(()),
        _ => None,
    })
}

/// Client WebSocket ↔ tunnel frames, until the agent sends the final Status.
async fn relay_exec<IO>(mut ws: WebSocket, tunnel: IO, v5: bool)
where
    IO: AsyncRead + AsyncWrite + Send + Unpin + 'static,
{
    let early = match until_client_ready(&mut ws).await {
        Some(early) => early,
        None => return,
    };
    let (mut rd, wr) = tokio::io::split(tunnel);
    // Input goes out on its own task: while a process does not read its stdin, its output
    // must keep flowing back (else `cat` of a large input deadlocks on full buffers).
    let (tx, rx) = mpsc::channel::<Frame>(16);
    let _writer = AbortOnDropHandle::new(tokio::spawn(write_frames(wr, rx)));
    // Client input the node has not taken yet (at most about `READ_AHEAD` bytes, the bound the
    // agent's sessions read ahead by too): the client
    // is read on meanwhile, so its leaving ends the session even then.
    let mut pending: std::collections::VecDeque<Frame> = Default::default();
    let mut pending_bytes = 0;
    // Its frame header too, so that empty messages count.
    let cost = |f: &Frame| f.payload.len() + 8;
    for msg in early {
        match client_frame(msg, v5) {
            Ok(Some(f)) => {
                pending_bytes += cost(&f);
                pending.push_back(f);
            }
            Ok(None) => {}
            Err(()) => return,
        }
    }
    let mut buf = BytesMut::with_capacity(CHUNK);
    let status: Option<Bytes> = loop {
        // Frames already buffered go out before we wait for more.
        match Frame::decode(&mut buf) {
            Ok(Some(f)) => {
                if f.channel == channel::ERROR {
                    break Some(f.payload);
                }
                let mut msg = BytesMut::with_capacity(1 + f.payload.len());
                msg.extend_from_slice(&[f.channel]);
                msg.extend_from_slice(&f.payload);
                if ws.send(Message::Binary(msg.freeze())).await.is_err() {
                    return;
                }
                continue;
            }
            Ok(None) => {}
            Err(e) => {
                tracing::debug!(error = %e, "bad frame from the agent");
                break None;
            }
        }
        tokio::select! {
            n = rd.read_buf(&mut buf) => match n {
                Ok(0) | Err(_) => break None,
                Ok(_) => {}
            },
            permit = tx.reserve(), if !pending.is_empty() => match (permit, pending.pop_front()) {
                (Ok(p), Some(f)) => {
                    pending_bytes -= cost(&f);
                    p.send(f);
                }
                _ => break None,
            },
            msg = ws.recv(), if pending_bytes < READ_AHEAD => {
                let Some(Ok(msg)) = msg else { return };
                let f = match client_frame(msg, v5) {
                    Ok(Some(f)) => f,
                    Ok(None) => continue,
                    Err(()) => return,
                };
                pending_bytes += cost(&f);
                pending.push_back(f);
            }
        }
    };
    let status = status.unwrap_or_else(|| {
        Bytes::from(
            serde_json::to_vec(&channel::failure_status(
                "the command's stream to the node ended without an exit status",
            ))
            .unwrap_or_default(),
        )
    });
    let mut msg = BytesMut::with_capacity(1 + status.len());
    msg.extend_from_slice(&[channel::ERROR]);
    msg.extend_from_slice(&status);
    let _ = ws.send(Message::Binary(msg.freeze())).await;
    let _ = ws
        .send(Message::Close(Some(CloseFrame {
            code: 1000,
            reason: "".into(),
        })))
        .await;
}

/// `pods/<name>/portforward`.
pub(super) async fn port_forward(
    st: &ApiState,
    mut parts: Parts,
    ns: &str,
    name: &str,
) -> Result<Response> {
    let (_pod, at) = locate(st, ns, name, "forward ports of")?;
    let target = Arc::new(Target {
        at,
        ns: ns.to_string(),
        pod: name.to_string(),
    });
    if is_websocket(&parts) {
        let ws = WebSocketUpgrade::from_request_parts(&mut parts, &())
            .await
            .map_err(|e| ApiError::bad_request(format!("websocket upgrade: {e}")))?
            .protocols([SPDY_PORTFORWARD_WS, channel::V4]);
        match ws.selected_protocol().and_then(|p| p.to_str().ok()) {
            Some(SPDY_PORTFORWARD_WS) => {}
            Some(_) => {
                // The channel protocol of client libraries: `?ports=` names the ports.
                let ports = channel_ports(parts.uri.query())?;
                return Ok(ws.on_upgrade(move |socket| channel_forward(socket, target, ports)));
            }
            None => {
                return Err(ApiError::bad_request(format!(
                    "none of the offered WebSocket subprotocols is supported; kedge forwards \
                     ports with {SPDY_PORTFORWARD_WS} or {}",
                    channel::V4
                )));
            }
        }
        return Ok(ws.on_upgrade(move |socket| async move {
            let (a, b) = tokio::io::duplex(4 * CHUNK);
            tokio::join!(websocket_bytes(socket, a), spdy_session(b, target));
        }));
    }
    let spdy_upgrade = parts
        .headers
        .get(header::UPGRADE)
        .and_then(|v| v.to_str().ok())
        .is_some_and(|v| v.eq_ignore_ascii_case("SPDY/3.1"));
    let on_upgrade = parts
        .extensions
        .remove::<hyper::upgrade::OnUpgrade>()
        .filter(|_| spdy_upgrade)
        .ok_or_else(|| {
            ApiError::bad_request(format!(
                "port-forward needs a WebSocket ({SPDY_PORTFORWARD_WS}) or SPDY/3.1 upgrade"
            ))
        })?;
    tokio::spawn(async move {
        match on_upgrade.await {
            Ok(io) => spdy_session(TokioIo::new(io), target).await,
            Err(e) => tracing::debug!(error = %e, "port-forward upgrade failed"),
        }
    });
    let mut r = Response::new(Body::empty());
    *r.status_mut() = StatusCode::SWITCHING_PROTOCOLS;
    let h = r.headers_mut();
    h.insert(header::CONNECTION, HeaderValue::from_static("Upgrade"));
    h.insert(header::UPGRADE, HeaderValue::from_static("SPDY/3.1"));
    h.insert(
        "X-Stream-Protocol-Version",
        HeaderValue::from_static(PORTFORWARD_PROTOCOL),
    );
    Ok(r.into_response())
}

/// `ports=80,8080` (or repeated `ports`): the ports of a channel-protocol port-forward.
pub(crate) fn channel_ports(query: Option<&str>) -> Result<Vec<u16>> {
    let mut ports = Vec::new();
    for (k, v) in url::form_urlencoded::parse(query.unwrap_or("").as_bytes()) {
        if k == "ports" {
            for p in v.split(',').filter(|p| !p.trim().is_empty()) {
                let port = p
                    .trim()
                    .parse::<u16>()
                    .ok()
                    .filter(|p| *p > 0)
                    .ok_or_else(|| ApiError::bad_request(format!("invalid port {p:?}")))?;
                ports.push(port);
            }
        }
    }
    // Channels are one byte: data 2i, error 2i+1.
    if ports.is_empty() || ports.len() > 127 {
        return Err(ApiError::bad_request(
            "query parameter \"ports\" must name between 1 and 127 ports",
        ));
    }
    Ok(ports)
}

/// The channel protocol's port-forward (`v4.channel.k8s.io`): one connection per port for
/// the life of the WebSocket, data on channel 2i and errors on 2i+1, each channel opened by
/// a frame carrying its port (2 bytes, little-endian).
async fn channel_forward(mut ws: WebSocket, target: Arc<Target>, ports: Vec<u16>) {
    let (out, mut rx) = mpsc::channel::<(u8, Bytes)>(64);
    let mut inbound = Vec::new();
    let mut relays = tokio::task::JoinSet::new();
    for (i, port) in ports.iter().copied().enumerate() {
        let data_ch = (2 * i) as u8;
        for ch in [data_ch, data_ch + 1] {
            let mut m = BytesMut::with_capacity(3);
            m.extend_from_slice(&[ch]);
            m.extend_from_slice(&port.to_le_bytes());
            if ws.send(Message::Binary(m.freeze())).await.is_err() {
                return;
            }
        }
        let (tx, rx) = mpsc::channel::<Option<Bytes>>(16);
        inbound.push(tx);
        let (target, out) = (target.clone(), out.clone());
        relays.spawn(async move {
            let (err_tx, mut err_rx) = mpsc::channel::<spdy::Frame>(64);
            // Reuse the SPDY relay with stream ids as channel numbers.
            let relay = relay_connection(
                target,
                port,
                u32::from(data_ch) + 1,
                u32::from(data_ch),
                rx,
                err_tx,
            );
            // Done once the error channel ends: the pod closed the connection (or it never
            // opened); this protocol has no half-close to wait for from the client.
            tokio::pin!(relay);
            let mut relay_done = false;
            loop {
                tokio::select! {
                    () = &mut relay, if !relay_done => relay_done = true,
                    f = err_rx.recv() => match f {
                        Some(spdy::Frame::Data { stream, data, fin }) => {
                            if !data.is_empty() && out.send((stream as u8, data)).await.is_err() {
                                return;
                            }
                            if fin && stream == u32::from(data_ch) + 1 {
                                return;
                            }
                        }
                        Some(_) => {}
                        None => return,
                    },
                }
            }
        });
    }
    drop(out);
    let mut open = ports.len();
    loop {
        tokio::select! {
            msg = ws.recv() => match msg {
                Some(Ok(Message::Binary(b))) => {
                    let Some((&ch, data)) = b.split_first() else { continue };
                    if ch % 2 == 0
                        && let Some(tx) = inbound.get(usize::from(ch / 2))
                        && !data.is_empty()
                    {
                        let _ = tx.send(Some(b.slice(1..))).await;
                    }
                }
                Some(Ok(Message::Close(_))) | None | Some(Err(_)) => break,
                Some(Ok(_)) => {}
            },
            item = rx.recv() => match item {
                Some((ch, data)) => {
                    let mut m = BytesMut::with_capacity(1 + data.len());
                    m.extend_from_slice(&[ch]);
                    m.extend_from_slice(&data);
                    if ws.send(Message::Binary(m.freeze())).await.is_err() {
                        break;
                    }
                }
                None => break,
            },
            Some(_) = relays.join_next() => {
                open -= 1;
                if open == 0 {
                    // Drain what the relays queued, then close.
                    while let Ok((ch, data)) = rx.try_recv() {
                        let mut m = BytesMut::with_capacity(1 + data.len());
                        m.extend_from_slice(&[ch]);
                        m.extend_from_slice(&data);
                        let _ = ws.send(Message::Binary(m.freeze())).await;
                    }
                    break;
                }
            }
        }
    }
    let _ = ws.send(Message::Close(None)).await;
}

/// Binary WebSocket messages ↔ a byte stream (SPDY frames may span messages).
async fn websocket_bytes(mut ws: WebSocket, io: tokio::io::DuplexStream) {
    let (mut rd, mut wr) = tokio::io::split(io);
    let mut buf = BytesMut::with_capacity(CHUNK);
    loop {
        tokio::select! {
            msg = ws.recv() => match msg {
                Some(Ok(Message::Binary(b))) => {
                    if wr.write_all(&b).await.is_err() {
                        break;
                    }
                }
                Some(Ok(Message::Close(_))) | None | Some(Err(_)) => break,
                Some(Ok(_)) => {}
            },
            n = rd.read_buf(&mut buf) => match n {
                Ok(0) | Err(_) => break,
                Ok(_) => {
                    if ws.send(Message::Binary(buf.split().freeze())).await.is_err() {
                        break;
                    }
                    buf.reserve(CHUNK);
                }
            },
        }
    }
    let _ = ws.send(Message::Close(None)).await;
}

struct Target {
    at: Located,
    ns: String,
    pod: String,
}

/// The two SPDY streams kubectl opens per forwarded connection.
#[derive(Default)]
struct Pair {
    port: u16,
    error: Option<u32>,
    data: Option<(u32, mpsc::Receiver<Option<Bytes>>)>,
}

/// Serves one SPDY/3.1 port-forward connection until the client closes it.
async fn spdy_session<IO>(io: IO, target: Arc<Target>)
where
    IO: AsyncRead + AsyncWrite + Send + 'static,
{
    let (mut rd, wr) = tokio::io::split(io);
    let (out, rx) = mpsc::channel::<spdy::Frame>(64);
    let writer = tokio::spawn(write_spdy(wr, rx));
    let mut decoder = spdy::Decoder::default();
    let mut buf = BytesMut::with_capacity(CHUNK);
    // Inbound data of each data stream, to its connection's relay (None = FIN).
    let mut inbound: HashMap<u32, mpsc::Sender<Option<Bytes>>> = HashMap::new();
    let mut pairs: HashMap<String, Pair> = HashMap::new();
    let mut relays = tokio::task::JoinSet::new();
    loop {
        let frame = match decoder.decode(&mut buf) {
            Ok(Some(f)) => f,
            Ok(None) => match rd.read_buf(&mut buf).await {
                Ok(0) | Err(_) => break,
                Ok(_) => continue,
            },
            Err(e) => {
                tracing::debug!(error = %e, "port-forward: bad spdy input");
                let _ = out
                    .send(spdy::Frame::GoAway {
                        last_stream: 0,
                        status: 1,
                    })
                    .await;
                break;
            }
        };
        match frame {
            spdy::Frame::SynStream {
                stream, headers, ..
            } => {
                let kind = spdy::header(&headers, "streamtype").unwrap_or("");
                let port = spdy::header(&headers, "port").and_then(|p| p.parse::<u16>().ok());
                let request = spdy::header(&headers, "requestid").map(str::to_string);
                let (Some(port), Some(request), "error" | "data") = (port, request, kind) else {
                    let _ = out
                        .send(spdy::Frame::RstStream {
                            stream,
                            status: spdy::RST_PROTOCOL_ERROR,
                        })
                        .await;
                    continue;
                };
                let reply = spdy::Frame::SynReply {
                    stream,
                    fin: false,
                    headers: Vec::new(),
                };
                if out.send(reply).await.is_err() {
                    break;
                }
                let pair = pairs.entry(request.clone()).or_default();
                pair.port = port;
                if kind == "error" {
                    pair.error = Some(stream);
                } else {
                    let (tx, rx) = mpsc::channel(16);
                    inbound.insert(stream, tx);
                    pair.data = Some((stream, rx));
                }
                if pair.error.is_some() && pair.data.is_some() {
                    let pair = pairs.remove(&request).expect("present");
                    let (data, rx) = pair.data.expect("checked");
                    relays.spawn(relay_connection(
                        target.clone(),
                        pair.port,
                        pair.error.expect("checked"),
                        data,
                        rx,
                        out.clone(),
                    ));
                }
            }
            spdy::Frame::Data { stream, fin, data } => {
                if let Some(tx) = inbound.get(&stream) {
                    let gone = (!data.is_empty() && tx.send(Some(data)).await.is_err())
                        || (fin && tx.send(None).await.is_err());
                    if fin || gone {
                        inbound.remove(&stream);
                    }
                }
            }
            spdy::Frame::RstStream { stream, .. } => {
                // Dropping the sender tells the relay its client is gone.
                inbound.remove(&stream);
            }
            spdy::Frame::Ping(id) => {
                // A failed send means the writer is gone; the next read ends the session.
                let _ = out.send(spdy::Frame::Ping(id)).await;
            }
            spdy::Frame::GoAway { .. } => break,
            _ => {}
        }
        while relays.try_join_next().is_some() {}
    }
    relays.shutdown().await;
    drop(out);
    let _ = writer.await;
}

async fn write_spdy<W: AsyncWrite + Unpin>(mut w: W, mut rx: mpsc::Receiver<spdy::Frame>) {
    let mut enc = spdy::Encoder::default();
    let mut buf = BytesMut::new();
    while let Some(f) = rx.recv().await {
        let mut res = enc.encode(&f, &mut buf);
        while res.is_ok()
            && buf.len() < 4 * CHUNK
            && let Ok(f) = rx.try_recv()
        {
            res = enc.encode(&f, &mut buf);
        }
        if let Err(e) = res {
            tracing::debug!(error = %e, "port-forward: cannot encode a spdy frame");
            return;
        }
        if w.write_all(&buf).await.is_err() {
            return;
        }
        buf.clear();
    }
    let _ = w.shutdown().await;
}

/// One forwarded connection: a tunnel stream to the agent, spliced with the SPDY data
/// stream; failures are reported on the error stream, which kubectl prints.
async fn relay_connection(
    target: Arc<Target>,
    port: u16,
    error_stream: u32,
    data_stream: u32,
    mut inbound: mpsc::Receiver<Option<Bytes>>,
    out: mpsc::Sender<spdy::Frame>,
) {
    let data = |data: Bytes, fin: bool| spdy::Frame::Data {
        stream: data_stream,
        fin,
        data,
    };
    let error_fin = spdy::Frame::Data {
        stream: error_stream,
        fin: true,
        data: Bytes::new(),
    };
    let q: String = url::form_urlencoded::Serializer::new(String::new())
        .append_pair("port", &port.to_string())
        .append_pair("uid", &target.at.uid)
        .finish();
    let uri = format!("/portForward/{}/{}?{q}", target.ns, target.pod);
    let io = match open_tunnel(&target.at, uri, TCP_UPGRADE).await {
        Ok(Some(io)) => io,
        Ok(None) => {
            report(
                &out,
                error_stream,
                data_stream,
                "the node did not open the stream",
            )
            .await;
            return;
        }
        Err(e) => {
            report(&out, error_stream, data_stream, &e.message).await;
            return;
        }
    };
    let (mut rd, mut wr) = tokio::io::split(TokioIo::new(io));
    let up = async {
        while let Some(Some(b)) = inbound.recv().await {
            if wr.write_all(&b).await.is_err() {
                return;
            }
        }
        // FIN (Some(None)) or reset (channel closed): no more input for the pod.
        let _ = wr.shutdown().await;
    };
    let down = async {
        let mut buf = BytesMut::with_capacity(CHUNK);
        loop {
            buf.reserve(CHUNK);
            match rd.read_buf(&mut buf).await {
                Ok(n) if n > 0 => {
                    if out.send(data(buf.split().freeze(), false)).await.is_err() {
                        return;
                    }
                }
                _ => break,
            }
        }
        // kubectl finishes a connection once the data stream ends and the error stream
        // closes empty.
        let _ = out.send(data(Bytes::new(), true)).await;
        let _ = out.send(error_fin.clone()).await;
    };
    tokio::join!(up, down);
}

async fn report(out: &mpsc::Sender<spdy::Frame>, error_stream: u32, data_stream: u32, msg: &str) {
    for (stream, data) in [
        (error_stream, Bytes::copy_from_slice(msg.as_bytes())),
        (error_stream, Bytes::new()),
        (data_stream, Bytes::new()),
    ] {
        let fin = data.is_empty();
        let _ = out.send(spdy::Frame::Data { stream, fin, data }).await;
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn channel_protocol_ports() {
        assert_eq!(channel_ports(Some("ports=80")).unwrap(), [80]);
        assert_eq!(
            channel_ports(Some("ports=80,8080&ports=9090")).unwrap(),
            [80, 8080, 9090]
        );
        assert!(channel_ports(Some("ports=0")).is_err());
        assert!(channel_ports(Some("ports=http")).is_err());
        assert!(channel_ports(None).is_err());
    }

    /// An exec server answering one session per connection with output the node had ready
    /// before the client even connected: a line on stdout, then the exit status.
    async fn ready_output_server() -> std::net::SocketAddr {
        let app = axum::Router::new().route(
            "/exec",
            axum::routing::get(move |ws: WebSocketUpgrade| async move {
                let (mut node, relay_side) = tokio::io::duplex(64 * 1024);
                let mut out = BytesMut::new();
                Frame::new(channel::STDOUT, b"hello\n".to_vec()).encode(&mut out);
                Frame::new(channel::ERROR, br#"{"status":"Success"}"#.to_vec()).encode(&mut out);
                node.write_all(&out).await.unwrap();
                tokio::spawn(async move {
                    // Held open until the relay drops its side.
                    let _ = node.read_to_end(&mut Vec::new()).await;
                });
                ws.protocols(channel::PROTOCOLS)
                    .on_upgrade(move |socket| relay_exec(socket, relay_side, true))
            }),
        );
        let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
        let addr = listener.local_addr().unwrap();
        tokio::spawn(async move { axum::serve(listener, app).await });
        addr
    }

    /// A WebSocket handshake by hand, so that the test decides when its pong goes out.
    async fn raw_upgrade(addr: std::net::SocketAddr) -> tokio::net::TcpStream {
        let mut tcp = tokio::net::TcpStream::connect(addr).await.unwrap();
        let req = format!(
            "GET /exec HTTP/1.1\r\nHost: {addr}\r\nConnection: Upgrade\r\nUpgrade: websocket\r\n\
             Sec-WebSocket-Version: 13\r\nSec-WebSocket-Key: dGhlIHNhbXBsZSBub25jZQ==\r\n\
             Sec-WebSocket-Protocol: {}\r\n\r\n",
            channel::V5
        );
        tcp.write_all(req.as_bytes()).await.unwrap();
        // The response, one byte at a time so that nothing after it is read.
        let mut head = Vec::new();
        while !head.ends_with(b"\r\n\r\n") {
            head.push(tcp.read_u8().await.unwrap());
        }
        let head = String::from_utf8(head).unwrap();
        assert!(head.starts_with("HTTP/1.1 101"), "{head}");
        tcp
    }

    /// client-go before 1.33 drops output that arrives before it created its streams
    /// (kubernetes/kubernetes#131189): the relay sends none before the client answered its
    /// ping, and then all of it. A client that never answers gets it after `READY_WAIT`.
    #[tokio::test]
    async fn exec_output_waits_for_the_clients_pong() {
        let addr = ready_output_server().await;
        let mut tcp = raw_upgrade(addr).await;
        let mut ping = [0u8; 7];
        tcp.read_exact(&mut ping).await.unwrap();
        assert_eq!(&ping, b"\x89\x05kedge", "the first message is the ping");
        // No output while the pong is outstanding, though the node's is all there.
        let mut peek = [0u8; 1];
        let quiet = tokio::time::timeout(Duration::from_millis(200), tcp.peek(&mut peek)).await;
        assert!(quiet.is_err(), "output went out before the client's pong");
        // The pong (masked, as from every client): then stdout and the status follow.
        let mask = [1u8, 2, 3, 4];
        let mut pong = vec![0x8A, 0x80 | 5];
        pong.extend_from_slice(&mask);
        pong.extend(b"kedge".iter().zip(mask.iter().cycle()).map(|(b, m)| b ^ m));
        tcp.write_all(&pong).await.unwrap();
        let rest = read_until_closed(&mut tcp).await;
        assert!(contains(&rest, b"\x01hello\n"), "{rest:?}");
        assert!(contains(&rest, b"\x03{\"status\":\"Success\"}"), "{rest:?}");

        // A client that never answers pings still gets everything.
        let mut tcp = raw_upgrade(addr).await;
        let start = std::time::Instant::now();
        let rest = read_until_closed(&mut tcp).await;
        assert!(contains(&rest, b"\x01hello\n"), "{rest:?}");
        assert!(start.elapsed() >= READY_WAIT / 2, "{:?}", start.elapsed());
    }

    async fn read_until_closed(tcp: &mut tokio::net::TcpStream) -> Vec<u8> {
        let mut all = Vec::new();
        tokio::time::timeout(Duration::from_secs(10), async {
            let mut buf = [0u8; 4096];
            loop {
                match tcp.read(&mut buf).await {
                    Ok(0) | Err(_) => return,
                    Ok(n) => all.extend_from_slice(&buf[..n]),
                }
                // The relay's close frame ends the session; it waits for ours only so long.
                if all.windows(2).any(|w| w == [0x88, 0x02]) {
                    return;
                }
            }
        })
        .await
        .expect("the session ends");
        all
    }

    fn contains(hay: &[u8], needle: &[u8]) -> bool {
        hay.windows(needle.len()).any(|w| w == needle)
    }

    /// A client that leaves while the node takes none of its input (a process that reads no
    /// stdin and writes nothing) ends the relay, and so the node's side of the session.
    #[tokio::test]
    async fn an_exec_relay_sees_its_client_leave_while_the_node_takes_no_input() {
        use futures_util::SinkExt as _;
        use tokio_tungstenite::tungstenite::{self, client::IntoClientRequest as _};

        // The node's end of the stream: never read, and small, so the relay's input backs up.
        let (node, relay_side) = tokio::io::duplex(1024);
        let relay_side = Arc::new(std::sync::Mutex::new(Some(relay_side)));
        let app = axum::Router::new().route(
            "/exec",
            axum::routing::get(move |ws: WebSocketUpgrade| {
                let io = relay_side.lock().unwrap().take().expect("one session");
                async move {
                    ws.protocols(channel::PROTOCOLS)
                        .on_upgrade(move |socket| relay_exec(socket, io, true))
                }
            }),
        );
        let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
        let addr = listener.local_addr().unwrap();
        tokio::spawn(async move { axum::serve(listener, app).await });

        let mut req = format!("ws://{addr}/exec").into_client_request().unwrap();
        req.headers_mut().insert(
            header::SEC_WEBSOCKET_PROTOCOL,
            HeaderValue::from_static(channel::V5),
        );
        let tcp = tokio::net::TcpStream::connect(addr).await.unwrap();
        let (mut client, _) = tokio_tungstenite::client_async(req, tcp).await.unwrap();
        // More messages than the stream, the writer and the relay's queue to it take (at most
        // 17 + 16 before the relay holds any), fewer than its read-ahead holds (~120 of 1 KiB).
        for _ in 0..100 {
            let mut msg = vec![channel::STDIN];
            msg.extend_from_slice(&[b'x'; 1024]);
            client
                .send(tungstenite::Message::Binary(msg.into()))
                .await
                .unwrap();
        }
        client.close(None).await.unwrap();
        drop(client);
        // The relay ends and drops its side of the stream: the node sees it gone. It probes
        // with the bytes of one long output frame, which the relay only buffers meanwhile.
        let mut node = node;
        let mut header = BytesMut::new();
        Frame::new(channel::STDOUT, vec![b'o'; 60_000]).encode(&mut header);
        node.write_all(&header[..5]).await.unwrap();
        let gone = tokio::time::timeout(std::time::Duration::from_secs(10), async {
            loop {
                if node.write_all(b"x").await.is_err() {
                    return;
                }
                tokio::time::sleep(std::time::Duration::from_millis(20)).await;
            }
        })
        .await;
        assert!(gone.is_ok(), "the relay kept the node's stream open");
    }
}
