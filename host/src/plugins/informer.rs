//! Informers: one in-memory cache per kind, fed by a store watch and shared by every plugin,
//! so plugin reads never touch the store and every plugin sees events in revision order.

use std::collections::{BTreeMap, BTreeSet, HashMap};
use std::sync::{Arc, Mutex, RwLock};

use serde_json::Value;
use tokio::sync::{mpsc, watch};
use tokio_util::sync::CancellationToken;

use crate::core::meta;
use crate::core::resources::Resource;
use crate::core::selector::LabelSelector;
use crate::store::{self, EventType, Store};

/// One change delivered to subscribers.
#[derive(Clone, Debug)]
pub struct Change {
    pub kind: EventType,
    pub object: Arc<Value>,
    /// The version the cache held before this change, when it held one: how a watch by
    /// label selector finds the objects that selected the old labels.
    pub old: Option<Arc<Value>>,
}

/// An object in some informer's cache, named by kind, namespace and name.
#[derive(Clone, Copy, Debug)]
pub struct ObjectRef<'a> {
    pub res: &'static Resource,
    pub namespace: &'a str,
    pub name: &'a str,
}

/// A dependent in the [`OwnerIndex`]: its kind's plural and group, namespace and name.
type Dependent = (&'static str, &'static str, String, String);

/// Which cached objects name an owner (by uid) in their `metadata.ownerReferences`: the
/// garbage collector's dependency graph, kept by every informer as it applies changes.
#[derive(Default)]
pub struct OwnerIndex {
    /// owner uid → its dependents.
    by_owner: Mutex<HashMap<String, BTreeSet<Dependent>>>,
}

fn owner_uids(obj: &Value) -> impl Iterator<Item = &str> {
    obj.pointer("/metadata/ownerReferences")
        .and_then(Value::as_array)
        .into_iter()
        .flatten()
        .filter_map(|r| r.get("uid").and_then(Value::as_str))
}

impl OwnerIndex {
    fn lock(&self) -> std::sync::MutexGuard<'_, HashMap<String, BTreeSet<Dependent>>> {
        self.by_owner.lock().unwrap_or_else(|p| p.into_inner())
    }

    /// Replaces what `old` (the cached version, if any) recorded with what `new` records.
    fn update(&self, res: &'static Resource, old: Option<&Value>, new: Option<&Value>) {
        let same = |a: Option<&Value>, b: Option<&Value>| {
            a.and_then(|o| o.pointer("/metadata/ownerReferences"))
                == b.and_then(|o| o.pointer("/metadata/ownerReferences"))
        };
        if same(old, new) {
            return;
        }
        let mut map = self.lock();
        let entry = |o: &Value| {
            (
                res.plural,
                res.group,
                meta::namespace(o).to_string(),
                meta::name(o).to_string(),
            )
        };
        if let Some(o) = old {
            let e = entry(o);
            for uid in owner_uids(o) {
                if let Some(set) = map.get_mut(uid) {
                    set.remove(&e);
                    if set.is_empty() {
                        map.remove(uid);
                    }
                }
            }
        }
        if let Some(o) = new {
            for uid in owner_uids(o) {
                map.entry(uid.to_string()).or_default().insert(entry(o));
            }
        }
    }

    /// The cached dependents of the owner with `uid`, in kind, namespace, name order.
    pub fn dependents(&self, uid: &str, mut each: impl FnMut(ObjectRef<'_>)) {
        // Copied out: `each` reads informer caches, whose writers take this lock while
        // holding their cache lock.
        let deps: Vec<Dependent> = self
            .lock()
            .get(uid)
            .map(|s| s.iter().cloned().collect())
            .unwrap_or_default();
        for (plural, group, ns, name) in &deps {
            if let Some(res) = crate::core::resources::RESOURCES
                .iter()
                .find(|r| r.plural == *plural && r.group == *group)
            {
                each(ObjectRef {
                    res,
                    namespace: ns,
                    name,
                });
            }
        }
    }
}

/// The cache of one kind.
pub struct Informer {
    pub res: &'static Resource,
    owners: Arc<OwnerIndex>,
    /// `namespace/name` → object. Entries carry their revision to order watch events against
    /// write-through updates.
    cache: RwLock<BTreeMap<String, (u64, Arc<Value>)>>,
    /// Recently deleted keys with the deleting revision (at most [`TOMBSTONES`]; forgotten
    /// wholesale past that, and at a relist).
    tombstones: Mutex<HashMap<String, u64>>,
    /// Versions a write-through replaced, kept until the watch event of that write arrives so
    /// the event can carry them as its `old` (at most [`TOMBSTONES`]).
    overwritten: Mutex<HashMap<String, Arc<Value>>>,
    synced: watch::Sender<bool>,
    subscribers: Mutex<Vec<mpsc::UnboundedSender<Change>>>,
}

/// Bound of an informer's remembered deletions.
const TOMBSTONES: usize = 4096;

fn cache_key(ns: &str, name: &str) -> String {
    format!("{ns}/{name}")
}

impl Informer {
    fn new(res: &'static Resource, owners: Arc<OwnerIndex>) -> Self {
        Informer {
            res,
            owners,
            cache: RwLock::new(BTreeMap::new()),
            tombstones: Mutex::new(HashMap::new()),
            overwritten: Mutex::new(HashMap::new()),
            synced: watch::channel(false).0,
            subscribers: Mutex::new(Vec::new()),
        }
    }

    pub fn get(&self, ns: &str, name: &str) -> Option<Arc<Value>> {
        let ns = if self.res.namespaced { ns } else { "" };
        self.read()
            .get(&cache_key(ns, name))
            .map(|(_, v)| v.clone())
    }

    /// Objects in `ns` (all namespaces when empty) matching `selector`.
    pub fn list(&self, ns: &str, selector: &LabelSelector) -> Vec<Arc<Value>> {
        let cache = self.read();
        let prefix = if ns.is_empty() || !self.res.namespaced {
            String::new()
        } else {
            format!("{ns}/")
        };
        cache
            .range(prefix.clone()..)
            .take_while(|(k, _)| k.starts_with(&prefix))
            .filter(|(_, (_, v))| selector.matches_object(v))
            .map(|(_, (_, v))| v.clone())
            .collect()
    }

    fn read(&self) -> std::sync::RwLockReadGuard<'_, BTreeMap<String, (u64, Arc<Value>)>> {
        self.cache.read().unwrap_or_else(|p| p.into_inner())
    }

    fn key_of(&self, object: &Value) -> String {
        cache_key(
            if self.res.namespaced {
                meta::namespace(object)
            } else {
                ""
            },
            meta::name(object),
        )
    }

    /// Applies a change if it is newer than what the cache holds, and returns the version it
    /// replaced: for a watch event (`through` false) the `old` to publish with it, which is
    /// the one a write-through replaced when that write came first.
    ///
    /// Versions a write-through replaces are kept (in `overwritten`, under the cache lock)
    /// until the watch event of that write arrives; a newer watch event drops what is kept.
    fn apply(&self, kind: EventType, object: &Arc<Value>, through: bool) -> Option<Arc<Value>> {
        let rev = store::revision_of(object).unwrap_or(0);
        let key = self.key_of(object);
        let mut cache = self.cache.write().unwrap_or_else(|p| p.into_inner());
        let mut over = self.overwritten.lock().unwrap_or_else(|p| p.into_inner());
        let mut tombstones = self.tombstones.lock().unwrap_or_else(|p| p.into_inner());
        let stale = cache.get(&key).is_some_and(|(r, _)| *r >= rev)
            // A write-through of a version older than the deletion already seen: the object
            // must not come back.
            || (kind != EventType::Deleted && tombstones.get(&key).is_some_and(|r| *r >= rev));
        if stale {
            if through {
                return None;
            }
            // The write-through of this event came first: its `old` was kept.
            let old = over.remove(&key)?;
            if cache.get(&key).is_some_and(|(r, _)| *r > rev) {
                // A later write-through is still to come by watch: this is its `old`.
                over.insert(key, object.clone());
            }
            return Some(old);
        }
        let old = match kind {
            EventType::Deleted => {
                if tombstones.len() >= TOMBSTONES {
                    tombstones.clear();
                }
                tombstones.insert(key.clone(), rev);
                cache.remove(&key)
            }
            _ => {
                tombstones.remove(&key);
                cache.insert(key.clone(), (rev, object.clone()))
            }
        }
        .map(|(_, o)| o);
        let new = (kind != EventType::Deleted).then_some(&**object);
        self.owners.update(self.res, old.as_deref(), new);
        match (through, &old) {
            (true, Some(old)) if kind != EventType::Deleted => {
                if over.len() >= TOMBSTONES
                    && let Some(k) = over.keys().next().cloned()
                {
                    over.remove(&k);
                }
                // Several writes before the first event: that event replaced the oldest.
                over.entry(key).or_insert_with(|| old.clone());
            }
            _ => {
                over.remove(&key);
            }
        }
        old
    }

    /// Records a plugin's own successful write at once, so its next reconcile (and the
    /// scheduler's next decision) sees it even before the watch event arrives.
    pub fn write_through(&self, kind: EventType, object: Value) {
        self.apply(kind, &Arc::new(object), true);
    }

    pub fn subscribe(&self) -> mpsc::UnboundedReceiver<Change> {
        let (tx, rx) = mpsc::unbounded_channel();
        self.subscribers
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .push(tx);
        rx
    }

    pub async fn wait_synced(&self) {
        let mut rx = self.synced.subscribe();
        let _ = rx.wait_for(|s| *s).await;
    }

    fn publish(&self, change: Change) {
        self.subscribers
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .retain(|tx| tx.send(change.clone()).is_ok());
    }

    /// List, then watch; relist when the watch history expired.
    async fn run(self: Arc<Self>, store: Arc<dyn Store>, cancel: CancellationToken) {
        let prefix = store::prefix(self.res.group, self.res.plural, "");
        'relist: loop {
            let (items, rev) = match store.list(&prefix) {
                Ok(x) => x,
                Err(e) => {
                    tracing::error!(kind = self.res.kind, error = %e, "informer list failed");
                    tokio::select! {
                        _ = cancel.cancelled() => return,
                        _ = tokio::time::sleep(std::time::Duration::from_secs(1)) => continue,
                    }
                }
            };
            let mut changes = Vec::new();
            {
                let mut cache = self.cache.write().unwrap_or_else(|p| p.into_inner());
                // The list is the truth now.
                self.tombstones
                    .lock()
                    .unwrap_or_else(|p| p.into_inner())
                    .clear();
                self.overwritten
                    .lock()
                    .unwrap_or_else(|p| p.into_inner())
                    .clear();
                let fresh: HashMap<String, ()> = items
                    .iter()
                    .map(|o| (cache_key(meta::namespace(o), meta::name(o)), ()))
                    .collect();
                cache.retain(|k, (_, o)| {
                    let keep = fresh.contains_key(k);
                    if !keep {
                        self.owners.update(self.res, Some(o), None);
                        // Gone while the watch was down: a deletion to everyone.
                        changes.push(Change {
                            kind: EventType::Deleted,
                            object: o.clone(),
                            old: None,
                        });
                    }
                    keep
                });
                for o in items {
                    let r = store::revision_of(&o).unwrap_or(0);
                    let k = cache_key(meta::namespace(&o), meta::name(&o));
                    let o = Arc::new(o);
                    let old = cache.insert(k, (r, o.clone()));
                    self.owners
                        .update(self.res, old.as_ref().map(|(_, o)| &**o), Some(&o));
                    // After a relist every subscriber re-examines everything
                    // (level-triggered).
                    changes.push(Change {
                        kind: EventType::Modified,
                        object: o,
                        old: old.map(|(_, o)| o),
                    });
                }
            }
            for c in changes {
                self.publish(c);
            }
            self.synced.send_replace(true);
            let mut w = match store.watch(&prefix, rev) {
                Ok(w) => w,
                Err(_) => continue 'relist,
            };
            loop {
                let next = tokio::select! {
                    _ = cancel.cancelled() => return,
                    n = w.next() => n,
                };
                match next {
                    None => return,
                    Some(Err(e)) => {
                        tracing::warn!(kind = self.res.kind, error = %e, "informer watch ended; relisting");
                        continue 'relist;
                    }
                    Some(Ok(event)) => {
                        let old = self.apply(event.kind, &event.object, false);
                        self.publish(Change {
                            kind: event.kind,
                            object: event.object.clone(),
                            old,
                        });
                    }
                }
            }
        }
    }
}

/// The informers of a host, created on first use, one task each.
pub struct Informers {
    store: Arc<dyn Store>,
    cancel: CancellationToken,
    by_kind: Mutex<HashMap<&'static str, Arc<Informer>>>,
    owners: Arc<OwnerIndex>,
    tasks: tokio_util::task::TaskTracker,
}

impl Informers {
    pub fn new(store: Arc<dyn Store>, cancel: CancellationToken) -> Self {
        Informers {
            store,
            cancel,
            by_kind: Mutex::new(HashMap::new()),
            owners: Arc::default(),
            tasks: tokio_util::task::TaskTracker::new(),
        }
    }

    /// The informer of `res`, started if it was not running.
    pub fn get(&self, res: &'static Resource) -> Arc<Informer> {
        let mut map = self.by_kind.lock().unwrap_or_else(|p| p.into_inner());
        let id = res.plural;
        if let Some(i) = map.get(id) {
            return i.clone();
        }
        let inf = Arc::new(Informer::new(res, self.owners.clone()));
        map.insert(id, inf.clone());
        self.tasks
            .spawn(inf.clone().run(self.store.clone(), self.cancel.clone()));
        inf
    }

    /// Dependents by owner uid, over the kinds whose informers run.
    pub fn owners(&self) -> &OwnerIndex {
        &self.owners
    }

    /// Waits for every informer task to stop (after the cancel token fired).
    pub async fn stopped(&self) {
        self.tasks.close();
        self.tasks.wait().await;
    }
}
