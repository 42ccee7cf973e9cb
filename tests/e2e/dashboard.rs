//! The dashboard at `/ui` in a real browser: Debian's headless Chromium, driven over the
//! DevTools protocol (a small client on tokio-tungstenite, below). A service account bound to
//! the read-only role of `manifests/dashboard-viewer.yaml` logs in with a token from `kubectl
//! create token`, sees the node, sees pods appear after `kubectl apply` without a reload,
//! follows a pod's log live, and sees a plugin swap; a refused token returns to the login form.
//! It prints the figures: first paint (navigation start to the nodes table rendered) and the
//! latency from `kubectl apply` to the pod's row in the DOM.
//!
//! The DevTools client is ~100 lines over tokio-tungstenite, already a dev-dependency: the
//! maintained crates (chromiumoxide, headless_chrome) bring generated bindings for the whole
//! protocol and their own dependency trees for the four commands used here (create and attach
//! a target, navigate or reload, evaluate, insert text).

use std::io::Write as _;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant, SystemTime, UNIX_EPOCH};

use futures_util::{SinkExt as _, StreamExt as _};
use serde_json::{Value, json};
use tokio_tungstenite::tungstenite::Message;
use tokio_tungstenite::tungstenite::client::IntoClientRequest as _;

use crate::harness::{Cluster, free_port, tail, wait_for};
use crate::plugins::{digest, rebuilt};

/// Longest wait for one DevTools command's answer.
const CALL_TIMEOUT: Duration = Duration::from_secs(30);
/// Longest wait for something to show in the page.
const PAGE_TIMEOUT: Duration = Duration::from_secs(60);

/// A headless Chromium with a profile of its own, killed (and its profile removed) on drop.
struct Chromium {
    child: Child,
    profile: tempfile::TempDir,
    log: PathBuf,
}

impl Chromium {
    fn start(log_dir: &Path) -> Chromium {
        let exe = std::env::var("KEDGE_CHROMIUM").unwrap_or_else(|_| "chromium".into());
        let profile = tempfile::tempdir().unwrap();
        let log = log_dir.join("chromium.log");
        let out = std::fs::File::create(&log).unwrap();
        let child = Command::new(&exe)
            .args([
                "--headless",
                // Tests run as root, where Chromium's sandbox cannot start.
                "--no-sandbox",
                "--disable-gpu",
                "--disable-dev-shm-usage",
                // The cluster's CA is self-signed and not in the browser's store.
                "--ignore-certificate-errors",
                "--no-first-run",
                "--no-default-browser-check",
                "--disable-extensions",
                "--disable-background-networking",
                "--disable-component-update",
                "--disable-sync",
                "--remote-debugging-address=127.0.0.1",
                "--remote-debugging-port=0",
            ])
            .arg(format!("--user-data-dir={}", profile.path().display()))
            .arg("about:blank")
            .stdin(Stdio::null())
            .stdout(out.try_clone().unwrap())
            .stderr(out)
            .spawn()
            .unwrap_or_else(|e| {
                panic!("starting {exe}: {e} (scripts/setup.sh installs Debian's chromium)")
            });
        Chromium {
            child,
            profile,
            log,
        }
    }

    /// The browser's DevTools WebSocket URL, from the file Chromium writes once it listens.
    fn devtools_url(&mut self) -> String {
        let file = self.profile.path().join("DevToolsActivePort");
        wait_for("Chromium's DevTools port", Duration::from_secs(30), || {
            if let Ok(Some(status)) = self.child.try_wait() {
                panic!(
                    "chromium exited ({status}):\n{}",
                    std::fs::read_to_string(&self.log).unwrap_or_default()
                );
            }
            let text = std::fs::read_to_string(&file).ok()?;
            let mut lines = text.lines();
            let (port, path) = (lines.next()?, lines.next()?);
            Some(format!("ws://127.0.0.1:{port}{path}"))
        })
    }
}

impl Drop for Chromium {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

/// A DevTools protocol client on one WebSocket, attached to one page (flattened session).
struct Cdp {
    rt: tokio::runtime::Runtime,
    ws: tokio_tungstenite::WebSocketStream<tokio::net::TcpStream>,
    next_id: u64,
    session: String,
    /// Events that arrived while waiting for answers (console messages, exceptions).
    events: Vec<Value>,
}

impl Cdp {
    fn connect(url: &str) -> Cdp {
        let rt = tokio::runtime::Builder::new_current_thread()
            .enable_all()
            .build()
            .unwrap();
        let ws = rt.block_on(async {
            let req = url.into_client_request().unwrap();
            let addr = format!(
                "{}:{}",
                req.uri().host().unwrap(),
                req.uri().port_u16().unwrap()
            );
            let tcp = tokio::net::TcpStream::connect(addr).await.unwrap();
            let (ws, _) =
                tokio::time::timeout(CALL_TIMEOUT, tokio_tungstenite::client_async(req, tcp))
                    .await
                    .expect("DevTools handshake in time")
                    .expect("DevTools handshake");
            ws
        });
        let mut cdp = Cdp {
            rt,
            ws,
            next_id: 0,
            session: String::new(),
            events: Vec::new(),
        };
        let target = cdp.call(None, "Target.createTarget", json!({"url": "about:blank"}));
        let attached = cdp.call(
            None,
            "Target.attachToTarget",
            json!({"targetId": target["targetId"], "flatten": true}),
        );
        cdp.session = attached["sessionId"].as_str().unwrap().to_string();
        cdp.page("Page.enable", json!({}));
        cdp.page("Runtime.enable", json!({}));
        cdp
    }

    /// One command (to the browser, or to a page's session) and its result.
    fn call(&mut self, session: Option<&str>, method: &str, params: Value) -> Value {
        self.try_call(session, method, params)
            .unwrap_or_else(|e| panic!("{method}: {e}"))
    }

    /// One command and its result, or the error the browser answered with.
    fn try_call(
        &mut self,
        session: Option<&str>,
        method: &str,
        params: Value,
    ) -> Result<Value, Value> {
        self.next_id += 1;
        let id = self.next_id;
        let mut msg = json!({"id": id, "method": method, "params": params});
        if let Some(s) = session {
            msg["sessionId"] = json!(s);
        }
        let (ws, events) = (&mut self.ws, &mut self.events);
        self.rt.block_on(async {
            ws.send(Message::Text(msg.to_string().into()))
                .await
                .expect("DevTools send");
            let deadline = tokio::time::Instant::now() + CALL_TIMEOUT;
            loop {
                let m = tokio::time::timeout_at(deadline, ws.next())
                    .await
                    .unwrap_or_else(|_| panic!("{method}: no answer within {CALL_TIMEOUT:?}"))
                    .expect("DevTools connection closed")
                    .expect("DevTools read");
                let Message::Text(text) = m else { continue };
                let v: Value = serde_json::from_str(text.as_str()).expect("DevTools JSON");
                if v["id"] == id {
                    if let Some(e) = v.get("error") {
                        return Err(e.clone());
                    }
                    return Ok(v["result"].clone());
                }
                if v.get("method").is_some() {
                    events.push(v);
                }
            }
        })
    }

    fn page(&mut self, method: &str, params: Value) -> Value {
        let session = self.session.clone();
        self.call(Some(&session), method, params)
    }

    /// The value of a JavaScript expression in the page (promises awaited).
    fn eval(&mut self, expr: &str) -> Value {
        self.try_eval(expr)
            .unwrap_or_else(|e| panic!("Runtime.evaluate {expr}: {e}"))
    }

    /// Like `eval`, but the browser's refusal is returned: an evaluation that was under way
    /// when the page navigated is answered "Inspected target navigated or closed".
    fn try_eval(&mut self, expr: &str) -> Result<Value, Value> {
        let session = self.session.clone();
        let r = self.try_call(
            Some(&session),
            "Runtime.evaluate",
            json!({"expression": expr, "returnByValue": true, "awaitPromise": true}),
        )?;
        if let Some(e) = r.get("exceptionDetails") {
            panic!("evaluating {expr}: {e}");
        }
        Ok(r["result"]["value"].clone())
    }

    /// Evaluates `expr` until it is neither null, undefined, false nor ""; bounded. While a
    /// navigation or reload is under way the document may not have the elements yet: an
    /// exception then counts as "not yet", and so does an evaluation the navigation cut off
    /// (the browser answers it with an error, code -32000).
    fn wait_js(&mut self, what: &str, expr: &str) -> Value {
        let start = Instant::now();
        let guarded =
            format!("(() => {{ try {{ return ({expr}); }} catch (e) {{ return null; }} }})()");
        loop {
            let v = match self.try_eval(&guarded) {
                Ok(v) => v,
                Err(e) if e["code"] == json!(-32000) && start.elapsed() < PAGE_TIMEOUT => {
                    std::thread::sleep(Duration::from_millis(20));
                    continue;
                }
                Err(e) => panic!("waiting for {what}: Runtime.evaluate: {e}"),
            };
            if !v.is_null() && v != json!(false) && v != json!("") {
                return v;
            }
            if start.elapsed() > PAGE_TIMEOUT {
                let body = self.eval("document.body ? document.body.innerText : ''");
                panic!(
                    "timed out after {PAGE_TIMEOUT:?} waiting for {what} ({expr})\n--- page ---\n{}\n--- console ---\n{}",
                    body.as_str().unwrap_or_default(),
                    self.console()
                );
            }
            std::thread::sleep(Duration::from_millis(20));
        }
    }

    fn navigate(&mut self, url: &str) {
        self.page("Page.navigate", json!({"url": url}));
        self.wait_js("the page to load", "document.readyState === 'complete'");
    }

    /// Console messages and uncaught exceptions seen so far, one a line.
    fn console(&self) -> String {
        self.events
            .iter()
            .filter_map(|e| match e["method"].as_str()? {
                "Runtime.consoleAPICalled" => Some(format!(
                    "console.{}: {}",
                    e["params"]["type"].as_str().unwrap_or_default(),
                    e["params"]["args"]
                )),
                "Runtime.exceptionThrown" => {
                    Some(format!("exception: {}", e["params"]["exceptionDetails"]))
                }
                _ => None,
            })
            .collect::<Vec<_>>()
            .join("\n")
    }

    fn exceptions(&self) -> usize {
        self.events
            .iter()
            .filter(|e| e["method"] == "Runtime.exceptionThrown")
            .count()
    }
}

/// JavaScript for the text of the row `key` in the table of `section`, or null.
fn row_text(section: &str, key: &str) -> String {
    format!(
        "(() => {{ const r = document.querySelector('#{section} tr[data-key=\"{key}\"]'); return r ? r.innerText : null; }})()"
    )
}

/// Opens a view with its tab, as a user clicks it.
fn show(cdp: &mut Cdp, view: &str) {
    cdp.eval(&format!(
        "document.querySelector('nav a[data-view=\"{view}\"]').click()"
    ));
    cdp.wait_js(
        &format!("the {view} view"),
        &format!("!document.querySelector('.view[data-view=\"{view}\"]').hidden"),
    );
}

/// The sections show no error line (a refused or failed request would).
fn assert_no_error(cdp: &mut Cdp, sections: &[&str]) {
    for section in sections {
        let err = cdp.eval(&format!(
            "document.querySelector('[data-error=\"{section}\"]').textContent"
        ));
        assert_eq!(err, json!(""), "{section} shows an error");
    }
}

fn epoch_ms() -> f64 {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .unwrap()
        .as_secs_f64()
        * 1000.0
}

fn median(v: &mut [f64]) -> f64 {
    v.sort_by(f64::total_cmp);
    v[v.len() / 2]
}

fn pod_yaml(name: &str, listen: Option<u16>) -> String {
    let env = listen.map_or(String::new(), |p| {
        format!("\n    env:\n    - {{name: HELLO_LISTEN, value: \"127.0.0.1:{p}\"}}")
    });
    format!(
        "apiVersion: v1\nkind: Pod\nmetadata: {{name: {name}, labels: {{app: dash}}}}\nspec:\n  containers:\n  - name: hello\n    image: kedge.dev/samples/hello-wasm:v1{env}\n"
    )
}

#[test]
fn dashboard_in_headless_chromium() {
    let mut c = Cluster::start();
    let token = c.token.clone();
    c.start_agent("dash-node", &token);
    c.wait("node Ready", || {
        let out = c.kubectl(&[
            "get",
            "node",
            "dash-node",
            "-o",
            "jsonpath={.status.conditions[?(@.type==\"Ready\")].status}",
        ]);
        (out.ok && out.stdout.trim() == "True").then_some(())
    });
    // A read-only service account, as the README tells operators to make one.
    let viewer = crate::harness::repo().join("manifests/dashboard-viewer.yaml");
    c.k(&["apply", "-f", viewer.to_str().unwrap()]);
    let bearer = c.k(&[
        "create",
        "token",
        "dashboard",
        "-n",
        "kube-system",
        "--duration=30m",
    ]);
    let bearer = bearer.trim();

    let mut browser = Chromium::start(c.dir.path());
    let mut cdp = Cdp::connect(&browser.devtools_url());
    let ui = format!("https://{}:{}/ui", c.host, c.port);

    // The page itself is served without a token; it asks for one.
    cdp.navigate(&ui);
    cdp.wait_js(
        "the login form",
        "!document.querySelector('#login-view').hidden",
    );
    cdp.eval("document.querySelector('#token').focus()");
    cdp.page("Input.insertText", json!({"text": bearer}));
    cdp.eval("document.querySelector('#login button[type=submit]').click()");
    let who = cdp.wait_js(
        "the signed-in user",
        "document.querySelector('#whoami').textContent.includes('system:serviceaccount:kube-system:dashboard') && document.querySelector('#whoami').textContent",
    );
    println!("dashboard: logged in {who}");
    // The node, Ready, with its tunnel up (its lease renewed), when it was last seen, and the
    // address the server sees its tunnel come from.
    let node = cdp.wait_js(
        "the node listed Ready with its tunnel connected",
        &format!(
            "(() => {{ const t = {}; return t && t.includes('True') && t.includes('connected') && t.includes('ago') && t.includes('tunnel from 127.0.0.1:') ? t : null; }})()",
            row_text("nodes", "dash-node")
        ),
    );
    println!("dashboard: node row: {node}");
    assert_no_error(&mut cdp, &["nodes", "pods"]);

    // First paint: the token is in the tab's sessionStorage, so a reload goes straight to
    // the data. performance.now() counts from navigation start.
    let mut paints = Vec::new();
    for _ in 0..5 {
        cdp.page("Page.reload", json!({"ignoreCache": true}));
        let ms = cdp.wait_js(
            "the nodes table after a reload",
            "window.kedgeMarks && window.kedgeMarks.nodesRendered",
        );
        paints.push(ms.as_f64().unwrap());
    }
    let paint = median(&mut paints);
    println!(
        "dashboard: first paint (navigation start -> nodes table rendered): median {paint:.0} ms of {paints:?}"
    );

    // From here on the page is not reloaded: a marker on window would be gone if it were.
    cdp.eval("window.notReloaded = true");
    let requests = "JSON.stringify([window.kedgeMarks.lists, window.kedgeMarks.watches])";
    cdp.wait_js(
        "the nodes view's three watches",
        "['nodes', 'leases', 'pods'].every((k) => window.kedgeMarks.watches[k] === 1)",
    );
    let before = cdp.eval(requests);
    let port = free_port();
    let mut latencies = Vec::new();
    for i in 0..5 {
        let name = format!("dash-pod-{i}");
        let listen = (i == 0).then_some(port);
        let started = epoch_ms();
        let applied = c.kubectl_stdin(&["apply", "-f", "-"], Some(&pod_yaml(&name, listen)));
        let returned = epoch_ms() - started;
        assert!(applied.ok, "{}", applied.stderr);
        let key = format!("default/{name}");
        let seen = cdp.wait_js(
            &format!("{name} in the pods table"),
            &format!("window.notReloaded && window.kedgeMarks.podSeen['{key}']"),
        );
        let latency = seen.as_f64().unwrap() - started;
        println!(
            "dashboard: kubectl apply -> {name} row in the DOM: {latency:.0} ms (kubectl itself returned after {returned:.0} ms)"
        );
        latencies.push(latency);
    }
    let update = median(&mut latencies);
    println!(
        "dashboard: update latency (kubectl apply -> pod row): median {update:.0} ms of {latencies:?}"
    );
    // The pods run, under their node, without a reload.
    for i in 0..5 {
        cdp.wait_js(
            &format!("dash-pod-{i} Running"),
            &format!(
                "window.notReloaded && (() => {{ const r = document.querySelector('#pods [data-node=\"dash-node\"] tr[data-key=\"default/dash-pod-{i}\"]'); return r && r.innerText.includes('Running') && r.innerText.includes('1/1'); }})()"
            ),
        );
    }
    // A deletion disappears the same way.
    c.k(&["delete", "pod", "dash-pod-4", "--wait=false"]);
    cdp.wait_js(
        "dash-pod-4 gone from the table",
        &format!(
            "window.notReloaded && {} === null",
            row_text("pods", "default/dash-pod-4")
        ),
    );

    // All of that came on the watches opened at first: no list or watch was made again.
    assert_eq!(cdp.eval(requests), before, "lists and watches per kind");

    // The log, live: the greeting printed at start, then a line the pod prints after the
    // log is open (asking its HTTP server to turn not-ready makes it print one).
    cdp.eval("document.querySelector('button[data-log=\"default/dash-pod-0\"]').click()");
    cdp.wait_js(
        "the pod's greeting in its log",
        "document.querySelector('#log-text').textContent.includes('hello from dash-pod-0 in default')",
    );
    wait_for("the pod's HTTP server", Duration::from_secs(30), || {
        let mut s = std::net::TcpStream::connect(("127.0.0.1", port)).ok()?;
        s.write_all(b"GET /ready/off HTTP/1.0\r\n\r\n").ok()?;
        Some(())
    });
    cdp.wait_js(
        "a line printed after the log was opened",
        "document.querySelector('#log-text').textContent.includes('ready: false')",
    );
    let state = cdp.eval("document.querySelector('#log-state').textContent");
    assert_eq!(state, json!("following…"), "the log stream ended early");

    // The Deployments view: a rollout to completion (replicas, updated, ready, available).
    let deployment = "apiVersion: apps/v1\nkind: Deployment\nmetadata: {name: dash-web}\nspec:\n  replicas: 2\n  selector: {matchLabels: {app: dash-web}}\n  template:\n    metadata: {labels: {app: dash-web}}\n    spec:\n      containers:\n      - {name: hello, image: \"kedge.dev/samples/hello-wasm:v1\"}\n";
    let applied = c.kubectl_stdin(&["apply", "-f", "-"], Some(deployment));
    assert!(applied.ok, "{}", applied.stderr);
    show(&mut cdp, "deployments");
    cdp.wait_js(
        "dash-web rolled out in the Deployments view",
        "window.notReloaded && (() => { const r = document.querySelector('#deployments tr[data-key=\"default/dash-web\"]'); return r && JSON.stringify([...r.cells].slice(2).map((c) => c.innerText)) === JSON.stringify(['2', '2', '2', '2', 'complete']); })()",
    );
    // Leaving the nodes view stopped its log stream and watches.
    assert_eq!(
        cdp.eval("document.querySelector('#log').hidden"),
        json!(true)
    );
    assert_no_error(&mut cdp, &["deployments"]);

    // A plugin swap: the replicaset controller from a file whose digest differs.
    show(&mut cdp, "plugins");
    let builtin = cdp.wait_js(
        "the replicaset plugin's digest",
        "(() => { const d = document.querySelector('#plugins tr[data-key=\"replicaset\"] [data-digest]'); return d && d.dataset.digest; })()",
    );
    let files = tempfile::tempdir().unwrap();
    let v2 = rebuilt(kedge::server::default_plugins::REPLICASET, "dashboard");
    let file = files.path().join("v2.wasm");
    std::fs::write(&file, &v2).unwrap();
    let want = digest(&v2);
    assert_ne!(builtin, json!(want));
    let applied = c.kubectl_stdin(
        &["apply", "-f", "-"],
        Some(&crate::plugins::plugin_yaml(&file)),
    );
    assert!(applied.ok, "{}", applied.stderr);
    let row = cdp.wait_js(
        "the swapped plugin's digest, phase and swap time",
        &format!(
            "window.notReloaded && (() => {{ const r = document.querySelector('#plugins tr[data-key=\"replicaset\"]'); const d = r && r.querySelector('[data-digest]'); return d && d.dataset.digest === '{want}' && r.innerText.includes('Active') && r.innerText.includes('file:') && r.innerText.includes('ago') ? r.innerText : null; }})()"
        ),
    );
    println!("dashboard: plugin row after the swap: {row}");
    assert_no_error(&mut cdp, &["plugins"]);
    // Events, newest first: the pods' scheduling shows.
    show(&mut cdp, "events");
    cdp.wait_js(
        "a Scheduled event of a dash pod",
        "document.querySelector('#events tbody').innerText.includes('pod/dash-pod-')",
    );
    let times = cdp.eval(
        "[...document.querySelectorAll('#events tbody tr')].map((r) => Date.parse(r.dataset.time) || 0)",
    );
    let times: Vec<f64> = times
        .as_array()
        .unwrap()
        .iter()
        .map(|t| t.as_f64().unwrap())
        .collect();
    assert!(
        times.windows(2).all(|w| w[0] >= w[1]),
        "events not newest first: {times:?}"
    );

    assert_no_error(&mut cdp, &["events"]);
    assert_eq!(
        cdp.exceptions(),
        0,
        "uncaught exceptions in the page:\n{}",
        cdp.console()
    );

    // A token the API refuses (401) returns to the login form, saying why.
    // The reload may cut off the evaluation that asked for it: that answer is an error.
    if let Err(e) = cdp.try_eval(
        "sessionStorage.setItem('kedge.dashboard.token', 'not-a-token'); location.reload()",
    ) {
        assert_eq!(e["code"], json!(-32000), "{e}");
    }
    let refused = cdp.wait_js(
        "the login form after a 401",
        "!document.querySelector('#login-view').hidden && document.querySelector('#login-error').textContent",
    );
    assert!(
        refused.as_str().unwrap().contains("401"),
        "{refused}\n--- server ---\n{}",
        tail(&c.server.log_text(), 20)
    );

    // A token without the role's rights: the view (still Events) says what RBAC refused.
    c.k(&["create", "serviceaccount", "nobody"]);
    let nobody = c.k(&["create", "token", "nobody", "--duration=10m"]);
    cdp.eval("document.querySelector('#token').focus()");
    cdp.page("Input.insertText", json!({"text": nobody.trim()}));
    cdp.eval("document.querySelector('#login button[type=submit]').click()");
    let forbidden = cdp.wait_js(
        "the events view's 403",
        "!document.querySelector('#dashboard').hidden && document.querySelector('[data-error=\"events\"]').textContent",
    );
    let forbidden = forbidden.as_str().unwrap();
    assert!(
        forbidden.contains("403") && forbidden.contains("cannot list resource \"events\""),
        "{forbidden}"
    );
    drop(cdp);
    drop(browser);
}
