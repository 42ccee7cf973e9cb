//! The plugin host: runs controllers and the scheduler as WebAssembly components.
//!
//! Each plugin is compiled once and pre-instantiated; every reconcile gets a fresh instance
//! (microseconds), so a trap cannot leave state behind. Every call runs under an epoch deadline
//! (CPU time) and a memory cap; a trap or timeout fails that reconcile, which is retried with
//! back-off — the host and other plugins carry on. Reads come from shared informer caches,
//! writes go through [`Api`] (same defaulting and validation as kubectl's requests), limited to
//! the kinds the plugin declared.

pub mod manager;
pub mod queue;
mod slot;

pub use slot::{Slot, SlotEvent, SlotObserver};

use kedge_api::plugin_kind as kind;
use kedge_store::informer;

use std::path::PathBuf;
use std::sync::Arc;
use std::time::Duration;

use serde_json::Value;
use tokio_util::sync::CancellationToken;
use wasmtime::component::{Component, Linker, ResourceTable};
use wasmtime::{Engine, Store, StoreLimits, StoreLimitsBuilder};
use wasmtime_wasi::{WasiCtx, WasiCtxView, WasiView};

use kedge_api::ops::{DeleteOptions, WriteOptions};
use kedge_api::schema::FieldValidation;
use kedge_api::{Api, ApiError};
use kedge_core::meta;
use kedge_core::patch::PatchType;
use kedge_core::resources::{self, Resource};
use kedge_core::selector::Selector as LabelSelector;
use kedge_store::EventType;
use kedge_store::informer::Informers;

wasmtime::component::bindgen!({
    path: "../../guest-sdk/wit",
    world: "controller",
    exports: { default: async },
});

use self::kedge::plugin::cluster::LogLevel;
use self::kedge::plugin::types::{
    ApiError as WitApiError, DeleteOptions as WitDeleteOptions, KindRef,
    Propagation as WitPropagation, Watch, WatchMap,
};

/// The epoch ticks every 10 ms; deadlines are counted in ticks.
const EPOCH_TICK: Duration = Duration::from_millis(10);

#[derive(Debug, thiserror::Error)]
pub enum Error {
    #[error("compiling plugin {name}: {source}")]
    Compile {
        name: String,
        #[source]
        source: wasmtime::Error,
    },
    #[error("instantiating plugin {name}: {source}")]
    Instantiate {
        name: String,
        #[source]
        source: wasmtime::Error,
    },
    #[error("plugin {name} registration is invalid: {why}")]
    Registration { name: String, why: String },
    #[error("plugin {plugin} reconcile of {key} trapped: {reason}")]
    Trap {
        plugin: String,
        key: String,
        reason: String,
    },
    #[error("plugin {plugin} reconcile of {key} failed: {message}")]
    Reconcile {
        plugin: String,
        key: String,
        message: String,
    },
    #[error("plugin engine: {0}")]
    Engine(#[source] wasmtime::Error),
}

pub type Result<T, E = Error> = std::result::Result<T, E>;

/// Limits and locations for the plugin host.
#[derive(Clone, Debug)]
pub struct PluginConfig {
    /// Wall-clock budget of one reconcile call (host calls included). A controller that
    /// needs more is looping or doing too much in one step.
    pub call_deadline: Duration,
    /// Linear memory cap per instance.
    pub memory_limit: usize,
    /// Where compiled plugins are cached (keyed by content hash and engine version).
    pub cache_dir: Option<PathBuf>,
}

impl Default for PluginConfig {
    fn default() -> Self {
        PluginConfig {
            call_deadline: Duration::from_secs(2),
            memory_limit: 64 << 20,
            cache_dir: None,
        }
    }
}

/// Sandbox limits of one plugin's calls.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Limits {
    pub call_deadline: Duration,
    pub memory: usize,
}

impl PluginConfig {
    pub fn limits(&self) -> Limits {
        Limits {
            call_deadline: self.call_deadline,
            memory: self.memory_limit,
        }
    }
}

/// The kinds "every kind" (`*` in a registration or grant) stands for: every served kind but
/// Events (the busiest kind, never anyone's dependent in practice) and Plugins (which no plugin
/// may touch).
pub fn every_kind() -> impl Iterator<Item = &'static Resource> {
    resources::RESOURCES
        .iter()
        .filter(|r| !matches!(r.kind, "Event" | "Plugin"))
}

pub use kedge_api::plugin_kind::is_wildcard;

/// A set of kinds: some, or every kind ([`every_kind`]).
#[derive(Debug, Default, Clone)]
pub struct KindSet {
    pub every: bool,
    pub kinds: Vec<&'static Resource>,
}

impl KindSet {
    pub fn contains(&self, res: &Resource) -> bool {
        (self.every && every_kind().any(|r| std::ptr::eq(r, res)))
            || self.kinds.iter().any(|r| std::ptr::eq(*r, res))
    }

    /// The kinds in the set.
    pub fn iter(&self) -> Box<dyn Iterator<Item = &'static Resource> + Send + '_> {
        if self.every {
            // Every kind, and what was named besides it (Events).
            let extra = self
                .kinds
                .iter()
                .copied()
                .filter(|r| !every_kind().any(|e| std::ptr::eq(e, *r)));
            Box::new(every_kind().chain(extra))
        } else {
            Box::new(self.kinds.iter().copied())
        }
    }

    fn add(&mut self, res: &'static Resource) {
        if !self.kinds.iter().any(|r| std::ptr::eq(*r, res)) {
            self.kinds.push(res);
        }
    }
}

/// What a loaded plugin may touch, resolved from its registration.
#[derive(Debug)]
pub struct Permissions {
    /// The primary kind; `None` when the plugin reconciles objects of every kind (its
    /// registration's `for-kind` is `*`/`*`).
    pub for_kind: Option<&'static Resource>,
    pub owns: Vec<&'static Resource>,
    /// Kinds whose events enqueue primary objects found by name or label selector (the
    /// `watching-controller` world's `watches`).
    pub watches: Vec<WatchRule>,
    pub readable: KindSet,
    pub writable: KindSet,
}

/// A validated [`Watch`]: events of `kind` enqueue the primary objects `by` finds.
#[derive(Debug, Clone)]
pub struct WatchRule {
    pub kind: &'static Resource,
    pub by: WatchBy,
}

/// How a [`WatchRule`] finds primary objects; paths are JSON pointers.
#[derive(Debug, Clone, PartialEq)]
pub enum WatchBy {
    SameName,
    SelectorMap(String),
    LabelSelector(String),
}

impl WatchBy {
    /// The selector a primary object carries for this rule; `None` selects nothing.
    pub fn selector_of(&self, primary: &Value) -> Option<LabelSelector> {
        match self {
            WatchBy::SameName => None,
            WatchBy::SelectorMap(path) => {
                let map = primary.pointer(path)?.as_object()?;
                if map.is_empty() {
                    return None;
                }
                Some(kedge_core::selector::from_labels(map))
            }
            WatchBy::LabelSelector(path) => {
                let selector = primary.pointer(path).filter(|v| v.is_object())?;
                kedge_core::selector::from_structured(selector).ok()
            }
        }
    }
}

/// A dotted field path (`spec.selector`) as a JSON pointer (`/spec/selector`).
fn field_pointer(path: &str) -> std::result::Result<String, String> {
    if path.is_empty() || path.split('.').any(str::is_empty) {
        return Err(format!("watch path {path:?} is not a dotted field path"));
    }
    Ok(path
        .split('.')
        .map(|seg| format!("/{}", seg.replace('~', "~0").replace('/', "~1")))
        .collect())
}

fn resolve_watch(
    w: &Watch,
    primary: Option<&'static Resource>,
) -> std::result::Result<WatchRule, String> {
    let Some(primary) = primary else {
        return Err(
            "a plugin reconciling every kind (`*`) has no watches: every event \
                    already enqueues its own object"
                .into(),
        );
    };
    let kind = resolve_kind(&w.kind)?;
    if !primary.namespaced || !kind.namespaced {
        return Err(format!(
            "watch of {}/{}: watches map within a namespace, so both kinds must be namespaced",
            w.kind.api_version, w.kind.kind
        ));
    }
    let by = match &w.by {
        WatchMap::SameName => WatchBy::SameName,
        WatchMap::SelectorMap(p) => WatchBy::SelectorMap(field_pointer(p)?),
        WatchMap::LabelSelector(p) => WatchBy::LabelSelector(field_pointer(p)?),
    };
    Ok(WatchRule { kind, by })
}

fn resolve_kind(k: &KindRef) -> std::result::Result<&'static Resource, String> {
    resources::by_kind(&k.api_version, &k.kind)
        .filter(|r| r.kind != "Plugin")
        .ok_or_else(|| format!("kind {}/{} is not served", k.api_version, k.kind))
}

fn resolve_set(refs: &[KindRef]) -> std::result::Result<KindSet, String> {
    let mut set = KindSet::default();
    for k in refs {
        if is_wildcard(&k.api_version, &k.kind) {
            set.every = true;
        } else {
            set.add(resolve_kind(k)?);
        }
    }
    Ok(set)
}

impl Permissions {
    fn from_registration(r: &Registration, watches: &[Watch]) -> std::result::Result<Self, String> {
        let for_kind = if is_wildcard(&r.for_kind.api_version, &r.for_kind.kind) {
            None
        } else {
            Some(resolve_kind(&r.for_kind)?)
        };
        let owns = r
            .owns
            .iter()
            .map(resolve_kind)
            .collect::<Result<Vec<_>, _>>()?;
        if for_kind.is_none() && !owns.is_empty() {
            return Err(
                "a plugin reconciling every kind (`*`) owns nothing: every event \
                        already enqueues its own object"
                    .into(),
            );
        }
        let watches = watches
            .iter()
            .map(|w| resolve_watch(w, for_kind))
            .collect::<Result<Vec<_>, _>>()?;
        let mut readable = resolve_set(&r.reads)?;
        let writable = resolve_set(&r.writes)?;
        readable.every |= for_kind.is_none() || writable.every;
        let watched = watches.iter().map(|w| w.kind);
        for k in for_kind
            .into_iter()
            .chain(owns.iter().copied())
            .chain(watched)
        {
            readable.add(k);
        }
        for k in &writable.kinds {
            readable.add(k);
        }
        Ok(Permissions {
            for_kind,
            owns,
            watches,
            readable,
            writable,
        })
    }

    /// The kinds whose events reach the plugin as keys of their own: the primary kind, or
    /// every kind.
    pub fn primaries(&self) -> Box<dyn Iterator<Item = &'static Resource> + Send + '_> {
        match self.for_kind {
            Some(r) => Box::new(std::iter::once(r)),
            None => Box::new(every_kind()),
        }
    }
}

/// What the Plugin object grants (its `spec.watches` and `spec.writes`). A running version is
/// held to the intersection of its registration and the current grant, so narrowing the grant
/// takes effect on the next host call, before any version fitting it is applied.
#[derive(Debug, Clone, Default)]
pub struct Grant {
    pub reads: KindSet,
    pub writes: KindSet,
}

/// Per-call state inside the wasmtime store.
struct HostState {
    plugin: Arc<PluginShared>,
    limits: StoreLimits,
    wasi: WasiCtx,
    table: ResourceTable,
}

impl WasiView for HostState {
    fn ctx(&mut self) -> WasiCtxView<'_> {
        WasiCtxView {
            ctx: &mut self.wasi,
            table: &mut self.table,
        }
    }
}

/// What host functions need, shared by all calls of one plugin.
struct PluginShared {
    name: String,
    api: Arc<Api>,
    informers: Arc<Informers>,
    perms: Permissions,
    /// The Plugin object's grant; `None` for plugins started without one (tests, benches).
    grant: std::sync::RwLock<Option<Grant>>,
}

fn wit_error(e: ApiError) -> WitApiError {
    let m = e.message.clone();
    match (e.code, e.reason) {
        (404, _) => WitApiError::NotFound(m),
        (409, "AlreadyExists") => WitApiError::AlreadyExists(m),
        (409, _) => WitApiError::Conflict(m),
        (400 | 422, _) => WitApiError::Invalid(m),
        (401 | 403, _) => WitApiError::Forbidden(m),
        _ => WitApiError::Other(m),
    }
}

impl PluginShared {
    fn readable(
        &self,
        av: &str,
        kind: &str,
    ) -> std::result::Result<&'static Resource, WitApiError> {
        let res = resources::by_kind(av, kind)
            .filter(|r| self.perms.readable.contains(r))
            .ok_or_else(|| {
                WitApiError::Forbidden(format!("plugin {} did not declare {av}/{kind}", self.name))
            })?;
        if !self.granted(|g| g.reads.contains(res)) {
            return Err(WitApiError::Forbidden(format!(
                "plugin {}: the Plugin's grant no longer includes {av}/{kind}",
                self.name
            )));
        }
        Ok(res)
    }

    fn writable(
        &self,
        av: &str,
        kind: &str,
    ) -> std::result::Result<&'static Resource, WitApiError> {
        let res = resources::by_kind(av, kind)
            .filter(|r| self.perms.writable.contains(r))
            .ok_or_else(|| {
                WitApiError::Forbidden(format!(
                    "plugin {} may not write {av}/{kind}: not in its declared writes",
                    self.name
                ))
            })?;
        if !self.granted(|g| g.writes.contains(res)) {
            return Err(WitApiError::Forbidden(format!(
                "plugin {} may not write {av}/{kind}: the Plugin's spec.writes no longer \
                 includes it",
                self.name
            )));
        }
        Ok(res)
    }

    fn granted(&self, check: impl FnOnce(&Grant) -> bool) -> bool {
        match &*self.grant.read().unwrap_or_else(|p| p.into_inner()) {
            Some(g) => check(g),
            None => true,
        }
    }

    fn write_options() -> WriteOptions {
        // Plugins get strict decoding: an unknown field is a plugin bug worth surfacing.
        WriteOptions {
            validation: FieldValidation::Strict,
            ..Default::default()
        }
    }

    /// PUT of a whole object or (`sub`) its status, recorded in the cache on success.
    fn put(
        &self,
        res: &'static Resource,
        namespace: &str,
        body: &str,
        sub: Option<&str>,
    ) -> std::result::Result<String, WitApiError> {
        let obj = parse_body(body)?;
        let name = meta::name(&obj).to_string();
        let out = self
            .api
            .update(res, namespace, &name, obj, sub, &Self::write_options())
            .map_err(wit_error)?;
        self.record_write(res, &out);
        Ok(out.to_string())
    }

    fn delete(
        &self,
        api_version: &str,
        kind: &str,
        namespace: &str,
        name: &str,
        opts: DeleteOptions,
    ) -> std::result::Result<(), WitApiError> {
        let res = self.writable(api_version, kind)?;
        let out = self
            .api
            .delete(res, namespace, name, &opts)
            .map_err(wit_error)?;
        // Gone, or only marked for deletion (graceful pods, finalizers)?
        let gone = self.api.get(res, namespace, name).is_err();
        self.record(
            res,
            if gone {
                EventType::Deleted
            } else {
                EventType::Modified
            },
            &out,
        );
        Ok(())
    }

    /// Records an update or patch: a write that removed the last finalizer of an object
    /// being deleted deleted it.
    fn record_write(&self, res: &'static Resource, out: &Value) {
        // The API returns the object as it was stored before the delete (finalizers and all),
        // and a pod terminating gracefully has a deletionTimestamp yet exists: ask the
        // store. Recording a deleted object as modified would leave a ghost in the cache
        // (its deletion event carries the same revision and would be ignored).
        let gone = out.pointer("/metadata/deletionTimestamp").is_some()
            && self
                .api
                .get(res, meta::namespace(out), meta::name(out))
                .is_err();
        let kind = if gone {
            EventType::Deleted
        } else {
            EventType::Modified
        };
        self.record(res, kind, out);
    }

    fn record(&self, res: &'static Resource, kind: EventType, obj: &Value) {
        self.informers.get(res).write_through(kind, obj.clone());
    }
}

fn parse_body(body: &str) -> std::result::Result<Value, WitApiError> {
    serde_json::from_str(body).map_err(|e| WitApiError::Invalid(format!("body is not JSON: {e}")))
}

impl self::kedge::plugin::types::Host for HostState {}

impl self::kedge::plugin::cluster::Host for HostState {
    fn get(
        &mut self,
        api_version: String,
        kind: String,
        namespace: String,
        name: String,
    ) -> std::result::Result<Option<String>, WitApiError> {
        let p = &self.plugin;
        let res = p.readable(&api_version, &kind)?;
        // Straight from the store, not the informer cache: a controller deciding on one
        // object (adopt or not, is it being deleted) must see its latest state, as
        // Kubernetes' controllers re-read an owner uncached before adopting. Lists stay
        // cached. A namespace given for a cluster-scoped kind (an owner looked up from its
        // dependent's namespace) is ignored.
        let namespace = if res.namespaced {
            namespace.as_str()
        } else {
            ""
        };
        match p.api.get(res, namespace, &name) {
            Ok(o) => Ok(Some(o.to_string())),
            Err(e) if e.code == 404 => Ok(None),
            Err(e) => Err(wit_error(e)),
        }
    }

    fn list(
        &mut self,
        api_version: String,
        kind: String,
        namespace: String,
        label_selector: String,
    ) -> std::result::Result<Vec<String>, WitApiError> {
        let p = &self.plugin;
        let sel = LabelSelector::parse(&label_selector)
            .map_err(|e| WitApiError::Invalid(e.to_string()))?;
        if is_wildcard(&api_version, &kind) {
            // Everything the plugin may read (in `namespace`: namespaced kinds only).
            let mut out = Vec::new();
            for res in p.perms.readable.iter() {
                if (!namespace.is_empty() && !res.namespaced)
                    || !p.granted(|g| g.reads.contains(res))
                {
                    continue;
                }
                out.extend(
                    p.informers
                        .get(res)
                        .list_raw(&namespace, &sel)
                        .iter()
                        .map(|o| o.to_string()),
                );
            }
            return Ok(out);
        }
        let res = p.readable(&api_version, &kind)?;
        Ok(p.informers
            .get(res)
            .list_raw(&namespace, &sel)
            .iter()
            .map(|o| o.to_string())
            .collect())
    }

    fn create(
        &mut self,
        api_version: String,
        kind: String,
        namespace: String,
        body: String,
    ) -> std::result::Result<String, WitApiError> {
        let p = &self.plugin;
        let res = p.writable(&api_version, &kind)?;
        let obj = parse_body(&body)?;
        let created = p
            .api
            .create(res, &namespace, obj, &PluginShared::write_options())
            .map_err(wit_error)?;
        p.record(res, EventType::Added, &created);
        Ok(created.to_string())
    }

    fn update(
        &mut self,
        api_version: String,
        kind: String,
        namespace: String,
        body: String,
    ) -> std::result::Result<String, WitApiError> {
        let p = &self.plugin;
        let res = p.writable(&api_version, &kind)?;
        p.put(res, &namespace, &body, None)
    }

    fn update_status(
        &mut self,
        api_version: String,
        kind: String,
        namespace: String,
        body: String,
    ) -> std::result::Result<String, WitApiError> {
        let p = &self.plugin;
        let res = p.writable(&api_version, &kind)?;
        if !res.has("status") {
            return Err(WitApiError::Invalid(format!(
                "{kind} has no status subresource"
            )));
        }
        p.put(res, &namespace, &body, Some("status"))
    }

    fn patch(
        &mut self,
        api_version: String,
        kind: String,
        namespace: String,
        name: String,
        patch: String,
    ) -> std::result::Result<String, WitApiError> {
        let p = &self.plugin;
        let res = p.writable(&api_version, &kind)?;
        let body = parse_body(&patch)?;
        let out = p
            .api
            .patch(
                res,
                &namespace,
                &name,
                None,
                &body,
                PatchType::Merge,
                &PluginShared::write_options(),
            )
            .map_err(wit_error)?;
        p.record_write(res, &out);
        Ok(out.to_string())
    }

    fn delete(
        &mut self,
        api_version: String,
        kind: String,
        namespace: String,
        name: String,
    ) -> std::result::Result<(), WitApiError> {
        self.plugin.delete(
            &api_version,
            &kind,
            &namespace,
            &name,
            DeleteOptions::default(),
        )
    }

    fn delete_with(
        &mut self,
        api_version: String,
        kind: String,
        namespace: String,
        name: String,
        options: WitDeleteOptions,
    ) -> std::result::Result<(), WitApiError> {
        use kedge_api::ops::Propagation;
        let opts = DeleteOptions {
            propagation: options.propagation.map(|p| match p {
                WitPropagation::Background => Propagation::Background,
                WitPropagation::Foreground => Propagation::Foreground,
                WitPropagation::Orphan => Propagation::Orphan,
            }),
            precondition_uid: options.uid,
            precondition_rv: options.resource_version,
            ..Default::default()
        };
        self.plugin
            .delete(&api_version, &kind, &namespace, &name, opts)
    }

    fn dependents(&mut self, owner_uid: String) -> std::result::Result<Vec<String>, WitApiError> {
        let p = &self.plugin;
        let mut out = Vec::new();
        p.informers.owners().dependents(&owner_uid, |d| {
            if p.perms.readable.contains(d.res)
                && p.granted(|g| g.reads.contains(d.res))
                && let Some(o) = p.informers.get(d.res).get_raw(d.namespace, d.name)
            {
                out.push(o.to_string());
            }
        });
        Ok(out)
    }

    fn bind_pod(
        &mut self,
        namespace: String,
        name: String,
        node: String,
    ) -> std::result::Result<(), WitApiError> {
        let p = &self.plugin;
        let res = p.writable("v1", "Pod")?;
        let binding = serde_json::json!({"target": {"kind": "Node", "name": node}});
        let out = p.api.bind(&namespace, &name, &binding).map_err(wit_error)?;
        p.record(res, EventType::Modified, &out);
        Ok(())
    }

    fn now(&mut self) -> String {
        self.plugin.api.now()
    }

    fn log(&mut self, level: LogLevel, message: String) {
        let plugin = self.plugin.name.as_str();
        match level {
            LogLevel::Error => tracing::error!(plugin, "{message}"),
            LogLevel::Warn => tracing::warn!(plugin, "{message}"),
            LogLevel::Info => tracing::info!(plugin, "{message}"),
            LogLevel::Debug => tracing::debug!(plugin, "{message}"),
        }
    }
}

/// A compiled, registered plugin ready to reconcile.
pub struct Plugin {
    shared: Arc<PluginShared>,
    pre: ControllerPre<HostState>,
    digest: String,
    limits: Limits,
}

impl Plugin {
    pub fn name(&self) -> &str {
        &self.shared.name
    }

    pub fn digest(&self) -> &str {
        &self.digest
    }

    pub fn permissions(&self) -> &Permissions {
        &self.shared.perms
    }

    pub fn limits(&self) -> Limits {
        self.limits
    }

    /// Holds this version to `grant` from its next host call on.
    pub fn restrict(&self, grant: Grant) {
        *self.shared.grant.write().unwrap_or_else(|p| p.into_inner()) = Some(grant);
    }
}

/// The outcome of one reconcile.
#[derive(Debug, PartialEq, Eq)]
pub struct Outcome {
    pub requeue_after: Option<Duration>,
}

/// Runs plugins: compiles, registers, feeds events, reconciles.
pub struct PluginHost {
    engine: Engine,
    linker: Linker<HostState>,
    api: Arc<Api>,
    informers: Arc<Informers>,
    config: PluginConfig,
    cancel: CancellationToken,
    tasks: tokio_util::task::TaskTracker,
    _ticker: EpochTicker,
}

/// Bumps the engine epoch on a plain thread (it must tick even when tokio's workers are busy
/// running a runaway guest); stops when dropped.
struct EpochTicker {
    stop: Arc<std::sync::atomic::AtomicBool>,
}

impl EpochTicker {
    fn start(engine: &Engine) -> Self {
        let stop = Arc::new(std::sync::atomic::AtomicBool::new(false));
        let (engine, flag) = (engine.clone(), stop.clone());
        std::thread::Builder::new()
            .name("kedge-epoch".into())
            .spawn(move || {
                while !flag.load(std::sync::atomic::Ordering::Relaxed) {
                    std::thread::sleep(EPOCH_TICK);
                    engine.increment_epoch();
                }
            })
            .expect("spawning the epoch thread");
        EpochTicker { stop }
    }
}

impl Drop for EpochTicker {
    fn drop(&mut self) {
        self.stop.store(true, std::sync::atomic::Ordering::Relaxed);
    }
}

impl PluginHost {
    pub fn new(api: Arc<Api>, config: PluginConfig, cancel: CancellationToken) -> Result<Self> {
        let mut wcfg = wasmtime::Config::new();
        wcfg.epoch_interruption(true);
        wcfg.wasm_component_model(true);
        let engine = Engine::new(&wcfg).map_err(Error::Engine)?;
        let mut linker: Linker<HostState> = Linker::new(&engine);
        // Rust guests import wasi:cli and wasi:io even when the world does not (STACK.md);
        // they get an empty context: no files, no network, no environment.
        wasmtime_wasi::p2::add_to_linker_async(&mut linker).map_err(Error::Engine)?;
        Controller::add_to_linker::<_, wasmtime::component::HasSelf<_>>(&mut linker, |s| s)
            .map_err(Error::Engine)?;
        let informers = Arc::new(Informers::new(api.store().clone(), cancel.clone()));
        let ticker = EpochTicker::start(&engine);
        Ok(PluginHost {
            engine,
            linker,
            api,
            informers,
            config,
            cancel,
            tasks: tokio_util::task::TaskTracker::new(),
            _ticker: ticker,
        })
    }

    pub fn informers(&self) -> &Arc<Informers> {
        &self.informers
    }

    fn new_store(&self, shared: Arc<PluginShared>, limits: Limits) -> Store<HostState> {
        let deadline = limits.call_deadline;
        let limits = StoreLimitsBuilder::new()
            .memory_size(limits.memory)
            .trap_on_grow_failure(true)
            .build();
        let state = HostState {
            plugin: shared,
            limits,
            wasi: WasiCtx::builder().build(),
            table: ResourceTable::new(),
        };
        let mut store = Store::new(&self.engine, state);
        store.limiter(|s| &mut s.limits);
        // Every tick the guest yields to the async executor, so a runaway guest holds a tokio
        // worker for at most one tick at a time (other plugins and the API keep their
        // threads); past its deadline the next tick traps it.
        let started = std::time::Instant::now();
        store.set_epoch_deadline(1);
        store.epoch_deadline_callback(move |_| {
            if started.elapsed() >= deadline {
                Err(wasmtime::Trap::Interrupt.into())
            } else {
                Ok(wasmtime::UpdateDeadline::Yield(1))
            }
        });
        store
    }

    /// Compiles `bytes`, asks the plugin to register, validates the registration; calls get
    /// the server-wide limits.
    pub async fn load(&self, label: &str, bytes: &[u8]) -> Result<Arc<Plugin>> {
        self.load_with(label, bytes, self.config.limits()).await
    }

    /// [`load`](Self::load) with this plugin's own limits.
    pub async fn load_with(
        &self,
        label: &str,
        bytes: &[u8],
        limits: Limits,
    ) -> Result<Arc<Plugin>> {
        use sha2::{Digest, Sha256};
        let digest = format!("sha256:{}", hex::encode(Sha256::digest(bytes)));
        let component = {
            let bytes = bytes.to_vec();
            let digest = digest.clone();
            let label = label.to_string();
            // Compilation is CPU-heavy; keep it off the async workers.
            let this = (self.engine.clone(), self.config.cache_dir.clone());
            tokio::task::spawn_blocking(move || {
                let host = CompileOnly {
                    engine: this.0,
                    cache_dir: this.1,
                };
                host.compile(&label, &bytes, &digest)
            })
            .await
            .map_err(|e| Error::Engine(wasmtime::Error::msg(e.to_string())))??
        };
        let instance_pre =
            self.linker
                .instantiate_pre(&component)
                .map_err(|source| Error::Instantiate {
                    name: label.to_string(),
                    source,
                })?;
        let pre = ControllerPre::new(instance_pre).map_err(|source| Error::Instantiate {
            name: label.to_string(),
            source,
        })?;
        // Registration runs with no permissions at all.
        let probe = Arc::new(PluginShared {
            name: label.to_string(),
            api: self.api.clone(),
            informers: self.informers.clone(),
            perms: Permissions {
                for_kind: None,
                owns: vec![],
                watches: vec![],
                readable: KindSet::default(),
                writable: KindSet::default(),
            },
            grant: Default::default(),
        });
        let mut store = self.new_store(probe, limits);
        let instantiate = |source| Error::Instantiate {
            name: label.to_string(),
            source,
        };
        let trap = |key: &str, e: wasmtime::Error| Error::Trap {
            plugin: label.to_string(),
            key: key.into(),
            reason: trap_reason(&e, limits),
        };
        let instance = pre
            .instance_pre()
            .instantiate_async(&mut store)
            .await
            .map_err(instantiate)?;
        let bindings = Controller::new(&mut store, &instance).map_err(instantiate)?;
        let reg = bindings
            .call_register(&mut store)
            .await
            .map_err(|e| trap("register", e))?;
        if reg.name.is_empty() {
            return Err(Error::Registration {
                name: label.to_string(),
                why: "empty name".into(),
            });
        }
        // `watches` is exported by components of the `watching-controller` world only; a
        // plain `controller` has none.
        let watches = match instance.get_func(&mut store, "watches") {
            None => Vec::new(),
            Some(f) => {
                let f = f
                    .typed::<(), (Vec<Watch>,)>(&store)
                    .map_err(|e| Error::Registration {
                        name: reg.name.clone(),
                        why: format!("its `watches` export has the wrong type: {e}"),
                    })?;
                f.call_async(&mut store, ())
                    .await
                    .map_err(|e| trap("watches", e))?
                    .0
            }
        };
        let perms =
            Permissions::from_registration(&reg, &watches).map_err(|why| Error::Registration {
                name: reg.name.clone(),
                why,
            })?;
        Ok(Arc::new(Plugin {
            shared: Arc::new(PluginShared {
                name: reg.name,
                api: self.api.clone(),
                informers: self.informers.clone(),
                perms,
                grant: Default::default(),
            }),
            pre,
            digest,
            limits,
        }))
    }

    /// One reconcile of an object of the plugin's primary kind in a fresh instance.
    pub async fn reconcile(&self, plugin: &Plugin, ns: &str, name: &str) -> Result<Outcome> {
        let Some(res) = plugin.shared.perms.for_kind else {
            return Err(Error::Reconcile {
                plugin: plugin.name().to_string(),
                key: name.to_string(),
                message: "the plugin reconciles every kind: name the kind".into(),
            });
        };
        self.reconcile_object(plugin, res, ns, name).await
    }

    /// One reconcile of an object of `res` in a fresh instance.
    pub async fn reconcile_object(
        &self,
        plugin: &Plugin,
        res: &'static Resource,
        ns: &str,
        name: &str,
    ) -> Result<Outcome> {
        let key_label = if ns.is_empty() {
            name.to_string()
        } else {
            format!("{ns}/{name}")
        };
        let mut store = self.new_store(plugin.shared.clone(), plugin.limits);
        let instance = plugin
            .pre
            .instantiate_async(&mut store)
            .await
            .map_err(|e| Error::Trap {
                plugin: plugin.name().to_string(),
                key: key_label.clone(),
                reason: trap_reason(&e, plugin.limits),
            })?;
        let key = ObjectKey {
            api_version: res.api_version(),
            kind: res.kind.to_string(),
            namespace: ns.to_string(),
            name: name.to_string(),
        };
        let out = instance
            .call_reconcile(&mut store, &key)
            .await
            .map_err(|e| Error::Trap {
                plugin: plugin.name().to_string(),
                key: key_label.clone(),
                reason: trap_reason(&e, plugin.limits),
            })?;
        match out {
            Ok(o) => Ok(Outcome {
                requeue_after: o.requeue_after_ms.map(Duration::from_millis),
            }),
            Err(message) => Err(Error::Reconcile {
                plugin: plugin.name().to_string(),
                key: key_label,
                message,
            }),
        }
    }

    /// Starts feeding `plugin` its events and reconciling until the host is cancelled. The
    /// returned slot takes new versions ([`Slot::swap`]).
    pub fn start(self: &Arc<Self>, plugin: Arc<Plugin>) -> Arc<Slot> {
        let name = plugin.name().to_string();
        Slot::start(self, &name, plugin, None)
    }

    /// [`start`](Self::start) under a given slot name, reporting to `observer`.
    pub fn start_observed(
        self: &Arc<Self>,
        name: &str,
        plugin: Arc<Plugin>,
        observer: Arc<dyn SlotObserver>,
    ) -> Arc<Slot> {
        Slot::start(self, name, plugin, Some(observer))
    }

    /// Waits for every plugin task to finish after cancellation.
    pub async fn stopped(&self) {
        self.tasks.close();
        self.tasks.wait().await;
        self.informers.stopped().await;
    }
}

fn trap_reason(e: &wasmtime::Error, limits: Limits) -> String {
    if let Some(trap) = e.downcast_ref::<wasmtime::Trap>() {
        return match trap {
            wasmtime::Trap::Interrupt => format!(
                "exceeded its {} ms call deadline",
                limits.call_deadline.as_millis()
            ),
            wasmtime::Trap::UnreachableCodeReached => {
                "guest panicked (unreachable instruction)".into()
            }
            other => other.to_string(),
        };
    }
    let text = format!("{e:#}");
    if text.contains("memory") && (text.contains("grow") || text.contains("limit")) {
        return format!(
            "exceeded its memory cap of {} MiB ({text})",
            limits.memory >> 20
        );
    }
    text
}

/// Compilation without the rest of the host, so it can run on a blocking thread.
struct CompileOnly {
    engine: Engine,
    cache_dir: Option<PathBuf>,
}

impl CompileOnly {
    fn compile(&self, name: &str, bytes: &[u8], digest: &str) -> Result<Component> {
        let compile = || {
            Component::new(&self.engine, bytes).map_err(|source| Error::Compile {
                name: name.to_string(),
                source,
            })
        };
        match &self.cache_dir {
            Some(dir) => cache::load_or_compile(&self.engine, dir, digest, bytes).or_else(|e| {
                tracing::warn!(plugin = name, error = %e, "plugin cache unusable; compiling");
                compile()
            }),
            None => compile(),
        }
    }
}

mod cache;

#[cfg(test)]
mod tests {
    use super::*;

    fn watch(api_version: &str, kind: &str, by: WatchMap) -> Watch {
        Watch {
            kind: KindRef {
                api_version: api_version.into(),
                kind: kind.into(),
            },
            by,
        }
    }

    #[test]
    fn watches_are_validated() {
        let svc = resources::by_kind("v1", "Service");
        let ok = resolve_watch(
            &watch("v1", "Pod", WatchMap::SelectorMap("spec.selector".into())),
            svc,
        )
        .unwrap();
        assert_eq!(ok.kind.kind, "Pod");
        assert_eq!(ok.by, WatchBy::SelectorMap("/spec/selector".into()));
        let err = |w: Watch, primary| resolve_watch(&w, primary).unwrap_err();
        assert!(err(watch("v1", "Pod", WatchMap::SameName), None).contains("every kind"));
        assert!(err(watch("v1", "Node", WatchMap::SameName), svc).contains("namespaced"));
        assert!(err(watch("v1", "Nope", WatchMap::SameName), svc).contains("not served"));
        for bad in ["", "spec..selector", ".spec"] {
            let e = err(watch("v1", "Pod", WatchMap::LabelSelector(bad.into())), svc);
            assert!(e.contains("dotted field path"), "{bad}: {e}");
        }
    }

    #[test]
    fn a_selector_map_selects_nothing_when_empty_a_label_selector_everything() {
        let map = WatchBy::SelectorMap("/spec/selector".into());
        let structured = WatchBy::LabelSelector("/spec/selector".into());
        let labels = serde_json::json!({"app": "web", "tier": "fe"});
        let labels = labels.as_object();
        let with = |sel: Value| serde_json::json!({"spec": {"selector": sel}});
        let sel = map
            .selector_of(&with(serde_json::json!({"app": "web"})))
            .unwrap();
        assert!(sel.matches(labels));
        let sel = map
            .selector_of(&with(serde_json::json!({"app": "db"})))
            .unwrap();
        assert!(!sel.matches(labels));
        assert!(map.selector_of(&with(serde_json::json!({}))).is_none());
        assert!(map.selector_of(&serde_json::json!({"spec": {}})).is_none());
        let sel = structured
            .selector_of(&with(serde_json::json!({"matchExpressions": [
                {"key": "tier", "operator": "In", "values": ["fe", "be"]}]})))
            .unwrap();
        assert!(sel.matches(labels));
        let all = structured
            .selector_of(&with(serde_json::json!({})))
            .unwrap();
        assert!(all.matches(None::<&serde_json::Map<String, Value>>));
        assert!(structured.selector_of(&serde_json::json!({})).is_none());
        assert!(structured.selector_of(&with(Value::Null)).is_none());
        assert!(
            WatchBy::SameName
                .selector_of(&with(serde_json::json!({})))
                .is_none()
        );
    }
}
