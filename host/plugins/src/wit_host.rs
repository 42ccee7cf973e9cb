//! The host side of the plugin WIT world (`guest-sdk/wit`): the `cluster` interface a
//! plugin calls (reads from informer caches, writes through the API), per call.

use std::sync::Arc;

use kedge_api::ops::{DeleteOptions, WriteOptions};
use kedge_api::schema::FieldValidation;
use kedge_api::{Api, ApiError};
use kedge_core::meta;
use kedge_core::patch::PatchType;
use kedge_core::resources::{self, Resource};
use kedge_core::selector::Selector as LabelSelector;
use kedge_store::EventType;
use kedge_store::informer::Informers;
use serde_json::Value;
use wasmtime::StoreLimits;
use wasmtime::component::ResourceTable;
use wasmtime_wasi::{WasiCtx, WasiCtxView, WasiView};

use crate::permissions::{Grant, Permissions, is_wildcard};

wasmtime::component::bindgen!({
    path: "../../guest-sdk/wit",
    world: "controller",
    exports: { default: async },
});

pub(crate) use self::kedge::plugin::cluster::{LogLevel, PodBinding};
pub(crate) use self::kedge::plugin::types::{
    ApiError as WitApiError, DeleteOptions as WitDeleteOptions, KindRef,
    Propagation as WitPropagation, Watch, WatchMap,
};

/// Per-call state inside the wasmtime store.
pub(crate) struct HostState {
    pub(crate) plugin: Arc<PluginShared>,
    pub(crate) limits: StoreLimits,
    pub(crate) wasi: WasiCtx,
    pub(crate) table: ResourceTable,
}

impl WasiView for HostState {
    fn ctx(&mut self) -> WasiCtxView<'_> {
        WasiCtxView {
            ctx: &mut self.wasi,
            table: &mut self.table,
        }
    }
}

/// What host functions need, shared by all calls of one plugin.
pub(crate) struct PluginShared {
    pub(crate) name: String,
    pub(crate) api: Arc<Api>,
    pub(crate) informers: Arc<Informers>,
    pub(crate) perms: Permissions,
    /// The Plugin object's grant; `None` for plugins started without one (tests, benches).
    pub(crate) grant: std::sync::RwLock<Option<Grant>>,
    /// Its best-effort Events (`emit-events`) queued and not written yet.
    pub(crate) events: EventQueue,
}

/// The most Events one plugin may have queued (`emit-events`) and not yet written; more are
/// dropped, as client-go's event broadcaster drops them when its channel is full.
pub(crate) const EVENT_QUEUE: usize = 2048;

/// Counts one plugin's queued Events against [`EVENT_QUEUE`].
#[derive(Debug, Default)]
pub(crate) struct EventQueue {
    queued: std::sync::atomic::AtomicUsize,
}

impl EventQueue {
    /// Takes room for up to `n` Events: how many fit.
    fn reserve(&self, n: usize) -> usize {
        use std::sync::atomic::Ordering::SeqCst;
        let mut taken = 0;
        let _ = self.queued.fetch_update(SeqCst, SeqCst, |q| {
            taken = n.min(EVENT_QUEUE.saturating_sub(q));
            Some(q + taken)
        });
        taken
    }

    fn release(&self, n: usize) {
        self.queued
            .fetch_sub(n, std::sync::atomic::Ordering::SeqCst);
    }

    /// Events queued and not written yet.
    #[cfg(test)]
    pub(crate) fn queued_for_test(&self) -> usize {
        self.queued.load(std::sync::atomic::Ordering::SeqCst)
    }

    #[cfg(test)]
    pub(crate) fn reserve_for_test(&self, n: usize) {
        assert_eq!(self.reserve(n), n);
    }

    #[cfg(test)]
    pub(crate) fn release_for_test(&self, n: usize) {
        self.release(n);
    }
}

/// Writes a plugin's queued Events (see `emit-events`), then gives their room back. Failures
/// are logged: an Event is best effort.
fn write_events(p: &PluginShared, res: &'static Resource, events: &[(String, Value)]) {
    let written = concurrently(events, |(namespace, obj)| {
        p.create(res, namespace, obj.clone())
    });
    p.events.release(events.len());
    let failed: Vec<_> = written.into_iter().filter_map(Result::err).collect();
    if let Some(e) = failed.first() {
        tracing::warn!(plugin = %p.name, failed = failed.len(), of = events.len(), error = %e.message, "plugin events not written");
    }
}

/// The most items one `bind-pods` or `create-all` call takes.
const MAX_BATCH: usize = 512;
/// Writes of one batch call in flight at once.
const BATCH_WRITERS: usize = 32;

fn many(n: usize) -> std::result::Result<(), WitApiError> {
    if n > MAX_BATCH {
        return Err(WitApiError::Invalid(format!(
            "{n} items in one call: at most {MAX_BATCH}"
        )));
    }
    Ok(())
}

/// `f` over `items`, up to [`BATCH_WRITERS`] at once, the results in order. Each write waits
/// for its commit; writes waiting together share one (the store's group commit), which is
/// what makes a batch faster than the same writes one after the other.
///
/// The wait happens in [`kedge_store::blocking`], so the guests' runtime moves its other tasks
/// off this worker meanwhile, as for a single write. A chunk whose thread cannot be started
/// (a thread limit) is written on this one.
fn concurrently<T: Sync, R: Send>(items: &[T], f: impl Fn(&T) -> R + Sync) -> Vec<R> {
    if items.len() <= 1 {
        return items.iter().map(&f).collect();
    }
    let per_thread = items.len().div_ceil(BATCH_WRITERS);
    kedge_store::blocking(|| {
        std::thread::scope(|s| {
            let f = &f;
            let handles: Vec<_> = items
                .chunks(per_thread)
                .map(|chunk| {
                    let spawned = std::thread::Builder::new()
                        .name("kedge-batch-write".into())
                        .spawn_scoped(s, move || chunk.iter().map(f).collect::<Vec<R>>());
                    (chunk, spawned.ok())
                })
                .collect();
            handles
                .into_iter()
                .flat_map(|(chunk, h)| match h {
                    Some(h) => h.join().expect("a batch writer panicked"),
                    None => chunk.iter().map(f).collect(),
                })
                .collect()
        })
    })
}

pub(crate) fn wit_error(e: ApiError) -> WitApiError {
    let m = e.message.clone();
    match (e.code, e.reason) {
        (404, _) => WitApiError::NotFound(m),
        (409, "AlreadyExists") => WitApiError::AlreadyExists(m),
        (409, _) => WitApiError::Conflict(m),
        (400 | 422, _) => WitApiError::Invalid(m),
        (401 | 403, _) => WitApiError::Forbidden(m),
        _ => WitApiError::Other(m),
    }
}

impl PluginShared {
    pub(crate) fn readable(
        &self,
        av: &str,
        kind: &str,
    ) -> std::result::Result<&'static Resource, WitApiError> {
        let res = resources::by_kind(av, kind)
            .filter(|r| self.perms.readable.contains(r))
            .ok_or_else(|| {
                WitApiError::Forbidden(format!("plugin {} did not declare {av}/{kind}", self.name))
            })?;
        if !self.granted(|g| g.reads.contains(res)) {
            return Err(WitApiError::Forbidden(format!(
                "plugin {}: the Plugin's grant no longer includes {av}/{kind}",
                self.name
            )));
        }
        Ok(res)
    }

    /// The metrics kind `av`/`kind` names, if it names one: readable when the plugin declared
    /// it and its grant (`spec.watches`) includes it.
    pub(crate) fn metrics_kind(
        &self,
        av: &str,
        kind: &str,
    ) -> Option<std::result::Result<&'static Resource, WitApiError>> {
        let res = kedge_api::resource_metrics::by_kind(av, kind)?;
        if !self.perms.metrics.iter().any(|r| std::ptr::eq(*r, res)) {
            return Some(Err(WitApiError::Forbidden(format!(
                "plugin {} did not declare {av}/{kind}",
                self.name
            ))));
        }
        if !self.granted(|g| g.reads.contains(res)) {
            return Some(Err(WitApiError::Forbidden(format!(
                "plugin {}: the Plugin's grant no longer includes {av}/{kind}",
                self.name
            ))));
        }
        Some(Ok(res))
    }

    /// NodeMetrics or PodMetrics from the nodes' latest usage reports (what
    /// `metrics.k8s.io` serves), as the standard JSON objects.
    pub(crate) fn read_metrics(
        &self,
        res: &'static Resource,
        namespace: &str,
        name: Option<&str>,
        labels: &LabelSelector,
    ) -> std::result::Result<Vec<Value>, WitApiError> {
        let now = std::time::Instant::now();
        let usage = self.api.usage();
        if res.namespaced {
            let fields = kedge_core::selector::FieldSelector::default();
            usage.pods(&self.api, namespace, name, labels, &fields, now)
        } else {
            usage.nodes(&self.api, name, labels, now)
        }
        .map_err(wit_error)
    }

    pub(crate) fn writable(
        &self,
        av: &str,
        kind: &str,
    ) -> std::result::Result<&'static Resource, WitApiError> {
        let res = resources::by_kind(av, kind)
            .filter(|r| self.perms.writable.contains(r))
            .ok_or_else(|| {
                WitApiError::Forbidden(format!(
                    "plugin {} may not write {av}/{kind}: not in its declared writes",
                    self.name
                ))
            })?;
        if !self.granted(|g| g.writes.contains(res)) {
            return Err(WitApiError::Forbidden(format!(
                "plugin {} may not write {av}/{kind}: the Plugin's spec.writes no longer \
                 includes it",
                self.name
            )));
        }
        Ok(res)
    }

    pub(crate) fn granted(&self, check: impl FnOnce(&Grant) -> bool) -> bool {
        match &*self.grant.read().unwrap_or_else(|p| p.into_inner()) {
            Some(g) => check(g),
            None => true,
        }
    }

    pub(crate) fn write_options() -> WriteOptions {
        // Plugins get strict decoding: an unknown field is a plugin bug worth surfacing.
        WriteOptions {
            validation: FieldValidation::Strict,
            ..Default::default()
        }
    }

    /// PUT of a whole object or (`sub`) its status, recorded in the cache on success.
    pub(crate) fn put(
        &self,
        res: &'static Resource,
        namespace: &str,
        body: &str,
        sub: Option<&str>,
    ) -> std::result::Result<String, WitApiError> {
        let obj = parse_body(body)?;
        let name = meta::name(&obj).to_string();
        let out = self
            .api
            .update(res, namespace, &name, obj, sub, &Self::write_options())
            .map_err(wit_error)?;
        self.record_write(res, &out);
        Ok(out.to_string())
    }

    pub(crate) fn delete(
        &self,
        api_version: &str,
        kind: &str,
        namespace: &str,
        name: &str,
        opts: DeleteOptions,
    ) -> std::result::Result<(), WitApiError> {
        let res = self.writable(api_version, kind)?;
        let out = self
            .api
            .delete(res, namespace, name, &opts)
            .map_err(wit_error)?;
        // Gone, or only marked for deletion (graceful pods, finalizers)?
        let gone = self.api.get(res, namespace, name).is_err();
        self.record(
            res,
            if gone {
                EventType::Deleted
            } else {
                EventType::Modified
            },
            &out,
        );
        Ok(())
    }

    /// Records an update or patch: a write that removed the last finalizer of an object
    /// being deleted deleted it.
    pub(crate) fn record_write(&self, res: &'static Resource, out: &Value) {
        // The API returns the object as it was stored before the delete (finalizers and all),
        // and a pod terminating gracefully has a deletionTimestamp yet exists: ask the
        // store. Recording a deleted object as modified would leave a ghost in the cache
        // (its deletion event carries the same revision and would be ignored).
        let gone = out.pointer("/metadata/deletionTimestamp").is_some()
            && self
                .api
                .get(res, meta::namespace(out), meta::name(out))
                .is_err();
        let kind = if gone {
            EventType::Deleted
        } else {
            EventType::Modified
        };
        self.record(res, kind, out);
    }

    pub(crate) fn record(&self, res: &'static Resource, kind: EventType, obj: &Value) {
        self.informers.get(res).write_through(kind, obj.clone());
    }

    /// Creates `obj` as this plugin and records it in the cache at once.
    fn create(
        &self,
        res: &'static Resource,
        ns: &str,
        obj: Value,
    ) -> std::result::Result<Value, ApiError> {
        let created = self.api.create(res, ns, obj, &Self::write_options())?;
        self.record(res, EventType::Added, &created);
        Ok(created)
    }
}

#[cfg(test)]
impl HostState {
    /// A plugin's host state for calling host functions directly: the permissions its
    /// registration asks for, no grant.
    pub(crate) fn for_test(api: &Arc<Api>, reg: &Registration) -> HostState {
        HostState {
            plugin: Arc::new(PluginShared {
                name: reg.name.clone(),
                api: api.clone(),
                informers: Arc::new(Informers::new(
                    api.store().clone(),
                    tokio_util::sync::CancellationToken::new(),
                )),
                perms: Permissions::from_registration(reg, &[]).unwrap(),
                grant: Default::default(),
                events: Default::default(),
            }),
            limits: Default::default(),
            wasi: WasiCtx::builder().build(),
            table: Default::default(),
        }
    }
}

pub(crate) fn parse_body(body: &str) -> std::result::Result<Value, WitApiError> {
    serde_json::from_str(body).map_err(|e| WitApiError::Invalid(format!("body is not JSON: {e}")))
}

impl self::kedge::plugin::types::Host for HostState {}

impl self::kedge::plugin::cluster::Host for HostState {
    fn get(
        &mut self,
        api_version: String,
        kind: String,
        namespace: String,
        name: String,
    ) -> std::result::Result<Option<String>, WitApiError> {
        let p = &self.plugin;
        if let Some(res) = p.metrics_kind(&api_version, &kind) {
            let found = p.read_metrics(res?, &namespace, Some(&name), &LabelSelector::default())?;
            return Ok(found.first().map(Value::to_string));
        }
        let res = p.readable(&api_version, &kind)?;
        // Straight from the store, not the informer cache: a controller deciding on one
        // object (adopt or not, is it being deleted) must see its latest state, as
        // Kubernetes' controllers re-read an owner uncached before adopting. Lists stay
        // cached. A namespace given for a cluster-scoped kind (an owner looked up from its
        // dependent's namespace) is ignored.
        let namespace = if res.namespaced {
            namespace.as_str()
        } else {
            ""
        };
        match p.api.get(res, namespace, &name) {
            Ok(o) => Ok(Some(o.to_string())),
            Err(e) if e.code == 404 => Ok(None),
            Err(e) => Err(wit_error(e)),
        }
    }

    fn list(
        &mut self,
        api_version: String,
        kind: String,
        namespace: String,
        label_selector: String,
    ) -> std::result::Result<Vec<String>, WitApiError> {
        let p = &self.plugin;
        let sel = LabelSelector::parse(&label_selector)
            .map_err(|e| WitApiError::Invalid(e.to_string()))?;
        if let Some(res) = p.metrics_kind(&api_version, &kind) {
            let found = p.read_metrics(res?, &namespace, None, &sel)?;
            return Ok(found.iter().map(Value::to_string).collect());
        }
        if is_wildcard(&api_version, &kind) {
            // Everything the plugin may read (in `namespace`: namespaced kinds only).
            let mut out = Vec::new();
            for res in p.perms.readable.iter() {
                if (!namespace.is_empty() && !res.namespaced)
                    || !p.granted(|g| g.reads.contains(res))
                {
                    continue;
                }
                out.extend(
                    p.informers
                        .get(res)
                        .list_raw(&namespace, &sel)
                        .iter()
                        .map(|o| o.to_string()),
                );
            }
            return Ok(out);
        }
        let res = p.readable(&api_version, &kind)?;
        Ok(p.informers
            .get(res)
            .list_raw(&namespace, &sel)
            .iter()
            .map(|o| o.to_string())
            .collect())
    }

    fn create(
        &mut self,
        api_version: String,
        kind: String,
        namespace: String,
        body: String,
    ) -> std::result::Result<String, WitApiError> {
        let p = &self.plugin;
        let res = p.writable(&api_version, &kind)?;
        let obj = parse_body(&body)?;
        let created = p.create(res, &namespace, obj).map_err(wit_error)?;
        Ok(created.to_string())
    }

    fn update(
        &mut self,
        api_version: String,
        kind: String,
        namespace: String,
        body: String,
    ) -> std::result::Result<String, WitApiError> {
        let p = &self.plugin;
        let res = p.writable(&api_version, &kind)?;
        p.put(res, &namespace, &body, None)
    }

    fn update_status(
        &mut self,
        api_version: String,
        kind: String,
        namespace: String,
        body: String,
    ) -> std::result::Result<String, WitApiError> {
        let p = &self.plugin;
        let res = p.writable(&api_version, &kind)?;
        if !res.has("status") {
            return Err(WitApiError::Invalid(format!(
                "{kind} has no status subresource"
            )));
        }
        p.put(res, &namespace, &body, Some("status"))
    }

    fn patch(
        &mut self,
        api_version: String,
        kind: String,
        namespace: String,
        name: String,
        patch: String,
    ) -> std::result::Result<String, WitApiError> {
        let p = &self.plugin;
        let res = p.writable(&api_version, &kind)?;
        let body = parse_body(&patch)?;
        let out = p
            .api
            .patch(
                res,
                &namespace,
                &name,
                None,
                &body,
                PatchType::Merge,
                &PluginShared::write_options(),
            )
            .map_err(wit_error)?;
        p.record_write(res, &out);
        Ok(out.to_string())
    }

    fn delete(
        &mut self,
        api_version: String,
        kind: String,
        namespace: String,
        name: String,
    ) -> std::result::Result<(), WitApiError> {
        self.plugin.delete(
            &api_version,
            &kind,
            &namespace,
            &name,
            DeleteOptions::default(),
        )
    }

    fn delete_with(
        &mut self,
        api_version: String,
        kind: String,
        namespace: String,
        name: String,
        options: WitDeleteOptions,
    ) -> std::result::Result<(), WitApiError> {
        use kedge_api::ops::Propagation;
        let opts = DeleteOptions {
            propagation: options.propagation.map(|p| match p {
                WitPropagation::Background => Propagation::Background,
                WitPropagation::Foreground => Propagation::Foreground,
                WitPropagation::Orphan => Propagation::Orphan,
            }),
            precondition_uid: options.uid,
            precondition_rv: options.resource_version,
            ..Default::default()
        };
        self.plugin
            .delete(&api_version, &kind, &namespace, &name, opts)
    }

    fn dependents(&mut self, owner_uid: String) -> std::result::Result<Vec<String>, WitApiError> {
        let p = &self.plugin;
        let mut out = Vec::new();
        p.informers.owners().dependents(&owner_uid, |d| {
            if p.perms.readable.contains(d.res)
                && p.granted(|g| g.reads.contains(d.res))
                && let Some(o) = p.informers.get(d.res).get_raw(d.namespace, d.name)
            {
                out.push(o.to_string());
            }
        });
        Ok(out)
    }

    fn bind_pod(
        &mut self,
        namespace: String,
        name: String,
        node: String,
    ) -> std::result::Result<(), WitApiError> {
        let p = &self.plugin;
        let res = p.writable("v1", "Pod")?;
        let binding = serde_json::json!({"target": {"kind": "Node", "name": node}});
        let out = p.api.bind(&namespace, &name, &binding).map_err(wit_error)?;
        p.record(res, EventType::Modified, &out);
        Ok(())
    }

    fn bind_pods(
        &mut self,
        bindings: Vec<PodBinding>,
    ) -> Vec<std::result::Result<(), WitApiError>> {
        let p = &self.plugin;
        let res = match many(bindings.len()).and_then(|()| p.writable("v1", "Pod")) {
            Ok(res) => res,
            Err(e) => return bindings.iter().map(|_| Err(e.clone())).collect(),
        };
        concurrently(&bindings, |b| {
            let binding = serde_json::json!({
                "metadata": {"uid": b.uid},
                "target": {"kind": "Node", "name": b.node},
            });
            let out = p
                .api
                .bind(&b.namespace, &b.name, &binding)
                .map_err(wit_error)?;
            p.record(res, EventType::Modified, &out);
            Ok(())
        })
    }

    fn create_all(
        &mut self,
        api_version: String,
        kind: String,
        items: Vec<(String, String)>,
    ) -> Vec<std::result::Result<String, WitApiError>> {
        let p = &self.plugin;
        let res = match many(items.len()).and_then(|()| p.writable(&api_version, &kind)) {
            Ok(res) => res,
            Err(e) => return items.iter().map(|_| Err(e.clone())).collect(),
        };
        concurrently(&items, |(namespace, body)| {
            let obj = parse_body(body)?;
            let created = p.create(res, namespace, obj).map_err(wit_error)?;
            Ok(created.to_string())
        })
    }

    fn emit_events(
        &mut self,
        items: Vec<(String, String)>,
    ) -> std::result::Result<u32, WitApiError> {
        many(items.len())?;
        let p = self.plugin.clone();
        let res = p.writable("v1", "Event")?;
        let mut events = items
            .into_iter()
            .map(|(namespace, body)| Ok((namespace, parse_body(&body)?)))
            .collect::<std::result::Result<Vec<_>, WitApiError>>()?;
        let room = p.events.reserve(events.len());
        if room < events.len() {
            tracing::warn!(plugin = %p.name, dropped = events.len() - room, "plugin events dropped: {EVENT_QUEUE} are waiting to be written");
            events.truncate(room);
        }
        if events.is_empty() {
            return Ok(0);
        }
        let queued = events.len() as u32;
        let (writer, batch) = (p.clone(), events);
        let spawned = std::thread::Builder::new()
            .name("kedge-plugin-events".into())
            .spawn(move || write_events(&writer, res, &batch));
        if let Err(e) = spawned {
            // No thread to write them on (a thread limit): dropped, their room given back.
            p.events.release(queued as usize);
            tracing::warn!(plugin = %p.name, error = %e, "plugin events dropped: no thread to write them");
            return Ok(0);
        }
        Ok(queued)
    }

    fn now(&mut self) -> String {
        self.plugin.api.now()
    }

    fn log(&mut self, level: LogLevel, message: String) {
        let plugin = self.plugin.name.as_str();
        match level {
            LogLevel::Error => tracing::error!(plugin, "{message}"),
            LogLevel::Warn => tracing::warn!(plugin, "{message}"),
            LogLevel::Info => tracing::info!(plugin, "{message}"),
            LogLevel::Debug => tracing::debug!(plugin, "{message}"),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// Batch writes keep their order, run some at once, and refuse more than the limit.
    #[test]
    fn batch_writes_run_together_in_order() {
        let in_flight = std::sync::atomic::AtomicUsize::new(0);
        let most = std::sync::atomic::AtomicUsize::new(0);
        let items: Vec<usize> = (0..100).collect();
        let out = concurrently(&items, |i| {
            use std::sync::atomic::Ordering::SeqCst;
            let now = in_flight.fetch_add(1, SeqCst) + 1;
            most.fetch_max(now, SeqCst);
            std::thread::sleep(std::time::Duration::from_millis(5));
            in_flight.fetch_sub(1, SeqCst);
            i * 2
        });
        assert_eq!(out, items.iter().map(|i| i * 2).collect::<Vec<_>>());
        let most = most.into_inner();
        assert!((2..=BATCH_WRITERS).contains(&most), "{most} writes at once");
        assert_eq!(concurrently(&[7], |i| *i), [7]);
        assert!(concurrently(&[] as &[u8], |i| *i).is_empty());
        assert!(many(MAX_BATCH).is_ok());
        assert!(matches!(many(MAX_BATCH + 1), Err(WitApiError::Invalid(_))));
    }
}
