//! Pulling images from OCI registries into the store, with kubelet's pull policies and
//! credential order.
//!
//! One `oci_client::Client` is built per attempt (registry settings + one credential) and
//! dropped after it: oci-client caches credentials and tokens per registry on a client, so a
//! shared client would let one pod's `imagePullSecrets` serve another pod's pull.

use std::collections::HashMap;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, SystemTime};

use futures_util::StreamExt as _;
use oci_client::errors::{OciDistributionError, OciErrorCode};
use oci_client::manifest::{OciDescriptor, OciImageManifest};
use sha2::{Digest as _, Sha256};
use tokio::io::AsyncWriteExt as _;
use tracing::{Instrument as _, debug, info, info_span, warn};

use crate::auth::Credential;
use crate::config::{PullSource, RegistriesConfig};
use crate::image::{
    Image, ImageConfigJson, TAR_LAYER_MEDIA_TYPES, WASM_CONFIG_MEDIA_TYPE, WASM_LAYER_MEDIA_TYPES,
    node_arch,
};
use crate::reference::{PullPolicy, RefError, Reference};
use crate::store::{LocalImageStore, ManifestRecord, RecordKind, StoreError};

/// Manifest media types we ask for: OCI and Docker schema 2, single and multi-platform.
const ACCEPTED_MANIFESTS: &[&str] = &[
    "application/vnd.oci.image.manifest.v1+json",
    "application/vnd.oci.image.index.v1+json",
    "application/vnd.docker.distribution.manifest.v2+json",
    "application/vnd.docker.distribution.manifest.list.v2+json",
];
/// oci-client's constant for the (draft) v1 Wasm config; some tools push it.
const WASM_CONFIG_V1_MEDIA_TYPE: &str = "application/vnd.wasm.config.v1+json";
/// A registry that accepts the connection but then stalls must not hang a pod start for ever.
pub(crate) const CONNECT_TIMEOUT: Duration = Duration::from_secs(10);
pub(crate) const READ_TIMEOUT: Duration = Duration::from_secs(60);
/// Manifests and configs are small; a bigger one is refused rather than buffered.
const MAX_MANIFEST_BYTES: i64 = 4 << 20;

/// What went wrong, coarse enough for callers to decide (retry, back off, give up).
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum PullErrorKind {
    /// The reference does not parse.
    InvalidName,
    /// Policy `Never` and the image is not on the node.
    NeverPull,
    /// The registry refused every credential tried (401/403, token endpoint refused).
    Unauthorized,
    /// No such repository, tag, digest, or no manifest for this node's platform.
    NotFound,
    /// Could not talk to the registry (connection, TLS, timeout, 5xx).
    Network,
    /// Content did not match its digest or size.
    Corrupt,
    /// A media type or manifest this node cannot run.
    Unsupported,
    /// The local store failed (disk full, permissions).
    Store,
}

/// A failed `ensure` or push. `message` is what a pod event shows; `reason()` is the
/// container's waiting reason.
#[derive(Clone, Debug, thiserror::Error)]
#[error("{message}")]
pub struct PullError {
    pub kind: PullErrorKind,
    pub message: String,
}

/// Pushes fail the same ways pulls do.
pub type PushError = PullError;

impl PullError {
    pub(crate) fn new(kind: PullErrorKind, message: impl Into<String>) -> Self {
        Self {
            kind,
            message: message.into(),
        }
    }

    /// Kubelet's `containerStatuses[].state.waiting.reason` for this failure.
    pub fn reason(&self) -> &'static str {
        match self.kind {
            PullErrorKind::InvalidName => "InvalidImageName",
            PullErrorKind::NeverPull => "ErrImageNeverPull",
            _ => "ErrImagePull",
        }
    }
}

impl From<RefError> for PullError {
    fn from(e: RefError) -> Self {
        Self::new(PullErrorKind::InvalidName, e.to_string())
    }
}

impl From<StoreError> for PullError {
    fn from(e: StoreError) -> Self {
        let kind = match e {
            StoreError::CorruptBlob { .. } | StoreError::DigestMismatch { .. } => {
                PullErrorKind::Corrupt
            }
            StoreError::UnsupportedDigest(_) => PullErrorKind::Unsupported,
            _ => PullErrorKind::Store,
        };
        Self::new(kind, error_chain(&e))
    }
}

/// `e: source: source...`, since callers show one line.
pub(crate) fn error_chain(e: &dyn std::error::Error) -> String {
    let mut out = e.to_string();
    let mut source = e.source();
    let mut depth = 0;
    while let Some(s) = source {
        let text = s.to_string();
        if !out.contains(&text) {
            out.push_str(": ");
            out.push_str(&text);
        }
        source = s.source();
        depth += 1;
        if depth > 16 {
            break;
        }
    }
    out
}

/// Pulls images into a store. Share one per node (behind an `Arc`); it holds no credentials.
pub struct Puller {
    store: Arc<LocalImageStore>,
    config: RegistriesConfig,
    /// Serialises downloads of one blob so concurrent pulls of images sharing a layer fetch it
    /// once; entries are removed when unused.
    blob_locks: Mutex<HashMap<String, Arc<tokio::sync::Mutex<()>>>>,
    blobs_downloaded: AtomicU64,
    clock: fn() -> SystemTime,
    /// `--ensure-secret-pulled-images` (KEP-2535).
    ensure_secret_pulled: bool,
}

/// KEP-2535 marks (see `store::Index::pulled_with`).
const ANONYMOUS: &str = "anonymous";
const NODE: &str = "node";

/// A credential for `host` as the store remembers it: its SHA-256, never the secret itself.
fn fingerprint(host: &str, credential: &Credential) -> String {
    match credential {
        Credential::Anonymous => ANONYMOUS.to_string(),
        Credential::Basic { username, password } => {
            let mut h = Sha256::new();
            for part in [host, username, password] {
                h.update(part.as_bytes());
                h.update([0]);
            }
            format!("sha256:{}", hex::encode(h.finalize()))
        }
    }
}

impl std::fmt::Debug for Puller {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Puller")
            .field("store", &self.store.dir())
            .finish_non_exhaustive()
    }
}

impl Puller {
    pub fn new(store: Arc<LocalImageStore>, config: RegistriesConfig) -> Self {
        Self {
            store,
            config,
            blob_locks: Mutex::default(),
            blobs_downloaded: AtomicU64::new(0),
            clock: SystemTime::now,
            ensure_secret_pulled: false,
        }
    }

    /// Kubernetes' `KubeletEnsureSecretPulledImages` (KEP-2535), off by default as upstream:
    /// an image on the node that was pulled with a pod's credentials serves another pod only
    /// if that pod holds the same credential, or proves access by pulling it again with its
    /// own; images pulled anonymously or with the node's own credential, and preloaded ones
    /// (imported, or on the node before the records), are shared (upstream's default
    /// `NeverVerifyPreloadedImages` policy).
    pub fn with_secret_pulled_images_verified(mut self, on: bool) -> Self {
        self.ensure_secret_pulled = on;
        self
    }

    /// Whether `--ensure-secret-pulled-images` is on.
    pub fn verifies_secret_pulled_images(&self) -> bool {
        self.ensure_secret_pulled
    }

    /// Whether `image`, on the node, may serve a pod holding `credentials` without a pull.
    pub fn usable_without_pull(
        &self,
        reference: &Reference,
        image: &Image,
        credentials: &[Credential],
    ) -> bool {
        if !self.ensure_secret_pulled {
            return true;
        }
        let Some(pulled_with) = self.store.pulled_with(&image.digest) else {
            return true; // preloaded
        };
        if pulled_with.contains(ANONYMOUS) || pulled_with.contains(NODE) {
            return true;
        }
        credentials
            .iter()
            .any(|c| pulled_with.contains(&fingerprint(reference.registry(), c)))
    }

    /// Records what pulling `reference` from `endpoint_host` with `credential` means for
    /// KEP-2535: anonymous, the node's own credential for that endpoint, or a pod's (kept as
    /// its fingerprint for the image's registry, which is what pods' keyrings are keyed by).
    async fn note_pulled_with(
        &self,
        digest: &str,
        reference: &Reference,
        endpoint_host: &str,
        credential: &Credential,
    ) {
        let mark = match credential {
            Credential::Anonymous => ANONYMOUS.to_string(),
            c if self.config.credential(endpoint_host).as_ref() == Some(c) => NODE.to_string(),
            c => fingerprint(reference.registry(), c),
        };
        let store = Arc::clone(&self.store);
        let digest = digest.to_owned();
        if let Err(e) = blocking(move || store.note_pulled_with(&digest, &mark)).await {
            warn!(error = %e, "cannot record which credential pulled an image");
        }
    }

    /// Replaces the clock that stamps last-use times (tests control GC order with it).
    pub fn with_clock(mut self, clock: fn() -> SystemTime) -> Self {
        self.clock = clock;
        self
    }

    pub fn store(&self) -> &Arc<LocalImageStore> {
        &self.store
    }

    /// Blobs (configs and layers) fetched from registries so far; manifests not counted.
    pub fn blobs_downloaded(&self) -> u64 {
        self.blobs_downloaded.load(Ordering::Relaxed)
    }

    /// Makes `reference` present according to `policy`, trying `credentials` in order, then the
    /// node's `registries.yaml` credential, then anonymous access (kubelet's order).
    /// `IfNotPresent` with the image present and `Never` touch no network.
    pub async fn ensure(
        &self,
        reference: &Reference,
        policy: PullPolicy,
        credentials: &[Credential],
    ) -> Result<Image, PullError> {
        let span = info_span!("pull", image = %reference, ?policy);
        self.ensure_inner(reference, policy, credentials)
            .instrument(span)
            .await
    }

    async fn ensure_inner(
        &self,
        reference: &Reference,
        policy: PullPolicy,
        credentials: &[Credential],
    ) -> Result<Image, PullError> {
        let present = self.local(reference).await?;
        let present = match present {
            Some(image) if !self.usable_without_pull(reference, &image, credentials) => {
                if policy == PullPolicy::Never {
                    return Err(PullError::new(
                        PullErrorKind::NeverPull,
                        format!(
                            "Container image \"{reference}\" is present but was pulled with credentials this pod does not hold, and pull policy Never forbids verifying them"
                        ),
                    ));
                }
                info!(
                    "image present but pulled with credentials this pod does not hold: verifying with the registry"
                );
                None
            }
            other => other,
        };
        match (policy, present) {
            (PullPolicy::Never | PullPolicy::IfNotPresent, Some(image)) => {
                debug!(digest = %image.digest, "image present; not pulling");
                self.touch(&image.digest).await?;
                return Ok(image);
            }
            (PullPolicy::Never, None) => {
                return Err(PullError::new(
                    PullErrorKind::NeverPull,
                    format!(
                        "Container image \"{reference}\" is not present with pull policy of Never"
                    ),
                ));
            }
            _ => {}
        }

        let sources = self.config.sources(reference);
        let mut failed: Vec<String> = Vec::new();
        for (i, source) in sources.iter().enumerate() {
            let last = i + 1 == sources.len();
            match self.pull_from(reference, source, credentials).await {
                Ok(image) => {
                    info!(digest = %image.digest, endpoint = %source.endpoint.url(), "image pulled");
                    return Ok(image);
                }
                Err(e) if !last && falls_through(e.kind) => {
                    // A mirror without the image is routine (`"*"` mirrors); anything else
                    // is worth a line.
                    if e.kind == PullErrorKind::NotFound {
                        debug!(endpoint = %source.endpoint.url(), error = %e, "not on this endpoint; trying the next");
                    } else {
                        warn!(endpoint = %source.endpoint.url(), error = %e, "endpoint failed; trying the next");
                    }
                    failed.push(format!("{}: {}", source.endpoint.url(), e.message));
                }
                Err(mut e) => {
                    if !failed.is_empty() {
                        e.message = format!(
                            "{} (from {}; before it: {})",
                            e.message,
                            source.endpoint.url(),
                            failed.join("; ")
                        );
                    }
                    return Err(e);
                }
            }
        }
        Err(PullError::new(PullErrorKind::Network, "no endpoint to try"))
    }

    /// Tries one endpoint with each credential that may go there: for the registry itself the
    /// pod's, the node's, then anonymous (kubelet's order); for a mirror only the node's for
    /// that mirror host and anonymous, so a pod's secret never leaves for another host.
    async fn pull_from(
        &self,
        reference: &Reference,
        source: &PullSource,
        credentials: &[Credential],
    ) -> Result<Image, PullError> {
        let mut candidates: Vec<Credential> = Vec::new();
        let pod: &[Credential] = if source.mirror { &[] } else { credentials };
        let node = self.config.credential(&source.endpoint.host);
        for c in pod
            .iter()
            .cloned()
            .chain(node)
            .chain([Credential::Anonymous])
        {
            if !candidates.contains(&c) {
                candidates.push(c);
            }
        }
        let mut first_error: Option<PullError> = None;
        let tried = candidates.len();
        for credential in candidates {
            match self.pull_with(reference, source, &credential).await {
                Ok(image) => {
                    self.note_pulled_with(
                        &image.digest,
                        reference,
                        &source.endpoint.host,
                        &credential,
                    )
                    .await;
                    return Ok(image);
                }
                Err(e)
                    if matches!(
                        e.kind,
                        PullErrorKind::Unauthorized | PullErrorKind::NotFound
                    ) =>
                {
                    debug!(credential = ?credential, error = %e, "pull attempt refused");
                    first_error.get_or_insert(e);
                }
                Err(e) => return Err(e),
            }
        }
        let mut error = first_error
            .unwrap_or_else(|| PullError::new(PullErrorKind::Network, "no credential to try"));
        if tried > 1 {
            error
                .message
                .push_str(&format!(" (tried {tried} credentials incl. anonymous)"));
        }
        Err(error)
    }

    async fn local(&self, reference: &Reference) -> Result<Option<Image>, PullError> {
        let store = Arc::clone(&self.store);
        let reference = reference.clone();
        blocking(move || store.image(&reference)).await
    }

    async fn touch(&self, digest: &str) -> Result<(), PullError> {
        let store = Arc::clone(&self.store);
        let digest = digest.to_owned();
        let now = (self.clock)();
        blocking(move || store.touch(&digest, now)).await
    }

    async fn pull_with(
        &self,
        reference: &Reference,
        source: &PullSource,
        credential: &Credential,
    ) -> Result<Image, PullError> {
        // A client for one attempt: the endpoint's CA and TLS settings, nothing cached.
        let client = crate::push::client_for_endpoint(
            &self.config,
            &source.endpoint.host,
            source.endpoint.plain_http,
        )?;
        let oci_ref = source_reference(reference, source);
        let auth = credential.to_oci();
        let ctx = Ctx {
            puller: self,
            client: &client,
            oci_ref: &oci_ref,
            reference,
            source,
            credential,
        };

        let (body, digest) = match client
            .pull_manifest_raw(&oci_ref, &auth, ACCEPTED_MANIFESTS)
            .await
        {
            Ok(v) => v,
            Err(e) => return Err(ctx.err(e).await),
        };
        let (body, digest) = match parse_manifest(&body)? {
            Manifest::Image(_) => (body, digest),
            Manifest::Index(entries) => {
                let chosen = choose_platform(&entries).ok_or_else(|| {
                    PullError::new(
                        PullErrorKind::NotFound,
                        format!(
                            "failed to pull image \"{reference}\": no manifest for linux/{} or \
                             wasm in the image index",
                            node_arch()
                        ),
                    )
                })?;
                debug!(index = %digest, manifest = %chosen, "platform chosen from index");
                let by_digest = oci_ref.clone_with_digest(chosen.clone());
                match client
                    .pull_manifest_raw(&by_digest, &auth, ACCEPTED_MANIFESTS)
                    .await
                {
                    Ok(v) => v,
                    Err(e) => return Err(ctx.err(e).await),
                }
            }
        };
        let Manifest::Image(manifest) = parse_manifest(&body)? else {
            return Err(ctx.fail(PullErrorKind::Unsupported, "index nested in an index"));
        };
        if body.len() as i64 > MAX_MANIFEST_BYTES || manifest.config.size > MAX_MANIFEST_BYTES {
            return Err(ctx.fail(PullErrorKind::Unsupported, "manifest or config too large"));
        }

        let mut pin = self.store.pin();
        pin.add(&digest);
        pin.add(&manifest.config.digest);
        for layer in &manifest.layers {
            pin.add(&layer.digest);
        }

        // The manifest itself, verified against the digest the registry gave.
        {
            let store = Arc::clone(&self.store);
            let digest = digest.clone();
            let body = body.to_vec();
            blocking(move || {
                if !store.has_blob(&digest) {
                    let mut w = store.blob_writer(&digest)?;
                    w.write(&body)?;
                    w.commit()?;
                }
                Ok(())
            })
            .await?;
        }

        ctx.fetch_blob(&manifest.config).await?;
        let config_bytes = {
            let path = self.store.blob_file(&manifest.config.digest)?;
            tokio::fs::read(&path).await.map_err(|e| {
                PullError::new(PullErrorKind::Store, format!("{}: {e}", path.display()))
            })?
        };
        let config_json: ImageConfigJson =
            serde_json::from_slice(&config_bytes).unwrap_or_default();
        let kind = classify(&manifest, &config_json)
            .map_err(|m| ctx.fail(PullErrorKind::Unsupported, &m))?;

        for layer in &manifest.layers {
            ctx.fetch_blob(layer).await?;
        }

        let record = ManifestRecord {
            name: reference.name(),
            config: manifest.config.digest.clone(),
            layers: manifest.layers.iter().map(|l| l.digest.clone()).collect(),
            kind,
        };
        let store = Arc::clone(&self.store);
        let reference = reference.clone();
        let now = (self.clock)();
        let image = blocking(move || store.record(&reference, &digest, record, now)).await?;
        drop(pin);
        Ok(image)
    }

    fn blob_lock(&self, digest: &str) -> Arc<tokio::sync::Mutex<()>> {
        let mut locks = self.blob_locks.lock().unwrap_or_else(|p| p.into_inner());
        locks.retain(|_, l| Arc::strong_count(l) > 1);
        Arc::clone(locks.entry(digest.to_owned()).or_default())
    }
}

/// One pull attempt's context, for error messages and blob fetches.
struct Ctx<'a> {
    puller: &'a Puller,
    client: &'a oci_client::Client,
    oci_ref: &'a oci_client::Reference,
    reference: &'a Reference,
    source: &'a PullSource,
    credential: &'a Credential,
}

impl Ctx<'_> {
    fn fail(&self, kind: PullErrorKind, detail: &str) -> PullError {
        let via = if self.source.mirror {
            format!(
                " from mirror {} as {}",
                self.source.endpoint.url(),
                self.source.repository
            )
        } else {
            String::new()
        };
        PullError::new(
            kind,
            format!("failed to pull image \"{}\"{via}: {detail}", self.reference),
        )
    }

    /// Turns an oci-client error into ours; for a bare 401 asks the registry why, since
    /// oci-client drops the body that says so.
    async fn err(&self, e: OciDistributionError) -> PullError {
        let (kind, detail) = classify_error(&e);
        let detail = match &e {
            OciDistributionError::UnauthorizedError { url } => {
                match probe_reason(
                    &self.puller.config,
                    &self.source.endpoint.host,
                    url,
                    self.credential,
                )
                .await
                {
                    Some(reason) => reason,
                    None => detail,
                }
            }
            _ => detail,
        };
        self.fail(kind, &detail)
    }

    /// Downloads `desc` unless present: streamed to `tmp/`, hashed on the way, size-capped,
    /// renamed into the store only if the digest matches.
    async fn fetch_blob(&self, desc: &OciDescriptor) -> Result<(), PullError> {
        let store = &self.puller.store;
        let dest = store.blob_file(&desc.digest)?;
        let lock = self.puller.blob_lock(&desc.digest);
        let _held = lock.lock().await;
        if tokio::fs::try_exists(&dest).await.unwrap_or(false) {
            debug!(blob = %desc.digest, "blob present; not downloading");
            return Ok(());
        }
        let expected_hex = desc.digest.trim_start_matches("sha256:");
        let tmp = TempFile(store.temp_path(expected_hex));
        let mut file = tokio::fs::File::create(&tmp.0).await.map_err(|e| {
            PullError::new(PullErrorKind::Store, format!("{}: {e}", tmp.0.display()))
        })?;
        let mut stream = match self.client.pull_blob_stream(self.oci_ref, desc).await {
            Ok(s) => s,
            Err(e) => return Err(self.err(e).await),
        };
        let mut hasher = Sha256::new();
        let mut written: u64 = 0;
        let limit = u64::try_from(desc.size).unwrap_or(0);
        while let Some(chunk) = stream.next().await {
            let chunk = chunk.map_err(|e| {
                let kind = if e.to_string().contains("digest") {
                    PullErrorKind::Corrupt
                } else {
                    PullErrorKind::Network
                };
                self.fail(kind, &format!("blob {}: {}", desc.digest, error_chain(&e)))
            })?;
            written += chunk.len() as u64;
            if written > limit {
                return Err(self.fail(
                    PullErrorKind::Corrupt,
                    &format!(
                        "blob {} is larger than its declared {limit} bytes",
                        desc.digest
                    ),
                ));
            }
            hasher.update(&chunk);
            file.write_all(&chunk).await.map_err(|e| {
                PullError::new(PullErrorKind::Store, format!("{}: {e}", tmp.0.display()))
            })?;
        }
        let actual = format!("sha256:{}", hex::encode(hasher.finalize()));
        if actual != desc.digest || written != limit {
            warn!(blob = %desc.digest, %actual, written, "downloaded blob refused");
            return Err(self.fail(
                PullErrorKind::Corrupt,
                &format!(
                    "blob {} failed verification: content hashes to {actual} ({written} of {limit} bytes)",
                    desc.digest
                ),
            ));
        }
        file.sync_all().await.map_err(|e| {
            PullError::new(PullErrorKind::Store, format!("{}: {e}", tmp.0.display()))
        })?;
        drop(file);
        tokio::fs::rename(&tmp.0, &dest).await.map_err(|e| {
            PullError::new(PullErrorKind::Store, format!("{}: {e}", dest.display()))
        })?;
        self.puller.blobs_downloaded.fetch_add(1, Ordering::Relaxed);
        debug!(blob = %desc.digest, bytes = written, "blob downloaded");
        Ok(())
    }
}

/// Removes a temporary file unless it was renamed away (drop after an error or cancel).
struct TempFile(std::path::PathBuf);

impl Drop for TempFile {
    fn drop(&mut self) {
        let _ = std::fs::remove_file(&self.0);
    }
}

async fn blocking<T: Send + 'static>(
    f: impl FnOnce() -> Result<T, StoreError> + Send + 'static,
) -> Result<T, PullError> {
    match tokio::task::spawn_blocking(f).await {
        Ok(r) => r.map_err(PullError::from),
        Err(e) => Err(PullError::new(
            PullErrorKind::Store,
            format!("image store task failed: {e}"),
        )),
    }
}

/// Whether a failed endpoint lets the pull go on to the next one, as containerd's resolver
/// does: unreachable, 5xx, not there, or not allowed there. Bad content (a digest mismatch),
/// an image this node cannot run and local store failures stop the pull: another endpoint
/// would not make them right, and a mirror serving corrupt blobs must be seen.
fn falls_through(kind: PullErrorKind) -> bool {
    matches!(
        kind,
        PullErrorKind::Network | PullErrorKind::NotFound | PullErrorKind::Unauthorized
    )
}

/// The oci-client reference for fetching `reference` from `source`.
pub(crate) fn source_reference(
    reference: &Reference,
    source: &PullSource,
) -> oci_client::Reference {
    with_name(
        reference,
        source.endpoint.host.clone(),
        source.repository.clone(),
    )
}

pub(crate) fn to_oci_reference(reference: &Reference) -> oci_client::Reference {
    with_name(
        reference,
        reference.registry().to_owned(),
        reference.repository().to_owned(),
    )
}

fn with_name(reference: &Reference, registry: String, repository: String) -> oci_client::Reference {
    match (reference.tag(), reference.digest()) {
        // A digest pins the content; the tag is informational.
        (_, Some(digest)) => {
            oci_client::Reference::with_digest(registry, repository, digest.to_owned())
        }
        (Some(tag), None) => oci_client::Reference::with_tag(registry, repository, tag.to_owned()),
        (None, None) => oci_client::Reference::with_tag(
            registry,
            repository,
            crate::reference::DEFAULT_TAG.to_owned(),
        ),
    }
}

pub(crate) enum Manifest {
    Image(Box<OciImageManifest>),
    /// (digest, os, architecture) of each entry.
    Index(Vec<(String, String, String)>),
}

pub(crate) fn parse_manifest(body: &[u8]) -> Result<Manifest, PullError> {
    let value: serde_json::Value = serde_json::from_slice(body).map_err(|e| {
        PullError::new(
            PullErrorKind::Unsupported,
            format!("manifest is not json: {e}"),
        )
    })?;
    if let Some(entries) = value.get("manifests").and_then(|m| m.as_array()) {
        let entries = entries
            .iter()
            .filter_map(|e| {
                let digest = e.get("digest")?.as_str()?.to_owned();
                let platform = e.get("platform");
                let field = |k: &str| {
                    platform
                        .and_then(|p| p.get(k))
                        .and_then(|v| v.as_str())
                        .unwrap_or_default()
                        .to_owned()
                };
                Some((digest, field("os"), field("architecture")))
            })
            .collect();
        return Ok(Manifest::Index(entries));
    }
    serde_json::from_value::<OciImageManifest>(value)
        .map(|m| Manifest::Image(Box::new(m)))
        .map_err(|e| {
            PullError::new(
                PullErrorKind::Unsupported,
                format!("unsupported manifest: {e}"),
            )
        })
}

/// The index entry for this node: linux on our architecture first, else a Wasm entry (which
/// runs anywhere).
pub(crate) fn choose_platform(entries: &[(String, String, String)]) -> Option<String> {
    let arch = node_arch();
    entries
        .iter()
        .find(|(_, os, a)| os == "linux" && a == arch)
        .or_else(|| {
            entries.iter().find(|(_, os, a)| {
                a == "wasm" || matches!(os.as_str(), "wasi" | "wasip1" | "wasip2")
            })
        })
        .map(|(d, _, _)| d.clone())
}

/// Wasm or OCI, from the media types and the config's platform.
pub(crate) fn classify(
    manifest: &OciImageManifest,
    config: &ImageConfigJson,
) -> Result<RecordKind, String> {
    let wasm_layer = manifest
        .layers
        .iter()
        .find(|l| WASM_LAYER_MEDIA_TYPES.contains(&l.media_type.as_str()));
    let wasm_config = matches!(
        manifest.config.media_type.as_str(),
        WASM_CONFIG_MEDIA_TYPE | WASM_CONFIG_V1_MEDIA_TYPE
    );
    if let Some(layer) = wasm_layer {
        return Ok(RecordKind::Wasm {
            layer: layer.digest.clone(),
        });
    }
    if wasm_config || config.is_wasm_platform() {
        // `wasi/wasm` images whose module sits inside a tar layer are not handled yet.
        return Err(format!(
            "Wasm image without a Wasm layer (layer media types: {:?})",
            manifest
                .layers
                .iter()
                .map(|l| l.media_type.as_str())
                .collect::<Vec<_>>()
        ));
    }
    if manifest.layers.is_empty() {
        return Err("image has no layers".to_owned());
    }
    for layer in &manifest.layers {
        if !TAR_LAYER_MEDIA_TYPES.contains(&layer.media_type.as_str()) {
            return Err(format!("unsupported layer media type {}", layer.media_type));
        }
    }
    Ok(RecordKind::Oci {
        config: config.oci_config(),
    })
}

/// Our kind and a one-line reason for an oci-client error.
pub(crate) fn classify_error(e: &OciDistributionError) -> (PullErrorKind, String) {
    use OciDistributionError as E;
    use PullErrorKind as K;
    let kind = match e {
        E::UnauthorizedError { .. } | E::AuthenticationFailure(_) => K::Unauthorized,
        E::RegistryError { envelope, .. } => {
            let codes: Vec<&OciErrorCode> = envelope.errors.iter().map(|e| &e.code).collect();
            if codes
                .iter()
                .any(|c| matches!(c, OciErrorCode::Unauthorized | OciErrorCode::Denied))
            {
                K::Unauthorized
            } else if codes.iter().any(|c| {
                matches!(
                    c,
                    OciErrorCode::ManifestUnknown
                        | OciErrorCode::NameUnknown
                        | OciErrorCode::BlobUnknown
                        | OciErrorCode::NotFound
                )
            }) {
                K::NotFound
            } else {
                K::Network
            }
        }
        E::ServerError {
            code: 401 | 403, ..
        } => K::Unauthorized,
        E::ServerError { code: 404, .. } | E::ImageManifestNotFoundError(_) => K::NotFound,
        // Some calls (`blob_exists` before a push) hand back reqwest's status error as is.
        E::RequestError(r) if matches!(r.status().map(|s| s.as_u16()), Some(401 | 403)) => {
            K::Unauthorized
        }
        E::DigestError(_) => K::Corrupt,
        E::ManifestParsingError(_)
        | E::VersionedParsingError(_)
        | E::UnsupportedMediaTypeError(_)
        | E::UnsupportedSchemaVersionError(_)
        | E::IncompatibleLayerMediaTypeError(_) => K::Unsupported,
        _ => K::Network,
    };
    let detail = match e {
        E::RegistryError { envelope, .. } => envelope
            .errors
            .iter()
            .map(|e| {
                let code = serde_json::to_value(&e.code)
                    .ok()
                    .and_then(|v| v.as_str().map(str::to_owned))
                    .unwrap_or_default();
                format!("{code}: {}", e.message)
            })
            .collect::<Vec<_>>()
            .join("; "),
        E::ServerError { code, message, .. } => format!("{code}: {}", message.trim()),
        other => error_chain(other),
    };
    (kind, detail)
}

/// Asks the registry, with the same credential, why it answers 401, as
/// `401 Unauthorized: authentication required`. `None` if it will not say.
async fn probe_reason(
    config: &RegistriesConfig,
    registry: &str,
    url: &str,
    credential: &Credential,
) -> Option<String> {
    let mut builder = reqwest::Client::builder()
        .timeout(CONNECT_TIMEOUT)
        .danger_accept_invalid_certs(config.insecure_skip_verify(registry));
    if let Ok(Some(pem)) = config.ca_pem(registry) {
        let certs = reqwest::Certificate::from_pem_bundle(&pem).ok()?;
        builder = builder.tls_certs_merge(certs);
    }
    let client = builder.build().ok()?;
    let mut request = client
        .get(url)
        .header("Accept", ACCEPTED_MANIFESTS.join(", "));
    if let Credential::Basic { username, password } = credential {
        request = request.basic_auth(username, Some(password));
    }
    let response = request.send().await.ok()?;
    let status = response.status();
    let body = response.bytes().await.ok()?;
    let message = serde_json::from_slice::<serde_json::Value>(&body)
        .ok()
        .and_then(|v| {
            let errors = v.get("errors")?.as_array()?;
            let msgs: Vec<String> = errors
                .iter()
                .filter_map(|e| e.get("message")?.as_str().map(str::to_owned))
                .collect();
            (!msgs.is_empty()).then(|| msgs.join("; "))
        })
        .unwrap_or_else(|| {
            String::from_utf8_lossy(&body)
                .trim()
                .chars()
                .take(200)
                .collect()
        });
    let status_text = format!(
        "{} {}",
        status.as_u16(),
        status.canonical_reason().unwrap_or_default()
    );
    Some(if message.is_empty() {
        status_text
    } else {
        format!("{status_text}: {message}")
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn platform_choice_prefers_node_arch_then_wasm() {
        let arch = node_arch();
        let other = if arch == "amd64" { "arm64" } else { "amd64" };
        let e = |d: &str, os: &str, a: &str| (d.to_owned(), os.to_owned(), a.to_owned());
        let entries = vec![
            e("sha256:other", "linux", other),
            e("sha256:wasm", "wasip1", "wasm"),
            e("sha256:mine", "linux", arch),
        ];
        assert_eq!(choose_platform(&entries).as_deref(), Some("sha256:mine"));
        assert_eq!(
            choose_platform(&entries[..2]).as_deref(),
            Some("sha256:wasm")
        );
        assert_eq!(choose_platform(&entries[..1]), None);
    }

    #[test]
    fn only_unreachable_missing_or_refused_endpoints_fall_through_to_the_next() {
        use PullErrorKind as K;
        for kind in [K::Network, K::NotFound, K::Unauthorized] {
            assert!(falls_through(kind), "{kind:?}");
        }
        for kind in [
            K::Corrupt,
            K::Unsupported,
            K::Store,
            K::InvalidName,
            K::NeverPull,
        ] {
            assert!(!falls_through(kind), "{kind:?}");
        }
    }

    #[test]
    fn error_reasons_match_kubelet() {
        let invalid: PullError = Reference::parse("UPPER/Case").unwrap_err().into();
        assert_eq!(invalid.reason(), "InvalidImageName");
        assert_eq!(
            PullError::new(PullErrorKind::NeverPull, "x").reason(),
            "ErrImageNeverPull"
        );
        assert_eq!(
            PullError::new(PullErrorKind::Unauthorized, "x").reason(),
            "ErrImagePull"
        );
        let (kind, _) = classify_error(&OciDistributionError::ServerError {
            code: 404,
            url: String::new(),
            message: String::new(),
        });
        assert_eq!(kind, PullErrorKind::NotFound);
    }
}
