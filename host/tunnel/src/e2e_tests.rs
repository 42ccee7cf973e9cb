//! End-to-end tests on loopback: a real server and real agents over QUIC.

use std::net::SocketAddr;
use std::os::unix::fs::PermissionsExt;
use std::path::Path;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use axum::Extension;
use axum::body::Body;
use axum::routing::get;
use bytes::Bytes;
use futures_util::StreamExt;
use http_body_util::{BodyExt, Full};
use tokio::sync::mpsc;
use tokio::task::JoinHandle;
use tokio_util::sync::CancellationToken;

use crate::agent::{AgentConfig, TunnelClient};
use crate::pki::ClusterPki;
use crate::server::{BootstrapValidator, NodeTunnels, ServerOptions, TunnelServer, ValidToken};
use crate::token::{BootstrapToken, JoinToken};
use crate::{Error, Identity};

const TEST_TIMEOUT: Duration = Duration::from_secs(40);
const YEAR: Duration = Duration::from_secs(365 * 24 * 3600);

struct Tokens(Vec<BootstrapToken>);

impl BootstrapValidator for Tokens {
    fn validate(
        &self,
        token: &BootstrapToken,
    ) -> std::pin::Pin<Box<dyn Future<Output = Result<Option<ValidToken>, String>> + Send + '_>>
    {
        let ok = self
            .0
            .iter()
            .any(|t| t.id == token.id && token.secret_matches(&t.secret));
        Box::pin(async move { Ok(ok.then(ValidToken::default)) })
    }
}

/// Validates like [`Tokens`] and notes the id of each token checked; while `broken`, no token
/// can be checked (as with a failing store).
struct Flaky {
    tokens: Tokens,
    broken: AtomicBool,
    checked: Mutex<Vec<String>>,
}

impl Flaky {
    fn checks(&self, token: &BootstrapToken) -> usize {
        let checked = self.checked.lock().unwrap();
        checked.iter().filter(|id| **id == token.id).count()
    }
}

impl BootstrapValidator for Flaky {
    fn validate(
        &self,
        token: &BootstrapToken,
    ) -> std::pin::Pin<Box<dyn Future<Output = Result<Option<ValidToken>, String>> + Send + '_>>
    {
        self.checked.lock().unwrap().push(token.id.clone());
        if self.broken.load(Ordering::SeqCst) {
            return Box::pin(async { Err("store unavailable".to_owned()) });
        }
        self.tokens.validate(token)
    }
}

/// The API: tells the caller who the tunnel says it is.
fn api() -> axum::Router {
    axum::Router::new().route(
        "/whoami",
        get(|id: Option<Extension<Identity>>| async move {
            match id {
                Some(Extension(id)) => format!("{} {}", id.user, id.groups.join(",")),
                None => "anonymous".to_owned(),
            }
        }),
    )
}

/// The kubelet: `/logs` streams whatever the test feeds into the channel.
fn kubelet(feed: Arc<Mutex<Option<mpsc::Receiver<Bytes>>>>) -> axum::Router {
    axum::Router::new()
        .route("/healthz", get(|| async { "ok" }))
        .route(
            "/logs",
            get(move || {
                let feed = feed.clone();
                async move {
                    let rx = feed
                        .lock()
                        .unwrap()
                        .take()
                        .expect("one log stream per test");
                    let stream = futures_util::stream::unfold(rx, |mut rx| async move {
                        rx.recv()
                            .await
                            .map(|b| (Ok::<_, std::convert::Infallible>(b), rx))
                    });
                    Body::from_stream(stream)
                }
            }),
        )
}

struct Server {
    addr: SocketAddr,
    nodes: NodeTunnels,
    cancel: CancellationToken,
    task: JoinHandle<()>,
}

impl Server {
    fn start(addr: SocketAddr, pki: Arc<ClusterPki>, tokens: Vec<BootstrapToken>) -> Self {
        Self::start_with(addr, pki, tokens, ServerOptions::default())
    }

    fn start_with(
        addr: SocketAddr,
        pki: Arc<ClusterPki>,
        tokens: Vec<BootstrapToken>,
        opts: ServerOptions,
    ) -> Self {
        let server = TunnelServer::bind(addr, pki, Arc::new(Tokens(tokens)), api(), opts).unwrap();
        let cancel = CancellationToken::new();
        Self {
            addr: server.local_addr(),
            nodes: server.nodes(),
            cancel: cancel.clone(),
            task: tokio::spawn(server.serve(cancel)),
        }
    }

    async fn stop(self) {
        self.cancel.cancel();
        self.task.await.unwrap();
    }
}

fn setup(dir: &Path) -> (Arc<ClusterPki>, BootstrapToken, JoinToken) {
    crate::install_crypto_provider();
    let pki = Arc::new(ClusterPki::load_or_create(&dir.join("pki"), &[]).unwrap());
    let token = BootstrapToken::generate();
    let join = JoinToken {
        ca_hash: pki.ca_cert_hash(),
        token: token.clone(),
    };
    (pki, token, join)
}

fn agent_cfg(server: SocketAddr, dir: &Path, join: Option<&JoinToken>) -> AgentConfig {
    AgentConfig {
        server: server.to_string(),
        join_token: join.map(ToString::to_string),
        node_name: "n1".into(),
        state_dir: dir.join("agent"),
    }
}

async fn get_text(client: &TunnelClient, path: &str) -> Result<(http::StatusCode, String), Error> {
    let req = http::Request::get(path)
        .body(Full::new(Bytes::new()))
        .unwrap();
    let resp = client.request(req).await?;
    let status = resp.status();
    let body = resp.into_body().collect().await?.to_bytes();
    Ok((status, String::from_utf8_lossy(&body).into_owned()))
}

async fn eventually(what: &str, mut check: impl FnMut() -> bool) {
    for _ in 0..200 {
        if check() {
            return;
        }
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    panic!("timed out waiting for {what}");
}

async fn bounded<F: Future>(f: F) -> F::Output {
    tokio::time::timeout(TEST_TIMEOUT, f)
        .await
        .expect("test timed out")
}

#[tokio::test]
async fn join_then_requests_flow_both_ways() {
    bounded(async {
        let dir = tempfile::tempdir().unwrap();
        let (pki, token, join) = setup(dir.path());
        let server = Server::start("127.0.0.1:0".parse().unwrap(), pki, vec![token]);
        let (feed_tx, feed_rx) = mpsc::channel(4);
        let cancel = CancellationToken::new();
        let client = TunnelClient::start(
            agent_cfg(server.addr, dir.path(), Some(&join)),
            kubelet(Arc::new(Mutex::new(Some(feed_rx)))),
            cancel.clone(),
        )
        .await
        .unwrap();
        assert!(*client.connected().borrow());
        for f in ["node.key", "node.crt", "ca.crt"] {
            let p = dir.path().join("agent").join(f);
            let mode = std::os::unix::fs::PermissionsExt::mode(
                &std::fs::metadata(&p).unwrap().permissions(),
            );
            assert_eq!(mode & 0o777, 0o600, "{f}");
        }

        // Agent → server: the API sees the node identity taken from the certificate.
        let (status, body) = get_text(&client, "/whoami").await.unwrap();
        assert_eq!(status, 200);
        assert_eq!(body, "system:node:n1 system:nodes,system:authenticated");

        // Server → agent: a streamed body arrives chunk by chunk, before it is complete.
        eventually("node registered", || server.nodes.is_connected("n1")).await;
        assert_eq!(server.nodes.connected(), ["n1"]);
        let resp = server
            .nodes
            .request(
                "n1",
                http::Request::get("/logs").body(Body::empty()).unwrap(),
            )
            .await
            .unwrap();
        assert_eq!(resp.status(), 200);
        let mut body = resp.into_body().into_data_stream();
        feed_tx.send(Bytes::from_static(b"line 1\n")).await.unwrap();
        assert_eq!(body.next().await.unwrap().unwrap(), "line 1\n");
        feed_tx.send(Bytes::from_static(b"line 2\n")).await.unwrap();
        assert_eq!(body.next().await.unwrap().unwrap(), "line 2\n");
        drop(feed_tx);
        assert!(body.next().await.is_none(), "body ends when the log ends");

        let err = server
            .nodes
            .request(
                "ghost",
                http::Request::get("/healthz").body(Body::empty()).unwrap(),
            )
            .await
            .unwrap_err();
        assert!(
            matches!(err, Error::NodeNotConnected(ref n) if n == "ghost"),
            "{err}"
        );

        // Agent shutdown: the server forgets the node.
        cancel.cancel();
        eventually("node unregistered", || !server.nodes.is_connected("n1")).await;
        server.stop().await;
    })
    .await;
}

#[tokio::test]
async fn wrong_token_is_refused() {
    bounded(async {
        let dir = tempfile::tempdir().unwrap();
        let (pki, token, _) = setup(dir.path());
        let server = Server::start("127.0.0.1:0".parse().unwrap(), pki.clone(), vec![token]);
        let wrong = JoinToken {
            ca_hash: pki.ca_cert_hash(),
            token: BootstrapToken::generate(),
        };
        let err = TunnelClient::start(
            agent_cfg(server.addr, dir.path(), Some(&wrong)),
            axum::Router::new(),
            CancellationToken::new(),
        )
        .await
        .err()
        .expect("wrong token must fail");
        assert!(matches!(err, Error::TokenRefused(_)), "{err}");
        assert!(err.to_string().contains("invalid or expired"), "{err}");
        assert!(!dir.path().join("agent/node.crt").exists());
        server.stop().await;
    })
    .await;
}

#[tokio::test]
async fn wrong_ca_hash_is_refused_before_sending_the_token() {
    bounded(async {
        let dir = tempfile::tempdir().unwrap();
        let (pki, token, _) = setup(dir.path());
        let server = Server::start("127.0.0.1:0".parse().unwrap(), pki, vec![token.clone()]);
        let other = ClusterPki::load_or_create(&dir.path().join("other"), &[]).unwrap();
        let pinned_elsewhere = JoinToken {
            ca_hash: other.ca_cert_hash(),
            token,
        };
        let err = TunnelClient::start(
            agent_cfg(server.addr, dir.path(), Some(&pinned_elsewhere)),
            axum::Router::new(),
            CancellationToken::new(),
        )
        .await
        .err()
        .expect("wrong CA pin must fail");
        assert!(matches!(err, Error::CaHashMismatch { .. }), "{err}");
        server.stop().await;
    })
    .await;
}

#[tokio::test]
async fn missing_state_and_token_is_a_clear_error() {
    let dir = tempfile::tempdir().unwrap();
    let cfg = agent_cfg("127.0.0.1:1".parse().unwrap(), dir.path(), None);
    let err = TunnelClient::start(cfg, axum::Router::new(), CancellationToken::new())
        .await
        .err()
        .unwrap();
    assert!(matches!(err, Error::NotJoined(_)), "{err}");
}

/// Connects with a verified server but no client certificate, and tries the API.
#[tokio::test]
async fn connection_without_client_cert_cannot_call_the_api() {
    bounded(async {
        let dir = tempfile::tempdir().unwrap();
        let (pki, token, _) = setup(dir.path());
        let server = Server::start("127.0.0.1:0".parse().unwrap(), pki.clone(), vec![token]);

        let mut roots = rustls::RootCertStore::empty();
        roots
            .add(rustls_pki_types::CertificateDer::from(pki_ca_der(&pki)))
            .unwrap();
        let tls = rustls::ClientConfig::builder_with_provider(crate::agent::provider())
            .with_protocol_versions(&[&rustls::version::TLS13])
            .unwrap()
            .with_root_certificates(roots)
            .with_no_client_auth();
        let config = crate::agent::quic_client_config(tls).unwrap();
        let endpoint = quinn::Endpoint::client("127.0.0.1:0".parse().unwrap()).unwrap();
        let conn = endpoint
            .connect_with(config, server.addr, crate::SERVER_NAME)
            .unwrap()
            .await
            .unwrap();
        let (send, recv) = conn.open_bi().await.unwrap();
        let req = http::Request::get("/whoami")
            .body(Full::new(Bytes::new()))
            .unwrap();
        let resp =
            crate::io::send_request(send, recv, req, "kedge-server", CancellationToken::new())
                .await
                .unwrap();
        assert_eq!(resp.status(), 401);
        let body = resp.into_body().collect().await.unwrap().to_bytes();
        assert!(String::from_utf8_lossy(&body).contains("only node bootstrap"));
        // The one stream was used up: the server closes the connection.
        let closed = tokio::time::timeout(Duration::from_secs(10), conn.closed()).await;
        assert!(
            closed.is_ok(),
            "server must close a certificate-less connection"
        );
        assert!(server.nodes.connected().is_empty());
        server.stop().await;
    })
    .await;
}

fn pki_ca_der(pki: &ClusterPki) -> Vec<u8> {
    use rustls_pki_types::pem::PemObject;
    rustls_pki_types::CertificateDer::from_pem_slice(pki.ca_pem().as_bytes())
        .unwrap()
        .to_vec()
}

/// A certificate from the cluster CA that is not a node certificate (an admin's), or a
/// node-looking certificate from another CA, must not get a tunnel; the agent says so.
#[tokio::test]
async fn non_node_or_foreign_certificates_are_refused() {
    bounded(async {
        let dir = tempfile::tempdir().unwrap();
        let (pki, token, _) = setup(dir.path());
        let server = Server::start("127.0.0.1:0".parse().unwrap(), pki.clone(), vec![token]);
        let other = ClusterPki::load_or_create(&dir.path().join("other"), &[]).unwrap();
        let cases = [
            (
                "admin",
                pki.issue_client("admin", &["system:masters"], YEAR)
                    .unwrap(),
            ),
            (
                "foreign",
                other
                    .issue_client("system:node:n1", &["system:nodes"], YEAR)
                    .unwrap(),
            ),
        ];
        for (name, (cert, key)) in cases {
            let state = dir.path().join(name);
            std::fs::create_dir_all(&state).unwrap();
            std::fs::write(state.join("node.crt"), cert).unwrap();
            std::fs::write(state.join("node.key"), key).unwrap();
            std::fs::write(state.join("ca.crt"), pki.ca_pem()).unwrap();
            let cfg = AgentConfig {
                server: server.addr.to_string(),
                join_token: None,
                node_name: "n1".into(),
                state_dir: state,
            };
            let err = TunnelClient::start(cfg, axum::Router::new(), CancellationToken::new())
                .await
                .err()
                .unwrap_or_else(|| panic!("{name} certificate must be refused"));
            assert!(matches!(err, Error::CertificateRefused(_)), "{name}: {err}");
            assert!(
                err.to_string()
                    .contains("server refused this node's certificate"),
                "{err}"
            );
        }
        assert!(server.nodes.connected().is_empty());
        server.stop().await;
    })
    .await;
}

#[tokio::test]
async fn agent_reconnects_after_server_restart() {
    bounded(async {
        let dir = tempfile::tempdir().unwrap();
        let (pki, token, join) = setup(dir.path());
        let server = Server::start("127.0.0.1:0".parse().unwrap(), pki.clone(), vec![token]);
        let addr = server.addr;
        let cancel = CancellationToken::new();
        let client = TunnelClient::start(
            agent_cfg(addr, dir.path(), Some(&join)),
            kubelet(Arc::new(Mutex::new(None))),
            cancel.clone(),
        )
        .await
        .unwrap();
        let mut connected = client.connected();
        assert_eq!(get_text(&client, "/whoami").await.unwrap().0, 200);

        server.stop().await;
        connected.wait_for(|up| !*up).await.unwrap();

        // Same port; no bootstrap tokens any more — the agent must use its certificate.
        let mut restarted = None;
        for _ in 0..40 {
            match TunnelServer::bind(
                addr,
                pki.clone(),
                Arc::new(Tokens(vec![])),
                api(),
                ServerOptions::default(),
            ) {
                Ok(s) => {
                    restarted = Some(s);
                    break;
                }
                Err(_) => tokio::time::sleep(Duration::from_millis(50)).await,
            }
        }
        let restarted = restarted.expect("port must be free again after shutdown");
        let nodes = restarted.nodes();
        let server_cancel = CancellationToken::new();
        let task = tokio::spawn(restarted.serve(server_cancel.clone()));

        connected.wait_for(|up| *up).await.unwrap();
        let (status, body) = get_text(&client, "/whoami").await.unwrap();
        assert_eq!(status, 200);
        assert!(body.starts_with("system:node:n1 "), "{body}");
        eventually("node registered again", || nodes.is_connected("n1")).await;
        let resp = nodes
            .request(
                "n1",
                http::Request::get("/healthz").body(Body::empty()).unwrap(),
            )
            .await
            .unwrap();
        assert_eq!(resp.into_body().collect().await.unwrap().to_bytes(), "ok");

        // A restarted agent reuses its saved certificate without a token.
        cancel.cancel();
        eventually("old agent gone", || !nodes.is_connected("n1")).await;
        let again = TunnelClient::start(
            agent_cfg(addr, dir.path(), None),
            axum::Router::new(),
            CancellationToken::new(),
        )
        .await
        .unwrap();
        assert_eq!(get_text(&again, "/whoami").await.unwrap().0, 200);

        server_cancel.cancel();
        task.await.unwrap();
    })
    .await;
}

fn serial_of(dir: &Path) -> String {
    let pem = std::fs::read_to_string(dir.join("agent/node.crt")).unwrap();
    crate::pki::cert_info_pem(&pem).unwrap().serial
}

/// Short-lived node certificates: the agent renews at 70–80 % of the lifetime over its
/// tunnel with a new key, moves to a connection using the new certificate, and does it again
/// for the next one. Then the node is revoked: its live tunnel is closed and the certificate
/// refused, also after an agent restart.
#[tokio::test]
async fn certificates_rotate_then_revocation_closes_and_refuses() {
    bounded(async {
        let dir = tempfile::tempdir().unwrap();
        let (pki, token, join) = setup(dir.path());
        let opts = ServerOptions {
            node_cert_validity: Duration::from_secs(4),
            ..Default::default()
        };
        let revocations = opts.revocations.clone();
        let server = Server::start_with("127.0.0.1:0".parse().unwrap(), pki, vec![token], opts);
        let cancel = CancellationToken::new();
        let client = TunnelClient::start(
            agent_cfg(server.addr, dir.path(), Some(&join)),
            kubelet(Arc::new(Mutex::new(None))),
            cancel.clone(),
        )
        .await
        .unwrap();
        let first = serial_of(dir.path());
        let first_key = std::fs::read_to_string(dir.path().join("agent/node.key")).unwrap();
        let info = crate::pki::cert_info_pem(
            &std::fs::read_to_string(dir.path().join("agent/node.crt")).unwrap(),
        )
        .unwrap();
        assert!(info.lifetime() <= Duration::from_secs(5), "{info:?}");

        eventually("a renewed certificate", || serial_of(dir.path()) != first).await;
        let second = serial_of(dir.path());
        assert_ne!(
            std::fs::read_to_string(dir.path().join("agent/node.key")).unwrap(),
            first_key,
            "renewal uses a new key"
        );
        assert!(!dir.path().join("agent/node.crt.next").exists());
        // Requests keep working across the next switch of connection, none is cut.
        let mut served = 0;
        while serial_of(dir.path()) == second {
            assert!(served < 200, "no second renewal within 10 s");
            let (status, _) = get_text(&client, "/whoami")
                .await
                .expect("a request during rotation");
            assert_eq!(status, 200);
            served += 1;
            tokio::time::sleep(Duration::from_millis(50)).await;
        }
        for _ in 0..10 {
            assert_eq!(get_text(&client, "/whoami").await.unwrap().0, 200);
            tokio::time::sleep(Duration::from_millis(50)).await;
        }
        // Past the first certificate's expiry, the node is still connected and served.
        assert!(*client.connected().borrow());
        let (status, body) = get_text(&client, "/whoami").await.unwrap();
        assert_eq!(
            (status.as_u16(), body.starts_with("system:node:n1 ")),
            (200, true)
        );
        eventually("node registered", || server.nodes.is_connected("n1")).await;
        let resp = server
            .nodes
            .request(
                "n1",
                http::Request::get("/healthz").body(Body::empty()).unwrap(),
            )
            .await
            .unwrap();
        assert_eq!(resp.into_body().collect().await.unwrap().to_bytes(), "ok");

        // Revoked: the live tunnel closes at once and reconnects are refused.
        let mut connected = client.connected();
        revocations.replace(std::collections::HashMap::from([(
            "n1".to_owned(),
            std::time::SystemTime::now(),
        )]));
        tokio::time::timeout(Duration::from_secs(5), connected.wait_for(|up| !*up))
            .await
            .expect("revocation closes the tunnel")
            .unwrap();
        assert!(!server.nodes.is_connected("n1"));
        // (Before the certificate's few seconds run out, so it is refused for revocation.)
        let err = TunnelClient::start(
            agent_cfg(server.addr, dir.path(), None),
            axum::Router::new(),
            CancellationToken::new(),
        )
        .await
        .err()
        .expect("a revoked certificate is refused");
        assert!(matches!(err, Error::CertificateRefused(_)), "{err}");
        assert!(err.to_string().contains("revoked"), "{err}");
        tokio::time::sleep(Duration::from_secs(1)).await;
        assert!(!*client.connected().borrow(), "reconnect must be refused");
        cancel.cancel();
        server.stop().await;
    })
    .await;
}

/// Writes a node state whose certificate has already expired, as after a long time off.
async fn expired_state(pki: &ClusterPki, dir: &Path) -> std::path::PathBuf {
    let (cert, key) = pki
        .issue_client("system:node:n1", &["system:nodes"], Duration::ZERO)
        .unwrap();
    let state = dir.join("agent");
    std::fs::create_dir_all(&state).unwrap();
    std::fs::write(state.join("node.crt"), cert).unwrap();
    std::fs::write(state.join("node.key"), key).unwrap();
    std::fs::write(state.join("ca.crt"), pki.ca_pem()).unwrap();
    tokio::time::sleep(Duration::from_millis(1100)).await;
    state
}

fn cert_lasts_long(state: &Path) -> bool {
    let pem = std::fs::read_to_string(state.join("node.crt")).unwrap();
    crate::pki::cert_info_pem(&pem).unwrap().not_after
        > std::time::SystemTime::now() + Duration::from_secs(3600)
}

/// Regression: an agent whose certificate expired while it was off used to exit at start,
/// and its pods with it. It starts offline instead (never dialling with the dead
/// certificate) and, restarted with a join token, joins again.
#[tokio::test]
async fn expired_certificate_starts_offline_and_joins_again_with_a_token() {
    bounded(async {
        let dir = tempfile::tempdir().unwrap();
        let (pki, token, join) = setup(dir.path());
        let server = Server::start("127.0.0.1:0".parse().unwrap(), pki.clone(), vec![token]);
        let state = expired_state(&pki, dir.path()).await;

        let cancel = CancellationToken::new();
        let offline = TunnelClient::start(
            agent_cfg(server.addr, dir.path(), None),
            axum::Router::new(),
            cancel.clone(),
        )
        .await
        .expect("an expired certificate must not stop the agent");
        tokio::time::sleep(Duration::from_secs(1)).await;
        assert!(!*offline.connected().borrow());
        assert!(server.nodes.connected().is_empty());
        assert!(!cert_lasts_long(&state));
        cancel.cancel();

        let client = TunnelClient::start(
            agent_cfg(server.addr, dir.path(), Some(&join)),
            axum::Router::new(),
            CancellationToken::new(),
        )
        .await
        .unwrap();
        assert_eq!(get_text(&client, "/whoami").await.unwrap().0, 200);
        assert!(cert_lasts_long(&state));
        server.stop().await;
    })
    .await;
}

/// A running agent offline on an expired certificate joins again as soon as an operator
/// writes a join token into its state directory, skipping a token the server refused; not
/// while others may read the file.
#[tokio::test]
async fn expired_certificate_joins_again_with_a_token_file() {
    bounded(async {
        let dir = tempfile::tempdir().unwrap();
        let (pki, token, join) = setup(dir.path());
        let server = Server::start("127.0.0.1:0".parse().unwrap(), pki.clone(), vec![token]);
        let state = expired_state(&pki, dir.path()).await;
        let file = state.join(crate::agent::JOIN_TOKEN_FILE);
        let unknown = JoinToken {
            ca_hash: join.ca_hash.clone(),
            token: BootstrapToken::generate(),
        };

        let client = TunnelClient::start(
            agent_cfg(server.addr, dir.path(), Some(&unknown)),
            axum::Router::new(),
            CancellationToken::new(),
        )
        .await
        .expect("a refused token must not stop an agent that has joined before");
        tokio::time::sleep(Duration::from_secs(1)).await;
        assert!(!*client.connected().borrow());

        // Made 644 before it appears under its name, whatever the umask.
        let staged = file.with_extension("staged");
        std::fs::write(&staged, format!("{join}\n")).unwrap();
        std::fs::set_permissions(&staged, PermissionsExt::from_mode(0o644)).unwrap();
        std::fs::rename(&staged, &file).unwrap();
        let mode = |m| std::fs::set_permissions(&file, PermissionsExt::from_mode(m)).unwrap();
        tokio::time::sleep(Duration::from_secs(2)).await;
        assert!(
            !*client.connected().borrow(),
            "a token file others may read is not used"
        );
        assert!(file.exists());
        mode(0o600);
        client.connected().wait_for(|up| *up).await.unwrap();
        eventually("node registered", || server.nodes.is_connected("n1")).await;
        assert!(cert_lasts_long(&state));
        assert!(!file.exists(), "a spent token file is removed");
        assert_eq!(get_text(&client, "/whoami").await.unwrap().0, 200);
        server.stop().await;
    })
    .await;
}

/// Regression: a token was given up on until a restart whenever joining with it failed, also
/// when the server could not check it. Only a token the server refused is given up on.
#[tokio::test]
async fn only_a_token_the_server_refused_is_given_up_on() {
    bounded(async {
        let dir = tempfile::tempdir().unwrap();
        let (pki, token, join) = setup(dir.path());
        let flaky = Arc::new(Flaky {
            tokens: Tokens(vec![token.clone()]),
            broken: AtomicBool::new(false),
            checked: Mutex::new(Vec::new()),
        });
        let server = TunnelServer::bind(
            "127.0.0.1:0".parse().unwrap(),
            pki.clone(),
            flaky.clone(),
            api(),
            ServerOptions::default(),
        )
        .unwrap();
        let addr = server.local_addr();
        let stop = CancellationToken::new();
        let serving = tokio::spawn(server.serve(stop.clone()));
        let state = expired_state(&pki, dir.path()).await;
        let file = state.join(crate::agent::JOIN_TOKEN_FILE);
        let write = |t: &JoinToken| {
            crate::fsutil::write_atomic(&file, format!("{t}\n").as_bytes(), 0o600).unwrap()
        };
        let unknown = BootstrapToken::generate();
        write(&JoinToken {
            ca_hash: join.ca_hash.clone(),
            token: unknown.clone(),
        });

        let client = TunnelClient::start(
            agent_cfg(addr, dir.path(), None),
            axum::Router::new(),
            CancellationToken::new(),
        )
        .await
        .unwrap();
        // Refused by the server: sent once, not on every retry.
        eventually("the unknown token checked", || flaky.checks(&unknown) > 0).await;
        tokio::time::sleep(Duration::from_secs(1)).await;
        assert_eq!(flaky.checks(&unknown), 1);

        // A server that cannot check tokens refuses nothing for good: tried again and again…
        flaky.broken.store(true, Ordering::SeqCst);
        write(&join);
        eventually("the token tried again", || flaky.checks(&token) >= 2).await;
        assert!(!*client.connected().borrow());
        // …until it works.
        flaky.broken.store(false, Ordering::SeqCst);
        client.connected().wait_for(|up| *up).await.unwrap();
        assert!(cert_lasts_long(&state));
        assert!(!file.exists(), "a spent token file is removed");
        stop.cancel();
        serving.await.unwrap();
    })
    .await;
}

/// A certificate that expires while the server is away: once the server is back, the
/// running agent joins again with its token instead of dialling with a dead certificate.
#[tokio::test]
async fn certificate_expired_while_offline_joins_again_with_the_token() {
    bounded(async {
        let dir = tempfile::tempdir().unwrap();
        let (pki, token, join) = setup(dir.path());
        let (cert, key) = pki
            .issue_client("system:node:n1", &["system:nodes"], Duration::from_secs(4))
            .unwrap();
        let state = dir.path().join("agent");
        std::fs::create_dir_all(&state).unwrap();
        std::fs::write(state.join("node.crt"), &cert).unwrap();
        std::fs::write(state.join("node.key"), key).unwrap();
        std::fs::write(state.join("ca.crt"), pki.ca_pem()).unwrap();
        let expires = crate::pki::cert_info_pem(&cert).unwrap().not_after;

        let server = Server::start(
            "127.0.0.1:0".parse().unwrap(),
            pki.clone(),
            vec![token.clone()],
        );
        let addr = server.addr;
        let client = TunnelClient::start(
            agent_cfg(addr, dir.path(), Some(&join)),
            axum::Router::new(),
            CancellationToken::new(),
        )
        .await
        .unwrap();
        let mut connected = client.connected();
        server.stop().await;
        connected.wait_for(|up| !*up).await.unwrap();
        let left = expires
            .duration_since(std::time::SystemTime::now())
            .unwrap_or_default();
        tokio::time::sleep(left + Duration::from_secs(1)).await;

        let mut restarted = None;
        for _ in 0..40 {
            match TunnelServer::bind(
                addr,
                pki.clone(),
                Arc::new(Tokens(vec![token.clone()])),
                api(),
                ServerOptions::default(),
            ) {
                Ok(s) => {
                    restarted = Some(s);
                    break;
                }
                Err(_) => tokio::time::sleep(Duration::from_millis(50)).await,
            }
        }
        let restarted = restarted.expect("port must be free again after shutdown");
        let server_cancel = CancellationToken::new();
        let task = tokio::spawn(restarted.serve(server_cancel.clone()));

        connected.wait_for(|up| *up).await.unwrap();
        let info =
            crate::pki::cert_info_pem(&std::fs::read_to_string(state.join("node.crt")).unwrap())
                .unwrap();
        assert!(
            info.not_after > std::time::SystemTime::now() + Duration::from_secs(3600),
            "joined again: {info:?}"
        );
        assert_eq!(get_text(&client, "/whoami").await.unwrap().0, 200);
        server_cancel.cancel();
        task.await.unwrap();
    })
    .await;
}

/// Every request is a stream of its own; a finished stream must give its credit back, or a
/// node stops being able to call the API once its stream window is used up.
#[tokio::test]
async fn finished_request_streams_are_released() {
    bounded(async {
        let dir = tempfile::tempdir().unwrap();
        let (pki, token, join) = setup(dir.path());
        let server = Server::start("127.0.0.1:0".parse().unwrap(), pki, vec![token]);
        let cancel = CancellationToken::new();
        let client = TunnelClient::start(
            agent_cfg(server.addr, dir.path(), Some(&join)),
            kubelet(Arc::new(Mutex::new(None))),
            cancel.clone(),
        )
        .await
        .unwrap();
        for i in 0..1500 {
            let (status, _) =
                tokio::time::timeout(Duration::from_secs(5), get_text(&client, "/whoami"))
                    .await
                    .unwrap_or_else(|_| panic!("request {i} got no answer in 5 s"))
                    .unwrap();
            assert_eq!(status, 200);
        }
        cancel.cancel();
        server.stop().await;
    })
    .await;
}
