//! Plugin hot-swap figures (prints, asserts nothing), in process against the plugin manager
//! with a durable store:
//! - swap time: from the write of a Plugin whose source names a new component (a file on the
//!   server) to `status.activeDigest` showing it, i.e. read, compile, instantiate, register,
//!   grant check, swap and status write; and to `phase: Active`, i.e. also the probation
//!   reconciles (3 of the 50 ReplicaSets present) without a trap;
//! - rollback time: from the write naming a component that traps on every reconcile to the
//!   status showing the previous version back.
//!
//! Every version has new bytes (a custom section), so nothing comes from a compile cache.
//! Run twice: tiered (the default: Winch's quick build serves first, Cranelift's replaces it
//! in the background; also timed: apply → optimised code serving) and Cranelift only.
//! Run: `cargo bench -p kedge --bench plugins`

use std::sync::Arc;
use std::time::{Duration, Instant};

use kedge::api::ops::{Api, WriteOptions, system_clock};
use kedge::core::resources::by_kind;
use kedge::plugins::manager::PluginManager;
use kedge::plugins::{PluginConfig, PluginHost, Tier};
use kedge::store::redb::{Options, RedbStore};
use serde_json::{Value, json};
use tokio_util::sync::CancellationToken;

/// The `kedge` binary's allocator, so compile times are the server's (glibc's malloc zeroes
/// fresh pages for each compile's buffers: +10–15 % here).
#[global_allocator]
static ALLOC: tikv_jemallocator::Jemalloc = tikv_jemallocator::Jemalloc;

const SWAPS: usize = 10;
const REPLICASETS: usize = 50;
const REPLICASET: &[u8] = kedge::server::default_plugins::REPLICASET;
const BROKEN: &[u8] = include_bytes!(concat!(
    env!("KEDGE_WASM_DIR"),
    "/kedge_fixture_plugin_broken.wasm"
));
static BUILTINS: &[(&str, &[u8])] = &[("replicaset", REPLICASET)];

fn rebuilt(bytes: &[u8], tag: &str) -> Vec<u8> {
    // A custom section: `0x00, size, name-len, name, payload` (all sizes < 128 here).
    let name = b"bench";
    let mut body = vec![name.len() as u8];
    body.extend_from_slice(name);
    body.extend_from_slice(tag.as_bytes());
    let mut out = bytes.to_vec();
    out.push(0);
    out.push(body.len() as u8);
    out.extend_from_slice(&body);
    out
}

fn digest(bytes: &[u8]) -> String {
    use sha2::{Digest, Sha256};
    format!("sha256:{}", hex::encode(Sha256::digest(bytes)))
}

fn median(v: &mut [Duration]) -> Duration {
    v.sort();
    v[v.len() / 2]
}

fn ms(d: Duration) -> String {
    format!("{:.1} ms", d.as_secs_f64() * 1e3)
}

fn main() {
    // The polling below sleeps on its thread; leave the plugin host workers of its own.
    let rt = tokio::runtime::Builder::new_multi_thread()
        .worker_threads(4)
        .enable_all()
        .build()
        .unwrap();
    compile_times();
    rt.block_on(run(true));
    rt.block_on(run(false));
}

/// One compile of the replicaset component by each of wasmtime's compilers, configured as
/// the plugin host configures them (median of 3).
fn compile_times() {
    for (name, strategy) in [
        ("Winch", wasmtime::Strategy::Winch),
        ("Cranelift", wasmtime::Strategy::Cranelift),
    ] {
        let mut cfg = wasmtime::Config::new();
        cfg.strategy(strategy);
        cfg.epoch_interruption(true);
        cfg.wasm_component_model(true);
        let engine = wasmtime::Engine::new(&cfg).unwrap();
        let mut times: Vec<Duration> = (0..3)
            .map(|_| {
                let t = Instant::now();
                wasmtime::component::Component::new(&engine, REPLICASET).unwrap();
                t.elapsed()
            })
            .collect();
        println!(
            "compile of the replicaset component ({} KB), {name}, median of 3: {}",
            REPLICASET.len() / 1024,
            ms(median(&mut times))
        );
    }
}

async fn run(baseline_compiler: bool) {
    let mode = if baseline_compiler {
        "tiered (Winch, then Cranelift)"
    } else {
        "Cranelift only"
    };
    let dir = tempfile::tempdir().unwrap();
    let store = RedbStore::open(&dir.path().join("s.redb"), Options::default()).unwrap();
    let api = Arc::new(Api::new(Arc::new(store), system_clock()));
    let w = WriteOptions::default();
    api.create(
        by_kind("v1", "Namespace").unwrap(),
        "",
        json!({"metadata": {"name": "default"}}),
        &w,
    )
    .unwrap();
    for i in 0..REPLICASETS {
        api.create(
            by_kind("apps/v1", "ReplicaSet").unwrap(),
            "default",
            json!({"metadata": {"name": format!("rs-{i}")}, "spec": {"replicas": 1,
                "selector": {"matchLabels": {"app": format!("rs-{i}")}},
                "template": {"metadata": {"labels": {"app": format!("rs-{i}")}},
                    "spec": {"containers": [{"name": "c", "image": "x:1"}]}}}}),
            &w,
        )
        .unwrap();
    }
    let cancel = CancellationToken::new();
    let config = PluginConfig {
        baseline_compiler,
        ..Default::default()
    };
    let host = Arc::new(PluginHost::new(api.clone(), config, cancel.clone()).unwrap());
    let manager = PluginManager::new(
        host.clone(),
        api.clone(),
        BUILTINS,
        dir.path(),
        Default::default(),
    )
    .unwrap();
    manager.install_builtins().await.unwrap();
    manager.start().await;

    let res = by_kind("plugins.kedge.io/v1", "Plugin").unwrap();
    let get = || api.get(res, "", "replicaset").unwrap();
    let set_file = |path: &std::path::Path| {
        // The manager writes status meanwhile: retry on conflicts, as kubectl would.
        for _ in 0..100 {
            let mut p = get();
            p["spec"]["source"] = json!({"file": path});
            match api.update(res, "", "replicaset", p, None, &w) {
                Ok(_) => return,
                Err(e) if e.code == 409 => continue,
                Err(e) => panic!("{e}"),
            }
        }
        panic!("kept conflicting");
    };
    let wait = |f: &dyn Fn(&Value) -> bool| {
        let deadline = Instant::now() + Duration::from_secs(60);
        loop {
            let p = get();
            if p["status"]["observedGeneration"] == p["metadata"]["generation"] && f(&p["status"]) {
                return;
            }
            assert!(Instant::now() < deadline, "timed out: {p:#}");
            std::thread::sleep(Duration::from_millis(1));
        }
    };

    let tier = || manager.slot("replicaset").unwrap().current().tier();
    let (mut to_active_digest, mut to_proven, mut rollbacks) = (vec![], vec![], vec![]);
    let mut to_optimized = vec![];
    // The builtin's own background build first, so it does not overlap the first swap.
    while tier() != Tier::Optimized {
        std::thread::sleep(Duration::from_millis(5));
    }
    for i in 0..SWAPS {
        let bytes = rebuilt(REPLICASET, &format!("v{i}"));
        let path = dir.path().join(format!("v{i}.wasm"));
        std::fs::write(&path, &bytes).unwrap();
        let d = digest(&bytes);
        let t0 = Instant::now();
        set_file(&path);
        wait(&|s| s["activeDigest"] == d);
        to_active_digest.push(t0.elapsed());
        wait(&|s| s["activeDigest"] == d && s["phase"] == "Active");
        to_proven.push(t0.elapsed());
        let deadline = Instant::now() + Duration::from_secs(60);
        while tier() != Tier::Optimized {
            assert!(Instant::now() < deadline, "never optimised");
            std::thread::sleep(Duration::from_millis(1));
        }
        to_optimized.push(t0.elapsed());
        let last = d;

        if i % 3 == 0 {
            let broken = rebuilt(BROKEN, &format!("b{i}"));
            let path = dir.path().join(format!("b{i}.wasm"));
            std::fs::write(&path, &broken).unwrap();
            let t0 = Instant::now();
            set_file(&path);
            let want = last.clone();
            wait(&|s| {
                s["activeDigest"] == want
                    && s["conditions"]
                        .as_array()
                        .is_some_and(|c| c.iter().any(|c| c["reason"] == "RolledBack"))
            });
            rollbacks.push(t0.elapsed());
        }
    }
    println!(
        "plugin swap, {mode}, apply → new digest active (compile included), median of {SWAPS}: {}",
        ms(median(&mut to_active_digest))
    );
    println!(
        "plugin swap, {mode}, apply → probation passed ({REPLICASETS} ReplicaSets present), median of {SWAPS}: {}",
        ms(median(&mut to_proven))
    );
    println!(
        "plugin swap, {mode}, apply → optimised code serving, median of {SWAPS}: {}",
        ms(median(&mut to_optimized))
    );
    println!(
        "plugin rollback, {mode}, apply of a trapping version → previous version back, median of {}: {}",
        rollbacks.len(),
        ms(median(&mut rollbacks))
    );
    cancel.cancel();
    host.stopped().await;
}
