//! The embedded store on redb: one file, ACID transactions, no external service.
//!
//! Every write commits the object, the new global revision and the watch-log entry in one redb
//! transaction, so a crash never leaves an object without its event or the reverse.
//!
//! Writes are group-committed: a writer queues its change and takes the write lock; whoever
//! holds the lock applies every queued change in one transaction, in queue order, with one
//! fsync, then hands each writer its own result. Alone, a writer commits by itself; under load,
//! one disk sync serves many writers. Results (conflicts, "already exists") stay per write, and
//! live events are published in revision order under the lock. On a multi-threaded tokio
//! runtime the wait happens in `block_in_place`, so the async workers keep serving requests
//! (and queueing more writes) while a commit syncs.

use std::path::Path;
use std::sync::{Arc, Mutex, MutexGuard};

use redb::{Database, Durability, ReadableDatabase, ReadableTable, TableDefinition};
use serde_json::Value;
use tokio::sync::broadcast;

use super::{Error, Event, EventType, LogReader, Result, Revision, Store, Watch, stamp};

const OBJECTS: TableDefinition<&str, &[u8]> = TableDefinition::new("objects");
const LOG: TableDefinition<u64, &[u8]> = TableDefinition::new("log");
const META: TableDefinition<&str, u64> = TableDefinition::new("meta");
const REVISION: &str = "revision";
/// The highest revision removed from the log; watches from before it get 410 Expired.
const COMPACTED: &str = "compacted";

/// Tuning for [`RedbStore`].
#[derive(Clone, Debug)]
pub struct Options {
    /// How many events the watch log keeps. Kubernetes keeps ~5 minutes of etcd history; a
    /// count is simpler to reason about on small devices.
    pub history: u64,
    /// fsync every commit. Off only in benchmarks and tests that measure something else.
    pub durable: bool,
}

impl Default for Options {
    fn default() -> Self {
        Options {
            history: 10_000,
            durable: true,
        }
    }
}

pub struct RedbStore {
    inner: Arc<Inner>,
    /// Serializes commits and orders publication; holds the live revision.
    write_lock: Mutex<Revision>,
    /// Changes waiting for the next commit.
    queue: Mutex<Vec<Pending>>,
    tx: broadcast::Sender<Arc<Event>>,
    options: Options,
}

type Change = Box<dyn FnOnce(Option<Value>, Revision) -> Result<(EventType, Value)> + Send>;

/// Where one write's outcome is left for its writer.
type Slot = Arc<Mutex<Option<Result<Value>>>>;

/// One queued write and where its result goes.
struct Pending {
    key: String,
    change: Change,
    slot: Slot,
}

fn lock<T>(m: &Mutex<T>) -> MutexGuard<'_, T> {
    m.lock().unwrap_or_else(|p| p.into_inner())
}

struct Inner {
    db: Database,
}

fn backend(e: impl std::fmt::Display) -> Error {
    Error::Backend(e.to_string())
}

impl RedbStore {
    pub fn open(path: &Path, options: Options) -> Result<Self> {
        let db = Database::create(path).map_err(backend)?;
        let txn = db.begin_write().map_err(backend)?;
        let rev = {
            txn.open_table(OBJECTS).map_err(backend)?;
            txn.open_table(LOG).map_err(backend)?;
            let meta = txn.open_table(META).map_err(backend)?;
            meta.get(REVISION)
                .map_err(backend)?
                .map(|g| g.value())
                .unwrap_or(0)
        };
        txn.commit().map_err(backend)?;
        // Capacity bounds memory per slow watcher; laggards catch up from the log.
        let (tx, _) = broadcast::channel(4096);
        Ok(RedbStore {
            inner: Arc::new(Inner { db }),
            write_lock: Mutex::new(rev),
            queue: Mutex::default(),
            tx,
            options,
        })
    }

    /// One write: `change` gets the current stored object (if any) and the new revision, and
    /// returns the event to log (or an error, which leaves the store as it was). Returns once
    /// the write is durable (with `durable`) and published.
    fn write(
        &self,
        key: &str,
        change: impl FnOnce(Option<Value>, Revision) -> Result<(EventType, Value)> + Send + 'static,
    ) -> Result<Value> {
        let slot = Arc::new(Mutex::new(None));
        lock(&self.queue).push(Pending {
            key: key.to_string(),
            change: Box::new(change),
            slot: slot.clone(),
        });
        let wait = || {
            let mut live = lock(&self.write_lock);
            // A commit that ran while we waited for the lock may have carried our change.
            if lock(&slot).is_none() {
                let batch = std::mem::take(&mut *lock(&self.queue));
                self.commit_batch(&mut live, batch);
            }
        };
        let multi_thread = tokio::runtime::Handle::try_current()
            .is_ok_and(|h| h.runtime_flavor() == tokio::runtime::RuntimeFlavor::MultiThread);
        if multi_thread {
            tokio::task::block_in_place(wait);
        } else {
            wait();
        }
        lock(&slot)
            .take()
            .unwrap_or_else(|| Err(backend("write lost: no commit carried it")))
    }

    /// Applies `batch` in one transaction and fills every slot. Called with the write lock.
    fn commit_batch(&self, live: &mut Revision, batch: Vec<Pending>) {
        let mut results: Vec<(Slot, Result<Arc<Event>>)> = Vec::with_capacity(batch.len());
        let outcome = self.apply_batch(*live, batch, &mut results);
        match outcome {
            Ok(last) => {
                *live = last;
                for (slot, result) in results {
                    let value = result.map(|event| {
                        let object = (*event.object).clone();
                        // No receivers is fine: nobody is watching.
                        let _ = self.tx.send(event);
                        object
                    });
                    *lock(&slot) = Some(value);
                }
            }
            Err((e, slots)) => {
                // Nothing was committed: every write of the batch fails alike.
                for slot in slots {
                    *lock(&slot) = Some(Err(backend(&e)));
                }
            }
        }
    }

    /// Runs the changes of `batch` in order inside one transaction. On success returns the
    /// new live revision and leaves each write's outcome in `results`; on a backend failure
    /// returns the error and every slot of the batch (none committed).
    fn apply_batch(
        &self,
        live: Revision,
        batch: Vec<Pending>,
        results: &mut Vec<(Slot, Result<Arc<Event>>)>,
    ) -> std::result::Result<Revision, (Error, Vec<Slot>)> {
        let slots: Vec<_> = batch.iter().map(|p| p.slot.clone()).collect();
        let fail = |e: Error| (e, slots.clone());
        let mut txn = self.inner.db.begin_write().map_err(|e| fail(backend(e)))?;
        if !self.options.durable {
            txn.set_durability(Durability::None)
                .map_err(|e| fail(backend(e)))?;
        }
        let mut rev = live;
        {
            let mut objects = txn.open_table(OBJECTS).map_err(|e| fail(backend(e)))?;
            let mut log = txn.open_table(LOG).map_err(|e| fail(backend(e)))?;
            let mut meta = txn.open_table(META).map_err(|e| fail(backend(e)))?;
            for Pending { key, change, slot } in batch {
                let current = match objects.get(key.as_str()).map_err(|e| fail(backend(e)))? {
                    Some(bytes) => match decode(&key, bytes.value()) {
                        Ok(v) => Some(v),
                        Err(e) => {
                            results.push((slot, Err(e)));
                            continue;
                        }
                    },
                    None => None,
                };
                let prev = current.clone().map(Arc::new);
                let (kind, mut object) = match change(current, rev + 1) {
                    Ok(x) => x,
                    // Refused (conflict, exists, not found): this write only.
                    Err(e) => {
                        results.push((slot, Err(e)));
                        continue;
                    }
                };
                rev += 1;
                stamp(&mut object, rev);
                match kind {
                    EventType::Deleted => {
                        objects.remove(key.as_str()).map_err(|e| fail(backend(e)))?;
                    }
                    _ => {
                        let bytes = serde_json::to_vec(&object).map_err(|e| fail(backend(e)))?;
                        objects
                            .insert(key.as_str(), bytes.as_slice())
                            .map_err(|e| fail(backend(e)))?;
                    }
                }
                let event = Event {
                    rev,
                    kind,
                    key,
                    object: Arc::new(object),
                    prev,
                };
                let bytes = serde_json::to_vec(&event).map_err(|e| fail(backend(e)))?;
                log.insert(rev, bytes.as_slice())
                    .map_err(|e| fail(backend(e)))?;
                results.push((slot, Ok(Arc::new(event))));
            }
            if rev != live {
                meta.insert(REVISION, rev).map_err(|e| fail(backend(e)))?;
                // Compact in batches so the common write stays one insert.
                let keep_from = rev.saturating_sub(self.options.history);
                let compacted = meta
                    .get(COMPACTED)
                    .map_err(|e| fail(backend(e)))?
                    .map(|g| g.value())
                    .unwrap_or(0);
                if keep_from > compacted + self.options.history / 10 + 1 {
                    log.retain_in(..=keep_from, |_, _| false)
                        .map_err(|e| fail(backend(e)))?;
                    meta.insert(COMPACTED, keep_from)
                        .map_err(|e| fail(backend(e)))?;
                }
            }
        }
        if rev == live {
            // Every write of the batch was refused: nothing to commit.
            drop(txn);
            return Ok(live);
        }
        txn.commit().map_err(|e| fail(backend(e)))?;
        Ok(rev)
    }
}

fn decode(key: &str, bytes: &[u8]) -> Result<Value> {
    serde_json::from_slice(bytes).map_err(|source| Error::Corrupt {
        key: key.to_string(),
        source,
    })
}

impl LogReader for Inner {
    fn read_log(&self, from: Revision) -> Result<Vec<Arc<Event>>> {
        let txn = self.db.begin_read().map_err(backend)?;
        let meta = txn.open_table(META).map_err(backend)?;
        let compacted = meta
            .get(COMPACTED)
            .map_err(backend)?
            .map(|g| g.value())
            .unwrap_or(0);
        if from < compacted {
            return Err(Error::Expired {
                requested: from,
                oldest: compacted + 1,
            });
        }
        let log = txn.open_table(LOG).map_err(backend)?;
        let mut out = Vec::new();
        for entry in log.range(from + 1..).map_err(backend)? {
            let (_, bytes) = entry.map_err(backend)?;
            let event: Event =
                serde_json::from_slice(bytes.value()).map_err(|source| Error::Corrupt {
                    key: "log".into(),
                    source,
                })?;
            out.push(Arc::new(event));
        }
        Ok(out)
    }
}

impl Store for RedbStore {
    fn get(&self, key: &str) -> Result<Option<Value>> {
        let txn = self.inner.db.begin_read().map_err(backend)?;
        let objects = txn.open_table(OBJECTS).map_err(backend)?;
        match objects.get(key).map_err(backend)? {
            Some(bytes) => Ok(Some(decode(key, bytes.value())?)),
            None => Ok(None),
        }
    }

    fn list(&self, prefix: &str) -> Result<(Vec<Value>, Revision)> {
        let txn = self.inner.db.begin_read().map_err(backend)?;
        let meta = txn.open_table(META).map_err(backend)?;
        let rev = meta
            .get(REVISION)
            .map_err(backend)?
            .map(|g| g.value())
            .unwrap_or(0);
        let objects = txn.open_table(OBJECTS).map_err(backend)?;
        let mut out = Vec::new();
        for entry in objects.range(prefix..).map_err(backend)? {
            let (k, v) = entry.map_err(backend)?;
            if !k.value().starts_with(prefix) {
                break;
            }
            out.push(decode(k.value(), v.value())?);
        }
        Ok((out, rev))
    }

    fn create(&self, key: &str, object: Value) -> Result<Value> {
        self.write(key, move |current, _| match current {
            Some(_) => Err(Error::AlreadyExists),
            None => Ok((EventType::Added, object)),
        })
    }

    fn update(&self, key: &str, object: Value, expected: Option<Revision>) -> Result<Value> {
        self.write(key, move |current, _| {
            let current = current.ok_or(Error::NotFound)?;
            check_expected(&current, expected)?;
            Ok((EventType::Modified, object))
        })
    }

    fn delete(&self, key: &str, expected: Option<Revision>) -> Result<Value> {
        self.write(key, move |current, _| {
            let current = current.ok_or(Error::NotFound)?;
            check_expected(&current, expected)?;
            Ok((EventType::Deleted, current))
        })
    }

    fn watch(&self, prefix: &str, from: Revision) -> Result<Watch> {
        let rx = self.tx.subscribe();
        Watch::new(prefix, from, rx, self.inner.clone())
    }

    fn revision(&self) -> Revision {
        *lock(&self.write_lock)
    }
}

fn check_expected(current: &Value, expected: Option<Revision>) -> Result<()> {
    if let Some(expected) = expected {
        let actual = super::revision_of(current).unwrap_or(0);
        if actual != expected {
            return Err(Error::Conflict { current: actual });
        }
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    fn pod(name: &str) -> Value {
        json!({"apiVersion": "v1", "kind": "Pod", "metadata": {"name": name, "namespace": "default"}})
    }

    fn open(dir: &Path, history: u64) -> RedbStore {
        RedbStore::open(
            &dir.join("kedge.redb"),
            Options {
                history,
                durable: true,
            },
        )
        .unwrap()
    }

    /// Many writers at once (group commit): every write gets its own outcome, revisions are
    /// unique and gap-free, and the log holds every event in order. Two writers race on each
    /// key: exactly one create wins.
    #[test]
    fn concurrent_writers_share_commits_and_keep_their_own_results() {
        let dir = tempfile::tempdir().unwrap();
        let store = Arc::new(open(dir.path(), 100_000));
        const THREADS: usize = 8;
        const KEYS: usize = 100;
        let handles: Vec<_> = (0..THREADS)
            .map(|t| {
                let store = store.clone();
                std::thread::spawn(move || {
                    let mut won = Vec::new();
                    for i in 0..KEYS {
                        // Threads pair up on the same keys.
                        let name = format!("p{}-{i}", t / 2);
                        match store.create(&format!("/pods/default/{name}"), pod(&name)) {
                            Ok(v) => won.push(super::super::revision_of(&v).unwrap()),
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
        revs.sort_unstable();
        let total = THREADS / 2 * KEYS;
        assert_eq!(revs, (1..=total as u64).collect::<Vec<_>>());
        assert_eq!(store.revision(), total as u64);
        let log = store.inner.read_log(0).unwrap();
        assert_eq!(log.len(), total);
        assert!(log.windows(2).all(|w| w[0].rev + 1 == w[1].rev));
        let (listed, rev) = store.list("/pods/").unwrap();
        assert_eq!((listed.len(), rev), (total, total as u64));
    }

    #[test]
    fn revisions_increase_and_stamp_objects() {
        let dir = tempfile::tempdir().unwrap();
        let store = open(dir.path(), 100);
        let a = store.create("core/pods/default/a", pod("a")).unwrap();
        let b = store.create("core/pods/default/b", pod("b")).unwrap();
        assert_eq!(crate::store::revision_of(&a), Some(1));
        assert_eq!(crate::store::revision_of(&b), Some(2));
        assert_eq!(store.revision(), 2);
        let (items, rev) = store.list("core/pods/default/").unwrap();
        assert_eq!(items.len(), 2);
        assert_eq!(rev, 2);
        // A prefix must not match a longer namespace name.
        store.create("core/pods/default2/c", pod("c")).unwrap();
        assert_eq!(store.list("core/pods/default/").unwrap().0.len(), 2);
    }

    #[test]
    fn duplicate_create_and_stale_update_are_refused() {
        let dir = tempfile::tempdir().unwrap();
        let store = open(dir.path(), 100);
        store.create("k/a", pod("a")).unwrap();
        assert!(matches!(
            store.create("k/a", pod("a")),
            Err(Error::AlreadyExists)
        ));
        store.update("k/a", pod("a"), Some(1)).unwrap();
        assert!(matches!(
            store.update("k/a", pod("a"), Some(1)),
            Err(Error::Conflict { current: 2 })
        ));
        assert!(matches!(
            store.delete("k/a", Some(1)),
            Err(Error::Conflict { .. })
        ));
        assert!(matches!(
            store.update("k/missing", pod("x"), None),
            Err(Error::NotFound)
        ));
        // The refused writes changed nothing.
        assert_eq!(store.revision(), 2);
        store.delete("k/a", Some(2)).unwrap();
        assert!(store.get("k/a").unwrap().is_none());
    }

    #[tokio::test]
    async fn watch_resumes_from_a_revision_and_follows_live_writes() {
        let dir = tempfile::tempdir().unwrap();
        let store = open(dir.path(), 100);
        for i in 0..5 {
            store
                .create(&format!("core/pods/default/p{i}"), pod("p"))
                .unwrap();
        }
        store.create("core/nodes//n1", pod("n")).unwrap();
        let mut w = store.watch("core/pods/", 3).unwrap();
        let e = w.next().await.unwrap().unwrap();
        assert_eq!((e.rev, e.kind), (4, EventType::Added));
        assert_eq!(w.next().await.unwrap().unwrap().rev, 5);
        store.delete("core/pods/default/p0", None).unwrap();
        let e = w.next().await.unwrap().unwrap();
        assert_eq!((e.rev, e.kind), (7, EventType::Deleted));
        assert_eq!(crate::store::revision_of(&e.object), Some(7));
        assert!(e.prev.is_some());
    }

    #[tokio::test]
    async fn compacted_history_is_expired() {
        let dir = tempfile::tempdir().unwrap();
        let store = open(dir.path(), 10);
        for i in 0..40 {
            store.create(&format!("k/{i}"), pod("p")).unwrap();
        }
        match store.watch("k/", 1) {
            Err(Error::Expired { requested: 1, .. }) => {}
            other => panic!("expected expired, got {:?}", other.map(|_| ())),
        }
        // Recent history is still served.
        let mut w = store.watch("k/", 35).unwrap();
        assert_eq!(w.next().await.unwrap().unwrap().rev, 36);
    }

    #[test]
    fn state_survives_restart() {
        let dir = tempfile::tempdir().unwrap();
        {
            let store = open(dir.path(), 100);
            store.create("k/a", pod("a")).unwrap();
            store.create("k/b", pod("b")).unwrap();
            store.delete("k/a", None).unwrap();
        }
        let store = open(dir.path(), 100);
        assert_eq!(store.revision(), 3);
        assert!(store.get("k/a").unwrap().is_none());
        assert!(store.get("k/b").unwrap().is_some());
        let next = store.create("k/c", pod("c")).unwrap();
        assert_eq!(crate::store::revision_of(&next), Some(4));
    }

    #[tokio::test]
    async fn lagging_watcher_catches_up_from_the_log() {
        let dir = tempfile::tempdir().unwrap();
        let store = open(dir.path(), 100_000);
        let mut w = store.watch("k/", 0).unwrap();
        // More than the live channel holds.
        for i in 0..5000 {
            store.create(&format!("k/{i}"), pod("p")).unwrap();
        }
        let mut seen = 0;
        while seen < 5000 {
            let e = w.next().await.unwrap().unwrap();
            seen += 1;
            assert_eq!(e.rev, seen);
        }
    }
}
