//! The per-run directory: the overlay rootfs over the shared image, the bundle runc reads, and
//! taking all of it down again. Also the cgroup look-ups (OOM count, leftovers).

use std::io;
use std::path::{Path, PathBuf};

use rustix::mount::{MountFlags, UnmountFlags, mount, unmount};
use tracing::{debug, warn};

use super::runc::{self, Runc};
use crate::{Error, Result};

/// Where things live under a run's `work_dir`. Everything here is ours to create and remove;
/// the work dir itself belongs to the agent.
#[derive(Clone, Debug)]
pub(super) struct Layout {
    /// The OCI bundle: `config.json`, the `rootfs` mount point, files bind-mounted into the
    /// container, runc's log.
    pub bundle: PathBuf,
    /// The overlay mount point (merged view).
    pub rootfs: PathBuf,
    pub upper: PathBuf,
    pub work: PathBuf,
    pub hosts: PathBuf,
    pub resolv: PathBuf,
    pub runc_log: PathBuf,
}

impl Layout {
    /// `work_dir` must be canonical: the mount point is compared against `/proc/self/mountinfo`.
    pub fn new(work_dir: &Path) -> Self {
        let bundle = work_dir.join("bundle");
        Self {
            rootfs: bundle.join("rootfs"),
            hosts: bundle.join("hosts"),
            resolv: bundle.join("resolv.conf"),
            runc_log: bundle.join("runc.log"),
            bundle,
            upper: work_dir.join("upper"),
            work: work_dir.join("work"),
        }
    }
}

fn io_err(what: &'static str, path: &Path) -> impl FnOnce(io::Error) -> Error {
    let path = path.to_owned();
    move |source| Error::Io { what, path, source }
}

/// Creates the bundle directories and mounts the overlay: the image is the read-only lower
/// layer shared by every container of that image, and all writes land in this run's upper dir.
/// No fallback to copying the image: that would be silently slow and use the disk N times.
pub(super) fn mount_overlay(image_rootfs: &Path, layout: &Layout) -> Result<()> {
    for dir in [&layout.rootfs, &layout.upper, &layout.work] {
        std::fs::create_dir_all(dir).map_err(io_err("create directory", dir))?;
    }
    for p in [image_rootfs, &layout.upper, &layout.work] {
        // Overlay's option string has no escaping we could rely on across kernels.
        if p.to_string_lossy().contains([',', ':', '\\']) {
            return Err(Error::InvalidSpec(format!(
                "path {} contains ',', ':' or '\\', which overlayfs options cannot express",
                p.display()
            )));
        }
    }
    let data = format!(
        "lowerdir={},upperdir={},workdir={}",
        image_rootfs.display(),
        layout.upper.display(),
        layout.work.display()
    );
    let data = std::ffi::CString::new(data)
        .map_err(|_| Error::InvalidSpec("a rootfs path contains a NUL byte".into()))?;
    mount(
        "overlay",
        &layout.rootfs,
        "overlay",
        MountFlags::empty(),
        data.as_c_str(),
    )
    .map_err(|e| Error::Overlay {
        target: layout.rootfs.clone(),
        source: e.into(),
    })?;
    debug!(rootfs = %layout.rootfs.display(), "overlay mounted");
    Ok(())
}

/// Writes the files bind-mounted over `/etc/hosts` and `/etc/resolv.conf`: the pod's own
/// (from its network and `dnsPolicy`) when the agent gives them; otherwise, on the host
/// network, the host's resolver configuration, and a hosts file with localhost and the pod's
/// own name.
pub(super) fn write_etc_files(
    layout: &Layout,
    hostname: &str,
    resolv: Option<&str>,
    hosts: Option<&str>,
) -> Result<()> {
    let hosts = hosts.map(str::to_owned).unwrap_or_else(|| {
        format!(
            "127.0.0.1\tlocalhost\n::1\tlocalhost ip6-localhost ip6-loopback\n127.0.1.1\t{hostname}\n"
        )
    });
    std::fs::write(&layout.hosts, hosts).map_err(io_err("write", &layout.hosts))?;
    let resolv = match resolv {
        Some(text) => text.as_bytes().to_vec(),
        None => match std::fs::read("/etc/resolv.conf") {
            Ok(b) => b,
            Err(e) => {
                warn!(error = %e, "cannot read the host's /etc/resolv.conf; containers get an empty one");
                Vec::new()
            }
        },
    };
    std::fs::write(&layout.resolv, resolv).map_err(io_err("write", &layout.resolv))
}

/// Undoes everything a run (or a crashed earlier run with the same id) left: runc's container
/// and cgroups, the overlay mount, the bundle and overlay dirs. Synchronous so `Drop` can use
/// it; every step is attempted even if an earlier one failed, and the first error is returned.
pub(super) fn cleanup_blocking(runc: &Runc, id: &str, layout: &Layout) -> Result<()> {
    let mut first: Option<Error> = None;
    let mut note = |e: Error| {
        warn!(container = id, error = %e, "cleanup step failed");
        first.get_or_insert(e);
    };
    if let Err(e) = runc::delete_force_blocking(runc, id) {
        note(e);
    }
    let mounted = match is_mount_point(&layout.rootfs) {
        Ok(m) => m,
        Err(e) => {
            note(Error::Io {
                what: "read",
                path: "/proc/self/mountinfo".into(),
                source: e,
            });
            true
        }
    };
    let mut unmounted = !mounted;
    if mounted {
        match unmount(&layout.rootfs, UnmountFlags::empty()) {
            Ok(()) => unmounted = true,
            // Something (a shell cd'ed into it, a late runc) still holds it: detach it now,
            // the kernel frees it when the last user goes.
            Err(rustix::io::Errno::BUSY) => match unmount(&layout.rootfs, UnmountFlags::DETACH) {
                Ok(()) => unmounted = true,
                Err(e) => note(Error::Unmount {
                    target: layout.rootfs.clone(),
                    source: e.into(),
                }),
            },
            Err(e) => note(Error::Unmount {
                target: layout.rootfs.clone(),
                source: e.into(),
            }),
        }
    }
    // Never remove files through a live mount: with the overlay still there, "removing" the
    // rootfs would only add whiteouts, and a bind mount inside could reach host files.
    if unmounted {
        for dir in [&layout.bundle, &layout.upper, &layout.work] {
            match std::fs::remove_dir_all(dir) {
                Ok(()) => {}
                Err(e) if e.kind() == io::ErrorKind::NotFound => {}
                Err(e) => note(Error::Io {
                    what: "remove",
                    path: dir.clone(),
                    source: e,
                }),
            }
        }
    }
    match first {
        None => Ok(()),
        Some(e) => Err(e),
    }
}

/// Whether `path` (canonical) is a mount point in our mount namespace.
pub(super) fn is_mount_point(path: &Path) -> io::Result<bool> {
    let info = std::fs::read_to_string("/proc/self/mountinfo")?;
    let want = path.to_string_lossy();
    Ok(info
        .lines()
        .filter_map(|l| l.split(' ').nth(4))
        .any(|m| unescape_mountinfo(m) == want))
}

/// mountinfo escapes space, tab, newline and backslash as `\ooo`.
fn unescape_mountinfo(s: &str) -> String {
    let b = s.as_bytes();
    let mut out = Vec::with_capacity(b.len());
    let mut i = 0;
    while i < b.len() {
        if b[i] == b'\\'
            && i + 3 < b.len()
            && b[i + 1..i + 4].iter().all(|c| (b'0'..=b'7').contains(c))
        {
            out.push((b[i + 1] - b'0') * 64 + (b[i + 2] - b'0') * 8 + (b[i + 3] - b'0'));
            i += 4;
        } else {
            out.push(b[i]);
            i += 1;
        }
    }
    String::from_utf8_lossy(&out).into_owned()
}

/// Which cgroup layout the host has; decided once in `detect`.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub(super) enum Cgroups {
    /// v1 (or hybrid) with a memory hierarchy; `memsw` when swap accounting is on.
    V1 {
        memsw: bool,
    },
    V2,
    /// No memory controller we can read: OOM kills cannot be told apart from other SIGKILLs.
    Unknown,
}

const CGROUP_ROOT: &str = "/sys/fs/cgroup";

impl Cgroups {
    pub fn detect() -> Self {
        let root = Path::new(CGROUP_ROOT);
        if root.join("memory/memory.limit_in_bytes").exists() {
            Cgroups::V1 {
                memsw: root.join("memory/memory.memsw.limit_in_bytes").exists(),
            }
        } else if root.join("cgroup.controllers").exists() {
            Cgroups::V2
        } else {
            Cgroups::Unknown
        }
    }

    /// The memory cgroup directory runc uses for `cgroups_path`. runc resolves a relative path
    /// against its own cgroup, which is ours (it is our child).
    pub fn memory_dir(self, cgroups_path: &str) -> Option<PathBuf> {
        self.controller_dir("memory", cgroups_path)
    }

    /// The directory of `controller` (v1's hierarchy of that name; v2's one tree) runc uses
    /// for `cgroups_path`.
    pub fn controller_dir(self, controller: &str, cgroups_path: &str) -> Option<PathBuf> {
        let (base, controller) = match self {
            Cgroups::V1 { .. } => (Path::new(CGROUP_ROOT).join(controller), Some(controller)),
            Cgroups::V2 => (PathBuf::from(CGROUP_ROOT), None),
            Cgroups::Unknown => return None,
        };
        if let Some(abs) = cgroups_path.strip_prefix('/') {
            return Some(base.join(abs));
        }
        let own = std::fs::read_to_string("/proc/self/cgroup").ok()?;
        let own = own.lines().find_map(|l| {
            let mut f = l.splitn(3, ':');
            let (_, ctrls, path) = (f.next()?, f.next()?, f.next()?);
            let hit = match controller {
                Some(c) => ctrls.split(',').any(|x| x == c),
                None => ctrls.is_empty(),
            };
            hit.then(|| path.trim_start_matches('/').to_owned())
        })?;
        Some(base.join(own).join(cgroups_path))
    }

    /// How many times the OOM killer fired in the container's memory cgroup; read before
    /// `runc delete` removes the cgroup. `None` when unknown.
    pub fn oom_kills(self, cgroups_path: &str) -> Option<u64> {
        let dir = self.memory_dir(cgroups_path)?;
        let (file, key) = match self {
            Cgroups::V1 { .. } => ("memory.oom_control", "oom_kill"),
            _ => ("memory.events", "oom_kill"),
        };
        let text = std::fs::read_to_string(dir.join(file)).ok()?;
        text.lines().find_map(|l| {
            let (k, v) = l.split_once(' ')?;
            (k == key).then(|| v.trim().parse().ok())?
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn unescapes_mountinfo_paths() {
        assert_eq!(unescape_mountinfo(r"/a\040b\134c"), r"/a b\c");
        assert_eq!(unescape_mountinfo(r"/plain\04"), r"/plain\04");
    }
}
