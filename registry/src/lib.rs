//! The node's image subsystem: references parsed the way Kubernetes does, credentials
//! (`imagePullSecrets`, `registries.yaml`, `~/.docker/config.json`), pulls from OCI registries
//! into a verified content store, root filesystems for the container runtime, GC, and pushing
//! Wasm artifacts.
//!
//! The API the node agent and the CLI use:
//!
//! ```text
//! LocalImageStore::open(dir) -> Result<LocalImageStore>               (sync: spawn_blocking)
//! LocalImageStore::open_exclusive(dir)                                 the owner (agent, CLI)
//!   .import(&Reference, &[u8]) -> Result<String>                      air-gapped Wasm modules
//!   .import_archive(path, now) -> Result<ImportReport, ArchiveError>  docker/OCI tarballs
//!   .import_airgap_dir(now)                                           archives in the store dir
//!   .image(&Reference) -> Result<Option<Image>>                       present and complete?
//!   .lookup(&Reference) -> Result<Option<(String, PathBuf)>>          digest + module/manifest
//!   .rootfs(&Image) -> Result<PathBuf>                                unpacked once, read-only
//!   .gc(&HashSet<String /*Image::digest*/>, max_bytes) -> Result<GcReport>
//!   .images() -> Vec<(String, String)>                                for node status.images
//! Puller::new(Arc<LocalImageStore>, RegistriesConfig)
//!   .ensure(&Reference, PullPolicy, &[Credential]).await -> Result<Image, PullError>
//! Keyring::from_dockerconfigjson(&[u8]) / from_dockercfg(&[u8]) / from_docker_config_file(path)
//!   .extend(Keyring), .lookup(&Reference) -> Vec<Credential>
//! RegistriesConfig::load(path) / Default
//!   .sources(&Reference) -> Vec<PullSource>                           mirrors, then the registry
//! push_wasm(&Reference, &[u8], &Credential, &RegistriesConfig, FnMut(sent, total)).await
//!   -> Result<String /*manifest digest*/, PushError>
//! PullError { kind: PullErrorKind, message } .reason() -> "ErrImagePull" | "ErrImageNeverPull"
//!   | "InvalidImageName"
//! ```
//!
//! The process must install a rustls crypto provider before the first pull or push
//! (`rustls::crypto::ring::default_provider().install_default()`): oci-client is built
//! without one so the whole binary shares ring.

pub mod archive;
pub mod auth;
pub mod config;
pub mod image;
pub mod pull;
pub mod push;
pub mod reference;
pub mod store;
#[cfg(any(test, feature = "testing"))]
pub mod testing;
mod unpack;
/// Layer unpacking, public only for the fuzz tests (`registry/tests/fuzz.rs`).
#[doc(hidden)]
pub use unpack::unpack_layers;

pub use archive::{ArchiveError, ImportReport, ImportedImage};
pub use auth::{AuthError, Credential, Keyring};
pub use config::{
    ConfigError, Endpoint, Mirror, PullSource, RegistriesConfig, RegistryConfig, Rewrite, TlsConfig,
};
pub use image::{Image, ImageKind, OciConfig, node_arch};
pub use pull::{PullError, PullErrorKind, Puller, PushError};
pub use push::push_wasm;
pub use reference::{PullPolicy, RefError, Reference, UnknownPullPolicy, default_pull_policy};
pub use store::{BlobWriter, GcReport, LocalImageStore, PinGuard, StoreError};
