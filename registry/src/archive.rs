//! Importing image archives into the store, for nodes without registry access: `docker save`
//! tarballs (`manifest.json` + layer tars) and OCI image layouts (`oci-layout`, `index.json`,
//! `blobs/sha256/…`), plain or gzip-compressed. Images are recorded under the names the
//! archive gives (`RepoTags`; `io.containerd.image.name` or a full
//! `org.opencontainers.image.ref.name` annotation) and pinned against GC.
//!
//! The archive is unpacked into the store's `tmp/` first (every path checked, links only
//! recorded, never created), then each blob an image needs is copied into the store through
//! [`BlobWriter`](crate::BlobWriter), which refuses content not matching its digest. Layers of
//! a docker archive are also checked against the config's `rootfs.diff_ids`.

use std::collections::{BTreeMap, HashMap};
use std::fs::{self, File};
use std::io::{self, BufRead as _, BufReader, Read};
use std::path::{Component, Path, PathBuf};
use std::time::SystemTime;

use oci_client::manifest::{OciDescriptor, OciImageManifest};
use serde::{Deserialize, Serialize};
use sha2::{Digest as _, Sha256};
use tracing::{info, warn};

use crate::image::ImageConfigJson;
use crate::reference::Reference;
use crate::store::{LocalImageStore, ManifestRecord, StoreError, remove_tree, write_atomic};

/// An archive with more entries than this is refused rather than unpacked for ever.
const MAX_ENTRIES: usize = 1_000_000;
/// Manifests, indexes and configs are small; a bigger one is refused rather than buffered.
const MAX_JSON_BYTES: u64 = 4 << 20;
/// Links followed when resolving a file of the archive (docker links duplicate layers).
const MAX_LINK_HOPS: usize = 8;

const OCI_MANIFEST: &str = "application/vnd.oci.image.manifest.v1+json";
const OCI_CONFIG: &str = "application/vnd.oci.image.config.v1+json";
const OCI_LAYER_TAR: &str = "application/vnd.oci.image.layer.v1.tar";
const OCI_LAYER_TAR_GZIP: &str = "application/vnd.oci.image.layer.v1.tar+gzip";
const REF_NAME: &str = "org.opencontainers.image.ref.name";
const CONTAINERD_NAME: &str = "io.containerd.image.name";

#[derive(Debug, thiserror::Error)]
pub enum ArchiveError {
    #[error("cannot read {path}")]
    Io {
        path: PathBuf,
        #[source]
        source: io::Error,
    },
    #[error("{archive}: {reason}")]
    Malformed { archive: PathBuf, reason: String },
    #[error("{archive}")]
    Store {
        archive: PathBuf,
        #[source]
        source: StoreError,
    },
}

/// One name an archive's image was recorded under.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct ImportedImage {
    /// The normalised reference, e.g. `docker.io/library/busybox:1.36`.
    pub reference: String,
    /// The manifest digest the reference now points at.
    pub digest: String,
}

/// What [`LocalImageStore::import_archive`] did.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct ImportReport {
    pub images: Vec<ImportedImage>,
    /// Images of the archive without a usable name, as one line each (not imported).
    pub skipped: Vec<String>,
    /// From [`LocalImageStore::import_airgap_dir`]: the archive was imported before, has not
    /// changed (size, modification time) and its images are still in the store, so it was
    /// not read again.
    pub unchanged: bool,
}

/// What the airgap directory's archives gave, by file name, so an unchanged archive is not
/// unpacked again at every agent start (`airgap-imported.json` in the store directory).
#[derive(Debug, Default, Serialize, Deserialize)]
struct AirgapCache {
    #[serde(default)]
    files: BTreeMap<String, AirgapEntry>,
}

#[derive(Debug, Serialize, Deserialize)]
struct AirgapEntry {
    size: u64,
    modified_ns: u128,
    images: Vec<ImportedImage>,
}

const AIRGAP_CACHE: &str = "airgap-imported.json";

fn file_stamp(path: &Path) -> Option<(u64, u128)> {
    let meta = fs::metadata(path).ok()?;
    let modified = meta
        .modified()
        .ok()?
        .duration_since(std::time::UNIX_EPOCH)
        .ok()?;
    Some((meta.len(), modified.as_nanos()))
}

/// Archive names the airgap directory picks up.
const ARCHIVE_SUFFIXES: &[&str] = &[".tar", ".tar.gz", ".tgz", ".tar.zst", ".tzst"];

impl LocalImageStore {
    /// Imports the images of the archive at `path` (see the module docs). Either every image
    /// the archive names is imported or an error says why none of it was recorded (blobs
    /// already copied stay, verified, for GC to collect).
    pub fn import_archive(
        &self,
        path: &Path,
        now: SystemTime,
    ) -> Result<ImportReport, ArchiveError> {
        let tmp = TempTree(self.temp_path("import"));
        let unpacked = unpack(path, &tmp.0)?;
        let plan = if unpacked.exists("manifest.json") {
            docker_plan(&unpacked)?
        } else if unpacked.exists("oci-layout") && unpacked.exists("index.json") {
            oci_plan(&unpacked)?
        } else {
            return Err(unpacked.malformed(
                "neither a docker archive (manifest.json) nor an OCI image layout \
                 (oci-layout, index.json)",
            ));
        };
        if plan.images.is_empty() {
            let why = if plan.skipped.is_empty() {
                "the archive holds no image".to_owned()
            } else {
                format!("no image with a usable name: {}", plan.skipped.join("; "))
            };
            return Err(unpacked.malformed(&why));
        }
        // Copy and verify everything before recording anything.
        for image in &plan.images {
            for blob in &image.blobs {
                unpacked.copy_blob(self, blob)?;
            }
            if let Some(bytes) = &image.generated_manifest {
                unpacked.put_generated(self, bytes)?;
            }
        }
        let mut report = ImportReport {
            images: Vec::new(),
            skipped: plan.skipped,
            unchanged: false,
        };
        for image in plan.images {
            self.record_imported(&image.names, &image.digest, image.record, now)
                .map_err(|source| unpacked.store_err(source))?;
            for name in &image.names {
                info!(image = %name, digest = %image.digest, "image imported");
                report.images.push(ImportedImage {
                    reference: name.to_string(),
                    digest: image.digest.clone(),
                });
            }
        }
        Ok(report)
    }

    /// Imports every archive (`*.tar`, `*.tar.gz`, `*.tgz`) placed directly in the store
    /// directory — the node's airgap images directory, as K3s' `agent/images/` — in name
    /// order. One archive failing does not stop the others.
    pub fn import_airgap_dir(
        &self,
        now: SystemTime,
    ) -> Vec<(PathBuf, Result<ImportReport, ArchiveError>)> {
        let mut files: Vec<PathBuf> = match fs::read_dir(self.dir()) {
            Ok(entries) => entries
                .flatten()
                .filter(|e| e.file_type().is_ok_and(|t| t.is_file()))
                .map(|e| e.path())
                .filter(|p| {
                    let name = p
                        .file_name()
                        .map(|n| n.to_string_lossy().into_owned())
                        .unwrap_or_default();
                    ARCHIVE_SUFFIXES.iter().any(|s| name.ends_with(s))
                })
                .collect(),
            Err(e) => {
                warn!(dir = %self.dir().display(), error = %e, "cannot list the airgap images directory");
                return Vec::new();
            }
        };
        files.sort();
        let cache_path = self.dir().join(AIRGAP_CACHE);
        let cache: AirgapCache = fs::read(&cache_path)
            .ok()
            .and_then(|b| serde_json::from_slice(&b).ok())
            .unwrap_or_default();
        let mut next = AirgapCache::default();
        let mut results = Vec::new();
        for file in files {
            let name = file
                .file_name()
                .map(|n| n.to_string_lossy().into_owned())
                .unwrap_or_default();
            let stamp = file_stamp(&file);
            if let (Some(entry), Some((size, modified_ns))) = (cache.files.get(&name), stamp)
                && entry.size == size
                && entry.modified_ns == modified_ns
                && entry.images.iter().all(|i| self.still_points_at(i))
            {
                let report = ImportReport {
                    images: entry.images.clone(),
                    skipped: Vec::new(),
                    unchanged: true,
                };
                next.files.insert(
                    name,
                    AirgapEntry {
                        images: entry.images.clone(),
                        size,
                        modified_ns,
                    },
                );
                results.push((file, Ok(report)));
                continue;
            }
            let result = self.import_archive(&file, now);
            if let (Ok(report), Some((size, modified_ns))) = (&result, stamp) {
                next.files.insert(
                    name,
                    AirgapEntry {
                        size,
                        modified_ns,
                        images: report.images.clone(),
                    },
                );
            }
            results.push((file, result));
        }
        let written = serde_json::to_vec_pretty(&next)
            .map_err(|e| e.to_string())
            .and_then(|data| write_atomic(&cache_path, &data).map_err(|e| e.to_string()));
        if let Err(error) = written {
            // Only costs a re-import at the next start.
            warn!(path = %cache_path.display(), %error, "cannot record imported airgap archives");
        }
        results
    }

    /// Whether `image`'s reference still names its digest and the image is complete.
    fn still_points_at(&self, image: &ImportedImage) -> bool {
        Reference::parse(&image.reference)
            .ok()
            .and_then(|r| self.image(&r).ok().flatten())
            .is_some_and(|i| i.digest == image.digest)
    }
}

/// A temporary directory removed on drop.
struct TempTree(PathBuf);

impl Drop for TempTree {
    fn drop(&mut self) {
        let _ = remove_tree(&self.0);
    }
}

/// An archive unpacked into a directory: regular files on disk, links only in `links`.
struct Unpacked<'a> {
    archive: &'a Path,
    root: &'a Path,
    /// Archive path → archive path it links to (both normalised, inside the archive).
    links: HashMap<String, String>,
}

/// Archive-relative path with only normal components, joined by `/`; `None` if it would
/// leave the archive (absolute, `..` above the root).
fn normalise(path: &Path, base: &[String]) -> Option<String> {
    let mut parts: Vec<String> = base.to_vec();
    for c in path.components() {
        match c {
            Component::Normal(p) => parts.push(p.to_str()?.to_owned()),
            Component::CurDir => {}
            Component::ParentDir => {
                parts.pop()?;
            }
            Component::RootDir | Component::Prefix(_) => return None,
        }
    }
    (!parts.is_empty()).then(|| parts.join("/"))
}

fn malformed(archive: &Path, reason: impl Into<String>) -> ArchiveError {
    ArchiveError::Malformed {
        archive: archive.to_owned(),
        reason: reason.into(),
    }
}

/// Unpacks `archive` (plain, or gzip) into `root`, refusing entries that leave it, device
/// files, and more than [`MAX_ENTRIES`] entries.
fn unpack<'a>(archive: &'a Path, root: &'a Path) -> Result<Unpacked<'a>, ArchiveError> {
    let io = |path: &Path| {
        let path = path.to_owned();
        move |source| ArchiveError::Io { path, source }
    };
    let file = File::open(archive).map_err(io(archive))?;
    let mut reader = BufReader::new(file);
    let head = reader.fill_buf().map_err(io(archive))?;
    let reader: Box<dyn Read> = if head.starts_with(&[0x1f, 0x8b]) {
        Box::new(flate2::read::GzDecoder::new(reader))
    } else if head.starts_with(&[0x28, 0xb5, 0x2f, 0xfd]) {
        return Err(malformed(
            archive,
            "zstd-compressed archives are not supported; decompress it first (zstd -d)",
        ));
    } else {
        Box::new(reader)
    };
    fs::create_dir_all(root).map_err(io(root))?;
    let mut links = HashMap::new();
    let mut tar = tar::Archive::new(reader);
    let entries = tar
        .entries()
        .map_err(|e| malformed(archive, format!("not a tar archive: {e}")))?;
    for (n, entry) in entries.enumerate() {
        if n >= MAX_ENTRIES {
            return Err(malformed(
                archive,
                format!("more than {MAX_ENTRIES} entries"),
            ));
        }
        let mut entry =
            entry.map_err(|e| malformed(archive, format!("not a valid tar archive: {e}")))?;
        let raw = entry
            .path()
            .map_err(|e| malformed(archive, format!("entry with an invalid path: {e}")))?
            .into_owned();
        let escape = || {
            malformed(
                archive,
                format!("entry {} escapes the archive", raw.display()),
            )
        };
        let kind = entry.header().entry_type();
        use tar::EntryType as T;
        if matches!(
            kind,
            T::XGlobalHeader | T::XHeader | T::GNULongName | T::GNULongLink
        ) {
            continue;
        }
        let Some(name) = normalise(&raw, &[]) else {
            if kind == T::Directory && raw.components().all(|c| c == Component::CurDir) {
                continue; // "./"
            }
            return Err(escape());
        };
        if raw
            .components()
            .any(|c| matches!(c, Component::ParentDir | Component::RootDir))
        {
            return Err(escape());
        }
        let dest = root.join(&name);
        match kind {
            T::Directory => fs::create_dir_all(&dest).map_err(io(&dest))?,
            T::Regular | T::Continuous => {
                if let Some(parent) = dest.parent() {
                    fs::create_dir_all(parent).map_err(io(parent))?;
                }
                let mut out = File::create(&dest).map_err(io(&dest))?;
                io::copy(&mut entry, &mut out)
                    .map_err(|e| malformed(archive, format!("entry {name}: {e}")))?;
                links.remove(&name);
            }
            T::Symlink | T::Link => {
                let target = entry
                    .link_name()
                    .map_err(|e| malformed(archive, format!("entry {name}: {e}")))?
                    .ok_or_else(|| malformed(archive, format!("link {name} has no target")))?
                    .into_owned();
                // A symlink is relative to its directory; a hard link names an archive path.
                let base: Vec<String> = if kind == T::Symlink {
                    let mut parts: Vec<String> = name.split('/').map(str::to_owned).collect();
                    parts.pop();
                    parts
                } else {
                    Vec::new()
                };
                let resolved = normalise(&target, &base).ok_or_else(|| {
                    malformed(
                        archive,
                        format!("link {name} -> {} escapes the archive", target.display()),
                    )
                })?;
                links.insert(name, resolved);
            }
            other => {
                return Err(malformed(
                    archive,
                    format!("entry {name} is a {other:?}, not a file or directory"),
                ));
            }
        }
    }
    Ok(Unpacked {
        archive,
        root,
        links,
    })
}

impl Unpacked<'_> {
    fn malformed(&self, reason: &str) -> ArchiveError {
        malformed(self.archive, reason)
    }

    fn store_err(&self, source: StoreError) -> ArchiveError {
        ArchiveError::Store {
            archive: self.archive.to_owned(),
            source,
        }
    }

    /// The file on disk for archive path `name`, following recorded links.
    fn file(&self, name: &str) -> Result<PathBuf, ArchiveError> {
        let Some(mut name) = normalise(Path::new(name), &[]) else {
            return Err(self.malformed(&format!("{name:?} escapes the archive")));
        };
        for _ in 0..MAX_LINK_HOPS {
            match self.links.get(&name) {
                Some(target) => name = target.clone(),
                None => {
                    let path = self.root.join(&name);
                    return if path.is_file() {
                        Ok(path)
                    } else {
                        Err(self.malformed(&format!("{name} is missing")))
                    };
                }
            }
        }
        Err(self.malformed(&format!("{name}: too many links")))
    }

    fn exists(&self, name: &str) -> bool {
        self.file(name).is_ok()
    }

    /// A small JSON file of the archive.
    fn json(&self, name: &str) -> Result<Vec<u8>, ArchiveError> {
        let path = self.file(name)?;
        let len = fs::metadata(&path)
            .map_err(|source| ArchiveError::Io {
                path: path.clone(),
                source,
            })?
            .len();
        if len > MAX_JSON_BYTES {
            return Err(self.malformed(&format!("{name} is larger than {MAX_JSON_BYTES} bytes")));
        }
        fs::read(&path).map_err(|source| ArchiveError::Io { path, source })
    }

    fn parse<T: for<'de> Deserialize<'de>>(
        &self,
        name: &str,
        bytes: &[u8],
    ) -> Result<T, ArchiveError> {
        serde_json::from_slice(bytes).map_err(|e| self.malformed(&format!("{name}: {e}")))
    }

    /// Copies `blob` into the store, verifying its digest (and size, when known).
    fn copy_blob(&self, store: &LocalImageStore, blob: &Blob) -> Result<(), ArchiveError> {
        if store.has_blob(&blob.digest) {
            return Ok(());
        }
        let path = self.file(&blob.file)?;
        let io = |source| ArchiveError::Io {
            path: path.clone(),
            source,
        };
        let mut file = File::open(&path).map_err(io)?;
        let mut writer = store
            .blob_writer(&blob.digest)
            .map_err(|e| self.store_err(e))?;
        let mut buf = vec![0u8; 1 << 16];
        loop {
            let n = file.read(&mut buf).map_err(io)?;
            if n == 0 {
                break;
            }
            writer.write(&buf[..n]).map_err(|e| self.store_err(e))?;
        }
        if let Some(size) = blob.size
            && writer.written() != size
        {
            return Err(self.malformed(&format!(
                "{} is {} bytes, its descriptor says {size}",
                blob.file,
                writer.written()
            )));
        }
        writer.commit().map_err(|e| match e {
            StoreError::CorruptBlob { digest, actual } => self.malformed(&format!(
                "{} does not match its digest {digest} (content hashes to {actual})",
                blob.file
            )),
            other => self.store_err(other),
        })?;
        Ok(())
    }

    /// `sha256:<hex>` of archive file `name`, and of its gunzipped content if it is gzip.
    fn hash_file(&self, name: &str) -> Result<(String, u64, Option<String>), ArchiveError> {
        let path = self.file(name)?;
        let io = |source| ArchiveError::Io {
            path: path.clone(),
            source,
        };
        let file = File::open(&path).map_err(io)?;
        let mut reader = BufReader::new(file);
        let gzip = reader.fill_buf().map_err(io)?.starts_with(&[0x1f, 0x8b]);
        let mut hasher = Sha256::new();
        let size = io::copy(&mut reader, &mut HashWriter(&mut hasher)).map_err(io)?;
        let digest = format!("sha256:{}", hex::encode(hasher.finalize()));
        let uncompressed = if gzip {
            let mut hasher = Sha256::new();
            let file = File::open(&path).map_err(io)?;
            io::copy(
                &mut flate2::read::GzDecoder::new(BufReader::new(file)),
                &mut HashWriter(&mut hasher),
            )
            .map_err(|e| self.malformed(&format!("{name}: bad gzip: {e}")))?;
            Some(format!("sha256:{}", hex::encode(hasher.finalize())))
        } else {
            None
        };
        Ok((digest, size, uncompressed))
    }

    /// Stores generated JSON (a docker archive's manifest) as a blob; returns its digest.
    fn put_generated(&self, store: &LocalImageStore, bytes: &[u8]) -> Result<String, ArchiveError> {
        let digest = format!("sha256:{}", hex::encode(Sha256::digest(bytes)));
        if !store.has_blob(&digest) {
            let mut w = store.blob_writer(&digest).map_err(|e| self.store_err(e))?;
            w.write(bytes).map_err(|e| self.store_err(e))?;
            w.commit().map_err(|e| self.store_err(e))?;
        }
        Ok(digest)
    }
}

struct HashWriter<'a>(&'a mut Sha256);

impl io::Write for HashWriter<'_> {
    fn write(&mut self, buf: &[u8]) -> io::Result<usize> {
        self.0.update(buf);
        Ok(buf.len())
    }
    fn flush(&mut self) -> io::Result<()> {
        Ok(())
    }
}

/// A blob to copy from the archive into the store.
struct Blob {
    file: String,
    digest: String,
    size: Option<u64>,
}

/// An image ready to record once its blobs are in.
struct PlannedImage {
    names: Vec<Reference>,
    digest: String,
    /// The manifest a docker archive lacks, written by kedge; `None` when `blobs` has it.
    generated_manifest: Option<Vec<u8>>,
    record: ManifestRecord,
    blobs: Vec<Blob>,
}

#[derive(Default)]
struct Plan {
    images: Vec<PlannedImage>,
    skipped: Vec<String>,
}

/// `<hex>` if archive path `name` is named by a sha256 digest (`blobs/sha256/<hex>`,
/// `<hex>.json`), so its content must match it.
fn digest_in_name(name: &str) -> Option<String> {
    let file = name.rsplit('/').next()?;
    let hex = file.strip_suffix(".json").unwrap_or(file);
    (hex.len() == 64 && hex.bytes().all(|b| b.is_ascii_hexdigit())).then(|| format!("sha256:{hex}"))
}

#[derive(Deserialize)]
#[serde(rename_all = "PascalCase")]
struct DockerEntry {
    config: String,
    #[serde(default)]
    repo_tags: Option<Vec<String>>,
    layers: Vec<String>,
}

#[derive(Default, Deserialize)]
struct RootFs {
    #[serde(default)]
    diff_ids: Vec<String>,
}

#[derive(Default, Deserialize)]
struct ConfigRootFs {
    #[serde(default)]
    rootfs: Option<RootFs>,
}

fn docker_plan(u: &Unpacked<'_>) -> Result<Plan, ArchiveError> {
    let entries: Vec<DockerEntry> = u.parse("manifest.json", &u.json("manifest.json")?)?;
    let mut plan = Plan::default();
    for entry in entries {
        let tags = entry.repo_tags.unwrap_or_default();
        if tags.is_empty() {
            plan.skipped.push(format!(
                "image with config {} has no RepoTags",
                entry.config
            ));
            continue;
        }
        let names = tags
            .iter()
            .map(|t| {
                Reference::parse(t)
                    .map_err(|e| u.malformed(&format!("manifest.json RepoTags: {e}")))
            })
            .collect::<Result<Vec<_>, _>>()?;
        let config_bytes = u.json(&entry.config)?;
        let config_digest = format!("sha256:{}", hex::encode(Sha256::digest(&config_bytes)));
        if let Some(named) = digest_in_name(&entry.config)
            && named != config_digest
        {
            return Err(u.malformed(&format!(
                "{} does not match its digest {named} (content hashes to {config_digest})",
                entry.config
            )));
        }
        let config: ImageConfigJson = u.parse(&entry.config, &config_bytes)?;
        let diff_ids = u
            .parse::<ConfigRootFs>(&entry.config, &config_bytes)?
            .rootfs
            .unwrap_or_default()
            .diff_ids;
        if diff_ids.len() != entry.layers.len() {
            return Err(u.malformed(&format!(
                "{} lists {} layers, its config {} diff_ids",
                "manifest.json",
                entry.layers.len(),
                diff_ids.len()
            )));
        }
        let mut blobs = vec![Blob {
            file: entry.config.clone(),
            digest: config_digest.clone(),
            size: Some(config_bytes.len() as u64),
        }];
        let mut layers = Vec::new();
        for (layer, diff_id) in entry.layers.iter().zip(&diff_ids) {
            let (digest, size, uncompressed) = u.hash_file(layer)?;
            if let Some(named) = digest_in_name(layer)
                && named != digest
            {
                return Err(u.malformed(&format!(
                    "{layer} does not match its digest {named} (content hashes to {digest})"
                )));
            }
            let content = uncompressed.as_ref().unwrap_or(&digest);
            if content != diff_id {
                return Err(u.malformed(&format!(
                    "layer {layer} hashes to {content}, its config's diff_id is {diff_id}"
                )));
            }
            layers.push(OciDescriptor {
                media_type: if uncompressed.is_some() {
                    OCI_LAYER_TAR_GZIP
                } else {
                    OCI_LAYER_TAR
                }
                .to_owned(),
                digest: digest.clone(),
                size: i64::try_from(size).unwrap_or(i64::MAX),
                ..OciDescriptor::default()
            });
            blobs.push(Blob {
                file: layer.clone(),
                digest,
                size: Some(size),
            });
        }
        let manifest = OciImageManifest {
            schema_version: 2,
            media_type: Some(OCI_MANIFEST.to_owned()),
            config: OciDescriptor {
                media_type: OCI_CONFIG.to_owned(),
                digest: config_digest.clone(),
                size: config_bytes.len() as i64,
                ..OciDescriptor::default()
            },
            layers,
            ..OciImageManifest::default()
        };
        let kind = crate::pull::classify(&manifest, &config)
            .map_err(|m| u.malformed(&format!("image {}: {m}", tags[0])))?;
        let manifest_bytes = serde_json::to_vec(&manifest)
            .map_err(|e| u.malformed(&format!("cannot encode a manifest: {e}")))?;
        plan.images.push(PlannedImage {
            record: ManifestRecord {
                name: names[0].name(),
                config: config_digest,
                layers: manifest.layers.iter().map(|l| l.digest.clone()).collect(),
                kind,
            },
            digest: format!("sha256:{}", hex::encode(Sha256::digest(&manifest_bytes))),
            generated_manifest: Some(manifest_bytes),
            names,
            blobs,
        });
    }
    Ok(plan)
}

#[derive(Deserialize)]
struct OciIndex {
    #[serde(default)]
    manifests: Vec<IndexEntry>,
}

#[derive(Deserialize)]
struct IndexEntry {
    digest: String,
    #[serde(default)]
    size: Option<u64>,
    #[serde(default)]
    annotations: HashMap<String, String>,
}

/// The archive path of blob `digest` in an OCI layout.
fn blob_path(u: &Unpacked<'_>, digest: &str) -> Result<String, ArchiveError> {
    match digest.strip_prefix("sha256:") {
        Some(hex) if hex.len() == 64 && hex.bytes().all(|b| b.is_ascii_hexdigit()) => {
            Ok(format!("blobs/sha256/{hex}"))
        }
        _ => Err(u.malformed(&format!("unsupported digest {digest:?} (only sha256)"))),
    }
}

/// A JSON blob of the layout, checked against its digest and size now (it is parsed before
/// being copied).
fn oci_json_blob(
    u: &Unpacked<'_>,
    digest: &str,
    size: Option<u64>,
) -> Result<(Blob, Vec<u8>), ArchiveError> {
    let file = blob_path(u, digest)?;
    let bytes = u.json(&file)?;
    let actual = format!("sha256:{}", hex::encode(Sha256::digest(&bytes)));
    if actual != digest {
        return Err(u.malformed(&format!(
            "{file} does not match its digest {digest} (content hashes to {actual})"
        )));
    }
    if let Some(size) = size
        && size != bytes.len() as u64
    {
        return Err(u.malformed(&format!(
            "{file} is {} bytes, its descriptor says {size}",
            bytes.len()
        )));
    }
    let blob = Blob {
        file,
        digest: digest.to_owned(),
        size: Some(bytes.len() as u64),
    };
    Ok((blob, bytes))
}

/// The names an index entry gives its image. `org.opencontainers.image.ref.name` is often a
/// bare tag (`v1`, as the OCI spec shows): that names no repository and is not used.
fn entry_names(u: &Unpacked<'_>, entry: &IndexEntry) -> Result<Vec<Reference>, ArchiveError> {
    let name = entry.annotations.get(CONTAINERD_NAME).or_else(|| {
        entry
            .annotations
            .get(REF_NAME)
            .filter(|n| n.contains('/') || n.contains(':') || n.contains('@'))
    });
    match name {
        Some(n) => Reference::parse(n)
            .map(|r| vec![r])
            .map_err(|e| u.malformed(&format!("index.json: {e}"))),
        None => Ok(Vec::new()),
    }
}

fn oci_plan(u: &Unpacked<'_>) -> Result<Plan, ArchiveError> {
    let layout: serde_json::Value = u.parse("oci-layout", &u.json("oci-layout")?)?;
    if layout
        .get("imageLayoutVersion")
        .and_then(|v| v.as_str())
        .is_none()
    {
        return Err(u.malformed("oci-layout has no imageLayoutVersion"));
    }
    let index: OciIndex = u.parse("index.json", &u.json("index.json")?)?;
    let mut plan = Plan::default();
    for entry in &index.manifests {
        let names = entry_names(u, entry)?;
        if names.is_empty() {
            let tag = entry.annotations.get(REF_NAME);
            plan.skipped.push(match tag {
                Some(t) => format!(
                    "{} is named only by the tag {t:?}, not a full image name",
                    entry.digest
                ),
                None => format!("{} has no name annotation", entry.digest),
            });
            continue;
        }
        let (mut manifest_blob, mut body) = oci_json_blob(u, &entry.digest, entry.size)?;
        let manifest = match crate::pull::parse_manifest(&body)
            .map_err(|e| u.malformed(&format!("{}: {}", manifest_blob.file, e.message)))?
        {
            crate::pull::Manifest::Image(m) => m,
            crate::pull::Manifest::Index(entries) => {
                let chosen = crate::pull::choose_platform(&entries).ok_or_else(|| {
                    u.malformed(&format!(
                        "image {}: no manifest for linux/{} or wasm in its index",
                        names[0],
                        crate::image::node_arch()
                    ))
                })?;
                (manifest_blob, body) = oci_json_blob(u, &chosen, None)?;
                match crate::pull::parse_manifest(&body)
                    .map_err(|e| u.malformed(&format!("{}: {}", manifest_blob.file, e.message)))?
                {
                    crate::pull::Manifest::Image(m) => m,
                    crate::pull::Manifest::Index(_) => {
                        return Err(u.malformed(&format!(
                            "{}: an index nested in an index",
                            manifest_blob.file
                        )));
                    }
                }
            }
        };
        let size = |d: &OciDescriptor| u64::try_from(d.size).ok();
        let (config_blob, config_bytes) =
            oci_json_blob(u, &manifest.config.digest, size(&manifest.config))?;
        let config: ImageConfigJson = serde_json::from_slice(&config_bytes).unwrap_or_default();
        let kind = crate::pull::classify(&manifest, &config)
            .map_err(|m| u.malformed(&format!("image {}: {m}", names[0])))?;
        let mut blobs = vec![config_blob];
        for layer in &manifest.layers {
            blobs.push(Blob {
                file: blob_path(u, &layer.digest)?,
                digest: layer.digest.clone(),
                size: size(layer),
            });
        }
        let digest = manifest_blob.digest.clone();
        blobs.push(manifest_blob);
        plan.images.push(PlannedImage {
            record: ManifestRecord {
                name: names[0].name(),
                config: manifest.config.digest.clone(),
                layers: manifest.layers.iter().map(|l| l.digest.clone()).collect(),
                kind,
            },
            digest,
            generated_manifest: None,
            names,
            blobs,
        });
    }
    Ok(plan)
}
