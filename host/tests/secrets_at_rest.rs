//! Secrets at rest, end to end in one process: a server started with
//! `--encryption-provider-config` (aescbc) writes Secrets made through its API sealed into
//! its redb file, and ConfigMaps (not listed) in plaintext; kube's key rotation (new key
//! first and old second, restart, rewrite every Secret, restart with the new key only) keeps
//! every Secret readable; `--secrets-encryption` generates its key file once.
//!
//! Run: `KEDGE_SKIP_GUEST_BUILD=1 cargo test -p kedge --test secrets_at_rest`

use std::path::{Path, PathBuf};
use std::time::Duration;

use base64::Engine as _;
use kedge::api::ops::{ListOptions, WriteOptions};
use kedge::core::resources::by_kind;
use kedge::plugins::PluginConfig;
use kedge::server::{self, ServerConfig, StoreEncryption};
use serde_json::{Value, json};
use tokio_util::sync::CancellationToken;

const VALUE: &str = "hunter2-the-plaintext-that-must-not-reach-the-disk";
/// The value of the Secret written before encryption was on: its plaintext stays in the
/// watch log (and freed pages) until it ages out, as the README says.
const BEFORE: &str = "written-before-encryption-was-turned-on";
const CM_VALUE: &str = "a-configmap-value-kept-in-plaintext";
const KEY1: &str = "YWJjZGVmZ2hpamtsbW5vcHFyc3R1dnd4eXoxMjM0NTY=";
const KEY2: &str = "MDEyMzQ1Njc4OWFiY2RlZjAxMjM0NTY3ODlhYmNkZWY=";

fn config(data_dir: PathBuf) -> ServerConfig {
    ServerConfig {
        data_dir,
        listen: "127.0.0.1:0".parse().unwrap(),
        tls_sans: vec![],
        plugin_cache_dir: None,
        plugins: PluginConfig::default(),
        durable: true,
        registries: Default::default(),
        node_cert_validity: kedge_tunnel::server::DEFAULT_NODE_CERT_VALIDITY,
        datastore: None,
        watch_history: None,
        replica_name: None,
        leader_election: Default::default(),
        server_token: None,
        join: None,
    }
}

/// An EncryptionConfiguration for secrets with aescbc keys `(name, secret)`, in order.
fn write_config(path: &Path, keys: &[(&str, &str)]) {
    let keys: Vec<String> = keys
        .iter()
        .map(|(n, s)| format!("      - name: {n}\n        secret: {s}\n"))
        .collect();
    let text = format!(
        "apiVersion: apiserver.config.k8s.io/v1\nkind: EncryptionConfiguration\nresources:\n- resources:\n  - secrets\n  providers:\n  - aescbc:\n      keys:\n{}  - identity: {{}}\n",
        keys.concat()
    );
    std::fs::write(path, text).unwrap();
}

/// Runs `f` against a server on `dir` with `encryption`, then stops it (and lets go of its
/// store file).
async fn with_server<T>(
    dir: &Path,
    encryption: StoreEncryption,
    f: impl FnOnce(&kedge::api::ops::Api) -> T,
) -> T {
    let cancel = CancellationToken::new();
    let srv = server::start_with(
        config(dir.to_path_buf()),
        Default::default(),
        encryption,
        cancel.clone(),
    )
    .await
    .expect("server starts");
    let api = srv.api.clone();
    let out = tokio::task::block_in_place(|| f(&api));
    drop(api);
    cancel.cancel();
    let _ = tokio::time::timeout(Duration::from_secs(20), srv.stopped()).await;
    drop(srv);
    out
}

fn secret(name: &str) -> Value {
    secret_with(name, VALUE)
}

fn secret_with(name: &str, value: &str) -> Value {
    json!({"apiVersion": "v1", "kind": "Secret",
        "metadata": {"name": name, "namespace": "default"},
        "stringData": {"password": value}})
}

fn password(s: &Value) -> String {
    let b64 = s["data"]["password"].as_str().expect("data.password");
    String::from_utf8(
        base64::engine::general_purpose::STANDARD
            .decode(b64)
            .unwrap(),
    )
    .unwrap()
}

fn contains(hay: &[u8], needle: &[u8]) -> bool {
    hay.windows(needle.len()).any(|w| w == needle)
}

/// The store file: no secret value, plain or in the base64 the object carries.
fn assert_no_plaintext(dir: &Path) -> Vec<u8> {
    let raw = std::fs::read(dir.join("state.redb")).unwrap();
    let b64 = base64::engine::general_purpose::STANDARD.encode(VALUE);
    assert!(
        !contains(&raw, VALUE.as_bytes()),
        "plaintext secret on disk"
    );
    assert!(!contains(&raw, b64.as_bytes()), "base64 secret on disk");
    raw
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn secrets_are_encrypted_in_the_redb_file_and_survive_key_rotation() {
    let tmp = tempfile::tempdir().unwrap();
    let dir = tmp.path().join("server");
    let cfg = tmp.path().join("encryption.yaml");
    let secrets = by_kind("v1", "Secret").unwrap();
    let configmaps = by_kind("v1", "ConfigMap").unwrap();
    let w = WriteOptions::default();

    // 0. No encryption (the default): one Secret stored in plaintext.
    with_server(&dir, StoreEncryption::Off, |api| {
        api.create(secrets, "default", secret_with("before", BEFORE), &w)
            .unwrap();
    })
    .await;
    let raw = std::fs::read(dir.join("state.redb")).unwrap();
    assert!(contains(
        &raw,
        base64::engine::general_purpose::STANDARD
            .encode(BEFORE)
            .as_bytes()
    ));

    // 1. key1: Secrets through the API are sealed on disk, the ConfigMap is not; the
    //    plaintext one is re-encrypted at start.
    write_config(&cfg, &[("key1", KEY1)]);
    with_server(&dir, StoreEncryption::File(cfg.clone()), |api| {
        for name in ["a", "b"] {
            api.create(secrets, "default", secret(name), &w).unwrap();
        }
        let cm = json!({"apiVersion": "v1", "kind": "ConfigMap",
            "metadata": {"name": "c", "namespace": "default"}, "data": {"v": CM_VALUE}});
        api.create(configmaps, "default", cm, &w).unwrap();
        assert_eq!(password(&api.get(secrets, "default", "a").unwrap()), VALUE);
    })
    .await;
    let raw = assert_no_plaintext(&dir);
    assert!(contains(&raw, b"k8s:enc:aescbc:v1:key1:"));
    assert!(
        contains(&raw, CM_VALUE.as_bytes()),
        "the ConfigMap is plaintext"
    );

    // 2. Rotation, step 1: the new key first, the old one second. The server re-encrypts at
    //    start what the old key sealed (kube's `kubectl get secrets -A -o json | kubectl
    //    replace -f -`, which kedge's API would take as no-op writes), so every Secret reads
    //    and is sealed with the new key.
    write_config(&cfg, &[("key2", KEY2), ("key1", KEY1)]);
    with_server(&dir, StoreEncryption::File(cfg.clone()), |api| {
        let list = api.list(secrets, "", &ListOptions::default()).unwrap();
        let items = list["items"].as_array().unwrap();
        // Ours and the server's own (its bootstrap token in kube-system).
        assert!(items.len() >= 3, "{}", items.len());
        assert_eq!(password(&api.get(secrets, "default", "b").unwrap()), VALUE);
    })
    .await;
    let raw = assert_no_plaintext(&dir);
    assert!(contains(&raw, b"k8s:enc:aescbc:v1:key2:"));

    // 3. Rotation, step 2: the old key removed; everything still reads.
    write_config(&cfg, &[("key2", KEY2)]);
    with_server(&dir, StoreEncryption::File(cfg.clone()), |api| {
        for name in ["a", "b"] {
            assert_eq!(password(&api.get(secrets, "default", name).unwrap()), VALUE);
        }
        let before = api.get(secrets, "default", "before").unwrap();
        assert_eq!(password(&before), BEFORE);
        let list = api.list(secrets, "", &ListOptions::default()).unwrap();
        assert!(list["items"].as_array().unwrap().len() >= 3);
    })
    .await;
    assert_no_plaintext(&dir);

    // 4. A key that is gone: the Secret it sealed is an error naming it, not garbage (the
    //    store as the server opens it; the server itself would fail reading its own token).
    write_config(&cfg, &[("key3", KEY1)]);
    let store = kedge::store::redb::RedbStore::open(
        &dir.join("state.redb"),
        kedge::store::redb::Options {
            encryption: std::sync::Arc::new(
                kedge::store::encryption::Encryption::load(&cfg).unwrap(),
            ),
            ..Default::default()
        },
    )
    .unwrap();
    use kedge::store::Store as _;
    for name in ["a", "before"] {
        let err = store
            .get(&format!("core/secrets/default/{name}"))
            .unwrap_err()
            .to_string();
        assert!(err.contains("aescbc key \"key2\""), "{err}");
    }
    // Unlisted resources are unaffected.
    assert!(store.get("core/configmaps/default/c").unwrap().is_some());
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn secrets_encryption_generates_its_key_once() {
    let tmp = tempfile::tempdir().unwrap();
    let dir = tmp.path().join("server");
    let secrets = by_kind("v1", "Secret").unwrap();
    with_server(&dir, StoreEncryption::Generated, |api| {
        api.create(secrets, "default", secret("a"), &WriteOptions::default())
            .unwrap();
    })
    .await;
    let path = server::generated_encryption_config(&dir);
    let first = std::fs::read(&path).unwrap();
    {
        use std::os::unix::fs::PermissionsExt;
        let mode = std::fs::metadata(&path).unwrap().permissions().mode() & 0o777;
        assert_eq!(mode, 0o600);
    }
    let raw = assert_no_plaintext(&dir);
    assert!(contains(&raw, b"k8s:enc:aescbc:v1:aescbckey:"));
    // The second start reads the same key (and so its Secrets).
    with_server(&dir, StoreEncryption::Generated, |api| {
        assert_eq!(password(&api.get(secrets, "default", "a").unwrap()), VALUE);
    })
    .await;
    assert_eq!(std::fs::read(&path).unwrap(), first);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_wrong_key_length_refuses_to_start_in_one_line() {
    let tmp = tempfile::tempdir().unwrap();
    let cfg = tmp.path().join("encryption.yaml");
    write_config(&cfg, &[("short", "c2hvcnQ=")]);
    let err = server::start_with(
        config(tmp.path().join("server")),
        Default::default(),
        StoreEncryption::File(cfg),
        CancellationToken::new(),
    )
    .await
    .err()
    .expect("refused");
    let msg = format!("{err:#}");
    assert!(
        msg.contains("secret is 5 bytes, aescbc needs 16, 24, 32 bytes"),
        "{msg}"
    );
    assert!(!msg.contains('\n'), "{msg}");
}
