use super::*;
use serde_json::json;

fn probe(kind: ProbeKind, v: Value) -> Probe {
    let field = kind.field();
    Probe::of(&json!({ field: v }), kind).unwrap().unwrap()
}

fn tcp(port: u16) -> Value {
    json!({"tcpSocket": {"port": port}})
}

/// The result flips only after the thresholds, from kubelet's initial results: readiness and
/// startup begin failed, liveness begins passed.
#[test]
fn the_result_follows_consecutive_attempts_past_the_thresholds() {
    // (kind, successThreshold, failureThreshold, attempts, results after each attempt)
    type Case<'a> = (ProbeKind, u32, u32, &'a [bool], &'a [bool]);
    let cases: &[Case] = &[
        (ProbeKind::Readiness, 1, 3, &[true], &[true]),
        (
            ProbeKind::Readiness,
            2,
            3,
            &[true, false, true, true, false, false, false],
            &[false, false, false, true, true, true, false],
        ),
        (
            ProbeKind::Liveness,
            1,
            3,
            &[false, false, true, false, false, false],
            &[true, true, true, true, true, false],
        ),
        (ProbeKind::Liveness, 1, 1, &[true, false], &[true, false]),
        (ProbeKind::Startup, 1, 2, &[false, true], &[false, true]),
    ];
    for (kind, succ, fail, attempts, results) in cases {
        let mut v = tcp(80);
        v["successThreshold"] = json!(succ);
        v["failureThreshold"] = json!(fail);
        let p = probe(*kind, v);
        let mut t = Tracker::new(&p);
        let got: Vec<bool> = attempts
            .iter()
            .map(|ok| {
                t.observe(*ok);
                t.ok
            })
            .collect();
        assert_eq!(&got, results, "{kind:?} {succ}/{fail} {attempts:?}");
    }
}

#[test]
fn observe_reports_only_flips() {
    let mut t = Tracker::new(&probe(ProbeKind::Readiness, tcp(80)));
    assert_eq!(t.observe(false), None, "already failed");
    assert_eq!(t.observe(true), Some(true));
    assert_eq!(t.observe(true), None);
    assert_eq!(t.observe(false), None);
    assert_eq!(t.observe(false), None);
    assert_eq!(t.observe(false), Some(false));
    assert_eq!(t.observe(false), None);
}

#[test]
fn a_startup_probe_fails_for_good_after_its_threshold() {
    let mut v = tcp(80);
    v["failureThreshold"] = json!(3);
    let mut t = Tracker::new(&probe(ProbeKind::Startup, v));
    for _ in 0..2 {
        t.observe(false);
        assert!(!t.failed_for_good());
    }
    t.observe(true);
    t.observe(false);
    assert!(!t.failed_for_good(), "a success breaks the run");
    t.observe(false);
    t.observe(false);
    assert!(t.failed_for_good());
}

#[test]
fn probes_have_kubernetes_defaults() {
    let p = probe(ProbeKind::Liveness, json!({"httpGet": {"port": 8080}}));
    assert_eq!(
        p,
        Probe {
            kind: ProbeKind::Liveness,
            handler: Handler::Http {
                https: false,
                host: None,
                port: PortRef::Number(8080),
                path: "/".into(),
                headers: vec![],
            },
            initial_delay: Duration::ZERO,
            period: Duration::from_secs(10),
            timeout: Duration::from_secs(1),
            success_threshold: 1,
            failure_threshold: 3,
            termination_grace: None,
        }
    );
    let p = probe(
        ProbeKind::Readiness,
        json!({"httpGet": {"port": "http", "path": "healthz", "scheme": "HTTPS",
            "httpHeaders": [{"name": "X-A", "value": "1"}]},
            "initialDelaySeconds": 5, "periodSeconds": 2, "timeoutSeconds": 3,
            "successThreshold": 2, "failureThreshold": 4, "terminationGracePeriodSeconds": 7}),
    );
    assert_eq!(
        p.handler,
        Handler::Http {
            https: true,
            host: None,
            port: PortRef::Name("http".into()),
            path: "/healthz".into(),
            headers: vec![("X-A".into(), "1".into())],
        }
    );
    assert_eq!(
        (
            p.initial_delay,
            p.period,
            p.timeout,
            p.success_threshold,
            p.failure_threshold,
            p.termination_grace
        ),
        (
            Duration::from_secs(5),
            Duration::from_secs(2),
            Duration::from_secs(3),
            2,
            4,
            Some(Duration::from_secs(7))
        )
    );
    assert_eq!(
        probe(
            ProbeKind::Startup,
            json!({"exec": {"command": ["cat", "/ok"]}})
        )
        .handler,
        Handler::Exec(vec!["cat".into(), "/ok".into()])
    );
    assert_eq!(
        probe(
            ProbeKind::Startup,
            json!({"grpc": {"port": 9090, "service": "x"}})
        )
        .handler,
        Handler::Grpc {
            port: 9090,
            service: "x".into()
        }
    );
    assert!(Probe::of(&json!({"livenessProbe": {}}), ProbeKind::Liveness).is_err());
    assert!(
        Probe::of(&json!({}), ProbeKind::Liveness)
            .unwrap()
            .is_none()
    );
}

#[test]
fn named_ports_resolve_against_the_container() {
    let c = json!({"ports": [{"name": "http", "containerPort": 8080}]});
    assert_eq!(PortRef::Name("http".into()).resolve(&c), Ok(8080));
    assert_eq!(PortRef::of(&json!("8081")), Ok(PortRef::Number(8081)));
    assert!(PortRef::Name("grpc".into()).resolve(&c).is_err());
    assert!(PortRef::of(&json!(0)).is_err());
}

async fn run(h: Value, c: &Value) -> Result<(), String> {
    let handler = Handler::of(&h).unwrap();
    check(&handler, c, "127.0.0.1", Duration::from_millis(500), None).await
}

#[tokio::test]
async fn tcp_checks_connect() {
    let l = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let port = l.local_addr().unwrap().port();
    run(json!({"tcpSocket": {"port": port}}), &json!({}))
        .await
        .unwrap();
    drop(l);
    let e = run(json!({"tcpSocket": {"port": port}}), &json!({}))
        .await
        .unwrap_err();
    assert!(
        e.starts_with(&format!("dial tcp 127.0.0.1:{port}: connect:")),
        "{e}"
    );
}

/// A server that answers each request by its path: `/ok` 200, `/bad` 500, `/moved` a
/// redirect to `/bad`, `/slow` never; `/header` 200 only with `X-Probe: yes`.
async fn http_server() -> u16 {
    use axum::routing::get;
    let app = axum::Router::new()
        .route("/ok", get(|| async { "ok" }))
        .route(
            "/bad",
            get(|| async { (http::StatusCode::INTERNAL_SERVER_ERROR, "bad") }),
        )
        .route(
            "/moved",
            get(|| async { (http::StatusCode::FOUND, [("location", "/bad")]) }),
        )
        .route(
            "/slow",
            get(|| async {
                tokio::time::sleep(Duration::from_secs(30)).await;
                "late"
            }),
        )
        .route(
            "/header",
            get(|h: http::HeaderMap| async move {
                let agent = h
                    .get("user-agent")
                    .and_then(|v| v.to_str().ok())
                    .unwrap_or_default()
                    .to_string();
                if h.get("x-probe").is_some_and(|v| v == "yes") && agent.starts_with("kube-probe/")
                {
                    http::StatusCode::OK
                } else {
                    http::StatusCode::BAD_REQUEST
                }
            }),
        );
    let l = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let port = l.local_addr().unwrap().port();
    tokio::spawn(async move { axum::serve(l, app).await });
    port
}

#[tokio::test]
async fn http_checks_pass_below_400_and_follow_same_host_redirects() {
    let port = http_server().await;
    let get = |path: &str| json!({"httpGet": {"port": "web", "path": path}});
    let c = json!({"ports": [{"name": "web", "containerPort": port}]});
    run(get("/ok"), &c).await.unwrap();
    assert_eq!(
        run(get("/bad"), &c).await,
        Err("HTTP probe failed with statuscode: 500".into())
    );
    assert_eq!(
        run(get("/moved"), &c).await,
        Err("HTTP probe failed with statuscode: 500".into()),
        "the redirect is followed"
    );
    let e = run(get("/slow"), &c).await.unwrap_err();
    assert!(e.contains("context deadline exceeded"), "{e}");
    assert!(run(get("/header"), &c).await.is_err());
    run(
        json!({"httpGet": {"port": port, "path": "/header",
            "httpHeaders": [{"name": "X-Probe", "value": "yes"}]}}),
        &c,
    )
    .await
    .unwrap();
}

/// A gRPC health server answering `status` for every service, or with a trailers-only
/// `grpc-status` of 5 (NOT_FOUND) for service "missing".
async fn grpc_server(status: u64) -> u16 {
    use http_body_util::{BodyExt as _, Full, StreamBody};
    use hyper::body::Frame;
    let l = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let port = l.local_addr().unwrap().port();
    tokio::spawn(async move {
        loop {
            let Ok((stream, _)) = l.accept().await else {
                return;
            };
            tokio::spawn(async move {
                let service = hyper::service::service_fn(
                    move |req: http::Request<hyper::body::Incoming>| async move {
                        assert_eq!(req.uri().path(), "/grpc.health.v1.Health/Check");
                        let body = req.into_body().collect().await.unwrap().to_bytes();
                        // The request names its service (field 1).
                        let missing = body.len() > 5 && body[7..] == *b"missing";
                        let reply = if missing {
                            http::Response::builder()
                                .header("content-type", "application/grpc")
                                .header("grpc-status", "5")
                                .header("grpc-message", "unknown service")
                                .body(Full::new(bytes::Bytes::new()).boxed())
                        } else {
                            let message = grpc::frame(&[0x08, status as u8]);
                            let mut trailers = http::HeaderMap::new();
                            trailers.insert("grpc-status", "0".parse().unwrap());
                            let frames = futures_util::stream::iter([
                                Ok::<_, std::convert::Infallible>(Frame::data(bytes::Bytes::from(
                                    message,
                                ))),
                                Ok(Frame::trailers(trailers)),
                            ]);
                            http::Response::builder()
                                .header("content-type", "application/grpc")
                                .body(StreamBody::new(frames).boxed())
                        };
                        Ok::<_, std::convert::Infallible>(reply.unwrap())
                    },
                );
                let _ =
                    hyper::server::conn::http2::Builder::new(hyper_util::rt::TokioExecutor::new())
                        .serve_connection(hyper_util::rt::TokioIo::new(stream), service)
                        .await;
            });
        }
    });
    port
}

#[tokio::test]
async fn grpc_checks_call_the_health_service() {
    let serving = grpc_server(1).await;
    run(json!({"grpc": {"port": serving}}), &json!({}))
        .await
        .unwrap();
    let e = run(
        json!({"grpc": {"port": serving, "service": "missing"}}),
        &json!({}),
    )
    .await
    .unwrap_err();
    assert_eq!(e, "health rpc failed with status code 5: unknown service");
    let not_serving = grpc_server(2).await;
    assert_eq!(
        run(json!({"grpc": {"port": not_serving}}), &json!({})).await,
        Err("service unhealthy (responded with \"NOT_SERVING\")".into())
    );
    let closed = tokio::net::TcpListener::bind("127.0.0.1:0")
        .await
        .unwrap()
        .local_addr()
        .unwrap()
        .port();
    let e = run(json!({"grpc": {"port": closed}}), &json!({}))
        .await
        .unwrap_err();
    assert!(e.starts_with("failed to connect service"), "{e}");
}

#[test]
fn grpc_messages_encode_and_decode() {
    assert_eq!(grpc::health_request(""), Vec::<u8>::new());
    assert_eq!(grpc::health_request("ab"), vec![0x0a, 2, b'a', b'b']);
    assert_eq!(grpc::frame(&[1, 2]), vec![0, 0, 0, 0, 2, 1, 2]);
    assert_eq!(grpc::health_status(&grpc::frame(&[0x08, 1])), Ok(1));
    // An empty message is UNKNOWN (proto3 leaves the default out); unknown fields skipped.
    assert_eq!(grpc::health_status(&grpc::frame(&[])), Ok(0));
    assert_eq!(
        grpc::health_status(&grpc::frame(&[0x12, 1, b'x', 0x08, 2])),
        Ok(2)
    );
    assert!(grpc::health_status(&[0, 0, 0, 0, 9, 8]).is_err());
    assert!(grpc::health_status(&grpc::frame(&[0x08])).is_err());
}
