//! The server end to end on loopback: real UDP and TCP sockets, hickory's client, and a fake
//! upstream resolver on another loopback port.

use std::net::SocketAddr;
use std::sync::Arc;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::time::Duration;

use hickory_net::client::{Client, ClientHandle};
use hickory_net::runtime::{Time, TokioRuntimeProvider};
use hickory_net::tcp::TcpClientStream;
use hickory_net::udp::UdpClientStream;
use hickory_net::xfer::Protocol;
use hickory_proto::op::{DnsResponse, Metadata, ResponseCode};
use hickory_proto::rr::rdata::A;
use hickory_proto::rr::{DNSClass, Name, RData, Record, RecordType};
use hickory_server::Server;
use hickory_server::server::{Request, RequestHandler, ResponseHandler, ResponseInfo};
use hickory_server::zone_handler::MessageResponseBuilder;
use serde_json::{Value, json};
use tokio::net::{TcpListener, UdpSocket};
use tokio_util::sync::CancellationToken;
use tokio_util::task::AbortOnDropHandle;

use super::{DnsConfig, DnsServer, Zone, upstreams_from_resolv_conf};

/// Every query in these tests gets this long; the dead-upstream test needs ~1.5 s.
const CLIENT_TIMEOUT: Duration = Duration::from_secs(5);

fn services() -> Vec<Value> {
    vec![
        json!({"metadata": {"name": "web", "namespace": "default"},
               "spec": {"clusterIP": "10.43.0.10", "clusterIPs": ["10.43.0.10"],
                        "ports": [{"name": "http", "port": 80, "protocol": "TCP"}]}}),
        json!({"metadata": {"name": "dual", "namespace": "default"},
               "spec": {"clusterIP": "10.43.0.11", "clusterIPs": ["10.43.0.11", "fd00::11"]}}),
        json!({"metadata": {"name": "nginx", "namespace": "default"},
               "spec": {"clusterIP": "None", "ports": [{"name": "web", "port": 80}]}}),
        json!({"metadata": {"name": "ext", "namespace": "default"},
               "spec": {"type": "ExternalName", "externalName": "made-up.example"}}),
        json!({"metadata": {"name": "alias", "namespace": "default"},
               "spec": {"type": "ExternalName", "externalName": "web.default.svc.cluster.local"}}),
    ]
}

fn slices() -> Vec<Value> {
    vec![json!({
        "metadata": {"name": "nginx-1", "namespace": "default",
                     "labels": {"kubernetes.io/service-name": "nginx"}},
        "addressType": "IPv4",
        "ports": [{"name": "web", "port": 8080, "protocol": "TCP"}],
        "endpoints": [
            {"addresses": ["10.42.0.5"], "hostname": "web-0", "conditions": {"ready": true}},
            {"addresses": ["10.42.0.6"], "hostname": "web-1"},
            {"addresses": ["10.42.0.7"], "hostname": "web-2", "conditions": {"ready": false}},
        ]
    })]
}

/// A running server with the test zone loaded, stopped when dropped.
struct Harness {
    server: DnsServer,
    _cancel: tokio_util::sync::DropGuard,
}

impl Harness {
    async fn start(upstreams: Vec<SocketAddr>) -> Harness {
        let cancel = CancellationToken::new();
        let cfg = DnsConfig {
            listen: vec!["127.0.0.1:0".parse().unwrap()],
            domain: "cluster.local".into(),
            upstreams,
        };
        let server = DnsServer::start(cfg, cancel.clone()).await.unwrap();
        server.update(Zone::build("cluster.local", &services(), &slices()));
        Harness {
            server,
            _cancel: cancel.drop_guard(),
        }
    }

    fn addr(&self) -> SocketAddr {
        self.server.local_addrs()[0]
    }

    async fn udp(&self, name: &str, rtype: RecordType) -> DnsResponse {
        query(self.addr(), Protocol::Udp, name, rtype).await
    }
}

async fn query(addr: SocketAddr, protocol: Protocol, name: &str, rtype: RecordType) -> DnsResponse {
    let provider = TokioRuntimeProvider::new();
    let (mut client, background) = match protocol {
        Protocol::Tcp => {
            let (connect, handle) =
                TcpClientStream::new(addr, None, Some(CLIENT_TIMEOUT), provider);
            let stream = connect.await.expect("tcp connect");
            Client::<TokioRuntimeProvider>::with_timeout(stream, handle, CLIENT_TIMEOUT)
                .map_background()
        }
        _ => {
            let stream = UdpClientStream::builder(addr, provider)
                .with_timeout(Some(CLIENT_TIMEOUT))
                .build();
            Client::<TokioRuntimeProvider>::from_sender(stream).map_background()
        }
    };
    let _background = background;
    client
        .query(Name::from_ascii(name).unwrap(), DNSClass::IN, rtype)
        .await
        .unwrap_or_else(|e| panic!("query {name} {rtype}: {e}"))
}

/// Runs a client's background driver for as long as the returned handle lives.
trait MapBackground<C> {
    fn map_background(self) -> (C, AbortOnDropHandle<()>);
}

impl<C, F> MapBackground<C> for (C, F)
where
    F: Future<Output = ()> + Send + 'static,
{
    fn map_background(self) -> (C, AbortOnDropHandle<()>) {
        let (client, background) = self;
        let task = tokio::spawn(background);
        (client, AbortOnDropHandle::new(task))
    }
}

fn rdatas(response: &DnsResponse) -> Vec<String> {
    response
        .answers
        .iter()
        .map(|r| r.data.to_string())
        .collect()
}

fn soa_in_authority(response: &DnsResponse) -> bool {
    response
        .authorities
        .iter()
        .any(|r| r.record_type() == RecordType::SOA && r.name.to_ascii() == "cluster.local.")
}

/// A fake upstream resolver: `made-up.example` has one address, `big.example` too many for one
/// UDP answer, everything else is NXDOMAIN. Counts the TCP queries it sees.
#[derive(Clone, Default)]
struct FakeUpstream {
    tcp_queries: Arc<AtomicUsize>,
}

#[async_trait::async_trait]
impl RequestHandler for FakeUpstream {
    async fn handle_request<R: ResponseHandler, T: Time>(
        &self,
        request: &Request,
        mut response_handle: R,
    ) -> ResponseInfo {
        if request.protocol() == Protocol::Tcp {
            self.tcp_queries.fetch_add(1, Ordering::Relaxed);
        }
        let query = request.request_info().unwrap().query;
        let name = Name::from(query.name());
        let answers: Vec<Record> = match name.to_ascii().as_str() {
            "made-up.example." => vec![Record::from_rdata(
                name.clone(),
                60,
                RData::A(A::new(192, 0, 2, 7)),
            )],
            "big.example." => (0..200u8)
                .map(|i| Record::from_rdata(name.clone(), 60, RData::A(A::new(198, 51, 100, i))))
                .collect(),
            _ => Vec::new(),
        };
        let mut metadata = Metadata::response_from_request(&request.metadata);
        metadata.recursion_available = true;
        if answers.is_empty() {
            metadata.response_code = ResponseCode::NXDomain;
        }
        let mut builder = MessageResponseBuilder::from_message_request(request);
        let edns = request.edns.clone();
        if let Some(edns) = &edns {
            builder.edns(edns);
        }
        let response = builder.build(metadata, answers.iter(), [].iter(), [].iter(), [].iter());
        response_handle.send_response(response).await.unwrap()
    }
}

/// Starts the fake upstream on 127.0.0.2 (UDP and TCP on one port), stopped when dropped.
async fn fake_upstream() -> (SocketAddr, FakeUpstream, Server<FakeUpstream>) {
    let handler = FakeUpstream::default();
    let udp = UdpSocket::bind("127.0.0.2:0").await.unwrap();
    let addr = udp.local_addr().unwrap();
    let tcp = TcpListener::bind(addr).await.unwrap();
    let mut server = Server::new(handler.clone());
    server.register_socket(udp);
    server.register_listener(tcp, Duration::from_secs(5), 8);
    (addr, handler, server)
}

#[tokio::test]
async fn cluster_ip_service_answers_a_and_srv_with_additionals() {
    let h = Harness::start(Vec::new()).await;
    let a = h.udp("web.default.svc.cluster.local.", RecordType::A).await;
    assert_eq!(a.metadata.response_code, ResponseCode::NoError);
    assert!(a.metadata.authoritative);
    assert_eq!(rdatas(&a), ["10.43.0.10"]);
    assert_eq!(a.answers[0].ttl, 5);

    let srv = h
        .udp("_http._tcp.web.default.svc.cluster.local.", RecordType::SRV)
        .await;
    assert_eq!(rdatas(&srv), ["0 100 80 web.default.svc.cluster.local."]);
    let extra: Vec<String> = srv
        .additionals
        .iter()
        .map(|r| format!("{} {}", r.name, r.data))
        .collect();
    assert_eq!(extra, ["web.default.svc.cluster.local. 10.43.0.10"]);
}

#[tokio::test]
async fn aaaa_answers_ipv6_cluster_ips_or_nodata() {
    let h = Harness::start(Vec::new()).await;
    let dual = h
        .udp("dual.default.svc.cluster.local.", RecordType::AAAA)
        .await;
    assert_eq!(rdatas(&dual), ["fd00::11"]);
    let v4_only = h
        .udp("web.default.svc.cluster.local.", RecordType::AAAA)
        .await;
    assert_eq!(v4_only.metadata.response_code, ResponseCode::NoError);
    assert!(v4_only.answers.is_empty());
    assert!(soa_in_authority(&v4_only));
}

#[tokio::test]
async fn headless_service_answers_ready_endpoints_and_their_hostnames() {
    let h = Harness::start(Vec::new()).await;
    let all = h
        .udp("nginx.default.svc.cluster.local.", RecordType::A)
        .await;
    assert_eq!(rdatas(&all), ["10.42.0.5", "10.42.0.6"]);
    let pod = h
        .udp("web-0.nginx.default.svc.cluster.local.", RecordType::A)
        .await;
    assert_eq!(rdatas(&pod), ["10.42.0.5"]);
    let unready = h
        .udp("web-2.nginx.default.svc.cluster.local.", RecordType::A)
        .await;
    assert_eq!(unready.metadata.response_code, ResponseCode::NXDomain);

    let srv = h
        .udp(
            "_web._tcp.nginx.default.svc.cluster.local.",
            RecordType::SRV,
        )
        .await;
    assert_eq!(
        rdatas(&srv),
        [
            "0 50 8080 web-0.nginx.default.svc.cluster.local.",
            "0 50 8080 web-1.nginx.default.svc.cluster.local."
        ]
    );
    let extra: Vec<String> = srv
        .additionals
        .iter()
        .map(|r| format!("{} {}", r.name, r.data))
        .collect();
    assert_eq!(
        extra,
        [
            "web-0.nginx.default.svc.cluster.local. 10.42.0.5",
            "web-1.nginx.default.svc.cluster.local. 10.42.0.6"
        ]
    );
}

#[tokio::test]
async fn ptr_for_cluster_ips_and_headless_hostnames() {
    let h = Harness::start(Vec::new()).await;
    let svc = h.udp("10.0.43.10.in-addr.arpa.", RecordType::PTR).await;
    assert_eq!(rdatas(&svc), ["web.default.svc.cluster.local."]);
    let pod = h.udp("6.0.42.10.in-addr.arpa.", RecordType::PTR).await;
    assert_eq!(rdatas(&pod), ["web-1.nginx.default.svc.cluster.local."]);
}

#[tokio::test]
async fn external_name_is_a_cname_followed_upstream() {
    let (upstream, _, _server) = fake_upstream().await;
    let h = Harness::start(vec![upstream]).await;
    let cname = h
        .udp("ext.default.svc.cluster.local.", RecordType::CNAME)
        .await;
    assert_eq!(rdatas(&cname), ["made-up.example."]);
    let a = h.udp("ext.default.svc.cluster.local.", RecordType::A).await;
    assert_eq!(rdatas(&a), ["made-up.example.", "192.0.2.7"]);
}

#[tokio::test]
async fn external_name_inside_the_cluster_is_followed_locally() {
    let h = Harness::start(Vec::new()).await;
    let a = h
        .udp("alias.default.svc.cluster.local.", RecordType::A)
        .await;
    assert_eq!(a.metadata.response_code, ResponseCode::NoError);
    assert_eq!(rdatas(&a), ["web.default.svc.cluster.local.", "10.43.0.10"]);
}

#[tokio::test]
async fn missing_names_are_nxdomain_with_soa_and_namespaces_nodata() {
    let h = Harness::start(Vec::new()).await;
    let nx = h
        .udp("nope.default.svc.cluster.local.", RecordType::A)
        .await;
    assert_eq!(nx.metadata.response_code, ResponseCode::NXDomain);
    assert!(nx.answers.is_empty());
    assert!(soa_in_authority(&nx));
    // Never forwarded: a cluster name must not leak to, or be answered by, the outside.
    let search_expansion = h
        .udp("example.com.default.svc.cluster.local.", RecordType::A)
        .await;
    assert_eq!(
        search_expansion.metadata.response_code,
        ResponseCode::NXDomain
    );

    for ent in [
        "default.svc.cluster.local.",
        "svc.cluster.local.",
        "_tcp.web.default.svc.cluster.local.",
    ] {
        let nodata = h.udp(ent, RecordType::A).await;
        assert_eq!(
            nodata.metadata.response_code,
            ResponseCode::NoError,
            "{ent}"
        );
        assert!(nodata.answers.is_empty(), "{ent}");
        assert!(soa_in_authority(&nodata), "{ent}");
    }
}

#[tokio::test]
async fn update_swaps_the_answers() {
    let h = Harness::start(Vec::new()).await;
    let before = h.udp("web.default.svc.cluster.local.", RecordType::A).await;
    assert_eq!(rdatas(&before), ["10.43.0.10"]);

    let moved = vec![json!({"metadata": {"name": "web", "namespace": "default"},
                            "spec": {"clusterIP": "10.43.9.9"}})];
    h.server.update(Zone::build("cluster.local", &moved, &[]));
    let after = h.udp("web.default.svc.cluster.local.", RecordType::A).await;
    assert_eq!(rdatas(&after), ["10.43.9.9"]);
    let gone = h
        .udp("nginx.default.svc.cluster.local.", RecordType::A)
        .await;
    assert_eq!(gone.metadata.response_code, ResponseCode::NXDomain);

    // Each update gets a new SOA serial.
    let soa = h.udp("cluster.local.", RecordType::SOA).await;
    assert!(rdatas(&soa)[0].contains(" 2 7200 "), "{:?}", rdatas(&soa));
}

#[tokio::test]
async fn other_names_are_forwarded_upstream() {
    let (upstream, _, _server) = fake_upstream().await;
    let h = Harness::start(vec![upstream]).await;
    let a = h.udp("made-up.example.", RecordType::A).await;
    assert_eq!(a.metadata.response_code, ResponseCode::NoError);
    assert!(a.metadata.recursion_available);
    assert!(!a.metadata.authoritative);
    assert_eq!(rdatas(&a), ["192.0.2.7"]);
    let nx = h.udp("unknown.example.", RecordType::A).await;
    assert_eq!(nx.metadata.response_code, ResponseCode::NXDomain);
    // A reverse name we do not know goes upstream too.
    let ptr = h.udp("9.9.9.9.in-addr.arpa.", RecordType::PTR).await;
    assert_eq!(ptr.metadata.response_code, ResponseCode::NXDomain);
}

#[tokio::test]
async fn truncated_upstream_answers_are_fetched_again_over_tcp() {
    let (upstream, fake, _server) = fake_upstream().await;
    let h = Harness::start(vec![upstream]).await;
    let big = query(h.addr(), Protocol::Tcp, "big.example.", RecordType::A).await;
    assert_eq!(big.answers.len(), 200);
    assert_eq!(fake.tcp_queries.load(Ordering::Relaxed), 1);
}

#[tokio::test]
async fn dead_upstreams_give_servfail() {
    // Bound but never read: every query to it times out.
    let silent = std::net::UdpSocket::bind("127.0.0.3:0").unwrap();
    let h = Harness::start(vec![silent.local_addr().unwrap()]).await;
    let started = std::time::Instant::now();
    let fail = h.udp("made-up.example.", RecordType::A).await;
    assert_eq!(fail.metadata.response_code, ResponseCode::ServFail);
    assert!(started.elapsed() < CLIENT_TIMEOUT);

    let none = Harness::start(Vec::new()).await;
    let fail = none.udp("made-up.example.", RecordType::A).await;
    assert_eq!(fail.metadata.response_code, ResponseCode::ServFail);
}

#[tokio::test]
async fn tcp_queries_are_answered() {
    let h = Harness::start(Vec::new()).await;
    let a = query(
        h.addr(),
        Protocol::Tcp,
        "web-1.nginx.default.svc.cluster.local.",
        RecordType::A,
    )
    .await;
    assert_eq!(rdatas(&a), ["10.42.0.6"]);
}

#[tokio::test]
async fn the_server_never_forwards_to_itself() {
    let cancel = CancellationToken::new();
    let silent = std::net::UdpSocket::bind("127.0.0.1:0").unwrap();
    let port = silent.local_addr().unwrap().port();
    drop(silent);
    let cfg = DnsConfig {
        listen: vec![SocketAddr::from(([127, 0, 0, 1], port))],
        domain: "cluster.local".into(),
        upstreams: vec![SocketAddr::from(([127, 0, 0, 1], port))],
    };
    let server = DnsServer::start(cfg, cancel.clone()).await.unwrap();
    let fail = query(
        server.local_addrs()[0],
        Protocol::Udp,
        "made-up.example.",
        RecordType::A,
    )
    .await;
    assert_eq!(fail.metadata.response_code, ResponseCode::ServFail);
    cancel.cancel();
    tokio::time::timeout(Duration::from_secs(5), server.stopped())
        .await
        .unwrap();
}

#[tokio::test]
async fn bad_config_is_refused() {
    let cfg = DnsConfig {
        listen: Vec::new(),
        domain: "cluster.local".into(),
        upstreams: Vec::new(),
    };
    assert!(
        DnsServer::start(cfg.clone(), CancellationToken::new())
            .await
            .is_err()
    );
    let cfg = DnsConfig {
        listen: vec!["127.0.0.1:0".parse().unwrap()],
        domain: "bad..domain".into(),
        ..cfg
    };
    assert!(
        DnsServer::start(cfg, CancellationToken::new())
            .await
            .is_err()
    );
}

#[test]
fn upstreams_come_from_resolv_conf_nameservers() {
    let text = "# comment\nnameserver 127.0.0.53\nnameserver fe80::1%eth0\nnameserver 2001:db8::1\nsearch lan\n";
    let ups = upstreams_from_resolv_conf(text);
    assert_eq!(
        ups,
        [
            "127.0.0.53".parse::<std::net::IpAddr>().unwrap(),
            "2001:db8::1".parse().unwrap()
        ]
    );
}
