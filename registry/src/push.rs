//! Pushing Wasm modules and components as OCI artifacts (`kedge push`), in the CNCF wasm OCI
//! artifact layout: one `application/vnd.wasm.content.layer.v1+wasm` layer and an
//! `application/vnd.wasm.config.v0+json` config, so other Wasm-aware tools can pull it.

use std::sync::Arc;

use futures_util::StreamExt as _;
use oci_client::client::{Certificate, CertificateEncoding, ClientConfig, ClientProtocol};
use oci_client::manifest::{OciDescriptor, OciImageManifest};
use sha2::{Digest as _, Sha256};
use tracing::{debug, info};

use crate::auth::Credential;
use crate::config::RegistriesConfig;
use crate::image::{WASM_CONFIG_MEDIA_TYPE, WASM_LAYER_MEDIA_TYPE};
use crate::pull::{PullError, PullErrorKind, classify_error, error_chain, to_oci_reference};
use crate::reference::Reference;

/// Upload granularity: progress is reported once per chunk, each one PATCH request.
const CHUNK: usize = 1 << 20;

/// Builds a client for `registry` with its CA and TLS settings from `config`. Never share one
/// between credentials: oci-client caches auth per registry on the client.
pub(crate) fn client_for(
    config: &RegistriesConfig,
    registry: &str,
) -> Result<oci_client::Client, PullError> {
    client_for_endpoint(config, registry, false)
}

/// [`client_for`] a mirror endpoint, over plain HTTP if it says `http://`.
pub(crate) fn client_for_endpoint(
    config: &RegistriesConfig,
    registry: &str,
    plain_http: bool,
) -> Result<oci_client::Client, PullError> {
    let mut cc = ClientConfig {
        protocol: if plain_http {
            ClientProtocol::Http
        } else {
            ClientProtocol::Https
        },
        connect_timeout: Some(crate::pull::CONNECT_TIMEOUT),
        read_timeout: Some(crate::pull::READ_TIMEOUT),
        accept_invalid_certificates: config.insecure_skip_verify(registry),
        // Platform choice is the puller's (Wasm entries too), so oci-client must not resolve.
        platform_resolver: None,
        ..ClientConfig::default()
    };
    if let Some(pem) = config
        .ca_pem(registry)
        .map_err(|e| PullError::new(PullErrorKind::Network, error_chain(&e)))?
    {
        cc.extra_root_certificates.push(Certificate {
            encoding: CertificateEncoding::Pem,
            data: pem,
        });
    }
    oci_client::Client::try_from(cc).map_err(|e| {
        PullError::new(
            PullErrorKind::Network,
            format!("cannot set up a client for {registry}: {}", error_chain(&e)),
        )
    })
}

fn push_err(reference: &Reference, e: &oci_client::errors::OciDistributionError) -> PullError {
    let (kind, detail) = classify_error(e);
    PullError::new(kind, format!("failed to push \"{reference}\": {detail}"))
}

fn sha256(bytes: &[u8]) -> String {
    format!("sha256:{}", hex::encode(Sha256::digest(bytes)))
}

/// Whether `bytes` is a component (layer 1) rather than a core module: decides the config's
/// `os` (`wasip2` vs `wasip1`).
fn is_component(bytes: &[u8]) -> bool {
    bytes.get(4..8) == Some(&[0x0d, 0x00, 0x01, 0x00])
}

/// Pushes a Wasm module or component to `reference` and returns the manifest digest.
///
/// `progress(sent, total)` is called with 0 before the first byte, after each 1 MiB chunk of
/// the module is acknowledged by the registry, and with `total` at the end (config and
/// manifest are small and not counted).
pub async fn push_wasm(
    reference: &Reference,
    bytes: &[u8],
    credential: &Credential,
    config: &RegistriesConfig,
    mut progress: impl FnMut(u64, u64),
) -> Result<String, PullError> {
    if bytes.get(..4) != Some(b"\0asm") {
        return Err(PullError::new(
            PullErrorKind::Unsupported,
            format!("refusing to push \"{reference}\": not a Wasm binary (no \\0asm header)"),
        ));
    }
    let client = client_for(config, reference.registry())?;
    let oci_ref = to_oci_reference(reference);
    client
        .store_auth_if_needed(oci_ref.resolve_registry(), &credential.to_oci())
        .await;

    let total = bytes.len() as u64;
    let layer_digest = sha256(bytes);
    let component = is_component(bytes);
    let config_json = serde_json::json!({
        "architecture": "wasm",
        "os": if component { "wasip2" } else { "wasip1" },
        "layerDigests": [layer_digest],
        "component": if component { serde_json::json!({}) } else { serde_json::Value::Null },
    });
    let config_bytes = serde_json::to_vec(&config_json)
        .map_err(|e| PullError::new(PullErrorKind::Unsupported, e.to_string()))?;
    let config_digest = sha256(&config_bytes);

    progress(0, total);
    let exists = client
        .blob_exists(&oci_ref, &layer_digest)
        .await
        .map_err(|e| push_err(reference, &e))?;
    if exists {
        debug!(blob = %layer_digest, "layer already in the registry");
    } else {
        // Chunks are pulled from the stream one at a time, each after the previous PATCH
        // returned, so the count a chunk reports is what the registry has acknowledged.
        let (tx, mut rx) = tokio::sync::mpsc::unbounded_channel::<u64>();
        let data = bytes::Bytes::copy_from_slice(bytes);
        let chunks: Vec<bytes::Bytes> = (0..data.len())
            .step_by(CHUNK)
            .map(|at| data.slice(at..(at + CHUNK).min(data.len())))
            .collect();
        let sent = Arc::new(std::sync::atomic::AtomicU64::new(0));
        let stream = futures_util::stream::iter(chunks).map(move |chunk| {
            let before = sent.fetch_add(chunk.len() as u64, std::sync::atomic::Ordering::Relaxed);
            let _ = tx.send(before);
            Ok::<_, oci_client::errors::OciDistributionError>(chunk)
        });
        let push = client.push_blob_stream(&oci_ref, stream, &layer_digest, Some(total));
        tokio::pin!(push);
        let result = loop {
            tokio::select! {
                r = &mut push => break r,
                Some(sent) = rx.recv() => progress(sent, total),
            }
        };
        result.map_err(|e| push_err(reference, &e))?;
    }
    progress(total, total);

    client
        .push_blob(&oci_ref, config_bytes.clone(), &config_digest)
        .await
        .map_err(|e| push_err(reference, &e))?;

    let manifest = OciImageManifest {
        schema_version: 2,
        media_type: Some("application/vnd.oci.image.manifest.v1+json".to_owned()),
        artifact_type: Some(WASM_CONFIG_MEDIA_TYPE.to_owned()),
        config: OciDescriptor {
            media_type: WASM_CONFIG_MEDIA_TYPE.to_owned(),
            digest: config_digest,
            size: config_bytes.len() as i64,
            ..OciDescriptor::default()
        },
        layers: vec![OciDescriptor {
            media_type: WASM_LAYER_MEDIA_TYPE.to_owned(),
            digest: layer_digest,
            size: bytes.len() as i64,
            ..OciDescriptor::default()
        }],
        subject: None,
        annotations: None,
    };
    let body = serde_json::to_vec(&manifest)
        .map_err(|e| PullError::new(PullErrorKind::Unsupported, e.to_string()))?;
    let digest = sha256(&body);
    let content_type =
        reqwest::header::HeaderValue::from_static("application/vnd.oci.image.manifest.v1+json");
    client
        .push_manifest_raw(&oci_ref, body, content_type)
        .await
        .map_err(|e| push_err(reference, &e))?;
    info!(image = %reference, %digest, bytes = total, "wasm artifact pushed");
    Ok(digest)
}
