//! Leader election for plugins: with several servers on one datastore, each plugin runs on one
//! replica at a time, the holder of its own `coordination.k8s.io` Lease
//! (`kube-system/kedge-plugin-<name>`), so plugins spread over the replicas and fail over one
//! by one.
//!
//! The protocol is client-go's `leaderelection` with a Lease lock and Kubernetes' timings (15 s
//! lease, 10 s renew deadline, 2 s retry): a holder renews every retry period; a lease whose
//! record has not changed for its duration, measured on this replica's own clock from when it
//! last saw the record change (so clocks need not agree), may be taken with a
//! resourceVersion-checked update; a leader that has not renewed within the renew deadline
//! stops acting. A replica shutting down releases what it holds (client-go's
//! `ReleaseOnCancel`), so the others take over at their next retry instead of after a lease.
//!
//! Spreading, which client-go does not do: each replica keeps an identity Lease
//! (`kube-system/kedge-server-<identity>`, as kube-apiserver keeps `apiserver-…` leases), so
//! every replica knows how many are alive. A replica takes a free or expired plugin lease at
//! once only while it holds fewer than its fair share (plugins ÷ live replicas, rounded up),
//! and anyone takes one left unowned for a whole lease duration; a replica holding more than
//! its share releases one lease per retry period, which a replica below its share takes. A
//! replica that joins therefore gets its share within (share × retry period), and one that
//! dies leaves its plugins to the others after its leases run out.

use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use serde_json::{Value, json};
use tokio::sync::watch;
use tokio_util::sync::CancellationToken;

use kedge_api::Api;
use kedge_api::ops::WriteOptions;
use kedge_core::resources::{self, Resource};

/// Where the leases live, as kube-controller-manager's and kube-scheduler's do.
pub const NAMESPACE: &str = "kube-system";
/// The label on replicas' identity leases.
pub const IDENTITY_LABEL: &str = "kedge.io/server-identity";
/// The annotation on a replica's identity lease with the `host:port` its API serves on,
/// where the other replicas forward requests for the nodes it holds.
pub const ADDRESS_ANNOTATION: &str = "kedge.io/server-address";

/// client-go's `LeaderElectionConfig` timings.
#[derive(Clone, Copy, Debug)]
pub struct Timings {
    /// How long a lease holds without renewal (`--leader-elect-lease-duration`, 15 s).
    pub lease_duration: Duration,
    /// How long a leader keeps acting without a successful renewal
    /// (`--leader-elect-renew-deadline`, 10 s).
    pub renew_deadline: Duration,
    /// How often leases are tried and renewed (`--leader-elect-retry-period`, 2 s).
    pub retry_period: Duration,
}

impl Default for Timings {
    fn default() -> Self {
        Timings {
            lease_duration: Duration::from_secs(15),
            renew_deadline: Duration::from_secs(10),
            retry_period: Duration::from_secs(2),
        }
    }
}

impl Timings {
    /// Kubernetes' rules: lease duration > renew deadline > retry period (× 1.2 jitter) > 0.
    pub fn validate(&self) -> Result<(), String> {
        if self.retry_period.is_zero() {
            return Err("the retry period must be positive".into());
        }
        if self.renew_deadline <= self.retry_period.mul_f64(1.2) {
            return Err("the renew deadline must exceed 1.2 × the retry period".into());
        }
        if self.lease_duration <= self.renew_deadline {
            return Err("the lease duration must exceed the renew deadline".into());
        }
        Ok(())
    }
}

/// One replica's side of the elections: its identity, the timings, and what its electors
/// share to spread the plugins.
#[derive(Clone)]
pub struct Election {
    pub identity: String,
    pub timings: Timings,
    /// Published on the identity lease (see [`ADDRESS_ANNOTATION`]).
    pub address: Option<String>,
    shared: Arc<Shared>,
}

#[derive(Default)]
struct Shared {
    /// Plugin leases this replica holds now.
    held: AtomicUsize,
    /// Electors running here (one per plugin).
    electors: AtomicUsize,
    /// Live replicas, this one included, as the identity leases last said (at least 1).
    replicas: AtomicUsize,
    /// When this replica last gave a lease away to spread the load.
    last_release: Mutex<Option<Instant>>,
    /// The API addresses of the live replicas, sorted (see [`Election::live_servers`]).
    servers: watch::Sender<Vec<String>>,
}

fn lease_res() -> &'static Resource {
    resources::by_kind("coordination.k8s.io/v1", "Lease").expect("leases are served")
}

/// The fields of a Lease that say who holds it; a change of any of them is a renewal.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
struct Record {
    holder: String,
    duration_secs: i64,
    acquire: String,
    renew: String,
    transitions: i64,
}

impl Record {
    fn of(lease: &Value) -> Record {
        let s = |k: &str| {
            lease
                .pointer(&format!("/spec/{k}"))
                .and_then(Value::as_str)
                .unwrap_or_default()
                .to_string()
        };
        let n = |k: &str| {
            lease
                .pointer(&format!("/spec/{k}"))
                .and_then(Value::as_i64)
                .unwrap_or(0)
        };
        Record {
            holder: s("holderIdentity"),
            duration_secs: n("leaseDurationSeconds"),
            acquire: s("acquireTime"),
            renew: s("renewTime"),
            transitions: n("leaseTransitions"),
        }
    }

    fn spec(&self) -> Value {
        json!({
            "holderIdentity": self.holder,
            "leaseDurationSeconds": self.duration_secs,
            "acquireTime": self.acquire,
            "renewTime": self.renew,
            "leaseTransitions": self.transitions,
        })
    }
}

/// What an elector last saw of its lease, and when (on this replica's clock).
struct Observed {
    record: Option<Record>,
    at: Instant,
}

impl Election {
    pub fn new(identity: impl Into<String>, timings: Timings) -> Election {
        let shared = Shared::default();
        shared.replicas.store(1, Ordering::Relaxed);
        Election {
            identity: identity.into(),
            timings,
            address: None,
            shared: Arc::new(shared),
        }
    }

    /// Plugin leases this replica holds now.
    pub fn held(&self) -> usize {
        self.shared.held.load(Ordering::Relaxed)
    }

    /// This replica's fair share of the plugins.
    fn fair_share(&self) -> usize {
        let electors = self.shared.electors.load(Ordering::Relaxed).max(1);
        let replicas = self.shared.replicas.load(Ordering::Relaxed).max(1);
        electors.div_ceil(replicas)
    }

    /// Keeps this replica's identity lease and counts the live replicas, until `cancel`;
    /// then deletes the lease (the others count one fewer at once). Returns after the first
    /// count, so electors started next know how many replicas share the plugins.
    pub async fn keep_identity(&self, api: Arc<Api>, cancel: CancellationToken) {
        let name = format!("kedge-server-{}", self.identity);
        let first = self.identity_tick(&api, &name).await;
        self.count(first);
        let this = self.clone();
        tokio::spawn(async move {
            let every = this.timings.lease_duration / 3;
            loop {
                tokio::select! {
                    _ = cancel.cancelled() => break,
                    _ = tokio::time::sleep(every) => {}
                }
                let live = this.identity_tick(&api, &name).await;
                this.count(live);
            }
            let api = api.clone();
            let _ = tokio::task::spawn_blocking(move || {
                api.delete(
                    lease_res(),
                    NAMESPACE,
                    &name,
                    &kedge_api::ops::DeleteOptions::default(),
                )
            })
            .await;
        });
    }

    /// Records what an identity tick saw: how many replicas live, and where they serve.
    fn count(&self, live: Option<Vec<Option<String>>>) {
        let Some(live) = live else {
            // Not read: as before.
            return;
        };
        self.shared
            .replicas
            .store(live.len().max(1), Ordering::Relaxed);
        let mut addrs: Vec<String> = live.into_iter().flatten().collect();
        addrs.sort();
        addrs.dedup();
        self.shared.servers.send_if_modified(|old| {
            let changed = *old != addrs;
            *old = addrs;
            changed
        });
    }

    /// The API addresses (`host:port`) the live replicas published on their identity leases,
    /// sorted; updated at every renewal of this replica's own. What the `kubernetes`
    /// Service's endpoints list on etcd, as kube-apiserver's lease reconciler keeps them.
    pub fn live_servers(&self) -> watch::Receiver<Vec<String>> {
        self.shared.servers.subscribe()
    }

    /// Renews (or creates) the identity lease and lists the identity leases renewed within
    /// their duration, on their own clocks (skew only shifts the spreading), with the
    /// address each published; `None` when they could not be read.
    async fn identity_tick(&self, api: &Arc<Api>, name: &str) -> Option<Vec<Option<String>>> {
        let (api, name, me) = (api.clone(), name.to_string(), self.identity.clone());
        let duration = self.timings.lease_duration;
        let address = self.address.clone();
        tokio::task::spawn_blocking(move || {
            let res = lease_res();
            let now = chrono::Utc::now();
            let spec = json!({
                "holderIdentity": me,
                "leaseDurationSeconds": duration.as_secs().max(1),
                "renewTime": kedge_core::meta::micro_timestamp(now),
            });
            // Where this replica serves, for the others (forwarding, the kubernetes Service).
            let publish = |lease: &mut Value| {
                if let Some(a) = &address {
                    lease["metadata"]["annotations"] = json!({ADDRESS_ANNOTATION: a});
                }
            };
            let written = match api.get(res, NAMESPACE, &name) {
                Ok(mut lease) => {
                    lease["spec"] = spec;
                    publish(&mut lease);
                    api.update(res, NAMESPACE, &name, lease, None, &WriteOptions::default())
                        .map(|_| ())
                }
                Err(e) if e.code == 404 => {
                    let mut lease = json!({
                        "apiVersion": "coordination.k8s.io/v1", "kind": "Lease",
                        "metadata": {"name": name, "namespace": NAMESPACE,
                            "labels": {IDENTITY_LABEL: "true"}},
                        "spec": spec,
                    });
                    publish(&mut lease);
                    api.create(res, NAMESPACE, lease, &WriteOptions::default())
                        .map(|_| ())
                }
                Err(e) => Err(e),
            };
            if let Err(e) = written {
                tracing::debug!(error = %e, "renewing the server identity lease failed");
            }
            let opts = kedge_api::ops::ListOptions {
                labels: kedge_core::selector::Selector::parse(&format!("{IDENTITY_LABEL}=true"))
                    .expect("a valid selector"),
                ..Default::default()
            };
            let list = api.list(res, NAMESPACE, &opts).ok()?;
            let items = list["items"].as_array().cloned().unwrap_or_default();
            Some(
                items
                    .iter()
                    .filter(|l| {
                        let r = Record::of(l);
                        chrono::DateTime::parse_from_rfc3339(&r.renew).is_ok_and(|t| {
                            let age = now.signed_duration_since(t.with_timezone(&chrono::Utc));
                            age.num_milliseconds() < (r.duration_secs.max(1) * 1000)
                        })
                    })
                    .map(|l| {
                        l.pointer("/metadata/annotations")
                            .and_then(|a| a.get(ADDRESS_ANNOTATION))
                            .and_then(Value::as_str)
                            .map(String::from)
                    })
                    .collect(),
            )
        })
        .await
        .ok()
        .flatten()
    }

    /// Runs the election for lease `name` until `cancel` (then releases it if held). The
    /// receiver says whether this replica holds it now.
    pub fn elect(
        &self,
        api: Arc<Api>,
        name: String,
        cancel: CancellationToken,
    ) -> watch::Receiver<bool> {
        let (tx, rx) = watch::channel(false);
        self.shared.electors.fetch_add(1, Ordering::Relaxed);
        let this = self.clone();
        tokio::spawn(async move {
            this.run(api, name, tx, cancel).await;
            this.shared.electors.fetch_sub(1, Ordering::Relaxed);
        });
        rx
    }

    async fn run(
        &self,
        api: Arc<Api>,
        name: String,
        leading: watch::Sender<bool>,
        cancel: CancellationToken,
    ) {
        let mut observed = Observed {
            record: None,
            at: Instant::now(),
        };
        let mut last_renew: Option<Instant> = None;
        loop {
            let held = *leading.borrow();
            // A leader's attempt may not outlast its renew deadline (client-go's timeout on
            // each renewal): another replica may take the lease once it has expired.
            let limit = match (held, last_renew) {
                (true, Some(t)) => self
                    .timings
                    .renew_deadline
                    .saturating_sub(t.elapsed())
                    .max(Duration::from_millis(1)),
                _ => self.timings.lease_duration,
            };
            let outcome =
                tokio::time::timeout(limit, self.try_acquire_or_renew(&api, &name, &mut observed))
                    .await
                    .unwrap_or_else(|_| Err(format!("no answer within {limit:?}")));
            let now = Instant::now();
            match outcome {
                Ok(true) => {
                    last_renew = Some(now);
                    if !held {
                        self.shared.held.fetch_add(1, Ordering::Relaxed);
                        tracing::info!(lease = %name, identity = %self.identity, "acquired the plugin's lease");
                        leading.send_replace(true);
                    } else if self.should_release() {
                        tracing::info!(lease = %name, identity = %self.identity, held = self.held(), fair = self.fair_share(), "giving the plugin's lease away to spread the plugins");
                        // Stop first, and let a reconcile under way end (a retry period; the
                        // lease, unrenewed, still holds meanwhile), then hand over.
                        self.lost(&leading);
                        last_renew = None;
                        tokio::select! {
                            _ = cancel.cancelled() => {}
                            _ = tokio::time::sleep(self.timings.retry_period) => {}
                        }
                        self.release(&api, &name).await;
                    }
                }
                Ok(false) if held => {
                    tracing::warn!(lease = %name, "another replica holds the plugin's lease now; stopping here");
                    self.lost(&leading);
                    last_renew = None;
                }
                Err(e) if held => {
                    let late = last_renew.is_none_or(|t| now - t > self.timings.renew_deadline);
                    if late {
                        tracing::warn!(lease = %name, error = %e, "could not renew the plugin's lease within the renew deadline; stopping here");
                        self.lost(&leading);
                        last_renew = None;
                    } else {
                        tracing::debug!(lease = %name, error = %e, "renewing the plugin's lease failed; retrying");
                    }
                }
                Ok(false) => {}
                Err(e) => {
                    tracing::debug!(lease = %name, error = %e, "trying the plugin's lease failed")
                }
            }
            // client-go's jitter on the retry (factor 1.2) keeps replicas from moving in step.
            let jitter = self
                .timings
                .retry_period
                .mul_f64(rand::random::<f64>() * 0.2);
            tokio::select! {
                _ = cancel.cancelled() => break,
                _ = tokio::time::sleep(self.timings.retry_period + jitter) => {}
            }
        }
        if *leading.borrow() {
            self.lost(&leading);
            self.release(&api, &name).await;
        }
    }

    fn lost(&self, leading: &watch::Sender<bool>) {
        if leading.send_replace(false) {
            self.shared.held.fetch_sub(1, Ordering::Relaxed);
        }
    }

    /// More than this replica's share, and no lease given away within a retry period.
    fn should_release(&self) -> bool {
        if self.held() <= self.fair_share() {
            return false;
        }
        let mut last = self
            .shared
            .last_release
            .lock()
            .unwrap_or_else(|p| p.into_inner());
        if last.is_some_and(|t| t.elapsed() < self.timings.retry_period) {
            return false;
        }
        *last = Some(Instant::now());
        true
    }

    /// Gives the lease up (client-go's release: no holder, a 1 s duration).
    async fn release(&self, api: &Arc<Api>, name: &str) {
        let (api, name, me) = (api.clone(), name.to_string(), self.identity.clone());
        let _ = tokio::task::spawn_blocking(move || {
            let res = lease_res();
            let Ok(mut lease) = api.get(res, NAMESPACE, &name) else {
                return;
            };
            let mut r = Record::of(&lease);
            if r.holder != me {
                return;
            }
            let now = kedge_core::meta::micro_timestamp(chrono::Utc::now());
            r.holder = String::new();
            r.duration_secs = 1;
            r.acquire = now.clone();
            r.renew = now;
            lease["spec"] = r.spec();
            if let Err(e) = api.update(res, NAMESPACE, &name, lease, None, &WriteOptions::default())
            {
                tracing::debug!(lease = %name, error = %e, "releasing the plugin's lease failed");
            }
        })
        .await;
    }

    /// One round of client-go's `tryAcquireOrRenew`: `Ok(true)` if this replica holds the
    /// lease after it.
    async fn try_acquire_or_renew(
        &self,
        api: &Arc<Api>,
        name: &str,
        observed: &mut Observed,
    ) -> Result<bool, String> {
        let res = lease_res();
        let current = {
            let (api, name) = (api.clone(), name.to_string());
            tokio::task::spawn_blocking(move || api.get(res, NAMESPACE, &name))
                .await
                .map_err(|e| e.to_string())?
        };
        let now = chrono::Utc::now();
        let duration_secs = self.timings.lease_duration.as_secs().max(1) as i64;
        let fresh = |transitions: i64| Record {
            holder: self.identity.clone(),
            duration_secs,
            acquire: kedge_core::meta::micro_timestamp(now),
            renew: kedge_core::meta::micro_timestamp(now),
            transitions,
        };
        let mut lease = match current {
            Err(e) if e.code == 404 => {
                if self.held() >= self.fair_share() {
                    // Someone with room will create it; if nobody does, it stays unowned
                    // and is taken below once that has lasted a lease duration.
                    if observed.record.is_some() {
                        observed.record = None;
                        observed.at = Instant::now();
                    }
                    if observed.at.elapsed() < self.timings.lease_duration {
                        return Ok(false);
                    }
                }
                let lease = json!({
                    "apiVersion": "coordination.k8s.io/v1", "kind": "Lease",
                    "metadata": {"name": name, "namespace": NAMESPACE},
                    "spec": fresh(0).spec(),
                });
                let api = api.clone();
                return match tokio::task::spawn_blocking(move || {
                    api.create(res, NAMESPACE, lease, &WriteOptions::default())
                })
                .await
                .map_err(|e| e.to_string())?
                {
                    Ok(_) => Ok(true),
                    Err(e) if e.code == 409 => Ok(false),
                    Err(e) => Err(e.to_string()),
                };
            }
            Err(e) => return Err(e.to_string()),
            Ok(l) => l,
        };
        let record = Record::of(&lease);
        if observed.record.as_ref() != Some(&record) {
            observed.record = Some(record.clone());
            observed.at = Instant::now();
        }
        let mine = record.holder == self.identity;
        if !mine {
            let lasts = Duration::from_secs(record.duration_secs.max(0) as u64);
            let free = record.holder.is_empty();
            let expired = observed.at.elapsed() >= lasts;
            if !free && !expired {
                return Ok(false);
            }
            // Unowned since: when it was seen free, or when it expired.
            let unowned = if free {
                observed.at.elapsed()
            } else {
                observed.at.elapsed().saturating_sub(lasts)
            };
            if self.held() >= self.fair_share() && unowned < self.timings.lease_duration {
                return Ok(false);
            }
        }
        let next = if mine {
            Record {
                renew: kedge_core::meta::micro_timestamp(now),
                duration_secs,
                ..record.clone()
            }
        } else {
            fresh(record.transitions + 1)
        };
        lease["spec"] = next.spec();
        let api = api.clone();
        let name = name.to_string();
        match tokio::task::spawn_blocking(move || {
            api.update(res, NAMESPACE, &name, lease, None, &WriteOptions::default())
        })
        .await
        .map_err(|e| e.to_string())?
        {
            Ok(written) => {
                observed.record = Some(Record::of(&written));
                observed.at = Instant::now();
                Ok(true)
            }
            // Someone else wrote it first (the resourceVersion in the body is the
            // precondition).
            Err(e) if e.code == 409 => Ok(false),
            Err(e) => Err(e.to_string()),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use kedge_api::ops::system_clock;

    fn fast() -> Timings {
        Timings {
            // Whole seconds: a Lease records its duration in seconds.
            lease_duration: Duration::from_secs(2),
            renew_deadline: Duration::from_millis(1200),
            retry_period: Duration::from_millis(200),
        }
    }

    fn api(dir: &std::path::Path) -> Arc<Api> {
        let store = kedge_store::redb::RedbStore::open(
            &dir.join("s"),
            kedge_store::redb::Options {
                durable: false,
                ..Default::default()
            },
        )
        .unwrap();
        let api = Arc::new(Api::new(Arc::new(store), system_clock()));
        let ns = resources::by_kind("v1", "Namespace").unwrap();
        api.create(
            ns,
            "",
            json!({"metadata": {"name": NAMESPACE}}),
            &WriteOptions::default(),
        )
        .unwrap();
        api
    }

    async fn until(what: &str, within: Duration, f: impl Fn() -> bool) {
        let deadline = Instant::now() + within;
        while !f() {
            assert!(Instant::now() < deadline, "timed out waiting for {what}");
            tokio::time::sleep(Duration::from_millis(20)).await;
        }
    }

    fn holder(api: &Api, name: &str) -> String {
        Record::of(&api.get(lease_res(), NAMESPACE, name).unwrap()).holder
    }

    /// Two replicas: exactly one runs the plugin at any moment; when it dies without a word
    /// (its runtime gone: no release) the other takes over once the lease has gone
    /// unrenewed for its duration, not before; a replica that stops cleanly hands over at
    /// the other's next retry.
    #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
    async fn one_replica_runs_a_plugin_and_another_takes_over_when_it_dies() {
        let dir = tempfile::tempdir().unwrap();
        let api = api(dir.path());
        let a = Election::new("a", fast());
        let b = Election::new("b", fast());
        let dying = tokio::runtime::Builder::new_multi_thread()
            .worker_threads(1)
            .enable_all()
            .build()
            .unwrap();
        let lease = "kedge-plugin-x".to_string();
        let ra = {
            let _in = dying.enter();
            a.elect(api.clone(), lease.clone(), CancellationToken::new())
        };
        until("a to lead", Duration::from_secs(5), || *ra.borrow()).await;
        let b_cancel = CancellationToken::new();
        let rb = b.elect(api.clone(), lease.clone(), b_cancel.clone());
        // Never both.
        for _ in 0..30 {
            assert!(!(*ra.borrow() && *rb.borrow()));
            tokio::time::sleep(Duration::from_millis(20)).await;
        }
        assert!(*ra.borrow() && !*rb.borrow());
        assert_eq!(holder(&api, &lease), "a");

        dying.shutdown_background();
        // B may take over only once a whole lease has passed since A's last renewal (which
        // may land just after the "crash": a store write already under way).
        let mut last_a = None;
        let deadline = Instant::now() + Duration::from_secs(5);
        while !*rb.borrow() {
            assert!(
                Instant::now() < deadline,
                "timed out waiting for b to take over"
            );
            let r = Record::of(&api.get(lease_res(), NAMESPACE, &lease).unwrap());
            if r.holder == "a" {
                last_a = chrono::DateTime::parse_from_rfc3339(&r.renew).ok();
            }
            tokio::time::sleep(Duration::from_millis(20)).await;
        }
        let since = chrono::Utc::now()
            - last_a
                .expect("a's renewal seen")
                .with_timezone(&chrono::Utc);
        assert!(
            since.num_milliseconds() >= 1900,
            "took over {since:?} after a's last renewal, before the lease (2 s) ran out"
        );
        assert_eq!(holder(&api, &lease), "b");
        assert_eq!(b.held(), 1);
        let transitions =
            api.get(lease_res(), NAMESPACE, &lease).unwrap()["spec"]["leaseTransitions"].as_i64();
        assert_eq!(transitions, Some(1));

        // A clean stop releases: a new replica takes over at its next retry.
        let c = Election::new("c", fast());
        let rc = c.elect(api.clone(), lease.clone(), CancellationToken::new());
        tokio::time::sleep(Duration::from_millis(600)).await;
        assert!(!*rc.borrow());
        b_cancel.cancel();
        let stopped = Instant::now();
        until("c to take over", Duration::from_secs(5), || *rc.borrow()).await;
        assert!(stopped.elapsed() < Duration::from_millis(1400));
        until("b to let go", Duration::from_secs(1), || !*rb.borrow()).await;
        assert_eq!(b.held(), 0);
    }

    /// The live replicas' addresses follow their identity leases: both while both renew,
    /// one once the other's lease has run out unrenewed (its runtime gone) or was deleted
    /// by a clean stop.
    #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
    async fn live_servers_follow_the_identity_leases() {
        let dir = tempfile::tempdir().unwrap();
        let api = api(dir.path());
        let mut a = Election::new("a", fast());
        a.address = Some("10.0.0.1:6443".into());
        let mut b = Election::new("b", fast());
        b.address = Some("10.0.0.2:6443".into());
        let b = b;
        let mut c = Election::new("c", fast());
        c.address = Some("10.0.0.3:6443".into());
        let servers = a.live_servers();
        a.keep_identity(api.clone(), CancellationToken::new()).await;
        let dying = tokio::runtime::Builder::new_multi_thread()
            .worker_threads(1)
            .enable_all()
            .build()
            .unwrap();
        {
            let (b, api) = (b.clone(), api.clone());
            dying.spawn(async move { b.keep_identity(api, CancellationToken::new()).await });
        }
        let c_cancel = CancellationToken::new();
        c.keep_identity(api.clone(), c_cancel.clone()).await;
        let all = |v: &[&str]| v.iter().map(|s| s.to_string()).collect::<Vec<_>>();
        until("all three", Duration::from_secs(5), || {
            *servers.borrow() == all(&["10.0.0.1:6443", "10.0.0.2:6443", "10.0.0.3:6443"])
        })
        .await;
        assert_eq!(a.shared.replicas.load(Ordering::Relaxed), 3);
        // b dies (no delete), c stops cleanly.
        dying.shutdown_background();
        c_cancel.cancel();
        until("a alone", Duration::from_secs(5), || {
            *servers.borrow() == all(&["10.0.0.1:6443"])
        })
        .await;
        assert_eq!(a.shared.replicas.load(Ordering::Relaxed), 1);
    }

    /// Plugins spread: a replica that started alone holds them all, and gives leases away
    /// (one per retry period) once another replica counts, until each holds its share.
    #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
    async fn plugins_spread_over_the_replicas() {
        let dir = tempfile::tempdir().unwrap();
        let api = api(dir.path());
        let plugins: Vec<String> = (0..4).map(|i| format!("kedge-plugin-p{i}")).collect();
        let a = Election::new("a", fast());
        a.keep_identity(api.clone(), CancellationToken::new()).await;
        let ra: Vec<_> = plugins
            .iter()
            .map(|p| a.elect(api.clone(), p.clone(), CancellationToken::new()))
            .collect();
        until("a to hold all four", Duration::from_secs(5), || {
            ra.iter().all(|r| *r.borrow())
        })
        .await;
        let b = Election::new("b", fast());
        b.keep_identity(api.clone(), CancellationToken::new()).await;
        let rb: Vec<_> = plugins
            .iter()
            .map(|p| b.elect(api.clone(), p.clone(), CancellationToken::new()))
            .collect();
        until("two each", Duration::from_secs(20), || {
            a.held() == 2 && b.held() == 2
        })
        .await;
        for (x, y) in ra.iter().zip(&rb) {
            assert!(
                *x.borrow() != *y.borrow(),
                "each plugin has exactly one holder"
            );
        }
    }
}
