//! Starts real `kedge` processes on loopback and drives them with the real kubectl.

use std::net::{TcpListener, UdpSocket};
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

pub const KEDGE: &str = env!("CARGO_BIN_EXE_kedge");

/// The repository root (manifests live there).
pub fn repo() -> PathBuf {
    PathBuf::from(env!("CARGO_MANIFEST_DIR"))
        .parent()
        .unwrap()
        .to_path_buf()
}

/// Compiled plugins are cached across test runs here (compiling them costs seconds).
pub fn plugin_cache() -> PathBuf {
    PathBuf::from(env!("CARGO_MANIFEST_DIR"))
        .parent()
        .unwrap()
        .join("target")
        .join("e2e-plugin-cache")
}

/// A loopback port free for both TCP (HTTPS) and UDP (tunnel).
pub fn free_port() -> u16 {
    for _ in 0..50 {
        let t = TcpListener::bind("127.0.0.1:0").unwrap();
        let port = t.local_addr().unwrap().port();
        if UdpSocket::bind(("127.0.0.1", port)).is_ok() {
            return port;
        }
    }
    panic!("no free port");
}

/// A child process killed when dropped.
pub struct Proc {
    pub name: String,
    child: Option<Child>,
    pub log: PathBuf,
}

impl Proc {
    /// Stops the process as an operator would (SIGTERM, so an agent stops its containers),
    /// then SIGKILL if it has not exited within a few seconds.
    pub fn kill(&mut self) {
        if let Some(mut c) = self.child.take() {
            let _ = Command::new("kill")
                .args(["-TERM", &c.id().to_string()])
                .status();
            let deadline = Instant::now() + Duration::from_secs(8);
            while Instant::now() < deadline {
                if c.try_wait().ok().flatten().is_some() {
                    return;
                }
                std::thread::sleep(Duration::from_millis(50));
            }
            let _ = c.kill();
            let _ = c.wait();
        }
    }

    /// Kills the process outright (SIGKILL), as a crash or power loss would.
    pub fn crash(&mut self) {
        if let Some(mut c) = self.child.take() {
            let _ = c.kill();
            let _ = c.wait();
        }
    }

    pub fn is_running(&mut self) -> bool {
        self.child
            .as_mut()
            .is_some_and(|c| c.try_wait().ok().flatten().is_none())
    }

    pub fn log_text(&self) -> String {
        std::fs::read_to_string(&self.log).unwrap_or_default()
    }
}

impl Drop for Proc {
    fn drop(&mut self) {
        self.kill();
    }
}

pub fn spawn(name: &str, dir: &Path, args: &[&str]) -> Proc {
    spawn_in(None, name, dir, args)
}

/// Like [`spawn`], inside a network namespace: `nsenter --net`, which execs kedge itself (so
/// the pid is still kedge's) and, unlike `ip netns exec`, leaves the mounts alone — `ip netns
/// exec` mounts a fresh /sys that hides /sys/fs/cgroup, and runc needs it.
pub fn spawn_in(netns: Option<&str>, name: &str, dir: &Path, args: &[&str]) -> Proc {
    let log = dir.join(format!("{name}.log"));
    let out = std::fs::File::create(&log).unwrap();
    // A copy of the binary for long runs (`make chaos`), so a rebuild meanwhile cannot
    // change what is under test.
    let kedge = std::env::var("KEDGE_BIN").unwrap_or_else(|_| KEDGE.to_string());
    let mut cmd = match netns {
        Some(ns) => {
            let mut c = Command::new("nsenter");
            c.arg(format!("--net=/var/run/netns/{ns}")).arg(&kedge);
            c
        }
        None => Command::new(&kedge),
    };
    let child = cmd
        .args(args)
        .env("RUST_LOG", "info,kedge=debug")
        .stdout(out.try_clone().unwrap())
        .stderr(out)
        .stdin(Stdio::null())
        .spawn()
        .unwrap_or_else(|e| panic!("starting {kedge}: {e}"));
    Proc {
        name: name.to_string(),
        child: Some(child),
        log,
    }
}

/// `kedge push` of the Wasm file `wasm` to `image` on the test registry `reg`, with its
/// credential and CA; the command's stdout (the pushed reference).
pub fn push_wasm(reg: &kedge_registry::testing::TestRegistry, wasm: &Path, image: &str) -> String {
    let out = Command::new(KEDGE)
        .arg("push")
        .arg(wasm)
        .arg(image)
        .args(["--username", &reg.username, "--password", &reg.password])
        .arg("--ca-file")
        .arg(&reg.ca_file)
        .output()
        .unwrap();
    assert!(
        out.status.success(),
        "kedge push: {}",
        String::from_utf8_lossy(&out.stderr)
    );
    String::from_utf8_lossy(&out.stdout).to_string()
}

/// Polls `f` until it returns Some, or panics with `what` after `timeout`.
pub fn wait_for<T>(what: &str, timeout: Duration, mut f: impl FnMut() -> Option<T>) -> T {
    let start = Instant::now();
    loop {
        if let Some(v) = f() {
            return v;
        }
        if start.elapsed() > timeout {
            panic!("timed out after {timeout:?} waiting for {what}");
        }
        std::thread::sleep(Duration::from_millis(250));
    }
}

/// A server with its data dir, admin kubeconfig and join token.
pub struct Cluster {
    pub dir: tempfile::TempDir,
    /// The address the server listens on (HTTPS and tunnel), loopback unless a test made
    /// another one.
    pub host: String,
    pub port: u16,
    pub server: Proc,
    pub agents: Vec<Proc>,
    pub kubeconfig: PathBuf,
    pub token: String,
    /// With `make test-etcd`: the cluster's etcd (dropped after the server).
    pub etcd: Option<Etcd>,
}

pub struct Kubectl {
    pub ok: bool,
    pub stdout: String,
    pub stderr: String,
}

/// `kedge server` named `name` (its log `<dir>/<name>.log`) on the data dir `data`, at
/// `listen`, with `host` in its certificate, the shared plugin cache and `extra` flags.
pub fn spawn_server(
    name: &str,
    dir: &Path,
    data: &Path,
    listen: &str,
    host: &str,
    extra: &[&str],
) -> Proc {
    let cache = plugin_cache();
    let mut args = vec![
        "server",
        "--data-dir",
        data.to_str().unwrap(),
        "--listen",
        listen,
        "--plugin-cache-dir",
        cache.to_str().unwrap(),
        "--tls-san",
        host,
    ];
    args.extend_from_slice(extra);
    spawn(name, dir, &args)
}

/// kubectl through the server whose admin kubeconfig is `kubeconfig`, its output whatever
/// its exit status.
pub fn kubectl_output(
    kubeconfig: &std::path::Path,
    args: &[&str],
) -> std::io::Result<std::process::Output> {
    Command::new("kubectl")
        .arg("--kubeconfig")
        .arg(kubeconfig)
        .arg("--request-timeout=10s")
        .args(args)
        .output()
}

/// kubectl through the server whose admin kubeconfig is `kubeconfig`: its stdout if it
/// succeeded.
pub fn kubectl_at(kubeconfig: &std::path::Path, args: &[&str]) -> Option<String> {
    let out = kubectl_output(kubeconfig, args).ok()?;
    out.status
        .success()
        .then(|| String::from_utf8_lossy(&out.stdout).into_owned())
}

/// Plugin name → the replica holding its lease (`status.holder`, the HOLDER column of
/// `kubectl get plugins -o wide`).
pub fn holders(kubeconfig: &std::path::Path) -> Vec<(String, String)> {
    let Some(out) = kubectl_at(
        kubeconfig,
        &[
            "get",
            "plugins",
            "-o",
            r#"jsonpath={range .items[*]}{.metadata.name}={.status.holder}{"\n"}{end}"#,
        ],
    ) else {
        return Vec::new();
    };
    out.lines()
        .filter_map(|l| l.split_once('='))
        .map(|(p, h)| (p.to_string(), h.to_string()))
        .collect()
}

/// Runs the `kedge` binary (a CLI command) to its end.
pub fn kedge(args: &[&str]) -> std::process::Output {
    Command::new(KEDGE)
        .args(args)
        .output()
        .expect("running kedge")
}

impl Cluster {
    /// Starts the cluster's server again on its data dir and address (and its etcd under
    /// `make test-etcd`), with `extra` flags, and waits for its API.
    pub fn restart_server(&mut self, extra: &[&str]) {
        let data = self.dir.path().join("server");
        let listen = format!("{}:{}", self.host, self.port);
        let endpoint = self.etcd.as_ref().map(|e| e.endpoint.clone());
        let mut args = extra.to_vec();
        if let Some(e) = &endpoint {
            args.extend_from_slice(&["--datastore-endpoint", e]);
        }
        self.server = spawn_server(
            "server-again",
            self.dir.path(),
            &data,
            &listen,
            &self.host,
            &args,
        );
        self.wait("the API back", || {
            self.kubectl(&["get", "--raw", "/readyz"]).ok.then_some(())
        });
    }

    pub fn start() -> Cluster {
        Cluster::start_on("127.0.0.1")
    }

    /// A server on loopback with extra `kedge server` flags.
    pub fn start_with(server_flags: &[&str]) -> Cluster {
        Cluster::start_on_with("127.0.0.1", server_flags)
    }

    /// A server listening on `host` (an address of this machine), in its certificate too.
    pub fn start_on(host: &str) -> Cluster {
        Cluster::start_on_with(host, &[])
    }

    /// A server listening on `host`, with extra `kedge server` flags.
    pub fn start_on_with(host: &str, server_flags: &[&str]) -> Cluster {
        assert!(
            Command::new("kubectl")
                .arg("version")
                .arg("--client")
                .output()
                .is_ok(),
            "kubectl is not installed: the end-to-end tests drive the real kubectl"
        );
        let dir = tempfile::tempdir().unwrap();
        let port = free_port();
        let data = dir.path().join("server");
        let listen = format!("{host}:{port}");
        let mut args = server_flags.to_vec();
        // `make test-etcd`: on an etcd of the cluster's own, unless the test chose a datastore.
        let etcd = (on_etcd() && !server_flags.contains(&"--datastore-endpoint"))
            .then(|| start_etcd().expect("make test-etcd needs etcd (scripts/setup.sh)"));
        let endpoint = etcd.as_ref().map(|e| e.endpoint.clone());
        if let Some(e) = &endpoint {
            args.extend_from_slice(&["--datastore-endpoint", e]);
        }
        let server = spawn_server("server", dir.path(), &data, &listen, host, &args);
        let kubeconfig = data.join("admin.kubeconfig");
        let token_file = data.join("token");
        let mut c = Cluster {
            dir,
            host: host.to_string(),
            port,
            server,
            agents: Vec::new(),
            kubeconfig,
            token: String::new(),
            etcd,
        };
        c.token = wait_for("the server's join token", Duration::from_secs(90), || {
            if !c.server.is_running() {
                panic!("server exited:\n{}", c.server.log_text());
            }
            std::fs::read_to_string(&token_file)
                .ok()
                .map(|t| t.trim().to_string())
                .filter(|t| !t.is_empty())
        });
        wait_for("the API to answer", Duration::from_secs(90), || {
            c.kubectl(&["get", "--raw", "/readyz"]).ok.then_some(())
        });
        c
    }

    pub fn start_agent(&mut self, name: &str, token: &str) {
        self.start_agent_with(name, token, &[]);
    }

    /// An agent with extra command-line flags.
    pub fn start_agent_with(&mut self, name: &str, token: &str, extra: &[&str]) {
        self.start_agent_in(None, name, token, extra);
    }

    /// An agent inside a network namespace (`None`: this one).
    pub fn start_agent_in(&mut self, netns: Option<&str>, name: &str, token: &str, extra: &[&str]) {
        let server = format!("{}:{}", self.host, self.port);
        self.start_agent_at(netns, &server, name, token, extra);
    }

    /// [`Cluster::start_agent_in`], given `server` (another replica, or several).
    pub fn start_agent_at(
        &mut self,
        netns: Option<&str>,
        server: &str,
        name: &str,
        token: &str,
        extra: &[&str],
    ) {
        let data = self.dir.path().join(name);
        let mut args = vec![
            "agent",
            "--server",
            server,
            "--token",
            token,
            "--name",
            name,
            "--data-dir",
            data.to_str().unwrap(),
        ];
        // Many clusters share this machine while the tests run in parallel: unless a test
        // asks for the pod network (it then gives each node a network namespace of its own,
        // see network.rs), agents keep their pods on the node's network and run no proxy or
        // DNS, which would otherwise meet on the host's one bridge, nftables and DNS address.
        if !extra.iter().any(|a| a.starts_with("--pod-network")) {
            args.extend_from_slice(&[
                "--pod-network",
                "host",
                "--proxy-mode",
                "none",
                "--cluster-dns",
                "",
            ]);
        }
        args.extend_from_slice(extra);
        let p = spawn_in(netns, name, self.dir.path(), &args);
        self.agents.push(p);
    }

    pub fn agent(&mut self, name: &str) -> &mut Proc {
        self.agents.iter_mut().find(|a| a.name == name).unwrap()
    }

    pub fn kubectl(&self, args: &[&str]) -> Kubectl {
        self.kubectl_stdin(args, None)
    }

    pub fn kubectl_stdin(&self, args: &[&str], stdin: Option<&str>) -> Kubectl {
        use std::io::Write;
        let cache = self.dir.path().join("kube-cache");
        let mut cmd = Command::new("kubectl");
        cmd.arg("--kubeconfig")
            .arg(&self.kubeconfig)
            .arg("--cache-dir")
            .arg(&cache)
            .arg("--request-timeout=20s")
            .args(args)
            .stdout(Stdio::piped())
            .stderr(Stdio::piped())
            .stdin(if stdin.is_some() {
                Stdio::piped()
            } else {
                Stdio::null()
            });
        let mut child = cmd.spawn().expect("running kubectl");
        if let Some(s) = stdin {
            child.stdin.take().unwrap().write_all(s.as_bytes()).unwrap();
        }
        let out = child.wait_with_output().unwrap();
        Kubectl {
            ok: out.status.success(),
            stdout: String::from_utf8_lossy(&out.stdout).into_owned(),
            stderr: String::from_utf8_lossy(&out.stderr).into_owned(),
        }
    }

    /// kubectl that must succeed; returns stdout.
    pub fn k(&self, args: &[&str]) -> String {
        let r = self.kubectl(args);
        assert!(
            r.ok,
            "kubectl {args:?} failed:\n{}\n--- server log tail ---\n{}",
            r.stderr,
            tail(&self.server.log_text(), 40)
        );
        r.stdout
    }

    /// Like [`wait_for`], but dumps the cluster's state and logs when it times out.
    pub fn wait<T>(&self, what: &str, mut f: impl FnMut() -> Option<T>) -> T {
        let start = Instant::now();
        loop {
            if let Some(v) = f() {
                return v;
            }
            if start.elapsed() > Duration::from_secs(60) {
                let pods = self.kubectl(&["get", "pods,rs,deploy,nodes", "-o", "wide"]);
                let mut logs = format!("--- server ---\n{}\n", tail(&self.server.log_text(), 30));
                for a in &self.agents {
                    logs.push_str(&format!(
                        "--- {} ---\n{}\n",
                        a.name,
                        tail(&a.log_text(), 30)
                    ));
                }
                panic!(
                    "timed out waiting for {what}\n{}{}\n{logs}",
                    pods.stdout, pods.stderr
                );
            }
            std::thread::sleep(Duration::from_millis(250));
        }
    }

    /// Pods (name, phase, node, image, deleting) matching a label selector.
    pub fn pods(&self, selector: &str) -> Vec<PodInfo> {
        let r = self.kubectl(&["get", "pods", "-l", selector, "-o", "json"]);
        if !r.ok {
            return Vec::new();
        }
        let v: serde_json::Value = serde_json::from_str(&r.stdout).unwrap();
        v["items"]
            .as_array()
            .unwrap()
            .iter()
            .map(|p| PodInfo {
                name: p["metadata"]["name"].as_str().unwrap().to_string(),
                phase: p["status"]["phase"].as_str().unwrap_or("").to_string(),
                ready: p["status"]["containerStatuses"][0]["ready"] == true,
                node: p["spec"]["nodeName"].as_str().unwrap_or("").to_string(),
                image: p["spec"]["containers"][0]["image"]
                    .as_str()
                    .unwrap()
                    .to_string(),
                deleting: p["metadata"]["deletionTimestamp"].is_string(),
            })
            .collect()
    }
}

#[derive(Debug, Clone)]
pub struct PodInfo {
    pub name: String,
    pub phase: String,
    pub ready: bool,
    pub node: String,
    pub image: String,
    pub deleting: bool,
}

pub fn tail(s: &str, n: usize) -> String {
    let lines: Vec<&str> = s.lines().collect();
    lines[lines.len().saturating_sub(n)..].join("\n")
}

/// Why this machine cannot run the agent's OCI containers (root and runc), if it cannot.
pub fn containers_unavailable() -> Option<String> {
    let uid = Command::new("id")
        .arg("-u")
        .output()
        .map(|o| String::from_utf8_lossy(&o.stdout).trim().to_string())
        .unwrap_or_default();
    if uid != "0" {
        return Some("not root (the agent runs containers under runc only as root)".into());
    }
    if Command::new("runc").arg("--version").output().is_err() {
        return Some("`runc` is missing (apt-get install runc)".into());
    }
    if let Err(e) = kedge_registry::testing::registry_available() {
        return Some(e.to_string());
    }
    None
}

/// A private registry on 127.0.0.1 serving a busybox image built by the test (no download),
/// and the `registries.yaml` that trusts its CA.
pub struct Busybox {
    pub registry: kedge_registry::testing::TestRegistry,
    /// `127.0.0.1:<port>/apps/busybox:v1`.
    pub image: String,
    pub registries_yaml: PathBuf,
}

impl Busybox {
    pub fn start(dir: &Path) -> Busybox {
        use kedge_registry::testing::{TestRegistry, TestRegistryOptions, busybox_image_layer};
        kedge_tunnel::install_crypto_provider();
        let registry =
            TestRegistry::start(TestRegistryOptions { auth: false }).expect("test registry");
        let config = kedge_registry::OciConfig {
            cmd: vec!["sh".into()],
            env: vec!["PATH=/bin".into()],
            ..Default::default()
        };
        let rt = tokio::runtime::Runtime::new().unwrap();
        rt.block_on(registry.push_oci_image(
            "apps/busybox:v1",
            &[busybox_image_layer().unwrap()],
            &config,
        ))
        .expect("pushing busybox");
        let host = registry.host();
        let registries_yaml = dir.join("registries.yaml");
        std::fs::write(
            &registries_yaml,
            format!(
                "configs:\n  \"{host}\":\n    tls:\n      ca_file: {}\n",
                registry.ca_file.display()
            ),
        )
        .unwrap();
        Busybox {
            image: format!("{host}/apps/busybox:v1"),
            registry,
            registries_yaml,
        }
    }

    /// Pulls the image into the image store of the node whose data dir is `node_dir`, before
    /// its agent starts: for an agent that cannot reach this registry (in another network
    /// namespace), as an air-gapped node's images are preloaded.
    pub fn preload(&self, node_dir: &Path) {
        let store = kedge_registry::LocalImageStore::open(node_dir.join("images"))
            .expect("opening the node's image store");
        let puller = kedge_registry::Puller::new(
            std::sync::Arc::new(store),
            self.registry.registries_config(false),
        );
        let reference = kedge_registry::Reference::parse(&self.image).unwrap();
        let rt = tokio::runtime::Runtime::new().unwrap();
        rt.block_on(puller.ensure(&reference, kedge_registry::PullPolicy::IfNotPresent, &[]))
            .expect("preloading busybox");
    }
}

/// Runs a command (words separated by spaces) that must succeed.
pub fn sh(cmd: &str) {
    let args: Vec<&str> = cmd.split_whitespace().collect();
    let out = Command::new(args[0])
        .args(&args[1..])
        .output()
        .unwrap_or_else(|e| panic!("{args:?}: {e}"));
    assert!(
        out.status.success(),
        "{args:?} failed: {}",
        String::from_utf8_lossy(&out.stderr)
    );
}

/// What a command prints (empty if it cannot run).
pub fn stdout(args: &[&str]) -> String {
    Command::new(args[0])
        .args(&args[1..])
        .output()
        .map(|o| String::from_utf8_lossy(&o.stdout).into_owned())
        .unwrap_or_default()
}

/// A second octet `N` in `first..first + span` whose `10.N.0.0/16` no address or route of
/// this machine uses, starting at an offset of `seed` (tests that build networks pass their
/// pid, so parallel and leftover runs pick different ones).
pub fn free_test_subnet(first: u32, span: u32, seed: u32) -> u8 {
    let routes = stdout(&["ip", "-4", "route", "show", "table", "all"]);
    let addrs = stdout(&["ip", "-4", "addr"]);
    (0..span)
        .map(|i| (first + (seed + i) % span) as u8)
        .find(|n| {
            let p = format!("10.{n}.");
            !routes.contains(&p) && !addrs.contains(&p)
        })
        .expect("a free 10.N.0.0/16 for the test network")
}

/// An etcd of its own for one test, killed when dropped.
pub struct Etcd {
    pub child: Child,
    pub endpoint: String,
    pub peer_url: String,
    pub dir: tempfile::TempDir,
}

impl Drop for Etcd {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

fn tcp_port() -> u16 {
    std::net::TcpListener::bind("127.0.0.1:0")
        .unwrap()
        .local_addr()
        .unwrap()
        .port()
}

/// Starts etcd and waits until it serves; `None` (said) when etcd is not installed.
pub fn start_etcd() -> Option<Etcd> {
    if Command::new("etcd").arg("--version").output().is_err() {
        eprintln!(
            "SKIPPED: the etcd binary is not installed (scripts/setup.sh installs Debian's etcd-server)"
        );
        return None;
    }
    for _ in 0..3 {
        let dir = tempfile::tempdir().unwrap();
        let endpoint = format!("http://127.0.0.1:{}", tcp_port());
        let peer_url = format!("http://127.0.0.1:{}", tcp_port());
        let data = dir.path().join("data");
        if let Some(e) = run_etcd(dir, &data, endpoint, peer_url) {
            return Some(e);
        }
    }
    panic!("etcd did not start in 3 attempts");
}

/// Runs etcd (member `e2e`) on `data` at the given URLs; `None` if it did not come up.
pub fn run_etcd(
    dir: tempfile::TempDir,
    data: &std::path::Path,
    endpoint: String,
    peer_url: String,
) -> Option<Etcd> {
    let cluster = format!("e2e={peer_url}");
    let child = spawn_etcd_member(dir.path(), data, "e2e", &endpoint, &peer_url, &cluster);
    let mut e = Etcd {
        child,
        endpoint,
        peer_url,
        dir,
    };
    e.wait_healthy(Duration::from_secs(20)).then_some(e)
}

/// Starts etcd member `name` of the cluster `initial_cluster` (`name=peer-url,…`), logging
/// to `<dir>/etcd.log`.
fn spawn_etcd_member(
    dir: &Path,
    data: &Path,
    name: &str,
    endpoint: &str,
    peer_url: &str,
    initial_cluster: &str,
) -> Child {
    let log = std::fs::OpenOptions::new()
        .create(true)
        .append(true)
        .open(dir.join("etcd.log"))
        .unwrap();
    Command::new("etcd")
        .args(["--name", name, "--data-dir"])
        .arg(data)
        .args(["--listen-client-urls", endpoint])
        .args(["--advertise-client-urls", endpoint])
        .args(["--listen-peer-urls", peer_url])
        .args(["--initial-advertise-peer-urls", peer_url])
        .args(["--initial-cluster", initial_cluster])
        .args(["--log-level", "error"])
        .stdout(log.try_clone().unwrap())
        .stderr(log)
        .stdin(Stdio::null())
        .spawn()
        .expect("starting etcd")
}

impl Etcd {
    /// Whether etcd answers its health endpoint (it does once the cluster has a leader)
    /// within `limit`; false at once if it exited.
    pub fn wait_healthy(&mut self, limit: Duration) -> bool {
        let deadline = Instant::now() + limit;
        while Instant::now() < deadline {
            if self.child.try_wait().ok().flatten().is_some() {
                return false;
            }
            let health = Command::new("curl")
                .args([
                    "-sf",
                    "--max-time",
                    "2",
                    &format!("{}/health", self.endpoint),
                ])
                .output();
            if health
                .is_ok_and(|o| o.status.success() && o.stdout.starts_with(b"{\"health\":\"true\""))
            {
                return true;
            }
            std::thread::sleep(Duration::from_millis(100));
        }
        false
    }
}

/// An etcd cluster of its own for one test, on loopback: `n` members, killed when dropped.
pub struct EtcdCluster {
    pub members: Vec<Etcd>,
    /// Every member's client URL, comma-separated (what `--datastore-endpoint` takes).
    pub endpoints: String,
}

/// Starts an etcd cluster of `n` members and waits until every member serves; `None` (said)
/// when etcd is not installed.
pub fn start_etcd_cluster(n: usize) -> Option<EtcdCluster> {
    if Command::new("etcd").arg("--version").output().is_err() {
        eprintln!(
            "SKIPPED: the etcd binary is not installed (scripts/setup.sh installs Debian's etcd-server)"
        );
        return None;
    }
    'attempt: for _ in 0..3 {
        let urls: Vec<(String, String)> = (0..n)
            .map(|_| {
                (
                    format!("http://127.0.0.1:{}", tcp_port()),
                    format!("http://127.0.0.1:{}", tcp_port()),
                )
            })
            .collect();
        let cluster = urls
            .iter()
            .enumerate()
            .map(|(i, (_, peer))| format!("m{i}={peer}"))
            .collect::<Vec<_>>()
            .join(",");
        // All members start before any can serve: a cluster needs its quorum.
        let mut members: Vec<Etcd> = urls
            .into_iter()
            .enumerate()
            .map(|(i, (endpoint, peer_url))| {
                let dir = tempfile::tempdir().unwrap();
                let data = dir.path().join("data");
                let child = spawn_etcd_member(
                    dir.path(),
                    &data,
                    &format!("m{i}"),
                    &endpoint,
                    &peer_url,
                    &cluster,
                );
                Etcd {
                    child,
                    endpoint,
                    peer_url,
                    dir,
                }
            })
            .collect();
        for m in &mut members {
            if !m.wait_healthy(Duration::from_secs(30)) {
                continue 'attempt;
            }
        }
        let endpoints = members
            .iter()
            .map(|m| m.endpoint.clone())
            .collect::<Vec<_>>()
            .join(",");
        return Some(EtcdCluster { members, endpoints });
    }
    panic!("an etcd cluster of {n} did not start in 3 attempts");
}

/// `KEDGE_E2E_DATASTORE=etcd` (`make test-etcd`): every cluster the tests start runs on an
/// etcd of its own instead of the embedded store.
pub fn on_etcd() -> bool {
    std::env::var("KEDGE_E2E_DATASTORE").is_ok_and(|v| v == "etcd")
}
