//! The embedded store on redb: one file, ACID transactions, no external service.
//!
//! Every write is one redb transaction holding the object, the new global revision and the
//! watch-log entry, so a crash never leaves an object without its event or the reverse. Writes
//! are serialized by one lock, which is also what publishes live events in revision order.

use std::path::Path;
use std::sync::{Arc, Mutex};

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
    /// Serializes writers and orders publication; holds the live revision.
    write_lock: Mutex<Revision>,
    tx: broadcast::Sender<Arc<Event>>,
    options: Options,
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
            tx,
            options,
        })
    }

    /// One write transaction: `change` gets the current stored object (if any) and the new
    /// revision, and returns the event to log (or an error, which aborts).
    fn write(
        &self,
        key: &str,
        change: impl FnOnce(Option<Value>, Revision) -> Result<(EventType, Value)>,
    ) -> Result<Value> {
        let mut live = self.write_lock.lock().unwrap_or_else(|p| p.into_inner());
        let rev = *live + 1;
        let mut txn = self.inner.db.begin_write().map_err(backend)?;
        if !self.options.durable {
            txn.set_durability(Durability::None).map_err(backend)?;
        }
        let event = {
            let mut objects = txn.open_table(OBJECTS).map_err(backend)?;
            let current = match objects.get(key).map_err(backend)? {
                Some(bytes) => Some(decode(key, bytes.value())?),
                None => None,
            };
            let prev = current.clone().map(Arc::new);
            let (kind, mut object) = change(current, rev)?;
            stamp(&mut object, rev);
            match kind {
                EventType::Deleted => {
                    objects.remove(key).map_err(backend)?;
                }
                _ => {
                    let bytes = serde_json::to_vec(&object).map_err(backend)?;
                    objects.insert(key, bytes.as_slice()).map_err(backend)?;
                }
            }
            let event = Event {
                rev,
                kind,
                key: key.to_string(),
                object: Arc::new(object),
                prev,
            };
            let mut log = txn.open_table(LOG).map_err(backend)?;
            let bytes = serde_json::to_vec(&event).map_err(backend)?;
            log.insert(rev, bytes.as_slice()).map_err(backend)?;
            let mut meta = txn.open_table(META).map_err(backend)?;
            meta.insert(REVISION, rev).map_err(backend)?;
            // Compact in batches so the common write stays one insert.
            let keep_from = rev.saturating_sub(self.options.history);
            let compacted = meta
                .get(COMPACTED)
                .map_err(backend)?
                .map(|g| g.value())
                .unwrap_or(0);
            if keep_from > compacted + self.options.history / 10 + 1 {
                log.retain_in(..=keep_from, |_, _| false).map_err(backend)?;
                meta.insert(COMPACTED, keep_from).map_err(backend)?;
            }
            event
        };
        txn.commit().map_err(backend)?;
        *live = rev;
        let object = (*event.object).clone();
        // No receivers is fine: nobody is watching.
        let _ = self.tx.send(Arc::new(event));
        Ok(object)
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
        self.write(key, |current, _| match current {
            Some(_) => Err(Error::AlreadyExists),
            None => Ok((EventType::Added, object)),
        })
    }

    fn update(&self, key: &str, object: Value, expected: Option<Revision>) -> Result<Value> {
        self.write(key, |current, _| {
            let current = current.ok_or(Error::NotFound)?;
            check_expected(&current, expected)?;
            Ok((EventType::Modified, object))
        })
    }

    fn delete(&self, key: &str, expected: Option<Revision>) -> Result<Value> {
        self.write(key, |current, _| {
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
        *self.write_lock.lock().unwrap_or_else(|p| p.into_inner())
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
