//! Nodes behind NAT, end to end: the server listens on the host end of a veth; two agents
//! run in their own network namespaces behind a router namespace that masquerades them, so
//! the server cannot reach them and everything it asks of a node travels the tunnel the node
//! dialled. The router then rebinds the NAT (a new outside address: QUIC migrates the
//! connection), and cuts one node off for longer than the node grace period and the tunnel's
//! idle timeout: the node turns Unknown while its pods keep running locally, and after the
//! link returns the agent reconnects, resumes its pod watch without relisting, reports the
//! status changes it made while away, and the cluster converges without duplicates.
//!
//! A runc container on a node behind the NAT is reached the same way: `kubectl exec` (with
//! and without stdin), `attach` and `port-forward` with a TCP round trip through the
//! forwarded port.
//!
//! Needs root, `ip` and `iptables`; skips with a message otherwise (and skips the container
//! part without runc and the test registry). Everything it creates (namespaces, veths, the
//! router's iptables rules, which live in its namespace) is removed by a guard, also on
//! failure. Traffic stays on loopback and the test's own namespaces.

use std::io::{BufRead as _, Read as _, Write as _};
use std::net::{SocketAddr, TcpStream};
use std::path::{Path, PathBuf};
use std::process::{Command, Output, Stdio};
use std::time::{Duration, Instant};

use serde_json::Value;

use crate::harness::{
    Busybox, Cluster, containers_unavailable, free_port, free_test_subnet, sh, stdout, tail,
    wait_for,
};

/// What this test needs that the machine may lack, in words for the skip message.
pub(crate) fn missing_prerequisite() -> Option<String> {
    if stdout(&["id", "-u"]).trim() != "0" {
        return Some("not root (network namespaces need CAP_NET_ADMIN)".into());
    }
    for (tool, arg, pkg) in [
        ("ip", "-V", "iproute2"),
        ("iptables", "-V", "iptables"),
        ("nsenter", "-V", "util-linux"),
    ] {
        if Command::new(tool).arg(arg).output().is_err() {
            return Some(format!("`{tool}` is missing (apt-get install {pkg})"));
        }
    }
    None
}

/// A cloud host and two sites behind one NAT router:
///
/// ```text
///  host ns: server on 10.N.0.1 ── veth ── router ns (10.N.0.2, MASQUERADE out)
///                                           ├── 10.N.1.1 ── site-a ns: agent 10.N.1.2
///                                           └── 10.N.2.1 ── site-b ns: agent 10.N.2.2
/// ```
///
/// Names carry the test process id and a count, so parallel or leftover runs do not collide.
pub(crate) struct NatNet {
    router: String,
    pub(crate) sites: [String; 2],
    /// The host end of the veth to the router (in this namespace).
    host_if: String,
    /// The router's outside interface and its inside interfaces, site a then b.
    router_out: String,
    router_in: [String; 2],
    /// Second octet of every address (10.N.x.y).
    n: u8,
}

impl NatNet {
    pub(crate) fn create() -> NatNet {
        // Names and the subnet carry the process id and a count of the networks this process
        // made: the NAT test and the HA test build one each, in parallel.
        static MADE: std::sync::atomic::AtomicU32 = std::sync::atomic::AtomicU32::new(0);
        let made = MADE.fetch_add(1, std::sync::atomic::Ordering::Relaxed);
        let pid = std::process::id();
        let n = free_test_subnet(100, 100, pid + 37 * made);
        let tag = format!("kn{}{}", pid % 10_000, made % 10);
        let net = NatNet {
            router: format!("{tag}-router"),
            sites: [format!("{tag}-site-a"), format!("{tag}-site-b")],
            host_if: format!("{tag}h"),
            router_out: format!("{tag}o"),
            router_in: [format!("{tag}ra"), format!("{tag}rb")],
            n,
        };
        // From here on the guard cleans up whatever part was made.
        net.build();
        net
    }

    fn build(&self) {
        let (r, n, host, out) = (&self.router, self.n, &self.host_if, &self.router_out);
        sh(&format!("ip netns add {r}"));
        for s in &self.sites {
            sh(&format!("ip netns add {s}"));
        }
        sh(&format!(
            "ip link add {host} type veth peer name {out} netns {r}"
        ));
        sh(&format!("ip addr add 10.{n}.0.1/24 dev {host}"));
        sh(&format!("ip link set {host} up"));
        sh(&format!("ip -n {r} link set lo up"));
        sh(&format!("ip -n {r} addr add 10.{n}.0.2/24 dev {out}"));
        sh(&format!("ip -n {r} link set {out} up"));
        // The sites' private addresses lead to the router (so probing them never leaves the
        // test's own links), where the NAT refuses anything that is not a reply.
        sh(&format!(
            "ip route add 10.{n}.0.0/16 via 10.{n}.0.2 dev {host}"
        ));
        for (i, (site, rif)) in self.sites.iter().zip(&self.router_in).enumerate() {
            let (net, sif) = (format!("10.{n}.{}", i + 1), format!("{rif}s"));
            sh(&format!(
                "ip link add {rif} netns {r} type veth peer name {sif} netns {site}"
            ));
            sh(&format!("ip -n {r} addr add {net}.1/24 dev {rif}"));
            sh(&format!("ip -n {r} link set {rif} up"));
            sh(&format!("ip -n {site} link set lo up"));
            sh(&format!("ip -n {site} addr add {net}.2/24 dev {sif}"));
            sh(&format!("ip -n {site} link set {sif} up"));
            sh(&format!("ip -n {site} route add default via {net}.1"));
        }
        sh(&format!(
            "ip netns exec {r} sysctl -qw net.ipv4.ip_forward=1"
        ));
        // The NAT: the sites' traffic leaves with the router's address; nothing from the
        // outside may open a connection inwards.
        self.iptables(&format!("-t nat -A POSTROUTING -o {out} -j MASQUERADE"));
        self.iptables(&format!(
            "-A FORWARD -i {out} -m conntrack --ctstate NEW -j DROP"
        ));
    }

    fn iptables(&self, rule: &str) {
        sh(&format!(
            "ip netns exec {} iptables -w 5 {rule}",
            self.router
        ));
    }

    pub(crate) fn host_ip(&self) -> String {
        format!("10.{}.0.1", self.n)
    }

    fn site_ip(&self, i: usize) -> String {
        format!("10.{}.{}.2", self.n, i + 1)
    }

    /// Cuts site `i` off (both directions) at the router, or restores it.
    fn cut(&self, i: usize, cut: bool) {
        let op = if cut { "-I" } else { "-D" };
        for dir in ["-i", "-o"] {
            self.iptables(&format!("{op} FORWARD {dir} {} -j DROP", self.router_in[i]));
        }
    }

    /// Gives the router a new outside address: the kernel drops the NAT mappings made
    /// with the old one, so the server sees the sites' next packets from a new address —
    /// what a carrier-grade NAT rebinding or a new uplink address looks like. (Deleted
    /// first: removing a primary address also removes the secondaries of its subnet.)
    fn renumber_outside(&self) {
        let (r, n, out) = (&self.router, self.n, &self.router_out);
        sh(&format!("ip -n {r} addr del 10.{n}.0.2/24 dev {out}"));
        sh(&format!("ip -n {r} addr add 10.{n}.0.3/24 dev {out}"));
    }

    /// The router's tracked UDP flows, as the kernel prints them.
    fn conntrack(&self) -> String {
        stdout(&[
            "ip",
            "netns",
            "exec",
            &self.router,
            "cat",
            "/proc/net/nf_conntrack",
        ])
    }
}

impl Drop for NatNet {
    fn drop(&mut self) {
        // Deleting the router's namespace deletes its veths (and so their peers) and its
        // iptables rules; the host end goes with its peer, deleted again here in case the
        // router was never moved in.
        for ns in self.sites.iter().chain([&self.router]) {
            let _ = Command::new("ip").args(["netns", "del", ns]).output();
        }
        let _ = Command::new("ip")
            .args(["link", "del", &self.host_if])
            .output();
    }
}

fn node(c: &Cluster, name: &str) -> Option<Value> {
    let r = c.kubectl(&["get", "node", name, "-o", "json"]);
    r.ok.then(|| serde_json::from_str(&r.stdout).unwrap())
}

fn ready_status(c: &Cluster, name: &str) -> String {
    node(c, name)
        .and_then(|n| {
            n.pointer("/status/conditions")?
                .as_array()?
                .iter()
                .find(|c| c["type"] == "Ready")?["status"]
                .as_str()
                .map(String::from)
        })
        .unwrap_or_default()
}

fn pod(c: &Cluster, name: &str) -> Option<Value> {
    let r = c.kubectl(&["get", "pod", name, "-o", "json"]);
    r.ok.then(|| serde_json::from_str(&r.stdout).unwrap())
}

/// How often `needle` appears in an agent's log.
fn count(c: &mut Cluster, agent: &str, needle: &str) -> usize {
    c.agent(agent).log_text().matches(needle).count()
}

/// Files named `name` under `dir`, depth-bounded.
fn find_files(dir: &Path, name: &str, depth: usize, out: &mut Vec<PathBuf>) {
    let Ok(entries) = std::fs::read_dir(dir) else {
        return;
    };
    for e in entries.flatten() {
        let p = e.path();
        if p.is_dir() && depth > 0 {
            find_files(&p, name, depth - 1, out);
        } else if p.file_name().is_some_and(|f| f == name) {
            out.push(p);
        }
    }
}

/// kubectl, killed past `limit` (coreutils `timeout`), with `stdin` fed from a thread.
fn kubectl_bounded(c: &Cluster, limit: u32, args: &[&str], stdin: Option<&[u8]>) -> Output {
    let mut child = Command::new("timeout")
        .arg(limit.to_string())
        .arg("kubectl")
        .arg("--kubeconfig")
        .arg(&c.kubeconfig)
        .args(args)
        .stdin(if stdin.is_some() {
            Stdio::piped()
        } else {
            Stdio::null()
        })
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .expect("running kubectl");
    let feeder = stdin.map(|s| {
        let (mut pipe, s) = (child.stdin.take().unwrap(), s.to_vec());
        std::thread::spawn(move || {
            let _ = pipe.write_all(&s);
        })
    });
    let out = child.wait_with_output().unwrap();
    if let Some(f) = feeder {
        f.join().unwrap();
    }
    out
}

fn text(b: &[u8]) -> String {
    String::from_utf8_lossy(b).into_owned()
}

/// A child process killed when dropped (also when an assertion fails while it runs).
struct KillOnDrop(std::process::Child);

impl Drop for KillOnDrop {
    fn drop(&mut self) {
        let _ = self.0.kill();
        let _ = self.0.wait();
    }
}

/// The port the container pod's web server listens on, inside site a's own namespace.
const WEB_PORT: u16 = 8080;

/// `busybox seq 1 1000`: the file the pod serves (3.9 KiB).
fn served() -> Vec<u8> {
    (1..=1000)
        .map(|i| format!("{i}\n"))
        .collect::<String>()
        .into_bytes()
}

/// exec (output, stderr, exit code; stdin in and back), attach and port-forward into the
/// container pod `name` on a node behind the NAT.
fn streams_through_the_tunnel(c: &Cluster, name: &str) {
    let out = kubectl_bounded(
        c,
        60,
        &[
            "exec",
            name,
            "--",
            "sh",
            "-c",
            "echo out; echo err >&2; exit 3",
        ],
        None,
    );
    assert_eq!(out.status.code(), Some(3), "stderr: {}", text(&out.stderr));
    assert_eq!(text(&out.stdout), "out\n");
    assert!(text(&out.stderr).contains("err"), "{}", text(&out.stderr));

    // -i: 64 KiB in through the tunnel and back out, closed at its end so `cat` finishes.
    let input: Vec<u8> = (0..65536u32).map(|i| (i % 251) as u8).collect();
    let out = kubectl_bounded(c, 60, &["exec", "-i", name, "--", "cat"], Some(&input));
    assert!(out.status.success(), "{}", text(&out.stderr));
    assert!(
        out.stdout == input,
        "stdin echoed back differs ({} bytes)",
        out.stdout.len()
    );

    // attach: the main process's output while attached (timeout ends it: exit 124).
    let out = kubectl_bounded(c, 3, &["attach", name], None);
    assert!(
        text(&out.stdout).contains("tick"),
        "attach printed: {} / {}",
        text(&out.stdout),
        text(&out.stderr)
    );

    // port-forward: a local port here, the pod's port on the node behind the NAT. A watchdog
    // kills kubectl if the whole exchange has not finished within a minute.
    let local = free_port();
    let mut pf = KillOnDrop(
        Command::new("kubectl")
            .arg("--kubeconfig")
            .arg(&c.kubeconfig)
            .args([
                "port-forward",
                &format!("pod/{name}"),
                &format!("{local}:{WEB_PORT}"),
            ])
            .stdin(Stdio::null())
            .stdout(Stdio::piped())
            .stderr(Stdio::piped())
            .spawn()
            .unwrap(),
    );
    let pf = &mut pf.0;
    let (done, watchdog) = {
        let (tx, rx) = std::sync::mpsc::channel::<()>();
        let pid = pf.id().to_string();
        let t = std::thread::spawn(move || {
            if rx.recv_timeout(Duration::from_secs(60)).is_err() {
                let _ = Command::new("kill").arg(&pid).status();
            }
        });
        (tx, t)
    };
    let mut lines = std::io::BufReader::new(pf.stdout.take().unwrap());
    let mut line = String::new();
    lines.read_line(&mut line).unwrap();
    assert!(
        line.contains("Forwarding from"),
        "port-forward said {line:?}"
    );
    // Drain "Handling connection for ..." so kubectl never blocks on it.
    let drain = std::thread::spawn(move || std::io::copy(&mut lines, &mut std::io::sink()));
    for _ in 0..2 {
        let mut s = TcpStream::connect_timeout(
            &SocketAddr::from(([127, 0, 0, 1], local)),
            Duration::from_secs(5),
        )
        .expect("connecting to the forwarded port");
        s.set_read_timeout(Some(Duration::from_secs(20))).unwrap();
        s.set_write_timeout(Some(Duration::from_secs(20))).unwrap();
        write!(s, "GET /data HTTP/1.0\r\nHost: x\r\n\r\n").unwrap();
        let mut all = Vec::new();
        s.read_to_end(&mut all)
            .expect("reading the forwarded answer");
        let split = all
            .windows(4)
            .position(|w| w == b"\r\n\r\n")
            .unwrap_or_else(|| panic!("no HTTP answer: {:?}", text(&all)));
        assert!(
            text(&all[..split]).contains(" 200 "),
            "{}",
            text(&all[..split])
        );
        assert!(
            all[split + 4..] == served(),
            "forwarded body differs ({} bytes)",
            all.len() - split - 4
        );
    }
    let _ = done.send(());
    let _ = pf.kill();
    let _ = pf.wait();
    let _ = drain.join();
    let _ = watchdog.join();
}

#[test]
fn nodes_behind_nat_survive_rebinding_and_a_link_cut() {
    if let Some(why) = missing_prerequisite() {
        eprintln!("SKIPPED nodes_behind_nat_survive_rebinding_and_a_link_cut: {why}");
        return;
    }
    // Declared first, dropped last: the processes are gone before their namespaces.
    let net = NatNet::create();
    let mut c = Cluster::start_on(&net.host_ip());
    // Silent nodes turn Unknown after 15 s (the Lease is renewed every 10 s); pods are not
    // evicted in this test's lifetime, so the node's own pods must survive the outage.
    let cm = r#"{"apiVersion":"v1","kind":"ConfigMap",
        "metadata":{"name":"kedge-node-lifecycle","namespace":"kube-system"},
        "data":{"gracePeriodSeconds":"15","evictionSeconds":"3600"}}"#;
    let r = c.kubectl_stdin(&["create", "-f", "-"], Some(cm));
    assert!(r.ok, "{}", r.stderr);
    let token = c.token.clone();
    let [site_a, site_b] = net.sites.clone();
    // The registry listens on this namespace's loopback, out of the sites' reach: node-a gets
    // the busybox image preloaded, as an air-gapped node would.
    let busybox = match containers_unavailable() {
        None => {
            let b = Busybox::start(c.dir.path());
            b.preload(&c.dir.path().join("node-a"));
            Some(b)
        }
        Some(why) => {
            eprintln!("nat: SKIPPING exec, attach and port-forward into a container: {why}");
            None
        }
    };
    c.start_agent_in(Some(&site_a), "node-a", &token, &[]);
    c.start_agent_in(Some(&site_b), "node-b", &token, &[]);
    c.wait("both nodes Ready", || {
        (ready_status(&c, "node-a") == "True" && ready_status(&c, "node-b") == "True").then_some(())
    });

    // The nodes are behind the NAT: the server sees the router's address, and cannot open
    // a connection to a node (the router drops it; a refusal would mean it got through).
    let server_log = c.server.log_text();
    let router_out = format!("10.{}.0.2:", net.n);
    assert!(
        server_log
            .lines()
            .any(|l| l.contains("node tunnel connected") && l.contains(&router_out)),
        "the server must see the nodes through the NAT:\n{}",
        tail(&server_log, 20)
    );
    for i in 0..2 {
        let agent: SocketAddr = format!("{}:10250", net.site_ip(i)).parse().unwrap();
        let res = TcpStream::connect_timeout(&agent, Duration::from_secs(2));
        assert!(
            res.as_ref()
                .is_err_and(|e| e.kind() == std::io::ErrorKind::TimedOut),
            "the server side reached {agent} through the NAT: {res:?}"
        );
    }
    let internal_ip = node(&c, "node-b").unwrap()["status"]["addresses"][0]["address"].clone();
    assert_eq!(
        internal_ip,
        net.site_ip(1).as_str(),
        "the node reports its private address"
    );

    let deploy = r#"{"apiVersion":"apps/v1","kind":"Deployment","metadata":{"name":"natted"},
      "spec":{"replicas":2,"selector":{"matchLabels":{"app":"natted"}},
      "template":{"metadata":{"labels":{"app":"natted"}},"spec":{
        "terminationGracePeriodSeconds":2,
        "containers":[{"name":"hello","image":"kedge.dev/samples/hello-wasm:v1"}]}}}}"#;
    let r = c.kubectl_stdin(&["create", "-f", "-"], Some(deploy));
    assert!(r.ok, "{}", r.stderr);
    let pods = c.wait("one Running pod of the Deployment on each node", || {
        let p = c.pods("app=natted");
        let on = |n: &str| {
            p.iter()
                .filter(|p| p.node == n && p.phase == "Running" && p.ready)
                .count()
        };
        (p.len() == 2 && on("node-a") == 1 && on("node-b") == 1).then_some(p)
    });
    let on_b = pods
        .iter()
        .find(|p| p.node == "node-b")
        .unwrap()
        .name
        .clone();
    let uid_b = pod(&c, &on_b).unwrap()["metadata"]["uid"].clone();
    // kubectl logs: server → tunnel → agent, for a node the server cannot dial.
    for p in &pods {
        c.wait("the pod's greeting through the tunnel", || {
            let r = c.kubectl(&["logs", &p.name]);
            (r.ok && r.stdout.contains(&format!("hello from {}", p.name))).then_some(())
        });
    }

    // exec, attach and port-forward into a container on node-a, which the server cannot dial.
    if let Some(b) = &busybox {
        let shell = serde_json::json!({
            "apiVersion": "v1", "kind": "Pod", "metadata": {"name": "natshell"},
            "spec": {
                "nodeSelector": {"kubernetes.io/hostname": "node-a"},
                "terminationGracePeriodSeconds": 1,
                "containers": [{"name": "main", "image": b.image, "imagePullPolicy": "IfNotPresent",
                    "command": ["sh", "-c", format!(
                        "busybox mkdir -p /www && busybox seq 1 1000 > /www/data && \
                         (busybox httpd -f -p 127.0.0.1:{WEB_PORT} -h /www &) && \
                         i=0; while true; do echo tick $i; i=$((i+1)); sleep 0.5; done")]}],
            },
        });
        let r = c.kubectl_stdin(&["create", "-f", "-"], Some(&shell.to_string()));
        assert!(r.ok, "{}", r.stderr);
        c.wait("natshell Running on node-a", || {
            let p = pod(&c, "natshell")?;
            let status = &p["status"]["containerStatuses"][0];
            if let Some(t) = status.pointer("/lastState/terminated") {
                panic!("natshell's container ended: {t}");
            }
            (p["status"]["phase"] == "Running" && status["ready"] == true).then_some(())
        });
        let started = Instant::now();
        streams_through_the_tunnel(&c, "natshell");
        eprintln!(
            "nat: exec, attach and port-forward through the NAT took {:?}",
            started.elapsed()
        );
    }

    // NAT rebinding: the router's outside address changes under live connections. QUIC
    // migrates them (the server validates the new path): no reconnect, logs still flow.
    let before = net.conntrack();
    assert!(
        before.contains(&format!("dst=10.{}.0.2", net.n)),
        "{before}"
    );
    // The server records where each tunnel comes from: the NAT's outside address.
    let tunnel_from = |c: &Cluster| {
        node(c, "node-a")
            .and_then(|n| {
                n.pointer("/metadata/annotations/kedge.io~1tunnel-address")
                    .cloned()
            })
            .and_then(|a| a.as_str().map(String::from))
    };
    let outside = format!("10.{}.0.2:", net.n);
    c.wait("node-a's tunnel address recorded", || {
        tunnel_from(&c).filter(|a| a.starts_with(&outside))
    });
    net.renumber_outside();
    for p in &pods {
        c.wait("logs through the migrated tunnel", || {
            let r = c.kubectl(&["logs", &p.name]);
            (r.ok && r.stdout.contains("hello from")).then_some(())
        });
    }
    if busybox.is_some() {
        let out = kubectl_bounded(
            &c,
            60,
            &["exec", "natshell", "--", "echo", "migrated"],
            None,
        );
        assert!(
            out.status.success() && text(&out.stdout) == "migrated\n",
            "exec through the migrated tunnel: {} / {}",
            text(&out.stdout),
            text(&out.stderr)
        );
    }
    let after = net.conntrack();
    assert!(
        after.contains(&format!("dst=10.{}.0.3", net.n)),
        "the sites' flows must now leave with the new address:\n{after}"
    );
    // ... and follows the migration to the new one, without a reconnect.
    let moved = format!("10.{}.0.3:", net.n);
    c.wait("node-a's tunnel address following the rebinding", || {
        tunnel_from(&c).filter(|a| a.starts_with(&moved))
    });
    for a in ["node-a", "node-b"] {
        assert_eq!(
            count(&mut c, a, "tunnel lost") + count(&mut c, a, "tunnel stalled"),
            0,
            "{a} reconnected instead of migrating:\n{}",
            tail(&c.agent(a).log_text(), 20)
        );
    }

    // A run-to-completion pod on node-b that finishes while node-b is cut off: its final
    // status must reach the API once the link is back.
    let job = r#"{"apiVersion":"v1","kind":"Pod","metadata":{"name":"finisher"},
      "spec":{"restartPolicy":"Never","nodeSelector":{"kubernetes.io/hostname":"node-b"},
        "containers":[{"name":"hello","image":"kedge.dev/samples/hello-wasm:v1",
          "env":[{"name":"HELLO_EXIT_AFTER_SECS","value":"6"},{"name":"HELLO_EXIT_CODE","value":"0"}]}]}}"#;
    let r = c.kubectl_stdin(&["create", "-f", "-"], Some(job));
    assert!(r.ok, "{}", r.stderr);
    c.wait("the finisher Running on node-b", || {
        let p = pod(&c, "finisher")?;
        (p["status"]["phase"] == "Running").then_some(())
    });
    let listed = count(&mut c, "node-b", "pods listed");
    assert_eq!(
        listed, 1,
        "node-b listed its pods more than once before the cut"
    );

    // Cut node-b off for longer than the grace period and the tunnel's 30 s idle timeout.
    let cut_at = Instant::now();
    net.cut(1, true);
    c.wait("node-b Unknown", || {
        (ready_status(&c, "node-b") == "Unknown").then_some(())
    });
    assert_eq!(ready_status(&c, "node-a"), "True", "node-a is not cut off");
    // It gives up on the silent connection after 12 s (stalled) or, at the latest, at the
    // 30 s idle timeout (lost).
    wait_for(
        "node-b's agent to notice the lost tunnel",
        Duration::from_secs(60),
        || {
            (count(&mut c, "node-b", "tunnel lost") + count(&mut c, "node-b", "tunnel stalled") > 0)
                .then_some(())
        },
    );
    // Meanwhile the node keeps its pods: the agent runs, the pod's log grows locally, and
    // the finisher completed.
    assert!(c.agent("node-b").is_running(), "node-b's agent died");
    let mut logs = Vec::new();
    find_files(
        &c.dir.path().join("node-b").join("pods"),
        "0.log",
        4,
        &mut logs,
    );
    let finisher_log = logs
        .iter()
        .filter(|p| p.to_string_lossy().contains("finisher"))
        .map(|p| std::fs::read_to_string(p).unwrap_or_default())
        .collect::<String>();
    assert!(
        finisher_log.contains("exiting with code 0"),
        "the finisher must have run to its end on node-b: {logs:?}\n{finisher_log}"
    );
    assert_eq!(
        pod(&c, "finisher").unwrap()["status"]["phase"],
        "Running",
        "the API cannot know yet"
    );
    let deployment_log = logs
        .iter()
        .find(|p| p.to_string_lossy().contains(&on_b))
        .unwrap_or_else(|| panic!("no log of {on_b} on node-b: {logs:?}"));
    let len = std::fs::metadata(deployment_log).unwrap().len();
    wait_for(
        "the pod's heartbeat written during the outage",
        Duration::from_secs(40),
        || (std::fs::metadata(deployment_log).unwrap().len() > len).then_some(()),
    );

    // The link returns: the agent reconnects, the node is Ready again.
    net.cut(1, false);
    let restored = Instant::now();
    c.wait("node-b Ready again", || {
        (ready_status(&c, "node-b") == "True").then_some(())
    });
    eprintln!(
        "nat: outage {:?}, node-b Ready {:?} after the link came back",
        restored - cut_at,
        restored.elapsed()
    );
    assert_eq!(count(&mut c, "node-b", "tunnel connected"), 2);
    // What changed while away reaches the API; the pod watch resumed, no relist.
    c.wait("the finisher Succeeded", || {
        let p = pod(&c, "finisher")?;
        (p["status"]["phase"] == "Succeeded").then_some(())
    });
    let log_b = c.agent("node-b").log_text();
    assert!(
        log_b.contains("status update failed; will retry")
            && log_b.contains("writing the pod status again"),
        "the finisher's status must have been written again after the outage:\n{}",
        tail(&log_b, 30)
    );
    wait_for(
        "node-b's pod watch resumed",
        Duration::from_secs(30),
        || (count(&mut c, "node-b", "resuming the pod watch") > 0).then_some(()),
    );
    assert_eq!(
        count(&mut c, "node-b", "pods listed"),
        1,
        "node-b relisted its pods after reconnecting:\n{}",
        tail(&c.agent("node-b").log_text(), 30)
    );

    // Converged: the same two pods, Running, one per node; node-b's pod is the very one it
    // kept running (same uid, no restart, its pre-outage output), and it was started once.
    let p = c.wait("the Deployment's pods Running on both nodes", || {
        let p = c.pods("app=natted");
        let ok = p.len() == 2
            && p.iter()
                .all(|p| p.phase == "Running" && p.ready && !p.deleting)
            && p.iter().filter(|p| p.node == "node-b").count() == 1;
        ok.then_some(p)
    });
    assert!(p.iter().any(|p| p.name == on_b), "{p:?}");
    let kept = pod(&c, &on_b).unwrap();
    assert_eq!(kept["metadata"]["uid"], uid_b);
    assert_eq!(kept["status"]["containerStatuses"][0]["restartCount"], 0);
    assert_eq!(
        count(&mut c, "node-b", "starting pod"),
        2,
        "node-b started a pod twice:\n{}",
        tail(&c.agent("node-b").log_text(), 30)
    );
    let logs = c.k(&["logs", &on_b]);
    assert!(
        logs.contains(&format!("hello from {on_b}")) && logs.contains("still running"),
        "{logs}"
    );
}
