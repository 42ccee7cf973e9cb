//! The Secrets and ConfigMaps this node's pods use (env `valueFrom` and `envFrom`, `configMap`,
//! `secret` and `projected` volumes, `imagePullSecrets`): read through the API when a
//! container starts, and kept in the node's own store (`<data-dir>/object-cache/`, files of
//! mode 0600) so that a pod started while the server is unreachable — after the agent's own
//! restart, or a crash under `restartPolicy` — gets the same environment and files. The store
//! is refreshed while the server is reachable, and an object no recorded pod uses any more is
//! deleted from it.
//!
//! The files of `configMap`, `secret` and `projected` volumes are laid out as kubelet's
//! AtomicWriter does (see [`write_volume`]) and rewritten, while the pod runs, when its objects
//! change (the agent's periodic refresh, [`super::OBJECT_REFRESH`]): a container sees the new
//! files at once, all together. A file mounted by `subPath` keeps the content it had when its
//! container started, as in Kubernetes.
//!
//! Resolving what a container needs and turning objects into its environment and volume files
//! are pure functions, tested without a server.

use std::collections::{BTreeMap, BTreeSet, HashMap};
use std::path::{Path, PathBuf};
use std::sync::{Arc, Mutex, Weak};

use base64::Engine as _;
use serde_json::Value;

use super::client::Client;

pub use kedge_core::pod::{Kind, ObjRef, container_refs, volume_refs};

fn arr(v: &Value) -> &[Value] {
    v.as_array().map(Vec::as_slice).unwrap_or_default()
}

/// Everything `pod` names: what the store keeps for it.
pub(crate) fn pod_refs(pod: &Value) -> BTreeSet<ObjRef> {
    kedge_core::pod::referenced_objects(pod)
}

/// The objects a container start resolved; `None`: it does not exist.
#[derive(Default, Debug)]
pub struct Objects(HashMap<ObjRef, Option<Value>>);

impl Objects {
    #[cfg(test)]
    pub(crate) fn from_list(objs: impl IntoIterator<Item = (Kind, Value)>) -> Self {
        Objects(
            objs.into_iter()
                .map(|(kind, o)| {
                    use kedge_core::meta;
                    let r = ObjRef {
                        kind,
                        ns: meta::namespace(&o).to_string(),
                        name: meta::name(&o).to_string(),
                    };
                    (r, Some(o))
                })
                .collect(),
        )
    }

    /// The object's keys and values: a Secret's `data` decoded, a ConfigMap's `data` (and
    /// `binaryData` decoded, for volumes). `None` when the object does not exist (or was not
    /// resolved).
    fn data(
        &self,
        kind: Kind,
        ns: &str,
        name: &str,
        binary: bool,
    ) -> Result<Option<BTreeMap<String, Vec<u8>>>, String> {
        let r = ObjRef {
            kind,
            ns: ns.to_string(),
            name: name.to_string(),
        };
        let Some(Some(obj)) = self.0.get(&r) else {
            return Ok(None);
        };
        let b64 = |k: &str, v: &Value| {
            base64::engine::general_purpose::STANDARD
                .decode(v.as_str().unwrap_or_default())
                .map_err(|e| format!("{r}: key {k:?} is not base64: {e}"))
        };
        let mut out = BTreeMap::new();
        let obj_map = |k: &str| obj[k].as_object().cloned().unwrap_or_default();
        match kind {
            Kind::Secret => {
                for (k, v) in obj_map("data") {
                    let bytes = b64(&k, &v)?;
                    out.insert(k, bytes);
                }
                // Written by a server that did not fold stringData into data.
                for (k, v) in obj_map("stringData") {
                    out.insert(k, v.as_str().unwrap_or_default().as_bytes().to_vec());
                }
            }
            Kind::ConfigMap => {
                for (k, v) in obj_map("data") {
                    out.insert(k, v.as_str().unwrap_or_default().as_bytes().to_vec());
                }
                if binary {
                    for (k, v) in obj_map("binaryData") {
                        let bytes = b64(&k, &v)?;
                        out.insert(k, bytes);
                    }
                }
            }
        }
        Ok(Some(out))
    }
}

fn not_found(kind: Kind, name: &str) -> String {
    format!("{} {name:?} not found", kind.word())
}

/// kubelet's rule for names taken from `envFrom`: a C identifier, dots and dashes allowed.
fn valid_env_name(n: &str) -> bool {
    let mut chars = n.chars();
    chars
        .next()
        .is_some_and(|c| c.is_ascii_alphabetic() || matches!(c, '_' | '-' | '.'))
        && chars.all(|c| c.is_ascii_alphanumeric() || matches!(c, '_' | '-' | '.'))
}

/// One `configMapKeyRef` / `secretKeyRef`: the value, or `None` when it is optional and
/// missing (the variable is then left out, as kubelet does).
pub(crate) fn key_ref(
    objects: &Objects,
    kind: Kind,
    ns: &str,
    sel: &Value,
) -> Result<Option<String>, String> {
    let name = sel["name"].as_str().unwrap_or_default();
    let key = sel["key"].as_str().unwrap_or_default();
    let optional = sel["optional"].as_bool().unwrap_or(false);
    match objects.data(kind, ns, name, false)? {
        None if optional => Ok(None),
        None => Err(not_found(kind, name)),
        Some(data) => match data.get(key) {
            Some(v) => Ok(Some(String::from_utf8_lossy(v).into_owned())),
            None if optional => Ok(None),
            None => Err(format!(
                "couldn't find key {key} in {} {ns}/{name}",
                match kind {
                    Kind::ConfigMap => "ConfigMap",
                    Kind::Secret => "Secret",
                }
            )),
        },
    }
}

/// The variables of a container's `envFrom`, in order (later sources win, and `env` wins
/// over all of them). Keys that are no valid variable name are skipped, as kubelet does.
pub fn env_from(objects: &Objects, ns: &str, c: &Value) -> Result<Vec<(String, String)>, String> {
    let mut out = Vec::new();
    for src in arr(&c["envFrom"]) {
        let prefix = src["prefix"].as_str().unwrap_or_default();
        let (kind, sel) = if src.get("configMapRef").is_some() {
            (Kind::ConfigMap, &src["configMapRef"])
        } else if src.get("secretRef").is_some() {
            (Kind::Secret, &src["secretRef"])
        } else {
            continue;
        };
        let name = sel["name"].as_str().unwrap_or_default();
        match objects.data(kind, ns, name, false)? {
            None if sel["optional"].as_bool().unwrap_or(false) => {}
            None => return Err(not_found(kind, name)),
            Some(data) => {
                for (k, v) in data {
                    let var = format!("{prefix}{k}");
                    if !valid_env_name(&var) {
                        tracing::debug!(variable = %var, "envFrom: skipping an invalid variable name");
                        continue;
                    }
                    out.retain(|(n, _): &(String, String)| *n != var);
                    out.push((var, String::from_utf8_lossy(&v).into_owned()));
                }
            }
        }
    }
    Ok(out)
}

/// One file of a `configMap`, `secret` or `projected` volume.
#[derive(Clone, Debug, PartialEq, Eq)]
pub(crate) struct VolumeFile {
    /// Relative to the volume's directory.
    pub path: String,
    pub bytes: Vec<u8>,
    pub mode: u32,
}

/// Kubernetes' default file mode of these volumes (0644).
const DEFAULT_MODE: u32 = 0o644;

fn safe_relative(p: &str) -> bool {
    !p.is_empty()
        && !p.starts_with('/')
        && p.split('/').all(|c| !c.is_empty() && c != "." && c != "..")
        // Names starting with `..` are this module's own temporary files.
        && !p.starts_with("..")
}

/// The files of one source (a ConfigMap or Secret, all its keys or the listed `items`).
fn source_files(
    objects: &Objects,
    kind: Kind,
    ns: &str,
    name: &str,
    src: &Value,
    default_mode: u32,
    out: &mut Vec<VolumeFile>,
) -> Result<(), String> {
    let optional = src["optional"].as_bool().unwrap_or(false);
    let Some(data) = objects.data(kind, ns, name, true)? else {
        return if optional {
            Ok(())
        } else {
            Err(not_found(kind, name))
        };
    };
    let items = arr(&src["items"]);
    if items.is_empty() {
        for (k, v) in data {
            if !safe_relative(&k) {
                return Err(format!(
                    "{} {name:?}: key {k:?} is no file name",
                    kind.word()
                ));
            }
            out.push(VolumeFile {
                path: k,
                bytes: v,
                mode: default_mode,
            });
        }
        return Ok(());
    }
    for it in items {
        let key = it["key"].as_str().unwrap_or_default();
        let path = it["path"].as_str().unwrap_or_default();
        if !safe_relative(path) {
            return Err(format!(
                "{} {name:?}: item path {path:?} must be relative and stay inside the volume",
                kind.word()
            ));
        }
        let mode = it["mode"]
            .as_u64()
            .map_or(default_mode, |m| m as u32 & 0o777);
        match data.get(key) {
            Some(v) => out.push(VolumeFile {
                path: path.to_string(),
                bytes: v.clone(),
                mode,
            }),
            None if optional => {}
            None => {
                return Err(format!(
                    "{} {name:?} references non-existent key {key:?}",
                    kind.word()
                ));
            }
        }
    }
    Ok(())
}

/// The files of `volume` if it is a `configMap`, `secret` or `projected` one; `None` for
/// other volume types.
pub(crate) fn volume_files(
    objects: &Objects,
    info: &crate::downward::PodInfo,
    volume: &Value,
) -> Result<Option<Vec<VolumeFile>>, String> {
    let ns = kedge_core::meta::namespace(info.pod);
    let mode_of = |v: &Value| {
        v["defaultMode"]
            .as_u64()
            .map_or(DEFAULT_MODE, |m| m as u32 & 0o777)
    };
    let mut out = Vec::new();
    if let Some(cm) = volume.get("configMap") {
        let name = cm["name"].as_str().unwrap_or_default();
        source_files(
            objects,
            Kind::ConfigMap,
            ns,
            name,
            cm,
            mode_of(cm),
            &mut out,
        )?;
    } else if let Some(s) = volume.get("secret") {
        let name = s["secretName"].as_str().unwrap_or_default();
        source_files(objects, Kind::Secret, ns, name, s, mode_of(s), &mut out)?;
    } else if let Some(p) = volume.get("projected") {
        let mode = mode_of(p);
        for src in arr(&p["sources"]) {
            if let Some(cm) = src.get("configMap") {
                let name = cm["name"].as_str().unwrap_or_default();
                source_files(objects, Kind::ConfigMap, ns, name, cm, mode, &mut out)?;
            } else if let Some(s) = src.get("secret") {
                let name = s["name"].as_str().unwrap_or_default();
                source_files(objects, Kind::Secret, ns, name, s, mode, &mut out)?;
            } else if let Some(d) = src.get("downwardAPI") {
                out.extend(crate::downward::files(info, d, mode)?);
            } else {
                let kind = src
                    .as_object()
                    .and_then(|o| o.keys().next().cloned())
                    .unwrap_or_default();
                return Err(format!(
                    "volume {:?}: projected source {kind:?} is not supported by kedge yet \
                     (configMap, secret and downwardAPI are)",
                    volume["name"].as_str().unwrap_or_default()
                ));
            }
        }
    } else if let Some(d) = volume.get("downwardAPI") {
        out.extend(crate::downward::files(info, d, mode_of(d))?);
    } else {
        return Ok(None);
    }
    Ok(Some(out))
}

/// The link in a volume's directory to the timestamped directory holding its current files.
const DATA_LINK: &str = "..data";
/// The new [`DATA_LINK`], renamed over the old one.
const DATA_LINK_TMP: &str = "..data_tmp";

/// Makes `dir` hold exactly `files`, laid out as kubelet's AtomicWriter does so a container
/// never sees half an update: the files live in a timestamped directory
/// (`..2026_11_26_10_00_00.123456789`, named after `now`), `..data` is a symlink to it, and each
/// top-level name is a symlink into `..data` (`key -> ..data/key`). An update writes a new
/// timestamped directory, renames a new `..data` link over the old one (atomic), fixes the
/// top-level links and removes the old directory. All links are relative, so they resolve
/// inside a container that has the directory bind-mounted (or preopened) elsewhere.
///
/// Returns whether anything changed: a volume already holding exactly `files` (paths, bytes,
/// modes) is left alone, but for leftovers of an interrupted write (timestamped directories
/// and temporary links `..data` does not lead to), which every write removes. A timestamped
/// directory named in `pinned` stays: a container's `subPath` is bound into it (see
/// [`Volumes`]). With `create` false, a missing `dir` is an error instead of being created (a
/// refresh must not bring back the directory of a pod being removed).
///
/// Blocking file I/O, and one writer at a time per volume: callers go through
/// [`Volumes::with_pod`], which runs it on a blocking thread under the pod's lock.
fn write_volume(
    dir: &Path,
    files: &[VolumeFile],
    now: chrono::DateTime<chrono::Utc>,
    create: bool,
    pinned: &BTreeSet<String>,
) -> std::io::Result<bool> {
    use std::os::unix::fs::PermissionsExt as _;
    if create {
        std::fs::create_dir_all(dir)?;
    } else if !dir.is_dir() {
        return Err(std::io::Error::new(
            std::io::ErrorKind::NotFound,
            "the volume's directory is gone",
        ));
    }
    let want: BTreeMap<&str, (&[u8], u32)> = files
        .iter()
        .map(|f| (f.path.as_str(), (f.bytes.as_slice(), f.mode & 0o7777)))
        .collect();
    let top: BTreeSet<&str> = want
        .keys()
        .map(|p| p.split('/').next().unwrap_or(p))
        .collect();
    let old = std::fs::read_link(dir.join(DATA_LINK)).ok();
    if let Some(old) = &old
        && current_files(&dir.join(old)).is_some_and(|have| {
            have.len() == want.len()
                && have
                    .iter()
                    .all(|(p, (b, m))| want.get(p.as_str()) == Some(&(b.as_slice(), *m)))
        })
        && visible_links_match(dir, &top)
    {
        remove_stale(dir, &old.to_string_lossy(), &top, pinned);
        return Ok(false);
    }

    // The new timestamped directory, with every file.
    let stamp = now.format("..%Y_%m_%d_%H_%M_%S.%9f").to_string();
    let mut ts = stamp.clone();
    for n in 1.. {
        match std::fs::create_dir(dir.join(&ts)) {
            Ok(()) => break,
            Err(e) if e.kind() == std::io::ErrorKind::AlreadyExists => ts = format!("{stamp}_{n}"),
            Err(e) => return Err(e),
        }
    }
    let ts_dir = dir.join(&ts);
    let written = (|| -> std::io::Result<()> {
        std::fs::set_permissions(&ts_dir, std::fs::Permissions::from_mode(0o755))?;
        for (path, (bytes, mode)) in &want {
            let p = ts_dir.join(path);
            if let Some(parent) = p.parent() {
                std::fs::create_dir_all(parent)?;
            }
            std::fs::write(&p, bytes)?;
            std::fs::set_permissions(&p, std::fs::Permissions::from_mode(*mode))?;
        }
        // The switch: one rename.
        let tmp = dir.join(DATA_LINK_TMP);
        let _ = std::fs::remove_file(&tmp);
        std::os::unix::fs::symlink(&ts, &tmp)?;
        std::fs::rename(&tmp, dir.join(DATA_LINK))
    })();
    if let Err(e) = written {
        let _ = std::fs::remove_dir_all(&ts_dir);
        return Err(e);
    }

    // The names users see: a link into `..data` each (new names get one; files of the layout
    // kedge used before, plain files, are replaced), the names that went away removed, and
    // with them the old timestamped directory (unless pinned) and leftovers of interrupted
    // writes.
    for name in &top {
        let p = dir.join(name);
        let target = Path::new(DATA_LINK).join(name);
        if std::fs::read_link(&p).is_ok_and(|t| t == target) {
            continue;
        }
        if std::fs::symlink_metadata(&p).is_ok_and(|m| m.is_dir()) {
            std::fs::remove_dir_all(&p)?;
        }
        let tmp = dir.join(format!("..link_tmp.{name}"));
        let _ = std::fs::remove_file(&tmp);
        std::os::unix::fs::symlink(&target, &tmp)?;
        std::fs::rename(&tmp, &p)?;
    }
    remove_stale(dir, &ts, &top, pinned);
    Ok(true)
}

/// Removes from `dir` what is neither `..data`, its target `current`, a `pinned` timestamped
/// directory nor a name of `top`: old timestamped directories, temporary links left by an
/// interrupted write, names that went away.
fn remove_stale(dir: &Path, current: &str, top: &BTreeSet<&str>, pinned: &BTreeSet<String>) {
    let Ok(entries) = std::fs::read_dir(dir) else {
        return;
    };
    for e in entries.flatten() {
        let name = e.file_name().to_string_lossy().into_owned();
        let keep = if name.starts_with("..") {
            name == DATA_LINK || name == current || pinned.contains(&name)
        } else {
            top.contains(name.as_str())
        };
        if keep {
            continue;
        }
        let p = e.path();
        let removed = match e.file_type() {
            Ok(t) if t.is_dir() => std::fs::remove_dir_all(&p),
            _ => std::fs::remove_file(&p),
        };
        if let Err(err) = removed {
            tracing::debug!(path = %p.display(), error = %err, "removing an old volume file failed");
        }
    }
}

/// Who writes the `configMap`, `secret` and `projected` volumes of this node's pods, and which
/// of their old timestamped directories must stay.
///
/// A container start writes its pod's volumes, resolves each `subPath` into a volume's current
/// timestamped directory ([`super::spec::mounts`]) and pins that directory, all under the pod's
/// lock; the refresh writes under the same lock, and no write removes a pinned directory. The
/// pin lasts as long as the container's run: runc binds the resolved path only when it creates
/// the container, and a Wasm exec preopens it again at every exec. Without it a refresh between
/// the start's resolving and the mount would swap `..data`, remove the directory, and fail the
/// start. Once unpinned, a directory goes with the next write (the refresh's, at the latest).
#[derive(Default)]
pub(crate) struct Volumes {
    /// By pod uid; an entry lives while a writer or a pin holds it.
    pods: Mutex<HashMap<String, Weak<PodVolumes>>>,
}

#[derive(Default)]
struct PodVolumes {
    /// Held while the pod's volumes are written or a container's mounts resolved: the
    /// containers of a pod starting together and the refresh may write the same volume.
    writing: Arc<tokio::sync::Mutex<()>>,
    /// Timestamped directories (full paths) containers' runs are bound into, with how many
    /// runs each. Added to only under `writing`; a pin may go at any time.
    pinned: Mutex<HashMap<PathBuf, usize>>,
}

impl Volumes {
    fn pod(&self, uid: &str) -> Arc<PodVolumes> {
        let mut pods = self.pods.lock().unwrap_or_else(|p| p.into_inner());
        if let Some(p) = pods.get(uid).and_then(Weak::upgrade) {
            return p;
        }
        pods.retain(|_, w| w.strong_count() > 0);
        let p = Arc::new(PodVolumes::default());
        pods.insert(uid.to_string(), Arc::downgrade(&p));
        p
    }

    /// Runs `f` with the volumes of pod `uid` to itself: on a blocking thread (it does file
    /// I/O), under the pod's lock, which stays held until `f` returns even if the caller
    /// stops waiting. `now` names the timestamped directories written.
    pub(crate) async fn with_pod<T: Send + 'static>(
        &self,
        uid: &str,
        now: chrono::DateTime<chrono::Utc>,
        f: impl FnOnce(&mut VolumeWriter) -> T + Send + 'static,
    ) -> Result<T, String> {
        let pod = self.pod(uid);
        let guard = Arc::clone(&pod.writing).lock_owned().await;
        tokio::task::spawn_blocking(move || {
            let _guard = guard;
            f(&mut VolumeWriter {
                pod,
                now,
                written: Vec::new(),
            })
        })
        .await
        .map_err(|e| format!("writing the pod's volumes: {e}"))
    }
}

/// The pod's volumes, to one [`Volumes::with_pod`] at a time.
pub(crate) struct VolumeWriter {
    pod: Arc<PodVolumes>,
    now: chrono::DateTime<chrono::Utc>,
    /// The volume directories written, whose timestamped directories [`Self::pin`] may pin.
    written: Vec<PathBuf>,
}

impl VolumeWriter {
    /// Makes the volume `dir` hold exactly `files` (see [`write_volume`]), keeping the
    /// timestamped directories pinned in it. Returns whether anything changed.
    pub fn write(
        &mut self,
        dir: &Path,
        files: &[VolumeFile],
        create: bool,
    ) -> std::io::Result<bool> {
        let pinned: BTreeSet<String> = {
            let pins = self.pod.pinned.lock().unwrap_or_else(|p| p.into_inner());
            pins.keys()
                .filter(|p| p.parent() == Some(dir))
                .filter_map(|p| p.file_name())
                .map(|n| n.to_string_lossy().into_owned())
                .collect()
        };
        let changed = write_volume(dir, files, self.now, create, &pinned)?;
        self.written.push(dir.to_path_buf());
        Ok(changed)
    }

    /// Pins the timestamped directories of the volumes written here that `sources` (mount
    /// sources, as [`super::spec::mounts`] resolved them) lie in, until the returned
    /// [`Pins`] is dropped: no write removes them meanwhile.
    pub fn pin<'a>(&self, sources: impl IntoIterator<Item = &'a Path>) -> Pins {
        let volumes: Vec<(&PathBuf, PathBuf)> = self
            .written
            .iter()
            .filter_map(|d| Some((d, std::fs::canonicalize(d).ok()?)))
            .collect();
        let mut dirs = Vec::new();
        for source in sources {
            for (dir, real) in &volumes {
                // A subPath resolved into `<volume>/..<timestamp>/...`; the volume's own
                // directory (mounted whole) follows updates and needs no pin.
                let first = source
                    .strip_prefix(real)
                    .ok()
                    .and_then(|rest| rest.components().next());
                if let Some(std::path::Component::Normal(name)) = first
                    && name.to_string_lossy().starts_with("..")
                {
                    dirs.push(dir.join(name));
                }
            }
        }
        let mut pins = self.pod.pinned.lock().unwrap_or_else(|p| p.into_inner());
        for d in &dirs {
            *pins.entry(d.clone()).or_default() += 1;
        }
        Pins {
            pod: Arc::clone(&self.pod),
            dirs,
        }
    }
}

/// Timestamped volume directories a container's run is bound into; they may go once this is
/// dropped.
pub struct Pins {
    pod: Arc<PodVolumes>,
    dirs: Vec<PathBuf>,
}

impl Drop for Pins {
    fn drop(&mut self) {
        let mut pins = self.pod.pinned.lock().unwrap_or_else(|p| p.into_inner());
        for d in &self.dirs {
            if let Some(n) = pins.get_mut(d) {
                *n -= 1;
                if *n == 0 {
                    pins.remove(d);
                }
            }
        }
    }
}

/// Whether [`write_volume`] has written `dir` (a container of the pod has started with it).
pub(crate) fn volume_written(dir: &Path) -> bool {
    std::fs::symlink_metadata(dir.join(DATA_LINK)).is_ok()
}

/// The files under a volume's timestamped directory: path, bytes and mode. `None` if it
/// cannot be read.
fn current_files(ts_dir: &Path) -> Option<BTreeMap<String, (Vec<u8>, u32)>> {
    use std::os::unix::fs::PermissionsExt as _;
    fn walk(
        root: &Path,
        d: &Path,
        out: &mut BTreeMap<String, (Vec<u8>, u32)>,
    ) -> std::io::Result<()> {
        for e in std::fs::read_dir(d)? {
            let e = e?;
            let p = e.path();
            let meta = std::fs::symlink_metadata(&p)?;
            if meta.is_dir() {
                walk(root, &p, out)?;
            } else {
                let rel = p
                    .strip_prefix(root)
                    .unwrap_or(&p)
                    .to_string_lossy()
                    .into_owned();
                out.insert(
                    rel,
                    (std::fs::read(&p)?, meta.permissions().mode() & 0o7777),
                );
            }
        }
        Ok(())
    }
    let mut out = BTreeMap::new();
    walk(ts_dir, ts_dir, &mut out).ok()?;
    Some(out)
}

/// Whether the names users see in `dir` are exactly `top`, each a link into `..data`.
fn visible_links_match(dir: &Path, top: &BTreeSet<&str>) -> bool {
    let Ok(entries) = std::fs::read_dir(dir) else {
        return false;
    };
    let mut seen = 0;
    for e in entries.flatten() {
        let name = e.file_name().to_string_lossy().into_owned();
        if name.starts_with("..") {
            continue;
        }
        let target = Path::new(DATA_LINK).join(&name);
        if !top.contains(name.as_str()) || std::fs::read_link(e.path()).ok() != Some(target) {
            return false;
        }
        seen += 1;
    }
    seen == top.len()
}

/// The node's copies (`<data-dir>/object-cache/{configmaps,secrets}/<ns>_<name>.json`).
/// Secret copies are sealed with the node's cache key (see [`CacheKey`]); ConfigMaps are
/// kept as they are.
pub struct Store {
    dir: PathBuf,
    /// Saving and pruning exclude each other: a prune that read the pod records before a new
    /// pod was recorded must not delete what that pod's start just saved.
    lock: Mutex<()>,
    key: Option<CacheKey>,
}

/// What starts a sealed copy: then a 12-byte nonce and AES-256-GCM of the JSON, with the
/// copy's own name (`secrets/<ns>_<name>`) authenticated beside it, so a copy cannot be
/// passed off as another.
const SEALED: &[u8] = b"kedge:enc:aesgcm:v1:";

/// The key that seals Secret copies: 32 random bytes in `<data-dir>/object-cache.key` (mode
/// 0600), made on first use. It keeps the copies unreadable to whoever gets the cache
/// directory without that file (a backup, a copied disk image of the cache); root on the
/// running node can read both, as it can read the pods' secret volumes.
struct CacheKey(aes_gcm::Aes256Gcm);

impl CacheKey {
    fn load_or_create(path: &Path) -> Result<Self, String> {
        use aes_gcm::KeyInit as _;
        let bytes = match std::fs::read(path) {
            Ok(b) => b,
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => {
                let mut b = vec![0u8; 32];
                getrandom::fill(&mut b).map_err(|e| format!("no randomness: {e}"))?;
                kedge_tunnel::write_atomic(path, &b, 0o600).map_err(|e| e.to_string())?;
                b
            }
            Err(e) => return Err(e.to_string()),
        };
        aes_gcm::Aes256Gcm::new_from_slice(&bytes)
            .map(CacheKey)
            .map_err(|_| format!("{} is not a 32-byte key", path.display()))
    }

    fn seal(&self, aad: &[u8], plain: &[u8]) -> Result<Vec<u8>, String> {
        use aes_gcm::aead::{Aead as _, Payload};
        let mut nonce = [0u8; 12];
        getrandom::fill(&mut nonce).map_err(|e| format!("no randomness: {e}"))?;
        let sealed = self
            .0
            .encrypt(&nonce.into(), Payload { msg: plain, aad })
            .map_err(|_| "sealing failed".to_string())?;
        Ok([SEALED, &nonce[..], &sealed].concat())
    }

    fn open(&self, aad: &[u8], stored: &[u8]) -> Result<Vec<u8>, String> {
        use aes_gcm::aead::{Aead as _, Payload};
        let body = stored
            .strip_prefix(SEALED)
            .filter(|b| b.len() >= 12 + 16)
            .ok_or("not a sealed copy")?;
        let (nonce, sealed) = body.split_at(12);
        let nonce: [u8; 12] = nonce.try_into().expect("12 bytes");
        self.0
            .decrypt(&nonce.into(), Payload { msg: sealed, aad })
            .map_err(|_| "authentication failed (another node's key, or tampered)".to_string())
    }
}

fn safe_name(s: &str) -> bool {
    !s.is_empty()
        && !s.starts_with('.')
        && s.bytes()
            .all(|b| b.is_ascii_alphanumeric() || b == b'-' || b == b'.')
}

impl Store {
    pub fn new(data_dir: &Path) -> Self {
        let key_path = data_dir.join("object-cache.key");
        let key = match CacheKey::load_or_create(&key_path) {
            Ok(k) => Some(k),
            Err(e) => {
                // Without a key no Secret is kept on disk (they are read from the server).
                tracing::warn!(error = %e, "no object cache key: Secrets will not be kept for offline starts");
                None
            }
        };
        let store = Store {
            dir: data_dir.join("object-cache"),
            lock: Mutex::new(()),
            key,
        };
        store.seal_plain_copies();
        store
    }

    /// Seals the Secret copies an earlier agent kept in plaintext.
    fn seal_plain_copies(&self) {
        for r in self.list() {
            if r.kind != Kind::Secret {
                continue;
            }
            let Some(p) = self.path(&r) else { continue };
            let Ok(bytes) = std::fs::read(&p) else {
                continue;
            };
            if bytes.starts_with(SEALED) {
                continue;
            }
            match serde_json::from_slice::<Value>(&bytes) {
                Ok(obj) => self.write(&r, &obj, true),
                Err(_) => {
                    let _ = std::fs::remove_file(&p);
                }
            }
        }
    }

    /// What a copy's name authenticates (`secrets/<ns>_<name>`).
    fn aad(r: &ObjRef) -> String {
        format!("{}/{}_{}", r.kind.plural(), r.ns, r.name)
    }

    fn path(&self, r: &ObjRef) -> Option<PathBuf> {
        // Names and namespaces are DNS names; anything else must not become a path.
        (safe_name(&r.ns) && safe_name(&r.name)).then(|| {
            self.dir
                .join(r.kind.plural())
                .join(format!("{}_{}.json", r.ns, r.name))
        })
    }

    /// Keeps `obj` (temp file of mode 0600 + rename; the directories are 0700).
    pub(crate) fn save(&self, r: &ObjRef, obj: &Value) {
        self.write(r, obj, false);
    }

    /// [`save`](Self::save) only over an existing copy: a refresh must not bring back a copy
    /// pruned while it was asking the server.
    pub fn update(&self, r: &ObjRef, obj: &Value) {
        self.write(r, obj, true);
    }

    fn write(&self, r: &ObjRef, obj: &Value, only_existing: bool) {
        use std::os::unix::fs::DirBuilderExt as _;
        let Some(p) = self.path(r) else { return };
        let mut obj = obj.clone();
        if let Some(m) = obj["metadata"].as_object_mut() {
            m.remove("managedFields");
        }
        let _g = self.lock.lock().unwrap_or_else(|p| p.into_inner());
        if only_existing && !p.exists() {
            return;
        }
        let write = || -> Result<(), String> {
            let parent = p.parent().expect("a file in a directory");
            std::fs::DirBuilder::new()
                .recursive(true)
                .mode(0o700)
                .create(parent)
                .map_err(|e| e.to_string())?;
            let mut bytes = serde_json::to_vec(&obj).map_err(|e| e.to_string())?;
            if r.kind == Kind::Secret {
                let Some(key) = &self.key else {
                    return Err("no cache key to seal a Secret with".into());
                };
                bytes = key.seal(Self::aad(r).as_bytes(), &bytes)?;
            }
            kedge_tunnel::write_atomic(&p, &bytes, 0o600).map_err(|e| e.to_string())
        };
        if let Err(e) = write() {
            tracing::warn!(object = %r, error = %e, "could not keep a local copy");
        }
    }

    pub fn load(&self, r: &ObjRef) -> Option<Value> {
        let p = self.path(r)?;
        let bytes = std::fs::read(p).ok()?;
        let bytes = if bytes.starts_with(SEALED) {
            match self.key.as_ref()?.open(Self::aad(r).as_bytes(), &bytes) {
                Ok(b) => b,
                Err(e) => {
                    tracing::warn!(object = %r, error = %e, "a local copy cannot be opened");
                    return None;
                }
            }
        } else {
            // A ConfigMap, or an earlier agent's plaintext Secret copy (sealed at start).
            bytes
        };
        serde_json::from_slice(&bytes).ok()
    }

    pub fn remove(&self, r: &ObjRef) {
        if let Some(p) = self.path(r) {
            let _g = self.lock.lock().unwrap_or_else(|p| p.into_inner());
            let _ = std::fs::remove_file(p);
        }
    }

    /// What the store holds.
    pub fn list(&self) -> Vec<ObjRef> {
        let mut out = Vec::new();
        for kind in [Kind::ConfigMap, Kind::Secret] {
            for e in std::fs::read_dir(self.dir.join(kind.plural()))
                .into_iter()
                .flatten()
                .flatten()
            {
                let name = e.file_name().to_string_lossy().into_owned();
                if let Some((ns, name)) = name.strip_suffix(".json").and_then(|n| n.split_once('_'))
                {
                    out.push(ObjRef {
                        kind,
                        ns: ns.to_string(),
                        name: name.to_string(),
                    });
                }
            }
        }
        out
    }

    /// Deletes the copies no pod of `pods()` (read under the store's lock) uses.
    pub fn prune(&self, pods: impl FnOnce() -> Vec<Value>) {
        let _g = self.lock.lock().unwrap_or_else(|p| p.into_inner());
        let used: BTreeSet<ObjRef> = pods().iter().flat_map(pod_refs).collect();
        for kind in [Kind::ConfigMap, Kind::Secret] {
            let dir = self.dir.join(kind.plural());
            for e in std::fs::read_dir(&dir).into_iter().flatten().flatten() {
                let name = e.file_name().to_string_lossy().into_owned();
                let r = name
                    .strip_suffix(".json")
                    .and_then(|n| n.split_once('_'))
                    .map(|(ns, name)| ObjRef {
                        kind,
                        ns: ns.to_string(),
                        name: name.to_string(),
                    });
                if r.is_none_or(|r| !used.contains(&r)) {
                    tracing::debug!(file = %name, "dropping a local copy no pod uses");
                    let _ = std::fs::remove_file(e.path());
                }
            }
        }
    }
}

/// One object through the API, kept in the store; the store's copy when the server cannot be
/// asked. `None`: it does not exist (the server said so; the copy is dropped).
pub async fn fetch(client: &Client, store: &Store, r: &ObjRef) -> Result<Option<Value>, String> {
    let path = format!("/api/v1/namespaces/{}/{}/{}", r.ns, r.kind.plural(), r.name);
    match client.get(&path).await {
        Ok(obj) => {
            store.save(r, &obj);
            Ok(Some(obj))
        }
        Err(e) if e.code() == Some(404) => {
            store.remove(r);
            Ok(None)
        }
        Err(e) if e.is_unreachable() => match store.load(r) {
            Some(obj) => {
                tracing::debug!(object = %r, error = %e, "server unreachable: using the local copy");
                Ok(Some(obj))
            }
            None => Err(format!("{r}: {e}, and the node has no copy of it")),
        },
        Err(e) => Err(format!("{r}: {e}")),
    }
}

/// Where [`resolve`] looks first.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Source {
    /// The server (a container starting gets what is current).
    Server,
    /// The node's copies, which [`refresh`] keeps up to date; the server only for an object
    /// the node has no copy of (an optional object that did not exist when the pod started
    /// may exist now).
    Copies,
}

/// Every object of `refs`.
pub async fn resolve(
    client: &Client,
    store: &Store,
    refs: BTreeSet<ObjRef>,
    source: Source,
) -> Result<Objects, String> {
    let mut out = HashMap::new();
    for r in refs {
        let copy = match source {
            Source::Copies => store.load(&r),
            Source::Server => None,
        };
        let obj = match copy {
            Some(obj) => Some(obj),
            None => fetch(client, store, &r).await?,
        };
        out.insert(r, obj);
    }
    Ok(Objects(out))
}

/// Brings the store's copies up to date while the server is reachable, so that what a pod
/// gets offline is what it would get online. Copies are refreshed one by one; an unreachable
/// server leaves them as they are.
pub async fn refresh(client: &Client, store: &Store) {
    for r in store.list() {
        let path = format!("/api/v1/namespaces/{}/{}/{}", r.ns, r.kind.plural(), r.name);
        match client.get(&path).await {
            Ok(obj) => store.update(&r, &obj),
            Err(e) if e.code() == Some(404) => store.remove(&r),
            Err(e) => {
                tracing::debug!(object = %r, error = %e, "refreshing a local copy failed");
                if !client.is_connected() {
                    return;
                }
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    fn b64(s: &str) -> String {
        base64::engine::general_purpose::STANDARD.encode(s)
    }

    fn objects() -> Objects {
        Objects::from_list([
            (
                Kind::ConfigMap,
                json!({"metadata": {"name": "conf", "namespace": "default"},
                    "data": {"GREETING": "hi", "MODE": "fast", "bad name": "x", "app.conf": "a=1\n"},
                    "binaryData": {"blob": b64("\u{1}\u{2}")}}),
            ),
            (
                Kind::Secret,
                json!({"metadata": {"name": "creds", "namespace": "default"},
                    "data": {"token": b64("s3cr3t"), "user": b64("admin")}}),
            ),
        ])
    }

    #[test]
    fn env_comes_from_key_refs_and_env_from_with_kubelets_rules() {
        let o = objects();
        let sel = |name: &str, key: &str, optional: bool| json!({"name": name, "key": key, "optional": optional});
        let get = |k, s| key_ref(&o, k, "default", &s);
        assert_eq!(
            get(Kind::ConfigMap, sel("conf", "GREETING", false)),
            Ok(Some("hi".into()))
        );
        assert_eq!(
            get(Kind::Secret, sel("creds", "token", false)),
            Ok(Some("s3cr3t".into()))
        );
        assert_eq!(get(Kind::Secret, sel("creds", "nope", true)), Ok(None));
        assert_eq!(get(Kind::Secret, sel("gone", "token", true)), Ok(None));
        assert_eq!(
            get(Kind::ConfigMap, sel("conf", "nope", false)),
            Err("couldn't find key nope in ConfigMap default/conf".into())
        );
        assert_eq!(
            get(Kind::Secret, sel("gone", "token", false)),
            Err("secret \"gone\" not found".into())
        );
        // Another namespace's object of the same name is not this one.
        assert_eq!(
            key_ref(&o, Kind::ConfigMap, "other", &sel("conf", "GREETING", true)),
            Ok(None)
        );

        let c = json!({"envFrom": [
            {"configMapRef": {"name": "conf"}},
            {"secretRef": {"name": "creds"}, "prefix": "S_"},
            {"configMapRef": {"name": "missing", "optional": true}},
        ]});
        let env = env_from(&o, "default", &c).unwrap();
        assert_eq!(
            env,
            [
                ("GREETING", "hi"),
                ("MODE", "fast"),
                ("app.conf", "a=1\n"),
                ("S_token", "s3cr3t"),
                ("S_user", "admin"),
            ]
            .map(|(k, v)| (k.to_string(), v.to_string()))
        );
        let c = json!({"envFrom": [{"secretRef": {"name": "missing"}}]});
        assert_eq!(
            env_from(&o, "default", &c),
            Err("secret \"missing\" not found".into())
        );
    }

    #[test]
    fn volumes_get_their_files_with_items_and_modes() {
        let o = objects();
        let pod = json!({"metadata": {"namespace": "default"}});
        let info = crate::downward::PodInfo {
            pod: &pod,
            node: "n",
            host_ip: "10.0.0.1",
            pod_ip: "10.0.0.1",
        };
        let files = |v: Value| volume_files(&o, &info, &v);
        // A projected volume takes downwardAPI sources too.
        let projected = files(json!({"name": "p", "projected": {"sources": [
            {"downwardAPI": {"items": [{"path": "ns",
                "fieldRef": {"fieldPath": "metadata.namespace"}}]}},
            {"configMap": {"name": "conf", "items": [{"key": "GREETING", "path": "g"}]}}]}}))
        .unwrap()
        .unwrap();
        let ns = projected.iter().find(|f| f.path == "ns").unwrap();
        assert_eq!(ns.bytes, b"default");
        let all = files(json!({"name": "c", "configMap": {"name": "conf"}}))
            .unwrap()
            .unwrap();
        let paths: Vec<&str> = all.iter().map(|f| f.path.as_str()).collect();
        assert_eq!(paths, ["GREETING", "MODE", "app.conf", "bad name", "blob"]);
        assert_eq!(all[4].bytes, vec![1, 2]);
        assert!(all.iter().all(|f| f.mode == 0o644));

        let picked = files(json!({"name": "s", "secret": {"secretName": "creds", "defaultMode": 0o400,
            "items": [{"key": "token", "path": "auth/token"}, {"key": "user", "path": "user", "mode": 0o440}]}}))
        .unwrap()
        .unwrap();
        assert_eq!(
            picked,
            vec![
                VolumeFile {
                    path: "auth/token".into(),
                    bytes: b"s3cr3t".to_vec(),
                    mode: 0o400
                },
                VolumeFile {
                    path: "user".into(),
                    bytes: b"admin".to_vec(),
                    mode: 0o440
                },
            ]
        );
        let projected = files(json!({"name": "p", "projected": {"sources": [
            {"configMap": {"name": "conf", "items": [{"key": "MODE", "path": "mode"}]}},
            {"secret": {"name": "creds", "items": [{"key": "user", "path": "user"}]}},
            {"secret": {"name": "absent", "optional": true}}]}}))
        .unwrap()
        .unwrap();
        assert_eq!(projected.len(), 2);

        assert!(
            files(json!({"name": "e", "emptyDir": {}}))
                .unwrap()
                .is_none()
        );
        assert_eq!(
            files(json!({"name": "s", "secret": {"secretName": "absent"}})),
            Err("secret \"absent\" not found".into())
        );
        assert_eq!(
            files(json!({"name": "s", "secret": {"secretName": "absent", "optional": true}})),
            Ok(Some(vec![]))
        );
        let escape = files(json!({"name": "c", "configMap": {"name": "conf",
            "items": [{"key": "MODE", "path": "../../etc/passwd"}]}}));
        assert!(escape.unwrap_err().contains("stay inside"));
        let token =
            files(json!({"name": "p", "projected": {"sources": [{"serviceAccountToken": {}}]}}));
        assert!(token.unwrap_err().contains("serviceAccountToken"));
    }

    fn at(secs: i64) -> chrono::DateTime<chrono::Utc> {
        chrono::DateTime::from_timestamp(1_795_680_000 + secs, 123_456_789).unwrap()
    }

    fn write_unpinned(
        dir: &Path,
        files: &[VolumeFile],
        now: chrono::DateTime<chrono::Utc>,
        create: bool,
    ) -> std::io::Result<bool> {
        write_volume(dir, files, now, create, &BTreeSet::new())
    }

    fn file(path: &str, bytes: &str, mode: u32) -> VolumeFile {
        VolumeFile {
            path: path.into(),
            bytes: bytes.as_bytes().to_vec(),
            mode,
        }
    }

    /// The names in `dir`, sorted.
    fn listing(dir: &Path) -> Vec<String> {
        let mut names: Vec<String> = std::fs::read_dir(dir)
            .unwrap()
            .map(|e| e.unwrap().file_name().to_string_lossy().into_owned())
            .collect();
        names.sort();
        names
    }

    #[test]
    fn a_volume_is_laid_out_as_kubelets_atomic_writer_does() {
        use std::os::unix::fs::PermissionsExt as _;
        let d = tempfile::tempdir().unwrap();
        let dir = d.path().join("vol");
        let changed = write_unpinned(
            &dir,
            &[file("a", "1", 0o644), file("sub/b", "2", 0o400)],
            at(0),
            true,
        )
        .unwrap();
        assert!(changed);
        // Each name once, a link into `..data`, which links to the timestamped directory.
        let ts = "..2026_11_26_08_00_00.123456789";
        assert_eq!(listing(&dir), [ts, "..data", "a", "sub"]);
        assert_eq!(
            std::fs::read_link(dir.join("..data")).unwrap(),
            Path::new(ts)
        );
        assert_eq!(
            std::fs::read_link(dir.join("a")).unwrap(),
            Path::new("..data/a")
        );
        assert_eq!(std::fs::read_to_string(dir.join("sub/b")).unwrap(), "2");
        let mode = std::fs::metadata(dir.join("sub/b"))
            .unwrap()
            .permissions()
            .mode();
        assert_eq!(mode & 0o777, 0o400);
        // The same files again: nothing is written.
        let same = [file("sub/b", "2", 0o400), file("a", "1", 0o644)];
        assert!(!write_unpinned(&dir, &same, at(1), true).unwrap());
        assert_eq!(listing(&dir), [ts, "..data", "a", "sub"]);
        // A mode alone is a change too.
        let chmod = [file("a", "1", 0o600), file("sub/b", "2", 0o400)];
        assert!(write_unpinned(&dir, &chmod, at(2), true).unwrap());
    }

    #[test]
    fn an_update_replaces_the_files_at_once_and_removes_the_old_ones() {
        let d = tempfile::tempdir().unwrap();
        let dir = d.path().join("vol");
        write_unpinned(
            &dir,
            &[file("a", "1", 0o644), file("sub/b", "2", 0o644)],
            at(0),
            true,
        )
        .unwrap();
        // What a container holds open across the update (a file it read the old `..data`
        // through, as a subPath mount is bound to) keeps the old content.
        let old_a = std::fs::canonicalize(dir.join("a")).unwrap();
        let held = std::fs::File::open(&old_a).unwrap();
        assert!(
            write_unpinned(
                &dir,
                &[file("a", "changed", 0o644), file("c", "3", 0o644)],
                at(60),
                true
            )
            .unwrap()
        );
        assert_eq!(std::fs::read_to_string(dir.join("a")).unwrap(), "changed");
        assert_eq!(std::fs::read_to_string(dir.join("c")).unwrap(), "3");
        // The key that went away leaves; so does the old timestamped directory.
        assert!(!dir.join("sub").exists());
        assert_eq!(
            listing(&dir),
            ["..2026_11_26_08_01_00.123456789", "..data", "a", "c"]
        );
        assert!(!old_a.exists());
        assert_eq!(std::io::read_to_string(held).unwrap(), "1");
        // Every key removed (an optional object that went away): only the links remain.
        assert!(write_unpinned(&dir, &[], at(120), true).unwrap());
        assert_eq!(listing(&dir), ["..2026_11_26_08_02_00.123456789", "..data"]);
        // Two updates within the same instant do not collide.
        assert!(write_unpinned(&dir, &[file("a", "x", 0o644)], at(180), true).unwrap());
        assert!(write_unpinned(&dir, &[file("a", "y", 0o644)], at(180), true).unwrap());
        assert_eq!(std::fs::read_to_string(dir.join("a")).unwrap(), "y");
        assert_eq!(listing(&dir).len(), 3);
    }

    #[test]
    fn a_volume_of_plain_files_is_taken_over_and_a_gone_one_not_brought_back() {
        let d = tempfile::tempdir().unwrap();
        let dir = d.path().join("vol");
        // As an earlier agent wrote volumes: plain files and directories.
        std::fs::create_dir_all(dir.join("sub")).unwrap();
        std::fs::write(dir.join("a"), "old").unwrap();
        std::fs::write(dir.join("sub/b"), "old").unwrap();
        std::fs::write(dir.join("gone"), "old").unwrap();
        assert!(!volume_written(&dir));
        write_unpinned(
            &dir,
            &[file("a", "1", 0o644), file("sub/b", "2", 0o644)],
            at(0),
            true,
        )
        .unwrap();
        assert!(volume_written(&dir));
        assert_eq!(std::fs::read_to_string(dir.join("a")).unwrap(), "1");
        assert_eq!(std::fs::read_to_string(dir.join("sub/b")).unwrap(), "2");
        assert_eq!(listing(&dir).len(), 4, "{:?}", listing(&dir));
        // A refresh does not create the directory of a pod being removed.
        std::fs::remove_dir_all(&dir).unwrap();
        assert!(write_unpinned(&dir, &[file("a", "1", 0o644)], at(1), false).is_err());
        assert!(!dir.exists());
    }

    #[test]
    fn a_write_removes_leftovers_of_an_interrupted_one_even_when_nothing_changed() {
        let d = tempfile::tempdir().unwrap();
        let dir = d.path().join("vol");
        let files = [file("a", "1", 0o644)];
        write_unpinned(&dir, &files, at(0), true).unwrap();
        // A write that stopped before its switch: a timestamped directory, a new `..data`
        // and a key link never renamed into place.
        std::fs::create_dir(dir.join("..2026_11_26_08_00_30.123456789")).unwrap();
        std::fs::write(dir.join("..2026_11_26_08_00_30.123456789/a"), "half").unwrap();
        std::os::unix::fs::symlink("..2026_11_26_08_00_30.123456789", dir.join("..data_tmp"))
            .unwrap();
        std::os::unix::fs::symlink("..data/a", dir.join("..link_tmp.a")).unwrap();
        assert!(!write_unpinned(&dir, &files, at(60), true).unwrap());
        assert_eq!(
            listing(&dir),
            ["..2026_11_26_08_00_00.123456789", "..data", "a"]
        );
        assert_eq!(std::fs::read_to_string(dir.join("a")).unwrap(), "1");
    }

    /// The pod's volume `cfg` as a container start and the refresh see it.
    fn volume_dir(d: &Path) -> PathBuf {
        d.join("pod").join("volumes").join("cfg")
    }

    #[tokio::test]
    async fn a_refresh_keeps_the_directory_a_starting_containers_sub_path_was_resolved_into() {
        let d = tempfile::tempdir().unwrap();
        let dir = volume_dir(d.path());
        let volumes = Volumes::default();
        // A container start: write, resolve `subPath: a` as spec::mounts does, pin.
        let (source, pins) = {
            let dir = dir.clone();
            volumes
                .with_pod("uid-1", at(0), move |w| {
                    w.write(&dir, &[file("a", "1", 0o644)], true).unwrap();
                    let source = std::fs::canonicalize(dir.join("a")).unwrap();
                    let whole = dir.clone();
                    let pins = w.pin([source.as_path(), whole.as_path()]);
                    (source, pins)
                })
                .await
                .unwrap()
        };
        // The refresh, before the runtime mounted `source`: the volume follows the update,
        // the directory `source` lies in stays.
        let refresh = |now, bytes: &'static str| {
            let dir = dir.clone();
            volumes.with_pod("uid-1", now, move |w| {
                w.write(&dir, &[file("a", bytes, 0o644)], false).unwrap()
            })
        };
        assert!(refresh(at(60), "2").await.unwrap());
        assert_eq!(std::fs::read_to_string(dir.join("a")).unwrap(), "2");
        assert_eq!(std::fs::read_to_string(&source).unwrap(), "1");
        assert_eq!(listing(&dir).len(), 4, "{:?}", listing(&dir));
        // Once the run is over, the next refresh removes it, though nothing changed.
        drop(pins);
        assert!(!refresh(at(120), "2").await.unwrap());
        assert!(!source.exists());
        assert_eq!(
            listing(&dir),
            ["..2026_11_26_08_01_00.123456789", "..data", "a"]
        );
    }

    #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
    async fn a_pods_volumes_have_one_writer_at_a_time() {
        let d = tempfile::tempdir().unwrap();
        let dir = volume_dir(d.path());
        let volumes = Arc::new(Volumes::default());
        let order = Arc::new(Mutex::new(Vec::new()));
        // A container start holding the pod's volumes until told to finish.
        let (started_tx, started_rx) = tokio::sync::oneshot::channel();
        let (finish_tx, finish_rx) = std::sync::mpsc::channel::<()>();
        let start = {
            let (volumes, order, dir) = (volumes.clone(), order.clone(), dir.clone());
            tokio::spawn(async move {
                volumes
                    .with_pod("uid-1", at(0), move |w| {
                        w.write(&dir, &[file("a", "1", 0o644)], true).unwrap();
                        started_tx.send(()).unwrap();
                        finish_rx.recv().unwrap();
                        order.lock().unwrap().push("start");
                    })
                    .await
                    .unwrap()
            })
        };
        started_rx.await.unwrap();
        // Another pod is not held up.
        let other = d.path().join("other");
        volumes
            .with_pod("uid-2", at(0), move |w| {
                w.write(&other, &[file("b", "1", 0o644)], true).unwrap()
            })
            .await
            .unwrap();
        // The refresh of the same pod waits for the start.
        let refresh = {
            let (volumes, order, dir) = (volumes.clone(), order.clone(), dir.clone());
            tokio::spawn(async move {
                volumes
                    .with_pod("uid-1", at(60), move |w| {
                        order.lock().unwrap().push("refresh");
                        w.write(&dir, &[file("a", "2", 0o644)], false).unwrap()
                    })
                    .await
                    .unwrap()
            })
        };
        tokio::time::sleep(std::time::Duration::from_millis(200)).await;
        assert!(order.lock().unwrap().is_empty());
        finish_tx.send(()).unwrap();
        start.await.unwrap();
        assert!(refresh.await.unwrap());
        assert_eq!(*order.lock().unwrap(), ["start", "refresh"]);
    }

    #[test]
    fn the_store_keeps_private_copies_and_drops_what_no_pod_uses() {
        use std::os::unix::fs::PermissionsExt as _;
        let d = tempfile::tempdir().unwrap();
        let store = Store::new(d.path());
        let r = |kind, name: &str| ObjRef {
            kind,
            ns: "default".into(),
            name: name.into(),
        };
        let creds = json!({"metadata": {"name": "creds", "namespace": "default",
            "managedFields": [{"manager": "kubectl"}]}, "data": {"token": b64("x")}});
        store.save(&r(Kind::Secret, "creds"), &creds);
        store.save(&r(Kind::ConfigMap, "conf"), &json!({"data": {"a": "1"}}));
        store.save(&r(Kind::ConfigMap, "old"), &json!({"data": {}}));
        // A name that is no DNS name is never a path.
        store.save(&r(Kind::ConfigMap, "../../escape"), &json!({}));
        let loaded = store.load(&r(Kind::Secret, "creds")).unwrap();
        assert_eq!(loaded["data"], creds["data"]);
        assert!(loaded["metadata"].get("managedFields").is_none());
        let file = d.path().join("object-cache/secrets/default_creds.json");
        let mode = std::fs::metadata(&file).unwrap().permissions().mode();
        assert_eq!(mode & 0o777, 0o600);
        let dmode = std::fs::metadata(file.parent().unwrap())
            .unwrap()
            .permissions()
            .mode();
        assert_eq!(dmode & 0o777, 0o700);
        assert_eq!(store.list().len(), 3);

        store.prune(|| {
            vec![json!({"metadata": {"namespace": "default"}, "spec": {
                "volumes": [{"name": "s", "secret": {"secretName": "creds"}}],
                "containers": [{"env": [{"name": "A", "valueFrom": {"configMapKeyRef": {"name": "conf", "key": "a"}}}]}]}})]
        });
        let mut left: Vec<String> = store.list().iter().map(ToString::to_string).collect();
        left.sort();
        assert_eq!(left, ["configmap default/conf", "secret default/creds"]);
        store.prune(Vec::new);
        assert!(store.list().is_empty());
    }

    /// Secret copies are sealed with the node's cache key: the file holds neither the value
    /// nor its base64; a copy renamed to another Secret's name, a tampered one or one read
    /// with another key is a miss, not garbage; an earlier agent's plaintext copy is sealed
    /// at start; ConfigMaps stay plain.
    #[test]
    fn secret_copies_are_sealed_with_the_node_key() {
        let d = tempfile::tempdir().unwrap();
        let r = |kind, name: &str| ObjRef {
            kind,
            ns: "default".into(),
            name: name.into(),
        };
        let secret = json!({"metadata": {"name": "creds", "namespace": "default"},
            "data": {"token": b64("very-secret-value")}});
        let store = Store::new(d.path());
        store.save(&r(Kind::Secret, "creds"), &secret);
        store.save(
            &r(Kind::ConfigMap, "conf"),
            &json!({"data": {"a": "plain-config"}}),
        );
        let file = d.path().join("object-cache/secrets/default_creds.json");
        let raw = std::fs::read(&file).unwrap();
        let text = String::from_utf8_lossy(&raw);
        assert!(raw.starts_with(SEALED), "{text}");
        assert!(!text.contains("very-secret-value") && !text.contains(&b64("very-secret-value")));
        let key = std::fs::metadata(d.path().join("object-cache.key")).unwrap();
        use std::os::unix::fs::PermissionsExt as _;
        assert_eq!(key.permissions().mode() & 0o777, 0o600);
        assert!(
            std::fs::read_to_string(d.path().join("object-cache/configmaps/default_conf.json"))
                .unwrap()
                .contains("plain-config")
        );
        // Read back, also by a new agent on the same data dir (the key persists).
        assert_eq!(
            store.load(&r(Kind::Secret, "creds")).unwrap()["data"],
            secret["data"]
        );
        let again = Store::new(d.path());
        assert_eq!(
            again.load(&r(Kind::Secret, "creds")).unwrap()["data"],
            secret["data"]
        );
        // Passed off as another Secret, tampered, or under another node's key: a miss.
        let other = d.path().join("object-cache/secrets/default_other.json");
        std::fs::copy(&file, &other).unwrap();
        assert!(again.load(&r(Kind::Secret, "other")).is_none());
        let mut bad = raw.clone();
        *bad.last_mut().unwrap() ^= 1;
        std::fs::write(&other, &bad).unwrap();
        assert!(again.load(&r(Kind::Secret, "other")).is_none());
        let elsewhere = tempfile::tempdir().unwrap();
        let foreign = Store::new(elsewhere.path());
        std::fs::create_dir_all(elsewhere.path().join("object-cache/secrets")).unwrap();
        std::fs::copy(
            &file,
            elsewhere
                .path()
                .join("object-cache/secrets/default_creds.json"),
        )
        .unwrap();
        assert!(foreign.load(&r(Kind::Secret, "creds")).is_none());
        // An earlier agent's plaintext copy: sealed when the store opens, still readable.
        let legacy = d.path().join("object-cache/secrets/default_legacy.json");
        std::fs::write(&legacy, serde_json::to_vec(&secret).unwrap()).unwrap();
        let third = Store::new(d.path());
        assert!(std::fs::read(&legacy).unwrap().starts_with(SEALED));
        assert_eq!(
            third.load(&r(Kind::Secret, "legacy")).unwrap()["data"],
            secret["data"]
        );
    }
}
