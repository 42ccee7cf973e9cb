//! `kedge push FILE.wasm REF`: publishes a Wasm module or component as an OCI artifact, so
//! pods can name it as their image.

use std::path::{Path, PathBuf};

use anyhow::Context as _;
use kedge_registry::{Credential, Keyring, Reference, RegistriesConfig};

#[derive(Debug, Default)]
pub struct PushOptions {
    pub username: Option<String>,
    pub password: Option<String>,
    pub docker_config: Option<PathBuf>,
    pub ca_file: Option<PathBuf>,
    pub insecure_skip_tls_verify: bool,
    pub registries_config: Option<PathBuf>,
}

fn docker_config_path() -> Option<PathBuf> {
    if let Some(dir) = std::env::var_os("DOCKER_CONFIG") {
        return Some(PathBuf::from(dir).join("config.json"));
    }
    std::env::var_os("HOME").map(|h| PathBuf::from(h).join(".docker/config.json"))
}

/// The credential for `reference`: flags first, then the docker config file, then the
/// registries config, else anonymous.
fn credential(
    opts: &PushOptions,
    reference: &Reference,
    config: &RegistriesConfig,
) -> anyhow::Result<Credential> {
    match (&opts.username, &opts.password) {
        (Some(u), Some(p)) => return Ok(Credential::basic(u, p)),
        (Some(_), None) => {
            anyhow::bail!("--username needs --password (or KEDGE_REGISTRY_PASSWORD)")
        }
        (None, Some(_)) => anyhow::bail!("--password needs --username"),
        (None, None) => {}
    }
    let path = opts.docker_config.clone().or_else(docker_config_path);
    if let Some(path) = path {
        let keyring = Keyring::from_docker_config_file(&path)
            .with_context(|| format!("reading {}", path.display()))?;
        if let Some(c) = keyring.lookup(reference).into_iter().next() {
            return Ok(c);
        }
    }
    Ok(config
        .credential(reference.registry())
        .unwrap_or(Credential::Anonymous))
}

pub async fn push(file: &Path, reference: &str, opts: PushOptions) -> anyhow::Result<String> {
    kedge_tunnel::install_crypto_provider();
    let reference = Reference::parse(reference).context("image reference")?;
    if reference.digest().is_some() {
        anyhow::bail!(
            "push to a tag, not a digest: the registry computes the digest ({reference})"
        );
    }
    let bytes = std::fs::read(file).with_context(|| format!("reading {}", file.display()))?;
    let mut config = match &opts.registries_config {
        Some(p) => RegistriesConfig::load(p)
            .with_context(|| format!("--registries-config {}", p.display()))?,
        None => RegistriesConfig::default(),
    };
    if opts.ca_file.is_some() || opts.insecure_skip_tls_verify {
        let entry = config
            .configs
            .entry(reference.registry().to_string())
            .or_default();
        let tls = entry.tls.get_or_insert_with(Default::default);
        if let Some(ca) = &opts.ca_file {
            tls.ca_file = Some(ca.clone());
        }
        tls.insecure_skip_verify |= opts.insecure_skip_tls_verify;
    }
    let credential = credential(&opts, &reference, &config)?;
    let bar = indicatif::ProgressBar::new(bytes.len() as u64);
    bar.set_style(
        indicatif::ProgressStyle::with_template(
            "{msg} [{bar:30}] {bytes}/{total_bytes} {bytes_per_sec}",
        )
        .expect("valid template")
        .progress_chars("=> "),
    );
    bar.set_message(format!("pushing {}", file.display()));
    let digest = kedge_registry::push_wasm(&reference, &bytes, &credential, &config, |sent, _| {
        bar.set_position(sent)
    })
    .await;
    bar.finish_and_clear();
    let digest = digest.with_context(|| format!("pushing to {reference}"))?;
    eprintln!(
        "pushed {} ({} bytes) to {reference}",
        file.display(),
        bytes.len()
    );
    Ok(digest)
}
