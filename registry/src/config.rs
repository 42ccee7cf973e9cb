//! The node's registry configuration, in K3s's `registries.yaml` format so existing files work:
//!
//! ```yaml
//! configs:
//!   "registry.example:5000":
//!     auth: { username: u, password: p }
//!     tls: { ca_file: /etc/ssl/reg-ca.pem, insecure_skip_verify: false }
//! ```
//!
//! Node-level credentials come from `auth`; per-registry trust from `tls`. `mirrors` follow
//! K3s/containerd: an image on registry R is fetched from the endpoints of `mirrors["R"]` (or of
//! `mirrors["*"]` when R has no entry of its own) in order, with `rewrite` rules applied to the
//! repository, then from R itself (the default endpoint, never rewritten). Each endpoint's
//! credentials and trust come from `configs` under its own `host[:port]` (`"*"` as fallback).
//!
//! ```yaml
//! mirrors:
//!   docker.io:
//!     endpoint: ["https://mirror.example:5000", "http://10.0.0.2:5000"]
//!     rewrite:
//!       "^rancher/(.*)": "mirrored/rancher/$1"
//! ```

use std::collections::BTreeMap;
use std::path::{Path, PathBuf};

use serde::Deserialize;
use tracing::warn;

use regex::Regex;

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
    /// Keyed by the registry images name (`docker.io`, `registry.example:5000`) or `"*"`.
    #[serde(default)]
    pub mirrors: BTreeMap<String, Mirror>,
    /// Keyed by `host[:port]` as images name the registry, or as a mirror endpoint names its
    /// host; `"*"` applies to hosts without an entry.
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

/// One `mirrors` entry: where to fetch a registry's images from before the registry itself.
#[derive(Clone, Debug, Default, Deserialize)]
#[serde(try_from = "RawMirror")]
pub struct Mirror {
    pub endpoints: Vec<Endpoint>,
    /// Applied in file order to the repository path when pulling from a mirror endpoint; the
    /// first rule whose pattern matches wins.
    pub rewrites: Vec<Rewrite>,
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct RawMirror {
    #[serde(default)]
    endpoint: Vec<String>,
    /// A YAML mapping keeps its order, so rules apply in the order written.
    #[serde(default)]
    rewrite: serde_yaml_ng::Mapping,
}

impl TryFrom<RawMirror> for Mirror {
    type Error = String;

    fn try_from(raw: RawMirror) -> Result<Self, String> {
        let endpoints = raw
            .endpoint
            .iter()
            .map(|e| Endpoint::parse(e))
            .collect::<Result<Vec<_>, _>>()?;
        let mut rewrites = Vec::new();
        for (pattern, replacement) in &raw.rewrite {
            let (Some(pattern), Some(replacement)) = (pattern.as_str(), replacement.as_str())
            else {
                return Err("mirror rewrite rules must map a string pattern to a string".into());
            };
            rewrites.push(Rewrite::new(pattern, replacement)?);
        }
        Ok(Self {
            endpoints,
            rewrites,
        })
    }
}

/// A mirror endpoint, `https://host[:port]` (the scheme defaults to https) or
/// `http://host[:port]` for a plain-HTTP mirror.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Endpoint {
    /// `host[:port]`, the key of its `configs` entry.
    pub host: String,
    pub plain_http: bool,
}

impl Endpoint {
    /// Parses an endpoint URL. A path other than `/v2` is refused: requests always go to
    /// `/v2/` at the root, so a path prefix would silently be ignored.
    pub fn parse(url: &str) -> Result<Self, String> {
        let (plain_http, rest) = if let Some(r) = url.strip_prefix("http://") {
            (true, r)
        } else if let Some(r) = url.strip_prefix("https://") {
            (false, r)
        } else if url.contains("://") {
            return Err(format!(
                "mirror endpoint {url:?}: scheme must be http or https"
            ));
        } else {
            (false, url)
        };
        let (host, path) = rest.split_once('/').unwrap_or((rest, ""));
        let path = path.trim_end_matches('/');
        if !(path.is_empty() || path == "v2") {
            return Err(format!(
                "mirror endpoint {url:?}: a path prefix ({path:?}) is not supported"
            ));
        }
        if host.is_empty()
            || !host
                .chars()
                .all(|c| c.is_ascii_alphanumeric() || matches!(c, '.' | '-' | ':' | '[' | ']'))
        {
            return Err(format!("mirror endpoint {url:?}: invalid host"));
        }
        Ok(Self {
            host: host.to_owned(),
            plain_http,
        })
    }

    pub fn url(&self) -> String {
        let scheme = if self.plain_http { "http" } else { "https" };
        format!("{scheme}://{}", self.host)
    }
}

/// A K3s rewrite rule: a regular expression on the repository path (`library/busybox`,
/// `team/app`) and its replacement, `$1`/`${name}` naming groups as in Go's `regexp`.
#[derive(Clone, Debug)]
pub struct Rewrite {
    pub pattern: Regex,
    pub replacement: String,
}

impl Rewrite {
    pub fn new(pattern: &str, replacement: &str) -> Result<Self, String> {
        let pattern =
            Regex::new(pattern).map_err(|e| format!("mirror rewrite pattern {pattern:?}: {e}"))?;
        Ok(Self {
            pattern,
            replacement: replacement.to_owned(),
        })
    }
}

/// One place to fetch an image from, in the order [`RegistriesConfig::sources`] gives.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct PullSource {
    pub endpoint: Endpoint,
    /// The repository on that endpoint (rewritten for mirrors).
    pub repository: String,
    /// False for the registry the image names (the default endpoint).
    pub mirror: bool,
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
    /// Docker Hub's aliases; the `"*"` entry when there is none.
    pub fn for_registry(&self, registry: &str) -> Option<&RegistryConfig> {
        self.configs
            .iter()
            .find_map(|(key, config)| {
                (normalise_host(key) == normalise_host(registry)).then_some(config)
            })
            .or_else(|| self.configs.get("*"))
    }

    /// Where to fetch `reference` from, in order: the endpoints of its registry's mirror entry
    /// (or of `"*"` if it has none), with the first matching rewrite applied, then the
    /// registry itself without rewrite (containerd's default endpoint, always tried last). An
    /// endpoint listed twice, or naming the registry itself, is tried once.
    pub fn sources(&self, reference: &crate::Reference) -> Vec<PullSource> {
        let registry = reference.registry();
        let mirror = self
            .mirrors
            .iter()
            .find_map(|(key, m)| (normalise_host(key) == normalise_host(registry)).then_some(m))
            .or_else(|| self.mirrors.get("*"));
        let default = PullSource {
            endpoint: Endpoint {
                host: registry.to_owned(),
                plain_http: false,
            },
            repository: reference.repository().to_owned(),
            mirror: false,
        };
        let mut sources: Vec<PullSource> = Vec::new();
        for endpoint in mirror.iter().flat_map(|m| &m.endpoints) {
            if sources.iter().any(|s| &s.endpoint == endpoint) {
                continue;
            }
            if normalise_host(&endpoint.host) == normalise_host(registry) && !endpoint.plain_http {
                // The registry itself, listed: tried here, as the default endpoint.
                sources.push(default.clone());
                continue;
            }
            let repository = mirror
                .and_then(|m| rewrite(&m.rewrites, reference.repository()))
                .unwrap_or_else(|| reference.repository().to_owned());
            sources.push(PullSource {
                endpoint: endpoint.clone(),
                repository,
                mirror: true,
            });
        }
        if !sources.iter().any(|s| !s.mirror) {
            sources.push(default);
        }
        sources
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

/// The repository after the first rule whose pattern matches `repository`, if any.
fn rewrite(rules: &[Rewrite], repository: &str) -> Option<String> {
    rules.iter().find_map(|r| {
        r.pattern.is_match(repository).then(|| {
            r.pattern
                .replace_all(repository, r.replacement.as_str())
                .into_owned()
        })
    })
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

#[cfg(test)]
mod mirror_tests {
    use super::*;
    use crate::Reference;

    fn r(s: &str) -> Reference {
        Reference::parse(s).unwrap()
    }

    /// `(url, repository, mirror)` of each source, in order.
    fn order(config: &RegistriesConfig, image: &str) -> Vec<(String, String, bool)> {
        config
            .sources(&r(image))
            .into_iter()
            .map(|s| (s.endpoint.url(), s.repository, s.mirror))
            .collect()
    }

    fn t(url: &str, repo: &str, mirror: bool) -> (String, String, bool) {
        (url.to_owned(), repo.to_owned(), mirror)
    }

    #[test]
    fn mirror_endpoints_in_order_then_the_registry_itself() {
        let config = RegistriesConfig::parse(
            r#"
mirrors:
  registry.example:5000:
    endpoint:
      - "https://m1.example:5000"
      - "http://10.0.0.2:5000/v2"
      - "m3.example"
      - "https://m1.example:5000"
  docker.io:
    endpoint: ["https://hub-mirror.example"]
"#,
        )
        .unwrap();
        assert_eq!(
            order(&config, "registry.example:5000/team/app:v1"),
            [
                t("https://m1.example:5000", "team/app", true),
                t("http://10.0.0.2:5000", "team/app", true),
                t("https://m3.example", "team/app", true),
                t("https://registry.example:5000", "team/app", false),
            ],
            "listed once each, the default endpoint last"
        );
        // Docker Hub's aliases name one registry.
        for image in ["busybox", "index.docker.io/library/busybox:1"] {
            assert_eq!(
                order(&config, image),
                [
                    t("https://hub-mirror.example", "library/busybox", true),
                    t("https://docker.io", "library/busybox", false),
                ],
                "{image}"
            );
        }
        // A registry without an entry: only itself.
        assert_eq!(
            order(&config, "other.example/x:1"),
            [t("https://other.example", "x", false)]
        );
        assert_eq!(
            order(&RegistriesConfig::default(), "other.example/x:1"),
            [t("https://other.example", "x", false)]
        );
    }

    #[test]
    fn wildcard_mirror_applies_to_registries_without_their_own_entry() {
        let config = RegistriesConfig::parse(
            r#"
mirrors:
  "*":
    endpoint: ["https://everything.example"]
  registry.example:
    endpoint: ["https://own.example"]
"#,
        )
        .unwrap();
        assert_eq!(
            order(&config, "any.example/a/b:1"),
            [
                t("https://everything.example", "a/b", true),
                t("https://any.example", "a/b", false),
            ]
        );
        assert_eq!(
            order(&config, "alpine"),
            [
                t("https://everything.example", "library/alpine", true),
                t("https://docker.io", "library/alpine", false),
            ]
        );
        // Its own entry wins over "*".
        assert_eq!(
            order(&config, "registry.example/a:1"),
            [
                t("https://own.example", "a", true),
                t("https://registry.example", "a", false),
            ]
        );
    }

    #[test]
    fn rewrites_apply_to_mirrors_only_first_match_in_file_order() {
        let config = RegistriesConfig::parse(
            r#"
mirrors:
  docker.io:
    endpoint: ["https://mirror.example:5000", "https://docker.io"]
    rewrite:
      "^rancher/(.*)": "mirrorproject/rancher-images/$1"
      "^(.*)$": "all/$1"
"#,
        )
        .unwrap();
        assert_eq!(
            order(&config, "rancher/coredns-coredns:1.6.3"),
            [
                t(
                    "https://mirror.example:5000",
                    "mirrorproject/rancher-images/coredns-coredns",
                    true
                ),
                // The registry itself, listed: tried in its place, not rewritten, not again.
                t("https://docker.io", "rancher/coredns-coredns", false),
            ]
        );
        assert_eq!(
            order(&config, "busybox")[0],
            t("https://mirror.example:5000", "all/library/busybox", true)
        );
        // Tag and digest are untouched: only the repository changes.
        let digest = format!("sha256:{}", "a".repeat(64));
        let reference = r(&format!("rancher/x:1@{digest}"));
        let source = &config.sources(&reference)[0];
        let oci = crate::pull::source_reference(&reference, source);
        assert_eq!(oci.repository(), "mirrorproject/rancher-images/x");
        assert_eq!(oci.registry(), "mirror.example:5000");
        assert_eq!(oci.digest(), Some(digest.as_str()));
    }

    #[test]
    fn endpoint_credentials_and_trust_come_from_configs_by_endpoint_host() {
        let config = RegistriesConfig::parse(
            r#"
mirrors:
  docker.io:
    endpoint: ["https://mirror.example:5000"]
configs:
  "mirror.example:5000":
    auth: { username: m, password: p }
    tls: { insecure_skip_verify: true }
  "*":
    auth: { username: any, password: q }
"#,
        )
        .unwrap();
        let host = &config.sources(&r("busybox"))[0].endpoint.host;
        assert_eq!(config.credential(host), Some(Credential::basic("m", "p")));
        assert!(config.insecure_skip_verify(host));
        assert_eq!(
            config.credential("elsewhere.example"),
            Some(Credential::basic("any", "q")),
            "\"*\" configs apply to hosts without an entry"
        );
    }

    #[test]
    fn bad_mirror_config_is_refused_with_its_reason() {
        for (yaml, expect) in [
            (
                "mirrors:\n  docker.io:\n    endpoints: [\"https://m\"]\n",
                "endpoints",
            ),
            (
                "mirrors:\n  docker.io:\n    endpoint: [\"https://m\"]\n    rewrite:\n      \"(\": x\n",
                "rewrite pattern",
            ),
            (
                "mirrors:\n  docker.io:\n    endpoint: [\"ftp://m\"]\n",
                "scheme",
            ),
            (
                "mirrors:\n  docker.io:\n    endpoint: [\"https://m/prefix\"]\n",
                "path prefix",
            ),
        ] {
            let err = RegistriesConfig::parse(yaml).unwrap_err().to_string();
            assert!(err.contains(expect), "{yaml}: {err}");
        }
    }
}
