//! Linearizability checker for a Kubernetes-API key-value register with
//! compare-and-swap (resourceVersion preconditions).
//!
//! The search is the Wing & Gong / Lowe (WGL) algorithm as popularised by
//! Porcupine: the history is turned into a doubly linked list of call and
//! return entries sorted by time, and a depth-first search tries to linearize
//! pending calls one at a time, memoising every visited configuration
//! (set of linearized operations, model state) so that no configuration is
//! explored twice. The history is first decomposed per key
//! (P-compositionality): linearizability of the whole register is
//! equivalent to linearizability of every key's sub-history, and the
//! partitions are searched in parallel.
//!
//! Refinements over the textbook search:
//!
//! * The set of linearized operations is memoised by a 128-bit Zobrist
//!   fingerprint (updated in O(1) per step) instead of a full bitset, so the
//!   cache stays small for 100k-operation histories. A fingerprint collision
//!   (probability about `n² / 2¹²⁸`) could only prune a configuration that was
//!   never explored, i.e. produce a spurious anomaly, never hide a real one.
//! * An operation whose step leaves the state unchanged (reads, and writes
//!   that failed with `Exists`/`Conflict`/`NotFound`) is linearized eagerly:
//!   if any linearization exists from a configuration, one exists that
//!   linearizes such a pending, valid operation first. Such choices are never
//!   revisited, which removes the `2^k` blow-up of `k` concurrent reads.
//! * Per key, acknowledged writes must take effect in resourceVersion order
//!   (revisions are assigned in commit order). This is checked by the model
//!   (an anomaly otherwise) and prunes wrong write orders immediately.
//! * Operations with an `Unknown` outcome have no return entry: leaving one
//!   unlinearized is its "no effect" outcome, so only its effect is ever
//!   tried, and the search succeeds once every operation with a known outcome
//!   is linearized. At every configuration operations with known outcomes are
//!   tried first; unknown ones only when those are stuck, and only those that
//!   can take effect in the current state. Unknown operations with the same
//!   effect (creates or updates whose value no read observes, unconditional
//!   deletes, ...) are interchangeable, and are only applied in invocation
//!   order (see `Symmetry`).
//!
//! Lists are decomposed into one read per key. This checks that every key's
//! entry in a list is consistent with a linearization of that key, but not
//! that the list is an atomic snapshot across keys.
//!
//! Outside the search, [`check`] also verifies that acknowledged
//! resourceVersions are unique and ordered consistently with real time.

use std::collections::{BTreeMap, BTreeSet, HashMap, HashSet};
use std::fmt;
use std::sync::Mutex;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::time::{Duration, Instant};

/// A value written by exactly one write in the whole history (callers make
/// them unique, e.g. client id * 1e9 + seq).
pub type Value = u64;

/// A server-assigned resourceVersion: globally unique per successful write,
/// strictly increasing in real-time order of writes (etcd/kedge revision
/// semantics).
pub type Rv = u64;

/// The request a client sent.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Input {
    /// Create of a key that must not exist.
    Create {
        /// The object's key.
        key: String,
        /// The value written.
        value: Value,
    },
    /// Update with a resourceVersion precondition (metadata.resourceVersion
    /// in the PUT body).
    Update {
        /// The object's key.
        key: String,
        /// The resourceVersion the object must have.
        expect: Rv,
        /// The value written.
        value: Value,
    },
    /// Delete, optionally with preconditions.resourceVersion.
    Delete {
        /// The object's key.
        key: String,
        /// The resourceVersion the object must have, if any.
        expect: Option<Rv>,
    },
    /// Read of one key.
    Get {
        /// The object's key.
        key: String,
    },
    /// A list of every key in the namespace (the universe of keys is given to
    /// [`check`]).
    List,
}

impl Input {
    /// The key this input addresses, `None` for a list.
    pub fn key(&self) -> Option<&str> {
        match self {
            Input::Create { key, .. }
            | Input::Update { key, .. }
            | Input::Delete { key, .. }
            | Input::Get { key } => Some(key),
            Input::List => None,
        }
    }
}

/// The response a client observed.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Output {
    /// The write's response, with the new object's resourceVersion.
    Written {
        /// The new object's resourceVersion.
        rv: Rv,
    },
    /// A delete succeeded.
    Deleted,
    /// 409 AlreadyExists on create.
    Exists,
    /// 409 Conflict on an update/delete precondition.
    Conflict,
    /// 404 on an update, delete or get.
    NotFound,
    /// A get's result.
    Found {
        /// The object's value.
        value: Value,
        /// The object's resourceVersion.
        rv: Rv,
    },
    /// A list's result: the objects present (key -> (value, rv)); keys absent
    /// are not present.
    Listed(BTreeMap<String, (Value, Rv)>),
    /// Connection error / timeout / server killed: the operation may or may
    /// not have taken effect (Knossos' `:info`).
    Unknown,
}

/// One operation of a history.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Operation {
    /// The client (process) that issued the operation.
    pub client: usize,
    /// The request.
    pub input: Input,
    /// The response.
    pub output: Output,
    /// Monotonic time of invocation (e.g. nanoseconds since the run's start).
    pub call: u64,
    /// Monotonic time of the response; ignored (treated as +infinity) for
    /// [`Output::Unknown`].
    pub ret: u64,
}

/// A violation found by [`check`].
#[derive(Debug, Clone)]
pub struct Anomaly {
    /// The key whose sub-history is not linearizable, `None` for global
    /// (resourceVersion) anomalies.
    pub key: Option<String>,
    /// A readable explanation.
    pub explanation: String,
    /// The operations around the point where the search got stuck,
    /// formatted as `#index Operation { .. }`.
    pub ops: Vec<String>,
}

impl fmt::Display for Anomaly {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match &self.key {
            Some(key) => writeln!(f, "key {key:?}: {}", self.explanation)?,
            None => writeln!(f, "{}", self.explanation)?,
        }
        for op in &self.ops {
            writeln!(f, "    {op}")?;
        }
        Ok(())
    }
}

/// The result of [`check`].
#[derive(Debug, Clone, Default)]
pub struct Report {
    /// Operations in the history.
    pub ops: usize,
    /// Per-key operations searched, after decomposing lists and dropping
    /// reads with unknown outcomes.
    pub searched: usize,
    /// Number of keys (partitions) searched.
    pub partitions: usize,
    /// Wall-clock time the check took.
    pub elapsed: Duration,
    /// Violations found; empty means no violation was found.
    pub anomalies: Vec<Anomaly>,
    /// Keys whose search ran out of the time budget before deciding.
    pub undecided: Vec<String>,
}

impl Report {
    /// Whether the history was proven linearizable (no anomaly, nothing
    /// undecided).
    pub fn is_linearizable(&self) -> bool {
        self.anomalies.is_empty() && self.undecided.is_empty()
    }
}

impl fmt::Display for Report {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        writeln!(
            f,
            "checked {} operations ({} per-key operations in {} partitions) in {:?}: {} anomalies, {} undecided",
            self.ops,
            self.searched,
            self.partitions,
            self.elapsed,
            self.anomalies.len(),
            self.undecided.len()
        )?;
        if !self.undecided.is_empty() {
            writeln!(
                f,
                "undecided keys (time budget exceeded): {:?}",
                self.undecided
            )?;
        }
        for anomaly in &self.anomalies {
            write!(f, "{anomaly}")?;
        }
        Ok(())
    }
}

/// Most anomalies of one kind reported by the global checks.
const MAX_GLOBAL_ANOMALIES: usize = 10;

/// Checks `history`; `keys` is the universe of keys (needed to decompose
/// lists; keys mentioned by operations or lists are added to it). Returns the
/// report; `report.anomalies` empty means no violation was found, and
/// `report.undecided` lists keys whose search exceeded `budget` (partitions
/// are searched in parallel, all against the same wall-clock deadline, and a
/// partition is also undecided if its memo exceeds about 400 MB).
pub fn check(history: &[Operation], keys: &[String], budget: Duration) -> Report {
    let start = Instant::now();
    let deadline = start + budget;
    let mut anomalies = check_revisions(history);

    let mut universe: BTreeSet<&str> = keys.iter().map(String::as_str).collect();
    for op in history {
        if let Some(key) = op.input.key() {
            universe.insert(key);
        }
        if let Output::Listed(objects) = &op.output {
            universe.extend(objects.keys().map(String::as_str));
        }
    }
    let universe: Vec<&str> = universe.into_iter().collect();
    let mut partitions: Vec<Vec<POp>> = vec![Vec::new(); universe.len()];
    let index_of = |key: &str| universe.binary_search(&key).expect("key in universe");
    for (hist, op) in history.iter().enumerate() {
        match decompose(op) {
            Ok(Decomposed::None) => {}
            Ok(Decomposed::One(key, act)) => {
                partitions[index_of(key)].push(POp::new(hist, op, act))
            }
            Ok(Decomposed::List(objects)) => {
                for (part, key) in partitions.iter_mut().zip(&universe) {
                    let act = Act::Read(objects.get(*key).copied());
                    part.push(POp::new(hist, op, act));
                }
            }
            Err(why) => anomalies.push(Anomaly {
                key: op.input.key().map(str::to_owned),
                explanation: format!("impossible response: {why}"),
                ops: vec![format!("#{hist} {op:?}")],
            }),
        }
    }

    let searched = partitions.iter().map(Vec::len).sum();
    let next = AtomicUsize::new(0);
    let results: Mutex<Vec<(usize, Outcome)>> = Mutex::new(Vec::new());
    let workers = std::thread::available_parallelism()
        .map_or(1, usize::from)
        .min(partitions.len())
        .max(1);
    std::thread::scope(|scope| {
        for _ in 0..workers {
            scope.spawn(|| {
                loop {
                    let i = next.fetch_add(1, Ordering::Relaxed);
                    let Some(ops) = partitions.get(i) else { break };
                    let outcome = search(ops, deadline);
                    results.lock().expect("results lock").push((i, outcome));
                }
            });
        }
    });
    let mut results = results.into_inner().expect("results lock");
    results.sort_by_key(|(i, _)| *i);

    let mut undecided = Vec::new();
    for (i, outcome) in results {
        let key = universe[i];
        match outcome {
            Outcome::Linearizable => {}
            Outcome::Undecided => undecided.push(key.to_owned()),
            Outcome::Stuck(stuck) => anomalies.push(stuck.anomaly(key, &partitions[i], history)),
        }
    }

    Report {
        ops: history.len(),
        searched,
        partitions: partitions.len(),
        elapsed: start.elapsed(),
        anomalies,
        undecided,
    }
}

/// Checks that acknowledged resourceVersions are unique and that a write
/// acknowledged before another was invoked has the smaller resourceVersion.
/// O(n log n).
fn check_revisions(history: &[Operation]) -> Vec<Anomaly> {
    let mut writes: Vec<(Rv, usize)> = history
        .iter()
        .enumerate()
        .filter_map(|(i, op)| match (&op.input, &op.output) {
            (Input::Create { .. } | Input::Update { .. }, Output::Written { rv }) => Some((*rv, i)),
            _ => None,
        })
        .collect();
    writes.sort_unstable();
    let show = |i: usize| format!("#{i} {:?}", history[i]);
    let mut anomalies = Vec::new();

    let duplicates: Vec<_> = writes.windows(2).filter(|w| w[0].0 == w[1].0).collect();
    for w in duplicates.iter().take(MAX_GLOBAL_ANOMALIES) {
        anomalies.push(Anomaly {
            key: None,
            explanation: format!(
                "two writes were acknowledged with the same resourceVersion {}",
                w[0].0
            ),
            ops: vec![show(w[0].1), show(w[1].1)],
        });
    }

    // Sweep from the highest resourceVersion down, remembering the earliest
    // response among writes with a strictly higher resourceVersion.
    let mut reordered = Vec::new();
    let mut earliest: Option<(u64, usize)> = None;
    let mut group = writes.len();
    while group > 0 {
        let rv = writes[group - 1].0;
        let mut lo = group;
        while lo > 0 && writes[lo - 1].0 == rv {
            lo -= 1;
        }
        for &(_, b) in &writes[lo..group] {
            if let Some((ret, a)) = earliest
                && ret < history[b].call
            {
                reordered.push((a, b));
            }
        }
        for &(_, a) in &writes[lo..group] {
            if earliest.is_none_or(|(ret, _)| history[a].ret < ret) {
                earliest = Some((history[a].ret, a));
            }
        }
        group = lo;
    }
    for &(a, b) in reordered.iter().take(MAX_GLOBAL_ANOMALIES) {
        anomalies.push(Anomaly {
            key: None,
            explanation: format!(
                "write #{a} returned before write #{b} was invoked, but got the higher resourceVersion"
            ),
            ops: vec![show(a), show(b)],
        });
    }
    anomalies
}

/// How an operation maps onto the per-key partitions.
enum Decomposed<'a> {
    /// Dropped (a read with an unknown outcome).
    None,
    /// One action on one key.
    One(&'a str, Act),
    /// A list: a read on every key of the universe.
    List(BTreeMap<&'a str, (Value, Rv)>),
}

/// Maps an operation to the per-key actions the model understands, or
/// explains why its response is impossible for its request.
fn decompose(op: &Operation) -> Result<Decomposed<'_>, &'static str> {
    use Output as O;
    let outcome = |output: &O| match output {
        O::Written { rv } => Some(Reply::Written(*rv)),
        O::Deleted => Some(Reply::Deleted),
        O::Exists => Some(Reply::Exists),
        O::Conflict => Some(Reply::Conflict),
        O::NotFound => Some(Reply::NotFound),
        O::Unknown => Some(Reply::Unknown),
        O::Found { .. } | O::Listed(_) => None,
    };
    Ok(match (&op.input, &op.output) {
        (Input::Get { .. } | Input::List, O::Unknown) => Decomposed::None,
        (Input::Get { key }, O::Found { value, rv }) => {
            Decomposed::One(key, Act::Read(Some((*value, *rv))))
        }
        (Input::Get { key }, O::NotFound) => Decomposed::One(key, Act::Read(None)),
        (Input::Get { .. }, _) => return Err("a get can only return Found, NotFound or Unknown"),
        (Input::List, O::Listed(objects)) => {
            Decomposed::List(objects.iter().map(|(k, v)| (k.as_str(), *v)).collect())
        }
        (Input::List, _) => return Err("a list can only return Listed or Unknown"),
        (Input::Create { key, value }, output) => match outcome(output) {
            Some(outcome @ (Reply::Written(_) | Reply::Exists | Reply::Unknown)) => {
                Decomposed::One(
                    key,
                    Act::Create {
                        value: *value,
                        outcome,
                    },
                )
            }
            _ => return Err("a create can only return Written, Exists or Unknown"),
        },
        (Input::Update { key, expect, value }, output) => match outcome(output) {
            Some(
                outcome @ (Reply::Written(_) | Reply::Conflict | Reply::NotFound | Reply::Unknown),
            ) => {
                let (expect, value) = (*expect, *value);
                Decomposed::One(
                    key,
                    Act::Update {
                        expect,
                        value,
                        outcome,
                    },
                )
            }
            _ => return Err("an update can only return Written, Conflict, NotFound or Unknown"),
        },
        (Input::Delete { key, expect }, output) => match outcome(output) {
            Some(Reply::Conflict) if expect.is_none() => {
                return Err("a delete without precondition cannot conflict");
            }
            Some(
                outcome @ (Reply::Deleted | Reply::Conflict | Reply::NotFound | Reply::Unknown),
            ) => Decomposed::One(
                key,
                Act::Delete {
                    expect: *expect,
                    outcome,
                },
            ),
            _ => return Err("a delete can only return Deleted, Conflict, NotFound or Unknown"),
        },
    })
}

/// The model's state of one key.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
enum State {
    /// The object does not exist.
    Absent,
    /// The object exists; its resourceVersion is unknown if it was written by
    /// an operation with an unknown outcome and not yet observed by a read.
    Present { value: Value, rv: Option<Rv> },
}

/// The outcome of a write, as the model sees it.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
enum Reply {
    Written(Rv),
    Deleted,
    Exists,
    Conflict,
    NotFound,
    Unknown,
}

/// One operation on one key.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
enum Act {
    /// A get or one key of a list: the object observed, if any.
    Read(Option<(Value, Rv)>),
    Create {
        value: Value,
        outcome: Reply,
    },
    Update {
        expect: Rv,
        value: Value,
        outcome: Reply,
    },
    Delete {
        expect: Option<Rv>,
        outcome: Reply,
    },
}

impl Act {
    /// The resourceVersion of an acknowledged create or update.
    fn written(self) -> Option<Rv> {
        match self {
            Act::Create {
                outcome: Reply::Written(rv),
                ..
            }
            | Act::Update {
                outcome: Reply::Written(rv),
                ..
            } => Some(rv),
            _ => None,
        }
    }

    /// Whether the outcome is unknown (the "no effect" variant is modelled by
    /// never linearizing the operation).
    fn unknown(self) -> bool {
        matches!(
            self,
            Act::Create {
                outcome: Reply::Unknown,
                ..
            } | Act::Update {
                outcome: Reply::Unknown,
                ..
            } | Act::Delete {
                outcome: Reply::Unknown,
                ..
            }
        )
    }
}

/// The sequential specification: the state after `act` if `act` (with its
/// observed outcome, or the effect variant of an unknown outcome) is valid in
/// `state`.
fn step(state: State, act: Act) -> Option<State> {
    use Reply as R;
    use State::{Absent, Present};
    let matches = |rv: Option<Rv>, expect: Option<Rv>| expect.is_none_or(|e| rv == Some(e));
    match (act, state) {
        (Act::Read(None), Absent) => Some(Absent),
        (Act::Read(Some((seen, seen_rv))), Present { value, rv })
            if seen == value && matches(Some(seen_rv), rv) =>
        {
            Some(Present {
                value,
                rv: Some(seen_rv),
            })
        }
        (
            Act::Create {
                value,
                outcome: R::Written(rv),
            },
            Absent,
        ) => Some(Present {
            value,
            rv: Some(rv),
        }),
        (
            Act::Create {
                value,
                outcome: R::Unknown,
            },
            Absent,
        ) => Some(Present { value, rv: None }),
        (
            Act::Create {
                outcome: R::Exists, ..
            },
            Present { .. },
        ) => Some(state),
        (
            Act::Update {
                expect,
                value,
                outcome: R::Written(rv),
            },
            Present { rv: cur, .. },
        ) if cur == Some(expect) => Some(Present {
            value,
            rv: Some(rv),
        }),
        (
            Act::Update {
                expect,
                value,
                outcome: R::Unknown,
            },
            Present { rv: cur, .. },
        ) if cur == Some(expect) => Some(Present { value, rv: None }),
        (
            Act::Update {
                expect,
                outcome: R::Conflict,
                ..
            },
            Present { rv, .. },
        ) if rv != Some(expect) => Some(state),
        (
            Act::Update {
                outcome: R::NotFound,
                ..
            },
            Absent,
        ) => Some(Absent),
        (
            Act::Delete {
                expect,
                outcome: R::Deleted | R::Unknown,
            },
            Present { rv, .. },
        ) if matches(rv, expect) => Some(Absent),
        (
            Act::Delete {
                expect: Some(e),
                outcome: R::Conflict,
            },
            Present { rv, .. },
        ) if rv != Some(e) => Some(state),
        (
            Act::Delete {
                outcome: R::NotFound,
                ..
            },
            Absent,
        ) => Some(Absent),
        _ => None,
    }
}

/// [`step`], plus the resourceVersion order of writes: `floor` is the
/// highest resourceVersion known to have been written to the key, and a
/// write acknowledged with a resourceVersion (or an unknown write whose
/// resourceVersion a read reveals) must exceed it, since revisions are
/// assigned in commit order.
fn advance(state: State, floor: Rv, act: Act) -> Option<(State, Rv)> {
    let next = step(state, act)?;
    let revealed = match (act, state) {
        (
            Act::Create {
                outcome: Reply::Written(rv),
                ..
            }
            | Act::Update {
                outcome: Reply::Written(rv),
                ..
            },
            _,
        )
        | (Act::Read(Some((_, rv))), State::Present { rv: None, .. }) => Some(rv),
        _ => None,
    };
    match revealed {
        Some(rv) if rv <= floor => None,
        Some(rv) => Some((next, rv)),
        None => Some((next, floor)),
    }
}

/// One operation of a partition.
#[derive(Debug, Clone, Copy)]
struct POp {
    /// Index in the history.
    hist: usize,
    act: Act,
    call: u64,
    /// `None` for unknown outcomes (never returns).
    ret: Option<u64>,
}

impl POp {
    fn new(hist: usize, op: &Operation, act: Act) -> Self {
        let ret = (!act.unknown()).then_some(op.ret.max(op.call));
        POp {
            hist,
            act,
            call: op.call,
            ret,
        }
    }
}

/// The result of searching one partition.
enum Outcome {
    Linearizable,
    Undecided,
    Stuck(Stuck),
}

/// Where the search of a non-linearizable partition got furthest.
struct Stuck {
    /// Operations with known outcomes linearized at the deepest point.
    depth: usize,
    /// Operations with known outcomes in the partition.
    total: usize,
    /// The model's state there.
    state: State,
    /// The earliest-returning operation that could not be linearized.
    blocked: usize,
    /// Pending operations invoked before `blocked` returned.
    pending: Vec<usize>,
    /// The last operations linearized, oldest first.
    recent: Vec<usize>,
}

/// Pending and recent operations shown in an anomaly.
const SHOWN: usize = 8;

impl Stuck {
    fn anomaly(&self, key: &str, ops: &[POp], history: &[Operation]) -> Anomaly {
        let show =
            |label: &str, i: usize| format!("{label} #{} {:?}", ops[i].hist, history[ops[i].hist]);
        let mut shown = vec![show("blocked:", self.blocked)];
        shown.extend(self.pending.iter().map(|&i| show("pending:", i)));
        shown.extend(self.recent.iter().map(|&i| show("linearized:", i)));
        Anomaly {
            key: Some(key.to_owned()),
            explanation: format!(
                "not linearizable: the longest linearizable prefix has {} of {} operations with known outcomes; \
                 in state {:?} operation #{} (blocked) cannot be linearized before it returned",
                self.depth, self.total, self.state, ops[self.blocked].hist
            ),
            ops: shown,
        }
    }
}

/// A SplitMix64 step, used for Zobrist fingerprints.
fn splitmix(mut x: u64) -> u64 {
    x = x.wrapping_add(0x9e37_79b9_7f4a_7c15);
    x = (x ^ (x >> 30)).wrapping_mul(0xbf58_476d_1ce4_e5b9);
    x = (x ^ (x >> 27)).wrapping_mul(0x94d0_49bb_1331_11eb);
    x ^ (x >> 31)
}

/// Marks the end of the entry list.
const NIL: usize = usize::MAX;

/// A choice made by the search, undone on backtracking.
struct Frame {
    op: usize,
    /// The state before the operation.
    state: State,
    /// The resourceVersion floor before the operation.
    floor: Rv,
    /// The operation left the state unchanged: no alternative needs trying.
    forced: bool,
    /// Where the operation was found: `None` in the scan of operations with
    /// known outcomes, `Some(i)` at index `i` of the unknown candidates.
    candidate: Option<usize>,
}

/// The linked list of call/return entries of the operations with known
/// outcomes (dancing links).
struct Entries {
    /// The operation of each entry.
    op: Vec<usize>,
    /// The time of each entry.
    time: Vec<u64>,
    /// Whether each entry is a return entry.
    is_ret: Vec<bool>,
    next: Vec<usize>,
    prev: Vec<usize>,
    /// The sentinel before the first entry.
    head: usize,
    /// Each operation's call and return entries (`NIL` for unknown outcomes).
    of_op: Vec<(usize, usize)>,
}

impl Entries {
    fn new(ops: &[POp]) -> Self {
        let mut order: Vec<(u64, bool, usize)> = Vec::with_capacity(ops.len() * 2);
        for (i, op) in ops.iter().enumerate() {
            if let Some(ret) = op.ret {
                order.push((op.call, false, i));
                order.push((ret, true, i));
            }
        }
        // Calls sort before returns at equal times: such operations overlap.
        order.sort_unstable();
        let n = order.len();
        let mut entries = Entries {
            op: order.iter().map(|e| e.2).collect(),
            time: order.iter().map(|e| e.0).collect(),
            is_ret: order.iter().map(|e| e.1).collect(),
            next: (1..=n).map(|i| if i == n { NIL } else { i }).collect(),
            prev: (0..n).map(|i| if i == 0 { n } else { i - 1 }).collect(),
            head: n,
            of_op: vec![(NIL, NIL); ops.len()],
        };
        entries.next.push(if n == 0 { NIL } else { 0 });
        entries.prev.push(NIL);
        for (e, &(_, is_ret, i)) in order.iter().enumerate() {
            if is_ret {
                entries.of_op[i].1 = e;
            } else {
                entries.of_op[i].0 = e;
            }
        }
        entries
    }

    fn unlink(&mut self, e: usize) {
        let (p, n) = (self.prev[e], self.next[e]);
        self.next[p] = n;
        if n != NIL {
            self.prev[n] = p;
        }
    }

    fn relink(&mut self, e: usize) {
        let (p, n) = (self.prev[e], self.next[e]);
        self.next[p] = e;
        if n != NIL {
            self.prev[n] = e;
        }
    }

    /// Removes an operation's entries (it was linearized).
    fn lift(&mut self, op: usize) {
        let (call, ret) = self.of_op[op];
        self.unlink(call);
        self.unlink(ret);
    }

    /// Restores an operation's entries, undoing the last [`Entries::lift`].
    fn unlift(&mut self, op: usize) {
        let (call, ret) = self.of_op[op];
        self.relink(ret);
        self.relink(call);
    }

    /// The first unlinearized return entry (every operation invoked before it
    /// is pending).
    fn wall(&self) -> usize {
        let mut e = self.next[self.head];
        while e != NIL && !self.is_ret[e] {
            e = self.next[e];
        }
        e
    }
}

/// Most configurations memoised per partition before giving up (about 50
/// bytes each).
const MAX_CONFIGURATIONS: usize = 1 << 23;

/// Searches one partition for a linearization.
///
/// At each configuration, pending operations with known outcomes are tried
/// first, in call order (a forward scan of the entry list up to the first
/// unlinearized return entry, the "wall"); when none applies, the
/// operations with unknown outcomes invoked before the wall and able to
/// take effect in the current state (see [`Symmetry::candidates`]).
fn search(ops: &[POp], deadline: Instant) -> Outcome {
    let mut list = Entries::new(ops);
    let symmetry = Symmetry::new(ops);
    let mut used = vec![0usize; symmetry.members.len()];
    let zobrist: Vec<(u64, u64)> = (0..ops.len() as u64)
        .map(|i| (splitmix(2 * i), splitmix(2 * i + 1)))
        .collect();
    let total = ops.iter().filter(|op| op.ret.is_some()).count();
    let mut remaining = total;
    let mut state = State::Absent;
    let mut floor: Rv = 0;
    // Known writes must be linearized in resourceVersion order, so the ones
    // linearized are always a prefix of `written`.
    let mut written: Vec<Rv> = ops.iter().filter_map(|op| op.act.written()).collect();
    written.sort_unstable();
    let mut writes_done = 0;
    let mut fingerprint = (0u64, 0u64);
    let mut seen: HashSet<(u64, u64, State, Rv)> = HashSet::new();
    seen.insert((0, 0, state, floor));
    let mut stack: Vec<Frame> = Vec::new();
    let mut best: Option<Stuck> = None;
    // The scan position: `Ok(entry)` while scanning known outcomes,
    // `Err(index)` while trying unknown candidates.
    let mut cursor: Result<usize, usize> = Ok(list.next[list.head]);
    let mut candidates = Vec::new();
    let mut steps = 0u64;

    loop {
        if remaining == 0 {
            return Outcome::Linearizable;
        }
        steps += 1;
        if steps.is_multiple_of(1 << 12)
            && (Instant::now() >= deadline || seen.len() > MAX_CONFIGURATIONS)
        {
            return Outcome::Undecided;
        }
        let op = match cursor {
            Ok(e) if e != NIL && !list.is_ret[e] => {
                cursor = Ok(list.next[e]);
                list.op[e]
            }
            Ok(e) => {
                // The wall: switch to the unknown outcomes. `e` is never NIL
                // while a known outcome remains unlinearized.
                let wall = if e == NIL { u64::MAX } else { list.time[e] };
                symmetry.candidates(ops, state, &used, wall, &mut candidates);
                cursor = Err(0);
                continue;
            }
            Err(i) if i < candidates.len() => {
                cursor = Err(i + 1);
                candidates[i]
            }
            Err(_) => {
                // Dead end: record the frontier and backtrack.
                let depth = total - remaining;
                if best.as_ref().is_none_or(|b| depth > b.depth) {
                    best = Some(frontier(&list, &stack, &candidates, state, depth, total));
                }
                loop {
                    let Some(frame) = stack.pop() else {
                        return Outcome::Stuck(best.expect("recorded before backtracking"));
                    };
                    state = frame.state;
                    floor = frame.floor;
                    if ops[frame.op].act.written().is_some() {
                        writes_done -= 1;
                    }
                    let z = zobrist[frame.op];
                    fingerprint = (fingerprint.0 ^ z.0, fingerprint.1 ^ z.1);
                    match symmetry.class_of[frame.op] {
                        Some(class) => used[class] -= 1,
                        None => {
                            list.unlift(frame.op);
                            remaining += 1;
                        }
                    }
                    if !frame.forced {
                        cursor = match frame.candidate {
                            None => Ok(list.next[list.of_op[frame.op].0]),
                            Some(i) => {
                                let wall = list.wall();
                                let wall = if wall == NIL {
                                    u64::MAX
                                } else {
                                    list.time[wall]
                                };
                                symmetry.candidates(ops, state, &used, wall, &mut candidates);
                                Err(i + 1)
                            }
                        };
                        break;
                    }
                }
                continue;
            }
        };

        let Some((next, next_floor)) = advance(state, floor, symmetry.acts[op]) else {
            continue;
        };
        // A known write with a lower resourceVersion could never follow.
        if written
            .get(writes_done)
            .is_some_and(|&lowest| lowest < next_floor)
        {
            continue;
        }
        let z = zobrist[op];
        let candidate = (fingerprint.0 ^ z.0, fingerprint.1 ^ z.1);
        if !seen.insert((candidate.0, candidate.1, next, next_floor)) {
            continue;
        }
        stack.push(Frame {
            op,
            state,
            floor,
            forced: next == state && next_floor == floor,
            candidate: cursor.err().map(|i| i - 1),
        });
        state = next;
        floor = next_floor;
        if ops[op].act.written().is_some() {
            writes_done += 1;
        }
        fingerprint = candidate;
        match symmetry.class_of[op] {
            Some(class) => used[class] += 1,
            None => {
                list.lift(op);
                remaining -= 1;
            }
        }
        cursor = Ok(list.next[list.head]);
    }
}

/// Symmetry reduction and indexing of operations with unknown outcomes.
///
/// Writes with unknown outcomes whose value no read observes are
/// indistinguishable once applied, so their value is replaced by a sentinel
/// nobody observed. Unknown operations with equal (canonical) actions are then
/// interchangeable: any linearization applying one of them can instead apply
/// the earliest-invoked unused one of its class, so the search only ever
/// applies the members of a class in invocation order. Without this, every
/// subset of pending unknown creates and deletes is a distinct configuration.
/// Classes are indexed by the state they need, so that dead unknown
/// operations (e.g. an update whose expected resourceVersion is long gone)
/// cost nothing.
struct Symmetry {
    /// Each operation's canonical action.
    acts: Vec<Act>,
    /// For unknown operations: the class.
    class_of: Vec<Option<usize>>,
    /// Each class's members in invocation order.
    members: Vec<Vec<usize>>,
    /// Classes that apply to an absent object (creates).
    when_absent: Vec<usize>,
    /// Classes that apply to any present object (unconditional deletes).
    when_present: Vec<usize>,
    /// Classes that apply to an object with a given resourceVersion.
    when_rv: HashMap<Rv, Vec<usize>>,
}

impl Symmetry {
    fn new(ops: &[POp]) -> Self {
        let observed: HashSet<Value> = ops
            .iter()
            .filter_map(|op| match op.act {
                Act::Read(Some((value, _))) => Some(value),
                _ => None,
            })
            .collect();
        let sentinel = (0..=Value::MAX)
            .rev()
            .find(|v| !observed.contains(v))
            .expect("fewer observed values than u64s");
        let acts: Vec<Act> = ops
            .iter()
            .map(|op| match op.act {
                Act::Create {
                    value,
                    outcome: Reply::Unknown,
                } if !observed.contains(&value) => Act::Create {
                    value: sentinel,
                    outcome: Reply::Unknown,
                },
                Act::Update {
                    expect,
                    value,
                    outcome: Reply::Unknown,
                } if !observed.contains(&value) => Act::Update {
                    expect,
                    value: sentinel,
                    outcome: Reply::Unknown,
                },
                act => act,
            })
            .collect();
        let mut unknown: Vec<usize> = (0..ops.len()).filter(|&i| ops[i].ret.is_none()).collect();
        unknown.sort_by_key(|&i| (ops[i].call, i));
        let mut ids: HashMap<Act, usize> = HashMap::new();
        let mut symmetry = Symmetry {
            acts,
            class_of: vec![None; ops.len()],
            members: Vec::new(),
            when_absent: Vec::new(),
            when_present: Vec::new(),
            when_rv: HashMap::new(),
        };
        for i in unknown {
            let act = symmetry.acts[i];
            let class = *ids.entry(act).or_insert_with(|| {
                let class = symmetry.members.len();
                symmetry.members.push(Vec::new());
                match act {
                    Act::Create { .. } => symmetry.when_absent.push(class),
                    Act::Delete { expect: None, .. } => symmetry.when_present.push(class),
                    Act::Update { expect, .. }
                    | Act::Delete {
                        expect: Some(expect),
                        ..
                    } => {
                        symmetry.when_rv.entry(expect).or_default().push(class);
                    }
                    Act::Read(_) => unreachable!("reads with unknown outcomes are dropped"),
                }
                class
            });
            symmetry.class_of[i] = Some(class);
            symmetry.members[class].push(i);
        }
        symmetry
    }

    /// The unknown operations worth trying in `state`: the next unused member
    /// of every class applicable to `state`, if invoked by `wall`.
    fn candidates(
        &self,
        ops: &[POp],
        state: State,
        used: &[usize],
        wall: u64,
        out: &mut Vec<usize>,
    ) {
        out.clear();
        let (first, second): (&[usize], &[usize]) = match state {
            State::Absent => (&self.when_absent, &[]),
            State::Present { rv: None, .. } => (&self.when_present, &[]),
            State::Present { rv: Some(rv), .. } => (
                &self.when_present,
                self.when_rv.get(&rv).map_or(&[], Vec::as_slice),
            ),
        };
        for &class in first.iter().chain(second) {
            if let Some(&op) = self.members[class].get(used[class])
                && ops[op].call <= wall
            {
                out.push(op);
            }
        }
    }
}

/// Describes the search frontier at a dead end.
fn frontier(
    list: &Entries,
    stack: &[Frame],
    candidates: &[usize],
    state: State,
    depth: usize,
    total: usize,
) -> Stuck {
    let mut pending = Vec::new();
    let mut e = list.next[list.head];
    while e != NIL && !list.is_ret[e] {
        pending.push(list.op[e]);
        e = list.next[e];
    }
    let blocked = if e == NIL {
        pending.first().copied().unwrap_or(0)
    } else {
        list.op[e]
    };
    pending.retain(|&op| op != blocked);
    pending.truncate(SHOWN);
    pending.extend(candidates.iter().take(SHOWN.saturating_sub(pending.len())));
    Stuck {
        depth,
        total,
        state,
        blocked,
        pending,
        recent: stack[stack.len().saturating_sub(SHOWN)..]
            .iter()
            .map(|f| f.op)
            .collect(),
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::cmp::Reverse;
    use std::collections::BinaryHeap;

    const BUDGET: Duration = Duration::from_secs(60);

    fn key(name: &str) -> String {
        name.to_owned()
    }

    fn op(client: usize, input: Input, output: Output, call: u64, ret: u64) -> Operation {
        Operation {
            client,
            input,
            output,
            call,
            ret,
        }
    }

    fn create(k: &str, value: Value) -> Input {
        Input::Create { key: key(k), value }
    }

    fn update(k: &str, expect: Rv, value: Value) -> Input {
        Input::Update {
            key: key(k),
            expect,
            value,
        }
    }

    fn delete(k: &str, expect: Option<Rv>) -> Input {
        Input::Delete {
            key: key(k),
            expect,
        }
    }

    fn get(k: &str) -> Input {
        Input::Get { key: key(k) }
    }

    fn found(value: Value, rv: Rv) -> Output {
        Output::Found { value, rv }
    }

    fn written(rv: Rv) -> Output {
        Output::Written { rv }
    }

    fn listed(objects: &[(&str, Value, Rv)]) -> Output {
        Output::Listed(
            objects
                .iter()
                .map(|&(k, v, rv)| (key(k), (v, rv)))
                .collect(),
        )
    }

    fn run(history: &[Operation]) -> Report {
        let report = check(history, &[key("a"), key("b")], BUDGET);
        println!("{report}");
        assert!(report.undecided.is_empty(), "undecided: {report}");
        report
    }

    fn assert_ok(history: &[Operation]) {
        let report = run(history);
        assert!(report.is_linearizable(), "expected linearizable: {report}");
    }

    fn assert_anomaly(history: &[Operation]) -> Report {
        let report = run(history);
        assert!(
            !report.anomalies.is_empty(),
            "expected an anomaly: {report}"
        );
        report
    }

    #[test]
    fn sequential_history_passes() {
        assert_ok(&[
            op(0, get("a"), Output::NotFound, 0, 1),
            op(0, create("a", 1), written(10), 2, 3),
            op(0, create("a", 2), Output::Exists, 4, 5),
            op(0, get("a"), found(1, 10), 6, 7),
            op(0, update("a", 10, 3), written(11), 8, 9),
            op(0, update("a", 10, 4), Output::Conflict, 10, 11),
            op(0, Input::List, listed(&[("a", 3, 11)]), 12, 13),
            op(0, delete("a", Some(10)), Output::Conflict, 14, 15),
            op(0, delete("a", Some(11)), Output::Deleted, 16, 17),
            op(0, delete("a", None), Output::NotFound, 18, 19),
            op(0, update("a", 11, 5), Output::NotFound, 20, 21),
            op(0, Input::List, listed(&[]), 22, 23),
            op(0, create("a", 6), written(12), 24, 25),
            op(0, get("b"), Output::Unknown, 26, 27),
            op(0, get("a"), found(6, 12), 28, 29),
        ]);
    }

    #[test]
    fn concurrent_history_passes() {
        assert_ok(&[
            op(0, create("a", 1), written(10), 0, 10),
            // Linearized before the create.
            op(1, get("a"), Output::NotFound, 1, 5),
            op(2, get("a"), found(1, 10), 2, 12),
            // Two concurrent updates from the same version: one wins.
            op(1, update("a", 10, 2), Output::Conflict, 11, 20),
            op(2, update("a", 10, 3), written(11), 13, 21),
            op(3, Input::List, listed(&[("a", 3, 11)]), 14, 30),
            // A read concurrent with a delete may see either side.
            op(0, delete("a", None), Output::Deleted, 31, 40),
            op(1, get("a"), found(3, 11), 32, 41),
            op(2, get("a"), Output::NotFound, 33, 42),
            op(3, create("b", 7), written(12), 33, 42),
        ]);
    }

    #[test]
    fn stale_read_fails() {
        let report = assert_anomaly(&[
            op(0, create("a", 1), written(1), 0, 1),
            op(0, update("a", 1, 2), written(2), 2, 3),
            op(1, get("a"), found(1, 1), 4, 5),
        ]);
        assert_eq!(report.anomalies[0].key.as_deref(), Some("a"));
    }

    #[test]
    fn lost_update_fails() {
        assert_anomaly(&[
            op(0, create("a", 1), written(1), 0, 1),
            op(1, update("a", 1, 2), written(2), 2, 5),
            op(2, update("a", 1, 3), written(3), 3, 6),
        ]);
    }

    #[test]
    fn read_of_unwritten_value_fails() {
        assert_anomaly(&[
            op(0, create("a", 1), written(1), 0, 1),
            op(1, get("a"), found(99, 1), 2, 3),
        ]);
    }

    #[test]
    fn double_create_fails() {
        assert_anomaly(&[
            op(0, create("a", 1), written(1), 0, 1),
            op(1, create("a", 2), written(2), 2, 3),
        ]);
    }

    #[test]
    fn unknown_create_observed_later_passes() {
        assert_ok(&[
            op(0, create("a", 1), Output::Unknown, 0, 1),
            op(1, get("a"), Output::NotFound, 2, 3),
            op(1, get("a"), found(1, 5), 10, 11),
            // The read pinned the unknown resourceVersion.
            op(1, update("a", 5, 2), written(6), 12, 13),
        ]);
    }

    #[test]
    fn unknown_update_never_observed_passes() {
        assert_ok(&[
            op(0, create("a", 1), written(1), 0, 1),
            op(0, update("a", 1, 2), Output::Unknown, 2, 3),
            op(1, get("a"), found(1, 1), 4, 5),
            op(1, update("a", 1, 3), written(2), 6, 7),
        ]);
    }

    #[test]
    fn unknown_update_observed_before_its_call_fails() {
        assert_anomaly(&[
            op(0, create("a", 1), written(1), 0, 1),
            op(1, get("a"), found(2, 5), 2, 3),
            op(0, update("a", 1, 2), Output::Unknown, 10, 11),
        ]);
    }

    #[test]
    fn duplicate_rv_fails() {
        let report = assert_anomaly(&[
            op(0, create("a", 1), written(5), 0, 1),
            op(1, create("b", 2), written(5), 0, 1),
        ]);
        assert_eq!(report.anomalies.len(), 1);
        assert!(report.anomalies[0].key.is_none());
    }

    #[test]
    fn rv_order_against_real_time_fails() {
        let history = [
            op(0, create("a", 1), written(10), 0, 1),
            op(1, create("b", 2), written(5), 2, 3),
        ];
        let report = assert_anomaly(&history);
        assert_eq!(report.anomalies.len(), 1);
        // Overlapping writes may get either order.
        let mut overlapping = history.clone();
        overlapping[1].call = 1;
        assert_ok(&overlapping);
    }

    #[test]
    fn writes_against_rv_order_fail() {
        // Concurrent updates: the one with the lower resourceVersion must
        // take effect first, so it cannot have expected the other's version.
        assert_anomaly(&[
            op(0, create("a", 1), written(1), 0, 1),
            op(1, update("a", 1, 2), written(3), 2, 10),
            op(2, update("a", 3, 3), written(2), 2, 10),
        ]);
        assert_ok(&[
            op(0, create("a", 1), written(1), 0, 1),
            op(1, update("a", 1, 2), written(2), 2, 10),
            op(2, update("a", 2, 3), written(3), 2, 10),
        ]);
    }

    #[test]
    fn list_showing_deleted_key_fails() {
        assert_anomaly(&[
            op(0, create("a", 1), written(1), 0, 1),
            op(0, delete("a", Some(1)), Output::Deleted, 2, 3),
            op(1, Input::List, listed(&[("a", 1, 1)]), 4, 5),
        ]);
    }

    #[test]
    fn impossible_response_fails() {
        assert_anomaly(&[op(0, get("a"), written(1), 0, 1)]);
    }

    #[test]
    fn budget_exhaustion_is_undecided() {
        let (history, keys) = simulate(20_000, 32, 4, 5, 7);
        let report = check(&history, &keys, Duration::ZERO);
        assert!(report.anomalies.is_empty(), "{report}");
        assert!(!report.undecided.is_empty(), "{report}");
    }

    /// A xorshift64* generator.
    struct Rng(u64);

    impl Rng {
        fn next(&mut self) -> u64 {
            self.0 ^= self.0 >> 12;
            self.0 ^= self.0 << 25;
            self.0 ^= self.0 >> 27;
            self.0.wrapping_mul(0x2545_f491_4f6c_dd1d)
        }

        fn below(&mut self, n: u64) -> u64 {
            self.next() % n
        }
    }

    /// Simulates `clients` clients doing `n` operations on a linearizable
    /// register of `n_keys` keys; each operation takes effect at a random
    /// point of its window, and about `unknown_per_mille` of them get an
    /// unknown outcome (taking effect or not).
    fn simulate(
        n: usize,
        clients: usize,
        n_keys: usize,
        unknown_per_mille: u64,
        seed: u64,
    ) -> (Vec<Operation>, Vec<String>) {
        #[derive(Clone, Copy, PartialEq, Eq, PartialOrd, Ord)]
        enum Event {
            Invoke,
            Effect,
            Return,
        }
        let keys: Vec<String> = (0..n_keys).map(|k| format!("cm-{k}")).collect();
        let mut rng = Rng(seed | 1);
        let mut store: Vec<Option<(Value, Rv)>> = vec![None; n_keys];
        let mut revision: Rv = 0;
        let mut known: Vec<Vec<Option<Rv>>> = vec![vec![None; n_keys]; clients];
        let mut seq = vec![0u64; clients];
        let mut inflight: Vec<Option<Operation>> = vec![None; clients];
        let mut events = BinaryHeap::new();
        for c in 0..clients {
            events.push(Reverse((rng.below(10), Event::Invoke, c)));
        }
        let mut issued = 0;
        let mut history = Vec::with_capacity(n);
        while let Some(Reverse((now, event, c))) = events.pop() {
            match event {
                Event::Invoke => {
                    if issued == n {
                        continue;
                    }
                    issued += 1;
                    seq[c] += 1;
                    let value = c as u64 * 1_000_000_000 + seq[c];
                    let k = rng.below(n_keys as u64) as usize;
                    let name = keys[k].clone();
                    let expect = known[c][k];
                    let input = match rng.below(100) {
                        0..30 => Input::Get { key: name },
                        30..40 => Input::List,
                        40..55 => Input::Create { key: name, value },
                        55..85 => Input::Update {
                            key: name,
                            expect: expect.unwrap_or(0),
                            value,
                        },
                        _ => Input::Delete {
                            key: name,
                            expect: if rng.below(2) == 0 { expect } else { None },
                        },
                    };
                    inflight[c] = Some(Operation {
                        client: c,
                        input,
                        output: Output::Unknown,
                        call: now,
                        ret: 0,
                    });
                    events.push(Reverse((now + 1 + rng.below(20), Event::Effect, c)));
                }
                Event::Effect => {
                    let pending = inflight[c].as_mut().expect("in flight");
                    let unknown = rng.below(1000) < unknown_per_mille;
                    let applies = !unknown || rng.below(2) == 0;
                    let slot = pending
                        .input
                        .key()
                        .map(|name| keys.iter().position(|k| k == name).expect("known key"));
                    let output = match (&pending.input, slot.map(|k| store[k])) {
                        (Input::Get { .. }, Some(Some((value, rv)))) => Output::Found { value, rv },
                        (Input::Get { .. }, _) => Output::NotFound,
                        (Input::List, _) => Output::Listed(
                            keys.iter()
                                .zip(&store)
                                .filter_map(|(k, o)| o.map(|o| (k.clone(), o)))
                                .collect(),
                        ),
                        (Input::Create { .. }, Some(Some(_))) => Output::Exists,
                        (Input::Create { value, .. }, _) => {
                            if applies {
                                revision += 1;
                                store[slot.expect("keyed")] = Some((*value, revision));
                            }
                            Output::Written { rv: revision }
                        }
                        (Input::Update { .. } | Input::Delete { .. }, Some(None)) => {
                            Output::NotFound
                        }
                        (Input::Update { expect, .. }, Some(Some((_, rv)))) if rv != *expect => {
                            Output::Conflict
                        }
                        (Input::Update { value, .. }, _) => {
                            if applies {
                                revision += 1;
                                store[slot.expect("keyed")] = Some((*value, revision));
                            }
                            Output::Written { rv: revision }
                        }
                        (
                            Input::Delete {
                                expect: Some(e), ..
                            },
                            Some(Some((_, rv))),
                        ) if rv != *e => Output::Conflict,
                        (Input::Delete { .. }, _) => {
                            if applies {
                                revision += 1;
                                store[slot.expect("keyed")] = None;
                            }
                            Output::Deleted
                        }
                    };
                    pending.output = if unknown { Output::Unknown } else { output };
                    events.push(Reverse((now + 1 + rng.below(20), Event::Return, c)));
                }
                Event::Return => {
                    let mut done = inflight[c].take().expect("in flight");
                    done.ret = now;
                    let slot = done
                        .input
                        .key()
                        .map(|name| keys.iter().position(|k| k == name).expect("known key"));
                    match (&done.output, slot) {
                        (Output::Written { rv } | Output::Found { rv, .. }, Some(k)) => {
                            known[c][k] = Some(*rv)
                        }
                        (Output::Listed(objects), _) => {
                            for (k, name) in keys.iter().enumerate() {
                                known[c][k] = objects.get(name).map(|o| o.1);
                            }
                        }
                        _ => {}
                    }
                    history.push(done);
                    events.push(Reverse((now + 1 + rng.below(5), Event::Invoke, c)));
                }
            }
        }
        (history, keys)
    }

    #[test]
    fn simulated_history_scale() {
        let (mut history, keys) = simulate(100_000, 32, 4, 5, 0x5eed);
        let unknown = history
            .iter()
            .filter(|op| op.output == Output::Unknown)
            .count();
        let report = check(&history, &keys, BUDGET);
        println!("valid history ({unknown} unknown outcomes): {report}");
        assert!(report.is_linearizable(), "{report}");

        // Corrupt one read in the middle: make it return the key's first,
        // long overwritten, value.
        let target = &keys[0];
        let first = history
            .iter()
            .find_map(|op| match (&op.input, &op.output) {
                (Input::Create { key, value }, Output::Written { rv }) if key == target => {
                    Some((*value, *rv))
                }
                _ => None,
            })
            .expect("a create of the key");
        let corrupt = (history.len() / 2..history.len())
            .find(|&i| {
                matches!((&history[i].input, &history[i].output),
                    (Input::Get { key }, Output::Found { value, .. }) if key == target && *value != first.0)
            })
            .expect("a read of the key");
        history[corrupt].output = Output::Found {
            value: first.0,
            rv: first.1,
        };
        let report = check(&history, &keys, BUDGET);
        println!("corrupted read #{corrupt}: {report}");
        assert!(report.undecided.is_empty(), "{report}");
        assert_eq!(report.anomalies.len(), 1, "{report}");
        assert_eq!(report.anomalies[0].key.as_deref(), Some(target.as_str()));
    }
}
