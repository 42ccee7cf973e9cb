//! Events about pods, as kubelet records them (`Pulling`, `Pulled`, `Failed`, `BackOff`,
//! `Created`, `Started`, `Killing`), so `kubectl get events` and `kubectl describe pod` tell a
//! user why a container is not running.
//!
//! A repeat of the same event (same pod, container, reason and message) bumps `count` and
//! `lastTimestamp` of the existing Event instead of creating another, like client-go's event
//! correlator: a pod stuck in image pull back-off shows one Event with a growing count, not
//! hundreds.

use std::collections::HashMap;
use std::sync::Mutex;

use serde_json::{Value, json};

use super::client::Client;
use crate::api::ops::Clock;
use crate::core::meta;

/// Past this many remembered events the memory is cleared: at worst a repeat then creates
/// a new Event instead of bumping a count.
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

struct Seen {
    namespace: String,
    name: String,
    count: u64,
}

pub struct Recorder {
    client: Client,
    node: String,
    clock: Clock,
    seen: Mutex<HashMap<Key, Seen>>,
}

impl Recorder {
    pub fn new(client: Client, node: String, clock: Clock) -> Self {
        Recorder {
            client,
            node,
            clock,
            seen: Mutex::default(),
        }
    }

    /// Records an event about `pod` (and one of its containers, if named). Failures are
    /// logged, never returned: an event is worth less than the work it describes.
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
        let repeat = {
            let mut seen = self.seen.lock().unwrap_or_else(|p| p.into_inner());
            seen.get_mut(&key).map(|s| {
                s.count += 1;
                (s.namespace.clone(), s.name.clone(), s.count)
            })
        };
        if let Some((ns, name, count)) = repeat {
            let path = format!("/api/v1/namespaces/{ns}/events/{name}");
            let patch = json!({"count": count, "lastTimestamp": now});
            match self.client.merge_patch(&path, &patch).await {
                Ok(_) => return,
                // Gone (expired or deleted): fall through and create it again.
                Err(e) if e.code() == Some(404) => {}
                Err(e) => {
                    tracing::debug!(error = %e, %reason, "updating an event failed");
                    return;
                }
            }
        }
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
        let event = json!({
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
        });
        match self
            .client
            .create(&format!("/api/v1/namespaces/{ns}/events"), &event)
            .await
        {
            Ok(_) => {
                let mut seen = self.seen.lock().unwrap_or_else(|p| p.into_inner());
                if seen.len() >= MAX_REMEMBERED {
                    seen.clear();
                }
                seen.insert(
                    key,
                    Seen {
                        namespace: ns,
                        name,
                        count: 1,
                    },
                );
            }
            Err(e) => tracing::debug!(error = %e, %reason, "recording an event failed"),
        }
    }

    /// Records an event about this agent's Node (in `default`, involvedObject without
    /// namespace and with the node's name as uid, as kubelet records them and `kubectl
    /// describe node` looks them up).
    pub async fn node(&self, kind: Kind, reason: &str, message: &str) {
        let now = meta::timestamp((self.clock)());
        let event = json!({
            "apiVersion": "v1",
            "kind": "Event",
            "metadata": {
                "name": format!("{}.{:x}", self.node,
                    (self.clock)().timestamp_nanos_opt().unwrap_or_default()),
                "namespace": "default",
            },
            "involvedObject": {"apiVersion": "v1", "kind": "Node", "name": self.node,
                "uid": self.node},
            "reason": reason,
            "message": message,
            "type": kind.as_str(),
            "source": {"component": "kubelet", "host": self.node},
            "reportingComponent": "kubelet",
            "reportingInstance": self.node,
            "firstTimestamp": now,
            "lastTimestamp": now,
            "count": 1,
        });
        if let Err(e) = self
            .client
            .create("/api/v1/namespaces/default/events", &event)
            .await
        {
            tracing::debug!(error = %e, %reason, "recording a node event failed");
        }
    }

    /// Forgets the events of a pod that is gone.
    pub fn forget_pod(&self, uid: &str) {
        self.seen
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .retain(|k, _| k.0 != uid);
    }
}
