//! The store's metrics: how long a group commit takes (fsync included) and how many writes
//! one commit carries, the two numbers that say whether group commit is doing its job.

use prometheus_client::metrics::histogram::{Histogram, exponential_buckets};
use prometheus_client::registry::Registry;

/// Cloning shares the histograms (each is an `Arc` inside).
#[derive(Clone, Debug)]
pub struct StoreMetrics {
    commit_duration: Histogram,
    group_size: Histogram,
}

impl Default for StoreMetrics {
    fn default() -> Self {
        StoreMetrics {
            // 0.25 ms (no fsync) to ~8 s (a stalled disk).
            commit_duration: Histogram::new(exponential_buckets(0.000_25, 2.0, 16)),
            // 1 to 1024 writes per commit.
            group_size: Histogram::new(exponential_buckets(1.0, 2.0, 11)),
        }
    }
}

impl StoreMetrics {
    /// Histograms registered in `registry`.
    pub fn new(registry: &mut Registry) -> Self {
        let m = StoreMetrics::default();
        registry.register(
            "kedge_store_commit_duration_seconds",
            "Time one group commit of the store takes, its fsync included",
            m.commit_duration.clone(),
        );
        registry.register(
            "kedge_store_commit_group_size",
            "Writes carried by one group commit of the store",
            m.group_size.clone(),
        );
        m
    }

    pub(crate) fn commit(&self, writes: usize, took: std::time::Duration) {
        self.commit_duration.observe(took.as_secs_f64());
        self.group_size.observe(writes as f64);
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::Store as _;
    use crate::redb::{Options, RedbStore};

    /// Every commit is observed once, with the writes it carried.
    #[test]
    fn commits_are_observed() {
        let dir = tempfile::tempdir().unwrap();
        let mut registry = Registry::default();
        let metrics = StoreMetrics::new(&mut registry);
        let store = RedbStore::open(&dir.path().join("s"), Options::default())
            .unwrap()
            .with_metrics(metrics);
        for i in 0..3 {
            let obj = serde_json::json!({"metadata": {"name": format!("c{i}")}});
            store
                .create(&format!("/configmaps/default/c{i}"), obj)
                .unwrap();
        }
        let mut text = String::new();
        prometheus_client::encoding::text::encode(&mut text, &registry).unwrap();
        assert!(
            text.contains("kedge_store_commit_duration_seconds_count 3"),
            "{text}"
        );
        // Alone, each writer commits by itself: three groups of one.
        assert!(
            text.contains("kedge_store_commit_group_size_sum 3.0"),
            "{text}"
        );
        assert!(
            text.contains("kedge_store_commit_group_size_bucket{le=\"1.0\"} 3"),
            "{text}"
        );
    }
}
