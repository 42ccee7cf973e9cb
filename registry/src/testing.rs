//! Test support: a real registry on 127.0.0.1 (Debian's `docker-registry`, TLS from a test CA,
//! optional htpasswd or bearer-token auth) and builders for images made locally, so tests never touch the
//! internet. Enabled by the `testing` feature (and in this crate's own tests).
//!
//! Needs `/usr/bin/docker-registry` (package `docker-registry`), `htpasswd`
//! (`apache2-utils`) and a static busybox (`busybox-static`) for [`busybox_image_layer`].

use std::io::{Read as _, Write as _};
use std::net::{SocketAddr, TcpListener, TcpStream};
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

use sha2::{Digest as _, Sha256};

use crate::auth::Credential;
use crate::config::{RegistriesConfig, RegistryAuthConfig, RegistryConfig, TlsConfig};
use crate::image::{OciConfig, node_arch};
use crate::reference::Reference;

mod token;

pub use token::TokenRequest;

pub const REGISTRY_BIN: &str = "/usr/bin/docker-registry";
pub const HTPASSWD_BIN: &str = "htpasswd";
pub const BUSYBOX_BIN: &str = "/bin/busybox";
/// How long a registry gets to start listening.
const START_TIMEOUT: Duration = Duration::from_secs(20);

#[derive(Debug, thiserror::Error)]
#[error("{0}")]
pub struct TestSupportError(pub String);

type Result<T> = std::result::Result<T, TestSupportError>;

fn fail(what: impl std::fmt::Display) -> TestSupportError {
    TestSupportError(what.to_string())
}

/// Options for [`TestRegistry::start`]. Kept to one field so existing `{ auth: true }`
/// literals compile; token auth is [`TestRegistry::start_with`]`(`[`TestAuth::Token`]`)`.
#[derive(Clone, Debug)]
pub struct TestRegistryOptions {
    /// Require htpasswd basic auth (`username`/`password` below).
    pub auth: bool,
}

impl Default for TestRegistryOptions {
    fn default() -> Self {
        Self { auth: true }
    }
}

/// How a [`TestRegistry`] decides who may pull and push.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub enum TestAuth {
    /// Anyone may.
    None,
    /// HTTP basic auth against an htpasswd file on every request.
    #[default]
    Htpasswd,
    /// Docker's token flow: 401 with a `Bearer` challenge, a token server on 127.0.0.1 that
    /// checks `username`/`password` and issues ES256 JWTs scoped to repositories, the
    /// registry verifying them. Anonymous clients get tokens without access, as on Docker
    /// Hub.
    Token,
}

impl From<TestRegistryOptions> for TestAuth {
    fn from(opts: TestRegistryOptions) -> Self {
        if opts.auth {
            Self::Htpasswd
        } else {
            Self::None
        }
    }
}

/// A running `docker-registry`, killed on drop.
#[derive(Debug)]
pub struct TestRegistry {
    pub addr: SocketAddr,
    pub ca_pem: String,
    pub ca_file: PathBuf,
    pub username: String,
    pub password: String,
    /// The registry's storage root (to corrupt blobs in tests).
    pub storage: PathBuf,
    auth: TestAuth,
    child: Option<Child>,
    /// Dropped after the registry is stopped (fields drop after `Drop::drop`).
    token_server: Option<token::TokenServer>,
    dir: tempfile::TempDir,
}

/// `Err(what is missing)` if this machine cannot run a [`TestRegistry`].
pub fn registry_available() -> Result<()> {
    if !Path::new(REGISTRY_BIN).exists() {
        return Err(fail(format!(
            "{REGISTRY_BIN} is missing (apt-get install docker-registry)"
        )));
    }
    match Command::new(HTPASSWD_BIN).arg("-h").output() {
        Ok(_) => Ok(()),
        Err(_) => Err(fail("htpasswd is missing (apt-get install apache2-utils)")),
    }
}

impl TestRegistry {
    /// Starts a registry on a free loopback port and waits until it accepts connections.
    pub fn start(opts: TestRegistryOptions) -> Result<Self> {
        Self::start_with(opts.into())
    }

    /// [`TestRegistry::start`] with any [`TestAuth`], bearer tokens included.
    pub fn start_with(auth: TestAuth) -> Result<Self> {
        registry_available()?;
        let dir = tempfile::tempdir().map_err(fail)?;
        let path = |n: &str| dir.path().join(n);

        let (ca_pem, cert_pem, key_pem) = test_ca()?;
        std::fs::write(path("ca.pem"), &ca_pem).map_err(fail)?;
        std::fs::write(path("cert.pem"), &cert_pem).map_err(fail)?;
        std::fs::write(path("key.pem"), &key_pem).map_err(fail)?;

        let username = "kedge".to_owned();
        let password = "s3cret-pass".to_owned();
        let out = Command::new(HTPASSWD_BIN)
            .args(["-Bbn", &username, &password])
            .output()
            .map_err(fail)?;
        if !out.status.success() {
            return Err(fail(format!(
                "htpasswd failed: {}",
                String::from_utf8_lossy(&out.stderr)
            )));
        }
        std::fs::write(path("htpasswd"), &out.stdout).map_err(fail)?;

        let port = {
            let l = TcpListener::bind("127.0.0.1:0").map_err(fail)?;
            l.local_addr().map_err(fail)?.port()
        };
        let addr: SocketAddr = ([127, 0, 0, 1], port).into();
        let storage = path("storage");
        std::fs::create_dir_all(&storage).map_err(fail)?;
        let token_server = match auth {
            TestAuth::Token => Some(token::TokenServer::start(&username, &password)?),
            TestAuth::None | TestAuth::Htpasswd => None,
        };
        let auth_yaml = match (auth, &token_server) {
            (TestAuth::Htpasswd, _) => format!(
                "auth:\n  htpasswd:\n    realm: kedge-test\n    path: {}\n",
                path("htpasswd").display()
            ),
            (TestAuth::Token, Some(server)) => {
                std::fs::write(path("token-signer.pem"), &server.cert_pem).map_err(fail)?;
                format!(
                    "auth:\n  token:\n    realm: {realm}\n    service: {service}\n    \
                     issuer: {issuer}\n    rootcertbundle: {bundle}\n",
                    realm = server.realm(),
                    service = token::SERVICE,
                    issuer = token::ISSUER,
                    bundle = path("token-signer.pem").display(),
                )
            }
            _ => String::new(),
        };
        let config = format!(
            "version: 0.1\nlog:\n  level: error\n  accesslog:\n    disabled: true\n\
             storage:\n  filesystem:\n    rootdirectory: {storage}\n  delete:\n    enabled: true\n\
             http:\n  addr: {addr}\n  secret: kedge-test-secret\n  tls:\n    certificate: {cert}\n    key: {key}\n\
             {auth_yaml}",
            storage = storage.display(),
            cert = path("cert.pem").display(),
            key = path("key.pem").display(),
        );
        std::fs::write(path("config.yml"), config).map_err(fail)?;
        let log = std::fs::File::create(path("registry.log")).map_err(fail)?;
        let log2 = log.try_clone().map_err(fail)?;
        let child = Command::new(REGISTRY_BIN)
            .arg("serve")
            .arg(path("config.yml"))
            .stdin(Stdio::null())
            .stdout(log)
            .stderr(log2)
            .spawn()
            .map_err(fail)?;
        let mut registry = Self {
            addr,
            ca_pem,
            ca_file: path("ca.pem"),
            username,
            password,
            storage,
            auth,
            child: Some(child),
            token_server,
            dir,
        };
        registry.wait_ready()?;
        Ok(registry)
    }

    fn wait_ready(&mut self) -> Result<()> {
        let deadline = Instant::now() + START_TIMEOUT;
        while Instant::now() < deadline {
            if let Some(child) = self.child.as_mut()
                && let Ok(Some(status)) = child.try_wait()
            {
                return Err(fail(format!(
                    "docker-registry exited with {status}: {}",
                    self.log()
                )));
            }
            if TcpStream::connect_timeout(&self.addr, Duration::from_millis(200)).is_ok() {
                return Ok(());
            }
            std::thread::sleep(Duration::from_millis(50));
        }
        Err(fail(format!(
            "docker-registry did not listen on {} within {START_TIMEOUT:?}: {}",
            self.addr,
            self.log()
        )))
    }

    /// The registry's own log, for failure messages.
    pub fn log(&self) -> String {
        let mut s = String::new();
        if let Ok(mut f) = std::fs::File::open(self.dir.path().join("registry.log")) {
            let _ = f.read_to_string(&mut s);
        }
        s
    }

    /// `127.0.0.1:<port>`, the registry part of references.
    pub fn host(&self) -> String {
        self.addr.to_string()
    }

    /// `127.0.0.1:<port>/<path>` parsed.
    pub fn reference(&self, path: &str) -> Reference {
        Reference::parse(&format!("{}/{path}", self.host()))
            .unwrap_or_else(|e| panic!("test reference {path:?}: {e}"))
    }

    /// What the token server answered so far, oldest first (empty unless [`TestAuth::Token`]).
    pub fn token_requests(&self) -> Vec<TokenRequest> {
        self.token_server
            .as_ref()
            .map(token::TokenServer::requests)
            .unwrap_or_default()
    }

    pub fn credential(&self) -> Credential {
        Credential::basic(&self.username, &self.password)
    }

    /// A node config trusting the test CA, with the registry's credential if `with_auth`.
    pub fn registries_config(&self, with_auth: bool) -> RegistriesConfig {
        let mut config = RegistriesConfig::default();
        config.configs.insert(
            self.host(),
            RegistryConfig {
                auth: with_auth.then(|| RegistryAuthConfig {
                    username: Some(self.username.clone()),
                    password: Some(self.password.clone()),
                    auth: None,
                }),
                tls: Some(TlsConfig {
                    ca_file: Some(self.ca_file.clone()),
                    ..TlsConfig::default()
                }),
            },
        );
        config
    }

    /// Stops the registry now (to prove later steps need no network).
    pub fn stop(&mut self) {
        if let Some(mut child) = self.child.take() {
            let _ = child.kill();
            let _ = child.wait();
        }
    }

    /// Where the registry keeps blob `digest` (overwrite it to serve corrupt content).
    pub fn blob_data_path(&self, digest: &str) -> PathBuf {
        let hex = digest.trim_start_matches("sha256:");
        self.storage
            .join("docker/registry/v2/blobs/sha256")
            .join(&hex[..2.min(hex.len())])
            .join(hex)
            .join("data")
    }

    fn client(&self) -> Result<(oci_client::Client, oci_client::secrets::RegistryAuth)> {
        let with_auth = self.auth != TestAuth::None;
        let client = crate::push::client_for(&self.registries_config(with_auth), &self.host())
            .map_err(fail)?;
        let auth = if with_auth {
            self.credential().to_oci()
        } else {
            oci_client::secrets::RegistryAuth::Anonymous
        };
        Ok((client, auth))
    }

    /// Uploads `data` as a blob of repository `repo` (e.g. `busybox`); returns its digest.
    pub async fn push_blob(&self, repo: &str, data: Vec<u8>) -> Result<String> {
        let (client, auth) = self.client()?;
        let r = crate::pull::to_oci_reference(&self.reference(repo));
        client
            .store_auth_if_needed(r.resolve_registry(), &auth)
            .await;
        let digest = sha256(&data);
        client.push_blob(&r, data, &digest).await.map_err(fail)?;
        Ok(digest)
    }

    /// Uploads a manifest (or index) under `reference` (`repo:tag`); returns its digest.
    pub async fn push_manifest(
        &self,
        reference: &str,
        body: Vec<u8>,
        media_type: &'static str,
    ) -> Result<String> {
        let (client, auth) = self.client()?;
        let r = crate::pull::to_oci_reference(&self.reference(reference));
        client
            .store_auth_if_needed(r.resolve_registry(), &auth)
            .await;
        let digest = sha256(&body);
        client
            .push_manifest_raw(
                &r,
                body,
                reqwest::header::HeaderValue::from_static(media_type),
            )
            .await
            .map_err(fail)?;
        Ok(digest)
    }

    /// Pushes a linux image for this node's architecture; returns the manifest digest.
    pub async fn push_oci_image(
        &self,
        reference: &str,
        layers: &[Vec<u8>],
        config: &OciConfig,
    ) -> Result<String> {
        Ok(self
            .push_oci_image_for(reference, layers, config, "linux", node_arch())
            .await?
            .0)
    }

    /// Pushes an image (gzip tar `layers`) for `os`/`arch`; returns the manifest digest and
    /// size (for an index entry).
    pub async fn push_oci_image_for(
        &self,
        reference: &str,
        layers: &[Vec<u8>],
        config: &OciConfig,
        os: &str,
        arch: &str,
    ) -> Result<(String, usize)> {
        let repo = reference
            .split([':', '@'])
            .next()
            .unwrap_or(reference)
            .to_owned();
        let mut diff_ids = Vec::new();
        let mut layer_descs = Vec::new();
        for layer in layers {
            let mut tar = Vec::new();
            flate2::read::GzDecoder::new(&layer[..])
                .read_to_end(&mut tar)
                .map_err(|e| fail(format!("test layers must be gzip tar: {e}")))?;
            diff_ids.push(sha256(&tar));
            let digest = self.push_blob(&repo, layer.clone()).await?;
            layer_descs.push(serde_json::json!({
                "mediaType": "application/vnd.oci.image.layer.v1.tar+gzip",
                "digest": digest,
                "size": layer.len(),
            }));
        }
        let config_json = serde_json::json!({
            "architecture": arch,
            "os": os,
            "config": {
                "Entrypoint": config.entrypoint,
                "Cmd": config.cmd,
                "Env": config.env,
                "WorkingDir": config.working_dir.clone().unwrap_or_default(),
                "User": config.user.clone().unwrap_or_default(),
            },
            "rootfs": {"type": "layers", "diff_ids": diff_ids},
        });
        let config_bytes = serde_json::to_vec(&config_json).map_err(fail)?;
        let config_size = config_bytes.len();
        let config_digest = self.push_blob(&repo, config_bytes).await?;
        let manifest = serde_json::json!({
            "schemaVersion": 2,
            "mediaType": "application/vnd.oci.image.manifest.v1+json",
            "config": {
                "mediaType": "application/vnd.oci.image.config.v1+json",
                "digest": config_digest,
                "size": config_size,
            },
            "layers": layer_descs,
        });
        let body = serde_json::to_vec(&manifest).map_err(fail)?;
        let size = body.len();
        let digest = self
            .push_manifest(
                reference,
                body,
                "application/vnd.oci.image.manifest.v1+json",
            )
            .await?;
        Ok((digest, size))
    }
}

impl Drop for TestRegistry {
    fn drop(&mut self) {
        self.stop();
    }
}

fn sha256(bytes: &[u8]) -> String {
    format!("sha256:{}", hex::encode(Sha256::digest(bytes)))
}

/// A fresh CA and a server certificate for `localhost`/`127.0.0.1` signed by it, as PEM
/// (ca, cert, key).
fn test_ca() -> Result<(String, String, String)> {
    use rcgen::{
        BasicConstraints, CertificateParams, CertifiedIssuer, DnType, ExtendedKeyUsagePurpose,
        IsCa, KeyPair, KeyUsagePurpose,
    };
    let ca_key = KeyPair::generate().map_err(fail)?;
    let mut ca_params = CertificateParams::new(Vec::<String>::new()).map_err(fail)?;
    ca_params.is_ca = IsCa::Ca(BasicConstraints::Unconstrained);
    ca_params
        .distinguished_name
        .push(DnType::CommonName, "kedge test CA");
    ca_params.key_usages = vec![
        KeyUsagePurpose::KeyCertSign,
        KeyUsagePurpose::CrlSign,
        KeyUsagePurpose::DigitalSignature,
    ];
    let ca = CertifiedIssuer::self_signed(ca_params, ca_key).map_err(fail)?;
    let key = KeyPair::generate().map_err(fail)?;
    let mut params = CertificateParams::new(vec!["localhost".to_owned(), "127.0.0.1".to_owned()])
        .map_err(fail)?;
    params
        .distinguished_name
        .push(DnType::CommonName, "kedge test registry");
    params.extended_key_usages = vec![ExtendedKeyUsagePurpose::ServerAuth];
    let cert = params.signed_by(&key, &ca).map_err(fail)?;
    Ok((ca.pem(), cert.pem(), key.serialize_pem()))
}

/// Commands the busybox layer links to `/bin/busybox`.
pub const BUSYBOX_APPLETS: &[&str] = &[
    "sh", "echo", "cat", "sleep", "ls", "env", "pwd", "id", "hostname", "true", "false", "wc",
];

/// A gzip tar layer with a static `/bin/busybox`, applet symlinks, and the usual empty
/// directories: enough for real containers in tests.
pub fn busybox_image_layer() -> Result<Vec<u8>> {
    let busybox = std::fs::read(BUSYBOX_BIN).map_err(|e| {
        fail(format!(
            "{BUSYBOX_BIN}: {e} (apt-get install busybox-static)"
        ))
    })?;
    let mut builder = tar::Builder::new(Vec::new());
    let dir = |b: &mut tar::Builder<Vec<u8>>, p: &str, mode: u32| {
        let mut h = tar::Header::new_gnu();
        h.set_entry_type(tar::EntryType::Directory);
        h.set_mode(mode);
        h.set_size(0);
        b.append_data(&mut h, p, std::io::empty())
    };
    for (d, mode) in [
        ("bin", 0o755),
        ("etc", 0o755),
        ("tmp", 0o1777),
        ("proc", 0o555),
        ("sys", 0o555),
        ("dev", 0o755),
    ] {
        dir(&mut builder, d, mode).map_err(fail)?;
    }
    let mut h = tar::Header::new_gnu();
    h.set_entry_type(tar::EntryType::Regular);
    h.set_mode(0o755);
    h.set_size(busybox.len() as u64);
    builder
        .append_data(&mut h, "bin/busybox", &busybox[..])
        .map_err(fail)?;
    for applet in BUSYBOX_APPLETS {
        let mut h = tar::Header::new_gnu();
        h.set_entry_type(tar::EntryType::Symlink);
        h.set_mode(0o777);
        h.set_size(0);
        builder
            .append_link(&mut h, format!("bin/{applet}"), "busybox")
            .map_err(fail)?;
    }
    let mut h = tar::Header::new_gnu();
    let passwd = b"root:x:0:0:root:/root:/bin/sh\n";
    h.set_entry_type(tar::EntryType::Regular);
    h.set_mode(0o644);
    h.set_size(passwd.len() as u64);
    builder
        .append_data(&mut h, "etc/passwd", &passwd[..])
        .map_err(fail)?;
    let tar = builder.into_inner().map_err(fail)?;
    gzip(&tar)
}

/// Gzips `data` (test layers are compressed like real ones).
pub fn gzip(data: &[u8]) -> Result<Vec<u8>> {
    let mut gz = flate2::write::GzEncoder::new(Vec::new(), flate2::Compression::fast());
    gz.write_all(data).map_err(fail)?;
    gz.finish().map_err(fail)
}

/// A gzip tar layer with one file, for small distinct test images.
pub fn file_layer(path: &str, contents: &[u8]) -> Result<Vec<u8>> {
    let mut builder = tar::Builder::new(Vec::new());
    let mut h = tar::Header::new_gnu();
    h.set_entry_type(tar::EntryType::Regular);
    h.set_mode(0o644);
    h.set_size(contents.len() as u64);
    builder.append_data(&mut h, path, contents).map_err(fail)?;
    gzip(&builder.into_inner().map_err(fail)?)
}

/// A minimal valid core Wasm module with `tag` in a custom section (distinct digests).
pub fn wasm_module(tag: &str) -> Vec<u8> {
    wasm_module_sized(tag, 0)
}

/// A valid core Wasm module of at least `min_len` bytes (a padded custom section), to
/// exercise chunked uploads.
pub fn wasm_module_sized(tag: &str, min_len: usize) -> Vec<u8> {
    let name = b"kedge-test";
    let mut payload = tag.as_bytes().to_vec();
    payload.resize(payload.len().max(min_len), 0);
    let mut section = vec![name.len() as u8];
    section.extend_from_slice(name);
    section.extend_from_slice(&payload);
    let mut m = b"\0asm\x01\0\0\0".to_vec();
    m.push(0); // custom section id
    let mut size = section.len();
    loop {
        let byte = (size & 0x7f) as u8;
        size >>= 7;
        if size == 0 {
            m.push(byte);
            break;
        }
        m.push(byte | 0x80);
    }
    m.extend_from_slice(&section);
    m
}

/// A `docker save` archive (uncompressed layer tar, `<config-hex>.json`, `manifest.json`) of
/// the busybox image of [`busybox_image_layer`], named by `tags`: for `kedge image import`
/// and airgap tests.
pub fn busybox_docker_archive(tags: &[&str]) -> Result<Vec<u8>> {
    let mut layer = Vec::new();
    flate2::read::GzDecoder::new(&busybox_image_layer()?[..])
        .read_to_end(&mut layer)
        .map_err(fail)?;
    let config = serde_json::to_vec(&serde_json::json!({
        "architecture": node_arch(),
        "os": "linux",
        "config": {"Cmd": ["sh"], "Env": ["PATH=/bin"]},
        "rootfs": {"type": "layers", "diff_ids": [sha256(&layer)]},
    }))
    .map_err(fail)?;
    let config_name = format!("{}.json", sha256(&config).trim_start_matches("sha256:"));
    let manifest = serde_json::to_vec(&serde_json::json!([{
        "Config": config_name, "RepoTags": tags, "Layers": ["l1/layer.tar"],
    }]))
    .map_err(fail)?;
    let mut builder = tar::Builder::new(Vec::new());
    for (path, data) in [
        ("l1/layer.tar", &layer[..]),
        (config_name.as_str(), &config[..]),
        ("manifest.json", &manifest[..]),
    ] {
        let mut h = tar::Header::new_ustar();
        h.set_mode(0o644);
        h.set_size(data.len() as u64);
        builder.append_data(&mut h, path, data).map_err(fail)?;
    }
    builder.into_inner().map_err(fail)
}
