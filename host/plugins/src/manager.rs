//! The plugin manager: turns `Plugin` objects into running plugins and keeps their status.
//!
//! For each new generation of a Plugin it fetches the component (built in, a file on the
//! server, or an OCI Wasm artifact), compiles it, instantiates it, checks its registration
//! against the grant in the spec (`watches`, `writes`) and its role, then swaps it into the
//! plugin's [`Slot`]. Anything that fails before the swap leaves the running version alone and
//! says why in `status.conditions` and an Event; a version that traps on probation is rolled
//! back by the slot and reported the same way.
//!
//! Every component that ever ran is kept under `<data-dir>/plugins/<digest>.wasm`, so a server
//! restart brings back the version that was running (the last proven one after a rollback)
//! even when its registry is unreachable.

use std::collections::HashMap;
use std::path::PathBuf;
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use base64::Engine as _;
use k8s_openapi::apimachinery::pkg::apis::meta::v1::{Condition, Time};
use serde_json::{Value, json};
use tokio::sync::mpsc;

use super::slot::{SlotEvent, SlotObserver};
use super::{Error, Grant, KindSet, Limits, Plugin, PluginHost, Slot};
use kedge_api::Api;
use kedge_api::ops::WriteOptions;
use kedge_api::plugin_kind::{
    self as kind, PluginKindRef, PluginObject, PluginSource, PluginSpec, PluginStatus,
};
use kedge_core::meta;
use kedge_core::resources::{self, Resource};
use kedge_core::selector::Selector as LabelSelector;
use kedge_registry::{ImageKind, Keyring, Puller, Reference};
use kedge_store::EventType;

const COMPONENT: &str = "kedge-plugin-manager";

fn plugin_res() -> &'static Resource {
    resources::by_kind("plugins.kedge.io/v1", "Plugin").expect("plugins are served")
}

/// Why a version was not swapped in: a condition reason and a human message.
#[derive(Debug)]
struct Refusal {
    reason: &'static str,
    message: String,
}

impl Refusal {
    fn new(reason: &'static str, message: impl Into<String>) -> Self {
        Refusal {
            reason,
            message: message.into(),
        }
    }
}

/// Where a running version came from, for status after a rollback.
#[derive(Clone, Debug)]
struct Origin {
    source: String,
    generation: i64,
}

#[derive(Default)]
struct Entry {
    slot: Option<Arc<Slot>>,
    /// The generation last acted on.
    handled: Option<i64>,
    versions: HashMap<String, Origin>,
    /// With several replicas: whether this one holds the plugin's lease, and what stops
    /// its election.
    leading: Option<tokio::sync::watch::Receiver<bool>>,
    elector: Option<tokio_util::sync::CancellationToken>,
}

/// Who this server is among the replicas, and the elections it takes part in (`None`: the
/// only server, which runs every plugin).
pub struct Replica {
    pub identity: String,
    pub election: Option<super::lease::Election>,
}

/// Status updates a replica made while another one held the plugin's lease, kept (the last
/// few per plugin) to be written when this one takes over: they describe what now runs.
const PARKED_PER_PLUGIN: usize = 32;

/// A change to a Plugin's status, given the object's current generation.
type Mutation = Box<dyn FnOnce(&mut PluginStatus, i64) + Send>;

/// One status change (and the Event that goes with it), applied in order by one writer task.
struct Update {
    name: String,
    mutate: Mutation,
    event: Option<(&'static str, &'static str, String)>,
}

pub struct PluginManager {
    host: Arc<PluginHost>,
    api: Arc<Api>,
    builtins: &'static [(&'static str, &'static [u8])],
    cache_dir: PathBuf,
    puller: Option<Puller>,
    entries: Mutex<HashMap<String, Entry>>,
    /// Built-in plugins compiled while creating their objects, by digest, used once.
    preloaded: Mutex<HashMap<String, Arc<Plugin>>>,
    updates: mpsc::UnboundedSender<Update>,
    updates_rx: Mutex<Option<mpsc::UnboundedReceiver<Update>>>,
    replica: std::sync::OnceLock<Replica>,
    parked: Mutex<HashMap<String, std::collections::VecDeque<Update>>>,
}

impl PluginManager {
    /// `data_dir` holds the component cache and the image store for `image` sources, pulled
    /// with `registries` (credentials and trust).
    pub fn new(
        host: Arc<PluginHost>,
        api: Arc<Api>,
        builtins: &'static [(&'static str, &'static [u8])],
        data_dir: &std::path::Path,
        registries: kedge_registry::RegistriesConfig,
    ) -> anyhow::Result<Arc<Self>> {
        let cache_dir = data_dir.join("plugins");
        std::fs::create_dir_all(&cache_dir)?;
        let puller = match kedge_registry::LocalImageStore::open(data_dir.join("plugin-images")) {
            Ok(store) => Some(Puller::new(Arc::new(store), registries)),
            Err(e) => {
                tracing::warn!(error = %e, "no image store for plugin images; image sources will be refused");
                None
            }
        };
        let (tx, rx) = mpsc::unbounded_channel();
        Ok(Arc::new(PluginManager {
            host,
            api,
            builtins,
            cache_dir,
            puller,
            entries: Mutex::new(HashMap::new()),
            preloaded: Mutex::new(HashMap::new()),
            updates: tx,
            updates_rx: Mutex::new(Some(rx)),
            replica: std::sync::OnceLock::new(),
            parked: Mutex::default(),
        }))
    }

    /// Says who this server is and, with several replicas, makes each plugin run only where
    /// its lease is held. Before [`start`](Self::start); once.
    pub fn set_replica(&self, replica: Replica) {
        if self.replica.set(replica).is_err() {
            tracing::warn!("the plugin manager's replica was set twice; keeping the first");
        }
    }

    /// Writes the status updates parked for `name` while this replica did not hold its
    /// lease (they describe what runs now that it does).
    fn flush_parked(&self, name: &str) {
        let parked = self
            .parked
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .remove(name)
            .unwrap_or_default();
        for u in parked {
            let _ = self.updates.send(u);
        }
    }

    /// Whether this replica holds the plugin's lease (`None`: no election for it here).
    fn is_leading(&self, name: &str) -> Option<bool> {
        self.entries()
            .get(name)
            .and_then(|e| e.leading.as_ref())
            .map(|rx| *rx.borrow())
    }

    /// The lease gate of a plugin starting here (`None` without elections): its election
    /// runs until the plugin is deleted or the server stops; taking the lease writes the
    /// updates parked meanwhile and this replica's name as the holder.
    fn elect(self: &Arc<Self>, name: &str) -> Option<tokio::sync::watch::Receiver<bool>> {
        let replica = self.replica.get()?;
        let Some(election) = &replica.election else {
            let identity = replica.identity.clone();
            self.update(name, None, move |s, _| s.holder = Some(identity));
            return None;
        };
        let token = self.host.cancel.child_token();
        let rx = election.elect(
            self.api.clone(),
            format!("kedge-plugin-{name}"),
            token.clone(),
        );
        {
            let mut entries = self.entries();
            let e = entries.entry(name.to_string()).or_default();
            e.leading = Some(rx.clone());
            e.elector = Some(token.clone());
        }
        let (this, mut watch, name) = (Arc::downgrade(self), rx.clone(), name.to_string());
        let identity = replica.identity.clone();
        tokio::spawn(async move {
            loop {
                tokio::select! {
                    _ = token.cancelled() => break,
                    changed = watch.changed() => if changed.is_err() { break },
                }
                if !*watch.borrow_and_update() {
                    continue;
                }
                let Some(m) = this.upgrade() else { break };
                m.flush_parked(&name);
                let holder = identity.clone();
                m.update(&name, None, move |s, _| s.holder = Some(holder));
            }
        });
        Some(rx)
    }

    fn entries(&self) -> std::sync::MutexGuard<'_, HashMap<String, Entry>> {
        self.entries.lock().unwrap_or_else(|p| p.into_inner())
    }

    /// The slot of a running plugin.
    pub fn slot(&self, name: &str) -> Option<Arc<Slot>> {
        self.entries().get(name).and_then(|e| e.slot.clone())
    }

    /// Creates the Plugin object of every built-in plugin that has none (as K3s re-creates its
    /// packaged components), its grant taken from the plugin's own registration; a built-in
    /// Plugin still running its built-in source gets the grant of this binary's version (an
    /// upgraded kedge may need more).
    pub async fn install_builtins(&self) -> anyhow::Result<()> {
        let res = plugin_res();
        for (name, bytes) in self.builtins {
            let existing = match self.api.get(res, "", name) {
                Ok(o) => Some(o),
                Err(e) if e.code == 404 => None,
                Err(e) => anyhow::bail!("reading plugin {name}: {e}"),
            };
            let runs_builtin = existing.as_ref().is_none_or(|o| {
                o.pointer("/spec/source/builtin").and_then(Value::as_str) == Some(name)
            });
            if !runs_builtin {
                continue;
            }
            let plugin = self
                .host
                .load(name, bytes)
                .await
                .map_err(|e| anyhow::anyhow!("loading the built-in {name} plugin: {e}"))?;
            let want = builtin_object(name, &plugin);
            match existing {
                None => match self.api.create(res, "", want, &WriteOptions::default()) {
                    Ok(_) => {}
                    Err(e) if e.reason == "AlreadyExists" => {}
                    Err(e) => anyhow::bail!("creating plugin {name}: {e}"),
                },
                Some(mut obj) => {
                    let same = ["watches", "writes"]
                        .iter()
                        .all(|k| obj["spec"].get(*k) == want["spec"].get(*k));
                    if !same {
                        tracing::info!(
                            plugin = name,
                            "updating the built-in plugin's grant to this version's registration"
                        );
                        obj["spec"]["watches"] = want["spec"]["watches"].clone();
                        obj["spec"]["writes"] = want["spec"]["writes"].clone();
                        self.api
                            .update(res, "", name, obj, None, &WriteOptions::default())
                            .map_err(|e| anyhow::anyhow!("updating plugin {name}: {e}"))?;
                    }
                }
            }
            self.preloaded
                .lock()
                .unwrap_or_else(|p| p.into_inner())
                .insert(plugin.digest().to_string(), plugin);
        }
        Ok(())
    }

    /// Starts every Plugin that exists (returns when all were tried), then follows changes.
    pub async fn start(self: &Arc<Self>) {
        let res = plugin_res();
        let informer = self.host.informers.get(res);
        let mut rx = informer.subscribe();
        if let Some(updates) = self
            .updates_rx
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .take()
        {
            let this = self.clone();
            self.host.tasks.spawn(this.write_statuses(updates));
        }
        informer.wait_synced().await;
        for o in informer.list("", &LabelSelector::default()) {
            self.sync(&o).await;
        }
        self.preloaded
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .clear();
        let this = self.clone();
        let cancel = self.host.cancel.clone();
        self.host.tasks.spawn(async move {
            loop {
                let change = tokio::select! {
                    _ = cancel.cancelled() => break,
                    c = rx.recv() => match c { Some(c) => c, None => break },
                };
                if change.kind == EventType::Deleted {
                    this.remove(meta::name(&change.head));
                } else {
                    match change.object() {
                        Ok(o) => this.sync(&o).await,
                        Err(e) => tracing::error!(error = %e, "unreadable Plugin object"),
                    }
                }
            }
        });
    }

    fn remove(&self, name: &str) {
        let Some(e) = self.entries().remove(name) else {
            return;
        };
        if let Some(token) = e.elector {
            token.cancel();
        }
        self.parked
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .remove(name);
        if let Some(slot) = e.slot {
            tracing::info!(plugin = name, "plugin deleted; stopping it");
            slot.stop();
        }
    }

    /// Acts on a Plugin object if its generation is new to the manager.
    async fn sync(self: &Arc<Self>, obj: &Value) {
        let name = meta::name(obj).to_string();
        let generation = obj
            .pointer("/metadata/generation")
            .and_then(Value::as_i64)
            .unwrap_or(0);
        if obj.pointer("/metadata/deletionTimestamp").is_some() {
            return;
        }
        let existing = {
            let mut entries = self.entries();
            let e = entries.entry(name.clone()).or_default();
            if e.handled == Some(generation) {
                return;
            }
            e.handled = Some(generation);
            e.slot.clone()
        };
        let typed: PluginObject = match serde_json::from_value(obj.clone()) {
            Ok(t) => t,
            Err(e) => {
                self.refused(
                    &name,
                    generation,
                    existing.is_some(),
                    Refusal::new("InvalidSpec", e.to_string()),
                );
                return;
            }
        };
        let spec = typed.spec;
        let status = typed.status.unwrap_or_default();
        if let Some(slot) = &existing {
            // The grant binds the running versions at once: a narrowed grant must not wait
            // for a version that fits it.
            slot.restrict(&Grant::of(&spec));
        }
        let started = Instant::now();
        let prepared = match existing {
            None => self.prepare_first(&name, generation, &spec, &status).await,
            Some(_) => self
                .prepare(&name, &spec)
                .await
                .map(|(p, source)| (p, source, generation, None)),
        };
        let (plugin, source, from_generation, refusal) = match prepared {
            Ok(x) => x,
            Err(r) => {
                self.refused(&name, generation, existing.is_some(), r);
                return;
            }
        };
        let swap_ms = started.elapsed().as_millis() as i64;
        let digest = plugin.digest().to_string();
        self.entries()
            .entry(name.clone())
            .or_default()
            .versions
            .insert(
                digest.clone(),
                Origin {
                    source: source.clone(),
                    generation: from_generation,
                },
            );
        let probation = spec
            .probation_reconciles
            .unwrap_or(kind::DEFAULT_PROBATION)
            .max(0) as u32;
        match existing {
            Some(slot) => {
                let was = slot.current().digest().to_string();
                if was == digest && slot.current().limits() == plugin.limits() {
                    // Same code, same limits (say, a grant change): nothing to swap.
                    self.update(&name, None, move |s, g| {
                        s.observed_generation = Some(g);
                        s.active_generation = Some(from_generation);
                        s.active_source = Some(source);
                    });
                    return;
                }
                let (a, b) = (
                    slot.current().permissions().for_kind,
                    plugin.permissions().for_kind,
                );
                let same_primary = match (a, b) {
                    (Some(a), Some(b)) => std::ptr::eq(a, b),
                    (None, None) => true,
                    _ => false,
                };
                if !same_primary {
                    let r = slot.swap(plugin, probation).expect_err("kinds differ");
                    self.refused(
                        &name,
                        generation,
                        true,
                        Refusal::new("PrimaryKindChanged", r),
                    );
                    return;
                }
                let on_probation = probation > 0;
                let msg = if on_probation {
                    format!(
                        "{digest} from {source} replaced {was} in {swap_ms} ms; on probation for {probation} reconcile(s)"
                    )
                } else {
                    format!("{digest} from {source} replaced {was} in {swap_ms} ms")
                };
                let ready_msg = msg.clone();
                self.update(
                    &name,
                    Some(("Normal", "Swapped", msg)),
                    swapped(
                        digest.clone(),
                        source,
                        from_generation,
                        swap_ms,
                        on_probation,
                        ready_msg,
                    ),
                );
                if let Err(r) = slot.swap(plugin, probation) {
                    self.refused(
                        &name,
                        generation,
                        true,
                        Refusal::new("PrimaryKindChanged", r),
                    );
                }
            }
            None => {
                // The slot reports through a weak reference: the manager owns its slots.
                let observer = Arc::new(WeakObserver(Arc::downgrade(self)));
                let leading = self.elect(&name);
                let slot = self.host.start_observed(&name, plugin, observer, leading);
                self.entries().entry(name.clone()).or_default().slot = Some(slot);
                let msg = format!("{digest} from {source} started in {swap_ms} ms");
                let ready = refusal.is_none();
                let (reason, ready_msg) = match &refusal {
                    None => ("Active", msg.clone()),
                    Some(r) => (r.reason, r.message.clone()),
                };
                self.update(&name, Some(("Normal", "Started", msg)), move |s, g| {
                    s.observed_generation = Some(g);
                    s.phase = Some("Active".into());
                    s.active_digest = Some(digest);
                    s.active_source = Some(source);
                    s.active_generation = Some(from_generation);
                    s.last_swap_time = Some(now());
                    s.last_swap_milliseconds = Some(swap_ms);
                    set_condition(s, "Ready", ready, reason, &ready_msg, g);
                    set_condition(s, "Healthy", true, "CallsSucceeding", "", g);
                });
                if let Some(r) = refusal {
                    self.event(&name, "Warning", r.reason, &r.message);
                }
            }
        }
    }

    /// The first version of a plugin in this process. A generation the manager already
    /// decided on (before a restart) runs what was active then, from the component cache, so
    /// a rolled-back version is not retried and an unreachable registry does not keep the
    /// plugin down. Returns the plugin, its source, the generation it came from and, when the
    /// spec's own version could not run, why.
    async fn prepare_first(
        &self,
        name: &str,
        generation: i64,
        spec: &PluginSpec,
        status: &PluginStatus,
    ) -> Result<(Arc<Plugin>, String, i64, Option<Refusal>), Refusal> {
        let decided = status.observed_generation == Some(generation);
        let active_is_spec = status.active_generation == Some(generation);
        let builtin = spec.source.builtin.is_some();
        let cached = || -> Option<(Vec<u8>, String, i64)> {
            let d = status.active_digest.as_deref()?;
            let bytes = std::fs::read(self.cached_path(d)).ok()?;
            let source = status
                .active_source
                .clone()
                .unwrap_or_else(|| "cache".into());
            Some((bytes, source, status.active_generation.unwrap_or(0)))
        };
        if decided
            && (!active_is_spec || !builtin)
            && let Some((bytes, source, from)) = cached()
        {
            let plugin = self.compile(name, spec, &bytes).await?;
            let refusal = (!active_is_spec).then(|| {
                Refusal::new(
                    "RolledBack",
                    format!(
                        "generation {generation} was not accepted before the restart; running {} (generation {from})",
                        plugin.digest()
                    ),
                )
            });
            return Ok((plugin, source, from, refusal));
        }
        match self.prepare(name, spec).await {
            Ok((p, source)) => Ok((p, source, generation, None)),
            Err(r) => {
                // The spec's version cannot run: the one that ran before still can.
                let Some((bytes, source, from)) = cached() else {
                    return Err(r);
                };
                let plugin = self
                    .compile(name, spec, &bytes)
                    .await
                    .map_err(|_| r.clone_shallow())?;
                let message = format!(
                    "{}; running the cached {} (generation {from}) instead",
                    r.message,
                    plugin.digest()
                );
                Ok((plugin, source, from, Some(Refusal::new(r.reason, message))))
            }
        }
    }

    /// Fetches, checks and compiles the spec's version.
    async fn prepare(
        &self,
        name: &str,
        spec: &PluginSpec,
    ) -> Result<(Arc<Plugin>, String), Refusal> {
        let source = spec.source.describe();
        let bytes = self.fetch(&spec.source).await?;
        let plugin = self.compile(name, spec, &bytes).await?;
        if let Some(want) = &spec.source.digest
            && want != plugin.digest()
        {
            return Err(Refusal::new(
                "DigestMismatch",
                format!("{source} hashes to {}, not {want}", plugin.digest()),
            ));
        }
        if spec.source.builtin.is_none() {
            self.keep(plugin.digest(), &bytes);
        }
        Ok((plugin, source))
    }

    /// Compiles and registers `bytes` under the spec's limits, then checks role and grant.
    async fn compile(
        &self,
        name: &str,
        spec: &PluginSpec,
        bytes: &[u8],
    ) -> Result<Arc<Plugin>, Refusal> {
        let limits = self.limits(spec);
        let digest = {
            use sha2::{Digest, Sha256};
            format!("sha256:{}", hex::encode(Sha256::digest(bytes)))
        };
        let preloaded = self
            .preloaded
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .remove(&digest)
            .filter(|p| p.limits() == limits);
        let plugin = match preloaded {
            Some(p) => p,
            None => self
                .host
                .load_with(name, bytes, limits)
                .await
                .map_err(|e| {
                    let reason = match &e {
                        Error::Compile { .. } => "CompileFailed",
                        Error::Instantiate { .. } => "InstantiateFailed",
                        Error::Registration { .. } => "RegistrationInvalid",
                        Error::Trap { .. } => "RegisterTrapped",
                        _ => "LoadFailed",
                    };
                    Refusal::new(reason, format!("{e:#}"))
                })?,
        };
        check_role(spec, &plugin)?;
        check_grant(spec, &plugin)?;
        plugin.restrict(Grant::of(spec));
        Ok(plugin)
    }

    fn limits(&self, spec: &PluginSpec) -> Limits {
        let mut l = self.host.config.limits();
        if let Some(lim) = &spec.limits {
            if let Some(ms) = lim.call_deadline_milliseconds {
                l.call_deadline = Duration::from_millis(ms.max(1) as u64);
            }
            if let Some(b) = lim
                .memory
                .as_ref()
                .and_then(|q| kedge_core::quantity::parse_bytes(&q.0).ok())
            {
                l.memory = b as usize;
            }
        }
        l
    }

    fn cached_path(&self, digest: &str) -> PathBuf {
        self.cache_dir
            .join(format!("{}.wasm", digest.replace(':', "-")))
    }

    /// Keeps a component that is about to run, for restarts (temp file + rename).
    fn keep(&self, digest: &str, bytes: &[u8]) {
        let path = self.cached_path(digest);
        if path.exists() {
            return;
        }
        let tmp = path.with_extension("tmp");
        if let Err(e) = std::fs::write(&tmp, bytes).and_then(|_| std::fs::rename(&tmp, &path)) {
            tracing::warn!(error = %e, path = %path.display(), "could not keep the plugin component");
        }
    }

    async fn fetch(&self, source: &PluginSource) -> Result<Vec<u8>, Refusal> {
        if let Some(b) = &source.builtin {
            return self
                .builtins
                .iter()
                .find(|(n, _)| n == b)
                .map(|(_, bytes)| bytes.to_vec())
                .ok_or_else(|| {
                    Refusal::new("SourceUnavailable", format!("no built-in plugin {b:?}"))
                });
        }
        if let Some(f) = &source.file {
            return tokio::fs::read(f)
                .await
                .map_err(|e| Refusal::new("SourceUnavailable", format!("reading {f}: {e}")));
        }
        let Some(image) = &source.image else {
            return Err(Refusal::new(
                "InvalidSpec",
                "spec.source names nothing to run",
            ));
        };
        let Some(puller) = &self.puller else {
            return Err(Refusal::new(
                "SourceUnavailable",
                "the server has no image store for plugin images",
            ));
        };
        let reference = Reference::parse(image).map_err(|e| {
            Refusal::new("InvalidSpec", format!("spec.source.image {image:?}: {e}"))
        })?;
        let mut credentials = Vec::new();
        if let Some(secret) = &source.image_pull_secret {
            credentials = self.pull_secret(secret, &reference)?;
        }
        let policy = kedge_registry::default_pull_policy(&reference);
        let img = puller
            .ensure(&reference, policy, &credentials)
            .await
            .map_err(|e| Refusal::new("PullFailed", format!("pulling {image}: {}", e.message)))?;
        match img.kind {
            ImageKind::Wasm { module } => tokio::fs::read(&module).await.map_err(|e| {
                Refusal::new(
                    "SourceUnavailable",
                    format!("reading the pulled module: {e}"),
                )
            }),
            ImageKind::Oci { .. } => Err(Refusal::new(
                "NotWasm",
                format!("{image} is a container image, not a Wasm component"),
            )),
        }
    }

    fn pull_secret(
        &self,
        name: &str,
        reference: &Reference,
    ) -> Result<Vec<kedge_registry::Credential>, Refusal> {
        let res = resources::by_kind("v1", "Secret").expect("served");
        let s = self.api.get(res, "kube-system", name).map_err(|e| {
            Refusal::new(
                "PullSecretUnavailable",
                format!("secret kube-system/{name}: {}", e.message),
            )
        })?;
        let data = s
            .pointer("/data/.dockerconfigjson")
            .and_then(Value::as_str)
            .ok_or_else(|| {
                Refusal::new(
                    "PullSecretUnavailable",
                    format!("secret kube-system/{name} has no .dockerconfigjson"),
                )
            })?;
        let bytes = base64::engine::general_purpose::STANDARD
            .decode(data)
            .map_err(|e| {
                Refusal::new(
                    "PullSecretUnavailable",
                    format!("secret kube-system/{name}: {e}"),
                )
            })?;
        let keyring = Keyring::from_dockerconfigjson(&bytes).map_err(|e| {
            Refusal::new(
                "PullSecretUnavailable",
                format!("secret kube-system/{name}: {e}"),
            )
        })?;
        Ok(keyring.lookup(reference))
    }

    /// A version was not swapped in: the running one (if any) stays.
    fn refused(&self, name: &str, generation: i64, running: bool, r: Refusal) {
        tracing::warn!(plugin = name, generation, reason = r.reason, message = %r.message, "plugin version refused");
        let message = if running {
            format!("{}; the running version stays", r.message)
        } else {
            r.message.clone()
        };
        let reason = r.reason;
        let msg = message.clone();
        self.update(name, Some(("Warning", reason, message)), move |s, g| {
            s.observed_generation = Some(g);
            if !running {
                s.phase = Some("Failed".into());
            }
            set_condition(s, "Ready", false, reason, &msg, g);
        });
    }

    fn update(
        &self,
        name: &str,
        event: Option<(&'static str, &'static str, String)>,
        mutate: impl FnOnce(&mut PluginStatus, i64) + Send + 'static,
    ) {
        let _ = self.updates.send(Update {
            name: name.to_string(),
            mutate: Box::new(mutate),
            event,
        });
    }

    fn event(&self, name: &str, ty: &'static str, reason: &'static str, message: &str) {
        self.update(name, Some((ty, reason, message.to_string())), |_, _| {});
    }

    /// Applies status updates in the order they were made (the manager's and the slots').
    async fn write_statuses(self: Arc<Self>, mut rx: mpsc::UnboundedReceiver<Update>) {
        let cancel = self.host.cancel.clone();
        loop {
            let u = tokio::select! {
                _ = cancel.cancelled() => break,
                u = rx.recv() => match u { Some(u) => u, None => break },
            };
            if self.is_leading(&u.name) == Some(false) {
                // Another replica runs the plugin and writes its status.
                let name = u.name.clone();
                {
                    let mut parked = self.parked.lock().unwrap_or_else(|p| p.into_inner());
                    let q = parked.entry(name.clone()).or_default();
                    if q.len() == PARKED_PER_PLUGIN {
                        q.pop_front();
                    }
                    q.push_back(u);
                }
                // The lease may have come meanwhile, its flush already done: flush again.
                if self.is_leading(&name) == Some(true) {
                    self.flush_parked(&name);
                }
                continue;
            }
            let api = self.api.clone();
            // Store writes block (group commit); keep them off the async workers.
            let _ = tokio::task::spawn_blocking(move || write_status(&api, u)).await;
        }
    }
}

impl Refusal {
    fn clone_shallow(&self) -> Refusal {
        Refusal::new(self.reason, self.message.clone())
    }
}

struct WeakObserver(std::sync::Weak<PluginManager>);

impl SlotObserver for WeakObserver {
    fn observe(&self, slot: &str, event: SlotEvent) {
        if let Some(m) = self.0.upgrade() {
            m.observe(slot, event);
        }
    }
}

impl SlotObserver for PluginManager {
    fn observe(&self, slot: &str, event: SlotEvent) {
        match event {
            SlotEvent::ProbationPassed { digest } => {
                let msg = format!("{digest} passed probation and is now the active version");
                let ready = msg.clone();
                self.update(slot, Some(("Normal", "Activated", msg)), move |s, g| {
                    s.phase = Some("Active".into());
                    set_condition(s, "Ready", true, "Active", &ready, g);
                });
            }
            SlotEvent::RolledBack {
                failed,
                restored,
                reason,
            } => {
                let origin = self
                    .entries()
                    .get(slot)
                    .and_then(|e| e.versions.get(&restored).cloned());
                let msg = format!(
                    "{failed} trapped on probation and was rolled back to {restored}: {reason}"
                );
                let ready = msg.clone();
                self.update(slot, Some(("Warning", "RolledBack", msg)), move |s, g| {
                    s.phase = Some("Active".into());
                    s.active_digest = Some(restored);
                    if let Some(o) = origin {
                        s.active_source = Some(o.source);
                        s.active_generation = Some(o.generation);
                    }
                    set_condition(s, "Ready", false, "RolledBack", &ready, g);
                });
            }
            SlotEvent::Unhealthy { digest, reason } => {
                let msg = format!("{digest} keeps trapping; calls are backed off: {reason}");
                let cond = msg.clone();
                self.update(slot, Some(("Warning", "Trapping", msg)), move |s, g| {
                    set_condition(s, "Healthy", false, "Trapping", &cond, g);
                });
            }
            SlotEvent::Healthy { digest } => {
                let msg = format!("{digest} completes calls again");
                self.update(slot, None, move |s, g| {
                    set_condition(s, "Healthy", true, "CallsSucceeding", &msg, g);
                });
            }
        }
    }
}

fn swapped(
    digest: String,
    source: String,
    from_generation: i64,
    swap_ms: i64,
    on_probation: bool,
    message: String,
) -> impl FnOnce(&mut PluginStatus, i64) + Send + 'static {
    move |s, g| {
        s.observed_generation = Some(g);
        s.active_digest = Some(digest);
        s.active_source = Some(source);
        s.active_generation = Some(from_generation);
        s.last_swap_time = Some(now());
        s.last_swap_milliseconds = Some(swap_ms);
        if on_probation {
            s.phase = Some("Probation".into());
            set_condition(s, "Ready", false, "Probation", &message, g);
        } else {
            s.phase = Some("Active".into());
            set_condition(s, "Ready", true, "Active", &message, g);
        }
        set_condition(s, "Healthy", true, "CallsSucceeding", "", g);
    }
}

fn now() -> Time {
    // Kubernetes times have second precision.
    let secs = chrono::Utc::now().timestamp();
    Time(k8s_openapi::jiff::Timestamp::new(secs, 0).expect("now is a valid timestamp"))
}

fn set_condition(
    s: &mut PluginStatus,
    ty: &str,
    ok: bool,
    reason: &str,
    message: &str,
    generation: i64,
) {
    let status = if ok { "True" } else { "False" };
    let existing = s.conditions.iter_mut().find(|c| c.type_ == ty);
    match existing {
        Some(c) => {
            if c.status != status {
                c.last_transition_time = now();
            }
            c.status = status.into();
            c.reason = reason.into();
            c.message = message.into();
            c.observed_generation = Some(generation);
        }
        None => s.conditions.push(Condition {
            type_: ty.into(),
            status: status.into(),
            reason: reason.into(),
            message: message.into(),
            last_transition_time: now(),
            observed_generation: Some(generation),
        }),
    }
}

/// Get, change, put the status; retried on conflicts. A deleted plugin is left alone.
fn write_status(api: &Api, u: Update) {
    let res = plugin_res();
    let mut mutate = Some(u.mutate);
    let mut uid = String::new();
    for _ in 0..10 {
        let Ok(mut obj) = api.get(res, "", &u.name) else {
            return;
        };
        uid = meta::uid(&obj).to_string();
        let generation = obj
            .pointer("/metadata/generation")
            .and_then(Value::as_i64)
            .unwrap_or(0);
        let mut status: PluginStatus = obj
            .get("status")
            .cloned()
            .and_then(|s| serde_json::from_value(s).ok())
            .unwrap_or_default();
        // The closure runs once; a conflict retries with the status it produced.
        if let Some(f) = mutate.take() {
            f(&mut status, generation);
            obj["status"] = serde_json::to_value(&status).expect("serializes");
            match api.update(
                res,
                "",
                &u.name,
                obj,
                Some("status"),
                &WriteOptions::default(),
            ) {
                Ok(_) => break,
                Err(e) if e.code == 409 => {
                    // Re-read and re-apply the result on the fresh object.
                    let wanted = status.clone();
                    mutate = Some(Box::new(move |s: &mut PluginStatus, _| *s = wanted));
                    continue;
                }
                Err(e) if e.code == 404 => return,
                Err(e) => {
                    tracing::warn!(plugin = %u.name, error = %e, "writing plugin status failed");
                    break;
                }
            }
        }
    }
    if let Some((ty, reason, message)) = u.event {
        record_event(api, &u.name, &uid, ty, reason, &message);
    }
}

/// An Event about a Plugin (cluster-scoped objects' events live in `default`).
fn record_event(api: &Api, name: &str, uid: &str, ty: &str, reason: &str, message: &str) {
    let res = resources::by_kind("v1", "Event").expect("served");
    let now = api.now();
    let ev = json!({
        "metadata": {"name": format!("{name}.{:016x}", rand::random::<u64>()), "namespace": "default"},
        "involvedObject": {"apiVersion": "plugins.kedge.io/v1", "kind": "Plugin", "name": name, "uid": uid},
        "reason": reason,
        "message": message,
        "type": ty,
        "source": {"component": COMPONENT},
        "reportingComponent": COMPONENT,
        "firstTimestamp": now,
        "lastTimestamp": now,
        "count": 1,
    });
    if let Err(e) = api.create(res, "default", ev, &WriteOptions::default()) {
        tracing::debug!(error = %e, "recording a plugin event failed");
    }
}

fn kind_ref(r: &Resource) -> PluginKindRef {
    PluginKindRef {
        api_version: r.api_version(),
        kind: r.kind.into(),
    }
}

fn every_ref() -> PluginKindRef {
    PluginKindRef {
        api_version: "*".into(),
        kind: "*".into(),
    }
}

/// The Plugin object of a built-in plugin, granting what its registration declares.
fn builtin_object(name: &str, plugin: &Plugin) -> Value {
    let p = plugin.permissions();
    // Watched: the primary and owned kinds, and whatever else it reads without writing.
    let mut watches: Vec<PluginKindRef> = Vec::new();
    if p.for_kind.is_none() || p.readable.every {
        watches.push(every_ref());
    }
    let extra = p
        .readable
        .kinds
        .iter()
        .filter(|r| !p.writable.contains(r))
        .chain(&p.metrics);
    for r in p.for_kind.iter().chain(&p.owns).chain(extra) {
        let k = kind_ref(r);
        if !watches.contains(&k) {
            watches.push(k);
        }
    }
    let mut writes: Vec<PluginKindRef> = Vec::new();
    if p.writable.every {
        writes.push(every_ref());
    }
    writes.extend(p.writable.kinds.iter().map(|r| kind_ref(r)));
    let role = if name == "scheduler" {
        "scheduler"
    } else {
        "controller"
    };
    json!({
        "apiVersion": "plugins.kedge.io/v1",
        "kind": "Plugin",
        "metadata": {"name": name, "labels": {"plugins.kedge.io/builtin": "true"}},
        "spec": {
            "role": role,
            "source": {"builtin": name},
            "watches": watches,
            "writes": writes,
        },
    })
}

fn grant_set(refs: &[PluginKindRef]) -> KindSet {
    let mut set = KindSet::default();
    for k in refs {
        if super::is_wildcard(&k.api_version, &k.kind) {
            set.every = true;
        } else if let Some(r) = resources::by_kind(&k.api_version, &k.kind)
            .or_else(|| kedge_api::resource_metrics::by_kind(&k.api_version, &k.kind))
        {
            set.kinds.push(r);
        }
    }
    set
}

impl Grant {
    /// What a Plugin's spec grants: `watches` may be read, `writes` read and written.
    pub fn of(spec: &PluginSpec) -> Grant {
        let writes = grant_set(&spec.writes);
        let mut reads = grant_set(&spec.watches);
        reads.every |= writes.every;
        reads.kinds.extend(writes.kinds.iter().copied());
        Grant { reads, writes }
    }
}

/// The registration must fit in the spec's grant: primary and owned kinds in `watches`, read
/// kinds in `watches` or `writes`, written kinds in `writes`.
fn check_grant(spec: &PluginSpec, plugin: &Plugin) -> Result<(), Refusal> {
    let p = plugin.permissions();
    let watches = grant_set(&spec.watches);
    let g = Grant::of(spec);
    let mut missing = Vec::new();
    let name = |r: &Resource| format!("{}/{}", r.api_version(), r.kind);
    match p.for_kind {
        None if !watches.every => missing.push("*/* (every kind) in spec.watches".to_string()),
        Some(r) if !watches.contains(r) => missing.push(format!("{} in spec.watches", name(r))),
        _ => {}
    }
    for r in &p.owns {
        if !watches.contains(r) {
            missing.push(format!("{} in spec.watches", name(r)));
        }
    }
    if p.readable.every && !g.reads.every && p.for_kind.is_some() {
        missing.push("*/* (every kind) in spec.watches".to_string());
    }
    for r in p.readable.kinds.iter().chain(&p.metrics) {
        if !g.reads.contains(r) {
            missing.push(format!("{} in spec.watches", name(r)));
        }
    }
    if p.writable.every && !g.writes.every {
        missing.push("*/* (every kind) in spec.writes".to_string());
    }
    for r in &p.writable.kinds {
        if !g.writes.contains(r) {
            missing.push(format!("{} in spec.writes", name(r)));
        }
    }
    missing.dedup();
    if missing.is_empty() {
        Ok(())
    } else {
        Err(Refusal::new(
            "RegistrationExceedsGrant",
            format!(
                "plugin {} (registered as {:?}) needs {} which the Plugin does not grant",
                plugin.digest(),
                plugin.name(),
                missing.join(", ")
            ),
        ))
    }
}

/// A scheduler reconciles pods and must be allowed to bind them.
fn check_role(spec: &PluginSpec, plugin: &Plugin) -> Result<(), Refusal> {
    if spec.role.as_deref() != Some("scheduler") {
        return Ok(());
    }
    let p = plugin.permissions();
    let pod = resources::by_kind("v1", "Pod").expect("served");
    if !p.for_kind.is_some_and(|r| std::ptr::eq(r, pod)) || !p.writable.contains(pod) {
        return Err(Refusal::new(
            "RoleMismatch",
            format!(
                "a scheduler must reconcile v1/Pod and write v1/Pod; {} reconciles {}",
                plugin.digest(),
                p.for_kind
                    .map(|r| format!("{}/{}", r.api_version(), r.kind))
                    .unwrap_or_else(|| "every kind".into()),
            ),
        ));
    }
    Ok(())
}
