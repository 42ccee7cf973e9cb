//! Runs pod containers whose image is a Wasm binary.
//!
//! One [`wasmtime::Engine`] serves every workload on the node. Guests are WASI commands: a P2
//! component exporting `wasi:cli/run`, or a P1 core module exporting `_start`. Each run gets a
//! fresh store with the container's argv and env, stdout/stderr wired to its CRI log file, the
//! pod's volumes as preopened directories (nothing else of the host's filesystem) and WASI
//! sockets on the node's network, as containers share it. Stdin is empty, or with
//! `stdin: true` a stream fed by `kubectl attach -i` ([`crate::stdio`]).
//!
//! `kubectl exec` into a Wasm container ([`WasmRuntime::exec`]) starts a second instance of
//! the same program with the exec's arguments, the container's env and volumes, and the
//! exec's stdio: a Wasm image holds one program, so that is the process there is to start.
//!
//! Name lookups of components follow the pod's hosts file, then its resolv.conf, when the
//! spec carries a [`Resolver`] (`wasm/lookup.rs`); without one they are wasmtime-wasi's (the
//! node's resolver).

mod cpu;
mod lookup;

pub use lookup::Resolver;

use std::collections::HashMap;
use std::fmt;
use std::path::PathBuf;
use std::sync::mpsc::{self, RecvTimeoutError};
use std::sync::{Arc, Mutex, Weak};
use std::thread::JoinHandle;
use std::time::Duration;

use sha2::{Digest as _, Sha256};
use tokio_util::sync::CancellationToken;
use tokio_util::task::AbortOnDropHandle;
use tracing::{debug, warn};
use wasmtime::component::{Component, ResourceTable};
use wasmtime::{
    Config, Engine, Module, ResourceLimiter, Store, StoreLimits, StoreLimitsBuilder, Trap,
    UpdateDeadline,
};
use wasmtime_wasi::cli::{AsyncStdinStream, AsyncStdoutStream};
use wasmtime_wasi::p1::WasiP1Ctx;
use wasmtime_wasi::p2::bindings::Command;
use wasmtime_wasi::{FsPerms, I32Exit, WasiCtx, WasiCtxBuilder, WasiCtxView, WasiView};

use crate::logs::{LogStream, LogWriter, StreamKind};
use crate::stdio::Stdin;
use crate::{Error, Result};

/// How often the engine's epoch advances. Running guests yield to the executor at each tick,
/// which bounds how long cancellation (and other tasks on the same worker) can be held up by a
/// busy guest.
const EPOCH_TICK: Duration = Duration::from_millis(10);
/// Stdin bytes buffered between the attach sessions and a guest (`stdin: true`), as a pipe
/// buffers them for a process: beyond it, input waits for the guest to read.
const STDIN_BUFFER: usize = 64 * 1024;

/// Whether a binary is a component or a core module, read from its header.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum WorkloadKind {
    /// A WASI P2 command component (`wasi:cli/run`).
    Component,
    /// A WASI P1 core module (`_start`).
    Module,
}

/// The shared Wasm engine of a node. Cheap to clone.
#[derive(Clone)]
pub struct WasmRuntime {
    inner: Arc<Inner>,
}

struct Inner {
    engine: Engine,
    module_linker: wasmtime::Linker<P1State>,
    component_linker: wasmtime::component::Linker<P2State>,
    /// `component_linker` with `wasi:sockets/ip-name-lookup` answered from the instance's
    /// [`Resolver`] instead of the node's resolv.conf.
    pod_dns_linker: wasmtime::component::Linker<P2State>,
    /// Compiled code by digest, held weakly: two pods on one image share the compilation while
    /// someone holds the `Workload`.
    cache: Mutex<HashMap<String, Weak<Loaded>>>,
    /// The most recently loaded workloads, held strongly, so a container that restarts (or a
    /// pod that comes back) does not compile again; bounded so memory is returned once
    /// images fall out of use.
    recent: Mutex<std::collections::VecDeque<Arc<Loaded>>>,
    _ticker: Ticker,
}

/// Advances the engine epoch from a plain thread, so ticks keep coming even when every tokio
/// worker is busy running guests. Dropping it stops and joins the thread.
struct Ticker {
    stop: Option<mpsc::Sender<()>>,
    thread: Option<JoinHandle<()>>,
}

impl Ticker {
    fn start(engine: Engine) -> Result<Self> {
        let (stop, stopped) = mpsc::channel::<()>();
        let thread = std::thread::Builder::new()
            .name("kedge-wasm-epoch".into())
            .spawn(move || {
                while let Err(RecvTimeoutError::Timeout) = stopped.recv_timeout(EPOCH_TICK) {
                    engine.increment_epoch();
                }
            })
            .map_err(Error::Ticker)?;
        Ok(Self {
            stop: Some(stop),
            thread: Some(thread),
        })
    }
}

impl Drop for Ticker {
    fn drop(&mut self) {
        // Disconnecting the channel wakes the thread at once.
        drop(self.stop.take());
        if let Some(thread) = self.thread.take()
            && thread.join().is_err()
        {
            warn!("wasm epoch ticker thread panicked");
        }
    }
}

/// A compiled workload, ready to run any number of times.
#[derive(Clone)]
pub struct Workload(Arc<Loaded>);

struct Loaded {
    digest: String,
    code: Code,
}

enum Code {
    Component(Component),
    Module(Module),
}

impl Workload {
    /// `sha256:<hex>` of the binary, as an OCI digest.
    pub fn digest(&self) -> &str {
        &self.0.digest
    }

    pub fn kind(&self) -> WorkloadKind {
        match self.0.code {
            Code::Component(_) => WorkloadKind::Component,
            Code::Module(_) => WorkloadKind::Module,
        }
    }
}

impl fmt::Debug for Workload {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("Workload")
            .field("digest", &self.0.digest)
            .field("kind", &self.kind())
            .finish()
    }
}

/// How to run one container instance.
#[derive(Clone, Debug)]
pub struct RunSpec {
    /// Full argv; `args[0]` is the container name, as a process would see it.
    pub args: Vec<String>,
    pub env: Vec<(String, String)>,
    /// CRI-format log file, appended to.
    pub log_path: PathBuf,
    /// When that file is rotated.
    pub log_rotation: crate::logs::LogRotation,
    /// Cap in bytes for each linear memory of the guest (the container's memory limit).
    pub memory_limit: Option<u64>,
    /// Host directories the guest sees (WASI preopens): the pod's volumes.
    pub dirs: Vec<Preopen>,
    /// Kept at the bytes of linear memory the guest holds (for the node's accounting:
    /// eviction under memory pressure, metrics).
    pub memory_in_use: Option<MemoryGauge>,
    /// Nanoseconds of CPU time the guest has used, added to as it runs (the thread CPU time
    /// of its polls, see `wasm/cpu.rs`): the container's cumulative CPU usage, for metrics.
    pub cpu_time: Option<CpuGauge>,
    /// Where the instance runs: a runtime whose threads are in the pod's network namespace,
    /// so the sockets the guest opens are the pod's. `None`: the agent's own runtime, on the
    /// node's network.
    pub net: Option<tokio::runtime::Handle>,
    /// Whom a component's name lookups ask (the pod's hosts file, then its resolv.conf: see
    /// [`Resolver::from_resolv_conf`] and [`Resolver::with_hosts`]). `None`: wasmtime-wasi's
    /// lookup through the node's resolver.
    pub resolver: Option<Arc<Resolver>>,
}

/// Bytes of linear memory a running guest holds.
pub type MemoryGauge = std::sync::Arc<std::sync::atomic::AtomicU64>;

/// Nanoseconds of CPU time a container's guest has used, cumulative over its runs.
pub type CpuGauge = std::sync::Arc<std::sync::atomic::AtomicU64>;

/// A second instance of a running container's program, for `kubectl exec`.
#[derive(Clone, Debug)]
pub struct ExecSpec {
    /// The exec's argv.
    pub args: Vec<String>,
    /// The container's env and volumes, and its memory limit (for this instance alone).
    pub env: Vec<(String, String)>,
    pub memory_limit: Option<u64>,
    pub dirs: Vec<Preopen>,
    /// As [`RunSpec::net`].
    pub net: Option<tokio::runtime::Handle>,
    /// As [`RunSpec::resolver`].
    pub resolver: Option<Arc<Resolver>>,
    /// The container's CPU gauge ([`RunSpec::cpu_time`]): an exec'd instance's CPU counts
    /// as the container's, as a process `runc exec` starts runs in the container's cgroup.
    pub cpu_time: Option<CpuGauge>,
}

/// A running [`WasmRuntime::exec`]: our ends of its stdio and the instance's task.
pub struct WasmExec {
    /// Writes reach the guest's stdin; dropping it is EOF. `None` without stdin.
    pub stdin: Option<tokio::io::DuplexStream>,
    /// What the guest writes to stdout and stderr (EOF once it ends); always there at the
    /// start, `Option` so a caller can take them.
    pub stdout: Option<tokio::io::DuplexStream>,
    pub stderr: Option<tokio::io::DuplexStream>,
    /// `None` once it ended, which `exit` then tells.
    task: Option<AbortOnDropHandle<Result<Exit>>>,
    exit: Option<Exit>,
    cancel: CancellationToken,
}

impl WasmExec {
    /// Waits for the instance to end (cancel-safe; again after the end, the same answer, or
    /// `Killed` if it failed to start).
    pub async fn wait(&mut self) -> Result<Exit> {
        if let Some(task) = self.task.as_mut() {
            let r = match task.await {
                Ok(r) => r,
                Err(e) => Ok(Exit::Trapped(format!("the exec task failed: {e}"))),
            };
            self.task = None;
            self.exit = Some(r?);
        }
        Ok(self.exit.clone().unwrap_or(Exit::Killed))
    }

    /// Drops the instance where it stands (within an epoch tick) and waits for that.
    pub async fn stop(&mut self) {
        self.cancel.cancel();
        let _ = self.wait().await;
    }
}

/// A host directory visible to the guest at `guest_path`.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Preopen {
    pub host_path: PathBuf,
    pub guest_path: String,
    pub read_only: bool,
}

/// How a run ended.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum Exit {
    /// The guest exited (`proc_exit`, `exit`, returning from main) with this code.
    Code(i32),
    /// Stopped through the cancellation token.
    Killed,
    /// The guest trapped (or a host call failed fatally); the text says why.
    Trapped(String),
    /// The guest tried to grow memory past `memory_limit`.
    OutOfMemory,
}

impl Exit {
    /// The exit code Kubernetes reports, following the conventions for processes: a kill is
    /// SIGKILL (137), an OOM kill likewise, a trap is a crash (like SIGABRT, 134).
    pub fn exit_code(&self) -> i32 {
        match self {
            Exit::Code(c) => *c,
            Exit::Killed | Exit::OutOfMemory => 137,
            Exit::Trapped(_) => 134,
        }
    }

    /// The `reason` of a terminated container state, as kubelet words it.
    pub fn reason(&self) -> &'static str {
        match self {
            Exit::Code(0) => "Completed",
            Exit::OutOfMemory => "OOMKilled",
            Exit::Code(_) | Exit::Killed | Exit::Trapped(_) => "Error",
        }
    }
}

/// Store state of a P1 module.
struct P1State {
    wasi: WasiP1Ctx,
    limits: MemoryCap,
}

/// Store state of a P2 component.
struct P2State {
    ctx: WasiCtx,
    table: ResourceTable,
    limits: MemoryCap,
    /// Set when the store runs on `pod_dns_linker`.
    lookup: Option<lookup::LookupCtx>,
}

impl WasiView for P2State {
    fn ctx(&mut self) -> WasiCtxView<'_> {
        WasiCtxView {
            ctx: &mut self.ctx,
            table: &mut self.table,
        }
    }
}

/// wasmtime's `StoreLimits`, plus a note of whether the memory cap was what stopped the guest:
/// the resulting error is an ordinary trap, and the agent must report `OOMKilled` rather than
/// a crash.
struct MemoryCap {
    limits: StoreLimits,
    cap: Option<usize>,
    exceeded: bool,
    gauge: Option<MemoryGauge>,
}

impl MemoryCap {
    fn with_gauge(cap: Option<usize>, gauge: Option<MemoryGauge>) -> Self {
        Self {
            gauge,
            ..Self::new(cap)
        }
    }

    fn new(cap: Option<usize>) -> Self {
        let mut builder = StoreLimitsBuilder::new().trap_on_grow_failure(true);
        if let Some(cap) = cap {
            builder = builder.memory_size(cap);
        }
        Self {
            limits: builder.build(),
            cap,
            exceeded: false,
            gauge: None,
        }
    }
}

impl ResourceLimiter for MemoryCap {
    fn memory_growing(
        &mut self,
        current: usize,
        desired: usize,
        maximum: Option<usize>,
    ) -> wasmtime::Result<bool> {
        if self.cap.is_some_and(|cap| desired > cap) {
            self.exceeded = true;
        }
        let grows = self.limits.memory_growing(current, desired, maximum)?;
        if grows && let Some(g) = &self.gauge {
            g.store(desired as u64, std::sync::atomic::Ordering::Relaxed);
        }
        Ok(grows)
    }

    fn memory_grow_failed(&mut self, error: wasmtime::Error) -> wasmtime::Result<()> {
        self.limits.memory_grow_failed(error)
    }

    fn table_growing(
        &mut self,
        current: usize,
        desired: usize,
        maximum: Option<usize>,
    ) -> wasmtime::Result<bool> {
        self.limits.table_growing(current, desired, maximum)
    }

    fn table_grow_failed(&mut self, error: wasmtime::Error) -> wasmtime::Result<()> {
        self.limits.table_grow_failed(error)
    }

    fn instances(&self) -> usize {
        self.limits.instances()
    }

    fn tables(&self) -> usize {
        self.limits.tables()
    }

    fn memories(&self) -> usize {
        self.limits.memories()
    }
}

/// Arms epoch interruption so the guest yields at every tick instead of trapping: running
/// code then returns to the executor often enough for `run`'s future to be dropped on cancel.
fn arm_epochs<T: 'static>(store: &mut Store<T>) {
    store.set_epoch_deadline(1);
    store.epoch_deadline_callback(|_| Ok(UpdateDeadline::Yield(1)));
}

/// Maps how a guest call ended to an [`Exit`].
fn classify(error: wasmtime::Error, out_of_memory: bool) -> Exit {
    if let Some(exit) = error.downcast_ref::<I32Exit>() {
        return Exit::Code(exit.0);
    }
    if out_of_memory {
        return Exit::OutOfMemory;
    }
    match error.downcast_ref::<Trap>() {
        Some(trap) => Exit::Trapped(trap.to_string()),
        None => Exit::Trapped(format!("{error:#}")),
    }
}

/// Instantiation runs guest code too (a module's start function, a component's initialisers),
/// so an exit, trap or memory cap there is the guest's outcome; anything else is a broken
/// image (missing imports, wrong exports) and an error for the caller.
fn instantiation_failed(error: wasmtime::Error, out_of_memory: bool, digest: &str) -> Result<Exit> {
    if out_of_memory || error.is::<I32Exit>() || error.is::<Trap>() {
        Ok(classify(error, out_of_memory))
    } else {
        Err(Error::Instantiate {
            digest: digest.to_owned(),
            source: error,
        })
    }
}

impl WasmRuntime {
    pub fn new() -> Result<Self> {
        let mut config = Config::new();
        config.epoch_interruption(true);
        let engine = Engine::new(&config).map_err(Error::Engine)?;

        let mut module_linker = wasmtime::Linker::new(&engine);
        wasmtime_wasi::p1::add_to_linker_async(&mut module_linker, |s: &mut P1State| &mut s.wasi)
            .map_err(Error::Link)?;

        let mut component_linker = wasmtime::component::Linker::new(&engine);
        // Includes `wasi:cli/exit.exit-with-code` (stable since WASI 0.2.12), so guests can
        // report exit codes other than 0 and 1.
        wasmtime_wasi::p2::add_to_linker_async(&mut component_linker).map_err(Error::Link)?;
        let mut pod_dns_linker = component_linker.clone();
        lookup::add_to_linker(&mut pod_dns_linker, |s: &mut P2State| lookup::LookupView {
            ctx: s.lookup.as_ref(),
            table: &mut s.table,
        })
        .map_err(Error::Link)?;

        let ticker = Ticker::start(engine.clone())?;
        Ok(Self {
            inner: Arc::new(Inner {
                engine,
                module_linker,
                component_linker,
                pod_dns_linker,
                cache: Mutex::new(HashMap::new()),
                recent: Mutex::default(),
                _ticker: ticker,
            }),
        })
    }

    /// Compiles `bytes` (a component or a core module, told apart by the header), reusing the
    /// compiled code of identical bytes still in use.
    pub async fn load(&self, bytes: Vec<u8>) -> Result<Workload> {
        let digest = format!("sha256:{}", hex::encode(Sha256::digest(&bytes)));
        self.load_with_digest(bytes, digest).await
    }

    /// Like [`load`](Self::load) for bytes whose digest the caller already knows (a blob of a
    /// content-addressed store, verified when it was written): skips hashing them again.
    pub async fn load_with_digest(&self, bytes: Vec<u8>, digest: String) -> Result<Workload> {
        let kind = detect_kind(&bytes)?;
        if let Some(loaded) = self.cached(&digest) {
            debug!(%digest, "wasm already compiled");
            self.remember(&loaded);
            return Ok(Workload(loaded));
        }
        let engine = self.inner.engine.clone();
        // Cranelift takes milliseconds to seconds: keep it off the async workers.
        let compiled = tokio::task::spawn_blocking(move || match kind {
            WorkloadKind::Component => Component::new(&engine, &bytes).map(Code::Component),
            WorkloadKind::Module => Module::new(&engine, &bytes).map(Code::Module),
        })
        .await
        .map_err(Error::CompileTask)?
        .map_err(|source| Error::Compile {
            digest: digest.clone(),
            source,
        })?;
        debug!(%digest, ?kind, "wasm compiled");

        let loaded = {
            let mut cache = self.inner.cache.lock().unwrap_or_else(|p| p.into_inner());
            // Another load of the same bytes may have finished first; share its code.
            if let Some(existing) = cache.get(&digest).and_then(Weak::upgrade) {
                existing
            } else {
                cache.retain(|_, w| w.strong_count() > 0);
                let loaded = Arc::new(Loaded {
                    digest: digest.clone(),
                    code: compiled,
                });
                cache.insert(digest, Arc::downgrade(&loaded));
                loaded
            }
        };
        self.remember(&loaded);
        Ok(Workload(loaded))
    }

    /// The compiled workload of `digest`, if this runtime still has it: the caller can skip
    /// reading the bytes.
    pub fn get(&self, digest: &str) -> Option<Workload> {
        let loaded = self.cached(digest)?;
        self.remember(&loaded);
        Some(Workload(loaded))
    }

    fn remember(&self, loaded: &Arc<Loaded>) {
        const KEEP: usize = 16;
        let mut recent = self.inner.recent.lock().unwrap_or_else(|p| p.into_inner());
        recent.retain(|l| l.digest != loaded.digest);
        recent.push_front(loaded.clone());
        recent.truncate(KEEP);
    }

    fn cached(&self, digest: &str) -> Option<Arc<Loaded>> {
        let cache = self.inner.cache.lock().unwrap_or_else(|p| p.into_inner());
        cache.get(digest).and_then(Weak::upgrade)
    }

    /// Runs one container instance to its end, or until `cancel` fires.
    ///
    /// On cancel the guest is dropped where it stands (at its next epoch tick or host call), so
    /// this returns [`Exit::Killed`] within about one tick. Whatever the outcome, an unfinished
    /// last output line is written to the log as a partial record.
    pub async fn run(
        &self,
        workload: &Workload,
        spec: RunSpec,
        cancel: CancellationToken,
    ) -> Result<Exit> {
        self.run_with_stdin(workload, spec, None, cancel).await
    }

    /// [`WasmRuntime::run`] with the guest's stdin kept open and fed from `stdin` (pod spec
    /// `stdin: true`). WASI gives the guest no terminal, so `tty` only changes what the
    /// client sees, not the guest.
    pub async fn run_with_stdin(
        &self,
        workload: &Workload,
        spec: RunSpec,
        stdin: Option<Stdin>,
        cancel: CancellationToken,
    ) -> Result<Exit> {
        let mut log = LogWriter::open_with(
            &spec.log_path,
            spec.log_rotation,
            std::sync::Arc::new(chrono::Utc::now),
        )
        .map_err(|source| Error::Log {
            path: spec.log_path.clone(),
            source,
        })?;
        if let Some(s) = &stdin {
            log = log.with_tee(s.output());
        }
        let stdout = log.stream(StreamKind::Stdout);
        let stderr = log.stream(StreamKind::Stderr);
        let mut wasi = wasi_builder(&spec.args, &spec.env, &spec.dirs)?;
        wasi.stdout(stdout.clone()).stderr(stderr.clone());
        // Fed for the run's duration; dropping it with the run ends the feeding.
        let _feeder = stdin.filter(|s| s.mode().stdin).map(|stdin| {
            let (guest, ours) = tokio::io::duplex(STDIN_BUFFER);
            wasi.stdin(AsyncStdinStream::new(guest));
            AbortOnDropHandle::new(tokio::spawn(stdin.feed(ours, |_, _| {})))
        });
        let cap = spec
            .memory_limit
            .map(|b| usize::try_from(b).unwrap_or(usize::MAX));

        let digest = workload.digest();
        let outcome = tokio::select! {
            biased;
            () = cancel.cancelled() => Ok(Exit::Killed),
            r = self.execute_on(spec.net.as_ref(), workload, Instance {
                wasi,
                cap,
                gauge: spec.memory_in_use.clone(),
                cpu: spec.cpu_time.clone(),
                resolver: spec.resolver.clone(),
            }) => r,
        };
        flush_partials(&[&stdout, &stderr]);
        match &outcome {
            Ok(exit) => debug!(%digest, ?exit, "workload ended"),
            Err(error) => debug!(%digest, %error, "workload failed to start"),
        }
        outcome
    }

    /// Starts a second instance of `workload` for `kubectl exec`, with its stdio on pipes.
    /// The instance is dropped when the returned [`WasmExec`] is, or on [`WasmExec::stop`].
    pub fn exec(&self, workload: &Workload, spec: ExecSpec, stdin: bool) -> Result<WasmExec> {
        let mut wasi = wasi_builder(&spec.args, &spec.env, &spec.dirs)?;
        let (guest_out, stdout) = tokio::io::duplex(STDIN_BUFFER);
        let (guest_err, stderr) = tokio::io::duplex(STDIN_BUFFER);
        wasi.stdout(AsyncStdoutStream::new(STDIN_BUFFER, guest_out))
            .stderr(AsyncStdoutStream::new(STDIN_BUFFER, guest_err));
        let stdin = stdin.then(|| {
            let (guest, ours) = tokio::io::duplex(STDIN_BUFFER);
            wasi.stdin(AsyncStdinStream::new(guest));
            ours
        });
        let cap = spec
            .memory_limit
            .map(|b| usize::try_from(b).unwrap_or(usize::MAX));
        let cancel = CancellationToken::new();
        let (rt, workload, stop) = (self.clone(), workload.clone(), cancel.clone());
        let net = spec.net.clone();
        let instance = Instance {
            wasi,
            cap,
            gauge: None,
            cpu: spec.cpu_time.clone(),
            resolver: spec.resolver.clone(),
        };
        let task = tokio::spawn(async move {
            tokio::select! {
                biased;
                () = stop.cancelled() => Ok(Exit::Killed),
                r = rt.execute_on(net.as_ref(), &workload, instance) => r,
            }
        });
        Ok(WasmExec {
            stdin,
            stdout: Some(stdout),
            stderr: Some(stderr),
            task: Some(AbortOnDropHandle::new(task)),
            exit: None,
            cancel,
        })
    }

    /// [`Self::execute`] on `net`'s runtime when given (the pod's network namespace), else
    /// here. Dropping the returned future drops the instance wherever it runs.
    async fn execute_on(
        &self,
        net: Option<&tokio::runtime::Handle>,
        workload: &Workload,
        mut instance: Instance,
    ) -> Result<Exit> {
        let cpu = instance.cpu.take();
        let Some(net) = net else {
            return match cpu {
                Some(gauge) => cpu::Metered::new(self.execute(workload, instance), gauge).await,
                None => self.execute(workload, instance).await,
            };
        };
        let (rt, workload) = (self.clone(), workload.clone());
        let task = AbortOnDropHandle::new(net.spawn(async move {
            match cpu {
                Some(gauge) => cpu::Metered::new(rt.execute(&workload, instance), gauge).await,
                None => rt.execute(&workload, instance).await,
            }
        }));
        match task.await {
            Ok(r) => r,
            // The pod's network runtime shut down under the instance: the pod is going.
            Err(_) => Ok(Exit::Killed),
        }
    }

    async fn execute(&self, workload: &Workload, instance: Instance) -> Result<Exit> {
        let Instance {
            mut wasi,
            cap,
            gauge,
            cpu: _,
            resolver,
        } = instance;
        let digest = workload.digest();
        let engine = &self.inner.engine;
        match &workload.0.code {
            Code::Module(module) => {
                let state = P1State {
                    wasi: wasi.build_p1(),
                    limits: MemoryCap::with_gauge(cap, gauge.clone()),
                };
                let mut store = Store::new(engine, state);
                store.limiter(|s| &mut s.limits);
                arm_epochs(&mut store);
                let instance = match self
                    .inner
                    .module_linker
                    .instantiate_async(&mut store, module)
                    .await
                {
                    Ok(i) => i,
                    Err(e) => return instantiation_failed(e, store.data().limits.exceeded, digest),
                };
                let start = instance
                    .get_typed_func::<(), ()>(&mut store, "_start")
                    .map_err(|source| Error::NotCommand {
                        digest: digest.to_owned(),
                        export: "_start",
                        source,
                    })?;
                Ok(match start.call_async(&mut store, ()).await {
                    Ok(()) => Exit::Code(0),
                    Err(e) => classify(e, store.data().limits.exceeded),
                })
            }
            Code::Component(component) => {
                let state = P2State {
                    ctx: wasi.build(),
                    table: ResourceTable::new(),
                    limits: MemoryCap::with_gauge(cap, gauge.clone()),
                    lookup: resolver.map(|resolver| lookup::LookupCtx {
                        resolver,
                        allowed: ALLOW_NAME_LOOKUP,
                    }),
                };
                let linker = if state.lookup.is_some() {
                    &self.inner.pod_dns_linker
                } else {
                    &self.inner.component_linker
                };
                let mut store = Store::new(engine, state);
                store.limiter(|s| &mut s.limits);
                arm_epochs(&mut store);
                let command = match Command::instantiate_async(&mut store, component, linker).await
                {
                    Ok(c) => c,
                    Err(e) => return instantiation_failed(e, store.data().limits.exceeded, digest),
                };
                Ok(match command.wasi_cli_run().call_run(&mut store).await {
                    Ok(Ok(())) => Exit::Code(0),
                    Ok(Err(())) => Exit::Code(1),
                    Err(e) => classify(e, store.data().limits.exceeded),
                })
            }
        }
    }
}

/// Guests may resolve names (through wasmtime-wasi, or the pod's [`Resolver`], which keeps its
/// own copy of this switch since wasmtime-wasi's is private).
const ALLOW_NAME_LOOKUP: bool = true;

/// One instance to start: its WASI context, memory cap and gauge, and resolver.
struct Instance {
    wasi: WasiCtxBuilder,
    cap: Option<usize>,
    gauge: Option<MemoryGauge>,
    /// Charged with the CPU time of the instance's polls (taken by `execute_on`).
    cpu: Option<CpuGauge>,
    resolver: Option<Arc<Resolver>>,
}

/// What every instance gets: argv, env, the node's network (pods share it, as containers do:
/// a Wasm service can listen and `kubectl port-forward` reaches it) and the pod's volumes.
fn wasi_builder(
    args: &[String],
    env: &[(String, String)],
    dirs: &[Preopen],
) -> Result<WasiCtxBuilder> {
    let mut wasi = WasiCtxBuilder::new();
    wasi.args(args)
        .envs(env)
        .inherit_network()
        .allow_tcp(true)
        .allow_udp(true)
        .allow_ip_name_lookup(ALLOW_NAME_LOOKUP);
    for d in dirs {
        let perms = if d.read_only {
            FsPerms::ReadOnly
        } else {
            FsPerms::ReadWrite
        };
        wasi.preopened_dir(&d.host_path, &d.guest_path, perms)
            .map_err(|source| Error::Preopen {
                path: d.host_path.clone(),
                source,
            })?;
    }
    Ok(wasi)
}

fn flush_partials(streams: &[&LogStream]) {
    for s in streams {
        if let Err(error) = s.flush_partial() {
            warn!(%error, "failed to write the last partial log line");
        }
    }
}

/// Tells a component from a core module by the header: `\0asm`, then version 1 layer 0 for a
/// module or version 0x0d layer 1 for a component.
fn detect_kind(bytes: &[u8]) -> Result<WorkloadKind> {
    if bytes.len() < 8 || &bytes[..4] != b"\0asm" {
        return Err(Error::NotWasm);
    }
    let header = [bytes[4], bytes[5], bytes[6], bytes[7]];
    match header {
        [0x01, 0x00, 0x00, 0x00] => Ok(WorkloadKind::Module),
        [0x0d, 0x00, 0x01, 0x00] => Ok(WorkloadKind::Component),
        other => Err(Error::UnsupportedBinary(other)),
    }
}

#[cfg(test)]
mod tests;
