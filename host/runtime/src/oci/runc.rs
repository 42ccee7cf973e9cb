//! Thin wrappers around the `runc` command line. Every call is bounded in time and killed if
//! dropped, so a wedged runc cannot hang the agent.

use std::ffi::OsStr;
use std::path::{Path, PathBuf};
use std::process::{Output, Stdio};
use std::time::{Duration, Instant};

use tokio::process::Command;
use tracing::debug;

use crate::{Error, Result};

/// Bound on one runc management call (state, kill, delete, --version). These take tens of
/// milliseconds; ten seconds means runc is stuck, not slow.
pub(super) const RUNC_TIMEOUT: Duration = Duration::from_secs(10);

/// Output kept from a failed runc call or hook for the error message.
const MAX_MESSAGE: usize = 4096;

/// A runc binary and its state directory (`--root`). A private root keeps kedge's containers
/// apart from Docker's or containerd's on the same host, and makes `runc list` show only ours.
#[derive(Clone, Debug)]
pub(super) struct Runc {
    pub bin: PathBuf,
    pub root: PathBuf,
}

impl Runc {
    /// A command with the global flags set; stdin closed, killed if dropped.
    pub fn command(&self) -> Command {
        let mut c = Command::new(&self.bin);
        c.arg("--root")
            .arg(&self.root)
            .stdin(Stdio::null())
            .kill_on_drop(true);
        c
    }

    /// Runs a management command to its end, bounded by [`RUNC_TIMEOUT`].
    async fn output<I, S>(&self, op: &'static str, id: &str, args: I) -> Result<Output>
    where
        I: IntoIterator<Item = S>,
        S: AsRef<OsStr>,
    {
        let mut c = self.command();
        c.args(args).stdout(Stdio::piped()).stderr(Stdio::piped());
        let child = c
            .spawn()
            .map_err(|source| Error::RuncSpawn { op, source })?;
        match tokio::time::timeout(RUNC_TIMEOUT, child.wait_with_output()).await {
            Ok(out) => out.map_err(|source| Error::RuncSpawn { op, source }),
            // Dropping the future dropped the child: kill_on_drop ended it.
            Err(_) => Err(Error::Runc {
                op,
                id: id.to_owned(),
                message: format!("no answer within {RUNC_TIMEOUT:?}"),
            }),
        }
    }

    /// The container's status (`creating`, `created`, `running`, `paused`, `stopped`), or
    /// `None` if runc does not know it.
    pub async fn state(&self, id: &str) -> Result<Option<String>> {
        let out = self.output("state", id, ["state", id]).await?;
        if !out.status.success() {
            let stderr = String::from_utf8_lossy(&out.stderr);
            if stderr.contains("does not exist") {
                return Ok(None);
            }
            return Err(failed("state", id, &out));
        }
        let v: serde_json::Value =
            serde_json::from_slice(&out.stdout).map_err(|e| Error::Runc {
                op: "state",
                id: id.to_owned(),
                message: format!("unparsable output: {e}"),
            })?;
        Ok(v["status"].as_str().map(str::to_owned))
    }

    /// Sends `signal` (e.g. `TERM`) to the container's init process. In a PID namespace,
    /// killing init takes every other process of the container with it.
    pub async fn kill(&self, id: &str, signal: &str) -> Result<()> {
        let out = self.output("kill", id, ["kill", id, signal]).await?;
        if out.status.success() {
            Ok(())
        } else {
            Err(failed("kill", id, &out))
        }
    }

    /// Runs `argv` inside the container (with the container's env, user and cwd), bounded by
    /// `timeout`. Ok when it exits 0; otherwise the error text carries its exit and output.
    pub async fn exec(
        &self,
        id: &str,
        argv: &[String],
        timeout: Duration,
    ) -> std::result::Result<(), String> {
        let mut c = self.command();
        c.arg("exec")
            .arg(id)
            .args(argv)
            .stdout(Stdio::piped())
            .stderr(Stdio::piped())
            // Past the timeout, runc goes with the dropped wait (its process in the container
            // may outlive it, as with kubelet's exec probes).
            .kill_on_drop(true);
        let child = c
            .spawn()
            .map_err(|e| format!("cannot spawn runc exec: {e}"))?;
        let out = match tokio::time::timeout(timeout, child.wait_with_output()).await {
            Ok(Ok(out)) => out,
            Ok(Err(e)) => return Err(format!("runc exec failed: {e}")),
            Err(_) => return Err(format!("did not finish within {timeout:?}")),
        };
        if out.status.success() {
            return Ok(());
        }
        let mut text = String::from_utf8_lossy(&out.stdout).into_owned();
        text.push_str(&String::from_utf8_lossy(&out.stderr));
        Err(format!(
            "exited with {}: {}",
            out.status
                .code()
                .map_or("a signal".into(), |c| c.to_string()),
            truncate(text.trim())
        ))
    }
}

fn failed(op: &'static str, id: &str, out: &Output) -> Error {
    Error::Runc {
        op,
        id: id.to_owned(),
        message: truncate(String::from_utf8_lossy(&out.stderr).trim()).to_owned(),
    }
}

fn truncate(s: &str) -> &str {
    match s.char_indices().nth(MAX_MESSAGE) {
        Some((i, _)) => &s[..i],
        None => s,
    }
}

/// Runs a command synchronously with a time bound: for [`super::OciRuntime::detect`] and for
/// cleanup from `Drop`, where there is no async context to await in.
pub(super) fn run_blocking(cmd: &mut std::process::Command) -> std::io::Result<Output> {
    let mut child = cmd
        .stdin(Stdio::null())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()?;
    let deadline = Instant::now() + RUNC_TIMEOUT;
    loop {
        if child.try_wait()?.is_some() {
            // runc's answers are far below a pipe buffer, so nothing blocked on a full pipe.
            return child.wait_with_output();
        }
        if Instant::now() >= deadline {
            let _ = child.kill();
            let _ = child.wait();
            return Err(std::io::Error::new(
                std::io::ErrorKind::TimedOut,
                format!("no answer within {RUNC_TIMEOUT:?}"),
            ));
        }
        std::thread::sleep(Duration::from_millis(5));
    }
}

/// `runc delete --force`: kills the container if it still runs and removes its state and
/// cgroups. A container runc does not know is not an error (`--force` ignores it).
pub(super) fn delete_force_blocking(runc: &Runc, id: &str) -> Result<()> {
    let out = run_blocking(
        std::process::Command::new(&runc.bin)
            .arg("--root")
            .arg(&runc.root)
            .args(["delete", "--force", id]),
    )
    .map_err(|source| Error::RuncSpawn {
        op: "delete",
        source,
    })?;
    if out.status.success() {
        debug!(container = id, "runc state deleted");
        Ok(())
    } else {
        Err(failed("delete", id, &out))
    }
}

/// Error messages runc logged (with `--log-format json`) at error level: how a failed
/// `runc run` is told apart from a container that exited 1.
pub(super) fn logged_errors(log: &Path) -> Vec<String> {
    let Ok(text) = std::fs::read_to_string(log) else {
        return Vec::new();
    };
    text.lines()
        .filter_map(|l| serde_json::from_str::<serde_json::Value>(l).ok())
        .filter(|v| matches!(v["level"].as_str(), Some("error" | "fatal")))
        .filter_map(|v| v["msg"].as_str().map(|m| truncate(m).to_owned()))
        .collect()
}
