//! The Secrets and ConfigMaps this node's pods use (env `valueFrom` and `envFrom`, `configMap`,
//! `secret` and `projected` volumes, `imagePullSecrets`): read through the API when a
//! container starts, and kept in the node's own store (`<data-dir>/object-cache/`, files of
//! mode 0600) so that a pod started while the server is unreachable — after the agent's own
//! restart, or a crash under `restartPolicy` — gets the same environment and files. The store
//! is refreshed while the server is reachable, and an object no recorded pod uses any more is
//! deleted from it.
//!
//! Resolving what a container needs and turning objects into its environment and volume files
//! are pure functions, tested without a server.

use std::collections::{BTreeMap, BTreeSet, HashMap};
use std::path::{Path, PathBuf};
use std::sync::Mutex;

use base64::Engine as _;
use serde_json::Value;

use super::client::Client;
use crate::core::meta;

#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub enum Kind {
    ConfigMap,
    Secret,
}

impl Kind {
    fn plural(self) -> &'static str {
        match self {
            Kind::ConfigMap => "configmaps",
            Kind::Secret => "secrets",
        }
    }

    /// As kubelet names them in its messages (`configmap "x" not found`).
    fn word(self) -> &'static str {
        match self {
            Kind::ConfigMap => "configmap",
            Kind::Secret => "secret",
        }
    }
}

/// One Secret or ConfigMap a pod names.
#[derive(Clone, Debug, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub struct ObjRef {
    pub kind: Kind,
    pub ns: String,
    pub name: String,
}

impl std::fmt::Display for ObjRef {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "{} {}/{}", self.kind.word(), self.ns, self.name)
    }
}

fn arr(v: &Value) -> &[Value] {
    v.as_array().map(Vec::as_slice).unwrap_or_default()
}

fn add(out: &mut BTreeSet<ObjRef>, kind: Kind, ns: &str, name: &Value) {
    if let Some(name) = name.as_str().filter(|n| !n.is_empty()) {
        out.insert(ObjRef {
            kind,
            ns: ns.to_string(),
            name: name.to_string(),
        });
    }
}

fn volume_refs(ns: &str, v: &Value, out: &mut BTreeSet<ObjRef>) {
    add(out, Kind::ConfigMap, ns, &v["configMap"]["name"]);
    add(out, Kind::Secret, ns, &v["secret"]["secretName"]);
    for s in arr(&v["projected"]["sources"]) {
        add(out, Kind::ConfigMap, ns, &s["configMap"]["name"]);
        add(out, Kind::Secret, ns, &s["secret"]["name"]);
    }
}

fn env_refs(ns: &str, c: &Value, out: &mut BTreeSet<ObjRef>) {
    for e in arr(&c["env"]) {
        add(
            out,
            Kind::ConfigMap,
            ns,
            &e["valueFrom"]["configMapKeyRef"]["name"],
        );
        add(
            out,
            Kind::Secret,
            ns,
            &e["valueFrom"]["secretKeyRef"]["name"],
        );
    }
    for e in arr(&c["envFrom"]) {
        add(out, Kind::ConfigMap, ns, &e["configMapRef"]["name"]);
        add(out, Kind::Secret, ns, &e["secretRef"]["name"]);
    }
}

/// Everything `pod` names: what the store keeps for it.
pub fn pod_refs(pod: &Value) -> BTreeSet<ObjRef> {
    let ns = meta::namespace(pod);
    let mut out = BTreeSet::new();
    let spec = &pod["spec"];
    for s in arr(&spec["imagePullSecrets"]) {
        add(&mut out, Kind::Secret, ns, &s["name"]);
    }
    for v in arr(&spec["volumes"]) {
        volume_refs(ns, v, &mut out);
    }
    for c in arr(&spec["initContainers"])
        .iter()
        .chain(arr(&spec["containers"]))
    {
        env_refs(ns, c, &mut out);
    }
    out
}

/// What container `c` needs to start: its env and envFrom, and the volumes it mounts.
pub fn container_refs(pod: &Value, c: &Value) -> BTreeSet<ObjRef> {
    let ns = meta::namespace(pod);
    let mut out = BTreeSet::new();
    env_refs(ns, c, &mut out);
    let mounted: BTreeSet<&str> = arr(&c["volumeMounts"])
        .iter()
        .filter_map(|m| m["name"].as_str())
        .collect();
    for v in arr(&pod["spec"]["volumes"]) {
        if v["name"].as_str().is_some_and(|n| mounted.contains(n)) {
            volume_refs(ns, v, &mut out);
        }
    }
    out
}

/// The objects a container start resolved; `None`: it does not exist.
#[derive(Default, Debug)]
pub struct Objects(HashMap<ObjRef, Option<Value>>);

impl Objects {
    #[cfg(test)]
    pub fn from_list(objs: impl IntoIterator<Item = (Kind, Value)>) -> Self {
        Objects(
            objs.into_iter()
                .map(|(kind, o)| {
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
pub fn key_ref(
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
pub struct VolumeFile {
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
pub fn volume_files(
    objects: &Objects,
    ns: &str,
    volume: &Value,
) -> Result<Option<Vec<VolumeFile>>, String> {
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
            } else {
                let kind = src
                    .as_object()
                    .and_then(|o| o.keys().next().cloned())
                    .unwrap_or_default();
                return Err(format!(
                    "volume {:?}: projected source {kind:?} is not supported by kedge yet \
                     (configMap and secret are)",
                    volume["name"].as_str().unwrap_or_default()
                ));
            }
        }
    } else {
        return Ok(None);
    }
    Ok(Some(out))
}

/// Makes `dir` hold exactly `files`: each written to a temporary name and renamed (a
/// container reading the volume sees the old file or the new one), files no longer listed
/// removed.
pub fn write_volume(dir: &Path, files: &[VolumeFile]) -> std::io::Result<()> {
    use std::io::Write as _;
    use std::os::unix::fs::{OpenOptionsExt as _, PermissionsExt as _};
    static SEQ: std::sync::atomic::AtomicU64 = std::sync::atomic::AtomicU64::new(0);
    std::fs::create_dir_all(dir)?;
    for f in files {
        let path = dir.join(&f.path);
        let parent = path.parent().unwrap_or(dir);
        std::fs::create_dir_all(parent)?;
        let seq = SEQ.fetch_add(1, std::sync::atomic::Ordering::Relaxed);
        let tmp = parent.join(format!("..tmp.{}.{seq}", std::process::id()));
        let mut out = std::fs::OpenOptions::new()
            .write(true)
            .create_new(true)
            .mode(0o600)
            .open(&tmp)?;
        out.write_all(&f.bytes)?;
        drop(out);
        std::fs::set_permissions(&tmp, std::fs::Permissions::from_mode(f.mode))?;
        std::fs::rename(&tmp, &path)?;
    }
    let keep: BTreeSet<PathBuf> = files.iter().map(|f| dir.join(&f.path)).collect();
    remove_unlisted(dir, &keep);
    Ok(())
}

fn remove_unlisted(dir: &Path, keep: &BTreeSet<PathBuf>) {
    for e in std::fs::read_dir(dir).into_iter().flatten().flatten() {
        let p = e.path();
        if e.file_name().to_string_lossy().starts_with("..tmp.") {
            // Another container of the pod writing the same volume right now.
            continue;
        }
        match e.file_type() {
            Ok(t) if t.is_dir() => {
                remove_unlisted(&p, keep);
                if !keep.iter().any(|k| k.starts_with(&p)) {
                    let _ = std::fs::remove_dir(&p);
                }
            }
            Ok(_) if !keep.contains(&p) => {
                let _ = std::fs::remove_file(&p);
            }
            _ => {}
        }
    }
}

/// The node's copies (`<data-dir>/object-cache/{configmaps,secrets}/<ns>_<name>.json`).
pub struct Store {
    dir: PathBuf,
    /// Saving and pruning exclude each other: a prune that read the pod records before a new
    /// pod was recorded must not delete what that pod's start just saved.
    lock: Mutex<()>,
}

fn safe_name(s: &str) -> bool {
    !s.is_empty()
        && !s.starts_with('.')
        && s.bytes()
            .all(|b| b.is_ascii_alphanumeric() || b == b'-' || b == b'.')
}

impl Store {
    pub fn new(data_dir: &Path) -> Self {
        Store {
            dir: data_dir.join("object-cache"),
            lock: Mutex::new(()),
        }
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
    pub fn save(&self, r: &ObjRef, obj: &Value) {
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
            let bytes = serde_json::to_vec(&obj).map_err(|e| e.to_string())?;
            kedge_tunnel::write_atomic(&p, &bytes, 0o600).map_err(|e| e.to_string())
        };
        if let Err(e) = write() {
            tracing::warn!(object = %r, error = %e, "could not keep a local copy");
        }
    }

    pub fn load(&self, r: &ObjRef) -> Option<Value> {
        let p = self.path(r)?;
        serde_json::from_slice(&std::fs::read(p).ok()?).ok()
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

/// Fetches every object of `refs`.
pub async fn resolve(
    client: &Client,
    store: &Store,
    refs: BTreeSet<ObjRef>,
) -> Result<Objects, String> {
    let mut out = HashMap::new();
    for r in refs {
        let obj = fetch(client, store, &r).await?;
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

    fn pod() -> Value {
        json!({"metadata": {"name": "p", "namespace": "default"}, "spec": {
        "imagePullSecrets": [{"name": "regcred"}],
        "volumes": [
            {"name": "cfg", "configMap": {"name": "conf"}},
            {"name": "sec", "secret": {"secretName": "creds"}},
            {"name": "both", "projected": {"sources": [
                {"configMap": {"name": "conf2"}}, {"secret": {"name": "creds2"}}]}},
        ],
        "initContainers": [{"name": "i", "envFrom": [{"secretRef": {"name": "init-env"}}]}],
        "containers": [
            {"name": "a", "env": [{"name": "G", "valueFrom": {"configMapKeyRef": {"name": "conf", "key": "GREETING"}}}],
             "volumeMounts": [{"name": "sec", "mountPath": "/s"}]},
            {"name": "b", "envFrom": [{"configMapRef": {"name": "envs"}}],
             "volumeMounts": [{"name": "both", "mountPath": "/b"}]},
        ]}})
    }

    fn names(refs: &BTreeSet<ObjRef>) -> Vec<String> {
        refs.iter().map(ToString::to_string).collect()
    }

    #[test]
    fn a_pod_names_its_objects_and_a_container_only_what_it_needs() {
        let p = pod();
        assert_eq!(
            names(&pod_refs(&p)),
            [
                "configmap default/conf",
                "configmap default/conf2",
                "configmap default/envs",
                "secret default/creds",
                "secret default/creds2",
                "secret default/init-env",
                "secret default/regcred",
            ]
        );
        let a = &p["spec"]["containers"][0];
        assert_eq!(
            names(&container_refs(&p, a)),
            ["configmap default/conf", "secret default/creds"]
        );
        let b = &p["spec"]["containers"][1];
        assert_eq!(
            names(&container_refs(&p, b)),
            [
                "configmap default/conf2",
                "configmap default/envs",
                "secret default/creds2"
            ]
        );
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
        let files = |v: Value| volume_files(&o, "default", &v);
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

    #[test]
    fn a_volume_is_rewritten_to_exactly_its_files() {
        use std::os::unix::fs::PermissionsExt as _;
        let d = tempfile::tempdir().unwrap();
        let dir = d.path().join("vol");
        let f = |path: &str, bytes: &str, mode| VolumeFile {
            path: path.into(),
            bytes: bytes.as_bytes().to_vec(),
            mode,
        };
        write_volume(&dir, &[f("a", "1", 0o644), f("sub/b", "2", 0o400)]).unwrap();
        assert_eq!(std::fs::read_to_string(dir.join("sub/b")).unwrap(), "2");
        let mode = std::fs::metadata(dir.join("sub/b"))
            .unwrap()
            .permissions()
            .mode();
        assert_eq!(mode & 0o777, 0o400);
        write_volume(&dir, &[f("a", "changed", 0o644)]).unwrap();
        assert_eq!(std::fs::read_to_string(dir.join("a")).unwrap(), "changed");
        assert!(!dir.join("sub").exists(), "a key that went away leaves");
        assert_eq!(std::fs::read_dir(&dir).unwrap().count(), 1);
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
}
