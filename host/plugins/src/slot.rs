//! A slot: one plugin's place in the host — its work queue, its event routing and its one
//! worker — holding the version that runs now and, while a new version is on probation, the
//! last proven one.
//!
//! The queue and the routing outlive versions, so a swap loses no event and handles none
//! twice: every key is taken off the queue once and reconciled by whichever version is current
//! at that moment. The one worker means the call in flight during a swap finishes on the old
//! version (it holds its own `Arc`), and the next call runs the new one.

use std::sync::{Arc, Mutex};
use std::time::Duration;

use serde_json::Value;
use tokio::sync::watch;
use tokio_util::sync::CancellationToken;
use tracing::Instrument;

use super::metrics::Ended;
use super::queue::WorkQueue;
use super::{Error, Permissions, Plugin, PluginHost, WatchBy};
use kedge_core::meta;
use kedge_core::resources::{self, Resource};
use kedge_core::selector::Selector as LabelSelector;
use kedge_store::EventType;
use kedge_store::informer::Change;

/// Consecutive traps (over any keys) before the slot backs off as a whole.
const TRAPS_BEFORE_BACKOFF: u32 = 3;
/// Cap of the slot-wide back-off.
const SLOT_BACKOFF_CAP: Duration = Duration::from_secs(30);

/// One object to reconcile: its kind (the primary kind, or any kind for a plugin reconciling
/// every kind), namespace and name.
#[derive(Clone, Debug)]
pub struct Key {
    pub res: &'static Resource,
    pub ns: String,
    pub name: String,
}

impl Key {
    pub fn new(res: &'static Resource, ns: &str, name: &str) -> Self {
        Key {
            res,
            ns: ns.to_string(),
            name: name.to_string(),
        }
    }

    fn of(res: &'static Resource, obj: &Value) -> Self {
        Key::new(res, meta::namespace(obj), meta::name(obj))
    }

    fn id(&self) -> (&str, &str, &str, &str) {
        (self.res.group, self.res.plural, &self.ns, &self.name)
    }
}

impl PartialEq for Key {
    fn eq(&self, other: &Self) -> bool {
        self.id() == other.id()
    }
}

impl Eq for Key {}

impl std::hash::Hash for Key {
    fn hash<H: std::hash::Hasher>(&self, state: &mut H) {
        self.id().hash(state)
    }
}

impl std::fmt::Display for Key {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        if self.ns.is_empty() {
            write!(f, "{} {}", self.res.kind, self.name)
        } else {
            write!(f, "{} {}/{}", self.res.kind, self.ns, self.name)
        }
    }
}

/// What a slot reports about its versions; the plugin manager turns these into status and
/// Events.
#[derive(Clone, Debug, PartialEq, Eq)]
pub(crate) enum SlotEvent {
    /// The version on probation completed its probation reconciles and is now the proven one.
    ProbationPassed { digest: String },
    /// The version on probation trapped; `restored` runs again.
    RolledBack {
        failed: String,
        restored: String,
        reason: String,
    },
    /// Calls keep trapping; the slot backs off between calls.
    Unhealthy { digest: String, reason: String },
    /// A call succeeded again after [`SlotEvent::Unhealthy`].
    Healthy { digest: String },
}

/// Receives a slot's [`SlotEvent`]s (the plugin manager; nothing for bare `start`).
pub(crate) trait SlotObserver: Send + Sync {
    fn observe(&self, slot: &str, event: SlotEvent);
}

struct Versions {
    current: Arc<Plugin>,
    /// The last proven version while `current` is on probation.
    previous: Option<Arc<Plugin>>,
    probation_left: u32,
    /// Owned and watched kinds with a routing task.
    routed: Vec<&'static Resource>,
    consecutive_traps: u32,
    unhealthy: bool,
}

/// How often a plugin of every kind looks for newly served kinds.
const NEW_KINDS_EVERY: Duration = Duration::from_secs(1);

pub struct Slot {
    name: String,
    host: Arc<PluginHost>,
    versions: Mutex<Versions>,
    queue: Arc<WorkQueue<Key>>,
    observer: Option<Arc<dyn SlotObserver>>,
    cancel: CancellationToken,
    metrics: super::metrics::SlotMetrics,
    /// Whether this replica holds the plugin's lease (see [`super::lease`]): the worker
    /// reconciles only while it does; events keep queueing meanwhile.
    leading: watch::Receiver<bool>,
    /// Keeps `leading` true for a slot that needs no lease.
    _always: Option<watch::Sender<bool>>,
}

impl Slot {
    /// Starts routing events and reconciling with `plugin`.
    /// `leading` gates the reconciles (`None`: always on).
    pub(super) fn start(
        host: &Arc<PluginHost>,
        name: &str,
        plugin: Arc<Plugin>,
        observer: Option<Arc<dyn SlotObserver>>,
        leading: Option<watch::Receiver<bool>>,
    ) -> Arc<Slot> {
        let (leading, always) = match leading {
            Some(rx) => (rx, None),
            None => {
                let (tx, rx) = watch::channel(true);
                (rx, Some(tx))
            }
        };
        let (metrics, queue_metrics) = host.metrics.slot(name);
        let slot = Arc::new(Slot {
            name: name.to_string(),
            host: host.clone(),
            versions: Mutex::new(Versions {
                current: plugin.clone(),
                previous: None,
                probation_left: 0,
                routed: Vec::new(),
                consecutive_traps: 0,
                unhealthy: false,
            }),
            queue: Arc::new(WorkQueue::with_metrics(queue_metrics)),
            observer,
            cancel: host.cancel.child_token(),
            metrics,
            leading,
            _always: always,
        });
        let every = plugin.shared.perms.for_kind.is_none();
        for res in plugin.shared.perms.primaries() {
            slot.spawn_router(res, Route::Primary { every });
        }
        slot.route_related(&plugin);
        if every {
            slot.follow_new_kinds();
        }
        // The worker runs the guests: on the host's guest runtime, off the API's workers.
        let worker = slot.clone();
        host.tasks
            .spawn_on(async move { worker.run().await }, host.guests.handle());
        // The worker holds the slot, the slot the host, the host the guest runtime: a cycle
        // that cancelling breaks. A task on the caller's runtime cancels the slot when that
        // runtime goes away uncancelled (an embedder or a test dropping everything), as
        // dropping the worker itself did when it ran there.
        let token = slot.cancel.clone();
        host.tasks.spawn(async move {
            let _cancel_on_drop = token.clone().drop_guard();
            token.cancelled().await;
        });
        slot
    }

    /// For a plugin of every kind (the garbage collector, the namespace controller): kinds
    /// served later (custom resources) get a routing task too, and their objects one
    /// reconcile each, soon after their definition is established. The resource table
    /// changes rarely; its generation is checked every [`NEW_KINDS_EVERY`].
    fn follow_new_kinds(self: &Arc<Self>) {
        let slot = self.clone();
        let mut routed: Vec<&'static Resource> = super::permissions::every_kind().collect();
        let mut seen = resources::generation();
        self.host.tasks.spawn(async move {
            loop {
                tokio::select! {
                    _ = slot.cancel.cancelled() => break,
                    _ = tokio::time::sleep(NEW_KINDS_EVERY) => {}
                }
                let now = resources::generation();
                if now == seen {
                    continue;
                }
                seen = now;
                let new: Vec<&'static Resource> = super::permissions::every_kind()
                    .filter(|r| !routed.iter().any(|x| std::ptr::eq(*x, *r)))
                    .collect();
                for res in new {
                    routed.push(res);
                    slot.spawn_router(res, Route::Primary { every: true });
                    let inf = slot.host.informers.get(res);
                    inf.wait_synced().await;
                    for (ns, name) in inf.names("") {
                        slot.queue.add(Key::new(res, &ns, &name));
                    }
                }
            }
        });
    }

    pub fn name(&self) -> &str {
        &self.name
    }

    /// The version reconciling now.
    pub fn current(&self) -> Arc<Plugin> {
        self.lock().current.clone()
    }

    /// Holds the running versions (current and fallback) to `grant` at once.
    pub fn restrict(&self, grant: &super::Grant) {
        let v = self.lock();
        v.current.restrict(grant.clone());
        if let Some(p) = &v.previous {
            p.restrict(grant.clone());
        }
    }

    /// Stops the worker and the routing (the plugin object was deleted).
    pub fn stop(&self) {
        self.cancel.cancel();
        self.queue.shut_down();
    }

    fn lock(&self) -> std::sync::MutexGuard<'_, Versions> {
        self.versions.lock().unwrap_or_else(|p| p.into_inner())
    }

    /// Makes `next` the current version. With `probation` > 0 the last proven version is kept
    /// and comes back if `next` traps within its first `probation` reconciles. Every object of
    /// the primary kind is queued once so the new code looks at the whole world now (as after
    /// a restart); events keep flowing through the same queue meanwhile.
    pub fn swap(self: &Arc<Self>, next: Arc<Plugin>, probation: u32) -> Result<(), String> {
        {
            let mut v = self.lock();
            let (old, new) = (v.current.shared.perms.for_kind, next.shared.perms.for_kind);
            let same = match (old, new) {
                (Some(a), Some(b)) => std::ptr::eq(a, b),
                (None, None) => true,
                _ => false,
            };
            if !same {
                return Err(format!(
                    "the new version reconciles {} but this plugin reconciles {}; \
                     delete and recreate the Plugin to change its primary kind",
                    describe_primary(new),
                    describe_primary(old),
                ));
            }
            if probation > 0 {
                // While an unproven version is replaced by another, the proven one stays the
                // fallback.
                if v.previous.is_none() {
                    v.previous = Some(v.current.clone());
                }
            } else {
                v.previous = None;
            }
            v.current = next.clone();
            v.probation_left = probation;
            v.consecutive_traps = 0;
        }
        self.metrics.swaps.inc();
        self.route_related(&next);
        let slot = self.clone();
        self.host.tasks.spawn(async move {
            for r in next.shared.perms.readable.iter() {
                slot.host.informers.get(r).wait_synced().await;
            }
            let all = slot.everything(&next);
            {
                // Probation cannot ask for more reconciles than there are objects.
                let mut v = slot.lock();
                if Arc::ptr_eq(&v.current, &next) && v.probation_left as usize > all.len() {
                    v.probation_left = all.len().max(1) as u32;
                }
            }
            if all.is_empty() {
                // Nothing to reconcile, nothing to prove.
                slot.pass_probation(&next);
            }
            for k in all {
                slot.queue.add(k);
            }
        });
        Ok(())
    }

    /// A key for every object of the plugin's primary kinds.
    fn everything(&self, plugin: &Plugin) -> Vec<Key> {
        let mut out = Vec::new();
        for res in plugin.shared.perms.primaries() {
            let inf = self.host.informers.get(res);
            out.extend(
                inf.names("")
                    .iter()
                    .map(|(ns, name)| Key::new(res, ns, name)),
            );
        }
        out
    }

    /// One routing task per owned or watched kind the versions so far declared. Events of a
    /// kind the current version neither owns nor watches are dropped at routing time.
    fn route_related(self: &Arc<Self>, plugin: &Plugin) {
        let perms = &plugin.shared.perms;
        let watched = perms.watches.iter().map(|w| w.kind);
        for kind in perms.owns.iter().copied().chain(watched) {
            let mut v = self.lock();
            if v.routed.iter().any(|r| std::ptr::eq(*r, kind)) {
                continue;
            }
            v.routed.push(kind);
            drop(v);
            self.spawn_router(kind, Route::Related);
        }
    }

    fn spawn_router(self: &Arc<Self>, res: &'static Resource, how: Route) {
        let inf = self.host.informers.get(res);
        let mut rx = inf.subscribe();
        let slot = self.clone();
        self.host.tasks.spawn(async move {
            loop {
                let change: Change = tokio::select! {
                    _ = slot.cancel.cancelled() => break,
                    c = rx.recv() => match c { Some(c) => c, None => break },
                };
                let current = slot.lock().current.clone();
                route(
                    &slot.host,
                    &slot.queue,
                    res,
                    how,
                    &current.shared.perms,
                    &change,
                );
            }
        });
    }

    fn notify(&self, event: SlotEvent) {
        if let Some(o) = &self.observer {
            o.observe(&self.name, event);
        }
    }

    /// Counts a successful call of `plugin` against its probation.
    fn pass_probation(&self, plugin: &Arc<Plugin>) {
        let passed = {
            let mut v = self.lock();
            if !Arc::ptr_eq(&v.current, plugin) || v.previous.is_none() {
                false
            } else {
                v.probation_left = v.probation_left.saturating_sub(1);
                if v.probation_left == 0 {
                    v.previous = None;
                    true
                } else {
                    false
                }
            }
        };
        if passed {
            tracing::info!(plugin = %self.name, digest = plugin.digest(), "new version passed probation");
            self.notify(SlotEvent::ProbationPassed {
                digest: plugin.digest().to_string(),
            });
        }
    }

    /// If `plugin` is the version on probation, restores the proven one. Returns whether it
    /// rolled back.
    fn roll_back(&self, plugin: &Arc<Plugin>, reason: &str) -> bool {
        let restored = {
            let mut v = self.lock();
            if !Arc::ptr_eq(&v.current, plugin) || v.probation_left == 0 {
                return false;
            }
            let Some(prev) = v.previous.take() else {
                return false;
            };
            v.current = prev.clone();
            v.probation_left = 0;
            prev
        };
        tracing::warn!(plugin = %self.name, failed = plugin.digest(), restored = restored.digest(), %reason, "new version trapped on probation; rolled back");
        self.notify(SlotEvent::RolledBack {
            failed: plugin.digest().to_string(),
            restored: restored.digest().to_string(),
            reason: reason.to_string(),
        });
        true
    }

    async fn run(self: Arc<Self>) {
        let mut leading = self.leading.clone();
        loop {
            if !*leading.borrow_and_update() {
                tracing::info!(plugin = %self.name, "waiting for the plugin's lease (another replica runs it)");
                loop {
                    tokio::select! {
                        _ = self.cancel.cancelled() => return self.queue.shut_down(),
                        changed = leading.changed() => if changed.is_err() {
                            return self.queue.shut_down();
                        },
                    }
                    if *leading.borrow_and_update() {
                        break;
                    }
                }
            }
            if !self.lead(&mut leading).await {
                break;
            }
            tracing::info!(plugin = %self.name, "lost the plugin's lease; another replica runs it now");
        }
        self.queue.shut_down();
    }

    /// Reconciles while this replica holds the lease: false when the slot stops, true when
    /// the lease is lost (the queue keeps what it holds for the next turn).
    async fn lead(self: &Arc<Self>, leading: &mut watch::Receiver<bool>) -> bool {
        // Reconciling before the caches are filled would act on a partial world (and, say,
        // create pods that already exist).
        let first = self.current();
        let synced = async {
            for o in first.shared.perms.primaries() {
                self.host.informers.get(o).wait_synced().await;
            }
            for o in first.shared.perms.readable.iter() {
                self.host.informers.get(o).wait_synced().await;
            }
        };
        tokio::select! {
            _ = self.cancel.cancelled() => return false,
            _ = synced => {}
        }
        // Everything that exists gets one reconcile, whatever events this plugin saw before
        // it subscribed (objects created before the plugin started, or before a restart).
        for k in self.everything(&first) {
            self.queue.add(k);
        }
        tracing::info!(plugin = %self.name, digest = first.digest(), "plugin started");
        drop(first);
        loop {
            let backoff = {
                let v = self.lock();
                (v.consecutive_traps >= TRAPS_BEFORE_BACKOFF).then(|| {
                    super::queue::failure_backoff(v.consecutive_traps - TRAPS_BEFORE_BACKOFF + 1)
                        .min(SLOT_BACKOFF_CAP)
                })
            };
            if let Some(d) = backoff {
                tokio::select! {
                    _ = self.cancel.cancelled() => return false,
                    _ = tokio::time::sleep(d) => {}
                }
            }
            let key = tokio::select! {
                // The lease first: a replica that lost it takes no further key.
                biased;
                _ = self.cancel.cancelled() => return false,
                changed = leading.changed() => {
                    if changed.is_err() {
                        return false;
                    }
                    if *leading.borrow_and_update() {
                        continue;
                    }
                    return true;
                }
                k = self.queue.get() => match k { Some(k) => k, None => return false },
            };
            if !*leading.borrow() {
                // Lost while waiting: the key stays queued for whoever runs the plugin here next.
                self.queue.add(key.clone());
                self.queue.done(&key);
                return true;
            }
            let plugin = self.current();
            let span = tracing::debug_span!("reconcile", plugin = %self.name, object = %key);
            // Entered only around synchronous code: a guard held across an await would leak
            // the span into whatever else the worker thread runs meanwhile.
            let started = std::time::Instant::now();
            let result = self
                .host
                .reconcile_object(&plugin, key.res, &key.ns, &key.name)
                .instrument(span.clone())
                .await;
            self.metrics.reconciled(
                match &result {
                    Ok(_) => Ended::Success,
                    Err(Error::Trap { .. }) => Ended::Trap,
                    Err(_) => Ended::Error,
                },
                started.elapsed(),
            );
            let _enter = span.enter();
            match result {
                Ok(o) => {
                    self.queue.forget(&key);
                    if let Some(d) = o.requeue_after {
                        self.queue.add_after(key.clone(), d);
                    }
                    self.pass_probation(&plugin);
                    self.call_succeeded(&plugin);
                }
                Err(e) => {
                    let trapped = matches!(e, Error::Trap { .. });
                    if trapped && self.roll_back(&plugin, &e.to_string()) {
                        // The proven version takes this key at once: nothing is lost.
                        self.queue.add(key.clone());
                        self.queue.done(&key);
                        continue;
                    }
                    if trapped {
                        self.call_trapped(&plugin, &e);
                    } else {
                        self.call_succeeded(&plugin);
                    }
                    let failures = self.queue.failures(&key) + 1;
                    if failures > 3 {
                        tracing::warn!(failures, error = %e, "reconcile failed");
                    } else {
                        tracing::debug!(failures, error = %e, "reconcile failed");
                    }
                    self.queue.add_rate_limited(key.clone());
                }
            }
            self.queue.done(&key);
        }
    }

    /// A call that did not trap (a returned error is the guest's own decision).
    fn call_succeeded(&self, plugin: &Plugin) {
        let recovered = {
            let mut v = self.lock();
            v.consecutive_traps = 0;
            std::mem::replace(&mut v.unhealthy, false)
        };
        if recovered {
            self.notify(SlotEvent::Healthy {
                digest: plugin.digest().to_string(),
            });
        }
    }

    fn call_trapped(&self, plugin: &Plugin, e: &Error) {
        let report = {
            let mut v = self.lock();
            v.consecutive_traps += 1;
            if v.consecutive_traps >= TRAPS_BEFORE_BACKOFF && !v.unhealthy {
                v.unhealthy = true;
                true
            } else {
                false
            }
        };
        if report {
            tracing::warn!(plugin = %self.name, error = %e, "plugin keeps trapping; backing off");
            self.notify(SlotEvent::Unhealthy {
                digest: plugin.digest().to_string(),
                reason: e.to_string(),
            });
        }
    }
}

fn describe_primary(p: Option<&Resource>) -> String {
    match p {
        Some(r) => format!("{}/{}", r.api_version(), r.kind),
        None => "every kind".into(),
    }
}

/// How a routing task maps the events of its kind to keys.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
enum Route {
    /// Events of a primary kind enqueue their own object. With `every` (a plugin reconciling
    /// every kind, i.e. the garbage collector) only events of objects with owner references
    /// or being deleted count, and a deletion also enqueues the objects that named the
    /// deleted one as owner, and the owners it named: the dependency graph's neighbours are
    /// what a deletion changes.
    Primary { every: bool },
    /// Events of an owned kind enqueue their controlling owner of the primary kind (or, for
    /// orphans, every primary object of their namespace); events of a watched kind enqueue
    /// the primary objects its watches find (see [`route_watch`]).
    Related,
}

/// Maps one event to the keys to reconcile.
fn route(
    host: &PluginHost,
    queue: &WorkQueue<Key>,
    res: &'static Resource,
    how: Route,
    perms: &Permissions,
    change: &Change,
) {
    let obj = &change.head;
    let ns = meta::namespace(obj).to_string();
    let primary = perms.for_kind;
    match how {
        Route::Primary { every } => {
            // Every kind's events reach a `*` plugin (the garbage collector) only where the
            // owner graph can need work: objects with owners, objects being deleted, and
            // deletions. The rest (a lease renewal, a status write of an ownerless object)
            // would cost a call that does nothing.
            let relevant = change.kind == EventType::Deleted
                || obj.pointer("/metadata/deletionTimestamp").is_some()
                || obj
                    .pointer("/metadata/ownerReferences")
                    .and_then(Value::as_array)
                    .is_some_and(|r| !r.is_empty());
            if every && !relevant {
                return;
            }
            queue.add(Key::of(res, obj));
            if every && change.kind == EventType::Deleted {
                host.informers.owners().dependents(meta::uid(obj), |d| {
                    queue.add(Key::new(d.res, d.namespace, d.name));
                });
                for r in obj
                    .pointer("/metadata/ownerReferences")
                    .and_then(Value::as_array)
                    .into_iter()
                    .flatten()
                {
                    let field = |f: &str| r.get(f).and_then(Value::as_str).unwrap_or_default();
                    if let Some(owner) = resources::by_kind(field("apiVersion"), field("kind")) {
                        let ns = if owner.namespaced { ns.as_str() } else { "" };
                        queue.add(Key::new(owner, ns, field("name")));
                    }
                }
            }
        }
        Route::Related => {
            let Some(primary_res) = primary else { return };
            for w in perms.watches.iter().filter(|w| std::ptr::eq(w.kind, res)) {
                route_watch(host, queue, primary_res, &w.by, change);
            }
            if !perms.owns.iter().any(|r| std::ptr::eq(*r, res)) {
                return;
            }
            match meta::controller_ref(obj) {
                Some(r) => {
                    let kind = r.get("kind").and_then(Value::as_str);
                    let av = r.get("apiVersion").and_then(Value::as_str);
                    if kind == Some(primary_res.kind)
                        && av == Some(&primary_res.api_version())
                        && let Some(n) = r.get("name").and_then(Value::as_str)
                    {
                        queue.add(Key::new(primary_res, &ns, n));
                    }
                }
                None if primary_res.kind == "Namespace" && primary_res.group.is_empty() => {
                    // For a Namespace plugin, an owned object's namespace is its owner.
                    if !ns.is_empty() {
                        queue.add(Key::new(primary_res, "", &ns));
                    }
                }
                None => {
                    // An orphan: every primary object in its namespace (every one, for a
                    // cluster-scoped owned kind) may want to adopt it.
                    let inf = host.informers.get(primary_res);
                    for (pns, name) in inf.names(&ns) {
                        queue.add(Key::new(primary_res, &pns, &name));
                    }
                }
            }
        }
    }
}

/// Maps an event of a watched kind to the primary objects of its namespace that `by` finds:
/// the namesake if there is one, or every one whose selector selects the object's labels now
/// or selected them before the change (so a pod relabelled out of a Service still reaches it).
fn route_watch(
    host: &PluginHost,
    queue: &WorkQueue<Key>,
    primary: &'static Resource,
    by: &WatchBy,
    change: &Change,
) {
    let obj = &change.head;
    let ns = meta::namespace(obj);
    if by == &WatchBy::SameName {
        // Only an object that exists: its own deletion is its own event.
        if host
            .informers
            .get(primary)
            .get(ns, meta::name(obj))
            .is_some()
        {
            queue.add(Key::new(primary, ns, meta::name(obj)));
        }
        return;
    }
    fn labels(o: &Value) -> Option<&serde_json::Map<String, Value>> {
        o.pointer("/metadata/labels").and_then(Value::as_object)
    }
    let now = labels(obj);
    let before = change.old_labels.as_ref();
    for p in host
        .informers
        .get(primary)
        .list(ns, &LabelSelector::default())
    {
        let Some(sel) = by.selector_of(&p) else {
            continue;
        };
        let selected = sel.matches(now) || before.is_some_and(|b| b.matches(&sel));
        if selected {
            queue.add(Key::of(primary, &p));
        }
    }
}
