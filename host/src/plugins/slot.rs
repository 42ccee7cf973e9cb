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
use tokio_util::sync::CancellationToken;

use super::informer::{Change, Informer};
use super::queue::WorkQueue;
use super::{Error, Plugin, PluginHost};
use crate::core::meta;
use crate::core::resources::Resource;
use crate::core::selector::LabelSelector;

/// Consecutive traps (over any keys) before the slot backs off as a whole.
const TRAPS_BEFORE_BACKOFF: u32 = 3;
/// Cap of the slot-wide back-off.
const SLOT_BACKOFF_CAP: Duration = Duration::from_secs(30);

pub type Key = (String, String);

/// What a slot reports about its versions; the plugin manager turns these into status and
/// Events.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum SlotEvent {
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
pub trait SlotObserver: Send + Sync {
    fn observe(&self, slot: &str, event: SlotEvent);
}

struct Versions {
    current: Arc<Plugin>,
    /// The last proven version while `current` is on probation.
    previous: Option<Arc<Plugin>>,
    probation_left: u32,
    /// Owned kinds with a routing task.
    routed: Vec<&'static Resource>,
    consecutive_traps: u32,
    unhealthy: bool,
}

pub struct Slot {
    name: String,
    host: Arc<PluginHost>,
    versions: Mutex<Versions>,
    queue: Arc<WorkQueue<Key>>,
    primary: Arc<Informer>,
    observer: Option<Arc<dyn SlotObserver>>,
    cancel: CancellationToken,
}

impl Slot {
    /// Starts routing events and reconciling with `plugin`.
    pub(super) fn start(
        host: &Arc<PluginHost>,
        name: &str,
        plugin: Arc<Plugin>,
        observer: Option<Arc<dyn SlotObserver>>,
    ) -> Arc<Slot> {
        let primary = host.informers.get(plugin.shared.perms.for_kind);
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
            queue: Arc::new(WorkQueue::new()),
            primary: primary.clone(),
            observer,
            cancel: host.cancel.child_token(),
        });
        slot.spawn_router(None);
        slot.route_owned(&plugin);
        let worker = slot.clone();
        host.tasks.spawn(async move { worker.run().await });
        slot
    }

    pub fn name(&self) -> &str {
        &self.name
    }

    /// The version reconciling now.
    pub fn current(&self) -> Arc<Plugin> {
        self.lock().current.clone()
    }

    /// Whether a new version is still proving itself.
    pub fn on_probation(&self) -> bool {
        let v = self.lock();
        v.previous.is_some() && v.probation_left > 0
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
            if !std::ptr::eq(old, new) {
                return Err(format!(
                    "the new version reconciles {}/{} but this plugin reconciles {}/{}; \
                     delete and recreate the Plugin to change its primary kind",
                    new.api_version(),
                    new.kind,
                    old.api_version(),
                    old.kind
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
        self.route_owned(&next);
        let slot = self.clone();
        self.host.tasks.spawn(async move {
            for r in &next.shared.perms.readable {
                slot.host.informers.get(r).wait_synced().await;
            }
            let all = slot.primary.list("", &LabelSelector::default());
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
            for o in all {
                slot.queue
                    .add((meta::namespace(&o).to_string(), meta::name(&o).to_string()));
            }
        });
        Ok(())
    }

    /// One routing task per owned kind the versions so far declared. Events of a kind the
    /// current version does not own are dropped at routing time.
    fn route_owned(self: &Arc<Self>, plugin: &Plugin) {
        for owned in &plugin.shared.perms.owns {
            let mut v = self.lock();
            if v.routed.iter().any(|r| std::ptr::eq(*r, *owned)) {
                continue;
            }
            v.routed.push(owned);
            drop(v);
            self.spawn_router(Some(owned));
        }
    }

    fn spawn_router(self: &Arc<Self>, owned: Option<&'static Resource>) {
        let inf = match owned {
            Some(o) => self.host.informers.get(o),
            None => self.primary.clone(),
        };
        let mut rx = inf.subscribe();
        let slot = self.clone();
        self.host.tasks.spawn(async move {
            loop {
                let change: Change = tokio::select! {
                    _ = slot.cancel.cancelled() => break,
                    c = rx.recv() => match c { Some(c) => c, None => break },
                };
                if let Some(o) = owned
                    && !slot
                        .lock()
                        .current
                        .shared
                        .perms
                        .owns
                        .iter()
                        .any(|r| std::ptr::eq(*r, o))
                {
                    continue;
                }
                route(&slot.queue, owned, &change, &slot.primary);
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
        // Reconciling before the caches are filled would act on a partial world (and, say,
        // create pods that already exist).
        let first = self.current();
        self.primary.wait_synced().await;
        for o in &first.shared.perms.readable {
            self.host.informers.get(o).wait_synced().await;
        }
        // Everything that exists gets one reconcile, whatever events this plugin saw before
        // it subscribed (objects created before the plugin started, or before a restart).
        for o in self.primary.list("", &LabelSelector::default()) {
            self.queue
                .add((meta::namespace(&o).to_string(), meta::name(&o).to_string()));
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
                    _ = self.cancel.cancelled() => break,
                    _ = tokio::time::sleep(d) => {}
                }
            }
            let key = tokio::select! {
                _ = self.cancel.cancelled() => break,
                k = self.queue.get() => match k { Some(k) => k, None => break },
            };
            let plugin = self.current();
            let span = tracing::debug_span!("reconcile", plugin = %self.name, object = %format!("{}/{}", key.0, key.1));
            let _enter = span.enter();
            match self.host.reconcile(&plugin, &key.0, &key.1).await {
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
        self.queue.shut_down();
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

/// Maps one event to the primary-kind keys to reconcile.
fn route(
    queue: &WorkQueue<Key>,
    owned: Option<&'static Resource>,
    change: &Change,
    primary: &Informer,
) {
    let primary_res = primary.res;
    let obj = &change.object;
    let ns = meta::namespace(obj).to_string();
    match owned {
        None => queue.add((ns, meta::name(obj).to_string())),
        Some(_) => match meta::controller_ref(obj) {
            Some(r) => {
                let kind = r.get("kind").and_then(Value::as_str);
                let av = r.get("apiVersion").and_then(Value::as_str);
                if kind == Some(primary_res.kind)
                    && av == Some(&primary_res.api_version())
                    && let Some(n) = r.get("name").and_then(Value::as_str)
                {
                    queue.add((ns, n.to_string()));
                }
            }
            None => {
                // An orphan: every primary object in its namespace may want to adopt it.
                for p in primary.list(&ns, &LabelSelector::default()) {
                    queue.add((ns.clone(), meta::name(&p).to_string()));
                }
            }
        },
    }
}
