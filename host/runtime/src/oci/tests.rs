//! Real containers: these need root and runc, and build a busybox image in a temp dir (never
//! downloading anything). Without runc (or root) they print why and pass.

use std::path::{Path, PathBuf};
use std::time::Duration;

use tempfile::TempDir;

use super::*;
use crate::logs::parse_record;

/// Bound on any single container run in these tests.
const RUN_TIMEOUT: Duration = Duration::from_secs(20);

struct Fixture {
    dir: TempDir,
    image: PathBuf,
    rt: OciRuntime,
}

impl Fixture {
    fn path(&self) -> &Path {
        self.dir.path()
    }
}

/// A runtime with a private runc root, and a busybox image with users `app` (1000, member of
/// `extra` 2000).
fn fixture() -> Option<Fixture> {
    if find_in_path("runc", std::env::var_os("PATH").as_deref()).is_none()
        && std::env::var_os("KEDGE_RUNC").is_none()
    {
        eprintln!("skipping: runc is not installed (not in PATH, KEDGE_RUNC unset)");
        return None;
    }
    if !rustix::process::geteuid().is_root() {
        eprintln!("skipping: the oci runtime tests need root");
        return None;
    }
    let busybox = Path::new("/bin/busybox");
    assert!(
        busybox.exists(),
        "runc is here but /bin/busybox is not: install busybox-static"
    );
    let dir = tempfile::tempdir().unwrap();
    let image = dir.path().join("image");
    let bin = image.join("bin");
    std::fs::create_dir_all(&bin).unwrap();
    std::fs::copy(busybox, bin.join("busybox")).unwrap();
    let list = std::process::Command::new(busybox)
        .arg("--list")
        .output()
        .unwrap();
    for applet in String::from_utf8(list.stdout).unwrap().lines() {
        if applet != "busybox" {
            std::os::unix::fs::symlink("busybox", bin.join(applet)).unwrap();
        }
    }
    let etc = image.join("etc");
    std::fs::create_dir_all(&etc).unwrap();
    std::fs::write(
        etc.join("passwd"),
        "root:x:0:0:root:/root:/bin/sh\napp:x:1000:1000::/home/app:/bin/sh\n",
    )
    .unwrap();
    std::fs::write(
        etc.join("group"),
        "root:x:0:\napp:x:1000:\nextra:x:2000:app\n",
    )
    .unwrap();
    let tmp = image.join("tmp");
    std::fs::create_dir(&tmp).unwrap();
    std::fs::set_permissions(&tmp, std::fs::Permissions::from_mode(0o1777)).unwrap();
    let rt = OciRuntime::detect(&dir.path().join("runc-root"))
        .expect("runc is installed, so the runtime must come up")
        // Relative: containers nest under this process's cgroup and stay in the sandbox.
        .with_cgroup_parent("kedge-test");
    Some(Fixture { dir, image, rt })
}

fn spec(f: &Fixture, name: &str, script: &str) -> ContainerSpec {
    let base = f.path().join(name);
    ContainerSpec {
        id: format!("kt{}-{name}", std::process::id()),
        image_rootfs: f.image.clone(),
        work_dir: base.join("work"),
        args: vec!["sh".into(), "-c".into(), script.into()],
        env: Vec::new(),
        cwd: String::new(),
        user: None,
        hostname: "testpod".into(),
        mounts: Vec::new(),
        memory_limit: None,
        cpu_limit_millis: None,
        cpu_shares: None,
        log_path: base.join("0.log"),
        log_rotation: Default::default(),
        grace_period: crate::oci::fixed_grace(Duration::from_secs(1)),
        post_start: None,
        pre_stop: None,
        security: Default::default(),
        netns: None,
        resolv_conf: None,
        hosts: None,
    }
}

async fn run(f: &Fixture, spec: ContainerSpec, cancel: CancellationToken) -> Result<Exit> {
    tokio::time::timeout(RUN_TIMEOUT, f.rt.run(spec, cancel))
        .await
        .expect("container run finished in time")
}

fn log_lines(path: &Path) -> Vec<(StreamKind, String)> {
    let text = std::fs::read(path).unwrap_or_default();
    text.split(|&b| b == b'\n')
        .filter(|l| !l.is_empty())
        .map(|l| {
            let r = parse_record(l).expect("valid CRI record");
            (r.stream, String::from_utf8_lossy(r.text).into_owned())
        })
        .collect()
}

fn stdout(path: &Path) -> Vec<String> {
    log_lines(path)
        .into_iter()
        .filter(|(s, _)| *s == StreamKind::Stdout)
        .map(|(_, t)| t)
        .collect()
}

/// Polls the log until `line` shows up on stdout (bounded).
async fn wait_for_line(path: &Path, line: &str) {
    for _ in 0..250 {
        if stdout(path).iter().any(|l| l == line) {
            return;
        }
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    panic!("{line:?} never appeared in {}", path.display());
}

/// Asserts nothing of the run is left: runc state, mount, cgroup, bundle.
async fn assert_cleaned_up(f: &Fixture, spec: &ContainerSpec) {
    assert_eq!(f.rt.runc.state(&spec.id).await.unwrap(), None, "runc state");
    let work = std::fs::canonicalize(&spec.work_dir).unwrap();
    let mountinfo = std::fs::read_to_string("/proc/self/mountinfo").unwrap();
    assert!(
        !mountinfo.contains(work.to_str().unwrap()),
        "mount left under {}",
        work.display()
    );
    let cg =
        f.rt.cgroups
            .memory_dir(&format!("kedge-test/{}", spec.id))
            .unwrap();
    assert!(!cg.exists(), "cgroup {} left", cg.display());
    let layout = Layout::new(&work);
    for d in [&layout.bundle, &layout.upper, &layout.work] {
        assert!(!d.exists(), "{} left", d.display());
    }
}

/// Every path with its size, to prove the image was not written.
fn snapshot(root: &Path) -> Vec<(PathBuf, u64)> {
    let mut out = Vec::new();
    let mut stack = vec![root.to_owned()];
    while let Some(dir) = stack.pop() {
        for e in std::fs::read_dir(&dir).unwrap() {
            let e = e.unwrap();
            let meta = e.path().symlink_metadata().unwrap();
            if meta.is_dir() {
                stack.push(e.path());
            }
            out.push((e.path(), meta.len()));
        }
    }
    out.sort();
    out
}

#[tokio::test]
async fn exit_codes_and_output_reach_the_cri_log() {
    let Some(f) = fixture() else { return };
    let s = spec(
        &f,
        "codes",
        "echo out; echo err >&2; printf partial; exit 3",
    );
    let log = s.log_path.clone();
    assert_eq!(
        run(&f, s.clone(), CancellationToken::new()).await.unwrap(),
        Exit::Code(3)
    );
    let lines = log_lines(&log);
    assert!(
        lines.contains(&(StreamKind::Stdout, "out".into())),
        "{lines:?}"
    );
    assert!(
        lines.contains(&(StreamKind::Stderr, "err".into())),
        "{lines:?}"
    );
    assert!(
        lines.contains(&(StreamKind::Stdout, "partial".into())),
        "{lines:?}"
    );
    assert_cleaned_up(&f, &s).await;

    let ok = spec(&f, "zero", "true");
    assert_eq!(
        run(&f, ok, CancellationToken::new()).await.unwrap(),
        Exit::Code(0)
    );
}

#[tokio::test]
async fn env_args_cwd_and_hostname_are_applied() {
    let Some(f) = fixture() else { return };
    let mut s = spec(
        &f,
        "env",
        r#"echo "$FOO|$1|$(pwd)|$(hostname)|$HOME|$PATH""#,
    );
    s.args.extend(["argv0".into(), "first arg".into()]);
    s.env.push(("FOO".into(), "bar baz".into()));
    s.cwd = "/tmp".into();
    let log = s.log_path.clone();
    assert_eq!(
        run(&f, s, CancellationToken::new()).await.unwrap(),
        Exit::Code(0)
    );
    assert_eq!(
        stdout(&log),
        vec![format!(
            "bar baz|first arg|/tmp|testpod|/|{}",
            "/usr/local/sbin:/usr/local/bin:/usr/sbin:/usr/bin:/sbin:/bin"
        )]
    );
}

#[tokio::test]
async fn user_is_resolved_from_the_image() {
    let Some(f) = fixture() else { return };
    let mut s = spec(&f, "uid", "id -u; id -g");
    s.user = Some("1000:1000".into());
    let log = s.log_path.clone();
    assert_eq!(
        run(&f, s, CancellationToken::new()).await.unwrap(),
        Exit::Code(0)
    );
    assert_eq!(stdout(&log), vec!["1000", "1000"]);

    let mut s = spec(&f, "named", "id -G; echo $HOME");
    s.user = Some("app".into());
    let log = s.log_path.clone();
    assert_eq!(
        run(&f, s, CancellationToken::new()).await.unwrap(),
        Exit::Code(0)
    );
    assert_eq!(stdout(&log), vec!["1000 2000", "/home/app"]);

    let mut s = spec(&f, "nobody", "true");
    s.user = Some("nobody".into());
    let err = run(&f, s, CancellationToken::new()).await.unwrap_err();
    assert!(matches!(err, Error::User { .. }), "{err}");
}

#[tokio::test]
async fn bind_mounts_and_tmpfs_are_visible() {
    let Some(f) = fixture() else { return };
    let ro = f.path().join("ro-vol");
    let rw = f.path().join("rw-vol");
    std::fs::create_dir_all(&ro).unwrap();
    std::fs::create_dir_all(&rw).unwrap();
    std::fs::write(ro.join("file"), "hello\n").unwrap();
    let mut s = spec(
        &f,
        "mounts",
        "cat /ro/file; \
         if touch /ro/x 2>/dev/null; then echo ro-writable; else echo ro-refused; fi; \
         echo written > /rw/out; \
         grep ' /scratch ' /proc/mounts | cut -d' ' -f3",
    );
    s.mounts = vec![
        Mount {
            destination: "/ro".into(),
            source: MountSource::Bind {
                path: ro.clone(),
                read_only: true,
            },
        },
        Mount {
            destination: "/rw".into(),
            source: MountSource::Bind {
                path: rw.clone(),
                read_only: false,
            },
        },
        Mount {
            destination: "/scratch".into(),
            source: MountSource::Tmpfs {
                size: Some(1 << 20),
            },
        },
    ];
    let log = s.log_path.clone();
    assert_eq!(
        run(&f, s, CancellationToken::new()).await.unwrap(),
        Exit::Code(0)
    );
    assert_eq!(stdout(&log), vec!["hello", "ro-refused", "tmpfs"]);
    assert_eq!(
        std::fs::read_to_string(rw.join("out")).unwrap(),
        "written\n"
    );
    assert!(!ro.join("x").exists());
}

#[tokio::test]
async fn writes_go_to_the_upper_dir_and_the_image_is_untouched() {
    let Some(f) = fixture() else { return };
    let before = snapshot(&f.image);
    let s = spec(
        &f,
        "upper",
        "echo data > /newfile; echo more >> /etc/passwd; rm /bin/ls; touch /ready; \
         trap 'exit 0' TERM; while :; do sleep 0.05; done",
    );
    let upper = std::fs::canonicalize(f.path())
        .unwrap()
        .join("upper/work/upper");
    let cancel = CancellationToken::new();
    let checker = {
        let cancel = cancel.clone();
        async move {
            let mut seen = false;
            for _ in 0..250 {
                if upper.join("ready").exists() {
                    seen = true;
                    break;
                }
                tokio::time::sleep(Duration::from_millis(20)).await;
            }
            assert!(seen, "container never wrote /ready to {}", upper.display());
            assert_eq!(
                std::fs::read_to_string(upper.join("newfile")).unwrap(),
                "data\n"
            );
            assert!(
                upper.join("etc/passwd").exists(),
                "copy-up of a changed file"
            );
            assert!(upper.join("bin/ls").exists(), "whiteout of a deleted file");
            cancel.cancel();
        }
    };
    let (exit, ()) = tokio::join!(run(&f, s.clone(), cancel), checker);
    assert_eq!(exit.unwrap(), Exit::Code(0));
    assert_eq!(snapshot(&f.image), before, "image rootfs changed");
    assert_cleaned_up(&f, &s).await;
}

#[tokio::test]
async fn cancel_with_a_term_handler_exits_gracefully() {
    let Some(f) = fixture() else { return };
    let mut s = spec(
        &f,
        "graceful",
        "trap 'echo got-term; exit 0' TERM; echo ready; while :; do sleep 0.05; done",
    );
    s.grace_period = crate::oci::fixed_grace(Duration::from_secs(5));
    let log = s.log_path.clone();
    let cancel = CancellationToken::new();
    let stopper = {
        let (log, cancel) = (log.clone(), cancel.clone());
        async move {
            wait_for_line(&log, "ready").await;
            cancel.cancel();
            Instant::now()
        }
    };
    let (exit, cancelled_at) = tokio::join!(run(&f, s.clone(), cancel), stopper);
    assert_eq!(exit.unwrap(), Exit::Code(0));
    assert!(
        cancelled_at.elapsed() < Duration::from_secs(4),
        "no grace wait"
    );
    assert!(stdout(&log).contains(&"got-term".to_owned()));
    assert_cleaned_up(&f, &s).await;
}

#[tokio::test]
async fn cancel_ignoring_term_is_killed_after_the_grace_period() {
    let Some(f) = fixture() else { return };
    let s = spec(
        &f,
        "stubborn",
        "trap '' TERM; echo ready; while :; do sleep 0.05; done",
    );
    let log = s.log_path.clone();
    let cancel = CancellationToken::new();
    let stopper = {
        let cancel = cancel.clone();
        async move {
            wait_for_line(&log, "ready").await;
            cancel.cancel();
            Instant::now()
        }
    };
    let (exit, cancelled_at) = tokio::join!(run(&f, s.clone(), cancel), stopper);
    let took = cancelled_at.elapsed();
    assert_eq!(exit.unwrap(), Exit::Killed);
    assert!(
        took >= Duration::from_secs(1),
        "killed before grace: {took:?}"
    );
    assert!(took < Duration::from_secs(6), "too slow: {took:?}");
    assert_cleaned_up(&f, &s).await;
}

/// A shorter grace period given while the container is already stopping takes over (a second
/// `kubectl delete --grace-period`, or the agent shutting down).
#[tokio::test]
async fn grace_period_shortened_while_stopping_takes_over() {
    let Some(f) = fixture() else { return };
    let mut s = spec(
        &f,
        "shortened",
        "trap '' TERM; echo ready; while :; do sleep 0.05; done",
    );
    let (grace_tx, grace_rx) = tokio::sync::watch::channel(Duration::from_secs(60));
    s.grace_period = grace_rx;
    let log = s.log_path.clone();
    let cancel = CancellationToken::new();
    let stopper = {
        let cancel = cancel.clone();
        async move {
            wait_for_line(&log, "ready").await;
            cancel.cancel();
            tokio::time::sleep(Duration::from_millis(500)).await;
            let _ = grace_tx.send(Duration::from_secs(1));
            let at = Instant::now();
            // Keep the sender alive until the run is over.
            (at, grace_tx)
        }
    };
    let (exit, (shortened_at, _tx)) = tokio::join!(run(&f, s.clone(), cancel), stopper);
    let took = shortened_at.elapsed();
    assert_eq!(exit.unwrap(), Exit::Killed);
    assert!(
        took < Duration::from_secs(8),
        "the 60 s grace still applied: {took:?}"
    );
    assert_cleaned_up(&f, &s).await;
}

/// The agent dropping a run (task aborted, shutdown) must not leave the container behind.
#[tokio::test]
async fn dropped_run_removes_the_container() {
    let Some(f) = fixture() else { return };
    let s = spec(&f, "dropped", "echo ready; exec sleep 60");
    let log = s.log_path.clone();
    tokio::select! {
        exit = run(&f, s.clone(), CancellationToken::new()) => {
            panic!("run ended before it was dropped: {exit:?}")
        }
        // Ready: leaving the select drops the run future mid-flight.
        () = wait_for_line(&log, "ready") => {}
    }
    assert_cleaned_up(&f, &s).await;
}

/// Cancelling while runc is still creating the container still stops it.
#[tokio::test]
async fn cancel_right_after_start_stops_the_container() {
    let Some(f) = fixture() else { return };
    let s = spec(
        &f,
        "early",
        "trap 'exit 0' TERM; while :; do sleep 0.05; done",
    );
    let cancel = CancellationToken::new();
    cancel.cancel();
    let started = Instant::now();
    let exit = run(&f, s.clone(), cancel).await.unwrap();
    assert!(
        matches!(exit, Exit::Code(_) | Exit::Killed),
        "unexpected {exit:?}"
    );
    assert!(started.elapsed() < Duration::from_secs(8));
    assert_cleaned_up(&f, &s).await;
}

#[tokio::test]
async fn resource_limits_reach_the_cgroup() {
    let Some(f) = fixture() else { return };
    if !matches!(f.rt.cgroups, Cgroups::V1 { .. }) {
        eprintln!("skipping: cgroup v1 layout expected by this test");
        return;
    }
    let mut s = spec(
        &f,
        "limits",
        "cat /sys/fs/cgroup/cpu/cpu.cfs_quota_us /sys/fs/cgroup/cpu/cpu.shares \
         /sys/fs/cgroup/memory/memory.limit_in_bytes",
    );
    s.cpu_limit_millis = Some(250);
    s.cpu_shares = Some(256);
    s.memory_limit = Some(32 << 20);
    let log = s.log_path.clone();
    assert_eq!(
        run(&f, s, CancellationToken::new()).await.unwrap(),
        Exit::Code(0)
    );
    assert_eq!(
        stdout(&log),
        vec!["25000", "256", &(32u64 << 20).to_string()]
    );
}

#[tokio::test]
async fn memory_hog_is_out_of_memory() {
    let Some(f) = fixture() else { return };
    let mut s = spec(
        &f,
        "oom",
        r#"x=$(head -c 64000000 /dev/zero | tr '\0' a); echo survived"#,
    );
    s.memory_limit = Some(16 << 20);
    let log = s.log_path.clone();
    assert_eq!(
        run(&f, s.clone(), CancellationToken::new()).await.unwrap(),
        Exit::OutOfMemory
    );
    assert!(!stdout(&log).contains(&"survived".to_owned()));
    assert_cleaned_up(&f, &s).await;
}

#[tokio::test]
async fn post_start_hook_runs_inside_the_container() {
    let Some(f) = fixture() else { return };
    let mut s = spec(
        &f,
        "poststart",
        "i=0; while [ $i -lt 100 ]; do \
           if [ -f /tmp/started ]; then echo seen; exit 0; fi; i=$((i+1)); sleep 0.05; \
         done; exit 1",
    );
    s.post_start = Some(vec!["sh".into(), "-c".into(), "touch /tmp/started".into()]);
    let log = s.log_path.clone();
    assert_eq!(
        run(&f, s, CancellationToken::new()).await.unwrap(),
        Exit::Code(0)
    );
    assert_eq!(stdout(&log), vec!["seen"]);
}

#[tokio::test]
async fn failed_post_start_hook_kills_the_container() {
    let Some(f) = fixture() else { return };
    let mut s = spec(
        &f,
        "badhook",
        "trap 'exit 0' TERM; while :; do sleep 0.05; done",
    );
    s.post_start = Some(vec!["sh".into(), "-c".into(), "echo nope; exit 2".into()]);
    let err = run(&f, s.clone(), CancellationToken::new())
        .await
        .unwrap_err();
    match &err {
        Error::PostStartHook { message, .. } => {
            assert!(
                message.contains("exited with 2") && message.contains("nope"),
                "{message}"
            )
        }
        other => panic!("expected a postStart error, got {other}"),
    }
    assert_cleaned_up(&f, &s).await;
}

#[tokio::test]
async fn pre_stop_hook_runs_before_term() {
    let Some(f) = fixture() else { return };
    let mut s = spec(
        &f,
        "prestop",
        "trap 'if [ -f /tmp/prestop ]; then echo prestop-first; fi; exit 0' TERM; \
         echo ready; while :; do sleep 0.05; done",
    );
    s.pre_stop = Some(vec!["sh".into(), "-c".into(), "touch /tmp/prestop".into()]);
    s.grace_period = crate::oci::fixed_grace(Duration::from_secs(5));
    let log = s.log_path.clone();
    let cancel = CancellationToken::new();
    let stopper = {
        let (log, cancel) = (log.clone(), cancel.clone());
        async move {
            wait_for_line(&log, "ready").await;
            cancel.cancel();
        }
    };
    let (exit, ()) = tokio::join!(run(&f, s, cancel), stopper);
    assert_eq!(exit.unwrap(), Exit::Code(0));
    assert_eq!(stdout(&log), vec!["ready", "prestop-first"]);
}

#[tokio::test]
async fn start_failure_is_an_error_and_cleaned_up() {
    let Some(f) = fixture() else { return };
    let mut s = spec(&f, "noexec", "");
    s.args = vec!["/bin/does-not-exist".into()];
    let err = run(&f, s.clone(), CancellationToken::new())
        .await
        .unwrap_err();
    assert!(
        matches!(&err, Error::Runc { op: "run", message, .. } if message.contains("does-not-exist")),
        "{err}"
    );
    assert_cleaned_up(&f, &s).await;
}

/// Regression guard for agent crashes: a running container, its mounted overlay and bundle
/// left with the same id must not stop the next run.
/// Sets up exactly what a crashed run leaves: overlay, bundle, detached running container.
async fn make_leftover(f: &Fixture, s: &ContainerSpec) -> CleanupGuard {
    std::fs::create_dir_all(&s.work_dir).unwrap();
    let layout = Layout::new(&std::fs::canonicalize(&s.work_dir).unwrap());
    // Should an assertion fail before `run`, this still removes the hand-made leftover.
    let guard = CleanupGuard {
        runc: f.rt.runc.clone(),
        id: s.id.clone(),
        layout: layout.clone(),
        armed: true,
    };
    rootfs::mount_overlay(&std::fs::canonicalize(&f.image).unwrap(), &layout).unwrap();
    rootfs::write_etc_files(&layout, "old", None, None).unwrap();
    let mut old = s.clone();
    old.args = vec!["sleep".into(), "60".into()];
    let cgroups_path = format!("kedge-test/{}", s.id);
    let config = spec::config(
        &old,
        &spec::resolve_user(&f.image, None).unwrap(),
        &spec::Host {
            hosts_file: &layout.hosts,
            resolv_file: &layout.resolv,
            cgroups_path: &cgroups_path,
            swap_limit: false,
            nofile: f.rt.nofile,
            terminal: false,
        },
    );
    std::fs::write(
        layout.bundle.join("config.json"),
        serde_json::to_vec(&config).unwrap(),
    )
    .unwrap();
    let status = std::process::Command::new(&f.rt.runc.bin)
        .arg("--root")
        .arg(&f.rt.runc.root)
        .args(["run", "--detach", "--bundle"])
        .arg(&layout.bundle)
        .arg(&s.id)
        .stdin(Stdio::null())
        .stdout(Stdio::null())
        .stderr(Stdio::null())
        .status()
        .unwrap();
    assert!(status.success());
    assert_eq!(
        f.rt.runc.state(&s.id).await.unwrap().as_deref(),
        Some("running")
    );
    guard
}

#[tokio::test]
async fn leftover_container_with_the_same_id_is_removed_first() {
    let Some(f) = fixture() else { return };
    let s = spec(&f, "leftover", "echo second");
    let _guard = make_leftover(&f, &s).await;
    let log = s.log_path.clone();
    assert_eq!(
        run(&f, s.clone(), CancellationToken::new()).await.unwrap(),
        Exit::Code(0)
    );
    assert_eq!(stdout(&log), vec!["second"]);
    assert_cleaned_up(&f, &s).await;
}

#[tokio::test]
async fn leftovers_of_a_dead_agent_are_removed_at_start() {
    let Some(f) = fixture() else { return };
    let s = spec(&f, "orphan", "true");
    let _guard = make_leftover(&f, &s).await;
    let root = s.work_dir.parent().unwrap().to_path_buf();
    let removed = f.rt.remove_leftovers(&root);
    assert_eq!(removed, 1);
    assert_cleaned_up(&f, &s).await;
}

#[test]
fn missing_runc_is_a_clear_error() {
    let dir = tempfile::tempdir().unwrap();
    let err = OciRuntime::with_binary("/nonexistent/runc".into(), dir.path()).unwrap_err();
    let text = err.to_string();
    if rustix::process::geteuid().is_root() {
        assert!(matches!(err, Error::RuncUnavailable(_)), "{text}");
        assert!(text.contains("/nonexistent/runc"), "{text}");
    } else {
        assert!(matches!(err, Error::NotRoot(_)), "{text}");
    }
}

#[test]
fn exit_mapping() {
    use std::os::unix::process::ExitStatusExt as _;
    let code = |c: i32| Some(ExitStatus::from_raw(c << 8));
    assert_eq!(exit_of(code(3), false, false), Exit::Code(3));
    assert_eq!(exit_of(code(137), false, true), Exit::OutOfMemory);
    assert_eq!(exit_of(code(0), false, true), Exit::Code(0));
    assert_eq!(exit_of(code(137), true, false), Exit::Killed);
    assert_eq!(exit_of(None, true, false), Exit::Killed);
    // runc itself killed by a signal we did not send.
    assert_eq!(
        exit_of(Some(ExitStatus::from_raw(9)), false, false),
        Exit::Code(137)
    );
}

#[tokio::test]
async fn exec_runs_in_the_container_with_pipes_or_a_tty() {
    let Some(f) = fixture() else { return };
    let s = spec(&f, "exec", "echo up; exec sleep 30");
    let (id, log) = (s.id.clone(), s.log_path.clone());
    let cancel = CancellationToken::new();
    let running = run(&f, s, cancel.clone());
    let checks = async {
        wait_for_line(&log, "up").await;
        exec_checks(&f, &id).await;
        cancel.cancel();
    };
    let (exit, ()) = tokio::join!(running, checks);
    exit.unwrap();
}

async fn exec_checks(f: &Fixture, id: &str) {
    use tokio::io::{AsyncReadExt as _, AsyncWriteExt as _};

    // Pipes: stdin in, both outputs back, the exit code.
    let argv = |s: &str| vec!["sh".to_string(), "-c".to_string(), s.to_string()];
    let mut p =
        f.rt.exec(
            id,
            &argv("read x; echo got $x; echo err >&2; exit 5"),
            false,
            true,
        )
        .await
        .unwrap();
    let mut stdin = p.stdin.take().unwrap();
    stdin.write_all(b"hi\n").await.unwrap();
    drop(stdin);
    let (mut out, mut err) = (String::new(), String::new());
    p.stdout
        .take()
        .unwrap()
        .read_to_string(&mut out)
        .await
        .unwrap();
    p.stderr
        .take()
        .unwrap()
        .read_to_string(&mut err)
        .await
        .unwrap();
    assert_eq!((out.as_str(), err.as_str()), ("got hi\n", "err\n"));
    assert_eq!(p.wait().await.unwrap(), 5);

    // A tty: a terminal inside the container, of the size we set.
    let mut p =
        f.rt.exec(id, &argv("sleep 0.3; tty; stty size"), true, true)
            .await
            .unwrap();
    let mut pty = p.pty.take().unwrap();
    pty.size.resize(100, 30).unwrap();
    let mut text = Vec::new();
    let mut buf = [0u8; 1024];
    loop {
        match tokio::time::timeout(RUN_TIMEOUT, pty.output.read(&mut buf)).await {
            Ok(Ok(n)) if n > 0 => text.extend_from_slice(&buf[..n]),
            _ => break,
        }
    }
    let text = String::from_utf8_lossy(&text);
    assert!(text.contains("/dev/pts/"), "{text:?}");
    assert!(text.contains("30 100"), "{text:?}");
    assert_eq!(p.wait().await.unwrap(), 0);
}

async fn run_with_stdin(
    f: &Fixture,
    spec: ContainerSpec,
    stdin: crate::stdio::Stdin,
    cancel: CancellationToken,
) -> Result<Exit> {
    tokio::time::timeout(RUN_TIMEOUT, f.rt.run_with_stdin(spec, Some(stdin), cancel))
        .await
        .expect("container run finished in time")
}

fn data(s: &str) -> crate::stdio::Input {
    crate::stdio::Input::Data(bytes::Bytes::copy_from_slice(s.as_bytes()))
}

#[tokio::test]
async fn stdin_stays_open_across_attach_sessions() {
    use crate::stdio::{Input, Mode, channel};
    let Some(f) = fixture() else { return };
    let s = spec(
        &f,
        "stdin",
        "echo ready; while read l; do echo got:$l; done; echo eof",
    );
    let log = s.log_path.clone();
    let (attach, stdin) = channel(Mode {
        stdin: true,
        ..Mode::default()
    });
    let cancel = CancellationToken::new();
    let running = run_with_stdin(&f, s, stdin, cancel.clone());
    let sessions = async {
        wait_for_line(&log, "ready").await;
        // One session sends a line and ends; its end must not close the stdin.
        let first = attach.clone();
        assert!(first.send(data("one\n")).await);
        assert!(first.send(Input::End).await);
        drop(first);
        wait_for_line(&log, "got:one").await;
        let second = attach.clone();
        assert!(second.send(data("two\n")).await);
        wait_for_line(&log, "got:two").await;
        assert!(!attach.is_closed());
        // Every sender gone (the agent dropped the container): EOF, the loop ends.
        drop((second, attach));
        wait_for_line(&log, "eof").await;
    };
    let (exit, ()) = tokio::join!(running, sessions);
    assert_eq!(exit.unwrap(), Exit::Code(0));
    assert_eq!(stdout(&log), ["ready", "got:one", "got:two", "eof"]);
}

#[tokio::test]
async fn stdin_once_closes_at_the_end_of_the_first_session() {
    use crate::stdio::{Input, Mode, channel};
    let Some(f) = fixture() else { return };
    let s = spec(
        &f,
        "stdinonce",
        "echo ready; while read l; do echo got:$l; done; echo eof; exec sleep 30",
    );
    let log = s.log_path.clone();
    let (attach, stdin) = channel(Mode {
        stdin: true,
        stdin_once: true,
        tty: false,
    });
    let cancel = CancellationToken::new();
    let running = run_with_stdin(&f, s, stdin, cancel.clone());
    let session = async {
        wait_for_line(&log, "ready").await;
        assert!(attach.send(data("a\n")).await);
        assert!(attach.send(Input::End).await);
        // The agent still holds its sender: only stdinOnce can have closed the stdin.
        wait_for_line(&log, "eof").await;
        assert!(attach.is_closed());
        assert!(!attach.send(data("late\n")).await);
        cancel.cancel();
    };
    let (exit, ()) = tokio::join!(running, session);
    exit.unwrap();
    assert_eq!(stdout(&log), ["ready", "got:a", "eof"]);
}

#[tokio::test]
async fn tty_container_gets_a_terminal_fed_and_resized() {
    use crate::stdio::{Input, Mode, channel};
    let Some(f) = fixture() else { return };
    // `stty -echo`: the lines we type are not echoed, so the log holds only the answers. A
    // resize reaches the container's own terminal asynchronously (runc applies it on
    // SIGWINCH), possibly after the input sent after it: the size is polled, up to 5 s.
    let s = spec(
        &f,
        "tty",
        "stty -echo; [ -t 0 ] && echo is-a-tty; echo ready; read l; echo got:$l; \
         i=0; while [ $i -lt 100 ]; do s=$(stty size 2>/dev/null); \
         [ \"$s\" = '30 100' ] && break; i=$((i+1)); sleep 0.05; done; echo $s",
    );
    let log = s.log_path.clone();
    let (attach, stdin) = channel(Mode {
        stdin: true,
        stdin_once: false,
        tty: true,
    });
    let cancel = CancellationToken::new();
    let running = run_with_stdin(&f, s, stdin, cancel.clone());
    // A terminal ends lines with \r\n.
    let lines = |log: &Path| -> Vec<String> {
        stdout(log)
            .into_iter()
            .map(|l| l.trim_end_matches('\r').to_owned())
            .collect()
    };
    let session = async {
        for _ in 0..250 {
            if lines(&log).iter().any(|l| l == "ready") {
                break;
            }
            tokio::time::sleep(Duration::from_millis(20)).await;
        }
        assert!(
            attach
                .send(Input::Resize {
                    width: 100,
                    height: 30
                })
                .await
        );
        assert!(attach.send(data("hello\r")).await);
    };
    let (exit, ()) = tokio::join!(running, session);
    assert_eq!(exit.unwrap(), Exit::Code(0));
    let got = lines(&log);
    assert_eq!(got, ["is-a-tty", "ready", "got:hello", "30 100"], "{got:?}");
    assert!(
        log_lines(&log)
            .iter()
            .all(|(k, _)| *k == StreamKind::Stdout),
        "a terminal has no stderr"
    );
}
