//! The object store: every API object, a global revision counter and a bounded watch log.
//!
//! `resourceVersion` is the store revision at which an object last changed. One global,
//! strictly increasing counter orders every write, so a watch from revision N is "every event
//! after N", in order, across kinds — what clients expect from etcd-backed Kubernetes.
//!
//! The [`Store`] trait is what the API and plugins see; [`redb::RedbStore`] is the embedded
//! default, [`etcd::EtcdStore`] the backend for a control plane on etcd.
//!
//! Memory: watchers never buffer. Recent events live once, in a shared ring bounded in count
//! and bytes ([`Hub`]); each [`Watch`] is a cursor into it that reads at its own pace, and a
//! watcher the ring has left behind reads the on-disk log a bounded chunk at a time, deciding
//! from each entry's key and selectable attributes whether to load the object at all. A
//! watcher the log has left behind gets [`Error::Expired`] (410), as after an etcd compaction.

#[cfg(test)]
mod conformance;
pub mod encryption;
pub mod etcd;
pub mod fsmode;
pub mod informer;
pub mod metrics;
pub mod redb;

use std::collections::VecDeque;
use std::sync::{Arc, Mutex, MutexGuard};

use bytes::Bytes;
use serde_json::{Map, Value};
use tokio::sync::watch;

/// A store revision (the `resourceVersion` of Kubernetes).
pub type Revision = u64;

#[derive(Debug, thiserror::Error)]
pub enum Error {
    #[error("not found")]
    NotFound,
    #[error("already exists")]
    AlreadyExists,
    #[error("the object has been modified (current revision {current})")]
    Conflict { current: Revision },
    #[error("too old resource version: {requested} ({oldest})")]
    Expired {
        requested: Revision,
        oldest: Revision,
    },
    #[error(
        "the object is too large to store: {size} bytes, at most {limit} (the limit etcd sets for Kubernetes)"
    )]
    TooLarge { size: usize, limit: usize },
    #[error("store backend: {0}")]
    Backend(String),
    #[error("corrupt record under {key}: {source}")]
    Corrupt {
        key: String,
        #[source]
        source: serde_json::Error,
    },
}

pub type Result<T, E = Error> = std::result::Result<T, E>;

#[derive(Clone, Copy, Debug, PartialEq, Eq, serde::Serialize, serde::Deserialize)]
pub enum EventType {
    #[serde(rename = "ADDED")]
    Added,
    #[serde(rename = "MODIFIED")]
    Modified,
    #[serde(rename = "DELETED")]
    Deleted,
}

impl EventType {
    pub fn as_str(self) -> &'static str {
        match self {
            EventType::Added => "ADDED",
            EventType::Modified => "MODIFIED",
            EventType::Deleted => "DELETED",
        }
    }
}

/// One change, as watchers receive it.
///
/// The object travels as the stored JSON, not as a parsed tree: a watch relaying it to a
/// client copies the bytes, and whoever needs the tree parses it ([`Event::value`]). What
/// selectors look at is kept parsed beside it, for the object and for the version it replaced
/// ([`attrs`]), so filtering a watch never needs the object itself.
#[derive(Clone, Debug)]
pub struct Event {
    pub rev: Revision,
    pub kind: EventType,
    pub key: String,
    /// The object after the change, as stored (for deletes: its last state, stamped with the
    /// deletion revision, as Kubernetes does).
    pub object: Bytes,
    /// The selectable attributes of `object` (see [`attrs`]).
    pub attrs: Value,
    /// Those of the version the change replaced, so watchers with selectors can turn a change
    /// that makes an object (stop) match into ADDED (DELETED).
    pub prev_attrs: Option<Value>,
}

impl Event {
    /// The object as a JSON tree.
    pub fn value(&self) -> Result<Value> {
        decode(&self.key, &self.object)
    }

    /// What this event weighs in memory, near enough to bound a cache by.
    fn weight(&self) -> usize {
        // The attributes are small maps; count them at a flat rate per entry.
        let entries = |v: &Value| v.as_object().map_or(0, Map::len);
        self.object.len()
            + self.key.len()
            + 64 * (entries(&self.attrs) + self.prev_attrs.as_ref().map_or(0, entries))
            + 128
    }
}

/// What label and field selectors can look at in an object stored under `key`: its name,
/// namespace and labels, and the fields its resource allows in `fieldSelector`, at the paths
/// they have in the object (so the selectors' matchers work on it unchanged). Everything else
/// is left out: this is kept for every logged event.
pub fn attrs(key: &str, object: &Value) -> Value {
    let mut out = Map::new();
    let mut meta = Map::new();
    if let Some(m) = object.get("metadata") {
        for k in ["name", "namespace", "labels"] {
            if let Some(v) = m.get(k) {
                meta.insert(k.to_string(), v.clone());
            }
        }
    }
    out.insert("metadata".into(), Value::Object(meta));
    let mut parts = key.splitn(3, '/');
    let (group, plural) = (parts.next().unwrap_or(""), parts.next().unwrap_or(""));
    let group = if group == "core" { "" } else { group };
    let fields = kedge_core::resources::RESOURCES
        .iter()
        .find(|r| r.group == group && r.plural == plural)
        .map_or(&[][..], |r| r.field_selectors);
    for field in fields {
        let path: Vec<&str> = field.split('.').collect();
        copy_path(object, &mut out, &path);
    }
    Value::Object(out)
}

/// Copies the value at `path` in `src` to the same path in `dst`, if there is one.
fn copy_path(src: &Value, dst: &mut Map<String, Value>, path: &[&str]) {
    let Some((first, rest)) = path.split_first() else {
        return;
    };
    let Some(v) = src.get(*first) else {
        return;
    };
    if rest.is_empty() {
        dst.insert(first.to_string(), v.clone());
        return;
    }
    if rest.iter().try_fold(v, |v, k| v.get(*k)).is_none() {
        return;
    }
    let slot = dst
        .entry(first.to_string())
        .or_insert_with(|| Value::Object(Map::new()));
    if let Some(m) = slot.as_object_mut() {
        copy_path(v, m, rest);
    }
}

/// The storage contract. Keys are `group/resource/namespace/name` (see [`key`]); values are
/// objects in wire-format JSON whose `metadata.resourceVersion` the store maintains.
pub trait Store: Send + Sync + 'static {
    fn get(&self, key: &str) -> Result<Option<Value>>;
    /// Calls `each` with the key and stored JSON of every object under `prefix` whose key is
    /// after `after` (if given), in key order, until it returns false; returns the revision
    /// the scan is consistent at. Nothing is parsed or collected: a list of any size costs
    /// the memory its caller keeps.
    fn scan(
        &self,
        prefix: &str,
        after: Option<&str>,
        each: &mut dyn FnMut(&str, &[u8]) -> Result<bool>,
    ) -> Result<Revision>;
    /// A consistent view of every object under `prefix` at the current revision, read a
    /// bounded chunk at a time (a watch's initial events): whatever is written meanwhile
    /// does not show. Hold it briefly; the backend keeps that version of the data meanwhile.
    fn snapshot(&self, prefix: &str) -> Result<Box<dyn Snapshot>>;
    /// Every object under `prefix` and the revision the list is consistent at.
    fn list(&self, prefix: &str) -> Result<(Vec<Value>, Revision)> {
        let mut out = Vec::new();
        let rev = self.scan(prefix, None, &mut |key, bytes| {
            out.push(decode(key, bytes)?);
            Ok(true)
        })?;
        Ok((out, rev))
    }
    fn create(&self, key: &str, object: Value) -> Result<Value>;
    /// Replace an existing object; with `expected`, only if it is still at that revision.
    fn update(&self, key: &str, object: Value, expected: Option<Revision>) -> Result<Value>;
    fn delete(&self, key: &str, expected: Option<Revision>) -> Result<Value>;
    /// Events under `prefix` with a revision greater than `from`.
    fn watch(&self, prefix: &str, from: Revision) -> Result<Watch>;
    fn revision(&self) -> Revision;
    /// Writes a consistent copy of the whole store to `out`, in the backend's own format: a
    /// redb file the embedded store opens as it is ([`redb::restore`]), or etcd's snapshot
    /// (what `etcdctl snapshot restore` takes). `kedge snapshot save`.
    fn save_snapshot(&self, out: &mut dyn std::io::Write) -> Result<SnapshotInfo>;
}

/// What [`Store::save_snapshot`] wrote.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct SnapshotInfo {
    /// The revision the copy is consistent at.
    pub revision: Revision,
    /// Objects in it (for etcd: kedge's keys when the copy began).
    pub objects: u64,
}

/// See [`Store::snapshot`].
pub trait Snapshot: Send {
    /// The revision the view is consistent at.
    fn revision(&self) -> Revision;
    /// The next objects (key and stored JSON) in key order, at most [`CHUNK_BYTES`] of them
    /// unless one alone is bigger; empty at the end.
    fn next_chunk(&mut self) -> Result<Vec<(String, Bytes)>>;
}

/// The largest object (stored JSON) a store keeps: etcd's default request limit, which is
/// what bounds a Kubernetes object in effect.
pub const MAX_OBJECT_BYTES: usize = 1536 * 1024;

/// Builds a store key. `group` is "" for the core group.
pub fn key(group: &str, resource: &str, namespace: &str, name: &str) -> String {
    format!("{}/{resource}/{namespace}/{name}", group_segment(group))
}

/// The prefix of every object of a resource, in one namespace or (empty) all of them.
pub fn prefix(group: &str, resource: &str, namespace: &str) -> String {
    if namespace.is_empty() {
        format!("{}/{resource}/", group_segment(group))
    } else {
        format!("{}/{resource}/{namespace}/", group_segment(group))
    }
}

fn group_segment(group: &str) -> &str {
    if group.is_empty() { "core" } else { group }
}

pub fn decode(key: &str, bytes: &[u8]) -> Result<Value> {
    serde_json::from_slice(bytes).map_err(|source| Error::Corrupt {
        key: key.to_string(),
        source,
    })
}

/// Decides from an event's key, type and attributes (its `object` may still be empty) whether
/// a watcher wants it.
pub(crate) type Filter = Box<dyn Fn(&Event) -> bool + Send + Sync>;

/// How much one read of the log or the ring hands a watcher at most. Bounds what a watcher
/// holds between its client's reads; one event bigger than this still goes alone.
pub(crate) const CHUNK_BYTES: usize = 256 * 1024;
/// Log entries one disk read looks at, matching or not (a read transaction stays short).
const CHUNK_SCAN: usize = 1024;

/// One chunk of history read for a watcher.
pub(crate) struct Chunk {
    /// The matching events, in revision order, objects loaded.
    pub events: Vec<Arc<Event>>,
    /// The last revision looked at, matching or not.
    pub scanned_to: Revision,
}

/// Reads the history a backend keeps on disk.
pub(crate) trait LogReader: Send + Sync + 'static {
    /// Logged events after `from` under `prefix` that `wanted` accepts from their key, type
    /// and attributes (at most [`CHUNK_SCAN`] events looked at, the matching ones' objects at
    /// most [`CHUNK_BYTES`] unless one alone is bigger), in order. Objects are loaded only for
    /// accepted events, headers only for keys under `prefix`. [`Error::Expired`] when the log
    /// no longer reaches back to `from`.
    fn read_log(
        &self,
        from: Revision,
        prefix: &str,
        wanted: &dyn Fn(&Event) -> bool,
    ) -> Result<Chunk>;
    /// The newest revision the log no longer holds (watches must start at or after it).
    fn compacted(&self) -> Result<Revision>;
}

/// Limits of the in-memory ring of recent events.
#[derive(Clone, Copy, Debug)]
pub struct RingLimits {
    pub events: usize,
    /// Bytes of stored JSON (plus a little per event) the ring holds at most.
    pub bytes: usize,
}

impl Default for RingLimits {
    fn default() -> Self {
        RingLimits {
            events: 4096,
            bytes: 16 << 20,
        }
    }
}

struct Ring {
    events: VecDeque<Arc<Event>>,
    bytes: usize,
    /// The revision before the oldest event held: the ring serves watchers at or after it.
    start: Revision,
}

/// Recent events, shared by every watch of a store: the live half of the watch path. Backends
/// publish committed events here in revision order.
pub(crate) struct Hub {
    ring: Mutex<Ring>,
    limits: RingLimits,
}

impl Hub {
    pub(crate) fn new(rev: Revision, limits: RingLimits) -> Self {
        Hub {
            ring: Mutex::new(Ring {
                events: VecDeque::new(),
                bytes: 0,
                start: rev,
            }),
            limits,
        }
    }

    fn lock(&self) -> MutexGuard<'_, Ring> {
        self.ring.lock().unwrap_or_else(|p| p.into_inner())
    }

    /// The revision before the oldest event held.
    fn start(&self) -> Revision {
        self.lock().start
    }

    /// Adds committed events (in revision order, following what the ring holds), dropping the
    /// oldest beyond the limits.
    pub(crate) fn publish(&self, events: impl IntoIterator<Item = Arc<Event>>) {
        let mut ring = self.lock();
        for e in events {
            ring.bytes += e.weight();
            ring.events.push_back(e);
        }
        while ring.events.len() > self.limits.events
            || (ring.bytes > self.limits.bytes && ring.events.len() > 1)
        {
            let Some(old) = ring.events.pop_front() else {
                break;
            };
            ring.bytes -= old.weight();
            ring.start = old.rev;
        }
    }

    /// Forgets every event held: the ring serves watchers from `rev` on only (a backend that
    /// lost track of its history sends older watchers to its log, which expires them).
    pub(crate) fn reset(&self, rev: Revision) {
        let mut ring = self.lock();
        ring.events.clear();
        ring.bytes = 0;
        ring.start = rev;
    }

    /// The events after `from` under `prefix` the ring holds that `wanted` accepts, at most
    /// [`CHUNK_BYTES`] of them (at least one); `None` when the ring starts after `from` (read
    /// the log).
    fn read(&self, from: Revision, prefix: &str, wanted: &dyn Fn(&Event) -> bool) -> Option<Chunk> {
        let ring = self.lock();
        if from < ring.start {
            return None;
        }
        // Revisions in the ring increase, with gaps on etcd (writes under other prefixes).
        let skip = ring.events.partition_point(|e| e.rev <= from);
        let mut chunk = Chunk {
            events: Vec::new(),
            scanned_to: from,
        };
        let mut bytes = 0;
        for e in ring.events.iter().skip(skip) {
            if bytes >= CHUNK_BYTES {
                break;
            }
            chunk.scanned_to = e.rev;
            if e.key.starts_with(prefix) && wanted(e) {
                bytes += e.object.len();
                chunk.events.push(e.clone());
            }
        }
        Some(chunk)
    }
}

/// A stream of events in revision order: first the history after the start revision, then
/// live events, read from the shared ring and, for a watcher it has left behind, from the
/// log. A watcher the log has left behind gets [`Error::Expired`], like after an etcd
/// compaction, and clients relist.
pub struct Watch {
    prefix: String,
    filter: Option<Filter>,
    last: Revision,
    pending: VecDeque<Arc<Event>>,
    published: watch::Receiver<Revision>,
    hub: Arc<Hub>,
    log: Arc<dyn LogReader>,
}

impl Watch {
    pub(crate) fn new(
        prefix: &str,
        from: Revision,
        published: watch::Receiver<Revision>,
        hub: Arc<Hub>,
        log: Arc<dyn LogReader>,
    ) -> Result<Self> {
        let w = Watch {
            prefix: prefix.to_string(),
            filter: None,
            last: from,
            pending: VecDeque::new(),
            published,
            hub,
            log,
        };
        // A start the log no longer reaches is refused now, not at the first event.
        if from < w.hub.start() {
            let compacted = w.log.compacted()?;
            if from < compacted {
                return Err(Error::Expired {
                    requested: from,
                    oldest: compacted + 1,
                });
            }
        }
        Ok(w)
    }

    /// Only events `filter` accepts (from the key, type and attributes) are delivered; the
    /// others' objects are never loaded.
    pub fn with_filter(mut self, filter: Filter) -> Self {
        self.filter = Some(filter);
        self
    }

    fn wanted(&self, e: &Event) -> bool {
        self.filter.as_ref().is_none_or(|f| f(e))
    }

    /// The next matching event; `None` when the store shuts down.
    pub async fn next(&mut self) -> Option<Result<Arc<Event>>> {
        loop {
            if let Some(e) = self.pending.pop_front() {
                return Some(Ok(e));
            }
            let latest = *self.published.borrow_and_update();
            if latest <= self.last {
                // Anything published after the borrow above wakes this at once.
                if self.published.changed().await.is_err() {
                    return None;
                }
                continue;
            }
            let wanted = |e: &Event| self.wanted(e);
            let chunk = match self.hub.read(self.last, &self.prefix, &wanted) {
                Some(chunk) => chunk,
                None => {
                    // Disk reads and parsing off the async workers.
                    match blocking(|| self.log.read_log(self.last, &self.prefix, &wanted)) {
                        Ok(chunk) => chunk,
                        Err(e) => return Some(Err(e)),
                    }
                }
            };
            self.last = self.last.max(chunk.scanned_to);
            self.pending.extend(chunk.events);
        }
    }

    /// The last revision this watch has passed (matching or not).
    pub fn revision(&self) -> Revision {
        self.last
    }
}

/// Runs blocking work without stalling the runtime's other tasks (on a multi-threaded
/// runtime; elsewhere it simply runs).
pub fn blocking<T>(f: impl FnOnce() -> T) -> T {
    let multi_thread = tokio::runtime::Handle::try_current()
        .is_ok_and(|h| h.runtime_flavor() == tokio::runtime::RuntimeFlavor::MultiThread);
    if multi_thread {
        tokio::task::block_in_place(f)
    } else {
        f()
    }
}

/// Sets `metadata.resourceVersion` on a wire object.
pub(crate) fn stamp(object: &mut Value, rev: Revision) {
    if let Some(meta) = object.get_mut("metadata").and_then(Value::as_object_mut) {
        meta.insert("resourceVersion".into(), Value::String(rev.to_string()));
    }
}

/// The revision stored in `metadata.resourceVersion`, if any.
pub fn revision_of(object: &Value) -> Option<Revision> {
    object
        .pointer("/metadata/resourceVersion")
        .and_then(Value::as_str)
        .and_then(|s| s.parse().ok())
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    #[test]
    fn attrs_keep_what_selectors_read_and_nothing_else() {
        let pod = json!({"apiVersion": "v1", "kind": "Pod",
            "metadata": {"name": "p", "namespace": "ns", "labels": {"app": "web"},
                "annotations": {"big": "x"}, "uid": "u"},
            "spec": {"nodeName": "n1", "containers": [{"name": "c"}], "restartPolicy": "Always"},
            "status": {"phase": "Running", "podIP": "10.0.0.1"}});
        let a = attrs("core/pods/ns/p", &pod);
        assert_eq!(
            a,
            json!({"metadata": {"name": "p", "namespace": "ns", "labels": {"app": "web"}},
                "spec": {"nodeName": "n1"},
                "status": {"phase": "Running", "podIP": "10.0.0.1"}})
        );
        // Unknown resources keep metadata only; absent fields stay absent.
        let a = attrs("x/things/ns/t", &pod);
        assert_eq!(a.as_object().unwrap().len(), 1);
        let a = attrs("core/pods/ns/p", &json!({"metadata": {"name": "p"}}));
        assert_eq!(a, json!({"metadata": {"name": "p"}}));
    }

    fn event(rev: Revision, size: usize) -> Arc<Event> {
        Arc::new(Event {
            rev,
            kind: EventType::Added,
            key: format!("k/{rev}"),
            object: Bytes::from(vec![b' '; size]),
            attrs: json!({}),
            prev_attrs: None,
        })
    }

    #[test]
    fn the_ring_is_bounded_in_count_and_bytes_and_says_what_it_no_longer_has() {
        let hub = Hub::new(
            0,
            RingLimits {
                events: 10,
                bytes: 1 << 20,
            },
        );
        hub.publish((1..=25).map(|r| event(r, 10)));
        let all = |_: &Event| true;
        assert!(hub.read(14, "", &all).is_none(), "15 was dropped by count");
        let c = hub.read(15, "", &all).unwrap();
        assert_eq!(c.events.first().map(|e| e.rev), Some(16));
        assert_eq!(c.scanned_to, 25);
        // Big events push out old ones by bytes, but the newest always stays.
        hub.publish([event(26, 600 << 10), event(27, 600 << 10)]);
        assert!(hub.read(25, "", &all).is_none());
        let c = hub.read(26, "", &all).unwrap();
        assert_eq!(c.events.len(), 1);
        // One read hands out at most CHUNK_BYTES (but at least one event).
        let hub = Hub::new(0, RingLimits::default());
        hub.publish((1..=10).map(|r| event(r, 100 << 10)));
        let c = hub.read(0, "", &all).unwrap();
        assert_eq!((c.events.len(), c.scanned_to), (3, 3));
        // Filtered-out events advance the cursor without being handed out.
        let c = hub.read(0, "k/", &|e: &Event| e.rev == 7).unwrap();
        assert_eq!((c.events.len(), c.scanned_to), (1, 10));
    }
}
