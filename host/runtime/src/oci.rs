//! Runs pod containers from ordinary Linux images with `runc`.
//!
//! One [`OciRuntime::run`] call is one container instance, from mounting its rootfs to removing
//! it again:
//!
//! - **Rootfs**: an overlayfs mount with the unpacked image as the read-only lower layer (shared
//!   by every container of that image, never written) and an upper/work dir in the run's
//!   `work_dir`. No copying fallback: without overlayfs, `run` fails and says so.
//! - **Process**: `runc run --keep` in the foreground, as our child. runc's exit status is the
//!   container's (128+n for a signal), and its stdout/stderr pipes are the container's, which we
//!   copy into the CRI log. `runc create` + `start` would reparent the container away from us
//!   and lose its exit code unless the agent were a subreaper. The price: the container dies
//!   with the agent (a crash leaves it to be cleaned up, which the next run with the same id
//!   does); a per-container shim (like containerd-shim) would lift that later. `--keep` leaves
//!   the cgroup in place after exit so the OOM-kill counter can be read before `runc delete`.
//! - **Stdin**: closed, unless the pod spec says `stdin: true`: then a pipe the agent feeds
//!   from `kubectl attach -i` ([`crate::stdio`]). With `tty: true`, runc's stdio is a host pty
//!   and the container gets a terminal of its own (as for `exec -t`); its output is logged as
//!   stdout.
//! - **Stop**: preStop hook (bounded by the grace period), `runc kill TERM`, the rest of the grace
//!   period, `runc kill KILL`; then `runc delete --force`, unmount, remove the bundle.
//! - **Network**: no network namespace; pods share the host network (`hostNetwork: true`) until
//!   kedge has pod networking.
//!
//! Everything runc needs is in the run's `work_dir`; a private runc `--root` holds its state.

mod exec;
mod rootfs;
mod runc;
mod spec;
#[cfg(test)]
mod tests;

use std::os::unix::fs::{DirBuilderExt as _, PermissionsExt as _};
use std::path::{Path, PathBuf};
use std::process::{ExitStatus, Stdio};
use std::time::Duration;

use tokio::io::{AsyncRead, AsyncReadExt as _};
use tokio::process::Child;
use tokio::time::Instant;
use tokio_util::sync::CancellationToken;
use tokio_util::task::AbortOnDropHandle;
use tracing::{Instrument as _, Span, debug, info, info_span, warn};

use crate::logs::{LogStream, LogWriter, StreamKind};
use crate::stdio::Stdin;
pub use crate::wasm::Exit;
use crate::{Error, Result};
pub use exec::{ExecProcess, Pty, PtySize};
use rootfs::{Cgroups, Layout};
use runc::Runc;

/// How long a postStart hook may wait for the container to reach `running`. runc gets there in
/// well under a second; longer means something is wrong with the host.
const START_TIMEOUT: Duration = Duration::from_secs(10);
/// Bound on a postStart hook. Kubernetes sets none, but an endless hook would keep the
/// container from ever being reported as started; this is generous for real hooks.
const POST_START_TIMEOUT: Duration = Duration::from_secs(120);
/// After a preStop hook used up the grace period, TERM still gets this long (kubelet's
/// minimum), so a process that handles TERM can finish cleanly.
const MIN_TERM_GRACE: Duration = Duration::from_secs(2);
/// How long we wait for runc to report the exit after SIGKILL (and again after killing runc).
const KILL_WAIT: Duration = Duration::from_secs(10);
/// After runc exits, how long the log pipes may take to reach EOF. All container processes die
/// with its init (PID namespace), so this only matters if runc itself was killed.
const PIPE_DRAIN: Duration = Duration::from_secs(5);
/// Poll interval while waiting for the container to start.
const STATE_POLL: Duration = Duration::from_millis(20);
/// Containers' open-file limit, as Docker and containerd set it: enough for servers with many
/// connections. Capped at the agent's own hard limit, which runc cannot exceed without
/// CAP_SYS_RESOURCE.
const NOFILE: u64 = 1 << 20;
/// Read size for the log pipes.
const PIPE_CHUNK: usize = 32 * 1024;

/// The runc-backed container runtime of a node.
#[derive(Debug)]
pub struct OciRuntime {
    runc: Runc,
    version: String,
    cgroups: Cgroups,
    cgroup_parent: String,
    nofile: u64,
}

/// A container's cgroup directories (see [`OciRuntime::cgroup_dirs`]): cgroup v1 keeps CPU
/// time in `cpuacct.usage` of the `cpuacct` hierarchy and memory in the `memory` one; v2 has
/// one directory with `cpu.stat` and `memory.*`.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct CgroupDirs {
    pub v2: bool,
    pub cpu: PathBuf,
    pub memory: PathBuf,
}

/// One container instance to run.
#[derive(Clone, Debug)]
pub struct ContainerSpec {
    /// Unique per run, `[A-Za-z0-9_.-]`: the runc container id and the cgroup leaf.
    pub id: String,
    /// The unpacked image; shared between containers, never written to.
    pub image_rootfs: PathBuf,
    /// A directory owned by this run (bundle, overlay upper/work, merged rootfs). Created if
    /// missing; what we put in it is removed when the run ends, the directory itself is not.
    pub work_dir: PathBuf,
    /// Final argv (image entrypoint/cmd merged with the pod's command/args).
    pub args: Vec<String>,
    pub env: Vec<(String, String)>,
    /// Working directory; `/` if empty.
    pub cwd: String,
    /// Image config `User`: `uid[:gid]` or names from the image's `/etc/passwd`, `/etc/group`.
    pub user: Option<String>,
    /// The pod name.
    pub hostname: String,
    pub mounts: Vec<Mount>,
    /// Bytes.
    pub memory_limit: Option<u64>,
    /// CPU limit in millicores, enforced as a CFS quota.
    pub cpu_limit_millis: Option<u64>,
    /// Relative CPU weight from requests (millis*1024/1000, at least 2).
    pub cpu_shares: Option<u64>,
    /// CRI log file, appended to.
    pub log_path: PathBuf,
    /// When that file is rotated.
    pub log_rotation: crate::logs::LogRotation,
    /// `terminationGracePeriodSeconds`: preStop plus TERM, before KILL.
    ///
    /// Read when the stop begins, so the agent can shorten it after the start (a deletion
    /// with its own grace period). [`fixed_grace`] makes one that never changes.
    pub grace_period: tokio::sync::watch::Receiver<Duration>,
    /// Exec hook run inside the container right after start; if it fails the container is
    /// killed and `run` returns [`Error::PostStartHook`] (kubelet's FailedPostStartHook).
    pub post_start: Option<Vec<String>>,
    /// Exec hook run on cancel, before TERM.
    pub pre_stop: Option<Vec<String>>,
    /// The container's `securityContext` settings the runtime applies.
    pub security: Security,
    /// The pod's network namespace (`/run/netns/…`); `None`: the node's network
    /// (`hostNetwork: true`, or a node without a pod network).
    pub netns: Option<PathBuf>,
    /// What `/etc/resolv.conf` and `/etc/hosts` hold; `None`: the node's resolv.conf and a
    /// hosts file naming the pod on loopback, right for the node's network.
    pub resolv_conf: Option<String>,
    pub hosts: Option<String>,
}

/// What of a container's `securityContext` the runtime applies (besides the user).
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct Security {
    /// `allowPrivilegeEscalation: false`: the process runs with no_new_privs.
    pub no_new_privileges: bool,
    /// `readOnlyRootFilesystem`: the root filesystem is mounted read-only.
    pub read_only_rootfs: bool,
    /// `runAsNonRoot`: refuse to start a process that would run as uid 0.
    pub run_as_non_root: bool,
    /// `capabilities.add`, as Kubernetes names them (`NET_ADMIN`, with or without `CAP_`).
    pub add_capabilities: Vec<String>,
    /// `capabilities.drop`; `ALL` drops every one (then `add` puts some back).
    pub drop_capabilities: Vec<String>,
}

/// A grace period that stays `d`.
pub fn fixed_grace(d: Duration) -> tokio::sync::watch::Receiver<Duration> {
    tokio::sync::watch::channel(d).1
}

/// A mount into the container.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Mount {
    /// Absolute path inside the container.
    pub destination: String,
    pub source: MountSource,
}

#[derive(Clone, Debug, PartialEq, Eq)]
pub enum MountSource {
    /// A host path (volume, secret/configMap dir), bound recursively.
    Bind { path: PathBuf, read_only: bool },
    /// A fresh tmpfs (`emptyDir: {medium: Memory}`), optionally size-capped in bytes.
    Tmpfs { size: Option<u64> },
}

impl OciRuntime {
    /// Finds runc (`$KEDGE_RUNC`, else `PATH`), checks that it runs and that we are root.
    /// `state_dir` becomes runc's `--root` (created, mode 0700). An error here means the node
    /// has no OCI runtime; the message says what is missing.
    pub fn detect(state_dir: &Path) -> Result<Self> {
        let bin = match std::env::var_os("KEDGE_RUNC") {
            Some(p) if !p.is_empty() => PathBuf::from(p),
            _ => find_in_path("runc", std::env::var_os("PATH").as_deref()).ok_or_else(|| {
                Error::RuncUnavailable("no runc in PATH (set KEDGE_RUNC to its path)".into())
            })?,
        };
        Self::with_binary(bin, state_dir)
    }

    /// Like [`OciRuntime::detect`] with an explicit runc binary.
    pub fn with_binary(bin: PathBuf, state_dir: &Path) -> Result<Self> {
        let euid = rustix::process::geteuid();
        if !euid.is_root() {
            // Overlay mounts and runc's cgroup and namespace set-up need real root; rootless
            // runc would need a different config (user namespace, no cgroup limits).
            return Err(Error::NotRoot(euid.as_raw()));
        }
        let out = runc::run_blocking(std::process::Command::new(&bin).arg("--version"))
            .map_err(|e| Error::RuncUnavailable(format!("cannot run {}: {e}", bin.display())))?;
        if !out.status.success() {
            return Err(Error::RuncUnavailable(format!(
                "`{} --version` failed: {}",
                bin.display(),
                String::from_utf8_lossy(&out.stderr).trim()
            )));
        }
        let stdout = String::from_utf8_lossy(&out.stdout);
        let first = stdout.lines().next().unwrap_or("runc").trim();
        let version = match first.strip_prefix("runc version ") {
            Some(v) => format!("runc {v}"),
            None => first.to_owned(),
        };
        std::fs::DirBuilder::new()
            .recursive(true)
            .mode(0o700)
            .create(state_dir)
            .map_err(|source| Error::Io {
                what: "create the runc state directory",
                path: state_dir.to_owned(),
                source,
            })?;
        let root = std::fs::canonicalize(state_dir).map_err(|source| Error::Io {
            what: "resolve",
            path: state_dir.to_owned(),
            source,
        })?;
        let cgroups = Cgroups::detect();
        if cgroups == Cgroups::Unknown {
            warn!("no readable memory cgroup: OOM kills will be reported as plain kills");
        }
        let own = rustix::process::getrlimit(rustix::process::Resource::Nofile);
        let nofile = own.maximum.map_or(NOFILE, |max| max.min(NOFILE));
        if nofile < NOFILE {
            warn!(
                nofile,
                "our hard open-file limit is low; containers get it too"
            );
        }
        info!(%version, runc = %bin.display(), ?cgroups, nofile, "oci runtime ready");
        Ok(Self {
            runc: Runc { bin, root },
            version,
            cgroups,
            cgroup_parent: "/kedge".into(),
            nofile,
        })
    }

    /// Parent of every container's cgroup (`<parent>/<id>`); `/kedge` by default. An absolute
    /// parent keeps containers out of the agent's own cgroup (a systemd unit's memory limit
    /// should not cover its pods, as kubelet's `/kubepods`); a relative one nests them under the
    /// agent's cgroup, which tests use to stay inside their sandbox.
    pub fn with_cgroup_parent(mut self, parent: impl Into<String>) -> Self {
        self.cgroup_parent = parent.into().trim_end_matches('/').to_owned();
        self
    }

    /// For node info, e.g. `runc 1.1.5`.
    pub fn version(&self) -> &str {
        &self.version
    }

    /// Bytes of memory container `id` uses now (its memory cgroup's usage), if known.
    pub fn memory_usage(&self, id: &str) -> Option<u64> {
        let dir = self
            .cgroups
            .memory_dir(&format!("{}/{}", self.cgroup_parent, id))?;
        let file = match self.cgroups {
            Cgroups::V1 { .. } => "memory.usage_in_bytes",
            _ => "memory.current",
        };
        std::fs::read_to_string(dir.join(file))
            .ok()?
            .trim()
            .parse()
            .ok()
    }

    /// Where container `id`'s CPU and memory accounting is read (its cgroup directories), if
    /// the host has a cgroup layout this runtime knows.
    pub fn cgroup_dirs(&self, id: &str) -> Option<CgroupDirs> {
        let path = format!("{}/{}", self.cgroup_parent, id);
        let (v2, cpu) = match self.cgroups {
            Cgroups::V1 { .. } => (false, self.cgroups.controller_dir("cpuacct", &path)?),
            Cgroups::V2 => (true, self.cgroups.memory_dir(&path)?),
            Cgroups::Unknown => return None,
        };
        Some(CgroupDirs {
            v2,
            cpu,
            memory: self.cgroups.memory_dir(&path)?,
        })
    }

    /// Runs `argv` to its end in running container `id` (with the container's env, user and
    /// cwd), bounded by `timeout`: a probe. Ok when it exits 0; otherwise why, with its output.
    pub async fn exec_checked(
        &self,
        id: &str,
        argv: &[String],
        timeout: Duration,
    ) -> std::result::Result<(), String> {
        self.runc.exec(id, argv, timeout).await
    }

    /// Runs one container instance to its end and removes it.
    ///
    /// On `cancel`: preStop hook (bounded by the grace period), TERM, the rest of the grace
    /// period, KILL. A container that ended within the grace period reports its own exit code;
    /// one that needed KILL is [`Exit::Killed`]. An OOM kill in the container's cgroup makes any
    /// non-zero exit [`Exit::OutOfMemory`]. A failure to start (bad image path, missing binary)
    /// is an `Err`, as is a failed postStart hook.
    pub async fn run(&self, spec: ContainerSpec, cancel: CancellationToken) -> Result<Exit> {
        self.run_with_stdin(spec, None, cancel).await
    }

    /// [`OciRuntime::run`] with the container's stdin kept open and fed from `stdin` (pod
    /// spec `stdin: true`), and with `tty: true` a terminal: runc gets a host pty as its
    /// stdio and, in the foreground, copies between it and the container's own pty, as for
    /// `exec -t`. The terminal's output is the container's stdout in the log, as kubelet
    /// logs tty containers. Without `stdin` the process reads EOF.
    pub async fn run_with_stdin(
        &self,
        spec: ContainerSpec,
        stdin: Option<Stdin>,
        cancel: CancellationToken,
    ) -> Result<Exit> {
        let span = info_span!("oci", container = %spec.id);
        self.run_inner(spec, stdin, cancel).instrument(span).await
    }

    async fn run_inner(
        &self,
        spec: ContainerSpec,
        stdin: Option<Stdin>,
        cancel: CancellationToken,
    ) -> Result<Exit> {
        spec::validate(&spec)?;
        let image_rootfs = std::fs::canonicalize(&spec.image_rootfs)
            .ok()
            .filter(|p| p.is_dir())
            .ok_or_else(|| {
                Error::InvalidSpec(format!(
                    "image rootfs {} is not a directory",
                    spec.image_rootfs.display()
                ))
            })?;
        std::fs::create_dir_all(&spec.work_dir).map_err(|source| Error::Io {
            what: "create",
            path: spec.work_dir.clone(),
            source,
        })?;
        let work_dir = std::fs::canonicalize(&spec.work_dir).map_err(|source| Error::Io {
            what: "resolve",
            path: spec.work_dir.clone(),
            source,
        })?;
        let layout = Layout::new(&work_dir);
        let cgroups_path = format!("{}/{}", self.cgroup_parent, spec.id);

        // A crash of an earlier agent can leave a container with this id running, its overlay
        // mounted and its bundle in place; runc would refuse the id and mount would stack.
        self.cleanup(&spec.id, &layout).await?;

        let ident = spec::resolve_user(&image_rootfs, spec.user.as_deref())?;
        if spec.security.run_as_non_root && ident.uid == 0 {
            return Err(Error::InvalidSpec(
                "container has runAsNonRoot and image will run as root".into(),
            ));
        }
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

        let mut guard = CleanupGuard {
            runc: self.runc.clone(),
            id: spec.id.clone(),
            layout: layout.clone(),
            armed: true,
        };
        rootfs::mount_overlay(&image_rootfs, &layout)?;
        rootfs::write_etc_files(
            &layout,
            &spec.hostname,
            spec.resolv_conf.as_deref(),
            spec.hosts.as_deref(),
        )?;
        let config = spec::config(
            &spec,
            &ident,
            &spec::Host {
                hosts_file: &layout.hosts,
                resolv_file: &layout.resolv,
                cgroups_path: &cgroups_path,
                swap_limit: matches!(self.cgroups, Cgroups::V1 { memsw: true }),
                nofile: self.nofile,
                terminal: stdin.as_ref().is_some_and(|s| s.mode().tty),
            },
        );
        let config_path = layout.bundle.join("config.json");
        let config = serde_json::to_vec_pretty(&config).map_err(|e| Error::Io {
            what: "serialize",
            path: config_path.clone(),
            source: e.into(),
        })?;
        std::fs::write(&config_path, config).map_err(|source| Error::Io {
            what: "write",
            path: config_path.clone(),
            source,
        })?;

        let outcome = self
            .execute(&spec, &layout, &cgroups_path, log, stdin, &cancel)
            .await;
        guard.armed = false;
        if let Err(e) = self.cleanup(&spec.id, &layout).await {
            // The exit is still true; what is left behind is logged and retried if the id is
            // ever reused.
            warn!(error = %e, "container not fully removed");
        }
        outcome
    }

    /// Starts `runc run`, copies its output to the log, supervises it, and turns its end into
    /// an [`Exit`]. Leaves the (stopped) container for the caller to delete.
    async fn execute(
        &self,
        spec: &ContainerSpec,
        layout: &Layout,
        cgroups_path: &str,
        log: LogWriter,
        stdin: Option<Stdin>,
        cancel: &CancellationToken,
    ) -> Result<Exit> {
        let mut cmd = self.runc.command();
        cmd.arg("--log")
            .arg(&layout.runc_log)
            .args(["--log-format", "json", "run", "--keep", "--bundle"])
            .arg(&layout.bundle)
            .arg(&spec.id)
            // Own process group: a Ctrl-C or group signal aimed at the agent would reach runc,
            // which forwards it to the container, bypassing preStop and the grace period.
            .process_group(0);
        let tty = stdin.as_ref().is_some_and(|s| s.mode().tty);
        let mut pty = None;
        if tty {
            let io_err = |source| Error::Io {
                what: "allocate",
                path: PathBuf::from("a pty for the container"),
                source,
            };
            let (master, slave) = exec::host_pty().map_err(io_err)?;
            cmd.stdin(Stdio::from(slave.try_clone().map_err(io_err)?))
                .stdout(Stdio::from(slave.try_clone().map_err(io_err)?))
                .stderr(Stdio::from(slave));
            pty = Some(Pty::new(master)?);
        } else {
            cmd.stdout(Stdio::piped()).stderr(Stdio::piped());
            if stdin.as_ref().is_some_and(|s| s.mode().stdin) {
                cmd.stdin(Stdio::piped());
            }
        }
        let mut child = cmd
            .spawn()
            .map_err(|source| Error::RuncSpawn { op: "run", source })?;
        // Our copies of the pty slave close here, so the master reads EIO once runc is gone.
        drop(cmd);
        info!(pid = child.id(), tty, "container starting");
        let mut pumps = vec![
            pump(child.stdout.take(), log.stream(StreamKind::Stdout)),
            pump(child.stderr.take(), log.stream(StreamKind::Stderr)),
        ];
        // Stops with the run: nothing is fed to a container that is gone.
        let _feeder = match (stdin, pty) {
            (Some(stdin), Some(mut pty)) => {
                pty.size.runc = child.id();
                pumps.push(pump(Some(pty.output), log.stream(StreamKind::Stdout)));
                let size = pty.size;
                let feed = stdin.feed(pty.input, move |w, h| {
                    if let Err(e) = size.resize(w, h) {
                        debug!(error = %e, "cannot resize the container's terminal");
                    }
                });
                Some(AbortOnDropHandle::new(tokio::spawn(
                    feed.instrument(Span::current()),
                )))
            }
            (Some(stdin), None) => child.stdin.take().map(|w| {
                AbortOnDropHandle::new(tokio::spawn(
                    stdin.feed(w, |_, _| {}).instrument(Span::current()),
                ))
            }),
            (None, _) => None,
        };

        let ended = self.supervise(spec, &mut child, cancel).await;

        for p in pumps.into_iter().flatten() {
            if tokio::time::timeout(PIPE_DRAIN, p).await.is_err() {
                warn!("container output still open {PIPE_DRAIN:?} after exit; dropping the rest");
            }
        }

        let (status, killed) = match ended {
            Ended::Exited(Ok(status)) => (Some(status), false),
            Ended::Exited(Err(source)) => return Err(Error::RuncSpawn { op: "run", source }),
            Ended::Stopped { status, killed } => (status, killed),
            Ended::HookFailed(message) => {
                return Err(Error::PostStartHook {
                    argv: spec.post_start.clone().unwrap_or_default(),
                    message,
                });
            }
        };
        // runc reports its own failures (cannot exec args[0], bad mount, ...) with exit 1 and
        // an error in its log; a container exiting 1 leaves no such entry.
        if !killed && status.and_then(|s| s.code()) == Some(1) {
            let errors = runc::logged_errors(&layout.runc_log);
            if !errors.is_empty() {
                return Err(Error::Runc {
                    op: "run",
                    id: spec.id.clone(),
                    message: errors.join("; "),
                });
            }
        }
        let oom = self.cgroups.oom_kills(cgroups_path).unwrap_or(0) > 0;
        let exit = exit_of(status, killed, oom);
        info!(?exit, "container ended");
        Ok(exit)
    }

    /// Waits for the container to end, for `cancel`, or for the postStart hook to fail.
    async fn supervise(
        &self,
        spec: &ContainerSpec,
        child: &mut Child,
        cancel: &CancellationToken,
    ) -> Ended {
        let hook = async {
            match &spec.post_start {
                Some(argv) => self.post_start(&spec.id, argv).await,
                None => std::future::pending().await,
            }
        };
        tokio::pin!(hook);
        let mut hook_pending = spec.post_start.is_some();
        loop {
            tokio::select! {
                biased;
                status = child.wait() => return Ended::Exited(status),
                () = cancel.cancelled() => {
                    let grace = *spec.grace_period.borrow();
                    info!(?grace, "stopping container");
                    let (status, killed) = self
                        .stop(&spec.id, child, grace, spec.grace_period.clone(), spec.pre_stop.as_deref())
                        .await;
                    return Ended::Stopped { status, killed };
                }
                res = &mut hook, if hook_pending => {
                    hook_pending = false;
                    match res {
                        Ok(()) => debug!("postStart hook done"),
                        Err(message) => {
                            warn!(%message, "postStart hook failed; killing the container");
                            // kubelet kills without running preStop here too.
                            let grace = *spec.grace_period.borrow();
                            self.stop(&spec.id, child, grace, spec.grace_period.clone(), None).await;
                            return Ended::HookFailed(message);
                        }
                    }
                }
            }
        }
    }

    /// Waits until the container runs, then executes the hook in it. A container that is
    /// already gone needs no hook; its exit is reported by the caller.
    async fn post_start(&self, id: &str, argv: &[String]) -> std::result::Result<(), String> {
        match self.until_running(id).await? {
            true => self.runc.exec(id, argv, POST_START_TIMEOUT).await,
            false => Ok(()),
        }
    }

    /// Waits until container `id` runs (true) or has already stopped (false); an error if it
    /// is not running after the start timeout. What comes into a container (hooks, probes)
    /// waits for this: `runc exec` into one still being created fails.
    pub async fn until_running(&self, id: &str) -> std::result::Result<bool, String> {
        let deadline = Instant::now() + START_TIMEOUT;
        loop {
            match self.runc.state(id).await {
                Ok(Some(s)) if s == "running" => return Ok(true),
                Ok(Some(s)) if s == "stopped" => return Ok(false),
                Ok(_) => {}
                Err(e) => debug!(error = %e, "runc state"),
            }
            if Instant::now() >= deadline {
                return Err(format!("container not running after {START_TIMEOUT:?}"));
            }
            tokio::time::sleep(STATE_POLL).await;
        }
    }

    /// preStop, TERM, grace, KILL. Returns runc's exit status (if it came) and whether KILL
    /// was needed.
    async fn stop(
        &self,
        id: &str,
        child: &mut Child,
        grace: Duration,
        grace_updates: tokio::sync::watch::Receiver<Duration>,
        pre_stop: Option<&[String]>,
    ) -> (Option<ExitStatus>, bool) {
        let mut deadline = Instant::now() + grace;
        if let Some(argv) = pre_stop {
            tokio::select! {
                biased;
                status = child.wait() => return (status.ok(), false),
                res = self.runc.exec(id, argv, grace) => match res {
                    Ok(()) => debug!("preStop hook done"),
                    Err(message) => warn!(%message, "preStop hook failed"),
                },
            }
            deadline = deadline.max(Instant::now() + MIN_TERM_GRACE);
        }
        if let Err(e) = self.runc.kill(id, "TERM").await {
            // Typically: it exited meanwhile, or is still being created. `runc run` queues the
            // signals it receives from its start and forwards them to the container once it
            // runs, so signalling runc itself covers the start-up window.
            debug!(error = %e, "runc kill TERM failed; signalling runc instead");
            if let Some(pid) = child
                .id()
                .and_then(|p| rustix::process::Pid::from_raw(p as i32))
                && let Err(e) = rustix::process::kill_process(pid, rustix::process::Signal::TERM)
            {
                debug!(error = %e, "TERM not delivered");
            }
        }
        // A shorter grace period given meanwhile (a second delete, the agent shutting down)
        // moves the deadline closer, as in kubelet.
        let started = Instant::now();
        let mut updates = grace_updates;
        loop {
            tokio::select! {
                status = child.wait() => return (status.ok(), false),
                () = tokio::time::sleep_until(deadline) => break,
                changed = updates.changed() => match changed {
                    Ok(()) => {
                        let shorter = started + *updates.borrow_and_update();
                        if shorter < deadline {
                            debug!("grace period shortened");
                            deadline = shorter;
                        }
                    }
                    // No more updates can come: just wait out the deadline.
                    Err(_) => {
                        if let Ok(status) = tokio::time::timeout_at(deadline, child.wait()).await {
                            return (status.ok(), false);
                        }
                        break;
                    }
                },
            }
        }
        info!(?grace, "grace period over; sending KILL");
        match self.runc.kill(id, "KILL").await {
            Ok(()) => {
                if let Ok(status) = tokio::time::timeout(KILL_WAIT, child.wait()).await {
                    return (status.ok(), true);
                }
                warn!(
                    "runc did not exit after KILL; killing it, `runc delete --force` does the rest"
                );
            }
            // SIGKILL cannot be forwarded through runc; end runc and let the cleanup's
            // `runc delete --force` kill whatever it started.
            Err(e) => warn!(error = %e, "KILL not delivered; killing runc"),
        }
        if let Err(e) = child.start_kill() {
            warn!(error = %e, "cannot kill runc");
        }
        let status = tokio::time::timeout(KILL_WAIT, child.wait())
            .await
            .ok()
            .and_then(Result::ok);
        (status, true)
    }

    /// Removes what an earlier agent process left behind when it died without stopping its
    /// containers (killed, crashed): every container in our runc root, and the overlay mounts
    /// and bundles under `work_root` (the parent of the runs' `work_dir`s). The agent calls
    /// this once at start, before it runs pods again. Blocking; returns how many containers
    /// were removed.
    pub fn remove_leftovers(&self, work_root: &Path) -> usize {
        let listed = runc::run_blocking(
            std::process::Command::new(&self.runc.bin)
                .arg("--root")
                .arg(&self.runc.root)
                .args(["list", "-q"]),
        );
        let ids: Vec<String> = match listed {
            Ok(out) if out.status.success() => String::from_utf8_lossy(&out.stdout)
                .lines()
                .map(str::trim)
                .filter(|l| !l.is_empty())
                .map(String::from)
                .collect(),
            Ok(out) => {
                warn!(stderr = %String::from_utf8_lossy(&out.stderr), "runc list failed");
                Vec::new()
            }
            Err(e) => {
                warn!(error = %e, "runc list failed");
                Vec::new()
            }
        };
        for id in &ids {
            if let Err(e) = runc::delete_force_blocking(&self.runc, id) {
                warn!(container = %id, error = %e, "removing a leftover container failed");
            }
        }
        if let Ok(entries) = std::fs::read_dir(work_root) {
            for dir in entries.flatten().map(|e| e.path()).filter(|p| p.is_dir()) {
                let dir = dir.canonicalize().unwrap_or(dir);
                let id = dir
                    .file_name()
                    .map(|n| n.to_string_lossy().into_owned())
                    .unwrap_or_default();
                // Nothing runs any more: this only unmounts and removes the run's files.
                let _ = rootfs::cleanup_blocking(&self.runc, &id, &Layout::new(&dir));
            }
        }
        if !ids.is_empty() {
            info!(
                count = ids.len(),
                "removed containers left by an earlier agent"
            );
        }
        ids.len()
    }

    /// [`rootfs::cleanup_blocking`] off the async workers.
    async fn cleanup(&self, id: &str, layout: &Layout) -> Result<()> {
        let (runc, id, layout) = (self.runc.clone(), id.to_owned(), layout.clone());
        let span = Span::current();
        tokio::task::spawn_blocking(move || {
            let _e = span.enter();
            rootfs::cleanup_blocking(&runc, &id, &layout)
        })
        .await
        .unwrap_or_else(|e| {
            Err(Error::Runc {
                op: "delete",
                id: String::new(),
                message: format!("cleanup task failed: {e}"),
            })
        })
    }
}

/// How supervision ended.
enum Ended {
    /// runc exited on its own.
    Exited(std::io::Result<ExitStatus>),
    /// We stopped it; `status` is `None` if runc never reported.
    Stopped {
        status: Option<ExitStatus>,
        killed: bool,
    },
    HookFailed(String),
}

/// Maps runc's status to an [`Exit`]. runc exits with the container's code, or 128+n when the
/// container died of signal n (the shell and Kubernetes convention, e.g. 143 after TERM).
fn exit_of(status: Option<ExitStatus>, killed: bool, oom: bool) -> Exit {
    use std::os::unix::process::ExitStatusExt as _;
    let code = status.and_then(|s| s.code().or_else(|| s.signal().map(|n| 128 + n)));
    if oom && code != Some(0) {
        return Exit::OutOfMemory;
    }
    if killed {
        return Exit::Killed;
    }
    match code {
        Some(c) => Exit::Code(c),
        None => Exit::Killed,
    }
}

/// Removes the container if `run` is dropped before it could clean up itself (the agent
/// dropped the task, or a panic): the container must not outlive the run that owns it. This
/// blocks the dropping thread for the few runc calls; it is the abnormal path.
struct CleanupGuard {
    runc: Runc,
    id: String,
    layout: Layout,
    armed: bool,
}

impl Drop for CleanupGuard {
    fn drop(&mut self) {
        if self.armed {
            warn!(container = %self.id, "run abandoned; removing the container");
            let _ = rootfs::cleanup_blocking(&self.runc, &self.id, &self.layout);
        }
    }
}

/// Copies one container output pipe into its log stream until EOF. Write errors do not stop
/// the reading: a container blocked on a full pipe would hang.
fn pump<R>(reader: Option<R>, stream: LogStream) -> Option<AbortOnDropHandle<()>>
where
    R: AsyncRead + Unpin + Send + 'static,
{
    let mut reader = reader?;
    let task = async move {
        let mut buf = vec![0u8; PIPE_CHUNK];
        let mut failed = false;
        loop {
            match reader.read(&mut buf).await {
                Ok(0) => break,
                Ok(n) => {
                    if let Err(e) = stream.write(&buf[..n])
                        && !failed
                    {
                        warn!(error = %e, "cannot write the container log; dropping output");
                        failed = true;
                    }
                }
                // A pty master reads EIO once the terminal's last user closed it: its EOF.
                Err(e) if e.raw_os_error() == Some(rustix::io::Errno::IO.raw_os_error()) => break,
                Err(e) => {
                    warn!(error = %e, "cannot read container output");
                    break;
                }
            }
        }
        if let Err(e) = stream.flush_partial() {
            warn!(error = %e, "cannot write the container log");
        }
    };
    Some(AbortOnDropHandle::new(tokio::spawn(
        task.instrument(Span::current()),
    )))
}

/// `which`: the first executable `name` in `path`.
fn find_in_path(name: &str, path: Option<&std::ffi::OsStr>) -> Option<PathBuf> {
    std::env::split_paths(path?)
        .map(|dir| dir.join(name))
        .find(|p| {
            std::fs::metadata(p).is_ok_and(|m| m.is_file() && m.permissions().mode() & 0o111 != 0)
        })
}
