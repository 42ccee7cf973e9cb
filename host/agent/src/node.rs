//! The Node: its registration, status (capacity, conditions, images) and heartbeat, its
//! Lease, and the taints it registers with.

use std::collections::BTreeMap;
use std::time::Duration;

use kedge_registry::{LocalImageStore, Reference};
use serde_json::{Value, json};
use tokio_util::sync::CancellationToken;

use super::{Ctx, Shared, client, events};

/// How often the Lease is renewed (kubelet's default).
const LEASE_RENEW: Duration = Duration::from_secs(10);
const LEASE_DURATION_SECONDS: i64 = 40;
/// How often the Ready condition's heartbeat is refreshed.
const STATUS_HEARTBEAT: Duration = Duration::from_secs(60);

/// A Node taint.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Taint {
    pub key: String,
    pub value: Option<String>,
    pub effect: String,
}

impl std::str::FromStr for Taint {
    type Err = String;

    /// `key=value:Effect` or `key:Effect`, as kubelet's flag takes them.
    fn from_str(s: &str) -> Result<Self, String> {
        let (kv, effect) = s
            .rsplit_once(':')
            .ok_or_else(|| format!("taint {s:?}: expected key[=value]:Effect"))?;
        if !matches!(effect, "NoSchedule" | "PreferNoSchedule" | "NoExecute") {
            return Err(format!(
                "taint {s:?}: effect must be NoSchedule, PreferNoSchedule or NoExecute"
            ));
        }
        let (key, value) = match kv.split_once('=') {
            Some((k, v)) => (k, Some(v.to_string())),
            None => (kv, None),
        };
        if key.is_empty() {
            return Err(format!("taint {s:?}: empty key"));
        }
        Ok(Taint {
            key: key.to_string(),
            value,
            effect: effect.to_string(),
        })
    }
}

pub(crate) fn local_ip_towards(server: &str) -> String {
    use std::net::ToSocketAddrs;
    let target = server.to_socket_addrs().ok().and_then(|mut a| a.next());
    target
        .and_then(|t| {
            let bind = if t.is_ipv6() { "[::]:0" } else { "0.0.0.0:0" };
            let s = std::net::UdpSocket::bind(bind).ok()?;
            // connect() on UDP only picks a route; nothing is sent.
            s.connect(t).ok()?;
            s.local_addr().ok().map(|a| a.ip().to_string())
        })
        .unwrap_or_else(|| "127.0.0.1".into())
}

pub(crate) fn mem_total_bytes() -> u64 {
    std::fs::read_to_string("/proc/meminfo")
        .ok()
        .and_then(|m| {
            m.lines()
                .find(|l| l.starts_with("MemTotal:"))
                .and_then(|l| l.split_whitespace().nth(1))
                .and_then(|kb| kb.parse::<u64>().ok())
        })
        .map(|kb| kb * 1024)
        .unwrap_or(0)
}

fn read_trim(path: &str) -> String {
    std::fs::read_to_string(path)
        .map(|s| s.trim().to_string())
        .unwrap_or_default()
}

fn os_image() -> String {
    std::fs::read_to_string("/etc/os-release")
        .ok()
        .and_then(|s| {
            s.lines()
                .find_map(|l| l.strip_prefix("PRETTY_NAME="))
                .map(|v| v.trim_matches('"').to_string())
        })
        .unwrap_or_else(|| "Linux".into())
}

/// `status.images`: every image in the node's store, as kubelet lists them — the references
/// it is known by plus `<repository>@<digest>`, and its size on disk (manifest and layers, or
/// the module), largest first. The scheduler's image locality score reads it.
pub(crate) fn node_images(store: &LocalImageStore) -> Vec<Value> {
    let mut by_digest: BTreeMap<String, (Vec<String>, u64)> = BTreeMap::new();
    for (reference, digest) in store.images() {
        let entry = by_digest.entry(digest.clone()).or_default();
        if entry.0.is_empty() {
            let image = Reference::parse(&reference)
                .ok()
                .and_then(|r| store.image(&r).ok().flatten());
            let Some(image) = image else { continue };
            let size = |d: &str| {
                store
                    .blob_file(d)
                    .ok()
                    .and_then(|p| std::fs::metadata(p).ok())
                    .map_or(0, |m| m.len())
            };
            entry.1 = match &image.kind {
                kedge_registry::ImageKind::Wasm { module } => {
                    std::fs::metadata(module).map_or(0, |m| m.len())
                }
                kedge_registry::ImageKind::Oci { layers, .. } => {
                    size(&image.digest) + layers.iter().map(|l| size(l)).sum::<u64>()
                }
            };
            entry.0.push(image.image_id.clone());
        }
        entry.0.push(reference);
    }
    let mut images: Vec<(Vec<String>, u64)> = by_digest
        .into_values()
        .filter(|(names, _)| !names.is_empty())
        .collect();
    images.sort_by(|a, b| b.1.cmp(&a.1).then_with(|| a.0.cmp(&b.0)));
    images
        .into_iter()
        .map(|(names, size)| json!({"names": names, "sizeBytes": size}))
        .collect()
}

fn node_object(ctx: &Shared, labels: &[(String, String)], now: &str) -> Value {
    let cpus = std::thread::available_parallelism().map_or(1, |n| n.get());
    let mem = mem_total_bytes();
    let arch = kedge_core::kube_arch();
    let mut l = serde_json::Map::new();
    l.insert("kubernetes.io/hostname".into(), json!(ctx.node));
    l.insert("kubernetes.io/os".into(), json!("linux"));
    l.insert("kubernetes.io/arch".into(), json!(arch));
    l.insert("beta.kubernetes.io/os".into(), json!("linux"));
    l.insert("beta.kubernetes.io/arch".into(), json!(arch));
    l.insert("kedge.io/runtime-wasm".into(), json!("true"));
    if ctx.oci.is_some() {
        l.insert("kedge.io/runtime-oci".into(), json!("true"));
    }
    if let Some(net) = ctx.net.get() {
        l.insert(crate::network::POD_NETWORK_LABEL.into(), json!(net.label()));
        l.insert(
            crate::network::SERVICE_LB_LABEL.into(),
            json!(net.cfg.service_lb.to_string()),
        );
    }
    for (k, v) in labels {
        l.insert(k.clone(), json!(v));
    }
    let capacity =
        json!({"cpu": cpus.to_string(), "memory": format!("{}Ki", mem / 1024), "pods": "110"});
    let taints: Vec<Value> = ctx
        .taints
        .iter()
        .map(|t| json!({"key": t.key, "value": t.value, "effect": t.effect}))
        .collect();
    let mut spec = if taints.is_empty() {
        json!({})
    } else {
        json!({"taints": taints})
    };
    // A node that had a pod range asks for it back when its Node is created again (deleted,
    // or the server's state reset): its pods and their addresses live in that range.
    if let Some(cidr) = crate::network::recorded_pod_cidr(&ctx.data_dir) {
        spec["podCIDR"] = json!(cidr);
        spec["podCIDRs"] = json!([cidr]);
    }
    json!({
        "apiVersion": "v1",
        "kind": "Node",
        "metadata": {"name": ctx.node, "labels": l},
        "spec": spec,
        "status": {
            "capacity": capacity,
            "allocatable": capacity,
            "conditions": node_conditions(now, now, sense_pressure(&ctx.data_dir, &ctx.eviction_hard)),
            "images": node_images(ctx.puller.store()),
            "addresses": [
                {"type": "InternalIP", "address": ctx.host_ip},
                {"type": "Hostname", "address": ctx.node},
            ],
            "daemonEndpoints": {"kubeletEndpoint": {"Port": 0}},
            "nodeInfo": {
                "machineID": read_trim("/etc/machine-id"),
                "systemUUID": read_trim("/sys/class/dmi/id/product_uuid"),
                "bootID": read_trim("/proc/sys/kernel/random/boot_id"),
                "kernelVersion": read_trim("/proc/sys/kernel/osrelease"),
                "osImage": os_image(),
                "containerRuntimeVersion": runtime_version(ctx),
                "kubeletVersion": "v1.32.0-kedge",
                "kubeProxyVersion": "",
                "operatingSystem": "linux",
                "architecture": arch,
            },
        },
    })
}

/// What `kubectl get nodes -o wide` shows as CONTAINER-RUNTIME: runc when the node runs
/// containers, wasmtime always.
fn runtime_version(ctx: &Shared) -> String {
    let wasm = "wasmtime://48.0.8";
    match &ctx.oci {
        Some(r) => format!(
            "runc://{} + {wasm}",
            r.version().trim_start_matches("runc ")
        ),
        None => wasm.to_string(),
    }
}

/// Resource pressure as kubelet's default hard eviction thresholds define it.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub(crate) struct Pressure {
    /// `memory.available` below its eviction threshold.
    pub(crate) memory: bool,
    /// `nodefs.available` (the agent's data filesystem) below its eviction threshold.
    pub(crate) disk: bool,
}

pub(crate) fn mem_available_bytes() -> Option<u64> {
    std::fs::read_to_string("/proc/meminfo").ok().and_then(|m| {
        m.lines()
            .find(|l| l.starts_with("MemAvailable:"))
            .and_then(|l| l.split_whitespace().nth(1))
            .and_then(|kb| kb.parse::<u64>().ok())
            .map(|kb| kb * 1024)
    })
}

/// The node's conditions follow its eviction thresholds, as kubelet's do.
pub(crate) fn sense_pressure(
    data_dir: &std::path::Path,
    thresholds: &crate::eviction::Thresholds,
) -> Pressure {
    let crossed = crate::eviction::observe_all(thresholds, data_dir);
    let has = |s| crossed.iter().any(|c| c.starved == s);
    Pressure {
        memory: has(crate::eviction::Starved::Memory),
        disk: has(crate::eviction::Starved::Disk),
    }
}

pub(crate) fn node_conditions(now: &str, since: &str, pressure: Pressure) -> Value {
    let c = |t: &str, s: &str, reason: &str, msg: &str| {
        json!({"type": t, "status": s, "reason": reason, "message": msg,
            "lastHeartbeatTime": now, "lastTransitionTime": since})
    };
    let memory = if pressure.memory {
        c(
            "MemoryPressure",
            "True",
            "KubeletHasInsufficientMemory",
            "kubelet has insufficient memory available",
        )
    } else {
        c(
            "MemoryPressure",
            "False",
            "KubeletHasSufficientMemory",
            "kubelet has sufficient memory available",
        )
    };
    let disk = if pressure.disk {
        c(
            "DiskPressure",
            "True",
            "KubeletHasDiskPressure",
            "kubelet has disk pressure",
        )
    } else {
        c(
            "DiskPressure",
            "False",
            "KubeletHasNoDiskPressure",
            "kubelet has no disk pressure",
        )
    };
    json!([
        memory,
        disk,
        c(
            "PIDPressure",
            "False",
            "KubeletHasSufficientPID",
            "kubelet has sufficient PID available"
        ),
        c(
            "Ready",
            "True",
            "KubeletReady",
            "kedge agent is posting ready status"
        ),
    ])
}

async fn register_node(ctx: &Ctx, labels: &[(String, String)]) -> client::Result<()> {
    let now = ctx.now();
    let mut node = node_object(ctx, labels, &now);
    let mut created = ctx.client.create("/api/v1/nodes", &node).await;
    if created.as_ref().is_err_and(|e| e.code() == Some(422))
        && node.pointer("/spec/podCIDR").is_some()
    {
        // The range it had went to another node meanwhile: take the one the server gives.
        // Pods already running keep their old addresses until they are replaced.
        tracing::warn!(
            node = %ctx.node,
            "the Node's recorded podCIDR was refused; registering for a new one"
        );
        let spec = node["spec"].as_object_mut().expect("an object");
        let had = spec.remove("podCIDR");
        spec.remove("podCIDRs");
        created = ctx.client.create("/api/v1/nodes", &node).await;
        if let Ok(n) = &created
            && let Some(given) = n
                .pointer("/spec/podCIDR")
                .and_then(serde_json::Value::as_str)
        {
            // The next start takes the new range; until then new pods still get addresses in
            // the old one, which other nodes no longer route here: say so.
            crate::network::record_pod_cidr(&ctx.data_dir, given);
            let had = had.as_ref().and_then(|v| v.as_str()).unwrap_or("?");
            let message = format!(
                "the node's podCIDR {had} went to another node while this Node was away; the \
                 server gave it {given}: restart the agent to move its pod network there (until \
                 then pods keep getting addresses in {had}, which other nodes no longer route here)"
            );
            tracing::error!("{message}");
            ctx.events
                .node(super::events::Kind::Warning, "PodCIDRChanged", &message)
                .await;
        }
    }
    match created {
        Ok(_) => Ok(()),
        Err(e) if e.code() == Some(409) => {
            // Re-registration after a restart: refresh labels and status.
            let path = format!("/api/v1/nodes/{}", ctx.node);
            ctx.client
                .merge_patch(
                    &path,
                    &json!({"metadata": {"labels": node["metadata"]["labels"]}}),
                )
                .await?;
            ctx.client
                .merge_patch(
                    &format!("{path}/status"),
                    &json!({"status": node["status"]}),
                )
                .await?;
            Ok(())
        }
        Err(e) => Err(e),
    }
}

async fn renew_lease(ctx: &Ctx) -> client::Result<()> {
    let path = format!(
        "/apis/coordination.k8s.io/v1/namespaces/kube-node-lease/leases/{}",
        ctx.node
    );
    let now = kedge_core::meta::micro_timestamp((ctx.clock)());
    match ctx.client.get(&path).await {
        Ok(mut lease) => {
            lease["spec"]["renewTime"] = json!(now);
            lease["spec"]["holderIdentity"] = json!(ctx.node);
            ctx.client.put(&path, &lease).await.map(|_| ())
        }
        Err(e) if e.code() == Some(404) => ctx
            .client
            .create(
                "/apis/coordination.k8s.io/v1/namespaces/kube-node-lease/leases",
                &json!({
                    "apiVersion": "coordination.k8s.io/v1",
                    "kind": "Lease",
                    "metadata": {"name": ctx.node, "namespace": "kube-node-lease"},
                    "spec": {"holderIdentity": ctx.node, "leaseDurationSeconds": LEASE_DURATION_SECONDS,
                             "acquireTime": now, "renewTime": now},
                }),
            )
            .await
            .map(|_| ()),
        Err(e) => Err(e),
    }
}

pub(crate) async fn node_loop(ctx: Ctx, labels: Vec<(String, String)>, cancel: CancellationToken) {
    let mut registered = false;
    let mut last_heartbeat = tokio::time::Instant::now();
    let mut attempt = 0u32;
    let mut images_sent = Value::Null;
    // Lease renewals that failed in a row: the next try comes sooner than LEASE_RENEW.
    let mut renewals_failed = 0u32;
    loop {
        if !registered {
            match register_node(&ctx, &labels).await {
                Ok(()) => {
                    registered = true;
                    attempt = 0;
                    tracing::info!(node = %ctx.node, "node registered");
                    ctx.events
                        .node(events::Kind::Normal, "Starting", "Starting kedge agent.")
                        .await;
                }
                Err(e) => {
                    attempt += 1;
                    tracing::warn!(error = %e, attempt, "node registration failed; retrying");
                }
            }
        }
        if registered {
            match renew_lease(&ctx).await {
                Ok(()) => renewals_failed = 0,
                Err(e) => {
                    if renewals_failed == 0 {
                        tracing::warn!(error = %e, "lease renewal failed");
                    } else {
                        tracing::debug!(error = %e, renewals_failed, "lease renewal failed again");
                    }
                    renewals_failed = renewals_failed.saturating_add(1);
                }
            }
            // The node lifecycle controller marks a silent node Unknown; once heard from
            // again, say Ready at once rather than at the next periodic heartbeat.
            let cur = ctx
                .client
                .get(&format!("/api/v1/nodes/{}", ctx.node))
                .await
                .ok();
            let ready = cur.as_ref().and_then(|n| {
                n.pointer("/status/conditions")?
                    .as_array()?
                    .iter()
                    .find(|c| c["type"] == "Ready")
                    .cloned()
            });
            let ready_true = ready.as_ref().is_some_and(|c| c["status"] == "True");
            // Pulls and image GC change the list: report it at the next lease renewal.
            let images = json!(node_images(ctx.puller.store()));
            let images_changed = cur.is_some()
                && cur.as_ref().and_then(|n| n.pointer("/status/images")) != Some(&images)
                && images != images_sent;
            if last_heartbeat.elapsed() >= STATUS_HEARTBEAT
                || (cur.is_some() && !ready_true)
                || images_changed
            {
                let now = ctx.now();
                let path = format!("/api/v1/nodes/{}/status", ctx.node);
                let since = ready
                    .filter(|_| ready_true)
                    .and_then(|c| c["lastTransitionTime"].as_str().map(String::from))
                    .unwrap_or_else(|| now.clone());
                match ctx
                    .client
                    .merge_patch(
                        &path,
                        &json!({"status": {"conditions": node_conditions(
                            &now,
                            &since,
                            sense_pressure(&ctx.data_dir, &ctx.eviction_hard),
                        ), "images": images}}),
                    )
                    .await
                {
                    Ok(_) => {
                        images_sent = images;
                        last_heartbeat = tokio::time::Instant::now();
                        if cur.is_some() && !ready_true {
                            ctx.events
                                .node(
                                    events::Kind::Normal,
                                    "NodeReady",
                                    &format!("Node {} status is now: NodeReady", ctx.node),
                                )
                                .await;
                        }
                    }
                    Err(e) => tracing::warn!(error = %e, "node status heartbeat failed"),
                }
            }
        }
        let wait = if !registered {
            Duration::from_millis(200 * (1 << attempt.min(5)))
        } else if renewals_failed > 0 {
            // 1, 2, 4, 8 s, then every LEASE_RENEW: the node is late already.
            (Duration::from_secs(1) * (1 << (renewals_failed - 1).min(4))).min(LEASE_RENEW)
        } else {
            LEASE_RENEW
        };
        tokio::select! {
            _ = cancel.cancelled() => return,
            _ = tokio::time::sleep(wait) => {}
            // The tunnel is back after an outage: heartbeat at once, so the node is Ready
            // again within a round trip of the reconnect rather than at the next tick.
            () = ctx.client.back_online(), if renewals_failed > 0 => {}
        }
    }
}
