//! The store on etcd (v3 API), mapped the way kube-apiserver maps Kubernetes onto it:
//!
//! - `resourceVersion` is the etcd revision: an object's is its key's `mod_revision`, a list's
//!   the revision of the range (read at one fixed revision page after page, so the pages of a
//!   list agree). Objects are stored without it and stamped on the way out, since a write
//!   learns its revision only from etcd's answer.
//! - Writes are transactions: a create puts only if the key's `create_revision` is 0; an update
//!   or delete with an expected revision only if the key's `mod_revision` is still that, else
//!   the current state is read in the same transaction to tell "not found" from "conflict".
//!   A deleted object comes back (and in its DELETED event) as its last state stamped with the
//!   deletion's revision, as the redb backend and Kubernetes do.
//! - Watches: one etcd watch over the whole key root (with the previous values, which DELETED
//!   events and selector transitions need) feeds the shared ring of recent events that every
//!   [`Watch`] reads, like kube-apiserver's watch cache. A watch from before what the ring
//!   holds, or across a compaction the etcd watch could not follow, gets [`Error::Expired`]
//!   (410 Gone) and its client relists.
//! - Reads: the same watch keeps a copy of every object ([`cache`]), and gets, lists and a
//!   watch's initial state are served from it once it holds everything etcd had when the
//!   read began (etcd's current revision, one quorum read shared by concurrent reads), so a
//!   read stays linearizable and costs etcd neither the data nor a round of its own. Until
//!   the copy is filled, or when it does not catch up in time, reads go to etcd.
//! - History: every `compact_interval` the store compacts etcd up to the revision it saw one
//!   interval earlier (kube-apiserver's default is 5 minutes), so etcd's keyspace does not
//!   grow until its quota stops writes.
//!
//! Every key is prefixed with a root (`/registry/` by default), so several clusters can share
//! one etcd.
//!
//! The [`Store`] trait is synchronous. The store owns a small tokio runtime that runs the etcd
//! client; a call hands its future to that runtime and waits on a plain channel (inside
//! [`super::blocking`]), so it works from any thread, async or not, and never blocks the
//! caller's runtime or needs it.

use std::future::Future;
use std::path::PathBuf;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Weak};
use std::time::{Duration, Instant};

use bytes::Bytes;
use etcd_client::{
    Certificate, Client, CompactionOptions, Compare, CompareOp, ConnectOptions, DeleteOptions,
    EventType as EtcdEventType, GetOptions, Identity, KeyValue, KvClient, TlsOptions, Txn, TxnOp,
    TxnOpResponse, WatchOptions,
};
use serde_json::Value;
use tokio::sync::watch;

use super::encryption::Encryption;
use super::{
    Chunk, Error, Event, EventType, Hub, LogReader, MAX_OBJECT_BYTES, Result, Revision, RingLimits,
    Snapshot, SnapshotInfo, Store, Watch, attrs, decode, stamp,
};

mod cache;

/// How to reach etcd and how the store uses it.
#[derive(Clone, Debug)]
pub struct Options {
    /// Client URLs, `http://` or `https://` (TLS needs `ca_file`).
    pub endpoints: Vec<String>,
    /// The CA that signed etcd's serving certificate.
    pub ca_file: Option<PathBuf>,
    /// A client certificate and its key, for an etcd that requires client certificates.
    pub cert_file: Option<PathBuf>,
    pub key_file: Option<PathBuf>,
    /// Prepended to every key; ends with `/`.
    pub root: String,
    /// The in-memory ring of recent events: how far back watches can resume.
    pub ring: RingLimits,
    /// How often to compact etcd's history (to the revision seen one interval earlier);
    /// `None` leaves compaction to someone else (etcd's `--auto-compaction-retention`).
    pub compact_interval: Option<Duration>,
    /// How long one request to etcd may take.
    pub request_timeout: Duration,
    /// What is encrypted before it is written to etcd; nothing by default.
    pub encryption: Arc<Encryption>,
}

impl Options {
    pub fn new(endpoints: Vec<String>) -> Self {
        Options {
            endpoints,
            ca_file: None,
            cert_file: None,
            key_file: None,
            root: DEFAULT_ROOT.into(),
            ring: RingLimits::default(),
            compact_interval: Some(Duration::from_secs(300)),
            request_timeout: Duration::from_secs(30),
            encryption: Arc::default(),
        }
    }
}

/// Kubernetes' key root.
pub const DEFAULT_ROOT: &str = "/registry/";

/// Keys one range reads at most: a page of a list or snapshot. Objects are at most
/// [`MAX_OBJECT_BYTES`], so a page is at most 64 × 1.5 MiB.
const PAGE: i64 = 64;

/// What one gRPC message may carry (a page of big objects; tonic's default is 4 MiB).
const MAX_MESSAGE: usize = 128 << 20;
/// How long a write waits for its own event to reach the ring before returning anyway.
const PUBLISH_WAIT: Duration = Duration::from_secs(5);

/// What the store and its etcd watch share; the watch task holds it weakly, so dropping the
/// store drops the sender and ends every [`Watch`].
struct Shared {
    hub: Arc<Hub>,
    /// The revision of the newest event in the ring (or where the ring starts).
    published: watch::Sender<Revision>,
    /// Every object, for reads (see [`cache`]).
    cache: cache::Cache,
    /// One request for etcd's current revision shared by the reads waiting for it.
    fresh: Arc<cache::Freshness>,
}

/// The store's own runtime, shut down without waiting when dropped: a caller on an async
/// thread may not wait for its tasks (nor may a plain drop there).
struct OwnedRuntime(Option<tokio::runtime::Runtime>);

impl Drop for OwnedRuntime {
    fn drop(&mut self) {
        if let Some(rt) = self.0.take() {
            rt.shutdown_background();
        }
    }
}

pub struct EtcdStore {
    /// Dropped last (fields drop in order): what runs on it goes with it.
    handle: tokio::runtime::Handle,
    pub(crate) kv: KvClient,
    /// Snapshots (`kedge snapshot save`).
    maintenance: etcd_client::MaintenanceClient,
    root: String,
    shared: Arc<Shared>,
    /// The newest etcd revision any answer carried.
    seen: Arc<AtomicU64>,
    timeout: Duration,
    metrics: crate::metrics::StoreMetrics,
    /// Seals values before they are put, opens them when read back.
    encryption: Arc<Encryption>,
    _runtime: OwnedRuntime,
}

fn backend(e: impl std::fmt::Display) -> Error {
    Error::Backend(format!("etcd: {e}"))
}

/// etcd's answer for a read at a compacted revision.
fn is_compacted(e: &etcd_client::Error) -> bool {
    e.to_string()
        .contains("required revision has been compacted")
}

fn read_file(what: &str, path: &PathBuf) -> Result<Vec<u8>> {
    std::fs::read(path).map_err(|e| Error::Backend(format!("{what} {}: {e}", path.display())))
}

/// The end of the key range of every key starting with `prefix`.
fn range_end(prefix: &[u8]) -> Vec<u8> {
    let mut end = prefix.to_vec();
    while let Some(last) = end.pop() {
        if last < 0xff {
            end.push(last + 1);
            return end;
        }
    }
    // Every byte 0xff: to the end of the keyspace.
    vec![0]
}

/// The JSON of a value etcd holds under `key` (opened if it was sealed) with
/// `metadata.resourceVersion` set to `rev`.
fn stamped(enc: &Encryption, key: &str, value: &[u8], rev: Revision) -> Result<(Value, Bytes)> {
    let mut v = decode(key, &enc.unseal(key, value)?)?;
    stamp(&mut v, rev);
    let bytes = serde_json::to_vec(&v).map_err(backend)?;
    Ok((v, Bytes::from(bytes)))
}

/// The object as etcd keeps it: without a resourceVersion (its key's revision says it).
fn stored_bytes(mut object: Value) -> Result<(Value, Vec<u8>)> {
    if let Some(meta) = object.get_mut("metadata").and_then(Value::as_object_mut) {
        meta.remove("resourceVersion");
    }
    let bytes = serde_json::to_vec(&object).map_err(backend)?;
    if bytes.len() > MAX_OBJECT_BYTES {
        return Err(Error::TooLarge {
            size: bytes.len(),
            limit: MAX_OBJECT_BYTES,
        });
    }
    Ok((object, bytes))
}

fn rev_of(header: Option<&etcd_client::ResponseHeader>) -> Revision {
    header.map_or(0, |h| h.revision().max(0) as u64)
}

impl EtcdStore {
    /// Connects to etcd, reads the current revision (so an unreachable etcd fails here, not
    /// at the first request) and starts following it.
    pub fn connect(options: Options) -> Result<Self> {
        if options.endpoints.is_empty() {
            return Err(Error::Backend("etcd: no endpoints given".into()));
        }
        if !options.root.ends_with('/') {
            return Err(Error::Backend(format!(
                "etcd: the key root {:?} must end with '/'",
                options.root
            )));
        }
        let runtime = OwnedRuntime(Some(
            tokio::runtime::Builder::new_multi_thread()
                .worker_threads(2)
                .thread_name("kedge-etcd")
                .enable_all()
                .build()
                .map_err(backend)?,
        ));
        let handle = runtime.0.as_ref().expect("just built").handle().clone();
        let connect = connect_options(&options)?;
        let endpoints = options.endpoints.clone();
        let timeout = options.request_timeout;
        let client = {
            let connect = connect.clone();
            run_on(&handle, timeout, async move {
                Client::connect(endpoints, Some(connect))
                    .await
                    .map_err(backend)
            })?
        };
        let kv = client.kv_client().max_decoding_message_size(MAX_MESSAGE);
        let maintenance = client.maintenance_client();
        let root = options.root.clone();
        // Where the ring starts: nothing older than this is served to watches.
        let start = {
            let (kv, root) = (kv.clone(), root.clone());
            run_on(&handle, timeout, async move {
                current_revision(&kv, &root)
                    .await
                    .map_err(|e| unreachable_etcd(&e))
            })?
        };
        // The watch cache, filled at the revision the watch starts after.
        let (cache, progress) = cache::Cache::new();
        let objects = {
            let (kv, root, enc) = (kv.clone(), root.clone(), options.encryption.clone());
            run_on(&handle, timeout * 10, async move {
                load_all(kv, &root, &enc, start).await
            })?
        };
        cache.fill(objects, start);
        // Progress notifications move the cache on only where etcd orders them with events:
        // every member must run such a version (the watch may be on any of them).
        let versions = {
            let (endpoints, connect) = (options.endpoints.clone(), connect.clone());
            run_on(&handle, timeout, async move {
                let mut versions = Vec::new();
                for e in &endpoints {
                    let v = match Client::connect([e.as_str()], Some(connect.clone())).await {
                        Ok(c) => tokio::time::timeout(
                            Duration::from_secs(2),
                            c.maintenance_client().status(),
                        )
                        .await
                        .ok()
                        .and_then(|r| r.ok())
                        .map(|s| s.version().to_string()),
                        Err(_) => None,
                    };
                    versions.push(v);
                }
                Ok(versions)
            })?
        };
        let trusted = versions
            .iter()
            .all(|v| v.as_deref().is_some_and(cache::progress_is_ordered));
        cache.trust_progress(trusted);
        let shared = Arc::new(Shared {
            hub: Arc::new(Hub::new(start, options.ring)),
            published: watch::channel(start).0,
            cache,
            fresh: Arc::default(),
        });
        let seen = Arc::new(AtomicU64::new(start));
        let watch_client = client.watch_client().max_decoding_message_size(MAX_MESSAGE);
        handle.spawn(follow(
            Arc::downgrade(&shared),
            watch_client,
            kv.clone(),
            (root.clone(), options.encryption.clone()),
            start,
            progress,
        ));
        if options.endpoints.len() > 1 {
            handle.spawn(tend_members(
                Arc::downgrade(&shared),
                client.clone(),
                options.endpoints.clone(),
                connect,
            ));
        }
        if let Some(every) = options.compact_interval {
            handle.spawn(compact_periodically(
                Arc::downgrade(&shared),
                kv.clone(),
                root.clone(),
                every,
            ));
        }
        tracing::info!(endpoints = ?options.endpoints, root = %root, revision = start, etcd = ?versions, progress_notifications = trusted, "store: on etcd");
        Ok(EtcdStore {
            handle,
            kv,
            maintenance,
            root,
            shared,
            seen,
            timeout,
            metrics: Default::default(),
            encryption: options.encryption.clone(),
            _runtime: runtime,
        })
    }

    /// Records writes into `metrics` (the server's registry) from now on.
    pub fn with_metrics(mut self, metrics: crate::metrics::StoreMetrics) -> Self {
        self.metrics = metrics;
        self
    }

    /// Compacts etcd's history up to `rev`: reads and watches from before it fail.
    pub fn compact(&self, rev: Revision) -> Result<()> {
        let mut kv = self.kv.clone();
        self.run(async move {
            kv.compact(rev as i64, Some(CompactionOptions::new().with_physical()))
                .await
                .map_err(backend)?;
            Ok(())
        })
    }

    pub(crate) fn run<T: Send + 'static>(
        &self,
        f: impl Future<Output = Result<T>> + Send + 'static,
    ) -> Result<T> {
        run_on(&self.handle, self.timeout, f)
    }

    fn etcd_key(&self, key: &str) -> String {
        format!("{}{key}", self.root)
    }

    fn note(&self, rev: Revision) {
        self.seen.fetch_max(rev, Ordering::Relaxed);
    }

    /// `read` of the watch cache once it holds everything etcd had when this call began (a
    /// linearizable read, see [`cache`]); `None` when the cache cannot serve it (not filled,
    /// or not caught up in time): the caller reads etcd.
    fn cached<T>(&self, read: impl FnOnce(&cache::Cache) -> Option<T>) -> Result<Option<T>> {
        if !self.shared.cache.ready() {
            return Ok(None);
        }
        let (shared, kv, root) = (self.shared.clone(), self.kv.clone(), self.root.clone());
        let reached = self.run(async move {
            let fetch = move || {
                let (kv, root) = (kv.clone(), root.clone());
                async move {
                    current_revision(&kv, &root)
                        .await
                        .map_err(|e| e.to_string())
                }
            };
            // No revision (etcd slow or away): the caller reads etcd, and says why if it fails.
            let Ok(rev) = shared.fresh.revision(fetch).await else {
                return Ok(None);
            };
            Ok(shared.cache.caught_up(rev).await.then_some(rev))
        })?;
        let Some(rev) = reached else {
            return Ok(None);
        };
        self.note(rev);
        Ok(read(&self.shared.cache))
    }

    /// One conditional write: `when` holds → `then`, else the key is read back. Returns the
    /// transaction's revision and the `then` responses, or the key as it is (None: absent).
    fn txn(&self, key: &str, when: Compare, then: TxnOp) -> Result<TxnOutcome> {
        let kv = self.kv.clone();
        let ekey = self.etcd_key(key);
        let shared = Arc::downgrade(&self.shared);
        let started = Instant::now();
        let out = self.run(async move {
            let txn = Txn::new()
                .when([when])
                .and_then([then])
                .or_else([TxnOp::get(ekey, None)]);
            let r = unsent_again(|| {
                let (mut kv, txn) = (kv.clone(), txn.clone());
                async move { kv.txn(txn).await }
            })
            .await
            .map_err(|e| {
                if e.to_string().contains("request is too large") {
                    Error::TooLarge {
                        size: MAX_OBJECT_BYTES,
                        limit: MAX_OBJECT_BYTES,
                    }
                } else {
                    backend(e)
                }
            })?;
            let rev = rev_of(r.header());
            if r.succeeded() {
                // Returns once watchers can see the write, as with redb.
                published(shared, rev).await;
                return Ok(Ok((rev, r.op_responses())));
            }
            let current = r.op_responses().into_iter().find_map(|op| match op {
                TxnOpResponse::Get(mut g) => Some(g.take_kvs().into_iter().next()),
                _ => None,
            });
            Ok(Err(current.flatten()))
        });
        if let Ok(Ok((rev, _))) = &out {
            self.note(*rev);
            self.metrics.commit(1, started.elapsed());
        }
        out
    }

    /// A range at `rev` (0: now) from `start` to `end`, at most `limit` keys.
    fn range(
        &self,
        start: Vec<u8>,
        end: Vec<u8>,
        rev: Revision,
        limit: i64,
    ) -> Result<(Vec<KeyValue>, bool, Revision)> {
        let out = self.run(range_at(self.kv.clone(), start, end, rev, limit))?;
        self.note(out.2);
        Ok(out)
    }

    /// Rewrites every object whose stored value is not what a write would store now under
    /// the store's encryption (see [`crate::redb::RedbStore::reencrypt`]): each with a
    /// compare on its revision, so a write from elsewhere meanwhile wins and is left alone.
    /// Returns how many were rewritten.
    pub fn reencrypt(&self) -> Result<usize> {
        let enc = self.encryption.clone();
        let mut stale = Vec::new();
        for prefix in enc.prefixes() {
            let eprefix = self.etcd_key(&prefix).into_bytes();
            let end = range_end(&eprefix);
            let (mut start, mut rev) = (eprefix, 0);
            loop {
                let (kvs, more, header) = self.range(start, end.clone(), rev, PAGE)?;
                if rev == 0 {
                    rev = header;
                }
                for kv in &kvs {
                    let key = self.store_key(kv)?;
                    if !enc.is_current(key, kv.value()) {
                        stale.push((key.to_string(), kv.mod_revision() as u64));
                    }
                }
                match kvs.last() {
                    Some(last) if more => {
                        start = last.key().to_vec();
                        start.push(0);
                    }
                    _ => break,
                }
            }
        }
        let mut done = 0;
        for (key, rev) in stale {
            let rewrite = self
                .get(&key)
                .and_then(|o| o.ok_or(Error::NotFound))
                .and_then(|object| self.update(&key, object, Some(rev)));
            match rewrite {
                Ok(_) => done += 1,
                // Written or deleted meanwhile: sealed as that write chose.
                Err(Error::NotFound | Error::Conflict { .. }) => {}
                Err(e) => tracing::warn!(key, error = %e, "store: cannot re-encrypt"),
            }
        }
        Ok(done)
    }

    /// `kv`'s key without the root.
    fn store_key<'a>(&self, kv: &'a KeyValue) -> Result<&'a str> {
        let k = kv.key_str().map_err(backend)?;
        Ok(k.strip_prefix(self.root.as_str()).unwrap_or(k))
    }
}

/// Whether a request never reached etcd: the member the client's balancer picked could not
/// be connected to. Sending it again is safe, a write too.
fn unsent(e: &etcd_client::Error) -> bool {
    let text = e.to_string();
    text.contains("tcp connect error") || text.contains("error trying to connect")
}

/// Runs `call` again (a few times, briefly spaced) while it fails before reaching etcd, so a
/// member that just died costs a request nothing but a retry on another member.
async fn unsent_again<T, F, Fut>(mut call: F) -> std::result::Result<T, etcd_client::Error>
where
    F: FnMut() -> Fut,
    Fut: Future<Output = std::result::Result<T, etcd_client::Error>>,
{
    let mut tries = 0u32;
    loop {
        match call().await {
            Err(e) if tries < 5 && unsent(&e) => {
                tries += 1;
                tokio::time::sleep(Duration::from_millis(20 * u64::from(tries))).await;
            }
            r => return r,
        }
    }
}

/// etcd's current revision: a count-only quorum read of one key (the root itself), sent
/// again if it never reached etcd ([`unsent_again`]).
async fn current_revision(
    kv: &KvClient,
    root: &str,
) -> std::result::Result<Revision, etcd_client::Error> {
    unsent_again(|| {
        let mut kv = kv.clone();
        async move {
            kv.get(root, Some(GetOptions::new().with_count_only()))
                .await
        }
    })
    .await
    .map(|r| rev_of(r.header()))
}

/// How often every member is asked whether it serves (see [`tend_members`]).
const MEMBER_CHECK: Duration = Duration::from_secs(1);

/// Keeps the members that do not serve out of the client's rotation. etcd-client's balancer
/// keeps sending a share of the requests to a member that is down (each is a fresh connect
/// that fails; etcdv3/etcd-client#39), where etcd's Go client moves off it. So each member is
/// asked for its status every [`MEMBER_CHECK`] on a connection of its own; one that does not
/// answer within a second, or answers without a leader (cut off from the quorum), is taken
/// out of the balancer until it serves again. None is taken out while no member serves:
/// there would be nothing to gain. Ends when the store is dropped.
async fn tend_members(
    shared: Weak<Shared>,
    client: Client,
    endpoints: Vec<String>,
    options: ConnectOptions,
) {
    let mut probes = Vec::new();
    for e in &endpoints {
        match Client::connect([e.as_str()], Some(options.clone())).await {
            Ok(c) => probes.push(c.maintenance_client()),
            Err(err) => {
                tracing::warn!(endpoint = %e, error = %err, "store: cannot watch over etcd member");
                return;
            }
        }
    }
    let mut out = vec![false; endpoints.len()];
    loop {
        tokio::time::sleep(MEMBER_CHECK).await;
        if shared.upgrade().is_none() {
            return;
        }
        let mut serving = Vec::with_capacity(probes.len());
        for p in &mut probes {
            serving.push(matches!(
                tokio::time::timeout(Duration::from_secs(1), p.status()).await,
                Ok(Ok(s)) if s.leader() != 0
            ));
        }
        if !serving.iter().any(|s| *s) {
            continue;
        }
        for (i, e) in endpoints.iter().enumerate() {
            if !serving[i] && !out[i] {
                match client.remove_endpoint(e).await {
                    Ok(()) => {
                        out[i] = true;
                        tracing::warn!(endpoint = %e, "store: etcd member not serving: requests go to the others");
                    }
                    Err(err) => {
                        tracing::warn!(endpoint = %e, error = %err, "store: taking an etcd member out failed")
                    }
                }
            } else if serving[i] && out[i] {
                match client.add_endpoint(e).await {
                    Ok(()) => {
                        out[i] = false;
                        tracing::info!(endpoint = %e, "store: etcd member serving again");
                    }
                    Err(err) => {
                        tracing::warn!(endpoint = %e, error = %err, "store: putting an etcd member back failed")
                    }
                }
            }
        }
    }
}

/// A range at `rev` (0: now) from `start` to `end`, at most `limit` keys: the keys, whether
/// more follow, and the revision it was read at. A compacted `rev` is [`Error::Expired`].
async fn range_at(
    kv: KvClient,
    start: Vec<u8>,
    end: Vec<u8>,
    rev: Revision,
    limit: i64,
) -> Result<(Vec<KeyValue>, bool, Revision)> {
    let opts = GetOptions::new()
        .with_range(end)
        .with_limit(limit)
        .with_revision(rev as i64);
    let mut r = unsent_again(|| {
        let (mut kv, start, opts) = (kv.clone(), start.clone(), opts.clone());
        async move { kv.get(start, Some(opts)).await }
    })
    .await
    .map_err(|e| {
        if is_compacted(&e) {
            Error::Expired {
                requested: rev,
                oldest: rev + 1,
            }
        } else {
            backend(e)
        }
    })?;
    let header = rev_of(r.header());
    let more = r.more();
    Ok((r.take_kvs(), more, header))
}

/// Every object under `root` at `rev`, read a page at a time: what the watch cache starts
/// from. A value this server cannot read is kept empty (see [`cache::Op`]).
async fn load_all(
    kv: KvClient,
    root: &str,
    enc: &Encryption,
    rev: Revision,
) -> Result<cache::Objects> {
    let end = range_end(root.as_bytes());
    let mut from = root.as_bytes().to_vec();
    let mut out = cache::Objects::new();
    loop {
        let (kvs, more, _) = range_at(kv.clone(), from.clone(), end.clone(), rev, PAGE).await?;
        for kv in &kvs {
            let Ok(k) = kv.key_str() else { continue };
            let key = k.strip_prefix(root).unwrap_or(k);
            match stamped(enc, key, kv.value(), kv.mod_revision().max(0) as u64) {
                Ok((_, bytes)) => {
                    out.insert(key.to_string(), bytes);
                }
                Err(e) => {
                    tracing::warn!(key = %k, error = %e, "store: an etcd value this server cannot read; reads of it go to etcd");
                    out.insert(key.to_string(), Bytes::new());
                }
            }
        }
        match kvs.last() {
            Some(last) if more => {
                from = last.key().to_vec();
                from.push(0);
            }
            _ => return Ok(out),
        }
    }
}

/// A conditional write's outcome: done (its revision and what its operation answered), or
/// refused with the key as it is (`None`: absent).
type TxnOutcome = std::result::Result<(Revision, Vec<TxnOpResponse>), Option<KeyValue>>;

/// Waits until the ring holds revision `rev` (or [`PUBLISH_WAIT`] passed).
async fn published(shared: Weak<Shared>, rev: Revision) {
    let Some(mut rx) = shared.upgrade().map(|s| s.published.subscribe()) else {
        return;
    };
    if tokio::time::timeout(PUBLISH_WAIT, rx.wait_for(|p| *p >= rev))
        .await
        .is_err()
    {
        tracing::warn!(
            revision = rev,
            "store: etcd's watch has not delivered a write after {}s",
            PUBLISH_WAIT.as_secs()
        );
    }
}

/// What an etcd that cannot be reached looks like to whoever starts kedge.
fn unreachable_etcd(e: &etcd_client::Error) -> Error {
    Error::Backend(format!("etcd: cannot read from the datastore: {e}"))
}

/// The value at `key` in etcd (a key of kedge's own, outside the object root: the servers'
/// shared bootstrap data) or, when there is none, `make()`'s, written unless another server
/// writes its own first (a transaction on `create_revision == 0`). Returns what etcd holds
/// afterwards and whether it is ours.
pub fn get_or_put(
    options: &Options,
    key: &str,
    make: impl FnOnce() -> Result<Vec<u8>>,
) -> Result<(Vec<u8>, bool)> {
    let runtime = OwnedRuntime(Some(
        tokio::runtime::Builder::new_multi_thread()
            .worker_threads(1)
            .thread_name("kedge-etcd-bootstrap")
            .enable_all()
            .build()
            .map_err(backend)?,
    ));
    let handle = runtime.0.as_ref().expect("just built").handle().clone();
    let connect = connect_options(options)?;
    let endpoints = options.endpoints.clone();
    let timeout = options.request_timeout;
    let kv = run_on(&handle, timeout, async move {
        Client::connect(endpoints, Some(connect))
            .await
            .map(|c| c.kv_client())
            .map_err(|e| unreachable_etcd(&e))
    })?;
    let read = {
        let (kv, key) = (kv.clone(), key.to_string());
        run_on(&handle, timeout, async move {
            let r = unsent_again(|| {
                let (mut kv, key) = (kv.clone(), key.clone());
                async move { kv.get(key, None).await }
            })
            .await
            .map_err(backend)?;
            Ok(r.kvs().first().map(|kv| kv.value().to_vec()))
        })?
    };
    if let Some(v) = read {
        return Ok((v, false));
    }
    let mine = make()?;
    let key = key.to_string();
    let value = mine.clone();
    let theirs = run_on(&handle, timeout, async move {
        let txn = Txn::new()
            .when([Compare::create_revision(key.clone(), CompareOp::Equal, 0)])
            .and_then([TxnOp::put(key.clone(), value, None)])
            .or_else([TxnOp::get(key, None)]);
        let r = unsent_again(|| {
            let (mut kv, txn) = (kv.clone(), txn.clone());
            async move { kv.txn(txn).await }
        })
        .await
        .map_err(backend)?;
        if r.succeeded() {
            return Ok(None);
        }
        Ok(r.op_responses().into_iter().find_map(|op| match op {
            TxnOpResponse::Get(g) => g.kvs().first().map(|kv| kv.value().to_vec()),
            _ => None,
        }))
    })?;
    drop(runtime);
    Ok(match theirs {
        None => (mine, true),
        Some(v) => (v, false),
    })
}

fn connect_options(o: &Options) -> Result<ConnectOptions> {
    let mut c = ConnectOptions::new()
        .with_connect_timeout(Duration::from_secs(5))
        // A dead connection under a long watch is noticed within seconds.
        .with_keep_alive(Duration::from_secs(10), Duration::from_secs(5))
        .with_keep_alive_while_idle(true)
        // As kube-apiserver's WithRequireLeader: a member cut off from its leader ends our
        // watch (which then resumes on another member) instead of keeping it open and silent.
        .with_require_leader(true);
    let https = o.endpoints.iter().any(|e| e.starts_with("https://"));
    let tls_files = o.ca_file.is_some() || o.cert_file.is_some() || o.key_file.is_some();
    if o.endpoints
        .iter()
        .any(|e| !e.starts_with("https://") && !e.starts_with("http://"))
    {
        return Err(Error::Backend(format!(
            "etcd: endpoints must be http:// or https:// URLs, got {:?}",
            o.endpoints
        )));
    }
    if https && o.endpoints.iter().any(|e| e.starts_with("http://")) {
        return Err(Error::Backend(
            "etcd: endpoints mix http:// and https://".into(),
        ));
    }
    if tls_files && !https {
        return Err(Error::Backend(
            "etcd: --datastore-cafile/certfile/keyfile need https:// endpoints".into(),
        ));
    }
    if https {
        let Some(ca) = &o.ca_file else {
            return Err(Error::Backend(
                "etcd: https:// endpoints need --datastore-cafile (the CA of etcd's certificate)"
                    .into(),
            ));
        };
        let mut tls = TlsOptions::new()
            .ca_certificate(Certificate::from_pem(read_file("--datastore-cafile", ca)?));
        match (&o.cert_file, &o.key_file) {
            (Some(cert), Some(key)) => {
                tls = tls.identity(Identity::from_pem(
                    read_file("--datastore-certfile", cert)?,
                    read_file("--datastore-keyfile", key)?,
                ));
            }
            (None, None) => {}
            _ => {
                return Err(Error::Backend(
                    "etcd: --datastore-certfile and --datastore-keyfile go together".into(),
                ));
            }
        }
        c = c.with_tls(tls);
    }
    Ok(c)
}

/// Runs `f` on the store's runtime and waits for it on this thread (see the module doc).
fn run_on<T: Send + 'static>(
    handle: &tokio::runtime::Handle,
    timeout: Duration,
    f: impl Future<Output = Result<T>> + Send + 'static,
) -> Result<T> {
    let (tx, rx) = std::sync::mpsc::sync_channel(1);
    handle.spawn(async move {
        let out = match tokio::time::timeout(timeout, f).await {
            Ok(out) => out,
            Err(_) => Err(Error::Backend(format!(
                "etcd: no answer within {}s",
                timeout.as_secs()
            ))),
        };
        let _ = tx.send(out);
    });
    super::blocking(|| rx.recv())
        .map_err(|_| Error::Backend("etcd: the store's client runtime has stopped".into()))?
}

/// Turns one etcd event into a store event; `None` for what is not a store object (a value
/// that is not JSON, written by someone else under our root), logged.
fn convert(
    root: &str,
    enc: &Encryption,
    ev: &etcd_client::Event,
) -> std::result::Result<Option<Event>, String> {
    let Some(kv) = ev.kv() else {
        return Ok(None);
    };
    let Ok(k) = kv.key_str() else {
        return Ok(None);
    };
    let key = k.strip_prefix(root).unwrap_or(k).to_string();
    let rev = kv.mod_revision().max(0) as u64;
    let prev = ev.prev_kv();
    let parsed = |value: &[u8]| match stamped(enc, &key, value, rev) {
        Ok(x) => Some(x),
        Err(e) => {
            tracing::warn!(key = %k, error = %e, "store: skipping an etcd value that is not an object");
            None
        }
    };
    let prev_attrs = |key: &str| {
        prev.and_then(|p| {
            enc.unseal(key, p.value())
                .ok()
                .and_then(|b| decode(key, &b).ok())
        })
        .map(|v| attrs(key, &v))
    };
    Ok(match ev.event_type() {
        EtcdEventType::Put => {
            let Some((object, bytes)) = parsed(kv.value()) else {
                return Ok(None);
            };
            let kind = if kv.create_revision() == kv.mod_revision() {
                EventType::Added
            } else {
                EventType::Modified
            };
            let prev_attrs = match kind {
                EventType::Added => None,
                _ => prev_attrs(&key),
            };
            Some(Event {
                rev,
                kind,
                attrs: attrs(&key, &object),
                key,
                object: bytes,
                prev_attrs,
            })
        }
        EtcdEventType::Delete => {
            // The object's last state is what a DELETED event carries; without it (compacted
            // away) the event cannot be told.
            let Some(p) = prev else {
                return Err(format!(
                    "the delete of {k} at {rev} came without the previous value"
                ));
            };
            let Some((object, bytes)) = parsed(p.value()) else {
                return Ok(None);
            };
            let a = attrs(&key, &object);
            Some(Event {
                rev,
                kind: EventType::Deleted,
                key,
                object: bytes,
                attrs: a.clone(),
                prev_attrs: Some(a),
            })
        }
    })
}

/// Follows etcd from `start` and publishes every event under `root` into the ring, in order,
/// until the store is dropped. A broken stream is resumed from the last revision published;
/// when that is no longer possible (compacted meanwhile), the ring is reset to the current
/// revision and every watch from before it expires (its client relists).
async fn follow(
    shared: Weak<Shared>,
    mut client: etcd_client::WatchClient,
    kv: KvClient,
    (root, enc): (String, Arc<Encryption>),
    start: Revision,
    mut progress: tokio::sync::mpsc::Receiver<()>,
) {
    let mut next = start + 1;
    let mut backoff = Duration::from_millis(100);
    loop {
        if shared.strong_count() == 0 {
            return;
        }
        let opts = WatchOptions::new()
            .with_prefix()
            .with_prev_key()
            // A catch-up over many revisions of big objects comes in fragments etcd sizes
            // (--max-request-bytes), never one message over MAX_MESSAGE that could not be
            // decoded and would be asked for again and again.
            .with_fragment()
            .with_start_revision(next as i64);
        let (mut requests, mut stream) = match client.watch(root.clone(), Some(opts)).await {
            Ok(s) => s.split(),
            Err(e) => {
                tracing::warn!(error = %e, "store: etcd watch failed; retrying");
                tokio::time::sleep(backoff).await;
                backoff = (backoff * 2).min(Duration::from_secs(5));
                continue;
            }
        };
        let mut gap = false;
        loop {
            let message = tokio::select! {
                m = stream.message() => m,
                Some(()) = progress.recv() => {
                    // A read waits for the cache to reach etcd's revision: etcd answers with
                    // its revision once this watch has delivered everything up to it.
                    if let Err(e) = requests.request_progress().await {
                        tracing::debug!(error = %e, "store: asking etcd for watch progress failed");
                    }
                    continue;
                }
            };
            let resp = match message {
                Ok(Some(r)) => r,
                Ok(None) => break,
                Err(e) => {
                    tracing::warn!(error = %e, "store: etcd watch broke; resuming");
                    break;
                }
            };
            backoff = Duration::from_millis(100);
            if resp.canceled() {
                if resp.compact_revision() > 0 {
                    gap = true;
                } else {
                    tracing::warn!(
                        reason = resp.cancel_reason(),
                        "store: etcd cancelled the watch; resuming"
                    );
                }
                break;
            }
            let mut events = Vec::with_capacity(resp.events().len());
            let mut ops = Vec::with_capacity(resp.events().len());
            for ev in resp.events() {
                match convert(&root, &enc, ev) {
                    Ok(Some(e)) => {
                        ops.push(match e.kind {
                            EventType::Deleted => cache::Op::Delete(e.key.clone()),
                            _ => cache::Op::Put(e.key.clone(), e.object.clone()),
                        });
                        events.push(Arc::new(e));
                    }
                    Ok(None) => {
                        // Not an object this server can read: reads of it go to etcd.
                        if let Some(kv) = ev.kv()
                            && let Ok(k) = kv.key_str()
                        {
                            let key = k.strip_prefix(root.as_str()).unwrap_or(k).to_string();
                            ops.push(match ev.event_type() {
                                EtcdEventType::Put => cache::Op::Put(key, Bytes::new()),
                                EtcdEventType::Delete => cache::Op::Delete(key),
                            });
                        }
                    }
                    Err(why) => {
                        tracing::warn!("store: {why}");
                        gap = true;
                        break;
                    }
                }
            }
            if gap {
                break;
            }
            // The cache first: a read that sees `published` finds the write in it.
            let batch_last = resp
                .events()
                .last()
                .and_then(|e| e.kv())
                .map(|kv| kv.mod_revision().max(0) as u64);
            if let (Some(s), Some(last)) = (shared.upgrade(), batch_last) {
                s.cache.apply(ops, last);
            }
            let Some(last) = events.last().map(|e| e.rev) else {
                if let Some(b) = batch_last {
                    // Only values this server cannot read: a resumed watch starts after them.
                    next = b + 1;
                    continue;
                }
                // No event: a progress notification (etcd's revision, everything up to it
                // delivered), or what a watch's creation answers (not a progress: the
                // watch may start behind it).
                if resp.events().is_empty()
                    && !resp.created()
                    && let Some(s) = shared.upgrade()
                {
                    s.cache.progress(rev_of(resp.header()));
                }
                continue;
            };
            let Some(s) = shared.upgrade() else {
                return;
            };
            s.hub.publish(events);
            // Watches wake after the ring holds everything up to `last`.
            s.published.send_replace(last);
            next = batch_last.unwrap_or(last).max(last) + 1;
        }
        if gap {
            // History the watch needed is gone: start over from now.
            let now = match current_revision(&kv, &root).await {
                Ok(rev) => rev,
                Err(e) => {
                    tracing::warn!(error = %e, "store: etcd unreachable; retrying");
                    tokio::time::sleep(backoff).await;
                    backoff = (backoff * 2).min(Duration::from_secs(5));
                    // Resume where we were: the next try meets the compaction again.
                    continue;
                }
            };
            let Some(s) = shared.upgrade() else {
                return;
            };
            tracing::warn!(
                from = next,
                now,
                "store: etcd compacted history the watch cache had not read; watches from before now relist"
            );
            // Reads go to etcd until the cache is filled again at `now`.
            s.cache.invalidate();
            match load_all(kv.clone(), &root, &enc, now).await {
                Ok(objects) => s.cache.fill(objects, now),
                Err(e) => {
                    tracing::warn!(error = %e, "store: refilling the watch cache failed; retrying");
                    drop(s);
                    tokio::time::sleep(backoff).await;
                    backoff = (backoff * 2).min(Duration::from_secs(5));
                    continue;
                }
            }
            s.hub.reset(now);
            s.published.send_replace(now);
            next = now + 1;
        } else {
            tokio::time::sleep(backoff).await;
            backoff = (backoff * 2).min(Duration::from_secs(5));
        }
    }
}

/// Every `every`, compacts etcd to the revision it had one interval before (what
/// kube-apiserver does), so history stays bounded in time.
async fn compact_periodically(
    shared: Weak<Shared>,
    mut kv: KvClient,
    root: String,
    every: Duration,
) {
    let mut noted: Option<i64> = None;
    loop {
        tokio::time::sleep(every).await;
        if shared.strong_count() == 0 {
            return;
        }
        let now = match kv
            .get(root.clone(), Some(GetOptions::new().with_count_only()))
            .await
        {
            Ok(r) => r.header().map_or(0, |h| h.revision()),
            Err(e) => {
                tracing::warn!(error = %e, "store: etcd unreachable for compaction");
                continue;
            }
        };
        if let Some(rev) = noted.filter(|r| *r > 0) {
            match kv.compact(rev, None).await {
                Ok(_) => tracing::debug!(revision = rev, "store: compacted etcd"),
                // Another server (or etcd itself) compacted further already.
                Err(e) if is_compacted(&e) => {}
                Err(e) => tracing::warn!(error = %e, "store: compacting etcd failed"),
            }
        }
        noted = Some(now);
    }
}

/// The ring is the only history an etcd store serves (kube-apiserver's watch cache): a
/// watch from before it expires.
struct RingOnly(Arc<Hub>);

impl LogReader for RingOnly {
    fn read_log(
        &self,
        from: Revision,
        _prefix: &str,
        _wanted: &dyn Fn(&Event) -> bool,
    ) -> Result<Chunk> {
        Err(Error::Expired {
            requested: from,
            oldest: self.0.start() + 1,
        })
    }

    fn compacted(&self) -> Result<Revision> {
        Ok(self.0.start())
    }
}

impl Store for EtcdStore {
    fn get(&self, key: &str) -> Result<Option<Value>> {
        if let Some((found, _)) = self.cached(|c| c.get(key))? {
            return found.map(|b| decode(key, &b)).transpose();
        }
        let ekey = self.etcd_key(key).into_bytes();
        let end = {
            let mut e = ekey.clone();
            e.push(0);
            e
        };
        let (kvs, _, _) = self.range(ekey, end, 0, 1)?;
        match kvs.first() {
            Some(kv) => Ok(Some(
                stamped(&self.encryption, key, kv.value(), kv.mod_revision() as u64)?.0,
            )),
            None => Ok(None),
        }
    }

    fn scan(
        &self,
        prefix: &str,
        after: Option<&str>,
        each: &mut dyn FnMut(&str, &[u8]) -> Result<bool>,
    ) -> Result<Revision> {
        // From the cache: one consistent view (a cheap copy of the map), walked outside
        // the cache's lock.
        if let Some(view) = self.cached(|c| c.view().filter(|v| v.serves(prefix, after)))? {
            for (key, bytes) in view.range(prefix, after) {
                if !each(key, bytes)? {
                    break;
                }
            }
            return Ok(view.rev);
        }
        let eprefix = self.etcd_key(prefix).into_bytes();
        let end = range_end(&eprefix);
        let mut start = match after {
            Some(a) if a >= prefix => {
                let mut k = self.etcd_key(a).into_bytes();
                k.push(0);
                k
            }
            _ => eprefix,
        };
        // The first page fixes the revision every later page reads at.
        let mut rev = 0;
        loop {
            let (kvs, more, header) = self.range(start, end.clone(), rev, PAGE)?;
            if rev == 0 {
                rev = header;
            }
            for kv in &kvs {
                let key = self.store_key(kv)?;
                let (_, bytes) =
                    stamped(&self.encryption, key, kv.value(), kv.mod_revision() as u64)?;
                if !each(key, &bytes)? {
                    return Ok(rev);
                }
            }
            match kvs.last() {
                Some(last) if more => {
                    start = last.key().to_vec();
                    start.push(0);
                }
                _ => return Ok(rev),
            }
        }
    }

    fn snapshot(&self, prefix: &str) -> Result<Box<dyn Snapshot>> {
        if let Some(view) = self.cached(|c| c.view().filter(|v| v.serves(prefix, None)))? {
            return Ok(Box::new(view.snapshot(prefix)));
        }
        let eprefix = self.etcd_key(prefix).into_bytes();
        let end = range_end(&eprefix);
        let (kvs, more, rev) = self.range(eprefix, end.clone(), 0, PAGE)?;
        let mut snap = EtcdSnapshot {
            store: self.clone_reader(),
            end,
            rev,
            next: None,
            done: !more,
            buffered: Default::default(),
        };
        snap.take_page(kvs)?;
        Ok(Box::new(snap))
    }

    fn create(&self, key: &str, object: Value) -> Result<Value> {
        let (mut object, bytes) = stored_bytes(object)?;
        let bytes = self.encryption.seal(key, &bytes)?.into_owned();
        let ekey = self.etcd_key(key);
        let when = Compare::create_revision(ekey.clone(), CompareOp::Equal, 0);
        match self.txn(key, when, TxnOp::put(ekey, bytes, None))? {
            Ok((rev, _)) => {
                stamp(&mut object, rev);
                Ok(object)
            }
            Err(_) => Err(Error::AlreadyExists),
        }
    }

    fn update(&self, key: &str, object: Value, expected: Option<Revision>) -> Result<Value> {
        let (mut object, bytes) = stored_bytes(object)?;
        let bytes = self.encryption.seal(key, &bytes)?.into_owned();
        let ekey = self.etcd_key(key);
        let when = match expected {
            Some(rev) => Compare::mod_revision(ekey.clone(), CompareOp::Equal, rev as i64),
            None => Compare::create_revision(ekey.clone(), CompareOp::Greater, 0),
        };
        match self.txn(key, when, TxnOp::put(ekey, bytes, None))? {
            Ok((rev, _)) => {
                stamp(&mut object, rev);
                Ok(object)
            }
            Err(None) => Err(Error::NotFound),
            Err(Some(current)) => Err(Error::Conflict {
                current: current.mod_revision() as u64,
            }),
        }
    }

    fn delete(&self, key: &str, expected: Option<Revision>) -> Result<Value> {
        let ekey = self.etcd_key(key);
        let when = match expected {
            Some(rev) => Compare::mod_revision(ekey.clone(), CompareOp::Equal, rev as i64),
            None => Compare::create_revision(ekey.clone(), CompareOp::Greater, 0),
        };
        let op = TxnOp::delete(ekey, Some(DeleteOptions::new().with_prev_key()));
        match self.txn(key, when, op)? {
            Ok((rev, responses)) => {
                let prev = responses.into_iter().find_map(|r| match r {
                    TxnOpResponse::Delete(mut d) => d.take_prev_kvs().into_iter().next(),
                    _ => None,
                });
                // The compare said the key was there; its last state comes back stamped with
                // the deletion's revision.
                let prev = prev.ok_or(Error::NotFound)?;
                Ok(stamped(&self.encryption, key, prev.value(), rev)?.0)
            }
            Err(None) => Err(Error::NotFound),
            Err(Some(current)) => Err(Error::Conflict {
                current: current.mod_revision() as u64,
            }),
        }
    }

    fn watch(&self, prefix: &str, from: Revision) -> Result<Watch> {
        let hub = self.shared.hub.clone();
        Watch::new(
            prefix,
            from,
            self.shared.published.subscribe(),
            hub.clone(),
            Arc::new(RingOnly(hub)),
        )
    }

    /// etcd's own snapshot of its whole keyspace (the Maintenance API's stream, which ends
    /// with the SHA-256 of what came before it; `etcdctl snapshot restore` checks it).
    /// Refused when etcd holds keys outside this cluster's root (other clusters sharing the
    /// etcd): the copy would hand them out. The revision and count are read as it begins.
    fn save_snapshot(&self, out: &mut dyn std::io::Write) -> Result<SnapshotInfo> {
        let others = {
            let (mut kv, root) = (self.kv.clone(), self.root.clone());
            self.run(async move {
                let mut end = root.clone().into_bytes();
                *end.last_mut().expect("the root is not empty") += 1;
                let ours = format!("/kedge-bootstrap{root}");
                let before = kv
                    .get(
                        vec![0u8],
                        Some(
                            GetOptions::new()
                                .with_range(root.clone())
                                .with_keys_only()
                                .with_limit(2),
                        ),
                    )
                    .await
                    .map_err(backend)?;
                let after = kv
                    .get(
                        end,
                        Some(
                            GetOptions::new()
                                .with_from_key()
                                .with_keys_only()
                                .with_limit(1),
                        ),
                    )
                    .await
                    .map_err(backend)?;
                Ok(before
                    .kvs()
                    .iter()
                    .chain(after.kvs())
                    .map(|kv| String::from_utf8_lossy(kv.key()).into_owned())
                    .find(|k| *k != ours))
            })?
        };
        if let Some(k) = others {
            return Err(Error::Backend(format!(
                "etcd holds keys outside this cluster's prefix {} ({k}, …): its snapshot would copy them too; take it with etcdctl, as the etcd's own operator",
                self.root
            )));
        }
        let (mut kv, root) = (self.kv.clone(), self.root.clone());
        let (revision, objects) = self.run(async move {
            let r = kv
                .get(
                    root,
                    Some(GetOptions::new().with_prefix().with_count_only()),
                )
                .await
                .map_err(backend)?;
            Ok((rev_of(r.header()), r.count() as u64))
        })?;
        let (tx, rx) = std::sync::mpsc::sync_channel::<Result<Vec<u8>>>(4);
        let mut maintenance = self.maintenance.clone();
        self.handle.spawn(async move {
            // Never a blocking send: a slow reader must not hold one of the two threads every
            // other etcd call runs on.
            async fn hand(
                tx: &std::sync::mpsc::SyncSender<Result<Vec<u8>>>,
                mut item: Result<Vec<u8>>,
            ) -> bool {
                loop {
                    match tx.try_send(item) {
                        Ok(()) => return true,
                        Err(std::sync::mpsc::TrySendError::Full(back)) => {
                            item = back;
                            tokio::time::sleep(Duration::from_millis(5)).await;
                        }
                        Err(std::sync::mpsc::TrySendError::Disconnected(_)) => return false,
                    }
                }
            }
            let mut stream = match maintenance.snapshot().await {
                Ok(s) => s,
                Err(e) => {
                    hand(&tx, Err(backend(e))).await;
                    return;
                }
            };
            loop {
                match stream.message().await {
                    Ok(Some(m)) => {
                        if !hand(&tx, Ok(m.blob().to_vec())).await {
                            return;
                        }
                    }
                    Ok(None) => return,
                    Err(e) => {
                        hand(&tx, Err(backend(e))).await;
                        return;
                    }
                }
            }
        });
        let timeout = self.timeout;
        super::blocking(|| {
            loop {
                match rx.recv_timeout(timeout) {
                    Ok(Ok(blob)) => out.write_all(&blob).map_err(backend)?,
                    Ok(Err(e)) => return Err(e),
                    Err(std::sync::mpsc::RecvTimeoutError::Disconnected) => break,
                    Err(std::sync::mpsc::RecvTimeoutError::Timeout) => {
                        return Err(Error::Backend(format!(
                            "etcd: the snapshot stream stalled for {}s",
                            timeout.as_secs()
                        )));
                    }
                }
            }
            out.flush().map_err(backend)
        })?;
        Ok(SnapshotInfo { revision, objects })
    }

    fn revision(&self) -> Revision {
        let (kv, root) = (self.kv.clone(), self.root.clone());
        let now = self.run(async move { current_revision(&kv, &root).await.map_err(backend) });
        match now {
            Ok(rev) => {
                self.note(rev);
                rev
            }
            Err(e) => {
                // The newest revision known: what a client compares against stays sane.
                tracing::warn!(error = %e, "store: reading etcd's revision failed");
                self.seen.load(Ordering::Relaxed)
            }
        }
    }
}

impl EtcdStore {
    /// What a snapshot needs to read pages on its own (it outlives no store call but must be
    /// `Send` and own its state).
    fn clone_reader(&self) -> Reader {
        Reader {
            handle: self.handle.clone(),
            kv: self.kv.clone(),
            root: self.root.clone(),
            timeout: self.timeout,
            encryption: self.encryption.clone(),
        }
    }
}

struct Reader {
    handle: tokio::runtime::Handle,
    kv: KvClient,
    root: String,
    timeout: Duration,
    encryption: Arc<Encryption>,
}

/// A list at one revision, a page at a time, handed out [`super::CHUNK_BYTES`] at a time.
/// etcd keeps that revision readable until it is compacted: a snapshot read across a
/// compaction fails with [`Error::Expired`] and the watch relists.
struct EtcdSnapshot {
    store: Reader,
    end: Vec<u8>,
    rev: Revision,
    /// Where the next page starts (after the last key read).
    next: Option<Vec<u8>>,
    done: bool,
    buffered: std::collections::VecDeque<(String, Bytes)>,
}

impl EtcdSnapshot {
    fn take_page(&mut self, kvs: Vec<KeyValue>) -> Result<()> {
        if let Some(last) = kvs.last() {
            let mut k = last.key().to_vec();
            k.push(0);
            self.next = Some(k);
        } else {
            self.done = true;
        }
        for kv in kvs {
            let k = kv.key_str().map_err(backend)?;
            let key = k.strip_prefix(self.store.root.as_str()).unwrap_or(k);
            let rev = kv.mod_revision() as u64;
            let (_, bytes) = stamped(&self.store.encryption, key, kv.value(), rev)?;
            self.buffered.push_back((key.to_string(), bytes));
        }
        Ok(())
    }
}

impl Snapshot for EtcdSnapshot {
    fn revision(&self) -> Revision {
        self.rev
    }

    fn next_chunk(&mut self) -> Result<Vec<(String, Bytes)>> {
        if self.buffered.is_empty() && !self.done {
            let Some(start) = self.next.clone() else {
                self.done = true;
                return Ok(Vec::new());
            };
            let read = range_at(
                self.store.kv.clone(),
                start,
                self.end.clone(),
                self.rev,
                PAGE,
            );
            let (kvs, more, _) = run_on(&self.store.handle, self.store.timeout, read)?;
            self.take_page(kvs)?;
            if !more {
                self.done = true;
            }
        }
        let mut out = Vec::new();
        let mut bytes = 0;
        while let Some((k, v)) = self.buffered.pop_front() {
            bytes += v.len();
            out.push((k, v));
            if bytes >= super::CHUNK_BYTES {
                break;
            }
        }
        Ok(out)
    }
}
