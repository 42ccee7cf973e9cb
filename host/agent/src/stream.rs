//! The kubelet's streaming endpoints, reached through the tunnel: exec, attach and
//! port-forward.
//!
//! The API server terminates the client's WebSocket or SPDY connection and asks the agent
//! with an HTTP upgrade on a tunnel stream. After `101`, an exec or attach stream carries
//! [`channel::Frame`]s both ways; a port-forward stream is the raw TCP connection to the
//! port. Anything refused (unknown container, a command a Wasm container does not have, port
//! closed) is answered before the upgrade with a plain status and message, which the API
//! server turns into a Status.

use std::sync::Arc;
use std::time::Duration;

use axum::body::Body;
use axum::extract::{Path as UrlPath, RawQuery, Request, State};
use axum::response::{IntoResponse, Response};
use bytes::BytesMut;
use http::StatusCode;
use hyper_util::rt::TokioIo;
use tokio::io::{AsyncRead, AsyncReadExt as _, AsyncWrite, AsyncWriteExt as _};
use tokio::sync::{broadcast, mpsc};
use tokio_util::sync::CancellationToken;

use kedge_runtime::stdio::{Attach, Input};

use super::LogHandle;
use super::kubelet::Kubelet;
use kedge_core::channel::{self, CHANNEL_UPGRADE, CHUNK, Frame, READ_AHEAD, TCP_UPGRADE};
use kedge_tunnel::frames::write_frames;

/// After the process exits, how long its output may take to drain (a background child can
/// hold the pipes open forever).
const DRAIN: Duration = Duration::from_secs(2);
/// Copy buffer per direction of a forwarded connection: tokio's 8 KiB default costs a
/// QUIC stream write per 8 KiB (measured with `--bench portforward`).
const SPLICE_BUF: usize = 64 * 1024;
/// Bound on connecting to the pod's port.
const CONNECT_TIMEOUT: Duration = Duration::from_secs(5);

fn refuse(code: StatusCode, message: impl Into<String>) -> Response {
    (code, message.into()).into_response()
}

fn switching(token: &'static str) -> Response {
    let mut r = Response::new(Body::empty());
    *r.status_mut() = StatusCode::SWITCHING_PROTOCOLS;
    r.headers_mut().insert(
        http::header::CONNECTION,
        http::HeaderValue::from_static("upgrade"),
    );
    r.headers_mut()
        .insert(http::header::UPGRADE, http::HeaderValue::from_static(token));
    r
}

/// The query of an exec or attach request, as the API server forwards it.
#[derive(Default)]
struct Options {
    command: Vec<String>,
    uid: Option<String>,
    stdin: bool,
    /// Whether the client has a stderr channel (else stderr goes with stdout).
    stderr: bool,
    tty: bool,
    dry_run: bool,
}

fn options(query: Option<&str>) -> Options {
    let mut o = Options::default();
    let truthy = |v: &str| v.eq_ignore_ascii_case("true") || v == "1";
    for (k, v) in url::form_urlencoded::parse(query.unwrap_or("").as_bytes()) {
        match k.as_ref() {
            "command" => o.command.push(v.into_owned()),
            "uid" => o.uid = Some(v.into_owned()),
            "stdin" => o.stdin = truthy(&v),
            "stderr" => o.stderr = truthy(&v),
            "tty" => o.tty = truthy(&v),
            "dryRun" => o.dry_run = truthy(&v),
            _ => {}
        }
    }
    o
}

/// The running container (ns, pod, container), or the refusal to send.
fn running(
    k: &Kubelet,
    ns: &str,
    pod: &str,
    container: &str,
    uid: Option<&str>,
) -> Result<LogHandle, (StatusCode, String)> {
    let handle = k
        .logs
        .lock()
        .unwrap_or_else(|p| p.into_inner())
        .get(&(ns.to_string(), pod.to_string(), container.to_string()))
        .cloned();
    let Some(h) = handle.filter(|h| uid.is_none_or(|u| u == h.uid)) else {
        return Err((
            StatusCode::NOT_FOUND,
            format!("container not found ({container:?})"),
        ));
    };
    if *h.done.borrow() {
        return Err((
            StatusCode::BAD_REQUEST,
            format!("container {container:?} in pod {pod:?} is not running"),
        ));
    }
    Ok(h)
}

pub(super) async fn exec(
    State(k): State<Arc<Kubelet>>,
    UrlPath((ns, pod, container)): UrlPath<(String, String, String)>,
    RawQuery(query): RawQuery,
    req: Request,
) -> Response {
    let o = options(query.as_deref());
    let h = match running(&k, &ns, &pod, &container, o.uid.as_deref()) {
        Ok(h) => h,
        Err(r) => return r.into_response(),
    };
    if o.command.is_empty() {
        return refuse(
            StatusCode::BAD_REQUEST,
            "you must specify at least 1 command",
        );
    }
    // A Wasm image holds one program: exec starts it again, with the exec's arguments. The
    // command must name it, so `kubectl exec -- sh` gets an answer rather than a second copy
    // of a server.
    if let Some(w) = &h.wasm {
        if o.command[0] != w.program() {
            return refuse(
                StatusCode::BAD_REQUEST,
                format!(
                    "container {container:?} is a WebAssembly program, with no shell or other \
                     binaries: exec runs that program again with your arguments, so the command \
                     must begin with its name, {:?} (kubectl exec {pod} -c {container} -- {} ARGS...)",
                    w.program(),
                    w.program()
                ),
            );
        }
        if o.tty {
            return refuse(
                StatusCode::BAD_REQUEST,
                format!(
                    "container {container:?} is a WebAssembly program, which has no terminal: \
                     exec without -t (-i passes stdin)"
                ),
            );
        }
    }
    let target = match (&h.wasm, h.runc_id.clone(), k.oci.clone()) {
        (Some(w), _, _) => Target::Wasm(w.clone()),
        (None, Some(runc_id), Some(oci)) => Target::Oci(runc_id, oci),
        _ => {
            return refuse(
                StatusCode::INTERNAL_SERVER_ERROR,
                format!("container {container:?} has nothing to exec into on this node"),
            );
        }
    };
    if o.dry_run {
        return StatusCode::NO_CONTENT.into_response();
    }
    let Some(on_upgrade) = upgrade_of(req, CHANNEL_UPGRADE) else {
        return refuse(
            StatusCode::BAD_REQUEST,
            format!("exec needs an upgrade to {CHANNEL_UPGRADE}"),
        );
    };
    // Each Wasm exec is a whole instance with the container's memory limit of its own: a
    // bound on how many run at once keeps exec from multiplying a pod's memory on the node.
    let permit = match &target {
        Target::Wasm(w) => match w.execs.clone().try_acquire_owned() {
            Ok(p) => Some(p),
            Err(_) => {
                return refuse(
                    StatusCode::TOO_MANY_REQUESTS,
                    format!(
                        "container {container:?} in pod {pod:?} already runs {WASM_EXECS} exec \
                         sessions, each a whole instance of its program; try again when one ends"
                    ),
                );
            }
        },
        Target::Oci(..) => None,
    };
    let started = match target {
        Target::Oci(runc_id, oci) => oci
            .exec(&runc_id, &o.command, o.tty, o.stdin)
            .await
            .map(|p| Process::Oci(Box::new(p))),
        Target::Wasm(w) => {
            let spec = kedge_runtime::wasm::ExecSpec {
                args: o.command.clone(),
                ..w.container.clone()
            };
            k.wasm.exec(&w.workload, spec, o.stdin).map(Process::Wasm)
        }
    };
    let proc = match started {
        Ok(p) => p,
        Err(e) => {
            tracing::warn!(pod = %format!("{ns}/{pod}"), container, error = %e, "exec failed to start");
            return refuse(
                StatusCode::INTERNAL_SERVER_ERROR,
                format!("cannot exec in container {container:?}: {e}"),
            );
        }
    };
    let cancel = k.cancel.child_token();
    tokio::spawn(async move {
        let _permit = permit;
        match on_upgrade.await {
            Ok(io) => exec_session(TokioIo::new(io), proc, o.tty, h.done, cancel).await,
            Err(e) => {
                tracing::debug!(error = %e, "exec upgrade failed");
                let mut proc = proc;
                proc.stop().await;
            }
        }
    });
    switching(CHANNEL_UPGRADE)
}

/// Exec sessions a Wasm container may have at once.
pub(super) const WASM_EXECS: usize = 4;

/// What `kubectl exec` starts in a Wasm container, kept while the container runs.
pub(super) struct WasmTarget {
    /// [`WASM_EXECS`] permits.
    pub execs: Arc<tokio::sync::Semaphore>,
    pub workload: kedge_runtime::wasm::Workload,
    /// The container's own argv, env, volumes and memory limit; an exec replaces the argv.
    pub container: kedge_runtime::wasm::ExecSpec,
}

impl WasmTarget {
    /// The container's argv[0]: the name an exec's command must begin with.
    pub(super) fn program(&self) -> &str {
        self.container.args.first().map_or("", String::as_str)
    }
}

enum Target {
    Oci(String, Arc<kedge_runtime::oci::OciRuntime>),
    Wasm(Arc<WasmTarget>),
}

/// An exec's process: `runc exec` in a container, or a second instance of a Wasm program.
enum Process {
    Oci(Box<kedge_runtime::oci::ExecProcess>),
    Wasm(kedge_runtime::wasm::WasmExec),
}

type ProcInput = Box<dyn AsyncWrite + Send + Unpin>;
type ProcOutput = Box<dyn AsyncRead + Send + Unpin>;

impl Process {
    /// Its stdin, stdout and stderr (`None` where there is none), and with a tty, the pty's
    /// size control.
    fn take_stdio(
        &mut self,
    ) -> (
        Option<ProcInput>,
        Option<ProcOutput>,
        Option<ProcOutput>,
        Option<kedge_runtime::oci::PtySize>,
    ) {
        match self {
            Process::Oci(p) => {
                let mut stdin: Option<ProcInput> = p.stdin.take().map(|s| Box::new(s) as _);
                let mut stdout: Option<ProcOutput> = p.stdout.take().map(|s| Box::new(s) as _);
                let mut size = None;
                if let Some(pty) = p.pty.take() {
                    stdout = Some(Box::new(pty.output));
                    stdin = Some(Box::new(pty.input));
                    size = Some(pty.size);
                }
                let stderr = p.stderr.take().map(|s| Box::new(s) as _);
                (stdin, stdout, stderr, size)
            }
            Process::Wasm(p) => (
                p.stdin.take().map(|s| Box::new(s) as _),
                p.stdout.take().map(|s| Box::new(s) as _),
                p.stderr.take().map(|s| Box::new(s) as _),
                None,
            ),
        }
    }

    /// Waits for the end; the exit code as a process's (128+n for a signal, 137 for a
    /// stopped or out-of-memory Wasm instance, 134 for a trap).
    async fn wait(&mut self) -> Result<i32, String> {
        match self {
            Process::Oci(p) => p.wait().await.map_err(|e| e.to_string()),
            Process::Wasm(p) => p
                .wait()
                .await
                .map(|exit| exit.exit_code())
                .map_err(|e| e.to_string()),
        }
    }

    async fn stop(&mut self) {
        match self {
            Process::Oci(p) => p.stop().await,
            Process::Wasm(p) => p.stop().await,
        }
    }
}

/// Takes the connection-upgrade handle of a request that asks for `token`.
fn upgrade_of(mut req: Request, token: &str) -> Option<hyper::upgrade::OnUpgrade> {
    let asked = req
        .headers()
        .get(http::header::UPGRADE)
        .and_then(|v| v.to_str().ok())
        .is_some_and(|v| v.eq_ignore_ascii_case(token));
    if !asked {
        return None;
    }
    req.extensions_mut().remove::<hyper::upgrade::OnUpgrade>()
}

/// Relays one exec: frames from the tunnel to the process's stdin (and tty size), its output
/// back as frames, and finally its exit as a Status on the error channel.
async fn exec_session<IO>(
    io: IO,
    mut proc: Process,
    tty: bool,
    mut container_done: tokio::sync::watch::Receiver<bool>,
    cancel: CancellationToken,
) where
    IO: AsyncRead + AsyncWrite + Send + 'static,
{
    let (mut rd, wr) = tokio::io::split(io);
    let (tx, rx) = mpsc::channel::<Frame>(16);
    let writer = tokio::spawn(write_frames(wr, rx));

    let mut pumps = tokio::task::JoinSet::new();
    let (mut stdin, stdout, stderr, size) = proc.take_stdio();
    if let Some(out) = stdout {
        pumps.spawn(pump(out, channel::STDOUT, tx.clone()));
    }
    if let Some(err) = stderr {
        // With a tty the process writes to the tty; what comes on this pipe is runc's own
        // complaint (command not found), shown as output since a tty has no stderr channel.
        let ch = if tty {
            channel::STDOUT
        } else {
            channel::STDERR
        };
        pumps.spawn(pump(err, ch, tx.clone()));
    }

    let input = async {
        let mut buf = BytesMut::with_capacity(CHUNK);
        while let Some(frame) = next_frame(&mut rd, &mut buf, "exec").await {
            match frame.channel {
                channel::STDIN => {
                    let Some(w) = stdin.as_mut() else { continue };
                    let write = async {
                        w.write_all(&frame.payload).await?;
                        w.flush().await
                    };
                    // A process not reading its stdin must not keep the session from seeing
                    // its client leave.
                    match unless_client_leaves(write, &mut rd, &mut buf).await {
                        Some(Ok(())) => {}
                        Some(Err(_)) => stdin = None,
                        None => return,
                    }
                }
                channel::CLOSE => {
                    // With a tty, EOF is the terminal's ^D; without, closing the pipe.
                    if tty {
                        if let Some(w) = stdin.as_mut()
                            && unless_client_leaves(w.write_all(&[4]), &mut rd, &mut buf)
                                .await
                                .is_none()
                        {
                            return;
                        }
                    } else {
                        stdin = None;
                    }
                }
                channel::RESIZE => {
                    if let (Some(s), Some((w, h))) = (&size, channel::parse_resize(&frame.payload))
                    {
                        let _ = s.resize(w, h);
                    }
                }
                _ => {}
            }
        }
    };

    // An exec lives no longer than its container (a runc exec dies with the container's PID
    // namespace anyway; a Wasm instance is stopped here).
    let container_ended = async {
        let _ = container_done.wait_for(|d| *d).await;
    };
    let code = tokio::select! {
        code = proc.wait() => Some(code),
        () = input => None,
        () = container_ended => None,
        () = cancel.cancelled() => None,
    };
    let status = match code {
        Some(Ok(code)) => channel::exit_status(code),
        Some(Err(e)) => channel::failure_status(&format!("running the command: {e}")),
        None => {
            // The client went away (or the agent stops): end the process.
            proc.stop().await;
            drop(tx);
            pumps.shutdown().await;
            let _ = writer.await;
            return;
        }
    };
    let _ = tokio::time::timeout(DRAIN, async { while pumps.join_next().await.is_some() {} }).await;
    pumps.shutdown().await;
    let body = serde_json::to_vec(&status).unwrap_or_default();
    let _ = tx.send(Frame::new(channel::ERROR, body)).await;
    drop(tx);
    let _ = writer.await;
}

/// The next frame from the client, reading more into `buf` as needed; `None` once the stream
/// ends or breaks, or carries something that is no frame.
async fn next_frame<R: AsyncRead + Unpin>(
    rd: &mut R,
    buf: &mut BytesMut,
    session: &str,
) -> Option<Frame> {
    loop {
        match Frame::decode(buf) {
            Ok(Some(f)) => return Some(f),
            Ok(None) => match rd.read_buf(buf).await {
                Ok(0) | Err(_) => return None,
                Ok(_) => {}
            },
            Err(e) => {
                tracing::debug!(error = %e, session, "bad frame");
                return None;
            }
        }
    }
}

/// Copies one output of the process into frames on `channel`.
async fn pump<R: AsyncRead + Unpin>(mut r: R, ch: u8, tx: mpsc::Sender<Frame>) {
    let mut buf = BytesMut::with_capacity(CHUNK);
    loop {
        buf.reserve(CHUNK);
        match r.read_buf(&mut buf).await {
            Ok(0) | Err(_) => return,
            Ok(_) => {
                if tx.send(Frame::new(ch, buf.split().freeze())).await.is_err() {
                    return;
                }
            }
        }
    }
}

/// `kubectl attach`: the output of the container's main process, from now on, until it
/// exits, and with `-i` the client's input into its stdin. Only a container with `stdin:
/// true` has a stdin kept open to attach to (the others run with it closed, as in kubelet);
/// any number of sessions may feed it at once. With `stdinOnce: true` the first session's
/// input ending closes it. A `tty: true` container's terminal takes the sessions' resizes.
pub(super) async fn attach(
    State(k): State<Arc<Kubelet>>,
    UrlPath((ns, pod, container)): UrlPath<(String, String, String)>,
    RawQuery(query): RawQuery,
    req: Request,
) -> Response {
    let o = options(query.as_deref());
    let h = match running(&k, &ns, &pod, &container, o.uid.as_deref()) {
        Ok(h) => h,
        Err(r) => return r.into_response(),
    };
    // Input to send on, if the client sends any.
    let input = if o.stdin {
        match &h.stdin {
            Some(a) if a.mode().stdin && a.is_closed() => {
                return refuse(
                    StatusCode::BAD_REQUEST,
                    format!(
                        "the stdin of container {container:?} in pod {pod:?} is closed \
                         (stdinOnce: an earlier attach ended it, or the process closed it); \
                         attach without -i to follow its output"
                    ),
                );
            }
            Some(a) if a.mode().stdin => Some(a.clone()),
            _ => {
                return refuse(
                    StatusCode::BAD_REQUEST,
                    format!(
                        "cannot attach to the stdin of container {container:?} in pod {pod:?}: \
                         it was not started with stdin open (set `stdin: true` in its spec); \
                         attach without -i to follow its output, or use exec"
                    ),
                );
            }
        }
    } else {
        None
    };
    // Resizes, for a container with a terminal.
    let terminal = h.stdin.clone().filter(|a| a.mode().tty);
    if o.dry_run {
        return StatusCode::NO_CONTENT.into_response();
    }
    let Some(on_upgrade) = upgrade_of(req, CHANNEL_UPGRADE) else {
        return refuse(
            StatusCode::BAD_REQUEST,
            format!("attach needs an upgrade to {CHANNEL_UPGRADE}"),
        );
    };
    // The live output, subscribed before the client can send input (so nothing its input
    // causes is missed).
    let Some(output) = h.stdin.as_ref().map(Attach::subscribe) else {
        return refuse(
            StatusCode::INTERNAL_SERVER_ERROR,
            format!("container {container:?} in pod {pod:?} has no output to attach to"),
        );
    };
    let stderr_channel = if o.stderr && !o.tty {
        channel::STDERR
    } else {
        channel::STDOUT
    };
    let done = h.done.clone();
    let cancel = k.cancel.child_token();
    tokio::spawn(async move {
        let Ok(io) = on_upgrade.await else { return };
        let io = TokioIo::new(io);
        attach_session(io, input, terminal, output, done, stderr_channel, cancel).await;
    });
    switching(CHANNEL_UPGRADE)
}

/// Relays one attach session on its upgraded stream: the container's `output` to the client
/// until the container is `done`, the client's frames to its stdin (`input`, if the session
/// attached it) and `terminal` until the client leaves.
async fn attach_session<IO>(
    io: IO,
    input: Option<Attach>,
    terminal: Option<Attach>,
    mut output: broadcast::Receiver<kedge_runtime::stdio::Output>,
    mut done: tokio::sync::watch::Receiver<bool>,
    stderr_channel: u8,
    cancel: CancellationToken,
) where
    IO: AsyncRead + AsyncWrite + Send + 'static,
{
    let (rd, wr) = tokio::io::split(io);
    let (tx, rx) = mpsc::channel::<Frame>(16);
    let writer = tokio::spawn(write_frames(wr, rx));
    let follow = async {
        let mut ended = false;
        loop {
            let next = if ended {
                // The run is over: what is still queued, then the end.
                match output.try_recv() {
                    Ok(o) => Ok(o),
                    Err(broadcast::error::TryRecvError::Lagged(n)) => {
                        Err(broadcast::error::RecvError::Lagged(n))
                    }
                    Err(_) => return,
                }
            } else {
                tokio::select! {
                    biased;
                    r = output.recv() => r,
                    _ = done.wait_for(|d| *d) => {
                        ended = true;
                        continue;
                    }
                }
            };
            let out = match next {
                Ok(out) => out,
                Err(broadcast::error::RecvError::Lagged(n)) => {
                    tracing::debug!(chunks = n, "attach session fell behind; output lost");
                    continue;
                }
                Err(broadcast::error::RecvError::Closed) => return,
            };
            let ch = match out.kind {
                kedge_runtime::logs::StreamKind::Stdout => channel::STDOUT,
                kedge_runtime::logs::StreamKind::Stderr => stderr_channel,
            };
            if tx.send(Frame::new(ch, out.bytes)).await.is_err() {
                return;
            }
        }
    };
    let mut ended_input = input.is_none();
    // Its end means the client left.
    let client = attach_input(rd, input.as_ref(), terminal.as_ref(), &mut ended_input);
    let ended = tokio::select! {
        () = follow => true,
        () = client => false,
        () = cancel.cancelled() => false,
    };
    if let Some(a) = input
        .as_ref()
        .filter(|a| !ended_input && a.mode().stdin_once)
    {
        // The client left (or the container ended) without closing its stdin: for
        // stdinOnce that ends the stdin all the same, as in kubelet. Bounded: a process
        // that reads no stdin gets a moment to make room for the end behind its queued
        // input, then its stdin is closed past the queue.
        let queued = tokio::select! {
            queued = a.send(Input::End) => queued,
            () = tokio::time::sleep(DRAIN) => false,
            () = cancel.cancelled() => false,
        };
        if !queued {
            a.close();
        }
    }
    if ended {
        let body = serde_json::to_vec(&channel::exit_status(0)).unwrap_or_default();
        let _ = tx.send(Frame::new(channel::ERROR, body)).await;
    }
    drop(tx);
    let _ = writer.await;
}

/// Reads an attach session's frames until the client leaves: stdin into the container's
/// stdin (`input`, if the session attached it), resizes to its terminal. `ended` turns true
/// once the container's stdin was told this session's input ended. Returns as soon as the
/// client leaves, also while the container's stdin is full.
async fn attach_input<R: AsyncRead + Unpin>(
    mut rd: R,
    mut input: Option<&Attach>,
    terminal: Option<&Attach>,
    ended: &mut bool,
) {
    let mut buf = BytesMut::with_capacity(CHUNK);
    while let Some(frame) = next_frame(&mut rd, &mut buf, "attach").await {
        match frame.channel {
            channel::STDIN => {
                if let Some(a) = input {
                    match send_input(a, Input::Data(frame.payload), &mut rd, &mut buf).await {
                        Some(true) => {}
                        // A closed stdin drops the rest of the input (as a pipe's reader gone).
                        Some(false) => input = None,
                        None => return,
                    }
                }
            }
            channel::CLOSE => {
                if let Some(a) = input.take()
                    && send_input(a, Input::End, &mut rd, &mut buf).await.is_none()
                {
                    return;
                }
                *ended = true;
            }
            channel::RESIZE => {
                if let (Some(t), Some((width, height))) =
                    (terminal, channel::parse_resize(&frame.payload))
                    && send_input(t, Input::Resize { width, height }, &mut rd, &mut buf)
                        .await
                        .is_none()
                {
                    return;
                }
            }
            _ => {}
        }
    }
}

/// Queues `input` for the container's stdin, watching the client meanwhile (see
/// [`unless_client_leaves`]): `None`, the client left. Else whether the stdin took it
/// (`false`: closed).
async fn send_input<R: AsyncRead + Unpin>(
    to: &Attach,
    input: Input,
    rd: &mut R,
    buf: &mut BytesMut,
) -> Option<bool> {
    unless_client_leaves(to.send(input), rd, buf).await
}

/// Runs `op`, a write towards a process's stdin that waits as long as the process does not
/// read, while reading the client's stream on into `buf` (up to [`READ_AHEAD`]) so that its
/// end is seen: `None`, the client left first.
async fn unless_client_leaves<R, F>(op: F, rd: &mut R, buf: &mut BytesMut) -> Option<F::Output>
where
    R: AsyncRead + Unpin,
    F: Future,
{
    tokio::pin!(op);
    loop {
        let room = READ_AHEAD.saturating_sub(buf.len());
        buf.reserve(room.min(CHUNK));
        tokio::select! {
            // What the client sent before it left still goes in while the process takes it.
            biased;
            done = &mut op => return Some(done),
            n = rd.read_buf(buf), if room > 0 => match n {
                Ok(0) | Err(_) => return None,
                Ok(_) => {}
            },
        }
    }
}

/// One forwarded connection: connects to the port on the pod's own loopback (from inside its
/// network namespace, as kubelet's runtimes do; a pod on the node's network: the node's
/// loopback) and splices it with the tunnel stream, half-closes included.
pub(super) async fn port_forward(
    State(k): State<Arc<Kubelet>>,
    UrlPath((ns, pod)): UrlPath<(String, String)>,
    RawQuery(query): RawQuery,
    req: Request,
) -> Response {
    let mut port = None;
    let mut uid = None;
    for (key, v) in url::form_urlencoded::parse(query.as_deref().unwrap_or("").as_bytes()) {
        match key.as_ref() {
            "port" => port = v.parse::<u16>().ok().filter(|p| *p > 0),
            "uid" => uid = Some(v.into_owned()),
            _ => {}
        }
    }
    let Some(port) = port else {
        return refuse(StatusCode::BAD_REQUEST, "a valid port number is required");
    };
    let here = k
        .logs
        .lock()
        .unwrap_or_else(|p| p.into_inner())
        .iter()
        .find(|((n, p, _), h)| *n == ns && *p == pod && uid.as_deref().is_none_or(|u| u == h.uid))
        .map(|(_, h)| h.netns.clone());
    let Some(netns) = here else {
        return refuse(
            StatusCode::NOT_FOUND,
            format!("pod {ns}/{pod} has no running containers on this node"),
        );
    };
    let local = std::net::SocketAddr::from(([127, 0, 0, 1], port));
    let connect = async {
        match &netns {
            Some(ns) => kedge_net::netns::connect_in(ns, local, CONNECT_TIMEOUT).await,
            None => tokio::net::TcpStream::connect(local).await,
        }
    };
    let tcp = match tokio::time::timeout(CONNECT_TIMEOUT, connect).await {
        Ok(Ok(s)) => s,
        Ok(Err(e)) => {
            return refuse(
                StatusCode::INTERNAL_SERVER_ERROR,
                format!(
                    "error forwarding port {port} to pod {ns}/{pod}: failed to connect to \
                     localhost:{port}: {e}"
                ),
            );
        }
        Err(_) => {
            return refuse(
                StatusCode::INTERNAL_SERVER_ERROR,
                format!(
                    "error forwarding port {port} to pod {ns}/{pod}: connecting to \
                     localhost:{port} timed out"
                ),
            );
        }
    };
    let _ = tcp.set_nodelay(true);
    let Some(on_upgrade) = upgrade_of(req, TCP_UPGRADE) else {
        return refuse(
            StatusCode::BAD_REQUEST,
            format!("port-forward needs an upgrade to {TCP_UPGRADE}"),
        );
    };
    let cancel = k.cancel.child_token();
    tokio::spawn(async move {
        let Ok(io) = on_upgrade.await else { return };
        let mut io = TokioIo::new(io);
        let mut tcp = tcp;
        tokio::select! {
            res = tokio::io::copy_bidirectional_with_sizes(&mut io, &mut tcp, SPLICE_BUF, SPLICE_BUF) => {
                if let Err(e) = res {
                    tracing::debug!(port, error = %e, "port-forward connection ended");
                }
            }
            () = cancel.cancelled() => {}
        }
    });
    switching(TCP_UPGRADE)
}

#[cfg(test)]
mod tests {
    use super::*;
    use bytes::Bytes;

    #[test]
    fn exec_options_keep_every_command_word() {
        let o = options(Some(
            "command=sh&command=-c&command=echo+hi&stdin=true&tty=1&uid=u",
        ));
        assert_eq!(o.command, ["sh", "-c", "echo hi"]);
        assert!(o.stdin && o.tty && !o.dry_run);
        assert_eq!(o.uid.as_deref(), Some("u"));
    }

    #[tokio::test]
    async fn attach_frames_become_stdin_input_and_resizes() {
        use kedge_runtime::stdio::{Mode, channel};
        let (attach, stdin) = channel(Mode {
            stdin: true,
            stdin_once: true,
            tty: true,
        });
        // The runtime's end, as it would feed a pty.
        let feeding = tokio::spawn(async move {
            let (pty, mut r) = tokio::io::duplex(1024);
            let sizes = std::sync::Mutex::new(Vec::new());
            stdin
                .feed(pty, |w, h| sizes.lock().unwrap().push((w, h)))
                .await;
            let mut out = Vec::new();
            r.read_to_end(&mut out).await.unwrap();
            (out, sizes.into_inner().unwrap())
        });
        let mut wire = BytesMut::new();
        Frame::new(channel::RESIZE, &br#"{"Width":90,"Height":20}"#[..]).encode(&mut wire);
        Frame::new(channel::STDIN, &b"ls\n"[..]).encode(&mut wire);
        Frame::new(channel::CLOSE, vec![channel::STDIN]).encode(&mut wire);
        Frame::new(channel::STDIN, &b"ignored"[..]).encode(&mut wire);
        let mut ended = false;
        attach_input(&wire[..], Some(&attach), Some(&attach), &mut ended).await;
        assert!(ended);
        let (out, sizes) = tokio::time::timeout(Duration::from_secs(10), feeding)
            .await
            .expect("the stdin closed")
            .unwrap();
        // stdinOnce with a tty: the end is the terminal's ^D, and nothing after it.
        assert_eq!(out, b"ls\n\x04");
        assert_eq!(sizes, [(90, 20)]);
    }

    /// Regression: a session waiting on a full stdin queue (the process reads nothing) did
    /// not see its client leave until the process read or ended.
    #[tokio::test]
    async fn attach_input_sees_its_client_leave_while_the_stdin_is_full() {
        use kedge_runtime::stdio::{Mode, channel};
        let (attach, _unread) = channel(Mode {
            stdin: true,
            stdin_once: false,
            tty: false,
        });
        // More input than the queue holds, then the client's end.
        let mut wire = BytesMut::new();
        for _ in 0..40 {
            Frame::new(channel::STDIN, &b"input\n"[..]).encode(&mut wire);
        }
        let mut ended = false;
        tokio::time::timeout(
            Duration::from_secs(10),
            attach_input(&wire[..], Some(&attach), None, &mut ended),
        )
        .await
        .expect("the session saw its client leave");
        assert!(!ended, "the client left without ending its input");
        assert!(
            !attach.is_closed(),
            "without stdinOnce the stdin stays open"
        );
    }

    /// Regression: the same with `stdinOnce`: the whole session ends, and the stdin it left
    /// full is closed (the process reads EOF) rather than left open for good.
    #[tokio::test(start_paused = true)]
    async fn attach_session_closes_a_full_stdin_once_when_its_client_leaves() {
        use kedge_runtime::stdio::{Mode, channel};
        let (attach, stdin) = channel(Mode {
            stdin: true,
            stdin_once: true,
            tty: false,
        });
        // A process that never reads its stdin: its pipe holds 64 bytes.
        let (pipe, _unread) = tokio::io::duplex(64);
        let feeding = tokio::spawn(stdin.feed(pipe, |_, _| {}));
        let (_running, done) = tokio::sync::watch::channel(false);
        let (mut client, agent) = tokio::io::duplex(64 * 1024);
        let session = tokio::spawn(attach_session(
            agent,
            Some(attach.clone()),
            None,
            attach.subscribe(),
            done,
            channel::STDERR,
            CancellationToken::new(),
        ));
        let mut wire = BytesMut::new();
        for _ in 0..40 {
            Frame::new(channel::STDIN, &[b'x'; 100][..]).encode(&mut wire);
        }
        client.write_all(&wire).await.unwrap();
        tokio::time::sleep(Duration::from_millis(100)).await;
        assert!(!session.is_finished() && !attach.is_closed());

        drop(client);
        tokio::time::timeout(Duration::from_secs(10), session)
            .await
            .expect("the session saw its client leave")
            .unwrap();
        tokio::time::timeout(Duration::from_secs(10), feeding)
            .await
            .expect("the stdin closed")
            .unwrap();
        assert!(attach.is_closed());
    }

    #[tokio::test]
    async fn frames_written_in_order_then_closed() {
        let (a, mut b) = tokio::io::duplex(1024);
        let (tx, rx) = mpsc::channel(4);
        let w = tokio::spawn(write_frames(a, rx));
        tx.send(Frame::new(channel::STDOUT, Bytes::from_static(b"hi")))
            .await
            .unwrap();
        tx.send(Frame::new(channel::ERROR, Bytes::from_static(b"{}")))
            .await
            .unwrap();
        drop(tx);
        w.await.unwrap();
        let mut all = Vec::new();
        b.read_to_end(&mut all).await.unwrap();
        let mut buf = BytesMut::from(&all[..]);
        assert_eq!(
            Frame::decode(&mut buf).unwrap().unwrap(),
            Frame::new(channel::STDOUT, Bytes::from_static(b"hi"))
        );
        assert_eq!(
            Frame::decode(&mut buf).unwrap().unwrap().channel,
            channel::ERROR
        );
    }
}
