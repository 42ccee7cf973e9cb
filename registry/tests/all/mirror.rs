//! `registries.yaml` mirrors against real registries on 127.0.0.1: endpoints in order, rewrite,
//! fall-through, and the failures that stop a pull.

use std::sync::Arc;

use kedge_registry::testing::{TestRegistry, file_layer};
use kedge_registry::{
    LocalImageStore, OciConfig, PullErrorKind, PullPolicy, Puller, Reference, RegistriesConfig,
};

use crate::registry;

/// A loopback port nothing listens on (connection refused at once).
fn dead_port() -> u16 {
    let l = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
    l.local_addr().unwrap().port()
}

/// The `configs` entry trusting `reg`'s CA, with its credential or a wrong password.
fn config_entry(reg: &TestRegistry, password: &str) -> String {
    format!(
        "  \"{host}\":\n    auth: {{ username: {user}, password: {password} }}\n    tls: {{ ca_file: {ca} }}\n",
        host = reg.host(),
        user = reg.username,
        ca = reg.ca_file.display(),
    )
}

fn puller(yaml: &str) -> (tempfile::TempDir, Puller) {
    let config = RegistriesConfig::parse(yaml).unwrap_or_else(|e| panic!("{yaml}\n{e}"));
    let dir = tempfile::tempdir().unwrap();
    let store = Arc::new(LocalImageStore::open(dir.path().join("images")).unwrap());
    (dir, Puller::new(store, config))
}

#[tokio::test]
async fn image_only_on_a_mirror_is_pulled_under_its_original_name_through_a_rewrite() {
    let mirror = registry();
    let digest = mirror
        .push_oci_image(
            "mirrored/team/app:v1",
            &[file_layer("etc/app", b"from the mirror").unwrap()],
            &OciConfig::default(),
        )
        .await
        .unwrap();
    // The image's own registry does not answer at all, nor does the first mirror endpoint.
    let origin = format!("127.0.0.1:{}", dead_port());
    let yaml = format!(
        "mirrors:\n  \"{origin}\":\n    endpoint:\n      - \"https://127.0.0.1:{dead}\"\n      - \"https://{mirror}\"\n    rewrite:\n      \"^team/(.*)\": \"mirrored/team/$1\"\nconfigs:\n{entry}",
        dead = dead_port(),
        mirror = mirror.host(),
        entry = config_entry(&mirror, &mirror.password),
    );
    let (_dir, puller) = puller(&yaml);
    let reference = Reference::parse(&format!("{origin}/team/app:v1")).unwrap();
    let image = puller
        .ensure(&reference, PullPolicy::Always, &[])
        .await
        .unwrap();
    assert_eq!(image.digest, digest);
    assert_eq!(image.reference, reference.to_string(), "stored as named");
    assert_eq!(image.image_id, format!("{origin}/team/app@{digest}"));
    // The mirror's own name for it is not recorded.
    assert!(
        puller
            .store()
            .image(&mirror.reference("mirrored/team/app:v1"))
            .unwrap()
            .is_none()
    );

    // Without the rewrite the mirror has no such repository: 404, then the dead registry.
    let yaml = format!(
        "mirrors:\n  \"{origin}\":\n    endpoint: [\"https://{mirror}\"]\nconfigs:\n{entry}",
        mirror = mirror.host(),
        entry = config_entry(&mirror, &mirror.password),
    );
    let (_dir2, plain) = self::puller(&yaml);
    let err = plain
        .ensure(&reference, PullPolicy::Always, &[])
        .await
        .unwrap_err();
    assert!(
        err.message.contains(&format!("https://{}", mirror.host())),
        "the mirror's failure is in the message: {err}"
    );
    assert_eq!(err.kind, PullErrorKind::Network, "{err}");
}

#[tokio::test]
async fn mirror_without_the_image_falls_through_to_the_registry_itself() {
    let mirror = registry();
    let origin = registry();
    let digest = origin
        .push_oci_image(
            "team/app:v2",
            &[file_layer("etc/app", b"from the origin").unwrap()],
            &OciConfig::default(),
        )
        .await
        .unwrap();
    let yaml = format!(
        "mirrors:\n  \"*\":\n    endpoint: [\"https://{mirror}\"]\nconfigs:\n{m}{o}",
        mirror = mirror.host(),
        m = config_entry(&mirror, &mirror.password),
        o = config_entry(&origin, &origin.password),
    );
    let (_dir, puller) = puller(&yaml);
    let image = puller
        .ensure(&origin.reference("team/app:v2"), PullPolicy::Always, &[])
        .await
        .unwrap();
    assert_eq!(image.digest, digest);
    assert_eq!(image.reference, origin.reference("team/app:v2").to_string());
}

#[tokio::test]
async fn mirror_refusing_the_credential_is_named_in_the_error() {
    let mirror = registry();
    mirror
        .push_oci_image(
            "team/app:v3",
            &[file_layer("etc/app", b"x").unwrap()],
            &OciConfig::default(),
        )
        .await
        .unwrap();
    let origin = format!("127.0.0.1:{}", dead_port());
    let yaml = format!(
        "mirrors:\n  \"{origin}\":\n    endpoint: [\"https://{mirror}\"]\nconfigs:\n{entry}",
        mirror = mirror.host(),
        entry = config_entry(&mirror, "wrong-password"),
    );
    let (_dir, puller) = puller(&yaml);
    let reference = Reference::parse(&format!("{origin}/team/app:v3")).unwrap();
    let err = puller
        .ensure(&reference, PullPolicy::Always, &[])
        .await
        .unwrap_err();
    assert!(
        err.message
            .contains(&format!("from mirror https://{}", mirror.host()))
            && err.message.contains("401 Unauthorized"),
        "{err}"
    );
}

#[tokio::test]
async fn corrupt_blob_on_a_mirror_stops_the_pull_even_if_the_registry_has_it() {
    let mirror = registry();
    let origin = registry();
    let layer = file_layer("data", &[7u8; 4096]).unwrap();
    for reg in [&mirror, &origin] {
        reg.push_oci_image(
            "team/app:v4",
            std::slice::from_ref(&layer),
            &OciConfig::default(),
        )
        .await
        .unwrap();
    }
    let layer_digest = {
        use sha2::Digest as _;
        format!("sha256:{}", hex::encode(sha2::Sha256::digest(&layer)))
    };
    let path = mirror.blob_data_path(&layer_digest);
    let mut bad = std::fs::read(&path).unwrap();
    let last = bad.len() - 1;
    bad[last] ^= 0xff;
    std::fs::write(&path, bad).unwrap();

    let yaml = format!(
        "mirrors:\n  \"{o}\":\n    endpoint: [\"https://{m}\"]\nconfigs:\n{me}{oe}",
        o = origin.host(),
        m = mirror.host(),
        me = config_entry(&mirror, &mirror.password),
        oe = config_entry(&origin, &origin.password),
    );
    let (_dir, puller) = puller(&yaml);
    let err = puller
        .ensure(&origin.reference("team/app:v4"), PullPolicy::Always, &[])
        .await
        .unwrap_err();
    assert_eq!(err.kind, PullErrorKind::Corrupt, "{err}");
    assert!(
        err.message
            .contains(&format!("from mirror https://{}", mirror.host())),
        "{err}"
    );
    assert!(!puller.store().has_blob(&layer_digest));
}
