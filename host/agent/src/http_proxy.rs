//! The agent's half of the API server proxy (`pods/…/proxy`, `services/…/proxy`,
//! `nodes/NAME:PORT/proxy`): the server sends the request through the tunnel to
//! `/podProxy/<scheme>/<ip>/<port>/<path>?<query>` on the kubelet router, and the agent opens
//! the connection to `ip:port` — a pod on this node, or the node itself — and forwards it.
//!
//! Request and response bodies are streamed both ways (hyper's client on one connection),
//! the request passed on as it came (path and query byte for byte). `https`: TLS
//! (tokio-rustls) without certificate checks, as kube-apiserver's pod and service proxy
//! does. Redirects are never followed: the answer, `Location` and all, is the backend's.
//!
//! The agent connects to whatever IP it is given; the server chose it from the pod's status
//! or an endpoint (it is the only caller: the kubelet router is reached through the tunnel
//! only).

use std::net::{IpAddr, SocketAddr};
use std::sync::Arc;
use std::time::Duration;

use axum::body::Body;
use axum::extract::{Request, State};
use axum::http::{HeaderValue, StatusCode, header};
use axum::response::{IntoResponse, Response};
use hyper_util::rt::TokioIo;

use super::kubelet::Kubelet;

/// How long a connection to the backend may take (kube-apiserver's proxy dialer: 30 s).
const CONNECT_TIMEOUT: Duration = Duration::from_secs(30);
/// `/healthz` of the kubelet router: reaching it through `nodes/NAME/proxy/healthz` says the
/// node's agent answers through its tunnel.
pub(crate) async fn healthz() -> &'static str {
    "ok"
}

/// The target of a `/podProxy/…` path.
#[derive(Debug, PartialEq, Eq)]
struct Target {
    https: bool,
    addr: SocketAddr,
    /// Origin-form path and query for the backend.
    path: String,
}

fn parse_target(path_and_query: &str) -> Result<Target, String> {
    let rest = path_and_query
        .strip_prefix("/podProxy/")
        .ok_or("not a proxy path")?;
    let mut it = rest.splitn(4, '/');
    let scheme = it.next().unwrap_or_default();
    let ip = it.next().unwrap_or_default();
    let port = it.next().unwrap_or_default();
    let path = format!("/{}", it.next().unwrap_or_default());
    let https = match scheme {
        "http" => false,
        "https" => true,
        other => return Err(format!("unsupported scheme {other:?}")),
    };
    let ip: IpAddr = ip.parse().map_err(|_| format!("invalid IP {ip:?}"))?;
    let port: u16 = port
        .parse()
        .ok()
        .filter(|p| *p != 0)
        .ok_or_else(|| format!("invalid port {port:?}"))?;
    Ok(Target {
        https,
        addr: SocketAddr::new(ip, port),
        path,
    })
}

/// A Kubernetes Status, the way the server's proxy errors look.
fn status(code: StatusCode, message: String) -> Response {
    let reason = if code == StatusCode::SERVICE_UNAVAILABLE {
        "ServiceUnavailable"
    } else {
        "BadRequest"
    };
    let body = serde_json::json!({"kind": "Status", "apiVersion": "v1", "metadata": {},
        "status": "Failure", "message": message, "reason": reason, "code": code.as_u16()});
    (
        code,
        [(header::CONTENT_TYPE, "application/json")],
        body.to_string(),
    )
        .into_response()
}

fn unreachable_backend(e: impl std::fmt::Display) -> Response {
    status(
        StatusCode::SERVICE_UNAVAILABLE,
        format!("error trying to reach service: {e}"),
    )
}

/// An error with its causes: hyper's own messages ("error sending request",
/// "client error (Connect)") leave out why, which is what the caller of the proxy needs
/// ("Connection refused", a TLS alert).
fn with_causes(e: &dyn std::error::Error) -> String {
    let mut out = e.to_string();
    let mut cause = e.source();
    while let Some(c) = cause {
        let text = c.to_string();
        // Some errors repeat their cause in their own message.
        if !out.ends_with(&text) {
            out.push_str(": ");
            out.push_str(&text);
        }
        cause = c.source();
    }
    out
}

/// `/podProxy/<scheme>/<ip>/<port>/<path>`: forwards the request to `ip:port`.
pub(crate) async fn pod_proxy(State(kubelet): State<Arc<Kubelet>>, req: Request) -> Response {
    let pq = req
        .uri()
        .path_and_query()
        .map(|p| p.as_str().to_string())
        .unwrap_or_default();
    let target = match parse_target(&pq) {
        Ok(t) => t,
        Err(e) => return status(StatusCode::BAD_REQUEST, format!("proxy request: {e}")),
    };
    let (mut parts, body) = req.into_parts();
    kedge_tunnel::headers::strip_hop_by_hop(&mut parts.headers);
    if let Ok(host) = HeaderValue::from_str(&target.addr.to_string()) {
        parts.headers.insert(header::HOST, host);
    }
    tracing::debug!(addr = %target.addr, path = %target.path, https = target.https, method = %parts.method, "proxying to the backend");
    let stream =
        match tokio::time::timeout(CONNECT_TIMEOUT, tokio::net::TcpStream::connect(target.addr))
            .await
        {
            Ok(Ok(s)) => s,
            Ok(Err(e)) => return unreachable_backend(format!("dial tcp {}: {e}", target.addr)),
            Err(_) => return unreachable_backend(format!("dial tcp {}: i/o timeout", target.addr)),
        };
    if target.https {
        let handshake = tokio::time::timeout(CONNECT_TIMEOUT, tls(stream, target.addr));
        return match handshake.await {
            Ok(Ok(s)) => forward(s, &target, parts, body, kubelet.cancel.clone()).await,
            Ok(Err(e)) => unreachable_backend(format!("https://{}: {e}", target.addr)),
            Err(_) => {
                unreachable_backend(format!("https://{}: tls handshake timed out", target.addr))
            }
        };
    }
    forward(stream, &target, parts, body, kubelet.cancel.clone()).await
}

/// Sends the request over `io` (HTTP/1.1) and streams the answer back.
async fn forward<IO>(
    io: IO,
    target: &Target,
    parts: http::request::Parts,
    body: Body,
    cancel: tokio_util::sync::CancellationToken,
) -> Response
where
    IO: tokio::io::AsyncRead + tokio::io::AsyncWrite + Unpin + Send + 'static,
{
    let (mut sender, conn) = match hyper::client::conn::http1::handshake(TokioIo::new(io)).await {
        Ok(x) => x,
        Err(e) => return unreachable_backend(with_causes(&e)),
    };
    // The connection lives while the response body is read; it ends with the backend's
    // answer, or when the agent stops.
    tokio::spawn(async move {
        tokio::select! {
            r = conn => if let Err(e) = r {
                tracing::debug!(error = %e, "proxied connection ended with an error");
            },
            () = cancel.cancelled() => {}
        }
    });
    let mut out = http::Request::from_parts(parts, body);
    *out.uri_mut() = match target.path.parse() {
        Ok(u) => u,
        Err(e) => return status(StatusCode::BAD_REQUEST, format!("proxy path: {e}")),
    };
    match sender.send_request(out).await {
        Ok(resp) => {
            let (mut p, b) = resp.into_parts();
            kedge_tunnel::headers::strip_hop_by_hop(&mut p.headers);
            Response::from_parts(p, Body::new(b))
        }
        Err(e) => unreachable_backend(with_causes(&e)),
    }
}

/// TLS to the backend without certificate checks, as kube-apiserver's pod and service proxy
/// (its transport skips verification): the backend is chosen by the server from the pod's
/// status or an endpoint, not by name, and pods' certificates rarely name their address.
async fn tls(stream: tokio::net::TcpStream, addr: SocketAddr) -> Result<TlsStream, String> {
    static CONFIG: std::sync::OnceLock<Arc<tokio_rustls::rustls::ClientConfig>> =
        std::sync::OnceLock::new();
    let config = CONFIG.get_or_init(|| {
        kedge_tunnel::install_crypto_provider();
        let provider = tokio_rustls::rustls::crypto::CryptoProvider::get_default()
            .cloned()
            .expect("installed above");
        let mut config = tokio_rustls::rustls::ClientConfig::builder()
            .dangerous()
            .with_custom_certificate_verifier(Arc::new(AnyCertificate(provider)))
            .with_no_client_auth();
        config.alpn_protocols = vec![b"http/1.1".to_vec()];
        Arc::new(config)
    });
    let name = tokio_rustls::rustls::pki_types::ServerName::IpAddress(addr.ip().into());
    tokio_rustls::TlsConnector::from(config.clone())
        .connect(name, stream)
        .await
        .map_err(|e| format!("tls handshake with {addr}: {e}"))
}

type TlsStream = tokio_rustls::client::TlsStream<tokio::net::TcpStream>;

/// Accepts any certificate; signatures are still checked (the handshake stays sound).
#[derive(Debug)]
struct AnyCertificate(Arc<tokio_rustls::rustls::crypto::CryptoProvider>);

impl tokio_rustls::rustls::client::danger::ServerCertVerifier for AnyCertificate {
    fn verify_server_cert(
        &self,
        _end_entity: &tokio_rustls::rustls::pki_types::CertificateDer<'_>,
        _intermediates: &[tokio_rustls::rustls::pki_types::CertificateDer<'_>],
        _server_name: &tokio_rustls::rustls::pki_types::ServerName<'_>,
        _ocsp_response: &[u8],
        _now: tokio_rustls::rustls::pki_types::UnixTime,
    ) -> Result<tokio_rustls::rustls::client::danger::ServerCertVerified, tokio_rustls::rustls::Error>
    {
        Ok(tokio_rustls::rustls::client::danger::ServerCertVerified::assertion())
    }

    fn verify_tls12_signature(
        &self,
        message: &[u8],
        cert: &tokio_rustls::rustls::pki_types::CertificateDer<'_>,
        dss: &tokio_rustls::rustls::DigitallySignedStruct,
    ) -> Result<
        tokio_rustls::rustls::client::danger::HandshakeSignatureValid,
        tokio_rustls::rustls::Error,
    > {
        tokio_rustls::rustls::crypto::verify_tls12_signature(
            message,
            cert,
            dss,
            &self.0.signature_verification_algorithms,
        )
    }

    fn verify_tls13_signature(
        &self,
        message: &[u8],
        cert: &tokio_rustls::rustls::pki_types::CertificateDer<'_>,
        dss: &tokio_rustls::rustls::DigitallySignedStruct,
    ) -> Result<
        tokio_rustls::rustls::client::danger::HandshakeSignatureValid,
        tokio_rustls::rustls::Error,
    > {
        tokio_rustls::rustls::crypto::verify_tls13_signature(
            message,
            cert,
            dss,
            &self.0.signature_verification_algorithms,
        )
    }

    fn supported_verify_schemes(&self) -> Vec<tokio_rustls::rustls::SignatureScheme> {
        self.0.signature_verification_algorithms.supported_schemes()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn kubelet() -> Arc<Kubelet> {
        Arc::new(Kubelet {
            logs: Default::default(),
            oci: None,
            wasm: kedge_runtime::wasm::WasmRuntime::new().unwrap(),
            cancel: tokio_util::sync::CancellationToken::new(),
            metrics: Default::default(),
        })
    }

    /// Reads what a backend was sent, up to a body ending in `hello` (or the end of the
    /// stream), bounded in time and size.
    async fn read_request(s: &mut (impl tokio::io::AsyncRead + Unpin)) -> String {
        use tokio::io::AsyncReadExt as _;
        let mut got = Vec::new();
        let mut buf = [0u8; 4096];
        let deadline = tokio::time::Instant::now() + Duration::from_secs(10);
        while !got.ends_with(b"hello") && got.len() < 65536 {
            let n = tokio::time::timeout_at(deadline, s.read(&mut buf))
                .await
                .unwrap()
                .unwrap();
            if n == 0 {
                break;
            }
            got.extend_from_slice(&buf[..n]);
        }
        String::from_utf8_lossy(&got).to_string()
    }

    #[test]
    fn targets_parse() {
        let t = parse_target("/podProxy/http/10.42.0.5/8080/a/b%20c?x=1&y").unwrap();
        assert_eq!(
            t,
            Target {
                https: false,
                addr: "10.42.0.5:8080".parse().unwrap(),
                path: "/a/b%20c?x=1&y".into()
            }
        );
        let t = parse_target("/podProxy/https/fd00::5/443").unwrap();
        assert!(t.https);
        assert_eq!(t.addr.to_string(), "[fd00::5]:443");
        assert_eq!(t.path, "/");
        for bad in [
            "/podProxy/ftp/10.0.0.1/21/",
            "/podProxy/http/web/80/",
            "/podProxy/http/10.0.0.1/0/",
            "/podProxy/http/10.0.0.1/x/",
            "/other",
        ] {
            assert!(parse_target(bad).is_err(), "{bad}");
        }
    }

    /// A request goes to the backend with its method, path, query, headers (hop-by-hop
    /// ones dropped) and streamed body; the answer, a redirect included, comes back as it is.
    #[tokio::test]
    async fn forwards_to_a_backend_and_back() {
        use tokio::io::AsyncWriteExt as _;
        let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
        let addr = listener.local_addr().unwrap();
        let backend = tokio::spawn(async move {
            let (mut s, _) = listener.accept().await.unwrap();
            let got = read_request(&mut s).await;
            s.write_all(b"HTTP/1.1 302 Found\r\nLocation: /elsewhere\r\nX-Backend: yes\r\nContent-Length: 2\r\n\r\nok")
                .await
                .unwrap();
            got
        });
        let req = http::Request::post(format!("/podProxy/http/127.0.0.1/{}/x/y?q=1", addr.port()))
            .header("x-custom", "1")
            .header(header::CONNECTION, "keep-alive, x-hop")
            .header("x-hop", "drop me")
            .header(header::CONTENT_LENGTH, "5")
            .body(Body::from("hello"))
            .unwrap();
        let resp = pod_proxy(State(kubelet()), req).await;
        assert_eq!(resp.status(), StatusCode::FOUND);
        assert_eq!(resp.headers()["location"], "/elsewhere");
        assert_eq!(resp.headers()["x-backend"], "yes");
        let body = axum::body::to_bytes(resp.into_body(), 1024).await.unwrap();
        assert_eq!(&body[..], b"ok");
        let seen = backend.await.unwrap().to_ascii_lowercase();
        assert!(seen.starts_with("post /x/y?q=1 http/1.1\r\n"), "{seen}");
        assert!(
            seen.contains(&format!("host: 127.0.0.1:{}\r\n", addr.port())),
            "{seen}"
        );
        assert!(seen.contains("x-custom: 1\r\n"), "{seen}");
        assert!(!seen.contains("x-hop"), "{seen}");
        assert!(seen.ends_with("\r\n\r\nhello"), "{seen}");
    }

    #[tokio::test]
    async fn an_unreachable_backend_is_a_503_status() {
        let port = {
            let l = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
            l.local_addr().unwrap().port()
        };
        let req = http::Request::get(format!("/podProxy/http/127.0.0.1/{port}/"))
            .body(Body::empty())
            .unwrap();
        let resp = pod_proxy(State(kubelet()), req).await;
        assert_eq!(resp.status(), StatusCode::SERVICE_UNAVAILABLE);
        let body = axum::body::to_bytes(resp.into_body(), 4096).await.unwrap();
        let v: serde_json::Value = serde_json::from_slice(&body).unwrap();
        assert_eq!(v["reason"], "ServiceUnavailable");
        assert!(
            v["message"]
                .as_str()
                .unwrap()
                .starts_with("error trying to reach service: dial tcp 127.0.0.1:"),
            "{v}"
        );
    }

    /// A TLS acceptor with a fresh self-signed certificate for a name the backend is not
    /// reached by: the proxy must check neither the chain nor the name, as kube-apiserver's
    /// pod and service proxy does not. HTTP/1.1 only, so the backend can answer by hand.
    fn self_signed_acceptor() -> tokio_rustls::TlsAcceptor {
        use tokio_rustls::rustls;
        let key = rcgen::generate_simple_self_signed(["backend.invalid".to_string()]).unwrap();
        let provider = Arc::new(rustls::crypto::ring::default_provider());
        let mut cfg = rustls::ServerConfig::builder_with_provider(provider)
            .with_safe_default_protocol_versions()
            .unwrap()
            .with_no_client_auth()
            .with_single_cert(
                vec![key.cert.der().clone()],
                rustls::pki_types::PrivatePkcs8KeyDer::from(key.signing_key.serialize_der()).into(),
            )
            .unwrap();
        cfg.alpn_protocols = vec![b"http/1.1".to_vec()];
        tokio_rustls::TlsAcceptor::from(Arc::new(cfg))
    }

    /// The `https:` backend: over TLS the request keeps its method, path, query, headers
    /// (hop-by-hop ones dropped both ways) and body, and the answer, a redirect included,
    /// comes back as it is.
    #[tokio::test]
    async fn forwards_to_an_https_backend_and_back() {
        use tokio::io::AsyncWriteExt as _;
        let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
        let addr = listener.local_addr().unwrap();
        let tls = self_signed_acceptor();
        let backend = tokio::spawn(async move {
            let (tcp, _) = listener.accept().await.unwrap();
            let mut s = tls.accept(tcp).await.unwrap();
            let got = read_request(&mut s).await;
            s.write_all(
                b"HTTP/1.1 302 Found\r\nLocation: /elsewhere\r\nX-Backend: yes\r\n\
                  Connection: x-resp-hop\r\nX-Resp-Hop: 1\r\nKeep-Alive: timeout=5\r\n\
                  Content-Length: 2\r\n\r\nok",
            )
            .await
            .unwrap();
            s.shutdown().await.unwrap();
            got
        });
        // The path and query as sent: `..` segments and a quote are the backend's to read.
        let req = http::Request::post(format!(
            "/podProxy/https/127.0.0.1/{}/a/../x?q='1'",
            addr.port()
        ))
        .header("x-custom", "1")
        .header(header::CONNECTION, "keep-alive, x-hop")
        .header("x-hop", "drop me")
        .header(header::CONTENT_LENGTH, "5")
        .body(Body::from("hello"))
        .unwrap();
        let resp = tokio::time::timeout(Duration::from_secs(30), pod_proxy(State(kubelet()), req))
            .await
            .unwrap();
        assert_eq!(resp.status(), StatusCode::FOUND);
        assert_eq!(resp.headers()["location"], "/elsewhere");
        assert_eq!(resp.headers()["x-backend"], "yes");
        for gone in ["connection", "x-resp-hop", "keep-alive"] {
            assert!(!resp.headers().contains_key(gone), "{:?}", resp.headers());
        }
        let body = axum::body::to_bytes(resp.into_body(), 1024).await.unwrap();
        assert_eq!(&body[..], b"ok");
        let seen = backend.await.unwrap().to_ascii_lowercase();
        assert!(
            seen.starts_with("post /a/../x?q='1' http/1.1\r\n"),
            "{seen}"
        );
        assert!(
            seen.contains(&format!("host: 127.0.0.1:{}\r\n", addr.port())),
            "{seen}"
        );
        assert!(seen.contains("x-custom: 1\r\n"), "{seen}");
        assert!(seen.contains("content-length: 5\r\n"), "{seen}");
        assert!(!seen.contains("x-hop"), "{seen}");
        assert!(seen.ends_with("\r\n\r\nhello"), "{seen}");
    }

    #[tokio::test]
    async fn an_unreachable_https_backend_is_a_503_status() {
        let port = {
            let l = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
            l.local_addr().unwrap().port()
        };
        let req = http::Request::get(format!("/podProxy/https/127.0.0.1/{port}/"))
            .body(Body::empty())
            .unwrap();
        let resp = pod_proxy(State(kubelet()), req).await;
        assert_eq!(resp.status(), StatusCode::SERVICE_UNAVAILABLE);
        assert_eq!(resp.headers()[header::CONTENT_TYPE], "application/json");
        let body = axum::body::to_bytes(resp.into_body(), 4096).await.unwrap();
        let v: serde_json::Value = serde_json::from_slice(&body).unwrap();
        assert_eq!(v["kind"], "Status");
        assert_eq!(v["reason"], "ServiceUnavailable");
        assert_eq!(v["code"], 503);
        // Why, not only that it failed, worded as kube-apiserver's dialer.
        let message = v["message"].as_str().unwrap();
        assert!(
            message.starts_with(&format!(
                "error trying to reach service: dial tcp 127.0.0.1:{port}: "
            )),
            "{v}"
        );
        assert!(message.contains("Connection refused"), "{v}");

        // A backend that does not speak TLS: the handshake's failure, said so.
        let plain = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
        let port = plain.local_addr().unwrap().port();
        let _plain = tokio::spawn(async move {
            use tokio::io::AsyncWriteExt as _;
            while let Ok((mut s, _)) = plain.accept().await {
                let _ = s.write_all(b"HTTP/1.1 400 Bad Request\r\n\r\n").await;
            }
        });
        let req = http::Request::get(format!("/podProxy/https/127.0.0.1/{port}/"))
            .body(Body::empty())
            .unwrap();
        let resp = pod_proxy(State(kubelet()), req).await;
        assert_eq!(resp.status(), StatusCode::SERVICE_UNAVAILABLE);
        let body = axum::body::to_bytes(resp.into_body(), 4096).await.unwrap();
        let v: serde_json::Value = serde_json::from_slice(&body).unwrap();
        let message = v["message"].as_str().unwrap();
        assert!(message.contains("tls handshake with 127.0.0.1"), "{v}");
    }
}
