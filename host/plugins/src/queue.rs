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
    queue: VecDeque<K>,
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
            s.queue.push_back(key);
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
            s.queue.push_back(key.clone());
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
                        s.queue.push_back(key);
                    }
                }
                if let Some(key) = s.queue.pop_front() {
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
