//! The pod sync loop: the watch on the node's pods, one worker per pod that starts its
//! containers, keeps their status and stops them, and the local records that let the agent
//! run its pods again after a restart.

use std::collections::HashMap;
use std::path::PathBuf;
use std::sync::Arc;
use std::time::Duration;

use kedge_core::meta;
use kedge_core::pod::is_sidecar;
use serde_json::{Value, json};
use tokio::sync::watch;
use tokio_util::sync::CancellationToken;

use super::status::{self, ContainerRecord, Role};
use super::{Ctx, Shared, container, container_counts, events, pod_cache, spec};
use kedge_runtime::restart::RestartPolicy;

struct PodWorker {
    pub(crate) cancel: CancellationToken,
    pub(crate) done: watch::Receiver<bool>,
    terminating: bool,
    /// How long containers get between TERM and KILL: the pod's
    /// `terminationGracePeriodSeconds`, replaced by the deletion's grace period.
    pub(crate) grace: watch::Sender<Duration>,
    /// The pod as last seen in the API (its labels, annotations, conditions others set,
    /// `activeDeadlineSeconds` may change while it runs).
    latest: watch::Sender<Value>,
}

/// Kubernetes' default `terminationGracePeriodSeconds`.
const DEFAULT_GRACE: Duration = Duration::from_secs(30);

fn grace_of(pod: &Value) -> Duration {
    pod.pointer("/metadata/deletionGracePeriodSeconds")
        .or_else(|| pod.pointer("/spec/terminationGracePeriodSeconds"))
        .and_then(Value::as_u64)
        .map_or(DEFAULT_GRACE, Duration::from_secs)
}

pub(crate) async fn pod_sync_loop(
    ctx: Ctx,
    tasks: tokio_util::task::TaskTracker,
    cancel: CancellationToken,
) {
    let mut workers: HashMap<String, PodWorker> = HashMap::new();
    let selector = format!("spec.nodeName={}", ctx.node);
    let q = url::form_urlencoded::Serializer::new(String::new())
        .append_pair("fieldSelector", &selector)
        .finish();
    let mut failures = 0u32;
    // Where the next watch starts; `None` until listed, and again after 410 Gone. A watch
    // that merely broke (tunnel lost, server-side timeout) resumes from here without a
    // relist, as client-go's reflector does: a relist of every pod per reconnect is what
    // a fleet of flapping edge links cannot afford.
    let mut resume: Option<String> = None;
    // Offline autonomy: the pods this node ran before start again at once from the agent's
    // own record, server or not; the first list below reconciles them with the API (pods
    // deleted meanwhile are stopped, status is re-sent).
    for pod in pod_cache::load(&ctx.data_dir) {
        tracing::info!(pod = %format!("{}/{}", meta::namespace(&pod), meta::name(&pod)), "starting pod from the local record");
        observe_pod(&ctx, &tasks, &mut workers, pod, false);
    }
    ctx.objects.prune(|| pod_cache::peek(&ctx.data_dir));
    'relist: loop {
        if failures > 0 {
            let wait = Duration::from_millis(200 * (1 << failures.min(5)));
            tokio::select! {
                _ = cancel.cancelled() => break,
                _ = tokio::time::sleep(wait) => {}
                // The tunnel is back after an outage: resume at once, not at the next retry
                // (what changed meanwhile — a pod marked not Ready — is seen a round trip
                // after the reconnect).
                () = ctx.client.back_online() => {}
            }
        }
        let rv = match resume.clone() {
            Some(rv) => {
                tracing::debug!(rv, "resuming the pod watch");
                rv
            }
            None => {
                let list_path = format!("/api/v1/pods?{q}");
                let list = tokio::select! {
                    _ = cancel.cancelled() => break,
                    l = ctx.client.get(&list_path) => l,
                };
                let list = match list {
                    Ok(l) => l,
                    Err(e) => {
                        failures += 1;
                        tracing::debug!(error = %e, "listing pods failed");
                        continue;
                    }
                };
                let rv = list["metadata"]["resourceVersion"]
                    .as_str()
                    .unwrap_or("0")
                    .to_string();
                let items = list["items"].as_array().cloned().unwrap_or_default();
                tracing::debug!(rv, pods = items.len(), "pods listed");
                let present: Vec<String> = items.iter().map(|p| meta::uid(p).to_string()).collect();
                // Pods that disappeared while we were not watching.
                workers.retain(|uid, w| {
                    let keep = present.contains(uid);
                    if !keep {
                        w.cancel.cancel();
                        forget_pod(&ctx, uid);
                    }
                    keep
                });
                for p in items {
                    observe_pod(&ctx, &tasks, &mut workers, p, false);
                }
                let live: Vec<String> = workers.keys().cloned().collect();
                ctx.net().collect_garbage(&live).await;
                resume = Some(rv.clone());
                rv
            }
        };
        let watch_path =
            format!("/api/v1/pods?{q}&watch=true&resourceVersion={rv}&allowWatchBookmarks=true");
        let watch = tokio::select! {
            _ = cancel.cancelled() => break,
            w = ctx.client.watch(&watch_path) => w,
        };
        let mut w = match watch {
            Ok(w) => w,
            Err(e) => {
                failures += 1;
                if e.code() == Some(410) {
                    resume = None;
                }
                tracing::debug!(error = %e, "watching pods failed");
                continue;
            }
        };
        failures = 0;
        loop {
            let ev = tokio::select! {
                _ = cancel.cancelled() => break 'relist,
                e = w.next() => e,
            };
            let Some(Ok(ev)) = ev else {
                failures = 1;
                continue 'relist;
            };
            resume = resume_point(resume, &ev);
            let obj = ev["object"].clone();
            match ev["type"].as_str() {
                Some("ADDED" | "MODIFIED") => observe_pod(&ctx, &tasks, &mut workers, obj, false),
                Some("DELETED") => observe_pod(&ctx, &tasks, &mut workers, obj, true),
                Some("ERROR") => {
                    tracing::debug!(status = %obj, "pod watch error; relisting");
                    continue 'relist;
                }
                _ => {}
            }
        }
    }
    // The agent is shutting down: stop its containers, quickly (kubelet's shutdown grace).
    for w in workers.values() {
        let _ = w.grace.send(SHUTDOWN_GRACE);
        w.cancel.cancel();
    }
}

/// `<dir>/<uid>.json`, for a pod's uid; `None` for anything but a UUID, which must not become
/// a path.
pub(crate) fn uid_file(dir: &std::path::Path, uid: &str) -> Option<PathBuf> {
    let safe = !uid.is_empty() && uid.bytes().all(|b| b.is_ascii_alphanumeric() || b == b'-');
    safe.then(|| dir.join(format!("{uid}.json")))
}

/// Forgets a pod's record, and the local copies of objects only it used.
pub(crate) fn forget_pod(ctx: &Shared, uid: &str) {
    pod_cache::forget(&ctx.data_dir, uid);
    container_counts::forget(&ctx.data_dir, uid);
    ctx.objects.prune(|| pod_cache::peek(&ctx.data_dir));
}

/// Grace period of containers when the agent itself stops.
const SHUTDOWN_GRACE: Duration = Duration::from_secs(3);

/// The revision the pod watch resumes from after `ev`. An ERROR event is the server saying
/// our revision is gone (410: compacted away), the one case that needs a relist.
pub(crate) fn resume_point(current: Option<String>, ev: &Value) -> Option<String> {
    if ev["type"] == "ERROR" {
        return None;
    }
    ev.pointer("/object/metadata/resourceVersion")
        .and_then(Value::as_str)
        .filter(|rv| !rv.is_empty())
        .map(String::from)
        .or(current)
}

/// Starts, keeps or stops the worker of one pod.
fn observe_pod(
    ctx: &Ctx,
    tasks: &tokio_util::task::TaskTracker,
    workers: &mut HashMap<String, PodWorker>,
    pod: Value,
    deleted: bool,
) {
    let uid = meta::uid(&pod).to_string();
    if deleted {
        forget_pod(ctx, &uid);
        let done = workers.remove(&uid).map(|w| {
            w.cancel.cancel();
            w.done
        });
        let ctx = ctx.clone();
        tasks.spawn(async move {
            if let Some(mut done) = done {
                let _ = done.wait_for(|d| *d).await;
            }
            remove_pod_dirs(&ctx, &pod).await;
        });
        return;
    }
    let terminating = pod.pointer("/metadata/deletionTimestamp").is_some();
    let finished = matches!(
        pod.pointer("/status/phase").and_then(Value::as_str),
        Some("Succeeded" | "Failed")
    );
    match workers.get_mut(&uid) {
        None if terminating => {
            // Not running here (e.g. after an agent restart): just confirm the deletion.
            forget_pod(ctx, &uid);
            let ctx = ctx.clone();
            tasks.spawn(async move {
                remove_pod_dirs(&ctx, &pod).await;
                confirm_deletion(&ctx, &pod).await
            });
        }
        None if finished => {}
        None => {
            let cancel = CancellationToken::new();
            let (done_tx, done_rx) = watch::channel(false);
            let (grace_tx, grace_rx) = watch::channel(grace_of(&pod));
            let (latest_tx, latest_rx) = watch::channel(pod.clone());
            workers.insert(
                uid.clone(),
                PodWorker {
                    cancel: cancel.clone(),
                    done: done_rx,
                    terminating: false,
                    grace: grace_tx,
                    latest: latest_tx,
                },
            );
            pod_cache::remember(&ctx.data_dir, &pod);
            let ctx = ctx.clone();
            tasks.spawn(async move {
                let stopped = cancel.clone();
                run_pod(&ctx, pod, cancel, grace_rx, latest_rx).await;
                if !stopped.is_cancelled() {
                    // Finished on its own (restartPolicy Never/OnFailure): not to be run again,
                    // and its address goes back to the node's range, as kubelet tears down a
                    // finished pod's sandbox.
                    forget_pod(&ctx, &uid);
                    ctx.net().teardown(&uid).await;
                }
                ctx.events.forget_pod(&uid);
                let _ = done_tx.send(true);
            });
        }
        Some(w) if terminating && !w.terminating => {
            forget_pod(ctx, &uid);
            w.terminating = true;
            let _ = w.grace.send(grace_of(&pod));
            w.cancel.cancel();
            let mut done = w.done.clone();
            let ctx = ctx.clone();
            tasks.spawn(async move {
                for c in pod
                    .pointer("/spec/containers")
                    .and_then(Value::as_array)
                    .into_iter()
                    .flatten()
                {
                    let name = c["name"].as_str().unwrap_or_default();
                    ctx.events
                        .pod(
                            &pod,
                            Some(name),
                            events::Kind::Normal,
                            "Killing",
                            &format!("Stopping container {name}"),
                        )
                        .await;
                }
                let _ = done.wait_for(|d| *d).await;
                remove_pod_dirs(&ctx, &pod).await;
                confirm_deletion(&ctx, &pod).await;
            });
        }
        Some(w) => {
            // Labels and annotations feed downwardAPI volumes, rewritten from the record.
            let meta_changed = {
                let seen = w.latest.borrow();
                ["/metadata/labels", "/metadata/annotations"]
                    .iter()
                    .any(|p| seen.pointer(p) != pod.pointer(p))
            };
            if meta_changed && !w.terminating {
                pod_cache::remember(&ctx.data_dir, &pod);
            }
            w.latest.send_replace(pod);
        }
    }
}

/// Where a pod's logs and volumes live on this node.
pub(crate) fn pod_dirs(ctx: &Shared, pod: &Value) -> spec::PodDirs {
    let (ns, name, uid) = (meta::namespace(pod), meta::name(pod), meta::uid(pod));
    let shm = std::path::Path::new("/dev/shm");
    spec::PodDirs {
        disk: ctx.pods_dir.join(format!("{ns}_{name}_{uid}")),
        memory: if shm.is_dir() {
            shm.join("kedge").join(uid)
        } else {
            ctx.pods_dir
                .join(format!("{ns}_{name}_{uid}"))
                .join("memory")
        },
    }
}

/// Removes a stopped pod's logs and emptyDir volumes.
async fn remove_pod_dirs(ctx: &Ctx, pod: &Value) {
    ctx.net().teardown(meta::uid(pod)).await;
    let dirs = pod_dirs(ctx, pod);
    for d in [dirs.disk, dirs.memory] {
        match tokio::fs::remove_dir_all(&d).await {
            Ok(()) => {}
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => {}
            Err(e) => tracing::warn!(dir = %d.display(), error = %e, "removing pod files failed"),
        }
    }
}

/// Tells the API the pod's containers are stopped: delete with a zero grace period, only if
/// it is still the same pod (uid precondition).
async fn confirm_deletion(ctx: &Ctx, pod: &Value) {
    let path = Shared::pod_path(meta::namespace(pod), meta::name(pod));
    let body = json!({"kind": "DeleteOptions", "apiVersion": "v1", "gracePeriodSeconds": 0,
        "preconditions": {"uid": meta::uid(pod)}});
    match ctx.client.delete(&path, &body).await {
        Ok(_) => tracing::debug!(pod = %path, "pod deletion confirmed"),
        Err(e) if matches!(e.code(), Some(404 | 409)) => {}
        Err(e) => tracing::warn!(pod = %path, error = %e, "confirming pod deletion failed"),
    }
}

/// The records of one pod's containers and the serialised status writer.
pub(crate) struct PodRun {
    pub(crate) ns: String,
    pub(crate) name: String,
    pub(crate) uid: String,
    /// The container counts as last written to the node's disk.
    pub(crate) counts: std::sync::Mutex<container_counts::Record>,
    pub(crate) records: tokio::sync::Mutex<Vec<ContainerRecord>>,
    /// The status as last read or written, to keep fields the agent does not own.
    last_status: tokio::sync::Mutex<Value>,
    /// The last status write did not land (the server was unreachable): it is retried until
    /// it does, as kubelet's status manager resyncs, or a pod that finished while the link
    /// was down would stay Running in the API for good.
    unsynced: std::sync::atomic::AtomicBool,
    /// The resourceVersion the last status write landed at: pod events older than it do not
    /// show that write yet, and are not taken as someone else's change.
    written: std::sync::atomic::AtomicU64,
    /// Bumped at every change of the records (what waits on a container watches it).
    changes: watch::Sender<u64>,
    facts: std::sync::Mutex<status::PodFacts>,
}

/// How often a pod's conditions in the API are compared with the agent's own.
const CONDITIONS_RESYNC: Duration = Duration::from_secs(10);

/// First and longest wait between retries of a status write that did not land.
const STATUS_RETRY_START: Duration = Duration::from_secs(1);
const STATUS_RETRY_CAP: Duration = Duration::from_secs(10);

impl PodRun {
    pub(crate) async fn update(&self, ctx: &Ctx, i: usize, f: impl FnOnce(&mut ContainerRecord)) {
        let mut recs = self.records.lock().await;
        f(&mut recs[i]);
        self.changes.send_modify(|n| *n += 1);
        let counts = container_counts::of(&recs);
        {
            let mut saved = self.counts.lock().unwrap_or_else(|p| p.into_inner());
            if *saved != counts {
                // A synced file write: off the async workers.
                kedge_store::blocking(|| container_counts::save(&ctx.data_dir, &self.uid, &counts));
                *saved = counts;
            }
        }
        let mut last = self.last_status.lock().await;
        let status = status::pod_status(&last, &recs, &self.facts(), &ctx.host_ip, &ctx.now());
        drop(recs);
        self.write(ctx, &mut last, status).await;
    }

    /// The agent's own conditions changed by someone else — the node lifecycle controller
    /// marks the pods of a node it cannot hear from not Ready, as Kubernetes' does — are
    /// written back as the agent sees them once the change reaches it, with a new transition
    /// time (kubelet's status manager reconciles the same way). Events from before the
    /// agent's last write, and a write still pending, are left alone.
    async fn reassert(&self, ctx: &Ctx, pod: &Value) {
        use std::sync::atomic::Ordering;
        let rv = pod
            .pointer("/metadata/resourceVersion")
            .and_then(Value::as_str)
            .and_then(|v| v.parse::<u64>().ok())
            .unwrap_or(u64::MAX);
        if rv <= self.written.load(Ordering::Relaxed) || self.unsynced() {
            tracing::trace!(pod = %self.name, rv, "conditions not compared: own write newer or pending");
            return;
        }
        let gates = self.facts().gates;
        let recs = self.records.lock().await;
        let mut last = self.last_status.lock().await;
        let theirs = pod
            .pointer("/status/conditions")
            .and_then(Value::as_array)
            .cloned()
            .unwrap_or_default();
        let Some(ours) = last["conditions"].as_array_mut() else {
            return;
        };
        let mut changed = false;
        for c in ours.iter_mut() {
            let ty = c["type"].as_str().unwrap_or_default();
            if gates.iter().any(|g| g == ty) {
                continue;
            }
            if let Some(t) = theirs.iter().find(|t| t["type"] == ty)
                && t["status"] != c["status"]
            {
                // As the API has it: computing the status again is then a transition.
                *c = t.clone();
                changed = true;
            }
        }
        if !changed {
            return;
        }
        let status = status::pod_status(&last, &recs, &self.facts(), &ctx.host_ip, &ctx.now());
        drop(recs);
        tracing::info!(pod = %self.name, "pod conditions changed by another writer; writing the node's view back");
        self.write(ctx, &mut last, status).await;
    }

    /// Changes a record in what the status does not show (no write), waking what waits.
    pub(crate) async fn note(&self, i: usize, f: impl FnOnce(&mut ContainerRecord)) {
        f(&mut self.records.lock().await[i]);
        self.changes.send_modify(|n| *n += 1);
    }

    fn facts(&self) -> status::PodFacts {
        self.facts.lock().unwrap_or_else(|p| p.into_inner()).clone()
    }

    /// The pod changed in the API: the conditions of its readiness gates (which others set)
    /// are taken into the status, and the status is written again if that changes it.
    async fn pod_changed(&self, ctx: &Ctx, pod: &Value) {
        self.reassert(ctx, pod).await;
        let gates = self.facts().gates;
        if gates.is_empty() {
            return;
        }
        let recs = self.records.lock().await;
        let mut last = self.last_status.lock().await;
        let theirs: Vec<Value> = pod
            .pointer("/status/conditions")
            .and_then(Value::as_array)
            .into_iter()
            .flatten()
            .filter(|c| {
                c["type"]
                    .as_str()
                    .is_some_and(|t| gates.iter().any(|g| g == t))
            })
            .cloned()
            .collect();
        let mut merged = last.clone();
        if !merged["conditions"].is_array() {
            merged["conditions"] = json!([]);
        }
        if let Some(conds) = merged["conditions"].as_array_mut() {
            conds.retain(|c| {
                !c["type"]
                    .as_str()
                    .is_some_and(|t| gates.iter().any(|g| g == t))
            });
            conds.extend(theirs);
        }
        let before = status::pod_status(&last, &recs, &self.facts(), &ctx.host_ip, &ctx.now());
        let after = status::pod_status(&merged, &recs, &self.facts(), &ctx.host_ip, &ctx.now());
        drop(recs);
        *last = merged;
        if before["conditions"] != after["conditions"] {
            self.write(ctx, &mut last, after).await;
        }
    }

    /// Waits until the records satisfy `pred` (true) or `cancel` fires (false).
    pub(crate) async fn wait_until(
        &self,
        pred: impl Fn(&[ContainerRecord]) -> bool,
        cancel: &CancellationToken,
    ) -> bool {
        let mut changes = self.changes.subscribe();
        loop {
            if pred(&self.records.lock().await) {
                return true;
            }
            tokio::select! {
                _ = cancel.cancelled() => return false,
                r = changes.changed() => if r.is_err() { return false },
            }
        }
    }

    /// Writes the current status again if the last write did not land.
    async fn resync(&self, ctx: &Ctx) {
        let recs = self.records.lock().await;
        let mut last = self.last_status.lock().await;
        if !self.unsynced() {
            return;
        }
        let status = status::pod_status(&last, &recs, &self.facts(), &ctx.host_ip, &ctx.now());
        drop(recs);
        tracing::debug!(pod = %self.name, "writing the pod status again");
        self.write(ctx, &mut last, status).await;
    }

    fn unsynced(&self) -> bool {
        self.unsynced.load(std::sync::atomic::Ordering::Relaxed)
    }

    pub(crate) async fn write(&self, ctx: &Ctx, last: &mut Value, status: Value) {
        let path = format!("{}/status", Shared::pod_path(&self.ns, &self.name));
        let gates = self.facts().gates;
        let res = if gates.is_empty() {
            ctx.client
                .merge_patch(&path, &json!({"status": status}))
                .await
        } else {
            // The readiness gates' conditions belong to others: they are left out, and the
            // agent's own conditions merged by type, so a gate set meanwhile is not undone.
            let mut status = status;
            if let Some(conds) = status["conditions"].as_array_mut() {
                conds.retain(|c| {
                    !c["type"]
                        .as_str()
                        .is_some_and(|t| gates.iter().any(|g| g == t))
                });
            }
            ctx.client
                .strategic_patch(&path, &json!({"status": status}))
                .await
        };
        let landed = match res {
            Ok(p) => {
                *last = p["status"].clone();
                if let Some(rv) = p
                    .pointer("/metadata/resourceVersion")
                    .and_then(Value::as_str)
                    .and_then(|v| v.parse::<u64>().ok())
                {
                    self.written
                        .fetch_max(rv, std::sync::atomic::Ordering::Relaxed);
                }
                true
            }
            // The pod is gone: nothing left to report.
            Err(e) if e.code() == Some(404) => true,
            // Refused for good (not a conflict or an overload): retrying changes nothing.
            Err(e)
                if e.code()
                    .is_some_and(|c| (400..500).contains(&c) && ![408, 409, 429].contains(&c)) =>
            {
                tracing::warn!(pod = %self.name, error = %e, "status update refused");
                true
            }
            Err(e) => {
                tracing::warn!(pod = %self.name, error = %e, "status update failed; will retry");
                false
            }
        };
        self.unsynced
            .store(!landed, std::sync::atomic::Ordering::Relaxed);
    }

    /// Retries a status write that did not land, with back-off, until it lands or `stop`
    /// fires; with `forever`, goes on watching for the next failed write until `stop`.
    async fn retry_unsynced(&self, ctx: &Ctx, stop: &CancellationToken, forever: bool) {
        let mut wait = STATUS_RETRY_START;
        loop {
            if !forever && !self.unsynced() {
                return;
            }
            tokio::select! {
                _ = stop.cancelled() => return,
                _ = tokio::time::sleep(wait) => {}
            }
            if self.unsynced() {
                self.resync(ctx).await;
                wait = (wait * 2).min(STATUS_RETRY_CAP);
            } else {
                wait = STATUS_RETRY_START;
            }
        }
    }
}

/// Runs a pod's containers: the init containers one after the other (each to completion, a
/// sidecar until it has started), then the app containers together; sidecars are stopped
/// after the app containers, the last started first.
async fn run_pod(
    ctx: &Ctx,
    pod: Value,
    cancel: CancellationToken,
    grace: watch::Receiver<Duration>,
    latest: watch::Receiver<Value>,
) {
    let list = |key: &str| {
        pod.pointer(&format!("/spec/{key}"))
            .and_then(Value::as_array)
            .cloned()
            .unwrap_or_default()
    };
    let (init, containers) = (list("initContainers"), list("containers"));
    let n_init = init.len();
    let uid = meta::uid(&pod).to_string();
    // The pod's network first (its sandbox, in CRI's words): every container joins it.
    let Some(net) = pod_network(ctx, &pod, &cancel).await else {
        return;
    };
    let saved = container_counts::load(&ctx.data_dir, &uid);
    let now = ctx.now();
    let records: Vec<ContainerRecord> = init
        .iter()
        .map(|c| {
            (
                c,
                if is_sidecar(c) {
                    Role::Sidecar
                } else {
                    Role::Init
                },
            )
        })
        .chain(containers.iter().map(|c| (c, Role::App)))
        .map(|(c, role)| {
            let name = c["name"].as_str().unwrap_or_default();
            let mut r = ContainerRecord::new(name, c["image"].as_str().unwrap_or_default())
                .with_role(role)
                .with_probes(
                    c.get("startupProbe").is_some_and(|p| !p.is_null()),
                    c.get("readinessProbe").is_some_and(|p| !p.is_null()),
                );
            if let Some(counts) = saved.get(name) {
                container_counts::resume(&mut r, counts, &now);
            }
            r
        })
        .collect();
    let run = Arc::new(PodRun {
        ns: meta::namespace(&pod).to_string(),
        name: meta::name(&pod).to_string(),
        counts: std::sync::Mutex::new(saved),
        uid,
        records: tokio::sync::Mutex::new(records),
        last_status: tokio::sync::Mutex::new(pod.get("status").cloned().unwrap_or(json!({}))),
        unsynced: std::sync::atomic::AtomicBool::new(false),
        written: std::sync::atomic::AtomicU64::new(0),
        changes: watch::Sender::new(0),
        facts: std::sync::Mutex::new(status::PodFacts {
            gates: pod
                .pointer("/spec/readinessGates")
                .and_then(Value::as_array)
                .into_iter()
                .flatten()
                .filter_map(|g| g["conditionType"].as_str().map(String::from))
                .collect(),
            ended: None,
            pod_ip: net.as_ref().map(|n| n.ip.to_string()),
        }),
    });
    tracing::info!(pod = %format!("{}/{}", run.ns, run.name), "starting pod");
    let policy: RestartPolicy = pod
        .pointer("/spec/restartPolicy")
        .and_then(Value::as_str)
        .unwrap_or("Always")
        .parse()
        .unwrap_or(RestartPolicy::Always);
    // An init container is retried on failure unless the pod never restarts anything.
    let init_policy = match policy {
        RestartPolicy::Never => RestartPolicy::Never,
        _ => RestartPolicy::OnFailure,
    };
    // What stops the containers: the pod stopping, or its active deadline.
    let stop_all = cancel.child_token();
    let pods_seen = latest.clone();
    let mut sidecars: Vec<(CancellationToken, tokio::task::JoinHandle<()>)> = Vec::new();
    let body = async {
        for (i, c) in init.iter().enumerate() {
            if stop_all.is_cancelled() {
                return;
            }
            if is_sidecar(c) {
                // Its own token: it outlives the app containers when the pod stops.
                let stop = CancellationToken::new();
                let slot = container::Slot {
                    index: i,
                    restart: RestartPolicy::Always,
                    record_stop: true,
                    latest: pods_seen.clone(),
                };
                let (ctx2, pod2, c2, run2, stop2, grace2) = (
                    ctx.clone(),
                    pod.clone(),
                    c.clone(),
                    run.clone(),
                    stop.clone(),
                    grace.clone(),
                );
                let handle = tokio::spawn(async move {
                    container::run_container(&ctx2, &pod2, &c2, slot, &run2, stop2, grace2).await
                });
                sidecars.push((stop, handle));
                if !run
                    .wait_until(
                        |r| (r[i].is_started() && r[i].post_started) || r[i].completed(),
                        &stop_all,
                    )
                    .await
                {
                    return;
                }
            } else {
                let slot = container::Slot {
                    index: i,
                    restart: init_policy,
                    record_stop: false,
                    latest: pods_seen.clone(),
                };
                container::run_container(ctx, &pod, c, slot, &run, stop_all.clone(), grace.clone())
                    .await;
                if !run.records.lock().await[i].completed() {
                    // Stopped, or failed for good: the app containers never start.
                    return;
                }
            }
        }
        let mut set = tokio::task::JoinSet::new();
        for (j, c) in containers.iter().enumerate() {
            let slot = container::Slot {
                index: n_init + j,
                restart: policy,
                record_stop: false,
                latest: pods_seen.clone(),
            };
            let (ctx, pod, c, run2, cancel, grace) = (
                ctx.clone(),
                pod.clone(),
                c.clone(),
                run.clone(),
                stop_all.clone(),
                grace.clone(),
            );
            set.spawn(async move {
                container::run_container(&ctx, &pod, &c, slot, &run2, cancel, grace).await
            });
            // In order, each once the previous one runs with its postStart hook done (or
            // failed), as kubelet starts them.
            let k = n_init + j;
            if !run.wait_until(|r| r[k].lets_next_start(), &stop_all).await {
                break;
            }
        }
        while set.join_next().await.is_some() {}
    };
    // Node-pressure eviction may pick it while its containers run.
    let evictable = Arc::new(crate::eviction::Evictable {
        pod: pod.clone(),
        evict: CancellationToken::new(),
        why: std::sync::Mutex::new(None),
    });
    ctx.evictable
        .lock()
        .unwrap_or_else(|p| p.into_inner())
        .insert(meta::uid(&pod).to_string(), evictable.clone());
    let evicted = async {
        evictable.evict.cancelled().await;
        stop_all.cancel();
        std::future::pending::<()>().await;
    };
    // The pod as the API changes it: readiness gates' conditions, the active deadline
    // (counted from `startTime`, or from now for a pod that has none yet).
    let began = (ctx.clock)();
    let deadline_hit = std::sync::atomic::AtomicBool::new(false);
    let follow = async {
        let mut latest = latest;
        // Now and then the pod as last seen is compared with what the agent wrote, as
        // kubelet's status manager resyncs: a change of the agent's conditions by another
        // writer that slipped past (an event coalesced with the agent's own write, a write
        // lost with a connection) is set right within this time.
        let mut resync = tokio::time::interval(CONDITIONS_RESYNC);
        resync.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
        loop {
            let wait = active_deadline(ctx, &latest.borrow(), began);
            tokio::select! {
                changed = latest.changed() => {
                    if changed.is_err() {
                        std::future::pending::<()>().await;
                    }
                    let pod = latest.borrow_and_update().clone();
                    run.pod_changed(ctx, &pod).await;
                }
                _ = resync.tick() => {
                    let pod = latest.borrow().clone();
                    run.reassert(ctx, &pod).await;
                }
                () = sleep_or_forever(wait) => {
                    deadline_hit.store(true, std::sync::atomic::Ordering::Relaxed);
                    stop_all.cancel();
                    std::future::pending::<()>().await;
                }
            }
        }
    };
    let dirs = pod_dirs(ctx, &pod);
    // `never` keeps the retry loop alive exactly as long as the containers run.
    let never = CancellationToken::new();
    tokio::select! {
        () = body => {}
        () = run.retry_unsynced(ctx, &never, true) => {}
        () = follow => {}
        () = evicted => {}
        () = crate::sa_token::keep_fresh(ctx, &pod, &dirs) => {}
    }
    crate::sa_token::forget(ctx, meta::uid(&pod));
    ctx.evictable
        .lock()
        .unwrap_or_else(|p| p.into_inner())
        .remove(meta::uid(&pod));
    if !cancel.is_cancelled() {
        if deadline_hit.load(std::sync::atomic::Ordering::Relaxed) {
            let message = "Pod was active on the node longer than the specified deadline";
            end_pod(ctx, &pod, &run, "DeadlineExceeded", message.into()).await;
        } else if evictable.evict.is_cancelled() {
            let why = evictable
                .why
                .lock()
                .unwrap_or_else(|p| p.into_inner())
                .clone();
            end_pod(ctx, &pod, &run, "Evicted", why.unwrap_or_default()).await;
        }
    }
    // The app containers are done (or the pod is stopping): the sidecars go, together, so
    // the pod's grace period bounds them all.
    for (stop, _) in &sidecars {
        stop.cancel();
    }
    for (_, handle) in sidecars {
        let _ = handle.await;
    }
    // The containers' last word (Succeeded, Failed) must reach the API too.
    run.retry_unsynced(ctx, &cancel, false).await;
}

/// The pod's network, set up with retries as kubelet retries a sandbox
/// (`FailedCreatePodSandBox` Events); `Some(None)`: it uses the node's network; `None`: the
/// pod was stopped first.
async fn pod_network(
    ctx: &Ctx,
    pod: &Value,
    cancel: &CancellationToken,
) -> Option<Option<Arc<crate::network::PodNet>>> {
    let mut wait = Duration::from_secs(1);
    loop {
        match ctx.net().setup(pod).await {
            Ok(n) => return Some(n),
            Err(e) => {
                tracing::warn!(pod = %format!("{}/{}", meta::namespace(pod), meta::name(pod)), error = %e, "pod network setup failed");
                ctx.events
                    .pod(
                        pod,
                        None,
                        events::Kind::Warning,
                        "FailedCreatePodSandBox",
                        &format!("Failed to create pod sandbox: {e}"),
                    )
                    .await;
            }
        }
        tokio::select! {
            () = cancel.cancelled() => return None,
            () = tokio::time::sleep(wait) => {}
        }
        wait = (wait * 2).min(Duration::from_secs(30));
    }
}

/// How long until the pod's `activeDeadlineSeconds` (counted from its `status.startTime`,
/// or from now for a pod starting) runs out; `None` without one.
fn active_deadline(
    ctx: &Ctx,
    pod: &Value,
    began: chrono::DateTime<chrono::Utc>,
) -> Option<Duration> {
    let secs = pod.pointer("/spec/activeDeadlineSeconds")?.as_i64()?;
    let now = (ctx.clock)();
    let started = pod
        .pointer("/status/startTime")
        .and_then(Value::as_str)
        .and_then(|t| chrono::DateTime::parse_from_rfc3339(t).ok())
        .map_or(began, |t| t.with_timezone(&chrono::Utc));
    let end = started + chrono::Duration::seconds(secs.max(0));
    Some((end - now).to_std().unwrap_or(Duration::ZERO))
}

async fn sleep_or_forever(d: Option<Duration>) {
    match d {
        Some(d) => tokio::time::sleep(d).await,
        None => std::future::pending().await,
    }
}

/// The node ended the pod: its containers were stopped; it fails with kubelet's `reason`,
/// `message` and Warning Event (the active deadline ran out, or it was evicted).
async fn end_pod(ctx: &Ctx, pod: &Value, run: &PodRun, reason: &str, message: String) {
    tracing::info!(pod = %run.name, reason, %message, "the node ended the pod");
    ctx.events
        .pod(pod, None, events::Kind::Warning, reason, &message)
        .await;
    run.facts.lock().unwrap_or_else(|p| p.into_inner()).ended = Some((reason.into(), message));
    let now = ctx.now();
    let n = run.records.lock().await.len();
    let container_reason = match reason {
        "Evicted" => "Error",
        other => other,
    };
    for i in 0..n {
        let now = now.clone();
        run.update(ctx, i, move |r| r.ended_by_node(container_reason, now))
            .await;
    }
}
