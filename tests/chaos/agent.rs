//! Campaign 1, the agent's part: the agent killed with SIGKILL while it pulls an image and
//! while it rewrites its local records (the pod cache, the object cache of ConfigMaps and
//! Secrets, the pods' `configMap`/`secret` volumes, the image store), and restarted on the
//! same data directory. After each restart the agent must keep running and be Ready again,
//! run its pods again (the one whose pull was cut short included), give the volumes the
//! latest ConfigMap and Secret, and its image store must hold only whole blobs: every file
//! under `images/blobs/sha256/` hashes to its name, every unpacked root filesystem is whole.
//!
//! Each cycle pushes a new image with a few MB of incompressible bytes to a private registry
//! on loopback (an OCI image run by runc, or, without runc, the Wasm sample with the bytes in
//! a custom section), deletes the previous cycle's pod, creates one of the new image, and
//! kills the agent either at a random moment of the window in which it pulls, unpacks and
//! starts it, or at a random moment once it runs, while a writer updates the ConfigMap and
//! the Secret every 50 ms and the agent rewrites its copies and the volumes every second. A
//! pod deleted before a kill must be gone after the restart, its directories too.
//!
//! Short form (CI): 5 kills. Long form: `KEDGE_CHAOS_AGENT_CYCLES=100 cargo test -p kedge
//! --test chaos -- agent::`. `KEDGE_CHAOS_AGENT_WINDOW_MS` sets the window the kills aimed at
//! the pull fall in (900 ms), and `KEDGE_CHAOS_AGENT_WASM=1` pulls Wasm images only, as on a
//! machine without runc.

use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::time::{Duration, Instant};

use base64::Engine as _;
use kedge::kubeclient::KubeClient;
use kedge_registry::OciConfig;
use kedge_registry::testing::{TestRegistry, TestRegistryOptions, busybox_image_layer, file_layer};
use rand::rngs::StdRng;
use rand::{Rng, SeedableRng};
use serde_json::{Value, json};
use sha2::{Digest as _, Sha256};

use crate::harness::{Cluster, containers_unavailable, tail};
use crate::server::{knob, p50_max, poll_for, seed};

const NODE: &str = "chaos-node";
const NS: &str = "default";
const CONFIG: &str = "chaos-config";
const SECRET: &str = "chaos-secret";
/// The incompressible bytes each cycle's image carries: big enough that its pull and
/// unpack take a measurable time on loopback.
const PAYLOAD_LEN: usize = 8 << 20;
/// How long after the pod's creation the kill may land (the pull, unpack and start of the
/// image fall in it on this kind of machine; `KEDGE_CHAOS_AGENT_WINDOW_MS` changes it).
const KILL_WINDOW_MS: u64 = 900;
/// Generous, for a 2-core machine building in parallel: waits end as soon as their condition
/// holds.
const WAIT: Duration = Duration::from_secs(60);

/// The value the writer stores as the ConfigMap's and the Secret's `value` for number `n`:
/// the number and a pad derived from it, so a torn or mixed file cannot pass for a whole one.
fn value(n: u64) -> String {
    format!("{n}:{}", format!("{n:012}").repeat(64))
}

/// The number of a whole value, or why it is not one.
fn number_of(text: &str) -> Result<u64, String> {
    let (n, pad) = text
        .split_once(':')
        .ok_or_else(|| format!("no number in {:?}", trunc(text)))?;
    let n: u64 = n
        .parse()
        .map_err(|_| format!("bad number in {:?}", trunc(text)))?;
    if pad != format!("{n:012}").repeat(64) {
        return Err(format!("torn value {:?}", trunc(text)));
    }
    Ok(n)
}

fn trunc(s: &str) -> &str {
    &s[..s.len().min(40)]
}

/// Writes the ConfigMap and the Secret every 50 ms until stopped; `acked` is the last number
/// both were acknowledged with.
struct Writer {
    stop: Arc<AtomicBool>,
    acked: Arc<AtomicU64>,
    thread: Option<std::thread::JoinHandle<u64>>,
}

impl Writer {
    fn start(kubeconfig: &Path, first: u64) -> Writer {
        let stop = Arc::new(AtomicBool::new(false));
        let acked = Arc::new(AtomicU64::new(first.saturating_sub(1)));
        let client = KubeClient::from_kubeconfig(kubeconfig).unwrap();
        let (s, a) = (stop.clone(), acked.clone());
        let thread = std::thread::spawn(move || {
            let rt = tokio::runtime::Builder::new_current_thread()
                .enable_all()
                .build()
                .unwrap();
            rt.block_on(async {
                let mut n = first;
                // Bounded: stopped by the campaign, and never more than 10 minutes.
                let deadline = Instant::now() + Duration::from_secs(600);
                while !s.load(Ordering::SeqCst) && Instant::now() < deadline {
                    if write_objects(&client, n).await.is_ok() {
                        a.store(n, Ordering::SeqCst);
                        n += 1;
                    }
                    tokio::time::sleep(Duration::from_millis(50)).await;
                }
                n
            })
        });
        Writer {
            stop,
            acked,
            thread: Some(thread),
        }
    }

    /// Stops the writer; the last number acknowledged and the next free one.
    fn stop(mut self) -> (u64, u64) {
        self.stop.store(true, Ordering::SeqCst);
        let next = self.thread.take().unwrap().join().expect("writer thread");
        (self.acked.load(Ordering::SeqCst), next)
    }
}

/// Sets the ConfigMap's and the Secret's `value` to [`value`]`(n)`.
async fn write_objects(client: &KubeClient, n: u64) -> Result<(), String> {
    let v = value(n);
    let b64 = base64::engine::general_purpose::STANDARD.encode(&v);
    for (path, body) in [
        (
            format!("/api/v1/namespaces/{NS}/configmaps/{CONFIG}"),
            json!({"data": {"value": v}}),
        ),
        (
            format!("/api/v1/namespaces/{NS}/secrets/{SECRET}"),
            json!({"data": {"value": b64}}),
        ),
    ] {
        let call = client.request(
            http::Method::PATCH,
            &path,
            "application/merge-patch+json",
            Some(&body),
        );
        match tokio::time::timeout(Duration::from_secs(10), call).await {
            Ok(Ok((200, _))) => {}
            Ok(Ok((code, body))) => return Err(format!("{path}: {code} {body}")),
            Ok(Err(e)) => return Err(format!("{path}: {e}")),
            Err(_) => return Err(format!("{path}: timed out")),
        }
    }
    Ok(())
}

/// A pod on the chaos node mounting the ConfigMap and the Secret.
fn pod(name: &str, image: &str, oci: bool) -> Value {
    let mut p = json!({
        "apiVersion": "v1", "kind": "Pod",
        "metadata": {"name": name, "namespace": NS, "labels": {"chaos": "agent"}},
        "spec": {
            "nodeName": NODE,
            "terminationGracePeriodSeconds": 1,
            "containers": [{
                "name": "main", "image": image, "imagePullPolicy": "IfNotPresent",
                "volumeMounts": [
                    {"name": "cfg", "mountPath": "/etc/cfg"},
                    {"name": "sec", "mountPath": "/etc/sec"},
                ],
            }],
            "volumes": [
                {"name": "cfg", "configMap": {"name": CONFIG}},
                {"name": "sec", "secret": {"secretName": SECRET}},
            ],
        },
    });
    if oci {
        p["spec"]["containers"][0]["command"] = json!([
            "sh",
            "-c",
            "trap 'exit 0' TERM; while true; do sleep 1; done"
        ]);
    }
    p
}

/// `kedge push` of the Wasm sample to `image` on the registry; with `payload`, carried in a
/// custom section appended to the component (still the same program, a new and bigger
/// artifact: a real pull).
fn push_hello(reg: &TestRegistry, image: &str, payload: Option<&[u8]>) {
    let mut wasm = PathBuf::from(env!("KEDGE_WASM_DIR")).join("hello-wasm.wasm");
    let dir = tempfile::tempdir().unwrap();
    if let Some(payload) = payload {
        let mut bytes = std::fs::read(&wasm).unwrap();
        let name = b"kedge-chaos";
        let mut section = vec![name.len() as u8];
        section.extend_from_slice(name);
        section.extend_from_slice(payload);
        bytes.push(0); // a custom section
        let mut size = section.len();
        loop {
            let byte = (size & 0x7f) as u8;
            size >>= 7;
            if size == 0 {
                bytes.push(byte);
                break;
            }
            bytes.push(byte | 0x80);
        }
        bytes.extend_from_slice(&section);
        wasm = dir.path().join("hello-chaos.wasm");
        std::fs::write(&wasm, bytes).unwrap();
    }
    crate::harness::push_wasm(reg, &wasm, image);
}

/// Polls `f` until it holds or `timeout` passes; whether it held.
fn wait_until(timeout: Duration, mut f: impl FnMut() -> bool) -> bool {
    poll_for(timeout, || f().then_some(())).is_some()
}

/// The campaign's view of the cluster: the API through a client, the node's data dir.
struct Probe<'a> {
    rt: &'a tokio::runtime::Runtime,
    client: KubeClient,
    node_dir: PathBuf,
}

impl Probe<'_> {
    fn get(&self, path: &str) -> Option<Value> {
        let call = self.client.request(http::Method::GET, path, "", None);
        match self
            .rt
            .block_on(async { tokio::time::timeout(Duration::from_secs(10), call).await })
        {
            Ok(Ok((200, v))) => Some(v),
            _ => None,
        }
    }

    /// Ready again since `since`: the Lease renewed after it, the Ready condition True.
    fn ready_since(&self, since: chrono::DateTime<chrono::Utc>) -> bool {
        let renewed = self
            .get(&format!(
                "/apis/coordination.k8s.io/v1/namespaces/kube-node-lease/leases/{NODE}"
            ))
            .and_then(|l| {
                let t = l.pointer("/spec/renewTime")?.as_str()?;
                chrono::DateTime::parse_from_rfc3339(t).ok()
            })
            .is_some_and(|t| t > since);
        renewed
            && self.get(&format!("/api/v1/nodes/{NODE}")).is_some_and(|n| {
                n.pointer("/status/conditions")
                    .and_then(Value::as_array)
                    .into_iter()
                    .flatten()
                    .any(|c| c["type"] == "Ready" && c["status"] == "True")
            })
    }

    fn pod(&self, name: &str) -> Option<Value> {
        self.get(&format!("/api/v1/namespaces/{NS}/pods/{name}"))
    }

    fn running(&self, name: &str) -> bool {
        self.pod(name).is_some_and(|p| {
            p.pointer("/status/phase") == Some(&json!("Running"))
                && p.pointer("/status/containerStatuses")
                    .and_then(Value::as_array)
                    .is_some_and(|cs| cs.iter().all(|s| s["ready"] == true))
        })
    }

    /// The pod's directories on the node, on disk and in memory (as the agent lays them
    /// out).
    fn pod_dirs(&self, pod: &Value) -> [PathBuf; 2] {
        let uid = pod
            .pointer("/metadata/uid")
            .and_then(Value::as_str)
            .unwrap();
        let name = pod
            .pointer("/metadata/name")
            .and_then(Value::as_str)
            .unwrap();
        let disk = self
            .node_dir
            .join("pods")
            .join(format!("{NS}_{name}_{uid}"));
        let shm = Path::new("/dev/shm");
        let memory = if shm.is_dir() {
            shm.join("kedge").join(uid)
        } else {
            disk.join("memory")
        };
        [disk, memory]
    }

    /// The files of the pod's ConfigMap and Secret volumes.
    fn volume_dirs(&self, pod: &Value) -> [PathBuf; 2] {
        let [disk, memory] = self.pod_dirs(pod);
        [
            disk.join("volumes/cfg/value"),
            memory.join("volumes/sec/value"),
        ]
    }

    /// Whether a deleted pod is gone: from the API, and its directories from the node.
    fn gone(&self, name: &str, dirs: &[PathBuf]) -> bool {
        self.pod(name).is_none() && dirs.iter().all(|d| !d.exists())
    }

    /// What the pod's volumes hold: the number of each whole value, an error for a torn one,
    /// `None` for a file not (yet) there.
    fn volume_numbers(&self, name: &str) -> Vec<Option<Result<u64, String>>> {
        let Some(p) = self.pod(name) else {
            return vec![None, None];
        };
        self.volume_dirs(&p)
            .iter()
            .map(|f| {
                std::fs::read_to_string(f)
                    .ok()
                    .map(|t| number_of(&t).map_err(|e| format!("{}: {e}", f.display())))
            })
            .collect()
    }

    /// What the pod's volume directories hold besides `..data`, its target and `value`:
    /// leftovers of interrupted writes, which the next write of the volume removes.
    fn volume_leftovers(&self, name: &str) -> Vec<String> {
        let Some(p) = self.pod(name) else {
            return Vec::new();
        };
        let mut left = Vec::new();
        for file in self.volume_dirs(&p) {
            let dir = file.parent().unwrap();
            let current = std::fs::read_link(dir.join("..data")).unwrap_or_default();
            for e in std::fs::read_dir(dir).into_iter().flatten().flatten() {
                let n = e.file_name();
                if n != "..data" && n != "value" && Path::new(&n) != current {
                    left.push(e.path().display().to_string());
                }
            }
        }
        left
    }

    /// Whether the pod logged a line containing `needle` stamped after `since` (the CRI log
    /// lines start with an RFC 3339 time).
    fn logged_since(&self, name: &str, since: chrono::DateTime<chrono::Utc>, needle: &str) -> bool {
        fn walk(d: &Path, out: &mut Vec<PathBuf>) {
            for e in std::fs::read_dir(d).into_iter().flatten().flatten() {
                let p = e.path();
                if p.is_dir() {
                    walk(&p, out);
                } else if p.extension().is_some_and(|x| x == "log") {
                    out.push(p);
                }
            }
        }
        let mut logs = Vec::new();
        for e in std::fs::read_dir(self.node_dir.join("pods"))
            .into_iter()
            .flatten()
            .flatten()
        {
            if e.file_name()
                .to_string_lossy()
                .starts_with(&format!("{NS}_{name}_"))
            {
                walk(&e.path(), &mut logs);
            }
        }
        logs.iter().any(|f| {
            std::fs::read_to_string(f)
                .unwrap_or_default()
                .lines()
                .any(|l| {
                    l.contains(needle)
                        && l.split_whitespace()
                            .next()
                            .and_then(|t| chrono::DateTime::parse_from_rfc3339(t).ok())
                            .is_some_and(|t| t > since)
                })
        })
    }

    /// Whether a pull or unpack is in progress: the image store's `tmp/` is not empty.
    fn pulling(&self) -> bool {
        std::fs::read_dir(self.node_dir.join("images/tmp"))
            .map(|mut d| d.next().is_some())
            .unwrap_or(false)
    }

    /// What is wrong with the node's records: blobs that do not hash to their name, a
    /// root filesystem with a short payload, records that do not parse.
    fn torn_records(&self) -> Vec<String> {
        let mut bad = Vec::new();
        let images = self.node_dir.join("images");
        let mut blobs = 0;
        for e in std::fs::read_dir(images.join("blobs/sha256"))
            .into_iter()
            .flatten()
            .flatten()
        {
            blobs += 1;
            let name = e.file_name().to_string_lossy().into_owned();
            match std::fs::read(e.path()) {
                Ok(bytes) => {
                    let actual = hex::encode(Sha256::digest(&bytes));
                    if actual != name {
                        bad.push(format!(
                            "blob {name} ({} bytes) hashes to {actual}",
                            bytes.len()
                        ));
                    }
                }
                // Removed by the image GC between listing and reading.
                Err(e) if e.kind() == std::io::ErrorKind::NotFound => {}
                Err(e) => bad.push(format!("blob {name}: {e}")),
            }
        }
        if blobs == 0 {
            // The steady pod's image at least is there: the store is not where it was.
            bad.push(format!(
                "no blobs under {}",
                images.join("blobs/sha256").display()
            ));
        }
        for e in std::fs::read_dir(images.join("rootfs"))
            .into_iter()
            .flatten()
            .flatten()
        {
            let payload = e.path().join("payload");
            if let Ok(m) = std::fs::metadata(&payload)
                && m.len() != PAYLOAD_LEN as u64
            {
                bad.push(format!(
                    "{} is {} bytes, not {PAYLOAD_LEN}",
                    payload.display(),
                    m.len()
                ));
            }
        }
        match std::fs::read(images.join("index.json")) {
            Ok(b) if serde_json::from_slice::<Value>(&b).is_err() => {
                bad.push("images/index.json does not parse".into())
            }
            _ => {}
        }
        for e in std::fs::read_dir(self.node_dir.join("pod-cache"))
            .into_iter()
            .flatten()
            .flatten()
        {
            let p = e.path();
            if p.extension().is_some_and(|x| x == "json")
                && let Ok(b) = std::fs::read(&p)
                && serde_json::from_slice::<Value>(&b).is_err()
            {
                bad.push(format!("{} does not parse", p.display()));
            }
        }
        let copy = self
            .node_dir
            .join(format!("object-cache/configmaps/{NS}_{CONFIG}.json"));
        if let Ok(b) = std::fs::read(&copy) {
            match serde_json::from_slice::<Value>(&b) {
                Ok(v) => {
                    if let Err(e) = number_of(v["data"]["value"].as_str().unwrap_or("")) {
                        bad.push(format!("{}: {e}", copy.display()));
                    }
                }
                Err(_) => bad.push(format!("{} does not parse", copy.display())),
            }
        }
        let sealed = self
            .node_dir
            .join(format!("object-cache/secrets/{NS}_{SECRET}.json"));
        if let Ok(b) = std::fs::read(&sealed)
            && !b.starts_with(b"kedge:enc:aesgcm:v1:")
        {
            bad.push(format!("{} is not a sealed copy", sealed.display()));
        }
        bad
    }
}

#[test]
fn the_agent_restarts_clean_after_sigkill() {
    let _serial = crate::server::one_at_a_time();
    let cycles = knob("KEDGE_CHAOS_AGENT_CYCLES", 5);
    let window = knob("KEDGE_CHAOS_AGENT_WINDOW_MS", KILL_WINDOW_MS).max(1);
    let mut rng = StdRng::seed_from_u64(seed("agent"));
    let began = Instant::now();
    if let Err(e) = kedge_registry::testing::registry_available() {
        println!("agent: SKIPPED, no test registry on this machine: {e}");
        return;
    }
    kedge_tunnel::install_crypto_provider();
    let rt = tokio::runtime::Builder::new_multi_thread()
        .worker_threads(2)
        .enable_all()
        .build()
        .unwrap();
    let reg = TestRegistry::start(TestRegistryOptions { auth: true }).expect("test registry");
    let host = reg.host();
    // OCI images (runc) make the pulls big; without runc, new tags of the Wasm sample still
    // go through the pull path.
    let oci = match containers_unavailable() {
        None if knob("KEDGE_CHAOS_AGENT_WASM", 0) == 1 => {
            println!("agent: pulling Wasm images only (KEDGE_CHAOS_AGENT_WASM=1)");
            false
        }
        None => true,
        Some(why) => {
            println!("agent: pulling Wasm images only (no OCI containers here: {why})");
            false
        }
    };
    let busybox = oci.then(|| busybox_image_layer().expect("busybox layer"));
    let steady_image = format!("{host}/apps/hello:v1");
    push_hello(&reg, &steady_image, None);

    let mut c = Cluster::start();
    let registries = c.dir.path().join("registries.yaml");
    std::fs::write(
        &registries,
        format!(
            "configs:\n  \"{host}\":\n    auth:\n      username: {}\n      password: {}\n    tls:\n      ca_file: {}\n",
            reg.username,
            reg.password,
            reg.ca_file.display()
        ),
    )
    .unwrap();
    let token = c.token.clone();
    let registries_arg = registries.display().to_string();
    let agent_args = [
        "--registries-config",
        registries_arg.as_str(),
        // The copies and the volumes rewritten every second, so kills land among the writes.
        "--object-refresh-seconds",
        "1",
    ];
    c.start_agent_with(NODE, &token, &agent_args);
    let probe = Probe {
        rt: &rt,
        client: KubeClient::from_kubeconfig(&c.kubeconfig).unwrap(),
        node_dir: c.dir.path().join(NODE),
    };
    let agent_log = |c: &mut Cluster| tail(&c.agent(NODE).log_text(), 60);
    c.k(&[
        "create",
        "configmap",
        CONFIG,
        &format!("--from-literal=value={}", value(0)),
    ]);
    c.k(&[
        "create",
        "secret",
        "generic",
        SECRET,
        &format!("--from-literal=value={}", value(0)),
    ]);
    let created = c.kubectl_stdin(
        &["create", "-f", "-"],
        Some(&pod("steady", &steady_image, false).to_string()),
    );
    assert!(created.ok, "creating the steady pod: {}", created.stderr);
    if !wait_until(WAIT, || probe.running("steady")) {
        panic!(
            "the steady Wasm pod never ran\n--- agent log ---\n{}",
            agent_log(&mut c)
        );
    }

    let mut next = 1u64;
    let (mut mid_pull, mut mid_start, mut mid_write) = (0u64, 0u64, 0u64);
    let mut pods_restarted = 0u64;
    let mut ready_times = Vec::new();
    let mut anomalies: Vec<String> = Vec::new();
    let mut previous: Option<String> = None;
    for cycle in 0..cycles {
        // The previous cycle's pod is deleted as this one starts: the kill may land in its
        // stop too.
        let deleted = previous.take().map(|p| {
            let dirs = probe
                .pod(&p)
                .map(|v| probe.pod_dirs(&v))
                .unwrap_or_default();
            c.k(&["delete", "pod", &p, "--wait=false"]);
            (p, dirs)
        });
        // A new image for this cycle: a pull the node has not done yet.
        let name = format!("pull-{cycle}");
        let mut payload = vec![0u8; PAYLOAD_LEN];
        rng.fill(&mut payload[..]);
        let image = if let Some(busybox) = &busybox {
            let layers = [busybox.clone(), file_layer("payload", &payload).unwrap()];
            let config = OciConfig {
                cmd: vec!["sh".into()],
                env: vec!["PATH=/bin".into()],
                ..Default::default()
            };
            let image = format!("apps/chaos:c{cycle}");
            rt.block_on(reg.push_oci_image(&image, &layers, &config))
                .expect("pushing the cycle's image");
            format!("{host}/{image}")
        } else {
            let image = format!("{host}/apps/hello:c{cycle}");
            push_hello(&reg, &image, Some(&payload));
            image
        };

        let writer = Writer::start(&c.kubeconfig, next);
        let created = c.kubectl_stdin(
            &["create", "-f", "-"],
            Some(&pod(&name, &image, busybox.is_some()).to_string()),
        );
        assert!(created.ok, "creating {name}: {}", created.stderr);
        previous = Some(name.clone());
        // Half the kills aim at the pull and the pod's start, half at a running pod (the
        // records' writes alone).
        if rng.random_bool(0.5) {
            std::thread::sleep(Duration::from_millis(rng.random_range(0..window)));
        } else {
            wait_until(WAIT, || probe.running(&name));
            std::thread::sleep(Duration::from_millis(rng.random_range(0..1000)));
        }
        // What the kill interrupts: a download or unpack (the store's `tmp/` in use), the
        // pod's start (watch, pull set-up, volumes, container), or, the pod running, the
        // writes of the records alone.
        if probe.pulling() {
            mid_pull += 1;
        } else if !probe.running(&name) {
            mid_start += 1;
        } else {
            mid_write += 1;
        }
        c.agent(NODE).crash();
        c.agents.retain(|a| a.name != NODE);

        // The restart, on the same data dir.
        let restarted = chrono::Utc::now();
        let t = Instant::now();
        c.start_agent_with(NODE, &token, &agent_args);
        let ready = wait_until(WAIT, || {
            if !c.agent(NODE).is_running() {
                return true;
            }
            probe.ready_since(restarted)
        });
        if !c.agent(NODE).is_running() {
            anomalies.push(format!("cycle {cycle}: the agent exited after its restart"));
        } else if !ready {
            anomalies.push(format!(
                "cycle {cycle}: the node was not Ready again within {WAIT:?}"
            ));
        } else {
            ready_times.push(t.elapsed());
        }
        let (acked, next_free) = writer.stop();
        next = next_free;
        if anomalies.is_empty() {
            // The steady Wasm pod ran in the killed process: it must start again.
            if wait_until(WAIT, || {
                probe.logged_since("steady", restarted, "hello from")
            }) {
                pods_restarted += 1;
            } else {
                anomalies.push(format!(
                    "cycle {cycle}: the steady pod did not start again after the restart"
                ));
            }
            // The pod whose image the kill may have cut short runs.
            if wait_until(WAIT, || probe.running(&name)) {
                pods_restarted += 1;
            } else {
                anomalies.push(format!(
                    "cycle {cycle}: {name} ({image}) is not Running after the restart: {}",
                    probe
                        .pod(&name)
                        .map(|p| p["status"].to_string())
                        .unwrap_or_default()
                ));
            }
        }
        if let Some((p, dirs)) = &deleted
            && !wait_until(WAIT, || probe.gone(p, dirs))
        {
            anomalies.push(format!(
                "cycle {cycle}: {p}, deleted before the kill, is not gone after the restart \
                 (in the API: {}, directories left: {:?})",
                probe.pod(p).is_some(),
                dirs.iter().filter(|d| d.exists()).collect::<Vec<_>>()
            ));
        }
        // What the volumes hold now is whole, and nothing newer than acknowledged.
        for pod in ["steady", name.as_str()] {
            for n in probe.volume_numbers(pod).into_iter().flatten() {
                match n {
                    Ok(n) if n > acked + 1 => anomalies.push(format!(
                        "cycle {cycle}: {pod}'s volume holds value {n}, never written (last {acked})"
                    )),
                    Ok(_) => {}
                    Err(e) => anomalies.push(format!("cycle {cycle}: {pod}: {e}")),
                }
            }
        }
        // One more update after the restart: the volumes must come to show it.
        let last = next;
        next += 1;
        if let Err(e) = rt.block_on(write_objects(&probe.client, last)) {
            anomalies.push(format!("cycle {cycle}: updating the objects: {e}"));
        }
        if anomalies.is_empty() {
            for pod in ["steady", name.as_str()] {
                let fresh = wait_until(WAIT, || {
                    probe
                        .volume_numbers(pod)
                        .iter()
                        .all(|n| matches!(n, Some(Ok(n)) if *n == last))
                });
                if !fresh {
                    anomalies.push(format!(
                        "cycle {cycle}: {pod}'s volumes hold {:?}, not the latest value {last}",
                        probe.volume_numbers(pod)
                    ));
                }
                // That write removed what interrupted ones left.
                let left = probe.volume_leftovers(pod);
                if !left.is_empty() {
                    anomalies.push(format!(
                        "cycle {cycle}: {pod}'s volumes keep leftovers after a write: {left:?}"
                    ));
                }
            }
        }
        for bad in probe.torn_records() {
            anomalies.push(format!("cycle {cycle}: {bad}"));
        }
        assert!(
            anomalies.is_empty(),
            "agent campaign, cycle {cycle} (seed replays it):\n{}\n--- agent log ---\n{}",
            anomalies.join("\n"),
            agent_log(&mut c)
        );
    }
    // The pods deleted with the agent up leave nothing on the node either.
    let dirs: Vec<PathBuf> = ["steady".to_string()]
        .into_iter()
        .chain(previous)
        .filter_map(|p| probe.pod(&p))
        .flat_map(|p| probe.pod_dirs(&p))
        .collect();
    c.k(&["delete", "pods", "-l", "chaos=agent", "--wait=false"]);
    if !wait_until(WAIT, || {
        probe
            .get(&format!("/api/v1/namespaces/{NS}/pods"))
            .is_some_and(|l| l["items"].as_array().is_some_and(Vec::is_empty))
            && dirs.iter().all(|d| !d.exists())
    }) {
        anomalies.push(format!(
            "the pods deleted at the end are not gone: directories left {:?}",
            dirs.iter().filter(|d| d.exists()).collect::<Vec<_>>()
        ));
    }
    assert!(
        anomalies.is_empty(),
        "agent campaign, at the end:\n{}\n--- agent log ---\n{}",
        anomalies.join("\n"),
        agent_log(&mut c)
    );
    println!(
        "agent: {cycles} SIGKILL cycles in {:.0} s ({} images): kills mid-pull {mid_pull}, \
         mid-start {mid_start}, mid-write {mid_write}; restart to Ready: {}; pods running again: {pods_restarted}; \
         anomalies: {} (torn blobs, records or volumes, pods not back)",
        began.elapsed().as_secs_f64(),
        if oci { "OCI" } else { "Wasm" },
        p50_max(&ready_times),
        anomalies.len()
    );
}
