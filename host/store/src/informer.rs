//! Informers: one in-memory cache per kind, fed by a store watch and shared by every plugin,
//! so plugin reads never touch the store and every plugin sees events in revision order.
//!
//! The cache keeps each object as its JSON text, plus the few things routing reads without
//! parsing it (labels, owner uids): a parsed tree costs about ten times the text, and plugins
//! receive objects as text anyway. Readers that need a tree parse on demand.

use std::collections::{BTreeMap, BTreeSet, HashMap};
use std::sync::{Arc, Mutex, RwLock};

use serde_json::Value;
use tokio::sync::{mpsc, watch};
use tokio_util::sync::CancellationToken;

use crate::{self as store, EventType, Store};
use kedge_core::meta;
use kedge_core::resources::Resource;
use kedge_core::selector::Selector as LabelSelector;

/// One change delivered to subscribers. Subscribers route by metadata; the whole object is
/// parsed only by those who ask for it ([`Change::object`]): a change queued for a slow
/// subscriber costs its metadata and the JSON text the cache shares, not a parsed tree (ten
/// times the text: a 1 MB pod written in a loop once queued a gigabyte).
#[derive(Clone, Debug)]
pub struct Change {
    pub kind: EventType,
    /// `apiVersion`, `kind` and `metadata` (without `managedFields`): what routing reads,
    /// shaped like the object so the `meta` helpers work on it.
    pub head: Arc<Value>,
    /// The object's JSON.
    pub raw: Arc<str>,
    /// The labels of the version the cache held before this change, when it held one: how a
    /// watch by label selector finds the objects that selected the old labels.
    pub old_labels: Option<Labels>,
}

impl Change {
    /// The whole object, parsed.
    pub fn object(&self) -> serde_json::Result<Value> {
        serde_json::from_str(&self.raw)
    }
}

/// The head of an object's JSON (see [`Change::head`]), read without building the rest.
fn head(raw: &str) -> serde_json::Result<Value> {
    #[derive(serde::Deserialize)]
    #[serde(rename_all = "camelCase")]
    struct Head {
        #[serde(default)]
        api_version: Option<Value>,
        #[serde(default)]
        kind: Option<Value>,
        #[serde(default)]
        metadata: Option<serde_json::Map<String, Value>>,
    }
    // `managedFields` can be most of a big object's metadata; routing never reads it. (The
    // map holds it briefly: metadata is small beside the rest.)
    let h: Head = serde_json::from_str(raw)?;
    let mut out = serde_json::Map::new();
    if let Some(v) = h.api_version {
        out.insert("apiVersion".into(), v);
    }
    if let Some(v) = h.kind {
        out.insert("kind".into(), v);
    }
    let mut m = h.metadata.unwrap_or_default();
    m.remove("managedFields");
    out.insert("metadata".into(), Value::Object(m));
    Ok(Value::Object(out))
}

/// An object's labels, sorted by key: what a label selector reads.
#[derive(Clone, Debug, Default, PartialEq)]
pub struct Labels(Arc<[(Box<str>, Box<str>)]>);

impl Labels {
    pub fn of(object: &Value) -> Self {
        let mut pairs: Vec<(Box<str>, Box<str>)> = object
            .pointer("/metadata/labels")
            .and_then(Value::as_object)
            .into_iter()
            .flatten()
            .filter_map(|(k, v)| Some((k.as_str().into(), v.as_str()?.into())))
            .collect();
        pairs.sort();
        Labels(pairs.into())
    }

    pub fn get(&self, key: &str) -> Option<&str> {
        self.0
            .binary_search_by(|(k, _)| (**k).cmp(key))
            .ok()
            .map(|i| &*self.0[i].1)
    }

    pub fn matches(&self, selector: &LabelSelector) -> bool {
        selector.matches_with(|k| self.get(k))
    }
}

/// What the cache keeps of one object.
#[derive(Debug)]
struct Cached {
    rev: u64,
    /// The object's JSON.
    raw: Arc<str>,
    labels: Labels,
    /// The uids its `ownerReferences` name.
    owners: Box<[Box<str>]>,
}

impl Cached {
    fn new(object: &Value, raw: Arc<str>) -> Self {
        Cached {
            rev: store::revision_of(object).unwrap_or(0),
            raw,
            labels: Labels::of(object),
            owners: owner_uids(object).map(Into::into).collect(),
        }
    }

    fn from_value(object: &Value) -> Self {
        Cached::new(object, object.to_string().into())
    }

    fn value(&self) -> Option<Arc<Value>> {
        match serde_json::from_str(&self.raw) {
            Ok(v) => Some(Arc::new(v)),
            Err(e) => {
                // Only JSON the store or the API produced is cached: this is a bug.
                tracing::error!(error = %e, "informer: a cached object does not parse");
                None
            }
        }
    }
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

    /// Replaces the owners the cached version of the object at `key` (`namespace/name`)
    /// named (`old`) with those its new version names (`new`).
    fn update(&self, res: &'static Resource, key: &str, old: &[Box<str>], new: &[Box<str>]) {
        if old == new {
            return;
        }
        let mut map = self.lock();
        let (ns, name) = key.split_once('/').unwrap_or(("", key));
        let entry = (res.plural, res.group, ns.to_string(), name.to_string());
        for uid in old {
            if let Some(set) = map.get_mut(&**uid) {
                set.remove(&entry);
                if set.is_empty() {
                    map.remove(&**uid);
                }
            }
        }
        for uid in new {
            map.entry(uid.to_string())
                .or_default()
                .insert(entry.clone());
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
            if let Some(res) = kedge_core::resources::by_group_plural(group, plural) {
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
    cache: RwLock<BTreeMap<String, Arc<Cached>>>,
    /// Recently deleted keys with the deleting revision (at most [`TOMBSTONES`]; forgotten
    /// wholesale past that, and at a relist).
    tombstones: Mutex<HashMap<String, u64>>,
    /// Versions a write-through replaced, kept until the watch event of that write arrives so
    /// the event can carry them as its `old` (at most [`TOMBSTONES`]).
    overwritten: Mutex<HashMap<String, Arc<Cached>>>,
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
            .and_then(|c| c.value())
    }

    /// The cached object's JSON.
    pub fn get_raw(&self, ns: &str, name: &str) -> Option<Arc<str>> {
        let ns = if self.res.namespaced { ns } else { "" };
        self.read().get(&cache_key(ns, name)).map(|c| c.raw.clone())
    }

    /// Objects in `ns` (all namespaces when empty) matching `selector`, parsed.
    pub fn list(&self, ns: &str, selector: &LabelSelector) -> Vec<Arc<Value>> {
        self.select(ns, selector, |c| c.value())
    }

    /// The same, as JSON text.
    pub fn list_raw(&self, ns: &str, selector: &LabelSelector) -> Vec<Arc<str>> {
        self.select(ns, selector, |c| Some(c.raw.clone()))
    }

    /// The namespace and name of every object in `ns` (all when empty).
    pub fn names(&self, ns: &str) -> Vec<(String, String)> {
        let prefix = self.prefix(ns);
        self.read()
            .range(prefix.clone()..)
            .take_while(|(k, _)| k.starts_with(&prefix))
            .map(|(k, _)| {
                let (ns, name) = k.split_once('/').unwrap_or(("", k));
                (ns.to_string(), name.to_string())
            })
            .collect()
    }

    fn prefix(&self, ns: &str) -> String {
        if ns.is_empty() || !self.res.namespaced {
            String::new()
        } else {
            format!("{ns}/")
        }
    }

    fn select<T>(
        &self,
        ns: &str,
        selector: &LabelSelector,
        each: impl Fn(&Cached) -> Option<T>,
    ) -> Vec<T> {
        let prefix = self.prefix(ns);
        let cache = self.read();
        cache
            .range(prefix.clone()..)
            .take_while(|(k, _)| k.starts_with(&prefix))
            .filter(|(_, c)| c.labels.matches(selector))
            .filter_map(|(_, c)| each(c))
            .collect()
    }

    fn read(&self) -> std::sync::RwLockReadGuard<'_, BTreeMap<String, Arc<Cached>>> {
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

    /// Applies a change if it is newer than what the cache holds, and returns the labels of
    /// the version it replaced: for a watch event (`through` false) the `old_labels` to
    /// publish with it, which are those of the version a write-through replaced when that
    /// write came first.
    ///
    /// Versions a write-through replaces are kept (in `overwritten`, under the cache lock)
    /// until the watch event of that write arrives; a newer watch event drops what is kept.
    fn apply(
        &self,
        kind: EventType,
        object: &Value,
        entry: Cached,
        through: bool,
    ) -> Option<Labels> {
        let rev = entry.rev;
        let key = self.key_of(object);
        let mut cache = self.cache.write().unwrap_or_else(|p| p.into_inner());
        let mut over = self.overwritten.lock().unwrap_or_else(|p| p.into_inner());
        let mut tombstones = self.tombstones.lock().unwrap_or_else(|p| p.into_inner());
        let stale = cache.get(&key).is_some_and(|c| c.rev >= rev)
            // A write-through of a version older than the deletion already seen: the object
            // must not come back.
            || (kind != EventType::Deleted && tombstones.get(&key).is_some_and(|r| *r >= rev));
        if stale {
            if through {
                return None;
            }
            // The write-through of this event came first: its `old` was kept.
            let old = over.remove(&key)?;
            if cache.get(&key).is_some_and(|c| c.rev > rev) {
                // A later write-through is still to come by watch: this is its `old`.
                over.insert(key, Arc::new(entry));
            }
            return Some(old.labels.clone());
        }
        let new_owners = if kind == EventType::Deleted {
            Box::default()
        } else {
            entry.owners.clone()
        };
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
                cache.insert(key.clone(), Arc::new(entry))
            }
        };
        let old_owners = old.as_ref().map_or(&[][..], |o| &o.owners[..]);
        self.owners.update(self.res, &key, old_owners, &new_owners);
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
        old.map(|o| o.labels.clone())
    }

    /// Records a plugin's own successful write at once, so its next reconcile (and the
    /// scheduler's next decision) sees it even before the watch event arrives.
    pub fn write_through(&self, kind: EventType, object: Value) {
        let entry = Cached::from_value(&object);
        self.apply(kind, &object, entry, true);
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
            let mut items = Vec::new();
            let listed = store::blocking(|| {
                store.scan(&prefix, None, &mut |key, bytes| {
                    let raw: Arc<str> = String::from_utf8_lossy(bytes).into();
                    let h = head(&raw).map_err(|source| store::Error::Corrupt {
                        key: key.to_string(),
                        source,
                    })?;
                    items.push((Cached::new(&h, raw.clone()), h, raw));
                    Ok(true)
                })
            });
            let rev = match listed {
                Ok(rev) => rev,
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
                    .map(|(_, o, _)| (cache_key(meta::namespace(o), meta::name(o)), ()))
                    .collect();
                cache.retain(|k, c| {
                    let keep = fresh.contains_key(k);
                    if !keep {
                        self.owners.update(self.res, k, &c.owners, &[]);
                        // Gone while the watch was down: a deletion to everyone.
                        if let Ok(h) = head(&c.raw) {
                            changes.push(Change {
                                kind: EventType::Deleted,
                                head: Arc::new(h),
                                raw: c.raw.clone(),
                                old_labels: None,
                            });
                        }
                    }
                    keep
                });
                for (entry, o, raw) in items {
                    let k = cache_key(meta::namespace(&o), meta::name(&o));
                    let new_owners = entry.owners.clone();
                    let old = cache.insert(k.clone(), Arc::new(entry));
                    let old_owners = old.as_ref().map_or(&[][..], |o| &o.owners[..]);
                    self.owners.update(self.res, &k, old_owners, &new_owners);
                    // After a relist every subscriber re-examines everything
                    // (level-triggered).
                    changes.push(Change {
                        kind: EventType::Modified,
                        head: Arc::new(o),
                        raw,
                        old_labels: old.map(|o| o.labels.clone()),
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
                        let raw: Arc<str> = String::from_utf8_lossy(&event.object).into();
                        let object = match head(&raw) {
                            Ok(o) => o,
                            Err(e) => {
                                tracing::error!(kind = self.res.kind, error = %e, "informer: unreadable event; relisting");
                                continue 'relist;
                            }
                        };
                        let entry = Cached::new(&object, raw.clone());
                        let old_labels = self.apply(event.kind, &object, entry, false);
                        self.publish(Change {
                            kind: event.kind,
                            head: Arc::new(object),
                            raw,
                            old_labels,
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
    by_kind: Mutex<HashMap<(&'static str, &'static str), Arc<Informer>>>,
    owners: Arc<OwnerIndex>,
    tasks: tokio_util::task::TaskTracker,
    /// The runtime informers run on: the one `new` was called on, whichever runtime asks
    /// for an informer later (plugin guests run on a runtime of their own).
    runtime: Option<tokio::runtime::Handle>,
}

impl Informers {
    pub fn new(store: Arc<dyn Store>, cancel: CancellationToken) -> Self {
        Informers {
            store,
            cancel,
            by_kind: Mutex::new(HashMap::new()),
            owners: Arc::default(),
            tasks: tokio_util::task::TaskTracker::new(),
            runtime: tokio::runtime::Handle::try_current().ok(),
        }
    }

    /// The informer of `res`, started if it was not running.
    pub fn get(&self, res: &'static Resource) -> Arc<Informer> {
        let mut map = self.by_kind.lock().unwrap_or_else(|p| p.into_inner());
        let id = (res.group, res.plural);
        if let Some(i) = map.get(&id) {
            return i.clone();
        }
        let inf = Arc::new(Informer::new(res, self.owners.clone()));
        map.insert(id, inf.clone());
        let run = inf.clone().run(self.store.clone(), self.cancel.clone());
        match &self.runtime {
            Some(rt) => self.tasks.spawn_on(run, rt),
            None => self.tasks.spawn(run),
        };
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
