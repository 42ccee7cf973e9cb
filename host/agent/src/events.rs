//! Events about pods, as kubelet records them (`Pulling`, `Pulled`, `Failed`, `BackOff`,
//! `Created`, `Started`, `Killing`), so `kubectl get events` and `kubectl describe pod` tell a
//! user why a container is not running.
//!
//! A repeat of the same event (same pod, container, reason and message) bumps `count` and
//! `lastTimestamp` of the existing Event instead of creating another, like client-go's event
//! correlator: a pod stuck in image pull back-off shows one Event with a growing count, not
//! hundreds.
//!
//! An event that cannot be sent (tunnel down, server unreachable or failing) waits in an
//! outbox of at most [`MAX_BUFFERED`] events — a repeat bumps the waiting one — and is sent,
//! oldest first and with its original `firstTimestamp`, `lastTimestamp` and `count`, once the
//! server answers again, so `kubectl get events` tells what happened on a node while it was
//! offline. Recording never waits for the server: every event goes through the outbox, which
//! one task of the agent sends in order. Events of an offline period that spans the agent's
//! restart are kept too: while the server cannot be reached the outbox is also written to
//! `<data-dir>/event-outbox.json` (at most every [`FLUSH_RETRY`], and as the agent stops), and
//! the next agent starts with it.

use std::collections::{HashMap, VecDeque};
use std::path::{Path, PathBuf};
use std::sync::Mutex;
use std::time::Duration;

use serde_json::{Value, json};
use tokio_util::sync::CancellationToken;

use super::client::{self, Client};
use kedge_core::meta;
use kedge_core::meta::Clock;

/// Past this many remembered (sent) events the memory is cleared: at worst a repeat then
/// creates a new Event instead of bumping a count.
const MAX_REMEMBERED: usize = 4096;

#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Kind {
    Normal,
    Warning,
}

impl Kind {
    fn as_str(self) -> &'static str {
        match self {
            Kind::Normal => "Normal",
            Kind::Warning => "Warning",
        }
    }
}

/// What identifies a repeat of an event.
type Key = (String, Option<String>, String, String);

/// The most events kept while the server cannot be reached; past it the oldest are dropped
/// (a node offline for days must not grow without bound, and the latest say most).
const MAX_BUFFERED: usize = 1000;
/// How often a non-empty outbox is tried again.
const FLUSH_RETRY: Duration = Duration::from_secs(2);
/// 5xx answers to one event before it is dropped.
const MAX_SERVER_ERRORS: u32 = 5;

/// One event to deliver: the Event as it must end up on the server.
#[derive(Clone, Debug, serde::Serialize, serde::Deserialize)]
struct Pending {
    /// Tells this entry from others after an await (the outbox may have moved meanwhile).
    #[serde(skip)]
    id: u64,
    /// `None` for node events, which are not correlated.
    key: Option<Key>,
    event: Value,
    /// The Event exists on the server: a repeat patches its count; otherwise it is created.
    created: bool,
    /// 5xx answers to it so far.
    #[serde(skip)]
    server_errors: u32,
}

impl Pending {
    fn count(&self) -> u64 {
        self.event["count"].as_u64().unwrap_or(1)
    }

    fn bump(&mut self, now: &str) {
        let count = self.count() + 1;
        self.event["count"] = json!(count);
        self.event["lastTimestamp"] = json!(now);
    }
}

/// The recorder's memory: the events sent (for repeats) and those waiting to be.
#[derive(Default)]
struct State {
    /// Sent events by key, as last sent: a repeat patches them.
    seen: HashMap<Key, Value>,
    /// Events not sent yet, oldest first, at most one per key.
    outbox: VecDeque<Pending>,
    next_id: u64,
    /// Events dropped from a full outbox since the last flush.
    dropped: u64,
    /// Bumped by every change of the outbox: whether the file is behind.
    changes: u64,
}

impl State {
    /// A repeat of `key` while an event of that key waits: that event is bumped.
    fn bump_pending(&mut self, key: &Key, now: &str) -> bool {
        match self.outbox.iter_mut().find(|p| p.key.as_ref() == Some(key)) {
            Some(p) => {
                p.bump(now);
                self.changes += 1;
                true
            }
            None => false,
        }
    }

    fn pending(&mut self, key: Option<Key>, event: Value, created: bool) -> Pending {
        self.next_id += 1;
        Pending {
            id: self.next_id,
            key,
            event,
            created,
            server_errors: 0,
        }
    }

    fn enqueue(&mut self, p: Pending) {
        self.changes += 1;
        if self.outbox.len() >= MAX_BUFFERED {
            self.outbox.pop_front();
            self.dropped += 1;
        }
        self.outbox.push_back(p);
    }

    /// `sent` reached the server: it leaves the outbox, unless it was bumped while on its way
    /// (then its new count goes next, as a patch).
    fn delivered(&mut self, sent: &Pending) {
        self.changes += 1;
        if let Some(i) = self.outbox.iter().position(|p| p.id == sent.id) {
            if self.outbox[i].count() == sent.count() {
                self.outbox.remove(i);
            } else {
                self.outbox[i].created = true;
            }
        }
        if let Some(key) = &sent.key {
            if self.seen.len() >= MAX_REMEMBERED {
                self.seen.clear();
            }
            let mut event = sent.event.clone();
            if let Some(p) = self.outbox.iter().find(|p| p.id == sent.id) {
                event = p.event.clone();
            }
            self.seen.insert(key.clone(), event);
        }
    }

    /// One more server error for `p`; how many it has had.
    fn failed(&mut self, p: &Pending) -> u32 {
        self.outbox
            .iter_mut()
            .find(|q| q.id == p.id)
            .map_or(0, |q| {
                q.server_errors += 1;
                q.server_errors
            })
    }

    /// The server refused `p` (an answer, not an outage): it is dropped.
    fn refused(&mut self, p: &Pending) {
        self.changes += 1;
        self.outbox.retain(|q| q.id != p.id);
    }

    /// The outbox an earlier agent left in `file`.
    fn load(&mut self, file: &Path) {
        let Ok(bytes) = std::fs::read(file) else {
            return;
        };
        match serde_json::from_slice::<Vec<Pending>>(&bytes) {
            Ok(kept) => {
                tracing::info!(
                    events = kept.len(),
                    "events recorded before the restart wait to be sent"
                );
                for mut p in kept {
                    self.next_id += 1;
                    p.id = self.next_id;
                    self.enqueue(p);
                }
            }
            Err(e) => {
                tracing::warn!(file = %file.display(), error = %e, "dropping an unreadable event outbox")
            }
        }
    }
}

/// Writes the outbox to `file` (mode 0600: messages may tell about the pods' secrets), or
/// removes the file when the outbox is empty.
fn save(outbox: &[Pending], file: &Path) {
    let res = if outbox.is_empty() {
        match std::fs::remove_file(file) {
            Err(e) if e.kind() != std::io::ErrorKind::NotFound => Err(e.to_string()),
            _ => Ok(()),
        }
    } else {
        serde_json::to_vec(outbox)
            .map_err(|e| e.to_string())
            .and_then(|b| kedge_tunnel::write_atomic(file, &b, 0o600).map_err(|e| e.to_string()))
    };
    if let Err(e) = res {
        tracing::debug!(file = %file.display(), error = %e, "keeping the event outbox failed");
    }
}

/// Delivers the outbox in order, each event with `deliver`, until it is empty (true) or the
/// server cannot be reached (false, the rest kept for the next try).
async fn flush<F, Fut>(state: &Mutex<State>, deliver: F) -> bool
where
    F: Fn(Pending) -> Fut,
    Fut: Future<Output = (Pending, client::Result<()>)>,
{
    let lock = || state.lock().unwrap_or_else(|p| p.into_inner());
    loop {
        let Some(next) = lock().outbox.front().cloned() else {
            return true;
        };
        let (sent, res) = deliver(next).await;
        match res {
            Ok(()) => lock().delivered(&sent),
            // A server that answers, with an error of its own, several times: this event, not
            // the link, is the problem; it must not hold up the others.
            Err(e) if e.code().is_some() && lock().failed(&sent) >= MAX_SERVER_ERRORS => {
                tracing::debug!(error = %e, reason = %sent.event["reason"], "giving up on an event");
                lock().refused(&sent);
            }
            Err(e) if e.is_unreachable() => return false,
            Err(e) => {
                tracing::debug!(error = %e, reason = %sent.event["reason"], "the server refused a buffered event");
                lock().refused(&sent);
            }
        }
    }
}

pub(crate) struct Recorder {
    client: Client,
    node: String,
    clock: Clock,
    state: Mutex<State>,
    /// Where the outbox is kept while the server cannot be reached, for the next agent if
    /// this one stops first.
    file: PathBuf,
    /// Wakes [`flush_loop`](Self::flush_loop) when an event is recorded.
    wake: tokio::sync::Notify,
}

impl Recorder {
    /// A recorder that keeps its outbox in `file` while the server cannot be reached, and
    /// starts with what an earlier agent left there.
    pub fn new(client: Client, node: String, clock: Clock, file: PathBuf) -> Self {
        let mut state = State::default();
        state.load(&file);
        Recorder {
            client,
            node,
            clock,
            file,
            state: Mutex::new(state),
            wake: tokio::sync::Notify::new(),
        }
    }

    fn state(&self) -> std::sync::MutexGuard<'_, State> {
        self.state.lock().unwrap_or_else(|p| p.into_inner())
    }

    /// Records an event about `pod` (and one of its containers, if named). Never waits for
    /// the server, and failures are logged, never returned: an event is worth less than the
    /// work it describes.
    pub async fn pod(
        &self,
        pod: &Value,
        container: Option<&str>,
        kind: Kind,
        reason: &str,
        message: &str,
    ) {
        let key: Key = (
            meta::uid(pod).to_string(),
            container.map(String::from),
            reason.to_string(),
            message.to_string(),
        );
        let now = meta::timestamp((self.clock)());
        let p = {
            let mut st = self.state();
            if st.bump_pending(&key, &now) {
                return;
            }
            if let Some(sent) = st.seen.get_mut(&key) {
                let count = sent["count"].as_u64().unwrap_or(1) + 1;
                sent["count"] = json!(count);
                sent["lastTimestamp"] = json!(now);
                let event = sent.clone();
                st.pending(Some(key), event, true)
            } else {
                let ns = meta::namespace(pod).to_string();
                let name = format!(
                    "{}.{:x}",
                    meta::name(pod),
                    (self.clock)().timestamp_nanos_opt().unwrap_or_default()
                );
                let mut involved = json!({
                    "apiVersion": "v1", "kind": "Pod", "namespace": ns, "name": meta::name(pod),
                    "uid": meta::uid(pod),
                });
                if let Some(c) = container {
                    involved["fieldPath"] = json!(format!("spec.containers{{{c}}}"));
                }
                let event = self.event(&ns, &name, involved, kind, reason, message, &now);
                st.pending(Some(key), event, false)
            }
        };
        self.send(p);
    }

    /// Records an event about this agent's Node (in `default`, involvedObject without
    /// namespace and with the node's name as uid, as kubelet records them and `kubectl
    /// describe node` looks them up).
    pub async fn node(&self, kind: Kind, reason: &str, message: &str) {
        let now = meta::timestamp((self.clock)());
        let name = format!(
            "{}.{:x}",
            self.node,
            (self.clock)().timestamp_nanos_opt().unwrap_or_default()
        );
        let involved = json!({"apiVersion": "v1", "kind": "Node", "name": self.node,
            "uid": self.node});
        let event = self.event("default", &name, involved, kind, reason, message, &now);
        let p = self.state().pending(None, event, false);
        self.send(p);
    }

    #[allow(clippy::too_many_arguments)]
    fn event(
        &self,
        ns: &str,
        name: &str,
        involved: Value,
        kind: Kind,
        reason: &str,
        message: &str,
        now: &str,
    ) -> Value {
        json!({
            "apiVersion": "v1",
            "kind": "Event",
            "metadata": {"name": name, "namespace": ns},
            "involvedObject": involved,
            "reason": reason,
            "message": message,
            "type": kind.as_str(),
            "source": {"component": "kubelet", "host": self.node},
            "reportingComponent": "kubelet",
            "reportingInstance": self.node,
            "firstTimestamp": now,
            "lastTimestamp": now,
            "count": 1,
        })
    }

    /// Queues `p` for [`flush_loop`](Self::flush_loop), which sends it at once if it can:
    /// the pod's work goes on meanwhile.
    fn send(&self, p: Pending) {
        self.state().enqueue(p);
        self.wake.notify_one();
    }

    /// One event to the server: a patch of an Event it has (created again if it is gone), or
    /// a create (a patch if an earlier try created it and its answer was lost).
    async fn deliver(&self, p: Pending) -> (Pending, client::Result<()>) {
        let ns = p.event["metadata"]["namespace"]
            .as_str()
            .unwrap_or("default");
        let name = p.event["metadata"]["name"].as_str().unwrap_or_default();
        let collection = format!("/api/v1/namespaces/{ns}/events");
        let path = format!("{collection}/{name}");
        let patch = json!({"count": p.count(), "lastTimestamp": p.event["lastTimestamp"]});
        if p.created {
            match self.client.merge_patch(&path, &patch).await {
                // Gone (expired or deleted): created again below.
                Err(e) if e.code() == Some(404) => {}
                res => return (p, res.map(drop)),
            }
        }
        let res = match self.client.create(&collection, &p.event).await {
            Err(e) if e.code() == Some(409) => self.client.merge_patch(&path, &patch).await,
            res => res,
        };
        (p, res.map(drop))
    }

    /// Sends the recorded events, in order: each as soon as it is recorded while the server
    /// answers, those recorded while it could not be reached once it answers again. Until
    /// `cancel`.
    pub(crate) async fn flush_loop(&self, cancel: CancellationToken) {
        // Whether the file holds events (an earlier agent's, or ours from an offline period).
        let mut on_disk = self.file.exists();
        // Events waited for a server since the last flush that emptied the outbox.
        let mut waited = on_disk;
        // The outbox's version in the file.
        let mut saved = 0;
        loop {
            tokio::select! {
                _ = cancel.cancelled() => break,
                _ = self.wake.notified() => {}
                _ = tokio::time::sleep(FLUSH_RETRY) => {}
            }
            let waiting = {
                let mut st = self.state();
                if st.dropped > 0 {
                    tracing::warn!(
                        dropped = st.dropped,
                        kept = MAX_BUFFERED,
                        "the server was unreachable for long: the oldest events were dropped"
                    );
                    st.dropped = 0;
                }
                st.outbox.len()
            };
            if waiting == 0 {
                continue;
            }
            if self.client.is_connected() && flush(&self.state, |p| self.deliver(p)).await {
                if waited {
                    tracing::info!(
                        events = waiting,
                        "sent the events recorded while the server was unreachable"
                    );
                }
                if on_disk {
                    on_disk = self.keep(&mut saved);
                }
                waited = false;
                continue;
            }
            waited = true;
            on_disk = self.keep(&mut saved);
            // No server: the next try after a pause, not at the next event.
            tokio::select! {
                _ = cancel.cancelled() => break,
                _ = tokio::time::sleep(FLUSH_RETRY) => {}
            }
        }
        // Stopping: what was not sent is left for the next agent.
        if on_disk || !self.state().outbox.is_empty() {
            self.keep(&mut saved);
        }
    }

    /// Brings the outbox's file up to date if the outbox changed since version `saved`;
    /// whether the file holds events.
    fn keep(&self, saved: &mut u64) -> bool {
        let (outbox, changes) = {
            let st = self.state();
            if st.changes == *saved {
                return !st.outbox.is_empty();
            }
            (Vec::from(st.outbox.clone()), st.changes)
        };
        save(&outbox, &self.file);
        *saved = changes;
        !outbox.is_empty()
    }

    /// Forgets the events of a pod that is gone (those still waiting are sent all the same).
    pub(crate) fn forget_pod(&self, uid: &str) {
        self.state().seen.retain(|k, _| k.0 != uid);
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn event(reason: &str, count: u64) -> Value {
        json!({"metadata": {"name": format!("p.{reason}"), "namespace": "default"},
            "reason": reason, "count": count,
            "firstTimestamp": "2026-11-26T10:00:00Z", "lastTimestamp": "2026-11-26T10:00:00Z"})
    }

    fn key(reason: &str) -> Key {
        ("uid".into(), Some("c".into()), reason.into(), "m".into())
    }

    /// A server that is down for the first `down` calls, then records what it gets.
    struct Server {
        down: std::sync::atomic::AtomicUsize,
        got: Mutex<Vec<(String, u64, String, bool)>>,
    }

    impl Server {
        fn new(down: usize) -> Self {
            Server {
                down: down.into(),
                got: Mutex::default(),
            }
        }

        async fn deliver(&self, p: Pending) -> (Pending, client::Result<()>) {
            use std::sync::atomic::Ordering::SeqCst;
            if self
                .down
                .fetch_update(SeqCst, SeqCst, |d| d.checked_sub(1))
                .is_ok()
            {
                return (p, Err(client::Error::Offline));
            }
            if p.event["reason"] == "Refused" {
                return (
                    p,
                    Err(client::Error::Api {
                        code: 403,
                        reason: "Forbidden".into(),
                        message: "no".into(),
                    }),
                );
            }
            self.got.lock().unwrap().push((
                p.event["reason"].as_str().unwrap().to_string(),
                p.count(),
                p.event["lastTimestamp"].as_str().unwrap().to_string(),
                p.created,
            ));
            (p, Ok(()))
        }
    }

    #[tokio::test]
    async fn events_kept_while_offline_go_out_in_order_with_their_counts() {
        let state = Mutex::new(State::default());
        {
            let mut st = state.lock().unwrap();
            for reason in ["Pulled", "Started", "BackOff", "Refused"] {
                let p = st.pending(Some(key(reason)), event(reason, 1), false);
                st.enqueue(p);
            }
            // A repeat while waiting bumps the waiting event; it keeps its place and its
            // firstTimestamp.
            assert!(st.bump_pending(&key("BackOff"), "2026-11-26T10:05:00Z"));
            assert!(st.bump_pending(&key("BackOff"), "2026-11-26T10:06:00Z"));
            assert!(!st.bump_pending(&key("Killing"), "2026-11-26T10:06:00Z"));
            assert_eq!(st.outbox.len(), 4);
            assert_eq!(st.outbox[2].event["firstTimestamp"], "2026-11-26T10:00:00Z");
        }
        // The server is still down: nothing is lost.
        let server = Server::new(1);
        assert!(!flush(&state, |p| server.deliver(p)).await);
        assert_eq!(state.lock().unwrap().outbox.len(), 4);
        assert!(server.got.lock().unwrap().is_empty());
        // Back: everything goes, in order; what the server refuses is dropped, not retried.
        assert!(flush(&state, |p| server.deliver(p)).await);
        assert_eq!(
            *server.got.lock().unwrap(),
            [
                ("Pulled".into(), 1, "2026-11-26T10:00:00Z".into(), false),
                ("Started".into(), 1, "2026-11-26T10:00:00Z".into(), false),
                ("BackOff".into(), 3, "2026-11-26T10:06:00Z".into(), false),
            ]
        );
        let st = state.lock().unwrap();
        assert!(st.outbox.is_empty());
        // Sent events are remembered with their counts: the next repeat patches them.
        assert_eq!(st.seen[&key("BackOff")]["count"], 3);
        assert!(!st.seen.contains_key(&key("Refused")));
    }

    #[test]
    fn the_outbox_is_bounded_and_keeps_the_latest() {
        let mut st = State::default();
        for i in 0..MAX_BUFFERED + 5 {
            let p = st.pending(Some(key(&format!("R{i}"))), event("R", 1), false);
            st.enqueue(p);
        }
        assert_eq!(st.outbox.len(), MAX_BUFFERED);
        assert_eq!(st.dropped, 5);
        assert_eq!(st.outbox[0].key, Some(key("R5")));
    }

    #[test]
    fn the_outbox_survives_a_restart_in_its_file() {
        use std::os::unix::fs::PermissionsExt as _;
        let d = tempfile::tempdir().unwrap();
        let file = d.path().join("event-outbox.json");
        let mut st = State::default();
        let p = st.pending(Some(key("BackOff")), event("BackOff", 3), true);
        st.enqueue(p);
        let p = st.pending(None, event("Starting", 1), false);
        st.enqueue(p);
        save(&Vec::from(st.outbox.clone()), &file);
        let mode = std::fs::metadata(&file).unwrap().permissions().mode();
        assert_eq!(mode & 0o777, 0o600);

        let mut next = State::default();
        next.load(&file);
        let kept: Vec<_> = next
            .outbox
            .iter()
            .map(|p| (p.key.clone(), p.count(), p.created))
            .collect();
        assert_eq!(kept, [(Some(key("BackOff")), 3, true), (None, 1, false)]);
        assert_ne!(next.outbox[0].id, next.outbox[1].id);
        // Sent: the file goes.
        save(&[], &file);
        assert!(!file.exists());
        // A file that cannot be read is no outbox.
        std::fs::write(&file, "{not json").unwrap();
        let mut broken = State::default();
        broken.load(&file);
        assert!(broken.outbox.is_empty());
    }

    #[test]
    fn an_event_bumped_while_on_its_way_stays_for_a_patch() {
        let mut st = State::default();
        let p = st.pending(Some(key("BackOff")), event("BackOff", 1), false);
        st.enqueue(p.clone());
        assert!(st.bump_pending(&key("BackOff"), "2026-11-26T10:01:00Z"));
        st.delivered(&p);
        assert_eq!(st.outbox.len(), 1);
        assert!(st.outbox[0].created, "now a patch of the created Event");
        assert_eq!(st.outbox[0].count(), 2);
        let next = st.outbox[0].clone();
        st.delivered(&next);
        assert!(st.outbox.is_empty());
        assert_eq!(st.seen[&key("BackOff")]["count"], 2);
    }
}
