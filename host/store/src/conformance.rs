//! One suite of store tests, run against every backend: redb always, etcd when its binary
//! is installed (scripts/setup.sh installs Debian's etcd-server), on an etcd the tests start
//! themselves on loopback ports, over plain HTTP and once over mutual TLS.
//!
//! The tests hold for any backend with a cluster-wide monotonic revision: they never assume
//! revisions are consecutive (an etcd shared by several key roots has gaps).

use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::sync::Arc;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::time::{Duration, Instant};

use serde_json::{Value, json};

use crate::{Error, EventType, Revision, RingLimits, Store, revision_of};

fn pod(name: &str, ns: &str) -> Value {
    json!({"apiVersion": "v1", "kind": "Pod",
        "metadata": {"name": name, "namespace": ns, "labels": {"app": "web"}},
        "spec": {"nodeName": "n1"}})
}

fn rv(v: &Value) -> Revision {
    revision_of(v).expect("a stored object carries its resourceVersion")
}

/// A backend under test: makes fresh, empty stores.
pub(crate) trait Fixture: Send + Sync {
    fn store(&self, ring: RingLimits) -> Arc<dyn Store>;
}

// ---------------------------------------------------------------------------------------
// The suite.

pub(crate) fn create_get_update_delete(s: &dyn Store) {
    let k = "core/pods/default/a";
    assert!(s.get(k).unwrap().is_none());
    let a = s.create(k, pod("a", "default")).unwrap();
    let r1 = rv(&a);
    assert!(r1 > 0);
    let got = s.get(k).unwrap().unwrap();
    assert_eq!(got, a, "get returns what create returned");
    assert_eq!(got["spec"]["nodeName"], "n1");
    // A resourceVersion in the body is the store's to set.
    let mut changed = got.clone();
    changed["spec"]["nodeName"] = json!("n2");
    changed["metadata"]["resourceVersion"] = json!("999999");
    let b = s.update(k, changed, Some(r1)).unwrap();
    let r2 = rv(&b);
    assert!(r2 > r1);
    assert_eq!(s.get(k).unwrap().unwrap(), b);
    assert_eq!(b["spec"]["nodeName"], "n2");
    // An update without precondition replaces whatever is there.
    let c = s.update(k, pod("a", "default"), None).unwrap();
    let r3 = rv(&c);
    assert!(r3 > r2);
    // A delete returns the last state, stamped with the deletion's revision.
    let d = s.delete(k, Some(r3)).unwrap();
    let r4 = rv(&d);
    assert!(r4 > r3);
    assert_eq!(d["spec"]["nodeName"], "n1");
    assert!(s.get(k).unwrap().is_none());
    assert!(s.revision() >= r4);
    // Created again: a new object.
    let e = s.create(k, pod("a", "default")).unwrap();
    assert!(rv(&e) > r4);
}

pub(crate) fn conflicts_and_preconditions(s: &dyn Store) {
    let k = "core/pods/default/c";
    let a = s.create(k, pod("c", "default")).unwrap();
    let r1 = rv(&a);
    assert!(matches!(
        s.create(k, pod("c", "default")),
        Err(Error::AlreadyExists)
    ));
    let r2 = rv(&s.update(k, pod("c", "default"), Some(r1)).unwrap());
    match s.update(k, pod("c", "default"), Some(r1)) {
        Err(Error::Conflict { current }) => assert_eq!(current, r2),
        other => panic!("stale update: {:?}", other.map(|_| ())),
    }
    match s.delete(k, Some(r1)) {
        Err(Error::Conflict { current }) => assert_eq!(current, r2),
        other => panic!("stale delete: {:?}", other.map(|_| ())),
    }
    assert!(matches!(
        s.update("core/pods/default/missing", pod("x", "default"), None),
        Err(Error::NotFound)
    ));
    assert!(matches!(
        s.update("core/pods/default/missing", pod("x", "default"), Some(r1)),
        Err(Error::NotFound)
    ));
    assert!(matches!(
        s.delete("core/pods/default/missing", None),
        Err(Error::NotFound)
    ));
    // The refused writes changed nothing.
    assert_eq!(rv(&s.get(k).unwrap().unwrap()), r2);
    s.delete(k, Some(r2)).unwrap();
    assert!(matches!(s.delete(k, None), Err(Error::NotFound)));
}

pub(crate) fn revisions_are_monotonic_across_keys(s: &dyn Store) {
    let mut last = s.revision();
    for i in 0..20 {
        let key = if i % 2 == 0 {
            format!("core/pods/ns{}/p{i}", i % 3)
        } else {
            format!("apps/deployments/ns/d{i}")
        };
        let r = rv(&s.create(&key, pod(&format!("p{i}"), "ns")).unwrap());
        assert!(r > last, "revision {r} after {last}");
        assert!(s.revision() >= r);
        last = r;
    }
    let (items, list_rev) = s.list("core/pods/").unwrap();
    assert_eq!(items.len(), 10);
    // A list is consistent at a revision no older than anything it holds.
    assert!(items.iter().all(|o| rv(o) <= list_rev));
    assert!(list_rev >= last);
}

pub(crate) fn scan_pages_and_resumes_after_a_key(s: &dyn Store) {
    // More than one etcd page (64 keys).
    let n = 150;
    for i in 0..n {
        s.create(
            &format!("core/pods/default/p{i:03}"),
            pod(&format!("p{i:03}"), "default"),
        )
        .unwrap();
    }
    // A prefix must not match a longer namespace name.
    s.create("core/pods/default2/x", pod("x", "default2"))
        .unwrap();
    s.create("core/services/default/x", pod("x", "default"))
        .unwrap();
    let mut keys = Vec::new();
    let rev = s
        .scan("core/pods/default/", None, &mut |k, bytes| {
            let v: Value = serde_json::from_slice(bytes).unwrap();
            assert!(
                revision_of(&v).is_some(),
                "scanned objects carry their revision"
            );
            keys.push(k.to_string());
            Ok(true)
        })
        .unwrap();
    assert_eq!(keys.len(), n);
    assert!(keys.windows(2).all(|w| w[0] < w[1]), "key order");
    assert!(
        rev >= s
            .get("core/pods/default/p149")
            .unwrap()
            .map(|v| rv(&v))
            .unwrap()
    );
    // Resume after a key, as a continue token does; stop when told.
    let mut seen = Vec::new();
    s.scan(
        "core/pods/default/",
        Some("core/pods/default/p099"),
        &mut |k, _| {
            seen.push(k.to_string());
            Ok(seen.len() < 30)
        },
    )
    .unwrap();
    assert_eq!(seen.len(), 30);
    assert_eq!(seen[0], "core/pods/default/p100");
    assert_eq!(seen[29], "core/pods/default/p129");
    // After the last key: nothing.
    let mut none = 0;
    s.scan(
        "core/pods/default/",
        Some("core/pods/default/p149"),
        &mut |_, _| {
            none += 1;
            Ok(true)
        },
    )
    .unwrap();
    assert_eq!(none, 0);
    // Across namespaces: all pods, in key order.
    assert_eq!(s.list("core/pods/").unwrap().0.len(), n + 1);
    assert_eq!(s.list("core/services/").unwrap().0.len(), 1);
}

pub(crate) fn snapshot_is_consistent_while_writes_continue(s: Arc<dyn Store>) {
    let n = 200;
    // Big enough that the snapshot takes several chunks and etcd pages.
    let pad = "x".repeat(4000);
    let mut expected = std::collections::BTreeMap::new();
    for i in 0..n {
        let key = format!("core/configmaps/default/c{i:03}");
        let mut o = pod(&format!("c{i:03}"), "default");
        o["data"] = json!({"pad": pad});
        let v = s.create(&key, o).unwrap();
        expected.insert(key, rv(&v));
    }
    let mut snap = s.snapshot("core/configmaps/").unwrap();
    let snap_rev = snap.revision();
    assert!(expected.values().all(|r| *r <= snap_rev));
    // Writers change, delete and add objects while the snapshot is read.
    let stop = Arc::new(std::sync::atomic::AtomicBool::new(false));
    let writer = {
        let (s, stop) = (s.clone(), stop.clone());
        std::thread::spawn(move || {
            let mut writes = 0;
            for i in 0..n {
                if stop.load(Ordering::Relaxed) && writes >= 20 {
                    break;
                }
                let key = format!("core/configmaps/default/c{i:03}");
                match i % 3 {
                    0 => {
                        s.delete(&key, None).unwrap();
                    }
                    1 => {
                        s.update(&key, pod("changed", "default"), None).unwrap();
                    }
                    _ => {
                        s.create(&format!("{key}-new"), pod("new", "default"))
                            .unwrap();
                    }
                }
                writes += 1;
            }
            writes
        })
    };
    let mut seen = std::collections::BTreeMap::new();
    let mut chunks = 0;
    loop {
        let chunk = snap.next_chunk().unwrap();
        if chunk.is_empty() {
            break;
        }
        chunks += 1;
        for (k, bytes) in chunk {
            let v: Value = serde_json::from_slice(&bytes).unwrap();
            assert_eq!(v["data"]["pad"].as_str().map(str::len), Some(4000));
            seen.insert(k, rv(&v));
        }
        // Give the writer time to get ahead of the reader.
        std::thread::sleep(Duration::from_millis(5));
    }
    stop.store(true, Ordering::Relaxed);
    let writes = writer.join().unwrap();
    assert!(writes >= 20, "writes went on during the snapshot");
    assert!(chunks > 1, "read in bounded chunks");
    assert_eq!(
        seen, expected,
        "the snapshot shows its revision's state only"
    );
    assert!(s.revision() > snap_rev);
}

/// Every event after `from` under `prefix`, in order, until `until` is reached.
async fn collect(
    s: &dyn Store,
    prefix: &str,
    from: Revision,
    until: Revision,
) -> Vec<Arc<crate::Event>> {
    let mut w = s.watch(prefix, from).unwrap();
    let mut out: Vec<Arc<crate::Event>> = Vec::new();
    while out.last().is_none_or(|e| e.rev < until) {
        let e = tokio::time::timeout(Duration::from_secs(10), w.next())
            .await
            .expect("an event within 10 s")
            .expect("the store is open")
            .expect("no error");
        out.push(e);
    }
    out
}

pub(crate) async fn watch_from_a_revision_sees_every_event_in_order(s: Arc<dyn Store>) {
    let start = s.revision();
    let k = |i: usize| format!("core/pods/default/w{i}");
    let mut writes = Vec::new();
    for i in 0..5 {
        let v = s.create(&k(i), pod(&format!("w{i}"), "default")).unwrap();
        writes.push((EventType::Added, k(i), rv(&v)));
    }
    // Another kind: not under the watched prefix.
    s.create("core/nodes//n1", pod("n1", "")).unwrap();
    let mut changed = pod("w1", "default");
    changed["metadata"]["labels"] = json!({"app": "db"});
    let v = s.update(&k(1), changed, None).unwrap();
    writes.push((EventType::Modified, k(1), rv(&v)));
    let v = s.delete(&k(2), None).unwrap();
    writes.push((EventType::Deleted, k(2), rv(&v)));
    let last = writes.last().unwrap().2;

    let events = collect(&*s, "core/pods/", start, last).await;
    let got: Vec<_> = events
        .iter()
        .map(|e| (e.kind, e.key.clone(), e.rev))
        .collect();
    assert_eq!(got, writes);
    for e in &events {
        let v = e.value().unwrap();
        assert_eq!(rv(&v), e.rev, "the object carries the event's revision");
    }
    // MODIFIED carries what the object was (for selectors), DELETED the object's last state.
    let modified = &events[5];
    assert_eq!(modified.attrs["metadata"]["labels"]["app"], "db");
    assert_eq!(
        modified.prev_attrs.as_ref().unwrap()["metadata"]["labels"]["app"],
        "web"
    );
    let deleted = &events[6];
    let v = deleted.value().unwrap();
    assert_eq!(v["metadata"]["name"], "w2");
    assert_eq!(v["spec"]["nodeName"], "n1");
    assert!(deleted.prev_attrs.is_some());
    assert!(events[0].prev_attrs.is_none());

    // From the middle: only what came after.
    let mid = writes[3].2;
    let later = collect(&*s, "core/pods/", mid, last).await;
    assert_eq!(later.len(), 3);
    assert_eq!(later[0].rev, writes[4].2);

    // Live: a watch from now sees writes made after it started, in order.
    let now = s.revision();
    let mut w = s.watch("core/pods/default/", now).unwrap();
    let writer = {
        let s = s.clone();
        std::thread::spawn(move || {
            (0..20)
                .map(|i| {
                    rv(&s
                        .create(
                            &format!("core/pods/default/live{i:02}"),
                            pod("l", "default"),
                        )
                        .unwrap())
                })
                .collect::<Vec<_>>()
        })
    };
    let mut live = Vec::new();
    while live.len() < 20 {
        let e = tokio::time::timeout(Duration::from_secs(10), w.next())
            .await
            .expect("live events arrive")
            .unwrap()
            .unwrap();
        live.push(e.rev);
    }
    assert_eq!(live, writer.join().unwrap());
    assert_eq!(w.revision(), *live.last().unwrap());
}

pub(crate) async fn a_watch_from_before_the_history_kept_is_expired(s: &dyn Store) {
    let first = s.revision();
    for i in 0..60 {
        s.create(&format!("core/pods/default/h{i}"), pod("h", "default"))
            .unwrap();
    }
    let expired = |r: std::result::Result<crate::Watch, Error>| match r {
        Err(Error::Expired { requested, .. }) => {
            assert_eq!(requested, first);
            true
        }
        Err(e) => panic!("expected Expired, got {e}"),
        Ok(_) => false,
    };
    if !expired(s.watch("core/pods/", first)) {
        // A backend may find out at the first read instead.
        let mut w = s.watch("core/pods/", first).unwrap();
        let r = tokio::time::timeout(Duration::from_secs(10), w.next())
            .await
            .unwrap()
            .unwrap();
        assert!(
            matches!(r, Err(Error::Expired { .. })),
            "expected Expired at the first read"
        );
    }
    // Recent history is still served.
    let recent = s.revision();
    s.create("core/pods/default/after", pod("after", "default"))
        .unwrap();
    let events = collect(s, "core/pods/", recent, s.revision()).await;
    assert_eq!(events.len(), 1);
}

pub(crate) async fn big_values_round_trip_and_oversized_ones_are_refused(s: &dyn Store) {
    let from = s.revision();
    let mut big = pod("big", "default");
    big["data"] = json!({"blob": "b".repeat(1 << 20)});
    let v = s.create("core/configmaps/default/big", big).unwrap();
    let got = s.get("core/configmaps/default/big").unwrap().unwrap();
    assert_eq!(got, v);
    assert_eq!(s.list("core/configmaps/").unwrap().0, vec![v.clone()]);
    let events = collect(s, "core/configmaps/", from, rv(&v)).await;
    assert_eq!(events[0].value().unwrap(), v);
    let mut huge = pod("huge", "default");
    huge["data"] = json!({"blob": "h".repeat(crate::MAX_OBJECT_BYTES)});
    assert!(matches!(
        s.create("core/configmaps/default/huge", huge.clone()),
        Err(Error::TooLarge { .. })
    ));
    assert!(matches!(
        s.update("core/configmaps/default/big", huge, None),
        Err(Error::TooLarge { .. })
    ));
    assert!(s.get("core/configmaps/default/huge").unwrap().is_none());
    assert_eq!(s.get("core/configmaps/default/big").unwrap().unwrap(), v);
}

pub(crate) fn concurrent_writers_each_get_their_own_outcome(s: Arc<dyn Store>) {
    const THREADS: usize = 8;
    const KEYS: usize = 25;
    // Threads pair up on the same keys: exactly one create of each wins.
    let handles: Vec<_> = (0..THREADS)
        .map(|t| {
            let s = s.clone();
            std::thread::spawn(move || {
                let mut won = Vec::new();
                for i in 0..KEYS {
                    let name = format!("p{}-{i}", t / 2);
                    match s.create(&format!("core/pods/race/{name}"), pod(&name, "race")) {
                        Ok(v) => won.push(rv(&v)),
                        Err(Error::AlreadyExists) => {}
                        Err(e) => panic!("unexpected: {e}"),
                    }
                }
                won
            })
        })
        .collect();
    let mut revs: Vec<Revision> = handles
        .into_iter()
        .flat_map(|h| h.join().unwrap())
        .collect();
    let total = THREADS / 2 * KEYS;
    assert_eq!(revs.len(), total);
    revs.sort_unstable();
    revs.dedup();
    assert_eq!(revs.len(), total, "every write has its own revision");
    assert_eq!(s.list("core/pods/race/").unwrap().0.len(), total);

    // Compare-and-swap increments of one counter: none lost.
    s.create(
        "core/configmaps/race/counter",
        json!({"metadata": {"name": "counter"}, "n": 0}),
    )
    .unwrap();
    let handles: Vec<_> = (0..4)
        .map(|_| {
            let s = s.clone();
            std::thread::spawn(move || {
                let mut conflicts = 0;
                for _ in 0..10 {
                    loop {
                        let cur = s.get("core/configmaps/race/counter").unwrap().unwrap();
                        let mut next = cur.clone();
                        next["n"] = json!(cur["n"].as_u64().unwrap() + 1);
                        match s.update("core/configmaps/race/counter", next, Some(rv(&cur))) {
                            Ok(_) => break,
                            Err(Error::Conflict { .. }) => conflicts += 1,
                            Err(e) => panic!("unexpected: {e}"),
                        }
                    }
                }
                conflicts
            })
        })
        .collect();
    for h in handles {
        h.join().unwrap();
    }
    let counter = s.get("core/configmaps/race/counter").unwrap().unwrap();
    assert_eq!(counter["n"], 40);
}

/// The trait is synchronous; it is called from async handlers (through
/// [`crate::blocking`]), from plain threads, and from current-thread runtimes (tests,
/// tools). None of them may stall.
pub(crate) fn calls_work_from_every_kind_of_thread(s: Arc<dyn Store>) {
    let one = |s: &Arc<dyn Store>, name: &str| {
        let v = s
            .create(&format!("core/pods/ctx/{name}"), pod(name, "ctx"))
            .unwrap();
        assert_eq!(s.get(&format!("core/pods/ctx/{name}")).unwrap().unwrap(), v);
    };
    one(&s, "plain");
    let rt = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
        .unwrap();
    let s2 = s.clone();
    rt.block_on(async move {
        one(&s2, "current-thread");
        // A watch awaited on this runtime, fed by writes from this same thread.
        let mut w = s2.watch("core/pods/ctx/", s2.revision()).unwrap();
        one(&s2, "current-thread-2");
        let e = tokio::time::timeout(Duration::from_secs(10), w.next())
            .await
            .unwrap()
            .unwrap()
            .unwrap();
        assert_eq!(e.key, "core/pods/ctx/current-thread-2");
    });
    let rt = tokio::runtime::Builder::new_multi_thread()
        .worker_threads(2)
        .enable_all()
        .build()
        .unwrap();
    let s3 = s.clone();
    rt.block_on(async move {
        // Many calls at once from async tasks, each through `blocking` as the API does.
        let tasks: Vec<_> = (0..16)
            .map(|i| {
                let s = s3.clone();
                tokio::spawn(async move {
                    crate::blocking(|| one(&s, &format!("multi-{i}")));
                })
            })
            .collect();
        for t in tasks {
            tokio::time::timeout(Duration::from_secs(30), t)
                .await
                .expect("no stall")
                .unwrap();
        }
        // From the blocking pool, as `spawn_blocking` callers do.
        let s = s3.clone();
        tokio::task::spawn_blocking(move || one(&s, "spawn-blocking"))
            .await
            .unwrap();
    });
    assert_eq!(s.list("core/pods/ctx/").unwrap().0.len(), 20);
}

/// A snapshot is written while writes go on and reports the revision it is consistent at:
/// every object written before it began, none after it ended.
pub(crate) fn a_snapshot_is_saved_while_writes_go_on(s: Arc<dyn Store>) {
    for i in 0..20 {
        s.create(
            &format!("core/pods/snap/p{i}"),
            pod(&format!("p{i}"), "snap"),
        )
        .unwrap();
    }
    let before = s.revision();
    let writer = {
        let s = s.clone();
        std::thread::spawn(move || {
            for i in 0..20 {
                s.create(
                    &format!("core/pods/snap/q{i}"),
                    pod(&format!("q{i}"), "snap"),
                )
                .unwrap();
            }
        })
    };
    let mut out = Vec::new();
    let saved = s.save_snapshot(&mut out);
    writer.join().unwrap();
    let info = match saved {
        Ok(info) => info,
        // The tests' etcd holds other stores' roots: etcd's snapshot would copy them too,
        // which the store refuses (the end-to-end test saves one of an etcd of its own).
        Err(e) if e.to_string().contains("outside this cluster's prefix") => return,
        Err(e) => panic!("{e}"),
    };
    assert!(info.revision >= before, "{} < {before}", info.revision);
    assert!(info.revision <= s.revision());
    assert!((20..=40).contains(&info.objects), "{}", info.objects);
    assert!(out.len() > 4096, "{} bytes", out.len());
}

// ---------------------------------------------------------------------------------------
// Backends.

/// Runs the suite against the fixture `$fixture` (an expression giving `Option<impl Fixture>`;
/// `None` skips, said once per test).
macro_rules! suite {
    ($name:ident, $fixture:expr) => {
        mod $name {
            use super::*;

            fn fixture() -> Option<Box<dyn Fixture>> {
                $fixture
            }

            fn store() -> Option<(Box<dyn Fixture>, Arc<dyn Store>)> {
                let f = fixture()?;
                let s = f.store(RingLimits::default());
                Some((f, s))
            }

            #[test]
            fn create_get_update_delete() {
                let Some((_f, s)) = store() else { return };
                super::create_get_update_delete(&*s);
            }

            #[test]
            fn conflicts_and_preconditions() {
                let Some((_f, s)) = store() else { return };
                super::conflicts_and_preconditions(&*s);
            }

            #[test]
            fn revisions_are_monotonic_across_keys() {
                let Some((_f, s)) = store() else { return };
                super::revisions_are_monotonic_across_keys(&*s);
            }

            #[test]
            fn scan_pages_and_resumes_after_a_key() {
                let Some((_f, s)) = store() else { return };
                super::scan_pages_and_resumes_after_a_key(&*s);
            }

            #[test]
            fn snapshot_is_consistent_while_writes_continue() {
                let Some((_f, s)) = store() else { return };
                super::snapshot_is_consistent_while_writes_continue(s);
            }

            #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
            async fn watch_from_a_revision_sees_every_event_in_order() {
                let Some((_f, s)) = store() else { return };
                super::watch_from_a_revision_sees_every_event_in_order(s).await;
            }

            #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
            async fn a_watch_from_before_the_history_kept_is_expired() {
                let Some(f) = fixture() else { return };
                let s = f.store(RingLimits {
                    events: 10,
                    bytes: 1 << 20,
                });
                super::a_watch_from_before_the_history_kept_is_expired(&*s).await;
            }

            #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
            async fn big_values_round_trip_and_oversized_ones_are_refused() {
                let Some((_f, s)) = store() else { return };
                super::big_values_round_trip_and_oversized_ones_are_refused(&*s).await;
            }

            #[test]
            fn concurrent_writers_each_get_their_own_outcome() {
                let Some((_f, s)) = store() else { return };
                super::concurrent_writers_each_get_their_own_outcome(s);
            }

            #[test]
            fn a_snapshot_is_saved_while_writes_go_on() {
                let Some((_f, s)) = store() else { return };
                super::a_snapshot_is_saved_while_writes_go_on(s);
            }

            #[test]
            fn calls_work_from_every_kind_of_thread() {
                let Some((_f, s)) = store() else { return };
                super::calls_work_from_every_kind_of_thread(s);
            }
        }
    };
}

struct Redb {
    dir: tempfile::TempDir,
    n: AtomicUsize,
    encryption: Arc<crate::encryption::Encryption>,
}

impl Fixture for Redb {
    fn store(&self, ring: RingLimits) -> Arc<dyn Store> {
        let n = self.n.fetch_add(1, Ordering::Relaxed);
        Arc::new(
            crate::redb::RedbStore::open(
                &self.dir.path().join(format!("s{n}.redb")),
                crate::redb::Options {
                    // A log a little longer than the ring: a small history for the expiry test.
                    history: ring.events as u64 * 2,
                    ring,
                    encryption: self.encryption.clone(),
                    ..Default::default()
                },
            )
            .unwrap(),
        )
    }
}

fn redb() -> Option<Box<dyn Fixture>> {
    Some(Box::new(Redb {
        dir: tempfile::tempdir().unwrap(),
        n: AtomicUsize::new(0),
        encryption: Arc::default(),
    }))
}

/// Every object sealed (`*.*`, so the whole suite goes through encryption) with `provider`.
fn encrypt_everything(provider: &str) -> Arc<crate::encryption::Encryption> {
    let text = format!(
        "apiVersion: apiserver.config.k8s.io/v1\nkind: EncryptionConfiguration\nresources:\n\
         - resources: ['*.*']\n  providers:\n  - {provider}:\n      keys:\n      - name: k1\n\
         \x20       secret: YWJjZGVmZ2hpamtsbW5vcHFyc3R1dnd4eXoxMjM0NTY=\n"
    );
    Arc::new(crate::encryption::Encryption::parse(&text).unwrap())
}

/// The suite on redb with every value encrypted (aescbc, K3s' default).
fn redb_encrypted() -> Option<Box<dyn Fixture>> {
    Some(Box::new(Redb {
        dir: tempfile::tempdir().unwrap(),
        n: AtomicUsize::new(0),
        encryption: encrypt_everything("aescbc"),
    }))
}

suite!(on_redb, redb());
suite!(on_etcd, etcd::fixture(false));
suite!(on_redb_encrypted, redb_encrypted());
suite!(
    on_etcd_encrypted,
    etcd::fixture_encrypted(encrypt_everything("secretbox"))
);

/// Secrets at rest: what reaches the disk (redb's file, etcd's values) holds no plaintext of
/// a sealed resource, under kube's prefix; other resources stay plaintext; what is read back
/// (get, list, snapshot, watch replay from the log) is the plaintext.
mod at_rest {
    use super::*;

    const SECRET: &str = "s3cr3t-value-that-must-not-leak";
    const PLAIN: &str = "configmap-value-stored-as-it-is";

    fn secrets_only(provider: &str) -> Arc<crate::encryption::Encryption> {
        let text = format!(
            "apiVersion: apiserver.config.k8s.io/v1\nkind: EncryptionConfiguration\nresources:\n\
             - resources: [secrets]\n  providers:\n  - {provider}:\n      keys:\n      - name: k1\n\
             \x20       secret: YWJjZGVmZ2hpamtsbW5vcHFyc3R1dnd4eXoxMjM0NTY=\n"
        );
        Arc::new(crate::encryption::Encryption::parse(&text).unwrap())
    }

    fn secret(name: &str, big: bool) -> Value {
        // A big one goes to redb's separate log table rather than inline.
        let pad = if big { "x".repeat(4096) } else { String::new() };
        json!({"apiVersion": "v1", "kind": "Secret",
            "metadata": {"name": name, "namespace": "default"},
            "stringData": {"v": SECRET, "pad": pad}})
    }

    fn contains(hay: &[u8], needle: &[u8]) -> bool {
        hay.windows(needle.len()).any(|w| w == needle)
    }

    async fn reads_back(s: &dyn Store, from: Revision) {
        let got = s.get("core/secrets/default/small").unwrap().unwrap();
        assert_eq!(got["stringData"]["v"], SECRET);
        let (items, _) = s.list("core/secrets/").unwrap();
        assert_eq!(items.len(), 2);
        assert!(items.iter().all(|i| i["stringData"]["v"] == SECRET));
        let mut snap = s.snapshot("core/secrets/").unwrap();
        let chunk = snap.next_chunk().unwrap();
        assert_eq!(chunk.len(), 2);
        assert!(chunk.iter().all(|(_, b)| contains(b, SECRET.as_bytes())));
        let mut w = s.watch("core/secrets/", from).unwrap();
        for _ in 0..3 {
            let e = tokio::time::timeout(Duration::from_secs(10), w.next())
                .await
                .unwrap()
                .unwrap()
                .unwrap();
            assert_eq!(e.value().unwrap()["stringData"]["v"], SECRET);
        }
    }

    fn write(s: &dyn Store) -> Revision {
        let from = s.revision();
        s.create("core/secrets/default/small", secret("small", false))
            .unwrap();
        s.create("core/secrets/default/big", secret("big", true))
            .unwrap();
        s.create("core/secrets/default/gone", secret("gone", false))
            .unwrap();
        // The DELETED event's object (the last state) is logged sealed too.
        s.delete("core/secrets/default/gone", None).unwrap();
        let mut cm = secret("cm", false);
        cm["kind"] = json!("ConfigMap");
        cm["stringData"]["v"] = json!(PLAIN);
        s.create("core/configmaps/default/cm", cm).unwrap();
        from
    }

    /// A store that re-encrypts (both backends have it, outside the trait).
    trait Reencrypt: Store {
        fn re(&self) -> usize;
    }
    impl Reencrypt for crate::redb::RedbStore {
        fn re(&self) -> usize {
            self.reencrypt().unwrap()
        }
    }
    impl Reencrypt for crate::etcd::EtcdStore {
        fn re(&self) -> usize {
            self.reencrypt().unwrap()
        }
    }

    fn keys(list: &[(&str, &str)]) -> Arc<crate::encryption::Encryption> {
        let keys: String = list
            .iter()
            .map(|(n, k)| format!("      - name: {n}\n        secret: {k}\n"))
            .collect();
        let text = format!(
            "apiVersion: apiserver.config.k8s.io/v1\nkind: EncryptionConfiguration\nresources:\n- resources: [secrets]\n  providers:\n  - aescbc:\n      keys:\n{keys}"
        );
        Arc::new(crate::encryption::Encryption::parse(&text).unwrap())
    }

    const K1: &str = "YWJjZGVmZ2hpamtsbW5vcHFyc3R1dnd4eXoxMjM0NTY=";
    const K2: &str = "MDEyMzQ1Njc4OWFiY2RlZjAxMjM0NTY3ODlhYmNkZWY=";

    /// Rotation as documented: plaintext secrets from before encryption, then key1, then
    /// key2 first and key1 second (re-encryption rewrites what key1 sealed), then key2 only:
    /// every secret reads at every step, and once re-encrypted none needs key1.
    fn rotation<S: Reencrypt>(open: impl Fn(Arc<crate::encryption::Encryption>) -> S) {
        let get = |s: &S, name: &str| -> Result<Value, Error> {
            s.get(&format!("core/secrets/default/{name}"))
                .map(|o| o.expect("present"))
        };
        let s = open(Arc::default());
        s.create("core/secrets/default/old", secret("old", false))
            .unwrap();
        s.create("core/configmaps/default/cm", pod("cm", "default"))
            .unwrap();
        drop(s);
        let s = open(keys(&[("key1", K1)]));
        let cm_rev = rv(&s.get("core/configmaps/default/cm").unwrap().unwrap());
        // Encryption turned on: the plaintext secret is sealed, nothing else is touched.
        assert_eq!(s.re(), 1);
        assert_eq!(s.re(), 0, "nothing left to do");
        s.create("core/secrets/default/new", secret("new", true))
            .unwrap();
        drop(s);
        let s = open(keys(&[("key2", K2), ("key1", K1)]));
        let before = rv(&get(&s, "old").unwrap());
        assert_eq!(s.re(), 2);
        // A rewrite is a write: a new resourceVersion, the same content.
        let after = get(&s, "old").unwrap();
        assert!(rv(&after) > before);
        assert_eq!(after["stringData"]["v"], SECRET);
        drop(s);
        let s = open(keys(&[("key2", K2)]));
        for name in ["old", "new"] {
            assert_eq!(get(&s, name).unwrap()["stringData"]["v"], SECRET);
        }
        assert_eq!(s.re(), 0);
        assert_eq!(
            rv(&s.get("core/configmaps/default/cm").unwrap().unwrap()),
            cm_rev
        );
        drop(s);
        // The secrets need key2 now: without it, an error naming it.
        let s = open(keys(&[("key1", K1)]));
        let err = get(&s, "old").unwrap_err().to_string();
        assert!(err.contains("aescbc key \"key2\""), "{err}");
    }

    #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
    async fn redb_rotation_reencrypts_at_start() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("s.redb");
        let open = |enc| {
            crate::redb::RedbStore::open(
                &path,
                crate::redb::Options {
                    encryption: enc,
                    ..Default::default()
                },
            )
            .unwrap()
        };
        rotation(open);
        // The log still holds what key1 sealed: with key1 gone, a watch replaying it is told
        // to relist (410), not handed an error per event or garbage.
        let s = open(keys(&[("key2", K2)]));
        let mut w = s.watch("core/secrets/", 0).unwrap();
        let end = loop {
            match tokio::time::timeout(Duration::from_secs(10), w.next())
                .await
                .unwrap()
                .unwrap()
            {
                Ok(e) => assert_eq!(e.rev, 1, "the plaintext create replays"),
                Err(e) => break e,
            }
        };
        assert!(matches!(end, Error::Expired { .. }), "{end}");
    }

    #[test]
    fn etcd_rotation_reencrypts_at_start() {
        let Some(p) = etcd::start(false) else { return };
        rotation(|enc| {
            let mut o = p.options("/rotation/");
            o.encryption = enc;
            crate::etcd::EtcdStore::connect(o).unwrap()
        });
    }

    #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
    async fn redb_file_holds_no_plaintext_secret() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("s.redb");
        let open = |enc| {
            crate::redb::RedbStore::open(
                &path,
                crate::redb::Options {
                    encryption: enc,
                    ..Default::default()
                },
            )
            .unwrap()
        };
        let s = open(secrets_only("aescbc"));
        let from = write(&s);
        reads_back(&s, from).await;
        drop(s);
        let raw = std::fs::read(&path).unwrap();
        assert!(contains(&raw, b"k8s:enc:aescbc:v1:k1:"));
        // No secret's value anywhere in the file (objects, log, freed pages); the ConfigMap
        // (not listed) is plaintext.
        assert!(!contains(&raw, SECRET.as_bytes()));
        assert!(contains(&raw, PLAIN.as_bytes()));
        // After a restart, the ring is empty: the watch replays from the file's log.
        let s = open(secrets_only("aescbc"));
        reads_back(&s, from).await;
        drop(s);
        // Without the key: an error naming it, never garbage.
        let s = open(Arc::default());
        let err = s.get("core/secrets/default/small").unwrap_err().to_string();
        assert!(err.contains("aescbc key \"k1\""), "{err}");
        assert!(s.list("core/secrets/").is_err());
        assert!(s.get("core/configmaps/default/cm").unwrap().is_some());
    }

    #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
    async fn etcd_values_hold_no_plaintext_secret() {
        let Some(p) = etcd::start(false) else { return };
        let mut o = p.options("/at-rest/");
        o.encryption = secrets_only("aesgcm");
        let s = crate::etcd::EtcdStore::connect(o).unwrap();
        let from = write(&s);
        reads_back(&s, from).await;
        let mut kv = s.kv.clone();
        let values = s
            .run(async move {
                let r = kv
                    .get(
                        "/at-rest/",
                        Some(etcd_client::GetOptions::new().with_prefix()),
                    )
                    .await
                    .unwrap();
                Ok(r.kvs()
                    .iter()
                    .map(|kv| (kv.key_str().unwrap().to_string(), kv.value().to_vec()))
                    .collect::<Vec<_>>())
            })
            .unwrap();
        assert_eq!(values.len(), 3);
        for (k, v) in &values {
            assert!(!contains(v, SECRET.as_bytes()), "{k}");
            if k.contains("/secrets/") {
                assert!(v.starts_with(b"k8s:enc:aesgcm:v1:k1:"), "{k}");
            } else {
                assert!(contains(v, PLAIN.as_bytes()), "{k}");
            }
        }
        // Without the key: an error naming it.
        let s = crate::etcd::EtcdStore::connect(p.options("/at-rest/")).unwrap();
        let err = s.get("core/secrets/default/small").unwrap_err().to_string();
        assert!(err.contains("aesgcm key \"k1\""), "{err}");
    }
}

/// What only the etcd backend has: TLS, key roots sharing one etcd, compaction, restarts.
mod etcd_only {
    use super::*;
    use crate::etcd::EtcdStore;

    #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
    async fn mutual_tls() {
        let Some(p) = etcd::start(true) else { return };
        let s: Arc<dyn Store> = Arc::new(EtcdStore::connect(p.options("/tls/")).unwrap());
        create_get_update_delete(&*s);
        watch_from_a_revision_sees_every_event_in_order(s).await;
        // Without a client certificate etcd refuses us; without the CA we refuse etcd.
        let mut o = p.options("/tls/");
        o.cert_file = None;
        o.key_file = None;
        assert!(EtcdStore::connect(o).is_err());
        let mut o = p.options("/tls/");
        o.ca_file = None;
        let e = EtcdStore::connect(o).err().expect("no CA, no TLS");
        assert!(e.to_string().contains("--datastore-cafile"), "{e}");
    }

    #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
    async fn clusters_under_different_roots_share_one_etcd() {
        let Some(p) = etcd::start(false) else { return };
        let a = EtcdStore::connect(p.options("/a/")).unwrap();
        let b = EtcdStore::connect(p.options("/b/")).unwrap();
        let start = a.revision();
        let mut wa = a.watch("core/pods/", start).unwrap();
        // B's writes leave gaps in A's revisions; A's watchers skip them without spinning.
        for i in 0..10 {
            b.create(&format!("core/pods/default/b{i}"), pod("b", "default"))
                .unwrap();
        }
        assert!(
            tokio::time::timeout(Duration::from_millis(300), wa.next())
                .await
                .is_err(),
            "A sees nothing of B"
        );
        let x = a
            .create("core/pods/default/a", pod("a", "default"))
            .unwrap();
        let e = tokio::time::timeout(Duration::from_secs(5), wa.next())
            .await
            .unwrap()
            .unwrap()
            .unwrap();
        assert_eq!((e.key.as_str(), e.rev), ("core/pods/default/a", rv(&x)));
        assert!(rv(&x) > start + 10);
        assert_eq!(a.list("core/pods/").unwrap().0.len(), 1);
        assert_eq!(b.list("core/pods/").unwrap().0.len(), 10);
        // A watch resumed mid-gap gets A's next event only.
        for i in 0..3 {
            b.create(&format!("core/pods/default/c{i}"), pod("c", "default"))
                .unwrap();
        }
        let y = a
            .create("core/pods/default/y", pod("y", "default"))
            .unwrap();
        let mut w = a.watch("core/pods/", rv(&x) + 1).unwrap();
        let e = w.next().await.unwrap().unwrap();
        assert_eq!(e.rev, rv(&y));
    }

    #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
    async fn objects_survive_a_restart_and_compaction_expires_old_reads() {
        let Some(p) = etcd::start(false) else { return };
        let first = EtcdStore::connect(p.options("/r/")).unwrap();
        let pad = "p".repeat(8000);
        let mut kept = Vec::new();
        for i in 0..100 {
            let mut o = pod(&format!("p{i:03}"), "default");
            o["data"] = json!({"pad": pad});
            kept.push(
                first
                    .create(&format!("core/pods/default/p{i:03}"), o)
                    .unwrap(),
            );
        }
        let before = first.revision();
        drop(first);
        // A new store (a restarted server) serves the same objects, same resourceVersions.
        let s = EtcdStore::connect(p.options("/r/")).unwrap();
        let (items, rev) = s.list("core/pods/").unwrap();
        assert_eq!(items, kept);
        assert!(rev >= before);
        // Watches from before it started (its clients of the old server) relist.
        assert!(matches!(
            s.watch("core/pods/", before - 50),
            Err(Error::Expired { .. })
        ));
        // A snapshot read across a write and a compaction never mixes revisions: served from
        // the watch cache, it is the state at its revision to the end (kube-apiserver's watch
        // cache does the same), where one read from etcd page by page would expire.
        let mut snap = s.snapshot("core/pods/").unwrap();
        let at = snap.revision();
        let mut got = snap.next_chunk().unwrap();
        assert!(!got.is_empty());
        s.update("core/pods/default/p099", pod("p099", "default"), None)
            .unwrap();
        s.compact(s.revision()).unwrap();
        for _ in 0..100 {
            let c = snap.next_chunk().unwrap();
            if c.is_empty() {
                break;
            }
            got.extend(c);
        }
        assert_eq!(got.len(), 100);
        let last = crate::decode(&got[99].0, &got[99].1).unwrap();
        assert_eq!(last["data"]["pad"], json!(pad), "p099 as it was at {at}");
        // Reads of the present go on.
        assert_eq!(s.list("core/pods/").unwrap().0.len(), 100);
    }

    /// Two stores on one etcd (two servers): a write one acknowledged is what a get or a
    /// list through the other returns at once, although the other reads its watch cache
    /// (it waits for the cache to hold etcd's revision at the read's start).
    #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
    async fn a_read_through_another_store_sees_every_acknowledged_write() {
        let Some(p) = etcd::start(false) else { return };
        let a = EtcdStore::connect(p.options("/two/")).unwrap();
        let b = EtcdStore::connect(p.options("/two/")).unwrap();
        let key = "core/configmaps/default/k";
        let mut obj =
            json!({"metadata": {"name": "k", "namespace": "default"}, "data": {"v": "0"}});
        a.create(key, obj.clone()).unwrap();
        for i in 1..=200 {
            obj["data"]["v"] = json!(i.to_string());
            let (writer, reader) = if i % 2 == 0 { (&a, &b) } else { (&b, &a) };
            let written = writer.update(key, obj.clone(), None).unwrap();
            let read = reader.get(key).unwrap().unwrap();
            assert_eq!(
                read["data"]["v"],
                json!(i.to_string()),
                "get after write {i}"
            );
            assert_eq!(rv(&read), rv(&written));
            let (items, rev) = reader.list("core/configmaps/").unwrap();
            assert_eq!(
                items[0]["data"]["v"],
                json!(i.to_string()),
                "list after write {i}"
            );
            assert!(rev >= rv(&written));
        }
    }

    #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
    async fn watches_go_on_after_etcd_restarts() {
        let Some(mut p) = etcd::start(false) else {
            return;
        };
        let s = EtcdStore::connect(p.options("/restart/")).unwrap();
        let a = s
            .create("core/pods/default/a", pod("a", "default"))
            .unwrap();
        let mut w = s.watch("core/pods/", rv(&a)).unwrap();
        p.restart();
        // The first request after the restart may meet the dead connection; then it works.
        let b = (0..50)
            .find_map(|_| {
                let r = s.create("core/pods/default/b", pod("b", "default"));
                if r.is_err() {
                    std::thread::sleep(Duration::from_millis(100));
                }
                r.ok()
            })
            .expect("writes work again after etcd restarts");
        // The store's etcd watch resumed where it was: the watch sees the new write.
        let e = tokio::time::timeout(Duration::from_secs(20), w.next())
            .await
            .expect("the watch resumes after etcd restarts")
            .unwrap()
            .unwrap();
        assert_eq!((e.key.as_str(), e.rev), ("core/pods/default/b", rv(&b)));
        assert_eq!(s.get("core/pods/default/a").unwrap().unwrap(), a);
    }

    #[test]
    fn an_unreachable_etcd_fails_fast_with_a_clear_error() {
        let mut o = crate::etcd::Options::new(vec!["http://127.0.0.1:1".into()]);
        o.request_timeout = Duration::from_secs(3);
        let started = Instant::now();
        let e = EtcdStore::connect(o)
            .err()
            .expect("nothing listens on port 1");
        assert!(e.to_string().contains("etcd"), "{e}");
        assert!(started.elapsed() < Duration::from_secs(10));
        let o = crate::etcd::Options::new(vec!["https://127.0.0.1:1".into()]);
        assert!(
            EtcdStore::connect(o)
                .err()
                .unwrap()
                .to_string()
                .contains("--datastore-cafile")
        );
    }
}

/// A real etcd for the tests: its own process on loopback ports with a temp data dir,
/// killed on drop.
pub(crate) mod etcd {
    use super::*;

    pub(crate) struct EtcdProcess {
        child: Child,
        /// How it was started, to start it again.
        args: Vec<std::ffi::OsString>,
        pub(crate) endpoint: String,
        pub(crate) dir: tempfile::TempDir,
        /// CA, client cert and key when it serves TLS.
        pub(crate) tls: Option<(PathBuf, PathBuf, PathBuf)>,
    }

    impl Drop for EtcdProcess {
        fn drop(&mut self) {
            let _ = self.child.kill();
            let _ = self.child.wait();
        }
    }

    fn free_port() -> u16 {
        std::net::TcpListener::bind("127.0.0.1:0")
            .unwrap()
            .local_addr()
            .unwrap()
            .port()
    }

    pub(crate) fn installed() -> bool {
        Command::new("etcd")
            .arg("--version")
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            .status()
            .is_ok_and(|s| s.success())
    }

    fn write_certs(dir: &Path) -> (PathBuf, PathBuf, PathBuf, PathBuf, PathBuf) {
        use rcgen::{BasicConstraints, CertificateParams, IsCa, KeyPair};
        let ca_key = KeyPair::generate().unwrap();
        let mut ca = CertificateParams::new(Vec::<String>::new()).unwrap();
        ca.is_ca = IsCa::Ca(BasicConstraints::Unconstrained);
        ca.distinguished_name
            .push(rcgen::DnType::CommonName, "etcd test CA");
        let ca_cert = ca.self_signed(&ca_key).unwrap();
        let issuer = rcgen::Issuer::new(ca, ca_key);
        let leaf = |name: &str| {
            let key = KeyPair::generate().unwrap();
            let mut p =
                CertificateParams::new(vec!["localhost".to_string(), "127.0.0.1".to_string()])
                    .unwrap();
            p.distinguished_name.push(rcgen::DnType::CommonName, name);
            p.extended_key_usages = vec![
                rcgen::ExtendedKeyUsagePurpose::ServerAuth,
                rcgen::ExtendedKeyUsagePurpose::ClientAuth,
            ];
            let cert = p.signed_by(&key, &issuer).unwrap();
            (cert.pem(), key.serialize_pem())
        };
        let w = |name: &str, pem: &str| {
            let p = dir.join(name);
            std::fs::write(&p, pem).unwrap();
            p
        };
        let (server, server_key) = leaf("etcd");
        let (client, client_key) = leaf("kedge");
        (
            w("ca.pem", &ca_cert.pem()),
            w("server.pem", &server),
            w("server-key.pem", &server_key),
            w("client.pem", &client),
            w("client-key.pem", &client_key),
        )
    }

    /// Starts etcd (retrying on a port taken meanwhile) and waits until it answers; `None`
    /// when etcd is not installed.
    pub(crate) fn start(tls: bool) -> Option<EtcdProcess> {
        if !installed() {
            eprintln!(
                "SKIPPED: the etcd binary is not installed (scripts/setup.sh installs Debian's etcd-server)"
            );
            return None;
        }
        for _attempt in 0..3 {
            let dir = tempfile::tempdir().unwrap();
            let (client_port, peer_port) = (free_port(), free_port());
            let scheme = if tls { "https" } else { "http" };
            let endpoint = format!("{scheme}://127.0.0.1:{client_port}");
            let mut cmd = Command::new("etcd");
            cmd.arg("--name")
                .arg("test")
                .arg("--data-dir")
                .arg(dir.path().join("data"))
                .arg("--listen-client-urls")
                .arg(&endpoint)
                .arg("--advertise-client-urls")
                .arg(&endpoint)
                .arg("--listen-peer-urls")
                .arg(format!("http://127.0.0.1:{peer_port}"))
                .arg("--initial-advertise-peer-urls")
                .arg(format!("http://127.0.0.1:{peer_port}"))
                .arg("--initial-cluster")
                .arg(format!("test=http://127.0.0.1:{peer_port}"))
                .arg("--log-level")
                .arg("error");
            let mut files = None;
            if tls {
                let (ca, cert, key, ccert, ckey) = write_certs(dir.path());
                cmd.arg("--cert-file")
                    .arg(&cert)
                    .arg("--key-file")
                    .arg(&key)
                    .arg("--trusted-ca-file")
                    .arg(&ca)
                    .arg("--client-cert-auth");
                files = Some((ca, ccert, ckey));
            }
            let args: Vec<_> = cmd.get_args().map(|a| a.to_os_string()).collect();
            let child = spawn(&args, dir.path());
            let mut p = EtcdProcess {
                child,
                args,
                endpoint,
                dir,
                tls: files,
            };
            if p.wait_ready() {
                return Some(p);
            }
            let log = std::fs::read_to_string(p.dir.path().join("etcd.log")).unwrap_or_default();
            eprintln!("etcd did not come up; retrying. Its log:\n{log}");
        }
        panic!("etcd did not start in 3 attempts");
    }

    fn spawn(args: &[std::ffi::OsString], dir: &Path) -> Child {
        let log = std::fs::OpenOptions::new()
            .create(true)
            .append(true)
            .open(dir.join("etcd.log"))
            .unwrap();
        Command::new("etcd")
            .args(args)
            .stdout(log.try_clone().unwrap())
            .stderr(log)
            .stdin(Stdio::null())
            .spawn()
            .expect("etcd starts")
    }

    impl EtcdProcess {
        /// Waits until it serves (true) or exits or 20 s pass (false).
        fn wait_ready(&mut self) -> bool {
            let deadline = Instant::now() + Duration::from_secs(20);
            while Instant::now() < deadline {
                if let Ok(Some(_)) = self.child.try_wait() {
                    return false;
                }
                if crate::etcd::EtcdStore::connect(self.options("/health-probe/")).is_ok() {
                    return true;
                }
                std::thread::sleep(Duration::from_millis(100));
            }
            false
        }

        /// Kills it (SIGKILL) and starts it again on the same ports and data.
        pub(crate) fn restart(&mut self) {
            let _ = self.child.kill();
            let _ = self.child.wait();
            self.child = spawn(&self.args, self.dir.path());
            assert!(self.wait_ready(), "etcd came back");
        }

        pub(crate) fn options(&self, root: &str) -> crate::etcd::Options {
            let mut o = crate::etcd::Options::new(vec![self.endpoint.clone()]);
            o.root = root.to_string();
            o.compact_interval = None;
            o.request_timeout = Duration::from_secs(10);
            if let Some((ca, cert, key)) = &self.tls {
                o.ca_file = Some(ca.clone());
                o.cert_file = Some(cert.clone());
                o.key_file = Some(key.clone());
            }
            o
        }
    }

    pub(crate) struct Etcd {
        pub(crate) process: EtcdProcess,
        n: AtomicUsize,
        encryption: Arc<crate::encryption::Encryption>,
    }

    impl Fixture for Etcd {
        fn store(&self, ring: RingLimits) -> Arc<dyn Store> {
            // Each store its own key root: empty, and isolated from the others.
            let n = self.n.fetch_add(1, Ordering::Relaxed);
            let mut o = self.process.options(&format!("/kedge-test-{n}/"));
            o.ring = ring;
            o.encryption = self.encryption.clone();
            Arc::new(crate::etcd::EtcdStore::connect(o).unwrap())
        }
    }

    pub(crate) fn fixture(tls: bool) -> Option<Box<dyn Fixture>> {
        Some(Box::new(Etcd {
            process: start(tls)?,
            n: AtomicUsize::new(0),
            encryption: Arc::default(),
        }))
    }

    /// Plain HTTP, every value sealed by `encryption`.
    pub(crate) fn fixture_encrypted(
        encryption: Arc<crate::encryption::Encryption>,
    ) -> Option<Box<dyn Fixture>> {
        Some(Box::new(Etcd {
            process: start(false)?,
            n: AtomicUsize::new(0),
            encryption,
        }))
    }
}

/// Durable creates/s and p99 latency through the `Store` trait, 32 writer threads, on redb
/// and on etcd (started here, fsync on), with etcd's raw put rate through the same client as
/// the ceiling. Run: `cargo test -p kedge-store --release --lib conformance::bench --
/// --ignored --nocapture`.
mod bench {
    use super::*;

    const THREADS: usize = 32;
    const PER_THREAD: usize = 100;

    fn measure(label: &str, write: impl Fn(usize, usize) + Send + Sync + 'static) {
        let write = Arc::new(write);
        let started = Instant::now();
        let handles: Vec<_> = (0..THREADS)
            .map(|t| {
                let write = write.clone();
                std::thread::spawn(move || {
                    (0..PER_THREAD)
                        .map(|i| {
                            let at = Instant::now();
                            write(t, i);
                            at.elapsed()
                        })
                        .collect::<Vec<_>>()
                })
            })
            .collect();
        let mut lat: Vec<Duration> = handles
            .into_iter()
            .flat_map(|h| h.join().unwrap())
            .collect();
        let total = started.elapsed();
        lat.sort_unstable();
        let p = |q: f64| lat[((lat.len() as f64 * q) as usize).min(lat.len() - 1)];
        eprintln!(
            "{label:<28} {:>8.0} creates/s   p50 {:>6.1} ms   p99 {:>6.1} ms   ({} writes, {THREADS} threads)",
            lat.len() as f64 / total.as_secs_f64(),
            p(0.50).as_secs_f64() * 1e3,
            p(0.99).as_secs_f64() * 1e3,
            lat.len()
        );
    }

    fn through_store(label: &str, s: Arc<dyn Store>) {
        measure(label, move |t, i| {
            let name = format!("b{t}-{i}");
            s.create(&format!("core/pods/bench/{name}"), pod(&name, "bench"))
                .unwrap();
        });
    }

    #[test]
    #[ignore = "a benchmark: run with --ignored --nocapture, in release"]
    fn durable_creates_per_second() {
        let dir = tempfile::tempdir().unwrap();
        let redb =
            crate::redb::RedbStore::open(&dir.path().join("b.redb"), Default::default()).unwrap();
        through_store("redb (Store::create)", Arc::new(redb));
        let Some(p) = etcd::start(false) else { return };
        let store = Arc::new(crate::etcd::EtcdStore::connect(p.options("/bench/")).unwrap());
        through_store("etcd (Store::create)", store.clone());
        // The ceiling: plain puts through the same client and runtime.
        let raw = store.clone();
        measure("etcd (raw put, same client)", move |t, i| {
            let mut kv = raw.kv.clone();
            let key = format!("/raw/{t}-{i}");
            let value = serde_json::to_vec(&pod("raw", "bench")).unwrap();
            raw.run(async move {
                kv.put(key, value, None)
                    .await
                    .map_err(|e| Error::Backend(e.to_string()))?;
                Ok(())
            })
            .unwrap();
        });
    }
}
