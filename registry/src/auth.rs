//! Registry credentials: pods' `imagePullSecrets` (`kubernetes.io/dockerconfigjson` and the
//! legacy `kubernetes.io/dockercfg`), the CLI's `~/.docker/config.json`, and the matching rules
//! kubelet uses to decide which credentials apply to an image.
//!
//! Matching follows kubelet's `credentialprovider` keyring: a key is `host[:port][/path]`, with
//! an optional `http(s)://` prefix; the host must match the image's registry (a `*` label
//! matches one label), the port must be equal, and the key's path must be a prefix of the
//! image's repository (whole components). More specific keys come first, so a secret for
//! `registry.example/team` is tried before one for `registry.example`.

use std::collections::BTreeMap;
use std::fmt;
use std::path::Path;

use base64::Engine as _;
use serde::Deserialize;
use tracing::debug;

use crate::reference::{DEFAULT_REGISTRY, Reference};

/// How to authenticate to a registry. `Debug` redacts the password so credentials never reach
/// logs.
#[derive(Clone, PartialEq, Eq)]
pub enum Credential {
    Anonymous,
    Basic { username: String, password: String },
}

impl fmt::Debug for Credential {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            Self::Anonymous => f.write_str("Anonymous"),
            Self::Basic { username, .. } => f
                .debug_struct("Basic")
                .field("username", username)
                .field("password", &"<redacted>")
                .finish(),
        }
    }
}

impl Credential {
    pub fn basic(username: impl Into<String>, password: impl Into<String>) -> Self {
        Self::Basic {
            username: username.into(),
            password: password.into(),
        }
    }

    pub(crate) fn to_oci(&self) -> oci_client::secrets::RegistryAuth {
        match self {
            Self::Anonymous => oci_client::secrets::RegistryAuth::Anonymous,
            Self::Basic { username, password } => {
                oci_client::secrets::RegistryAuth::Basic(username.clone(), password.clone())
            }
        }
    }
}

/// A secret or docker config that cannot be used. The message names the entry, never the
/// secret's content.
#[derive(Debug, thiserror::Error)]
pub enum AuthError {
    #[error("{what} is not valid json")]
    Json {
        what: &'static str,
        #[source]
        source: serde_json::Error,
    },
    #[error("{what}: entry {key:?}: {reason}")]
    Entry {
        what: &'static str,
        key: String,
        reason: String,
    },
    #[error("cannot read docker config {path}")]
    Io {
        path: String,
        #[source]
        source: std::io::Error,
    },
}

/// One `auths` entry as Docker writes it.
#[derive(Debug, Default, Deserialize)]
struct AuthEntry {
    #[serde(default)]
    auth: Option<String>,
    #[serde(default)]
    username: Option<String>,
    #[serde(default)]
    password: Option<String>,
}

#[derive(Debug, Deserialize)]
struct DockerConfigJson {
    #[serde(default)]
    auths: BTreeMap<String, AuthEntry>,
}

/// A parsed `host[:port][/path]` key.
#[derive(Clone, Debug, PartialEq, Eq)]
struct Pattern {
    host: String,
    port: Option<String>,
    path: Vec<String>,
    /// The key as written, for logs.
    raw: String,
}

impl Pattern {
    fn parse(raw: &str) -> Option<Self> {
        let mut key = raw.trim();
        for scheme in ["https://", "http://"] {
            if let Some(rest) = key.strip_prefix(scheme) {
                key = rest;
            }
        }
        let key = key.trim_end_matches('/');
        let (hostport, path) = match key.split_once('/') {
            Some((h, p)) => (h, p),
            None => (key, ""),
        };
        if hostport.is_empty() {
            return None;
        }
        let (host, port) = match hostport.rsplit_once(':') {
            Some((h, p)) if !h.ends_with(']') || hostport.starts_with('[') => {
                (h.to_ascii_lowercase(), Some(p.to_owned()))
            }
            _ => (hostport.to_ascii_lowercase(), None),
        };
        let mut path: Vec<String> = path
            .split('/')
            .filter(|c| !c.is_empty())
            .map(str::to_owned)
            .collect();
        let host = match host.as_str() {
            // Docker Hub's many names, including the legacy `index.docker.io/v1/` key that
            // `docker login` still writes: its `v1` is an API version, not a repository.
            "index.docker.io" | "registry-1.docker.io" | "docker.io" => {
                if path.first().is_some_and(|p| p == "v1" || p == "v2") {
                    path.remove(0);
                }
                DEFAULT_REGISTRY.to_owned()
            }
            _ => host,
        };
        Some(Self {
            host,
            port,
            path,
            raw: raw.to_owned(),
        })
    }

    fn matches(&self, reference: &Reference) -> bool {
        let registry = reference.registry().to_ascii_lowercase();
        let (host, port) = match registry.rsplit_once(':') {
            Some((h, p)) if !registry.ends_with(']') => (h, Some(p)),
            _ => (registry.as_str(), None),
        };
        if self.port.as_deref() != port {
            return false;
        }
        let key_labels: Vec<&str> = self.host.split('.').collect();
        let host_labels: Vec<&str> = host.split('.').collect();
        if key_labels.len() != host_labels.len()
            || !key_labels
                .iter()
                .zip(&host_labels)
                .all(|(k, h)| *k == "*" || k == h)
        {
            return false;
        }
        let repo: Vec<&str> = reference.repository().split('/').collect();
        self.path.len() <= repo.len() && self.path.iter().zip(&repo).all(|(k, r)| k == r)
    }

    /// Higher is more specific: exact labels beat wildcards, longer paths beat shorter ones.
    fn specificity(&self) -> (usize, usize, usize) {
        let exact_labels = self.host.split('.').filter(|l| *l != "*").count();
        (self.path.len(), exact_labels, self.raw.len())
    }
}

/// Credentials for many registries, e.g. all `imagePullSecrets` of one pod merged.
#[derive(Clone, Debug, Default)]
pub struct Keyring {
    entries: Vec<(Pattern, Credential)>,
}

impl Keyring {
    pub fn new() -> Self {
        Self::default()
    }

    /// Parses a `kubernetes.io/dockerconfigjson` secret's `.dockerconfigjson` value.
    pub fn from_dockerconfigjson(bytes: &[u8]) -> Result<Self, AuthError> {
        const WHAT: &str = "dockerconfigjson secret";
        let config: DockerConfigJson = serde_json::from_slice(bytes)
            .map_err(|source| AuthError::Json { what: WHAT, source })?;
        Self::from_entries(WHAT, config.auths)
    }

    /// Parses a legacy `kubernetes.io/dockercfg` secret's `.dockercfg` value: the `auths` map
    /// without the wrapper.
    pub fn from_dockercfg(bytes: &[u8]) -> Result<Self, AuthError> {
        const WHAT: &str = "dockercfg secret";
        let entries: BTreeMap<String, AuthEntry> = serde_json::from_slice(bytes)
            .map_err(|source| AuthError::Json { what: WHAT, source })?;
        Self::from_entries(WHAT, entries)
    }

    /// Reads a Docker CLI config (`~/.docker/config.json`), as `kedge push` does. Credential
    /// helpers (`credsStore`) are not run; only inline `auths` are used.
    pub fn from_docker_config_file(path: impl AsRef<Path>) -> Result<Self, AuthError> {
        let path = path.as_ref();
        match std::fs::read(path) {
            Ok(bytes) => Self::from_dockerconfigjson(&bytes),
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => Ok(Self::default()),
            Err(source) => Err(AuthError::Io {
                path: path.display().to_string(),
                source,
            }),
        }
    }

    fn from_entries(
        what: &'static str,
        entries: BTreeMap<String, AuthEntry>,
    ) -> Result<Self, AuthError> {
        let mut keyring = Self::default();
        for (key, entry) in entries {
            let bad = |reason: &str| AuthError::Entry {
                what,
                key: key.clone(),
                reason: reason.to_owned(),
            };
            let pattern = Pattern::parse(&key).ok_or_else(|| bad("empty registry"))?;
            let credential = match (entry.auth.as_deref(), entry.username, entry.password) {
                (Some(auth), _, _) if !auth.is_empty() => {
                    let decoded = base64::engine::general_purpose::STANDARD
                        .decode(auth.trim())
                        .map_err(|_| bad("auth is not base64"))?;
                    let decoded =
                        String::from_utf8(decoded).map_err(|_| bad("auth is not utf-8"))?;
                    let (user, pass) = decoded
                        .split_once(':')
                        .ok_or_else(|| bad("auth is not base64(username:password)"))?;
                    Credential::basic(user, pass)
                }
                (_, Some(user), pass) if !user.is_empty() => {
                    Credential::basic(user, pass.unwrap_or_default())
                }
                _ => {
                    // Docker writes empty entries for registries whose credentials live in a
                    // helper; they carry nothing to use.
                    debug!(registry = %key, "credential entry without auth ignored");
                    continue;
                }
            };
            keyring.entries.push((pattern, credential));
        }
        keyring.sort();
        Ok(keyring)
    }

    /// Adds a credential for `key` (`host[:port][/path]`), e.g. from the node's
    /// `registries.yaml`.
    pub fn insert(&mut self, key: &str, credential: Credential) {
        if let Some(pattern) = Pattern::parse(key) {
            self.entries.push((pattern, credential));
            self.sort();
        }
    }

    /// Merges another keyring (a pod's next pull secret).
    pub fn extend(&mut self, other: Keyring) {
        self.entries.extend(other.entries);
        self.sort();
    }

    pub fn is_empty(&self) -> bool {
        self.entries.is_empty()
    }

    /// The credentials to try for `reference`, most specific first, without duplicates.
    /// Anonymous access is not included: the puller tries it last on its own.
    pub fn lookup(&self, reference: &Reference) -> Vec<Credential> {
        let mut out: Vec<Credential> = Vec::new();
        for (pattern, credential) in &self.entries {
            if pattern.matches(reference) && !out.contains(credential) {
                out.push(credential.clone());
            }
        }
        out
    }

    fn sort(&mut self) {
        // Stable: among equally specific keys, secrets keep their order (kubelet tries a pod's
        // secrets in the order listed).
        self.entries
            .sort_by_key(|(p, _)| std::cmp::Reverse(p.specificity()));
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn r(s: &str) -> Reference {
        Reference::parse(s).unwrap()
    }

    fn b64(s: &str) -> String {
        base64::engine::general_purpose::STANDARD.encode(s)
    }

    fn users(creds: &[Credential]) -> Vec<&str> {
        creds
            .iter()
            .map(|c| match c {
                Credential::Basic { username, .. } => username.as_str(),
                Credential::Anonymous => "<anon>",
            })
            .collect()
    }

    #[test]
    fn dockerconfigjson_matching_follows_kubelet() {
        let json = format!(
            r#"{{"auths": {{
                "https://index.docker.io/v1/": {{"auth": "{}"}},
                "registry.example:5000": {{"username": "port", "password": "p"}},
                "registry.example": {{"auth": "{}"}},
                "http://registry.example/team/": {{"auth": "{}"}},
                "*.wild.example": {{"auth": "{}"}},
                "helper.example": {{}}
            }}}}"#,
            b64("hub:hubpass"),
            b64("root:r"),
            b64("team:t"),
            b64("wild:w"),
        );
        let keyring = Keyring::from_dockerconfigjson(json.as_bytes()).unwrap();

        assert_eq!(users(&keyring.lookup(&r("busybox"))), ["hub"]);
        assert_eq!(
            keyring.lookup(&r("index.docker.io/library/busybox:1")),
            [Credential::basic("hub", "hubpass")]
        );
        // Longer path prefix first, then the registry-wide one.
        assert_eq!(
            users(&keyring.lookup(&r("registry.example/team/app:v1"))),
            ["team", "root"]
        );
        // Path prefixes match whole components only.
        assert_eq!(
            users(&keyring.lookup(&r("registry.example/teamx/app"))),
            ["root"]
        );
        // Ports must be equal.
        assert_eq!(
            users(&keyring.lookup(&r("registry.example:5000/app"))),
            ["port"]
        );
        assert!(keyring.lookup(&r("registry.example:6000/app")).is_empty());
        // Wildcards match one label.
        assert_eq!(users(&keyring.lookup(&r("a.wild.example/x"))), ["wild"]);
        assert!(keyring.lookup(&r("a.b.wild.example/x")).is_empty());
        assert!(keyring.lookup(&r("other.example/app")).is_empty());
        assert!(keyring.lookup(&r("helper.example/app")).is_empty());
    }

    #[test]
    fn legacy_dockercfg_and_extend() {
        let cfg = format!(
            r#"{{"registry.example": {{"auth": "{}", "email": "a@b"}}}}"#,
            b64("legacy:pw")
        );
        let mut keyring = Keyring::from_dockercfg(cfg.as_bytes()).unwrap();
        let json = format!(
            r#"{{"auths": {{"registry.example/team": {{"auth": "{}"}}}}}}"#,
            b64("new:pw")
        );
        keyring.extend(Keyring::from_dockerconfigjson(json.as_bytes()).unwrap());
        assert_eq!(
            users(&keyring.lookup(&r("registry.example/team/app"))),
            ["new", "legacy"]
        );
        // A password containing ':' survives (split on the first one only).
        let json = format!(
            r#"{{"auths": {{"r.example": {{"auth": "{}"}}}}}}"#,
            b64("u:p:w")
        );
        let keyring = Keyring::from_dockerconfigjson(json.as_bytes()).unwrap();
        assert_eq!(
            keyring.lookup(&r("r.example/a")),
            [Credential::basic("u", "p:w")]
        );
    }

    #[test]
    fn malformed_secrets_are_errors_not_panics() {
        for (bytes, expect) in [
            (&b"{not json"[..], "not valid json"),
            (br#"{"auths": []}"#, "not valid json"),
            (
                br#"{"auths": {"r.example": {"auth": "%%%"}}}"#,
                "not base64",
            ),
            (
                format!(
                    r#"{{"auths": {{"r.example": {{"auth": "{}"}}}}}}"#,
                    b64("nocolon")
                )
                .as_bytes(),
                "username:password",
            ),
            (br#"{"auths": {"": {"username": "u"}}}"#, "empty registry"),
        ] {
            let err = Keyring::from_dockerconfigjson(bytes).unwrap_err();
            let text = format!("{err}: {:?}", std::error::Error::source(&err));
            assert!(text.contains(expect), "{text}");
            assert!(!text.contains("nocolon"), "secret leaked: {text}");
        }
        assert!(Keyring::from_dockercfg(b"[1,2]").is_err());
    }

    #[test]
    fn debug_redacts_passwords() {
        let text = format!("{:?}", Credential::basic("u", "hunter2"));
        assert!(!text.contains("hunter2"), "{text}");
    }

    #[test]
    fn docker_config_file_missing_is_empty() {
        let dir = tempfile::tempdir().unwrap();
        let keyring = Keyring::from_docker_config_file(dir.path().join("nope.json")).unwrap();
        assert!(keyring.is_empty());
        let path = dir.path().join("config.json");
        std::fs::write(
            &path,
            format!(
                r#"{{"auths": {{"localhost:5000": {{"auth": "{}"}}}}, "credsStore": "x"}}"#,
                b64("u:p")
            ),
        )
        .unwrap();
        let keyring = Keyring::from_docker_config_file(&path).unwrap();
        assert_eq!(
            keyring.lookup(&r("localhost:5000/app")),
            [Credential::basic("u", "p")]
        );
    }
}
