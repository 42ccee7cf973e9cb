//! Image references, parsed and normalised the way Docker and Kubernetes do, so `busybox`,
//! `docker.io/library/busybox:latest` and `index.docker.io/library/busybox` name one image.

use std::fmt;
use std::str::FromStr;

/// Registry assumed when a reference names none.
pub const DEFAULT_REGISTRY: &str = "docker.io";
/// Tag assumed when a reference has neither tag nor digest.
pub const DEFAULT_TAG: &str = "latest";
/// Docker Hub's official images live under this namespace.
const OFFICIAL_NAMESPACE: &str = "library";
/// The distribution spec's limit on a repository name, registry included.
const MAX_NAME_LEN: usize = 255;
const MAX_TAG_LEN: usize = 128;

/// A parsed, normalised image reference.
#[derive(Clone, Debug, PartialEq, Eq, Hash)]
pub struct Reference {
    registry: String,
    repository: String,
    tag: Option<String>,
    digest: Option<String>,
}

/// Why a reference was rejected. The message quotes the input so a pod event explains itself.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("invalid reference format: {reason}: {input:?}")]
pub struct RefError {
    pub input: String,
    pub reason: String,
}

fn err(input: &str, reason: impl Into<String>) -> RefError {
    RefError {
        input: input.to_owned(),
        reason: reason.into(),
    }
}

impl Reference {
    /// Parses `[registry/]repository[:tag][@algorithm:hex]`.
    ///
    /// The first path component is a registry when it contains `.` or `:`, is `localhost`, or
    /// has upper-case letters (which a repository may not); otherwise the image is on Docker Hub
    /// and a one-component name gets the `library/` namespace. Without tag or digest the tag is
    /// `latest`; with only a digest there is no tag.
    pub fn parse(input: &str) -> Result<Self, RefError> {
        if input.is_empty() {
            return Err(err(input, "empty reference"));
        }
        if input.trim() != input || input.chars().any(char::is_whitespace) {
            return Err(err(input, "contains whitespace"));
        }

        let (rest, digest) = match input.split_once('@') {
            Some((rest, digest)) => (rest, Some(parse_digest(input, digest)?)),
            None => (input, None),
        };
        // A ':' after the last '/' starts the tag; earlier ones belong to a registry port.
        let last_slash = rest.rfind('/').map_or(0, |i| i + 1);
        let (name, tag) = match rest[last_slash..].find(':') {
            Some(i) => {
                let at = last_slash + i;
                let tag = &rest[at + 1..];
                validate_tag(input, tag)?;
                (&rest[..at], Some(tag.to_owned()))
            }
            None => (rest, None),
        };
        if name.is_empty() {
            return Err(err(input, "missing repository name"));
        }

        let (registry, path) = match name.split_once('/') {
            Some((first, path)) if looks_like_registry(first) => (first, path),
            _ => (DEFAULT_REGISTRY, name),
        };
        validate_registry(input, registry)?;
        let registry = match registry {
            "index.docker.io" | "registry-1.docker.io" => DEFAULT_REGISTRY,
            other => other,
        };
        if path.is_empty() {
            return Err(err(input, "missing repository name"));
        }
        for component in path.split('/') {
            validate_component(input, component)?;
        }
        let repository = if registry == DEFAULT_REGISTRY && !path.contains('/') {
            format!("{OFFICIAL_NAMESPACE}/{path}")
        } else {
            path.to_owned()
        };
        if registry.len() + 1 + repository.len() > MAX_NAME_LEN {
            return Err(err(
                input,
                format!("repository name longer than {MAX_NAME_LEN} characters"),
            ));
        }
        let tag = match (tag, &digest) {
            (None, None) => Some(DEFAULT_TAG.to_owned()),
            (tag, _) => tag,
        };
        Ok(Self {
            registry: registry.to_owned(),
            repository,
            tag,
            digest,
        })
    }

    /// Host (and port) of the registry, e.g. `docker.io` or `registry.example:10443`.
    pub fn registry(&self) -> &str {
        &self.registry
    }

    /// Path in the registry, e.g. `library/busybox`.
    pub fn repository(&self) -> &str {
        &self.repository
    }

    pub fn tag(&self) -> Option<&str> {
        self.tag.as_deref()
    }

    /// `algorithm:hex`, e.g. `sha256:…`.
    pub fn digest(&self) -> Option<&str> {
        self.digest.as_deref()
    }

    /// `registry/repository`, without tag or digest.
    pub fn name(&self) -> String {
        format!("{}/{}", self.registry, self.repository)
    }
}

impl fmt::Display for Reference {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{}/{}", self.registry, self.repository)?;
        if let Some(tag) = &self.tag {
            write!(f, ":{tag}")?;
        }
        if let Some(digest) = &self.digest {
            write!(f, "@{digest}")?;
        }
        Ok(())
    }
}

impl FromStr for Reference {
    type Err = RefError;

    fn from_str(s: &str) -> Result<Self, Self::Err> {
        Self::parse(s)
    }
}

fn looks_like_registry(first: &str) -> bool {
    first.contains(['.', ':'])
        || first == "localhost"
        || first.chars().any(|c| c.is_ascii_uppercase())
}

/// `host[:port]`: dot-separated labels of letters, digits and inner hyphens, or a bracketed
/// IPv6 address.
fn validate_registry(input: &str, registry: &str) -> Result<(), RefError> {
    let (host, port) = if let Some(v6) = registry.strip_prefix('[') {
        let Some((addr, after)) = v6.split_once(']') else {
            return Err(err(input, "unterminated IPv6 registry address"));
        };
        if addr.is_empty() || !addr.chars().all(|c| c.is_ascii_hexdigit() || c == ':') {
            return Err(err(
                input,
                format!("invalid IPv6 registry address {addr:?}"),
            ));
        }
        match after {
            "" => (None, None),
            p => match p.strip_prefix(':') {
                Some(port) => (None, Some(port)),
                None => return Err(err(input, "invalid registry address")),
            },
        }
    } else {
        match registry.split_once(':') {
            Some((h, p)) => (Some(h), Some(p)),
            None => (Some(registry), None),
        }
    };
    if let Some(host) = host {
        let label_ok = |l: &str| {
            !l.is_empty()
                && l.chars().all(|c| c.is_ascii_alphanumeric() || c == '-')
                && !l.starts_with('-')
                && !l.ends_with('-')
        };
        if !host.split('.').all(label_ok) {
            return Err(err(input, format!("invalid registry host {host:?}")));
        }
    }
    if let Some(port) = port
        && (port.is_empty()
            || !port.chars().all(|c| c.is_ascii_digit())
            || port.parse::<u16>().is_err())
    {
        return Err(err(input, format!("invalid registry port {port:?}")));
    }
    Ok(())
}

/// A repository path component: lower-case alphanumeric runs joined by `.`, `_`, `__` or any
/// number of `-`.
fn validate_component(input: &str, component: &str) -> Result<(), RefError> {
    if component.is_empty() {
        return Err(err(input, "empty path component"));
    }
    if component.chars().any(|c| c.is_ascii_uppercase()) {
        return Err(err(input, "repository name must be lowercase"));
    }
    let bytes = component.as_bytes();
    let alnum = |b: u8| b.is_ascii_lowercase() || b.is_ascii_digit();
    if !alnum(bytes[0]) || !alnum(bytes[bytes.len() - 1]) {
        return Err(err(
            input,
            format!("path component {component:?} must start and end with a letter or digit"),
        ));
    }
    let mut i = 0;
    while i < bytes.len() {
        if alnum(bytes[i]) {
            i += 1;
            continue;
        }
        let start = i;
        while i < bytes.len() && !alnum(bytes[i]) {
            i += 1;
        }
        let sep = &component[start..i];
        let ok = sep == "." || sep == "_" || sep == "__" || sep.bytes().all(|b| b == b'-');
        if !ok {
            return Err(err(
                input,
                format!("invalid separator {sep:?} in path component {component:?}"),
            ));
        }
    }
    Ok(())
}

fn validate_tag(input: &str, tag: &str) -> Result<(), RefError> {
    let word = |c: char| c.is_ascii_alphanumeric() || c == '_';
    let mut chars = tag.chars();
    let valid = match chars.next() {
        Some(first) => word(first) && chars.all(|c| word(c) || c == '.' || c == '-'),
        None => false,
    };
    if !valid {
        return Err(err(input, format!("invalid tag {tag:?}")));
    }
    if tag.len() > MAX_TAG_LEN {
        return Err(err(
            input,
            format!("tag longer than {MAX_TAG_LEN} characters"),
        ));
    }
    Ok(())
}

/// `algorithm:hex` with the registered algorithms' exact lengths (OCI image spec); unknown
/// algorithms are refused since nothing could verify them.
fn parse_digest(input: &str, digest: &str) -> Result<String, RefError> {
    let Some((algorithm, hex)) = digest.split_once(':') else {
        return Err(err(input, "digest must be algorithm:hex"));
    };
    let len = match algorithm {
        "sha256" => 64,
        "sha512" => 128,
        other => {
            return Err(err(
                input,
                format!("unsupported digest algorithm {other:?}"),
            ));
        }
    };
    if hex.len() != len
        || !hex
            .bytes()
            .all(|b| b.is_ascii_digit() || (b'a'..=b'f').contains(&b))
    {
        return Err(err(
            input,
            format!("{algorithm} digest must be {len} lowercase hex characters"),
        ));
    }
    Ok(digest.to_owned())
}

/// When the node fetches an image (a container's `imagePullPolicy`).
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum PullPolicy {
    Always,
    IfNotPresent,
    Never,
}

/// Kubernetes' defaulting: a `latest` tag (implicit or explicit) without a digest may move, so
/// it is pulled every time; anything pinned is pulled only if missing.
pub fn default_pull_policy(reference: &Reference) -> PullPolicy {
    if reference.digest.is_none() && reference.tag.as_deref() == Some(DEFAULT_TAG) {
        PullPolicy::Always
    } else {
        PullPolicy::IfNotPresent
    }
}

/// The pod spec named a pull policy Kubernetes does not have.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("unknown image pull policy {0:?} (expected Always, IfNotPresent or Never)")]
pub struct UnknownPullPolicy(pub String);

impl FromStr for PullPolicy {
    type Err = UnknownPullPolicy;

    fn from_str(s: &str) -> Result<Self, Self::Err> {
        match s {
            "Always" => Ok(Self::Always),
            "IfNotPresent" => Ok(Self::IfNotPresent),
            "Never" => Ok(Self::Never),
            other => Err(UnknownPullPolicy(other.to_owned())),
        }
    }
}

impl fmt::Display for PullPolicy {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(match self {
            Self::Always => "Always",
            Self::IfNotPresent => "IfNotPresent",
            Self::Never => "Never",
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    const D: &str = "sha256:0123456789abcdef0123456789abcdef0123456789abcdef0123456789abcdef";

    #[test]
    fn normalises_good_references() {
        let digest_ref = format!("registry.example/app@{D}");
        let tag_and_digest = format!("busybox:1.36@{D}");
        // input, registry, repository, tag, digest
        type Case<'a> = (&'a str, &'a str, &'a str, Option<&'a str>, Option<&'a str>);
        let cases: Vec<Case> = vec![
            (
                "busybox",
                "docker.io",
                "library/busybox",
                Some("latest"),
                None,
            ),
            (
                "busybox:1.36",
                "docker.io",
                "library/busybox",
                Some("1.36"),
                None,
            ),
            (
                "example/app",
                "docker.io",
                "example/app",
                Some("latest"),
                None,
            ),
            (
                "docker.io/busybox",
                "docker.io",
                "library/busybox",
                Some("latest"),
                None,
            ),
            (
                "index.docker.io/library/busybox",
                "docker.io",
                "library/busybox",
                Some("latest"),
                None,
            ),
            (
                "registry.example:10443/team/app:v1.42.0",
                "registry.example:10443",
                "team/app",
                Some("v1.42.0"),
                None,
            ),
            ("localhost/app", "localhost", "app", Some("latest"), None),
            (
                "localhost:5000/app:dev",
                "localhost:5000",
                "app",
                Some("dev"),
                None,
            ),
            (
                "127.0.0.1:5000/a/b/c",
                "127.0.0.1:5000",
                "a/b/c",
                Some("latest"),
                None,
            ),
            ("[::1]:5000/app", "[::1]:5000", "app", Some("latest"), None),
            ("Registry/app", "Registry", "app", Some("latest"), None),
            (
                "my_org/my-app__x.y",
                "docker.io",
                "my_org/my-app__x.y",
                Some("latest"),
                None,
            ),
            (
                "a---b/c:_Tag.-x",
                "docker.io",
                "a---b/c",
                Some("_Tag.-x"),
                None,
            ),
            (&digest_ref, "registry.example", "app", None, Some(D)),
            (
                &tag_and_digest,
                "docker.io",
                "library/busybox",
                Some("1.36"),
                Some(D),
            ),
        ];
        for (input, registry, repository, tag, digest) in cases {
            let r = Reference::parse(input).unwrap_or_else(|e| panic!("{input}: {e}"));
            assert_eq!(r.registry(), registry, "{input}");
            assert_eq!(r.repository(), repository, "{input}");
            assert_eq!(r.tag(), tag, "{input}");
            assert_eq!(r.digest(), digest, "{input}");
            // The normalised form is a fixed point.
            let again = Reference::parse(&r.to_string()).unwrap();
            assert_eq!(again, r, "{input} round-trips via {r}");
        }
        assert_eq!(
            Reference::parse("busybox").unwrap().to_string(),
            "docker.io/library/busybox:latest"
        );
        assert_eq!(
            Reference::parse(&digest_ref).unwrap().to_string(),
            format!("registry.example/app@{D}")
        );
    }

    #[test]
    fn rejects_bad_references() {
        let long_tag = format!("app:{}", "t".repeat(129));
        let long_name = format!("example/{}", "a".repeat(250));
        let cases: Vec<(&str, &str)> = vec![
            ("", "empty reference"),
            (" busybox", "whitespace"),
            ("busy box", "whitespace"),
            ("Busybox", "lowercase"),
            ("example/App", "lowercase"),
            ("busybox:", "invalid tag"),
            ("busybox:-x", "invalid tag"),
            ("busybox:a/b", "invalid registry port"),
            (&long_tag, "tag longer"),
            ("busybox@sha256:abc", "64 lowercase hex"),
            (
                "busybox@sha256:0123456789ABCDEF0123456789abcdef0123456789abcdef0123456789abcdef",
                "lowercase hex",
            ),
            (
                "busybox@md5:0123456789abcdef0123456789abcdef",
                "unsupported digest algorithm",
            ),
            ("busybox@", "algorithm:hex"),
            ("busybox@a@b", "algorithm:hex"),
            ("/busybox", "empty path component"),
            ("example//app", "empty path component"),
            ("example/app/", "empty path component"),
            ("registry.example/", "missing repository name"),
            ("-app", "start and end"),
            ("app-", "start and end"),
            ("a...b", "invalid separator"),
            ("a___b", "invalid separator"),
            ("a.-b", "invalid separator"),
            ("registry..example/app", "invalid registry host"),
            ("-registry.example/app", "invalid registry host"),
            ("registry.example:port/app", "invalid registry port"),
            ("registry.example:99999/app", "invalid registry port"),
            ("[::1/app", "IPv6"),
            (":tag", "missing repository name"),
            (&long_name, "longer than 255"),
        ];
        for (input, want) in cases {
            match Reference::parse(input) {
                Ok(r) => panic!("{input:?} parsed as {r}"),
                Err(e) => {
                    let msg = e.to_string();
                    assert!(msg.starts_with("invalid reference format: "), "{msg}");
                    assert!(msg.contains(want), "{input:?}: {msg} lacks {want:?}");
                }
            }
        }
    }

    #[test]
    fn pull_policy_defaults_and_parsing() {
        let cases = [
            ("busybox", PullPolicy::Always),
            ("busybox:latest", PullPolicy::Always),
            ("busybox:1.36", PullPolicy::IfNotPresent),
            (&*format!("busybox@{D}"), PullPolicy::IfNotPresent),
            (&*format!("busybox:latest@{D}"), PullPolicy::IfNotPresent),
        ];
        for (input, want) in cases {
            assert_eq!(
                default_pull_policy(&input.parse().unwrap()),
                want,
                "{input}"
            );
        }
        for p in [
            PullPolicy::Always,
            PullPolicy::IfNotPresent,
            PullPolicy::Never,
        ] {
            assert_eq!(p.to_string().parse::<PullPolicy>().unwrap(), p);
        }
        assert!("ifnotpresent".parse::<PullPolicy>().is_err());
    }
}
