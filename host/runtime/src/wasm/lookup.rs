//! Name lookups of Wasm components (`wasi:sockets/ip-name-lookup`) answered the way a pod's libc
//! answers them: from the pod's resolv.conf (cluster DNS, search path, `ndots`), not from the
//! node's.
//!
//! wasmtime-wasi's own `resolve-addresses` calls `getaddrinfo`, which reads the node's
//! `/etc/resolv.conf`: `my-service` would never reach the cluster DNS. wasmtime-wasi has no hook
//! for this, so [`add_to_linker`] shadows its `wasi:sockets/ip-name-lookup` definitions in a
//! linker; the `network` resource and `pollable` stay wasmtime-wasi's (bindgen `with`), so the
//! rest of WASI sees the same handles.
//!
//! Before any DNS question, the pod's hosts file (what its OCI containers get as `/etc/hosts`:
//! its own hostname, `hostAliases`) is consulted for the name exactly as asked, as glibc's and
//! musl's `files` source does.
//!
//! The resolver follows glibc's stub resolver: the search order of `res_search`, each nameserver
//! in turn (`attempts` rounds), A and AAAA asked together, UDP with TCP after a truncated answer.
//! Messages are encoded and decoded by hickory-proto; only the socket I/O is here, so the sockets
//! are opened by whichever runtime polls the guest: the pod's network namespace.

use std::net::{IpAddr, Ipv4Addr, Ipv6Addr, SocketAddr};
use std::str::FromStr as _;
use std::sync::Arc;
use std::task::{Context, Poll};
use std::time::Duration;

use hickory_proto::op::{Message, MessageType, Query, ResponseCode};
use hickory_proto::rr::{Name, RData, RecordType};
use tokio::io::{AsyncReadExt as _, AsyncWriteExt as _};
use tokio_util::task::AbortOnDropHandle;
use tracing::{debug, warn};
use wasmtime::component::{HasData, Resource, ResourceTable};
use wasmtime_wasi::p2::{DynPollable, Pollable, subscribe};

use bindings::wasi::sockets::ip_name_lookup::{Host, HostResolveAddressStream};
use bindings::wasi::sockets::network::{ErrorCode, IpAddress, Network};

/// glibc reads at most this many nameservers (`MAXNS`).
const MAX_NAMESERVERS: usize = 3;
/// The API and kubelet allow this many search domains; more would only make lookups slower.
const MAX_SEARCH: usize = 32;
/// glibc caps `ndots` here (`RES_MAXNDOTS`).
const MAX_NDOTS: usize = 15;
/// glibc caps `timeout:` (`RES_MAXRETRANS`) and `attempts:` (`RES_MAXRETRY`) here.
const MAX_TIMEOUT_SECS: u64 = 30;
const MAX_ATTEMPTS: usize = 5;
/// Per try: the cluster DNS is node-local and answers in milliseconds, so glibc's 5 s default
/// would only make a dead server slower to notice. `options timeout:N` overrides it.
const DEFAULT_TIMEOUT: Duration = Duration::from_secs(2);
/// glibc's default number of rounds over the nameservers.
const DEFAULT_ATTEMPTS: usize = 2;
/// The most one lookup may take, whatever resolv.conf says: a guest blocked in `connect`
/// on a name must get an answer (a temporary failure) rather than wait unboundedly.
const LOOKUP_DEADLINE: Duration = Duration::from_secs(30);
/// Datagrams that are not the awaited answer (stale or spoofed) ignored per try, bounding
/// the receive loop besides its timeout.
const MAX_STRAY_DATAGRAMS: usize = 16;
/// UDP answers without EDNS are at most 512 bytes; leave room for servers that send more.
const UDP_BUFFER: usize = 4096;

mod bindings {
    // `ip-name-lookup` and the types it uses, as wasmtime-wasi 48 registers them
    // (`wasi:sockets@0.2.12`: the version must match for our definitions to shadow its). The
    // `network` and `pollable` resources are wasmtime-wasi's types, so the guest's `network`
    // handle and the pollables we return are the very resources the rest of WASI uses; the
    // plain types (`error-code`, `ip-address`) are generated here, equal to wasmtime-wasi's by
    // structure, which is what the component model compares. Only `ip-name-lookup` is linked:
    // the other interfaces stay wasmtime-wasi's.
    wasmtime::component::bindgen!({
        inline: "
            package kedge:runtime;

            package wasi:io@0.2.12 {
                interface poll {
                    resource pollable;
                }
            }

            package wasi:sockets@0.2.12 {
                interface network {
                    resource network;
                    enum error-code {
                        unknown, access-denied, not-supported, invalid-argument, out-of-memory,
                        timeout, concurrency-conflict, not-in-progress, would-block,
                        invalid-state, new-socket-limit, address-not-bindable, address-in-use,
                        remote-unreachable, connection-refused, connection-reset,
                        connection-aborted, datagram-too-large, name-unresolvable,
                        temporary-resolver-failure, permanent-resolver-failure,
                    }
                    type ipv4-address = tuple<u8, u8, u8, u8>;
                    type ipv6-address = tuple<u16, u16, u16, u16, u16, u16, u16, u16>;
                    variant ip-address {
                        ipv4(ipv4-address),
                        ipv6(ipv6-address),
                    }
                }

                interface ip-name-lookup {
                    use wasi:io/poll@0.2.12.{pollable};
                    use network.{network, error-code, ip-address};

                    resource resolve-address-stream {
                        resolve-next-address: func() -> result<option<ip-address>, error-code>;
                        subscribe: func() -> pollable;
                    }

                    resolve-addresses: func(network: borrow<network>, name: string)
                        -> result<resolve-address-stream, error-code>;
                }
            }

            world name-lookup {
                import wasi:sockets/ip-name-lookup@0.2.12;
            }
        ",
        world: "kedge:runtime/name-lookup",
        with: {
            "wasi:io/poll.pollable": wasmtime_wasi::p2::DynPollable,
            "wasi:sockets/network.network": wasmtime_wasi::p2::Network,
            "wasi:sockets/ip-name-lookup.resolve-address-stream": super::ResolveStream,
        },
        // Every function is non-blocking (the lookup runs as a task; the guest polls), as in
        // wasmtime-wasi. `trappable`: a bad handle is a trap, a failed lookup the guest's error.
        imports: { default: trappable },
    });
}

/// A pod's stub-resolver settings, as its resolv.conf gives them, and its hosts file.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Resolver {
    /// Asked in order, each on port 53.
    pub nameservers: Vec<SocketAddr>,
    /// Suffixes tried for short names (`search`, or `domain`), without trailing dots.
    pub search: Vec<String>,
    /// Names with fewer dots than this try the search suffixes before the name itself.
    pub ndots: usize,
    /// How long to wait for one nameserver's answer.
    pub timeout: Duration,
    /// Rounds over all nameservers before giving up.
    pub attempts: usize,
    /// Asked before DNS (see [`Resolver::with_hosts`]); empty unless given.
    hosts: Hosts,
}

impl Default for Resolver {
    /// glibc's settings without a resolv.conf: a nameserver on the loopback, no search path.
    fn default() -> Self {
        Self {
            nameservers: vec![SocketAddr::new(IpAddr::V4(Ipv4Addr::LOCALHOST), 53)],
            search: Vec::new(),
            ndots: 1,
            timeout: DEFAULT_TIMEOUT,
            attempts: DEFAULT_ATTEMPTS,
            hosts: Hosts::default(),
        }
    }
}

impl Resolver {
    /// Reads resolv.conf as glibc does: `#` and `;` start comments, up to three `nameserver`
    /// lines (unparsable addresses skipped, none means 127.0.0.1), the last `search` or
    /// `domain` line wins, `options ndots:N timeout:N attempts:N` (others ignored; each capped
    /// at glibc's limit).
    pub fn from_resolv_conf(text: &str) -> Resolver {
        let mut r = Resolver {
            nameservers: Vec::new(),
            ..Resolver::default()
        };
        for line in text.lines() {
            let line = line.split(['#', ';']).next().unwrap_or_default();
            let mut fields = line.split_whitespace();
            match fields.next() {
                Some("nameserver") => {
                    // A link-local IPv6 server may carry a zone (`fe80::1%eth0`); the socket
                    // address parser wants it without.
                    let addr = fields.next().and_then(|a| {
                        let a = a.split('%').next().unwrap_or(a);
                        IpAddr::from_str(a).ok()
                    });
                    if let Some(ip) = addr
                        && r.nameservers.len() < MAX_NAMESERVERS
                    {
                        r.nameservers.push(SocketAddr::new(ip, 53));
                    }
                }
                Some("domain") => {
                    r.search = fields.next().map(search_domain).into_iter().collect();
                }
                Some("search") => {
                    r.search = fields.map(search_domain).take(MAX_SEARCH).collect();
                }
                Some("options") => {
                    for option in fields {
                        let Some((key, value)) = option.split_once(':') else {
                            continue;
                        };
                        let Ok(n) = value.parse::<usize>() else {
                            continue;
                        };
                        match key {
                            "ndots" => r.ndots = n.min(MAX_NDOTS),
                            "timeout" => {
                                let secs = (n as u64).clamp(1, MAX_TIMEOUT_SECS);
                                r.timeout = Duration::from_secs(secs);
                            }
                            "attempts" => r.attempts = n.clamp(1, MAX_ATTEMPTS),
                            _ => {}
                        }
                    }
                }
                _ => {}
            }
        }
        r.search.retain(|s| !s.is_empty());
        if r.nameservers.is_empty() {
            r.nameservers
                .push(SocketAddr::new(IpAddr::V4(Ipv4Addr::LOCALHOST), 53));
        }
        r
    }

    /// Answers names from `hosts` (a hosts file's text, as the pod's OCI containers get it in
    /// `/etc/hosts`) before asking DNS: without it `hostAliases` and the pod's own hostname
    /// would not resolve. Read as glibc does: `#` starts a comment, the first field is an IPv4
    /// or IPv6 address (a line with an unparsable one is skipped), the others are names,
    /// compared without case.
    pub fn with_hosts(mut self, hosts: &str) -> Resolver {
        self.hosts = Hosts::parse(hosts);
        self
    }

    /// The names to ask for, in order, for `name` (ASCII, lowercase): glibc's `res_search`. A
    /// trailing dot makes the name absolute; with fewer dots than `ndots` the search suffixes
    /// come first and then the name itself, otherwise the name first. No trailing dots in the
    /// result: every candidate is fully qualified.
    pub(crate) fn candidates(&self, name: &str) -> Vec<String> {
        if let Some(absolute) = name.strip_suffix('.') {
            return vec![absolute.to_owned()];
        }
        let searched = self.search.iter().map(|s| format!("{name}.{s}"));
        if name.matches('.').count() >= self.ndots {
            std::iter::once(name.to_owned()).chain(searched).collect()
        } else {
            searched.chain(std::iter::once(name.to_owned())).collect()
        }
    }

    /// Resolves `name` (as the guest passed it) to addresses, IPv4 first.
    pub(crate) async fn lookup(&self, name: &str) -> Result<Vec<IpAddr>, ErrorCode> {
        match parse_name(name)? {
            Parsed::Addr(ip) => Ok(vec![ip]),
            Parsed::Domain(domain) => {
                match tokio::time::timeout(LOOKUP_DEADLINE, self.resolve_domain(&domain)).await {
                    Ok(r) => r,
                    Err(_) => Err(ErrorCode::TemporaryResolverFailure),
                }
            }
        }
    }

    async fn resolve_domain(&self, domain: &str) -> Result<Vec<IpAddr>, ErrorCode> {
        let listed = self.hosts.lookup(domain);
        if !listed.is_empty() {
            debug!(name = %domain, addrs = ?listed, "resolved from the hosts file");
            return Ok(listed);
        }
        if is_localhost(domain) {
            // Pods resolve these from /etc/hosts; RFC 6761 reserves them for the loopback.
            return Ok(vec![
                IpAddr::V4(Ipv4Addr::LOCALHOST),
                IpAddr::V6(Ipv6Addr::LOCALHOST),
            ]);
        }
        let mut server_failure = false;
        for candidate in self.candidates(domain) {
            // A search suffix can make a valid name too long; glibc skips such candidates.
            let Ok(qname) = Name::from_ascii(format!("{candidate}.")) else {
                continue;
            };
            match self.ask_servers(&qname).await {
                Answer::Found(addrs) => {
                    debug!(name = %domain, %qname, ?addrs, "resolved");
                    return Ok(addrs);
                }
                Answer::NotFound => {}
                // glibc moves on to the next suffix after SERVFAIL, but gives up when no server
                // answers at all: the next suffix would time out as well.
                Answer::Failed => server_failure = true,
                Answer::Unreachable => {
                    debug!(name = %domain, %qname, "no nameserver answered");
                    return Err(ErrorCode::TemporaryResolverFailure);
                }
            }
        }
        debug!(name = %domain, server_failure, "not resolved");
        Err(if server_failure {
            ErrorCode::TemporaryResolverFailure
        } else {
            ErrorCode::NameUnresolvable
        })
    }

    /// One candidate name, asked of each nameserver in turn (`attempts` rounds) until one
    /// gives a definitive answer.
    async fn ask_servers(&self, qname: &Name) -> Answer {
        let mut answered = false;
        for _ in 0..self.attempts.max(1) {
            for &server in &self.nameservers {
                let (a, aaaa) = tokio::join!(
                    exchange(server, qname, RecordType::A, self.timeout),
                    exchange(server, qname, RecordType::AAAA, self.timeout),
                );
                match combine(a, aaaa) {
                    Reply::Definitive(answer) => return answer,
                    Reply::Failed => answered = true,
                    Reply::Silent => {}
                }
            }
        }
        if answered {
            Answer::Failed
        } else {
            Answer::Unreachable
        }
    }
}

/// A hosts file as glibc's `files` source reads it: each name with its line's address, in the
/// file's order.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
struct Hosts(Vec<(String, IpAddr)>);

impl Hosts {
    fn parse(text: &str) -> Hosts {
        let mut entries = Vec::new();
        for line in text.lines() {
            let line = line.split('#').next().unwrap_or_default();
            let mut fields = line.split_whitespace();
            // glibc skips a line whose address does not parse (a zone, `fe80::1%eth0`, too).
            let Some(Ok(ip)) = fields.next().map(IpAddr::from_str) else {
                continue;
            };
            // In the form `parse_name` gives the guest's names (lowercase, punycode), so the
            // two compare as glibc's `strcasecmp` does. A name that is an IP literal, or no
            // name at all, could never be asked.
            entries.extend(fields.filter_map(|name| match url::Host::parse(name) {
                Ok(url::Host::Domain(d)) => Some((d, ip)),
                _ => None,
            }));
        }
        Hosts(entries)
    }

    /// The addresses of every line naming `domain` exactly as asked (no search suffix, and a
    /// trailing dot kept, so `name.` does not match `name`: glibc and musl compare so), IPv4
    /// first as from DNS. Every line, not only the first: musl does so, and glibc with
    /// `multi on`, which Debian (and Ubuntu) ship in `/etc/host.conf`; kubelet's
    /// `localhost` is on two lines, one per family.
    fn lookup(&self, domain: &str) -> Vec<IpAddr> {
        let mut addrs: Vec<IpAddr> = Vec::new();
        for (name, ip) in &self.0 {
            if name == domain && !addrs.contains(ip) {
                addrs.push(*ip);
            }
        }
        // Stable: each family keeps the file's order.
        addrs.sort_by_key(IpAddr::is_ipv6);
        addrs
    }
}

/// A `search` or `domain` entry: trailing dots dropped, the root (`.`) meaning none.
fn search_domain(s: &str) -> String {
    s.trim_end_matches('.').to_ascii_lowercase()
}

fn is_localhost(domain: &str) -> bool {
    let d = domain.trim_end_matches('.');
    d == "localhost" || d.ends_with(".localhost")
}

enum Parsed {
    Addr(IpAddr),
    /// ASCII (punycode), lowercase; a trailing dot kept.
    Domain(String),
}

/// Validates `name` and converts a Unicode name to punycode, as wasmtime-wasi does (`url`'s
/// host parser): IP literals are answered without a lookup.
fn parse_name(name: &str) -> Result<Parsed, ErrorCode> {
    let domain = match url::Host::parse(name) {
        Ok(url::Host::Domain(domain)) => domain,
        Ok(url::Host::Ipv4(ip)) => return Ok(Parsed::Addr(IpAddr::V4(ip))),
        Ok(url::Host::Ipv6(ip)) => return Ok(Parsed::Addr(IpAddr::V6(ip))),
        // The url parser wants IPv6 literals in brackets; the WASI interface does not.
        Err(_) if let Ok(ip) = Ipv6Addr::from_str(name) => return Ok(Parsed::Addr(IpAddr::V6(ip))),
        Err(_) => return Err(ErrorCode::InvalidArgument),
    };
    // Labels over 63 bytes or a name over 255: no nameserver could be asked.
    let absolute = if domain.ends_with('.') {
        domain.clone()
    } else {
        format!("{domain}.")
    };
    if absolute == "." || Name::from_ascii(&absolute).is_err() {
        return Err(ErrorCode::InvalidArgument);
    }
    Ok(Parsed::Domain(domain))
}

/// What the nameservers said about one candidate name.
#[derive(Debug, PartialEq, Eq)]
enum Answer {
    Found(Vec<IpAddr>),
    /// NXDOMAIN, or the name exists without addresses.
    NotFound,
    /// Servers answered, but only with failures (SERVFAIL, REFUSED, garbage).
    Failed,
    /// No server answered at all.
    Unreachable,
}

/// One nameserver's answers to the A and AAAA questions, taken together.
#[derive(Debug, PartialEq, Eq)]
enum Reply {
    Definitive(Answer),
    /// It answered, but not usefully: ask the next server.
    Failed,
    /// No answer within the timeout, or the server cannot be reached.
    Silent,
}

/// Why one exchange got no usable answer.
#[derive(Debug)]
enum ExchangeError {
    /// Nothing came back in time, or the socket failed.
    Silent,
    /// An answer came, with an error code other than NXDOMAIN.
    Failed,
}

fn combine(a: Result<Message, ExchangeError>, aaaa: Result<Message, ExchangeError>) -> Reply {
    let mut addrs = Vec::new();
    let (mut nxdomain, mut nodata, mut answered) = (0, 0, 0);
    for r in [&a, &aaaa] {
        match r {
            Ok(m) => {
                answered += 1;
                if m.metadata.response_code == ResponseCode::NXDomain {
                    nxdomain += 1;
                    continue;
                }
                let before = addrs.len();
                for record in &m.answers {
                    let ip = match &record.data {
                        RData::A(a) => IpAddr::V4(a.0),
                        RData::AAAA(a) => IpAddr::V6(a.0),
                        _ => continue,
                    };
                    if !addrs.contains(&ip) {
                        addrs.push(ip);
                    }
                }
                if addrs.len() == before {
                    nodata += 1;
                }
            }
            Err(ExchangeError::Failed) => answered += 1,
            Err(ExchangeError::Silent) => {}
        }
    }
    if !addrs.is_empty() {
        Reply::Definitive(Answer::Found(addrs))
    } else if nxdomain > 0 || nodata == 2 {
        Reply::Definitive(Answer::NotFound)
    } else if answered > 0 {
        Reply::Failed
    } else {
        Reply::Silent
    }
}

/// One question to one server: over UDP, again over TCP if the answer was truncated. `Ok` is
/// a NOERROR or NXDOMAIN answer to this very question.
async fn exchange(
    server: SocketAddr,
    qname: &Name,
    rtype: RecordType,
    timeout: Duration,
) -> Result<Message, ExchangeError> {
    let mut query = Message::query();
    query.metadata.recursion_desired = true;
    query.add_query(Query::query(qname.clone(), rtype));
    let Ok(bytes) = query.to_vec() else {
        // Only an unencodable name gets here, and those were filtered out before.
        return Err(ExchangeError::Failed);
    };
    let answer = match tokio::time::timeout(timeout, udp_exchange(server, &bytes, &query)).await {
        Ok(Ok(m)) if m.metadata.truncation => {
            match tokio::time::timeout(timeout, tcp_exchange(server, &bytes, &query)).await {
                Ok(Ok(m)) => m,
                Ok(Err(error)) => {
                    debug!(%server, %qname, %error, "dns over tcp failed");
                    return Err(ExchangeError::Silent);
                }
                Err(_) => return Err(ExchangeError::Silent),
            }
        }
        Ok(Ok(m)) => m,
        Ok(Err(error)) => {
            debug!(%server, %qname, %error, "dns over udp failed");
            return Err(ExchangeError::Silent);
        }
        Err(_) => return Err(ExchangeError::Silent),
    };
    match answer.metadata.response_code {
        ResponseCode::NoError | ResponseCode::NXDomain => Ok(answer),
        code => {
            debug!(%server, %qname, %code, "nameserver failed");
            Err(ExchangeError::Failed)
        }
    }
}

async fn udp_exchange(
    server: SocketAddr,
    bytes: &[u8],
    query: &Message,
) -> std::io::Result<Message> {
    let local: SocketAddr = match server {
        SocketAddr::V4(_) => (Ipv4Addr::UNSPECIFIED, 0).into(),
        SocketAddr::V6(_) => (Ipv6Addr::UNSPECIFIED, 0).into(),
    };
    let socket = tokio::net::UdpSocket::bind(local).await?;
    // Connected: the kernel drops datagrams from anyone but the server.
    socket.connect(server).await?;
    socket.send(bytes).await?;
    let mut buf = vec![0; UDP_BUFFER];
    for _ in 0..MAX_STRAY_DATAGRAMS {
        let n = socket.recv(&mut buf).await?;
        if let Ok(m) = Message::from_vec(&buf[..n])
            && answers(&m, query)
        {
            return Ok(m);
        }
    }
    Err(std::io::Error::new(
        std::io::ErrorKind::InvalidData,
        "no answer to the query among the datagrams received",
    ))
}

async fn tcp_exchange(
    server: SocketAddr,
    bytes: &[u8],
    query: &Message,
) -> std::io::Result<Message> {
    let mut stream = tokio::net::TcpStream::connect(server).await?;
    let len = u16::try_from(bytes.len())
        .map_err(|_| std::io::Error::new(std::io::ErrorKind::InvalidInput, "query too long"))?;
    let mut framed = Vec::with_capacity(bytes.len() + 2);
    framed.extend_from_slice(&len.to_be_bytes());
    framed.extend_from_slice(bytes);
    stream.write_all(&framed).await?;
    let mut len = [0u8; 2];
    stream.read_exact(&mut len).await?;
    // At most 64 KiB: the length prefix is 16 bits.
    let mut buf = vec![0; usize::from(u16::from_be_bytes(len))];
    stream.read_exact(&mut buf).await?;
    let invalid =
        |what: &str| std::io::Error::new(std::io::ErrorKind::InvalidData, what.to_owned());
    let m = Message::from_vec(&buf).map_err(|_| invalid("malformed dns answer"))?;
    if answers(&m, query) {
        Ok(m)
    } else {
        Err(invalid("the answer is not to our query"))
    }
}

/// Whether `m` is the answer to `query`: its id, and its question echoed.
fn answers(m: &Message, query: &Message) -> bool {
    m.metadata.message_type == MessageType::Response
        && m.metadata.id == query.metadata.id
        && m.queries.first().is_some_and(|q| {
            let ours = &query.queries[0];
            q.name() == ours.name() && q.query_type() == ours.query_type()
        })
}

/// The store's part for name lookups: whom to ask, and whether the guest may ask at all
/// (wasmtime-wasi's `allow_ip_name_lookup`, which it keeps private, so we hold our copy).
pub(crate) struct LookupCtx {
    pub(crate) resolver: Arc<Resolver>,
    pub(crate) allowed: bool,
}

/// What the host functions borrow from the store.
pub(crate) struct LookupView<'a> {
    /// `None` only if a store without a resolver ran on the shadowing linker: a host bug.
    pub(crate) ctx: Option<&'a LookupCtx>,
    pub(crate) table: &'a mut ResourceTable,
}

struct Lookup;

impl HasData for Lookup {
    type Data<'a> = LookupView<'a>;
}

/// Defines `wasi:sockets/ip-name-lookup` in `linker`, replacing wasmtime-wasi's definition
/// (which must already be there, from `add_to_linker_async`).
pub(crate) fn add_to_linker<T: Send + 'static>(
    linker: &mut wasmtime::component::Linker<T>,
    view: fn(&mut T) -> LookupView<'_>,
) -> wasmtime::Result<()> {
    linker.allow_shadowing(true);
    let r = bindings::wasi::sockets::ip_name_lookup::add_to_linker::<T, Lookup>(linker, view);
    linker.allow_shadowing(false);
    r
}

/// The guest's `resolve-address-stream`: the lookup task, then its addresses.
pub struct ResolveStream(Stream);

enum Stream {
    Pending(AbortOnDropHandle<Result<Vec<IpAddr>, ErrorCode>>),
    Done(Result<std::vec::IntoIter<IpAddr>, ErrorCode>),
}

impl ResolveStream {
    /// The lookup's outcome once its task has finished.
    fn poll_done(
        &mut self,
        cx: &mut Context<'_>,
    ) -> Poll<&mut Result<std::vec::IntoIter<IpAddr>, ErrorCode>> {
        if let Stream::Pending(task) = &mut self.0
            && let Poll::Ready(r) = std::pin::Pin::new(task).poll(cx)
        {
            let r = r.unwrap_or_else(|error| {
                warn!(%error, "the name lookup task failed");
                Err(ErrorCode::TemporaryResolverFailure)
            });
            self.0 = Stream::Done(r.map(Vec::into_iter));
        }
        match &mut self.0 {
            Stream::Done(r) => Poll::Ready(r),
            Stream::Pending(_) => Poll::Pending,
        }
    }
}

#[wasmtime_wasi::async_trait]
impl Pollable for ResolveStream {
    async fn ready(&mut self) {
        std::future::poll_fn(|cx| self.poll_done(cx).map(|_| ())).await;
    }
}

impl Host for LookupView<'_> {
    fn resolve_addresses(
        &mut self,
        network: Resource<Network>,
        name: String,
    ) -> wasmtime::Result<Result<Resource<ResolveStream>, ErrorCode>> {
        // The handle is the capability; a forged one is a trap, as in wasmtime-wasi.
        self.table.get(&network)?;
        let Some(ctx) = self.ctx else {
            wasmtime::bail!("name lookup through the pod's resolver, but the store has none");
        };
        if !ctx.allowed {
            return Ok(Err(ErrorCode::PermanentResolverFailure));
        }
        // Bad names and IP literals are answered at once, as wasmtime-wasi does.
        let stream = match parse_name(&name) {
            Err(code) => return Ok(Err(code)),
            Ok(Parsed::Addr(ip)) => Stream::Done(Ok(vec![ip].into_iter())),
            Ok(Parsed::Domain(_)) => {
                let resolver = ctx.resolver.clone();
                // On the runtime polling the guest: the pod's network namespace. Dropping the
                // stream aborts the lookup.
                Stream::Pending(AbortOnDropHandle::new(tokio::spawn(async move {
                    resolver.lookup(&name).await
                })))
            }
        };
        Ok(Ok(self.table.push(ResolveStream(stream))?))
    }
}

impl HostResolveAddressStream for LookupView<'_> {
    fn resolve_next_address(
        &mut self,
        stream: Resource<ResolveStream>,
    ) -> wasmtime::Result<Result<Option<IpAddress>, ErrorCode>> {
        let stream = self.table.get_mut(&stream)?;
        let waker = futures_util::task::noop_waker_ref();
        Ok(match stream.poll_done(&mut Context::from_waker(waker)) {
            Poll::Pending => Err(ErrorCode::WouldBlock),
            Poll::Ready(Ok(addrs)) => Ok(addrs.next().map(ip_address)),
            Poll::Ready(Err(code)) => Err(*code),
        })
    }

    fn subscribe(
        &mut self,
        stream: Resource<ResolveStream>,
    ) -> wasmtime::Result<Resource<DynPollable>> {
        subscribe(self.table, stream)
    }

    fn drop(&mut self, stream: Resource<ResolveStream>) -> wasmtime::Result<()> {
        self.table.delete(stream)?;
        Ok(())
    }
}

/// The WIT form of an address: IPv4 as four octets, IPv6 as eight 16-bit segments.
fn ip_address(ip: IpAddr) -> IpAddress {
    match ip {
        IpAddr::V4(v4) => {
            let [a, b, c, d] = v4.octets();
            IpAddress::Ipv4((a, b, c, d))
        }
        IpAddr::V6(v6) => {
            let [a, b, c, d, e, f, g, h] = v6.segments();
            IpAddress::Ipv6((a, b, c, d, e, f, g, h))
        }
    }
}

#[cfg(test)]
pub(crate) mod tests;
