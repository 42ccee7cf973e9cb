//! A work queue with client-go's guarantees: a key is queued at most once however many events
//! name it, is never processed by two workers at once (an event during processing requeues it
//! after), failed keys come back with exponential back-off, and delayed keys wait their turn.

use std::collections::{BTreeMap, HashMap, HashSet, VecDeque};
use std::hash::Hash;
use std::sync::Mutex;
use std::time::Duration;

use tokio::sync::Notify;
use tokio::time::Instant;

/// Back-off after the n-th consecutive failure: 100 ms doubling, capped at 60 s.
pub(crate) fn failure_backoff(failures: u32) -> Duration {
    let ms = 100u64.saturating_mul(1u64 << failures.saturating_sub(1).min(20));
    Duration::from_millis(ms.min(60_000))
}

struct State<K> {
    /// Keys ready to process, with when each became ready.
    queue: VecDeque<(K, Instant)>,
    /// Keys waiting to be processed (in `queue`, or re-added while processing).
    dirty: HashSet<K>,
    processing: HashSet<K>,
    failures: HashMap<K, u32>,
    /// Delayed keys by due time (a sequence number keeps equal instants distinct).
    delayed: BTreeMap<(Instant, u64), K>,
    seq: u64,
    shut_down: bool,
}

pub(crate) struct WorkQueue<K> {
    state: Mutex<State<K>>,
    notify: Notify,
    metrics: Option<QueueMetrics>,
}

/// client-go's `workqueue_depth` and `workqueue_queue_duration_seconds`, for one queue.
pub(crate) struct QueueMetrics {
    pub depth: prometheus_client::metrics::gauge::Gauge,
    /// From ready (added, or its delay over) to taken by the worker.
    pub wait: prometheus_client::metrics::histogram::Histogram,
}

impl<K> State<K> {
    fn push(&mut self, key: K, metrics: &Option<QueueMetrics>) {
        self.queue.push_back((key, Instant::now()));
        if let Some(m) = metrics {
            m.depth.set(self.queue.len() as i64);
        }
    }
}

impl<K: Clone + Eq + Hash> Default for WorkQueue<K> {
    fn default() -> Self {
        Self::new()
    }
}

impl<K: Clone + Eq + Hash> WorkQueue<K> {
    pub fn new() -> Self {
        WorkQueue {
            state: Mutex::new(State {
                queue: VecDeque::new(),
                dirty: HashSet::new(),
                processing: HashSet::new(),
                failures: HashMap::new(),
                delayed: BTreeMap::new(),
                seq: 0,
                shut_down: false,
            }),
            notify: Notify::new(),
            metrics: None,
        }
    }

    /// A queue reporting its depth and wait times to `metrics`.
    pub fn with_metrics(metrics: QueueMetrics) -> Self {
        WorkQueue {
            metrics: Some(metrics),
            ..Self::new()
        }
    }

    fn lock(&self) -> std::sync::MutexGuard<'_, State<K>> {
        self.state.lock().unwrap_or_else(|p| p.into_inner())
    }

    pub fn add(&self, key: K) {
        let mut s = self.lock();
        if s.shut_down || !s.dirty.insert(key.clone()) {
            return;
        }
        if !s.processing.contains(&key) {
            s.push(key, &self.metrics);
            drop(s);
            self.notify.notify_one();
        }
    }

    pub(crate) fn add_after(&self, key: K, delay: Duration) {
        if delay.is_zero() {
            return self.add(key);
        }
        let mut s = self.lock();
        if s.shut_down {
            return;
        }
        s.seq += 1;
        let seq = s.seq;
        s.delayed.insert((Instant::now() + delay, seq), key);
        drop(s);
        self.notify.notify_one();
    }

    /// Re-adds a key that failed, after its back-off.
    pub(crate) fn add_rate_limited(&self, key: K) {
        let n = {
            let mut s = self.lock();
            let n = s.failures.entry(key.clone()).or_insert(0);
            *n += 1;
            *n
        };
        self.add_after(key, failure_backoff(n));
    }

    /// Clears a key's failure count after a success.
    pub fn forget(&self, key: &K) {
        self.lock().failures.remove(key);
    }

    pub fn failures(&self, key: &K) -> u32 {
        self.lock().failures.get(key).copied().unwrap_or(0)
    }

    /// Marks processing of `key` finished; an event that came meanwhile queues it again.
    pub fn done(&self, key: &K) {
        let mut s = self.lock();
        s.processing.remove(key);
        if s.dirty.contains(key) {
            s.push(key.clone(), &self.metrics);
            drop(s);
            self.notify.notify_one();
        }
    }

    /// The next key to process; `None` after [`shut_down`](Self::shut_down).
    pub async fn get(&self) -> Option<K> {
        loop {
            let wake_at = {
                let mut s = self.lock();
                if s.shut_down {
                    return None;
                }
                let now = Instant::now();
                while let Some(entry) = s.delayed.first_entry() {
                    if entry.key().0 > now {
                        break;
                    }
                    let key = entry.remove();
                    if s.dirty.insert(key.clone()) && !s.processing.contains(&key) {
                        s.push(key, &self.metrics);
                    }
                }
                if let Some((key, ready)) = s.queue.pop_front() {
                    if let Some(m) = &self.metrics {
                        m.depth.set(s.queue.len() as i64);
                        m.wait.observe(now.duration_since(ready).as_secs_f64());
                    }
                    s.dirty.remove(&key);
                    s.processing.insert(key.clone());
                    return Some(key);
                }
                s.delayed.keys().next().map(|(at, _)| *at)
            };
            match wake_at {
                Some(at) => {
                    tokio::select! {
                        _ = self.notify.notified() => {}
                        _ = tokio::time::sleep_until(at) => {}
                    }
                }
                None => self.notify.notified().await,
            }
        }
    }

    pub(crate) fn shut_down(&self) {
        self.lock().shut_down = true;
        self.notify.notify_waiters();
        self.notify.notify_one();
    }

    #[cfg(test)]
    fn len(&self) -> usize {
        self.lock().queue.len()
    }

    #[cfg(test)]
    fn is_empty(&self) -> bool {
        self.len() == 0
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[tokio::test]
    async fn deduplicates_and_defers_during_processing() {
        let q = WorkQueue::new();
        q.add("a");
        q.add("a");
        q.add("b");
        assert_eq!(q.len(), 2);
        let k = q.get().await.unwrap();
        assert_eq!(k, "a");
        // An event while "a" is processed must not hand "a" to another worker...
        q.add("a");
        assert_eq!(q.get().await.unwrap(), "b");
        assert!(q.is_empty());
        // ...but must be processed again once the first run is done.
        q.done(&"a");
        assert_eq!(q.get().await.unwrap(), "a");
    }

    #[tokio::test(start_paused = true)]
    async fn delayed_and_rate_limited_keys_wait() {
        let q = WorkQueue::new();
        q.add_after("late", Duration::from_secs(5));
        q.add_rate_limited("failed");
        q.add_rate_limited("failed");
        assert_eq!(q.failures(&"failed"), 2);
        let start = Instant::now();
        // First failure: 100 ms.
        assert_eq!(q.get().await.unwrap(), "failed");
        assert!(start.elapsed() >= Duration::from_millis(100));
        assert_eq!(q.get().await.unwrap(), "late");
        assert!(start.elapsed() >= Duration::from_secs(5));
        q.forget(&"failed");
        assert_eq!(q.failures(&"failed"), 0);
    }

    /// Depth counts ready keys only (not delayed ones, not the one being processed); the
    /// wait is measured from ready to taken.
    #[tokio::test(start_paused = true)]
    async fn metrics_follow_depth_and_wait() {
        use prometheus_client::metrics::{gauge::Gauge, histogram::Histogram};
        let (depth, wait) = (Gauge::default(), Histogram::new([1.0, 10.0]));
        let q = WorkQueue::with_metrics(QueueMetrics {
            depth: depth.clone(),
            wait: wait.clone(),
        });
        q.add("a");
        q.add("b");
        q.add_after("later", Duration::from_secs(60));
        assert_eq!(depth.get(), 2);
        tokio::time::advance(Duration::from_secs(2)).await;
        assert_eq!(q.get().await.unwrap(), "a");
        assert_eq!(depth.get(), 1);
        q.add("a");
        q.done(&"a");
        assert_eq!(
            depth.get(),
            2,
            "re-added while processing: ready again when done"
        );
        assert_eq!(q.get().await.unwrap(), "b");
        assert_eq!(q.get().await.unwrap(), "a");
        assert_eq!(depth.get(), 0);
        let mut text = String::new();
        let mut r = prometheus_client::registry::Registry::default();
        r.register("wait", "", wait);
        prometheus_client::encoding::text::encode(&mut text, &r).unwrap();
        assert!(text.contains("wait_count 3"), "{text}");
        assert!(
            text.contains("wait_bucket{le=\"1.0\"} 1"),
            "only the last a waited < 1 s: {text}"
        );
    }

    #[test]
    fn backoff_grows_and_caps() {
        assert_eq!(failure_backoff(1), Duration::from_millis(100));
        assert_eq!(failure_backoff(2), Duration::from_millis(200));
        assert_eq!(failure_backoff(40), Duration::from_secs(60));
    }

    #[tokio::test]
    async fn shut_down_wakes_the_worker() {
        let q = std::sync::Arc::new(WorkQueue::<u32>::new());
        let q2 = q.clone();
        let h = tokio::spawn(async move { q2.get().await });
        tokio::task::yield_now().await;
        q.shut_down();
        assert_eq!(h.await.unwrap(), None);
    }
}
