//! Encryption of objects at rest, configured as kube-apiserver's `--encryption-provider-config`
//! (an `EncryptionConfiguration`, `apiserver.config.k8s.io/v1`).
//!
//! Only what a backend persists is transformed: a backend seals an object's JSON right before
//! it writes the bytes (redb's objects table and watch log, etcd's values) and unseals them
//! right after reading them back. What lives in memory (the ring of recent events, informer
//! caches) stays plaintext, as in Kubernetes, where only the bytes in etcd are encrypted.
//!
//! A sealed value is kube's: `k8s:enc:<provider>:v1:<key name>:` then the ciphertext —
//! `aesgcm`: a random 12-byte nonce, then the AES-GCM output, authenticated together with the
//! object's store key (so a value copied under another key does not open); `aescbc`: a random
//! 16-byte IV, then AES-CBC with PKCS#7 padding (no integrity: a tampered value decrypts to
//! bytes that are then refused as corrupt JSON, as kube's docs warn); `secretbox`: a random
//! 24-byte nonce, then XSalsa20-Poly1305. A value without the `k8s:enc:` prefix is plaintext
//! (JSON always starts with `{`), so encryption can be turned on over an existing store.
//!
//! The first provider of a resource's list seals new writes; every provider of the list
//! (every key of each) can unseal. That is how keys are rotated (see the README): the server
//! starts with the new key first and the old one still listed, rewrites at start whatever is
//! not sealed as a write would seal it now (`Encryption::is_current`) — kube leaves that
//! rewrite to `kubectl replace`, which kedge's API would take as no-op writes — and the old
//! key can then go.

use std::borrow::Cow;
use std::path::Path;

use aes::{Aes128, Aes192, Aes256};
use aes_gcm::AesGcm;
use aes_gcm::aead::consts::U12;
use aes_gcm::aead::generic_array::GenericArray;
use aes_gcm::aead::{Aead, KeyInit, Payload};
use base64::Engine;
use cbc::cipher::block_padding::Pkcs7;
use cbc::cipher::{BlockDecryptMut, BlockEncryptMut, KeyIvInit};
use crypto_secretbox::XSalsa20Poly1305;
use serde::Deserialize;
use zeroize::Zeroizing;

use super::{Error, Result};

/// The prefix of every sealed value.
const SEALED: &[u8] = b"k8s:enc:";

/// An invalid encryption configuration, said in one line (every problem found, joined).
#[derive(Debug, thiserror::Error)]
#[error("{0}")]
pub struct ConfigError(String);

/// Which objects are sealed, and with what. The default seals nothing.
#[derive(Default)]
pub struct Encryption {
    /// In the file's order: the first rule matching a key decides.
    rules: Vec<Rule>,
}

impl std::fmt::Debug for Encryption {
    // Never the keys: names and providers only.
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(&self.describe())
    }
}

struct Rule {
    /// The resource as written in the file (`secrets`, `*.apps`, …), for messages.
    resource: String,
    /// The store-key prefix it covers: `core/secrets/`, `apps/`, or "" for `*.*`.
    prefix: String,
    /// The first seals (none: `identity`); all of them open.
    providers: Vec<Provider>,
}

enum Provider {
    Identity,
    Keyed(Kind, Vec<Key>),
}

#[derive(Clone, Copy, PartialEq, Eq, Debug)]
enum Kind {
    AesGcm,
    AesCbc,
    SecretBox,
}

impl Kind {
    fn name(self) -> &'static str {
        match self {
            Kind::AesGcm => "aesgcm",
            Kind::AesCbc => "aescbc",
            Kind::SecretBox => "secretbox",
        }
    }

    fn from_name(name: &str) -> Option<Kind> {
        [Kind::AesGcm, Kind::AesCbc, Kind::SecretBox]
            .into_iter()
            .find(|k| k.name() == name)
    }

    /// The key lengths kube-apiserver accepts for the provider.
    fn key_lengths(self) -> &'static [usize] {
        match self {
            Kind::AesGcm | Kind::AesCbc => &[16, 24, 32],
            Kind::SecretBox => &[32],
        }
    }
}

struct Key {
    name: String,
    secret: Zeroizing<Vec<u8>>,
}

// ---------------------------------------------------------------------------------------
// The file.

#[derive(Deserialize)]
#[serde(rename_all = "camelCase", deny_unknown_fields)]
struct FileConfig {
    api_version: String,
    kind: String,
    #[serde(default)]
    resources: Vec<ResourceConfig>,
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct ResourceConfig {
    resources: Vec<String>,
    providers: Vec<ProviderConfig>,
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct ProviderConfig {
    aesgcm: Option<KeysConfig>,
    aescbc: Option<KeysConfig>,
    secretbox: Option<KeysConfig>,
    identity: Option<serde_json::Value>,
    /// Recognised to be refused by name.
    kms: Option<serde_json::Value>,
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct KeysConfig {
    keys: Vec<KeyConfig>,
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct KeyConfig {
    name: String,
    secret: String,
}

impl Encryption {
    /// Reads an `EncryptionConfiguration` (YAML or JSON) from `path`.
    pub fn load(path: &Path) -> Result<Self, ConfigError> {
        let text = std::fs::read_to_string(path)
            .map_err(|e| ConfigError(format!("{}: {e}", path.display())))?;
        Self::parse(&text).map_err(|e| ConfigError(format!("{}: {e}", path.display())))
    }

    /// Parses an `EncryptionConfiguration` (YAML or JSON). Every problem is reported, in one
    /// line.
    pub fn parse(text: &str) -> Result<Self, ConfigError> {
        let file: FileConfig =
            serde_yaml_ng::from_str(text).map_err(|e| ConfigError(one_line(&e.to_string())))?;
        let mut errors = Vec::new();
        if file.api_version != "apiserver.config.k8s.io/v1" {
            errors.push(format!(
                "apiVersion {:?}: expected apiserver.config.k8s.io/v1",
                file.api_version
            ));
        }
        if file.kind != "EncryptionConfiguration" {
            errors.push(format!(
                "kind {:?}: expected EncryptionConfiguration",
                file.kind
            ));
        }
        let mut rules: Vec<Rule> = Vec::new();
        for (i, rc) in file.resources.iter().enumerate() {
            let at = format!("resources[{i}]");
            if rc.resources.is_empty() {
                errors.push(format!("{at}.resources: empty"));
            }
            if rc.providers.is_empty() {
                errors.push(format!("{at}.providers: empty"));
            }
            let mut providers = Vec::new();
            for (j, pc) in rc.providers.iter().enumerate() {
                match provider(pc, &format!("{at}.providers[{j}]")) {
                    Ok(p) => providers.push(p),
                    Err(e) => errors.extend(e),
                }
            }
            for (n, r) in rc.resources.iter().enumerate() {
                match resource_prefix(r) {
                    Ok(prefix) => {
                        if let Some(earlier) = rules.iter().find(|x| x.prefix == prefix) {
                            errors.push(format!(
                                "{at}.resources[{n}] {r:?}: already covered by {:?}",
                                earlier.resource
                            ));
                            continue;
                        }
                        rules.push(Rule {
                            resource: r.clone(),
                            prefix,
                            providers: providers.iter().map(Provider::clone_keys).collect(),
                        });
                    }
                    Err(e) => errors.push(format!("{at}.resources[{n}] {r:?}: {e}")),
                }
            }
        }
        if !errors.is_empty() {
            return Err(ConfigError(errors.join("; ")));
        }
        Ok(Encryption { rules })
    }

    /// A configuration that seals `secrets` with aescbc and a new random 32-byte key named
    /// `aescbckey` (what K3s' `--secrets-encryption` writes on first start), as JSON.
    pub fn generate_aescbc_config() -> Result<String, ConfigError> {
        let mut key = Zeroizing::new([0u8; 32]);
        getrandom::fill(&mut key[..]).map_err(|e| ConfigError(format!("random key: {e}")))?;
        let secret = base64::engine::general_purpose::STANDARD.encode(&key[..]);
        let config = serde_json::json!({
            "kind": "EncryptionConfiguration",
            "apiVersion": "apiserver.config.k8s.io/v1",
            "resources": [{
                "resources": ["secrets"],
                "providers": [
                    {"aescbc": {"keys": [{"name": "aescbckey", "secret": secret}]}},
                    {"identity": {}}
                ]
            }]
        });
        serde_json::to_string_pretty(&config).map_err(|e| ConfigError(e.to_string()))
    }

    /// Whether anything is sealed at all.
    pub fn is_empty(&self) -> bool {
        self.rules.is_empty()
    }

    /// What is sealed with what, for a log line (names only, never keys).
    pub fn describe(&self) -> String {
        if self.rules.is_empty() {
            return "no encryption".into();
        }
        let rules: Vec<String> = self
            .rules
            .iter()
            .map(|r| {
                let ps: Vec<String> = r
                    .providers
                    .iter()
                    .map(|p| match p {
                        Provider::Identity => "identity".to_string(),
                        Provider::Keyed(kind, keys) => {
                            let names: Vec<&str> = keys.iter().map(|k| k.name.as_str()).collect();
                            format!("{}[{}]", kind.name(), names.join(","))
                        }
                    })
                    .collect();
                format!("{}: {}", r.resource, ps.join(" "))
            })
            .collect();
        rules.join("; ")
    }

    fn rule(&self, key: &str) -> Option<&Rule> {
        self.rules.iter().find(|r| key.starts_with(&r.prefix))
    }

    /// The key prefixes to look through for values to re-encrypt (each key found under
    /// them is then checked with [`Encryption::is_current`]): one "" when a rule covers
    /// everything, else each rule's.
    pub(crate) fn prefixes(&self) -> Vec<String> {
        if self.rules.iter().any(|r| r.prefix.is_empty()) {
            return vec![String::new()];
        }
        let mut out: Vec<String> = self.rules.iter().map(|r| r.prefix.clone()).collect();
        out.sort();
        // `core/` covers `core/secrets/`: look once.
        out.dedup_by(|later, earlier| later.starts_with(earlier.as_str()));
        out
    }

    /// Whether `stored` (under `key`) is what a write would store now: sealed with the first
    /// provider's first key, or plaintext when that provider is `identity` or no rule covers
    /// `key`. Values that are not are rewritten at start ([`crate::redb::RedbStore::reencrypt`],
    /// [`crate::etcd::EtcdStore::reencrypt`]): that is how a new key or provider takes over.
    pub(crate) fn is_current(&self, key: &str, stored: &[u8]) -> bool {
        match self.rule(key).and_then(|r| r.providers.first()) {
            Some(Provider::Keyed(kind, keys)) => stored.starts_with(&header(*kind, &keys[0].name)),
            // Sealed values of resources no longer covered cannot be read: nothing to do.
            None if self.rule(key).is_none() => true,
            _ => !stored.starts_with(SEALED),
        }
    }

    /// The bytes to persist for `plain`, the JSON of the object under `key`.
    pub(crate) fn seal<'a>(&self, key: &str, plain: &'a [u8]) -> Result<Cow<'a, [u8]>> {
        let Some(Provider::Keyed(kind, keys)) = self.rule(key).and_then(|r| r.providers.first())
        else {
            return Ok(Cow::Borrowed(plain));
        };
        let k = &keys[0];
        let sealed = seal(*kind, k, key, plain).map_err(|why| {
            Error::Backend(format!("encrypting {key} with {}: {why}", kind.name()))
        })?;
        let mut out = header(*kind, &k.name);
        out.extend_from_slice(&sealed);
        Ok(Cow::Owned(out))
    }

    /// The object's JSON from the bytes persisted under `key`: plaintext as it is; sealed
    /// values opened with the key their prefix names, which must be configured for `key`'s
    /// resource. Failures say which key and why (500 at the API, as kube-apiserver).
    pub(crate) fn unseal<'a>(&self, key: &str, stored: &'a [u8]) -> Result<Cow<'a, [u8]>> {
        let Some(rest) = stored.strip_prefix(SEALED) else {
            return Ok(Cow::Borrowed(stored));
        };
        let fail = |why: String| Error::Backend(format!("cannot decrypt {key}: {why}"));
        // <provider>:v1:<key name>:<ciphertext>
        let mut parts = rest.splitn(4, |b| *b == b':');
        let (Some(provider), Some(version), Some(name), Some(ciphertext)) =
            (parts.next(), parts.next(), parts.next(), parts.next())
        else {
            return Err(fail("malformed k8s:enc: prefix".into()));
        };
        let provider = String::from_utf8_lossy(provider);
        let name = String::from_utf8_lossy(name);
        let Some(kind) = Kind::from_name(&provider).filter(|_| version == b"v1") else {
            return Err(fail(format!(
                "sealed by an unsupported provider {provider:?} ({})",
                String::from_utf8_lossy(version)
            )));
        };
        let found = self.rule(key).and_then(|r| {
            r.providers.iter().find_map(|p| match p {
                Provider::Keyed(k, keys) if *k == kind => keys.iter().find(|x| x.name == name),
                _ => None,
            })
        });
        let Some(k) = found else {
            return Err(fail(format!(
                "it is encrypted with {} key {name:?}, which is not in the encryption configuration for this resource (add that key back to read it)",
                kind.name()
            )));
        };
        open(kind, k, key, ciphertext)
            .map(Cow::Owned)
            .map_err(|why| {
                fail(format!(
                    "{} key {name:?}: {why} (wrong key or tampered data)",
                    kind.name()
                ))
            })
    }
}

impl Provider {
    fn clone_keys(&self) -> Provider {
        match self {
            Provider::Identity => Provider::Identity,
            Provider::Keyed(kind, keys) => Provider::Keyed(
                *kind,
                keys.iter()
                    .map(|k| Key {
                        name: k.name.clone(),
                        secret: k.secret.clone(),
                    })
                    .collect(),
            ),
        }
    }
}

fn one_line(s: &str) -> String {
    s.split_whitespace().collect::<Vec<_>>().join(" ")
}

/// One provider entry, or every problem with it.
fn provider(pc: &ProviderConfig, at: &str) -> std::result::Result<Provider, Vec<String>> {
    let mut set = Vec::new();
    if let Some(k) = &pc.aesgcm {
        set.push((Some(Kind::AesGcm), Some(k)));
    }
    if let Some(k) = &pc.aescbc {
        set.push((Some(Kind::AesCbc), Some(k)));
    }
    if let Some(k) = &pc.secretbox {
        set.push((Some(Kind::SecretBox), Some(k)));
    }
    if pc.identity.is_some() {
        set.push((None, None));
    }
    if pc.kms.is_some() {
        return Err(vec![format!(
            "{at}: kms is not supported by kedge (aesgcm, aescbc, secretbox, identity are)"
        )]);
    }
    let (kind, keys) = match set.as_slice() {
        [one] => *one,
        [] => {
            return Err(vec![format!(
                "{at}: no provider (aesgcm, aescbc, secretbox or identity)"
            )]);
        }
        _ => return Err(vec![format!("{at}: one provider per entry")]),
    };
    let (Some(kind), Some(keys)) = (kind, keys) else {
        return Ok(Provider::Identity);
    };
    let mut errors = Vec::new();
    if keys.keys.is_empty() {
        errors.push(format!("{at}.{}.keys: empty", kind.name()));
    }
    let mut out: Vec<Key> = Vec::new();
    let mut names: Vec<&str> = Vec::new();
    for (i, k) in keys.keys.iter().enumerate() {
        let here = format!("{at}.{}.keys[{i}]", kind.name());
        if k.name.is_empty() || k.name.contains(':') {
            errors.push(format!(
                "{here}: name {:?} must be non-empty, without ':'",
                k.name
            ));
        }
        if names.contains(&k.name.as_str()) {
            errors.push(format!("{here}: duplicate key name {:?}", k.name));
        }
        names.push(&k.name);
        let secret = match base64::engine::general_purpose::STANDARD.decode(k.secret.trim()) {
            Ok(s) => Zeroizing::new(s),
            Err(_) => {
                errors.push(format!("{here} ({:?}): secret is not base64", k.name));
                continue;
            }
        };
        if !kind.key_lengths().contains(&secret.len()) {
            let want: Vec<String> = kind.key_lengths().iter().map(|n| n.to_string()).collect();
            errors.push(format!(
                "{here} ({:?}): secret is {} bytes, {} needs {} bytes",
                k.name,
                secret.len(),
                kind.name(),
                want.join(", ")
            ));
            continue;
        }
        out.push(Key {
            name: k.name.clone(),
            secret,
        });
    }
    if errors.is_empty() {
        Ok(Provider::Keyed(kind, out))
    } else {
        Err(errors)
    }
}

/// The store-key prefix of a resource as the file names it: `secrets` (core group),
/// `deployments.apps`, `*.apps` (a whole group), `*.` (the core group), `*.*` (everything).
fn resource_prefix(r: &str) -> std::result::Result<String, String> {
    let r = r.trim().to_ascii_lowercase();
    if r == "*.*" {
        return Ok(String::new());
    }
    let (plural, group) = match r.split_once('.') {
        Some((p, g)) => (p, g),
        None => (r.as_str(), ""),
    };
    let group = if group.is_empty() { "core" } else { group };
    if plural.is_empty() || group.contains('*') || group.contains('/') || plural.contains('/') {
        return Err("expected <resource>, <resource>.<group>, *.<group>, *. or *.*".into());
    }
    if plural == "*" {
        return Ok(format!("{group}/"));
    }
    if plural.contains('*') {
        return Err("a wildcard is a whole resource name (*.<group>)".into());
    }
    Ok(format!("{group}/{plural}/"))
}

fn header(kind: Kind, name: &str) -> Vec<u8> {
    format!("k8s:enc:{}:v1:{name}:", kind.name()).into_bytes()
}

fn random<const N: usize>() -> std::result::Result<[u8; N], String> {
    let mut b = [0u8; N];
    getrandom::fill(&mut b).map_err(|e| format!("no randomness: {e}"))?;
    Ok(b)
}

/// AES-GCM with AES of the key's size (kube accepts 16, 24 and 32 bytes).
macro_rules! gcm {
    ($secret:expr, |$c:ident| $body:expr) => {
        match $secret.len() {
            16 => {
                let $c =
                    AesGcm::<Aes128, U12>::new_from_slice($secret).map_err(|e| e.to_string())?;
                $body
            }
            24 => {
                let $c =
                    AesGcm::<Aes192, U12>::new_from_slice($secret).map_err(|e| e.to_string())?;
                $body
            }
            _ => {
                let $c =
                    AesGcm::<Aes256, U12>::new_from_slice($secret).map_err(|e| e.to_string())?;
                $body
            }
        }
    };
}

/// AES-CBC (`$mode`: `Encryptor` or `Decryptor`) with AES of the key's size.
macro_rules! cbc {
    ($mode:ident, $secret:expr, $iv:expr, |$c:ident| $body:expr) => {
        match $secret.len() {
            16 => {
                let $c = cbc::$mode::<Aes128>::new_from_slices($secret, $iv)
                    .map_err(|e| e.to_string())?;
                $body
            }
            24 => {
                let $c = cbc::$mode::<Aes192>::new_from_slices($secret, $iv)
                    .map_err(|e| e.to_string())?;
                $body
            }
            _ => {
                let $c = cbc::$mode::<Aes256>::new_from_slices($secret, $iv)
                    .map_err(|e| e.to_string())?;
                $body
            }
        }
    };
}

/// Nonce (or IV) then ciphertext, as kube lays them out.
fn joined(nonce: &[u8], sealed: &[u8]) -> Vec<u8> {
    let mut out = Vec::with_capacity(nonce.len() + sealed.len());
    out.extend_from_slice(nonce);
    out.extend_from_slice(sealed);
    out
}

fn seal(kind: Kind, k: &Key, key: &str, plain: &[u8]) -> std::result::Result<Vec<u8>, String> {
    let s = &k.secret[..];
    match kind {
        Kind::AesGcm => {
            let nonce: [u8; 12] = random()?;
            let payload = Payload {
                msg: plain,
                aad: key.as_bytes(),
            };
            let sealed = gcm!(s, |c| c.encrypt(GenericArray::from_slice(&nonce), payload))
                .map_err(|_| "sealing failed".to_string())?;
            Ok(joined(&nonce, &sealed))
        }
        Kind::AesCbc => {
            let iv: [u8; 16] = random()?;
            let sealed = cbc!(Encryptor, s, &iv, |c| c
                .encrypt_padded_vec_mut::<Pkcs7>(plain));
            Ok(joined(&iv, &sealed))
        }
        Kind::SecretBox => {
            let cipher = XSalsa20Poly1305::new_from_slice(s).map_err(|e| e.to_string())?;
            let nonce: [u8; 24] = random()?;
            let sealed = cipher
                .encrypt(GenericArray::from_slice(&nonce), plain)
                .map_err(|_| "sealing failed".to_string())?;
            Ok(joined(&nonce, &sealed))
        }
    }
}

fn open(kind: Kind, k: &Key, key: &str, data: &[u8]) -> std::result::Result<Vec<u8>, String> {
    let s = &k.secret[..];
    match kind {
        Kind::AesGcm => {
            if data.len() < 12 + 16 {
                return Err("ciphertext too short".into());
            }
            let (nonce, sealed) = data.split_at(12);
            let payload = Payload {
                msg: sealed,
                aad: key.as_bytes(),
            };
            gcm!(s, |c| c.decrypt(GenericArray::from_slice(nonce), payload))
                .map_err(|_| "authentication failed".to_string())
        }
        Kind::AesCbc => {
            if data.len() < 32 || !data.len().is_multiple_of(16) {
                return Err("ciphertext is not a whole number of blocks".into());
            }
            let (iv, sealed) = data.split_at(16);
            cbc!(Decryptor, s, iv, |c| c
                .decrypt_padded_vec_mut::<Pkcs7>(sealed))
            .map_err(|_| "invalid padding".to_string())
        }
        Kind::SecretBox => {
            if data.len() < 24 + 16 {
                return Err("ciphertext too short".into());
            }
            let cipher = XSalsa20Poly1305::new_from_slice(s).map_err(|e| e.to_string())?;
            let (nonce, sealed) = data.split_at(24);
            cipher
                .decrypt(GenericArray::from_slice(nonce), sealed)
                .map_err(|_| "authentication failed".to_string())
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    const K16: &str = "c2VjcmV0IGlzIHNlY3VyZQ=="; // 16 bytes
    const K32: &str = "YWJjZGVmZ2hpamtsbW5vcHFyc3R1dnd4eXoxMjM0NTY="; // 32 bytes
    const K32B: &str = "MDEyMzQ1Njc4OWFiY2RlZjAxMjM0NTY3ODlhYmNkZWY="; // 32 bytes
    const K24: &str = "MDEyMzQ1Njc4OWFiY2RlZjAxMjM0NTY3"; // 24 bytes

    fn config(providers: &str) -> String {
        format!(
            "apiVersion: apiserver.config.k8s.io/v1\nkind: EncryptionConfiguration\nresources:\n- resources: [secrets]\n  providers:\n{providers}"
        )
    }

    fn one(kind: &str, name: &str, secret: &str) -> Encryption {
        Encryption::parse(&config(&format!(
            "  - {kind}:\n      keys:\n      - name: {name}\n        secret: {secret}\n"
        )))
        .unwrap()
    }

    const KEY: &str = "core/secrets/default/s";
    const PLAIN: &[u8] = br#"{"kind":"Secret","data":{"password":"aHVudGVyMg=="}}"#;

    #[test]
    fn every_provider_round_trips_with_kubes_prefix_and_fresh_nonces() {
        for (kind, secret) in [
            ("aesgcm", K16),
            ("aesgcm", K24),
            ("aesgcm", K32),
            ("aescbc", K16),
            ("aescbc", K24),
            ("aescbc", K32),
            ("secretbox", K32),
        ] {
            let e = one(kind, "key1", secret);
            let sealed = e.seal(KEY, PLAIN).unwrap().into_owned();
            let prefix = format!("k8s:enc:{kind}:v1:key1:");
            assert!(sealed.starts_with(prefix.as_bytes()), "{kind}");
            let body = &sealed[prefix.len()..];
            let nonce = match kind {
                "aesgcm" => 12,
                "aescbc" => 16,
                _ => 24,
            };
            match kind {
                // IV + whole blocks of PKCS#7-padded plaintext.
                "aescbc" => assert_eq!(body.len(), nonce + (PLAIN.len() / 16 + 1) * 16),
                // Nonce + ciphertext + 16-byte tag.
                _ => assert_eq!(body.len(), nonce + PLAIN.len() + 16, "{kind}"),
            }
            assert!(
                !sealed.windows(8).any(|w| w == b"password"),
                "{kind}: plaintext visible"
            );
            assert_eq!(e.unseal(KEY, &sealed).unwrap().as_ref(), PLAIN, "{kind}");
            // A random nonce per write: the same object seals differently each time.
            let again = e.seal(KEY, PLAIN).unwrap().into_owned();
            assert_ne!(sealed, again, "{kind}");
        }
    }

    #[test]
    fn a_key_not_configured_is_named_in_the_error() {
        let old = one("aescbc", "old", K32);
        let sealed = old.seal(KEY, PLAIN).unwrap().into_owned();
        let new = one("aescbc", "new", K32B);
        let err = new.unseal(KEY, &sealed).unwrap_err().to_string();
        assert!(err.contains("aescbc key \"old\""), "{err}");
        assert!(err.contains(KEY), "{err}");
        // The same name with a different secret is a wrong key, said as such (GCM and
        // secretbox authenticate; CBC fails its padding or yields bytes the store refuses).
        for kind in ["aesgcm", "secretbox"] {
            let a = one(kind, "k", K32);
            let b = one(kind, "k", K32B);
            let sealed = a.seal(KEY, PLAIN).unwrap().into_owned();
            let err = b.unseal(KEY, &sealed).unwrap_err().to_string();
            assert!(
                err.contains(&format!("{kind} key \"k\"")) && err.contains("wrong key"),
                "{err}"
            );
        }
        // Without any rule for the resource, a sealed value is still refused, not returned.
        let none = Encryption::default();
        assert!(none.unseal(KEY, &sealed).is_err());
    }

    #[test]
    fn tampered_ciphertext_is_refused() {
        for kind in ["aesgcm", "secretbox"] {
            let e = one(kind, "k", K32);
            let sealed = e.seal(KEY, PLAIN).unwrap().into_owned();
            for at in [sealed.len() - 1, sealed.len() - 20, 25] {
                let mut bad = sealed.clone();
                bad[at] ^= 1;
                assert!(e.unseal(KEY, &bad).is_err(), "{kind} byte {at}");
            }
            assert!(e.unseal(KEY, &sealed[..sealed.len() - 1]).is_err());
        }
        // aesgcm binds the value to its key: moved under another name it does not open.
        let e = one("aesgcm", "k", K32);
        let sealed = e.seal(KEY, PLAIN).unwrap().into_owned();
        assert!(e.unseal("core/secrets/default/other", &sealed).is_err());
        // aescbc has no integrity (as in kube); a truncated value is refused.
        let e = one("aescbc", "k", K32);
        let sealed = e.seal(KEY, PLAIN).unwrap().into_owned();
        assert!(e.unseal(KEY, &sealed[..sealed.len() - 1]).is_err());
        assert!(e.unseal(KEY, b"k8s:enc:aescbc:v1:k:").is_err());
        assert!(e.unseal(KEY, b"k8s:enc:garbage").is_err());
    }

    #[test]
    fn plaintext_is_read_as_it_is_and_other_resources_stay_plain() {
        let e = one("aescbc", "k", K32);
        assert_eq!(e.unseal(KEY, PLAIN).unwrap().as_ref(), PLAIN);
        let cm = "core/configmaps/default/c";
        assert_eq!(e.seal(cm, PLAIN).unwrap().as_ref(), PLAIN);
        // Identity first: writes stay plaintext, sealed values still open.
        let rotated = Encryption::parse(&config(&format!(
            "  - identity: {{}}\n  - aescbc:\n      keys:\n      - name: k\n        secret: {K32}\n"
        )))
        .unwrap();
        assert_eq!(rotated.seal(KEY, PLAIN).unwrap().as_ref(), PLAIN);
        let sealed = e.seal(KEY, PLAIN).unwrap().into_owned();
        assert_eq!(rotated.unseal(KEY, &sealed).unwrap().as_ref(), PLAIN);
    }

    #[test]
    fn rotation_new_key_first_old_key_still_opens() {
        let old = one("aescbc", "key1", K32);
        let sealed_old = old.seal(KEY, PLAIN).unwrap().into_owned();
        let both = Encryption::parse(&config(&format!(
            "  - aescbc:\n      keys:\n      - name: key2\n        secret: {K32B}\n      - name: key1\n        secret: {K32}\n"
        )))
        .unwrap();
        assert_eq!(both.unseal(KEY, &sealed_old).unwrap().as_ref(), PLAIN);
        let sealed_new = both.seal(KEY, PLAIN).unwrap().into_owned();
        assert!(sealed_new.starts_with(b"k8s:enc:aescbc:v1:key2:"));
        let only_new = one("aescbc", "key2", K32B);
        assert_eq!(only_new.unseal(KEY, &sealed_new).unwrap().as_ref(), PLAIN);
        assert!(only_new.unseal(KEY, &sealed_old).is_err());
    }

    #[test]
    fn bad_configurations_are_refused_in_one_line() {
        let err = |text: &str| Encryption::parse(text).expect_err(text).to_string();
        let e = err(&config(
            "  - aescbc:\n      keys:\n      - name: k\n        secret: c2hvcnQ=\n",
        ));
        assert!(
            e.contains("secret is 5 bytes, aescbc needs 16, 24, 32 bytes"),
            "{e}"
        );
        assert!(!e.contains('\n'));
        let e = err(&config(&format!(
            "  - secretbox:\n      keys:\n      - name: k\n        secret: {K16}\n"
        )));
        assert!(e.contains("secretbox needs 32 bytes"), "{e}");
        let e = err(&config("  - kms:\n      name: x\n"));
        assert!(e.contains("kms is not supported"), "{e}");
        let e = err(&config(
            "  - aescbc:\n      keys:\n      - name: k\n        secret: '!!'\n",
        ));
        assert!(e.contains("not base64"), "{e}");
        let e = err(&config("  - identity: {}\n    aescbc: {keys: []}\n"));
        assert!(e.contains("one provider per entry"), "{e}");
        let e = err(&config("  - identity: {}\n  - rot13: {}\n"));
        assert!(e.contains("rot13"), "{e}");
        let e = err("apiVersion: v1\nkind: EncryptionConfig\nresources: []\n");
        assert!(e.contains("apiVersion") && e.contains("kind"), "{e}");
        // Two problems: both said.
        let e = err(&config(&format!(
            "  - aescbc:\n      keys:\n      - name: a\n        secret: c2hvcnQ=\n      - name: a\n        secret: {K32}\n"
        )));
        assert!(e.contains("5 bytes") && e.contains("duplicate"), "{e}");
    }

    #[test]
    fn resources_map_to_store_prefixes() {
        assert_eq!(resource_prefix("secrets").unwrap(), "core/secrets/");
        assert_eq!(
            resource_prefix("deployments.apps").unwrap(),
            "apps/deployments/"
        );
        assert_eq!(
            resource_prefix("pandas.awesome.bears.example").unwrap(),
            "awesome.bears.example/pandas/"
        );
        assert_eq!(resource_prefix("*.apps").unwrap(), "apps/");
        assert_eq!(resource_prefix("*.").unwrap(), "core/");
        assert_eq!(resource_prefix("*.*").unwrap(), "");
        assert!(resource_prefix("sec*").is_err());
        // JSON (K3s writes JSON) parses as well as YAML, and the generated file is valid.
        let generated = Encryption::generate_aescbc_config().unwrap();
        let e = Encryption::parse(&generated).unwrap();
        let sealed = e.seal(KEY, PLAIN).unwrap().into_owned();
        assert!(sealed.starts_with(b"k8s:enc:aescbc:v1:aescbckey:"));
        assert_eq!(format!("{e:?}"), "secrets: aescbc[aescbckey] identity");
    }
}
