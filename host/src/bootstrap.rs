//! The bootstrap data the servers of one cluster share on etcd, as K3s shares its own: the
//! cluster CA (certificate and key), the service-account signing key and, with
//! `--secrets-encryption`, the generated encryption configuration. Every server started with
//! the same `--datastore-endpoint` and `--token` ends up with the same files in its data dir,
//! so a second server needs nothing copied by hand.
//!
//! The first server to start writes them to etcd under a key of kedge's own outside the
//! object root (`/kedge-bootstrap<root>`), sealed with AES-256-GCM under a key derived from
//! the server token (PBKDF2-HMAC-SHA256, 100,000 rounds, a random salt): etcd, its backups and
//! anyone who can read it learn nothing without the token. K3s seals its bootstrap data the
//! same way. A write races with other servers' on `create_revision == 0`; the loser adopts the
//! winner's files. A server whose CA or service-account key differs from the cluster's keeps
//! its own beside them (`<file>.replaced-<time>`) and takes the cluster's. The encryption
//! config is only seeded where a server has none: rotating keys means editing it on every
//! server, as with kube-apiserver's `--encryption-provider-config`.

use std::path::{Path, PathBuf};

use anyhow::Context as _;
use base64::Engine as _;
use ring::aead::{AES_256_GCM, Aad, LessSafeKey, Nonce, UnboundKey};
use ring::rand::{SecureRandom as _, SystemRandom};

/// The files shared, relative to the data dir.
pub const FILES: &[&str] = &[
    "pki/ca.crt",
    "pki/ca.key",
    "pki/sa.key",
    "cred/encryption-config.json",
];

const MAGIC: &[u8] = b"kedge-bootstrap-v1\0";
const ROUNDS: u32 = 100_000;

/// Where the server token is kept when it was not given.
pub fn token_path(data_dir: &Path) -> PathBuf {
    data_dir.join("server-token")
}

/// The prefix and user of K3s' full server token, `K10<CA sha256>::server:<secret>`.
const FULL_PREFIX: &str = "K10";
const FULL_USER: &str = "server:";

/// A server token as operators hand it over: K3s' full form, `K10<CA sha256>::server:<secret>`,
/// which also tells a joining server which CA to trust, or the secret alone. Only the secret
/// seals the bootstrap data, so both forms open the same cluster. `Debug` hides the secret.
#[derive(Clone, PartialEq, Eq)]
pub struct ServerToken {
    /// The SHA-256 (lowercase hex) of the cluster CA's certificate, in the full form.
    pub ca_hash: Option<String>,
    pub secret: String,
}

impl std::fmt::Debug for ServerToken {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("ServerToken")
            .field("ca_hash", &self.ca_hash)
            .finish_non_exhaustive()
    }
}

impl ServerToken {
    pub fn parse(raw: &str) -> anyhow::Result<ServerToken> {
        let raw = raw.trim();
        let shape = || {
            anyhow::anyhow!(
                "a server token is K10<CA sha256, 64 hex>::server:<secret> or the secret alone"
            )
        };
        let plain = |s: &str| !s.is_empty() && !s.chars().any(char::is_whitespace);
        // The full form starts `K10` and names its user after `::`; anything else is a secret
        // as given (earlier tokens were taken whole).
        match raw.strip_prefix(FULL_PREFIX).filter(|r| r.contains("::")) {
            Some(rest) => {
                let (hash, cred) = rest.split_once("::").ok_or_else(shape)?;
                let secret = cred.strip_prefix(FULL_USER).ok_or_else(shape)?;
                if hash.len() != 64 || !hash.bytes().all(|b| b.is_ascii_hexdigit()) {
                    return Err(shape());
                }
                if !plain(secret) {
                    return Err(shape());
                }
                Ok(ServerToken {
                    ca_hash: Some(hash.to_ascii_lowercase()),
                    secret: secret.to_string(),
                })
            }
            None if plain(raw) => Ok(ServerToken {
                ca_hash: None,
                secret: raw.to_string(),
            }),
            None => Err(shape()),
        }
    }

    /// The full form, naming the CA whose hash is `ca_hash`.
    pub fn full(&self, ca_hash: &str) -> String {
        format!("{FULL_PREFIX}{ca_hash}::{FULL_USER}{}", self.secret)
    }
}

/// The token kept in the data dir, if there is one. One that does not parse is an error:
/// replacing it would lock this server out of the cluster's bootstrap data.
fn kept_token(data_dir: &Path) -> anyhow::Result<Option<ServerToken>> {
    let path = token_path(data_dir);
    match std::fs::read_to_string(&path) {
        Ok(t) if t.trim().is_empty() => Ok(None),
        Ok(t) => ServerToken::parse(&t)
            .map(Some)
            .with_context(|| format!("{}", path.display())),
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => Ok(None),
        Err(e) => Err(e).with_context(|| format!("reading {}", path.display())),
    }
}

fn write_token_file(data_dir: &Path, text: &str) -> anyhow::Result<()> {
    let path = token_path(data_dir);
    kedge_store::fsmode::private_dir(data_dir)?;
    kedge_store::fsmode::private_file(&path)?;
    std::fs::write(&path, format!("{text}\n"))
        .with_context(|| format!("writing {}", path.display()))
}

/// Keeps `token` in the data dir, for restarts without `--token`. Called once the token has
/// opened (or sealed) the cluster's bootstrap data: a mistyped `--token` must not replace
/// the right one.
pub fn save_token(data_dir: &Path, token: &ServerToken) -> anyhow::Result<()> {
    if kept_token(data_dir)
        .ok()
        .flatten()
        .is_some_and(|k| k.secret == token.secret)
    {
        return Ok(());
    }
    write_token_file(data_dir, &token.secret)
}

/// Writes the token's full form (with the cluster CA's hash) to the data dir, as K3s writes
/// its `server/token`: what `kedge server --server … --token …` needs to join a replica.
pub fn save_full_token(data_dir: &Path, token: &ServerToken, ca_hash: &str) -> anyhow::Result<()> {
    let full = token.full(ca_hash);
    if std::fs::read_to_string(token_path(data_dir)).is_ok_and(|t| t.trim() == full) {
        return Ok(());
    }
    write_token_file(data_dir, &full)
}

/// The server token: `given`, else the one kept in the data dir, else a new random one
/// written there (the first server of a cluster). A given one is kept by [`save_token`] once
/// it has proved right.
pub fn server_token(data_dir: &Path, given: Option<&str>) -> anyhow::Result<ServerToken> {
    if let Some(t) = given.map(str::trim).filter(|t| !t.is_empty()) {
        return ServerToken::parse(t).context("--token");
    }
    if let Some(t) = kept_token(data_dir)? {
        return Ok(t);
    }
    let mut raw = [0u8; 24];
    SystemRandom::new()
        .fill(&mut raw)
        .map_err(|_| anyhow::anyhow!("no randomness for the server token"))?;
    let token = ServerToken {
        ca_hash: None,
        secret: hex::encode(raw),
    };
    write_token_file(data_dir, &token.secret)?;
    Ok(token)
}

fn key_for(token: &str, salt: &[u8]) -> anyhow::Result<LessSafeKey> {
    let mut key = [0u8; 32];
    ring::pbkdf2::derive(
        ring::pbkdf2::PBKDF2_HMAC_SHA256,
        std::num::NonZeroU32::new(ROUNDS).expect("non-zero"),
        salt,
        token.as_bytes(),
        &mut key,
    );
    let key = UnboundKey::new(&AES_256_GCM, &key).map_err(|_| anyhow::anyhow!("AES key"))?;
    Ok(LessSafeKey::new(key))
}

/// The files (path → contents) sealed under `token`.
pub fn seal(
    token: &str,
    files: &serde_json::Map<String, serde_json::Value>,
) -> anyhow::Result<Vec<u8>> {
    let rng = SystemRandom::new();
    let (mut salt, mut nonce) = ([0u8; 16], [0u8; 12]);
    rng.fill(&mut salt)
        .and_then(|()| rng.fill(&mut nonce))
        .map_err(|_| anyhow::anyhow!("no randomness for the bootstrap data"))?;
    let mut data = serde_json::to_vec(files)?;
    key_for(token, &salt)?
        .seal_in_place_append_tag(
            Nonce::assume_unique_for_key(nonce),
            Aad::from(MAGIC),
            &mut data,
        )
        .map_err(|_| anyhow::anyhow!("sealing the bootstrap data"))?;
    Ok([MAGIC, &salt[..], &nonce[..], &data].concat())
}

/// What [`seal`] sealed, or an error saying the token does not open it.
pub fn open(
    token: &str,
    blob: &[u8],
) -> anyhow::Result<serde_json::Map<String, serde_json::Value>> {
    let rest = blob
        .strip_prefix(MAGIC)
        .filter(|r| r.len() > 16 + 12 + 16)
        .context("the bootstrap data in etcd is not kedge's (or is damaged)")?;
    let (salt, rest) = rest.split_at(16);
    let (nonce, sealed) = rest.split_at(12);
    let mut data = sealed.to_vec();
    let nonce = Nonce::try_assume_unique_for_key(nonce).expect("12 bytes");
    let plain = key_for(token, salt)?
        .open_in_place(nonce, Aad::from(MAGIC), &mut data)
        .map_err(|_| {
            anyhow::anyhow!(
                "the server token does not open the cluster's bootstrap data in etcd: start this server with --token set to the first server's (its <data-dir>/server-token)"
            )
        })?;
    Ok(serde_json::from_slice(plain)?)
}

/// The shared files present in `data_dir`, base64.
fn collect(data_dir: &Path) -> anyhow::Result<serde_json::Map<String, serde_json::Value>> {
    let mut files = serde_json::Map::new();
    for f in FILES {
        let path = data_dir.join(f);
        if path.exists() {
            let bytes = std::fs::read(&path).with_context(|| format!("{}", path.display()))?;
            files.insert(
                f.to_string(),
                base64::engine::general_purpose::STANDARD
                    .encode(bytes)
                    .into(),
            );
        }
    }
    Ok(files)
}

/// What [`sync`] did.
#[derive(Debug, PartialEq, Eq)]
pub enum Synced {
    /// This server's files are now the cluster's (the first server).
    Published,
    /// The cluster's files were already here.
    Same,
    /// The cluster's files replaced these local ones (kept beside them).
    Adopted(Vec<String>),
}

/// Makes the shared files of `data_dir` the cluster's: `prepare` creates this server's own
/// (CA, keys) when the cluster has none yet, and they are published; otherwise the cluster's
/// are written here. A replaced CA also drops what it signed here (the serving certificate
/// and the admin kubeconfig, made again at start).
pub fn sync(
    data_dir: &Path,
    etcd: &kedge_store::etcd::Options,
    token: &str,
    prepare: impl FnOnce() -> anyhow::Result<()>,
) -> anyhow::Result<Synced> {
    let key = format!("/kedge-bootstrap{}", etcd.root);
    let mut failed = None;
    let made = kedge_store::etcd::get_or_put(etcd, &key, || {
        let sealed = prepare()
            .and_then(|()| collect(data_dir))
            .and_then(|files| seal(token, &files));
        sealed.map_err(|e| {
            let msg = format!("{e:#}");
            failed = Some(e);
            kedge_store::Error::Backend(msg)
        })
    });
    let (blob, ours) = match (made, failed) {
        (_, Some(e)) => return Err(e),
        (r, None) => r.map_err(|e| anyhow::anyhow!("bootstrap data in etcd: {e}"))?,
    };
    if ours {
        return Ok(Synced::Published);
    }
    let files = open(token, &blob)?;
    let secs = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map_or(0, |d| d.as_secs());
    let mut replaced = Vec::new();
    for (name, contents) in &files {
        if !FILES.contains(&name.as_str()) {
            continue;
        }
        let bytes = base64::engine::general_purpose::STANDARD
            .decode(contents.as_str().unwrap_or_default())
            .context("bootstrap data: a file that is not base64")?;
        let path = data_dir.join(name);
        match std::fs::read(&path) {
            Ok(have) if have == bytes => continue,
            // The encryption config is the operator's to edit (key rotation, on every
            // server in turn): seeded from the cluster's only where it is missing.
            Ok(_) if name == "cred/encryption-config.json" => {
                tracing::warn!(
                    path = %path.display(),
                    "this server's encryption config differs from the one the cluster's first server published; every server must hold the same keys"
                );
                continue;
            }
            Ok(_) => {
                let kept = PathBuf::from(format!("{}.replaced-{secs}", path.display()));
                std::fs::rename(&path, &kept)?;
                replaced.push(name.clone());
            }
            Err(_) => replaced.push(name.clone()),
        }
        let dir = path.parent().expect("a file in a dir");
        kedge_store::fsmode::private_dir(dir)?;
        let tmp = path.with_extension("bootstrap-tmp");
        let _ = std::fs::remove_file(&tmp);
        kedge_store::fsmode::private_file(&tmp)?;
        std::fs::write(&tmp, &bytes)?;
        std::fs::rename(&tmp, &path).with_context(|| format!("writing {}", path.display()))?;
    }
    if replaced.iter().any(|f| f == "pki/ca.crt") {
        for stale in ["pki/server.crt", "pki/server.key", "admin.kubeconfig"] {
            let _ = std::fs::remove_file(data_dir.join(stale));
        }
    }
    Ok(if replaced.is_empty() {
        Synced::Same
    } else {
        Synced::Adopted(replaced)
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn sealed_data_opens_with_its_token_only() {
        let mut files = serde_json::Map::new();
        files.insert("pki/ca.key".into(), "c2VjcmV0".into());
        let blob = seal("t0ken", &files).unwrap();
        assert!(!blob.windows(8).any(|w| w == b"c2VjcmV0"));
        assert_eq!(open("t0ken", &blob).unwrap(), files);
        let wrong = open("other", &blob).unwrap_err().to_string();
        assert!(wrong.contains("--token"), "{wrong}");
        let mut damaged = blob.clone();
        *damaged.last_mut().unwrap() ^= 1;
        assert!(open("t0ken", &damaged).is_err());
        assert!(open("t0ken", b"junk").is_err());
    }

    #[test]
    fn the_token_is_kept_or_made_once() {
        let dir = tempfile::tempdir().unwrap();
        let made = server_token(dir.path(), None).unwrap();
        assert_eq!(made.secret.len(), 48);
        assert_eq!(made.ca_hash, None);
        assert_eq!(server_token(dir.path(), None).unwrap(), made);
        let given = server_token(dir.path(), Some("given")).unwrap();
        assert_eq!(given.secret, "given");
        // Not kept until it has proved right.
        assert_eq!(server_token(dir.path(), None).unwrap(), made);
        save_token(dir.path(), &given).unwrap();
        assert_eq!(server_token(dir.path(), None).unwrap().secret, "given");
        // The full form, once the CA is known, is what the file then holds; it is the same
        // secret, so saving the plain one again leaves it.
        let hash = "ab".repeat(32);
        save_full_token(dir.path(), &given, &hash).unwrap();
        let full = std::fs::read_to_string(token_path(dir.path())).unwrap();
        assert_eq!(full.trim(), format!("K10{hash}::server:given"));
        save_token(dir.path(), &given).unwrap();
        let kept = server_token(dir.path(), None).unwrap();
        assert_eq!(kept.secret, "given");
        assert_eq!(kept.ca_hash.as_deref(), Some(hash.as_str()));
    }

    #[test]
    fn server_tokens_parse_in_both_forms() {
        let hash = "0f".repeat(32);
        let full = ServerToken::parse(&format!("K10{hash}::server:s3cret\n")).unwrap();
        assert_eq!(full.ca_hash.as_deref(), Some(hash.as_str()));
        assert_eq!(full.secret, "s3cret");
        assert_eq!(full.full(&hash), format!("K10{hash}::server:s3cret"));
        assert_eq!(ServerToken::parse("s3cret").unwrap().ca_hash, None);
        for bad in [
            "",
            "two words",
            &format!("K10{hash}::node:s3cret"),
            &format!("K10{hash}::server:"),
            "K10abc::server:s3cret",
        ] {
            assert!(ServerToken::parse(bad).is_err(), "{bad:?}");
        }
        // The secret never shows in logs.
        assert!(!format!("{full:?}").contains("s3cret"));
        // Secrets given whole before the full form existed stay what they were.
        assert_eq!(ServerToken::parse("a:b").unwrap().secret, "a:b");
        // A kept token that no longer parses is an error, never replaced.
        let dir = tempfile::tempdir().unwrap();
        std::fs::write(token_path(dir.path()), format!("K10{hash}::node:x")).unwrap();
        assert!(server_token(dir.path(), None).is_err());
        assert!(
            std::fs::read_to_string(token_path(dir.path()))
                .unwrap()
                .contains("::node:x")
        );
    }
}
