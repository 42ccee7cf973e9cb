//! HTTP/1.1 over one QUIC bidirectional stream, both directions.

use std::time::Duration;

use hyper_util::rt::TokioIo;
use hyper_util::service::TowerToHyperService;
use quinn::{RecvStream, SendStream};
use tokio_util::sync::CancellationToken;
use tracing::debug;

use crate::Error;

/// Streams one tunnel may hold open at once, each way, at most. Every API call, watch, log,
/// exec, port-forward and relayed Service connection is one; a fixed 100 (quinn's default) let
/// ~95 relayed connections stall a node's own API calls.
const MAX_STREAMS: u32 = 1024;
/// Streams a connection may open at first; [`StreamCredit`] doubles it whenever three quarters
/// of it are in use, up to [`MAX_STREAMS`]. What a connection holds grows with this window, not
/// with its use: quinn keeps the receive state of every stream the peer may still open, and
/// recycles a finished stream's state into such a slot, so a connection that ever granted
/// 1,024 streams holds 1,024 of them (~360 bytes each) for the rest of its life, however few
/// are open. With a fixed 1,024, a server's memory rose for the first hour of a 1,000-agent
/// soak (an agent opens ~14 streams a minute) by ~0.4 MiB per agent.
const INITIAL_STREAMS: u32 = 32;
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
    t.max_concurrent_bidi_streams(quinn::VarInt::from_u32(INITIAL_STREAMS));
    t.receive_window(quinn::VarInt::from_u32(CONNECTION_WINDOW));
    t.max_idle_timeout(Some(
        quinn::IdleTimeout::try_from(idle).expect("an idle timeout fits a varint"),
    ));
    if keep_alive {
        t.keep_alive_interval(Some((idle / 4).min(Duration::from_secs(5))));
    }
    std::sync::Arc::new(t)
}

/// The bidirectional-stream window a connection grants its peer: starts at
/// [`INITIAL_STREAMS`] and doubles, up to [`MAX_STREAMS`], as soon as three quarters of it are
/// held by streams this end is still serving. Raised early, so a peer opening a burst of
/// streams rarely waits for credit; never lowered, since that would not give memory back:
/// quinn keeps the states freed streams leave in a pool that never shrinks.
pub(crate) struct StreamCredit {
    conn: quinn::Connection,
    state: std::sync::Arc<CreditState>,
}

struct CreditState {
    window: std::sync::atomic::AtomicU32,
    open: std::sync::atomic::AtomicU32,
}

/// One stream the peer opened, counted until it is dropped.
pub(crate) struct OpenStream(std::sync::Arc<CreditState>);

impl Drop for OpenStream {
    fn drop(&mut self) {
        self.0
            .open
            .fetch_sub(1, std::sync::atomic::Ordering::Relaxed);
    }
}

impl StreamCredit {
    /// For a connection made with [`transport_config`].
    pub(crate) fn new(conn: &quinn::Connection) -> Self {
        StreamCredit {
            conn: conn.clone(),
            state: std::sync::Arc::new(CreditState {
                window: INITIAL_STREAMS.into(),
                open: 0.into(),
            }),
        }
    }

    /// Counts a stream the peer opened (until the guard is dropped), widening the window when
    /// this leaves less than a quarter of it free.
    pub(crate) fn opened(&self) -> OpenStream {
        use std::sync::atomic::Ordering::Relaxed;
        let open = self.state.open.fetch_add(1, Relaxed) + 1;
        let window = self.state.window.load(Relaxed);
        if window < MAX_STREAMS && open.saturating_mul(4) >= window.saturating_mul(3) {
            let wider = window.saturating_mul(2).min(MAX_STREAMS);
            // One accept loop per connection calls this, so the load and store do not race.
            self.state.window.store(wider, Relaxed);
            self.conn
                .set_max_concurrent_bi_streams(quinn::VarInt::from_u32(wider));
            debug!(open, window = wider, "tunnel: widened the stream window");
        }
        OpenStream(self.state.clone())
    }

    /// The window granted now.
    #[cfg(test)]
    pub(crate) fn window(&self) -> u32 {
        self.state.window.load(std::sync::atomic::Ordering::Relaxed)
    }
}

pub(crate) type StreamIo = TokioIo<tokio::io::Join<RecvStream, SendStream>>;

pub(crate) fn stream_io(send: SendStream, recv: RecvStream) -> StreamIo {
    TokioIo::new(tokio::io::join(recv, send))
}

/// The receive half of a stream the peer opened, counted by [`StreamCredit`] for as long as
/// it lives: through an upgrade too, since exec, attach and port-forward keep the stream after
/// HTTP is done with it.
struct CountedRecv {
    recv: RecvStream,
    _open: OpenStream,
}

impl tokio::io::AsyncRead for CountedRecv {
    fn poll_read(
        mut self: std::pin::Pin<&mut Self>,
        cx: &mut std::task::Context<'_>,
        buf: &mut tokio::io::ReadBuf<'_>,
    ) -> std::task::Poll<std::io::Result<()>> {
        std::pin::Pin::new(&mut self.recv).poll_read(cx, buf)
    }
}

/// Serves one HTTP/1.1 connection on a stream the peer opened until the peer is done or
/// `cancel` fires. Upgrades stay enabled so exec/attach/port-forward can take the stream over
/// later.
pub(crate) async fn serve_stream(
    send: SendStream,
    recv: RecvStream,
    router: axum::Router,
    cancel: CancellationToken,
    open: OpenStream,
) {
    let recv = CountedRecv { recv, _open: open };
    let conn = hyper::server::conn::http1::Builder::new()
        .serve_connection(
            TokioIo::new(tokio::io::join(recv, send)),
            TowerToHyperService::new(router),
        )
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

#[cfg(test)]
mod tests {
    use super::*;
    use std::sync::Arc;
    use std::sync::atomic::{AtomicUsize, Ordering};

    use axum::routing::get;
    use bytes::Bytes;
    use http_body_util::{BodyExt as _, Full};
    use quinn::crypto::rustls::{QuicClientConfig, QuicServerConfig};

    /// A client connection to a fresh server endpoint, and the server's side of it.
    async fn connected() -> (quinn::Connection, quinn::Connection, quinn::Endpoint) {
        crate::install_crypto_provider();
        let cert = rcgen::generate_simple_self_signed(vec!["localhost".into()]).unwrap();
        let der = cert.cert.der().clone();
        let key = rustls::pki_types::PrivateKeyDer::Pkcs8(cert.signing_key.serialize_der().into());
        let mut tls = rustls::ServerConfig::builder()
            .with_no_client_auth()
            .with_single_cert(vec![der.clone()], key)
            .unwrap();
        tls.alpn_protocols = vec![crate::ALPN.to_vec()];
        let mut config =
            quinn::ServerConfig::with_crypto(Arc::new(QuicServerConfig::try_from(tls).unwrap()));
        config.transport_config(transport_config(false));
        let server = quinn::Endpoint::server(config, "127.0.0.1:0".parse().unwrap()).unwrap();
        let addr = server.local_addr().unwrap();

        let mut roots = rustls::RootCertStore::empty();
        roots.add(der).unwrap();
        let mut tls = rustls::ClientConfig::builder()
            .with_root_certificates(roots)
            .with_no_client_auth();
        tls.alpn_protocols = vec![crate::ALPN.to_vec()];
        let mut config =
            quinn::ClientConfig::new(Arc::new(QuicClientConfig::try_from(tls).unwrap()));
        config.transport_config(transport_config(true));
        let mut client = quinn::Endpoint::client("127.0.0.1:0".parse().unwrap()).unwrap();
        client.set_default_client_config(config);

        let (conn, accepted) = tokio::join!(
            async { client.connect(addr, "localhost").unwrap().await.unwrap() },
            async { server.accept().await.unwrap().await.unwrap() },
        );
        // The client endpoint lives as long as its connection.
        std::mem::forget(client);
        (conn, accepted, server)
    }

    /// A client connection to a server serving `router` on every stream with a
    /// [`StreamCredit`], and that credit.
    async fn pair(router: axum::Router) -> (quinn::Connection, Arc<StreamCredit>) {
        let (conn, accepted, server) = connected().await;
        let credit = Arc::new(StreamCredit::new(&accepted));
        let served = credit.clone();
        tokio::spawn(async move {
            let _server = server;
            while let Ok((send, recv)) = accepted.accept_bi().await {
                let open = served.opened();
                tokio::spawn(serve_stream(
                    send,
                    recv,
                    router.clone(),
                    CancellationToken::new(),
                    open,
                ));
            }
        });
        (conn, credit)
    }

    /// What quinn itself grants a fresh connection is the small first window, not the most a
    /// connection may have (only the grant bounds what quinn allocates for it).
    #[tokio::test]
    async fn a_fresh_connection_is_granted_the_first_window_only() {
        let (conn, _accepted, _server) = connected().await;
        let mut held = Vec::new();
        for i in 0..INITIAL_STREAMS {
            let opened = tokio::time::timeout(Duration::from_secs(5), conn.open_bi()).await;
            held.push(
                opened
                    .unwrap_or_else(|_| panic!("stream {i} waited"))
                    .unwrap(),
            );
        }
        assert!(
            tokio::time::timeout(Duration::from_millis(300), conn.open_bi())
                .await
                .is_err(),
            "a stream past the first window opened without more credit"
        );
    }

    async fn get_path(conn: &quinn::Connection, path: &str) -> u16 {
        let (send, recv) = conn.open_bi().await.unwrap();
        let req = http::Request::get(path)
            .body(Full::new(Bytes::new()))
            .unwrap();
        let resp = send_request(send, recv, req, "localhost", CancellationToken::new())
            .await
            .unwrap();
        let status = resp.status().as_u16();
        resp.into_body().collect().await.unwrap();
        status
    }

    /// A connection's stream window, and so what quinn keeps for it, follows how many streams
    /// are open at once, not how many were ever served: many requests one after the other
    /// leave it where it started, a burst of held streams widens it at once.
    #[tokio::test]
    async fn the_stream_window_grows_with_streams_held_not_with_streams_served() {
        let held = Arc::new(AtomicUsize::new(0));
        let (release, released) = tokio::sync::watch::channel(false);
        let router = axum::Router::new()
            .route("/", get(|| async { "ok" }))
            .route(
                "/hold",
                get({
                    let held = held.clone();
                    move || {
                        let held = held.clone();
                        let mut released = released.clone();
                        async move {
                            held.fetch_add(1, Ordering::SeqCst);
                            let _ = released.wait_for(|r| *r).await;
                            "done"
                        }
                    }
                }),
            );
        let test = async {
            let (conn, credit) = pair(router).await;
            // Ten times the first window, one after the other.
            for _ in 0..INITIAL_STREAMS * 10 {
                assert_eq!(get_path(&conn, "/").await, 200);
            }
            assert_eq!(credit.window(), INITIAL_STREAMS);

            // 200 streams held open at once: each waits until all have arrived, which they
            // can only if the window widened past 200 without any of them finishing.
            const BURST: usize = 200;
            let burst: Vec<_> = (0..BURST)
                .map(|_| {
                    let conn = conn.clone();
                    tokio::spawn(async move { get_path(&conn, "/hold").await })
                })
                .collect();
            while held.load(Ordering::SeqCst) < BURST {
                tokio::time::sleep(Duration::from_millis(10)).await;
            }
            let window = credit.window();
            assert!(
                (BURST as u32..=MAX_STREAMS).contains(&window),
                "window {window}"
            );
            release.send(true).unwrap();
            for b in burst {
                assert_eq!(b.await.unwrap(), 200);
            }
            // Never narrowed again: quinn keeps what it allocated for the wider window.
            assert_eq!(get_path(&conn, "/").await, 200);
            assert_eq!(credit.window(), window);
        };
        tokio::time::timeout(Duration::from_secs(30), test)
            .await
            .expect("the burst did not get through: the window did not widen");
    }
}
