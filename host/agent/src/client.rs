//! The agent's API client: plain Kubernetes REST, each request on its own stream of the
//! tunnel connection.
//!
//! Every request is bounded: a path that is half dead (the QUIC connection kept alive by
//! keep-alives while the server never answers, a stream that stalls) must not hang the agent's
//! loops, which retry on errors. While the tunnel is down, requests fail after a short wait
//! instead of the tunnel's longer one, so work that only reports (status, Events) does not
//! hold up the pods' restarts when the node is offline. Watches are not bounded in total
//! (they live for minutes) but idle: the server sends a bookmark every minute, so a silence
//! of [`WATCH_IDLE`] means the stream is dead.

use std::time::Duration;

use bytes::Bytes;
use http_body_util::combinators::UnsyncBoxBody;
use http_body_util::{BodyExt, Full};
use serde_json::Value;

use kedge_tunnel::agent::TunnelClient;

/// Longest wait for a whole non-watch request, answer body included. The agent's requests are
/// small (an object, a status patch, a list of this node's pods).
pub(crate) const REQUEST_TIMEOUT: Duration = Duration::from_secs(30);
/// Longest wait for a watch's response headers.
const WATCH_START_TIMEOUT: Duration = Duration::from_secs(30);
/// A watch that says nothing for this long is dead: more than twice the server's one-minute
/// bookmark interval (the agent always asks for bookmarks).
pub(crate) const WATCH_IDLE: Duration = Duration::from_secs(150);
/// How long a request waits for a tunnel that is down to come back before failing.
const OFFLINE_WAIT: Duration = Duration::from_secs(1);

#[derive(Debug, thiserror::Error)]
pub enum Error {
    #[error("tunnel: {0}")]
    Tunnel(#[from] kedge_tunnel::Error),
    #[error("not connected to the server")]
    Offline,
    #[error("{what}: no answer within {limit:?}")]
    Timeout { what: &'static str, limit: Duration },
    #[error("API {code} {reason}: {message}")]
    Api {
        code: u16,
        reason: String,
        message: String,
    },
    #[error("reading the response: {0}")]
    Body(String),
    #[error("decoding the response: {0}")]
    Decode(#[from] serde_json::Error),
}

impl Error {
    pub fn code(&self) -> Option<u16> {
        match self {
            Error::Api { code, .. } => Some(*code),
            _ => None,
        }
    }

    /// Whether the server could not be asked (tunnel down, no answer, broken stream, a 5xx,
    /// 429 or 408): what falls back to the node's local copies. An answer from the server
    /// (404, 403, ...) is not.
    pub(crate) fn is_unreachable(&self) -> bool {
        match self {
            Error::Tunnel(_) | Error::Offline | Error::Timeout { .. } | Error::Body(_) => true,
            // 429 and 408: the server is there but cannot take it now; try again later.
            Error::Api { code, .. } => *code >= 500 || *code == 429 || *code == 408,
            Error::Decode(_) => false,
        }
    }
}

/// `fut`, or [`Error::Timeout`] past `limit`.
async fn bounded<T>(
    what: &'static str,
    limit: Duration,
    fut: impl std::future::Future<Output = Result<T>>,
) -> Result<T> {
    tokio::time::timeout(limit, fut)
        .await
        .unwrap_or(Err(Error::Timeout { what, limit }))
}

pub type Result<T, E = Error> = std::result::Result<T, E>;

#[derive(Clone)]
pub struct Client {
    tunnel: TunnelClient,
}

impl Client {
    pub fn new(tunnel: TunnelClient) -> Self {
        Client { tunnel }
    }

    /// Whether the tunnel to the server is up right now.
    pub fn is_connected(&self) -> bool {
        *self.tunnel.connected().borrow()
    }

    /// Resolves once the tunnel is up after having been down (now or later): what waits for
    /// the server to be back waits on this rather than on a timer.
    pub async fn back_online(&self) {
        let mut connected = self.tunnel.connected();
        if *connected.borrow_and_update() {
            let _ = connected.wait_for(|c| !*c).await;
        }
        let _ = connected.wait_for(|c| *c).await;
    }

    async fn send(
        &self,
        method: http::Method,
        path: &str,
        content_type: &str,
        body: Option<&Value>,
    ) -> Result<http::Response<hyper::body::Incoming>> {
        let bytes = match body {
            Some(b) => Bytes::from(serde_json::to_vec(b)?),
            None => Bytes::new(),
        };
        let req = http::Request::builder()
            .method(method)
            .uri(path)
            .header(http::header::HOST, "kedge-server")
            .header(http::header::CONTENT_TYPE, content_type)
            .header(http::header::ACCEPT, "application/json")
            .body(Full::new(bytes))
            .expect("valid request");
        self.online().await?;
        Ok(self.tunnel.request(req).await?)
    }

    /// [`Error::Offline`] unless the tunnel is up, or comes back within [`OFFLINE_WAIT`].
    async fn online(&self) -> Result<()> {
        let mut connected = self.tunnel.connected();
        if !*connected.borrow_and_update() {
            // Down: give a reconnect in progress a moment, no more.
            let up = tokio::time::timeout(OFFLINE_WAIT, connected.wait_for(|c| *c)).await;
            if !matches!(up, Ok(Ok(_))) {
                return Err(Error::Offline);
            }
        }
        Ok(())
    }

    /// A `GET` upgraded to `token` on a stream of its own: after the server's `101`, the
    /// stream is the caller's (the relay between nodes). Any other answer is [`Error::Api`].
    /// Bounded by the caller.
    pub(crate) async fn upgrade(
        &self,
        path: &str,
        token: &'static str,
    ) -> Result<hyper::upgrade::Upgraded> {
        let req = http::Request::get(path)
            .header(http::header::HOST, "kedge-server")
            .header(http::header::CONNECTION, "upgrade")
            .header(http::header::UPGRADE, token)
            .header(http::header::ACCEPT, "application/json")
            .body(Full::new(Bytes::new()))
            .expect("valid request");
        self.online().await?;
        let mut resp = self.tunnel.request(req).await?;
        if resp.status() != http::StatusCode::SWITCHING_PROTOCOLS {
            let code = resp.status().as_u16();
            return Err(api_error(code, &read_body(resp).await?));
        }
        hyper::upgrade::on(&mut resp)
            .await
            .map_err(|e| Error::Body(format!("upgrading the stream: {e}")))
    }

    /// One request with a JSON answer; non-2xx answers become [`Error::Api`].
    pub async fn call(
        &self,
        method: http::Method,
        path: &str,
        content_type: &str,
        body: Option<&Value>,
    ) -> Result<Value> {
        let (status, bytes) = bounded("API request", REQUEST_TIMEOUT, async {
            let resp = self.send(method, path, content_type, body).await?;
            let status = resp.status();
            Ok((status, read_body(resp).await?))
        })
        .await?;
        if !status.is_success() {
            return Err(api_error(status.as_u16(), &bytes));
        }
        Ok(serde_json::from_slice(&bytes)?)
    }

    pub async fn get(&self, path: &str) -> Result<Value> {
        self.call(http::Method::GET, path, "application/json", None)
            .await
    }

    pub async fn create(&self, path: &str, body: &Value) -> Result<Value> {
        self.call(http::Method::POST, path, "application/json", Some(body))
            .await
    }

    pub async fn put(&self, path: &str, body: &Value) -> Result<Value> {
        self.call(http::Method::PUT, path, "application/json", Some(body))
            .await
    }

    pub async fn merge_patch(&self, path: &str, body: &Value) -> Result<Value> {
        self.call(
            http::Method::PATCH,
            path,
            "application/merge-patch+json",
            Some(body),
        )
        .await
    }

    /// A strategic merge patch: lists with a merge key (a pod's conditions, by type) are
    /// merged item by item, not replaced.
    pub async fn strategic_patch(&self, path: &str, body: &Value) -> Result<Value> {
        self.call(
            http::Method::PATCH,
            path,
            "application/strategic-merge-patch+json",
            Some(body),
        )
        .await
    }

    pub async fn delete(&self, path: &str, body: &Value) -> Result<Value> {
        self.call(http::Method::DELETE, path, "application/json", Some(body))
            .await
    }

    /// A watch: one JSON event per line, until the server ends it, the stream breaks or it
    /// stays silent for [`WATCH_IDLE`].
    pub async fn watch(&self, path: &str) -> Result<WatchLines> {
        let resp = bounded(
            "watch request",
            WATCH_START_TIMEOUT,
            self.send(http::Method::GET, path, "application/json", None),
        )
        .await?;
        if !resp.status().is_success() {
            let code = resp.status().as_u16();
            let body = bounded("watch request", WATCH_START_TIMEOUT, read_body(resp)).await?;
            return Err(api_error(code, &body));
        }
        Ok(WatchLines::new(
            resp.into_body().map_err(Into::into).boxed_unsync(),
            WATCH_IDLE,
        ))
    }
}

/// The whole body of a (non-streaming) response.
async fn read_body(resp: http::Response<hyper::body::Incoming>) -> Result<Bytes> {
    Ok(resp
        .into_body()
        .collect()
        .await
        .map_err(|e| Error::Body(e.to_string()))?
        .to_bytes())
}

/// An error answer: the `Status` body's reason and message (or the raw text).
fn api_error(code: u16, body: &[u8]) -> Error {
    let v: Value = serde_json::from_slice(body).unwrap_or_default();
    let field = |k: &str| v.get(k).and_then(Value::as_str).map(String::from);
    Error::Api {
        code,
        reason: field("reason").unwrap_or_default(),
        message: field("message")
            .unwrap_or_else(|| String::from_utf8_lossy(body).trim().to_string()),
    }
}

type BoxError = Box<dyn std::error::Error + Send + Sync>;

pub struct WatchLines {
    body: UnsyncBoxBody<Bytes, BoxError>,
    buf: Vec<u8>,
    idle: Duration,
}

impl WatchLines {
    fn new(body: UnsyncBoxBody<Bytes, BoxError>, idle: Duration) -> Self {
        WatchLines {
            body,
            buf: Vec::new(),
            idle,
        }
    }

    /// The next event; `None` when the watch ended, an error when it broke or went silent.
    pub async fn next(&mut self) -> Option<Result<Value>> {
        loop {
            if let Some(pos) = self.buf.iter().position(|b| *b == b'\n') {
                let line: Vec<u8> = self.buf.drain(..=pos).collect();
                if line.iter().all(u8::is_ascii_whitespace) {
                    continue;
                }
                return Some(serde_json::from_slice(&line).map_err(Error::from));
            }
            let Ok(frame) = tokio::time::timeout(self.idle, self.body.frame()).await else {
                return Some(Err(Error::Timeout {
                    what: "watch (silent)",
                    limit: self.idle,
                }));
            };
            match frame {
                None => return None,
                Some(Err(e)) => return Some(Err(Error::Body(e.to_string()))),
                Some(Ok(frame)) => {
                    if let Ok(data) = frame.into_data() {
                        self.buf.extend_from_slice(&data);
                    }
                }
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use http_body_util::StreamBody;

    /// A watch body fed by the test: frames sent on the channel, silence when nothing is.
    fn body() -> (
        tokio::sync::mpsc::Sender<Bytes>,
        UnsyncBoxBody<Bytes, BoxError>,
    ) {
        let (tx, rx) = tokio::sync::mpsc::channel::<Bytes>(4);
        let stream = futures_util::stream::unfold(rx, |mut rx| async move {
            let b = rx.recv().await?;
            Some((Ok::<_, BoxError>(hyper::body::Frame::data(b)), rx))
        });
        (tx, StreamBody::new(stream).boxed_unsync())
    }

    /// Guards against a half-dead path hanging the agent: a request that gets no answer
    /// fails after its limit instead of waiting forever.
    #[tokio::test(start_paused = true)]
    async fn a_request_without_an_answer_times_out() {
        let started = tokio::time::Instant::now();
        let res: Result<()> = bounded(
            "API request",
            REQUEST_TIMEOUT,
            std::future::pending::<Result<()>>(),
        )
        .await;
        let e = res.unwrap_err();
        assert!(matches!(e, Error::Timeout { .. }), "{e}");
        assert!(e.is_unreachable());
        assert_eq!(started.elapsed(), REQUEST_TIMEOUT);
        let ok = bounded("API request", REQUEST_TIMEOUT, async { Ok(7) }).await;
        assert_eq!(ok.unwrap(), 7);
    }

    /// A watch lives as long as it keeps talking (events or bookmarks), and is declared dead
    /// after `idle` of silence rather than hanging.
    #[tokio::test(start_paused = true)]
    async fn a_silent_watch_is_declared_dead_but_a_talking_one_lives_on() {
        let idle = Duration::from_secs(150);
        let (tx, body) = body();
        let mut w = WatchLines::new(body, idle);
        let feeder = tokio::spawn(async move {
            for i in 0..4 {
                // Each line comes well within `idle` of the last, the whole well past it.
                tokio::time::sleep(Duration::from_secs(100)).await;
                let line = format!("{{\"type\":\"BOOKMARK\",\"n\":{i}}}\n");
                // Split across frames: lines are reassembled.
                let (a, b) = line.split_at(5);
                tx.send(Bytes::from(a.to_string())).await.unwrap();
                tx.send(Bytes::from(b.to_string())).await.unwrap();
            }
            tx
        });
        for i in 0..4 {
            let ev = w.next().await.unwrap().unwrap();
            assert_eq!(ev["n"], i);
        }
        let _tx = feeder.await.unwrap();
        let before = tokio::time::Instant::now();
        let e = w.next().await.unwrap().unwrap_err();
        assert!(matches!(e, Error::Timeout { .. }), "{e}");
        assert_eq!(before.elapsed(), idle);
    }

    #[test]
    fn answers_from_the_server_are_not_unreachability() {
        let api = |code| Error::Api {
            code,
            reason: String::new(),
            message: String::new(),
        };
        assert!(!api(404).is_unreachable());
        assert!(!api(403).is_unreachable());
        assert!(api(503).is_unreachable());
        assert!(Error::Offline.is_unreachable());
    }
}
