//! kedge's stable-Rust fuzz driver, shared by each crate's fuzz tests (`#[path]`-included).
//!
//! A target is a function over bytes that must never panic and never take longer than the
//! slow-input bound. The driver replays every file of `fuzz/corpus/<target>/`, then, until its
//! time budget is spent, mutates corpus entries (byte flips, dictionary tokens, splices,
//! repeats that build deep nesting, truncations) and runs the target on each. Inputs the
//! target accepts (returns `true`) join the mutation pool, which steers the search toward
//! inputs that get past the first checks — a cheap stand-in for coverage feedback.
//!
//! Budget: `KEDGE_FUZZ_SECS` seconds per target (default 2, the short mode `make test`
//! runs). The short mode uses a fixed seed, so CI explores the same inputs on every run and
//! a red build is reproducible; with `KEDGE_FUZZ_SECS` set (`make fuzz`) the seed is drawn
//! from the clock. `KEDGE_FUZZ_SEED` fixes the seed (printed on every run) to replay a run.
//! A panic or a slow input (`KEDGE_FUZZ_SLOW_MS`, default 1000) is written to
//! `target/fuzz-crashes/<target>/` and fails the test; a watchdog aborts the process when one
//! input runs for 30 s (a hang), after writing it the same way.

#![allow(dead_code)]

use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

/// One fuzz target's settings; its seeds are `fuzz/corpus/<name>/` of the workspace.
pub struct Target<'a> {
    pub name: &'a str,
    /// Inputs are cut to this many bytes (keeps each execution bounded).
    pub max_len: usize,
    /// Tokens the mutator inserts (keywords and punctuation of the grammar).
    pub dictionary: &'a [&'a str],
}

/// A target named `name`, inputs cut to `max_len` bytes, mutated with `dictionary` tokens.
pub fn target<'a>(name: &'a str, max_len: usize, dictionary: &'a [&'a str]) -> Target<'a> {
    Target {
        name,
        max_len,
        dictionary,
    }
}

struct Rng(u64);

impl Rng {
    fn next(&mut self) -> u64 {
        // xorshift64*
        self.0 ^= self.0 >> 12;
        self.0 ^= self.0 << 25;
        self.0 ^= self.0 >> 27;
        self.0.wrapping_mul(0x2545_F491_4F6C_DD1D)
    }
    fn below(&mut self, n: usize) -> usize {
        if n == 0 {
            0
        } else {
            (self.next() % n as u64) as usize
        }
    }
}

const INTERESTING: &[&str] = &[
    "0",
    "-1",
    "4294967295",
    "18446744073709551616",
    "1e308",
    "-0",
    "\u{0}",
    "\u{ff}",
    "é",
    "\u{10ffff}",
    "\"",
    "\\",
    "{",
    "}",
    "[",
    "]",
    ":",
    ",",
    " ",
    "\n",
    "null",
    "true",
    "[[[[",
    "{\"a\":{\"a\":",
    "9999999999999999999999999999999999999999",
];

fn mutate(rng: &mut Rng, input: &mut Vec<u8>, pool: &[Vec<u8>], dict: &[&str], max_len: usize) {
    let rounds = 1 + rng.below(4);
    for _ in 0..rounds {
        let len = input.len();
        match rng.below(11) {
            0 if len > 0 => {
                let i = rng.below(len);
                input[i] ^= 1 << rng.below(8);
            }
            1 if len > 0 => {
                let i = rng.below(len);
                input[i] = rng.next() as u8;
            }
            2 | 3 => {
                let token = if !dict.is_empty() && rng.below(3) > 0 {
                    dict[rng.below(dict.len())]
                } else {
                    INTERESTING[rng.below(INTERESTING.len())]
                };
                let at = rng.below(len + 1);
                input.splice(at..at, token.bytes());
            }
            4 if len > 0 => {
                let at = rng.below(len);
                let n = 1 + rng.below((len - at).min(16));
                input.drain(at..at + n);
            }
            5 if len > 0 => {
                // Repeat a chunk: nesting depth, long runs, many items.
                let at = rng.below(len);
                let n = 1 + rng.below((len - at).min(32));
                let chunk = input[at..at + n].to_vec();
                let most = if rng.below(8) == 0 { 2000 } else { 8 };
                let times = 1 + rng.below(most);
                let mut rep = Vec::with_capacity(chunk.len() * times);
                for _ in 0..times {
                    rep.extend_from_slice(&chunk);
                }
                input.splice(at..at, rep);
            }
            6 if !pool.is_empty() => {
                // Splice: the head of this input, the tail of another.
                let other = &pool[rng.below(pool.len())];
                let cut = rng.below(len + 1);
                let from = rng.below(other.len() + 1);
                input.truncate(cut);
                input.extend_from_slice(&other[from..]);
            }
            7 if len > 0 => input.truncate(rng.below(len)),
            8 if len > 1 => {
                let a = rng.below(len);
                let b = rng.below(len);
                input.swap(a, b);
            }
            9 if len > 0 => {
                // Arithmetic on an ASCII digit run's last digit.
                let i = rng.below(len);
                if input[i].is_ascii_digit() {
                    input[i] = b'0' + (rng.below(10) as u8);
                } else {
                    input.insert(i, b'0' + (rng.below(10) as u8));
                }
            }
            _ => {
                let at = rng.below(len + 1);
                input.insert(at, rng.next() as u8);
            }
        }
    }
    input.truncate(max_len);
}

/// The workspace: the including crate's nearest ancestor holding `fuzz/corpus`.
fn workspace() -> &'static Path {
    let root = Path::new(env!("CARGO_MANIFEST_DIR"));
    root.ancestors()
        .find(|p| p.join("fuzz").join("corpus").is_dir())
        .unwrap_or(root)
}

/// `target/fuzz-crashes/<name>` next to `fuzz/corpus` (the workspace's target directory).
fn crash_dir(name: &str) -> PathBuf {
    workspace().join("target").join("fuzz-crashes").join(name)
}

fn save(name: &str, kind: &str, input: &[u8]) -> PathBuf {
    let dir = crash_dir(name);
    let _ = std::fs::create_dir_all(&dir);
    let mut h: u64 = 0xcbf2_9ce4_8422_2325;
    for b in input {
        h = (h ^ u64::from(*b)).wrapping_mul(0x100_0000_01b3);
    }
    let path = dir.join(format!("{kind}-{h:016x}"));
    let _ = std::fs::write(&path, input);
    path
}

fn show(input: &[u8]) -> String {
    let s = String::from_utf8_lossy(&input[..input.len().min(512)]);
    format!("{s:?}{}", if input.len() > 512 { " …" } else { "" })
}

/// Reads `fuzz/corpus/<name>/` (sorted, so runs are reproducible).
pub fn corpus(name: &str) -> Vec<(String, Vec<u8>)> {
    let dir = workspace().join("fuzz").join("corpus").join(name);
    let mut files: Vec<_> = std::fs::read_dir(&dir)
        .unwrap_or_else(|e| panic!("fuzz corpus {}: {e}", dir.display()))
        .filter_map(|e| e.ok())
        .filter(|e| e.path().is_file())
        .map(|e| e.path())
        .collect();
    files.sort();
    files
        .into_iter()
        .map(|p| {
            let name = p.file_name().unwrap().to_string_lossy().into_owned();
            (name, std::fs::read(&p).unwrap())
        })
        .collect()
}

fn budget() -> Duration {
    let secs: f64 = std::env::var("KEDGE_FUZZ_SECS")
        .ok()
        .and_then(|s| s.parse().ok())
        .unwrap_or(2.0);
    Duration::from_secs_f64(secs)
}

fn slow_bound() -> Duration {
    let ms: u64 = std::env::var("KEDGE_FUZZ_SLOW_MS")
        .ok()
        .and_then(|s| s.parse().ok())
        .unwrap_or(1000);
    Duration::from_millis(ms)
}

/// Runs `f` once under the crash and time checks; `Err` describes a failure.
fn exec(
    name: &str,
    f: &dyn Fn(&[u8]) -> bool,
    input: &[u8],
    slow: Duration,
) -> Result<bool, String> {
    let start = Instant::now();
    let out = std::panic::catch_unwind(std::panic::AssertUnwindSafe(|| f(input)));
    let took = start.elapsed();
    match out {
        Err(e) => {
            let msg = e
                .downcast_ref::<String>()
                .cloned()
                .or_else(|| e.downcast_ref::<&str>().map(|s| s.to_string()))
                .unwrap_or_default();
            let path = save(name, "crash", input);
            Err(format!(
                "fuzz {name}: panic {msg:?} on {} (saved to {})",
                show(input),
                path.display()
            ))
        }
        Ok(_) if took > slow && slow_again(f, input, slow) => {
            let path = save(name, "slow", input);
            Err(format!(
                "fuzz {name}: {took:?} (> {slow:?}) on {} bytes {} (saved to {})",
                input.len(),
                show(input),
                path.display()
            ))
        }
        Ok(accepted) => Ok(accepted),
    }
}

/// A slow input counts only if it is slow on two more runs: on a loaded CI machine one run
/// can lose a second to preemption (the bound is wall time).
fn slow_again(f: &dyn Fn(&[u8]) -> bool, input: &[u8], slow: Duration) -> bool {
    (0..2).all(|_| {
        let start = Instant::now();
        let _ = std::panic::catch_unwind(std::panic::AssertUnwindSafe(|| f(input)));
        start.elapsed() > slow
    })
}

/// Replays the corpus, then fuzzes `f` for the budget; panics (fails the test) on the first
/// crash or slow input, and prints executions per second.
pub fn run(t: Target<'_>, f: impl Fn(&[u8]) -> bool + Sync) {
    let seeds = corpus(t.name);
    assert!(!seeds.is_empty(), "fuzz {}: empty corpus", t.name);
    let slow = slow_bound();
    for (file, input) in &seeds {
        if let Err(e) = exec(t.name, &f, input, slow) {
            panic!("corpus file {file}: {e}");
        }
    }

    let seed = std::env::var("KEDGE_FUZZ_SEED")
        .ok()
        .and_then(|s| s.parse().ok())
        .unwrap_or_else(|| {
            if std::env::var_os("KEDGE_FUZZ_SECS").is_none() {
                // Short mode (CI): the same exploration on every run.
                return 0x9e37_79b9_7f4a_7c15;
            }
            std::time::SystemTime::now()
                .duration_since(std::time::UNIX_EPOCH)
                .map(|d| d.as_nanos() as u64)
                .unwrap_or(1)
                | 1
        });
    let mut rng = Rng(seed);
    let mut pool: Vec<Vec<u8>> = seeds.into_iter().map(|(_, b)| b).collect();
    let base = pool.len();

    // Watchdog: a hang (one input running for 30 s) cannot be unwound, so write it and abort.
    let current: Arc<Mutex<Vec<u8>>> = Arc::default();
    let started = Arc::new(AtomicU64::new(0));
    let done = Arc::new(AtomicBool::new(false));
    let clock = Instant::now();
    let dog = {
        let (current, started, done) = (current.clone(), started.clone(), done.clone());
        let name = t.name.to_owned();
        std::thread::spawn(move || {
            while !done.load(Ordering::Relaxed) {
                std::thread::sleep(Duration::from_millis(200));
                let s = started.load(Ordering::Relaxed);
                if s != 0 && clock.elapsed().as_millis() as u64 > s + 30_000 {
                    let input = current.lock().map(|c| c.clone()).unwrap_or_default();
                    let path = save(&name, "hang", &input);
                    eprintln!(
                        "fuzz {name}: HANG (> 30 s) on {} — saved to {}",
                        show(&input),
                        path.display()
                    );
                    std::process::abort();
                }
            }
        })
    };

    let deadline = Instant::now() + budget();
    let t0 = Instant::now();
    let (mut execs, mut accepted) = (0u64, 0u64);
    let mut result = Ok(());
    while Instant::now() < deadline {
        let mut input = pool[rng.below(pool.len())].clone();
        mutate(&mut rng, &mut input, &pool, t.dictionary, t.max_len);
        if let Ok(mut c) = current.lock() {
            c.clone_from(&input);
        }
        started.store(clock.elapsed().as_millis() as u64 + 1, Ordering::Relaxed);
        let out = exec(t.name, &f, &input, slow);
        started.store(0, Ordering::Relaxed);
        execs += 1;
        match out {
            Ok(true) => {
                accepted += 1;
                // Keep a bounded pool of accepted inputs (replacing at random when full).
                if pool.len() < base + 2000 {
                    pool.push(input);
                } else {
                    let i = base + rng.below(2000);
                    pool[i] = input;
                }
            }
            Ok(false) => {}
            Err(e) => {
                result = Err(e);
                break;
            }
        }
    }
    done.store(true, Ordering::Relaxed);
    let _ = dog.join();
    let secs = t0.elapsed().as_secs_f64();
    eprintln!(
        "fuzz {}: {execs} execs in {secs:.1}s ({:.0}/s), {accepted} accepted, pool {}, seed {seed}, {} crashes",
        t.name,
        execs as f64 / secs.max(1e-9),
        pool.len(),
        u8::from(result.is_err())
    );
    if let Err(e) = result {
        panic!("{e} (replay with KEDGE_FUZZ_SEED={seed})");
    }
}

/// Lossy UTF-8 view of fuzz bytes, for text parsers.
pub fn text(b: &[u8]) -> std::borrow::Cow<'_, str> {
    String::from_utf8_lossy(b)
}
