//! UDP between nodes that cannot reach each other (behind different NATs): the relay's
//! streams ([`crate::relay`]) carry datagrams, each framed as a 2-byte big-endian length and
//! its bytes ([`UDP_UPGRADE`]), one stream per flow (a client's address and the destination).
//!
//! Three ends use it:
//! - B, the node hosting the pod: a UDP socket connected to the pod's `ip:port`, per relayed
//!   flow ([`serve_flow`]).
//! - A, for a Service whose endpoint is on B: a UDP [`Forwarder`] on the pod bridge's
//!   gateway address, which the service proxy sends the endpoint's traffic to (as the TCP
//!   forwarders); one flow per client address.
//! - A, for a pod address on B used directly: nftables redirects UDP to B's podCIDR to a
//!   socket in the agent ([`FarUdp`]), which learns each new client's original destination
//!   from its conntrack entry (`conntrack -L` by the reply tuple: UDP has no
//!   `SO_ORIGINAL_DST`, and TPROXY loses its socket on a bridge with `br_netfilter`, as pod
//!   bridges have); each flow answers from a socket bound to the redirect's address and
//!   connected to the client, so conntrack turns the answer's source back into the pod's
//!   address. One client socket may talk to several far addresses: the NAT resolves the
//!   clash of their replies (all from our one port) by giving each destination's flow a
//!   source port of its own, which is what the listener sees and keys flows by.
//!
//! A flow ends after [`IDLE`] without a datagram either way (conntrack's UDP timeout), when
//! either tunnel goes, or when the agent stops.

use std::collections::HashMap;
use std::io;
use std::net::{Ipv4Addr, SocketAddr, SocketAddrV4};
use std::os::fd::AsRawFd as _;
use std::sync::{Arc, Mutex};
use std::time::Duration;

use bytes::Bytes;
use futures_util::{SinkExt, StreamExt as _};
use tokio::io::{AsyncRead, AsyncWrite};
use tokio::net::UdpSocket;
use tokio::sync::mpsc;
use tokio_util::codec::{Framed, LengthDelimitedCodec};
use tokio_util::sync::CancellationToken;

use super::client::Client;
use kedge_core::channel::{MAX_DATAGRAM, UDP_UPGRADE};

/// A flow quiet this long either way ends (conntrack's default for UDP).
pub(crate) const IDLE: Duration = Duration::from_secs(30);
/// Flows one forwarder or the far-pod listener holds at once; datagrams of new clients past
/// it are dropped until some end.
const MAX_FLOWS: usize = 1024;
/// Datagrams queued per flow (while its relay is set up, or the stream is slow); more are
/// dropped, as a full socket buffer drops them.
const QUEUE: usize = 256;

/// The framing of datagrams on a relay stream.
pub(crate) fn codec() -> LengthDelimitedCodec {
    LengthDelimitedCodec::builder()
        .length_field_length(2)
        .max_frame_length(MAX_DATAGRAM)
        .new_codec()
}

/// A relayed UDP flow to `ip:port` on node `node`, through the server and both tunnels.
pub(crate) async fn connect(
    client: &Client,
    node: &str,
    ip: Ipv4Addr,
    port: u16,
) -> io::Result<crate::relay::RelayStream> {
    crate::relay::relay_connect_as(client, node, ip, port, UDP_UPGRADE).await
}

/// Where a flow's answers go.
#[derive(Clone)]
enum Peer {
    /// A socket connected to the client (B's socket to the pod; A's per-flow transparent
    /// socket).
    Connected(Arc<UdpSocket>),
    /// A shared socket, answering to the client's address.
    To(Arc<UdpSocket>, SocketAddr),
}

impl Peer {
    async fn send(&self, d: &[u8]) {
        // UDP: a datagram that cannot be sent is lost, as on the wire.
        let _ = match self {
            Peer::Connected(s) => s.send(d).await,
            Peer::To(s, to) => s.send_to(d, to).await,
        };
    }
}

/// Reads `sock` (connected) into `tx` until `tx`'s receiver goes.
fn read_into(sock: Arc<UdpSocket>, tx: mpsc::Sender<Bytes>) {
    tokio::spawn(async move {
        let mut buf = vec![0u8; MAX_DATAGRAM];
        loop {
            tokio::select! {
                () = tx.closed() => return,
                r = sock.recv(&mut buf) => match r {
                    Ok(n) => {
                        let _ = tx.try_send(Bytes::copy_from_slice(&buf[..n]));
                    }
                    // An ICMP error for an earlier datagram (port unreachable): a UDP peer
                    // carries on.
                    Err(e) if e.kind() == io::ErrorKind::ConnectionRefused => {}
                    Err(e) => {
                        tracing::debug!(error = %e, "relayed UDP flow: reading the socket failed");
                        return;
                    }
                },
            }
        }
    });
}

/// Carries one flow both ways: datagrams from `from_peer` onto the stream, the stream's onto
/// `peer`, until [`IDLE`], either end closing, or `cancel`.
async fn pump<S>(
    stream: S,
    mut from_peer: mpsc::Receiver<Bytes>,
    peer: Peer,
    cancel: CancellationToken,
) where
    S: AsyncRead + AsyncWrite + Unpin,
{
    let mut framed = Framed::new(stream, codec());
    let idle = tokio::time::sleep(IDLE);
    tokio::pin!(idle);
    loop {
        tokio::select! {
            () = cancel.cancelled() => break,
            () = &mut idle => break,
            d = from_peer.recv() => {
                let Some(d) = d else { break };
                if framed.send(d).await.is_err() {
                    break;
                }
            }
            f = framed.next() => match f {
                Some(Ok(d)) => peer.send(&d).await,
                _ => break,
            },
        }
        idle.as_mut().reset(tokio::time::Instant::now() + IDLE);
    }
    let _ = SinkExt::<Bytes>::close(&mut framed).await;
}

/// B's end of a relayed flow: a socket connected to `addr` (the pod), spliced with the
/// server's upgraded stream. The socket is made before the `101`, so a flow to nowhere
/// (no route) is refused up front.
pub(crate) async fn open_flow(addr: SocketAddrV4) -> io::Result<Arc<UdpSocket>> {
    let sock = UdpSocket::bind((Ipv4Addr::UNSPECIFIED, 0)).await?;
    sock.connect(addr).await?;
    Ok(Arc::new(sock))
}

/// Serves B's end once the stream is upgraded.
pub(crate) async fn serve_flow<S>(stream: S, sock: Arc<UdpSocket>, cancel: CancellationToken)
where
    S: AsyncRead + AsyncWrite + Unpin,
{
    let (tx, rx) = mpsc::channel(QUEUE);
    read_into(sock.clone(), tx);
    pump(stream, rx, Peer::Connected(sock), cancel).await;
}

/// Starts a flow on A: its datagrams queue while the relay is set up.
fn start_flow(
    client: Client,
    node: String,
    dst: SocketAddrV4,
    peer: Peer,
    rx: mpsc::Receiver<Bytes>,
    cancel: CancellationToken,
) {
    tokio::spawn(async move {
        match connect(&client, &node, *dst.ip(), dst.port()).await {
            Ok(stream) => pump(stream, rx, peer, cancel).await,
            Err(e) => tracing::debug!(%dst, %node, error = %e, "relaying a UDP flow failed"),
        }
    });
}

/// Flows by key, each fed through its queue; closed ones are dropped as they are met.
struct Flows<K>(HashMap<K, mpsc::Sender<Bytes>>);

impl<K: std::hash::Hash + Eq + Clone> Flows<K> {
    /// Hands `d` to the flow `key`; `None` when there is no such flow (or it ended), else
    /// whether it was queued.
    fn offer(&mut self, key: &K, d: Bytes) -> Option<()> {
        let tx = self.0.get(key)?;
        match tx.try_send(d) {
            Ok(()) | Err(mpsc::error::TrySendError::Full(_)) => Some(()),
            Err(mpsc::error::TrySendError::Closed(_)) => {
                self.0.remove(key);
                None
            }
        }
    }

    /// A queue for a new flow `key` holding `d`, unless too many flows are open.
    fn open(&mut self, key: K, d: Bytes) -> Option<(mpsc::Sender<Bytes>, mpsc::Receiver<Bytes>)> {
        if self.0.len() >= MAX_FLOWS {
            self.0.retain(|_, tx| !tx.is_closed());
            if self.0.len() >= MAX_FLOWS {
                return None;
            }
        }
        let (tx, rx) = mpsc::channel(QUEUE);
        let _ = tx.try_send(d);
        self.0.insert(key, tx.clone());
        Some((tx, rx))
    }
}

/// A's UDP forwarder to one endpoint behind another NAT: a socket on the pod bridge's gateway
/// that the service proxy sends the endpoint's datagrams to; each client address is a flow
/// through the relay, answered from this socket (so the proxy's NAT maps the answer back).
pub(crate) async fn forwarder(
    bind: Ipv4Addr,
    client: Client,
    node: String,
    dst: SocketAddrV4,
) -> io::Result<(u16, tokio_util::task::AbortOnDropHandle<()>)> {
    let sock = Arc::new(UdpSocket::bind((bind, 0)).await?);
    let port = sock.local_addr()?.port();
    let cancel = CancellationToken::new();
    let task = tokio::spawn(async move {
        let _stop = cancel.clone().drop_guard();
        let mut flows = Flows(HashMap::new());
        let mut buf = vec![0u8; MAX_DATAGRAM];
        loop {
            let Ok((n, from)) = sock.recv_from(&mut buf).await else {
                tokio::time::sleep(Duration::from_millis(50)).await;
                continue;
            };
            let d = Bytes::copy_from_slice(&buf[..n]);
            if flows.offer(&from, d.clone()).is_some() {
                continue;
            }
            let Some((_, rx)) = flows.open(from, d) else {
                continue;
            };
            let peer = Peer::To(sock.clone(), from);
            start_flow(
                client.clone(),
                node.clone(),
                dst,
                peer,
                rx,
                cancel.child_token(),
            );
        }
    });
    Ok((port, tokio_util::task::AbortOnDropHandle::new(task)))
}

/// The podCIDRs of nodes behind another NAT and the node of each.
pub(crate) type FarCidrs = Arc<Mutex<Vec<((Ipv4Addr, u8), String)>>>;

/// A's UDP listener for pod addresses behind another NAT: nftables redirects datagrams to
/// those podCIDRs here; each new client's original destination comes from conntrack, and its
/// flow is relayed to the node with that podCIDR.
pub(crate) struct FarUdp {
    pub port: u16,
    _task: tokio_util::task::AbortOnDropHandle<()>,
}

/// A non-blocking UDP socket bound to `addr` with `SO_REUSEADDR`, so the listener and the
/// per-flow sockets share the redirect's port.
fn reusable_socket(addr: SocketAddrV4) -> io::Result<std::os::fd::OwnedFd> {
    use nix::sys::socket::{self as s, sockopt};
    let fd = s::socket(
        s::AddressFamily::Inet,
        s::SockType::Datagram,
        s::SockFlag::SOCK_NONBLOCK | s::SockFlag::SOCK_CLOEXEC,
        s::SockProtocol::Udp,
    )?;
    s::setsockopt(&fd, sockopt::ReuseAddr, &true)?;
    s::bind(fd.as_raw_fd(), &s::SockaddrIn::from(addr))?;
    Ok(fd)
}

/// The per-flow socket on A: bound to the address the redirect answers from and connected
/// to the client, so its answers match the conntrack entry (whose NAT gives them the far
/// pod's address) and the client's further datagrams come to it.
fn flow_socket(local: SocketAddrV4, client: SocketAddrV4) -> io::Result<UdpSocket> {
    use nix::sys::socket as s;
    let fd = reusable_socket(local)?;
    s::connect(fd.as_raw_fd(), &s::SockaddrIn::from(client))?;
    UdpSocket::from_std(std::net::UdpSocket::from(fd))
}

/// From one line of `conntrack -L`: the original destination (first `dst=`/`dport=`) and
/// the address the reply comes from (the second `src=`: where the redirect delivered it).
pub(crate) fn parse_conntrack_line(line: &str) -> Option<(SocketAddrV4, Ipv4Addr)> {
    let field = |key: &str, nth: usize| {
        line.split_whitespace()
            .filter_map(|w| w.strip_prefix(key))
            .nth(nth)
    };
    let dst: Ipv4Addr = field("dst=", 0)?.parse().ok()?;
    let dport: u16 = field("dport=", 0)?.parse().ok()?;
    let local: Ipv4Addr = field("src=", 1)?.parse().ok()?;
    Some((SocketAddrV4::new(dst, dport), local))
}

/// Where `client`'s datagrams to our `port` were going, by the conntrack entry whose reply
/// tuple is `*:port → client` (present once the datagram is delivered; asked a few times in
/// case the entry is not yet visible).
async fn original_destination(
    port: u16,
    client: SocketAddrV4,
) -> io::Result<(SocketAddrV4, Ipv4Addr)> {
    let (ip, cport) = (client.ip().to_string(), client.port().to_string());
    let port = port.to_string();
    for _ in 0..5 {
        let out = tokio::time::timeout(
            Duration::from_secs(5),
            tokio::process::Command::new("conntrack")
                .args(["-L", "-p", "udp", "--reply-port-src", &port])
                .args(["--reply-dst", &ip, "--reply-port-dst", &cport])
                .kill_on_drop(true)
                .output(),
        )
        .await
        .map_err(|_| io::Error::other("conntrack -L timed out"))??;
        let text = String::from_utf8_lossy(&out.stdout);
        if let Some(found) = text.lines().find_map(parse_conntrack_line) {
            return Ok(found);
        }
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    Err(io::Error::other(format!(
        "no conntrack entry for {client}'s datagram to port {port}"
    )))
}

/// Whether the `conntrack` tool runs here.
pub(crate) async fn conntrack_available() -> bool {
    tokio::process::Command::new("conntrack")
        .arg("--version")
        .output()
        .await
        .is_ok_and(|o| o.status.success())
}

impl FarUdp {
    pub(crate) async fn start(client: Client, cidrs: FarCidrs) -> io::Result<FarUdp> {
        let fd = reusable_socket(SocketAddrV4::new(Ipv4Addr::UNSPECIFIED, 0))?;
        let sock = UdpSocket::from_std(std::net::UdpSocket::from(fd))?;
        let port = sock.local_addr()?.port();
        let cancel = CancellationToken::new();
        let task = tokio::spawn(async move {
            let _stop = cancel.clone().drop_guard();
            let mut flows = Flows(HashMap::new());
            let mut buf = vec![0u8; MAX_DATAGRAM];
            loop {
                let from = match sock.recv_from(&mut buf).await {
                    Ok((n, SocketAddr::V4(from))) => {
                        let d = Bytes::copy_from_slice(&buf[..n]);
                        if flows.offer(&from, d.clone()).is_some() {
                            continue;
                        }
                        match flows.open(from, d) {
                            Some((tx, rx)) => (from, tx, rx),
                            None => continue,
                        }
                    }
                    Ok(_) => continue,
                    Err(e) => {
                        tracing::debug!(error = %e, "far-pod UDP listener");
                        tokio::time::sleep(Duration::from_millis(50)).await;
                        continue;
                    }
                };
                let (from, tx, rx) = from;
                let (client, cidrs, cancel) = (client.clone(), cidrs.clone(), cancel.child_token());
                tokio::spawn(async move {
                    let (dst, local) = match original_destination(port, from).await {
                        Ok(found) => found,
                        Err(e) => {
                            tracing::debug!(%from, error = %e, "a UDP flow to a far pod");
                            return;
                        }
                    };
                    let node = cidrs
                        .lock()
                        .unwrap_or_else(|p| p.into_inner())
                        .iter()
                        .find(|(c, _)| kedge_net::cidr::contains(*c, *dst.ip()))
                        .map(|(_, n)| n.clone());
                    let Some(node) = node else { return };
                    let flow_sock = match flow_socket(SocketAddrV4::new(local, port), from) {
                        Ok(s) => Arc::new(s),
                        Err(e) => {
                            tracing::debug!(%dst, %from, error = %e, "no socket for a UDP flow to a far pod");
                            return;
                        }
                    };
                    read_into(flow_sock.clone(), tx);
                    match connect(&client, &node, *dst.ip(), dst.port()).await {
                        Ok(stream) => pump(stream, rx, Peer::Connected(flow_sock), cancel).await,
                        Err(e) => {
                            tracing::debug!(%dst, %node, error = %e, "relaying a UDP flow failed")
                        }
                    }
                });
            }
        });
        Ok(FarUdp {
            port,
            _task: tokio_util::task::AbortOnDropHandle::new(task),
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[tokio::test]
    async fn datagrams_keep_their_boundaries_on_a_stream() {
        let (a, b) = tokio::io::duplex(1 << 16);
        // B: a socket "pod" that echoes, behind serve_flow.
        let pod = UdpSocket::bind("127.0.0.1:0").await.unwrap();
        let pod_addr = match pod.local_addr().unwrap() {
            SocketAddr::V4(a) => a,
            SocketAddr::V6(_) => unreachable!(),
        };
        tokio::spawn(async move {
            let mut buf = vec![0u8; MAX_DATAGRAM];
            while let Ok((n, from)) = pod.recv_from(&mut buf).await {
                let mut answer = b"echo:".to_vec();
                answer.extend_from_slice(&buf[..n]);
                let _ = pod.send_to(&answer, from).await;
            }
        });
        let sock = open_flow(pod_addr).await.unwrap();
        let cancel = CancellationToken::new();
        tokio::spawn(serve_flow(b, sock, cancel.clone()));
        let mut framed = Framed::new(a, codec());
        let big = vec![7u8; MAX_DATAGRAM - 5];
        for d in [&b"one"[..], b"", b"three", &big] {
            framed.send(Bytes::copy_from_slice(d)).await.unwrap();
            let got = tokio::time::timeout(Duration::from_secs(5), framed.next())
                .await
                .unwrap()
                .unwrap()
                .unwrap();
            assert_eq!(&got[..5], b"echo:");
            assert_eq!(&got[5..], d);
        }
        cancel.cancel();
    }

    #[test]
    fn conntrack_lines_give_the_original_destination_and_the_local_end() {
        let line = "udp      17 29 src=10.42.1.5 dst=10.42.0.2 sport=44400 dport=9376 [UNREPLIED] src=10.42.1.1 dst=10.42.1.5 sport=40000 dport=44400 mark=0 use=1";
        assert_eq!(
            parse_conntrack_line(line),
            Some((
                "10.42.0.2:9376".parse().unwrap(),
                Ipv4Addr::new(10, 42, 1, 1)
            ))
        );
        for bad in [
            "",
            "conntrack v1.4.7 (conntrack-tools): 0 flow entries have been shown.",
            "udp 17 29 src=10.42.1.5 dst=10.42.0.2 sport=1 dport=2",
            "udp 17 29 src=a dst=b sport=1 dport=x src=c",
        ] {
            assert_eq!(parse_conntrack_line(bad), None, "{bad}");
        }
    }

    #[test]
    fn a_flow_past_the_limit_waits_for_one_to_end() {
        let mut flows = Flows(HashMap::new());
        let mut held = Vec::new();
        for i in 0..MAX_FLOWS {
            let (_, rx) = flows.open(i, Bytes::new()).unwrap();
            held.push(rx);
        }
        assert!(flows.open(MAX_FLOWS, Bytes::new()).is_none());
        // Datagrams of an open flow are queued; of a new client, refused.
        assert_eq!(flows.offer(&3, Bytes::from_static(b"x")), Some(()));
        assert_eq!(flows.offer(&MAX_FLOWS, Bytes::new()), None);
        // One flow ends: its slot frees.
        held.remove(0);
        assert!(flows.open(MAX_FLOWS, Bytes::new()).is_some());
        assert_eq!(flows.offer(&0, Bytes::new()), None);
    }
}
