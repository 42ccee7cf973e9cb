//! The watch cache: every object under the store's key root, as of the newest revision the
//! etcd watch has delivered, so that reads cost etcd neither the data nor a round of their
//! own — kube-apiserver's watch cache with its consistent reads (KEP-2340).
//!
//! A read stays linearizable. It asks etcd for its current revision, a quorum read that every
//! read arriving while none is in flight shares ([`Freshness`]: a read never uses an answer
//! to a request sent before it began). It then waits until the cache has caught up with
//! that revision — asking etcd for a progress notification on the watch stream, since when
//! the newest writes were outside the root no event would come — and reads the cache. A
//! cache not filled yet (at start, after a compaction gap) or one that does not catch up
//! within [`CATCH_UP`] sends the read to etcd as before.

use std::future::Future;
use std::ops::Bound;
use std::sync::{Arc, Mutex, RwLock};
use std::time::Duration;

use bytes::Bytes;
use tokio::sync::{mpsc, oneshot, watch};

use crate::{Revision, Snapshot};

/// Store key → stored JSON (with its resourceVersion). A persistent map: a view of it is a
/// cheap copy that later writes do not change, so a list walks one revision without holding
/// the cache's lock.
pub(super) type Objects = imbl::OrdMap<String, Bytes>;

/// How long a read waits for the cache to catch up with etcd before reading etcd itself,
/// when etcd's progress notifications can be trusted to move the cache on...
pub(super) const CATCH_UP: Duration = Duration::from_secs(2);
/// ...and when only events can: the newest revision may be a write outside the root (an etcd
/// shared with other clusters), whose event will never come.
pub(super) const CATCH_UP_EVENTS: Duration = Duration::from_millis(100);

/// Whether etcd `version` answers progress requests in order with the events before them:
/// 3.4.31+ and 3.5.13+ do (etcd-io/etcd#15220), the versions kube-apiserver requires for
/// its consistent reads from cache.
pub(super) fn progress_is_ordered(version: &str) -> bool {
    let mut parts = version
        .trim()
        .trim_start_matches('v')
        .split(['.', '-', '+']);
    let mut next = || parts.next().and_then(|p| p.parse::<u64>().ok());
    match (next(), next(), next()) {
        (Some(major), Some(minor), Some(patch)) => match (major, minor) {
            (3, 4) => patch >= 31,
            (3, 5) => patch >= 13,
            (3, m) => m > 5,
            (m, _) => m > 3,
        },
        _ => false,
    }
}

/// Every object under the root (store key → stored JSON with its resourceVersion).
pub(super) struct Cache {
    inner: RwLock<Inner>,
    /// The revision the cache is complete to; only moves forward while filled.
    rev: watch::Sender<Revision>,
    /// Asks the watch for a progress notification (capacity one: a request still queued
    /// will be sent after whoever finds it there, and so answers them too).
    progress: mpsc::Sender<()>,
    /// Whether etcd's progress notifications may move the cache on ([`progress_is_ordered`]).
    trust_progress: std::sync::atomic::AtomicBool,
}

struct Inner {
    objects: Objects,
    /// False until filled, and again after the watch lost track (a compaction gap).
    ready: bool,
    /// Entries this server could not read (see [`Op`]).
    unreadable: usize,
}

/// A change to the cache. A value this server cannot read (not an object; sealed with a key
/// it does not have) is kept as an empty value, which sends reads of it to etcd, where they
/// fail as they should.
pub(super) enum Op {
    Put(String, Bytes),
    Delete(String),
}

fn unreadable(objects: &Objects) -> usize {
    objects.values().filter(|v| v.is_empty()).count()
}

impl Cache {
    /// An empty cache, not ready, and the receiver of its progress requests (for the watch).
    pub(super) fn new() -> (Cache, mpsc::Receiver<()>) {
        let (progress, requests) = mpsc::channel(1);
        (
            Cache {
                inner: RwLock::new(Inner {
                    objects: Objects::new(),
                    ready: false,
                    unreadable: 0,
                }),
                rev: watch::channel(0).0,
                progress,
                trust_progress: Default::default(),
            },
            requests,
        )
    }

    fn read(&self) -> std::sync::RwLockReadGuard<'_, Inner> {
        self.inner.read().unwrap_or_else(|p| p.into_inner())
    }

    fn write(&self) -> std::sync::RwLockWriteGuard<'_, Inner> {
        self.inner.write().unwrap_or_else(|p| p.into_inner())
    }

    pub(super) fn ready(&self) -> bool {
        self.read().ready
    }

    /// Replaces the contents with `objects`, complete at `rev`.
    pub(super) fn fill(&self, objects: Objects, rev: Revision) {
        {
            let mut inner = self.write();
            inner.unreadable = unreadable(&objects);
            inner.objects = objects;
            inner.ready = true;
        }
        // Outside the map's lock: a reader holds the revision's while it takes the map's.
        self.rev.send_replace(rev);
    }

    /// Stops serving reads until filled again.
    pub(super) fn invalidate(&self) {
        self.write().ready = false;
    }

    /// Applies a batch of the watch's changes, in revision order; the cache is then
    /// complete to `last` (the batch's last revision).
    pub(super) fn apply(&self, ops: Vec<Op>, last: Revision) {
        {
            let mut inner = self.write();
            if !inner.ready {
                return;
            }
            for op in ops {
                let (old, new_unreadable) = match op {
                    Op::Delete(key) => (inner.objects.remove(&key), false),
                    Op::Put(key, value) => {
                        let empty = value.is_empty();
                        (inner.objects.insert(key, value), empty)
                    }
                };
                let old_unreadable = old.is_some_and(|v| v.is_empty());
                inner.unreadable =
                    inner.unreadable + usize::from(new_unreadable) - usize::from(old_unreadable);
            }
        }
        self.rev.send_if_modified(|r| {
            let newer = last > *r;
            *r = (*r).max(last);
            newer
        });
    }

    /// Whether the etcd (its version) answers progress requests in order.
    pub(super) fn trust_progress(&self, yes: bool) {
        self.trust_progress
            .store(yes, std::sync::atomic::Ordering::Relaxed);
    }

    fn trusts_progress(&self) -> bool {
        self.trust_progress
            .load(std::sync::atomic::Ordering::Relaxed)
    }

    /// The watch has delivered everything up to `rev` (a progress notification).
    pub(super) fn progress(&self, rev: Revision) {
        if !self.ready() || !self.trusts_progress() {
            return;
        }
        self.rev.send_if_modified(|r| {
            let newer = rev > *r;
            *r = (*r).max(rev);
            newer
        });
    }

    /// Waits until the cache is complete to `rev` (asking the watch for progress when it is
    /// not yet and etcd's answer can be trusted); false when it is not ready or does not get
    /// there within [`CATCH_UP`] ([`CATCH_UP_EVENTS`] on events alone).
    pub(super) async fn caught_up(&self, rev: Revision) -> bool {
        let mut rx = self.rev.subscribe();
        if *rx.borrow_and_update() >= rev {
            return self.ready();
        }
        let patience = if self.trusts_progress() {
            let _ = self.progress.try_send(());
            CATCH_UP
        } else {
            CATCH_UP_EVENTS
        };
        let reached = matches!(
            tokio::time::timeout(patience, rx.wait_for(|r| *r >= rev)).await,
            Ok(Ok(_))
        );
        // (The revision's guard is gone by now: `fill` takes the locks the other way round.)
        reached && self.ready()
    }

    /// The object at `key` (`None` when there is none), and the revision read at; `None`
    /// when the cache is not ready.
    pub(super) fn get(&self, key: &str) -> Option<(Option<Bytes>, Revision)> {
        let inner = self.read();
        if !inner.ready {
            return None;
        }
        match inner.objects.get(key) {
            Some(v) if v.is_empty() => None,
            found => Some((found.cloned(), *self.rev.borrow())),
        }
    }

    /// The whole cache as it is now, and its revision; `None` when it is not ready.
    pub(super) fn view(&self) -> Option<View> {
        let inner = self.read();
        inner.ready.then(|| View {
            objects: inner.objects.clone(),
            rev: *self.rev.borrow(),
            unreadable: inner.unreadable > 0,
        })
    }
}

/// The cache at one revision.
pub(super) struct View {
    objects: Objects,
    pub(super) rev: Revision,
    /// Whether it holds an entry this server could not read.
    unreadable: bool,
}

impl View {
    /// Whether everything under `prefix` after `after` can be read from here.
    pub(super) fn serves(&self, prefix: &str, after: Option<&str>) -> bool {
        !self.unreadable || self.range(prefix, after).all(|(_, v)| !v.is_empty())
    }

    /// The objects under `prefix` after the key `after` (if given), in key order.
    pub(super) fn range<'a>(
        &'a self,
        prefix: &'a str,
        after: Option<&str>,
    ) -> impl Iterator<Item = (&'a str, &'a [u8])> + 'a {
        let start = match after {
            Some(a) if a >= prefix => Bound::Excluded(a.to_string()),
            _ => Bound::Included(prefix.to_string()),
        };
        self.objects
            .range((start, Bound::Unbounded))
            .take_while(move |(k, _)| k.starts_with(prefix))
            .map(|(k, v)| (k.as_str(), v.as_ref()))
    }

    /// The objects under `prefix`, a chunk at a time (a watch's initial events).
    pub(super) fn snapshot(self, prefix: &str) -> ViewSnapshot {
        ViewSnapshot {
            view: self,
            prefix: prefix.to_string(),
            after: None,
            done: false,
        }
    }
}

pub(super) struct ViewSnapshot {
    view: View,
    prefix: String,
    after: Option<String>,
    done: bool,
}

impl Snapshot for ViewSnapshot {
    fn revision(&self) -> Revision {
        self.view.rev
    }

    fn next_chunk(&mut self) -> crate::Result<Vec<(String, Bytes)>> {
        if self.done {
            return Ok(Vec::new());
        }
        let start = match &self.after {
            Some(a) => Bound::Excluded(a.clone()),
            None => Bound::Included(self.prefix.clone()),
        };
        let mut out = Vec::new();
        let mut bytes = 0;
        for (k, v) in self
            .view
            .objects
            .range((start, Bound::Unbounded))
            .take_while(|(k, _)| k.starts_with(&self.prefix))
        {
            out.push((k.clone(), v.clone()));
            bytes += v.len();
            if bytes >= crate::CHUNK_BYTES {
                break;
            }
        }
        match out.last() {
            Some((k, _)) if bytes >= crate::CHUNK_BYTES => self.after = Some(k.clone()),
            _ => self.done = true,
        }
        Ok(out)
    }
}

/// How long a shared revision request may take before its readers give up on the cache.
const FETCH_LIMIT: Duration = Duration::from_secs(2);

/// Shares one request for etcd's current revision among the reads that wait for it.
#[derive(Default)]
pub(super) struct Freshness {
    state: Mutex<FreshState>,
}

#[derive(Default)]
struct FreshState {
    /// Whether a fetcher task runs.
    running: bool,
    /// Reads waiting for a revision asked after they arrived.
    waiting: Vec<oneshot::Sender<Result<Revision, String>>>,
}

impl Freshness {
    /// etcd's current revision, from a request sent after this call began; `fetch` asks etcd.
    pub(super) async fn revision<F, Fut>(self: &Arc<Self>, fetch: F) -> Result<Revision, String>
    where
        F: Fn() -> Fut + Send + 'static,
        Fut: Future<Output = Result<Revision, String>> + Send,
    {
        let (tx, rx) = oneshot::channel();
        let start = {
            let mut st = self.state.lock().unwrap_or_else(|p| p.into_inner());
            st.waiting.push(tx);
            !std::mem::replace(&mut st.running, true)
        };
        if start {
            let this = self.clone();
            tokio::spawn(async move {
                loop {
                    // Everyone waiting now arrived before the request below is sent.
                    let batch = {
                        let mut st = this.state.lock().unwrap_or_else(|p| p.into_inner());
                        if st.waiting.is_empty() {
                            st.running = false;
                            return;
                        }
                        std::mem::take(&mut st.waiting)
                    };
                    // A request that hangs (a member black-holed until its connection's
                    // keep-alive gives up) would hold every read: those waiting read etcd.
                    let answer = match tokio::time::timeout(FETCH_LIMIT, fetch()).await {
                        Ok(a) => a,
                        Err(_) => Err(format!("no revision within {FETCH_LIMIT:?}")),
                    };
                    for w in batch {
                        let _ = w.send(answer.clone());
                    }
                }
            });
        }
        rx.await
            .unwrap_or_else(|_| Err("the revision request was dropped".into()))
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::sync::atomic::{AtomicU64, Ordering};

    fn put(key: &str, body: &str) -> Op {
        Op::Put(key.into(), Bytes::from(body.to_string()))
    }

    #[tokio::test]
    async fn the_cache_follows_events_and_serves_only_when_filled_and_caught_up() {
        let (cache, mut progress) = Cache::new();
        cache.trust_progress(true);
        assert!(cache.get("a").is_none());
        // Events before the fill are not applied (the fill is at a later revision).
        cache.apply(vec![put("core/x/ns/a", "{}")], 3);
        let mut objects = Objects::new();
        objects.insert("core/x/ns/a".to_string(), Bytes::from_static(b"a1"));
        objects.insert("core/x/ns/b".to_string(), Bytes::from_static(b"b1"));
        objects.insert("core/y/ns/c".to_string(), Bytes::from_static(b"c1"));
        cache.fill(objects, 10);
        assert_eq!(
            cache.get("core/x/ns/a"),
            Some((Some(Bytes::from_static(b"a1")), 10))
        );
        cache.apply(
            vec![
                put("core/x/ns/a", "a2"),
                Op::Delete("core/x/ns/b".into()),
                put("core/x/ns/d", "d1"),
            ],
            13,
        );
        let view = cache.view().unwrap();
        assert_eq!(view.rev, 13);
        let items: Vec<_> = view.range("core/x/", None).collect();
        assert_eq!(
            items,
            vec![("core/x/ns/a", &b"a2"[..]), ("core/x/ns/d", &b"d1"[..])]
        );
        assert_eq!(view.range("core/x/", Some("core/x/ns/a")).count(), 1);
        assert_eq!(view.range("core/", None).count(), 3);
        // A view does not change with later writes.
        cache.apply(vec![put("core/x/ns/e", "e1")], 14);
        assert_eq!(view.range("core/x/", None).count(), 2);
        let mut snap = view.snapshot("core/x/");
        assert_eq!(snap.revision(), 13);
        assert_eq!(snap.next_chunk().unwrap().len(), 2);
        assert!(snap.next_chunk().unwrap().is_empty());
        // What this server cannot read is not served from here: etcd says why.
        cache.apply(vec![put("core/z/ns/bad", "")], 15);
        assert!(cache.get("core/z/ns/bad").is_none());
        let view = cache.view().unwrap();
        assert!(view.serves("core/x/", None));
        assert!(!view.serves("core/z/", None));
        cache.apply(vec![put("core/z/ns/bad", "fixed")], 16);
        assert!(cache.view().unwrap().serves("core/", None));
        assert!(cache.get("core/z/ns/bad").is_some());
        // Caught up at once when there; else a progress request goes to the watch, and its
        // answer (or an event) lets the read through.
        assert!(cache.caught_up(16).await);
        let wait = cache.caught_up(20);
        tokio::pin!(wait);
        tokio::select! {
            _ = &mut wait => panic!("not caught up yet"),
            r = progress.recv() => assert_eq!(r, Some(())),
        }
        cache.progress(20);
        assert!(wait.await);
        // Without trusted progress (etcd before 3.4.31), only events move it on, and a read
        // gives up soon.
        cache.trust_progress(false);
        cache.progress(30);
        assert!(!cache.caught_up(30).await);
        // Invalidated (a gap): no reads until filled again.
        cache.invalidate();
        assert!(cache.get("core/x/ns/a").is_none());
        assert!(!cache.caught_up(1).await);
    }

    #[test]
    fn progress_is_trusted_from_the_fixed_versions_on() {
        for (v, ok) in [
            ("3.4.23", false),
            ("3.4.31", true),
            ("3.5.12", false),
            ("3.5.13", true),
            ("3.6.0", true),
            ("v3.5.21", true),
            ("4.0.0", true),
            ("3.3.27", false),
            ("garbage", false),
        ] {
            assert_eq!(progress_is_ordered(v), ok, "{v}");
        }
    }

    #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
    async fn reads_share_revision_requests_sent_after_they_began() {
        let fresh = Arc::new(Freshness::default());
        let asked = Arc::new(AtomicU64::new(0));
        // The first request is held until the test opens the gate.
        let gate = Arc::new(tokio::sync::Semaphore::new(0));
        let fetch = {
            let (asked, gate) = (asked.clone(), gate.clone());
            move || {
                let (asked, gate) = (asked.clone(), gate.clone());
                async move {
                    let n = asked.fetch_add(1, Ordering::SeqCst) + 1;
                    if n == 1 {
                        gate.acquire().await.unwrap().forget();
                    }
                    Ok(n)
                }
            }
        };
        let first = {
            let (fresh, fetch) = (fresh.clone(), fetch.clone());
            tokio::spawn(async move { fresh.revision(fetch).await })
        };
        let waiting = |n: usize| {
            let (fresh, asked) = (fresh.clone(), asked.clone());
            async move {
                while fresh.state.lock().unwrap().waiting.len() < n
                    || asked.load(Ordering::SeqCst) < 1
                {
                    tokio::task::yield_now().await;
                }
            }
        };
        // The first read's request is in flight; nineteen more arrive meanwhile.
        waiting(0).await;
        let later: Vec<_> = (0..19)
            .map(|_| {
                let (fresh, fetch) = (fresh.clone(), fetch.clone());
                tokio::spawn(async move { fresh.revision(fetch).await })
            })
            .collect();
        tokio::time::timeout(Duration::from_secs(5), waiting(19))
            .await
            .expect("nineteen reads waiting");
        gate.add_permits(1);
        assert_eq!(first.await.unwrap().unwrap(), 1);
        // They came after request 1 was sent: they share request 2.
        for r in later {
            assert_eq!(r.await.unwrap().unwrap(), 2);
        }
        assert_eq!(asked.load(Ordering::SeqCst), 2);
        // A read after those gets a new request.
        assert_eq!(fresh.revision(fetch).await.unwrap(), 3);
    }
}
