//! Plugins as API objects: hot swap, refusal, rollback and restart, first in-process against
//! the plugin manager, then through the real kubectl while a Deployment keeps scaling.

use std::sync::Arc;
use std::time::{Duration, Instant};

use kedge::api::ops::{Api, WriteOptions, system_clock};
use kedge::core::resources::by_kind;
use kedge::plugins::manager::PluginManager;
use kedge::plugins::{PluginConfig, PluginHost, Tier};
use kedge::store::redb::{Options, RedbStore};
use serde_json::{Value, json};
use tokio_util::sync::CancellationToken;

use crate::harness::Cluster;

const REPLICASET: &[u8] = kedge::server::default_plugins::REPLICASET;
const BROKEN: &[u8] = include_bytes!(concat!(
    env!("KEDGE_WASM_DIR"),
    "/kedge_fixture_plugin_broken.wasm"
));
const TEMPLATE_PATH: &str = concat!(env!("KEDGE_WASM_DIR"), "/kedge_sample_plugin_template.wasm");

static BUILTINS: &[(&str, &[u8])] = &[("replicaset", REPLICASET)];

/// The same component with a custom section appended: identical behaviour, another digest —
/// what a rebuilt plugin looks like to the host.
pub(crate) fn rebuilt(bytes: &[u8], tag: &str) -> Vec<u8> {
    fn leb(mut n: usize, out: &mut Vec<u8>) {
        loop {
            let b = (n & 0x7f) as u8;
            n >>= 7;
            if n == 0 {
                out.push(b);
                return;
            }
            out.push(b | 0x80);
        }
    }
    let name = b"kedge-test-version";
    let mut body = Vec::new();
    leb(name.len(), &mut body);
    body.extend_from_slice(name);
    body.extend_from_slice(tag.as_bytes());
    let mut out = bytes.to_vec();
    out.push(0);
    leb(body.len(), &mut out);
    out.extend_from_slice(&body);
    out
}

pub(crate) fn digest(bytes: &[u8]) -> String {
    use sha2::{Digest, Sha256};
    format!("sha256:{}", hex::encode(Sha256::digest(bytes)))
}

struct InProcess {
    api: Arc<Api>,
    manager: Arc<PluginManager>,
    host: Arc<PluginHost>,
    cancel: CancellationToken,
}

async fn start(dir: &std::path::Path) -> InProcess {
    start_with_cache(dir, crate::harness::plugin_cache()).await
}

async fn start_with_cache(dir: &std::path::Path, cache: std::path::PathBuf) -> InProcess {
    let store = RedbStore::open(&dir.join("s.redb"), Options::default()).unwrap();
    let api = Arc::new(Api::new(Arc::new(store), system_clock()));
    let _ = api.create(
        by_kind("v1", "Namespace").unwrap(),
        "",
        json!({"metadata": {"name": "default"}}),
        &WriteOptions::default(),
    );
    let cancel = CancellationToken::new();
    let config = PluginConfig {
        call_deadline: Duration::from_millis(1000),
        memory_limit: 32 << 20,
        cache_dir: Some(cache),
        baseline_compiler: true,
    };
    let host = Arc::new(PluginHost::new(api.clone(), config, cancel.clone()).unwrap());
    let manager =
        PluginManager::new(host.clone(), api.clone(), BUILTINS, dir, Default::default()).unwrap();
    manager.install_builtins().await.unwrap();
    manager.start().await;
    InProcess {
        api,
        manager,
        host,
        cancel,
    }
}

impl InProcess {
    fn plugin(&self) -> Value {
        self.api
            .get(
                by_kind("plugins.kedge.io/v1", "Plugin").unwrap(),
                "",
                "replicaset",
            )
            .unwrap()
    }

    /// Changes the plugin's spec with a merge patch (as `kubectl apply` would).
    fn patch_spec(&self, spec: Value) {
        let res = by_kind("plugins.kedge.io/v1", "Plugin").unwrap();
        // The manager writes status meanwhile: retry on conflicts, as kubectl would.
        for _ in 0..100 {
            let mut obj = self.plugin();
            json_patch::merge(&mut obj["spec"], &spec);
            match self
                .api
                .update(res, "", "replicaset", obj, None, &WriteOptions::default())
            {
                Ok(_) => return,
                Err(e) if e.code == 409 => continue,
                Err(e) => panic!("{e}"),
            }
        }
        panic!("kept conflicting");
    }

    /// Waits until the status matches `f` for the current generation.
    async fn wait_status(&self, what: &str, f: impl Fn(&Value) -> bool) -> Value {
        let deadline = Instant::now() + Duration::from_secs(30);
        loop {
            let p = self.plugin();
            if p["status"]["observedGeneration"] == p["metadata"]["generation"] && f(&p["status"]) {
                return p;
            }
            assert!(
                Instant::now() < deadline,
                "timed out waiting for {what}; plugin: {p:#}"
            );
            tokio::time::sleep(Duration::from_millis(50)).await;
        }
    }

    fn pods(&self, rs: &str) -> usize {
        let pods = by_kind("v1", "Pod").unwrap();
        let list = self.api.list(pods, "default", &Default::default()).unwrap();
        list["items"]
            .as_array()
            .unwrap()
            .iter()
            .filter(|p| p["metadata"]["ownerReferences"][0]["name"] == rs)
            .count()
    }

    async fn wait_pods(&self, rs: &str, n: usize) {
        let deadline = Instant::now() + Duration::from_secs(30);
        while self.pods(rs) != n {
            assert!(
                Instant::now() < deadline,
                "replicaset {rs} has {} pods, want {n}",
                self.pods(rs)
            );
            tokio::time::sleep(Duration::from_millis(50)).await;
        }
    }

    /// Creates ReplicaSet `name` in default: `replicas` pods labelled `app: <name>`.
    fn create_replicaset(&self, name: &str, replicas: u32) {
        self.api
            .create(
                by_kind("apps/v1", "ReplicaSet").unwrap(),
                "default",
                json!({"metadata": {"name": name}, "spec": {"replicas": replicas,
                    "selector": {"matchLabels": {"app": name}},
                    "template": {"metadata": {"labels": {"app": name}},
                        "spec": {"containers": [{"name": "c", "image": "x:1"}]}}}}),
                &WriteOptions::default(),
            )
            .unwrap();
    }

    fn scale(&self, rs: &str, replicas: u32) {
        let res = by_kind("apps/v1", "ReplicaSet").unwrap();
        let scale = json!({"spec": {"replicas": replicas}});
        self.api
            .patch(
                res,
                "default",
                rs,
                None,
                &scale,
                kedge::core::patch::PatchType::Merge,
                &WriteOptions::default(),
            )
            .unwrap();
    }

    fn events(&self, reason: &str) -> Vec<String> {
        let res = by_kind("v1", "Event").unwrap();
        let list = self.api.list(res, "default", &Default::default()).unwrap();
        list["items"]
            .as_array()
            .unwrap()
            .iter()
            .filter(|e| e["involvedObject"]["kind"] == "Plugin" && e["reason"] == reason)
            .map(|e| e["message"].as_str().unwrap_or_default().to_string())
            .collect()
    }
}

fn ready(status: &Value) -> (String, String) {
    let c = status["conditions"]
        .as_array()
        .and_then(|cs| cs.iter().find(|c| c["type"] == "Ready"))
        .cloned()
        .unwrap_or_default();
    (
        c["status"].as_str().unwrap_or_default().to_string(),
        c["reason"].as_str().unwrap_or_default().to_string(),
    )
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn plugin_versions_are_checked_swapped_rolled_back_and_survive_a_restart() {
    let dir = tempfile::tempdir().unwrap();
    let files = tempfile::tempdir().unwrap();
    let k = start(dir.path()).await;

    // The built-in object, its grant from the registration, the embedded version running.
    let p = k
        .wait_status("the builtin to run", |s| ready(s).0 == "True")
        .await;
    assert_eq!(p["spec"]["source"]["builtin"], "replicaset");
    assert_eq!(p["spec"]["role"], "controller");
    assert_eq!(p["status"]["activeDigest"], digest(REPLICASET));
    assert!(
        p["spec"]["writes"]
            .as_array()
            .unwrap()
            .contains(&json!({"apiVersion": "v1", "kind": "Pod"}))
    );

    k.create_replicaset("web", 2);
    k.wait_pods("web", 2).await;

    // v2 from a file: compiled, swapped, proven on its first reconcile, then in charge.
    let v2 = rebuilt(REPLICASET, "v2");
    std::fs::write(files.path().join("v2.wasm"), &v2).unwrap();
    k.patch_spec(json!({"source": {"builtin": null, "file": files.path().join("v2.wasm")}}));
    let p = k
        .wait_status("v2 to pass probation", |s| {
            s["activeDigest"] == digest(&v2) && s["phase"] == "Active"
        })
        .await;
    assert_eq!(ready(&p["status"]), ("True".into(), "Active".into()));
    assert!(p["status"]["lastSwapMilliseconds"].as_i64().is_some());
    assert_eq!(
        k.manager.slot("replicaset").unwrap().current().digest(),
        digest(&v2)
    );
    k.scale("web", 3);
    k.wait_pods("web", 3).await;
    assert_eq!(k.events("Swapped").len(), 1, "one Swapped event");

    // A version that traps on its first reconcile is rolled back to v2, and the change it
    // trapped on is handled by v2 — nothing is lost.
    std::fs::write(files.path().join("broken.wasm"), BROKEN).unwrap();
    k.patch_spec(json!({"source": {"file": files.path().join("broken.wasm")}}));
    let p = k
        .wait_status("the broken version to be rolled back", |s| {
            ready(s).1 == "RolledBack"
        })
        .await;
    assert_eq!(p["status"]["activeDigest"], digest(&v2));
    assert_eq!(p["status"]["phase"], "Active");
    let msg = &k.events("RolledBack")[0];
    assert!(
        msg.contains(&digest(BROKEN)) && msg.contains("panicked"),
        "{msg}"
    );
    k.scale("web", 1);
    k.wait_pods("web", 1).await;

    // Refused before any swap: not a component, a grant too small, a wrong digest. v2 keeps
    // running each time.
    std::fs::write(files.path().join("garbage.wasm"), b"\0asm not really").unwrap();
    for (spec, reason) in [
        (
            json!({"source": {"file": files.path().join("garbage.wasm")}}),
            "CompileFailed",
        ),
        (
            json!({"source": {"file": files.path().join("v2.wasm")},
                "writes": [{"apiVersion": "v1", "kind": "Pod"}]}),
            "RegistrationExceedsGrant",
        ),
        (
            json!({"source": {"file": files.path().join("v2.wasm"), "digest": format!("sha256:{}", "0".repeat(64))},
                "writes": [{"apiVersion": "v1", "kind": "Pod"}, {"apiVersion": "apps/v1", "kind": "ReplicaSet"}, {"apiVersion": "v1", "kind": "Event"}]}),
            "DigestMismatch",
        ),
    ] {
        k.patch_spec(spec);
        let p = k.wait_status(reason, |s| ready(s).1 == reason).await;
        assert_eq!(p["status"]["activeDigest"], digest(&v2), "{reason}");
        assert!(!k.events(reason).is_empty(), "a {reason} event");
    }
    k.scale("web", 2);
    k.wait_pods("web", 2).await;

    // A narrowed grant binds the running version at once, before any version fitting it:
    // without Pod in spec.writes, v2 (still running: the new generation is refused) can no
    // longer create pods. Restoring the grant lets it catch up.
    let rs_and_events = json!([{"apiVersion": "apps/v1", "kind": "ReplicaSet"},
        {"apiVersion": "v1", "kind": "Event"}]);
    k.patch_spec(
        json!({"source": {"file": files.path().join("v2.wasm"), "digest": null},
        "writes": rs_and_events}),
    );
    k.wait_status("the narrowed grant", |s| {
        ready(s).1 == "RegistrationExceedsGrant"
    })
    .await;
    k.scale("web", 3);
    tokio::time::sleep(Duration::from_secs(2)).await;
    assert_eq!(k.pods("web"), 2, "no pod created without the grant");
    k.patch_spec(json!({"writes": [{"apiVersion": "v1", "kind": "Pod"},
        {"apiVersion": "apps/v1", "kind": "ReplicaSet"}, {"apiVersion": "v1", "kind": "Event"}]}));
    k.wait_pods("web", 3).await;

    // A restart runs what ran before (v2, from the component cache), not the refused spec.
    k.cancel.cancel();
    k.host.stopped().await;
    drop(k);
    let k = start(dir.path()).await;
    let slot = k.manager.slot("replicaset").expect("running after restart");
    assert_eq!(slot.current().digest(), digest(&v2));
    k.scale("web", 4);
    k.wait_pods("web", 4).await;
    k.cancel.cancel();
}

/// Pod template of the Deployment the hot-swap test keeps scaling.
/// Tiered compilation: a version not in the compile cache serves code from the baseline
/// compiler (Winch) at once, Cranelift's build replaces it in the background and lands in the
/// cache, and the next load of the same bytes is optimised from the start.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_new_version_serves_baseline_code_until_its_optimised_build_replaces_it() {
    let dir = tempfile::tempdir().unwrap();
    let cache = dir.path().join("compiled");
    let k = start_with_cache(dir.path(), cache.clone()).await;
    k.wait_status("the builtin to run", |s| ready(s).0 == "True")
        .await;
    k.create_replicaset("tiers", 2);
    k.wait_pods("tiers", 2).await;

    let v3 = rebuilt(REPLICASET, "tiered");
    let t0 = Instant::now();
    let plugin = k.host.load("replicaset-v3", &v3).await.unwrap();
    let baseline = t0.elapsed();
    assert_eq!(
        plugin.tier(),
        Tier::Baseline,
        "a new version starts on Winch's code"
    );
    // The baseline code reconciles: it scales the ReplicaSet up (the running plugin may race
    // it; either way the count converges).
    k.scale("tiers", 3);
    k.host.reconcile(&plugin, "default", "tiers").await.unwrap();
    k.wait_pods("tiers", 3).await;

    let deadline = Instant::now() + Duration::from_secs(120);
    while plugin.tier() != Tier::Optimized {
        assert!(
            Instant::now() < deadline,
            "Cranelift's build never replaced the baseline code"
        );
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    eprintln!(
        "loaded on Winch's code in {baseline:?}; Cranelift's in place after {:?}",
        t0.elapsed()
    );
    k.host.reconcile(&plugin, "default", "tiers").await.unwrap();
    let hex = digest(&v3).trim_start_matches("sha256:").to_string();
    let cached = std::fs::read_dir(&cache)
        .unwrap()
        .flatten()
        .any(|e| e.file_name().to_string_lossy().starts_with(&hex));
    assert!(cached, "the optimised build is in the compile cache");
    let again = k.host.load("replicaset-v3", &v3).await.unwrap();
    assert_eq!(again.tier(), Tier::Optimized, "loaded from the cache");

    // With the baseline compiler off, a new version waits for Cranelift.
    let plain = PluginHost::new(
        k.api.clone(),
        PluginConfig {
            baseline_compiler: false,
            ..Default::default()
        },
        k.cancel.clone(),
    )
    .unwrap();
    let p = plain
        .load("replicaset-v4", &rebuilt(REPLICASET, "cranelift only"))
        .await
        .unwrap();
    assert_eq!(p.tier(), Tier::Optimized);
    k.cancel.cancel();
    k.host.stopped().await;
}

fn deployment_yaml(replicas: u32) -> String {
    format!(
        r#"apiVersion: apps/v1
kind: Deployment
metadata:
  name: swing
spec:
  replicas: {replicas}
  selector:
    matchLabels: {{app: swing}}
  template:
    metadata:
      labels: {{app: swing}}
    spec:
      containers:
      - name: hello
        image: kedge.dev/samples/hello-wasm:v1
"#
    )
}

/// The built-in replicaset controller's Plugin, loaded from `file` (a swap's new version).
pub(crate) fn plugin_yaml(file: &std::path::Path) -> String {
    format!(
        r#"apiVersion: plugins.kedge.io/v1
kind: Plugin
metadata:
  name: replicaset
spec:
  role: controller
  source:
    file: {}
  watches:
  - {{apiVersion: apps/v1, kind: ReplicaSet}}
  - {{apiVersion: v1, kind: Pod}}
  writes:
  - {{apiVersion: v1, kind: Pod}}
  - {{apiVersion: apps/v1, kind: ReplicaSet}}
  - {{apiVersion: v1, kind: Event}}
"#,
        file.display()
    )
}

#[test]
fn replicaset_plugin_is_hot_swapped_three_times_while_a_deployment_scales() {
    let mut c = Cluster::start();
    let token = c.token.clone();
    c.start_agent("swap-node", &token);
    c.wait("node Ready", || {
        let out = c.kubectl(&[
            "get",
            "node",
            "swap-node",
            "-o",
            "jsonpath={.status.conditions[?(@.type==\"Ready\")].status}",
        ]);
        (out.ok && out.stdout.trim() == "True").then_some(())
    });
    let files = tempfile::tempdir().unwrap();
    let v2 = rebuilt(REPLICASET, "v2");
    let v3 = rebuilt(REPLICASET, "v3");
    std::fs::write(files.path().join("v2.wasm"), &v2).unwrap();
    std::fs::write(files.path().join("v3.wasm"), &v3).unwrap();
    std::fs::write(files.path().join("broken.wasm"), BROKEN).unwrap();

    // kedge's plugins are listed like any kind.
    let table = c.k(&["get", "plugins"]);
    assert!(
        table.contains("ROLE") && table.contains("DIGEST"),
        "{table}"
    );
    assert!(table.contains("builtin:replicaset"), "{table}");
    let explain = c.k(&["explain", "plugin.spec.source"]);
    assert!(explain.contains("imagePullSecret"), "{explain}");

    let applied = c.kubectl_stdin(&["apply", "-f", "-"], Some(&deployment_yaml(2)));
    assert!(applied.ok, "{}", applied.stderr);

    // Scale up and down without pause while the swaps happen (bounded in count and time).
    let stop = Arc::new(std::sync::atomic::AtomicBool::new(false));
    let scaled = Arc::new(std::sync::atomic::AtomicU32::new(0));
    let scaler = {
        let (stop, scaled) = (stop.clone(), scaled.clone());
        let kubeconfig = c.kubeconfig.clone();
        std::thread::spawn(move || {
            let started = Instant::now();
            let mut n = 0u32;
            while !stop.load(std::sync::atomic::Ordering::Relaxed)
                && n < 200
                && started.elapsed() < Duration::from_secs(120)
            {
                let replicas = [4, 1, 3, 0, 5, 2][n as usize % 6];
                let _ = std::process::Command::new("kubectl")
                    .arg("--kubeconfig")
                    .arg(&kubeconfig)
                    .args([
                        "scale",
                        "deployment/swing",
                        &format!("--replicas={replicas}"),
                    ])
                    .output();
                n += 1;
                scaled.store(n, std::sync::atomic::Ordering::Relaxed);
                std::thread::sleep(Duration::from_millis(150));
            }
            n
        })
    };

    let status = |c: &Cluster, path: &str| {
        c.k(&[
            "get",
            "plugin",
            "replicaset",
            "-o",
            &format!("jsonpath={path}"),
        ])
    };
    let swap_to = |c: &Cluster, file: &str, want_reason: &str, want_digest: &str| {
        let applied = c.kubectl_stdin(
            &["apply", "-f", "-"],
            Some(&plugin_yaml(&files.path().join(file))),
        );
        assert!(applied.ok, "{}", applied.stderr);
        c.wait(&format!("{file}: Ready reason {want_reason}"), || {
            let reason = status(c, "{.status.conditions[?(@.type==\"Ready\")].reason}");
            let digest = status(c, "{.status.activeDigest}");
            let observed = status(c, "{.status.observedGeneration}");
            let generation = status(c, "{.metadata.generation}");
            (reason.trim() == want_reason && digest.trim() == want_digest && observed == generation)
                .then_some(())
        });
    };
    // The swaps start once the scaling is under way (they can be quicker than a few
    // `kubectl scale` runs: on etcd they were).
    c.wait("the scaling under way", || {
        (scaled.load(std::sync::atomic::Ordering::Relaxed) >= 1).then_some(())
    });
    swap_to(&c, "v2.wasm", "Active", &digest(&v2));
    swap_to(&c, "broken.wasm", "RolledBack", &digest(&v2));
    swap_to(&c, "v3.wasm", "Active", &digest(&v3));

    stop.store(true, std::sync::atomic::Ordering::Relaxed);
    let scalings = scaler.join().unwrap();
    eprintln!("the deployment was scaled {scalings} times across the swaps");

    // The final state is right: three pods of the newest ReplicaSet, all Running.
    let applied = c.kubectl(&["scale", "deployment/swing", "--replicas=3"]);
    assert!(applied.ok, "{}", applied.stderr);
    c.wait("3 running pods after the swaps", || {
        let pods = c.pods("app=swing");
        let running = pods.iter().filter(|p| p.phase == "Running").count();
        (pods.len() == 3 && running == 3).then_some(())
    });
    // The ReplicaSets' status follows their pods (the old ones' last status write can come
    // after the pods are gone).
    c.wait("the ReplicaSets' status to count 3 replicas in all", || {
        let rs = c.k(&[
            "get",
            "rs",
            "-l",
            "app=swing",
            "-o",
            "jsonpath={.items[*].status.replicas}",
        ]);
        let total: u32 = rs
            .split_whitespace()
            .map(|n| n.parse::<u32>().unwrap())
            .sum();
        (total == 3).then_some(())
    });
    // The rollback is on record: an Event kubectl describe shows.
    let describe = c.k(&["describe", "plugin", "replicaset"]);
    assert!(describe.contains("RolledBack"), "{describe}");
    assert!(describe.contains(&digest(BROKEN)), "{describe}");
    let table = c.k(&["get", "plugin", "replicaset"]);
    assert!(
        table.contains(&digest(&v3)["sha256:".len()..][..12]),
        "{table}"
    );
}

#[test]
fn a_plugin_built_from_the_template_runs_when_applied() {
    let c = Cluster::start();
    // The template reconciles its own custom kind: the CRD first, then the Plugin.
    crate::operator::install_greeting_crd(&c);
    let manifest = crate::operator::greeter_plugin_yaml(TEMPLATE_PATH);
    let applied = c.kubectl_stdin(&["apply", "-f", "-"], Some(&manifest));
    assert!(applied.ok, "{}", applied.stderr);
    let greeting = |name: &str, message: &str| {
        format!(
            "apiVersion: samples.kedge.dev/v1\nkind: Greeting\nmetadata:\n  name: {name}\nspec:\n  message: {message}\n"
        )
    };
    let created = c.kubectl_stdin(
        &["apply", "-f", "-"],
        Some(&greeting("hello", "Hello, edge!")),
    );
    assert!(created.ok, "{}", created.stderr);
    c.wait("the greeting", || {
        let g = c.kubectl(&[
            "get",
            "configmap",
            "hello",
            "-o",
            "jsonpath={.data.greeting}",
        ]);
        (g.ok && g.stdout == "Hello, edge!").then_some(())
    });
    let phase = c.k(&["get", "plugin", "greeter", "-o", "jsonpath={.status.phase}"]);
    assert_eq!(phase, "Active");

    // A bad spec is refused by the API with the field named, and nothing changes.
    let bad = manifest.replace("memory: 16Mi", "memory: 100Gi");
    let out = c.kubectl_stdin(&["apply", "-f", "-"], Some(&bad));
    assert!(!out.ok);
    assert!(
        out.stderr.contains("spec.limits.memory") && out.stderr.contains("between 1Mi and 4Gi"),
        "{}",
        out.stderr
    );
    let mem = c.k(&[
        "get",
        "plugin",
        "greeter",
        "-o",
        "jsonpath={.spec.limits.memory}",
    ]);
    assert_eq!(mem, "16Mi");

    // Deleting the Plugin stops it.
    let deleted = c.kubectl(&["delete", "plugin", "greeter"]);
    assert!(deleted.ok, "{}", deleted.stderr);
    std::thread::sleep(Duration::from_millis(500));
    let created = c.kubectl_stdin(&["apply", "-f", "-"], Some(&greeting("later", "Nobody")));
    assert!(created.ok, "{}", created.stderr);
    std::thread::sleep(Duration::from_secs(2));
    let cm = c.kubectl(&["get", "configmap", "later"]);
    assert!(
        !cm.ok && cm.stderr.contains("NotFound"),
        "a deleted plugin no longer reconciles: {}",
        cm.stdout
    );
    let status = c.k(&["get", "greeting", "later", "-o", "jsonpath={.status}"]);
    assert!(
        status.is_empty() || status == "{}",
        "nobody wrote the status: {status}"
    );
}

const SPIN: &[u8] = include_bytes!(concat!(
    env!("KEDGE_WASM_DIR"),
    "/kedge_fixture_plugin_spin.wasm"
));

/// A plugin that never returns is cut off at its own deadline, reported as trapping and
/// backed off, while the other plugins and the API carry on.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_plugin_that_keeps_trapping_is_backed_off_and_reported() {
    let dir = tempfile::tempdir().unwrap();
    let k = start(dir.path()).await;
    std::fs::write(dir.path().join("spin.wasm"), SPIN).unwrap();
    let res = by_kind("plugins.kedge.io/v1", "Plugin").unwrap();
    k.api
        .create(
            res,
            "",
            json!({"metadata": {"name": "spin"}, "spec": {
                "source": {"file": dir.path().join("spin.wasm")},
                "watches": [{"apiVersion": "v1", "kind": "Event"}],
                "limits": {"callDeadlineMilliseconds": 50, "memory": "8Mi"}}}),
            &WriteOptions::default(),
        )
        .unwrap();
    let events = by_kind("v1", "Event").unwrap();
    for i in 0..4 {
        k.api
            .create(
                events,
                "default",
                json!({"metadata": {"name": format!("e{i}")}, "involvedObject": {"kind": "Pod", "name": "x"},
                    "reason": "Test", "message": "m"}),
                &WriteOptions::default(),
            )
            .unwrap();
    }
    let deadline = Instant::now() + Duration::from_secs(30);
    let p = loop {
        let p = k.api.get(res, "", "spin").unwrap();
        let healthy = p["status"]["conditions"]
            .as_array()
            .and_then(|cs| cs.iter().find(|c| c["type"] == "Healthy"))
            .cloned()
            .unwrap_or_default();
        if healthy["status"] == "False" {
            break p;
        }
        assert!(Instant::now() < deadline, "never reported: {p:#}");
        tokio::time::sleep(Duration::from_millis(50)).await;
    };
    let text = p["status"].to_string();
    assert!(
        text.contains("Trapping") && text.contains("50 ms call deadline"),
        "{text}"
    );
    // The Event is written beside the status, not with it.
    let deadline = Instant::now() + Duration::from_secs(10);
    while k.events("Trapping").is_empty() {
        assert!(Instant::now() < deadline, "no Trapping event");
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    // The replicaset plugin still works meanwhile.
    k.create_replicaset("alive", 2);
    k.wait_pods("alive", 2).await;
    k.cancel.cancel();
}
