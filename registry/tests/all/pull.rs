use std::collections::HashSet;
use std::os::unix::fs::PermissionsExt as _;
use std::sync::Arc;

use kedge_registry::testing::{busybox_image_layer, file_layer, wasm_module_sized};
use kedge_registry::{
    Credential, ImageKind, LocalImageStore, OciConfig, PullErrorKind, PullPolicy, Puller,
    RegistriesConfig, node_arch, push_wasm,
};

use crate::registry;

fn new_puller(config: RegistriesConfig) -> (tempfile::TempDir, Puller) {
    let dir = tempfile::tempdir().unwrap();
    let store = Arc::new(LocalImageStore::open(dir.path().join("images")).unwrap());
    (dir, Puller::new(store, config))
}

fn busybox_config() -> OciConfig {
    OciConfig {
        entrypoint: vec![],
        cmd: vec!["sh".into()],
        env: vec!["PATH=/bin".into()],
        working_dir: Some("/tmp".into()),
        user: None,
    }
}

#[tokio::test]
async fn pushed_wasm_artifact_pulls_back_as_wasm_with_same_bytes() {
    let reg = registry();
    let reference = reg.reference("apps/hello:v1");
    // Bigger than one 1 MiB upload chunk, so progress is reported along the way.
    let module = wasm_module_sized("hello", (5 << 20) / 2);
    let mut calls = Vec::new();
    let digest = push_wasm(
        &reference,
        &module,
        &reg.credential(),
        &reg.registries_config(false),
        |sent, total| calls.push((sent, total)),
    )
    .await
    .unwrap();
    let total = module.len() as u64;
    assert_eq!(calls.first(), Some(&(0, total)));
    assert_eq!(calls.last(), Some(&(total, total)));
    assert!(calls.windows(2).all(|w| w[0].0 <= w[1].0), "{calls:?}");
    assert!(
        calls.iter().any(|&(sent, _)| sent > 0 && sent < total),
        "progress between start and end: {calls:?}"
    );

    let (_dir, puller) = new_puller(reg.registries_config(false));
    let image = puller
        .ensure(&reference, PullPolicy::Always, &[reg.credential()])
        .await
        .unwrap();
    assert_eq!(
        image.digest, digest,
        "manifest digest from push and pull agree"
    );
    assert_eq!(
        image.image_id,
        format!("{}/apps/hello@{digest}", reg.host())
    );
    let ImageKind::Wasm { module: path } = &image.kind else {
        panic!("expected wasm, got {:?}", image.kind);
    };
    assert_eq!(std::fs::read(path).unwrap(), module);
    // Non-wasm bytes are refused before any network.
    let err = push_wasm(
        &reference,
        b"not wasm",
        &reg.credential(),
        &reg.registries_config(false),
        |_, _| {},
    )
    .await
    .unwrap_err();
    assert_eq!(err.kind, PullErrorKind::Unsupported);
}

#[tokio::test]
async fn busybox_image_pulls_unpacks_and_shares_layers() {
    let reg = registry();
    let layer = busybox_image_layer().unwrap();
    let digest = reg
        .push_oci_image("busybox:1", std::slice::from_ref(&layer), &busybox_config())
        .await
        .unwrap();
    let (_dir, puller) = new_puller(reg.registries_config(false));
    let reference = reg.reference("busybox:1");
    let image = puller
        .ensure(&reference, PullPolicy::Always, &[reg.credential()])
        .await
        .unwrap();
    assert_eq!(image.digest, digest);
    let ImageKind::Oci { config, layers } = &image.kind else {
        panic!("expected oci, got {:?}", image.kind);
    };
    assert_eq!(config, &busybox_config());
    assert_eq!(layers.len(), 1);
    assert_eq!(puller.blobs_downloaded(), 2, "config + layer");

    let store = Arc::clone(puller.store());
    let img = image.clone();
    let root = tokio::task::spawn_blocking(move || store.rootfs(&img))
        .await
        .unwrap()
        .unwrap();
    let busybox = std::fs::metadata(root.join("bin/busybox")).unwrap();
    assert!(busybox.is_file());
    assert_ne!(busybox.permissions().mode() & 0o111, 0, "executable");
    assert_eq!(
        std::fs::read_link(root.join("bin/sh")).unwrap(),
        std::path::Path::new("busybox")
    );
    assert_eq!(
        std::fs::read(root.join("bin/busybox")).unwrap(),
        std::fs::read("/bin/busybox").unwrap()
    );
    // Unpacked once: a second call returns the same directory.
    assert_eq!(puller.store().rootfs(&image).unwrap(), root);

    // Pulling again (Always) re-reads the manifest but downloads no blob.
    let again = puller
        .ensure(&reference, PullPolicy::Always, &[reg.credential()])
        .await
        .unwrap();
    assert_eq!(again.digest, digest);
    assert_eq!(puller.blobs_downloaded(), 2, "nothing downloaded twice");

    // Another image sharing the busybox layer downloads only its own blobs.
    reg.push_oci_image(
        "tools:1",
        &[layer, file_layer("etc/tool.conf", b"x").unwrap()],
        &busybox_config(),
    )
    .await
    .unwrap();
    puller
        .ensure(
            &reg.reference("tools:1"),
            PullPolicy::IfNotPresent,
            &[reg.credential()],
        )
        .await
        .unwrap();
    assert_eq!(puller.blobs_downloaded(), 4, "config + own layer only");
}

#[tokio::test]
async fn wrong_or_missing_credentials_are_unauthorized_with_the_registrys_reason() {
    let reg = registry();
    reg.push_oci_image(
        "private:1",
        &[file_layer("a", b"a").unwrap()],
        &OciConfig::default(),
    )
    .await
    .unwrap();
    let (_dir, puller) = new_puller(reg.registries_config(false));
    let reference = reg.reference("private:1");

    let wrong = Credential::basic(&reg.username, "wrong-password");
    let err = puller
        .ensure(&reference, PullPolicy::IfNotPresent, &[wrong])
        .await
        .unwrap_err();
    assert_eq!(err.kind, PullErrorKind::Unauthorized, "{err}");
    assert_eq!(err.reason(), "ErrImagePull");
    assert!(
        err.message
            .contains("401 Unauthorized: authentication required"),
        "{err}"
    );
    assert!(err.message.contains(&reference.to_string()), "{err}");

    let err = puller
        .ensure(&reference, PullPolicy::IfNotPresent, &[])
        .await
        .unwrap_err();
    assert_eq!(err.kind, PullErrorKind::Unauthorized, "{err}");
    assert!(err.message.contains("401 Unauthorized"), "{err}");

    // A wrong secret first, then the right one: kubelet keeps trying.
    let image = puller
        .ensure(
            &reference,
            PullPolicy::IfNotPresent,
            &[Credential::basic("nobody", "x"), reg.credential()],
        )
        .await
        .unwrap();
    assert!(matches!(image.kind, ImageKind::Oci { .. }));

    // The node's registries.yaml credential is used when the pod has none.
    let (_dir2, node) = new_puller(reg.registries_config(true));
    node.ensure(&reference, PullPolicy::Always, &[])
        .await
        .unwrap();

    // A missing tag with good credentials is NotFound.
    let err = node
        .ensure(&reg.reference("private:nope"), PullPolicy::Always, &[])
        .await
        .unwrap_err();
    assert_eq!(err.kind, PullErrorKind::NotFound, "{err}");

    // Without the CA the TLS handshake fails: Network, not Unauthorized.
    let (_dir3, untrusting) = new_puller(RegistriesConfig::default());
    let err = untrusting
        .ensure(&reference, PullPolicy::Always, &[reg.credential()])
        .await
        .unwrap_err();
    assert_eq!(err.kind, PullErrorKind::Network, "{err}");
}

#[tokio::test]
async fn pull_policies_if_not_present_and_never_need_no_network() {
    let mut reg = registry();
    reg.push_oci_image(
        "app:1",
        &[file_layer("a", b"a").unwrap()],
        &OciConfig::default(),
    )
    .await
    .unwrap();
    let (_dir, puller) = new_puller(reg.registries_config(true));
    let reference = reg.reference("app:1");

    let err = puller
        .ensure(&reference, PullPolicy::Never, &[])
        .await
        .unwrap_err();
    assert_eq!(err.kind, PullErrorKind::NeverPull);
    assert_eq!(err.reason(), "ErrImageNeverPull");

    let first = puller
        .ensure(&reference, PullPolicy::IfNotPresent, &[])
        .await
        .unwrap();
    reg.stop();
    let again = puller
        .ensure(&reference, PullPolicy::IfNotPresent, &[])
        .await
        .unwrap();
    assert_eq!(again, first);
    let never = puller
        .ensure(&reference, PullPolicy::Never, &[])
        .await
        .unwrap();
    assert_eq!(never, first);
    // By digest too.
    let by_digest =
        kedge_registry::Reference::parse(&format!("{}/app@{}", reg.host(), first.digest)).unwrap();
    puller
        .ensure(&by_digest, PullPolicy::IfNotPresent, &[])
        .await
        .unwrap();
    // Always does need the registry, which is gone.
    let err = puller
        .ensure(&reference, PullPolicy::Always, &[])
        .await
        .unwrap_err();
    assert_eq!(err.kind, PullErrorKind::Network, "{err}");
}

#[tokio::test]
async fn multi_arch_index_resolves_to_the_node_arch() {
    let reg = registry();
    let mut entries = Vec::new();
    for arch in ["amd64", "arm64"] {
        let (digest, size) = reg
            .push_oci_image_for(
                &format!("multi:{arch}"),
                &[file_layer("arch", arch.as_bytes()).unwrap()],
                &OciConfig::default(),
                "linux",
                arch,
            )
            .await
            .unwrap();
        entries.push(serde_json::json!({
            "mediaType": "application/vnd.oci.image.manifest.v1+json",
            "digest": digest,
            "size": size,
            "platform": {"os": "linux", "architecture": arch},
        }));
    }
    let index = serde_json::json!({
        "schemaVersion": 2,
        "mediaType": "application/vnd.oci.image.index.v1+json",
        "manifests": entries,
    });
    reg.push_manifest(
        "multi:latest",
        serde_json::to_vec(&index).unwrap(),
        "application/vnd.oci.image.index.v1+json",
    )
    .await
    .unwrap();

    let (_dir, puller) = new_puller(reg.registries_config(true));
    let image = puller
        .ensure(&reg.reference("multi:latest"), PullPolicy::Always, &[])
        .await
        .unwrap();
    let mine = entries
        .iter()
        .find(|e| e["platform"]["architecture"] == node_arch())
        .expect("node arch is amd64 or arm64");
    assert_eq!(image.digest, mine["digest"].as_str().unwrap());
    let root = puller.store().rootfs(&image).unwrap();
    assert_eq!(
        std::fs::read(root.join("arch")).unwrap(),
        node_arch().as_bytes()
    );
}

#[tokio::test]
async fn corrupted_blob_from_the_registry_is_refused_and_not_kept() {
    let reg = registry();
    let layer = file_layer("data", &[42u8; 4096]).unwrap();
    reg.push_oci_image(
        "corrupt:1",
        std::slice::from_ref(&layer),
        &OciConfig::default(),
    )
    .await
    .unwrap();
    let layer_digest = format!("sha256:{}", sha256_hex(&layer));
    // Same length, different bytes: only the digest can tell.
    let path = reg.blob_data_path(&layer_digest);
    let mut bad = std::fs::read(&path).unwrap();
    let last = bad.len() - 1;
    bad[last] ^= 0xff;
    std::fs::write(&path, bad).unwrap();

    let (dir, puller) = new_puller(reg.registries_config(true));
    let err = puller
        .ensure(&reg.reference("corrupt:1"), PullPolicy::Always, &[])
        .await
        .unwrap_err();
    assert_eq!(err.kind, PullErrorKind::Corrupt, "{err}");
    assert!(!puller.store().has_blob(&layer_digest));
    assert!(
        puller
            .store()
            .image(&reg.reference("corrupt:1"))
            .unwrap()
            .is_none()
    );
    let tmp: Vec<_> = std::fs::read_dir(dir.path().join("images/tmp"))
        .unwrap()
        .collect();
    assert!(tmp.is_empty(), "temp files left: {tmp:?}");
}

fn sha256_hex(data: &[u8]) -> String {
    use sha2::Digest as _;
    hex::encode(sha2::Sha256::digest(data))
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn concurrent_pulls_of_one_image_agree_and_gc_keeps_images_in_use() {
    let reg = registry();
    let layer = busybox_image_layer().unwrap();
    reg.push_oci_image("busybox:1", &[layer], &busybox_config())
        .await
        .unwrap();
    reg.push_oci_image(
        "other:1",
        &[file_layer("o", &[1u8; 10_000]).unwrap()],
        &OciConfig::default(),
    )
    .await
    .unwrap();
    let (_dir, puller) = new_puller(reg.registries_config(true));
    let puller = Arc::new(puller);
    let reference = reg.reference("busybox:1");
    let pulls: Vec<_> = (0..4)
        .map(|_| {
            let p = Arc::clone(&puller);
            let r = reference.clone();
            tokio::spawn(async move { p.ensure(&r, PullPolicy::Always, &[]).await })
        })
        .collect();
    let mut digests = HashSet::new();
    for p in pulls {
        digests.insert(p.await.unwrap().unwrap().digest);
    }
    assert_eq!(digests.len(), 1);
    assert_eq!(puller.blobs_downloaded(), 2, "each blob downloaded once");
    let busybox = puller.store().image(&reference).unwrap().unwrap();
    puller.store().rootfs(&busybox).unwrap();

    let other = puller
        .ensure(&reg.reference("other:1"), PullPolicy::Always, &[])
        .await
        .unwrap();
    let in_use: HashSet<String> = [busybox.digest.clone()].into();
    let report = puller.store().gc(&in_use, 0).unwrap();
    assert_eq!(report.images_removed, std::slice::from_ref(&other.digest));
    assert!(puller.store().image(&reference).unwrap().is_some());
    assert!(
        puller
            .store()
            .rootfs(&busybox)
            .unwrap()
            .join("bin/busybox")
            .is_file()
    );
    assert!(
        puller
            .store()
            .image(&reg.reference("other:1"))
            .unwrap()
            .is_none()
    );
}

/// KEP-2535 (`--ensure-secret-pulled-images`): an image pulled with a pod's credential
/// serves another pod only if it holds that credential or pulls with its own; images pulled
/// with the node's own credential are shared; with the option off (the default) everything on
/// the node is shared, as upstream.
#[tokio::test]
async fn secret_pulled_images_serve_only_pods_holding_the_secret() {
    let mut reg = registry();
    reg.push_oci_image(
        "private:1",
        &[file_layer("a", b"a").unwrap()],
        &OciConfig::default(),
    )
    .await
    .unwrap();
    let reference = reg.reference("private:1");
    let dir = tempfile::tempdir().unwrap();
    let store = Arc::new(LocalImageStore::open(dir.path().join("images")).unwrap());
    let verifying = Puller::new(store.clone(), reg.registries_config(false))
        .with_secret_pulled_images_verified(true);
    let sharing = Puller::new(store.clone(), reg.registries_config(false));
    let secret = [reg.credential()];

    let pulled = verifying
        .ensure(&reference, PullPolicy::IfNotPresent, &secret)
        .await
        .unwrap();
    assert!(verifying.usable_without_pull(&reference, &pulled, &secret));
    assert!(!verifying.usable_without_pull(&reference, &pulled, &[]));
    // A pod without the secret, or with a wrong one, must pull — and the registry says no.
    for creds in [vec![], vec![Credential::basic(&reg.username, "wrong")]] {
        let err = verifying
            .ensure(&reference, PullPolicy::IfNotPresent, &creds)
            .await
            .unwrap_err();
        assert_eq!(err.kind, PullErrorKind::Unauthorized, "{err}");
    }
    let err = verifying
        .ensure(&reference, PullPolicy::Never, &[])
        .await
        .unwrap_err();
    assert_eq!(err.kind, PullErrorKind::NeverPull, "{err}");
    assert!(err.message.contains("does not hold"), "{err}");
    // The option off: the image on the node serves anyone (upstream's default).
    assert_eq!(
        sharing
            .ensure(&reference, PullPolicy::IfNotPresent, &[])
            .await
            .unwrap(),
        pulled
    );

    // With the registry gone: the pod holding the secret still runs from the node; one
    // without it cannot prove access and gets no image (never the local copy).
    reg.stop();
    let again = verifying
        .ensure(&reference, PullPolicy::IfNotPresent, &secret)
        .await
        .unwrap();
    assert_eq!(again, pulled);
    let err = verifying
        .ensure(&reference, PullPolicy::IfNotPresent, &[])
        .await
        .unwrap_err();
    assert_eq!(err.kind, PullErrorKind::Network, "{err}");

    // Pulled with the node's own credential (registries.yaml): every pod may use it.
    let reg = registry();
    reg.push_oci_image(
        "nodes:1",
        &[file_layer("b", b"b").unwrap()],
        &OciConfig::default(),
    )
    .await
    .unwrap();
    let node_ref = reg.reference("nodes:1");
    let node = Puller::new(store.clone(), reg.registries_config(true))
        .with_secret_pulled_images_verified(true);
    let img = node
        .ensure(&node_ref, PullPolicy::IfNotPresent, &[])
        .await
        .unwrap();
    assert!(node.usable_without_pull(&node_ref, &img, &[]));
    // What the store remembers of a pod's secret is a digest of it, never the secret.
    let index = std::fs::read_to_string(dir.path().join("images").join("index.json")).unwrap();
    assert!(!index.contains(&reg.password), "{index}");
    assert!(index.contains("pulled_with"), "{index}");
}
