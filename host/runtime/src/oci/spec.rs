//! The pure part of the OCI runtime: validating a [`ContainerSpec`], resolving the image user,
//! and rendering runc's `config.json` (OCI runtime spec 1.0). No I/O except reading the image's
//! `/etc/passwd` and `/etc/group`, so most of it is unit-tested without root.

use std::io::Read as _;
use std::path::Path;

use serde_json::{Value, json};

use super::{ContainerSpec, MountSource};
use crate::{Error, Result};

/// Used when the image and the pod set no `PATH`, as Docker and containerd do.
const DEFAULT_PATH: &str = "/usr/local/sbin:/usr/local/bin:/usr/sbin:/usr/bin:/sbin:/bin";

/// CFS period; 100 ms is the kernel default and what kubelet uses.
const CFS_PERIOD_US: u64 = 100_000;
/// The kernel refuses quotas below 1 ms.
const MIN_CFS_QUOTA_US: u64 = 1_000;

/// Docker's default capability set: enough for ordinary images (chown, setuid to drop root,
/// binding low ports) while keeping the dangerous ones (SYS_ADMIN, NET_ADMIN, ...) out.
const DEFAULT_CAPS: &[&str] = &[
    "CAP_CHOWN",
    "CAP_DAC_OVERRIDE",
    "CAP_FSETID",
    "CAP_FOWNER",
    "CAP_MKNOD",
    "CAP_NET_RAW",
    "CAP_SETGID",
    "CAP_SETUID",
    "CAP_SETFCAP",
    "CAP_SETPCAP",
    "CAP_NET_BIND_SERVICE",
    "CAP_SYS_CHROOT",
    "CAP_KILL",
    "CAP_AUDIT_WRITE",
];

/// The default set, less `drop` (`ALL`: every one), plus `add`, as runc names them.
pub(super) fn capabilities(add: &[String], drop: &[String]) -> Vec<String> {
    let name = |c: &str| {
        let c = c.trim().to_ascii_uppercase();
        if c.starts_with("CAP_") {
            c
        } else {
            format!("CAP_{c}")
        }
    };
    let drop: Vec<String> = drop.iter().map(|c| name(c)).collect();
    let mut caps: Vec<String> = if drop.iter().any(|c| c == "CAP_ALL") {
        Vec::new()
    } else {
        DEFAULT_CAPS
            .iter()
            .map(|c| c.to_string())
            .filter(|c| !drop.contains(c))
            .collect()
    };
    for c in add.iter().map(|c| name(c)) {
        if !caps.contains(&c) {
            caps.push(c);
        }
    }
    caps
}

/// Docker's masked paths: host information a container has no business reading.
const MASKED_PATHS: &[&str] = &[
    "/proc/asound",
    "/proc/acpi",
    "/proc/kcore",
    "/proc/keys",
    "/proc/latency_stats",
    "/proc/timer_list",
    "/proc/timer_stats",
    "/proc/sched_debug",
    "/proc/scsi",
    "/sys/firmware",
    "/sys/devices/virtual/powercap",
];

/// Docker's read-only paths: kernel knobs that would otherwise be writable by container root.
const READONLY_PATHS: &[&str] = &[
    "/proc/bus",
    "/proc/fs",
    "/proc/irq",
    "/proc/sys",
    "/proc/sysrq-trigger",
];

/// `/etc/passwd` and `/etc/group` bigger than this are not an image's; refuse rather than
/// buffer them.
const MAX_ETC_FILE: u64 = 1 << 20;

/// Checks what runc or the mount options could not express, so errors name the field at fault.
pub(super) fn validate(spec: &ContainerSpec) -> Result<()> {
    let invalid = |m: String| Err(Error::InvalidSpec(m));
    if spec.id.is_empty()
        || spec.id.len() > 200
        || spec.id == "."
        || spec.id == ".."
        || !spec
            .id
            .bytes()
            .all(|b| b.is_ascii_alphanumeric() || matches!(b, b'_' | b'.' | b'-'))
    {
        return invalid(format!(
            "container id {:?} must be 1-200 characters of [A-Za-z0-9_.-]",
            spec.id
        ));
    }
    if spec.args.is_empty() || spec.args[0].is_empty() {
        return invalid("args is empty: nothing to run".into());
    }
    for (k, v) in &spec.env {
        if k.is_empty() || k.contains('=') || k.contains('\0') || v.contains('\0') {
            return invalid(format!("environment variable name {k:?} is not valid"));
        }
    }
    if !spec.cwd.is_empty() && !spec.cwd.starts_with('/') {
        return invalid(format!("working directory {:?} is not absolute", spec.cwd));
    }
    for m in &spec.mounts {
        if !m.destination.starts_with('/') {
            return invalid(format!(
                "mount destination {:?} is not absolute",
                m.destination
            ));
        }
        if let MountSource::Bind { path, .. } = &m.source
            && !path.is_absolute()
        {
            return invalid(format!(
                "bind mount source {} is not absolute",
                path.display()
            ));
        }
    }
    if spec.cpu_limit_millis == Some(0) {
        return invalid("cpu limit of 0 millicores".into());
    }
    Ok(())
}

/// The process identity inside the container.
#[derive(Clone, Debug, PartialEq, Eq)]
pub(super) struct Identity {
    pub uid: u32,
    pub gid: u32,
    pub additional_gids: Vec<u32>,
    /// From the passwd entry, for a default `HOME`.
    pub home: Option<String>,
}

impl Identity {
    const ROOT: Identity = Identity {
        uid: 0,
        gid: 0,
        additional_gids: Vec::new(),
        home: None,
    };
}

struct PasswdEntry {
    name: String,
    uid: u32,
    gid: u32,
    home: String,
}

struct GroupEntry {
    name: String,
    gid: u32,
    members: Vec<String>,
}

/// Resolves the image config's `User` (`user`, `uid`, `user:group`, `uid:gid`, ...) against the
/// image's own `/etc/passwd` and `/etc/group`, the way Docker does: a numeric uid not in passwd
/// is fine (gid 0), a name that is not there is an error, and the user's supplementary groups
/// come from the group file.
pub(super) fn resolve_user(rootfs: &Path, user: Option<&str>) -> Result<Identity> {
    let Some(user) = user.map(str::trim).filter(|u| !u.is_empty()) else {
        return Ok(Identity::ROOT);
    };
    let err = |reason: String| Error::User {
        user: user.to_owned(),
        reason,
    };
    let (user_part, group_part) = match user.split_once(':') {
        Some((u, g)) => (u, Some(g)),
        None => (user, None),
    };
    let passwd = read_etc(rootfs, "passwd").map_err(&err)?;
    let passwd = parse_passwd(passwd.as_deref().unwrap_or(""));
    let entry = match user_part.parse::<u32>() {
        Ok(uid) => passwd.iter().find(|e| e.uid == uid),
        Err(_) => Some(
            passwd
                .iter()
                .find(|e| e.name == user_part)
                .ok_or_else(|| err(format!("no user {user_part:?} in the image's /etc/passwd")))?,
        ),
    };
    let uid = match user_part.parse::<u32>() {
        Ok(uid) => uid,
        Err(_) => entry.map_or(0, |e| e.uid),
    };
    let groups = read_etc(rootfs, "group").map_err(&err)?;
    let groups = parse_group(groups.as_deref().unwrap_or(""));
    let gid = match group_part {
        None => entry.map_or(0, |e| e.gid),
        Some(g) => match g.parse::<u32>() {
            Ok(gid) => gid,
            Err(_) => {
                groups
                    .iter()
                    .find(|e| e.name == g)
                    .ok_or_else(|| err(format!("no group {g:?} in the image's /etc/group")))?
                    .gid
            }
        },
    };
    let mut additional_gids = Vec::new();
    if let Some(e) = entry {
        for g in groups.iter().filter(|g| g.members.contains(&e.name)) {
            if g.gid != gid && !additional_gids.contains(&g.gid) {
                additional_gids.push(g.gid);
            }
        }
    }
    Ok(Identity {
        uid,
        gid,
        additional_gids,
        home: entry.map(|e| e.home.clone()).filter(|h| !h.is_empty()),
    })
}

/// Reads `<rootfs>/etc/<name>`; `None` when absent. A symlink is refused: it is resolved on the
/// host, so an image could point it at a host file.
fn read_etc(rootfs: &Path, name: &str) -> Result<Option<String>, String> {
    let path = rootfs.join("etc").join(name);
    let meta = match std::fs::symlink_metadata(&path) {
        Ok(m) => m,
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => return Ok(None),
        Err(e) => return Err(format!("cannot read /etc/{name}: {e}")),
    };
    if !meta.is_file() {
        return Err(format!("/etc/{name} in the image is not a regular file"));
    }
    let mut text = String::new();
    std::fs::File::open(&path)
        .and_then(|f| f.take(MAX_ETC_FILE).read_to_string(&mut text))
        .map_err(|e| format!("cannot read /etc/{name}: {e}"))?;
    Ok(Some(text))
}

fn parse_passwd(text: &str) -> Vec<PasswdEntry> {
    text.lines()
        .filter(|l| !l.starts_with('#'))
        .filter_map(|l| {
            let f: Vec<&str> = l.split(':').collect();
            Some(PasswdEntry {
                name: (*f.first()?).to_owned(),
                uid: f.get(2)?.parse().ok()?,
                gid: f.get(3)?.parse().ok()?,
                home: f.get(5).map_or_else(String::new, |h| (*h).to_owned()),
            })
        })
        .collect()
}

fn parse_group(text: &str) -> Vec<GroupEntry> {
    text.lines()
        .filter(|l| !l.starts_with('#'))
        .filter_map(|l| {
            let f: Vec<&str> = l.split(':').collect();
            Some(GroupEntry {
                name: (*f.first()?).to_owned(),
                gid: f.get(2)?.parse().ok()?,
                members: f
                    .get(3)
                    .map(|m| {
                        m.split(',')
                            .filter(|s| !s.is_empty())
                            .map(str::to_owned)
                            .collect()
                    })
                    .unwrap_or_default(),
            })
        })
        .collect()
}

/// Host-side details `config.json` refers to, decided by the caller.
pub(super) struct Host<'a> {
    /// Files bind-mounted over `/etc/hosts` and `/etc/resolv.conf`.
    pub hosts_file: &'a Path,
    pub resolv_file: &'a Path,
    pub cgroups_path: &'a str,
    /// Whether `memory.memsw.*` exists (cgroup v1 with swap accounting): then swap is capped
    /// at the memory limit, i.e. no swap, as kubelet does.
    pub swap_limit: bool,
    /// `RLIMIT_NOFILE` for the container process.
    pub nofile: u64,
    /// `tty: true`: runc gives the process a terminal inside the container, copied to and
    /// from runc's own stdio.
    pub terminal: bool,
}

/// Renders `config.json`.
///
/// The network namespace is the pod's (made by the agent through CNI, shared by its
/// containers) when the spec names one, else the host's (`hostNetwork: true`, or a node
/// without a pod network). Everything else follows what Docker/containerd give a plain
/// container, so images behave as they do there.
pub(super) fn config(spec: &ContainerSpec, ident: &Identity, host: &Host<'_>) -> Value {
    let caps = capabilities(
        &spec.security.add_capabilities,
        &spec.security.drop_capabilities,
    );
    let mut env: Vec<String> = spec.env.iter().map(|(k, v)| format!("{k}={v}")).collect();
    let has = |key: &str| spec.env.iter().any(|(k, _)| k == key);
    if !has("PATH") {
        env.push(format!("PATH={DEFAULT_PATH}"));
    }
    if !has("HOSTNAME") {
        env.push(format!("HOSTNAME={}", spec.hostname));
    }
    if !has("HOME") {
        env.push(format!("HOME={}", ident.home.as_deref().unwrap_or("/")));
    }
    let cwd = if spec.cwd.is_empty() { "/" } else { &spec.cwd };

    let mut mounts = vec![
        json!({"destination": "/proc", "type": "proc", "source": "proc"}),
        json!({"destination": "/dev", "type": "tmpfs", "source": "tmpfs",
               "options": ["nosuid", "strictatime", "mode=755", "size=65536k"]}),
        json!({"destination": "/dev/pts", "type": "devpts", "source": "devpts",
               "options": ["nosuid", "noexec", "newinstance", "ptmxmode=0666", "mode=0620", "gid=5"]}),
        json!({"destination": "/dev/shm", "type": "tmpfs", "source": "shm",
               "options": ["nosuid", "noexec", "nodev", "mode=1777", "size=65536k"]}),
        json!({"destination": "/dev/mqueue", "type": "mqueue", "source": "mqueue",
               "options": ["nosuid", "noexec", "nodev"]}),
        json!({"destination": "/sys", "type": "sysfs", "source": "sysfs",
               "options": ["nosuid", "noexec", "nodev", "ro"]}),
        json!({"destination": "/sys/fs/cgroup", "type": "cgroup", "source": "cgroup",
               "options": ["nosuid", "noexec", "nodev", "relatime", "ro"]}),
        // runc creates missing targets inside the merged rootfs, i.e. in the overlay's upper
        // dir: the shared image stays untouched.
        json!({"destination": "/etc/hosts", "type": "bind", "source": host.hosts_file,
               "options": ["rbind", "rprivate", "rw"]}),
        json!({"destination": "/etc/resolv.conf", "type": "bind", "source": host.resolv_file,
               "options": ["rbind", "rprivate", "rw"]}),
    ];
    for m in &spec.mounts {
        mounts.push(match &m.source {
            MountSource::Bind { path, read_only } => json!({
                "destination": m.destination, "type": "bind", "source": path,
                "options": ["rbind", "rprivate", if *read_only { "ro" } else { "rw" }],
            }),
            MountSource::Tmpfs { size } => {
                let mut options = vec![
                    "nosuid".to_owned(),
                    "nodev".to_owned(),
                    "mode=1777".to_owned(),
                ];
                if let Some(size) = size {
                    options.push(format!("size={size}"));
                }
                json!({"destination": m.destination, "type": "tmpfs", "source": "tmpfs",
                       "options": options})
            }
        });
    }

    let mut resources = json!({
        // Deny all devices; runc adds the standard ones (null, zero, random, tty, ...).
        "devices": [{"allow": false, "access": "rwm"}],
    });
    if let Some(limit) = spec.memory_limit {
        let mut memory = json!({"limit": limit});
        if host.swap_limit {
            memory["swap"] = json!(limit);
        }
        resources["memory"] = memory;
    }
    let mut cpu = serde_json::Map::new();
    if let Some(millis) = spec.cpu_limit_millis {
        let quota = (millis.saturating_mul(CFS_PERIOD_US) / 1000).max(MIN_CFS_QUOTA_US);
        cpu.insert("quota".into(), json!(quota));
        cpu.insert("period".into(), json!(CFS_PERIOD_US));
    }
    if let Some(shares) = spec.cpu_shares {
        cpu.insert("shares".into(), json!(shares.max(2)));
    }
    if !cpu.is_empty() {
        resources["cpu"] = Value::Object(cpu);
    }

    let mut namespaces = vec![
        json!({"type": "pid"}),
        json!({"type": "ipc"}),
        json!({"type": "uts"}),
        json!({"type": "mount"}),
    ];
    if let Some(ns) = &spec.netns {
        namespaces.push(json!({"type": "network", "path": ns}));
    }
    json!({
        "ociVersion": "1.0.2",
        "process": {
            "terminal": host.terminal,
            "user": {
                "uid": ident.uid,
                "gid": ident.gid,
                "additionalGids": ident.additional_gids,
            },
            "args": spec.args,
            "env": env,
            "cwd": cwd,
            "capabilities": {
                "bounding": caps,
                "effective": caps,
                "permitted": caps,
            },
            "rlimits": [{"type": "RLIMIT_NOFILE", "hard": host.nofile, "soft": host.nofile}],
            "noNewPrivileges": spec.security.no_new_privileges,
        },
        "root": {"path": "rootfs", "readonly": spec.security.read_only_rootfs},
        "hostname": spec.hostname,
        "mounts": mounts,
        "linux": {
            "namespaces": namespaces,
            "resources": resources,
            "cgroupsPath": host.cgroups_path,
            "maskedPaths": MASKED_PATHS,
            "readonlyPaths": READONLY_PATHS,
        },
    })
}

#[cfg(test)]
mod tests {
    use std::path::PathBuf;
    use std::time::Duration;

    use super::*;
    use crate::oci::Mount;

    fn spec() -> ContainerSpec {
        ContainerSpec {
            id: "pod-c-0".into(),
            image_rootfs: PathBuf::from("/img"),
            work_dir: PathBuf::from("/work"),
            args: vec!["/bin/app".into(), "--flag".into()],
            env: vec![("FOO".into(), "bar".into())],
            cwd: String::new(),
            user: None,
            hostname: "pod".into(),
            mounts: vec![
                Mount {
                    destination: "/data".into(),
                    source: MountSource::Bind {
                        path: "/srv/data".into(),
                        read_only: true,
                    },
                },
                Mount {
                    destination: "/scratch".into(),
                    source: MountSource::Tmpfs {
                        size: Some(1 << 20),
                    },
                },
            ],
            memory_limit: Some(64 << 20),
            cpu_limit_millis: Some(250),
            cpu_shares: Some(1),
            log_path: PathBuf::from("/logs/0.log"),
            log_rotation: Default::default(),
            grace_period: crate::oci::fixed_grace(Duration::from_secs(30)),
            post_start: None,
            pre_stop: None,
            security: Default::default(),
            netns: None,
            resolv_conf: None,
            hosts: None,
        }
    }

    fn host() -> Host<'static> {
        Host {
            hosts_file: Path::new("/work/bundle/hosts"),
            resolv_file: Path::new("/work/bundle/resolv.conf"),
            cgroups_path: "/kedge/pod-c-0",
            swap_limit: true,
            nofile: 1 << 20,
            terminal: false,
        }
    }

    #[test]
    fn renders_process_resources_and_mounts() {
        let v = config(&spec(), &Identity::ROOT, &host());
        assert_eq!(v["process"]["args"], json!(["/bin/app", "--flag"]));
        assert_eq!(v["process"]["cwd"], "/");
        let env: Vec<&str> = v["process"]["env"]
            .as_array()
            .unwrap()
            .iter()
            .map(|e| e.as_str().unwrap())
            .collect();
        assert!(env.contains(&"FOO=bar"));
        assert!(env.contains(&format!("PATH={DEFAULT_PATH}").as_str()));
        assert!(env.contains(&"HOSTNAME=pod") && env.contains(&"HOME=/"));
        let r = &v["linux"]["resources"];
        assert_eq!(r["memory"], json!({"limit": 64 << 20, "swap": 64 << 20}));
        assert_eq!(
            r["cpu"],
            json!({"quota": 25_000, "period": 100_000, "shares": 2})
        );
        assert_eq!(v["linux"]["cgroupsPath"], "/kedge/pod-c-0");
        let ns = v["linux"]["namespaces"].as_array().unwrap();
        assert!(!ns.iter().any(|n| n["type"] == "network"), "host network");
        // With a pod network, the pod's namespace is joined by path (all its containers).
        let mut with_net = spec();
        with_net.netns = Some(PathBuf::from("/run/netns/kedge-u1"));
        let v2 = config(&with_net, &Identity::ROOT, &host());
        assert!(
            v2["linux"]["namespaces"]
                .as_array()
                .unwrap()
                .contains(&json!({"type": "network", "path": "/run/netns/kedge-u1"}))
        );
        let mounts = v["mounts"].as_array().unwrap();
        let data = mounts.iter().find(|m| m["destination"] == "/data").unwrap();
        assert_eq!(data["options"], json!(["rbind", "rprivate", "ro"]));
        let scratch = mounts
            .iter()
            .find(|m| m["destination"] == "/scratch")
            .unwrap();
        assert_eq!(
            scratch["options"],
            json!(["nosuid", "nodev", "mode=1777", "size=1048576"])
        );
    }

    #[test]
    fn image_path_wins_over_default() {
        let mut s = spec();
        s.env.push(("PATH".into(), "/opt/bin".into()));
        let v = config(&s, &Identity::ROOT, &host());
        let paths = v["process"]["env"]
            .as_array()
            .unwrap()
            .iter()
            .filter(|e| e.as_str().unwrap().starts_with("PATH="))
            .count();
        assert_eq!(paths, 1);
    }

    #[test]
    fn validation_names_the_bad_field() {
        let mut s = spec();
        s.id = "a/b".into();
        assert!(matches!(validate(&s), Err(Error::InvalidSpec(m)) if m.contains("container id")));
        let mut s = spec();
        s.args.clear();
        assert!(matches!(validate(&s), Err(Error::InvalidSpec(m)) if m.contains("args")));
        let mut s = spec();
        s.mounts[0].destination = "data".into();
        assert!(matches!(validate(&s), Err(Error::InvalidSpec(m)) if m.contains("destination")));
        assert!(validate(&spec()).is_ok());
    }

    #[test]
    fn resolves_users_like_docker() {
        let dir = tempfile::tempdir().unwrap();
        let etc = dir.path().join("etc");
        std::fs::create_dir(&etc).unwrap();
        std::fs::write(
            etc.join("passwd"),
            "root:x:0:0:root:/root:/bin/sh\napp:x:1000:1001::/home/app:/bin/sh\n",
        )
        .unwrap();
        std::fs::write(
            etc.join("group"),
            "root:x:0:\napp:x:1001:\nextra:x:2000:app,other\nstaff:x:50:\n",
        )
        .unwrap();
        let r = |u: &str| resolve_user(dir.path(), Some(u));
        let app = r("app").unwrap();
        assert_eq!((app.uid, app.gid), (1000, 1001));
        assert_eq!(app.additional_gids, vec![2000]);
        assert_eq!(app.home.as_deref(), Some("/home/app"));
        assert_eq!(r("1000:1000").unwrap().gid, 1000);
        assert_eq!(r("1000").unwrap().gid, 1001);
        let stranger = r("4242").unwrap();
        assert_eq!((stranger.uid, stranger.gid), (4242, 0));
        assert_eq!(r("app:staff").unwrap().gid, 50);
        assert!(matches!(r("nobody"), Err(Error::User { .. })));
        assert!(matches!(r("app:nogroup"), Err(Error::User { .. })));
        assert_eq!(resolve_user(dir.path(), None).unwrap(), Identity::ROOT);
    }

    #[test]
    fn capabilities_drop_then_add() {
        let v = |a: &[&str]| a.iter().map(|s| s.to_string()).collect::<Vec<_>>();
        assert_eq!(capabilities(&[], &[]), v(DEFAULT_CAPS));
        assert_eq!(
            capabilities(&v(&["net_bind_service"]), &v(&["ALL"])),
            v(&["CAP_NET_BIND_SERVICE"])
        );
        let caps = capabilities(&v(&["NET_ADMIN"]), &v(&["CAP_NET_RAW", "CHOWN"]));
        assert!(caps.contains(&"CAP_NET_ADMIN".to_string()));
        assert!(
            !caps.contains(&"CAP_NET_RAW".to_string()) && !caps.contains(&"CAP_CHOWN".to_string())
        );
        assert_eq!(caps.len(), DEFAULT_CAPS.len() - 1);
        let mut spec = spec();
        spec.security = crate::oci::Security {
            no_new_privileges: true,
            read_only_rootfs: true,
            drop_capabilities: v(&["ALL"]),
            ..Default::default()
        };
        let c = config(&spec, &Identity::ROOT, &host());
        assert_eq!(c["process"]["noNewPrivileges"], true);
        assert_eq!(c["root"]["readonly"], true);
        assert_eq!(
            c["process"]["capabilities"]["bounding"],
            serde_json::json!([])
        );
    }

    #[test]
    fn refuses_symlinked_passwd() {
        let dir = tempfile::tempdir().unwrap();
        let etc = dir.path().join("etc");
        std::fs::create_dir(&etc).unwrap();
        std::os::unix::fs::symlink("/etc/passwd", etc.join("passwd")).unwrap();
        assert!(matches!(
            resolve_user(dir.path(), Some("root")),
            Err(Error::User { reason, .. }) if reason.contains("not a regular file")
        ));
    }
}
