//! `runc exec`: a second process in a running container, for `kubectl exec`.
//!
//! Without a tty the process gets three pipes. With a tty, `runc exec --tty` allocates the pty
//! inside the container (so `tty` names a device the container can see, and the process gets
//! a controlling terminal for job control and Ctrl-C) and, not detached, copies between it and
//! its own stdio — which we make a host pty, so runc puts it in raw mode and picks its size
//! up on SIGWINCH. (`--console-socket`, which hands the container's pty over, needs a
//! detached exec, whose exit code only a subreaper could collect.) rustix allocates the host
//! pty without `unsafe`.

use std::io;
use std::os::fd::OwnedFd;
use std::path::PathBuf;
use std::process::Stdio;
use std::time::Duration;

use tokio::process::{Child, ChildStderr, ChildStdin, ChildStdout};

use super::OciRuntime;
use crate::{Error, Result};

/// After asking the process to stop (client gone), how long before runc is killed.
const STOP_GRACE: Duration = Duration::from_secs(2);

/// A running `runc exec`.
pub struct ExecProcess {
    child: Child,
    pub stdin: Option<ChildStdin>,
    pub stdout: Option<ChildStdout>,
    pub stderr: Option<ChildStderr>,
    /// The pty master, with `tty`: the process's input and output both.
    pub pty: Option<Pty>,
}

impl ExecProcess {
    /// Waits for the process and returns its exit code (128+n for a signal, as shells do).
    pub async fn wait(&mut self) -> io::Result<i32> {
        use std::os::unix::process::ExitStatusExt as _;
        let status = self.child.wait().await?;
        Ok(status
            .code()
            .or_else(|| status.signal().map(|s| 128 + s))
            .unwrap_or(128))
    }

    /// The client went away: runc forwards HUP (the terminal is gone: interactive shells
    /// ignore TERM but not this) and TERM to the process; if they do not end it in time, runc
    /// itself is killed.
    pub async fn stop(&mut self) {
        if let Some(pid) = self
            .child
            .id()
            .and_then(|p| rustix::process::Pid::from_raw(p as i32))
        {
            for sig in [rustix::process::Signal::HUP, rustix::process::Signal::TERM] {
                let _ = rustix::process::kill_process(pid, sig);
            }
        }
        if tokio::time::timeout(STOP_GRACE, self.child.wait())
            .await
            .is_err()
        {
            let _ = self.child.kill().await;
        }
    }
}

impl OciRuntime {
    /// Starts `argv` in running container `id`. `stdin` keeps a pipe (or the tty) open for
    /// input; without it the process reads EOF.
    pub async fn exec(
        &self,
        id: &str,
        argv: &[String],
        tty: bool,
        stdin: bool,
    ) -> Result<ExecProcess> {
        if argv.is_empty() {
            return Err(Error::InvalidSpec("exec needs a command".into()));
        }
        let mut cmd = self.runc.command();
        cmd.arg("exec");
        if tty {
            cmd.arg("--tty");
        }
        cmd.arg(id)
            .args(argv)
            // As for `runc run`: signals aimed at the agent's group must not reach the exec.
            .process_group(0);
        let io_err = |source| Error::Io {
            what: "allocate",
            path: PathBuf::from("a pty for exec"),
            source,
        };
        let pty = if tty {
            let (master, slave) = host_pty().map_err(io_err)?;
            cmd.stdin(Stdio::from(slave.try_clone().map_err(io_err)?))
                .stdout(Stdio::from(slave.try_clone().map_err(io_err)?))
                .stderr(Stdio::from(slave));
            Some(Pty::new(master)?)
        } else {
            cmd.stdin(if stdin { Stdio::piped() } else { Stdio::null() })
                .stdout(Stdio::piped())
                .stderr(Stdio::piped());
            None
        };
        // Our copies of the slave end close when `cmd` drops, so the master reads EIO once
        // runc is gone.
        let mut child = cmd
            .spawn()
            .map_err(|source| Error::RuncSpawn { op: "exec", source })?;
        drop(cmd);
        let mut pty = pty;
        if let Some(p) = pty.as_mut() {
            p.size.runc = child.id();
        }
        Ok(ExecProcess {
            stdin: child.stdin.take(),
            stdout: child.stdout.take(),
            stderr: child.stderr.take(),
            pty,
            child,
        })
    }
}

/// A host pty pair in raw mode (runc sets raw too, but only once it runs: input that comes
/// earlier must not be echoed or line-edited).
pub(super) fn host_pty() -> io::Result<(OwnedFd, OwnedFd)> {
    use rustix::pty::OpenptFlags;
    let master = rustix::pty::openpt(OpenptFlags::RDWR | OpenptFlags::NOCTTY)?;
    rustix::pty::grantpt(&master)?;
    rustix::pty::unlockpt(&master)?;
    let slave = rustix::pty::ioctl_tiocgptpeer(
        &master,
        OpenptFlags::RDWR | OpenptFlags::NOCTTY | OpenptFlags::CLOEXEC,
    )?;
    let mut t = rustix::termios::tcgetattr(&slave)?;
    t.make_raw();
    rustix::termios::tcsetattr(&slave, rustix::termios::OptionalActions::Now, &t)?;
    Ok((master, slave))
}

/// The master end of an exec's (or a `tty: true` container's) pty, split for concurrent use.
pub struct Pty {
    /// The process's output (EIO once the process and its children closed the tty).
    pub output: tokio::net::unix::pipe::Receiver,
    /// The process's input.
    pub input: tokio::net::unix::pipe::Sender,
    pub size: PtySize,
}

/// Sets the terminal size of a pty.
pub struct PtySize {
    fd: OwnedFd,
    /// The runc process that copies the size into the container's pty.
    pub(super) runc: Option<u32>,
}

impl Pty {
    /// tokio's pipe ends register any non-blocking fd with the reactor; a pty master polls
    /// like a pipe, which keeps this free of `unsafe` (tokio's `AsyncFd` constructors are not).
    pub(super) fn new(fd: OwnedFd) -> Result<Self> {
        let io_err = |source| Error::Io {
            what: "use",
            path: PathBuf::from("the pty master"),
            source,
        };
        rustix::io::ioctl_fionbio(&fd, true).map_err(|e| io_err(e.into()))?;
        let reader = fd.try_clone().map_err(io_err)?;
        let writer = fd.try_clone().map_err(io_err)?;
        Ok(Pty {
            output: tokio::net::unix::pipe::Receiver::from_owned_fd_unchecked(reader)
                .map_err(io_err)?,
            input: tokio::net::unix::pipe::Sender::from_owned_fd_unchecked(writer)
                .map_err(io_err)?,
            size: PtySize { fd, runc: None },
        })
    }
}

impl PtySize {
    /// Sets the terminal size the process sees: our pty's size, then SIGWINCH to runc,
    /// which copies it to the container's pty (and the process gets its SIGWINCH).
    pub fn resize(&self, width: u16, height: u16) -> io::Result<()> {
        let size = rustix::termios::Winsize {
            ws_row: height,
            ws_col: width,
            ws_xpixel: 0,
            ws_ypixel: 0,
        };
        rustix::termios::tcsetwinsize(&self.fd, size)?;
        if let Some(pid) = self
            .runc
            .and_then(|p| rustix::process::Pid::from_raw(p as i32))
        {
            rustix::process::kill_process(pid, rustix::process::Signal::WINCH)?;
        }
        Ok(())
    }
}
