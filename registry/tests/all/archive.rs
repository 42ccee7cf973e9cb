//! `kedge image import`: docker-archive and OCI-layout tarballs built here, imported into a
//! store, then resolved and unpacked with no registry anywhere; malformed and escaping
//! archives refused.

use std::collections::HashSet;
use std::io::Read as _;
use std::path::Path;
use std::sync::Arc;
use std::time::SystemTime;

use kedge_registry::testing::{BUSYBOX_BIN, busybox_image_layer, gzip};
use kedge_registry::{
    ImageKind, LocalImageStore, PullPolicy, Puller, Reference, RegistriesConfig, StoreError,
};
use sha2::Digest as _;

fn sha256(data: &[u8]) -> String {
    format!("sha256:{}", hex::encode(sha2::Sha256::digest(data)))
}

fn hex_of(digest: &str) -> &str {
    digest.trim_start_matches("sha256:")
}

/// The busybox layer as `docker save` keeps it: an uncompressed tar.
fn busybox_tar() -> Vec<u8> {
    let gz = busybox_image_layer().unwrap();
    let mut tar = Vec::new();
    flate2::read::GzDecoder::new(&gz[..])
        .read_to_end(&mut tar)
        .unwrap();
    tar
}

fn config_json(diff_ids: &[String]) -> Vec<u8> {
    serde_json::to_vec(&serde_json::json!({
        "architecture": kedge_registry::node_arch(),
        "os": "linux",
        "config": {"Cmd": ["sh"], "Env": ["PATH=/bin"], "WorkingDir": "/tmp"},
        "rootfs": {"type": "layers", "diff_ids": diff_ids},
    }))
    .unwrap()
}

/// A tar of `files` (path, bytes) in order.
fn tarball(files: &[(&str, &[u8])]) -> Vec<u8> {
    let mut b = tar::Builder::new(Vec::new());
    for (path, data) in files {
        let mut h = tar::Header::new_ustar();
        h.set_entry_type(tar::EntryType::Regular);
        h.set_mode(0o644);
        h.set_size(data.len() as u64);
        b.append_data(&mut h, path, *data).unwrap();
    }
    b.into_inner().unwrap()
}

/// A `docker save` archive of busybox named by `tags`.
fn docker_archive(tags: &[&str], layer: &[u8], diff_id: &str) -> Vec<u8> {
    let config = config_json(&[diff_id.to_owned()]);
    let config_name = format!("{}.json", hex_of(&sha256(&config)));
    let manifest = serde_json::to_vec(&serde_json::json!([{
        "Config": config_name,
        "RepoTags": tags,
        "Layers": ["0123abcd/layer.tar"],
    }]))
    .unwrap();
    tarball(&[
        ("0123abcd/layer.tar", layer),
        ("0123abcd/VERSION", b"1.0"),
        (&config_name, &config),
        ("manifest.json", &manifest),
    ])
}

/// A gzip OCI image layout of busybox (gzip layer) with `annotations` on its index entry.
fn oci_layout(annotations: serde_json::Value, corrupt_layer: bool) -> Vec<u8> {
    let layer = busybox_image_layer().unwrap();
    let config = config_json(&[sha256(&busybox_tar())]);
    let manifest = serde_json::to_vec(&serde_json::json!({
        "schemaVersion": 2,
        "mediaType": "application/vnd.oci.image.manifest.v1+json",
        "config": {"mediaType": "application/vnd.oci.image.config.v1+json",
                   "digest": sha256(&config), "size": config.len()},
        "layers": [{"mediaType": "application/vnd.oci.image.layer.v1.tar+gzip",
                    "digest": sha256(&layer), "size": layer.len()}],
    }))
    .unwrap();
    let index = serde_json::to_vec(&serde_json::json!({
        "schemaVersion": 2,
        "manifests": [{"mediaType": "application/vnd.oci.image.manifest.v1+json",
                       "digest": sha256(&manifest), "size": manifest.len(),
                       "annotations": annotations}],
    }))
    .unwrap();
    let mut stored_layer = layer.clone();
    if corrupt_layer {
        let last = stored_layer.len() - 1;
        stored_layer[last] ^= 0xff;
    }
    let names = [
        format!("blobs/sha256/{}", hex_of(&sha256(&layer))),
        format!("blobs/sha256/{}", hex_of(&sha256(&config))),
        format!("blobs/sha256/{}", hex_of(&sha256(&manifest))),
    ];
    gzip(&tarball(&[
        ("oci-layout", br#"{"imageLayoutVersion":"1.0.0"}"#),
        (&names[0], &stored_layer),
        (&names[1], &config),
        (&names[2], &manifest),
        ("index.json", &index),
    ]))
    .unwrap()
}

fn write(dir: &Path, name: &str, data: &[u8]) -> std::path::PathBuf {
    let path = dir.join(name);
    std::fs::write(&path, data).unwrap();
    path
}

/// The image runs from the store alone: resolved with IfNotPresent and Never by a puller
/// whose registry does not exist, and its root filesystem unpacked.
async fn runs_offline(store: Arc<LocalImageStore>, name: &str) {
    let puller = Puller::new(Arc::clone(&store), RegistriesConfig::default());
    let reference = Reference::parse(name).unwrap();
    for policy in [PullPolicy::IfNotPresent, PullPolicy::Never] {
        let image = puller.ensure(&reference, policy, &[]).await.unwrap();
        let ImageKind::Oci { config, .. } = &image.kind else {
            panic!("expected an OCI image, got {:?}", image.kind);
        };
        assert_eq!(config.cmd, ["sh"]);
    }
    let image = store.image(&reference).unwrap().unwrap();
    let root = tokio::task::spawn_blocking(move || store.rootfs(&image))
        .await
        .unwrap()
        .unwrap();
    assert_eq!(
        std::fs::read(root.join("bin/busybox")).unwrap(),
        std::fs::read(BUSYBOX_BIN).unwrap()
    );
}

#[tokio::test]
async fn docker_archive_imports_under_its_repo_tags_and_runs_without_a_registry() {
    let dir = tempfile::tempdir().unwrap();
    let layer = busybox_tar();
    let archive = write(
        dir.path(),
        "busybox.tar",
        &docker_archive(
            &["gateway.invalid/edge/busybox:1", "busybox:gw"],
            &layer,
            &sha256(&layer),
        ),
    );
    let store = Arc::new(LocalImageStore::open(dir.path().join("images")).unwrap());
    let report = store.import_archive(&archive, SystemTime::now()).unwrap();
    let names: Vec<&str> = report.images.iter().map(|i| i.reference.as_str()).collect();
    assert_eq!(
        names,
        [
            "gateway.invalid/edge/busybox:1",
            "docker.io/library/busybox:gw"
        ]
    );
    assert!(report.skipped.is_empty());
    runs_offline(Arc::clone(&store), "gateway.invalid/edge/busybox:1").await;
    runs_offline(Arc::clone(&store), "busybox:gw").await;

    // Imported images are pinned: GC with nothing in use and no budget keeps them.
    let gc = store.gc(&HashSet::new(), 0).unwrap();
    assert!(gc.images_removed.is_empty(), "{gc:?}");
    // Importing again is a no-op on content (same digest), and survives a reopen.
    let again = store.import_archive(&archive, SystemTime::now()).unwrap();
    assert_eq!(again, report);
    assert!(!again.unchanged, "import_archive always reads the archive");
    drop(store);
    let store = LocalImageStore::open(dir.path().join("images")).unwrap();
    assert!(
        store
            .image(&Reference::parse("busybox:gw").unwrap())
            .unwrap()
            .is_some()
    );
}

#[tokio::test]
async fn docker_archive_layers_linked_to_another_layer_are_followed_inside_the_archive() {
    // Older `docker save` writes a layer two images share once and links the other to it.
    let layer = busybox_tar();
    let config = config_json(&[sha256(&layer)]);
    let config_name = format!("{}.json", hex_of(&sha256(&config)));
    let manifest = serde_json::to_vec(&serde_json::json!([
        {"Config": config_name, "RepoTags": ["linked.invalid/a:1"], "Layers": ["aaaa/layer.tar"]},
        {"Config": config_name, "RepoTags": ["linked.invalid/b:1"], "Layers": ["bbbb/layer.tar"]},
    ]))
    .unwrap();
    let mut b = tar::Builder::new(Vec::new());
    for (path, data) in [
        ("aaaa/layer.tar", &layer[..]),
        (config_name.as_str(), &config[..]),
        ("manifest.json", &manifest[..]),
    ] {
        let mut h = tar::Header::new_ustar();
        h.set_mode(0o644);
        h.set_size(data.len() as u64);
        b.append_data(&mut h, path, data).unwrap();
    }
    let mut h = tar::Header::new_ustar();
    h.set_entry_type(tar::EntryType::Symlink);
    h.set_size(0);
    b.append_link(&mut h, "bbbb/layer.tar", "../aaaa/layer.tar")
        .unwrap();
    let dir = tempfile::tempdir().unwrap();
    let archive = write(dir.path(), "linked.tar", &b.into_inner().unwrap());
    let store = Arc::new(LocalImageStore::open(dir.path().join("images")).unwrap());
    let report = store.import_archive(&archive, SystemTime::now()).unwrap();
    assert_eq!(report.images.len(), 2);
    runs_offline(Arc::clone(&store), "linked.invalid/b:1").await;
}

#[tokio::test]
async fn oci_layout_gzip_imports_by_its_name_annotation() {
    let dir = tempfile::tempdir().unwrap();
    let archive = write(
        dir.path(),
        "app.tar.gz",
        &oci_layout(
            serde_json::json!({
                "io.containerd.image.name": "registry.invalid/gw/app:2",
                "org.opencontainers.image.ref.name": "2",
            }),
            false,
        ),
    );
    let store = Arc::new(LocalImageStore::open(dir.path().join("images")).unwrap());
    let report = store.import_archive(&archive, SystemTime::now()).unwrap();
    assert_eq!(report.images.len(), 1);
    assert_eq!(report.images[0].reference, "registry.invalid/gw/app:2");
    runs_offline(store, "registry.invalid/gw/app:2").await;

    // A bare tag names no repository: nothing to import, said so.
    let bare = write(
        dir.path(),
        "bare.tar.gz",
        &oci_layout(
            serde_json::json!({"org.opencontainers.image.ref.name": "v1"}),
            false,
        ),
    );
    let store = LocalImageStore::open(dir.path().join("images2")).unwrap();
    let err = store
        .import_archive(&bare, SystemTime::now())
        .unwrap_err()
        .to_string();
    assert!(err.contains("only by the tag \"v1\""), "{err}");
}

#[test]
fn airgap_directory_archives_are_imported_from_the_store_directory() {
    let dir = tempfile::tempdir().unwrap();
    let images = dir.path().join("images");
    std::fs::create_dir_all(&images).unwrap();
    let layer = busybox_tar();
    write(
        &images,
        "a-busybox.tar",
        &docker_archive(&["airgap.invalid/busybox:1"], &layer, &sha256(&layer)),
    );
    write(&images, "b-broken.tar", b"not a tar at all, just text");
    write(&images, "notes.txt", b"ignored");
    let store = LocalImageStore::open(&images).unwrap();
    let results = store.import_airgap_dir(SystemTime::now());
    let names: Vec<String> = results
        .iter()
        .map(|(p, _)| p.file_name().unwrap().to_string_lossy().into_owned())
        .collect();
    assert_eq!(names, ["a-busybox.tar", "b-broken.tar"]);
    assert_eq!(results[0].1.as_ref().unwrap().images.len(), 1);
    assert!(results[1].1.is_err());
    assert!(
        store
            .image(&Reference::parse("airgap.invalid/busybox:1").unwrap())
            .unwrap()
            .is_some()
    );
    assert!(!results[0].1.as_ref().unwrap().unchanged);

    // The next start does not unpack an unchanged archive again; a broken one is retried.
    let again = store.import_airgap_dir(SystemTime::now());
    assert!(again[0].1.as_ref().unwrap().unchanged);
    assert!(again[1].1.is_err());
    // Once its image is gone from the store, the archive is imported again.
    let digest = &results[0].1.as_ref().unwrap().images[0].digest;
    std::fs::remove_file(store.blob_file(digest).unwrap()).unwrap();
    let third = store.import_airgap_dir(SystemTime::now());
    let report = third[0].1.as_ref().unwrap();
    assert!(!report.unchanged, "re-imported");
    assert!(
        store
            .image(&Reference::parse("airgap.invalid/busybox:1").unwrap())
            .unwrap()
            .is_some()
    );
}

/// A tar whose single entry is named `name` verbatim (the `tar` crate refuses to write `..`).
fn raw_entry(name: &str, kind: tar::EntryType, link: Option<&str>, data: &[u8]) -> Vec<u8> {
    let mut h = tar::Header::new_old();
    {
        let old = h.as_old_mut();
        old.name[..name.len()].copy_from_slice(name.as_bytes());
        if let Some(link) = link {
            old.linkname[..link.len()].copy_from_slice(link.as_bytes());
        }
    }
    h.set_entry_type(kind);
    h.set_mode(0o644);
    h.set_size(data.len() as u64);
    h.set_cksum();
    let mut b = tar::Builder::new(Vec::new());
    b.append(&h, data).unwrap();
    b.into_inner().unwrap()
}

#[test]
fn malformed_and_escaping_archives_are_refused_with_one_line() {
    let dir = tempfile::tempdir().unwrap();
    let store = LocalImageStore::open(dir.path().join("images")).unwrap();
    let import = |name: &str, data: &[u8]| -> String {
        let path = write(dir.path(), name, data);
        let err = store.import_archive(&path, SystemTime::now()).unwrap_err();
        let mut text = err.to_string();
        let mut source = std::error::Error::source(&err);
        while let Some(s) = source {
            text.push_str(&format!(": {s}"));
            source = s.source();
        }
        assert!(!text.contains('\n'), "one line: {text}");
        text
    };
    let layer = busybox_tar();

    let cases: Vec<(&str, Vec<u8>, &str)> = vec![
        (
            "dotdot.tar",
            raw_entry("../evil", tar::EntryType::Regular, None, b"x"),
            "escapes the archive",
        ),
        (
            "absolute.tar",
            raw_entry("/tmp/kedge-evil", tar::EntryType::Regular, None, b"x"),
            "escapes the archive",
        ),
        (
            "symlink.tar",
            raw_entry(
                "manifest.json",
                tar::EntryType::Symlink,
                Some("../../../etc/passwd"),
                b"",
            ),
            "escapes the archive",
        ),
        (
            "device.tar",
            raw_entry("dev", tar::EntryType::Char, None, b""),
            "not a file or directory",
        ),
        ("text.tar", b"hello".to_vec(), "not a valid tar archive"),
        (
            "unrelated.tar",
            tarball(&[("README", b"just a file")]),
            "neither a docker archive",
        ),
        (
            "zstd.tar.zst",
            vec![0x28, 0xb5, 0x2f, 0xfd, 0, 0, 0, 0],
            "zstd",
        ),
        (
            // The layer differs from what the config says it is.
            "tampered.tar",
            docker_archive(&["x.invalid/a:1"], &layer, &sha256(b"another layer")),
            "diff_id",
        ),
        (
            "corrupt-blob.tar.gz",
            oci_layout(
                serde_json::json!({"io.containerd.image.name": "x.invalid/b:1"}),
                true,
            ),
            "does not match its digest",
        ),
        (
            "untagged.tar",
            tarball(&[(
                "manifest.json",
                br#"[{"Config":"c.json","RepoTags":null,"Layers":[]}]"#,
            )]),
            "no RepoTags",
        ),
        (
            "escaping-manifest.tar",
            tarball(&[(
                "manifest.json",
                br#"[{"Config":"../../index.json","RepoTags":["x.invalid/c:1"],"Layers":[]}]"#,
            )]),
            "escapes the archive",
        ),
    ];
    for (name, data, expect) in cases {
        let text = import(name, &data);
        assert!(text.contains(expect), "{name}: {text}");
        assert!(text.contains(name), "{name}: names the archive: {text}");
    }
    assert!(!dir.path().join("images/evil").exists());
    assert!(!dir.path().join("evil").exists());
    assert!(!Path::new("/tmp/kedge-evil").exists());
    assert!(store.images().is_empty(), "nothing recorded");
    let tmp: Vec<_> = std::fs::read_dir(dir.path().join("images/tmp"))
        .unwrap()
        .collect();
    assert!(tmp.is_empty(), "unpacked archives removed: {tmp:?}");
}

#[test]
fn a_store_owned_by_another_holder_is_refused_not_shared() {
    let dir = tempfile::tempdir().unwrap();
    let owner = LocalImageStore::open_exclusive(dir.path().join("images")).unwrap();
    let err = LocalImageStore::open_exclusive(dir.path().join("images")).unwrap_err();
    assert!(matches!(err, StoreError::Busy { .. }), "{err}");
    assert!(err.to_string().contains("in use"), "{err}");
    drop(owner);
    LocalImageStore::open_exclusive(dir.path().join("images")).unwrap();
}
