//! The pod sync loop: the watch on the node's pods, one worker per pod that starts its
//! containers, keeps their status and stops them, and the local records that let the agent
//! run its pods again after a restart.

use std::collections::HashMap;
use std::path::PathBuf;
use std::sync::Arc;
use std::time::Duration;

use kedge_core::meta;
use serde_json::{Value, json};
use tokio::sync::watch;
use tokio_util::sync::CancellationToken;

use super::status::{self, ContainerRecord};
use super::{Ctx, Shared, container, container_counts, events, pod_cache, spec};

struct PodWorker {
    pub(crate) cancel: CancellationToken,
    pub(crate) done: watch::Receiver<bool>,
    terminating: bool,
    /// How long containers get between TERM and KILL: the pod's
    /// `terminationGracePeriodSeconds`, replaced by the deletion's grace period.
    pub(crate) grace: watch::Sender<Duration>,
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
            workers.insert(
                uid.clone(),
                PodWorker {
                    cancel: cancel.clone(),
                    done: done_rx,
                    terminating: false,
                    grace: grace_tx,
                },
            );
            pod_cache::remember(&ctx.data_dir, &pod);
            let ctx = ctx.clone();
            tasks.spawn(async move {
                let stopped = cancel.clone();
                run_pod(&ctx, pod, cancel, grace_rx).await;
                if !stopped.is_cancelled() {
                    // Finished on its own (restartPolicy Never/OnFailure): not to be run again.
                    forget_pod(&ctx, &uid);
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
        Some(_) => {}
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
}

/// First and longest wait between retries of a status write that did not land.
const STATUS_RETRY_START: Duration = Duration::from_secs(1);
const STATUS_RETRY_CAP: Duration = Duration::from_secs(10);

impl PodRun {
    pub(crate) async fn update(&self, ctx: &Ctx, i: usize, f: impl FnOnce(&mut ContainerRecord)) {
        let mut recs = self.records.lock().await;
        f(&mut recs[i]);
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
        let status = status::pod_status(&last, &recs, &ctx.host_ip, &ctx.now());
        drop(recs);
        self.write(ctx, &mut last, status).await;
    }

    /// Writes the current status again if the last write did not land.
    async fn resync(&self, ctx: &Ctx) {
        let recs = self.records.lock().await;
        let mut last = self.last_status.lock().await;
        if !self.unsynced() {
            return;
        }
        let status = status::pod_status(&last, &recs, &ctx.host_ip, &ctx.now());
        drop(recs);
        tracing::debug!(pod = %self.name, "writing the pod status again");
        self.write(ctx, &mut last, status).await;
    }

    fn unsynced(&self) -> bool {
        self.unsynced.load(std::sync::atomic::Ordering::Relaxed)
    }

    pub(crate) async fn write(&self, ctx: &Ctx, last: &mut Value, status: Value) {
        let path = format!("{}/status", Shared::pod_path(&self.ns, &self.name));
        let res = ctx
            .client
            .merge_patch(&path, &json!({"status": status}))
            .await;
        let landed = match res {
            Ok(p) => {
                *last = p["status"].clone();
                true
            }
            // The pod is gone: nothing left to report.
            Err(e) if e.code() == Some(404) => true,
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

async fn run_pod(
    ctx: &Ctx,
    pod: Value,
    cancel: CancellationToken,
    grace: watch::Receiver<Duration>,
) {
    let containers = pod
        .pointer("/spec/containers")
        .and_then(Value::as_array)
        .cloned()
        .unwrap_or_default();
    let uid = meta::uid(&pod).to_string();
    let saved = container_counts::load(&ctx.data_dir, &uid);
    let now = ctx.now();
    let records: Vec<ContainerRecord> = containers
        .iter()
        .map(|c| {
            let name = c["name"].as_str().unwrap_or_default();
            let mut r = ContainerRecord::new(name, c["image"].as_str().unwrap_or_default())
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
    });
    tracing::info!(pod = %format!("{}/{}", run.ns, run.name), "starting pod");
    let mut set = tokio::task::JoinSet::new();
    for (i, c) in containers.into_iter().enumerate() {
        let (ctx, pod, run, cancel, grace) = (
            ctx.clone(),
            pod.clone(),
            run.clone(),
            cancel.clone(),
            grace.clone(),
        );
        set.spawn(
            async move { container::run_container(&ctx, &pod, &c, i, &run, cancel, grace).await },
        );
    }
    let containers = async { while set.join_next().await.is_some() {} };
    // `never` keeps the retry loop alive exactly as long as the containers run.
    let never = CancellationToken::new();
    tokio::select! {
        () = containers => {}
        () = run.retry_unsynced(ctx, &never, true) => {}
    }
    // The containers' last word (Succeeded, Failed) must reach the API too.
    run.retry_unsynced(ctx, &cancel, false).await;
}
