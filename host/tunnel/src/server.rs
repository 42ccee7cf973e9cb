//! The control-plane end of the tunnel: accepts node connections, serves their API requests
//! and lets the rest of the server reach nodes back through them.

use std::collections::HashMap;
use std::future::Future;
use std::net::SocketAddr;
use std::pin::Pin;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, SystemTime};

use quinn::crypto::rustls::QuicServerConfig;
use rustls_pki_types::CertificateDer;
use tokio::io::AsyncWriteExt;
use tokio_util::sync::CancellationToken;
use tokio_util::task::TaskTracker;
use tracing::{debug, info, warn};

use crate::io::{self, serve_stream, transport_config};
use crate::pki::{AUTHENTICATED_GROUP, CertInfo, ClusterPki, cert_info, identity_from_cert};
use crate::revocation::{Revocations, rfc3339};
use crate::token::BootstrapToken;
use crate::wire::{
    self, BootstrapReply, BootstrapRequest, MAX_MESSAGE, RENEW_PATH, RenewRequest, Welcome, close,
};
use crate::{Error, Identity};

/// A year, as kubelet client certificates; agents renew at 70–80 % of it.
pub const DEFAULT_NODE_CERT_VALIDITY: Duration = Duration::from_secs(365 * 24 * 3600);
/// Bounds how long an unauthenticated peer can hold server resources.
const HANDSHAKE_TIMEOUT: Duration = Duration::from_secs(10);
const BOOTSTRAP_TIMEOUT: Duration = Duration::from_secs(30);
/// Grace for the agent to read our last bytes and close first, so they are not discarded
/// by an abrupt close.
const LINGER: Duration = Duration::from_secs(5);
/// How long a connection replaced by a newer one of the same node stays open for the requests
/// already on it; a stale one (NAT rebinding) is closed after it.
const REPLACED_GRACE: Duration = Duration::from_secs(2);
/// How long shutdown waits for connection tasks and close frames before giving up.
const DRAIN: Duration = Duration::from_secs(2);

pub const NODE_USER_PREFIX: &str = "system:node:";
pub const NODES_GROUP: &str = "system:nodes";

/// Decides whether a bootstrap token is currently valid. The main crate owns token storage
/// (expiry, usage), so the tunnel only asks.
pub trait BootstrapValidator: Send + Sync + 'static {
    /// `None` when the token is unknown, expired or not meant for node bootstrap; `Err` when
    /// it could not be checked (the store failed), which the node may retry with it.
    fn validate(
        &self,
        token: &BootstrapToken,
    ) -> Pin<Box<dyn Future<Output = Result<Option<ValidToken>, String>> + Send + '_>>;
}

/// What the server needs to know about a token that passed validation.
#[derive(Clone, Debug, Default)]
pub struct ValidToken {
    /// When the token was created. A revoked node may only join again with a token created
    /// after its revocation, so the token it joined with before cannot bring it straight back.
    /// (Both times have whole seconds; a token from the revocation's own second counts as
    /// new, since "revoke, then create a token" is what a script does.)
    pub created: Option<SystemTime>,
}

/// Node-certificate policy of a tunnel server.
#[derive(Clone, Debug)]
pub struct ServerOptions {
    /// Validity of the certificates issued at bootstrap and renewal.
    pub node_cert_validity: Duration,
    /// Revoked nodes: refused at handshake and renewal, and their live tunnels closed when
    /// the list changes.
    pub revocations: Arc<Revocations>,
    /// What node connections record into.
    pub metrics: crate::metrics::TunnelMetrics,
}

impl Default for ServerOptions {
    fn default() -> Self {
        Self {
            node_cert_validity: DEFAULT_NODE_CERT_VALIDITY,
            revocations: Arc::default(),
            metrics: Default::default(),
        }
    }
}

/// A bound tunnel endpoint, not yet accepting (so the caller can learn the port first).
pub struct TunnelServer {
    endpoint: quinn::Endpoint,
    local_addr: SocketAddr,
    ctx: Arc<Ctx>,
}

struct Ctx {
    pki: Arc<ClusterPki>,
    bootstrap: Arc<dyn BootstrapValidator>,
    api: axum::Router,
    nodes: NodeTunnels,
    opts: ServerOptions,
}

impl TunnelServer {
    /// Binds the UDP endpoint. Must be called inside a tokio runtime (quinn spawns its
    /// endpoint driver here).
    pub fn bind(
        addr: SocketAddr,
        pki: Arc<ClusterPki>,
        bootstrap: Arc<dyn BootstrapValidator>,
        api: axum::Router,
        opts: ServerOptions,
    ) -> Result<Self, Error> {
        let quic = QuicServerConfig::try_from(pki.quic_server_config()?)
            .map_err(|e| Error::Protocol(format!("quic tls config: {e}")))?;
        let mut config = quinn::ServerConfig::with_crypto(Arc::new(quic));
        // The agent sends keep-alives; the server only needs to notice silence.
        config.transport_config(transport_config(false));
        let endpoint =
            quinn::Endpoint::server(config, addr).map_err(|source| Error::Bind { addr, source })?;
        let local_addr = endpoint
            .local_addr()
            .map_err(|source| Error::Bind { addr, source })?;
        let ctx = Arc::new(Ctx {
            pki,
            bootstrap,
            api,
            nodes: NodeTunnels::default(),
            opts,
        });
        Ok(Self {
            endpoint,
            local_addr,
            ctx,
        })
    }

    pub fn local_addr(&self) -> SocketAddr {
        self.local_addr
    }

    pub fn nodes(&self) -> NodeTunnels {
        self.ctx.nodes.clone()
    }

    /// Accepts connections until `cancel`, then closes every connection (agents see a clean
    /// close and start reconnecting) and waits briefly for the tasks to finish.
    pub async fn serve(self, cancel: CancellationToken) {
        let tracker = TaskTracker::new();
        info!(addr = %self.local_addr, "tunnel listening");
        tracker.spawn(close_revoked_on_change(
            self.ctx.opts.revocations.clone(),
            self.ctx.nodes.clone(),
            cancel.clone(),
        ));
        loop {
            let incoming = tokio::select! {
                () = cancel.cancelled() => break,
                incoming = self.endpoint.accept() => match incoming {
                    Some(i) => i,
                    None => break,
                },
            };
            let ctx = self.ctx.clone();
            let (t, c) = (tracker.clone(), cancel.child_token());
            tracker.spawn(async move { ctx.handle(incoming, t, c).await });
        }
        self.endpoint
            .close(close::SHUTDOWN, b"server shutting down");
        self.ctx.nodes.inner.stop.cancel();
        tracker.close();
        let _ = tokio::time::timeout(DRAIN, tracker.wait()).await;
        let _ = tokio::time::timeout(DRAIN, self.endpoint.wait_idle()).await;
        info!(addr = %self.local_addr, "tunnel stopped");
    }
}

impl Ctx {
    async fn handle(
        self: &Arc<Self>,
        incoming: quinn::Incoming,
        tracker: TaskTracker,
        cancel: CancellationToken,
    ) {
        let remote = incoming.remote_address();
        let conn = tokio::select! {
            () = cancel.cancelled() => return,
            res = tokio::time::timeout(HANDSHAKE_TIMEOUT, incoming) => match res {
                Ok(Ok(conn)) => conn,
                Ok(Err(e)) => {
                    debug!(%remote, error = %e, "tunnel handshake failed");
                    return;
                }
                Err(_) => {
                    debug!(%remote, "tunnel handshake timed out");
                    return;
                }
            },
        };
        let leaf = conn
            .peer_identity()
            .and_then(|any| any.downcast::<Vec<CertificateDer<'static>>>().ok())
            .and_then(|chain| chain.into_iter().next());
        match leaf {
            Some(leaf) => self.node_connection(conn, &leaf, tracker, cancel).await,
            None => {
                tokio::select! {
                    () = cancel.cancelled() => {}
                    res = tokio::time::timeout(BOOTSTRAP_TIMEOUT, self.bootstrap_connection(&conn)) => {
                        if res.is_err() {
                            debug!(%remote, "bootstrap timed out");
                        }
                    }
                }
                conn.close(close::BOOTSTRAP_DONE, b"bootstrap done");
            }
        }
    }

    /// A certificate-authenticated node: every agent-opened stream is one HTTP/1.1
    /// connection to the API as that node.
    async fn node_connection(
        self: &Arc<Self>,
        conn: quinn::Connection,
        leaf: &CertificateDer<'_>,
        tracker: TaskTracker,
        cancel: CancellationToken,
    ) {
        let remote = conn.remote_address();
        // The CA also signs admin and user certificates; only node certificates may hold a
        // tunnel, or a user could impersonate a node by connecting here.
        let Some(node) = identity_from_cert(leaf).as_ref().and_then(node_name) else {
            warn!(%remote, "refusing tunnel: client certificate is not a node certificate");
            conn.close(
                close::UNAUTHORIZED,
                b"client certificate is not a node certificate (CN system:node:<name>, O system:nodes)",
            );
            return;
        };
        let Some(cert) = cert_info(leaf) else {
            warn!(%remote, node, "refusing tunnel: unparsable client certificate");
            conn.close(close::UNAUTHORIZED, b"unparsable client certificate");
            return;
        };
        if let Err(revoked) = self.opts.revocations.check(&node, cert.issued_at) {
            warn!(%remote, node, serial = %cert.serial, reason = %revoked, "refusing tunnel: node certificate revoked");
            conn.close(close::UNAUTHORIZED, revoked.to_string().as_bytes());
            return;
        }
        if let Err(e) = send_welcome(&conn, &node).await {
            debug!(node, error = %e, "tunnel lost before welcome");
            return;
        }
        let (id, replaced) = self.nodes.register(&node, conn.clone(), cert.issued_at);
        let mut counted = self.opts.metrics.connected(&node, conn.clone());
        // Bytes are read from quinn's counters now and then, not per packet.
        let mut bytes_every = tokio::time::interval(Duration::from_secs(5));
        // A revocation that landed since the check above found no entry to close.
        if self.opts.revocations.check(&node, cert.issued_at).is_err() {
            self.nodes.close_revoked(&self.opts.revocations);
        }
        info!(node, %remote, serial = %cert.serial, not_after = %rfc3339(cert.not_after), "node tunnel connected");
        let identity = Identity {
            user: format!("{NODE_USER_PREFIX}{node}"),
            groups: vec![NODES_GROUP.to_owned(), AUTHENTICATED_GROUP.to_owned()],
        };
        let api = self
            .renew_router(&node, &cert)
            .fallback_service(self.api.clone().layer(axum::Extension(identity)));
        // TLS checked validity at the handshake only; a connection must not outlive it.
        let expires = cert
            .not_after
            .duration_since(SystemTime::now())
            .unwrap_or_default();
        let expiry = tokio::time::sleep(expires);
        tokio::pin!(expiry);
        // Replaced by a newer connection of the node: requests already on this one may
        // finish (an agent moving to a renewed certificate closes it itself once they have).
        let retire = async {
            replaced.cancelled().await;
            tokio::time::sleep(REPLACED_GRACE).await;
        };
        tokio::pin!(retire);
        let credit = io::StreamCredit::new(&conn);
        loop {
            tokio::select! {
                () = cancel.cancelled() => break,
                _ = bytes_every.tick() => counted.sync(),
                () = &mut retire => {
                    conn.close(close::REPLACED, b"replaced by a newer connection from this node");
                    break;
                }
                () = &mut expiry => {
                    info!(node, serial = %cert.serial, "node certificate expired; closing its tunnel");
                    conn.close(close::UNAUTHORIZED, b"node certificate expired");
                    break;
                }
                res = conn.accept_bi() => match res {
                    Ok((send, recv)) => {
                        let open = credit.opened();
                        tracker.spawn(serve_stream(send, recv, api.clone(), cancel.clone(), open));
                    }
                    Err(e) => {
                        info!(node, reason = %e, "node tunnel closed");
                        break;
                    }
                },
            }
        }
        self.nodes.unregister(&node, id);
    }

    /// A connection without a client certificate gets exactly one stream, and it must carry
    /// a bootstrap request; anything else (an HTTP request) is answered 401.
    async fn bootstrap_connection(&self, conn: &quinn::Connection) {
        let remote = conn.remote_address();
        let Ok((mut send, mut recv)) = conn.accept_bi().await else {
            return;
        };
        let reply: Vec<u8> = match read_message(&mut recv).await {
            Ok(msg) if msg.first() == Some(&b'{') => {
                let reply = match serde_json::from_slice::<BootstrapRequest>(&msg) {
                    Ok(req) => self.bootstrap(req, remote).await,
                    Err(e) => BootstrapReply::Refused {
                        error: format!("malformed bootstrap request: {e}"),
                        token: false,
                    },
                };
                wire::encode(&reply)
            }
            Ok(_) => {
                warn!(%remote, "refused a request on a connection without a client certificate");
                unauthorized_response()
            }
            Err(e) => {
                debug!(%remote, error = %e, "bootstrap stream failed");
                return;
            }
        };
        if send.write_all(&reply).await.is_ok() && send.shutdown().await.is_ok() {
            // Let the agent read the reply and close first.
            let _ = tokio::time::timeout(LINGER, conn.closed()).await;
        }
    }

    /// The renewal endpoint of one node connection, in front of the API.
    fn renew_router(self: &Arc<Self>, node: &str, cert: &CertInfo) -> axum::Router {
        let (ctx, node, cert) = (self.clone(), node.to_owned(), cert.clone());
        axum::Router::new().route(
            RENEW_PATH,
            axum::routing::post(move |body: axum::body::Bytes| {
                let (ctx, node, cert) = (ctx.clone(), node.clone(), cert.clone());
                async move {
                    let reply = ctx.renew(&node, &cert, &body).await;
                    let status = match reply {
                        BootstrapReply::Issued { .. } => http::StatusCode::OK,
                        BootstrapReply::Refused { .. } => http::StatusCode::FORBIDDEN,
                    };
                    (status, wire::encode(&reply))
                }
            }),
        )
    }

    /// Signs a fresh certificate for the node this connection authenticated as (never a name
    /// from the request), unless the node was revoked meanwhile.
    async fn renew(&self, node: &str, current: &CertInfo, body: &[u8]) -> BootstrapReply {
        let refuse = |error: String| BootstrapReply::Refused {
            error,
            token: false,
        };
        if let Err(revoked) = self.opts.revocations.check(node, current.issued_at) {
            warn!(node, reason = %revoked, "certificate renewal refused: node revoked");
            return refuse(revoked.to_string());
        }
        let req = match serde_json::from_slice::<RenewRequest>(body) {
            Ok(r) => r,
            Err(e) => return refuse(format!("malformed renewal request: {e}")),
        };
        let cn = format!("{NODE_USER_PREFIX}{node}");
        match self
            .pki
            .sign_csr(&req.csr, &cn, &[NODES_GROUP], self.opts.node_cert_validity)
        {
            Ok(certificate) => {
                let new = crate::pki::cert_info_pem(&certificate);
                info!(
                    node,
                    old_serial = %current.serial,
                    serial = new.as_ref().map_or("?", |c| c.serial.as_str()),
                    not_after = %new.as_ref().map_or_else(String::new, |c| rfc3339(c.not_after)),
                    "node certificate renewed"
                );
                BootstrapReply::Issued {
                    certificate,
                    ca: self.pki.ca_pem().to_owned(),
                }
            }
            Err(e) => {
                warn!(node, error = %e, "certificate renewal refused: bad CSR");
                refuse(e.to_string())
            }
        }
    }

    async fn bootstrap(&self, req: BootstrapRequest, remote: SocketAddr) -> BootstrapReply {
        let refuse = |error: &str| BootstrapReply::Refused {
            error: error.to_owned(),
            token: false,
        };
        // The token itself: the node gives it up.
        let refuse_token = |error: &str| BootstrapReply::Refused {
            error: error.to_owned(),
            token: true,
        };
        let Ok(token) = req.token.parse::<BootstrapToken>() else {
            warn!(%remote, "bootstrap refused: malformed token");
            return refuse_token("malformed bootstrap token");
        };
        if !valid_node_name(&req.node_name) {
            warn!(%remote, token_id = %token.id, "bootstrap refused: invalid node name");
            return refuse(
                "invalid node name: use lowercase letters, digits, '-' and '.', at most 253 characters",
            );
        }
        let valid = match self.bootstrap.validate(&token).await {
            Ok(Some(valid)) => valid,
            Ok(None) => {
                // The id identifies the token to the operator; the secret never goes to logs.
                warn!(%remote, token_id = %token.id, node = %req.node_name, "bootstrap refused: invalid or expired token");
                return refuse_token("bootstrap token is invalid or expired");
            }
            Err(e) => {
                warn!(%remote, token_id = %token.id, node = %req.node_name, error = %e, "bootstrap failed: the token could not be checked");
                return refuse(&format!(
                    "the server could not check the bootstrap token ({e}); try again later"
                ));
            }
        };
        if let Some(at) = self.opts.revocations.revoked_at(&req.node_name)
            && valid.created.is_none_or(|c| c < at)
        {
            warn!(%remote, token_id = %token.id, node = %req.node_name, revoked_at = %rfc3339(at), "bootstrap refused: node revoked and token older than the revocation");
            return refuse_token(&format!(
                "node {} was revoked at {}: join with a bootstrap token created after that (kedge token create)",
                req.node_name,
                rfc3339(at)
            ));
        }
        if let Err(revoked) = self.opts.revocations.wait_until_after(&req.node_name).await {
            return refuse(&revoked.to_string());
        }
        let cn = format!("{NODE_USER_PREFIX}{}", req.node_name);
        match self
            .pki
            .sign_csr(&req.csr, &cn, &[NODES_GROUP], self.opts.node_cert_validity)
        {
            Ok(certificate) => {
                info!(%remote, token_id = %token.id, node = %req.node_name, "node joined: certificate issued");
                BootstrapReply::Issued {
                    certificate,
                    ca: self.pki.ca_pem().to_owned(),
                }
            }
            Err(e) => {
                warn!(%remote, node = %req.node_name, error = %e, "bootstrap refused: bad CSR");
                refuse(&e.to_string())
            }
        }
    }
}

pub(crate) fn node_name(id: &Identity) -> Option<String> {
    let name = id.user.strip_prefix(NODE_USER_PREFIX)?;
    (valid_node_name(name) && id.groups.iter().any(|g| g == NODES_GROUP)).then(|| name.to_owned())
}

/// Kubernetes node names are DNS-1123 subdomains; enforcing it here keeps odd bytes out of
/// certificate subjects and logs.
fn valid_node_name(name: &str) -> bool {
    let b = name.as_bytes();
    !b.is_empty()
        && b.len() <= 253
        && b.iter()
            .all(|c| c.is_ascii_lowercase() || c.is_ascii_digit() || *c == b'-' || *c == b'.')
        && b[0].is_ascii_alphanumeric()
        && b[b.len() - 1].is_ascii_alphanumeric()
}

async fn send_welcome(conn: &quinn::Connection, node: &str) -> Result<(), Error> {
    let mut s = conn.open_uni().await?;
    s.write_all(&wire::encode(&Welcome {
        node: node.to_owned(),
        observed: Some(conn.remote_address().to_string()),
    }))
    .await?;
    let _ = s.finish();
    Ok(())
}

/// Reads one newline-terminated message (or up to EOF), at most [`MAX_MESSAGE`] bytes. The
/// first byte alone decides bootstrap vs. HTTP, so an HTTP client is not kept waiting for a
/// newline-terminated JSON document it will never send.
async fn read_message(recv: &mut quinn::RecvStream) -> Result<Vec<u8>, Error> {
    let mut buf = Vec::new();
    let mut chunk = [0u8; 4096];
    loop {
        let Some(n) = recv
            .read(&mut chunk)
            .await
            .map_err(|e| Error::Protocol(e.to_string()))?
        else {
            return Ok(buf);
        };
        buf.extend_from_slice(&chunk[..n]);
        if buf.first().is_some_and(|b| *b != b'{') || buf.contains(&b'\n') {
            return Ok(buf);
        }
        if buf.len() > MAX_MESSAGE {
            return Err(Error::Protocol("bootstrap request too large".into()));
        }
    }
}

fn unauthorized_response() -> Vec<u8> {
    let body = "this tunnel connection has no client certificate: only node bootstrap is allowed\n";
    format!(
        "HTTP/1.1 401 Unauthorized\r\ncontent-type: text/plain\r\ncontent-length: {}\r\nconnection: close\r\n\r\n{body}",
        body.len()
    )
    .into_bytes()
}

/// The live tunnel of every connected node, for reaching nodes from the server.
#[derive(Clone, Default)]
pub struct NodeTunnels {
    inner: Arc<NodesInner>,
}

#[derive(Default)]
struct NodesInner {
    map: Mutex<HashMap<String, NodeConn>>,
    next_id: AtomicU64,
    /// Stops request tasks when the server stops serving.
    stop: CancellationToken,
}

struct NodeConn {
    id: u64,
    conn: quinn::Connection,
    /// Of the certificate the connection authenticated with, for revocation.
    issued_at: SystemTime,
    /// Fired when a newer connection of the node takes over.
    replaced: CancellationToken,
}

/// Closes the live tunnel of every node the revocation list newly covers, as soon as the
/// list changes (the agent sees the reason and cannot reconnect).
async fn close_revoked_on_change(
    revocations: Arc<Revocations>,
    nodes: NodeTunnels,
    cancel: CancellationToken,
) {
    let mut changed = revocations.subscribe();
    loop {
        tokio::select! {
            () = cancel.cancelled() => return,
            res = changed.changed() => if res.is_err() { return },
        }
        nodes.close_revoked(&revocations);
    }
}

impl NodeTunnels {
    fn lock(&self) -> std::sync::MutexGuard<'_, HashMap<String, NodeConn>> {
        // No code panics while holding the lock; a poisoned map is still consistent.
        self.inner.map.lock().unwrap_or_else(|p| p.into_inner())
    }

    /// A node that reconnects (new address after NAT rebinding, agent restart, renewed
    /// certificate) replaces its old connection: new requests go to the new one at once, and
    /// the old one is told (the returned token) to close after [`REPLACED_GRACE`].
    fn register(
        &self,
        node: &str,
        conn: quinn::Connection,
        issued_at: SystemTime,
    ) -> (u64, CancellationToken) {
        let id = self.inner.next_id.fetch_add(1, Ordering::Relaxed);
        let replaced = CancellationToken::new();
        let entry = NodeConn {
            id,
            conn,
            issued_at,
            replaced: replaced.clone(),
        };
        if let Some(old) = self.lock().insert(node.to_owned(), entry) {
            old.replaced.cancel();
        }
        (id, replaced)
    }

    /// Removes the entry only if it is still this connection, not its replacement.
    fn unregister(&self, node: &str, id: u64) {
        let mut map = self.lock();
        if map.get(node).is_some_and(|n| n.id == id) {
            map.remove(node);
        }
    }

    /// Closes (and forgets) the connections whose certificates `revocations` covers.
    pub fn close_revoked(&self, revocations: &Revocations) {
        self.lock()
            .retain(|node, n| match revocations.check(node, n.issued_at) {
                Ok(()) => true,
                Err(revoked) => {
                    warn!(node, reason = %revoked, "node revoked: closing its tunnel");
                    n.conn
                        .close(close::UNAUTHORIZED, revoked.to_string().as_bytes());
                    false
                }
            });
    }

    pub fn is_connected(&self, node: &str) -> bool {
        self.lock().contains_key(node)
    }

    pub fn connected(&self) -> Vec<String> {
        let mut v: Vec<String> = self.lock().keys().cloned().collect();
        v.sort();
        v
    }

    /// Where each connected node's tunnel comes from now (QUIC follows a NAT rebinding, so
    /// this moves with it without a reconnect).
    pub fn remote_addresses(&self) -> Vec<(String, std::net::SocketAddr)> {
        self.lock()
            .iter()
            .map(|(node, n)| (node.clone(), n.conn.remote_address()))
            .collect()
    }

    /// One kubelet-style request to the node on a new server-opened stream. The response
    /// body streams as the node produces it (`kubectl logs -f`). A node without a live
    /// tunnel is [`Error::NodeNotConnected`], so callers can answer 502/503 without guessing.
    pub async fn request(
        &self,
        node: &str,
        req: http::Request<axum::body::Body>,
    ) -> Result<http::Response<axum::body::Body>, Error> {
        let conn = self
            .lock()
            .get(node)
            .map(|n| n.conn.clone())
            .ok_or_else(|| Error::NodeNotConnected(node.to_owned()))?;
        let (send, recv) = conn.open_bi().await?;
        let resp = io::send_request(send, recv, req, node, self.inner.stop.child_token()).await?;
        Ok(resp.map(axum::body::Body::new))
    }
}

#[cfg(test)]
mod tests {
    use std::collections::HashMap;

    use super::*;

    /// Accepts one token, created at a given time.
    struct OneToken(BootstrapToken, SystemTime);

    impl BootstrapValidator for OneToken {
        fn validate(
            &self,
            token: &BootstrapToken,
        ) -> Pin<Box<dyn Future<Output = Result<Option<ValidToken>, String>> + Send + '_>> {
            let ok = token.id == self.0.id && token.secret_matches(&self.0.secret);
            let created = Some(self.1);
            Box::pin(async move { Ok(ok.then_some(ValidToken { created })) })
        }
    }

    fn ctx(dir: &std::path::Path, token: OneToken, validity: Duration) -> Arc<Ctx> {
        Arc::new(Ctx {
            pki: Arc::new(ClusterPki::load_or_create(dir, &[]).unwrap()),
            bootstrap: Arc::new(token),
            api: axum::Router::new(),
            nodes: NodeTunnels::default(),
            opts: ServerOptions {
                node_cert_validity: validity,
                ..Default::default()
            },
        })
    }

    fn csr() -> String {
        let key = rcgen::KeyPair::generate().unwrap();
        let mut p = rcgen::CertificateParams::default();
        p.distinguished_name
            .push(rcgen::DnType::CommonName, "system:admin");
        p.serialize_request(&key).unwrap().pem().unwrap()
    }

    fn issued(reply: BootstrapReply) -> CertInfo {
        match reply {
            BootstrapReply::Issued { certificate, .. } => {
                use rustls_pki_types::pem::PemObject;
                let der = CertificateDer::from_pem_slice(certificate.as_bytes()).unwrap();
                let id = identity_from_cert(&der).unwrap();
                assert_eq!(
                    id.user, "system:node:n1",
                    "named after the connection's node"
                );
                assert!(id.groups.iter().any(|g| g == NODES_GROUP));
                cert_info(&der).unwrap()
            }
            BootstrapReply::Refused { error, .. } => panic!("refused: {error}"),
        }
    }

    /// The refusal's message, and whether it was the token that was refused.
    fn refused(reply: BootstrapReply) -> (String, bool) {
        match reply {
            BootstrapReply::Refused { error, token } => (error, token),
            BootstrapReply::Issued { .. } => panic!("must be refused"),
        }
    }

    #[tokio::test]
    async fn renewal_issues_for_the_connection_node_unless_revoked() {
        let dir = tempfile::tempdir().unwrap();
        let token = BootstrapToken::generate();
        let validity = Duration::from_secs(600);
        let ctx = ctx(dir.path(), OneToken(token, SystemTime::now()), validity);
        let now = SystemTime::now();
        let current = CertInfo {
            serial: "01".into(),
            issued_at: now - Duration::from_secs(3600),
            not_after: now + Duration::from_secs(60),
        };
        let body = wire::encode(&RenewRequest { csr: csr() });
        let new = issued(ctx.renew("n1", &current, &body).await);
        let lifetime = new.lifetime();
        assert!(
            lifetime >= validity - Duration::from_secs(2) && lifetime <= validity,
            "configured validity: {lifetime:?}"
        );
        assert_ne!(new.serial, current.serial);

        let (err, _) = refused(ctx.renew("n1", &current, b"{}\n").await);
        assert!(err.contains("malformed"), "{err}");

        ctx.opts
            .revocations
            .replace(HashMap::from([("n1".to_owned(), now)]));
        let (err, _) = refused(ctx.renew("n1", &current, &body).await);
        assert!(err.contains("revoked"), "{err}");
    }

    #[tokio::test]
    async fn a_revoked_node_joins_again_only_with_a_newer_token() {
        let dir = tempfile::tempdir().unwrap();
        let token = BootstrapToken::generate();
        let revoked_at = SystemTime::now() - Duration::from_secs(60);
        let req = || BootstrapRequest {
            token: token.to_string(),
            node_name: "n1".into(),
            csr: csr(),
        };
        let remote: SocketAddr = "127.0.0.1:1".parse().unwrap();
        let revocations = HashMap::from([("n1".to_owned(), revoked_at)]);

        let old = ctx(
            dir.path(),
            OneToken(token.clone(), revoked_at - Duration::from_secs(60)),
            DEFAULT_NODE_CERT_VALIDITY,
        );
        old.opts.revocations.replace(revocations.clone());
        let (err, bad_token) = refused(old.bootstrap(req(), remote).await);
        assert!(err.contains("created after"), "{err}");
        assert!(bad_token, "this token cannot bring the node back");

        let new = ctx(
            dir.path(),
            OneToken(token.clone(), revoked_at),
            DEFAULT_NODE_CERT_VALIDITY,
        );
        new.opts.revocations.replace(revocations);
        let cert = issued(new.bootstrap(req(), remote).await);
        assert!(new.opts.revocations.check("n1", cert.issued_at).is_ok());
        assert!(cert.lifetime() > Duration::from_secs(364 * 24 * 3600));

        let wrong = BootstrapRequest {
            token: BootstrapToken::generate().to_string(),
            ..req()
        };
        let (err, bad_token) = refused(new.bootstrap(wrong, remote).await);
        assert!(err.contains("invalid or expired"), "{err}");
        assert!(bad_token);
    }

    /// The agent gives up on a token only when the server refused the token itself: not when
    /// it refused something else, nor when it could not check the token.
    #[tokio::test]
    async fn only_token_refusals_say_it_was_the_token() {
        struct Broken;
        impl BootstrapValidator for Broken {
            fn validate(
                &self,
                _: &BootstrapToken,
            ) -> Pin<Box<dyn Future<Output = Result<Option<ValidToken>, String>> + Send + '_>>
            {
                Box::pin(async { Err("store unavailable".to_owned()) })
            }
        }
        let dir = tempfile::tempdir().unwrap();
        let token = BootstrapToken::generate();
        let remote: SocketAddr = "127.0.0.1:1".parse().unwrap();
        let req = |token: &str, node: &str, csr: String| BootstrapRequest {
            token: token.to_owned(),
            node_name: node.to_owned(),
            csr,
        };
        let ctx = ctx(
            dir.path(),
            OneToken(token.clone(), SystemTime::now()),
            DEFAULT_NODE_CERT_VALIDITY,
        );
        let t = token.to_string();
        let (err, bad_token) = refused(ctx.bootstrap(req("nonsense", "n1", csr()), remote).await);
        assert!(err.contains("malformed") && bad_token, "{err}");
        let (err, bad_token) = refused(ctx.bootstrap(req(&t, "N_1", csr()), remote).await);
        assert!(err.contains("node name") && !bad_token, "{err}");
        let (err, bad_token) = refused(
            ctx.bootstrap(req(&t, "n1", "not a csr".into()), remote)
                .await,
        );
        assert!(!bad_token, "{err}");

        let broken = Arc::new(Ctx {
            pki: ctx.pki.clone(),
            bootstrap: Arc::new(Broken),
            api: axum::Router::new(),
            nodes: NodeTunnels::default(),
            opts: ServerOptions::default(),
        });
        let (err, bad_token) = refused(broken.bootstrap(req(&t, "n1", csr()), remote).await);
        assert!(err.contains("store unavailable") && !bad_token, "{err}");

        // What an agent of before this flag reads, and what it reads from an older server.
        let reply = wire::encode(&BootstrapReply::Refused {
            error: "e".into(),
            token: false,
        });
        assert_eq!(reply, b"{\"error\":\"e\"}\n");
        let old: BootstrapReply = serde_json::from_slice(b"{\"error\":\"e\"}").unwrap();
        assert!(matches!(old, BootstrapReply::Refused { token: false, .. }));
    }

    #[test]
    fn node_names() {
        for ok in ["n1", "edge-01.site-a", "a"] {
            assert!(valid_node_name(ok), "{ok}");
        }
        for bad in ["", "-a", "a-", "A", "a_b", "a b", &"a".repeat(254)] {
            assert!(!valid_node_name(bad), "{bad}");
        }
    }

    #[test]
    fn only_node_identities_hold_a_tunnel() {
        let id = |user: &str, groups: &[&str]| Identity {
            user: user.into(),
            groups: groups.iter().map(|s| s.to_string()).collect(),
        };
        assert_eq!(
            node_name(&id("system:node:n1", &["system:nodes"])).as_deref(),
            Some("n1")
        );
        assert_eq!(node_name(&id("system:node:n1", &["system:masters"])), None);
        assert_eq!(node_name(&id("admin", &["system:nodes"])), None);
        assert_eq!(node_name(&id("system:node:", &["system:nodes"])), None);
    }
}
