//! A container's stdin kept open for its whole run (`stdin: true` in the pod spec), fed by
//! `kubectl attach -i` sessions, as kubelet keeps it open for the container runtime.
//!
//! The agent keeps the [`Attach`] end (cloned per session); the runtime takes the [`Stdin`]
//! end and copies what arrives into the process: a pipe, the pty master with `tty: true`, or
//! a Wasm guest's stdin stream. Any number of sessions may send at once; their chunks
//! interleave as they come. A session whose input ends sends [`Input::End`]: with
//! `stdinOnce` the first such end closes the stdin for good (the process reads EOF), as
//! kubelet does; without it the stdin stays open for the next session. A session whose
//! client leaves while the queue is full (the process is not reading) cannot queue its end:
//! [`Attach::close`] closes the stdin past the queue instead.
//!
//! The other direction: the runtime sends the process's output, raw as it comes, to every
//! session attached ([`Attach::subscribe`]); the CRI log holds an unfinished line back until
//! its newline, which a prompt or a typed key's echo never has.

use bytes::Bytes;
use tokio::io::{AsyncWrite, AsyncWriteExt as _};
use tokio::sync::{broadcast, mpsc};
use tokio_util::sync::CancellationToken;

pub use crate::logs::Output;

/// Chunks queued per container: enough to keep a session's input moving, small enough that
/// a process not reading its stdin pushes back on the client through the tunnel.
const QUEUE: usize = 16;
/// Output chunks kept for each attached session; one that falls further behind loses the
/// oldest (a terminal, unlike the log, has no use for output it could not keep up with).
const OUTPUT_QUEUE: usize = 1024;

/// The pod spec's `stdin`, `stdinOnce` and `tty` of a container.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct Mode {
    pub stdin: bool,
    pub stdin_once: bool,
    pub tty: bool,
}

/// What an attach session sends to the container.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum Input {
    Data(Bytes),
    /// The session's input ended (the client closed its stdin, or left).
    End,
    /// The client's terminal size; only a `tty` container has one to set.
    Resize {
        width: u16,
        height: u16,
    },
}

/// The agent's end: where attach sessions send their input.
#[derive(Clone, Debug)]
pub struct Attach {
    tx: mpsc::Sender<Input>,
    /// [`Attach::close`]: out of band, since the queue may be full.
    close: CancellationToken,
    output: broadcast::Sender<Output>,
    mode: Mode,
}

/// The runtime's end, given to the run that owns the process.
#[derive(Debug)]
pub struct Stdin {
    rx: mpsc::Receiver<Input>,
    close: CancellationToken,
    output: broadcast::Sender<Output>,
    mode: Mode,
}

/// A new stdin, and output for those attached, for one run of a container. Without `stdin`
/// the process still reads EOF; the output goes out all the same.
pub fn channel(mode: Mode) -> (Attach, Stdin) {
    let (tx, rx) = mpsc::channel(QUEUE);
    let (output, _) = broadcast::channel(OUTPUT_QUEUE);
    let close = CancellationToken::new();
    (
        Attach {
            tx,
            close: close.clone(),
            output: output.clone(),
            mode,
        },
        Stdin {
            rx,
            close,
            output,
            mode,
        },
    )
}

impl Attach {
    pub fn mode(&self) -> Mode {
        self.mode
    }

    /// The process's output from now on, as it is written.
    pub fn subscribe(&self) -> broadcast::Receiver<Output> {
        self.output.subscribe()
    }

    /// Whether the stdin is closed for good: by `stdinOnce`, because the process closed its
    /// end, or because the run is over.
    pub fn is_closed(&self) -> bool {
        self.tx.is_closed() || self.close.is_cancelled()
    }

    /// Closes the stdin for good now, dropping what is still queued and cutting short a write
    /// the process is not reading. For a `stdinOnce` session whose client left while the
    /// queue was full, so that its [`Input::End`] could not be queued: the process must still
    /// read EOF, and a session must not wait on a process that may never read.
    pub fn close(&self) {
        self.close.cancel();
    }

    /// Queues `input`, waiting while the queue is full. `false`: the stdin is closed.
    pub async fn send(&self, input: Input) -> bool {
        self.tx.send(input).await.is_ok()
    }
}

impl Stdin {
    pub fn mode(&self) -> Mode {
        self.mode
    }

    /// Where the runtime sends the process's output for those attached.
    pub fn output(&self) -> broadcast::Sender<Output> {
        self.output.clone()
    }

    /// Copies the sessions' input into `w` until the stdin closes: every [`Attach`] gone, the
    /// process's end closed, (with `stdinOnce`) the first session's input ended, or
    /// [`Attach::close`]. Then `w` is shut down and dropped, so a pipe reads EOF; a tty gets
    /// its EOF character instead (closing our copy of the pty master would not end the
    /// terminal). Resizes go to `resize`.
    pub async fn feed<W>(mut self, mut w: W, resize: impl Fn(u16, u16))
    where
        W: AsyncWrite + Unpin,
    {
        let close = self.close.clone();
        loop {
            let input = tokio::select! {
                biased;
                () = close.cancelled() => {
                    if self.mode.tty {
                        // ^D if the terminal takes it now; a full one is not waited for.
                        let _ = futures_util::FutureExt::now_or_never(w.write_all(&[4]));
                    }
                    break;
                }
                input = self.rx.recv() => match input {
                    Some(input) => input,
                    None => break,
                },
            };
            match input {
                Input::Data(data) => {
                    let written = tokio::select! {
                        biased;
                        // The loop's top ends the stdin.
                        () = close.cancelled() => continue,
                        r = async {
                            w.write_all(&data).await?;
                            w.flush().await
                        } => r,
                    };
                    if written.is_err() {
                        break;
                    }
                }
                Input::End if self.mode.stdin_once => {
                    if self.mode.tty {
                        // ^D: what the terminal's line discipline turns into EOF.
                        let _ = w.write_all(&[4]).await;
                    }
                    break;
                }
                Input::End => {}
                Input::Resize { width, height } => resize(width, height),
            }
        }
        // Senders see the stdin closed from now on.
        self.rx.close();
        let _ = w.shutdown().await;
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use tokio::io::AsyncReadExt as _;

    /// What an attached terminal needs: a prompt (no newline) arrives as written, while the
    /// log still waits for the line's end.
    #[tokio::test]
    async fn output_reaches_sessions_as_written_not_line_by_line() {
        use crate::logs::{LogWriter, StreamKind};
        let (attach, stdin) = channel(Mode::default());
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("0.log");
        let log = LogWriter::open(&path).unwrap().with_tee(stdin.output());
        let stderr = log.stream(StreamKind::Stderr);
        // Nobody attached yet: nothing queued for later.
        stderr.write(b"before\n").unwrap();
        let mut session = attach.subscribe();
        stderr.write(b"/ # ").unwrap();
        let got = session.try_recv().expect("sent at once");
        assert_eq!(
            (got.kind, &got.bytes[..]),
            (StreamKind::Stderr, &b"/ # "[..])
        );
        assert!(session.try_recv().is_err());
        let logged = std::fs::read_to_string(&path).unwrap();
        assert!(
            logged.contains("before") && !logged.contains("/ #"),
            "{logged}"
        );
    }

    #[tokio::test]
    async fn stdin_once_closes_at_the_first_sessions_end() {
        let mode = Mode {
            stdin: true,
            stdin_once: true,
            tty: false,
        };
        let (attach, stdin) = channel(mode);
        let (w, mut r) = tokio::io::duplex(1024);
        let feeding = tokio::spawn(stdin.feed(w, |_, _| {}));
        assert!(attach.send(Input::Data(Bytes::from_static(b"a\n"))).await);
        assert!(attach.send(Input::End).await);
        tokio::time::timeout(std::time::Duration::from_secs(10), feeding)
            .await
            .expect("the stdin closed")
            .unwrap();
        assert!(attach.is_closed());
        assert!(!attach.send(Input::Data(Bytes::from_static(b"late"))).await);
        let mut out = Vec::new();
        r.read_to_end(&mut out).await.unwrap();
        assert_eq!(out, b"a\n");
    }

    #[tokio::test]
    async fn without_stdin_once_a_sessions_end_leaves_it_open() {
        let mode = Mode {
            stdin: true,
            stdin_once: false,
            tty: true,
        };
        let (attach, stdin) = channel(mode);
        let (w, mut r) = tokio::io::duplex(1024);
        let sizes = std::sync::Arc::new(std::sync::Mutex::new(Vec::new()));
        let seen = sizes.clone();
        let feeding = tokio::spawn(stdin.feed(w, move |wd, h| seen.lock().unwrap().push((wd, h))));
        let second = attach.clone();
        assert!(attach.send(Input::Data(Bytes::from_static(b"one\n"))).await);
        assert!(attach.send(Input::End).await);
        assert!(
            second
                .send(Input::Resize {
                    width: 80,
                    height: 24
                })
                .await
        );
        assert!(second.send(Input::Data(Bytes::from_static(b"two\n"))).await);
        assert!(!second.is_closed());
        drop((attach, second));
        tokio::time::timeout(std::time::Duration::from_secs(10), feeding)
            .await
            .expect("the stdin closed")
            .unwrap();
        let mut out = Vec::new();
        r.read_to_end(&mut out).await.unwrap();
        assert_eq!(out, b"one\ntwo\n");
        assert_eq!(*sizes.lock().unwrap(), [(80, 24)]);
    }

    /// Regression: a `stdinOnce` session whose client left while the process read nothing
    /// could not queue its end, and the stdin stayed open (and full) for good.
    #[tokio::test]
    async fn close_ends_a_stdin_the_process_does_not_read() {
        let mode = Mode {
            stdin: true,
            stdin_once: true,
            tty: false,
        };
        let (attach, stdin) = channel(mode);
        // A process that never reads: its pipe holds 8 bytes.
        let (w, mut r) = tokio::io::duplex(8);
        let feeding = tokio::spawn(stdin.feed(w, |_, _| {}));
        let chunk = || Input::Data(Bytes::from_static(b"0123456789"));
        // One chunk stuck in the pipe, the queue full behind it.
        for _ in 0..=QUEUE {
            assert!(attach.send(chunk()).await);
        }
        let full =
            tokio::time::timeout(std::time::Duration::from_millis(100), attach.send(chunk()));
        assert!(full.await.is_err(), "the queue is full");
        assert!(!attach.is_closed());

        attach.close();
        assert!(attach.is_closed());
        tokio::time::timeout(std::time::Duration::from_secs(10), feeding)
            .await
            .expect("the stdin closed though the process read nothing")
            .unwrap();
        assert!(!attach.send(chunk()).await);
        // What the pipe took, then EOF: the queued rest is dropped.
        let mut out = Vec::new();
        r.read_to_end(&mut out).await.unwrap();
        assert_eq!(out, b"01234567");
    }

    #[tokio::test]
    async fn stdin_once_with_a_tty_sends_the_eof_character() {
        let mode = Mode {
            stdin: true,
            stdin_once: true,
            tty: true,
        };
        let (attach, stdin) = channel(mode);
        let (w, mut r) = tokio::io::duplex(1024);
        let feeding = tokio::spawn(stdin.feed(w, |_, _| {}));
        assert!(attach.send(Input::Data(Bytes::from_static(b"x"))).await);
        assert!(attach.send(Input::End).await);
        tokio::time::timeout(std::time::Duration::from_secs(10), feeding)
            .await
            .expect("the stdin closed")
            .unwrap();
        assert!(attach.is_closed());
        let mut out = Vec::new();
        r.read_to_end(&mut out).await.unwrap();
        assert_eq!(out, b"x\x04");
    }
}
