//! The node's registry configuration, in K3s's `registries.yaml` format so existing files work:
//!
//! ```yaml
//! configs:
//!   "registry.example:5000":
//!     auth: { username: u, password: p }
//!     tls: { ca_file: /etc/ssl/reg-ca.pem, insecure_skip_verify: false }
//! ```
//!
//! Node-level credentials come from `auth`; per-registry trust from `tls`. `mirrors` is accepted
//! (so a K3s file loads) but not used yet: pulls always go to the named registry.

use std::collections::BTreeMap;
use std::path::{Path, PathBuf};

use serde::Deserialize;
use tracing::warn;

use crate::auth::{Credential, Keyring};
use crate::reference::DEFAULT_REGISTRY;

#[derive(Debug, thiserror::Error)]
pub enum ConfigError {
    #[error("cannot read registries config {path}")]
    Io {
        path: PathBuf,
        #[source]
        source: std::io::Error,
    },
    #[error("registries config {path} is invalid")]
    Yaml {
        path: PathBuf,
        #[source]
        source: serde_yaml_ng::Error,
    },
    #[error("cannot read CA file {path} for registry {registry}")]
    CaFile {
        registry: String,
        path: PathBuf,
        #[source]
        source: std::io::Error,
    },
}

/// `registries.yaml`. `Default` is "no special registries": public CAs, anonymous pulls.
#[derive(Clone, Debug, Default, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct RegistriesConfig {
    /// Accepted for K3s compatibility and ignored (a warning is logged at load).
    #[serde(default)]
    pub mirrors: BTreeMap<String, serde_yaml_ng::Value>,
    /// Keyed by `host[:port]` as images name the registry.
    #[serde(default)]
    pub configs: BTreeMap<String, RegistryConfig>,
}

#[derive(Clone, Debug, Default, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct RegistryConfig {
    #[serde(default)]
    pub auth: Option<RegistryAuthConfig>,
    #[serde(default)]
    pub tls: Option<TlsConfig>,
}

#[derive(Clone, Default, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct RegistryAuthConfig {
    #[serde(default)]
    pub username: Option<String>,
    #[serde(default)]
    pub password: Option<String>,
    /// K3s also allows `auth: base64(user:pass)`.
    #[serde(default)]
    pub auth: Option<String>,
}

impl std::fmt::Debug for RegistryAuthConfig {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("RegistryAuthConfig")
            .field("username", &self.username)
            .finish_non_exhaustive()
    }
}

#[derive(Clone, Debug, Default, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct TlsConfig {
    #[serde(default)]
    pub ca_file: Option<PathBuf>,
    /// Client certificates are parsed but not presented: oci-client 0.18 has no client
    /// identity option. A warning is logged at load.
    #[serde(default)]
    pub cert_file: Option<PathBuf>,
    #[serde(default)]
    pub key_file: Option<PathBuf>,
    #[serde(default)]
    pub insecure_skip_verify: bool,
}

impl RegistriesConfig {
    /// Loads `path`; a missing file is the default (most nodes have none).
    pub fn load(path: impl AsRef<Path>) -> Result<Self, ConfigError> {
        let path = path.as_ref();
        let text = match std::fs::read_to_string(path) {
            Ok(t) => t,
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => return Ok(Self::default()),
            Err(source) => {
                return Err(ConfigError::Io {
                    path: path.to_owned(),
                    source,
                });
            }
        };
        Self::parse(&text).map_err(|source| ConfigError::Yaml {
            path: path.to_owned(),
            source,
        })
    }

    /// Parses the YAML text of a `registries.yaml`.
    pub fn parse(text: &str) -> Result<Self, serde_yaml_ng::Error> {
        if text.trim().is_empty() {
            return Ok(Self::default());
        }
        let config: Self = serde_yaml_ng::from_str(text)?;
        if !config.mirrors.is_empty() {
            warn!(
                mirrors = config.mirrors.len(),
                "registry mirrors are not supported yet; pulling from the named registries"
            );
        }
        for (registry, c) in &config.configs {
            if c.tls
                .as_ref()
                .is_some_and(|t| t.cert_file.is_some() || t.key_file.is_some())
            {
                warn!(%registry, "tls client certificates are not supported yet; ignored");
            }
        }
        Ok(config)
    }

    /// The settings for `registry` (`host[:port]`), accepting keys written with a scheme and
    /// Docker Hub's aliases.
    pub fn for_registry(&self, registry: &str) -> Option<&RegistryConfig> {
        self.configs.iter().find_map(|(key, config)| {
            (normalise_host(key) == normalise_host(registry)).then_some(config)
        })
    }

    /// The node-level credential for `registry`, if `registries.yaml` has one.
    pub fn credential(&self, registry: &str) -> Option<Credential> {
        let auth = self.for_registry(registry)?.auth.as_ref()?;
        if let Some(encoded) = &auth.auth {
            let mut keyring = Keyring::new();
            // Reuse the docker-config decoding (and its errors) for the combined form.
            let json = serde_json::json!({ "auths": { registry: { "auth": encoded } } });
            match Keyring::from_dockerconfigjson(json.to_string().as_bytes()) {
                Ok(k) => keyring.extend(k),
                Err(e) => {
                    warn!(%registry, error = %e, "unusable auth in registries config");
                    return None;
                }
            }
            return keyring.lookup_registry(registry);
        }
        let username = auth.username.clone()?;
        Some(Credential::basic(
            username,
            auth.password.clone().unwrap_or_default(),
        ))
    }

    /// The CA certificates (PEM) to trust for `registry`, in addition to the system's.
    pub fn ca_pem(&self, registry: &str) -> Result<Option<Vec<u8>>, ConfigError> {
        let Some(path) = self
            .for_registry(registry)
            .and_then(|c| c.tls.as_ref())
            .and_then(|t| t.ca_file.as_ref())
        else {
            return Ok(None);
        };
        std::fs::read(path)
            .map(Some)
            .map_err(|source| ConfigError::CaFile {
                registry: registry.to_owned(),
                path: path.clone(),
                source,
            })
    }

    pub fn insecure_skip_verify(&self, registry: &str) -> bool {
        self.for_registry(registry)
            .and_then(|c| c.tls.as_ref())
            .is_some_and(|t| t.insecure_skip_verify)
    }
}

impl Keyring {
    /// The first credential for any repository of `registry`.
    fn lookup_registry(&self, registry: &str) -> Option<Credential> {
        let reference = crate::Reference::parse(&format!("{registry}/x")).ok()?;
        self.lookup(&reference).into_iter().next()
    }
}

fn normalise_host(key: &str) -> &str {
    let key = key
        .strip_prefix("https://")
        .or_else(|| key.strip_prefix("http://"))
        .unwrap_or(key);
    let key = key.split('/').next().unwrap_or(key);
    match key {
        "index.docker.io" | "registry-1.docker.io" => DEFAULT_REGISTRY,
        other => other,
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn parses_k3s_registries_yaml() {
        let dir = tempfile::tempdir().unwrap();
        let ca = dir.path().join("ca.pem");
        std::fs::write(&ca, b"PEM").unwrap();
        let yaml = format!(
            r#"
mirrors:
  docker.io:
    endpoint: ["https://mirror.example"]
configs:
  "registry.example:5000":
    auth:
      username: u
      password: p
    tls:
      ca_file: {}
  "https://index.docker.io":
    auth:
      auth: dTI6cDI=
  other.example:
    tls:
      insecure_skip_verify: true
"#,
            ca.display()
        );
        let path = dir.path().join("registries.yaml");
        std::fs::write(&path, yaml).unwrap();
        let config = RegistriesConfig::load(&path).unwrap();
        assert_eq!(
            config.credential("registry.example:5000"),
            Some(Credential::basic("u", "p"))
        );
        assert_eq!(
            config.credential("docker.io"),
            Some(Credential::basic("u2", "p2"))
        );
        assert_eq!(config.credential("registry.example"), None);
        assert_eq!(
            config.ca_pem("registry.example:5000").unwrap().as_deref(),
            Some(&b"PEM"[..])
        );
        assert!(config.insecure_skip_verify("other.example"));
        assert!(!config.insecure_skip_verify("registry.example:5000"));
        assert!(config.ca_pem("other.example").unwrap().is_none());
    }

    #[test]
    fn missing_file_is_default_and_unknown_keys_rejected() {
        let dir = tempfile::tempdir().unwrap();
        let config = RegistriesConfig::load(dir.path().join("none.yaml")).unwrap();
        assert!(config.configs.is_empty());
        let path = dir.path().join("bad.yaml");
        std::fs::write(
            &path,
            "configs:\n  r.example:\n    auth:\n      usrname: x\n",
        )
        .unwrap();
        let err = RegistriesConfig::load(&path).unwrap_err();
        let text = format!("{err}: {}", std::error::Error::source(&err).unwrap());
        assert!(text.contains("usrname"), "{text}");
    }
}
