//! Pods' network namespaces: made and removed with iproute2 (`ip netns add`, a bind mount
//! under `/run/netns` that outlives the agent process, so a restarted agent finds its pods'
//! networks as it left them), and entered from a thread with `setns(2)`.
//!
//! A socket belongs to the namespace of the thread that created it, for its whole life. That
//! is what lets Wasm containers live in their pod's network without being processes: the
//! runtime runs a pod's instances on threads that entered the pod's namespace
//! ([`Executor`]), and the sockets WASI opens there are the pod's. It is also how the agent
//! reaches a pod's `localhost` (`kubectl port-forward`, probes of a port bound to 127.0.0.1):
//! a connection made on a thread inside the namespace ([`connect_in`]).

use std::fs::File;
use std::io;
use std::net::SocketAddr;
use std::os::fd::AsFd as _;
use std::path::{Path, PathBuf};
use std::process::Command;
use std::sync::Arc;
use std::time::Duration;

use rustix::thread::{LinkNameSpaceType, move_into_link_name_space};

/// Where iproute2 keeps named namespaces.
pub const NETNS_DIR: &str = "/run/netns";

/// The path of the named namespace `name`.
pub fn path(name: &str) -> PathBuf {
    Path::new(NETNS_DIR).join(name)
}

/// Makes the named namespace (with its loopback up) unless it exists.
pub fn create(name: &str) -> io::Result<PathBuf> {
    let p = path(name);
    if p.exists() {
        return Ok(p);
    }
    run(Command::new("ip").args(["netns", "add", name]))?;
    // `lo` starts down in a fresh namespace; the CNI loopback plugin brings it up too, but a
    // namespace should never be handed out without it.
    run(Command::new("ip").args(["-n", name, "link", "set", "lo", "up"]))?;
    Ok(p)
}

/// Removes the named namespace; gone already is fine.
pub fn delete(name: &str) -> io::Result<()> {
    if !path(name).exists() {
        return Ok(());
    }
    run(Command::new("ip").args(["netns", "delete", name]))
}

/// Moves the calling thread into the namespace at `netns`. Only for threads that stay there
/// for good (an [`Executor`]'s) or that end right after (see [`connect_in`]).
pub fn enter(netns: &Path) -> io::Result<()> {
    enter_fd(&File::open(netns)?)
}

fn enter_fd(f: &File) -> io::Result<()> {
    move_into_link_name_space(f.as_fd(), Some(LinkNameSpaceType::Network)).map_err(io::Error::from)
}

/// A TCP connection to `addr` made from inside the namespace at `netns` (so `127.0.0.1` is
/// the pod's loopback), on a short-lived thread of its own.
pub async fn connect_in(
    netns: &Path,
    addr: SocketAddr,
    timeout: Duration,
) -> io::Result<tokio::net::TcpStream> {
    let netns = netns.to_owned();
    let (tx, rx) = tokio::sync::oneshot::channel();
    std::thread::Builder::new()
        .name("kedge-netns-dial".into())
        .spawn(move || {
            let r = enter(&netns)
                .and_then(|()| std::net::TcpStream::connect_timeout(&addr, timeout))
                .and_then(|s| s.set_nonblocking(true).map(|()| s));
            let _ = tx.send(r);
        })?;
    let std = rx
        .await
        .map_err(|_| io::Error::other("the namespace dialer thread died"))??;
    tokio::net::TcpStream::from_std(std)
}

/// A tokio runtime whose threads all live in one pod's network namespace: what the Wasm
/// runtime runs a pod's instances on. One thread runs the futures (current-thread runtime);
/// blocking work it spawns (name lookups, file I/O) gets pool threads that enter the
/// namespace first. Dropping the executor shuts the runtime down; the futures still on it are
/// dropped, which is what cancelling a container does anyway.
pub struct Executor {
    handle: tokio::runtime::Handle,
    _stop: tokio::sync::oneshot::Sender<()>,
    netns: PathBuf,
}

impl Executor {
    pub fn start(netns: &Path) -> io::Result<Arc<Executor>> {
        // Opened once, here (failing on the caller's thread if the namespace is not there):
        // every thread enters it by this descriptor, so a namespace file removed later (the
        // pod torn down while a run ends) cannot leave a thread outside.
        let fd = Arc::new(File::open(netns)?);
        let ns = netns.to_owned();
        let (handle_tx, handle_rx) = std::sync::mpsc::channel();
        let (stop_tx, stop_rx) = tokio::sync::oneshot::channel::<()>();
        std::thread::Builder::new()
            .name("kedge-pod-net".into())
            .spawn(move || {
                let built = enter_fd(&fd).and_then(|()| {
                    let (pool_fd, pool_ns) = (fd.clone(), ns.clone());
                    tokio::runtime::Builder::new_current_thread()
                        .enable_all()
                        .thread_name("kedge-pod-net-blocking")
                        .on_thread_start(move || {
                            if let Err(error) = enter_fd(&pool_fd) {
                                // A pool thread outside the namespace would open the pod's
                                // sockets on the node: better that it cannot run at all.
                                tracing::error!(%error, netns = %pool_ns.display(), "cannot enter the pod's network namespace");
                                std::process::abort();
                            }
                        })
                        .build()
                });
                match built {
                    Ok(rt) => {
                        let _ = handle_tx.send(Ok(rt.handle().clone()));
                        rt.block_on(async move {
                            let _ = stop_rx.await;
                        });
                        rt.shutdown_timeout(Duration::from_secs(1));
                    }
                    Err(e) => {
                        let _ = handle_tx.send(Err(e));
                    }
                }
            })?;
        let handle = handle_rx
            .recv()
            .map_err(|_| io::Error::other("the pod network thread died"))??;
        Ok(Arc::new(Executor {
            handle,
            _stop: stop_tx,
            netns: netns.to_owned(),
        }))
    }

    /// A handle of the runtime, to spawn onto it (the Wasm runtime takes one).
    pub fn handle(&self) -> tokio::runtime::Handle {
        self.handle.clone()
    }

    /// The namespace this executor's threads are in.
    pub fn netns(&self) -> &Path {
        &self.netns
    }

    /// Runs `fut` on the executor; the result comes back to the caller's runtime. Dropping
    /// the returned future aborts the task.
    pub fn run<F>(&self, fut: F) -> impl Future<Output = io::Result<F::Output>> + use<F>
    where
        F: Future + Send + 'static,
        F::Output: Send + 'static,
    {
        let task = tokio_util::task::AbortOnDropHandle::new(self.handle.spawn(fut));
        async move {
            task.await
                .map_err(|e| io::Error::other(format!("pod network task: {e}")))
        }
    }
}

fn run(cmd: &mut Command) -> io::Result<()> {
    let out = cmd.output()?;
    if out.status.success() {
        Ok(())
    } else {
        Err(io::Error::other(format!(
            "{:?} failed: {}",
            cmd,
            String::from_utf8_lossy(&out.stderr).trim()
        )))
    }
}

/// Whether this process may make namespaces (root, with iproute2 present).
pub fn can_manage() -> bool {
    rustix::process::geteuid().is_root()
        && Command::new("ip")
            .arg("-V")
            .output()
            .is_ok_and(|o| o.status.success())
}

#[cfg(test)]
mod tests {
    use super::*;

    struct Ns(String);
    impl Drop for Ns {
        fn drop(&mut self) {
            let _ = delete(&self.0);
        }
    }

    fn scratch(tag: &str) -> Option<Ns> {
        if !can_manage() {
            eprintln!("skipped: needs root and iproute2");
            return None;
        }
        let name = format!("kedge-t-{tag}-{}", std::process::id());
        create(&name).unwrap();
        Some(Ns(name))
    }

    /// A socket opened on the executor is the namespace's: a listener bound there is not
    /// reachable from the node, and is reachable through `connect_in`.
    #[tokio::test]
    async fn sockets_opened_on_the_executor_live_in_the_namespace() {
        let Some(ns) = scratch("exec") else { return };
        let exec = Executor::start(&path(&ns.0)).unwrap();
        let listener = exec
            .run(async {
                let l = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
                let port = l.local_addr().unwrap().port();
                tokio::spawn(async move {
                    use tokio::io::AsyncWriteExt as _;
                    for _ in 0..2 {
                        let (mut s, _) = l.accept().await.unwrap();
                        s.write_all(b"inside").await.unwrap();
                    }
                });
                port
            })
            .await
            .unwrap();
        // The node's loopback has no such listener (the port may be taken by chance by
        // something else; what must not happen is reaching ours).
        if let Ok(mut s) = tokio::net::TcpStream::connect(("127.0.0.1", listener)).await {
            use tokio::io::AsyncReadExt as _;
            let mut b = Vec::new();
            let _ = tokio::time::timeout(Duration::from_millis(200), s.read_to_end(&mut b)).await;
            assert_ne!(b, b"inside");
        }
        let mut s = connect_in(
            &path(&ns.0),
            ([127, 0, 0, 1], listener).into(),
            Duration::from_secs(2),
        )
        .await
        .unwrap();
        use tokio::io::AsyncReadExt as _;
        let mut b = Vec::new();
        s.read_to_end(&mut b).await.unwrap();
        assert_eq!(b, b"inside");
        // Blocking work spawned there runs in the namespace too: the only interface is `lo`.
        let links = exec
            .run(async {
                tokio::task::spawn_blocking(|| {
                    std::fs::read_to_string("/proc/thread-self/net/dev").unwrap()
                })
                .await
                .unwrap()
            })
            .await
            .unwrap();
        let names: Vec<&str> = links
            .lines()
            .skip(2)
            .filter_map(|l| l.split(':').next())
            .map(str::trim)
            .collect();
        assert_eq!(names, ["lo"], "{links}");
    }

    #[test]
    fn a_missing_namespace_is_an_error_not_the_node() {
        let e = Executor::start(Path::new("/run/netns/kedge-no-such-ns")).err();
        assert!(e.is_some());
    }
}
