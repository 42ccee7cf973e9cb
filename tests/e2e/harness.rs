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

/// Like [`spawn`], inside a network namespace (`ip netns exec`, which execs kedge itself,
/// so the pid is still kedge's).
pub fn spawn_in(netns: Option<&str>, name: &str, dir: &Path, args: &[&str]) -> Proc {
    let log = dir.join(format!("{name}.log"));
    let out = std::fs::File::create(&log).unwrap();
    let mut cmd = match netns {
        Some(ns) => {
            let mut c = Command::new("ip");
            c.args(["netns", "exec", ns, KEDGE]);
            c
        }
        None => Command::new(KEDGE),
    };
    let child = cmd
        .args(args)
        .env("RUST_LOG", "info,kedge=debug")
        .stdout(out.try_clone().unwrap())
        .stderr(out)
        .stdin(Stdio::null())
        .spawn()
        .unwrap_or_else(|e| panic!("starting {KEDGE}: {e}"));
    Proc {
        name: name.to_string(),
        child: Some(child),
        log,
    }
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
}

pub struct Kubectl {
    pub ok: bool,
    pub stdout: String,
    pub stderr: String,
}

impl Cluster {
    pub fn start() -> Cluster {
        Cluster::start_on("127.0.0.1")
    }

    /// A server listening on `host` (an address of this machine), in its certificate too.
    pub fn start_on(host: &str) -> Cluster {
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
        let cache = plugin_cache();
        let server = spawn(
            "server",
            dir.path(),
            &[
                "server",
                "--data-dir",
                data.to_str().unwrap(),
                "--listen",
                &listen,
                "--plugin-cache-dir",
                cache.to_str().unwrap(),
                "--tls-san",
                host,
            ],
        );
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
        let data = self.dir.path().join(name);
        let server = format!("{}:{}", self.host, self.port);
        let mut args = vec![
            "agent",
            "--server",
            &server,
            "--token",
            token,
            "--name",
            name,
            "--data-dir",
            data.to_str().unwrap(),
        ];
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
