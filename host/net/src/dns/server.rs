//! The node-local DNS server: hickory-server's UDP/TCP listeners with our own request handler,
//! which answers the cluster zone from memory and forwards everything else.

use std::net::SocketAddr;
use std::sync::Arc;
use std::sync::atomic::{AtomicU32, Ordering};
use std::time::Duration;

use arc_swap::ArcSwap;
use futures_util::StreamExt;
use hickory_net::NetError;
use hickory_net::runtime::{Time, TokioRuntimeProvider};
use hickory_net::tcp::TcpClientStream;
use hickory_net::udp::UdpClientStream;
use hickory_net::xfer::{DnsExchange, DnsHandle, DnsMultiplexer, DnsRequestSender};
use hickory_proto::op::{
    DnsRequest, DnsRequestOptions, Edns, Header, HeaderCounts, Message, Metadata, OpCode, Query,
    ResponseCode,
};
use hickory_proto::rr::rdata::opt::EdnsOption;
use hickory_proto::rr::{DNSClass, LowerName, Name, Record, RecordType};
use hickory_server::Server;
use hickory_server::server::{Request, RequestHandler, ResponseHandler, ResponseInfo};
use hickory_server::zone_handler::MessageResponseBuilder;
use tokio::net::{TcpListener, UdpSocket};
use tokio_util::sync::CancellationToken;
use tokio_util::task::AbortOnDropHandle;
use tracing::{debug, warn};

use super::zone::{Answer, MAX_CNAME_CHAIN, Zone, parse_domain};
use super::{DnsConfig, DnsError};

/// How long one upstream gets to answer (UDP retries included) before the next is tried:
/// short enough that three dead upstreams still answer SERVFAIL before glibc's 5 s timeout.
const UPSTREAM_TIMEOUT: Duration = Duration::from_millis(1500);

/// An idle TCP client connection is closed after this long (hickory's DoS guard).
const TCP_IDLE_TIMEOUT: Duration = Duration::from_secs(10);

/// Responses queued per TCP connection before the writer pushes back.
const TCP_RESPONSE_BUFFER: usize = 32;

/// The UDP payload we advertise upstream (the DNS flag day 2020 value that avoids
/// fragmentation); larger answers come back truncated and are fetched again over TCP.
const UPSTREAM_PAYLOAD: u16 = 1232;

/// RFC 8914 Extended DNS Error option code and the "Network Error" info code, so `dig` shows why
/// a forwarded query failed instead of a bare SERVFAIL.
const EDE_OPTION: u16 = 15;
const EDE_NETWORK_ERROR: u16 = 23;

/// A running node-local DNS server. Dropping it stops the listeners at once; cancelling the
/// token given to [`DnsServer::start`] stops them gracefully (see [`DnsServer::stopped`]).
///
/// Note: hickory-server logs every query at `info` (target `hickory_server`); the agent's log
/// filter should hold that target at `warn`.
pub struct DnsServer {
    zone: Arc<ArcSwap<Zone>>,
    /// The cluster domain every zone is expected to carry.
    origin: LowerName,
    /// Stamped into each new zone's SOA serial.
    generation: AtomicU32,
    local_addrs: Vec<SocketAddr>,
    task: AbortOnDropHandle<()>,
}

impl std::fmt::Debug for DnsServer {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("DnsServer")
            .field("origin", &self.origin.to_string())
            .field("local_addrs", &self.local_addrs)
            .finish_non_exhaustive()
    }
}

impl DnsServer {
    /// Binds UDP and TCP on every listen address and starts serving an empty zone for
    /// `cfg.domain` (names in it are NXDOMAIN until the first [`DnsServer::update`]).
    ///
    /// A listen port of 0 picks one port for both UDP and TCP of that address. Upstreams equal
    /// to one of our own addresses are dropped, so a resolv.conf that already names this server
    /// cannot make it forward to itself.
    pub async fn start(cfg: DnsConfig, cancel: CancellationToken) -> Result<DnsServer, DnsError> {
        let origin = parse_domain(&cfg.domain).map_err(|source| DnsError::Domain {
            domain: cfg.domain.clone(),
            source,
        })?;
        if cfg.listen.is_empty() {
            return Err(DnsError::NoListen);
        }
        let mut sockets = Vec::with_capacity(cfg.listen.len());
        for addr in &cfg.listen {
            let udp = UdpSocket::bind(addr)
                .await
                .map_err(|source| DnsError::Bind {
                    protocol: "udp",
                    addr: *addr,
                    source,
                })?;
            let bound = udp.local_addr().map_err(|source| DnsError::Bind {
                protocol: "udp",
                addr: *addr,
                source,
            })?;
            let tcp = TcpListener::bind(bound)
                .await
                .map_err(|source| DnsError::Bind {
                    protocol: "tcp",
                    addr: bound,
                    source,
                })?;
            sockets.push((bound, udp, tcp));
        }
        let local_addrs: Vec<SocketAddr> = sockets.iter().map(|(a, _, _)| *a).collect();
        let upstreams = without_ourselves(&cfg.upstreams, &local_addrs);
        if upstreams.is_empty() {
            warn!(domain = %origin, "no upstream resolvers; names outside the cluster get SERVFAIL");
        }

        let zone = Arc::new(ArcSwap::from_pointee(Zone::empty(&cfg.domain)));
        let handler = Handler {
            zone: zone.clone(),
            forwarder: Forwarder::new(upstreams),
        };
        let mut server = Server::new(handler);
        for (_, udp, tcp) in sockets {
            server.register_socket(udp);
            server.register_listener(tcp, TCP_IDLE_TIMEOUT, TCP_RESPONSE_BUFFER);
        }
        let stop = server.shutdown_token().clone();
        let addrs = local_addrs.clone();
        let task = tokio::spawn(async move {
            let done = server.block_until_done();
            tokio::pin!(done);
            let result = tokio::select! {
                result = &mut done => result,
                () = cancel.cancelled() => {
                    stop.cancel();
                    done.await
                }
            };
            match result {
                Ok(()) => debug!(addrs = ?addrs, "dns server stopped"),
                Err(error) => warn!(addrs = ?addrs, %error, "dns server stopped with an error"),
            }
        });
        debug!(addrs = ?local_addrs, domain = %origin, "dns server listening");
        Ok(DnsServer {
            zone,
            origin,
            generation: AtomicU32::new(0),
            local_addrs,
            task: AbortOnDropHandle::new(task),
        })
    }

    /// The addresses actually bound, one per listen address (UDP and TCP share each).
    pub fn local_addrs(&self) -> &[SocketAddr] {
        &self.local_addrs
    }

    /// Swaps in a new zone. Queries in flight finish on the zone they started with; queries
    /// never wait for this call, nor it for them.
    pub fn update(&self, mut zone: Zone) {
        if zone.origin() != Some(&self.origin) {
            warn!(
                expected = %self.origin,
                got = ?zone.origin().map(ToString::to_string),
                "zone built for another cluster domain"
            );
        }
        let serial = self
            .generation
            .fetch_add(1, Ordering::Relaxed)
            .wrapping_add(1);
        zone.set_serial(serial);
        debug!(serial, services = zone.services(), "dns zone updated");
        self.zone.store(Arc::new(zone));
    }

    /// Waits until the listeners have stopped after the cancellation token fired.
    pub async fn stopped(self) {
        let _ = self.task.await;
    }
}

/// Drops upstreams that are this server: the same socket address, or the same port on a
/// loopback address while we listen on the unspecified address.
fn without_ourselves(upstreams: &[SocketAddr], ours: &[SocketAddr]) -> Vec<SocketAddr> {
    upstreams
        .iter()
        .copied()
        .filter(|up| {
            let me = ours.iter().any(|own| {
                own == up
                    || (own.port() == up.port()
                        && own.ip().is_unspecified()
                        && (up.ip().is_loopback() || up.ip().is_unspecified()))
            });
            if me {
                warn!(upstream = %up, "dropping an upstream that is this server");
            }
            !me
        })
        .collect()
}

struct Handler {
    zone: Arc<ArcSwap<Zone>>,
    forwarder: Forwarder,
}

#[async_trait::async_trait]
impl RequestHandler for Handler {
    async fn handle_request<R: ResponseHandler, T: Time>(
        &self,
        request: &Request,
        response_handle: R,
    ) -> ResponseInfo {
        let edns = request.edns.as_ref().map(|req| {
            let mut edns = Edns::new();
            edns.set_max_payload(req.max_payload().max(512));
            edns.set_dnssec_ok(req.flags().dnssec_ok);
            edns
        });
        let reply = Reply {
            request,
            edns: edns.as_ref(),
        };
        if request.metadata.op_code != OpCode::Query {
            return reply.error(ResponseCode::NotImp, response_handle).await;
        }
        let query = match request.request_info() {
            Ok(info) => info.query,
            Err(_) => return reply.error(ResponseCode::FormErr, response_handle).await,
        };
        let zone = self.zone.load_full();
        let answer = (query.query_class() == DNSClass::IN)
            .then(|| zone.lookup(query.name(), query.query_type()))
            .flatten();
        let Some(answer) = answer else {
            return self
                .forward(&reply, query.original(), response_handle)
                .await;
        };
        let Some(target) = answer.cname_target else {
            return reply
                .send(
                    local_metadata(request, answer.rcode),
                    answer.answers.iter().copied(),
                    answer.soa.into_iter(),
                    answer.additionals.iter(),
                    response_handle,
                )
                .await;
        };
        let (rcode, answers, authority) = self
            .follow_cname(&zone, &answer, target, query.query_type(), request)
            .await;
        reply
            .send(
                local_metadata(request, rcode),
                answers.iter(),
                authority.iter(),
                [].iter(),
                response_handle,
            )
            .await
    }
}

impl Handler {
    /// Follows an ExternalName's CNAME so stub resolvers that do not chase it themselves still
    /// get addresses, as CoreDNS does: through the zone (at most [`MAX_CNAME_CHAIN`] links),
    /// then upstream. Returns the rcode, the answer chain and the authority section.
    async fn follow_cname(
        &self,
        zone: &Zone,
        first: &Answer<'_>,
        target: &Name,
        qtype: RecordType,
        request: &Request,
    ) -> (ResponseCode, Vec<Record>, Vec<Record>) {
        let mut answers: Vec<Record> = first.answers.iter().map(|r| (*r).clone()).collect();
        let mut target = target.clone();
        let mut rcode = ResponseCode::NoError;
        let mut authority: Vec<Record> = Vec::new();
        for _ in 0..MAX_CNAME_CHAIN {
            let Some(next) = zone.lookup(&LowerName::new(&target), qtype) else {
                match self
                    .forwarder
                    .exchange(Query::query(target.clone(), qtype), request)
                    .await
                {
                    Ok(upstream) => {
                        rcode = upstream.metadata.response_code;
                        answers.extend(upstream.answers);
                        authority = upstream.authorities;
                    }
                    // The CNAME alone is still a true answer; the client may chase it itself.
                    Err(error) => debug!(%target, %error, "could not follow an ExternalName"),
                }
                break;
            };
            answers.extend(next.answers.iter().map(|r| (*r).clone()));
            rcode = next.rcode;
            authority = next.soa.into_iter().cloned().collect();
            match next.cname_target {
                Some(t) => target = t.clone(),
                None => break,
            }
        }
        (rcode, answers, authority)
    }

    async fn forward<R: ResponseHandler>(
        &self,
        reply: &Reply<'_>,
        question: &Query,
        response_handle: R,
    ) -> ResponseInfo {
        match self
            .forwarder
            .exchange(question.clone(), reply.request)
            .await
        {
            Ok(upstream) => {
                let mut metadata = Metadata::response_from_request(&reply.request.metadata);
                metadata.response_code = upstream.metadata.response_code;
                metadata.authoritative = upstream.metadata.authoritative;
                metadata.authentic_data = upstream.metadata.authentic_data;
                metadata.recursion_available = true;
                reply
                    .send(
                        metadata,
                        upstream.answers.iter(),
                        upstream.authorities.iter(),
                        upstream.additionals.iter(),
                        response_handle,
                    )
                    .await
            }
            Err(error) => {
                debug!(name = %question.name(), qtype = %question.query_type(), %error, "forwarding failed");
                let mut edns = reply.edns.cloned();
                if let Some(edns) = &mut edns {
                    let mut payload = EDE_NETWORK_ERROR.to_be_bytes().to_vec();
                    payload.extend_from_slice(error.to_string().as_bytes());
                    edns.options_mut()
                        .insert(EdnsOption::Unknown(EDE_OPTION, payload));
                }
                let reply = Reply {
                    request: reply.request,
                    edns: edns.as_ref(),
                };
                reply.error(ResponseCode::ServFail, response_handle).await
            }
        }
    }
}

/// The header of an answer from our own zone: authoritative, and recursion available because
/// we forward the rest.
fn local_metadata(request: &Request, rcode: ResponseCode) -> Metadata {
    let mut metadata = Metadata::response_from_request(&request.metadata);
    metadata.authoritative = true;
    metadata.recursion_available = true;
    metadata.response_code = rcode;
    metadata
}

/// What every response to one request shares: its question and EDNS.
struct Reply<'q> {
    request: &'q Request,
    edns: Option<&'q Edns>,
}

impl Reply<'_> {
    async fn send<'a, R: ResponseHandler>(
        &self,
        metadata: Metadata,
        answers: impl Iterator<Item = &'a Record> + Send + 'a,
        authorities: impl Iterator<Item = &'a Record> + Send + 'a,
        additionals: impl Iterator<Item = &'a Record> + Send + 'a,
        mut response_handle: R,
    ) -> ResponseInfo {
        let mut builder = MessageResponseBuilder::from_message_request(self.request);
        if let Some(edns) = self.edns {
            builder.edns(edns);
        }
        let response = builder.build(
            metadata,
            answers,
            authorities,
            std::iter::empty(),
            additionals,
        );
        match response_handle.send_response(response).await {
            Ok(info) => info,
            Err(error) => {
                debug!(%error, "could not send a dns response");
                let mut failed = Metadata::response_from_request(&self.request.metadata);
                failed.response_code = ResponseCode::ServFail;
                ResponseInfo::from(Header {
                    metadata: failed,
                    counts: HeaderCounts::default(),
                })
            }
        }
    }

    async fn error<R: ResponseHandler>(
        &self,
        rcode: ResponseCode,
        response_handle: R,
    ) -> ResponseInfo {
        let mut metadata = Metadata::response_from_request(&self.request.metadata);
        metadata.response_code = rcode;
        metadata.recursion_available = true;
        self.send(
            metadata,
            std::iter::empty(),
            std::iter::empty(),
            std::iter::empty(),
            response_handle,
        )
        .await
    }
}

/// Why a forwarded question got no usable answer.
#[derive(Debug, thiserror::Error)]
enum ForwardError {
    #[error("no upstream resolvers configured")]
    NoUpstreams,
    #[error("upstream {upstream}: {source}")]
    Upstream {
        upstream: SocketAddr,
        #[source]
        source: NetError,
    },
}

/// Sends questions the zone does not own to the node's resolvers, in order, over UDP and again
/// over TCP when the UDP answer was truncated.
struct Forwarder {
    upstreams: Vec<SocketAddr>,
    provider: TokioRuntimeProvider,
}

impl Forwarder {
    fn new(upstreams: Vec<SocketAddr>) -> Forwarder {
        Forwarder {
            upstreams,
            provider: TokioRuntimeProvider::new(),
        }
    }

    /// Asks the upstreams `question` with the client's RD, CD and DO bits. A SERVFAIL or
    /// REFUSED moves on to the next upstream but is returned if nobody does better.
    async fn exchange(&self, question: Query, request: &Request) -> Result<Message, ForwardError> {
        let rd = request.metadata.recursion_desired;
        let mut message = Message::query();
        message.add_query(question);
        message.metadata.recursion_desired = rd;
        message.metadata.checking_disabled = request.metadata.checking_disabled;
        let mut edns = Edns::new();
        edns.set_max_payload(UPSTREAM_PAYLOAD);
        edns.set_dnssec_ok(request.edns.as_ref().is_some_and(|e| e.flags().dnssec_ok));
        message.set_edns(edns);
        let mut options = DnsRequestOptions::default();
        options.recursion_desired = rd;
        options.edns_payload_len = UPSTREAM_PAYLOAD;
        let request = DnsRequest::new(message, options);

        let mut last = Err(ForwardError::NoUpstreams);
        for &upstream in &self.upstreams {
            match self.ask(upstream, request.clone()).await {
                Ok(answer)
                    if matches!(
                        answer.metadata.response_code,
                        ResponseCode::ServFail | ResponseCode::Refused
                    ) =>
                {
                    last = Ok(answer);
                }
                Ok(answer) => return Ok(answer),
                Err(source) => {
                    debug!(%upstream, error = %source, "upstream failed");
                    if last.is_err() {
                        last = Err(ForwardError::Upstream { upstream, source });
                    }
                }
            }
        }
        last
    }

    async fn ask(&self, upstream: SocketAddr, request: DnsRequest) -> Result<Message, NetError> {
        let mut udp = UdpClientStream::builder(upstream, self.provider.clone())
            .with_timeout(Some(UPSTREAM_TIMEOUT))
            .build();
        let response = udp
            .send_message(request.clone())
            .next()
            .await
            .unwrap_or(Err(NetError::Timeout))?;
        if !response.metadata.truncation {
            return Ok(response.into_message());
        }
        debug!(%upstream, "truncated over udp; asking again over tcp");
        let (connect, handle) = TcpClientStream::new(
            upstream,
            None,
            Some(UPSTREAM_TIMEOUT),
            self.provider.clone(),
        );
        let stream = tokio::time::timeout(UPSTREAM_TIMEOUT, connect)
            .await
            .map_err(|_| NetError::Timeout)??;
        let multiplexer = DnsMultiplexer::new(stream, handle).with_timeout(UPSTREAM_TIMEOUT);
        let (exchange, background) = DnsExchange::<TokioRuntimeProvider>::from_stream(multiplexer);
        // The connection's driver lives exactly as long as this one question.
        let _driver = AbortOnDropHandle::new(tokio::spawn(background));
        let response = exchange
            .send(request)
            .next()
            .await
            .unwrap_or(Err(NetError::Timeout))?;
        Ok(response.into_message())
    }
}
