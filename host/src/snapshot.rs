//! Operations on the datastore as a whole: `kedge snapshot save` (a consistent copy of a
//! running cluster's store, through the API), `kedge snapshot restore` (a stopped cluster's
//! store replaced by a copy) and `kedge datastore migrate` (a cluster on the embedded store
//! moved onto etcd, as K3s moves SQLite onto etcd).
//!
//! A snapshot is the backend's own format, so no tool of kedge's is needed to read it: a redb
//! file the embedded store opens as it is, or etcd's snapshot, which etcd's own tools restore.
//! Sealed values (encryption at rest) stay sealed in both: a snapshot holds no more plaintext
//! than the store does, and restoring it needs the same encryption keys.

use std::io::Write as _;
use std::path::{Path, PathBuf};
use std::sync::Arc;

use anyhow::Context as _;
use http_body_util::BodyExt as _;
use sha2::{Digest as _, Sha256};

use kedge_store::encryption::Encryption;
use kedge_store::{SnapshotInfo, Store as _};

/// What a snapshot file holds.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Format {
    /// A copy of the embedded store (redb).
    Redb,
    /// etcd's snapshot (bbolt, followed by the SHA-256 of what precedes it).
    Etcd,
}

impl std::fmt::Display for Format {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(match self {
            Format::Redb => "embedded store (redb)",
            Format::Etcd => "etcd",
        })
    }
}

/// redb's file magic (the first bytes of every redb file).
const REDB_MAGIC: [u8; 9] = [b'r', b'e', b'd', b'b', 0x1A, 0x0A, 0xA9, 0x0D, 0x0A];

/// What the snapshot file at `path` is, checked whole: a redb copy must open and record its
/// revision; an etcd snapshot must end with the SHA-256 of the rest (as `etcdctl snapshot
/// restore` checks). Anything else, or a copy cut short, is an error naming why.
pub fn inspect(path: &Path) -> anyhow::Result<(Format, Option<SnapshotInfo>)> {
    let mut file = std::fs::File::open(path).with_context(|| format!("{}", path.display()))?;
    let len = file.metadata()?.len();
    let mut head = [0u8; REDB_MAGIC.len()];
    let is_redb = std::io::Read::read_exact(&mut file, &mut head).is_ok() && head == REDB_MAGIC;
    if is_redb {
        let info = kedge_store::redb::inspect(path)
            .map_err(|e| anyhow::anyhow!("{}: {e}", path.display()))?;
        return Ok((Format::Redb, Some(info)));
    }
    // etcd's snapshot: a bbolt file (whole 4 KiB pages) and a 32-byte hash.
    if len < 32 || len % 512 != 32 {
        anyhow::bail!(
            "{} is neither a snapshot of kedge's embedded store nor an etcd snapshot",
            path.display()
        );
    }
    let mut file = std::fs::File::open(path)?;
    let mut hasher = Sha256::new();
    std::io::copy(
        &mut std::io::Read::take(&mut file, len - 32),
        &mut HashWriter(&mut hasher),
    )?;
    let mut want = [0u8; 32];
    std::io::Read::read_exact(&mut file, &mut want)?;
    if hasher.finalize().as_slice() != want {
        anyhow::bail!(
            "{}: etcd snapshot checksum mismatch (a copy cut short or damaged)",
            path.display()
        );
    }
    Ok((Format::Etcd, None))
}

struct HashWriter<'a>(&'a mut Sha256);

impl std::io::Write for HashWriter<'_> {
    fn write(&mut self, buf: &[u8]) -> std::io::Result<usize> {
        self.0.update(buf);
        Ok(buf.len())
    }
    fn flush(&mut self) -> std::io::Result<()> {
        Ok(())
    }
}

/// `kedge snapshot save FILE`: asks the server the kubeconfig names for a copy of its store
/// and writes it to `file` (mode 0600) once it is whole and checked; a transfer cut short
/// leaves no file behind.
pub async fn save(
    kubeconfig: &Path,
    file: &Path,
) -> anyhow::Result<(Format, Option<SnapshotInfo>)> {
    let client = crate::kubeclient::KubeClient::from_kubeconfig(kubeconfig)?;
    let mut conn = client.connect().await?;
    let resp = conn
        .send(
            http::Method::GET,
            "/kedge/snapshot",
            "application/json",
            None,
        )
        .await?;
    let status = resp.status();
    let mut body = resp.into_body();
    if !status.is_success() {
        let bytes = body.collect().await?.to_bytes();
        let message = serde_json::from_slice::<serde_json::Value>(&bytes)
            .ok()
            .and_then(|v| v.get("message").and_then(|m| m.as_str()).map(String::from))
            .unwrap_or_else(|| String::from_utf8_lossy(&bytes).into_owned());
        anyhow::bail!("the server refused the snapshot ({status}): {message}");
    }
    let mut part = file.as_os_str().to_os_string();
    part.push(".part");
    let part = PathBuf::from(part);
    let _ = std::fs::remove_file(&part);
    let written = async {
        kedge_store::fsmode::private_file(&part)?;
        let mut out = std::fs::OpenOptions::new().write(true).open(&part)?;
        while let Some(frame) = body.frame().await {
            let frame = frame.context("the transfer was cut short")?;
            if let Some(data) = frame.data_ref() {
                out.write_all(data)?;
            }
        }
        out.sync_all()?;
        let checked = inspect(&part)?;
        std::fs::rename(&part, file)?;
        anyhow::Ok(checked)
    }
    .await;
    if written.is_err() {
        let _ = std::fs::remove_file(&part);
    }
    written.with_context(|| format!("writing {}", file.display()))
}

/// Kubernetes' advice for etcd restores (`etcdutl snapshot restore --bump-revision`): far
/// beyond any revision written between a snapshot and its restore.
pub const DEFAULT_BUMP: u64 = 1_000_000_000;

/// `kedge snapshot restore FILE` of an embedded-store snapshot into `data_dir` (its server
/// stopped). Returns the line to print.
pub fn restore_redb(file: &Path, data_dir: &Path, bump: u64) -> anyhow::Result<String> {
    let target = data_dir.join("state.redb");
    let (r, kept) = kedge_store::redb::restore(file, &target, bump)
        .map_err(|e| anyhow::anyhow!("restoring {}: {e}", file.display()))?;
    let mut line = format!(
        "restored {} objects of revision {} into {}; the store continues at revision {} (watches from before it get 410 and relist)",
        r.objects,
        r.snapshot,
        target.display(),
        r.revision
    );
    if let Some(k) = kept {
        line.push_str(&format!("; the replaced store is kept as {}", k.display()));
    }
    Ok(line)
}

/// Where an etcd snapshot is restored to: one member's new data dir and the cluster it
/// starts (etcd's `snapshot restore` flags; run once per member with its own name).
pub struct EtcdMember {
    pub data_dir: PathBuf,
    pub name: String,
    pub initial_cluster: String,
    pub initial_advertise_peer_urls: String,
}

/// `kedge snapshot restore FILE` of an etcd snapshot: etcd's own tool writes the member's
/// data dir (etcdutl, or etcdctl of etcd 3.4, which has no revision bump: kedge then answers a
/// watch from beyond the store's revision with 410 so clients relist all the same).
pub fn restore_etcd(file: &Path, member: &EtcdMember, bump: u64) -> anyhow::Result<String> {
    if member.data_dir.exists() {
        anyhow::bail!(
            "--etcd-data-dir {} exists: etcd restores into a new directory",
            member.data_dir.display()
        );
    }
    let have = |tool: &str| {
        std::process::Command::new(tool)
            .arg("version")
            .output()
            .is_ok_and(|o| o.status.success())
    };
    let (tool, bumps) = if have("etcdutl") {
        ("etcdutl", true)
    } else if have("etcdctl") {
        ("etcdctl", false)
    } else {
        anyhow::bail!(
            "restoring an etcd snapshot needs etcd's etcdutl or etcdctl (Debian: apt-get install etcd-client)"
        );
    };
    let mut cmd = std::process::Command::new(tool);
    cmd.env("ETCDCTL_API", "3")
        .args(["snapshot", "restore"])
        .arg(file)
        .arg("--data-dir")
        .arg(&member.data_dir)
        .args(["--name", &member.name])
        .args(["--initial-cluster", &member.initial_cluster])
        .args([
            "--initial-advertise-peer-urls",
            &member.initial_advertise_peer_urls,
        ]);
    if bumps {
        cmd.args(["--bump-revision", &bump.to_string(), "--mark-compacted"]);
    }
    let out = cmd.output().with_context(|| format!("running {tool}"))?;
    if !out.status.success() {
        anyhow::bail!(
            "{tool} snapshot restore failed: {}",
            String::from_utf8_lossy(&out.stderr).trim()
        );
    }
    Ok(format!(
        "restored the etcd snapshot into {} for member {} ({tool}{}); start that etcd member on it, then the kedge servers",
        member.data_dir.display(),
        member.name,
        if bumps {
            ", revision bumped and history marked compacted"
        } else {
            "; etcd 3.4 keeps the snapshot's revision: clients holding newer resourceVersions get 410 and relist"
        }
    ))
}

/// What `migrate` copied.
pub struct Migrated {
    pub objects: u64,
    /// The embedded store's revision the copy was consistent at.
    pub from_revision: u64,
    /// etcd's revision after the copy.
    pub to_revision: u64,
}

/// The key a migration holds in etcd while it runs: a server refuses to start on a key root
/// holding it, and a migration finding it resumes there (the root is its own, half filled).
pub fn migration_marker() -> String {
    kedge_store::key("kedge-internal", "migrations", "", "in-progress")
}

/// `kedge datastore migrate --to URLS`: copies every object of the embedded store in
/// `data_dir` (its server stopped) into etcd under the options' key root, which must hold
/// nothing yet — or what a migration that did not finish left there (its marker, see
/// [`migration_marker`]): then it goes on, skipping what is already copied. Objects keep
/// their names, UIDs and contents; their resourceVersions become etcd's revisions (clients
/// relist). The embedded store is left as it was.
pub fn migrate(
    data_dir: &Path,
    encryption: Arc<Encryption>,
    etcd: kedge_store::etcd::Options,
) -> anyhow::Result<Migrated> {
    let path = data_dir.join("state.redb");
    if !path.exists() {
        anyhow::bail!("{} does not exist: nothing to migrate", path.display());
    }
    let redb = kedge_store::redb::RedbStore::open(
        &path,
        kedge_store::redb::Options {
            encryption: encryption.clone(),
            lock_wait: std::time::Duration::ZERO,
            ..Default::default()
        },
    )
    .map_err(|e| anyhow::anyhow!("{e}"))?;
    let endpoints = etcd.endpoints.join(",");
    let root = etcd.root.clone();
    let target = kedge_store::etcd::EtcdStore::connect(kedge_store::etcd::Options {
        encryption,
        compact_interval: None,
        ..etcd
    })
    .map_err(|e| anyhow::anyhow!("connecting to etcd at {endpoints}: {e}"))?;
    let marker = migration_marker();
    let unfinished = target.get(&marker).map_err(|e| anyhow::anyhow!("{e}"))?;
    let resuming = unfinished.is_some();
    let mut occupied = None;
    target
        .scan("", None, &mut |key, _| {
            occupied = Some(key.to_string());
            Ok(false)
        })
        .map_err(|e| anyhow::anyhow!("{e}"))?;
    if resuming {
        tracing::info!(%endpoints, %root, "an earlier migration did not finish: going on where it stopped");
    } else if let Some(key) = occupied {
        anyhow::bail!(
            "etcd at {endpoints} already holds objects under {root} ({key}, …): migrate into an empty key root (--datastore-prefix)"
        );
    }
    let mut snapshot = redb.snapshot("").map_err(|e| anyhow::anyhow!("{e}"))?;
    let from_revision = snapshot.revision();
    match &unfinished {
        // What the unfinished run copied must be what is copied now: the same store at the
        // same revision (its server not started meanwhile), or stale copies would stay.
        Some(m) => {
            let then = m.get("fromRevision").and_then(serde_json::Value::as_u64);
            if then != Some(from_revision) {
                anyhow::bail!(
                    "the embedded store changed since the migration that did not finish (revision {}, now {from_revision}): empty the key root {root} in etcd (etcdctl del --prefix {root}) and migrate again",
                    then.map_or("unknown".into(), |r| r.to_string())
                );
            }
        }
        None => {
            let record = serde_json::json!({"apiVersion": "kedge.io/v1", "kind": "Migration",
                "metadata": {"name": "in-progress"},
                "from": path.display().to_string(),
                "fromRevision": from_revision,
                "startedAt": chrono::Utc::now().to_rfc3339()});
            target
                .create(&marker, record)
                .map_err(|e| anyhow::anyhow!("marking the migration in etcd: {e}"))?;
        }
    }
    let mut objects = 0u64;
    loop {
        let chunk = snapshot
            .next_chunk()
            .map_err(|e| anyhow::anyhow!("reading the embedded store: {e}"))?;
        if chunk.is_empty() {
            break;
        }
        for (key, bytes) in chunk {
            let object = kedge_store::decode(&key, &bytes).map_err(|e| anyhow::anyhow!("{e}"))?;
            match target.create(&key, object) {
                Ok(_) => {}
                // Copied by the run that did not finish (the source has not changed since:
                // its server is stopped).
                Err(kedge_store::Error::AlreadyExists) if resuming => {}
                Err(e) => {
                    anyhow::bail!("writing {key} to etcd: {e} (run the migration again to go on)")
                }
            }
            objects += 1;
        }
    }
    target
        .delete(&marker, None)
        .map_err(|e| anyhow::anyhow!("completing the migration in etcd: {e}"))?;
    Ok(Migrated {
        objects,
        from_revision,
        to_revision: target.revision(),
    })
}
