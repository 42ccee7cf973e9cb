//! Pulls and pushes through Docker's token flow: 401 with a `Bearer` challenge, the token
//! server checking the credential, the registry checking the ES256 token it issued.

use std::sync::Arc;

use kedge_registry::testing::{busybox_image_layer, wasm_module};
use kedge_registry::{
    Credential, ImageKind, LocalImageStore, OciConfig, PullErrorKind, PullPolicy, Puller,
    RegistriesConfig, push_wasm,
};

use crate::token_registry;

fn new_puller(config: RegistriesConfig) -> (tempfile::TempDir, Puller) {
    let dir = tempfile::tempdir().unwrap();
    let store = Arc::new(LocalImageStore::open(dir.path().join("images")).unwrap());
    (dir, Puller::new(store, config))
}

#[tokio::test]
async fn token_auth_push_wasm_and_pull_back_with_the_right_credential() {
    let reg = token_registry();
    let reference = reg.reference("apps/hello:v1");
    let module = wasm_module("token-hello");
    let digest = push_wasm(
        &reference,
        &module,
        &reg.credential(),
        &reg.registries_config(false),
        |_, _| {},
    )
    .await
    .unwrap_or_else(|e| panic!("{e}\nregistry log:\n{}", reg.log()));

    let pushes: Vec<_> = reg
        .token_requests()
        .into_iter()
        .filter(|r| r.granted == ["repository:apps/hello:pull,push"])
        .collect();
    assert!(!pushes.is_empty(), "{:?}", reg.token_requests());
    assert!(
        pushes
            .iter()
            .all(|r| r.user.as_deref() == Some(reg.username.as_str()))
    );

    let (_dir, puller) = new_puller(reg.registries_config(false));
    let image = puller
        .ensure(&reference, PullPolicy::Always, &[reg.credential()])
        .await
        .unwrap_or_else(|e| panic!("{e}\nregistry log:\n{}", reg.log()));
    assert_eq!(image.digest, digest);
    let ImageKind::Wasm { module: path } = &image.kind else {
        panic!("expected wasm, got {:?}", image.kind);
    };
    assert_eq!(std::fs::read(path).unwrap(), module);
    assert!(
        reg.token_requests()
            .iter()
            .any(|r| r.granted == ["repository:apps/hello:pull"]),
        "the pull used a pull-scoped token: {:?}",
        reg.token_requests()
    );

    // A wrong password cannot push either: the token server refuses it.
    let err = push_wasm(
        &reference,
        &module,
        &Credential::basic(&reg.username, "wrong-password"),
        &reg.registries_config(false),
        |_, _| {},
    )
    .await
    .unwrap_err();
    assert_eq!(err.kind, PullErrorKind::Unauthorized, "{err}");
}

#[tokio::test]
async fn token_auth_busybox_pulls_only_with_the_right_credential() {
    let reg = token_registry();
    let layer = busybox_image_layer().unwrap();
    let config = OciConfig {
        cmd: vec!["sh".into()],
        ..OciConfig::default()
    };
    let digest = reg
        .push_oci_image("busybox:1", &[layer], &config)
        .await
        .unwrap_or_else(|e| panic!("{e}\nregistry log:\n{}", reg.log()));
    let reference = reg.reference("busybox:1");
    let (_dir, puller) = new_puller(reg.registries_config(false));

    // The token server says no to a wrong password, so the registry sees no token.
    let err = puller
        .ensure(
            &reference,
            PullPolicy::Always,
            &[Credential::basic(&reg.username, "wrong-password")],
        )
        .await
        .unwrap_err();
    assert_eq!(err.kind, PullErrorKind::Unauthorized, "{err}");
    assert!(err.message.contains("401 Unauthorized"), "{err}");
    assert!(
        reg.token_requests()
            .iter()
            .any(|r| r.status == 401 && r.user.as_deref() == Some(reg.username.as_str())),
        "{:?}",
        reg.token_requests()
    );

    // Anonymous gets a token, but one without access: the registry says no.
    let before = reg.token_requests().len();
    let err = puller
        .ensure(&reference, PullPolicy::Always, &[])
        .await
        .unwrap_err();
    assert_eq!(err.kind, PullErrorKind::Unauthorized, "{err}");
    let anonymous: Vec<_> = reg.token_requests()[before..]
        .iter()
        .filter(|r| r.user.is_none())
        .cloned()
        .collect();
    assert!(!anonymous.is_empty(), "{:?}", reg.token_requests());
    assert!(
        anonymous
            .iter()
            .all(|r| r.status == 200 && r.granted.is_empty()),
        "{anonymous:?}"
    );

    let image = puller
        .ensure(&reference, PullPolicy::Always, &[reg.credential()])
        .await
        .unwrap_or_else(|e| panic!("{e}\nregistry log:\n{}", reg.log()));
    assert_eq!(image.digest, digest);
    let ImageKind::Oci {
        config: got,
        layers,
    } = &image.kind
    else {
        panic!("expected oci, got {:?}", image.kind);
    };
    assert_eq!(got, &config);
    assert_eq!(layers.len(), 1);
    let root = puller.store().rootfs(&image).unwrap();
    assert!(root.join("bin/busybox").is_file());

    // The node's registries.yaml credential works through the token flow too.
    let (_dir2, node) = new_puller(reg.registries_config(true));
    node.ensure(&reference, PullPolicy::Always, &[])
        .await
        .unwrap();
}

/// Guards against a registry that takes any token: only the token server's signature opens it.
#[tokio::test]
async fn token_auth_registry_checks_the_token_signature() {
    let reg = token_registry();
    let ca = reqwest::Certificate::from_pem(reg.ca_pem.as_bytes()).unwrap();
    let client = reqwest::Client::builder()
        .tls_certs_merge([ca])
        .build()
        .unwrap();
    let base = format!("https://{}/v2/", reg.host());
    let challenge = client.get(&base).send().await.unwrap();
    assert_eq!(challenge.status(), 401);
    let challenge = challenge.headers()["www-authenticate"].to_str().unwrap();
    assert!(
        challenge.starts_with("Bearer ") && challenge.contains("service=\"kedge-test-registry\""),
        "{challenge}"
    );
    let realm = challenge
        .split("realm=\"")
        .nth(1)
        .and_then(|r| r.split('"').next())
        .unwrap();
    let body: serde_json::Value = client
        .get(realm)
        .query(&[
            ("service", "kedge-test-registry"),
            ("scope", "repository:x:pull"),
        ])
        .basic_auth(&reg.username, Some(&reg.password))
        .send()
        .await
        .unwrap()
        .json()
        .await
        .unwrap();
    let token = body["token"].as_str().unwrap();
    let status = |token: String| {
        let request = client.get(&base).bearer_auth(token);
        async move { request.send().await.unwrap().status().as_u16() }
    };
    assert_eq!(status(token.to_owned()).await, 200, "{}", reg.log());
    // One signature character changed (data bits, not base64 padding).
    let at = token.rfind('.').unwrap() + 5;
    let flipped = if &token[at..=at] == "A" { "B" } else { "A" };
    let forged = format!("{}{flipped}{}", &token[..at], &token[at + 1..]);
    assert_eq!(status(forged).await, 401);
}
