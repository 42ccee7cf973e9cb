//! The resolv.conf reader and search order as pure functions; the resolver against a fake DNS
//! server on loopback (real UDP and TCP sockets).

use std::collections::{HashMap, HashSet};
use std::sync::Mutex;
use std::time::Instant;

use hickory_proto::op::OpCode;
use hickory_proto::rr::Record;
use hickory_proto::rr::rdata::{A, AAAA};

use super::*;

/// What kubelet writes for a pod in `default` with cluster DNS (see kedge-net's resolv.rs).
const POD_RESOLV_CONF: &str = "search default.svc.cluster.local svc.cluster.local cluster.local\n\
    nameserver 10.43.0.10\n\
    options ndots:5\n";

const CLUSTER_SEARCH: [&str; 3] = [
    "default.svc.cluster.local",
    "svc.cluster.local",
    "cluster.local",
];

#[test]
fn reads_a_pod_resolv_conf() {
    let r = Resolver::from_resolv_conf(POD_RESOLV_CONF);
    assert_eq!(r.nameservers, ["10.43.0.10:53".parse().unwrap()]);
    assert_eq!(r.search, CLUSTER_SEARCH);
    assert_eq!(r.ndots, 5);
    assert_eq!(r.timeout, DEFAULT_TIMEOUT);
    assert_eq!(r.attempts, DEFAULT_ATTEMPTS);
}

#[test]
fn reads_resolv_conf_as_glibc_does() {
    let r = Resolver::from_resolv_conf(
        "# comment\n\
         ; another\n\
         nameserver 192.168.1.1\n\
         nameserver not-an-address\n\
         nameserver fe80::1%eth0\n\
         nameserver 2001:db8::53\n\
         nameserver 10.0.0.4\n\
         search old.example\n\
         domain Corp.Example.\n\
         options timeout:9 rotate attempts:99\n\
         options ndots:40 edns0\n",
    );
    // At most three servers, unparsable ones skipped, zones dropped.
    assert_eq!(
        r.nameservers,
        [
            "192.168.1.1:53".parse().unwrap(),
            "[fe80::1]:53".parse().unwrap(),
            "[2001:db8::53]:53".parse().unwrap(),
        ]
    );
    // The last of `search` and `domain` wins; lowercase, no trailing dot.
    assert_eq!(r.search, ["corp.example"]);
    assert_eq!(r.ndots, MAX_NDOTS);
    assert_eq!(r.timeout, Duration::from_secs(9));
    assert_eq!(r.attempts, MAX_ATTEMPTS);

    let r = Resolver::from_resolv_conf("search a.example . b.example.\noptions ndots:x\n");
    assert_eq!(r.search, ["a.example", "b.example"]);
    assert_eq!(r.ndots, 1, "glibc's default, a bad value ignored");

    // No nameserver: glibc asks the loopback.
    let r = Resolver::from_resolv_conf("");
    assert_eq!(r, Resolver::default());
    assert_eq!(r.nameservers, ["127.0.0.1:53".parse().unwrap()]);
}

#[test]
fn search_order_follows_ndots() {
    let r = Resolver::from_resolv_conf(POD_RESOLV_CONF);
    // Fewer dots than ndots: the suffixes first, then the name itself.
    assert_eq!(
        r.candidates("my-service"),
        [
            "my-service.default.svc.cluster.local",
            "my-service.svc.cluster.local",
            "my-service.cluster.local",
            "my-service",
        ]
    );
    assert_eq!(
        r.candidates("example.com"),
        [
            "example.com.default.svc.cluster.local",
            "example.com.svc.cluster.local",
            "example.com.cluster.local",
            "example.com",
        ]
    );
    // A trailing dot: absolute, no search.
    assert_eq!(r.candidates("example.com."), ["example.com"]);
    // As many dots as ndots: the name first, then the suffixes.
    let r = Resolver { ndots: 1, ..r };
    assert_eq!(
        r.candidates("web.prod"),
        [
            "web.prod",
            "web.prod.default.svc.cluster.local",
            "web.prod.svc.cluster.local",
            "web.prod.cluster.local",
        ]
    );
    assert_eq!(r.candidates("db")[0], "db.default.svc.cluster.local");
    // ndots 0: every name is tried as is first.
    let r = Resolver { ndots: 0, ..r };
    assert_eq!(r.candidates("db")[0], "db");
    // No search path: only the name.
    let r = Resolver {
        search: vec![],
        ..r
    };
    assert_eq!(r.candidates("db"), ["db"]);
}

#[test]
fn names_are_validated_and_punycoded() {
    let addr = |name: &str| match parse_name(name) {
        Ok(Parsed::Addr(ip)) => Some(ip),
        _ => None,
    };
    let domain = |name: &str| match parse_name(name) {
        Ok(Parsed::Domain(d)) => Some(d),
        _ => None,
    };
    assert_eq!(addr("10.1.2.3"), Some("10.1.2.3".parse().unwrap()));
    assert_eq!(addr("::1"), Some("::1".parse().unwrap()));
    assert_eq!(addr("[2001:db8::1]"), Some("2001:db8::1".parse().unwrap()));
    assert_eq!(domain("My-Service").as_deref(), Some("my-service"));
    assert_eq!(domain("example.com.").as_deref(), Some("example.com."));
    assert_eq!(
        domain("bücher.example").as_deref(),
        Some("xn--bcher-kva.example")
    );
    for bad in [
        "",
        "a b",
        "a/b",
        ".",
        &"x".repeat(64),
        &["abc"; 70].join("."),
    ] {
        assert!(
            matches!(parse_name(bad), Err(ErrorCode::InvalidArgument)),
            "{bad:?}"
        );
    }
}

/// What the agent writes as `/etc/hosts` for pod `web-0` (subdomain `nginx`, address
/// 10.42.0.7) with two `hostAliases` (see `hosts_file` in the agent's network.rs).
const POD_HOSTS: &str = "# Kubernetes-managed hosts file.\n\
    127.0.0.1\tlocalhost\n\
    ::1\tlocalhost ip6-localhost ip6-loopback\n\
    fe00::0\tip6-localnet\n\
    fe00::0\tip6-mcastprefix\n\
    fe00::1\tip6-allnodes\n\
    fe00::2\tip6-allrouters\n\
    10.42.0.7\tweb-0.nginx.default.svc.cluster.local\tweb-0\n\
    \n\
    # Entries added by HostAliases.\n\
    10.1.2.3\tfoo.local\tBar.Local\n\
    fd00::5\tfoo.local\tv6.local\n";

#[test]
fn reads_a_hosts_file_as_glibc_does() {
    let hosts = Hosts::parse(
        "# comment\n\
         10.0.0.1 one # one.example\n\
         \t 10.0.0.2\tTwo  Two.Example \r\n\
         fe80::1%eth0 zoned\n\
         not-an-address bad\n\
         10.0.0.300 bad\n\
         10.0.0.3\n\
         2001:db8::1 one\n\
         10.0.0.4 one 10.9.9.9\n\
         10.0.0.1 one\n\
         10.0.0.5 dotted.\n\
         10.0.0.6 bücher.example\n",
    );
    let find = |name: &str| hosts.lookup(name);
    // Every line naming it, IPv4 first, each address once; a comment ends the line.
    assert_eq!(find("one"), ips(&["10.0.0.1", "10.0.0.4", "2001:db8::1"]));
    assert!(find("one.example").is_empty());
    // Tabs, spaces and CRLF separate; names are kept lowercase (asked names are, too).
    assert_eq!(find("two"), ips(&["10.0.0.2"]));
    assert_eq!(find("two.example"), ips(&["10.0.0.2"]));
    // Lines with an unparsable address are skipped; an address alone names nothing.
    for name in ["zoned", "bad", "10.0.0.3", "10.9.9.9"] {
        assert!(find(name).is_empty(), "{name}");
    }
    // The name exactly as asked: a trailing dot on either side only matches the same.
    assert_eq!(find("dotted."), ips(&["10.0.0.5"]));
    assert!(find("dotted").is_empty());
    assert!(find("one.").is_empty());
    // Unicode names in punycode, as `parse_name` gives the guest's.
    assert_eq!(find("xn--bcher-kva.example"), ips(&["10.0.0.6"]));
    assert_eq!(Hosts::parse(""), Hosts::default());
}

/// The pod's hosts file before DNS: `hostAliases`, the pod's own names and localhost answer
/// without a question; a name is looked up exactly as asked, so short names still go
/// through the search path and a trailing dot misses the entry.
#[tokio::test]
async fn the_hosts_file_answers_before_dns() {
    let dns = FakeDns::start(
        Zone::default()
            .with("foo.local", "10.99.0.1")
            .with("web-0.nginx.default.svc.cluster.local", "10.99.0.2")
            .with("foo.local.default.svc.cluster.local", "10.99.0.3"),
    )
    .await;
    let r = Resolver {
        nameservers: vec![dns.addr],
        ..Resolver::from_resolv_conf(POD_RESOLV_CONF).with_hosts(POD_HOSTS)
    };
    // hostAliases, whatever the case asked, both families (IPv4 first), DNS not asked
    // though it knows `foo.local` (and would find it under the first search suffix).
    assert_eq!(
        r.lookup("foo.local").await.unwrap(),
        ips(&["10.1.2.3", "fd00::5"])
    );
    assert_eq!(
        r.lookup("FOO.local").await.unwrap(),
        ips(&["10.1.2.3", "fd00::5"])
    );
    assert_eq!(r.lookup("bar.local").await.unwrap(), ips(&["10.1.2.3"]));
    assert_eq!(r.lookup("V6.Local").await.unwrap(), ips(&["fd00::5"]));
    // The pod's hostname and FQDN, and localhost from its lines.
    assert_eq!(r.lookup("web-0").await.unwrap(), ips(&["10.42.0.7"]));
    assert_eq!(
        r.lookup("web-0.nginx.default.svc.cluster.local")
            .await
            .unwrap(),
        ips(&["10.42.0.7"])
    );
    assert_eq!(
        r.lookup("localhost").await.unwrap(),
        ips(&["127.0.0.1", "::1"])
    );
    assert_eq!(r.lookup("ip6-localhost").await.unwrap(), ips(&["::1"]));
    assert_eq!(dns.asked_a(), Vec::<String>::new());

    // Not in the file as asked: DNS, with the search path (glibc's files source applies none).
    assert_eq!(r.lookup("web-0.nginx").await.unwrap(), ips(&["10.99.0.2"]));
    assert_eq!(dns.asked_a(), ["web-0.nginx.default.svc.cluster.local"]);
    // A trailing dot: not the file's `foo.local`; DNS for the absolute name.
    assert_eq!(r.lookup("foo.local.").await.unwrap(), ips(&["10.99.0.1"]));
    assert_eq!(dns.asked_a()[1..], ["foo.local"]);

    // Without the hosts file the same names go to DNS.
    let plain = Resolver {
        nameservers: vec![dns.addr],
        ..Resolver::from_resolv_conf(POD_RESOLV_CONF)
    };
    assert_eq!(
        plain.lookup("foo.local").await.unwrap(),
        ips(&["10.99.0.3"])
    );
}

/// The questions a [`FakeDns`] was asked: name, type, `"udp"` or `"tcp"`.
type Asked = Mutex<Vec<(String, RecordType, &'static str)>>;

/// A DNS server on 127.0.0.1 (UDP and TCP on one port) answering from a fixed table, and
/// noting every question it is asked.
pub(crate) struct FakeDns {
    pub(crate) addr: SocketAddr,
    asked: Arc<Asked>,
    _udp: AbortOnDropHandle<()>,
    _tcp: AbortOnDropHandle<()>,
}

/// What [`FakeDns`] knows.
#[derive(Clone, Default)]
pub(crate) struct Zone {
    /// Fully qualified names (no trailing dot) and their addresses.
    pub(crate) hosts: HashMap<String, Vec<IpAddr>>,
    /// Names answered over UDP with only the truncation bit: the answer is over TCP.
    pub(crate) truncated: HashSet<String>,
    /// Answer everything with SERVFAIL.
    pub(crate) servfail: bool,
}

impl Zone {
    pub(crate) fn with(mut self, name: &str, ip: &str) -> Self {
        self.hosts
            .entry(name.to_owned())
            .or_default()
            .push(ip.parse().unwrap());
        self
    }
}

/// Every loop of the fake server ends after this many requests.
const FAKE_DNS_MAX_REQUESTS: usize = 200;

impl FakeDns {
    pub(crate) async fn start(zone: Zone) -> FakeDns {
        // UDP on an ephemeral port, then TCP on the same one (rarely taken: retry a few times).
        let mut bound = None;
        for _ in 0..10 {
            let udp = tokio::net::UdpSocket::bind("127.0.0.1:0").await.unwrap();
            let addr = udp.local_addr().unwrap();
            if let Ok(tcp) = tokio::net::TcpListener::bind(addr).await {
                bound = Some((udp, tcp, addr));
                break;
            }
        }
        let (udp, tcp, addr) = bound.expect("a free port for UDP and TCP");
        let asked = Arc::new(Mutex::new(Vec::new()));
        let zone = Arc::new(zone);
        let udp_task = {
            let (asked, zone) = (asked.clone(), zone.clone());
            tokio::spawn(async move {
                let mut buf = vec![0; 4096];
                for _ in 0..FAKE_DNS_MAX_REQUESTS {
                    let Ok((n, peer)) = udp.recv_from(&mut buf).await else {
                        return;
                    };
                    if let Some(answer) = respond(&zone, &asked, &buf[..n], "udp") {
                        let _ = udp.send_to(&answer, peer).await;
                    }
                }
            })
        };
        let tcp_task = {
            let (asked, zone) = (asked.clone(), zone.clone());
            tokio::spawn(async move {
                for _ in 0..FAKE_DNS_MAX_REQUESTS {
                    let Ok((mut conn, _)) = tcp.accept().await else {
                        return;
                    };
                    let mut len = [0u8; 2];
                    if conn.read_exact(&mut len).await.is_err() {
                        continue;
                    }
                    let mut req = vec![0; usize::from(u16::from_be_bytes(len))];
                    if conn.read_exact(&mut req).await.is_err() {
                        continue;
                    }
                    if let Some(answer) = respond(&zone, &asked, &req, "tcp") {
                        let len = u16::try_from(answer.len()).unwrap().to_be_bytes();
                        let _ = conn.write_all(&[&len[..], &answer].concat()).await;
                    }
                }
            })
        };
        FakeDns {
            addr,
            asked,
            _udp: AbortOnDropHandle::new(udp_task),
            _tcp: AbortOnDropHandle::new(tcp_task),
        }
    }

    /// The names asked so far (A questions only, in order: each name once per server try).
    pub(crate) fn asked_a(&self) -> Vec<String> {
        self.asked
            .lock()
            .unwrap()
            .iter()
            .filter(|(_, t, _)| *t == RecordType::A)
            .map(|(n, _, _)| n.clone())
            .collect()
    }

    fn asked_over(&self, proto: &str) -> usize {
        let asked = self.asked.lock().unwrap();
        asked.iter().filter(|(_, _, p)| *p == proto).count()
    }
}

fn respond(zone: &Zone, asked: &Asked, request: &[u8], proto: &'static str) -> Option<Vec<u8>> {
    let req = Message::from_vec(request).ok()?;
    let q = req.queries.first()?.clone();
    let name = q
        .name()
        .to_ascii()
        .trim_end_matches('.')
        .to_ascii_lowercase();
    asked
        .lock()
        .unwrap()
        .push((name.clone(), q.query_type(), proto));
    let mut resp = Message::response(req.metadata.id, OpCode::Query);
    resp.metadata.recursion_desired = req.metadata.recursion_desired;
    resp.add_query(q.clone());
    if zone.servfail {
        resp.metadata.response_code = ResponseCode::ServFail;
    } else if let Some(ips) = zone.hosts.get(&name) {
        if proto == "udp" && zone.truncated.contains(&name) {
            resp.metadata.truncation = true;
        } else {
            for ip in ips {
                let data = match (ip, q.query_type()) {
                    (IpAddr::V4(v4), RecordType::A) => RData::A(A(*v4)),
                    (IpAddr::V6(v6), RecordType::AAAA) => RData::AAAA(AAAA(*v6)),
                    _ => continue,
                };
                resp.add_answer(Record::from_rdata(q.name().clone(), 30, data));
            }
        }
    } else {
        resp.metadata.response_code = ResponseCode::NXDomain;
    }
    resp.to_vec().ok()
}

/// A pod resolver asking `servers`, with short timeouts so failures show quickly.
pub(crate) fn pod_resolver(servers: &[SocketAddr]) -> Resolver {
    Resolver {
        nameservers: servers.to_vec(),
        search: CLUSTER_SEARCH.map(String::from).to_vec(),
        ndots: 5,
        timeout: Duration::from_millis(500),
        attempts: 2,
        hosts: Hosts::default(),
    }
}

fn ips(list: &[&str]) -> Vec<IpAddr> {
    list.iter().map(|s| s.parse().unwrap()).collect()
}

#[tokio::test]
async fn short_names_are_searched_in_order() {
    let dns = FakeDns::start(
        Zone::default()
            .with("web.prod.svc.cluster.local", "10.43.1.2")
            .with("web.prod.svc.cluster.local", "fd00::2"),
    )
    .await;
    let r = pod_resolver(&[dns.addr]);
    // NXDOMAIN for the first suffix moves on to the next; IPv4 first.
    assert_eq!(
        r.lookup("web.prod").await.unwrap(),
        ips(&["10.43.1.2", "fd00::2"])
    );
    assert_eq!(
        dns.asked_a(),
        [
            "web.prod.default.svc.cluster.local",
            "web.prod.svc.cluster.local"
        ]
    );
}

#[tokio::test]
async fn unknown_names_are_unresolvable_after_every_candidate() {
    let dns = FakeDns::start(Zone::default()).await;
    let r = pod_resolver(&[dns.addr]);
    let err = r.lookup("nowhere").await.unwrap_err();
    assert!(matches!(err, ErrorCode::NameUnresolvable), "{err:?}");
    assert_eq!(
        dns.asked_a(),
        [
            "nowhere.default.svc.cluster.local",
            "nowhere.svc.cluster.local",
            "nowhere.cluster.local",
            "nowhere",
        ]
    );
    // Absolute: exactly one question.
    let before = dns.asked_a().len();
    assert!(r.lookup("nowhere.example.").await.is_err());
    assert_eq!(dns.asked_a()[before..], ["nowhere.example"]);
}

#[tokio::test]
async fn a_truncated_answer_is_asked_again_over_tcp() {
    let mut zone = Zone::default().with("big.default.svc.cluster.local", "10.43.9.9");
    zone.truncated
        .insert("big.default.svc.cluster.local".into());
    let dns = FakeDns::start(zone).await;
    let r = pod_resolver(&[dns.addr]);
    assert_eq!(r.lookup("big").await.unwrap(), ips(&["10.43.9.9"]));
    assert!(dns.asked_over("tcp") >= 1, "the answer came over tcp");
}

#[tokio::test]
async fn a_failing_server_passes_to_the_next() {
    let broken = FakeDns::start(Zone {
        servfail: true,
        ..Zone::default()
    })
    .await;
    let good =
        FakeDns::start(Zone::default().with("db.default.svc.cluster.local", "10.43.0.7")).await;
    let r = pod_resolver(&[broken.addr, good.addr]);
    assert_eq!(r.lookup("db").await.unwrap(), ips(&["10.43.0.7"]));

    // Only failures: a temporary failure, after every candidate.
    let r = pod_resolver(&[broken.addr]);
    let err = r.lookup("db").await.unwrap_err();
    assert!(
        matches!(err, ErrorCode::TemporaryResolverFailure),
        "{err:?}"
    );
}

#[tokio::test]
async fn silent_servers_are_a_temporary_failure_within_the_timeouts() {
    // Bound and never read: the questions go unanswered.
    let silent = tokio::net::UdpSocket::bind("127.0.0.1:0").await.unwrap();
    let r = pod_resolver(&[silent.local_addr().unwrap()]);
    let start = Instant::now();
    let err = r.lookup("db").await.unwrap_err();
    assert!(
        matches!(err, ErrorCode::TemporaryResolverFailure),
        "{err:?}"
    );
    // Two attempts of 0.5 s for the first candidate; the rest are not tried.
    let took = start.elapsed();
    assert!(
        took >= Duration::from_millis(900) && took < Duration::from_secs(5),
        "{took:?}"
    );
}

#[tokio::test]
async fn literals_and_localhost_need_no_server() {
    // Nothing listens there: any question would fail.
    let r = pod_resolver(&["127.0.0.1:9".parse().unwrap()]);
    assert_eq!(r.lookup("10.0.0.1").await.unwrap(), ips(&["10.0.0.1"]));
    assert_eq!(
        r.lookup("localhost").await.unwrap(),
        ips(&["127.0.0.1", "::1"])
    );
    assert!(matches!(
        r.lookup("not a name").await,
        Err(ErrorCode::InvalidArgument)
    ));
}

/// A `network` handle as the guest gets it from wasmtime-wasi.
fn network(table: &mut ResourceTable) -> Resource<Network> {
    use wasmtime_wasi::p2::bindings::sockets::instance_network::Host as _;
    let mut ctx = wasmtime_wasi::WasiCtx::builder().build();
    let mut view = wasmtime_wasi::sockets::WasiSocketsCtxView {
        ctx: ctx.sockets(),
        table,
    };
    view.instance_network().unwrap()
}

/// The host functions as the guest calls them: answers at once for literals and bad names,
/// `would-block` until the lookup task ends, then the addresses and the end.
#[tokio::test]
async fn the_stream_behaves_as_wasmtime_wasi_s() {
    let dns =
        FakeDns::start(Zone::default().with("db.default.svc.cluster.local", "10.43.0.7")).await;
    let mut table = ResourceTable::new();
    let net = network(&mut table);
    let borrow = |r: &Resource<Network>| Resource::<Network>::new_borrow(r.rep());
    let ctx = LookupCtx {
        resolver: Arc::new(pod_resolver(&[dns.addr])),
        allowed: true,
    };
    let mut view = LookupView {
        ctx: Some(&ctx),
        table: &mut table,
    };

    let s = view
        .resolve_addresses(borrow(&net), "10.0.0.1".into())
        .unwrap()
        .unwrap();
    let next = |view: &mut LookupView<'_>, s: &Resource<ResolveStream>| {
        view.resolve_next_address(Resource::new_borrow(s.rep()))
            .unwrap()
    };
    assert!(matches!(
        next(&mut view, &s),
        Ok(Some(IpAddress::Ipv4((10, 0, 0, 1))))
    ));
    assert!(matches!(next(&mut view, &s), Ok(None)));
    HostResolveAddressStream::drop(&mut view, s).unwrap();

    let r = view.resolve_addresses(borrow(&net), "not a name".into());
    assert!(matches!(r, Ok(Err(ErrorCode::InvalidArgument))));

    let s = view
        .resolve_addresses(borrow(&net), "db".into())
        .unwrap()
        .unwrap();
    // The task has not run yet (single-threaded test runtime, no await since the spawn).
    assert!(matches!(next(&mut view, &s), Err(ErrorCode::WouldBlock)));
    tokio::time::timeout(
        Duration::from_secs(10),
        view.table.get_mut(&s).unwrap().ready(),
    )
    .await
    .expect("the lookup ends");
    assert!(matches!(
        next(&mut view, &s),
        Ok(Some(IpAddress::Ipv4((10, 43, 0, 7))))
    ));
    assert!(matches!(next(&mut view, &s), Ok(None)));
    HostResolveAddressStream::drop(&mut view, s).unwrap();

    // Name lookups not allowed: as wasmtime-wasi answers then.
    let denied = LookupCtx {
        allowed: false,
        ..ctx
    };
    let mut view = LookupView {
        ctx: Some(&denied),
        table: &mut table,
    };
    let r = view.resolve_addresses(borrow(&net), "db".into());
    assert!(matches!(r, Ok(Err(ErrorCode::PermanentResolverFailure))));
}
