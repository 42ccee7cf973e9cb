//! Per-plugin metrics: reconciles by result and their duration, traps, hot swaps, and the
//! work queue (depth and wait, as client-go's workqueue metrics). Each slot takes its handles
//! once at start, so a reconcile records without a label lookup or an allocation.

use prometheus_client::encoding::EncodeLabelSet;
use prometheus_client::metrics::counter::Counter;
use prometheus_client::metrics::family::Family;
use prometheus_client::metrics::gauge::Gauge;
use prometheus_client::metrics::histogram::{Histogram, exponential_buckets};
use prometheus_client::registry::Registry;

use super::queue::QueueMetrics;

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
struct PluginLabels {
    plugin: String,
}

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
struct ResultLabels {
    plugin: String,
    /// `success`, `error` (the guest returned one) or `trap`.
    result: &'static str,
}

type HistogramFamily<L> = Family<L, Histogram, fn() -> Histogram>;

/// The plugin host's metric families. Cloning shares them (each is an `Arc` inside).
#[derive(Clone, Debug)]
pub struct PluginMetrics {
    reconciles: Family<ResultLabels, Counter>,
    reconcile_duration: HistogramFamily<PluginLabels>,
    traps: Family<PluginLabels, Counter>,
    swaps: Family<PluginLabels, Counter>,
    queue_depth: Family<PluginLabels, Gauge>,
    queue_duration: HistogramFamily<PluginLabels>,
}

impl Default for PluginMetrics {
    fn default() -> Self {
        PluginMetrics {
            reconciles: Family::default(),
            // 50 µs (a live instance answers in microseconds) to ~13 s (past any deadline).
            reconcile_duration: Family::new_with_constructor(|| {
                Histogram::new(exponential_buckets(0.000_05, 2.0, 19))
            }),
            traps: Family::default(),
            swaps: Family::default(),
            queue_depth: Family::default(),
            // 1 µs to 100 s, client-go's decades.
            queue_duration: Family::new_with_constructor(|| {
                Histogram::new(exponential_buckets(0.000_001, 10.0, 9))
            }),
        }
    }
}

impl PluginMetrics {
    /// Families registered in `registry`.
    pub fn new(registry: &mut Registry) -> Self {
        let m = PluginMetrics::default();
        registry.register(
            "kedge_plugin_reconcile",
            "Reconciles per plugin by result: success, error (returned by the plugin) or trap",
            m.reconciles.clone(),
        );
        registry.register(
            "kedge_plugin_reconcile_duration_seconds",
            "Time one reconcile takes, instantiation included",
            m.reconcile_duration.clone(),
        );
        registry.register(
            "kedge_plugin_traps",
            "Reconciles that trapped (a guest fault, the epoch deadline or the memory cap)",
            m.traps.clone(),
        );
        registry.register(
            "kedge_plugin_swaps",
            "Hot swaps to a new version of the plugin",
            m.swaps.clone(),
        );
        registry.register(
            "kedge_plugin_queue_depth",
            "Keys ready and waiting in the plugin's work queue",
            m.queue_depth.clone(),
        );
        registry.register(
            "kedge_plugin_queue_duration_seconds",
            "How long a key waits in the plugin's work queue before it is reconciled",
            m.queue_duration.clone(),
        );
        m
    }

    /// The handles one slot records into.
    pub(crate) fn slot(&self, plugin: &str) -> (SlotMetrics, QueueMetrics) {
        let p = PluginLabels {
            plugin: plugin.to_string(),
        };
        let result = |result| {
            self.reconciles.get_or_create_owned(&ResultLabels {
                plugin: plugin.to_string(),
                result,
            })
        };
        let slot = SlotMetrics {
            success: result("success"),
            error: result("error"),
            trap: result("trap"),
            duration: self.reconcile_duration.get_or_create_owned(&p),
            traps: self.traps.get_or_create_owned(&p),
            swaps: self.swaps.get_or_create_owned(&p),
        };
        let queue = QueueMetrics {
            depth: self.queue_depth.get_or_create_owned(&p),
            wait: self.queue_duration.get_or_create_owned(&p),
        };
        (slot, queue)
    }
}

/// One plugin's handles (see [`PluginMetrics::slot`]).
pub(crate) struct SlotMetrics {
    success: Counter,
    error: Counter,
    trap: Counter,
    duration: Histogram,
    traps: Counter,
    pub swaps: Counter,
}

/// How a reconcile ended.
pub(crate) enum Ended {
    Success,
    Error,
    Trap,
}

impl SlotMetrics {
    pub(crate) fn reconciled(&self, ended: Ended, took: std::time::Duration) {
        self.duration.observe(took.as_secs_f64());
        match ended {
            Ended::Success => self.success.inc(),
            Ended::Error => self.error.inc(),
            Ended::Trap => {
                self.traps.inc();
                self.trap.inc()
            }
        };
    }
}
