//! Services carry traffic (issue 15), end to end with real processes and the real kubectl.
//!
//! Two nodes on one LAN, each in a network namespace of its own (its own bridge, nftables,
//! routes and DNS address, as two machines would have), the server on the host end:
//!
//! ```text
//!  host ns: server on 10.N.0.1 ── bridge ──┬── node-a ns: agent 10.N.0.2, pods 10.42.x.0/24
//!                                          └── node-b ns: agent 10.N.0.3, pods 10.42.y.0/24
//! ```
//!
//! Each pod gets its own address through the CNI plugins; the nodes learn each other's
//! podCIDRs and route to them directly; every agent runs the service proxy and a DNS server.
//! The seed's `my-service` (port 80 → targetPort 9376) is reached by ClusterIP and by name
//! from pods on either node, balances over its two backends and drops one made unready;
//! NodePort answers from outside the cluster; `sessionAffinity: ClientIP` pins a client; two
//! replicas listen on one port on one node; a StatefulSet's pods resolve by name under their
//! headless Service, with SRV records; an ExternalName answers with its CNAME; pods get the
//! Services' environment variables. A Service's UDP port carries datagrams to a UDP echo on
//! the other node. Then the same Service through the userspace proxy, and a node without the
//! CNI plugins, which falls back to the node's network and says so; last, two nodes behind
//! two NATs, whose pods reach each other's Services (TCP and UDP) through the server's relay.
//!
//! Needs root, `ip`, `nft`, `nsenter` and the CNI plugins; the OCI half (a busybox client)
//! also runc and the test registry. Skips with a message otherwise.

use std::path::Path;
use std::process::Command;
use std::time::Duration;

use serde_json::Value;

use crate::harness::{
    Busybox, Cluster, containers_unavailable, free_test_subnet, sh, stdout, tail, wait_for,
};

/// Why these tests cannot run here (`None`: they can). Only a non-root run skips them: as
/// root (CI's case) a missing tool is a failure, since `make setup` installs every one, so a
/// green run cannot hide that the tests never ran.
fn missing_prerequisite() -> Option<String> {
    if stdout(&["id", "-u"]).trim() != "0" {
        return Some("not root (network namespaces need CAP_NET_ADMIN)".into());
    }
    let missing = missing_tool();
    if let Some(why) = &missing {
        panic!("running as root but {why}: `make setup` installs it");
    }
    missing
}

fn missing_tool() -> Option<String> {
    for (tool, arg, pkg) in [
        ("ip", "-V", "iproute2"),
        ("nft", "--version", "nftables"),
        ("nsenter", "-V", "util-linux"),
        ("curl", "--version", "curl"),
    ] {
        if Command::new(tool).arg(arg).output().is_err() {
            return Some(format!("`{tool}` is missing (apt-get install {pkg})"));
        }
    }
    if !Path::new("/usr/lib/cni/bridge").exists() && !Path::new("/opt/cni/bin/bridge").exists() {
        return Some(
            "the CNI plugins are missing (apt-get install containernetworking-plugins)".into(),
        );
    }
    None
}

/// The LAN: a bridge in the host namespace and one namespace per node on it.
struct Lan {
    bridge: String,
    nodes: Vec<String>,
    n: u8,
}

impl Lan {
    fn create(nodes: usize) -> Lan {
        // Tests run in parallel in one process: one LAN at a time picks its addresses and
        // names (with a sequence number, as the pid is the same for all).
        static CREATING: std::sync::Mutex<u32> = std::sync::Mutex::new(0);
        let mut seq = CREATING.lock().unwrap_or_else(|p| p.into_inner());
        *seq += 1;
        let pid = std::process::id() + *seq * 7;
        let n = free_test_subnet(200, 50, pid);
        let tag = format!("kl{}", pid % 100_000);
        // (the guard is held until the bridge's address is in place, below)
        let lan = Lan {
            bridge: format!("{tag}br"),
            nodes: (0..nodes).map(|i| format!("{tag}-n{i}")).collect(),
            n,
        };
        sh(&format!("ip link add {} type bridge", lan.bridge));
        sh(&format!("ip addr add 10.{n}.0.1/24 dev {}", lan.bridge));
        drop(seq);
        sh(&format!("ip link set {} up", lan.bridge));
        for (i, ns) in lan.nodes.iter().enumerate() {
            let (host_if, node_if) = (format!("{tag}h{i}"), format!("{tag}n{i}"));
            sh(&format!("ip netns add {ns}"));
            sh(&format!(
                "ip link add {host_if} type veth peer name {node_if} netns {ns}"
            ));
            sh(&format!("ip link set {host_if} master {} up", lan.bridge));
            sh(&format!("ip -n {ns} link set lo up"));
            sh(&format!(
                "ip -n {ns} addr add {} dev {node_if}",
                lan.cidr_of(i)
            ));
            sh(&format!("ip -n {ns} link set {node_if} up"));
            sh(&format!("ip -n {ns} route add default via 10.{n}.0.1"));
        }
        lan
    }

    fn host_ip(&self) -> String {
        format!("10.{}.0.1", self.n)
    }

    fn node_ip(&self, i: usize) -> String {
        format!("10.{}.0.{}", self.n, i + 2)
    }

    fn cidr_of(&self, i: usize) -> String {
        format!("{}/24", self.node_ip(i))
    }

    /// Runs a command inside node `i`'s namespace; its stdout, and whether it succeeded.
    fn exec(&self, i: usize, args: &[&str]) -> (bool, String) {
        let out = Command::new("ip")
            .args(["netns", "exec", &self.nodes[i]])
            .args(args)
            .output()
            .unwrap();
        (
            out.status.success(),
            String::from_utf8_lossy(&out.stdout).into_owned(),
        )
    }
}

impl Drop for Lan {
    fn drop(&mut self) {
        // Pods' namespaces are named by their uid; the agents' records say which are ours.
        for ns in &self.nodes {
            let _ = Command::new("ip").args(["netns", "del", ns]).output();
        }
        let _ = Command::new("ip")
            .args(["link", "del", &self.bridge])
            .output();
    }
}

/// Deletes the pod namespaces the agents of `dir` made (their CNI records name them).
fn remove_pod_namespaces(dir: &Path) {
    let Ok(nodes) = std::fs::read_dir(dir) else {
        return;
    };
    for node in nodes.flatten() {
        let Ok(results) = std::fs::read_dir(node.path().join("cni/results")) else {
            continue;
        };
        for r in results.flatten() {
            if let Some(uid) = r.file_name().to_str().and_then(|n| n.strip_suffix(".json")) {
                let _ = Command::new("ip")
                    .args(["netns", "del", &format!("kedge-{uid}")])
                    .output();
            }
        }
    }
}

/// Removes the pod namespaces of the agents under its folder when dropped: before the
/// cluster's folder goes, so even a failed test leaves none behind.
struct PodNamespaces(std::path::PathBuf);

impl Drop for PodNamespaces {
    fn drop(&mut self) {
        remove_pod_namespaces(&self.0);
    }
}

/// Polls `f` until it is true or `timeout` passes; whether it became true.
fn wait_for_ok(timeout: Duration, mut f: impl FnMut() -> bool) -> bool {
    let start = std::time::Instant::now();
    while start.elapsed() < timeout {
        if f() {
            return true;
        }
        std::thread::sleep(Duration::from_millis(500));
    }
    false
}

fn json(c: &Cluster, args: &[&str]) -> Value {
    serde_json::from_str(&c.k(args)).unwrap()
}

fn apply(c: &Cluster, yaml: &str) {
    let r = c.kubectl_stdin(&["apply", "-f", "-"], Some(yaml));
    assert!(r.ok, "apply failed: {}\n{yaml}", r.stderr);
}

/// `kubectl exec POD -- hello --get TARGET` in a Wasm pod (its container is `hello`, the
/// program's name there): the body, or `None` on failure.
fn wasm_get(c: &Cluster, pod: &str, target: &str) -> Option<String> {
    let r = c.kubectl(&["exec", pod, "--", "hello", "--get", target]);
    r.ok.then_some(r.stdout)
}

/// `kubectl exec POD -- hello --udp TARGET ping` in a Wasm pod: the answer, or what went wrong.
fn wasm_udp(c: &Cluster, pod: &str, target: &str) -> Result<String, String> {
    let r = c.kubectl(&["exec", pod, "--", "hello", "--udp", target, "ping"]);
    if r.ok {
        Ok(r.stdout.trim_end().to_owned())
    } else {
        Err(format!("{}{}", r.stdout, r.stderr))
    }
}

/// Waits (a minute at most) for `pod`'s datagram to `target` to be answered by `backend`'s
/// UDP echo; on time-out, fails with the last answer or error and the agents' logs.
fn udp_answered(c: &Cluster, pod: &str, target: &str, backend: &str) {
    let expected = format!("hello from {backend} in default got ping");
    let mut last = String::new();
    let answered = wait_for_ok(Duration::from_secs(60), || match wasm_udp(c, pod, target) {
        Ok(answer) => {
            last = answer;
            last == expected
        }
        Err(error) => {
            last = error;
            false
        }
    });
    if !answered {
        let logs: String = c
            .agents
            .iter()
            .map(|a| format!("--- {} ---\n{}\n", a.name, tail(&a.log_text(), 30)))
            .collect();
        panic!("{pod} asking {target} over UDP: {last:?}, not {expected:?}\n{logs}");
    }
}

/// The backend names (`hello from <pod> in <ns>`) that answered `n` requests.
fn backends(answers: impl IntoIterator<Item = String>) -> std::collections::BTreeSet<String> {
    answers
        .into_iter()
        .filter_map(|a| {
            a.strip_prefix("hello from ")
                .and_then(|r| r.split_whitespace().next())
                .map(str::to_owned)
        })
        .collect()
}

const WEB: &str = r#"
apiVersion: apps/v1
kind: Deployment
metadata: {name: web}
spec:
  replicas: 2
  selector: {matchLabels: {app: web}}
  template:
    metadata: {labels: {app: web}}
    spec:
      affinity:
        podAntiAffinity:
          requiredDuringSchedulingIgnoredDuringExecution:
          - {labelSelector: {matchLabels: {app: web}}, topologyKey: kubernetes.io/hostname}
      containers:
      - name: hello
        image: kedge.dev/samples/hello-wasm:v1
        env: [{name: HELLO_LISTEN, value: "9376"}]
        ports: [{name: http, containerPort: 9376}]
        readinessProbe: {httpGet: {path: /healthz, port: 9376}, periodSeconds: 1, failureThreshold: 1}
---
apiVersion: v1
kind: Service
metadata: {name: my-service}
spec:
  selector: {app: web}
  ports: [{name: http, protocol: TCP, port: 80, targetPort: 9376}]
---
apiVersion: v1
kind: Service
metadata: {name: sticky}
spec:
  selector: {app: web}
  sessionAffinity: ClientIP
  ports: [{port: 80, targetPort: http}]
---
apiVersion: v1
kind: Service
metadata: {name: web-np}
spec:
  type: NodePort
  selector: {app: web}
  ports: [{port: 80, targetPort: 9376}]
---
apiVersion: v1
kind: Service
metadata: {name: web-lb}
spec:
  type: LoadBalancer
  selector: {app: web}
  ports: [{port: 8081, targetPort: 9376}]
---
apiVersion: v1
kind: Service
metadata: {name: search}
spec:
  type: ExternalName
  externalName: search.example.org
---
apiVersion: v1
kind: Service
metadata: {name: nginx}
spec:
  clusterIP: None
  selector: {app: sts}
  ports: [{name: web, port: 80, targetPort: 9376}]
---
apiVersion: apps/v1
kind: StatefulSet
metadata: {name: web-sts}
spec:
  serviceName: nginx
  replicas: 2
  selector: {matchLabels: {app: sts}}
  template:
    metadata: {labels: {app: sts}}
    spec:
      containers:
      - name: hello
        image: kedge.dev/samples/hello-wasm:v1
        env: [{name: HELLO_LISTEN, value: "9376"}]
        ports: [{name: web, containerPort: 9376}]
---
apiVersion: apps/v1
kind: Deployment
metadata: {name: pair}
spec:
  replicas: 2
  selector: {matchLabels: {app: pair}}
  template:
    metadata: {labels: {app: pair}}
    spec:
      nodeSelector: {kubernetes.io/hostname: node-a}
      containers:
      - name: hello
        image: kedge.dev/samples/hello-wasm:v1
        env: [{name: HELLO_LISTEN, value: "8080"}]
        ports: [{containerPort: 8080}]
"#;

/// A Deployment `name` of one pod on `node` serving its greeting over HTTP and as a UDP echo,
/// both on port 9376, and its Service: port 80 over TCP and over UDP, as DNS has 53 twice.
fn echo_app(name: &str, node: &str) -> String {
    format!(
        r#"
apiVersion: apps/v1
kind: Deployment
metadata: {{name: {name}}}
spec:
  replicas: 1
  selector: {{matchLabels: {{app: {name}}}}}
  template:
    metadata: {{labels: {{app: {name}}}}}
    spec:
      nodeSelector: {{kubernetes.io/hostname: {node}}}
      containers:
      - name: hello
        image: kedge.dev/samples/hello-wasm:v1
        env: [{{name: HELLO_LISTEN, value: "9376"}}, {{name: HELLO_UDP, value: "9376"}}]
        ports:
        - {{name: http, containerPort: 9376}}
        - {{name: echo, containerPort: 9376, protocol: UDP}}
        readinessProbe: {{httpGet: {{path: /healthz, port: 9376}}, periodSeconds: 1}}
---
apiVersion: v1
kind: Service
metadata: {{name: {name}}}
spec:
  selector: {{app: {name}}}
  ports:
  - {{name: http, port: 80, targetPort: http}}
  - {{name: echo, protocol: UDP, port: 80, targetPort: echo}}
"#
    )
}

fn client_pod(name: &str, node: &str, image: &str, command: Option<&str>) -> String {
    let command = command
        .map(|c| format!("    command: [{c}]\n"))
        .unwrap_or_default();
    format!(
        r#"
apiVersion: v1
kind: Pod
metadata: {{name: {name}}}
spec:
  nodeName: {node}
  containers:
  - name: hello
    image: {image}
    imagePullPolicy: IfNotPresent
{command}"#
    )
}

fn running_ready(c: &Cluster, selector: &str, n: usize) -> Vec<crate::harness::PodInfo> {
    c.wait(&format!("{n} ready pods of {selector}"), || {
        let p = c.pods(selector);
        (p.len() == n && p.iter().all(|p| p.phase == "Running" && p.ready)).then_some(p)
    })
}

fn pod_ip(c: &Cluster, name: &str) -> String {
    json(c, &["get", "pod", name, "-o", "json"])["status"]["podIP"]
        .as_str()
        .unwrap_or_default()
        .to_owned()
}

#[test]
fn services_carry_traffic_between_pods_on_two_nodes() {
    if let Some(why) = missing_prerequisite() {
        eprintln!("skipping the service-networking test: {why}");
        return;
    }
    let lan = Lan::create(2);
    let mut c = Cluster::start_on(&lan.host_ip());
    let token = c.token.clone();
    let busybox = containers_unavailable()
        .map(|why| eprintln!("no OCI client in this run: {why}"))
        .is_none()
        .then(|| Busybox::start(c.dir.path()));
    for (i, name) in ["node-a", "node-b"].into_iter().enumerate() {
        if let Some(b) = &busybox {
            b.preload(&c.dir.path().join(name));
        }
        let ns = lan.nodes[i].clone();
        c.start_agent_in(Some(&ns), name, &token, &["--pod-network", "auto"]);
    }
    let dir = c.dir.path().to_owned();
    let _pod_namespaces = PodNamespaces(dir);

    // 1. Pod network: each node has its own podCIDR, says it has a pod network, and is Ready.
    let cidrs: Vec<String> = ["node-a", "node-b"]
        .iter()
        .map(|n| {
            c.wait(&format!("{n} Ready with a pod network"), || {
                let r = c.kubectl(&["get", "node", n, "-o", "json"]);
                let v: Value = serde_json::from_str(&r.stdout).ok()?;
                let ready = v["status"]["conditions"]
                    .as_array()?
                    .iter()
                    .any(|c| c["type"] == "Ready" && c["status"] == "True");
                let cni = v["metadata"]["labels"]["kedge.io/pod-network"] == "cni";
                (ready && cni).then(|| v["spec"]["podCIDR"].as_str().map(str::to_owned))?
            })
        })
        .collect();
    assert_ne!(cidrs[0], cidrs[1]);

    apply(&c, WEB);
    let web = running_ready(&c, "app=web", 2);
    let on: std::collections::BTreeSet<&str> = web.iter().map(|p| p.node.as_str()).collect();
    assert_eq!(on.len(), 2, "one backend per node: {web:?}");
    for p in &web {
        let ip = pod_ip(&c, &p.name);
        assert!(
            ip.starts_with("10.42."),
            "{} has a pod address: {ip}",
            p.name
        );
    }
    // Two replicas on one node, both on port 8080: each has its own address.
    let pair = running_ready(&c, "app=pair", 2);
    assert!(pair.iter().all(|p| p.node == "node-a"));
    assert_ne!(pod_ip(&c, &pair[0].name), pod_ip(&c, &pair[1].name));

    // Wasm clients on both nodes.
    for (name, node) in [("client-a", "node-a"), ("client-b", "node-b")] {
        apply(
            &c,
            &client_pod(name, node, "kedge.dev/samples/hello-wasm:v1", None),
        );
    }
    c.wait("the Wasm clients running", || {
        let p = c.pods("!app");
        (p.iter().filter(|p| p.phase == "Running").count() >= 2).then_some(())
    });
    let svc = json(&c, &["get", "svc", "my-service", "-o", "json"]);
    let cluster_ip = svc["spec"]["clusterIP"].as_str().unwrap().to_owned();

    // 2 + 3. By ClusterIP from a pod on each node: both backends answer (one of them on the
    // other node, through the route to its podCIDR).
    for client in ["client-a", "client-b"] {
        let answers = c.wait(&format!("{client} reaching my-service"), || {
            let a: Vec<String> = (0..12)
                .filter_map(|_| wasm_get(&c, client, &format!("{cluster_ip}:80/")))
                .collect();
            (backends(a.clone()).len() == 2).then_some(a)
        });
        assert!(
            answers.iter().all(|a| a.starts_with("hello from web-")),
            "{answers:?}"
        );
    }
    // By name: a Wasm pod's lookups go through its resolv.conf (search path, cluster DNS).
    for client in ["client-a", "client-b"] {
        let body = c.wait(&format!("{client} reaching my-service by name"), || {
            wasm_get(&c, client, "my-service:80/")
        });
        assert!(body.starts_with("hello from web-"), "{body}");
        let body = c.wait(
            &format!("{client} reaching my-service by its full name"),
            || wasm_get(&c, client, "my-service.default.svc.cluster.local:80/"),
        );
        assert!(body.starts_with("hello from web-"), "{body}");
    }
    // Pod to pod across nodes, by address.
    let far = web.iter().find(|p| p.node == "node-b").unwrap();
    let far_url = format!("{}:9376/", pod_ip(&c, &far.name));
    let body = c.wait("client-a reaching the pod on node-b directly", || {
        wasm_get(&c, "client-a", &far_url)
    });
    assert!(body.contains(&far.name), "{body}");

    // One backend made unready drops out; ready again, it is back.
    let (gone, kept) = (&web[0].name, &web[1].name);
    assert!(
        wasm_get(
            &c,
            "client-a",
            &format!("{}:9376/ready/off", pod_ip(&c, gone))
        )
        .is_some()
    );
    c.wait("the unready backend out of rotation", || {
        let a: Vec<String> = (0..8)
            .filter_map(|_| wasm_get(&c, "client-b", &format!("{cluster_ip}:80/")))
            .collect();
        (a.len() == 8 && backends(a) == [kept.clone()].into()).then_some(())
    });
    assert!(
        wasm_get(
            &c,
            "client-a",
            &format!("{}:9376/ready/on", pod_ip(&c, gone))
        )
        .is_some()
    );
    running_ready(&c, "app=web", 2);

    // sessionAffinity: ClientIP pins one client to one backend.
    let sticky = json(&c, &["get", "svc", "sticky", "-o", "json"])["spec"]["clusterIP"]
        .as_str()
        .unwrap()
        .to_owned();
    c.wait("sticky answering", || {
        wasm_get(&c, "client-a", &format!("{sticky}:80/"))
    });
    let pinned =
        backends((0..10).filter_map(|_| wasm_get(&c, "client-a", &format!("{sticky}:80/"))));
    assert_eq!(pinned.len(), 1, "affinity pins the client: {pinned:?}");

    // NodePort, from outside the cluster (the host), on both nodes' addresses.
    let np = json(&c, &["get", "svc", "web-np", "-o", "json"])["spec"]["ports"][0]["nodePort"]
        .as_u64()
        .unwrap();
    for i in 0..2 {
        let url = format!("http://{}:{np}/", lan.node_ip(i));
        let got = wait_for(
            &format!("NodePort on {url}"),
            Duration::from_secs(30),
            || {
                let out = stdout(&["curl", "-s", "-m", "3", &url]);
                out.starts_with("hello from web-").then_some(out)
            },
        );
        assert!(got.starts_with("hello from web-"));
    }

    // LoadBalancer, as K3s' ServiceLB: the nodes' addresses are its ingress and serve it.
    let ingress = c.wait("web-lb's ingress listing both nodes", || {
        let v = json(&c, &["get", "svc", "web-lb", "-o", "json"]);
        let mut ips: Vec<String> = v["status"]["loadBalancer"]["ingress"]
            .as_array()?
            .iter()
            .filter_map(|i| i["ip"].as_str().map(str::to_owned))
            .collect();
        ips.sort();
        (ips.len() == 2).then_some(ips)
    });
    assert_eq!(ingress, [lan.node_ip(0), lan.node_ip(1)]);
    for ip in &ingress {
        let url = format!("http://{ip}:8081/");
        let got = wait_for(
            &format!("LoadBalancer on {url}"),
            Duration::from_secs(30),
            || {
                let out = stdout(&["curl", "-s", "-m", "3", &url]);
                out.starts_with("hello from web-").then_some(out)
            },
        );
        assert!(got.starts_with("hello from web-"));
    }

    // 4. DNS from the node-local server of each node (what pods' resolv.conf points at).
    for i in 0..2 {
        let (ok, out) = lan.exec(
            i,
            &[
                "busybox",
                "nslookup",
                "my-service.default.svc.cluster.local",
                "10.43.0.10",
            ],
        );
        if !ok && out.is_empty() && Command::new("busybox").arg("true").output().is_err() {
            eprintln!("busybox missing: DNS checked from pods only");
            break;
        }
        assert!(out.contains(&cluster_ip), "node {i}: {out}");
    }

    // The OCI client: resolv.conf, names, SRV, StatefulSet pods, ExternalName, env vars.
    if let Some(b) = &busybox {
        apply(
            &c,
            &client_pod("bb", "node-b", &b.image, Some(r#""sleep", "3600""#)),
        );
        c.wait("the busybox client running", || {
            let v = json(&c, &["get", "pod", "bb", "-o", "json"]);
            (v["status"]["phase"] == "Running").then_some(())
        });
        let resolv = c.k(&["exec", "bb", "--", "cat", "/etc/resolv.conf"]);
        assert!(resolv.contains("nameserver 10.43.0.10"), "{resolv}");
        assert!(
            resolv.contains("search default.svc.cluster.local svc.cluster.local cluster.local"),
            "{resolv}"
        );
        assert!(resolv.contains("ndots:5"), "{resolv}");
        let env = c.k(&["exec", "bb", "--", "env"]);
        assert!(
            env.contains(&format!("MY_SERVICE_SERVICE_HOST={cluster_ip}")),
            "{env}"
        );
        assert!(env.contains("MY_SERVICE_SERVICE_PORT=80"), "{env}");
        assert!(
            env.contains(&format!("MY_SERVICE_PORT_80_TCP=tcp://{cluster_ip}:80")),
            "{env}"
        );
        // By its short name, through the search path (busybox's own resolver: the image's
        // static glibc cannot load NSS modules, so its wget resolves nothing), then through the
        // proxy by the address it resolved to.
        let lookup = |name: &str| {
            let r = c.kubectl(&["exec", "bb", "--", "busybox", "nslookup", name]);
            format!("{}{}", r.stdout, r.stderr)
        };
        let fqdn = "my-service.default.svc.cluster.local";
        let mut last = String::new();
        let resolved = wait_for_ok(Duration::from_secs(30), || {
            last = lookup(fqdn);
            last.contains(&cluster_ip)
        });
        assert!(resolved, "bb resolving {fqdn}: {last}");
        // The short name, through the search path.
        let short = lookup("my-service");
        assert!(
            short.contains(&cluster_ip),
            "bb resolving my-service: {short}"
        );
        // In-cluster clients are pointed at the `kubernetes` Service, which every node serves
        // through its own forwarder to the API server.
        assert!(env.contains("KUBERNETES_SERVICE_HOST=10.43.0.1"), "{env}");
        assert!(env.contains("KUBERNETES_SERVICE_PORT=443"), "{env}");
        let r = c.k(&[
            "exec",
            "bb",
            "--",
            "sh",
            "-c",
            "echo | busybox nc -w 3 10.43.0.1 443 >/dev/null; echo rc=$?",
        ]);
        assert!(
            r.contains("rc=0"),
            "a TCP connection to the kubernetes Service: {r}"
        );
        // busybox nc, not wget: the image's static wget crashes in glibc's resolver even for
        // an address.
        let get = format!("printf 'GET / HTTP/1.0\\r\\n\\r\\n' | busybox nc -w 3 {cluster_ip} 80");
        let mut last = String::new();
        let reached = wait_for_ok(Duration::from_secs(30), || {
            let r = c.kubectl(&["exec", "bb", "--", "sh", "-c", &get]);
            last = format!("{}{}", r.stdout, r.stderr);
            r.ok && r.stdout.contains("hello from web-")
        });
        assert!(reached, "bb reaching {cluster_ip}:80: {last}");
        running_ready(&c, "app=sts", 2);
        let sts0 = pod_ip(&c, "web-sts-0");
        let r = c.k(&[
            "exec",
            "bb",
            "--",
            "busybox",
            "nslookup",
            "web-sts-0.nginx.default.svc.cluster.local",
        ]);
        assert!(r.contains(&sts0), "{r}");
        let r = c.k(&[
            "exec",
            "bb",
            "--",
            "busybox",
            "nslookup",
            "-type=SRV",
            "_web._tcp.nginx.default.svc.cluster.local",
        ]);
        assert!(
            r.contains("web-sts-0.nginx.default.svc.cluster.local"),
            "{r}"
        );
        let r = c.kubectl(&[
            "exec",
            "bb",
            "--",
            "busybox",
            "nslookup",
            "-type=CNAME",
            "search.default.svc.cluster.local",
        ]);
        assert!(
            r.stdout.contains("search.example.org"),
            "{}{}",
            r.stdout,
            r.stderr
        );
        // The busybox httpd in an OCI pod, called by a Wasm pod through its Service.
        apply(
            &c,
            &format!(
                r#"
apiVersion: v1
kind: Pod
metadata: {{name: httpd, labels: {{app: httpd}}}}
spec:
  nodeName: node-a
  containers:
  - name: c
    image: {}
    imagePullPolicy: IfNotPresent
    command: ["sh", "-c", "busybox mkdir -p /www && echo hello from busybox > /www/index.html && exec busybox httpd -f -p 8000 -h /www"]
    ports: [{{containerPort: 8000}}]
---
apiVersion: v1
kind: Service
metadata: {{name: httpd}}
spec:
  selector: {{app: httpd}}
  ports: [{{port: 80, targetPort: 8000}}]
"#,
                b.image
            ),
        );
        let got = c.wait("a Wasm pod reaching the OCI httpd by name", || {
            wasm_get(&c, "client-b", "httpd:80/index.html")
                .filter(|b| b.contains("hello from busybox"))
        });
        assert!(got.contains("busybox"));
    }

    // 7. Offline: with the server gone, node-a still resolves names from its own DNS server
    // and still reaches the Service (its rules stay in the kernel); after the agent itself
    // restarts, still offline, its recorded view serves names again and its pods come back
    // in their namespaces with the addresses they had.
    let a_pod = web.iter().find(|p| p.node == "node-a").unwrap();
    let a_pod_ip = pod_ip(&c, &a_pod.name);
    c.server.kill();
    let resolves = |lan: &Lan| {
        let (_, out) = lan.exec(
            0,
            &[
                "busybox",
                "nslookup",
                "my-service.default.svc.cluster.local",
                "10.43.0.10",
            ],
        );
        out.contains(&cluster_ip)
    };
    let answers = |lan: &Lan, url: &str| {
        let (ok, out) = lan.exec(0, &["curl", "-s", "-m", "3", url]);
        ok && out.starts_with("hello from web-")
    };
    let service_url = format!("http://{cluster_ip}/");
    assert!(resolves(&lan), "node-a resolves with the server gone");
    assert!(
        answers(&lan, &service_url),
        "node-a reaches my-service with the server gone"
    );
    c.agent("node-a").kill();
    let ns = lan.nodes[0].clone();
    c.start_agent_in(Some(&ns), "node-a", &token, &["--pod-network", "auto"]);
    assert!(
        wait_for_ok(Duration::from_secs(60), || resolves(&lan)),
        "node-a's restarted agent answers names offline\n{}",
        tail(&c.agent("node-a").log_text(), 30)
    );
    let direct = format!("http://{a_pod_ip}:9376/");
    assert!(
        wait_for_ok(Duration::from_secs(60), || answers(&lan, &direct)),
        "node-a's pod is back at {a_pod_ip} offline\n{}",
        tail(&c.agent("node-a").log_text(), 30)
    );
    assert!(
        wait_for_ok(Duration::from_secs(30), || answers(&lan, &service_url)),
        "node-a reaches my-service after its offline restart"
    );
    let log = c.agent("node-a").log_text();
    assert!(!log.contains("panicked"), "{}", tail(&log, 30));
}

/// UDP through a Service (nftables DNAT): a pod on node-a gets its datagram answered by the
/// UDP echo on node-b, by the Service's ClusterIP, by its name and by the pod's own address.
/// The Service has port 80 twice, TCP and UDP, and TCP still reaches HTTP; the backend serves
/// both (its readiness probe is HTTP) from its one loop.
#[test]
fn udp_services_carry_datagrams_between_pods_on_two_nodes() {
    if let Some(why) = missing_prerequisite() {
        eprintln!("skipping the UDP service test: {why}");
        return;
    }
    let lan = Lan::create(2);
    let mut c = Cluster::start_on(&lan.host_ip());
    let token = c.token.clone();
    for (i, name) in ["node-a", "node-b"].into_iter().enumerate() {
        let ns = lan.nodes[i].clone();
        c.start_agent_in(Some(&ns), name, &token, &["--pod-network", "auto"]);
    }
    let _pod_namespaces = PodNamespaces(c.dir.path().to_owned());
    apply(&c, &echo_app("echo", "node-b"));
    apply(
        &c,
        &client_pod(
            "client-a",
            "node-a",
            "kedge.dev/samples/hello-wasm:v1",
            None,
        ),
    );
    let echo = running_ready(&c, "app=echo", 1);
    assert_eq!(echo[0].node, "node-b");
    let backend = &echo[0].name;
    c.wait("client-a running", || {
        let v = json(&c, &["get", "pod", "client-a", "-o", "json"]);
        (v["status"]["phase"] == "Running").then_some(())
    });
    let ip = json(&c, &["get", "svc", "echo", "-o", "json"])["spec"]["clusterIP"]
        .as_str()
        .unwrap()
        .to_owned();
    udp_answered(&c, "client-a", &format!("{ip}:80"), backend);
    udp_answered(&c, "client-a", "echo:80", backend);
    udp_answered(&c, "client-a", "echo.default.svc.cluster.local:80", backend);
    let body = c.wait("client-a reaching echo's TCP port 80", || {
        wasm_get(&c, "client-a", &format!("{ip}:80/"))
    });
    assert_eq!(body, format!("hello from {backend} in default\n"));
    let direct = format!("{}:9376", pod_ip(&c, backend));
    udp_answered(&c, "client-a", &direct, backend);
}

/// The userspace proxy (a node that asks for it) and a node without the CNI plugins, which
/// keeps its pods on its own network and says so; a Service with a backend on each is
/// reached from a pod on the first by its ClusterIP, retrying past a dead backend.
#[test]
fn userspace_proxy_and_a_node_without_a_pod_network() {
    if let Some(why) = missing_prerequisite() {
        eprintln!("skipping the userspace-proxy test: {why}");
        return;
    }
    let lan = Lan::create(2);
    let mut c = Cluster::start_on(&lan.host_ip());
    let token = c.token.clone();
    let (a, b) = (lan.nodes[0].clone(), lan.nodes[1].clone());
    c.start_agent_in(
        Some(&a),
        "node-a",
        &token,
        &["--pod-network", "auto", "--proxy-mode", "userspace"],
    );
    c.start_agent_in(
        Some(&b),
        "node-b",
        &token,
        &["--pod-network", "auto", "--cni-bin-dir", "/nonexistent/cni"],
    );
    let _pod_namespaces = PodNamespaces(c.dir.path().to_owned());
    let label = |n: &str| {
        let r = c.kubectl(&["get", "node", n, "-o", "json"]);
        let v: Value = serde_json::from_str(&r.stdout).ok()?;
        v["metadata"]["labels"]["kedge.io/pod-network"]
            .as_str()
            .map(str::to_owned)
    };
    c.wait("node-a with a pod network", || {
        (label("node-a")? == "cni").then_some(())
    });
    c.wait("node-b without one", || {
        (label("node-b")? == "host").then_some(())
    });
    let events = c.wait("node-b's PodNetworkUnavailable Event", || {
        let e = c.k(&[
            "get",
            "events",
            "-A",
            "--field-selector",
            "reason=PodNetworkUnavailable",
        ]);
        e.contains("node-b").then_some(e)
    });
    assert!(events.contains("CNI plugin"), "{events}");
    apply(&c, WEB);
    let web = running_ready(&c, "app=web", 2);
    let on_b = web.iter().find(|p| p.node == "node-b").unwrap();
    // On node-b the pod has the node's address.
    assert_eq!(pod_ip(&c, &on_b.name), lan.node_ip(1));
    apply(
        &c,
        &client_pod(
            "client-a",
            "node-a",
            "kedge.dev/samples/hello-wasm:v1",
            None,
        ),
    );
    c.wait("client-a running", || {
        let v = json(&c, &["get", "pod", "client-a", "-o", "json"]);
        (v["status"]["phase"] == "Running").then_some(())
    });
    let ip = json(&c, &["get", "svc", "my-service", "-o", "json"])["spec"]["clusterIP"]
        .as_str()
        .unwrap()
        .to_owned();
    let answers = c.wait(
        "client-a reaching both backends through the userspace proxy",
        || {
            let a: Vec<String> = (0..12)
                .filter_map(|_| wasm_get(&c, "client-a", &format!("{ip}:80/")))
                .collect();
            (backends(a.clone()).len() == 2).then_some(a)
        },
    );
    assert!(answers.iter().all(|a| a.starts_with("hello from web-")));
    // The userspace proxy's listener is the agent's: node-a's log says which mode runs.
    assert!(
        c.agent("node-a")
            .log_text()
            .contains("service proxy: userspace")
    );
}

/// Two sites, each behind its own NAT router: neither can reach the other's addresses (the
/// routers only masquerade outwards and have no route to each other), both reach the server.
struct NatSites {
    bridge: String,
    routers: Vec<String>,
    sites: Vec<String>,
    n: u8,
}

impl NatSites {
    fn create() -> NatSites {
        static CREATING: std::sync::Mutex<u32> = std::sync::Mutex::new(0);
        let mut seq = CREATING.lock().unwrap_or_else(|p| p.into_inner());
        *seq += 1;
        let pid = std::process::id() + *seq * 13 + 5;
        let n = free_test_subnet(150, 50, pid);
        let tag = format!("kx{}", pid % 100_000);
        let net = NatSites {
            bridge: format!("{tag}br"),
            routers: (0..2).map(|i| format!("{tag}-r{i}")).collect(),
            sites: (0..2).map(|i| format!("{tag}-s{i}")).collect(),
            n,
        };
        sh(&format!("ip link add {} type bridge", net.bridge));
        sh(&format!("ip addr add 10.{n}.0.1/24 dev {}", net.bridge));
        drop(seq);
        sh(&format!("ip link set {} up", net.bridge));
        for i in 0..2 {
            let (r, site) = (&net.routers[i], &net.sites[i]);
            let (up_host, up_r) = (format!("{tag}u{i}"), format!("{tag}o{i}"));
            let (in_r, in_s) = (format!("{tag}i{i}"), format!("{tag}s{i}"));
            sh(&format!("ip netns add {r}"));
            sh(&format!("ip netns add {site}"));
            sh(&format!(
                "ip link add {up_host} type veth peer name {up_r} netns {r}"
            ));
            sh(&format!("ip link set {up_host} master {} up", net.bridge));
            sh(&format!("ip -n {r} link set lo up"));
            sh(&format!(
                "ip -n {r} addr add 10.{n}.0.{}/24 dev {up_r}",
                10 + i
            ));
            sh(&format!("ip -n {r} link set {up_r} up"));
            sh(&format!(
                "ip link add {in_r} netns {r} type veth peer name {in_s} netns {site}"
            ));
            sh(&format!(
                "ip -n {r} addr add 10.{n}.{}.1/24 dev {in_r}",
                i + 1
            ));
            sh(&format!("ip -n {r} link set {in_r} up"));
            sh(&format!("ip -n {site} link set lo up"));
            sh(&format!(
                "ip -n {site} addr add 10.{n}.{}.2/24 dev {in_s}",
                i + 1
            ));
            sh(&format!("ip -n {site} link set {in_s} up"));
            sh(&format!(
                "ip -n {site} route add default via 10.{n}.{}.1",
                i + 1
            ));
            sh(&format!(
                "ip netns exec {r} sysctl -qw net.ipv4.ip_forward=1"
            ));
            sh(&format!(
                "ip netns exec {r} iptables -w 5 -t nat -A POSTROUTING -o {up_r} -j MASQUERADE"
            ));
            sh(&format!(
                "ip netns exec {r} iptables -w 5 -A FORWARD -i {up_r} -m conntrack --ctstate NEW -j DROP"
            ));
        }
        net
    }

    fn host_ip(&self) -> String {
        format!("10.{}.0.1", self.n)
    }
}

impl Drop for NatSites {
    fn drop(&mut self) {
        for ns in self.sites.iter().chain(&self.routers) {
            let _ = Command::new("ip").args(["netns", "del", ns]).output();
        }
        let _ = Command::new("ip")
            .args(["link", "del", &self.bridge])
            .output();
    }
}

/// The echo Service `far` with its one pod on node b, and the Wasm client `client-a` on
/// node a, both running: the far pods and the Service's ClusterIP.
fn far_service_and_client(c: &Cluster) -> (Vec<crate::harness::PodInfo>, String) {
    apply(c, &echo_app("far", "node-b"));
    apply(
        c,
        &client_pod(
            "client-a",
            "node-a",
            "kedge.dev/samples/hello-wasm:v1",
            None,
        ),
    );
    let far = running_ready(c, "app=far", 1);
    assert_eq!(far[0].node, "node-b");
    c.wait("client-a running", || {
        let v = json(c, &["get", "pod", "client-a", "-o", "json"]);
        (v["status"]["phase"] == "Running").then_some(())
    });
    let ip = json(c, &["get", "svc", "far", "-o", "json"])["spec"]["clusterIP"]
        .as_str()
        .unwrap()
        .to_owned();
    (far, ip)
}

/// Nodes behind different NATs: a pod on one reaches a Service whose only endpoint is on the
/// other, by ClusterIP and by name, and that pod's own address, over TCP and over UDP, through
/// the server's relay over both nodes' tunnels.
#[test]
fn a_service_is_reached_across_two_nats_through_the_relay() {
    if let Some(why) = missing_prerequisite() {
        eprintln!("skipping the cross-NAT test: {why}");
        return;
    }
    assert!(
        Command::new("iptables").arg("-V").output().is_ok(),
        "running as root but iptables is missing: `make setup` installs it"
    );
    let sites = NatSites::create();
    let mut c = Cluster::start_on(&sites.host_ip());
    let token = c.token.clone();
    for (i, name) in ["node-a", "node-b"].into_iter().enumerate() {
        let ns = sites.sites[i].clone();
        c.start_agent_in(Some(&ns), name, &token, &["--pod-network", "auto"]);
    }
    let _pod_namespaces = PodNamespaces(c.dir.path().to_owned());
    let (far, ip) = far_service_and_client(&c);
    let body = c.wait("client-a reaching the Service behind the other NAT", || {
        wasm_get(&c, "client-a", &format!("{ip}:80/"))
    });
    assert!(body.contains(&far[0].name), "{body}");
    let body = c.wait("and by name", || wasm_get(&c, "client-a", "far:80/"));
    assert!(body.contains(&far[0].name), "{body}");
    // And the pod's own address, behind the other NAT, directly.
    let far_ip = pod_ip(&c, &far[0].name);
    let body = c.wait(
        "client-a reaching the pod's address behind the other NAT",
        || wasm_get(&c, "client-a", &format!("{far_ip}:9376/")),
    );
    assert!(body.contains(&far[0].name), "{body}");
    // UDP the same three ways: the Service's UDP port by ClusterIP and by name, and the pod's.
    udp_answered(&c, "client-a", &format!("{ip}:80"), &far[0].name);
    udp_answered(&c, "client-a", "far:80", &far[0].name);
    udp_answered(&c, "client-a", &format!("{far_ip}:9376"), &far[0].name);
}

/// The same across two servers sharing an etcd: each node's agent is given one server only,
/// so the two tunnels are held by different replicas, and the relay's request from node a's
/// side reaches node b through the other server (replica to replica, Konnectivity's
/// proxy-server role).
#[test]
fn a_service_is_reached_across_two_nats_and_two_servers_through_the_relay() {
    if let Some(why) = missing_prerequisite() {
        eprintln!("skipping the cross-NAT, two-server test: {why}");
        return;
    }
    let Some(etcd) = crate::harness::start_etcd() else {
        return;
    };
    let sites = NatSites::create();
    let host = sites.host_ip();
    let mut c = Cluster::start_on_with(
        &host,
        &[
            "--datastore-endpoint",
            &etcd.endpoint,
            "--replica-name",
            "alpha",
        ],
    );
    let server_token = std::fs::read_to_string(c.dir.path().join("server/server-token")).unwrap();
    let b_port = crate::harness::free_port();
    let b_data = c.dir.path().join("server-b");
    let alpha_url = format!("https://{host}:{}", c.port);
    let _beta = crate::harness::spawn_server(
        "server-b",
        c.dir.path(),
        &b_data,
        &format!("{host}:{b_port}"),
        &host,
        &[
            "--server",
            &alpha_url,
            "--token",
            server_token.trim(),
            "--replica-name",
            "beta",
        ],
    );
    let b_config = b_data.join("admin.kubeconfig");
    c.wait("beta ready", || {
        (b_config.exists()
            && crate::harness::kubectl_at(&b_config, &["get", "--raw", "/readyz"]).is_some())
        .then_some(())
    });
    let token = c.token.clone();
    let servers = [format!("{host}:{}", c.port), format!("{host}:{b_port}")];
    for (i, name) in ["node-a", "node-b"].into_iter().enumerate() {
        let ns = sites.sites[i].clone();
        c.start_agent_at(
            Some(&ns),
            &servers[i],
            name,
            &token,
            &["--pod-network", "auto"],
        );
    }
    let _pod_namespaces = PodNamespaces(c.dir.path().to_owned());
    for (node, replica) in [("node-a", "alpha"), ("node-b", "beta")] {
        c.wait(&format!("{node}'s tunnel on {replica}"), || {
            let r = c.kubectl(&[
                "get",
                "node",
                node,
                "-o",
                r#"jsonpath={.metadata.annotations.kedge\.io/tunnel-server}"#,
            ]);
            (r.ok && r.stdout.trim() == replica).then_some(())
        });
    }
    let (far, ip) = far_service_and_client(&c);
    let body = c.wait("client-a reaching the Service through both servers", || {
        wasm_get(&c, "client-a", &format!("{ip}:80/"))
    });
    assert!(body.contains(&far[0].name), "{body}");
    udp_answered(&c, "client-a", &format!("{ip}:80"), &far[0].name);
    drop(etcd);
}
