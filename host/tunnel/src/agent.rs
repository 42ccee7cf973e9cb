//! The node end of the tunnel: joins the cluster once, then keeps one mTLS QUIC connection
//! to the server alive for as long as the agent runs.

use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, Ordering};
use std::time::{Duration, SystemTime};

use bytes::Bytes;
use http_body_util::{BodyExt, Full, Limited};
use quinn::crypto::rustls::QuicClientConfig;
use rand::Rng;
use rcgen::{CertificateParams, DistinguishedName, DnType, KeyPair};
use rustls::client::WebPkiServerVerifier;
use rustls::client::danger::{HandshakeSignatureValid, ServerCertVerified, ServerCertVerifier};
use rustls::crypto::CryptoProvider;
use rustls::{CertificateError, DigitallySignedStruct, RootCertStore, SignatureScheme};
use rustls_pki_types::pem::PemObject;
use rustls_pki_types::{CertificateDer, PrivateKeyDer, ServerName, UnixTime};
use sha2::{Digest, Sha256};
use tokio::sync::watch;
use tokio_util::sync::CancellationToken;
use tokio_util::task::TaskTracker;
use tracing::{debug, error, info, warn};

use crate::fsutil::{self, SECRET};
use crate::io::{self, serve_stream, transport_config};
use crate::pki::{CertInfo, cert_info_pem};
use crate::revocation::rfc3339;
use crate::server::{NODE_USER_PREFIX, NODES_GROUP};
use crate::token::JoinToken;
use crate::wire::{
    self, BootstrapReply, BootstrapRequest, MAX_MESSAGE, RENEW_PATH, RenewRequest, Welcome, close,
};
use crate::{ALPN, Error, SERVER_NAME};

/// How long `request` waits for a connection while the supervisor is reconnecting.
const REQUEST_WAIT: Duration = Duration::from_secs(10);
/// One dial (handshake + welcome); quinn would otherwise wait for the 30 s idle timeout.
const DIAL_TIMEOUT: Duration = Duration::from_secs(10);
const BOOTSTRAP_TIMEOUT: Duration = Duration::from_secs(30);
const BACKOFF_START: Duration = Duration::from_millis(200);
const BACKOFF_CAP: Duration = Duration::from_secs(7);
/// While the server does not answer at all (a cut link), dials give up after this long and
/// the next starts at once (every fourth waits the full [`DIAL_TIMEOUT`], for slow links):
/// once the link heals, the dial in flight is young enough that its handshake is sent again
/// within a second or two, instead of after the QUIC handshake's own retransmission
/// back-off (1, 2, 4 s …). One dial at a time: overlapping ones could all get through when
/// the link heals, and the server would keep the last and close the one in use. Dials into a
/// cut cost the server nothing: it never sees them.
const QUICK_DIAL: Duration = Duration::from_secs(3);
/// Nothing at all from the server for this long — keep-alives every 5 s are acknowledged —
/// means the path is dead even though QUIC's 30 s idle timeout has not run out: after a cut
/// heals, the old connection would wait out its loss-recovery back-off (up to tens of
/// seconds), a new one answers in a round trip.
const STALL_AFTER: Duration = Duration::from_secs(12);
/// Renew when this share of the certificate's lifetime has passed, jittered over the range
/// (kubelet uses 70–90 %) so nodes that joined together do not renew together.
const RENEW_FROM: f64 = 0.7;
const RENEW_TO: f64 = 0.8;
/// How long the connection with the old certificate stays open after the switch, for the
/// requests in flight on it (the server keeps it a little longer, see `REPLACED_GRACE`).
const ROTATION_DRAIN: Duration = Duration::from_secs(1);
/// After a failed renewal, retry after a tenth of the remaining lifetime within these bounds.
const RENEW_RETRY_MIN: Duration = Duration::from_secs(1);
const RENEW_RETRY_MAX: Duration = Duration::from_secs(300);

/// A join token an operator writes into the state directory, read again on every join
/// attempt: how a running agent whose certificate expired while it was offline gets a new
/// one without a restart. Removed once the node has joined with it. It holds a bootstrap
/// secret and the CA pin the node will trust, so, as ssh does for keys, it is used only as a
/// regular file of the agent's user that nobody else may read or write (mode 600).
pub const JOIN_TOKEN_FILE: &str = "join-token";

#[derive(Clone)]
pub struct AgentConfig {
    /// `host:port` of the server's tunnel endpoint; resolved on every dial so DNS changes
    /// are followed.
    pub server: String,
    /// Needed only until the node has a certificate in `state_dir`, and again if that
    /// certificate expires while the node is offline. A token in `state_dir`'s
    /// [`JOIN_TOKEN_FILE`] is tried first.
    pub join_token: Option<String>,
    pub node_name: String,
    pub state_dir: PathBuf,
}

/// Hand-written so the join token's secret never reaches logs.
impl std::fmt::Debug for AgentConfig {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("AgentConfig")
            .field("server", &self.server)
            .field(
                "join_token",
                &self.join_token.as_ref().map(|_| "<redacted>"),
            )
            .field("node_name", &self.node_name)
            .field("state_dir", &self.state_dir)
            .finish()
    }
}

/// A handle on the node's tunnel; cheap to clone.
#[derive(Clone)]
pub struct TunnelClient {
    inner: Arc<ClientInner>,
}

struct ClientInner {
    link: watch::Receiver<Option<Link>>,
    connected: watch::Receiver<bool>,
    cancel: CancellationToken,
}

/// A live connection. The endpoint is kept alongside so its UDP socket lives exactly as long
/// as the connection that uses it.
#[derive(Clone)]
struct Link {
    conn: quinn::Connection,
    endpoint: quinn::Endpoint,
    /// Where the server sees this connection come from (its welcome says).
    observed: Option<String>,
    /// The window of streams the server may open to this node.
    credit: Arc<io::StreamCredit>,
}

struct StatePaths {
    cert: PathBuf,
    key: PathBuf,
    ca: PathBuf,
    /// A new key and certificate are staged here, then renamed into place: the pair on disk
    /// always matches, whenever the agent stops.
    cert_next: PathBuf,
    key_next: PathBuf,
    /// See [`JOIN_TOKEN_FILE`].
    join_token: PathBuf,
}

impl StatePaths {
    fn new(dir: &Path) -> Self {
        Self {
            cert: dir.join("node.crt"),
            key: dir.join("node.key"),
            ca: dir.join("ca.crt"),
            cert_next: dir.join("node.crt.next"),
            key_next: dir.join("node.key.next"),
            join_token: dir.join(JOIN_TOKEN_FILE),
        }
    }

    fn complete(&self) -> bool {
        self.cert.exists() && self.key.exists() && self.ca.exists()
    }

    /// Replaces key and certificate. The staged certificate is written last, so its presence
    /// means the staged pair is whole; [`Self::commit`] finishes the renames, now or after a
    /// crash at any point.
    fn install(&self, key_pem: &str, cert_pem: &str) -> Result<(), Error> {
        fsutil::write_atomic(&self.key_next, key_pem.as_bytes(), SECRET)?;
        fsutil::write_atomic(&self.cert_next, cert_pem.as_bytes(), SECRET)?;
        self.commit()
    }

    fn commit(&self) -> Result<(), Error> {
        if !self.cert_next.exists() {
            // A crash before the pair was whole: the old one is still in place.
            let _ = std::fs::remove_file(&self.key_next);
            return Ok(());
        }
        if self.key_next.exists() {
            std::fs::rename(&self.key_next, &self.key).map_err(fsutil::io_err(&self.key))?;
        }
        std::fs::rename(&self.cert_next, &self.cert).map_err(fsutil::io_err(&self.cert))
    }

    fn cert_info(&self) -> Result<CertInfo, Error> {
        let pem = std::fs::read_to_string(&self.cert).map_err(fsutil::io_err(&self.cert))?;
        cert_info_pem(&pem).ok_or_else(|| bad_file(&self.cert, "not a certificate"))
    }

    /// The join token in [`JOIN_TOKEN_FILE`], if the operator put one there;
    /// [`Error::InsecureFile`] saying what to fix if others may read or change it.
    fn file_token(&self) -> Result<Option<String>, Error> {
        use rustix::fs::{Mode, OFlags};
        use std::io::Read as _;
        use std::os::unix::fs::MetadataExt as _;
        let path = &self.join_token;
        let uid = rustix::process::geteuid().as_raw();
        let check = |meta: &std::fs::Metadata| {
            let reason = insecure(path, meta.file_type(), meta.uid(), meta.mode(), uid);
            reason.map_or(Ok(()), |reason| {
                Err(Error::InsecureFile {
                    path: path.clone(),
                    reason,
                })
            })
        };
        match std::fs::symlink_metadata(path) {
            Ok(meta) => check(&meta)?,
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => return Ok(None),
            Err(e) => return Err(fsutil::io_err(path)(e)),
        }
        // Not through a link swapped in since, nor blocking on a FIFO; checked again on what
        // was opened.
        let flags = OFlags::RDONLY | OFlags::NOFOLLOW | OFlags::NONBLOCK | OFlags::CLOEXEC;
        let fd = rustix::fs::open(path, flags, Mode::empty())
            .map_err(|e| fsutil::io_err(path)(e.into()))?;
        let mut file = std::fs::File::from(fd);
        check(&file.metadata().map_err(fsutil::io_err(path))?)?;
        let mut s = String::new();
        file.read_to_string(&mut s).map_err(fsutil::io_err(path))?;
        Ok(Some(s.trim().to_owned()).filter(|t| !t.is_empty()))
    }

    /// Why this node cannot reconnect, and what the operator must do.
    fn expired(&self, cert: &CertInfo) -> Error {
        Error::CertificateExpired {
            path: self.cert.clone(),
            not_after: rfc3339(cert.not_after),
            token_file: self.join_token.clone(),
        }
    }
}

impl TunnelClient {
    /// Joins if needed, connects, and leaves a supervisor running until `cancel`.
    ///
    /// Errors that need an operator (bad or missing join token, wrong CA pin, refused
    /// certificate) are returned. A server that is merely unreachable is not an error once
    /// the node has joined: the agent must start and keep its pods running while the server
    /// is away, so the supervisor keeps dialling in the background instead. Nor is a
    /// certificate that expired while the node was offline (a power cycle after a long
    /// outage must not stop its pods): the agent starts offline and the supervisor joins
    /// again once a join token is there.
    pub async fn start(
        cfg: AgentConfig,
        kubelet: axum::Router,
        cancel: CancellationToken,
    ) -> Result<Self, Error> {
        let paths = StatePaths::new(&cfg.state_dir);
        if cfg.state_dir.exists() {
            paths.commit()?;
        }
        let mut refused = Vec::new();
        let mut joined = false;
        if !paths.complete() {
            join(&cfg, &paths, &mut refused).await?;
            joined = true;
        }
        let mut dialer = Dialer {
            server: cfg.server.clone(),
            config: mtls_client_config(&paths)?,
            last: Default::default(),
            several: Default::default(),
        };
        let cert = paths.cert_info()?;
        let first = if cert.not_after <= SystemTime::now() {
            // The server would refuse it. The pods run on from the local record; the
            // supervisor joins again (with a token given now or written later) and says what
            // is missing.
            warn!(
                not_after = %rfc3339(cert.not_after),
                "the node certificate expired while the node was offline; starting offline and joining again in the background"
            );
            None
        } else {
            let mut first = dialer.dial().await;
            // A revoked node's certificate is refused; with a (new) join token it joins again.
            if let Err(Error::CertificateRefused(reason)) = &first
                && !joined
                && (cfg.join_token.is_some() || paths.file_token()?.is_some())
            {
                warn!(%reason, "the server refused this node's certificate; joining again with the given join token");
                join(&cfg, &paths, &mut refused).await?;
                dialer.config = mtls_client_config(&paths)?;
                first = dialer.dial().await;
            }
            match first {
                Ok(link) => Some(link),
                Err(e @ Error::CertificateRefused(_)) => return Err(e),
                Err(e) => {
                    warn!(server = %cfg.server, error = %e, "server unreachable; will keep trying");
                    None
                }
            }
        };
        let cert = paths.cert_info()?;
        let (link_tx, link_rx) = watch::channel(None);
        let (connected_tx, connected_rx) = watch::channel(false);
        let supervisor = Supervisor {
            renew_at: renew_deadline(&cert),
            cert,
            paths,
            node_name: cfg.node_name.clone(),
            cfg,
            refused,
            join_reported: None,
            dialer,
            link_tx,
            connected_tx,
            kubelet,
            cancel: cancel.clone(),
            tracker: TaskTracker::new(),
        };
        if let Some(link) = &first {
            supervisor.publish(Some(link.clone()));
        }
        tokio::spawn(supervisor.run(first));
        Ok(Self {
            inner: Arc::new(ClientInner {
                link: link_rx,
                connected: connected_rx,
                cancel,
            }),
        })
    }

    /// One API request on a fresh stream; the response body streams (watches).
    pub async fn request(
        &self,
        req: http::Request<Full<Bytes>>,
    ) -> Result<http::Response<hyper::body::Incoming>, Error> {
        let mut rx = self.inner.link.clone();
        let link = tokio::time::timeout(REQUEST_WAIT, rx.wait_for(Option::is_some))
            .await
            .map_err(|_| Error::NotConnected(REQUEST_WAIT))?
            .map_err(|_| Error::NotConnected(REQUEST_WAIT))?
            .clone()
            .ok_or(Error::NotConnected(REQUEST_WAIT))?;
        let (send, recv) = link.conn.open_bi().await?;
        io::send_request(
            send,
            recv,
            req,
            SERVER_NAME,
            self.inner.cancel.child_token(),
        )
        .await
    }

    /// Whether the tunnel is up right now; watch it to react to loss and recovery.
    pub fn connected(&self) -> watch::Receiver<bool> {
        self.inner.connected.clone()
    }

    /// The address the server sees the current connection come from (the public side of a
    /// NAT the node is behind); `None` while disconnected or from an older server.
    pub fn observed_address(&self) -> Option<String> {
        self.inner
            .link
            .borrow()
            .as_ref()
            .and_then(|l| l.observed.clone())
    }
}

/// Everything needed to (re)establish the mTLS connection.
struct Dialer {
    server: String,
    config: quinn::ClientConfig,
    /// The address of the last dial, so a redial after a loss tries the next server first.
    last: std::sync::Mutex<Option<SocketAddr>>,
    /// Whether the servers resolved to more than one address (see [`FAILOVER_IDLE`]).
    several: std::sync::atomic::AtomicBool,
}

impl Dialer {
    async fn dial(&self) -> Result<Link, Error> {
        self.dial_inner().await
    }

    /// Tries each server address in turn (the first answer wins; a refused certificate
    /// ends it, as every server would refuse it).
    async fn dial_inner(&self) -> Result<Link, Error> {
        let addrs = resolve_all(&self.server).await?;
        self.several
            .store(addrs.len() > 1, std::sync::atomic::Ordering::Relaxed);
        let endpoint = client_endpoint(addrs[0], &self.server)?;
        let mut last = None;
        for addr in &addrs {
            match self.dial_on(endpoint.clone(), *addr, DIAL_TIMEOUT).await {
                Ok(link) => return Ok(link),
                Err(e @ Error::CertificateRefused(_)) => return Err(e),
                Err(e) => last = Some(e),
            }
        }
        Err(last.expect("at least one address"))
    }

    /// The QUIC settings for a dial: with several servers to go to, a dead one is given up
    /// within [`FAILOVER_IDLE`] instead of the 30 s a lone server (behind a flaky link) gets.
    fn config_for(&self, several: bool) -> quinn::ClientConfig {
        let mut config = self.config.clone();
        if several {
            config.transport_config(crate::io::transport_config_idle(true, FAILOVER_IDLE));
        }
        config
    }

    /// One dial on `endpoint` that gives up after `limit` without an answer.
    async fn dial_on(
        &self,
        endpoint: quinn::Endpoint,
        addr: SocketAddr,
        limit: Duration,
    ) -> Result<Link, Error> {
        *self.last.lock().unwrap_or_else(|p| p.into_inner()) = Some(addr);
        tokio::time::timeout(limit, self.handshake(endpoint, addr))
            .await
            .map_err(|_| Error::Connect {
                server: self.server.clone(),
                reason: format!("no answer within {limit:?}"),
            })?
    }

    async fn handshake(&self, endpoint: quinn::Endpoint, addr: SocketAddr) -> Result<Link, Error> {
        let several = self.several.load(std::sync::atomic::Ordering::Relaxed);
        let conn = endpoint
            .connect_with(self.config_for(several), addr, SERVER_NAME)
            .map_err(|e| self.connect_err(e))?
            .await
            .map_err(|e| self.classify(e))?;
        // Wait for the server's welcome: only then do we know it accepted our certificate.
        let welcome = async {
            let mut s = conn.accept_uni().await?;
            let bytes = s.read_to_end(MAX_MESSAGE).await?;
            serde_json::from_slice::<Welcome>(&bytes)
                .map_err(|e| Error::Protocol(format!("bad welcome: {e}")))
        };
        match welcome.await {
            Ok(w) => {
                info!(server = %addr, node = %w.node, seen_as = ?w.observed, "tunnel connected");
                Ok(Link {
                    credit: Arc::new(io::StreamCredit::new(&conn)),
                    conn,
                    endpoint,
                    observed: w.observed,
                })
            }
            Err(Error::Connection(e)) => Err(self.classify(e)),
            Err(Error::Read(quinn::ReadToEndError::Read(quinn::ReadError::ConnectionLost(e)))) => {
                Err(self.classify(e))
            }
            Err(e) => Err(e),
        }
    }

    fn connect_err(&self, e: impl std::fmt::Display) -> Error {
        Error::Connect {
            server: self.server.clone(),
            reason: e.to_string(),
        }
    }

    /// In TLS 1.3 the server judges our certificate after our side of the handshake is done,
    /// so a refusal arrives as an early close: a TLS alert, or our unauthorized close code.
    fn classify(&self, e: quinn::ConnectionError) -> Error {
        match &e {
            quinn::ConnectionError::ConnectionClosed(c)
                if (0x100..0x200).contains(&u64::from(c.error_code)) =>
            {
                Error::CertificateRefused(c.to_string())
            }
            quinn::ConnectionError::ApplicationClosed(a) if a.error_code == close::UNAUTHORIZED => {
                Error::CertificateRefused(String::from_utf8_lossy(&a.reason).into_owned())
            }
            _ => self.connect_err(e),
        }
    }
}

/// Owns the connection after `start` returns: serves the server's kubelet requests,
/// renews the node certificate in time, and reconnects with jittered exponential back-off
/// when the connection is lost.
struct Supervisor {
    dialer: Dialer,
    paths: StatePaths,
    node_name: String,
    /// How to join again when the certificate expired while offline.
    cfg: AgentConfig,
    /// Join tokens the server refused: not sent again.
    refused: Vec<String>,
    /// The last join failure logged, so each is said once rather than on every retry.
    join_reported: Option<String>,
    /// The certificate in use (on disk and in `dialer`).
    cert: CertInfo,
    renew_at: tokio::time::Instant,
    link_tx: watch::Sender<Option<Link>>,
    connected_tx: watch::Sender<bool>,
    kubelet: axum::Router,
    cancel: CancellationToken,
    tracker: TaskTracker,
}

/// Why [`Supervisor::serve`] returned.
enum Served {
    Lost,
    Cancelled,
    RenewDue,
}

impl Supervisor {
    fn publish(&self, link: Option<Link>) {
        let up = link.is_some();
        self.link_tx.send_replace(link);
        self.connected_tx.send_replace(up);
    }

    async fn run(mut self, mut link: Option<Link>) {
        let mut failures: u32 = 0;
        loop {
            if let Some(l) = link.take() {
                failures = 0;
                self.publish(Some(l.clone()));
                match self.serve(&l).await {
                    Served::RenewDue => {
                        link = Some(self.rotate(l).await);
                        continue;
                    }
                    Served::Cancelled => {
                        self.publish(None);
                        l.conn.close(close::SHUTDOWN, b"agent shutting down");
                        let _ =
                            tokio::time::timeout(Duration::from_secs(1), l.endpoint.wait_idle())
                                .await;
                        break;
                    }
                    Served::Lost => self.publish(None),
                }
            }
            let delay = backoff(failures);
            tokio::select! {
                () = self.cancel.cancelled() => break,
                () = tokio::time::sleep(delay) => {}
            }
            if self.cert.not_after <= SystemTime::now() {
                // The server would refuse it: join again with a token, once there is one.
                let cancel = self.cancel.clone();
                let res = tokio::select! {
                    () = cancel.cancelled() => break,
                    res = self.join_again() => res,
                };
                if let Err(e) = res {
                    self.report_join_failure(e);
                    failures = failures.saturating_add(1);
                    continue;
                }
            }
            let res = tokio::select! {
                () = self.cancel.cancelled() => break,
                res = self.redial() => res,
            };
            match res {
                Ok(l) => link = Some(l),
                Err(e @ Error::CertificateRefused(_)) => {
                    error!(error = %e, "reconnect refused");
                    failures = failures.saturating_add(1);
                }
                Err(e) => {
                    // The first failure is news; the rest of an outage is noise.
                    if failures == 0 {
                        warn!(error = %e, "tunnel reconnect failed; backing off");
                    } else {
                        debug!(error = %e, failures, "tunnel reconnect failed");
                    }
                    failures = failures.saturating_add(1);
                }
            }
        }
        self.tracker.close();
        let _ = tokio::time::timeout(Duration::from_secs(2), self.tracker.wait()).await;
    }

    /// Dials until one dial gets through or fails for a reason other than silence (see
    /// [`QUICK_DIAL`]).
    async fn redial(&self) -> Result<Link, Error> {
        // One endpoint (a fresh source port, as after a NAT rebinding) for all the dials of
        // this outage: each endpoint has its own socket and megabytes of receive buffers.
        let mut addrs = resolve_all(&self.dialer.server).await?;
        self.dialer
            .several
            .store(addrs.len() > 1, std::sync::atomic::Ordering::Relaxed);
        // Several servers: start with the one after the server just lost.
        let last = *self.dialer.last.lock().unwrap_or_else(|p| p.into_inner());
        if let Some(at) = last.and_then(|l| addrs.iter().position(|a| *a == l)) {
            addrs.rotate_left(at + 1);
        }
        let endpoint = client_endpoint(addrs[0], &self.dialer.server)?;
        let mut unanswered = false;
        for attempt in 0u32.. {
            // Each server in turn; with one, every dial goes there.
            let addr = addrs[attempt as usize % addrs.len()];
            let limit = if attempt % 4 == 0 && addrs.len() == 1 {
                DIAL_TIMEOUT
            } else {
                QUICK_DIAL
            };
            match self.dialer.dial_on(endpoint.clone(), addr, limit).await {
                Ok(link) => return Ok(link),
                Err(e) if !silent(&e) => return Err(e),
                Err(e) => {
                    if !unanswered {
                        warn!(error = %e, "the server does not answer; dialing again until it does");
                        unanswered = true;
                    }
                }
            }
        }
        unreachable!("dials until one gets through")
    }

    /// A new certificate through a join token, for a node whose certificate expired.
    async fn join_again(&mut self) -> Result<(), Error> {
        join(&self.cfg, &self.paths, &mut self.refused).await?;
        self.dialer.config = mtls_client_config(&self.paths)?;
        self.cert = self.paths.cert_info()?;
        self.renew_at = renew_deadline(&self.cert);
        self.join_reported = None;
        Ok(())
    }

    /// Says what the operator has to do, once per distinct failure: the pods keep running
    /// meanwhile, so this is all an operator sees of the problem.
    fn report_join_failure(&mut self, e: Error) {
        if unreachable(&e) {
            debug!(error = %e, "joining again: server unreachable");
            return;
        }
        let e = match e {
            Error::NotJoined(_) => self.paths.expired(&self.cert),
            e => e,
        };
        let text = e.to_string();
        if self.join_reported.as_ref() != Some(&text) {
            error!(error = %text, "the node certificate expired; running offline until the node joins again");
            self.join_reported = Some(text);
        }
    }

    /// Serves server-opened streams until the connection is lost, we are cancelled, or the
    /// certificate is due for renewal.
    async fn serve(&self, link: &Link) -> Served {
        let renew = tokio::time::sleep_until(self.renew_at);
        tokio::pin!(renew);
        let mut check = tokio::time::interval(Duration::from_secs(1));
        let mut received = link.conn.stats().udp_rx.datagrams;
        let mut heard = tokio::time::Instant::now();
        loop {
            tokio::select! {
                () = self.cancel.cancelled() => return Served::Cancelled,
                () = &mut renew => return Served::RenewDue,
                _ = check.tick() => {
                    let now = link.conn.stats().udp_rx.datagrams;
                    if now != received {
                        received = now;
                        heard = tokio::time::Instant::now();
                    } else if heard.elapsed() >= STALL_AFTER {
                        warn!(silent = ?heard.elapsed(), "tunnel stalled: nothing from the server; reconnecting");
                        link.conn.close(close::STALLED, b"nothing heard from the server");
                        return Served::Lost;
                    }
                }
                res = link.conn.accept_bi() => match res {
                    Ok((send, recv)) => {
                        let open = link.credit.opened();
                        self.tracker.spawn(serve_stream(send, recv, self.kubelet.clone(), self.cancel.clone(), open));
                    }
                    Err(quinn::ConnectionError::ApplicationClosed(a)) if a.error_code == close::UNAUTHORIZED => {
                        error!(reason = %String::from_utf8_lossy(&a.reason), "the server closed this node's tunnel and refuses its certificate");
                        return Served::Lost;
                    }
                    Err(e) => {
                        warn!(reason = %e, "tunnel lost; reconnecting");
                        return Served::Lost;
                    }
                },
            }
        }
    }

    /// Renews the certificate over `old` and moves to a connection that uses it; the old
    /// connection is closed only once the new one is up, so API calls and kubelet streams
    /// see at most a reconnect and pods are not touched. On failure `old` stays in use and
    /// the renewal is retried later.
    async fn rotate(&mut self, old: Link) -> Link {
        match self.renew(&old).await {
            Ok(()) => {}
            Err(e) => {
                let left = self
                    .cert
                    .not_after
                    .duration_since(SystemTime::now())
                    .unwrap_or_default();
                let retry = (left / 10).clamp(RENEW_RETRY_MIN, RENEW_RETRY_MAX);
                warn!(error = %e, retry_in = ?retry, "node certificate renewal failed");
                self.renew_at = tokio::time::Instant::now() + retry;
                return old;
            }
        }
        match self.dialer.dial().await {
            Ok(new) => {
                info!(serial = %self.cert.serial, "tunnel now uses the renewed certificate");
                // Requests already on the old connection finish first; new ones take the new
                // connection as soon as it is published.
                let cancel = self.cancel.clone();
                self.tracker.spawn(async move {
                    tokio::select! {
                        () = cancel.cancelled() => {}
                        () = tokio::time::sleep(ROTATION_DRAIN) => {}
                    }
                    old.conn
                        .close(close::ROTATED, b"reconnected with a renewed certificate");
                });
                new
            }
            Err(e) => {
                // The old certificate still works until it expires; the server closes the
                // connection then and the next dial uses the new one.
                warn!(error = %e, "reconnecting with the renewed certificate failed; keeping the current connection");
                old
            }
        }
    }

    /// One renewal request: a new key, its CSR to the server, the answer installed on disk
    /// and in the dialer.
    async fn renew(&mut self, link: &Link) -> Result<(), Error> {
        let (key, csr) = key_and_csr(&self.node_name)?;
        let req = http::Request::post(RENEW_PATH)
            .header(http::header::CONTENT_TYPE, "application/json")
            .body(Full::new(Bytes::from(wire::encode(&RenewRequest { csr }))))
            .map_err(|e| Error::Protocol(e.to_string()))?;
        let (send, recv) = link.conn.open_bi().await?;
        let resp =
            io::send_request(send, recv, req, SERVER_NAME, self.cancel.child_token()).await?;
        let body = Limited::new(resp.into_body(), MAX_MESSAGE)
            .collect()
            .await
            .map_err(|e| Error::Protocol(format!("renewal reply: {e}")))?
            .to_bytes();
        let certificate = match serde_json::from_slice::<BootstrapReply>(&body)
            .map_err(|e| Error::Protocol(format!("bad renewal reply: {e}")))?
        {
            BootstrapReply::Issued { certificate, .. } => certificate,
            BootstrapReply::Refused { error, .. } => return Err(Error::RenewalRefused(error)),
        };
        let info = cert_info_pem(&certificate)
            .ok_or_else(|| Error::Protocol("renewal reply holds no certificate".into()))?;
        self.paths.install(&key.serialize_pem(), &certificate)?;
        self.dialer.config = mtls_client_config(&self.paths)?;
        info!(
            old_serial = %self.cert.serial,
            serial = %info.serial,
            not_after = %rfc3339(info.not_after),
            "node certificate renewed"
        );
        self.renew_at = renew_deadline(&info);
        self.cert = info;
        Ok(())
    }
}

/// Why a file holding a secret (at `path`, of `file_type`, owned by `owner`, with `mode`) must
/// not be used by an agent running as `uid`, as ssh refuses a key file: anything but a
/// regular file of `uid` that group and others can neither read nor write. The reason says
/// how to fix it.
fn insecure(
    path: &Path,
    file_type: std::fs::FileType,
    owner: u32,
    mode: u32,
    uid: u32,
) -> Option<String> {
    let path = path.display();
    if !file_type.is_file() {
        let what = if file_type.is_symlink() {
            "a symbolic link"
        } else if file_type.is_dir() {
            "a directory"
        } else {
            "a special file"
        };
        return Some(format!(
            "it is {what}, not a regular file: write the token into a regular file there, \
             with mode 600"
        ));
    }
    if owner != uid {
        return Some(format!(
            "it belongs to uid {owner}, not to the agent's uid {uid}, so someone else may \
             have written it: chown {uid} {path} (and chmod 600 {path}) if the token is yours"
        ));
    }
    if mode & 0o077 != 0 {
        return Some(format!(
            "group or others may read or write it (mode {:03o}) and it holds a secret: \
             chmod 600 {path}",
            mode & 0o777
        ));
    }
    None
}

/// Errors that mean "try again later" rather than "an operator must act".
/// A dial that got no answer at all (as opposed to a refusal or an error on the way).
fn silent(e: &Error) -> bool {
    match e {
        Error::Connect { reason, .. } => reason.starts_with("no answer"),
        Error::Connection(quinn::ConnectionError::TimedOut) => true,
        _ => false,
    }
}

fn unreachable(e: &Error) -> bool {
    matches!(
        e,
        Error::Connect { .. }
            | Error::Resolve { .. }
            | Error::Connection(_)
            | Error::Read(_)
            | Error::Write(_)
    )
}

/// When to renew `cert`, as a tokio instant: a random point in the renewal window.
fn renew_deadline(cert: &CertInfo) -> tokio::time::Instant {
    let share = rand::rng().random_range(RENEW_FROM..RENEW_TO);
    tokio::time::Instant::now() + renew_delay(cert, SystemTime::now(), share)
}

/// How long from `now` until `share` (0..1) of the certificate's lifetime has passed; zero
/// when that point is behind us (renew at once).
fn renew_delay(cert: &CertInfo, now: SystemTime, share: f64) -> Duration {
    let at = cert.issued_at + cert.lifetime().mul_f64(share);
    at.duration_since(now).unwrap_or_default()
}

/// 200 ms doubling to a 7 s cap, each delay drawn from its upper half so that many agents
/// losing the same server do not come back in lockstep.
fn backoff(failures: u32) -> Duration {
    let base = BACKOFF_START
        .saturating_mul(1u32 << failures.min(16))
        .min(BACKOFF_CAP);
    let ms = base.as_millis() as u64;
    Duration::from_millis(rand::rng().random_range(ms / 2..=ms))
}

/// How long a connection may stay silent before the agent gives it up when it has several
/// servers to go to (keep-alives every second), so it is back on another within ~5 s of its
/// server's death. A false alarm on a slow link costs a reconnect to another server.
const FAILOVER_IDLE: Duration = Duration::from_secs(4);

/// Every address of every server in `server` (`host:port`, or several, comma-separated; a
/// name may resolve to several), in order, without repeats.
async fn resolve_all(server: &str) -> Result<Vec<SocketAddr>, Error> {
    let mut out: Vec<SocketAddr> = Vec::new();
    let mut last_err = None;
    for one in server.split(',').map(str::trim).filter(|s| !s.is_empty()) {
        match tokio::net::lookup_host(one).await {
            Ok(addrs) => {
                for a in addrs {
                    if !out.contains(&a) {
                        out.push(a);
                    }
                }
            }
            Err(e) => last_err = Some(e.to_string()),
        }
    }
    if out.is_empty() {
        return Err(Error::Resolve {
            server: server.to_owned(),
            reason: last_err.unwrap_or_else(|| "no addresses".into()),
        });
    }
    Ok(out)
}

/// The first server of a `--server` list (for what needs one address).
pub fn first_server(server: &str) -> &str {
    server
        .split(',')
        .map(str::trim)
        .find(|s| !s.is_empty())
        .unwrap_or(server)
}

async fn resolve(server: &str) -> Result<SocketAddr, Error> {
    let err = |reason: String| Error::Resolve {
        server: server.to_owned(),
        reason,
    };
    tokio::net::lookup_host(server)
        .await
        .map_err(|e| err(e.to_string()))?
        .next()
        .ok_or_else(|| err("no addresses".into()))
}

fn client_endpoint(addr: SocketAddr, server: &str) -> Result<quinn::Endpoint, Error> {
    let local: SocketAddr = if addr.is_ipv4() {
        (std::net::Ipv4Addr::UNSPECIFIED, 0).into()
    } else {
        (std::net::Ipv6Addr::UNSPECIFIED, 0).into()
    };
    quinn::Endpoint::client(local).map_err(|e| Error::Connect {
        server: server.to_owned(),
        reason: format!("bind local udp socket: {e}"),
    })
}

pub(crate) fn provider() -> Arc<CryptoProvider> {
    Arc::new(rustls::crypto::ring::default_provider())
}

pub(crate) fn quic_client_config(
    mut tls: rustls::ClientConfig,
) -> Result<quinn::ClientConfig, Error> {
    tls.alpn_protocols = vec![ALPN.to_vec()];
    let quic = QuicClientConfig::try_from(tls)
        .map_err(|e| Error::Protocol(format!("quic tls config: {e}")))?;
    let mut config = quinn::ClientConfig::new(Arc::new(quic));
    config.transport_config(transport_config(true));
    Ok(config)
}

fn bad_file(path: &Path, reason: impl std::fmt::Display) -> Error {
    Error::BadFile {
        path: path.to_path_buf(),
        reason: reason.to_string(),
    }
}

fn mtls_client_config(paths: &StatePaths) -> Result<quinn::ClientConfig, Error> {
    let ca = CertificateDer::from_pem_file(&paths.ca).map_err(|e| bad_file(&paths.ca, e))?;
    let chain = CertificateDer::pem_file_iter(&paths.cert)
        .map_err(|e| bad_file(&paths.cert, e))?
        .collect::<Result<Vec<_>, _>>()
        .map_err(|e| bad_file(&paths.cert, e))?;
    let key = PrivateKeyDer::from_pem_file(&paths.key).map_err(|e| bad_file(&paths.key, e))?;
    let mut roots = RootCertStore::empty();
    roots.add(ca)?;
    let tls = rustls::ClientConfig::builder_with_provider(provider())
        .with_protocol_versions(&[&rustls::version::TLS13])?
        .with_root_certificates(roots)
        .with_client_auth_cert(chain, key)?;
    quic_client_config(tls)
}

/// Trust-on-join: accept the server only if it presents, among its chain, the CA whose
/// SHA-256 the join token pins, and the serving certificate verifies normally against that
/// CA as the sole root. The token therefore carries all the trust a fresh node needs.
#[derive(Debug)]
pub struct PinnedCaVerifier {
    ca_hash: String,
    provider: Arc<CryptoProvider>,
    /// Set when no presented certificate matched the pin, to report that precisely.
    mismatch: AtomicBool,
}

impl PinnedCaVerifier {
    /// A verifier trusting the CA whose SHA-256 (hex) is `ca_hash`, and nothing else; also
    /// used by `kedge server --server` to check the first server before sending it a secret.
    pub fn new(ca_hash: &str) -> Self {
        PinnedCaVerifier {
            ca_hash: ca_hash.to_ascii_lowercase(),
            provider: provider(),
            mismatch: AtomicBool::new(false),
        }
    }

    /// Whether a handshake failed because no presented certificate was the pinned CA.
    pub fn mismatched(&self) -> bool {
        self.mismatch.load(Ordering::Relaxed)
    }
}

impl ServerCertVerifier for PinnedCaVerifier {
    fn verify_server_cert(
        &self,
        end_entity: &CertificateDer<'_>,
        intermediates: &[CertificateDer<'_>],
        server_name: &ServerName<'_>,
        ocsp_response: &[u8],
        now: UnixTime,
    ) -> Result<ServerCertVerified, rustls::Error> {
        let Some(ca) = intermediates
            .iter()
            .find(|c| hex::encode(Sha256::digest(c.as_ref())) == self.ca_hash)
        else {
            self.mismatch.store(true, Ordering::Relaxed);
            return Err(rustls::Error::InvalidCertificate(
                CertificateError::UnknownIssuer,
            ));
        };
        let mut roots = RootCertStore::empty();
        roots.add(ca.clone().into_owned())?;
        let inner =
            WebPkiServerVerifier::builder_with_provider(Arc::new(roots), self.provider.clone())
                .build()
                .map_err(|e| rustls::Error::General(e.to_string()))?;
        inner.verify_server_cert(end_entity, intermediates, server_name, ocsp_response, now)
    }

    fn verify_tls12_signature(
        &self,
        message: &[u8],
        cert: &CertificateDer<'_>,
        dss: &DigitallySignedStruct,
    ) -> Result<HandshakeSignatureValid, rustls::Error> {
        rustls::crypto::verify_tls12_signature(
            message,
            cert,
            dss,
            &self.provider.signature_verification_algorithms,
        )
    }

    fn verify_tls13_signature(
        &self,
        message: &[u8],
        cert: &CertificateDer<'_>,
        dss: &DigitallySignedStruct,
    ) -> Result<HandshakeSignatureValid, rustls::Error> {
        rustls::crypto::verify_tls13_signature(
            message,
            cert,
            dss,
            &self.provider.signature_verification_algorithms,
        )
    }

    fn supported_verify_schemes(&self) -> Vec<SignatureScheme> {
        self.provider
            .signature_verification_algorithms
            .supported_schemes()
    }
}

/// Joins (first start, or again after an expiry or revocation) with the first join token the
/// server accepts: the one in [`JOIN_TOKEN_FILE`], read again on every call, then the
/// configured one. Tokens in `refused` are skipped and the ones whose token the server
/// refused now (or that are no token at all) are added, so a dead token is sent once, not on
/// every retry. Any other failure (unreachable, a timeout, a server fault, a CA that does not
/// match the pin, a refusal of something else) leaves the token to be tried again.
/// [`Error::NotJoined`] when no token is left.
async fn join(
    cfg: &AgentConfig,
    paths: &StatePaths,
    refused: &mut Vec<String>,
) -> Result<(), Error> {
    // A token file that is not safe to use does not stop the configured token; its error is
    // the answer only when nothing else joins.
    let mut last = None;
    let from_file = match paths.file_token() {
        Ok(t) => t,
        Err(e @ Error::InsecureFile { .. }) => {
            last = Some(e);
            None
        }
        Err(e) => return Err(e),
    };
    let candidates = from_file
        .iter()
        .map(|t| (t, true))
        .chain(cfg.join_token.iter().map(|t| (t, false)));
    for (raw, is_file) in candidates {
        if refused.contains(raw) {
            continue;
        }
        match join_with(cfg, paths, raw).await {
            Ok(()) => {
                if is_file {
                    // Spent: a bootstrap credential should not lie around once it is used.
                    let _ = std::fs::remove_file(&paths.join_token);
                    info!(file = %paths.join_token.display(), "joined with the token from the file; file removed");
                }
                return Ok(());
            }
            Err(e @ (Error::Token(_) | Error::TokenRefused(_))) => {
                refused.push(raw.clone());
                last = Some(e);
            }
            // Not about the token, or not for sure: the next one may do, and this one is
            // tried again next time.
            Err(e @ (Error::BootstrapRefused(_) | Error::CaHashMismatch { .. })) => {
                last = Some(e);
            }
            Err(e) => return Err(e),
        }
    }
    Err(last.unwrap_or_else(|| Error::NotJoined(cfg.state_dir.clone())))
}

/// One join with the join token `raw`.
async fn join_with(cfg: &AgentConfig, paths: &StatePaths, raw: &str) -> Result<(), Error> {
    let join: JoinToken = raw.parse()?;
    fsutil::ensure_private_dir(&cfg.state_dir)?;
    tokio::time::timeout(BOOTSTRAP_TIMEOUT, bootstrap(cfg, &join, paths))
        .await
        .map_err(|_| Error::Connect {
            server: cfg.server.clone(),
            reason: format!("bootstrap did not finish within {BOOTSTRAP_TIMEOUT:?}"),
        })??;
    info!(node = %cfg.node_name, "joined the cluster; node certificate saved");
    Ok(())
}

/// A fresh node key and a CSR for it: the key never leaves the node.
fn key_and_csr(node_name: &str) -> Result<(KeyPair, String), Error> {
    let key = KeyPair::generate_for(&rcgen::PKCS_ECDSA_P256_SHA256)?;
    let mut params = CertificateParams::default();
    let mut dn = DistinguishedName::new();
    dn.push(DnType::OrganizationName, NODES_GROUP);
    dn.push(DnType::CommonName, format!("{NODE_USER_PREFIX}{node_name}"));
    params.distinguished_name = dn;
    let csr = params.serialize_request(&key)?.pem()?;
    Ok((key, csr))
}

/// Gets a node certificate: the key is made here and only the CSR travels.
/// Joins through the first of the servers that answers (a CA that does not match the
/// token's pin ends it at once).
async fn bootstrap(cfg: &AgentConfig, join: &JoinToken, paths: &StatePaths) -> Result<(), Error> {
    let mut last = None;
    for server in cfg
        .server
        .split(',')
        .map(str::trim)
        .filter(|s| !s.is_empty())
    {
        match bootstrap_at(cfg, server, join, paths).await {
            Ok(()) => return Ok(()),
            Err(e @ (Error::CaHashMismatch { .. } | Error::CertificateRefused(_))) => {
                return Err(e);
            }
            Err(e) => last = Some(e),
        }
    }
    Err(last.unwrap_or_else(|| Error::Resolve {
        server: cfg.server.clone(),
        reason: "no server given".into(),
    }))
}

async fn bootstrap_at(
    cfg: &AgentConfig,
    server: &str,
    join: &JoinToken,
    paths: &StatePaths,
) -> Result<(), Error> {
    let (key, csr) = key_and_csr(&cfg.node_name)?;

    let provider = provider();
    let verifier = Arc::new(PinnedCaVerifier {
        ca_hash: join.ca_hash.clone(),
        provider: provider.clone(),
        mismatch: AtomicBool::new(false),
    });
    let tls = rustls::ClientConfig::builder_with_provider(provider)
        .with_protocol_versions(&[&rustls::version::TLS13])?
        .dangerous()
        .with_custom_certificate_verifier(verifier.clone())
        .with_no_client_auth();
    let config = quic_client_config(tls)?;

    let connect_err = |reason: String| Error::Connect {
        server: server.to_string(),
        reason,
    };
    let addr = resolve(server).await?;
    let endpoint = client_endpoint(addr, &cfg.server)?;
    let conn = match endpoint
        .connect_with(config, addr, SERVER_NAME)
        .map_err(|e| connect_err(e.to_string()))?
        .await
    {
        Ok(conn) => conn,
        Err(_) if verifier.mismatch.load(Ordering::Relaxed) => {
            return Err(Error::CaHashMismatch {
                expected: join.ca_hash.clone(),
            });
        }
        Err(e) => return Err(connect_err(e.to_string())),
    };

    let exchange = async {
        let (mut send, mut recv) = conn.open_bi().await?;
        let req = BootstrapRequest {
            token: join.token.to_string(),
            node_name: cfg.node_name.clone(),
            csr,
        };
        send.write_all(&wire::encode(&req)).await?;
        let _ = send.finish();
        let bytes = recv.read_to_end(MAX_MESSAGE).await?;
        serde_json::from_slice::<BootstrapReply>(&bytes)
            .map_err(|e| Error::Protocol(format!("bad bootstrap reply: {e}")))
    };
    let reply = exchange.await;
    conn.close(close::BOOTSTRAP_DONE, b"bootstrap done");
    let _ = tokio::time::timeout(Duration::from_secs(1), endpoint.wait_idle()).await;

    let (certificate, ca) = match reply? {
        BootstrapReply::Issued { certificate, ca } => (certificate, ca),
        BootstrapReply::Refused { error, token: true } => return Err(Error::TokenRefused(error)),
        BootstrapReply::Refused { error, .. } => return Err(Error::BootstrapRefused(error)),
    };
    // The reply is already protected by the pinned handshake; checking the CA again guards
    // against saving something other than what the token pinned.
    let ca_der = CertificateDer::from_pem_slice(ca.as_bytes())
        .map_err(|e| Error::Protocol(format!("bad CA in bootstrap reply: {e}")))?;
    if hex::encode(Sha256::digest(ca_der.as_ref())) != join.ca_hash {
        return Err(Error::CaHashMismatch {
            expected: join.ca_hash.clone(),
        });
    }
    paths.install(&key.serialize_pem(), &certificate)?;
    // Written last: its presence completes the state that marks this node as joined.
    fsutil::write_atomic(&paths.ca, ca.as_bytes(), SECRET)?;
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[tokio::test]
    async fn several_servers_are_every_address_once_in_order() {
        let all = resolve_all(" 127.0.0.1:7001, 127.0.0.2:7002,127.0.0.1:7001,")
            .await
            .unwrap();
        let want: Vec<SocketAddr> = vec![
            "127.0.0.1:7001".parse().unwrap(),
            "127.0.0.2:7002".parse().unwrap(),
        ];
        assert_eq!(all, want);
        assert_eq!(
            first_server(" 127.0.0.2:7002,127.0.0.1:7001"),
            "127.0.0.2:7002"
        );
        assert_eq!(first_server("h:1"), "h:1");
        assert!(resolve_all(" , ").await.is_err());
    }

    #[test]
    fn renewal_falls_in_the_window() {
        let issued = SystemTime::UNIX_EPOCH + Duration::from_secs(1_000_000);
        let cert = CertInfo {
            serial: "01".into(),
            issued_at: issued,
            not_after: issued + Duration::from_secs(100),
        };
        assert_eq!(renew_delay(&cert, issued, 0.7), Duration::from_secs(70));
        assert_eq!(
            renew_delay(&cert, issued + Duration::from_secs(50), 0.75),
            Duration::from_secs(25)
        );
        assert_eq!(
            renew_delay(&cert, issued + Duration::from_secs(90), 0.7),
            Duration::ZERO,
            "overdue: renew at once"
        );
        for _ in 0..20 {
            let d = renew_deadline(&CertInfo {
                issued_at: SystemTime::now(),
                not_after: SystemTime::now() + Duration::from_secs(1000),
                ..cert.clone()
            }) - tokio::time::Instant::now();
            assert!(
                d >= Duration::from_secs(690) && d <= Duration::from_secs(800),
                "{d:?}"
            );
        }
    }

    #[test]
    fn staged_key_and_certificate_survive_a_crash_anywhere() {
        let dir = tempfile::tempdir().unwrap();
        let p = StatePaths::new(dir.path());
        let read = |f: &Path| std::fs::read_to_string(f).unwrap();
        p.install("key1", "cert1").unwrap();
        assert_eq!(
            (read(&p.key), read(&p.cert)),
            ("key1".into(), "cert1".into())
        );
        assert!(!p.key_next.exists() && !p.cert_next.exists());

        // Crash after staging only the key: the old pair stays, the half is dropped.
        std::fs::write(&p.key_next, "key2").unwrap();
        p.commit().unwrap();
        assert_eq!(
            (read(&p.key), read(&p.cert)),
            ("key1".into(), "cert1".into())
        );
        assert!(!p.key_next.exists());

        // Crash after staging both: the new pair is completed.
        std::fs::write(&p.key_next, "key3").unwrap();
        std::fs::write(&p.cert_next, "cert3").unwrap();
        p.commit().unwrap();
        assert_eq!(
            (read(&p.key), read(&p.cert)),
            ("key3".into(), "cert3".into())
        );

        // Crash between the two renames: the certificate follows its key.
        std::fs::write(&p.key, "key4").unwrap();
        std::fs::write(&p.cert_next, "cert4").unwrap();
        p.commit().unwrap();
        assert_eq!(
            (read(&p.key), read(&p.cert)),
            ("key4".into(), "cert4".into())
        );
        assert!(!p.cert_next.exists());
    }

    /// The join-token file holds a secret and the CA pin the node will trust: as ssh with a
    /// key, used only as a regular file of the agent's user closed to everyone else.
    #[test]
    fn join_token_file_is_used_only_when_private() {
        use std::os::unix::fs::{PermissionsExt, symlink};
        let dir = tempfile::tempdir().unwrap();
        let p = StatePaths::new(dir.path());
        let mode = |m| std::fs::set_permissions(&p.join_token, PermissionsExt::from_mode(m));
        assert!(p.file_token().unwrap().is_none(), "no file, no token");

        std::fs::write(&p.join_token, "K10abc::id.secret\n").unwrap();
        mode(0o600).unwrap();
        assert_eq!(
            p.file_token().unwrap().as_deref(),
            Some("K10abc::id.secret")
        );
        mode(0o400).unwrap();
        assert!(p.file_token().unwrap().is_some());
        for open in [0o644, 0o640, 0o604, 0o620, 0o602, 0o660] {
            mode(open).unwrap();
            let err = p.file_token().expect_err("open to others");
            assert!(matches!(err, Error::InsecureFile { .. }), "{err}");
            let text = err.to_string();
            assert!(
                text.contains(&format!("mode {open:03o}")) && text.contains("chmod 600"),
                "{text}"
            );
        }
        mode(0o600).unwrap();

        // A link, even to a private file, and a directory are not used.
        let link = StatePaths::new(&dir.path().join("linked"));
        std::fs::create_dir(dir.path().join("linked")).unwrap();
        symlink(&p.join_token, &link.join_token).unwrap();
        let err = link.file_token().expect_err("a link").to_string();
        assert!(err.contains("symbolic link"), "{err}");
        let nested = StatePaths::new(&dir.path().join("nested"));
        std::fs::create_dir_all(&nested.join_token).unwrap();
        let err = nested.file_token().expect_err("a directory").to_string();
        assert!(err.contains("directory"), "{err}");

        // Someone else's file (the owner is judged against the agent's uid).
        let meta = std::fs::symlink_metadata(&p.join_token).unwrap();
        let uid = rustix::process::geteuid().as_raw();
        let check = |owner, mode| insecure(&p.join_token, meta.file_type(), owner, mode, uid);
        assert_eq!(check(uid, 0o100600), None);
        let other = check(uid.wrapping_add(1), 0o100600).expect("not the agent's");
        assert!(
            other.contains("chown") && other.contains(&uid.to_string()),
            "{other}"
        );
    }

    #[test]
    fn backoff_grows_with_jitter_and_caps() {
        for _ in 0..50 {
            let first = backoff(0);
            assert!(first >= Duration::from_millis(100) && first <= BACKOFF_START);
            let later = backoff(3);
            assert!(later >= Duration::from_millis(800) && later <= Duration::from_millis(1600));
            let capped = backoff(30);
            assert!(capped >= BACKOFF_CAP / 2 && capped <= BACKOFF_CAP);
        }
    }
}
