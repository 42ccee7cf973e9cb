//! The engine: compiling, pre-instantiating and calling plugins under CPU and memory
//! limits.
//!
//! Compilation is tiered. A component not in the compile cache is first compiled by Winch,
//! wasmtime's single-pass baseline compiler (a quarter of Cranelift's time here), so a
//! new version serves sooner; Cranelift then compiles it in the background, one plugin at a
//! time and on one thread (a parallel compile would occupy the shared compile thread pool, and
//! the quick compiles of the next versions, or of every built-in plugin at a first start,
//! would queue behind it), stores the artifact in the cache, and the plugin's next calls run
//! the optimised code. Calls in flight finish on the code they started with.

use std::path::PathBuf;
use std::sync::{Arc, Weak};
use std::time::{Duration, Instant};

use arc_swap::ArcSwap;

use kedge_api::Api;
use kedge_core::resources::Resource;
use kedge_store::informer::Informers;
use tokio_util::sync::CancellationToken;
use wasmtime::component::{Component, Linker, ResourceTable};
use wasmtime::{Engine, Store, StoreLimitsBuilder};
use wasmtime_wasi::WasiCtx;

use crate::config::{Limits, PluginConfig};
use crate::permissions::{Grant, KindSet, Permissions};
use crate::slot::{Slot, SlotObserver};
use crate::wit_host::{Controller, ControllerPre, HostState, ObjectKey, PluginShared, Watch};
use crate::{EPOCH_TICK, Error, Result, cache};

/// A compiled, registered plugin ready to reconcile.
pub struct Plugin {
    pub(crate) shared: Arc<PluginShared>,
    /// The code calls run: the baseline build until the optimised one replaces it.
    pub(crate) code: ArcSwap<Code>,
    pub(crate) digest: String,
    pub(crate) limits: Limits,
}

/// One build of a plugin, pre-instantiated against its engine's linker.
pub(crate) struct Code {
    pub(crate) pre: ControllerPre<HostState>,
    pub(crate) tier: Tier,
    /// Call slots one instance takes (see [`CALL_SLOTS`]).
    pub(crate) slots: u32,
}

/// Plugin instances alive at once: the pooling allocator keeps this many linear memories,
/// component instances and fiber stacks ready (`TABLES_PER_SLOT` times as many tables,
/// `CORE_INSTANCES_PER_COMPONENT` times as many core instances). A call takes one slot per
/// linear memory its component defines (at least one, and one per `TABLES_PER_SLOT`
/// tables), so the pools never run out: a call beyond them waits for a slot. Each memory
/// slot reserves address space only (4 GiB plus guard, as every 32-bit memory does).
pub(crate) const CALL_SLOTS: u32 = 128;
const TABLES_PER_SLOT: u32 = 8;
/// Most slots one call may take (memories per component): a plugin needing more is refused
/// at load, so no one plugin's call can hold most of the pool.
const MAX_SLOTS_PER_CALL: u32 = 8;
const CORE_INSTANCES_PER_COMPONENT: u32 = 64;
/// Dirty bytes of a memory (and of a table) reset in place when its call ends, so the next
/// call finds them mapped; beyond this the pages are given back to the kernel. With Linux's
/// PAGEMAP_SCAN (6.7 and later) only the pages a call wrote are reset: a reconcile of an
/// absent object costs a third of what unmapping and faulting pages in again did. Every
/// slot ever used keeps up to this much resident (calls reuse their plugin's slots, so
/// about one memory per plugin: ~80 MB `kedge dev` RSS is unchanged).
const KEEP_RESIDENT: usize = 256 << 10;
/// Free slots kept tied to the module that last used them (its image stays mapped) before
/// they are handed to another module.
const WARM_SLOTS: u32 = 32;

impl Code {
    fn new(
        linker: &Linker<HostState>,
        component: &Component,
        tier: Tier,
        label: &str,
    ) -> Result<Self> {
        let pre = pre_instantiate(linker, component, label)?;
        // A component that imports core modules cannot say what it needs: count it as the
        // most any component may take.
        let slots = component
            .resources_required()
            .map(|r| {
                r.num_memories
                    .max(r.num_tables.div_ceil(TABLES_PER_SLOT))
                    .max(1)
            })
            .unwrap_or(MAX_SLOTS_PER_CALL + 1);
        if slots > MAX_SLOTS_PER_CALL {
            return Err(Error::Instantiate {
                name: label.to_string(),
                source: wasmtime::Error::msg(format!(
                    "one instance needs {slots} call slots (one per linear memory, one per \
                     {TABLES_PER_SLOT} tables); a plugin may take at most {MAX_SLOTS_PER_CALL}"
                )),
            });
        }
        Ok(Code { pre, tier, slots })
    }
}

/// Which compiler built a plugin's code.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Tier {
    /// Winch: compiled in a single pass, quickly, to slower code.
    Baseline,
    /// Cranelift: optimised, from the compile cache or compiled in the background.
    Optimized,
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

    /// Which compiler built the code the plugin's next call runs.
    pub fn tier(&self) -> Tier {
        self.code.load().tier
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
    /// Cranelift: the code plugins run once it is ready.
    pub(crate) engine: Engine,
    pub(crate) linker: Arc<Linker<HostState>>,
    /// Winch, for a quick first build of a component not in the cache; absent where Winch
    /// does not run (not x86-64) or when [`PluginConfig::baseline_compiler`] is off.
    pub(crate) baseline: Option<(Engine, Arc<Linker<HostState>>)>,
    /// Cranelift configured as `engine` but compiling on the calling thread only, for the
    /// background optimisation; its artifacts load into `engine`.
    pub(crate) serial: Engine,
    /// One background optimisation at a time.
    pub(crate) optimizing: Arc<tokio::sync::Semaphore>,
    /// [`CALL_SLOTS`] permits: a call holds its code's `slots` until its store is gone.
    pub(crate) call_slots: Arc<tokio::sync::Semaphore>,
    pub(crate) api: Arc<Api>,
    pub(crate) informers: Arc<Informers>,
    pub(crate) config: PluginConfig,
    pub(crate) cancel: CancellationToken,
    pub(crate) tasks: tokio_util::task::TaskTracker,
    /// Where the plugins' workers run their guests.
    pub(crate) guests: GuestRuntime,
    pub(crate) _ticker: EpochTicker,
    pub(crate) metrics: crate::metrics::PluginMetrics,
}

/// A tokio runtime of its own for the plugins' workers: a guest spinning to its deadline
/// yields only once an epoch tick (10 ms), and on the API's own workers it kept requests
/// waiting that long; here the kernel shares the cores between the API's threads and the
/// guests'. (Niced guest threads were tried: on a loaded machine the controllers fell
/// behind — an end-to-end test saw a ReplicaSet's status late — and the API's gain was
/// within this machine's noise.)
pub(crate) struct GuestRuntime {
    runtime: Option<tokio::runtime::Runtime>,
}

impl GuestRuntime {
    fn start() -> std::io::Result<Self> {
        let runtime = tokio::runtime::Builder::new_multi_thread()
            .thread_name("kedge-plugin")
            .enable_all()
            .build()?;
        Ok(GuestRuntime {
            runtime: Some(runtime),
        })
    }

    pub(crate) fn handle(&self) -> &tokio::runtime::Handle {
        self.runtime
            .as_ref()
            .expect("the guest runtime lives as long as its host")
            .handle()
    }
}

impl Drop for GuestRuntime {
    fn drop(&mut self) {
        // The host may be dropped inside another runtime, where a blocking shutdown panics.
        if let Some(rt) = self.runtime.take() {
            rt.shutdown_background();
        }
    }
}

/// Bumps the engines' epoch on a plain thread (it must tick even when tokio's workers are
/// busy running a runaway guest); stops when dropped.
pub(crate) struct EpochTicker {
    pub(crate) stop: Arc<std::sync::atomic::AtomicBool>,
}

impl EpochTicker {
    pub(crate) fn start(engines: Vec<Engine>) -> Self {
        let stop = Arc::new(std::sync::atomic::AtomicBool::new(false));
        let flag = stop.clone();
        std::thread::Builder::new()
            .name("kedge-epoch".into())
            .spawn(move || {
                while !flag.load(std::sync::atomic::Ordering::Relaxed) {
                    std::thread::sleep(EPOCH_TICK);
                    for engine in &engines {
                        engine.increment_epoch();
                    }
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
        // Only the engine running optimised code pools instances: baseline code serves for
        // seconds, and the serial engine only compiles.
        let engine =
            new_engine(wasmtime::Strategy::Cranelift, true, true).map_err(Error::Engine)?;
        let serial =
            new_engine(wasmtime::Strategy::Cranelift, false, false).map_err(Error::Engine)?;
        let linker = Arc::new(new_linker(&engine).map_err(Error::Engine)?);
        let baseline = if config.baseline_compiler && cfg!(target_arch = "x86_64") {
            match new_engine(wasmtime::Strategy::Winch, true, false)
                .and_then(|e| Ok((new_linker(&e)?, e)))
            {
                Ok((linker, engine)) => Some((engine, Arc::new(linker))),
                Err(e) => {
                    tracing::warn!(error = %e, "no baseline compiler: new plugin versions wait for Cranelift");
                    None
                }
            }
        } else {
            None
        };
        let informers = Arc::new(Informers::new(api.store().clone(), cancel.clone()));
        let mut ticked = vec![engine.clone()];
        ticked.extend(baseline.as_ref().map(|(e, _)| e.clone()));
        let ticker = EpochTicker::start(ticked);
        Ok(PluginHost {
            engine,
            linker,
            baseline,
            serial,
            optimizing: Arc::new(tokio::sync::Semaphore::new(1)),
            call_slots: Arc::new(tokio::sync::Semaphore::new(CALL_SLOTS as usize)),
            api,
            informers,
            config,
            cancel,
            tasks: tokio_util::task::TaskTracker::new(),
            guests: GuestRuntime::start()
                .map_err(|e| Error::Engine(wasmtime::Error::msg(format!("guest runtime: {e}"))))?,
            _ticker: ticker,
            metrics: Default::default(),
        })
    }

    /// Records every plugin's reconciles, traps, swaps and queue into `metrics` (the
    /// server's registry); plugins started before keep the unregistered defaults.
    pub fn with_metrics(mut self, metrics: crate::metrics::PluginMetrics) -> Self {
        self.metrics = metrics;
        self
    }

    pub fn informers(&self) -> &Arc<Informers> {
        &self.informers
    }

    /// Compiles `bytes`, asks the plugin to register, validates the registration; calls get
    /// the server-wide limits.
    pub async fn load(&self, label: &str, bytes: &[u8]) -> Result<Arc<Plugin>> {
        self.load_with(label, bytes, self.config.limits()).await
    }

    /// [`load`](Self::load) with this plugin's own limits.
    pub(crate) async fn load_with(
        &self,
        label: &str,
        bytes: &[u8],
        limits: Limits,
    ) -> Result<Arc<Plugin>> {
        use sha2::{Digest, Sha256};
        let digest = format!("sha256:{}", hex::encode(Sha256::digest(bytes)));
        let (component, tier) = {
            let bytes = bytes.to_vec();
            let digest = digest.clone();
            let label = label.to_string();
            // Compilation is CPU-heavy; keep it off the async workers.
            let compiler = self.compiler();
            let baseline = self.baseline.as_ref().map(|(e, _)| e.clone());
            tokio::task::spawn_blocking(move || {
                compiler.compile_quickly(baseline.as_ref(), &label, &bytes, &digest)
            })
            .await
            .map_err(|e| Error::Engine(wasmtime::Error::msg(e.to_string())))??
        };
        let linker = match (tier, &self.baseline) {
            (Tier::Baseline, Some((_, linker))) => linker,
            _ => &self.linker,
        };
        let code = Code::new(linker, &component, tier, label)?;
        let engine = component.engine().clone();
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
                metrics: vec![],
            },
            grant: Default::default(),
            events: Default::default(),
        });
        // The guest's first calls run where all its calls run: on the guest runtime.
        let code = Arc::new(code);
        let (reg, watches) = {
            let (code, slots, label) = (code.clone(), self.call_slots.clone(), label.to_string());
            self.guests
                .handle()
                .spawn(async move { register(code, slots, engine, probe, limits, label).await })
                .await
                .map_err(|e| Error::Engine(wasmtime::Error::msg(e.to_string())))??
        };
        let perms =
            Permissions::from_registration(&reg, &watches).map_err(|why| Error::Registration {
                name: reg.name.clone(),
                why,
            })?;
        let plugin = Arc::new(Plugin {
            shared: Arc::new(PluginShared {
                name: reg.name,
                api: self.api.clone(),
                informers: self.informers.clone(),
                perms,
                grant: Default::default(),
                events: Default::default(),
            }),
            code: ArcSwap::new(code),
            digest,
            limits,
        });
        if tier == Tier::Baseline {
            self.optimize_later(&plugin, bytes.to_vec());
        }
        Ok(plugin)
    }

    fn compiler(&self) -> CompileOnly {
        CompileOnly {
            engine: self.engine.clone(),
            cache_dir: self.config.cache_dir.clone(),
        }
    }

    /// Compiles `plugin`'s component with Cranelift on a blocking thread (after any other
    /// plugin's), then switches the plugin's next calls to that code. If the plugin is gone
    /// by then (swapped or removed) the artifact still lands in the cache.
    fn optimize_later(&self, plugin: &Arc<Plugin>, bytes: Vec<u8>) {
        let weak: Weak<Plugin> = Arc::downgrade(plugin);
        let (compiler, linker, serial) =
            (self.compiler(), self.linker.clone(), self.serial.clone());
        let (gate, cancel) = (self.optimizing.clone(), self.cancel.clone());
        let (name, digest) = (plugin.name().to_string(), plugin.digest.clone());
        self.tasks.spawn(async move {
            let Ok(_turn) = gate.acquire_owned().await else {
                return;
            };
            if cancel.is_cancelled() || (weak.strong_count() == 0 && compiler.cache_dir.is_none())
            {
                return;
            }
            let started = Instant::now();
            let label = name.clone();
            let compiled = tokio::task::spawn_blocking(move || {
                compiler.compile_optimized(&serial, &label, &bytes, &digest)
            })
            .await;
            let component = match compiled {
                Ok(Ok(c)) => c,
                Ok(Err(e)) => {
                    tracing::warn!(plugin = %name, error = %e, "optimising the plugin failed; it keeps its baseline code");
                    return;
                }
                Err(_) => return,
            };
            let Some(plugin) = weak.upgrade() else {
                return;
            };
            match Code::new(&linker, &component, Tier::Optimized, &name) {
                Ok(code) => {
                    plugin.code.store(Arc::new(code));
                    tracing::info!(
                        plugin = %name,
                        ms = started.elapsed().as_millis() as u64,
                        "plugin now runs optimised code"
                    );
                }
                Err(e) => {
                    tracing::warn!(plugin = %name, error = %e, "optimised plugin does not link; it keeps its baseline code")
                }
            }
        });
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
    pub(crate) async fn reconcile_object(
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
        let code = plugin.code.load_full();
        let _slots = take_call_slots(self.call_slots.clone(), &code).await;
        let mut store = new_store(
            code.pre.instance_pre().engine(),
            plugin.shared.clone(),
            plugin.limits,
        );
        let instance = code
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
        Slot::start(self, &name, plugin, None, None)
    }

    /// [`start`](Self::start) under a given slot name, reporting to `observer`.
    pub(crate) fn start_observed(
        self: &Arc<Self>,
        name: &str,
        plugin: Arc<Plugin>,
        observer: Arc<dyn SlotObserver>,
        leading: Option<tokio::sync::watch::Receiver<bool>>,
    ) -> Arc<Slot> {
        Slot::start(self, name, plugin, Some(observer), leading)
    }

    /// Waits for every plugin task to finish after cancellation.
    pub async fn stopped(&self) {
        self.tasks.close();
        self.tasks.wait().await;
        self.informers.stopped().await;
    }
}

/// Waits for the call slots one instance of `code` takes; hold them until its store is
/// dropped (declare them before the store).
async fn take_call_slots(
    call_slots: Arc<tokio::sync::Semaphore>,
    code: &Code,
) -> tokio::sync::OwnedSemaphorePermit {
    call_slots
        .acquire_many_owned(code.slots)
        .await
        .expect("the call-slot semaphore is never closed")
}

/// A store on `engine` (the one the plugin's code was built by) under `limits`.
pub(crate) fn new_store(
    engine: &Engine,
    shared: Arc<PluginShared>,
    limits: Limits,
) -> Store<HostState> {
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
    let mut store = Store::new(engine, state);
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

/// Instantiates `code` with no permissions and asks the plugin for its registration and
/// its watches.
async fn register(
    code: Arc<Code>,
    call_slots: Arc<tokio::sync::Semaphore>,
    engine: Engine,
    probe: Arc<PluginShared>,
    limits: Limits,
    label: String,
) -> Result<(crate::wit_host::Registration, Vec<Watch>)> {
    let _slots = take_call_slots(call_slots, &code).await;
    let mut store = new_store(&engine, probe, limits);
    let instantiate = |source| Error::Instantiate {
        name: label.clone(),
        source,
    };
    let trap = |key: &str, e: wasmtime::Error| Error::Trap {
        plugin: label.clone(),
        key: key.into(),
        reason: trap_reason(&e, limits),
    };
    let instance = code
        .pre
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
            name: label.clone(),
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
    Ok((reg, watches))
}

pub(crate) fn trap_reason(e: &wasmtime::Error, limits: Limits) -> String {
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

/// An engine for plugins: epoch deadlines, the component model, and `strategy`'s compiler;
/// with `pooled`, instances come from pools reused call after call (with an instance per
/// reconcile, mapping and unmapping a fresh memory, tables and a fiber stack each time was
/// half of a short call's time, and faulting its pages in again most of the rest).
fn new_engine(
    strategy: wasmtime::Strategy,
    parallel: bool,
    pooled: bool,
) -> wasmtime::Result<Engine> {
    let mut wcfg = wasmtime::Config::new();
    wcfg.strategy(strategy);
    wcfg.parallel_compilation(parallel);
    wcfg.epoch_interruption(true);
    wcfg.wasm_component_model(true);
    if pooled {
        let mut pool = wasmtime::PoolingAllocationConfig::new();
        pool.total_component_instances(CALL_SLOTS)
            .total_memories(CALL_SLOTS)
            .total_tables(CALL_SLOTS * TABLES_PER_SLOT)
            .total_stacks(CALL_SLOTS)
            // Core instances are counted, not reserved.
            .total_core_instances(CALL_SLOTS * CORE_INSTANCES_PER_COMPONENT)
            .max_core_instances_per_component(CORE_INSTANCES_PER_COMPONENT)
            .max_memories_per_component(MAX_SLOTS_PER_CALL)
            .max_tables_per_component(MAX_SLOTS_PER_CALL * TABLES_PER_SLOT)
            .max_memories_per_module(MAX_SLOTS_PER_CALL)
            .max_tables_per_module(MAX_SLOTS_PER_CALL * TABLES_PER_SLOT)
            .table_elements(100_000)
            .pagemap_scan(wasmtime::Enabled::Auto)
            .linear_memory_keep_resident(KEEP_RESIDENT)
            .table_keep_resident(KEEP_RESIDENT)
            .max_unused_warm_slots(WARM_SLOTS);
        wcfg.allocation_strategy(pool);
    }
    Engine::new(&wcfg)
}

/// The host functions plugins import, for `engine`.
fn new_linker(engine: &Engine) -> wasmtime::Result<Linker<HostState>> {
    let mut linker: Linker<HostState> = Linker::new(engine);
    // Rust guests import wasi:cli and wasi:io even when the world does not (STACK.md);
    // they get an empty context: no files, no network, no environment.
    wasmtime_wasi::p2::add_to_linker_async(&mut linker)?;
    Controller::add_to_linker::<_, wasmtime::component::HasSelf<_>>(&mut linker, |s| s)?;
    Ok(linker)
}

fn pre_instantiate(
    linker: &Linker<HostState>,
    component: &Component,
    label: &str,
) -> Result<ControllerPre<HostState>> {
    let instantiate = |source| Error::Instantiate {
        name: label.to_string(),
        source,
    };
    ControllerPre::new(linker.instantiate_pre(component).map_err(instantiate)?).map_err(instantiate)
}

/// Compilation without the rest of the host, so it can run on a blocking thread.
pub(crate) struct CompileOnly {
    pub(crate) engine: Engine,
    pub(crate) cache_dir: Option<PathBuf>,
}

impl CompileOnly {
    /// The cached optimised build if there is one, else a baseline build with `baseline`
    /// (when given and it compiles), else an optimised build.
    pub(crate) fn compile_quickly(
        &self,
        baseline: Option<&Engine>,
        name: &str,
        bytes: &[u8],
        digest: &str,
    ) -> Result<(Component, Tier)> {
        if let Some(c) = self
            .cache_dir
            .as_deref()
            .and_then(|dir| cache::load(&self.engine, dir, digest))
        {
            return Ok((c, Tier::Optimized));
        }
        if let Some(engine) = baseline {
            match Component::new(engine, bytes) {
                Ok(c) => return Ok((c, Tier::Baseline)),
                // Invalid bytes fail again below, with Cranelift's message.
                Err(e) => {
                    tracing::debug!(plugin = name, error = %e, "baseline compiler refused the plugin")
                }
            }
        }
        Ok((
            self.compile_optimized(&self.engine, name, bytes, digest)?,
            Tier::Optimized,
        ))
    }

    /// Compiles with `compiler` (Cranelift configured as `self.engine`: that engine itself,
    /// or its one-thread twin in the background), stores the artifact in the cache when there
    /// is one (a failed store only warns), and loads it into `self.engine`.
    pub(crate) fn compile_optimized(
        &self,
        compiler: &Engine,
        name: &str,
        bytes: &[u8],
        digest: &str,
    ) -> Result<Component> {
        let compile = |source| Error::Compile {
            name: name.to_string(),
            source,
        };
        let compiled = compiler.precompile_component(bytes).map_err(compile)?;
        if let Some(dir) = &self.cache_dir
            && let Err(e) = cache::store(&self.engine, dir, digest, &compiled)
        {
            tracing::warn!(plugin = name, error = %e, "could not cache the optimised plugin");
        }
        cache::deserialize(&self.engine, &compiled).map_err(compile)
    }
}
