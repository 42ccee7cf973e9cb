//! Builds the Wasm guests (default plugins, the sample app, test fixtures) for wasm32-wasip2
//! so that building kedge builds its embedded plugin set (see `src/lib.rs`).
//!
//! A nested cargo with its own target directory: sharing the outer one would deadlock on its
//! lock. `KEDGE_SKIP_GUEST_BUILD=1` skips it (then the embedded plugins are empty and the
//! server refuses to start with a clear message).

use std::path::PathBuf;
use std::process::Command;

const GUESTS: &[(&str, &str)] = &[
    ("kedge-plugin-scheduler", "kedge_plugin_scheduler.wasm"),
    ("kedge-plugin-replicaset", "kedge_plugin_replicaset.wasm"),
    (
        "kedge-plugin-replicationcontroller",
        "kedge_plugin_replicationcontroller.wasm",
    ),
    ("kedge-plugin-deployment", "kedge_plugin_deployment.wasm"),
    ("kedge-plugin-job", "kedge_plugin_job.wasm"),
    ("kedge-plugin-cronjob", "kedge_plugin_cronjob.wasm"),
    ("kedge-plugin-daemonset", "kedge_plugin_daemonset.wasm"),
    ("kedge-plugin-statefulset", "kedge_plugin_statefulset.wasm"),
    (
        "kedge-plugin-nodelifecycle",
        "kedge_plugin_nodelifecycle.wasm",
    ),
    ("kedge-plugin-endpoints", "kedge_plugin_endpoints.wasm"),
    (
        "kedge-plugin-garbagecollector",
        "kedge_plugin_garbagecollector.wasm",
    ),
    (
        "kedge-plugin-serviceaccount",
        "kedge_plugin_serviceaccount.wasm",
    ),
    ("kedge-plugin-namespace", "kedge_plugin_namespace.wasm"),
    ("kedge-plugin-disruption", "kedge_plugin_disruption.wasm"),
    ("kedge-plugin-localpath", "kedge_plugin_localpath.wasm"),
    ("kedge-plugin-servicelb", "kedge_plugin_servicelb.wasm"),
    ("kedge-plugin-hpa", "kedge_plugin_hpa.wasm"),
    ("hello-wasm", "hello-wasm.wasm"),
    (
        "kedge-fixture-plugin-spin",
        "kedge_fixture_plugin_spin.wasm",
    ),
    ("kedge-fixture-plugin-hog", "kedge_fixture_plugin_hog.wasm"),
    (
        "kedge-fixture-plugin-broken",
        "kedge_fixture_plugin_broken.wasm",
    ),
    (
        "kedge-fixture-plugin-flood",
        "kedge_fixture_plugin_flood.wasm",
    ),
    (
        "kedge-fixture-plugin-huge",
        "kedge_fixture_plugin_huge.wasm",
    ),
    (
        "kedge-sample-plugin-template",
        "kedge_sample_plugin_template.wasm",
    ),
    (
        "kedge-sample-plugin-template-v2",
        "kedge_sample_plugin_template_v2.wasm",
    ),
];

fn main() {
    let manifest = PathBuf::from(std::env::var("CARGO_MANIFEST_DIR").unwrap());
    // host/guests -> the workspace root.
    let root = manifest.parent().unwrap().parent().unwrap().to_path_buf();
    for dir in [
        "guest-sdk",
        "controllers-wasm",
        "samples",
        "tests/fixtures",
        "Cargo.lock",
    ] {
        println!("cargo:rerun-if-changed={}", root.join(dir).display());
    }
    println!("cargo:rerun-if-env-changed=KEDGE_SKIP_GUEST_BUILD");

    let target_dir = std::env::var("CARGO_TARGET_DIR")
        .map(PathBuf::from)
        .unwrap_or_else(|_| root.join("target"))
        .join("wasm-guests");
    let out = target_dir.join("wasm32-wasip2").join("wasm");
    println!("cargo:rustc-env=KEDGE_WASM_DIR={}", out.display());
    // For dependents' build scripts (`DEP_KEDGE_GUESTS_WASM_DIR`): the kedge package's tests
    // and benches read the guests from there too.
    println!("cargo:wasm_dir={}", out.display());

    if std::env::var("KEDGE_SKIP_GUEST_BUILD").is_ok_and(|v| v == "1") {
        for (_, file) in GUESTS {
            let p = out.join(file);
            if !p.exists() {
                std::fs::create_dir_all(&out).unwrap();
                std::fs::write(&p, b"").unwrap();
            }
        }
        return;
    }

    let cargo = std::env::var("CARGO").unwrap_or_else(|_| "cargo".into());
    let mut cmd = Command::new(cargo);
    cmd.current_dir(&root)
        .args(["build", "--target", "wasm32-wasip2", "--profile", "wasm"])
        .arg("--target-dir")
        .arg(&target_dir);
    for (pkg, _) in GUESTS {
        cmd.args(["-p", pkg]);
    }
    // Flags meant for the host build must not leak into the guest build; the jobserver
    // (CARGO_MAKEFLAGS) is kept so both share the machine's cores.
    for var in [
        "CARGO_TARGET_DIR",
        "CARGO_ENCODED_RUSTFLAGS",
        "RUSTFLAGS",
        "CARGO_BUILD_TARGET",
        "RUSTC_WRAPPER",
        "RUSTC_WORKSPACE_WRAPPER",
        "CARGO_BUILD_RUSTC_WRAPPER",
        "CLIPPY_ARGS",
        "CARGO_PRIMARY_PACKAGE",
        "CARGO_LLVM_COV",
    ] {
        cmd.env_remove(var);
    }
    let status = cmd
        .status()
        .expect("running cargo to build the Wasm guests (is the wasm32-wasip2 target installed? `rustup target add wasm32-wasip2`)");
    if !status.success() {
        panic!(
            "building the Wasm guests failed (see above); install the target with `rustup target add wasm32-wasip2`"
        );
    }
    for (_, file) in GUESTS {
        let p = out.join(file);
        if !p.exists() {
            panic!("guest build did not produce {}", p.display());
        }
    }
}
