//! Images present on the node without a registry (like K3s's airgap images): content-addressed
//! blobs plus an index from normalised reference to digest.
//!
//! Layout under the store directory:
//!
//! ```text
//! blobs/sha256/<hex>   the image bytes (for kedge, the Wasm binary)
//! index.json           {"images": {"docker.io/library/app:v1": "sha256:<hex>", ...}}
//! ```
//!
//! Every file is written to a temporary name, synced and renamed, so a crash leaves either the
//! old or the new version, never a torn one. The API is synchronous (small local files); call it
//! from `spawn_blocking` in async code. One process owns a store directory.

use std::collections::BTreeMap;
use std::fs::{self, File};
use std::io::{self, Write as _};
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Mutex, MutexGuard};

use serde::{Deserialize, Serialize};
use sha2::{Digest as _, Sha256};
use tracing::{debug, warn};

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
    #[error("stored blob {digest} is corrupt (content hashes to {actual})")]
    CorruptBlob { digest: String, actual: String },
}

pub type Result<T, E = StoreError> = std::result::Result<T, E>;

fn io_err(path: &Path) -> impl FnOnce(io::Error) -> StoreError + '_ {
    move |source| StoreError::Io {
        path: path.to_owned(),
        source,
    }
}

#[derive(Debug, Default, Serialize, Deserialize)]
struct Index {
    /// Normalised reference → `sha256:<hex>`. Ordered so the file diffs well.
    #[serde(default)]
    images: BTreeMap<String, String>,
}

/// The node's local image store.
#[derive(Debug)]
pub struct LocalImageStore {
    dir: PathBuf,
    /// In-memory copy of `index.json`; the lock also serialises index writes.
    index: Mutex<Index>,
}

impl LocalImageStore {
    /// Opens (creating if needed) the store in `dir`.
    pub fn open(dir: impl Into<PathBuf>) -> Result<Self> {
        let dir = dir.into();
        let blobs = dir.join("blobs").join("sha256");
        fs::create_dir_all(&blobs).map_err(io_err(&blobs))?;
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
        })
    }

    /// Stores `bytes` as the image `reference` and returns its digest (`sha256:<hex>`).
    ///
    /// A reference that carries a digest must match the content: importing is how an
    /// air-gapped node is trusted to have the right image, so a mismatch is refused. Importing
    /// again under the same reference re-points it (a moved tag).
    pub fn import(&self, reference: &Reference, bytes: &[u8]) -> Result<String> {
        let hex = hex::encode(Sha256::digest(bytes));
        let digest = format!("sha256:{hex}");
        if let Some(expected) = reference.digest()
            && expected != digest
        {
            return Err(StoreError::DigestMismatch {
                reference: reference.to_string(),
                expected: expected.to_owned(),
                actual: digest,
            });
        }
        let blob = self.blob_path(&hex);
        if !blob.exists() {
            write_atomic(&blob, bytes)?;
        }

        let key = reference.to_string();
        let mut index = self.lock_index();
        let previous = index.images.insert(key.clone(), digest.clone());
        if let Err(e) = self.write_index(&index) {
            // Keep memory and disk in agreement.
            match previous {
                Some(p) => index.images.insert(key, p),
                None => index.images.remove(&key),
            };
            return Err(e);
        }
        debug!(reference = %key, %digest, "image imported");
        Ok(digest)
    }

    /// The digest and blob path of `reference`, if the node has it.
    ///
    /// A digest reference is found by content alone, whatever name it was imported under: the
    /// digest already pins the bytes. A tag reference goes through the index.
    pub fn lookup(&self, reference: &Reference) -> Result<Option<(String, PathBuf)>> {
        let digest = match reference.digest() {
            Some(d) => d.to_owned(),
            None => match self.lock_index().images.get(&reference.to_string()) {
                Some(d) => d.clone(),
                None => return Ok(None),
            },
        };
        // Only sha256 blobs are stored; other algorithms cannot be present.
        let Some(hex) = digest.strip_prefix("sha256:") else {
            return Ok(None);
        };
        let path = self.blob_path(hex);
        match fs::metadata(&path) {
            Ok(_) => Ok(Some((digest, path))),
            Err(e) if e.kind() == io::ErrorKind::NotFound => {
                if reference.digest().is_none() {
                    warn!(reference = %reference, %digest, "index names a missing blob");
                }
                Ok(None)
            }
            Err(e) => Err(io_err(&path)(e)),
        }
    }

    /// The bytes of `reference`, verified against their digest so on-disk corruption is
    /// reported rather than run.
    pub fn read(&self, reference: &Reference) -> Result<Option<Vec<u8>>> {
        let Some((digest, path)) = self.lookup(reference)? else {
            return Ok(None);
        };
        let bytes = fs::read(&path).map_err(io_err(&path))?;
        let actual = format!("sha256:{}", hex::encode(Sha256::digest(&bytes)));
        if actual != digest {
            return Err(StoreError::CorruptBlob { digest, actual });
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

    fn blob_path(&self, hex: &str) -> PathBuf {
        self.dir.join("blobs").join("sha256").join(hex)
    }

    fn lock_index(&self) -> MutexGuard<'_, Index> {
        // The index is replaced only after a successful write, so a panic elsewhere cannot
        // leave it half-updated.
        self.index.lock().unwrap_or_else(|p| p.into_inner())
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

/// Distinguishes temporary files of concurrent writers in one process.
static TMP_COUNTER: AtomicU64 = AtomicU64::new(0);

/// Writes `data` to `path` via a synced temporary file and a rename, then syncs the directory
/// so the rename itself survives a power loss.
fn write_atomic(path: &Path, data: &[u8]) -> Result<()> {
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

#[cfg(test)]
mod tests {
    use super::*;

    fn r(s: &str) -> Reference {
        Reference::parse(s).unwrap()
    }

    fn digest_of(bytes: &[u8]) -> String {
        format!("sha256:{}", hex::encode(Sha256::digest(bytes)))
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
        // No temporary files left behind.
        let leftovers: Vec<_> = fs::read_dir(dir.path())
            .unwrap()
            .map(|e| e.unwrap().file_name().to_string_lossy().into_owned())
            .filter(|n| n.contains(".tmp."))
            .collect();
        assert!(leftovers.is_empty(), "{leftovers:?}");
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
}
