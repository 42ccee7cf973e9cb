//! The node's content store: verified, content-addressed blobs, an index from reference to
//! image, unpacked root filesystems, and GC.
//!
//! Layout under the store directory:
//!
//! ```text
//! blobs/sha256/<hex>      manifests, configs, layers, imported Wasm modules (verified)
//! index.json              references → digests, pulled manifests, last-use times
//! rootfs/<config-hex>/    unpacked layers of an OCI image (read-only lowerdir)
//! tmp/                    downloads and unpacks in progress (emptied at open)
//! ```
//!
//! Every blob is written to `tmp/`, hashed while written, and renamed into `blobs/` only if its
//! sha256 matches, so a blob present is a blob verified, and an interrupted pull leaves only
//! garbage in `tmp/`, which the next `open` removes. Root filesystems are unpacked into `tmp/`
//! and renamed into place the same way. The API is synchronous (local file work); call it from
//! `spawn_blocking` in async code. One process owns a store directory.

use std::collections::{BTreeMap, BTreeSet, HashMap, HashSet};
use std::fs::{self, File};
use std::io::{self, Write as _};
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex, MutexGuard};
use std::time::{SystemTime, UNIX_EPOCH};

use serde::{Deserialize, Serialize};
use sha2::{Digest as _, Sha256};
use tracing::{debug, info, warn};

use crate::image::{Image, ImageKind, OciConfig};
use crate::reference::Reference;

#[derive(Debug, thiserror::Error)]
pub enum StoreError {
    #[error("image store i/o failed at {path}")]
    Io {
        path: PathBuf,
        #[source]
        source: io::Error,
    },
    #[error("image store index {path} is not valid json")]
    CorruptIndex {
        path: PathBuf,
        #[source]
        source: serde_json::Error,
    },
    #[error("image content does not match {reference}: expected {expected}, got {actual}")]
    DigestMismatch {
        reference: String,
        expected: String,
        actual: String,
    },
    #[error("blob {digest} is corrupt (content hashes to {actual})")]
    CorruptBlob { digest: String, actual: String },
    #[error("unsupported digest {0:?} (only sha256 is stored)")]
    UnsupportedDigest(String),
    #[error("image {digest} is not in the store")]
    UnknownImage { digest: String },
    #[error("image {digest} is a Wasm module and has no root filesystem")]
    NotOci { digest: String },
    #[error("layer {layer} of image {digest} is missing from the store")]
    MissingLayer { digest: String, layer: String },
    #[error("cannot unpack layer {layer}: {reason}")]
    Unpack { layer: String, reason: String },
    #[error(
        "image store {path} is in use by another process (a running agent?); stop it, or put \
         the archive in {path} (the airgap directory) and restart the agent"
    )]
    Busy { path: PathBuf },
}

pub type Result<T, E = StoreError> = std::result::Result<T, E>;

pub(crate) fn io_err(path: &Path) -> impl FnOnce(io::Error) -> StoreError + '_ {
    move |source| StoreError::Io {
        path: path.to_owned(),
        source,
    }
}

/// A pulled manifest, as much as the node needs to run and collect it without re-parsing.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub(crate) struct ManifestRecord {
    /// `registry/repository`, for the image ID.
    pub name: String,
    /// Digest of the config blob.
    pub config: String,
    /// Layer digests, bottom first.
    pub layers: Vec<String>,
    pub kind: RecordKind,
}

#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[serde(tag = "type", rename_all = "lowercase")]
pub(crate) enum RecordKind {
    Wasm { layer: String },
    Oci { config: OciConfig },
}

#[derive(Debug, Default, Serialize, Deserialize)]
struct Index {
    /// Normalised reference → `sha256:<hex>` (a manifest, or an imported module). Ordered so
    /// the file diffs well.
    #[serde(default)]
    images: BTreeMap<String, String>,
    /// Manifest digest → what it holds. Imported modules have no entry.
    #[serde(default)]
    manifests: BTreeMap<String, ManifestRecord>,
    /// Image digest → last `ensure`, seconds since the epoch: GC removes the oldest first.
    #[serde(default)]
    last_used: BTreeMap<String, u64>,
    /// References imported from archives: GC never removes the image one points at (as K3s
    /// pins airgap images), so an offline node keeps what it was provisioned with. A tag
    /// moved by a later import or pull unpins the image it pointed at before.
    #[serde(default, skip_serializing_if = "BTreeSet::is_empty")]
    pinned: BTreeSet<String>,
    /// Image digest → what pulled it: `anonymous`, `node` (the node's own registries.yaml
    /// credential) or the SHA-256 of a pod's credential (never the credential itself). An
    /// image with no entry was preloaded (imported, or pulled before records were kept).
    /// Read by `--ensure-secret-pulled-images` (KEP-2535).
    #[serde(default, skip_serializing_if = "BTreeMap::is_empty")]
    pulled_with: BTreeMap<String, BTreeSet<String>>,
}

/// What [`LocalImageStore::gc`] did.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct GcReport {
    /// Digests of the images removed, least recently used first.
    pub images_removed: Vec<String>,
    pub blobs_removed: usize,
    pub rootfs_removed: usize,
    pub bytes_before: u64,
    pub bytes_after: u64,
}

/// The node's local image store.
#[derive(Debug)]
pub struct LocalImageStore {
    dir: PathBuf,
    /// In-memory copy of `index.json`; the lock also serialises index writes.
    index: Mutex<Index>,
    /// The `lock` file, locked exclusively, when opened with [`Self::open_exclusive`]: the
    /// flock is released when the store (the file) is dropped or the process dies.
    _owner: Option<File>,
    /// Blobs a pull in progress needs (digest → holders); GC leaves them alone even before
    /// the pull records its image.
    pins: Arc<Mutex<HashMap<String, usize>>>,
}

/// Keeps blobs safe from GC while a pull is using them; unpins on drop.
#[derive(Debug)]
pub struct PinGuard {
    pins: Arc<Mutex<HashMap<String, usize>>>,
    digests: Vec<String>,
}

impl PinGuard {
    pub fn add(&mut self, digest: &str) {
        *lock(&self.pins).entry(digest.to_owned()).or_default() += 1;
        self.digests.push(digest.to_owned());
    }
}

impl Drop for PinGuard {
    fn drop(&mut self) {
        let mut pins = lock(&self.pins);
        for d in &self.digests {
            if let Some(n) = pins.get_mut(d) {
                *n -= 1;
                if *n == 0 {
                    pins.remove(d);
                }
            }
        }
    }
}

fn lock<T>(m: &Mutex<T>) -> MutexGuard<'_, T> {
    // Every critical section leaves the data consistent, so a panic elsewhere cannot leave it
    // half-updated.
    m.lock().unwrap_or_else(|p| p.into_inner())
}

fn unix_secs(at: SystemTime) -> u64 {
    at.duration_since(UNIX_EPOCH).map_or(0, |d| d.as_secs())
}

/// `sha256:<hex>` → `<hex>`, refusing anything that could not name a file of ours.
fn sha256_hex(digest: &str) -> Result<&str> {
    match digest.strip_prefix("sha256:") {
        Some(hex)
            if hex.len() == 64
                && hex
                    .bytes()
                    .all(|b| b.is_ascii_digit() || (b'a'..=b'f').contains(&b)) =>
        {
            Ok(hex)
        }
        _ => Err(StoreError::UnsupportedDigest(digest.to_owned())),
    }
}

impl LocalImageStore {
    /// Opens the store like [`Self::open`] after taking an exclusive lock on `<dir>/lock`
    /// (held until the store is dropped), or fails with [`StoreError::Busy`] if another
    /// process holds it. The agent opens its store this way, and so does `kedge image import`:
    /// opening clears `tmp/` and the index lives in memory, so two processes on one store
    /// would lose each other's work.
    pub fn open_exclusive(dir: impl Into<PathBuf>) -> Result<Self> {
        let dir = dir.into();
        fs::create_dir_all(&dir).map_err(io_err(&dir))?;
        let lock_path = dir.join("lock");
        let file = fs::OpenOptions::new()
            .create(true)
            .truncate(false)
            .write(true)
            .open(&lock_path)
            .map_err(io_err(&lock_path))?;
        match file.try_lock() {
            Ok(()) => {}
            Err(fs::TryLockError::WouldBlock) => return Err(StoreError::Busy { path: dir }),
            Err(fs::TryLockError::Error(e)) => return Err(io_err(&lock_path)(e)),
        }
        let mut store = Self::open(dir)?;
        store._owner = Some(file);
        Ok(store)
    }

    /// Opens (creating if needed) the store in `dir`, discarding unfinished downloads. Takes
    /// no lock: for tests and tools that know no other process uses `dir`.
    pub fn open(dir: impl Into<PathBuf>) -> Result<Self> {
        let dir = dir.into();
        for sub in ["blobs/sha256", "rootfs"] {
            let p = dir.join(sub);
            fs::create_dir_all(&p).map_err(io_err(&p))?;
        }
        let tmp = dir.join("tmp");
        if tmp.exists() {
            remove_tree(&tmp)?;
        }
        fs::create_dir_all(&tmp).map_err(io_err(&tmp))?;
        let index_path = dir.join("index.json");
        let index = match fs::read(&index_path) {
            Ok(data) => {
                serde_json::from_slice(&data).map_err(|source| StoreError::CorruptIndex {
                    path: index_path.clone(),
                    source,
                })?
            }
            Err(e) if e.kind() == io::ErrorKind::NotFound => Index::default(),
            Err(e) => return Err(io_err(&index_path)(e)),
        };
        Ok(Self {
            dir,
            index: Mutex::new(index),
            _owner: None,
            pins: Arc::default(),
        })
    }

    pub fn dir(&self) -> &Path {
        &self.dir
    }

    /// Stores `bytes` as the Wasm image `reference` and returns its digest (`sha256:<hex>`).
    ///
    /// A reference that carries a digest must match the content: importing is how an
    /// air-gapped node is trusted to have the right image, so a mismatch is refused. Importing
    /// again under the same reference re-points it (a moved tag).
    pub fn import(&self, reference: &Reference, bytes: &[u8]) -> Result<String> {
        let digest = format!("sha256:{}", hex::encode(Sha256::digest(bytes)));
        if let Some(expected) = reference.digest()
            && expected != digest
        {
            return Err(StoreError::DigestMismatch {
                reference: reference.to_string(),
                expected: expected.to_owned(),
                actual: digest,
            });
        }
        if !self.has_blob(&digest) {
            let mut w = self.blob_writer(&digest)?;
            w.write(bytes)?;
            w.commit()?;
        }
        self.tag(reference, &digest)?;
        debug!(reference = %reference, %digest, "image imported");
        Ok(digest)
    }

    /// Points `reference` at `digest` in the index.
    fn tag(&self, reference: &Reference, digest: &str) -> Result<()> {
        let key = reference.to_string();
        self.update_index(|index| {
            index.images.insert(key, digest.to_owned());
        })
    }

    /// Applies `change` to the index and writes it; on a failed write memory is restored, so
    /// memory and disk agree.
    fn update_index(&self, change: impl FnOnce(&mut Index)) -> Result<()> {
        let mut index = self.lock_index();
        let before = serde_json::to_vec(&*index).ok();
        change(&mut index);
        if let Err(e) = self.write_index(&index) {
            if let Some(old) = before.and_then(|b| serde_json::from_slice(&b).ok()) {
                *index = old;
            }
            return Err(e);
        }
        Ok(())
    }

    /// The digest `reference` names locally: its own digest, or what the index says.
    fn resolve(&self, index: &Index, reference: &Reference) -> Option<String> {
        if let Some(d) = index.images.get(&reference.to_string()) {
            return Some(d.clone());
        }
        reference.digest().map(str::to_owned)
    }

    /// The digest and a blob path for `reference`, if the node has it: the module for Wasm
    /// images, the manifest for OCI images. Prefer [`Self::image`].
    ///
    /// A digest reference is found by content alone, whatever name it was imported under: the
    /// digest already pins the bytes. A tag reference goes through the index.
    pub fn lookup(&self, reference: &Reference) -> Result<Option<(String, PathBuf)>> {
        let Some(image) = self.image(reference)? else {
            return Ok(None);
        };
        let path = match &image.kind {
            ImageKind::Wasm { module } => module.clone(),
            ImageKind::Oci { .. } => self.blob_file(&image.digest)?,
        };
        Ok(Some((image.digest, path)))
    }

    /// The image `reference` names, if it is complete on the node (every blob present).
    pub fn image(&self, reference: &Reference) -> Result<Option<Image>> {
        let (digest, record) = {
            let index = self.lock_index();
            let Some(digest) = self.resolve(&index, reference) else {
                return Ok(None);
            };
            let record = index.manifests.get(&digest).cloned();
            (digest, record)
        };
        if sha256_hex(&digest).is_err() {
            return Ok(None);
        }
        let image_id = format!("{}@{digest}", reference.name());
        let kind = match record {
            None => {
                // An imported module: the digest is the module's own.
                if !self.has_blob(&digest) {
                    if reference.digest().is_none() {
                        warn!(reference = %reference, %digest, "index names a missing blob");
                    }
                    return Ok(None);
                }
                ImageKind::Wasm {
                    module: self.blob_file(&digest)?,
                }
            }
            Some(record) => {
                let needed = [&digest, &record.config].into_iter().chain(&record.layers);
                for d in needed {
                    if !self.has_blob(d) {
                        warn!(reference = %reference, blob = %d, "image incomplete: blob missing");
                        return Ok(None);
                    }
                }
                match record.kind {
                    RecordKind::Wasm { layer } => ImageKind::Wasm {
                        module: self.blob_file(&layer)?,
                    },
                    RecordKind::Oci { config } => ImageKind::Oci {
                        config,
                        layers: record.layers.clone(),
                    },
                }
            }
        };
        Ok(Some(Image {
            reference: reference.to_string(),
            digest,
            image_id,
            kind,
        }))
    }

    /// Records a pulled manifest under `reference` (and under its digest) and returns the
    /// image. Every blob it names must already be in the store.
    pub(crate) fn record(
        &self,
        reference: &Reference,
        digest: &str,
        record: ManifestRecord,
        now: SystemTime,
    ) -> Result<Image> {
        sha256_hex(digest)?;
        let key = reference.to_string();
        let by_digest = format!("{}@{digest}", reference.name());
        self.update_index(|index| {
            index.images.insert(key, digest.to_owned());
            index.images.insert(by_digest, digest.to_owned());
            index.manifests.insert(digest.to_owned(), record);
            index.last_used.insert(digest.to_owned(), unix_secs(now));
        })?;
        self.image(reference)?
            .ok_or_else(|| StoreError::UnknownImage {
                digest: digest.to_owned(),
            })
    }

    /// Records an image imported from an archive under each of `names` (and its digest
    /// form), pinned against GC. Every blob it names must already be in the store.
    pub(crate) fn record_imported(
        &self,
        names: &[Reference],
        digest: &str,
        record: ManifestRecord,
        now: SystemTime,
    ) -> Result<()> {
        sha256_hex(digest)?;
        self.update_index(|index| {
            for name in names {
                index.images.insert(name.to_string(), digest.to_owned());
                index
                    .images
                    .insert(format!("{}@{digest}", name.name()), digest.to_owned());
                index.pinned.insert(name.to_string());
            }
            index.manifests.insert(digest.to_owned(), record);
            index.last_used.insert(digest.to_owned(), unix_secs(now));
        })
    }

    /// Notes that `digest` was pulled with the credential `fingerprint` (see [`Index`]).
    pub(crate) fn note_pulled_with(&self, digest: &str, fingerprint: &str) -> Result<()> {
        if self
            .lock_index()
            .pulled_with
            .get(digest)
            .is_some_and(|s| s.contains(fingerprint))
        {
            return Ok(());
        }
        self.update_index(|index| {
            index
                .pulled_with
                .entry(digest.to_owned())
                .or_default()
                .insert(fingerprint.to_owned());
        })
    }

    /// What pulled `digest` (`None`: preloaded).
    pub(crate) fn pulled_with(&self, digest: &str) -> Option<BTreeSet<String>> {
        self.lock_index().pulled_with.get(digest).cloned()
    }

    /// Notes that the image `digest` was used at `at`, for GC's least-recently-used order.
    pub fn touch(&self, digest: &str, at: SystemTime) -> Result<()> {
        self.update_index(|index| {
            index.last_used.insert(digest.to_owned(), unix_secs(at));
        })
    }

    /// The bytes of `reference` (the module of a Wasm image, the manifest of an OCI image),
    /// verified against their digest so on-disk corruption is reported rather than run.
    pub fn read(&self, reference: &Reference) -> Result<Option<Vec<u8>>> {
        let Some((_, path)) = self.lookup(reference)? else {
            return Ok(None);
        };
        let bytes = fs::read(&path).map_err(io_err(&path))?;
        let expected = format!(
            "sha256:{}",
            path.file_name()
                .map(|n| n.to_string_lossy())
                .unwrap_or_default()
        );
        let actual = format!("sha256:{}", hex::encode(Sha256::digest(&bytes)));
        if actual != expected {
            return Err(StoreError::CorruptBlob {
                digest: expected,
                actual,
            });
        }
        Ok(Some(bytes))
    }

    /// Every indexed reference with its digest, e.g. for the node's `status.images`.
    pub fn images(&self) -> Vec<(String, String)> {
        self.lock_index()
            .images
            .iter()
            .map(|(r, d)| (r.clone(), d.clone()))
            .collect()
    }

    /// Whether a verified blob `digest` is present.
    pub fn has_blob(&self, digest: &str) -> bool {
        sha256_hex(digest).is_ok_and(|hex| self.blob_path_hex(hex).is_file())
    }

    /// Where blob `digest` lives (whether or not it is present).
    pub fn blob_file(&self, digest: &str) -> Result<PathBuf> {
        Ok(self.blob_path_hex(sha256_hex(digest)?))
    }

    fn blob_path_hex(&self, hex: &str) -> PathBuf {
        self.dir.join("blobs").join("sha256").join(hex)
    }

    /// Starts writing blob `expected`; nothing is visible until [`BlobWriter::commit`] has
    /// checked the content.
    pub fn blob_writer(&self, expected: &str) -> Result<BlobWriter> {
        let hex = sha256_hex(expected)?.to_owned();
        let tmp = self.temp_path(&hex);
        let file = File::create(&tmp).map_err(io_err(&tmp))?;
        Ok(BlobWriter {
            file: Some(file),
            hasher: Sha256::new(),
            tmp,
            dest: self.blob_path_hex(&hex),
            expected: expected.to_owned(),
            written: 0,
        })
    }

    /// A fresh, unique path in `tmp/`.
    pub(crate) fn temp_path(&self, hint: &str) -> PathBuf {
        self.dir.join("tmp").join(format!(
            "{hint}.{}.{}",
            std::process::id(),
            TMP_COUNTER.fetch_add(1, Ordering::Relaxed)
        ))
    }

    /// Pins `digests` against GC for the guard's lifetime.
    pub fn pin(&self) -> PinGuard {
        PinGuard {
            pins: Arc::clone(&self.pins),
            digests: Vec::new(),
        }
    }

    /// The unpacked root filesystem of an OCI image, unpacking its layers (bottom first) on
    /// first use. The directory is shared by every image with the same config and must be
    /// used read-only (an overlay lowerdir).
    pub fn rootfs(&self, image: &Image) -> Result<PathBuf> {
        let record = self
            .lock_index()
            .manifests
            .get(&image.digest)
            .cloned()
            .ok_or_else(|| StoreError::UnknownImage {
                digest: image.digest.clone(),
            })?;
        if matches!(record.kind, RecordKind::Wasm { .. }) {
            return Err(StoreError::NotOci {
                digest: image.digest.clone(),
            });
        }
        let hex = sha256_hex(&record.config)?;
        let dest = self.dir.join("rootfs").join(hex);
        if dest.is_dir() {
            return Ok(dest);
        }
        let mut layers = Vec::with_capacity(record.layers.len());
        for layer in &record.layers {
            let path = self.blob_file(layer)?;
            if !path.is_file() {
                return Err(StoreError::MissingLayer {
                    digest: image.digest.clone(),
                    layer: layer.clone(),
                });
            }
            layers.push((layer.clone(), path));
        }
        let tmp = self.temp_path(&format!("rootfs-{hex}"));
        let result = crate::unpack::unpack_layers(&layers, &tmp).and_then(|()| {
            match fs::rename(&tmp, &dest) {
                Ok(()) => Ok(()),
                // Another unpack of the same image won the race; theirs is as good.
                Err(_) if dest.is_dir() => remove_tree(&tmp),
                Err(e) => Err(io_err(&dest)(e)),
            }
        });
        if result.is_err() && tmp.exists() {
            let _ = remove_tree(&tmp);
        }
        result?;
        info!(image = %image.reference, rootfs = %dest.display(), "root filesystem unpacked");
        Ok(dest)
    }

    /// Bytes used by blobs and unpacked root filesystems.
    pub fn disk_usage(&self) -> Result<u64> {
        Ok(tree_size(&self.dir.join("blobs"))? + tree_size(&self.dir.join("rootfs"))?)
    }

    /// When the store holds more than `max_bytes`, removes the least recently used images not
    /// in `in_use` (image digests) until it fits, then every blob and root filesystem no
    /// remaining image needs. Images in use are never removed, even if the store stays over.
    pub fn gc(&self, in_use: &HashSet<String>, max_bytes: u64) -> Result<GcReport> {
        let mut report = GcReport {
            bytes_before: self.disk_usage()?,
            ..GcReport::default()
        };
        let mut usage = report.bytes_before;
        if usage <= max_bytes {
            report.bytes_after = usage;
            return Ok(report);
        }
        // Candidates, oldest first; never-used ones count as oldest.
        let candidates: Vec<String> = {
            let index = self.lock_index();
            let mut digests: Vec<&String> = index.images.values().collect();
            digests.sort();
            digests.dedup();
            let pinned: HashSet<&String> = index
                .pinned
                .iter()
                .filter_map(|r| index.images.get(r))
                .collect();
            let mut c: Vec<(u64, String)> = digests
                .into_iter()
                .filter(|d| !in_use.contains(*d) && !pinned.contains(d))
                .map(|d| (index.last_used.get(d).copied().unwrap_or(0), d.clone()))
                .collect();
            c.sort();
            c.into_iter().map(|(_, d)| d).collect()
        };
        for digest in candidates {
            if usage <= max_bytes {
                break;
            }
            self.update_index(|index| {
                let gone: Vec<String> = index
                    .images
                    .iter()
                    .filter(|(_, d)| **d == digest)
                    .map(|(r, _)| r.clone())
                    .collect();
                for r in &gone {
                    index.pinned.remove(r);
                }
                index.images.retain(|_, d| *d != digest);
                index.manifests.remove(&digest);
                index.last_used.remove(&digest);
                index.pulled_with.remove(&digest);
            })?;
            debug!(%digest, "image removed by gc");
            report.images_removed.push(digest);
            let (blobs, rootfs) = self.sweep()?;
            report.blobs_removed += blobs;
            report.rootfs_removed += rootfs;
            usage = self.disk_usage()?;
        }
        report.bytes_after = usage;
        info!(
            removed = report.images_removed.len(),
            blobs = report.blobs_removed,
            before = report.bytes_before,
            after = report.bytes_after,
            "image gc"
        );
        Ok(report)
    }

    /// Deletes blobs and root filesystems that no indexed image and no pull in progress needs.
    fn sweep(&self) -> Result<(usize, usize)> {
        let (blobs_needed, configs_needed) = {
            let index = self.lock_index();
            let mut blobs: HashSet<String> = index.images.values().cloned().collect();
            let mut configs = HashSet::new();
            for (digest, record) in &index.manifests {
                if !index.images.values().any(|d| d == digest) {
                    continue;
                }
                blobs.insert(record.config.clone());
                blobs.extend(record.layers.iter().cloned());
                configs.insert(record.config.clone());
            }
            blobs.extend(lock(&self.pins).keys().cloned());
            (blobs, configs)
        };
        let mut removed_blobs = 0;
        let blobs_dir = self.dir.join("blobs").join("sha256");
        for entry in fs::read_dir(&blobs_dir).map_err(io_err(&blobs_dir))? {
            let entry = entry.map_err(io_err(&blobs_dir))?;
            let digest = format!("sha256:{}", entry.file_name().to_string_lossy());
            if !blobs_needed.contains(&digest) {
                fs::remove_file(entry.path()).map_err(io_err(&entry.path()))?;
                removed_blobs += 1;
            }
        }
        let mut removed_rootfs = 0;
        let rootfs_dir = self.dir.join("rootfs");
        for entry in fs::read_dir(&rootfs_dir).map_err(io_err(&rootfs_dir))? {
            let entry = entry.map_err(io_err(&rootfs_dir))?;
            let digest = format!("sha256:{}", entry.file_name().to_string_lossy());
            if !configs_needed.contains(&digest) {
                remove_tree(&entry.path())?;
                removed_rootfs += 1;
            }
        }
        Ok((removed_blobs, removed_rootfs))
    }

    fn lock_index(&self) -> MutexGuard<'_, Index> {
        lock(&self.index)
    }

    fn write_index(&self, index: &Index) -> Result<()> {
        let path = self.dir.join("index.json");
        let mut data =
            serde_json::to_vec_pretty(index).map_err(|source| StoreError::CorruptIndex {
                path: path.clone(),
                source,
            })?;
        data.push(b'\n');
        write_atomic(&path, &data)
    }
}

/// A blob being written: hashed as it goes, moved into the store by `commit` only if the hash
/// matches; dropped without commit, it leaves nothing behind.
#[derive(Debug)]
pub struct BlobWriter {
    file: Option<File>,
    hasher: Sha256,
    tmp: PathBuf,
    dest: PathBuf,
    expected: String,
    written: u64,
}

impl BlobWriter {
    pub fn write(&mut self, data: &[u8]) -> Result<()> {
        let Some(file) = self.file.as_mut() else {
            return Ok(());
        };
        file.write_all(data).map_err(io_err(&self.tmp))?;
        self.hasher.update(data);
        self.written += data.len() as u64;
        Ok(())
    }

    pub fn written(&self) -> u64 {
        self.written
    }

    /// Verifies the content and makes the blob visible. A mismatch is
    /// [`StoreError::CorruptBlob`] and the bytes are discarded.
    pub fn commit(mut self) -> Result<PathBuf> {
        let actual = format!("sha256:{}", hex::encode(self.hasher.clone().finalize()));
        if actual != self.expected {
            return Err(StoreError::CorruptBlob {
                digest: self.expected.clone(),
                actual,
            });
        }
        if let Some(file) = self.file.take() {
            file.sync_all().map_err(io_err(&self.tmp))?;
        }
        // Concurrent writers of the same blob hold identical, verified bytes: whichever rename
        // lands last wins harmlessly.
        fs::rename(&self.tmp, &self.dest).map_err(io_err(&self.dest))?;
        if let Some(dir) = self.dest.parent() {
            File::open(dir)
                .and_then(|d| d.sync_all())
                .map_err(io_err(dir))?;
        }
        Ok(self.dest.clone())
    }
}

impl Drop for BlobWriter {
    fn drop(&mut self) {
        // After a successful commit the temp name no longer exists; otherwise discard it.
        let _ = fs::remove_file(&self.tmp);
    }
}

/// Distinguishes temporary files of concurrent writers in one process.
static TMP_COUNTER: AtomicU64 = AtomicU64::new(0);

/// Writes `data` to `path` via a synced temporary file and a rename, then syncs the directory
/// so the rename itself survives a power loss.
pub(crate) fn write_atomic(path: &Path, data: &[u8]) -> Result<()> {
    let dir = path.parent().unwrap_or(Path::new("."));
    let name = path
        .file_name()
        .map(|n| n.to_string_lossy())
        .unwrap_or_default();
    let tmp = dir.join(format!(
        ".{name}.tmp.{}.{}",
        std::process::id(),
        TMP_COUNTER.fetch_add(1, Ordering::Relaxed)
    ));
    let result = (|| {
        let mut file = File::create(&tmp).map_err(io_err(&tmp))?;
        file.write_all(data).map_err(io_err(&tmp))?;
        file.sync_all().map_err(io_err(&tmp))?;
        fs::rename(&tmp, path).map_err(io_err(path))?;
        File::open(dir)
            .and_then(|d| d.sync_all())
            .map_err(io_err(dir))
    })();
    if result.is_err() {
        let _ = fs::remove_file(&tmp);
    }
    result
}

/// Removes a tree even where unpacked modes forbid writing (a `0555` directory from an image).
pub(crate) fn remove_tree(path: &Path) -> Result<()> {
    use std::os::unix::fs::PermissionsExt as _;
    match fs::remove_dir_all(path) {
        Ok(()) => Ok(()),
        Err(e) if e.kind() == io::ErrorKind::NotFound => Ok(()),
        Err(_) => {
            // Make every directory writable, then try again.
            let mut stack = vec![path.to_owned()];
            let mut visited = 0usize;
            while let Some(dir) = stack.pop() {
                visited += 1;
                if visited > 10_000_000 {
                    break;
                }
                let _ = fs::set_permissions(&dir, fs::Permissions::from_mode(0o700));
                if let Ok(entries) = fs::read_dir(&dir) {
                    for entry in entries.flatten() {
                        if entry.file_type().is_ok_and(|t| t.is_dir()) {
                            stack.push(entry.path());
                        }
                    }
                }
            }
            fs::remove_dir_all(path).map_err(io_err(path))
        }
    }
}

/// Apparent size of the files under `path`, not following symlinks.
fn tree_size(path: &Path) -> Result<u64> {
    let mut total = 0;
    let mut stack = vec![path.to_owned()];
    while let Some(dir) = stack.pop() {
        let entries = match fs::read_dir(&dir) {
            Ok(e) => e,
            Err(e) if e.kind() == io::ErrorKind::NotFound => continue,
            Err(e) => return Err(io_err(&dir)(e)),
        };
        for entry in entries {
            let entry = entry.map_err(io_err(&dir))?;
            let meta = entry.metadata().map_err(io_err(&entry.path()))?;
            if meta.is_dir() {
                stack.push(entry.path());
            } else {
                total += meta.len();
            }
        }
    }
    Ok(total)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn r(s: &str) -> Reference {
        Reference::parse(s).unwrap()
    }

    fn digest_of(bytes: &[u8]) -> String {
        format!("sha256:{}", hex::encode(Sha256::digest(bytes)))
    }

    fn leftovers(dir: &Path) -> Vec<String> {
        fs::read_dir(dir.join("tmp"))
            .unwrap()
            .map(|e| e.unwrap().file_name().to_string_lossy().into_owned())
            .collect()
    }

    #[test]
    fn import_then_lookup_and_read() {
        let dir = tempfile::tempdir().unwrap();
        let store = LocalImageStore::open(dir.path()).unwrap();
        assert_eq!(store.lookup(&r("app:v1")).unwrap(), None);

        let bytes = b"\0asm\x01\0\0\0".to_vec();
        let digest = store.import(&r("app:v1"), &bytes).unwrap();
        assert_eq!(digest, digest_of(&bytes));

        // Found under any spelling of the same reference.
        for spelling in [
            "app:v1",
            "docker.io/library/app:v1",
            "index.docker.io/app:v1",
        ] {
            let (d, path) = store.lookup(&r(spelling)).unwrap().expect(spelling);
            assert_eq!(d, digest);
            assert_eq!(fs::read(&path).unwrap(), bytes);
            assert!(path.ends_with(format!("blobs/sha256/{}", &digest[7..])));
        }
        let image = store.image(&r("app:v1")).unwrap().unwrap();
        assert_eq!(image.image_id, format!("docker.io/library/app@{digest}"));
        assert!(matches!(image.kind, ImageKind::Wasm { .. }));
        // By digest, whatever the name.
        let by_digest = r(&format!("other/name@{digest}"));
        assert_eq!(store.read(&by_digest).unwrap(), Some(bytes.clone()));
        // Other tags are absent.
        assert_eq!(store.lookup(&r("app:v2")).unwrap(), None);
        assert_eq!(store.read(&r("app")).unwrap(), None);
        assert_eq!(
            store.images(),
            [("docker.io/library/app:v1".to_string(), digest.clone())]
        );
    }

    #[test]
    fn index_survives_reopen_and_tags_move() {
        let dir = tempfile::tempdir().unwrap();
        {
            let store = LocalImageStore::open(dir.path()).unwrap();
            store.import(&r("registry.example/app:v1"), b"one").unwrap();
        }
        let store = LocalImageStore::open(dir.path()).unwrap();
        assert_eq!(
            store
                .read(&r("registry.example/app:v1"))
                .unwrap()
                .as_deref(),
            Some(&b"one"[..])
        );
        let d2 = store.import(&r("registry.example/app:v1"), b"two").unwrap();
        assert_eq!(
            store
                .lookup(&r("registry.example/app:v1"))
                .unwrap()
                .unwrap()
                .0,
            d2
        );
        assert!(leftovers(dir.path()).is_empty());
    }

    #[test]
    fn digest_reference_must_match_content() {
        let dir = tempfile::tempdir().unwrap();
        let store = LocalImageStore::open(dir.path()).unwrap();
        let good = digest_of(b"content");
        let d = store
            .import(&r(&format!("app@{good}")), b"content")
            .unwrap();
        assert_eq!(d, good);
        let wrong = r(&format!("app:v1@{}", digest_of(b"something else")));
        let err = store.import(&wrong, b"content").unwrap_err();
        assert!(matches!(err, StoreError::DigestMismatch { .. }), "{err}");
        assert_eq!(store.lookup(&wrong).unwrap(), None);
    }

    #[test]
    fn corrupt_blob_and_index_are_reported() {
        let dir = tempfile::tempdir().unwrap();
        let store = LocalImageStore::open(dir.path()).unwrap();
        store.import(&r("app:v1"), b"original").unwrap();
        let (_, path) = store.lookup(&r("app:v1")).unwrap().unwrap();
        fs::write(&path, b"tampered").unwrap();
        let err = store.read(&r("app:v1")).unwrap_err();
        assert!(matches!(err, StoreError::CorruptBlob { .. }), "{err}");

        fs::remove_file(&path).unwrap();
        assert_eq!(
            store.lookup(&r("app:v1")).unwrap(),
            None,
            "missing blob = absent"
        );

        fs::write(dir.path().join("index.json"), b"{not json").unwrap();
        let err = LocalImageStore::open(dir.path()).unwrap_err();
        assert!(matches!(err, StoreError::CorruptIndex { .. }), "{err}");
    }

    #[test]
    fn corrupted_blob_is_refused_and_not_kept() {
        let dir = tempfile::tempdir().unwrap();
        let store = LocalImageStore::open(dir.path()).unwrap();
        let expected = digest_of(b"the real layer");
        let mut w = store.blob_writer(&expected).unwrap();
        w.write(b"the real layeR").unwrap();
        let err = w.commit().unwrap_err();
        assert!(matches!(err, StoreError::CorruptBlob { .. }), "{err}");
        assert!(!store.has_blob(&expected));
        assert!(leftovers(dir.path()).is_empty(), "temp file kept");

        // An interrupted write (dropped writer) leaves nothing either.
        let mut w = store.blob_writer(&expected).unwrap();
        w.write(b"the real").unwrap();
        drop(w);
        assert!(!store.has_blob(&expected));
        assert!(leftovers(dir.path()).is_empty());

        // Garbage from a crash is cleared at open.
        fs::write(dir.path().join("tmp/stale.123.0"), b"x").unwrap();
        let store = LocalImageStore::open(dir.path()).unwrap();
        assert!(leftovers(dir.path()).is_empty());
        let mut w = store.blob_writer(&expected).unwrap();
        w.write(b"the real layer").unwrap();
        w.commit().unwrap();
        assert!(store.has_blob(&expected));
        assert!(store.blob_writer("sha256:../../etc").is_err());
    }

    fn put(store: &LocalImageStore, bytes: &[u8]) -> String {
        let d = digest_of(bytes);
        let mut w = store.blob_writer(&d).unwrap();
        w.write(bytes).unwrap();
        w.commit().unwrap();
        d
    }

    /// A fake pulled OCI image with one shared and one own layer.
    fn fake_image(store: &LocalImageStore, name: &str, shared: &str, at: u64) -> String {
        let config = put(store, format!("config {name}").as_bytes());
        let own = put(store, &vec![name.as_bytes()[0]; 1000]);
        let manifest = put(store, format!("manifest {name}").as_bytes());
        let record = ManifestRecord {
            name: format!("registry.example/{name}"),
            config,
            layers: vec![shared.to_owned(), own],
            kind: RecordKind::Oci {
                config: OciConfig::default(),
            },
        };
        store
            .record(
                &r(&format!("registry.example/{name}:v1")),
                &manifest,
                record,
                UNIX_EPOCH + std::time::Duration::from_secs(at),
            )
            .unwrap();
        manifest
    }

    #[test]
    fn gc_removes_least_recently_used_images_not_in_use() {
        let dir = tempfile::tempdir().unwrap();
        let store = LocalImageStore::open(dir.path()).unwrap();
        let shared = put(&store, &[7u8; 2000]);
        let old = fake_image(&store, "old", &shared, 100);
        let mid = fake_image(&store, "mid", &shared, 200);
        let new = fake_image(&store, "new", &shared, 300);
        let wasm = store
            .import(&r("registry.example/wasm:v1"), b"wasm!")
            .unwrap();
        store
            .touch(&wasm, UNIX_EPOCH + std::time::Duration::from_secs(400))
            .unwrap();

        // Under the limit: nothing happens.
        let report = store.gc(&HashSet::new(), u64::MAX).unwrap();
        assert!(report.images_removed.is_empty());

        // "old" is in use, so the least recently used removable one is "mid".
        let in_use: HashSet<String> = [old.clone()].into();
        let before = store.disk_usage().unwrap();
        let report = store.gc(&in_use, before - 500).unwrap();
        assert_eq!(report.images_removed, std::slice::from_ref(&mid));
        assert!(report.bytes_after < before);
        assert!(
            store
                .image(&r("registry.example/mid:v1"))
                .unwrap()
                .is_none()
        );
        assert!(!store.has_blob(&mid));
        // The shared layer stays for the others.
        assert!(store.has_blob(&shared));
        assert!(
            store
                .image(&r("registry.example/old:v1"))
                .unwrap()
                .is_some()
        );
        assert!(
            store
                .image(&r("registry.example/new:v1"))
                .unwrap()
                .is_some()
        );

        // A limit of zero removes everything not in use, but never the in-use image.
        let report = store.gc(&in_use, 0).unwrap();
        assert_eq!(report.images_removed, [new.clone(), wasm.clone()]);
        assert!(
            store
                .image(&r("registry.example/old:v1"))
                .unwrap()
                .is_some()
        );
        assert!(store.has_blob(&shared));
        assert_eq!(store.images().len(), 2, "tag and digest entries of old");

        // Pinned blobs (a pull in progress) survive a sweep.
        let mut pin = store.pin();
        let pending = put(&store, b"downloading");
        pin.add(&pending);
        store.gc(&in_use, 0).unwrap();
        assert!(store.has_blob(&pending));
        drop(pin);
        store.gc(&HashSet::new(), 0).unwrap();
        assert!(!store.has_blob(&pending));
        assert!(store.images().is_empty());
    }
}
