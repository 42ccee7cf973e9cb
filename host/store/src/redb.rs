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
//!
//! The watch log keeps, per event, the key, the type and the selectable attributes of the
//! object and of the version it replaced, with the object itself when it is small and in a
//! second table when it is not, so a watch replaying history decides from the entry alone
//! whether to load a big object. It is bounded in
//! events and in bytes; the file itself is compacted when it has grown well past what it holds.

use std::path::Path;
use std::sync::{Arc, Mutex, MutexGuard, RwLock, RwLockReadGuard};
use std::time::{Duration, Instant};

use bytes::Bytes;
use redb::{
    Database, DatabaseError, Durability, ReadableDatabase, ReadableTable, ReadableTableMetadata,
    TableDefinition, TableHandle,
};
use serde_json::Value;
use tokio::sync::watch;

use super::encryption::Encryption;
use super::{
    CHUNK_BYTES, CHUNK_SCAN, Chunk, Error, Event, EventType, Hub, LogReader, MAX_OBJECT_BYTES,
    Result, Revision, RingLimits, Snapshot, SnapshotInfo, Store, Watch, attrs, decode, stamp,
};

const OBJECTS: TableDefinition<&str, &[u8]> = TableDefinition::new("objects");
/// Log entries: revision → key, [`Header`] and, when it is small, the object (see
/// [`encode_entry`]).
const EVENTS: TableDefinition<u64, &[u8]> = TableDefinition::new("events");
/// Objects of log entries too big to keep inline: revision → the object as stored by that
/// event.
const EVENT_OBJECTS: TableDefinition<u64, &[u8]> = TableDefinition::new("event_objects");
/// The log of kedge before 2026-12: whole events with both versions of the object. Dropped at
/// open (watches from before the upgrade get 410 and relist).
const OLD_LOG: TableDefinition<u64, &[u8]> = TableDefinition::new("log");
const META: TableDefinition<&str, u64> = TableDefinition::new("meta");
const REVISION: &str = "revision";
/// The highest revision removed from the log; watches from before it get 410 Expired.
const COMPACTED: &str = "compacted";
/// Bytes the log holds (headers and objects).
const LOG_BYTES: &str = "log_bytes";
/// Bytes of keys and values the objects table and the log hold: what the file must hold.
const LIVE_BYTES: &str = "live_bytes";

/// Tuning for [`RedbStore`].
#[derive(Clone, Debug)]
pub struct Options {
    /// How many events the watch log keeps at most. Kubernetes keeps ~5 minutes of etcd
    /// history; a count is simpler to reason about on small devices.
    pub history: u64,
    /// How many bytes the watch log keeps at most: a few big objects written often (a status
    /// loop on an 800 KB pod) must not grow the file by the count bound times their size.
    pub history_bytes: u64,
    /// fsync every commit. Off only in benchmarks and tests that measure something else.
    pub durable: bool,
    /// redb's page cache. redb's default (1 GiB) would let the cache alone take a gateway's
    /// memory; pages beyond it are read from the file (and the OS page cache).
    pub cache_bytes: usize,
    /// The in-memory ring of recent events shared by every watch.
    pub ring: RingLimits,
    /// How long `open` waits for another process (a kedge still exiting after a kill) to
    /// release the file.
    pub lock_wait: Duration,
    /// What is encrypted before it is written to the file (objects and the watch log alike);
    /// nothing by default.
    pub encryption: Arc<Encryption>,
}

impl Default for Options {
    fn default() -> Self {
        Options {
            history: 10_000,
            history_bytes: 64 << 20,
            durable: true,
            cache_bytes: 16 << 20,
            ring: RingLimits::default(),
            lock_wait: Duration::from_secs(30),
            encryption: Arc::default(),
        }
    }
}

pub struct RedbStore {
    inner: Arc<Inner>,
    /// Serializes commits and orders publication; holds the live revision.
    write_lock: Mutex<Revision>,
    /// Changes waiting for the next commit.
    queue: Mutex<Vec<Pending>>,
    /// The newest published revision; watches wait on it. Dropped with the store, which ends
    /// every watch.
    published: watch::Sender<Revision>,
    hub: Arc<Hub>,
    /// Snapshots being read (watches' initial events), to end those held too long.
    snapshots: Mutex<Vec<std::sync::Weak<HeldTxn>>>,
    options: Options,
    metrics: crate::metrics::StoreMetrics,
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
    /// Shared by every transaction; taken exclusively only to compact the file.
    db: RwLock<Database>,
    path: std::path::PathBuf,
    /// Seals values before they are written, opens them when read back.
    encryption: Arc<Encryption>,
}

impl Inner {
    fn db(&self) -> RwLockReadGuard<'_, Database> {
        self.db.read().unwrap_or_else(|p| p.into_inner())
    }
}

fn backend(e: impl std::fmt::Display) -> Error {
    Error::Backend(e.to_string())
}

/// What a log entry says of its event besides the key and the object.
#[derive(serde::Serialize, serde::Deserialize)]
struct Header {
    #[serde(rename = "type")]
    kind: EventType,
    attrs: Value,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    prev: Option<Value>,
}

/// Objects up to this size live in their log entry; bigger ones in [`EVENT_OBJECTS`], so a
/// replay skipping an entry never reads a big object, and a small write touches one table.
const INLINE_OBJECT_MAX: usize = 2048;

/// A log entry: the key first (length-prefixed) so a replay can skip other keys without
/// parsing anything, then the header's JSON (length-prefixed), then the object if `inline`.
fn encode_entry(key: &str, h: &Header, inline: Option<&[u8]>) -> Result<Vec<u8>> {
    let head = serde_json::to_vec(h).map_err(backend)?;
    let mut out = Vec::with_capacity(8 + key.len() + head.len() + inline.map_or(0, <[u8]>::len));
    out.extend_from_slice(&(key.len() as u32).to_le_bytes());
    out.extend_from_slice(key.as_bytes());
    out.extend_from_slice(&(head.len() as u32).to_le_bytes());
    out.extend_from_slice(&head);
    out.extend_from_slice(inline.unwrap_or_default());
    Ok(out)
}

/// A log entry read back: the key, the header's JSON, and the object if it is inline (empty
/// otherwise: objects are never empty).
fn decode_entry(bytes: &[u8]) -> Result<(&str, &[u8], &[u8])> {
    let corrupt = || Error::Backend("corrupt watch log entry".into());
    let field = |at: usize| -> Result<(&[u8], usize)> {
        let len = bytes.get(at..at + 4).ok_or_else(corrupt)?;
        let len = u32::from_le_bytes(len.try_into().expect("4 bytes")) as usize;
        let v = bytes.get(at + 4..at + 4 + len).ok_or_else(corrupt)?;
        Ok((v, at + 4 + len))
    };
    let (key, at) = field(0)?;
    let key = std::str::from_utf8(key).map_err(|_| corrupt())?;
    let (head, at) = field(at)?;
    Ok((key, head, &bytes[at..]))
}

fn meta_get(meta: &impl ReadableTable<&'static str, u64>, name: &str) -> Result<u64> {
    Ok(meta
        .get(name)
        .map_err(backend)?
        .map(|g| g.value())
        .unwrap_or(0))
}

/// Opens (creating if needed) the database, waiting up to `wait` for another process to let
/// go of it: right after a `kill -9` the dying process may still hold the file's lock.
fn open_db(path: &Path, cache: usize, wait: Duration) -> Result<Database> {
    let start = Instant::now();
    let mut told = false;
    loop {
        match redb::Builder::new().set_cache_size(cache).create(path) {
            Ok(db) => return Ok(db),
            Err(DatabaseError::DatabaseAlreadyOpen) if start.elapsed() < wait => {
                if !told {
                    tracing::warn!(path = %path.display(), "the store is locked by another process (a kedge still running or exiting); waiting up to {}s for it", wait.as_secs());
                    told = true;
                }
                std::thread::sleep(Duration::from_millis(100));
            }
            Err(DatabaseError::DatabaseAlreadyOpen) => {
                return Err(Error::Backend(format!(
                    "{} is in use by another process (waited {}s): stop the other kedge using this data dir first",
                    path.display(),
                    wait.as_secs()
                )));
            }
            Err(e) => return Err(backend(e)),
        }
    }
}

impl RedbStore {
    pub fn open(path: &Path, options: Options) -> Result<Self> {
        crate::fsmode::private_file(path)
            .map_err(|e| Error::Backend(format!("{}: {e}", path.display())))?;
        let mut db = open_db(path, options.cache_bytes, options.lock_wait)?;
        // Snapshot copies a killed server left behind (`save_snapshot`'s temporary files).
        if let (Some(dir), Some(name)) = (path.parent(), path.file_name()) {
            let prefix = format!("{}.snapshot-", name.to_string_lossy());
            for e in std::fs::read_dir(dir).into_iter().flatten().flatten() {
                if e.file_name().to_string_lossy().starts_with(&prefix) {
                    let _ = std::fs::remove_file(e.path());
                }
            }
        }
        let txn = db.begin_write().map_err(backend)?;
        let rev = {
            txn.open_table(OBJECTS).map_err(backend)?;
            txn.open_table(EVENTS).map_err(backend)?;
            txn.open_table(EVENT_OBJECTS).map_err(backend)?;
            let mut meta = txn.open_table(META).map_err(backend)?;
            let rev = meta_get(&meta, REVISION)?;
            let old_log = txn
                .list_tables()
                .map_err(backend)?
                .any(|t| t.name() == OLD_LOG.name());
            if old_log {
                txn.delete_table(OLD_LOG).map_err(backend)?;
                meta.insert(COMPACTED, rev).map_err(backend)?;
                meta.insert(LOG_BYTES, 0).map_err(backend)?;
                tracing::info!(
                    revision = rev,
                    "store: dropped the watch log of an older kedge; watches from before this start relist"
                );
            }
            if meta.get(LIVE_BYTES).map_err(backend)?.is_none() {
                let objects = txn.open_table(OBJECTS).map_err(backend)?;
                let mut live = meta_get(&meta, LOG_BYTES)?;
                for entry in objects.iter().map_err(backend)? {
                    let (k, v) = entry.map_err(backend)?;
                    live += footprint(k.value().len() + v.value().len());
                }
                meta.insert(LIVE_BYTES, live).map_err(backend)?;
            }
            rev
        };
        txn.commit().map_err(backend)?;
        compact_if_bloated(&mut db, path)?;
        let inner = Arc::new(Inner {
            db: RwLock::new(db),
            path: path.to_path_buf(),
            encryption: options.encryption.clone(),
        });
        Ok(RedbStore {
            inner,
            write_lock: Mutex::new(rev),
            queue: Mutex::default(),
            published: watch::channel(rev).0,
            hub: Arc::new(Hub::new(rev, options.ring)),
            snapshots: Mutex::default(),
            options,
            metrics: Default::default(),
        })
    }

    /// Records commits into `metrics` (the server's registry) from now on.
    pub fn with_metrics(mut self, metrics: crate::metrics::StoreMetrics) -> Self {
        self.metrics = metrics;
        self
    }

    /// Ends the snapshots open longer than `max_age`: a watch whose client stopped reading
    /// its initial events would otherwise keep redb from reusing every page written since.
    /// Their watches end with 410 Expired and the clients relist. Returns how many ended.
    pub fn end_old_snapshots(&self, max_age: Duration) -> usize {
        let mut ended = 0;
        lock(&self.snapshots).retain(|w| {
            let Some(held) = w.upgrade() else {
                return false;
            };
            if held.opened.elapsed() <= max_age {
                return true;
            }
            if lock(&held.txn).take().is_some() {
                ended += 1;
            }
            false
        });
        ended
    }

    /// Compacts the file if it has grown well past what it holds (after a burst of big
    /// writes, say), taking every transaction's lock meanwhile. Returns whether it did.
    /// Cheap when there is nothing to do; the server calls it every few minutes.
    pub fn maintain(&self) -> Result<bool> {
        let _writes = lock(&self.write_lock);
        let mut db = self.inner.db.write().unwrap_or_else(|p| p.into_inner());
        compact_if_bloated(&mut db, &self.inner.path)
    }

    /// Rewrites every object whose stored bytes are not what a write would store now under
    /// the store's encryption (sealed with another key or provider, or plaintext where the
    /// first provider encrypts): the re-encryption that completes a key rotation. Each is an
    /// ordinary write (a new resourceVersion, a MODIFIED event), as kube's
    /// `kubectl replace` of every Secret is. Objects that cannot be decrypted are left as
    /// they are and logged. Returns how many were rewritten.
    pub fn reencrypt(&self) -> Result<usize> {
        let enc = self.inner.encryption.clone();
        let mut stale = Vec::new();
        {
            let db = self.inner.db();
            let txn = db.begin_read().map_err(backend)?;
            let objects = txn.open_table(OBJECTS).map_err(backend)?;
            for prefix in enc.prefixes() {
                for entry in objects.range(prefix.as_str()..).map_err(backend)? {
                    let (k, v) = entry.map_err(backend)?;
                    if !k.value().starts_with(&prefix) {
                        break;
                    }
                    if !enc.is_current(k.value(), v.value()) {
                        stale.push(k.value().to_string());
                    }
                }
            }
        }
        let mut done = 0;
        for key in stale {
            let rewrite = self.write(&key, |current, _| {
                let current = current.ok_or(Error::NotFound)?;
                Ok((EventType::Modified, current))
            });
            match rewrite {
                Ok(_) => done += 1,
                // Deleted meanwhile: nothing left to rewrite.
                Err(Error::NotFound) => {}
                Err(e) => tracing::warn!(key, error = %e, "store: cannot re-encrypt"),
            }
        }
        Ok(done)
    }

    /// Writes a consistent copy of the store, as it is at one revision, into a new redb file
    /// at `dest` (which must not exist or be empty): the objects as the file holds them
    /// (sealed ones stay sealed, so the copy needs the same encryption keys), the revision,
    /// and no watch log. Writes go on meanwhile; the copy reads one redb snapshot.
    /// `kedge snapshot save` of a store on redb.
    pub fn backup(&self, dest: &Path) -> Result<SnapshotInfo> {
        let db = self.inner.db();
        let txn = db.begin_read().map_err(backend)?;
        let revision = meta_get(&txn.open_table(META).map_err(backend)?, REVISION)?;
        let source = txn.open_table(OBJECTS).map_err(backend)?;
        crate::fsmode::private_file(dest)
            .map_err(|e| Error::Backend(format!("{}: {e}", dest.display())))?;
        let copy = redb::Builder::new()
            .set_cache_size(4 << 20)
            .create(dest)
            .map_err(backend)?;
        let (mut objects, mut live) = (0u64, 0u64);
        let mut entries = source.iter().map_err(backend)?;
        // Bounded transactions (a big store is not held in one write's dirty pages); only
        // the last one is made durable, and it writes the revision: a copy cut short is
        // a file without one, which `restore` refuses.
        loop {
            let mut out = copy.begin_write().map_err(backend)?;
            out.set_durability(Durability::None).map_err(backend)?;
            let mut batch = 0usize;
            let mut done = true;
            {
                let mut table = out.open_table(OBJECTS).map_err(backend)?;
                for entry in entries.by_ref() {
                    let (k, v) = entry.map_err(backend)?;
                    table.insert(k.value(), v.value()).map_err(backend)?;
                    objects += 1;
                    let len = k.value().len() + v.value().len();
                    live += footprint(len);
                    batch += len;
                    if batch >= 16 << 20 {
                        done = false;
                        break;
                    }
                }
            }
            if done {
                out.set_durability(Durability::Immediate).map_err(backend)?;
                out.open_table(EVENTS).map_err(backend)?;
                out.open_table(EVENT_OBJECTS).map_err(backend)?;
                let mut meta = out.open_table(META).map_err(backend)?;
                meta.insert(REVISION, revision).map_err(backend)?;
                meta.insert(COMPACTED, revision).map_err(backend)?;
                meta.insert(LOG_BYTES, 0).map_err(backend)?;
                meta.insert(LIVE_BYTES, live).map_err(backend)?;
                drop(meta);
                out.commit().map_err(backend)?;
                break;
            }
            out.commit().map_err(backend)?;
        }
        Ok(SnapshotInfo { revision, objects })
    }

    /// Bytes of keys and values the store holds (objects and log), as it counts them.
    #[cfg(test)]
    pub(crate) fn live_bytes(&self) -> Result<u64> {
        let db = self.inner.db();
        let txn = db.begin_read().map_err(backend)?;
        meta_get(&txn.open_table(META).map_err(backend)?, LIVE_BYTES)
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
        super::blocking(|| {
            let mut live = lock(&self.write_lock);
            // A commit that ran while we waited for the lock may have carried our change.
            if lock(&slot).is_none() {
                let batch = std::mem::take(&mut *lock(&self.queue));
                self.commit_batch(&mut live, batch);
            }
        });
        lock(&slot)
            .take()
            .unwrap_or_else(|| Err(backend("write lost: no commit carried it")))
    }

    /// Applies `batch` in one transaction and fills every slot. Called with the write lock.
    fn commit_batch(&self, live: &mut Revision, batch: Vec<Pending>) {
        let mut results = Vec::with_capacity(batch.len());
        let (started, writes) = (Instant::now(), batch.len());
        let outcome = self.apply_batch(*live, batch, &mut results);
        self.metrics.commit(writes, started.elapsed());
        match outcome {
            Ok(last) => {
                let mut events = Vec::new();
                for (_, result) in &results {
                    if let Ok((_, event)) = result {
                        events.push(event.clone());
                    }
                }
                self.hub.publish(events);
                *live = last;
                // Watches wake after the ring holds everything up to `last`.
                self.published.send_replace(last);
                for (slot, result) in results {
                    *lock(&slot) = Some(result.map(|(object, _)| object));
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
    /// new live revision and leaves each write's outcome (the stored object and its event) in
    /// `results`; on a backend failure returns the error and every slot of the batch (none
    /// committed).
    #[allow(clippy::type_complexity)]
    fn apply_batch(
        &self,
        live: Revision,
        batch: Vec<Pending>,
        results: &mut Vec<(Slot, Result<(Value, Arc<Event>)>)>,
    ) -> std::result::Result<Revision, (Error, Vec<Slot>)> {
        let slots: Vec<_> = batch.iter().map(|p| p.slot.clone()).collect();
        let fail = |e: Error| (e, slots.clone());
        let be = |e: redb::Error| fail(backend(e));
        let db = self.inner.db();
        let mut txn = db.begin_write().map_err(|e| be(e.into()))?;
        if !self.options.durable {
            txn.set_durability(Durability::None)
                .map_err(|e| fail(backend(e)))?;
        }
        let mut rev = live;
        {
            let mut objects = txn.open_table(OBJECTS).map_err(|e| be(e.into()))?;
            let mut events = txn.open_table(EVENTS).map_err(|e| be(e.into()))?;
            let mut event_objects = txn.open_table(EVENT_OBJECTS).map_err(|e| be(e.into()))?;
            let mut meta = txn.open_table(META).map_err(|e| be(e.into()))?;
            let mut log_bytes = meta_get(&meta, LOG_BYTES).map_err(fail)?;
            let mut live_bytes = meta_get(&meta, LIVE_BYTES).map_err(fail)?;
            for Pending { key, change, slot } in batch {
                let (current, current_len) =
                    match objects.get(key.as_str()).map_err(|e| be(e.into()))? {
                        Some(bytes) => match self.inner.object(&key, bytes.value()) {
                            Ok(v) => (Some(v), bytes.value().len()),
                            Err(e) => {
                                results.push((slot, Err(e)));
                                continue;
                            }
                        },
                        None => (None, 0),
                    };
                let prev = current.as_ref().map(|c| attrs(&key, c));
                let (kind, mut object) = match change(current, rev + 1) {
                    Ok(x) => x,
                    // Refused (conflict, exists, not found): this write only.
                    Err(e) => {
                        results.push((slot, Err(e)));
                        continue;
                    }
                };
                stamp(&mut object, rev + 1);
                let bytes = Bytes::from(serde_json::to_vec(&object).map_err(|e| fail(backend(e)))?);
                if bytes.len() > MAX_OBJECT_BYTES && kind != EventType::Deleted {
                    results.push((
                        slot,
                        Err(Error::TooLarge {
                            size: bytes.len(),
                            limit: MAX_OBJECT_BYTES,
                        }),
                    ));
                    continue;
                }
                // What goes to the file; the ring and the writer get the plaintext.
                let stored = match self.inner.encryption.seal(&key, &bytes) {
                    Ok(s) => s,
                    Err(e) => {
                        results.push((slot, Err(e)));
                        continue;
                    }
                };
                rev += 1;
                if current_len > 0 {
                    live_bytes = live_bytes.saturating_sub(footprint(key.len() + current_len));
                }
                match kind {
                    EventType::Deleted => {
                        objects.remove(key.as_str()).map_err(|e| be(e.into()))?;
                    }
                    _ => {
                        objects
                            .insert(key.as_str(), &stored[..])
                            .map_err(|e| be(e.into()))?;
                        live_bytes += footprint(key.len() + stored.len());
                    }
                }
                let header = Header {
                    kind,
                    attrs: attrs(&key, &object),
                    prev,
                };
                let inline = (stored.len() <= INLINE_OBJECT_MAX).then_some(&stored[..]);
                let entry = encode_entry(&key, &header, inline).map_err(fail)?;
                events
                    .insert(rev, entry.as_slice())
                    .map_err(|e| be(e.into()))?;
                let mut logged = footprint(entry.len());
                if inline.is_none() {
                    event_objects
                        .insert(rev, &stored[..])
                        .map_err(|e| be(e.into()))?;
                    logged += footprint(stored.len());
                }
                log_bytes += logged;
                live_bytes += logged;
                drop(stored);
                let event = Event {
                    rev,
                    kind,
                    key,
                    object: bytes,
                    attrs: header.attrs,
                    prev_attrs: header.prev,
                };
                results.push((slot, Ok((object, Arc::new(event)))));
            }
            if rev != live {
                meta.insert(REVISION, rev).map_err(|e| be(e.into()))?;
                let compacted = meta_get(&meta, COMPACTED).map_err(fail)?;
                // Trim in batches (a tenth of a bound past it) so the common write stays a
                // few inserts.
                let (h, hb) = (self.options.history, self.options.history_bytes);
                let over_count = rev - compacted > h + h / 10;
                let over_bytes = log_bytes > hb + hb / 10;
                if over_count || over_bytes {
                    let mut upto = compacted;
                    let mut freed = 0;
                    for entry in events.range(compacted + 1..).map_err(|e| be(e.into()))? {
                        let (r, head) = entry.map_err(|e| be(e.into()))?;
                        let r = r.value();
                        let left = rev - r;
                        if left <= h && log_bytes - freed <= hb - hb / 10 {
                            break;
                        }
                        freed += footprint(head.value().len());
                        if let Some(obj) = event_objects.get(r).map_err(|e| be(e.into()))? {
                            freed += footprint(obj.value().len());
                        }
                        upto = r;
                        // Never drop the newest event: a watch from just before it must work.
                        if left <= 1 {
                            break;
                        }
                    }
                    events
                        .retain_in(..=upto, |_, _| false)
                        .map_err(|e| be(e.into()))?;
                    event_objects
                        .retain_in(..=upto, |_, _| false)
                        .map_err(|e| be(e.into()))?;
                    meta.insert(COMPACTED, upto).map_err(|e| be(e.into()))?;
                    log_bytes -= freed;
                    live_bytes = live_bytes.saturating_sub(freed);
                }
                meta.insert(LOG_BYTES, log_bytes)
                    .map_err(|e| be(e.into()))?;
                meta.insert(LIVE_BYTES, live_bytes)
                    .map_err(|e| be(e.into()))?;
            }
        }
        if rev == live {
            // Every write of the batch was refused: nothing to commit.
            drop(txn);
            return Ok(live);
        }
        txn.commit().map_err(|e| be(e.into()))?;
        Ok(rev)
    }
}

/// The revision and object count of a snapshot file from [`RedbStore::backup`], opened read
/// only; an error if it is not one, or a copy cut short.
pub fn inspect(snapshot: &Path) -> Result<SnapshotInfo> {
    let db = redb::Builder::new()
        .set_cache_size(1 << 20)
        .open_read_only(snapshot)
        .map_err(backend)?;
    let txn = db.begin_read().map_err(backend)?;
    let revision = match txn.open_table(META) {
        Ok(meta) => meta_get(&meta, REVISION)?,
        Err(redb::TableError::TableDoesNotExist(_)) => 0,
        Err(e) => return Err(backend(e)),
    };
    if revision == 0 {
        return Err(Error::Backend(
            "not a snapshot of kedge's store: it records no revision (a copy cut short?)".into(),
        ));
    }
    let objects = txn
        .open_table(OBJECTS)
        .map_err(backend)?
        .len()
        .map_err(backend)?;
    Ok(SnapshotInfo { revision, objects })
}

/// What [`restore`] did.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Restored {
    /// The revision the snapshot was taken at: every restored object keeps its
    /// resourceVersion, at most this.
    pub snapshot: Revision,
    /// The store's revision after the restore: the next write gets the one after it.
    pub revision: Revision,
    pub objects: u64,
}

/// The file name the store had before a restore replaced it, kept beside it.
pub fn replaced_name(target: &Path) -> std::path::PathBuf {
    let secs = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map_or(0, |d| d.as_secs());
    let mut name = target.file_name().unwrap_or_default().to_os_string();
    name.push(format!(".before-restore-{secs}"));
    target.with_file_name(name)
}

/// Makes the snapshot file `snapshot` (from [`RedbStore::backup`]) the store at `target`,
/// which no process may have open (a running server is refused). The objects keep their
/// resourceVersions; the revision jumps by `bump` and history before it counts as compacted
/// (etcdutl's `--bump-revision --mark-compacted`), so a client that saw revisions written
/// after the snapshot never sees those numbers again for other changes: its watch gets 410
/// Gone and it relists. A store already at `target` is kept beside it (see
/// [`replaced_name`]), returned with the outcome.
pub fn restore(
    snapshot: &Path,
    target: &Path,
    bump: u64,
) -> Result<(Restored, Option<std::path::PathBuf>)> {
    let not_snapshot = |why: String| {
        Error::Backend(format!(
            "{} is not a snapshot of kedge's embedded store: {why}",
            snapshot.display()
        ))
    };
    // Refused while a server holds it (redb locks the file). A store that does not open
    // for another reason (corrupt: the reason to restore) is replaced all the same.
    if target.exists()
        && let Err(DatabaseError::DatabaseAlreadyOpen) =
            redb::Builder::new().set_cache_size(1 << 20).open(target)
    {
        return Err(Error::Backend(format!(
            "{} is in use: stop the kedge server using this data dir before restoring",
            target.display()
        )));
    }
    let dir = target.parent().unwrap_or(Path::new("."));
    crate::fsmode::private_dir(dir)
        .map_err(|e| Error::Backend(format!("{}: {e}", dir.display())))?;
    let mut staging = target.as_os_str().to_os_string();
    staging.push(".restoring");
    let staging = std::path::PathBuf::from(staging);
    let _ = std::fs::remove_file(&staging);
    crate::fsmode::private_file(&staging)
        .and_then(|()| {
            std::io::copy(
                &mut std::fs::File::open(snapshot)?,
                &mut std::fs::OpenOptions::new().write(true).open(&staging)?,
            )
        })
        .map_err(|e| Error::Backend(format!("copying {}: {e}", snapshot.display())))?;
    let outcome = (|| {
        let db = redb::Builder::new()
            .set_cache_size(4 << 20)
            .open(&staging)
            .map_err(|e| not_snapshot(e.to_string()))?;
        let txn = db.begin_write().map_err(backend)?;
        let restored = {
            let names: Vec<String> = txn
                .list_tables()
                .map_err(backend)?
                .map(|t| t.name().to_string())
                .collect();
            if !names.iter().any(|n| n == OBJECTS.name()) || !names.iter().any(|n| n == META.name())
            {
                return Err(not_snapshot("it has no objects or no revision".into()));
            }
            let mut meta = txn.open_table(META).map_err(backend)?;
            let rev = meta_get(&meta, REVISION)?;
            if rev == 0 {
                return Err(not_snapshot(
                    "it records no revision (a copy cut short?)".into(),
                ));
            }
            let objects = txn
                .open_table(OBJECTS)
                .map_err(backend)?
                .len()
                .map_err(backend)?;
            // No history crosses a restore.
            txn.delete_table(EVENTS).map_err(backend)?;
            txn.delete_table(EVENT_OBJECTS).map_err(backend)?;
            txn.open_table(EVENTS).map_err(backend)?;
            txn.open_table(EVENT_OBJECTS).map_err(backend)?;
            let live = meta_get(&meta, LIVE_BYTES)?.saturating_sub(meta_get(&meta, LOG_BYTES)?);
            let revision = rev.checked_add(bump).ok_or_else(|| {
                Error::Backend(format!("--bump-revision {bump} overflows revision {rev}"))
            })?;
            meta.insert(REVISION, revision).map_err(backend)?;
            meta.insert(COMPACTED, revision).map_err(backend)?;
            meta.insert(LOG_BYTES, 0).map_err(backend)?;
            meta.insert(LIVE_BYTES, live).map_err(backend)?;
            Restored {
                snapshot: rev,
                revision,
                objects,
            }
        };
        txn.commit().map_err(backend)?;
        Ok(restored)
    })();
    let restored = match outcome {
        Ok(r) => r,
        Err(e) => {
            let _ = std::fs::remove_file(&staging);
            return Err(e);
        }
    };
    let io = |what: &str, e: std::io::Error| Error::Backend(format!("{what}: {e}"));
    let kept = if target.exists() {
        let kept = replaced_name(target);
        std::fs::rename(target, &kept).map_err(|e| io("keeping the replaced store", e))?;
        Some(kept)
    } else {
        None
    };
    std::fs::rename(&staging, target).map_err(|e| io("installing the restored store", e))?;
    std::fs::File::open(dir)
        .and_then(|d| d.sync_all())
        .map_err(|e| io("syncing the data dir", e))?;
    Ok((restored, kept))
}

/// The room a key and value of `len` bytes take in the file, near enough: redb stores a value
/// larger than a page in a power-of-two run of 4 KiB pages (a 1.1 MB pod takes 2 MiB). The
/// log's byte bound and the compaction threshold count this, so they bound the file.
fn footprint(len: usize) -> u64 {
    const PAGE: usize = 4096;
    if len <= PAGE / 2 {
        (len + 16) as u64
    } else {
        (len.div_ceil(PAGE).next_power_of_two() * PAGE) as u64
    }
}

/// Compacts the file when it is more than twice what it holds plus 64 MiB (redb reuses freed
/// pages but never gives them back to the file system by itself).
fn compact_if_bloated(db: &mut Database, path: &Path) -> Result<bool> {
    let file = std::fs::metadata(path).map_err(backend)?.len();
    let live = {
        let txn = db.begin_read().map_err(backend)?;
        meta_get(&txn.open_table(META).map_err(backend)?, LIVE_BYTES)?
    };
    if file <= 2 * live + (64 << 20) {
        return Ok(false);
    }
    let start = Instant::now();
    loop {
        match db.compact() {
            Ok(true) => {}
            Ok(false) => break,
            // A snapshot (a watch's initial events) is still being read: next time.
            Err(e) => {
                tracing::debug!(error = %e, "store: compaction postponed");
                return Ok(false);
            }
        }
    }
    let after = std::fs::metadata(path).map_err(backend)?.len();
    tracing::info!(
        path = %path.display(),
        before_mb = file >> 20,
        after_mb = after >> 20,
        live_mb = live >> 20,
        ms = start.elapsed().as_millis() as u64,
        "store: compacted the file"
    );
    Ok(true)
}

impl Inner {
    /// The JSON of a value read from the file under `key` (opened if it was sealed).
    fn plain(&self, key: &str, stored: &[u8]) -> Result<Bytes> {
        Ok(match self.encryption.unseal(key, stored)? {
            std::borrow::Cow::Borrowed(b) => Bytes::copy_from_slice(b),
            std::borrow::Cow::Owned(v) => Bytes::from(v),
        })
    }

    /// The object a value read from the file under `key` holds.
    fn object(&self, key: &str, stored: &[u8]) -> Result<Value> {
        decode(key, &self.encryption.unseal(key, stored)?)
    }
}

impl LogReader for Inner {
    fn compacted(&self) -> Result<Revision> {
        let db = self.db();
        let txn = db.begin_read().map_err(backend)?;
        meta_get(&txn.open_table(META).map_err(backend)?, COMPACTED)
    }

    fn read_log(
        &self,
        from: Revision,
        prefix: &str,
        wanted: &dyn Fn(&Event) -> bool,
    ) -> Result<Chunk> {
        let db = self.db();
        let txn = db.begin_read().map_err(backend)?;
        let compacted = meta_get(&txn.open_table(META).map_err(backend)?, COMPACTED)?;
        if from < compacted {
            return Err(Error::Expired {
                requested: from,
                oldest: compacted + 1,
            });
        }
        let events = txn.open_table(EVENTS).map_err(backend)?;
        let objects = txn.open_table(EVENT_OBJECTS).map_err(backend)?;
        let mut chunk = Chunk {
            events: Vec::new(),
            scanned_to: from,
        };
        let mut bytes = 0;
        for entry in events.range(from + 1..).map_err(backend)?.take(CHUNK_SCAN) {
            if bytes >= CHUNK_BYTES {
                break;
            }
            let (rev, head) = entry.map_err(backend)?;
            let rev = rev.value();
            chunk.scanned_to = rev;
            let (key, rest, inline) = decode_entry(head.value())?;
            // The cheapest test first: most replays watch one kind, often one namespace.
            if !key.starts_with(prefix) {
                continue;
            }
            let mut event = Event {
                rev,
                kind: EventType::Added,
                key: key.to_string(),
                object: Bytes::new(),
                attrs: Value::Null,
                prev_attrs: None,
            };
            let h: Header = serde_json::from_slice(rest).map_err(|source| Error::Corrupt {
                key: format!("log {rev}"),
                source,
            })?;
            (event.kind, event.attrs, event.prev_attrs) = (h.kind, h.attrs, h.prev);
            if !wanted(&event) {
                continue;
            }
            let object = if inline.is_empty() {
                let Some(obj) = objects.get(rev).map_err(backend)? else {
                    return Err(Error::Backend(format!("watch log {rev} has no object")));
                };
                self.plain(key, obj.value())
            } else {
                self.plain(key, inline)
            };
            // Sealed with a key no longer configured (rotated out): history this store can
            // no longer read is history it no longer has; the watcher relists.
            event.object = object.map_err(|e| {
                tracing::debug!(rev, error = %e, "store: unreadable watch log entry");
                Error::Expired {
                    requested: from,
                    oldest: rev,
                }
            })?;
            bytes += event.object.len();
            chunk.events.push(Arc::new(event));
        }
        Ok(chunk)
    }
}

impl Store for RedbStore {
    fn save_snapshot(&self, out: &mut dyn std::io::Write) -> Result<SnapshotInfo> {
        /// The copy's file, removed whatever happens.
        struct Temp(std::path::PathBuf);
        impl Drop for Temp {
            fn drop(&mut self) {
                let _ = std::fs::remove_file(&self.0);
            }
        }
        static N: std::sync::atomic::AtomicU64 = std::sync::atomic::AtomicU64::new(0);
        let n = N.fetch_add(1, std::sync::atomic::Ordering::Relaxed);
        let mut name = self.inner.path.as_os_str().to_os_string();
        name.push(format!(".snapshot-{}-{n}", std::process::id()));
        let temp = Temp(name.into());
        let _ = std::fs::remove_file(&temp.0);
        let info = self.backup(&temp.0)?;
        let mut file = std::fs::File::open(&temp.0).map_err(backend)?;
        std::io::copy(&mut file, out).map_err(backend)?;
        out.flush().map_err(backend)?;
        Ok(info)
    }

    fn get(&self, key: &str) -> Result<Option<Value>> {
        let db = self.inner.db();
        let txn = db.begin_read().map_err(backend)?;
        let objects = txn.open_table(OBJECTS).map_err(backend)?;
        match objects.get(key).map_err(backend)? {
            Some(bytes) => Ok(Some(self.inner.object(key, bytes.value())?)),
            None => Ok(None),
        }
    }

    fn scan(
        &self,
        prefix: &str,
        after: Option<&str>,
        each: &mut dyn FnMut(&str, &[u8]) -> Result<bool>,
    ) -> Result<Revision> {
        let db = self.inner.db();
        let txn = db.begin_read().map_err(backend)?;
        let rev = meta_get(&txn.open_table(META).map_err(backend)?, REVISION)?;
        let objects = txn.open_table(OBJECTS).map_err(backend)?;
        let range = match after {
            Some(a) if a >= prefix => {
                objects.range::<&str>((std::ops::Bound::Excluded(a), std::ops::Bound::Unbounded))
            }
            _ => objects.range(prefix..),
        };
        for entry in range.map_err(backend)? {
            let (k, v) = entry.map_err(backend)?;
            if !k.value().starts_with(prefix) {
                break;
            }
            let plain = self.inner.encryption.unseal(k.value(), v.value())?;
            if !each(k.value(), &plain)? {
                break;
            }
        }
        Ok(rev)
    }

    fn snapshot(&self, prefix: &str) -> Result<Box<dyn Snapshot>> {
        let db = self.inner.db();
        let txn = db.begin_read().map_err(backend)?;
        let rev = meta_get(&txn.open_table(META).map_err(backend)?, REVISION)?;
        let held = Arc::new(HeldTxn {
            txn: Mutex::new(Some(txn)),
            opened: Instant::now(),
        });
        let mut open = lock(&self.snapshots);
        open.retain(|w| w.strong_count() > 0);
        open.push(Arc::downgrade(&held));
        Ok(Box::new(RedbSnapshot {
            held,
            inner: self.inner.clone(),
            prefix: prefix.to_string(),
            after: None,
            rev,
            done: false,
        }))
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
        Watch::new(
            prefix,
            from,
            self.published.subscribe(),
            self.hub.clone(),
            self.inner.clone(),
        )
    }

    fn revision(&self) -> Revision {
        *lock(&self.write_lock)
    }
}

/// A snapshot's read transaction, which the store ends when it has been open too long (see
/// [`RedbStore::end_old_snapshots`]).
struct HeldTxn {
    txn: Mutex<Option<redb::ReadTransaction>>,
    opened: Instant,
}

/// A read transaction: redb keeps the pages it sees until it ends.
struct RedbSnapshot {
    held: Arc<HeldTxn>,
    /// For opening sealed values.
    inner: Arc<Inner>,
    prefix: String,
    after: Option<String>,
    rev: Revision,
    done: bool,
}

impl Snapshot for RedbSnapshot {
    fn revision(&self) -> Revision {
        self.rev
    }

    fn next_chunk(&mut self) -> Result<Vec<(String, Bytes)>> {
        let mut out = Vec::new();
        if self.done {
            return Ok(out);
        }
        let txn = lock(&self.held.txn);
        // Ended by the store: the client took too long; it relists.
        let Some(txn) = txn.as_ref() else {
            return Err(Error::Expired {
                requested: self.rev,
                oldest: self.rev + 1,
            });
        };
        let objects = txn.open_table(OBJECTS).map_err(backend)?;
        let range = match &self.after {
            Some(a) => objects.range::<&str>((
                std::ops::Bound::Excluded(a.as_str()),
                std::ops::Bound::Unbounded,
            )),
            None => objects.range(self.prefix.as_str()..),
        };
        let mut bytes = 0;
        for entry in range.map_err(backend)? {
            let (k, v) = entry.map_err(backend)?;
            if !k.value().starts_with(&self.prefix) {
                self.done = true;
                break;
            }
            let plain = self.inner.plain(k.value(), v.value())?;
            bytes += plain.len();
            out.push((k.value().to_string(), plain));
            if bytes >= CHUNK_BYTES {
                break;
            }
        }
        match out.last() {
            Some((k, _)) => self.after = Some(k.clone()),
            None => self.done = true,
        }
        Ok(out)
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
                ..Options::default()
            },
        )
        .unwrap()
    }

    /// Every event the log holds after `from`, read chunk by chunk as a watch does.
    fn whole_log(store: &RedbStore, from: Revision) -> Vec<Arc<Event>> {
        let mut out = Vec::new();
        let mut at = from;
        loop {
            let c = store.inner.read_log(at, "", &|_| true).unwrap();
            if c.scanned_to == at {
                return out;
            }
            at = c.scanned_to;
            out.extend(c.events);
        }
    }

    /// backup → restore: objects keep their resourceVersions and bytes (sealed ones stay
    /// sealed), the revision jumps, history before it is compacted (410), a copy cut short
    /// and a store in use are refused, and the replaced store is kept.
    #[test]
    fn a_backup_restores_with_its_versions_and_a_bumped_revision() {
        let dir = tempfile::tempdir().unwrap();
        let text = r#"{"kind":"EncryptionConfiguration","apiVersion":"apiserver.config.k8s.io/v1","resources":[{"resources":["pods"],"providers":[{"aescbc":{"keys":[{"name":"k1","secret":"c2VjcmV0IGlzIHNlY3VyZSwgaXMgaXQ/IDMyIGJ5dGU="}]}}]}]}"#;
        let enc = Arc::new(Encryption::parse(text).unwrap());
        let options = || Options {
            encryption: enc.clone(),
            lock_wait: Duration::ZERO,
            ..Options::default()
        };
        let live = dir.path().join("live.redb");
        let store = RedbStore::open(&live, options()).unwrap();
        let a = store.create("core/pods/default/a", pod("a")).unwrap();
        store.create("core/pods/default/b", pod("b")).unwrap();
        let backup = dir.path().join("backup.redb");
        let info = store.backup(&backup).unwrap();
        assert_eq!(
            info,
            SnapshotInfo {
                revision: 2,
                objects: 2
            }
        );
        assert_eq!(inspect(&backup).unwrap(), info);
        // Sealed in the copy as in the store.
        let raw = std::fs::read(&backup).unwrap();
        assert!(!raw.windows(8).any(|w| w == b"\"kind\":\"P"));
        store.create("core/pods/default/c", pod("c")).unwrap();
        store.delete("core/pods/default/a", None).unwrap();

        // Not while the store is open.
        let refused = restore(&backup, &live, 1000).unwrap_err();
        assert!(refused.to_string().contains("in use"), "{refused}");
        drop(store);
        // A copy cut short is refused and changes nothing.
        let short = dir.path().join("short.redb");
        std::fs::write(&short, &raw[..raw.len() / 2]).unwrap();
        assert!(restore(&short, &live, 1000).is_err());
        assert!(inspect(&short).is_err());

        let (r, kept) = restore(&backup, &live, 1000).unwrap();
        assert_eq!(
            r,
            Restored {
                snapshot: 2,
                revision: 1002,
                objects: 2
            }
        );
        assert!(kept.unwrap().exists());
        let store = RedbStore::open(&live, options()).unwrap();
        assert_eq!(store.get("core/pods/default/a").unwrap().unwrap(), a);
        assert!(store.get("core/pods/default/c").unwrap().is_none());
        assert_eq!(store.revision(), 1002);
        let next = store.create("core/pods/default/d", pod("d")).unwrap();
        assert_eq!(super::super::revision_of(&next), Some(1003));
        assert!(matches!(store.watch("", 3), Err(Error::Expired { .. })));
        assert!(store.watch("", 1003).is_ok());
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
        let log = whole_log(&store, 0);
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
        assert_eq!(crate::revision_of(&a), Some(1));
        assert_eq!(crate::revision_of(&b), Some(2));
        assert_eq!(store.revision(), 2);
        let (items, rev) = store.list("core/pods/default/").unwrap();
        assert_eq!(items.len(), 2);
        assert_eq!(rev, 2);
        // A prefix must not match a longer namespace name.
        store.create("core/pods/default2/c", pod("c")).unwrap();
        assert_eq!(store.list("core/pods/default/").unwrap().0.len(), 2);
        // A scan resumes after a key and stops when told.
        let mut seen = Vec::new();
        store
            .scan("core/pods/", Some("core/pods/default/a"), &mut |k, _| {
                seen.push(k.to_string());
                Ok(seen.is_empty())
            })
            .unwrap();
        assert_eq!(seen, ["core/pods/default/b"]);
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
        assert_eq!(crate::revision_of(&e.value().unwrap()), Some(7));
        assert!(e.prev_attrs.is_some());
        assert_eq!(w.revision(), 7);
    }

    #[tokio::test]
    async fn compacted_history_is_expired() {
        let dir = tempfile::tempdir().unwrap();
        let store = open(dir.path(), 10);
        for i in 0..40 {
            store.create(&format!("k/{i}"), pod("p")).unwrap();
        }
        // Out of the ring too, so the log decides.
        drop(store);
        let store = open(dir.path(), 10);
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
        assert_eq!(crate::revision_of(&next), Some(4));
    }

    #[tokio::test]
    async fn lagging_watcher_catches_up_from_the_log() {
        let dir = tempfile::tempdir().unwrap();
        let store = RedbStore::open(
            &dir.path().join("s"),
            Options {
                history: 100_000,
                ring: RingLimits {
                    events: 100,
                    bytes: 1 << 20,
                },
                ..Options::default()
            },
        )
        .unwrap();
        let mut w = store.watch("k/", 0).unwrap();
        // Far more than the ring holds.
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

    /// Regression (hardening issue, finding 1): a replay from an old revision must not
    /// materialise history the watcher does not want. Objects are loaded only for events under
    /// the watch's prefix that its filter accepts, and one read hands out a bounded chunk.
    #[test]
    fn replay_loads_only_wanted_objects_in_bounded_chunks() {
        let dir = tempfile::tempdir().unwrap();
        let store = open(dir.path(), 100_000);
        let big = "x".repeat(100 << 10);
        for i in 0..40 {
            let mut cm = pod(&format!("big{i}"));
            cm["data"] = json!({"k": big});
            store
                .create(&format!("core/configmaps/busy/big{i}"), cm)
                .unwrap();
        }
        for i in 0..3 {
            let mut p = pod(&format!("p{i}"));
            p["metadata"]["labels"] = json!({"app": if i == 1 { "web" } else { "db" }});
            store.create(&format!("core/pods/default/p{i}"), p).unwrap();
        }
        // Another namespace: nothing loaded, however much history lies there.
        let c = store
            .inner
            .read_log(0, "core/configmaps/quiet/", &|_| true)
            .unwrap();
        assert!(c.events.is_empty());
        assert_eq!(c.scanned_to, 43);
        // A selector: only its match is loaded.
        let web = |e: &Event| e.attrs.pointer("/metadata/labels/app") == Some(&json!("web"));
        let c = store.inner.read_log(0, "core/pods/", &web).unwrap();
        assert_eq!(c.events.len(), 1);
        assert_eq!(c.events[0].key, "core/pods/default/p1");
        // The big ones arrive a bounded chunk at a time.
        let c = store
            .inner
            .read_log(0, "core/configmaps/busy/", &|_| true)
            .unwrap();
        let bytes: usize = c.events.iter().map(|e| e.object.len()).sum();
        assert!(
            c.events.len() < 40 && bytes < CHUNK_BYTES + (101 << 10),
            "{bytes}"
        );
        assert_eq!(c.scanned_to, c.events.last().unwrap().rev);
    }

    /// Regression (hardening issue, finding 1): a watch from an old revision collected every
    /// logged event after it into memory before sending the first. It holds one bounded
    /// chunk now, and reaches live events all the same.
    #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
    async fn a_watch_from_an_old_revision_holds_one_chunk_at_a_time() {
        let dir = tempfile::tempdir().unwrap();
        let store = RedbStore::open(
            &dir.path().join("s"),
            Options {
                durable: false,
                ring: RingLimits {
                    events: 10,
                    bytes: 1 << 20,
                },
                ..Options::default()
            },
        )
        .unwrap();
        let big = "x".repeat(100 << 10);
        for i in 0..100 {
            let mut cm = pod(&format!("c{i}"));
            cm["data"] = json!({"k": big});
            store
                .create(&format!("core/configmaps/ns/c{i}"), cm)
                .unwrap();
        }
        let mut w = store.watch("core/configmaps/", 0).unwrap();
        let mut seen = 0;
        let mut most = 0;
        while seen < 100 {
            w.next().await.unwrap().unwrap();
            seen += 1;
            let held: usize = w.pending.iter().map(|e| e.object.len()).sum();
            most = most.max(held);
        }
        assert!(most <= CHUNK_BYTES + (101 << 10), "held {most} bytes");
        store
            .create("core/configmaps/ns/live", pod("live"))
            .unwrap();
        assert_eq!(w.next().await.unwrap().unwrap().rev, 101);
    }

    /// Regression (hardening issue, finding 4): the log is bounded in bytes as well as events,
    /// and keeps no whole previous versions, so status writes of one big object leave the
    /// file near the size of what it holds.
    #[test]
    fn big_status_writes_stay_within_the_log_byte_bound() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("s");
        let store = RedbStore::open(
            &path,
            Options {
                history_bytes: 4 << 20,
                durable: false,
                ..Options::default()
            },
        )
        .unwrap();
        let mut p = pod("big");
        p["spec"] = json!({"containers": (0..1000).map(|i| json!({"name": format!("c{i}"), "image": "busybox", "args": vec!["x"; 20]})).collect::<Vec<_>>()});
        store.create("core/pods/default/big", p.clone()).unwrap();
        for i in 0..200 {
            p["status"] = json!({"phase": "Running", "n": i});
            store
                .update("core/pods/default/big", p.clone(), None)
                .unwrap();
        }
        let size = serde_json::to_vec(&p).unwrap().len() as u64;
        let log = whole_log(&store, store.inner.compacted().unwrap());
        let logged: u64 = log.iter().map(|e| e.object.len() as u64).sum();
        assert!(logged <= (4 << 20) + size, "log holds {logged} bytes");
        assert!(log.len() < 200);
        let live = store.live_bytes().unwrap();
        assert!(live < (5 << 20) + 2 * size, "live {live}");
        // The file: bounded by what it holds, compacted when it is not.
        store.maintain().unwrap();
        let file = std::fs::metadata(&path).unwrap().len();
        assert!(file <= 2 * live + (64 << 20), "file {file}, live {live}");
        // The newest history still replays, objects intact.
        let last = log.last().unwrap();
        assert_eq!(last.value().unwrap()["status"]["n"], 199);
    }

    /// Regression (hardening issue, finding 4): objects beyond etcd's 1.5 MiB are refused
    /// (and change nothing), as Kubernetes refuses them in effect.
    #[test]
    fn oversized_objects_are_refused() {
        let dir = tempfile::tempdir().unwrap();
        let store = open(dir.path(), 100);
        let mut p = pod("a");
        p["data"] = json!({"k": "x".repeat(MAX_OBJECT_BYTES)});
        assert!(matches!(
            store.create("k/a", p.clone()),
            Err(Error::TooLarge { .. })
        ));
        store.create("k/b", pod("b")).unwrap();
        assert!(matches!(
            store.update("k/b", p, None),
            Err(Error::TooLarge { .. })
        ));
        assert_eq!(store.revision(), 1);
        assert!(store.get("k/a").unwrap().is_none());
    }

    /// A data dir of a kedge from before the split log: its log is dropped, objects kept,
    /// and a watch from before the upgrade is told to relist.
    #[test]
    fn an_old_log_is_dropped_at_open() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("s");
        {
            let db = Database::create(&path).unwrap();
            let txn = db.begin_write().unwrap();
            {
                let mut objects = txn.open_table(OBJECTS).unwrap();
                let v = serde_json::to_vec(&pod("a")).unwrap();
                objects.insert("k/a", v.as_slice()).unwrap();
                let mut log = txn.open_table(OLD_LOG).unwrap();
                log.insert(5, b"{}".as_slice()).unwrap();
                let mut meta = txn.open_table(META).unwrap();
                meta.insert(REVISION, 5).unwrap();
            }
            txn.commit().unwrap();
        }
        let store = RedbStore::open(&path, Options::default()).unwrap();
        assert!(store.get("k/a").unwrap().is_some());
        assert_eq!(store.revision(), 5);
        assert!(matches!(store.watch("k/", 3), Err(Error::Expired { .. })));
        assert!(store.watch("k/", 5).is_ok());
        assert!(store.live_bytes().unwrap() > 0);
    }

    /// Regression (hardening issue, finding 6): opening a store another handle still holds
    /// waits for it instead of failing at once, and says so clearly when it gives up.
    #[test]
    fn open_waits_for_the_lock() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("s");
        let first = RedbStore::open(&path, Options::default()).unwrap();
        let opts = |ms| Options {
            lock_wait: Duration::from_millis(ms),
            ..Options::default()
        };
        let err = RedbStore::open(&path, opts(300)).err().expect("locked");
        assert!(
            err.to_string().contains("in use by another process"),
            "{err}"
        );
        let releaser = std::thread::spawn(move || {
            std::thread::sleep(Duration::from_millis(300));
            drop(first);
        });
        let second = RedbStore::open(&path, opts(10_000));
        releaser.join().unwrap();
        assert!(second.is_ok());
    }

    /// A snapshot nobody finishes reading is ended by the store after a while (it would pin
    /// the file's pages); reading it on then says Expired.
    #[test]
    fn old_snapshots_are_ended() {
        let dir = tempfile::tempdir().unwrap();
        let store = open(dir.path(), 100);
        for i in 0..3 {
            store.create(&format!("k/{i}"), pod("p")).unwrap();
        }
        let mut fresh = store.snapshot("k/").unwrap();
        let mut old = store.snapshot("k/").unwrap();
        assert_eq!(store.end_old_snapshots(Duration::from_secs(60)), 0);
        std::thread::sleep(Duration::from_millis(20));
        let mut young = store.snapshot("k/").unwrap();
        assert_eq!(store.end_old_snapshots(Duration::from_millis(10)), 2);
        assert!(matches!(old.next_chunk(), Err(Error::Expired { .. })));
        assert!(matches!(fresh.next_chunk(), Err(Error::Expired { .. })));
        assert_eq!(young.next_chunk().unwrap().len(), 3);
        drop(young);
        assert_eq!(store.end_old_snapshots(Duration::ZERO), 0);
    }

    #[test]
    fn the_file_is_private() {
        use std::os::unix::fs::PermissionsExt;
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("s");
        drop(RedbStore::open(&path, Options::default()).unwrap());
        let mode = |p: &Path| std::fs::metadata(p).unwrap().permissions().mode() & 0o777;
        assert_eq!(mode(&path), 0o600);
        std::fs::set_permissions(&path, std::fs::Permissions::from_mode(0o644)).unwrap();
        drop(RedbStore::open(&path, Options::default()).unwrap());
        assert_eq!(mode(&path), 0o600);
    }
}
