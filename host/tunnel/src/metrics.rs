//! The server end's tunnel metrics: node connections open, reconnects, and the bytes they
//! carry (from quinn's own connection counters, read every few seconds).

use std::collections::HashSet;
use std::sync::{Arc, Mutex};

use prometheus_client::metrics::counter::Counter;
use prometheus_client::metrics::gauge::Gauge;
use prometheus_client::registry::Registry;

/// Cloning shares the metrics (each is an `Arc` inside).
#[derive(Clone, Debug, Default)]
pub struct TunnelMetrics {
    connections: Gauge,
    reconnects: Counter,
    sent: Counter,
    received: Counter,
    /// Nodes that held a tunnel since the server started: their next one is a reconnect.
    /// One short name per node.
    seen: Arc<Mutex<HashSet<String>>>,
}

impl TunnelMetrics {
    /// Metrics registered in `registry`.
    pub fn new(registry: &mut Registry) -> Self {
        let m = TunnelMetrics::default();
        registry.register(
            "kedge_tunnel_connections",
            "Node tunnels open (a replaced one counts until it closes)",
            m.connections.clone(),
        );
        registry.register(
            "kedge_tunnel_reconnects",
            "Tunnels opened by a node that had held one before since the server started",
            m.reconnects.clone(),
        );
        registry.register(
            "kedge_tunnel_sent_bytes",
            "UDP payload bytes sent on node tunnels",
            m.sent.clone(),
        );
        registry.register(
            "kedge_tunnel_received_bytes",
            "UDP payload bytes received on node tunnels",
            m.received.clone(),
        );
        m
    }

    /// A node's tunnel is up; it counts until the returned guard drops.
    pub(crate) fn connected(&self, node: &str, conn: quinn::Connection) -> ConnectionGuard {
        let again = !self
            .seen
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .insert(node.to_owned());
        if again {
            self.reconnects.inc();
        }
        self.connections.inc();
        ConnectionGuard {
            metrics: self.clone(),
            conn,
            sent: 0,
            received: 0,
        }
    }
}

/// One open tunnel (see [`TunnelMetrics::connected`]).
pub(crate) struct ConnectionGuard {
    metrics: TunnelMetrics,
    conn: quinn::Connection,
    /// What quinn had counted at the last [`sync`](Self::sync).
    sent: u64,
    received: u64,
}

impl ConnectionGuard {
    /// Adds the bytes moved since the last call to the counters.
    pub(crate) fn sync(&mut self) {
        let stats = self.conn.stats();
        let (tx, rx) = (stats.udp_tx.bytes, stats.udp_rx.bytes);
        self.metrics.sent.inc_by(tx.saturating_sub(self.sent));
        self.metrics
            .received
            .inc_by(rx.saturating_sub(self.received));
        (self.sent, self.received) = (tx, rx);
    }
}

impl Drop for ConnectionGuard {
    fn drop(&mut self) {
        self.sync();
        self.metrics.connections.dec();
    }
}
