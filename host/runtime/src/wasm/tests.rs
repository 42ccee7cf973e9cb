use std::path::{Path, PathBuf};
use std::time::{Duration, Instant};

use super::*;
use crate::logs::parse_record;

/// Prints its argv to stdout and its environment to stderr (NULs turned into newlines), then
/// calls `proc_exit(7)`.
const ARGS_ENV_EXIT: &str = r#"
(module
  (import "wasi_snapshot_preview1" "args_sizes_get" (func $args_sizes_get (param i32 i32) (result i32)))
  (import "wasi_snapshot_preview1" "args_get" (func $args_get (param i32 i32) (result i32)))
  (import "wasi_snapshot_preview1" "environ_sizes_get" (func $environ_sizes_get (param i32 i32) (result i32)))
  (import "wasi_snapshot_preview1" "environ_get" (func $environ_get (param i32 i32) (result i32)))
  (import "wasi_snapshot_preview1" "fd_write" (func $fd_write (param i32 i32 i32 i32) (result i32)))
  (import "wasi_snapshot_preview1" "proc_exit" (func $proc_exit (param i32)))
  (memory (export "memory") 1)
  (func $nul_to_nl (param $p i32) (param $len i32)
    (local $end i32)
    (local.set $end (i32.add (local.get $p) (local.get $len)))
    (block $done
      (loop $next
        (br_if $done (i32.ge_u (local.get $p) (local.get $end)))
        (if (i32.eqz (i32.load8_u (local.get $p)))
          (then (i32.store8 (local.get $p) (i32.const 10))))
        (local.set $p (i32.add (local.get $p) (i32.const 1)))
        (br $next))))
  (func $write (param $fd i32) (param $p i32) (param $len i32)
    (i32.store (i32.const 16) (local.get $p))
    (i32.store (i32.const 20) (local.get $len))
    (drop (call $fd_write (local.get $fd) (i32.const 16) (i32.const 1) (i32.const 32))))
  (func (export "_start")
    (drop (call $args_sizes_get (i32.const 0) (i32.const 4)))
    (drop (call $args_get (i32.const 1024) (i32.const 4096)))
    (call $nul_to_nl (i32.const 4096) (i32.load (i32.const 4)))
    (call $write (i32.const 1) (i32.const 4096) (i32.load (i32.const 4)))
    (drop (call $environ_sizes_get (i32.const 0) (i32.const 4)))
    (drop (call $environ_get (i32.const 1024) (i32.const 8192)))
    (call $nul_to_nl (i32.const 8192) (i32.load (i32.const 4)))
    (call $write (i32.const 2) (i32.const 8192) (i32.load (i32.const 4)))
    (call $proc_exit (i32.const 7))))
"#;

/// Writes "no newline" without a line break, then returns normally.
const PARTIAL_THEN_RETURN: &str = r#"
(module
  (import "wasi_snapshot_preview1" "fd_write" (func $fd_write (param i32 i32 i32 i32) (result i32)))
  (memory (export "memory") 1)
  (data (i32.const 64) "no newline")
  (func (export "_start")
    (i32.store (i32.const 16) (i32.const 64))
    (i32.store (i32.const 20) (i32.const 10))
    (drop (call $fd_write (i32.const 1) (i32.const 16) (i32.const 1) (i32.const 32)))))
"#;

const BUSY_LOOP: &str = r#"(module (func (export "_start") (loop $spin (br $spin))))"#;

const TRAP: &str = r#"(module (func (export "_start") unreachable))"#;

const NO_START: &str = r#"(module (func (export "main")))"#;

/// Grows memory one MiB at a time forever.
const MEMORY_HOG: &str = r#"
(module
  (memory 1)
  (func (export "_start")
    (loop $grow
      (drop (memory.grow (i32.const 16)))
      (br $grow))))
"#;

/// Built by the `kedge` crate's build script (which builds every Wasm guest), so a
/// workspace `cargo test` has it before any test runs. Missing is a failure, not a skip.
fn hello_component() -> Vec<u8> {
    let target = std::env::var("CARGO_TARGET_DIR")
        .map(std::path::PathBuf::from)
        .unwrap_or_else(|_| Path::new(env!("CARGO_MANIFEST_DIR")).join("../../target"));
    let path = target.join("wasm-guests/wasm32-wasip2/wasm/hello-wasm.wasm");
    match std::fs::read(&path) {
        Ok(bytes) => bytes,
        Err(e) => panic!(
            "{}: {e}; build it with `cargo build -p kedge` (its build script builds the guests)",
            path.display()
        ),
    }
}

fn wat(text: &str) -> Vec<u8> {
    wat::parse_str(text).expect("test WAT parses")
}

fn spec(dir: &Path, args: &[&str], env: &[(&str, &str)]) -> RunSpec {
    RunSpec {
        args: args.iter().map(|s| s.to_string()).collect(),
        env: env
            .iter()
            .map(|(k, v)| (k.to_string(), v.to_string()))
            .collect(),
        log_path: dir.join("logs/0.log"),
        log_rotation: Default::default(),
        memory_limit: None,
        dirs: Vec::new(),
        memory_in_use: None,
        cpu_time: None,
        net: None,
        resolver: None,
    }
}

/// `(stream, partial, text)` of every record in a log file.
fn records(path: &PathBuf) -> Vec<(StreamKind, bool, String)> {
    let data = std::fs::read(path).unwrap_or_default();
    data.split(|&b| b == b'\n')
        .filter(|l| !l.is_empty())
        .map(|l| {
            let r = parse_record(l).expect("well-formed record");
            (
                r.stream,
                r.partial,
                String::from_utf8_lossy(r.text).into_owned(),
            )
        })
        .collect()
}

#[test]
fn detects_binary_kind() {
    assert_eq!(detect_kind(&wat(TRAP)).unwrap(), WorkloadKind::Module);
    assert_eq!(
        detect_kind(b"\0asm\x0d\0\x01\0rest").unwrap(),
        WorkloadKind::Component
    );
    assert!(matches!(detect_kind(b"hello world"), Err(Error::NotWasm)));
    assert!(matches!(
        detect_kind(b"\0asm\x02\0\0\0"),
        Err(Error::UnsupportedBinary(_))
    ));
}

#[tokio::test]
async fn load_caches_by_digest() {
    let rt = WasmRuntime::new().unwrap();
    let bytes = wat(TRAP);
    let a = rt.load(bytes.clone()).await.unwrap();
    let b = rt.load(bytes).await.unwrap();
    assert!(
        Arc::ptr_eq(&a.0, &b.0),
        "second load reuses the compilation"
    );
    assert!(a.digest().starts_with("sha256:") && a.digest().len() == 71);
    assert_eq!(a.kind(), WorkloadKind::Module);
    let err = rt.load(b"not wasm at all".to_vec()).await.unwrap_err();
    assert!(matches!(err, Error::NotWasm), "{err}");
    // Invalid body behind a valid header: a compile error, not a panic.
    let err = rt
        .load(b"\0asm\x01\0\0\0\xff\xff".to_vec())
        .await
        .unwrap_err();
    assert!(matches!(err, Error::Compile { .. }), "{err}");
}

/// A container that exits and restarts must not compile again: the runtime keeps recently
/// used code even when no `Workload` is held, and finds it by digest without the bytes.
#[tokio::test]
async fn recent_code_survives_its_last_workload() {
    let rt = WasmRuntime::new().unwrap();
    let a = rt.load(wat(TRAP)).await.unwrap();
    let digest = a.digest().to_string();
    let first = Arc::as_ptr(&a.0);
    drop(a);
    let b = rt.get(&digest).expect("still cached");
    assert_eq!(Arc::as_ptr(&b.0), first);
    assert!(rt.get("sha256:0000").is_none());
    let c = rt
        .load_with_digest(wat(TRAP), digest.clone())
        .await
        .unwrap();
    assert_eq!(Arc::as_ptr(&c.0), first);
}

#[tokio::test]
async fn p1_module_sees_args_and_env_and_exits_with_code() {
    let dir = tempfile::tempdir().unwrap();
    let rt = WasmRuntime::new().unwrap();
    let w = rt.load(wat(ARGS_ENV_EXIT)).await.unwrap();
    let spec = spec(
        dir.path(),
        &["app", "--flag", "two words"],
        &[("POD_NAME", "web-1"), ("POD_NAMESPACE", "default")],
    );
    let log = spec.log_path.clone();
    let exit = rt.run(&w, spec, CancellationToken::new()).await.unwrap();
    assert_eq!(exit, Exit::Code(7));
    let recs = records(&log);
    let out: Vec<_> = recs
        .iter()
        .filter(|r| r.0 == StreamKind::Stdout)
        .map(|r| r.2.as_str())
        .collect();
    let err: Vec<_> = recs
        .iter()
        .filter(|r| r.0 == StreamKind::Stderr)
        .map(|r| r.2.as_str())
        .collect();
    assert_eq!(out, ["app", "--flag", "two words"]);
    assert_eq!(err, ["POD_NAME=web-1", "POD_NAMESPACE=default"]);
    assert!(recs.iter().all(|r| !r.1), "all lines complete: {recs:?}");
}

#[tokio::test]
async fn p1_normal_return_flushes_partial_line() {
    let dir = tempfile::tempdir().unwrap();
    let rt = WasmRuntime::new().unwrap();
    let w = rt.load(wat(PARTIAL_THEN_RETURN)).await.unwrap();
    let spec = spec(dir.path(), &["app"], &[]);
    let log = spec.log_path.clone();
    let exit = rt.run(&w, spec, CancellationToken::new()).await.unwrap();
    assert_eq!(exit, Exit::Code(0));
    assert_eq!(
        records(&log),
        [(StreamKind::Stdout, true, "no newline".to_string())]
    );
}

#[tokio::test]
async fn trap_is_reported() {
    let dir = tempfile::tempdir().unwrap();
    let rt = WasmRuntime::new().unwrap();
    let w = rt.load(wat(TRAP)).await.unwrap();
    let exit = rt
        .run(
            &w,
            spec(dir.path(), &["app"], &[]),
            CancellationToken::new(),
        )
        .await
        .unwrap();
    match exit {
        Exit::Trapped(reason) => assert!(reason.contains("unreachable"), "{reason}"),
        other => panic!("expected a trap, got {other:?}"),
    }
}

#[tokio::test]
async fn module_without_start_is_an_error() {
    let dir = tempfile::tempdir().unwrap();
    let rt = WasmRuntime::new().unwrap();
    let w = rt.load(wat(NO_START)).await.unwrap();
    let err = rt
        .run(
            &w,
            spec(dir.path(), &["app"], &[]),
            CancellationToken::new(),
        )
        .await
        .unwrap_err();
    assert!(matches!(err, Error::NotCommand { .. }), "{err}");
}

#[tokio::test]
async fn busy_loop_is_killed_by_cancel() {
    let dir = tempfile::tempdir().unwrap();
    let rt = WasmRuntime::new().unwrap();
    let w = rt.load(wat(BUSY_LOOP)).await.unwrap();
    let cancel = CancellationToken::new();
    let task = {
        let (rt, w, cancel) = (rt.clone(), w.clone(), cancel.clone());
        let spec = spec(dir.path(), &["app"], &[]);
        tokio::spawn(async move { rt.run(&w, spec, cancel).await })
    };
    tokio::time::sleep(Duration::from_millis(200)).await;
    assert!(!task.is_finished(), "busy loop still running before cancel");
    let cancelled_at = Instant::now();
    cancel.cancel();
    let exit = tokio::time::timeout(Duration::from_secs(1), task)
        .await
        .expect("cancel stops a busy loop within 1 s")
        .unwrap()
        .unwrap();
    assert_eq!(exit, Exit::Killed);
    assert!(cancelled_at.elapsed() < Duration::from_secs(1));
}

#[tokio::test]
async fn memory_cap_stops_a_hog() {
    let dir = tempfile::tempdir().unwrap();
    let rt = WasmRuntime::new().unwrap();
    let w = rt.load(wat(MEMORY_HOG)).await.unwrap();
    let mut spec = spec(dir.path(), &["app"], &[]);
    spec.memory_limit = Some(16 << 20);
    let exit = tokio::time::timeout(
        Duration::from_secs(10),
        rt.run(&w, spec, CancellationToken::new()),
    )
    .await
    .expect("hog stopped")
    .unwrap();
    assert_eq!(exit, Exit::OutOfMemory);
    assert_eq!(exit.reason(), "OOMKilled");
}

#[tokio::test]
async fn initial_memory_over_cap_is_out_of_memory() {
    let dir = tempfile::tempdir().unwrap();
    let rt = WasmRuntime::new().unwrap();
    // 32 MiB of initial memory against an 8 MiB cap.
    let w = rt
        .load(wat(r#"(module (memory 512) (func (export "_start")))"#))
        .await
        .unwrap();
    let mut spec = spec(dir.path(), &["app"], &[]);
    spec.memory_limit = Some(8 << 20);
    let exit = rt.run(&w, spec, CancellationToken::new()).await.unwrap();
    assert_eq!(exit, Exit::OutOfMemory);
}

#[tokio::test]
async fn p2_hello_component_logs_and_exits_with_code() {
    let bytes = hello_component();
    let dir = tempfile::tempdir().unwrap();
    let rt = WasmRuntime::new().unwrap();
    let w = rt.load(bytes).await.unwrap();
    assert_eq!(w.kind(), WorkloadKind::Component);
    let spec = spec(
        dir.path(),
        &["hello", "a", "b"],
        &[
            ("POD_NAME", "web-1"),
            ("POD_NAMESPACE", "prod"),
            ("HELLO_EXIT_AFTER_SECS", "0"),
            ("HELLO_EXIT_CODE", "3"),
        ],
    );
    let log = spec.log_path.clone();
    let exit = tokio::time::timeout(
        Duration::from_secs(10),
        rt.run(&w, spec, CancellationToken::new()),
    )
    .await
    .expect("hello exits at once")
    .unwrap();
    assert_eq!(exit, Exit::Code(3));
    let recs = records(&log);
    assert_eq!(
        recs.first(),
        Some(&(
            StreamKind::Stdout,
            false,
            "hello from web-1 in prod args=a b".to_string()
        )),
        "{recs:?}"
    );
}

#[tokio::test]
async fn cancel_stops_a_running_component() {
    let bytes = hello_component();
    let dir = tempfile::tempdir().unwrap();
    let rt = WasmRuntime::new().unwrap();
    let w = rt.load(bytes).await.unwrap();
    let spec = spec(dir.path(), &["hello"], &[]);
    let log = spec.log_path.clone();
    let cancel = CancellationToken::new();
    let task = {
        let (rt, w, cancel) = (rt.clone(), w.clone(), cancel.clone());
        tokio::spawn(async move { rt.run(&w, spec, cancel).await })
    };
    // Wait for the greeting so the guest is known to be in its sleep loop.
    let deadline = Instant::now() + Duration::from_secs(10);
    while records(&log).is_empty() {
        assert!(Instant::now() < deadline, "no greeting logged");
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    assert_eq!(
        records(&log)[0].2,
        "hello from unknown in unknown",
        "fallback names"
    );
    cancel.cancel();
    let exit = tokio::time::timeout(Duration::from_secs(1), task)
        .await
        .expect("cancel stops the component within 1 s")
        .unwrap()
        .unwrap();
    assert_eq!(exit, Exit::Killed);
}

#[tokio::test]
async fn ticker_stops_with_last_runtime() {
    let rt = WasmRuntime::new().unwrap();
    let clone = rt.clone();
    drop(rt);
    // Still ticking for the clone: a busy guest is still interruptible.
    let w = clone.load(wat(BUSY_LOOP)).await.unwrap();
    let dir = tempfile::tempdir().unwrap();
    let cancel = CancellationToken::new();
    let c = cancel.clone();
    tokio::spawn(async move {
        tokio::time::sleep(Duration::from_millis(100)).await;
        c.cancel();
    });
    let exit = tokio::time::timeout(
        Duration::from_secs(2),
        clone.run(&w, spec(dir.path(), &["app"], &[]), cancel),
    )
    .await
    .unwrap()
    .unwrap();
    assert_eq!(exit, Exit::Killed);
    // Dropping the last handle joins the ticker thread; this returning at all is the check.
    drop(w);
    drop(clone);
}

/// Creates `out.txt` in its first preopened directory (fd 3) and writes "hi\n" to it; exits
/// 0, or 100 + the WASI errno of the failing call.
const WRITE_FILE: &str = r#"
(module
  (import "wasi_snapshot_preview1" "path_open"
    (func $path_open (param i32 i32 i32 i32 i32 i64 i64 i32 i32) (result i32)))
  (import "wasi_snapshot_preview1" "fd_write" (func $fd_write (param i32 i32 i32 i32) (result i32)))
  (import "wasi_snapshot_preview1" "proc_exit" (func $exit (param i32)))
  (memory (export "memory") 1)
  (data (i32.const 16) "out.txt")
  (data (i32.const 32) "hi\n")
  (func (export "_start")
    (local $e i32)
    (i32.store (i32.const 64) (i32.const 32))
    (i32.store (i32.const 68) (i32.const 3))
    (local.set $e (call $path_open (i32.const 3) (i32.const 0) (i32.const 16) (i32.const 7)
      (i32.const 1) (i64.const 0x1fffffff) (i64.const 0x1fffffff) (i32.const 0) (i32.const 80)))
    (if (local.get $e) (then (call $exit (i32.add (i32.const 100) (local.get $e)))))
    (local.set $e (call $fd_write (i32.load (i32.const 80)) (i32.const 64) (i32.const 1) (i32.const 84)))
    (if (local.get $e) (then (call $exit (i32.add (i32.const 100) (local.get $e)))))
    (call $exit (i32.const 0))))
"#;

#[tokio::test]
async fn volumes_are_preopened_directories() {
    let dir = tempfile::tempdir().unwrap();
    let rt = WasmRuntime::new().unwrap();
    let w = rt.load(wat(WRITE_FILE)).await.unwrap();
    let vol = dir.path().join("vol");
    std::fs::create_dir_all(&vol).unwrap();
    let mut s = spec(dir.path(), &["app"], &[]);
    s.dirs = vec![crate::wasm::Preopen {
        host_path: vol.clone(),
        guest_path: "/data".into(),
        read_only: false,
    }];
    let exit = rt
        .run(&w, s.clone(), CancellationToken::new())
        .await
        .unwrap();
    assert_eq!(exit, Exit::Code(0));
    assert_eq!(
        std::fs::read_to_string(vol.join("out.txt")).unwrap(),
        "hi\n"
    );

    // Read-only: the guest cannot create files.
    std::fs::remove_file(vol.join("out.txt")).unwrap();
    s.dirs[0].read_only = true;
    let exit = rt.run(&w, s, CancellationToken::new()).await.unwrap();
    assert_ne!(exit, Exit::Code(0));
    assert!(!vol.join("out.txt").exists());
}

/// Copies stdin to stdout until EOF (`cat`), then writes "eof\n".
const CAT: &str = r#"
(module
  (import "wasi_snapshot_preview1" "fd_read" (func $fd_read (param i32 i32 i32 i32) (result i32)))
  (import "wasi_snapshot_preview1" "fd_write" (func $fd_write (param i32 i32 i32 i32) (result i32)))
  (memory (export "memory") 1)
  (data (i32.const 64) "eof\n")
  (func (export "_start")
    (block $done
      (loop $next
        (i32.store (i32.const 0) (i32.const 1024))
        (i32.store (i32.const 4) (i32.const 4096))
        (br_if $done (call $fd_read (i32.const 0) (i32.const 0) (i32.const 1) (i32.const 8)))
        (br_if $done (i32.eqz (i32.load (i32.const 8))))
        (i32.store (i32.const 16) (i32.const 1024))
        (i32.store (i32.const 20) (i32.load (i32.const 8)))
        (drop (call $fd_write (i32.const 1) (i32.const 16) (i32.const 1) (i32.const 32)))
        (br $next)))
    (i32.store (i32.const 16) (i32.const 64))
    (i32.store (i32.const 20) (i32.const 4))
    (drop (call $fd_write (i32.const 1) (i32.const 16) (i32.const 1) (i32.const 32)))))
"#;

#[tokio::test]
async fn stdin_is_fed_to_the_guest_until_stdin_once_closes_it() {
    use crate::stdio::{Input, Mode, channel};
    let dir = tempfile::tempdir().unwrap();
    let rt = WasmRuntime::new().unwrap();
    let w = rt.load(wat(CAT)).await.unwrap();
    let spec = spec(dir.path(), &["cat"], &[]);
    let log = spec.log_path.clone();
    let (attach, stdin) = channel(Mode {
        stdin: true,
        stdin_once: true,
        tty: false,
    });
    let running = rt.run_with_stdin(&w, spec, Some(stdin), CancellationToken::new());
    let session = async {
        assert!(attach.send(Input::Data("one\n".into())).await);
        // The guest waits for more: nothing has ended its stdin yet.
        tokio::time::sleep(Duration::from_millis(300)).await;
        assert!(!attach.is_closed());
        assert!(attach.send(Input::Data("two\n".into())).await);
        assert!(attach.send(Input::End).await);
    };
    let (exit, ()) = tokio::time::timeout(Duration::from_secs(20), async {
        tokio::join!(running, session)
    })
    .await
    .expect("the guest ends once its stdin closes");
    assert_eq!(exit.unwrap(), Exit::Code(0));
    let out: Vec<_> = records(&log).into_iter().map(|r| r.2).collect();
    assert_eq!(out, ["one", "two", "eof"]);
}

#[tokio::test]
async fn without_stdin_the_guest_reads_eof() {
    let dir = tempfile::tempdir().unwrap();
    let rt = WasmRuntime::new().unwrap();
    let w = rt.load(wat(CAT)).await.unwrap();
    let spec = spec(dir.path(), &["cat"], &[]);
    let log = spec.log_path.clone();
    let exit = rt.run(&w, spec, CancellationToken::new()).await.unwrap();
    assert_eq!(exit, Exit::Code(0));
    let out: Vec<_> = records(&log).into_iter().map(|r| r.2).collect();
    assert_eq!(out, ["eof"]);
}

/// Reads an exec's output to its end.
async fn read_all(mut r: tokio::io::DuplexStream) -> String {
    use tokio::io::AsyncReadExt as _;
    let mut s = String::new();
    r.read_to_string(&mut s).await.unwrap();
    s
}

fn exec_spec(args: &[&str], env: &[(&str, &str)]) -> ExecSpec {
    ExecSpec {
        args: args.iter().map(|s| s.to_string()).collect(),
        env: env
            .iter()
            .map(|(k, v)| (k.to_string(), v.to_string()))
            .collect(),
        memory_limit: None,
        dirs: vec![],
        net: None,
        resolver: None,
        cpu_time: None,
    }
}

#[tokio::test]
async fn exec_runs_another_instance_with_its_own_stdio_and_exit_code() {
    let rt = WasmRuntime::new().unwrap();
    let w = rt.load(wat(ARGS_ENV_EXIT)).await.unwrap();
    let mut p = rt
        .exec(&w, exec_spec(&["prog", "--check"], &[("K", "v")]), false)
        .unwrap();
    assert!(p.stdin.is_none());
    let (out, err) = (p.stdout.take().unwrap(), p.stderr.take().unwrap());
    let (exit, out, err) = tokio::time::timeout(Duration::from_secs(20), async {
        tokio::join!(p.wait(), read_all(out), read_all(err))
    })
    .await
    .expect("the instance ends");
    assert_eq!(exit.unwrap(), Exit::Code(7));
    assert_eq!(out, "prog\n--check\n");
    assert_eq!(err, "K=v\n");
}

#[tokio::test]
async fn exec_stdin_reaches_the_guest_and_stop_ends_it() {
    use tokio::io::AsyncWriteExt as _;
    let rt = WasmRuntime::new().unwrap();
    let w = rt.load(wat(CAT)).await.unwrap();
    let mut p = rt.exec(&w, exec_spec(&["cat"], &[]), true).unwrap();
    let mut stdin = p.stdin.take().unwrap();
    stdin.write_all(b"one\ntwo\n").await.unwrap();
    drop(stdin);
    let out = p.stdout.take().unwrap();
    let (exit, out) = tokio::time::timeout(Duration::from_secs(20), async {
        tokio::join!(p.wait(), read_all(out))
    })
    .await
    .expect("the guest ends at EOF");
    assert_eq!(exit.unwrap(), Exit::Code(0));
    assert_eq!(out, "one\ntwo\neof\n");

    // A guest that waits for input forever is stopped when the client leaves.
    let mut p = rt.exec(&w, exec_spec(&["cat"], &[]), true).unwrap();
    let start = Instant::now();
    tokio::time::timeout(Duration::from_secs(5), p.stop())
        .await
        .expect("stop returns");
    assert!(start.elapsed() < Duration::from_secs(5));
    assert_eq!(p.wait().await.unwrap(), Exit::Killed);
}

/// Answers one HTTP request on 127.0.0.1 with `body`; the port it listens on.
async fn serve_once(body: &'static str) -> (u16, AbortOnDropHandle<()>) {
    use tokio::io::{AsyncReadExt as _, AsyncWriteExt as _};
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let port = listener.local_addr().unwrap().port();
    let task = tokio::spawn(async move {
        let Ok((mut conn, _)) = listener.accept().await else {
            return;
        };
        // Read the request head (bounded), then answer and close.
        let mut head = Vec::new();
        let mut buf = [0u8; 1024];
        while !head.windows(4).any(|w| w == b"\r\n\r\n") && head.len() < 8192 {
            match conn.read(&mut buf).await {
                Ok(0) | Err(_) => break,
                Ok(n) => head.extend_from_slice(&buf[..n]),
            }
        }
        let response = format!(
            "HTTP/1.0 200 OK\r\nContent-Length: {}\r\n\r\n{body}",
            body.len()
        );
        let _ = conn.write_all(response.as_bytes()).await;
    });
    (port, AbortOnDropHandle::new(task))
}

/// Runs `hello --get <target>` and returns its exit and stdout lines.
async fn hello_get(target: &str, resolver: Option<Arc<Resolver>>) -> (Exit, Vec<String>) {
    let dir = tempfile::tempdir().unwrap();
    let rt = WasmRuntime::new().unwrap();
    let w = rt.load(hello_component()).await.unwrap();
    let mut spec = spec(dir.path(), &["hello", "--get", target], &[]);
    spec.resolver = resolver;
    let log = spec.log_path.clone();
    let exit = tokio::time::timeout(
        Duration::from_secs(30),
        rt.run(&w, spec, CancellationToken::new()),
    )
    .await
    .expect("the guest ends")
    .unwrap();
    let out = records(&log).into_iter().map(|r| r.2).collect();
    (exit, out)
}

/// A Wasm guest's `my-service` goes through the pod's search path to the pod's nameserver,
/// not the node's resolver (which knows no cluster names).
#[tokio::test]
async fn component_resolves_service_names_through_the_pod_resolver() {
    use super::lookup::tests::{FakeDns, Zone, pod_resolver};
    let dns =
        FakeDns::start(Zone::default().with("my-service.default.svc.cluster.local", "127.0.0.1"))
            .await;
    let (port, _server) = serve_once("hello through cluster dns\n").await;
    let resolver = Arc::new(pod_resolver(&[dns.addr]));
    let (exit, out) = hello_get(&format!("my-service:{port}/"), Some(resolver)).await;
    assert_eq!(exit, Exit::Code(0), "{out:?}");
    assert_eq!(out, ["hello through cluster dns"]);
    assert_eq!(dns.asked_a()[0], "my-service.default.svc.cluster.local");
}

/// The guest sees the WASI error codes: an unknown name fails to connect (exit 1) after the
/// whole search path was asked.
#[tokio::test]
async fn component_sees_unknown_names_fail() {
    use super::lookup::tests::{FakeDns, Zone, pod_resolver};
    let dns = FakeDns::start(Zone::default()).await;
    let resolver = Arc::new(pod_resolver(&[dns.addr]));
    let (exit, _) = hello_get("no-such-service:80/", Some(resolver)).await;
    assert_eq!(exit, Exit::Code(1));
    assert_eq!(dns.asked_a().last().unwrap(), "no-such-service");
}

/// Without a resolver, lookups stay wasmtime-wasi's (the node's resolver and hosts file).
#[tokio::test]
async fn without_a_resolver_component_lookups_use_the_node_resolver() {
    let (port, _server) = serve_once("hello through the node\n").await;
    let (exit, out) = hello_get(&format!("localhost:{port}/"), None).await;
    assert_eq!(exit, Exit::Code(0), "{out:?}");
    assert_eq!(out, ["hello through the node"]);
}

/// `kubectl exec` into a Wasm container resolves as the container does.
#[tokio::test]
async fn exec_resolves_through_the_pod_resolver() {
    use super::lookup::tests::{FakeDns, Zone, pod_resolver};
    let dns =
        FakeDns::start(Zone::default().with("my-service.default.svc.cluster.local", "127.0.0.1"))
            .await;
    let (port, _server) = serve_once("hello from exec\n").await;
    let rt = WasmRuntime::new().unwrap();
    let w = rt.load(hello_component()).await.unwrap();
    let target = format!("my-service:{port}/");
    let mut spec = exec_spec(&["hello", "--get", &target], &[]);
    spec.resolver = Some(Arc::new(pod_resolver(&[dns.addr])));
    let mut p = rt.exec(&w, spec, false).unwrap();
    let (out, err) = (p.stdout.take().unwrap(), p.stderr.take().unwrap());
    let (exit, out, err) = tokio::time::timeout(Duration::from_secs(30), async {
        tokio::join!(p.wait(), read_all(out), read_all(err))
    })
    .await
    .expect("the instance ends");
    assert_eq!(exit.unwrap(), Exit::Code(0), "{err}");
    assert_eq!(out, "hello from exec\n");
}
