//! The API server proxy with the real kubectl: `pods/NAME:PORT/proxy/…`,
//! `services/NAME:PORT/proxy/…` (by port name and number), `nodes/NAME/proxy/healthz`, through
//! `kubectl get --raw` and through `kubectl proxy`; a Service with no endpoints is a 503;
//! `kubectl port-forward svc/NAME`. Also what the server hands out at start: the Node's pod
//! CIDR and the `kube-dns` Service.

use std::io::{BufRead as _, Read as _, Write as _};
use std::process::{Child, Command, Stdio};
use std::time::Duration;

use serde_json::{Value, json};

use crate::harness::{Cluster, free_port};

fn create(c: &Cluster, obj: &Value) {
    let r = c.kubectl_stdin(&["create", "-f", "-"], Some(&obj.to_string()));
    assert!(r.ok, "{}", r.stderr);
}

/// One HTTP/1.0 GET on loopback: (status line, headers and body as text). Bounded by socket
/// timeouts and a size cap.
fn http_get(port: u16, path: &str) -> (String, String) {
    let mut s = std::net::TcpStream::connect(("127.0.0.1", port)).unwrap();
    s.set_read_timeout(Some(Duration::from_secs(20))).unwrap();
    s.set_write_timeout(Some(Duration::from_secs(20))).unwrap();
    write!(s, "GET {path} HTTP/1.0\r\nHost: 127.0.0.1\r\n\r\n").unwrap();
    let mut all = Vec::new();
    let _ = s.take(1 << 20).read_to_end(&mut all);
    let text = String::from_utf8_lossy(&all).into_owned();
    let (head, body) = text.split_once("\r\n\r\n").unwrap_or((&text, ""));
    let status = head.lines().next().unwrap_or("").to_string();
    (format!("{status}\n{head}"), body.to_string())
}

/// Starts a long-running kubectl (`proxy`, `port-forward`) and waits for its first line.
fn kubectl_bg(c: &Cluster, args: &[&str], expect: &str) -> Child {
    let mut child = Command::new("kubectl")
        .arg("--kubeconfig")
        .arg(&c.kubeconfig)
        .args(args)
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .stdin(Stdio::null())
        .spawn()
        .unwrap();
    let mut out = std::io::BufReader::new(child.stdout.take().unwrap());
    let mut line = String::new();
    out.read_line(&mut line).unwrap();
    assert!(line.contains(expect), "kubectl {args:?} said {line:?}");
    // Keep draining stdout so kubectl never blocks on it.
    std::thread::spawn(move || std::io::copy(&mut out, &mut std::io::sink()));
    child
}

#[test]
fn the_api_server_proxies_to_pods_services_and_nodes() {
    let mut c = Cluster::start();
    let token = c.token.clone();
    c.start_agent("node-a", &token);
    let port = free_port();
    let port_s = port.to_string();
    create(
        &c,
        &json!({"apiVersion": "v1", "kind": "Pod",
            "metadata": {"name": "web", "labels": {"app": "web"}},
            "spec": {"containers": [{"name": "web", "image": "kedge.dev/samples/hello-wasm:v1",
                "ports": [{"name": "http", "containerPort": port}],
                "env": [{"name": "HELLO_LISTEN", "value": port_s}]}]}}),
    );
    create(
        &c,
        &json!({"apiVersion": "v1", "kind": "Service", "metadata": {"name": "web"},
            "spec": {"selector": {"app": "web"},
                "ports": [{"name": "http", "port": 80, "targetPort": "http"}]}}),
    );
    create(
        &c,
        &json!({"apiVersion": "v1", "kind": "Service", "metadata": {"name": "empty"},
            "spec": {"selector": {"app": "nothing"}, "ports": [{"port": 80}]}}),
    );

    // What the server handed out: a /24 for the node, kube-dns at the cluster DNS IP.
    let cidr = c.wait("the node's pod CIDR", || {
        let r = c.kubectl(&[
            "get",
            "node",
            "node-a",
            "-o",
            "jsonpath={.spec.podCIDRs[0]}",
        ]);
        (r.ok && !r.stdout.is_empty()).then_some(r.stdout)
    });
    assert_eq!(cidr, "10.42.0.0/24");
    let dns: Value =
        serde_json::from_str(&c.k(&["get", "svc", "-n", "kube-system", "kube-dns", "-o", "json"]))
            .unwrap();
    assert_eq!(dns["spec"]["clusterIP"], "10.43.0.10");
    assert_eq!(dns["metadata"]["labels"]["k8s-app"], "kube-dns");
    assert_eq!(
        dns["metadata"]["annotations"]["kedge.io/node-local-dns"],
        "true"
    );
    let ports: Vec<(String, String)> = dns["spec"]["ports"]
        .as_array()
        .unwrap()
        .iter()
        .map(|p| {
            (
                p["name"].as_str().unwrap().to_string(),
                format!("{}/{}", p["port"], p["protocol"].as_str().unwrap()),
            )
        })
        .collect();
    assert_eq!(
        ports,
        [
            ("dns".to_string(), "53/UDP".to_string()),
            ("dns-tcp".to_string(), "53/TCP".to_string())
        ]
    );

    // Discovery lists the proxy subresources, as kube-apiserver does.
    let core: Value = serde_json::from_str(&c.k(&["get", "--raw", "/api/v1"])).unwrap();
    for sub in ["pods/proxy", "services/proxy", "nodes/proxy"] {
        assert!(
            core["resources"]
                .as_array()
                .unwrap()
                .iter()
                .any(|r| r["name"] == sub),
            "{sub} in discovery"
        );
    }

    c.wait("the pod serving", || {
        let r = c.kubectl(&["logs", "web"]);
        r.stdout.contains("listening on").then_some(())
    });
    let greeting = "hello from web in default\n";
    // A pod, by port number, then by its first declared port. (The harness's kubectl adds
    // `?timeout=20s`, which the proxy passes on: the sample then answers any path with its
    // greeting, so paths are checked through `kubectl proxy` below.)
    let pod_url = format!("/api/v1/namespaces/default/pods/web:{port}/proxy/");
    assert_eq!(c.k(&["get", "--raw", &pod_url]), greeting);
    assert_eq!(
        c.k(&["get", "--raw", "/api/v1/namespaces/default/pods/web/proxy/"]),
        greeting
    );
    // A service, by port name and by number, once its endpoint is ready.
    let by_name = "/api/v1/namespaces/default/services/web:http/proxy/";
    c.wait("the service proxy answering", || {
        let r = c.kubectl(&["get", "--raw", by_name]);
        (r.ok && r.stdout == greeting).then_some(())
    });
    assert_eq!(
        c.k(&[
            "get",
            "--raw",
            "/api/v1/namespaces/default/services/http:web:80/proxy/"
        ]),
        greeting
    );
    // The node: its agent's own endpoint, through the tunnel.
    assert_eq!(
        c.k(&["get", "--raw", "/api/v1/nodes/node-a/proxy/healthz"]),
        "ok"
    );
    // No endpoints: 503, worded as kube-apiserver's.
    let r = c.kubectl(&[
        "get",
        "--raw",
        "/api/v1/namespaces/default/services/empty/proxy/",
    ]);
    assert!(!r.ok);
    assert!(
        r.stderr.contains("ServiceUnavailable")
            && r.stderr
                .contains("no endpoints available for service \"empty\""),
        "{}",
        r.stderr
    );
    // A port the pod does not listen on: the agent could not connect.
    let closed = free_port();
    let r = c.kubectl(&[
        "get",
        "--raw",
        &format!("/api/v1/namespaces/default/pods/web:{closed}/proxy/"),
    ]);
    assert!(
        !r.ok && r.stderr.contains("error trying to reach service"),
        "{}",
        r.stderr
    );

    // `kubectl proxy`, then plain HTTP through it, query string and all; `…/proxy` without
    // the slash redirects to it.
    let local = free_port();
    let mut proxy = kubectl_bg(
        &c,
        &["proxy", &format!("--port={local}")],
        "Starting to serve",
    );
    let (head, body) = http_get(local, &format!("{by_name}?a=1&b=two"));
    assert!(head.contains(" 200 "), "{head}");
    assert_eq!(body, greeting);
    // The path reaches the pod as sent, and so does the query (the sample matches its paths
    // exactly: `/healthz?x=1` is not `/healthz` to it).
    let healthz = format!("/api/v1/namespaces/default/pods/web:{port}/proxy/healthz");
    assert_eq!(http_get(local, &healthz).1, "ok\n");
    assert_eq!(http_get(local, &format!("{healthz}?x=1")).1, greeting);
    assert_eq!(
        http_get(
            local,
            "/api/v1/namespaces/default/services/web:80/proxy/healthz"
        )
        .1,
        "ok\n"
    );
    let (head, _) = http_get(local, "/api/v1/namespaces/default/services/web:http/proxy");
    assert!(head.contains(" 301 "), "{head}");
    assert!(
        head.contains("/api/v1/namespaces/default/services/web:http/proxy/"),
        "{head}"
    );
    let (head, body) = http_get(local, "/api/v1/nodes/node-a/proxy/healthz");
    assert!(head.contains(" 200 "), "{head}");
    assert_eq!(body, "ok");
    let _ = proxy.kill();
    let _ = proxy.wait();

    // `kubectl port-forward svc/web`: kubectl picks the pod and the target port itself.
    let local = free_port();
    let mut pf = kubectl_bg(
        &c,
        &["port-forward", "svc/web", &format!("{local}:80")],
        "Forwarding from",
    );
    let (head, body) = http_get(local, "/");
    assert!(head.contains(" 200 "), "{head}");
    assert_eq!(body, greeting);
    let _ = pf.kill();
    let _ = pf.wait();
}
