//! The engine: compiling, pre-instantiating and calling plugins under CPU and memory
//! limits.

use std::path::PathBuf;
use std::sync::Arc;
use std::time::Duration;

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
    pub(crate) pre: ControllerPre<HostState>,
    pub(crate) digest: String,
    pub(crate) limits: Limits,
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
    pub(crate) engine: Engine,
    pub(crate) linker: Linker<HostState>,
    pub(crate) api: Arc<Api>,
    pub(crate) informers: Arc<Informers>,
    pub(crate) config: PluginConfig,
    pub(crate) cancel: CancellationToken,
    pub(crate) tasks: tokio_util::task::TaskTracker,
    pub(crate) _ticker: EpochTicker,
    pub(crate) metrics: crate::metrics::PluginMetrics,
}

/// Bumps the engine epoch on a plain thread (it must tick even when tokio's workers are busy
/// running a runaway guest); stops when dropped.
pub(crate) struct EpochTicker {
    pub(crate) stop: Arc<std::sync::atomic::AtomicBool>,
}

impl EpochTicker {
    pub(crate) fn start(engine: &Engine) -> Self {
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

    pub(crate) fn new_store(&self, shared: Arc<PluginShared>, limits: Limits) -> Store<HostState> {
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
    pub(crate) async fn load_with(
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
                metrics: vec![],
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
    pub(crate) fn start_observed(
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

/// Compilation without the rest of the host, so it can run on a blocking thread.
pub(crate) struct CompileOnly {
    pub(crate) engine: Engine,
    pub(crate) cache_dir: Option<PathBuf>,
}

impl CompileOnly {
    pub(crate) fn compile(&self, name: &str, bytes: &[u8], digest: &str) -> Result<Component> {
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
