//! Container log files in the CRI format, and reading them back for `kubectl logs`.
//!
//! The on-disk format is the one kubelet and containerd use, so existing tooling (and anyone who
//! has read a file under `/var/log/pods`) understands it: one record per line,
//!
//! ```text
//! 2024-05-01T10:00:00.123456789Z stdout F hello world
//! ```
//!
//! where the tag is `F` for a full line and `P` for a partial one (a line longer than
//! [`MAX_RECORD`] is split, and text left without a newline when the workload ends is flushed as
//! `P`). Timestamps use a fixed nine-digit fraction so records sort as text and parse as RFC 3339.
//!
//! Rotation follows kubelet's `containerLogMaxSize` / `containerLogMaxFiles`: when a record
//! would take the current file past the size, the file is renamed to
//! `<name>.<YYYYMMDD-HHMMSS.nnnnnnnnn>` and a fresh one started, and rotated files beyond
//! `max_files - 1` are deleted oldest first. Unlike kubelet the rotated files are not gzipped.
//! The writer counts the bytes it writes, so checking the size costs no `stat`. A crash at any
//! point leaves only complete, readable files: the rename is atomic, and a missing current file
//! is created by the next open.

use std::collections::VecDeque;
use std::io::{self, Write as _};
use std::path::{Path, PathBuf};
use std::pin::Pin;
use std::sync::{Arc, Mutex, MutexGuard};
use std::task::{Context, Poll};
use std::time::Duration;

use bytes::Bytes;
use chrono::{DateTime, SecondsFormat, Utc};
use futures_util::Stream;
use tokio::io::{AsyncBufReadExt as _, AsyncWrite, BufReader};
use tokio::sync::watch;
use wasmtime_wasi::cli::{IsTerminal, StdoutStream};
use wasmtime_wasi::p2::{OutputStream, Pollable, StreamError, StreamResult};

/// Longest text kept in one record; longer lines become several `P` records. Kubelet uses the
/// same bound, and it caps how much a guest can make the host buffer for a line without `\n`.
pub const MAX_RECORD: usize = 16 * 1024;

/// How much a guest may hand over in one WASI write. The bytes are turned into records at once,
/// so this only bounds a single host-side allocation.
const WRITE_PERMIT: usize = 64 * 1024;

/// How often a following reader looks for new records; kubelet polls at a similar pace.
const FOLLOW_POLL: Duration = Duration::from_millis(100);

/// Output chunks are batched up to about this size so `kubectl logs` of a large file is not one
/// HTTP chunk per line.
const READ_BATCH: usize = 32 * 1024;

/// Source of record timestamps. Injected so tests (and replays) control time.
pub type Clock = Arc<dyn Fn() -> DateTime<Utc> + Send + Sync>;

/// Which guest stream a record came from.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum StreamKind {
    Stdout,
    Stderr,
}

impl StreamKind {
    fn as_str(self) -> &'static str {
        match self {
            StreamKind::Stdout => "stdout",
            StreamKind::Stderr => "stderr",
        }
    }
}

/// Appends records to one container's log file.
///
/// Cheap to clone; all clones share the file handle, and each record is written with a single
/// `write` under a lock so stdout and stderr records never interleave mid-line.
#[derive(Clone)]
pub struct LogWriter {
    shared: Arc<WriterShared>,
    /// Where [`LogStream`]s also send their raw output, for `kubectl attach`.
    tee: Option<tokio::sync::broadcast::Sender<Output>>,
}

/// Raw output of a container as its process wrote it (no line buffering), for those attached.
#[derive(Clone, Debug)]
pub struct Output {
    pub kind: StreamKind,
    pub bytes: bytes::Bytes,
}

struct WriterShared {
    file: Mutex<Current>,
    clock: Clock,
    path: PathBuf,
    rotation: LogRotation,
}

/// The file being appended to and how many bytes it holds.
struct Current {
    file: std::fs::File,
    size: u64,
}

/// When a container's log file is rotated (kubelet's `containerLogMaxSize` and
/// `containerLogMaxFiles`).
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct LogRotation {
    /// A file is rotated before a record would take it past this many bytes (a single record
    /// larger than this still gets a file of its own).
    pub max_bytes: u64,
    /// Files kept per container run, the current one included; at least 2.
    pub max_files: usize,
}

impl Default for LogRotation {
    /// Kubelet's defaults: 10Mi, 5 files.
    fn default() -> Self {
        Self {
            max_bytes: 10 * 1024 * 1024,
            max_files: 5,
        }
    }
}

/// Suffix format of rotated files: kubelet's `20060102-150405`, plus nanoseconds so two
/// rotations within a second (tiny limits, a very chatty container) get distinct names.
const ROTATED_SUFFIX: &str = "%Y%m%d-%H%M%S%.9f";

impl LogWriter {
    /// Opens (creating if needed) `path` for appending, stamping records with the system clock
    /// and rotating at kubelet's default limits.
    /// Appending rather than truncating keeps the previous run's lines visible after a restart,
    /// as `kubectl logs` users expect within one container instance's file.
    pub fn open(path: &Path) -> io::Result<Self> {
        Self::open_with(path, LogRotation::default(), Arc::new(Utc::now))
    }

    /// Like [`LogWriter::open`] with an explicit clock.
    pub fn open_with_clock(path: &Path, clock: Clock) -> io::Result<Self> {
        Self::open_with(path, LogRotation::default(), clock)
    }

    /// Like [`LogWriter::open`] with explicit rotation limits and clock.
    pub fn open_with(path: &Path, rotation: LogRotation, clock: Clock) -> io::Result<Self> {
        if let Some(parent) = path.parent().filter(|p| !p.as_os_str().is_empty()) {
            std::fs::create_dir_all(parent)?;
        }
        let file = open_append(path)?;
        // The one `stat`: from here on the size is counted.
        let size = file.metadata()?.len();
        Ok(Self {
            shared: Arc::new(WriterShared {
                file: Mutex::new(Current { file, size }),
                clock,
                path: path.to_owned(),
                rotation,
            }),
            tee: None,
        })
    }

    /// Also sends everything the streams get, as it comes, to `tee` (the log itself holds an
    /// unfinished line back until its newline, which a terminal's user cannot wait for).
    pub fn with_tee(mut self, tee: tokio::sync::broadcast::Sender<Output>) -> Self {
        self.tee = Some(tee);
        self
    }

    /// Writes one record; `text` must not contain the line's `\n`.
    pub fn write_record(&self, stream: StreamKind, partial: bool, text: &[u8]) -> io::Result<()> {
        let now = (self.shared.clock)();
        let ts = format_ts(now);
        let tag = if partial { "P" } else { "F" };
        let mut line = Vec::with_capacity(ts.len() + text.len() + 12);
        line.extend_from_slice(ts.as_bytes());
        line.push(b' ');
        line.extend_from_slice(stream.as_str().as_bytes());
        line.push(b' ');
        line.extend_from_slice(tag.as_bytes());
        line.push(b' ');
        line.extend_from_slice(text);
        line.push(b'\n');
        let mut current = lock(&self.shared.file)?;
        let len = line.len() as u64;
        if current.size > 0 && current.size + len > self.shared.rotation.max_bytes {
            self.rotate(&mut current, now)?;
        }
        current.file.write_all(&line)?;
        current.size += len;
        Ok(())
    }

    /// Renames the current file aside, starts a fresh one and drops rotated files beyond
    /// `max_files - 1` (before the rename). Runs under the file lock, so no record lands in a
    /// file once renamed (a following reader relies on that to switch without losing lines).
    fn rotate(&self, current: &mut Current, mut ts: DateTime<Utc>) -> io::Result<()> {
        let shared = &self.shared;
        let rotated = loop {
            let mut name = shared.path.clone().into_os_string();
            name.push(".");
            name.push(ts.format(ROTATED_SUFFIX).to_string());
            let candidate = PathBuf::from(name);
            if !candidate.exists() {
                break candidate;
            }
            ts += chrono::Duration::nanoseconds(1);
        };
        // Make room first, so the directory never holds more than `max_files` files, not
        // even for the moment between the rename and the deletion.
        let keep = shared.rotation.max_files.saturating_sub(1);
        remove_old_rotations(&shared.path, keep.saturating_sub(1))?;
        std::fs::rename(&shared.path, &rotated)?;
        current.file = open_append(&shared.path)?;
        current.size = 0;
        if keep == 0 {
            // `max_files` 1 keeps no rotated file, not even the one just made.
            std::fs::remove_file(&rotated)?;
        }
        Ok(())
    }

    /// A line-buffering sink for one guest stream, to hand to WASI as stdout or stderr.
    pub fn stream(&self, kind: StreamKind) -> LogStream {
        LogStream {
            writer: self.clone(),
            kind,
            pending: Arc::new(Mutex::new(Vec::new())),
        }
    }
}

fn open_append(path: &Path) -> io::Result<std::fs::File> {
    std::fs::OpenOptions::new()
        .create(true)
        .append(true)
        .open(path)
}

/// The rotated files of the log at `path`, oldest first (their suffixes sort as text).
pub fn rotated_files(path: &Path) -> io::Result<Vec<PathBuf>> {
    let (Some(dir), Some(name)) = (path.parent(), path.file_name()) else {
        return Ok(Vec::new());
    };
    let mut prefix = name.to_os_string();
    prefix.push(".");
    let prefix = prefix.as_encoded_bytes();
    let dir = if dir.as_os_str().is_empty() {
        Path::new(".")
    } else {
        dir
    };
    let mut out: Vec<PathBuf> = std::fs::read_dir(dir)?
        .filter_map(|e| e.ok())
        .filter(|e| {
            let n = e.file_name();
            let n = n.as_encoded_bytes();
            n.len() > prefix.len() && n.starts_with(prefix)
        })
        .map(|e| e.path())
        .collect();
    out.sort();
    Ok(out)
}

/// Deletes the oldest rotated files of `path` until at most `keep` remain.
fn remove_old_rotations(path: &Path, keep: usize) -> io::Result<()> {
    let files = rotated_files(path)?;
    let excess = files.len().saturating_sub(keep);
    for f in &files[..excess] {
        match std::fs::remove_file(f) {
            Ok(()) => {}
            Err(e) if e.kind() == io::ErrorKind::NotFound => {}
            Err(e) => return Err(e),
        }
    }
    Ok(())
}

/// Fixed-width RFC 3339 with nanoseconds (kubelet's `RFC3339NanoFixed`).
fn format_ts(ts: DateTime<Utc>) -> String {
    ts.to_rfc3339_opts(SecondsFormat::Nanos, true)
}

fn lock<T>(m: &Mutex<T>) -> io::Result<MutexGuard<'_, T>> {
    m.lock()
        .map_err(|_| io::Error::other("log writer lock poisoned"))
}

/// One guest stream (stdout or stderr) feeding a [`LogWriter`].
///
/// WASI asks for a fresh stream object each time a guest opens stdout (Rust's std does so for
/// every print), so the unfinished-line buffer lives here, shared by all of them; otherwise a
/// line printed in two calls would become two records.
#[derive(Clone)]
pub struct LogStream {
    writer: LogWriter,
    kind: StreamKind,
    pending: Arc<Mutex<Vec<u8>>>,
}

impl LogStream {
    /// Buffers `bytes` and writes every completed line as an `F` record; a line that reaches
    /// [`MAX_RECORD`] without a newline is written as `P` records.
    pub fn write(&self, mut bytes: &[u8]) -> io::Result<()> {
        if let Some(tee) = self.writer.tee.as_ref().filter(|t| t.receiver_count() > 0) {
            // No one attached is no error; one too slow loses output (see the receiver).
            let _ = tee.send(Output {
                kind: self.kind,
                bytes: bytes::Bytes::copy_from_slice(bytes),
            });
        }
        let mut pending = lock(&self.pending)?;
        while !bytes.is_empty() {
            let room = MAX_RECORD - pending.len();
            let window = &bytes[..bytes.len().min(room)];
            if let Some(nl) = window.iter().position(|&b| b == b'\n') {
                pending.extend_from_slice(&window[..nl]);
                self.writer.write_record(self.kind, false, &pending)?;
                pending.clear();
                bytes = &bytes[nl + 1..];
            } else {
                pending.extend_from_slice(window);
                bytes = &bytes[window.len()..];
                if pending.len() == MAX_RECORD {
                    self.writer.write_record(self.kind, true, &pending)?;
                    pending.clear();
                }
            }
        }
        Ok(())
    }

    /// Writes any unfinished line as a `P` record. Called when the workload ends so its last
    /// words are not lost; a guest `flush` does not call this, since a newline may still follow.
    pub fn flush_partial(&self) -> io::Result<()> {
        let mut pending = lock(&self.pending)?;
        if !pending.is_empty() {
            self.writer.write_record(self.kind, true, &pending)?;
            pending.clear();
        }
        Ok(())
    }
}

impl IsTerminal for LogStream {
    fn is_terminal(&self) -> bool {
        false
    }
}

impl StdoutStream for LogStream {
    fn p2_stream(&self) -> Box<dyn OutputStream> {
        Box::new(GuestOutput(self.clone()))
    }

    fn async_stream(&self) -> Box<dyn AsyncWrite + Send + Sync> {
        Box::new(GuestOutput(self.clone()))
    }
}

/// The object WASI writes through. Writes go to the local file synchronously (small appends,
/// like wasmtime-wasi's own stdio streams), so the stream is always ready and never buffers
/// beyond the current line.
struct GuestOutput(LogStream);

fn stream_error(e: io::Error) -> StreamError {
    StreamError::LastOperationFailed(e.into())
}

impl OutputStream for GuestOutput {
    fn write(&mut self, bytes: Bytes) -> StreamResult<()> {
        self.0.write(&bytes).map_err(stream_error)
    }

    fn flush(&mut self) -> StreamResult<()> {
        Ok(())
    }

    fn check_write(&mut self) -> StreamResult<usize> {
        Ok(WRITE_PERMIT)
    }
}

#[async_trait::async_trait]
impl Pollable for GuestOutput {
    async fn ready(&mut self) {}
}

impl AsyncWrite for GuestOutput {
    fn poll_write(
        self: Pin<&mut Self>,
        _cx: &mut Context<'_>,
        buf: &[u8],
    ) -> Poll<io::Result<usize>> {
        Poll::Ready(self.0.write(buf).map(|()| buf.len()))
    }

    fn poll_flush(self: Pin<&mut Self>, _cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        Poll::Ready(Ok(()))
    }

    fn poll_shutdown(self: Pin<&mut Self>, _cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        Poll::Ready(Ok(()))
    }
}

/// What `kubectl logs` asked for (the `PodLogOptions` the agent supports).
#[derive(Clone, Debug, Default)]
pub struct LogOptions {
    pub follow: bool,
    pub tail_lines: Option<usize>,
    pub since: Option<DateTime<Utc>>,
    pub timestamps: bool,
    pub limit_bytes: Option<u64>,
    /// Each record as a frame telling where it ends in its file (see [`Frame`]): what the
    /// server reads to resume a followed stream after the node's tunnel broke.
    pub framed: bool,
    /// Start right after this point of a file of the log (a frame's cursor), instead of
    /// where `tail_lines`/`since` say.
    pub resume: Option<LogCursor>,
}

pub use kedge_core::logframe::{Frame, LogCursor};

/// Streams the log at `path` the way kubelet serves it: the text of each record (a `P` record
/// without its line break), prefixed by `"<timestamp> "` when `timestamps` is set.
///
/// Only the current file is read, not its rotated predecessors, as kubelet does.
/// `tail_lines` counts records, like kubelet. With `follow` the file is polled for new records
/// until `done` turns true (the container ended), then read once more to the end; without a
/// `done` receiver, following goes on until the consumer drops the stream. When the file is
/// rotated while followed, the rest of the old file is read and then the new one from its
/// start. Malformed lines are
/// skipped rather than ending the stream, since one torn write should not hide the rest.
pub fn read(
    path: PathBuf,
    opts: LogOptions,
    done: Option<watch::Receiver<bool>>,
) -> impl Stream<Item = io::Result<Bytes>> + Send + 'static {
    let state = Reader {
        path,
        remaining: opts.limit_bytes,
        opts,
        done,
        phase: Phase::Start,
        file: None,
        file_id: None,
        switch_pending: false,
        carry: Vec::new(),
        pos: 0,
        draining: false,
        end_sent: false,
    };
    state.into_stream()
}

enum Phase {
    Start,
    /// Records selected by `tail_lines`, still to be sent.
    Tail(VecDeque<Vec<u8>>),
    Streaming,
    Finished,
}

struct Reader {
    path: PathBuf,
    opts: LogOptions,
    done: Option<watch::Receiver<bool>>,
    phase: Phase,
    file: Option<BufReader<tokio::fs::File>>,
    /// Device and inode of `file`, to notice that `path` was rotated to another file.
    file_id: Option<(u64, u64)>,
    /// `path` is a new file: once the open one is read to its end, switch to it.
    switch_pending: bool,
    /// Bytes of a record whose newline has not been written yet.
    carry: Vec<u8>,
    /// Bytes of the open file read so far (`carry` included).
    pos: u64,
    remaining: Option<u64>,
    /// The container ended: one last pass to the end of the file, then stop.
    draining: bool,
    /// [`Frame::END`] went out (framed streams).
    end_sent: bool,
}

impl Reader {
    fn into_stream(self) -> impl Stream<Item = io::Result<Bytes>> + Send + 'static {
        futures_util::stream::unfold(self, |mut reader| async move {
            let item = reader.next_chunk().await?;
            Some((item, reader))
        })
    }

    async fn next_chunk(&mut self) -> Option<io::Result<Bytes>> {
        loop {
            match &mut self.phase {
                Phase::Finished if self.opts.framed && !self.end_sent => {
                    self.end_sent = true;
                    return Some(Ok(Bytes::from_static(Frame::END)));
                }
                Phase::Finished => return None,
                Phase::Start => {
                    if let Err(e) = self.start().await {
                        self.phase = Phase::Finished;
                        return Some(Err(e));
                    }
                }
                Phase::Tail(queue) => {
                    if queue.is_empty() {
                        self.phase = Phase::Streaming;
                        continue;
                    }
                    let mut out = Vec::new();
                    while out.len() < READ_BATCH {
                        match queue.pop_front() {
                            Some(rec) => out.extend_from_slice(&rec),
                            None => break,
                        }
                    }
                    if let Some(b) = self.limit(out) {
                        return Some(Ok(b));
                    }
                }
                Phase::Streaming => {
                    let (out, at_eof) = match self.read_batch().await {
                        Ok(r) => r,
                        Err(e) => {
                            self.phase = Phase::Finished;
                            return Some(Err(e));
                        }
                    };
                    if !out.is_empty() {
                        if let Some(b) = self.limit(out) {
                            return Some(Ok(b));
                        }
                        continue;
                    }
                    if !at_eof {
                        continue;
                    }
                    if !self.opts.follow {
                        self.phase = Phase::Finished;
                        continue;
                    }
                    match self.follow_rotation().await {
                        Ok(true) => continue,
                        Ok(false) => {}
                        Err(e) => {
                            self.phase = Phase::Finished;
                            return Some(Err(e));
                        }
                    }
                    if self.draining {
                        self.phase = Phase::Finished;
                        continue;
                    }
                    self.wait_for_more().await;
                }
            }
        }
    }

    /// At the end of the open file: `true` when there is more to read because `path` was
    /// rotated. The first time a rotation is seen the old file is read to its end once more
    /// (records may have landed between our last read and the rename); the next time the file
    /// that came after it is opened: the next rotated file when the writer rotated more than
    /// once since, else `path`. A missing `path` is a rotation in progress: nothing to do yet.
    async fn follow_rotation(&mut self) -> io::Result<bool> {
        if self.switch_pending {
            self.switch_pending = false;
            match self.next_rotated().await {
                Some(next) => self.open_file(&next).await?,
                None => self.open_current().await?,
            }
            return Ok(true);
        }
        let meta = match tokio::fs::metadata(&self.path).await {
            Ok(m) => m,
            Err(e) if e.kind() == io::ErrorKind::NotFound => return Ok(false),
            Err(e) => return Err(e),
        };
        if Some(file_id(&meta)) == self.file_id {
            return Ok(false);
        }
        self.switch_pending = true;
        Ok(true)
    }

    /// The rotated file written after the open one, if it is still there. When the open one
    /// was deleted already, every rotated file left is newer (they go oldest first), so the
    /// oldest of them is next. Lines of files deleted unread are lost, as with kubelet.
    async fn next_rotated(&self) -> Option<PathBuf> {
        let (path, ours) = (self.path.clone(), self.file_id);
        tokio::task::spawn_blocking(move || {
            let files = rotated_files(&path).ok()?;
            let at = files
                .iter()
                .position(|f| std::fs::metadata(f).is_ok_and(|m| Some(file_id(&m)) == ours));
            match at {
                Some(i) => files.get(i + 1).cloned(),
                None => files.first().cloned(),
            }
        })
        .await
        .ok()?
    }

    async fn open_current(&mut self) -> io::Result<()> {
        let path = self.path.clone();
        self.open_file(&path).await
    }

    /// Opens `path` (the current file, or a rotated one being caught up on). A rotated file
    /// deleted before we get to it is skipped for the current one.
    async fn open_file(&mut self, path: &Path) -> io::Result<()> {
        let file = match tokio::fs::File::open(path).await {
            Err(e) if e.kind() == io::ErrorKind::NotFound && path != self.path => {
                tokio::fs::File::open(&self.path).await?
            }
            r => r?,
        };
        self.file_id = Some(file_id(&file.metadata().await?));
        self.file = Some(BufReader::new(file));
        self.pos = 0;
        // The writer writes whole records, so a fragment left here was torn; drop it.
        self.carry.clear();
        Ok(())
    }

    /// Opens the file `cursor` is in (the current one or a rotated one) just past it. When
    /// that file is gone (rotated out and deleted), the oldest file left is read from its
    /// start: its records are the next ones still there.
    async fn open_at(&mut self, cursor: LogCursor) -> io::Result<()> {
        use tokio::io::AsyncSeekExt as _;
        let path = self.path.clone();
        let found = tokio::task::spawn_blocking(move || {
            let mut files = rotated_files(&path).unwrap_or_default();
            files.push(path);
            let at = files.iter().position(|f| {
                std::fs::metadata(f).is_ok_and(|m| file_id(&m) == (cursor.dev, cursor.ino))
            });
            match at {
                Some(i) => (files[i].clone(), true),
                None => (files[0].clone(), false),
            }
        })
        .await
        .map_err(io::Error::other)?;
        self.open_file(&found.0).await?;
        if found.1 && self.file_id == Some((cursor.dev, cursor.ino)) {
            let file = self.file.as_mut().expect("just opened");
            file.seek(io::SeekFrom::Start(cursor.offset)).await?;
            self.pos = cursor.offset;
        }
        Ok(())
    }

    /// Sleeps one poll interval, waking early when the container ends.
    async fn wait_for_more(&mut self) {
        match &mut self.done {
            Some(done) => {
                if *done.borrow_and_update() {
                    self.draining = true;
                    return;
                }
                tokio::select! {
                    changed = done.changed() => {
                        // A dropped sender means nobody will report the end: treat it as ended.
                        if changed.is_err() || *done.borrow() {
                            self.draining = true;
                        }
                    }
                    () = tokio::time::sleep(FOLLOW_POLL) => {}
                }
            }
            None => tokio::time::sleep(FOLLOW_POLL).await,
        }
    }

    /// Opens the file and finds where to start (`tail_lines`).
    async fn start(&mut self) -> io::Result<()> {
        if let Some(cursor) = self.opts.resume {
            self.open_at(cursor).await?;
            self.phase = Phase::Streaming;
            return Ok(());
        }
        self.open_current().await?;
        self.phase = match self.opts.tail_lines {
            Some(n) => Phase::Tail(self.collect_tail(n).await?),
            None => Phase::Streaming,
        };
        Ok(())
    }

    /// Reads the whole file, keeping the last `n` selected records.
    async fn collect_tail(&mut self, n: usize) -> io::Result<VecDeque<Vec<u8>>> {
        let mut queue = VecDeque::with_capacity(n.min(1024));
        while let Some(line) = self.next_line().await? {
            if let Some(rec) = self.render(&line) {
                if n == 0 {
                    continue;
                }
                if queue.len() == n {
                    queue.pop_front();
                }
                queue.push_back(rec);
            }
        }
        Ok(queue)
    }

    /// Renders records until a batch is full or the end of the file; the flag says which.
    async fn read_batch(&mut self) -> io::Result<(Vec<u8>, bool)> {
        let mut out = Vec::new();
        while out.len() < READ_BATCH {
            match self.next_line().await? {
                Some(line) => {
                    if let Some(rec) = self.render(&line) {
                        out.extend_from_slice(&rec);
                    }
                }
                None => return Ok((out, true)),
            }
        }
        Ok((out, false))
    }

    /// The next complete line (without `\n`), or `None` at the current end of the file. A
    /// trailing fragment is kept until its newline arrives.
    async fn next_line(&mut self) -> io::Result<Option<Vec<u8>>> {
        let Some(file) = self.file.as_mut() else {
            return Ok(None);
        };
        let n = file.read_until(b'\n', &mut self.carry).await?;
        self.pos += n as u64;
        if n == 0 || self.carry.last() != Some(&b'\n') {
            return Ok(None);
        }
        let mut line = std::mem::take(&mut self.carry);
        line.pop();
        Ok(Some(line))
    }

    /// Turns a stored record into output bytes, or `None` when it is malformed or filtered out
    /// by `since`.
    fn render(&self, line: &[u8]) -> Option<Vec<u8>> {
        let rec = parse_record(line)?;
        if let Some(since) = self.opts.since
            && rec.time < since
        {
            return None;
        }
        let mut out = Vec::with_capacity(rec.text.len() + 32);
        if self.opts.timestamps {
            out.extend_from_slice(format_ts(rec.time).as_bytes());
            out.push(b' ');
        }
        out.extend_from_slice(rec.text);
        if !rec.partial {
            out.push(b'\n');
        }
        if self.opts.framed {
            // Where this record ends: right after the line just read.
            let (dev, ino) = self.file_id.unwrap_or_default();
            let cursor = LogCursor {
                dev,
                ino,
                offset: self.pos,
            };
            let mut framed = format!("{cursor} {}\n", out.len()).into_bytes();
            framed.extend_from_slice(&out);
            return Some(framed);
        }
        Some(out)
    }

    /// Applies `limit_bytes`, finishing the stream once it is used up.
    fn limit(&mut self, mut out: Vec<u8>) -> Option<Bytes> {
        if let Some(remaining) = self.remaining.as_mut() {
            let len = out.len() as u64;
            if len >= *remaining {
                out.truncate(*remaining as usize);
                *remaining = 0;
                self.phase = Phase::Finished;
            } else {
                *remaining -= len;
            }
        }
        (!out.is_empty()).then(|| Bytes::from(out))
    }
}

fn file_id(meta: &std::fs::Metadata) -> (u64, u64) {
    use std::os::unix::fs::MetadataExt as _;
    (meta.dev(), meta.ino())
}

/// One parsed CRI record.
#[derive(Debug, PartialEq, Eq)]
pub struct Record<'a> {
    pub time: DateTime<Utc>,
    pub stream: StreamKind,
    pub partial: bool,
    pub text: &'a [u8],
}

/// Parses one CRI log line (without its `\n`); `None` when it is not a valid record.
pub fn parse_record(line: &[u8]) -> Option<Record<'_>> {
    let mut parts = line.splitn(4, |&b| b == b' ');
    let ts = std::str::from_utf8(parts.next()?).ok()?;
    let time = DateTime::parse_from_rfc3339(ts).ok()?.with_timezone(&Utc);
    let stream = match parts.next()? {
        b"stdout" => StreamKind::Stdout,
        b"stderr" => StreamKind::Stderr,
        _ => return None,
    };
    let partial = match parts.next()? {
        b"F" => false,
        b"P" => true,
        _ => return None,
    };
    let text = parts.next().unwrap_or_default();
    Some(Record {
        time,
        stream,
        partial,
        text,
    })
}

#[cfg(test)]
mod tests {
    use super::*;
    use chrono::TimeZone as _;
    use futures_util::StreamExt as _;
    use std::sync::atomic::{AtomicI64, Ordering};

    /// A clock that advances one second per record, starting at a fixed instant.
    fn ticking_clock() -> Clock {
        let n = Arc::new(AtomicI64::new(0));
        Arc::new(move || {
            let i = n.fetch_add(1, Ordering::SeqCst);
            Utc.with_ymd_and_hms(2024, 5, 1, 10, 0, 0).unwrap() + chrono::Duration::seconds(i)
        })
    }

    fn at(secs: i64) -> DateTime<Utc> {
        Utc.with_ymd_and_hms(2024, 5, 1, 10, 0, 0).unwrap() + chrono::Duration::seconds(secs)
    }

    async fn collect(path: &Path, opts: LogOptions) -> String {
        let chunks: Vec<_> = read(path.to_owned(), opts, None).collect().await;
        let mut out = Vec::new();
        for c in chunks {
            out.extend_from_slice(&c.unwrap());
        }
        String::from_utf8(out).unwrap()
    }

    fn sample(dir: &Path) -> PathBuf {
        let path = dir.join("c/0.log");
        let w = LogWriter::open_with_clock(&path, ticking_clock()).unwrap();
        let out = w.stream(StreamKind::Stdout);
        let err = w.stream(StreamKind::Stderr);
        out.write(b"one\ntw").unwrap();
        out.write(b"o\n").unwrap();
        err.write(b"oops\n").unwrap();
        out.write(b"three\nunfinished").unwrap();
        out.flush_partial().unwrap();
        path
    }

    #[test]
    fn writes_cri_records() {
        let dir = tempfile::tempdir().unwrap();
        let path = sample(dir.path());
        let text = std::fs::read_to_string(&path).unwrap();
        assert_eq!(
            text,
            "2024-05-01T10:00:00.000000000Z stdout F one\n\
             2024-05-01T10:00:01.000000000Z stdout F two\n\
             2024-05-01T10:00:02.000000000Z stderr F oops\n\
             2024-05-01T10:00:03.000000000Z stdout F three\n\
             2024-05-01T10:00:04.000000000Z stdout P unfinished\n"
        );
    }

    #[test]
    fn splits_long_lines_into_partial_records() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("0.log");
        let w = LogWriter::open_with_clock(&path, ticking_clock()).unwrap();
        let s = w.stream(StreamKind::Stdout);
        let long = vec![b'x'; MAX_RECORD + 10];
        s.write(&long).unwrap();
        s.write(b"\n").unwrap();
        let text = std::fs::read(&path).unwrap();
        let lines: Vec<_> = text
            .split(|&b| b == b'\n')
            .filter(|l| !l.is_empty())
            .collect();
        assert_eq!(lines.len(), 2);
        let first = parse_record(lines[0]).unwrap();
        let second = parse_record(lines[1]).unwrap();
        assert!(first.partial && !second.partial);
        assert_eq!(first.text.len(), MAX_RECORD);
        assert_eq!(second.text.len(), 10);
    }

    #[tokio::test]
    async fn reads_text_tail_since_timestamps_and_limit() {
        let dir = tempfile::tempdir().unwrap();
        let path = sample(dir.path());
        let all = "one\ntwo\noops\nthree\nunfinished";
        assert_eq!(collect(&path, LogOptions::default()).await, all);
        let tail = LogOptions {
            tail_lines: Some(2),
            ..Default::default()
        };
        assert_eq!(collect(&path, tail).await, "three\nunfinished");
        let tail0 = LogOptions {
            tail_lines: Some(0),
            ..Default::default()
        };
        assert_eq!(collect(&path, tail0).await, "");
        let since = LogOptions {
            since: Some(at(2)),
            ..Default::default()
        };
        assert_eq!(collect(&path, since).await, "oops\nthree\nunfinished");
        let ts = LogOptions {
            timestamps: true,
            tail_lines: Some(1),
            since: Some(at(1)),
            ..Default::default()
        };
        assert_eq!(
            collect(&path, ts).await,
            "2024-05-01T10:00:04.000000000Z unfinished"
        );
        let limit = LogOptions {
            limit_bytes: Some(6),
            ..Default::default()
        };
        assert_eq!(collect(&path, limit).await, "one\ntw");
    }

    /// Reads `path` framed, returning each record's text with its cursor.
    async fn frames(path: &Path, opts: LogOptions) -> Vec<(LogCursor, String)> {
        let opts = LogOptions {
            framed: true,
            ..opts
        };
        let mut buf = bytes::BytesMut::new();
        for c in read(path.to_owned(), opts, None).collect::<Vec<_>>().await {
            buf.extend_from_slice(&c.unwrap());
        }
        let mut out = Frame::split(&mut buf).unwrap();
        assert!(buf.is_empty(), "a torn frame is left: {buf:?}");
        let (end, rec) = out.pop().expect("frames");
        assert!(Frame::is_end(&end, &rec), "a stream that ended says so");
        out.into_iter()
            .map(|(c, b)| (c, String::from_utf8(b.to_vec()).unwrap()))
            .collect()
    }

    #[tokio::test]
    async fn framed_records_carry_cursors_a_reader_resumes_from_even_after_rotation() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("0.log");
        let w = LogWriter::open_with(&path, tiny(3 * REC, 3), ticking_clock()).unwrap();
        let s = w.stream(StreamKind::Stdout);
        for i in 0..2 {
            s.write(format!("l{i}\n").as_bytes()).unwrap();
        }
        let first = frames(&path, LogOptions::default()).await;
        let texts: Vec<&str> = first.iter().map(|(_, t)| t.as_str()).collect();
        assert_eq!(texts, ["l0\n", "l1\n"]);
        // The cursor after l0 gives l1 onwards, as rendered (timestamps too when asked).
        let after_l0 = LogOptions {
            resume: Some(first[0].0),
            timestamps: true,
            tail_lines: Some(0),
            ..Default::default()
        };
        let rest = frames(&path, after_l0).await;
        assert_eq!(rest.len(), 1);
        assert!(rest[0].1.ends_with(" l1\n"), "{rest:?}");
        // More lines rotate the file the cursor points into: resuming still goes on right
        // after l1, through the rotated file and into the current one.
        for i in 2..6 {
            s.write(format!("l{i}\n").as_bytes()).unwrap();
        }
        assert!(!rotated_files(&path).unwrap().is_empty());
        let opts = LogOptions {
            resume: Some(first[1].0),
            framed: true,
            follow: true,
            ..Default::default()
        };
        let mut stream = Box::pin(read(path.clone(), opts, None));
        let mut buf = bytes::BytesMut::new();
        let mut texts = Vec::new();
        while texts.len() < 4 {
            let chunk = tokio::time::timeout(Duration::from_secs(5), stream.next())
                .await
                .expect("the rest arrives")
                .unwrap()
                .unwrap();
            buf.extend_from_slice(&chunk);
            texts.extend(
                Frame::split(&mut buf)
                    .unwrap()
                    .into_iter()
                    .map(|(_, b)| String::from_utf8(b.to_vec()).unwrap()),
            );
        }
        assert_eq!(texts, ["l2\n", "l3\n", "l4\n", "l5\n"]);
        // A cursor into a file that is gone reads on from the oldest file left.
        let gone = LogCursor {
            dev: first[0].0.dev,
            ino: u64::MAX,
            offset: 7,
        };
        let from_gone = frames(
            &path,
            LogOptions {
                resume: Some(gone),
                ..Default::default()
            },
        )
        .await;
        assert!(!from_gone.is_empty());
    }

    #[tokio::test]
    async fn skips_malformed_lines() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("0.log");
        std::fs::write(
            &path,
            "garbage\n2024-05-01T10:00:00Z stdout F ok\n2024-05-01T10:00:00Z other F no\n",
        )
        .unwrap();
        assert_eq!(collect(&path, LogOptions::default()).await, "ok\n");
    }

    #[tokio::test]
    async fn missing_file_is_an_error() {
        let dir = tempfile::tempdir().unwrap();
        let mut s = Box::pin(read(
            dir.path().join("nope.log"),
            LogOptions::default(),
            None,
        ));
        let first = s.next().await.unwrap();
        assert_eq!(first.unwrap_err().kind(), io::ErrorKind::NotFound);
        assert!(s.next().await.is_none());
    }

    #[tokio::test]
    async fn follow_streams_new_records_until_done() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("0.log");
        let w = LogWriter::open_with_clock(&path, ticking_clock()).unwrap();
        let s = w.stream(StreamKind::Stdout);
        s.write(b"before\n").unwrap();
        let (done_tx, done_rx) = watch::channel(false);
        let opts = LogOptions {
            follow: true,
            ..Default::default()
        };
        let mut stream = Box::pin(read(path.clone(), opts, Some(done_rx)));
        assert_eq!(&stream.next().await.unwrap().unwrap()[..], b"before\n");
        s.write(b"during\n").unwrap();
        let next = tokio::time::timeout(Duration::from_secs(2), stream.next())
            .await
            .expect("follow delivers new lines")
            .unwrap()
            .unwrap();
        assert_eq!(&next[..], b"during\n");
        // Written just before the container ends: must still arrive in the final drain.
        s.write(b"last\n").unwrap();
        done_tx.send(true).unwrap();
        let rest: Vec<_> = tokio::time::timeout(Duration::from_secs(2), stream.collect::<Vec<_>>())
            .await
            .expect("stream ends after done");
        let rest: Vec<u8> = rest.into_iter().flat_map(|c| c.unwrap().to_vec()).collect();
        assert_eq!(rest, b"last\n");
    }

    fn tiny(max_bytes: u64, max_files: usize) -> LogRotation {
        LogRotation {
            max_bytes,
            max_files,
        }
    }

    /// Bytes of a record `<30-byte timestamp> stdout F lN\n`.
    const REC: u64 = 43;

    #[test]
    fn rotates_by_size_keeping_max_files() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("0.log");
        // Two records per file.
        let w = LogWriter::open_with(&path, tiny(2 * REC, 3), ticking_clock()).unwrap();
        let s = w.stream(StreamKind::Stdout);
        for i in 0..9 {
            s.write(format!("l{i}\n").as_bytes()).unwrap();
        }
        let rotated = rotated_files(&path).unwrap();
        let names: Vec<_> = rotated
            .iter()
            .map(|p| p.file_name().unwrap().to_str().unwrap().to_owned())
            .collect();
        // Files held l0-1, l2-3, l4-5, l6-7 and (current) l8; the oldest two are gone.
        assert_eq!(
            names,
            [
                "0.log.20240501-100006.000000000",
                "0.log.20240501-100008.000000000"
            ]
        );
        let text = |p: &Path| std::fs::read_to_string(p).unwrap();
        assert!(text(&rotated[0]).contains(" l4\n") && text(&rotated[0]).contains(" l5\n"));
        assert!(text(&rotated[1]).contains(" l6\n") && text(&rotated[1]).contains(" l7\n"));
        assert_eq!(text(&path), "2024-05-01T10:00:08.000000000Z stdout F l8\n");
        for f in rotated.iter().chain([&path]) {
            assert!(std::fs::metadata(f).unwrap().len() <= 2 * REC);
        }
        assert_eq!(std::fs::read_dir(dir.path()).unwrap().count(), 3);
    }

    /// The directory never holds more than `max_files` files, not even mid-rotation (a reader
    /// listing it while the writer rotates once saw three with `max_files` 2).
    #[test]
    fn never_more_than_max_files_even_mid_rotation() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("0.log");
        // Every record rotates.
        let w = LogWriter::open_with(&path, tiny(REC, 2), ticking_clock()).unwrap();
        let done = Arc::new(std::sync::atomic::AtomicBool::new(false));
        let writer = {
            let done = done.clone();
            std::thread::spawn(move || {
                let s = w.stream(StreamKind::Stdout);
                for i in 0..3000 {
                    s.write(format!("l{}\n", i % 10).as_bytes()).unwrap();
                }
                done.store(true, std::sync::atomic::Ordering::SeqCst);
            })
        };
        let mut most = 0;
        while !done.load(std::sync::atomic::Ordering::SeqCst) {
            most = most.max(std::fs::read_dir(dir.path()).unwrap().count());
        }
        writer.join().unwrap();
        assert!(most <= 2, "{most} files at once with max_files 2");
        assert_eq!(rotated_files(&path).unwrap().len(), 1);
    }

    #[test]
    fn counts_an_existing_file_and_oversized_records_get_their_own_file() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("0.log");
        std::fs::write(&path, vec![b'x'; 60]).unwrap();
        let w = LogWriter::open_with(&path, tiny(50, 2), ticking_clock()).unwrap();
        let s = w.stream(StreamKind::Stdout);
        s.write(&[b'y'; 100]).unwrap();
        s.write(b"\n").unwrap();
        // The 60 bytes already there were rotated away before the first record.
        let rotated = rotated_files(&path).unwrap();
        assert_eq!(rotated.len(), 1);
        assert_eq!(std::fs::read(&rotated[0]).unwrap(), vec![b'x'; 60]);
        let current = std::fs::read_to_string(&path).unwrap();
        assert!(current.ends_with(&format!(" {}\n", "y".repeat(100))));
        s.write(b"next\n").unwrap();
        // max_files 2: the current file and one rotated one.
        let rotated = rotated_files(&path).unwrap();
        assert_eq!(rotated.len(), 1);
        assert!(
            std::fs::read_to_string(&rotated[0])
                .unwrap()
                .contains(&"y".repeat(100))
        );
        assert!(std::fs::read_to_string(&path).unwrap().ends_with(" next\n"));
    }

    #[tokio::test]
    async fn reading_returns_only_the_current_file_as_kubelet() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("0.log");
        let w = LogWriter::open_with(&path, tiny(2 * REC, 5), ticking_clock()).unwrap();
        let s = w.stream(StreamKind::Stdout);
        for i in 0..5 {
            s.write(format!("l{i}\n").as_bytes()).unwrap();
        }
        assert_eq!(collect(&path, LogOptions::default()).await, "l4\n");
        let tail = LogOptions {
            tail_lines: Some(10),
            ..Default::default()
        };
        assert_eq!(collect(&path, tail).await, "l4\n");
    }

    #[tokio::test]
    async fn follow_continues_across_rotations_without_losing_lines() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("0.log");
        let w = LogWriter::open_with(&path, tiny(3 * REC, 2), ticking_clock()).unwrap();
        let s = w.stream(StreamKind::Stdout);
        s.write(b"l0\n").unwrap();
        let (done_tx, done_rx) = watch::channel(false);
        let opts = LogOptions {
            follow: true,
            ..Default::default()
        };
        let stream = read(path.clone(), opts, Some(done_rx));
        let reader = tokio::spawn(async move {
            let chunks: Vec<_> = stream.collect().await;
            chunks
                .into_iter()
                .flat_map(|c| c.unwrap().to_vec())
                .collect::<Vec<u8>>()
        });
        // Many rotations, at most one per poll of the reader (as kubelet, a reader more than a
        // whole file behind loses the files deleted meanwhile); the reader must drain each
        // renamed file, already deleted or not (the open handle still reads it), then switch.
        let mut want = String::from("l0\n");
        for i in 1..30 {
            s.write(format!("l{i}\n").as_bytes()).unwrap();
            want.push_str(&format!("l{i}\n"));
            if i % 2 == 0 {
                tokio::time::sleep(FOLLOW_POLL * 2).await;
            }
        }
        tokio::time::sleep(FOLLOW_POLL * 3).await;
        done_tx.send(true).unwrap();
        let got = tokio::time::timeout(Duration::from_secs(5), reader)
            .await
            .expect("follow ends after done")
            .unwrap();
        assert_eq!(String::from_utf8(got).unwrap(), want);
        assert_eq!(rotated_files(&path).unwrap().len(), 1);
    }

    #[tokio::test]
    async fn follow_catches_up_through_several_rotated_files() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("0.log");
        let w = LogWriter::open_with(&path, tiny(2 * REC, 5), ticking_clock()).unwrap();
        let s = w.stream(StreamKind::Stdout);
        s.write(b"l0\n").unwrap();
        let (done_tx, done_rx) = watch::channel(false);
        let opts = LogOptions {
            follow: true,
            ..Default::default()
        };
        let mut stream = Box::pin(read(path.clone(), opts, Some(done_rx)));
        assert_eq!(&stream.next().await.unwrap().unwrap()[..], b"l0\n");
        // Three rotations before the reader looks again: it reads the files in between.
        let mut want = String::new();
        for i in 1..8 {
            s.write(format!("l{i}\n").as_bytes()).unwrap();
            want.push_str(&format!("l{i}\n"));
        }
        assert_eq!(rotated_files(&path).unwrap().len(), 3);
        done_tx.send(true).unwrap();
        let rest: Vec<_> = tokio::time::timeout(Duration::from_secs(5), stream.collect::<Vec<_>>())
            .await
            .expect("follow ends after done");
        let rest: Vec<u8> = rest.into_iter().flat_map(|c| c.unwrap().to_vec()).collect();
        assert_eq!(String::from_utf8(rest).unwrap(), want);
    }
}
