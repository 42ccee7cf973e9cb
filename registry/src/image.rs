//! What the node knows about an image once it is present: which runtime runs it and with what.

use std::path::PathBuf;

use serde::{Deserialize, Serialize};

/// Layer media types of Wasm artifacts: the CNCF wasm OCI artifact layer, and the plain
/// `application/wasm` that `wasm-to-oci` and early tools push.
pub const WASM_LAYER_MEDIA_TYPES: &[&str] = &[
    "application/vnd.wasm.content.layer.v1+wasm",
    "application/wasm",
];
/// Config media type of Wasm OCI artifacts (CNCF TAG Runtime spec, v0).
pub const WASM_CONFIG_MEDIA_TYPE: &str = "application/vnd.wasm.config.v0+json";
/// The layer media type `kedge push` writes.
pub const WASM_LAYER_MEDIA_TYPE: &str = "application/vnd.wasm.content.layer.v1+wasm";

/// Tar layers of OCI and Docker images, compressed with gzip or not.
pub const TAR_LAYER_MEDIA_TYPES: &[&str] = &[
    "application/vnd.oci.image.layer.v1.tar",
    "application/vnd.oci.image.layer.v1.tar+gzip",
    "application/vnd.docker.image.rootfs.diff.tar",
    "application/vnd.docker.image.rootfs.diff.tar.gzip",
    "application/vnd.oci.image.layer.nondistributable.v1.tar",
    "application/vnd.oci.image.layer.nondistributable.v1.tar+gzip",
    "application/vnd.docker.image.rootfs.foreign.diff.tar.gzip",
];

/// An image present on the node.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Image {
    /// The normalised reference it was asked for, e.g. `docker.io/library/busybox:1.36`.
    pub reference: String,
    /// `sha256:` digest of the (platform) manifest, or of the module for imported Wasm. This is
    /// what GC's in-use set holds.
    pub digest: String,
    /// What `containerStatuses[].imageID` shows: `<registry>/<repository>@<digest>`.
    pub image_id: String,
    pub kind: ImageKind,
}

/// Which runtime runs the image, decided by media types and the config's platform.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum ImageKind {
    /// A Wasm module or component; `module` is its blob in the store (read-only).
    Wasm { module: PathBuf },
    /// An ordinary container image: call [`crate::LocalImageStore::rootfs`] for its root.
    Oci {
        config: OciConfig,
        /// Layer digests, bottom first.
        layers: Vec<String>,
    },
}

/// The parts of an OCI image config a container runtime needs.
#[derive(Clone, Debug, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct OciConfig {
    #[serde(default)]
    pub entrypoint: Vec<String>,
    #[serde(default)]
    pub cmd: Vec<String>,
    /// `KEY=value` strings, as in the image config.
    #[serde(default)]
    pub env: Vec<String>,
    #[serde(default)]
    pub working_dir: Option<String>,
    #[serde(default)]
    pub user: Option<String>,
}

/// The image config JSON, only the fields kedge reads. Docker writes `null` for empty lists,
/// hence the `Option`s.
#[derive(Debug, Default, Deserialize)]
pub(crate) struct ImageConfigJson {
    #[serde(default)]
    pub architecture: Option<String>,
    #[serde(default)]
    pub os: Option<String>,
    #[serde(default)]
    pub config: Option<ContainerConfigJson>,
}

#[derive(Debug, Default, Deserialize)]
#[serde(rename_all = "PascalCase")]
pub(crate) struct ContainerConfigJson {
    #[serde(default)]
    pub entrypoint: Option<Vec<String>>,
    #[serde(default)]
    pub cmd: Option<Vec<String>>,
    #[serde(default)]
    pub env: Option<Vec<String>>,
    #[serde(default)]
    pub working_dir: Option<String>,
    #[serde(default)]
    pub user: Option<String>,
}

impl ImageConfigJson {
    /// Wasm images built as "OCI images with a wasm platform" (e.g. `docker buildx
    /// --platform wasi/wasm`) say so here rather than in media types.
    pub fn is_wasm_platform(&self) -> bool {
        matches!(self.os.as_deref(), Some("wasip1" | "wasip2" | "wasi"))
            || self.architecture.as_deref() == Some("wasm")
    }

    pub fn oci_config(&self) -> OciConfig {
        let c = self.config.as_ref();
        let non_empty = |s: Option<&String>| s.filter(|s| !s.is_empty()).cloned();
        OciConfig {
            entrypoint: c.and_then(|c| c.entrypoint.clone()).unwrap_or_default(),
            cmd: c.and_then(|c| c.cmd.clone()).unwrap_or_default(),
            env: c.and_then(|c| c.env.clone()).unwrap_or_default(),
            working_dir: non_empty(c.and_then(|c| c.working_dir.as_ref())),
            user: non_empty(c.and_then(|c| c.user.as_ref())),
        }
    }
}

/// The node's platform as OCI names it (`amd64`, `arm64`, ...).
pub fn node_arch() -> &'static str {
    match std::env::consts::ARCH {
        "x86_64" => "amd64",
        "aarch64" => "arm64",
        "x86" => "386",
        "arm" => "arm",
        "riscv64" => "riscv64",
        "powerpc64" => "ppc64le",
        "s390x" => "s390x",
        other => other,
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn config_json_with_nulls() {
        let json = r#"{"architecture":"amd64","os":"linux","config":{"Env":null,
            "Cmd":["sh"],"Entrypoint":null,"WorkingDir":"","User":"1000"}}"#;
        let c: ImageConfigJson = serde_json::from_str(json).unwrap();
        assert!(!c.is_wasm_platform());
        assert_eq!(
            c.oci_config(),
            OciConfig {
                cmd: vec!["sh".into()],
                user: Some("1000".into()),
                ..OciConfig::default()
            }
        );
        let w: ImageConfigJson = serde_json::from_str(r#"{"os":"wasip2"}"#).unwrap();
        assert!(w.is_wasm_platform());
    }
}
