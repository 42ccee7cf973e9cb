//! The object store: every API object, a global revision counter and a bounded watch log.
//!
//! `resourceVersion` is the store revision at which an object last changed. One global,
//! strictly increasing counter orders every write, so a watch from revision N is "every event
//! after N", in order, across kinds — what clients expect from etcd-backed Kubernetes.
//!
//! The [`Store`] trait is what the API and plugins see; [`redb::RedbStore`] is the embedded
//! default. An etcd backend would implement the same trait.

pub mod redb;

use std::collections::VecDeque;
use std::sync::Arc;

use serde_json::Value;
use tokio::sync::broadcast;

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

/// One change, as the watch log keeps it.
#[derive(Clone, Debug, serde::Serialize, serde::Deserialize)]
pub struct Event {
    pub rev: Revision,
    #[serde(rename = "type")]
    pub kind: EventType,
    pub key: String,
    /// The object after the change (for deletes: its last state, stamped with the deletion
    /// revision, as Kubernetes does).
    pub object: Arc<Value>,
    /// The object before the change, so watchers with selectors can turn a change that makes
    /// an object (stop) match into ADDED (DELETED).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub prev: Option<Arc<Value>>,
}

/// The storage contract. Keys are `group/resource/namespace/name` (see [`key`]); values are
/// objects in wire-format JSON whose `metadata.resourceVersion` the store maintains.
pub trait Store: Send + Sync + 'static {
    fn get(&self, key: &str) -> Result<Option<Value>>;
    /// Every object under `prefix` and the revision the list is consistent at.
    fn list(&self, prefix: &str) -> Result<(Vec<Value>, Revision)>;
    fn create(&self, key: &str, object: Value) -> Result<Value>;
    /// Replace an existing object; with `expected`, only if it is still at that revision.
    fn update(&self, key: &str, object: Value, expected: Option<Revision>) -> Result<Value>;
    fn delete(&self, key: &str, expected: Option<Revision>) -> Result<Value>;
    /// Events under `prefix` with a revision greater than `from`.
    fn watch(&self, prefix: &str, from: Revision) -> Result<Watch>;
    fn revision(&self) -> Revision;
}

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

/// Reads the events that the log still holds after `from` (used to catch up).
pub(crate) trait LogReader: Send + Sync + 'static {
    fn read_log(&self, from: Revision) -> Result<Vec<Arc<Event>>>;
}

/// A stream of events in revision order: first the logged history after the start revision,
/// then live events. A watcher that falls behind the live channel catches up from the log; if
/// the log no longer reaches back far enough it gets [`Error::Expired`], like an etcd
/// compaction, and clients relist.
pub struct Watch {
    prefix: String,
    last: Revision,
    pending: VecDeque<Arc<Event>>,
    rx: broadcast::Receiver<Arc<Event>>,
    log: Arc<dyn LogReader>,
}

impl Watch {
    pub(crate) fn new(
        prefix: &str,
        from: Revision,
        rx: broadcast::Receiver<Arc<Event>>,
        log: Arc<dyn LogReader>,
    ) -> Result<Self> {
        // Subscribe first, then read the log: anything committed in between shows up in both
        // and is dropped by the revision check in `next`.
        let pending = log.read_log(from)?.into();
        Ok(Watch {
            prefix: prefix.to_string(),
            last: from,
            pending,
            rx,
            log,
        })
    }

    /// The next matching event; `None` when the store shuts down.
    pub async fn next(&mut self) -> Option<Result<Arc<Event>>> {
        loop {
            let event = match self.pending.pop_front() {
                Some(e) => e,
                None => match self.rx.recv().await {
                    Ok(e) => e,
                    Err(broadcast::error::RecvError::Lagged(_)) => {
                        match self.log.read_log(self.last) {
                            Ok(events) => {
                                self.pending = events.into();
                                continue;
                            }
                            Err(e) => return Some(Err(e)),
                        }
                    }
                    Err(broadcast::error::RecvError::Closed) => return None,
                },
            };
            if event.rev <= self.last {
                continue;
            }
            self.last = event.rev;
            if event.key.starts_with(&self.prefix) {
                return Some(Ok(event));
            }
        }
    }

    /// The last revision this watch has passed (matching or not).
    pub fn revision(&self) -> Revision {
        self.last
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
