//! `kubectl exec`, `attach` and `port-forward` with the real kubectl: through the API
//! server's WebSocket/SPDY endpoints, the QUIC tunnel and the agent, into runc containers
//! (busybox built in the test and pulled from a local registry) and a Wasm container.

use std::io::{BufRead as _, Read as _, Write as _};
use std::net::TcpStream;
use std::process::{Child, Command, Output, Stdio};
use std::time::Duration;

use kedge_registry::OciConfig;
use kedge_registry::testing::{TestRegistry, TestRegistryOptions, busybox_image_layer};
use serde_json::{Value, json};

use crate::harness::{Cluster, free_port};

/// kubectl with the cluster's kubeconfig, its exit status kept.
fn kubectl(c: &Cluster, args: &[&str], stdin: Option<&[u8]>) -> Output {
    let mut cmd = Command::new("kubectl");
    cmd.arg("--kubeconfig")
        .arg(&c.kubeconfig)
        .args(args)
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .stdin(if stdin.is_some() {
            Stdio::piped()
        } else {
            Stdio::null()
        });
    let mut child = cmd.spawn().expect("running kubectl");
    // Fed from a thread: kubectl's output must be read while its input is still going in.
    let feeder = stdin.map(|s| {
        let mut pipe = child.stdin.take().unwrap();
        let s = s.to_vec();
        std::thread::spawn(move || {
            let _ = pipe.write_all(&s);
        })
    });
    let out = wait_bounded(child, Duration::from_secs(60));
    if let Some(f) = feeder {
        f.join().unwrap();
    }
    out
}

/// Waits for a child (reading its output meanwhile), killing it past `limit` so a hung
/// stream fails the test instead of hanging it.
fn wait_bounded(child: Child, limit: Duration) -> Output {
    let pid = child.id();
    let (done_tx, done_rx) = std::sync::mpsc::channel::<()>();
    let watchdog = std::thread::spawn(move || {
        let timed_out = done_rx.recv_timeout(limit).is_err();
        if timed_out {
            let _ = Command::new("kill").arg(pid.to_string()).status();
        }
        timed_out
    });
    let out = child.wait_with_output().unwrap();
    let _ = done_tx.send(());
    if watchdog.join().unwrap() {
        panic!(
            "command did not finish within {limit:?}; stdout: {}; stderr: {}",
            tail(&out.stdout),
            tail(&out.stderr)
        );
    }
    out
}

fn tail(b: &[u8]) -> String {
    let t = text(b);
    let start = t.len().saturating_sub(2000);
    t.get(start..).unwrap_or(&t).to_string()
}

fn text(b: &[u8]) -> String {
    String::from_utf8_lossy(b).into_owned()
}

fn create(c: &Cluster, obj: &Value) {
    let r = c.kubectl_stdin(&["create", "-f", "-"], Some(&obj.to_string()));
    assert!(r.ok, "creating {obj}: {}", r.stderr);
}

fn pod(name: &str, image: &str, script: &str) -> Value {
    json!({
        "apiVersion": "v1", "kind": "Pod",
        "metadata": {"name": name},
        "spec": {"containers": [{"name": "main", "image": image, "command": ["sh", "-c", script]}]},
    })
}

fn running(c: &Cluster, name: &str) -> bool {
    let r = c.kubectl(&["get", "pod", name, "-o", "json"]);
    let Ok(p) = serde_json::from_str::<Value>(&r.stdout) else {
        return false;
    };
    p.pointer("/status/phase") == Some(&json!("Running"))
        && p.pointer("/status/containerStatuses/0/ready") == Some(&json!(true))
}

/// What `seq 1 n` prints.
fn seq(n: u32) -> Vec<u8> {
    (1..=n)
        .map(|i| format!("{i}\n"))
        .collect::<String>()
        .into_bytes()
}

/// One HTTP/1.0 GET on `port` (busybox httpd closes after the response); the body.
fn http_get(port: u16, path: &str) -> Vec<u8> {
    let mut s = TcpStream::connect(("127.0.0.1", port)).expect("connecting to the forward");
    s.set_read_timeout(Some(Duration::from_secs(30))).unwrap();
    write!(s, "GET {path} HTTP/1.0\r\nHost: x\r\n\r\n").unwrap();
    let mut all = Vec::new();
    s.read_to_end(&mut all).expect("reading the response");
    let split = all
        .windows(4)
        .position(|w| w == b"\r\n\r\n")
        .unwrap_or_else(|| panic!("no HTTP header in {:?}", text(&all[..all.len().min(200)])));
    let head = text(&all[..split]);
    assert!(
        head.starts_with("HTTP/1.") && head.contains(" 200 "),
        "{head}"
    );
    all[split + 4..].to_vec()
}

/// Starts `kubectl port-forward` and waits for its "Forwarding from" line.
fn port_forward(c: &Cluster, target: &str, ports: &str) -> Child {
    port_forward_with(c, target, ports, &[])
}

fn port_forward_with(c: &Cluster, target: &str, ports: &str, env: &[(&str, &str)]) -> Child {
    let mut child = Command::new("kubectl")
        .envs(env.iter().copied())
        .arg("--kubeconfig")
        .arg(&c.kubeconfig)
        .args(["port-forward", target, ports])
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .stdin(Stdio::null())
        .spawn()
        .unwrap();
    let mut out = std::io::BufReader::new(child.stdout.take().unwrap());
    let mut line = String::new();
    out.read_line(&mut line).unwrap();
    assert!(
        line.contains("Forwarding from"),
        "port-forward said {line:?}"
    );
    // Keep draining stdout ("Handling connection for ...") so kubectl never blocks on it.
    std::thread::spawn(move || std::io::copy(&mut out, &mut std::io::sink()));
    child
}

/// A cluster with one agent, node-a, that pulls from a local registry holding busybox (the
/// image reference returned).
fn busybox_cluster() -> (TestRegistry, Cluster, String) {
    kedge_tunnel::install_crypto_provider();
    let rt = tokio::runtime::Runtime::new().unwrap();
    let reg = TestRegistry::start(TestRegistryOptions { auth: false }).expect("test registry");
    let host = reg.host();
    let config = OciConfig {
        cmd: vec!["sh".into()],
        env: vec!["PATH=/bin".into()],
        ..Default::default()
    };
    rt.block_on(reg.push_oci_image(
        "apps/busybox:v1",
        &[busybox_image_layer().unwrap()],
        &config,
    ))
    .expect("pushing busybox");
    let busybox = format!("{host}/apps/busybox:v1");

    let mut c = Cluster::start();
    let registries = c.dir.path().join("registries.yaml");
    std::fs::write(
        &registries,
        format!(
            "configs:\n  \"{host}\":\n    tls:\n      ca_file: {}\n",
            reg.ca_file.display()
        ),
    )
    .unwrap();
    let token = c.token.clone();
    c.start_agent_with(
        "node-a",
        &token,
        &["--registries-config", registries.to_str().unwrap()],
    );
    (reg, c, busybox)
}

#[test]
fn exec_attach_and_port_forward_through_the_tunnel() {
    let (_reg, c, busybox) = busybox_cluster();

    // Pods share the node's network: the web server's port must be free on this host.
    let web_port = free_port();
    create(
        &c,
        &pod(
            "shell",
            &busybox,
            &format!(
                "busybox mkdir -p /www && busybox seq 1 300000 > /www/big && echo small > /www/small \
                 && exec busybox httpd -f -p 127.0.0.1:{web_port} -h /www"
            ),
        ),
    );
    create(
        &c,
        &pod(
            "ticker",
            &busybox,
            "i=0; while true; do echo tick $i; i=$((i+1)); sleep 0.3; done",
        ),
    );
    create(
        &c,
        &json!({
            "apiVersion": "v1", "kind": "Pod", "metadata": {"name": "wasm"},
            "spec": {"containers": [{"name": "hello", "image": "kedge.dev/samples/hello-wasm:v1"}]},
        }),
    );
    for p in ["shell", "ticker", "wasm"] {
        c.wait(&format!("{p} Running"), || running(&c, p).then_some(()));
    }

    // exec: output on both streams, exit code propagated (kubectl exits with it).
    let out = kubectl(
        &c,
        &[
            "exec",
            "shell",
            "--",
            "sh",
            "-c",
            "echo hi; echo oops >&2; exit 3",
        ],
        None,
    );
    assert_eq!(out.status.code(), Some(3), "stderr: {}", text(&out.stderr));
    assert_eq!(text(&out.stdout), "hi\n");
    assert!(text(&out.stderr).contains("oops"), "{}", text(&out.stderr));
    let out = kubectl(&c, &["exec", "shell", "--", "true"], None);
    assert!(out.status.success(), "{}", text(&out.stderr));

    // Large output arrives whole and in order.
    let out = kubectl(
        &c,
        &["exec", "shell", "--", "busybox", "seq", "1", "100000"],
        None,
    );
    assert!(out.status.success(), "{}", text(&out.stderr));
    assert!(
        out.stdout == seq(100_000),
        "seq output differs ({} bytes)",
        out.stdout.len()
    );

    // stdin: piped in, closed at its end (v5 close frame), so `cat` finishes. 8 MiB is more
    // than the tunnel's buffers hold: input and output must flow at the same time.
    let input: Vec<u8> = (0..2_000_000u32)
        .flat_map(|i| (i % 251).to_le_bytes())
        .collect();
    let out = kubectl(&c, &["exec", "-i", "shell", "--", "cat"], Some(&input));
    assert!(out.status.success(), "{}", text(&out.stderr));
    assert!(
        out.stdout == input,
        "stdin echoed back differs ({} bytes)",
        out.stdout.len()
    );

    // -it: the command gets a real terminal (runc's pty, inside the container).
    let out = kubectl_in_tty(&c, "exec -it shell -- busybox tty");
    assert!(
        text(&out.stdout).contains("/dev/pts/"),
        "tty said: {} / {}\n--- agent log ---\n{}\n--- server log ---\n{}",
        text(&out.stdout),
        text(&out.stderr),
        crate::harness::tail(&c.agents[0].log_text(), 30),
        crate::harness::tail(&c.server.log_text(), 30),
    );

    // With a tty too the exit code comes back (`script -e` passes kubectl's on).
    let out = kubectl_in_tty(&c, "exec -it shell -- sh -c 'stty size; exit 4'");
    assert_eq!(
        out.status.code(),
        Some(4),
        "{} / {}",
        text(&out.stdout),
        text(&out.stderr)
    );

    // A command that does not exist: runc's complaint and a non-zero exit.
    let out = kubectl(&c, &["exec", "shell", "--", "/no/such/cmd"], None);
    assert!(!out.status.success());

    // A Wasm container holds one program: exec starts it again with the exec's arguments
    // (and the container's env), through the tunnel, exit code and all.
    let out = kubectl(
        &c,
        &["exec", "wasm", "--", "hello", "--once", "a", "b"],
        None,
    );
    assert!(out.status.success(), "{}", text(&out.stderr));
    assert_eq!(text(&out.stdout), "hello from wasm in default args=a b\n");
    // Anything else is not there to run, and there is no terminal: clear errors.
    let out = kubectl(&c, &["exec", "wasm", "--", "sh"], None);
    assert!(!out.status.success());
    assert!(
        text(&out.stderr).contains("must begin with its name, \"hello\""),
        "{}",
        text(&out.stderr)
    );
    // (kubectl asks for a tty only when it has one itself: `script` gives it one.)
    let out = kubectl_in_tty(&c, "exec -it wasm -- hello --once");
    assert!(!out.status.success());
    assert!(
        text(&out.stdout).contains("has no terminal"),
        "{} / {}",
        text(&out.stdout),
        text(&out.stderr)
    );

    // attach: the main process's output as it is produced, until we leave.
    let child = Command::new("kubectl")
        .arg("--kubeconfig")
        .arg(&c.kubeconfig)
        .args(["attach", "ticker"])
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .stdin(Stdio::null())
        .spawn()
        .unwrap();
    let pid = child.id();
    std::thread::spawn(move || {
        std::thread::sleep(Duration::from_secs(3));
        let _ = Command::new("kill").arg(pid.to_string()).status();
    });
    let out = child.wait_with_output().unwrap();
    assert!(
        text(&out.stdout).contains("tick"),
        "attach printed: {} / {}",
        text(&out.stdout),
        text(&out.stderr)
    );
    let out = kubectl(&c, &["attach", "-i", "ticker"], None);
    assert!(!out.status.success());

    // port-forward: several connections, a large body compared byte for byte.
    let local = free_port();
    let mut pf = port_forward(&c, "pod/shell", &format!("{local}:{web_port}"));
    assert_eq!(http_get(local, "/small"), b"small\n");
    let expected = seq(300_000);
    for _ in 0..3 {
        let got = http_get(local, "/big");
        assert!(
            got == expected,
            "forwarded body differs ({} bytes)",
            got.len()
        );
    }
    // Concurrent connections.
    let threads: Vec<_> = (0..4)
        .map(|_| std::thread::spawn(move || http_get(local, "/big").len()))
        .collect();
    for t in threads {
        assert_eq!(t.join().unwrap(), expected.len());
    }
    let _ = pf.kill();
    let _ = pf.wait();

    // A port nobody listens on: the connection is closed and kubectl reports why.
    let closed = free_port();
    let local = free_port();
    let mut pf = port_forward(&c, "pod/shell", &format!("{local}:{closed}"));
    let mut s = TcpStream::connect(("127.0.0.1", local)).unwrap();
    s.set_read_timeout(Some(Duration::from_secs(20))).unwrap();
    let mut buf = Vec::new();
    let _ = s.read_to_end(&mut buf);
    assert!(buf.is_empty());
    let _ = pf.kill();
    let out = pf.wait_with_output().unwrap();
    assert!(
        text(&out.stderr)
            .to_lowercase()
            .contains("connection refused"),
        "{}",
        text(&out.stderr)
    );

    // The Python client: v4.channel.k8s.io for exec and for port-forward.
    let python = Command::new("python3")
        .args(["-c", "import kubernetes"])
        .output()
        .expect("python3 is needed for this test");
    assert!(
        python.status.success(),
        "the Python `kubernetes` client is missing: `pip install kubernetes` (make setup does)"
    );
    let child = Command::new("python3")
        .arg(crate::harness::repo().join("tests/e2e/python/streams.py"))
        .arg(&c.kubeconfig)
        .arg("shell")
        .arg(web_port.to_string())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .unwrap();
    let out = wait_bounded(child, Duration::from_secs(120));
    assert!(
        out.status.success() && text(&out.stdout).contains("all checks passed"),
        "python streams failed:\n{}\n{}\n--- server ---\n{}",
        text(&out.stdout),
        text(&out.stderr),
        crate::harness::tail(&c.server.log_text(), 20)
    );

    // kubectl's fallback: SPDY/3.1 on an upgraded HTTP connection instead of WebSocket.
    let local = free_port();
    let mut pf = port_forward_with(
        &c,
        "pod/shell",
        &format!("{local}:{web_port}"),
        &[("KUBECTL_PORT_FORWARD_WEBSOCKETS", "false")],
    );
    let got = http_get(local, "/big");
    assert!(
        got == expected,
        "forwarded body differs ({} bytes)",
        got.len()
    );
    let _ = pf.kill();
    let _ = pf.wait();
}

/// `kubectl port-forward` to a Wasm pod: the sample serves HTTP over WASI sockets on the
/// node's network, reached through the tunnel like a container's port.
#[test]
fn port_forward_reaches_a_wasm_pod() {
    let mut c = Cluster::start();
    let token = c.token.clone();
    c.start_agent("node-a", &token);
    let port = free_port();
    create(
        &c,
        &json!({"apiVersion": "v1", "kind": "Pod", "metadata": {"name": "wasm-web"},
            "spec": {"containers": [{"name": "web", "image": "kedge.dev/samples/hello-wasm:v1",
                "env": [{"name": "HELLO_LISTEN", "value": format!("127.0.0.1:{port}")}]}]}}),
    );
    c.wait("the Wasm server listening", || {
        let log = kubectl(&c, &["logs", "wasm-web"], None);
        text(&log.stdout).contains("listening on").then_some(())
    });
    let local = free_port();
    let mut pf = port_forward(&c, "pod/wasm-web", &format!("{local}:{port}"));
    for _ in 0..2 {
        assert_eq!(http_get(local, "/"), b"hello from wasm-web in default\n");
    }
    let _ = pf.kill();
    let _ = pf.wait();
}

/// `kubectl ARGS` run under `script`, which gives it a terminal (kubectl asks the server for
/// a tty only when it has one itself); `script -e` passes kubectl's exit code on, and its
/// stdout carries everything kubectl wrote.
fn kubectl_in_tty(c: &Cluster, args: &str) -> std::process::Output {
    let cmd = format!("kubectl --kubeconfig {} {args}", c.kubeconfig.display());
    let child = Command::new("script")
        .args(["-qec", &cmd, "/dev/null"])
        .stdin(Stdio::null())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .unwrap();
    wait_bounded(child, Duration::from_secs(60))
}

/// A running `kubectl attach -i`: its stdin to write to, its stdout read line by line on a
/// thread (so a missing line fails the test instead of hanging it).
struct Attached {
    child: Child,
    stdin: Option<std::process::ChildStdin>,
    lines: std::sync::mpsc::Receiver<String>,
}

impl Attached {
    fn start(c: &Cluster, args: &[&str]) -> Attached {
        let mut child = Command::new("kubectl")
            .arg("--kubeconfig")
            .arg(&c.kubeconfig)
            .args(args)
            .stdin(Stdio::piped())
            .stdout(Stdio::piped())
            .stderr(Stdio::null())
            .spawn()
            .unwrap();
        let out = std::io::BufReader::new(child.stdout.take().unwrap());
        let (tx, lines) = std::sync::mpsc::channel();
        std::thread::spawn(move || {
            for l in out.lines().map_while(Result::ok) {
                if tx.send(l).is_err() {
                    return;
                }
            }
        });
        Attached {
            stdin: child.stdin.take(),
            child,
            lines,
        }
    }

    fn send(&mut self, line: &str) {
        let w = self.stdin.as_mut().expect("stdin still open");
        writeln!(w, "{line}").unwrap();
        w.flush().unwrap();
    }

    /// Waits (bounded) for `want` among the output lines; what came before it is returned.
    fn expect(&self, want: &str) -> Vec<String> {
        let mut seen = Vec::new();
        let deadline = std::time::Instant::now() + Duration::from_secs(30);
        while let Some(left) = deadline.checked_duration_since(std::time::Instant::now()) {
            match self.lines.recv_timeout(left) {
                Ok(l) if l.trim_end_matches('\r') == want => return seen,
                Ok(l) => seen.push(l),
                Err(_) => break,
            }
        }
        panic!("attach never printed {want:?}; it printed {seen:?}");
    }

    fn stop(mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

fn stdin_pod(name: &str, image: &str, script: &str, extra: Value) -> Value {
    let mut container = json!({"name": "main", "image": image, "command": ["sh", "-c", script],
        "stdin": true});
    for (k, v) in extra.as_object().unwrap() {
        container[k] = v.clone();
    }
    json!({
        "apiVersion": "v1", "kind": "Pod",
        "metadata": {"name": name},
        "spec": {"restartPolicy": "Never", "containers": [container]},
    })
}

/// `kubectl attach -i` (and `-it`) into the main process of a container started with `stdin:
/// true`: its stdin stays open across sessions, `stdinOnce` closes it when the first session's
/// input ends, `tty: true` gives it a terminal. A container without `stdin: true` refuses.
#[test]
fn attach_feeds_the_stdin_of_the_main_process() {
    let (_reg, c, busybox) = busybox_cluster();
    create(
        &c,
        &stdin_pod(
            "reader",
            &busybox,
            "while read l; do echo got:$l; done; echo eof; exec sleep 3600",
            json!({}),
        ),
    );
    create(
        &c,
        &stdin_pod(
            "once",
            &busybox,
            "while read l; do echo got:$l; done; echo eof",
            json!({"stdinOnce": true}),
        ),
    );
    create(
        &c,
        &stdin_pod(
            "term",
            &busybox,
            "while read l; do [ -t 0 ] && echo tty:$l; [ \"$l\" = quit ] && exit 0; done",
            json!({"tty": true}),
        ),
    );
    create(&c, &pod("closed", &busybox, "exec sleep 3600"));
    for p in ["reader", "once", "term", "closed"] {
        c.wait(&format!("{p} Running"), || running(&c, p).then_some(()));
    }

    // Without stdinOnce: a session's input ending (and the session itself) leaves the stdin
    // open for the next one.
    let mut a = Attached::start(&c, &["attach", "-i", "reader"]);
    a.send("one");
    a.expect("got:one");
    a.stdin = None;
    std::thread::sleep(Duration::from_millis(500));
    a.stop();
    let mut b = Attached::start(&c, &["attach", "-i", "reader"]);
    b.send("two");
    let before = b.expect("got:two");
    assert!(!before.iter().any(|l| l == "eof"), "{before:?}");
    b.stop();

    // stdinOnce: the end of the first session's input is the process's EOF; it exits and the
    // attach ends with it.
    let out = kubectl(&c, &["attach", "-i", "once"], Some(b"a\nb\n"));
    assert!(out.status.success(), "{}", text(&out.stderr));
    assert_eq!(text(&out.stdout), "got:a\ngot:b\neof\n");

    // -it: a terminal (`[ -t 0 ]`), fed through kubectl's own terminal (`script`).
    let cmd = format!(
        "kubectl --kubeconfig {} attach -it term",
        c.kubeconfig.display()
    );
    let mut child = Command::new("script")
        .args(["-qec", &cmd, "/dev/null"])
        .stdin(Stdio::piped())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .unwrap();
    let mut input = child.stdin.take().unwrap();
    let (release, held) = std::sync::mpsc::channel::<()>();
    let typist = std::thread::spawn(move || {
        // kubectl connects first; what is typed meanwhile waits in the terminal.
        std::thread::sleep(Duration::from_secs(2));
        input.write_all(b"hello\n").unwrap();
        std::thread::sleep(Duration::from_secs(1));
        input.write_all(b"quit\n").unwrap();
        // Held open until kubectl is done: script's EOF would end the session early.
        let _ = held.recv();
    });
    let out = wait_bounded(child, Duration::from_secs(60));
    let _ = release.send(());
    typist.join().unwrap();
    assert!(
        text(&out.stdout).contains("tty:hello"),
        "attach -it said: {} / {}\n--- agent log ---\n{}",
        text(&out.stdout),
        text(&out.stderr),
        crate::harness::tail(&c.agents[0].log_text(), 30),
    );

    // A container whose stdin is closed: a clear refusal.
    let out = kubectl(&c, &["attach", "-i", "closed"], Some(b"x\n"));
    assert!(!out.status.success());
    assert!(
        text(&out.stderr).contains("not started with stdin open"),
        "{}",
        text(&out.stderr)
    );
}
