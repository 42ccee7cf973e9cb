//! Figures for images (prints, asserts nothing), against a real `docker-registry` on loopback
//! with TLS and basic auth:
//! - pull + first start of a 5 MiB Wasm artifact: an empty image store and a fresh Wasm
//!   runtime each time; pull, compile, run the sample app to its exit (median of 10);
//! - pull + first start of a busybox OCI image: empty store; pull, unpack, `runc run` of
//!   `true` to its exit (median of 10);
//! - second start from the node's cache: the image present (`IfNotPresent`, no network),
//!   the Wasm module compiled / the rootfs unpacked already (median of 10).
//!
//! Run (as root, with runc, docker-registry, apache2-utils, busybox-static installed):
//! `cargo bench -p kedge --bench images`

use std::sync::Arc;
use std::time::{Duration, Instant};

use kedge_registry::testing::{TestRegistry, TestRegistryOptions, busybox_image_layer};
use kedge_registry::{
    Credential, ImageKind, LocalImageStore, OciConfig, PullPolicy, Puller, Reference,
    RegistriesConfig,
};
use kedge_runtime::oci::{ContainerSpec, OciRuntime, fixed_grace};
use kedge_runtime::wasm::{RunSpec, WasmRuntime};
use tokio_util::sync::CancellationToken;

const RUNS: usize = 10;
const WASM_SIZE: usize = 5 << 20;

fn median(v: &mut [Duration]) -> Duration {
    v.sort();
    v[v.len() / 2]
}

fn ms(d: Duration) -> String {
    format!("{:.1} ms", d.as_secs_f64() * 1e3)
}

/// The sample component padded with a custom section to `size` bytes (custom sections are
/// valid anywhere in a component and cost nothing to compile).
fn padded_component(size: usize) -> Vec<u8> {
    let mut bytes =
        std::fs::read(std::path::Path::new(env!("KEDGE_WASM_DIR")).join("hello-wasm.wasm"))
            .expect("the sample app is built with kedge");
    let name = b"kedge-bench-padding";
    let payload = size.saturating_sub(bytes.len() + name.len() + 8);
    let mut section = vec![name.len() as u8];
    section.extend_from_slice(name);
    section.resize(section.len() + payload, 0);
    bytes.push(0);
    let mut n = section.len();
    loop {
        let b = (n & 0x7f) as u8;
        n >>= 7;
        if n == 0 {
            bytes.push(b);
            break;
        }
        bytes.push(b | 0x80);
    }
    bytes.extend_from_slice(&section);
    bytes
}

fn main() {
    kedge_tunnel::install_crypto_provider();
    let rt = tokio::runtime::Runtime::new().unwrap();
    rt.block_on(run());
}

/// Pull (or find), load (compile or hit the runtime's cache), run to exit; returns the time
/// of each phase.
async fn run_wasm(
    runtime: &WasmRuntime,
    puller: &Puller,
    r: &Reference,
    cred: &Credential,
    log: std::path::PathBuf,
) -> [Duration; 3] {
    let t = Instant::now();
    let img = puller
        .ensure(r, PullPolicy::IfNotPresent, std::slice::from_ref(cred))
        .await
        .expect("pull");
    let ImageKind::Wasm { module } = &img.kind else {
        panic!("not wasm")
    };
    let pulled = t.elapsed();
    // As the agent does: blobs are named by their verified digest.
    let digest = format!("sha256:{}", module.file_name().unwrap().to_str().unwrap());
    let w = match runtime.get(&digest) {
        Some(w) => w,
        None => runtime
            .load_with_digest(tokio::fs::read(module).await.unwrap(), digest)
            .await
            .expect("load"),
    };
    let loaded = t.elapsed();
    let spec = RunSpec {
        args: vec!["hello".into()],
        env: vec![("HELLO_EXIT_AFTER_SECS".into(), "0".into())],
        log_path: log,
        log_rotation: Default::default(),
        memory_limit: None,
        dirs: Vec::new(),
        memory_in_use: None,
        cpu_time: None,
        net: None,
        resolver: None,
    };
    runtime
        .run(&w, spec, CancellationToken::new())
        .await
        .expect("run");
    [pulled, loaded - pulled, t.elapsed() - loaded]
}

async fn run_oci(
    oci: &OciRuntime,
    puller: &Puller,
    r: &Reference,
    cred: &Credential,
    work: std::path::PathBuf,
    id: String,
) {
    let img = puller
        .ensure(r, PullPolicy::IfNotPresent, std::slice::from_ref(cred))
        .await
        .expect("pull");
    let store = puller.store().clone();
    let rootfs = tokio::task::spawn_blocking(move || store.rootfs(&img))
        .await
        .unwrap()
        .expect("unpack");
    let spec = ContainerSpec {
        id,
        image_rootfs: rootfs,
        work_dir: work.clone(),
        args: vec!["true".into()],
        env: vec![("PATH".into(), "/bin".into())],
        cwd: "/".into(),
        user: None,
        hostname: "bench".into(),
        mounts: Vec::new(),
        memory_limit: None,
        cpu_limit_millis: None,
        cpu_shares: None,
        log_path: work.join("0.log"),
        log_rotation: Default::default(),
        grace_period: fixed_grace(Duration::from_secs(1)),
        post_start: None,
        pre_stop: None,
        security: Default::default(),
        netns: None,
        resolv_conf: None,
        hosts: None,
    };
    oci.run(spec, CancellationToken::new()).await.expect("runc");
}

fn puller(dir: &std::path::Path, config: &RegistriesConfig) -> Puller {
    let store = Arc::new(LocalImageStore::open(dir).unwrap());
    Puller::new(store, config.clone())
}

async fn run() {
    let reg = TestRegistry::start(TestRegistryOptions { auth: true }).expect("test registry");
    let config = reg.registries_config(false);
    let cred = reg.credential();
    let dir = tempfile::tempdir().unwrap();

    let wasm = padded_component(WASM_SIZE);
    let wasm_ref = reg.reference("bench/hello:v1");
    kedge_registry::push_wasm(&wasm_ref, &wasm, &cred, &config, |_, _| {})
        .await
        .expect("push wasm");
    let busybox_ref = reg.reference("bench/busybox:v1");
    reg.push_oci_image(
        "bench/busybox:v1",
        &[busybox_image_layer().unwrap()],
        &OciConfig::default(),
    )
    .await
    .expect("push busybox");
    println!(
        "wasm artifact: {:.1} MiB; busybox image: one layer with /bin/busybox",
        wasm.len() as f64 / (1 << 20) as f64
    );

    // Wasm: first start (cold store, cold runtime), then warm starts.
    let mut cold = Vec::new();
    for i in 0..RUNS {
        let p = puller(&dir.path().join(format!("wasm-store-{i}")), &config);
        let runtime = WasmRuntime::new().unwrap();
        let t = Instant::now();
        run_wasm(
            &runtime,
            &p,
            &wasm_ref,
            &cred,
            dir.path().join(format!("w{i}.log")),
        )
        .await;
        cold.push(t.elapsed());
    }
    let p = puller(&dir.path().join("wasm-store-warm"), &config);
    let runtime = WasmRuntime::new().unwrap();
    run_wasm(&runtime, &p, &wasm_ref, &cred, dir.path().join("w.log")).await;
    let mut warm = Vec::new();
    let mut phases: [Vec<Duration>; 3] = Default::default();
    for i in 0..RUNS {
        let t = Instant::now();
        let ph = run_wasm(
            &runtime,
            &p,
            &wasm_ref,
            &cred,
            dir.path().join(format!("ww{i}.log")),
        )
        .await;
        warm.push(t.elapsed());
        for (k, d) in ph.into_iter().enumerate() {
            phases[k].push(d);
        }
    }
    println!(
        "wasm 5 MiB: pull + first start to exit, median of {RUNS}: {} (min {}, max {})",
        ms(median(&mut cold)),
        ms(cold[0]),
        ms(cold[RUNS - 1])
    );
    println!(
        "wasm 5 MiB: second start from cache, median of {RUNS}: {} (find image {}, \
         load {}, run {})",
        ms(median(&mut warm)),
        ms(median(&mut phases[0])),
        ms(median(&mut phases[1])),
        ms(median(&mut phases[2]))
    );

    // OCI: busybox under runc.
    let oci = match OciRuntime::detect(&dir.path().join("runc")) {
        Ok(o) => o,
        Err(e) => {
            println!("busybox: skipped, no OCI runtime here: {e}");
            return;
        }
    };
    let mut cold = Vec::new();
    for i in 0..RUNS {
        let p = puller(&dir.path().join(format!("oci-store-{i}")), &config);
        let t = Instant::now();
        run_oci(
            &oci,
            &p,
            &busybox_ref,
            &cred,
            dir.path().join(format!("c{i}")),
            format!("bench-{}-c{i}", std::process::id()),
        )
        .await;
        cold.push(t.elapsed());
    }
    let p = puller(&dir.path().join("oci-store-warm"), &config);
    run_oci(
        &oci,
        &p,
        &busybox_ref,
        &cred,
        dir.path().join("cw"),
        format!("bench-{}-cw", std::process::id()),
    )
    .await;
    let mut warm = Vec::new();
    for i in 0..RUNS {
        let t = Instant::now();
        run_oci(
            &oci,
            &p,
            &busybox_ref,
            &cred,
            dir.path().join(format!("cw{i}")),
            format!("bench-{}-cw{i}", std::process::id()),
        )
        .await;
        warm.push(t.elapsed());
    }
    println!(
        "busybox: pull + unpack + first start to exit, median of {RUNS}: {} (min {}, max {})",
        ms(median(&mut cold)),
        ms(cold[0]),
        ms(cold[RUNS - 1])
    );
    println!(
        "busybox: second start from cache, median of {RUNS}: {}",
        ms(median(&mut warm))
    );
}
